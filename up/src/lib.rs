//! `atrium up`: the whole multi-cluster example on this machine. A parent (control plane
//! with its embedded data plane) on 127.0.0.1, child agents on 127.0.0.2 and 127.0.0.3, and
//! the demo backends the children's EndpointSlices point at. Each role runs as its own
//! process (this same binary), exactly as it would on separate machines.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use atrium_data_plane::pki;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// The example's files, compiled in so `atrium up` works from any directory.
macro_rules! example_files {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../../deploy/examples/multi-cluster-portal/", $path)))),*]
    };
}

const EXAMPLE: &[(&str, &str)] = example_files![
    "parent/values.yaml",
    "parent/manifests/apis.yaml",
    "parent/manifests/catalog.yaml",
    "parent/manifests/ingressroutes.yaml",
    "parent/manifests/portal.yaml",
    "parent/manifests/plans.yaml",
    "cluster-a/values.yaml",
    "cluster-a/manifests/uplink.yaml",
    "cluster-a/manifests/crm-service.yaml",
    "cluster-a/manifests/crm-endpoints.yaml",
    "cluster-a/manifests/crm-api.yaml",
    "cluster-b/values.yaml",
    "cluster-b/manifests/uplink.yaml",
    "cluster-b/manifests/billing-api.yaml",
    "cluster-b/manifests/billing-service.yaml",
    "cluster-b/manifests/billing-endpoints.yaml",
];

/// Why the example cannot run.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The development PKI cannot be created.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// A process of the example stopped.
    #[error("{name} exited ({status}); see its log above")]
    Exited {
        /// The process.
        name: String,
        /// How it ended.
        status: std::process::ExitStatus,
    },
    /// The portal's store.
    #[error(transparent)]
    Store(#[from] atrium_portal::store::StoreError),
    /// `--port-base` leaves no room for the ports above it.
    #[error("--port-base: at most {}", u16::MAX - 1200)]
    PortBase,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> UpError {
    let what = what.into();
    move |source| UpError::Io { what, source }
}

/// Where everything listens.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// The parent's address (its entrypoints, admin port and gRPC service).
    pub parent_ip: std::net::IpAddr,
    /// The parent's `web` port; `websecure` is this + 443, admin + 1000, gRPC + 1090.
    pub port_base: u16,
}

/// Writes the embedded example to `dir` unless a copy is already there; returns its path.
fn materialise(dir: &Path, websecure: u16) -> Result<PathBuf, UpError> {
    for (rel, text) in EXAMPLE {
        let p = dir.join(rel);
        if !p.exists() {
            let parent = p.parent().unwrap_or(dir);
            std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
            std::fs::write(&p, localise(rel, text, websecure)).map_err(io(format!("writing {}", p.display())))?;
        }
    }
    Ok(dir.to_path_buf())
}

/// The guide's file `rel` with its addresses made local, and nothing else changed: the
/// APIs' OpenAPI documents come from the demo backends (the guide's `example.com` URLs do
/// not exist), their servers and the portal's trusted URL carry the parent's websecure
/// port, so the portal's try-it console reaches the gateway from a browser on this machine.
fn localise(rel: &str, text: &str, websecure: u16) -> String {
    // The default port is not written in an origin.
    let port = if websecure == 443 { String::new() } else { format!(":{websecure}") };
    match rel {
        "parent/manifests/apis.yaml" => text
            .replace("https://example.com/specs/crm-openapi.yaml", "http://127.0.0.2:8080/openapi.json")
            .replace("https://example.com/specs/billing-openapi.yaml", "http://127.0.0.3:8080/openapi.json")
            .replace("https://api.example.com/crm", &format!("https://api.example.com{port}/crm"))
            .replace("https://api.example.com/billing", &format!("https://api.example.com{port}/billing")),
        "parent/manifests/portal.yaml" => {
            text.replace("    - https://portal.example.com\n", &format!("    - https://portal.example.com{port}\n"))
        }
        _ => text.to_string(),
    }
}

