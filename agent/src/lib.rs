//! atrium's child agent ("API Gateway mode").
//!
//! The agent serves its own entrypoints as a gateway does, and its uplink entrypoints over
//! mutual-TLS QUIC to parents:
//! - a `CONTROL` stream gets `Register` (the cluster and its uplinks with weights and
//!   health) at once, an `Update` the moment anything changes, and an `Update` in answer to
//!   every `Poll`;
//! - a `DATA` stream carries one HTTP exchange for one uplink: only routers attached to that
//!   uplink can match, and the client address named in the stream header is the client
//!   (ClientIP, ipAllowList, X-Forwarded-For);
//! - each uplink's health check runs through the uplink's own routing, as the parent would
//!   see it (so `/crm/health` passes PathPrefix and stripPrefix and reaches the backend as
//!   `/health`).
//!
//! The agent compiles its manifests with `atrium-model` and serves them with
//! `atrium-data-plane`; it never depends on the control plane.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use atrium_data_plane::body;
use atrium_data_plane::proxy::{ConnInfo, Gateway};
use atrium_data_plane::service::health::status_ok;
use atrium_data_plane::upstream::Upstreams;
use atrium_data_plane::{multicluster, uplink};
use atrium_proto::v1 as pb;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;

/// The agent's current answer to its parents.
pub type State = watch::Sender<pb::Register>;

/// The uplinks this child exposes, following its configuration: what parents are told
/// (the [`State`] every control stream pushes), and the health checks behind it.
///
/// [`Uplinks::set`] takes each new configuration: an uplink added, changed (weight,
/// entrypoints, health check) or removed reaches every connected parent at once. An
/// uplink whose health check did not change keeps its verdict across a reload; a new or
/// changed one with a health check starts unhealthy until its first check passes.
pub struct Uplinks {
    /// What health checks run through and report to (the state parents are told, and
    /// whether the uplinks are withdrawn, are in there).
    ctx: Checks,
    /// The configuration in force.
    current: std::sync::Mutex<Vec<pb::Uplink>>,
    /// Dropping it stops the current health checks.
    checks: std::sync::Mutex<Option<watch::Sender<()>>>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Uplinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uplinks").field("state", &*self.ctx.state.borrow()).finish()
    }
}

