//! A multi-cluster topology started from a directory, as real processes on loopback.
//!
//! A topology directory is laid out as `deploy/examples/multi-cluster-portal`: `parent/`
//! and one directory per child (`cluster-a/`, …), each with `manifests/` and
//! `values.yaml`. [`seed`] writes a copy of the example that tests may edit (more
//! manifests, other weights) before [`Topology::start`] runs it: a development PKI in
//! `<dir>/pki`, one agent per child on its own loopback address (127.0.0.2, 127.0.0.3, …
//! in name order) with ephemeral ports, and the parent's control plane with its values
//! pointed at the agents' actual uplink ports.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::gateway::GatewayProc;

/// The API key of the test application every topology of [`seed`] and [`crm_pair`]
/// subscribes to both APIs (no limits: tests send many requests).
pub const KEY: &str = "atrium-test-key-8d0f6c1e2b";

/// `Authorization` with [`KEY`].
pub const BEARER: &str = "Bearer atrium-test-key-8d0f6c1e2b";

/// A ManagedApplication with [`KEY`], subscribed to the seed's APIs on a plan without
/// limits.
fn test_application() -> String {
    format!(
        "apiVersion: hub.traefik.io/v1alpha1
kind: ManagedApplication
metadata: {{name: test-app, namespace: apps}}
spec:
  appId: test-app
  owner: tests
  apiKeys: [{{value: {KEY}}}]
---
apiVersion: hub.traefik.io/v1alpha1
kind: APIPlan
metadata: {{name: unlimited-test, namespace: apps}}
spec: {{title: Unlimited (tests)}}
---
apiVersion: hub.traefik.io/v1alpha1
kind: ManagedSubscription
metadata: {{name: test-app, namespace: apps}}
spec:
  apiPlan: {{name: unlimited-test}}
  managedApplications: [{{name: test-app}}]
  apis: [{{name: crm-api}}, {{name: billing-api}}]
"
    )
}

/// `GET path` on `ws` (TLS, host `api.example.com`) with the test application's key.
pub async fn get(ws: SocketAddr, path: &str) -> super::client::Resp {
    super::client::tls_get_with(ws, "api.example.com", path, &[("authorization", BEARER)]).await.2
}

/// `&str`s as owned arguments.
pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Replaces each `(from, to)` in the file at `path` (each must be there).
pub fn edit(path: &Path, edits: &[(&str, String)]) {
    let mut text = fs::read_to_string(path).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "{} has no {from:?}", path.display());
        text = text.replace(from, to);
    }
    fs::write(path, text).unwrap();
}

/// A copy of the seed's example in a temporary directory: each child's API endpoints
/// point at its backend (`cluster-a`'s crm at `crm`, `cluster-b`'s billing at `billing`),
/// and uplink health checks run every 200 ms.
pub fn seed(crm: SocketAddr, billing: SocketAddr) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    super::copy_dir(&super::example(), tmp.path());
    point_endpoints(&tmp.path().join("cluster-a"), "crm", crm);
    point_endpoints(&tmp.path().join("cluster-b"), "billing", billing);
    for child in ["cluster-a", "cluster-b"] {
        edit(&tmp.path().join(child).join("manifests/uplink.yaml"), &[("interval: 5s", "interval: 200ms".into())]);
    }
    fs::write(tmp.path().join("parent/manifests/test-application.yaml"), test_application()).unwrap();
    tmp
}

/// A copy of the seed's example where both children serve uplink `crm` (cluster-b a copy
/// of cluster-a) with `weights`, each with its own backend, its responses stamped with its
/// name, and health checks every 100 ms.
pub fn crm_pair(weights: [u32; 2], a: SocketAddr, b: SocketAddr) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    super::copy_dir(&super::example().join("parent"), &tmp.path().join("parent"));
    fs::write(tmp.path().join("parent/manifests/test-application.yaml"), test_application()).unwrap();
    for ((name, backend), weight) in [("cluster-a", a), ("cluster-b", b)].into_iter().zip(weights) {
        let dir = tmp.path().join(name);
        super::copy_dir(&super::example().join("cluster-a"), &dir);
        point_endpoints(&dir, "crm", backend);
        edit(
            &dir.join("manifests/uplink.yaml"),
            &[
                ("interval: 5s", "interval: 100ms".into()),
                ("timeout: 3s", "timeout: 300ms".into()),
                ("  exposeName: crm\n", format!("  exposeName: crm\n  weight: {weight}\n")),
            ],
        );
        edit(
            &dir.join("manifests/crm-api.yaml"),
            &[("X-Traefik-Backend: \"cluster-a\"", format!("X-Traefik-Backend: \"{name}\""))],
        );
    }
    tmp
}

