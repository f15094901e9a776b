//! Opening a mutual-TLS QUIC connection to a child.

use std::net::SocketAddr;

use atrium_proto::v1 as pb;

use super::Liveness;
use super::tls::{self, ServerCheck};

/// Why a child could not be dialled.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// Its address does not parse.
    #[error(transparent)]
    Address(#[from] atrium_routing::children::AddressError),
    /// No local QUIC endpoint could be made.
    #[error("QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
    /// The TLS configuration for it cannot be built.
    #[error(transparent)]
    Tls(#[from] tls::UplinkTlsError),
    /// Its host does not resolve.
    #[error("resolving {host}: {reason}")]
    Resolve {
        /// The host.
        host: String,
        /// Why.
        reason: String,
    },
    /// The QUIC connection failed (refused certificate, unreachable, …).
    #[error("{0}")]
    Connect(String),
    /// No handshake within the liveness idle timeout, in every attempt.
    #[error("QUIC handshake timed out ({HANDSHAKE_ATTEMPTS} attempts)")]
    Timeout,
}

/// Opens a mutual-TLS QUIC connection from `ep` to `child`, honouring its
/// `serversTransport`: `insecureSkipVerify`, `rootCAs` (PEM or file paths), `serverName`,
/// and `certificates` (the first pair is presented instead of this node's own). Without
/// them the child must present an agent certificate of this installation. Each handshake
/// attempt gives up after the liveness idle timeout; one that times out is tried again
/// (see [`HANDSHAKE_ATTEMPTS`]).
pub async fn dial(
    ep: &quinn::Endpoint,
    child: &pb::Child,
    trust: &crate::trust::NodeTrust,
    liveness: Liveness,
) -> Result<quinn::Connection, DialError> {
    let (host, port) = atrium_routing::children::parse_address(&child.address)?;
    let t = child.transport.clone().unwrap_or_default();
    let mut root_cas = Vec::new();
    for r in &t.root_cas {
        match std::fs::read(r) {
            Ok(b) => root_cas.extend(b),
            Err(_) => root_cas.extend(r.as_bytes()),
        }
    }
    let check = ServerCheck {
        root_cas,
        server_name: (!t.server_name.is_empty()).then(|| t.server_name.clone()),
        insecure_skip_verify: t.insecure_skip_verify,
        certificate: t.certificates.first().map(|p| (p.cert_file.clone().into(), p.key_file.clone().into())),
    };
    let cfg = tls::client_config(trust, &check, liveness)?;
    let addr: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| DialError::Resolve { host: host.clone(), reason: e.to_string() })?
        .next()
        .ok_or_else(|| DialError::Resolve { host: host.clone(), reason: "no address".into() })?;
    let name = check.server_name.clone().unwrap_or(host);
    for attempt in 1..=HANDSHAKE_ATTEMPTS {
        let connecting = ep.connect_with(cfg.clone(), addr, &name).map_err(|e| DialError::Connect(e.to_string()))?;
        match tokio::time::timeout(liveness.idle_timeout, connecting).await {
            Ok(Ok(conn)) => return Ok(conn),
            // Silent past the idle timeout: quinn's own end of the handshake, or ours.
            Ok(Err(quinn::ConnectionError::TimedOut)) | Err(_) if attempt < HANDSHAKE_ATTEMPTS => {
                tracing::debug!(child = %child.name, %addr, attempt, "QUIC handshake timed out; dialling again");
            }
            Ok(Err(quinn::ConnectionError::TimedOut)) | Err(_) => break,
            Ok(Err(e)) => return Err(DialError::Connect(e.to_string())),
        }
    }
    Err(DialError::Timeout)
}

/// Handshakes a dial tries before it gives up. The client's first flight is retransmitted
/// only after about a second (QUIC's initial probe timeout, with no round trip measured
/// yet), past the idle timeout: one lost datagram, or a child too busy to answer for a
/// moment (a host under load, an agent just started), would otherwise fail the dial and
/// take the child out of routing. A dead child costs at most this many idle timeouts.
pub const HANDSHAKE_ATTEMPTS: u32 = 2;

/// A client endpoint on an ephemeral port of every address.
pub fn client_endpoint() -> Result<quinn::Endpoint, DialError> {
    // A dual-stack socket reaches IPv4 children as mapped addresses; fall back to IPv4 only.
    quinn::Endpoint::client(std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)))
        .or_else(|_| quinn::Endpoint::client(std::net::SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))))
        .map_err(DialError::Endpoint)
}
