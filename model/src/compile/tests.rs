use std::path::PathBuf;

use atrium_proto::v1::service::Kind;

use super::*;
use crate::loader::{load_paths, load_text};
use crate::topology;

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/multi-cluster-portal")
}

fn child_values() -> Values {
    let (v, d) = Values::load(&example().join("cluster-a/values.yaml"));
    assert!(d.is_empty(), "{d:?}");
    v
}

const ROUTE: &str = "apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata:
  name: r
  namespace: apps
spec:
  routes:
    - match: PathPrefix(`/a`)
      services:
        - name: svc
          port: 80
    - match: PathPrefix(`/b`)
      services:
        - name: svc
          port: 80
---
apiVersion: v1
kind: Service
metadata:
  name: svc
  namespace: apps
spec:
  ports:
    - port: 80
      name: http
---
apiVersion: v1
kind: Endpoints
metadata:
  name: svc
  namespace: apps
subsets:
  - addresses:
      - ip: 10.0.0.2
      - ip: 10.0.0.1
    ports:
      - port: 8080
        name: http
";

#[test]
fn seed_child_compiles_to_the_expected_router_and_service() {
    let m = load_paths(&[example().join("cluster-a/manifests")]);
    assert!(m.diagnostics.is_empty(), "{:?}", m.diagnostics);
    let c = compile(&m, &child_values(), None);
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
    let r = &c.body.routers[0];
    assert_eq!(r.id, "apps/crm-api/0");
    assert_eq!(r.entry_points, vec!["web"]);
    assert_eq!(r.middlewares, vec!["apps/backend-headers", "apps/strip-crm-prefix"]);
    assert_eq!(r.uplinks, vec!["crm"]);
    assert_eq!(r.service, "apps/crm-service:80");
    let svc = c.body.services.iter().find(|s| s.id == r.service).unwrap();
    match svc.kind.as_ref().unwrap() {
        Kind::LoadBalancer(lb) => assert_eq!(lb.servers[0].url, "http://127.0.0.2:8080"),
        k => panic!("{k:?}"),
    }
    assert_eq!(c.body.uplinks.len(), 1);
    let up = &c.body.uplinks[0];
    assert_eq!((up.name.as_str(), up.weight), ("crm", 1));
    let hc = up.health_check.as_ref().unwrap();
    assert_eq!((hc.path.as_str(), hc.interval_ms, hc.timeout_ms), ("/crm/health", 5000, 3000));
    let ep = c.body.entry_points.iter().find(|e| e.name == "multicluster").unwrap();
    assert!(ep.uplink && ep.tls && ep.port == 9443);
}

#[test]
fn seed_parent_resolves_multicluster_against_children() {
    let (topo, d) = topology::load(&example());
    assert!(d.is_empty(), "{d:?}");
    let bodies: Vec<(String, pb::SnapshotBody)> =
        topo.children.iter().map(|c| (c.name.clone(), compile(&c.manifests, &c.values, None).body)).collect();
    let refs: Vec<(String, &pb::SnapshotBody)> = bodies.iter().map(|(n, b)| (n.clone(), b)).collect();
    let reg = static_registry(&refs);
    let c = compile(&topo.parent.manifests, &topo.parent.values, Some(&reg));
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
    let crm = c.body.services.iter().find(|s| s.id == "crm@multicluster").unwrap();
    assert_eq!(crm.kind, Some(Kind::Multicluster(pb::Multicluster { uplink: "crm".into(), child: String::new() })));
    let portal = c.body.routers.iter().find(|r| r.id == "apps/company-portal/0").unwrap();
    assert_eq!(portal.service, "traefik/apiportal:9903@apps/company-portal");
    let crm_router = c.body.routers.iter().find(|r| r.id == "apps/crm-api/0").unwrap();
    assert_eq!(crm_router.api, "apps/crm-api");
    assert_eq!(crm_router.tls, Some(pb::RouterTls { secret: String::new() }));
    assert_eq!(c.body.children.len(), 2);
    assert_eq!(c.body.children[0].uplinks[0].name, "crm");
}

#[test]
fn multicluster_names_resolve_exact_first_then_longest_child_suffix() {
    let up = |n: &str| pb::UplinkState { name: n.into(), weight: 1, healthy: true, entry_points: vec![] };
    let mut reg = Registry::new();
    reg.insert("a".into(), vec![up("crm")]);
    reg.insert("cluster-a".into(), vec![up("crm"), up("crm-cluster-a")]);
    reg.insert("b".into(), vec![up("crm-x")]);
    // The exact uplink name wins over a pin.
    assert_eq!(
        resolve_multicluster(&reg, "crm-cluster-a"),
        Some(pb::Multicluster { uplink: "crm-cluster-a".into(), child: String::new() })
    );
    reg.get_mut("cluster-a").unwrap().pop();
    // Longest child suffix: `-cluster-a`, not `-a`.
    assert_eq!(
        resolve_multicluster(&reg, "crm-cluster-a"),
        Some(pb::Multicluster { uplink: "crm".into(), child: "cluster-a".into() })
    );
    assert_eq!(resolve_multicluster(&reg, "crm-a"), Some(pb::Multicluster { uplink: "crm".into(), child: "a".into() }));
    assert_eq!(resolve_multicluster(&reg, "billing"), None);
    assert_eq!(resolve_multicluster(&reg, "crm-b"), None);
}

