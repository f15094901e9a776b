//! Uplink TLS: the agent's QUIC server lets in only parents (control-plane and data-plane
//! certificates of this installation's CA); a parent's QUIC client checks the child as its
//! `serversTransport` says.

use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use super::{ALPN, Liveness};

/// Why an uplink TLS configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum UplinkTlsError {
    /// The certificate, key or CA.
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    /// `serversTransport.rootCAs` does not parse.
    #[error("serversTransport.rootCAs: {0}")]
    RootCas(#[from] crate::trust::PemError),
    /// `serversTransport.certificates` cannot be read.
    #[error("serversTransport.certificates: {0}")]
    TransportCertificate(crate::trust::TrustError),
    /// QUIC refused the TLS configuration.
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
    /// A liveness setting QUIC cannot take.
    #[error("uplink idle timeout: {0}")]
    Liveness(String),
}

fn transport(l: Liveness) -> Result<Arc<quinn::TransportConfig>, UplinkTlsError> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(l.keep_alive));
    t.max_idle_timeout(Some(l.idle_timeout.try_into().map_err(|e| UplinkTlsError::Liveness(format!("{e}")))?));
    t.max_concurrent_bidi_streams(l.max_streams.into());
    t.max_concurrent_uni_streams(0u32.into());
    Ok(Arc::new(t))
}

/// The agent's QUIC server: presents this node's certificate, lets in only parents (a
/// control plane or a data plane of this installation's CA, see [`crate::trust`]). The
/// certificate and CA are re-read when their files change.
pub fn server_config(trust: &crate::trust::NodeTrust, l: Liveness) -> Result<quinn::ServerConfig, UplinkTlsError> {
    use crate::pki::Role;
    let tls = trust.server_config(&[Role::ControlPlane, Role::DataPlane], "uplink", &[ALPN], true)?;
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| UplinkTlsError::Quic(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(transport(l)?);
    Ok(cfg)
}

/// How a parent checks a child's certificate (the seed's `serversTransport`).
#[derive(Debug, Clone, Default)]
pub struct ServerCheck {
    /// Trust these CAs (PEM) instead of the installation's; the child's certificate then
    /// comes from another PKI, so its role is not asked for.
    pub root_cas: Vec<u8>,
    /// Expected name in the child's certificate; default: the host of its address.
    pub server_name: Option<String>,
    /// Accept any certificate (development only; logged as a warning).
    pub insecure_skip_verify: bool,
    /// Present this certificate and key (files) instead of the node's own.
    pub certificate: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// A parent's QUIC client: presents the node's certificate (or the transport's) and checks
/// the child as `check` says: by default, an agent of this installation's CA.
pub fn client_config(
    trust: &crate::trust::NodeTrust,
    check: &ServerCheck,
    l: Liveness,
) -> Result<quinn::ClientConfig, UplinkTlsError> {
    use crate::pki::Role;
    use crate::trust::{FileIdentity, FileRoots, NoVerify, RoleServerVerifier, root_store};
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = if check.insecure_skip_verify {
        tracing::warn!("insecureSkipVerify: the child's certificate is not verified");
        NoVerify::new()
    } else if !check.root_cas.is_empty() {
        let roots = root_store(&check.root_cas)?;
        RoleServerVerifier::new(FileRoots::fixed(roots), None, "uplink")?
    } else {
        trust.server_verifier(Role::Agent, "uplink")?
    };
    let own;
    let node = match &check.certificate {
        Some((cert, key)) => {
            let identity = FileIdentity::load(cert, key).map_err(UplinkTlsError::TransportCertificate)?;
            own = crate::trust::NodeTrust { identity, roots: trust.roots.clone() };
            &own
        }
        None => trust,
    };
    let tls = node.client_config(verifier, &[ALPN], true)?;
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| UplinkTlsError::Quic(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport(l)?);
    Ok(cfg)
}
