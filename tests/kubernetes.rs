//! The Kubernetes provider against an in-process fake API server that speaks the real
//! list/watch protocol (lists without kind/apiVersion on items, watches from a kept history,
//! 410 Gone, 404 for a CRD not installed, the status subresource, Leases):
//! - the seed's parent and children give the same snapshot as from files;
//! - adds, edits and deletes are published within a second; EndpointSlice readiness and
//!   Secret rotation follow;
//! - a broken watch or a 410 re-lists; a slow first list publishes nothing partial; one
//!   invalid object is isolated and reported; a missing CRD never blocks;
//! - status is written once per change by the leader only, and never fed back;
//! - every request the provider made is granted by the RBAC files;
//! - the whole seed runs with `--provider kubernetes` on the parent and both children.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atrium_k8s::fake::FakeApiServer;
use atrium_k8s::rbac::{Component, lease_permissions, watched_permissions};
use atrium_k8s::{LeaseOptions, Options};
use atrium_provider::{Config, KubeSource, Source};
use serde_json::{Value, json};

fn client(fake: &FakeApiServer) -> kube::Client {
    kube::Client::try_from(kube::Config::new(fake.url().parse().unwrap())).unwrap()
}

/// A Kubernetes source reading `fake`, with a leader Lease when `identity` is given.
fn kube_source(fake: &FakeApiServer, values: Option<&Path>, identity: Option<&str>) -> Source {
    kube_source_with(fake, values, identity, Options::default())
}

/// [`kube_source`] with watch options (namespaces, label selector).
fn kube_source_with(fake: &FakeApiServer, values: Option<&Path>, identity: Option<&str>, options: Options) -> Source {
    let lease = identity.map(|id| LeaseOptions {
        namespace: "traefik".into(),
        name: "atrium-control-plane".into(),
        identity: id.into(),
        duration: Duration::from_secs(2),
    });
    let mut k = KubeSource::new(options, Component::ControlPlane, lease);
    k.client = Some(client(fake));
    Source::kubernetes(values.map(Path::to_path_buf), k, Duration::from_millis(20))
}

fn hash(c: &Config) -> Vec<u8> {
    atrium_proto::encode(&c.body).1.to_vec()
}

const SERVICE: &str = r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext", "namespace": "apps"},
    "spec": {"type": "ExternalName", "externalName": "backend.test", "ports": [{"port": 80}]}}"#;

fn route(name: &str, prefix: &str) -> Value {
    json!({"apiVersion": "traefik.io/v1alpha1", "kind": "IngressRoute",
        "metadata": {"name": name, "namespace": "apps"},
        "spec": {"routes": [{"match": format!("PathPrefix(`{prefix}`)"), "kind": "Rule",
            "services": [{"name": "ext", "port": 80}]}]}})
}

fn rules(c: &Config) -> Vec<String> {
    let mut r: Vec<String> = c.body.routers.iter().map(|r| r.rule.clone()).collect();
    r.sort();
    r
}

/// Publications of a watched source, with when each arrived.
struct Published {
    rx: tokio::sync::mpsc::UnboundedReceiver<(Instant, Config)>,
    count: Arc<Mutex<usize>>,
    _watch: atrium_provider::Watch,
}

impl Published {
    fn watch(src: &Source) -> Published {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let count = Arc::new(Mutex::new(0));
        let c = count.clone();
        let _watch = src
            .watch(
                move |cfg| {
                    *c.lock().unwrap() += 1;
                    let _ = tx.send((Instant::now(), cfg));
                },
                |why| panic!("refused: {why}"),
            )
            .unwrap();
        Published { rx, count, _watch }
    }

