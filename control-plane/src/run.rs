//! [`run`]: a control plane from its [`Config`]: the file provider compiles the manifests,
//! the [`Hub`] streams each snapshot to data planes over mutual-TLS gRPC, [`Children`]
//! keeps the live view of the child clusters merged in, and an embedded data plane serves
//! the same snapshots unless it is turned off.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use atrium_data_plane::node::{self, NodeError, Serving, Workers};
use atrium_data_plane::proxy::Gateway;
use atrium_data_plane::proxy::tls::CertStore;
use atrium_data_plane::trust::{NodeTrust, TrustError};
use atrium_data_plane::uplink::UplinkClient;
use atrium_proto::v1::snapshot_service_server::SnapshotServiceServer;
use atrium_provider::{Source, SourceError};
use tokio::sync::watch;

use crate::admin::ControlPlaneAdmin;
use crate::children::{Children, Polling};
use crate::hub::Hub;
use crate::publisher::{PortalSource, Publisher};
use crate::service::Snapshots;

/// What a control plane runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// How its embedded data plane and admin listener serve; its TLS material.
    pub serving: Serving,
    /// The manifests and values it compiles (watched).
    pub source: Source,
    /// The address of the snapshot gRPC service.
    pub grpc: SocketAddr,
    /// Whether this process serves the entrypoints too (an embedded data plane).
    pub embedded: bool,
    /// The directory `file://` OpenAPI specs may be read from (none: no `file://`).
    pub spec_dir: Option<std::path::PathBuf>,
    /// The developer portal, when served.
    pub portal: Option<PortalOptions>,
}

/// Where the portal listens and keeps its state.
#[derive(Debug, Clone)]
pub struct PortalOptions {
    /// The listener (mutual TLS, data planes only).
    pub listen: SocketAddr,
    /// The address data planes dial (`host:port`, a name the control plane's certificate
    /// carries); none: the listener's (its loopback when it listens on every address).
    pub advertise: Option<String>,
    /// The store: a SQLite file (default: `<state-dir>/portal.db`), or a `postgres://` URL
    /// that several control planes share.
    pub store: String,
}

