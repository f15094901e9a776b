//! `atrium`: one binary, a subcommand per role. This file only parses flags into each
//! role's configuration and calls the crate that owns the role: `atrium_control_plane`,
//! `atrium_data_plane::node`, `atrium_agent`, `atrium_up`; `lint` and `route-check` call
//! the compiler in `atrium_model`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use atrium_data_plane::node::{Serving, parse_addr, parse_admin_addr, shutdown_signal};
use atrium_data_plane::proxy::AccessLog;
use atrium_data_plane::proxy::access_check::{self, Credential};
use atrium_data_plane::proxy::admin::{AdminConfig, read_token};
use atrium_data_plane::proxy::server::ServerLimits;
use atrium_data_plane::uplink::Liveness;
use atrium_data_plane::upstream::UpstreamConfig;
use atrium_k8s::LeaseOptions;
use atrium_k8s::rbac::Component;
use atrium_provider::{KubeSource, Source, load_values};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "atrium", version, about = "Self-hosted multi-cluster API portal")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as `text` or as one JSON object per line (`json`), on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Export traces over OTLP to this collector (its base URL: `http://collector:4317`
    /// for gRPC, `http://collector:4318` for HTTP). Default: `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// (or `..._TRACES_ENDPOINT`); no export when neither is set.
    #[arg(long, global = true, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// The OTLP transport: `grpc` or `http/protobuf`. Default: `OTEL_EXPORTER_OTLP_PROTOCOL`,
    /// else `grpc`. Sampling follows `OTEL_TRACES_SAMPLER` (default `parentbased_always_on`).
    #[arg(long, global = true, value_name = "PROTOCOL")]
    otlp_protocol: Option<String>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
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
    #[arg(long = "entrypoint", value_parser = parse_entry_point_flag)]
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
    /// Seconds between SIGTERM and closing the listeners, during which `/readyz` answers
    /// 503 and everything is still served: the time a load balancer or Kubernetes takes to
    /// remove this endpoint (then requests in flight drain, up to --drain-timeout).
    #[arg(long, default_value_t = 0)]
    shutdown_delay: u64,
}

/// Parses `NAME=ADDR`.
fn parse_entry_point_flag(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(n, a)| (n.to_string(), a.to_string()))
        .ok_or_else(|| format!("expected NAME=ADDR, got {s:?}"))
}

impl ListenArgs {
    fn admin(&self) -> anyhow::Result<Option<AdminConfig>> {
        let Some(a) = self.admin.as_deref() else {
            anyhow::ensure!(self.admin_token_file.is_none(), "--admin-token-file needs --admin");
            return Ok(None);
        };
        let addr = parse_admin_addr(a).context("--admin")?;
        let token = match &self.admin_token_file {
            Some(f) => Some(read_token(f).context("--admin-token-file")?),
            None => None,
        };
        if token.is_none() && !addr.ip().is_loopback() {
            eprintln!(
                "atrium: warning: the admin API on {addr} is reachable off this host without a token (--admin-token-file)"
            );
        }
        Ok(Some(AdminConfig { addr, token }))
    }

    /// Completes on SIGTERM or Ctrl-C, after `--shutdown-delay` of answering `/readyz` 503.
    async fn shutdown(delay: u64) {
        atrium_data_plane::node::shutdown_after_delay(Duration::from_secs(delay)).await
    }

    fn access_log(&self) -> Option<AccessLog> {
        self.access_log.map(|f| match f {
            AccessLogFormat::Json => AccessLog::Json,
            AccessLogFormat::Clf => AccessLog::Clf,
        })
    }

    fn workers(&self) -> usize {
        self.workers.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
    }

