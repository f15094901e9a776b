//! Snapshot propagation: from a configuration change to the ACK of every data plane.
//!
//! Run: `cargo bench -p atrium-control-plane --bench propagation` (prints Markdown for
//! BENCHMARKS.md). Data planes are simulated in this process: each holds a real gRPC
//! stream, checks the snapshot's hash, decodes the body and ACKs, as `atrium data-plane`
//! does before it builds its route table (table build time is reported separately).
use std::sync::Arc;
use std::time::{Duration, Instant};

use atrium_control_plane::hub::Hub;
use atrium_control_plane::service::Snapshots;
use atrium_proto::v1 as pb;
use atrium_proto::v1::snapshot_service_client::SnapshotServiceClient;
use atrium_proto::v1::snapshot_service_server::SnapshotServiceServer;
use pb::control_plane_message::Msg as CpMsg;
use pb::data_plane_message::Msg as DpMsg;
use prost::Message;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};

fn body(routers: usize, generation: u64) -> pb::SnapshotBody {
    pb::SnapshotBody {
        routers: (0..routers)
            .map(|i| pb::Router {
                id: format!("bench/r{i:05}/0"),
                rule: format!("Host(`h{}.test`) && PathPrefix(`/p{}`)", i / 10, i % 10),
                priority: 40,
                service: "bench/svc:80".into(),
                middlewares: vec![format!("bench/stamp-{generation}")],
                ..Default::default()
            })
            .collect(),
        middlewares: vec![pb::Middleware {
            id: format!("bench/stamp-{generation}"),
            kind: "headers".into(),
            config_json: format!("{{\"customResponseHeaders\":{{\"X-Gen\":\"{generation}\"}}}}"),
        }],
        services: vec![pb::Service {
            id: "bench/svc:80".into(),
            kind: Some(pb::service::Kind::LoadBalancer(pb::LoadBalancer {
                servers: vec![pb::Server { url: "http://127.0.0.1:9".into(), weight: 1 }],
                pass_host_header: true,
                ..Default::default()
            })),
        }],
        ..Default::default()
    }
}

async fn simulated_data_plane(addr: std::net::SocketAddr, id: String) {
    let mut client =
        SnapshotServiceClient::connect(format!("http://{addr}")).await.unwrap().max_decoding_message_size(256 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let hello = pb::Hello {
        node_id: id,
        group: "default".into(),
        build_version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    tx.send(pb::DataPlaneMessage { msg: Some(DpMsg::Hello(hello)) }).await.unwrap();
    let mut inbound = client.stream(ReceiverStream::new(rx)).await.unwrap().into_inner();
    while let Ok(Some(m)) = inbound.message().await {
        if let Some(CpMsg::Snapshot(s)) = m.msg {
            assert_eq!(atrium_proto::body_hash(&s.body), s.hash.as_slice());
            let decoded = pb::SnapshotBody::decode(s.body.clone()).unwrap();
            std::hint::black_box(decoded);
            let ack = pb::Ack { version: s.version, hash: s.hash.to_vec() };
            if tx.send(pb::DataPlaneMessage { msg: Some(DpMsg::Ack(ack)) }).await.is_err() {
                return;
            }
        }
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn run(nodes: usize, routers: usize, iterations: usize) -> (Duration, Duration, u64) {
    let hub = Hub::new(env!("CARGO_PKG_VERSION"));
    hub.publish(&body(routers, 0), Instant::now());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                SnapshotServiceServer::new(Snapshots::new(hub.clone(), tokio::sync::watch::channel(false).1))
                    .max_encoding_message_size(256 << 20),
            )
            .serve_with_incoming(TcpListenerStream::new(l)),
    );
    let before = rss_kib();
    let clients: Vec<_> = (0..nodes).map(|i| tokio::spawn(simulated_data_plane(addr, format!("dp-{i}")))).collect();
    let current =
        |hub: &Arc<Hub>, seq: u64| hub.nodes().values().filter(|n| n.applied.is_some_and(|v| v.seq == seq)).count();
    let deadline = Instant::now() + Duration::from_secs(120);
    while current(&hub, 1) < nodes {
        assert!(Instant::now() < deadline, "initial convergence");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let per_node = rss_kib().saturating_sub(before) / nodes as u64;
    let mut times = Vec::new();
    for g in 1..=iterations as u64 {
        let detected = Instant::now();
        let v = hub.publish(&body(routers, g), detected).unwrap();
        while current(&hub, v.seq) < nodes {
            assert!(detected.elapsed() < Duration::from_secs(120), "propagation");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        times.push(detected.elapsed());
    }
    times.sort();
    for c in clients {
        c.abort();
    }
    server.abort();
    (percentile(&times, 0.5), percentile(&times, 0.99), per_node)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    println!(
        "| data planes | routers | p50 change → all ACKed | p99 | RSS per connected data plane (CP + simulated DP) |"
    );
    println!("|---|---|---|---|---|");
    for (nodes, routers, iterations) in [
        (1, 100, 50),
        (10, 100, 50),
        (100, 100, 30),
        (1, 1_000, 30),
        (10, 1_000, 30),
        (100, 1_000, 20),
        (1, 10_000, 10),
        (10, 10_000, 10),
        (100, 10_000, 5),
    ] {
        let (p50, p99, kib) = rt.block_on(run(nodes, routers, iterations));
        println!(
            "| {nodes} | {routers} | {:.1} ms | {:.1} ms | {kib} KiB |",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }
    let big = body(10_000, 1);
    let mut enc = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        std::hint::black_box(atrium_proto::encode(&big));
        enc.push(t.elapsed());
    }
    enc.sort();
    let size = big.encode_to_vec().len();
    println!();
    println!(
        "Encode + SHA-256 of a 10,000-router snapshot ({} KiB): median {:.2} ms.",
        size / 1024,
        enc[enc.len() / 2].as_secs_f64() * 1e3
    );
    let mut build = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        std::hint::black_box(atrium_data_plane::proxy::Compiled::build(big.clone(), 1).unwrap());
        build.push(t.elapsed());
    }
    build.sort();
    println!(
        "Route-table build of that snapshot on a data plane: median {:.1} ms.",
        build[build.len() / 2].as_secs_f64() * 1e3
    );
}