/// Why a control plane cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    /// The configuration does not load or compile.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A listener, certificate or worker of the node.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The snapshot epoch cannot be recorded.
    #[error("recording the snapshot epoch in {}: {source}", dir.display())]
    Epoch {
        /// The state directory.
        dir: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The gRPC listener's TLS.
    #[error("snapshot gRPC TLS: {0}")]
    Tls(#[from] TrustError),
    /// The portal's store.
    #[error(transparent)]
    Store(#[from] atrium_portal::store::StoreError),
    /// The gRPC listener cannot be bound.
    #[error("binding gRPC on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs a control plane until `shutdown` completes, then closes snapshot streams and child
/// sessions and drains requests in flight.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), ControlPlaneError> {
    let Config { serving: o, source, grpc, embedded, spec_dir, portal } = cfg;
    source.check_exists()?;
    let first = source.compile_blocking().await?;
    let epoch = crate::hub::next_epoch(&o.state_dir)
        .map_err(|source| ControlPlaneError::Epoch { dir: o.state_dir.clone(), source })?;
    let hub = Hub::with_epoch(env!("CARGO_PKG_VERSION"), epoch);
    let (specs, mut specs_changed) = crate::specs::Specs::new(spec_dir);
    // The portal's listener is bound first: the snapshot says where it is.
    let portal_listener = match &portal {
        Some(p) => Some(
            tokio::net::TcpListener::bind(p.listen)
                .await
                .map_err(|source| ControlPlaneError::Bind { addr: p.listen, source })?,
        ),
        None => None,
    };
    let portal_grants = match (&portal, &portal_listener) {
        (Some(p), Some(l)) => Some(portal_grants(p, l.local_addr().unwrap_or(p.listen)).await?),
        _ => None,
    };
    let publisher = Publisher {
        hub: hub.clone(),
        base: Arc::new(Mutex::new(first.body.clone())),
        registry: Arc::default(),
        specs: specs.clone(),
        portal: portal_grants,
        last: Arc::default(),
    };
    specs.follow(&first.body.apis);
    {
        let (p, values) = (publisher.clone(), first.values.clone());
        let _ = tokio::task::spawn_blocking(move || p.ensure_users(&values)).await;
    }
    publisher.publish(Instant::now());
    {
        let p = publisher.clone();
        tokio::spawn(async move {
            while specs_changed.changed().await.is_ok() {
                p.publish(Instant::now());
            }
        });
    }

    let trust = grpc_trust(&o)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let grpc_task = serve_grpc(grpc, &trust, hub.clone(), stop_rx.clone()).await?;
    let (gw, certs) = o.gateway()?;
    gw.objects_left_out(first.left_out.len());
    let portal_task = match portal_listener {
        Some(l) => {
            let counters = embedded.then(|| gw.clone());
            Some(serve_portal(l, &trust, PortalSource(publisher.clone(), counters), stop_rx.clone())?)
        }
        None => None,
    };

    // Children: dialled with this control plane's certificate, polled, watched for
    // liveness; the list follows the values file.
    let children = {
        let p = publisher.clone();
        Children::new(trust, Arc::new(move |r| p.set_registry(r)))
    };
    children.set(&first.body.children, Polling::from_values(&first.values, o.liveness));

    let workers = if embedded { embed(&o, &gw, &certs, &hub, &stop_rx)? } else { Workers::default() };
    let extra = Arc::new(ControlPlaneAdmin {
        publisher: publisher.clone(),
        gw: gw.clone(),
        embedded,
        children: children.clone(),
    });
    let tasks: Vec<_> = o.admin(&gw, Some(extra), &stop_rx).await?.into_iter().collect();
    let _watch = {
        let (p, c, liveness, g, g2) = (publisher.clone(), children.clone(), o.liveness, gw.clone(), gw.clone());
        source.watch(
            move |cfg| {
                g2.objects_left_out(cfg.left_out.len());
                p.set_config(cfg.body, &cfg.values, &c, liveness)
            },
            move |why| g.swap_failed(format!("{why}; data planes keep the previous snapshot")),
        )?
    };
    shutdown.await;
    if let Some(k) = source.kubernetes_started() {
        // Another replica writes status from now on.
        k.leader.resign().await;
    }
    tracing::info!("shutting down: closing snapshot streams and child sessions, draining requests in flight");
    let _ = stop_tx.send(true);
    children.stop();
    let _ = grpc_task.await;
    if let Some(t) = portal_task {
        let _ = t.await;
    }
    node::join_all(tasks, workers).await;
    tracing::info!("stopped");
    Ok(())
}

/// The portal's store, opened (migrated) on a blocking thread, its grants read, and the
/// address data planes will dial.
async fn portal_grants(
    p: &PortalOptions,
    bound: SocketAddr,
) -> Result<crate::publisher::PortalGrants, ControlPlaneError> {
    let location = p.store.clone();
    let (store, grants, users) = tokio::task::spawn_blocking(move || {
        let store = atrium_portal::store::Store::connect(&location)?;
        let grants = store.grants()?;
        let users = store.users().map(|u| u.len()).unwrap_or(0);
        Ok::<_, atrium_portal::store::StoreError>((store, grants, users))
    })
    .await
    .map_err(|e| atrium_portal::store::StoreError::Invalid(format!("opening the portal store: {e}")))??;
    let address = match &p.advertise {
        Some(a) => a.clone(),
        None if bound.ip().is_unspecified() => {
            tracing::warn!(listen = %bound, "the portal listens on every address but no --portal-advertise is set: data planes in other hosts or pods cannot reach it");
            format!("127.0.0.1:{}", bound.port())
        }
        None => bound.to_string(),
    };
    tracing::info!(store = %store.location(), users, "portal store open");
    Ok(crate::publisher::PortalGrants {
        store,
        grants: Arc::new(Mutex::new(grants)),
        refreshing: Arc::new(Mutex::new(())),
        address,
    })
}

/// Serves the portal with mutual TLS (data planes only) until `stop`; a key that expires
/// leaves the snapshot within seconds.
fn serve_portal(
    listener: tokio::net::TcpListener,
    trust: &NodeTrust,
    source: PortalSource,
    stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, ControlPlaneError> {
    let publisher = &source.0.clone();
    use atrium_data_plane::pki::Role;
    let tls = Arc::new(trust.server_config(&[Role::DataPlane], "portal", &[b"http/1.1"], false)?);
    let store = publisher
        .portal
        .as_ref()
        .map(|g| g.store.clone())
        .ok_or_else(|| atrium_portal::store::StoreError::Invalid("the portal has no store".into()))?;
    let changes = store.changes();
    let portal = atrium_portal::Portal::new(store, Arc::new(source));
    if let Some(mut changes) = changes {
        // Other replicas' writes (PostgreSQL LISTEN/NOTIFY): read the grants again at once.
        let (p, mut stop) = (publisher.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    r = changes.changed() => if r.is_err() { return },
                }
                let p = p.clone();
                let _ = tokio::task::spawn_blocking(move || p.refresh_grants()).await;
            }
        });
    }
    {
        // Keys expire and operators change the store from the command line: read it again
        // now and then.
        let (p, mut stop) = (publisher.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                }
                let p = p.clone();
                let _ = tokio::task::spawn_blocking(move || p.refresh_grants()).await;
            }
        });
    }
    Ok(tokio::spawn(atrium_portal::serve(listener, tls, portal, stop)))
}

