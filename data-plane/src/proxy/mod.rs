//! The proxy: from an accepted request to the upstream's response.
//!
//! [`Gateway`] holds the route table in force behind an `ArcSwap`. Each request loads the
//! table once and keeps that `Arc` until it is done, so a swap never mixes two
//! configurations inside one request and never waits for requests in flight. A request
//! then goes: route → middlewares (request phase) → service dispatch → middlewares
//! (response phase, in reverse order).

pub mod access_check;
mod access_log;
pub mod admin;
mod apim;
mod direct;
pub mod forward;
mod general;
mod jwt;
pub mod plan_limits;

pub mod server;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use atrium_proto::v1::SnapshotBody;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;

use crate::body::{self, Body};
use crate::metrics;
use crate::service::{self, Service};
use atrium_routing::table::{RouteEntry, RouteTable};

/// The route table as the data plane runs it: each router with its [`RouteState`].
pub type Table = RouteTable<RouteState>;

/// A router of [`Table`].
type Route = RouteEntry<RouteState>;

/// What the data plane keeps per router next to its routing entry.
#[derive(Debug)]
pub struct RouteState {
    /// Its service, built (`None` when the snapshot names none that could be built).
    pub target: Option<Arc<Service>>,
    /// Router and service ids with their metric handles, shared on the hot path.
    pub labels: Arc<metrics::RouterStats>,
    /// Requests routed here since the last usage report.
    pub served: std::sync::atomic::AtomicU64,
}
use crate::exchange::UpstreamError;
use crate::upstream::Upstreams;

/// The header that tells the portal which APIPortal a request is for; set by the data plane
/// on every request it sends to the portal, whatever the client sent.
pub const PORTAL_HEADER: &str = "x-atrium-portal";

/// A compiled configuration: the route table and the services it sends to.
#[derive(Debug)]
pub struct Compiled {
    /// Version (sequence number) of the snapshot it came from.
    pub version: u64,
    /// Epoch of the control plane that produced it (0 for a local gateway).
    pub epoch: u64,
    /// SHA-256 of the encoded snapshot body.
    pub hash: Vec<u8>,
    /// Routers.
    pub table: Table,
    /// Services by id.
    pub services: HashMap<String, Arc<Service>>,
    /// Who may call which API, on which plan.
    pub access: atrium_routing::apim::Access,
    /// The JWT rules of the APIs that use JWT, by API.
    jwt: HashMap<String, Arc<jwt::JwtCheck>>,
    /// The snapshot body, for `/api/rawdata`.
    pub body: SnapshotBody,
    /// What the direct lane makes of each router's middlewares, by router position.
    direct: Vec<direct::Middlewares>,
}

/// Why a snapshot cannot become a configuration in force.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
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
    #[error(transparent)]
    Service(#[from] service::BuildError),
    /// An older snapshot than the one in force (see [`crate::snapshot::older`]).
    #[error("{0}")]
    Older(String),
}

impl Compiled {
    /// Compiles a snapshot body built locally (a gateway's, an agent's): it is encoded
    /// once for its hash. An error leaves whatever was in force untouched.
    pub fn build(body: SnapshotBody, version: u64) -> Result<Compiled, CompileError> {
        let (_, hash) = atrium_proto::encode(&body);
        Compiled::build_hashed(body, version, hash)
    }

    /// [`Compiled::build`] of a body whose hash the caller has (it compared it with the
    /// one in force): not encoded again.
    pub fn build_hashed(body: SnapshotBody, version: u64, hash: Vec<u8>) -> Result<Compiled, CompileError> {
        Compiled::assemble(body, atrium_proto::v1::Version { epoch: 0, seq: version }, hash)
    }

    /// Compiles a snapshot received from a control plane, after checking its hash (the
    /// hash it carries is the one kept: the body is not encoded again).
    pub fn from_snapshot(s: &atrium_proto::v1::Snapshot) -> Result<Compiled, CompileError> {
        if atrium_proto::body_hash(&s.body) != s.hash {
            return Err(CompileError::HashMismatch);
        }
        let body = <SnapshotBody as prost::Message>::decode(s.body.clone())?;
        Compiled::assemble(body, s.version.unwrap_or_default(), s.hash.to_vec())
    }

