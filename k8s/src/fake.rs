//! An in-process fake Kubernetes API server for tests, speaking the real list/watch HTTP
//! protocol well enough for `kube`'s client and `kube-runtime`'s watcher over plain HTTP.
//!
//! - one in-memory store keyed by (resource type, namespace, name), one global
//!   `resourceVersion` counter bumped on every write that changes something;
//! - lists answer items without `kind`/`apiVersion` (as the real server does), sorted by
//!   namespace/name, with the current version in the list's metadata;
//! - watches replay the kept history after `resourceVersion=N`, then follow live writes;
//!   after [`FakeApiServer::compact`] a version that is too old gets one `ERROR` event with
//!   code 410 (`Expired`) and the stream ends; bookmarks every 500 ms when asked for;
//! - get, create (with `generateName`), update (PUT, with the `resourceVersion`
//!   compare-and-swap), patch (merge patch; apply and strategic patches are treated as merge
//!   patches) and delete, with the `status` subresource for the kinds that have one;
//! - a CRD kind can be uninstalled: it then answers 404 to every request;
//! - every request is logged as RBAC sees it (verb, group, resource, namespace, name).
//!
//! Ignored on purpose: `limit`/`continue` (lists always answer everything, without a
//! `continue` token), `resourceVersion`/`resourceVersionMatch` on lists and gets (always the
//! latest state), `fieldManager`/`force`/`dryRun`, delete options and preconditions,
//! finalizers (deletes are immediate). `PUT` of an object that does not exist answers 404
//! (it never creates); a server-side apply patch of an object that does not exist creates it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;

use crate::kinds::{self, Kind};

/// The first resource version handed out is one more than this.
const FIRST_RESOURCE_VERSION: u64 = 100;
/// How many changes the watch history keeps.
const HISTORY: usize = 10_000;
/// Capacity of the live change channel; a watch that lags further is ended.
const LIVE_CAPACITY: usize = 16_384;
/// How often a watch that allows bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_millis(500);
/// How long a watch without `timeoutSeconds` lasts.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(3600);

type Body = UnsyncBoxBody<Bytes, Infallible>;
/// (namespace, `""` for cluster-scoped kinds; name)
type Key = (String, String);

// ---------------------------------------------------------------------------------------
// Resource types
// ---------------------------------------------------------------------------------------

/// How the server serves one kind: a [`Kind`] (its `status`: has a status subresource)
/// and whether it lives in namespaces.
#[derive(Debug)]
struct ResourceType {
    of: Kind,
    namespaced: bool,
}

impl std::ops::Deref for ResourceType {
    type Target = Kind;
    fn deref(&self) -> &Kind {
        &self.of
    }
}

impl ResourceType {
    /// `plural.group` (or `plural` for core), as in the real server's messages.
    fn qualified(&self) -> String {
        if self.group.is_empty() { self.plural.to_string() } else { format!("{}.{}", self.plural, self.group) }
    }
}

/// A namespaced kind as atrium watches it.
const fn watched(kind: Kind) -> ResourceType {
    ResourceType { of: kind, namespaced: true }
}

const fn core(kind: &'static str, plural: &'static str, namespaced: bool, status: bool) -> ResourceType {
    ResourceType { of: Kind { status, ..kinds::core(kind, plural) }, namespaced }
}

const fn grouped(group: &'static str, kind: &'static str, plural: &'static str) -> ResourceType {
    ResourceType { of: Kind { group, version: "v1", kind, plural, crd: false, status: false }, namespaced: true }
}

const fn traefik(kind: &'static str, plural: &'static str) -> ResourceType {
    watched(kinds::traefik(kind, plural))
}

const fn hub(kind: &'static str, plural: &'static str) -> ResourceType {
    watched(kinds::hub(kind, plural))
}

/// Every kind the fake server knows.
const TYPES: &[ResourceType] = &[
    core("Service", "services", true, true),
    core("Endpoints", "endpoints", true, false),
    core("Secret", "secrets", true, false),
    core("ConfigMap", "configmaps", true, false),
    core("Event", "events", true, false),
    core("Namespace", "namespaces", false, true),
    grouped("discovery.k8s.io", "EndpointSlice", "endpointslices"),
    grouped("coordination.k8s.io", "Lease", "leases"),
    grouped("events.k8s.io", "Event", "events"),
    traefik("IngressRoute", "ingressroutes"),
    traefik("Middleware", "middlewares"),
    traefik("TraefikService", "traefikservices"),
    traefik("ServersTransport", "serverstransports"),
    traefik("TLSOption", "tlsoptions"),
    traefik("IngressRouteTCP", "ingressroutetcps"),
    traefik("IngressRouteUDP", "ingressrouteudps"),
    traefik("MiddlewareTCP", "middlewaretcps"),
    traefik("TLSStore", "tlsstores"),
    traefik("ServersTransportTCP", "serverstransporttcps"),
    hub("Uplink", "uplinks"),
    hub("API", "apis"),
    hub("APIVersion", "apiversions"),
    hub("APIPlan", "apiplans"),
    hub("APIBundle", "apibundles"),
    hub("APICatalogItem", "apicatalogitems"),
    hub("APIPortal", "apiportals"),
    hub("APIPortalAuth", "apiportalauths"),
    hub("APIAuth", "apiauths"),
    hub("ContentItem", "contentitems"),
    hub("ManagedApplication", "managedapplications"),
    hub("ManagedSubscription", "managedsubscriptions"),
    hub("AccessControlPolicy", "accesscontrolpolicies"),
    hub("AIService", "aiservices"),
    hub("APIRateLimit", "apiratelimits"),
];

fn type_by_kind(api_version: &str, kind: &str) -> Option<usize> {
    TYPES.iter().position(|t| t.kind == kind && t.api_version() == api_version)
}

fn type_by_path(group: &str, version: &str, plural: &str) -> Option<usize> {
    TYPES.iter().position(|t| t.group == group && t.version == version && t.plural == plural)
}

/// The type of a test helper's arguments; a kind the server does not know is a test bug.
fn expect_type(api_version: &str, kind: &str) -> usize {
    type_by_kind(api_version, kind)
        .unwrap_or_else(|| panic!("the fake API server does not serve {kind} of {api_version}"))
}

// ---------------------------------------------------------------------------------------
// Public handle
// ---------------------------------------------------------------------------------------

/// One request the fake API server received, as RBAC sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Request {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete` (or `deletecollection`).
    pub verb: String,
    /// The API group, `""` for core.
    pub group: String,
    /// The resource: `plural`, or `plural/status` for the status subresource.
    pub resource: String,
    /// The namespace in the path, if any.
    pub namespace: Option<String>,
    /// The object's name in the path, if any.
    pub name: Option<String>,
}

/// An in-process fake Kubernetes API server on `127.0.0.1`, over plain HTTP/1.1.
///
/// Clones share the server; it stops (connections closed, watches ended) when the last
/// clone is dropped or on [`FakeApiServer::shutdown`].
#[derive(Clone)]
pub struct FakeApiServer {
    inner: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        self.accept.abort();
    }
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer").field("addr", &self.inner.addr).finish_non_exhaustive()
    }
}