/// Points child `dir`'s `<api>-endpoints.yaml` at `backend`.
pub fn point_endpoints(dir: &Path, api: &str, backend: SocketAddr) {
    let eps = dir.join(format!("manifests/{api}-endpoints.yaml"));
    let text = fs::read_to_string(&eps).unwrap();
    let example_ip = text.split('"').nth(1).expect("the example's endpoint address is quoted").to_string();
    edit(
        &eps,
        &[
            (&format!("\"{example_ip}\""), format!("\"{}\"", backend.ip())),
            ("port: 8080", format!("port: {}", backend.port())),
        ],
    );
}

/// One CA and a certificate per component (the children named), in `<dir>/pki`.
pub fn pki(dir: &Path, children: &[&str]) {
    use atrium_data_plane::pki;
    let pki_dir = dir.join("pki");
    pki::init_ca(&pki_dir).unwrap();
    for n in children.iter().copied().chain(["control-plane", "data-plane"]) {
        let sans = ["127.0.0.2".to_string(), "127.0.0.3".to_string(), "127.0.0.4".to_string()];
        pki::issue(&pki_dir, n, pki::Role::for_name(n), &sans).unwrap();
    }
}

/// How a topology starts, beyond its directory.
#[derive(Default)]
pub struct Options<'a> {
    /// Extra flags per child, by name.
    pub agent_flags: BTreeMap<&'a str, Vec<&'a str>>,
    /// Environment of every process.
    pub env: Vec<(&'a str, &'a str)>,
    /// Extra flags of the control plane.
    pub parent_flags: Vec<&'a str>,
}

/// A running topology; every process is killed when it is dropped.
pub struct Topology {
    /// The children's agents, by name.
    pub children: BTreeMap<String, GatewayProc>,
    /// The parent's control plane (with its embedded data plane).
    pub parent: GatewayProc,
}

impl Topology {
    /// Starts the topology in `dir` (see the module documentation).
    pub fn start(dir: &Path, opts: &Options<'_>) -> Topology {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.path().join("values.yaml").is_file() && e.file_name() != "parent")
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        pki(dir, &names.iter().map(String::as_str).collect::<Vec<_>>());
        let mut children = BTreeMap::new();
        for (i, name) in names.iter().enumerate() {
            let ip = format!("127.0.0.{}", 2 + i);
            let flags = opts.agent_flags.get(name.as_str()).cloned().unwrap_or_default();
            children.insert(name.clone(), spawn_agent(dir, name, &ip, &flags, &opts.env));
        }
        let parent = spawn_parent(dir, &children, &opts.parent_flags, &opts.env);
        Topology { children, parent }
    }

    /// Child `name`'s agent.
    pub fn child(&self, name: &str) -> &GatewayProc {
        &self.children[name]
    }

    /// Child `name`'s agent, to stop it.
    pub fn child_mut(&mut self, name: &str) -> &mut GatewayProc {
        self.children.get_mut(name).unwrap()
    }

    /// The parent's `websecure` entrypoint.
    pub fn ws(&self) -> SocketAddr {
        self.parent.entry_points["websecure"]
    }
}

