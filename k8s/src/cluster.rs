//! [`Cluster`]: one watch per watched kind (and per namespace when `--namespaces` narrows
//! them), kept in an in-memory store of the objects as the model reads them.
//!
//! - Every object is projected before it is parsed: CRD kinds keep all their fields (parsed
//!   strictly, as the upstream schema says), core kinds keep only the fields atrium reads
//!   (parsed leniently: a field a newer Kubernetes adds is ignored), and every kind keeps
//!   only the identifying metadata. Each object is parsed once, when its projection changes.
//! - Nothing counts as synced until every watch has listed once ([`Cluster::synced`]); a
//!   kind whose CRD is not installed (404) is logged once, treated as empty and re-checked
//!   with the watch's backoff.
//! - A re-list (after a disconnect, or 410 Gone) replaces that watch's objects in one step:
//!   readers never see a partial set.
//! - A change that leaves every projection as it was (a status write, atrium's own
//!   included; a new resourceVersion) does not wake the readers of
//!   [`Cluster::changes`]: status writes never trigger a recompile.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use atrium_model::loader::{Manifests, load_str};
use futures_util::StreamExt;
use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, Event};
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::kinds::{Kind, WATCHED};

/// What the provider watches.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Namespaces to watch; empty: all of them.
    pub namespaces: Vec<String>,
    /// A label selector for the CRD kinds (`app=x,tier!=y`), as Traefik's
    /// `labelSelector`.
    pub label_selector: Option<String>,
}

/// Why the provider cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No kubeconfig and not in a cluster, or an unusable one.
    #[error("Kubernetes client configuration: {0} (set KUBECONFIG, or run in a pod with a service account)")]
    Config(String),
    /// The client cannot be built.
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// A kind and namespace (none: every namespace) with a watch of its own.
type Partition = (usize, Option<String>);
/// A kind index, namespace and name.
type ObjKey = (usize, String, String);

/// One object in the store.
#[derive(Debug, Clone)]
struct Entry {
    /// The projection's text; a change to it is a change to the configuration.
    text: String,
    /// The projection, parsed by the model's loader (resources and diagnostics).
    loaded: Manifests,
    /// The object's status as last seen.
    status: Option<Value>,
    /// `metadata.generation`.
    generation: Option<i64>,
    /// `metadata.uid`.
    uid: Option<String>,
    /// `metadata.resourceVersion`.
    resource_version: Option<String>,
}

#[derive(Debug, Default)]
struct PartState {
    synced: bool,
    missing: bool,
    last_error: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<ObjKey, Entry>,
    parts: HashMap<Partition, PartState>,
}

struct Inner {
    client: Client,
    options: Options,
    state: Mutex<State>,
    changes: watch::Sender<u64>,
    synced: watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in self.tasks.get_mut().map(std::mem::take).unwrap_or_default() {
            t.abort();
        }
    }
}

/// The watched objects of a cluster. Cloning shares the watches; they stop when the last
/// clone is dropped.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("options", &self.inner.options).finish_non_exhaustive()
    }
}

/// An object as the status writer needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// Its kind.
    pub kind: &'static Kind,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `metadata.uid`.
    pub uid: Option<String>,
    /// `metadata.resourceVersion`.
    pub resource_version: Option<String>,
    /// Its status as last seen.
    pub status: Option<Value>,
}

/// The client configuration: `kubeconfig` when given, else `KUBECONFIG` (or
/// `~/.kube/config`), else the pod's service account.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, ClusterError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| ClusterError::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| ClusterError::Config(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer().await.map_err(|e| ClusterError::Config(e.to_string()))?,
    };
    tracing::info!(server = %config.cluster_url, "Kubernetes API server");
    Ok(Client::try_from(config)?)
}

/// The watch backoff: 200 ms doubling to 5 s, back to 200 ms once 30 s passed without a
/// failure. The watcher's own resets are ignored: it reports a success (`Init`) before
/// every list, so honouring them would retry a failing list every 200 ms forever.
#[derive(Debug, Clone)]
struct RetryBackoff {
    next: Duration,
    last: Option<std::time::Instant>,
}

