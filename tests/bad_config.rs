//! Configuration that must be refused without harm: a reload of a broken file (100,000
//! levels of nesting, an alias bomb) is refused and counted while the last good table keeps
//! serving; an invalid object (huge durations) is left out and counted while every other
//! object is served; `lint` and a starting gateway report it with file and line instead of
//! crashing.

mod common;

use std::fs;
use std::time::Duration;

use common::backend;
use common::gateway::GatewayProc;

fn good(be: std::net::SocketAddr) -> String {
    "apiVersion: traefik.io/v1alpha1\nkind: IngressRoute\nmetadata: {name: ok, namespace: ns}\nspec:\n  entryPoints: [web]\n  routes:\n    - match: PathPrefix(`/ok`)\n      services: [{name: svc, port: 80}]\n".to_string()
        + &common::service_manifests("ns", "svc", &[be])
}

/// A middleware whose `period` is 10^30 seconds (a string holding a bare number: seconds).
const HUGE_DURATION: &str = "apiVersion: traefik.io/v1alpha1\nkind: Middleware\nmetadata: {name: slow, namespace: ns}\nspec:\n  rateLimit:\n    average: 1\n    period: \"1e30\"\n";

async fn failures(gw: &GatewayProc) -> u64 {
    let text = common::client::get(&format!("http://{}/metrics", gw.admin)).await.body;
    common::metric(&text, "atrium_route_table_swap_failures_total")
}

async fn left_out(gw: &GatewayProc) -> u64 {
    let text = common::client::get(&format!("http://{}/metrics", gw.admin)).await.body;
    common::metric(&text, "atrium_config_objects_left_out")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_reload_is_refused_and_counted_and_the_last_good_table_serves() {
    let be = backend::start("svc", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("good.yaml"), good(be.addr)).unwrap();
    let mut gw = GatewayProc::start(None, tmp.path(), &[]);
    assert_eq!(common::client::get(&gw.web("/ok")).await.status, 200);

    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        bomb.push_str(&format!("a{i}: &a{i} [{}]\n", vec![format!("*a{}", i - 1); 9].join(", ")));
    }
    let health = "apiVersion: traefik.io/v1alpha1\nkind: TraefikService\nmetadata: {name: checked, namespace: ns}\nspec:\n  weighted:\n    services:\n      - name: svc\n        port: 80\n        healthCheck: {path: /health, interval: \"99999999999999999999s\"}\n---\napiVersion: traefik.io/v1alpha1\nkind: IngressRoute\nmetadata: {name: hc, namespace: ns}\nspec:\n  routes:\n    - match: PathPrefix(`/hc`)\n      services: [{name: checked, kind: TraefikService}]\n";
    // (case, text, what the log says, whether the whole file is refused or its objects left out)
    let cases = [
        ("huge duration", HUGE_DURATION.to_string(), "out of range", false),
        ("huge health-check interval", health.to_string(), "out of range", false),
        ("deep nesting", "- ".repeat(100_000) + "x\n", "nesting deeper than 128 levels", true),
        ("alias bomb", bomb, "aliases expand to more than", true),
    ];
    for (what, text, says, refused) in &cases {
        let before = failures(&gw).await;
        fs::write(tmp.path().join("bad.yaml"), text).unwrap();
        if *refused {
            common::eventually(Duration::from_secs(10), &format!("{what}: the refusal is counted"), || async {
                (failures(&gw).await > before).then_some(())
            })
            .await;
        } else {
            common::eventually(Duration::from_secs(10), &format!("{what}: the object is left out"), || async {
                (left_out(&gw).await > 0).then_some(())
            })
            .await;
            assert_eq!(failures(&gw).await, before, "{what}: the rest is served, not refused");
        }
        assert_eq!(common::client::get(&gw.web("/ok")).await.status, 200, "{what}: the last good table serves");
        assert!(gw.wait_logged(says).await, "{what}: the log says why");
        assert!(gw.wait_logged("bad.yaml:").await, "{what}: the log names the file and line");
        assert!(gw.wait_exit(Duration::ZERO).is_none(), "{what}: the gateway is still running");
        // Back to a good state before the next case.
        fs::remove_file(tmp.path().join("bad.yaml")).unwrap();
        common::eventually(Duration::from_secs(10), &format!("{what}: nothing left out once removed"), || async {
            (left_out(&gw).await == 0).then_some(())
        })
        .await;
    }
    assert!(!gw.logged("panicked"), "no reload panicked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lint_and_a_starting_gateway_report_a_huge_duration_with_its_place() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("slow.yaml");
    fs::write(&file, HUGE_DURATION).unwrap();
    let out = common::atrium(["lint", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "an error, not a crash: {}", common::stderr(&out));
    let text = common::stdout(&out);
    assert!(text.contains("slow.yaml:") && text.contains("out of range"), "{text}");

    // A gateway starts without the invalid object, says why with its place, and serves.
    let mut gw = GatewayProc::start(None, tmp.path(), &[]);
    assert!(gw.wait_logged("out of range").await && gw.wait_logged("slow.yaml:").await);
    assert!(gw.wait_exit(Duration::ZERO).is_none(), "still running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_gateway_leaves_an_invalid_object_out_and_counts_it() {
    let be = backend::start("svc", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("good.yaml"), good(be.addr)).unwrap();
    fs::write(tmp.path().join("slow.yaml"), HUGE_DURATION).unwrap();
    let gw = GatewayProc::start(None, tmp.path(), &[]);
    assert_eq!(common::client::get(&gw.web("/ok")).await.status, 200, "the valid objects are served");
    assert_eq!(left_out(&gw).await, 1);
    assert!(gw.wait_logged("Middleware ns/slow").await, "the log names the object");
}
