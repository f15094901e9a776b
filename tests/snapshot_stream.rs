//! Control plane → data planes, end to end: real processes on loopback, mutual TLS with
//! the development PKI the control plane creates.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::backend;
use common::client::{self, get};
use common::gateway::GatewayProc;

fn manifests(dir: &Path, backend: std::net::SocketAddr, stamp: &str) {
    fs::create_dir_all(dir).unwrap();
    fs::write(
        dir.join("all.yaml"),
        format!(
            "apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata: {{name: r, namespace: ns}}
spec:
  entryPoints: [web]
  routes:
    - match: PathPrefix(`/`)
      middlewares: [{{name: stamp}}]
      services: [{{name: svc, port: 80}}]
---
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: {{name: stamp, namespace: ns}}
spec: {{headers: {{customResponseHeaders: {{X-Stamp: \"{stamp}\"}}}}}}
",
        ) + &common::service_manifests("ns", "svc", &[backend]),
    )
    .unwrap();
}

fn control_plane(root: &Path, grpc: &str) -> GatewayProc {
    let args: Vec<String> = [
        "control-plane",
        "--manifests",
        &root.join("manifests").display().to_string(),
        "--grpc",
        grpc,
        "--data-plane",
        "none",
        "--watch-debounce-ms",
        "20",
        "--state-dir",
        &root.join("cp").display().to_string(),
        "--admin",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    GatewayProc::spawn(&args, 0, true)
}

fn data_plane(root: &Path, grpc: std::net::SocketAddr, id: &str) -> GatewayProc {
    data_plane_with(root, grpc, id, "off")
}

/// [`data_plane`] with its `websecure` entrypoint at `websecure` (`off`, or an address).
fn data_plane_with(root: &Path, grpc: std::net::SocketAddr, id: &str, websecure: &str) -> GatewayProc {
    let args = data_plane_args(root, grpc, id, websecure, &[]);
    GatewayProc::spawn(&args, if websecure == "off" { 1 } else { 2 }, false)
}

/// The flags of data plane `id` of the control plane at `grpc` (its files under
/// `root/<id>`, the certificates of `root/cp/pki`), `extra` last.
fn data_plane_args(root: &Path, grpc: std::net::SocketAddr, id: &str, websecure: &str, extra: &[&str]) -> Vec<String> {
    common::topology::data_plane_args(root, &root.join("cp/pki"), grpc, id, websecure, extra)
}

async fn dataplanes(cp: &GatewayProc) -> serde_json::Value {
    serde_json::from_str(&get(&format!("http://{}/api/dataplanes", cp.admin)).await.body).unwrap()
}

/// Waits until every node in `ids` is connected and has applied the control plane's
/// current version.
async fn converged(cp: &GatewayProc, ids: &[&str]) -> serde_json::Value {
    common::eventually(Duration::from_secs(20), "the data planes converge", || async {
        let v = dataplanes(cp).await;
        let current = |id: &&str| v["dataplanes"][id]["connected"] == true && v["dataplanes"][id]["current"] == true;
        ids.iter().all(current).then_some(v)
    })
    .await
}

async fn stamp(dp: &GatewayProc) -> Option<String> {
    get(&dp.web("/x")).await.header("x-stamp").map(str::to_string)
}

async fn wait_stamp(dp: &GatewayProc, want: &str) {
    let what = format!("the data plane serves stamp {want}");
    common::eventually(Duration::from_secs(20), &what, || async {
        (stamp(dp).await.as_deref() == Some(want)).then_some(())
    })
    .await;
}

fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_data_planes_converge_survive_the_control_plane_and_reconnect() {
    let be = backend::start("b", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    manifests(&root.join("manifests"), be.addr, "v1");
    let grpc_addr = free_port();
    let mut cp = control_plane(root, &grpc_addr);
    let grpc = cp.grpc.unwrap();
    let mut dps: Vec<GatewayProc> = ["dp-1", "dp-2", "dp-3"].iter().map(|id| data_plane(root, grpc, id)).collect();
    let ids = ["dp-1", "dp-2", "dp-3"];
    let v = converged(&cp, &ids).await;
    let first_seq = v["version"]["seq"].as_u64().unwrap();
    for dp in &dps {
        wait_stamp(dp, "v1").await;
    }
    // Private keys stay private; the cache is 0600 and carries no key.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let cache = root.join("dp-1/cache/snapshot.pb");
        assert_eq!(fs::metadata(&cache).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!String::from_utf8_lossy(&fs::read(&cache).unwrap()).contains("PRIVATE KEY"));
    }

    // A manifest edit reaches all three, and they all ACK the same version.
    manifests(&root.join("manifests"), be.addr, "v2");
    for dp in &dps {
        wait_stamp(dp, "v2").await;
    }
    let v = converged(&cp, &ids).await;
    let seq = v["version"]["seq"].as_u64().unwrap();
    assert!(seq > first_seq);
    for id in ids {
        assert_eq!(v["dataplanes"][id]["appliedVersion"]["seq"].as_u64(), Some(seq));
    }
    let metrics = get(&format!("http://{}/metrics", cp.admin)).await.body;
    assert!(metrics.contains("atrium_dataplanes_connected 3"), "{metrics}");
    // Usage reports: the requests served above reach the control plane.
    common::eventually(Duration::from_secs(10), "the usage report of dp-1", || async {
        let v = dataplanes(&cp).await;
        (v["dataplanes"]["dp-1"]["requestsByRouter"]["ns/r/0"].as_u64().unwrap_or(0) > 0).then_some(())
    })
    .await;
    assert!(metrics.contains("atrium_snapshot_propagation_seconds_count"), "{metrics}");

    // The control plane is killed: every data plane keeps serving every request.
    cp.kill();
    let http = client::http1();
    for i in 0..150 {
        let dp = &dps[i % 3];
        let r = client::send(&http, hyper::Request::get(dp.web("/x")).body(client::body("")).unwrap()).await;
        assert_eq!((r.status, r.header("x-stamp")), (200, Some("v2")), "request {i} while the control plane is down");
    }

    // A data plane restarted while the control plane is down serves from its cache.
    dps[2].kill();
    dps[2] = data_plane(root, grpc, "dp-3");
    assert!(dps[2].logged("serving the cached snapshot"));
    assert_eq!(stamp(&dps[2]).await.as_deref(), Some("v2"));

    // The control plane comes back (new epoch, same configuration): everyone reconnects
    // and converges, without a table change.
    manifests(&root.join("manifests"), be.addr, "v3");
    let cp = control_plane(root, &grpc_addr);
    let v = converged(&cp, &ids).await;
    assert_ne!(v["epoch"], serde_json::Value::Null);
    for dp in &dps {
        wait_stamp(dp, "v3").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_cache_is_survived() {
    let be = backend::start("b", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    manifests(&root.join("manifests"), be.addr, "fresh");
    let cp = control_plane(root, "127.0.0.1:0");
    let cache: PathBuf = root.join("dp-x/cache");
    fs::create_dir_all(&cache).unwrap();
    fs::write(cache.join("snapshot.pb"), b"\x0a\x03not a snapshot at all").unwrap();
    let dp = data_plane(root, cp.grpc.unwrap(), "dp-x");
    assert!(dp.wait_logged("ignoring the snapshot cache").await, "{:?}", dp.log.lock().unwrap());
    wait_stamp(&dp, "fresh").await;
    converged(&cp, &["dp-x"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_plane_with_a_certificate_from_another_ca_is_refused() {
    let be = backend::start("b", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    manifests(&root.join("manifests"), be.addr, "v1");
    let cp = control_plane(root, "127.0.0.1:0");
    // Another installation's CA.
    let other = root.join("other-pki");
    assert!(atrium_data_plane::pki::init_ca(&other).unwrap());
    atrium_data_plane::pki::issue(&other, "data-plane", atrium_data_plane::pki::Role::DataPlane, &[]).unwrap();
    let args: Vec<String> = [
        "data-plane",
        "--control-plane",
        &format!("https://{}", cp.grpc.unwrap()),
        "--node-id",
        "intruder",
        "--cache-dir",
        &root.join("intruder/cache").display().to_string(),
        "--state-dir",
        &root.join("intruder/state").display().to_string(),
        "--tls-dir",
        &other.display().to_string(),
        "--entrypoint",
        "web=127.0.0.1:0",
        "--entrypoint",
        "websecure=off",
        "--admin",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let dp = GatewayProc::spawn(&args, 1, false);
    assert!(dp.wait_logged("snapshot stream failed").await, "the refusal was not logged");
    assert_eq!(get(&dp.web("/x")).await.status, 503, "no configuration was ever accepted");
    let v = dataplanes(&cp).await;
    assert!(v["dataplanes"].get("intruder").is_none(), "{v:#}");
    assert!(
        cp.wait_logged("data plane refused: TLS handshake failed").await,
        "the control plane did not log the refusal"
    );

    // The control plane's certificate is renewed on disk: the next handshake uses it, no
    // restart needed, and a data plane of this installation still gets in.
    let role = atrium_data_plane::pki::Role::ControlPlane;
    let renewed = atrium_data_plane::pki::issue(&root.join("cp/pki"), "control-plane", role, &[]).unwrap();
    // A modification time the watcher cannot mistake for the old one, whatever the file
    // system's time granularity.
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    for f in [&renewed.cert, &renewed.key] {
        std::fs::File::options().write(true).open(f).unwrap().set_modified(later).unwrap();
    }
    let good = data_plane(root, cp.grpc.unwrap(), "dp-ok");
    wait_stamp(&good, "v1").await;
    assert!(cp.wait_logged("TLS material reloaded").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_data_plane_serves_the_certificates_routers_name() {
    let be = backend::start("a", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    manifests(&root.join("manifests"), be.addr, "v1");
    let (secret, der) = common::tls_secret("ns", "shop-cert", "shop.test");
    fs::write(
        root.join("manifests/tls.yaml"),
        secret + "---\napiVersion: traefik.io/v1alpha1\nkind: IngressRoute\nmetadata: {name: shop, namespace: ns}\nspec:\n  entryPoints: [websecure]\n  routes:\n    - match: Host(`shop.test`)\n      services: [{name: svc, port: 80}]\n  tls:\n    secretName: shop-cert\n",
    )
    .unwrap();
    let cp = control_plane(root, &free_port());
    let dp = data_plane_with(root, cp.grpc.unwrap(), "edge-1", "127.0.0.1:0");
    converged(&cp, &["edge-1"]).await;

    let (_, leaf, r) = client::tls_get(dp.entry_points["websecure"], "shop.test", "/").await;
    assert_eq!(leaf, der, "the remote data plane presents the Secret's certificate");
    assert_eq!(r.status, 200);
    let (_, other, _) = client::tls_get(dp.entry_points["websecure"], "else.test", "/").await;
    assert_ne!(other, der, "other names get the default certificate");

    // The key travels only inside the mTLS stream and the 0600 cache; the admin API never shows it.
    let raw = get(&format!("http://{}/api/rawdata", dp.admin)).await.body;
    assert!(!raw.contains("PRIVATE KEY") && raw.contains("ns/shop-cert"), "{raw}");
}

/// A certificate of this installation's CA is not enough: a child's (agent) certificate
/// is refused by the snapshot service, so it never receives snapshots and the TLS keys
/// they carry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_childs_certificate_cannot_stream_snapshots() {
    let be = backend::start("b", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    manifests(&root.join("manifests"), be.addr, "v1");
    let cp = control_plane(root, "127.0.0.1:0");
    let pki_dir = root.join("cp/pki");
    atrium_data_plane::pki::issue(&pki_dir, "cluster-a", atrium_data_plane::pki::Role::Agent, &[]).unwrap();
    let args = data_plane_args(root, cp.grpc.unwrap(), "posing-child", "off", &["--tls-name", "cluster-a"]);
    let dp = GatewayProc::spawn(&args, 1, false);
    common::eventually(Duration::from_secs(10), "the control plane logs why it refused", || async {
        cp.logged("the peer's certificate has role agent, and only data-plane may connect here").then_some(())
    })
    .await;
    assert!(dp.wait_logged("snapshot stream failed").await);
    assert_eq!(get(&dp.web("/x")).await.status, 503, "no snapshot was ever received");
    assert!(!root.join("posing-child/cache/snapshot.pb").exists(), "nothing was cached");
    // A real data plane of the same installation gets in.
    let good = data_plane(root, cp.grpc.unwrap(), "dp-ok");
    wait_stamp(&good, "v1").await;
}
