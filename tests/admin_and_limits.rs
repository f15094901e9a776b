//! The admin API stays on this host and behind a token when one is given, shows no
//! secret, and a gateway closes connections past its limit at once.

mod common;

use std::fs;
use std::time::Duration;

use common::gateway::GatewayProc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USERS: &str = "alice:$apr1$abcdefgh$FBwExRW4dCc8aL.OvjpIE1";

fn manifests(dir: &std::path::Path, be: std::net::SocketAddr) {
    fs::write(
        dir.join("all.yaml"),
        format!("apiVersion: traefik.io/v1alpha1\nkind: IngressRoute\nmetadata: {{name: r, namespace: ns}}\nspec:\n  entryPoints: [web]\n  routes:\n    - match: PathPrefix(`/`)\n      middlewares: [{{name: auth}}]\n      services: [{{name: svc, port: 80}}]\n---\napiVersion: traefik.io/v1alpha1\nkind: Middleware\nmetadata: {{name: auth, namespace: ns}}\nspec: {{basicAuth: {{secret: users}}}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: users, namespace: ns}}\nstringData:\n  users: \"{USERS}\"\n") + &common::service_manifests("ns", "svc", &[be]),
    )
    .unwrap();
}

fn args(dir: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "gateway",
        "--manifests",
        dir.join("all.yaml").to_str().unwrap(),
        "--entrypoint",
        "web=127.0.0.1:0",
        "--entrypoint",
        "websecure=off",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

async fn admin_get(gw: &GatewayProc, path: &str, token: Option<&str>) -> common::client::Resp {
    let mut req = hyper::Request::get(format!("http://{}{path}", gw.admin));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    common::client::send(&common::client::http1(), req.body(common::client::body("")).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_is_local_token_guarded_and_shows_no_secret() {
    let be = common::backend::start("svc", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    manifests(tmp.path(), be.addr);
    let token = "s3cret-admin-token-0123456789";
    fs::write(tmp.path().join("token"), format!("{token}\n")).unwrap();
    // `:0` is loopback for the admin API (never every interface).
    let gw = GatewayProc::spawn(
        &args(tmp.path(), &["--admin", ":0", "--admin-token-file", tmp.path().join("token").to_str().unwrap()]),
        1,
        false,
    );
    assert!(gw.admin.ip().is_loopback(), "{}", gw.admin);

    // Probes and scrapers need no token; everything else does.
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(admin_get(&gw, open, None).await.status, 200, "{open}");
    }
    let r = admin_get(&gw, "/api/rawdata", None).await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")));
    assert_eq!(admin_get(&gw, "/api/rawdata", Some("wrong-token-0123456789abc")).await.status, 401);
    let r = admin_get(&gw, "/api/rawdata", Some(token)).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("basicAuth"), "{}", r.body);
    assert!(!r.body.contains("apr1") && !r.body.contains("alice"), "no user nor hash is shown: {}", r.body);

    // A token file that is too short is refused at start.
    fs::write(tmp.path().join("short"), "abc\n").unwrap();
    let out = common::atrium(args(
        tmp.path(),
        &["--admin", "127.0.0.1:0", "--admin-token-file", tmp.path().join("short").to_str().unwrap()],
    ));
    assert_eq!(out.status.code(), Some(2));
    assert!(common::stderr(&out).contains("at least 16 characters"), "{}", common::stderr(&out));
}

/// Whether the server closes `s` without answering a request sent on it.
async fn closed_unanswered(s: &mut tokio::net::TcpStream) -> bool {
    // The write may fail already if the close came first.
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let mut b = [0u8; 64];
    matches!(tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await, Ok(Ok(0)) | Ok(Err(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_at_once() {
    let be = common::backend::start("svc", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    manifests(tmp.path(), be.addr);
    let gw = GatewayProc::spawn(
        &args(tmp.path(), &["--admin", "127.0.0.1:0", "--max-connections", "2", "--workers", "2"]),
        1,
        false,
    );
    let web = gw.web_addr();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(web).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        assert!(common::client::read_response(&mut s).await.starts_with("HTTP/1.1 401"));
        held.push(s);
    }
    let mut third = tokio::net::TcpStream::connect(web).await.unwrap();
    assert!(closed_unanswered(&mut third).await, "a third connection is closed");
    common::eventually(Duration::from_secs(5), "the refusal is logged", || async {
        gw.logged("connection limit reached").then_some(())
    })
    .await;
    // A slot freed is a slot for the next client.
    drop(held.pop());
    let r = common::eventually(Duration::from_secs(5), "a freed slot is reused", || async {
        let mut s = tokio::net::TcpStream::connect(web).await.ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.ok()?;
        let mut buf = vec![0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await.ok()?.ok()?;
        (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .await;
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
}
