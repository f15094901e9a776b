//! The multi-cluster registry: the parent dials every child, keeps a control stream open,
//! and knows each child's uplinks, weights and health.
//!
//! A child that closes its connection, whose QUIC connection goes silent past the idle
//! timeout (900 ms: a `kill -9`'d child sends nothing), or that does not answer a `Poll`
//! within `pollTimeout` is unreachable at once and leaves the registry; every change is
//! handed to `on_change`, which republishes the snapshot. `on_change` runs under the
//! registry's lock, so registries reach it in the order they were made; it must not call
//! back into [`Children`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atrium_data_plane::uplink::dial::DialError;
use atrium_data_plane::uplink::{self, Liveness};
use atrium_proto::v1 as pb;

/// Child name → its uplinks, for the reachable children.
pub use atrium_model::compile::Registry;

/// TLS material the parent presents to children: the control plane's certificate and the
/// installation's CA (re-read when their files change).
pub type ParentTls = atrium_data_plane::trust::NodeTrust;

/// Poll timing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Polling {
    /// How often the parent polls.
    pub interval: Duration,
    /// How long a silent child stays in the routing set.
    pub timeout: Duration,
    /// QUIC keep-alive and idle timeout of the control connection.
    pub liveness: Liveness,
}

impl Polling {
    /// The parent's poll timing from its values (`pollInterval`/`pollTimeout`, 5 s each
    /// by default).
    pub fn from_values(values: &atrium_model::values::Values, liveness: Liveness) -> Polling {
        let mc = values.multicluster.clone().unwrap_or_default();
        let secs = |v: &Option<atrium_routing::middleware::config::IntOrString>| {
            v.as_ref().and_then(|d| d.as_duration().ok()).filter(|d| !d.is_zero()).unwrap_or(Duration::from_secs(5))
        };
        Polling { interval: secs(&mc.poll_interval), timeout: secs(&mc.poll_timeout), liveness }
    }
}

fn names(ups: &[pb::UplinkState]) -> String {
    let v: Vec<String> = ups.iter().map(|u| u.name.clone()).collect();
    format!("[{}]", v.join(","))
}

