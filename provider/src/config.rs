//! One compile for every provider: values and loaded manifests → a [`Config`], with each
//! invalid object isolated.
//!
//! An object with an error (it does not decode, breaks its upstream schema, or does not
//! compile) is reported and left out, and everything that depends on it goes with it: a
//! route naming a left-out Middleware, Service, API or TLS Secret fails to resolve and is
//! left out too (never served without it), and the APIs of a namespace whose APIAuth is
//! left out refuse every call. What remains is served. A problem that belongs to no object
//! (a values error, a file that is not YAML) refuses the whole set instead: there is no
//! telling what it held, so the previous configuration stays in force. `atrium lint`
//! stays strict: any error fails it.

use atrium_model::diagnostic::{Diagnostic, Severity};
use atrium_model::loader::Manifests;
use atrium_model::resources::Resource;
use atrium_model::values::Values;
use atrium_proto::v1 as pb;
use atrium_routing::rules::Rule;
use base64::Engine;

/// A configuration that compiled: the values it was compiled with, the snapshot body, and
/// the objects left out.
#[derive(Debug, Clone)]
pub struct Config {
    /// The values.
    pub values: Values,
    /// The compiled snapshot body, with the TLS certificates routers name.
    pub body: pb::SnapshotBody,
    /// The errors of the objects left out (each names its object).
    pub left_out: Vec<Diagnostic>,
}

impl Config {
    /// The left-out objects' errors, per object label (`Kind namespace/name`).
    pub fn problems(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for d in &self.left_out {
            if let Some(o) = &d.object {
                out.entry(o.clone()).or_default().push(d.to_string());
            }
        }
        out
    }
}

/// Why a configuration cannot be loaded or watched.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A manifest path does not exist.
    #[error("{}: no such file or directory", .0.display())]
    Missing(std::path::PathBuf),
    /// The values do not load (each line names the file, line and field).
    #[error("invalid values:\n{}", .0.join("\n"))]
    Values(Vec<String>),
    /// The manifests do not compile (each line names the file, line and field).
    #[error("the configuration does not compile:\n{}", .0.join("\n"))]
    Compile(Vec<String>),
    /// A path cannot be watched.
    #[error("watching {}: {source}", path.display())]
    Watch {
        /// The path.
        path: std::path::PathBuf,
        /// Why.
        source: notify::Error,
    },
    /// The Kubernetes API server cannot be used.
    #[error(transparent)]
    Kubernetes(#[from] atrium_k8s::ClusterError),
}

impl SourceError {
    /// The error lines (one per finding).
    pub fn lines(&self) -> Vec<String> {
        match self {
            SourceError::Values(l) | SourceError::Compile(l) => l.clone(),
            other => vec![other.to_string()],
        }
    }
}

pub(crate) fn errors_of(diags: &[Diagnostic]) -> Vec<String> {
    diags.iter().filter(|d| d.is_error()).map(|d| d.to_string()).collect()
}

