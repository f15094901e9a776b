//! Mutual TLS for the snapshot gRPC listener.
//!
//! We accept TLS ourselves (rustls) and hand finished streams to tonic, so that:
//! - a refused peer (no certificate, or one from another CA) is logged here with the
//!   reason, not only on the data plane's side;
//! - the server certificate is re-read when its file changes, without a restart.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

/// The server certificate, re-read when its file's modification time changes.
#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<(Option<SystemTime>, Arc<CertifiedKey>)>,
}

impl Reloading {
    fn mtime(&self) -> Option<SystemTime> {
        std::fs::metadata(&self.cert).and_then(|m| m.modified()).ok()
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let now = self.mtime();
        let mut st = self.state.lock().ok()?;
        if now.is_some() && now != st.0 {
            match (std::fs::read(&self.cert), std::fs::read(&self.key)) {
                (Ok(c), Ok(k)) => match atrium_data_plane::proxy::tls::certified_key(&c, &k) {
                    Ok(ck) => {
                        tracing::info!(cert = %self.cert.display(), "server certificate reloaded");
                        *st = (now, ck);
                    }
                    Err(e) => {
                        tracing::error!(cert = %self.cert.display(), error = %e, "new server certificate unusable; keeping the previous one")
                    }
                },
                _ => {
                    tracing::error!(cert = %self.cert.display(), "cannot read the new server certificate; keeping the previous one")
                }
            }
        }
        Some(st.1.clone())
    }
}

/// A rustls server configuration requiring client certificates from `ca`.
pub fn server_config(ca: &[u8], cert: PathBuf, key: PathBuf) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca) {
        roots.add(c.map_err(|e| format!("CA: {e}"))?).map_err(|e| format!("CA: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let first = atrium_data_plane::proxy::tls::certified_key(
        &std::fs::read(&cert).map_err(|e| format!("{}: {e}", cert.display()))?,
        &std::fs::read(&key).map_err(|e| format!("{}: {e}", key.display()))?,
    )?;
    let mtime = std::fs::metadata(&cert).and_then(|m| m.modified()).ok();
    let resolver = Reloading { cert, key, state: Mutex::new((mtime, first)) };
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Accepts TCP connections, completes mutual TLS and yields the streams tonic serves.
/// Refused peers are logged with the reason.
pub fn incoming(
    listener: TcpListener,
    cfg: Arc<rustls::ServerConfig>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    tokio::spawn(async move {
        loop {
            let (tcp, peer): (TcpStream, SocketAddr) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "gRPC accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => {
                        let _ = tx.send(Ok(s)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(%peer, error = %e, "data plane refused: TLS handshake failed (a client certificate from this installation's CA is required)")
                    }
                    Err(_) => tracing::warn!(%peer, "data plane refused: TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
