//! Connections to upstream servers: one pooled HTTP client stack (keep-alive, HTTP/1.1 and
//! HTTP/2 by ALPN over TLS, HTTP/2 with prior knowledge for `h2c` servers), with the
//! connect and response-header timeouts that turn into 502 and 504.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::Authority;

use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::body::Body;

/// Upstream timeouts and pool settings.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// TCP connect timeout (502 past it).
    pub connect_timeout: Duration,
    /// Time to the response headers (504 past it).
    pub response_header_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub idle_timeout: Duration,
    /// Idle connections kept per host.
    pub max_idle_per_host: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout: Duration::from_secs(30),
            response_header_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(90),
            max_idle_per_host: 200,
        }
    }
}

/// Why a forward failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The server could not be reached (502).
    #[error("cannot connect to {server}: {reason}")]
    Connect {
        /// The server.
        server: String,
        /// Why.
        reason: String,
    },
    /// No response headers in time (504).
    #[error("{server} did not answer within {timeout:?}")]
    Timeout {
        /// The server.
        server: String,
        /// The limit.
        timeout: Duration,
    },
    /// The exchange failed after connecting (502).
    #[error("{server}: {reason}")]
    Protocol {
        /// The server.
        server: String,
        /// Why.
        reason: String,
    },
}

/// What sending a request upstream gives.
pub type Sent = Result<http::Response<Body>, UpstreamError>;

pub(crate) type Sender = hyper::client::conn::http1::SendRequest<Body>;

/// The pooled clients. Plain HTTP/1.1 upstreams — the common case behind a gateway — go
/// through a lean pool of hyper connections of our own; HTTPS (ALPN) and h2c go through
/// hyper-util's client.
#[derive(Clone)]
pub struct Upstreams {
    http: Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
    h2c: Client<HttpConnector, Body>,
    h1: Arc<H1Pool<Authority>>,
    inline: crate::h1::client::Client,
    cfg: UpstreamConfig,
}

/// Idle HTTP/1.1 connections by key: upstream authority here, child and uplink for
/// uplink streams ([`crate::multicluster`]).
pub(crate) struct H1Pool<K> {
    idle: Mutex<HashMap<K, Vec<(Sender, std::time::Instant)>>>,
}

impl<K> Default for H1Pool<K> {
    fn default() -> Self {
        H1Pool { idle: Mutex::new(HashMap::new()) }
    }
}

impl<K: std::hash::Hash + Eq> H1Pool<K> {
    /// A connection ready for a request, if one is idle and was put back less than
    /// `max_idle` ago (older ones are closed: the server may be about to close them).
    pub(crate) fn checkout(&self, key: &K, max_idle: Duration) -> Option<(Sender, Duration)> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(key)?;
        let mut busy = Vec::new();
        let mut found = None;
        while let Some((s, since)) = list.pop() {
            if s.is_closed() || since.elapsed() >= max_idle {
                continue;
            }
            if s.is_ready() {
                found = Some((s, since.elapsed()));
                break;
            }
            busy.push((s, since));
        }
        list.extend(busy);
        found
    }

    /// Closes the idle connections of every key `keep` refuses.
    pub(crate) fn retain(&self, keep: impl Fn(&K) -> bool) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|k, _| keep(k));
        }
    }

    /// Puts a connection back. It becomes ready again once its response body is read.
    pub(crate) fn checkin(&self, key: K, s: Sender, max_idle: usize) {
        if s.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            let list = idle.entry(key).or_default();
            if list.len() < max_idle {
                list.push((s, std::time::Instant::now()));
            }
        }
    }
}

/// Methods that may be sent twice without changing their effect (RFC 9110, 9.2.2).
pub(crate) fn idempotent(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::TRACE
            | http::Method::PUT
            | http::Method::DELETE
    )
}

/// A pooled connection idle at least this long may be closing: a request sent on it keeps
/// its head (see [`resendable_head`]). Busier connections are not worth the copy.
pub(crate) const MAY_BE_CLOSING: Duration = Duration::from_millis(10);

/// What it takes to send a request again: the head of an idempotent request without a
/// body. A server may close a pooled keep-alive connection just as a request is written on
/// it; such a request got no answer and is sent once more on a fresh connection.
pub(crate) fn resendable_head(req: &http::Request<Body>) -> Option<(http::Method, http::Uri, http::HeaderMap)> {
    (http_body::Body::is_end_stream(req.body()) && idempotent(req.method()))
        .then(|| (req.method().clone(), req.uri().clone(), req.headers().clone()))
}

/// Rebuilds a request kept by [`resendable_head`].
pub(crate) fn from_head(head: &(http::Method, http::Uri, http::HeaderMap)) -> http::Request<Body> {
    let mut req = http::Request::new(crate::body::empty());
    *req.method_mut() = head.0.clone();
    *req.uri_mut() = head.1.clone();
    *req.headers_mut() = head.2.clone();
    req
}

/// A TCP connection to a plain upstream (port 80 when the authority names none), within
/// the connect timeout, with Nagle off.
pub(crate) async fn connect_tcp(
    auth: &Authority,
    cfg: &UpstreamConfig,
) -> Result<tokio::net::TcpStream, UpstreamError> {
    let server = auth.to_string();
    let target = if auth.port_u16().is_some() { server.clone() } else { format!("{server}:80") };
    let stream = match tokio::time::timeout(cfg.connect_timeout, tokio::net::TcpStream::connect(&target)).await {
        Err(_) => return Err(UpstreamError::Connect { server, reason: "connect timed out".into() }),
        Ok(Err(e)) => return Err(UpstreamError::Connect { server, reason: e.to_string() }),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams").field("cfg", &self.cfg).finish()
    }
}

