//! The Kubernetes provider: the control plane and agents read the same kinds as the file
//! provider from the API server, and write back what they made of them.
//!
//! - [`cluster`]: a watch per kind, an in-memory store of the objects as the model reads
//!   them, synced before anything is published, re-listed atomically;
//! - [`status`]: `status.conditions` of the `hub.traefik.io` kinds and Events for invalid
//!   objects of the others, written only on change and only by the leader;
//! - [`lease`]: the leader, by a `coordination.k8s.io` Lease;
//! - [`rbac`]: the permissions each component uses (checked against `deploy/rbac/`);
//! - [`kinds`]: what is watched;
//! - `fake` (feature `fake`): an in-process API server speaking the list/watch protocol,
//!   for tests.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cluster;
#[cfg(feature = "fake")]
pub mod fake;
pub mod kinds;
pub mod lease;
pub mod rbac;
pub mod status;

pub use cluster::{Cluster, ClusterError, Options};
pub use lease::{Leader, LeaseOptions};
pub use status::{Condition, StatusWriter};
