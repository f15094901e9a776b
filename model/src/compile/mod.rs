//! The compiler: resources + static values + the uplink registry → one snapshot.
//!
//! It is a pure function. Every problem becomes a [`Diagnostic`] that points at the field
//! concerned, and the object it concerns is left out of the snapshot (a router whose rule
//! does not parse, a route whose service does not exist) while everything else compiles.
//! The result is deterministic: lists are sorted, so equal inputs give equal bytes.

mod apim;
mod services;

use std::collections::{BTreeMap, HashMap, HashSet};

use atrium_proto::v1 as pb;
use atrium_routing::middleware::CompiledMiddleware;
use atrium_routing::middleware::config::MiddlewareRef;
use atrium_routing::rules::Rule;

pub use services::{PORTAL_SERVICE, health_check};

use crate::diagnostic::{Diagnostic, Severity};
use crate::loader::Manifests;
use crate::resources::core::{EndpointSlice, Endpoints, Secret, Service as K8sService};
use crate::resources::traefik::{IngressRoute, Middleware, Route, ServiceRef, TraefikService};
use crate::resources::{Loaded, Resource};
use crate::values::Values;

/// Annotation tying an IngressRoute to an API.
pub const API_ANNOTATION: &str = "hub.traefik.io/api";
/// Annotation tying an IngressRoute to an APIVersion (of the API that lists it).
pub const API_VERSION_ANNOTATION: &str = "hub.traefik.io/api-version";
/// Annotation tying an IngressRoute to uplinks (on a child).
pub const UPLINKS_ANNOTATION: &str = "hub.traefik.io/router.uplinks";
/// Annotation tying an IngressRoute to a portal.
pub const PORTAL_ANNOTATION: &str = "hub.traefik.io/api-portal";
/// Expose names must match this (the Uplink CRD's pattern).
pub const EXPOSE_NAME_PATTERN: &str = "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$";

/// What the parent knows of its children: child name → its uplinks. `None` when it is not
/// known at compile time (a standalone cluster), so `X@multicluster` is not checked.
pub type Registry = BTreeMap<String, Vec<pb::UplinkState>>;

/// A compiled snapshot body and the findings of compiling it.
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    /// The snapshot body.
    pub body: pb::SnapshotBody,
    /// Problems found; the objects concerned are left out of `body`.
    pub diagnostics: Vec<Diagnostic>,
}

impl Compiled {
    /// Whether compiling found errors.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

type Key = (String, String);

pub(crate) struct Ctx<'a> {
    values: &'a Values,
    registry: Option<&'a Registry>,
    k8s_services: HashMap<Key, (&'a Loaded, &'a K8sService)>,
    traefik_services: HashMap<Key, (&'a Loaded, &'a TraefikService)>,
    middlewares: HashMap<Key, (&'a Loaded, &'a Middleware)>,
    slices: Vec<(&'a Loaded, &'a EndpointSlice)>,
    endpoints_objects: HashMap<Key, &'a Endpoints>,
    secrets: HashMap<Key, &'a Secret>,
    uplinks: HashMap<Key, String>,
    expose_names: HashSet<String>,
    apis: HashSet<Key>,
    /// APIVersion (`namespace`, name) → the id of its version entry (`ns/api/version`), for
    /// the versions an API lists in `spec.versions`.
    api_versions: HashMap<Key, String>,
    portals: HashSet<Key>,
    /// Middleware ids that compiled.
    good_middlewares: HashSet<String>,
    services: BTreeMap<String, pb::Service>,
    in_progress: Vec<String>,
    warned: HashSet<String>,
    diags: Vec<Diagnostic>,
}

fn key(ns: &str, name: &str) -> Key {
    (ns.to_string(), name.to_string())
}

impl<'a> Ctx<'a> {
    fn diag(&mut self, sev: Severity, obj: &Loaded, field: &str, code: &'static str, msg: String) {
        self.diags.push(Diagnostic::on(sev, code, obj, field, msg));
    }

