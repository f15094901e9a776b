//! atrium's developer portal, served by the control plane on `--portal ADDR` to data planes
//! only (mutual TLS, data-plane role). A data plane routes a portal host to it and names the
//! APIPortal in [`PORTAL_HEADER`], which it always overwrites.
//!
//! - [`store`]: users, sessions, applications, API keys (SHA-256 only), subscriptions and
//!   the audit log, in SQLite (WAL; durable before acknowledged).
//! - [`auth`]: argon2id passwords, random tokens, the login rate limit.
//! - [`catalog`]: who sees which API with which plan (pure, from the snapshot).
//! - [`openapi`]: a fetched spec as the API page shows it (pure, bounded).
//! - [`markdown`]: untrusted Markdown to HTML that cannot run anything.
//! - `web`: the pages and the REST API under `/api/` (same handlers' logic, one set of
//!   checks: session, CSRF token, same origin).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod catalog;
pub mod logo;
pub mod markdown;
pub mod oidc;
pub mod openapi;
mod pages;
mod rest;
pub mod store;
mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use atrium_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use web::router;

/// The header a data plane names the APIPortal in (`namespace/name`).
pub const PORTAL_HEADER: &str = "x-atrium-portal";

/// What is left of a plan: requests in the rate limit and in the quota.
pub type Remaining<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Option<(Option<u64>, Option<u64>)>> + Send + 'a>>;

/// What the portal reads from the control plane.
pub trait Source: Send + Sync + 'static {
    /// The snapshot body published now (catalog, APIs, plans, children).
    fn body(&self) -> Arc<pb::SnapshotBody>;
    /// The fetched OpenAPI document of API `id`, override servers applied.
    fn document(&self, id: &str) -> Option<Arc<serde_json::Value>>;
    /// The store changed what the gateway must know (applications, keys, subscriptions):
    /// publish a new snapshot.
    fn store_changed(&self);
    /// What is left of the plan application `app_id` calls API `api` on (requests left in
    /// the rate limit and in the quota), as the control plane's own data plane counts them
    /// (or Redis, when it holds the counters); none when it does not know.
    fn remaining<'a>(&'a self, app_id: &'a str, api: &'a str) -> Remaining<'a> {
        let _ = (app_id, api);
        Box::pin(async { None })
    }
}

/// The portal: its store, what it reads from the control plane, the login limits.
pub struct Portal {
    /// The store.
    pub store: store::Store,
    /// The control plane.
    pub source: Arc<dyn Source>,
    /// Failed logins per email.
    pub(crate) by_email: auth::LoginLimiter,
    /// Failed logins per client address.
    pub(crate) by_client: auth::LoginLimiter,
    /// Password checks running at once.
    pub(crate) password_checks: tokio::sync::Semaphore,
    /// OpenID Connect providers.
    pub(crate) oidc: oidc::Providers,
    /// Sign-ins started per client (each stores a pending sign-in).
    pub(crate) oidc_starts: auth::LoginLimiter,
    /// Console keys issued per user (each is a write every data plane hears of).
    pub(crate) console_keys: auth::LoginLimiter,
    /// The APIPortals' logos.
    pub(crate) logos: logo::Logos,
}

impl Portal {
    /// A portal over `store`, reading `source`.
    pub fn new(store: store::Store, source: Arc<dyn Source>) -> Arc<Portal> {
        Arc::new(Portal {
            store,
            source,
            by_email: auth::LoginLimiter::new(5, Duration::from_secs(900)),
            by_client: auth::LoginLimiter::new(50, Duration::from_secs(900)),
            password_checks: tokio::sync::Semaphore::new(4),
            oidc: oidc::Providers::default(),
            oidc_starts: auth::LoginLimiter::new(30, Duration::from_secs(60)),
            console_keys: auth::LoginLimiter::new(10, Duration::from_secs(3600)),
            logos: logo::Logos::default(),
        })
    }
}

