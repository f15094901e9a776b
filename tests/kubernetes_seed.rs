//! The seed end to end with `--provider kubernetes` everywhere: the parent's control plane
//! and both children's agents each read their own (fake, in-process) API server, which
//! holds the seed's manifests as `kubectl apply` would have left them. Requests route
//! through QUIC uplinks as from files; an edit on the parent's API server and a readiness
//! change on a child's are served; the child writes its Uplink's health into its status.

mod common;

use std::time::{Duration, Instant};

use atrium_k8s::fake::FakeApiServer;
use common::backend;
use common::topology::{self, Options, Topology, until_status};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_runs_from_three_api_servers() {
    let crm = backend::start("crm", "127.0.0.2").await;
    let billing = backend::start("billing", "127.0.0.3").await;
    let dir = topology::seed(crm.addr, billing.addr);
    let mut fakes = std::collections::BTreeMap::new();
    let mut kubeconfigs = std::collections::BTreeMap::new();
    for cluster in ["parent", "cluster-a", "cluster-b"] {
        let fake = FakeApiServer::start().await;
        for o in common::kube::objects(&dir.path().join(cluster).join("manifests")) {
            fake.apply(o);
        }
        kubeconfigs.insert(cluster, fake.kubeconfig(&dir.path().join(cluster)).display().to_string());
        fakes.insert(cluster, fake);
    }
    // No manifest on disk is read: move them away.
    for cluster in ["parent", "cluster-a", "cluster-b"] {
        std::fs::rename(dir.path().join(cluster).join("manifests"), dir.path().join(cluster).join("unused")).unwrap();
    }
    let mut opts = Options::default();
    for child in ["cluster-a", "cluster-b"] {
        opts.agent_flags.insert(child, vec!["--provider", "kubernetes", "--kubeconfig", &kubeconfigs[child]]);
    }
    opts.parent_flags = vec![
        "--provider",
        "kubernetes",
        "--kubeconfig",
        &kubeconfigs["parent"],
        "--identity",
        "parent-0",
        "--lease-namespace",
        "traefik",
    ];
    let t = Topology::start(dir.path(), &opts);
    let ws = t.ws();

    // Routed as from files: each API from its own child, with the key; none without.
    let r = until_status(ws, "/crm/health", 200).await;
    assert_eq!(r.header("x-traefik-backend"), Some("cluster-a"));
    let r = until_status(ws, "/billing/health", 200).await;
    assert_eq!(r.header("x-traefik-backend"), Some("cluster-b"));
    let (_, _, r) = common::client::tls_get(ws, "api.example.com", "/crm/health").await;
    assert_eq!(r.status, 401, "API-key auth by default");
    assert!(t.parent.wait_logged("every watched kind is listed").await);

    // The child reports its Uplink's health in the Uplink's status.
    let healthy = |cluster: &str| {
        fakes[cluster]
            .get("hub.traefik.io/v1alpha1", "Uplink", "apps", if cluster == "cluster-a" { "crm" } else { "billing" })
            .and_then(|u| {
                u["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == "Healthy")
                    .map(|c| c["status"].clone())
            })
    };
    common::eventually(Duration::from_secs(10), "cluster-a's Uplink reported healthy", || async {
        (healthy("cluster-a") == Some(Value::from("True"))).then_some(())
    })
    .await;

    // An edit on the parent's API server: the billing route is deleted, then served again.
    let t0 = Instant::now();
    assert!(fakes["parent"].delete("traefik.io/v1alpha1", "IngressRoute", "apps", "billing-api"));
    until_status(ws, "/billing/health", 404).await;
    eprintln!("a deleted IngressRoute stopped being served after {:?}", t0.elapsed());
    let again = common::kube::objects(&dir.path().join("parent/unused"))
        .into_iter()
        .find(|o| o["kind"] == "IngressRoute" && o["metadata"]["name"] == "billing-api")
        .unwrap();
    fakes["parent"].apply(again);
    until_status(ws, "/billing/health", 200).await;

    // A TLS Secret on the parent's API server is served, and its rotation too.
    let secret = |yaml: &str| common::kube::documents(yaml).remove(0);
    let (first_yaml, first_der) = common::tls_secret("apps", "site", "secure.example.com");
    fakes["parent"].apply(secret(&first_yaml));
    fakes["parent"].apply(serde_json::json!({"apiVersion": "traefik.io/v1alpha1", "kind": "IngressRoute",
        "metadata": {"name": "secure", "namespace": "apps"},
        "spec": {"entryPoints": ["websecure"], "tls": {"secretName": "site"},
            "routes": [{"match": "Host(`secure.example.com`)", "kind": "Rule",
                "services": [{"name": "crm@multicluster", "kind": "TraefikService"}]}]}}));
    let served = || async { common::client::tls_get(ws, "secure.example.com", "/crm/health").await };
    common::eventually(Duration::from_secs(10), "the Secret's certificate served", || async {
        let (_, leaf, r) = served().await;
        (leaf == first_der && r.status == 200).then_some(())
    })
    .await;
    let (second_yaml, second_der) = common::tls_secret("apps", "site", "secure.example.com");
    fakes["parent"].apply(secret(&second_yaml));
    common::eventually(Duration::from_secs(10), "the rotated certificate served", || async {
        (served().await.1 == second_der).then_some(())
    })
    .await;

    // On cluster-a, crm's only endpoint stops being ready: its health check fails, the
    // parent answers 503, and the Uplink's status says so.
    let mut slice =
        fakes["cluster-a"].get("discovery.k8s.io/v1", "EndpointSlice", "apps", "crm-service-local").unwrap();
    slice["endpoints"][0]["conditions"]["ready"] = Value::Bool(false);
    fakes["cluster-a"].apply(slice);
    until_status(ws, "/crm/health", 503).await;
    common::eventually(Duration::from_secs(10), "cluster-a's Uplink reported unhealthy", || async {
        (healthy("cluster-a") == Some(Value::from("False"))).then_some(())
    })
    .await;
    assert_eq!(healthy("cluster-b"), Some(Value::from("True")));
    // The parent's leader wrote the APIs' status.
    let api = fakes["parent"].get("hub.traefik.io/v1alpha1", "API", "apps", "crm-api").unwrap();
    assert_eq!(api["status"]["conditions"][0]["reason"], "Accepted", "{api}");
}
