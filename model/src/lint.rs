//! `atrium lint`: the loader and compiler's findings, plus checks for the mistakes the
//! Multi-Cluster Portal guide warns about ("Important Considerations"), each with its own
//! stable code:
//!
//! | code | finding |
//! |---|---|
//! | `openapi-spec-path` | an API on the parent uses `openApiSpec.path`: the parent cannot fetch it from a child |
//! | `uplink-route-host` | a child IngressRoute attached to an uplink matches on `Host(...)` |
//! | `apim-namespace` | APIM resources in a namespace with no APIPortal while a portal exists elsewhere |
//! | `insecure-skip-verify` | a child is dialled with `insecureSkipVerify: true` |
//! | `multicluster-unknown-uplink` | an `X@multicluster` service that no child exposes (topologies) |
//! | `uplink-expose-name` | an Uplink expose name outside `^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$` |
//!
//! plus `unresolved-reference` for every named middleware, service, API, plan, bundle or
//! portal that does not exist.

use std::collections::HashSet;
use std::path::Path;

use atrium_routing::middleware::config::parse_go_duration;
use atrium_routing::rules::Rule;

use crate::compile::{self, Compiled, Registry, UPLINKS_ANNOTATION};
use crate::diagnostic::{self, Diagnostic, Severity};
use crate::loader::{Manifests, load_paths};
use crate::resources::meta::NameRef;
use crate::resources::{Loaded, Resource};
use crate::topology;
use crate::values::Values;

/// What a cluster is, for the checks that depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Dials children; holds the APIM resources.
    Parent,
    /// Exposes uplinks.
    Child,
    /// Neither.
    Standalone,
}

/// Guesses a lone cluster's role: a parent dials children or routes to `@multicluster`; a
/// child has Uplinks or an uplink port.
pub fn infer_role(m: &Manifests, v: &Values) -> Role {
    let multicluster_refs = m.resources.iter().any(|l| match &*l.resource {
        Resource::IngressRoute(r) => {
            r.spec.routes.iter().any(|rt| rt.services.iter().any(|s| s.name.ends_with("@multicluster")))
        }
        _ => false,
    });
    if v.children().next().is_some() || multicluster_refs {
        Role::Parent
    } else if v.ports.values().any(|p| p.uplink)
        || m.resources.iter().any(|l| matches!(*l.resource, Resource::Uplink(_)))
    {
        Role::Child
    } else {
        Role::Standalone
    }
}

/// Lints the given paths: a topology directory, or manifests of one cluster (files and
/// folders) with optional values.
pub fn lint_paths(paths: &[&Path], values_file: Option<&Path>) -> Vec<Diagnostic> {
    if let [one] = paths {
        if topology::is_topology(one) {
            return lint_topology(one);
        }
    }
    let (values, mut diags) = Values::load_optional(values_file);
    let m = load_paths(paths);
    let role = infer_role(&m, &values);
    diags.extend(lint_cluster(&m, &values, role, None).1);
    diagnostic::sort(&mut diags);
    diags
}

/// Lints a topology directory: each child, then the parent against the children's uplinks.
pub fn lint_topology(root: &Path) -> Vec<Diagnostic> {
    let (topo, mut diags) = topology::load(root);
    let mut bodies = Vec::new();
    for c in &topo.children {
        let (compiled, d) = lint_cluster(&c.manifests, &c.values, Role::Child, None);
        diags.extend(d);
        bodies.push((c.name.clone(), compiled.body));
    }
    let refs: Vec<(String, &atrium_proto::v1::SnapshotBody)> = bodies.iter().map(|(n, b)| (n.clone(), b)).collect();
    let registry = compile::static_registry(&refs);
    let p = &topo.parent;
    diags.extend(lint_cluster(&p.manifests, &p.values, Role::Parent, Some(&registry)).1);
    diagnostic::sort(&mut diags);
    diags
}

/// Lints one cluster: load findings, compile findings and the checks of this module.
pub fn lint_cluster(
    m: &Manifests,
    values: &Values,
    role: Role,
    registry: Option<&Registry>,
) -> (Compiled, Vec<Diagnostic>) {
    let compiled = compile::compile(m, values, registry);
    let mut diags = m.diagnostics.clone();
    diags.extend(compiled.diagnostics.iter().cloned());
    check_considerations(m, values, role, &mut diags);
    check_apim_references(m, &mut diags);
    diagnostic::sort(&mut diags);
    (compiled, diags)
}

