//! The proxy: from an accepted request to the upstream's response.
//!
//! [`Gateway`] holds the route table in force behind an `ArcSwap`. Each request loads the
//! table once and keeps that `Arc` until it is done, so a swap never mixes two
//! configurations inside one request and never waits for requests in flight. A request
//! then goes: route → middlewares (request phase) → service dispatch → middlewares
//! (response phase, in reverse order).

pub mod admin;
mod direct;
pub mod forward;

pub mod server;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;
use atrium_proto::v1::SnapshotBody;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use crate::body::{self, Body};
use crate::metrics;
use crate::service::{self, ServiceRt};
use atrium_routing::Decision;
use atrium_routing::middleware::limits::Admission;
use atrium_routing::middleware::path::{RewriteError, UrlPath};
use atrium_routing::middleware::{Action, redirect};
use atrium_routing::request::RequestView;
use atrium_routing::table::{RouteEntry, RouteTable};

/// The route table as the data plane runs it: each router with its [`RouteState`].
pub type Table = RouteTable<RouteState>;

/// A router of [`Table`].
type Route = RouteEntry<RouteState>;

/// What the data plane keeps per router next to its routing entry.
#[derive(Debug)]
pub struct RouteState {
    /// Its service, built (`None` when the snapshot names none that could be built).
    pub target: Option<Arc<ServiceRt>>,
    /// Router and service ids with their metric handles, shared on the hot path.
    pub labels: Arc<metrics::RouterStats>,
    /// Requests routed here since the last usage report.
    pub served: std::sync::atomic::AtomicU64,
}
use crate::exchange::UpstreamError;
use crate::upstream::Upstreams;

/// A compiled configuration: the route table and the services it sends to.
#[derive(Debug)]
pub struct Runtime {
    /// Version (sequence number) of the snapshot it came from.
    pub version: u64,
    /// Epoch of the control plane that produced it (0 for a local gateway).
    pub epoch: u64,
    /// SHA-256 of the encoded snapshot body.
    pub hash: Vec<u8>,
    /// Routers.
    pub table: Table,
    /// Services by id.
    pub services: HashMap<String, Arc<ServiceRt>>,
    /// The snapshot body, for `/api/rawdata`.
    pub body: SnapshotBody,
}

/// Why a snapshot cannot become a configuration in force.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The body is not the one its hash names (corrupt, or tampered with).
    #[error("snapshot body does not match its hash")]
    HashMismatch,
    /// The body is not a snapshot body.
    #[error("snapshot body: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A router or middleware does not compile.
    #[error(transparent)]
    Table(#[from] atrium_routing::table::TableError),
    /// A service does not compile.
    #[error("{0}")]
    Service(String),
    /// An older snapshot than the one in force (see [`crate::snapshot::older`]).
    #[error("{0}")]
    Older(String),
}

impl Runtime {
    /// Compiles a snapshot body. An error leaves whatever was in force untouched.
    pub fn build(body: SnapshotBody, version: u64) -> Result<Runtime, RuntimeError> {
        let services = service::build(&body.services, &body.children).map_err(RuntimeError::Service)?;
        let table = RouteTable::from_snapshot(&body, |r| RouteState {
            target: services.get(&r.service).cloned(),
            labels: Arc::new(metrics::RouterStats::new(&r.id, &r.service)),
            served: std::sync::atomic::AtomicU64::new(0),
        })?;
        let (_, hash) = atrium_proto::encode(&body);
        Ok(Runtime { version, epoch: 0, hash, table, services, body })
    }

    /// Compiles a snapshot received from a control plane, after checking its hash.
    pub fn from_snapshot(s: &atrium_proto::v1::Snapshot) -> Result<Runtime, RuntimeError> {
        if atrium_proto::body_hash(&s.body) != s.hash {
            return Err(RuntimeError::HashMismatch);
        }
        let body = <SnapshotBody as prost::Message>::decode(s.body.clone())?;
        let v = s.version.unwrap_or_default();
        let mut rt = Runtime::build(body, v.seq)?;
        rt.epoch = v.epoch;
        rt.hash = s.hash.to_vec();
        Ok(rt)
    }
}

/// Where a request came in.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Entrypoint name.
    pub entry_point: Arc<str>,
    /// Entrypoint port (for `X-Forwarded-Port`).
    pub port: u16,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The client's socket address.
    pub peer: SocketAddr,
    /// The client IP as a header value, built once per connection.
    ip_value: Option<HeaderValue>,
    /// The upstream clients of the worker serving this connection.
    pub upstreams: Arc<Upstreams>,
    /// Set for requests arriving through an uplink: only its routers are eligible.
    pub uplink: Option<Arc<str>>,
    /// Requests atrium makes itself (health checks through the routing): never traced.
    pub internal: bool,
}

impl ConnInfo {
    /// Describes a new connection.
    pub fn new(entry_point: Arc<str>, port: u16, tls: bool, peer: SocketAddr, upstreams: Arc<Upstreams>) -> ConnInfo {
        let ip = HeaderValue::from_str(&peer.ip().to_canonical().to_string()).ok();
        ConnInfo { entry_point, port, tls, peer, upstreams, uplink: None, ip_value: ip, internal: false }
    }

