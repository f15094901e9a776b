//! The HTTP/1.1 fast path of an entrypoint connection.
//!
//! Most gateway traffic is HTTP/1.1 requests without a body. For those, this loop parses
//! the head, calls the gateway and writes the response on the connection's own task: no
//! dispatcher, no per-request channels. Anything else — a request with a body, an upgrade,
//! `Expect`, HTTP/1.0, HTTP/2's preface, a head that does not parse or is too large — hands
//! the connection, with the bytes already read, to hyper's server, which then serves it to
//! the end (and answers the 400 or 431 itself). The hand-over happens at a request
//! boundary, so no request is lost or answered twice.
//!
//! The handler gets each head as parsed ([`Head`]: its bytes and where its headers are),
//! and answers with a response, or with an upstream's response head passed through as its
//! lines ([`Reply::Passed`], the proxy's direct lane); either way the framing of the
//! client's connection is this loop's.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header;
use http::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

pub use super::Prefixed;
use super::{MAX_HEADERS, chunk_size_line, encode_headers, header_map, offset, ranges, wants_close};
use crate::body::{self, Body};
use crate::hop::lists;

/// Bodies up to this size are copied behind the head and sent in one write.
const COALESCE: usize = 16 * 1024;

/// How a fast-path connection ended.
pub enum Outcome {
    /// Closed: by the client, a timeout, shutdown or an error.
    Closed,
    /// Hyper takes over from here: these bytes, already read, come first
    /// ([`Prefixed::new`]), then the rest of the connection.
    Handover(Bytes),
}

enum Parsed {
    /// A request the fast path serves (its head is consumed from the buffer).
    Ready(Head),
    /// More bytes are needed.
    Partial,
    /// Anything else: hyper decides (nothing consumed).
    Handover,
}

/// A bodiless HTTP/1.1 request head as it came: its bytes, and where its headers are.
/// A handler either works on the bytes or asks for [`Head::into_request`].
pub struct Head {
    method: Method,
    uri: http::Uri,
    bytes: Bytes,
    headers: Vec<super::Range>,
}

impl Head {
    /// The request method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The request target (origin or absolute form).
    pub fn uri(&self) -> &http::Uri {
        &self.uri
    }

    /// The headers, names and values as sent, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone + '_ {
        self.headers.iter().map(|&r| super::raw_header(&self.bytes, r))
    }

    /// The first value of header `name` (compared in any case).
    pub fn header(&self, name: &[u8]) -> Option<&[u8]> {
        self.headers().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    /// Whether the client asked to close the connection after this request.
    fn wants_close(&self) -> bool {
        self.headers().any(|(n, v)| n.eq_ignore_ascii_case(b"connection") && lists(v, b"close"))
    }

    /// The request in `http` types (its header values share the head's bytes). `None` for
    /// a header `http` refuses although the parser took it.
    pub fn into_request(mut self) -> Option<Request<Body>> {
        let headers = header_map(&self.bytes, &self.headers)?;
        let mut req = Request::new(body::empty());
        *req.method_mut() = std::mem::replace(&mut self.method, Method::GET);
        *req.uri_mut() = std::mem::take(&mut self.uri);
        *req.headers_mut() = headers;
        Some(req)
    }
}

impl Drop for Head {
    fn drop(&mut self) {
        super::recycle_ranges(std::mem::take(&mut self.headers));
    }
}

/// What a handler answers.
pub enum Reply {
    /// A response to encode.
    Response(Response<Body>),
    /// An upstream's response passed through as bytes.
    Passed(super::Passed),
}

