//! The general lane: every request the direct lane does not take (HTTP/2, TLS, bodies,
//! middlewares, rules that read headers). One request goes:
//! 1. [`Inbound::read`]: Host checks, the path sanitized, the entrypoint's forwarding headers;
//! 2. routing ([`atrium_routing::decide`], unless the direct lane routed it already);
//! 3. the request phase of the router's middlewares ([`request_phase`]), which may answer by
//!    itself, delay the request (rate limit), or leave a [`Plan`] for what follows;
//! 4. the body (buffered when a middleware says), the outgoing head ([`outgoing`]), the
//!    service (retried when a middleware says);
//! 5. the response phase ([`Gateway::finish`]), in reverse middleware order; then the access
//!    log and metrics ([`Gateway::record`]).
//!
//! Each step is a function of its own; only the steps that wait are async, so the request's
//! future stays small.

// A step that answers early returns the answer as its error: it is the response itself,
// moved once to the client, not an error value passed around.
#![allow(clippy::result_large_err)]

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use atrium_routing::Decision;
use atrium_routing::middleware::compress::Compression;
use atrium_routing::middleware::headers::{HeaderRules, RequestAction};
use atrium_routing::middleware::limits::{Admission, InFlightGuard, RateLimiter};
use atrium_routing::middleware::path::{RewriteError, UrlPath};
use atrium_routing::middleware::retry::RetryPolicy;
use atrium_routing::middleware::{Action, Buffering, CompiledMiddleware, redirect};
use atrium_routing::request::RequestView;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;

use super::access_log;
use super::apim::ApiStep;
use super::{
    Compiled, ConnInfo, Gateway, Labels, Outgoing, ProxyError, Route, Routed, error_response, failure, forward,
    host_problem,
};
use crate::body::{self, Body};
use crate::exchange::UpstreamError;
use crate::service::Service;

/// What the access log needs from a request, kept only when there is an access log.
struct Seen {
    method: http::Method,
    uri: http::Uri,
    referer: String,
    agent: String,
}

impl Seen {
    fn of(req: &Request<Body>) -> Seen {
        let h = |n: header::HeaderName| req.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
        Seen {
            method: req.method().clone(),
            uri: req.uri().clone(),
            referer: h(header::REFERER),
            agent: h(header::USER_AGENT),
        }
    }
}

/// A request's routing inputs, borrowed from its target and Host header.
struct Inbound<'a> {
    /// The host the client asked for: the target's authority when it has one (HTTP/2,
    /// absolute form), else its Host header.
    host_raw: &'a str,
    /// The sanitized path every step sees and the upstream gets.
    path: Cow<'a, str>,
    query: Option<&'a str>,
    client_ip: Option<IpAddr>,
    /// The protocol a switch asks for (WebSocket).
    upgrade: Option<HeaderValue>,
}

