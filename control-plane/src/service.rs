//! The gRPC snapshot service: one bidirectional stream per data plane.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use atrium_proto::v1 as pb;
use atrium_proto::v1::snapshot_service_server::SnapshotService;
use pb::control_plane_message::Msg as CpMsg;
use pb::data_plane_message::Msg as DpMsg;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::hub::Hub;

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
        let mut shutdown = self.shutdown.clone();
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 10 s"))??;
        let Some(pb::DataPlaneMessage { msg: Some(DpMsg::Hello(hello)) }) = first else {
            return Err(Status::invalid_argument("the first message of a stream must be Hello"));
        };
        if hello.node_id.is_empty() {
            return Err(Status::invalid_argument("Hello without node_id"));
        }
        let node = hello.node_id.clone();
        let group = if hello.group.is_empty() { "default".to_string() } else { hello.group.clone() };
        if let Err(why) = atrium_proto::compatible(&hub.build_version, &hello.build_version) {
            tracing::error!(node = %node, %peer, data_plane = %hello.build_version, control_plane = %hub.build_version, reason = %why, "data plane refused: version skew");
            hub.update_node(&node, |n| {
                n.group = group.clone();
                n.build_version = hello.build_version.clone();
                n.connected = false;
                n.refused = Some(why.clone());
            });
            return Err(Status::failed_precondition(format!("version skew: {why}")));
        }
        let since = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        hub.update_node(&node, |n| {
            n.group = group.clone();
            n.build_version = hello.build_version.clone();
            n.connected = true;
            n.connected_since = since;
            n.refused = None;
        });
        tracing::info!(node = %node, %peer, %group, "data plane connected");

        let (tx, rx) = mpsc::channel::<Result<pb::ControlPlaneMessage, Status>>(4);
        let mut updates = hub.subscribe();
        // What the node runs: from its Hello, then from what we sent.
        let mut node_hash = hello.last_hash.clone();
        tokio::spawn(async move {
            // The current snapshot, or UpToDate when the node already runs it.
            let current = updates.borrow_and_update().clone();
            if let Some(p) = &current {
                let msg = if p.snapshot.hash == node_hash {
                    if let Some(v) = p.snapshot.version {
                        hub.acked(&node, v);
                    }
                    pb::ControlPlaneMessage { msg: Some(CpMsg::UpToDate(pb::UpToDate { version: p.snapshot.version })) }
                } else {
                    node_hash = p.snapshot.hash.to_vec();
                    snapshot_msg(&p.snapshot)
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
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
                        if changed.is_err() {
                            break;
                        }
                        let latest = updates.borrow_and_update().clone();
                        if let Some(p) = latest {
                            if p.snapshot.hash != node_hash {
                                node_hash = p.snapshot.hash.to_vec();
                                if tx.send(Ok(snapshot_msg(&p.snapshot))).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    msg = inbound.message() => match msg {
                        Ok(Some(pb::DataPlaneMessage { msg: Some(DpMsg::Ack(a)) })) => {
                            if let Some(v) = a.version {
                                hub.acked(&node, v);
                            }
                        }
                        Ok(Some(pb::DataPlaneMessage { msg: Some(DpMsg::Nack(n)) })) => {
                            tracing::error!(node = %node, version = ?n.version, error = %n.error, "data plane rejected a snapshot; it keeps its previous table");
                            hub.update_node(&node, |s| s.last_nack = Some(n.error.clone()));
                        }
                        Ok(Some(pb::DataPlaneMessage { msg: Some(DpMsg::Usage(u)) })) => {
                            hub.update_node(&node, |s| {
                                for e in u.entries {
                                    *s.usage.entry(e.router).or_default() += e.requests;
                                }
                            });
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    },
                }
            }
            hub.update_node(&node, |n| n.connected = false);
            tracing::warn!(node = %node, "data plane disconnected");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