pin_project_lite::pin_project! {
    /// What a handler answers with: a future of a [`Reply`], a future of a response, or
    /// 400 for a head the `http` types refused. (`fut` is the variant's future; the macro
    /// takes no documentation on fields.)
    #[project = HandledProj]
    #[allow(missing_docs)]
    pub enum Handled<R, G> {
        /// A reply on its way.
        Reply { #[pin] fut: R },
        /// A response on its way.
        Response { #[pin] fut: G },
        /// A header the `http` types refuse although the parser took it.
        Refused,
    }
}

impl<R: Future<Output = Reply>, G: Future<Output = Response<Body>>> Future for Handled<R, G> {
    type Output = Reply;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        match self.project() {
            HandledProj::Reply { fut } => fut.poll(cx),
            HandledProj::Response { fut } => fut.poll(cx).map(Reply::Response),
            HandledProj::Refused => Poll::Ready(Reply::Response(body::text(StatusCode::BAD_REQUEST, "Bad Request"))),
        }
    }
}

impl<R, G> Handled<R, G> {
    /// A head served as a request by `handler`.
    pub fn request(head: Head, handler: impl FnOnce(Request<Body>) -> G) -> Self {
        match head.into_request() {
            Some(req) => Handled::Response { fut: handler(req) },
            None => Handled::Refused,
        }
    }
}

/// Serves heads with a handler of requests: each head becomes a [`Request`] (400 if the
/// `http` types refuse a header).
pub fn requests<H, F>(handler: H) -> impl Fn(Head) -> Handled<std::future::Pending<Reply>, F>
where
    H: Fn(Request<Body>) -> F,
    F: Future<Output = Response<Body>>,
{
    move |head: Head| Handled::request(head, &handler)
}

/// The next request head off `buf` that the fast path would serve (`None`: more bytes are
/// needed, or hyper would take the connection). For the fuzz targets.
pub fn next_head(buf: &mut BytesMut) -> Option<Head> {
    match next_request(buf) {
        Parsed::Ready(h) => Some(h),
        _ => None,
    }
}

/// Takes the next request head off `buf` when it is one the fast path serves.
fn next_request(buf: &mut BytesMut) -> Parsed {
    if buf.starts_with(b"PRI") {
        return Parsed::Handover;
    }
    // Uninitialised slots: nothing to zero on every request.
    let mut raw = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Handover,
    };
    if req.version != Some(1) {
        return Parsed::Handover;
    }
    let (Some(m), Some(path)) = (req.method, req.path) else { return Parsed::Handover };
    let method = match m {
        "GET" => Method::GET,
        "HEAD" => Method::HEAD,
        "CONNECT" => return Parsed::Handover,
        other => match Method::from_bytes(other.as_bytes()) {
            Ok(m) => m,
            Err(_) => return Parsed::Handover,
        },
    };
    for h in req.headers.iter() {
        let n = h.name.as_bytes();
        // A body, a protocol switch, `Expect: 100-continue` or a client that takes trailers
        // (`TE`): hyper's job.
        if n.eq_ignore_ascii_case(b"transfer-encoding")
            || n.eq_ignore_ascii_case(b"upgrade")
            || n.eq_ignore_ascii_case(b"expect")
            || n.eq_ignore_ascii_case(b"te")
            || (n.eq_ignore_ascii_case(b"content-length") && (h.value.is_empty() || h.value.iter().any(|&b| b != b'0')))
        {
            return Parsed::Handover;
        }
    }
    let target = (offset(buf, path.as_bytes()), path.len());
    let mut headers = super::spare_ranges();
    ranges(buf, req.headers, &mut headers);
    let bytes = buf.split_to(len).freeze();
    let Ok(uri) = http::Uri::from_maybe_shared(bytes.slice(target.0..target.0 + target.1)) else {
        // A target httparse accepts that the http types do not: put it back for hyper.
        super::recycle_ranges(headers);
        let mut back = BytesMut::with_capacity(bytes.len() + buf.len());
        back.extend_from_slice(&bytes);
        back.extend_from_slice(buf);
        *buf = back;
        return Parsed::Handover;
    };
    Parsed::Ready(Head { method, uri, bytes, headers })
}

thread_local! {
    static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
}

