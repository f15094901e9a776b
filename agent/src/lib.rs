//! atrium's child agent ("API Gateway mode").
//!
//! It will compile the child's own manifests with [`atrium_model::compile`], serve them
//! through an embedded data plane, health-check its uplinks and answer the parent over
//! mutual-TLS QUIC. It depends on `atrium-model` and `atrium-data-plane` only, never on
//! the control plane.
#![forbid(unsafe_code)]
