//! The portal on PostgreSQL: two control-plane replicas share one store. A session opened
//! at one works at the other; an application, key and subscription made at one reach the
//! other's data plane (LISTEN/NOTIFY); conflicts are conflicts; nothing is lost on
//! `kill -9`.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::eventually;
use common::portal::{Parent, add_user, json, sign_in};
use common::postgres::PostgresServer;

fn manifests(backend: std::net::SocketAddr) -> String {
    String::from(
        "apiVersion: hub.traefik.io/v1alpha1
kind: APIPortal
metadata: {name: company, namespace: apps}
spec: {title: Company Portal, trustedUrls: ['https://portal.example.com']}
---
",
    ) + &common::portal::portal_route("apps", "company", "portal.test")
        + "apiVersion: hub.traefik.io/v1alpha1
kind: API
metadata: {name: crm, namespace: apps}
spec: {title: CRM API}
---
apiVersion: hub.traefik.io/v1alpha1
kind: APIPlan
metadata: {name: standard, namespace: apps}
spec: {title: Standard Plan, rateLimit: {limit: 100, period: 1m}}
---
apiVersion: hub.traefik.io/v1alpha1
kind: APICatalogItem
metadata: {name: standard, namespace: apps}
spec: {groups: [developers], apis: [{name: crm}], apiPlan: {name: standard}}
---
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata:
  name: crm
  namespace: apps
  annotations: {hub.traefik.io/api: crm}
spec:
  entryPoints: [web]
  routes:
    - match: Host(`api.test`) && PathPrefix(`/crm`)
      services: [{name: svc, port: 80}]
" + &common::service_manifests("apps", "svc", &[backend])
}

fn replica_dir(root: &Path, name: &str, m: &str) -> std::path::PathBuf {
    let d = root.join(name);
    fs::create_dir_all(d.join("m")).unwrap();
    fs::create_dir_all(d.join("specs")).unwrap();
    fs::write(d.join("m/all.yaml"), m).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_postgres_store_and_nothing_is_lost() {
    let pg = PostgresServer::start();
    let url = pg.url();
    let be = common::backend::start("crm", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let m = manifests(be.addr);
    let (da, db) = (replica_dir(tmp.path(), "a", &m), replica_dir(tmp.path(), "b", &m));
    // The CLI works on the shared store too (and migrates it first).
    let otp = add_user(&url, "ann@example.com", &["developers"]);
    let mut a = Parent::start_with(&da, &["--portal-store", &url]).await;
    let b = Parent::start_with(&db, &["--portal-store", &url]).await;

    // Signed in at replica A: the same session works at replica B.
    let ann = sign_in(&a, "portal.test", "ann@example.com", &otp).await;
    let r = b.call("GET", "portal.test", "/api/applications", Some(&ann), None).await;
    assert_eq!(r.status, 200, "a session of the shared store: {r:?}");

    // Made at A, served at B's data plane.
    let app = json(
        &a.call("POST", "portal.test", "/api/applications", Some(&ann), Some(r#"{"name":"shared"}"#.into())).await,
    );
    let id = app["id"].as_i64().unwrap();
    let key = json(
        &a.call("POST", "portal.test", &format!("/api/applications/{id}/keys"), Some(&ann), Some("{}".into())).await,
    )["key"]
        .as_str()
        .unwrap()
        .to_string();
    let sub = r#"{"catalog_item":"apps/standard"}"#.to_string();
    assert_eq!(
        a.call("POST", "portal.test", &format!("/api/applications/{id}/subscriptions"), Some(&ann), Some(sub.clone()))
            .await
            .status,
        201
    );
    let r =
        b.call("POST", "portal.test", &format!("/api/applications/{id}/subscriptions"), Some(&ann), Some(sub)).await;
    assert_eq!(r.status, 409, "the same subscription through the other replica: {r:?}");
    eventually(Duration::from_secs(10), "B's data plane serves the key made at A", || async {
        (b.api("/crm/employees", &key).await.status == 200).then_some(())
    })
    .await;
    // A's data plane learns of the subscription through its own snapshot, which may come a
    // moment after B's: both serve it.
    let r = eventually(Duration::from_secs(10), "A's data plane serves the key too", || async {
        let r = a.api("/crm/employees", &key).await;
        (r.status == 200).then_some(r)
    })
    .await;
    assert!(r.header("x-ratelimit-remaining").is_some(), "{r:?}");

    // Revoked at B: refused at A.
    let apps = json(&b.call("GET", "portal.test", "/api/applications", Some(&ann), None).await);
    let key_id = apps["applications"][0]["keys"][0]["id"].as_i64().unwrap();
    assert_eq!(b.call("DELETE", "portal.test", &format!("/api/keys/{key_id}"), Some(&ann), None).await.status, 200);
    eventually(Duration::from_secs(10), "A's data plane refuses the key revoked at B", || async {
        (a.api("/crm/employees", &key).await.status == 401).then_some(())
    })
    .await;

    // kill -9 a replica and start it again: everything is there.
    a.cp.kill();
    drop(a);
    drop(b);
    let a = Parent::start_with(&da, &["--portal-store", &url]).await;
    let apps = json(&a.call("GET", "portal.test", "/api/applications", Some(&ann), None).await);
    assert_eq!(apps["applications"][0]["name"], "shared", "{apps}");
    assert_eq!(apps["applications"][0]["subscriptions"][0]["catalog_item"], "apps/standard");
    assert_eq!(apps["applications"][0]["keys"][0]["revoked"], true);
}