impl FakeApiServer {
    /// Starts a server on `127.0.0.1` on a free port, with every kind installed.
    pub async fn start() -> FakeApiServer {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("binding the fake API server on 127.0.0.1:0");
        let addr = listener.local_addr().expect("the fake API server's address");
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (breaker, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new()),
            breaker,
            shutdown: shutdown_rx.clone(),
            open_watches: AtomicUsize::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone(), shutdown_rx));
        FakeApiServer { inner: Arc::new(Handle { shared, addr, shutdown, accept }) }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Stops the server now: no more connections, open connections and watches end.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        self.inner.accept.abort();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.shared.lock()
    }

    /// Creates or replaces an object, as `kubectl apply` would leave it: found by
    /// `apiVersion`, `kind`, `metadata.namespace` (`"default"` when absent for a namespaced
    /// kind) and `metadata.name`. Its `resourceVersion`, `uid`, `creationTimestamp` and
    /// `generation` are the server's; when the kind has a status subresource and `obj` has
    /// no `status`, the stored status is kept. Emits `ADDED` or `MODIFIED` (nothing when
    /// unchanged) and returns the object's resource version.
    ///
    /// Panics on a kind the server does not know or an object without `metadata.name`.
    pub fn apply(&self, obj: Value) -> u64 {
        let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let ty = expect_type(&api_version, &kind);
        let t = &TYPES[ty];
        let name = match obj["metadata"]["name"].as_str() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => panic!("applying a {kind} without metadata.name"),
        };
        let ns = if t.namespaced {
            obj["metadata"]["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or("default").to_string()
        } else {
            String::new()
        };
        let mut obj = obj;
        let mut st = self.lock();
        if t.status && obj.get("status").is_none() {
            let kept = st.objects[ty].get(&(ns.clone(), name.clone())).and_then(|o| o.get("status")).cloned();
            if kept.is_some() {
                set_status(&mut obj, kept);
            }
        }
        let (stored, _) = st.store(ty, &ns, &name, obj);
        resource_version_of(&stored)
    }

    /// Deletes an object (emits `DELETED`); whether it existed. The namespace is ignored
    /// for cluster-scoped kinds.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        let Some(ty) = type_by_kind(api_version, kind) else { return false };
        let ns = if TYPES[ty].namespaced { namespace } else { "" };
        self.lock().remove(ty, ns, name).is_some()
    }

    /// The stored object (with `kind` and `apiVersion`). The namespace is ignored for
    /// cluster-scoped kinds.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let ty = type_by_kind(api_version, kind)?;
        let ns = if TYPES[ty].namespaced { namespace } else { "" };
        self.lock().objects[ty].get(&(ns.to_string(), name.to_string())).cloned()
    }

    /// Every stored object of a kind (with `kind` and `apiVersion`), by namespace and name.
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let Some(ty) = type_by_kind(api_version, kind) else { return Vec::new() };
        self.lock().objects[ty].values().cloned().collect()
    }

    /// Uninstalls a kind (as if its CRD were deleted, its objects kept): every request for
    /// it answers 404 until [`FakeApiServer::install`]. Panics on an unknown kind.
    pub fn uninstall(&self, api_version: &str, kind: &str) {
        let ty = expect_type(api_version, kind);
        self.lock().installed[ty] = false;
    }

    /// Installs a kind again (every kind is installed at start). Panics on an unknown kind.
    pub fn install(&self, api_version: &str, kind: &str) {
        let ty = expect_type(api_version, kind);
        self.lock().installed[ty] = true;
    }

    /// Forgets the watch history: a watch from any version older than the current one
    /// gets `410 Gone` (an `ERROR` event with reason `Expired`).
    pub fn compact(&self) {
        let mut st = self.lock();
        st.history.clear();
        st.floor = st.rv;
    }

    /// Ends every open watch stream (cleanly, as a timeout would): clients watch again.
    pub fn break_watches(&self) {
        self.inner.shared.breaker.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// How many watch streams are open now.
    pub fn open_watches(&self) -> usize {
        self.inner.shared.open_watches.load(Ordering::SeqCst)
    }

    /// Delays every list of a kind by `delay` before it is answered (a slow initial sync).
    /// Panics on an unknown kind.
    pub fn set_list_delay(&self, api_version: &str, kind: &str, delay: Duration) {
        let ty = expect_type(api_version, kind);
        self.lock().list_delay[ty] = Some(delay).filter(|d| !d.is_zero());
    }

    /// Every request received so far (that named an API resource), in order.
    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }

    /// Forgets the requests received so far.
    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    /// How many requests to an object's `status` subresource changed it.
    pub fn status_writes(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> usize {
        let Some(ty) = type_by_kind(api_version, kind) else { return 0 };
        let ns = if TYPES[ty].namespaced { namespace } else { "" };
        self.lock().status_writes.get(&(ty, ns.to_string(), name.to_string())).copied().unwrap_or(0)
    }

    /// The current (latest) resource version.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Writes a kubeconfig for this server (no auth, namespace `default`) to
    /// `dir/kubeconfig`, and returns its path. Panics when it cannot be written.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: fake\n  cluster:\n    server: {url}\n\
             contexts:\n\
             - name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\n\
             users:\n\
             - name: fake\n  user: {{}}\n\
             preferences: {{}}\n",
            url = self.url()
        );
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }
}

// ---------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------

struct Shared {
    state: Mutex<State>,
    /// Bumped by `break_watches`: every watch stream ends.
    breaker: watch::Sender<u64>,
    /// `true` once the server is shut down.
    shutdown: watch::Receiver<bool>,
    open_watches: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("the fake API server's state is poisoned")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One write, as kept in the history and sent to live watches.
struct Change {
    ty: usize,
    kind: ChangeKind,
    rv: u64,
    /// The object after the write (before it, for a delete), with `kind` and `apiVersion`.
    object: Value,
    /// The object before a modification (for label-selector transitions).
    previous: Option<Value>,
    /// `object` serialized once for every watch.
    json: String,
}

struct State {
    rv: u64,
    objects: Vec<BTreeMap<Key, Value>>,
    history: VecDeque<Arc<Change>>,
    /// Changes up to this version may be missing from the history.
    floor: u64,
    installed: Vec<bool>,
    list_delay: Vec<Option<Duration>>,
    requests: Vec<Request>,
    status_writes: HashMap<(usize, String, String), usize>,
    serial: u64,
    seed: u64,
    /// Live changes; sent under the state lock, so in version order.
    live: broadcast::Sender<Arc<Change>>,
}

impl State {
    fn new() -> State {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed);
        State {
            rv: FIRST_RESOURCE_VERSION,
            objects: TYPES.iter().map(|_| BTreeMap::new()).collect(),
            history: VecDeque::new(),
            floor: 0,
            installed: vec![true; TYPES.len()],
            list_delay: vec![None; TYPES.len()],
            requests: Vec::new(),
            status_writes: HashMap::new(),
            serial: 0,
            seed,
            live: broadcast::channel(LIVE_CAPACITY).0,
        }
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn next_random(&mut self) -> u64 {
        self.serial += 1;
        let mut x = self.seed ^ self.serial.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 31;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^ (x >> 29)
    }

