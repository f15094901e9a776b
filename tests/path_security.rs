//! Request path security through a running gateway, on both lanes and over HTTP/2:
//! dot segments (plain or encoded) cannot carry a request past a router that guards a
//! prefix (nor can a rewrite make one), encoded separators are refused unless a router or
//! entrypoint allows them, a request has exactly one well-formed Host, and no request can
//! switch its connection to h2c behind the gateway's back.

mod common;

use std::fs;
use std::time::Duration;

use common::backend;
use common::gateway::GatewayProc;
use tokio::io::AsyncWriteExt;

fn manifests(be: std::net::SocketAddr) -> String {
    let route = |name: &str, prefix: &str, mws: &str| {
        format!(
            "---\napiVersion: traefik.io/v1alpha1\nkind: IngressRoute\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  entryPoints: [web]\n  routes:\n    - match: PathPrefix(`{prefix}`)\n      middlewares: [{mws}]\n      services: [{{name: svc, port: 80}}]\n"
        )
    };
    let mw = |name: &str, spec: &str| {
        format!(
            "---\napiVersion: traefik.io/v1alpha1\nkind: Middleware\nmetadata: {{name: {name}, namespace: ns}}\nspec: {spec}\n"
        )
    };
    // `public` has no middleware (the direct lane), `admin` asks for a password,
    // `files` allows encoded slashes.
    route("public", "/public", "")
        + &route("admin", "/admin", "{name: users}")
        + &mw("users", "{basicAuth: {secret: htpasswd}}")
        // `alice:password` (`openssl passwd -apr1 -salt abcdefgh password`).
        + "---\napiVersion: v1\nkind: Secret\nmetadata: {name: htpasswd, namespace: ns}\nstringData:\n  users: \"alice:$apr1$abcdefgh$FBwExRW4dCc8aL.OvjpIE1\"\n"
        + &route("files", "/files", "{name: slashes}")
        + &mw("slashes", "{encodedCharacters: {allowEncodedSlash: true}}")
        + &route("strip", "/api", "{name: strip-api}")
        + &mw("strip-api", "{stripPrefix: {prefixes: [/api]}}")
        + &common::service_manifests("ns", "svc", &[be])
}

