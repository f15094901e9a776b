//! What the control plane publishes: the compiled manifests merged with the live view of
//! the children and the APIs' fetched specs, republished on every change of any.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use atrium_data_plane::uplink::Liveness;
use atrium_model::compile::{Registry, apply_registry};
use atrium_model::values::Values;
use atrium_proto::v1 as pb;

use crate::children::{Children, Polling};
use crate::hub::Hub;
use crate::specs::Specs;

/// The snapshot is the compiled manifests plus the live view of the children: both kept
/// here, merged and published on every change of either.
#[derive(Clone)]
pub(crate) struct Publisher {
    pub(crate) hub: Arc<Hub>,
    /// The compiled body (for the configured children).
    pub(crate) base: Arc<Mutex<pb::SnapshotBody>>,
    /// The children the parent reaches now, with their uplinks.
    pub(crate) registry: Arc<Mutex<Registry>>,
    /// The APIs' OpenAPI specs as fetched.
    pub(crate) specs: Arc<Specs>,
    /// What the portal's store grants (applications, keys, subscriptions), and where the
    /// portal listens; none without a portal.
    pub(crate) portal: Option<PortalGrants>,
    /// The body published last (what the portal reads).
    pub(crate) last: Arc<Mutex<Arc<pb::SnapshotBody>>>,
}

/// The portal's part of the snapshot.
#[derive(Clone)]
pub(crate) struct PortalGrants {
    /// The store.
    pub(crate) store: atrium_portal::store::Store,
    /// Its grants as last read.
    pub(crate) grants: Arc<Mutex<atrium_portal::store::Grants>>,
    /// Held while the grants are read and replaced: refreshes run one at a time, so a read
    /// that began before a write never replaces one made after it (a store change, a
    /// notification and the periodic read can all start one at once).
    pub(crate) refreshing: Arc<Mutex<()>>,
    /// Where data planes reach the portal.
    pub(crate) address: String,
}

impl Publisher {
    /// The compiled body with the children as the registry sees them now.
    pub(crate) fn body(&self) -> Option<pb::SnapshotBody> {
        let (Ok(b), Ok(r)) = (self.base.lock(), self.registry.lock()) else { return None };
        let mut body = b.clone();
        drop(b);
        apply_registry(&mut body.children, &r);
        self.specs.apply(&mut body.apis);
        if let Some(p) = &self.portal {
            if let Ok(g) = p.grants.lock() {
                atrium_portal::merge_grants(&mut body, &g);
            }
            body.portal_address = p.address.clone();
        }
        Some(body)
    }

    pub(crate) fn publish(&self, detected: Instant) {
        if let Some(body) = self.body() {
            self.hub.publish(&body, detected);
            if let Ok(mut last) = self.last.lock() {
                *last = Arc::new(body);
            }
        }
    }

    /// Creates the portal accounts `values` declares (`portal.users`) that do not exist
    /// yet; a one-time password made for one is logged once. Runs on a blocking thread.
    pub(crate) fn ensure_users(&self, values: &Values) {
        let Some(p) = &self.portal else { return };
        if values.portal_users.is_empty() {
            return;
        }
        let users: Vec<_> =
            values.portal_users.iter().map(|u| (u.email.clone(), u.groups.clone(), u.password_hash.clone())).collect();
        match p.store.ensure_users(&users) {
            Ok(created) => {
                for (email, otp) in created {
                    match otp {
                        Some(otp) => {
                            tracing::warn!(%email, one_time_password = %otp, "portal account created from the values; the one-time password is shown once and must be changed at the first sign-in")
                        }
                        None => tracing::info!(%email, "portal account created from the values"),
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "creating the portal accounts of the values failed"),
        }
    }

    /// Reads the portal store's grants again; publishes when they changed. Runs on a
    /// blocking thread (SQLite).
    pub(crate) fn refresh_grants(&self) {
        let Some(p) = &self.portal else { return };
        let _one_at_a_time = p.refreshing.lock();
        match p.store.grants() {
            Ok(g) => {
                let changed = p.grants.lock().map(|mut cur| std::mem::replace(&mut *cur, g) != *cur).unwrap_or(false);
                if changed {
                    self.publish(Instant::now());
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the portal store failed; data planes keep the previous grants")
            }
        }
    }
}

/// The portal's view of the control plane: the published body, the fetched specs, and
/// the embedded data plane's plan counters (when it runs one).
pub(crate) struct PortalSource(pub(crate) Publisher, pub(crate) Option<Arc<atrium_data_plane::proxy::Gateway>>);

impl atrium_portal::Source for PortalSource {
    fn body(&self) -> Arc<pb::SnapshotBody> {
        self.0.last.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn document(&self, id: &str) -> Option<Arc<serde_json::Value>> {
        self.0.specs.document(id)
    }

    fn store_changed(&self) {
        let p = self.0.clone();
        tokio::task::spawn_blocking(move || p.refresh_grants());
    }

    fn remaining<'a>(&'a self, app_id: &'a str, api: &'a str) -> atrium_portal::Remaining<'a> {
        Box::pin(async move { self.1.as_ref()?.plan_remaining(app_id, api).await })
    }
}

impl Publisher {
    pub(crate) fn set_registry(&self, r: Registry) {
        if let Ok(mut cur) = self.registry.lock() {
            *cur = r;
        }
        self.publish(Instant::now());
    }

    /// A new compiled configuration: published, and the children it lists dialled.
    pub(crate) fn set_config(&self, body: pb::SnapshotBody, values: &Values, children: &Children, liveness: Liveness) {
        let detected = Instant::now();
        let before = self.hub.subscribe().borrow().as_ref().map(|p| p.snapshot.hash.clone());
        let listed = body.children.clone();
        self.specs.follow(&body.apis);
        if let Ok(mut cur) = self.base.lock() {
            *cur = body;
        }
        children.set(&listed, Polling::from_values(values, liveness));
        self.ensure_users(values);
        self.publish(detected);
        if self.hub.subscribe().borrow().as_ref().map(|p| p.snapshot.hash.clone()) == before {
            tracing::info!("configuration read again; it compiles to the same snapshot");
        }
    }
}
