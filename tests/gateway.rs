//! `atrium gateway` end to end: a real process on loopback, in front of a real backend.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::backend;
use common::client::{self, get};
use common::exchanges;
use common::gateway::GatewayProc;

/// A copy of the seed's cluster-a manifests, with its EndpointSlice pointed at `backend`.
fn seed_child(dir: &Path, backend: std::net::SocketAddr) -> PathBuf {
    let m = dir.join("manifests");
    common::copy_dir(&common::example().join("cluster-a/manifests"), &m);
    let eps = m.join("crm-endpoints.yaml");
    let text = fs::read_to_string(&eps)
        .unwrap()
        .replace("\"127.0.0.2\"", &format!("\"{}\"", backend.ip()))
        .replace("port: 8080", &format!("port: {}", backend.port()));
    fs::write(eps, text).unwrap();
    m
}

fn values() -> PathBuf {
    common::example().join("cluster-a/values.yaml")
}

fn write(dir: &Path, name: &str, text: &str) {
    fs::write(dir.join(name), text).unwrap();
}

/// An IngressRoute `name` in namespace `apps` on `entry_point`: `rule` to `service`
/// (a YAML flow mapping), with `tls: {}` when asked.
fn ingress_route(name: &str, entry_point: &str, rule: &str, service: &str, tls: bool) -> String {
    format!(
        "apiVersion: traefik.io/v1alpha1\nkind: IngressRoute\nmetadata:\n  name: {name}\n  namespace: apps\nspec:\n  entryPoints: [{entry_point}]\n  routes:\n    - match: {rule}\n      services: [{service}]\n{}",
        if tls { "  tls: {}\n" } else { "" }
    )
}

/// The seed's cluster-a gateway in front of a test backend, with `extra` manifests
/// (file name, text) and `args`. The backend and the directory live as long as it.
struct Seeded {
    gw: GatewayProc,
    _backend: backend::Backend,
    _dir: tempfile::TempDir,
}