/// The OpenAPI document of demo backend `service` (what the guide's spec URLs stand for).
fn demo_spec(service: &str) -> serde_json::Value {
    let (title, item, items) = match service {
        "crm" => ("CRM API", "Employee", "employees"),
        _ => ("Billing API", "Invoice", "invoices"),
    };
    let schema = match service {
        "crm" => serde_json::json!({"type": "object", "required": ["name"], "properties": {
            "id": {"type": "string", "example": "e-1"}, "name": {"type": "string", "example": "Ada Lovelace"},
            "team": {"type": "string", "example": "sales"}, "email": {"type": "string", "format": "email"}}}),
        _ => serde_json::json!({"type": "object", "required": ["amount"], "properties": {
            "id": {"type": "string", "example": "inv-1"}, "customer": {"type": "string", "example": "acme"},
            "amount": {"type": "number", "example": 120.5}, "paid": {"type": "boolean"}}}),
    };
    let list = format!("/{items}");
    let one = format!("/{items}/{{id}}");
    serde_json::json!({
        "openapi": "3.0.3",
        "info": {"title": title, "version": "1.0.0", "description": format!("The demo {service} service of `atrium up`: it answers every request with a JSON description of the request.")},
        "servers": [{"url": format!("https://api.example.com/{service}")}],
        "tags": [{"name": items, "description": format!("The {items}")}, {"name": "health"}],
        "paths": {
            list: {
                "get": {"tags": [items], "summary": format!("List {items}"), "operationId": format!("list_{items}"),
                        "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}, "example": 10}],
                        "responses": {"200": {"description": format!("The {items}"), "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": format!("#/components/schemas/{item}")}}}}}}},
                "post": {"tags": [items], "summary": format!("Create one {item}"),
                         "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{item}")}}}},
                         "responses": {"201": {"description": "Created"}}}
            },
            one: {"get": {"tags": [items], "summary": format!("One {item}"),
                          "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}, "example": "1"}],
                          "responses": {"200": {"description": format!("The {item}"), "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{item}")}}}}, "404": {"description": "No such one"}}}},
            "/health": {"get": {"tags": ["health"], "summary": "Health", "responses": {"200": {"description": "Up"}}}}
        },
        "components": {"schemas": {item: schema}}
    })
}

/// The demo application of the embedded example, in `<example>/parent/manifests`: a
/// ManagedApplication subscribed to both APIs on the Standard plan, its API key generated
/// at the first start (random, written with mode 0600) and kept afterwards. Returns the key.
fn demo_application(example: &Path) -> Result<String, UpError> {
    let p = example.join("parent/manifests/demo-application.yaml");
    if let Ok(text) = std::fs::read_to_string(&p) {
        if let Some(k) = text.lines().find_map(|l| l.trim().strip_prefix("- value: ")) {
            return Ok(k.trim().to_string());
        }
    }
    let key = random_key()?;
    let yaml = format!(
        "# Written by `atrium up` at its first start: a demo application subscribed to both APIs.
# Its API key is printed by `atrium up`; delete this file for a new one.
apiVersion: hub.traefik.io/v1alpha1
kind: ManagedApplication
metadata:
  name: demo-app
  namespace: apps
spec:
  appId: demo-app
  owner: atrium-up
  apiKeys:
    - value: {key}
---
apiVersion: hub.traefik.io/v1alpha1
kind: ManagedSubscription
metadata:
  name: demo-app
  namespace: apps
spec:
  apiPlan:
    name: standard-plan
  managedApplications:
    - name: demo-app
  apis:
    - name: crm-api
    - name: billing-api
"
    );
    pki::write_private(&p, yaml.as_bytes())?;
    Ok(key)
}

