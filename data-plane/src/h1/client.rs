//! Bodiless requests to plain HTTP/1.1 upstreams, written and read on the requesting task.
//!
//! A pooled connection is checked out, the request head is written, the response head is
//! read and parsed, and the response body reads straight from the connection. Once the body
//! has been read to its end, the connection goes back to the pool (so a small response
//! returns it before the client even sees it). A body dropped half-way closes it.
//!
//! A connection the server closed while it sat in the pool shows up as a failed write or
//! as end-of-stream before any response byte; the request is then sent once more on a new
//! connection — any request whose write failed, an idempotent one otherwise.
//!
//! What is sent, and what the response head becomes, is the caller's ([`Outbound`]): a
//! request in `http` types answered with a header map ([`Pooled`]), or the proxy's direct
//! lane, which writes the head from the client's bytes and passes the response's lines on.

use std::collections::HashMap;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, header};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Chunked, Decoded, MAX_HEADERS, encode_headers, header_map, lists, ranges};
use crate::body::{Body, BoxError};
use crate::upstream::{UpstreamConfig, UpstreamError, connect_tcp, idempotent};

/// Largest response head accepted from an upstream (502 past it).
const MAX_RESPONSE_HEAD: usize = 256 * 1024;

/// A byte pipe the client can speak HTTP/1.1 on: a TCP connection, or a QUIC stream pair.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static> Io for T {}

/// A connection and what was read from it but not consumed yet.
pub(crate) struct Conn<IO> {
    io: IO,
    buf: BytesMut,
    /// The request head being written (kept: no allocation per request).
    head: Vec<u8>,
    /// The response-header timer, made once and moved forward for each request: pushing a
    /// deadline later is an atomic update, where a timer per request is a timer-wheel
    /// insertion and removal.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> Conn<IO> {
    /// Wraps a fresh connection.
    pub(crate) fn new(io: IO) -> Self {
        Conn { io, buf: BytesMut::with_capacity(8192), head: Vec::with_capacity(512), timer: None }
    }
}

/// Idle connections of one key, with when each was put back.
type Idle<IO> = Vec<(Conn<IO>, Instant)>;

/// Idle connections by key (an upstream's authority; a child and uplink for uplinks).
pub(crate) struct Pool<K, IO> {
    // Keys come from the configuration, not from clients: a fast hash is safe here.
    idle: Mutex<HashMap<K, Idle<IO>, foldhash::fast::RandomState>>,
    /// While non-zero, connections are closed after use instead of pooled.
    paused: AtomicUsize,
    /// Idle connections kept per key.
    max_idle: usize,
}

impl<K: Hash + Eq, IO> Pool<K, IO> {
    /// An empty pool keeping at most `max_idle` connections per key.
    pub(crate) fn new(max_idle: usize) -> Self {
        Pool { idle: Mutex::new(HashMap::default()), paused: AtomicUsize::new(0), max_idle }
    }

    /// A connection of `key` idle for less than `max_age` at `now`.
    fn checkout(&self, key: &K, max_age: Duration, now: Instant) -> Option<Conn<IO>> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(key)?;
        while let Some((c, since)) = list.pop() {
            if now.saturating_duration_since(since) < max_age {
                return Some(c);
            }
        }
        None
    }

    /// Pools `c`, idle since `at`.
    fn checkin(&self, key: K, c: Conn<IO>, at: Instant) {
        if self.paused.load(Ordering::Relaxed) > 0 {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            let list = idle.entry(key).or_default();
            if list.len() < self.max_idle {
                list.push((c, at));
            }
        }
    }

    /// Closes the idle connections of every key `keep` refuses.
    pub(crate) fn retain(&self, keep: impl Fn(&K) -> bool) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|k, _| keep(k));
        }
    }

    /// Stops pooling until the guard is dropped (connections are closed after use).
    pub(crate) fn pause(&self) -> impl Drop + '_ {
        struct Resume<'a>(&'a AtomicUsize);
        impl Drop for Resume<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.paused.fetch_add(1, Ordering::Relaxed);
        Resume(&self.paused)
    }
}

/// Where a response body's end is.
#[derive(Debug, Clone, Copy)]
enum Framing {
    Length(u64),
    Chunked(Chunked),
    /// Until the server closes (the connection cannot be reused).
    Close,
}

/// Whether `req` can take this path: no body, no protocol switch.
pub(crate) fn eligible(req: &Request<Body>) -> bool {
    http_body::Body::is_end_stream(req.body())
        && req.method() != Method::CONNECT
        && !req.headers().contains_key(header::UPGRADE)
}

