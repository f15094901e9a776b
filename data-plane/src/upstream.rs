//! Connections to upstream servers, with the connect and response-header timeouts that turn
//! into 502 and 504.
//!
//! Every HTTP/1.1 connection — plain, or TLS where the server chose HTTP/1.1 by ALPN —
//! lives in the one pool of [`crate::h1::client`], which hands out only clean connections.
//! HTTP/2 (`h2c` servers, and TLS servers that chose `h2`) is multiplexed: one connection per
//! server, shared by its requests, replaced when it closes.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::body::Body;
use crate::exchange::UpstreamError;
use crate::h1::client::{self as h1c, Pool, Pooled};

/// Upstream timeouts and pool settings.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// TCP connect timeout (502 past it), TLS handshake included.
    pub connect_timeout: Duration,
    /// Time to the response headers (504 past it), from when the request is written whole.
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

/// What sending a request upstream gives.
pub type Sent = Result<http::Response<Body>, UpstreamError>;

/// An upstream as a pool key: its scheme and authority, hashed and compared as the bytes
/// the configuration wrote (`Authority`'s own hash lower-cases byte by byte, on every
/// request).
/// TLS connections dialled offering only HTTP/1.1 (for protocol upgrades) are pooled apart,
/// so they never teach the pool that a server which prefers HTTP/2 speaks HTTP/1.1.
#[derive(Clone, Debug)]
pub(crate) struct UpstreamKey {
    tls: bool,
    /// TLS offering only `http/1.1`.
    h1_only: bool,
    authority: Authority,
}

impl UpstreamKey {
    fn new(tls: bool, authority: Authority) -> UpstreamKey {
        UpstreamKey { tls, h1_only: false, authority }
    }
}

impl Hash for UpstreamKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.tls, self.h1_only).hash(state);
        self.authority.as_str().hash(state);
    }
}

impl PartialEq for UpstreamKey {
    fn eq(&self, other: &Self) -> bool {
        (self.tls, self.h1_only) == (other.tls, other.h1_only) && self.authority.as_str() == other.authority.as_str()
    }
}

impl Eq for UpstreamKey {}

/// A connection to an upstream: plain TCP, or TLS over TCP.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A TCP connection to a plain upstream (port 80 when the authority names none, 443 for
/// TLS), within the connect timeout, with Nagle off.
pub(crate) async fn connect_tcp(auth: &Authority, tls: bool, cfg: &UpstreamConfig) -> Result<TcpStream, UpstreamError> {
    let server = auth.to_string();
    let target = match auth.port_u16() {
        Some(_) => server.clone(),
        None => format!("{server}:{}", if tls { 443 } else { 80 }),
    };
    let stream = match tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(&target)).await {
        Err(_) => return Err(UpstreamError::Connect { server, reason: "connect timed out".into() }),
        Ok(Err(e)) => return Err(UpstreamError::Connect { server, reason: e.to_string() }),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The protocol a TLS upstream chose by ALPN, learnt at its first connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Negotiated {
    Http1,
    Http2,
}

/// The clients of one worker thread: the HTTP/1.1 pool and the HTTP/2 connections.
pub struct Upstreams {
    h1: Arc<Pool<UpstreamKey, Stream>>,
    h2: Mutex<HashMap<UpstreamKey, http2::SendRequest<Body>>>,
    /// TLS upstreams that chose HTTP/2.
    speaks_h2: Mutex<HashSet<UpstreamKey>>,
    /// TLS offering `h2` and `http/1.1` (a first connection), and `http/1.1` only (more
    /// connections to a server that chose it).
    tls_any: Arc<rustls::ClientConfig>,
    tls_h1: Arc<rustls::ClientConfig>,
    cfg: UpstreamConfig,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams").field("cfg", &self.cfg).finish()
    }
}

/// The public web PKI.
fn web_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    roots
}

