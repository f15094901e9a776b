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
}

impl Publisher {
    /// The compiled body with the children as the registry sees them now.
    pub(crate) fn body(&self) -> Option<pb::SnapshotBody> {
        let (Ok(b), Ok(r)) = (self.base.lock(), self.registry.lock()) else { return None };
        let mut body = b.clone();
        apply_registry(&mut body.children, &r);
        self.specs.apply(&mut body.apis);
        Some(body)
    }

    pub(crate) fn publish(&self, detected: Instant) {
        if let Some(body) = self.body() {
            self.hub.publish(&body, detected);
        }
    }

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
        self.publish(detected);
        if self.hub.subscribe().borrow().as_ref().map(|p| p.snapshot.hash.clone()) == before {
            tracing::info!("configuration read again; it compiles to the same snapshot");
        }
    }
}