/// The request head in origin form; a `Host` from `host` when the request has none.
pub(crate) fn encode_request(out: &mut Vec<u8>, req: &Request<Body>, host: &str) {
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.uri().path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !req.headers().contains_key(header::HOST) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    encode_headers(out, req.headers());
    out.extend_from_slice(b"\r\n");
}

/// A request [`send`] can write, and what its response head becomes.
pub(crate) trait Outbound {
    /// The response head as the caller wants it.
    type Head;
    /// The request method (it decides whether a response has a body, and retries).
    fn method(&self) -> &Method;
    /// Writes the request head; `host` is the upstream's authority.
    fn encode(&self, out: &mut Vec<u8>, host: &str);
    /// When the request started, if the caller read the clock already (it serves the
    /// response-header deadline and the pool's idle ages).
    fn started(&self) -> Option<Instant> {
        None
    }
    /// Builds the response head from the parsed one.
    fn head(parsed: &ParsedHead<'_>) -> Result<Self::Head, String>;
    /// The response head and its body together.
    type Reply;
    /// Puts the body behind the head.
    fn reply(head: Self::Head, body: Body) -> Self::Reply;
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

    fn encode(&self, out: &mut Vec<u8>, host: &str) {
        encode_request(out, &self.0, host);
    }

    fn head(parsed: &ParsedHead<'_>) -> Result<Response<()>, String> {
        let headers = header_map(parsed.bytes, parsed.headers).ok_or("invalid response header")?;
        let mut out = Response::new(());
        *out.status_mut() = parsed.status;
        *out.version_mut() = parsed.version;
        *out.headers_mut() = headers;
        Ok(out)
    }

    fn reply(head: Response<()>, body: Body) -> Response<Body> {
        head.map(|()| body)
    }
}

/// A parsed response head: what it became, its body's framing, and whether the connection
/// can carry another request afterwards.
#[derive(Debug)]
struct Answer<H> {
    head: H,
    framing: Framing,
    reusable: bool,
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

/// Parses a response head off `buf`.
///
/// The framing and reuse come from the raw headers. The hop-by-hop headers this hop
/// consumes (`Connection` with only `keep-alive`/`close`, `Keep-Alive`, `Transfer-Encoding`,
/// and `Content-Length` beside chunked framing, which overrides it) are left out of what
/// `O::head` gets: the proxy would remove them anyway. A `Connection` that names other
/// headers stays, so that the proxy removes those too.
fn parse_response<O: Outbound>(buf: &mut BytesMut, method: &Method) -> Result<Step<O::Head>, String> {
    let mut raw = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Step::More),
        Err(httparse::Error::TooManyHeaders) => return Err(format!("more than {MAX_HEADERS} response headers")),
        Err(e) => return Err(format!("invalid response head: {e}")),
    };
    let code = resp.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| format!("invalid status {code}"))?;
    if status.is_informational() {
        let _ = buf.split_to(len);
        return Ok(Step::Informational);
    }
    let http10 = resp.version == Some(0);
    let (mut chunked, mut close, mut names_others) = (false, false, false);
    // Every Content-Length value must agree (RFC 9112, 6.3): the body's end is where both
    // sides think.
    let mut length: Option<u64> = None;
    let mut consumed = 0u64;
    for (i, h) in resp.headers.iter().enumerate() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            super::read_length(h.value, &mut length)?;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked |= lists(h.value, b"chunked");
            consumed |= 1 << i;
        } else if name.eq_ignore_ascii_case(b"connection") {
            close |= lists(h.value, b"close");
            names_others |=
                h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii).any(|t| {
                    !t.is_empty() && !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive")
                });
            consumed |= 1 << i;
        } else if name.eq_ignore_ascii_case(b"keep-alive") {
            consumed |= 1 << i;
        }
    }
    if chunked {
        for (i, h) in resp.headers.iter().enumerate() {
            if h.name.eq_ignore_ascii_case("content-length") {
                consumed |= 1 << i;
            }
        }
    }
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
    let framing = if *method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked(Chunked::Size)
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    Ok(Step::Final(Answer { head: head?, framing, reusable: !http10 && !close }))
}

/// Whether the header at `r` is a `Connection` header.
fn connection_line(base: &[u8], r: super::Range) -> bool {
    super::raw_header(base, r).0.eq_ignore_ascii_case(b"connection")
}

/// Why an exchange failed, and whether the request may go again on a new connection.
struct Failed {
    reason: String,
    retry: bool,
}

/// A connection's I/O and buffers, borrowed apart from its timer.
struct Wire<'a, IO> {
    io: &'a mut IO,
    buf: &'a mut BytesMut,
    head: &'a mut Vec<u8>,
}