impl RetryBackoff {
    const FIRST: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(5);
    const QUIET: Duration = Duration::from_secs(30);
}

impl Default for RetryBackoff {
    fn default() -> Self {
        RetryBackoff { next: Self::FIRST, last: None }
    }
}

impl Iterator for RetryBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        if self.last.is_some_and(|t| t.elapsed() > Self::QUIET) {
            self.next = Self::FIRST;
        }
        self.last = Some(std::time::Instant::now());
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(d)
    }
}

impl Backoff for RetryBackoff {
    fn reset(&mut self) {}
}

impl Cluster {
    /// Starts a watch per kind (and per namespace in `options.namespaces`). Must be called
    /// within a tokio runtime.
    pub fn start(client: Client, options: Options) -> Cluster {
        let inner = Arc::new(Inner {
            client,
            options,
            state: Mutex::default(),
            changes: watch::channel(0).0,
            synced: watch::channel(false).0,
            tasks: Mutex::default(),
        });
        let namespaces: Vec<Option<String>> = if inner.options.namespaces.is_empty() {
            vec![None]
        } else {
            let unique: std::collections::BTreeSet<&String> = inner.options.namespaces.iter().collect();
            unique.into_iter().cloned().map(Some).collect()
        };
        let mut tasks = Vec::new();
        {
            let mut st = inner.state.lock().expect("cluster state");
            for (i, _) in WATCHED.iter().enumerate() {
                for ns in &namespaces {
                    st.parts.insert((i, ns.clone()), PartState::default());
                }
            }
        }
        for (i, _) in WATCHED.iter().enumerate() {
            for ns in &namespaces {
                tasks.push(tokio::spawn(run_watch(Arc::downgrade(&inner), inner.client.clone(), i, ns.clone())));
            }
        }
        *inner.tasks.lock().expect("cluster tasks") = tasks;
        Cluster { inner }
    }

    /// The client the watches use (for status writes and leases).
    pub fn client(&self) -> Client {
        self.inner.client.clone()
    }

    /// Waits until every watch has listed once, logging which are still listing every
    /// `progress` interval.
    pub async fn synced(&self, progress: Duration) {
        let mut rx = self.inner.synced.subscribe();
        loop {
            if *rx.borrow_and_update() {
                return;
            }
            match tokio::time::timeout(progress, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    let pending = self.pending();
                    tracing::info!(pending = ?pending, "waiting for the first list of every watched kind");
                }
            }
        }
    }

    /// Whether every watch has listed once.
    pub fn is_synced(&self) -> bool {
        *self.inner.synced.borrow()
    }

    /// The watches that have not listed yet (`kind` or `kind in namespace`).
    pub fn pending(&self) -> Vec<String> {
        let st = self.inner.state.lock().expect("cluster state");
        let mut out: Vec<String> = st
            .parts
            .iter()
            .filter(|(_, p)| !p.synced)
            .map(|((i, ns), p)| {
                let k = WATCHED[*i].plural;
                let why = p.last_error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default();
                match ns {
                    Some(ns) => format!("{k} in {ns}{why}"),
                    None => format!("{k}{why}"),
                }
            })
            .collect();
        out.sort();
        out
    }

    /// A receiver that wakes on every change of what the model reads (not on status-only
    /// changes).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Every object as the model reads it, in kind, namespace and name order.
    pub fn manifests(&self) -> Manifests {
        let st = self.inner.state.lock().expect("cluster state");
        let mut m = Manifests::default();
        for e in st.objects.values() {
            m.resources.extend(e.loaded.resources.iter().cloned());
            m.diagnostics.extend(e.loaded.diagnostics.iter().cloned());
        }
        m
    }

    /// The objects of kinds with a status subresource.
    pub fn observed(&self) -> Vec<Observed> {
        let st = self.inner.state.lock().expect("cluster state");
        st.objects
            .iter()
            .filter(|((i, _, _), _)| WATCHED[*i].status)
            .map(|((i, ns, name), e)| Observed {
                kind: &WATCHED[*i],
                namespace: ns.clone(),
                name: name.clone(),
                generation: e.generation,
                uid: e.uid.clone(),
                resource_version: e.resource_version.clone(),
                status: e.status.clone(),
            })
            .collect()
    }

    /// The uid and resourceVersion of one object of any watched kind.
    pub fn identity(&self, kind: &str, namespace: &str, name: &str) -> Option<(String, String)> {
        let i = WATCHED.iter().position(|k| k.kind == kind)?;
        let st = self.inner.state.lock().expect("cluster state");
        let e = st.objects.get(&(i, namespace.to_string(), name.to_string()))?;
        Some((e.uid.clone().unwrap_or_default(), e.resource_version.clone().unwrap_or_default()))
    }

    /// One object, as observed.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Observed> {
        let i = WATCHED.iter().position(|k| k.kind == kind)?;
        let st = self.inner.state.lock().expect("cluster state");
        let e = st.objects.get(&(i, namespace.to_string(), name.to_string()))?;
        Some(Observed {
            kind: &WATCHED[i],
            namespace: namespace.to_string(),
            name: name.to_string(),
            generation: e.generation,
            uid: e.uid.clone(),
            resource_version: e.resource_version.clone(),
            status: e.status.clone(),
        })
    }
}

