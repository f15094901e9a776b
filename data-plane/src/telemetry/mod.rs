//! OpenTelemetry for requests: a server span per request, child of the caller's W3C trace
//! context (`traceparent`, `tracestate`) when it sent one, and that span's context written
//! into the request sent upstream, so backends and child clusters join the same trace.
//!
//! Off unless the binary configured an exporter ([`enable`]): then nothing on the request
//! path creates spans or touches headers. When the sampler never starts a trace here
//! (`always_off`, a ratio of 0), only requests that bring a trace context get a span (so
//! that the context goes on upstream); the others are served as with tracing off.

pub mod export;

use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

static ENABLED: AtomicBool = AtomicBool::new(false);
static ROOTS: AtomicBool = AtomicBool::new(false);

/// Turns request spans and trace-context propagation on (once an exporter is installed);
/// `roots`: whether the sampler may sample a trace that starts here.
pub fn enable(roots: bool) {
    ROOTS.store(roots, Ordering::Relaxed);
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether requests may be traced at all.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether a request gets a span: tracing is on, and either a trace may start here or the
/// request continues one (`has_context`: it carries `traceparent`).
#[inline]
pub fn traces(has_context: impl FnOnce() -> bool) -> bool {
    enabled() && (ROOTS.load(Ordering::Relaxed) || has_context())
}

/// Records what a request's span only learns on the way (`atrium.api`,
/// `atrium.application`, `atrium.plan`, `atrium.child`, `atrium.uplink`) on the current
/// span, when requests are traced.
#[inline]
pub fn note(field: &'static str, value: &str) {
    if enabled() {
        tracing::Span::current().record(field, value);
    }
}

struct Extractor<'a>(&'a HeaderMap);

impl opentelemetry::propagation::Extractor for Extractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct Injector<'a>(&'a mut HeaderMap);

impl opentelemetry::propagation::Injector for Injector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let Ok(n) = HeaderName::from_bytes(key.as_bytes()) else { return };
        // An empty `tracestate:` says nothing: none is sent (nor one the client sent).
        if value.is_empty() {
            self.0.remove(n);
            return;
        }
        if let Ok(v) = HeaderValue::from_str(&value) {
            self.0.insert(n, v);
        }
    }
}

/// The server span of one request, continuing the caller's trace when its headers carry
/// one. The proxy records the outcome in its empty fields.
/// `uplink`: the uplink a child's request arrived on.
pub fn request_span(
    headers: &HeaderMap,
    method: &http::Method,
    path: &str,
    entry_point: &str,
    uplink: Option<&str>,
) -> tracing::Span {
    let span = tracing::info_span!(
        target: "atrium::request",
        "request",
        otel.name = %method,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        url.path = path,
        atrium.entry_point = entry_point,
        http.response.status_code = tracing::field::Empty,
        atrium.router = tracing::field::Empty,
        atrium.service = tracing::field::Empty,
        atrium.api = tracing::field::Empty,
        atrium.application = tracing::field::Empty,
        atrium.plan = tracing::field::Empty,
        atrium.child = tracing::field::Empty,
        atrium.uplink = uplink,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Extractor(headers)));
    let _ = span.set_parent(parent);
    span
}

/// Records the answer on a request span: status code, router, service, and an error status
/// for 5xx answers.
pub fn record_outcome(span: &tracing::Span, status: u16, router: &str, service: &str) {
    span.record("http.response.status_code", status);
    if !router.is_empty() {
        span.record("atrium.router", router);
        span.record("atrium.service", service);
    }
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
}

/// Writes the current span's trace context into `headers` (replacing the caller's
/// `traceparent`: the upstream's parent is this hop).
pub fn inject(headers: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut Injector(headers)));
}
