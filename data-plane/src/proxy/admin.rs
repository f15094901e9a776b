//! The admin listener, off the public entrypoints: `/healthz`, `/readyz`, `/metrics` and
//! `/api/rawdata`.
//!
//! It binds loopback unless told otherwise. With a token ([`AdminConfig::token`]),
//! everything but the probes and the metrics asks for `Authorization: Bearer <token>`.
//! What it shows never carries a secret: TLS keys are not in it at all, and basicAuth
//! users are shown as a count.

use std::sync::Arc;

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::Gateway;
use crate::body::{self, Body};

/// Whether this process is shutting down: `/readyz` answers 503 from then on.
static DRAINING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Marks this process as shutting down: `/readyz` answers 503 (load balancers and
/// Kubernetes take it out of their endpoints) while it still serves.
pub fn start_draining() {
    DRAINING.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Where the admin API listens, and the token it asks for.
#[derive(Clone)]
pub struct AdminConfig {
    /// The listener's address.
    pub addr: std::net::SocketAddr,
    /// The bearer token every endpoint but `/healthz`, `/readyz` and `/metrics` asks for.
    pub token: Option<Arc<str>>,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish()
    }
}

/// Why an admin token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// It cannot be read.
    #[error("{file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// It holds too little to be a secret.
    #[error("{file}: the token must be at least 16 characters (one line)")]
    TooShort {
        /// The file.
        file: String,
    },
}

/// Reads a token file: its first line, trimmed.
pub fn read_token(path: &std::path::Path) -> Result<Arc<str>, TokenError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read { file: file.clone(), source })?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.len() < 16 {
        return Err(TokenError::TooShort { file });
    }
    Ok(Arc::from(token))
}

/// Whether `req` carries `token` as its bearer token (compared in constant time).
fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
    else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A middleware's configuration as the admin API shows it: the values of secret fields
/// (basicAuth users and their hashes) replaced by how many there are.
fn redacted(mut cfg: serde_json::Value) -> serde_json::Value {
    if let serde_json::Value::Object(o) = &mut cfg {
        for key in ["users", "resolvedUsers"] {
            if let Some(v) = o.get_mut(key) {
                let n = v.as_array().map_or(1, Vec::len);
                *v = serde_json::Value::String(format!("<redacted: {n} entries>"));
            }
        }
    }
    cfg
}

/// `/api/apis`: each API with how its callers authenticate, its routes, the
/// subscriptions that cover it (applications, plan) and the catalog items that show it.
/// Key hashes, secrets and Redis settings are never shown.
pub fn apis(gw: &Gateway) -> serde_json::Value {
    use atrium_routing::apim::Plan;
    let Some(rt) = gw.in_force() else { return serde_json::json!([]) };
    let b = &rt.body;
    let plan = |p: Option<&atrium_proto::v1::Plan>| {
        p.map(|p| serde_json::to_value(super::access_check::PlanView::of(&Plan::from_snapshot(p))).unwrap_or_default())
    };
    let list: Vec<serde_json::Value> = b
        .apis
        .iter()
        .map(|a| {
            let routes: Vec<&str> =
                b.routers.iter().filter(|r| r.api == a.id).map(|r| r.id.as_str()).collect();
            let subscriptions: Vec<serde_json::Value> = b
                .subscriptions
                .iter()
                .filter(|s| s.apis.contains(&a.id))
                .map(|s| {
                    serde_json::json!({"id": s.id, "weight": s.weight, "applications": s.app_ids, "plan": plan(s.plan.as_ref()),
                        "operationFilter": s.operation_filter.as_ref().map(|f| &f.include)})
                })
                .collect();
            let catalog_items: Vec<serde_json::Value> = b
                .catalog_items
                .iter()
                .filter(|c| c.apis.contains(&a.id))
                .map(|c| serde_json::json!({"id": c.id, "groups": c.groups, "everyone": c.everyone, "plan": plan(c.plan.as_ref())}))
                .collect();
            serde_json::json!({
                "id": a.id,
                "authentication": super::access_check::describe_auth(rt.access.auth(&a.id)),
                "cors": !a.cors_json.is_empty(),
                "routes": routes,
                "spec": (!a.spec_url.is_empty()).then(|| serde_json::json!({
                    "url": a.spec_url,
                    "status": a.spec_status,
                    "operations": a.operations.len(),
                    "validateRequestMethodAndPath": a.validate_method_and_path,
                })),
                "operationSets": a.operation_sets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
                "subscriptions": subscriptions,
                "catalogItems": catalog_items,
            })
        })
        .collect();
    serde_json::Value::Array(list)
}

