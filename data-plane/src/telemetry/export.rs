//! Setting up logs and traces for a process: structured logs to stderr (`RUST_LOG` filters
//! them, the admin API changes the filter at runtime; text or JSON lines), and OpenTelemetry
//! traces exported over OTLP when an endpoint is configured: `--otlp-endpoint`, else the
//! standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`. The
//! protocol is gRPC unless `--otlp-protocol` or `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` says
//! `http/protobuf`; `OTEL_TRACES_SAMPLER(_ARG)`, `OTEL_SERVICE_NAME`,
//! `OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE` and the `OTEL_BSP_*` batch settings apply too.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
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
    /// The collector's CA bundle cannot be read or does not parse.
    #[error("{0}")]
    Ca(String),
}

/// How traces leave the process, as the command line says (the environment fills in the
/// rest).
#[derive(Debug, Clone, Default)]
pub struct TraceFlags {
    /// `--otlp-endpoint`: the collector's base URL (`http://collector:4317` for gRPC,
    /// `http://collector:4318` for HTTP, which appends `/v1/traces`).
    pub endpoint: Option<String>,
    /// `--otlp-protocol`: `grpc` or `http/protobuf`.
    pub protocol: Option<String>,
    /// The cluster this process serves (an agent's), as the resource's `atrium.cluster`.
    pub cluster: Option<String>,
}

/// The OTLP transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// Trace export, resolved from the flags and the environment.
#[derive(Debug)]
struct Export {
    /// The URL the exporter sends to (for HTTP, with its `/v1/traces` path).
    url: String,
    protocol: Protocol,
    /// A PEM file of the CAs that sign the collector's certificate (else the public roots).
    ca_file: Option<String>,
    sampler: Sampler,
    /// Whether a request that carries no trace context may be sampled (else it is served
    /// without a span: there would be nothing to export).
    roots_sampled: bool,
}

/// The export `flags` and the environment (`env`) configure, `None` when no endpoint is
/// set; an error names the flag or variable that does not parse.
fn resolve(flags: &TraceFlags, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Export>, String> {
    let var = |k: &str| env(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    let (url, verbatim) = match (&flags.endpoint, var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) {
        (Some(e), _) => (e.trim().to_string(), false),
        (None, Some(e)) => (e, true),
        (None, None) => match var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            Some(e) => (e, false),
            None => return Ok(None),
        },
    };
    let (what, uri) = match &flags.endpoint {
        Some(_) => ("--otlp-endpoint", url.parse::<http::Uri>()),
        None => ("the OTLP endpoint", url.parse::<http::Uri>()),
    };
    match uri {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
        _ => return Err(format!("{what} {url:?} is not an http:// or https:// URL")),
    }
    let protocol = match flags.protocol.clone().map(|p| ("--otlp-protocol", p)).or_else(|| {
        ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"]
            .into_iter()
            .find_map(|k| var(k).map(|v| (k, v)))
    }) {
        None => Protocol::Grpc,
        Some((_, p)) if p == "grpc" => Protocol::Grpc,
        Some((_, p)) if p == "http/protobuf" => Protocol::HttpProtobuf,
        Some((src, p)) => return Err(format!("{src} {p:?}: atrium exports traces over \"grpc\" or \"http/protobuf\"")),
    };
    let url = match protocol {
        // A base URL gets the signal's path (as the OTLP specification says for
        // OTEL_EXPORTER_OTLP_ENDPOINT); a signal endpoint is used as it is.
        Protocol::HttpProtobuf if !verbatim && !url.trim_end_matches('/').ends_with("/v1/traces") => {
            format!("{}/v1/traces", url.trim_end_matches('/'))
        }
        _ => url,
    };
    let ca_file = ["OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE"].into_iter().find_map(var);
    let (sampler, roots_sampled) = sampler(&var)?;
    Ok(Some(Export { url, protocol, ca_file, sampler, roots_sampled }))
}

/// The sampler `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` name (default: parent
/// based, always on), and whether it may sample a trace that starts here.
fn sampler(var: &dyn Fn(&str) -> Option<String>) -> Result<(Sampler, bool), String> {
    let ratio = || -> Result<f64, String> {
        match var("OTEL_TRACES_SAMPLER_ARG") {
            None => Ok(1.0),
            Some(a) => match a.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(format!("OTEL_TRACES_SAMPLER_ARG {a:?} is not a ratio between 0 and 1")),
            },
        }
    };
    let name = var("OTEL_TRACES_SAMPLER").unwrap_or_else(|| "parentbased_always_on".into());
    Ok(match name.as_str() {
        "always_on" => (Sampler::AlwaysOn, true),
        "always_off" => (Sampler::AlwaysOff, false),
        "traceidratio" => {
            let r = ratio()?;
            (Sampler::TraceIdRatioBased(r), r > 0.0)
        }
        "parentbased_always_on" => (Sampler::ParentBased(Box::new(Sampler::AlwaysOn)), true),
        "parentbased_always_off" => (Sampler::ParentBased(Box::new(Sampler::AlwaysOff)), false),
        "parentbased_traceidratio" => {
            let r = ratio()?;
            (Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r))), r > 0.0)
        }
        other => {
            return Err(format!(
                "OTEL_TRACES_SAMPLER {other:?} is not one of always_on, always_off, traceidratio, \
                 parentbased_always_on, parentbased_always_off, parentbased_traceidratio"
            ));
        }
    })
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

