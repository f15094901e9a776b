//! A lean HTTP/1.1 path for the common case, on both sides of the proxy.
//!
//! [`server`] serves bodiless HTTP/1.1 requests on an entrypoint connection's own task and
//! hands everything else to hyper; [`client`] sends bodiless requests to plain HTTP/1.1
//! upstreams on pooled connections read and written inline, without a connection task.
//! This module holds what both share: where a parsed head's headers are in its bytes,
//! header maps built from those positions (sharing the bytes), response heads passed
//! through as their lines ([`Passed`]), header encoding, and chunked framing; plus the
//! per-thread spare maps and buffers that keep a request from allocating.

pub(crate) mod client;
pub mod server;

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::thread::LocalKey;

use crate::hop::lists;
use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Headers parsed on the stack; a head with more goes the general way (hyper).
pub(crate) const MAX_HEADERS: usize = 64;

/// Where a header's name and value sit in the buffer a head was parsed from.
type Range = (u32, u32, u32, u32);

fn offset(base: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - base.as_ptr() as usize
}

/// Records where each parsed header sits in `base`.
fn ranges(base: &[u8], headers: &[httparse::Header<'_>], out: &mut Vec<Range>) {
    out.extend(headers.iter().map(|h| {
        // Heads are limited far below 4 GiB (`--max-header-bytes`).
        (
            offset(base, h.name.as_bytes()) as u32,
            h.name.len() as u32,
            offset(base, h.value) as u32,
            h.value.len() as u32,
        )
    }));
}

thread_local! {
    /// Emptied header maps of finished heads, kept for the next heads parsed on this thread
    /// (a map is two allocations; a proxied request builds two maps).
    static SPARE_MAPS: Spares<HeaderMap> = const { RefCell::new(Vec::new()) };
    /// Emptied byte buffers (response heads passed through as bytes).
    static SPARE_BYTES: Spares<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Emptied lists of header positions (request heads).
    static SPARE_RANGES: Spares<Vec<Range>> = const { RefCell::new(Vec::new()) };
    /// Read buffers of client connections between requests.
    pub(crate) static SPARE_SERVER_READS: Spares<BytesMut> = const { RefCell::new(Vec::new()) };
    /// Read buffers of upstream connections while they sit in the pool.
    pub(crate) static SPARE_UPSTREAM_READS: Spares<BytesMut> = const { RefCell::new(Vec::new()) };
    /// Write buffers of client connections between responses.
    static SPARE_SERVER_WRITES: Spares<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Per-thread spare values of one kind.
pub(crate) type Spares<T> = RefCell<Vec<T>>;

/// Spare values kept per thread and kind.
const SPARES_KEPT: usize = 32;
/// Maps that grew past this many headers are not kept (one odd request must not pin memory).
const SPARE_MAP_LARGEST: usize = 4 * MAX_HEADERS;
/// Buffers larger than this are not kept.
const SPARE_BYTES_LARGEST: usize = 16 * 1024;

/// Connection buffers kept per thread and kind: connections hold one only while they read
/// or write (as nginx frees its buffers between requests), so an idle one holds none, and a
/// busy one takes a kept buffer rather than allocating one per request.
const SPARE_BUFFERS_KEPT: usize = 64;
/// Larger connection buffers (a big head) are not kept.
const SPARE_BUFFER_LARGEST: usize = 64 * 1024;

/// A read buffer with room for `room` bytes: one of `key`'s spares, or a new one.
pub(crate) fn read_buffer(key: &'static LocalKey<Spares<BytesMut>>, room: usize) -> BytesMut {
    let mut b = take_spare(key).unwrap_or_default();
    // Reclaims the whole allocation when nothing else shares it any more.
    b.reserve(room);
    b
}

/// Keeps an emptied read buffer among `key`'s spares for the next connection that reads.
pub(crate) fn spare_read_buffer(key: &'static LocalKey<Spares<BytesMut>>, b: BytesMut) {
    if b.is_empty() && b.capacity() > 0 && b.capacity() <= SPARE_BUFFER_LARGEST {
        keep_spare_up_to(key, b, SPARE_BUFFERS_KEPT);
    }
}

/// A buffer to write a response into: a spare one of this thread, or a new one.
fn write_buffer() -> Vec<u8> {
    spare_vec(&SPARE_SERVER_WRITES, 1024)
}

/// Keeps a response's write buffer for the next response written on this thread.
fn spare_write_buffer(mut b: Vec<u8>) {
    if b.capacity() <= SPARE_BUFFER_LARGEST {
        b.clear();
        keep_spare_up_to(&SPARE_SERVER_WRITES, b, SPARE_BUFFERS_KEPT);
    }
}

/// A spare value of `key`'s kind, if one is kept.
fn take_spare<T: 'static>(key: &'static LocalKey<Spares<T>>) -> Option<T> {
    key.with(|s| s.try_borrow_mut().ok().and_then(|mut s| s.pop()))
}

/// Keeps `v` among `key`'s spares (up to [`SPARES_KEPT`]).
fn keep_spare<T: 'static>(key: &'static LocalKey<Spares<T>>, v: T) {
    keep_spare_up_to(key, v, SPARES_KEPT);
}

