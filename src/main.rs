//! `atrium`: one binary, a subcommand per role.
#![forbid(unsafe_code)]

mod gateway;
mod planes;
mod route_check;
mod telemetry;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use atrium_model::diagnostic::Diagnostic;
use atrium_model::values::Values;
use atrium_routing::table::RouteTable;
use clap::{Args, Parser, Subcommand, ValueEnum};

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

/// Listener flags of `gateway` and of every serving subcommand.
#[derive(Args, Clone)]
struct ListenArgs {
    /// Helm-style values (entrypoints come from `ports`).
    #[arg(long)]
    values: Option<PathBuf>,
    /// Override an entrypoint's address: NAME=ADDR (`:8000`, `127.0.0.1:0`) or NAME=off.
    #[arg(long = "entrypoint", value_parser = gateway::parse_entry_point_flag)]
    entry_points: Vec<(String, String)>,
    /// IP the entrypoints bind to unless overridden.
    #[arg(long, default_value = "0.0.0.0")]
    bind_ip: std::net::IpAddr,
    /// Admin listener (health, metrics, raw data), e.g. 127.0.0.1:9000; a bare `:PORT`
    /// binds loopback only.
    #[arg(long)]
    admin: Option<String>,
    /// A file holding the bearer token the admin API asks for (`/healthz`, `/readyz` and
    /// `/metrics` stay open for probes and scrapers).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Runtime worker threads (default: the number of cores).
    #[arg(long)]
    workers: Option<usize>,
    /// Write an access log line per request to stdout.
    #[arg(long, value_enum)]
    access_log: Option<AccessLogFormat>,
}

impl ListenArgs {
    fn admin(&self) -> anyhow::Result<Option<atrium_data_plane::proxy::admin::AdminConfig>> {
        let Some(a) = self.admin.as_deref() else {
            anyhow::ensure!(self.admin_token_file.is_none(), "--admin-token-file needs --admin");
            return Ok(None);
        };
        let addr = gateway::parse_admin_addr(a).context("--admin")?;
        let token = match &self.admin_token_file {
            Some(f) => Some(atrium_data_plane::proxy::admin::read_token(f).context("--admin-token-file")?),
            None => None,
        };
        if token.is_none() && !addr.ip().is_loopback() {
            eprintln!(
                "atrium: warning: the admin API on {addr} is reachable off this host without a token (--admin-token-file)"
            );
        }
        Ok(Some(atrium_data_plane::proxy::admin::AdminConfig { addr, token }))
    }

    fn access_log(&self) -> Option<atrium_data_plane::proxy::AccessLog> {
        self.access_log.map(|f| match f {
            AccessLogFormat::Json => atrium_data_plane::proxy::AccessLog::Json,
            AccessLogFormat::Clf => atrium_data_plane::proxy::AccessLog::Clf,
        })
    }

    fn workers(&self) -> usize {
        self.workers.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
    }
}

/// Timeouts and limits of every serving subcommand. The defaults are near nginx's and
/// Traefik's (see the README's table).
#[derive(Args, Clone)]
struct LimitArgs {
    /// Seconds a client has to send complete request headers (from the connection's
    /// start for its first request, from a head's first byte for the next ones).
    #[arg(long, default_value_t = 10)]
    header_read_timeout: u64,
    /// Seconds a keep-alive connection may stay idle between requests (Traefik's
    /// `respondingTimeouts.idleTimeout`).
    #[arg(long, default_value_t = 180)]
    idle_timeout: u64,
    /// Largest request head in bytes (431 past it), and largest HTTP/2 header list.
    #[arg(long, default_value_t = 64 * 1024)]
    max_header_bytes: usize,
    /// Client connections served at once by this process; past it, new connections are
    /// closed at once.
    #[arg(long, default_value_t = 65_536)]
    max_connections: usize,
    /// Seconds to connect to an upstream (502 past it).
    #[arg(long, default_value_t = 30)]
    upstream_connect_timeout: u64,
    /// Seconds to an upstream's response headers, a child's through an uplink included
    /// (504 past it).
    #[arg(long, default_value_t = 60)]
    upstream_response_timeout: u64,
    /// Seconds an idle upstream connection stays pooled.
    #[arg(long, default_value_t = 90)]
    upstream_idle_timeout: u64,
    /// Seconds shutdown waits for requests in flight.
    #[arg(long, default_value_t = 30)]
    drain_timeout: u64,
}