/// Compiles `m` with `values`, leaving out each invalid object and what depends on it.
/// Warnings are logged, and each left-out object's errors.
pub fn compile(values: Values, value_diags: &[Diagnostic], mut m: Manifests) -> Result<Config, SourceError> {
    let errors = errors_of(value_diags);
    if !errors.is_empty() {
        return Err(SourceError::Values(errors));
    }
    for d in value_diags.iter().chain(&m.diagnostics).filter(|d| !d.is_error()) {
        tracing::warn!("{d}");
    }
    // What cannot be pinned on one object refuses the set.
    let fatal: Vec<String> =
        m.diagnostics.iter().filter(|d| d.is_error() && d.object.is_none()).map(|d| d.to_string()).collect();
    if !fatal.is_empty() {
        return Err(SourceError::Compile(fatal));
    }
    let mut left_out: Vec<Diagnostic> = m.diagnostics.iter().filter(|d| d.is_error()).cloned().collect();
    // An object that decoded but breaks its upstream schema is left out like one that did
    // not decode.
    let bad: std::collections::HashSet<&str> = left_out.iter().filter_map(|d| d.object.as_deref()).collect();
    if !bad.is_empty() {
        m.resources.retain(|l| !bad.contains(l.label().as_str()));
    }
    // Each round leaves at least one object out, so this ends.
    for _ in 0..=m.resources.len() {
        let compiled = atrium_model::compile::compile(&m, &values, None);
        let mut errs: Vec<Diagnostic> = compiled.diagnostics.iter().filter(|d| d.is_error()).cloned().collect();
        let mut body = compiled.body;
        if errs.is_empty() {
            match certificates(&m, &body) {
                Ok(c) => {
                    for d in compiled.diagnostics.iter().filter(|d| !d.is_error()) {
                        tracing::warn!("{d}");
                    }
                    body.tls_certificates = c;
                    for d in &left_out {
                        tracing::error!("{d} (left out)");
                    }
                    return Ok(Config { values, body, left_out });
                }
                Err(e) => errs = e,
            }
        }
        let before = m.resources.len();
        let bad: std::collections::HashSet<String> = errs.iter().filter_map(|d| d.object.clone()).collect();
        if errs.iter().any(|d| d.object.is_none()) {
            return Err(SourceError::Compile(errors_of(&errs)));
        }
        m.resources.retain(|l| !bad.contains(&l.label()));
        if m.resources.len() == before {
            // An error on an object that is not there: nothing left to take out.
            return Err(SourceError::Compile(errors_of(&errs)));
        }
        // The compiler reads the errors of loading to tell left-out objects (an APIAuth
        // left out must not leave its namespace's APIs open).
        m.diagnostics.extend(errs.iter().cloned());
        left_out.extend(errs);
    }
    Err(SourceError::Compile(errors_of(&left_out)))
}