/// Keeps `v` among `key`'s spares, up to `kept` of them.
fn keep_spare_up_to<T: 'static>(key: &'static LocalKey<Spares<T>>, v: T, kept: usize) {
    key.with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            if s.len() < kept {
                s.push(v);
            }
        }
    });
}

/// Keeps `map`'s memory for a later head parsed on this thread.
pub(crate) fn recycle(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > SPARE_MAP_LARGEST {
        return;
    }
    map.clear();
    keep_spare(&SPARE_MAPS, map);
}

/// An empty map for at least `n` headers, recycled when one is spare.
fn empty_map(n: usize) -> HeaderMap {
    match take_spare(&SPARE_MAPS) {
        Some(mut map) => {
            map.reserve(n);
            map
        }
        None => HeaderMap::with_capacity(n),
    }
}

/// An empty vector from `key`'s spares, else a new one with room for `room`.
fn spare_vec<T: 'static>(key: &'static LocalKey<Spares<Vec<T>>>, room: usize) -> Vec<T> {
    take_spare(key).unwrap_or_else(|| Vec::with_capacity(room))
}

/// Keeps `v`'s memory among `key`'s spares, unless it grew past `largest`.
fn recycle_vec<T: 'static>(key: &'static LocalKey<Spares<Vec<T>>>, mut v: Vec<T>, largest: usize) {
    if v.capacity() > 0 && v.capacity() <= largest {
        v.clear();
        keep_spare(key, v);
    }
}

/// An empty list of header positions, recycled when one is spare.
fn spare_ranges() -> Vec<Range> {
    spare_vec(&SPARE_RANGES, 16)
}

/// Keeps a list of header positions for later.
fn recycle_ranges(v: Vec<Range>) {
    recycle_vec(&SPARE_RANGES, v, MAX_HEADERS);
}

/// The name and value of a header at `r` in `base`.
fn raw_header(base: &[u8], r: Range) -> (&[u8], &[u8]) {
    let (no, nl, vo, vl) = (r.0 as usize, r.1 as usize, r.2 as usize, r.3 as usize);
    (&base[no..no + nl], &base[vo..vo + vl])
}

/// Builds a header map whose values share `bytes` (no copy).
fn header_map(bytes: &Bytes, ranges: &[Range]) -> Option<HeaderMap> {
    let mut map = empty_map(ranges.len() + 8);
    for &r in ranges {
        let (vo, vl) = (r.2 as usize, r.3 as usize);
        let name = HeaderName::from_bytes(raw_header(bytes, r).0).ok()?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(vo..vo + vl)).ok()?;
        map.append(name, value);
    }
    Some(map)
}

/// An upstream's response passed through as bytes: its header lines, copied as they came
/// minus the hop-by-hop ones (the same rules as for a header map, see
/// `hop::strip_hop_by_hop`), and its body.
pub struct Passed {
    /// The status.
    pub status: http::StatusCode,
    /// `name: value\r\n` lines.
    lines: Vec<u8>,
    /// Whether one of the lines is `Date`.
    has_date: bool,
    /// The `Content-Length` among the lines, if any.
    declared: Option<u64>,
    /// The body.
    pub body: crate::body::Body,
}

impl Passed {
    /// Copies the header lines of an upstream's response head, minus the hop-by-hop ones
    /// (the body comes later).
    pub(crate) fn from_head(parsed: &client::ParsedHead<'_>) -> Passed {
        let mut lines = spare_vec(&SPARE_BYTES, 512);
        let mut has_date = false;
        let rules = crate::hop::HopRules::new(parsed.headers());
        for (name, value) in parsed.headers() {
            if rules.removes(name) || name.eq_ignore_ascii_case(b"content-length") {
                continue;
            }
            has_date |= name.eq_ignore_ascii_case(b"date");
            push_line(&mut lines, name, value);
        }
        if rules.te_trailers {
            push_line(&mut lines, b"te", b"trailers");
        }
        // One Content-Length, the value every copy agreed on.
        if let Some(n) = parsed.length {
            push_line(&mut lines, b"content-length", itoa::Buffer::new().format(n).as_bytes());
        }
        Passed { status: parsed.status, lines, has_date, declared: parsed.length, body: crate::body::empty() }
    }
}

