//! One exchange with an upstream (a server, or a child through an uplink): how it fails,
//! and whether a request may be sent again. Shared by every client (HTTP/1.1, HTTP/2,
//! uplinks) and the proxy that answers for them.

use std::time::Duration;

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
    /// The connection died after the request went out (502): the server may have acted
    /// on it, so only an idempotent request may be sent again elsewhere.
    #[error("{server} went away after the request was sent: {reason}")]
    Lost {
        /// The server.
        server: String,
        /// Why.
        reason: String,
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

/// Methods that may be sent twice without changing their effect (RFC 9110, 9.2.2).
pub fn idempotent(m: &http::Method) -> bool {
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
