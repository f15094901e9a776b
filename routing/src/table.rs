//! The route table: routers in priority order, indexed so that matching stays fast with
//! thousands of routers.
//!
//! Order: highest priority first (the explicit priority, or the rule's length); a tie is
//! broken by router id, ascending, so the choice is deterministic (Traefik leaves it
//! undefined).
//!
//! Index: a rule that pins the host (`Host(`a`) && …`) is filed under that host, and a rule
//! that pins a path prefix (`Path`/`PathPrefix`) is filed in a byte trie under it. A lookup
//! gathers only the routers whose host bucket and prefix fit the request, then runs their
//! full matchers in priority order. Rules the index cannot narrow (no host, `||` across
//! hosts, negations) sit in catch-all lists and are always candidates, so the index never
//! changes which router wins.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use atrium_proto::v1::{Service, SnapshotBody};

use crate::middleware::path::{RewriteError, UrlPath};
use crate::middleware::{Action, CompiledMiddleware};
use crate::path_security::EncodedCharacters;
use crate::request::RequestView;
use crate::rules::Rule;

/// One router, ready to match.
#[derive(Debug)]
pub struct RouteEntry<X = ()> {
    /// `namespace/name/index`.
    pub id: String,
    /// The compiled rule.
    pub rule: Rule,
    /// Effective priority.
    pub priority: i64,
    /// Entrypoints (empty: all).
    pub entry_points: Vec<String>,
    /// Middlewares in execution order.
    pub middlewares: Vec<Arc<CompiledMiddleware>>,
    /// Service id.
    pub service: String,
    /// The service as the user wrote it.
    pub service_display: String,
    /// Uplinks this router is attached to.
    pub uplinks: Vec<String>,
    /// `namespace/name` of its API, if any.
    pub api: Option<String>,
    /// The encoded characters its paths may carry, when an `encodedCharacters` middleware
    /// says (it overrides the entrypoint's setting).
    pub encoded_characters: Option<EncodedCharacters>,
    /// What the runtime keeps per router (the data plane: its service, metric handles and
    /// usage counter); `()` for pure uses such as `route-check`.
    pub state: X,
}

impl<X> RouteEntry<X> {
    /// The path the backend sees after this router's middlewares.
    pub fn rewrite_path(&self, p: &mut UrlPath) -> Result<(), RewriteError> {
        for m in &self.middlewares {
            m.rewrite_path(p)?;
        }
        Ok(())
    }
}

/// A byte trie of path prefixes → router ranks.
#[derive(Debug, Default)]
struct PrefixTrie {
    nodes: Vec<TrieNode>,
}

#[derive(Debug, Default)]
struct TrieNode {
    /// Sorted by byte.
    children: Vec<(u8, u32)>,
    routers: Vec<u32>,
}

impl PrefixTrie {
    fn insert(&mut self, prefix: &str, rank: u32) {
        if self.nodes.is_empty() {
            self.nodes.push(TrieNode::default());
        }
        let mut n = 0usize;
        for &b in prefix.as_bytes() {
            let next = match self.nodes[n].children.binary_search_by_key(&b, |c| c.0) {
                Ok(i) => self.nodes[n].children[i].1 as usize,
                Err(i) => {
                    let id = self.nodes.len();
                    self.nodes.push(TrieNode::default());
                    self.nodes[n].children.insert(i, (b, id as u32));
                    id
                }
            };
            n = next;
        }
        self.nodes[n].routers.push(rank);
    }

    fn collect(&self, path: &str, out: &mut Vec<u32>) {
        if self.nodes.is_empty() {
            return;
        }
        let mut n = 0usize;
        out.extend_from_slice(&self.nodes[0].routers);
        for &b in path.as_bytes() {
            match self.nodes[n].children.binary_search_by_key(&b, |c| c.0) {
                Ok(i) => n = self.nodes[n].children[i].1 as usize,
                Err(_) => return,
            }
            out.extend_from_slice(&self.nodes[n].routers);
        }
    }
}

#[derive(Debug, Default)]
struct Bucket {
    prefixes: PrefixTrie,
    any_path: Vec<u32>,
}

impl Bucket {
    fn insert(&mut self, prefixes: &Option<Vec<String>>, rank: u32) {
        match prefixes {
            Some(ps) => ps.iter().for_each(|p| self.prefixes.insert(p, rank)),
            None => self.any_path.push(rank),
        }
    }
    fn collect(&self, path: Option<&str>, out: &mut Vec<u32>) {
        out.extend_from_slice(&self.any_path);
        if let Some(p) = path {
            self.prefixes.collect(p, out);
        }
    }
}

