//! OpenAPI specs end to end: the control plane fetches each API's spec (http, and
//! `file://` only under `--spec-dir`), within a size limit, and shows per API whether it
//! got it; with `validateRequestMethodAndPath`, operations the spec does not define are
//! answered 404 or 405 before the backend; operation filters restrict subscriptions; an
//! unreachable spec never blocks routing.

mod common;

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::backend;
use common::client::Resp;
use common::gateway::GatewayProc;
use common::topology::strings;

const CRM_SPEC: &str = "openapi: 3.0.3
info: {title: CRM, version: '1'}
paths:
  /employees:
    get: {}
    post: {}
  /employees/{id}:
    get: {}
";

/// A spec server: `/crm.yaml`, `/big.yaml` (11 MiB); counts requests.
async fn spec_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use hyper::server::conn::http1;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let h = h.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    h.fetch_add(1, Ordering::SeqCst);
                    let body = match req.uri().path() {
                        "/crm.yaml" => CRM_SPEC.to_string(),
                        _ => "x".repeat(11 << 20),
                    };
                    async move { Ok::<_, std::convert::Infallible>(hyper::Response::new(common::client::body(body))) }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    });
    (addr, hits)
}

fn api(name: &str, url: &str, extra: &str) -> String {
    format!(
        "apiVersion: hub.traefik.io/v1alpha1
kind: API
metadata: {{name: {name}, namespace: ns}}
spec:
  openApiSpec:
    url: \"{url}\"
{extra}
---
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata:
  name: {name}
  namespace: ns
  annotations: {{hub.traefik.io/api: {name}}}
spec:
  entryPoints: [web]
  routes:
    - match: PathPrefix(`/{name}`)
      services: [{{name: svc, port: 80}}]
---
"
    )
}

async fn call(web: std::net::SocketAddr, method: &str, path: &str) -> Resp {
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{web}{path}"))
        .header("authorization", "Bearer key-a")
        .body(common::client::body(""))
        .unwrap();
    common::client::send(&common::client::http1(), req).await
}