/// What the gateway must know from the store, merged into `body`: the portal's
/// applications with their live keys, and a subscription for each subscription made in the
/// portal that still holds: its APIPortal exists, its catalog item exists in the portal's
/// namespace with a plan, and the item still shows to one of the owner's groups (an item
/// whose groups changed stops granting at once). An application whose id a manifest uses
/// already is left out (the manifest's wins) and logged.
pub fn merge_grants(body: &mut pb::SnapshotBody, grants: &store::Grants) {
    if grants.applications.is_empty() {
        return;
    }
    let mut added = Vec::new();
    for a in &grants.applications {
        if body.applications.iter().any(|m| m.app_id == a.app_id) {
            tracing::warn!(app_id = %a.app_id, "a ManagedApplication uses the id of a portal application: the portal's is left out");
            continue;
        }
        added.push(a.app_id.clone());
        body.applications.push(a.clone());
    }
    body.applications.sort_by(|a, b| a.app_id.cmp(&b.app_id));
    for g in &grants.subscriptions {
        if !added.contains(&g.app_id) || !body.portals.iter().any(|p| p.id == g.portal) {
            continue;
        }
        let ns = catalog::namespace(&g.portal);
        let Some(ci) = body.catalog_items.iter().find(|c| c.id == g.catalog_item && catalog::namespace(&c.id) == ns)
        else {
            continue;
        };
        let Some(plan) = ci.plan.clone() else { continue };
        if !catalog::shows_to(ci, &g.groups) {
            continue;
        }
        body.subscriptions.push(pb::Subscription {
            // `@` cannot start a namespace: no ManagedSubscription has this id.
            id: format!("@portal/{}", g.id),
            weight: 0,
            app_ids: vec![g.app_id.clone()],
            apis: ci.apis.clone(),
            plan: Some(plan),
            operation_filter: ci.operation_filter.clone(),
        });
    }
    body.subscriptions.sort_by(|a, b| a.id.cmp(&b.id));
}

/// Serves the portal on `listener` with mutual TLS (`tls` admits data planes only) until
/// `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    portal: Arc<Portal>,
    mut stop: watch::Receiver<bool>,
) {
    let app = router(portal);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    if let Ok(a) = listener.local_addr() {
        tracing::info!(addr = %a, "portal listening (mTLS, data planes only)");
    }
    loop {
        let (tcp, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            _ = stop.changed() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "portal accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (app, acceptor) = (app.clone(), acceptor.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::warn!(%peer, error = %e, "portal refused a peer: TLS handshake failed (a data-plane certificate from this installation's CA is required)");
                    return;
                }
                Err(_) => return,
            };
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "portal connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_join_the_snapshot_while_the_item_still_shows_to_the_owner() {
        let plan = pb::Plan { id: "apps/standard".into(), title: "Standard".into(), ..Default::default() };
        let item = |id: &str, groups: &[&str]| pb::CatalogItem {
            id: id.into(),
            apis: vec!["apps/crm".into()],
            groups: groups.iter().map(|g| g.to_string()).collect(),
            plan: Some(plan.clone()),
            ..Default::default()
        };
        let mut body = pb::SnapshotBody {
            applications: vec![pb::Application { app_id: "manifest-app".into(), ..Default::default() }],
            catalog_items: vec![
                item("apps/item", &["developers"]),
                item("apps/partners-only", &["partners"]),
                item("other/item", &["developers"]),
            ],
            portals: vec![pb::PortalSite { id: "apps/portal".into(), ..Default::default() }],
            ..Default::default()
        };
        let sub = |id, item: &str, portal: &str| store::SubscriptionGrant {
            id,
            app_id: "portal-x".into(),
            catalog_item: item.into(),
            portal: portal.into(),
            groups: vec!["developers".into()],
        };
        let grants = store::Grants {
            applications: vec![
                pb::Application { app_id: "portal-x".into(), ..Default::default() },
                pb::Application {
                    app_id: "manifest-app".into(),
                    keys: vec![pb::ApiKey { sha256: vec![1; 32], suspended: false }],
                    ..Default::default()
                },
            ],
            subscriptions: vec![
                sub(7, "apps/item", "apps/portal"),
                sub(8, "apps/gone", "apps/portal"),
                sub(9, "apps/partners-only", "apps/portal"),
                sub(10, "other/item", "apps/portal"),
                sub(11, "apps/item", "deleted/portal"),
            ],
        };
        merge_grants(&mut body, &grants);
        assert_eq!(
            body.applications.iter().map(|a| a.app_id.as_str()).collect::<Vec<_>>(),
            ["manifest-app", "portal-x"]
        );
        assert!(
            body.applications[0].keys.is_empty(),
            "a colliding portal application does not add keys to the manifest's"
        );
        assert_eq!(
            body.subscriptions.len(),
            1,
            "gone item, item no longer shown, other namespace, deleted portal: none grant"
        );
        let s = &body.subscriptions[0];
        assert_eq!(
            (s.id.as_str(), s.app_ids.as_slice(), s.apis.as_slice()),
            ("@portal/7", &["portal-x".to_string()][..], &["apps/crm".to_string()][..])
        );
        assert_eq!(s.plan.as_ref(), Some(&plan));
    }
}
