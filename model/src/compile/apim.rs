//! API management resources → the snapshot's access rules: each API with how its callers
//! authenticate (the namespace's default APIAuth, or API keys when there is none, as in
//! Traefik Hub), each ManagedApplication with the SHA-256 of its keys (a key itself never
//! enters a snapshot), and each ManagedSubscription with the applications, APIs and plan it
//! covers. A reference that does not resolve is an error on the object and field that
//! names it; the object is left out.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use atrium_proto::v1 as pb;
use base64::Engine;

use super::{Ctx, key};
use crate::loader::Manifests;
use crate::resources::hub::{
    ApiAuthSpec, ApiPlanSpec, Bucket, JwtAuth, ManagedApplicationSpec, ManagedSubscriptionSpec, PlanLimit,
};
use crate::resources::meta::{LabelSelector, NameRef};
use crate::resources::{Loaded, Resource};

/// The access rules of `m`, in snapshot order.
pub(super) fn compile_apim(
    cx: &mut Ctx<'_>,
    m: &Manifests,
) -> (Vec<pb::Api>, Vec<pb::Application>, Vec<pb::Subscription>) {
    let apis = compile_apis(cx, m);
    let applications = compile_applications(cx, m);
    let subscriptions = compile_subscriptions(cx, m);
    (apis, applications, subscriptions)
}