/// Writes the request and reads the response head on `conn`.
async fn exchange<IO: Io, O: Outbound>(
    conn: Wire<'_, IO>,
    req: &O,
    host: &str,
    reused: bool,
) -> Result<Answer<O::Head>, Failed> {
    let failed = |reason: String, retry: bool| Failed { reason, retry };
    let method = req.method();
    conn.head.clear();
    req.encode(conn.head, host);
    if let Err(e) = conn.io.write_all(conn.head).await {
        // Nothing reached the server: any request may go again.
        return Err(failed(e.to_string(), reused));
    }
    let mut first = true;
    loop {
        if !conn.buf.is_empty() {
            match parse_response::<O>(conn.buf, method) {
                Ok(Step::Informational) => continue,
                Ok(Step::Final(x)) => return Ok(x),
                Ok(Step::More) if conn.buf.len() > MAX_RESPONSE_HEAD => {
                    return Err(failed("response head too large".into(), false));
                }
                Ok(Step::More) => {}
                Err(e) => return Err(failed(e, false)),
            }
        }
        if conn.buf.capacity() - conn.buf.len() < 1024 {
            conn.buf.reserve(8192);
        }
        let read = conn.io.read_buf(conn.buf).await;
        // The server closed a pooled connection without answering: it never saw this request.
        let unanswered = first && conn.buf.is_empty() && reused && idempotent(method);
        first = false;
        match read {
            Ok(0) => return Err(failed("connection closed before a response".into(), unanswered)),
            Err(e) => return Err(failed(e.to_string(), unanswered)),
            Ok(_) => {}
        }
    }
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

/// Sends an [`eligible`] request (`host` is its `Host` when it has none) on a pooled connection of `key`, or
/// on one from `connect`; the response's body reads from that connection, which goes back
/// to the pool at the body's end. A pooled connection the server had closed is replaced
/// once (see the module documentation); `connect` is told whether it is replacing one.
pub(crate) async fn send<K, IO, C, F, O>(
    pool: &Arc<Pool<K, IO>>,
    key: K,
    max_age: Duration,
    req: O,
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
    let req = &req;
    // One clock read serves the deadline, the pool's idle ages and, for a response that
    // is complete at once, the time the connection goes back.
    let now = req.started().unwrap_or_else(Instant::now);
    let deadline = timeout.map(|d| tokio::time::Instant::from_std(now) + d);
    let mut retried = false;
    let (Answer { head: resp, framing, reusable }, conn) = loop {
        let (mut conn, reused) = match pool.checkout(&key, max_age, now) {
            Some(c) if !retried => (c, true),
            _ => (Conn::new(connect(retried).await.map_err(SendError::Connect)?), false),
        };
        let Conn { io, buf, head, timer } = &mut conn;
        let exchanged = exchange(Wire { io, buf, head }, req, host, reused);
        let exchanged = match deadline {
            None => exchanged.await,
            Some(at) => {
                let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                timer.as_mut().reset(at);
                let mut exchanged = std::pin::pin!(exchanged);
                let raced = std::future::poll_fn(|cx| match exchanged.as_mut().poll(cx) {
                    Poll::Ready(r) => Poll::Ready(Some(r)),
                    Poll::Pending => timer.as_mut().poll(cx).map(|()| None),
                });
                raced.await.ok_or(SendError::Timeout)?
            }
        };
        match exchanged {
            Ok(head) => break (head, conn),
            Err(f) if f.retry && !retried => {
                tracing::debug!(error = %f.reason, "pooled connection was closed by its server; sending again");
                retried = true;
            }
            Err(f) => return Err(SendError::Exchange(f.reason)),
        }
    };
    let mut body = UpstreamBody { conn: Some(conn), framing, home: reusable.then(|| (pool.clone(), key)) };
    body.finish_if_done(Some(now));
    Ok(O::reply(resp, crate::body::boxed(body)))
}

/// An upstream's authority as a pool key: hashed and compared as the bytes the
/// configuration wrote (`Authority`'s own hash lower-cases byte by byte, on every request).
#[derive(Clone)]
struct AuthorityKey(Authority);

impl Hash for AuthorityKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.as_str().hash(state);
    }
}

impl PartialEq for AuthorityKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for AuthorityKey {}

/// The plain HTTP/1.1 upstream client: TCP connections pooled by authority.
#[derive(Clone)]
pub(crate) struct Client {
    pool: Arc<Pool<AuthorityKey, TcpStream>>,
}

impl Client {
    /// A client keeping at most `max_idle` idle connections per upstream.
    pub(crate) fn new(max_idle: usize) -> Self {
        Client { pool: Arc::new(Pool::new(max_idle)) }
    }

