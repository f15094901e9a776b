//! The developer portal end to end: a control plane serves it (`--portal`) to its data plane
//! over mutual TLS, an IngressRoute annotated `hub.traefik.io/api-portal` routes a host to
//! it, users made with `atrium portal user add` sign in, see exactly their groups' catalog,
//! make applications, keys and subscriptions, and those keys work at the gateway at once.
//! Writes need the session's CSRF token and the portal's origin; nothing is lost on
//! `kill -9`.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::client::{body, http1, send};
use common::portal::{PASSWORD, Parent, Session, add_user, catalog, json, portal_route, sign_in};
use common::{atrium, eventually, stdout};
use hyper::Request;

const SPEC: &str = r##"{
  "openapi": "3.0.3",
  "info": {"title": "CRM", "version": "2.1", "description": "Customers. <script>alert('spec')</script>"},
  "tags": [{"name": "employees"}],
  "paths": {
    "/employees": {"get": {"tags": ["employees"], "summary": "List employees", "responses": {"200": {"description": "the list"}}},
                   "post": {"tags": ["employees"], "summary": "Hire <img src=x onerror=alert(1)>",
                            "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Employee"}}}},
                            "responses": {"201": {"description": "hired"}}}}
  },
  "components": {"schemas": {"Employee": {"type": "object", "properties": {"name": {"type": "string"}, "boss": {"$ref": "#/components/schemas/Employee"}}}}}
}"##;

