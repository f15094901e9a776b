//! What the agent adds to its admin listener: per-uplink health-check results and latency,
//! the streams parents open, the parents connected, as Prometheus metrics
//! (`atrium_agent_*`) and as JSON (`/api/uplinks`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atrium_data_plane::metrics::Label;
use atrium_data_plane::proxy::admin::AdminExtra;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::uplinks::Uplinks;

/// Labels of a health-check result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    uplink: Label,
    /// `pass`, `fail` (an answer the check does not accept) or `timeout`.
    result: &'static str,
}

/// Labels of per-uplink series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UplinkLabels {
    uplink: Label,
}

/// Labels of streams parents open.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    /// The uplink a data stream is for (`""` for control streams, `unknown` for an uplink
    /// this child does not expose).
    uplink: Label,
    /// `control` or `data`.
    kind: &'static str,
}

fn check_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

/// The outcome of one health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckResult {
    /// The answer's status is one the check accepts.
    Pass,
    /// Another status (or no request could be made).
    Fail,
    /// No answer within the check's timeout.
    Timeout,
}

impl CheckResult {
    fn label(self) -> &'static str {
        match self {
            CheckResult::Pass => "pass",
            CheckResult::Fail => "fail",
            CheckResult::Timeout => "timeout",
        }
    }
}

/// The agent's metrics.
pub struct AgentMetrics {
    registry: Registry,
    checks: Family<CheckLabels, Counter>,
    check_seconds: Family<UplinkLabels, Histogram, fn() -> Histogram>,
    healthy: Family<UplinkLabels, Gauge>,
    streams: Family<StreamLabels, Counter>,
    parents: Gauge,
    in_flight: Gauge,
    /// The latest check of each uplink: result, duration, when.
    last: Mutex<BTreeMap<String, (CheckResult, Duration, Instant)>>,
    /// Streams served per uplink, for `/api/uplinks`.
    served: Mutex<BTreeMap<String, u64>>,
    parents_now: AtomicI64,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentMetrics")
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("atrium_agent");
        let checks = Family::<CheckLabels, Counter>::default();
        let check_seconds = Family::<UplinkLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            check_histogram as fn() -> Histogram,
        );
        let healthy = Family::<UplinkLabels, Gauge>::default();
        let streams = Family::<StreamLabels, Counter>::default();
        let (parents, in_flight) = (Gauge::default(), Gauge::default());
        registry.register(
            "health_checks",
            "Uplink health checks run, by uplink and result (pass, fail, timeout)",
            checks.clone(),
        );
        registry.register(
            "health_check_duration_seconds",
            "Time an uplink health check took through the uplink's routing to the backend",
            check_seconds.clone(),
        );
        registry.register(
            "uplink_healthy",
            "Whether the uplink is offered to parents as healthy (1) or not (0)",
            healthy.clone(),
        );
        registry.register(
            "uplink_streams",
            "QUIC streams parents opened, by uplink and kind (control, data)",
            streams.clone(),
        );
        registry.register("parents_connected", "Parent QUIC connections open now", parents.clone());
        registry.register("requests_in_flight", "Requests from parents being served now", in_flight.clone());
        AgentMetrics {
            registry,
            checks,
            check_seconds,
            healthy,
            streams,
            parents,
            in_flight,
            last: Mutex::default(),
            served: Mutex::default(),
            parents_now: AtomicI64::new(0),
        }
    }
}

impl AgentMetrics {
    /// Counts one health check of `uplink` that took `took`.
    pub fn check(&self, uplink: &str, result: CheckResult, took: Duration) {
        let u = Label(Arc::from(uplink));
        self.checks.get_or_create(&CheckLabels { uplink: u.clone(), result: result.label() }).inc();
        self.check_seconds.get_or_create(&UplinkLabels { uplink: u }).observe(took.as_secs_f64());
        if let Ok(mut l) = self.last.lock() {
            l.insert(uplink.to_string(), (result, took, Instant::now()));
        }
    }

    /// Counts a stream a parent opened: a control stream (`uplink` None) or a data stream
    /// for `uplink` (`exposed`: whether this child exposes it; others count as `unknown`,
    /// so a parent cannot grow the label set).
    pub fn stream(&self, uplink: Option<&str>, exposed: bool) {
        let (name, kind) = match uplink {
            None => ("", "control"),
            Some(u) if exposed => (u, "data"),
            Some(_) => ("unknown", "data"),
        };
        self.streams.get_or_create(&StreamLabels { uplink: Label(Arc::from(name)), kind }).inc();
        if kind == "data" {
            if let Ok(mut s) = self.served.lock() {
                *s.entry(name.to_string()).or_default() += 1;
            }
        }
    }

