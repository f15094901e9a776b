//! A node: what every serving role runs the same way (its entrypoints on worker threads,
//! its admin listener, its TLS material, its shutdown), and [`run`], a standalone data plane
//! fed by a control plane's snapshot stream.
//!
//! The gateway, the agent and the control plane's embedded data plane are nodes too: they
//! build a [`Serving`] from the same flags and call the same functions.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::pki::{self, NodeFiles};
use crate::proxy::admin::{self, AdminConfig, AdminExtra};
use crate::proxy::server::{self, EntryPoint, ServerLimits};
use crate::proxy::tls::{CertError, CertStore};
use crate::proxy::{AccessLog, Gateway};
use crate::snapshot::{self, ClientConfig};
use crate::trust::{NodeTrust, TrustError};
use crate::uplink::Liveness;
use crate::uplink::UplinkClient;
use crate::upstream::{UpstreamConfig, Upstreams};

/// One entrypoint to bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// The entrypoint's name (what routers name in `entryPoints`).
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Whether it speaks TLS.
    pub tls: bool,
}

/// How a node serves: what the shared flag groups (listeners, limits, timeouts, TLS,
/// admin, uplinks) say, for every serving role.
#[derive(Debug, Clone)]
pub struct Serving {
    /// The HTTP entrypoints.
    pub listeners: Vec<Listener>,
    /// The uplink entrypoints (QUIC; only an agent serves them).
    pub uplink_listeners: Vec<Listener>,
    /// The admin listener.
    pub admin: Option<AdminConfig>,
    /// Access log format.
    pub access_log: Option<AccessLog>,
    /// Listener limits and timeouts.
    pub limits: ServerLimits,
    /// Upstream timeouts.
    pub upstream: UpstreamConfig,
    /// Worker threads serving the entrypoints.
    pub workers: usize,
    /// Generated state (development PKI, default certificate).
    pub state_dir: PathBuf,
    /// TLS material (`ca.pem`, `<name>.pem`, `<name>-key.pem`); default:
    /// `<state-dir>/pki`, created on first start.
    pub tls_dir: Option<PathBuf>,
    /// Uplink QUIC keep-alive, idle timeout and limits.
    pub liveness: Liveness,
    /// API management: the longest rate-limit wait, the Redis failure policy.
    pub apim: crate::proxy::plan_limits::ApimConfig,
}

/// Why a node cannot start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A listener cannot be bound.
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: String,
        /// Its address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// A TLS file named by `--tls-dir` is missing.
    #[error("{}: missing (create it with `atrium certs issue --dir {} --name {name}`)", file.display(), dir.display())]
    MissingTlsFile {
        /// The file.
        file: PathBuf,
        /// The TLS directory.
        dir: PathBuf,
        /// The certificate's name.
        name: String,
    },
    /// The development PKI cannot be created.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// This node's certificate or CA does not load.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The default certificate.
    #[error("default certificate: {0}")]
    Certs(#[from] CertError),
    /// A worker thread or runtime cannot start.
    #[error("starting a worker: {0}")]
    Worker(std::io::Error),
}

impl Serving {
    /// The data plane itself, with no configuration yet, and the certificate store its
    /// TLS entrypoints serve from (default certificate kept in the state directory).
    pub fn gateway(&self) -> Result<(Arc<Gateway>, Arc<CertStore>), NodeError> {
        let certs = CertStore::persistent(&self.state_dir)?;
        Ok((self.gateway_with(certs.clone()), certs))
    }

    /// The data plane, serving TLS from `certs`.
    pub fn gateway_with(&self, certs: Arc<CertStore>) -> Arc<Gateway> {
        Gateway::new(Upstreams::new(self.upstream.clone()), self.access_log, certs, self.apim)
    }

    /// This node's PKI files: from `--tls-dir` (which must hold them), or created on first
    /// start in `<state-dir>/pki`.
    pub fn node_files(&self, name: &str) -> Result<NodeFiles, NodeError> {
        match &self.tls_dir {
            Some(d) => {
                let f = NodeFiles::new(d, name);
                for p in [&f.ca, &f.cert, &f.key] {
                    if !p.is_file() {
                        return Err(NodeError::MissingTlsFile { file: p.clone(), dir: d.clone(), name: name.into() });
                    }
                }
                Ok(f)
            }
            None => Ok(pki::ensure(&self.state_dir.join("pki"), name, &[])?),
        }
    }

    /// This node's TLS material (see [`Serving::node_files`]), re-read whenever its files
    /// change.
    pub fn node_trust(&self, name: &str) -> Result<NodeTrust, NodeError> {
        Ok(NodeTrust::load(&self.node_files(name)?)?)
    }

    /// Binds the entrypoints and serves them (see [`serve_entrypoints`]).
    pub fn serve(
        &self,
        gw: &Arc<Gateway>,
        certs: &Arc<CertStore>,
        stop: &watch::Receiver<bool>,
    ) -> Result<Workers, NodeError> {
        serve_entrypoints(&self.listeners, gw, certs, &self.limits, &self.upstream, self.workers, stop)
    }