impl Uplinks {
    /// Cluster `cluster`'s uplinks, none yet, checked through `gw` on the current runtime.
    pub fn new(cluster: &str, gw: Arc<Gateway>, upstreams: Arc<Upstreams>) -> Arc<Uplinks> {
        let state = Arc::new(watch::Sender::new(pb::Register { cluster: cluster.to_string(), uplinks: Vec::new() }));
        Arc::new(Uplinks {
            ctx: Checks { gw, up: upstreams, state, withdrawn: Arc::default() },
            current: std::sync::Mutex::default(),
            checks: std::sync::Mutex::default(),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// What parents are told.
    pub fn state(&self) -> Arc<State> {
        self.ctx.state.clone()
    }

    /// Puts a configuration's uplinks in force (see the type's documentation). Once the
    /// uplinks are withdrawn (shutting down), a new configuration changes nothing.
    pub fn set(&self, mut uplinks: Vec<pb::Uplink>) {
        uplinks.sort_by(|a, b| a.name.cmp(&b.name));
        let Ok(mut current) = self.current.lock() else { return };
        if self.ctx.withdrawn.load(std::sync::atomic::Ordering::Acquire) {
            tracing::info!("configuration changed while shutting down: ignored");
            return;
        }
        if *current == uplinks {
            return;
        }
        let before = std::mem::replace(&mut *current, uplinks.clone());
        self.ctx.state.send_modify(|reg| {
            let healthy_before = |u: &pb::Uplink| {
                let same_check = before.iter().any(|b| b.name == u.name && b.health_check == u.health_check);
                same_check.then(|| reg.uplinks.iter().find(|s| s.name == u.name).map(|s| s.healthy)).flatten()
            };
            let next = uplinks
                .iter()
                .map(|u| pb::UplinkState {
                    name: u.name.clone(),
                    weight: u.weight,
                    healthy: healthy_before(u).unwrap_or(u.health_check.is_none()),
                    entry_points: u.entry_points.clone(),
                })
                .collect();
            reg.uplinks = next;
        });
        for u in &uplinks {
            match before.iter().find(|b| b.name == u.name) {
                None => tracing::info!(uplink = %u.name, weight = u.weight, "uplink added"),
                Some(b) if b != u => tracing::info!(uplink = %u.name, weight = u.weight, "uplink changed"),
                _ => {}
            }
        }
        for b in before.iter().filter(|b| !uplinks.iter().any(|u| u.name == b.name)) {
            tracing::info!(uplink = %b.name, "uplink removed");
        }
        // A new generation of health checks; dropping the old sender stops the old ones.
        let (tx, rx) = watch::channel(());
        if let Ok(mut checks) = self.checks.lock() {
            *checks = Some(tx);
        }
        let _enter = self.runtime.enter();
        spawn_health_checks(self.ctx.clone(), uplinks, rx);
    }

    /// Stops the health checks (shutdown).
    pub fn stop(&self) {
        if let Ok(mut checks) = self.checks.lock() {
            *checks = None;
        }
    }

    /// The first step of a graceful shutdown: stops the health checks and tells every
    /// parent that no uplink is healthy any more, so parents route new requests to other
    /// children while this one finishes what it holds.
    pub fn withdraw(&self) {
        // Under `current`'s lock, so no `set` is half way through; the flag is read where
        // health is published, so a check finishing now cannot undo this.
        let _current = self.current.lock();
        self.ctx.withdrawn.store(true, std::sync::atomic::Ordering::Release);
        self.stop();
        self.ctx.state.send_modify(|reg| {
            for u in &mut reg.uplinks {
                u.healthy = false;
            }
        });
        tracing::info!("uplinks withdrawn: parents route new requests to other children");
    }
}

/// The requests parents have in flight on this agent, so a shutdown can wait for them.
#[derive(Debug, Default)]
pub struct InFlight {
    now: std::sync::atomic::AtomicUsize,
    started: std::sync::atomic::AtomicU64,
}

/// One request in flight, until it is dropped.
struct Serving(Arc<InFlight>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl InFlight {
    fn start(self: &Arc<Self>) -> Serving {
        self.started.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.now.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Serving(self.clone())
    }

    /// Requests being served now (their responses not yet sent whole).
    pub fn count(&self) -> usize {
        self.now.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until nothing is in flight and no request started for `quiet` (parents have
    /// heard the uplinks are withdrawn and stopped sending), or `limit` passed. True when
    /// it settled.
    pub async fn settle(&self, quiet: Duration, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        let tick = Duration::from_millis(25);
        let mut seen = self.started.load(std::sync::atomic::Ordering::Acquire);
        let mut calm_since = tokio::time::Instant::now();
        loop {
            let now = tokio::time::Instant::now();
            let started = self.started.load(std::sync::atomic::Ordering::Acquire);
            if started != seen || self.count() > 0 {
                seen = started;
                calm_since = now;
            } else if now.duration_since(calm_since) >= quiet {
                return true;
            }
            if now >= deadline {
                return false;
            }
            tokio::time::sleep(tick.min(deadline - now)).await;
        }
    }
}

/// What health checks run through and report to.
#[derive(Clone)]
struct Checks {
    gw: Arc<Gateway>,
    up: Arc<Upstreams>,
    state: Arc<State>,
    withdrawn: Arc<std::sync::atomic::AtomicBool>,
}

/// Runs every uplink's health check through the uplink's own routing and publishes
/// changes in `state`, until `stop`'s sender is dropped or the uplinks are withdrawn.
/// Uplinks without a health check are healthy.
fn spawn_health_checks(checks: Checks, uplinks: Vec<pb::Uplink>, stop: watch::Receiver<()>) {
    for u in uplinks {
        let Some(hc) = u.health_check.clone() else { continue };
        let Checks { gw, up, state, withdrawn } = checks.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let mut req = http::Request::builder().method(hc.method.as_str()).uri(hc.path.as_str());
                req = req.header(
                    http::header::HOST,
                    if hc.hostname.is_empty() { "localhost" } else { hc.hostname.as_str() },
                );
                for h in &hc.headers {
                    req = req.header(h.name.as_str(), h.value.as_str());
                }
                let ok = match req.body(body::empty()) {
                    Ok(req) => {
                        let entry_point = format!("uplink:{}", u.name);
                        let client = "127.0.0.1:0".parse().expect("static address");
                        let mut conn = uplink_conn(&entry_point, &u.name, client, up.clone());
                        conn.internal = true;
                        let timeout = Duration::from_millis(hc.timeout_ms.max(1));
                        tokio::select! {
                            r = tokio::time::timeout(timeout, gw.handle(req, &conn)) => match r {
                                Ok(resp) => status_ok(&hc, resp.status().as_u16()),
                                Err(_) => false,
                            },
                            _ = stop.changed() => return,
                        }
                    }
                    Err(_) => false,
                };
                state.send_if_modified(|reg| {
                    // Checked under the state's lock, which `withdraw` takes too.
                    if withdrawn.load(std::sync::atomic::Ordering::Acquire) {
                        return false;
                    }
                    let Some(s) = reg.uplinks.iter_mut().find(|s| s.name == u.name) else { return false };
                    if s.healthy == ok {
                        return false;
                    }
                    s.healthy = ok;
                    if ok {
                        tracing::info!(uplink = %u.name, healthy = ok, "uplink health changed");
                    } else {
                        tracing::warn!(uplink = %u.name, healthy = ok, "uplink health changed");
                    }
                    true
                });
                let wait = if ok { hc.interval_ms } else { hc.unhealthy_interval_ms };
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(wait.max(10))) => {}
                    _ = stop.changed() => return,
                }
            }
        });
    }
}

/// A request arriving on uplink entrypoint `entry_point` for uplink `uplink_name`.
fn uplink_conn(entry_point: &str, uplink_name: &str, client: SocketAddr, upstreams: Arc<Upstreams>) -> ConnInfo {
    let mut c = ConnInfo::new(Arc::from(entry_point), 0, true, client, upstreams);
    c.uplink = Some(Arc::from(uplink_name));
    c
}

/// What serving parents on one uplink entrypoint takes.
#[derive(Debug)]
pub struct UplinkServer {
    /// The child's gateway: uplink requests are routed by it.
    pub gw: Arc<Gateway>,
    /// Upstream clients for requests served here.
    pub upstreams: Arc<Upstreams>,
    /// What the agent tells parents on control streams.
    pub state: Arc<State>,
    /// A pooled HTTP/1.1 stream that waits longer than this for its next request is
    /// closed.
    pub stream_idle: Duration,
    /// The uplink entrypoint's name (its `http.encodedCharacters` apply).
    pub entry_point: Arc<str>,
    /// Largest control frame accepted from a parent.
    pub max_frame: usize,
    /// Requests in flight (shared by every uplink entrypoint).
    pub in_flight: Arc<InFlight>,
    /// How long a shutdown waits for requests in flight.
    pub drain_timeout: Duration,
}

/// How long no new request must arrive before a shutting-down agent closes its uplinks:
/// more than parents take to act on the withdrawal (the control plane republishes at once,
/// data planes swap tables within milliseconds). A parent still sending keeps it open.
const DRAIN_QUIET: Duration = Duration::from_secs(1);

/// How long a closing agent waits for parents to acknowledge the close, so they learn at
/// once rather than at their idle timeout.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Serves parents on `endpoint` until `stop`. Then (the uplinks having been withdrawn, see
/// [`Uplinks::withdraw`]) it goes on serving what parents still send until nothing is in
/// flight and nothing new came for a moment, or the drain timeout passed, and closes.
pub async fn serve_quic(endpoint: quinn::Endpoint, server: Arc<UplinkServer>, mut stop: watch::Receiver<bool>) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => return },
            _ = stop.changed() => {
                if server.in_flight.settle(DRAIN_QUIET, server.drain_timeout).await {
                    tracing::info!("uplink requests drained");
                } else {
                    tracing::warn!(in_flight = server.in_flight.count(), "drain timeout: closing uplinks with requests in flight");
                }
                endpoint.close(0u32.into(), b"shutting down");
                let _ = tokio::time::timeout(CLOSE_WAIT, endpoint.wait_idle()).await;
                return;
            }
        };
        let server = server.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => return tracing::warn!(%remote, error = %e, "parent refused: QUIC/TLS handshake failed"),
            };
            tracing::info!(%remote, "parent connected");
            loop {
                let (send, recv) = match conn.accept_bi().await {
                    Ok(s) => s,
                    Err(e) => return tracing::info!(%remote, reason = %e, "parent disconnected"),
                };
                tokio::spawn(serve_stream(send, recv, remote, server.clone()));
            }
        });
    }
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    remote: SocketAddr,
    server: Arc<UplinkServer>,
) {
    let header = match uplink::read_header(&mut recv).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(%remote, error = %e, "bad uplink stream: reset");
            let _ = send.reset(1u32.into());
            let _ = recv.stop(1u32.into());
            return;
        }
    };
    if header.kind == pb::stream_header::Kind::Control as i32 {
        control(send, recv, server.state.clone(), server.max_frame).await;
        return;
    }
    // An HTTP/2 stream names its one client in the header; a pooled HTTP/1.1 stream leaves
    // it empty and names the client of each request in `CLIENT_HEADER`. A header whose
    // client does not parse is refused rather than served as the parent's own request.
    let per_stream = if header.client_addr.is_empty() {
        None
    } else {
        match uplink::RelayedClient::from_parts(&header.client_addr, &header.client_proto) {
            Some(c) => Some(c),
            None => {
                tracing::warn!(%remote, client = %header.client_addr, proto = %header.client_proto, "bad uplink stream header: unreadable client; reset");
                let _ = send.reset(1u32.into());
                let _ = recv.stop(1u32.into());
                return;
            }
        }
    };
    let client = per_stream.map_or(remote, |c| c.addr);
    let conn = Arc::new(uplink_conn(&server.entry_point, &header.uplink, client, server.upstreams.clone()));
    let gw = server.gw.clone();
    let in_flight = server.in_flight.clone();
    let stream_idle = server.stream_idle;
    let traceparent = http::HeaderValue::from_str(&header.traceparent).ok().filter(|v| !v.is_empty());
    // Bodiless HTTP/1.1 requests are served inline; anything else goes to hyper from the
    // first request that needs it (see `atrium_data_plane::h1::server`).
    let fast = {
        let (gw, base, tp, fl) = (&gw, &*conn, &traceparent, &in_flight);
        let handler = atrium_data_plane::h1::server::requests(move |mut req: hyper::Request<body::Body>| {
            let relayed = relayed_client(&mut req, per_stream, tp.as_ref());
            handle_relayed(gw, base, req, relayed, fl)
        });
        let max_head = atrium_data_plane::proxy::server::ServerLimits::default().max_header_bytes;
        // A pooled stream waits for the parent's next request as long as the parent keeps it.
        let timeouts = atrium_data_plane::h1::server::Timeouts { header_read: stream_idle, idle: stream_idle };
        atrium_data_plane::h1::server::serve(uplink::io(send, recv), handler, remote, timeouts, max_head, None).await
    };
    let io = match fast {
        atrium_data_plane::h1::server::Outcome::Closed => return,
        atrium_data_plane::h1::server::Outcome::Handover(io) => TokioIo::new(io),
    };
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let gw = gw.clone();
        let relayed = relayed_client(&mut req, per_stream, traceparent.as_ref());
        let (base, fl) = (conn.clone(), in_flight.clone());
        async move {
            Ok::<_, std::convert::Infallible>(handle_relayed(&gw, &base, req.map(body::incoming), relayed, &fl).await)
        }
    });
    let mut server = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // A pooled stream the parent leaves idle is closed, and so is one whose request head
    // stalls: both free their share of the stream limit.
    server.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(stream_idle);
    if let Err(e) = server.serve_connection_with_upgrades(io, svc).await {
        tracing::debug!(%remote, error = %e, "uplink data stream ended with an error");
    }
}

