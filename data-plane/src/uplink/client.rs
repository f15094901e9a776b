//! The parent side of uplinks: one QUIC connection per child and worker thread (or one per
//! child for the whole data plane, `Liveness::shared_connections`), pooled streams, and
//! passive health.
//!
//! Which children are reachable and which uplinks are healthy comes from the snapshot (the
//! control plane's view). On top of that, each data plane stops using a child the moment
//! its own connection to it fails, until a reconnection succeeds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use atrium_proto::v1 as pb;
use http::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::body::{self, Body};
use crate::exchange::UpstreamError;
use crate::metrics::{ChildLabels, Label, UplinkMetrics};
use crate::uplink::dial::{DialError, client_endpoint, dial};
use crate::uplink::frame::CLIENT_HEADER;
use crate::uplink::{self, Liveness};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// The parent side of uplinks: one QUIC connection per child, shared by requests.
pub struct UplinkClient {
    /// Keep-alive and idle timeout of the connections to children.
    liveness: Liveness,
    /// This data plane's certificate and the installation's CA (re-read on change).
    trust: crate::trust::NodeTrust,
    /// Per worker thread (or, with shared connections, one for the data plane): its QUIC
    /// endpoint and its connection to each child. Per worker, each runtime drives its own
    /// connections, so a request never waits on another thread; shared, a thread of their
    /// own drives them and the workers' streams wake it.
    workers: Mutex<HashMap<Owner, WorkerConns>>,
    /// With shared connections: the handle of the runtime driving them, once started.
    shared_home: Mutex<Option<tokio::runtime::Handle>>,
    /// Dials in progress, by worker and child.
    dialing: Mutex<HashMap<WorkerChild, Arc<tokio::sync::Mutex<()>>>>,
    down: Mutex<HashMap<String, Instant>>,
    /// Failed streams in a row per child, on connections that stayed up (passive health).
    failures: Mutex<HashMap<String, u32>>,
    /// Rotation counter for weighted picks.
    pub counter: AtomicU64,
    /// Idle HTTP/1.1 streams by worker thread, child and uplink (the one HTTP/1.1 client's
    /// pool, see [`crate::h1::client`]).
    inline: Arc<crate::h1::client::Pool<StreamKey, uplink::frame::StreamIo>>,
    /// Per-child counters, registered in the data plane's metrics.
    metrics: OnceLock<UplinkMetrics>,
    /// When the stream limit was last logged, by child.
    stream_limit_logged: Mutex<HashMap<String, Instant>>,
    /// Requests waiting for a stream the limit does not allow yet.
    stream_waiters: std::sync::atomic::AtomicUsize,
}

/// Runs `f` when dropped (also when the future holding it is cancelled).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// Whose connections a request uses: its worker thread's, or (`None`, with shared
/// connections) the data plane's one set.
type Owner = Option<std::thread::ThreadId>;

/// An owner of connections and a child's name.
type WorkerChild = (Owner, String);

/// One worker thread's QUIC endpoint and connections.
struct WorkerConns {
    endpoint: quinn::Endpoint,
    conns: HashMap<String, quinn::Connection>,
}

/// Pooled streams are found by worker thread, child and uplink.
type StreamKey = (std::thread::ThreadId, String, String);

/// Idle HTTP/1.1 streams kept per child and uplink. Each one counts against the child's
/// concurrent-stream limit while it waits.
const MAX_IDLE_STREAMS: usize = 128;

/// Whether an HTTP/2 request must stay HTTP/2 through the uplink: gRPC, and any request
/// whose client accepts trailers (`TE: trailers`), which HTTP/1.1 cannot carry back.
fn needs_http2(h: &http::HeaderMap) -> bool {
    let has = |name: http::header::HeaderName, needle: &str| {
        h.get_all(name).iter().any(|v| v.to_str().is_ok_and(|v| v.to_ascii_lowercase().contains(needle)))
    };
    has(http::header::CONTENT_TYPE, "application/grpc") || has(http::header::TE, "trailers")
}