    /// Starts the admin listener, if one is configured.
    pub async fn admin(
        &self,
        gw: &Arc<Gateway>,
        extra: Option<Arc<dyn AdminExtra>>,
        stop: &watch::Receiver<bool>,
    ) -> Result<Option<tokio::task::JoinHandle<()>>, NodeError> {
        let Some(cfg) = &self.admin else { return Ok(None) };
        let bind_err =
            |source| NodeError::Bind { what: "the admin listener".into(), addr: cfg.addr.to_string(), source };
        let l = admin::bind(cfg).await.map_err(bind_err)?;
        tracing::info!(addr = %l.local_addr().map_err(bind_err)?, token = cfg.token.is_some(), "admin listening");
        Ok(Some(tokio::spawn(admin::serve(l, gw.clone(), extra, cfg.token.clone(), stop.clone()))))
    }
}

/// The worker threads serving a node's entrypoints.
#[derive(Debug, Default)]
pub struct Workers(Vec<std::thread::JoinHandle<Result<(), NodeError>>>);

/// Binds the entrypoints and serves them on `workers` threads: each with its own
/// current-thread runtime, its own socket per entrypoint (`SO_REUSEPORT` spreads
/// connections) and its own upstream pool, so a request never hops between threads. The
/// route table is shared through the gateway's `ArcSwap`.
pub fn serve_entrypoints(
    listeners: &[Listener],
    gw: &Arc<Gateway>,
    certs: &Arc<CertStore>,
    limits: &ServerLimits,
    upstream: &UpstreamConfig,
    workers: usize,
    stop: &watch::Receiver<bool>,
) -> Result<Workers, NodeError> {
    let workers = workers.max(1);
    let bind = |name: &str, addr: SocketAddr| {
        EntryPoint::bind_shared(addr).map_err(|source| NodeError::Bind {
            what: format!("entrypoint {name}"),
            addr: addr.to_string(),
            source,
        })
    };
    let mut sockets: Vec<Vec<(String, std::net::TcpListener, bool)>> = (0..workers).map(|_| Vec::new()).collect();
    for l in listeners {
        let first = bind(&l.name, l.addr)?;
        let local = first.local_addr().map_err(|source| NodeError::Bind {
            what: format!("entrypoint {}", l.name),
            addr: l.addr.to_string(),
            source,
        })?;
        tracing::info!(name = %l.name, addr = %local, tls = l.tls, workers, "entrypoint listening");
        sockets[0].push((l.name.clone(), first, l.tls));
        for w in sockets.iter_mut().skip(1) {
            w.push((l.name.clone(), bind(&l.name, local)?, l.tls));
        }
    }
    let mut threads = Vec::new();
    for (i, eps) in sockets.into_iter().enumerate() {
        let (gw, stop, limits, upstream) = (gw.clone(), stop.clone(), limits.clone(), upstream.clone());
        let tls_cfg = certs.server_config();
        let thread = std::thread::Builder::new().name(format!("atrium-worker-{i}")).spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(NodeError::Worker)?;
            rt.block_on(async move {
                let up = Arc::new(Upstreams::new(upstream));
                let mut tasks = Vec::new();
                for (name, sock, tls) in eps {
                    let ep = EntryPoint::from_std(&name, sock, tls.then(|| tls_cfg.clone())).map_err(|source| {
                        NodeError::Bind { what: format!("entrypoint {name}"), addr: String::new(), source }
                    })?;
                    tasks.push(tokio::spawn(server::serve(ep, gw.clone(), up.clone(), limits.clone(), stop.clone())));
                }
                for t in tasks {
                    let _ = t.await;
                }
                Ok(())
            })
        });
        threads.push(thread.map_err(NodeError::Worker)?);
    }
    Ok(Workers(threads))
}