    fn uid(&mut self) -> String {
        let a = self.next_random();
        let b = self.next_random();
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            (b >> 48) & 0xfff,
            b & 0xffff_ffff_ffff
        )
    }

    fn generate_name(&mut self, ty: usize, ns: &str, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        loop {
            let mut x = self.next_random();
            let suffix: String = (0..5)
                .map(|_| {
                    let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
                    x /= ALPHABET.len() as u64;
                    c
                })
                .collect();
            let name = format!("{prefix}{suffix}");
            if !self.objects[ty].contains_key(&(ns.to_string(), name.clone())) {
                return name;
            }
        }
    }

    /// Records a change in the history and sends it to live watches.
    fn emit(&mut self, ty: usize, kind: ChangeKind, object: Value, previous: Option<Value>) {
        let json = serde_json::to_string(&object).unwrap_or_default();
        let change = Arc::new(Change { ty, kind, rv: self.rv, object, previous, json });
        self.history.push_back(change.clone());
        while self.history.len() > HISTORY {
            if let Some(old) = self.history.pop_front() {
                self.floor = self.floor.max(old.rv);
            }
        }
        // No receiver is not an error: nobody watches.
        let _ = self.live.send(change);
    }

    /// Stores `new` as (ty, ns, name), the server's fields set; emits the change. Returns
    /// the stored object and whether anything changed (nothing is written otherwise).
    fn store(&mut self, ty: usize, ns: &str, name: &str, mut new: Value) -> (Value, bool) {
        let t = &TYPES[ty];
        normalise(&mut new, t, ns, name);
        let key = (ns.to_string(), name.to_string());
        let old = self.objects[ty].get(&key).cloned();
        let (uid, created, generation) = match &old {
            Some(o) => {
                let bump = u64::from(without_meta_and_status(o) != without_meta_and_status(&new));
                (
                    o["metadata"]["uid"].clone(),
                    o["metadata"]["creationTimestamp"].clone(),
                    o["metadata"]["generation"].as_u64().unwrap_or(1) + bump,
                )
            }
            None => (json!(self.uid()), json!(now_rfc3339()), 1),
        };
        if let Some(m) = meta_mut(&mut new) {
            m.insert("uid".into(), uid);
            m.insert("creationTimestamp".into(), created);
            m.insert("generation".into(), json!(generation));
            match &old {
                Some(o) => {
                    m.insert("resourceVersion".into(), o["metadata"]["resourceVersion"].clone());
                }
                None => {
                    m.remove("resourceVersion");
                }
            }
        }
        if let Some(o) = &old {
            if *o == new {
                return (new, false);
            }
        }
        let rv = self.next_rv();
        if let Some(m) = meta_mut(&mut new) {
            m.insert("resourceVersion".into(), json!(rv.to_string()));
        }
        self.objects[ty].insert(key, new.clone());
        let kind = if old.is_some() { ChangeKind::Modified } else { ChangeKind::Added };
        self.emit(ty, kind, new.clone(), old);
        (new, true)
    }

    /// Removes an object; emits `DELETED` with the object at a new version.
    fn remove(&mut self, ty: usize, ns: &str, name: &str) -> Option<Value> {
        let mut obj = self.objects[ty].remove(&(ns.to_string(), name.to_string()))?;
        let rv = self.next_rv();
        if let Some(m) = meta_mut(&mut obj) {
            m.insert("resourceVersion".into(), json!(rv.to_string()));
        }
        self.emit(ty, ChangeKind::Deleted, obj.clone(), None);
        Some(obj)
    }