fn connector(cfg: &UpstreamConfig) -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_connect_timeout(Some(cfg.connect_timeout));
    c.set_nodelay(true);
    c.enforce_http(false);
    c
}

impl Upstreams {
    /// Builds the clients.
    pub fn new(cfg: UpstreamConfig) -> Self {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(connector(&cfg));
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(cfg.idle_timeout)
            .pool_max_idle_per_host(cfg.max_idle_per_host)
            .build(https);
        let h2c = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(cfg.idle_timeout)
            .http2_only(true)
            .build(connector(&cfg));
        let inline = crate::h1::client::Client::new(cfg.max_idle_per_host);
        Upstreams { http, h2c, h1: Arc::default(), inline, cfg }
    }

    async fn connect_h1(&self, auth: &Authority) -> Result<Sender, UpstreamError> {
        let server = auth.to_string();
        let stream = connect_tcp(auth, &self.cfg).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Connect { server: server.clone(), reason: e.to_string() })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Plain HTTP/1.1 through the pool. A pooled connection the server already closed
    /// gives the request back untouched; it is then sent once on a fresh connection.
    async fn send_h1(
        &self,
        mut req: http::Request<Body>,
        auth: Authority,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let origin_form =
            req.uri().path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *req.uri_mut() = http::Uri::from(origin_form);
        let mut head = None;
        let mut retried = false;
        loop {
            let (mut sender, fresh) = match self.h1.checkout(&auth, self.cfg.idle_timeout) {
                Some((s, idle)) => {
                    if idle >= MAY_BE_CLOSING && !retried {
                        head = resendable_head(&req);
                    }
                    (s, false)
                }
                None => (self.connect_h1(&auth).await?, true),
            };
            match tokio::time::timeout(self.cfg.response_header_timeout, sender.try_send_request(req)).await {
                Err(_) => {
                    return Err(UpstreamError::Timeout {
                        server: auth.to_string(),
                        timeout: self.cfg.response_header_timeout,
                    });
                }
                Ok(Ok(resp)) => {
                    self.h1.checkin(auth, sender, self.cfg.max_idle_per_host);
                    return Ok(resp);
                }
                Ok(Err(mut e)) => match e.take_message() {
                    Some(r) if !fresh && !retried => {
                        retried = true;
                        req = r;
                    }
                    None if !fresh && !retried && e.error().is_incomplete_message() && head.is_some() => {
                        retried = true;
                        req = head.as_ref().map(from_head).expect("checked above");
                    }
                    _ => {
                        let err = e.into_error();
                        return Err(UpstreamError::Protocol { server: auth.to_string(), reason: err.to_string() });
                    }
                },
            }
        }
    }

    /// Sends `req` (whose URI is absolute) to `server`, waiting at most the response
    /// header timeout. `h2c` selects HTTP/2 with prior knowledge.
    ///
    /// Bodiless plain HTTP/1.1 requests — nearly all traffic — return the inline client's
    /// future itself, with no wrapper around it: a request's future is moved at every
    /// level it is nested in, so each level saved is a copy saved.
    pub fn send(
        &self,
        req: http::Request<Body>,
        h2c: bool,
    ) -> futures_util::future::Either<impl Future<Output = Sent> + Send + '_, futures_util::future::BoxFuture<'_, Sent>>
    {
        use futures_util::future::Either;
        if !h2c && req.uri().scheme() == Some(&http::uri::Scheme::HTTP) && crate::h1::client::eligible(&req) {
            if let Some(auth) = req.uri().authority().cloned() {
                return Either::Left(self.inline.send(crate::h1::client::Pooled(req), auth, &self.cfg));
            }
        }
        Either::Right(Box::pin(self.send_other(req, h2c)))
    }

    /// Sends a bodiless request to the plain HTTP/1.1 server `auth` on a pooled connection
    /// (see [`crate::h1::client`]), waiting at most the response header timeout.
    pub(crate) fn send_inline<'a, O: crate::h1::client::Outbound + 'a>(
        &'a self,
        req: O,
        auth: Authority,
    ) -> impl Future<Output = Result<O::Reply, UpstreamError>> + 'a {
        self.inline.send(req, auth, &self.cfg)
    }

    /// Requests with a body or an upgrade, HTTPS and h2c: through hyper.
    async fn send_other(&self, req: http::Request<Body>, h2c: bool) -> Result<http::Response<Body>, UpstreamError> {
        if !h2c && req.uri().scheme() == Some(&http::uri::Scheme::HTTP) {
            if let Some(auth) = req.uri().authority().cloned() {
                return self.send_h1(req, auth).await.map(|r| r.map(crate::body::incoming));
            }
        }
        let server = req.uri().authority().map(|a| a.to_string()).unwrap_or_default();
        let fut = if h2c { self.h2c.request(req) } else { self.http.request(req) };
        match tokio::time::timeout(self.cfg.response_header_timeout, fut).await {
            Err(_) => Err(UpstreamError::Timeout { server, timeout: self.cfg.response_header_timeout }),
            Ok(Ok(r)) => Ok(r.map(crate::body::incoming)),
            Ok(Err(e)) if e.is_connect() => {
                let reason = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_else(|| e.to_string());
                Err(UpstreamError::Connect { server, reason })
            }
            Ok(Err(e)) => {
                let reason = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_else(|| e.to_string());
                Err(UpstreamError::Protocol { server, reason })
            }
        }
    }
}