async fn seeded(extra: &[(&str, &str)], args: &[&str]) -> Seeded {
    let be = backend::start("crm", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let m = seed_child(tmp.path(), be.addr);
    for (name, text) in extra {
        write(&m, name, text);
    }
    Seeded { gw: GatewayProc::start(Some(&values()), &m, args), _backend: be, _dir: tmp }
}

const EXTRA_ROUTES: &str = "apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata:
  name: extra
  namespace: apps
spec:
  entryPoints: [web]
  routes:
    - match: PathPrefix(`/nohost`)
      services: [{name: empty-service, port: 80}]
    - match: PathPrefix(`/closed`)
      services: [{name: closed-service, port: 80}]
    - match: PathPrefix(`/slow`)
      services: [{name: crm-service, port: 80}]
    - match: PathPrefix(`/limited`)
      middlewares: [{name: small-bodies}]
      services: [{name: crm-service, port: 80}]
---
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata:
  name: small-bodies
  namespace: apps
spec:
  buffering:
    maxRequestBodyBytes: 10
---
apiVersion: v1
kind: Service
metadata:
  name: empty-service
  namespace: apps
spec:
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata:
  name: closed-service
  namespace: apps
spec:
  ports: [{port: 80}]
---
apiVersion: v1
kind: Endpoints
metadata:
  name: closed-service
  namespace: apps
subsets:
  - addresses: [{ip: 127.0.0.1}]
    ports: [{port: CLOSED}]
";

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_child_route_strips_prefix_and_sets_backend_header() {
    let be = backend::start("crm", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let m = seed_child(tmp.path(), be.addr);
    let gw = GatewayProc::start(Some(&values()), &m, &[]);
    let r = get(&gw.web("/crm/health")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "health", "the backend saw /health");
    assert_eq!(r.header("x-traefik-backend"), Some("cluster-a"), "the headers middleware replaces the backend's value");
    assert_eq!(r.header("x-seen-x-forwarded-prefix"), Some("/crm"));
    assert_eq!(r.header("x-seen-x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(r.header("x-seen-x-forwarded-proto"), Some("http"));
    let r = get(&gw.web("/crm/customers/42?full=1")).await;
    assert_eq!(r.body, "path=/customers/42?full=1");
    assert!(gw.wait_logged("route table swapped in").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_a_user_can_read() {
    let be = backend::start("crm", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let m = seed_child(tmp.path(), be.addr);
    write(&m, "extra.yaml", &EXTRA_ROUTES.replace("CLOSED", &closed_port().to_string()));
    let gw = GatewayProc::start(
        Some(&values()),
        &m,
        &[
            "--upstream-response-timeout",
            "1",
            "--header-read-timeout",
            "1",
            "--idle-timeout",
            "1",
            "--max-header-bytes",
            "16384",
        ],
    );

    assert_eq!(get(&gw.web("/nothing-routes-here")).await.status, 404);
    assert_eq!(get(&gw.web("/nohost")).await.status, 503, "no endpoint");
    assert_eq!(get(&gw.web("/closed")).await.status, 502, "connection refused");
    let start = Instant::now();
    assert_eq!(get(&gw.web("/slow")).await.status, 504, "no response headers within the timeout");
    assert!(start.elapsed() < Duration::from_secs(3), "answered at the timeout, not when the backend finished");

    // 413 past the buffering limit, and the backend never sees the request.
    let hits = be.hits.load(std::sync::atomic::Ordering::Relaxed);
    let req = hyper::Request::post(gw.web("/limited")).body(client::body("0123456789ABCDEF")).unwrap();
    assert_eq!(client::send(&client::http1(), req).await.status, 413);
    let req = hyper::Request::post(gw.web("/limited")).body(client::body("small")).unwrap();
    let r = client::send(&client::http1(), req).await;
    assert_eq!((r.status, r.body.as_str()), (200, "path=/limited"));
    assert_eq!(be.hits.load(std::sync::atomic::Ordering::Relaxed), hits + 1);

    let web = gw.entry_points["web"];
    let raw = |payload: Vec<u8>| {
        let mut s = std::net::TcpStream::connect(web).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&payload).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    // Oversized request headers: 431.
    let big = format!("GET /crm/health HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "a".repeat(40_000));
    assert!(raw(big.into_bytes()).starts_with("HTTP/1.1 431"), "oversized headers get 431");
    // Malformed request line: 400.
    assert!(raw(b"NOT A REQUEST\r\n\r\n".to_vec()).starts_with("HTTP/1.1 400"));
    // A slow client that never finishes its headers is cut off.
    let start = Instant::now();
    let mut s = std::net::TcpStream::connect(web).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /crm/health HTTP/1.1\r\nHost: a\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(start.elapsed() < Duration::from_secs(5), "cut off after the header read timeout");
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));

    // An idle keep-alive connection is closed after the idle timeout.
    let mut s = std::net::TcpStream::connect(web).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /crm/health HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut first = [0u8; 15];
    s.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200 OK");
    let start = Instant::now();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(start.elapsed() < Duration::from_secs(5), "the idle connection was closed by the gateway");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_delay_keeps_serving_while_readyz_says_503() {
    let be = backend::start("crm", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let m = seed_child(tmp.path(), be.addr);
    let mut gw = GatewayProc::start(Some(&values()), &m, &["--shutdown-delay", "2"]);
    let readyz = format!("http://{}/readyz", gw.admin);
    assert_eq!(get(&readyz).await.status, 200);
    gw.terminate();
    common::eventually(Duration::from_secs(5), "/readyz answering 503 after SIGTERM", || async {
        (get(&readyz).await.status == 503).then_some(())
    })
    .await;
    // Endpoints are being removed: requests are still served meanwhile.
    assert_eq!(get(&gw.web("/crm/health")).await.status, 200);
    assert!(gw.wait_exit(Duration::from_secs(20)).is_some_and(|s| s.success()), "exits once the delay is over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_and_reload_keep_the_last_good_table() {
    let be = backend::start("crm", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let m = seed_child(tmp.path(), be.addr);
    let gw = GatewayProc::start(Some(&values()), &m, &["--watch-debounce-ms", "20"]);
    let admin = |p: &str| format!("http://{}{p}", gw.admin);
    assert_eq!(get(&admin("/healthz")).await.status, 200);
    let ready = get(&admin("/readyz")).await;
    assert_eq!(ready.status, 200);
    assert!(ready.body.contains("version 1"));
    let raw: serde_json::Value = serde_json::from_str(&get(&admin("/api/rawdata")).await.body).unwrap();
    assert_eq!(raw["routers"]["apps/crm-api/0"]["rule"], "PathPrefix(`/crm`)");
    assert_eq!(raw["middlewares"]["apps/strip-crm-prefix"]["stripPrefix"]["prefixes"][0], "/crm");
    assert_eq!(
        raw["services"]["apps/crm-service:80"]["loadBalancer"]["servers"][0]["url"],
        format!("http://{}", be.addr)
    );
    get(&gw.web("/crm/health")).await;
    let metrics = get(&admin("/metrics")).await.body;
    assert!(
        metrics
            .contains(r#"atrium_requests_total{router="apps/crm-api/0",service="apps/crm-service:80",code="200"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("atrium_route_table_version 1"), "{metrics}");

    // A good change is picked up.
    let route = m.join("crm-api.yaml");
    let text = fs::read_to_string(&route).unwrap();
    fs::write(&route, text.replace("X-Traefik-Backend: \"cluster-a\"", "X-Traefik-Backend: \"cluster-a2\"")).unwrap();
    common::eventually(Duration::from_secs(10), "the change is applied", || async {
        let r = get(&gw.web("/crm/health")).await;
        (r.header("x-traefik-backend") == Some("cluster-a2")).then_some(())
    })
    .await;
    // A file that is not YAML any more is refused with file and line; the previous table
    // keeps serving.
    let edited = text.replace("X-Traefik-Backend: \"cluster-a\"", "X-Traefik-Backend: \"cluster-a2\"");
    fs::write(&route, format!("{edited}\n  bad: [\n")).unwrap();
    assert!(gw.wait_logged("configuration refused").await, "the broken change was not reported");
    assert!(gw.wait_logged("crm-api.yaml:").await, "the error names the file");
    let r = get(&gw.web("/crm/health")).await;
    assert_eq!((r.status, r.header("x-traefik-backend")), (200, Some("cluster-a2")));
    let metrics = get(&admin("/metrics")).await.body;
    assert!(metrics.contains("atrium_route_table_swap_failures_total 1"), "{metrics}");
    // An invalid object is left out, and only it: the route is not served, the rest is.
    fs::write(&route, edited.replace("kind: Rule", "kind: Rules")).unwrap();
    assert!(gw.wait_logged("(left out)").await, "the left-out object was not reported");
    common::eventually(Duration::from_secs(10), "the invalid route is left out", || async {
        (get(&gw.web("/crm/health")).await.status == 404).then_some(())
    })
    .await;
    let metrics = get(&admin("/metrics")).await.body;
    assert!(metrics.contains("atrium_config_objects_left_out 1"), "{metrics}");
    assert!(metrics.contains("atrium_route_table_swap_failures_total 1"), "not a refusal: {metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sni_picks_the_secret_and_http2_is_negotiated() {
    let be = backend::start("crm", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let m = seed_child(tmp.path(), be.addr);
    let (secret, der) = common::tls_secret("apps", "secure-cert", "secure.test");
    write(&m, "secret.yaml", &secret);
    write(
        &m,
        "secure.yaml",
        "apiVersion: traefik.io/v1alpha1\nkind: IngressRoute\nmetadata:\n  name: secure\n  namespace: apps\nspec:\n  entryPoints: [websecure]\n  routes:\n    - match: Host(`secure.test`)\n      services: [{name: crm-service, port: 80}]\n  tls:\n    secretName: secure-cert\n",
    );
    let gw = GatewayProc::start(Some(&values()), &m, &[]);
    let ws = gw.entry_points["websecure"];
    let (alpn, leaf, r) = client::tls_get(ws, "secure.test", "/hello").await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(leaf, der, "SNI secure.test gets the Secret's certificate");
    assert_eq!(r.status, 200);
    assert_eq!(r.version, hyper::Version::HTTP_2);
    assert_eq!(r.body, "path=/hello");
    assert_eq!(r.header("x-seen-x-forwarded-proto"), Some("https"));
    let (_, other_leaf, r) = client::tls_get(ws, "other.test", "/hello").await;
    assert_ne!(other_leaf, der, "other names get the default certificate");
    assert_eq!(r.status, 404);
}

/// Reads from `s` into `got` until `want` is in it (10 s at most).
async fn read_until<S: tokio::io::AsyncRead + Unpin>(s: &mut S, got: &mut Vec<u8>, want: &str) {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut chunk = [0u8; 8192];
    while !String::from_utf8_lossy(got).contains(want) {
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no {want} within 10 s; got {}", String::from_utf8_lossy(got)))
            .unwrap();
        assert!(n > 0, "closed before {want}");
        got.extend_from_slice(&chunk[..n]);
    }
}

/// Sends `batch` requests of exactly 1,024 bytes each in one write, then (after an idle
/// pause) one request whose head comes in two writes 100 ms apart, and reads every answer.
/// The fast path gives a connection its read buffer only once bytes are there: a batch
/// that fills the buffer exactly leaves it empty at a request boundary while more bytes
/// wait (in the socket, or already decrypted inside TLS), and those must still be read.
async fn batches_and_pauses<S>(mut s: S, host: &str, batch: usize)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let request = |i: usize| {
        let head = format!("GET /p{i:03} HTTP/1.1\r\nHost: {host}\r\nX-Pad: ");
        let pad = 1024 - head.len() - 4;
        format!("{head}{}\r\n\r\n", "x".repeat(pad))
    };
    assert_eq!(request(7).len(), 1024);
    let all: String = (0..batch).map(request).collect();
    s.write_all(all.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    read_until(&mut s, &mut got, &format!("path=/p{:03}", batch - 1)).await;
    let text = String::from_utf8_lossy(&got).to_string();
    for i in 0..batch {
        assert!(text.contains(&format!("path=/p{i:03}")), "answer {i} of the batch");
    }
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), batch, "{text}");
    // Idle, then a head that arrives in two parts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let last = request(batch);
    s.write_all(&last.as_bytes()[..100]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(&last.as_bytes()[100..]).await.unwrap();
    read_until(&mut s, &mut Vec::new(), &format!("path=/p{batch:03}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_read_what_arrives_over_tcp_and_tls_whatever_the_boundaries() {
    let secure = ingress_route("secure", "websecure", "Host(`secure.test`)", "{name: crm-service, port: 80}", true);
    let plain = ingress_route("plain", "web", "Host(`plain.test`)", "{name: crm-service, port: 80}", false);
    let setup = seeded(&[("secure.yaml", &secure), ("plain.yaml", &plain)], &["--workers", "1"]).await;
    let gw = &setup.gw;
    let tcp = tokio::net::TcpStream::connect(gw.entry_points["web"]).await.unwrap();
    batches_and_pauses(tcp, "plain.test", 16).await;
    let tls = client::tls_connect(gw.entry_points["websecure"], "secure.test", &[b"http/1.1"]).await;
    batches_and_pauses(tls, "secure.test", 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_http1_keeps_the_connection_across_bodiless_and_body_requests() {
    use http_body_util::BodyExt;
    let secure = ingress_route("secure", "websecure", "Host(`secure.test`)", "{name: crm-service, port: 80}", true);
    let setup = seeded(&[("secure.yaml", &secure)], &[]).await;
    let gw = &setup.gw;
    // HTTP/1.1 only: the fast path serves the GETs, hyper the POST (it has a body), all on
    // one TLS connection.
    let tls = client::tls_connect(gw.entry_points["websecure"], "secure.test", &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut s, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.unwrap();
    let conn = tokio::spawn(conn);
    let requests = [("GET", "/first", ""), ("POST", "/form", "a=1&b=2"), ("GET", "/last", "")];
    for (method, path, body) in requests {
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "secure.test")
            .body(client::body(body.to_string()))
            .unwrap();
        // Ready means the connection is still open and idle (a closed one is an error here).
        s.ready().await.unwrap_or_else(|e| panic!("before {method} {path}: {e}"));
        let resp = tokio::time::timeout(Duration::from_secs(10), s.send_request(req)).await.unwrap().unwrap();
        assert_eq!(resp.status(), 200, "{method} {path}");
        assert_eq!(resp.headers()["x-seen-x-forwarded-proto"], "https", "{method} {path}");
        assert!(resp.headers().get(hyper::header::CONNECTION).is_none(), "{method} {path}: kept alive");
        let text = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(text, format!("path={path}"), "{method} {path}");
    }
    assert!(!conn.is_finished(), "the three requests shared one connection, still open");
    conn.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_dir_supplies_the_default_certificate() {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let be = backend::start("crm", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let m = seed_child(tmp.path(), be.addr);
    let pki = tmp.path().join("pki");
    let pki_arg = pki.to_str().unwrap();

    // Without the gateway's certificate in the directory, start-up fails and says how to fix it.
    let v = values();
    let o = common::atrium([
        "gateway",
        "--values",
        v.to_str().unwrap(),
        "--manifests",
        m.to_str().unwrap(),
        "--tls-dir",
        pki_arg,
    ]);
    assert!(!o.status.success());
    let err = common::stderr(&o);
    assert!(err.contains("gateway.pem") && err.contains("atrium certs issue"), "{err}");

    for args in [vec!["certs", "init", "--dir", pki_arg], vec!["certs", "issue", "--dir", pki_arg, "--name", "gateway"]]
    {
        let o = common::atrium(&args);
        assert!(o.status.success(), "{args:?}: {}", common::stderr(&o));
    }
    let issued = CertificateDer::from_pem_file(pki.join("gateway.pem")).unwrap();
    let gw = GatewayProc::start(Some(&values()), &m, &["--tls-dir", pki_arg]);
    let (_, leaf, r) = client::tls_get(gw.entry_points["websecure"], "anything.test", "/crm/health").await;
    assert_eq!(leaf, issued.as_ref(), "names without a secretName get the TLS directory's certificate");
    assert_eq!(r.status, 404, "the handshake completed and the request was answered (the seed routes `web` only)");

    // The certificate is renewed on disk: new connections get the new one, no restart.
    let o = common::atrium(["certs", "issue", "--dir", pki_arg, "--name", "gateway", "--san", "renewed.test"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let renewed = CertificateDer::from_pem_file(pki.join("gateway.pem")).unwrap();
    assert_ne!(renewed, issued);
    let ws = gw.entry_points["websecure"];
    common::eventually(Duration::from_secs(10), "the renewed certificate is served", || async {
        let (_, leaf, _) = client::tls_get(ws, "anything.test", "/").await;
        (leaf == renewed.as_ref()).then_some(())
    })
    .await;
    assert!(gw.wait_logged("TLS material reloaded").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_websocket_upgrade_and_100mb_bodies_pass_through() {
    let be = backend::start("crm", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let m = seed_child(tmp.path(), be.addr);
    let gw = GatewayProc::start(Some(&values()), &m, &[]);
    let web = gw.entry_points["web"];

    // HTTP/2 with prior knowledge on the plain entrypoint.
    let h2: hyper_util::client::legacy::Client<_, client::Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).http2_only(true).build_http();
    let r = client::send(&h2, hyper::Request::get(gw.web("/crm/x")).body(client::body("")).unwrap()).await;
    assert_eq!((r.status, r.version, r.body.as_str()), (200, hyper::Version::HTTP_2, "path=/x"));

    // An upgraded connection echoes through the gateway.
    exchanges::assert_upgrade_echo(tokio::net::TcpStream::connect(web).await.unwrap(), "a", "/crm/ws").await;

    // 100 MB up and 100 MB down, streamed.
    let mut s = exchanges::h1(tokio::net::TcpStream::connect(web).await.unwrap()).await;
    exchanges::assert_100mb_both_ways(&mut s, "a", "/crm").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_server_stream_keep_trailers() {
    let grpc = backend::grpc("127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    fs::write(
        tmp.path().join("grpc.yaml"),
        "apiVersion: traefik.io/v1alpha1\nkind: IngressRoute\nmetadata: {name: grpc, namespace: ns}\nspec:\n  entryPoints: [web]\n  routes:\n    - match: PathPrefix(`/echo.Echo/`)\n      services: [{name: grpc, port: 80, scheme: h2c}]\n".to_string()
            + &common::service_manifests("ns", "grpc", &[grpc]),
    )
    .unwrap();
    let gw = GatewayProc::start(None, tmp.path(), &[]);
    let web = gw.entry_points["web"];
    let mut s = exchanges::h2(tokio::net::TcpStream::connect(web).await.unwrap()).await;
    exchanges::assert_grpc(&mut s, &format!("http://{web}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_flight_and_access_log_is_written() {
    let be = backend::start("crm", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let m = seed_child(tmp.path(), be.addr);
    let state = tmp.path().join("state");
    let mut gw =
        GatewayProc::start(Some(&values()), &m, &["--access-log", "json", "--state-dir", state.to_str().unwrap()]);
    assert!(state.join("default-cert.pem").is_file(), "the default certificate is kept in the state directory");
    let r = get(&gw.web("/crm/health")).await;
    assert_eq!(r.status, 200);
    // The access log line of that request.
    let line = gw.stdout_line("/crm/health").await;
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["router"], "apps/crm-api/0");
    assert_eq!(entry["entryPoint"], "web");

    // A slow request is in flight when SIGTERM arrives: it completes, then the process exits.
    let url = gw.web("/crm/slow");
    let slow = tokio::spawn(async move { get(&url).await });
    common::eventually(Duration::from_secs(10), "the slow request reaches the backend", || async {
        be.seen.lock().unwrap().iter().any(|s| s.contains("/slow")).then_some(())
    })
    .await;
    gw.terminate();
    let r = slow.await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "slow"), "the request in flight was drained, not cut");
    let status = tokio::task::spawn_blocking(move || {
        let s = gw.wait_exit(Duration::from_secs(15));
        (s, gw)
    })
    .await
    .unwrap();
    assert!(status.0.is_some_and(|s| s.success()), "the gateway exits cleanly after draining: {:?}", status.0);
}

/// A keep-alive connection idle on the HTTP/1.1 fast path is closed as soon as the gateway
/// stops: shutdown does not wait out the drain timeout (30 s) for a client that only holds
/// its connection open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_keep_alive_connections_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let be = backend::start("crm", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let m = seed_child(tmp.path(), be.addr);
    let mut gw = GatewayProc::start(Some(&values()), &m, &[]);
    let mut conn = tokio::net::TcpStream::connect(gw.web_addr()).await.unwrap();
    conn.write_all(b"GET /crm/health HTTP/1.1\r\nHost: crm.test\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        while !got.ends_with(b"health") {
            let n = conn.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before the answer: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("an answer within 10 s");
    assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
    // The connection is idle, kept alive; the gateway is told to stop.
    gw.terminate();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the idle connection was still open 10 s after SIGTERM");
    assert!(rest.is_empty(), "nothing more was sent on it: {}", String::from_utf8_lossy(&rest));
    let status = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(10))).await.unwrap();
    assert!(status.is_some_and(|s| s.success()), "the gateway exits cleanly, before the drain timeout: {status:?}");
}

/// A request whose head was still arriving when the gateway was told to stop, and which
/// has a body (so hyper serves it, not the fast path), is answered, with
/// `Connection: close`, before the connection closes: shutdown loses no request that had
/// begun.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_begun_before_sigterm_is_answered_even_when_hyper_takes_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let be = backend::start("crm", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let m = seed_child(tmp.path(), be.addr);
    let mut gw = GatewayProc::start(Some(&values()), &m, &[]);
    let mut conn = tokio::net::TcpStream::connect(gw.web_addr()).await.unwrap();
    conn.write_all(b"POST /crm/items HTTP/1.1\r\nHost: crm.test\r\nContent-Length: 5\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    conn.write_all(b"\r\nhello").await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut got))
        .await
        .expect("the connection closes after the answer")
        .unwrap();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200"), "the request begun before SIGTERM is answered: {got:?}");
    assert!(got.contains("path=/items"), "{got}");
    assert!(got.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{got}");
    let status = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(10))).await.unwrap();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn common_log_format_lines_read_like_traefiks() {
    let be = backend::start("crm", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let m = seed_child(tmp.path(), be.addr);
    let gw = GatewayProc::start(Some(&values()), &m, &["--access-log", "clf"]);
    let req = hyper::Request::get(gw.web("/crm/health?x=1"))
        .header("user-agent", "curl/8.5")
        .header("referer", "https://portal.test/")
        .body(client::body(""))
        .unwrap();
    assert_eq!(client::send(&client::http1(), req).await.status, 200);
    let line = gw.stdout_line("/crm/health").await;
    // 127.0.0.1 - - [26/Nov/2026:06:28:47 +0000] "GET /crm/health?x=1 HTTP/1.1" 200 6
    // "https://portal.test/" "curl/8.5" 1 "apps/crm-api/0" "apps/crm-service:80" 1ms
    let re = regex::Regex::new(
        r#"^127\.0\.0\.1 - - \[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} \+0000\] "GET /crm/health\?x=1 HTTP/1\.1" 200 \S+ "https://portal\.test/" "curl/8\.5" \d+ "apps/crm-api/0" "[^"]+" \d+ms$"#,
    )
    .unwrap();
    assert!(re.is_match(&line), "{line}");
    let year: i32 = line.split('/').nth(2).unwrap()[..4].parse().unwrap();
    assert!(year >= 2025, "a real date, not epoch seconds: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multicluster_service_on_a_plain_gateway_is_explained_and_answers_503() {
    let remote = ingress_route(
        "remote",
        "web",
        "PathPrefix(`/remote`)",
        "{name: crm@multicluster, kind: TraefikService}",
        false,
    );
    let setup = seeded(&[("parent-route.yaml", &remote)], &[]).await;
    let gw = &setup.gw;
    // The rest of the configuration is served as usual (and so it is loaded).
    assert_eq!(get(&gw.web("/crm/health")).await.status, 200);
    let r = get(&gw.web("/remote/x")).await;
    assert_eq!(r.status, 503);
    assert!(!r.body.contains("no configuration"), "{}", r.body);
    // The log says why, at load time (read by another thread: wait for it, 5 s at most).
    let needle = "only a parent's data plane reaches children";
    let line =
        common::eventually(Duration::from_secs(5), "a log line about @multicluster on a plain gateway", || async {
            gw.log.lock().unwrap().iter().find(|l| l.contains(needle)).cloned()
        })
        .await;
    assert!(line.contains("crm"), "and names the service: {line}");
}

/// How long until the server closes `s` (it must, within 10 s).
async fn time_to_close(s: &mut tokio::net::TcpStream) -> Duration {
    use tokio::io::AsyncReadExt;
    let start = Instant::now();
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the connection was not closed within 10 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_and_slow_heads_have_their_own_timeouts() {
    use tokio::io::AsyncWriteExt;
    let setup = seeded(&[], &["--header-read-timeout", "1", "--idle-timeout", "3"]).await;
    let gw = &setup.gw;
    let web = gw.entry_points["web"];
    let get = b"GET /crm/x HTTP/1.1\r\nHost: a\r\n\r\n";

    // Idle longer than the header-read timeout but within the idle timeout: still open.
    let mut s = tokio::net::TcpStream::connect(web).await.unwrap();
    s.write_all(get).await.unwrap();
    assert!(common::client::read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(1600)).await;
    s.write_all(get).await.unwrap();
    assert!(common::client::read_response(&mut s).await.starts_with("HTTP/1.1 200"), "kept through 1.6 s of idle time");
    // A head that has started must be complete within the header-read timeout.
    s.write_all(b"GET /crm/x HTTP/1.1\r\nHo").await.unwrap();
    let closed = time_to_close(&mut s).await;
    assert!(closed >= Duration::from_millis(800) && closed < Duration::from_millis(2800), "{closed:?}");

    // Idle past the idle timeout: closed.
    let mut s = tokio::net::TcpStream::connect(web).await.unwrap();
    s.write_all(get).await.unwrap();
    assert!(common::client::read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    let closed = time_to_close(&mut s).await;
    assert!(closed >= Duration::from_millis(2500) && closed < Duration::from_secs(6), "{closed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_close_but_not_while_a_request_is_in_flight() {
    let setup = seeded(&[], &["--idle-timeout", "1"]).await;
    let gw = &setup.gw;
    let web = gw.entry_points["web"];
    let h2c = || async {
        let tcp = tokio::net::TcpStream::connect(web).await.unwrap();
        let io = hyper_util::rt::TokioIo::new(tcp);
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap()
    };
    let get = |path: &str| hyper::Request::get(format!("http://a{path}")).body(client::body("")).unwrap();

    // A request slower than the idle timeout is answered: the connection is busy, not idle.
    let (mut s, conn) = h2c().await;
    let conn = tokio::spawn(conn);
    let resp = tokio::time::timeout(Duration::from_secs(10), s.send_request(get("/crm/slow"))).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    // So is a response whose body comes long after its head: it is in flight until it ends.
    let resp =
        tokio::time::timeout(Duration::from_secs(10), s.send_request(get("/crm/trickle"))).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.expect("the whole body").to_bytes();
    assert_eq!(body, "trickled");
    // Then, with nothing in flight, the server closes it within about a second.
    let start = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(8), conn).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection was not closed");
    assert!(start.elapsed() >= Duration::from_millis(500), "{:?}", start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_http2_is_not_offered_so_browsers_use_http1() {
    let setup = seeded(&[], &[]).await;
    let tcp = tokio::net::TcpStream::connect(setup.gw.entry_points["web"]).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(tcp);
    let (mut s, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    // A first request, so that the server's SETTINGS have arrived.
    let get = hyper::Request::get("http://a/crm/x").body(client::body("")).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), s.send_request(get)).await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    // Extended CONNECT (RFC 8441) needs SETTINGS_ENABLE_CONNECT_PROTOCOL from the server.
    let mut connect =
        hyper::Request::builder().method("CONNECT").uri("http://a/crm/ws").body(client::body("")).unwrap();
    connect.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
    let sent = tokio::time::timeout(Duration::from_secs(10), s.send_request(connect)).await.unwrap();
    assert!(sent.is_err(), "the gateway does not tunnel extended CONNECT, so it must not offer it: {sent:?}");
}
