//! The uplink transport on its own: mutual-TLS QUIC on loopback, a header frame, then HTTP
//! over the stream (HTTP/1.1, and HTTP/2 with trailers); garbage resets only its stream;
//! peers from another CA are refused in both directions.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use atrium_data_plane::pki;
use atrium_data_plane::pki::Role;
use atrium_data_plane::trust::NodeTrust;
use atrium_data_plane::uplink::tls::ServerCheck;
use atrium_data_plane::uplink::{self, Liveness};
use atrium_proto::v1 as pb;
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A CA in `dir` and a certificate per `(name, role)`, as each node would load them.
fn pki_dir(dir: &Path, names: &[(&str, Role)]) -> Vec<NodeTrust> {
    pki::init_ca(dir).unwrap();
    names.iter().map(|(n, role)| NodeTrust::load(&pki::issue(dir, n, *role, &[]).unwrap()).unwrap()).collect()
}

/// A child-side endpoint that answers every DATA stream with what it saw.
async fn child(t: &NodeTrust) -> (SocketAddr, quinn::Endpoint) {
    child_with(t, Liveness::default()).await
}

/// [`child`] with `liveness` (the streams a parent may open); `/hold` answers a body that
/// never ends, so its stream stays in use.
async fn child_with(t: &NodeTrust, liveness: Liveness) -> (SocketAddr, quinn::Endpoint) {
    let cfg = uplink::tls::server_config(t, liveness).unwrap();
    let ep = quinn::Endpoint::server(cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = ep.local_addr().unwrap();
    let server = ep.clone();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let h = match uplink::frame::read_header(&mut recv).await {
                            Ok(h) => h,
                            Err(_) => {
                                // Garbage: reset this stream only.
                                let _ = send.reset(1u32.into());
                                let _ = recv.stop(1u32.into());
                                return;
                            }
                        };
                        let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let h = h.clone();
                            async move {
                                let body = format!(
                                    "uplink={} client={} path={} version={:?}",
                                    h.uplink,
                                    h.client_addr,
                                    req.uri().path(),
                                    req.version()
                                );
                                let body = if req.uri().path() == "/hold" {
                                    Either::Left(StreamBody::new(tokio_stream::pending::<
                                        Result<hyper::body::Frame<Bytes>, std::convert::Infallible>,
                                    >()))
                                } else {
                                    Either::Right(Full::new(Bytes::from(body)))
                                };
                                let mut resp = hyper::Response::new(body);
                                resp.headers_mut().insert("x-traefik-backend", "cluster-a".parse().unwrap());
                                Ok::<_, std::convert::Infallible>(resp)
                            }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection_with_upgrades(TokioIo::new(uplink::frame::io(send, recv)), svc)
                            .await;
                    });
                }
            });
        }
    });
    (addr, ep)
}

/// Connects as a parent with `t`'s certificate, or refuses (either side) with a reason.
async fn parent_connect(t: &NodeTrust, check: &ServerCheck, addr: SocketAddr) -> Result<quinn::Connection, String> {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(uplink::tls::client_config(t, check, Liveness::default()).map_err(|e| e.to_string())?);
    let connecting = ep.connect(addr, "localhost").map_err(|e| e.to_string())?;
    let conn = tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    // With TLS 1.3 the client may finish first; a refusal by the child then closes the
    // connection at once: a stream tells.
    let probe = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&[0, 0, 0, 0]).await.map_err(|e| e.to_string())?;
        let mut b = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut recv, &mut b).await;
        Ok::<_, String>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), probe).await;
    match conn.close_reason() {
        Some(reason) => Err(reason.to_string()),
        None => Ok(conn),
    }
}

