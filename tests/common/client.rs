//! HTTP clients for tests: plain HTTP/1.1, h2c, and TLS with SNI (any certificate
//! accepted, the presented one returned for inspection).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A boxed request body.
pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A small response.
#[derive(Debug)]
pub struct Resp {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: hyper::HeaderMap,
    /// Body text.
    pub body: String,
    /// Protocol version.
    pub version: hyper::Version,
}

impl Resp {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A pooled HTTP/1.1 client.
pub fn http1() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Body from bytes.
pub fn body(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// Sends a request and reads the whole response, within 20 s.
pub async fn send(client: &Client<HttpConnector, Body>, req: Request<Body>) -> Resp {
    let fut = async {
        let r = client.request(req).await.expect("request sent");
        let (parts, b) = r.into_parts();
        let body = b.collect().await.expect("body read").to_bytes();
        Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            version: parts.version,
        }
    };
    tokio::time::timeout(Duration::from_secs(20), fut).await.expect("response within 20s")
}

/// GET `url`.
pub async fn get(url: &str) -> Resp {
    let req = Request::get(url).body(body("")).unwrap();
    send(&http1(), req).await
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Connects with TLS to `addr` using `sni`, offering `alpn` (any certificate accepted).
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.expect("TLS handshake")
}

/// Connects with TLS to `addr` using `sni`, offering h2 and http/1.1. Returns the
/// negotiated ALPN, the server's leaf certificate and the response to GET `path`.
pub async fn tls_get(addr: SocketAddr, sni: &str, path: &str) -> (Option<Vec<u8>>, Vec<u8>, Resp) {
    tls_get_with(addr, sni, path, &[]).await
}

/// [`tls_get`] with extra request `headers`.
pub async fn tls_get_with(
    addr: SocketAddr,
    sni: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (Option<Vec<u8>>, Vec<u8>, Resp) {
    let tls = tls_connect(addr, sni, &[b"h2", b"http/1.1"]).await;
    let (_, conn) = tls.get_ref();
    let alpn = conn.alpn_protocol().map(|p| p.to_vec());
    let leaf = conn.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
    let mut req = Request::get(path).header("host", sni);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(body("")).unwrap();
    let resp = if alpn.as_deref() == Some(b"h2") {
        let (mut s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
        tokio::spawn(c);
        let uri: hyper::Uri = format!("https://{sni}{path}").parse().unwrap();
        let mut req = req;
        *req.uri_mut() = uri;
        s.send_request(req).await.unwrap()
    } else {
        let (mut s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(c);
        s.send_request(req).await.unwrap()
    };
    let (parts, b) = resp.into_parts();
    let body = b.collect().await.unwrap().to_bytes();
    (
        alpn,
        leaf,
        Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            version: parts.version,
        },
    )
}

/// Reads one HTTP/1.1 response with a `Content-Length` from `s` (10 s at most).
pub async fn read_response(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize =
                head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                return String::from_utf8_lossy(&buf[..end + 4 + len]).into_owned();
            }
        }
        let mut chunk = [0u8; 4096];
        let n =
            tokio::time::timeout_at(deadline.into(), s.read(&mut chunk)).await.expect("a response in time").unwrap();
        assert!(n > 0, "closed before a whole response: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}