/// A client TLS configuration trusting `roots`, offering `alpn`.
fn tls_config(roots: rustls::RootCertStore, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

impl Upstreams {
    /// Builds the clients; TLS upstreams must present a certificate of the public web PKI.
    pub fn new(cfg: UpstreamConfig) -> Self {
        Upstreams::trusting(cfg, web_roots())
    }

    /// Builds the clients; TLS upstreams must present a certificate `roots` vouch for.
    pub fn trusting(cfg: UpstreamConfig, roots: rustls::RootCertStore) -> Self {
        Upstreams {
            h1: Arc::new(Pool::new(cfg.max_idle_per_host)),
            h2: Mutex::default(),
            speaks_h2: Mutex::default(),
            tls_any: tls_config(roots.clone(), &[b"h2", b"http/1.1"]),
            tls_h1: tls_config(roots, &[b"http/1.1"]),
            cfg,
        }
    }

    /// Builds the clients; TLS upstreams are dialled with `tls` (its own verifier and client
    /// certificate), offering HTTP/1.1 only.
    pub fn with_tls(cfg: UpstreamConfig, mut tls: rustls::ClientConfig) -> Self {
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tls = Arc::new(tls);
        Upstreams {
            h1: Arc::new(Pool::new(cfg.max_idle_per_host)),
            h2: Mutex::default(),
            speaks_h2: Mutex::default(),
            tls_any: tls.clone(),
            tls_h1: tls,
            cfg,
        }
    }

    /// The timeouts and pool settings.
    pub fn config(&self) -> &UpstreamConfig {
        &self.cfg
    }

    /// Connections of the HTTP/1.1 pool discarded because they were not clean.
    pub fn discarded_connections(&self) -> u64 {
        self.h1.discarded()
    }

    /// Sends `req` (whose URI is absolute) to its server, waiting at most the response
    /// header timeout. `h2c` selects HTTP/2 with prior knowledge.
    ///
    /// Plain HTTP/1.1 — nearly all traffic — returns the HTTP/1.1 client's future itself,
    /// with no wrapper around it: a request's future is moved at every level it is nested
    /// in, so each level saved is a copy saved.
    pub fn send(
        &self,
        req: http::Request<Body>,
        h2c: bool,
    ) -> futures_util::future::Either<impl Future<Output = Sent> + Send + '_, futures_util::future::BoxFuture<'_, Sent>>
    {
        use futures_util::future::Either;
        if !h2c && req.uri().scheme() == Some(&http::uri::Scheme::HTTP) && h1c::eligible(&req) {
            if let Some(auth) = req.uri().authority().cloned() {
                return Either::Left(self.send_h1(Pooled(req), UpstreamKey::new(false, auth), None));
            }
        }
        Either::Right(Box::pin(self.send_other(req, h2c)))
    }

    /// Sends a bodiless request to the plain HTTP/1.1 server `auth` on a pooled connection
    /// (the proxy's direct lane), waiting at most the response header timeout.
    pub(crate) fn send_inline<'a, O: h1c::Outbound + 'a>(
        &'a self,
        req: O,
        auth: Authority,
    ) -> impl Future<Output = Result<O::Reply, UpstreamError>> + 'a {
        self.send_h1(req, UpstreamKey::new(false, auth), None)
    }

    /// HTTP/1.1 through the pool. `first` is a TLS connection dialled already (to learn
    /// the protocol), used before any new one.
    async fn send_h1<O: h1c::Outbound>(
        &self,
        req: O,
        key: UpstreamKey,
        first: Option<Stream>,
    ) -> Result<O::Reply, UpstreamError> {
        let server = || key.authority.to_string();
        let timeout = self.cfg.response_header_timeout;
        let mut first = first;
        let connect = |_| {
            let pre = first.take();
            let key = &key;
            // Boxed: a dial (the TLS handshake above all) is large, and inline it would be
            // part of every request's future, those on pooled connections included.
            Box::pin(async move {
                match pre {
                    Some(s) => Ok(s),
                    None if key.tls => self.dial_tls(key, &self.tls_h1).await.map(|(s, _)| s),
                    None => connect_tcp(&key.authority, false, &self.cfg).await.map(Stream::Plain),
                }
            })
        };
        let host = key.authority.as_str().to_string();
        match h1c::send(&self.h1, key.clone(), self.cfg.idle_timeout, req, &host, Some(timeout), connect).await {
            Ok(r) => Ok(r),
            Err(h1c::SendError::Timeout) => Err(UpstreamError::Timeout { server: server(), timeout }),
            Err(h1c::SendError::Connect(e)) => Err(e),
            Err(h1c::SendError::Exchange(reason)) => Err(UpstreamError::Protocol { server: server(), reason }),
        }
    }

    /// A TLS connection to `key`'s server offering what `tls` offers; the protocol it chose.
    async fn dial_tls(
        &self,
        key: &UpstreamKey,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<(Stream, Negotiated), UpstreamError> {
        let server = key.authority.to_string();
        let tcp = connect_tcp(&key.authority, true, &self.cfg).await?;
        let name = rustls::pki_types::ServerName::try_from(key.authority.host().trim_matches(['[', ']']).to_string())
            .map_err(|e| UpstreamError::Connect { server: server.clone(), reason: e.to_string() })?;
        let handshake = tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp);
        let s = match tokio::time::timeout(self.cfg.connect_timeout, handshake).await {
            Err(_) => return Err(UpstreamError::Connect { server, reason: "TLS handshake timed out".into() }),
            Ok(Err(e)) => return Err(UpstreamError::Connect { server, reason: format!("TLS: {e}") }),
            Ok(Ok(s)) => s,
        };
        let proto = if s.get_ref().1.alpn_protocol() == Some(b"h2") { Negotiated::Http2 } else { Negotiated::Http1 };
        Ok((Stream::Tls(Box::new(s)), proto))
    }

    /// Requests that do not take the plain HTTP/1.1 path: TLS upstreams (HTTP/1.1 or
    /// HTTP/2 as the server chose) and h2c.
    async fn send_other(&self, req: http::Request<Body>, h2c: bool) -> Sent {
        let server = req.uri().authority().map(|a| a.to_string()).unwrap_or_default();
        let Some(authority) = req.uri().authority().cloned() else {
            return Err(UpstreamError::Connect { server, reason: "no authority".into() });
        };
        if !h1c::eligible(&req) {
            return Err(UpstreamError::Protocol { server, reason: "CONNECT is not forwarded".into() });
        }
        let tls = req.uri().scheme() == Some(&http::uri::Scheme::HTTPS);
        let key = UpstreamKey::new(tls, authority);
        if h2c {
            return self.send_h2(req, key, None).await;
        }
        if !tls {
            return self.send_h1(Pooled(req), key, None).await;
        }
        // A protocol upgrade (WebSocket) exists only in HTTP/1.1: it goes on a connection
        // that offered nothing else, whatever the server prefers for other requests.
        if h1c::asks_upgrade(req.headers()) {
            return self.send_h1(Pooled(req), UpstreamKey { h1_only: true, ..key }, None).await;
        }
        if self.speaks_h2.lock().is_ok_and(|s| s.contains(&key)) {
            return self.send_h2(req, key, None).await;
        }
        // An idle HTTP/1.1 connection means the protocol is known; otherwise a first
        // connection tells.
        let known_h1 = self.h1.has_idle(&key);
        if known_h1 {
            return self.send_h1(Pooled(req), key, None).await;
        }
        let (stream, proto) = self.dial_tls(&key, &self.tls_any).await?;
        match proto {
            Negotiated::Http2 => {
                if let Ok(mut s) = self.speaks_h2.lock() {
                    s.insert(key.clone());
                }
                self.send_h2(req, key, Some(stream)).await
            }
            Negotiated::Http1 => self.send_h1(Pooled(req), key, Some(stream)).await,
        }
    }

    /// HTTP/2 on the server's shared connection (dialled when there is none, over
    /// `stream` when given).
    async fn send_h2(&self, mut req: http::Request<Body>, key: UpstreamKey, stream: Option<Stream>) -> Sent {
        let server = key.authority.to_string();
        let timeout = self.cfg.response_header_timeout;
        let existing = self.h2.lock().ok().and_then(|m| m.get(&key).filter(|s| !s.is_closed()).cloned());
        let mut sender = match existing {
            Some(s) => s,
            None => {
                let io = match stream {
                    Some(s) => s,
                    None if key.tls => self.dial_tls(&key, &self.tls_any).await?.0,
                    None => Stream::Plain(connect_tcp(&key.authority, false, &self.cfg).await?),
                };
                let (s, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                    .await
                    .map_err(|e| UpstreamError::Connect { server: server.clone(), reason: e.to_string() })?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
                    }
                });
                if let Ok(mut m) = self.h2.lock() {
                    m.insert(key.clone(), s.clone());
                }
                s
            }
        };
        // The Host the proxy chose (the client's, with passHostHeader) is HTTP/2's
        // :authority; the connection still goes to the server.
        if let Some(host) = req.headers_mut().remove(http::header::HOST) {
            let mut parts = req.uri().clone().into_parts();
            if let Ok(a) = Authority::try_from(host.as_bytes()) {
                parts.authority = Some(a);
                if let Ok(u) = http::Uri::from_parts(parts) {
                    *req.uri_mut() = u;
                }
            }
        }
        *req.version_mut() = http::Version::HTTP_2;
        let sent = async {
            sender.ready().await?;
            sender.send_request(req).await
        };
        match tokio::time::timeout(timeout, sent).await {
            Err(_) => Err(UpstreamError::Timeout { server, timeout }),
            Ok(Ok(r)) => Ok(r.map(crate::body::incoming)),
            Ok(Err(e)) => {
                if let Ok(mut m) = self.h2.lock() {
                    m.remove(&key);
                }
                let reason = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_else(|| e.to_string());
                Err(UpstreamError::Protocol { server, reason })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A TLS server on loopback offering `h2` and `http/1.1` (hyper's automatic server):
    /// answers `proto=<version>`, and switches protocols (then echoes) on an upgrade. The
    /// address and the root that vouches for it.
    async fn tls_server() -> (std::net::SocketAddr, rustls::RootCertStore) {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ck.cert.der().clone()).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = hyper::service::service_fn(|mut req: http::Request<hyper::body::Incoming>| async move {
                        let host =
                            req.uri().authority().map(|a| a.to_string()).or_else(|| {
                                req.headers().get(http::header::HOST).map(|h| h.to_str().unwrap().to_string())
                            });
                        let answer = format!("proto={:?} host={}", req.version(), host.unwrap_or_default());
                        let mut resp = http::Response::new(crate::body::full(answer));
                        if req.headers().contains_key(http::header::UPGRADE) && req.uri().path() != "/refuse" {
                            let on = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                let Ok(up) = on.await else { return };
                                let mut io = TokioIo::new(up);
                                let mut buf = [0u8; 64];
                                while let Ok(n) = io.read(&mut buf).await {
                                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            });
                            *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
                            resp.headers_mut().insert(http::header::CONNECTION, "upgrade".parse().unwrap());
                            resp.headers_mut().insert(http::header::UPGRADE, "echo".parse().unwrap());
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        (addr, roots)
    }

    #[tokio::test]
    async fn a_tls_upstream_preferring_http2_sees_the_host_as_authority_and_upgrades_over_http1() {
        let (addr, roots) = tls_server().await;
        let up = Upstreams::trusting(UpstreamConfig::default(), roots);
        let get = || http::Request::get(format!("https://{addr}/")).body(crate::body::empty()).unwrap();
        let text = |r: http::Response<Body>| async move {
            String::from_utf8(http_body_util::BodyExt::collect(r.into_body()).await.unwrap().to_bytes().to_vec())
                .unwrap()
        };
        // The server chose HTTP/2 for ordinary requests, and that is remembered.
        let want = format!("proto=HTTP/2.0 host={addr}");
        assert_eq!(text(up.send(get(), false).await.unwrap()).await, want);
        assert_eq!(text(up.send(get(), false).await.unwrap()).await, want);
        // An upgrade still switches: it went over HTTP/1.1.
        let ws = http::Request::get(format!("https://{addr}/ws"))
            .header(http::header::CONNECTION, "upgrade")
            .header(http::header::UPGRADE, "echo")
            .body(crate::body::empty())
            .unwrap();
        let mut resp = up.send(ws, false).await.unwrap();
        assert_eq!(resp.status(), http::StatusCode::SWITCHING_PROTOCOLS);
        let mut io = h1c::UpgradeSlot::take(&mut resp).expect("the switched connection");
        // … while the client's Host (passHostHeader) is the :authority an HTTP/2 server sees.
        let mut passed = get();
        passed.headers_mut().insert(http::header::HOST, "api.test".parse().unwrap());
        assert_eq!(text(up.send(passed, false).await.unwrap()).await, "proto=HTTP/2.0 host=api.test");
        io.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(10), io.read_exact(&mut back)).await.unwrap().unwrap();
        assert_eq!(&back, b"ping");
    }

    #[tokio::test]
    async fn a_refused_first_upgrade_does_not_keep_a_tls_upstream_on_http1() {
        let (addr, roots) = tls_server().await;
        let up = Upstreams::trusting(UpstreamConfig::default(), roots);
        let text = |r: http::Response<Body>| async move {
            String::from_utf8(http_body_util::BodyExt::collect(r.into_body()).await.unwrap().to_bytes().to_vec())
                .unwrap()
        };
        let ws = http::Request::get(format!("https://{addr}/refuse"))
            .header(http::header::CONNECTION, "upgrade")
            .header(http::header::UPGRADE, "echo")
            .body(crate::body::empty())
            .unwrap();
        let resp = up.send(ws, false).await.unwrap();
        assert_eq!(resp.status(), http::StatusCode::OK);
        assert!(text(resp).await.starts_with("proto=HTTP/1.1"), "the upgrade went over HTTP/1.1");
        // Its connection went back to the pool; ordinary requests still find HTTP/2.
        let get = http::Request::get(format!("https://{addr}/")).body(crate::body::empty()).unwrap();
        assert!(text(up.send(get, false).await.unwrap()).await.starts_with("proto=HTTP/2.0"));
    }
}
