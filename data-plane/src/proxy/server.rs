//! Entrypoint listeners: accept, TLS (ALPN h2/http1.1), HTTP/1.1 and HTTP/2 (h2c with
//! prior knowledge on plain ports), timeouts, and graceful shutdown that drains requests
//! in flight.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{ConnInfo, Gateway};

/// Connection limits of an entrypoint. Clones share one connection count: every
/// entrypoint and worker of a process served with clones of one `ServerLimits` counts
/// against the same `max_connections`.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// A client that has not sent complete request headers by then is cut off.
    pub header_read_timeout: Duration,
    /// A keep-alive connection with nothing in flight is closed after this long idle.
    pub idle_timeout: Duration,
    /// Largest request head (request line + headers), and largest HTTP/2 header list;
    /// past it the answer is 431.
    pub max_header_bytes: usize,
    /// How long shutdown waits for requests in flight.
    pub drain_timeout: Duration,
    /// Connections served at once; past it, new connections are closed at once.
    connections: Arc<tokio::sync::Semaphore>,
    max_connections: usize,
}

impl ServerLimits {
    /// Limits with their own connection count.
    pub fn new(
        header_read_timeout: Duration,
        idle_timeout: Duration,
        max_header_bytes: usize,
        drain_timeout: Duration,
        max_connections: usize,
    ) -> ServerLimits {
        let max_connections = max_connections.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        ServerLimits {
            header_read_timeout,
            idle_timeout,
            max_header_bytes,
            drain_timeout,
            connections: Arc::new(tokio::sync::Semaphore::new(max_connections)),
            max_connections,
        }
    }

    /// The connection limit.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// A slot for one more connection, if the limit allows.
    fn admit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.connections.clone().try_acquire_owned().ok()
    }
}

impl Default for ServerLimits {
    /// The command line's defaults: near nginx's (`client_header_timeout` 60 s, 32 KiB of
    /// headers) and Envoy's (60 KiB of headers), tighter on time (10 s for a head); the
    /// idle timeout is Traefik's.
    fn default() -> Self {
        ServerLimits::new(Duration::from_secs(10), Duration::from_secs(180), 64 * 1024, Duration::from_secs(30), 65_536)
    }
}

