//! The RBAC files in deploy/rbac/ grant each component exactly what its Kubernetes
//! provider uses (atrium_k8s::rbac, which the provider's watches, status writes, Events and
//! Lease are built from and which tests/kubernetes.rs checks against the requests a fake
//! API server saw): nothing missing, nothing more.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use atrium_k8s::rbac::{Component, Permission, lease_permissions, watched_permissions};
use serde_json::Value;

/// The objects `kubectl kustomize DIR` renders (or, without kubectl, the resources the
/// kustomization lists).
fn render(dir: &Path) -> Vec<Value> {
    let text = match std::process::Command::new("kubectl").arg("kustomize").arg(dir).output() {
        Ok(out) if out.status.success() => String::from_utf8(out.stdout).expect("UTF-8"),
        _ => {
            let k = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
            k.lines()
                .filter_map(|l| l.trim().strip_prefix("- "))
                .map(|f| std::fs::read_to_string(dir.join(f.trim())).unwrap())
                .collect::<Vec<_>>()
                .join("\n---\n")
        }
    };
    atrium_model::yaml::parse_documents(&text)
        .expect("the RBAC renders to YAML")
        .iter()
        .map(|d| atrium_model::yaml::from_node::<Value>(d).unwrap())
        .collect()
}

/// What the roles bound to `account` grant: (group, resource, verb) triples.
fn granted(objects: &[Value], account: &str, role_kind: &str) -> BTreeSet<Permission> {
    let bound: Vec<&str> = objects
        .iter()
        .filter(|o| o["kind"].as_str().is_some_and(|k| k.ends_with("Binding")))
        .filter(|b| {
            b["subjects"].as_array().unwrap().iter().any(|s| s["name"] == account && s["kind"] == "ServiceAccount")
        })
        .map(|b| b["roleRef"]["name"].as_str().unwrap())
        .collect();
    let mut out = BTreeSet::new();
    for role in
        objects.iter().filter(|o| o["kind"] == role_kind && bound.contains(&o["metadata"]["name"].as_str().unwrap()))
    {
        for rule in role["rules"].as_array().unwrap() {
            assert!(rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none(), "{rule}");
            for g in rule["apiGroups"].as_array().unwrap() {
                for r in rule["resources"].as_array().unwrap() {
                    for v in rule["verbs"].as_array().unwrap() {
                        let p = (
                            g.as_str().unwrap().to_string(),
                            r.as_str().unwrap().to_string(),
                            v.as_str().unwrap().to_string(),
                        );
                        assert!(!p.0.contains('*') && !p.1.contains('*') && !p.2.contains('*'), "no wildcards: {p:?}");
                        out.insert(p);
                    }
                }
            }
        }
    }
    out
}

#[test]
fn cluster_wide_roles_grant_what_each_component_uses_and_nothing_more() {
    let objects = render(&common::repo().join("deploy/rbac/cluster-wide"));
    for c in [Component::ControlPlane, Component::Agent] {
        assert_eq!(granted(&objects, c.name(), "ClusterRole"), watched_permissions(c), "{}", c.name());
        assert_eq!(granted(&objects, c.name(), "Role"), lease_permissions(), "{}: its Lease", c.name());
    }
    // The Lease Role lives in the components' namespace, not cluster-wide.
    let lease = objects.iter().find(|o| o["kind"] == "Role").unwrap();
    assert_eq!(lease["metadata"]["namespace"], "traefik");
}

#[test]
fn namespaced_roles_grant_the_same_in_one_namespace() {
    let objects = render(&common::repo().join("deploy/rbac/namespaced"));
    for c in [Component::ControlPlane, Component::Agent] {
        assert_eq!(granted(&objects, c.name(), "Role"), watched_permissions(c), "{}", c.name());
        assert!(granted(&objects, c.name(), "ClusterRole").is_empty(), "{}: nothing cluster-wide", c.name());
    }
    for o in &objects {
        assert_eq!(o["metadata"]["namespace"], "apps", "{}", o["metadata"]["name"]);
    }
}