/// The control plane's certificate for gRPC and for dialling children; with a generated
/// PKI, also a client certificate for data planes started next to it (`--tls-dir
/// <state-dir>/pki`).
fn grpc_trust(o: &Serving) -> Result<NodeTrust, ControlPlaneError> {
    let files = o.node_files("control-plane")?;
    if o.tls_dir.is_none() {
        o.node_files("data-plane")?;
    }
    Ok(NodeTrust::load(&files).map_err(NodeError::from)?)
}

/// Serves the snapshot gRPC service with mutual TLS (data planes must present a
/// certificate from this installation's CA) until `stop`.
async fn serve_grpc(
    addr: SocketAddr,
    trust: &NodeTrust,
    hub: Arc<Hub>,
    stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>, ControlPlaneError> {
    let tls = crate::tls::server_config(trust)?;
    let bind_err = |source| ControlPlaneError::Bind { addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(bind_err)?;
    tracing::info!(addr = %listener.local_addr().map_err(bind_err)?, "snapshot gRPC listening (mTLS)");
    let mut grpc_stop = stop.clone();
    let server = tonic::transport::Server::builder()
        .add_service(SnapshotServiceServer::new(Snapshots::new(hub, stop)).max_encoding_message_size(256 << 20))
        .serve_with_incoming_shutdown(crate::tls::incoming(listener, tls), async move {
            let _ = grpc_stop.changed().await;
        });
    Ok(tokio::spawn(server))
}

/// The embedded data plane's id in `/api/dataplanes`.
const EMBEDDED_NODE: &str = "embedded";

/// The embedded data plane: it takes the same snapshots over an in-memory channel, reaches
/// children with the `data-plane` certificate, and serves the entrypoints.
fn embed(
    o: &Serving,
    gw: &Arc<Gateway>,
    certs: &Arc<CertStore>,
    hub: &Arc<Hub>,
    stop: &watch::Receiver<bool>,
) -> Result<Workers, NodeError> {
    let trust = o.node_trust("data-plane")?;
    let hub = hub.clone();
    gw.set_uplink_client(UplinkClient::new(trust.clone(), o.liveness));
    gw.set_portal_trust(&trust)?;
    let mut rx = hub.subscribe();
    let egw = gw.clone();
    tokio::spawn(async move {
        loop {
            let latest = rx.borrow_and_update().clone();
            if let Some(p) = latest {
                // A refusal is counted and logged by the gateway; nothing to answer here.
                let applied = egw.swap_snapshot(&p.snapshot);
                // The embedded data plane is listed with the others (`/api/dataplanes`).
                hub.update_node(EMBEDDED_NODE, |n| {
                    n.connected = true;
                    n.group = "default".into();
                    n.build_version = env!("CARGO_PKG_VERSION").into();
                    if let Err(e) = &applied {
                        n.last_nack = Some(e.to_string());
                    }
                });
                if let (Ok(()), Some(v)) = (&applied, p.snapshot.version) {
                    hub.acked(EMBEDDED_NODE, v);
                }
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
    o.serve(gw, certs, stop)
}