/// `Date` for a response, formatted once per second per thread.
fn push_date(out: &mut Vec<u8>) {
    let now = std::time::SystemTime::now();
    let secs = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs || d.1.is_empty() {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(d.1.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

/// How the response body is framed on the wire.
#[derive(Debug, PartialEq)]
pub(super) enum Framing {
    None,
    Length(u64),
    Chunked,
}

fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Ends a head whose headers are written: `Date` unless it has one, this hop's framing
/// (`declared` is its `Content-Length`, `size` the body's known size).
fn finish_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    head_request: bool,
    declared: Option<u64>,
    size: Option<u64>,
    has_date: bool,
) -> Framing {
    if !has_date {
        push_date(out);
    }
    let bodiless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        Framing::None
    } else if let Some(n) = declared {
        Framing::Length(n)
    } else if let Some(n) = size {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        out.extend_from_slice(b"\r\n");
        Framing::Length(n)
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    out.extend_from_slice(b"\r\n");
    framing
}

/// Writes the status line and headers; returns the framing of the body.
pub(super) fn encode_head(
    out: &mut Vec<u8>,
    parts: &mut http::response::Parts,
    head_request: bool,
    size: Option<u64>,
) -> Framing {
    status_line(out, parts.status);
    // The framing below is this hop's own.
    parts.headers.remove(header::TRANSFER_ENCODING);
    let mut declared = None;
    let read = parts
        .headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .try_for_each(|v| super::read_length(v.as_bytes(), &mut declared));
    match (read, declared) {
        (Ok(()), Some(n)) => {
            // Copies of one number (`2, 2`, or two lines) go out as one.
            let mut digits = itoa::Buffer::new();
            let one = digits.format(n);
            if parts.headers.get_all(header::CONTENT_LENGTH).iter().map(|v| v.as_bytes()).ne([one.as_bytes()]) {
                parts.headers.insert(header::CONTENT_LENGTH, http::HeaderValue::from(n));
            }
        }
        _ => {
            // A length that does not parse (a middleware's custom header, say) would
            // contradict the framing chosen below: the framing wins.
            declared = None;
            parts.headers.remove(header::CONTENT_LENGTH);
        }
    }
    let has_date = parts.headers.contains_key(header::DATE);
    encode_headers(out, &parts.headers);
    finish_head(out, parts.status, head_request, declared, size, has_date)
}

/// Writes a passed-through head; returns the framing of the body.
pub(super) fn encode_passed(out: &mut Vec<u8>, p: &super::Passed, head_request: bool) -> Framing {
    status_line(out, p.status);
    out.extend_from_slice(&p.lines);
    finish_head(out, p.status, head_request, p.declared, None, p.has_date)
}

/// The next piece of body data, skipping trailers: this path does not send them, and a
/// client that says it takes them (`TE: trailers`) is served by hyper. `Ok(None)` at the end.
fn poll_data(b: &mut Body, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, body::BoxError>> {
    loop {
        match http_body::Body::poll_frame(Pin::new(&mut *b), cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => return Poll::Ready(Ok(None)),
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
            Poll::Ready(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    if !d.is_empty() {
                        return Poll::Ready(Ok(Some(d)));
                    }
                }
            }
        }
    }
}

async fn next_data(b: &mut Body) -> Result<Option<Bytes>, body::BoxError> {
    std::future::poll_fn(|cx| poll_data(b, cx)).await
}

/// The next piece of body data if it is there already, without waiting (`None` if not).
fn ready_data(b: &mut Body) -> Option<Result<Option<Bytes>, body::BoxError>> {
    if http_body::Body::is_end_stream(b) {
        return Some(Ok(None));
    }
    match poll_data(b, &mut Context::from_waker(std::task::Waker::noop())) {
        Poll::Ready(r) => Some(r),
        Poll::Pending => None,
    }
}

/// Appends one piece of body data in the connection's framing.
fn put_data(out: &mut Vec<u8>, d: &[u8], chunked: bool) {
    if chunked {
        chunk_size_line(out, d.len());
    }
    out.extend_from_slice(d);
    if chunked {
        out.extend_from_slice(b"\r\n");
    }
}

/// Writes a response; `Ok(false)` when the connection cannot carry another request (a body
/// shorter or longer than its `Content-Length`, or one that failed).
///
/// Data that is ready is gathered behind the head, so a small response is one write; the
/// buffer goes out whenever the body has to be waited for.
async fn write_response<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    out: &mut Vec<u8>,
    reply: Reply,
    head_request: bool,
) -> io::Result<bool> {
    out.clear();
    let (framing, mut body) = match reply {
        Reply::Response(resp) => {
            let (mut parts, body) = resp.into_parts();
            let framing = encode_head(out, &mut parts, head_request, http_body::Body::size_hint(&body).exact());
            super::recycle(std::mem::take(&mut parts.headers));
            (framing, body)
        }
        Reply::Passed(mut p) => (encode_passed(out, &p, head_request), std::mem::replace(&mut p.body, body::empty())),
    };
    let chunked = matches!(framing, Framing::Chunked);
    if matches!(framing, Framing::None) {
        io.write_all(out).await?;
        return Ok(true);
    }
    let mut sent = 0u64;
    let ok = loop {
        let next = match ready_data(&mut body) {
            Some(r) => r,
            None => {
                io.write_all(out).await?;
                out.clear();
                next_data(&mut body).await
            }
        };
        match next {
            Ok(Some(d)) => {
                sent += d.len() as u64;
                if let Framing::Length(n) = framing {
                    if sent > n {
                        tracing::debug!(declared = n, "response body longer than its Content-Length; closing");
                        break false;
                    }
                }
                if d.len() <= COALESCE {
                    put_data(out, &d, chunked);
                } else {
                    if chunked {
                        chunk_size_line(out, d.len());
                    }
                    io.write_all(out).await?;
                    out.clear();
                    io.write_all(&d).await?;
                    if chunked {
                        out.extend_from_slice(b"\r\n");
                    }
                }
                if out.len() >= COALESCE {
                    io.write_all(out).await?;
                    out.clear();
                }
            }
            Ok(None) => {
                break match framing {
                    Framing::Length(n) => sent == n,
                    _ => {
                        out.extend_from_slice(b"0\r\n\r\n");
                        true
                    }
                };
            }
            Err(e) => {
                tracing::debug!(error = %e, "response body failed");
                break false;
            }
        }
    };
    io.write_all(out).await?;
    Ok(ok)
}

/// How long a connection may wait for the client.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For a complete request head: from the connection's start for the first request,
    /// from the first byte of the head for the next ones.
    pub header_read: Duration,
    /// Between requests on a keep-alive connection, until the next head's first byte.
    pub idle: Duration,
}

