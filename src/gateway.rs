//! `atrium gateway`: a Traefik-compatible gateway that runs from local manifests.
//!
//! It compiles the manifests into a snapshot, the snapshot into a route table, and serves
//! it. A watcher recompiles on every change (after a short quiet time); a change that does
//! not load or compile is logged with file and line and the previous table stays.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use atrium_data_plane::proxy::server::{EntryPoint, ServerLimits};
use atrium_data_plane::proxy::tls::{CertStore, certified_key};
use atrium_data_plane::proxy::{AccessLog, Gateway, Runtime, admin, server};
use atrium_data_plane::upstream::{UpstreamConfig, Upstreams};
use atrium_model::diagnostic::Diagnostic;
use atrium_model::loader::{Manifests, load_paths};
use atrium_model::resources::Resource;
use atrium_model::values::Values;
use atrium_routing::rules::Rule;
use base64::Engine;
use tokio::sync::watch;

/// Options of `atrium gateway`.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Helm-style values.
    pub values: Option<PathBuf>,
    /// Manifest files or folders.
    pub manifests: Vec<PathBuf>,
    /// `NAME=ADDR` overrides (`NAME=off` disables an entrypoint).
    pub entry_points: Vec<(String, String)>,
    /// IP every entrypoint binds to unless overridden.
    pub bind_ip: IpAddr,
    /// Admin listener.
    pub admin: Option<admin::AdminConfig>,
    /// Access log format.
    pub access_log: Option<AccessLog>,
    /// Quiet time before a change is applied.
    pub debounce: Duration,
    /// Listener limits.
    pub limits: ServerLimits,
    /// Upstream timeouts.
    pub upstream: UpstreamConfig,
    /// Where generated state (the default certificate) is kept.
    pub state_dir: Option<PathBuf>,
    /// A TLS directory whose `gateway.pem`/`gateway-key.pem` is the default certificate.
    pub tls_dir: Option<PathBuf>,
    /// Worker threads serving entrypoints (each with its own runtime, sockets and upstream
    /// connection pool).
    pub workers: usize,
}

fn errors_of(diags: &[Diagnostic]) -> Vec<String> {
    diags.iter().filter(|d| d.is_error()).map(|d| d.to_string()).collect()
}

/// Loads and compiles values and manifests into a snapshot body; `Err` lists every error
/// with file and line. Warnings are logged.
pub fn compile_body(
    values: Option<&std::path::Path>,
    manifests: &[PathBuf],
) -> Result<atrium_proto::v1::SnapshotBody, Vec<String>> {
    compile_config(values, manifests).map(|(_, body)| body)
}

/// [`compile_body`], with the values it read.
pub fn compile_config(
    values: Option<&std::path::Path>,
    manifests: &[PathBuf],
) -> Result<(Values, atrium_proto::v1::SnapshotBody), Vec<String>> {
    let (values, vdiags) = match values {
        Some(v) => Values::load(v),
        None => (Values::default(), Vec::new()),
    };
    let m = load_paths(manifests);
    let compiled = atrium_model::compile::compile(&m, &values, None);
    let mut errors = errors_of(&vdiags);
    errors.extend(errors_of(&m.diagnostics));
    errors.extend(errors_of(&compiled.diagnostics));
    for d in vdiags.iter().chain(&m.diagnostics).chain(&compiled.diagnostics).filter(|d| !d.is_error()) {
        tracing::warn!("{d}");
    }
    let mut body = compiled.body;
    body.tls_certificates = certificates(&m, &body).map_err(|e| vec![e])?;
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok((values, body))
}

/// Loads and compiles the configuration into a route table.
pub fn compile(opts: &GatewayOptions, version: u64) -> Result<Runtime, Vec<String>> {
    let body = compile_body(opts.values.as_deref(), &opts.manifests)?;
    Runtime::build(body, version).map_err(|e| vec![e.to_string()])
}

