//! atrium's data plane: everything between an incoming request and the upstream that
//! serves it.
//!
//! The path of a request, following the names:
//! 1. [`path_security::sanitize`] cleans the request path (dot segments, escapes) or
//!    refuses it, and [`request::RequestView`] canonicalises the routing inputs (host,
//!    routing path, client IP) the way Traefik does.
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
pub mod exchange;
pub mod fetch;
pub mod fuzzing;
pub mod gzip;
pub mod h1;
pub mod hop;
pub mod metrics;
pub mod node;
pub mod pki;
pub mod proxy;
pub mod service;
pub mod snapshot;
pub mod telemetry;
pub mod trust;
pub mod uplink;
pub mod upstream;

/// Deterministic pseudo-random inputs for tests.
#[cfg(test)]
mod test_rng {
    /// A small deterministic generator (an LCG), so failures replay.
    pub(crate) struct Lcg(pub(crate) u64);

    impl Lcg {
        pub(crate) fn next(&mut self) -> usize {
            self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) as usize
        }
        pub(crate) fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
            xs[self.next() % xs.len()]
        }
        /// `s` with each letter's case picked at random.
        pub(crate) fn cased(&mut self, s: &str) -> String {
            s.chars().map(|c| if self.next().is_multiple_of(2) { c.to_ascii_uppercase() } else { c }).collect()
        }
        /// A list of up to four of `tokens`, comma-separated.
        pub(crate) fn tokens(&mut self, tokens: &[&str]) -> String {
            let n = 1 + self.next() % 4;
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                let t = self.pick(tokens);
                out.push(self.cased(t));
            }
            out.join(", ")
        }
    }
}