    /// POST on a collection.
    fn create(&mut self, ty: usize, ns: &str, mut body: Value) -> Result<Value, ApiError> {
        let t = &TYPES[ty];
        let Some(obj) = body.as_object_mut() else {
            return Err(ApiError::bad_request("the body is not a JSON object"));
        };
        let meta = obj.entry("metadata").or_insert_with(|| json!({}));
        let Some(meta) = meta.as_object_mut() else { return Err(ApiError::bad_request("metadata is not an object")) };
        if t.namespaced {
            if let Some(b) = meta.get("namespace").and_then(Value::as_str).filter(|b| !b.is_empty()) {
                if b != ns {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
            }
        }
        let given = meta.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()).map(str::to_string);
        let prefix = meta.get("generateName").and_then(Value::as_str).map(str::to_string);
        meta.remove("resourceVersion");
        let name = match (given, prefix) {
            (Some(n), _) => n,
            (None, Some(p)) => self.generate_name(ty, ns, &p),
            (None, None) => {
                return Err(ApiError::invalid(
                    t,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
        };
        if self.objects[ty].contains_key(&(ns.to_string(), name.clone())) {
            return Err(ApiError::already_exists(t, &name));
        }
        if t.status {
            set_status(&mut body, None);
        }
        Ok(self.store(ty, ns, &name, body).0)
    }

    /// PUT on an object or its status.
    fn update(
        &mut self,
        ty: usize,
        ns: &str,
        name: &str,
        body: Value,
        status: bool,
    ) -> Result<(Value, bool), ApiError> {
        let t = &TYPES[ty];
        if !body.is_object() {
            return Err(ApiError::bad_request("the body is not a JSON object"));
        }
        if let Some(n) = body["metadata"]["name"].as_str() {
            if n != name {
                return Err(ApiError::bad_request(&format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
        }
        let Some(stored) = self.objects[ty].get(&(ns.to_string(), name.to_string())).cloned() else {
            return Err(ApiError::not_found(t, name));
        };
        check_resource_version(t, name, given_resource_version(&body), &stored)?;
        let new = if status {
            let mut n = stored;
            set_status(&mut n, body.get("status").cloned());
            n
        } else {
            let mut n = body;
            if t.status {
                set_status(&mut n, stored.get("status").cloned());
            }
            n
        };
        Ok(self.store(ty, ns, name, new))
    }

    /// PATCH (merge semantics) on an object or its status.
    fn patch(
        &mut self,
        ty: usize,
        ns: &str,
        name: &str,
        patch: Value,
        status: bool,
        apply: bool,
    ) -> Result<(Value, bool), ApiError> {
        let t = &TYPES[ty];
        let Value::Object(mut patch) = patch else {
            return Err(ApiError::bad_request("the patch is not a JSON object"));
        };
        let stored = self.objects[ty].get(&(ns.to_string(), name.to_string())).cloned();
        let Some(stored) = stored else {
            if apply && !status {
                // Server-side apply creates what does not exist.
                if t.status {
                    patch.remove("status");
                }
                return Ok(self.store(ty, ns, name, Value::Object(patch)));
            }
            return Err(ApiError::not_found(t, name));
        };
        let given = patch.get("metadata").and_then(|m| m.get("resourceVersion")).and_then(Value::as_str);
        check_resource_version(t, name, given, &stored)?;
        if status {
            let mut only = Map::new();
            if let Some(s) = patch.remove("status") {
                only.insert("status".into(), s);
            }
            patch = only;
        } else {
            if t.status {
                patch.remove("status");
            }
            if let Some(Value::Object(m)) = patch.get_mut("metadata") {
                m.remove("resourceVersion");
            }
        }
        let mut new = stored;
        merge_patch(&mut new, &Value::Object(patch));
        Ok(self.store(ty, ns, name, new))
    }
}

/// The `metadata.resourceVersion` a request body names, if any.
fn given_resource_version(body: &Value) -> Option<&str> {
    body.get("metadata")?.get("resourceVersion")?.as_str()
}

/// 409 when a request names a `resourceVersion` other than the stored one.
fn check_resource_version(t: &ResourceType, name: &str, given: Option<&str>, stored: &Value) -> Result<(), ApiError> {
    match given {
        Some(rv) if !rv.is_empty() && Some(rv) != stored["metadata"]["resourceVersion"].as_str() => {
            Err(ApiError::conflict(t, name))
        }
        _ => Ok(()),
    }
}

/// Sets `kind`, `apiVersion`, `metadata.name` and `metadata.namespace` as the server has them.
fn normalise(obj: &mut Value, t: &ResourceType, ns: &str, name: &str) {
    if !obj.is_object() {
        *obj = json!({});
    }
    if let Some(o) = obj.as_object_mut() {
        o.insert("apiVersion".into(), json!(t.api_version()));
        o.insert("kind".into(), json!(t.kind));
        let meta = o.entry("metadata").or_insert_with(|| json!({}));
        if !meta.is_object() {
            *meta = json!({});
        }
        if let Some(m) = meta.as_object_mut() {
            m.insert("name".into(), json!(name));
            if t.namespaced {
                m.insert("namespace".into(), json!(ns));
            } else {
                m.remove("namespace");
            }
        }
    }
}

fn meta_mut(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    obj.get_mut("metadata")?.as_object_mut()
}

fn set_status(obj: &mut Value, status: Option<Value>) {
    if let Some(o) = obj.as_object_mut() {
        match status {
            Some(s) => {
                o.insert("status".into(), s);
            }
            None => {
                o.remove("status");
            }
        }
    }
}

/// What `metadata.generation` follows: everything but `metadata` and `status`.
fn without_meta_and_status(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("metadata");
        o.remove("status");
    }
    v
}

fn resource_version_of(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Some(t) = target.as_object_mut() {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// The current time as RFC 3339, to the second.
fn now_rfc3339() -> String {
    let t = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(t.as_second()).unwrap_or(t).to_string()
}

// ---------------------------------------------------------------------------------------
// Selectors
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl LabelReq {
    fn matches(&self, labels: &Value) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        match self {
            LabelReq::Eq(k, v) => get(k.as_str()) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k.as_str()) != Some(v.as_str()),
            LabelReq::Exists(k) => get(k.as_str()).is_some(),
            LabelReq::NotExists(k) => get(k.as_str()).is_none(),
            LabelReq::In(k, vs) => get(k.as_str()).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => !get(k.as_str()).is_some_and(|l| vs.iter().any(|v| v == l)),
        }
    }
}

/// Splits on the commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_label_selector(s: &str) -> Result<Vec<LabelReq>, String> {
    let mut out = Vec::new();
    for part in split_top_level(s) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        out.push(parse_label_req(part).ok_or_else(|| format!("unable to parse requirement: {part:?}"))?);
    }
    Ok(out)
}

fn parse_label_req(r: &str) -> Option<LabelReq> {
    let valid_key = |k: &str| !k.is_empty() && !k.contains(char::is_whitespace);
    if let Some(k) = r.strip_prefix('!') {
        let k = k.trim();
        return valid_key(k).then(|| LabelReq::NotExists(k.to_string()));
    }
    if let Some((k, v)) = r.split_once("!=") {
        let k = k.trim();
        return valid_key(k).then(|| LabelReq::NotEq(k.to_string(), v.trim().to_string()));
    }
    if let Some((k, v)) = r.split_once("==").or_else(|| r.split_once('=')) {
        let k = k.trim();
        return valid_key(k).then(|| LabelReq::Eq(k.to_string(), v.trim().to_string()));
    }
    match r.split_once(char::is_whitespace) {
        None => valid_key(r).then(|| LabelReq::Exists(r.to_string())),
        Some((k, rest)) => {
            let rest = rest.trim_start();
            let (negate, set) = if let Some(s) = rest.strip_prefix("notin") {
                (true, s)
            } else if let Some(s) = rest.strip_prefix("in") {
                (false, s)
            } else {
                return None;
            };
            let set = set.trim().strip_prefix('(')?.strip_suffix(')')?;
            let values: Vec<String> =
                set.split(',').map(str::trim).filter(|v| !v.is_empty()).map(str::to_string).collect();
            let k = k.to_string();
            Some(if negate { LabelReq::NotIn(k, values) } else { LabelReq::In(k, values) })
        }
    }
}

/// `field=value`, `field==value` or `field!=value`, on a dotted path into the object.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldReq {
    path: Vec<String>,
    value: String,
    negate: bool,
}

impl FieldReq {
    fn matches(&self, obj: &Value) -> bool {
        let mut cur = Some(obj);
        for seg in &self.path {
            cur = cur.and_then(|c| c.get(seg.as_str()));
        }
        let have = match cur {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Bool(b)) => b.to_string(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        };
        (have == self.value) != self.negate
    }
}

fn parse_field_selector(s: &str) -> Result<Vec<FieldReq>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (field, value, negate) = if let Some((f, v)) = part.split_once("!=") {
            (f, v, true)
        } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            (f, v, false)
        } else {
            return Err(format!("invalid field selector: {part:?}"));
        };
        let field = field.trim();
        if field.is_empty() {
            return Err(format!("invalid field selector: {part:?}"));
        }
        out.push(FieldReq {
            path: field.split('.').map(str::to_string).collect(),
            value: value.trim().to_string(),
            negate,
        });
    }
    Ok(out)
}

/// Which objects a list or watch is about.
#[derive(Debug, Clone, Default)]
struct Filter {
    namespace: Option<String>,
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

impl Filter {
    fn parse(namespace: Option<String>, query: &HashMap<String, String>) -> Result<Filter, ApiError> {
        let labels = parse_label_selector(query.get("labelSelector").map(String::as_str).unwrap_or_default())
            .map_err(|e| ApiError::bad_request(&e))?;
        let fields = parse_field_selector(query.get("fieldSelector").map(String::as_str).unwrap_or_default())
            .map_err(|e| ApiError::bad_request(&e))?;
        Ok(Filter { namespace, labels, fields })
    }

