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
    ApiAuthSpec, ApiPlanSpec, Bucket, ManagedApplicationSpec, ManagedSubscriptionSpec, PlanLimit,
};
use crate::resources::meta::LabelSelector;
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
    let mut default_auth: HashMap<&str, (&Loaded, &ApiAuthSpec)> = HashMap::new();
    for l in &m.resources {
        let Resource::ApiAuth(a) = &l.resource else { continue };
        if !a.spec.is_default {
            continue;
        }
        if let Some((other, _)) = default_auth.insert(l.ns(), (l, &a.spec)) {
            let msg = format!("two default APIAuths in namespace {}: {} and {}", l.ns(), other.id(), l.id());
            cx.err(l, "spec.isDefault", "conflict", msg);
        }
    }
    let mut out: Vec<pb::Api> = m
        .resources
        .iter()
        .filter_map(|l| match &l.resource {
            Resource::Api(api) => Some(pb::Api {
                id: l.id(),
                auth: Some(api_auth(default_auth.get(l.ns()).map(|(_, a)| *a))),
                cors_json: api.spec.cors.as_ref().map(cors_json).unwrap_or_default(),
            }),
            _ => None,
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// An API's `cors` as the configuration of a headers middleware; the plan headers are
/// always exposed, so a browser can read what is left of the plan.
fn cors_json(c: &crate::resources::hub::Cors) -> String {
    let mut expose = c.expose_headers_list.clone();
    for h in ["X-RateLimit-Remaining", "X-Quota-Remaining"] {
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

/// How callers of an API in a namespace with default APIAuth `auth` authenticate.
fn api_auth(auth: Option<&ApiAuthSpec>) -> pb::api::Auth {
    let Some(a) = auth else { return pb::api::Auth::ApiKey(pb::ApiKeyAuth::default()) };
    if let Some(k) = &a.api_key {
        let src = k.key_source.clone().unwrap_or_default();
        return pb::api::Auth::ApiKey(pb::ApiKeyAuth {
            header: src.header.unwrap_or_default(),
            header_auth_scheme: src.header_auth_scheme.unwrap_or_default(),
            query: src.query.unwrap_or_default(),
        });
    }
    let what = if a.jwt.is_some() {
        "JWT"
    } else if a.ldap.is_some() {
        "LDAP"
    } else {
        "an APIAuth with no method"
    };
    pb::api::Auth::Unsupported(format!("{what} authentication is not built yet: the API's routes answer 401"))
}

/// Every ManagedApplication with the hashes of its keys.
fn compile_applications(cx: &mut Ctx<'_>, m: &Manifests) -> Vec<pb::Application> {
    let mut out: BTreeMap<String, pb::Application> = BTreeMap::new();
    for l in &m.resources {
        let Resource::ManagedApplication(a) = &l.resource else { continue };
        if let Some(first) = out.get(&a.spec.app_id) {
            let msg = format!("appId {:?} is also the appId of {}", a.spec.app_id, first.id);
            cx.err(l, "spec.appId", "conflict", msg);
            continue;
        }
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
        let Resource::ManagedSubscription(s) = &l.resource else { continue };
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
    if spec.operation_filter.is_some() {
        let msg = "operationFilter is not built yet: the subscription is left out".to_string();
        cx.err(l, "spec.operationFilter", "not-supported", msg);
        return None;
    }
    let plan = plan(cx, m, l, &spec.api_plan.name)?;
    let app_ids = subscription_apps(cx, m, l, spec)?;
    let apis = subscription_apis(cx, m, l, spec)?;
    Some(pb::Subscription { id: l.id(), weight: spec.weight.unwrap_or(0), app_ids, apis, plan: Some(plan) })
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
        match found.map(|o| &o.resource) {
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
            if let Resource::ManagedApplication(a) = &o.resource {
                out.insert(a.spec.app_id.clone());
            }
        }
    }
    Some(out.into_iter().collect())
}

/// The APIs a subscription covers: `apis`, `apiBundles` (their APIs and selector) and
/// `apiSelector`, as `namespace/name`.
fn subscription_apis(
    cx: &mut Ctx<'_>,
    m: &Manifests,
    l: &Loaded,
    spec: &ManagedSubscriptionSpec,
) -> Option<Vec<String>> {
    let ns = l.ns();
    let is_api = |o: &Resource| matches!(o, Resource::Api(_));
    let mut out = BTreeSet::new();
    for (i, r) in spec.apis.iter().enumerate() {
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
    for (i, b) in spec.api_bundles.iter().enumerate() {
        let bundle = in_namespace(m, ns, |o| matches!(o, Resource::ApiBundle(_))).find(|o| o.name() == b.name);
        let Some(Resource::ApiBundle(bundle)) = bundle.map(|o| &o.resource) else {
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
    if let Some(sel) = &spec.api_selector {
        select(sel, &mut out);
    }
    Some(out.into_iter().collect())
}

/// Plan `name` of `l`'s namespace, its limits checked as the upstream schema bounds them.
fn plan(cx: &mut Ctx<'_>, m: &Manifests, l: &Loaded, name: &str) -> Option<pb::Plan> {
    let found = in_namespace(m, l.ns(), |o| matches!(o, Resource::ApiPlan(_))).find(|o| o.name() == name);
    let Some((pl, Resource::ApiPlan(p))) = found.map(|o| (o, &o.resource)) else {
        let msg = format!("APIPlan {}/{name} does not exist", l.ns());
        cx.err(l, "spec.apiPlan.name", "unresolved-reference", msg);
        return None;
    };
    let spec: &ApiPlanSpec = &p.spec;
    let rate_limit = limit(cx, pl, "spec.rateLimit", spec.rate_limit.as_ref(), 3_600_000)?;
    let quota = limit(cx, pl, "spec.quota", spec.quota.as_ref(), 9_999 * 3_600_000)?;
    Some(pb::Plan { id: pl.id(), rate_limit, quota })
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
        // JWT is not built: an error where the manifest asks for it (an error refuses the
        // whole configuration, so such an API is never served on API keys instead).
        let (_, found) = compiled_with(
            "apiVersion: hub.traefik.io/v1alpha1\nkind: APIAuth\nmetadata: {name: j, namespace: apps}\nspec: {isDefault: true, jwt: {}}\n",
        );
        assert!(found.iter().any(|e| e.contains("spec.jwt") && e.contains("apim.yaml:")), "{found:?}");
        // A default APIAuth with no method at all: the API is marked, never served open.
        let none = compiled(
            "apiVersion: hub.traefik.io/v1alpha1\nkind: APIAuth\nmetadata: {name: n, namespace: apps}\nspec: {isDefault: true}\n",
        );
        let a = none.body.apis.iter().find(|a| a.id == "apps/crm-api").unwrap();
        assert!(matches!(&a.auth, Some(pb::api::Auth::Unsupported(why)) if why.contains("no method")), "{a:?}");
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