    /// The same connection on behalf of another client (a request relayed by a parent):
    /// its address and scheme stand for the parent's.
    pub fn for_client(&self, client: crate::uplink::frame::RelayedClient) -> ConnInfo {
        ConnInfo {
            peer: client.addr,
            tls: client.tls,
            ip_value: HeaderValue::from_str(&client.addr.ip().to_canonical().to_string()).ok(),
            entry_point: self.entry_point.clone(),
            upstreams: self.upstreams.clone(),
            uplink: self.uplink.clone(),
            ..*self
        }
    }

    /// This connection's client as a parent names it to a child.
    fn relayed(&self) -> crate::uplink::frame::RelayedClient {
        crate::uplink::frame::RelayedClient { addr: self.peer, tls: self.tls }
    }
}

/// Access log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    /// One JSON object per request.
    Json,
    /// Common Log Format.
    Clf,
}

/// The data plane.
pub struct Gateway {
    runtime: ArcSwapOption<Runtime>,
    upstreams: Arc<Upstreams>,
    /// Metrics.
    pub metrics: metrics::Metrics,
    access_log: Option<AccessLog>,
    hostname: HeaderValue,
    /// Certificates for TLS entrypoints.
    pub certs: Arc<tls::CertStore>,
    /// The parent side of uplinks, when this data plane has a certificate for them.
    uplinks: std::sync::OnceLock<Arc<crate::uplink::UplinkClient>>,
    /// Requests logged so far (Traefik's CLF counter).
    served: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("version", &self.runtime.load().as_ref().map(|r| r.version)).finish()
    }
}

/// Router and service ids of a request, for metrics.
type Labels = Arc<metrics::RouterStats>;

/// What forwarding a request gives.
type Forwarded = Result<Response<Body>, ProxyError>;

/// A request's router, found before the request was built (by the direct lane, which
/// routes without the request's headers only when no rule reads them, so the router is
/// the one [`Gateway::serve`] would find), with the configuration it belongs to.
struct Routed {
    rt: Arc<Runtime>,
    /// Its position in the table's routers.
    router: usize,
}

/// Why a request could not be forwarded.
enum ProxyError {
    NoTarget(String),
    Upstream(UpstreamError),
}