/// The certificates routers name by `tls.secretName`, each with the hosts of the rules of
/// the routers naming it, checked here so that a broken Secret is an error with its file.
fn certificates(
    m: &Manifests,
    body: &atrium_proto::v1::SnapshotBody,
) -> Result<Vec<atrium_proto::v1::TlsCertificate>, String> {
    let mut out: std::collections::BTreeMap<String, atrium_proto::v1::TlsCertificate> = Default::default();
    for r in &body.routers {
        let Some(secret) = r.tls.as_ref().map(|t| t.secret.as_str()).filter(|s| !s.is_empty()) else { continue };
        let Some(l) = m.resources.iter().find(|l| matches!(l.resource, Resource::Secret(_)) && l.id() == secret) else {
            continue;
        };
        let Resource::Secret(s) = &l.resource else { continue };
        let field = |k: &str| -> Result<Vec<u8>, String> {
            if let Some(v) = s.string_data.get(k) {
                return Ok(v.as_bytes().to_vec());
            }
            let b64 = s.data.get(k).ok_or_else(|| format!("Secret {secret} has no {k}"))?;
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| format!("{}: Secret {secret} data.{k}: invalid base64: {e}", l.file.display()))
        };
        let (cert, key) = (field("tls.crt")?, field("tls.key")?);
        certified_key(&cert, &key).map_err(|e| format!("{}: Secret {secret}: {e}", l.file.display()))?;
        let text = |b: Vec<u8>, k: &str| {
            String::from_utf8(b).map_err(|_| format!("{}: Secret {secret} {k} is not PEM text", l.file.display()))
        };
        let entry = match out.get_mut(secret) {
            Some(e) => e,
            None => out.entry(secret.to_string()).or_insert(atrium_proto::v1::TlsCertificate {
                secret: secret.to_string(),
                server_names: Vec::new(),
                cert_pem: text(cert, "tls.crt")?,
                key_pem: text(key, "tls.key")?,
            }),
        };
        entry.server_names.extend(Rule::parse(&r.rule).ok().and_then(|rule| rule.required_hosts()).unwrap_or_default());
    }
    Ok(out
        .into_values()
        .map(|mut c| {
            c.server_names.sort();
            c.server_names.dedup();
            c
        })
        .collect())
}

/// Watches `paths` and calls `on_change` (on a blocking thread) after each burst of
/// changes has been quiet for `debounce` (and at most 10 × `debounce` after it began). A
/// reload that panics is a refused configuration like any other: `refused` hears of it
/// (and counts it), and the previous configuration stays.
pub fn watch_paths(
    paths: Vec<PathBuf>,
    debounce: Duration,
    on_change: impl Fn() + Send + Sync + 'static,
    refused: impl Fn(&str) + Send + Sync + 'static,
) -> anyhow::Result<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if !matches!(ev.kind, notify::EventKind::Access(_)) {
                let _ = tx.send(());
            }
        }
    })?;
    for p in &paths {
        watcher.watch(p, RecursiveMode::Recursive).with_context(|| format!("watching {}", p.display()))?;
    }
    let on_change = Arc::new(on_change);
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            let deadline = tokio::time::Instant::now() + debounce * 10;
            loop {
                match tokio::time::timeout(debounce, rx.recv()).await {
                    Ok(Some(())) if tokio::time::Instant::now() < deadline => continue,
                    Ok(None) => return,
                    _ => break,
                }
            }
            let f = on_change.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || f()).await {
                refused(&format!("the configuration reload failed: {e}"));
            }
        }
    });
    Ok(watcher)
}

/// Watches the configuration and swaps in each good change.
fn watch_config(
    opts: GatewayOptions,
    gw: Arc<Gateway>,
    first_version: u64,
) -> anyhow::Result<notify::RecommendedWatcher> {
    let version = std::sync::atomic::AtomicU64::new(first_version);
    let paths: Vec<PathBuf> = opts.manifests.iter().chain(opts.values.iter()).cloned().collect();
    let debounce = opts.debounce;
    let g = gw.clone();
    watch_paths(
        paths,
        debounce,
        move || {
            let v = version.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            match compile(&opts, v) {
                Ok(rt) => gw.swap(rt),
                Err(errors) => {
                    for e in &errors {
                        tracing::error!("{e}");
                    }
                    gw.swap_failed(format!("{} error(s) in the configuration", errors.len()));
                }
            }
        },
        move |why| g.swap_failed(why),
    )
}