impl Passed {
    /// Sets header `name` (lower case) to `value`, replacing the upstream's lines of that
    /// name.
    pub(crate) fn set_header(&mut self, name: &[u8], value: &[u8]) {
        self.replace_lines(|n| n.eq_ignore_ascii_case(name), [(name, value)]);
    }

    /// Sets (`Some`) or removes (`None`) each header of `ops`, replacing the upstream's lines
    /// of its name (a headers middleware's custom response headers). Never `Content-Length`
    /// or `Date`, which this head keeps track of.
    pub(crate) fn edit_headers(&mut self, ops: &[(http::HeaderName, Option<http::HeaderValue>)]) {
        self.replace_lines(
            |n| ops.iter().any(|(o, _)| n.eq_ignore_ascii_case(o.as_str().as_bytes())),
            ops.iter().filter_map(|(n, v)| Some((n.as_str().as_bytes(), v.as_ref()?.as_bytes()))),
        );
    }

    /// Drops the lines whose name `replaced` says, then appends `added`.
    fn replace_lines<'v>(
        &mut self,
        replaced: impl Fn(&[u8]) -> bool,
        added: impl IntoIterator<Item = (&'v [u8], &'v [u8])>,
    ) {
        let mut kept = spare_vec(&SPARE_BYTES, self.lines.len() + 64);
        for line in self.lines.split_inclusive(|b| *b == b'\n') {
            if !line.split(|b| *b == b':').next().is_some_and(&replaced) {
                kept.extend_from_slice(line);
            }
        }
        for (name, value) in added {
            push_line(&mut kept, name, value);
        }
        recycle_vec(&SPARE_BYTES, std::mem::replace(&mut self.lines, kept), SPARE_BYTES_LARGEST);
    }
}

impl Drop for Passed {
    fn drop(&mut self) {
        recycle_vec(&SPARE_BYTES, std::mem::take(&mut self.lines), SPARE_BYTES_LARGEST);
    }
}

/// Appends `name: value\r\n`.
pub(crate) fn push_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `name: value\r\n` for every header.
fn encode_headers(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends the size line of a chunk.
fn chunk_size_line(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(format!("{len:x}\r\n").as_bytes());
}

/// Why a message's framing cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// A `Content-Length` that is not digits.
    #[error("invalid Content-Length {0:?}")]
    BadLength(String),
    /// `Content-Length` values that disagree.
    #[error("conflicting Content-Length values")]
    ConflictingLengths,
    /// A chunk size line that is not hex digits (or too long).
    #[error("bad chunk size {0:?}")]
    BadChunkSize(String),
    /// More data than a chunk's size.
    #[error("chunk data longer than its size")]
    ChunkOverrun,
    /// A trailer section that does not parse, or is too large.
    #[error("invalid trailer section")]
    BadTrailers,
}

/// Reads one `Content-Length` value into `length`: one number, or a list of copies of one
/// number (RFC 9110, 8.6), which must also agree with the values read before.
pub(crate) fn read_length(value: &[u8], length: &mut Option<u64>) -> Result<(), FramingError> {
    for part in value.split(|&b| b == b',') {
        // Digits only: no sign, no inner space (`+5` and `5 5` are not lengths).
        let digits = part.trim_ascii();
        let n = (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
            .then(|| std::str::from_utf8(digits).ok()?.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| FramingError::BadLength(String::from_utf8_lossy(value).into_owned()))?;
        if length.is_some_and(|l| l != n) {
            return Err(FramingError::ConflictingLengths);
        }
        *length = Some(n);
    }
    Ok(())
}

/// Whether a `Connection` header asks to close.
fn wants_close(h: &HeaderMap) -> bool {
    h.get_all(http::header::CONNECTION).iter().any(|v| lists(v.as_bytes(), b"close"))
}

/// Where a chunked body decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunked {
    /// Expecting a size line.
    Size,
    /// Inside a chunk: this many bytes left.
    Data(u64),
    /// After a chunk's data: expecting its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    /// Done.
    End,
}

