//! The snapshot protocol's refusals, in process on loopback: a snapshot a data plane
//! rejects (NACK, old table kept) and a data plane whose version is refused.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use atrium_control_plane::hub::Hub;
use atrium_control_plane::service::Snapshots;
use atrium_data_plane::proxy::Gateway;
use atrium_data_plane::proxy::tls::CertStore;
use atrium_data_plane::snapshot::{self, ClientConfig};
use atrium_data_plane::upstream::{UpstreamConfig, Upstreams};
use atrium_proto::v1 as pb;
use atrium_proto::v1::snapshot_service_client::SnapshotServiceClient;
use atrium_proto::v1::snapshot_service_server::SnapshotServiceServer;
use tokio_stream::wrappers::TcpListenerStream;

async fn serve(hub: Arc<Hub>) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SnapshotServiceServer::new(Snapshots::new(hub, tokio::sync::watch::channel(false).1)))
            .serve_with_incoming(TcpListenerStream::new(l)),
    );
    addr
}

fn body(rule: &str) -> pb::SnapshotBody {
    pb::SnapshotBody {
        routers: vec![pb::Router {
            id: "ns/r/0".into(),
            rule: rule.into(),
            priority: 1,
            service: "svc".into(),
            ..Default::default()
        }],
        services: vec![pb::Service {
            id: "svc".into(),
            kind: Some(pb::service::Kind::Portal(pb::Portal { name: "p".into() })),
        }],
        ..Default::default()
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    common::eventually(Duration::from_secs(10), what, || std::future::ready(f().then_some(()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_snapshot_is_nacked_and_the_old_table_keeps_serving() {
    let hub = Hub::new(env!("CARGO_PKG_VERSION"));
    let good = hub.publish(&body("PathPrefix(`/`)"), Instant::now()).unwrap();
    let addr = serve(hub.clone()).await;
    let gw = Gateway::new(
        Upstreams::new(UpstreamConfig::default()),
        None,
        CertStore::generated().unwrap(),
        Default::default(),
    );
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let cfg = ClientConfig {
        endpoint: format!("http://{addr}"),
        node_id: "dp-n".into(),
        group: "default".into(),
        tls: None,
        cache_dir: None,
        usage_interval: Duration::from_secs(10),
    };
    tokio::spawn(snapshot::run(gw.clone(), cfg, stop_rx));
    until("the first snapshot", || gw.in_force().is_some_and(|r| r.version == good.seq)).await;
    until("the first ACK", || hub.nodes().get("dp-n").is_some_and(|n| n.applied == Some(good))).await;

    // A control plane (of another version, say) sends a rule this data plane cannot parse.
    let bad = hub.publish(&body("Bogus(`x`)"), Instant::now()).unwrap();
    until("the NACK", || hub.nodes().get("dp-n").is_some_and(|n| n.last_nack.is_some())).await;
    let node = hub.nodes()["dp-n"].clone();
    assert!(node.last_nack.as_deref().unwrap().contains("unknown matcher `Bogus`"), "{node:?}");
    assert_eq!(node.applied, Some(good), "the rejected version is not recorded as applied");
    assert_eq!(gw.in_force().unwrap().version, good.seq, "the previous table stays");
    assert_ne!(bad.seq, good.seq);
    let j = hub.nodes_json();
    assert!(j["dataplanes"]["dp-n"]["lastNack"].as_str().unwrap().contains("Bogus"));
    assert_eq!(j["dataplanes"]["dp-n"]["current"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_skew_is_refused_with_an_explicit_status() {
    let hub = Hub::new("1.4.0");
    hub.publish(&body("PathPrefix(`/`)"), Instant::now()).unwrap();
    let addr = serve(hub.clone()).await;
    let mut client = SnapshotServiceClient::connect(format!("http://{addr}")).await.unwrap();
    for (version, needle) in [("2.0.0", "major"), ("1.5.0", "newer")] {
        let hello = pb::DataPlaneMessage {
            msg: Some(pb::data_plane_message::Msg::Hello(pb::Hello {
                node_id: format!("dp-{version}"),
                group: "default".into(),
                build_version: version.into(),
                ..Default::default()
            })),
        };
        let err = client.stream(tokio_stream::iter(vec![hello])).await.expect_err("refused");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.message().contains("version skew") && err.message().contains(needle), "{}", err.message());
        let node = hub.nodes()[&format!("dp-{version}")].clone();
        assert!(node.refused.as_deref().is_some_and(|r| r.contains(needle)), "{node:?}");
        assert!(!node.connected);
    }
    // An older minor version is served.
    let hello = pb::DataPlaneMessage {
        msg: Some(pb::data_plane_message::Msg::Hello(pb::Hello {
            node_id: "dp-old".into(),
            build_version: "1.3.0".into(),
            ..Default::default()
        })),
    };
    let mut inbound = client.stream(tokio_stream::iter(vec![hello])).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), inbound.message()).await.unwrap().unwrap().unwrap();
    assert!(matches!(first.msg, Some(pb::control_plane_message::Msg::Snapshot(_))));
}

/// A data plane whose table came from a newer control plane (its cache, here) refuses the
/// snapshots of an older one (a stale replica): NACKed, and the newer table stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_from_an_older_epoch_is_refused() {
    let hub = Hub::new(env!("CARGO_PKG_VERSION"));
    hub.publish(&body("PathPrefix(`/old`)"), Instant::now()).unwrap();
    // The cache holds a snapshot of a later epoch.
    let cache = tempfile::tempdir().unwrap();
    let newer = atrium_proto::seal(pb::Version { epoch: hub.epoch() + 1, seq: 1 }, &body("PathPrefix(`/newer`)"));
    snapshot::store_cache(cache.path(), &newer).unwrap();
    let gw = Gateway::new(
        Upstreams::new(UpstreamConfig::default()),
        None,
        CertStore::generated().unwrap(),
        Default::default(),
    );
    gw.swap(snapshot::load_cache(cache.path()).unwrap().unwrap());
    let addr = serve(hub.clone()).await;
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let cfg = ClientConfig {
        endpoint: format!("http://{addr}"),
        node_id: "dp-e".into(),
        group: "default".into(),
        tls: None,
        cache_dir: Some(cache.path().to_path_buf()),
        usage_interval: Duration::from_secs(10),
    };
    tokio::spawn(snapshot::run(gw.clone(), cfg, stop_rx));
    until("the NACK", || hub.nodes().get("dp-e").is_some_and(|n| n.last_nack.is_some())).await;
    let nack = hub.nodes()["dp-e"].last_nack.clone().unwrap();
    assert!(nack.contains("older than the one in force"), "{nack}");
    let rt = gw.in_force().unwrap();
    assert_eq!((rt.epoch, rt.version), (hub.epoch() + 1, 1), "the newer table stays");
    assert_eq!(snapshot::load_cache(cache.path()).unwrap().unwrap().epoch, hub.epoch() + 1, "and so does its cache");
}
