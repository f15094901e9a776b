//! HTTP/1.1 to upstreams and children, written and read on the requesting task.
//!
//! One client for every HTTP/1.1 connection atrium makes — plain and TLS upstreams, and
//! pooled uplink streams to children — over one pool ([`pool`]), which hands out only clean
//! connections (nothing unread, nothing arrived while idle).
//!
//! A pooled connection is checked out, the request head is written, then the request body
//! (with its length, or chunked) while the response head may already come back; the
//! response body then reads straight from the connection. Once the response body has been
//! read to its end — and the request body was written whole — the connection goes back to
//! the pool (so a small response returns it before the client even sees it). A body dropped
//! half-way, an answer that came before the request body was sent, or an upstream that sent
//! more than its response, closes it. A `101 Switching Protocols` hands the connection to
//! the caller as an [`Upgraded`] stream.
//!
//! A connection the server closed while it sat in the pool shows up as a failed write or
//! as end-of-stream before any response byte; the request is then sent once more on a new
//! connection — any request whose head could not be written, an idempotent bodiless one
//! otherwise.
//!
//! What is sent, and what the response head becomes, is the caller's ([`Outbound`]): a
//! request in `http` types answered with a header map ([`Pooled`]), or the proxy's direct
//! lane, which writes the head from the client's bytes and passes the response's lines on.

pub(crate) mod pool;
mod upgrade;

use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode, header};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub(crate) use pool::{Conn, Pool};
pub use upgrade::{UpgradeSlot, Upgraded};

use super::{Chunked, Decoded, chunk_size_line, encode_headers, header_map, ranges};
use crate::body::{Body, BoxError};
use crate::exchange::{UpstreamError, idempotent};
use crate::hop::lists;

/// Largest response head accepted from an upstream (502 past it).
const MAX_RESPONSE_HEAD: usize = 256 * 1024;

/// A byte pipe the client can speak HTTP/1.1 on: a TCP connection, a TLS one, or a QUIC
/// stream pair.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static> Io for T {}

/// Where a response body's end is.
#[derive(Debug, Clone, Copy)]
enum Framing {
    Length(u64),
    Chunked(Chunked),
    /// Until the server closes (the connection cannot be reused).
    Close,
}

/// How a request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    /// No body: the head says nothing of one (a `Content-Length: 0` the client sent stays).
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

impl BodyFraming {
    /// The framing of `body` (`None` for no body at all).
    fn of(body: Option<&Body>) -> BodyFraming {
        match body {
            None => BodyFraming::None,
            Some(b) if http_body::Body::is_end_stream(b) => BodyFraming::None,
            Some(b) => match http_body::Body::size_hint(b).exact() {
                Some(n) => BodyFraming::Length(n),
                None => BodyFraming::Chunked,
            },
        }
    }
}

/// Whether `req` can be sent by this client (a `CONNECT` tunnel cannot).
pub(crate) fn eligible(req: &Request<Body>) -> bool {
    req.method() != Method::CONNECT
}

/// Whether `req` asks to switch protocols (`Connection: upgrade` with an `Upgrade`).
pub(crate) fn asks_upgrade(h: &http::HeaderMap) -> bool {
    h.contains_key(header::UPGRADE) && h.get_all(header::CONNECTION).iter().any(|v| lists(v.as_bytes(), b"upgrade"))
}

/// The request head in origin form: a `Host` from `host` when the request has none, and the
/// body's framing in place of any the request carried.
pub(crate) fn encode_request(out: &mut Vec<u8>, req: &Request<Body>, host: &str, framing: BodyFraming) {
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.uri().path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !req.headers().contains_key(header::HOST) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if framing == BodyFraming::None {
        encode_headers(out, req.headers());
    } else {
        for (name, value) in req.headers() {
            if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
                continue;
            }
            super::push_line(out, name.as_str().as_bytes(), value.as_bytes());
        }
        match framing {
            BodyFraming::Length(n) => {
                super::push_line(out, b"content-length", itoa::Buffer::new().format(n).as_bytes())
            }
            _ => super::push_line(out, b"transfer-encoding", b"chunked"),
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// A request [`send`] can write, and what its response head becomes.
pub(crate) trait Outbound {
    /// The response head as the caller wants it.
    type Head;
    /// The request method (it decides whether a response has a body, and retries).
    fn method(&self) -> &Method;
    /// Writes the request head; `host` is the upstream's authority, `framing` the body's.
    fn encode(&self, out: &mut Vec<u8>, host: &str, framing: BodyFraming);
    /// When the request started, if the caller read the clock already (it serves the
    /// response-header deadline and the pool's idle ages).
    fn started(&self) -> Option<Instant> {
        None
    }
    /// The request body, taken once (none: bodiless).
    fn take_body(&mut self) -> Option<Body> {
        None
    }
    /// Whether the request asks to switch protocols.
    fn upgrade(&self) -> bool {
        false
    }
    /// Builds the response head from the parsed one.
    fn head(parsed: &ParsedHead<'_>) -> Result<Self::Head, HeadError>;
    /// The response head and its body together.
    type Reply;
    /// Puts the body (and, after a `101`, the switched connection) behind the head.
    fn reply(head: Self::Head, body: Body, upgraded: Option<Upgraded>) -> Self::Reply;
}

/// A response head as parsed: its status and version, and where its headers are in its
/// bytes (without the hop-by-hop headers this hop consumed, see [`parse_response`]).
pub(crate) struct ParsedHead<'a> {
    pub(crate) status: StatusCode,
    pub(crate) version: http::Version,
    pub(crate) bytes: &'a Bytes,
    pub(crate) headers: &'a [super::Range],
    /// The `Content-Length` (every copy agreed), unless chunked framing overrides it.
    pub(crate) length: Option<u64>,
}

impl ParsedHead<'_> {
    /// The headers' names and values, in order.
    pub(crate) fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone + '_ {
        self.headers.iter().map(|&r| super::raw_header(self.bytes, r))
    }
}

/// A request in `http` types; its header map is kept for a later head when it is dropped.
pub(crate) struct Pooled(pub(crate) Request<Body>);

impl Drop for Pooled {
    fn drop(&mut self) {
        super::recycle(std::mem::take(self.0.headers_mut()));
    }
}

impl Outbound for Pooled {
    type Head = Response<()>;
    type Reply = Response<Body>;

    fn method(&self) -> &Method {
        self.0.method()
    }

    fn encode(&self, out: &mut Vec<u8>, host: &str, framing: BodyFraming) {
        encode_request(out, &self.0, host, framing);
    }

    fn take_body(&mut self) -> Option<Body> {
        Some(std::mem::replace(self.0.body_mut(), crate::body::empty()))
    }

