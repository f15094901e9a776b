//! Middlewares and services through a running gateway: rate limits, allow lists,
//! redirects, CORS, weighted round-robin, failover and active health checks.

mod common;

use std::fs;
use std::time::Duration;

use common::backend;
use common::client::get;
use common::gateway::GatewayProc;

fn endpoints(name: &str, addrs: &[std::net::SocketAddr]) -> String {
    common::service_manifests("ns", name, addrs)
}

fn route(name: &str, rule: &str, middlewares: &[&str], service: &str) -> String {
    let mws: Vec<String> = middlewares.iter().map(|m| format!("{{name: {m}}}")).collect();
    format!(
        "---\napiVersion: traefik.io/v1alpha1\nkind: IngressRoute\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  entryPoints: [web]\n  routes:\n    - match: {rule}\n      middlewares: [{}]\n      services: [{service}]\n",
        mws.join(", ")
    )
}

/// A gateway serving `yaml` (written to `tmp` as one manifest file) with `args`.
fn start(tmp: &tempfile::TempDir, yaml: &str, args: &[&str]) -> GatewayProc {
    fs::write(tmp.path().join("all.yaml"), yaml).unwrap();
    GatewayProc::start(None, tmp.path(), args)
}

fn middleware(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: traefik.io/v1alpha1\nkind: Middleware\nmetadata: {{name: {name}, namespace: ns}}\nspec: {spec}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_redirect_and_cors_middlewares() {
    let be = backend::start("a", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let mut y = endpoints("svc", &[be.addr]);
    y += &route("limited", "PathPrefix(`/limited`)", &["one-per-minute"], "{name: svc, port: 80}");
    y += &middleware("one-per-minute", "{rateLimit: {average: 1, period: 1m, burst: 2}}");
    y += &route("private", "PathPrefix(`/private`)", &["only-10"], "{name: svc, port: 80}");
    y += &middleware("only-10", "{ipAllowList: {sourceRange: [10.0.0.0/8]}}");
    y += &route("local", "PathPrefix(`/local`)", &["only-loopback"], "{name: svc, port: 80}");
    y += &middleware("only-loopback", "{ipAllowList: {sourceRange: [127.0.0.0/8]}}");
    y += &route("old", "PathPrefix(`/old`)", &["to-new"], "{name: svc, port: 80}");
    y += &middleware(
        "to-new",
        "{redirectRegex: {regex: \"^http://([^/]+)/old/(.*)\", replacement: \"http://${1}/new/${2}\", permanent: true}}",
    );
    y += &route("secure", "PathPrefix(`/secure`)", &["to-https"], "{name: svc, port: 80}");
    y += &middleware("to-https", "{redirectScheme: {scheme: https, port: \"8443\"}}");
    y += &route("cors", "PathPrefix(`/cors`)", &["cors"], "{name: svc, port: 80}");
    y += &middleware(
        "cors",
        "{headers: {accessControlAllowMethods: [GET, PUT], accessControlAllowOriginList: [\"https://app.test\"], accessControlMaxAge: 60}}",
    );
    let gw = start(&tmp, &y, &[]);

    assert_eq!(get(&gw.web("/limited")).await.status, 200);
    assert_eq!(get(&gw.web("/limited")).await.status, 200);
    let r = get(&gw.web("/limited")).await;
    assert_eq!(r.status, 429, "the burst of 2 is used up");
    assert!(r.header("retry-after").is_some_and(|v| v.parse::<u64>().unwrap() >= 1));

    assert_eq!(get(&gw.web("/private")).await.status, 403);
    assert_eq!(get(&gw.web("/local")).await.status, 200);

    let r = get(&gw.web("/old/a/b?q=1")).await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some(format!("http://{}/new/a/b?q=1", gw.entry_points["web"]).as_str()));
    let r = get(&gw.web("/secure/x")).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("https://127.0.0.1:8443/secure/x"));

    let hits = be.hits.load(std::sync::atomic::Ordering::Relaxed);
    let req = hyper::Request::builder()
        .method("OPTIONS")
        .uri(gw.web("/cors"))
        .header("origin", "https://app.test")
        .header("access-control-request-method", "PUT")
        .body(common::client::body(""))
        .unwrap();
    let r = common::client::send(&common::client::http1(), req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-methods"), Some("GET,PUT"));
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.test"));
    assert_eq!(r.header("access-control-max-age"), Some("60"));
    assert_eq!(be.hits.load(std::sync::atomic::Ordering::Relaxed), hits, "the preflight never reached the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_failover_and_health_checks() {
    let a = backend::start("a", "127.0.0.1").await;
    let b = backend::start("b", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let mut y = endpoints("sa", &[a.addr]) + &endpoints("sb", &[b.addr]);
    // Weighted 1:3 across two services.
    y += &route(
        "split",
        "PathPrefix(`/split`)",
        &[],
        "{name: sa, port: 80, weight: 1}, {name: sb, port: 80, weight: 3}",
    );
    // A health-checked load balancer over both backends.
    y += &route(
        "checked",
        "PathPrefix(`/checked`)",
        &[],
        "{name: both, port: 80, healthCheck: {path: /health, interval: 100ms, timeout: 500ms}}",
    );
    y += &endpoints("both", &[a.addr, b.addr]);
    // Failover from a dead service to a live one.
    y += &route("fo", "PathPrefix(`/fo`)", &[], "{name: fo, kind: TraefikService}");
    y += "---\napiVersion: traefik.io/v1alpha1\nkind: TraefikService\nmetadata: {name: fo, namespace: ns}\nspec:\n  failover:\n    service: {name: dead, port: 80, healthCheck: {path: /health, interval: 100ms, timeout: 200ms}}\n    fallback: {name: sb, port: 80}\n";
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    y += &endpoints("dead", &[dead]);
    let gw = start(&tmp, &y, &[]);

    let mut to_b = 0;
    for _ in 0..400 {
        if get(&gw.web("/split")).await.header("x-backend-name") == Some("b") {
            to_b += 1;
        }
    }
    assert_eq!(to_b, 300, "smooth WRR gives exactly 3 of every 4 to b");

    // Health check: b starts failing; within a few check intervals all traffic goes to a.
    b.healthy.store(false, std::sync::atomic::Ordering::Relaxed);
    common::eventually(Duration::from_secs(10), "b taken out of rotation", || async {
        futures_names(&gw, "/checked", 6).await.iter().all(|n| n == "a").then_some(())
    })
    .await;
    assert!(gw.wait_logged("health check failed: server out of rotation").await);
    b.healthy.store(true, std::sync::atomic::Ordering::Relaxed);
    common::eventually(Duration::from_secs(10), "b back in rotation", || async {
        futures_names(&gw, "/checked", 6).await.iter().any(|n| n == "b").then_some(())
    })
    .await;

    // Failover: once the dead service's check fails, the fallback answers.
    let r = common::eventually(Duration::from_secs(10), "failover", || async {
        let r = get(&gw.web("/fo")).await;
        (r.status == 200).then_some(r)
    })
    .await;
    assert_eq!(r.header("x-backend-name"), Some("b"));
}

async fn futures_names(gw: &GatewayProc, path: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get(&gw.web(path)).await.header("x-backend-name").unwrap_or("").to_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_from_a_secret_and_gzip_compression() {
    use base64::Engine;
    let be = backend::start("a", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut y = endpoints("svc", &[be.addr]);
    y += &route("auth", "PathPrefix(`/auth`)", &["users"], "{name: svc, port: 80}");
    y += &middleware("users", "{basicAuth: {secret: htpasswd, headerField: X-Test}}");
    // `openssl passwd -apr1 -salt abcdefgh password`
    y += &format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: htpasswd, namespace: ns}}\ndata:\n  users: {}\n",
        b64("alice:$apr1$abcdefgh$FBwExRW4dCc8aL.OvjpIE1\n")
    );
    y += &route("gz", "PathPrefix(`/gz`)", &["gzip", "strip-gz"], "{name: svc, port: 80}");
    y += &middleware("gzip", "{compress: {}}");
    y += &middleware("strip-gz", "{stripPrefix: {prefixes: [/gz]}}");
    let gw = start(&tmp, &y, &[]);

    let r = get(&gw.web("/auth")).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"traefik\""));
    let send = |user: &str, pass: &str| {
        let v = format!("Basic {}", b64(&format!("{user}:{pass}")));
        hyper::Request::get(gw.web("/auth")).header("authorization", v).body(common::client::body("")).unwrap()
    };
    let r = common::client::send(&common::client::http1(), send("alice", "password")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-seen-x-test"), Some("alice"), "headerField carries the user to the backend");
    assert_eq!(common::client::send(&common::client::http1(), send("alice", "nope")).await.status, 401);
    // Refused before its body was read: the connection closes after the answer, and says so.
    let post = hyper::Request::post(gw.web("/auth")).body(common::client::body(vec![b'x'; 300_000])).unwrap();
    let r = common::client::send(&common::client::http1(), post).await;
    assert_eq!((r.status, r.header("connection")), (401, Some("close")));

    let req = hyper::Request::get(gw.web("/gz/bytes/50000"))
        .header("accept-encoding", "gzip")
        .body(common::client::body(""))
        .unwrap();
    let resp = common::client::http1().request(req).await.unwrap();
    assert_eq!(resp.headers().get("content-encoding").unwrap(), "gzip");
    use http_body_util::BodyExt;
    let zipped = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(zipped.len() < 5000, "50 kB of one byte compresses well: {}", zipped.len());
    let mut d = flate2_read(&zipped);
    assert_eq!(d.len(), 50000);
    assert!(d.drain(..).all(|b| b == b'x'));
    let plain = get(&gw.web("/gz/bytes/50000")).await;
    assert!(plain.header("content-encoding").is_none(), "no Accept-Encoding, no compression");
    assert_eq!(plain.body.len(), 50000);
}

fn flate2_read(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    use std::io::Read;
    flate2::read::GzDecoder::new(b).read_to_end(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_replays_bodies_on_network_errors_and_chosen_statuses() {
    use std::sync::atomic::Ordering::Relaxed;
    let a = backend::start("a", "127.0.0.1").await;
    let b = backend::start("b", "127.0.0.1").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // Round-robin over a closed port and a live backend: every other try fails to connect.
    let mut y = endpoints("half", &[dead, a.addr]) + &endpoints("ab", &[a.addr, b.addr]);
    y += &route("count", "PathPrefix(`/count`)", &["retry3"], "{name: half, port: 80}");
    y += &middleware("retry3", "{retry: {attempts: 3, initialInterval: 10ms}}");
    y += &route("small", "PathPrefix(`/small`)", &["retry-small"], "{name: half, port: 80}");
    y += &middleware("retry-small", "{retry: {attempts: 3, maxRequestBodyBytes: 1000}}");
    y += &route("health", "PathPrefix(`/health`)", &["retry-5xx"], "{name: ab, port: 80}");
    y += &middleware("retry-5xx", "{retry: {attempts: 2, status: [\"500-599\"]}}");
    let gw = start(&tmp, &y, &[]);
    let client = common::client::http1();
    let req = |method: &str, path: &str, body: String| {
        hyper::Request::builder().method(method).uri(gw.web(path)).body(common::client::body(body)).unwrap()
    };

    // Idempotent requests with a body are replayed whole on the live backend.
    for i in 0..10 {
        let r = common::client::send(&client, req("PUT", "/count", "hello".into())).await;
        assert_eq!((r.status, r.body.as_str()), (200, "5"), "PUT {i} was retried with its body");
    }
    // POST is not idempotent: it is sent once, so the closed port shows through as 502.
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(common::client::send(&client, req("POST", "/count", "hello".into())).await.status);
    }
    assert!(codes.contains(&502) && codes.contains(&200), "POST is not retried: {codes:?}");
    // A body over the retry's limit is refused before anything is sent.
    let r = common::client::send(&client, req("PUT", "/small", "x".repeat(2000))).await;
    assert_eq!(r.status, 413);

    // b answers 500 on /health: that answer is thrown away and a answers instead.
    b.healthy.store(false, Relaxed);
    let before = b.hits.load(Relaxed);
    for i in 0..10 {
        let r = get(&gw.web("/health")).await;
        assert_eq!((r.status, r.header("x-backend-name")), (200, Some("a")), "request {i}");
    }
    assert!(b.hits.load(Relaxed) > before, "b was tried and its 500 retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffering_reads_whole_bodies_and_spills_big_ones_to_disk() {
    use http_body_util::BodyExt;
    let be = backend::start("a", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let mut y = endpoints("svc", &[be.addr]);
    y += &route("buffered", "PathPrefix(`/count`) || PathPrefix(`/bytes`)", &["spool"], "{name: svc, port: 80}");
    y += &middleware(
        "spool",
        "{buffering: {maxRequestBodyBytes: 3000000, memRequestBodyBytes: 1024, memResponseBodyBytes: 1024}}",
    );
    let gw = start(&tmp, &y, &[]);
    let client = common::client::http1();

    // 2 MB sent chunked (no length): read whole (mostly on disk) and forwarded intact.
    let chunked = || {
        common::backend::Repeat { remaining: 2_000_000, chunk: bytes::Bytes::from(vec![b'x'; 64 * 1024]) }
            .map_err(|e| match e {})
            .boxed()
    };
    let req = hyper::Request::put(gw.web("/count")).body(chunked()).unwrap();
    let r = common::client::send(&client, req).await;
    assert_eq!((r.status, r.body.as_str()), (200, "2000000"));
    assert_eq!(r.header("connection"), None, "a body read to its end leaves the connection open");
    // Past maxRequestBodyBytes: 413, even though the client never said how long it was.
    let req = hyper::Request::put(gw.web("/count"))
        .body(
            common::backend::Repeat { remaining: 3_500_000, chunk: bytes::Bytes::from(vec![b'x'; 64 * 1024]) }
                .map_err(|e| match e {})
                .boxed(),
        )
        .unwrap();
    let r = common::client::send(&client, req).await;
    assert_eq!(r.status, 413);
    // The rest of that body was never read: the connection is closed, not reused.
    assert_eq!(r.header("connection"), Some("close"));

    // A streamed 300 kB response comes back whole, with its length.
    let resp = client.request(hyper::Request::get(gw.web("/bytes/300000")).body(common::client::body("")).unwrap());
    let resp = tokio::time::timeout(Duration::from_secs(20), resp).await.unwrap().unwrap();
    assert_eq!(resp.headers().get("content-length").map(|v| v.to_str().unwrap()), Some("300000"));
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 300_000);
    assert!(body.iter().all(|b| *b == b'x'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_a_keep_alive_connection_the_backend_is_closing_is_sent_again_if_idempotent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A backend that answers the first request of each connection and closes the
    // connection when the second arrives, without answering: what a server whose idle
    // timeout fires as the request is written looks like from the proxy.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut served = 0;
                while let Ok(n) = s.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        served += 1;
                        if served > 1 {
                            return; // closes without an answer
                        }
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                    }
                }
            });
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let y = endpoints("svc", &[addr]) + &route("all", "PathPrefix(`/`)", &[], "{name: svc, port: 80}");
    let gw = start(&tmp, &y, &["--workers", "1"]);
    let client = common::client::http1();
    let send = |method: &str| {
        hyper::Request::builder().method(method).uri(gw.web("/x")).body(common::client::body("")).unwrap()
    };
    for i in 0..4 {
        // Each request finds the previous one's connection pooled, and the backend closes it.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let r = common::client::send(&client, send("GET")).await;
        assert_eq!((r.status, r.body.as_str()), (200, "ok"), "GET {i} was sent again on a fresh connection");
    }
    // POST is not idempotent: it may have been acted on, so its failure shows.
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(common::client::send(&client, send("POST")).await.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_set_before_middlewares_which_may_override_them() {
    let be = backend::start("a", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let mut y = endpoints("svc", &[be.addr]);
    // Behind a TLS-terminating load balancer: the headers middleware says the scheme.
    y += &route("behind-lb", "PathPrefix(`/lb`)", &["says-https"], "{name: svc, port: 80}");
    y += &middleware(
        "says-https",
        "{headers: {customRequestHeaders: {X-Forwarded-Proto: https, X-Forwarded-For: 203.0.113.7}}}",
    );
    y += &route("no-xff", "PathPrefix(`/no-xff`)", &["no-xff"], "{name: svc, port: 80}");
    y += &middleware("no-xff", "{headers: {customRequestHeaders: {X-Forwarded-For: \"\"}}}");
    // Routing sees the entrypoint's values, not the client's.
    y += &route(
        "by-proto",
        "Header(`X-Forwarded-Proto`, `http`) && PathPrefix(`/by-proto`)",
        &[],
        "{name: svc, port: 80}",
    );
    let gw = start(&tmp, &y, &[]);

    let r = get(&gw.web("/lb")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-seen-x-forwarded-proto"), Some("https"), "the middleware's value wins");
    assert_eq!(r.header("x-seen-x-forwarded-for"), Some("203.0.113.7, 127.0.0.1"), "the client IP is appended");
    assert_eq!(r.header("x-seen-x-real-ip"), Some("127.0.0.1"));

    let r = get(&gw.web("/no-xff")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-seen-x-forwarded-for"), None);
    assert_eq!(r.header("x-seen-x-forwarded-proto"), Some("http"));

    // A client's own forwarding headers are replaced, and naming them in `Connection` does
    // not remove the proxy's.
    let req = hyper::Request::builder()
        .uri(gw.web("/by-proto"))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-for", "6.6.6.6")
        .header("connection", "keep-alive, X-Forwarded-For, X-Real-Ip")
        .body(common::client::body(""))
        .unwrap();
    let r = common::client::send(&common::client::http1(), req).await;
    assert_eq!(r.status, 200, "the rule matched the entrypoint's X-Forwarded-Proto: http");
    assert_eq!(r.header("x-seen-x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(r.header("x-seen-x-real-ip"), Some("127.0.0.1"));
    assert_eq!(r.header("x-seen-x-forwarded-proto"), Some("http"));
}

/// A backend on raw TCP: records each request head it gets and answers every one with
/// `response`.
async fn recording_backend(
    response: &'static [u8],
) -> (std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = s.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.lock().unwrap().push(String::from_utf8_lossy(&buf[..end]).into_owned());
                        buf.drain(..end + 4);
                        if s.write_all(response).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, heads)
}

/// A message's head lines with names in lower case, sorted, without `Date` (its value is
/// the clock's).
fn normalized(message: &str) -> Vec<String> {
    let head = message.split("\r\n\r\n").next().unwrap_or_default();
    let mut lines = head.lines();
    let first = lines.next().unwrap_or_default().to_string();
    let mut rest: Vec<String> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap_or((l, ""));
            format!("{}:{}", n.to_ascii_lowercase(), v.trim())
        })
        .filter(|l| !l.starts_with("date:"))
        .collect();
    rest.sort();
    std::iter::once(first).chain(rest).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_direct_lane_puts_the_same_heads_on_the_wire_as_the_general_one() {
    use tokio::io::AsyncWriteExt;
    let (addr, heads) = recording_backend(
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
          Proxy-Authenticate: Basic\r\nX-Up: yes\r\nContent-Length: 2\r\n\r\nok",
    )
    .await;
    let base = endpoints("svc", &[addr]) + &route("all", "PathPrefix(`/`)", &[], "{name: svc, port: 80}");
    // Same routes; a header matcher elsewhere in the table sends every request the general way.
    let with_matcher = base.clone()
        + &route("by-header", "Header(`X-Never`, `1`) && PathPrefix(`/never`)", &[], "{name: svc, port: 80}");
    let (tmp_direct, tmp_general) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let direct = start(&tmp_direct, &base, &[]);
    let general = start(&tmp_general, &with_matcher, &[]);

    let request = "GET /p?q=1 HTTP/1.1\r\nHost: api.test\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-Ip: 6.6.6.6\r\n\
                   Connection: keep-alive, X-Drop, X-Forwarded-Proto\r\nX-Drop: 1\r\nX-Keep: 2\r\nProxy-Authorization: x\r\n\
                   X-Forwarded-Prefix: /admin\r\nX-Forwarded-Tls-Client-Cert: forged\r\nX_Forwarded_For: 6.6.6.6\r\n\r\n";
    let mut answers = Vec::new();
    for gw in [&direct, &general] {
        let mut s = tokio::net::TcpStream::connect(gw.web_addr()).await.unwrap();
        // Twice on one connection: the second request goes on the pooled upstream connection.
        for _ in 0..2 {
            s.write_all(request.as_bytes()).await.unwrap();
            answers.push(common::client::read_response(&mut s).await);
        }
    }
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 4, "{heads:?}");
    // The lanes are told apart by header name case: bytes keep the client's, maps lower it.
    assert!(heads[0].contains("\r\nX-Keep: 2"), "the direct lane carried the request: {}", heads[0]);
    assert!(heads[2].contains("\r\nx-keep: 2"), "the general lane carried the request: {}", heads[2]);
    let sent = normalized(&heads[0]);
    for h in &heads[1..] {
        assert_eq!(normalized(h), sent);
    }
    for want in [
        "GET /p?q=1 HTTP/1.1",
        "host:api.test",
        "x-keep:2",
        "x-forwarded-for:127.0.0.1",
        "x-real-ip:127.0.0.1",
        "x-forwarded-proto:http",
        "x-forwarded-host:api.test",
        "x-forwarded-port:80",
    ] {
        assert!(sent.iter().any(|l| l == want), "{want} in {sent:?}");
    }
    for gone in [
        "x-drop",
        "connection",
        "proxy-authorization",
        "x-forwarded-prefix",
        "x-forwarded-tls-client-cert",
        "x_forwarded_for",
    ] {
        assert!(!sent.iter().any(|l| l.starts_with(&format!("{gone}:"))), "{gone} in {sent:?}");
    }
    let answered = normalized(&answers[0]);
    for a in &answers[1..] {
        assert_eq!(normalized(a), answered);
    }
    for a in &answers {
        assert!(a.ends_with("\r\n\r\nok") && a.to_ascii_lowercase().contains("\r\ndate: "), "{a}");
    }
    assert_eq!(answered, ["HTTP/1.1 200 OK", "content-length:2", "x-up:yes"], "hop-by-hop headers stay at this hop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_and_custom_header_middlewares_take_the_direct_lane_with_the_general_lanes_result() {
    use tokio::io::AsyncWriteExt;
    let (addr, recorded) =
        recording_backend(b"HTTP/1.1 200 OK\r\nX-Up: yes\r\nX-Strip: 1\r\nX-Set: old\r\nContent-Length: 2\r\n\r\nok")
            .await;
    // The seed's child route: stripPrefix and headers; a second headers middleware shows the
    // answer phase runs in reverse order (its X-Set is overwritten by the first one's).
    let mut base = endpoints("svc", &[addr]);
    base += &route("crm", "PathPrefix(`/crm`)", &["strip", "hdr", "hdr2"], "{name: svc, port: 80}");
    base += &middleware("strip", "{stripPrefix: {prefixes: [/crm]}}");
    base += &middleware(
        "hdr",
        "{headers: {customRequestHeaders: {X-Cluster: a, X-Drop: ''}, \
         customResponseHeaders: {X-Traefik-Backend: cluster-a, X-Strip: '', X-Set: first}}}",
    );
    base += &middleware("hdr2", "{headers: {customResponseHeaders: {X-Set: second}}}");
    // A route of an API with the same middlewares: refusals carry the custom headers too,
    // and the rewrite is refused before the key is looked at.
    base += "---\napiVersion: traefik.io/v1alpha1\nkind: IngressRoute\nmetadata:\n  name: api\n  namespace: ns\n  \
             annotations: {hub.traefik.io/api: bench-api}\nspec:\n  entryPoints: [web]\n  routes:\n    \
             - match: PathPrefix(`/api`)\n      middlewares: [{name: strip-api}, {name: hdr}]\n      \
             services: [{name: svc, port: 80}]\n";
    base +=
        "---\napiVersion: hub.traefik.io/v1alpha1\nkind: API\nmetadata: {name: bench-api, namespace: ns}\nspec: {}\n";
    base += &middleware("strip-api", "{stripPrefix: {prefixes: [/api]}}");
    // A headers middleware that sets a header the proxy manages keeps the general lane.
    base += &route("proto", "PathPrefix(`/proto`)", &["proto"], "{name: svc, port: 80}");
    base += &middleware("proto", "{headers: {customRequestHeaders: {X-Forwarded-Proto: https}}}");
    let with_matcher = base.clone()
        + &route("by-header", "Header(`X-Never`, `1`) && PathPrefix(`/never`)", &[], "{name: svc, port: 80}");
    let (tmp_direct, tmp_general) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let direct = start(&tmp_direct, &base, &[]);
    let general = start(&tmp_general, &with_matcher, &[]);

    let requests = [
        "GET /crm/users?q=1 HTTP/1.1\r\nHost: api.test\r\nX-Drop: 1\r\nX-Cluster: spoofed\r\nX-Keep: 2\r\n\
         X-Forwarded-Prefix: /admin\r\n\r\n",
        // The client's Connection list removes what the middlewares set, on both lanes.
        "GET /crm/users HTTP/1.1\r\nHost: api.test\r\nConnection: keep-alive, X-Cluster\r\nX-Keep: 2\r\n\r\n",
        // A rewrite that climbs out of what was routed is refused on both lanes.
        "GET /crm.. HTTP/1.1\r\nHost: api.test\r\nX-Keep: 2\r\n\r\n",
        "GET /api/x HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer not-a-key\r\nX-Keep: 2\r\n\r\n",
        "GET /api.. HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer not-a-key\r\nX-Keep: 2\r\n\r\n",
    ];
    let mut answers = Vec::new();
    for gw in [&direct, &general] {
        let mut s = tokio::net::TcpStream::connect(gw.web_addr()).await.unwrap();
        for r in requests {
            s.write_all(r.as_bytes()).await.unwrap();
            answers.push(common::client::read_response(&mut s).await);
        }
    }
    let heads = recorded.lock().unwrap().clone();
    assert_eq!(heads.len(), 4, "the refused rewrites reach no server: {heads:?}");
    // The lanes are told apart by header name case: bytes keep the client's, maps lower it.
    assert!(heads[0].contains("\r\nX-Keep: 2"), "the direct lane carried the request: {}", heads[0]);
    assert!(heads[2].contains("\r\nx-keep: 2"), "the general lane carried the request: {}", heads[2]);
    assert_eq!(normalized(&heads[0]), normalized(&heads[2]));
    assert_eq!(normalized(&heads[1]), normalized(&heads[3]));
    let first = normalized(&heads[0]);
    for want in ["GET /users?q=1 HTTP/1.1", "x-forwarded-prefix:/crm", "x-cluster:a", "x-keep:2"] {
        assert!(first.iter().any(|l| l == want), "{want} in {first:?}");
    }
    assert!(!first.iter().any(|l| l.starts_with("x-drop:")), "{first:?}");
    assert_eq!(
        first.iter().filter(|l| l.starts_with("x-forwarded-prefix:")).count(),
        1,
        "the client's is gone: {first:?}"
    );
    assert!(!normalized(&heads[1]).iter().any(|l| l.starts_with("x-cluster:")), "{:?}", heads[1]);
    for i in 0..requests.len() {
        assert_eq!(normalized(&answers[i]), normalized(&answers[i + requests.len()]), "answer {i}");
    }
    assert_eq!(
        normalized(&answers[0]),
        ["HTTP/1.1 200 OK", "content-length:2", "x-set:first", "x-traefik-backend:cluster-a", "x-up:yes"]
    );
    assert!(answers[2].starts_with("HTTP/1.1 400"), "{}", answers[2]);
    let refusal = normalized(&answers[3]);
    assert!(refusal[0].starts_with("HTTP/1.1 401"), "{refusal:?}");
    assert!(refusal.iter().any(|l| l == "x-traefik-backend:cluster-a"), "{refusal:?}");
    assert!(answers[4].starts_with("HTTP/1.1 400"), "the rewrite is refused first: {}", answers[4]);

    // The router whose middleware sets X-Forwarded-Proto: the general lane, with its value.
    let mut s = tokio::net::TcpStream::connect(direct.web_addr()).await.unwrap();
    s.write_all(b"GET /proto HTTP/1.1\r\nHost: api.test\r\nX-Keep: 2\r\n\r\n").await.unwrap();
    assert!(common::client::read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    let last = recorded.lock().unwrap().last().cloned().unwrap_or_default();
    assert!(last.contains("\r\nx-keep: 2") && last.contains("x-forwarded-proto: https"), "{last}");
}