fn check_considerations(m: &Manifests, values: &Values, role: Role, diags: &mut Vec<Diagnostic>) {
    check_resources(m, role, diags);
    check_apim_namespaces(m, diags);
    check_insecure_children(values, diags);
}

/// Checks each resource on its own: OpenAPI spec paths on a parent, and routes attached to an
/// uplink that match on the host.
fn check_resources(m: &Manifests, role: Role, diags: &mut Vec<Diagnostic>) {
    for l in &m.resources {
        match &*l.resource {
            Resource::Api(api) if role == Role::Parent => {
                if api.spec.open_api_spec.as_ref().is_some_and(|s| s.path.is_some()) {
                    diags.push(Diagnostic::on(
                        Severity::Error,
                        "openapi-spec-path",
                        l,
                        "spec.openApiSpec.path",
                        "an API on the parent must use openApiSpec.url: the parent fetches the spec itself and cannot read a path served by a child",
                    ));
                }
            }
            Resource::ApiVersion(v) if role == Role::Parent => {
                if v.spec.open_api_spec.as_ref().is_some_and(|s| s.path.is_some()) {
                    diags.push(Diagnostic::on(
                        Severity::Error,
                        "openapi-spec-path",
                        l,
                        "spec.openApiSpec.path",
                        "an APIVersion on the parent must use openApiSpec.url, not path",
                    ));
                }
            }
            Resource::IngressRoute(r) if r.metadata.annotations.contains_key(UPLINKS_ANNOTATION) => {
                for (i, route) in r.spec.routes.iter().enumerate() {
                    if Rule::parse(&route.rule).is_ok_and(|rule| rule.mentions_host()) {
                        diags.push(Diagnostic::on(
                            Severity::Warning,
                            "uplink-route-host",
                            l,
                            &format!("spec.routes[{i}].match"),
                            "a route attached to an uplink should not match on Host: the parent's IngressRoute handles the host; use PathPrefix only",
                        ));
                    }
                }
            }
            _ => {}
        }
    }
}

/// Namespace consistency: the portal only shows APIM resources of its own namespace.
fn check_apim_namespaces(m: &Manifests, diags: &mut Vec<Diagnostic>) {
    let portal_ns: HashSet<&str> =
        m.resources.iter().filter(|l| matches!(*l.resource, Resource::ApiPortal(_))).map(|l| l.ns()).collect();
    if !portal_ns.is_empty() {
        for l in &m.resources {
            let apim = matches!(
                &*l.resource,
                Resource::Api(_) | Resource::ApiPlan(_) | Resource::ApiBundle(_) | Resource::ApiCatalogItem(_)
            );
            if apim && !portal_ns.contains(l.ns()) {
                let mut list: Vec<&&str> = portal_ns.iter().collect();
                list.sort();
                diags.push(Diagnostic::on(
                    Severity::Warning,
                    "apim-namespace",
                    l,
                    "metadata.namespace",
                    format!(
                        "namespace {:?} has no APIPortal (portals are in {list:?}): the portal will not show this {}",
                        l.ns(),
                        l.resource.kind()
                    ),
                ));
            }
        }
    }
}

/// Warns about children dialled without verifying their certificate.
fn check_insecure_children(values: &Values, diags: &mut Vec<Diagnostic>) {
    if let (Some(file), Some(doc)) = (&values.file, &values.doc) {
        for (name, child) in values.children() {
            if child.servers_transport.as_ref().and_then(|t| t.insecure_skip_verify) == Some(true) {
                let field = format!("hub.providers.multicluster.children.{name}.serversTransport.insecureSkipVerify");
                diags.push(Diagnostic {
                    field: Some(field.clone()),
                    ..Diagnostic::at(
                        Severity::Warning,
                        "insecure-skip-verify",
                        file,
                        doc.locate(&field).mark,
                        format!("child {name:?} is dialled without verifying its certificate; use rootCAs (mTLS) in production"),
                    )
                });
            }
        }
    }
}

fn exists(m: &Manifests, kind: &str, ns: &str, name: &str) -> bool {
    m.resources.iter().any(|l| l.resource.kind() == kind && l.ns() == ns && l.name() == name)
}

