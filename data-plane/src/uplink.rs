//! Uplink transport: mutual-TLS QUIC between parents and children, length-prefixed
//! protobuf frames, and HTTP over one QUIC stream per request.
//!
//! Framing choice: each request gets its own bidirectional QUIC stream, and hyper speaks
//! HTTP over it. A stream is an ordered, flow-controlled byte pipe, so HTTP/1.1 — with
//! upgrades for WebSocket — runs over it unchanged, and HTTP/2 (for gRPC and trailers) runs
//! over it too when the client opens with the HTTP/2 preface: the child's server detects
//! either. Using one QUIC stream per request (not one HTTP/2 connection per QUIC
//! connection) keeps head-of-line blocking out: a slow response holds only its own stream.
//! h3 would need its own stack (and gives no way to carry WebSocket upgrades as-is).
//!
//! Liveness: QUIC keep-alive every 250 ms and an idle timeout of 900 ms (both configurable),
//! so a child that dies without a word (`kill -9`) is noticed within about a second.

use std::sync::Arc;
use std::time::Duration;

use atrium_proto::v1 as pb;
use prost::Message;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// ALPN of the uplink protocol.
pub const ALPN: &[u8] = b"atrium-uplink/1";
/// Largest frame accepted; anything larger is a protocol error.
pub const MAX_FRAME: usize = 1 << 20;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the stream cleanly before a frame.
    #[error("stream closed")]
    Closed,
    /// I/O failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    /// A length over [`MAX_FRAME`].
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// Bytes that are not the expected message.
    #[error("malformed frame: {0}")]
    Malformed(#[from] prost::DecodeError),
    /// A stream header of no known kind.
    #[error("unknown stream kind {0}")]
    UnknownKind(i32),
}

/// The client a parent relays a request for: its address, and whether it reached the parent
/// over TLS. On the child it is the client for `ClientIP`, `ipAllowList` and the
/// `X-Forwarded-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayedClient {
    /// The client's socket address at the parent.
    pub addr: std::net::SocketAddr,
    /// Whether the client spoke TLS to the parent.
    pub tls: bool,
}

impl RelayedClient {
    /// The scheme as a stream header carries it.
    pub fn proto(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// The value of the per-request header on pooled HTTP/1.1 streams: `ADDR PROTO`.
    pub fn header_value(&self) -> http::HeaderValue {
        let text = format!("{} {}", self.addr, self.proto());
        http::HeaderValue::from_str(&text).unwrap_or_else(|_| http::HeaderValue::from_static("0.0.0.0:0 http"))
    }

    /// Reads [`RelayedClient::header_value`]'s format; `None` for anything else.
    pub fn from_header(v: &[u8]) -> Option<RelayedClient> {
        let (addr, proto) = std::str::from_utf8(v).ok()?.split_once(' ')?;
        RelayedClient::from_parts(addr, proto)
    }

    /// From a stream header's `client_addr` and `client_proto`.
    pub fn from_parts(addr: &str, proto: &str) -> Option<RelayedClient> {
        let tls = match proto {
            "https" => true,
            "http" => false,
            _ => return None,
        };
        Some(RelayedClient { addr: addr.parse().ok()?, tls })
    }
}

/// Writes one length-prefixed message.
pub async fn write_frame<W: tokio::io::AsyncWrite + Unpin, M: Message>(w: &mut W, msg: &M) -> std::io::Result<()> {
    let body = msg.encode_to_vec();
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf).await
}

/// Reads one length-prefixed message.
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin, M: Message + Default>(r: &mut R) -> Result<M, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(FrameError::TooLarge(n));
    }
    let mut body = vec![0u8; n];
    r.read_exact(&mut body).await?;
    Ok(M::decode(body.as_slice())?)
}

/// Reads a stream's header, refusing anything that is not a well-formed header of a known
/// kind.
pub async fn read_header(r: &mut quinn::RecvStream) -> Result<pb::StreamHeader, FrameError> {
    let h: pb::StreamHeader = read_frame(r).await?;
    match pb::stream_header::Kind::try_from(h.kind) {
        Ok(pb::stream_header::Kind::Control) | Ok(pb::stream_header::Kind::Data) => Ok(h),
        _ => Err(FrameError::UnknownKind(h.kind)),
    }
}

