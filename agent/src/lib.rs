//! atrium's child agent ("API Gateway mode"): [`run`] starts one from its [`Config`].
//!
//! - [`gateway`]: the local gateway: manifests compiled and served, reloaded on change
//!   (`atrium gateway` runs it alone);
//! - [`uplinks`]: the uplinks this child exposes and their health checks, each run through
//!   the uplink's own routing as the parent would see it;
//! - [`server`]: the uplink server parents dial over mutual-TLS QUIC: control streams
//!   (`Register`, `Update`, `Poll`) and data streams (HTTP for one uplink);
//! - [`metrics`]: health-check results and latency, streams served, parents connected
//!   (`/metrics`, `/api/uplinks` on the admin listener);
//! - [`run`](mod@run): the wiring of all of them.
//!
//! The agent compiles its manifests with `atrium-model` (through `atrium-provider`) and
//! serves them with `atrium-data-plane`; it never depends on the control plane.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod gateway;
pub mod metrics;
pub mod run;
pub mod server;
pub mod uplinks;

pub use gateway::{DefaultCert, GatewayConfig, GatewayError, run_gateway};
pub use run::{Config, run};