/// One bound entrypoint.
#[derive(Debug)]
pub struct EntryPoint {
    /// Its name.
    pub name: Arc<str>,
    /// The bound socket.
    pub listener: TcpListener,
    /// TLS configuration, for `websecure`-like entrypoints.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl EntryPoint {
    /// Binds `addr`.
    pub async fn bind(
        name: &str,
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<EntryPoint> {
        let listener = TcpListener::bind(addr).await?;
        Ok(EntryPoint { name: Arc::from(name), listener, tls })
    }

    /// Binds `addr` with `SO_REUSEPORT`, so that several workers can each accept on their
    /// own socket and the kernel spreads connections across them. The socket is a std one:
    /// turn it into an entrypoint with [`EntryPoint::from_std`] inside the worker's runtime.
    pub fn bind_shared(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        #[cfg(unix)]
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        Ok(socket.into())
    }

    /// Wraps a bound std listener; must run inside a Tokio runtime.
    pub fn from_std(
        name: &str,
        listener: std::net::TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<EntryPoint> {
        Ok(EntryPoint { name: Arc::from(name), listener: TcpListener::from_std(listener)?, tls })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

fn builder(limits: &ServerLimits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    // Extended CONNECT (RFC 8441, WebSocket over HTTP/2) is not advertised: the gateway does
    // not tunnel it, and a browser that does not see it opens its WebSocket over HTTP/1.1.
    b.http2().timer(TokioTimer::new()).max_header_list_size(limits.max_header_bytes as u32);
    b
}

/// The per-connection hyper service: hands each request to the gateway.
#[derive(Clone)]
struct GatewayService {
    gw: Arc<Gateway>,
    info: Arc<ConnInfo>,
    activity: Arc<Activity>,
}

/// When a hyper-served connection last moved bytes, and how many of its requests are being
/// answered: what its idle timeout looks at (hyper closes an idle HTTP/1 connection at its
/// header-read timeout, but never an idle HTTP/2 one).
struct Activity {
    start: std::time::Instant,
    /// Milliseconds from `start` to the last read or write.
    last: std::sync::atomic::AtomicU64,
    in_flight: std::sync::atomic::AtomicUsize,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: std::time::Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn touch(&self) {
        self.last.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long no byte has moved.
    fn quiet_for(&self) -> Duration {
        self.start.elapsed().saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)))
    }

    /// Returns once the connection has been quiet for `idle` with nothing in flight.
    async fn idle(&self, idle: Duration) {
        loop {
            let quiet = self.quiet_for();
            if quiet >= idle && self.in_flight.load(Ordering::Relaxed) == 0 {
                return;
            }
            // A request in flight (an upstream taking its time) keeps the connection.
            tokio::time::sleep(if quiet >= idle { idle } else { idle - quiet }).await;
        }
    }
}

/// Counts a request in flight until dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(a: &Arc<Activity>) -> InFlight {
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// I/O that records its activity.
struct Active<IO> {
    io: IO,
    activity: Arc<Activity>,
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Active<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if polled.is_ready() {
            self.activity.touch();
        }
        polled
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Active<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        if polled.is_ready() {
            self.activity.touch();
        }
        polled
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if polled.is_ready() {
            self.activity.touch();
        }
        polled
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl hyper::service::Service<http::Request<Incoming>> for GatewayService {
    type Response = http::Response<crate::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        let gw = self.gw.clone();
        let info = self.info.clone();
        let in_flight = InFlight::new(&self.activity);
        let http1 = req.version() < http::Version::HTTP_2;
        let (req, read) = if http1 && !http_body::Body::is_end_stream(req.body()) {
            let read = Arc::new(AtomicBool::new(false));
            (req.map(|b| crate::body::boxed(Tracked { inner: b, read: read.clone() })), Some(read))
        } else {
            (req.map(crate::body::incoming), None)
        };
        Box::pin(async move {
            let mut resp = gw.handle(req, &info).await;
            // An answer given before the request body was read to its end (401, 403, 429,
            // an upstream that answered early): the rest of that body is never read, so the
            // connection cannot carry another request. Say so, as Go's server does, so the
            // client does not send its next request on a connection about to close.
            if read.is_some_and(|r| !r.load(Ordering::Relaxed))
                && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS
            {
                resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            }
            // In flight until its body has been sent: a slow stream is not an idle connection.
            Ok(resp.map(|b| crate::body::holding(b, in_flight)))
        })
    }
}

/// A request body that records when it has been read to its end.
struct Tracked {
    inner: Incoming,
    read: Arc<AtomicBool>,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// What every connection of an entrypoint shares.
struct Entry {
    gw: Arc<Gateway>,
    builder: auto::Builder<TokioExecutor>,
    limits: ServerLimits,
    /// The HTTP/1.1 fast path's timeouts and largest head, from `limits`.
    timeouts: crate::h1::server::Timeouts,
    max_head: usize,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Cancelled when the entrypoint stops accepting: idle fast-path connections close then,
    /// and busy ones after their response.
    stop: CancellationToken,
}

/// One accepted connection: what serving it needs besides its I/O, in one allocation.
struct Accepted {
    entry: Arc<Entry>,
    info: ConnInfo,
    watcher: hyper_util::server::graceful::Watcher,
    /// The connection's slot in the entrypoint's connection limit, given back when it ends.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Accepted {
    /// The connection's task: the TLS handshake if the entrypoint has TLS, then HTTP.
    ///
    /// Every idle connection holds this future, so it is kept small: it owns the boxed
    /// connection and the socket once (an `async fn` would hold each argument twice, and a
    /// stream moved into an inner future is held by both), the fast path borrows the
    /// socket, and whatever only some connections need (TLS, hyper) is boxed when they need
    /// it.
    #[allow(clippy::manual_async_fn)]
    fn run(self: Box<Self>, mut stream: tokio::net::TcpStream) -> impl Future<Output = ()> + Send + 'static {
        async move {
            if let Some(acceptor) = self.entry.tls.clone() {
                return Box::pin(self.serve_tls(acceptor, stream)).await;
            }
            let served = self.fast(&mut stream).await;
            self.after_fast(served, stream).await;
        }
    }

    /// A TLS connection: the handshake, then hyper for HTTP/2, else as a plain one.
    #[allow(clippy::manual_async_fn)]
    fn serve_tls(
        self: Box<Self>,
        acceptor: tokio_rustls::TlsAcceptor,
        stream: tokio::net::TcpStream,
    ) -> impl Future<Output = ()> + Send + 'static {
        async move {
            let peer = self.info.peer;
            let mut tls =
                match tokio::time::timeout(self.entry.limits.header_read_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                };
            if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                // HTTP/2 was negotiated: hyper's from the first byte.
                return Box::pin(self.serve_hyper(tls)).await;
            }
            let served = self.fast(&mut tls).await;
            self.after_fast(served, tls).await;
        }
    }

