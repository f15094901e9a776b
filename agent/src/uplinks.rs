//! The uplinks this child exposes: what parents are told on every control stream, and
//! the health checks behind it (each run through the uplink's own routing, as the parent
//! would see it: `/crm/health` passes PathPrefix and stripPrefix and reaches the backend as
//! `/health`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use atrium_data_plane::body;
use atrium_data_plane::proxy::{ConnInfo, Gateway};
use atrium_data_plane::service::health::status_ok;
use atrium_data_plane::upstream::Upstreams;
use atrium_proto::v1 as pb;
use tokio::sync::watch;

use crate::metrics::CheckResult;

/// The agent's current answer to its parents.
pub type State = watch::Sender<pb::Register>;

/// The uplinks this child exposes, following its configuration: what parents are told
/// (the [`State`] every control stream pushes), and the health checks behind it.
///
/// [`Uplinks::set`] takes each new configuration: an uplink added, changed (weight,
/// entrypoints, health check) or removed reaches every connected parent at once. An
/// uplink whose health check did not change keeps its verdict across a reload; a new or
/// changed one with a health check starts unhealthy until its first check passes.
pub struct Uplinks {
    /// What health checks run through and report to (the state parents are told, and
    /// whether the uplinks are withdrawn, are in there).
    ctx: Checks,
    /// The configuration in force.
    current: std::sync::Mutex<Vec<pb::Uplink>>,
    /// Dropping it stops the current health checks.
    checks: std::sync::Mutex<Option<watch::Sender<()>>>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Uplinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uplinks").field("state", &*self.ctx.state.borrow()).finish()
    }
}

impl Uplinks {
    /// Cluster `cluster`'s uplinks, none yet, checked through `gw` on the current runtime;
    /// checks are counted in `metrics`.
    pub fn new(
        cluster: &str,
        gw: Arc<Gateway>,
        upstreams: Arc<Upstreams>,
        metrics: Arc<crate::metrics::AgentMetrics>,
    ) -> Arc<Uplinks> {
        let state = Arc::new(watch::Sender::new(pb::Register { cluster: cluster.to_string(), uplinks: Vec::new() }));
        Arc::new(Uplinks {
            ctx: Checks { gw, up: upstreams, state, withdrawn: Arc::default(), metrics },
            current: std::sync::Mutex::default(),
            checks: std::sync::Mutex::default(),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// The uplinks of the configuration in force.
    pub fn configured(&self) -> Vec<pb::Uplink> {
        self.current.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// What parents are told.
    pub fn state(&self) -> Arc<State> {
        self.ctx.state.clone()
    }

    /// Puts a configuration's uplinks in force (see the type's documentation). Once the
    /// uplinks are withdrawn (shutting down), a new configuration changes nothing.
    pub fn set(&self, mut uplinks: Vec<pb::Uplink>) {
        uplinks.sort_by(|a, b| a.name.cmp(&b.name));
        let Ok(mut current) = self.current.lock() else { return };
        if self.ctx.withdrawn.load(std::sync::atomic::Ordering::Acquire) {
            tracing::info!("configuration changed while shutting down: ignored");
            return;
        }
        if *current == uplinks {
            return;
        }
        let before = std::mem::replace(&mut *current, uplinks.clone());
        self.ctx.state.send_modify(|reg| {
            let healthy_before = |u: &pb::Uplink| {
                let same_check = before.iter().any(|b| b.name == u.name && b.health_check == u.health_check);
                same_check.then(|| reg.uplinks.iter().find(|s| s.name == u.name).map(|s| s.healthy)).flatten()
            };
            let next = uplinks
                .iter()
                .map(|u| pb::UplinkState {
                    name: u.name.clone(),
                    weight: u.weight,
                    healthy: healthy_before(u).unwrap_or(u.health_check.is_none()),
                    entry_points: u.entry_points.clone(),
                })
                .collect();
            reg.uplinks = next;
        });
        for u in &uplinks {
            match before.iter().find(|b| b.name == u.name) {
                None => tracing::info!(uplink = %u.name, weight = u.weight, "uplink added"),
                Some(b) if b != u => tracing::info!(uplink = %u.name, weight = u.weight, "uplink changed"),
                _ => {}
            }
        }
        for b in before.iter().filter(|b| !uplinks.iter().any(|u| u.name == b.name)) {
            tracing::info!(uplink = %b.name, "uplink removed");
        }
        // A new generation of health checks; dropping the old sender stops the old ones.
        let (tx, rx) = watch::channel(());
        if let Ok(mut checks) = self.checks.lock() {
            *checks = Some(tx);
        }
        let _enter = self.runtime.enter();
        spawn_health_checks(self.ctx.clone(), uplinks, rx);
    }

    /// Stops the health checks (shutdown).
    pub fn stop(&self) {
        if let Ok(mut checks) = self.checks.lock() {
            *checks = None;
        }
    }

    /// The first step of a graceful shutdown: stops the health checks and tells every
    /// parent that no uplink is healthy any more, so parents route new requests to other
    /// children while this one finishes what it holds.
    pub fn withdraw(&self) {
        // Under `current`'s lock, so no `set` is half way through; the flag is read where
        // health is published, so a check finishing now cannot undo this.
        let _current = self.current.lock();
        self.ctx.withdrawn.store(true, std::sync::atomic::Ordering::Release);
        self.stop();
        self.ctx.state.send_modify(|reg| {
            for u in &mut reg.uplinks {
                u.healthy = false;
            }
        });
        tracing::info!("uplinks withdrawn: parents route new requests to other children");
    }
}

/// What health checks run through and report to.
#[derive(Clone)]
struct Checks {
    gw: Arc<Gateway>,
    up: Arc<Upstreams>,
    state: Arc<State>,
    withdrawn: Arc<std::sync::atomic::AtomicBool>,
    metrics: Arc<crate::metrics::AgentMetrics>,
}

/// Runs every uplink's health check through the uplink's own routing and publishes
/// changes in `state`, until `stop`'s sender is dropped or the uplinks are withdrawn.
/// Uplinks without a health check are healthy.
fn spawn_health_checks(checks: Checks, uplinks: Vec<pb::Uplink>, stop: watch::Receiver<()>) {
    for u in uplinks {
        let Some(hc) = u.health_check.clone() else { continue };
        let Checks { gw, up, state, withdrawn, metrics } = checks.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let mut req = http::Request::builder().method(hc.method.as_str()).uri(hc.path.as_str());
                req = req.header(
                    http::header::HOST,
                    if hc.hostname.is_empty() { "localhost" } else { hc.hostname.as_str() },
                );
                for h in &hc.headers {
                    req = req.header(h.name.as_str(), h.value.as_str());
                }
                let started = std::time::Instant::now();
                let result = match req.body(body::empty()) {
                    Ok(req) => {
                        let entry_point = format!("uplink:{}", u.name);
                        let client = "127.0.0.1:0".parse().expect("static address");
                        let mut conn = uplink_conn(&entry_point, &u.name, client, up.clone());
                        conn.internal = true;
                        let timeout = Duration::from_millis(hc.timeout_ms.max(1));
                        tokio::select! {
                            r = tokio::time::timeout(timeout, gw.handle(req, &conn)) => match r {
                                Ok(resp) if status_ok(&hc, resp.status().as_u16()) => CheckResult::Pass,
                                Ok(_) => CheckResult::Fail,
                                Err(_) => CheckResult::Timeout,
                            },
                            _ = stop.changed() => return,
                        }
                    }
                    Err(_) => CheckResult::Fail,
                };
                metrics.check(&u.name, result, started.elapsed());
                let ok = result == CheckResult::Pass;
                state.send_if_modified(|reg| {
                    // Checked under the state's lock, which `withdraw` takes too.
                    if withdrawn.load(std::sync::atomic::Ordering::Acquire) {
                        return false;
                    }
                    let Some(s) = reg.uplinks.iter_mut().find(|s| s.name == u.name) else { return false };
                    if s.healthy == ok {
                        return false;
                    }
                    s.healthy = ok;
                    if ok {
                        tracing::info!(uplink = %u.name, healthy = ok, "uplink health changed");
                    } else {
                        tracing::warn!(uplink = %u.name, healthy = ok, "uplink health changed");
                    }
                    true
                });
                let wait = if ok { hc.interval_ms } else { hc.unhealthy_interval_ms };
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(wait.max(10))) => {}
                    _ = stop.changed() => return,
                }
            }
        });
    }
}

