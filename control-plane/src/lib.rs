//! atrium's control plane (parent cluster).
//!
//! - [`children`]: the multi-cluster registry: every child dialled over mutual-TLS QUIC,
//!   its uplinks, weights and health, and its liveness.
//! - [`hub`]: the latest compiled snapshot (encoded once, shared by every stream) and the
//!   record of every data plane: connected since, version applied, last NACK.
//! - [`service`]: the gRPC `SnapshotService`: `Hello` → snapshot or `UpToDate`, then every
//!   change, latest-wins; `Ack`/`Nack` recorded.
//! - [`tls`]: mutual TLS for that listener, with refusals logged and the server
//!   certificate reloaded when its file changes.
//!
//! Compiling resources into snapshots is [`atrium_model::compile`]; the resource model
//! lives in `atrium-model` so that the agent shares it without depending on this crate.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod children;
pub mod hub;
pub mod service;
pub mod tls;
