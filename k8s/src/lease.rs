//! Leader election with a `coordination.k8s.io/v1` Lease: of several replicas, the one
//! holding the Lease writes status and events; every replica serves.
//!
//! The holder renews every third of the lease's duration; another replica takes the Lease
//! over once it has not been renewed for a whole duration. A replica that cannot renew
//! steps down before its lease can have expired, so two replicas never both believe they
//! lead; one that stops gives the Lease up at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

/// Which Lease, and for how long it holds.
#[derive(Debug, Clone)]
pub struct LeaseOptions {
    /// The Lease's namespace (empty: the client's default namespace).
    pub namespace: String,
    /// The Lease's name (e.g. `atrium-control-plane`).
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease holds without renewal.
    pub duration: Duration,
}

/// Whether this replica leads; follows the Lease until dropped.
#[derive(Debug, Clone)]
pub struct Leader {
    tx: Arc<watch::Sender<bool>>,
    _task: Arc<AbortOnDrop>,
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>, Option<(Api<Lease>, String, String)>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
        // Give the Lease up so that another replica takes over without waiting it out.
        if let Some((api, name, identity)) = self.1.take() {
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn(async move { release(&api, &name, &identity).await });
            }
        }
    }
}

impl Leader {
    /// Always the leader (a single replica, or no Kubernetes).
    pub fn always() -> Leader {
        let task = tokio::spawn(std::future::pending::<()>());
        Leader { tx: Arc::new(watch::channel(true).0), _task: Arc::new(AbortOnDrop(task, None)) }
    }

    /// Campaigns for the Lease and holds it while this value lives.
    pub fn elect(client: Client, o: LeaseOptions) -> Leader {
        let tx = Arc::new(watch::channel(false).0);
        let api: Api<Lease> = Api::namespaced(client, &o.namespace);
        let release_to = Some((api.clone(), o.name.clone(), o.identity.clone()));
        let task = tokio::spawn(campaign(api, o, tx.clone()));
        Leader { tx, _task: Arc::new(AbortOnDrop(task, release_to)) }
    }

    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        *self.tx.borrow()
    }

    /// A receiver that wakes when leadership changes.
    pub fn changes(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    /// Stops campaigning and gives the Lease up (at shutdown), so that another replica
    /// takes over at once.
    pub async fn resign(&self) {
        self._task.0.abort();
        self.tx.send_replace(false);
        if let Some((api, name, identity)) = &self._task.1 {
            release(api, name, identity).await;
        }
    }
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

async fn campaign(api: Api<Lease>, o: LeaseOptions, tx: Arc<watch::Sender<bool>>) {
    let renew = (o.duration / 3).max(Duration::from_millis(100));
    // When this replica last renewed: the moment the request left, so that the Lease
    // cannot have expired for the others while it believes it leads.
    let mut renewed_at: Option<Instant> = None;
    // The other holder's record as last seen, and when it was first seen so: expiry is
    // judged by this replica's own clock, never by comparing it with another's.
    let mut observed: Option<(String, Instant)> = None;
    loop {
        let sent = Instant::now();
        let attempt = tokio::time::timeout(renew, try_acquire(&api, &o, &mut observed));
        match attempt.await {
            Ok(Ok(true)) => renewed_at = Some(sent),
            Ok(Ok(false)) => renewed_at = None,
            Ok(Err(e)) => tracing::warn!(lease = %o.name, error = %e, "cannot read or renew the leader Lease"),
            Err(_) => tracing::warn!(lease = %o.name, "renewing the leader Lease timed out"),
        }
        // Leading only while the last renewal is recent enough that no other replica can
        // have taken the Lease over.
        let held = renewed_at.is_some_and(|t| t.elapsed() < o.duration * 2 / 3);
        if *tx.borrow() != held {
            if held {
                tracing::info!(lease = %o.name, identity = %o.identity, "leading: this replica writes status");
            } else {
                tracing::info!(lease = %o.name, identity = %o.identity, "not leading: another replica writes status");
            }
            tx.send_replace(held);
        }
        tokio::time::sleep(renew.saturating_sub(sent.elapsed())).await;
    }
}

/// Takes or renews the Lease; whether this replica holds it. Another holder's Lease has
/// expired once its record (holder and renew time) has not changed for a whole duration,
/// as this replica has watched it.
async fn try_acquire(
    api: &Api<Lease>,
    o: &LeaseOptions,
    observed: &mut Option<(String, Instant)>,
) -> Result<bool, kube::Error> {
    let secs = o.duration.as_secs().max(1) as i32;
    let lease = match api.get_opt(&o.name).await? {
        Some(l) => l,
        None => {
            let l = Lease {
                metadata: ObjectMeta { name: Some(o.name.clone()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(o.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match api.create(&PostParams::default(), &l).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        }
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let mine = holder.as_deref() == Some(o.identity.as_str());
    if !mine && holder.is_some() {
        let record = format!("{holder:?} {:?}", spec.renew_time.as_ref().map(|t| t.0));
        let their = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(secs).max(1) as u64);
        let since = match observed {
            Some((r, t)) if *r == record => *t,
            _ => {
                *observed = Some((record, Instant::now()));
                return Ok(false);
            }
        };
        if since.elapsed() < their {
            return Ok(false);
        }
    }
    let mut next = lease;
    let s = next.spec.get_or_insert_with(Default::default);
    if !mine {
        s.lease_transitions = Some(s.lease_transitions.unwrap_or(0) + 1);
        s.acquire_time = Some(now());
        tracing::info!(lease = %o.name, previous = ?holder, "taking the leader Lease over");
    }
    s.holder_identity = Some(o.identity.clone());
    s.lease_duration_seconds = Some(secs);
    s.renew_time = Some(now());
    // The resourceVersion read above makes this a compare-and-swap: of two replicas that
    // both saw the Lease expire, one wins.
    match api.replace(&o.name, &PostParams::default(), &next).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the Lease up if this replica holds it.
async fn release(api: &Api<Lease>, name: &str, identity: &str) {
    let Ok(Some(mut lease)) = api.get_opt(name).await else { return };
    let Some(spec) = lease.spec.as_mut() else { return };
    if spec.holder_identity.as_deref() != Some(identity) {
        return;
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    if api.replace(name, &PostParams::default(), &lease).await.is_ok() {
        tracing::info!(lease = %name, "leader Lease released");
    }
}
