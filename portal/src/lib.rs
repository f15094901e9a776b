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
pub mod markdown;
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

/// What the portal reads from the control plane.
pub trait Source: Send + Sync + 'static {
    /// The snapshot body published now (catalog, APIs, plans, children).
    fn body(&self) -> Arc<pb::SnapshotBody>;
    /// The fetched OpenAPI document of API `id`, override servers applied.
    fn document(&self, id: &str) -> Option<Arc<serde_json::Value>>;
    /// The store changed what the gateway must know (applications, keys, subscriptions):
    /// publish a new snapshot.
    fn store_changed(&self);
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
}

impl Portal {
    /// A portal over `store`, reading `source`.
    pub fn new(store: store::Store, source: Arc<dyn Source>) -> Arc<Portal> {
        Arc::new(Portal {
            store,
            source,
            by_email: auth::LoginLimiter::new(5, Duration::from_secs(900)),
            by_client: auth::LoginLimiter::new(50, Duration::from_secs(900)),
        })
    }
}

/// What the gateway must know from the store, merged into `body`: the portal's
/// applications with their live keys, and a subscription for each subscription made in the
/// portal whose catalog item still exists (its APIs, plan and operation filter).
pub fn merge_grants(body: &mut pb::SnapshotBody, grants: &store::Grants) {
    if grants.applications.is_empty() {
        return;
    }
    body.applications.extend(grants.applications.iter().cloned());
    body.applications.sort_by(|a, b| a.app_id.cmp(&b.app_id));
    body.applications.dedup_by(|a, b| a.app_id == b.app_id);
    for (id, app_id, item) in &grants.subscriptions {
        let Some(ci) = body.catalog_items.iter().find(|c| &c.id == item) else { continue };
        let Some(plan) = ci.plan.clone() else { continue };
        body.subscriptions.push(pb::Subscription {
            id: format!("portal/{id}"),
            weight: 0,
            app_ids: vec![app_id.clone()],
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
    fn grants_join_the_snapshot_with_the_catalog_items_plan() {
        let plan = pb::Plan { id: "apps/standard".into(), title: "Standard".into(), ..Default::default() };
        let mut body = pb::SnapshotBody {
            applications: vec![pb::Application { app_id: "manifest-app".into(), ..Default::default() }],
            catalog_items: vec![pb::CatalogItem {
                id: "apps/item".into(),
                apis: vec!["apps/crm".into()],
                plan: Some(plan.clone()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let grants = store::Grants {
            applications: vec![pb::Application { app_id: "portal-x".into(), ..Default::default() }],
            subscriptions: vec![(7, "portal-x".into(), "apps/item".into()), (8, "portal-x".into(), "apps/gone".into())],
        };
        merge_grants(&mut body, &grants);
        assert_eq!(
            body.applications.iter().map(|a| a.app_id.as_str()).collect::<Vec<_>>(),
            ["manifest-app", "portal-x"]
        );
        assert_eq!(body.subscriptions.len(), 1, "a subscription to an item that is gone grants nothing");
        let s = &body.subscriptions[0];
        assert_eq!(
            (s.id.as_str(), s.app_ids.as_slice(), s.apis.as_slice()),
            ("portal/7", &["portal-x".to_string()][..], &["apps/crm".to_string()][..])
        );
        assert_eq!(s.plan.as_ref(), Some(&plan));
    }
}