/// Serves a request on behalf of the client the parent named, if any.
/// The request counts as in flight until its response is sent whole.
async fn handle_relayed(
    gw: &Arc<Gateway>,
    base: &atrium_data_plane::proxy::ConnInfo,
    req: hyper::Request<body::Body>,
    relayed: Option<uplink::RelayedClient>,
    in_flight: &Arc<InFlight>,
) -> hyper::Response<body::Body> {
    let serving = in_flight.start();
    let resp = match relayed {
        Some(client) => gw.handle(req, &base.for_client(client)).await,
        None => gw.handle(req, base).await,
    };
    resp.map(|b| body::holding(b, serving))
}

/// The client of a relayed request: the stream's when its header named one, else the one
/// the request names (pooled HTTP/1.1 streams). The request's own `CLIENT_HEADER` is taken
/// out either way, so it is trusted only where the parent sets it. The stream header's
/// trace context applies when the request lost its own.
fn relayed_client<B>(
    req: &mut hyper::Request<B>,
    per_stream: Option<uplink::RelayedClient>,
    traceparent: Option<&http::HeaderValue>,
) -> Option<uplink::RelayedClient> {
    let named = req.headers_mut().remove(multicluster::CLIENT_HEADER);
    let relayed = per_stream.or_else(|| uplink::RelayedClient::from_header(named?.as_bytes()));
    if let Some(tp) = traceparent {
        req.headers_mut().entry("traceparent").or_insert_with(|| tp.clone());
    }
    relayed
}