fn manifests(spec_dir: &Path, backend: SocketAddr, logo: SocketAddr) -> String {
    let spec = format!("file://{}", spec_dir.join("crm.json").display());
    let (company_route, partners_route) =
        (portal_route("apps", "company", "portal.test"), portal_route("other", "partners", "partners.test"));
    let mut m = format!(
        "apiVersion: hub.traefik.io/v1alpha1
kind: APIPortal
metadata: {{name: company, namespace: apps}}
spec:
  title: Company Portal
  description: All company APIs
  trustedUrls: [https://portal.example.com]
  ui: {{logoUrl: 'http://{logo}/logo.png'}}
---
{company_route}apiVersion: hub.traefik.io/v1alpha1
kind: API
metadata: {{name: crm, namespace: apps}}
spec:
  title: CRM API
  description: Customer data
  openApiSpec:
    url: {spec}
    override: {{servers: [{{url: 'http://api.test/crm'}}]}}
    operationSets: [{{name: read, matchers: [{{methods: [GET]}}]}}]
---
apiVersion: hub.traefik.io/v1alpha1
kind: API
metadata: {{name: billing, namespace: apps}}
spec: {{title: Billing API}}
---
apiVersion: hub.traefik.io/v1alpha1
kind: API
metadata: {{name: internal, namespace: apps}}
spec: {{title: Internal API}}
---
apiVersion: hub.traefik.io/v1alpha1
kind: APIPlan
metadata: {{name: standard, namespace: apps}}
spec: {{title: Standard Plan, rateLimit: {{limit: 100, period: 1m}}, quota: {{limit: 10000, period: 1h}}}}
---
apiVersion: hub.traefik.io/v1alpha1
kind: APIPlan
metadata: {{name: premium, namespace: apps}}
spec: {{title: Premium Plan, rateLimit: {{limit: 1000, period: 1m}}}}
---
apiVersion: hub.traefik.io/v1alpha1
kind: APIBundle
metadata: {{name: company, namespace: apps}}
spec: {{apis: [{{name: crm}}, {{name: billing}}]}}
---
apiVersion: hub.traefik.io/v1alpha1
kind: APICatalogItem
metadata: {{name: standard, namespace: apps}}
spec: {{groups: [developers, external], apiBundles: [{{name: company}}], apiPlan: {{name: standard}}}}
---
apiVersion: hub.traefik.io/v1alpha1
kind: APICatalogItem
metadata: {{name: premium, namespace: apps}}
spec: {{groups: [premium-customers], apiBundles: [{{name: company}}], apiPlan: {{name: premium}}}}
---
apiVersion: hub.traefik.io/v1alpha1
kind: APICatalogItem
metadata: {{name: staff-read-only, namespace: apps}}
spec: {{groups: [staff], apis: [{{name: crm}}, {{name: internal}}], apiPlan: {{name: standard}}, operationFilter: {{include: [read]}}}}
---
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata:
  name: crm
  namespace: apps
  annotations: {{hub.traefik.io/api: crm}}
spec:
  entryPoints: [web]
  routes:
    - match: Host(`api.test`) && PathPrefix(`/crm`)
      services: [{{name: svc, port: 80}}]
---
apiVersion: hub.traefik.io/v1alpha1
kind: ContentItem
metadata: {{name: getting-started, namespace: apps}}
spec:
  title: Getting started
  order: 1
  parentRef: {{kind: APIPortal, name: company}}
  content: |
    # Welcome
    Ask for access. <script>alert('doc')</script> [bad](javascript:alert(1))
---
apiVersion: hub.traefik.io/v1alpha1
kind: ContentItem
metadata: {{name: status, namespace: apps}}
spec:
  title: Status page
  order: 2
  parentRef: {{kind: APIPortal, name: company}}
  link: {{href: 'https://status.example.com'}}
---
apiVersion: hub.traefik.io/v1alpha1
kind: ContentItem
metadata: {{name: crm-guide, namespace: apps}}
spec: {{title: CRM guide, order: 1, parentRef: {{kind: API, name: crm}}, content: 'Use **pagination**.'}}
---
apiVersion: hub.traefik.io/v1alpha1
kind: ContentItem
metadata: {{name: internal-guide, namespace: apps}}
spec: {{title: Internal guide, order: 1, parentRef: {{kind: API, name: internal}}, content: 'Staff only.'}}
---
apiVersion: hub.traefik.io/v1alpha1
kind: APIPortal
metadata: {{name: partners, namespace: other}}
spec: {{title: Partner Portal, trustedUrls: ['https://partners.example.com']}}
---
{partners_route}apiVersion: hub.traefik.io/v1alpha1
kind: API
metadata: {{name: weather, namespace: other}}
spec: {{title: Weather API}}
---
apiVersion: hub.traefik.io/v1alpha1
kind: APIPlan
metadata: {{name: free, namespace: other}}
spec: {{title: Free}}
---
apiVersion: hub.traefik.io/v1alpha1
kind: APICatalogItem
metadata: {{name: all, namespace: other}}
spec: {{everyone: true, apis: [{{name: weather}}], apiPlan: {{name: free}}}}
---
"
    );
    m += &common::service_manifests("apps", "svc", &[backend]);
    m
}

/// A PNG logo served on loopback (what `ui.logoUrl` points at).
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89";

async fn logo_server() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                PNG.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(PNG).await;
        }
    });
    addr
}