fn kind(r: &Resp) -> String {
    let doc: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
    doc["type"].as_str().unwrap_or("").rsplit('/').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn specs_are_fetched_within_bounds_and_validate_operations_without_ever_blocking_routing() {
    let (specs, hits) = spec_server().await;
    let be = backend::start("crm", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let spec_dir = tmp.path().join("specs");
    fs::create_dir(&spec_dir).unwrap();
    // The billing spec names its own server: its base path counts when no override does.
    let billing = CRM_SPEC
        .replace("/employees", "/invoices")
        .replace("paths:", "servers: [{url: 'https://internal/billing'}]\npaths:");
    fs::write(spec_dir.join("billing.yaml"), billing).unwrap();
    fs::write(tmp.path().join("private.yaml"), CRM_SPEC).unwrap();
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();

    let validate = "    validateRequestMethodAndPath: true";
    let mut m = String::new();
    m += &api(
        "crm",
        &format!("http://{specs}/crm.yaml"),
        &format!(
            "{validate}\n    override: {{servers: [{{url: 'https://api.example.com/crm'}}]}}\n    operationSets: [{{name: read, matchers: [{{methods: [GET]}}]}}]"
        ),
    );
    m += &api("billing", &format!("file://{}", spec_dir.join("billing.yaml").display()), validate);
    m += &api("private", &format!("file://{}/../private.yaml", spec_dir.display()), validate);
    m += &api("down", &format!("http://127.0.0.1:{closed_port}/spec.yaml"), validate);
    m += &api("big", &format!("http://{specs}/big.yaml"), validate);
    m += "apiVersion: hub.traefik.io/v1alpha1
kind: APIPlan
metadata: {name: open, namespace: ns}
spec: {title: Open}
---
apiVersion: hub.traefik.io/v1alpha1
kind: ManagedApplication
metadata: {name: app-a, namespace: ns}
spec: {appId: app-a, owner: tests, apiKeys: [{value: key-a}]}
---
apiVersion: hub.traefik.io/v1alpha1
kind: ManagedSubscription
metadata: {name: a-read-crm, namespace: ns}
spec:
  apiPlan: {name: open}
  managedApplications: [{name: app-a}]
  apis: [{name: crm}]
  operationFilter: {include: [read]}
---
apiVersion: hub.traefik.io/v1alpha1
kind: ManagedSubscription
metadata: {name: a-rest, namespace: ns}
spec:
  apiPlan: {name: open}
  managedApplications: [{name: app-a}]
  apis: [{name: billing}, {name: private}, {name: down}, {name: big}]
---
";
    m += &common::service_manifests("ns", "svc", &[be.addr]);
    fs::create_dir(tmp.path().join("m")).unwrap();
    fs::write(tmp.path().join("m/apis.yaml"), m).unwrap();
    let args = strings(&[
        "control-plane",
        "--manifests",
        tmp.path().join("m").to_str().unwrap(),
        "--spec-dir",
        spec_dir.to_str().unwrap(),
        "--grpc",
        "127.0.0.1:0",
        "--state-dir",
        tmp.path().join("state").to_str().unwrap(),
        "--entrypoint",
        "web=127.0.0.1:0",
        "--entrypoint",
        "websecure=off",
        "--admin",
        "127.0.0.1:0",
        "--workers",
        "1",
    ]);
    let cp = GatewayProc::spawn(&args, 1, true);
    let web = cp.web_addr();

    // Each API's fetch status, in the admin API (from the snapshot every data plane gets).
    let status = |doc: &serde_json::Value, id: &str| {
        let a = doc.as_array().unwrap().iter().find(|a| a["id"] == id).cloned().unwrap_or_default();
        a["spec"]["status"].as_str().unwrap_or("").to_string()
    };
    let doc = common::eventually(Duration::from_secs(20), "every spec fetched or failed", || async {
        let r = common::client::get(&format!("http://{}/api/apis", cp.admin)).await;
        let doc: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        let done = ["ns/crm", "ns/billing", "ns/private", "ns/down", "ns/big"]
            .iter()
            .all(|id| !status(&doc, id).is_empty() && status(&doc, id) != "pending");
        done.then_some(doc)
    })
    .await;
    assert_eq!(status(&doc, "ns/crm"), "ok: 3 operations", "{doc:#}");
    assert_eq!(status(&doc, "ns/billing"), "ok: 3 operations", "file:// inside --spec-dir: {doc:#}");
    assert!(status(&doc, "ns/private").contains("outside --spec-dir"), "{doc:#}");
    assert!(status(&doc, "ns/down").starts_with("error: connecting"), "{doc:#}");
    assert!(status(&doc, "ns/big").contains("larger than 10485760 bytes"), "{doc:#}");
    assert!(cp.wait_logged("OpenAPI spec fetch failed").await);
    assert!(hits.load(Ordering::SeqCst) >= 2);

    // Operations the spec defines go through (with or without the servers' base path);
    // others get 404 or 405 before the backend; the filter allows GETs only.
    let r = call(web, "GET", "/crm/employees").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(call(web, "GET", "/crm/employees/42").await.status, 200);
    let seen = be.seen.lock().unwrap().len();
    let r = call(web, "GET", "/crm/payroll").await;
    assert_eq!((r.status, kind(&r).as_str()), (404, "unknown-operation"), "{r:?}");
    let r = call(web, "DELETE", "/crm/employees").await;
    assert_eq!((r.status, kind(&r).as_str()), (405, "method-not-allowed"), "{r:?}");
    assert_eq!(r.header("allow"), Some("GET, POST"));
    let r = call(web, "POST", "/crm/employees").await;
    assert_eq!((r.status, kind(&r).as_str()), (403, "operation-not-allowed"), "{r:?}");
    assert_eq!(be.seen.lock().unwrap().len(), seen, "no refused operation reached the backend");
    let r = call(web, "DELETE", "/billing/invoices").await;
    assert_eq!(r.status, 405, "file:// specs validate too: {r:?}");

    // A spec that could not be fetched blocks nothing: its API is served as configured.
    assert_eq!(call(web, "GET", "/down/anything").await.status, 200);
    assert_eq!(call(web, "DELETE", "/private/x").await.status, 200);
}
