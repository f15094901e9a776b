//! The control plane's part of the admin API: the data planes it streams to
//! (`/api/dataplanes`), the children it reaches (`/api/children`), the whole picture an
//! operator checks first (`/ui`, and its JSON twin `/api/state`), and its metrics.

use std::sync::Arc;

use atrium_data_plane::proxy::Gateway;
use atrium_data_plane::proxy::admin::{AdminExtra, html_escape};

use crate::publisher::Publisher;

/// What the control plane adds to its node's admin listener.
pub(crate) struct ControlPlaneAdmin {
    pub(crate) publisher: Publisher,
    /// The embedded data plane's gateway (its APIs as compiled).
    pub(crate) gw: Arc<Gateway>,
    /// Whether an embedded data plane serves (then `/readyz` is its own).
    pub(crate) embedded: bool,
    /// The sessions with children (their round-trip times).
    pub(crate) children: Arc<crate::children::Children>,
}

impl ControlPlaneAdmin {
    /// Every configured child: address, whether the parent reaches it, the round-trip time
    /// of its control connection, its uplinks.
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
                let rtt_ms = self.children.rtt(&c.name).map(|d| (d.as_secs_f64() * 1e6).round() / 1e3);
                (
                    c.name.clone(),
                    serde_json::json!({"address": c.address, "reachable": c.reachable, "rttMs": rtt_ms, "uplinks": uplinks}),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

impl ControlPlaneAdmin {
    /// The multi-cluster state: children, data planes, APIs.
    fn state_json(&self) -> serde_json::Value {
        let nodes = self.publisher.hub.nodes_json();
        serde_json::json!({
            "epoch": nodes["epoch"],
            "version": nodes["version"],
            "children": self.children_json(),
            "dataplanes": nodes["dataplanes"],
            "apis": atrium_data_plane::proxy::admin::apis(&self.gw),
        })
    }

    /// [`ControlPlaneAdmin::state_json`] as a page.
    fn state_html(&self) -> String {
        let s = self.state_json();
        let e = |v: &serde_json::Value| {
            html_escape(&match v {
                serde_json::Value::String(t) => t.clone(),
                serde_json::Value::Null => "—".into(),
                other => other.to_string(),
            })
        };
        let mut children = String::new();
        for (name, c) in s["children"].as_object().into_iter().flatten() {
            let uplinks: Vec<String> = c["uplinks"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|u| {
                    let health = if u["healthy"] == true { "healthy" } else { "unhealthy" };
                    format!("{} (weight {}, {health})", e(&u["name"]), e(&u["weight"]))
                })
                .collect();
            let reach = if c["reachable"] == true { "reachable" } else { "unreachable" };
            let rtt = c["rttMs"].as_f64().map_or("—".to_string(), |ms| format!("{ms:.2} ms"));
            children.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td class=\"{reach}\">{reach}</td><td>{rtt}</td><td>{}</td></tr>",
                html_escape(name),
                e(&c["address"]),
                uplinks.join("<br>")
            ));
        }
        let mut planes = String::new();
        for (id, n) in s["dataplanes"].as_object().into_iter().flatten() {
            let applied = &n["appliedVersion"];
            let current = if n["current"] == true { "current" } else { "behind" };
            planes.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}.{}</td><td class=\"{current}\">{current}</td><td>{}</td></tr>",
                html_escape(id),
                e(&n["group"]),
                if n["connected"] == true { "connected" } else { "disconnected" },
                e(&applied["epoch"]),
                e(&applied["seq"]),
                e(&n["lastNack"]),
            ));
        }
        let mut apis = String::new();
        for a in s["apis"].as_array().into_iter().flatten() {
            let routes: Vec<String> = a["routes"].as_array().into_iter().flatten().map(&e).collect();
            let items: Vec<String> = a["catalogItems"].as_array().into_iter().flatten().map(|c| e(&c["id"])).collect();
            apis.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                e(&a["id"]),
                routes.join("<br>"),
                e(&a["spec"]["status"]),
                items.join("<br>")
            ));
        }
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>atrium control plane</title><style>\
             body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:2em}}\
             td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}}\
             .unreachable,.behind{{color:#b00}}.reachable,.current{{color:#070}}</style></head><body>\
             <h1>atrium control plane</h1><p>Snapshot {}.{} (JSON: <code>/api/state</code>)</p>\
             <h2>Children</h2><table><tr><th>child</th><th>address</th><th>reachability</th><th>RTT</th><th>uplinks</th></tr>{children}</table>\
             <h2>Data planes</h2><table><tr><th>node</th><th>group</th><th>stream</th><th>applied</th><th></th><th>last refusal</th></tr>{planes}</table>\
             <h2>APIs</h2><table><tr><th>API</th><th>routes</th><th>spec</th><th>catalog items</th></tr>{apis}</table>\
             </body></html>",
            e(&s["version"]["epoch"]),
            e(&s["version"]["seq"]),
        )
    }
}

