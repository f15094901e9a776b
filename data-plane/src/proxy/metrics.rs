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
    /// Requests that waited because a child's concurrent-stream limit was reached.
    pub uplink_stream_waits: Family<crate::multicluster::ChildLabels, Counter>,
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
        let uplink_stream_waits = Family::<crate::multicluster::ChildLabels, Counter>::default();
        registry.register(
            "uplink_stream_limit_waits",
            "Requests that waited for a free uplink stream because the child's concurrent-stream limit was reached",
            uplink_stream_waits.clone(),
        );
        Metrics { registry, requests, latency, table_version, swaps, swap_failures, uplink_stream_waits }
    }
}

impl Metrics {
    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
