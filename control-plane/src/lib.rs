//! atrium's control plane (parent cluster).
//!
//! It will load resources from a watched manifest directory, dial the children listed in
//! the values, compile resources and the uplink registry into snapshots with
//! [`atrium_model::compile`], stream them to data planes over gRPC and serve the portal.
//! The resource model and compiler live in `atrium-model` so that the agent shares them
//! without depending on this crate.
#![forbid(unsafe_code)]
