//! [`run`]: an agent from its [`Config`]: the local gateway, its uplinks with their health
//! checks, and the uplink server parents connect to; on shutdown, uplinks are withdrawn
//! first so parents stop sending here while what is in flight finishes.

use std::future::Future;
use std::sync::Arc;

use atrium_data_plane::node::{self, Serving};
use atrium_data_plane::proxy::Gateway;
use atrium_data_plane::trust::NodeTrust;
use atrium_data_plane::upstream::Upstreams;
use atrium_provider::Source;
use tokio::sync::watch;

use crate::gateway::{GatewayError, Swapper};
use crate::server::{InFlight, UplinkServer, serve_quic};
use crate::uplinks::Uplinks;

/// What `atrium agent` runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// How it serves: its HTTP entrypoints, and the uplink entrypoints parents dial.
    pub serving: Serving,
    /// The manifests and values it compiles (watched): routes and uplinks follow them.
    pub source: Source,
    /// The cluster's name (the key of this child under the parent's `children`).
    pub cluster: String,
    /// The name of its certificate in the TLS directory (default: the cluster name).
    pub tls_name: Option<String>,
}

/// Runs an agent until `shutdown` completes.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), GatewayError> {
    let Config { serving: o, source, cluster, tls_name } = cfg;
    if !atrium_routing::children::is_valid_name(&cluster) {
        return Err(GatewayError::ClusterName(cluster));
    }
    source.check_exists()?;
    if o.uplink_listeners.is_empty() {
        return Err(GatewayError::NoUplinkEntryPoint);
    }
    let first = source.compile_blocking().await?;
    let (gw, certs) = o.gateway()?;
    let swapper = Arc::new(Swapper::new(gw.clone()));
    let first_uplinks = first.body.uplinks.clone();
    gw.objects_left_out(first.left_out.len());
    swapper.swap(first.body)?;
    let up = Arc::new(Upstreams::new(o.upstream.clone()));
    let metrics = Arc::new(crate::metrics::AgentMetrics::default());
    let in_flight = Arc::new(InFlight::default());
    let uplinks = Uplinks::new(&cluster, gw.clone(), up.clone(), metrics.clone());
    uplinks.set(first_uplinks);
    let (stop_tx, stop_rx) = watch::channel(false);
    let workers = o.serve(&gw, &certs, &stop_rx)?;
    let trust = o.node_trust(tls_name.as_deref().unwrap_or(&cluster))?;
    let serving = Serve { o: &o, cluster: &cluster, trust: &trust, gw: &gw, up: &up, uplinks: &uplinks };
    let mut tasks = serve_uplinks(&serving, &metrics, &in_flight, &stop_rx)?;
    let admin = crate::metrics::AgentAdmin { metrics, uplinks: uplinks.clone(), in_flight };
    tasks.extend(o.admin(&gw, Some(Arc::new(admin)), &stop_rx).await?);
    let watch = {
        let u = uplinks.clone();
        // Parents hear of added, changed and removed uplinks at once.
        swapper.watch(&source, move |body| u.set(body.uplinks.clone()))?
    };
    if let Some(k) = source.kubernetes_started() {
        report_health(k.status.clone(), uplinks.clone());
    }
    shutdown.await;
    if let Some(k) = source.kubernetes_started() {
        // Another replica writes status from now on.
        k.leader.resign().await;
    }
    // No reload from here on: a configuration change during the drain must not advertise
    // the uplinks again.
    drop(watch);
    tracing::info!("shutting down: withdrawing uplinks, draining requests in flight");
    // Parents hear first, so they stop sending here while what is in flight finishes.
    uplinks.withdraw();
    let _ = stop_tx.send(true);
    node::join_all(tasks, workers).await;
    tracing::info!("stopped");
    Ok(())
}

/// Writes each Uplink's health, as parents are told it, into its `Healthy` condition.
fn report_health(status: atrium_k8s::StatusWriter, uplinks: Arc<Uplinks>) {
    let mut rx = uplinks.state().subscribe();
    tokio::spawn(async move {
        loop {
            let told = rx.borrow_and_update().clone();
            for u in uplinks.configured() {
                let Some(s) = told.uplinks.iter().find(|s| s.name == u.name) else { continue };
                let c = match (s.healthy, u.health_check.is_some()) {
                    (true, true) => {
                        atrium_k8s::Condition::new("Healthy", true, "HealthCheckPassed", "the health check passes")
                    }
                    (true, false) => {
                        atrium_k8s::Condition::new("Healthy", true, "NoHealthCheck", "no health check: always offered")
                    }
                    (false, _) => atrium_k8s::Condition::new(
                        "Healthy",
                        false,
                        "HealthCheckFailed",
                        "the health check fails (or the agent is stopping): parents route elsewhere",
                    ),
                };
                status.set_condition(&format!("Uplink {}", u.id), c);
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
}

/// Binds every uplink entrypoint (QUIC, mutual TLS: parents' control-plane and data-plane
/// certificates only) and serves parents on it until `stop`.
/// What the uplink entrypoints serve.
struct Serve<'a> {
    o: &'a Serving,
    cluster: &'a str,
    trust: &'a NodeTrust,
    gw: &'a Arc<Gateway>,
    up: &'a Arc<Upstreams>,
    uplinks: &'a Uplinks,
}

fn serve_uplinks(
    s: &Serve<'_>,
    metrics: &Arc<crate::metrics::AgentMetrics>,
    in_flight: &Arc<InFlight>,
    stop: &watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, GatewayError> {
    let Serve { o, cluster, trust, gw, up, uplinks } = *s;
    let mut tasks = Vec::new();
    for l in &o.uplink_listeners {
        let cfg = atrium_data_plane::uplink::tls::server_config(trust, o.liveness)?;
        let bind_err = |source| GatewayError::UplinkBind { name: l.name.clone(), addr: l.addr, source };
        let ep = quinn::Endpoint::server(cfg, l.addr).map_err(bind_err)?;
        let local = ep.local_addr().map_err(bind_err)?;
        tracing::info!(name = %l.name, addr = %local, cluster = %cluster, "uplink entrypoint listening (QUIC, mTLS)");
        let server = UplinkServer {
            gw: gw.clone(),
            upstreams: up.clone(),
            state: uplinks.state(),
            stream_idle: o.liveness.stream_idle,
            entry_point: Arc::from(l.name.as_str()),
            max_frame: o.liveness.max_frame,
            in_flight: in_flight.clone(),
            drain_timeout: o.limits.drain_timeout,
            metrics: metrics.clone(),
        };
        tasks.push(tokio::spawn(serve_quic(ep, Arc::new(server), stop.clone())));
    }
    Ok(tasks)
}
