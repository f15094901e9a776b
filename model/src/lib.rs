//! atrium's resource model, shared by the control plane and the agent.
//!
//! - [`yaml`]: YAML/JSON with positions, and a strict serde deserializer whose errors name
//!   file, line, column and field path.
//! - [`resources`]: the typed Kubernetes-style objects users write (Traefik, Traefik Hub and
//!   core kinds).
//! - [`loader`]: the one manifest loader (files, folders, multi-document YAML, JSON).
//! - [`values`]: the Helm-values-shaped static configuration.
//! - [`topology`]: a parent and its children on disk.
//! - [`compile`]: resources + values + uplink registry → a snapshot (pure).
//! - [`lint`]: the compiler's findings plus the guide's "Important Considerations".
//! - [`fuzzing`]: the manifests fuzz target's body, replayed by a stable test.
//!
//! It lives in its own crate so that the agent can compile its local configuration
//! without pulling in the portal: the arrows are `proto ← data-plane ← model ←
//! {control-plane, agent}`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod compile;
pub mod diagnostic;
pub mod fuzzing;
pub mod lint;
pub mod loader;
pub mod resources;
pub mod route_check;
pub mod schema;
pub mod topology;
pub mod values;
pub mod yaml;

pub use diagnostic::{Diagnostic, Severity};