/// What [`Chunked::decode`] found.
#[derive(Debug, PartialEq)]
pub(crate) enum Decoded {
    /// Body data.
    Data(Bytes),
    /// The trailers (possibly empty): the body is complete.
    End(HeaderMap),
    /// More bytes are needed.
    More,
}

/// Longest size or trailer line accepted.
const MAX_LINE: usize = 8 * 1024;
/// Largest trailer section accepted.
const MAX_TRAILERS: usize = 64 * 1024;

impl Chunked {
    /// Decodes what `buf` holds, consuming it.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, FramingError> {
        loop {
            match *self {
                Chunked::Size => {
                    let Some(size) = read_size_line(buf)? else { return Ok(Decoded::More) };
                    *self = if size == 0 { Chunked::Trailers } else { Chunked::Data(size) };
                }
                Chunked::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    let n = (buf.len() as u64).min(left) as usize;
                    let data = buf.split_to(n).freeze();
                    *self = if left == n as u64 { Chunked::DataEnd } else { Chunked::Data(left - n as u64) };
                    return Ok(Decoded::Data(data));
                }
                Chunked::DataEnd => {
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|&b| b != b'\r' && b != b'\n') {
                            return Err(FramingError::ChunkOverrun);
                        }
                        if buf.first() == Some(&b'\n') {
                            let _ = buf.split_to(1);
                            *self = Chunked::Size;
                            continue;
                        }
                        return Ok(Decoded::More);
                    }
                    match &buf[..2] {
                        b"\r\n" => drop(buf.split_to(2)),
                        [b'\n', _] => drop(buf.split_to(1)),
                        _ => return Err(FramingError::ChunkOverrun),
                    }
                    *self = Chunked::Size;
                }
                Chunked::Trailers => {
                    let Some(end) = trailer_section_end(buf)? else { return Ok(Decoded::More) };
                    let section = buf.split_to(end).freeze();
                    *self = Chunked::End;
                    return Ok(Decoded::End(parse_trailers(&section)?));
                }
                Chunked::End => return Ok(Decoded::End(HeaderMap::new())),
            }
        }
    }
}

/// Takes a chunk-size line off `buf` and reads its size (extensions ignored); `None` until
/// the line is complete.
#[inline]
fn read_size_line(buf: &mut BytesMut) -> Result<Option<u64>, FramingError> {
    let Some(eol) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_LINE {
            return Err(FramingError::BadChunkSize("(a line too long)".into()));
        }
        return Ok(None);
    };
    let line = buf.split_to(eol + 1);
    let digits = line[..].split(|&b| b == b';' || b == b'\r' || b == b'\n').next().unwrap_or(&[]);
    let bad = || FramingError::BadChunkSize(String::from_utf8_lossy(digits.trim_ascii()).into_owned());
    let digits = std::str::from_utf8(digits.trim_ascii()).map_err(|_| bad())?;
    // Hex digits only (`from_str_radix` would take a sign).
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    u64::from_str_radix(digits, 16).map(Some).map_err(|_| bad())
}

/// Where the trailer section at the start of `buf` ends (after its empty line); `None`
/// until it is complete.
#[inline]
fn trailer_section_end(buf: &[u8]) -> Result<Option<usize>, FramingError> {
    // The trailer section ends with an empty line; it may be that line alone.
    let end = if buf.starts_with(b"\r\n") {
        Some(2)
    } else if buf.starts_with(b"\n") {
        Some(1)
    } else {
        buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
    };
    if end.is_none() && buf.len() > MAX_TRAILERS {
        return Err(FramingError::BadTrailers);
    }
    Ok(end)
}

/// The trailers of a whole trailer section (none when it is only the empty line).
#[inline]
fn parse_trailers(section: &Bytes) -> Result<HeaderMap, FramingError> {
    let mut trailers = HeaderMap::new();
    if section.len() > 2 {
        let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match httparse::parse_headers(section, &mut raw) {
            Ok(httparse::Status::Complete((_, parsed))) => {
                let mut r = Vec::with_capacity(parsed.len());
                ranges(section, parsed, &mut r);
                trailers = header_map(section, &r).ok_or(FramingError::BadTrailers)?;
            }
            _ => return Err(FramingError::BadTrailers),
        }
    }
    Ok(trailers)
}

/// An I/O object that yields `pre` before reading from `io`: a connection handed on with
/// the bytes already read from it (to hyper by the fast path, to the proxy after a `101`).
pub struct Prefixed<IO> {
    pre: Bytes,
    io: IO,
}

