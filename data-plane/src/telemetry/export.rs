//! Setting up logs and traces for a process: structured logs to stderr (`RUST_LOG` filters
//! them, the admin API changes the filter at runtime; text or JSON lines), and OpenTelemetry
//! traces exported over OTLP/gRPC when an endpoint is configured the standard way
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_SERVICE_NAME`,
//! `OTEL_TRACES_SAMPLER` and the `OTEL_BSP_*` batch settings apply too).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Why trace export cannot start.
#[derive(Debug, thiserror::Error)]
enum ExportError {
    /// The export thread or its runtime cannot start.
    #[error("starting the export thread: {0}")]
    Thread(std::io::Error),
    /// The export thread ended before it built the exporter.
    #[error("the export thread stopped")]
    Stopped,
    /// The OTLP exporter cannot be built.
    #[error("{0}")]
    Exporter(opentelemetry_otlp::ExporterBuildError),
}

/// Flushes and stops the trace exporter when dropped (at the end of `main`).
pub struct Guard(Option<SdkTracerProvider>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("atrium: flushing traces failed: {e}");
            }
        }
    }
}

/// The OTLP endpoint from the environment, if tracing is configured.
fn endpoint() -> Option<String> {
    ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
}

/// A batch-exporting tracer provider. The gRPC client lives on a runtime thread of its own,
/// so exporting never competes with the request workers and works whatever runtime (or
/// none) the caller runs.
fn provider(service: &str) -> Result<SdkTracerProvider, ExportError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("otel-export".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(ExportError::Thread(e)));
                    return;
                }
            };
            rt.block_on(async move {
                let built =
                    opentelemetry_otlp::SpanExporter::builder().with_tonic().build().map_err(ExportError::Exporter);
                let _ = tx.send(built);
                std::future::pending::<()>().await
            });
        })
        .map_err(ExportError::Thread)?;
    let exporter = rx.recv().map_err(|_| ExportError::Stopped)??;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_string());
    }
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build())
}

/// The filter of the logs in force, changeable at runtime (the admin API's
/// `/api/log-level`).
type ReloadFilter = tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

static LOG_FILTER: std::sync::OnceLock<ReloadFilter> = std::sync::OnceLock::new();

/// The log filter in force (`RUST_LOG` syntax), if logs are set up.
pub fn log_level() -> Option<String> {
    LOG_FILTER.get()?.with_current(|f| f.to_string()).ok()
}

/// Replaces the log filter (`RUST_LOG` syntax: `debug`, `info,atrium_k8s=debug`); an error
/// names what does not parse, and the filter in force stays.
pub fn set_log_level(spec: &str) -> Result<String, String> {
    let filter = tracing_subscriber::EnvFilter::try_new(spec.trim()).map_err(|e| format!("{spec:?}: {e}"))?;
    let handle = LOG_FILTER.get().ok_or("logs are not set up in this process")?;
    handle.reload(filter).map_err(|e| e.to_string())?;
    let now = log_level().unwrap_or_default();
    tracing::info!(filter = %now, "log level changed");
    Ok(now)
}

/// Installs the log subscriber (`default_level` unless `RUST_LOG` says otherwise; one JSON
/// object per line with `json`) and, when an OTLP endpoint is configured, trace export for
/// `service`.
pub fn init(default_level: &str, service: &str, json: bool) -> Guard {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let _ = LOG_FILTER.set(handle);
    let fmt: Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync> = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter)
            .boxed()
    };
    let Some(endpoint) = endpoint() else {
        tracing_subscriber::registry().with(fmt).init();
        return Guard(None);
    };
    match provider(service) {
        Ok(p) => {
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            // Only atrium's request spans are exported, whatever RUST_LOG says about logs.
            let spans = tracing_subscriber::filter::Targets::new().with_target("atrium::request", tracing::Level::INFO);
            let otel = tracing_opentelemetry::layer().with_tracer(p.tracer("atrium")).with_filter(spans);
            tracing_subscriber::registry().with(fmt).with(otel).init();
            super::enable();
            tracing::info!(%endpoint, service, "exporting traces over OTLP/gRPC");
            Guard(Some(p))
        }
        Err(e) => {
            tracing_subscriber::registry().with(fmt).init();
            tracing::error!(%endpoint, error = %e, "trace export not started; serving without it");
            Guard(None)
        }
    }
}
