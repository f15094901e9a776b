//! `atrium agent` end to end: the seed's child cluster, with a test parent speaking the
//! uplink protocol over mutual-TLS QUIC.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use atrium_data_plane::pki;
use atrium_data_plane::pki::Role;
use atrium_data_plane::uplink::tls::ServerCheck;
use atrium_data_plane::uplink::{self, Liveness};
use atrium_proto::v1 as pb;
use bytes::Bytes;
use common::backend;
use common::gateway::GatewayProc;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

async fn get_via(conn: &quinn::Connection, uplink_name: &str, path: &str) -> (u16, hyper::HeaderMap, String) {
    get_via_traced(conn, uplink_name, path, "").await
}

/// [`get_via`] with `traceparent` in the stream header (not in the request).
async fn get_via_traced(
    conn: &quinn::Connection,
    uplink_name: &str,
    path: &str,
    traceparent: &str,
) -> (u16, hyper::HeaderMap, String) {
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let h = pb::StreamHeader {
        kind: pb::stream_header::Kind::Data as i32,
        uplink: uplink_name.into(),
        client_addr: "203.0.113.9:4321".into(),
        client_proto: "https".into(),
        traceparent: traceparent.into(),
    };
    uplink::frame::write_frame(&mut send, &h).await.unwrap();
    let (mut s, c) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(uplink::frame::io(send, recv)))
            .await
            .unwrap();
    tokio::spawn(c);
    let req = hyper::Request::get(path).header("host", "api.example.com").body(Full::new(Bytes::new())).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), s.send_request(req)).await.unwrap().unwrap();
    let (parts, body) = resp.into_parts();
    (
        parts.status.as_u16(),
        parts.headers,
        String::from_utf8_lossy(&body.collect().await.unwrap().to_bytes()).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_serves_its_uplink_to_a_parent_and_reports_health() {
    let be = backend::start("crm", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let pki_dir = tmp.path().join("pki");
    pki::init_ca(&pki_dir).unwrap();
    pki::issue(&pki_dir, "cluster-a", Role::Agent, &[]).unwrap();
    let parent = pki::issue(&pki_dir, "control-plane", Role::ControlPlane, &[]).unwrap();
    let m = tmp.path().join("manifests");
    common::copy_dir(&common::example().join("cluster-a/manifests"), &m);
    let eps = m.join("crm-endpoints.yaml");
    fs::write(
        &eps,
        fs::read_to_string(&eps)
            .unwrap()
            .replace("\"127.0.0.2\"", "\"127.0.0.1\"")
            .replace("port: 8080", &format!("port: {}", be.addr.port())),
    )
    .unwrap();
    let up = m.join("uplink.yaml");
    fs::write(
        &up,
        fs::read_to_string(&up)
            .unwrap()
            .replace("interval: 5s", "interval: 100ms")
            .replace("timeout: 3s", "timeout: 500ms"),
    )
    .unwrap();
    let args: Vec<String> = [
        "agent",
        "--cluster",
        "cluster-a",
        "--manifests",
        m.to_str().unwrap(),
        "--values",
        common::example().join("cluster-a/values.yaml").to_str().unwrap(),
        "--tls-dir",
        pki_dir.to_str().unwrap(),
        "--state-dir",
        tmp.path().join("state").to_str().unwrap(),
        "--entrypoint",
        "web=127.0.0.1:0",
        "--entrypoint",
        "websecure=off",
        "--entrypoint",
        "multicluster=127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let agent = GatewayProc::spawn(&args, 2, false);
    let quic_addr = agent.entry_points["multicluster"];

    // The parent dials the uplink entrypoint with its own certificate.
    let trust = atrium_data_plane::trust::NodeTrust::load(&parent).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(
        uplink::tls::client_config(&trust, &ServerCheck::default(), Liveness::default()).unwrap(),
    );
    let conn = ep.connect(quic_addr, "localhost").unwrap().await.unwrap();

    // Control stream: Register, then an Update once the health check passes.
    let (mut csend, mut crecv) = conn.open_bi().await.unwrap();
    uplink::frame::write_frame(
        &mut csend,
        &pb::StreamHeader { kind: pb::stream_header::Kind::Control as i32, ..Default::default() },
    )
    .await
    .unwrap();
    let first: pb::AgentMessage =
        tokio::time::timeout(Duration::from_secs(5), uplink::frame::read_frame(&mut crecv)).await.unwrap().unwrap();
    let Some(pb::agent_message::Msg::Register(reg)) = first.msg else { panic!("{first:?}") };
    assert_eq!(reg.cluster, "cluster-a");
    assert_eq!(reg.uplinks.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(), vec!["crm"]);
    let mut healthy = reg.uplinks[0].healthy;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !healthy {
        assert!(Instant::now() < deadline, "the uplink never became healthy");
        let m: pb::AgentMessage = tokio::time::timeout(Duration::from_secs(10), uplink::frame::read_frame(&mut crecv))
            .await
            .unwrap()
            .unwrap();
        if let Some(pb::agent_message::Msg::Update(u)) = m.msg {
            healthy = u.uplinks[0].healthy;
        }
    }

    // A data stream for uplink crm: the seed's child route, PathPrefix + stripPrefix + headers,
    // even though the route itself says `entryPoints: [web]`.
    let (status, headers, body) = get_via(&conn, "crm", "/crm/health").await;
    assert_eq!((status, body.as_str()), (200, "health"));
    assert_eq!(headers["x-traefik-backend"], "cluster-a");
    assert_eq!(headers["x-seen-x-forwarded-for"], "203.0.113.9", "the client named in the stream header is the client");
    assert!(!headers.contains_key("x-seen-traceparent"), "no trace context is invented");
    // The stream header's trace context reaches the backend.
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (status, headers, _) = get_via_traced(&conn, "crm", "/crm/health", tp).await;
    assert_eq!((status, headers["x-seen-traceparent"].to_str().unwrap()), (200, tp));
    // The child sanitizes what arrives through an uplink too: `..` cannot leave the
    // uplink's prefix (routed as `/other`, which no crm router serves), and an encoded
    // slash is refused.
    assert_eq!(get_via(&conn, "crm", "/crm/%2e%2e/other").await.0, 404);
    assert_eq!(get_via(&conn, "crm", "/crm/a/../health").await.2, "health");
    assert_eq!(get_via(&conn, "crm", "/crm/a%2Fb").await.0, 400);
    // Only routers attached to the requested uplink can match.
    assert_eq!(get_via(&conn, "crm", "/billing/health").await.0, 404);
    assert_eq!(get_via(&conn, "billing", "/crm/health").await.0, 404);

    // Garbage on a stream resets that stream; the agent keeps serving.
    let (mut gsend, mut grecv) = conn.open_bi().await.unwrap();
    gsend.write_all(&[0, 0, 0, 2, 0xff, 0xff]).await.unwrap();
    let mut sink = Vec::new();
    assert!(
        tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read_to_end(&mut grecv, &mut sink))
            .await
            .unwrap()
            .is_err()
    );
    assert_eq!(get_via(&conn, "crm", "/crm/health").await.0, 200);

    // The health check starts failing: an Update says so at once (interval 100 ms).
    be.healthy.store(false, std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    loop {
        let m: pb::AgentMessage =
            tokio::time::timeout(Duration::from_secs(5), uplink::frame::read_frame(&mut crecv)).await.unwrap().unwrap();
        if let Some(pb::agent_message::Msg::Update(u)) = m.msg {
            if !u.uplinks[0].healthy {
                break;
            }
        }
    }
    assert!(started.elapsed() < Duration::from_secs(1), "health change reported in {:?}", started.elapsed());
    // A Poll is answered with the current state.
    uplink::frame::write_frame(
        &mut csend,
        &pb::ParentMessage { msg: Some(pb::parent_message::Msg::Poll(pb::Poll { seq: 1 })) },
    )
    .await
    .unwrap();
    let m: pb::AgentMessage =
        tokio::time::timeout(Duration::from_secs(5), uplink::frame::read_frame(&mut crecv)).await.unwrap().unwrap();
    let Some(pb::agent_message::Msg::Update(u)) = m.msg else { panic!("{m:?}") };
    assert!(!u.uplinks[0].healthy);
    assert!(agent.wait_logged("uplink health changed").await);
}

#[test]
fn liveness_flags_are_checked() {
    let out = common::atrium([
        "agent",
        "--cluster",
        "cluster-a",
        "--manifests",
        common::example().join("cluster-a/manifests").to_str().unwrap(),
        "--uplink-keepalive-ms",
        "500",
        "--uplink-idle-timeout-ms",
        "400",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--uplink-idle-timeout-ms must be longer than --uplink-keepalive-ms (500 ms)"), "{err}");
}
