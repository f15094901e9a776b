//! Idle HTTP/1.1 connections, by key: the one pool behind every HTTP/1.1 connection atrium
//! makes (plain and TLS upstreams, and uplink streams to children).
//!
//! A connection is only ever reused when it is known to be clean:
//! - **at check-in** its exchange must be complete (response read to its end, request body
//!   fully written) and nothing may be left unread in its buffer: an upstream that sent more
//!   than one response's worth of bytes is not trusted with another request;
//! - **at checkout** it is probed without waiting: a byte, an end of stream or an error that
//!   arrived while it sat idle (a late body, an unsolicited response, a close) discards it.
//!   Otherwise those bytes would be read as the next request's answer, and one client would
//!   get another's response.

use std::collections::HashMap;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadBuf};

/// A connection and what was read from it but not consumed yet.
pub(crate) struct Conn<IO> {
    pub(super) io: IO,
    /// Empty, with no memory, while the connection is pooled.
    pub(super) buf: BytesMut,
    /// The request head being written (kept: no allocation per request).
    pub(super) head: Vec<u8>,
    /// The response-header timer, made once and moved forward for each request: pushing a
    /// deadline later is an atomic update, where a timer per request is a timer-wheel
    /// insertion and removal.
    pub(super) timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> Conn<IO> {
    /// Wraps a fresh connection.
    pub(crate) fn new(io: IO) -> Self {
        Conn { io, buf: read_buffer(), head: Vec::with_capacity(512), timer: None }
    }
}

/// Room for a response head: the read buffer a connection holds while it is in use.
const READ_BUFFER: usize = 8192;

/// A read buffer for a connection in use: a spare one of this thread, or a new one.
fn read_buffer() -> BytesMut {
    crate::h1::read_buffer(&crate::h1::SPARE_UPSTREAM_READS, READ_BUFFER)
}

impl<IO: AsyncRead + Unpin> Conn<IO> {
    /// Whether nothing has happened on the connection since it went idle: no byte, no end
    /// of stream, no error. Looks without waiting (one non-blocking read attempt).
    fn idle_and_clean(&mut self) -> bool {
        let mut probe = [0u8; 64];
        let mut rb = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        matches!(Pin::new(&mut self.io).poll_read(&mut cx, &mut rb), Poll::Pending)
    }
}

/// Idle connections of one key, with when each was put back.
type Idle<IO> = Vec<(Conn<IO>, Instant)>;

/// Idle connections by key (an upstream's scheme and authority; a child and uplink for
/// uplink streams).
pub(crate) struct Pool<K, IO> {
    // Keys come from the configuration, not from clients: a fast hash is safe here.
    idle: Mutex<HashMap<K, Idle<IO>, foldhash::fast::RandomState>>,
    /// While non-zero, connections are closed after use instead of pooled.
    paused: AtomicUsize,
    /// Idle connections kept per key.
    max_idle: usize,
    /// Connections discarded at checkout because they were not clean.
    discarded: AtomicU64,
}

impl<K: Hash + Eq, IO: AsyncRead + Unpin> Pool<K, IO> {
    /// An empty pool keeping at most `max_idle` connections per key.
    pub(crate) fn new(max_idle: usize) -> Self {
        Pool {
            idle: Mutex::new(HashMap::default()),
            paused: AtomicUsize::new(0),
            max_idle,
            discarded: AtomicU64::new(0),
        }
    }

    /// A clean connection of `key` idle for less than `max_age` at `now` (see the module
    /// documentation); unclean or too old ones met on the way are closed.
    pub(super) fn checkout(&self, key: &K, max_age: Duration, now: Instant) -> Option<Conn<IO>> {
        loop {
            let mut c = {
                let mut idle = self.idle.lock().ok()?;
                let list = idle.get_mut(key)?;
                let (c, since) = list.pop()?;
                if now.saturating_duration_since(since) >= max_age {
                    // The newest is too old: so is every one below it.
                    list.clear();
                    return None;
                }
                c
            };
            // Probed outside the lock: a probe is a system call.
            if c.idle_and_clean() {
                c.buf = read_buffer();
                return Some(c);
            }
            self.discarded.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("pooled connection had unread bytes or was closed while idle; discarded");
        }
    }

