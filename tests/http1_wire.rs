//! HTTP/1.1 on the wire, both sides of the gateway: pipelining, HEAD, chunked and
//! close-delimited upstream responses, and a connection that switches from bodiless
//! requests to one with a body and back. Raw sockets on both ends, so framing mistakes
//! cannot hide behind a client library.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::gateway::GatewayProc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A backend written against raw sockets. By path:
/// - `/chunked`: a chunked body `hello, world` with a trailer;
/// - `/http10`: an HTTP/1.0 answer delimited by closing the connection;
/// - `/post`: echoes the request body it read (by `Content-Length`);
/// - `/stray…`: answers `answer <n>`, then 20 ms later writes a second, unsolicited
///   response (`EVIL`) into the idle connection and counts it;
/// - anything else: `path=<path>` with `Content-Length`.
///
/// Returns its address, the number of connections it accepted, and of stray responses
/// it sent.
async fn raw_backend() -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let strays = Arc::new(AtomicUsize::new(0));
    let (count, sent_strays) = (accepted.clone(), strays.clone());
    let answered = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            let (sent_strays, answered) = (sent_strays.clone(), answered.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end + 4);
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                        })
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < length {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Vec<u8> = buf.drain(..length).collect();
                    if path.starts_with("/stray") {
                        let n = answered.fetch_add(1, Ordering::Relaxed);
                        let b = format!("answer {n}");
                        let a = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{b}", b.len());
                        if s.write_all(a.as_bytes()).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nEVIL").await;
                        sent_strays.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let answer: Vec<u8> = match path.as_str() {
                        "/chunked" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\nx-sum: 1\r\n\r\n".to_vec(),
                        "/http10" => {
                            let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nuntil the end").await;
                            return;
                        }
                        "/post" => {
                            let mut a = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len() + 5).into_bytes();
                            a.extend_from_slice(b"body=");
                            a.extend_from_slice(&body);
                            a
                        }
                        p => {
                            let b = format!("path={p}");
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-backend: raw\r\n\r\n{b}", b.len()).into_bytes()
                        }
                    };
                    if s.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted, strays)
}

