//! Hot swap under load: while bounded client loops send requests (keep-alive HTTP/1.1 on
//! both lanes, a new connection per request, HTTP/2), the route table is replaced 1,000
//! times. Not one request may fail, and none may see a mix of two
//! configurations (two middlewares stamp the version; both stamps must agree). A second
//! router, without middlewares (the direct lane), sends to a backend that alternates with
//! the version: its requests must not fail either, and both backends must answer.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use atrium_data_plane::proxy::server::{self, EntryPoint, ServerLimits};
use atrium_data_plane::proxy::tls::CertStore;
use atrium_data_plane::proxy::{Compiled, Gateway};
use atrium_data_plane::upstream::{UpstreamConfig, Upstreams};
use atrium_model::loader::load_text;
use atrium_model::values::Values;
use common::backend;
use common::client;

fn config(version: u64, backend: std::net::SocketAddr, direct: [std::net::SocketAddr; 2]) -> String {
    format!(
        "apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata: {{name: r, namespace: ns}}
spec:
  entryPoints: [web]
  routes:
    - match: PathPrefix(`/v`)
      middlewares: [{{name: stamp-a}}, {{name: stamp-b}}, {{name: strip}}]
      services: [{{name: svc, port: 80}}]
    - match: PathPrefix(`/d`)
      services: [{{name: direct, port: 80}}]
---
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: {{name: stamp-a, namespace: ns}}
spec: {{headers: {{customResponseHeaders: {{X-Version-A: \"{version}\"}}}}}}
---
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: {{name: stamp-b, namespace: ns}}
spec: {{headers: {{customResponseHeaders: {{X-Version-B: \"{version}\"}}}}}}
---
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: {{name: strip, namespace: ns}}
spec: {{stripPrefix: {{prefixes: [/v{}]}}}}
",
        // Alternate the strip prefix so the path the backend sees depends on the version too.
        if version.is_multiple_of(2) { "" } else { "/" },
    ) + &common::service_manifests("ns", "svc", &[backend])
        + &common::service_manifests("ns", "direct", &[direct[(version % 2) as usize]])
}

fn runtime(version: u64, backend: std::net::SocketAddr, direct: [std::net::SocketAddr; 2]) -> Compiled {
    let m = load_text(&format!("v{version}.yaml"), &config(version, backend, direct));
    assert!(m.diagnostics.is_empty(), "{:?}", m.diagnostics);
    let c = atrium_model::compile::compile(&m, &Values::default(), None);
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
    Compiled::build(c.body, version).unwrap()
}

/// A client sending GET `url` until `stop` (bounded: 20,000 requests or 60 s); `check`
/// asserts on each response (and its number) and names what it saw. Returns the count and
/// the names.
fn client_loop(
    stop: Arc<AtomicBool>,
    url: String,
    check: fn(&client::Resp, u32) -> String,
) -> tokio::task::JoinHandle<(u32, BTreeSet<String>)> {
    tokio::spawn(async move {
        let http = client::http1();
        let mut seen = BTreeSet::new();
        let mut n = 0u32;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) && n < 20_000 && Instant::now() < deadline {
            let req = hyper::Request::get(url.as_str()).body(client::body("")).unwrap();
            seen.insert(check(&client::send(&http, req).await, n));
            n += 1;
        }
        (n, seen)
    })
}

/// A client that opens a new connection for every request (`Connection: close`), until
/// `stop` (bounded like [`client_loop`]). Returns the count.
fn fresh_connection_loop(stop: Arc<AtomicBool>, addr: std::net::SocketAddr) -> tokio::task::JoinHandle<u32> {
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut n = 0u32;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) && n < 20_000 && Instant::now() < deadline {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /v/item HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await.unwrap();
            let resp = client::read_response(&mut s).await;
            assert!(resp.starts_with("HTTP/1.1 200"), "fresh-connection request {n} failed: {resp}");
            assert!(resp.ends_with("path=/item"), "{resp}");
            n += 1;
        }
        n
    })
}

/// An HTTP/2 (prior knowledge) client multiplexing requests on one connection, until
/// `stop` (bounded like [`client_loop`]). Returns the count.
fn h2_loop(stop: Arc<AtomicBool>, addr: std::net::SocketAddr, path: &'static str) -> tokio::task::JoinHandle<u32> {
    tokio::spawn(async move {
        let mut h2 = common::exchanges::h2(tokio::net::TcpStream::connect(addr).await.unwrap()).await;
        let mut n = 0u32;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) && n < 20_000 && Instant::now() < deadline {
            let body = if n.is_multiple_of(2) { client::body("") } else { client::body(vec![b'x'; 1000]) };
            let req = hyper::Request::post(format!("http://a{path}")).body(body).unwrap();
            h2.ready().await.unwrap();
            let r = tokio::time::timeout(Duration::from_secs(10), h2.send_request(req)).await.unwrap().unwrap();
            assert_eq!(r.status(), 200, "HTTP/2 request {n} failed");
            if path.starts_with("/v") {
                let (a, b) = (r.headers()["x-version-a"].clone(), r.headers()["x-version-b"].clone());
                assert_eq!(a, b, "an HTTP/2 request saw two configurations");
            }
            http_body_util::BodyExt::collect(r.into_body()).await.unwrap();
            n += 1;
        }
        n
    })
}

/// 1,000 swaps while clients of every kind keep sending: keep-alive HTTP/1.1 on both lanes,
/// a new connection per request, HTTP/2 with and without bodies. Not one request may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_table_swapped_1000_times_under_load_without_a_failure() {
    let be = backend::start("b", "127.0.0.1").await;
    let (even, odd) = (backend::start("even", "127.0.0.1").await, backend::start("odd", "127.0.0.1").await);
    let direct = [even.addr, odd.addr];
    let gw = Gateway::new(
        Upstreams::new(UpstreamConfig::default()),
        None,
        CertStore::generated().unwrap(),
        Default::default(),
    );
    gw.swap(runtime(1, be.addr, direct));
    let ep = EntryPoint::bind("web", "127.0.0.1:0".parse().unwrap(), None).await.unwrap();
    let addr = ep.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let up = Arc::new(Upstreams::new(UpstreamConfig::default()));
    let server = tokio::spawn(server::serve(ep, gw.clone(), up, ServerLimits::default(), stop_rx));

    let stop = Arc::new(AtomicBool::new(false));
    let url = |path: &str| format!("http://{addr}{path}");
    let clients: Vec<_> = (0..3)
        .map(|_| {
            client_loop(stop.clone(), url("/v/item"), |r, n| {
                assert_eq!(r.status, 200, "request {n} failed: {r:?}");
                let (a, b) = (r.header("x-version-a").unwrap(), r.header("x-version-b").unwrap());
                assert_eq!(a, b, "a request saw two configurations");
                // Both strip prefixes (`/v` and `/v/`) leave the backend the same path.
                assert_eq!(r.body, "path=/item");
                a.to_string()
            })
        })
        .collect();
    let direct_clients: Vec<_> = (0..2)
        .map(|_| {
            client_loop(stop.clone(), url("/d/item"), |r, n| {
                assert_eq!(r.status, 200, "direct-lane request {n} failed: {r:?}");
                assert_eq!(r.body, "path=/d/item");
                r.header("x-backend-name").unwrap().to_string()
            })
        })
        .collect();
    let fresh = fresh_connection_loop(stop.clone(), addr);
    let h2 = [h2_loop(stop.clone(), addr, "/v/item"), h2_loop(stop.clone(), addr, "/d/item")];
    for v in 2..=1001u64 {
        gw.swap(runtime(v, be.addr, direct));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut versions = BTreeSet::new();
    for c in clients {
        let (n, seen) = c.await.unwrap();
        total += n;
        versions.extend(seen);
    }
    assert_eq!(gw.in_force().unwrap().version, 1001);
    assert_eq!(gw.metrics.swaps.get(), 1001, "every swap went in");
    assert!(total >= 300, "only {total} requests went through");
    assert!(versions.len() >= 50, "requests saw only {} table versions", versions.len());
    let mut names = BTreeSet::new();
    for c in direct_clients {
        let (n, seen) = c.await.unwrap();
        assert!(n >= 50, "only {n} direct-lane requests went through");
        names.extend(seen);
    }
    assert_eq!(names, BTreeSet::from(["even".to_string(), "odd".to_string()]), "both versions' backends answered");
    assert!(fresh.await.unwrap() >= 50, "new connections kept being served");
    for c in h2 {
        assert!(c.await.unwrap() >= 50, "HTTP/2 requests kept being served");
    }
    let _ = stop_tx.send(true);
    server.await.unwrap();
}