impl LimitArgs {
    fn server(&self) -> anyhow::Result<atrium_data_plane::proxy::server::ServerLimits> {
        anyhow::ensure!(self.max_connections > 0, "--max-connections: at least 1");
        anyhow::ensure!(self.max_header_bytes >= 1024, "--max-header-bytes: at least 1024");
        Ok(atrium_data_plane::proxy::server::ServerLimits::new(
            Duration::from_secs(self.header_read_timeout.max(1)),
            Duration::from_secs(self.idle_timeout.max(1)),
            self.max_header_bytes,
            Duration::from_secs(self.drain_timeout),
            self.max_connections,
        ))
    }

    fn upstream(&self) -> atrium_data_plane::upstream::UpstreamConfig {
        atrium_data_plane::upstream::UpstreamConfig {
            connect_timeout: Duration::from_secs(self.upstream_connect_timeout.max(1)),
            response_header_timeout: Duration::from_secs(self.upstream_response_timeout.max(1)),
            idle_timeout: Duration::from_secs(self.upstream_idle_timeout),
            ..Default::default()
        }
    }
}

/// Flags of every serving subcommand.
#[derive(Args, Clone)]
struct ServeArgs {
    #[command(flatten)]
    listen: ListenArgs,
    #[command(flatten)]
    limits: LimitArgs,
    /// Directory for generated state (development PKI, default certificate).
    #[arg(long, default_value = ".atrium")]
    state_dir: PathBuf,
    /// TLS material: `ca.pem`, `<name>.pem`, `<name>-key.pem` (default: `<state-dir>/pki`,
    /// created on first start).
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// Uplink QUIC keep-alive interval, in milliseconds.
    #[arg(long, default_value_t = 250)]
    uplink_keepalive_ms: u64,
    /// An uplink QUIC connection silent this long is dead (a `kill -9`'d peer), in milliseconds.
    #[arg(long, default_value_t = 900)]
    uplink_idle_timeout_ms: u64,
    /// Concurrent QUIC streams a peer may open on an uplink connection (requests in flight
    /// plus idle pooled streams); past it, requests wait and
    /// `atrium_uplink_stream_limit_waits_total` counts them.
    #[arg(long, default_value_t = 1024)]
    uplink_max_streams: u32,
    /// On an agent: how long a pooled uplink stream may wait for its next request before
    /// it is closed, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    uplink_stream_idle_ms: u64,
    /// Largest uplink control frame (a child's uplink list, a parent's poll), in bytes.
    #[arg(long, default_value_t = atrium_data_plane::uplink::MAX_FRAME)]
    uplink_max_frame_bytes: usize,
}