    fn err(&mut self, obj: &Loaded, field: &str, code: &'static str, msg: String) {
        self.diag(Severity::Error, obj, field, code, msg);
    }
}

/// The uplink expose name of an Uplink resource: `exposeName`, or `<namespace>-<name>`.
pub fn expose_name(obj: &Loaded, spec: &crate::resources::hub::UplinkSpec) -> String {
    spec.expose_name.clone().unwrap_or_else(|| format!("{}-{}", obj.ns(), obj.name()))
}

/// Resolves `name` of `name@multicluster`: the exact uplink name first, then the longest
/// child name that suffixes it (`crm-cluster-a` → uplink `crm` pinned to `cluster-a`).
pub fn resolve_multicluster(reg: &Registry, name: &str) -> Option<pb::Multicluster> {
    let exposes = |child: Option<&str>, uplink: &str| match child {
        None => reg.values().any(|ups| ups.iter().any(|u| u.name == uplink)),
        Some(c) => reg.get(c).is_some_and(|ups| ups.iter().any(|u| u.name == uplink)),
    };
    let (uplink, child) = atrium_routing::children::resolve(name, reg.keys().map(String::as_str), exposes)?;
    Some(pb::Multicluster { uplink: uplink.to_string(), child: child.unwrap_or_default().to_string() })
}

fn known_uplinks(reg: Option<&Registry>) -> String {
    let mut names: Vec<String> = reg
        .into_iter()
        .flat_map(|r| r.iter().flat_map(|(c, ups)| ups.iter().map(move |u| format!("{}@{c}", u.name))))
        .collect();
    names.sort();
    if names.is_empty() { "none".into() } else { names.join(", ") }
}

/// Compiles one cluster's resources.
pub fn compile(m: &Manifests, values: &Values, registry: Option<&Registry>) -> Compiled {
    let mut cx = Ctx {
        values,
        registry,
        k8s_services: HashMap::new(),
        traefik_services: HashMap::new(),
        middlewares: HashMap::new(),
        slices: Vec::new(),
        endpoints_objects: HashMap::new(),
        secrets: HashMap::new(),
        uplinks: HashMap::new(),
        expose_names: HashSet::new(),
        apis: HashSet::new(),
        api_versions: HashMap::new(),
        portals: HashSet::new(),
        good_middlewares: HashSet::new(),
        services: BTreeMap::new(),
        in_progress: Vec::new(),
        warned: HashSet::new(),
        diags: Vec::new(),
    };
    let mut routes = Vec::new();
    for l in &m.resources {
        let k = key(l.ns(), l.name());
        match &*l.resource {
            Resource::Service(s) => drop(cx.k8s_services.insert(k, (l, s))),
            Resource::TraefikService(s) => drop(cx.traefik_services.insert(k, (l, s))),
            Resource::Middleware(s) => drop(cx.middlewares.insert(k, (l, s))),
            Resource::EndpointSlice(s) => cx.slices.push((l, s)),
            Resource::Endpoints(s) => drop(cx.endpoints_objects.insert(k, s)),
            Resource::Secret(s) => drop(cx.secrets.insert(k, s)),
            Resource::Api(a) => {
                for v in &a.spec.versions {
                    let id = apim::version_id(l.ns(), l.name(), &v.name);
                    cx.api_versions.entry(key(l.ns(), &v.name)).or_insert(id);
                }
                cx.apis.insert(k);
            }
            Resource::ApiPortal(_) => drop(cx.portals.insert(k)),
            Resource::Uplink(u) => {
                let name = expose_name(l, &u.spec);
                cx.uplinks.insert(k, name.clone());
                cx.expose_names.insert(name);
            }
            Resource::IngressRoute(r) => routes.push((l, r)),
            _ => {}
        }
    }

    let entry_points: Vec<pb::EntryPoint> = values
        .entry_points()
        .map(|(n, e)| pb::EntryPoint {
            name: n.clone(),
            port: e.port.into(),
            tls: e.tls,
            uplink: e.uplink,
            allowed_encoded_characters: e.encoded_characters.bits(),
        })
        .collect();

    let middlewares = compile_middlewares(&mut cx, m);
    let uplinks = compile_uplinks(&mut cx, m);
    let mut routers = Vec::new();
    for (l, r) in routes {
        compile_ingress_route(&mut cx, l, r, &mut routers);
    }
    routers.sort_by(|a: &pb::Router, b| a.id.cmp(&b.id));
    let children = compile_children(values, registry);
    let (apis, applications, subscriptions) = apim::compile_apim(&mut cx, m);
    let catalog_items = apim::compile_catalog_items(&mut cx, m);
    let portals = apim::compile_portals(&mut cx, m);
    let content_pages = apim::compile_content(&mut cx, m);

    let body = pb::SnapshotBody {
        entry_points,
        routers,
        middlewares,
        services: cx.services.into_values().collect(),
        children,
        uplinks,
        // Filled by the binary, which reads the Secrets' key material.
        tls_certificates: Vec::new(),
        apis,
        applications,
        subscriptions,
        redis: values.redis.as_ref().and_then(redis),
        catalog_items,
        portals,
        portal_address: String::new(),
        content_pages,
    };
    let mut diagnostics = cx.diags;
    crate::diagnostic::sort(&mut diagnostics);
    Compiled { body, diagnostics }
}