/// 24 random bytes from the kernel, as hex, with a recognisable prefix.
fn random_key() -> Result<String, UpError> {
    use std::io::Read;
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io("reading /dev/urandom"))?;
    Ok(format!("atr_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// The example's portal groups, each with its demo user.
const DEMO_GROUPS: [&str; 3] = ["developers", "external", "premium-customers"];

/// A demo user per group of the example (`developers@example.com`, …), each with a fresh
/// one-time password (printed; changed at the first sign-in). Returns (email, group,
/// password).
fn demo_users(store: &Path) -> Result<Vec<(String, String, String)>, UpError> {
    use atrium_portal::{auth, store::Store};
    let s = Store::open(store)?;
    let mut out = Vec::new();
    for g in DEMO_GROUPS {
        let email = format!("{g}@example.com");
        let otp = auth::one_time_password();
        let hash = auth::hash_password(&otp);
        match s.user_by_email(&email)? {
            Some((u, _)) => s.set_password(u.id, &hash, true, None)?,
            None => drop(s.add_user(&email, &[g.to_string()], &hash, true)?),
        }
        out.push((email, g.to_string(), otp));
    }
    Ok(out)
}

/// Creates the installation CA and one certificate per component, keeping existing ones.
fn ensure_pki(dir: &Path, parent_ip: std::net::IpAddr) -> Result<(), UpError> {
    let mut sans: Vec<String> = ["127.0.0.1", "127.0.0.2", "127.0.0.3"].iter().map(|s| s.to_string()).collect();
    // The parent's address (`--parent-ip`): data planes dial the portal there.
    if !sans.contains(&parent_ip.to_string()) {
        sans.push(parent_ip.to_string());
    }
    for name in ["control-plane", "data-plane", "cluster-a", "cluster-b"] {
        // Each with its role (the name decides: the children are agents).
        pki::ensure(dir, name, &sans)?;
    }
    Ok(())
}

/// A demo backend: answers every request with a JSON description of it, the way an echo
/// service in a child cluster would, and `/openapi.json` with its OpenAPI document. What
/// `atrium demo-backend` runs until `shutdown`; it stands in for the seed's
/// `company/crm-api` and `company/billing-api` images.
pub async fn demo_backend(
    service: &str,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), UpError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(io(format!("demo {service} on {addr}")))?;
    tracing::info!(service, %addr, "demo backend listening");
    let service: std::sync::Arc<str> = service.into();
    let spec = Bytes::from(demo_spec(&service).to_string());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => continue,
            },
        };
        let (service, spec) = (service.clone(), spec.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (service, spec) = (service.clone(), spec.clone());
                async move {
                    if req.uri().path() == "/openapi.json" {
                        return Response::builder().header("content-type", "application/json").body(Full::new(spec));
                    }
                    let body = serde_json::json!({
                        "service": &*service,
                        "method": req.method().as_str(),
                        "path": req.uri().path(),
                        "query": req.uri().query(),
                        "from": peer.to_string(),
                        "headers": req.headers().iter()
                            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                            .collect::<std::collections::BTreeMap<_, _>>(),
                    });
                    Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body.to_string() + "\n")))
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// `GET path` on the admin listener at `addr`, as JSON (none while it does not answer).
async fn admin_json(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    use http_body_util::BodyExt;
    let get = async {
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
        tokio::spawn(conn);
        let req =
            Request::get(path).header("host", addr.to_string()).body(http_body_util::Empty::<Bytes>::new()).ok()?;
        let resp = send.send_request(req).await.ok()?;
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        serde_json::from_slice(&body).ok()
    };
    tokio::time::timeout(Duration::from_secs(2), get).await.ok().flatten()
}

/// What is not ready yet: children not reached or with an unhealthy uplink, and data planes
/// that have not applied a snapshot; empty when everything is.
fn pending(
    children: Option<&serde_json::Value>,
    dataplanes: Option<&serde_json::Value>,
    want: &[&str],
    data_planes: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    for c in want {
        let child = children.and_then(|v| v.get(*c));
        let reachable = child.and_then(|c| c["reachable"].as_bool()).unwrap_or(false);
        let uplinks = child.and_then(|c| c["uplinks"].as_array());
        let healthy = uplinks.is_some_and(|u| !u.is_empty() && u.iter().all(|u| u["healthy"] == true));
        if !reachable {
            out.push(format!("{c} (not connected)"));
        } else if !healthy {
            out.push(format!("{c} (uplinks not healthy yet)"));
        }
    }
    let nodes = dataplanes.and_then(|v| v["dataplanes"].as_object());
    let serving = |n: &serde_json::Value| n["connected"] == true && n["current"] == true;
    if data_planes > 0 {
        let applied = nodes.map(|nodes| nodes.values().filter(|n| serving(n)).count()).unwrap_or(0);
        if applied < data_planes {
            out.push(format!("data planes ({applied} of {data_planes} serving)"));
        }
    } else if !nodes.and_then(|n| n.get("embedded")).is_some_and(serving) {
        // The routes to the children are served once the embedded data plane applied them.
        out.push("the embedded data plane (not serving the latest configuration yet)".to_string());
    }
    out
}