    fn matches(&self, obj: &Value) -> bool {
        if let Some(ns) = &self.namespace {
            if obj["metadata"]["namespace"].as_str().unwrap_or_default() != ns.as_str() {
                return false;
            }
        }
        let labels = &obj["metadata"]["labels"];
        self.labels.iter().all(|r| r.matches(labels)) && self.fields.iter().all(|f| f.matches(obj))
    }
}

// ---------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------

/// A failure, answered as a `Status`.
#[derive(Debug)]
struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
    details: Value,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String, details: Value) -> ApiError {
        ApiError { code, reason, message, details }
    }

    fn details(t: &ResourceType, name: &str) -> Value {
        json!({"name": name, "group": t.group, "kind": t.plural})
    }

    /// A path the server does not serve (or a kind not installed).
    fn no_resource() -> ApiError {
        ApiError::new(404, "NotFound", "the server could not find the requested resource".into(), json!({}))
    }

    fn not_found(t: &ResourceType, name: &str) -> ApiError {
        let message = format!("{} \"{name}\" not found", t.qualified());
        ApiError::new(404, "NotFound", message, ApiError::details(t, name))
    }

    fn already_exists(t: &ResourceType, name: &str) -> ApiError {
        let message = format!("{} \"{name}\" already exists", t.qualified());
        ApiError::new(409, "AlreadyExists", message, ApiError::details(t, name))
    }

    fn conflict(t: &ResourceType, name: &str) -> ApiError {
        let message = format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again",
            t.qualified()
        );
        ApiError::new(409, "Conflict", message, ApiError::details(t, name))
    }

    fn bad_request(message: &str) -> ApiError {
        ApiError::new(400, "BadRequest", message.to_string(), json!({}))
    }

    fn invalid(t: &ResourceType, name: &str, message: &str) -> ApiError {
        let message = format!("{} \"{name}\" is invalid: {message}", t.kind);
        ApiError::new(422, "Invalid", message, ApiError::details(t, name))
    }

    fn unsupported_media_type(content_type: &str) -> ApiError {
        let message = format!(
            "the body of the request was in an unknown format ({content_type:?}) - accepted media types include: \
             application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml"
        );
        ApiError::new(415, "UnsupportedMediaType", message, json!({}))
    }

    fn method_not_allowed(method: &str) -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method ({method}) on the requested resource"),
            json!({}),
        )
    }

    fn response(&self) -> Response<Body> {
        json_response(
            self.code,
            &json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "details": self.details, "code": self.code,
            }),
        )
    }
}

fn full_response(status: u16, content: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(content)).boxed_unsync());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn json_response(status: u16, v: &Value) -> Response<Body> {
    full_response(status, serde_json::to_vec(v).unwrap_or_default())
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            _ = until_true(&mut shutdown) => return,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "fake API server: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                r = conn => {
                    if let Err(e) = r {
                        tracing::trace!(error = %e, "fake API server: connection ended");
                    }
                }
                _ = until_true(&mut stop) => {}
            }
        });
    }
}

/// Resolves once the value is `true` or the sender is gone.
async fn until_true(rx: &mut watch::Receiver<bool>) {
    loop {
        let stop = *rx.borrow_and_update();
        if stop {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// A request path, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    group: String,
    version: String,
    namespace: Option<String>,
    plural: String,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return None;
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    // `namespaces/{ns}/{plural}…`, but `namespaces`, `namespaces/{name}` and
    // `namespaces/{name}/status` are the Namespace kind itself.
    let (namespace, rest) = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() && !matches!(tail, ["status"]) => (Some(*ns), tail),
        _ => (None, rest),
    };
    let (plural, name, status) = match rest {
        [plural] => (*plural, None, false),
        [plural, name] => (*plural, Some(*name), false),
        [plural, name, "status"] => (*plural, Some(*name), true),
        _ => return None,
    };
    Some(Route {
        group: group.to_string(),
        version: version.to_string(),
        namespace: namespace.map(str::to_string),
        plural: plural.to_string(),
        name: name.map(str::to_string),
        status,
    })
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space).
fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(a), Some(b)) => {
                    out.push(a * 16 + b);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(shared: Arc<Shared>, req: http::Request<Incoming>) -> Response<Body> {
    let method = req.method().as_str().to_string();
    let Some(route) = parse_path(req.uri().path()) else { return ApiError::no_resource().response() };
    let query = parse_query(req.uri().query().unwrap_or_default());
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (method.as_str(), route.name.is_some()) {
        ("GET", true) => "get".to_string(),
        ("GET", false) if watching => "watch".to_string(),
        ("GET", false) => "list".to_string(),
        ("POST", false) => "create".to_string(),
        ("PUT", true) => "update".to_string(),
        ("PATCH", true) => "patch".to_string(),
        ("DELETE", true) => "delete".to_string(),
        ("DELETE", false) => "deletecollection".to_string(),
        (m, _) => m.to_ascii_lowercase(),
    };
    let resource = if route.status { format!("{}/status", route.plural) } else { route.plural.clone() };
    let (ty, installed) = {
        let mut st = shared.lock();
        st.requests.push(Request {
            verb: verb.clone(),
            group: route.group.clone(),
            resource,
            namespace: route.namespace.clone(),
            name: route.name.clone(),
        });
        let ty = type_by_path(&route.group, &route.version, &route.plural);
        (ty, ty.is_some_and(|ty| st.installed[ty]))
    };
    let Some(ty) = ty.filter(|_| installed) else { return ApiError::no_resource().response() };
    let t = &TYPES[ty];
    let collection_read = route.name.is_none() && (verb == "list" || verb == "watch");
    if (route.namespace.is_some() && !t.namespaced)
        || (t.namespaced && route.namespace.is_none() && !collection_read)
        || (route.status && !t.status)
    {
        return ApiError::no_resource().response();
    }
    let ns = route.namespace.clone().unwrap_or_default();
    let name = route.name.clone().unwrap_or_default();
    match verb.as_str() {
        "list" => list_response(&shared, ty, route.namespace.clone(), &query).await,
        "watch" => watch_response(&shared, ty, route.namespace.clone(), &query),
        "get" => {
            let obj = shared.lock().objects[ty].get(&(ns, name.clone())).cloned();
            match obj {
                Some(o) => json_response(200, &o),
                None => ApiError::not_found(t, &name).response(),
            }
        }
        "delete" => {
            let obj = shared.lock().remove(ty, &ns, &name);
            match obj {
                Some(o) => json_response(200, &o),
                None => ApiError::not_found(t, &name).response(),
            }
        }
        "create" | "update" | "patch" => {
            let patch_kind = if verb == "patch" {
                match content_type.as_str() {
                    "application/merge-patch+json" | "application/strategic-merge-patch+json" => Some(false),
                    "application/apply-patch+yaml" => Some(true),
                    other => return ApiError::unsupported_media_type(other).response(),
                }
            } else {
                None
            };
            let bytes = match req.into_body().collect().await {
                Ok(c) => c.to_bytes(),
                Err(e) => return ApiError::bad_request(&format!("reading the body: {e}")).response(),
            };
            let body: Value = match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(e) => return ApiError::bad_request(&format!("the body is not JSON: {e}")).response(),
            };
            let result = {
                let mut st = shared.lock();
                let result = match patch_kind {
                    None if verb == "create" => st.create(ty, &ns, body).map(|o| (o, true)),
                    None => st.update(ty, &ns, &name, body, route.status),
                    Some(apply) => st.patch(ty, &ns, &name, body, route.status, apply),
                };
                if route.status && matches!(result, Ok((_, true))) {
                    *st.status_writes.entry((ty, ns.clone(), name.clone())).or_default() += 1;
                }
                result
            };
            match result {
                Ok((o, _)) => json_response(if verb == "create" { 201 } else { 200 }, &o),
                Err(e) => e.response(),
            }
        }
        _ => ApiError::method_not_allowed(&method).response(),
    }
}