/// Where plan counters are shared, when the values name a Redis server (the values have
/// been checked: a setting that does not read leaves Redis off).
fn redis(r: &crate::values::Redis) -> Option<pb::Redis> {
    Some(pb::Redis {
        endpoint: r.endpoints.clone(),
        username: r.username.clone(),
        password: r.password.clone(),
        database: r.database().ok()?,
        timeout_ms: r.timeout().ok()?.as_millis() as u64,
    })
}

fn compile_middlewares(cx: &mut Ctx<'_>, m: &Manifests) -> Vec<pb::Middleware> {
    let mut out = Vec::new();
    for l in &m.resources {
        let Resource::Middleware(mw) = &*l.resource else { continue };
        let kinds = mw.spec.kinds();
        if kinds.len() != 1 {
            let msg = if kinds.is_empty() {
                "a Middleware needs exactly one kind (stripPrefix, headers, …); none is set".to_string()
            } else {
                format!("a Middleware needs exactly one kind; found {}", kinds.join(", "))
            };
            cx.err(l, "spec", "schema", msg);
            continue;
        }
        let id = l.id();
        let mut spec = mw.spec.clone();
        if let Some(b) = spec.basic_auth.as_mut() {
            match resolve_basic_auth_users(cx, l, b) {
                Ok(users) => b.resolved_users = users,
                Err((field, code, msg)) => {
                    cx.err(l, field, code, msg);
                    continue;
                }
            }
        }
        if spec.chain.is_none()
            && let Err(e) = CompiledMiddleware::from_spec(&id, spec.clone())
        {
            let e = e.to_string();
            let code = if e.contains("not supported yet") { "unsupported-field" } else { "schema" };
            cx.err(l, &format!("spec.{}", kinds[0]), code, e);
            continue;
        }
        cx.good_middlewares.insert(id.clone());
        if mw.spec.chain.is_some() {
            // Chains are flattened into each router's list.
            continue;
        }
        if let Some((kind, json)) = spec.kind_json() {
            out.push(pb::Middleware { id, kind: kind.to_string(), config_json: json });
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// The users of a basicAuth middleware, from its Secret: `users` lines (htpasswd), or the
/// `username`/`password` of a `kubernetes.io/basic-auth` Secret (hashed, never in clear).
fn resolve_basic_auth_users(
    cx: &Ctx<'_>,
    l: &Loaded,
    b: &atrium_routing::middleware::config::BasicAuth,
) -> Result<Vec<String>, (&'static str, &'static str, String)> {
    use base64::Engine;
    if !b.resolved_users.is_empty() {
        return Err((
            "spec.basicAuth.resolvedUsers",
            "schema",
            "resolvedUsers is filled in by atrium from the Secret; set `secret` instead".into(),
        ));
    }
    let Some(name) = b.secret.as_deref() else {
        return Err(("spec.basicAuth", "schema", "basicAuth needs a `secret` holding its users".into()));
    };
    let Some(secret) = cx.secrets.get(&key(l.ns(), name)) else {
        return Err((
            "spec.basicAuth.secret",
            "unresolved-reference",
            format!("Secret {}/{name} does not exist", l.ns()),
        ));
    };
    let field = |k: &str| -> Option<String> {
        secret.string_data.get(k).cloned().or_else(|| {
            secret
                .data
                .get(k)
                .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v.trim()).ok())
                .and_then(|b| String::from_utf8(b).ok())
        })
    };
    if secret.type_.as_deref() == Some("kubernetes.io/basic-auth") {
        let (Some(u), Some(p)) = (field("username"), field("password")) else {
            return Err((
                "spec.basicAuth.secret",
                "schema",
                format!("Secret {}/{name} needs username and password", l.ns()),
            ));
        };
        return Ok(vec![atrium_routing::middleware::basic_auth::sha256_entry(&u, &p)]);
    }
    match field("users") {
        Some(users) => Ok(users.lines().map(str::trim).filter(|x| !x.is_empty()).map(str::to_string).collect()),
        None => Err(("spec.basicAuth.secret", "schema", format!("Secret {}/{name} has no `users` key", l.ns()))),
    }
}

impl<'a> Ctx<'a> {
    /// Resolves a middleware reference into the ids it runs (chains flattened).
    fn middleware_ref(
        &mut self,
        obj: &'a Loaded,
        ns: &str,
        r: &MiddlewareRef,
        path: &str,
        out: &mut Vec<String>,
    ) -> bool {
        let (name, provider) = match r.name.split_once('@') {
            Some((n, p)) => (n, Some(p)),
            None => (r.name.as_str(), None),
        };
        if let Some(p) = provider.filter(|p| *p != "kubernetescrd") {
            self.err(
                obj,
                &format!("{path}.name"),
                "unresolved-reference",
                format!("middleware {:?}: provider {p:?} is not available in atrium", r.name),
            );
            return false;
        }
        let mns = r.namespace.as_deref().unwrap_or(ns).to_string();
        let id = format!("{mns}/{name}");
        let Some(&(mobj, mw)) = self.middlewares.get(&key(&mns, name)) else {
            self.err(obj, &format!("{path}.name"), "unresolved-reference", format!("Middleware {id} does not exist"));
            return false;
        };
        if !self.good_middlewares.contains(&id) {
            self.err(
                obj,
                &format!("{path}.name"),
                "invalid-reference",
                format!("Middleware {id} is invalid (see its own error), so this route is not served"),
            );
            return false;
        }
        match &mw.spec.chain {
            None => {
                out.push(id);
                true
            }
            Some(chain) => {
                if self.in_progress.contains(&id) {
                    self.err(
                        obj,
                        &format!("{path}.name"),
                        "reference-cycle",
                        format!("middleware chain {id} refers back to itself"),
                    );
                    return false;
                }
                self.in_progress.push(id.clone());
                let mut ok = true;
                for (i, inner) in chain.middlewares.iter().enumerate() {
                    ok &= self.middleware_ref(mobj, &mns, inner, &format!("spec.chain.middlewares[{i}]"), out);
                }
                self.in_progress.pop();
                if !ok {
                    // Every referrer up the chain is in error too, so that all of them are
                    // left out at once.
                    self.err(
                        obj,
                        &format!("{path}.name"),
                        "invalid-reference",
                        format!("middleware chain {id} has a member that does not resolve (see its error)"),
                    );
                }
                ok
            }
        }
    }
}

/// What every router of one IngressRoute shares, and whether all of it resolved.
struct RouterCommon {
    /// The entrypoints, sorted and without duplicates.
    entry_points: Vec<String>,
    /// The API the routes belong to (`namespace/name`), or empty.
    api: String,
    /// The APIPortal the routes serve (`namespace/name`, `hub.traefik.io/api-portal`), or
    /// empty.
    portal: String,
    /// The uplinks the routes are exposed on, sorted and without duplicates.
    uplinks: Vec<String>,
    /// The TLS settings of the routes.
    tls: Option<pb::RouterTls>,
    /// Whether everything shared resolved; when not, no route is served.
    ok: bool,
}

fn compile_ingress_route<'a>(cx: &mut Ctx<'a>, l: &'a Loaded, r: &'a IngressRoute, out: &mut Vec<pb::Router>) {
    let ns = l.ns().to_string();
    let common = router_common(cx, l, r, &ns);
    for (i, route) in r.spec.routes.iter().enumerate() {
        if let Some(router) = compile_route(cx, l, &ns, i, route, &common) {
            out.push(router);
        }
    }
}