/// `atrium agent --cluster name` on `ip` (ephemeral ports) with `<dir>/<name>`'s manifests
/// and values.
pub fn spawn_agent(dir: &Path, name: &str, ip: &str, extra: &[&str], env: &[(&str, &str)]) -> GatewayProc {
    let child = dir.join(name);
    let mut args = strings(&[
        "agent",
        "--cluster",
        name,
        "--manifests",
        child.join("manifests").to_str().unwrap(),
        "--values",
        child.join("values.yaml").to_str().unwrap(),
        "--tls-dir",
        dir.join("pki").to_str().unwrap(),
        "--state-dir",
        dir.join(format!("{name}-state")).to_str().unwrap(),
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
    ]);
    with_provider_flags(&mut args, extra);
    GatewayProc::spawn_with_env(&args, env, 2, false)
}

/// The parent's control plane on 127.0.0.1 (ephemeral ports, two workers), its values
/// pointed at the children's actual uplink addresses (`https://127.0.0.N:9443` in the
/// example become where each child listens).
pub fn spawn_parent(
    dir: &Path,
    children: &BTreeMap<String, GatewayProc>,
    extra: &[&str],
    env: &[(&str, &str)],
) -> GatewayProc {
    let parent = dir.join("parent");
    let values = parent.join("values.yaml");
    let mut text = fs::read_to_string(&values).unwrap();
    for (i, child) in children.values().enumerate() {
        let example = format!("https://127.0.0.{}:9443", 2 + i);
        text = text.replace(&example, &format!("https://{}", child.entry_points["multicluster"]));
    }
    fs::write(&values, text).unwrap();
    let mut args = strings(&[
        "control-plane",
        "--values",
        values.to_str().unwrap(),
        "--manifests",
        parent.join("manifests").to_str().unwrap(),
        "--grpc",
        "127.0.0.1:0",
        "--tls-dir",
        dir.join("pki").to_str().unwrap(),
        "--state-dir",
        dir.join("cp-state").to_str().unwrap(),
        "--entrypoint",
        "web=127.0.0.1:0",
        "--entrypoint",
        "websecure=127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        // Two workers, each with its own QUIC connections to the children.
        "--workers",
        "2",
    ]);
    with_provider_flags(&mut args, extra);
    GatewayProc::spawn_with_env(&args, env, 2, true)
}

/// Adds `extra` to `args`; with `--provider kubernetes` among them, the manifests are read
/// from the API server instead of `--manifests`.
fn with_provider_flags(args: &mut Vec<String>, extra: &[&str]) {
    if extra.contains(&"--provider") {
        if let Some(i) = args.iter().position(|a| a == "--manifests") {
            args.drain(i..i + 2);
        }
    }
    args.extend(strings(extra));
}

/// The arguments of `atrium data-plane --node-id id` streaming from the control plane at
/// `grpc` with the certificates of `pki`: its cache and state under `<root>/<id>`, `web`
/// on 127.0.0.1 (ephemeral port), `websecure` at `websecure`, usage reported every 100 ms,
/// one worker; `extra` flags added.
pub fn data_plane_args(
    root: &Path,
    pki: &Path,
    grpc: SocketAddr,
    id: &str,
    websecure: &str,
    extra: &[&str],
) -> Vec<String> {
    let mut args = strings(&[
        "data-plane",
        "--control-plane",
        &format!("https://{grpc}"),
        "--node-id",
        id,
        "--cache-dir",
        root.join(id).join("cache").to_str().unwrap(),
        "--state-dir",
        root.join(id).join("state").to_str().unwrap(),
        "--tls-dir",
        pki.to_str().unwrap(),
        "--entrypoint",
        "web=127.0.0.1:0",
        "--entrypoint",
        &format!("websecure={websecure}"),
        "--admin",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--usage-interval-ms",
        "100",
    ]);
    args.extend(strings(extra));
    args
}

/// Requests `path` on `ws` (TLS, host `api.example.com`, the test key) until it answers
/// `want`, for at most 45 s; the answer.
pub async fn until_status(ws: SocketAddr, path: &str, want: u16) -> super::client::Resp {
    let what = format!("{path} answering {want}");
    // Loose: a topology's first answer (agents up, uplinks dialled, the first snapshot, the
    // first health checks) took over 20 s twice while the whole suite ran on two cores.
    super::eventually(Duration::from_secs(45), &what, || async {
        let r = get(ws, path).await;
        (r.status == want).then_some(r)
    })
    .await
}
