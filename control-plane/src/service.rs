//! The gRPC snapshot service: one bidirectional stream per data plane.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use atrium_proto::v1 as pb;
use atrium_proto::v1::snapshot_service_server::SnapshotService;
use pb::control_plane_message::Msg as CpMsg;
use pb::data_plane_message::Msg as DpMsg;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::hub::{Hub, Published};

/// The service over a hub. Its streams end when `shutdown` turns true, so a control
/// plane that is asked to stop is not held up by the data planes streaming from it.
#[derive(Debug, Clone)]
pub struct Snapshots {
    hub: Arc<Hub>,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Snapshots {
    /// Serves `hub` until `shutdown` turns true.
    pub fn new(hub: Arc<Hub>, shutdown: tokio::sync::watch::Receiver<bool>) -> Snapshots {
        Snapshots { hub, shutdown }
    }
}

type Outbound = Pin<Box<dyn Stream<Item = Result<pb::ControlPlaneMessage, Status>> + Send>>;

fn snapshot_msg(s: &pb::Snapshot) -> pb::ControlPlaneMessage {
    pb::ControlPlaneMessage { msg: Some(CpMsg::Snapshot(s.clone())) }
}

#[tonic::async_trait]
impl SnapshotService for Snapshots {
    type StreamStream = Outbound;

    async fn stream(&self, request: Request<Streaming<pb::DataPlaneMessage>>) -> Result<Response<Outbound>, Status> {
        let hub = self.hub.clone();
        let shutdown = self.shutdown.clone();
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let mut inbound = request.into_inner();
        let hello = receive_hello(&mut inbound).await?;
        let node = hello.node_id.clone();
        admit(&hub, &node, &hello, &peer)?;

        let (tx, rx) = mpsc::channel::<Result<pb::ControlPlaneMessage, Status>>(4);
        let updates = hub.subscribe();
        let feed = Feed { hub, node, node_hash: hello.last_hash.clone(), tx };
        tokio::spawn(feed.run(updates, inbound, shutdown));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Waits (up to 10 s) for the Hello that must open a stream, and checks that it names its node.
async fn receive_hello(inbound: &mut Streaming<pb::DataPlaneMessage>) -> Result<pb::Hello, Status> {
    let first = tokio::time::timeout(Duration::from_secs(10), inbound.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no Hello within 10 s"))??;
    let Some(pb::DataPlaneMessage { msg: Some(DpMsg::Hello(hello)) }) = first else {
        return Err(Status::invalid_argument("the first message of a stream must be Hello"));
    };
    if hello.node_id.is_empty() {
        return Err(Status::invalid_argument("Hello without node_id"));
    }
    Ok(hello)
}

/// Records the node that said `hello` as connected, or as refused (and refuses the stream)
/// when its build cannot talk to ours.
fn admit(hub: &Hub, node: &str, hello: &pb::Hello, peer: &str) -> Result<(), Status> {
    let group = if hello.group.is_empty() { "default".to_string() } else { hello.group.clone() };
    if let Err(why) = atrium_proto::compatible(&hub.build_version, &hello.build_version) {
        tracing::error!(node = %node, %peer, data_plane = %hello.build_version, control_plane = %hub.build_version, reason = %why, "data plane refused: version skew");
        hub.update_node(node, |n| {
            n.group = group.clone();
            n.build_version = hello.build_version.clone();
            n.connected = false;
            n.refused = Some(why.to_string());
        });
        return Err(Status::failed_precondition(format!("version skew: {why}")));
    }
    let since = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    hub.update_node(node, |n| {
        n.group = group.clone();
        n.build_version = hello.build_version.clone();
        n.connected = true;
        n.connected_since = since;
        n.refused = None;
    });
    tracing::info!(node = %node, %peer, %group, "data plane connected");
    Ok(())
}

/// The task that feeds one data plane its snapshots and records what it reports.
struct Feed {
    hub: Arc<Hub>,
    /// The node's id.
    node: String,
    /// What the node runs: from its Hello, then from what we sent.
    node_hash: Vec<u8>,
    tx: mpsc::Sender<Result<pb::ControlPlaneMessage, Status>>,
}

impl Feed {
    /// Feeds the node until it disconnects or `shutdown` turns true.
    async fn run(
        mut self,
        mut updates: watch::Receiver<Option<Arc<Published>>>,
        mut inbound: Streaming<pb::DataPlaneMessage>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        if !self.send_current(&mut updates).await {
            return;
        }
        // Ends the stream at shutdown; a dropped sender means none will come.
        let stopping = async move {
            if shutdown.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::pin!(stopping);
        loop {
            tokio::select! {
                _ = &mut stopping => break,
                changed = updates.changed() => {
                    if changed.is_err() || !self.send_latest(&mut updates).await {
                        break;
                    }
                }
                msg = inbound.message() => {
                    if !self.receive(msg) {
                        break;
                    }
                }
            }
        }
        self.hub.update_node(&self.node, |n| n.connected = false);
        tracing::warn!(node = %self.node, "data plane disconnected");
    }

    /// Sends the current snapshot, or UpToDate when the node already runs it; false when
    /// the stream is gone.
    async fn send_current(&mut self, updates: &mut watch::Receiver<Option<Arc<Published>>>) -> bool {
        let current = updates.borrow_and_update().clone();
        let Some(p) = &current else { return true };
        let msg = if p.snapshot.hash == self.node_hash {
            if let Some(v) = p.snapshot.version {
                self.hub.acked(&self.node, v);
            }
            pb::ControlPlaneMessage { msg: Some(CpMsg::UpToDate(pb::UpToDate { version: p.snapshot.version })) }
        } else {
            self.node_hash = p.snapshot.hash.to_vec();
            snapshot_msg(&p.snapshot)
        };
        self.tx.send(Ok(msg)).await.is_ok()
    }

    /// Sends the latest snapshot unless the node already runs it; false when the stream is gone.
    async fn send_latest(&mut self, updates: &mut watch::Receiver<Option<Arc<Published>>>) -> bool {
        let latest = updates.borrow_and_update().clone();
        if let Some(p) = latest {
            if p.snapshot.hash != self.node_hash {
                self.node_hash = p.snapshot.hash.to_vec();
                if self.tx.send(Ok(snapshot_msg(&p.snapshot))).await.is_err() {
                    return false;
                }
            }
        }
        true
    }

    /// Records what the node reported (acks, nacks, usage); false when its stream ended.
    fn receive(&self, msg: Result<Option<pb::DataPlaneMessage>, Status>) -> bool {
        let node = &self.node;
        match msg {
            Ok(Some(pb::DataPlaneMessage { msg: Some(DpMsg::Ack(a)) })) => {
                if let Some(v) = a.version {
                    self.hub.acked(node, v);
                }
            }
            Ok(Some(pb::DataPlaneMessage { msg: Some(DpMsg::Nack(n)) })) => {
                tracing::error!(node = %node, version = ?n.version, error = %n.error, "data plane rejected a snapshot; it keeps its previous table");
                self.hub.update_node(node, |s| s.last_nack = Some(n.error.clone()));
            }
            Ok(Some(pb::DataPlaneMessage { msg: Some(DpMsg::Usage(u)) })) => {
                self.hub.update_node(node, |s| {
                    for e in u.entries {
                        *s.usage.entry(e.router).or_default() += e.requests;
                    }
                });
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return false,
        }
        true
    }
}