    /// The HTTP/1.1 fast path on `io`, until the connection ends or a request needs hyper.
    fn fast<'a, IO>(&'a self, io: &'a mut IO) -> impl Future<Output = crate::h1::server::Outcome> + Send + 'a
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + crate::h1::server::ReadReady + Unpin + Send,
    {
        let (entry, info) = (&*self.entry, &self.info);
        let handler = move |head| entry.gw.serve_head(head, info);
        crate::h1::server::serve(io, handler, &info.peer, &entry.timeouts, entry.max_head, Some(&entry.stop))
    }

    /// hyper, from the request the fast path handed over (with the bytes it had read) to
    /// the end of the connection; nothing when the fast path closed it.
    async fn after_fast<IO>(self: Box<Self>, served: crate::h1::server::Outcome, io: IO)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        if let crate::h1::server::Outcome::Handover(read) = served {
            // Boxed: hyper's connection future is large, and inline it would be part of
            // every connection's task, idle ones included.
            Box::pin(self.serve_hyper(crate::h1::Prefixed::new(read, io))).await
        }
    }

    /// hyper, to the end of the connection (HTTP/2 over TLS from its first byte), closed
    /// once it has been idle for the idle timeout with nothing in flight.
    async fn serve_hyper<IO>(self: Box<Self>, io: IO)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // The permit and the watcher live to the end of this function: the connection
        // counts against the limit, and the drain waits for it.
        let Accepted { entry, info, watcher, _permit } = *self;
        let peer = info.peer;
        // Only hyper's connections track activity (the fast path has its own timers).
        let activity = Activity::new();
        let svc = GatewayService { gw: entry.gw.clone(), info: Arc::new(info), activity: activity.clone() };
        activity.touch();
        let io = Active { io, activity: activity.clone() };
        // Handed over after shutdown began (a request with a body whose head was still
        // arriving): a graceful shutdown of the connection now would close it before its
        // request is answered. hyper answers it without keep-alive (`Connection: close`)
        // and closes, and the drain waits for it (the watcher is held, not used).
        let stopping = entry.stop.is_cancelled();
        let builder = if stopping {
            let mut b = entry.builder.clone();
            b.http1().keep_alive(false);
            std::borrow::Cow::Owned(b)
        } else {
            std::borrow::Cow::Borrowed(&entry.builder)
        };
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc).into_owned();
        let serving = if stopping {
            futures_util::future::Either::Left(conn)
        } else {
            futures_util::future::Either::Right(watcher.watch(conn))
        };
        tokio::select! {
            served = serving => {
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            }
            () = activity.idle(entry.limits.idle_timeout) => tracing::debug!(%peer, "idle connection closed"),
        }
    }
}

/// Serves an entrypoint until `shutdown` turns true, then drains connections.
pub async fn serve(
    ep: EntryPoint,
    gw: Arc<Gateway>,
    upstreams: Arc<crate::upstream::Upstreams>,
    limits: ServerLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let port = ep.listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let graceful = GracefulShutdown::new();
    let entry = Arc::new(Entry {
        gw,
        builder: builder(&limits),
        timeouts: crate::h1::server::Timeouts { header_read: limits.header_read_timeout, idle: limits.idle_timeout },
        max_head: limits.max_header_bytes.max(8192),
        limits,
        tls: ep.tls.clone().map(tokio_rustls::TlsAcceptor::from),
        stop: CancellationToken::new(),
    });
    let mut limit_logged = false;
    loop {
        let accepted = tokio::select! {
            a = ep.listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(entrypoint = %ep.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Past the connection limit a new connection is closed at once: a flood cannot take
        // memory and descriptors from the connections being served.
        let Some(permit) = entry.limits.admit() else {
            if !limit_logged {
                tracing::warn!(entrypoint = %ep.name, max = entry.limits.max_connections(), "connection limit reached; closing new connections");
                limit_logged = true;
            }
            drop(stream);
            continue;
        };
        limit_logged = false;
        let _ = stream.set_nodelay(true);
        let info = ConnInfo::new(ep.name.clone(), port, entry.tls.is_some(), peer, upstreams.clone());
        let accepted = Box::new(Accepted { entry: entry.clone(), info, watcher: graceful.watcher(), _permit: permit });
        tokio::spawn(accepted.run(stream));
    }
    // Idle fast-path connections close now; hyper's are drained below.
    entry.stop.cancel();
    drop(ep.listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!(entrypoint = %ep.name, "drained"),
        _ = tokio::time::sleep(entry.limits.drain_timeout) => tracing::warn!(entrypoint = %ep.name, "drain timeout: closing remaining connections"),
    }
}
