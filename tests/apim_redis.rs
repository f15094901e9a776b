//! Global plan limits: two data planes (gateways) keep their plan counters in one real
//! `redis-server`, so a plan's limit holds across both, exactly; when Redis goes away the
//! failure policy applies (open: through uncounted; closed: 503), and when it is back the
//! counting resumes by itself.

mod common;

use std::fs;
use std::time::Duration;

use common::backend;
use common::client::Resp;
use common::gateway::GatewayProc;
use common::redis::RedisServer;

const MANIFESTS: &str = "apiVersion: hub.traefik.io/v1alpha1
kind: API
metadata: {name: crm-api, namespace: ns}
spec: {}
---
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata:
  name: crm
  namespace: ns
  annotations: {hub.traefik.io/api: crm-api}
spec:
  entryPoints: [web]
  routes:
    - match: PathPrefix(`/crm`)
      services: [{name: svc, port: 80}]
---
apiVersion: hub.traefik.io/v1alpha1
kind: APIPlan
metadata: {name: rate, namespace: ns}
spec: {title: Rate, rateLimit: {limit: 100, period: 1h}}
---
apiVersion: hub.traefik.io/v1alpha1
kind: APIPlan
metadata: {name: quota, namespace: ns}
spec: {title: Quota, quota: {limit: 100, period: 1h}}
---
apiVersion: hub.traefik.io/v1alpha1
kind: ManagedApplication
metadata: {name: app-a, namespace: ns}
spec: {appId: app-a, owner: tests, apiKeys: [{value: key-a}]}
---
apiVersion: hub.traefik.io/v1alpha1
kind: ManagedApplication
metadata: {name: app-b, namespace: ns}
spec: {appId: app-b, owner: tests, apiKeys: [{value: key-b}]}
---
apiVersion: hub.traefik.io/v1alpha1
kind: APIPlan
metadata: {name: fast, namespace: ns}
spec: {title: Fast, rateLimit: {limit: 2, period: 1s}}
---
apiVersion: hub.traefik.io/v1alpha1
kind: ManagedApplication
metadata: {name: app-c, namespace: ns}
spec: {appId: app-c, owner: tests, apiKeys: [{value: key-c}]}
---
apiVersion: hub.traefik.io/v1alpha1
kind: ManagedSubscription
metadata: {name: c-fast, namespace: ns}
spec: {apiPlan: {name: fast}, managedApplications: [{name: app-c}], apis: [{name: crm-api}]}
---
apiVersion: hub.traefik.io/v1alpha1
kind: ManagedSubscription
metadata: {name: a-rate, namespace: ns}
spec: {apiPlan: {name: rate}, managedApplications: [{name: app-a}], apis: [{name: crm-api}]}
---
apiVersion: hub.traefik.io/v1alpha1
kind: ManagedSubscription
metadata: {name: b-quota, namespace: ns}
spec: {apiPlan: {name: quota}, managedApplications: [{name: app-b}], apis: [{name: crm-api}]}
";

async fn call(gw: &GatewayProc, key: &str) -> Resp {
    let req = hyper::Request::get(gw.web("/crm/x")).header("authorization", format!("Bearer {key}"));
    common::client::send(&common::client::http1(), req.body(common::client::body("")).unwrap()).await
}

/// `n` requests with `key`, alternating between the two gateways: how many got 200, and
/// every status seen.
async fn alternate(gws: [&GatewayProc; 2], key: &str, n: usize) -> (usize, Vec<u16>) {
    let mut statuses = Vec::with_capacity(n);
    for i in 0..n {
        statuses.push(call(gws[i % 2], key).await.status);
    }
    (statuses.iter().filter(|s| **s == 200).count(), statuses)
}

/// The manifests (with a backend) in `dir/m`, and values naming `redis` in
/// `dir/values.yaml` when one is given.
async fn setup(dir: &std::path::Path, redis: Option<&RedisServer>) -> (backend::Backend, std::path::PathBuf) {
    let be = backend::start("crm", "127.0.0.1").await;
    let manifests = MANIFESTS.to_string() + &common::service_manifests("ns", "svc", &[be.addr]);
    fs::create_dir(dir.join("m")).unwrap();
    fs::write(dir.join("m/apim.yaml"), manifests).unwrap();
    let values =
        redis.map_or(String::new(), |r| format!("hub:\n  redis:\n    endpoints: \"{}\"\n    timeout: 300ms\n", r.addr));
    fs::write(dir.join("values.yaml"), values).unwrap();
    (be, dir.join("m"))
}