fn check_refs(m: &Manifests, l: &Loaded, kind: &str, refs: &[NameRef], field: &str, diags: &mut Vec<Diagnostic>) {
    for (i, r) in refs.iter().enumerate() {
        if !exists(m, kind, l.ns(), &r.name) {
            diags.push(Diagnostic::on(
                Severity::Error,
                "unresolved-reference",
                l,
                &format!("{field}[{i}].name"),
                format!("{kind} {}/{} does not exist", l.ns(), r.name),
            ));
        }
    }
}

fn check_ref(m: &Manifests, l: &Loaded, kind: &str, r: Option<&NameRef>, field: &str, diags: &mut Vec<Diagnostic>) {
    if let Some(r) = r {
        if !exists(m, kind, l.ns(), &r.name) {
            diags.push(Diagnostic::on(
                Severity::Error,
                "unresolved-reference",
                l,
                &format!("{field}.name"),
                format!("{kind} {}/{} does not exist", l.ns(), r.name),
            ));
        }
    }
}

fn check_plan_limit(
    l: &Loaded,
    limit: Option<&crate::resources::hub::PlanLimit>,
    field: &str,
    diags: &mut Vec<Diagnostic>,
) {
    let Some(limit) = limit else { return };
    if limit.limit < 0 {
        diags.push(Diagnostic::on(
            Severity::Error,
            "schema",
            l,
            &format!("{field}.limit"),
            "limit must not be negative".to_string(),
        ));
    }
    if let Some(p) = &limit.period {
        match parse_go_duration(p) {
            Ok(d) if d.is_zero() => diags.push(Diagnostic::on(
                Severity::Error,
                "schema",
                l,
                &format!("{field}.period"),
                "period must be positive".to_string(),
            )),
            Ok(_) => {}
            Err(e) => {
                diags.push(Diagnostic::on(Severity::Error, "schema", l, &format!("{field}.period"), e.to_string()))
            }
        }
    }
}

fn check_apim_references(m: &Manifests, diags: &mut Vec<Diagnostic>) {
    for l in &m.resources {
        match &*l.resource {
            Resource::Api(a) => check_refs(m, l, "APIVersion", &a.spec.versions, "spec.versions", diags),
            Resource::ApiBundle(b) => check_refs(m, l, "API", &b.spec.apis, "spec.apis", diags),
            Resource::ApiCatalogItem(c) => {
                check_refs(m, l, "API", &c.spec.apis, "spec.apis", diags);
                check_refs(m, l, "APIBundle", &c.spec.api_bundles, "spec.apiBundles", diags);
                check_ref(m, l, "APIPlan", c.spec.api_plan.as_ref(), "spec.apiPlan", diags);
                if c.spec.groups.is_empty() && c.spec.everyone != Some(true) {
                    diags.push(Diagnostic::on(
                        Severity::Warning,
                        "catalog-visibility",
                        l,
                        "spec",
                        "this catalog item has no groups and everyone is not true: no portal user can see it",
                    ));
                }
            }
            Resource::ApiPortal(p) => check_ref(m, l, "APIPortalAuth", p.spec.auth.as_ref(), "spec.auth", diags),
            Resource::ApiPlan(p) => {
                check_plan_limit(l, p.spec.rate_limit.as_ref(), "spec.rateLimit", diags);
                check_plan_limit(l, p.spec.quota.as_ref(), "spec.quota", diags);
            }
            Resource::ManagedSubscription(s) => {
                check_ref(m, l, "APIPlan", Some(&s.spec.api_plan), "spec.apiPlan", diags);
                check_refs(m, l, "API", &s.spec.apis, "spec.apis", diags);
                check_refs(m, l, "APIBundle", &s.spec.api_bundles, "spec.apiBundles", diags);
                check_refs(m, l, "ManagedApplication", &s.spec.managed_applications, "spec.managedApplications", diags);
            }
            Resource::ContentItem(c) => {
                use crate::resources::hub::ContentParentKind as K;
                let kind = match c.spec.parent_ref.kind {
                    K::ApiPortal => "APIPortal",
                    K::Api => "API",
                    K::ApiBundle => "APIBundle",
                };
                if !exists(m, kind, l.ns(), &c.spec.parent_ref.name) {
                    diags.push(Diagnostic::on(
                        Severity::Error,
                        "unresolved-reference",
                        l,
                        "spec.parentRef.name",
                        format!("{kind} {}/{} does not exist", l.ns(), c.spec.parent_ref.name),
                    ));
                }
            }
            _ => {}
        }
    }
}