/// Runs the watch of one partition until the cluster is dropped. Objects are projected
/// and parsed here, outside the store's lock; a list is gathered here and handed over
/// whole.
async fn run_watch(inner: Weak<Inner>, client: Client, idx: usize, ns: Option<String>) {
    let kind = &WATCHED[idx];
    let ar = kind.api_resource();
    let api: Api<DynamicObject> = match &ns {
        Some(ns) => Api::namespaced_with(client, ns, &ar),
        None => Api::all_with(client, &ar),
    };
    let mut cfg = watcher::Config::default();
    if kind.selected_by_labels() {
        if let Some(sel) = inner.upgrade().and_then(|i| i.options.label_selector.clone()) {
            cfg = cfg.labels(&sel);
        }
    }
    if kind.kind == "Secret" {
        // Secrets atrium never reads (Helm releases, service-account tokens, registry
        // credentials) are not even listed.
        cfg = cfg.fields(&IGNORED_SECRET_TYPES.iter().map(|t| format!("type!={t}")).collect::<Vec<_>>().join(","));
    }
    let mut stream = watcher::watcher(api, cfg).backoff(RetryBackoff::default()).boxed();
    let part: Partition = (idx, ns);
    let mut listing: Option<BTreeMap<ObjKey, Entry>> = None;
    while let Some(ev) = stream.next().await {
        let Some(inner) = inner.upgrade() else { return };
        match ev {
            Ok(Event::Init) => listing = Some(BTreeMap::new()),
            Ok(Event::InitApply(o)) => {
                if let (Some(l), Some((k, e))) = (listing.as_mut(), entry_of(idx, o)) {
                    l.insert(k, e);
                }
            }
            Ok(Event::InitDone) => inner.listed(&part, listing.take().unwrap_or_default()),
            Ok(Event::Apply(o)) => {
                if let Some((k, e)) = entry_of(idx, o) {
                    inner.applied(k, e);
                }
            }
            Ok(Event::Delete(o)) => {
                let ns = o.metadata.namespace.clone().unwrap_or_else(|| "default".into());
                inner.deleted((idx, ns, o.metadata.name.unwrap_or_default()));
            }
            Err(e) => {
                listing = None;
                inner.failed(&part, e);
            }
        }
    }
}

/// Secret types atrium never reads.
const IGNORED_SECRET_TYPES: &[&str] = &[
    "helm.sh/release.v1",
    "kubernetes.io/service-account-token",
    "kubernetes.io/dockercfg",
    "kubernetes.io/dockerconfigjson",
    "bootstrap.kubernetes.io/token",
];

