//! Active health checks of load-balancer servers.
//!
//! One task per load balancer, holding only a weak reference: when a route table is
//! replaced and its last request finishes, the balancer is dropped and its checker ends.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use atrium_proto::v1 as pb;
use http::{HeaderName, HeaderValue, Request};

use super::{LoadBalancer, Server};
use crate::body;
use crate::upstream::Upstreams;

/// Whether a status passes a check: the configured one, or any 2xx/3xx.
pub fn status_ok(hc: &pb::HealthCheck, status: u16) -> bool {
    if hc.status != 0 { u32::from(status) == hc.status } else { (200..400).contains(&status) }
}

/// The URL a check requests for `server`.
pub fn check_url(hc: &pb::HealthCheck, server: &Server) -> Option<http::Uri> {
    let auth = server.url.authority()?;
    let host = auth.host();
    let port = if hc.port != 0 { hc.port as u16 } else { auth.port_u16().unwrap_or(80) };
    let scheme = match (hc.scheme.as_str(), server.url.scheme_str()) {
        ("https", _) | ("", Some("https")) => "https",
        _ => "http",
    };
    let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() };
    let path = if hc.path.starts_with('/') { hc.path.clone() } else { format!("/{}", hc.path) };
    format!("{scheme}://{host}:{port}{path}").parse().ok()
}

async fn check_one(up: &Upstreams, hc: &pb::HealthCheck, server: &Server) -> Result<(), String> {
    let url = check_url(hc, server).ok_or("invalid health check URL")?;
    let mut req =
        Request::builder().method(hc.method.as_str()).uri(url).body(body::empty()).map_err(|e| e.to_string())?;
    if !hc.hostname.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&hc.hostname) {
            req.headers_mut().insert(http::header::HOST, v);
        }
    }
    for h in &hc.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(h.name.as_bytes()), HeaderValue::from_str(&h.value)) {
            req.headers_mut().insert(n, v);
        }
    }
    let timeout = Duration::from_millis(hc.timeout_ms.max(1));
    let h2c = server.url.scheme_str() == Some("h2c");
    let resp = tokio::time::timeout(timeout, up.send(req, h2c))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    if status_ok(hc, status) { Ok(()) } else { Err(format!("status {status}")) }
}

/// Starts the checker of `lb` if it has a health check.
pub fn spawn(lb: &Arc<LoadBalancer>, up: Arc<Upstreams>) {
    let Some(hc) = lb.health_check.clone() else { return };
    let weak: Weak<LoadBalancer> = Arc::downgrade(lb);
    tokio::spawn(async move {
        loop {
            let Some(lb) = weak.upgrade() else { return };
            let mut any_down = false;
            for s in &lb.servers {
                let result = check_one(&up, &hc, s).await;
                let healthy = result.is_ok();
                any_down |= !healthy;
                let was = s.healthy.swap(healthy, Ordering::Relaxed);
                if was != healthy {
                    match &result {
                        Ok(()) => {
                            tracing::info!(service = %lb.id, server = %s.url, "health check passed: server back in rotation")
                        }
                        Err(e) => {
                            tracing::warn!(service = %lb.id, server = %s.url, error = %e, "health check failed: server out of rotation")
                        }
                    }
                }
            }
            let wait = if any_down { hc.unhealthy_interval_ms } else { hc.interval_ms };
            drop(lb);
            tokio::time::sleep(Duration::from_millis(wait.max(10))).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;

    fn server(url: &str) -> Server {
        Server { url: url.parse().unwrap(), weight: 1, healthy: AtomicBool::new(true), passive: Mutex::default() }
    }

    #[test]
    fn check_urls_and_statuses() {
        let hc = pb::HealthCheck { path: "/health".into(), port: 0, ..Default::default() };
        assert_eq!(check_url(&hc, &server("http://10.0.0.1:8080")).unwrap().to_string(), "http://10.0.0.1:8080/health");
        let hc = pb::HealthCheck { path: "ping".into(), port: 9000, scheme: "https".into(), ..Default::default() };
        assert_eq!(check_url(&hc, &server("http://10.0.0.1:8080")).unwrap().to_string(), "https://10.0.0.1:9000/ping");
        let any = pb::HealthCheck::default();
        assert!(status_ok(&any, 204) && status_ok(&any, 302) && !status_ok(&any, 500));
        let exact = pb::HealthCheck { status: 418, ..Default::default() };
        assert!(status_ok(&exact, 418) && !status_ok(&exact, 200));
    }
}