    fn upgrade(&self) -> bool {
        asks_upgrade(self.0.headers())
    }

    fn head(parsed: &ParsedHead<'_>) -> Result<Response<()>, HeadError> {
        let headers = header_map(parsed.bytes, parsed.headers).ok_or(HeadError::Header)?;
        let mut out = Response::new(());
        *out.status_mut() = parsed.status;
        *out.version_mut() = parsed.version;
        *out.headers_mut() = headers;
        Ok(out)
    }

    fn reply(head: Response<()>, body: Body, upgraded: Option<Upgraded>) -> Response<Body> {
        let mut r = head.map(|()| body);
        if let Some(u) = upgraded {
            r.extensions_mut().insert(UpgradeSlot::new(u));
        }
        r
    }
}

/// A parsed response head: what it became, its body's framing, and whether the connection
/// can carry another request afterwards.
#[derive(Debug)]
struct Answer<H> {
    head: H,
    framing: Framing,
    reusable: bool,
    /// A `101` to a request that asked to switch protocols.
    switched: bool,
}

/// What [`parse_response`] found.
#[derive(Debug)]
enum Step<H> {
    /// A final response head (consumed from the buffer).
    Final(Answer<H>),
    /// An informational (1xx) head, consumed and skipped.
    Informational,
    /// More bytes are needed.
    More,
}

/// Why an upstream's response head is refused (the request gets 502).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not an HTTP/1.x response head.
    #[error("invalid response head: {0}")]
    Syntax(String),
    /// More headers than accepted.
    #[error("more than {MAX_RESPONSE_HEADERS} response headers")]
    TooManyHeaders,
    /// A status outside 100-999.
    #[error("invalid status {0}")]
    Status(u16),
    /// A transfer coding other than `chunked` last.
    #[error("unsupported Transfer-Encoding {0:?}")]
    TransferEncoding(String),
    /// Its length or chunks.
    #[error(transparent)]
    Framing(#[from] super::FramingError),
    /// A header the `http` types refuse although the parser took it.
    #[error("invalid response header")]
    Header,
}

/// Headers accepted in an upstream's response head (hyper's default is 100).
const MAX_RESPONSE_HEADERS: usize = 128;

/// Parses a response head off `buf`.
///
/// The framing and reuse come from the raw headers. The hop-by-hop headers this hop
/// consumes (`Connection` with only `keep-alive`/`close`, `Keep-Alive`, `Transfer-Encoding`,
/// and `Content-Length` beside chunked framing, which overrides it) are left out of what
/// `O::head` gets: the proxy would remove them anyway. A `Connection` that names other
/// headers stays, so that the proxy removes those too.
fn parse_response<O: Outbound>(buf: &mut BytesMut, method: &Method, upgrade: bool) -> Result<Step<O::Head>, HeadError> {
    let mut raw = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Step::More),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(e) => return Err(HeadError::Syntax(e.to_string())),
    };
    let code = resp.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| HeadError::Status(code))?;
    // A 101 answers a request that asked to switch protocols: it is that request's final
    // answer. Any other 1xx (100 Continue, 103 Early Hints) is skipped.
    let switched = status == StatusCode::SWITCHING_PROTOCOLS && upgrade;
    if status == StatusCode::SWITCHING_PROTOCOLS && !upgrade {
        // What follows would be another protocol read as this response.
        return Err(HeadError::Status(101));
    }
    if status.is_informational() && !switched {
        let _ = buf.split_to(len);
        return Ok(Step::Informational);
    }
    let http10 = resp.version == Some(0);
    let HeaderScan { chunked, close, names_others, length, consumed } = HeaderScan::of(resp.headers)?;
    let mut r = super::spare_ranges();
    ranges(buf, resp.headers, &mut r);
    let mut i = 0;
    r.retain(|&h| {
        let keep = consumed & (1 << i) == 0 || (names_others && connection_line(buf, h));
        i += 1;
        keep
    });
    let bytes = buf.split_to(len).freeze();
    let version = if http10 { http::Version::HTTP_10 } else { http::Version::HTTP_11 };
    let declared = length.filter(|_| !chunked);
    let head = O::head(&ParsedHead { status, version, bytes: &bytes, headers: &r, length: declared });
    super::recycle_ranges(r);
    let framing = response_framing(method, status, switched, chunked, length);
    // A length beside chunked framing is overridden (RFC 9112, 6.3), but such an upstream
    // is not trusted with another request: the two could be read differently.
    let both = chunked && length.is_some();
    Ok(Step::Final(Answer { head: head?, framing, reusable: !http10 && !close && !both && !switched, switched }))
}

/// What a response's framing and reuse depend on, read off its raw headers.
struct HeaderScan {
    /// The body is chunked (`Transfer-Encoding` ending in `chunked`).
    chunked: bool,
    /// A `Connection` header lists `close`.
    close: bool,
    /// A `Connection` header names headers other than `close` and `keep-alive`.
    names_others: bool,
    /// The `Content-Length`, every value agreeing.
    length: Option<u64>,
    /// The headers this hop consumes, one bit per header by position.
    consumed: u128,
}

impl HeaderScan {
    /// Reads the framing and reuse headers of a response head; refuses lengths that
    /// disagree and transfer codings other than `chunked` last.
    #[inline]
    fn of(headers: &[httparse::Header<'_>]) -> Result<HeaderScan, HeadError> {
        let (mut chunked, mut close, mut names_others) = (false, false, false);
        // Every Content-Length value must agree (RFC 9112, 6.3): the body's end is where both
        // sides think.
        let mut length: Option<u64> = None;
        let mut consumed = 0u128;
        for (i, h) in headers.iter().enumerate() {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                super::read_length(h.value, &mut length)?;
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                // Only `chunked`, last (RFC 9112, 6.1), as Go's transport accepts: any other
                // coding makes the body's end something both sides could read differently.
                let last = h.value.rsplit(|&b| b == b',').next().map(<[u8]>::trim_ascii).unwrap_or_default();
                if !last.eq_ignore_ascii_case(b"chunked") || chunked {
                    return Err(HeadError::TransferEncoding(String::from_utf8_lossy(h.value).into_owned()));
                }
                chunked = true;
                consumed |= 1 << i;
            } else if name.eq_ignore_ascii_case(b"connection") {
                close |= lists(h.value, b"close");
                names_others |= h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii).any(|t| {
                    !t.is_empty() && !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive")
                });
                consumed |= 1 << i;
            } else if name.eq_ignore_ascii_case(b"keep-alive") {
                consumed |= 1 << i;
            }
        }
        if chunked {
            for (i, h) in headers.iter().enumerate() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    consumed |= 1 << i;
                }
            }
        }
        Ok(HeaderScan { chunked, close, names_others, length, consumed })
    }
}