/// The compiled configuration in force, as JSON.
pub fn rawdata(gw: &Gateway) -> serde_json::Value {
    let Some(rt) = gw.in_force() else { return serde_json::json!({ "version": null }) };
    let b = &rt.body;
    let routers: serde_json::Map<String, serde_json::Value> = b
        .routers
        .iter()
        .map(|r| {
            (r.id.clone(), serde_json::json!({
                "rule": r.rule, "priority": r.priority, "entryPoints": r.entry_points, "middlewares": r.middlewares,
                "service": r.service, "tls": r.tls.as_ref().map(|t| serde_json::json!({"secret": t.secret})), "uplinks": r.uplinks, "api": r.api,
            }))
        })
        .collect();
    let middlewares: serde_json::Map<String, serde_json::Value> = b
        .middlewares
        .iter()
        .map(|m| {
            let cfg = redacted(serde_json::from_str(&m.config_json).unwrap_or(serde_json::Value::Null));
            (m.id.clone(), serde_json::json!({ m.kind.clone(): cfg }))
        })
        .collect();
    let services: serde_json::Map<String, serde_json::Value> = b
        .services
        .iter()
        .map(|s| {
            use atrium_proto::v1::service::Kind;
            let v = match &s.kind {
                Some(Kind::LoadBalancer(lb)) => {
                    let state = rt.services.get(&s.id).and_then(|svc| match &**svc {
                        crate::service::Service::LoadBalancer(l) => Some(l.clone()),
                        _ => None,
                    });
                    let servers: Vec<serde_json::Value> = lb
                        .servers
                        .iter()
                        .enumerate()
                        .map(|(i, srv)| {
                            let up = state.as_ref().and_then(|l| l.servers.get(i)).map(|x| x.healthy.load(std::sync::atomic::Ordering::Relaxed));
                            serde_json::json!({"url": srv.url, "weight": srv.weight, "healthy": up})
                        })
                        .collect();
                    serde_json::json!({"loadBalancer": {"servers": servers, "passHostHeader": lb.pass_host_header}})
                }
                Some(Kind::Weighted(w)) => serde_json::json!({"weighted": w.services.iter().map(|c| serde_json::json!({"service": c.service, "weight": c.weight})).collect::<Vec<_>>()}),
                Some(Kind::Mirroring(m)) => serde_json::json!({"mirroring": {"service": m.service, "mirrors": m.mirrors.iter().map(|x| serde_json::json!({"service": x.service, "percent": x.percent})).collect::<Vec<_>>()}}),
                Some(Kind::Failover(f)) => serde_json::json!({"failover": {"service": f.service, "fallback": f.fallback}}),
                Some(Kind::Multicluster(m)) => serde_json::json!({"multicluster": {"uplink": m.uplink, "child": m.child}}),
                Some(Kind::Portal(p)) => serde_json::json!({"portal": p.name}),
                None => serde_json::Value::Null,
            };
            (s.id.clone(), v)
        })
        .collect();
    serde_json::json!({ "version": rt.version, "routers": routers, "middlewares": middlewares, "services": services })
}

/// More admin endpoints, from the process embedding this data plane (the control plane's
/// `/api/dataplanes` and its metrics).
pub trait AdminExtra: Send + Sync {
    /// A JSON document for `path`, if this extension serves it.
    fn json(&self, path: &str) -> Option<serde_json::Value>;
    /// An HTML page for `path`, if this extension serves it.
    fn html(&self, _path: &str) -> Option<String> {
        None
    }
    /// Metric families to put before the data plane's own (no `# EOF`).
    fn metrics(&self) -> String;
    /// The endpoints it adds, with what each serves (for the admin root).
    fn endpoints(&self) -> Vec<(&'static str, &'static str)> {
        Vec::new()
    }
}

/// Text escaped for HTML.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