/// A parent's control stream: `Register` at once, then an `Update` on every change and in
/// answer to every `Poll`. Frames are awaited beside state changes, so they are read
/// cancel-safely.
async fn control(mut send: quinn::SendStream, recv: quinn::RecvStream, state: Arc<State>, max_frame: usize) {
    let mut recv = uplink::FrameReader::new(recv, max_frame);
    let mut rx = state.subscribe();
    let first = rx.borrow_and_update().clone();
    if uplink::write_frame(&mut send, &pb::AgentMessage { msg: Some(pb::agent_message::Msg::Register(first)) })
        .await
        .is_err()
    {
        return;
    }
    loop {
        let update = tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
                rx.borrow_and_update().clone()
            }
            msg = recv.next::<pb::ParentMessage>() => match msg {
                Ok(_) => rx.borrow().clone(),
                Err(_) => return,
            },
        };
        if uplink::write_frame(&mut send, &pb::AgentMessage { msg: Some(pb::agent_message::Msg::Update(update)) })
            .await
            .is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atrium_data_plane::proxy::tls::CertStore;
    use atrium_data_plane::upstream::UpstreamConfig;

    fn uplink(name: &str) -> pb::Uplink {
        pb::Uplink { name: name.into(), weight: 1, ..Default::default() }
    }

    #[tokio::test]
    async fn withdrawn_uplinks_stay_withdrawn_whatever_the_configuration_says() {
        let gw = Gateway::new(Upstreams::new(UpstreamConfig::default()), None, CertStore::generated().unwrap());
        let uplinks = Uplinks::new("cluster-a", gw, Arc::new(Upstreams::new(UpstreamConfig::default())));
        let state = uplinks.state();
        uplinks.set(vec![uplink("crm")]);
        let healthy = |s: &State| s.borrow().uplinks.iter().map(|u| (u.name.clone(), u.healthy)).collect::<Vec<_>>();
        assert_eq!(healthy(&state), [("crm".to_string(), true)], "no health check: healthy");
        uplinks.withdraw();
        assert_eq!(healthy(&state), [("crm".to_string(), false)], "parents are told at once");
        // A reload during the drain (a rollout often edits the configuration too).
        uplinks.set(vec![uplink("crm"), uplink("erp")]);
        assert_eq!(healthy(&state), [("crm".to_string(), false)], "nothing is advertised again");
    }
}