/// How the body of a final response head is framed: none after a HEAD request, a switch,
/// 204 or 304; then chunked, the length, or until the connection closes.
#[inline]
fn response_framing(
    method: &Method,
    status: StatusCode,
    switched: bool,
    chunked: bool,
    length: Option<u64>,
) -> Framing {
    if *method == Method::HEAD || switched || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked(Chunked::Size)
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::Close
    }
}

/// Whether the header at `r` is a `Connection` header.
fn connection_line(base: &[u8], r: super::Range) -> bool {
    super::raw_header(base, r).0.eq_ignore_ascii_case(b"connection")
}

/// An upstream's response head, as this client parses it (for the fuzz targets): for a
/// GET and a HEAD, asking to switch protocols or not, and the body that follows.
pub fn fuzz_response_head(data: &[u8]) {
    for (method, upgrade) in [(Method::GET, false), (Method::HEAD, true)] {
        let mut buf = BytesMut::from(data);
        for _ in 0..8 {
            match parse_response::<Pooled>(&mut buf, &method, upgrade) {
                Ok(Step::Informational) => continue,
                Ok(Step::Final(a)) => {
                    if let Framing::Chunked(mut c) = a.framing {
                        for _ in 0..64 {
                            match c.decode(&mut buf) {
                                Ok(Decoded::Data(_)) => {}
                                _ => break,
                            }
                        }
                    }
                    break;
                }
                _ => break,
            }
        }
    }
}

/// Why an exchange failed, and whether the request may go again on a new connection.
struct Failed {
    kind: FailKind,
    retry: bool,
}

enum FailKind {
    /// The exchange broke.
    Exchange(String),
    /// No response head within the response-header timeout.
    Timeout,
}

impl Failed {
    fn new(reason: impl Into<String>, retry: bool) -> Failed {
        Failed { kind: FailKind::Exchange(reason.into()), retry }
    }
}

/// What an exchange gave: the response head, and whether the request body was written
/// whole (a connection whose answer came early cannot carry another request).
struct Exchanged<H> {
    answer: Answer<H>,
    body_done: bool,
}

/// Writes the request (head, then body while watching for an early answer) and reads the
/// response head on `conn`. The response-header timeout (`timeout`) runs from when the
/// request is written whole; `start` is when it began, for bodiless requests.
async fn exchange<IO: Io, O: Outbound>(
    conn: &mut Conn<IO>,
    req: &O,
    host: &str,
    body: &mut Option<Body>,
    reused: bool,
    timeout: Option<Duration>,
    start: Instant,
) -> Result<Exchanged<O::Head>, Failed> {
    let method = req.method();
    let upgrade = req.upgrade();
    let framing = BodyFraming::of(body.as_ref());
    conn.head.clear();
    req.encode(&mut conn.head, host, framing);
    if let Err(e) = conn.io.write_all(&conn.head).await {
        // Nothing reached the server: the request may go again (its body is untouched).
        return Err(Failed::new(e.to_string(), reused));
    }
    let mut body_done = framing == BodyFraming::None;
    let mut early = None;
    if !body_done {
        let b = body.take().unwrap_or_else(crate::body::empty);
        match send_body::<IO, O>(conn, b, framing, method, upgrade).await? {
            Some(answer) => early = Some(answer),
            None => body_done = true,
        }
    }
    if let Some(answer) = early {
        return Ok(Exchanged { answer, body_done });
    }
    // The request is out: the response head is due within the timeout. Only a bodiless
    // request can be sent again if the connection turns out closed (a body is gone once
    // sent).
    let at = if framing == BodyFraming::None { start } else { Instant::now() };
    let replayable = reused && framing == BodyFraming::None;
    let answer = match timeout {
        None => read_head::<IO, O>(&mut conn.io, &mut conn.buf, method, upgrade, replayable, None).await?,
        Some(d) => {
            let at = tokio::time::Instant::from_std(at) + d;
            let timer = conn.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            timer.as_mut().reset(at);
            read_head::<IO, O>(&mut conn.io, &mut conn.buf, method, upgrade, replayable, Some(timer.as_mut())).await?
        }
    };
    Ok(Exchanged { answer, body_done })
}

/// Reads until a final response head is in `buf`, or the timer fires. `replayable`: the
/// request may go again on a new connection if this one (a pooled one) turns out closed
/// before any answer.
async fn read_head<IO: Io, O: Outbound>(
    io: &mut IO,
    buf: &mut BytesMut,
    method: &Method,
    upgrade: bool,
    replayable: bool,
    mut timer: Option<Pin<&mut tokio::time::Sleep>>,
) -> Result<Answer<O::Head>, Failed> {
    let mut first = true;
    loop {
        if let Some(a) = parsed_head::<O>(buf, method, upgrade)? {
            return Ok(a);
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(8192);
        }
        let read = match timer.as_mut() {
            None => io.read_buf(buf).await,
            Some(t) => tokio::select! {
                biased;
                r = io.read_buf(buf) => r,
                () = t.as_mut() => return Err(Failed { kind: FailKind::Timeout, retry: false }),
            },
        };
        // The server closed a pooled connection without answering: it never saw this request.
        let unanswered = first && buf.is_empty() && replayable && idempotent(method);
        first = false;
        match read {
            Ok(0) => return Err(Failed::new("connection closed before a response", unanswered)),
            Err(e) => return Err(Failed::new(e.to_string(), unanswered)),
            Ok(_) => {}
        }
    }
}

/// A final response head off `buf`, if it holds one (informational ones are skipped).
fn parsed_head<O: Outbound>(
    buf: &mut BytesMut,
    method: &Method,
    upgrade: bool,
) -> Result<Option<Answer<O::Head>>, Failed> {
    while !buf.is_empty() {
        match parse_response::<O>(buf, method, upgrade) {
            Ok(Step::Informational) => continue,
            Ok(Step::Final(x)) => return Ok(Some(x)),
            Ok(Step::More) if buf.len() > MAX_RESPONSE_HEAD => {
                return Err(Failed::new("response head too large", false));
            }
            Ok(Step::More) => return Ok(None),
            Err(e) => return Err(Failed::new(e.to_string(), false)),
        }
    }
    Ok(None)
}

