//! `atrium control-plane`, `atrium data-plane` and `atrium certs`.
//!
//! The control plane compiles the watched manifests into snapshots and streams them over
//! gRPC (mutual TLS by default) to data planes; it runs an embedded data plane fed by the
//! same snapshots unless `--data-plane none`. A data plane serves from its cache first,
//! then from the stream, and keeps serving when the control plane is away.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use atrium_control_plane::children::{Children, Polling, Registry};
use atrium_control_plane::hub::Hub;
use atrium_control_plane::service::Snapshots;
use atrium_data_plane::multicluster::UplinkClient;
use atrium_data_plane::pki;
use atrium_data_plane::proxy::admin::{self, AdminExtra};
use atrium_data_plane::proxy::server::ServerLimits;
use atrium_data_plane::proxy::tls::CertStore;
use atrium_data_plane::proxy::{AccessLog, Gateway, Runtime};
use atrium_data_plane::snapshot::{self, ClientConfig};
use atrium_data_plane::trust::{NodeTrust, Role};
use atrium_data_plane::upstream::{UpstreamConfig, Upstreams};
use atrium_model::values::Values;
use atrium_proto::v1::snapshot_service_server::SnapshotServiceServer;
use tokio::sync::watch;
use tonic::transport::Server;

use crate::gateway::{
    self, compile_body, compile_config, entry_point_addrs, serve_entrypoints, shutdown_signal, watch_paths,
};

/// Serving options shared by both planes.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Helm-style values (entrypoints).
    pub values: Option<PathBuf>,
    /// `NAME=ADDR` overrides.
    pub entry_points: Vec<(String, String)>,
    /// IP the entrypoints bind to.
    pub bind_ip: IpAddr,
    /// Admin listener.
    pub admin: Option<admin::AdminConfig>,
    /// Access log.
    pub access_log: Option<AccessLog>,
    /// Listener limits.
    pub limits: ServerLimits,
    /// Upstream timeouts.
    pub upstream: UpstreamConfig,
    /// Worker threads.
    pub workers: usize,
    /// Generated state (CA, certificates, default TLS certificate).
    pub state_dir: PathBuf,
    /// TLS material (`ca.pem`, `<name>.pem`, `<name>-key.pem`); default: `<state-dir>/pki`,
    /// created on first start.
    pub tls_dir: Option<PathBuf>,
    /// Uplink QUIC keep-alive and idle timeout.
    pub liveness: atrium_data_plane::uplink::Liveness,
}

fn load_values(values: Option<&std::path::Path>) -> anyhow::Result<Values> {
    let Some(v) = values else { return Ok(Values::default()) };
    let (v, d) = Values::load(v);
    let errs: Vec<String> = d.iter().filter(|d| d.is_error()).map(|d| d.to_string()).collect();
    if !errs.is_empty() {
        bail!("invalid values:\n{}", errs.join("\n"));
    }
    Ok(v)
}

/// The PKI directory and this node's files, created on first start when not given.
fn node_pki(o: &ServeOptions, name: &str) -> anyhow::Result<pki::NodeFiles> {
    match &o.tls_dir {
        Some(d) => {
            let f = pki::NodeFiles::new(d, name);
            for p in [&f.ca, &f.cert, &f.key] {
                anyhow::ensure!(
                    p.is_file(),
                    "{}: missing (create it with `atrium certs issue --dir {} --name {name}`)",
                    p.display(),
                    d.display()
                );
            }
            Ok(f)
        }
        None => Ok(pki::ensure(&o.state_dir.join("pki"), name, &[])?),
    }
}

/// This node's TLS material (see [`node_pki`]), re-read whenever its files change.
fn node_trust(o: &ServeOptions, name: &str) -> anyhow::Result<NodeTrust> {
    let files = node_pki(o, name)?;
    Ok(NodeTrust::load(&files)?)
}

impl ServeOptions {
    /// Binds and serves this node's entrypoints (see [`serve_entrypoints`]).
    fn serve(
        &self,
        values: &Values,
        gw: &Arc<Gateway>,
        certs: &Arc<CertStore>,
        stop_rx: &watch::Receiver<bool>,
    ) -> anyhow::Result<Vec<std::thread::JoinHandle<anyhow::Result<()>>>> {
        let addrs = entry_point_addrs(&self.entry_points, self.bind_ip, values)?;
        serve_entrypoints(&addrs, gw, certs, &self.limits, &self.upstream, self.workers, stop_rx)
    }