/// OTLP/HTTP through atrium's own bounded client, on the export thread's runtime (the
/// batch processor polls exports from a thread of its own, outside any runtime).
#[derive(Debug)]
struct HttpExport {
    fetcher: crate::fetch::Fetcher,
    rt: tokio::runtime::Handle,
}

impl opentelemetry_http::HttpClient for HttpExport {
    fn send_bytes<'a, 'f>(
        &'a self,
        request: http::Request<bytes::Bytes>,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError>>
                + Send
                + 'f,
        >,
    >
    where
        'a: 'f,
        Self: 'f,
    {
        let fetcher = self.fetcher.clone();
        let sent = self.rt.spawn(async move { fetcher.send(request).await });
        Box::pin(async move {
            match sent.await {
                Ok(Ok(resp)) => Ok(resp),
                Ok(Err(e)) => Err(e.into()),
                Err(e) => Err(e.into()),
            }
        })
    }
}

/// The span exporter for `export`, built on the export thread's runtime `rt`.
fn exporter(export: &Export, rt: &tokio::runtime::Handle) -> Result<opentelemetry_otlp::SpanExporter, ExportError> {
    let ca = match &export.ca_file {
        Some(f) => std::fs::read_to_string(f).map_err(|e| ExportError::Ca(format!("collector CA {f}: {e}")))?,
        None => String::new(),
    };
    let _in_rt = rt.enter();
    let built = match export.protocol {
        Protocol::Grpc => {
            let mut b = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(&export.url);
            if !ca.is_empty() {
                let tls = tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca.as_bytes()));
                b = b.with_tls_config(tls);
            }
            b.build()
        }
        Protocol::HttpProtobuf => {
            let fetcher = crate::fetch::Fetcher::new(&ca, Duration::from_secs(10), 1 << 20)
                .map_err(|e| ExportError::Ca(format!("collector CA: {e}")))?;
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(&export.url)
                .with_http_client(HttpExport { fetcher, rt: rt.clone() })
                .build()
        }
    };
    built.map_err(ExportError::Exporter)
}