#[derive(Debug, Default)]
struct RouterIndex {
    by_host: HashMap<String, Bucket>,
    any_host: Bucket,
}

impl RouterIndex {
    fn insert(&mut self, rule: &Rule, rank: u32) {
        let prefixes = rule.required_prefixes();
        match rule.required_hosts() {
            Some(hosts) => {
                for h in hosts.into_iter().collect::<BTreeSet<_>>() {
                    self.by_host.entry(h).or_default().insert(&prefixes, rank);
                }
            }
            None => self.any_host.insert(&prefixes, rank),
        }
    }

    fn candidates(&self, req: &RequestView<'_>, out: &mut Vec<u32>) {
        let host = req.host.strip_suffix('.').unwrap_or(&req.host);
        let path = req.routing_path.as_deref();
        if let Some(b) = self.by_host.get(host) {
            b.collect(path, out);
        }
        self.any_host.collect(path, out);
        out.sort_unstable();
        out.dedup();
    }
}

/// Why a snapshot could not become a route table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// A router's rule does not compile.
    #[error("router {router}: invalid rule: {error}")]
    Rule {
        /// Router id.
        router: String,
        /// Why.
        error: String,
    },
    /// A middleware does not compile.
    #[error("middleware {id}: {error}")]
    Middleware {
        /// Middleware id.
        id: String,
        /// Why.
        error: crate::middleware::MiddlewareError,
    },
    /// A reference to something the snapshot does not contain.
    #[error("router {router}: unknown {what} {name:?}")]
    Dangling {
        /// Router id.
        router: String,
        /// "middleware" or "service".
        what: &'static str,
        /// The missing id.
        name: String,
    },
}

/// An immutable, compiled route table.
#[derive(Debug, Default)]
pub struct RouteTable<X = ()> {
    routers: Vec<RouteEntry<X>>,
    by_entry_point: HashMap<String, RouterIndex>,
    /// Routers attached to each uplink (`hub.traefik.io/router.uplinks`), whatever their
    /// own entrypoints: on an uplink, only these can match.
    by_uplink: HashMap<String, RouterIndex>,
    all: RouterIndex,
    services: HashMap<String, Service>,
    /// Whether a router's rule matches on headers (routing then needs the request's
    /// headers as a map).
    reads_headers: bool,
    /// Each entrypoint's `http.encodedCharacters`.
    encoded_by_entry_point: HashMap<String, EncodedCharacters>,
}

impl<X> RouteTable<X> {
    /// Whether some router's rule matches on request headers.
    pub fn reads_headers(&self) -> bool {
        self.reads_headers
    }

    /// Keeps the state of unchanged middlewares across a swap: where `old` has a middleware
    /// with the same id and configuration, its compiled instance (rate-limit buckets,
    /// in-flight counts) replaces the fresh one, so a reload elsewhere in the configuration
    /// neither resets limits nor lets a client past them.
    pub fn adopt_state<Y>(&mut self, old: &RouteTable<Y>) {
        let previous: HashMap<&str, &Arc<CompiledMiddleware>> =
            old.routers.iter().flat_map(|r| r.middlewares.iter()).map(|m| (m.id.as_str(), m)).collect();
        for r in &mut self.routers {
            for m in &mut r.middlewares {
                if let Some(p) = previous.get(m.id.as_str()) {
                    if p.spec == m.spec {
                        *m = Arc::clone(p);
                    }
                }
            }
        }
    }