/// Writes `body` in `framing`, reading what the server sends meanwhile. `Ok(None)` once
/// the body is written whole; `Ok(Some(head))` when a final answer came first (the rest of
/// the body is then not sent, as an HTTP/1.1 server that answered does not read it).
async fn send_body<IO: Io, O: Outbound>(
    conn: &mut Conn<IO>,
    body: Body,
    framing: BodyFraming,
    method: &Method,
    upgrade: bool,
) -> Result<Option<Answer<O::Head>>, Failed> {
    let (mut rd, mut wr) = tokio::io::split(&mut conn.io);
    let buf = &mut conn.buf;
    let mut writing = std::pin::pin!(write_body(&mut wr, body, framing));
    loop {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(8192);
        }
        tokio::select! {
            written = &mut writing => {
                return written.map(|()| None).map_err(|e| Failed::new(e.to_string(), false));
            }
            read = rd.read_buf(buf) => {
                match read {
                    Ok(0) => return Err(Failed::new("connection closed while the request body was sent", false)),
                    Err(e) => return Err(Failed::new(e.to_string(), false)),
                    Ok(_) => {}
                }
                if let Some(a) = parsed_head::<O>(buf, method, upgrade)? {
                    return Ok(Some(Answer { reusable: false, ..a }));
                }
            }
        }
    }
}

/// Why a request body could not be sent whole.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    /// The connection failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The client's body failed (it went away, say).
    #[error("request body failed: {0}")]
    Body(BoxError),
    /// The body did not match its declared length.
    #[error("request body of {sent} bytes, {declared} declared")]
    Length {
        /// What was sent (so far).
        sent: u64,
        /// What its length said.
        declared: u64,
    },
}

/// Writes a request body: exactly its declared length, or as chunks and a last chunk
/// (with trailers, if it has any).
async fn write_body<W: AsyncWrite + Unpin>(w: &mut W, mut body: Body, framing: BodyFraming) -> Result<(), BodyError> {
    let chunked = framing == BodyFraming::Chunked;
    let declared = match framing {
        BodyFraming::Length(n) => Some(n),
        _ => None,
    };
    let mut sent = 0u64;
    let mut line = Vec::with_capacity(32);
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Body)?;
        let frame = match frame.into_data() {
            Ok(d) => d,
            Err(f) => {
                trailers = f.into_trailers().ok();
                continue;
            }
        };
        if frame.is_empty() {
            continue;
        }
        sent += frame.len() as u64;
        if let Some(n) = declared.filter(|n| sent > *n) {
            return Err(BodyError::Length { sent, declared: n });
        }
        if chunked {
            line.clear();
            chunk_size_line(&mut line, frame.len());
            w.write_all(&line).await?;
        }
        w.write_all(&frame).await?;
        if chunked {
            w.write_all(b"\r\n").await?;
        }
    }
    if let Some(n) = declared {
        if sent != n {
            return Err(BodyError::Length { sent, declared: n });
        }
    }
    if chunked {
        line.clear();
        line.extend_from_slice(b"0\r\n");
        if let Some(t) = &trailers {
            encode_headers(&mut line, t);
        }
        line.extend_from_slice(b"\r\n");
        w.write_all(&line).await?;
    }
    Ok(w.flush().await?)
}

/// Why [`send`] failed.
pub(crate) enum SendError {
    /// The connector's own error (no connection).
    Connect(UpstreamError),
    /// The exchange on a connection failed.
    Exchange(String),
    /// No response head within the timeout.
    Timeout,
}

/// Sends `req` (`host` is its `Host` when it has none) on a clean pooled connection of
/// `key` idle for less than `max_age`, or on one from `connect`; the response's body reads
/// from that connection, which goes back to the pool at the body's end when the exchange
/// was whole. A pooled connection the server had closed is replaced once (see the module
/// documentation); `connect` is told whether it is replacing one.
pub(crate) async fn send<K, IO, C, F, O>(
    pool: &Arc<Pool<K, IO>>,
    key: K,
    max_age: Duration,
    mut req: O,
    host: &str,
    timeout: Option<Duration>,
    mut connect: C,
) -> Result<O::Reply, SendError>
where
    K: Hash + Eq + Send + Sync + Unpin + 'static,
    IO: Io,
    C: FnMut(bool) -> F,
    F: Future<Output = Result<IO, UpstreamError>>,
    O: Outbound,
{
    // One clock read serves the deadline, the pool's idle ages and, for a response that
    // is complete at once, the time the connection goes back.
    let now = req.started().unwrap_or_else(Instant::now);
    let mut body = req.take_body().filter(|b| !http_body::Body::is_end_stream(b));
    let req = &req;
    let mut retried = false;
    let (Exchanged { answer: Answer { head: resp, framing, reusable, switched }, body_done }, mut conn) = loop {
        let (mut conn, reused) = match pool.checkout(&key, max_age, now) {
            Some(c) if !retried => (c, true),
            _ => (Conn::new(connect(retried).await.map_err(SendError::Connect)?), false),
        };
        match exchange(&mut conn, req, host, &mut body, reused, timeout, now).await {
            Ok(x) => break (x, conn),
            // The body is untouched (the head could not be written) or there is none.
            Err(f) if f.retry && !retried => {
                if let FailKind::Exchange(reason) = &f.kind {
                    tracing::debug!(error = %reason, "pooled connection was closed by its server; sending again");
                }
                retried = true;
            }
            Err(Failed { kind: FailKind::Timeout, .. }) => return Err(SendError::Timeout),
            Err(Failed { kind: FailKind::Exchange(e), .. }) => return Err(SendError::Exchange(e)),
        }
    };
    if switched && body_done {
        // The connection now carries another protocol: it is the caller's, bytes read
        // ahead included.
        let pre = conn.buf.split().freeze();
        let upgraded = upgrade::upgraded(conn.io, pre);
        return Ok(O::reply(resp, crate::body::empty(), Some(upgraded)));
    }
    let home = (reusable && body_done).then(|| (pool.clone(), key));
    let mut body = UpstreamBody { conn: Some(conn), framing, home };
    body.finish_if_done(Some(now));
    Ok(O::reply(resp, crate::body::boxed(body), None))
}

/// A response body read from the connection as the client asks for it.
struct UpstreamBody<K: Hash + Eq, IO> {
    conn: Option<Conn<IO>>,
    framing: Framing,
    /// Where the connection goes once the body is complete (none: it is closed).
    home: Option<(Arc<Pool<K, IO>>, K)>,
}

impl<K: Hash + Eq, IO: Io> UpstreamBody<K, IO> {
    /// At the body's end, gives the connection back (the pool refuses it if anything is
    /// left unread), idle since `at` (default: now).
    fn finish_if_done(&mut self, at: Option<Instant>) {
        let done = matches!(self.framing, Framing::Length(0) | Framing::Chunked(Chunked::End));
        if !done {
            return;
        }
        if let (Some(conn), Some((pool, key))) = (self.conn.take(), self.home.take()) {
            pool.checkin(key, conn, at.unwrap_or_else(Instant::now));
        }
    }