impl Inner {
    fn changed(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    /// A list finished: the partition's objects are replaced in one step.
    fn listed(&self, part: &Partition, fresh: BTreeMap<ObjKey, Entry>) {
        let kind = &WATCHED[part.0];
        let mut st = self.state.lock().expect("cluster state");
        let p = st.parts.entry(part.clone()).or_default();
        if p.missing {
            tracing::info!(kind = kind.kind, "the kind is served now; reading its objects");
        }
        p.missing = false;
        p.synced = true;
        p.last_error = None;
        let stale: Vec<ObjKey> = st
            .objects
            .keys()
            .filter(|k| k.0 == part.0 && in_partition(part, &k.1) && !fresh.contains_key(*k))
            .cloned()
            .collect();
        let mut changed = !stale.is_empty();
        for k in stale {
            st.objects.remove(&k);
        }
        for (k, e) in fresh {
            changed |= upsert(&mut st.objects, k, e);
        }
        self.check_synced(&st);
        drop(st);
        if changed {
            self.changed();
        }
    }

    fn applied(&self, key: ObjKey, entry: Entry) {
        let changed = upsert(&mut self.state.lock().expect("cluster state").objects, key, entry);
        if changed {
            self.changed();
        }
    }

    fn deleted(&self, key: ObjKey) {
        let changed = self.state.lock().expect("cluster state").objects.remove(&key).is_some();
        if changed {
            self.changed();
        }
    }

    /// A list or watch failed. A kind the API server does not serve (404) before its
    /// first list counts as listed and empty; after it, the last objects seen stay (when
    /// a CRD is deleted, its objects' deletions come first), never an empty set that would
    /// drop an APIAuth and open its APIs.
    fn failed(&self, part: &Partition, e: watcher::Error) {
        let kind = &WATCHED[part.0];
        let not_found = matches!(&e, watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 404);
        let mut st = self.state.lock().expect("cluster state");
        let p = st.parts.entry(part.clone()).or_default();
        let msg = if not_found { "not served (is its CRD installed?)".to_string() } else { e.to_string() };
        if p.last_error.as_deref() != Some(msg.as_str()) {
            match (not_found, p.synced) {
                (true, false) => tracing::warn!(
                    kind = kind.kind,
                    api_version = %kind.api_version(),
                    "the API server does not serve this kind (is its CRD installed?); treated as empty and checked again"
                ),
                (true, true) => tracing::warn!(
                    kind = kind.kind,
                    api_version = %kind.api_version(),
                    "the API server stopped serving this kind; the objects last seen stay in force"
                ),
                _ => {
                    tracing::warn!(kind = kind.kind, namespace = ?part.1, error = %msg, "watch failed; listing again with backoff")
                }
            }
        }
        p.last_error = Some(msg);
        if not_found && !p.synced {
            p.missing = true;
            p.synced = true;
            self.check_synced(&st);
        }
    }

    fn check_synced(&self, st: &State) {
        if !*self.synced.borrow() && st.parts.values().all(|p| p.synced) {
            tracing::info!(objects = st.objects.len(), "every watched kind is listed");
            self.synced.send_replace(true);
        }
    }
}

fn in_partition(part: &Partition, ns: &str) -> bool {
    part.1.as_deref().is_none_or(|p| p == ns)
}

/// Inserts or replaces; whether what the model reads changed.
fn upsert(objects: &mut BTreeMap<ObjKey, Entry>, key: ObjKey, entry: Entry) -> bool {
    match objects.get_mut(&key) {
        Some(old) if old.text == entry.text => {
            old.status = entry.status;
            old.generation = entry.generation;
            old.uid = entry.uid;
            old.resource_version = entry.resource_version;
            false
        }
        _ => {
            objects.insert(key, entry);
            true
        }
    }
}

/// The store entry of a watched object (none without a name).
fn entry_of(idx: usize, o: DynamicObject) -> Option<(ObjKey, Entry)> {
    let kind = &WATCHED[idx];
    let name = o.metadata.name.clone()?;
    let ns = o.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let generation = o.metadata.generation;
    let uid = o.metadata.uid.clone();
    let resource_version = o.metadata.resource_version.clone();
    let value = serde_json::to_value(&o).ok()?;
    let (projected, status) = project(kind, value);
    let text = serde_json::to_string_pretty(&projected).unwrap_or_default();
    let mut loaded = Manifests::default();
    let file = format!("k8s/{}/{ns}/{name}", kind.plural);
    load_str(Path::new(&file), &text, &mut loaded);
    Some(((idx, ns, name), Entry { text, loaded, status, generation, uid, resource_version }))
}

/// Annotations that are not configuration (and can be large).
const DROPPED_ANNOTATIONS: &[&str] = &["kubectl.kubernetes.io/last-applied-configuration"];

/// The object as the model reads it, and its status.
fn project(kind: &Kind, value: Value) -> (Value, Option<Value>) {
    let Value::Object(mut obj) = value else { return (Value::Null, None) };
    let status = obj.remove("status");
    let meta = obj.remove("metadata").unwrap_or_default();
    let mut m = Map::new();
    for k in ["name", "namespace", "labels", "generation"] {
        if let Some(v) = meta.get(k) {
            m.insert(k.into(), v.clone());
        }
    }
    if let Some(Value::Object(a)) = meta.get("annotations") {
        let a: Map<String, Value> = a
            .iter()
            .filter(|(k, _)| !DROPPED_ANNOTATIONS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !a.is_empty() {
            m.insert("annotations".into(), Value::Object(a));
        }
    }
    let mut out = Map::new();
    out.insert("apiVersion".into(), Value::String(kind.api_version()));
    out.insert("kind".into(), Value::String(kind.kind.into()));
    out.insert("metadata".into(), Value::Object(m));
    obj.remove("apiVersion");
    obj.remove("kind");
    match kind.kind {
        "Service" => {
            if let Some(spec) = obj.get("spec") {
                let mut spec = keep(spec, &["ports", "selector", "type", "externalName", "clusterIP", "clusterIPs"]);
                keep_items(&mut spec, "ports", &["name", "port", "targetPort", "protocol", "appProtocol", "nodePort"]);
                out.insert("spec".into(), spec);
            }
        }
        "EndpointSlice" => {
            let mut s = keep(&Value::Object(obj), &["addressType", "endpoints", "ports"]);
            keep_items(&mut s, "endpoints", &["addresses", "conditions", "hostname", "nodeName", "zone"]);
            if let Some(Value::Array(eps)) = s.get_mut("endpoints") {
                for ep in eps {
                    if let Some(c) = ep.get("conditions") {
                        let c = keep(c, &["ready", "serving", "terminating"]);
                        ep["conditions"] = c;
                    }
                }
            }
            keep_items(&mut s, "ports", &["name", "port", "protocol", "appProtocol"]);
            if let Value::Object(s) = s {
                out.extend(s);
            }
        }
        "Secret" => {
            if let Value::Object(s) = keep(&Value::Object(obj), &["type", "data", "immutable"]) {
                out.extend(s);
            }
        }
        // CRD kinds: every field, for the strict decoder and the upstream schema.
        _ => out.extend(obj),
    }
    (Value::Object(out), status)
}

/// `v` with only the `fields` named (a non-object: unchanged).
fn keep(v: &Value, fields: &[&str]) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(k, v)| fields.contains(&k.as_str()) && !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Keeps `fields` in every item of the array `v[key]`.
fn keep_items(v: &mut Value, key: &str, fields: &[&str]) {
    if let Some(Value::Array(items)) = v.get_mut(key) {
        for it in items.iter_mut() {
            *it = keep(it, fields);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::by_kind;
    use serde_json::json;

    #[test]
    fn core_kinds_keep_what_atrium_reads_and_crds_keep_everything() {
        let svc = json!({
            "metadata": {"name": "s", "namespace": "apps", "uid": "u", "resourceVersion": "7",
                "managedFields": [{"manager": "kubectl"}],
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "a": "b"}},
            "spec": {"ports": [{"port": 80, "targetPort": 8080, "newField": 1}], "clusterIP": "10.0.0.1",
                "someFutureField": true, "internalTrafficPolicy": "Cluster"},
            "status": {"loadBalancer": {}}
        });
        let (p, status) = project(by_kind("Service").unwrap(), svc);
        assert_eq!(status, Some(json!({"loadBalancer": {}})));
        assert_eq!(
            p,
            json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "s", "namespace": "apps", "annotations": {"a": "b"}},
                "spec": {"ports": [{"port": 80, "targetPort": 8080}], "clusterIP": "10.0.0.1"}})
        );
        let text = serde_json::to_string(&p).unwrap();
        let m = atrium_model::loader::load_text("s.json", &text);
        assert!(m.diagnostics.is_empty(), "{:?}", m.diagnostics);

        let route = json!({"metadata": {"name": "r", "namespace": "apps", "generation": 3},
            "spec": {"routes": [{"match": "PathPrefix(`/a`)", "services": [{"name": "s", "port": 80}], "matchh": 1}]}});
        let (p, _) = project(by_kind("IngressRoute").unwrap(), route);
        let m = atrium_model::loader::load_text("r.json", &serde_json::to_string(&p).unwrap());
        assert_eq!(m.diagnostics.len(), 1, "a CRD is parsed strictly: {:?}", m.diagnostics);
        assert!(m.diagnostics[0].to_string().contains("unknown field `matchh`"), "{}", m.diagnostics[0]);
    }