    /// Sends an [`eligible`] request to `auth`: the response head must come within the
    /// response-header timeout of the request's start (connecting has its own timeout).
    pub(crate) async fn send<O: Outbound>(
        &self,
        req: O,
        auth: Authority,
        cfg: &UpstreamConfig,
    ) -> Result<O::Reply, UpstreamError> {
        let key = AuthorityKey(auth.clone());
        let timeout = Some(cfg.response_header_timeout);
        match send(&self.pool, key, cfg.idle_timeout, req, auth.as_str(), timeout, |_| connect_tcp(&auth, cfg)).await {
            Ok(r) => Ok(r),
            Err(SendError::Timeout) => {
                Err(UpstreamError::Timeout { server: auth.to_string(), timeout: cfg.response_header_timeout })
            }
            Err(SendError::Connect(e)) => Err(e),
            Err(SendError::Exchange(reason)) => Err(UpstreamError::Protocol { server: auth.to_string(), reason }),
        }
    }
}

/// A response body read from the connection as the client asks for it.
struct UpstreamBody<K: Hash + Eq, IO> {
    conn: Option<Conn<IO>>,
    framing: Framing,
    /// Where the connection goes once the body is complete (none: it is closed).
    home: Option<(Arc<Pool<K, IO>>, K)>,
}

impl<K: Hash + Eq, IO: Io> UpstreamBody<K, IO> {
    /// At the body's end, gives the connection back (only if nothing else was sent on it),
    /// idle since `at` (default: now).
    fn finish_if_done(&mut self, at: Option<Instant>) {
        let done = matches!(self.framing, Framing::Length(0) | Framing::Chunked(Chunked::End));
        if !done {
            return;
        }
        if let (Some(conn), Some((pool, key))) = (self.conn.take(), self.home.take()) {
            if conn.buf.is_empty() {
                pool.checkin(key, conn, at.unwrap_or_else(Instant::now));
            }
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
    use super::*;

    /// Parses a response head into a header map (`None`: more bytes needed).
    fn parse(raw: &[u8], method: &Method) -> Result<Option<Answer<Response<()>>>, String> {
        let mut buf = BytesMut::from(raw);
        loop {
            match parse_response::<Pooled>(&mut buf, method)? {
                Step::Final(a) => return Ok(Some(a)),
                Step::Informational => continue,
                Step::More => return Ok(None),
            }
        }
    }

    #[test]
    fn response_heads_parse_with_their_framing() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nokNEXT"[..]);
        let Ok(Step::Final(Answer { head, framing, reusable })) = parse_response::<Pooled>(&mut buf, &Method::GET)
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
                .contains("Content-Length")
        );
        let e = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n", &Method::GET).unwrap_err();
        assert!(e.contains("conflicting"));
        let head = parse(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nContent-Length: 7\r\nX-A: 1\r\n\r\n",
            &Method::GET,
        )
        .unwrap()
        .unwrap();
        assert!(head.reusable && matches!(head.framing, Framing::Chunked(_)));
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
        fn encode(&self, out: &mut Vec<u8>, host: &str) {
            encode_request(out, &self.0, host);
        }
        fn head(parsed: &ParsedHead<'_>) -> Result<Self::Head, String> {
            Ok(super::super::Passed::from_head(parsed))
        }
        fn reply(mut head: Self::Head, body: Body) -> Self::Reply {
            head.body = body;
            head
        }
    }

    #[test]
    fn passed_heads_keep_their_lines_minus_the_hop_by_hop_ones() {
        let pass = |raw: &[u8], m: &Method| {
            let mut buf = BytesMut::from(raw);
            let Ok(Step::Final(a)) = parse_response::<PassThrough>(&mut buf, m) else { panic!("a complete head") };
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
            let Ok(Step::Final(a)) = parse_response::<Pooled>(&mut BytesMut::from(raw.as_bytes()), &method) else {
                continue;
            };
            let size = match a.framing {
                Framing::Length(n) => Some(n),
                _ => None,
            };
            let (mut parts, ()) = a.head.into_parts();
            crate::proxy::forward::strip_hop_by_hop(&mut parts.headers, None);
            let mut want = Vec::new();
            let want_framing = encode_head(&mut want, &mut parts, head_request, size);
            // The direct lane: the lines passed through.
            let Ok(Step::Final(p)) = parse_response::<PassThrough>(&mut BytesMut::from(raw.as_bytes()), &method) else {
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
        encode_request(&mut out, &req, "backend:8080");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /a?b=1 HTTP/1.1\r\nhost: backend:8080\r\nx-forwarded-for: 10.0.0.1\r\n\r\n"
        );
        assert!(eligible(&req));
        req.headers_mut().insert("upgrade", "websocket".parse().unwrap());
        assert!(!eligible(&req));
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