#[test]
fn equal_configurations_encode_to_equal_bytes() {
    let forward = load_text("f.yaml", ROUTE);
    let mut reversed = forward.clone();
    reversed.resources.reverse();
    let a = compile(&forward, &Values::default(), None);
    let b = compile(&reversed, &Values::default(), None);
    assert!(!a.body.routers.is_empty());
    assert_eq!(atrium_proto::encode(&a.body), atrium_proto::encode(&b.body));
    let lb = a.body.services.iter().find_map(|s| match &s.kind {
        Some(Kind::LoadBalancer(lb)) => Some(lb),
        _ => None,
    });
    let urls: Vec<&str> = lb.unwrap().servers.iter().map(|s| s.url.as_str()).collect();
    assert_eq!(urls, vec!["http://10.0.0.1:8080", "http://10.0.0.2:8080"]);
}

#[test]
fn a_bad_rule_drops_only_its_router_and_says_where() {
    let text = ROUTE.replace("PathPrefix(`/b`)", "PathPrefix(`/b`) && Bogus(`x`)");
    let c = compile(&load_text("r.yaml", &text), &Values::default(), None);
    let ids: Vec<&str> = c.body.routers.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, vec!["apps/r/0"]);
    assert_eq!(c.diagnostics.len(), 1);
    let d = c.diagnostics[0].to_string();
    assert!(d.starts_with("r.yaml:12:14: error: IngressRoute apps/r spec.routes[1].match: invalid rule"), "{d}");
    assert!(
        d.contains("unknown matcher `Bogus`") && d.contains("at position 20") && d.ends_with("[rule-parse]"),
        "{d}"
    );
}

#[test]
fn missing_references_are_errors_at_the_field() {
    let text = ROUTE.replace("        - name: svc\n          port: 80\n    - match: PathPrefix(`/b`)", "        - name: nosuch\n          port: 80\n      middlewares:\n        - name: gone\n    - match: PathPrefix(`/b`)");
    let c = compile(&load_text("r.yaml", &text), &Values::default(), None);
    let s: Vec<String> = c.diagnostics.iter().map(|d| d.to_string()).collect();
    assert!(
        s.iter().any(|d| d.contains("spec.routes[0].services[0].name: Service apps/nosuch does not exist")),
        "{s:#?}"
    );
    assert!(
        s.iter().any(|d| d.contains("spec.routes[0].middlewares[0].name: Middleware apps/gone does not exist")),
        "{s:#?}"
    );
    assert_eq!(c.body.routers.len(), 1, "the healthy route still compiles");
    let text = ROUTE.replace("port: 80\n    - match", "port: 81\n    - match");
    let c = compile(&load_text("r.yaml", &text), &Values::default(), None);
    assert!(c.diagnostics[0].to_string().contains("Service apps/svc has no port 81"), "{:?}", c.diagnostics);
}

#[test]
fn chains_flatten_and_cycles_are_reported() {
    let mw = |name: &str, body: &str| {
        format!(
            "---\napiVersion: traefik.io/v1alpha1\nkind: Middleware\nmetadata:\n  name: {name}\n  namespace: apps\nspec:\n{body}"
        )
    };
    let text = format!(
        "{}{}{}{}",
        ROUTE.replace(
            "          port: 80\n    - match: PathPrefix(`/b`)",
            "          port: 80\n      middlewares:\n        - name: outer\n    - match: PathPrefix(`/b`)"
        ),
        mw("outer", "  chain:\n    middlewares:\n      - name: strip\n      - name: add\n"),
        mw("strip", "  stripPrefix:\n    prefixes: [/a]\n"),
        mw("add", "  addPrefix:\n    prefix: /v1\n"),
    );
    let c = compile(&load_text("r.yaml", &text), &Values::default(), None);
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
    assert_eq!(c.body.routers[0].middlewares, vec!["apps/strip", "apps/add"]);
    let cyclic = text.replace("      - name: add\n", "      - name: outer\n");
    let c = compile(&load_text("r.yaml", &cyclic), &Values::default(), None);
    assert!(c.diagnostics.iter().any(|d| d.code == "reference-cycle"), "{:?}", c.diagnostics);
    assert_eq!(c.body.routers.len(), 1);
}

#[test]
fn several_services_make_a_weighted_service() {
    let text = ROUTE.replace(
        "        - name: svc\n          port: 80\n    - match: PathPrefix(`/b`)",
        "        - name: svc\n          port: 80\n          weight: 3\n        - name: svc\n          port: http\n    - match: PathPrefix(`/b`)",
    );
    let c = compile(&load_text("r.yaml", &text), &Values::default(), None);
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
    let w = c.body.services.iter().find(|s| s.id == "apps/r/0").unwrap();
    match w.kind.as_ref().unwrap() {
        Kind::Weighted(w) => {
            let pairs: Vec<(&str, u32)> = w.services.iter().map(|s| (s.service.as_str(), s.weight)).collect();
            assert_eq!(pairs, vec![("apps/svc:80", 3), ("apps/svc:http", 1)]);
        }
        k => panic!("{k:?}"),
    }
}

#[test]
fn invalid_uplinks_are_reported() {
    let text = "apiVersion: hub.traefik.io/v1alpha1\nkind: Uplink\nmetadata:\n  name: u\n  namespace: apps\nspec:\n  exposeName: \"crm`) || Host(`evil\"\n  entryPoints: [multicluster]\n";
    let c = compile(&load_text("u.yaml", text), &child_values(), None);
    assert_eq!(c.diagnostics[0].code, "uplink-expose-name");
    assert_eq!(c.diagnostics[0].line, 7);
    assert!(c.body.uplinks.is_empty());
    let text = text.replace("\"crm`) || Host(`evil\"", "crm").replace("[multicluster]", "[web]");
    let c = compile(&load_text("u.yaml", &text), &child_values(), None);
    assert_eq!(c.diagnostics[0].code, "unknown-entrypoint");
}
