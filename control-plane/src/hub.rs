//! The snapshot hub: the latest snapshot, and who has applied what.
//!
//! Publishing encodes the body once and hashes it; streams share the bytes. The latest
//! snapshot sits in a `watch` channel, so delivery is latest-wins by construction: a slow
//! data plane that misses intermediate versions simply gets the newest one next.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use atrium_proto::v1 as pb;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

/// A snapshot as published.
#[derive(Debug)]
pub struct Published {
    /// Version, hash and encoded body.
    pub snapshot: pb::Snapshot,
    /// When the change that produced it was detected (for propagation time).
    pub detected_at: Instant,
}

/// What the control plane knows of one data plane.
#[derive(Debug, Clone, Default)]
pub struct NodeState {
    /// Its group.
    pub group: String,
    /// Its build version.
    pub build_version: String,
    /// Whether a stream is open.
    pub connected: bool,
    /// Unix seconds of the current (or last) connection.
    pub connected_since: u64,
    /// The version it last acknowledged.
    pub applied: Option<pb::Version>,
    /// Unix milliseconds of that acknowledgement.
    pub applied_at_ms: u64,
    /// The last rejection it reported.
    pub last_nack: Option<String>,
    /// Why the control plane refused it (version skew).
    pub refused: Option<String>,
    /// Requests it reported, by router, since it connected first.
    pub usage: BTreeMap<String, u64>,
    /// When its stream closed (None while connected).
    pub disconnected_at: Option<std::time::Instant>,
}

/// How long a data plane that went away stays listed: long enough to be looked at after a
/// failure, not forever (every rollout brings new pod names).
pub const FORGET_DISCONNECTED: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Control-plane metrics.
pub struct HubMetrics {
    registry: Registry,
    connected: Gauge,
    version: Gauge,
    propagation: Histogram,
}

impl std::fmt::Debug for HubMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HubMetrics")
    }
}