impl<'a> Inbound<'a> {
    /// Checks the Host headers and the path (400 for what cannot be made safe), and sets
    /// the entrypoint's forwarding headers, before routing and middlewares (which see them
    /// and may override them), as Traefik sets them.
    fn read(
        gw: &Gateway,
        parts: &mut Parts,
        uri: &'a http::Uri,
        host_header: Option<&'a HeaderValue>,
        conn: &ConnInfo,
    ) -> Result<Inbound<'a>, Response<Body>> {
        if let Some(why) = host_problem(parts.version, uri.authority(), &parts.headers) {
            return Err(body::text(StatusCode::BAD_REQUEST, why));
        }
        // A Uri clone shares its bytes, and so does a header value's: borrowing the host,
        // path and query from them costs no copy.
        let host_raw: &str = uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| host_header.and_then(|h| h.to_str().ok()))
            .unwrap_or_default();
        // Dot segments gone, escapes normalised; see `path_security`.
        let path = atrium_routing::path_security::sanitize(uri.path())
            .map_err(|e| body::text(StatusCode::BAD_REQUEST, &format!("400 Bad Request: {e}")))?;
        let upgrade = crate::hop::upgrade_protocol(&parts.headers);
        let client = forward::ClientSide {
            ip: conn.ip_value.as_ref(),
            proto: match (upgrade.is_some(), conn.tls) {
                (true, true) => "wss",
                (true, false) => "ws",
                (false, true) => "https",
                (false, false) => "http",
            },
            host: match uri.authority() {
                None => host_header.cloned(),
                Some(_) => HeaderValue::from_str(host_raw).ok().filter(|h| !h.is_empty()),
            },
            server: &gw.hostname,
        };
        forward::set_forwarded(&mut parts.headers, &client);
        Ok(Inbound { host_raw, path, query: uri.query(), client_ip: Some(conn.peer.ip().to_canonical()), upgrade })
    }

    /// The router's position in the table, or the answer when none takes the request.
    fn route(&self, rt: &Compiled, parts: &Parts, conn: &ConnInfo) -> Result<usize, (Response<Body>, Option<Labels>)> {
        let view = RequestView::with_client_ip(
            parts.method.as_str(),
            self.host_raw,
            &self.path,
            self.query,
            &parts.headers,
            self.client_ip,
        );
        let req = atrium_routing::Request {
            entry_point: Some(&conn.entry_point),
            uplink: conn.uplink.as_deref(),
            path: &self.path,
            view,
        };
        match atrium_routing::decide(&rt.table, &req) {
            Decision::Route(i) => Ok(i),
            Decision::NotFound => Err((body::text(StatusCode::NOT_FOUND, "404 page not found"), None)),
            Decision::Refused { router, answer } => {
                let r = &rt.table.routers()[router];
                r.state.served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err((body::answer(answer), Some(r.state.labels.clone())))
            }
        }
    }

    /// The path and query as redirects see them: the sanitized path.
    fn redirect_pq<'p>(&'p self, parts: &'p Parts) -> Cow<'p, str> {
        match (&self.path, parts.uri.path_and_query()) {
            (Cow::Borrowed(_), Some(pq)) => Cow::Borrowed(pq.as_str()),
            _ => Cow::Owned(match self.query {
                Some(q) => format!("{}?{q}", self.path),
                None => self.path.to_string(),
            }),
        }
    }
}

/// What the request phase of the middlewares leaves for the rest of the request.
#[derive(Default)]
struct Plan<'r> {
    /// Headers middlewares, for the response phase, with whether the request was TLS.
    after: Vec<(&'r HeaderRules, bool)>,
    /// In-flight slots, held until the response body is finished.
    guards: Vec<InFlightGuard>,
    /// A headers middleware set `X-Forwarded-For` itself.
    drop_xff: bool,
    /// The Host a headers middleware says the upstream sees.
    host_override: Option<String>,
    buffering: Option<&'r Buffering>,
    retry: Option<&'r RetryPolicy>,
    compress: Option<&'r Compression>,
    /// The path the upstream gets, when sanitizing or a rewrite changed it.
    url: Option<UrlPath>,
    /// The query parameter that carried an API key, left out upstream.
    strip_query: Option<String>,
}

/// Where the request phase stopped.
enum Step {
    /// Every middleware ran.
    Done,
    /// A middleware answered.
    Answer(Response<Body>),
    /// A rate limit delays the request; the phase goes on at the middleware after this one.
    Delay(Duration, usize),
}