/// I/O that can say when it has bytes to read without being handed a buffer, so that an
/// idle keep-alive connection holds none (as nginx frees its buffers between requests).
pub trait ReadReady {
    /// Ready when a read would likely make progress (a spurious wake-up only costs a
    /// buffer held until the bytes come). The default: always.
    fn poll_read_ready_hint(&self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        std::task::Poll::Ready(())
    }
}

impl ReadReady for tokio::net::TcpStream {
    fn poll_read_ready_hint(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        // An error is for the read to report.
        self.poll_read_ready(cx).map(|_| ())
    }
}

impl<IO: ReadReady> ReadReady for tokio_rustls::server::TlsStream<IO> {
    fn poll_read_ready_hint(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let (io, tls) = self.get_ref();
        // Plaintext rustls already holds is there to read now; else the socket decides.
        if tls.wants_read() { io.poll_read_ready_hint(cx) } else { std::task::Poll::Ready(()) }
    }
}

impl<R, W> ReadReady for tokio::io::Join<R, W> {}

impl ReadReady for tokio::io::DuplexStream {}

/// The read buffer's size while a request head is read.
const READ_BUFFER: usize = 4096;

/// A read buffer with room for a head: a spare one of this thread, or a new one.
fn read_buffer() -> BytesMut {
    super::read_buffer(&super::SPARE_SERVER_READS, READ_BUFFER)
}

/// Keeps an emptied read buffer for the next connection that needs one.
fn spare_read_buffer(b: BytesMut) {
    super::spare_read_buffer(&super::SPARE_SERVER_READS, b);
}

/// A connection's read buffer, kept for another connection of the thread when it ends.
struct HeldBuffer(BytesMut);

impl Drop for HeldBuffer {
    fn drop(&mut self) {
        let mut b = std::mem::take(&mut self.0);
        b.clear();
        spare_read_buffer(b);
    }
}

/// What the connection's timer is counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Head,
    Idle,
}