    /// Reads more into the connection's buffer: `Ok(0)` at end-of-stream.
    fn poll_fill(conn: &mut Conn<IO>, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if conn.buf.capacity() - conn.buf.len() < 1024 {
            conn.buf.reserve(16 * 1024);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf)
    }
}

impl<K: Hash + Eq + Send + Sync + Unpin + 'static, IO: Io> http_body::Body for UpstreamBody<K, IO> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            match &mut this.framing {
                Framing::Length(0) => {
                    this.finish_if_done(None);
                    return Poll::Ready(None);
                }
                Framing::Length(left) => {
                    if !conn.buf.is_empty() {
                        let n = (conn.buf.len() as u64).min(*left) as usize;
                        let data = conn.buf.split_to(n).freeze();
                        *left -= n as u64;
                        this.finish_if_done(None);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Chunked(state) => match state.decode(&mut conn.buf) {
                    Ok(Decoded::Data(d)) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                    Ok(Decoded::End(trailers)) => {
                        this.finish_if_done(None);
                        return Poll::Ready(if trailers.is_empty() {
                            None
                        } else {
                            Some(Ok(Frame::trailers(trailers)))
                        });
                    }
                    Ok(Decoded::More) => {}
                    Err(e) => {
                        this.conn = None;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                },
                Framing::Close => {
                    if !conn.buf.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(conn.buf.split().freeze()))));
                    }
                }
            }
            match Self::poll_fill(conn, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    let complete = matches!(this.framing, Framing::Close);
                    this.conn = None;
                    return Poll::Ready(if complete {
                        None
                    } else {
                        Some(Err("upstream closed the connection before the end of the body".into()))
                    });
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || matches!(self.framing, Framing::Length(0) | Framing::Chunked(Chunked::End))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    /// Parses a response head into a header map (`None`: more bytes needed).
    fn parse(raw: &[u8], method: &Method) -> Result<Option<Answer<Response<()>>>, HeadError> {
        let mut buf = BytesMut::from(raw);
        loop {
            match parse_response::<Pooled>(&mut buf, method, false)? {
                Step::Final(a) => return Ok(Some(a)),
                Step::Informational => continue,
                Step::More => return Ok(None),
            }
        }
    }

    #[test]
    fn response_heads_parse_with_their_framing() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nokNEXT"[..]);
        let Ok(Step::Final(Answer { head, framing, reusable, .. })) =
            parse_response::<Pooled>(&mut buf, &Method::GET, false)
        else {
            panic!("a complete head")
        };
        assert_eq!(head.status(), 200);
        assert_eq!(head.headers().get("x-a").unwrap(), "1");
        assert!(matches!(framing, Framing::Length(2)));
        assert!(reusable);
        assert_eq!(&buf[..], b"okNEXT", "the head is consumed, the body stays");
        let framing = |raw: &[u8], m: &Method| parse(raw, m).unwrap().unwrap().framing;

        assert!(matches!(
            framing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", &Method::GET),
            Framing::Chunked(_)
        ));
        // HEAD and 304 have no body whatever they declare; no length means until close.
        assert!(matches!(framing(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", &Method::HEAD), Framing::Length(0)));
        assert!(matches!(framing(b"HTTP/1.1 304 Not Modified\r\n\r\n", &Method::GET), Framing::Length(0)));
        assert!(matches!(framing(b"HTTP/1.0 200 OK\r\n\r\nall", &Method::GET), Framing::Close));
        // An informational head is skipped.
        let a = parse(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", &Method::GET);
        assert_eq!(a.unwrap().unwrap().head.status(), 204);

        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Len", &Method::GET).unwrap().is_none());
        assert!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", &Method::GET)
                .unwrap_err()
                .to_string()
                .contains("Content-Length")
        );
        let e = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n", &Method::GET).unwrap_err();
        assert!(e.to_string().contains("conflicting"));
        let head = parse(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nContent-Length: 7\r\nX-A: 1\r\n\r\n",
            &Method::GET,
        )
        .unwrap()
        .unwrap();
        assert!(!head.reusable && matches!(head.framing, Framing::Chunked(_)), "a length beside chunked: not reused");
        let names: Vec<&str> = head.head.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["x-a"],
            "the hop-by-hop headers this hop consumed are left out, and a length beside chunked"
        );
        // A Connection that names another header stays, for the proxy to remove both.
        let head =
            parse(b"HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\n\r\n", &Method::GET).unwrap().unwrap();
        assert!(!head.reusable, "Connection: close");
        assert!(head.head.headers().contains_key("connection") && head.head.headers().contains_key("x-hop"));
        assert!(
            !parse(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", &Method::GET).unwrap().unwrap().reusable,
            "HTTP/1.0"
        );
        assert!(matches!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok", &Method::GET),
            Framing::Length(2)
        ));
        assert!(parse(b"SMTP ready\r\n\r\n", &Method::GET).is_err());
    }

    /// An [`Outbound`] whose response heads are passed through as bytes.
    struct PassThrough(Request<Body>);

    impl Outbound for PassThrough {
        type Head = super::super::Passed;
        type Reply = super::super::Passed;
        fn method(&self) -> &Method {
            self.0.method()
        }
        fn encode(&self, out: &mut Vec<u8>, host: &str, framing: BodyFraming) {
            encode_request(out, &self.0, host, framing);
        }
        fn head(parsed: &ParsedHead<'_>) -> Result<Self::Head, HeadError> {
            Ok(super::super::Passed::from_head(parsed))
        }
        fn reply(mut head: Self::Head, body: Body, _: Option<Upgraded>) -> Self::Reply {
            head.body = body;
            head
        }
    }

    #[test]
    fn passed_heads_keep_their_lines_minus_the_hop_by_hop_ones() {
        let pass = |raw: &[u8], m: &Method| {
            let mut buf = BytesMut::from(raw);
            let Ok(Step::Final(a)) = parse_response::<PassThrough>(&mut buf, m, false) else {
                panic!("a complete head")
            };
            a.head
        };
        let p = pass(
            b"HTTP/1.1 200 OK\r\nServer: up\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
              Proxy-Authenticate: Basic\r\nX-Forwarded-Proto: kept\r\nContent-Length: 2, 2\r\nDate: Thu, 26 Nov 2026 08:00:00 GMT\r\n\r\nok",
            &Method::GET,
        );
        assert_eq!(p.status, 200);
        assert_eq!(
            String::from_utf8_lossy(&p.lines),
            "Server: up\r\nX-Forwarded-Proto: kept\r\nDate: Thu, 26 Nov 2026 08:00:00 GMT\r\ncontent-length: 2\r\n"
        );
        assert!(p.has_date && p.declared == Some(2));
        // Chunked framing overrides a length, which is not passed on; HEAD keeps the length.
        let p =
            pass(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\nX-A: 1\r\n\r\n", &Method::GET);
        assert_eq!(String::from_utf8_lossy(&p.lines), "X-A: 1\r\n");
        assert!(!p.has_date && p.declared.is_none());
        let p = pass(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", &Method::HEAD);
        assert_eq!(String::from_utf8_lossy(&p.lines), "content-length: 9\r\n");
    }

    /// A response head as a client gets it: names in lower case, sorted, any `Date` value
    /// blanked (the clock's).
    fn lines_of(head: &[u8]) -> Vec<String> {
        let text = String::from_utf8_lossy(head);
        let mut lines: Vec<String> = text
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(|l| match l.split_once(": ") {
                Some((n, _)) if n.eq_ignore_ascii_case("date") => "date: -".to_string(),
                Some((n, v)) => format!("{}: {v}", n.to_ascii_lowercase()),
                None => l.to_string(),
            })
            .collect();
        lines.sort();
        lines
    }

    #[test]
    fn passed_heads_are_what_the_header_map_path_writes_for_generated_heads() {
        use super::super::server::{encode_head, encode_passed};
        const NAMES: &[&str] = &[
            "connection",
            "keep-alive",
            "transfer-encoding",
            "content-length",
            "date",
            "server",
            "x-a",
            "x-hop",
            "proxy-authenticate",
            "te",
            "trailer",
            "upgrade",
            "set-cookie",
            "x-forwarded-for",
        ];
        let mut rng = crate::test_rng::Lcg(11);
        let mut compared = 0;
        for case in 0..3000 {
            let status = rng.pick(&["200 OK", "204 No Content", "304 Not Modified", "404 Not Found", "201 Created"]);
            let mut raw = format!("HTTP/1.{} {status}\r\n", rng.next() % 2);
            for _ in 0..rng.next() % 8 {
                let name = rng.pick(NAMES);
                let value = match name {
                    "connection" => rng.tokens(&["keep-alive", "close", "x-hop", "x-a", "te", "x-forwarded-for", ""]),
                    "transfer-encoding" => rng.pick(&["chunked", "gzip, chunked", "gzip"]).to_string(),
                    "content-length" => rng.pick(&["2", "2, 2", " 2"]).to_string(),
                    "te" => rng.pick(&["trailers", "gzip"]).to_string(),
                    "date" => "Thu, 26 Nov 2026 08:00:00 GMT".to_string(),
                    _ => rng.pick(&["v1", "a, b"]).to_string(),
                };
                raw.push_str(&format!("{}: {value}\r\n", rng.cased(name)));
            }
            raw.push_str("\r\n");
            let method = if rng.next().is_multiple_of(4) { Method::HEAD } else { Method::GET };
            let head_request = method == Method::HEAD;
            // The general lane: a header map, stripped as the proxy does, encoded.
            let Ok(Step::Final(a)) = parse_response::<Pooled>(&mut BytesMut::from(raw.as_bytes()), &method, false)
            else {
                continue;
            };
            let size = match a.framing {
                Framing::Length(n) => Some(n),
                _ => None,
            };
            let (mut parts, ()) = a.head.into_parts();
            crate::hop::strip_hop_by_hop(&mut parts.headers, None);
            let mut want = Vec::new();
            let want_framing = encode_head(&mut want, &mut parts, head_request, size);
            // The direct lane: the lines passed through.
            let Ok(Step::Final(p)) = parse_response::<PassThrough>(&mut BytesMut::from(raw.as_bytes()), &method, false)
            else {
                panic!("case {case}: the same head parses for both lanes: {raw:?}")
            };
            let mut got = Vec::new();
            let got_framing = encode_passed(&mut got, &p.head, head_request);
            assert_eq!(got_framing, want_framing, "case {case}: {raw:?}");
            assert_eq!(lines_of(&got), lines_of(&want), "case {case}: {raw:?}");
            compared += 1;
        }
        assert!(compared > 1000, "only {compared} generated heads parsed");
    }

    #[test]
    fn request_heads_carry_origin_form_and_host() {
        let mut req = Request::new(crate::body::empty());
        *req.uri_mut() = "http://backend:8080/a?b=1".parse().unwrap();
        req.headers_mut().insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        let mut out = Vec::new();
        encode_request(&mut out, &req, "backend:8080", BodyFraming::None);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /a?b=1 HTTP/1.1\r\nhost: backend:8080\r\nx-forwarded-for: 10.0.0.1\r\n\r\n"
        );
        assert!(eligible(&req));
        *req.method_mut() = Method::CONNECT;
        assert!(!eligible(&req));
        // A body's framing replaces whatever framing the request carried.
        *req.method_mut() = Method::POST;
        req.headers_mut().insert("content-length", "999".parse().unwrap());
        req.headers_mut().insert("transfer-encoding", "gzip".parse().unwrap());
        for (framing, line) in
            [(BodyFraming::Length(5), "content-length: 5"), (BodyFraming::Chunked, "transfer-encoding: chunked")]
        {
            let mut out = Vec::new();
            encode_request(&mut out, &req, "b", framing);
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains(&format!("{line}\r\n")) && !text.contains("999") && !text.contains("gzip"), "{text}");
        }
    }

    /// What a scripted test server does after each request it reads.
    #[derive(Clone, Copy, PartialEq)]
    enum Script {
        /// Answers with the body it read (`got N: <body>`).
        Echo,
        /// Answers, then writes a second, unsolicited response 50 ms later.
        Stray,
        /// Answers 413 as soon as the head is in, without reading the body.
        Early,
        /// Answers 101, then echoes raw bytes.
        Switch,
    }

    /// Reads one request head off `io` (lower-cased; what follows stays in `buf`); `None` at
    /// EOF.
    async fn read_request(io: &mut tokio::io::DuplexStream, buf: &mut Vec<u8>) -> Option<String> {
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(e) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break e + 4;
            }
            let n = io.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        buf.drain(..end);
        Some(head)
    }

    /// A scripted server on the other end of a pipe (requests until the client closes).
    fn scripted(script: Script) -> tokio::io::DuplexStream {
        scripted_telling(script, None)
    }

    /// [`scripted`], adding a permit to `strays` each time it has sent a stray response.
    fn scripted_telling(script: Script, strays: Option<Arc<tokio::sync::Semaphore>>) -> tokio::io::DuplexStream {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Some(head) = read_request(&mut server, &mut buf).await {
                if script == Script::Early {
                    let _ = server.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n").await;
                    // Keep the connection open, reading nothing more.
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    return;
                }
                if script == Script::Switch {
                    let _ = server
                        .write_all(
                            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\nhello",
                        )
                        .await;
                    server.write_all(&buf).await.unwrap();
                    while let Ok(n) = server.read(&mut chunk).await {
                        if n == 0 || server.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                    }
                    return;
                }
                let mut body = Vec::new();
                if let Some(len) = head.lines().find_map(|l| l.strip_prefix("content-length: ")) {
                    let len: usize = len.trim().parse().unwrap();
                    while buf.len() < len {
                        let n = server.read(&mut chunk).await.unwrap();
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    body = buf.drain(..len).collect();
                } else if head.contains("transfer-encoding: chunked") {
                    let mut st = super::super::Chunked::Size;
                    let mut b = BytesMut::from(&buf[..]);
                    buf.clear();
                    loop {
                        match st.decode(&mut b).unwrap() {
                            super::super::Decoded::Data(d) => body.extend_from_slice(&d),
                            super::super::Decoded::End(_) => break,
                            super::super::Decoded::More => {
                                let n = server.read(&mut chunk).await.unwrap();
                                b.extend_from_slice(&chunk[..n]);
                            }
                        }
                    }
                    buf.extend_from_slice(&b);
                }
                let answer = format!("got {}: {}", body.len(), String::from_utf8_lossy(&body));
                let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{answer}", answer.len());
                if server.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
                if script == Script::Stray {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let _ = server.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nEVIL").await;
                    if let Some(s) = &strays {
                        s.add_permits(1);
                    }
                }
            }
        });
        client
    }

    fn post(body: Body) -> Pooled {
        let mut r = Request::new(body);
        *r.method_mut() = Method::POST;
        Pooled(r)
    }

    async fn text(r: Response<Body>) -> String {
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn bodies_go_with_their_length_or_chunked_and_the_connection_is_reused() {
        let pool: Arc<Pool<u8, tokio::io::DuplexStream>> = Arc::new(Pool::new(4));
        let dials = std::sync::atomic::AtomicUsize::new(0);
        let connect = |_| {
            dials.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Ok(scripted(Script::Echo)))
        };
        let t = Some(Duration::from_secs(10));
        let r = send(&pool, 1, Duration::from_secs(60), post(crate::body::full("hello")), "up", t, connect).await;
        assert_eq!(text(r.ok().unwrap()).await, "got 5: hello");
        // A body of unknown length: chunked, trailers and all.
        let frames = futures_util::stream::iter(vec![
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::data(Bytes::from_static(b"cde"))),
        ]);
        let streamed = crate::body::boxed(http_body_util::StreamBody::new(frames));
        let r = send(&pool, 1, Duration::from_secs(60), post(streamed), "up", t, connect).await;
        assert_eq!(text(r.ok().unwrap()).await, "got 5: abcde");
        assert_eq!(dials.load(Ordering::Relaxed), 1, "one connection carried both");
    }

    #[tokio::test]
    async fn a_request_whose_body_went_out_is_never_sent_again_without_it() {
        let pool: Arc<Pool<u8, tokio::io::DuplexStream>> = Arc::new(Pool::new(4));
        // A pooled connection whose server reads the whole request and closes unanswered.
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let seen = tokio::spawn(async move {
            let mut all = Vec::new();
            let mut chunk = [0u8; 4096];
            while !all.ends_with(b"the new content") {
                match server.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => all.extend_from_slice(&chunk[..n]),
                }
            }
            drop(server);
            all
        });
        pool.checkin(1, Conn::new(client), Instant::now());
        let dials = std::sync::atomic::AtomicUsize::new(0);
        let connect = |_| {
            dials.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Ok(scripted(Script::Echo)))
        };
        let mut put = Request::new(crate::body::full("the new content"));
        *put.method_mut() = Method::PUT;
        let r =
            send(&pool, 1, Duration::from_secs(60), Pooled(put), "up", Some(Duration::from_secs(10)), connect).await;
        assert!(matches!(r, Err(SendError::Exchange(_))), "the failure shows: the body cannot be sent again");
        assert_eq!(dials.load(Ordering::Relaxed), 0, "no second connection, so no bodiless PUT");
        let got = String::from_utf8(seen.await.unwrap()).unwrap();
        assert!(got.ends_with("the new content"), "{got}");
    }

    #[tokio::test]
    async fn an_answer_before_the_body_is_sent_is_returned_and_the_connection_closed() {
        let pool: Arc<Pool<u8, tokio::io::DuplexStream>> = Arc::new(Pool::new(4));
        let connect = |_| std::future::ready(Ok(scripted(Script::Early)));
        // A body that never ends: only the early answer can end the exchange.
        let endless = crate::body::boxed(http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, BoxError>,
        >()));
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            send(&pool, 1, Duration::from_secs(60), post(endless), "up", Some(Duration::from_secs(10)), connect),
        )
        .await
        .expect("the early answer ends the exchange");
        let r = r.ok().unwrap();
        assert_eq!(r.status(), 413);
        assert_eq!(text(r).await, "");
        assert_eq!(pool.idle_count(&1), 0, "a connection whose request was cut short is not reused");
    }

    #[tokio::test]
    async fn an_unsolicited_response_never_answers_the_next_request() {
        let pool: Arc<Pool<u8, tokio::io::DuplexStream>> = Arc::new(Pool::new(4));
        let strays = Arc::new(tokio::sync::Semaphore::new(0));
        let dials = std::sync::atomic::AtomicUsize::new(0);
        let connect = |_| {
            dials.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Ok(scripted_telling(Script::Stray, Some(strays.clone()))))
        };
        let get = || Pooled(Request::new(crate::body::empty()));
        for round in 0..3 {
            let r = send(&pool, 1, Duration::from_secs(60), get(), "up", Some(Duration::from_secs(10)), connect).await;
            assert_eq!(text(r.ok().unwrap()).await, "got 0: ", "round {round}: the real answer, never EVIL");
            assert_eq!(pool.idle_count(&1), 1, "round {round}: the connection went back after a whole exchange");
            // The server writes a second response into the idle connection.
            let sent = tokio::time::timeout(Duration::from_secs(10), strays.acquire()).await.unwrap().unwrap();
            sent.forget();
        }
        assert_eq!(dials.load(Ordering::Relaxed), 3, "every connection that spoke while idle was replaced");
        assert_eq!(pool.discarded(), 2);
    }

    #[tokio::test]
    async fn a_switched_connection_is_handed_over_with_what_was_read_ahead() {
        let pool: Arc<Pool<u8, tokio::io::DuplexStream>> = Arc::new(Pool::new(4));
        let connect = |_| std::future::ready(Ok(scripted(Script::Switch)));
        let mut req = Request::new(crate::body::empty());
        req.headers_mut().insert("connection", "upgrade".parse().unwrap());
        req.headers_mut().insert("upgrade", "echo".parse().unwrap());
        let mut r = send(&pool, 1, Duration::from_secs(60), Pooled(req), "up", Some(Duration::from_secs(10)), connect)
            .await
            .ok()
            .unwrap();
        assert_eq!(r.status(), 101);
        let mut up = UpgradeSlot::take(&mut r).expect("the switched connection");
        let mut got = [0u8; 5];
        up.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello", "bytes that came with the 101 are not lost");
        up.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        up.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"ping");
        assert_eq!(pool.idle_count(&1), 0);
    }

    #[test]
    fn responses_with_many_headers_parse_up_to_the_limit() {
        let head = |n: usize| {
            let mut h = String::from("HTTP/1.1 200 OK\r\n");
            for i in 0..n {
                h.push_str(&format!("set-cookie: c{i}=1\r\n"));
            }
            h + "content-length: 0\r\n\r\n"
        };
        let a = parse(head(100).as_bytes(), &Method::GET).unwrap().unwrap();
        assert_eq!(a.head.headers().get_all("set-cookie").iter().count(), 100);
        assert!(matches!(parse(head(200).as_bytes(), &Method::GET), Err(HeadError::TooManyHeaders)));
    }

    #[test]
    fn upstream_framing_that_could_be_read_two_ways_is_refused() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        ] {
            assert!(parse(raw, &Method::GET).is_err(), "{}", String::from_utf8_lossy(raw));
        }
        // A length beside chunked: chunked wins, and the connection is not reused.
        let a = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", &Method::GET)
            .unwrap()
            .unwrap();
        assert!(matches!(a.framing, Framing::Chunked(_)) && !a.reusable);
        // A 101 answers only a request that asked to switch; otherwise it is refused.
        let mut buf = BytesMut::from(&b"HTTP/1.1 101 Switching Protocols\r\n\r\n"[..]);
        assert!(matches!(parse_response::<Pooled>(&mut buf, &Method::GET, false), Err(HeadError::Status(101))));
        let mut buf = BytesMut::from(&b"HTTP/1.1 101 Switching Protocols\r\n\r\n"[..]);
        let Ok(Step::Final(a)) = parse_response::<Pooled>(&mut buf, &Method::GET, true) else { panic!("final") };
        assert!(a.switched && !a.reusable);
    }

    /// A server on the other end of a duplex pipe: answers `ok` to every request head, or
    /// reads the first one and closes without answering.
    fn server(answer: bool) -> tokio::io::DuplexStream {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            loop {
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.drain(..end + 4);
                    if !answer {
                        return;
                    }
                    let _ = server.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                }
                match server.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        });
        client
    }

    #[tokio::test]
    async fn a_pooled_connection_the_server_closed_is_replaced_once_for_idempotent_requests() {
        use http_body_util::BodyExt;
        let pool: Arc<Pool<u8, tokio::io::DuplexStream>> = Arc::new(Pool::new(4));
        let get = || Pooled(Request::new(crate::body::empty()));
        let post = || {
            let mut post = Request::new(crate::body::empty());
            *post.method_mut() = Method::POST;
            Pooled(post)
        };
        let dials = std::sync::Mutex::new(Vec::new());
        let connect = |retry: bool| {
            dials.lock().unwrap().push(retry);
            std::future::ready(Ok(server(true)))
        };

        // Pooled, but its server reads the request and closes: GET goes again, once.
        pool.checkin(1, Conn::new(server(false)), Instant::now());
        let resp = match send(&pool, 1, Duration::from_secs(60), get(), "up", None, connect).await {
            Ok(r) => r,
            Err(_) => panic!("GET was not sent again"),
        };
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(*dials.lock().unwrap(), [true], "one new connection, told it replaces one");
        // The body was read to its end: the connection is back in the pool and reused.
        let resp = send(&pool, 1, Duration::from_secs(60), get(), "up", None, connect).await;
        assert!(resp.is_ok_and(|r| r.status() == 200));
        assert_eq!(dials.lock().unwrap().len(), 1, "the pooled connection was reused");

        // POST may have been acted on: its failure shows, nothing is sent again.
        pool.retain(|_| false);
        pool.checkin(1, Conn::new(server(false)), Instant::now());
        let failed = send(&pool, 1, Duration::from_secs(60), post(), "up", None, connect).await;
        assert!(matches!(failed, Err(SendError::Exchange(ref e)) if e.contains("closed")));
        assert_eq!(dials.lock().unwrap().len(), 1);

        // Past its idle age a pooled connection is not used at all.
        pool.checkin(1, Conn::new(server(false)), Instant::now());
        let resp = send(&pool, 1, Duration::ZERO, post(), "up", None, connect).await;
        assert!(resp.is_ok_and(|r| r.status() == 200));
        assert!(!dials.lock().unwrap()[1], "a fresh dial, not a replacement");
    }

    #[tokio::test]
    async fn no_response_head_within_the_timeout_is_a_timeout_and_the_timer_is_reused() {
        let pool: Arc<Pool<u8, tokio::io::DuplexStream>> = Arc::new(Pool::new(4));
        let get = || Pooled(Request::new(crate::body::empty()));
        // A server that reads the request and never answers (it keeps its end open).
        let (client, mut silent) = tokio::io::duplex(1 << 16);
        let held = tokio::spawn(async move {
            let mut sink = vec![0u8; 1024];
            while silent.read(&mut sink).await.is_ok_and(|n| n > 0) {}
        });
        let mut once = Some(client);
        let connect = |_| {
            std::future::ready(
                once.take().ok_or(UpstreamError::Connect { server: "up".into(), reason: "one connection only".into() }),
            )
        };
        let start = Instant::now();
        let r = send(&pool, 1, Duration::from_secs(60), get(), "up", Some(Duration::from_millis(50)), connect).await;
        assert!(matches!(r, Err(SendError::Timeout)));
        assert!(start.elapsed() < Duration::from_secs(5));
        held.abort();

        // On a pooled connection, the same timer is moved forward request after request.
        let dials = std::sync::atomic::AtomicUsize::new(0);
        let connect = |_| {
            dials.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Ok(server(true)))
        };
        for _ in 0..3 {
            let r = send(&pool, 2, Duration::from_secs(60), get(), "up", Some(Duration::from_secs(5)), connect).await;
            let body = http_body_util::BodyExt::collect(r.ok().unwrap().into_body()).await.unwrap().to_bytes();
            assert_eq!(body, "ok");
        }
        assert_eq!(dials.load(Ordering::Relaxed), 1);
    }
}
