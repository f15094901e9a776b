//! The admin listener, off the public entrypoints: `/healthz`, `/readyz`, `/metrics` and
//! `/api/rawdata`.

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

/// The compiled configuration in force, as JSON.
pub fn rawdata(gw: &Gateway) -> serde_json::Value {
    let Some(rt) = gw.runtime() else { return serde_json::json!({ "version": null }) };
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
            let cfg: serde_json::Value = serde_json::from_str(&m.config_json).unwrap_or(serde_json::Value::Null);
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
                        crate::service::ServiceRt::LoadBalancer(l) => Some(l.clone()),
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
    /// Metric families to put before the data plane's own (no `# EOF`).
    fn metrics(&self) -> String;
}

fn respond(gw: &Gateway, extra: Option<&dyn AdminExtra>, req: &Request<Incoming>) -> Response<Body> {
    if let Some(v) = extra.and_then(|e| e.json(req.uri().path())) {
        let mut r = Response::new(body::full(serde_json::to_vec_pretty(&v).unwrap_or_default()));
        r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        return r;
    }
    match req.uri().path() {
        "/healthz" => body::text(StatusCode::OK, "ok"),
        "/readyz" => match gw.runtime() {
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
        "/api/rawdata" => {
            let mut r = Response::new(body::full(serde_json::to_vec_pretty(&rawdata(gw)).unwrap_or_default()));
            r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            r
        }
        _ => body::text(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

/// Serves the admin API until `shutdown` turns true.
pub async fn serve(listener: TcpListener, gw: Arc<Gateway>, shutdown: watch::Receiver<bool>) {
    serve_with(listener, gw, None, shutdown).await;
}

/// Serves the admin API with extra endpoints until `shutdown` turns true.
pub async fn serve_with(
    listener: TcpListener,
    gw: Arc<Gateway>,
    extra: Option<Arc<dyn AdminExtra>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a { Ok(x) => x, Err(_) => continue },
            _ = shutdown.changed() => return,
        };
        let gw = gw.clone();
        let extra = extra.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let gw = gw.clone();
                let extra = extra.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&gw, extra.as_deref(), &req)) }
            });
            let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
