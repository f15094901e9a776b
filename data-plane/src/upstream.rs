//! Connections to upstream servers: one pooled HTTP client stack (keep-alive, HTTP/1.1 and
//! HTTP/2 by ALPN over TLS, HTTP/2 with prior knowledge for `h2c` servers), with the
//! connect and response-header timeouts that turn into 502 and 504.

use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

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

/// The pooled clients.
#[derive(Clone)]
pub struct Upstreams {
    http: Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
    h2c: Client<HttpConnector, Body>,
    cfg: UpstreamConfig,
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
        Upstreams { http, h2c, cfg }
    }

    /// Sends `req` (whose URI is absolute) to `server`, waiting at most the response
    /// header timeout. `h2c` selects HTTP/2 with prior knowledge.
    pub async fn send(&self, req: http::Request<Body>, h2c: bool) -> Result<http::Response<Incoming>, UpstreamError> {
        let server = req.uri().authority().map(|a| a.to_string()).unwrap_or_default();
        let fut = if h2c { self.h2c.request(req) } else { self.http.request(req) };
        match tokio::time::timeout(self.cfg.response_header_timeout, fut).await {
            Err(_) => Err(UpstreamError::Timeout { server, timeout: self.cfg.response_header_timeout }),
            Ok(Ok(r)) => Ok(r),
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