/// Reads one response off `s`: status line and headers (lower-cased names), then a body
/// framed by `Content-Length` or chunked encoding (none for `head`).
fn read_response(s: &mut TcpStream, pending: &mut Vec<u8>, head: bool) -> (String, Vec<(String, String)>, Vec<u8>) {
    let mut chunk = [0u8; 4096];
    let mut fill = |pending: &mut Vec<u8>| {
        let n = s.read(&mut chunk).expect("read from the gateway");
        assert!(n > 0, "the gateway closed the connection mid-response");
        pending.extend_from_slice(&chunk[..n]);
    };
    let end = loop {
        if let Some(e) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break e;
        }
        fill(pending);
    };
    let text = String::from_utf8(pending[..end].to_vec()).unwrap();
    pending.drain(..end + 4);
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap().to_string();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let find = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if head {
        return (status, headers, body);
    }
    if let Some(len) = find("content-length") {
        let len: usize = len.parse().unwrap();
        while pending.len() < len {
            fill(pending);
        }
        body = pending.drain(..len).collect();
    } else if find("transfer-encoding").as_deref() == Some("chunked") {
        loop {
            let eol = loop {
                if let Some(e) = pending.windows(2).position(|w| w == b"\r\n") {
                    break e;
                }
                fill(pending);
            };
            let size = usize::from_str_radix(std::str::from_utf8(&pending[..eol]).unwrap(), 16).unwrap();
            pending.drain(..eol + 2);
            while pending.len() < size + 2 {
                fill(pending);
            }
            body.extend(pending.drain(..size));
            pending.drain(..2);
            if size == 0 {
                break;
            }
        }
    } else {
        panic!("response without framing: {text}");
    }
    (status, headers, body)
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_framing_on_both_sides_of_the_gateway() {
    let (be, accepted, _) = raw_backend().await;
    let tmp = tempfile::tempdir().unwrap();
    let y = common::service_manifests("ns", "raw", &[be])
        + "---\napiVersion: traefik.io/v1alpha1\nkind: IngressRoute\nmetadata: {name: all, namespace: ns}\nspec:\n  entryPoints: [web]\n  routes:\n    - match: PathPrefix(`/`)\n      services: [{name: raw, port: 80}]\n";
    fs::write(tmp.path().join("all.yaml"), y).unwrap();
    let gw = GatewayProc::start(None, tmp.path(), &["--workers", "1"]);
    let web = gw.entry_points["web"];

    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(web).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut pending = Vec::new();

        // Two pipelined requests in one write come back in order.
        s.write_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        for want in ["path=/one", "path=/two"] {
            let (status, h, body) = read_response(&mut s, &mut pending, false);
            assert_eq!(status, "HTTP/1.1 200 OK");
            assert_eq!(String::from_utf8(body).unwrap(), want);
            assert_eq!(header(&h, "x-backend"), Some("raw"), "upstream headers pass through");
            assert!(header(&h, "date").is_some(), "a Date header is added");
        }

        // HEAD: the length is announced, no body follows; the next answer is intact.
        s.write_all(b"HEAD /head HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let (status, h, _) = read_response(&mut s, &mut pending, true);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(header(&h, "content-length"), Some("10"));

        // A chunked upstream body arrives whole, re-framed for this hop.
        s.write_all(b"GET /chunked HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let (status, h, body) = read_response(&mut s, &mut pending, false);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, b"hello, world");
        assert_eq!(header(&h, "transfer-encoding"), Some("chunked"));

        // A close-delimited HTTP/1.0 answer arrives whole too.
        s.write_all(b"GET /http10 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let (status, _, body) = read_response(&mut s, &mut pending, false);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, b"until the end");

        // A request with a body on the same connection, then bodiless ones again.
        s.write_all(b"POST /post HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nabcde").unwrap();
        let (status, _, body) = read_response(&mut s, &mut pending, false);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, b"body=abcde");
        s.write_all(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let (_, _, body) = read_response(&mut s, &mut pending, false);
        assert_eq!(body, b"path=/after");

        // `Connection: close` is honoured: answered, then closed.
        s.write_all(b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").unwrap();
        let (_, _, body) = read_response(&mut s, &mut pending, false);
        assert_eq!(body, b"path=/last");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty() && pending.is_empty(), "nothing after the last response");
    })
    .await
    .unwrap();
    // Keep-alive upstream: the HTTP/1.0 answer cost its connection; the bodiless requests
    // before it shared one.
    let n = accepted.load(Ordering::Relaxed);
    assert!((2..=4).contains(&n), "{n} upstream connections for 8 requests");
}

/// A backend that writes a second, unsolicited response into an idle keep-alive
/// connection: the next request — on the direct lane, the general lane, or with a body —
/// never gets those bytes as its answer (it goes out on a fresh connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_an_upstream_sends_while_idle_never_answer_the_next_request() {
    let (be, accepted, strays) = raw_backend().await;
    let tmp = tempfile::tempdir().unwrap();
    let y = common::service_manifests("ns", "raw", &[be])
        + "---\napiVersion: traefik.io/v1alpha1\nkind: IngressRoute\nmetadata: {name: all, namespace: ns}\nspec:\n  entryPoints: [web]\n  routes:\n    - match: PathPrefix(`/stray`)\n      services: [{name: raw, port: 80}]\n    - match: PathPrefix(`/stray-mw`)\n      middlewares: [{name: stamp}]\n      services: [{name: raw, port: 80}]\n---\napiVersion: traefik.io/v1alpha1\nkind: Middleware\nmetadata: {name: stamp, namespace: ns}\nspec: {headers: {customResponseHeaders: {X-Lane: general}}}\n";
    fs::write(tmp.path().join("all.yaml"), y).unwrap();
    let gw = GatewayProc::start(None, tmp.path(), &["--workers", "1"]);
    let web = gw.entry_points["web"];
    let requests = [
        "GET /stray HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /stray-mw HTTP/1.1\r\nHost: a\r\n\r\n",
        "POST /stray HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
        "GET /stray HTTP/1.1\r\nHost: a\r\n\r\n",
    ];
    for (i, req) in requests.iter().enumerate() {
        let mut s = tokio::net::TcpStream::connect(web).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let resp = common::client::read_response(&mut s).await;
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        assert_eq!(body, format!("answer {i}"), "request {i}: its own answer, never the stray one: {resp}");
        // Wait until the backend has written its stray response into the idle connection.
        common::eventually(Duration::from_secs(10), "the stray response is sent", || async {
            (strays.load(Ordering::Relaxed) > i).then_some(())
        })
        .await;
    }
    assert_eq!(accepted.load(Ordering::Relaxed), requests.len(), "no connection that spoke while idle was reused");
}