/// Checks and resolves what the routes of an IngressRoute share: entrypoints, API, portal,
/// uplinks and TLS secret.
fn router_common(cx: &mut Ctx<'_>, l: &Loaded, r: &IngressRoute, ns: &str) -> RouterCommon {
    let ann = &r.metadata.annotations;
    let mut entry_points = r.spec.entry_points.clone();
    entry_points.sort();
    entry_points.dedup();
    let mut ok = check_entry_points(cx, l, &r.spec.entry_points);
    let api = resolve_api(cx, l, ns, ann.get(API_ANNOTATION), ann.get(API_VERSION_ANNOTATION), &mut ok);
    let portal = check_portal(cx, l, ns, ann.get(PORTAL_ANNOTATION));
    let uplinks = resolve_uplinks(cx, l, ns, ann.get(UPLINKS_ANNOTATION), &mut ok);
    let tls = r
        .spec
        .tls
        .as_ref()
        .map(|t| pb::RouterTls { secret: t.secret_name.as_ref().map(|s| format!("{ns}/{s}")).unwrap_or_default() });
    ok &= check_tls_secret(cx, l, ns, r);
    RouterCommon { entry_points, api, portal, uplinks, tls, ok }
}

/// Checks that every entrypoint of an IngressRoute is defined in the values.
fn check_entry_points(cx: &mut Ctx<'_>, l: &Loaded, entry_points: &[String]) -> bool {
    let mut ok = true;
    for (i, ep) in entry_points.iter().enumerate() {
        if !cx.values.entry_points().any(|(n, _)| n == ep) {
            let known: Vec<&String> = cx.values.entry_points().map(|(n, _)| n).collect();
            cx.err(
                l,
                &format!("spec.entryPoints[{i}]"),
                "unknown-entrypoint",
                format!("entrypoint {ep:?} is not defined (known: {known:?})"),
            );
            ok = false;
        }
    }
    ok
}

