//! Where configuration comes from, for every role that compiles manifests (the control
//! plane, the agent, the gateway):
//! - [`file`]: the file provider: values and manifest files loaded and compiled into a
//!   snapshot body, then watched; each good change is published, each bad one refused with
//!   every error's file and line while the previous configuration stays in force;
//! - [`listeners`]: the entrypoints the values declare, moved or turned off by flags.
//!
//! A Kubernetes provider will sit next to the file provider and yield the same resource
//! model, so the compiler, lint and snapshots stay shared.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod file;
pub mod listeners;
