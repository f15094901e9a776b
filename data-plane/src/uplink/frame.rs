//! What travels on uplink streams besides HTTP: length-prefixed protobuf frames (control
//! messages, stream headers), and the client a parent relays a request for.

use atrium_proto::v1 as pb;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::MAX_FRAME;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the stream cleanly before a frame.
    #[error("stream closed")]
    Closed,
    /// I/O failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    /// A length over the limit.
    #[error("frame of {0} bytes is over the {1}-byte limit")]
    TooLarge(usize, usize),
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

/// Reads one length-prefixed message of at most [`MAX_FRAME`] bytes, and nothing past it
/// (what follows a stream's header is the stream's HTTP). Memory grows with the bytes that
/// arrive, not with the length announced. Not cancel-safe: for a stream of frames read in
/// a `select!`, use a [`FrameReader`].
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin, M: Message + Default>(r: &mut R) -> Result<M, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(FrameError::TooLarge(n, MAX_FRAME));
    }
    let mut body = Vec::with_capacity(n.min(READ_CHUNK));
    (&mut *r).take(n as u64).read_to_end(&mut body).await?;
    if body.len() < n {
        return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(M::decode(body.as_slice())?)
}

/// How much buffer a frame being read may take ahead of the bytes that arrived.
const READ_CHUNK: usize = 16 * 1024;

/// The frames of a stream that carries nothing else (a control stream after its header),
/// read so that waiting for the next one can be cancelled at any point (a `select!` with a
/// timer) without losing a byte: a frame partly read stays in the buffer for the next call.
#[derive(Debug)]
pub struct FrameReader<R> {
    io: R,
    buf: bytes::BytesMut,
    max: usize,
}

impl<R: tokio::io::AsyncRead + Unpin> FrameReader<R> {
    /// Frames of at most `max` bytes from `io`.
    pub fn new(io: R, max: usize) -> Self {
        FrameReader { io, buf: bytes::BytesMut::new(), max }
    }

    /// The next message. Cancel-safe.
    pub async fn next<M: Message + Default>(&mut self) -> Result<M, FrameError> {
        loop {
            if let Some(m) = self.parse()? {
                return Ok(m);
            }
            // `read_buf` either reads into the buffer or not at all: cancelling it loses nothing.
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(if self.buf.is_empty() {
                    FrameError::Closed
                } else {
                    FrameError::Io(std::io::ErrorKind::UnexpectedEof.into())
                });
            }
        }
    }

    /// A whole frame off the buffer, if it holds one; else room for more.
    fn parse<M: Message + Default>(&mut self) -> Result<Option<M>, FrameError> {
        if self.buf.len() < 4 {
            self.buf.reserve(64);
            return Ok(None);
        }
        let n = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if n > self.max {
            return Err(FrameError::TooLarge(n, self.max));
        }
        if self.buf.len() < 4 + n {
            self.buf.reserve((4 + n - self.buf.len()).min(READ_CHUNK));
            return Ok(None);
        }
        let frame = self.buf.split_to(4 + n);
        Ok(Some(M::decode(&frame[4..])?))
    }
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

/// The request header that carries the client (address and scheme, see
/// [`uplink::frame::RelayedClient`]) to the child on pooled HTTP/1.1 uplink streams. The parent
/// sets it on every such request; a client's own `atrium-*` headers never leave the first
/// atrium hop (see `proxy::forward`), and the child takes it out before routing.
pub const CLIENT_HEADER: &str = "atrium-uplink-client";

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
        assert!(matches!(read_frame::<_, pb::StreamHeader>(&mut b).await, Err(FrameError::TooLarge(..))));
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await.unwrap();
        assert!(matches!(read_frame::<_, pb::StreamHeader>(&mut b).await, Err(FrameError::Malformed(_))));
        drop(a);
        assert!(matches!(read_frame::<_, pb::StreamHeader>(&mut b).await, Err(FrameError::Closed)));
        // A length that promises more than ever comes: an error, and no allocation of it.
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&[0, 3, 0, 0, 1, 2]).await.unwrap();
        drop(a);
        assert!(matches!(read_frame::<_, pb::StreamHeader>(&mut b).await, Err(FrameError::Io(_))));
    }

    #[tokio::test]
    async fn a_frame_reader_loses_nothing_when_a_wait_is_cancelled() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let mut r = FrameReader::new(b, 1024);
        let msg = pb::Poll { seq: 42 };
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&(msg.encoded_len() as u32).to_be_bytes());
        bytes.extend_from_slice(&msg.encode_to_vec());
        // The frame arrives one byte at a time, and every wait is cut short once.
        for byte in &bytes {
            a.write_all(std::slice::from_ref(byte)).await.unwrap();
            let cut = tokio::time::timeout(std::time::Duration::from_millis(5), r.next::<pb::Poll>()).await;
            if let Ok(got) = cut {
                assert_eq!(got.unwrap(), msg, "only the last byte completes the frame");
                break;
            }
        }
        // Two frames in one write, read as two.
        let twice = [bytes.clone(), bytes.clone()].concat();
        a.write_all(&twice).await.unwrap();
        assert_eq!(r.next::<pb::Poll>().await.unwrap(), msg);
        assert_eq!(r.next::<pb::Poll>().await.unwrap(), msg);
        // Over the limit: refused before any of it is read.
        a.write_all(&(4096u32).to_be_bytes()).await.unwrap();
        assert!(matches!(r.next::<pb::Poll>().await, Err(FrameError::TooLarge(4096, 1024))));
        // Garbage of the announced size: a decode error.
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let mut r = FrameReader::new(b, 1024);
        a.write_all(&[0, 0, 0, 2, 0xff, 0xff]).await.unwrap();
        assert!(matches!(r.next::<pb::Poll>().await, Err(FrameError::Malformed(_))));
        drop(a);
    }
}
