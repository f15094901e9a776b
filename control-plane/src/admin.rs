//! The control plane's part of the admin API: the data planes it streams to
//! (`/api/dataplanes`), the children it reaches (`/api/children`), and its metrics.

use atrium_data_plane::proxy::admin::AdminExtra;

use crate::publisher::Publisher;

/// What the control plane adds to its node's admin listener.
pub(crate) struct ControlPlaneAdmin {
    pub(crate) publisher: Publisher,
}

impl ControlPlaneAdmin {
    /// Every configured child: address, whether the parent reaches it, its uplinks.
    fn children_json(&self) -> serde_json::Value {
        let Some(body) = self.publisher.body() else { return serde_json::Value::Null };
        body.children
            .iter()
            .map(|c| {
                let uplinks: Vec<_> = c
                    .uplinks
                    .iter()
                    .map(|u| serde_json::json!({"name": u.name, "weight": u.weight, "healthy": u.healthy}))
                    .collect();
                (
                    c.name.clone(),
                    serde_json::json!({"address": c.address, "reachable": c.reachable, "uplinks": uplinks}),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

impl AdminExtra for ControlPlaneAdmin {
    fn json(&self, path: &str) -> Option<serde_json::Value> {
        match path {
            "/api/dataplanes" => Some(self.publisher.hub.nodes_json()),
            "/api/children" => Some(self.children_json()),
            _ => None,
        }
    }
    fn metrics(&self) -> String {
        self.publisher.hub.metrics_text()
    }
}