fn error_response(e: &ProxyError) -> Response<Body> {
    match e {
        ProxyError::NoTarget(_) => body::text(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"),
        ProxyError::Upstream(UpstreamError::Timeout { .. }) => {
            body::text(StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout")
        }
        ProxyError::Upstream(_) => body::text(StatusCode::BAD_GATEWAY, "Bad Gateway"),
    }
}

/// Logs why a request could not be forwarded; the answer the client gets.
fn failure(router: &Route, e: &ProxyError) -> Response<Body> {
    match e {
        ProxyError::NoTarget(why) => {
            tracing::warn!(router = %router.id, service = %router.service, %why, "no healthy target")
        }
        ProxyError::Upstream(err) => {
            tracing::warn!(router = %router.id, service = %router.service, error = %err, "upstream request failed")
        }
    }
    error_response(e)
}

/// A load balancer with no server to take a request.
fn no_server(lb: &service::LoadBalancer) -> ProxyError {
    ProxyError::NoTarget(format!("service {} has no available server", lb.id))
}

/// The upstream-bound part of a request that may be sent more than once (retries,
/// mirrors): everything but the body.
#[derive(Clone)]
struct Outgoing {
    method: http::Method,
    path_and_query: http::uri::PathAndQuery,
    headers: http::HeaderMap,
    /// The client's protocol version (HTTP/2 stays HTTP/2 through an uplink).
    version: http::Version,
    /// The client, named to a child across an uplink.
    client: crate::uplink::frame::RelayedClient,
}

impl Outgoing {
    fn into_request(self, server: &service::Server, pass_host: bool, body: Body) -> Result<Request<Body>, String> {
        let h2c = server.url.scheme_str() == Some("h2c");
        let scheme = match server.url.scheme_str() {
            Some("https") => http::uri::Scheme::HTTPS,
            _ => http::uri::Scheme::HTTP,
        };
        let authority = server.url.authority().cloned().ok_or("server without authority")?;
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(scheme);
        uri.authority = Some(authority.clone());
        uri.path_and_query = Some(self.path_and_query);
        let uri = http::Uri::from_parts(uri).map_err(|e| e.to_string())?;
        let mut req = Request::new(body);
        *req.method_mut() = self.method;
        *req.uri_mut() = uri;
        *req.headers_mut() = self.headers;
        if !pass_host || !req.headers().contains_key(header::HOST) {
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                req.headers_mut().insert(header::HOST, v);
            }
        }
        // The client picks the wire protocol per upstream (ALPN for https, prior knowledge
        // for h2c); the request's own version only says which one to expect.
        *req.version_mut() = if h2c { http::Version::HTTP_2 } else { http::Version::HTTP_11 };
        Ok(req)
    }
}

impl Gateway {
    /// A gateway with no configuration yet (every request gets 503 until the first swap).
    pub fn new(upstreams: Upstreams, access_log: Option<AccessLog>, certs: Arc<tls::CertStore>) -> Arc<Gateway> {
        let hostname = std::env::var("HOSTNAME")
            .ok()
            .and_then(|h| HeaderValue::from_str(&h).ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| HeaderValue::from_static("atrium"));
        Arc::new(Gateway {
            runtime: ArcSwapOption::empty(),
            upstreams: Arc::new(upstreams),
            metrics: metrics::Metrics::default(),
            access_log,
            hostname,
            certs,
            uplinks: std::sync::OnceLock::new(),
            served: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Enables `X@multicluster` services: requests go to children over QUIC with this
    /// client's certificate.
    pub fn set_uplink_client(&self, client: Arc<crate::uplink::UplinkClient>) {
        client.set_metrics(self.metrics.uplinks.clone());
        let _ = self.uplinks.set(client);
    }

    /// Whether this data plane's own connection to `child` failed moments ago.
    fn child_down(&self, child: &str) -> bool {
        self.uplinks.get().is_some_and(|u| u.is_down(child))
    }

    /// The configuration in force.
    pub fn runtime(&self) -> Option<Arc<Runtime>> {
        self.runtime.load_full()
    }

    /// Puts a new configuration in force and starts its health checks. Requests in flight
    /// finish on the table they started with.
    ///
    /// What the previous table learnt carries over where the configuration did not change:
    /// health verdicts and ejections of servers, rate-limit and in-flight state.
    pub fn swap(&self, mut rt: Runtime) {
        let load_balancers = |rt: &Runtime| {
            let mut lbs = Vec::new();
            for s in rt.services.values() {
                s.load_balancers(&mut lbs);
            }
            lbs.sort_by(|a, b| a.id.cmp(&b.id));
            lbs.dedup_by(|a, b| Arc::ptr_eq(a, b));
            lbs
        };
        let lbs = load_balancers(&rt);
        if let Some(old) = self.runtime.load_full() {
            rt.table.adopt_state(&old.table);
            let previous: HashMap<String, Arc<service::LoadBalancer>> =
                load_balancers(&old).into_iter().map(|lb| (lb.id.clone(), lb)).collect();
            for lb in &lbs {
                if let Some(o) = previous.get(&lb.id) {
                    lb.adopt_state(o);
                }
            }
        }
        for lb in &lbs {
            service::health::spawn(lb, self.upstreams.clone());
        }
        self.certs.set(tls::by_server_name(&rt.body));
        if self.uplinks.get().is_none() {
            let mut remote: Vec<&str> = rt
                .services
                .values()
                .filter_map(|s| match &**s {
                    ServiceRt::Multicluster { name, .. } => Some(name.as_str()),
                    _ => None,
                })
                .collect();
            if !remote.is_empty() {
                remote.sort_unstable();
                remote.dedup();
                tracing::warn!(
                    services = ?remote,
                    "routers use @multicluster services, but only a parent's data plane reaches children \
                     (atrium control-plane or data-plane with its certificate): they answer 503 here"
                );
            }
        }
        let version = rt.version;
        self.runtime.store(Some(Arc::new(rt)));
        self.metrics.table_version.set(version as i64);
        self.metrics.swaps.inc();
        tracing::info!(version, "route table swapped in");
    }

    /// Records a configuration that was refused.
    pub fn swap_failed(&self, error: impl std::fmt::Display) {
        self.metrics.swap_failures.inc();
        tracing::error!(%error, "configuration refused; the previous route table stays in force");
    }

    /// Serves one request (in its trace span when tracing is on).
    pub fn handle<'a>(
        self: &'a Arc<Self>,
        req: Request<Body>,
        conn: &'a ConnInfo,
    ) -> futures_util::future::Either<
        impl std::future::Future<Output = Response<Body>> + Send + 'a,
        futures_util::future::BoxFuture<'a, Response<Body>>,
    > {
        self.handle_routed(req, conn, None)
    }

    /// [`Gateway::handle`] for a request whose router was found already (see
    /// [`Routed`]).
    fn handle_routed<'a>(
        self: &'a Arc<Self>,
        req: Request<Body>,
        conn: &'a ConnInfo,
        routed: Option<Routed>,
    ) -> futures_util::future::Either<
        impl std::future::Future<Output = Response<Body>> + Send + 'a,
        futures_util::future::BoxFuture<'a, Response<Body>>,
    > {
        use futures_util::future::Either;
        let span = (crate::telemetry::enabled() && !conn.internal)
            .then(|| crate::telemetry::request_span(req.headers(), req.method(), req.uri().path(), &conn.entry_point));
        match span {
            None => Either::Left(self.serve(req, conn, None, routed)),
            Some(span) => {
                use tracing::Instrument;
                Either::Right(Box::pin(self.serve(req, conn, Some(span.clone()), routed).instrument(span)))
            }
        }
    }

    /// [`Gateway::handle`]'s work: one async function from routing to the response, so the
    /// request's future is built and moved once (each nested future is a copy of its state).
    async fn serve(
        self: &Arc<Self>,
        req: Request<Body>,
        conn: &ConnInfo,
        span: Option<tracing::Span>,
        routed: Option<Routed>,
    ) -> Response<Body> {
        let start = Instant::now();
        let version = req.version();
        // What the access log needs from the request, kept only when there is one.
        let seen = self.access_log.map(|_| {
            let h =
                |n: header::HeaderName| req.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
            (req.method().clone(), req.uri().clone(), h(header::REFERER), h(header::USER_AGENT))
        });
        let (mut resp, labels): (Response<Body>, Option<Labels>) = 'inner: {
            let (rt, routed_to) = match routed {
                Some(Routed { rt, router }) => (rt, Some(router)),
                None => match self.runtime.load_full() {
                    Some(rt) => (rt, None),
                    None => {
                        break 'inner (
                            body::text(StatusCode::SERVICE_UNAVAILABLE, "no configuration loaded yet"),
                            None,
                        );
                    }
                },
            };
            let (mut parts, incoming) = req.into_parts();
            if let Some(why) = host_problem(parts.version, parts.uri.authority(), &parts.headers) {
                break 'inner (body::text(StatusCode::BAD_REQUEST, why), None);
            }
            // A Uri clone shares its bytes, and so does a header value's: borrowing the host,
            // path and query from them costs no copy.
            let uri = parts.uri.clone();
            let host_header = if uri.authority().is_none() { parts.headers.get(header::HOST).cloned() } else { None };
            let host_raw: &str = uri
                .authority()
                .map(|a| a.as_str())
                .or_else(|| host_header.as_ref().and_then(|h| h.to_str().ok()))
                .unwrap_or_default();
            // The path every step sees and the upstream gets: dot segments gone, escapes
            // normalised; what cannot be made safe is a 400 (see `path_security`).
            let query = uri.query();
            let path = match atrium_routing::path_security::sanitize(uri.path()) {
                Ok(p) => p,
                Err(e) => break 'inner (body::text(StatusCode::BAD_REQUEST, &format!("400 Bad Request: {e}")), None),
            };
            let path_raw: &str = &path;
            let client_ip = Some(conn.peer.ip().to_canonical());
            // The entrypoint's forwarding headers, before routing and middlewares (which see
            // them and may override them), as Traefik sets them.
            let upgrade = crate::hop::upgrade_protocol(&parts.headers);
            let client = forward::ClientSide {
                ip: conn.ip_value.as_ref(),
                proto: match (upgrade.is_some(), conn.tls) {
                    (true, true) => "wss",
                    (true, false) => "ws",
                    (false, true) => "https",
                    (false, false) => "http",
                },
                // The host the client asked for: the request target's authority when it has
                // one (HTTP/2, absolute form), else its Host header.
                host: match uri.authority() {
                    None => host_header.clone(),
                    Some(_) => HeaderValue::from_str(host_raw).ok().filter(|h| !h.is_empty()),
                },
                server: &self.hostname,
            };
            forward::set_forwarded(&mut parts.headers, &client);
            let rank = match routed_to {
                Some(i) => i,
                None => {
                    let view = RequestView::with_client_ip(
                        parts.method.as_str(),
                        host_raw,
                        path_raw,
                        query,
                        &parts.headers,
                        client_ip,
                    );
                    let req = atrium_routing::Request {
                        entry_point: Some(&conn.entry_point),
                        uplink: conn.uplink.as_deref(),
                        path: path_raw,
                        view,
                    };
                    match atrium_routing::decide(&rt.table, &req) {
                        Decision::Route(i) => i,
                        Decision::NotFound => {
                            break 'inner (body::text(StatusCode::NOT_FOUND, "404 page not found"), None);
                        }
                        Decision::Refused { router, answer } => {
                            let r = &rt.table.routers()[router];
                            r.state.served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            break 'inner (body::answer(answer), Some(r.state.labels.clone()));
                        }
                    }
                }
            };
            let router: &Route = &rt.table.routers()[rank];
            let labels = Some(router.state.labels.clone());
            router.state.served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Only middlewares read these (CORS, compress).
            let with_middlewares = !router.middlewares.is_empty();
            let origin = with_middlewares
                .then(|| parts.headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()).map(str::to_string))
                .flatten();
            // Built on the first path rewrite, or when sanitizing changed the path: most
            // routers forward the path as it came.
            let mut url: Option<UrlPath> =
                matches!(path, std::borrow::Cow::Owned(_)).then(|| UrlPath::from_escaped(path_raw));
            // The path and query as redirects see them: the sanitized path.
            let redirect_pq = || match (&path, parts.uri.path_and_query()) {
                (std::borrow::Cow::Borrowed(_), Some(pq)) => std::borrow::Cow::Borrowed(pq.as_str()),
                _ => std::borrow::Cow::Owned(match query {
                    Some(q) => format!("{path_raw}?{q}"),
                    None => path_raw.to_string(),
                }),
            };
            let mut after = Vec::new();
            let mut guards = Vec::new();
            let mut drop_xff = false;
            let mut host_override: Option<String> = None;
            let mut buffering: Option<&atrium_routing::middleware::Buffering> = None;
            let mut retry: Option<&atrium_routing::middleware::retry::RetryPolicy> = None;
            let mut compress = None;
            let accept_encoding =
                with_middlewares.then(|| parts.headers.get(header::ACCEPT_ENCODING).cloned()).flatten();
            let scheme = if conn.tls { "https" } else { "http" };
            let canon_host = atrium_routing::request::canonical_host(host_raw);

            for m in &router.middlewares {
                let early = match &m.action {
                    Action::Path => match m.rewrite_path(url.get_or_insert_with(|| UrlPath::from_escaped(path_raw))) {
                        Ok(Some((name, value))) => {
                            if let Ok(v) = HeaderValue::from_str(&value) {
                                parts.headers.append(name, v);
                            }
                            None
                        }
                        Ok(None) => None,
                        Err(RewriteError::BadRequest(e)) => Some(body::text(StatusCode::BAD_REQUEST, &e)),
                        Err(RewriteError::Internal(e)) => Some(body::text(StatusCode::INTERNAL_SERVER_ERROR, &e)),
                    },
                    Action::Headers(h) => match h.on_request(&parts.method, &mut parts.headers, host_raw, conn.tls) {
                        atrium_routing::middleware::headers::RequestAction::Respond(r) => Some(body::answer(r)),
                        atrium_routing::middleware::headers::RequestAction::Continue { drop_xff: d, host, ssl } => {
                            drop_xff |= d;
                            if host.is_some() {
                                host_override = host;
                            }
                            after.push((h, ssl));
                            None
                        }
                    },
                    Action::RedirectScheme { scheme: to, port, permanent } => {
                        let pq = redirect_pq();
                        let u = redirect::RequestUrl { scheme, host: host_raw, path_and_query: &pq };
                        redirect::scheme_target(&u, to, port.as_deref())
                            .map(|loc| redirect_to(&parts.method, *permanent, &loc))
                    }
                    Action::RedirectRegex { regex, replacement, permanent } => {
                        let pq = redirect_pq();
                        let u = redirect::RequestUrl { scheme, host: host_raw, path_and_query: &pq };
                        redirect::regex_target(&u, regex, replacement)
                            .map(|loc| redirect_to(&parts.method, *permanent, &loc))
                    }
                    Action::IpAllow(a) => (!a.allows(client_ip, &parts.headers)).then(|| {
                        body::text(a.reject_status, a.reject_status.canonical_reason().unwrap_or("Forbidden"))
                    }),
                    Action::RateLimit(rl) => {
                        let key = rl.source.key(client_ip, &parts.headers, &canon_host);
                        match rl.admit(&key, Instant::now()) {
                            Admission::Now => None,
                            Admission::After(d) => {
                                tokio::time::sleep(d).await;
                                None
                            }
                            Admission::Refuse(d) => {
                                let mut r = body::text(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
                                let secs = d.as_secs_f64().ceil().max(1.0) as u64;
                                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
                                Some(r)
                            }
                        }
                    }
                    Action::InFlight(f) => {
                        let key = f.source.key(client_ip, &parts.headers, &canon_host);
                        match f.acquire(&key) {
                            Some(g) => {
                                guards.push(g);
                                None
                            }
                            None => Some(body::text(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests")),
                        }
                    }
                    Action::Buffering(b) => {
                        buffering = Some(b);
                        None
                    }
                    Action::BasicAuth(b) => b.check(&mut parts.headers).map(body::answer),
                    Action::Compress(c) => {
                        compress = Some(c);
                        None
                    }
                    Action::Retry(p) => {
                        retry = Some(p);
                        None
                    }
                    // Checked right after routing.
                    Action::EncodedCharacters(_) => None,
                };
                if let Some(r) = early {
                    break 'inner (r, labels);
                }
            }

            // The request body: streamed, or read whole by a buffering middleware (413 past its
            // limit, spilled to disk past its memory share).
            let mut req_body: Body = incoming;
            if let Some(b) = buffering {
                let declared = parts
                    .headers
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if b.max_request > 0 && declared.is_some_and(|n| n > b.max_request) {
                    break 'inner (too_large(), labels);
                }
                match body::spool(req_body, b.max_request, b.mem_request).await {
                    Ok(whole) => req_body = with_known_length(&mut parts.headers, whole),
                    Err(body::CollectError::TooLarge) => {
                        break 'inner (too_large(), labels);
                    }
                    Err(body::CollectError::Body(e)) => {
                        tracing::debug!(error = %e, "request body failed while it was buffered");
                        break 'inner (body::text(StatusCode::BAD_REQUEST, "Bad Request"), labels);
                    }
                    Err(body::CollectError::Spool(e)) => {
                        tracing::error!(error = %e, "cannot spool a request body to disk");
                        break 'inner (body::text(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"), labels);
                    }
                }
            }

            let client_upgrade = upgrade.as_ref().and_then(|_| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
            let mut headers = std::mem::take(&mut parts.headers);
            crate::hop::strip_hop_by_hop(&mut headers, upgrade.clone());
            forward::add_forwarded_for(&mut headers, conn.ip_value.as_ref(), drop_xff);
            if crate::telemetry::enabled() {
                crate::telemetry::inject(&mut headers);
            }
            if let Some(h) = &host_override {
                if let Ok(v) = HeaderValue::from_str(h) {
                    headers.insert(header::HOST, v);
                }
            } else if !host_raw.is_empty() && (uri.authority().is_some() || !headers.contains_key(header::HOST)) {
                // The host the request was routed by is the one the upstream sees: the
                // target's authority when it has one (HTTP/2's :authority, an absolute-form
                // target, which RFC 9112 says wins over Host), else the Host header.
                if let Ok(v) = HeaderValue::from_str(host_raw) {
                    headers.insert(header::HOST, v);
                }
            }
            let path_and_query = match &url {
                None => uri.path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
                Some(u) => {
                    // A rewrite must not make a path that climbs out of what was routed.
                    if atrium_routing::path_security::has_dot_segment(u.request_path()) {
                        tracing::debug!(router = %router.id, path = %u.request_path(), "rewritten path has a dot segment: refused");
                        break 'inner (body::text(StatusCode::BAD_REQUEST, "rewritten path has a dot segment"), labels);
                    }
                    let mut pq = u.request_path().to_string();
                    if let Some(q) = query {
                        pq.push('?');
                        pq.push_str(q);
                    }
                    match http::uri::PathAndQuery::try_from(pq) {
                        Ok(pq) => pq,
                        Err(_) => {
                            break 'inner (
                                body::text(StatusCode::BAD_REQUEST, "rewritten path is not a valid URI path"),
                                labels,
                            );
                        }
                    }
                }
            };
            let out = Outgoing {
                method: parts.method.clone(),
                path_and_query,
                headers,
                version: parts.version,
                client: conn.relayed(),
            };

            let Some(svc) = router.state.target.clone() else {
                break 'inner (body::text(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"), labels);
            };
            // A request that may be tried again keeps its body (413 past the retry's limit).
            let retry = retry.filter(|p| p.allows(&parts.method));
            let mut replay = None;
            if let Some(p) = retry {
                let bytes = if http_body::Body::is_end_stream(&req_body) {
                    Bytes::new()
                } else {
                    let limit = p.max_body.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
                    match body::collect_limited(req_body, limit).await {
                        Ok(b) => b,
                        Err(body::CollectError::TooLarge) => {
                            break 'inner (too_large(), labels);
                        }
                        Err(e) => {
                            tracing::debug!(error = ?e, "request body failed while it was read for retry");
                            break 'inner (body::text(StatusCode::BAD_REQUEST, "Bad Request"), labels);
                        }
                    }
                };
                req_body = body::full(bytes.clone());
                replay = Some((p, out.clone(), bytes));
            }
            let mut result = self.forward(&svc, out, req_body, &conn.upstreams).await;
            if let Some((p, out, bytes)) = replay {
                let deadline = p.timeout.map(|t| Instant::now() + t);
                let mut attempt = 1;
                while attempt < p.attempts {
                    let again = match &result {
                        Ok(r) => p.retries_status(r.status()),
                        Err(ProxyError::Upstream(
                            UpstreamError::Connect { .. } | UpstreamError::Lost { .. } | UpstreamError::Protocol { .. },
                        )) => p.retries_network_errors(),
                        Err(e) => p.retries_status(error_response(e).status()),
                    };
                    attempt += 1;
                    let wait = p.backoff(attempt);
                    if !again || deadline.is_some_and(|d| Instant::now() + wait >= d) {
                        break;
                    }
                    tokio::time::sleep(wait).await;
                    tracing::debug!(router = %router.id, attempt, "retrying request");
                    result = self.forward(&svc, out.clone(), body::full(bytes.clone()), &conn.upstreams).await;
                }
            }
            let mut resp = match result {
                Ok(r) => r,
                Err(e) => break 'inner (failure(router, &e), labels),
            };

            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                // The upstream's switched connection is joined to the client's.
                match (client_upgrade, crate::h1::client::UpgradeSlot::take(&mut resp)) {
                    (Some(client_up), Some(mut upstream)) => {
                        tokio::spawn(async move {
                            match client_up.await {
                                Ok(c) => {
                                    let mut c = TokioIo::new(c);
                                    let _ = tokio::io::copy_bidirectional(&mut c, &mut upstream).await;
                                }
                                Err(e) => tracing::debug!(error = %e, "protocol upgrade failed"),
                            }
                        });
                    }
                    _ => {
                        tracing::warn!(router = %router.id, "a 101 answer without a connection to switch; refused");
                        break 'inner (body::text(StatusCode::BAD_GATEWAY, "Bad Gateway"), labels);
                    }
                }
            } else {
                crate::hop::strip_hop_by_hop(resp.headers_mut(), None);
            }
            let (mut rparts, rbody) = resp.into_parts();
            let mut out_body: Body = rbody;
            if let Some(b) = buffering.filter(|_| rparts.status != StatusCode::SWITCHING_PROTOCOLS) {
                match body::spool(out_body, b.max_response, b.mem_response).await {
                    Ok(whole) => out_body = with_known_length(&mut rparts.headers, whole),
                    Err(e) => {
                        if let body::CollectError::Spool(e) = &e {
                            tracing::error!(error = %e, "cannot spool a response body to disk");
                        }
                        break 'inner (
                            body::text(StatusCode::INTERNAL_SERVER_ERROR, "response body over the buffering limit"),
                            labels,
                        );
                    }
                }
            }
            for (h, ssl) in after.iter().rev() {
                h.on_response(&mut rparts.headers, origin.as_deref(), *ssl);
            }
            if let Some(c) = compress {
                if c.applies(&parts.method, accept_encoding.as_ref(), rparts.status, &rparts.headers) {
                    out_body = crate::gzip::wrap(c, &mut rparts.headers, out_body);
                }
            }
            if !guards.is_empty() {
                // In-flight slots are held until the response body is finished or dropped.
                out_body = body::holding(out_body, guards);
            }
            (Response::from_parts(rparts, out_body), labels)
        };
        // Answer in the client's protocol version, whatever the upstream spoke.
        *resp.version_mut() = version;
        let code = resp.status().as_u16();
        let (router, service): (&str, &str) = labels.as_deref().map_or(("", ""), |l| (&l.router, &l.service));
        if let Some(span) = &span {
            crate::telemetry::record_outcome(span, code, router, service);
        }
        if let (Some(fmt), Some((method, uri, referer, agent))) = (self.access_log, seen) {
            let n = self.served.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            let (r, s) = (router, service);
            let line = match fmt {
                AccessLog::Json => serde_json::json!({
                    "client": conn.peer.ip().to_string(), "method": method.as_str(), "uri": uri.to_string(),
                    "status": code, "router": r, "service": s, "entryPoint": &*conn.entry_point, "durationMs": ms,
                })
                .to_string(),
                // Traefik's Common Log Format: client, user, time, request line, status,
                // size, referer, user agent, requests so far, router, service, duration.
                AccessLog::Clf => format!(
                    "{} - - [{}] \"{} {} {:?}\" {} {} \"{}\" \"{}\" {} \"{}\" \"{}\" {:.0}ms",
                    conn.peer.ip().to_canonical(),
                    clf_time(std::time::SystemTime::now()),
                    method,
                    uri.path_and_query().map_or("/", |p| p.as_str()),
                    version,
                    code,
                    resp.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).unwrap_or("-"),
                    referer,
                    agent,
                    n,
                    if r.is_empty() { "-" } else { r },
                    if s.is_empty() { "-" } else { s },
                    ms
                ),
            };
            println!("{line}");
        }
        self.metrics.record(labels.as_deref(), code, start.elapsed().as_secs_f64());
        resp
    }

    /// Sends to `svc`: straight to a server for a load balancer (the common case: its
    /// future itself, neither boxed nor wrapped), through [`Gateway::dispatch`] for
    /// compositions.
    fn forward<'a>(
        self: &'a Arc<Self>,
        svc: &'a Arc<ServiceRt>,
        out: Outgoing,
        body: Body,
        up: &'a Arc<Upstreams>,
    ) -> futures_util::future::Either<
        impl std::future::Future<Output = Forwarded> + Send + 'a,
        futures_util::future::BoxFuture<'a, Forwarded>,
    > {
        match &**svc {
            ServiceRt::LoadBalancer(lb) => futures_util::future::Either::Left(send_to_server(lb, out, body, up)),
            _ => futures_util::future::Either::Right(self.dispatch(svc, out, body, up)),
        }
    }

    fn dispatch<'a>(
        self: &'a Arc<Self>,
        svc: &'a Arc<ServiceRt>,
        out: Outgoing,
        body: Body,
        up: &'a Arc<Upstreams>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, ProxyError>> + Send + 'a>> {
        Box::pin(async move {
            match &**svc {
                ServiceRt::LoadBalancer(lb) => send_to_server(lb, out, body, up).await,
                ServiceRt::Weighted { .. } => {
                    let child = svc
                        .pick_child_with(&|c| self.child_down(c))
                        .ok_or_else(|| ProxyError::NoTarget("no weighted child is available".into()))?
                        .clone();
                    self.dispatch(&child, out, body, up).await
                }
                ServiceRt::Failover { main, fallback } => {
                    let target = if main.available_with(&|c| self.child_down(c)) { main } else { fallback };
                    self.dispatch(target, out, body, up).await
                }
                ServiceRt::Mirroring { main, mirrors, mirror_body, max_body_size, counter } => {
                    let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let chosen: Vec<Arc<ServiceRt>> =
                        mirrors.iter().filter(|(_, pct)| (n % 100) < u64::from(*pct)).map(|(s, _)| s.clone()).collect();
                    let (main_body, copy): (Body, Option<Bytes>) = if chosen.is_empty() {
                        (body, None)
                    } else if http_body::Body::is_end_stream(&body) {
                        (body, Some(Bytes::new()))
                    } else if *mirror_body {
                        let limit = if *max_body_size < 0 { usize::MAX } else { *max_body_size as usize };
                        match body::collect_limited(body, limit).await {
                            Ok(b) => (body::full(b.clone()), Some(b)),
                            Err(_) => return Err(ProxyError::NoTarget("request body too large to mirror".into())),
                        }
                    } else {
                        (body, Some(Bytes::new()))
                    };
                    if let Some(copy) = copy {
                        for m in chosen {
                            let gw = self.clone();
                            let out = out.clone();
                            let copy = copy.clone();
                            let up = up.clone();
                            tokio::spawn(async move {
                                if let Ok(r) = gw.dispatch(&m, out, body::full(copy), &up).await {
                                    let _ = r.into_body().collect().await;
                                }
                            });
                        }
                    }
                    self.dispatch(main, out, main_body, up).await
                }
                ServiceRt::Unavailable(why) => Err(ProxyError::NoTarget(why.clone())),
                ServiceRt::Multicluster { name, children } => {
                    let Some(client) = self.uplinks.get() else {
                        return Err(ProxyError::NoTarget(format!(
                            "{name}@multicluster: this process does not reach children (not a parent's data plane)"
                        )));
                    };
                    let (uplink, pinned) = crate::uplink::pick::resolve(children, name);
                    // A request without a body can be sent again: when the chosen child
                    // cannot be reached, the next candidate gets it. When the child went
                    // away after the request went out, only an idempotent one goes again.
                    let replayable = http_body::Body::is_end_stream(&body);
                    let idempotent = crate::exchange::idempotent(&out.method);
                    let mut body = Some(body);
                    let mut last_err = None;
                    for _ in 0..if replayable { 3 } else { 1 } {
                        let cands = crate::uplink::pick::candidates(children, uplink, pinned, |c| client.is_down(c));
                        let Some(child) = crate::uplink::pick::pick(&cands, &client.counter) else { break };
                        let mut req = Request::new(body.take().unwrap_or_else(body::empty));
                        *req.method_mut() = out.method.clone();
                        *req.uri_mut() = http::Uri::from(out.path_and_query.clone());
                        *req.headers_mut() = out.headers.clone();
                        *req.version_mut() = out.version;
                        let timeout = up.config().response_header_timeout;
                        match client.send(child, uplink, out.client, req, timeout).await {
                            Ok(r) => return Ok(r),
                            Err(e @ UpstreamError::Connect { .. }) => last_err = Some(e),
                            Err(e @ UpstreamError::Lost { .. }) if idempotent => last_err = Some(e),
                            Err(e) => return Err(ProxyError::Upstream(e)),
                        }
                    }
                    Err(match last_err {
                        Some(e) => ProxyError::Upstream(e),
                        None => ProxyError::NoTarget(format!("no reachable child has a healthy uplink {uplink:?}")),
                    })
                }
            }
        })
    }
}