/// Every API with its namespace's authentication.
fn compile_apis(cx: &mut Ctx<'_>, m: &Manifests) -> Vec<pb::Api> {
    let mut default_auth: HashMap<&str, (&Loaded, pb::api::Auth)> = HashMap::new();
    for l in &m.resources {
        let Resource::ApiAuth(a) = &*l.resource else { continue };
        if !a.spec.is_default {
            continue;
        }
        let auth = compile_auth(cx, l, &a.spec);
        if let Some((other, _)) = default_auth.insert(l.ns(), (l, auth)) {
            let msg = format!("two default APIAuths in namespace {}: {} and {}", l.ns(), other.id(), l.id());
            cx.err(l, "spec.isDefault", "conflict", msg);
        }
    }
    // An APIAuth left out as invalid (the provider isolates objects) may have been its
    // namespace's default: its APIs refuse every call rather than fall back to API keys.
    let left_out: HashMap<&str, &str> = m
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .filter_map(|d| d.object.as_deref())
        .filter_map(|o| Some((o.strip_prefix("APIAuth ")?.split_once('/')?.0, o)))
        .collect();
    let auth_of = |ns: &str| match (left_out.get(ns), default_auth.get(ns)) {
        (Some(label), _) => {
            pb::api::Auth::Unsupported(format!("{label} is invalid and left out: calls are refused until it is fixed"))
        }
        (None, Some((_, a))) => a.clone(),
        (None, None) => pb::api::Auth::ApiKey(pb::ApiKeyAuth::default()),
    };
    let mut out = Vec::new();
    for l in &m.resources {
        let Resource::Api(api) = &*l.resource else { continue };
        let spec = (api.spec.cors.as_ref(), api.spec.open_api_spec.as_ref());
        let mut entry = api_entry(cx, l, l.id(), auth_of(l.ns()), spec);
        entry.title = api.spec.title.clone().unwrap_or_else(|| l.name().to_string());
        entry.description = api.spec.description.clone().unwrap_or_default();
        out.push(entry);
        // Each APIVersion it lists is an entry of its own (its routes, CORS and spec), with
        // the namespace's authentication; subscriptions to the API cover it.
        for v in &api.spec.versions {
            let found = m.resources.iter().find(|o| o.ns() == l.ns() && o.name() == v.name);
            let Some((vl, Resource::ApiVersion(version))) = found.map(|o| (o, &*o.resource)) else { continue };
            let spec = (version.spec.cors.as_ref(), version.spec.open_api_spec.as_ref());
            let mut entry = api_entry(cx, vl, version_id(l.ns(), l.name(), &v.name), auth_of(l.ns()), spec);
            let api_title = api.spec.title.as_deref().unwrap_or(l.name());
            entry.title = version.spec.title.clone().unwrap_or_else(|| format!("{api_title} {}", version.spec.release));
            entry.description =
                version.spec.description.clone().or_else(|| api.spec.description.clone()).unwrap_or_default();
            out.push(entry);
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out.dedup_by(|a, b| a.id == b.id);
    out
}

/// The entry `id` of an API or APIVersion `l`: `auth`, its CORS and its spec. An invalid
/// spec is an error on `l`, and the entry is never served open nor without its checks.
fn api_entry(
    cx: &mut Ctx<'_>,
    l: &Loaded,
    id: String,
    auth: pb::api::Auth,
    (cors, spec): (Option<&crate::resources::hub::Cors>, Option<&crate::resources::hub::OpenApiSpec>),
) -> pb::Api {
    let mut out =
        pb::Api { id, auth: Some(auth), cors_json: cors.map(cors_json).unwrap_or_default(), ..Default::default() };
    if let Some(spec) = spec {
        if let Err((field, msg)) = open_api_spec(spec, &mut out) {
            cx.err(l, &format!("spec.openApiSpec{field}"), "schema", msg.clone());
            out.auth = Some(pb::api::Auth::Unsupported(format!("{}: {msg}", l.label())));
        }
    }
    out
}

/// The id of the entry of APIVersion `version` of API `ns/api`.
pub(super) fn version_id(ns: &str, api: &str, version: &str) -> String {
    format!("{ns}/{api}/{version}")
}

/// `apis` (API ids) and the entries of the versions they list.
fn with_versions(m: &Manifests, apis: Vec<String>) -> Vec<String> {
    let mut out: BTreeSet<String> = apis.iter().cloned().collect();
    for l in &m.resources {
        let Resource::Api(api) = &*l.resource else { continue };
        if apis.contains(&l.id()) {
            out.extend(api.spec.versions.iter().map(|v| version_id(l.ns(), l.name(), &v.name)));
        }
    }
    out.into_iter().collect()
}

/// How callers of the APIs of APIAuth `l`'s namespace authenticate. A method that is
/// invalid or not built is an error on `l`, and the APIs answer 401 (never served open).
fn compile_auth(cx: &mut Ctx<'_>, l: &Loaded, a: &ApiAuthSpec) -> pb::api::Auth {
    let methods = [a.api_key.is_some(), a.jwt.is_some(), a.ldap.is_some()].iter().filter(|m| **m).count();
    if methods != 1 {
        let msg = "an APIAuth needs exactly one of apiKey, jwt and ldap".to_string();
        cx.err(l, "spec", "schema", msg.clone());
        return pb::api::Auth::Unsupported(format!("APIAuth {}: {msg}", l.id()));
    }
    if let Some(k) = &a.api_key {
        let src = k.key_source.clone().unwrap_or_default();
        if src.header_auth_scheme.is_some()
            && !src.header.as_deref().is_some_and(|h| h.eq_ignore_ascii_case("authorization"))
        {
            let msg = "headerAuthScheme can only be used when header is 'Authorization'".to_string();
            cx.err(l, "spec.apiKey.keySource.headerAuthScheme", "schema", msg.clone());
            return pb::api::Auth::Unsupported(format!("APIAuth {}: {msg}", l.id()));
        }
        return pb::api::Auth::ApiKey(pb::ApiKeyAuth {
            header: src.header.unwrap_or_default(),
            header_auth_scheme: src.header_auth_scheme.unwrap_or_default(),
            query: src.query.unwrap_or_default(),
        });
    }
    if let Some(j) = &a.jwt {
        return match compile_jwt(cx, l, j) {
            Ok(j) => pb::api::Auth::Jwt(j),
            Err((field, msg)) => {
                cx.err(l, &field, "schema", msg.clone());
                pb::api::Auth::Unsupported(format!("APIAuth {}: {msg}", l.id()))
            }
        };
    }
    let msg = "LDAP authentication is not built yet: the API's routes answer 401".to_string();
    cx.err(l, "spec.ldap", "unsupported-field", msg.clone());
    pb::api::Auth::Unsupported(format!("APIAuth {}: {msg}", l.id()))
}

/// An APIAuth's `jwt`, checked as the upstream schema says; the error names its field.
fn compile_jwt(cx: &Ctx<'_>, l: &Loaded, j: &JwtAuth) -> Result<pb::JwtAuth, (String, String)> {
    use pb::jwt_auth::Keys;
    let f = |name: &str| format!("spec.jwt.{name}");
    if j.app_id_claim.trim().is_empty() {
        return Err((f("appIdClaim"), "appIdClaim must name a claim".into()));
    }
    let given = [
        j.signing_secret_name.is_some(),
        j.public_key.is_some(),
        j.jwks_file.is_some(),
        j.jwks_url.is_some(),
        j.trusted_issuers.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        let msg = "exactly one of signingSecretName, publicKey, jwksFile, jwksUrl, or trustedIssuers must be specified";
        return Err(("spec.jwt".into(), msg.into()));
    }
    let https = |field: String, url: &str| {
        if url.starts_with("https://") && url.len() > "https://".len() && http::Uri::try_from(url).is_ok() {
            Ok(())
        } else {
            Err((field, format!("{url:?} must be a valid HTTPS URL")))
        }
    };
    let keys = if let Some(name) = &j.signing_secret_name {
        let secret = secret_key(cx, l.ns(), name).map_err(|m| (f("signingSecretName"), m))?;
        if secret.is_empty() {
            return Err((f("signingSecretName"), format!("Secret {}/{name} holds an empty secret", l.ns())));
        }
        Keys::HmacSecret(secret.into_bytes())
    } else if let Some(pem) = &j.public_key {
        if !pem.trim_start().starts_with("-----BEGIN ") {
            return Err((f("publicKey"), "publicKey must be a PEM-encoded public key".into()));
        }
        Keys::PublicKeyPem(pem.clone())
    } else if let Some(doc) = &j.jwks_file {
        let v: serde_json::Value =
            serde_json::from_str(doc).map_err(|e| (f("jwksFile"), format!("jwksFile is not a JWKS document: {e}")))?;
        if !v.get("keys").is_some_and(|k| k.is_array()) {
            return Err((f("jwksFile"), "jwksFile is not a JWKS document: no `keys` list".into()));
        }
        Keys::JwksJson(doc.clone())
    } else if let Some(url) = &j.jwks_url {
        https(f("jwksUrl"), url)?;
        Keys::JwksUrls(pb::JwksSources {
            issuers: vec![pb::TrustedIssuer { issuer: String::new(), jwks_url: url.clone() }],
        })
    } else {
        let list = j.trusted_issuers.as_deref().unwrap_or_default();
        if list.is_empty() || list.len() > 100 {
            return Err((f("trustedIssuers"), "trustedIssuers needs between 1 and 100 entries".into()));
        }
        let mut issuers = Vec::new();
        for (i, t) in list.iter().enumerate() {
            https(f(&format!("trustedIssuers[{i}].jwksUrl")), &t.jwks_url)?;
            issuers
                .push(pb::TrustedIssuer { issuer: t.issuer.clone().unwrap_or_default(), jwks_url: t.jwks_url.clone() });
        }
        if issuers.iter().filter(|t| t.issuer.is_empty()).count() > 1 {
            return Err((f("trustedIssuers"), "only one entry in trustedIssuers may omit the issuer field".into()));
        }
        Keys::JwksUrls(pb::JwksSources { issuers })
    };
    for (header, claim) in &j.forward_headers {
        if http::HeaderName::try_from(header.as_str()).is_err() || claim.is_empty() {
            return Err((
                f(&format!("forwardHeaders.{header}")),
                format!("{header:?} → {claim:?} is not a header name and a claim"),
            ));
        }
    }
    if let Some(q) = &j.token_query_key {
        if q.is_empty() || q.contains(['&', '=', '#']) {
            return Err((f("tokenQueryKey"), format!("{q:?} is not a query parameter name")));
        }
    }
    let client = j.client_config.clone().unwrap_or_default();
    let tls = client.tls.unwrap_or_default();
    if tls.insecure_skip_verify == Some(true) {
        let msg = "insecureSkipVerify is not supported: give the JWKS server's CA in clientConfig.tls.ca";
        return Err((f("clientConfig.tls.insecureSkipVerify"), msg.into()));
    }
    let ca_pem = tls.ca.unwrap_or_default();
    if !ca_pem.is_empty() && !ca_pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err((f("clientConfig.tls.ca"), "ca must be a PEM bundle of CA certificates".into()));
    }
    Ok(pb::JwtAuth {
        app_id_claim: j.app_id_claim.clone(),
        keys: Some(keys),
        forward_headers: j.forward_headers.clone().into_iter().collect(),
        strip_authorization_header: j.strip_authorization_header.unwrap_or(false),
        token_query_key: j.token_query_key.clone().unwrap_or_default(),
        max_retries: client.max_retries.unwrap_or(3).min(10),
        timeout_ms: client.timeout_seconds.unwrap_or(5).clamp(1, 60) * 1000,
        ca_pem,
    })
}

/// An API's `openApiSpec` into `out`, checked as the upstream schema says; an error names
/// the field under `spec.openApiSpec`.
fn open_api_spec(spec: &crate::resources::hub::OpenApiSpec, out: &mut pb::Api) -> Result<(), (String, String)> {
    if spec.url.is_none() && spec.path.is_none() {
        return Err((String::new(), "path or url must be defined".into()));
    }
    if let Some(url) = &spec.url {
        let ok = ["http://", "https://", "file://"].iter().any(|p| url.starts_with(p) && url.len() > p.len());
        if !ok || http::Uri::try_from(url.as_str()).is_err() && !url.starts_with("file://") {
            return Err((".url".into(), format!("{url:?} must be an http, https or file URL")));
        }
        out.spec_url = url.clone();
    }
    let refresh = match &spec.refresh_interval {
        None => std::time::Duration::from_secs(300),
        Some(r) => atrium_routing::middleware::config::parse_go_duration(r)
            .map_err(|e| (".refreshInterval".into(), e.to_string()))?,
    };
    if refresh < std::time::Duration::from_secs(60) {
        return Err((".refreshInterval".into(), "must be at least 1m".into()));
    }
    out.spec_refresh_ms = refresh.as_millis() as u64;
    for (i, s) in spec.r#override.iter().flat_map(|o| o.servers.iter()).enumerate() {
        let uri = http::Uri::try_from(s.url.as_str())
            .ok()
            .filter(|u| u.scheme().is_some() && u.host().is_some())
            .ok_or_else(|| (format!(".override.servers[{i}].url"), format!("{:?} must be a valid URL", s.url)))?;
        out.spec_override_servers.push(s.url.clone());
        let base = uri.path().trim_end_matches('/');
        if !base.is_empty() {
            out.spec_base_paths.push(base.to_string());
        }
    }
    out.validate_method_and_path = spec.validate_request_method_and_path.unwrap_or(false);
    if out.validate_method_and_path && spec.url.is_none() {
        let msg = "validateRequestMethodAndPath needs a spec the control plane can fetch (url)".to_string();
        return Err((".validateRequestMethodAndPath".into(), msg));
    }
    let mut names = BTreeSet::new();
    for (i, set) in spec.operation_sets.iter().enumerate() {
        let f = |rest: &str| format!(".operationSets[{i}]{rest}");
        if set.name.is_empty() || !names.insert(set.name.clone()) {
            return Err((f(".name"), format!("operation set name {:?} must be given once", set.name)));
        }
        if set.matchers.is_empty() || set.matchers.len() > 100 {
            return Err((f(".matchers"), "an operation set needs between 1 and 100 matchers".into()));
        }
        let mut matchers = Vec::new();
        for (j, m) in set.matchers.iter().enumerate() {
            let f = |rest: &str| f(&format!(".matchers[{j}]{rest}"));
            let given = [m.path.is_some(), m.path_prefix.is_some(), m.path_regex.is_some()];
            if given.iter().filter(|g| **g).count() > 1 {
                return Err((f(""), "path, pathPrefix and pathRegex are mutually exclusive".into()));
            }
            if !given.iter().any(|g| *g) && m.methods.is_empty() {
                return Err((f(""), "a matcher needs methods, path, pathPrefix or pathRegex".into()));
            }
            for (name, p) in [("path", &m.path), ("pathPrefix", &m.path_prefix)] {
                if let Some(p) = p {
                    if !p.starts_with('/') || p.contains("/../") || p.ends_with("/..") || p.len() > 255 {
                        return Err((
                            f(&format!(".{name}")),
                            format!("{p:?} must start with '/' and cannot contain '../'"),
                        ));
                    }
                }
            }
            if let Some(r) = &m.path_regex {
                regex::Regex::new(r).map_err(|e| (f(".pathRegex"), format!("invalid regular expression: {e}")))?;
            }
            if m.methods.len() > 10 {
                return Err((f(".methods"), "at most 10 methods".into()));
            }
            matchers.push(pb::OperationMatcher {
                methods: m.methods.clone(),
                path: m.path.clone().unwrap_or_default(),
                path_prefix: m.path_prefix.clone().unwrap_or_default(),
                path_regex: m.path_regex.clone().unwrap_or_default(),
            });
        }
        out.operation_sets.push(pb::OperationSet { name: set.name.clone(), matchers });
    }
    if out.spec_url.is_empty() {
        out.spec_status = String::new();
    } else {
        out.spec_status = "pending".into();
    }
    Ok(())
}