impl ServeArgs {
    fn options(self) -> anyhow::Result<planes::ServeOptions> {
        anyhow::ensure!(self.uplink_keepalive_ms >= 10, "--uplink-keepalive-ms: at least 10");
        anyhow::ensure!(
            self.uplink_max_streams >= 2,
            "--uplink-max-streams: at least 2 (the control stream takes one)"
        );
        anyhow::ensure!(
            self.uplink_idle_timeout_ms > self.uplink_keepalive_ms,
            "--uplink-idle-timeout-ms must be longer than --uplink-keepalive-ms ({} ms)",
            self.uplink_keepalive_ms
        );
        let l = &self.listen;
        Ok(planes::ServeOptions {
            admin: l.admin()?,
            access_log: l.access_log(),
            workers: l.workers(),
            values: self.listen.values,
            entry_points: self.listen.entry_points,
            bind_ip: self.listen.bind_ip,
            limits: self.limits.server()?,
            upstream: self.limits.upstream(),
            state_dir: self.state_dir,
            tls_dir: self.tls_dir,
            liveness: atrium_data_plane::uplink::Liveness {
                keep_alive: Duration::from_millis(self.uplink_keepalive_ms),
                idle_timeout: Duration::from_millis(self.uplink_idle_timeout_ms),
                max_streams: self.uplink_max_streams,
                stream_idle: Duration::from_millis(self.uplink_stream_idle_ms.max(1)),
                max_frame: self.uplink_max_frame_bytes.max(1024),
            },
        })
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum EmbeddedDataPlane {
    Embedded,
    None,
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a development CA in DIR (kept if it exists).
    Init {
        /// Directory for `ca.pem` and `ca-key.pem`.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a certificate for NAME from the CA in DIR (server and client use).
    Issue {
        /// Directory holding the CA.
        #[arg(long)]
        dir: PathBuf,
        /// Certificate name (`control-plane`, `data-plane`, a node id, a cluster name).
        #[arg(long)]
        name: String,
        /// The role it carries: `control-plane`, `data-plane` or `agent` (default: from the
        /// name: `control-plane` and `data-plane` are those roles, any other name an agent).
        #[arg(long)]
        role: Option<String>,
        /// Extra DNS names or IPs.
        #[arg(long = "san")]
        sans: Vec<String>,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: compile watched manifests into snapshots and stream them to
    /// data planes over gRPC (mutual TLS); an embedded data plane serves them too.
    ControlPlane {
        /// Manifest files or folders (watched).
        #[arg(long, required = true)]
        manifests: Vec<PathBuf>,
        /// Address of the snapshot gRPC service.
        #[arg(long, default_value = "0.0.0.0:9090")]
        grpc: String,
        /// `embedded` serves the entrypoints in this process too; `none` does not.
        #[arg(long, value_enum, default_value = "embedded")]
        data_plane: EmbeddedDataPlane,
        /// Quiet time before a configuration change is published, in milliseconds.
        #[arg(long, default_value_t = 50)]
        watch_debounce_ms: u64,
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Run a data plane: serve the snapshots a control plane streams, from the cache first.
    DataPlane {
        /// The control plane's gRPC URL, e.g. https://127.0.0.1:9090.
        #[arg(long)]
        control_plane: String,
        /// This node's id (unique per data plane).
        #[arg(long)]
        node_id: String,
        /// Group of data planes sharing one configuration.
        #[arg(long, default_value = "default")]
        group: String,
        /// Where the last acknowledged snapshot is kept.
        #[arg(long)]
        cache_dir: PathBuf,
        /// Name of this node's certificate in the TLS directory.
        #[arg(long, default_value = "data-plane")]
        tls_name: String,
        /// How often request counts are reported to the control plane, in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        usage_interval_ms: u64,
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Run a child cluster's agent: its gateway, plus its uplinks served to parents over
    /// mutual-TLS QUIC on the `uplink: true` ports.
    Agent {
        /// The cluster's name (the key of this child under the parent's `children`).
        #[arg(long)]
        cluster: String,
        /// Manifest files or folders (watched).
        #[arg(long, required = true)]
        manifests: Vec<PathBuf>,
        /// Name of this agent's certificate in the TLS directory (default: the cluster name).
        #[arg(long)]
        tls_name: Option<String>,
        /// Quiet time before a configuration change is applied, in milliseconds.
        #[arg(long, default_value_t = 50)]
        watch_debounce_ms: u64,
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Run the whole multi-cluster example on this machine: parent (control plane and data
    /// plane) on 127.0.0.1, children cluster-a on 127.0.0.2 and cluster-b on 127.0.0.3,
    /// demo backends, development certificates. Ctrl-C stops everything.
    Up {
        /// Generated state: certificates, caches, the example's manifests.
        #[arg(long, default_value = ".atrium/up")]
        state_dir: PathBuf,
        /// A topology directory to run instead of the embedded example (parent/, cluster-a/,
        /// cluster-b/ as in deploy/examples/multi-cluster-portal).
        #[arg(long)]
        example: Option<PathBuf>,
        /// The parent's IP.
        #[arg(long, default_value = "127.0.0.1")]
        parent_ip: std::net::IpAddr,
        /// The parent's `web` port; websecure is +443, admin +1000, gRPC +1090.
        #[arg(long, default_value_t = 8000)]
        port_base: u16,
    },
    /// Development certificates: one CA per installation, leaf certificates from it.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Serve a Traefik-compatible gateway from local manifests, reloading them on change.
    Gateway {
        /// Manifest files or folders (watched).
        #[arg(long, required = true)]
        manifests: Vec<PathBuf>,
        #[command(flatten)]
        listen: ListenArgs,
        /// Directory for generated state (the default TLS certificate); kept across restarts.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// TLS directory whose `gateway.pem` and `gateway-key.pem` (`atrium certs issue
        /// --name gateway`) are the default certificate, instead of a generated one.
        #[arg(long)]
        tls_dir: Option<PathBuf>,
        /// Quiet time before a configuration change is applied, in milliseconds.
        #[arg(long, default_value_t = 50)]
        watch_debounce_ms: u64,
        #[command(flatten)]
        limits: LimitArgs,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Servers say what they do at info; one-shot tools only speak up when something is wrong.
    let serving = matches!(
        cli.command,
        Command::Gateway { .. }
            | Command::ControlPlane { .. }
            | Command::DataPlane { .. }
            | Command::Agent { .. }
            | Command::Up { .. }
    );
    let role = match &cli.command {
        Command::Gateway { .. } => "atrium-gateway".to_string(),
        Command::ControlPlane { .. } => "atrium-control-plane".to_string(),
        Command::DataPlane { node_id, .. } => format!("atrium-data-plane-{node_id}"),
        Command::Agent { cluster, .. } => format!("atrium-agent-{cluster}"),
        _ => "atrium".to_string(),
    };
    let _telemetry = telemetry::init(if serving { "info" } else { "warn" }, &role);
    let result = match cli.command {
        Command::ControlPlane { manifests, grpc, data_plane, watch_debounce_ms, serve } => (|| {
            let grpc = gateway::parse_addr(&grpc).context("--grpc")?;
            let o = serve.options()?;
            tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(planes::run_control_plane(
                o,
                manifests,
                grpc,
                data_plane == EmbeddedDataPlane::Embedded,
                Duration::from_millis(watch_debounce_ms.max(1)),
            ))?;
            Ok(ExitCode::SUCCESS)
        })(),
        Command::DataPlane { control_plane, node_id, group, cache_dir, tls_name, usage_interval_ms, serve } => (|| {
            let o = serve.options()?;
            tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(planes::run_data_plane(
                o,
                control_plane,
                node_id,
                group,
                cache_dir,
                tls_name,
                Duration::from_millis(usage_interval_ms),
            ))?;
            Ok(ExitCode::SUCCESS)
        })(
        ),
        Command::Agent { cluster, manifests, tls_name, watch_debounce_ms, serve } => (|| {
            let o = serve.options()?;
            tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(planes::run_agent(
                o,
                cluster,
                manifests,
                tls_name,
                Duration::from_millis(watch_debounce_ms.max(1)),
            ))?;
            Ok(ExitCode::SUCCESS)
        })(),
        Command::Up { state_dir, example, parent_ip, port_base } => (|| {
            anyhow::ensure!(port_base <= u16::MAX - 1090, "--port-base: at most {}", u16::MAX - 1090);
            tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(up::run(
                state_dir,
                example,
                up::Layout { parent_ip, port_base },
            ))?;
            Ok(ExitCode::SUCCESS)
        })(),
        Command::Certs { command } => (|| {
            match command {
                CertsCommand::Init { dir } => planes::certs(true, &dir, None, None, &[])?,
                CertsCommand::Issue { dir, name, role, sans } => {
                    planes::certs(false, &dir, Some(&name), role.as_deref(), &sans)?
                }
            }
            Ok(ExitCode::SUCCESS)
        })(),
        Command::Gateway { manifests, listen, state_dir, tls_dir, watch_debounce_ms, limits } => (|| {
            let opts = gateway::GatewayOptions {
                admin: listen.admin()?,
                access_log: listen.access_log(),
                workers: listen.workers(),
                values: listen.values,
                manifests,
                entry_points: listen.entry_points,
                bind_ip: listen.bind_ip,
                debounce: Duration::from_millis(watch_debounce_ms.max(1)),
                limits: limits.server()?,
                state_dir,
                tls_dir,
                upstream: limits.upstream(),
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
    let table = RouteTable::from_snapshot(&compiled.body, |_| ())
        .context("compiled configuration does not form a route table")?;
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
