//! atrium's control plane (parent cluster): [`run`] starts one from its [`Config`].
//!
//! - [`run`](mod@run): the wiring: the file provider (watch → compile → publish), the gRPC
//!   listener, the children, the embedded data plane, the admin API.
//! - [`children`]: the multi-cluster registry: every child dialled over mutual-TLS QUIC,
//!   its uplinks, weights and health, and its liveness.
//! - [`hub`]: the latest compiled snapshot (encoded once, shared by every stream) and the
//!   record of every data plane: connected since, version applied, last NACK.
//! - [`service`]: the gRPC `SnapshotService`: `Hello` → snapshot or `UpToDate`, then every
//!   change, latest-wins; `Ack`/`Nack` recorded.
//! - `specs`: the APIs' OpenAPI specs, fetched, refreshed and retried off the request path;
//!   their operations and status go into the snapshot.
//! - [`tls`]: mutual TLS for that listener, with refusals logged and the server
//!   certificate reloaded when its file changes.
//!
//! Compiling resources into snapshots is `atrium_model::compile`; reading them from files
//! is `atrium_provider::Source` (files or the Kubernetes API), shared with the agent and the gateway.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod admin;
pub mod children;
pub mod hub;
mod publisher;
pub mod run;
pub mod service;
mod specs;
pub mod tls;

pub use run::{Config, ControlPlaneError, PortalOptions, run};