/// Why a request's `Host` headers make it a bad request: more than one (any version), or
/// none on HTTP/1.1 (RFC 9112, 3.2), as Go's server answers. Two Host values would let
/// the router and the upstream see different hosts.
fn host_problem(
    version: http::Version,
    authority: Option<&http::uri::Authority>,
    headers: &http::HeaderMap,
) -> Option<&'static str> {
    // The target's authority (absolute form, HTTP/2's :authority) is routed on and
    // forwarded like a Host: the same rules, so no userinfo (RFC 9113, 8.3.1).
    if authority.is_some_and(|a| !valid_host(a.as_str().as_bytes())) {
        return Some("400 Bad Request: malformed Host header");
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => Some("400 Bad Request: too many Host headers"),
        (None, None) if version == http::Version::HTTP_11 => Some("400 Bad Request: missing required Host header"),
        // HTTP/2 with a Host that names another server than :authority is malformed (RFC
        // 9113, 8.3.1): one would route, the other reach the upstream.
        (Some(h), None)
            if version == http::Version::HTTP_2
                && authority.is_some_and(|a| !same_authority(a.as_str().as_bytes(), h.as_bytes())) =>
        {
            Some("400 Bad Request: Host differs from :authority")
        }
        (Some(h), None) if !valid_host(h.as_bytes()) => Some("400 Bad Request: malformed Host header"),
        _ => None,
    }
}

