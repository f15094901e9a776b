//! The portal's REST API fuzzed from its own OpenAPI document with schemathesis (PyPI,
//! installed by `.ci/run`), through a data plane, as a signed-in user: a bounded number of
//! generated requests per operation, and not one may answer 5xx.

mod common;

use std::fs;
use std::process::Command;
use std::time::Duration;

use common::portal::{Parent, add_user, sign_in};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_api_answers_no_5xx_to_generated_requests() {
    let be = common::backend::start("crm", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir_all(tmp.path().join("m")).unwrap();
    fs::create_dir_all(tmp.path().join("specs")).unwrap();
    let m = String::from(
        "apiVersion: hub.traefik.io/v1alpha1
kind: APIPortal
metadata: {name: company, namespace: apps}
spec: {title: Fuzzed, trustedUrls: ['http://portal.test']}
---
",
    ) + &common::portal::portal_route("apps", "company", "portal.test")
        + "apiVersion: hub.traefik.io/v1alpha1
kind: API
metadata: {name: crm, namespace: apps}
spec: {title: CRM API}
---
apiVersion: hub.traefik.io/v1alpha1
kind: APIPlan
metadata: {name: standard, namespace: apps}
spec: {title: Standard}
---
apiVersion: hub.traefik.io/v1alpha1
kind: APICatalogItem
metadata: {name: standard, namespace: apps}
spec: {groups: [developers], apis: [{name: crm}], apiPlan: {name: standard}}
---
" + &common::service_manifests("apps", "svc", &[be.addr]);
    fs::write(tmp.path().join("m/all.yaml"), m).unwrap();
    let store = tmp.path().join("state/portal.db").display().to_string();
    let otp = add_user(&store, "fuzz@example.com", &["developers"]);
    let p = Parent::start(tmp.path()).await;
    let s = sign_in(&p, "portal.test", "fuzz@example.com", &otp).await;
    // Something to act on: an application with a key and a subscription.
    let app = p.call("POST", "portal.test", "/api/applications", Some(&s), Some(r#"{"name":"seed"}"#.into())).await;
    assert_eq!(app.status, 201, "{app:?}");

    let doc = p.call("GET", "portal.test", "/api/openapi.json", None, None).await;
    assert_eq!(doc.status, 200);
    let schema = tmp.path().join("openapi.json");
    fs::write(&schema, &doc.body).unwrap();
    let base = format!("http://{}", p.cp.web_addr());
    let dir = tmp.path().to_path_buf();
    let run = tokio::task::spawn_blocking(move || {
        Command::new("schemathesis")
            .args(["run", schema.to_str().unwrap(), "--url", &base])
            .args(["--checks", "not_a_server_error", "--max-examples", "25", "--seed", "1", "--workers", "1"])
            .args(["--request-timeout", "30", "--phases", "examples,coverage,fuzzing"])
            // Signing out or changing the password would end the fuzzing session.
            .args(["--exclude-path", "/api/logout", "--exclude-path", "/api/account/password"])
            .args(["-H", "Host: portal.test", "-H", "Origin: http://portal.test"])
            .args(["-H", &format!("Cookie: {}", s.cookie), "-H", &format!("X-CSRF-Token: {}", s.csrf)])
            .env("NO_COLOR", "1")
            // Its cache goes into the working directory: keep it out of the repository.
            .current_dir(&dir)
            .output()
    });
    let out = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("schemathesis finishes within 10 minutes")
        .unwrap()
        .expect("schemathesis runs (pip install schemathesis; .ci/run does it)");
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found failures:\n{text}");
    assert!(
        text.contains("12 selected") && text.contains("Fuzzing"),
        "every operation but the two excluded was fuzzed:\n{text}"
    );
    assert!(!p.cp.logged("panicked"), "no panic in the control plane");
}