async fn data_stream(conn: &quinn::Connection, uplink_name: &str) -> uplink::frame::StreamIo {
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let h = pb::StreamHeader {
        kind: pb::stream_header::Kind::Data as i32,
        uplink: uplink_name.into(),
        client_addr: "203.0.113.9:4321".into(),
        client_proto: "https".into(),
        traceparent: String::new(),
    };
    uplink::frame::write_frame(&mut send, &h).await.unwrap();
    uplink::frame::io(send, recv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_http2_over_quic_streams_with_mutual_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let t = pki_dir(tmp.path(), &[("cluster-a", Role::Agent), ("control-plane", Role::ControlPlane)]);
    let (addr, _child) = child(&t[0]).await;
    let conn = parent_connect(&t[1], &ServerCheck::default(), addr).await.unwrap();

    // HTTP/1.1 on one stream.
    let io = data_stream(&conn, "crm").await;
    let (mut s, c) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(io)).await.unwrap();
    tokio::spawn(c);
    let resp = s
        .send_request(hyper::Request::get("/health").header("host", "a").body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-traefik-backend"], "cluster-a");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "uplink=crm client=203.0.113.9:4321 path=/health version=HTTP/1.1");

    // HTTP/2 on another stream of the same connection.
    let io = data_stream(&conn, "billing").await;
    let (mut s, c) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(TokioExecutor::new(), TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(c);
    let resp =
        s.send_request(hyper::Request::get("http://a/grpc").body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "uplink=billing client=203.0.113.9:4321 path=/grpc version=HTTP/2.0");

    // Garbage resets its own stream; the connection and the child keep serving.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef]).await.unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read_to_end(&mut recv, &mut buf))
        .await
        .unwrap();
    assert!(r.is_err(), "the garbage stream is reset, not answered");
    let io = data_stream(&conn, "crm").await;
    let (mut s, c) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(io)).await.unwrap();
    tokio::spawn(c);
    let resp = s
        .send_request(hyper::Request::get("/again").header("host", "a").body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_from_another_ca_are_refused_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = pki_dir(&tmp.path().join("ours"), &[("cluster-a", Role::Agent), ("control-plane", Role::ControlPlane)]);
    let theirs =
        pki_dir(&tmp.path().join("theirs"), &[("cluster-x", Role::Agent), ("control-plane", Role::ControlPlane)]);
    let ours_ca = std::fs::read(tmp.path().join("ours/ca.pem")).unwrap();
    let (addr, _child) = child(&ours[0]).await;
    // A parent with a certificate from another CA: refused by the child.
    let check = ServerCheck { root_cas: ours_ca, ..Default::default() };
    assert!(parent_connect(&theirs[1], &check, addr).await.is_err());
    // A child whose certificate chains to another CA: refused by the parent.
    let (other_addr, _other_child) = child(&theirs[0]).await;
    let e = parent_connect(&ours[1], &ServerCheck::default(), other_addr).await.unwrap_err();
    assert!(e.to_lowercase().contains("certificate") || e.to_lowercase().contains("unknown"), "{e}");
    // insecureSkipVerify accepts the unknown child (the seed's development setting), but the
    // child still insists on a client certificate from its own CA.
    let conn =
        parent_connect(&theirs[1], &ServerCheck { insecure_skip_verify: true, ..Default::default() }, other_addr)
            .await
            .unwrap();
    let io = data_stream(&conn, "crm").await;
    let (mut s, c) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(io)).await.unwrap();
    tokio::spawn(c);
    let resp = s
        .send_request(hyper::Request::get("/x").header("host", "a").body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// A chain to the CA is not enough: a child lets in only parents (control planes and data
/// planes), and a parent talks only to agents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_of_the_wrong_role_are_refused_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let t = pki_dir(
        tmp.path(),
        &[
            ("cluster-a", Role::Agent),
            ("cluster-b", Role::Agent),
            ("data-plane", Role::DataPlane),
            ("control-plane", Role::ControlPlane),
        ],
    );
    let (addr, _child) = child(&t[0]).await;
    // Another child's (agent) certificate as a parent: refused.
    let e = parent_connect(&t[1], &ServerCheck::default(), addr).await.unwrap_err();
    assert!(!e.is_empty());
    // Both parent roles get in.
    assert!(parent_connect(&t[2], &ServerCheck::default(), addr).await.is_ok());
    assert!(parent_connect(&t[3], &ServerCheck::default(), addr).await.is_ok());
    // A "child" that presents a data plane's certificate: the parent refuses it.
    let (impostor, _ep) = child(&t[2]).await;
    let e = parent_connect(&t[3], &ServerCheck::default(), impostor).await.unwrap_err();
    assert!(e.contains("role data-plane"), "the refusal names the role: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_transport_certificates_replace_the_parents_own_identity() {
    use atrium_data_plane::uplink::dial::{client_endpoint, dial};
    let tmp = tempfile::tempdir().unwrap();
    // The child trusts only the "theirs" CA; the parent's own certificate is from "ours".
    let ours = pki_dir(&tmp.path().join("ours"), &[("control-plane", Role::ControlPlane)]);
    let theirs =
        pki_dir(&tmp.path().join("theirs"), &[("cluster-a", Role::Agent), ("parent-for-a", Role::ControlPlane)]);
    let their_ca = std::fs::read(tmp.path().join("theirs/ca.pem")).unwrap();
    let (addr, _child) = child(&theirs[0]).await;
    let ep = client_endpoint().unwrap();
    let mut c = pb::Child {
        name: "cluster-a".into(),
        address: format!("https://{addr}"),
        transport: Some(pb::ServersTransport {
            root_cas: vec![String::from_utf8(their_ca.clone()).unwrap()],
            server_name: "cluster-a".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    // Without `certificates` the child refuses the parent's own identity.
    let refused = match dial(&ep, &c, &ours[0], Liveness::default()).await {
        Err(e) => e.to_string(),
        Ok(conn) => tokio::time::timeout(Duration::from_secs(5), conn.closed()).await.unwrap().to_string(),
    };
    assert!(!refused.is_empty());
    // With the pair the child's CA issued, the connection carries requests.
    let dir = tmp.path().join("theirs");
    c.transport.as_mut().unwrap().certificates = vec![pb::ClientCertificate {
        cert_file: dir.join("parent-for-a.pem").to_string_lossy().into_owned(),
        key_file: dir.join("parent-for-a-key.pem").to_string_lossy().into_owned(),
    }];
    let conn = dial(&ep, &c, &ours[0], Liveness::default()).await.unwrap();
    let io = data_stream(&conn, "crm").await;
    let (mut s, h) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(io)).await.unwrap();
    tokio::spawn(h);
    let resp = s
        .send_request(hyper::Request::get("/x").header("host", "a").body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // A pair whose file is missing is an error naming the field and the file.
    c.transport.as_mut().unwrap().certificates[0].cert_file = "/nonexistent/parent.pem".into();
    let e = dial(&ep, &c, &ours[0], Liveness::default()).await.unwrap_err().to_string();
    assert!(e.contains("serversTransport.certificates: /nonexistent/parent.pem"), "{e}");
}

/// A UDP relay in front of `to` that drops every datagram the client sends during its
/// first `deaf` (a child too busy to answer, or a lost first flight).
async fn deaf_relay(to: SocketAddr, deaf: Duration) -> SocketAddr {
    let front = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    back.connect(to).await.unwrap();
    let addr = front.local_addr().unwrap();
    let client = std::sync::Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
    let until = tokio::time::Instant::now() + deaf;
    let (f, b, c) = (front.clone(), back.clone(), client.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = f.recv_from(&mut buf).await {
            *c.lock().unwrap() = Some(from);
            if tokio::time::Instant::now() >= until {
                let _ = b.send(&buf[..n]).await;
            }
        }
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = back.recv(&mut buf).await {
            let to = *client.lock().unwrap();
            if let Some(to) = to {
                let _ = front.send_to(&buf[..n], to).await;
            }
        }
    });
    addr
}

/// A child that does not answer a first handshake in time (its datagrams lost for half the
/// idle timeout; QUIC would resend them only after about a second) is dialled again rather
/// than taken out of routing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_times_out_is_tried_again() {
    use atrium_data_plane::uplink::dial::{client_endpoint, dial};
    let tmp = tempfile::tempdir().unwrap();
    let t = pki_dir(tmp.path(), &[("cluster-a", Role::Agent), ("data-plane", Role::DataPlane)]);
    let (child_addr, _child) = child(&t[0]).await;
    let liveness = Liveness::default();
    let relay = deaf_relay(child_addr, liveness.idle_timeout / 2).await;
    let c = pb::Child {
        name: "cluster-a".into(),
        address: format!("https://{relay}"),
        transport: Some(pb::ServersTransport { server_name: "cluster-a".into(), ..Default::default() }),
        ..Default::default()
    };
    let ep = client_endpoint().unwrap();
    let started = std::time::Instant::now();
    let conn = tokio::time::timeout(Duration::from_secs(10), dial(&ep, &c, &t[1], liveness))
        .await
        .expect("the dial ends")
        .expect("the second handshake connects");
    assert!(started.elapsed() >= liveness.idle_timeout, "the first handshake was the one that timed out");
    let io = data_stream(&conn, "crm").await;
    let (mut s, h) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(io)).await.unwrap();
    tokio::spawn(h);
    let resp = s
        .send_request(hyper::Request::get("/x").header("host", "a").body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// Requests past a child's stream limit wait for a free stream, but no longer than their
/// response timeout: streams held by never-ending responses (a WebSocket, a download)
/// must not hang the requests queued behind them.
#[tokio::test]
async fn a_wait_for_a_free_stream_ends_at_the_response_timeout() {
    use atrium_data_plane::exchange::UpstreamError;
    let tmp = tempfile::tempdir().unwrap();
    let t = pki_dir(tmp.path(), &[("cluster-a", Role::Agent), ("data-plane", Role::DataPlane)]);
    // Two streams at a time; this test runs on one thread, so every request shares one
    // connection.
    let (addr, _child) = child_with(&t[0], Liveness { max_streams: 2, ..Liveness::default() }).await;
    let c = pb::Child {
        name: "cluster-a".into(),
        address: format!("https://{addr}"),
        transport: Some(pb::ServersTransport { server_name: "cluster-a".into(), ..Default::default() }),
        ..Default::default()
    };
    let client = atrium_data_plane::uplink::UplinkClient::new(t[1].clone(), Liveness::default());
    let peer = uplink::frame::RelayedClient { addr: "127.0.0.1:4321".parse().unwrap(), tls: false };
    let get =
        |path: &str| hyper::Request::get(path).header("host", "a").body(atrium_data_plane::body::empty()).unwrap();
    let timeout = Duration::from_millis(500);
    let mut held = Vec::new();
    for _ in 0..2 {
        let r = tokio::time::timeout(Duration::from_secs(10), client.send(&c, "crm", peer, get("/hold"), timeout))
            .await
            .expect("a free stream is used at once")
            .expect("the child answers");
        assert_eq!(r.status(), 200);
        held.push(r);
    }
    let started = std::time::Instant::now();
    let waited = tokio::time::timeout(Duration::from_secs(10), client.send(&c, "crm", peer, get("/x"), timeout))
        .await
        .expect("the wait ends");
    assert!(matches!(waited, Err(UpstreamError::Timeout { .. })), "{waited:?}");
    assert!(started.elapsed() >= timeout);
    // A stream given back serves the next request.
    held.pop();
    let r = tokio::time::timeout(Duration::from_secs(10), client.send(&c, "crm", peer, get("/x"), timeout))
        .await
        .expect("a freed stream is used")
        .expect("the child answers");
    assert_eq!(r.status(), 200);
}