/// QUIC timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// A connection silent this long is dead.
    pub idle_timeout: Duration,
    /// Concurrent streams a peer may open.
    pub max_streams: u32,
    /// How long a child keeps a pooled HTTP/1.1 stream that waits for its next request.
    pub stream_idle: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            keep_alive: Duration::from_millis(250),
            idle_timeout: Duration::from_millis(900),
            max_streams: 1024,
            stream_idle: Duration::from_secs(30),
        }
    }
}

fn transport(l: Liveness) -> Result<Arc<quinn::TransportConfig>, String> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(l.keep_alive));
    t.max_idle_timeout(Some(l.idle_timeout.try_into().map_err(|e| format!("idle timeout: {e}"))?));
    t.max_concurrent_bidi_streams(l.max_streams.into());
    t.max_concurrent_uni_streams(0u32.into());
    Ok(Arc::new(t))
}

fn chain(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem).collect::<Result<_, _>>().map_err(|e| format!("certificate: {e}"))
}

fn roots(ca: &[u8]) -> Result<rustls::RootCertStore, String> {
    let mut r = rustls::RootCertStore::empty();
    for c in chain(ca)? {
        r.add(c).map_err(|e| format!("CA: {e}"))?;
    }
    Ok(r)
}

/// The agent's QUIC server: presents `cert`, accepts only clients whose certificate
/// chains to `ca`.
pub fn server_config(ca: &[u8], cert: &[u8], key: &[u8], l: Liveness) -> Result<quinn::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("private key: {e}"))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain(cert)?, key)
        .map_err(|e| e.to_string())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut cfg =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).map_err(|e| e.to_string())?));
    cfg.transport_config(transport(l)?);
    Ok(cfg)
}

/// How a parent checks a child's certificate (the seed's `serversTransport`).
#[derive(Debug, Clone, Default)]
pub struct ServerCheck {
    /// Trust these CAs (PEM); empty means the installation's CA passed separately.
    pub root_cas: Vec<u8>,
    /// Expected name in the child's certificate; default: the host of its address.
    pub server_name: Option<String>,
    /// Accept any certificate (development only; logged as a warning).
    pub insecure_skip_verify: bool,
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A parent's QUIC client: presents `cert` and checks the child as `check` says.
pub fn client_config(
    ca: &[u8],
    cert: &[u8],
    key: &[u8],
    check: &ServerCheck,
    l: Liveness,
) -> Result<quinn::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("private key: {e}"))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?;
    let builder = if check.insecure_skip_verify {
        tracing::warn!("insecureSkipVerify: the child's certificate is not verified");
        builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    } else {
        let trusted = if check.root_cas.is_empty() { ca } else { &check.root_cas };
        builder.with_root_certificates(roots(trusted)?)
    };
    let mut tls = builder.with_client_auth_cert(chain(cert)?, key).map_err(|e| e.to_string())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut cfg = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?));
    cfg.transport_config(transport(l)?);
    Ok(cfg)
}

/// A QUIC stream pair as one byte pipe, for hyper.
pub type StreamIo = tokio::io::Join<quinn::RecvStream, quinn::SendStream>;

/// Joins a bidirectional stream's halves.
pub fn io(send: quinn::SendStream, recv: quinn::RecvStream) -> StreamIo {
    tokio::io::join(recv, send)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_roundtrip_and_garbage_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let h = pb::StreamHeader {
            kind: pb::stream_header::Kind::Data as i32,
            uplink: "crm".into(),
            client_addr: "10.0.0.1:5".into(),
            client_proto: "http".into(),
            traceparent: String::new(),
        };
        write_frame(&mut a, &h).await.unwrap();
        let back: pb::StreamHeader = read_frame(&mut b).await.unwrap();
        assert_eq!(back, h);
        a.write_all(&(u32::MAX).to_be_bytes()).await.unwrap();
        assert!(matches!(read_frame::<_, pb::StreamHeader>(&mut b).await, Err(FrameError::TooLarge(_))));
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await.unwrap();
        assert!(matches!(read_frame::<_, pb::StreamHeader>(&mut b).await, Err(FrameError::Malformed(_))));
        drop(a);
        assert!(matches!(read_frame::<_, pb::StreamHeader>(&mut b).await, Err(FrameError::Closed)));
    }
}