    /// Pools `c`, idle since `at`, unless it holds unread bytes (see the module
    /// documentation) or pooling is paused.
    pub(super) fn checkin(&self, key: K, mut c: Conn<IO>, at: Instant) {
        if self.paused.load(Ordering::Relaxed) > 0 {
            return;
        }
        if !c.buf.is_empty() {
            self.discarded.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(unread = c.buf.len(), "upstream sent more than its response; connection closed");
            return;
        }
        // An idle connection holds no read buffer (it is empty here): the thread keeps it
        // for the next connection that reads.
        crate::h1::spare_read_buffer(&crate::h1::SPARE_UPSTREAM_READS, std::mem::take(&mut c.buf));
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

    /// Connections discarded because they were not clean, so far.
    pub(crate) fn discarded(&self) -> u64 {
        self.discarded.load(Ordering::Relaxed)
    }

    /// Whether `key` has an idle connection now.
    pub(crate) fn has_idle(&self, key: &K) -> bool {
        self.idle_count(key) > 0
    }

    /// Idle connections of `key` now.
    pub(crate) fn idle_count(&self, key: &K) -> usize {
        self.idle.lock().map(|i| i.get(key).map_or(0, Vec::len)).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn connections_that_spoke_while_idle_or_closed_are_never_handed_out() {
        let pool: Pool<u8, tokio::io::DuplexStream> = Pool::new(8);
        let now = Instant::now();
        // Quiet: handed out.
        let (quiet, _quiet_peer) = tokio::io::duplex(1024);
        pool.checkin(1, Conn::new(quiet), now);
        assert!(pool.checkout(&1, Duration::from_secs(60), now).is_some());
        // Spoke while idle (a late response), closed while idle, or left bytes unread at
        // check-in: none is handed out.
        let (stray, mut stray_peer) = tokio::io::duplex(1024);
        pool.checkin(1, Conn::new(stray), now);
        stray_peer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nEVIL").await.unwrap();
        let (closed, closed_peer) = tokio::io::duplex(1024);
        pool.checkin(1, Conn::new(closed), now);
        drop(closed_peer);
        assert!(pool.checkout(&1, Duration::from_secs(60), now).is_none());
        assert_eq!(pool.discarded(), 2);
        let (leftover, _p) = tokio::io::duplex(1024);
        let mut c = Conn::new(leftover);
        c.buf.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        pool.checkin(1, c, now);
        assert_eq!(pool.idle_count(&1), 0, "unread bytes at check-in: closed");
        assert_eq!(pool.discarded(), 3);
        // Too old: not handed out either.
        let (old, _p) = tokio::io::duplex(1024);
        pool.checkin(1, Conn::new(old), now);
        assert!(pool.checkout(&1, Duration::ZERO, now).is_none());
    }

    #[tokio::test]
    async fn a_pooled_connection_holds_no_read_buffer_and_gets_one_back_at_checkout() {
        let pool: Pool<u8, tokio::io::DuplexStream> = Pool::new(8);
        let now = Instant::now();
        let (io, _peer) = tokio::io::duplex(1024);
        let c = Conn::new(io);
        assert!(c.buf.capacity() >= READ_BUFFER, "a connection in use has room for a response head");
        pool.checkin(1, c, now);
        {
            let idle = pool.idle.lock().unwrap();
            let (pooled, _) = &idle[&1][0];
            assert_eq!(pooled.buf.capacity(), 0, "an idle pooled connection holds no read buffer");
        }
        let back = pool.checkout(&1, Duration::from_secs(60), now).expect("a clean connection is handed out");
        assert!(back.buf.capacity() >= READ_BUFFER && back.buf.is_empty());
    }
}