/// A request arriving on uplink entrypoint `entry_point` for uplink `uplink_name`.
pub(crate) fn uplink_conn(
    entry_point: &str,
    uplink_name: &str,
    client: SocketAddr,
    upstreams: Arc<Upstreams>,
) -> ConnInfo {
    let mut c = ConnInfo::new(Arc::from(entry_point), 0, true, client, upstreams);
    c.uplink = Some(Arc::from(uplink_name));
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use atrium_data_plane::proxy::tls::CertStore;
    use atrium_data_plane::upstream::UpstreamConfig;

    fn uplink(name: &str) -> pb::Uplink {
        pb::Uplink { name: name.into(), weight: 1, ..Default::default() }
    }

    #[tokio::test]
    async fn withdrawn_uplinks_stay_withdrawn_whatever_the_configuration_says() {
        let gw = Gateway::new(
            Upstreams::new(UpstreamConfig::default()),
            None,
            CertStore::generated().unwrap(),
            Default::default(),
        );
        let uplinks =
            Uplinks::new("cluster-a", gw, Arc::new(Upstreams::new(UpstreamConfig::default())), Arc::default());
        let state = uplinks.state();
        uplinks.set(vec![uplink("crm")]);
        let healthy = |s: &State| s.borrow().uplinks.iter().map(|u| (u.name.clone(), u.healthy)).collect::<Vec<_>>();
        assert_eq!(healthy(&state), [("crm".to_string(), true)], "no health check: healthy");
        uplinks.withdraw();
        assert_eq!(healthy(&state), [("crm".to_string(), false)], "parents are told at once");
        // A reload during the drain (a rollout often edits the configuration too).
        uplinks.set(vec![uplink("crm"), uplink("erp")]);
        assert_eq!(healthy(&state), [("crm".to_string(), false)], "nothing is advertised again");
    }
}
