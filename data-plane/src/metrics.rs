//! Prometheus metrics of the data plane.

use std::fmt::Write;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A shared label value: cloning it on the hot path costs an atomic increment, not an
/// allocation.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Label(pub Arc<str>);

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

/// Labels of a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Router id, or empty when none matched.
    pub router: Label,
    /// Service id.
    pub service: Label,
    /// Status code.
    pub code: u16,
}

/// Labels of a latency observation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouterLabels {
    /// Router id.
    pub router: Label,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The data plane's metrics.
pub struct Metrics {
    registry: Registry,
    /// Requests by router, service and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Time to response headers, by router.
    pub latency: Family<RouterLabels, Histogram, fn() -> Histogram>,
    /// Version of the table in force.
    pub table_version: Gauge,
    /// Tables swapped in.
    pub swaps: Counter,
    /// Configurations refused (the previous table stayed).
    pub swap_failures: Counter,
    /// Invalid objects left out of the configuration in force.
    pub objects_left_out: Gauge,
    /// On a parent's data plane: whether its snapshot stream to the control plane is open
    /// (a sample appears once it first tries; other roles have none).
    pub control_plane_connected: Family<NodeLabels, Gauge>,
    /// Per-child uplink counters.
    pub uplinks: UplinkMetrics,
    /// API management counters.
    pub apim: ApimMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("atrium");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouterLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let table_version = Gauge::default();
        let swaps = Counter::default();
        let swap_failures = Counter::default();
        registry.register("requests", "HTTP requests by router, service and status code", requests.clone());
        registry.register("request_duration_seconds", "Time from request to response headers", latency.clone());
        registry.register("route_table_version", "Version of the route table in force", table_version.clone());
        registry.register("route_table_swaps", "Route tables swapped in", swaps.clone());
        registry.register(
            "route_table_swap_failures",
            "Configurations refused; the previous table stayed in force",
            swap_failures.clone(),
        );
        let objects_left_out = Gauge::default();
        registry.register(
            "config_objects_left_out",
            "Invalid objects left out of the configuration in force (each is logged with its file or object and field)",
            objects_left_out.clone(),
        );
        let control_plane_connected = Family::<NodeLabels, Gauge>::default();
        registry.register(
            "control_plane_connected",
            "Whether this data plane's snapshot stream to the control plane is open (1) or not (0: it serves its last table)",
            control_plane_connected.clone(),
        );
        let uplinks = UplinkMetrics::default();
        registry.register(
            "uplink_stream_limit_waits",
            "Requests that waited for a free uplink stream because the child's concurrent-stream limit was reached",
            uplinks.stream_waits.clone(),
        );
        registry.register(
            "uplink_child_marked_down",
            "Times this data plane took a child out of its routing on its own (connection lost, or failed streams in a row)",
            uplinks.marked_down.clone(),
        );
        registry.register(
            "uplink_connections",
            "Live QUIC connections from this data plane to the child (one per worker thread)",
            uplinks.connections.clone(),
        );
        registry.register(
            "uplink_rtt_seconds",
            "Smoothed round-trip time of this data plane's QUIC connections to the child (the smallest)",
            uplinks.rtt.clone(),
        );
        registry.register(
            "uplink_streams_opened",
            "QUIC streams this data plane opened to the child (pooled HTTP/1.1 streams carry many requests each)",
            uplinks.streams_opened.clone(),
        );
        registry.register(
            "uplink_failed_streams",
            "Uplink streams that failed while their connection stayed up",
            uplinks.failed_streams.clone(),
        );
        let apim = ApimMetrics::default();
        registry.register(
            "plan_limit_decisions",
            "Requests to APIs by plan and what its limits said (allowed, delayed, rejected)",
            apim.decisions.clone(),
        );
        registry.register(
            "plan_counter_failures",
            "Requests to APIs whose plan counters (Redis) did not answer; the failure policy applied",
            apim.store_failures.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            table_version,
            swaps,
            swap_failures,
            objects_left_out,
            control_plane_connected,
            uplinks,
            apim,
        }
    }
}

/// A router's ids and its metric handles, looked up in the families once per route table
/// instead of hashing label strings on every request.
#[derive(Debug)]
pub struct RouterStats {
    /// Router id.
    pub router: Arc<str>,
    /// Service id.
    pub service: Arc<str>,
    latency: std::sync::OnceLock<Histogram>,
    by_code: std::sync::RwLock<Vec<(u16, Counter)>>,
}

impl RouterStats {
    /// Stats of router `router` forwarding to `service`.
    pub fn new(router: &str, service: &str) -> RouterStats {
        RouterStats {
            router: Arc::from(router),
            service: Arc::from(service),
            latency: std::sync::OnceLock::new(),
            by_code: std::sync::RwLock::new(Vec::new()),
        }
    }
}