/// Serves requests on `io` with `handler` until the client closes, a timeout passes (see
/// [`Timeouts`]), `stop` is cancelled (while idle), or a request needs hyper
/// ([`Outcome::Handover`]). `peer` names the connection in logs.
///
/// Between requests the connection holds no buffer: the read buffer is taken when bytes
/// arrive ([`ReadReady`]) and the write buffer when a response is written, both from the
/// thread's spares; the handler's future lives on the heap only while it runs.
///
/// The future is what every idle connection holds, so it is kept small: the arguments are
/// moved into it once (an `async fn` would hold them twice), the I/O and what is shared are
/// borrowed (the caller holds them once, and keeps the I/O for a hand-over), and no request
/// is held across the exchange's wait.
// Not an `async fn`: it would hold each argument twice in its future.
#[allow(clippy::manual_async_fn)]
pub fn serve<'a, IO, H, F>(
    io: &'a mut IO,
    handler: H,
    peer: &'a std::net::SocketAddr,
    timeouts: &'a Timeouts,
    max_head: usize,
    stop: Option<&'a CancellationToken>,
) -> impl Future<Output = Outcome> + 'a
where
    IO: AsyncRead + AsyncWrite + Unpin + ReadReady + 'a,
    H: Fn(Head) -> F + 'a,
    F: Future<Output = Reply> + 'a,
{
    async move {
        // Whatever the way out, the read buffer goes back to the thread's spares.
        let mut held = HeldBuffer(BytesMut::new());
        // Armed from the start for the first request's head.
        let timer = tokio::time::sleep(timeouts.header_read);
        tokio::pin!(timer);
        let mut armed = Some(Waiting::Head);
        // One wait for shutdown for the whole connection, not one per request. It is polled
        // only while the connection is idle, and ends the connection when it fires.
        let stopping = stopped(stop);
        tokio::pin!(stopping);
        loop {
            // The request lives in this block only: moved into the exchange, it is not part
            // of the connection's future while the exchange runs.
            let exchange = {
                let buf = &mut held.0;
                // Read until a head is complete.
                let req = loop {
                    match next_request_within(buf, max_head) {
                        Parsed::Ready(r) => break r,
                        Parsed::Handover => {
                            return Outcome::Handover(std::mem::take(buf).freeze());
                        }
                        Parsed::Partial => {}
                    }
                    arm_timer(timer.as_mut(), &mut armed, buf.is_empty(), *timeouts);
                    let idle = buf.is_empty();
                    if idle {
                        // Nothing buffered: give the last request's buffer back, and take one
                        // only once there are bytes to read.
                        spare_read_buffer(std::mem::take(buf));
                        // Borrowed mutably, so the future needs `IO: Send`, not `Sync`.
                        let ready = &mut *io;
                        tokio::select! {
                            biased;
                            () = std::future::poll_fn(move |cx| ready.poll_read_ready_hint(cx)) => {}
                            _ = &mut timer => {
                                log_timeout(armed, peer);
                                return Outcome::Closed;
                            }
                            _ = &mut stopping => return Outcome::Closed,
                        }
                    }
                    if buf.capacity() == 0 {
                        *buf = read_buffer();
                    } else if buf.capacity() - buf.len() < 1024 {
                        buf.reserve(READ_BUFFER);
                    }
                    tokio::select! {
                        biased;
                        r = io.read_buf(buf) => match r {
                            Ok(0) | Err(_) => return Outcome::Closed,
                            Ok(_) => {}
                        },
                        _ = &mut timer => {
                            log_timeout(armed, peer);
                            return Outcome::Closed;
                        }
                        _ = &mut stopping, if idle => return Outcome::Closed,
                    }
                };
                let close = req.wants_close();
                let head_request = req.method() == Method::HEAD;
                // The handler's future and the response's writing live on the heap while
                // they run: inline, they would be part of every connection, idle ones
                // included.
                let (io_ref, handler) = (&mut *io, &handler);
                Box::pin(async move {
                    let mut reply = handler(req).await;
                    if stop.is_some_and(CancellationToken::is_cancelled) {
                        // The connection closes after this response because the server is
                        // stopping: say so, so the client does not send its next request on
                        // a connection about to close (the client knows when it asked).
                        announce_close(&mut reply);
                    }
                    let close = closes_after(close, &reply, stop);
                    let mut out = super::write_buffer();
                    let kept =
                        matches!(write_response(io_ref, &mut out, reply, head_request).await, Ok(true)) && !close;
                    super::spare_write_buffer(out);
                    kept
                })
            };
            if !exchange.await {
                let _ = io.shutdown().await;
                return Outcome::Closed;
            }
            // The next wait is idle time until the next head starts (unless it is there
            // already).
            armed = None;
        }
    }
}

/// Ends when `stop` is cancelled; never without one.
async fn stopped(stop: Option<&CancellationToken>) {
    match stop {
        Some(s) => s.cancelled().await,
        None => std::future::pending::<()>().await,
    }
}

