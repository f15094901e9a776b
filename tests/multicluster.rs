//! The seed's multi-cluster topology end to end on this machine: a parent (control plane
//! with its embedded data plane) and two agents on 127.0.0.2 and 127.0.0.3, uplinks over
//! mutual-TLS QUIC, requests routed to the child that serves each API.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use atrium_data_plane::pki;
use common::backend;
use common::client::tls_get;
use common::gateway::GatewayProc;

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn agent(root: &Path, name: &str, ip: &str, api: &str, backend: std::net::SocketAddr) -> GatewayProc {
    let m = root.join(name);
    common::copy_dir(&common::example().join(format!("{name}/manifests")), &m);
    let eps = m.join(format!("{api}-endpoints.yaml"));
    let text = fs::read_to_string(&eps)
        .unwrap()
        .replace(&format!("\"{ip}\""), &format!("\"{}\"", backend.ip()))
        .replace("port: 8080", &format!("port: {}", backend.port()));
    fs::write(&eps, text).unwrap();
    let up = m.join("uplink.yaml");
    fs::write(&up, fs::read_to_string(&up).unwrap().replace("interval: 5s", "interval: 200ms")).unwrap();
    GatewayProc::spawn(
        &strings(&[
            "agent",
            "--cluster",
            name,
            "--manifests",
            m.to_str().unwrap(),
            "--values",
            common::example().join(format!("{name}/values.yaml")).to_str().unwrap(),
            "--tls-dir",
            root.join("pki").to_str().unwrap(),
            "--state-dir",
            root.join(format!("{name}-state")).to_str().unwrap(),
            "--entrypoint",
            &format!("web={ip}:0"),
            "--entrypoint",
            "websecure=off",
            "--entrypoint",
            &format!("multicluster={ip}:0"),
            "--admin",
            &format!("{ip}:0"),
            "--workers",
            "1",
        ]),
        2,
        false,
    )
}

async fn until_status(ws: std::net::SocketAddr, path: &str, want: u16) -> common::client::Resp {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, _, r) = tls_get(ws, "api.example.com", path).await;
        if r.status == want {
            return r;
        }
        assert!(Instant::now() < deadline, "{path} never answered {want}; last: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_routing_through_uplinks_and_failover_to_503() {
    let crm = backend::start("crm", "127.0.0.2").await;
    let billing = backend::start("billing", "127.0.0.3").await;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let pki_dir = root.join("pki");
    pki::init_ca(&pki_dir).unwrap();
    for n in ["cluster-a", "cluster-b", "control-plane", "data-plane"] {
        pki::issue(&pki_dir, n, &["127.0.0.2".into(), "127.0.0.3".into()]).unwrap();
    }
    let mut a = agent(root, "cluster-a", "127.0.0.2", "crm", crm.addr);
    let b = agent(root, "cluster-b", "127.0.0.3", "billing", billing.addr);

    // The parent: the seed's manifests and values, with the children's actual ports.
    let parent = root.join("parent");
    common::copy_dir(&common::example().join("parent"), &parent);
    let values = parent.join("values.yaml");
    let text = fs::read_to_string(&values)
        .unwrap()
        .replace("https://127.0.0.2:9443", &format!("https://{}", a.entry_points["multicluster"]))
        .replace("https://127.0.0.3:9443", &format!("https://{}", b.entry_points["multicluster"]));
    fs::write(&values, text).unwrap();
    let cp = GatewayProc::spawn(
        &strings(&[
            "control-plane",
            "--values",
            values.to_str().unwrap(),
            "--manifests",
            parent.join("manifests").to_str().unwrap(),
            "--grpc",
            "127.0.0.1:0",
            "--tls-dir",
            pki_dir.to_str().unwrap(),
            "--state-dir",
            root.join("cp-state").to_str().unwrap(),
            "--entrypoint",
            "web=127.0.0.1:0",
            "--entrypoint",
            "websecure=127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
        ]),
        2,
        true,
    );
    let ws = cp.entry_points["websecure"];

    // The seed's verification: each API answers from its own child.
    let r = until_status(ws, "/crm/health", 200).await;
    assert_eq!(r.body, "health");
    assert_eq!(r.header("x-traefik-backend"), Some("cluster-a"));
    let r = until_status(ws, "/billing/health", 200).await;
    assert_eq!(r.header("x-traefik-backend"), Some("cluster-b"));
    assert!(cp.logged("uplink connected"), "the parent logs each uplink connection");

    // cluster-a dies without a word: crm has no healthy target left and answers 503 (no
    // hang), while billing keeps working.
    a.kill();
    let start = Instant::now();
    until_status(ws, "/crm/health", 503).await;
    assert!(start.elapsed() < Duration::from_secs(5), "noticed in {:?}", start.elapsed());
    let r = until_status(ws, "/billing/health", 200).await;
    assert_eq!(r.header("x-traefik-backend"), Some("cluster-b"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cp.logged("child unreachable") {
        assert!(Instant::now() < deadline, "the parent did not log the unreachable child");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