    /// The route table and services of `body`, at `version`, identified by `hash`.
    fn assemble(
        body: SnapshotBody,
        version: atrium_proto::v1::Version,
        hash: Vec<u8>,
    ) -> Result<Compiled, CompileError> {
        let services = service::build(&body.services, &body.children, &body.portal_address)?;
        let table = RouteTable::from_snapshot(&body, |r| RouteState {
            target: services.get(&r.service).cloned(),
            labels: Arc::new(metrics::RouterStats::new(&r.id, &r.service)),
            served: std::sync::atomic::AtomicU64::new(0),
        })?;
        let access = atrium_routing::apim::Access::from_snapshot(&body);
        let jwt = body
            .apis
            .iter()
            .filter_map(|a| match &a.auth {
                Some(atrium_proto::v1::api::Auth::Jwt(j)) => {
                    Some((a.id.clone(), Arc::new(jwt::JwtCheck::new(&a.id, j))))
                }
                _ => None,
            })
            .collect();
        let direct = table.routers().iter().map(direct::Middlewares::of).collect();
        Ok(Compiled { version: version.seq, epoch: version.epoch, hash, table, services, access, jwt, body, direct })
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
    in_force: ArcSwapOption<Compiled>,
    upstreams: Arc<Upstreams>,
    /// Metrics.
    pub metrics: metrics::Metrics,
    access_log: Option<AccessLog>,
    hostname: HeaderValue,
    /// Certificates for TLS entrypoints.
    pub certs: Arc<tls::CertStore>,
    /// The parent side of uplinks, when this data plane has a certificate for them.
    uplinks: std::sync::OnceLock<Arc<crate::uplink::UplinkClient>>,
    /// The client of the control plane's portal (mutual TLS).
    portal: std::sync::OnceLock<Arc<Upstreams>>,
    /// Requests logged so far (Traefik's CLF counter).
    served: std::sync::atomic::AtomicU64,
    /// Plan limit counters, kept across configuration swaps.
    limits: plan_limits::PlanLimits,
    /// API management settings.
    apim: plan_limits::ApimConfig,
    /// JWKS fetched for JWT authentication, kept across swaps.
    jwks: Arc<jwt::JwksCache>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("version", &self.in_force.load().as_ref().map(|r| r.version)).finish()
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
    rt: Arc<Compiled>,
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
    pub fn new(
        upstreams: Upstreams,
        access_log: Option<AccessLog>,
        certs: Arc<tls::CertStore>,
        apim: plan_limits::ApimConfig,
    ) -> Arc<Gateway> {
        let hostname = std::env::var("HOSTNAME")
            .ok()
            .and_then(|h| HeaderValue::from_str(&h).ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| HeaderValue::from_static("atrium"));
        Arc::new(Gateway {
            in_force: ArcSwapOption::empty(),
            upstreams: Arc::new(upstreams),
            metrics: metrics::Metrics::default(),
            access_log,
            hostname,
            certs,
            uplinks: std::sync::OnceLock::new(),
            portal: std::sync::OnceLock::new(),
            served: std::sync::atomic::AtomicU64::new(0),
            limits: plan_limits::PlanLimits::default(),
            apim,
            jwks: Arc::default(),
        })
    }

    /// Enables `X@multicluster` services: requests go to children over QUIC with this
    /// client's certificate.
    pub fn set_uplink_client(&self, client: Arc<crate::uplink::UplinkClient>) {
        client.set_metrics(self.metrics.uplinks.clone());
        let _ = self.uplinks.set(client);
    }

    /// Enables the portal service: requests go to the control plane's portal over mutual
    /// TLS with this certificate (the portal accepts data planes only).
    pub fn set_portal_trust(&self, trust: &crate::trust::NodeTrust) -> Result<(), crate::trust::TrustError> {
        let verifier = trust.server_verifier(crate::pki::Role::ControlPlane, "portal")?;
        let tls = trust.client_config(verifier, &[b"http/1.1"], false)?;
        let _ = self.portal.set(Arc::new(Upstreams::with_tls(self.upstreams.config().clone(), tls)));
        Ok(())
    }

    /// Sends a request for APIPortal `portal` to the control plane's portal at `address`,
    /// naming the portal in [`PORTAL_HEADER`] (always overwritten: a client cannot choose
    /// it).
    async fn to_portal(
        &self,
        portal: &str,
        address: &str,
        out: Outgoing,
        body: Body,
    ) -> Result<Response<Body>, ProxyError> {
        let Some(client) = self.portal.get() else {
            return Err(ProxyError::NoTarget("this data plane has no certificate to reach the portal".into()));
        };
        if address.is_empty() {
            return Err(ProxyError::NoTarget("no portal is served (the control plane runs without --portal)".into()));
        }
        let uri = format!("https://{address}{}", out.path_and_query)
            .parse::<http::Uri>()
            .map_err(|e| ProxyError::NoTarget(format!("portal address {address:?}: {e}")))?;
        let mut req = Request::new(body);
        *req.method_mut() = out.method;
        *req.uri_mut() = uri;
        *req.headers_mut() = out.headers;
        match HeaderValue::from_str(portal) {
            Ok(v) if !portal.is_empty() => drop(req.headers_mut().insert(PORTAL_HEADER, v)),
            _ => drop(req.headers_mut().remove(PORTAL_HEADER)),
        }
        client.send(req, false).await.map_err(ProxyError::Upstream)
    }

    /// What is left of the plan application `app_id` calls API `api` on, as this data
    /// plane counts it, or as Redis does when it holds the counters (requests left in the
    /// rate limit and in the quota; none for a limit the plan does not have). None when the
    /// application has no access to the API, no configuration is loaded, or Redis does not
    /// answer.
    pub async fn plan_remaining(&self, app_id: &str, api: &str) -> Option<(Option<u64>, Option<u64>)> {
        let compiled = self.in_force()?;
        match compiled.access.decide_app(api, app_id) {
            atrium_routing::apim::Verdict::Granted(g) => self.limits.peek(&g).await,
            _ => None,
        }
    }

    /// Whether this data plane's own connection to `child` failed moments ago.
    fn child_down(&self, child: &str) -> bool {
        self.uplinks.get().is_some_and(|u| u.is_down(child))
    }

    /// The configuration in force.
    pub fn in_force(&self) -> Option<Arc<Compiled>> {
        self.in_force.load_full()
    }

    /// Puts a new configuration in force and starts its health checks. Requests in flight
    /// finish on the table they started with.
    ///
    /// What the previous table learnt carries over where the configuration did not change:
    /// health verdicts and ejections of servers, rate-limit and in-flight state.
    pub fn swap(&self, mut rt: Compiled) {
        let load_balancers = |rt: &Compiled| {
            let mut lbs = Vec::new();
            for s in rt.services.values() {
                s.load_balancers(&mut lbs);
            }
            lbs.sort_by(|a, b| a.id.cmp(&b.id));
            lbs.dedup_by(|a, b| Arc::ptr_eq(a, b));
            lbs
        };
        let lbs = load_balancers(&rt);
        if let Some(old) = self.in_force.load_full() {
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
                    Service::Multicluster { name, .. } => Some(name.as_str()),
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
        self.limits.configure(rt.body.redis.as_ref());
        let mut sources = std::collections::HashSet::new();
        for check in rt.jwt.values() {
            for source in check.jwks_sources() {
                if sources.insert(source.cache_key().to_string()) {
                    self.jwks.prefetch(&source);
                }
            }
        }
        self.jwks.retain(&sources);
        let version = rt.version;
        self.in_force.store(Some(Arc::new(rt)));
        self.metrics.table_version.set(version as i64);
        self.metrics.swaps.inc();
        tracing::info!(version, "route table swapped in");
    }

    /// Compiles a snapshot from a control plane and puts it in force, or counts and logs
    /// the refusal (the previous configuration stays): how every data plane takes a
    /// snapshot, over gRPC or from the control plane it is embedded in.
    pub fn swap_snapshot(&self, s: &atrium_proto::v1::Snapshot) -> Result<(), CompileError> {
        match Compiled::from_snapshot(s) {
            Ok(c) => {
                self.swap(c);
                Ok(())
            }
            Err(e) => {
                self.swap_failed(&e);
                Err(e)
            }
        }
    }

    /// Records how many invalid objects the configuration in force left out.
    pub fn objects_left_out(&self, n: usize) {
        self.metrics.objects_left_out.set(n as i64);
    }

    /// Counts and logs a configuration that was refused.
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
        let span =
            (!conn.internal && crate::telemetry::traces(|| req.headers().contains_key("traceparent"))).then(|| {
                let uplink = conn.uplink.as_deref();
                crate::telemetry::request_span(req.headers(), req.method(), req.uri().path(), &conn.entry_point, uplink)
            });
        match span {
            None => Either::Left(self.serve(req, conn, None, routed)),
            Some(span) => {
                use tracing::Instrument;
                Either::Right(Box::pin(self.serve(req, conn, Some(span.clone()), routed).instrument(span)))
            }
        }
    }

    /// Sends to `svc`: straight to a server for a load balancer (the common case: its
    /// future itself, neither boxed nor wrapped), through [`Gateway::dispatch`] for
    /// compositions.
    fn forward<'a>(
        self: &'a Arc<Self>,
        svc: &'a Arc<Service>,
        out: Outgoing,
        body: Body,
        up: &'a Arc<Upstreams>,
    ) -> futures_util::future::Either<
        impl std::future::Future<Output = Forwarded> + Send + 'a,
        futures_util::future::BoxFuture<'a, Forwarded>,
    > {
        match &**svc {
            Service::LoadBalancer(lb) => futures_util::future::Either::Left(send_to_server(lb, out, body, up)),
            _ => futures_util::future::Either::Right(self.dispatch(svc, out, body, up)),
        }
    }