/// A batch-exporting tracer provider for `service`. The exporter's client lives on a
/// runtime thread of its own, so exporting never competes with the request workers and
/// works whatever runtime (or none) the caller runs.
fn provider(export: &Export, service: &str, cluster: Option<&str>) -> Result<SdkTracerProvider, ExportError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("otel-export".into())
        .spawn(move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => {
                let _ = tx.send(Ok(rt.handle().clone()));
                rt.block_on(std::future::pending::<()>())
            }
            Err(e) => {
                let _ = tx.send(Err(ExportError::Thread(e)));
            }
        })
        .map_err(ExportError::Thread)?;
    let rt = rx.recv().map_err(|_| ExportError::Stopped)??;
    let exporter = exporter(export, &rt)?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_string());
    }
    if let Some(c) = cluster {
        resource = resource.with_attribute(opentelemetry::KeyValue::new("atrium.cluster", c.to_string()));
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(export.sampler.clone())
        .with_resource(resource.build())
        .build())
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
/// `service`. An error names the flag or variable that does not parse; a collector that
/// cannot be reached only makes exports fail (and logs say so).
pub fn init(default_level: &str, service: &str, json: bool, flags: &TraceFlags) -> Result<Guard, String> {
    use std::io::IsTerminal;
    let export = resolve(flags, &|k| std::env::var(k).ok())?;
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
    let Some(export) = export else {
        tracing_subscriber::registry().with(fmt).init();
        return Ok(Guard(None));
    };
    match provider(&export, service, flags.cluster.as_deref()) {
        Ok(p) => {
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            // Only atrium's request spans are exported, whatever RUST_LOG says about logs.
            let spans = tracing_subscriber::filter::Targets::new().with_target("atrium::request", tracing::Level::INFO);
            let otel = tracing_opentelemetry::layer().with_tracer(p.tracer("atrium")).with_filter(spans);
            tracing_subscriber::registry().with(fmt).with(otel).init();
            super::enable(export.roots_sampled);
            let protocol = match export.protocol {
                Protocol::Grpc => "gRPC",
                Protocol::HttpProtobuf => "HTTP",
            };
            tracing::info!(endpoint = %export.url, service, sampler = ?export.sampler, "exporting traces over OTLP/{protocol}");
            Ok(Guard(Some(p)))
        }
        Err(e) => {
            tracing_subscriber::registry().with(fmt).init();
            tracing::error!(endpoint = %export.url, error = %e, "trace export not started; serving without it");
            Ok(Guard(None))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    fn flags(endpoint: Option<&str>, protocol: Option<&str>) -> TraceFlags {
        TraceFlags { endpoint: endpoint.map(str::to_string), protocol: protocol.map(str::to_string), cluster: None }
    }

    #[test]
    fn nothing_is_exported_without_an_endpoint() {
        assert!(resolve(&flags(None, None), &env(&[("OTEL_TRACES_SAMPLER", "always_on")])).unwrap().is_none());
    }

    #[test]
    fn the_flag_wins_over_the_environment_and_http_gets_the_signal_path() {
        let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")];
        let e = resolve(&flags(Some("http://flag:4318/"), Some("http/protobuf")), &env(&vars)).unwrap().unwrap();
        assert_eq!((e.url.as_str(), e.protocol), ("http://flag:4318/v1/traces", Protocol::HttpProtobuf));
        let e = resolve(&flags(None, None), &env(&vars)).unwrap().unwrap();
        assert_eq!((e.url.as_str(), e.protocol), ("http://env:4317", Protocol::Grpc));
        // The signal's own endpoint is used as it is; the signal's protocol comes first.
        let vars = [
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://c/otlp/traces"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ];
        let e = resolve(&flags(None, None), &env(&vars)).unwrap().unwrap();
        assert_eq!((e.url.as_str(), e.protocol), ("https://c/otlp/traces", Protocol::HttpProtobuf));
    }

    #[test]
    fn bad_settings_are_named() {
        let err = resolve(&flags(Some("collector:4317"), None), &env(&[])).unwrap_err();
        assert!(err.contains("--otlp-endpoint") && err.contains("collector:4317"), "{err}");
        let err = resolve(&flags(Some("http://c:4317"), Some("http/json")), &env(&[])).unwrap_err();
        assert!(err.contains("--otlp-protocol") && err.contains("http/json"), "{err}");
        let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_TRACES_SAMPLER", "sometimes")];
        let err = resolve(&flags(None, None), &env(&vars)).unwrap_err();
        assert!(err.contains("OTEL_TRACES_SAMPLER") && err.contains("sometimes"), "{err}");
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
        ];
        let err = resolve(&flags(None, None), &env(&vars)).unwrap_err();
        assert!(err.contains("OTEL_TRACES_SAMPLER_ARG") && err.contains("1.5"), "{err}");
    }

    #[test]
    fn samplers_say_whether_a_trace_may_start_here() {
        let roots = |name: &str, arg: Option<&str>| {
            let mut vars = vec![("OTEL_TRACES_SAMPLER", name)];
            vars.extend(arg.map(|a| ("OTEL_TRACES_SAMPLER_ARG", a)));
            sampler(&env(&vars)).unwrap().1
        };
        assert!(sampler(&env(&[])).unwrap().1, "the default samples every trace that starts here");
        assert!(roots("always_on", None));
        assert!(!roots("always_off", None));
        assert!(!roots("parentbased_always_off", None));
        assert!(!roots("parentbased_traceidratio", Some("0")));
        assert!(roots("parentbased_traceidratio", Some("0.01")));
        assert!(roots("traceidratio", None), "no ratio means all of them");
        assert!(matches!(sampler(&env(&[])).unwrap().0, Sampler::ParentBased(_)));
    }
}
