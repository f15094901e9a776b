//! Portal sign-in through OpenID Connect against a real provider run locally
//! (`oidc-provider-mock` from PyPI, installed by `.ci/run`): the authorization code flow with
//! PKCE, state and nonce; the groups claim decides the catalog; a replayed or foreign
//! callback is refused; local passwords do not sign in at an OIDC portal.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::client::{Resp, body, http1, send};
use common::portal::{Parent, Session, catalog};
use hyper::Request;

/// The provider; killed on drop.
struct Provider {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Provider {
    fn start() -> Provider {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("python3")
            .args([
                "-m",
                "oidc_provider_mock",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--require-nonce",
                "true",
            ])
            .args(["--user-claims", r#"{"sub": "alice", "email": "alice@example.com", "groups": ["developers"]}"#])
            .args(["--user-claims", r#"{"sub": "eve", "email": "eve@example.com", "groups": ["visitors"]}"#])
            .args(["--user-claims", r#"{"sub": "local", "email": "local@example.com", "groups": ["developers"]}"#])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs (pip install oidc-provider-mock; .ci/run does it)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "oidc-provider-mock did not start (pip install oidc-provider-mock)");
            std::thread::sleep(Duration::from_millis(100));
        }
        Provider { child, addr }
    }
}

fn manifests(issuer: &str, backend: SocketAddr) -> String {
    let route = common::portal::portal_route("apps", "company", "portal.test");
    format!(
        "apiVersion: hub.traefik.io/v1alpha1
kind: APIPortal
metadata: {{name: company, namespace: apps}}
spec:
  title: SSO Portal
  trustedUrls: [http://portal.test]
  auth: {{name: sso}}
---
apiVersion: hub.traefik.io/v1alpha1
kind: APIPortalAuth
metadata: {{name: sso, namespace: apps}}
spec:
  oidc:
    issuerUrl: {issuer}
    secretName: sso-client
    scopes: [openid, email]
    claims: {{groups: groups, email: email}}
---
apiVersion: v1
kind: Secret
metadata: {{name: sso-client, namespace: apps}}
stringData: {{clientId: atrium-portal, clientSecret: s3cr3t}}
---
{route}apiVersion: hub.traefik.io/v1alpha1
kind: API
metadata: {{name: crm, namespace: apps}}
spec: {{title: CRM API}}
---
apiVersion: hub.traefik.io/v1alpha1
kind: APIPlan
metadata: {{name: standard, namespace: apps}}
spec: {{title: Standard Plan}}
---
apiVersion: hub.traefik.io/v1alpha1
kind: APICatalogItem
metadata: {{name: standard, namespace: apps}}
spec: {{groups: [developers], apis: [{{name: crm}}], apiPlan: {{name: standard}}}}
---
"
    ) + &common::service_manifests("apps", "svc", &[backend])
}

/// `GET path` at the portal through the data plane, with `cookie`.
async fn get(p: &Parent, path: &str, cookie: Option<&str>) -> Resp {
    let mut b = Request::get(format!("http://{}{path}", p.cp.web_addr())).header("host", "portal.test");
    if let Some(c) = cookie {
        b = b.header("cookie", c);
    }
    send(&http1(), b.body(body("")).unwrap()).await
}

/// The cookie `name=value` a response sets.
fn set_cookie(r: &Resp, name: &str) -> String {
    r.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie: {r:?}"))
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

/// Starts a sign-in and lets the provider authenticate `sub`: the state cookie and the
/// callback path the provider sends the browser back to.
async fn authenticate(p: &Parent, sub: &str) -> (String, String) {
    let start = get(p, "/login/oidc", None).await;
    assert_eq!(start.status, 303, "{start:?}");
    let state = set_cookie(&start, "__Host-atrium-oidc");
    let authorize = start.header("location").unwrap().to_string();
    assert!(
        authorize.contains("code_challenge=") && authorize.contains("nonce=") && authorize.contains("state="),
        "PKCE, nonce and state: {authorize}"
    );
    let r = send(
        &http1(),
        Request::post(&authorize)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body(format!("sub={sub}")))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 302, "the provider signs {sub} in: {r:?}");
    let back = r.header("location").unwrap().to_string();
    let path =
        back.strip_prefix("http://portal.test").unwrap_or_else(|| panic!("back to a trusted URL: {back}")).to_string();
    assert!(path.starts_with("/login/oidc/callback?"), "{path}");
    (state, path)
}

/// Finishes a sign-in: the session.
async fn finish(p: &Parent, state: &str, path: &str) -> Session {
    let r = get(p, path, Some(state)).await;
    assert_eq!((r.status, r.header("location")), (303, Some("/")), "{r:?}");
    let cookie = set_cookie(&r, "__Host-atrium-session");
    let me = get(p, "/api/me", Some(&cookie)).await;
    let csrf = serde_json::from_str::<serde_json::Value>(&me.body).unwrap()["csrf"].as_str().unwrap().to_string();
    Session { cookie, csrf }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_sign_in_through_the_provider_and_its_groups_claim_decides_the_catalog() {
    let provider = Provider::start();
    let be = common::backend::start("crm", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir_all(tmp.path().join("m")).unwrap();
    fs::create_dir_all(tmp.path().join("specs")).unwrap();
    fs::write(tmp.path().join("m/all.yaml"), manifests(&format!("http://{}", provider.addr), be.addr)).unwrap();
    // A local account with the email the provider also asserts for `local`.
    let store = tmp.path().join("state/portal.db").display().to_string();
    let local_otp = common::portal::add_user(&store, "local@example.com", &["admins"]);
    let p = Parent::start(tmp.path()).await;

    // The login page offers single sign-on only, and a password does not sign in here.
    let page = get(&p, "/login", None).await;
    assert!(page.body.contains("/login/oidc") && !page.body.contains("name=\"password\""), "{}", page.body);
    let body_json = format!(r#"{{"email":"local@example.com","password":"{local_otp}"}}"#);
    let r = p.call("POST", "portal.test", "/api/login", None, Some(body_json)).await;
    assert_eq!(r.status, 403, "{r:?}");

    // Alice (developers) signs in and sees the developers' catalog.
    let (state, path) = authenticate(&p, "alice").await;
    let alice = finish(&p, &state, &path).await;
    assert_eq!(catalog(&p, "portal.test", &alice).await, ["CRM API (Standard Plan)"]);

    // The same callback again: the state was used.
    let r = get(&p, &path, Some(&state)).await;
    assert_eq!(r.status, 403, "a replayed callback: {r:?}");

    // A callback that this browser did not start (no state cookie, or another's).
    let (_, path) = authenticate(&p, "alice").await;
    assert_eq!(get(&p, &path, None).await.status, 403, "no state cookie");
    let (other_state, _) = authenticate(&p, "alice").await;
    let (_, path) = authenticate(&p, "alice").await;
    assert_eq!(get(&p, &path, Some(&other_state)).await.status, 403, "another sign-in's state");

    // Eve's groups show nothing.
    let (state, path) = authenticate(&p, "eve").await;
    let eve = finish(&p, &state, &path).await;
    assert!(catalog(&p, "portal.test", &eve).await.is_empty());

    // The provider cannot take over the local account with the same email.
    let (state, path) = authenticate(&p, "local").await;
    let r = get(&p, &path, Some(&state)).await;
    assert_eq!(r.status, 409, "{r:?}");
    drop(provider);
}