/// Sends `head` as written on a new connection; the status and the body.
async fn raw(addr: std::net::SocketAddr, head: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let resp = common::client::read_response(&mut s).await;
    let status = resp.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

async fn get(addr: std::net::SocketAddr, target: &str) -> (u16, String) {
    raw(addr, &format!("GET {target} HTTP/1.1\r\nHost: api.test\r\n\r\n")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_and_encoded_separators_cannot_get_past_a_router() {
    let be = backend::start("svc", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("all.yaml"), manifests(be.addr)).unwrap();
    let gw = GatewayProc::start(None, tmp.path(), &[]);
    let web = gw.web_addr();

    // Every spelling of `..` lands on the admin router, which asks for a password.
    for target in [
        "/public/../admin/secret",
        "/public/%2e%2e/admin/secret",
        "/public/%2E%2E/admin/secret",
        "/public/.%2e/admin/secret",
        "/public/./../admin/secret",
        "/public/..//admin/secret",
    ] {
        assert_eq!(get(web, target).await.0, 401, "{target}");
    }
    assert_eq!(be.hits.load(std::sync::atomic::Ordering::Relaxed), 0, "nothing reached the backend");

    // A path that only needs cleaning is forwarded clean.
    for (target, seen) in [
        ("/public/./a//b", "path=/public/a/b"),
        ("/public/x/../%61bc?q=%2e%2e", "path=/public/abc?q=%2e%2e"),
        ("/public/a%20b", "path=/public/a%20b"),
        ("/public/ok", "path=/public/ok"),
    ] {
        assert_eq!(get(web, target).await, (200, seen.to_string()), "{target}");
    }

    // Encoded separators and broken escapes: 400, unless the router allows them.
    for target in [
        "/public/a%2Fb",
        "/public/a%2fb",
        "/public/a%5Cb",
        "/public/a\\b",
        "/public/a%00",
        "/public/%3B",
        "/public/a%zz",
        "/public/a%4",
        // Java servers read `..;` as `..`.
        "/public/..;/admin/secret",
        "/public/%2e%2e;x/admin/secret",
    ] {
        assert_eq!(get(web, target).await.0, 400, "{target}");
    }
    assert_eq!(get(web, "/files/a%2Fb").await, (200, "path=/files/a%2Fb".to_string()));
    assert_eq!(get(web, "/files/a%3Bb").await.0, 400, "only what the middleware allows");
    assert_eq!(get(web, "/nowhere/a%2Fb").await.0, 404, "checked after routing, as Traefik does");

    // An upgrade to h2c is not passed on (the backend here switches on any Upgrade): the
    // request is answered as an ordinary one, so the connection stays under routing.
    for target in ["/public/ok", "/files/ok"] {
        let head = format!(
            "GET {target} HTTP/1.1\r\nHost: api.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
        );
        assert_eq!(raw(web, &head).await, (200, format!("path={target}")), "{target}");
    }

    // A rewrite cannot make a dot segment out of what the client sent: stripPrefix turns
    // `/api..` into `/..`, which the backend would resolve above the routed prefix.
    let hits = be.hits.load(std::sync::atomic::Ordering::Relaxed);
    for target in ["/api..", "/api../secret", "/api./x", "/api%2e%2e/secret", "/api..;/secret"] {
        assert_eq!(get(web, target).await.0, 400, "{target}");
    }
    assert_eq!(be.hits.load(std::sync::atomic::Ordering::Relaxed), hits, "none of them reached the backend");
    assert_eq!(get(web, "/api/users").await, (200, "path=/users".to_string()));
    assert_eq!(get(web, "/api...").await, (200, "path=/...".to_string()), "three dots are a name");

    // One Host, no more, no less (HTTP/1.1).
    assert_eq!(raw(web, "GET /public/ok HTTP/1.1\r\n\r\n").await.0, 400);
    assert_eq!(raw(web, "GET /public/ok HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").await.0, 400);
    assert_eq!(raw(web, "GET /public/ok HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n").await.0, 400);
    // A Host a router and an upstream could read two ways is malformed (as Go's server says).
    for host in ["api.test/x", "user@api.test", "api test", "api.test\"", "\u{e9}.test"] {
        let (status, body) = raw(web, &format!("GET /public/ok HTTP/1.1\r\nHost: {host}\r\n\r\n")).await;
        assert_eq!((status, body.trim_end()), (400, "400 Bad Request: malformed Host header"), "{host}");
    }
    for host in ["api.test", "api.test:8080", "[::1]:80", "127.0.0.1", ""] {
        assert_eq!(raw(web, &format!("GET /public/ok HTTP/1.1\r\nHost: {host}\r\n\r\n")).await.0, 200, "{host}");
    }

    // HTTP/2 (prior knowledge) takes the same path through the general lane.
    let mut h2 = common::exchanges::h2(tokio::net::TcpStream::connect(web).await.unwrap()).await;
    for (target, want) in [("/public/%2e%2e/admin/x", 401), ("/public/a%2Fb", 400), ("/public/./ok", 200)] {
        let req = hyper::Request::get(format!("http://api.test{target}")).body(common::client::body("")).unwrap();
        h2.ready().await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(10), h2.send_request(req)).await.unwrap().unwrap();
        assert_eq!(r.status(), want, "h2 {target}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entrypoint_can_allow_encoded_characters() {
    let be = backend::start("svc", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("all.yaml"), manifests(be.addr)).unwrap();
    let values = tmp.path().join("values.yaml");
    fs::write(
        &values,
        "additionalArguments:\n  - --entryPoints.web.http.encodedCharacters.allowEncodedSlash=true\n  - --entrypoints.web.http.encodedCharacters.allowEncodedSemicolon=true\n",
    )
    .unwrap();
    let m = tmp.path().join("m");
    fs::create_dir(&m).unwrap();
    fs::rename(tmp.path().join("all.yaml"), m.join("all.yaml")).unwrap();
    let gw = GatewayProc::start(Some(&values), &m, &[]);
    let web = gw.web_addr();
    assert_eq!(get(web, "/public/a%2Fb%3B").await, (200, "path=/public/a%2Fb%3B".to_string()));
    assert_eq!(get(web, "/public/a%25").await.0, 400, "what the entrypoint does not allow");
    // A router's own encodedCharacters middleware replaces the entrypoint's setting.
    assert_eq!(get(web, "/files/a%3B").await.0, 400);
}

/// The host a request is routed by is the one its backend sees: an absolute-form target or
/// HTTP/2's `:authority` wins over a `Host` header (which is replaced), and HTTP/2 with a
/// `Host` naming another server is refused. Otherwise a router for one host could carry a
/// request to a backend (or a child) that routes it as another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_routed_by_is_the_host_forwarded() {
    let be = backend::start("svc", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let y = "apiVersion: traefik.io/v1alpha1\nkind: IngressRoute\nmetadata: {name: public, namespace: ns}\nspec:\n  entryPoints: [web]\n  routes:\n    - match: Host(`public.test`)\n      services: [{name: svc, port: 80}]\n".to_string()
        + &common::service_manifests("ns", "svc", &[be.addr]);
    fs::write(tmp.path().join("all.yaml"), y).unwrap();
    let gw = GatewayProc::start(None, tmp.path(), &[]);
    let web = gw.web_addr();
    let mut s = tokio::net::TcpStream::connect(web).await.unwrap();
    s.write_all(b"GET http://public.test/x HTTP/1.1\r\nHost: admin.test\r\n\r\n").await.unwrap();
    let resp = common::client::read_response(&mut s).await.to_ascii_lowercase();
    assert!(resp.starts_with("http/1.1 200"), "{resp}");
    assert!(resp.contains("x-seen-host: public.test\r\n"), "the backend sees the host it was routed by: {resp}");
    // The target's authority obeys the Host rules: no userinfo.
    let mut s = tokio::net::TcpStream::connect(web).await.unwrap();
    s.write_all(b"GET http://admin@public.test/x HTTP/1.1\r\nHost: public.test\r\n\r\n").await.unwrap();
    let resp = common::client::read_response(&mut s).await;
    assert!(resp.starts_with("HTTP/1.1 400") && resp.contains("malformed Host header"), "{resp}");

    let mut h2 = common::exchanges::h2(tokio::net::TcpStream::connect(web).await.unwrap()).await;
    let send = |host: &'static str| {
        hyper::Request::get("http://public.test/x").header("host", host).body(common::client::body("")).unwrap()
    };
    h2.ready().await.unwrap();
    let r = h2.send_request(send("admin.test")).await.unwrap();
    assert_eq!(r.status(), 400, "HTTP/2 Host naming another server than :authority");
    h2.ready().await.unwrap();
    let r = h2.send_request(send("public.test")).await.unwrap();
    assert_eq!(r.status(), 200, "the same host twice is fine");
    assert_eq!(r.headers()["x-seen-host"], "public.test");
    for same in ["PUBLIC.test", "public.test:80"] {
        h2.ready().await.unwrap();
        let r = h2.send_request(send(same)).await.unwrap();
        assert_eq!(r.status(), 200, "{same}: the same server, written another way");
    }
}
