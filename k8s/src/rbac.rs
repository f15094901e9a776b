//! The permissions each component's provider uses, the single source the RBAC files in
//! `deploy/rbac/` are checked against (a test renders them and compares both ways).

use std::collections::BTreeSet;

use crate::kinds::{Kind, WATCHED};

/// A component that reads a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The parent's control plane (status of the API management kinds).
    ControlPlane,
    /// A child's agent (status of its Uplinks).
    Agent,
}

impl Component {
    /// Its name in Leases, Events and RBAC objects.
    pub fn name(self) -> &'static str {
        match self {
            Component::ControlPlane => "atrium-control-plane",
            Component::Agent => "atrium-agent",
        }
    }

    /// The kinds whose status it writes.
    pub fn status_kinds(self) -> Vec<&'static Kind> {
        WATCHED
            .iter()
            .filter(|k| k.status)
            .filter(|k| match self {
                Component::ControlPlane => k.kind != "Uplink",
                Component::Agent => k.kind == "Uplink",
            })
            .collect()
    }
}

/// One permission: API group, resource (`plural` or `plural/status`) and verb.
pub type Permission = (String, String, String);

/// What the component needs in every namespace it watches (a ClusterRole, or a Role per
/// namespace with `--namespaces`).
pub fn watched_permissions(c: Component) -> BTreeSet<Permission> {
    let mut out = BTreeSet::new();
    for k in WATCHED {
        for verb in ["list", "watch"] {
            out.insert((k.group.to_string(), k.plural.to_string(), verb.to_string()));
        }
    }
    for k in c.status_kinds() {
        out.insert((k.group.to_string(), format!("{}/status", k.plural), "patch".to_string()));
    }
    out.insert(("events.k8s.io".into(), "events".into(), "create".into()));
    out
}

/// What the component needs in its own namespace: its leader Lease.
pub fn lease_permissions() -> BTreeSet<Permission> {
    ["get", "create", "update"]
        .into_iter()
        .map(|v| ("coordination.k8s.io".to_string(), "leases".to_string(), v.to_string()))
        .collect()
}
