//! atrium's data plane: everything between an incoming request and the upstream that
//! serves it.
//!
//! The path of a request, following the names:
//! 1. [`request::RequestView`] canonicalises the routing inputs (host, routing path, client
//!    IP) the way Traefik does.
//! 2. [`table::RouteTable`] — compiled from a snapshot by [`table::RouteTable::from_snapshot`]
//!    — picks the router: an index narrows the candidates by host and path prefix, then
//!    each candidate's [`rules::Rule`] runs in priority order.
//! 3. The router's [`middleware`]s transform the request (path rewrites are pure functions
//!    over [`middleware::path::UrlPath`]).
//!
//! Everything here is synchronous and socket-free, so routing bugs reproduce in unit tests.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod body;
pub mod h1;
pub mod middleware;
pub mod multicluster;
pub mod pki;
pub mod proxy;
pub mod request;
pub mod rules;
pub mod service;
pub mod snapshot;
pub mod table;
pub mod telemetry;
pub mod uplink;
pub mod upstream;