/// The entrypoints to bind: the values' ports, moved or turned off by `--entrypoint`.
pub fn entry_point_addrs(
    overrides: &[(String, String)],
    bind_ip: IpAddr,
    values: &Values,
) -> anyhow::Result<Vec<(String, SocketAddr, bool)>> {
    let mut out = Vec::new();
    for (name, ep) in values.entry_points() {
        if ep.uplink {
            tracing::info!(entrypoint = %name, "uplink entrypoint: served over QUIC by `atrium agent`, not by the gateway");
            continue;
        }
        let mut addr = SocketAddr::new(bind_ip, ep.port);
        if let Some((_, v)) = overrides.iter().find(|(n, _)| n == name) {
            if v == "off" {
                continue;
            }
            addr = parse_addr(v).with_context(|| format!("--entrypoint {name}={v}"))?;
        }
        out.push((name.clone(), addr, ep.tls));
    }
    for (n, _) in overrides {
        if !values.entry_points().any(|(name, _)| name == n) {
            bail!(
                "--entrypoint {n}: no such entrypoint in the values (known: {:?})",
                values.entry_points().map(|(n, _)| n).collect::<Vec<_>>()
            );
        }
    }
    Ok(out)
}

/// Starts the admin listener, if one is configured (every serving role's one way).
pub async fn serve_admin(
    cfg: Option<&admin::AdminConfig>,
    gw: &Arc<Gateway>,
    extra: Option<Arc<dyn admin::AdminExtra>>,
    stop_rx: &watch::Receiver<bool>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(cfg) = cfg else { return Ok(None) };
    let l = admin::bind(cfg).await.with_context(|| format!("binding admin listener on {}", cfg.addr))?;
    tracing::info!(addr = %l.local_addr()?, token = cfg.token.is_some(), "admin listening");
    Ok(Some(tokio::spawn(admin::serve(l, gw.clone(), extra, cfg.token.clone(), stop_rx.clone()))))
}

/// The admin listener's address: as [`parse_addr`], except that a bare `:PORT` binds
/// loopback (the admin API is for this host unless an address says otherwise).
pub fn parse_admin_addr(s: &str) -> anyhow::Result<SocketAddr> {
    if let Some(port) = s.strip_prefix(':') {
        return Ok(SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port.parse()?));
    }
    Ok(s.parse()?)
}

/// `:8000`, `127.0.0.1:8000` or `[::1]:8000`.
pub fn parse_addr(s: &str) -> anyhow::Result<SocketAddr> {
    if let Some(port) = s.strip_prefix(':') {
        return Ok(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port.parse()?));
    }
    Ok(s.parse()?)
}