/// Runs the request phase of `router`'s middlewares from the `from`-th on.
fn request_phase<'r>(
    router: &'r Route,
    from: usize,
    parts: &mut Parts,
    inbound: &Inbound<'_>,
    conn: &ConnInfo,
    plan: &mut Plan<'r>,
) -> Step {
    let scheme = if conn.tls { "https" } else { "http" };
    let canon_host = atrium_routing::request::canonical_host(inbound.host_raw);
    for (i, m) in router.middlewares.iter().enumerate().skip(from) {
        let early = match &m.action {
            Action::Path => {
                let url = plan.url.get_or_insert_with(|| UrlPath::from_escaped(&inbound.path));
                rewrite_path(m, url, parts)
            }
            Action::Headers(h) => match h.on_request(&parts.method, &mut parts.headers, inbound.host_raw, conn.tls) {
                RequestAction::Respond(r) => Some(body::answer(r)),
                RequestAction::Continue { drop_xff, host, ssl } => {
                    plan.drop_xff |= drop_xff;
                    if host.is_some() {
                        plan.host_override = host;
                    }
                    plan.after.push((h, ssl));
                    None
                }
            },
            Action::RedirectScheme { scheme: to, port, permanent } => {
                redirect_answer(parts, inbound, scheme, *permanent, |u| redirect::scheme_target(u, to, port.as_deref()))
            }
            Action::RedirectRegex { regex, replacement, permanent } => {
                redirect_answer(parts, inbound, scheme, *permanent, |u| redirect::regex_target(u, regex, replacement))
            }
            Action::IpAllow(a) => (!a.allows(inbound.client_ip, &parts.headers))
                .then(|| body::text(a.reject_status, a.reject_status.canonical_reason().unwrap_or("Forbidden"))),
            Action::RateLimit(rl) => match rate_limit(rl, i, parts, inbound, &canon_host) {
                Step::Done => None,
                step => return step,
            },
            Action::InFlight(f) => {
                let key = f.source.key(inbound.client_ip, &parts.headers, &canon_host);
                match f.acquire(&key) {
                    Some(g) => {
                        plan.guards.push(g);
                        None
                    }
                    None => Some(body::text(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests")),
                }
            }
            Action::Buffering(b) => {
                plan.buffering = Some(b);
                None
            }
            Action::BasicAuth(b) => b.check(&mut parts.headers).map(body::answer),
            Action::Compress(c) => {
                plan.compress = Some(c);
                None
            }
            Action::Retry(p) => {
                plan.retry = Some(p);
                None
            }
            // Checked right after routing.
            Action::EncodedCharacters(_) => None,
        };
        if let Some(r) = early {
            return Step::Answer(r);
        }
    }
    Step::Done
}

/// Runs a path middleware on `url`, the path the upstream gets: a header it sets goes on the
/// request; a rewrite that fails answers 400 or 500.
#[inline]
fn rewrite_path(m: &CompiledMiddleware, url: &mut UrlPath, parts: &mut Parts) -> Option<Response<Body>> {
    match rewrite(m, url) {
        Ok(Some((name, value))) => {
            parts.headers.append(name, value);
            None
        }
        Ok(None) => None,
        Err(answer) => Some(answer),
    }
}

/// Runs a path middleware on `url` (both lanes): the header the rewrite sets
/// (`X-Forwarded-Prefix`, `X-Replaced-Path`) when its value is one, or the answer to a
/// rewrite that fails (400 or 500).
pub(super) fn rewrite(
    m: &CompiledMiddleware,
    url: &mut UrlPath,
) -> Result<Option<(&'static str, HeaderValue)>, Response<Body>> {
    match m.rewrite_path(url) {
        Ok(Some((name, value))) => Ok(HeaderValue::from_str(&value).ok().map(|v| (name, v))),
        Ok(None) => Ok(None),
        Err(RewriteError::BadRequest(e)) => Err(body::text(StatusCode::BAD_REQUEST, &e)),
        Err(RewriteError::Internal(e)) => Err(body::text(StatusCode::INTERNAL_SERVER_ERROR, &e)),
    }
}

/// The path and query the upstream gets after a rewrite to `url` (both lanes): 400 when the
/// rewritten path climbs with a dot segment or is not a URI path.
pub(super) fn rewritten_target(
    router: &Route,
    url: &UrlPath,
    query: Option<&str>,
) -> Result<http::uri::PathAndQuery, Response<Body>> {
    let path = url.request_path();
    // A rewrite must not make a path that climbs out of what was routed.
    if atrium_routing::path_security::has_dot_segment(path) {
        tracing::debug!(router = %router.id, path = %path, "rewritten path has a dot segment: refused");
        return Err(body::text(StatusCode::BAD_REQUEST, "rewritten path has a dot segment"));
    }
    path_and_query(path, query)
}

/// `path?query` as a request target, 400 when it is not one.
fn path_and_query(path: &str, query: Option<&str>) -> Result<http::uri::PathAndQuery, Response<Body>> {
    let mut pq = path.to_string();
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    http::uri::PathAndQuery::try_from(pq)
        .map_err(|_| body::text(StatusCode::BAD_REQUEST, "rewritten path is not a valid URI path"))
}

/// Runs a redirect middleware: the redirect to where `target` sends the request's URL (as
/// redirects see it, on `scheme`), or `None` when it stays.
#[inline]
fn redirect_answer(
    parts: &Parts,
    inbound: &Inbound<'_>,
    scheme: &str,
    permanent: bool,
    target: impl FnOnce(&redirect::RequestUrl<'_>) -> Option<String>,
) -> Option<Response<Body>> {
    let pq = inbound.redirect_pq(parts);
    let u = redirect::RequestUrl { scheme, host: inbound.host_raw, path_and_query: &pq };
    target(&u).map(|loc| redirect_to(&parts.method, permanent, &loc))
}

/// Runs a rate limit, the `i`-th middleware: [`Step::Done`] when the request goes on now, a
/// delay after which the phase goes on at the next middleware, or 429 with `Retry-After`.
#[inline]
fn rate_limit(rl: &RateLimiter, i: usize, parts: &Parts, inbound: &Inbound<'_>, canon_host: &str) -> Step {
    let key = rl.source.key(inbound.client_ip, &parts.headers, canon_host);
    match rl.admit(&key, Instant::now()) {
        Admission::Now => Step::Done,
        Admission::After(d) => Step::Delay(d, i + 1),
        Admission::Refuse(d) => {
            let mut r = body::text(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
            let secs = d.as_secs_f64().ceil().max(1.0) as u64;
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            Step::Answer(r)
        }
    }
}

fn redirect_to(method: &http::Method, permanent: bool, location: &str) -> Response<Body> {
    let status = redirect::redirect_status(method, permanent);
    let mut r = body::text(status, status.canonical_reason().unwrap_or("Redirect"));
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// 413 for a request body past a limit. (The rest of that body is never read: the server
/// closes the connection after the answer and says so, see `proxy::server`.)
fn too_large() -> Response<Body> {
    body::text(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large")
}

/// A body read whole goes on with `Content-Length` instead of chunked framing.
fn with_known_length(headers: &mut http::HeaderMap, whole: Body) -> Body {
    headers.remove(header::TRANSFER_ENCODING);
    if let Some(n) = http_body::Body::size_hint(&whole).exact() {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    whole
}

/// The request body read whole, as a buffering middleware asks: 413 past its limit,
/// spilled to disk past its memory share.
async fn buffer_request(b: &Buffering, headers: &mut http::HeaderMap, incoming: Body) -> Result<Body, Response<Body>> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if b.max_request > 0 && declared.is_some_and(|n| n > b.max_request) {
        return Err(too_large());
    }
    match body::spool(incoming, b.max_request, b.mem_request).await {
        Ok(whole) => Ok(with_known_length(headers, whole)),
        Err(body::CollectError::TooLarge) => Err(too_large()),
        Err(body::CollectError::Body(e)) => {
            tracing::debug!(error = %e, "request body failed while it was buffered");
            Err(body::text(StatusCode::BAD_REQUEST, "Bad Request"))
        }
        Err(body::CollectError::Spool(e)) => {
            tracing::error!(error = %e, "cannot spool a request body to disk");
            Err(body::text(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"))
        }
    }
}

/// The head the upstream gets: hop-by-hop headers gone, `X-Forwarded-For` added, the trace
/// context, the Host it routed by (or a headers middleware's), the rewritten path.
fn outgoing(
    parts: &mut Parts,
    inbound: &Inbound<'_>,
    plan: &Plan<'_>,
    router: &Route,
    conn: &ConnInfo,
) -> Result<Outgoing, Response<Body>> {
    let mut headers = std::mem::take(&mut parts.headers);
    crate::hop::strip_hop_by_hop(&mut headers, inbound.upgrade.clone());
    forward::add_forwarded_for(&mut headers, conn.ip_value.as_ref(), plan.drop_xff);
    if crate::telemetry::enabled() {
        crate::telemetry::inject(&mut headers);
    }
    if let Some(h) = &plan.host_override {
        if let Ok(v) = HeaderValue::from_str(h) {
            headers.insert(header::HOST, v);
        }
    } else if !inbound.host_raw.is_empty() && (parts.uri.authority().is_some() || !headers.contains_key(header::HOST)) {
        // The host the request was routed by is the one the upstream sees: the target's
        // authority when it has one (HTTP/2's :authority, an absolute-form target, which
        // RFC 9112 says wins over Host), else the Host header.
        if let Ok(v) = HeaderValue::from_str(inbound.host_raw) {
            headers.insert(header::HOST, v);
        }
    }
    let path_and_query = match (&plan.url, &plan.strip_query) {
        (None, None) => {
            parts.uri.path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"))
        }
        (url, strip) => {
            let query = match strip {
                Some(param) => super::apim::without_param(inbound.query, param).map(Cow::Owned),
                None => inbound.query.map(Cow::Borrowed),
            };
            match url {
                Some(u) => rewritten_target(router, u, query.as_deref())?,
                None => path_and_query(&inbound.path, query.as_deref())?,
            }
        }
    };
    Ok(Outgoing {
        method: parts.method.clone(),
        path_and_query,
        headers,
        version: parts.version,
        client: conn.relayed(),
    })
}

impl Gateway {
    /// [`Gateway::handle`]'s work, from routing to the response; then the access log and
    /// the metrics.
    pub(super) async fn serve(
        self: &Arc<Self>,
        req: Request<Body>,
        conn: &ConnInfo,
        span: Option<tracing::Span>,
        routed: Option<Routed>,
    ) -> Response<Body> {
        let start = Instant::now();
        let version = req.version();
        let seen = self.access_log.map(|_| Seen::of(&req));
        let (mut resp, labels) = self.respond(req, conn, routed).await;
        // Answer in the client's protocol version, whatever the upstream spoke.
        *resp.version_mut() = version;
        self.record(&resp, labels.as_deref(), span.as_ref(), seen, start, conn);
        resp
    }

    /// Routes the request, runs its middlewares and sends it: the response, and the router
    /// and service it went to (for metrics).
    async fn respond(
        self: &Arc<Self>,
        req: Request<Body>,
        conn: &ConnInfo,
        routed: Option<Routed>,
    ) -> (Response<Body>, Option<Labels>) {
        let (rt, routed_to) = match routed {
            Some(Routed { rt, router }) => (rt, Some(router)),
            None => match self.in_force.load_full() {
                Some(rt) => (rt, None),
                None => return (body::text(StatusCode::SERVICE_UNAVAILABLE, "no configuration loaded yet"), None),
            },
        };
        let (mut parts, incoming) = req.into_parts();
        let uri = parts.uri.clone();
        let host_header = if uri.authority().is_none() { parts.headers.get(header::HOST).cloned() } else { None };
        let inbound = match Inbound::read(self, &mut parts, &uri, host_header.as_ref(), conn) {
            Ok(i) => i,
            Err(r) => return (r, None),
        };
        let rank = match routed_to.map_or_else(|| inbound.route(&rt, &parts, conn), Ok) {
            Ok(i) => i,
            Err(answer) => return answer,
        };
        let router: &Route = &rt.table.routers()[rank];
        let labels = Some(router.state.labels.clone());
        router.state.served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Only middlewares read these (CORS, compress).
        let with_middlewares = !router.middlewares.is_empty();
        let origin = (with_middlewares || router.api.is_some())
            .then(|| parts.headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()).map(str::to_string))
            .flatten();
        let accept_encoding = with_middlewares.then(|| parts.headers.get(header::ACCEPT_ENCODING).cloned()).flatten();
        // Built on the first path rewrite, or when sanitizing changed the path: most
        // routers forward the path as it came.
        let mut plan = Plan {
            url: matches!(inbound.path, Cow::Owned(_)).then(|| UrlPath::from_escaped(&inbound.path)),
            ..Plan::default()
        };
        let mut from = 0;
        loop {
            match request_phase(router, from, &mut parts, &inbound, conn, &mut plan) {
                Step::Done => break,
                Step::Answer(r) => return (r, labels),
                Step::Delay(d, next) => {
                    tokio::time::sleep(d).await;
                    from = next;
                }
            }
        }
        // API management, after the middlewares: the API's CORS first (a preflight is
        // answered before any key is asked for), then the key and the plan; refusals carry
        // the CORS headers of the API and of the middlewares.
        let mut plan_left = None;
        if let Some(api) = router.api.as_deref() {
            crate::telemetry::note("atrium.api", api);
            if let Some(cors) = rt.access.cors(api) {
                match cors.on_request(&parts.method, &mut parts.headers, inbound.host_raw, conn.tls) {
                    RequestAction::Respond(a) => {
                        let mut r = body::answer(a);
                        super::apim::echo_authorization(&parts.headers, r.headers_mut());
                        return (r, labels);
                    }
                    RequestAction::Continue { ssl, .. } => plan.after.insert(0, (cors, ssl)),
                }
            }
            // Boxed: API management's future (JWKS fetches, Redis) is large, and inlined it
            // would make every request's future larger to move.
            let (outcome, strip) = match Box::pin(self.api_access(&rt, api, &mut parts, inbound.query)).await {
                ApiStep::Go(o, strip) => (o, strip),
                ApiStep::Wait(d, o, strip) => {
                    tokio::time::sleep(d).await;
                    (o, strip)
                }
                ApiStep::Answer(mut r) => {
                    for (h, ssl) in plan.after.iter().rev() {
                        h.on_response(r.headers_mut(), origin.as_deref(), *ssl);
                    }
                    return (r, labels);
                }
            };
            plan.strip_query = strip;
            plan_left = Some(outcome);
        }
        let req_body = match plan.buffering {
            Some(b) => match buffer_request(b, &mut parts.headers, incoming).await {
                Ok(whole) => whole,
                Err(r) => return (r, labels),
            },
            None => incoming,
        };
        let client_upgrade =
            inbound.upgrade.as_ref().and_then(|_| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
        let out = match outgoing(&mut parts, &inbound, &plan, router, conn) {
            Ok(o) => o,
            Err(r) => return (r, labels),
        };
        let Some(svc) = router.state.target.clone() else {
            return (body::text(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"), labels);
        };
        let resp = match self.send_retrying(&svc, out, req_body, plan.retry, router, conn).await {
            Ok(r) => r,
            Err(r) => return (r, labels),
        };
        let mut resp = self.finish(resp, client_upgrade, &plan, router, &parts.method, origin, accept_encoding).await;
        if let Some(o) = &plan_left {
            super::apim::remaining_headers(resp.headers_mut(), o);
        }
        (resp, labels)
    }

    /// Sends to the service; with a retry middleware, again on what it retries, the body
    /// kept for that (413 past the retry's limit).
    async fn send_retrying(
        self: &Arc<Self>,
        svc: &Arc<Service>,
        out: Outgoing,
        mut req_body: Body,
        retry: Option<&RetryPolicy>,
        router: &Route,
        conn: &ConnInfo,
    ) -> Result<Response<Body>, Response<Body>> {
        let Some(p) = retry.filter(|p| p.allows(&out.method)) else {
            return self.forward(svc, out, req_body, &conn.upstreams).await.map_err(|e| failure(router, &e));
        };
        let bytes = if http_body::Body::is_end_stream(&req_body) {
            Bytes::new()
        } else {
            let limit = p.max_body.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
            match body::collect_limited(req_body, limit).await {
                Ok(b) => b,
                Err(body::CollectError::TooLarge) => return Err(too_large()),
                Err(e) => {
                    tracing::debug!(error = ?e, "request body failed while it was read for retry");
                    return Err(body::text(StatusCode::BAD_REQUEST, "Bad Request"));
                }
            }
        };
        req_body = body::full(bytes.clone());
        let mut result = self.forward(svc, out.clone(), req_body, &conn.upstreams).await;
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
            result = self.forward(svc, out.clone(), body::full(bytes.clone()), &conn.upstreams).await;
        }
        result.map_err(|e| failure(router, &e))
    }

    /// The response phase: a protocol switch joined to the client, hop-by-hop headers
    /// gone, the body buffered, headers middlewares in reverse order, gzip, in-flight slots
    /// held until the body ends.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        mut resp: Response<Body>,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        plan: &Plan<'_>,
        router: &Route,
        method: &http::Method,
        origin: Option<String>,
        accept_encoding: Option<HeaderValue>,
    ) -> Response<Body> {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if !join_upgrade(client_upgrade, &mut resp) {
                tracing::warn!(router = %router.id, "a 101 answer without a connection to switch; refused");
                return body::text(StatusCode::BAD_GATEWAY, "Bad Gateway");
            }
        } else {
            crate::hop::strip_hop_by_hop(resp.headers_mut(), None);
        }
        let (mut rparts, mut out_body) = resp.into_parts();
        if let Some(b) = plan.buffering.filter(|_| rparts.status != StatusCode::SWITCHING_PROTOCOLS) {
            match body::spool(out_body, b.max_response, b.mem_response).await {
                Ok(whole) => out_body = with_known_length(&mut rparts.headers, whole),
                Err(e) => {
                    if let body::CollectError::Spool(e) = &e {
                        tracing::error!(error = %e, "cannot spool a response body to disk");
                    }
                    return body::text(StatusCode::INTERNAL_SERVER_ERROR, "response body over the buffering limit");
                }
            }
        }
        for (h, ssl) in plan.after.iter().rev() {
            h.on_response(&mut rparts.headers, origin.as_deref(), *ssl);
        }
        if let Some(c) = plan.compress {
            if c.applies(method, accept_encoding.as_ref(), rparts.status, &rparts.headers) {
                out_body = crate::gzip::wrap(c, &mut rparts.headers, out_body);
            }
        }
        Response::from_parts(rparts, out_body)
    }

    /// The access log line and the metrics of one request.
    fn record(
        &self,
        resp: &Response<Body>,
        labels: Option<&crate::metrics::RouterStats>,
        span: Option<&tracing::Span>,
        seen: Option<Seen>,
        start: Instant,
        conn: &ConnInfo,
    ) {
        let code = resp.status().as_u16();
        let (router, service): (&str, &str) = labels.map_or(("", ""), |l| (&l.router, &l.service));
        if let Some(span) = span {
            crate::telemetry::record_outcome(span, code, router, service);
        }
        if let (Some(fmt), Some(seen)) = (self.access_log, seen) {
            let entry = access_log::Entry {
                method: &seen.method,
                uri: &seen.uri,
                version: resp.version(),
                referer: &seen.referer,
                agent: &seen.agent,
                client: conn.peer.ip().to_canonical(),
                entry_point: &conn.entry_point,
                status: code,
                length: resp.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).unwrap_or("-"),
                count: self.served.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
                router,
                service,
                ms: start.elapsed().as_secs_f64() * 1000.0,
            };
            println!("{}", access_log::line(fmt, &entry));
        }
        self.metrics.record(labels, code, start.elapsed().as_secs_f64());
    }
}

/// Joins the upstream's switched connection to the client's; false when either side has
/// none to switch.
fn join_upgrade(client_upgrade: Option<hyper::upgrade::OnUpgrade>, resp: &mut Response<Body>) -> bool {
    match (client_upgrade, crate::h1::client::UpgradeSlot::take(resp)) {
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
            true
        }
        _ => false,
    }
}