/// Resolves the API annotation (`name` or `name@namespace`) into `namespace/name`, or the
/// APIVersion annotation into its version entry (`namespace/api/version`); empty without
/// either. Clears `ok` when the API or version does not exist, or when the route is
/// annotated for two APIs.
fn resolve_api(
    cx: &mut Ctx<'_>,
    l: &Loaded,
    ns: &str,
    api: Option<&String>,
    version: Option<&String>,
    ok: &mut bool,
) -> String {
    let field = |a: &str| format!("metadata.annotations.{a}");
    for (a, value) in [(API_ANNOTATION, api), (API_VERSION_ANNOTATION, version)] {
        if value.is_some_and(|v| v.contains(',') || v.trim().is_empty()) {
            let msg =
                format!("{a} must name one API, not {:?}: a route belongs to one API", value.unwrap_or(&String::new()));
            cx.err(l, &field(a), "schema", msg);
            *ok = false;
            return String::new();
        }
    }
    match (api, version) {
        (None, None) => String::new(),
        (Some(a), Some(v)) => {
            let msg = format!("the route is annotated for two APIs: API {a:?} and APIVersion {v:?}; keep one");
            cx.err(l, &field(API_VERSION_ANNOTATION), "conflict", msg);
            *ok = false;
            String::new()
        }
        (Some(a), None) => {
            let (name, api_ns) = a.split_once('@').unwrap_or((a.as_str(), ns));
            if !cx.apis.contains(&key(api_ns, name)) {
                cx.err(
                    l,
                    &field(API_ANNOTATION),
                    "unresolved-reference",
                    format!("API {api_ns}/{name} does not exist"),
                );
                *ok = false;
            }
            format!("{api_ns}/{name}")
        }
        (None, Some(v)) => match cx.api_versions.get(&key(ns, v)) {
            Some(id) => id.clone(),
            None => {
                let msg = format!("APIVersion {ns}/{v} is listed in the spec.versions of no API");
                cx.err(l, &field(API_VERSION_ANNOTATION), "unresolved-reference", msg);
                *ok = false;
                String::new()
            }
        },
    }
}