    /// Starts the admin listener, if one is configured.
    async fn admin(
        &self,
        gw: &Arc<Gateway>,
        extra: Option<Arc<dyn AdminExtra>>,
        stop_rx: &watch::Receiver<bool>,
    ) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
        gateway::serve_admin(self.admin.as_ref(), gw, extra, stop_rx).await
    }
}

/// Waits for the serving tasks and worker threads to finish draining.
async fn join_all(tasks: Vec<tokio::task::JoinHandle<()>>, threads: Vec<std::thread::JoinHandle<anyhow::Result<()>>>) {
    for t in tasks {
        let _ = t.await;
    }
    for t in threads {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
}

struct ControlPlaneAdmin {
    hub: Arc<Hub>,
    /// The compiled body (for the configured children) and the live registry.
    base: Arc<Mutex<atrium_proto::v1::SnapshotBody>>,
    registry: Arc<Mutex<Registry>>,
}

impl ControlPlaneAdmin {
    /// Every configured child: address, whether the parent reaches it, its uplinks.
    fn children_json(&self) -> serde_json::Value {
        let (Ok(b), Ok(r)) = (self.base.lock(), self.registry.lock()) else { return serde_json::Value::Null };
        let body = with_children(&b, &r);
        body.children
            .iter()
            .map(|c| {
                let uplinks: Vec<_> = c
                    .uplinks
                    .iter()
                    .map(|u| serde_json::json!({"name": u.name, "weight": u.weight, "healthy": u.healthy}))
                    .collect();
                (
                    c.name.clone(),
                    serde_json::json!({"address": c.address, "reachable": c.reachable, "uplinks": uplinks}),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

impl AdminExtra for ControlPlaneAdmin {
    fn json(&self, path: &str) -> Option<serde_json::Value> {
        match path {
            "/api/dataplanes" => Some(self.hub.nodes_json()),
            "/api/children" => Some(self.children_json()),
            _ => None,
        }
    }
    fn metrics(&self) -> String {
        self.hub.metrics_text()
    }
}

/// The parent's poll timing from its values (`pollInterval`/`pollTimeout`, 5 s each by
/// default).
fn polling(values: &Values, liveness: atrium_data_plane::uplink::Liveness) -> Polling {
    let mc = values.multicluster.clone().unwrap_or_default();
    let secs = |v: &Option<atrium_routing::middleware::config::IntOrString>| {
        v.as_ref().and_then(|d| d.as_duration().ok()).filter(|d| !d.is_zero()).unwrap_or(Duration::from_secs(5))
    };
    Polling { interval: secs(&mc.poll_interval), timeout: secs(&mc.poll_timeout), liveness }
}

/// `atrium control-plane`.
pub async fn run_control_plane(
    o: ServeOptions,
    manifests: Vec<PathBuf>,
    grpc: SocketAddr,
    embedded: bool,
    debounce: Duration,
) -> anyhow::Result<()> {
    for p in &manifests {
        anyhow::ensure!(p.exists(), "{}: no such file or directory", p.display());
    }
    let values = load_values(o.values.as_deref())?;
    let epoch = atrium_control_plane::hub::next_epoch(&o.state_dir)
        .with_context(|| format!("recording the snapshot epoch in {}", o.state_dir.display()))?;
    let hub = Hub::with_epoch(env!("CARGO_PKG_VERSION"), epoch);
    let body = compile_body(o.values.as_deref(), &manifests)
        .map_err(|errs| anyhow::anyhow!("the configuration does not compile:\n{}", errs.join("\n")))?;
    // The snapshot is the compiled manifests plus the live view of the children.
    let first_children = body.children.clone();
    let base = Arc::new(Mutex::new(body));
    let registry: Arc<Mutex<Registry>> = Arc::new(Mutex::new(Registry::new()));
    let publish = {
        let (base, registry, hub) = (base.clone(), registry.clone(), hub.clone());
        Arc::new(move |detected: Instant| {
            let (Ok(b), Ok(r)) = (base.lock(), registry.lock()) else { return };
            hub.publish(&with_children(&b, &r), detected);
        })
    };
    publish(Instant::now());

    // gRPC with mutual TLS: data planes must present a certificate from our CA.
    let files = node_pki(&o, "control-plane")?;
    if o.tls_dir.is_none() {
        // A client certificate for data planes started next to this control plane
        // (`--tls-dir <state-dir>/pki`).
        pki::ensure(&o.state_dir.join("pki"), "data-plane", &[])?;
    }
    let trust = NodeTrust::load(&files)?;
    let tls = atrium_control_plane::tls::server_config(&trust).map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(grpc).await.with_context(|| format!("binding gRPC on {grpc}"))?;
    tracing::info!(addr = %listener.local_addr()?, tls_dir = %files.ca.parent().map(|p| p.display().to_string()).unwrap_or_default(), "snapshot gRPC listening (mTLS)");
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut grpc_stop = stop_rx.clone();
    let server = Server::builder()
        .add_service(
            SnapshotServiceServer::new(Snapshots::new(hub.clone(), stop_rx.clone()))
                .max_encoding_message_size(256 << 20),
        )
        .serve_with_incoming_shutdown(atrium_control_plane::tls::incoming(listener, tls), async move {
            let _ = grpc_stop.changed().await;
        });
    let grpc_task = tokio::spawn(server);

    // Children: dialled with this control plane's certificate, polled, watched for
    // liveness; the list follows the values file.
    let children = {
        let (reg, publish) = (registry.clone(), publish.clone());
        Children::new(
            trust.clone(),
            Arc::new(move |r: Registry| {
                if let Ok(mut cur) = reg.lock() {
                    *cur = r;
                }
                publish(Instant::now());
            }),
        )
    };
    children.set(&first_children, polling(&values, o.liveness));

    let certs = CertStore::persistent(&o.state_dir).map_err(anyhow::Error::msg)?;
    let gw = Gateway::new(Upstreams::new(o.upstream.clone()), o.access_log, certs.clone());
    let mut threads = Vec::new();
    if embedded {
        // The embedded data plane reaches children with the `data-plane` certificate.
        gw.set_uplink_client(UplinkClient::new(node_trust(&o, "data-plane")?, o.liveness));
        // The embedded data plane takes the same snapshots, over an in-memory channel.
        let mut rx = hub.subscribe();
        let egw = gw.clone();
        tokio::spawn(async move {
            loop {
                let latest = rx.borrow_and_update().clone();
                if let Some(p) = latest {
                    match Runtime::from_snapshot(&p.snapshot) {
                        Ok(rt) => egw.swap(rt),
                        Err(e) => egw.swap_failed(&e),
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        threads = o.serve(&values, &gw, &certs, &stop_rx)?;
    }
    let extra: Arc<dyn AdminExtra> =
        Arc::new(ControlPlaneAdmin { hub: hub.clone(), base: base.clone(), registry: registry.clone() });
    let tasks: Vec<_> = o.admin(&gw, Some(extra), &stop_rx).await?.into_iter().collect();
    let reload = {
        let (vals, mans, h, g, b, publish) =
            (o.values.clone(), manifests.clone(), hub.clone(), gw.clone(), base.clone(), publish.clone());
        let (children, liveness) = (children.clone(), o.liveness);
        move || {
            let detected = Instant::now();
            match compile_config(vals.as_deref(), &mans) {
                Ok((values, body)) => {
                    let before = h.subscribe().borrow().as_ref().map(|p| p.snapshot.hash.clone());
                    let listed = body.children.clone();
                    if let Ok(mut cur) = b.lock() {
                        *cur = body;
                    }
                    children.set(&listed, polling(&values, liveness));
                    publish(detected);
                    if h.subscribe().borrow().as_ref().map(|p| p.snapshot.hash.clone()) == before {
                        tracing::info!("configuration changed on disk but compiles to the same snapshot");
                    }
                }
                Err(errors) => {
                    for e in &errors {
                        tracing::error!("{e}");
                    }
                    g.swap_failed(format!(
                        "{} error(s) in the configuration; data planes keep the previous snapshot",
                        errors.len()
                    ));
                }
            }
        }
    };
    let paths: Vec<PathBuf> = manifests.iter().chain(o.values.iter()).cloned().collect();
    let refused = {
        let g = gw.clone();
        move |why: &str| g.swap_failed(why)
    };
    let _watcher = watch_paths(paths, debounce, reload, refused)?;
    shutdown_signal().await;
    tracing::info!("shutting down: closing snapshot streams and child sessions, draining requests in flight");
    let _ = stop_tx.send(true);
    children.stop();
    let _ = grpc_task.await;
    join_all(tasks, threads).await;
    tracing::info!("stopped");
    Ok(())
}

/// The compiled body with the children as the registry sees them now.
fn with_children(base: &atrium_proto::v1::SnapshotBody, registry: &Registry) -> atrium_proto::v1::SnapshotBody {
    let mut body = base.clone();
    for c in &mut body.children {
        match registry.get(&c.name) {
            Some(ups) => {
                c.reachable = true;
                c.uplinks = ups.clone();
            }
            None => {
                c.reachable = false;
                c.uplinks.clear();
            }
        }
    }
    body
}

/// `atrium data-plane`.
pub async fn run_data_plane(
    o: ServeOptions,
    control_plane: String,
    node_id: String,
    group: String,
    cache_dir: PathBuf,
    tls_name: String,
    usage_interval: Duration,
) -> anyhow::Result<()> {
    let values = load_values(o.values.as_deref())?;
    let certs = CertStore::persistent(&o.state_dir).map_err(anyhow::Error::msg)?;
    let gw = Gateway::new(Upstreams::new(o.upstream.clone()), o.access_log, certs.clone());
    let tls = if control_plane.starts_with("https://") {
        let trust = node_trust(&o, &tls_name)?;
        // The same certificate opens uplinks to children.
        gw.set_uplink_client(UplinkClient::new(trust.clone(), o.liveness));
        Some(trust)
    } else {
        tracing::warn!(
            "the control-plane URL is not https: snapshots, and the TLS keys they carry, travel without TLS"
        );
        None
    };
    // Cold start: serve the last acknowledged snapshot before the control plane answers.
    match snapshot::load_cache(&cache_dir) {
        Ok(Some(rt)) => {
            tracing::info!(
                epoch = rt.epoch,
                seq = rt.version,
                "serving the cached snapshot until the control plane answers"
            );
            gw.swap(rt);
        }
        Ok(None) => tracing::info!(dir = %cache_dir.display(), "no cached snapshot; waiting for the control plane"),
        Err(e) => tracing::warn!(error = %e, "ignoring the snapshot cache; waiting for the control plane"),
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let client =
        ClientConfig { endpoint: control_plane, node_id, group, tls, cache_dir: Some(cache_dir), usage_interval };
    let stream_task = tokio::spawn(snapshot::run(gw.clone(), client, stop_rx.clone()));
    let threads = o.serve(&values, &gw, &certs, &stop_rx)?;
    let tasks: Vec<_> = o.admin(&gw, None, &stop_rx).await?.into_iter().collect();
    shutdown_signal().await;
    tracing::info!("shutting down: draining requests in flight");
    let _ = stop_tx.send(true);
    let _ = stream_task.await;
    join_all(tasks, threads).await;
    Ok(())
}

/// `atrium certs init|issue`.
pub fn certs(
    init: bool,
    dir: &std::path::Path,
    name: Option<&str>,
    role: Option<&str>,
    sans: &[String],
) -> anyhow::Result<()> {
    if init {
        if pki::init_ca(dir)? {
            println!("created CA {}", dir.join("ca.pem").display());
        } else {
            println!("CA {} already exists; kept", dir.join("ca.pem").display());
        }
        return Ok(());
    }
    let name = name.context("--name is required")?;
    let role = match role {
        Some(r) => Role::parse(r).with_context(|| format!("--role {r:?}: one of control-plane, data-plane, agent"))?,
        None => Role::for_name(name),
    };
    let f = pki::issue(dir, name, role, sans)?;
    println!("issued {} and {} (role {role})", f.cert.display(), f.key.display());
    Ok(())
}

/// The uplink entrypoints to serve over QUIC: ports marked `uplink: true`, moved by
/// `--entrypoint NAME=ADDR`.
fn uplink_addrs(o: &ServeOptions, values: &Values) -> anyhow::Result<Vec<(String, SocketAddr)>> {
    let mut out = Vec::new();
    for (name, ep) in values.entry_points().filter(|(_, e)| e.uplink) {
        let addr = match o.entry_points.iter().find(|(n, _)| n == name) {
            Some((_, v)) if v == "off" => continue,
            Some((_, v)) => gateway::parse_addr(v).with_context(|| format!("--entrypoint {name}={v}"))?,
            None => SocketAddr::new(o.bind_ip, ep.port),
        };
        out.push((name.clone(), addr));
    }
    Ok(out)
}

/// `atrium agent`: a child cluster's gateway plus its uplinks, served to parents over
/// mutual-TLS QUIC. Manifests and values are watched: routes and uplinks follow them.
pub async fn run_agent(
    o: ServeOptions,
    cluster: String,
    manifests: Vec<PathBuf>,
    tls_name: Option<String>,
    debounce: Duration,
) -> anyhow::Result<()> {
    for p in &manifests {
        anyhow::ensure!(p.exists(), "{}: no such file or directory", p.display());
    }
    anyhow::ensure!(
        atrium_model::topology::is_valid_cluster_name(&cluster),
        "--cluster {cluster:?} must be a DNS label"
    );
    let values = load_values(o.values.as_deref())?;
    let body = compile_body(o.values.as_deref(), &manifests)
        .map_err(|errs| anyhow::anyhow!("the configuration does not compile:\n{}", errs.join("\n")))?;
    let certs = CertStore::persistent(&o.state_dir).map_err(anyhow::Error::msg)?;
    let gw = Gateway::new(Upstreams::new(o.upstream.clone()), o.access_log, certs.clone());
    let first_uplinks = body.uplinks.clone();
    gw.swap(Runtime::build(body, 1)?);
    let up = Arc::new(Upstreams::new(o.upstream.clone()));
    let uplinks = atrium_agent::Uplinks::new(&cluster, gw.clone(), up.clone());
    uplinks.set(first_uplinks);
    let (stop_tx, stop_rx) = watch::channel(false);
    let threads = o.serve(&values, &gw, &certs, &stop_rx)?;
    let quic_addrs = uplink_addrs(&o, &values)?;
    anyhow::ensure!(
        !quic_addrs.is_empty(),
        "no uplink entrypoint: mark a port `uplink: true` in the values (the guide's `ports.multicluster`)"
    );
    let trust = node_trust(&o, tls_name.as_deref().unwrap_or(&cluster))?;
    let mut tasks = Vec::new();
    let in_flight = Arc::new(atrium_agent::InFlight::default());
    for (name, addr) in quic_addrs {
        let cfg = atrium_data_plane::uplink::server_config(&trust, o.liveness)?;
        let ep = quinn::Endpoint::server(cfg, addr)
            .with_context(|| format!("binding uplink entrypoint {name} on udp {addr}"))?;
        tracing::info!(name = %name, addr = %ep.local_addr()?, cluster = %cluster, "uplink entrypoint listening (QUIC, mTLS)");
        let server = atrium_agent::UplinkServer {
            gw: gw.clone(),
            upstreams: up.clone(),
            state: uplinks.state(),
            stream_idle: o.liveness.stream_idle,
            entry_point: Arc::from(name.as_str()),
            max_frame: o.liveness.max_frame,
            in_flight: in_flight.clone(),
            drain_timeout: o.limits.drain_timeout,
        };
        tasks.push(tokio::spawn(atrium_agent::serve_quic(ep, Arc::new(server), stop_rx.clone())));
    }
    tasks.extend(o.admin(&gw, None, &stop_rx).await?);
    let reload = {
        let (vals, mans, g, uplinks) = (o.values.clone(), manifests.clone(), gw.clone(), uplinks.clone());
        let version = std::sync::atomic::AtomicU64::new(1);
        move || match compile_body(vals.as_deref(), &mans) {
            Ok(body) => {
                let v = version.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                let listed = body.uplinks.clone();
                match Runtime::build(body, v) {
                    Ok(rt) => {
                        g.swap(rt);
                        // Parents hear of added, changed and removed uplinks at once.
                        uplinks.set(listed);
                    }
                    Err(e) => g.swap_failed(&e),
                }
            }
            Err(errors) => {
                for e in &errors {
                    tracing::error!("{e}");
                }
                g.swap_failed(format!("{} error(s) in the configuration", errors.len()));
            }
        }
    };
    let refused = {
        let g = gw.clone();
        move |why: &str| g.swap_failed(why)
    };
    let paths: Vec<PathBuf> = manifests.iter().chain(o.values.iter()).cloned().collect();
    let watcher = watch_paths(paths, debounce, reload, refused)?;
    shutdown_signal().await;
    // No reload from here on: a configuration change during the drain must not advertise
    // the uplinks again.
    drop(watcher);
    tracing::info!("shutting down: withdrawing uplinks, draining requests in flight");
    // Parents hear first, so they stop sending here while what is in flight finishes.
    uplinks.withdraw();
    let _ = stop_tx.send(true);
    join_all(tasks, threads).await;
    tracing::info!("stopped");
    Ok(())
}
