//! `atrium`: one binary, a subcommand per role.
#![forbid(unsafe_code)]

mod gateway;
mod route_check;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use atrium_data_plane::table::RouteTable;
use atrium_model::diagnostic::Diagnostic;
use atrium_model::values::Values;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "atrium", version, about = "Self-hosted multi-cluster API portal")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum AccessLogFormat {
    Json,
    Clf,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a Traefik-compatible gateway from local manifests, reloading them on change.
    Gateway {
        /// Helm-style values (entrypoints come from `ports`).
        #[arg(long)]
        values: Option<PathBuf>,
        /// Manifest files or folders (watched).
        #[arg(long, required = true)]
        manifests: Vec<PathBuf>,
        /// Override an entrypoint's address: NAME=ADDR (`:8000`, `127.0.0.1:0`) or NAME=off.
        #[arg(long = "entrypoint", value_parser = gateway::parse_entry_point_flag)]
        entry_points: Vec<(String, String)>,
        /// IP the entrypoints bind to unless overridden.
        #[arg(long, default_value = "0.0.0.0")]
        bind_ip: std::net::IpAddr,
        /// Admin listener (health, metrics, raw data), e.g. 127.0.0.1:9000.
        #[arg(long)]
        admin: Option<String>,
        /// Directory for generated state (the default TLS certificate); kept across restarts.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Runtime worker threads (default: the number of cores).
        #[arg(long)]
        workers: Option<usize>,
        /// Write an access log line per request to stdout.
        #[arg(long, value_enum)]
        access_log: Option<AccessLogFormat>,
        /// Quiet time before a configuration change is applied, in milliseconds.
        #[arg(long, default_value_t = 50)]
        watch_debounce_ms: u64,
        /// Seconds a client has to send complete request headers; also how long an idle
        /// keep-alive connection is kept.
        #[arg(long, default_value_t = 60)]
        header_read_timeout: u64,
        /// Largest request head in bytes (431 past it).
        #[arg(long, default_value_t = 1 << 20)]
        max_header_bytes: usize,
        /// Seconds to connect to an upstream (502 past it).
        #[arg(long, default_value_t = 30)]
        upstream_connect_timeout: u64,
        /// Seconds to an upstream's response headers (504 past it).
        #[arg(long, default_value_t = 60)]
        upstream_response_timeout: u64,
        /// Seconds an idle upstream connection stays pooled.
        #[arg(long, default_value_t = 90)]
        upstream_idle_timeout: u64,
        /// Seconds shutdown waits for requests in flight.
        #[arg(long, default_value_t = 30)]
        drain_timeout: u64,
    },
    /// Check manifests (one cluster's, or a topology directory) without starting anything.
    Lint {
        /// Manifest files or folders, or one topology directory (it has parent/values.yaml).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Helm-style values of the cluster (ignored for a topology directory).
        #[arg(long)]
        values: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Which router gets each test request, and which path its backend sees.
    RouteCheck {
        /// The cluster's manifests (files or folders).
        #[arg(long, required = true)]
        manifests: Vec<PathBuf>,
        /// The YAML file of test requests.
        #[arg(long)]
        tests: PathBuf,
        /// Helm-style values of the cluster.
        #[arg(long)]
        values: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
}

fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Servers say what they do at info; one-shot tools only speak up when something is wrong.
    init_logging(if matches!(cli.command, Command::Gateway { .. }) { "info" } else { "warn" });
    let result = match cli.command {
        Command::Gateway {
            values,
            manifests,
            entry_points,
            bind_ip,
            admin,
            state_dir,
            workers,
            access_log,
            watch_debounce_ms,
            header_read_timeout,
            max_header_bytes,
            upstream_connect_timeout,
            upstream_response_timeout,
            upstream_idle_timeout,
            drain_timeout,
        } => (|| {
            let admin = admin.map(|a| gateway::parse_addr(&a)).transpose().context("--admin")?;
            let opts = gateway::GatewayOptions {
                values,
                manifests,
                entry_points,
                bind_ip,
                admin,
                access_log: access_log.map(|f| match f {
                    AccessLogFormat::Json => atrium_data_plane::proxy::AccessLog::Json,
                    AccessLogFormat::Clf => atrium_data_plane::proxy::AccessLog::Clf,
                }),
                debounce: Duration::from_millis(watch_debounce_ms.max(1)),
                limits: atrium_data_plane::proxy::server::ServerLimits {
                    header_read_timeout: Duration::from_secs(header_read_timeout.max(1)),
                    max_header_bytes,
                    drain_timeout: Duration::from_secs(drain_timeout),
                },
                state_dir,
                workers: workers.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)),
                upstream: atrium_data_plane::upstream::UpstreamConfig {
                    connect_timeout: Duration::from_secs(upstream_connect_timeout.max(1)),
                    response_header_timeout: Duration::from_secs(upstream_response_timeout.max(1)),
                    idle_timeout: Duration::from_secs(upstream_idle_timeout),
                    ..Default::default()
                },
            };
            // The control runtime (watcher, admin, health checks) is one thread; the
            // entrypoints run on `workers` threads of their own.
            tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(gateway::run(opts))?;
            Ok(ExitCode::SUCCESS)
        })(),
        Command::Lint { paths, values, format } => lint(&paths, values.as_deref(), format),
        Command::RouteCheck { manifests, tests, values, format } => {
            route_check(&manifests, &tests, values.as_deref(), format)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("atrium: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn lint(paths: &[PathBuf], values: Option<&std::path::Path>, format: Format) -> anyhow::Result<ExitCode> {
    let refs: Vec<&std::path::Path> = paths.iter().map(PathBuf::as_path).collect();
    let diags = atrium_model::lint::lint_paths(&refs, values);
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let warnings = diags.len() - errors;
    match format {
        Format::Text => {
            for d in &diags {
                println!("{d}");
            }
            eprintln!("{errors} error(s), {warnings} warning(s)");
        }
        Format::Json => {
            let out = serde_json::json!({ "findings": diags, "errors": errors, "warnings": warnings });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
    }
    Ok(if errors > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn route_check(
    manifests: &[PathBuf],
    tests: &std::path::Path,
    values: Option<&std::path::Path>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    for m in manifests {
        anyhow::ensure!(m.exists(), "{}: no such file or directory", m.display());
    }
    let tests = route_check::read_tests(tests).map_err(anyhow::Error::msg)?;
    let (values, mut diags): (Values, Vec<Diagnostic>) = match values {
        Some(v) => Values::load(v),
        None => (Values::default(), Vec::new()),
    };
    let loaded = atrium_model::loader::load_paths(manifests);
    let compiled = atrium_model::compile::compile(&loaded, &values, None);
    diags.extend(loaded.diagnostics.iter().cloned());
    diags.extend(compiled.diagnostics.iter().cloned());
    for d in diags.iter().filter(|d| d.is_error()) {
        eprintln!("{d}");
    }
    let table =
        RouteTable::from_snapshot(&compiled.body).context("compiled configuration does not form a route table")?;
    let outcomes: Vec<route_check::Outcome> = tests.tests.iter().map(|c| route_check::run_case(&table, c)).collect();
    let passed = outcomes.iter().filter(|o| o.passed).count();
    let failed = outcomes.len() - passed;
    match format {
        Format::Text => {
            for o in &outcomes {
                match &o.error {
                    None => println!("PASS {}", o.name),
                    Some(e) => println!("FAIL {}: {e}", o.name),
                }
            }
            println!("{passed} passed, {failed} failed");
        }
        Format::Json => {
            let out = serde_json::json!({ "results": outcomes, "passed": passed, "failed": failed });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
    }
    Ok(if failed > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
