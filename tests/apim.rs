//! API management at a gateway, end to end: a route of an API is served only with a key of
//! an application subscribed to it, within its plan; every refusal is a problem document
//! with its own type; the key never reaches the backend.

mod common;

use std::fs;

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
