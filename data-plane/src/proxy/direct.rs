//! The direct lane: a bodiless HTTP/1.1 request to a router whose middlewares only rewrite
//! the path or set custom headers (see [`Middlewares`]), sent to a plain HTTP/1.1 server,
//! goes through as bytes. A route of an API takes it too when its
//! callers authenticate with a key in `Authorization: Bearer` (the default), the API has no
//! CORS rules, and the request carries such a header: the key check, the operation check
//! and the plan run here as in the general lane, the key header is left out of the
//! forwarded head, and the plan headers are set on the answer.
//!
//! The request head is written from the client's head line by line, with the forwarding
//! and hop-by-hop rules of [`super::forward`] applied on the way; the response head comes
//! back as its lines, minus the hop-by-hop ones. No header map is built on either side,
//! which is most of what a proxied request costs in user space. Everything else (header
//! matchers in the table, middlewares, other services, HTTPS or h2c servers, tracing, an
//! access log, an absolute-form target) takes the general lane, [`Gateway::handle`], with
//! the same result on the wire but for header order and the case of header names.

use std::sync::Arc;
use std::time::Instant;

use http::{Method, Response};

use super::{Compiled, ConnInfo, Gateway, ProxyError, Routed};
use crate::body::Body;
use crate::h1::Passed;
use crate::h1::client::{BodyFraming, Outbound, ParsedHead, Upgraded};
use crate::h1::server::{Handled, Head, Reply};
use crate::service::{LoadBalancer, Service};
use atrium_routing::apim::{ApiAuth, KeySource};
use atrium_routing::middleware::Action;
use atrium_routing::middleware::path::UrlPath;
use atrium_routing::request::RequestView;
use atrium_routing::table::RouteEntry;
use http::{HeaderName, HeaderValue};

/// A client's head on its way to a server, with what the proxy adds.
struct RawRequest<'a> {
    head: &'a Head,
    client: super::forward::RawClient<'a>,
    pass_host: bool,
    start: Instant,
    /// The path and query after path middlewares, when they changed it.
    target: Option<http::uri::PathAndQuery>,
    /// What middlewares and API management change in the head.
    edits: super::forward::HeadEdits<'a>,
}

impl Outbound for RawRequest<'_> {
    type Head = Passed;
    type Reply = Passed;

    fn method(&self) -> &Method {
        self.head.method()
    }

    fn encode(&self, out: &mut Vec<u8>, authority: &str, _: BodyFraming) {
        let target = match &self.target {
            Some(t) => t.as_str(),
            None => self.head.uri().path_and_query().map_or("/", |p| p.as_str()),
        };
        super::forward::encode_request_raw(
            out,
            self.head.method(),
            target.as_bytes(),
            self.head.headers(),
            &self.client,
            self.pass_host,
            authority.as_bytes(),
            &self.edits,
        );
    }

    fn started(&self) -> Option<Instant> {
        Some(self.start)
    }

    fn head(parsed: &ParsedHead<'_>) -> Result<Passed, crate::h1::client::HeadError> {
        Ok(Passed::from_head(parsed))
    }

    fn reply(mut head: Passed, body: Body, _: Option<Upgraded>) -> Passed {
        head.body = body;
        head
    }
}

/// The API key in a head's first `Authorization` header, read as the general lane reads it.
fn bearer_key(head: &Head) -> Option<&str> {
    let (_, value) = head.headers().find(|(n, _)| n.eq_ignore_ascii_case(b"authorization"))?;
    atrium_routing::apim::credential(value, Some("Bearer"))
}

/// Sets what is left of the plan on a passed answer.
fn plan_headers(passed: &mut Passed, o: &atrium_routing::apim::Outcome) {
    let mut buf = itoa::Buffer::new();
    if let Some(n) = o.rate_remaining {
        passed.set_header(b"x-ratelimit-remaining", buf.format(n).as_bytes());
    }
    if let Some(n) = o.quota_remaining {
        passed.set_header(b"x-quota-remaining", buf.format(n).as_bytes());
    }
}

/// What the direct lane makes of a router's middlewares, decided once per route table (see
/// [`Compiled::direct`]).
#[derive(Debug)]
pub(crate) enum Middlewares {
    /// It has none.
    None,
    /// Path rewrites and custom headers only: applied to the raw heads.
    Edits(Box<Edits>),
    /// Anything else (or a custom header the proxy manages itself): the general lane.
    General,
}