/// With `--max-rate-limit-delay`, a request just over the rate waits for its token instead
/// of being refused, with counters in memory and in Redis alike; without it, it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_wait_for_the_next_token_is_taken_when_the_delay_allows_it() {
    let redis = RedisServer::start();
    for shared in [None, Some(&redis)] {
        let tmp = tempfile::tempdir().unwrap();
        let (_be, manifests) = setup(tmp.path(), shared).await;
        let values = tmp.path().join("values.yaml");
        let waits = GatewayProc::start(Some(&values), &manifests, &["--max-rate-limit-delay", "2s"]);
        let refuses = GatewayProc::start(Some(&values), &manifests, &[]);
        // Two tokens a second: the first two go at once, the third waits about half a second.
        let started = std::time::Instant::now();
        let statuses: Vec<u16> =
            [call(&waits, "key-c").await, call(&waits, "key-c").await, call(&waits, "key-c").await]
                .iter()
                .map(|r| r.status)
                .collect();
        assert_eq!(statuses, [200, 200, 200], "redis: {}", shared.is_some());
        assert!(started.elapsed() >= Duration::from_millis(200), "the third request waited: {:?}", started.elapsed());
        let metrics = common::client::get(&format!("http://{}/metrics", waits.admin)).await.body;
        assert!(metrics.contains("plan=\"ns/fast\",result=\"delayed\""), "{metrics}");
        if shared.is_some() {
            // The same counters: the other data plane finds the bucket empty and refuses.
            assert_eq!(call(&refuses, "key-c").await.status, 429);
        } else {
            let statuses: Vec<u16> =
                [call(&refuses, "key-c").await, call(&refuses, "key-c").await, call(&refuses, "key-c").await]
                    .iter()
                    .map(|r| r.status)
                    .collect();
            assert_eq!(statuses, [200, 200, 429]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_data_planes_share_one_plan_limit_in_redis_and_follow_the_failure_policy() {
    let mut redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let (_be, manifests) = setup(tmp.path(), Some(&redis)).await;
    let values = tmp.path().join("values.yaml");
    let open = GatewayProc::start(Some(&values), &manifests, &["--workers", "1"]);
    let closed = GatewayProc::start(Some(&values), &manifests, &["--workers", "1", "--redis-failure-policy", "closed"]);
    assert!(open.wait_logged("plan counters in Redis").await);
    assert!(closed.wait_logged("plan counters in Redis").await);

    // 150 requests over both data planes: exactly the plan's 100 get through, for a rate
    // limit (100 per hour: no token comes back during the test) and for a quota.
    let (ok, statuses) = alternate([&open, &closed], "key-a", 150).await;
    assert_eq!(ok, 100, "{statuses:?}");
    assert!(statuses[..100].iter().all(|s| *s == 200) && statuses[100..].iter().all(|s| *s == 429), "{statuses:?}");
    let (ok, statuses) = alternate([&open, &closed], "key-b", 150).await;
    assert_eq!(ok, 100, "{statuses:?}");
    let r = call(&closed, "key-b").await;
    assert_eq!((r.status, r.header("x-quota-remaining")), (429, Some("0")), "{r:?}");
    assert!(r.body.contains("quota-exceeded"), "{r:?}");
    assert!(r.header("retry-after").is_some());

    // Redis hangs (frozen, its connections open): each request waits at most the timeout
    // before the policy applies, and after three timeouts in a row the data plane
    // reconnects. Thawed, it counts on from where it was: key-a's 100 are used.
    redis.pause();
    let started = std::time::Instant::now();
    for _ in 0..3 {
        let r = call(&closed, "key-a").await;
        assert_eq!(r.status, 503, "{r:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert!(closed.wait_logged("Redis does not answer; reconnecting").await);
    redis.resume();
    common::eventually(Duration::from_secs(20), "counting resumes after a hang", || async {
        (call(&closed, "key-a").await.status == 429).then_some(())
    })
    .await;

    // Redis goes away: the open data plane lets requests through uncounted, the closed one
    // answers 503; both say why in their log and metrics.
    redis.stop();
    let r = call(&open, "key-a").await;
    assert_eq!((r.status, r.header("x-ratelimit-remaining")), (200, None), "{r:?}");
    let r = call(&closed, "key-a").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("limits-unavailable"), "{r:?}");
    assert!(open.wait_logged("plan counters unavailable").await);
    let metrics = common::client::get(&format!("http://{}/metrics", closed.admin)).await.body;
    assert!(common::metric(&metrics, "atrium_plan_counter_failures_total") >= 1, "{metrics}");

    // Redis is back (empty): counting resumes by itself, on both.
    redis.restart();
    for gw in [&open, &closed] {
        let r = common::eventually(Duration::from_secs(20), "counting resumes", || async {
            let r = call(gw, "key-a").await;
            (r.status == 200 && r.header("x-ratelimit-remaining").is_some()).then_some(r)
        })
        .await;
        let left: u64 = r.header("x-ratelimit-remaining").unwrap().parse().unwrap();
        assert!(left < 100, "{r:?}");
    }
    let metrics = common::client::get(&format!("http://{}/metrics", open.admin)).await.body;
    assert!(metrics.contains("atrium_plan_limit_decisions_total{plan=\"ns/rate\",result=\"rejected\"}"), "{metrics}");
}
