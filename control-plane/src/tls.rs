//! Mutual TLS for the snapshot gRPC listener.
//!
//! We accept TLS ourselves (rustls) and hand finished streams to tonic, so that:
//! - a refused peer (no certificate, one from another CA, or one whose role is not
//!   data-plane) is logged here with the reason, not only on the data plane's side;
//! - the server certificate and the CA are re-read when their files change, without a
//!   restart (see `atrium_data_plane::trust`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

/// The snapshot listener's TLS: the control plane's certificate, and only data planes of
/// this installation's CA as clients (a child's certificate is refused: snapshots carry TLS
/// private keys). Certificate and CA are re-read when their files change.
pub fn server_config(
    trust: &atrium_data_plane::trust::NodeTrust,
) -> Result<Arc<rustls::ServerConfig>, atrium_data_plane::trust::TrustError> {
    use atrium_data_plane::pki::Role;
    trust.server_config(&[Role::DataPlane], "snapshot stream", &[b"h2"], false).map(Arc::new)
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
                        tracing::warn!(%peer, error = %e, "data plane refused: TLS handshake failed (a data-plane certificate from this installation's CA is required)")
                    }
                    Err(_) => tracing::warn!(%peer, "data plane refused: TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
