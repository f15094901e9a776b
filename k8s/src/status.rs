//! Status write-back: what atrium made of each object, written to the objects themselves.
//!
//! - Kinds whose upstream CRD has a `status` (the `hub.traefik.io` kinds) get
//!   `status.conditions`: `Ready` (`Accepted`, or `Invalid` with the errors), plus the
//!   conditions a role adds (an agent's `Healthy` on its Uplinks).
//! - Kinds without a status (IngressRoutes, Middlewares, Services, …) get a `Warning` Event
//!   (`events.k8s.io/v1`) when they are invalid and left out, once per object version.
//! - Writes go through the status subresource, only when a condition changed (type,
//!   status, reason, message or observed generation), and only from the leader. The
//!   conditions are atrium's: a write replaces the whole list.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::cluster::{Cluster, Observed};
use crate::kinds::{Kind, by_kind};
use crate::lease::Leader;

/// One condition, as `metav1.Condition`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// `Ready`, `Healthy`, …
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: &'static str,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
}

impl Condition {
    /// A condition of `type_` that holds (`true`) or not.
    pub fn new(type_: &str, holds: bool, reason: &str, message: impl Into<String>) -> Condition {
        Condition {
            type_: type_.into(),
            status: if holds { "True" } else { "False" },
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// `Kind namespace/name`, as the model labels objects.
pub type Label = String;

/// The most of a message written into a condition or an Event (the CRDs allow 32 KiB for
/// conditions, Events 1 KiB).
const MAX_MESSAGE: usize = 4096;
const MAX_EVENT_NOTE: usize = 1000;

#[derive(Debug, Default)]
struct Desired {
    /// Errors per object, from the last compile.
    problems: BTreeMap<Label, Vec<String>>,
    /// The objects the last compile read, with their generations: an object is written
    /// only once a compile has seen it as it is now.
    compiled: BTreeMap<Label, Option<i64>>,
    /// Conditions a role sets, per object and type.
    extra: BTreeMap<Label, BTreeMap<String, Condition>>,
    /// Whether a compile has been reported (no status is written before).
    ran: bool,
}

/// Writes status (of the kinds it owns) and events (for invalid objects of the other
/// kinds) for a [`Cluster`]'s objects while this replica leads.
#[derive(Debug, Clone)]
pub struct StatusWriter {
    inner: Arc<WriterInner>,
}

#[derive(Debug)]
struct WriterInner {
    /// The kinds whose status this writer owns.
    kinds: Vec<&'static Kind>,
    desired: Mutex<Desired>,
    wake: Notify,
    /// Events posted for the objects invalid now: (label, uid and message).
    events: Mutex<HashSet<(Label, String)>>,
    component: String,
    identity: String,
}

impl StatusWriter {
    /// Starts writing for `cluster` while `leader` leads. `component` names the writer in
    /// Events (`atrium-control-plane`, `atrium-agent`).
    pub fn start(
        cluster: Cluster,
        leader: Leader,
        kinds: Vec<&'static Kind>,
        component: &str,
        identity: &str,
    ) -> StatusWriter {
        let inner = Arc::new(WriterInner {
            kinds,
            desired: Mutex::default(),
            wake: Notify::new(),
            events: Mutex::default(),
            component: component.into(),
            identity: identity.into(),
        });
        tokio::spawn(write_loop(Arc::downgrade(&inner), cluster, leader));
        StatusWriter { inner }
    }

    /// What the last compile read (each object with its `metadata.generation`) and the
    /// errors it found, per object (an object read without errors is `Ready`).
    pub fn set_problems(&self, compiled: BTreeMap<Label, Option<i64>>, problems: BTreeMap<Label, Vec<String>>) {
        let mut d = self.inner.desired.lock().expect("status state");
        d.problems = problems;
        d.compiled = compiled;
        d.ran = true;
        drop(d);
        self.inner.wake.notify_one();
    }

    /// Sets a condition of one object (`label`: `Kind namespace/name`).
    pub fn set_condition(&self, label: &str, c: Condition) {
        let mut d = self.inner.desired.lock().expect("status state");
        let slot = d.extra.entry(label.to_string()).or_default();
        if slot.get(&c.type_) == Some(&c) {
            return;
        }
        slot.insert(c.type_.clone(), c);
        drop(d);
        self.inner.wake.notify_one();
    }
}

/// Wakes after each compile and condition change, when this replica starts leading, and
/// every 30 s (a status someone else overwrote is restored), and writes what differs. A
/// change to an object wakes it through the compile that follows, so what is written is
/// what that compile made of the object.
async fn write_loop(inner: std::sync::Weak<WriterInner>, cluster: Cluster, leader: Leader) {
    let mut leading = leader.changes();
    loop {
        {
            let Some(w) = inner.upgrade() else { return };
            if leader.is_leader() && cluster.is_synced() {
                w.write_all(&cluster, &leader).await;
            }
            let wait = async {
                tokio::select! {
                    _ = w.wake.notified() => {}
                    _ = leading.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                }
            };
            wait.await;
        }
        // Let a burst of changes settle.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl WriterInner {
    async fn write_all(&self, cluster: &Cluster, leader: &Leader) {
        let (wanted, problems) = {
            let d = self.desired.lock().expect("status state");
            if !d.ran {
                return;
            }
            let mut wanted: Vec<(Observed, Vec<Condition>)> = Vec::new();
            for o in cluster.observed().into_iter().filter(|o| self.kinds.contains(&o.kind)) {
                let label = format!("{} {}/{}", o.kind.kind, o.namespace, o.name);
                // Not compiled as it is now (new, or changed since): its compile will say.
                match d.compiled.get(&label) {
                    Some(g) if g.is_none() || *g == o.generation => {}
                    _ => continue,
                }
                let ready = match d.problems.get(&label) {
                    Some(errs) => Condition::new("Ready", false, "Invalid", truncate(&errs.join("\n"), MAX_MESSAGE)),
                    None => Condition::new("Ready", true, "Accepted", "applied by atrium"),
                };
                let mut conds = vec![ready];
                if let Some(extra) = d.extra.get(&label) {
                    conds.extend(extra.values().cloned());
                }
                wanted.push((o, conds));
            }
            (wanted, d.problems.clone())
        };
        for (o, conds) in wanted {
            if same_conditions(o.status.as_ref(), &conds, o.generation) {
                continue;
            }
            if !leader.is_leader() {
                return;
            }
            if let Err(e) = write_status(cluster, &o, &conds).await {
                tracing::warn!(kind = o.kind.kind, namespace = %o.namespace, name = %o.name, error = %e, "writing status failed");
            }
        }
        // Kinds without a status: an Event for each invalid object (once per object and
        // message while it stays invalid).
        self.events.lock().expect("events").retain(|(label, _)| problems.contains_key(label));
        for (label, errs) in problems {
            if !leader.is_leader() {
                return;
            }
            let Some((kind, id)) = label.split_once(' ') else { continue };
            let Some((ns, name)) = id.split_once('/') else { continue };
            if self.kinds.iter().any(|k| k.kind == kind) {
                continue;
            }
            self.post_event(cluster, &label, kind, ns, name, &errs.join("\n")).await;
        }
    }

    async fn post_event(&self, cluster: &Cluster, label: &str, kind: &str, ns: &str, name: &str, message: &str) {
        let Some(k) = by_kind(kind) else { return };
        let Some((uid, rv)) = cluster.identity(kind, ns, name) else { return };
        if !self.events.lock().expect("events").insert((label.to_string(), format!("{uid}\n{message}"))) {
            return;
        }
        let ev = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{name}.")),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            event_time: Some(MicroTime(Timestamp::now())),
            action: Some("Compile".into()),
            reason: Some("InvalidConfiguration".into()),
            note: Some(truncate(message, MAX_EVENT_NOTE)),
            type_: Some("Warning".into()),
            reporting_controller: Some(format!("atrium.dev/{}", self.component)),
            reporting_instance: Some(truncate(&self.identity, 128)),
            regarding: Some(ObjectReference {
                api_version: Some(k.api_version()),
                kind: Some(k.kind.into()),
                namespace: Some(ns.into()),
                name: Some(name.into()),
                uid: Some(uid),
                resource_version: Some(rv),
                ..Default::default()
            }),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(cluster.client(), ns);
        if let Err(e) = api.create(&PostParams::default(), &ev).await {
            tracing::warn!(%kind, namespace = %ns, %name, error = %e, "posting an Event failed");
        }
    }
}

/// Whether `status.conditions` already says `want` (times aside).
fn same_conditions(status: Option<&Value>, want: &[Condition], generation: Option<i64>) -> bool {
    let have = status.and_then(|s| s.get("conditions")).and_then(Value::as_array);
    let Some(have) = have else { return false };
    have.len() == want.len()
        && want.iter().zip(have).all(|(w, h)| {
            h["type"] == w.type_.as_str()
                && h["status"] == w.status
                && h["reason"] == w.reason.as_str()
                && h["message"] == w.message.as_str()
                && h.get("observedGeneration").and_then(Value::as_i64) == generation
        })
}

async fn write_status(cluster: &Cluster, o: &Observed, conds: &[Condition]) -> Result<(), kube::Error> {
    let now = Timestamp::now().to_string();
    let old: Vec<Value> =
        o.status.as_ref().and_then(|s| s.get("conditions")).and_then(Value::as_array).cloned().unwrap_or_default();
    let conditions: Vec<Value> = conds
        .iter()
        .map(|c| {
            // The transition time moves only when the status does.
            let since = old
                .iter()
                .find(|h| h["type"] == c.type_.as_str() && h["status"] == c.status)
                .and_then(|h| h["lastTransitionTime"].as_str())
                .map(str::to_string)
                .unwrap_or_else(|| now.clone());
            let mut v = json!({
                "type": c.type_, "status": c.status, "reason": c.reason, "message": c.message,
                "lastTransitionTime": since,
            });
            if let Some(g) = o.generation {
                v["observedGeneration"] = json!(g);
            }
            v
        })
        .collect();
    let api: Api<DynamicObject> = Api::namespaced_with(cluster.client(), &o.namespace, &o.kind.api_resource());
    let patch = json!({"status": {"conditions": conditions}});
    api.patch_status(&o.name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    tracing::debug!(kind = o.kind.kind, namespace = %o.namespace, name = %o.name, "status written");
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_compare_without_times() {
        let want = vec![Condition::new("Ready", true, "Accepted", "applied by atrium")];
        let status = json!({"conditions": [{"type": "Ready", "status": "True", "reason": "Accepted",
            "message": "applied by atrium", "observedGeneration": 2, "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
        assert!(same_conditions(Some(&status), &want, Some(2)));
        assert!(!same_conditions(Some(&status), &want, Some(3)), "a new generation is written again");
        let invalid = vec![Condition::new("Ready", false, "Invalid", "x")];
        assert!(!same_conditions(Some(&status), &invalid, Some(2)));
        assert!(!same_conditions(None, &want, Some(2)));
    }

    #[test]
    fn long_messages_are_cut_on_a_character() {
        let s = "é".repeat(10);
        assert_eq!(truncate(&s, 5), "éé…");
        assert_eq!(truncate("short", 10), "short");
    }
}
