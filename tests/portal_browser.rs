//! The seed's step 5 in a real browser (headless Chromium over WebDriver): a `developers`
//! user signs in at `https://portal.example.com` through the parent's data plane, replaces
//! the one-time password, finds CRM and Billing with the Standard plan, creates an
//! application and a key, subscribes, and sends a try-it request from the browser that
//! reaches the CRM backend in cluster-a through the parent's data plane and the QUIC uplink.
//! Screenshots of the main pages are saved under the test's output directory.

mod common;

use std::fs;
use std::time::Duration;

use common::topology::{Options, Topology, edit, seed};
use common::webdriver::Browser;
use common::{atrium, backend, eventually, stdout};

const CRM_SPEC: &str = r#"{
  "openapi": "3.0.3",
  "info": {"title": "CRM", "version": "1.0", "description": "Employees and customers of **the company**."},
  "tags": [{"name": "employees", "description": "Who works here"}],
  "paths": {
    "/employees": {"get": {"tags": ["employees"], "summary": "List employees",
      "parameters": [{"name": "team", "in": "query", "schema": {"type": "string"}, "example": "sales"}],
      "responses": {"200": {"description": "The employees"}}}}
  }
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_developer_signs_in_subscribes_and_calls_crm_from_the_browser() {
    let crm = backend::start("crm", "127.0.0.2").await;
    let billing = backend::start("billing", "127.0.0.3").await;
    let dir = seed(crm.addr, billing.addr);
    let specs = dir.path().join("specs");
    fs::create_dir_all(&specs).unwrap();
    fs::write(specs.join("crm.json"), CRM_SPEC).unwrap();
    let apis = dir.path().join("parent/manifests/apis.yaml");
    edit(
        &apis,
        &[("https://example.com/specs/crm-openapi.yaml", format!("file://{}", specs.join("crm.json").display()))],
    );
    // The developer, made by an operator with the CLI.
    let store = dir.path().join("cp-state/portal.db");
    let out = atrium([
        "portal",
        "--store",
        store.to_str().unwrap(),
        "user",
        "add",
        "--email",
        "dev@example.com",
        "--group",
        "developers",
    ]);
    let otp = stdout(&out)
        .lines()
        .find_map(|l| l.strip_prefix("one-time password: "))
        .expect("a one-time password")
        .trim()
        .to_string();

    let opts = Options {
        parent_flags: vec!["--portal", "127.0.0.1:0", "--spec-dir", specs.to_str().unwrap()],
        ..Default::default()
    };
    let topo = Topology::start(dir.path(), &opts);
    let ws = topo.ws().port();
    // Locally the gateway's websecure port is not 443: the API's servers say where it is.
    edit(&apis, &[("https://api.example.com/crm", format!("https://api.example.com:{ws}/crm"))]);
    eventually(Duration::from_secs(20), "both children are connected and healthy", || async {
        let r = common::topology::get(topo.ws(), "/crm/health").await;
        (r.status == 200).then_some(())
    })
    .await;

    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("portal-screenshots");
    let portal = format!("https://portal.example.com:{ws}");
    let b = Browser::start().await;

    // Sign in with the one-time password, then choose a password.
    b.goto(&format!("{portal}/")).await;
    assert!(b.url().await.ends_with("/login"), "a visitor is sent to the login page: {}", b.url().await);
    assert!(b.text("h1").await.contains("Company API Portal"), "the APIPortal's title is on the login page");
    b.screenshot(&shots.join("login.png")).await;
    b.type_into("input[name=email]", "dev@example.com").await;
    b.type_into("input[name=password]", &otp).await;
    b.click("#login button[type=submit]").await;
    b.find("#password").await;
    b.type_into("input[name=current]", &otp).await;
    b.type_into("input[name=new]", "correct-horse-battery").await;
    b.type_into("input[name=confirm]", "correct-horse-battery").await;
    b.click("#password button[type=submit]").await;

    // The catalog: CRM and Billing, on the Standard plan.
    let catalog = b.text("#catalog").await;
    assert!(catalog.contains("CRM API") && catalog.contains("Billing API"), "{catalog}");
    assert!(catalog.contains("Standard Plan") && !catalog.contains("Premium"), "{catalog}");
    b.screenshot(&shots.join("catalog.png")).await;

    // An application, a key (shown once) and a subscription.
    b.goto(&format!("{portal}/apps")).await;
    b.type_into("#new-app input[name=name]", "browser-app").await;
    b.click("#new-app button[type=submit]").await;
    b.find(".app[data-app=browser-app]").await;
    b.type_into(".app[data-app=browser-app] .new-key input[name=name]", "try-it").await;
    b.click(".app[data-app=browser-app] .new-key button[type=submit]").await;
    let key = b.text("#new-key-value").await;
    assert!(key.starts_with("atr_"), "{key}");
    b.click(".app[data-app=browser-app] .subscribe button[type=submit]").await;
    let subs = b.wait_text(".app[data-app=browser-app] .subs", "Standard Plan", Duration::from_secs(10)).await;
    assert!(subs.contains("100 requests per minute"), "{subs}");
    b.screenshot(&shots.join("applications.png")).await;

    // The API page: the rendered spec, who serves it now, and the try-it console.
    b.goto(&format!("{portal}/apis/apps/crm-api")).await;
    eventually(Duration::from_secs(15), "the CRM spec is shown", || async {
        let s = b.source().await;
        if s.contains("List employees") && s.contains(&format!("api.example.com:{ws}")) {
            return Some(());
        }
        b.goto(&format!("{portal}/apis/apps/crm-api")).await;
        None
    })
    .await;
    let serving = b.text("#serving").await;
    assert!(serving.contains("cluster-a") && serving.contains("healthy"), "{serving}");
    // The portal issues a temporary key for the subscribed application into the console.
    b.click("#console-key").await;
    b.wait_text("#console-key-note", "valid one hour", Duration::from_secs(10)).await;
    let console_key = b.execute("return document.getElementById('tryit-key').value").await;
    assert!(console_key.as_str().is_some_and(|k| k.starts_with("atr_") && k != key), "{console_key}");
    b.click("#op-1 summary").await;
    b.click("#op-1 form.tryit button[type=submit]").await;
    let status = b.wait_text("#op-1 .tryit-result .status", "200", Duration::from_secs(15)).await;
    assert!(status.starts_with("200"), "{status}");
    let headers = b.text("#op-1 .tryit-result .headers").await;
    assert!(headers.contains("x-traefik-backend: cluster-a"), "the answer came from cluster-a: {headers}");
    assert!(headers.contains("x-ratelimit-remaining"), "the plan's headers are readable: {headers}");
    let body = b.text("#op-1 .tryit-result .body").await;
    assert!(body.contains("path=/employees") && body.contains("team=sales"), "{body}");
    b.screenshot(&shots.join("api-try-it.png")).await;
    // The backend saw the call.
    assert!(crm.seen.lock().unwrap().iter().any(|s| s.starts_with("GET /employees")));

    // Signing out ends the session: the catalog asks for a login again.
    b.click("nav form button[type=submit]").await;
    eventually(Duration::from_secs(10), "signing out lands on the login page", || async {
        b.url().await.ends_with("/login").then_some(())
    })
    .await;
    b.goto(&format!("{portal}/")).await;
    assert!(b.url().await.ends_with("/login"), "the session is over: {}", b.url().await);
}