    /// Compiles a snapshot body; `state` makes each router's runtime part (see
    /// [`RouteEntry::state`]). Errors leave the caller's previous table in force.
    pub fn from_snapshot(
        body: &SnapshotBody,
        mut state: impl FnMut(&atrium_proto::v1::Router) -> X,
    ) -> Result<RouteTable<X>, TableError> {
        let mut middlewares = HashMap::new();
        for m in &body.middlewares {
            let c = CompiledMiddleware::new(&m.id, &m.kind, &m.config_json)
                .map_err(|error| TableError::Middleware { id: m.id.clone(), error })?;
            middlewares.insert(m.id.clone(), Arc::new(c));
        }
        let services: HashMap<String, Service> = body.services.iter().map(|s| (s.id.clone(), s.clone())).collect();
        let mut routers = Vec::with_capacity(body.routers.len());
        for r in &body.routers {
            let rule =
                Rule::parse(&r.rule).map_err(|e| TableError::Rule { router: r.id.clone(), error: e.to_string() })?;
            let mws = r
                .middlewares
                .iter()
                .map(|id| {
                    middlewares.get(id).cloned().ok_or_else(|| TableError::Dangling {
                        router: r.id.clone(),
                        what: "middleware",
                        name: id.clone(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            if !services.contains_key(&r.service) {
                return Err(TableError::Dangling { router: r.id.clone(), what: "service", name: r.service.clone() });
            }
            routers.push(RouteEntry {
                id: r.id.clone(),
                rule,
                priority: r.priority,
                entry_points: r.entry_points.clone(),
                service: r.service.clone(),
                service_display: if r.service_display.is_empty() {
                    r.service.clone()
                } else {
                    r.service_display.clone()
                },
                uplinks: r.uplinks.clone(),
                api: (!r.api.is_empty()).then(|| r.api.clone()),
                state: state(r),
                encoded_characters: mws.iter().find_map(|m| match m.action {
                    Action::EncodedCharacters(e) => Some(e),
                    _ => None,
                }),
                middlewares: mws,
            });
        }
        let encoded = body
            .entry_points
            .iter()
            .map(|e| (e.name.clone(), EncodedCharacters::from_bits(e.allowed_encoded_characters)))
            .collect();
        Ok(Self::build(routers, services, encoded))
    }

    /// The first encoded character of `sanitized` (a [`crate::path_security::sanitize`]d
    /// path) that `router` may not see on `entry_point`: its `encodedCharacters`
    /// middleware decides, else the entrypoint's setting (none allowed by default).
    pub fn refused_encoding(&self, router: &RouteEntry<X>, entry_point: &str, sanitized: &str) -> Option<&'static str> {
        if !sanitized.contains('%') {
            return None;
        }
        let allowed = router
            .encoded_characters
            .or_else(|| self.encoded_by_entry_point.get(entry_point).copied())
            .unwrap_or_default();
        allowed.refused(sanitized)
    }

    fn build(
        mut routers: Vec<RouteEntry<X>>,
        services: HashMap<String, Service>,
        encoded_by_entry_point: HashMap<String, EncodedCharacters>,
    ) -> RouteTable<X> {
        routers.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id)));
        let mut by_entry_point: HashMap<String, RouterIndex> = HashMap::new();
        let mut all = RouterIndex::default();
        let named: BTreeSet<String> = routers.iter().flat_map(|r| r.entry_points.iter().cloned()).collect();
        for (rank, r) in routers.iter().enumerate() {
            let rank = rank as u32;
            all.insert(&r.rule, rank);
            if r.entry_points.is_empty() {
                for ep in &named {
                    by_entry_point.entry(ep.clone()).or_default().insert(&r.rule, rank);
                }
            } else {
                for ep in &r.entry_points {
                    by_entry_point.entry(ep.clone()).or_default().insert(&r.rule, rank);
                }
            }
        }
        // Routers without entrypoints also serve entrypoints no router names.
        let mut catch_all = RouterIndex::default();
        for (rank, r) in routers.iter().enumerate() {
            if r.entry_points.is_empty() {
                catch_all.insert(&r.rule, rank as u32);
            }
        }
        by_entry_point.insert(String::new(), catch_all);
        let mut by_uplink: HashMap<String, RouterIndex> = HashMap::new();
        for (rank, r) in routers.iter().enumerate() {
            for u in &r.uplinks {
                by_uplink.entry(u.clone()).or_default().insert(&r.rule, rank as u32);
            }
        }
        let reads_headers = routers.iter().any(|r| r.rule.reads_headers());
        RouteTable { routers, by_entry_point, by_uplink, all, services, reads_headers, encoded_by_entry_point }
    }

    /// The routers in priority order.
    pub fn routers(&self) -> &[RouteEntry<X>] {
        &self.routers
    }

    /// A service by id.
    pub fn service(&self, id: &str) -> Option<&Service> {
        self.services.get(id)
    }

    /// The router a request arriving on `entry_point` (or on any entrypoint, with `None`)
    /// goes to.
    pub fn route(&self, entry_point: Option<&str>, req: &RequestView<'_>) -> Option<&RouteEntry<X>> {
        self.route_index(entry_point, req).map(|i| &self.routers[i])
    }

    /// [`RouteTable::route`]'s router as its position in [`RouteTable::routers`].
    pub fn route_index(&self, entry_point: Option<&str>, req: &RequestView<'_>) -> Option<usize> {
        let index = match entry_point {
            None => &self.all,
            Some(ep) => self.by_entry_point.get(ep).or_else(|| self.by_entry_point.get(""))?,
        };
        self.lookup(index, req)
    }

    /// The router a request arriving through uplink `uplink` goes to: only routers attached
    /// to that uplink are eligible.
    pub fn route_uplink(&self, uplink: &str, req: &RequestView<'_>) -> Option<&RouteEntry<X>> {
        self.route_uplink_index(uplink, req).map(|i| &self.routers[i])
    }

    /// [`RouteTable::route_uplink`], as a position in [`RouteTable::routers`].
    pub fn route_uplink_index(&self, uplink: &str, req: &RequestView<'_>) -> Option<usize> {
        self.lookup(self.by_uplink.get(uplink)?, req)
    }

    fn lookup(&self, index: &RouterIndex, req: &RequestView<'_>) -> Option<usize> {
        // A per-thread scratch buffer: no allocation per lookup.
        thread_local!(static CANDIDATES: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) });
        CANDIDATES.with(|c| {
            let mut cands = c.borrow_mut();
            cands.clear();
            index.candidates(req, &mut cands);
            cands.iter().map(|&i| i as usize).find(|&i| self.routers[i].rule.matches(req))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atrium_proto::v1::{Router, service};
    use http::HeaderMap;

    fn from_snapshot(b: &SnapshotBody) -> Result<RouteTable, TableError> {
        RouteTable::from_snapshot(b, |_| ())
    }

    fn body(routers: &[(&str, &str, i64, &[&str])]) -> SnapshotBody {
        SnapshotBody {
            routers: routers
                .iter()
                .map(|(id, rule, prio, eps)| Router {
                    id: id.to_string(),
                    rule: rule.to_string(),
                    priority: if *prio == 0 { rule.len() as i64 } else { *prio },
                    entry_points: eps.iter().map(|s| s.to_string()).collect(),
                    service: "svc".into(),
                    ..Default::default()
                })
                .collect(),
            services: vec![Service { id: "svc".into(), kind: Some(service::Kind::Portal(Default::default())) }],
            ..Default::default()
        }
    }

    fn route<'a>(t: &'a RouteTable, ep: Option<&str>, host: &str, path: &str) -> Option<&'a str> {
        let h = HeaderMap::new();
        let v = RequestView::new("GET", host, path, None, &h, "10.0.0.1:1");
        t.route(ep, &v).map(|r| r.id.as_str())
    }