    /// A parent connected (`+1`) or went away (`-1`).
    pub fn parent(&self, delta: i64) {
        let now = self.parents_now.fetch_add(delta, Ordering::AcqRel) + delta;
        self.parents.set(now);
    }
}

/// The agent's admin endpoints and metrics.
pub(crate) struct AgentAdmin {
    pub(crate) metrics: Arc<AgentMetrics>,
    pub(crate) uplinks: Arc<Uplinks>,
    pub(crate) in_flight: Arc<crate::server::InFlight>,
}

impl AgentAdmin {
    /// Each uplink this child exposes: weight, health as parents are told it, its health
    /// check and latest result, streams served.
    fn uplinks_json(&self) -> serde_json::Value {
        let told = self.uplinks.state().borrow().clone();
        let last = self.metrics.last.lock().map(|l| l.clone()).unwrap_or_default();
        let served = self.metrics.served.lock().map(|s| s.clone()).unwrap_or_default();
        let uplinks: Vec<_> = self
            .uplinks
            .configured()
            .iter()
            .map(|u| {
                let healthy = told.uplinks.iter().find(|s| s.name == u.name).is_some_and(|s| s.healthy);
                let check = u.health_check.as_ref().map(
                    |hc| serde_json::json!({"path": hc.path, "intervalMs": hc.interval_ms, "timeoutMs": hc.timeout_ms}),
                );
                let latest = last.get(&u.name).map(|(r, took, at)| {
                    serde_json::json!({
                        "result": r.label(),
                        "durationMs": (took.as_secs_f64() * 1e6).round() / 1e3,
                        "agoMs": at.elapsed().as_millis() as u64,
                    })
                });
                serde_json::json!({
                    "name": u.name,
                    "weight": u.weight,
                    "healthy": healthy,
                    "healthCheck": check,
                    "lastCheck": latest,
                    "streamsServed": served.get(&u.name).copied().unwrap_or(0),
                })
            })
            .collect();
        serde_json::json!({
            "cluster": told.cluster,
            "parentsConnected": self.metrics.parents_now.load(Ordering::Acquire),
            "requestsInFlight": self.in_flight.count(),
            "uplinks": uplinks,
        })
    }
}

impl AdminExtra for AgentAdmin {
    fn json(&self, path: &str) -> Option<serde_json::Value> {
        (path == "/api/uplinks").then(|| self.uplinks_json())
    }

    fn metrics(&self) -> String {
        let m = &self.metrics;
        // Every uplink has a health sample from the start, not only after a change.
        let told = self.uplinks.state().borrow().clone();
        m.healthy.clear();
        for u in &told.uplinks {
            m.healthy
                .get_or_create(&UplinkLabels { uplink: Label(Arc::from(u.name.as_str())) })
                .set(i64::from(u.healthy));
        }
        m.in_flight.set(self.in_flight.count() as i64);
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &m.registry);
        out.trim_end().trim_end_matches("# EOF").trim_end().to_string()
    }

    fn endpoints(&self) -> Vec<(&'static str, &'static str)> {
        vec![(
            "/api/uplinks",
            "each uplink: weight, health, its health check's latest result and latency, streams served",
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parent_cannot_grow_the_label_set_with_uplinks_this_child_does_not_expose() {
        let m = AgentMetrics::default();
        m.stream(Some("crm"), true);
        for i in 0..100 {
            m.stream(Some(&format!("made-up-{i}")), false);
        }
        m.stream(None, false);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap();
        assert!(out.contains("atrium_agent_uplink_streams_total{uplink=\"crm\",kind=\"data\"} 1"), "{out}");
        assert!(out.contains("atrium_agent_uplink_streams_total{uplink=\"unknown\",kind=\"data\"} 100"), "{out}");
        assert!(out.contains("atrium_agent_uplink_streams_total{uplink=\"\",kind=\"control\"} 1"), "{out}");
        assert!(!out.contains("made-up"), "{out}");
    }

    #[test]
    fn checks_count_by_result_and_time_their_latency() {
        let m = AgentMetrics::default();
        m.check("crm", CheckResult::Pass, Duration::from_millis(3));
        m.check("crm", CheckResult::Timeout, Duration::from_millis(500));
        m.parent(1);
        m.parent(1);
        m.parent(-1);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap();
        assert!(out.contains("atrium_agent_health_checks_total{uplink=\"crm\",result=\"pass\"} 1"), "{out}");
        assert!(out.contains("atrium_agent_health_checks_total{uplink=\"crm\",result=\"timeout\"} 1"), "{out}");
        assert!(out.contains("atrium_agent_health_check_duration_seconds_count{uplink=\"crm\"} 2"), "{out}");
        assert!(out.contains("atrium_agent_parents_connected 1"), "{out}");
        assert_eq!(m.last.lock().unwrap()["crm"].0, CheckResult::Timeout);
    }
}