impl ControlPlaneAdmin {
    /// The multi-cluster state as gauges, computed at each scrape (every child and uplink
    /// has a sample from the start, not only after an event).
    fn state_metrics(&self) -> String {
        let s = self.state_json();
        let label = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        let mut reach = String::new();
        let mut rtt = String::new();
        let mut healthy = String::new();
        for (name, c) in s["children"].as_object().into_iter().flatten() {
            let r = u8::from(c["reachable"] == true);
            reach.push_str(&format!("atrium_child_reachable{{child=\"{}\"}} {r}\n", label(name)));
            if let Some(ms) = c["rttMs"].as_f64() {
                rtt.push_str(&format!("atrium_child_rtt_seconds{{child=\"{}\"}} {}\n", label(name), ms / 1e3));
            }
            for u in c["uplinks"].as_array().into_iter().flatten() {
                let h = u8::from(u["healthy"] == true);
                let uplink = label(u["name"].as_str().unwrap_or(""));
                healthy
                    .push_str(&format!("atrium_uplink_healthy{{child=\"{}\",uplink=\"{uplink}\"}} {h}\n", label(name)));
            }
        }
        // Connected data planes only: one that went away (a rollout's old pod) is not behind,
        // and one cut off from here says so itself (`atrium_control_plane_connected`).
        let mut current = String::new();
        for (id, n) in s["dataplanes"].as_object().into_iter().flatten().filter(|(_, n)| n["connected"] == true) {
            let c = u8::from(n["current"] == true);
            current.push_str(&format!("atrium_dataplane_current{{node=\"{}\"}} {c}\n", label(id)));
        }
        let mut specs = String::new();
        if let Some(body) = self.publisher.body() {
            for a in body.apis.iter().filter(|a| !a.spec_url.is_empty()) {
                let ok = u8::from(a.spec_status.starts_with("ok"));
                specs.push_str(&format!("atrium_api_spec_ok{{api=\"{}\"}} {ok}\n", label(&a.id)));
            }
        }
        format!(
            "# HELP atrium_child_reachable Whether the parent reaches the child (1) or not (0).\n\
             # TYPE atrium_child_reachable gauge\n{reach}\
             # HELP atrium_child_rtt_seconds Round-trip time of the parent's control connection to the child (QUIC's smoothed estimate).\n\
             # TYPE atrium_child_rtt_seconds gauge\n{rtt}\
             # HELP atrium_uplink_healthy Whether a child's uplink passes its health check (1) or not (0).\n\
             # TYPE atrium_uplink_healthy gauge\n{healthy}\
             # HELP atrium_dataplane_current Whether a connected data plane applied the latest snapshot (1) or not (0).\n\
             # TYPE atrium_dataplane_current gauge\n{current}\
             # HELP atrium_api_spec_ok Whether the last fetch of an API's OpenAPI document succeeded (1) or not (0).\n\
             # TYPE atrium_api_spec_ok gauge\n{specs}"
        )
    }
}

impl AdminExtra for ControlPlaneAdmin {
    fn json(&self, path: &str) -> Option<serde_json::Value> {
        match path {
            "/api/dataplanes" => Some(self.publisher.hub.nodes_json()),
            "/api/children" => Some(self.children_json()),
            "/api/state" => Some(self.state_json()),
            // Without an embedded data plane there is no route table here: ready once a
            // snapshot is published (data planes can take it).
            "/readyz" if !self.embedded => self.publisher.body().map(|_| serde_json::json!({"ready": true})),
            _ => None,
        }
    }
    fn html(&self, path: &str) -> Option<String> {
        (path == "/ui").then(|| self.state_html())
    }
    fn metrics(&self) -> String {
        let mut out = self.publisher.hub.metrics_text();
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(self.state_metrics().trim_end());
        out
    }
    fn endpoints(&self) -> Vec<(&'static str, &'static str)> {
        vec![
            ("/ui", "the multi-cluster state as a page: children, data planes, APIs"),
            ("/api/state", "the same as JSON"),
            ("/api/children", "each child: address, reachability, uplinks with weight and health"),
            ("/api/dataplanes", "each data plane: stream, applied snapshot version, refusals, usage"),
        ]
    }
}