    #[test]
    fn unchanged_middlewares_keep_their_state_across_tables() {
        use atrium_proto::v1::Middleware;
        let with_limit = |average: u32| {
            let mut b = body(&[("a/r/0", "PathPrefix(`/`)", 0, &[])]);
            b.routers[0].middlewares = vec!["ns/limit".into(), "ns/strip".into()];
            b.middlewares = vec![
                Middleware {
                    id: "ns/limit".into(),
                    kind: "rateLimit".into(),
                    config_json: format!(r#"{{"average": {average}, "burst": 1}}"#),
                },
                Middleware {
                    id: "ns/strip".into(),
                    kind: "stripPrefix".into(),
                    config_json: r#"{"prefixes": ["/x"]}"#.into(),
                },
            ];
            from_snapshot(&b).unwrap()
        };
        let old = with_limit(1);
        let mut same = with_limit(1);
        same.adopt_state(&old);
        for (n, o) in same.routers[0].middlewares.iter().zip(&old.routers[0].middlewares) {
            assert!(Arc::ptr_eq(n, o), "{} keeps its compiled state", n.id);
        }
        let mut changed = with_limit(5);
        changed.adopt_state(&old);
        let (n, o) = (&changed.routers[0].middlewares, &old.routers[0].middlewares);
        assert!(!Arc::ptr_eq(&n[0], &o[0]), "a changed rate limit starts with fresh buckets");
        assert!(Arc::ptr_eq(&n[1], &o[1]));
    }

    #[test]
    fn longest_rule_wins_by_default() {
        let t = from_snapshot(&body(&[
            ("a/short/0", "PathPrefix(`/`)", 0, &[]),
            ("a/long/0", "Host(`x.com`) && PathPrefix(`/api`)", 0, &[]),
        ]))
        .unwrap();
        assert_eq!(route(&t, None, "x.com", "/api/v1"), Some("a/long/0"));
        assert_eq!(route(&t, None, "y.com", "/api/v1"), Some("a/short/0"));
    }

    #[test]
    fn explicit_priority_wins_and_ties_break_by_id() {
        let t = from_snapshot(&body(&[
            ("a/b/0", "PathPrefix(`/`)", 100, &[]),
            ("a/a/0", "PathPrefix(`/x`)", 100, &[]),
            ("a/c/0", "Host(`x.com`) && PathPrefix(`/x`)", 0, &[]),
        ]))
        .unwrap();
        assert_eq!(route(&t, None, "x.com", "/x"), Some("a/a/0"));
        assert_eq!(route(&t, None, "x.com", "/y"), Some("a/b/0"));
    }

    #[test]
    fn entry_points_filter_routers() {
        let t = from_snapshot(&body(&[
            ("a/web/0", "PathPrefix(`/`)", 0, &["web"]),
            ("a/secure/0", "PathPrefix(`/s`)", 0, &["websecure"]),
            ("a/all/0", "Path(`/all`)", 0, &[]),
        ]))
        .unwrap();
        assert_eq!(route(&t, Some("web"), "h", "/s"), Some("a/web/0"));
        assert_eq!(route(&t, Some("websecure"), "h", "/s"), Some("a/secure/0"));
        assert_eq!(route(&t, Some("websecure"), "h", "/x"), None);
        assert_eq!(route(&t, Some("websecure"), "h", "/all"), Some("a/all/0"));
        assert_eq!(route(&t, Some("other"), "h", "/all"), Some("a/all/0"));
        assert_eq!(route(&t, None, "h", "/s"), Some("a/secure/0"));
    }

    #[test]
    fn index_agrees_with_linear_scan() {
        // Many hosts and prefixes plus catch-alls and negations: the indexed lookup must
        // pick exactly what a linear scan in priority order picks.
        let mut specs: Vec<(String, String, i64)> = Vec::new();
        for h in 0..20 {
            for p in 0..5 {
                specs.push((format!("ns/h{h}p{p}/0"), format!("Host(`h{h}.test`) && PathPrefix(`/p{p}`)"), 0));
            }
        }
        specs.push(("ns/neg/0".into(), "!Host(`h1.test`) && PathPrefix(`/p1`)".into(), 0));
        specs.push(("ns/or/0".into(), "Host(`h2.test`) || Path(`/p3/x`)".into(), 200));
        specs.push(("ns/wild/0".into(), "Host(`*.test`)".into(), 0));
        specs.push(("ns/dot/0".into(), "Host(`h3.test.`) && Path(`/p0`)".into(), 300));
        let routers: Vec<(&str, &str, i64, &[&str])> =
            specs.iter().map(|(a, b, c)| (a.as_str(), b.as_str(), *c, &[][..])).collect();
        let t = from_snapshot(&body(&routers)).unwrap();
        let h = HeaderMap::new();
        let mut checked = 0;
        for host in ["h0.test", "h1.test", "h2.test", "h3.test", "h3.test.", "zzz.test", "H4.TEST:80", "none"] {
            for path in ["/p0", "/p1/a", "/p3/x", "/p4", "/q", ""] {
                let v = RequestView::new("GET", host, path, None, &h, "10.0.0.1:1");
                let linear = t.routers().iter().find(|r| r.rule.matches(&v)).map(|r| r.id.clone());
                let indexed = t.route(None, &v).map(|r| r.id.clone());
                assert_eq!(indexed, linear, "host={host} path={path}");
                checked += 1;
            }
        }
        assert_eq!(checked, 48);
    }

    #[test]
    fn uplink_routing_only_sees_attached_routers() {
        let mut b = body(&[
            ("apps/crm/0", "PathPrefix(`/crm`)", 0, &["web"]),
            ("apps/other/0", "PathPrefix(`/`)", 0, &["web"]),
        ]);
        b.routers[0].uplinks = vec!["crm".into()];
        let t = from_snapshot(&b).unwrap();
        let h = HeaderMap::new();
        let v = RequestView::new("GET", "x", "/crm/health", None, &h, "10.0.0.1:1");
        assert_eq!(t.route_uplink("crm", &v).map(|r| r.id.as_str()), Some("apps/crm/0"));
        let v = RequestView::new("GET", "x", "/elsewhere", None, &h, "10.0.0.1:1");
        assert!(t.route_uplink("crm", &v).is_none(), "an unattached router never matches on an uplink");
        assert!(t.route_uplink("billing", &v).is_none());
        assert_eq!(t.route(Some("web"), &v).map(|r| r.id.as_str()), Some("apps/other/0"));
    }

    #[test]
    fn dangling_references_are_errors() {
        let mut b = body(&[("a/x/0", "Path(`/`)", 0, &[])]);
        b.routers[0].service = "nope".into();
        assert!(matches!(from_snapshot(&b), Err(TableError::Dangling { what: "service", .. })));
        let mut b = body(&[("a/x/0", "Path(`/`)", 0, &[])]);
        b.routers[0].middlewares = vec!["ns/missing".into()];
        assert!(matches!(from_snapshot(&b), Err(TableError::Dangling { what: "middleware", .. })));
        let b = body(&[("a/x/0", "Path(`nope`)", 0, &[])]);
        assert!(matches!(from_snapshot(&b), Err(TableError::Rule { .. })));
    }
}