impl std::fmt::Debug for UplinkClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UplinkClient")
    }
}

/// How long a child stays out after this data plane's own connection to it failed.
const DOWN_FOR: Duration = Duration::from_secs(2);

/// Failed streams in a row (the connection itself alive) that take a child out for
/// [`DOWN_FOR`]: passive health, as Traefik's `maxFailedAttempts` does for servers.
const MAX_STREAM_FAILURES: u32 = 3;

impl UplinkClient {
    /// A client presenting the data-plane certificate of `trust`.
    pub fn new(trust: crate::trust::NodeTrust, liveness: Liveness) -> Arc<UplinkClient> {
        Arc::new(UplinkClient {
            liveness,
            trust,
            workers: Mutex::default(),
            shared_home: Mutex::default(),
            dialing: Mutex::default(),
            down: Mutex::default(),
            failures: Mutex::default(),
            counter: AtomicU64::new(0),
            inline: Arc::new(crate::h1::client::Pool::new(MAX_IDLE_STREAMS)),
            metrics: OnceLock::new(),
            stream_limit_logged: Mutex::default(),
            stream_waiters: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Whether this data plane's own connection to `child` failed moments ago.
    pub fn is_down(&self, child: &str) -> bool {
        self.down.lock().map(|d| d.get(child).is_some_and(|t| t.elapsed() < DOWN_FOR)).unwrap_or(false)
    }

    fn mark_down(&self, child: &str, why: &str) {
        if let Ok(mut d) = self.down.lock() {
            if d.insert(child.to_string(), Instant::now()).is_none_or(|t| t.elapsed() >= DOWN_FOR) {
                tracing::warn!(child, reason = why, "child unreachable from this data plane; not routing to it");
                self.count(child, |m| &m.marked_down);
            }
        }
        if let Ok(mut w) = self.workers.lock() {
            for w in w.values_mut() {
                w.conns.remove(child);
            }
        }
    }

    /// Counts a failed stream to `child`; enough in a row take it out.
    fn stream_failed(&self, child: &str, why: &str) {
        self.count(child, |m| &m.failed_streams);
        let n = match self.failures.lock() {
            Ok(mut f) => {
                let n = f.entry(child.to_string()).or_insert(0);
                *n += 1;
                let count = *n;
                if count >= MAX_STREAM_FAILURES {
                    f.remove(child);
                }
                count
            }
            Err(_) => return,
        };
        if n >= MAX_STREAM_FAILURES {
            self.mark_down(child, &format!("{n} failed streams in a row, last: {why}"));
        }
    }

    /// A stream to `child` got its response: the failure streak ends.
    fn stream_ok(&self, child: &str) {
        if let Ok(mut f) = self.failures.lock() {
            if !f.is_empty() {
                f.remove(child);
            }
        }
    }

    /// With shared connections, the runtime that drives them (their endpoint and
    /// connection tasks), on a thread of its own: a worker's runtime ends once its own
    /// entrypoints have drained, while the other workers may still be using them.
    fn shared_runtime(&self) -> Result<Option<tokio::runtime::Handle>, DialError> {
        if !self.liveness.shared_connections {
            return Ok(None);
        }
        let mut home =
            self.shared_home.lock().map_err(|_| DialError::Connect("uplink client state poisoned".into()))?;
        if let Some(h) = home.as_ref() {
            return Ok(Some(h.clone()));
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(DialError::Endpoint)?;
        let handle = rt.handle().clone();
        // Lives as long as the process: the connections serve every worker to the end.
        std::thread::Builder::new()
            .name("atrium-uplinks".into())
            .spawn(move || rt.block_on(std::future::pending::<()>()))
            .map_err(DialError::Endpoint)?;
        *home = Some(handle.clone());
        Ok(Some(handle))
    }

    /// Whose connections this thread's requests use.
    fn owner(&self) -> Owner {
        (!self.liveness.shared_connections).then(|| std::thread::current().id())
    }

    /// This worker's connection to `child`, live or not.
    fn worker_connection(&self, child: &str) -> Option<quinn::Connection> {
        let workers = self.workers.lock().ok()?;
        workers.get(&self.owner())?.conns.get(child).cloned()
    }

    /// This worker's connection to `child`, if it is live.
    fn live_connection(&self, child: &str) -> Option<quinn::Connection> {
        self.worker_connection(child).filter(|c| c.close_reason().is_none())
    }

    async fn connection(&self, child: &pb::Child) -> Result<quinn::Connection, DialError> {
        if let Some(c) = self.live_connection(&child.name) {
            return Ok(c);
        }

        let tid = self.owner();
        // One dial at a time per owner and child: requests arriving together share it
        // instead of each opening a connection of its own.
        let gate = match self.dialing.lock() {
            Ok(mut d) => d.entry((tid, child.name.clone())).or_default().clone(),
            Err(_) => return Err(DialError::Connect("uplink client state poisoned".into())),
        };
        let _dialing = gate.lock().await;
        if let Some(c) = self.live_connection(&child.name) {
            return Ok(c);
        }
        let ep = self.workers.lock().ok().and_then(|w| w.get(&tid).map(|w| w.endpoint.clone()));
        // quinn's endpoint and connection drivers keep the tracing span current when they
        // are created: create them in a task of their own (same worker, no span), never
        // inside a request's span, which would then stay open as long as the connection.
        let (child_owned, trust, liveness) = (child.clone(), self.trust.clone(), self.liveness);
        let dial = async move {
            let ep = match ep {
                Some(e) => e,
                None => client_endpoint()?,
            };
            let conn = dial(&ep, &child_owned, &trust, liveness).await?;
            Ok::<_, DialError>((ep, conn))
        };
        // Per worker: on this worker's runtime. Shared: on the uplinks' own thread.
        let task = match self.shared_runtime()? {
            Some(rt) => rt.spawn(dial),
            None => tokio::spawn(dial),
        };
        let dialed = task.await.map_err(|e| DialError::Connect(format!("dial task failed: {e}")))?;
        let (ep, conn) = dialed?;
        tracing::info!(child = %child.name, address = %child.address, "uplink connected");
        if let Ok(mut w) = self.workers.lock() {
            let worker = w.entry(tid).or_insert_with(|| WorkerConns { endpoint: ep, conns: HashMap::new() });
            worker.conns.insert(child.name.clone(), conn.clone());
        }
        Ok(conn)
    }

    /// Opens a data stream for `uplink` on `child` and writes its header. When the
    /// connection's concurrent-stream limit is reached the wait is counted and logged, and
    /// lasts at most `wait` (the request's response timeout: streams may be held for as
    /// long as a WebSocket or a download lasts); past it the request is answered as timed
    /// out.
    async fn open_stream(
        &self,
        child: &pb::Child,
        header: &pb::StreamHeader,
        wait: Duration,
    ) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream), UpstreamError> {
        let connect_err = |reason: String| UpstreamError::Connect { server: child.name.clone(), reason };
        // A child this data plane just found dead is not dialled again until its time out is
        // over: a request being replayed (its stream died with the child) goes to the next
        // child at once instead of waiting out a handshake to a dead address.
        if self.is_down(&child.name) && self.live_connection(&child.name).is_none() {
            return Err(connect_err("taken out of routing moments ago (its connection failed)".into()));
        }
        let conn = match self.connection(child).await {
            Ok(c) => c,
            Err(e) => {
                let e = e.to_string();
                self.mark_down(&child.name, &e);
                return Err(connect_err(e));
            }
        };
        let opened = {
            let mut opening = std::pin::pin!(conn.open_bi());
            let first = std::future::poll_fn(|cx| std::task::Poll::Ready(opening.as_mut().poll(cx))).await;
            match first {
                std::task::Poll::Ready(r) => r,
                std::task::Poll::Pending => {
                    self.stream_limit_reached(&child.name);
                    // While anyone waits, streams are closed after use instead of pooled,
                    // so their share of the limit goes to the waiters.
                    self.stream_waiters.fetch_add(1, Ordering::Relaxed);
                    let _waiting = scopeguard(|| {
                        self.stream_waiters.fetch_sub(1, Ordering::Relaxed);
                    });
                    let _paused = self.inline.pause();
                    match tokio::time::timeout(wait, opening).await {
                        Ok(r) => r,
                        Err(_) => {
                            tracing::debug!(child = %child.name, ?wait, "no uplink stream became free in time");
                            return Err(UpstreamError::Timeout { server: child.name.clone(), timeout: wait });
                        }
                    }
                }
            }
        };
        let (mut send, recv) = match opened {
            Ok(s) => s,
            Err(e) => {
                self.mark_down(&child.name, &e.to_string());
                return Err(connect_err(e.to_string()));
            }
        };
        if let Err(e) = uplink::frame::write_frame(&mut send, header).await {
            return Err(self.stream_error(child, &conn, e.to_string(), false));
        }
        self.count(&child.name, |m| &m.streams_opened);
        Ok((conn, send, recv))
    }

    /// A stream that fails because the whole connection died (the child went away) marks
    /// the child down. Before the request went out (`sent` false) that is a connect
    /// failure, and the caller may send the request elsewhere; after, the request is
    /// [`UpstreamError::Lost`]: the child may have acted on it. A stream failure on a live
    /// connection counts toward passive health.
    fn stream_error(&self, child: &pb::Child, conn: &quinn::Connection, e: String, sent: bool) -> UpstreamError {
        match conn.close_reason() {
            Some(closed) => {
                self.mark_down(&child.name, &closed.to_string());
                let (server, reason) = (child.name.clone(), format!("{e} ({closed})"));
                if sent { UpstreamError::Lost { server, reason } } else { UpstreamError::Connect { server, reason } }
            }
            None => {
                self.stream_failed(&child.name, &e);
                UpstreamError::Protocol { server: child.name.clone(), reason: e }
            }
        }
    }

    /// Every stream the child allows is in use: requests wait for one to finish.
    fn stream_limit_reached(&self, child: &str) {
        self.count(child, |m| &m.stream_waits);
        let now = Instant::now();
        if let Ok(mut last) = self.stream_limit_logged.lock() {
            if last.get(child).is_none_or(|t| now.duration_since(*t) >= Duration::from_secs(10)) {
                last.insert(child.to_string(), now);
                tracing::warn!(
                    child,
                    "uplink stream limit reached (the child's --uplink-max-streams): requests wait for a free stream"
                );
            }
        }
        // Idle pooled streams hold part of the limit: let them go so waiting requests get one.
        self.inline.retain(|(_, c, _)| c != child);
    }

    /// Counts into these families (the data plane's metrics), and has its connection
    /// gauges read from this client at each scrape.
    pub fn set_metrics(self: &Arc<Self>, metrics: UplinkMetrics) {
        let me = Arc::downgrade(self);
        metrics.probe_connections(Box::new(move || me.upgrade().map(|c| c.connections_by_child()).unwrap_or_default()));
        let _ = self.metrics.set(metrics);
    }

    /// Each child this data plane dialled or took out: its live connections and their
    /// smallest round-trip time.
    fn connections_by_child(&self) -> Vec<crate::metrics::ChildConnections> {
        let mut by_child: std::collections::BTreeMap<String, (usize, Option<Duration>)> =
            self.down.lock().map(|d| d.keys().map(|c| (c.clone(), (0, None))).collect()).unwrap_or_default();
        if let Ok(workers) = self.workers.lock() {
            for (child, conn) in workers.values().flat_map(|w| &w.conns) {
                let e = by_child.entry(child.clone()).or_default();
                if conn.close_reason().is_none() {
                    e.0 += 1;
                    let rtt = conn.rtt();
                    e.1 = Some(e.1.map_or(rtt, |r| r.min(rtt)));
                }
            }
        }
        by_child.into_iter().map(|(c, (n, rtt))| (c, n, rtt)).collect()
    }

    fn count(&self, child: &str, which: impl Fn(&UplinkMetrics) -> &Family<ChildLabels, Counter>) {
        if let Some(m) = self.metrics.get() {
            which(m).get_or_create(&ChildLabels { child: Label(Arc::from(child)) }).inc();
        }
    }

    /// Forwards one request to `uplink` on `child`.
    ///
    /// HTTP/1.1 requests (WebSocket upgrades included), and HTTP/2 requests that do not
    /// need HTTP/2 end to end, go over pooled streams: a stream
    /// carries one HTTP/1.1 keep-alive connection to the child's routing for that uplink,
    /// and the client address travels with each request in [`CLIENT_HEADER`], which the
    /// child removes. Reusing streams spares each request a stream opening, a header frame
    /// and an HTTP handshake on both sides. HTTP/2 requests that need it (gRPC, or a client
    /// that asks for trailers) get a stream and an HTTP/2 connection each, so trailers and
    /// flow control stay end to end.
    pub async fn send(
        &self,
        child: &pb::Child,
        uplink_name: &str,
        client: uplink::frame::RelayedClient,
        mut req: Request<Body>,
        response_timeout: std::time::Duration,
    ) -> Result<Response<Body>, UpstreamError> {
        let pq = req.uri().path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        if req.version() == http::Version::HTTP_2 && needs_http2(req.headers()) {
            let header = http2_stream_header(uplink_name, &client, &req);
            let (conn, send, recv) = self.open_stream(child, &header, response_timeout).await?;
            let io = TokioIo::new(uplink::frame::io(send, recv));
            // gRPC and other HTTP/2 exchanges stay HTTP/2 end to end (trailers included).
            let (mut s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| self.stream_error(child, &conn, e.to_string(), false))?;
            tokio::spawn(c);
            *req.uri_mut() = http2_uri(&req, &pq).map_err(|e| self.stream_error(child, &conn, e.to_string(), false))?;
            let resp = s.send_request(req).await.map_err(|e| self.stream_error(child, &conn, e.to_string(), true))?;
            self.stream_ok(&child.name);
            return Ok(resp.map(body::incoming));
        }

        prepare_http1(&mut req, pq, &client, child)?;
        // Every HTTP/1.1 request — with or without a body, upgrades included — on pooled
        // streams of the one HTTP/1.1 client.
        let key = (std::thread::current().id(), child.name.clone(), uplink_name.to_string());
        let header = pb::StreamHeader {
            kind: pb::stream_header::Kind::Data as i32,
            uplink: uplink_name.to_string(),
            ..Default::default()
        };
        let header = &header;
        let open = |retry: bool| {
            async move {
                // A pooled stream failed: when its whole connection is gone (the child
                // died), this child is down; do not wait for a dial to find out again.
                if retry {
                    if let Some(reason) = self.worker_connection(&child.name).and_then(|c| c.close_reason()) {
                        self.mark_down(&child.name, &reason.to_string());
                        return Err(UpstreamError::Connect { server: child.name.clone(), reason: reason.to_string() });
                    }
                }
                let (_, send, recv) = self.open_stream(child, header, response_timeout).await?;
                Ok(uplink::frame::io(send, recv))
            }
        };
        let sent = crate::h1::client::send(
            &self.inline,
            key,
            self.liveness.stream_idle,
            crate::h1::client::Pooled(req),
            uplink_name,
            Some(response_timeout),
            open,
        )
        .await;
        self.http1_outcome(child, sent, response_timeout)
    }

    /// Counts the outcome of a request sent on a pooled HTTP/1.1 stream, and turns its
    /// failure into the upstream error to answer.
    #[inline]
    fn http1_outcome(
        &self,
        child: &pb::Child,
        sent: Result<Response<Body>, crate::h1::client::SendError>,
        response_timeout: Duration,
    ) -> Result<Response<Body>, UpstreamError> {
        match sent {
            Ok(resp) => {
                self.stream_ok(&child.name);
                Ok(resp)
            }
            Err(crate::h1::client::SendError::Connect(e)) => Err(e),
            Err(crate::h1::client::SendError::Timeout) => {
                Err(UpstreamError::Timeout { server: child.name.clone(), timeout: response_timeout })
            }
            // The request went out (the client replays on its own only what may go twice).
            Err(crate::h1::client::SendError::Exchange(err)) => Err(match self.worker_connection(&child.name) {
                Some(c) => self.stream_error(child, &c, err, true),
                None => UpstreamError::Lost { server: child.name.clone(), reason: err },
            }),
        }
    }
}

/// The header of a stream that carries one HTTP/2 exchange of `req` to `uplink_name`.
#[inline]
fn http2_stream_header(
    uplink_name: &str,
    client: &uplink::frame::RelayedClient,
    req: &Request<Body>,
) -> pb::StreamHeader {
    pb::StreamHeader {
        kind: pb::stream_header::Kind::Data as i32,
        uplink: uplink_name.to_string(),
        client_addr: client.addr.to_string(),
        client_proto: client.proto().to_string(),
        // The W3C trace context of the request, so the child's spans join the trace
        // even when a hop in between strips headers.
        traceparent: req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_default(),
    }
}

/// The absolute URI of an HTTP/2 request to the child: its `Host` (or `uplink`) and `pq`.
#[inline]
fn http2_uri(req: &Request<Body>, pq: &http::uri::PathAndQuery) -> Result<http::Uri, http::uri::InvalidUri> {
    let authority = req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("uplink").to_string();
    format!("http://{authority}{pq}").parse()
}

/// Turns `req` into the HTTP/1.1 request for a pooled stream: origin-form `pq`, and the
/// client address in [`CLIENT_HEADER`]; refuses CONNECT.
#[inline]
fn prepare_http1(
    req: &mut Request<Body>,
    pq: http::uri::PathAndQuery,
    client: &uplink::frame::RelayedClient,
    child: &pb::Child,
) -> Result<(), UpstreamError> {
    *req.uri_mut() = http::Uri::from(pq);
    *req.version_mut() = http::Version::HTTP_11;
    req.headers_mut().insert(CLIENT_HEADER, client.header_value());
    if !crate::h1::client::eligible(req) {
        return Err(UpstreamError::Protocol { server: child.name.clone(), reason: "CONNECT is not forwarded".into() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_grpc_and_trailer_requests_keep_http2_through_the_uplink() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut h = http::HeaderMap::new();
            for (n, v) in pairs {
                h.append(http::header::HeaderName::from_bytes(n.as_bytes()).unwrap(), v.parse().unwrap());
            }
            h
        };
        assert!(needs_http2(&headers(&[("content-type", "application/grpc+proto")])));
        assert!(needs_http2(&headers(&[("te", "Trailers")])));
        assert!(!needs_http2(&headers(&[("content-type", "application/json")])));
        assert!(!needs_http2(&headers(&[])));
    }

    #[test]
    fn failed_streams_in_a_row_take_a_child_out_and_a_success_ends_the_streak() {
        let client = UplinkClient::new(crate::trust::test_trust(), Liveness::default());
        client.stream_failed("a", "reset");
        client.stream_failed("a", "reset");
        client.stream_ok("a");
        client.stream_failed("a", "reset");
        client.stream_failed("a", "reset");
        assert!(!client.is_down("a"), "a success in between resets the count");
        client.stream_failed("b", "reset");
        client.stream_failed("a", "reset");
        assert!(client.is_down("a"));
        assert!(!client.is_down("b"), "streaks are per child");
    }
}
