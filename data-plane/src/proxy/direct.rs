//! The direct lane: a bodiless HTTP/1.1 request to a router without middlewares, sent to a
//! plain HTTP/1.1 server, goes through as bytes. A route of an API takes it too when its
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
use atrium_routing::request::RequestView;

/// A client's head on its way to a server, with what the proxy adds.
struct RawRequest<'a> {
    head: &'a Head,
    client: super::forward::RawClient<'a>,
    pass_host: bool,
    start: Instant,
    /// A header not to forward (the API key of an API route).
    drop: Option<&'static [u8]>,
}

impl Outbound for RawRequest<'_> {
    type Head = Passed;
    type Reply = Passed;

    fn method(&self) -> &Method {
        self.head.method()
    }

    fn encode(&self, out: &mut Vec<u8>, authority: &str, _: BodyFraming) {
        let target = self.head.uri().path_and_query().map_or("/", |p| p.as_str());
        super::forward::encode_request_raw(
            out,
            self.head.method(),
            target.as_bytes(),
            self.head.headers(),
            &self.client,
            self.pass_host,
            authority.as_bytes(),
            self.drop,
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
            Lane::General(routed) => Handled::request(head, |req| self.handle_routed(req, conn, routed)),
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
        match router.state.target.as_deref() {
            Some(Service::LoadBalancer(lb)) if router.middlewares.is_empty() && api_ok && lb.plain_http => {
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
        router: usize,
        lb: Arc<LoadBalancer>,
        head: Head,
        conn: &ConnInfo,
    ) -> Reply {
        let start = Instant::now();
        let router = &rt.table.routers()[router];
        router.state.served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut plan_left = None;
        if let Some(api) = router.api.as_deref() {
            match self.direct_api(&rt, api, &head).await {
                Ok(left) => plan_left = left,
                Err(answer) => {
                    self.metrics.record(
                        Some(&router.state.labels),
                        answer.status().as_u16(),
                        start.elapsed().as_secs_f64(),
                    );
                    return Reply::Response(answer);
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
                        drop: plan_left.is_some().then_some(b"authorization".as_slice()),
                    };
                    conn.upstreams.send_inline(req, auth.clone()).await.map_err(|e| {
                        lb.record_failure(server);
                        ProxyError::Upstream(e)
                    })
                }
            },
        };
        let reply = match (sent, plan_left) {
            (Ok(mut passed), Some(left)) => {
                plan_headers(&mut passed, &left);
                Reply::Passed(passed)
            }
            (Ok(passed), None) => Reply::Passed(passed),
            (Err(e), _) => Reply::Response(super::failure(router, &e)),
        };
        let code = match &reply {
            Reply::Passed(p) => p.status.as_u16(),
            Reply::Response(r) => r.status().as_u16(),
        };
        self.metrics.record(Some(&router.state.labels), code, start.elapsed().as_secs_f64());
        reply
    }
}