/// Whether two authorities name the same server: case aside, and a default port (`:80`,
/// `:443`) the same as none.
fn same_authority(a: &[u8], b: &[u8]) -> bool {
    let bare = |x: &[u8]| -> Vec<u8> {
        let x = x.to_ascii_lowercase();
        match x.strip_suffix(b":443").or_else(|| x.strip_suffix(b":80")) {
            Some(h) => h.to_vec(),
            None => x,
        }
    };
    bare(a) == bare(b)
}

/// Whether a Host value is made of what a host and port can hold (Go's
/// `httpguts.ValidHostHeader`): no spaces, controls, non-ASCII bytes, `/`, `@` or quotes,
/// which a router and an upstream could read two ways.
pub(crate) fn valid_host(h: &[u8]) -> bool {
    h.iter().all(|&b| b.is_ascii_alphanumeric() || b"!$%&'()*+,-.:;=[]_~".contains(&b))
}

/// 413 for a request body past a limit. (The rest of that body is never read: the server
/// closes the connection after the answer and says so, see `proxy::server`.)
fn too_large() -> Response<Body> {
    body::text(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large")
}

fn redirect_to(method: &http::Method, permanent: bool, location: &str) -> Response<Body> {
    let status = redirect::redirect_status(method, permanent);
    let mut r = body::text(status, status.canonical_reason().unwrap_or("Redirect"));
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Picks a server of `lb` and sends the request there; a failure counts toward the
/// server's passive health.
async fn send_to_server(
    lb: &service::LoadBalancer,
    out: Outgoing,
    body: Body,
    up: &Upstreams,
) -> Result<Response<Body>, ProxyError> {
    let server = lb.pick().ok_or_else(|| no_server(lb))?;
    let req = out.into_request(server, lb.pass_host_header, body).map_err(ProxyError::NoTarget)?;
    let h2c = server.url.scheme_str() == Some("h2c");
    match up.send(req, h2c).await {
        Ok(r) => Ok(r),
        Err(e) => {
            lb.record_failure(server);
            Err(ProxyError::Upstream(e))
        }
    }
}

/// A body read whole goes on with `Content-Length` instead of chunked framing.
fn with_known_length(headers: &mut http::HeaderMap, whole: Body) -> Body {
    headers.remove(header::TRANSFER_ENCODING);
    if let Some(n) = http_body::Body::size_hint(&whole).exact() {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    whole
}

/// A time as Common Log Format writes it, in UTC: `26/Nov/2026:06:18:47 +0000`.
fn clf_time(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    #[test]
    fn clf_time_is_a_civil_utc_date() {
        let at = |secs: u64| super::clf_time(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "01/Jan/1970:00:00:00 +0000");
        // `date -u -d @1795674527`: Thu Nov 26 06:28:47 UTC 2026.
        assert_eq!(at(1_795_674_527), "26/Nov/2026:06:28:47 +0000");
        // A leap day and the last second of a year.
        assert_eq!(at(951_782_400), "29/Feb/2000:00:00:00 +0000");
        assert_eq!(at(1_704_067_199), "31/Dec/2023:23:59:59 +0000");
        assert!(super::clf_time(SystemTime::now()).ends_with(" +0000"));
    }
}