/// Why a session with a child ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The child could not be dialled.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The connection failed or closed.
    #[error("{0}")]
    Connection(#[from] quinn::ConnectionError),
    /// A control frame could not be read.
    #[error("control stream: {0}")]
    Frame(#[from] uplink::frame::FrameError),
    /// A control frame could not be written.
    #[error("control stream: {0}")]
    Write(#[from] std::io::Error),
    /// The child broke the protocol.
    #[error("{0}")]
    Protocol(&'static str),
    /// The child stayed silent past `pollTimeout`.
    #[error("no answer within pollTimeout ({0:?})")]
    Silent(Duration),
}

/// Puts `child`'s uplinks in the registry and hands the new registry to `on_change`, both
/// under the registry's lock, unless the session was ended meanwhile (its flag is cleared
/// under the same lock). So an ended session never writes again, and registries reach
/// `on_change` in the order they were made.
fn record(
    registry: &Mutex<Registry>,
    alive: &AtomicBool,
    child: &str,
    uplinks: &[pb::UplinkState],
    on_change: &(dyn Fn(Registry) + Send + Sync),
) -> Result<(), SessionError> {
    let mut r = registry.lock().map_err(|_| SessionError::Protocol("registry poisoned"))?;
    if !alive.load(Ordering::Acquire) {
        return Err(SessionError::Protocol("session ended"));
    }
    r.insert(child.to_string(), uplinks.to_vec());
    on_change(r.clone());
    Ok(())
}

/// The QUIC connection of each child's live session (their round-trip times).
type Connections = Arc<Mutex<BTreeMap<String, quinn::Connection>>>;

/// Removes a session's connection from [`Connections`] when the session ends.
struct Listed<'a>(&'a Connections, &'a str, quinn::Connection);

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        if let Ok(mut c) = self.0.lock() {
            if c.get(self.1).is_some_and(|c| c.stable_id() == self.2.stable_id()) {
                c.remove(self.1);
            }
        }
    }
}

async fn session(
    child: &pb::Child,
    tls: &ParentTls,
    polling: Polling,
    registry: &Mutex<Registry>,
    alive: &AtomicBool,
    on_change: &(dyn Fn(Registry) + Send + Sync),
    conns: &Connections,
) -> Result<(), SessionError> {
    let ep = atrium_data_plane::uplink::dial::client_endpoint()?;
    let conn = atrium_data_plane::uplink::dial::dial(&ep, child, tls, polling.liveness).await?;
    if let Ok(mut c) = conns.lock() {
        c.insert(child.name.clone(), conn.clone());
    }
    let _listed = Listed(conns, &child.name, conn.clone());
    let (mut send, recv) = conn.open_bi().await?;
    // Frames are awaited in a `select!` with the poll timer: read them cancel-safely.
    let mut recv = uplink::frame::FrameReader::new(recv, polling.liveness.max_frame);
    uplink::frame::write_frame(
        &mut send,
        &pb::StreamHeader { kind: pb::stream_header::Kind::Control as i32, ..Default::default() },
    )
    .await?;
    let first: pb::AgentMessage = tokio::time::timeout(polling.timeout, recv.next())
        .await
        .map_err(|_| SessionError::Protocol("no Register in time"))??;
    let Some(pb::agent_message::Msg::Register(reg)) = first.msg else {
        return Err(SessionError::Protocol("the child did not Register first"));
    };
    if reg.cluster != child.name {
        tracing::warn!(child = %child.name, registered_as = %reg.cluster, "child registered under another name; using the parent's name for it");
    }
    let mut current = reg.uplinks;
    current.sort_by(|a, b| a.name.cmp(&b.name));
    tracing::info!(cluster = %child.name, address = %child.address, uplinks = %names(&current), "uplink connected");
    record(registry, alive, &child.name, &current, on_change)?;
    let mut poll = tokio::time::interval(polling.interval);
    poll.tick().await;
    let mut seq = 0;
    let mut last_heard = tokio::time::Instant::now();
    loop {
        let msg = tokio::select! {
            m = recv.next::<pb::AgentMessage>() => m?,
            _ = poll.tick() => {
                if last_heard.elapsed() > polling.timeout + polling.interval {
                    return Err(SessionError::Silent(polling.timeout));
                }
                seq += 1;
                uplink::frame::write_frame(&mut send, &pb::ParentMessage { msg: Some(pb::parent_message::Msg::Poll(pb::Poll { seq })) }).await?;
                continue;
            }
            reason = conn.closed() => return Err(reason.into()),
        };
        last_heard = tokio::time::Instant::now();
        let Some(pb::agent_message::Msg::Update(mut u)) = msg.msg else { continue };
        u.uplinks.sort_by(|a, b| a.name.cmp(&b.name));
        if u.uplinks != current {
            for new in &u.uplinks {
                if let Some(old) = current.iter().find(|o| o.name == new.name) {
                    if old.healthy != new.healthy {
                        if new.healthy {
                            tracing::info!(cluster = %child.name, uplink = %new.name, healthy = true, "uplink health changed");
                        } else {
                            tracing::warn!(cluster = %child.name, uplink = %new.name, healthy = false, "uplink health changed");
                        }
                    }
                }
            }
            current = u.uplinks;
            record(registry, alive, &child.name, &current, on_change)?;
        }
    }
}

/// A child's configuration, its polling, the task that keeps its session up, and whether
/// that session may still write to the registry.
type Session = (pb::Child, Polling, tokio::task::JoinHandle<()>, Arc<AtomicBool>);

/// The children the parent dials, following the configuration: [`Children::set`] starts a
/// session for each new child, restarts those whose address or transport changed, and
/// ends those that left (which leave the registry at once). Every registry change goes to
/// `on_change`, which republishes the snapshot.
pub struct Children {
    tls: ParentTls,
    registry: Arc<Mutex<Registry>>,
    on_change: Arc<dyn Fn(Registry) + Send + Sync>,
    /// Each child's session, by name.
    sessions: Mutex<BTreeMap<String, Session>>,
    /// The connection of each live session.
    conns: Connections,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Children {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Children").field("registry", &self.registry).finish()
    }
}

impl Children {
    /// No children yet; sessions run on the current Tokio runtime.
    pub fn new(tls: ParentTls, on_change: Arc<dyn Fn(Registry) + Send + Sync>) -> Arc<Children> {
        Arc::new(Children {
            tls,
            registry: Arc::default(),
            on_change,
            sessions: Mutex::default(),
            conns: Arc::default(),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// The round-trip time of the control connection to `child` (QUIC's smoothed
    /// estimate), while a session is up.
    pub fn rtt(&self, child: &str) -> Option<Duration> {
        let c = self.conns.lock().ok()?.get(child)?.clone();
        c.close_reason().is_none().then(|| c.rtt())
    }

    /// The reachable children and their uplinks now.
    pub fn registry(&self) -> Registry {
        self.registry.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Dials exactly `children`, polled as `polling` says (see the type's documentation).
    pub fn set(&self, children: &[pb::Child], polling: Polling) {
        let Ok(mut sessions) = self.sessions.lock() else { return };
        let wanted: BTreeMap<&str, &pb::Child> = children.iter().map(|c| (c.name.as_str(), c)).collect();
        let mut left = Vec::new();
        let mut ended = Vec::new();
        sessions.retain(|name, (child, p, task, alive)| {
            let keep = wanted.get(name.as_str()).is_some_and(|c| *c == child && *p == polling);
            if !keep {
                task.abort();
                ended.push(alive.clone());
                left.push(name.clone());
            }
            keep
        });
        if let Ok(mut r) = self.registry.lock() {
            // Under the lock: a session task still running on another thread cannot put
            // its child back after it is removed here.
            for alive in ended {
                alive.store(false, Ordering::Release);
            }
            let mut removed = false;
            for name in &left {
                removed |= r.remove(name).is_some();
                if !wanted.contains_key(name.as_str()) {
                    tracing::info!(cluster = %name, "child removed from the configuration; no longer dialled");
                }
            }
            if removed {
                (self.on_change)(r.clone());
            }
        }
        for (name, child) in wanted {
            if sessions.contains_key(name) {
                continue;
            }
            let alive = Arc::new(AtomicBool::new(true));
            let task = self.runtime.spawn(keep_session(
                child.clone(),
                self.tls.clone(),
                polling,
                self.registry.clone(),
                alive.clone(),
                self.on_change.clone(),
                self.conns.clone(),
            ));
            sessions.insert(name.to_string(), (child.clone(), polling, task, alive));
        }
    }

    /// Ends every session (shutdown).
    pub fn stop(&self) {
        if let Ok(mut sessions) = self.sessions.lock() {
            let _registry = self.registry.lock();
            for (_, (_, _, task, alive)) in std::mem::take(&mut *sessions) {
                alive.store(false, Ordering::Release);
                task.abort();
            }
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Keeps a session with `child` up: redials with backoff whenever it ends.
async fn keep_session(
    child: pb::Child,
    tls: ParentTls,
    polling: Polling,
    registry: Arc<Mutex<Registry>>,
    alive: Arc<AtomicBool>,
    on_change: Arc<dyn Fn(Registry) + Send + Sync>,
    conns: Connections,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = session(&child, &tls, polling, &registry, &alive, on_change.as_ref(), &conns).await;
        let why = result.err().map_or_else(|| "control stream closed".to_string(), |e| e.to_string());
        let removed = {
            let Ok(mut r) = registry.lock() else { return };
            // Ended by a configuration change: the child's entry is the next session's.
            if !alive.load(Ordering::Acquire) {
                return;
            }
            let removed = r.remove(&child.name).is_some();
            if removed {
                tracing::warn!(cluster = %child.name, address = %child.address, reason = %why, "child unreachable");
                on_change(r.clone());
            }
            removed
        };
        if removed {
            backoff = Duration::from_millis(100);
        } else {
            tracing::debug!(cluster = %child.name, reason = %why, "child not reachable yet");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_ended_by_a_configuration_change_never_writes_to_the_registry_again() {
        let registry = Mutex::new(Registry::new());
        let alive = AtomicBool::new(true);
        let up = vec![pb::UplinkState { name: "crm".into(), weight: 1, healthy: true, entry_points: vec![] }];
        let published = Mutex::new(Vec::new());
        let on_change = |r: Registry| published.lock().unwrap().push(r);
        record(&registry, &alive, "cluster-a", &up, &on_change).unwrap();
        assert_eq!(published.lock().unwrap()[0].get("cluster-a"), Some(&up));
        // What `Children::set` does for a child that left, under the registry's lock.
        {
            let mut r = registry.lock().unwrap();
            alive.store(false, Ordering::Release);
            r.remove("cluster-a");
        }
        // The session's task, still running on another thread, tries to put it back.
        let late = record(&registry, &alive, "cluster-a", &up, &on_change);
        assert!(matches!(late, Err(SessionError::Protocol("session ended"))));
        assert!(registry.lock().unwrap().is_empty(), "the removed child stays removed");
        assert_eq!(published.lock().unwrap().len(), 1, "and is not published again");
    }
}