/// [`next_request`], handing over a head still partial past `max_head` bytes.
#[inline]
fn next_request_within(buf: &mut BytesMut, max_head: usize) -> Parsed {
    match next_request(buf) {
        Parsed::Partial if buf.len() > max_head => Parsed::Handover,
        parsed => parsed,
    }
}

/// Arms the connection's timer for what the wait counts: idle time when nothing of the next
/// head is there (`buf_empty`) and the last wait was not for a head, else the head's read.
/// It is re-armed only when what it counts changes (one clock read per wait, not per read).
#[inline]
fn arm_timer(timer: Pin<&mut tokio::time::Sleep>, armed: &mut Option<Waiting>, buf_empty: bool, timeouts: Timeouts) {
    // Nothing of the next head yet: the connection is idle.
    let waiting = if buf_empty && *armed != Some(Waiting::Head) { Waiting::Idle } else { Waiting::Head };
    if *armed != Some(waiting) {
        *armed = Some(waiting);
        let limit = match waiting {
            Waiting::Head => timeouts.header_read,
            Waiting::Idle => timeouts.idle,
        };
        timer.reset(tokio::time::Instant::now() + limit);
    }
}

/// Logs why the timer (armed for `armed`) closes the connection to `peer`.
fn log_timeout(armed: Option<Waiting>, peer: &std::net::SocketAddr) {
    match armed {
        Some(Waiting::Idle) => tracing::debug!(%peer, "idle keep-alive connection closed"),
        _ => tracing::debug!(%peer, "no complete request head within the header read timeout"),
    }
}

/// Makes `reply` say the connection closes after it (`Connection: close`).
fn announce_close(reply: &mut Reply) {
    match reply {
        Reply::Response(r) => {
            r.headers_mut().insert(header::CONNECTION, http::HeaderValue::from_static("close"));
        }
        // Its hop-by-hop lines (the upstream's `Connection` among them) were left out.
        Reply::Passed(p) => p.set_header(b"connection", b"close"),
    }
}

