//! Exchanges that must survive every proxy hop (a gateway, or parent → uplink → child):
//! an upgraded connection echoing, gRPC with trailers, and 100 MB bodies streamed both ways.
//! Each one asserts what the client sees.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::backend;
use super::client::{self, Body};

/// An HTTP/1.1 connection over `io`.
pub async fn h1<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: T) -> http1::SendRequest<Body> {
    let (s, c) = http1::handshake(TokioIo::new(io)).await.unwrap();
    tokio::spawn(c);
    s
}

/// An HTTP/2 connection over `io`.
pub async fn h2<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: T) -> http2::SendRequest<Body> {
    let (s, c) = http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await.unwrap();
    tokio::spawn(c);
    s
}

/// Upgrades `io` with `GET path` (`Upgrade: echo`, which the test backend answers with 101
/// and then echoes) and checks two messages come back unchanged. The requests of these
/// exchanges carry the test application's API key (routes of an API ask for it; other
/// routes pass it on).
pub async fn assert_upgrade_echo<T: AsyncRead + AsyncWrite + Unpin>(mut io: T, host: &str, path: &str) {
    let auth = super::topology::BEARER;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
    );
    io.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(Duration::from_secs(10), io.read_exact(&mut byte)).await.unwrap().unwrap();
        head.push(byte[0]);
        assert!(head.len() < 64 * 1024, "response head never ended");
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    for msg in [&b"hello"[..], b"second message"] {
        io.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), io.read_exact(&mut back)).await.unwrap().unwrap();
        assert_eq!(back, msg);
    }
}

/// A unary call and a server stream to the [`backend::grpc`] server at `base`
/// (`scheme://authority` plus any path prefix): status, messages and trailers arrive.
pub async fn assert_grpc(s: &mut http2::SendRequest<Body>, base: &str) {
    for (method, messages) in [("Unary", 1usize), ("Stream", 3)] {
        let req = hyper::Request::post(format!("{base}/echo.Echo/{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(client::body(vec![0u8, 0, 0, 0, 1, b'q']))
            .unwrap();
        s.ready().await.unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(20), s.send_request(req)).await.unwrap().unwrap();
        assert_eq!(resp.status(), 200, "{method}");
        assert_eq!(resp.headers().get("content-type").unwrap(), "application/grpc");
        let collected =
            tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect()).await.unwrap().unwrap();
        let trailers = collected.trailers().cloned().expect("trailers reach the client");
        assert_eq!(trailers.get("grpc-status").unwrap(), "0");
        assert_eq!(trailers.get("grpc-message").unwrap(), "te=trailers", "TE: trailers crosses the hop");
        assert_eq!(collected.to_bytes().len(), messages * 6, "{method}: every message arrives");
    }
}

/// 100 MB up to `{base}/count` (the backend answers the byte count) and 100 MB down from
/// `{base}/bytes/N`, both streamed.
pub async fn assert_100mb_both_ways(s: &mut http1::SendRequest<Body>, host: &str, base: &str) {
    const SIZE: u64 = 100 * 1024 * 1024;
    let upload = backend::Repeat { remaining: SIZE, chunk: bytes::Bytes::from(vec![b'u'; 64 * 1024]) };
    let body: Body = upload.map_err(|e| match e {}).boxed();
    let auth = super::topology::BEARER;
    let req = hyper::Request::post(format!("{base}/count"))
        .header("host", host)
        .header("authorization", auth)
        .body(body)
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(120), s.send_request(req)).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let got = tokio::time::timeout(Duration::from_secs(120), resp.into_body().collect()).await.unwrap().unwrap();
    assert_eq!(got.to_bytes(), SIZE.to_string().as_bytes(), "the backend received every byte");
    s.ready().await.expect("the connection stays open for the next request");
    let req = hyper::Request::get(format!("{base}/bytes/{SIZE}"))
        .header("host", host)
        .header("authorization", auth)
        .body(client::body(""))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), s.send_request(req)).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let mut got: u64 = 0;
    let mut b = resp.into_body();
    let deadline = Instant::now() + Duration::from_secs(120);
    while let Some(f) = tokio::time::timeout(Duration::from_secs(20), b.frame()).await.unwrap() {
        got += f.unwrap().data_ref().map(|d| d.len() as u64).unwrap_or(0);
        assert!(Instant::now() < deadline, "download too slow");
    }
    assert_eq!(got, SIZE);
}