impl<IO> Prefixed<IO> {
    /// `io`, with `pre` read first.
    pub fn new(pre: Bytes, io: IO) -> Self {
        Prefixed { pre, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            let chunk = self.pre.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_header_replaces_the_upstreams_lines_of_that_name() {
        let mut p = Passed {
            status: http::StatusCode::OK,
            lines: b"X-RateLimit-Remaining: 999\r\nx-other: a:b\r\nx-ratelimit-remaining: 5\r\n".to_vec(),
            has_date: false,
            declared: None,
            body: crate::body::empty(),
        };
        p.set_header(b"x-ratelimit-remaining", b"7");
        assert_eq!(p.lines, b"x-other: a:b\r\nx-ratelimit-remaining: 7\r\n");
    }

    #[test]
    fn a_recycled_header_map_comes_back_empty_and_a_huge_one_is_not_kept() {
        // Each test runs on its own thread: the spare list starts empty.
        let head = Bytes::from_static(b"x-a: 1\r\nx-b: 2\r\n");
        let map = header_map(&head, &[(0, 3, 5, 1), (8, 3, 13, 1)]).unwrap();
        assert_eq!(map.get("x-b").unwrap(), "2");
        recycle(map);
        let again = header_map(&head, &[(0, 3, 5, 1)]).unwrap();
        assert_eq!(again.len(), 1, "the earlier headers are gone: {again:?}");
        assert!(again.get("x-b").is_none());
        let mut huge = HeaderMap::with_capacity(SPARE_MAP_LARGEST + 1);
        huge.insert("x-huge", HeaderValue::from_static("1"));
        recycle(huge);
        assert!(SPARE_MAPS.with(|s| s.borrow().is_empty()), "an oversized map is dropped");
        recycle(again);
        assert_eq!(SPARE_MAPS.with(|s| s.borrow().len()), 1);
    }

    /// The body and trailers of a whole chunked message; `Ok(None)` when it is cut short.
    fn decode_all(input: &[&[u8]]) -> Result<Option<(Vec<u8>, HeaderMap)>, FramingError> {
        let mut st = Chunked::Size;
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        for piece in input {
            buf.extend_from_slice(piece);
            loop {
                match st.decode(&mut buf)? {
                    Decoded::Data(d) => body.extend_from_slice(&d),
                    Decoded::End(t) => return Ok(Some((body, t))),
                    Decoded::More => break,
                }
            }
        }
        Ok(None)
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let wire: &[u8] = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-checksum: abc\r\n\r\n";
        let (body, trailers) = decode_all(&[wire]).unwrap().unwrap();
        assert_eq!(body, b"hello, world");
        assert_eq!(trailers.get("x-checksum").unwrap(), "abc");
        // Byte by byte: the same result.
        let pieces: Vec<&[u8]> = wire.chunks(1).collect();
        let (body, trailers) = decode_all(&pieces).unwrap().unwrap();
        assert_eq!(body, b"hello, world");
        assert_eq!(trailers.get("x-checksum").unwrap(), "abc");
        // No trailers, upper-case hex.
        let (body, trailers) = decode_all(&[b"A\r\n0123456789\r\n0\r\n\r\n"]).unwrap().unwrap();
        assert_eq!(body, b"0123456789");
        assert!(trailers.is_empty());
    }

    #[test]
    fn broken_chunked_framing_is_an_error() {
        assert!(decode_all(&[b"zz\r\nhello\r\n"]).is_err());
        assert!(decode_all(&[b"2\r\nhello\r\n"]).is_err(), "data longer than the chunk size");
        assert!(decode_all(&[&[b'1'; 9000][..]]).is_err(), "endless size line");
        assert_eq!(decode_all(&[b"5\r\nhel"]).unwrap(), None, "cut short: more is needed, no error");
        assert_eq!(decode_all(&[b"+5\r\nhello\r\n"]).unwrap_err(), FramingError::BadChunkSize("+5".into()));
    }

    #[test]
    fn header_maps_share_the_buffer_and_keep_repeated_names() {
        let raw = Bytes::from_static(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-a: 2\r\n\r\n");
        let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut h);
        assert!(req.parse(&raw).unwrap().is_complete());
        let mut r = Vec::new();
        ranges(&raw, req.headers, &mut r);
        let map = header_map(&raw, &r).unwrap();
        assert_eq!(map.get("host").unwrap(), "a");
        assert_eq!(map.get_all("x-a").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert!(wants_close(&HeaderMap::from_iter([(
            http::header::CONNECTION,
            HeaderValue::from_static("keep-alive, Close")
        )])));
    }
}