/// The hub.
#[derive(Debug)]
pub struct Hub {
    epoch: u64,
    seq: AtomicU64,
    current: watch::Sender<Option<Arc<Published>>>,
    nodes: Mutex<BTreeMap<String, NodeState>>,
    /// This control plane's build version.
    pub build_version: String,
    metrics: HubMetrics,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A fresh epoch: the time of start and the process id, so two control planes started in
/// the same millisecond still differ.
fn fresh_epoch() -> u64 {
    (now_ms() << 16) | u64::from(std::process::id() & 0xffff)
}

/// The epoch for a control plane starting with state in `dir`: a fresh one, or one past the
/// last one started there when that is higher (the clock went back), so data planes —
/// which refuse snapshots of an older epoch than the one they hold — never refuse a
/// restarted control plane. The epoch is written to `<dir>/epoch` before it is used.
pub fn next_epoch(dir: &std::path::Path) -> std::io::Result<u64> {
    let file = dir.join("epoch");
    let last = match std::fs::read_to_string(&file) {
        Ok(t) => t.trim().parse::<u64>().ok(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let fresh = fresh_epoch();
    // A record from more than a year ahead is not a clock that went back but a damaged
    // file: following it would leave no room to grow.
    let year_ahead = fresh.saturating_add((365 * 24 * 3_600_000) << 16);
    let epoch = match last {
        Some(l) if l < year_ahead => fresh.max(l + 1),
        Some(l) => {
            tracing::warn!(recorded = l, file = %file.display(), "recorded snapshot epoch is absurdly far ahead; ignored");
            fresh
        }
        None => fresh,
    };
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join("epoch.tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{epoch}")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &file)?;
    // The rename itself survives a crash once the directory is synced.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(epoch)
}

impl Hub {
    /// A hub with a fresh epoch (see [`Hub::with_epoch`] for one that survives a clock
    /// going back).
    pub fn new(build_version: &str) -> Arc<Hub> {
        Hub::with_epoch(build_version, fresh_epoch())
    }

    /// A hub publishing under `epoch` (see [`next_epoch`]).
    pub fn with_epoch(build_version: &str, epoch: u64) -> Arc<Hub> {
        let mut registry = Registry::with_prefix("atrium");
        let connected = Gauge::default();
        let version = Gauge::default();
        let propagation = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register("dataplanes_connected", "Data planes with an open snapshot stream", connected.clone());
        registry.register("snapshot_version", "Sequence number of the latest snapshot", version.clone());
        registry.register(
            "snapshot_propagation_seconds",
            "Time from a configuration change detected to a data plane's ACK",
            propagation.clone(),
        );
        Arc::new(Hub {
            epoch,
            seq: AtomicU64::new(0),
            current: watch::Sender::new(None),
            nodes: Mutex::default(),
            build_version: build_version.to_string(),
            metrics: HubMetrics { registry, connected, version, propagation },
        })
    }

    /// The epoch of this control plane.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Publishes a compiled body; `None` when it equals the current one (nothing sent).
    pub fn publish(&self, body: &pb::SnapshotBody, detected_at: Instant) -> Option<pb::Version> {
        let mut snapshot = atrium_proto::seal(pb::Version::default(), body);
        if self.current.borrow().as_ref().is_some_and(|p| p.snapshot.hash == snapshot.hash) {
            return None;
        }
        let version = pb::Version { epoch: self.epoch, seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1 };
        snapshot.version = Some(version);
        self.metrics.version.set(version.seq as i64);
        self.current.send_replace(Some(Arc::new(Published { snapshot, detected_at })));
        tracing::info!(epoch = version.epoch, seq = version.seq, "snapshot published");
        Some(version)
    }

    /// The latest snapshot, and every later one.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Published>>> {
        self.current.subscribe()
    }

    /// Updates a node's record.
    pub fn update_node(&self, id: &str, f: impl FnOnce(&mut NodeState)) {
        if let Ok(mut nodes) = self.nodes.lock() {
            let n = nodes.entry(id.to_string()).or_default();
            f(n);
            if n.connected {
                n.disconnected_at = None;
            } else if n.disconnected_at.is_none() {
                n.disconnected_at = Some(std::time::Instant::now());
            }
            nodes.retain(|_, n| n.disconnected_at.is_none_or(|t| t.elapsed() < FORGET_DISCONNECTED));
            let connected = nodes.values().filter(|n| n.connected).count();
            self.metrics.connected.set(connected as i64);
        }
    }

    /// Records an ACK; observes propagation time when it acknowledges the latest snapshot.
    pub fn acked(&self, id: &str, version: pb::Version) {
        if let Some(p) = self.current.borrow().as_ref() {
            if p.snapshot.version == Some(version) {
                self.metrics.propagation.observe(p.detected_at.elapsed().as_secs_f64());
            }
        }
        self.update_node(id, |n| {
            n.applied = Some(version);
            n.applied_at_ms = now_ms();
            n.last_nack = None;
        });
    }

    /// A copy of every node's record (those gone for [`FORGET_DISCONNECTED`] are forgotten).
    pub fn nodes(&self) -> BTreeMap<String, NodeState> {
        let Ok(mut nodes) = self.nodes.lock() else { return BTreeMap::new() };
        nodes.retain(|_, n| n.disconnected_at.is_none_or(|t| t.elapsed() < FORGET_DISCONNECTED));
        nodes.clone()
    }

    /// `/api/dataplanes`.
    pub fn nodes_json(&self) -> serde_json::Value {
        let current = self.current.borrow().as_ref().and_then(|p| p.snapshot.version);
        let nodes: serde_json::Map<String, serde_json::Value> = self
            .nodes()
            .into_iter()
            .map(|(id, n)| {
                let v = n.applied.map(|v| serde_json::json!({"epoch": v.epoch, "seq": v.seq}));
                (
                    id,
                    serde_json::json!({
                        "group": n.group, "buildVersion": n.build_version, "connected": n.connected,
                        "connectedSince": n.connected_since, "appliedVersion": v, "appliedAtMs": n.applied_at_ms,
                        "current": n.applied.is_some() && n.applied == current,
                        "lastNack": n.last_nack, "refused": n.refused, "requestsByRouter": n.usage,
                    }),
                )
            })
            .collect();
        serde_json::json!({
            "epoch": self.epoch,
            "version": current.map(|v| serde_json::json!({"epoch": v.epoch, "seq": v.seq})),
            "dataplanes": nodes,
        })
    }

    /// Prometheus text of the control plane's metrics (without the final `# EOF`).
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.metrics.registry);
        out.trim_end().trim_end_matches("# EOF").to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_start_in_a_state_dir_gets_a_higher_epoch_even_when_the_clock_went_back() {
        let dir = tempfile::tempdir().unwrap();
        let first = next_epoch(dir.path()).unwrap();
        let second = next_epoch(dir.path()).unwrap();
        assert!(second > first, "{second} > {first}");
        // The last start was far in the future (the clock has since gone back).
        let future = fresh_epoch() + (3_600_000 << 16);
        std::fs::write(dir.path().join("epoch"), future.to_string()).unwrap();
        assert_eq!(next_epoch(dir.path()).unwrap(), future + 1);
        // A record far beyond any clock is damage, not history: a fresh epoch.
        std::fs::write(dir.path().join("epoch"), (u64::MAX - 1).to_string()).unwrap();
        let e = next_epoch(dir.path()).unwrap();
        assert!(e < u64::MAX / 2 && e >= fresh_epoch() - (10_000 << 16), "{e}");
        // An unreadable record does not stop a start: a fresh epoch, written down.
        std::fs::write(dir.path().join("epoch"), "garbage").unwrap();
        let e = next_epoch(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("epoch")).unwrap().trim(), e.to_string());
    }

    #[test]
    fn publish_skips_equal_bodies_and_numbers_versions() {
        let hub = Hub::new("0.1.0");
        let a = pb::SnapshotBody {
            routers: vec![pb::Router { id: "a/b/0".into(), ..Default::default() }],
            ..Default::default()
        };
        let v1 = hub.publish(&a, Instant::now()).unwrap();
        assert_eq!((v1.epoch, v1.seq), (hub.epoch(), 1));
        assert!(hub.publish(&a, Instant::now()).is_none(), "same configuration, same hash: nothing to send");
        let v2 = hub.publish(&pb::SnapshotBody::default(), Instant::now()).unwrap();
        assert_eq!(v2.seq, 2);
        let rx = hub.subscribe();
        assert_eq!(rx.borrow().as_ref().unwrap().snapshot.version, Some(v2));
    }

    #[test]
    fn data_planes_gone_for_a_while_are_forgotten() {
        let hub = Hub::new("0.1.0");
        hub.update_node("dp-new", |n| n.connected = true);
        hub.update_node("dp-left", |n| n.connected = false);
        let long_ago = Instant::now().checked_sub(FORGET_DISCONNECTED + std::time::Duration::from_secs(1));
        hub.update_node("dp-old", |n| {
            n.connected = false;
            n.disconnected_at = long_ago;
        });
        let listed: Vec<String> = hub.nodes().into_keys().collect();
        assert_eq!(listed, ["dp-left", "dp-new"], "the one gone 15 minutes ago is forgotten");
        // Reconnecting clears the mark.
        hub.update_node("dp-left", |n| n.connected = true);
        assert!(hub.nodes()["dp-left"].disconnected_at.is_none());
        assert!(hub.metrics_text().contains("atrium_dataplanes_connected 2"));
    }

    #[test]
    fn node_records_and_metrics() {
        let hub = Hub::new("0.1.0");
        let v = hub.publish(&pb::SnapshotBody::default(), Instant::now()).unwrap();
        hub.update_node("dp-1", |n| n.connected = true);
        hub.acked("dp-1", v);
        let j = hub.nodes_json();
        assert_eq!(j["dataplanes"]["dp-1"]["current"], true);
        assert!(hub.metrics_text().contains("atrium_dataplanes_connected 1"));
        assert!(hub.metrics_text().contains("atrium_snapshot_propagation_seconds_count 1"));
    }
}