/// Reports a portal annotation naming a portal that does not exist (the routes are served anyway).
fn check_portal(cx: &mut Ctx<'_>, l: &Loaded, ns: &str, annotation: Option<&String>) -> String {
    let Some(p) = annotation.map(|p| p.trim()) else { return String::new() };
    if !cx.portals.contains(&key(ns, p)) {
        cx.err(
            l,
            &format!("metadata.annotations.{PORTAL_ANNOTATION}"),
            "unresolved-reference",
            format!("APIPortal {ns}/{p} does not exist"),
        );
    }
    format!("{ns}/{p}")
}

/// Resolves the uplinks annotation (a comma-separated list) into sorted expose names; clears
/// `ok` when one does not exist.
fn resolve_uplinks(cx: &mut Ctx<'_>, l: &Loaded, ns: &str, annotation: Option<&String>, ok: &mut bool) -> Vec<String> {
    let mut uplinks = Vec::new();
    if let Some(list) = annotation {
        for u in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let resolved =
                cx.uplinks.get(&key(ns, u)).cloned().or_else(|| cx.expose_names.contains(u).then(|| u.to_string()));
            match resolved {
                Some(n) => uplinks.push(n),
                None => {
                    cx.err(
                        l,
                        &format!("metadata.annotations.{UPLINKS_ANNOTATION}"),
                        "unresolved-reference",
                        format!("Uplink {u:?} does not exist in namespace {ns}"),
                    );
                    *ok = false;
                }
            }
        }
    }
    uplinks.sort();
    uplinks.dedup();
    uplinks
}

/// Checks that the TLS secret of an IngressRoute, if it names one, exists and holds a certificate.
fn check_tls_secret(cx: &mut Ctx<'_>, l: &Loaded, ns: &str, r: &IngressRoute) -> bool {
    let Some(secret) = r.spec.tls.as_ref().and_then(|t| t.secret_name.as_ref()) else { return true };
    match cx.secrets.get(&key(ns, secret)) {
        None => {
            cx.err(l, "spec.tls.secretName", "unresolved-reference", format!("Secret {ns}/{secret} does not exist"));
            false
        }
        Some(s) if !(s.data.contains_key("tls.crt") || s.string_data.contains_key("tls.crt")) => {
            cx.err(l, "spec.tls.secretName", "schema", format!("Secret {ns}/{secret} has no tls.crt / tls.key"));
            false
        }
        Some(_) => true,
    }
}