/// An operation filter of `l` over `apis`: every set it includes must be one of theirs.
fn operation_filter(
    cx: &mut Ctx<'_>,
    m: &Manifests,
    l: &Loaded,
    filter: Option<&crate::resources::hub::OperationFilter>,
    apis: &[String],
) -> Option<Option<pb::OperationFilter>> {
    let Some(f) = filter else { return Some(None) };
    let known: BTreeSet<&str> = m
        .resources
        .iter()
        .filter(|o| apis.contains(&o.id()))
        .filter_map(|o| match &*o.resource {
            Resource::Api(a) => a.spec.open_api_spec.as_ref(),
            _ => None,
        })
        .flat_map(|s| s.operation_sets.iter().map(|set| set.name.as_str()))
        .collect();
    for (i, name) in f.include.iter().enumerate() {
        if !known.contains(name.as_str()) {
            let msg = format!("no API it covers has an operation set {name:?} (known: {known:?})");
            cx.err(l, &format!("spec.operationFilter.include[{i}]"), "unresolved-reference", msg);
            return None;
        }
    }
    Some(Some(pb::OperationFilter { include: f.include.clone() }))
}

/// An API's `cors` as the configuration of a headers middleware; the plan headers are
/// always exposed, so a browser (the portal's try-it console) can read what is left of the
/// plan, when to retry, and which child cluster answered.
fn cors_json(c: &crate::resources::hub::Cors) -> String {
    let mut expose = c.expose_headers_list.clone();
    for h in ["X-RateLimit-Remaining", "X-Quota-Remaining", "Retry-After", "X-Traefik-Backend"] {
        if !expose.iter().any(|e| e.eq_ignore_ascii_case(h)) {
            expose.push(h.to_string());
        }
    }
    let h = atrium_routing::middleware::config::Headers {
        access_control_allow_credentials: c.allow_credentials,
        access_control_allow_headers: c.allow_headers_list.clone(),
        access_control_allow_methods: c.allow_methods_list.clone(),
        access_control_allow_origin_list: c.allow_origins_list.clone(),
        access_control_allow_origin_list_regex: c.allow_origin_list_regex.clone(),
        access_control_expose_headers: expose,
        access_control_max_age: c.max_age,
        add_vary_header: c.add_vary_header,
        ..Default::default()
    };
    serde_json::to_string(&h).unwrap_or_default()
}

/// Every ManagedApplication with the hashes of its keys.
fn compile_applications(cx: &mut Ctx<'_>, m: &Manifests) -> Vec<pb::Application> {
    let mut out: BTreeMap<String, pb::Application> = BTreeMap::new();
    // Two applications claiming one appId: both are in error and neither is served, so
    // that no object (in another namespace, say) can take an application's place by
    // sorting first.
    let mut first_of: HashMap<&str, &Loaded> = HashMap::new();
    let mut conflicted: BTreeSet<&str> = BTreeSet::new();
    for l in &m.resources {
        let Resource::ManagedApplication(a) = &*l.resource else { continue };
        if let Some(first) = first_of.get(a.spec.app_id.as_str()).copied() {
            let msg = format!("appId {:?} is also the appId of {}", a.spec.app_id, first.label());
            cx.err(l, "spec.appId", "conflict", msg);
            if conflicted.insert(a.spec.app_id.as_str()) {
                let msg = format!("appId {:?} is also the appId of {}", a.spec.app_id, l.label());
                cx.err(first, "spec.appId", "conflict", msg);
                out.remove(&a.spec.app_id);
            }
            continue;
        }
        first_of.insert(a.spec.app_id.as_str(), l);
        let Some(keys) = application_keys(cx, l, &a.spec) else { continue };
        out.insert(
            a.spec.app_id.clone(),
            pb::Application { app_id: a.spec.app_id.clone(), id: l.id(), suspended: false, keys },
        );
    }
    out.into_values().collect()
}

/// The hashed keys of application `l`, or `None` (with an error) when one cannot be read.
fn application_keys(cx: &mut Ctx<'_>, l: &Loaded, spec: &ManagedApplicationSpec) -> Option<Vec<pb::ApiKey>> {
    let mut keys = Vec::new();
    for (i, k) in spec.api_keys.iter().enumerate() {
        let field = format!("spec.apiKeys[{i}]");
        let value = match (&k.value, &k.secret_name) {
            (Some(v), None) => v.clone(),
            (None, Some(s)) => match secret_key(cx, l.ns(), s) {
                Ok(v) => v,
                Err(msg) => {
                    cx.err(l, &format!("{field}.secretName"), "unresolved-reference", msg);
                    return None;
                }
            },
            _ => {
                cx.err(l, &field, "schema", "an API key needs exactly one of value and secretName".into());
                return None;
            }
        };
        if value.trim().is_empty() {
            cx.err(l, &field, "schema", "an API key must not be empty".into());
            return None;
        }
        let sha256 = atrium_routing::apim::key_hash(value.trim()).to_vec();
        keys.push(pb::ApiKey { sha256, suspended: k.suspended.unwrap_or(false) });
    }
    keys.sort_by(|a, b| a.sha256.cmp(&b.sha256));
    Some(keys)
}