/// The certificates routers name by `tls.secretName`, each with the hosts of the rules of
/// the routers naming it; a Secret that does not hold a usable pair is an error on it.
fn certificates(m: &Manifests, body: &pb::SnapshotBody) -> Result<Vec<pb::TlsCertificate>, Vec<Diagnostic>> {
    let mut out: std::collections::BTreeMap<String, pb::TlsCertificate> = Default::default();
    let mut errors = Vec::new();
    for r in &body.routers {
        let Some(secret) = r.tls.as_ref().map(|t| t.secret.as_str()).filter(|s| !s.is_empty()) else { continue };
        let Some(l) = m.resources.iter().find(|l| matches!(*l.resource, Resource::Secret(_)) && l.id() == secret)
        else {
            continue;
        };
        let Resource::Secret(s) = &*l.resource else { continue };
        let field = |k: &str| -> Result<Vec<u8>, String> {
            if let Some(v) = s.string_data.get(k) {
                return Ok(v.as_bytes().to_vec());
            }
            let b64 = s.data.get(k).ok_or_else(|| format!("the Secret has no {k}"))?;
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| format!("data.{k}: invalid base64: {e}"))
        };
        let pair = (|| {
            let (cert, key) = (field("tls.crt")?, field("tls.key")?);
            atrium_data_plane::trust::certified_key(&cert, &key).map_err(|e| e.to_string())?;
            let text = |b: Vec<u8>, k: &str| String::from_utf8(b).map_err(|_| format!("{k} is not PEM text"));
            Ok::<_, String>((text(cert, "tls.crt")?, text(key, "tls.key")?))
        })();
        let (cert_pem, key_pem) = match pair {
            Ok(p) => p,
            Err(msg) => {
                let d = Diagnostic::on(Severity::Error, "tls", l, "data", msg);
                if !errors.contains(&d) {
                    errors.push(d);
                }
                continue;
            }
        };
        let entry = out.entry(secret.to_string()).or_insert_with(|| pb::TlsCertificate {
            secret: secret.to_string(),
            server_names: Vec::new(),
            cert_pem,
            key_pem,
        });
        entry.server_names.extend(Rule::parse(&r.rule).ok().and_then(|rule| rule.required_hosts()).unwrap_or_default());
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(out
        .into_values()
        .map(|mut c| {
            c.server_names.sort();
            c.server_names.dedup();
            c
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use atrium_model::loader::load_text;

    const GOOD: &str = "apiVersion: traefik.io/v1alpha1\nkind: IngressRoute\nmetadata: {name: good, namespace: apps}\nspec:\n  routes:\n    - match: PathPrefix(`/good`)\n      services: [{name: ext, port: 80}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: ext, namespace: apps}\nspec: {type: ExternalName, externalName: backend.test, ports: [{port: 80}]}\n";

    fn rules(c: &Config) -> Vec<String> {
        c.body.routers.iter().map(|r| r.rule.clone()).collect()
    }

    #[test]
    fn an_invalid_object_is_left_out_and_the_rest_served() {
        let bad = "---\napiVersion: traefik.io/v1alpha1\nkind: IngressRoute\nmetadata: {name: bad, namespace: apps}\nspec:\n  routes:\n    - match: PathPrefix(`/bad`\n      services: [{name: ext, port: 80}]\n";
        let c = compile(Values::default(), &[], load_text("m.yaml", &format!("{GOOD}{bad}"))).unwrap();
        assert_eq!(rules(&c), vec!["PathPrefix(`/good`)"]);
        assert_eq!(c.left_out.len(), 1);
        assert!(c.problems().contains_key("IngressRoute apps/bad"), "{:?}", c.problems());
    }

    #[test]
    fn a_route_naming_a_left_out_middleware_is_left_out_too() {
        let mw = "---\napiVersion: traefik.io/v1alpha1\nkind: Middleware\nmetadata: {name: auth, namespace: apps}\nspec:\n  basicAuth: {secret: missing}\n---\napiVersion: traefik.io/v1alpha1\nkind: IngressRoute\nmetadata: {name: guarded, namespace: apps}\nspec:\n  routes:\n    - match: PathPrefix(`/guarded`)\n      middlewares: [{name: auth}]\n      services: [{name: ext, port: 80}]\n";
        let c = compile(Values::default(), &[], load_text("m.yaml", &format!("{GOOD}{mw}"))).unwrap();
        assert_eq!(rules(&c), vec!["PathPrefix(`/good`)"], "never served without its middleware");
        let p = c.problems();
        assert!(p.contains_key("Middleware apps/auth") && p.contains_key("IngressRoute apps/guarded"), "{p:?}");
    }

    #[test]
    fn a_route_of_a_left_out_api_is_left_out_too() {
        let api = "---\napiVersion: hub.traefik.io/v1alpha1\nkind: API\nmetadata: {name: crm, namespace: apps}\nspec: {openApiSpec: {url: 5}}\n---\napiVersion: traefik.io/v1alpha1\nkind: IngressRoute\nmetadata:\n  name: crm\n  namespace: apps\n  annotations: {hub.traefik.io/api: crm}\nspec:\n  routes:\n    - match: PathPrefix(`/crm`)\n      services: [{name: ext, port: 80}]\n";
        let c = compile(Values::default(), &[], load_text("m.yaml", &format!("{GOOD}{api}"))).unwrap();
        assert_eq!(rules(&c), vec!["PathPrefix(`/good`)"], "never served without its API's checks");
        let p = c.problems();
        assert!(p.contains_key("API apps/crm") && p.contains_key("IngressRoute apps/crm"), "{p:?}");
    }

    #[test]
    fn a_left_out_api_auth_closes_its_namespace_apis() {
        let apim = "---\napiVersion: hub.traefik.io/v1alpha1\nkind: API\nmetadata: {name: crm, namespace: apps}\nspec: {}\n---\napiVersion: hub.traefik.io/v1alpha1\nkind: APIAuth\nmetadata: {name: jwt, namespace: apps}\nspec: {isDefault: true, jwt: {appIdClaim: sub, unknownField: 1}}\n";
        let c = compile(Values::default(), &[], load_text("m.yaml", &format!("{GOOD}{apim}"))).unwrap();
        let api = c.body.apis.iter().find(|a| a.id == "apps/crm").expect("the API stays");
        assert!(
            matches!(&api.auth, Some(pb::api::Auth::Unsupported(m)) if m.contains("APIAuth apps/jwt")),
            "calls are refused, never let through on API keys: {:?}",
            api.auth
        );
    }

    fn application(ns: &str, app_id: &str, key: &str) -> String {
        format!(
            "---\napiVersion: hub.traefik.io/v1alpha1\nkind: ManagedApplication\nmetadata: {{name: app, namespace: {ns}}}\nspec: {{appId: {app_id}, owner: o, apiKeys: [{{value: {key}}}]}}\n"
        )
    }

    #[test]
    fn two_claims_on_one_app_id_leave_both_out() {
        // An object in another namespace (sorted first) cannot take an application's place.
        let text = format!(
            "{GOOD}{}{}",
            application("aaa", "victim", "attacker-key-0123456789"),
            application("apps", "victim", "victim-key-0123456789")
        );
        let c = compile(Values::default(), &[], load_text("m.yaml", &text)).unwrap();
        assert!(c.body.applications.is_empty(), "{:?}", c.body.applications);
        let p = c.problems();
        assert!(p.contains_key("ManagedApplication aaa/app") && p.contains_key("ManagedApplication apps/app"), "{p:?}");
    }

    #[test]
    fn an_object_breaking_its_upstream_schema_is_left_out() {
        let text = format!("{GOOD}{}", application("apps", &"a".repeat(300), "key-0123456789abcdef"));
        let c = compile(Values::default(), &[], load_text("m.yaml", &text)).unwrap();
        assert!(c.body.applications.is_empty(), "{:?}", c.body.applications);
        assert!(c.problems()["ManagedApplication apps/app"][0].contains("spec.appId"), "{:?}", c.problems());
    }

    #[test]
    fn a_long_chain_of_middlewares_leaves_its_route_out_without_refusing_the_set() {
        let mut text = GOOD.to_string();
        for i in 0..40 {
            text.push_str(&format!("---\napiVersion: traefik.io/v1alpha1\nkind: Middleware\nmetadata: {{name: c{i}, namespace: apps}}\nspec:\n  chain: {{middlewares: [{{name: c{}}}]}}\n", i + 1));
        }
        text.push_str("---\napiVersion: traefik.io/v1alpha1\nkind: IngressRoute\nmetadata: {name: chained, namespace: apps}\nspec:\n  routes:\n    - match: PathPrefix(`/chained`)\n      middlewares: [{name: c0}]\n      services: [{name: ext, port: 80}]\n");
        let c = compile(Values::default(), &[], load_text("m.yaml", &text)).unwrap();
        assert_eq!(rules(&c), vec!["PathPrefix(`/good`)"]);
        assert!(c.problems().contains_key("IngressRoute apps/chained"), "{:?}", c.problems().keys());
    }

    #[test]
    fn what_belongs_to_no_object_refuses_the_set() {
        let e = compile(Values::default(), &[], load_text("m.yaml", &format!("{GOOD}---\nkind: [\n"))).unwrap_err();
        assert!(e.lines().iter().all(|l| l.starts_with("m.yaml:")), "{:?}", e.lines());
    }

    #[test]
    fn a_broken_tls_secret_takes_its_routes_out() {
        let tls = "---\napiVersion: traefik.io/v1alpha1\nkind: IngressRoute\nmetadata: {name: secure, namespace: apps}\nspec:\n  routes:\n    - match: Host(`a.test`)\n      services: [{name: ext, port: 80}]\n  tls: {secretName: cert}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: cert, namespace: apps}\ntype: kubernetes.io/tls\ndata: {tls.crt: bm90IGEgY2VydA==, tls.key: bm90IGEga2V5}\n";
        let c = compile(Values::default(), &[], load_text("m.yaml", &format!("{GOOD}{tls}"))).unwrap();
        assert_eq!(rules(&c), vec!["PathPrefix(`/good`)"]);
        let p = c.problems();
        assert!(p.contains_key("Secret apps/cert") && p.contains_key("IngressRoute apps/secure"), "{p:?}");
    }
}