/// Whether the connection closes after this exchange: the client asked (`close`), the
/// response says so, or the server is stopping.
#[inline]
fn closes_after(close: bool, reply: &Reply, stop: Option<&CancellationToken>) -> bool {
    close || matches!(reply, Reply::Response(r) if wants_close(r.headers())) || stop.is_some_and(|s| s.is_cancelled())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(raw);
        let p = next_request(&mut buf);
        (p, buf)
    }

    #[test]
    fn bodiless_heads_are_served_here_and_the_rest_goes_to_hyper_untouched() {
        let (p, rest) = parse(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\nGET /next");
        let Parsed::Ready(head) = p else { panic!("a plain GET is served here") };
        assert_eq!((head.method(), head.uri().to_string()), (&Method::GET, "/a?b=1".to_string()));
        assert_eq!(head.header(b"x-a"), Some(&b"1"[..]));
        assert_eq!(head.headers().map(|(n, _)| n).collect::<Vec<_>>(), [&b"Host"[..], b"X-A"]);
        assert!(!head.wants_close());
        let req = head.into_request().unwrap();
        assert_eq!(req.headers()["x-a"], "1");
        assert_eq!(&rest[..], b"GET /next", "only the head is consumed");
        assert!(matches!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n").0, Parsed::Partial));
        assert!(matches!(parse(b"DELETE / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").0, Parsed::Ready(_)));
        for raw in [
            &b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.1\r\nTE: trailers\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"NOT A REQUEST\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\n\r\n",
        ] {
            let (p, rest) = parse(raw);
            assert!(matches!(p, Parsed::Handover), "{}", String::from_utf8_lossy(raw));
            assert_eq!(&rest[..], raw, "hyper gets every byte");
        }
    }

    /// A response sent after shutdown began (here, while the request was being handled)
    /// says `Connection: close`, and the connection then closes.
    #[tokio::test]
    async fn a_response_sent_while_stopping_says_the_connection_closes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, mut server) = tokio::io::duplex(4096);
        let stop = CancellationToken::new();
        let peer = "127.0.0.1:1".parse().unwrap();
        let timeouts = Timeouts { header_read: Duration::from_secs(5), idle: Duration::from_secs(5) };
        let handler = |_head: Head| {
            stop.cancel();
            async { Reply::Response(body::text(StatusCode::OK, "ok")) }
        };
        let serving = serve(&mut server, handler, &peer, &timeouts, 8192, Some(&stop));
        let talking = async {
            client.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            String::from_utf8(got).unwrap()
        };
        let (outcome, got) = tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(serving, talking) })
            .await
            .expect("the connection closes after the response");
        assert!(matches!(outcome, Outcome::Closed));
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        assert!(got.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{got}");
        assert!(got.trim_end().ends_with("\r\n\r\nok"), "the body follows: {got}");
    }

    #[test]
    fn a_head_gives_its_header_positions_back_however_it_ends() {
        // Each test runs on its own thread: the spare list starts empty.
        let spares = || super::super::SPARE_RANGES.with(|s| s.borrow().len());
        let Parsed::Ready(head) = parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").0 else { panic!("a plain GET") };
        drop(head);
        assert_eq!(spares(), 1, "dropped (the direct lane)");
        let Parsed::Ready(head) = parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").0 else { panic!("a plain GET") };
        assert_eq!(spares(), 0, "the spare list was taken");
        assert!(head.into_request().is_some());
        assert_eq!(spares(), 1, "made into a request (the general lane)");
    }

    fn head(resp: Response<Body>, head_request: bool) -> (String, Framing) {
        let (mut parts, body) = resp.into_parts();
        let mut out = Vec::new();
        let f = encode_head(&mut out, &mut parts, head_request, http_body::Body::size_hint(&body).exact());
        (String::from_utf8(out).unwrap(), f)
    }

    #[test]
    fn response_heads_get_one_framing_and_a_date() {
        let (h, f) = head(Response::new(body::full("hello")), false);
        assert!(h.starts_with("HTTP/1.1 200 OK\r\n") && h.ends_with("\r\n\r\n"));
        assert!(h.contains("content-length: 5\r\n") && h.contains("date: "));
        assert!(matches!(f, Framing::Length(5)));
        // Unknown length: chunked; a transfer-encoding from elsewhere is not repeated.
        let mut r = Response::new(body::boxed(http_body_util::StreamBody::new(futures_util::stream::empty::<
            Result<http_body::Frame<Bytes>, std::io::Error>,
        >())));
        r.headers_mut().insert(header::TRANSFER_ENCODING, "gzip, chunked".parse().unwrap());
        let (h, f) = head(r, false);
        assert_eq!(h.matches("transfer-encoding").count(), 1);
        assert!(h.contains("transfer-encoding: chunked\r\n") && matches!(f, Framing::Chunked));
        // HEAD keeps the declared length and sends no body; 304 has none either.
        let mut r = Response::new(body::empty());
        r.headers_mut().insert(header::CONTENT_LENGTH, "42".parse().unwrap());
        let (h, f) = head(r, true);
        assert!(h.contains("content-length: 42\r\n") && matches!(f, Framing::None));
        let mut r = Response::new(body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        assert!(matches!(head(r, false).1, Framing::None));
        // A length that does not parse is dropped for the real one; a Date is kept.
        let mut r = Response::new(body::full("abc"));
        r.headers_mut().insert(header::CONTENT_LENGTH, "many".parse().unwrap());
        r.headers_mut().insert(header::DATE, "Thu, 26 Nov 2026 08:00:00 GMT".parse().unwrap());
        let (h, f) = head(r, false);
        assert!(!h.contains("many") && h.contains("content-length: 3\r\n") && matches!(f, Framing::Length(3)));
        assert_eq!(h.matches("date: ").count(), 1);
        // Copies of one length go out as one; lengths that disagree are dropped for the real one.
        let mut r = Response::new(body::full("ab"));
        r.headers_mut().insert(header::CONTENT_LENGTH, "2, 2".parse().unwrap());
        let (h, f) = head(r, false);
        assert!(h.contains("content-length: 2\r\n") && !h.contains("2, 2") && matches!(f, Framing::Length(2)));
        let mut r = Response::new(body::full("ab"));
        r.headers_mut().append(header::CONTENT_LENGTH, "2".parse().unwrap());
        r.headers_mut().append(header::CONTENT_LENGTH, "3".parse().unwrap());
        let (h, f) = head(r, false);
        assert_eq!(h.matches("content-length").count(), 1);
        assert!(h.contains("content-length: 2\r\n") && matches!(f, Framing::Length(2)), "{h}");
    }
}