/// The API key a Secret holds: its `value` entry, or its only entry.
fn secret_key(cx: &Ctx<'_>, ns: &str, name: &str) -> Result<String, String> {
    let s = cx.secrets.get(&key(ns, name)).ok_or_else(|| format!("Secret {ns}/{name} does not exist"))?;
    if let Some(v) = s.string_data.get("value") {
        return Ok(v.clone());
    }
    let entries: Vec<(&String, &String)> = s.data.iter().chain(s.string_data.iter()).collect();
    let (k, raw) = match (s.data.get("value"), entries.as_slice()) {
        (Some(v), _) => ("value", v),
        (None, [(k, v)]) => (k.as_str(), *v),
        _ => return Err(format!("Secret {ns}/{name} must hold the key in `value` (or hold one entry only)")),
    };
    if s.string_data.contains_key(k) {
        return Ok(raw.clone());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(raw.trim())
        .map_err(|e| format!("Secret {ns}/{name} data.{k}: invalid base64: {e}"))?;
    String::from_utf8(bytes).map_err(|_| format!("Secret {ns}/{name} data.{k} is not text"))
}

/// Every ManagedSubscription with what it covers and its plan.
fn compile_subscriptions(cx: &mut Ctx<'_>, m: &Manifests) -> Vec<pb::Subscription> {
    let mut out = Vec::new();
    for l in &m.resources {
        let Resource::ManagedSubscription(s) = &*l.resource else { continue };
        if let Some(sub) = compile_subscription(cx, m, l, &s.spec) {
            out.push(sub);
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// One subscription, or `None` (with errors) when a reference does not resolve.
fn compile_subscription(
    cx: &mut Ctx<'_>,
    m: &Manifests,
    l: &Loaded,
    spec: &ManagedSubscriptionSpec,
) -> Option<pb::Subscription> {
    let plan = plan(cx, m, l, &spec.api_plan.name)?;
    let app_ids = subscription_apps(cx, m, l, spec)?;
    let apis = resolve_apis(cx, m, l, &spec.apis, &spec.api_bundles, spec.api_selector.as_ref())?;
    let operation_filter = operation_filter(cx, m, l, spec.operation_filter.as_ref(), &apis)?;
    let apis = with_versions(m, apis);
    Some(pb::Subscription {
        id: l.id(),
        weight: spec.weight.unwrap_or(0),
        app_ids,
        apis,
        plan: Some(plan),
        operation_filter,
    })
}

/// The objects of namespace `ns` whose resource `pick` selects.
fn in_namespace<'m, F: Fn(&Resource) -> bool>(
    m: &'m Manifests,
    ns: &'m str,
    pick: F,
) -> impl Iterator<Item = &'m Loaded> {
    m.resources.iter().filter(move |o| o.ns() == ns && pick(&o.resource))
}

/// The labels of `o`.
fn labels(o: &Loaded) -> &BTreeMap<String, String> {
    &o.resource.meta().labels
}

/// The appIds a subscription covers: `applications` (which may name applications the
/// portal creates later), `managedApplications` and `managedApplicationSelector`.
fn subscription_apps(
    cx: &mut Ctx<'_>,
    m: &Manifests,
    l: &Loaded,
    spec: &ManagedSubscriptionSpec,
) -> Option<Vec<String>> {
    let mut out: BTreeSet<String> = spec.applications.iter().map(|a| a.app_id.clone()).collect();
    let managed = |o: &Resource| matches!(o, Resource::ManagedApplication(_));
    for (i, r) in spec.managed_applications.iter().enumerate() {
        let found = in_namespace(m, l.ns(), managed).find(|o| o.name() == r.name);
        match found.map(|o| &*o.resource) {
            Some(Resource::ManagedApplication(a)) => drop(out.insert(a.spec.app_id.clone())),
            _ => {
                let msg = format!("ManagedApplication {}/{} does not exist", l.ns(), r.name);
                cx.err(l, &format!("spec.managedApplications[{i}].name"), "unresolved-reference", msg);
                return None;
            }
        }
    }
    if let Some(sel) = &spec.managed_application_selector {
        for o in in_namespace(m, l.ns(), managed).filter(|o| sel.matches(labels(o))) {
            if let Resource::ManagedApplication(a) = &*o.resource {
                out.insert(a.spec.app_id.clone());
            }
        }
    }
    Some(out.into_iter().collect())
}

/// The APIs a subscription or catalog item covers: `apis`, `apiBundles` (their APIs and
/// selector) and `apiSelector`, as `namespace/name`.
fn resolve_apis(
    cx: &mut Ctx<'_>,
    m: &Manifests,
    l: &Loaded,
    apis: &[NameRef],
    bundles: &[NameRef],
    selector: Option<&LabelSelector>,
) -> Option<Vec<String>> {
    let ns = l.ns();
    let is_api = |o: &Resource| matches!(o, Resource::Api(_));
    let mut out = BTreeSet::new();
    for (i, r) in apis.iter().enumerate() {
        if !cx.apis.contains(&key(ns, &r.name)) {
            let msg = format!("API {ns}/{} does not exist", r.name);
            cx.err(l, &format!("spec.apis[{i}].name"), "unresolved-reference", msg);
            return None;
        }
        out.insert(format!("{ns}/{}", r.name));
    }
    let select = |sel: &LabelSelector, out: &mut BTreeSet<String>| {
        for o in in_namespace(m, ns, is_api).filter(|o| sel.matches(labels(o))) {
            out.insert(o.id());
        }
    };
    for (i, b) in bundles.iter().enumerate() {
        let bundle = in_namespace(m, ns, |o| matches!(o, Resource::ApiBundle(_))).find(|o| o.name() == b.name);
        let Some(Resource::ApiBundle(bundle)) = bundle.map(|o| &*o.resource) else {
            let msg = format!("APIBundle {ns}/{} does not exist", b.name);
            cx.err(l, &format!("spec.apiBundles[{i}].name"), "unresolved-reference", msg);
            return None;
        };
        out.extend(
            bundle.spec.apis.iter().filter(|a| cx.apis.contains(&key(ns, &a.name))).map(|a| format!("{ns}/{}", a.name)),
        );
        if let Some(sel) = &bundle.spec.api_selector {
            select(sel, &mut out);
        }
    }
    if let Some(sel) = selector {
        select(sel, &mut out);
    }
    Some(out.into_iter().collect())
}

/// Every APICatalogItem with the APIs it shows, to whom, and its plan.
pub(super) fn compile_catalog_items(cx: &mut Ctx<'_>, m: &Manifests) -> Vec<pb::CatalogItem> {
    let mut out = Vec::new();
    for l in &m.resources {
        let Resource::ApiCatalogItem(c) = &*l.resource else { continue };
        let spec = &c.spec;
        let Some(apis) = resolve_apis(cx, m, l, &spec.apis, &spec.api_bundles, spec.api_selector.as_ref()) else {
            continue;
        };
        let plan = match &spec.api_plan {
            Some(p) => match plan(cx, m, l, &p.name) {
                Some(p) => Some(p),
                None => continue,
            },
            None => None,
        };
        let Some(operation_filter) = operation_filter(cx, m, l, spec.operation_filter.as_ref(), &apis) else {
            continue;
        };
        let apis = with_versions(m, apis);
        out.push(pb::CatalogItem {
            operation_filter,
            id: l.id(),
            apis,
            groups: spec.groups.clone(),
            everyone: spec.everyone.unwrap_or(false),
            plan,
        });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Plan `name` of `l`'s namespace, its limits checked as the upstream schema bounds them.
fn plan(cx: &mut Ctx<'_>, m: &Manifests, l: &Loaded, name: &str) -> Option<pb::Plan> {
    let found = in_namespace(m, l.ns(), |o| matches!(o, Resource::ApiPlan(_))).find(|o| o.name() == name);
    let Some((pl, Resource::ApiPlan(p))) = found.map(|o| (o, &*o.resource)) else {
        let msg = format!("APIPlan {}/{name} does not exist", l.ns());
        cx.err(l, "spec.apiPlan.name", "unresolved-reference", msg);
        return None;
    };
    let spec: &ApiPlanSpec = &p.spec;
    let rate_limit = limit(cx, pl, "spec.rateLimit", spec.rate_limit.as_ref(), 3_600_000)?;
    let quota = limit(cx, pl, "spec.quota", spec.quota.as_ref(), 9_999 * 3_600_000)?;
    Some(pb::Plan {
        id: pl.id(),
        rate_limit,
        quota,
        title: spec.title.clone(),
        description: spec.description.clone().unwrap_or_default(),
    })
}

/// A plan limit, its period (default 1 s) between 1 s and `max_ms`. `Some(None)`: no limit.
fn limit(
    cx: &mut Ctx<'_>,
    l: &Loaded,
    field: &str,
    lim: Option<&PlanLimit>,
    max_ms: u64,
) -> Option<Option<pb::PlanLimit>> {
    let Some(lim) = lim else { return Some(None) };
    if lim.limit < 0 {
        cx.err(l, &format!("{field}.limit"), "schema", format!("limit {} must not be negative", lim.limit));
        return None;
    }
    let period = match lim.period.as_deref() {
        None => std::time::Duration::from_secs(1),
        Some(p) => match atrium_routing::middleware::config::parse_go_duration(p) {
            Ok(d) => d,
            Err(e) => {
                cx.err(l, &format!("{field}.period"), "schema", format!("period {p:?}: {e}"));
                return None;
            }
        },
    };
    let period_ms = period.as_millis() as u64;
    if !(1_000..=max_ms).contains(&period_ms) {
        let msg = format!(
            "period {:?} must be between 1s and {}h",
            lim.period.as_deref().unwrap_or("1s"),
            max_ms / 3_600_000
        );
        cx.err(l, &format!("{field}.period"), "schema", msg);
        return None;
    }
    let bucket = match lim.bucket.unwrap_or_default() {
        Bucket::Subscription => pb::PlanBucket::Subscription,
        Bucket::Application => pb::PlanBucket::Application,
        Bucket::ApplicationApi => pb::PlanBucket::ApplicationApi,
    };
    Some(Some(pb::PlanLimit { limit: lim.limit as u64, period_ms, bucket: bucket as i32 }))
}

/// The APIPortals, for the portal's pages, with how their users sign in. An APIPortalAuth
/// that cannot work (LDAP, a missing Secret, a bad issuer) is an error on it; its portal
/// is left out rather than opened to local accounts.
pub(super) fn compile_portals(cx: &mut Ctx<'_>, m: &Manifests) -> Vec<pb::PortalSite> {
    let mut out = Vec::new();
    for l in &m.resources {
        let Resource::ApiPortal(p) = &*l.resource else { continue };
        let auth = p.spec.auth.as_ref().map(|a| format!("{}/{}", l.ns(), a.name)).unwrap_or_default();
        let mut site = pb::PortalSite {
            id: l.id(),
            title: p.spec.title.clone().unwrap_or_else(|| l.name().to_string()),
            description: p.spec.description.clone().unwrap_or_default(),
            trusted_urls: p.spec.trusted_urls.clone(),
            logo_url: p.spec.ui.as_ref().and_then(|u| u.logo_url.clone()).unwrap_or_default(),
            auth: auth.clone(),
            oidc: None,
        };
        if let Some(a) = &p.spec.auth {
            let found =
                in_namespace(m, l.ns(), |o| matches!(o, Resource::ApiPortalAuth(_))).find(|o| o.name() == a.name);
            let Some((al, Resource::ApiPortalAuth(pa))) = found.map(|o| (o, &*o.resource)) else {
                // Reported by lint's reference check; the portal is not served.
                continue;
            };
            match portal_oidc(cx, al, &pa.spec) {
                Ok(o) => site.oidc = Some(o),
                Err((field, msg)) => {
                    cx.err(al, &field, "unsupported-field", msg);
                    continue;
                }
            }
        }
        out.push(site);
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// The ContentItems, as the portal shows them. A page larger than 256 KB, a link that is
/// not http(s), or an item with neither content nor link is an error on it.
pub(super) fn compile_content(cx: &mut Ctx<'_>, m: &Manifests) -> Vec<pb::ContentPage> {
    use crate::resources::hub::ContentParentKind as K;
    let mut out = Vec::new();
    for l in &m.resources {
        let Resource::ContentItem(c) = &*l.resource else { continue };
        let (spec, ns) = (&c.spec, l.ns());
        let parent = format!("{ns}/{}", spec.parent_ref.name);
        let (kind, apis) = match spec.parent_ref.kind {
            K::ApiPortal => ("APIPortal", Vec::new()),
            K::Api => ("API", vec![parent.clone()]),
            K::ApiBundle => {
                let bundle = in_namespace(m, ns, |o| matches!(o, Resource::ApiBundle(_)))
                    .find(|o| o.name() == spec.parent_ref.name);
                let Some(Resource::ApiBundle(b)) = bundle.map(|o| &*o.resource) else { continue };
                let mut apis: BTreeSet<String> = b
                    .spec
                    .apis
                    .iter()
                    .map(|r| format!("{ns}/{}", r.name))
                    .filter(|id| cx.apis.contains(&key_of(id)))
                    .collect();
                if let Some(sel) = &b.spec.api_selector {
                    apis.extend(
                        in_namespace(m, ns, |o| matches!(o, Resource::Api(_)))
                            .filter(|o| sel.matches(labels(o)))
                            .map(|o| o.id()),
                    );
                }
                ("APIBundle", apis.into_iter().collect())
            }
        };
        let markdown = spec.content.clone().unwrap_or_default();
        let link = spec.link.as_ref().map(|k| k.href.clone()).unwrap_or_default();
        let problem = if markdown.len() > 256 * 1024 {
            Some(("spec.content", "a page has at most 256 KB of Markdown".to_string()))
        } else if markdown.is_empty() && link.is_empty() {
            Some(("spec", "a ContentItem needs content or link".to_string()))
        } else if !(link.is_empty() || link.starts_with("https://") || link.starts_with("http://")) {
            Some(("spec.link.href", format!("{link:?}: a link is an http(s) URL")))
        } else {
            None
        };
        if let Some((field, msg)) = problem {
            cx.err(l, field, "schema", msg);
            continue;
        }
        out.push(pb::ContentPage {
            id: l.id(),
            title: spec.title.clone(),
            order: spec.order,
            parent_kind: kind.to_string(),
            parent,
            apis,
            markdown,
            link,
        });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// The key of `ns/name`.
fn key_of(id: &str) -> super::Key {
    let (ns, name) = id.split_once('/').unwrap_or(("", id));
    key(ns, name)
}

/// An APIPortalAuth's sign-in, or the field at fault and why.
fn portal_oidc(
    cx: &Ctx<'_>,
    l: &Loaded,
    spec: &crate::resources::hub::ApiPortalAuthSpec,
) -> Result<pb::PortalOidc, (String, String)> {
    if spec.ldap.is_some() {
        return Err((
            "spec.ldap".into(),
            "LDAP sign-in is not built: use oidc, or local accounts (no APIPortalAuth)".into(),
        ));
    }
    let Some(o) = &spec.oidc else {
        return Err(("spec".into(), "an APIPortalAuth needs oidc (LDAP is not built)".into()));
    };
    let issuer: http::Uri = o
        .issuer_url
        .parse()
        .map_err(|_| ("spec.oidc.issuerUrl".to_string(), format!("{:?} is not a URL", o.issuer_url)))?;
    let loopback = issuer
        .host()
        .is_some_and(|h| h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()));
    match issuer.scheme_str() {
        Some("https") => {}
        Some("http") if loopback => {}
        _ => {
            return Err((
                "spec.oidc.issuerUrl".into(),
                format!("{:?}: the issuer must be https (http only on loopback)", o.issuer_url),
            ));
        }
    }
    let secret = cx.secrets.get(&key(l.ns(), &o.secret_name)).ok_or_else(|| {
        ("spec.oidc.secretName".to_string(), format!("Secret {}/{} does not exist", l.ns(), o.secret_name))
    })?;
    let field = |k: &str| -> Result<String, (String, String)> {
        if let Some(v) = secret.string_data.get(k) {
            return Ok(v.clone());
        }
        let raw = secret.data.get(k).ok_or_else(|| {
            ("spec.oidc.secretName".to_string(), format!("Secret {}/{} has no {k}", l.ns(), o.secret_name))
        })?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(raw.trim()).map_err(|e| {
            (
                "spec.oidc.secretName".to_string(),
                format!("Secret {}/{} data.{k}: invalid base64: {e}", l.ns(), o.secret_name),
            )
        })?;
        String::from_utf8(bytes).map_err(|_| {
            ("spec.oidc.secretName".to_string(), format!("Secret {}/{} data.{k} is not text", l.ns(), o.secret_name))
        })
    };
    let tls = o.client_config.as_ref().and_then(|c| c.tls.as_ref());
    if tls.and_then(|t| t.insecure_skip_verify).unwrap_or(false) {
        return Err((
            "spec.oidc.clientConfig.tls.insecureSkipVerify".into(),
            "not supported: give the provider's CA in tls.ca".into(),
        ));
    }
    let claims = o.claims.clone().unwrap_or_default();
    Ok(pb::PortalOidc {
        issuer_url: o.issuer_url.clone(),
        client_id: field("clientId")?,
        client_secret: field("clientSecret")?,
        scopes: o.scopes.iter().filter(|s| *s != "openid").cloned().collect(),
        groups_claim: claims.groups.unwrap_or_else(|| "groups".into()),
        email_claim: claims.email.unwrap_or_else(|| "email".into()),
        user_id_claim: claims.user_id.unwrap_or_else(|| "sub".into()),
        ca_pem: tls.and_then(|t| t.ca.clone()).unwrap_or_default(),
        timeout_seconds: o.client_config.as_ref().and_then(|c| c.timeout_seconds).unwrap_or(10).clamp(1, 120) as u32,
    })
}

#[cfg(test)]
mod tests {
    use crate::compile::compile;
    use crate::loader::load_text;
    use crate::values::Values;
    use atrium_proto::v1 as pb;

    const APIS: &str = "apiVersion: hub.traefik.io/v1alpha1
kind: API
metadata: {name: crm-api, namespace: apps, labels: {tier: gold}}
spec: {}
---
apiVersion: hub.traefik.io/v1alpha1
kind: API
metadata: {name: billing-api, namespace: apps}
spec: {}
---
apiVersion: hub.traefik.io/v1alpha1
kind: API
metadata: {name: hr-api, namespace: hr}
spec: {}
---
apiVersion: hub.traefik.io/v1alpha1
kind: APIAuth
metadata: {name: hr-auth, namespace: hr}
spec: {isDefault: true, apiKey: {keySource: {header: X-Api-Key}}}
---
apiVersion: hub.traefik.io/v1alpha1
kind: APIPlan
metadata: {name: standard, namespace: apps}
spec:
  title: Standard
  rateLimit: {limit: 100, period: 1m}
  quota: {limit: 10000, period: 1h, bucket: application}
---
apiVersion: hub.traefik.io/v1alpha1
kind: APIBundle
metadata: {name: finance, namespace: apps}
spec: {apis: [{name: billing-api}]}
---
apiVersion: v1
kind: Secret
metadata: {name: mobile-key, namespace: apps}
data: {value: c2VjcmV0LWZyb20tc2VjcmV0}
---
apiVersion: hub.traefik.io/v1alpha1
kind: ManagedApplication
metadata: {name: mobile, namespace: apps, labels: {team: mobile}}
spec:
  appId: mobile-app
  owner: someone
  apiKeys:
    - {value: inline-key}
    - {secretName: mobile-key, suspended: true}
";

    fn compiled(extra: &str) -> crate::compile::Compiled {
        let (c, load_errors) = compiled_with(extra);
        assert!(load_errors.is_empty(), "{load_errors:?}");
        c
    }

    /// The compiled manifests, and what loading them found.
    fn compiled_with(extra: &str) -> (crate::compile::Compiled, Vec<String>) {
        let m = load_text("apim.yaml", &format!("{APIS}---\n{extra}"));
        let found = m.diagnostics.iter().map(|d| d.to_string()).collect();
        (compile(&m, &Values::default(), None), found)
    }

    fn errors(c: &crate::compile::Compiled) -> Vec<String> {
        c.diagnostics.iter().filter(|d| d.is_error()).map(|d| d.to_string()).collect()
    }

    #[test]
    fn apis_get_their_namespace_authentication_or_api_keys_by_default() {
        let c = compiled("");
        let auth = |id: &str| c.body.apis.iter().find(|a| a.id == id).unwrap().auth.clone().unwrap();
        assert_eq!(auth("apps/crm-api"), pb::api::Auth::ApiKey(pb::ApiKeyAuth::default()), "no default APIAuth: keys");
        let pb::api::Auth::ApiKey(k) = auth("hr/hr-api") else { panic!() };
        assert_eq!(k.header, "X-Api-Key");
        // A default APIAuth with no method at all: an error, and the API is marked, never
        // served open.
        let none = compiled(
            "apiVersion: hub.traefik.io/v1alpha1\nkind: APIAuth\nmetadata: {name: n, namespace: apps}\nspec: {isDefault: true}\n",
        );
        let a = none.body.apis.iter().find(|a| a.id == "apps/crm-api").unwrap();
        assert!(matches!(&a.auth, Some(pb::api::Auth::Unsupported(why)) if why.contains("exactly one of")), "{a:?}");
        assert!(
            errors(&none).iter().any(|e| e.contains("spec: an APIAuth needs exactly one of")),
            "{:?}",
            errors(&none)
        );
        // LDAP is not built: an error on the field, and the namespace's APIs answer 401
        // (they do not fall back to API keys).
        let ldap = compiled(
            "apiVersion: hub.traefik.io/v1alpha1\nkind: APIAuth\nmetadata: {name: l, namespace: apps}\nspec: {isDefault: true, ldap: {url: 'ldap://x', baseDn: 'dc=x'}}\n",
        );
        let a = ldap.body.apis.iter().find(|a| a.id == "apps/crm-api").unwrap();
        assert!(matches!(&a.auth, Some(pb::api::Auth::Unsupported(why)) if why.contains("LDAP")), "{a:?}");
        assert!(
            errors(&ldap).iter().any(|e| e.contains("spec.ldap") && e.contains("not built")),
            "{:?}",
            errors(&ldap)
        );
    }

    #[test]
    fn jwt_authentication_is_checked_as_the_upstream_schema_says() {
        let jwt = |spec: &str| {
            compiled(&format!(
                "apiVersion: hub.traefik.io/v1alpha1\nkind: APIAuth\nmetadata: {{name: j, namespace: apps}}\nspec: {{isDefault: true, jwt: {spec}}}\n"
            ))
        };
        let good = jwt(
            "{appIdClaim: azp, trustedIssuers: [{issuer: 'https://idp', jwksUrl: 'https://idp/jwks'}, {jwksUrl: 'https://other/jwks'}], forwardHeaders: {X-User: sub}}",
        );
        assert!(errors(&good).is_empty(), "{:?}", errors(&good));
        let api = good.body.apis.iter().find(|a| a.id == "apps/crm-api").unwrap();
        let Some(pb::api::Auth::Jwt(j)) = &api.auth else { panic!("{api:?}") };
        assert_eq!(j.app_id_claim, "azp");
        assert_eq!(j.forward_headers.get("X-User").map(String::as_str), Some("sub"));
        let Some(pb::jwt_auth::Keys::JwksUrls(s)) = &j.keys else { panic!() };
        assert_eq!(s.issuers.len(), 2);

        for (spec, want) in [
            ("{appIdClaim: azp}", "spec.jwt: exactly one of signingSecretName"),
            ("{appIdClaim: azp, publicKey: x, jwksUrl: 'https://a/b'}", "spec.jwt: exactly one of"),
            (
                "{appIdClaim: azp, jwksUrl: 'http://idp/jwks'}",
                "spec.jwt.jwksUrl: \"http://idp/jwks\" must be a valid HTTPS URL",
            ),
            (
                "{appIdClaim: azp, signingSecretName: nope}",
                "spec.jwt.signingSecretName: Secret apps/nope does not exist",
            ),
            ("{appIdClaim: azp, jwksFile: '{}'}", "spec.jwt.jwksFile: jwksFile is not a JWKS document"),
            (
                "{appIdClaim: azp, trustedIssuers: [{jwksUrl: 'https://a/1'}, {jwksUrl: 'https://a/2'}]}",
                "only one entry in trustedIssuers",
            ),
            ("{appIdClaim: azp, publicKey: x, clientConfig: {tls: {insecureSkipVerify: true}}}", "spec.jwt.publicKey"),
        ] {
            let c = jwt(spec);
            let api = c.body.apis.iter().find(|a| a.id == "apps/crm-api").unwrap();
            assert!(matches!(api.auth, Some(pb::api::Auth::Unsupported(_))), "{spec}: never served open");
            assert!(
                errors(&c).iter().any(|e| e.contains(want) && e.starts_with("apim.yaml:")),
                "{spec}\n{:?}",
                errors(&c)
            );
        }
        // A field atrium does not act on is refused by name when the manifest loads.
        let (_, found) = compiled_with(
            "apiVersion: hub.traefik.io/v1alpha1\nkind: APIAuth\nmetadata: {name: j, namespace: apps}\nspec: {isDefault: true, jwt: {appIdClaim: a, publicKey: x, tokenNameClaim: n}}\n",
        );
        assert!(found.iter().any(|e| e.contains("spec.jwt.tokenNameClaim")), "{found:?}");
    }

    #[test]
    fn open_api_specs_and_operation_filters_are_checked_as_the_upstream_schema_says() {
        let with_api = |spec: &str, filter: &str| {
            compiled_with(&format!(
                "apiVersion: hub.traefik.io/v1alpha1\nkind: API\nmetadata: {{name: ops, namespace: apps}}\nspec: {{openApiSpec: {spec}}}\n---\napiVersion: hub.traefik.io/v1alpha1\nkind: ManagedSubscription\nmetadata: {{name: f, namespace: apps}}\nspec: {{apiPlan: {{name: standard}}, applications: [{{appId: x}}], apis: [{{name: ops}}]{filter}}}\n"
            ))
        };
        let (c, _) = with_api(
            "{url: 'https://specs/ops.yaml', validateRequestMethodAndPath: true, operationSets: [{name: read, matchers: [{methods: [GET], pathPrefix: /v1}]}]}",
            ", operationFilter: {include: [read]}",
        );
        assert!(errors(&c).is_empty(), "{:?}", errors(&c));
        let api = c.body.apis.iter().find(|a| a.id == "apps/ops").unwrap();
        assert!(api.validate_method_and_path && api.spec_status == "pending" && api.spec_refresh_ms == 300_000);
        let sub = c.body.subscriptions.iter().find(|s| s.id == "apps/f").unwrap();
        assert_eq!(sub.operation_filter.as_ref().unwrap().include, ["read"]);

        for (spec, filter, want) in [
            (
                "{path: /openapi.json, validateRequestMethodAndPath: true}",
                "",
                "spec.openApiSpec.validateRequestMethodAndPath",
            ),
            ("{url: 'https://s/o', refreshInterval: 30s}", "", "spec.openApiSpec.refreshInterval: must be at least 1m"),
            ("{url: 'ftp://s/o'}", "", "spec.openApiSpec.url"),
            ("{}", "", "path or url must be defined"),
            (
                "{url: 'https://s/o', operationSets: [{name: a, matchers: [{path: /a, pathPrefix: /b}]}]}",
                "",
                "mutually exclusive",
            ),
            (
                "{url: 'https://s/o', operationSets: [{name: a, matchers: [{path: /a/../b}]}]}",
                "",
                "cannot contain '../'",
            ),
            (
                "{url: 'https://s/o', operationSets: [{name: a, matchers: [{pathRegex: '('}]}]}",
                "",
                "invalid regular expression",
            ),
            (
                "{url: 'https://s/o'}",
                ", operationFilter: {include: [nope]}",
                "spec.operationFilter.include[0]: no API it covers has an operation set \"nope\"",
            ),
        ] {
            let (c, _) = with_api(spec, filter);
            assert!(errors(&c).iter().any(|e| e.contains(want)), "{spec}: {want}\n{:?}", errors(&c));
        }
    }

    #[test]
    fn routes_belong_to_one_api_or_one_api_version() {
        let route = |name: &str, annotations: &str| {
            format!(
                "apiVersion: traefik.io/v1alpha1\nkind: IngressRoute\nmetadata: {{name: {name}, namespace: apps, annotations: {{{annotations}}}}}\nspec:\n  routes:\n    - match: PathPrefix(`/{name}`)\n      services: [{{name: svc, port: 80}}]\n---\n"
            )
        };
        let extra = format!(
            "apiVersion: hub.traefik.io/v1alpha1\nkind: APIVersion\nmetadata: {{name: crm-v2, namespace: apps}}\nspec: {{release: v2.0.0, cors: {{allowOriginsList: [\"https://v2.example\"]}}}}\n---\n\
apiVersion: hub.traefik.io/v1alpha1\nkind: API\nmetadata: {{name: versioned, namespace: apps}}\nspec: {{versions: [{{name: crm-v2}}]}}\n---\n\
apiVersion: hub.traefik.io/v1alpha1\nkind: APIVersion\nmetadata: {{name: orphan, namespace: apps}}\nspec: {{release: v1.0.0}}\n---\n\
apiVersion: hub.traefik.io/v1alpha1\nkind: ManagedSubscription\nmetadata: {{name: on-versioned, namespace: apps}}\nspec: {{apiPlan: {{name: standard}}, applications: [{{appId: x}}], apis: [{{name: versioned}}]}}\n---\n\
apiVersion: v1\nkind: Service\nmetadata: {{name: svc, namespace: apps}}\nspec: {{ports: [{{port: 80}}]}}\n---\n\
apiVersion: v1\nkind: Endpoints\nmetadata: {{name: svc, namespace: apps}}\nsubsets: [{{addresses: [{{ip: 10.0.0.1}}], ports: [{{port: 8080}}]}}]\n---\n{}{}{}{}",
            route("v2", "hub.traefik.io/api-version: crm-v2"),
            route("both", "hub.traefik.io/api: crm-api, hub.traefik.io/api-version: crm-v2"),
            route("orphaned", "hub.traefik.io/api-version: orphan"),
            route("two", "'hub.traefik.io/api': 'crm-api,billing-api'"),
        );
        let (c, _) = compiled_with(&extra);
        let errs = errors(&c);
        let router = |id: &str| c.body.routers.iter().find(|r| r.id.starts_with(id)).map(|r| r.api.clone());
        assert_eq!(router("apps/v2"), Some("apps/versioned/crm-v2".into()), "{errs:?}");
        let entry = c.body.apis.iter().find(|a| a.id == "apps/versioned/crm-v2").expect("a version entry");
        assert!(entry.cors_json.contains("https://v2.example"), "the version's own CORS");
        let sub = c.body.subscriptions.iter().find(|s| s.id == "apps/on-versioned").unwrap();
        assert_eq!(
            sub.apis,
            ["apps/versioned", "apps/versioned/crm-v2"],
            "a subscription to the API covers its versions"
        );
        for (field_at, want) in [
            ("hub.traefik.io/api-version", "annotated for two APIs"),
            ("hub.traefik.io/api-version", "APIVersion apps/orphan is listed in the spec.versions of no API"),
            ("hub.traefik.io/api", "must name one API"),
        ] {
            assert!(
                errs.iter().any(|e| e.contains(field_at) && e.contains(want) && e.starts_with("apim.yaml:")),
                "{want}\n{errs:#?}"
            );
        }
        assert!(router("apps/both").is_none() && router("apps/orphaned").is_none() && router("apps/two").is_none());
    }

    #[test]
    fn applications_carry_only_hashes_of_their_keys() {
        let c = compiled("");
        let app = &c.body.applications[0];
        assert_eq!((app.app_id.as_str(), app.id.as_str()), ("mobile-app", "apps/mobile"));
        let mut want = vec![
            (atrium_routing::apim::key_hash("inline-key").to_vec(), false),
            (atrium_routing::apim::key_hash("secret-from-secret").to_vec(), true),
        ];
        want.sort();
        let got: Vec<_> = app.keys.iter().map(|k| (k.sha256.clone(), k.suspended)).collect();
        assert_eq!(got, want);
        let (encoded, _) = atrium_proto::encode(&c.body);
        let has = |needle: &[u8]| encoded.windows(needle.len()).any(|w| w == needle);
        assert!(!has(b"inline-key") && !has(b"secret-from-secret"), "no key in clear in the snapshot");
    }

    #[test]
    fn subscriptions_resolve_applications_apis_bundles_selectors_and_plans() {
        let c = compiled(
            "apiVersion: hub.traefik.io/v1alpha1
kind: ManagedSubscription
metadata: {name: mobile-std, namespace: apps}
spec:
  apiPlan: {name: standard}
  managedApplicationSelector: {matchLabels: {team: mobile}}
  applications: [{appId: portal-app}]
  apiBundles: [{name: finance}]
  apiSelector: {matchExpressions: [{key: tier, operator: In, values: [gold]}]}
  weight: 3
",
        );
        assert!(errors(&c).is_empty(), "{:?}", errors(&c));
        let s = &c.body.subscriptions[0];
        assert_eq!(s.id, "apps/mobile-std");
        assert_eq!(s.weight, 3);
        assert_eq!(s.app_ids, vec!["mobile-app", "portal-app"]);
        assert_eq!(s.apis, vec!["apps/billing-api", "apps/crm-api"]);
        let plan = s.plan.as_ref().unwrap();
        assert_eq!(plan.id, "apps/standard");
        let rate = plan.rate_limit.unwrap();
        assert_eq!((rate.limit, rate.period_ms, rate.bucket), (100, 60_000, pb::PlanBucket::Subscription as i32));
        let quota = plan.quota.unwrap();
        assert_eq!(
            (quota.limit, quota.period_ms, quota.bucket),
            (10_000, 3_600_000, pb::PlanBucket::Application as i32)
        );
    }

    #[test]
    fn unresolved_references_and_unbuilt_fields_are_errors_on_their_field() {
        for (extra, field) in [
            ("spec: {apiPlan: {name: gold}, apis: [{name: crm-api}]}", "spec.apiPlan.name"),
            ("spec: {apiPlan: {name: standard}, apis: [{name: nope}]}", "spec.apis[0].name"),
            (
                "spec: {apiPlan: {name: standard}, managedApplications: [{name: ghost}]}",
                "spec.managedApplications[0].name",
            ),
            ("spec: {apiPlan: {name: standard}, apiBundles: [{name: ghost}]}", "spec.apiBundles[0].name"),
            ("spec: {apiPlan: {name: standard}, operationFilter: {include: [read]}}", "spec.operationFilter"),
        ] {
            let c = compiled(&format!(
                "apiVersion: hub.traefik.io/v1alpha1\nkind: ManagedSubscription\nmetadata: {{name: s, namespace: apps}}\n{extra}\n"
            ));
            let errs = errors(&c);
            assert!(errs.iter().any(|e| e.contains(field) && e.contains("apim.yaml:")), "{field}: {errs:?}");
            assert!(c.body.subscriptions.is_empty(), "{field}: the subscription is left out");
        }
        let bad_plan = compiled(
            "apiVersion: hub.traefik.io/v1alpha1\nkind: APIPlan\nmetadata: {name: fast, namespace: apps}\nspec: {title: F, rateLimit: {limit: 5, period: 2h}}\n---\napiVersion: hub.traefik.io/v1alpha1\nkind: ManagedSubscription\nmetadata: {name: s, namespace: apps}\nspec: {apiPlan: {name: fast}, apis: [{name: crm-api}]}\n",
        );
        assert!(
            errors(&bad_plan).iter().any(|e| e.contains("spec.rateLimit.period") && e.contains("between 1s and 1h"))
        );
    }
}