async fn respond(
    gw: &Gateway,
    extra: Option<&dyn AdminExtra>,
    token: Option<&str>,
    req: Request<Incoming>,
) -> Response<Body> {
    let open = matches!(req.uri().path(), "/healthz" | "/readyz" | "/metrics");
    if let Some(t) = token.filter(|_| !open) {
        if !authorized(&req, t) {
            let mut r = body::text(StatusCode::UNAUTHORIZED, "401 Unauthorized: a bearer token is required");
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer realm=\"atrium-admin\""));
            return r;
        }
    }
    if let Some(v) = extra.and_then(|e| e.json(req.uri().path())) {
        let mut r = Response::new(body::full(serde_json::to_vec_pretty(&v).unwrap_or_default()));
        r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        return r;
    }
    if let Some(page) = extra.and_then(|e| e.html(req.uri().path())) {
        let mut r = Response::new(body::full(page));
        r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/html; charset=utf-8"));
        r.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            http::HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
        );
        return r;
    }
    if req.uri().path() == "/api/log-level" {
        return log_level(req).await;
    }
    match req.uri().path() {
        "/" => body::text(StatusCode::OK, &endpoints(extra)),
        "/healthz" => body::text(StatusCode::OK, "ok"),
        "/readyz" if DRAINING.load(std::sync::atomic::Ordering::Relaxed) => {
            body::text(StatusCode::SERVICE_UNAVAILABLE, "not ready: shutting down")
        }
        "/readyz" => match gw.in_force() {
            Some(rt) => body::text(StatusCode::OK, &format!("ready (route table version {})", rt.version)),
            None => body::text(StatusCode::SERVICE_UNAVAILABLE, "not ready: no route table loaded"),
        },
        "/metrics" => {
            let mut text = extra.map(|e| e.metrics()).unwrap_or_default();
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&gw.metrics.encode());
            let mut r = Response::new(body::full(text));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            r
        }
        "/api/rawdata" | "/api/apis" => {
            let doc = if req.uri().path() == "/api/apis" { apis(gw) } else { rawdata(gw) };
            let mut r = Response::new(body::full(serde_json::to_vec_pretty(&doc).unwrap_or_default()));
            r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            r
        }
        _ => body::text(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

/// Binds the admin listener.
pub async fn bind(cfg: &AdminConfig) -> std::io::Result<TcpListener> {
    TcpListener::bind(cfg.addr).await
}

/// Serves the admin API (with the extra endpoints of the process embedding this data
/// plane) until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    gw: Arc<Gateway>,
    extra: Option<Arc<dyn AdminExtra>>,
    token: Option<Arc<str>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a { Ok(x) => x, Err(_) => continue },
            _ = shutdown.changed() => return,
        };
        let (gw, extra, token) = (gw.clone(), extra.clone(), token.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let (gw, extra, token) = (gw.clone(), extra.clone(), token.clone());
                async move { Ok::<_, std::convert::Infallible>(respond(&gw, extra.as_deref(), token.as_deref(), req).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

/// The admin root: what this listener serves.
fn endpoints(extra: Option<&dyn AdminExtra>) -> String {
    let mut out = String::from(
        "atrium admin API\n\n\
         /healthz              liveness (open)\n\
         /readyz               readiness: a route table is in force and not shutting down (open)\n\
         /metrics              Prometheus metrics (open)\n\
         /api/rawdata          the routers, services and middlewares in force\n\
         /api/apis             each API: authentication, routes, spec, subscriptions, catalog items\n\
         /api/log-level        GET the log filter, PUT a new one (RUST_LOG syntax)\n",
    );
    if let Some(e) = extra {
        for (path, what) in e.endpoints() {
            out.push_str(&format!("{path:<21} {what}\n"));
        }
    }
    out
}

/// `GET /api/log-level`: the filter in force; `PUT` (body: a `RUST_LOG` filter) replaces it.
async fn log_level(req: Request<Incoming>) -> Response<Body> {
    use http_body_util::BodyExt;
    match *req.method() {
        http::Method::GET => match crate::telemetry::export::log_level() {
            Some(l) => body::text(StatusCode::OK, &l),
            None => body::text(StatusCode::SERVICE_UNAVAILABLE, "logs are not set up in this process"),
        },
        http::Method::PUT | http::Method::POST => {
            let limited = http_body_util::Limited::new(req.into_body(), 4096);
            let Ok(bytes) = limited.collect().await.map(|b| b.to_bytes()) else {
                return body::text(StatusCode::PAYLOAD_TOO_LARGE, "a log filter is at most 4 KiB");
            };
            let spec = String::from_utf8_lossy(&bytes);
            match crate::telemetry::export::set_log_level(&spec) {
                Ok(now) => body::text(StatusCode::OK, &now),
                Err(e) => body::text(StatusCode::BAD_REQUEST, &e),
            }
        }
        _ => body::text(StatusCode::METHOD_NOT_ALLOWED, "GET or PUT"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_shown_as_counts() {
        let cfg = serde_json::json!({"users": ["a:$apr1$x", "b:$apr1$y"], "realm": "r", "resolvedUsers": ["c:$2y$z"]});
        let shown = redacted(cfg).to_string();
        assert!(!shown.contains("apr1") && !shown.contains("$2y"), "{shown}");
        assert!(shown.contains("<redacted: 2 entries>") && shown.contains("\"realm\":\"r\""), "{shown}");
    }

    #[test]
    fn token_files_are_read_and_checked() {
        let dir = tempfile_dir();
        let f = dir.join("token");
        std::fs::write(&f, "short\n").unwrap();
        assert!(matches!(read_token(&f), Err(TokenError::TooShort { .. })));
        std::fs::write(&f, "  0123456789abcdef0123  \nignored\n").unwrap();
        assert_eq!(&*read_token(&f).unwrap(), "0123456789abcdef0123");
        assert!(matches!(read_token(&dir.join("missing")), Err(TokenError::Read { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("atrium-admin-{}-{:?}", std::process::id(), std::thread::current().id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