    #[test]
    fn endpoint_slices_keep_conditions() {
        let s = json!({"metadata": {"name": "s-1", "namespace": "apps", "labels": {"kubernetes.io/service-name": "s"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": false, "serving": true, "new": 1},
                "targetRef": {"kind": "Pod"}, "hints": {"forZones": []}}],
            "ports": [{"port": 80, "name": ""}]});
        let (p, _) = project(by_kind("EndpointSlice").unwrap(), s);
        assert_eq!(
            p["endpoints"][0],
            json!({"addresses": ["10.0.0.1"], "conditions": {"ready": false, "serving": true}})
        );
        let m = atrium_model::loader::load_text("e.json", &serde_json::to_string(&p).unwrap());
        assert!(m.diagnostics.is_empty(), "{:?}", m.diagnostics);
    }

    #[test]
    fn retries_back_off_whatever_the_watcher_resets() {
        let mut b = RetryBackoff::default();
        let first: Vec<Duration> = (0..3).map(|_| b.next().unwrap()).collect();
        // The watcher reports `Init` (a success) before each list: that is no reason to
        // start again from 200 ms.
        b.reset();
        let later: Vec<Duration> = (0..5).map(|_| b.next().unwrap()).collect();
        assert_eq!(first, [200, 400, 800].map(Duration::from_millis));
        assert_eq!(later, [1600, 3200, 5000, 5000, 5000].map(Duration::from_millis));
    }

    #[test]
    fn a_status_only_change_is_not_a_change() {
        let mut objects = BTreeMap::new();
        let obj = |status: Value, rv: &str| {
            let o: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "hub.traefik.io/v1alpha1", "kind": "Uplink",
                "metadata": {"name": "u", "namespace": "apps", "resourceVersion": rv},
                "spec": {}, "status": status}))
            .unwrap();
            entry_of(WATCHED.iter().position(|k| k.kind == "Uplink").unwrap(), o).unwrap()
        };
        let (k, e) = obj(json!({}), "1");
        assert!(upsert(&mut objects, k, e));
        let (k, e) = obj(json!({"conditions": [{"type": "Ready"}]}), "2");
        assert!(!upsert(&mut objects, k.clone(), e), "status only");
        assert_eq!(objects[&k].resource_version.as_deref(), Some("2"), "what is observed follows");
    }
}