/// The effect of a router's path and custom-header middlewares, as the general lane would
/// have it after all of them ran.
#[derive(Debug, Default)]
pub(crate) struct Edits {
    /// A path middleware is among them (they run in router order at each request).
    rewrites: bool,
    /// Request headers set (`Some`) or removed (`None`), the last middleware's word on each.
    request: Vec<(HeaderName, Option<HeaderValue>)>,
    /// Response headers, likewise (headers middlewares answer in reverse order).
    response: Vec<(HeaderName, Option<HeaderValue>)>,
}

impl Middlewares {
    /// The plan for `router`.
    pub(crate) fn of<X>(router: &RouteEntry<X>) -> Middlewares {
        if router.middlewares.is_empty() {
            return Middlewares::None;
        }
        let mut edits = Edits::default();
        let mut answers = Vec::new();
        for m in &router.middlewares {
            match &m.action {
                Action::Path => edits.rewrites = true,
                Action::Headers(h) => match h.custom_only() {
                    Some((request, response))
                        if request.keys().all(|n| passes_request(n)) && response.keys().all(|n| passes_response(n)) =>
                    {
                        fold(&mut edits.request, request);
                        answers.push(response);
                    }
                    _ => return Middlewares::General,
                },
                _ => return Middlewares::General,
            }
        }
        for response in answers.into_iter().rev() {
            fold(&mut edits.response, response);
        }
        Middlewares::Edits(Box::new(edits))
    }
}

/// Adds a headers middleware's custom headers to `ops`, as it applies them one by one: an
/// empty value removes, a name or value that is not one does nothing, the last word on a
/// name wins.
fn fold(ops: &mut Vec<(HeaderName, Option<HeaderValue>)>, headers: &atrium_routing::middleware::headers::Custom) {
    for (name, value) in headers {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else { continue };
        let value = match value.as_str() {
            "" => None,
            v => match HeaderValue::from_str(v) {
                Ok(v) => Some(v),
                Err(_) => continue,
            },
        };
        ops.retain(|(n, _)| *n != name);
        ops.push((name, value));
    }
}

/// Applies header edits to an answer the proxy made (a refusal), as a headers middleware's
/// answer phase does.
fn edit_map(h: &mut http::HeaderMap, ops: &[(HeaderName, Option<HeaderValue>)]) {
    for (name, value) in ops {
        match value {
            Some(v) => {
                h.insert(name.clone(), v.clone());
            }
            None => {
                h.remove(name);
            }
        }
    }
}

/// Whether a custom request header can be set on raw lines with the general lane's result:
/// not one the proxy sets or reads itself (Host, the managed X-headers, `X-Forwarded-Prefix`
/// among them, hop-by-hop, framing, its own, `X-Replaced-Path`, the API key).
fn passes_request(name: &str) -> bool {
    let n = name.as_bytes();
    !(crate::hop::is_hop_by_hop(n)
        || crate::hop::is_forwarding(n)
        || super::forward::is_internal(n)
        || ["host", "content-length", "authorization", "x-replaced-path"].iter().any(|h| name.eq_ignore_ascii_case(h)))
}

/// Whether a custom response header can be set on a passed answer's lines: not one that
/// frames it (hop-by-hop, `Content-Length`) or that the server writes itself (`Date`).
fn passes_response(name: &str) -> bool {
    !(crate::hop::is_hop_by_hop(name.as_bytes())
        || name.eq_ignore_ascii_case("content-length")
        || name.eq_ignore_ascii_case("date"))
}

/// The lane a request from the fast path takes (see [`Gateway::serve_head`]).
enum Lane {
    Direct(Arc<Compiled>, usize, Arc<LoadBalancer>),
    General(Option<Routed>),
}

/// An empty header map, for routing tables that match on no header.
static NO_HEADERS: std::sync::LazyLock<http::HeaderMap> = std::sync::LazyLock::new(http::HeaderMap::new);