/// How long `atrium up` waits before it says, once, that starting takes too long and where
/// to look (it goes on waiting: the processes stay up to be looked at).
const SLOW_START: Duration = Duration::from_secs(60);

/// Waits until every child is connected with healthy uplinks and every data plane (the
/// embedded one, or each of `data_planes`) serves the latest configuration, logging what is
/// still pending every 2 s and, past [`SLOW_START`], where to look; an error if a process of
/// the example exits.
async fn wait_ready(
    admin: SocketAddr,
    children: &[&str],
    data_planes: usize,
    procs: &mut Procs,
) -> Result<(), UpError> {
    let start = tokio::time::Instant::now();
    let mut said = start;
    let mut warned = false;
    loop {
        procs.check()?;
        let c = admin_json(admin, "/api/children").await;
        let d = admin_json(admin, "/api/dataplanes").await;
        let waiting = if c.is_none() {
            vec!["the parent's control plane".to_string()]
        } else {
            pending(c.as_ref(), d.as_ref(), children, data_planes)
        };
        if waiting.is_empty() {
            tracing::info!(after_ms = start.elapsed().as_millis() as u64, "every child is connected and healthy");
            return Ok(());
        }
        if said.elapsed() >= Duration::from_secs(2) {
            said = tokio::time::Instant::now();
            tracing::info!(waiting = ?waiting, elapsed_s = start.elapsed().as_secs(), "starting: waiting for");
        }
        if !warned && start.elapsed() >= SLOW_START {
            warned = true;
            tracing::warn!(
                waiting = ?waiting,
                admin = %admin,
                "still not ready after {}s; see http://{admin}/ui for each child's state and the lines above \
                 for \"child unreachable\" or \"uplink health changed\" (README: Troubleshooting)",
                SLOW_START.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The child processes; all killed when this is dropped.
struct Procs(Vec<(String, Child)>);

impl Drop for Procs {
    fn drop(&mut self) {
        for (name, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
            tracing::info!(process = %name, "stopped");
        }
    }
}

impl Procs {
    /// An error if one of the processes exited.
    fn check(&mut self) -> Result<(), UpError> {
        for (name, c) in &mut self.0 {
            if let Some(status) = c.try_wait().map_err(io(format!("watching {name}")))? {
                return Err(UpError::Exited { name: name.clone(), status });
            }
        }
        Ok(())
    }
}

fn spawn(procs: &mut Procs, global: &[String], name: &str, args: &[String]) -> Result<(), UpError> {
    let exe = std::env::current_exe().map_err(io("locating the atrium binary"))?;
    let child = Command::new(exe).args(global).args(args).spawn().map_err(io(format!("starting {name}")))?;
    tracing::info!(process = name, pid = child.id(), "started");
    procs.0.push((name.to_string(), child));
    Ok(())
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// What `atrium up` runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Generated state: certificates, caches, the example's manifests.
    pub state_dir: PathBuf,
    /// A topology directory to run instead of the embedded example.
    pub example: Option<PathBuf>,
    /// Where the parent listens.
    pub layout: Layout,
    /// Separate `atrium data-plane` processes serving the parent's entrypoints (sharing
    /// its ports with SO_REUSEPORT); 0: the control plane's embedded data plane serves them.
    pub data_planes: usize,
    /// Global flags every process gets too (`--log-format`, `--otlp-endpoint`,
    /// `--otlp-protocol`).
    pub global_flags: Vec<String>,
}

/// Runs the example until `shutdown` completes (or until one of its processes exits), then
/// stops every process it started.
pub async fn run(cfg: Config, shutdown: impl std::future::Future<Output = ()>) -> Result<(), UpError> {
    let Config { state_dir, example, layout, data_planes, global_flags } = cfg;
    if layout.port_base > u16::MAX - 1200 {
        return Err(UpError::PortBase);
    }
    std::fs::create_dir_all(&state_dir).map_err(io(format!("creating {}", state_dir.display())))?;
    let (example, key) = match example {
        Some(e) => (e, None),
        None => {
            let e = materialise(&state_dir.join("example"), layout.port_base + 443)?;
            let key = demo_application(&e)?;
            (e, Some(key))
        }
    };
    let pki_dir = state_dir.join("pki");
    ensure_pki(&pki_dir, layout.parent_ip)?;
    let users = demo_users(&state_dir.join("parent").join("portal.db"))?;

    let mut procs = Procs(Vec::new());
    tracing::info!(data_planes, "starting: demo backends, cluster-a, cluster-b, the parent");
    for (service, ip) in [("crm", "127.0.0.2"), ("billing", "127.0.0.3")] {
        spawn(
            &mut procs,
            &global_flags,
            &format!("demo {service}"),
            &s(&["demo-backend", "--service", service, "--listen", &format!("{ip}:8080")]),
        )?;
    }
    for (cluster, ip) in [("cluster-a", "127.0.0.2"), ("cluster-b", "127.0.0.3")] {
        spawn(&mut procs, &global_flags, cluster, &child_args(cluster, ip, &example, &pki_dir, &state_dir))?;
    }
    spawn(&mut procs, &global_flags, "parent", &parent_args(&layout, &example, &pki_dir, &state_dir, data_planes > 0))?;
    for i in 0..data_planes {
        spawn(
            &mut procs,
            &global_flags,
            &format!("data plane {i}"),
            &data_plane_args(&layout, &example, &pki_dir, &state_dir, i),
        )?;
    }
    let admin = SocketAddr::new(layout.parent_ip, layout.port_base + 1000);
    tokio::pin!(shutdown);
    tokio::select! {
        r = wait_ready(admin, &["cluster-a", "cluster-b"], data_planes, &mut procs) => r?,
        _ = &mut shutdown => {
            tracing::info!("stopping");
            return Ok(());
        }
    }
    print_try(&layout, key.as_deref(), &users, &pki_dir.join("ca.pem"));
    watch(&mut procs, shutdown).await
}

/// A path as a command-line argument.
fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The arguments of the agent of child `cluster`, which listens on `ip`.
fn child_args(cluster: &str, ip: &str, example: &Path, pki_dir: &Path, state_dir: &Path) -> Vec<String> {
    let mut args = s(&["agent", "--cluster", cluster, "--manifests"]);
    args.push(path_arg(&example.join(cluster).join("manifests")));
    args.extend(s(&["--values"]));
    args.push(path_arg(&example.join(cluster).join("values.yaml")));
    args.extend(s(&["--tls-dir"]));
    args.push(path_arg(pki_dir));
    args.extend(s(&["--state-dir"]));
    args.push(path_arg(&state_dir.join(cluster)));
    args.extend(s(&["--bind-ip", ip, "--entrypoint", "websecure=off", "--admin", &format!("{ip}:9000")]));
    args.extend(s(&["--entrypoint", &format!("web={ip}:8000"), "--entrypoint", &format!("multicluster={ip}:9443")]));
    args.extend(s(&["--workers", "1"]));
    args
}

/// The arguments of data plane `i` of the parent: the parent's entrypoints (shared with
/// the others by SO_REUSEPORT), its own admin port (`port_base` + 1100 + `i`).
fn data_plane_args(layout: &Layout, example: &Path, pki_dir: &Path, state_dir: &Path, i: usize) -> Vec<String> {
    let at = |off: u16| SocketAddr::new(layout.parent_ip, layout.port_base + off).to_string();
    let dir = state_dir.join(format!("data-plane-{i}"));
    let mut args =
        s(&["data-plane", "--control-plane", &format!("https://{}", at(1090)), "--node-id", &format!("dp-{i}")]);
    args.extend(s(&["--values"]));
    args.push(path_arg(&example.join("parent/values.yaml")));
    args.extend(s(&["--cache-dir"]));
    args.push(path_arg(&dir.join("cache")));
    args.extend(s(&["--state-dir"]));
    args.push(path_arg(&dir));
    args.extend(s(&["--tls-dir"]));
    args.push(path_arg(pki_dir));
    args.extend(s(&["--admin", &at(1100 + i as u16), "--workers", "1"]));
    args.extend(s(&["--entrypoint", &format!("web={}", at(0)), "--entrypoint", &format!("websecure={}", at(443))]));
    args
}

/// The arguments of the parent's control plane, which listens where `layout` says (and
/// serves the entrypoints itself unless `data_planes` run apart).
fn parent_args(layout: &Layout, example: &Path, pki_dir: &Path, state_dir: &Path, data_planes: bool) -> Vec<String> {
    let at = |off: u16| SocketAddr::new(layout.parent_ip, layout.port_base + off).to_string();
    let mut args = s(&["control-plane", "--manifests"]);
    args.push(path_arg(&example.join("parent/manifests")));
    args.extend(s(&["--values"]));
    args.push(path_arg(&example.join("parent/values.yaml")));
    args.extend(s(&["--tls-dir"]));
    args.push(path_arg(pki_dir));
    args.extend(s(&["--state-dir"]));
    args.push(path_arg(&state_dir.join("parent")));
    args.extend(s(&["--grpc", &at(1090), "--admin", &at(1000), "--portal", &at(1903)]));
    if data_planes {
        args.extend(s(&["--data-plane", "none"]));
    } else {
        args.extend(s(&["--entrypoint", &format!("web={}", at(0)), "--entrypoint", &format!("websecure={}", at(443))]));
    }
    args
}

/// Prints where the example listens and what to try.
fn print_try(layout: &Layout, key: Option<&str>, users: &[(String, String, String)], ca: &Path) {
    let (ip, base) = (layout.parent_ip, layout.port_base);
    let at = |off: u16| SocketAddr::new(ip, base + off).to_string();
    let https = SocketAddr::new(ip, base + 443);
    let (auth, key_line) = match key {
        Some(k) => (
            format!(" -H 'Authorization: Bearer {k}'"),
            format!("demo API key (application demo-app, Standard plan): {k}\n"),
        ),
        None => (" -H 'Authorization: Bearer <an API key of your ManagedApplications>'".to_string(), String::new()),
    };
    let curl = format!("curl -sk --resolve api.example.com:{ws}:{hip}", ws = https.port(), hip = https.ip());
    let api = format!("https://api.example.com:{}", https.port());
    println!(
        "\natrium up: ready. Parent on {ip} (web :{web}, websecure :{ws}, admin :{admin}, gRPC :{grpc}), \
         cluster-a on 127.0.0.2, cluster-b on 127.0.0.3; both children connected, their uplinks healthy.\n\
         {key_line}\
         The seed's verification:\n  \
         curl -s http://{admin_addr}/api/children    # 1. uplinks to both children\n  \
         curl -sk --resolve portal.example.com:{ws}:{hip} https://portal.example.com:{ws}/    # 2. the portal\n  \
         {curl} -D - {api}/crm/health{auth} | grep -i x-traefik-backend    # 3. cluster-a\n  \
         {curl} -D - {api}/billing/health{auth} | grep -i x-traefik-backend    # 3. cluster-b\n  \
         {curl}{auth} {api}/crm/employees\n  \
         {curl}{auth} {api}/billing/invoices\n  \
         {curl} -o /dev/null -w '%{{http_code}}\\n' {api}/crm/employees    # 401: API-key auth is the default\n\
         portal: https://portal.example.com:{ws}/ in a browser: add `{hip} portal.example.com api.example.com` \
         to /etc/hosts, or start Chromium with --host-resolver-rules='MAP *.example.com {hip}'; \
         the development CA is {ca}\n\
         {user_lines}\
         Ctrl-C stops everything.\n",
        ca = ca.display(),
        user_lines = users.iter().map(|(e, g, p)| format!("  {g}: {e}  one-time password {p}\n")).collect::<String>(),
        web = base,
        ws = https.port(),
        hip = https.ip(),
        admin = base + 1000,
        grpc = base + 1090,
        admin_addr = at(1000),
    );
}

/// Waits for `shutdown` (`Ok`) or for one of `procs` to exit (an error).
async fn watch(procs: &mut Procs, shutdown: impl std::future::Future<Output = ()>) -> Result<(), UpError> {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("stopping");
                return Ok(());
            }
            _ = tick.tick() => procs.check()?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_means_children_healthy_and_the_serving_data_planes_current() {
        let children = serde_json::json!({
            "cluster-a": {"reachable": true, "uplinks": [{"name": "crm", "healthy": true}]},
            "cluster-b": {"reachable": true, "uplinks": [{"name": "billing", "healthy": false}]},
        });
        let embedded =
            |current: bool| serde_json::json!({"dataplanes": {"embedded": {"connected": true, "current": current}}});
        let want = ["cluster-a", "cluster-b", "cluster-c"];
        let p = pending(Some(&children), Some(&embedded(false)), &want, 0);
        assert_eq!(
            p,
            [
                "cluster-b (uplinks not healthy yet)",
                "cluster-c (not connected)",
                "the embedded data plane (not serving the latest configuration yet)"
            ]
        );
        assert!(pending(Some(&children), Some(&embedded(true)), &["cluster-a"], 0).is_empty());
        // Separate data planes: each must serve; the embedded one is not asked for.
        let two = serde_json::json!({"dataplanes": {
            "dp-1": {"connected": true, "current": true},
            "dp-2": {"connected": true, "current": false},
        }});
        assert_eq!(pending(Some(&children), Some(&two), &["cluster-a"], 2), ["data planes (1 of 2 serving)"]);
        assert!(pending(Some(&children), None, &["cluster-a"], 0).len() == 1, "no answer yet: not ready");
    }

    #[test]
    fn embedded_example_is_written_once_and_lints_clean() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = materialise(&tmp.path().join("example"), 8443).unwrap();
        assert!(dir.join("parent/values.yaml").is_file());
        // A user's edit survives the next start.
        std::fs::write(dir.join("parent/manifests/plans.yaml"), "# edited\n").unwrap();
        materialise(&dir, 8443).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("parent/manifests/plans.yaml")).unwrap(), "# edited\n");
        // Every file of the in-repo example is embedded.
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/multi-cluster-portal");
        let mut on_disk = Vec::new();
        let mut stack = vec![repo.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    on_disk.push(p.strip_prefix(&repo).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        on_disk.sort();
        let mut embedded: Vec<String> = EXAMPLE.iter().map(|(p, _)| p.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
    }

    #[test]
    fn only_addresses_are_made_local() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = materialise(&tmp.path().join("example"), 8443).unwrap();
        let apis = std::fs::read_to_string(dir.join("parent/manifests/apis.yaml")).unwrap();
        assert!(
            apis.contains("url: http://127.0.0.2:8080/openapi.json")
                && apis.contains("https://api.example.com:8443/billing"),
            "{apis}"
        );
        let portal = std::fs::read_to_string(dir.join("parent/manifests/portal.yaml")).unwrap();
        assert!(portal.contains("- https://portal.example.com:8443\n"), "{portal}");
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/multi-cluster-portal");
        let original = std::fs::read_to_string(repo.join("parent/manifests/apis.yaml")).unwrap();
        let changed = original.lines().zip(apis.lines()).filter(|(a, b)| a != b).count();
        assert_eq!(changed, 4, "two spec URLs and two servers, nothing else");
        assert!(demo_spec("crm")["paths"]["/employees"]["get"].is_object());
    }

    #[test]
    fn certificates_are_created_once_and_again_for_another_parent_address() {
        let tmp = tempfile::tempdir().unwrap();
        let local: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        ensure_pki(tmp.path(), local).unwrap();
        let before = std::fs::read(tmp.path().join("cluster-a.pem")).unwrap();
        ensure_pki(tmp.path(), local).unwrap();
        assert_eq!(std::fs::read(tmp.path().join("cluster-a.pem")).unwrap(), before);
        assert!(tmp.path().join("control-plane-key.pem").is_file());
        // `--parent-ip` elsewhere: the certificates name it (data planes dial the portal there).
        ensure_pki(tmp.path(), "127.0.0.9".parse().unwrap()).unwrap();
        assert_ne!(std::fs::read(tmp.path().join("cluster-a.pem")).unwrap(), before);
        let again = std::fs::read(tmp.path().join("control-plane.pem")).unwrap();
        ensure_pki(tmp.path(), "127.0.0.9".parse().unwrap()).unwrap();
        assert_eq!(std::fs::read(tmp.path().join("control-plane.pem")).unwrap(), again);
    }
}