/// Binds the entrypoints and serves them on `workers` threads: each with its own
/// current-thread runtime, its own socket per entrypoint (`SO_REUSEPORT` spreads
/// connections) and its own upstream pool, so a request never hops between threads. The
/// route table is shared through the gateway's `ArcSwap`.
#[allow(clippy::too_many_arguments)]
pub fn serve_entrypoints(
    addrs: &[(String, SocketAddr, bool)],
    gw: &Arc<Gateway>,
    certs: &Arc<CertStore>,
    limits: &ServerLimits,
    upstream: &UpstreamConfig,
    workers: usize,
    stop_rx: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<std::thread::JoinHandle<anyhow::Result<()>>>> {
    let workers = workers.max(1);
    let mut sockets: Vec<Vec<(String, std::net::TcpListener, bool)>> = (0..workers).map(|_| Vec::new()).collect();
    for (name, addr, tls) in addrs.iter().cloned() {
        let first = EntryPoint::bind_shared(addr).with_context(|| format!("binding entrypoint {name} on {addr}"))?;
        let local = first.local_addr()?;
        tracing::info!(name = %name, addr = %local, tls, workers, "entrypoint listening");
        sockets[0].push((name.clone(), first, tls));
        for w in sockets.iter_mut().skip(1) {
            w.push((
                name.clone(),
                EntryPoint::bind_shared(local).with_context(|| format!("binding entrypoint {name} on {local}"))?,
                tls,
            ));
        }
    }
    let mut threads = Vec::new();
    for (i, eps) in sockets.into_iter().enumerate() {
        let (gw, stop_rx, limits, upstream) = (gw.clone(), stop_rx.clone(), limits.clone(), upstream.clone());
        let tls_cfg = certs.server_config();
        threads.push(std::thread::Builder::new().name(format!("atrium-worker-{i}")).spawn(
            move || -> anyhow::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                rt.block_on(async move {
                    let up = Arc::new(Upstreams::new(upstream));
                    let mut tasks = Vec::new();
                    for (name, sock, tls) in eps {
                        let ep = EntryPoint::from_std(&name, sock, tls.then(|| tls_cfg.clone()))?;
                        tasks.push(tokio::spawn(server::serve(
                            ep,
                            gw.clone(),
                            up.clone(),
                            limits.clone(),
                            stop_rx.clone(),
                        )));
                    }
                    for t in tasks {
                        let _ = t.await;
                    }
                    anyhow::Ok(())
                })
            },
        )?);
    }
    Ok(threads)
}

/// Waits for SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Runs the gateway until SIGINT/SIGTERM.
pub async fn run(opts: GatewayOptions) -> anyhow::Result<()> {
    for p in &opts.manifests {
        anyhow::ensure!(p.exists(), "{}: no such file or directory", p.display());
    }
    let values = match &opts.values {
        Some(v) => {
            let (v, d) = Values::load(v);
            let errs = errors_of(&d);
            if !errs.is_empty() {
                bail!("invalid values:\n{}", errs.join("\n"));
            }
            v
        }
        None => Values::default(),
    };
    let first = tokio::task::spawn_blocking({
        let o = opts.clone();
        move || compile(&o, 1)
    })
    .await?
    .map_err(|errs| anyhow::anyhow!("the configuration does not compile:\n{}", errs.join("\n")))?;
    let certs = match (&opts.tls_dir, &opts.state_dir) {
        (Some(d), _) => {
            let f = atrium_data_plane::pki::NodeFiles::new(d, "gateway");
            CertStore::from_files(&f.cert, &f.key).map_err(|e| {
                anyhow::anyhow!(
                    "--tls-dir: {e} (create it with `atrium certs issue --dir {} --name gateway --san <host>`)",
                    d.display()
                )
            })?
        }
        (None, Some(d)) => CertStore::persistent(d).map_err(anyhow::Error::msg)?,
        (None, None) => CertStore::generated().map_err(anyhow::Error::msg)?,
    };
    let gw = Gateway::new(Upstreams::new(opts.upstream.clone()), opts.access_log, certs.clone());
    gw.swap(first);

    let (stop_tx, stop_rx) = watch::channel(false);
    let threads = serve_entrypoints(
        &entry_point_addrs(&opts.entry_points, opts.bind_ip, &values)?,
        &gw,
        &certs,
        &opts.limits,
        &opts.upstream,
        opts.workers,
        &stop_rx,
    )?;
    let tasks: Vec<_> = serve_admin(opts.admin.as_ref(), &gw, None, &stop_rx).await?.into_iter().collect();
    let _watcher = watch_config(opts.clone(), gw.clone(), 1)?;
    shutdown_signal().await;
    tracing::info!("shutting down: draining requests in flight");
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    for t in threads {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    Ok(())
}

/// Parses `NAME=ADDR`.
pub fn parse_entry_point_flag(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(n, a)| (n.to_string(), a.to_string()))
        .ok_or_else(|| format!("expected NAME=ADDR, got {s:?}"))
}