    /// What serves, with the listeners the values declare (moved by `--entrypoint`), the
    /// limits and the TLS directories; uplink settings default.
    fn serving(&self, limits: &LimitArgs, state_dir: PathBuf, tls_dir: Option<PathBuf>) -> anyhow::Result<Serving> {
        let values = load_values(self.values.as_deref())?;
        let listeners = atrium_provider::listeners::listeners(&values, &self.entry_points, self.bind_ip)?;
        Ok(Serving {
            listeners: listeners.http,
            uplink_listeners: listeners.uplink,
            admin: self.admin()?,
            access_log: self.access_log(),
            limits: limits.server()?,
            upstream: limits.upstream(),
            workers: self.workers(),
            state_dir,
            tls_dir,
            liveness: Liveness::default(),
            apim: limits.apim()?,
        })
    }

    /// The manifests and values a role compiles, watched with `debounce_ms` of quiet time.
    fn source(&self, manifests: Vec<PathBuf>, debounce_ms: u64) -> Source {
        Source::files(self.values.clone(), manifests, Duration::from_millis(debounce_ms.max(1)))
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum ProviderKind {
    /// Manifest files and folders (`--manifests`), watched.
    File,
    /// The Kubernetes API server (in a pod: its service account; else `KUBECONFIG`).
    Kubernetes,
}

/// Where the control plane and the agent read their manifests.
#[derive(Args, Clone)]
struct ProviderArgs {
    /// Where manifests come from: `file` (`--manifests`) or `kubernetes` (watched through
    /// the API server; in a pod its service account, else `KUBECONFIG`).
    #[arg(long, value_enum, default_value = "file")]
    provider: ProviderKind,
    /// Manifest files or folders (watched), with `--provider file`.
    #[arg(long)]
    manifests: Vec<PathBuf>,
    /// The kubeconfig file (`--provider kubernetes`; default: $KUBECONFIG, else
    /// ~/.kube/config, else the pod's service account).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Namespaces to watch, comma-separated (`--provider kubernetes`; default: all).
    #[arg(long, value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Label selector for the traefik.io and hub.traefik.io kinds, as Traefik's
    /// `labelSelector` (`--provider kubernetes`); Services, EndpointSlices and Secrets are
    /// read whatever their labels.
    #[arg(long)]
    label_selector: Option<String>,
    /// Namespace of the leader Lease that picks the replica writing status (default:
    /// $POD_NAMESPACE, else the service account's or the kubeconfig context's namespace).
    #[arg(long)]
    lease_namespace: Option<String>,
    /// Seconds the leader Lease holds without renewal (a new leader takes over after it).
    #[arg(long, default_value_t = 15)]
    lease_duration: u64,
    /// This replica's identity in the Lease and in Events (default: $POD_NAME, else the
    /// host name and process id).
    #[arg(long)]
    identity: Option<String>,
    /// Quiet time before a configuration change is applied, in milliseconds.
    #[arg(long, default_value_t = 50)]
    watch_debounce_ms: u64,
}

impl ProviderArgs {
    /// The configuration source these flags describe; `lease` names the leader Lease.
    fn source(&self, values: Option<PathBuf>, component: Component, lease: &str) -> anyhow::Result<Source> {
        let debounce = Duration::from_millis(self.watch_debounce_ms.max(1));
        match self.provider {
            ProviderKind::File => {
                anyhow::ensure!(!self.manifests.is_empty(), "--manifests is required with --provider file");
                anyhow::ensure!(
                    self.namespaces.is_empty() && self.label_selector.is_none() && self.kubeconfig.is_none(),
                    "--kubeconfig, --namespaces and --label-selector apply to --provider kubernetes"
                );
                Ok(Source::files(values, self.manifests.clone(), debounce))
            }
            ProviderKind::Kubernetes => {
                anyhow::ensure!(self.manifests.is_empty(), "--manifests applies to --provider file");
                anyhow::ensure!(self.lease_duration >= 2, "--lease-duration must be at least 2 seconds");
                let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
                let identity = self.identity.clone().or_else(|| env("POD_NAME")).unwrap_or_else(|| {
                    let host = env("HOSTNAME").unwrap_or_else(|| "atrium".into());
                    format!("{host}-{}", std::process::id())
                });
                let lease = LeaseOptions {
                    namespace: self
                        .lease_namespace
                        .clone()
                        .or_else(|| env("POD_NAMESPACE"))
                        // Empty: the client's namespace (in a pod, its service account's).
                        .unwrap_or_default(),
                    name: lease.to_string(),
                    identity,
                    duration: Duration::from_secs(self.lease_duration),
                };
                let options = atrium_k8s::Options {
                    namespaces: self
                        .namespaces
                        .iter()
                        .map(|n| n.trim().to_string())
                        .filter(|n| !n.is_empty())
                        .collect(),
                    label_selector: self.label_selector.clone(),
                };
                let mut kube = KubeSource::new(options, component, Some(lease));
                kube.kubeconfig = self.kubeconfig.clone();
                Ok(Source::kubernetes(values, kube, debounce))
            }
        }
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
    /// Longest wait (Go duration, e.g. 250ms) a request over its plan's rate limit is made
    /// to take before it goes on; a longer wait is refused with 429 at once.
    #[arg(long, default_value = "0s")]
    max_rate_limit_delay: String,
    /// When Redis holds the plan counters (`hub.redis`) and does not answer: `open` lets
    /// API requests through uncounted, `closed` answers them 503.
    #[arg(long, value_enum, default_value_t = RedisFailurePolicy::Open)]
    redis_failure_policy: RedisFailurePolicy,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum RedisFailurePolicy {
    Open,
    Closed,
}

impl LimitArgs {
    fn server(&self) -> anyhow::Result<ServerLimits> {
        anyhow::ensure!(self.max_connections > 0, "--max-connections: at least 1");
        anyhow::ensure!(self.max_header_bytes >= 1024, "--max-header-bytes: at least 1024");
        Ok(ServerLimits::new(
            Duration::from_secs(self.header_read_timeout.max(1)),
            Duration::from_secs(self.idle_timeout.max(1)),
            self.max_header_bytes,
            Duration::from_secs(self.drain_timeout),
            self.max_connections,
        ))
    }

    fn apim(&self) -> anyhow::Result<atrium_data_plane::proxy::plan_limits::ApimConfig> {
        use atrium_data_plane::proxy::plan_limits::{ApimConfig, FailurePolicy};
        let delay = atrium_routing::middleware::config::parse_go_duration(&self.max_rate_limit_delay)
            .map_err(|e| anyhow::anyhow!("--max-rate-limit-delay: {e}"))?;
        anyhow::ensure!(delay <= Duration::from_secs(60), "--max-rate-limit-delay: at most 1m");
        Ok(ApimConfig {
            max_rate_limit_delay: delay,
            redis_failure: match self.redis_failure_policy {
                RedisFailurePolicy::Open => FailurePolicy::Open,
                RedisFailurePolicy::Closed => FailurePolicy::Closed,
            },
        })
    }

    fn upstream(&self) -> UpstreamConfig {
        UpstreamConfig {
            connect_timeout: Duration::from_secs(self.upstream_connect_timeout.max(1)),
            response_header_timeout: Duration::from_secs(self.upstream_response_timeout.max(1)),
            idle_timeout: Duration::from_secs(self.upstream_idle_timeout),
            ..Default::default()
        }
    }
}

/// Where a node keeps its generated state and finds its TLS material.
#[derive(Args, Clone)]
struct TlsArgs {
    /// Directory for generated state (development PKI, default certificate).
    #[arg(long, default_value = ".atrium")]
    state_dir: PathBuf,
    /// TLS material: `ca.pem`, `<name>.pem`, `<name>-key.pem` (default: `<state-dir>/pki`,
    /// created on first start).
    #[arg(long)]
    tls_dir: Option<PathBuf>,
}

/// Uplink QUIC settings (the parent's connections to children, an agent's to parents).
#[derive(Args, Clone)]
struct UplinkArgs {
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
    /// On a parent's data plane: `per-worker` dials one QUIC connection per worker thread
    /// and child (a request never waits on another thread); `shared` dials one per child
    /// for the whole data plane, driven by a thread of their own (a child holds fewer
    /// connections; every stream operation wakes that thread). A child's
    /// `--uplink-max-streams` then limits the whole data plane rather than each worker.
    #[arg(long, value_enum, default_value_t = UplinkConnections::PerWorker)]
    uplink_connections: UplinkConnections,
}

/// How a parent's data plane connects to each child.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum UplinkConnections {
    /// One connection per worker thread and child.
    PerWorker,
    /// One connection per child, shared by the worker threads.
    Shared,
}

impl UplinkArgs {
    fn liveness(&self) -> anyhow::Result<Liveness> {
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
        Ok(Liveness {
            keep_alive: Duration::from_millis(self.uplink_keepalive_ms),
            idle_timeout: Duration::from_millis(self.uplink_idle_timeout_ms),
            max_streams: self.uplink_max_streams,
            stream_idle: Duration::from_millis(self.uplink_stream_idle_ms.max(1)),
            max_frame: self.uplink_max_frame_bytes.max(1024),
            shared_connections: self.uplink_connections == UplinkConnections::Shared,
        })
    }
}

/// The flag groups of every serving role of a multi-cluster installation (control plane,
/// data plane, agent): listeners and admin, limits and timeouts, TLS, uplinks.
#[derive(Args, Clone)]
struct ServeArgs {
    #[command(flatten)]
    listen: ListenArgs,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    uplink: UplinkArgs,
}

impl ServeArgs {
    fn serving(&self) -> anyhow::Result<Serving> {
        let mut serving = self.listen.serving(&self.limits, self.tls.state_dir.clone(), self.tls.tls_dir.clone())?;
        serving.liveness = self.uplink.liveness()?;
        Ok(serving)
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
enum PortalCommand {
    /// Portal users (local accounts).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Suspend an application: its keys are refused until it is resumed.
    Suspend {
        /// The application id (`portal-…`).
        app_id: String,
    },
    /// Resume a suspended application.
    Resume {
        /// The application id.
        app_id: String,
    },
    /// Revoke any API key by its id.
    RevokeKey {
        /// The key id (as the portal lists it).
        id: i64,
    },
    /// Write a consistent copy of the store to FILE (while it is in use).
    Backup {
        /// The new file.
        to: PathBuf,
    },
    /// Replace the store with a backup (stop the control plane first).
    Restore {
        /// The backup.
        from: PathBuf,
    },
    /// The latest audit events (logins, keys, subscriptions), newest first.
    Audit {
        /// How many.
        #[arg(long, default_value_t = 50)]
        last: i64,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user; prints a one-time password to be changed at the first login.
    Add {
        /// Email, the login name.
        #[arg(long)]
        email: String,
        /// A group (repeatable): catalog items show APIs to groups.
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// List users and their groups.
    List,
    /// Remove a user with their applications, keys and subscriptions.
    Remove {
        /// Email.
        #[arg(long)]
        email: String,
    },
    /// Reset a password: prints a new one-time password; the user's sessions end.
    ResetPassword {
        /// Email.
        #[arg(long)]
        email: String,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: compile watched manifests into snapshots and stream them to
    /// data planes over gRPC (mutual TLS); an embedded data plane serves them too.
    ControlPlane {
        #[command(flatten)]
        provider: ProviderArgs,
        /// Address of the snapshot gRPC service.
        #[arg(long, default_value = "0.0.0.0:9090")]
        grpc: String,
        /// `embedded` serves the entrypoints in this process too; `none` does not.
        #[arg(long, value_enum, default_value = "embedded")]
        data_plane: EmbeddedDataPlane,
        /// Directory that `file://` OpenAPI spec URLs may point into (default: none, so
        /// `file://` specs are refused).
        #[arg(long)]
        spec_dir: Option<PathBuf>,
        /// Serve the developer portal on this address, e.g. 0.0.0.0:9903 (mutual TLS: data
        /// planes only; an IngressRoute to the `apiportal` service routes a host to it).
        #[arg(long)]
        portal: Option<String>,
        /// The `host:port` data planes dial to reach the portal (a name or IP on the
        /// control plane's certificate; default: the --portal address).
        #[arg(long)]
        portal_advertise: Option<String>,
        /// The portal's store: a SQLite file (default: <state-dir>/portal.db), or a
        /// postgres:// URL that several control planes share.
        #[arg(long)]
        portal_store: Option<String>,
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Operate the developer portal's store: users, applications, keys, backups, audit log.
    /// Works while the control plane runs (SQLite WAL); its data planes hear of changes
    /// within seconds.
    Portal {
        /// The store (the control plane's --portal-store: a SQLite file, default
        /// <state-dir>/portal.db, or a postgres:// URL).
        #[arg(long, default_value = ".atrium/portal.db", global = true)]
        store: String,
        #[command(subcommand)]
        command: PortalCommand,
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
        #[command(flatten)]
        provider: ProviderArgs,
        /// Name of this agent's certificate in the TLS directory (default: the cluster name).
        #[arg(long)]
        tls_name: Option<String>,
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
        /// The parent's `web` port; websecure is +443, admin +1000, gRPC +1090, portal
        /// +1903, the data planes' admin +1100, +1101, …
        #[arg(long, default_value_t = 8000)]
        port_base: u16,
        /// Run N `atrium data-plane` processes over gRPC behind the parent's entrypoints (the
        /// same ports, shared with SO_REUSEPORT) instead of the control plane's embedded one.
        #[arg(long, default_value_t = 0)]
        data_planes: usize,
    },
    /// A demo backend, standing in for the seed's `company/crm-api` and `company/billing-api`
    /// images: every request is answered with a JSON description of it (`/health`,
    /// `/employees`, `/invoices`, …), `/openapi.json` with its OpenAPI document.
    DemoBackend {
        /// The service it plays (`crm`, `billing`).
        #[arg(long)]
        service: String,
        /// Where it listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
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
    /// Explain what API management says about one request: router, API, authentication,
    /// application, subscription, plan, and the answer (without starting anything; plan
    /// counters start full). Exit code 0 when the request would be let through.
    AccessCheck {
        /// The cluster's manifests (files or folders).
        #[arg(long, required = true)]
        manifests: Vec<PathBuf>,
        /// Helm-style values of the cluster.
        #[arg(long)]
        values: Option<PathBuf>,
        /// The API key the request carries (where the API's key source says).
        #[arg(long, conflicts_with = "jwt")]
        key: Option<String>,
        /// The JWT the request carries (Authorization: Bearer).
        #[arg(long)]
        jwt: Option<String>,
        /// Extra request header, `Name: value` (repeatable).
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// The method, e.g. GET.
        method: String,
        /// The absolute URL, e.g. https://api.example.com/crm/employees.
        url: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Servers say what they do at info; one-shot tools only speak up when something is wrong.
    let mut cluster_name = None;
    let (serving, role) = match &cli.command {
        Command::Gateway { .. } => (true, "atrium-gateway".to_string()),
        Command::ControlPlane { .. } => (true, "atrium-control-plane".to_string()),
        Command::DataPlane { node_id, .. } => (true, format!("atrium-data-plane-{node_id}")),
        Command::Agent { cluster, .. } => {
            cluster_name = Some(cluster.clone());
            (true, format!("atrium-agent-{cluster}"))
        }
        Command::Up { .. } => (true, "atrium".to_string()),
        Command::DemoBackend { service, .. } => (true, format!("atrium-demo-{service}")),
        _ => (false, "atrium".to_string()),
    };
    let json = cli.log_format == LogFormat::Json;
    let traces = atrium_data_plane::telemetry::export::TraceFlags {
        endpoint: cli.otlp_endpoint.clone(),
        protocol: cli.otlp_protocol.clone(),
        cluster: cluster_name,
    };
    let _telemetry =
        match atrium_data_plane::telemetry::export::init(if serving { "info" } else { "warn" }, &role, json, &traces) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("atrium: {e}");
                return ExitCode::from(2);
            }
        };
    // `atrium up` starts every role as a process of its own: they get the same global flags.
    let mut global_flags = Vec::new();
    if json {
        global_flags.extend(["--log-format".to_string(), "json".to_string()]);
    }
    for (flag, value) in [("--otlp-endpoint", &cli.otlp_endpoint), ("--otlp-protocol", &cli.otlp_protocol)] {
        if let Some(v) = value {
            global_flags.extend([flag.to_string(), v.clone()]);
        }
    }
    match run(cli.command, global_flags) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("atrium: {}", explain(&e));
            ExitCode::from(2)
        }
    }
}

/// An error with its causes, each said once: library errors already name their cause in
/// their message, flag context does not.
fn explain(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

/// `atrium portal …`: the store, operated directly.
fn portal(location: &str, command: PortalCommand) -> anyhow::Result<()> {
    use atrium_portal::{auth, store::Store};
    let open = || Store::connect(location).with_context(|| "opening the portal store".to_string());
    let path = std::path::Path::new(location);
    match command {
        PortalCommand::User { command: UserCommand::Add { email, groups } } => {
            let otp = auth::one_time_password();
            let u = open()?.add_user(&email, &groups, &auth::hash_password(&otp), true)?;
            println!(
                "added {} (groups: {})",
                u.email,
                if u.groups.is_empty() { "none".into() } else { u.groups.join(", ") }
            );
            println!("one-time password: {otp}");
            println!("(to be changed at the first sign-in)");
        }
        PortalCommand::User { command: UserCommand::List } => {
            for u in open()?.users()? {
                let flag = if u.must_change { "  (one-time password)" } else { "" };
                println!("{}\t{}{flag}", u.email, u.groups.join(","));
            }
        }
        PortalCommand::User { command: UserCommand::Remove { email } } => {
            open()?.remove_user(&email)?;
            println!("removed {email}");
        }
        PortalCommand::User { command: UserCommand::ResetPassword { email } } => {
            let s = open()?;
            let (u, _) = s.user_by_email(&email)?.with_context(|| format!("no user {email}"))?;
            let otp = auth::one_time_password();
            s.set_password(u.id, &auth::hash_password(&otp), true, None)?;
            println!("one-time password for {}: {otp}", u.email);
        }
        PortalCommand::Suspend { app_id } => {
            open()?.suspend_application(&app_id, true)?;
            println!("suspended {app_id}");
        }
        PortalCommand::Resume { app_id } => {
            open()?.suspend_application(&app_id, false)?;
            println!("resumed {app_id}");
        }
        PortalCommand::RevokeKey { id } => {
            open()?.revoke_key(None, id)?;
            println!("revoked key {id}");
        }
        PortalCommand::Backup { to } => {
            open()?.backup(&to)?;
            println!("backed up {} to {}", path.display(), to.display());
        }
        PortalCommand::Restore { from } => {
            anyhow::ensure!(from.exists(), "{}: no such file", from.display());
            anyhow::ensure!(!location.contains("://"), "a PostgreSQL store is restored with pg_restore");
            // Opening checks that it is a store this atrium can read (and migrates it).
            let backup = Store::open(&from).with_context(|| format!("reading the backup {}", from.display()))?;
            let tmp = path.with_extension("restoring");
            let _ = std::fs::remove_file(&tmp);
            backup.backup(&tmp)?;
            drop(backup);
            for suffix in ["-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
            println!("restored {} from {}", path.display(), from.display());
        }
        PortalCommand::Audit { last } => {
            for (at, actor, action, detail) in open()?.audit_log(last)? {
                println!("{at}\t{actor}\t{action}\t{detail}");
            }
        }
    }
    Ok(())
}

/// One call per subcommand; `global_flags` are the global flags given, which the processes
/// `atrium up` starts get too.
fn run(command: Command, global_flags: Vec<String>) -> anyhow::Result<ExitCode> {
    let rt = || tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime");
    match command {
        Command::ControlPlane {
            provider,
            grpc,
            data_plane,
            spec_dir,
            portal,
            portal_advertise,
            portal_store,
            serve,
        } => {
            let portal = match portal {
                Some(addr) => Some(atrium_control_plane::PortalOptions {
                    listen: parse_addr(&addr).context("--portal")?,
                    advertise: portal_advertise,
                    store: portal_store.unwrap_or_else(|| serve.tls.state_dir.join("portal.db").display().to_string()),
                }),
                None => None,
            };
            let cfg = atrium_control_plane::Config {
                portal,
                source: provider.source(
                    serve.listen.values.clone(),
                    Component::ControlPlane,
                    "atrium-control-plane",
                )?,
                grpc: parse_addr(&grpc).context("--grpc")?,
                embedded: data_plane == EmbeddedDataPlane::Embedded,
                spec_dir,
                serving: serve.serving()?,
            };
            let delay = serve.listen.shutdown_delay;
            rt()?.block_on(atrium_control_plane::run(cfg, ListenArgs::shutdown(delay)))?;
        }
        Command::DataPlane { control_plane, node_id, group, cache_dir, tls_name, usage_interval_ms, serve } => {
            let usage_interval = Duration::from_millis(usage_interval_ms);
            let serving = serve.serving()?;
            let delay = serve.listen.shutdown_delay;
            let cfg = atrium_data_plane::node::Config {
                serving,
                control_plane,
                node_id,
                group,
                cache_dir,
                tls_name,
                usage_interval,
            };
            rt()?.block_on(atrium_data_plane::node::run(cfg, ListenArgs::shutdown(delay)))?;
        }
        Command::Agent { cluster, provider, tls_name, serve } => {
            let lease = format!("atrium-agent-{cluster}");
            let source = provider.source(serve.listen.values.clone(), Component::Agent, &lease)?;
            let cfg = atrium_agent::Config { serving: serve.serving()?, source, cluster, tls_name };
            let delay = serve.listen.shutdown_delay;
            rt()?.block_on(atrium_agent::run(cfg, ListenArgs::shutdown(delay)))?;
        }
        Command::Gateway { manifests, listen, state_dir, tls_dir, watch_debounce_ms, limits } => {
            let default_cert = match (&tls_dir, &state_dir) {
                (Some(_), _) => atrium_agent::DefaultCert::TlsDir,
                (None, Some(_)) => atrium_agent::DefaultCert::StateDir,
                (None, None) => atrium_agent::DefaultCert::Generated,
            };
            let source = listen.source(manifests, watch_debounce_ms);
            let serving = listen.serving(&limits, state_dir.unwrap_or_default(), tls_dir)?;
            let cfg = atrium_agent::GatewayConfig { serving, source, default_cert };
            let delay = listen.shutdown_delay;
            rt()?.block_on(atrium_agent::run_gateway(cfg, ListenArgs::shutdown(delay)))?;
        }
        Command::DemoBackend { service, listen } => {
            let addr = parse_addr(&listen).context("--listen")?;
            rt()?.block_on(atrium_up::demo_backend(&service, addr, shutdown_signal()))?;
        }
        Command::Up { state_dir, example, parent_ip, port_base, data_planes } => {
            anyhow::ensure!(data_planes <= 8, "--data-planes: at most 8 on one machine");
            let layout = atrium_up::Layout { parent_ip, port_base };
            let cfg = atrium_up::Config { state_dir, example, layout, data_planes, global_flags };
            rt()?.block_on(atrium_up::run(cfg, shutdown_signal()))?;
        }
        Command::Certs { command } => certs(command)?,
        Command::Portal { store, command } => portal(&store, command)?,
        Command::Lint { paths, values, format } => return lint(&paths, values.as_deref(), format),
        Command::RouteCheck { manifests, tests, values, format } => {
            return route_check(&manifests, &tests, values.as_deref(), format);
        }
        Command::AccessCheck { manifests, values, key, jwt, headers, format, method, url } => {
            let credential = match (key, jwt) {
                (Some(k), _) => Credential::Key(k),
                (None, Some(t)) => Credential::Jwt(t),
                (None, None) => Credential::None,
            };
            return access_check(&manifests, values.as_deref(), &headers, &credential, format, &method, &url);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `atrium certs init|issue`.
fn certs(command: CertsCommand) -> anyhow::Result<()> {
    use atrium_data_plane::pki::{self, Role};
    match command {
        CertsCommand::Init { dir } => {
            let ca = dir.join("ca.pem");
            if pki::init_ca(&dir)? {
                println!("created CA {}", ca.display());
            } else {
                println!("CA {} already exists; kept", ca.display());
            }
        }
        CertsCommand::Issue { dir, name, role, sans } => {
            let role = match role {
                Some(r) => {
                    Role::parse(&r).with_context(|| format!("--role {r:?}: one of control-plane, data-plane, agent"))?
                }
                None => Role::for_name(&name),
            };
            let f = pki::issue(&dir, &name, role, &sans)?;
            println!("issued {} and {} (role {role})", f.cert.display(), f.key.display());
        }
    }
    Ok(())
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

/// `atrium access-check`.
fn access_check(
    manifests: &[PathBuf],
    values: Option<&std::path::Path>,
    headers: &[String],
    credential: &Credential,
    format: Format,
    method: &str,
    url: &str,
) -> anyhow::Result<ExitCode> {
    if let Some(m) = manifests.iter().find(|m| !m.exists()) {
        anyhow::bail!("{}: no such file or directory", m.display());
    }
    let headers = headers
        .iter()
        .map(|h| {
            let (k, v) = h.split_once(':').with_context(|| format!("--header {h:?}: expected `Name: value`"))?;
            Ok((k.trim().to_string(), v.trim().to_string()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (values, mut diags) = atrium_model::values::Values::load_optional(values);
    let loaded = atrium_model::loader::load_paths(manifests);
    let compiled = atrium_model::compile::compile(&loaded, &values, None);
    diags.extend(loaded.diagnostics.iter().cloned());
    diags.extend(compiled.diagnostics.iter().cloned());
    for d in diags.iter().filter(|d| d.is_error()) {
        eprintln!("{d}");
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let e = rt.block_on(access_check::explain(compiled.body, method, url, &headers, credential))?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&e)?),
        Format::Text => {
            let show = |label: &str, v: &Option<String>| println!("{label:<15}{}", v.as_deref().unwrap_or("-"));
            show("router", &e.router);
            show("api", &e.api);
            show("authentication", &e.authentication);
            show("application", &e.application);
            show("subscription", &e.subscription);
            match &e.plan {
                Some(p) => {
                    println!("{:<15}{}", "plan", p.id);
                    println!("{:<15}{}", "  rate limit", p.rate_limit.as_deref().unwrap_or("none"));
                    println!("{:<15}{}", "  quota", p.quota.as_deref().unwrap_or("none"));
                }
                None => println!("{:<15}-", "plan"),
            }
            println!("{:<15}{} {} ({})", "result", e.status, e.result, e.detail);
        }
    }
    Ok(if e.status == 200 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn route_check(
    manifests: &[PathBuf],
    tests: &std::path::Path,
    values: Option<&std::path::Path>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let report = atrium_model::route_check::run(manifests, tests, values)?;
    for d in &report.errors {
        eprintln!("{d}");
    }
    let passed = report.outcomes.iter().filter(|o| o.passed).count();
    let failed = report.outcomes.len() - passed;
    match format {
        Format::Text => {
            for o in &report.outcomes {
                match &o.error {
                    None => println!("PASS {}", o.name),
                    Some(e) => println!("FAIL {}: {e}", o.name),
                }
            }
            println!("{passed} passed, {failed} failed");
        }
        Format::Json => {
            let out = serde_json::json!({ "results": report.outcomes, "passed": passed, "failed": failed });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
    }
    Ok(if failed > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