async fn setup() -> (tempfile::TempDir, common::backend::Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let backend = common::backend::start("crm", "127.0.0.1").await;
    let logo = logo_server().await;
    fs::create_dir_all(tmp.path().join("m")).unwrap();
    fs::create_dir_all(tmp.path().join("specs")).unwrap();
    fs::write(tmp.path().join("specs/crm.json"), SPEC).unwrap();
    fs::write(tmp.path().join("m/all.yaml"), manifests(&tmp.path().join("specs"), backend.addr, logo)).unwrap();
    (tmp, backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_group_sees_exactly_its_catalog_and_hidden_apis_do_not_exist() {
    catalog_by_group(None).await;
}

/// The same on a PostgreSQL store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_group_sees_exactly_its_catalog_and_hidden_apis_do_not_exist_on_postgres() {
    let pg = common::postgres::PostgresServer::start();
    catalog_by_group(Some(pg.url())).await;
}

/// What each group sees, with the store at `url` (none: SQLite).
async fn catalog_by_group(url: Option<String>) {
    let (tmp, _be) = setup().await;
    let store = url.clone().unwrap_or_else(|| tmp.path().join("state/portal.db").display().to_string());
    let users: Vec<(&str, &[&str])> = vec![
        ("dev@example.com", &["developers"]),
        ("ext@example.com", &["external"]),
        ("prem@example.com", &["premium-customers"]),
        ("staff@example.com", &["staff"]),
        ("nobody@example.com", &[]),
    ];
    let otps: Vec<String> = users.iter().map(|(e, g)| add_user(&store, e, g)).collect();
    let flags: Vec<&str> = match &url {
        Some(u) => vec!["--portal-store", u.as_str()],
        None => vec![],
    };
    let p = Parent::start_with(tmp.path(), &flags).await;
    let mut sessions = Vec::new();
    for ((email, _), otp) in users.iter().zip(&otps) {
        sessions.push(sign_in(&p, "portal.test", email, otp).await);
    }
    assert_eq!(
        catalog(&p, "portal.test", &sessions[0]).await,
        ["Billing API (Standard Plan)", "CRM API (Standard Plan)"]
    );
    assert_eq!(
        catalog(&p, "portal.test", &sessions[1]).await,
        ["Billing API (Standard Plan)", "CRM API (Standard Plan)"]
    );
    assert_eq!(
        catalog(&p, "portal.test", &sessions[2]).await,
        ["Billing API (Premium Plan)", "CRM API (Premium Plan)"]
    );
    assert_eq!(
        catalog(&p, "portal.test", &sessions[3]).await,
        ["CRM API (Standard Plan)", "Internal API (Standard Plan)"]
    );
    assert!(catalog(&p, "portal.test", &sessions[4]).await.is_empty());

    // The HTML catalog says the same, with the portal's title.
    let page = p.call("GET", "portal.test", "/", Some(&sessions[0]), None).await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("Company Portal") && page.body.contains("CRM API") && page.body.contains("Standard Plan")
    );
    assert!(!page.body.contains("Internal API") && !page.body.contains("Premium Plan"));

    // The logo is fetched once by the control plane and served by the portal: the page
    // makes no request elsewhere.
    let page = eventually(Duration::from_secs(10), "the logo is served", || async {
        let r = p.call("GET", "portal.test", "/", Some(&sessions[0]), None).await;
        r.body.contains("src=\"/assets/logo\"").then_some(r)
    })
    .await;
    assert!(!page.body.contains("logo.png"), "no external reference");
    let logo = p.call("GET", "portal.test", "/assets/logo", Some(&sessions[0]), None).await;
    assert_eq!((logo.status, logo.header("content-type")), (200, Some("image/png")));

    // ContentItems: the portal's pages in the navigation, an API's guides on its page,
    // an API's guide readable only by who sees the API; Markdown sanitised.
    assert!(
        page.body.contains("href=\"/docs/getting-started\"") && page.body.contains("https://status.example.com"),
        "{}",
        page.body
    );
    let doc = p.call("GET", "portal.test", "/docs/getting-started", Some(&sessions[0]), None).await;
    assert_eq!(doc.status, 200);
    assert!(
        doc.body.contains("<h1>Welcome</h1>")
            && !doc.body.contains("<script>alert")
            && !doc.body.contains("javascript:"),
        "{}",
        doc.body
    );
    assert_eq!(p.call("GET", "portal.test", "/docs/internal-guide", Some(&sessions[0]), None).await.status, 404);
    assert_eq!(p.call("GET", "portal.test", "/docs/internal-guide", Some(&sessions[3]), None).await.status, 200);
    assert_eq!(p.call("GET", "portal.test", "/docs/getting-started", None, None).await.status, 303, "sign in first");

    // A hidden API does not exist for the user: 404 on the page and on the REST path.
    for path in ["/apis/apps/internal", "/api/apis/apps/internal"] {
        assert_eq!(p.call("GET", "portal.test", path, Some(&sessions[0]), None).await.status, 404, "{path}");
        assert_eq!(p.call("GET", "portal.test", path, Some(&sessions[3]), None).await.status, 200, "{path} for staff");
    }
    assert_eq!(p.call("GET", "portal.test", "/apis/apps/crm", Some(&sessions[4]), None).await.status, 404);

    // The API page renders the fetched spec, escaped; the staff item's filter hides writes.
    let crm = eventually(Duration::from_secs(10), "the CRM spec is fetched and shown", || async {
        let r = p.call("GET", "portal.test", "/apis/apps/crm", Some(&sessions[0]), None).await;
        r.body.contains("List employees").then_some(r)
    })
    .await;
    assert!(crm.body.contains("Hire") && crm.body.contains("http://api.test/crm"), "override servers apply");
    assert!(!crm.body.contains("<script>alert") && !crm.body.contains("<img src=x"), "spec text is escaped");
    assert!(crm.body.contains("↻ Employee"), "the cyclic schema ends");
    assert!(crm.body.contains("href=\"/docs/crm-guide\""), "the API's guide is on its page");
    let staff = p.call("GET", "portal.test", "/api/apis/apps/crm", Some(&sessions[3]), None).await;
    let ops: Vec<String> = json(&staff)["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| format!("{} {}", o["method"].as_str().unwrap(), o["path"].as_str().unwrap()))
        .collect();
    assert_eq!(ops, ["GET /employees"], "operationFilter hides POST");

    // Another APIPortal has its own catalog; the portal header cannot be forged.
    let partner_otp = add_user(&store, "partner@example.com", &["partners"]);
    let partner = sign_in(&p, "partners.test", "partner@example.com", &partner_otp).await;
    assert_eq!(catalog(&p, "partners.test", &partner).await, ["Weather API (Free)"]);
    let forged = Request::get(format!("http://{}/api/catalog", p.cp.web_addr()))
        .header("host", "portal.test")
        .header("x-atrium-portal", "other/partners")
        .header("cookie", &sessions[0].cookie)
        .body(body(""))
        .unwrap();
    let r = send(&http1(), forged).await;
    assert_eq!(json(&r)["portal"]["id"], "apps/company", "the data plane overwrites the header: {r:?}");
    // A session opened at one portal is nothing at another.
    let r = p.call("GET", "portal.test", "/api/catalog", Some(&partner), None).await;
    assert_eq!(r.status, 401, "{r:?}");
    let page = p.call("GET", "partners.test", "/login", None, None).await;
    assert!(page.body.contains("Partner Portal"), "the title is on the login page too");

    // Not signed in: pages go to the login form (relative), REST answers 401.
    let r = p.call("GET", "portal.test", "/apps", None, None).await;
    assert_eq!((r.status, r.header("location")), (303, Some("/login")));
    assert_eq!(p.call("GET", "portal.test", "/api/applications", None, None).await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_made_in_the_portal_work_at_the_gateway_and_every_write_is_guarded() {
    keys_and_guards(None).await;
}

/// The same on a PostgreSQL store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_made_in_the_portal_work_at_the_gateway_and_every_write_is_guarded_on_postgres() {
    let pg = common::postgres::PostgresServer::start();
    keys_and_guards(Some(pg.url())).await;
}

/// Asks the portal for a try-it console key for `api`.
async fn console_key(p: &Parent, s: &Session, api: &str) -> common::client::Resp {
    p.call("POST", "portal.test", "/api/console-key", Some(s), Some(format!(r#"{{"api":"{api}"}}"#))).await
}

/// Keys, subscriptions and every guard on writes, with the store at `url` (none: SQLite).
async fn keys_and_guards(url: Option<String>) {
    let (tmp, _be) = setup().await;
    let store = url.clone().unwrap_or_else(|| tmp.path().join("state/portal.db").display().to_string());
    let ann_otp = add_user(&store, "ann@example.com", &["developers"]);
    let bob_otp = add_user(&store, "bob@example.com", &["developers"]);
    let flags: Vec<&str> = match &url {
        Some(u) => vec!["--portal-store", u.as_str()],
        None => vec![],
    };
    let p = Parent::start_with(tmp.path(), &flags).await;
    let ann = sign_in(&p, "portal.test", "ann@example.com", &ann_otp).await;
    let bob = sign_in(&p, "portal.test", "bob@example.com", &bob_otp).await;

    // A form without the CSRF token, or from another origin, changes nothing.
    let r = p.form("/apps", &ann, &[("name", "forged")], Some("http://portal.test")).await;
    assert_eq!(r.status, 403, "no CSRF token: {r:?}");
    let r = p.form("/apps", &ann, &[("name", "forged"), ("csrf", &bob.csrf)], Some("http://portal.test")).await;
    assert_eq!(r.status, 403, "another session's token: {r:?}");
    let r = p.form("/apps", &ann, &[("name", "forged"), ("csrf", &ann.csrf)], Some("https://evil.example")).await;
    assert_eq!(r.status, 403, "another origin: {r:?}");
    let r =
        p.form("/apps", &ann, &[("name", "crm client"), ("csrf", &ann.csrf)], Some("https://portal.example.com")).await;
    assert_eq!((r.status, r.header("location")), (303, Some("/apps")), "a trusted URL's origin: {r:?}");
    let apps = json(&p.call("GET", "portal.test", "/api/applications", Some(&ann), None).await);
    assert_eq!(apps["applications"].as_array().unwrap().len(), 1, "only the good form made an application: {apps}");
    let app = apps["applications"][0]["id"].as_i64().unwrap();

    // A key, shown once.
    let r = p
        .form(&format!("/apps/{app}/keys"), &ann, &[("name", "ci"), ("csrf", &ann.csrf)], Some("http://portal.test"))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let key = r.body.split("<code id=\"new-key-value\">").nth(1).unwrap().split('<').next().unwrap().to_string();
    assert!(key.starts_with("atr_") && key.len() > 40, "{key}");
    let listed = p.call("GET", "portal.test", "/apps", Some(&ann), None).await;
    assert!(!listed.body.contains(&key), "the key is never shown again");

    // Not subscribed yet: 403 at the gateway. Subscribed: served, on the item's plan.
    let r = eventually(Duration::from_secs(10), "the new key reaches the data plane", || async {
        let r = p.api("/crm/employees", &key).await;
        (r.status != 401).then_some(r)
    })
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    let sub = r#"{"catalog_item":"apps/standard"}"#.to_string();
    let r = p
        .call("POST", "portal.test", &format!("/api/applications/{app}/subscriptions"), Some(&ann), Some(sub.clone()))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let r = p
        .call("POST", "portal.test", &format!("/api/applications/{app}/subscriptions"), Some(&ann), Some(sub.clone()))
        .await;
    assert_eq!(r.status, 409, "a second subscription to the same item: {r:?}");
    let r = p
        .call(
            "POST",
            "portal.test",
            &format!("/api/applications/{app}/subscriptions"),
            Some(&ann),
            Some(r#"{"catalog_item":"apps/premium"}"#.into()),
        )
        .await;
    assert_eq!(r.status, 404, "an item the user does not see: {r:?}");
    let r = eventually(Duration::from_secs(10), "the subscription reaches the data plane", || async {
        let r = p.api("/crm/employees", &key).await;
        (r.status == 200).then_some(r)
    })
    .await;
    assert_eq!(r.header("x-ratelimit-remaining"), Some("99"), "the Standard plan applies: {r:?}");
    // The portal shows what is left, as the gateway counted it.
    let listed = json(&p.call("GET", "portal.test", "/api/applications", Some(&ann), None).await);
    let sub_id = listed["applications"][0]["subscriptions"][0]["id"].as_i64().unwrap().to_string();
    let left = &listed["remaining"][&sub_id];
    let crm_left =
        left.as_array().unwrap().iter().find(|l| l["api"] == "apps/crm").unwrap_or_else(|| panic!("{listed}"));
    // The quota counts exactly; the rate's bucket refills (a token per 0.6 s).
    assert_eq!(crm_left["quota"].as_u64(), Some(9999), "{listed}");
    assert!(matches!(crm_left["rate"].as_u64(), Some(99..=100)), "{listed}");
    let page = p.call("GET", "portal.test", "/apps", Some(&ann), None).await;
    assert!(page.body.contains(" of 100 left") && page.body.contains("quota 9999 of 10000 left"), "{}", page.body);

    // A temporary key for the try-it console: on the subscribed application, one hour, and
    // a second one replaces the first.
    let first = json(&console_key(&p, &ann, "apps/crm").await);
    let first_key = first["key"].as_str().unwrap().to_string();
    assert!(first["info"]["expires"].as_i64().unwrap() > 0, "{first}");
    eventually(Duration::from_secs(10), "the console key works", || async {
        (p.api("/crm/employees", &first_key).await.status == 200).then_some(())
    })
    .await;
    let second = json(&console_key(&p, &ann, "apps/crm").await)["key"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(10), "a new console key replaces the old one", || async {
        let (old, new) =
            (p.api("/crm/employees", &first_key).await.status, p.api("/crm/employees", &second).await.status);
        (old == 401 && new == 200).then_some(())
    })
    .await;
    assert_eq!(console_key(&p, &bob, "apps/crm").await.status, 409, "bob has no subscribed application");
    assert_eq!(console_key(&p, &ann, "apps/internal").await.status, 404, "a hidden API");
    let r = console_key(&p, &ann, "apps/billing").await;
    assert_eq!(r.status, 409, "no console key for an API whose servers only its spec names: {r:?}");

    // Bob cannot see, change or use Ann's application, even with his own valid session.
    assert!(
        json(&p.call("GET", "portal.test", "/api/applications", Some(&bob), None).await)["applications"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    for (m, path) in [
        ("DELETE", format!("/api/applications/{app}")),
        ("POST", format!("/api/applications/{app}/keys")),
        ("DELETE", "/api/keys/1".to_string()),
    ] {
        let r = p.call(m, "portal.test", &path, Some(&bob), Some("{}".into())).await;
        assert_eq!(r.status, 404, "{m} {path}: {r:?}");
    }
    let mixed = Session { cookie: bob.cookie.clone(), csrf: ann.csrf.clone() };
    assert_eq!(
        p.call("DELETE", "portal.test", &format!("/api/applications/{app}"), Some(&mixed), None).await.status,
        403
    );

    // Revoked: refused at the gateway within seconds.
    let keys = json(&p.call("GET", "portal.test", "/api/applications", Some(&ann), None).await);
    let key_id = keys["applications"][0]["keys"][0]["id"].as_i64().unwrap();
    assert_eq!(p.call("DELETE", "portal.test", &format!("/api/keys/{key_id}"), Some(&ann), None).await.status, 200);
    eventually(Duration::from_secs(10), "the revoked key is refused", || async {
        (p.api("/crm/employees", &key).await.status == 401).then_some(())
    })
    .await;

    // Login attempts are limited per email.
    for _ in 0..5 {
        let r = p
            .call(
                "POST",
                "portal.test",
                "/api/login",
                None,
                Some(r#"{"email":"bob@example.com","password":"wrong-password"}"#.into()),
            )
            .await;
        assert_eq!(r.status, 401, "{r:?}");
    }
    let r = p
        .call(
            "POST",
            "portal.test",
            "/api/login",
            None,
            Some(format!(r#"{{"email":"bob@example.com","password":"{PASSWORD}"}}"#)),
        )
        .await;
    assert_eq!(r.status, 429, "even the right password waits: {r:?}");
    assert!(r.header("retry-after").is_some());

    // The audit log has the logins, keys and subscriptions.
    let out = atrium(["portal", "--store", &store, "audit", "--last", "100"]);
    let log = stdout(&out);
    for action in ["login", "application.create", "key.create", "subscription.create", "key.revoke", "login.failed"] {
        assert!(log.contains(&format!("\t{action}\t")), "{action} in:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_on_kill_9_and_backups_restore() {
    let (tmp, _be) = setup().await;
    let store = tmp.path().join("state/portal.db").display().to_string();
    let otp = add_user(&store, "ann@example.com", &["developers"]);
    let mut p = Parent::start(tmp.path()).await;
    let ann = sign_in(&p, "portal.test", "ann@example.com", &otp).await;
    let app = json(
        &p.call("POST", "portal.test", "/api/applications", Some(&ann), Some(r#"{"name":"durable"}"#.into())).await,
    );
    let id = app["id"].as_i64().unwrap();
    let made = json(
        &p.call(
            "POST",
            "portal.test",
            &format!("/api/applications/{id}/keys"),
            Some(&ann),
            Some(r#"{"name":"k"}"#.into()),
        )
        .await,
    );
    let key = made["key"].as_str().unwrap().to_string();
    let r = p
        .call(
            "POST",
            "portal.test",
            &format!("/api/applications/{id}/subscriptions"),
            Some(&ann),
            Some(r#"{"catalog_item":"apps/standard"}"#.into()),
        )
        .await;
    assert_eq!(r.status, 201);
    // Acknowledged writes are on disk: kill -9 right away.
    p.cp.kill();
    drop(p);
    let backup = tmp.path().join("backup.db");
    assert!(atrium(["portal", "--store", &store, "backup", backup.to_str().unwrap()]).status.success());

    let p = Parent::start(tmp.path()).await;
    eventually(Duration::from_secs(10), "the key works after the restart", || async {
        (p.api("/crm/employees", &key).await.status == 200).then_some(())
    })
    .await;
    // The session survived too (server-side sessions in the store).
    let apps = json(&p.call("GET", "portal.test", "/api/applications", Some(&ann), None).await);
    assert_eq!(apps["applications"][0]["name"], "durable");
    assert_eq!(apps["applications"][0]["subscriptions"][0]["catalog_item"], "apps/standard");
    drop(p);

    // Restore: the store goes back to the backup (a user added later is gone).
    add_user(&store, "later@example.com", &[]);
    let out = atrium(["portal", "--store", &store, "restore", backup.to_str().unwrap()]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let users = stdout(&atrium(["portal", "--store", &store, "user", "list"]));
    assert!(users.contains("ann@example.com") && !users.contains("later@example.com"), "{users}");
    // An operator's suspension reaches the gateway.
    let app_id = apps["applications"][0]["app_id"].as_str().unwrap();
    let p = Parent::start(tmp.path()).await;
    eventually(Duration::from_secs(10), "the key works after the restore", || async {
        (p.api("/crm/employees", &key).await.status == 200).then_some(())
    })
    .await;
    assert!(atrium(["portal", "--store", &store, "suspend", app_id]).status.success());
    eventually(Duration::from_secs(15), "the suspended application is refused", || async {
        (p.api("/crm/employees", &key).await.status == 403).then_some(())
    })
    .await;
}

/// Whether a client with `cfg` gets an answer from the portal at `addr`.
async fn admitted(addr: SocketAddr, cfg: rustls::ClientConfig) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    match tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg)).connect(name, tcp).await {
        Err(_) => false,
        Ok(mut s) => {
            // TLS 1.3: a refused client certificate shows at the first read.
            let _ = s.write_all(b"GET /login HTTP/1.1\r\nhost: portal.test\r\n\r\n").await;
            let mut buf = [0u8; 64];
            matches!(tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await, Ok(Ok(n)) if n > 0)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_listener_admits_data_planes_only() {
    use atrium_data_plane::pki::{self, Role};
    use atrium_data_plane::trust::{NoVerify, NodeTrust};
    let (tmp, _be) = setup().await;
    let p = Parent::start(tmp.path()).await;
    assert!(p.cp.wait_logged("portal listening").await);
    let log = p.cp.log.lock().unwrap().join("\n");
    let addr: SocketAddr = log
        .lines()
        .find(|l| l.contains("portal listening"))
        .and_then(|l| l.split("addr=").nth(1))
        .and_then(|a| a.split_whitespace().next())
        .expect("the portal logs its address")
        .parse()
        .unwrap();
    let pki_dir = tmp.path().join("state/pki");
    let client = |name: &str, role: Role| {
        let files = pki::issue(&pki_dir, name, role, &[]).unwrap();
        NodeTrust::load(&files).unwrap().client_config(NoVerify::new(), &[b"http/1.1"], false).unwrap()
    };
    // A data plane of this installation is admitted (the control of this test).
    assert!(admitted(addr, client("dp-test", Role::DataPlane)).await, "a data-plane certificate is admitted");
    // An agent's certificate of the same CA is refused, and so is no certificate at all.
    assert!(!admitted(addr, client("cluster-x", Role::Agent)).await, "an agent certificate opens nothing");
    let anonymous =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(NoVerify::new())
            .with_no_client_auth();
    assert!(!admitted(addr, anonymous).await, "no certificate, no portal");
    assert!(p.cp.wait_logged("portal refused a peer").await);
}

/// With plan counters in Redis, the portal shows what Redis counted (every data plane's
/// requests), read without counting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remaining_rate_and_quota_come_from_redis_when_it_holds_the_counters() {
    let redis = common::redis::RedisServer::start();
    let (tmp, _be) = setup().await;
    let values = tmp.path().join("values.yaml");
    fs::write(&values, format!("hub:\n  redis:\n    endpoints: \"{}\"\n    timeout: 500ms\n", redis.addr)).unwrap();
    let store = tmp.path().join("state/portal.db").display().to_string();
    let otp = add_user(&store, "ann@example.com", &["developers"]);
    let p = Parent::start_with(tmp.path(), &["--values", values.to_str().unwrap()]).await;
    let ann = sign_in(&p, "portal.test", "ann@example.com", &otp).await;
    let id = json(
        &p.call("POST", "portal.test", "/api/applications", Some(&ann), Some(r#"{"name":"r"}"#.into())).await,
    )["id"]
        .as_i64()
        .unwrap();
    let key = json(
        &p.call("POST", "portal.test", &format!("/api/applications/{id}/keys"), Some(&ann), Some("{}".into())).await,
    )["key"]
        .as_str()
        .unwrap()
        .to_string();
    let sub = r#"{"catalog_item":"apps/standard"}"#.to_string();
    assert_eq!(
        p.call("POST", "portal.test", &format!("/api/applications/{id}/subscriptions"), Some(&ann), Some(sub))
            .await
            .status,
        201
    );
    eventually(Duration::from_secs(10), "the key is served", || async {
        (p.api("/crm/employees", &key).await.status == 200).then_some(())
    })
    .await;
    let r = p.api("/crm/employees", &key).await;
    assert_eq!(r.header("x-ratelimit-remaining"), Some("98"), "{r:?}");
    for _ in 0..2 {
        // Reading twice counts nothing.
        let listed = json(&p.call("GET", "portal.test", "/api/applications", Some(&ann), None).await);
        let sub_id = listed["applications"][0]["subscriptions"][0]["id"].as_i64().unwrap().to_string();
        let crm =
            listed["remaining"][&sub_id].as_array().unwrap().iter().find(|l| l["api"] == "apps/crm").cloned().unwrap();
        // The quota counts exactly; the rate's bucket refills (a token per 0.6 s).
        assert_eq!(crm["quota"].as_u64(), Some(9998), "{listed}");
        assert!(matches!(crm["rate"].as_u64(), Some(98..=99)), "{listed}");
    }
}

/// Accounts declared in the values (`portal.users`) are created at start: with the hash
/// given, or with a one-time password logged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_declared_in_the_values_are_created_at_start() {
    let (tmp, _be) = setup().await;
    let hash = atrium_portal::auth::hash_password(PASSWORD);
    let values = tmp.path().join("values.yaml");
    fs::write(
        &values,
        format!(
            "portal:\n  users:\n    - {{email: ann@example.com, groups: [developers], passwordHash: \"{hash}\"}}\n    - {{email: otp@example.com, groups: [premium-customers]}}\n"
        ),
    )
    .unwrap();
    let p = Parent::start_with(tmp.path(), &["--values", values.to_str().unwrap()]).await;
    // Ann signs in with the password whose hash the values hold.
    let r = p
        .call(
            "POST",
            "portal.test",
            "/api/login",
            None,
            Some(format!(r#"{{"email":"ann@example.com","password":"{PASSWORD}"}}"#)),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(json(&r)["user"]["must_change"], false);
    // The other account's one-time password is in the log, once.
    assert!(p.cp.wait_logged("portal account created from the values").await);
    let line =
        p.cp.log
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("otp@example.com") && l.contains("one_time_password="))
            .cloned()
            .unwrap();
    let otp = line.split("one_time_password=").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let s = sign_in(&p, "portal.test", "otp@example.com", &otp).await;
    assert_eq!(catalog(&p, "portal.test", &s).await, ["Billing API (Premium Plan)", "CRM API (Premium Plan)"]);
}