    fn dispatch<'a>(
        self: &'a Arc<Self>,
        svc: &'a Arc<Service>,
        out: Outgoing,
        body: Body,
        up: &'a Arc<Upstreams>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, ProxyError>> + Send + 'a>> {
        Box::pin(async move {
            match &**svc {
                Service::LoadBalancer(lb) => send_to_server(lb, out, body, up).await,
                Service::Weighted { .. } => {
                    let child = svc
                        .pick_child_with(&|c| self.child_down(c))
                        .ok_or_else(|| ProxyError::NoTarget("no weighted child is available".into()))?
                        .clone();
                    self.dispatch(&child, out, body, up).await
                }
                Service::Failover { main, fallback } => {
                    let target = if main.available_with(&|c| self.child_down(c)) { main } else { fallback };
                    self.dispatch(target, out, body, up).await
                }
                Service::Mirroring { main, mirrors, mirror_body, max_body_size, counter } => {
                    let chosen = chosen_mirrors(mirrors, counter);
                    let (main_body, copy) =
                        mirror_bodies(body, chosen.is_empty(), *mirror_body, *max_body_size).await?;
                    if let Some(copy) = copy {
                        self.spawn_mirrors(chosen, &out, copy, up);
                    }
                    self.dispatch(main, out, main_body, up).await
                }
                Service::Unavailable(why) => Err(ProxyError::NoTarget(why.clone())),
                Service::Portal { portal, address } => self.to_portal(portal, address, out, body).await,
                Service::Multicluster { name, children } => self.multicluster(name, children, out, body, up).await,
            }
        })
    }

