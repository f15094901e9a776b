//! What an operator checks first, on the seed's topology: the control plane's admin root
//! lists its endpoints; `/ui` and its JSON twin `/api/state` show each child (reachable,
//! uplinks with weight and health), each data plane (the embedded one included) with the
//! version it applied, and each API with its routes; `/metrics` has a sample for every
//! child and uplink from the start; every metric the shipped alert rules and dashboard
//! use is exposed; the log level changes at runtime; logs come as JSON on request.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::backend;
use common::topology::{self, Options, Topology, until_status};
use serde_json::Value;

/// The `atrium_…` names in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"atrium_[a-z_]+").unwrap();
    re.find_iter(expr).map(|m| m.as_str().to_string()).collect()
}

/// Whether a scrape exposes `name` (a family, or one of its `_total`/`_bucket`/… samples).
fn exposed(scrape: &str, name: &str) -> bool {
    let base = ["_total", "_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
    scrape.lines().any(|l| {
        l.starts_with(&format!("# TYPE {base} "))
            || l.starts_with(&format!("# TYPE {name} "))
            || l.starts_with(&format!("{name}{{"))
            || l.starts_with(&format!("{name} "))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_view_metrics_and_log_level_of_a_running_parent() {
    let crm = backend::start("crm", "127.0.0.2").await;
    let billing = backend::start("billing", "127.0.0.3").await;
    let dir = topology::seed(crm.addr, billing.addr);
    let t = Topology::start(dir.path(), &Options::default());
    until_status(t.ws(), "/crm/health", 200).await;
    until_status(t.ws(), "/billing/health", 200).await;
    let admin = |p: &str| format!("http://{}{p}", t.parent.admin);

    // The root lists what the admin port serves.
    let root = common::client::get(&admin("/")).await;
    assert_eq!(root.status, 200);
    for e in
        ["/healthz", "/readyz", "/metrics", "/ui", "/api/state", "/api/children", "/api/dataplanes", "/api/log-level"]
    {
        assert!(root.body.contains(e), "{e} in\n{}", root.body);
    }

    // The multi-cluster state, as JSON and as a page.
    let state: Value = serde_json::from_str(&common::client::get(&admin("/api/state")).await.body).unwrap();
    for (child, uplink) in [("cluster-a", "crm"), ("cluster-b", "billing")] {
        let c = &state["children"][child];
        assert_eq!(c["reachable"], true, "{state}");
        assert!(c["address"].as_str().unwrap().starts_with("https://127.0.0."), "{c}");
        let u = c["uplinks"].as_array().unwrap().iter().find(|u| u["name"] == uplink).unwrap();
        assert_eq!((u["healthy"].as_bool(), u["weight"].as_u64()), (Some(true), Some(1)), "{u}");
    }
    let embedded = &state["dataplanes"]["embedded"];
    assert_eq!((embedded["connected"].as_bool(), embedded["current"].as_bool()), (Some(true), Some(true)), "{state}");
    let crm_api = state["apis"].as_array().unwrap().iter().find(|a| a["id"] == "apps/crm-api").expect("the crm API");
    assert!(!crm_api["routes"].as_array().unwrap().is_empty(), "{crm_api}");
    let page = common::client::get(&admin("/ui")).await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    for want in ["cluster-a", "cluster-b", "reachable", "crm (weight 1, healthy)", "embedded", "apps/crm-api"] {
        assert!(page.body.contains(want), "{want} in the page");
    }

    // Every child and uplink has a sample from the start; the rules' and the dashboard's
    // metrics all exist.
    let parent_scrape = common::client::get(&admin("/metrics")).await.body;
    for line in [
        "atrium_child_reachable{child=\"cluster-a\"} 1",
        "atrium_uplink_healthy{child=\"cluster-b\",uplink=\"billing\"} 1",
        "atrium_dataplane_current{node=\"embedded\"} 1",
    ] {
        assert!(parent_scrape.contains(line), "{line} in\n{parent_scrape}");
    }
    let child_scrape = common::client::get(&format!("http://{}/metrics", t.child("cluster-a").admin)).await.body;
    let scrapes = format!("{parent_scrape}\n{child_scrape}");
    let rules_text =
        std::fs::read_to_string(common::repo().join("deploy/observability/prometheus-rules.yaml")).unwrap();
    let rules: Value =
        atrium_model::yaml::from_node(&atrium_model::yaml::parse_documents(&rules_text).unwrap()[0]).unwrap();
    let mut used = BTreeSet::new();
    for r in rules["groups"][0]["rules"].as_array().unwrap() {
        assert!(
            r["alert"].is_string() && r["labels"]["severity"].is_string() && r["annotations"]["summary"].is_string(),
            "{r}"
        );
        used.extend(metric_names(r["expr"].as_str().unwrap()));
    }
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(common::repo().join("deploy/observability/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    for p in dashboard["panels"].as_array().unwrap() {
        for target in p["targets"].as_array().unwrap() {
            used.extend(metric_names(target["expr"].as_str().unwrap()));
        }
    }
    assert!(used.len() >= 10, "{used:?}");
    for name in &used {
        assert!(exposed(&scrapes, name), "{name} is used by deploy/observability but not exposed");
    }

    // The log level changes at runtime.
    let level = common::client::get(&admin("/api/log-level")).await;
    assert_eq!(level.status, 200);
    assert!(level.body.contains("info"), "{}", level.body);
    let put = |body: &'static str| {
        let url = admin("/api/log-level");
        async move {
            let req = hyper::Request::put(url).body(common::client::body(body)).unwrap();
            common::client::send(&common::client::http1(), req).await
        }
    };
    let r = put("info,atrium_control_plane=debug").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(common::client::get(&admin("/api/log-level")).await.body.contains("atrium_control_plane=debug"));
    assert!(t.parent.wait_logged("log level changed").await);
    let r = put("info,a=[[").await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        common::client::get(&admin("/api/log-level")).await.body.contains("atrium_control_plane=debug"),
        "unchanged"
    );
}

#[test]
fn logs_come_as_json_lines_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_atrium"))
        .args(["--log-format", "json", "gateway", "--manifests"])
        .arg(tmp.path())
        .args(["--entrypoint", "web=127.0.0.1:0", "--entrypoint", "websecure=off"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let line = loop {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("a listening line");
        if line.contains("entrypoint listening") {
            break line;
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["level"], "INFO", "{v}");
    assert_eq!(v["message"], "entrypoint listening", "{v}");
    assert_eq!(v["name"], "web", "{v}");
    assert!(v["addr"].as_str().unwrap().starts_with("127.0.0.1:"), "{v}");
    assert!(v["timestamp"].is_string(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_without_an_embedded_data_plane_is_ready_once_it_publishes() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("m")).unwrap();
    let args: Vec<String> = [
        "control-plane",
        "--manifests",
        tmp.path().join("m").to_str().unwrap(),
        "--data-plane",
        "none",
        "--grpc",
        "127.0.0.1:0",
        "--state-dir",
        tmp.path().join("state").to_str().unwrap(),
        "--admin",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cp = common::gateway::GatewayProc::spawn(&args, 0, true);
    let r = common::eventually(Duration::from_secs(10), "/readyz 200", || async {
        let r = common::client::get(&format!("http://{}/readyz", cp.admin)).await;
        (r.status == 200).then_some(r)
    })
    .await;
    assert!(r.body.contains("ready"), "{}", r.body);
}