/// Removes `kind` and `apiVersion`, as the real server does for list items.
fn list_item(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("kind");
        o.remove("apiVersion");
    }
    v
}

async fn list_response(
    shared: &Shared,
    ty: usize,
    namespace: Option<String>,
    query: &HashMap<String, String>,
) -> Response<Body> {
    let filter = match Filter::parse(namespace, query) {
        Ok(f) => f,
        Err(e) => return e.response(),
    };
    let delay = shared.lock().list_delay[ty];
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let (items, rv) = {
        let st = shared.lock();
        let items: Vec<Value> = st.objects[ty].values().filter(|o| filter.matches(o)).map(list_item).collect();
        (items, st.rv)
    };
    let t = &TYPES[ty];
    json_response(
        200,
        &json!({
            "kind": format!("{}List", t.kind),
            "apiVersion": t.api_version(),
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items,
        }),
    )
}

// ---------------------------------------------------------------------------------------
// Watch
// ---------------------------------------------------------------------------------------

/// What one watch stream follows.
struct WatchSpec {
    ty: usize,
    filter: Filter,
    bookmarks: bool,
}

impl WatchSpec {
    /// The event line `change` gives this watch, if any; moves `cursor` past it.
    fn line(&self, change: &Change, cursor: &mut u64) -> Option<Bytes> {
        if change.rv <= *cursor {
            return None;
        }
        *cursor = change.rv;
        if change.ty != self.ty {
            return None;
        }
        let now = self.filter.matches(&change.object);
        let kind = match change.kind {
            ChangeKind::Added => now.then_some("ADDED"),
            ChangeKind::Deleted => now.then_some("DELETED"),
            ChangeKind::Modified => {
                let before = change.previous.as_ref().is_some_and(|p| self.filter.matches(p));
                match (before, now) {
                    (true, true) => Some("MODIFIED"),
                    (false, true) => Some("ADDED"),
                    (true, false) => Some("DELETED"),
                    (false, false) => None,
                }
            }
        }?;
        Some(event_line(kind, &change.json))
    }
}

fn event_line(kind: &str, object_json: &str) -> Bytes {
    Bytes::from(format!("{{\"type\":\"{kind}\",\"object\":{object_json}}}\n"))
}

fn json_line(v: &Value) -> Bytes {
    let mut line = serde_json::to_vec(v).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark_line(t: &ResourceType, rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json_line(&json!({
        "type": "BOOKMARK",
        "object": {"kind": t.kind, "apiVersion": t.api_version(), "metadata": metadata},
    }))
}

fn expired_line(asked: u64, floor: u64) -> Bytes {
    json_line(&json!({
        "type": "ERROR",
        "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {asked} ({floor})"),
            "reason": "Expired", "code": 410,
        },
    }))
}

/// Counts an open watch stream while it lives.
struct OpenWatch(Arc<Shared>);

impl OpenWatch {
    fn new(shared: Arc<Shared>) -> OpenWatch {
        shared.open_watches.fetch_add(1, Ordering::SeqCst);
        OpenWatch(shared)
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

fn watch_response(
    shared: &Arc<Shared>,
    ty: usize,
    namespace: Option<String>,
    query: &HashMap<String, String>,
) -> Response<Body> {
    let t = &TYPES[ty];
    let filter = match Filter::parse(namespace, query) {
        Ok(f) => f,
        Err(e) => return e.response(),
    };
    let start = match query.get("resourceVersion").map(String::as_str) {
        None | Some("" | "0") => None,
        Some(s) => match s.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => return ApiError::bad_request(&format!("invalid resource version: {s:?}")).response(),
        },
    };
    let flag = |k: &str| matches!(query.get(k).map(String::as_str), Some("true" | "1"));
    let spec = WatchSpec { ty, filter, bookmarks: flag("allowWatchBookmarks") };
    let initial_events_end = flag("sendInitialEvents");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
    // Subscribed before the snapshot: a break or a write after it is not missed.
    let breaker = shared.breaker.subscribe();
    let shutdown = shared.shutdown.clone();
    let (live, mut initial, cursor) = {
        let st = shared.lock();
        // Under the lock, as writes are sent: every live change is after the snapshot.
        let live = st.live.subscribe();
        match start {
            Some(n) if n < st.floor => return full_response(200, expired_line(n, st.floor).to_vec()),
            Some(n) => {
                let mut cursor = n;
                let lines: Vec<Bytes> = st.history.iter().filter_map(|c| spec.line(c, &mut cursor)).collect();
                (live, lines, cursor.max(st.rv))
            }
            None => {
                let lines: Vec<Bytes> = st.objects[ty]
                    .values()
                    .filter(|o| spec.filter.matches(o))
                    .map(|o| event_line("ADDED", &serde_json::to_string(o).unwrap_or_default()))
                    .collect();
                (live, lines, st.rv)
            }
        }
    };
    if initial_events_end {
        initial.push(bookmark_line(t, cursor, true));
    }
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let open = OpenWatch::new(shared.clone());
    tokio::spawn(run_watch(spec, live, breaker, shutdown, initial, cursor, timeout, tx, open));
    let body = StreamBody::new(ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b))));
    let mut r = Response::new(body.boxed_unsync());
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

enum Step {
    Stop,
    Bookmark,
    Change(Arc<Change>),
}

