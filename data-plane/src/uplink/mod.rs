//! Uplinks, the parent's side and what both sides share: mutual-TLS QUIC between parents
//! and children, length-prefixed protobuf frames, and HTTP over one QUIC stream per request.
//! - [`frame`]: control frames, stream headers, the client a parent relays;
//! - [`tls`]: the QUIC server (agent) and client (parent) configurations, role-checked;
//! - [`dial`]: opening a connection to a child;
//! - [`pick`]: which child takes a request for `X@multicluster`;
//! - [`client`]: the parent's pooled connections and streams, and passive health.
//!
//! The agent serves the other side (`atrium_agent::server`); the control plane's registry
//! of children (`atrium_control_plane::children`) holds one control stream per child.
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

pub mod client;
pub mod dial;
pub mod frame;
pub mod pick;
pub mod tls;

use std::time::Duration;

pub use client::UplinkClient;

/// ALPN of the uplink protocol.
pub const ALPN: &[u8] = b"atrium-uplink/1";
/// Largest frame accepted by default (`--uplink-max-frame-bytes`); anything larger is a
/// protocol error. A `Register` of a child with a thousand uplinks is about 60 KiB.
pub const MAX_FRAME: usize = 256 * 1024;

/// QUIC settings of uplinks.
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
    /// Largest control frame accepted.
    pub max_frame: usize,
    /// On a parent: one QUIC connection per child for the whole data plane, shared by its
    /// worker threads, instead of one per worker thread and child.
    pub shared_connections: bool,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            keep_alive: Duration::from_millis(250),
            idle_timeout: Duration::from_millis(900),
            max_streams: 1024,
            stream_idle: Duration::from_secs(30),
            max_frame: MAX_FRAME,
            shared_connections: false,
        }
    }
}
