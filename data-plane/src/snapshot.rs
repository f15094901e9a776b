//! The data plane's side of the snapshot stream, and its disk cache.
//!
//! The client says `Hello` with what it runs, applies each snapshot through
//! [`Compiled::from_snapshot`] (which checks the hash) and answers `Ack` or `Nack`; on a
//! `Nack` the previous table stays. Every acknowledged snapshot is written to the cache
//! (write, fsync, rename; mode 0600; it never holds a private key), so a restarted data
//! plane serves before the control plane answers — or while it is away. The connection
//! is retried with exponential backoff and jitter.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use atrium_proto::v1 as pb;
use atrium_proto::v1::snapshot_service_client::SnapshotServiceClient;
use pb::control_plane_message::Msg as CpMsg;
use pb::data_plane_message::Msg as DpMsg;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::proxy::{Compiled, Gateway};

/// The cache file inside the cache directory.
pub const CACHE_FILE: &str = "snapshot.pb";

/// Why the snapshot cache cannot be written or used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The file or its directory cannot be written or read.
    #[error("{file}: {source}")]
    Io {
        /// The file or directory.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a snapshot, or not one that compiles.
    #[error("{file}: {reason}")]
    Corrupt {
        /// The file.
        file: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Writes `s` to `dir/snapshot.pb` atomically.
pub fn store_cache(dir: &Path, s: &pb::Snapshot) -> Result<(), CacheError> {
    let io = |file: PathBuf| move |source| CacheError::Io { file, source };
    std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
    let tmp = dir.join(format!(".{CACHE_FILE}.tmp"));
    crate::pki::write_private(&tmp, &s.encode_to_vec()).map_err(|e| match e {
        crate::pki::PkiError::Io { file, source } => CacheError::Io { file, source },
        other => CacheError::Corrupt { file: tmp.clone(), reason: other.to_string() },
    })?;
    let path = dir.join(CACHE_FILE);
    std::fs::rename(&tmp, &path).map_err(io(path.clone()))?;
    // Make the rename itself durable.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads the cache; `Ok(None)` when there is none, `Err` when it is unreadable or corrupt.
pub fn load_cache(dir: &Path) -> Result<Option<Compiled>, CacheError> {
    let path = dir.join(CACHE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CacheError::Io { file: path, source }),
    };
    let corrupt = |reason: String| CacheError::Corrupt { file: path.clone(), reason };
    let s = pb::Snapshot::decode(bytes.as_slice()).map_err(|e| corrupt(format!("not a snapshot: {e}")))?;
    Compiled::from_snapshot(&s).map(Some).map_err(|e| corrupt(e.to_string()))
}

/// Requests per router since the last report (counters are reset as they are read).
pub fn take_usage(gw: &Gateway) -> Vec<pb::UsageEntry> {
    let Some(rt) = gw.in_force() else { return Vec::new() };
    let mut out: Vec<pb::UsageEntry> = rt
        .table
        .routers()
        .iter()
        .filter_map(|r| {
            let n = r.state.served.swap(0, std::sync::atomic::Ordering::Relaxed);
            (n > 0).then(|| pb::UsageEntry {
                router: r.id.clone(),
                service: r.service.clone(),
                api: r.api.clone().unwrap_or_default(),
                application: String::new(),
                plan: String::new(),
                requests: n,
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.router, &a.service).cmp(&(&b.router, &b.service)));
    out
}

/// Why a snapshot of `incoming` version must not replace the one of `current`: it comes
/// from an older control-plane epoch (a control plane that started before the one this
/// table came from: a stale replica, or a replay), or is an earlier sequence of the same
/// epoch. `None` when it may be applied.
pub fn older(current: Option<pb::Version>, incoming: Option<pb::Version>) -> Option<String> {
    let (cur, new) = (current?, incoming.unwrap_or_default());
    if new.epoch < cur.epoch {
        return Some(format!(
            "snapshot of control-plane epoch {} is older than the one in force (epoch {}); refused",
            new.epoch, cur.epoch
        ));
    }
    (new.epoch == cur.epoch && new.seq < cur.seq).then(|| {
        format!("snapshot {} is older than the one in force ({}) of the same epoch; refused", new.seq, cur.seq)
    })
}

/// How to reach the control plane.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `https://host:port` (or `http://` without TLS).
    pub endpoint: String,
    /// This node's id.
    pub node_id: String,
    /// Its group.
    pub group: String,
    /// This node's certificate and the installation's CA; `None` only for plain-text
    /// endpoints.
    pub tls: Option<crate::trust::NodeTrust>,
    /// Where acknowledged snapshots are kept.
    pub cache_dir: Option<PathBuf>,
    /// How often usage is reported.
    pub usage_interval: Duration,
}

fn jitter(max: Duration) -> Duration {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    Duration::from_nanos(u64::from(nanos) % max.as_nanos().max(1) as u64)
}

/// Keeps a stream to the control plane open until `shutdown`, reconnecting with backoff.
pub async fn run(gw: Arc<Gateway>, cfg: ClientConfig, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    let connected = gw
        .metrics
        .control_plane_connected
        .get_or_create(&crate::metrics::NodeLabels { node: crate::metrics::Label(Arc::from(cfg.node_id.as_str())) })
        .clone();
    connected.set(0);
    loop {
        let started = std::time::Instant::now();
        let result = tokio::select! {
            r = session(&gw, &cfg, &connected) => r,
            _ = shutdown.changed() => return,
        };
        connected.set(0);
        match result {
            Ok(()) => {
                tracing::warn!(endpoint = %cfg.endpoint, "control plane closed the snapshot stream; reconnecting")
            }
            Err(e) => {
                tracing::warn!(endpoint = %cfg.endpoint, error = %e, "snapshot stream failed; serving the current table and retrying")
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        let wait = backoff + jitter(backoff / 2 + Duration::from_millis(1));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Why a snapshot stream ended.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The control-plane URL does not parse.
    #[error("invalid control-plane URL {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// This node's TLS material cannot be used.
    #[error("TLS configuration: {0}")]
    Tls(#[from] crate::trust::TrustError),
    /// No connection.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The control plane refused the stream (version skew, say).
    #[error("control plane refused the stream: {message} ({code:?})")]
    Refused {
        /// Its message.
        message: String,
        /// The gRPC status code.
        code: tonic::Code,
    },
    /// The stream failed.
    #[error("stream error: {0}")]
    Stream(String),
    /// The stream closed under this side.
    #[error("stream closed")]
    Closed,
}

async fn session(
    gw: &Arc<Gateway>,
    cfg: &ClientConfig,
    connected: &prometheus_client::metrics::gauge::Gauge,
) -> Result<(), StreamError> {
    let channel = connect(cfg).await?;
    let mut client = SnapshotServiceClient::new(channel).max_decoding_message_size(256 << 20);
    let (tx, rx) = mpsc::channel::<pb::DataPlaneMessage>(16);
    // The table in force when the stream opens, named in the Hello and let go at once:
    // holding it would keep a replaced table (and its health checks) alive for as long
    // as the session lasts.
    let hello = hello(cfg, gw.in_force().as_deref());
    tx.send(pb::DataPlaneMessage { msg: Some(DpMsg::Hello(hello)) }).await.map_err(|_| StreamError::Closed)?;
    let mut inbound = client
        .stream(ReceiverStream::new(rx))
        .await
        .map_err(|s| StreamError::Refused { message: s.message().to_string(), code: s.code() })?
        .into_inner();
    tracing::info!(endpoint = %cfg.endpoint, node = %cfg.node_id, "connected to the control plane");
    connected.set(1);
    let _stop_reporter = AbortOnDrop(spawn_usage_reporter(gw.clone(), cfg.usage_interval, tx.clone()));
    while let Some(msg) = inbound.message().await.map_err(|s| StreamError::Stream(s.message().to_string()))? {
        match msg.msg {
            Some(CpMsg::Snapshot(s)) => {
                let reply = apply(gw, cfg, &s);
                tx.send(pb::DataPlaneMessage { msg: Some(reply) }).await.map_err(|_| StreamError::Closed)?;
            }
            Some(CpMsg::UpToDate(u)) => {
                tracing::info!(version = ?u.version, "the table in force is already current");
            }
            None => {}
        }
    }
    Ok(())
}

/// Connects to the control plane, over TLS when configured.
async fn connect(cfg: &ClientConfig) -> Result<Channel, StreamError> {
    // With TLS, the connection is made here (rustls with this node's reloading certificate,
    // the control plane's role checked), and tonic speaks HTTP/2 over it.
    let uri = match &cfg.tls {
        Some(_) => cfg.endpoint.replacen("https://", "http://", 1),
        None => cfg.endpoint.clone(),
    };
    let ep = Endpoint::from_shared(uri)
        .map_err(|e| StreamError::Url { url: cfg.endpoint.clone(), reason: e.to_string() })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10));
    match &cfg.tls {
        Some(t) => {
            let host = cfg
                .endpoint
                .split("://")
                .nth(1)
                .and_then(|r| r.rsplit_once(':').map(|(h, _)| h).or(Some(r)))
                .map(|h| h.trim_matches(['[', ']']).trim_end_matches('/'))
                .unwrap_or("localhost")
                .to_string();
            let verifier = t.server_verifier(crate::pki::Role::ControlPlane, "snapshot stream")?;
            let tls = t.client_config(verifier, &[b"h2"], false)?;
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| StreamError::Url { url: cfg.endpoint.clone(), reason: format!("host {host:?}: {e}") })?;
            ep.connect_with_connector(TlsConnector { tls: Arc::new(tls), name }).await
        }
        None => ep.connect().await,
    }
    .map_err(|e| StreamError::Connect(source_chain(&e)))
}

/// The Hello that opens a stream: this node, and the snapshot it runs (`current`).
fn hello(cfg: &ClientConfig, current: Option<&Compiled>) -> pb::Hello {
    pb::Hello {
        node_id: cfg.node_id.clone(),
        group: cfg.group.clone(),
        build_version: env!("CARGO_PKG_VERSION").to_string(),
        last_version: current.map(|r| pb::Version { epoch: r.epoch, seq: r.version }),
        last_hash: current.map(|r| r.hash.clone()).unwrap_or_default(),
    }
}

/// Reports the routers' usage on `tx` every `interval` (at least 10 ms), skipping empty
/// windows, until the stream is gone.
fn spawn_usage_reporter(
    gw: Arc<Gateway>,
    interval: Duration,
    tx: mpsc::Sender<pb::DataPlaneMessage>,
) -> tokio::task::JoinHandle<()> {
    let interval = interval.max(Duration::from_millis(10));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            let entries = take_usage(&gw);
            if entries.is_empty() {
                continue;
            }
            let usage = pb::Usage { window_ms: interval.as_millis() as u64, entries };
            if tx.send(pb::DataPlaneMessage { msg: Some(DpMsg::Usage(usage)) }).await.is_err() {
                return;
            }
        }
    })
}

/// Applies a snapshot unless it is older than the table in force (caching it when it
/// applies); returns the Ack or Nack to answer.
fn apply(gw: &Gateway, cfg: &ClientConfig, s: &pb::Snapshot) -> DpMsg {
    let version = s.version;
    let current = gw.in_force().map(|r| pb::Version { epoch: r.epoch, seq: r.version });
    let checked = match older(current, version) {
        Some(why) => {
            let e = crate::proxy::CompileError::Older(why);
            gw.swap_failed(&e);
            Err(e)
        }
        None => gw.swap_snapshot(s),
    };
    match checked {
        Ok(()) => {
            if let Some(dir) = &cfg.cache_dir {
                if let Err(e) = store_cache(dir, s) {
                    tracing::error!(error = %e, "could not write the snapshot cache");
                }
            }
            DpMsg::Ack(pb::Ack { version, hash: s.hash.to_vec() })
        }
        Err(e) => DpMsg::Nack(pb::Nack { version, error: e.to_string() }),
    }
}

/// TCP and TLS to the control plane, for tonic: the URI names the address, the TLS
/// configuration what to present and what to expect.
#[derive(Clone)]
struct TlsConnector {
    tls: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
}

type Tls = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl tower_service::Service<http::Uri> for TlsConnector {
    type Response = Tls;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Tls, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (tls, name) = (self.tls.clone(), self.name.clone());
        Box::pin(async move {
            let authority =
                uri.authority().map(|a| a.to_string()).ok_or_else(|| std::io::Error::other("no address"))?;
            let tcp = tokio::net::TcpStream::connect(authority).await?;
            let _ = tcp.set_nodelay(true);
            let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(seq: u64) -> pb::Snapshot {
        atrium_proto::seal(pb::Version { epoch: 7, seq }, &pb::SnapshotBody::default())
    }

    #[test]
    fn snapshots_of_older_epochs_or_sequences_are_refused() {
        let v = |epoch, seq| Some(pb::Version { epoch, seq });
        assert!(older(None, v(1, 1)).is_none(), "nothing in force: anything goes");
        assert!(older(v(5, 3), v(6, 1)).is_none(), "a newer control plane");
        assert!(older(v(5, 3), v(5, 4)).is_none(), "the next change");
        assert!(older(v(5, 3), v(5, 3)).is_none(), "the same version again");
        assert!(older(v(5, 3), v(4, 9)).unwrap().contains("epoch 4 is older than the one in force (epoch 5)"));
        assert!(older(v(5, 3), v(5, 2)).unwrap().contains("older than the one in force (3)"));
    }

    #[test]
    fn cache_roundtrip_is_private_and_corruption_is_reported() {
        let dir = std::env::temp_dir().join(format!("atrium-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(load_cache(&dir).unwrap().is_none());
        store_cache(&dir, &snapshot(3)).unwrap();
        let rt = load_cache(&dir).unwrap().unwrap();
        assert_eq!((rt.epoch, rt.version), (7, 3));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(dir.join(CACHE_FILE)).unwrap().permissions().mode() & 0o777, 0o600);
        }
        std::fs::write(dir.join(CACHE_FILE), b"\x0a\x05garbage").unwrap();
        assert!(load_cache(&dir).is_err());
        let mut s = snapshot(4);
        s.hash[0] ^= 1;
        std::fs::write(dir.join(CACHE_FILE), s.encode_to_vec()).unwrap();
        assert!(load_cache(&dir).unwrap_err().to_string().contains("hash"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