/// Waits for the serving tasks and the worker threads to finish draining.
pub async fn join_all(tasks: Vec<tokio::task::JoinHandle<()>>, workers: Workers) {
    for t in tasks {
        let _ = t.await;
    }
    for t in workers.0 {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
}

/// Completes on SIGTERM or Ctrl-C, then keeps serving for `delay` while `/readyz` answers
/// 503, so that load balancers and Kubernetes remove this endpoint before the listeners
/// close (`--shutdown-delay`).
pub async fn shutdown_after_delay(delay: std::time::Duration) {
    shutdown_signal().await;
    if !delay.is_zero() {
        crate::proxy::admin::start_draining();
        tracing::info!(
            delay_ms = delay.as_millis() as u64,
            "shutting down: /readyz answers 503 while endpoints are removed"
        );
        tokio::time::sleep(delay).await;
    }
}

/// Waits for SIGINT or SIGTERM: what a process passes as the `shutdown` of a role's `run`.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Why an address flag does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{0:?}: expected :PORT, IP:PORT or [IPv6]:PORT")]
pub struct AddrError(pub String);

/// `:8000` (every interface), `127.0.0.1:8000` or `[::1]:8000`.
pub fn parse_addr(s: &str) -> Result<SocketAddr, AddrError> {
    parse_addr_or(s, IpAddr::from([0, 0, 0, 0]))
}

/// The admin listener's address: as [`parse_addr`], except that a bare `:PORT` binds
/// loopback (the admin API is for this host unless an address says otherwise).
pub fn parse_admin_addr(s: &str) -> Result<SocketAddr, AddrError> {
    parse_addr_or(s, IpAddr::from([127, 0, 0, 1]))
}

fn parse_addr_or(s: &str, bare: IpAddr) -> Result<SocketAddr, AddrError> {
    let parsed = match s.strip_prefix(':') {
        Some(port) => port.parse().map(|p| SocketAddr::new(bare, p)).ok(),
        None => s.parse().ok(),
    };
    parsed.ok_or_else(|| AddrError(s.to_string()))
}

/// A standalone data plane: what `atrium data-plane` runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// How it serves.
    pub serving: Serving,
    /// The control plane's gRPC URL (`https://host:port`).
    pub control_plane: String,
    /// This node's id (unique per data plane).
    pub node_id: String,
    /// The group of data planes sharing one configuration.
    pub group: String,
    /// Where the last acknowledged snapshot is kept.
    pub cache_dir: PathBuf,
    /// The name of this node's certificate in the TLS directory.
    pub tls_name: String,
    /// How often request counts are reported to the control plane.
    pub usage_interval: Duration,
}

/// Runs a data plane until `shutdown` completes: serves the cached snapshot first, then
/// every snapshot the control plane streams, and keeps serving when the control plane is
/// away. On shutdown, requests in flight drain.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
    let o = &cfg.serving;
    let (gw, certs) = o.gateway()?;
    let tls = if cfg.control_plane.starts_with("https://") {
        let trust = o.node_trust(&cfg.tls_name)?;
        // The same certificate opens uplinks to children.
        gw.set_uplink_client(UplinkClient::new(trust.clone(), o.liveness));
        gw.set_portal_trust(&trust)?;
        Some(trust)
    } else {
        tracing::warn!(
            "the control-plane URL is not https: snapshots, and the TLS keys they carry, travel without TLS"
        );
        None
    };
    serve_cached(&gw, &cfg.cache_dir);
    let (stop_tx, stop_rx) = watch::channel(false);
    let client = ClientConfig {
        endpoint: cfg.control_plane.clone(),
        node_id: cfg.node_id.clone(),
        group: cfg.group.clone(),
        tls,
        cache_dir: Some(cfg.cache_dir.clone()),
        usage_interval: cfg.usage_interval,
    };
    let stream_task = tokio::spawn(snapshot::run(gw.clone(), client, stop_rx.clone()));
    let workers = o.serve(&gw, &certs, &stop_rx)?;
    let tasks: Vec<_> = o.admin(&gw, None, &stop_rx).await?.into_iter().collect();
    shutdown.await;
    tracing::info!("shutting down: draining requests in flight");
    let _ = stop_tx.send(true);
    let _ = stream_task.await;
    join_all(tasks, workers).await;
    Ok(())
}

/// Cold start: serves the last acknowledged snapshot before the control plane answers.
fn serve_cached(gw: &Gateway, cache_dir: &std::path::Path) {
    match snapshot::load_cache(cache_dir) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_a_bare_port_meaning_any_or_loopback() {
        assert_eq!(parse_addr(":8000").unwrap(), "0.0.0.0:8000".parse().unwrap());
        assert_eq!(parse_admin_addr(":9000").unwrap(), "127.0.0.1:9000".parse().unwrap());
        assert_eq!(parse_addr("[::1]:80").unwrap(), "[::1]:80".parse().unwrap());
        assert!(parse_addr("localhost:80").is_err());
        assert!(parse_addr(":99999").unwrap_err().to_string().contains(":99999"));
    }

    #[test]
    fn a_tls_dir_without_the_node_files_names_the_missing_file_and_the_fix() {
        let dir = std::env::temp_dir().join(format!("atrium-node-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let serving = Serving {
            listeners: vec![],
            uplink_listeners: vec![],
            admin: None,
            access_log: None,
            limits: ServerLimits::default(),
            upstream: UpstreamConfig::default(),
            workers: 1,
            state_dir: dir.clone(),
            tls_dir: Some(dir.clone()),
            liveness: Liveness::default(),
            apim: Default::default(),
        };
        let e = serving.node_files("data-plane").unwrap_err().to_string();
        assert!(e.contains("ca.pem: missing"), "{e}");
        assert!(e.contains("atrium certs issue"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