/// Compiles route `i` of an IngressRoute into a router, or `None` when any part of it (or of
/// what the routes share) does not resolve.
fn compile_route<'a>(
    cx: &mut Ctx<'a>,
    l: &'a Loaded,
    ns: &str,
    i: usize,
    route: &Route,
    common: &RouterCommon,
) -> Option<pb::Router> {
    let id = format!("{ns}/{}/{i}", l.name());
    let p = format!("spec.routes[{i}]");
    let mut ok = common.ok;
    if let Some(s) = route.syntax.as_deref().filter(|s| *s != "v3") {
        cx.err(
            l,
            &format!("{p}.syntax"),
            "unsupported-field",
            format!("rule syntax {s:?} is not supported; atrium speaks Traefik v3 rules"),
        );
        ok = false;
    }
    let rule = match Rule::parse(&route.rule) {
        Ok(rule) => Some(rule),
        Err(e) => {
            cx.err(l, &format!("{p}.match"), "rule-parse", format!("invalid rule {:?}: {e}", route.rule));
            None
        }
    };
    let mut mws = Vec::new();
    for (j, mr) in route.middlewares.iter().enumerate() {
        ok &= cx.middleware_ref(l, ns, mr, &format!("{p}.middlewares[{j}]"), &mut mws);
    }
    let (service, display) = route_service(cx, l, ns, &p, &id, &route.services);
    let service = service.map(|s| services::portal_of(cx, s, &common.portal));
    let (Some(rule), Some(service), true) = (rule, service, ok) else { return None };
    let priority = route.priority.filter(|p| *p != 0).unwrap_or_else(|| rule.default_priority());
    Some(pb::Router {
        id,
        entry_points: common.entry_points.clone(),
        rule: route.rule.clone(),
        priority,
        middlewares: mws,
        service,
        tls: common.tls.clone(),
        uplinks: common.uplinks.clone(),
        api: common.api.clone(),
        service_display: display,
    })
}

/// Resolves the services of a route (at `p`, router `id`) into the service id it sends to and
/// the names shown for it; `None` for the id when they do not resolve.
fn route_service<'a>(
    cx: &mut Ctx<'a>,
    l: &'a Loaded,
    ns: &str,
    p: &str,
    id: &str,
    services: &[ServiceRef],
) -> (Option<String>, String) {
    match services {
        [] => {
            cx.err(l, &format!("{p}.services"), "schema", "a route needs at least one service".into());
            (None, String::new())
        }
        [one] => (cx.service_ref(l, ns, one.lb(), &format!("{p}.services[0]"), id), one.name.clone()),
        many => {
            let sid = weighted_route_service(cx, l, ns, p, id, many);
            (sid, many.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(","))
        }
    }
}

/// Registers a weighted service under the router id `id` over several services of a route;
/// `None` when any of them does not resolve (nothing is registered then).
fn weighted_route_service<'a>(
    cx: &mut Ctx<'a>,
    l: &'a Loaded,
    ns: &str,
    p: &str,
    id: &str,
    many: &[ServiceRef],
) -> Option<String> {
    let mut ws = Vec::new();
    let mut all = true;
    for (j, s) in many.iter().enumerate() {
        match cx.service_ref(l, ns, s.lb(), &format!("{p}.services[{j}]"), id) {
            Some(sid) => ws.push(pb::WeightedService { service: sid, weight: s.weight.unwrap_or(1).max(0) as u32 }),
            None => all = false,
        }
    }
    ws.sort_by(|a, b| a.service.cmp(&b.service));
    all.then(|| {
        cx.services.insert(
            id.to_string(),
            pb::Service { id: id.to_string(), kind: Some(pb::service::Kind::Weighted(pb::Weighted { services: ws })) },
        );
        id.to_string()
    })
}