#[allow(clippy::too_many_arguments)]
async fn run_watch(
    spec: WatchSpec,
    mut live: broadcast::Receiver<Arc<Change>>,
    mut breaker: watch::Receiver<u64>,
    mut shutdown: watch::Receiver<bool>,
    initial: Vec<Bytes>,
    mut cursor: u64,
    timeout: Duration,
    tx: mpsc::Sender<Bytes>,
    _open: OpenWatch,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    for line in initial {
        if tx.send(line).await.is_err() {
            return;
        }
    }
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + BOOKMARK_EVERY, BOOKMARK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Biased: changes written before a break or a timeout are sent before the end.
        let step = tokio::select! {
            biased;
            _ = tx.closed() => Step::Stop,
            _ = until_true(&mut shutdown) => Step::Stop,
            r = live.recv() => match r {
                Ok(c) => Step::Change(c),
                // Lagged: the client re-lists or resumes from its last version, as with a
                // real server that drops a slow watcher. Closed: the server is gone.
                Err(_) => Step::Stop,
            },
            _ = breaker.changed() => Step::Stop,
            _ = tokio::time::sleep_until(deadline) => Step::Stop,
            _ = ticks.tick(), if spec.bookmarks => Step::Bookmark,
        };
        match step {
            Step::Stop => return,
            Step::Change(c) => {
                if let Some(line) = spec.line(&c, &mut cursor) {
                    if tx.send(line).await.is_err() {
                        return;
                    }
                }
            }
            Step::Bookmark => {
                // What was written before the bookmark is sent before it, so the bookmark's
                // version never skips an event the client has not seen.
                let mut lines = Vec::new();
                let mut stop = false;
                loop {
                    match live.try_recv() {
                        Ok(c) => lines.extend(spec.line(&c, &mut cursor)),
                        Err(broadcast::error::TryRecvError::Empty) => break,
                        Err(_) => {
                            stop = true;
                            break;
                        }
                    }
                }
                for line in lines {
                    if tx.send(line).await.is_err() {
                        return;
                    }
                }
                if stop || tx.send(bookmark_line(&TYPES[spec.ty], cursor, false)).await.is_err() {
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// One HTTP/1.1 request on a fresh connection; the status and the (de-chunked) body.
    async fn http(addr: SocketAddr, method: &str, path: &str, content_type: Option<&str>, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(ct) = content_type {
            req.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read");
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, rest) = text.split_once("\r\n\r\n").expect("a response head");
        let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("a status code");
        let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
        (code, if chunked { dechunk(rest) } else { rest.to_string() })
    }

    fn dechunk(mut s: &str) -> String {
        let mut out = String::new();
        while let Some((size, rest)) = s.split_once("\r\n") {
            let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
            if n == 0 || rest.len() < n {
                break;
            }
            out.push_str(&rest[..n]);
            s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
        }
        out
    }

    fn lines(body: &str) -> Vec<Value> {
        body.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
    }

    fn service(name: &str, labels: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "apps", "labels": labels}, "spec": {"ports": [{"port": 80}]}})
    }

    #[tokio::test]
    async fn lists_hide_kind_and_api_version_and_gets_carry_them() {
        let fake = FakeApiServer::start().await;
        fake.apply(service("b", json!({})));
        fake.apply(service("a", json!({})));
        let (code, body) = http(fake.addr(), "GET", "/api/v1/namespaces/apps/services?limit=500", None, "").await;
        assert_eq!(code, 200, "{body}");
        let list: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(list["kind"], "ServiceList");
        assert_eq!(list["apiVersion"], "v1");
        assert_eq!(list["metadata"]["resourceVersion"], fake.resource_version().to_string());
        let items = list["items"].as_array().unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0]["metadata"]["name"], "a", "sorted by name");
        assert!(items.iter().all(|i| i.get("kind").is_none() && i.get("apiVersion").is_none()));
        assert_eq!(items[0]["metadata"]["generation"], 1);
        let (code, body) = http(fake.addr(), "GET", "/api/v1/namespaces/apps/services/a", None, "").await;
        assert_eq!(code, 200);
        let obj: Value = serde_json::from_str(&body).unwrap();
        assert_eq!((obj["kind"].as_str(), obj["apiVersion"].as_str()), (Some("Service"), Some("v1")));
        let (code, body) = http(fake.addr(), "GET", "/api/v1/namespaces/apps/services/nope", None, "").await;
        assert_eq!(code, 404);
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["reason"], "NotFound");
        assert_eq!(fake.requests().len(), 3);
        assert_eq!(fake.requests()[0].verb, "list");
    }

    #[tokio::test]
    async fn a_watch_from_a_compacted_version_gets_410_gone() {
        let fake = FakeApiServer::start().await;
        let first = fake.apply(service("a", json!({})));
        fake.apply(service("b", json!({})));
        fake.compact();
        let path = format!("/api/v1/namespaces/apps/services?watch=true&resourceVersion={first}&timeoutSeconds=5");
        let (code, body) = http(fake.addr(), "GET", &path, None, "").await;
        assert_eq!(code, 200);
        let events = lines(&body);
        assert_eq!(events.len(), 1, "{body}");
        assert_eq!(events[0]["type"], "ERROR");
        assert_eq!(events[0]["object"]["code"], 410);
        assert_eq!(events[0]["object"]["reason"], "Expired");
        assert_eq!(fake.open_watches(), 0);
    }

    #[tokio::test]
    async fn an_uninstalled_kind_answers_404() {
        let fake = FakeApiServer::start().await;
        fake.uninstall("hub.traefik.io/v1alpha1", "API");
        let (code, body) = http(fake.addr(), "GET", "/apis/hub.traefik.io/v1alpha1/apis", None, "").await;
        assert_eq!(code, 404);
        let status: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status["message"], "the server could not find the requested resource");
        fake.install("hub.traefik.io/v1alpha1", "API");
        let (code, _) = http(fake.addr(), "GET", "/apis/hub.traefik.io/v1alpha1/apis", None, "").await;
        assert_eq!(code, 200);
    }

    #[tokio::test]
    async fn a_status_merge_patch_changes_status_only_and_is_watched() {
        let fake = FakeApiServer::start().await;
        fake.apply(json!({"apiVersion": "hub.traefik.io/v1alpha1", "kind": "API",
            "metadata": {"name": "crm", "namespace": "apps"}, "spec": {"title": "CRM"}}));
        let from = fake.resource_version();
        let addr = fake.addr();
        let watch = tokio::spawn(async move {
            let path = format!(
                "/apis/hub.traefik.io/v1alpha1/namespaces/apps/apis?watch=true&resourceVersion={from}&timeoutSeconds=30"
            );
            http(addr, "GET", &path, None, "").await
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while fake.open_watches() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "the watch opens");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let path = "/apis/hub.traefik.io/v1alpha1/namespaces/apps/apis/crm/status";
        let patch = r#"{"status": {"ready": true}, "spec": {"title": "ignored"}}"#;
        let (code, body) = http(addr, "PATCH", path, Some("application/merge-patch+json"), patch).await;
        assert_eq!(code, 200, "{body}");
        let obj: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(obj["status"]["ready"], true);
        assert_eq!(obj["spec"]["title"], "CRM", "only the status changes");
        assert_eq!(obj["metadata"]["generation"], 1);
        assert_eq!(fake.status_writes("hub.traefik.io/v1alpha1", "API", "apps", "crm"), 1);
        // The same patch again changes nothing: no new version, no count.
        let rv = fake.resource_version();
        let (code, _) = http(addr, "PATCH", path, Some("application/merge-patch+json"), patch).await;
        assert_eq!(code, 200);
        assert_eq!(fake.resource_version(), rv);
        assert_eq!(fake.status_writes("hub.traefik.io/v1alpha1", "API", "apps", "crm"), 1);
        // The main resource ignores a status in a patch; JSON patches are refused.
        let main = "/apis/hub.traefik.io/v1alpha1/namespaces/apps/apis/crm";
        let (code, body) =
            http(addr, "PATCH", main, Some("application/merge-patch+json"), r#"{"status": {"ready": false}}"#).await;
        assert_eq!(code, 200);
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["status"]["ready"], true);
        let (code, _) = http(addr, "PATCH", main, Some("application/json-patch+json"), "[]").await;
        assert_eq!(code, 415);

        fake.break_watches();
        let (code, body) = watch.await.unwrap();
        assert_eq!(code, 200);
        let events: Vec<Value> = lines(&body).into_iter().filter(|e| e["type"] != "BOOKMARK").collect();
        assert_eq!(events.len(), 1, "{body}");
        assert_eq!(events[0]["type"], "MODIFIED");
        assert_eq!(events[0]["object"]["kind"], "API");
        assert_eq!(events[0]["object"]["status"]["ready"], true);
    }

    #[tokio::test]
    async fn updates_compare_resource_versions_and_creates_generate_names() {
        let fake = FakeApiServer::start().await;
        let base = "/apis/coordination.k8s.io/v1/namespaces/traefik/leases";
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}})
        .to_string();
        let lease = lease.as_str();
        let (code, body) = http(fake.addr(), "POST", base, Some("application/json"), lease).await;
        assert_eq!(code, 201, "{body}");
        let mut obj: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(obj["metadata"]["namespace"], "traefik");
        let (code, _) = http(fake.addr(), "POST", base, Some("application/json"), lease).await;
        assert_eq!(code, 409);
        obj["spec"]["holderIdentity"] = json!("b");
        let (code, _) = http(fake.addr(), "PUT", &format!("{base}/l"), None, &obj.to_string()).await;
        assert_eq!(code, 200);
        obj["spec"]["holderIdentity"] = json!("c");
        let (code, body) = http(fake.addr(), "PUT", &format!("{base}/l"), None, &obj.to_string()).await;
        assert_eq!(code, 409, "a stale resourceVersion: {body}");
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["reason"], "Conflict");
        let event = r#"{"metadata": {"generateName": "x."}, "reason": "R"}"#;
        let (code, body) =
            http(fake.addr(), "POST", "/apis/events.k8s.io/v1/namespaces/apps/events", None, event).await;
        assert_eq!(code, 201, "{body}");
        let name = serde_json::from_str::<Value>(&body).unwrap()["metadata"]["name"].as_str().unwrap().to_string();
        assert!(name.starts_with("x.") && name.len() == 7, "{name}");
        assert_eq!(fake.list("events.k8s.io/v1", "Event").len(), 1);
        let verbs: Vec<String> = fake.requests().into_iter().map(|r| r.verb).collect();
        assert_eq!(verbs, ["create", "create", "update", "update", "create"]);
    }

    #[test]
    fn label_selectors_parse_and_match() {
        let sel = parse_label_selector("app=web,tier in (a, b),!legacy,env!=prod,team,zone notin (x)").unwrap();
        assert_eq!(sel.len(), 6);
        let m = |labels: Value| sel.iter().all(|r| r.matches(&labels));
        assert!(m(json!({"app": "web", "tier": "b", "team": "t"})));
        assert!(!m(json!({"app": "web", "tier": "c", "team": "t"})));
        assert!(!m(json!({"app": "web", "tier": "a", "team": "t", "legacy": "1"})));
        assert!(!m(json!({"app": "web", "tier": "a", "team": "t", "env": "prod"})));
        assert!(!m(json!({"app": "web", "tier": "a"})));
        assert!(!m(json!({"app": "web", "tier": "a", "team": "t", "zone": "x"})));
        assert!(parse_label_selector("app==web").unwrap()[0].matches(&json!({"app": "web"})));
        assert!(parse_label_selector("").unwrap().is_empty());
        assert!(parse_label_selector("a b").is_err());
        assert_eq!(percent_decode("app%3Dweb%2Ctier+in+%28a%29"), "app=web,tier in (a)");
        let f = parse_field_selector("metadata.name=a,metadata.namespace!=b").unwrap();
        let obj = json!({"metadata": {"name": "a", "namespace": "c"}});
        assert!(f.iter().all(|r| r.matches(&obj)));
    }

    #[tokio::test]
    async fn selectors_apply_to_lists_and_label_changes_to_watches() {
        let fake = FakeApiServer::start().await;
        fake.apply(service("a", json!({"app": "web"})));
        fake.apply(service("b", json!({"app": "db"})));
        let path = "/api/v1/services?labelSelector=app%3Dweb&fieldSelector=metadata.namespace%3Dapps";
        let (code, body) = http(fake.addr(), "GET", path, None, "").await;
        assert_eq!(code, 200);
        let list: Value = serde_json::from_str(&body).unwrap();
        let names: Vec<&str> =
            list["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["a"]);
        // A watch selecting app=web: b starting to match is ADDED, a stopping is DELETED.
        let from = fake.resource_version();
        fake.apply(service("b", json!({"app": "web"})));
        fake.apply(service("a", json!({"app": "old"})));
        let spec = WatchSpec {
            ty: type_by_kind("v1", "Service").unwrap(),
            filter: Filter { labels: parse_label_selector("app=web").unwrap(), ..Filter::default() },
            bookmarks: false,
        };
        let st = fake.lock();
        let mut cursor = from;
        let kinds: Vec<String> = st
            .history
            .iter()
            .filter_map(|c| spec.line(c, &mut cursor))
            .map(|l| serde_json::from_slice::<Value>(&l).unwrap()["type"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(kinds, ["ADDED", "DELETED"]);
    }

    #[test]
    fn paths_parse() {
        let r = parse_path("/api/v1/namespaces/apps/services/a/status").unwrap();
        assert_eq!(
            (r.namespace.as_deref(), r.plural.as_str(), r.name.as_deref(), r.status),
            (Some("apps"), "services", Some("a"), true)
        );
        let r = parse_path("/api/v1/namespaces/apps").unwrap();
        assert_eq!((r.namespace, r.plural.as_str(), r.name.as_deref()), (None, "namespaces", Some("apps")));
        let r = parse_path("/apis/hub.traefik.io/v1alpha1/apis").unwrap();
        assert_eq!((r.group.as_str(), r.plural.as_str(), r.name), ("hub.traefik.io", "apis", None));
        assert!(parse_path("/version").is_none());
        let now = now_rfc3339();
        assert!(now.len() == 20 && now.ends_with('Z') && now.as_bytes()[10] == b'T', "{now}");
    }
}
