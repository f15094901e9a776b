//! The uplink transport on its own: mutual-TLS QUIC on loopback, a header frame, then HTTP
//! over the stream (HTTP/1.1, and HTTP/2 with trailers); garbage resets only its stream;
//! peers from another CA are refused in both directions.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use atrium_data_plane::pki;
use atrium_data_plane::uplink::{self, Liveness, ServerCheck};
use atrium_proto::v1 as pb;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A certificate and its key, as PEM.
type Pair = (Vec<u8>, Vec<u8>);

fn pki_dir(dir: &Path, names: &[&str]) -> (Vec<u8>, Vec<Pair>) {
    pki::init_ca(dir).unwrap();
    let ca = std::fs::read(dir.join("ca.pem")).unwrap();
    let certs = names
        .iter()
        .map(|n| {
            let f = pki::issue(dir, n, &[]).unwrap();
            (std::fs::read(f.cert).unwrap(), std::fs::read(f.key).unwrap())
        })
        .collect();
    (ca, certs)
}

/// A child-side endpoint that answers every DATA stream with what it saw.
async fn child(ca: &[u8], cert: &[u8], key: &[u8]) -> (SocketAddr, quinn::Endpoint) {
    let cfg = uplink::server_config(ca, cert, key, Liveness::default()).unwrap();
    let ep = quinn::Endpoint::server(cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = ep.local_addr().unwrap();
    let server = ep.clone();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let h = match uplink::read_header(&mut recv).await {
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
                                let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
                                resp.headers_mut().insert("x-traefik-backend", "cluster-a".parse().unwrap());
                                Ok::<_, std::convert::Infallible>(resp)
                            }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection_with_upgrades(TokioIo::new(uplink::io(send, recv)), svc)
                            .await;
                    });
                }
            });
        }
    });
    (addr, ep)
}

async fn parent_connect(
    ca: &[u8],
    cert: &[u8],
    key: &[u8],
    check: &ServerCheck,
    addr: SocketAddr,
) -> Result<quinn::Connection, String> {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(uplink::client_config(ca, cert, key, check, Liveness::default())?);
    let connecting = ep.connect(addr, "localhost").map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())
}

async fn data_stream(conn: &quinn::Connection, uplink_name: &str) -> uplink::StreamIo {
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let h = pb::StreamHeader {
        kind: pb::stream_header::Kind::Data as i32,
        uplink: uplink_name.into(),
        client_addr: "203.0.113.9:4321".into(),
        client_proto: "https".into(),
        traceparent: String::new(),
    };
    uplink::write_frame(&mut send, &h).await.unwrap();
    uplink::io(send, recv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_http2_over_quic_streams_with_mutual_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca, certs) = pki_dir(tmp.path(), &["cluster-a", "control-plane"]);
    let (addr, _child) = child(&ca, &certs[0].0, &certs[0].1).await;
    let conn = parent_connect(&ca, &certs[1].0, &certs[1].1, &ServerCheck::default(), addr).await.unwrap();

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
    let (ca, certs) = pki_dir(&tmp.path().join("ours"), &["cluster-a", "control-plane"]);
    let (other_ca, other) = pki_dir(&tmp.path().join("theirs"), &["cluster-x", "control-plane"]);
    let (addr, _child) = child(&ca, &certs[0].0, &certs[0].1).await;
    // A parent with a certificate from another CA: refused by the child.
    let refused = match parent_connect(
        &other_ca,
        &other[1].0,
        &other[1].1,
        &ServerCheck { root_cas: ca.clone(), ..Default::default() },
        addr,
    )
    .await
    {
        Err(e) => e,
        // With TLS 1.3 the client may finish first; the child's refusal then closes the connection.
        Ok(conn) => tokio::time::timeout(Duration::from_secs(5), conn.closed()).await.unwrap().to_string(),
    };
    assert!(!refused.is_empty());
    // A child whose certificate chains to another CA: refused by the parent.
    let (other_addr, _other_child) = child(&other_ca, &other[0].0, &other[0].1).await;
    let e = parent_connect(&ca, &certs[1].0, &certs[1].1, &ServerCheck::default(), other_addr).await.unwrap_err();
    assert!(e.to_lowercase().contains("certificate") || e.to_lowercase().contains("unknown"), "{e}");
    // insecureSkipVerify accepts the unknown child (the seed's development setting), but the
    // child still insists on a client certificate from its own CA.
    let conn = parent_connect(
        &ca,
        &other[1].0,
        &other[1].1,
        &ServerCheck { insecure_skip_verify: true, ..Default::default() },
        other_addr,
    )
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_transport_certificates_replace_the_parents_own_identity() {
    use atrium_data_plane::multicluster::{client_endpoint, dial};
    let tmp = tempfile::tempdir().unwrap();
    // The child trusts only the "theirs" CA; the parent's own certificate is from "ours".
    let (ca, ours) = pki_dir(&tmp.path().join("ours"), &["control-plane"]);
    let (their_ca, theirs) = pki_dir(&tmp.path().join("theirs"), &["cluster-a", "parent-for-a"]);
    let (addr, _child) = child(&their_ca, &theirs[0].0, &theirs[0].1).await;
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
    let refused = match dial(&ep, &c, &ca, &ours[0].0, &ours[0].1, Liveness::default()).await {
        Err(e) => e,
        Ok(conn) => tokio::time::timeout(Duration::from_secs(5), conn.closed()).await.unwrap().to_string(),
    };
    assert!(!refused.is_empty());
    // With the pair the child's CA issued, the connection carries requests.
    let dir = tmp.path().join("theirs");
    c.transport.as_mut().unwrap().certificates = vec![pb::ClientCertificate {
        cert_file: dir.join("parent-for-a.pem").to_string_lossy().into_owned(),
        key_file: dir.join("parent-for-a-key.pem").to_string_lossy().into_owned(),
    }];
    let conn = dial(&ep, &c, &ca, &ours[0].0, &ours[0].1, Liveness::default()).await.unwrap();
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
    let e = dial(&ep, &c, &ca, &ours[0].0, &ours[0].1, Liveness::default()).await.unwrap_err();
    assert!(e.contains("serversTransport.certificates certFile /nonexistent/parent.pem"), "{e}");
}