fn compile_uplinks(cx: &mut Ctx<'_>, m: &Manifests) -> Vec<pb::Uplink> {
    let pattern = regex::Regex::new(EXPOSE_NAME_PATTERN).expect("static pattern");
    let mut out: Vec<pb::Uplink> = Vec::new();
    let mut seen: HashMap<String, (&Loaded, &str)> = HashMap::new();
    let mut conflicted: HashSet<String> = HashSet::new();
    for l in &m.resources {
        let Resource::Uplink(u) = &*l.resource else { continue };
        let name = expose_name(l, &u.spec);
        let field = if u.spec.expose_name.is_some() { "spec.exposeName" } else { "metadata.name" };
        if !pattern.is_match(&name) || name.len() > 253 {
            cx.err(
                l,
                field,
                "uplink-expose-name",
                format!(
                    "expose name {name:?} must match {EXPOSE_NAME_PATTERN} (lower-case letters, digits, '-' and '.')"
                ),
            );
            continue;
        }
        // Two Uplinks with one expose name: both are in error and neither is offered.
        if let Some(&(other, other_field)) = seen.get(&name) {
            cx.err(l, field, "duplicate", format!("expose name {name:?} is already used by {}", other.label()));
            if conflicted.insert(name.clone()) {
                cx.err(other, other_field, "duplicate", format!("expose name {name:?} is also used by {}", l.label()));
                out.retain(|u| u.name != name);
            }
            continue;
        }
        seen.insert(name.clone(), (l, field));
        let mut ok = true;
        for (i, ep) in u.spec.entry_points.iter().enumerate() {
            match cx.values.ports.get(ep) {
                Some(e) if e.uplink => {}
                _ => {
                    cx.err(
                        l,
                        &format!("spec.entryPoints[{i}]"),
                        "unknown-entrypoint",
                        format!("{ep:?} is not an uplink entrypoint (a port with `uplink: true` in the values)"),
                    );
                    ok = false;
                }
            }
        }
        let weight = u.spec.weight.unwrap_or(1);
        if weight < 0 {
            cx.err(l, "spec.weight", "schema", "weight must not be negative (0 means standby)".into());
            ok = false;
        }
        let hc = match u.spec.health_check.as_ref().map(health_check).transpose() {
            Ok(h) => h,
            Err(e) => {
                cx.err(l, &format!("spec.healthCheck.{}", e.field()), "schema", e.to_string());
                ok = false;
                None
            }
        };
        if !ok {
            continue;
        }
        let mut eps = u.spec.entry_points.clone();
        eps.sort();
        out.push(pb::Uplink { name, id: l.id(), weight: weight as u32, entry_points: eps, health_check: hc });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn compile_children(values: &Values, registry: Option<&Registry>) -> Vec<pb::Child> {
    let mut children: Vec<pb::Child> = values
        .children()
        .map(|(name, c)| {
            let t = c.servers_transport.clone().unwrap_or_default();
            pb::Child {
                name: name.clone(),
                address: c.address.clone(),
                transport: Some(pb::ServersTransport {
                    insecure_skip_verify: t.insecure_skip_verify.unwrap_or(false),
                    root_cas: t.root_cas.clone(),
                    server_name: t.server_name.clone().unwrap_or_default(),
                    certificates: t
                        .certificates
                        .iter()
                        .map(|p| pb::ClientCertificate { cert_file: p.cert_file.clone(), key_file: p.key_file.clone() })
                        .collect(),
                }),
                reachable: false,
                uplinks: Vec::new(),
            }
        })
        .collect();
    if let Some(r) = registry {
        apply_registry(&mut children, r);
    }
    children
}

/// Merges what the parent knows of its children into their snapshot entries: a child in
/// the registry is reachable with its uplinks (sorted by name); any other is unreachable
/// with none. The one merge of registry and configuration (the compiler's, and the
/// control plane's on every registry change).
pub fn apply_registry(children: &mut [pb::Child], registry: &Registry) {
    for c in children {
        match registry.get(&c.name) {
            Some(ups) => {
                c.reachable = true;
                c.uplinks = ups.clone();
                c.uplinks.sort_by(|a, b| a.name.cmp(&b.name));
            }
            None => {
                c.reachable = false;
                c.uplinks.clear();
            }
        }
    }
}

/// The registry a topology implies when every child is up and healthy: each child's
/// uplinks from its own compile.
pub fn static_registry(children: &[(String, &pb::SnapshotBody)]) -> Registry {
    children
        .iter()
        .map(|(name, body)| {
            let ups = body
                .uplinks
                .iter()
                .map(|u| pb::UplinkState {
                    name: u.name.clone(),
                    weight: u.weight,
                    healthy: true,
                    entry_points: u.entry_points.clone(),
                })
                .collect();
            (name.clone(), ups)
        })
        .collect()
}

#[cfg(test)]
mod tests;
