//! atrium's wire types.
//!
//! The snapshot (`atrium.v1.Snapshot`) is the compiled configuration a data plane runs. It
//! is produced by the compiler in `atrium-model` and turned into a route table by
//! `atrium-data-plane`. Its encoding is deterministic (sorted repeated fields, no maps), so
//! the SHA-256 of the encoded body identifies a configuration.
#![forbid(unsafe_code)]

/// Version 1 of atrium's protocol messages.
pub mod v1 {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/atrium.v1.rs"));
}

pub use prost::Message;