    /// The first publication (within 10 s) that `want` accepts; when it arrived.
    async fn until(&mut self, what: &str, want: impl Fn(&Config) -> bool) -> (Instant, Config) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((t, c))) if want(&c) => return (t, c),
                Ok(Some(_)) => continue,
                _ => panic!("no publication where {what} within 10 s"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_through_the_api_server_compiles_to_the_same_snapshot_as_from_files() {
    for cluster in ["parent", "cluster-a", "cluster-b"] {
        let dir = common::example().join(cluster);
        let values = dir.join("values.yaml");
        let files = Source::files(Some(values.clone()), vec![dir.join("manifests")], Duration::from_millis(20))
            .compile_blocking()
            .await
            .unwrap();
        assert!(files.left_out.is_empty(), "{cluster}: {:?}", files.left_out);
        let fake = FakeApiServer::start().await;
        for o in common::kube::objects(&dir.join("manifests")) {
            fake.apply(o);
        }
        let kube = kube_source(&fake, Some(&values), None).compile_blocking().await.unwrap();
        assert!(kube.left_out.is_empty(), "{cluster}: {:?}", kube.left_out);
        assert!(!kube.body.routers.is_empty(), "{cluster}");
        assert_eq!(hash(&kube), hash(&files), "{cluster}: the same snapshot as from files");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adds_edits_and_deletes_are_published_within_a_second() {
    let fake = FakeApiServer::start().await;
    fake.apply(serde_json::from_str(SERVICE).unwrap());
    fake.apply(route("a", "/a"));
    let src = kube_source(&fake, None, None);
    let first = src.compile_blocking().await.unwrap();
    assert_eq!(rules(&first), ["PathPrefix(`/a`)"]);
    let mut published = Published::watch(&src);

    let t = Instant::now();
    fake.apply(route("b", "/b"));
    let (at, _) = published.until("b is added", |c| rules(c).len() == 2).await;
    assert!(at - t < Duration::from_secs(1), "add published after {:?}", at - t);

    let t = Instant::now();
    fake.apply(route("b", "/b2"));
    let (at, c) = published.until("b is edited", |c| rules(c).contains(&"PathPrefix(`/b2`)".to_string())).await;
    assert!(at - t < Duration::from_secs(1), "edit published after {:?}", at - t);
    assert_eq!(rules(&c), ["PathPrefix(`/a`)", "PathPrefix(`/b2`)"]);

    let t = Instant::now();
    assert!(fake.delete("traefik.io/v1alpha1", "IngressRoute", "apps", "a"));
    let (at, c) = published.until("a is deleted", |c| rules(c).len() == 1).await;
    assert!(at - t < Duration::from_secs(1), "delete published after {:?}", at - t);
    assert_eq!(rules(&c), ["PathPrefix(`/b2`)"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_slices_serve_ready_endpoints_only() {
    let fake = FakeApiServer::start().await;
    fake.apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "crm", "namespace": "apps"},
        "spec": {"ports": [{"port": 80, "targetPort": 8080}], "clusterIP": "10.0.0.9", "ipFamilies": ["IPv4"]}}));
    let slice = |ready_b: bool| {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "crm-x1", "namespace": "apps", "labels": {"kubernetes.io/service-name": "crm"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.1.0.1"], "conditions": {"ready": true, "serving": true, "terminating": false},
                 "nodeName": "n1", "targetRef": {"kind": "Pod", "name": "a"}},
                {"addresses": ["10.1.0.2"], "conditions": {"ready": ready_b}}],
            "ports": [{"name": "", "port": 8080, "protocol": "TCP"}]})
    };
    fake.apply(slice(false));
    let mut r = route("crm", "/crm");
    r["spec"]["routes"][0]["services"][0]["name"] = json!("crm");
    fake.apply(r);
    let src = kube_source(&fake, None, None);
    let servers = |c: &Config| {
        use atrium_proto::v1::service::Kind;
        let mut s: Vec<String> = c
            .body
            .services
            .iter()
            .filter_map(|s| match &s.kind {
                Some(Kind::LoadBalancer(lb)) => Some(lb.servers.iter().map(|sv| sv.url.clone())),
                _ => None,
            })
            .flatten()
            .collect();
        s.sort();
        s
    };
    let first = src.compile_blocking().await.unwrap();
    assert!(first.left_out.is_empty(), "a Service as the API server sends it reads: {:?}", first.left_out);
    assert_eq!(servers(&first), ["http://10.1.0.1:8080"], "the endpoint that is not ready is not served");
    let mut published = Published::watch(&src);
    fake.apply(slice(true));
    let (_, c) = published.until("both endpoints are ready", |c| servers(c).len() == 2).await;
    assert_eq!(servers(&c), ["http://10.1.0.1:8080", "http://10.1.0.2:8080"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_changes_the_served_certificate() {
    let fake = FakeApiServer::start().await;
    fake.apply(serde_json::from_str(SERVICE).unwrap());
    let secret = |pem: &(String, Vec<u8>)| common::kube::documents(&pem.0).remove(0);
    let first_cert = common::tls_secret("apps", "site", "a.test");
    fake.apply(secret(&first_cert));
    let mut r = route("secure", "/");
    r["spec"]["routes"][0]["match"] = json!("Host(`a.test`)");
    r["spec"]["tls"] = json!({"secretName": "site"});
    fake.apply(r);
    let src = kube_source(&fake, None, None);
    let first = src.compile_blocking().await.unwrap();
    assert_eq!(first.body.tls_certificates.len(), 1, "{:?}", first.left_out);
    let pem_of = |c: &Config| c.body.tls_certificates[0].cert_pem.clone();
    let before = pem_of(&first);
    let mut published = Published::watch(&src);
    let second = common::tls_secret("apps", "site", "a.test");
    fake.apply(secret(&second));
    let (_, c) = published
        .until("the new certificate", |c| c.body.tls_certificates.first().is_some_and(|t| t.cert_pem != before))
        .await;
    assert_eq!(c.body.tls_certificates[0].server_names, ["a.test"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_watch_and_410_gone_relist_and_catch_up() {
    let fake = FakeApiServer::start().await;
    fake.apply(serde_json::from_str(SERVICE).unwrap());
    fake.apply(route("a", "/a"));
    fake.apply(route("b", "/b"));
    let src = kube_source(&fake, None, None);
    src.compile_blocking().await.unwrap();
    let mut published = Published::watch(&src);
    // Watches broken mid-stream, and the history they would resume from forgotten: what
    // changed meanwhile (b deleted, c added) is picked up by the re-list, in one step.
    fake.compact();
    fake.break_watches();
    assert!(fake.delete("traefik.io/v1alpha1", "IngressRoute", "apps", "b"));
    fake.apply(route("c", "/c"));
    fake.compact();
    let (_, c) = published.until("the re-list", |c| rules(c) == ["PathPrefix(`/a`)", "PathPrefix(`/c`)"]).await;
    assert!(c.left_out.is_empty());
    // Watching again: a later edit arrives as usual.
    common::eventually(Duration::from_secs(10), "watches open again", || async {
        (fake.open_watches() >= atrium_k8s::kinds::WATCHED.len()).then_some(())
    })
    .await;
    fake.apply(route("d", "/d"));
    published.until("d after the re-list", |c| rules(c).len() == 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_first_list_publishes_nothing_partial() {
    let fake = FakeApiServer::start().await;
    fake.apply(serde_json::from_str(SERVICE).unwrap());
    fake.apply(route("a", "/a"));
    fake.set_list_delay("v1", "Service", Duration::from_millis(1500));
    let src = kube_source(&fake, None, None);
    let t = Instant::now();
    let first = src.compile_blocking().await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(1400), "the first compile waited for every list");
    assert_eq!(rules(&first), ["PathPrefix(`/a`)"], "the route with its Service, not without it");
    assert!(first.left_out.is_empty(), "{:?}", first.left_out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_object_is_isolated_reported_and_the_rest_served() {
    let fake = FakeApiServer::start().await;
    fake.apply(serde_json::from_str(SERVICE).unwrap());
    fake.apply(route("good", "/good"));
    let mut bad = route("bad", "/bad");
    bad["spec"]["routes"][0]["match"] = json!("PathPrefix(`/bad`");
    fake.apply(bad);
    // A route behind a Middleware that is invalid: never served without it.
    fake.apply(json!({"apiVersion": "traefik.io/v1alpha1", "kind": "Middleware",
        "metadata": {"name": "auth", "namespace": "apps"}, "spec": {"basicAuth": {"secret": "missing"}}}));
    let mut guarded = route("guarded", "/guarded");
    guarded["spec"]["routes"][0]["middlewares"] = json!([{"name": "auth"}]);
    fake.apply(guarded);
    // An API whose spec breaks its upstream schema, and a valid one.
    fake.apply(json!({"apiVersion": "hub.traefik.io/v1alpha1", "kind": "API",
        "metadata": {"name": "broken", "namespace": "apps"}, "spec": {"openApiSpec": {"url": 5}}}));
    fake.apply(json!({"apiVersion": "hub.traefik.io/v1alpha1", "kind": "API",
        "metadata": {"name": "fine", "namespace": "apps"}, "spec": {}}));
    let src = kube_source(&fake, None, Some("replica-1"));
    let c = src.compile_blocking().await.unwrap();
    assert_eq!(rules(&c), ["PathPrefix(`/good`)"]);
    let problems = c.problems();
    for o in ["IngressRoute apps/bad", "Middleware apps/auth", "IngressRoute apps/guarded", "API apps/broken"] {
        assert!(problems.contains_key(o), "{o} reported: {problems:?}");
    }
    assert!(c.body.apis.iter().any(|a| a.id == "apps/fine") && !c.body.apis.iter().any(|a| a.id == "apps/broken"));
    // Reported on the objects: a Ready=False condition where the kind has a status, an
    // Event where it has not.
    let ready = |name: &str| {
        fake.get("hub.traefik.io/v1alpha1", "API", "apps", name)
            .and_then(|o| o["status"]["conditions"].as_array().cloned())
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
    };
    let broken = common::eventually(Duration::from_secs(10), "the broken API's status", || async {
        ready("broken").filter(|c| c["status"] == "False")
    })
    .await;
    assert_eq!(broken["reason"], "Invalid");
    assert!(broken["message"].as_str().unwrap().contains("spec.openApiSpec"), "{broken}");
    let fine = common::eventually(Duration::from_secs(10), "the fine API's status", || async { ready("fine") }).await;
    assert_eq!((fine["status"].as_str(), fine["reason"].as_str()), (Some("True"), Some("Accepted")));
    let events = common::eventually(Duration::from_secs(10), "an Event per invalid route", || async {
        let evs = fake.list("events.k8s.io/v1", "Event");
        (evs.len() >= 3).then_some(evs)
    })
    .await;
    let about: Vec<String> = events
        .iter()
        .map(|e| format!("{} {}", e["regarding"]["kind"].as_str().unwrap(), e["regarding"]["name"].as_str().unwrap()))
        .collect();
    for o in ["IngressRoute bad", "IngressRoute guarded", "Middleware auth"] {
        assert!(about.contains(&o.to_string()), "{o}: {about:?}");
    }
    assert!(events.iter().all(|e| e["type"] == "Warning" && e["reason"] == "InvalidConfiguration"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_crd_is_treated_as_empty_and_checked_again() {
    let fake = FakeApiServer::start().await;
    fake.apply(serde_json::from_str(SERVICE).unwrap());
    fake.apply(route("a", "/a"));
    for k in atrium_k8s::kinds::WATCHED.iter().filter(|k| k.group == "hub.traefik.io") {
        fake.uninstall(&k.api_version(), k.kind);
    }
    let src = kube_source(&fake, None, None);
    let first = tokio::time::timeout(Duration::from_secs(10), src.compile_blocking())
        .await
        .expect("a missing CRD never hangs startup")
        .unwrap();
    assert_eq!(rules(&first), ["PathPrefix(`/a`)"]);
    let mut published = Published::watch(&src);
    // Installed later: its objects are read without a restart.
    fake.install("hub.traefik.io/v1alpha1", "API");
    fake.apply(json!({"apiVersion": "hub.traefik.io/v1alpha1", "kind": "API",
        "metadata": {"name": "late", "namespace": "apps"}, "spec": {}}));
    published.until("the API of the CRD installed later", |c| c.body.apis.iter().any(|a| a.id == "apps/late")).await;
    // Once listed, a kind the server stops serving keeps its last objects (a deleted CRD's
    // objects are deleted first): an APIAuth never vanishes into API-key fallback.
    fake.uninstall("hub.traefik.io/v1alpha1", "API");
    fake.break_watches();
    fake.apply(route("b", "/b"));
    let (_, c) = published.until("the next change", |c| rules(c).len() == 2).await;
    assert!(c.body.apis.iter().any(|a| a.id == "apps/late"), "the API stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_written_once_per_change_and_never_fed_back() {
    let fake = FakeApiServer::start().await;
    fake.apply(json!({"apiVersion": "hub.traefik.io/v1alpha1", "kind": "API",
        "metadata": {"name": "crm", "namespace": "apps"}, "spec": {}}));
    let src = kube_source(&fake, None, Some("replica-1"));
    src.compile_blocking().await.unwrap();
    let published = Published::watch(&src);
    let writes = || fake.status_writes("hub.traefik.io/v1alpha1", "API", "apps", "crm");
    common::eventually(Duration::from_secs(10), "the first status", || async { (writes() == 1).then_some(()) }).await;
    // The write comes back as a watch event: no recompile, no second write.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(writes(), 1, "written once");
    let settled = *published.count.lock().unwrap();
    assert!(settled <= 1, "the status write did not trigger a recompile ({settled} publications)");
    let status = fake.get("hub.traefik.io/v1alpha1", "API", "apps", "crm").unwrap()["status"].clone();
    assert_eq!(status["conditions"][0]["observedGeneration"], 1, "{status}");
    // A spec change is a new generation: written again, once.
    fake.apply(json!({"apiVersion": "hub.traefik.io/v1alpha1", "kind": "API",
        "metadata": {"name": "crm", "namespace": "apps"}, "spec": {"title": "CRM"}}));
    common::eventually(Duration::from_secs(10), "the status of generation 2", || async {
        (writes() == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(writes(), 2);
    let status = fake.get("hub.traefik.io/v1alpha1", "API", "apps", "crm").unwrap()["status"].clone();
    assert_eq!(status["conditions"][0]["observedGeneration"], 2, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_writes_and_another_replica_takes_over() {
    let fake = FakeApiServer::start().await;
    fake.apply(json!({"apiVersion": "hub.traefik.io/v1alpha1", "kind": "API",
        "metadata": {"name": "crm", "namespace": "apps"}, "spec": {}}));
    let one = kube_source(&fake, None, Some("replica-1"));
    one.compile_blocking().await.unwrap();
    let holder = || {
        fake.get("coordination.k8s.io/v1", "Lease", "traefik", "atrium-control-plane")
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
    };
    common::eventually(Duration::from_secs(10), "replica-1 leads", || async {
        (holder().as_deref() == Some("replica-1")).then_some(())
    })
    .await;
    let two = kube_source(&fake, None, Some("replica-2"));
    two.compile_blocking().await.unwrap();
    let writes = || fake.status_writes("hub.traefik.io/v1alpha1", "API", "apps", "crm");
    common::eventually(Duration::from_secs(10), "the leader's status", || async { (writes() == 1).then_some(()) })
        .await;
    // Both replicas serve; replica-2 does not write while replica-1 leads.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(holder().as_deref(), Some("replica-1"));
    assert!(one.kubernetes_started().unwrap().leader.is_leader());
    assert!(!two.kubernetes_started().unwrap().leader.is_leader());
    assert_eq!(writes(), 1);
    // replica-1 stops: replica-2 takes the Lease and writes what changes next.
    one.kubernetes_started().unwrap().leader.resign().await;
    drop(one);
    common::eventually(Duration::from_secs(10), "replica-2 leads", || async {
        (holder().as_deref() == Some("replica-2")).then_some(())
    })
    .await;
    let two_compiles = two.clone();
    let _watch = Published::watch(&two_compiles);
    fake.apply(json!({"apiVersion": "hub.traefik.io/v1alpha1", "kind": "API",
        "metadata": {"name": "crm", "namespace": "apps"}, "spec": {"title": "CRM"}}));
    common::eventually(Duration::from_secs(10), "the new leader's write", || async { (writes() == 2).then_some(()) })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_the_provider_makes_is_granted_by_its_role() {
    let fake = FakeApiServer::start().await;
    for o in common::kube::objects(&common::example().join("parent/manifests")) {
        fake.apply(o);
    }
    let mut bad = route("bad", "/bad");
    bad["spec"]["routes"][0]["match"] = json!("Nope(`x`)");
    fake.apply(bad);
    let src = kube_source(&fake, Some(&common::example().join("parent/values.yaml")), Some("replica-1"));
    src.compile_blocking().await.unwrap();
    let _watch = Published::watch(&src);
    common::eventually(Duration::from_secs(10), "status and an Event written", || async {
        let reqs = fake.requests();
        (reqs.iter().any(|r| r.verb == "patch") && reqs.iter().any(|r| r.verb == "create" && r.resource == "events"))
            .then_some(())
    })
    .await;
    let allowed: std::collections::BTreeSet<_> =
        watched_permissions(Component::ControlPlane).union(&lease_permissions()).cloned().collect();
    for r in fake.requests() {
        let p = (r.group.clone(), r.resource.clone(), r.verb.clone());
        assert!(allowed.contains(&p), "{p:?} is not granted by deploy/rbac");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_and_the_label_selector_narrow_what_is_read_as_traefik_does() {
    let fake = FakeApiServer::start().await;
    for ns in ["apps", "payments", "other"] {
        let mut svc: Value = serde_json::from_str(SERVICE).unwrap();
        svc["metadata"]["namespace"] = json!(ns);
        fake.apply(svc);
        let mut r = route(&format!("r-{ns}"), &format!("/{ns}"));
        r["metadata"]["namespace"] = json!(ns);
        r["metadata"]["labels"] = json!({"team": if ns == "payments" { "billing" } else { "crm" }});
        fake.apply(r);
    }
    let options =
        Options { namespaces: vec!["apps".into(), "payments".into()], label_selector: Some("team=crm".into()) };
    let src = kube_source_with(&fake, None, None, options);
    let c = src.compile_blocking().await.unwrap();
    // `other` is not watched; the payments route does not match the selector; the Services
    // (core kind) are read whatever their labels.
    assert_eq!(rules(&c), ["PathPrefix(`/apps`)"]);
    assert!(c.left_out.is_empty(), "{:?}", c.left_out);
    let mut published = Published::watch(&src);
    // A label change brings a route in; one in an unwatched namespace never comes.
    let mut r = route("r-payments", "/payments");
    r["metadata"]["namespace"] = json!("payments");
    r["metadata"]["labels"] = json!({"team": "crm"});
    fake.apply(r);
    let mut r = route("r-other2", "/other2");
    r["metadata"]["namespace"] = json!("other");
    r["metadata"]["labels"] = json!({"team": "crm"});
    fake.apply(r);
    let (_, c) = published.until("the relabelled route", |c| rules(c).len() == 2).await;
    assert_eq!(rules(&c), ["PathPrefix(`/apps`)", "PathPrefix(`/payments`)"]);
    // Every watch was scoped: no request listed all namespaces.
    assert!(fake.requests().iter().filter(|r| r.verb == "list" || r.verb == "watch").all(|r| r.namespace.is_some()));
}
