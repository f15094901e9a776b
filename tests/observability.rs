//! What an operator checks first, on the seed's topology: the control plane's admin root
//! lists its endpoints; `/ui` and its JSON twin `/api/state` show each child (reachable,
//! uplinks with weight and health), each data plane (the embedded one included) with the
//! version it applied, and each API with its routes; `/metrics` has a sample for every
//! child and uplink from the start; every metric the shipped alert rules and dashboard
//! use is exposed; the log level changes at runtime; logs come as JSON on request. Each
//! component's `/metrics` counts known traffic: the control plane, a data plane and an
//! agent.

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

/// The sum of the samples of `name` whose labels contain every one of `labels` (0 when
/// there is none).
fn sum(scrape: &str, name: &str, labels: &[&str]) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_components_metrics_count_known_traffic() {
    let crm = backend::start("crm", "127.0.0.2").await;
    let billing = backend::start("billing", "127.0.0.3").await;
    let dir = topology::seed(crm.addr, billing.addr);
    let t = Topology::start(dir.path(), &Options::default());
    until_status(t.ws(), "/crm/health", 200).await;
    let root = dir.path();
    let grpc = t.parent.grpc.expect("the control plane serves gRPC");
    let args = topology::data_plane_args(root, &root.join("pki"), grpc, "dp-1", "127.0.0.1:0", &[]);
    let dp = common::gateway::GatewayProc::spawn(&args, 2, false);
    let dp_ws = dp.entry_points["websecure"];
    until_status(dp_ws, "/crm/health", 200).await;
    let scrape = |admin: std::net::SocketAddr| async move {
        let r = common::client::get(&format!("http://{admin}/metrics")).await;
        assert_eq!(r.status, 200);
        r.body
    };
    let agent_admin = t.child("cluster-a").admin;
    let before = scrape(agent_admin).await;
    let served_before = sum(&before, "atrium_requests_total", &["code=\"200\""]);

    // Known traffic through the separate data plane: 7 keyed calls, 2 without a key.
    for _ in 0..7 {
        assert_eq!(topology::get(dp_ws, "/crm/employees").await.status, 200);
    }
    for _ in 0..2 {
        let r = common::client::tls_get_with(dp_ws, "api.example.com", "/crm/employees", &[]).await.2;
        assert_eq!(r.status, 401);
    }

    // The data plane: requests and latency by router, limit decisions by plan, its QUIC
    // connections, streams and RTT to the child, the table version it runs.
    let d = scrape(dp.admin).await;
    assert!(sum(&d, "atrium_requests_total", &["code=\"200\"", "crm"]) >= 7.0, "{d}");
    assert_eq!(sum(&d, "atrium_requests_total", &["code=\"401\""]), 2.0, "{d}");
    assert!(sum(&d, "atrium_request_duration_seconds_count", &["crm"]) >= 9.0, "{d}");
    assert!(sum(&d, "atrium_plan_limit_decisions_total", &["unlimited-test", "result=\"allowed\""]) >= 7.0, "{d}");
    assert!(sum(&d, "atrium_uplink_connections", &["child=\"cluster-a\""]) >= 1.0, "{d}");
    assert!(sum(&d, "atrium_uplink_streams_opened_total", &["child=\"cluster-a\""]) >= 1.0, "{d}");
    let rtt = sum(&d, "atrium_uplink_rtt_seconds", &["child=\"cluster-a\""]);
    assert!(rtt > 0.0 && rtt < 1.0, "a loopback RTT: {rtt}\n{d}");
    assert!(sum(&d, "atrium_route_table_version", &[]) >= 1.0, "{d}");
    assert_eq!(sum(&d, "atrium_control_plane_connected", &["node=\"dp-1\""]), 1.0, "{d}");

    // The control plane: children reachable, their RTT, uplinks healthy, data planes
    // connected and current, propagation times.
    let c = scrape(t.parent.admin).await;
    assert_eq!(sum(&c, "atrium_child_reachable", &["cluster-a"]), 1.0, "{c}");
    let rtt = sum(&c, "atrium_child_rtt_seconds", &["child=\"cluster-a\""]);
    assert!(rtt > 0.0 && rtt < 1.0, "a loopback RTT: {rtt}\n{c}");
    assert_eq!(sum(&c, "atrium_uplink_healthy", &["child=\"cluster-a\"", "uplink=\"crm\""]), 1.0, "{c}");
    assert!(sum(&c, "atrium_dataplanes_connected", &[]) >= 1.0, "{c}");
    assert_eq!(sum(&c, "atrium_dataplane_current", &["node=\"dp-1\""]), 1.0, "{c}");
    assert!(sum(&c, "atrium_snapshot_propagation_seconds_count", &[]) >= 1.0, "{c}");
    let children: Value =
        serde_json::from_str(&common::client::get(&format!("http://{}/api/children", t.parent.admin)).await.body)
            .unwrap();
    assert!(children["cluster-a"]["rttMs"].as_f64().is_some_and(|ms| ms > 0.0), "{children}");
    assert!(common::client::get(&format!("http://{}/ui", t.parent.admin)).await.body.contains(" ms</td>"));

    // The agent: the 7 calls it served, its health checks with their latency, the streams
    // parents opened, parents connected.
    let a = scrape(agent_admin).await;
    assert!(sum(&a, "atrium_requests_total", &["code=\"200\""]) - served_before >= 7.0, "{a}");
    assert!(sum(&a, "atrium_agent_health_checks_total", &["uplink=\"crm\"", "result=\"pass\""]) >= 1.0, "{a}");
    assert!(sum(&a, "atrium_agent_health_check_duration_seconds_count", &["uplink=\"crm\""]) >= 1.0, "{a}");
    assert!(sum(&a, "atrium_agent_uplink_streams_total", &["uplink=\"crm\"", "kind=\"data\""]) >= 1.0, "{a}");
    assert!(sum(&a, "atrium_agent_uplink_streams_total", &["kind=\"control\""]) >= 1.0, "{a}");
    assert!(sum(&a, "atrium_agent_parents_connected", &[]) >= 2.0, "the control plane and the data planes: {a}");
    assert_eq!(sum(&a, "atrium_agent_uplink_healthy", &["uplink=\"crm\""]), 1.0, "{a}");
    let uplinks: Value =
        serde_json::from_str(&common::client::get(&format!("http://{agent_admin}/api/uplinks")).await.body).unwrap();
    let u = uplinks["uplinks"].as_array().unwrap().iter().find(|u| u["name"] == "crm").expect("crm").clone();
    assert_eq!((u["healthy"].as_bool(), u["lastCheck"]["result"].as_str()), (Some(true), Some("pass")), "{uplinks}");
    assert!(u["lastCheck"]["durationMs"].as_f64().is_some() && u["streamsServed"].as_u64() >= Some(1), "{uplinks}");
    assert_eq!(uplinks["cluster"], "cluster-a");
    let root = common::client::get(&format!("http://{agent_admin}/")).await.body;
    assert!(root.contains("/api/uplinks"), "{root}");
}

/// `promtool` checks the rules and runs their unit tests
/// (`deploy/observability/prometheus-rules.test.yaml`: which alert fires when, with its
/// labels and text). CI installs it; without it the rules are still parsed above.
#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = common::repo().join("deploy/observability");
    let promtool = |args: &[&str]| match Command::new("promtool").args(args).current_dir(&dir).output() {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::env::var_os("CI_REQUIRE_PROMTOOL").is_none() => None,
        Err(e) => panic!("promtool: {e}"),
    };
    let Some(check) = promtool(&["check", "rules", "prometheus-rules.yaml"]) else {
        eprintln!("promtool is not installed: the rules were only parsed (tests above)");
        return;
    };
    let text = format!("{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    assert!(check.status.success() && text.contains("SUCCESS: 8 rules found"), "{text}");
    let tested = promtool(&["test", "rules", "prometheus-rules.test.yaml"]).unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&tested.stdout), String::from_utf8_lossy(&tested.stderr));
    assert!(tested.status.success() && text.contains("SUCCESS"), "{text}");
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
