//! The multi-cluster registry: the parent dials every child, keeps a control stream open,
//! and knows each child's uplinks, weights and health.
//!
//! A child that closes its connection, whose QUIC connection goes silent past the idle
//! timeout (900 ms: a `kill -9`'d child sends nothing), or that does not answer a `Poll`
//! within `pollTimeout` is unreachable at once and leaves the registry; every change is
//! handed to `on_change`, which republishes the snapshot.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atrium_data_plane::uplink::{self, Liveness};
use atrium_proto::v1 as pb;

/// Child name → its uplinks, for the reachable children.
pub type Registry = BTreeMap<String, Vec<pb::UplinkState>>;

/// TLS material the parent presents to children.
#[derive(Debug, Clone)]
pub struct ParentTls {
    /// This installation's CA.
    pub ca: Vec<u8>,
    /// The control plane's certificate.
    pub cert: Vec<u8>,
    /// Its key.
    pub key: Vec<u8>,
}

/// Poll timing.
#[derive(Debug, Clone, Copy)]
pub struct Polling {
    /// How often the parent polls.
    pub interval: Duration,
    /// How long a silent child stays in the routing set.
    pub timeout: Duration,
    /// QUIC keep-alive and idle timeout of the control connection.
    pub liveness: Liveness,
}

fn names(ups: &[pb::UplinkState]) -> String {
    let v: Vec<String> = ups.iter().map(|u| u.name.clone()).collect();
    format!("[{}]", v.join(","))
}

async fn session(
    child: &pb::Child,
    tls: &ParentTls,
    polling: Polling,
    registry: &Mutex<Registry>,
    on_change: &(dyn Fn(Registry) + Send + Sync),
) -> Result<(), String> {
    let ep = atrium_data_plane::multicluster::client_endpoint()?;
    let conn =
        atrium_data_plane::multicluster::dial(&ep, child, &tls.ca, &tls.cert, &tls.key, polling.liveness).await?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    uplink::write_frame(
        &mut send,
        &pb::StreamHeader { kind: pb::stream_header::Kind::Control as i32, ..Default::default() },
    )
    .await
    .map_err(|e| e.to_string())?;
    let first: pb::AgentMessage = tokio::time::timeout(polling.timeout, uplink::read_frame(&mut recv))
        .await
        .map_err(|_| "no Register in time".to_string())?
        .map_err(|e| e.to_string())?;
    let Some(pb::agent_message::Msg::Register(reg)) = first.msg else {
        return Err("the child did not Register first".into());
    };
    if reg.cluster != child.name {
        tracing::warn!(child = %child.name, registered_as = %reg.cluster, "child registered under another name; using the parent's name for it");
    }
    let mut current = reg.uplinks;
    current.sort_by(|a, b| a.name.cmp(&b.name));
    tracing::info!(cluster = %child.name, address = %child.address, uplinks = %names(&current), "uplink connected");
    let snapshot = {
        let mut r = registry.lock().map_err(|_| "registry poisoned")?;
        r.insert(child.name.clone(), current.clone());
        r.clone()
    };
    on_change(snapshot);
    let mut poll = tokio::time::interval(polling.interval);
    poll.tick().await;
    let mut seq = 0;
    let mut last_heard = tokio::time::Instant::now();
    loop {
        let msg = tokio::select! {
            m = uplink::read_frame::<_, pb::AgentMessage>(&mut recv) => m.map_err(|e| e.to_string())?,
            _ = poll.tick() => {
                if last_heard.elapsed() > polling.timeout + polling.interval {
                    return Err(format!("no answer within pollTimeout ({:?})", polling.timeout));
                }
                seq += 1;
                uplink::write_frame(&mut send, &pb::ParentMessage { msg: Some(pb::parent_message::Msg::Poll(pb::Poll { seq })) }).await.map_err(|e| e.to_string())?;
                continue;
            }
            reason = conn.closed() => return Err(reason.to_string()),
        };
        last_heard = tokio::time::Instant::now();
        let Some(pb::agent_message::Msg::Update(mut u)) = msg.msg else { continue };
        u.uplinks.sort_by(|a, b| a.name.cmp(&b.name));
        if u.uplinks != current {
            for new in &u.uplinks {
                if let Some(old) = current.iter().find(|o| o.name == new.name) {
                    if old.healthy != new.healthy {
                        if new.healthy {
                            tracing::info!(cluster = %child.name, uplink = %new.name, healthy = true, "uplink health changed");
                        } else {
                            tracing::warn!(cluster = %child.name, uplink = %new.name, healthy = false, "uplink health changed");
                        }
                    }
                }
            }
            current = u.uplinks;
            let snapshot = {
                let mut r = registry.lock().map_err(|_| "registry poisoned")?;
                r.insert(child.name.clone(), current.clone());
                r.clone()
            };
            on_change(snapshot);
        }
    }
}

/// Dials every child and keeps the registry; `on_change` gets each new registry.
pub fn spawn(
    children: Vec<pb::Child>,
    tls: ParentTls,
    polling: Polling,
    on_change: Arc<dyn Fn(Registry) + Send + Sync>,
) -> Arc<Mutex<Registry>> {
    let registry = Arc::new(Mutex::new(Registry::new()));
    for child in children {
        let (tls, registry, on_change) = (tls.clone(), registry.clone(), on_change.clone());
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let result = session(&child, &tls, polling, &registry, on_change.as_ref()).await;
                let removed = registry.lock().ok().and_then(|mut r| r.remove(&child.name).map(|_| r.clone()));
                let why = result.err().unwrap_or_else(|| "control stream closed".into());
                if let Some(snapshot) = removed {
                    tracing::warn!(cluster = %child.name, address = %child.address, reason = %why, "child unreachable");
                    on_change(snapshot);
                    backoff = Duration::from_millis(100);
                } else {
                    tracing::debug!(cluster = %child.name, reason = %why, "child not reachable yet");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        });
    }
    registry
}
