//! The local gateway: manifests compiled into a route table and served, reloaded on every
//! good change. `atrium gateway` runs it alone; [`crate::run`] runs it with uplinks.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use atrium_data_plane::node::{self, NodeError, Serving};
use atrium_data_plane::proxy::tls::CertStore;
use atrium_data_plane::proxy::{CompileError, Compiled, Gateway};
use atrium_proto::v1 as pb;
use atrium_provider::{Source, SourceError, Watch};
use tokio::sync::watch;

/// Where the default TLS certificate (for names no router's certificate serves) comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultCert {
    /// Generated at start, for this process only.
    Generated,
    /// Generated once and kept in the state directory.
    StateDir,
    /// `gateway.pem` and `gateway-key.pem` of the TLS directory, re-read on change.
    TlsDir,
}

/// What `atrium gateway` runs.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// How it serves.
    pub serving: Serving,
    /// The manifests and values it compiles (watched).
    pub source: Source,
    /// Its default certificate.
    pub default_cert: DefaultCert,
}

/// Why a gateway or an agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The configuration does not load or compile.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The compiled configuration does not form a route table.
    #[error("the configuration does not compile: {0}")]
    Compile(#[from] CompileError),
    /// A listener, certificate or worker of the node.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// `--cluster` is not a DNS label.
    #[error("--cluster {0:?} must be a DNS label")]
    ClusterName(String),
    /// `--tls-dir` has no usable gateway certificate.
    #[error("--tls-dir: {error} (create it with `atrium certs issue --dir {} --name gateway --san <host>`)", dir.display())]
    GatewayCert {
        /// The TLS directory.
        dir: std::path::PathBuf,
        /// What is wrong with its `gateway.pem` / `gateway-key.pem`.
        error: atrium_data_plane::proxy::tls::CertError,
    },
    /// An agent with no uplink entrypoint has nothing to offer parents.
    #[error("no uplink entrypoint: mark a port `uplink: true` in the values (the guide's `ports.multicluster`)")]
    NoUplinkEntryPoint,
    /// An uplink entrypoint cannot be bound.
    #[error("binding uplink entrypoint {name} on udp {addr}: {source}")]
    UplinkBind {
        /// The entrypoint.
        name: String,
        /// Its address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The uplink entrypoints' TLS.
    #[error("uplink TLS: {0}")]
    UplinkTls(#[from] atrium_data_plane::uplink::tls::UplinkTlsError),
}

/// Swaps compiled configurations into a gateway, numbering them (the first is 1).
#[derive(Debug)]
pub(crate) struct Swapper {
    gw: Arc<Gateway>,
    version: AtomicU64,
}

impl Swapper {
    pub(crate) fn new(gw: Arc<Gateway>) -> Swapper {
        Swapper { gw, version: AtomicU64::new(0) }
    }

    /// Builds `body` into a runtime and puts it in force; an error leaves the previous one.
    /// The configuration in force again (a reload that changed nothing) is not swapped.
    pub(crate) fn swap(&self, body: pb::SnapshotBody) -> Result<(), CompileError> {
        let (_, hash) = atrium_proto::encode(&body);
        if self.gw.in_force().is_some_and(|rt| rt.hash == hash.as_slice()) {
            return Ok(());
        }
        let v = self.version.fetch_add(1, Ordering::Relaxed) + 1;
        let started = std::time::Instant::now();
        let compiled = Compiled::build_hashed(body, v, hash)?;
        tracing::debug!(version = v, build_ms = started.elapsed().as_secs_f64() * 1e3, "route table built");
        self.gw.swap(compiled);
        Ok(())
    }

    /// Watches `source`: each good change is swapped in, and `then` hears of it; every
    /// refusal is counted and logged.
    pub(crate) fn watch(
        self: &Arc<Self>,
        source: &Source,
        then: impl Fn(&pb::SnapshotBody) + Send + Sync + 'static,
    ) -> Result<Watch, SourceError> {
        let (s, g) = (self.clone(), self.gw.clone());
        source.watch(
            move |cfg| {
                s.gw.objects_left_out(cfg.left_out.len());
                match s.swap(cfg.body) {
                    // The body in force (this one, or the same one already in force).
                    Ok(()) => {
                        if let Some(rt) = s.gw.in_force() {
                            then(&rt.body);
                        }
                    }
                    Err(e) => s.gw.swap_failed(&e),
                }
            },
            move |why| g.swap_failed(why),
        )
    }
}

/// The default certificate store `which` asks for.
fn certificates(o: &Serving, which: DefaultCert) -> Result<Arc<CertStore>, GatewayError> {
    let store = match (which, &o.tls_dir) {
        (DefaultCert::TlsDir, Some(d)) => {
            let f = atrium_data_plane::pki::NodeFiles::new(d, "gateway");
            return CertStore::from_files(&f.cert, &f.key)
                .map_err(|error| GatewayError::GatewayCert { dir: d.clone(), error });
        }
        (DefaultCert::StateDir, _) => CertStore::persistent(&o.state_dir),
        _ => CertStore::generated(),
    };
    Ok(store.map_err(NodeError::from)?)
}

/// Runs a gateway until `shutdown` completes, then drains requests in flight.
pub async fn run_gateway(cfg: GatewayConfig, shutdown: impl Future<Output = ()>) -> Result<(), GatewayError> {
    let GatewayConfig { serving: o, source, default_cert } = cfg;
    source.check_exists()?;
    let first = source.compile_blocking().await?;
    let certs = certificates(&o, default_cert)?;
    let gw = o.gateway_with(certs.clone());
    let swapper = Arc::new(Swapper::new(gw.clone()));
    gw.objects_left_out(first.left_out.len());
    swapper.swap(first.body)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let workers = o.serve(&gw, &certs, &stop_rx)?;
    let tasks: Vec<_> = o.admin(&gw, None, &stop_rx).await?.into_iter().collect();
    let _watch = swapper.watch(&source, |_| {})?;
    shutdown.await;
    tracing::info!("shutting down: draining requests in flight");
    let _ = stop_tx.send(true);
    node::join_all(tasks, workers).await;
    Ok(())
}