impl Metrics {
    /// Counts a request answered with `code` after `secs`, by router (`None`: no router
    /// matched).
    pub fn record(&self, stats: Option<&RouterStats>, code: u16, secs: f64) {
        let Some(st) = stats else {
            let empty = Label(Arc::from(""));
            self.requests.get_or_create(&RequestLabels { router: empty.clone(), service: empty, code }).inc();
            return;
        };
        st.latency
            .get_or_init(|| self.latency.get_or_create(&RouterLabels { router: Label(st.router.clone()) }).clone())
            .observe(secs);
        // The common case: this code was seen before; counted under the read lock.
        let counted =
            st.by_code.read().is_ok_and(|c| c.iter().find(|(k, _)| *k == code).map(|(_, c)| c.inc()).is_some());
        if counted {
            return;
        }
        let counter = self
            .requests
            .get_or_create(&RequestLabels {
                router: Label(st.router.clone()),
                service: Label(st.service.clone()),
                code,
            })
            .clone();
        if let Ok(mut by_code) = st.by_code.write() {
            if !by_code.iter().any(|(k, _)| *k == code) {
                by_code.push((code, counter.clone()));
            }
        }
        counter.inc();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        self.uplinks.refresh();
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// API management counters.
#[derive(Clone, Debug, Default)]
pub struct ApimMetrics {
    /// Plan limit decisions, by plan and result.
    pub decisions: Family<PlanLabels, Counter>,
    /// Counter updates that failed (Redis did not answer).
    pub store_failures: Counter,
    /// Each plan's three decision counters, found without building labels per request.
    by_plan: Arc<std::sync::RwLock<std::collections::HashMap<String, [Counter; 3]>>>,
}

/// The results a plan decision counts.
const RESULTS: [&str; 3] = ["allowed", "delayed", "rejected"];

impl ApimMetrics {
    /// Counts a decision of `plan`'s limits: `result` is `allowed`, `delayed` or `rejected`.
    pub fn decision(&self, plan: &str, result: &'static str) {
        let Some(i) = RESULTS.iter().position(|r| *r == result) else { return };
        if let Some(c) = self.by_plan.read().ok().and_then(|m| m.get(plan).map(|c| c[i].clone())) {
            c.inc();
            return;
        }
        let counters = RESULTS
            .map(|r| self.decisions.get_or_create(&PlanLabels { plan: Label(Arc::from(plan)), result: r }).clone());
        counters[i].inc();
        if let Ok(mut m) = self.by_plan.write() {
            m.entry(plan.to_string()).or_insert(counters);
        }
    }
}

/// Labels of a data plane's own series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    /// Its node id.
    pub node: Label,
}

/// Labels of a plan limit decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlanLabels {
    /// The plan, `namespace/name`.
    pub plan: Label,
    /// `allowed`, `delayed` or `rejected`.
    pub result: &'static str,
}

/// What a data plane's QUIC connections to one child look like now: the child, its live
/// connections (one per worker thread), the smallest smoothed round-trip time among them.
pub type ChildConnections = (String, usize, Option<std::time::Duration>);

/// Reads the connections to children at each scrape.
type ConnectionsProbe = Box<dyn Fn() -> Vec<ChildConnections> + Send + Sync>;

/// The data plane's per-child uplink counters and gauges.
#[derive(Clone, Default)]
pub struct UplinkMetrics {
    /// Live QUIC connections to the child (read at each scrape).
    pub connections: Family<ChildLabels, Gauge>,
    /// Smallest smoothed round-trip time of those connections, in seconds.
    pub rtt: Family<ChildLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// QUIC streams opened to the child (each carries requests, pooled HTTP/1.1 streams many).
    pub streams_opened: Family<ChildLabels, Counter>,
    /// Where the gauges are read from (the uplink client, once there is one).
    probe: Arc<std::sync::OnceLock<ConnectionsProbe>>,
    /// Requests that waited because the child's concurrent-stream limit was reached.
    pub stream_waits: Family<ChildLabels, Counter>,
    /// Times this data plane took the child out of its routing (its connection failed, or
    /// streams failed in a row).
    pub marked_down: Family<ChildLabels, Counter>,
    /// Streams that failed on a live connection (passive health).
    pub failed_streams: Family<ChildLabels, Counter>,
}

impl std::fmt::Debug for UplinkMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UplinkMetrics")
    }
}

impl UplinkMetrics {
    /// Reads the connection gauges from `probe` at each scrape (set once).
    pub fn probe_connections(&self, probe: ConnectionsProbe) {
        let _ = self.probe.set(probe);
    }

    /// Sets the connection gauges from the probe (before encoding).
    fn refresh(&self) {
        let Some(probe) = self.probe.get() else { return };
        self.connections.clear();
        self.rtt.clear();
        for (child, n, rtt) in probe() {
            let l = ChildLabels { child: Label(Arc::from(child.as_str())) };
            self.connections.get_or_create(&l).set(n as i64);
            if let Some(rtt) = rtt {
                self.rtt.get_or_create(&l).set(rtt.as_secs_f64());
            }
        }
    }
}

/// Labels of per-child uplink metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ChildLabels {
    /// Child cluster name.
    pub child: Label,
}
