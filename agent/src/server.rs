//! The uplink server: parents connect over mutual-TLS QUIC to the uplink entrypoints.
//! - a `CONTROL` stream gets `Register` (the cluster and its uplinks with weights and
//!   health) at once, an `Update` the moment anything changes, and an `Update` in answer to
//!   every `Poll`;
//! - a `DATA` stream carries HTTP exchanges for one uplink: only routers attached to that
//!   uplink can match, and the client the parent names is the client (ClientIP,
//!   ipAllowList, X-Forwarded-For): in the stream header for an HTTP/2 stream of its own,
//!   in the `atrium-uplink-client` header of each request on a pooled HTTP/1.1 stream
//!   (taken out before routing).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use atrium_data_plane::body;
use atrium_data_plane::proxy::Gateway;
use atrium_data_plane::uplink;
use atrium_data_plane::upstream::Upstreams;
use atrium_proto::v1 as pb;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;

use crate::uplinks::{State, uplink_conn};

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
    /// Streams and parents counted.
    pub metrics: Arc<crate::metrics::AgentMetrics>,
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
            server.metrics.parent(1);
            let _gone = ParentGone(server.metrics.clone());
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

/// Counts a parent's connection as gone when dropped.
struct ParentGone(Arc<crate::metrics::AgentMetrics>);

impl Drop for ParentGone {
    fn drop(&mut self) {
        self.0.parent(-1);
    }
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    remote: SocketAddr,
    server: Arc<UplinkServer>,
) {
    let header = match uplink::frame::read_header(&mut recv).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(%remote, error = %e, "bad uplink stream: reset");
            let _ = send.reset(1u32.into());
            let _ = recv.stop(1u32.into());
            return;
        }
    };
    if header.kind == pb::stream_header::Kind::Control as i32 {
        server.metrics.stream(None, false);
        control(send, recv, server.state.clone(), server.max_frame).await;
        return;
    }
    // An HTTP/2 stream names its one client in the header; a pooled HTTP/1.1 stream leaves
    // it empty and names the client of each request in `CLIENT_HEADER`. A header whose
    // client does not parse is refused rather than served as the parent's own request.
    let per_stream = if header.client_addr.is_empty() {
        None
    } else {
        match uplink::frame::RelayedClient::from_parts(&header.client_addr, &header.client_proto) {
            Some(c) => Some(c),
            None => {
                tracing::warn!(%remote, client = %header.client_addr, proto = %header.client_proto, "bad uplink stream header: unreadable client; reset");
                let _ = send.reset(1u32.into());
                let _ = recv.stop(1u32.into());
                return;
            }
        }
    };
    let exposed = server.state.borrow().uplinks.iter().any(|u| u.name == header.uplink);
    server.metrics.stream(Some(&header.uplink), exposed);
    let client = per_stream.map_or(remote, |c| c.addr);
    let conn = Arc::new(uplink_conn(&server.entry_point, &header.uplink, client, server.upstreams.clone()));
    let gw = server.gw.clone();
    let in_flight = server.in_flight.clone();
    let stream_idle = server.stream_idle;
    let traceparent = http::HeaderValue::from_str(&header.traceparent).ok().filter(|v| !v.is_empty());
    // Bodiless HTTP/1.1 requests are served inline; anything else goes to hyper from the
    // first request that needs it (see `atrium_data_plane::h1::server`).
    let mut io = uplink::frame::io(send, recv);
    let fast = {
        let (gw, base, tp, fl) = (&gw, &*conn, &traceparent, &in_flight);
        let handler = atrium_data_plane::h1::server::requests(move |mut req: hyper::Request<body::Body>| {
            let relayed = relayed_client(&mut req, per_stream, tp.as_ref());
            handle_relayed(gw, base, req, relayed, fl)
        });
        let max_head = atrium_data_plane::proxy::server::ServerLimits::default().max_header_bytes;
        // A pooled stream waits for the parent's next request as long as the parent keeps it.
        let timeouts = atrium_data_plane::h1::server::Timeouts { header_read: stream_idle, idle: stream_idle };
        atrium_data_plane::h1::server::serve(&mut io, handler, &remote, &timeouts, max_head, None).await
    };
    let io = match fast {
        atrium_data_plane::h1::server::Outcome::Closed => return,
        atrium_data_plane::h1::server::Outcome::Handover(read) => {
            TokioIo::new(atrium_data_plane::h1::server::Prefixed::new(read, io))
        }
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
    relayed: Option<uplink::frame::RelayedClient>,
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
    per_stream: Option<uplink::frame::RelayedClient>,
    traceparent: Option<&http::HeaderValue>,
) -> Option<uplink::frame::RelayedClient> {
    let named = req.headers_mut().remove(uplink::frame::CLIENT_HEADER);
    let relayed = per_stream.or_else(|| uplink::frame::RelayedClient::from_header(named?.as_bytes()));
    if let Some(tp) = traceparent {
        req.headers_mut().entry("traceparent").or_insert_with(|| tp.clone());
    }
    relayed
}

/// A parent's control stream: `Register` at once, then an `Update` on every change and in
/// answer to every `Poll`. Frames are awaited beside state changes, so they are read
/// cancel-safely.
async fn control(mut send: quinn::SendStream, recv: quinn::RecvStream, state: Arc<State>, max_frame: usize) {
    let mut recv = uplink::frame::FrameReader::new(recv, max_frame);
    let mut rx = state.subscribe();
    let first = rx.borrow_and_update().clone();
    if uplink::frame::write_frame(&mut send, &pb::AgentMessage { msg: Some(pb::agent_message::Msg::Register(first)) })
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
        if uplink::frame::write_frame(
            &mut send,
            &pb::AgentMessage { msg: Some(pb::agent_message::Msg::Update(update)) },
        )
        .await
        .is_err()
        {
            return;
        }
    }
}
