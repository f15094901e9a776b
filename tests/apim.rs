//! API management at a gateway, end to end: a route of an API is served only with a key of
//! an application subscribed to it, within its plan; every refusal is a problem document
//! with its own type; the key never reaches the backend.

mod common;

use std::fs;
use std::time::Duration;

use common::backend;
use common::client::{Resp, get};
use common::gateway::GatewayProc;

const MANIFESTS: &str = "apiVersion: hub.traefik.io/v1alpha1
kind: API
metadata: {name: crm-api, namespace: ns}
spec:
  cors: {allowOriginsList: [\"https://app.example\"], allowHeadersList: [\"*\"], allowMethodsList: [GET], maxAge: 600}
---
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata:
  name: crm
  namespace: ns
  annotations: {hub.traefik.io/api: crm-api}
spec:
  entryPoints: [web]
  routes:
    - match: PathPrefix(`/crm`)
      services: [{name: svc, port: 80}]
---
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata: {name: open, namespace: ns}
spec:
  entryPoints: [web]
  routes:
    - match: PathPrefix(`/open`)
      services: [{name: svc, port: 80}]
---
apiVersion: hub.traefik.io/v1alpha1
kind: APIPlan
metadata: {name: tiny, namespace: ns}
spec:
  title: Tiny
  rateLimit: {limit: 3, period: 1m}
---
apiVersion: hub.traefik.io/v1alpha1
kind: ManagedApplication
metadata: {name: app-a, namespace: ns}
spec:
  appId: app-a
  owner: tests
  apiKeys:
    - {value: key-a}
    - {value: key-a-old, suspended: true}
---
apiVersion: hub.traefik.io/v1alpha1
kind: ManagedApplication
metadata: {name: app-b, namespace: ns}
spec: {appId: app-b, owner: tests, apiKeys: [{value: key-b}]}
---
apiVersion: hub.traefik.io/v1alpha1
kind: APICatalogItem
metadata: {name: crm-for-devs, namespace: ns}
spec: {groups: [developers], apis: [{name: crm-api}], apiPlan: {name: tiny}}
---
apiVersion: hub.traefik.io/v1alpha1
kind: ManagedSubscription
metadata: {name: a-on-crm, namespace: ns}
spec:
  apiPlan: {name: tiny}
  managedApplications: [{name: app-a}]
  apis: [{name: crm-api}]
";

/// A backend, and a gateway serving [`MANIFESTS`] in front of it (the directory kept
/// while the test runs).
async fn start() -> (backend::Backend, tempfile::TempDir, GatewayProc) {
    let be = backend::start("crm", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let manifests = MANIFESTS.to_string() + &common::service_manifests("ns", "svc", &[be.addr]);
    fs::write(tmp.path().join("apim.yaml"), manifests).unwrap();
    let gw = GatewayProc::start(None, tmp.path(), &["--workers", "1"]);
    (be, tmp, gw)
}

async fn call(gw: &GatewayProc, path: &str, key: Option<&str>) -> Resp {
    let mut req = hyper::Request::get(gw.web(path));
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    common::client::send(&common::client::http1(), req.body(common::client::body("")).unwrap()).await
}

fn problem(r: &Resp) -> String {
    assert_eq!(r.header("content-type"), Some("application/problem+json"), "{r:?}");
    let doc: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(doc["status"], r.status, "{doc}");
    doc["type"].as_str().unwrap().rsplit('/').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_subscribed_keys_within_their_plan_reach_an_apis_backend() {
    let (be, _tmp, gw) = start().await;

    // Refusals, each with its own problem type; none reaches the backend.
    let r = call(&gw, "/crm/x", None).await;
    assert_eq!((r.status, problem(&r).as_str()), (401, "missing-credentials"));
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = call(&gw, "/crm/x", Some("nope")).await;
    assert_eq!((r.status, problem(&r).as_str()), (401, "invalid-credentials"));
    let r = call(&gw, "/crm/x", Some("key-b")).await;
    assert_eq!((r.status, problem(&r).as_str()), (403, "not-subscribed"));
    let r = call(&gw, "/crm/x", Some("key-a-old")).await;
    assert_eq!((r.status, problem(&r).as_str()), (403, "suspended"));
    assert!(be.seen.lock().unwrap().is_empty(), "{:?}", be.seen.lock().unwrap());

    // The subscribed key, in the header or the query: let through, the key taken out.
    let r = call(&gw, "/crm/x", Some("key-a")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-seen-authorization"), None, "the key does not reach the backend");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("2"));
    let r = get(&gw.web("/crm/y?a=1&api_key=key-a&b=2")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(be.seen.lock().unwrap().last().map(String::as_str), Some("GET /crm/y?a=1&b=2"));
    let r = call(&gw, "/crm/z", Some("key-a")).await;
    assert_eq!((r.status, r.header("x-ratelimit-remaining")), (200, Some("0")));

    // The plan's three requests a minute are used up.
    let r = call(&gw, "/crm/x", Some("key-a")).await;
    assert_eq!((r.status, problem(&r).as_str()), (429, "rate-limited"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    assert_eq!(be.seen.lock().unwrap().len(), 3, "three requests reached the backend");

    // A route of no API asks for nothing.
    assert_eq!(call(&gw, "/open", None).await.status, 200);
}

/// Hostile keys: a huge one, an empty one, another scheme, and a key hidden in a second
/// query parameter are refused like any unknown key; none reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_keys_are_refused_without_reaching_the_backend() {
    let (be, _tmp, gw) = start().await;
    let huge = "k".repeat(32 * 1024);
    let r = call(&gw, "/crm/x", Some(&huge)).await;
    assert_eq!((r.status, problem(&r).as_str()), (401, "invalid-credentials"));
    let r = call(&gw, "/crm/x", Some("")).await;
    assert_eq!((r.status, problem(&r).as_str()), (401, "missing-credentials"));
    let basic =
        hyper::Request::get(gw.web("/crm/x")).header("authorization", "Basic key-a").body(common::client::body(""));
    let r = common::client::send(&common::client::http1(), basic.unwrap()).await;
    assert_eq!((r.status, problem(&r).as_str()), (401, "missing-credentials"), "only a Bearer key counts");
    // The first api_key parameter is the key; a good one further on does not count.
    let r = get(&gw.web("/crm/x?api_key=nope&api_key=key-a")).await;
    assert_eq!((r.status, problem(&r).as_str()), (401, "invalid-credentials"));
    assert!(be.seen.lock().unwrap().is_empty(), "{:?}", be.seen.lock().unwrap());
}

/// The API's CORS: a browser's preflight is answered before any key is asked for, with
/// `Authorization` allowed; refusals and answers carry the CORS headers, and the plan
/// headers are readable by the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_come_before_the_key_and_refusals_carry_cors_headers() {
    let (be, _tmp, gw) = start().await;
    let client = common::client::http1();
    let preflight = hyper::Request::builder()
        .method("OPTIONS")
        .uri(gw.web("/crm/x"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .body(common::client::body(""))
        .unwrap();
    let r = common::client::send(&client, preflight).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example"));
    assert!(r.header("access-control-allow-headers").unwrap().to_ascii_lowercase().contains("authorization"), "{r:?}");

    let from_page = |key: Option<&str>| {
        let mut b = hyper::Request::get(gw.web("/crm/x")).header("origin", "https://app.example");
        if let Some(k) = key {
            b = b.header("authorization", format!("Bearer {k}"));
        }
        b.body(common::client::body("")).unwrap()
    };
    let r = common::client::send(&client, from_page(None)).await;
    assert_eq!((r.status, problem(&r).as_str()), (401, "missing-credentials"));
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example"), "a refusal the page can read");
    let r = common::client::send(&client, from_page(Some("key-a"))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example"));
    let exposed = r.header("access-control-expose-headers").unwrap_or_default().to_ascii_lowercase();
    assert!(exposed.contains("x-ratelimit-remaining") && exposed.contains("x-quota-remaining"), "{exposed}");
    assert!(be.seen.lock().unwrap().len() == 1, "only the keyed request reached the backend");
}

/// `atrium access-check` explains the decision without starting anything: the same
/// router, API, application, subscription and plan a gateway would use, and the answer.
#[test]
fn access_check_explains_who_may_call_and_under_which_plan() {
    let tmp = tempfile::tempdir().unwrap();
    let addr: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let manifests = MANIFESTS.to_string() + &common::service_manifests("ns", "svc", &[addr]);
    fs::write(tmp.path().join("apim.yaml"), manifests).unwrap();
    let dir = tmp.path().display().to_string();
    let check = |args: &[&str]| {
        let mut all = vec!["access-check", "--manifests", &dir];
        all.extend_from_slice(args);
        common::atrium(all)
    };
    let o = check(&["--key", "key-a", "GET", "http://any.example/crm/employees"]);
    let out = common::stdout(&o);
    assert!(o.status.success(), "{out}{}", common::stderr(&o));
    for want in [
        "router         ns/crm",
        "api            ns/crm-api",
        "authentication API key (Authorization: Bearer KEY, or ?api_key=KEY)",
        "application    app-a",
        "subscription   ns/a-on-crm",
        "plan           ns/tiny",
        "  rate limit   3 per 60s (bucket subscription)",
        "result         200 allowed",
    ] {
        assert!(out.contains(want), "{want:?} in\n{out}");
    }
    let o = check(&["--key", "key-b", "--format", "json", "GET", "http://any.example/crm/x"]);
    assert_eq!(o.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_str(&common::stdout(&o)).unwrap();
    assert_eq!((doc["status"].as_u64(), doc["result"].as_str()), (Some(403), Some("not-subscribed")), "{doc}");
    let o = check(&["--key", "key-a-old", "GET", "http://any.example/crm/x"]);
    assert!(common::stdout(&o).contains("403 suspended"), "{}", common::stdout(&o));
    let o = check(&["GET", "http://any.example/crm/x"]);
    assert!(common::stdout(&o).contains("401 missing-credentials"), "{}", common::stdout(&o));
    let o = check(&["GET", "http://any.example/open/x"]);
    assert!(o.status.success() && common::stdout(&o).contains("200 no-api"), "{}", common::stdout(&o));
    let o = check(&["GET", "not a url"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(common::stderr(&o).contains("is not an absolute URL"), "{}", common::stderr(&o));
}

/// The admin API lists each API with its authentication, routes, subscriptions and catalog
/// items, and never a key or its hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_lists_apis_with_routes_subscriptions_and_catalog_items() {
    let (_be, _tmp, gw) = start().await;
    let r = get(&format!("http://{}/api/apis", gw.admin)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let doc: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let api = &doc[0];
    assert_eq!(api["id"], "ns/crm-api", "{doc:#}");
    assert_eq!(api["routes"], serde_json::json!(["ns/crm/0"]), "{doc:#}");
    assert_eq!(api["subscriptions"][0]["id"], "ns/a-on-crm");
    assert_eq!(api["subscriptions"][0]["applications"], serde_json::json!(["app-a"]));
    assert_eq!(api["subscriptions"][0]["plan"]["rate_limit"], "3 per 60s (bucket subscription)");
    assert_eq!(api["catalogItems"][0]["groups"], serde_json::json!(["developers"]));
    assert_eq!(api["cors"], true);
    let sha = atrium_routing::apim::key_hash("key-a").iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert!(!r.body.contains("key-a") && !r.body.contains(&sha[..16]), "no key material: {}", r.body);
}

/// Polls `check` for up to 20 s; on failure, the panic shows the gateway's log (what it
/// reloaded or refused).
async fn eventually_logged<T, F, Fut>(gw: &GatewayProc, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let mut check = check;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if std::time::Instant::now() > deadline {
            panic!("{what}: not within 20 s; gateway log:\n{}", gw.log.lock().unwrap().join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Keys change with the manifests: a key removed is refused from the next configuration
/// on, and the namespace's default APIAuth moves the key to another header or to a query
/// parameter (the old place then carries no key); the key never reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_keys_are_refused_and_key_sources_move_the_key() {
    let be = backend::start("crm", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let base = MANIFESTS.replace("{limit: 3, period: 1m}", "{limit: 1000, period: 1m}")
        + &common::service_manifests("ns", "svc", &[be.addr]);
    let file = tmp.path().join("apim.yaml");
    fs::write(&file, &base).unwrap();
    let gw = GatewayProc::start(None, tmp.path(), &["--workers", "1"]);
    assert_eq!(call(&gw, "/crm/x", Some("key-a")).await.status, 200);

    // key-a is replaced by key-a2 in the manifest: refused within one configuration.
    fs::write(&file, base.replace("{value: key-a}", "{value: key-a2}")).unwrap();
    eventually_logged(&gw, "key-a revoked", || async {
        let r = call(&gw, "/crm/x", Some("key-a")).await;
        (r.status == 401).then_some(())
    })
    .await;
    assert_eq!(call(&gw, "/crm/x", Some("key-a2")).await.status, 200);

    // The key moves to the X-Test header.
    let auth = |source: &str| {
        format!(
            "---\napiVersion: hub.traefik.io/v1alpha1\nkind: APIAuth\nmetadata: {{name: keys, namespace: ns}}\nspec: {{isDefault: true, apiKey: {{keySource: {source}}}}}\n"
        )
    };
    fs::write(&file, base.replace("{value: key-a}", "{value: key-a2}") + &auth("{header: X-Test}")).unwrap();
    let client = common::client::http1();
    let with_header = || {
        let req = hyper::Request::get(gw.web("/crm/h")).header("x-test", "key-a2");
        common::client::send(&client, req.body(common::client::body("")).unwrap())
    };
    let r = eventually_logged(&gw, "the key read from X-Test", || async {
        let r = with_header().await;
        (r.status == 200).then_some(r)
    })
    .await;
    assert_eq!(r.header("x-seen-x-test"), None, "the key header is taken out");
    let r = call(&gw, "/crm/x", Some("key-a2")).await;
    assert_eq!((r.status, problem(&r).as_str()), (401, "missing-credentials"), "Bearer no longer counts");

    // The key moves to the `token` query parameter.
    fs::write(&file, base.replace("{value: key-a}", "{value: key-a2}") + &auth("{query: token}")).unwrap();
    eventually_logged(&gw, "the key read from ?token=", || async {
        (get(&gw.web("/crm/q?token=key-a2&b=1")).await.status == 200).then_some(())
    })
    .await;
    assert_eq!(be.seen.lock().unwrap().last().map(String::as_str), Some("GET /crm/q?b=1"));
    assert_eq!(get(&gw.web("/crm/q?api_key=key-a2")).await.status, 401, "api_key no longer counts");
}

/// An API route without CORS and a bearer key takes the direct lane: the same refusals, the
/// key kept from the backend, the plan headers on the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_direct_lane_checks_api_keys_and_plans_as_the_general_one() {
    let be = backend::start("crm", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let cors = "spec:\n  cors: {allowOriginsList: [\"https://app.example\"], allowHeadersList: [\"*\"], allowMethodsList: [GET], maxAge: 600}\n";
    assert!(MANIFESTS.contains(cors));
    let manifests = MANIFESTS.replace(cors, "spec: {}\n") + &common::service_manifests("ns", "svc", &[be.addr]);
    fs::write(tmp.path().join("apim.yaml"), manifests).unwrap();
    let gw = GatewayProc::start(None, tmp.path(), &["--workers", "1"]);
    let r = call(&gw, "/crm/x", Some("nope")).await;
    assert_eq!((r.status, problem(&r).as_str()), (401, "invalid-credentials"));
    let r = call(&gw, "/crm/x", Some("key-b")).await;
    assert_eq!((r.status, problem(&r).as_str()), (403, "not-subscribed"));
    for left in ["2", "1", "0"] {
        let r = call(&gw, "/crm/x", Some("key-a")).await;
        assert_eq!((r.status, r.header("x-ratelimit-remaining")), (200, Some(left)), "{r:?}");
        assert_eq!(r.header("x-seen-authorization"), None, "the key does not reach the backend");
    }
    let r = call(&gw, "/crm/x", Some("key-a")).await;
    assert_eq!((r.status, problem(&r).as_str()), (429, "rate-limited"));
    assert!(r.header("retry-after").is_some());
    assert_eq!(be.seen.lock().unwrap().len(), 3);
    let metrics = get(&format!("http://{}/metrics", gw.admin)).await.body;
    assert!(metrics.contains("plan=\"ns/tiny\",result=\"rejected\"} 1"), "{metrics}");
}
