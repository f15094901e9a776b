//! A test backend on loopback: echoes what it received, streams, sleeps, upgrades.
//!
//! - any path: `200`, body `path=<path-and-query>`, headers `x-seen-*` echo the request's
//!   Host, X-Forwarded-For/-Prefix/-Proto, traceparent and the backend's `x-backend-name`;
//! - `/slow`: waits 3 s before answering;
//! - `/trickle`: answers at once, then sends its body (`trickled`) 3 s later;
//! - `/count`: reads the whole request body and answers with its length;
//! - `/bytes/<n>`: streams `n` bytes back;
//! - `/health`: 200, or 500 once the `healthy` flag is cleared;
//! - an `Upgrade` request: `101`, then echoes raw bytes.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, Infallible>;

/// A running backend.
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `/health` answers 200 while this is true.
    pub healthy: Arc<AtomicBool>,
    /// Requests served.
    pub hits: Arc<AtomicUsize>,
    /// `METHOD path` of each request that reached it, health checks aside.
    pub seen: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).boxed()
}

async fn serve(
    req: Request<Incoming>,
    name: Arc<str>,
    healthy: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
) -> Result<Response<Body>, Infallible> {
    hits.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    if !path.starts_with("/health") {
        seen.lock().unwrap().push(format!("{} {path}", req.method()));
    }
    let mut echo = Vec::new();
    for (h, v) in req.headers() {
        let name = h.as_str();
        if [
            "host",
            "x-forwarded-for",
            "x-forwarded-prefix",
            "x-forwarded-proto",
            "x-real-ip",
            "x-forwarded-host",
            "x-replaced-path",
            "x-test",
            "traceparent",
            "authorization",
        ]
        .contains(&name)
        {
            echo.push((format!("x-seen-{name}"), v.clone()));
        }
    }
    if req.headers().contains_key(hyper::header::UPGRADE) {
        let mut req = req;
        tokio::spawn(async move {
            if let Ok(up) = hyper::upgrade::on(&mut req).await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 4096];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut r = Response::new(full(""));
        *r.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut().insert("connection", "upgrade".parse().unwrap());
        r.headers_mut().insert("upgrade", "echo".parse().unwrap());
        return Ok(r);
    }
    let mut resp = if path.starts_with("/slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
        Response::new(full("slow"))
    } else if path.starts_with("/trickle") {
        Response::new(BodyExt::boxed(Trickle {
            delay: Box::pin(tokio::time::sleep(Duration::from_secs(3))),
            done: false,
        }))
    } else if path.starts_with("/count") {
        let mut n: u64 = 0;
        let mut body = req.into_body();
        while let Some(Ok(f)) = body.frame().await {
            if let Some(d) = f.data_ref() {
                n += d.len() as u64;
            }
        }
        Response::new(full(n.to_string()))
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        let total: u64 = n.parse().unwrap_or(0);
        Response::new(Repeat { remaining: total, chunk: Bytes::from(vec![b'x'; 64 * 1024]) }.boxed())
    } else if path.starts_with("/health") {
        let mut r = Response::new(full("health"));
        if !healthy.load(Ordering::Relaxed) {
            *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        }
        r
    } else {
        Response::new(full(format!("path={path}")))
    };
    for (k, v) in echo {
        resp.headers_mut().insert(hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(), v);
    }
    resp.headers_mut().insert("x-backend-name", name.parse().unwrap());
    resp.headers_mut().insert("x-traefik-backend", "set-by-backend".parse().unwrap());
    Ok(resp)
}

/// A body sent 3 s after its head.
struct Trickle {
    delay: std::pin::Pin<Box<tokio::time::Sleep>>,
    done: bool,
}

impl hyper::body::Body for Trickle {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.done {
            return std::task::Poll::Ready(None);
        }
        std::task::ready!(std::future::Future::poll(self.delay.as_mut(), cx));
        self.done = true;
        std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"trickled")))))
    }
}

/// A streamed body of `remaining` bytes, sent in 64 KiB frames.
pub struct Repeat {
    /// Bytes still to send.
    pub remaining: u64,
    /// The frame content.
    pub chunk: Bytes,
}

impl hyper::body::Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = (self.chunk.len() as u64).min(self.remaining) as usize;
        self.remaining -= n as u64;
        std::task::Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }
}

/// Starts a backend named `name` on `ip`:0.
pub async fn start(name: &str, ip: &str) -> Backend {
    let listener = TcpListener::bind(format!("{ip}:0")).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let healthy = Arc::new(AtomicBool::new(true));
    let hits = Arc::new(AtomicUsize::new(0));
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let name: Arc<str> = Arc::from(name);
    let (h, c, s) = (healthy.clone(), hits.clone(), seen.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (name, h, c, s) = (name.clone(), h.clone(), c.clone(), s.clone());
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req| serve(req, name.clone(), h.clone(), c.clone(), s.clone()));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Backend { addr, healthy, hits, seen, task }
}

/// An h2c backend that answers like a gRPC server: `n` length-prefixed messages, then
/// `grpc-status` in trailers.
pub async fn grpc(ip: &str) -> std::net::SocketAddr {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind(format!("{ip}:0")).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let stream = req.uri().path().ends_with("/Stream");
                    let te = req.headers().get("te").map(|v| v.to_str().unwrap_or("").to_string()).unwrap_or_default();
                    let _ = req.into_body().collect().await;
                    let n = if stream { 3 } else { 1 };
                    let mut frames: std::collections::VecDeque<hyper::body::Frame<bytes::Bytes>> = (0..n)
                        .map(|i| hyper::body::Frame::data(bytes::Bytes::from(vec![0, 0, 0, 0, 1, b'a' + i as u8])))
                        .collect();
                    let mut trailers = hyper::HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    trailers.insert("grpc-message", format!("te={te}").parse().unwrap());
                    frames.push_back(hyper::body::Frame::trailers(trailers));
                    let body = FrameBody(frames);
                    let mut resp = hyper::Response::new(body);
                    resp.headers_mut().insert("content-type", "application/grpc".parse().unwrap());
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// A body made of prepared frames (data, then trailers).
struct FrameBody(std::collections::VecDeque<hyper::body::Frame<bytes::Bytes>>);

impl hyper::body::Body for FrameBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}