impl Gateway {
    /// Serves a request head from the HTTP/1.1 fast path: through the direct lane when it
    /// can take it, else as a request through [`Gateway::handle`]. The lane is chosen
    /// before either future is made, so neither is nested in the other.
    pub fn serve_head<'a>(
        self: &'a Arc<Self>,
        head: Head,
        conn: &'a ConnInfo,
    ) -> Handled<impl Future<Output = Reply> + Send + 'a, impl Future<Output = Response<Body>> + Send + 'a> {
        match self.direct_route(&head, conn) {
            Lane::Direct(rt, router, lb) => Handled::Reply { fut: self.direct(rt, router, lb, head, conn) },
            // Boxed: the general lane's future is large, and inline it would be part of
            // every direct-lane request's future too.
            Lane::General(routed) => Handled::request(head, |req| Box::pin(self.handle_routed(req, conn, routed))),
        }
    }

    /// Which lane a request takes: the direct one with its configuration, router (its
    /// position) and load balancer, or the general one, with its router when it was found
    /// here (so that it is not looked up twice).
    fn direct_route(&self, head: &Head, conn: &ConnInfo) -> Lane {
        if self.access_log.is_some()
            || crate::telemetry::traces(|| head.headers().any(|(n, _)| n.eq_ignore_ascii_case(b"traceparent")))
            || conn.uplink.is_some()
            || head.uri().authority().is_some()
        {
            return Lane::General(None);
        }
        let Some(rt) = self.in_force.load_full().filter(|rt| !rt.table.reads_headers()) else {
            return Lane::General(None);
        };
        // A path that sanitizing changes or refuses: the general lane forwards the clean
        // one or answers 400.
        let path = head.uri().path();
        if !matches!(atrium_routing::path_security::sanitize(path), Ok(std::borrow::Cow::Borrowed(_))) {
            return Lane::General(None);
        }
        // Exactly one well-formed Host, else the general lane answers 400 (see
        // `host_problem`).
        let mut hosts = head.headers().filter(|(n, _)| n.eq_ignore_ascii_case(b"host"));
        let host = match (hosts.next(), hosts.next()) {
            (Some((_, h)), None) if super::valid_host(h) => std::str::from_utf8(h).unwrap_or_default(),
            _ => return Lane::General(None),
        };
        let view = RequestView::with_client_ip(
            head.method().as_str(),
            host,
            path,
            head.uri().query(),
            &NO_HEADERS,
            Some(conn.peer.ip().to_canonical()),
        );
        let req = atrium_routing::Request { entry_point: Some(&conn.entry_point), uplink: None, path, view };
        let i = match atrium_routing::decide(&rt.table, &req) {
            atrium_routing::Decision::Route(i) => i,
            // A 404 or a refusal: the general lane answers it.
            _ => return Lane::General(None),
        };
        let router = &rt.table.routers()[i];
        // A route of an API: here only with a bearer key, no CORS and the default key source
        // (anything else, the general lane's work).
        let api_ok = router.api.as_deref().is_none_or(|api| {
            matches!(rt.access.auth(api), Some(ApiAuth::Key(KeySource::Default)))
                && rt.access.cors(api).is_none()
                && bearer_key(head).is_some()
        });
        let middlewares_ok = !matches!(rt.direct[i], Middlewares::General);
        match router.state.target.as_deref() {
            Some(Service::LoadBalancer(lb)) if middlewares_ok && api_ok && lb.plain_http => {
                let lb = lb.clone();
                Lane::Direct(rt, i, lb)
            }
            _ => Lane::General(Some(Routed { rt, router: i })),
        }
    }

    /// API management for a request of API `api` in the direct lane: what is left of the
    /// plan (`Some` once the caller is let through; the key header is then not forwarded),
    /// or the answer that refuses it.
    async fn direct_api(
        &self,
        rt: &Compiled,
        api: &str,
        head: &Head,
    ) -> Result<Option<atrium_routing::apim::Outcome>, Response<Body>> {
        let key = bearer_key(head);
        let grant = super::apim::grant_of(rt.access.decide(api, key)).map_err(|r| r.answer())?;
        super::apim::operation(rt, &grant, head.method().as_str(), head.uri().path()).map_err(|r| r.answer())?;
        match Box::pin(self.count(&grant)).await {
            super::apim::Counted::Go(o) => Ok(Some(o)),
            super::apim::Counted::Wait(d, o) => {
                tokio::time::sleep(d).await;
                Ok(Some(o))
            }
            super::apim::Counted::Answer(r) => Err(r),
        }
    }

    /// Sends a request the direct lane takes (see [`Gateway::direct_route`]).
    async fn direct(
        self: &Arc<Self>,
        rt: Arc<Compiled>,
        router_index: usize,
        lb: Arc<LoadBalancer>,
        head: Head,
        conn: &ConnInfo,
    ) -> Reply {
        let start = Instant::now();
        let router = &rt.table.routers()[router_index];
        router.state.served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let edits = match &rt.direct[router_index] {
            Middlewares::Edits(e) => Some(&**e),
            _ => None,
        };
        let refused = |answer: Response<Body>| {
            self.metrics.record(Some(&router.state.labels), answer.status().as_u16(), start.elapsed().as_secs_f64());
            answer
        };
        // Path rewrites, in router order (the general lane's request phase, for these).
        let mut target = None;
        let mut added = Vec::new();
        if edits.is_some_and(|e| e.rewrites) {
            match rewrite(router, &head) {
                Ok((pq, headers)) => {
                    target = Some(pq);
                    added = headers;
                }
                Err(answer) => return Reply::Response(refused(answer)),
            }
        }
        // API management after the middlewares, as on the general lane, whose headers
        // middlewares also answer on its refusals.
        let mut plan_left = None;
        if let Some(api) = router.api.as_deref() {
            match self.direct_api(&rt, api, &head).await {
                Ok(left) => plan_left = left,
                Err(mut answer) => {
                    if let Some(e) = edits {
                        edit_map(answer.headers_mut(), &e.response);
                    }
                    return Reply::Response(refused(answer));
                }
            }
        }
        let sent = match lb.pick() {
            None => Err(super::no_server(&lb)),
            Some(server) => match server.url.authority() {
                None => Err(ProxyError::NoTarget("server without authority".into())),
                Some(auth) => {
                    let req = RawRequest {
                        head: &head,
                        client: super::forward::RawClient {
                            ip: conn.ip_value.as_ref().map(http::HeaderValue::as_bytes),
                            proto: if conn.tls { "https" } else { "http" },
                            server: self.hostname.as_bytes(),
                        },
                        pass_host: lb.pass_host_header,
                        start,
                        target,
                        edits: super::forward::HeadEdits {
                            drop: plan_left.is_some().then_some(b"authorization".as_slice()),
                            set: edits.map_or(&[], |e| &e.request),
                            append: &added,
                        },
                    };
                    conn.upstreams.send_inline(req, auth.clone()).await.map_err(|e| {
                        lb.record_failure(server);
                        ProxyError::Upstream(e)
                    })
                }
            },
        };
        let reply = match sent {
            Ok(mut passed) => {
                // The headers middlewares' answer phase, then the plan's (as on the general
                // lane, where API management comes after the middlewares).
                if let Some(e) = edits.filter(|e| !e.response.is_empty()) {
                    passed.edit_headers(&e.response);
                }
                if let Some(left) = &plan_left {
                    plan_headers(&mut passed, left);
                }
                Reply::Passed(passed)
            }
            Err(e) => Reply::Response(super::failure(router, &e)),
        };
        let code = match &reply {
            Reply::Passed(p) => p.status.as_u16(),
            Reply::Response(r) => r.status().as_u16(),
        };
        self.metrics.record(Some(&router.state.labels), code, start.elapsed().as_secs_f64());
        reply
    }
}

/// Headers the path rewrites add, in order.
type Added = Vec<(&'static str, HeaderValue)>;

/// Runs `router`'s path middlewares on the head's path: the path and query the upstream
/// gets and the headers the rewrites add, or the answer to a rewrite that fails.
#[allow(clippy::result_large_err)]
fn rewrite(router: &super::Route, head: &Head) -> Result<(http::uri::PathAndQuery, Added), Response<Body>> {
    let mut url = UrlPath::from_escaped(head.uri().path());
    let mut added = Vec::new();
    for m in router.middlewares.iter().filter(|m| matches!(m.action, Action::Path)) {
        added.extend(super::general::rewrite(m, &mut url)?);
    }
    Ok((super::general::rewritten_target(router, &url, head.uri().query())?, added))
}