    /// Sends a copy of the request (`copy` its body) to each chosen mirror in the background;
    /// their responses are read and dropped.
    fn spawn_mirrors(self: &Arc<Self>, chosen: Vec<Arc<Service>>, out: &Outgoing, copy: Bytes, up: &Arc<Upstreams>) {
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

    /// Sends to `name@multicluster`: to a child that exposes the uplink, and (for a request
    /// that may go again) to the next candidate when that child cannot be reached.
    async fn multicluster(
        self: &Arc<Self>,
        name: &str,
        children: &[atrium_proto::v1::Child],
        out: Outgoing,
        body: Body,
        up: &Arc<Upstreams>,
    ) -> Result<Response<Body>, ProxyError> {
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
            crate::telemetry::note("atrium.child", &child.name);
            crate::telemetry::note("atrium.uplink", uplink);
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

/// The mirrors this request goes to: each one for its percentage of requests, by the
/// mirroring service's request counter.
#[inline]
fn chosen_mirrors(mirrors: &[(Arc<Service>, u32)], counter: &std::sync::atomic::AtomicU64) -> Vec<Arc<Service>> {
    let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    mirrors.iter().filter(|(_, pct)| (n % 100) < u64::from(*pct)).map(|(s, _)| s.clone()).collect()
}

/// The body for the main service and, unless no mirror is chosen (`none_chosen`), the body
/// the mirrors get: the whole body (read up to `max_body_size`, negative for no limit) when
/// `mirror_body` says so, else an empty one.
async fn mirror_bodies(
    body: Body,
    none_chosen: bool,
    mirror_body: bool,
    max_body_size: i64,
) -> Result<(Body, Option<Bytes>), ProxyError> {
    Ok(if none_chosen {
        (body, None)
    } else if http_body::Body::is_end_stream(&body) {
        (body, Some(Bytes::new()))
    } else if mirror_body {
        let limit = if max_body_size < 0 { usize::MAX } else { max_body_size as usize };
        match body::collect_limited(body, limit).await {
            Ok(b) => (body::full(b.clone()), Some(b)),
            Err(_) => return Err(ProxyError::NoTarget("request body too large to mirror".into())),
        }
    } else {
        (body, Some(Bytes::new()))
    })
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
