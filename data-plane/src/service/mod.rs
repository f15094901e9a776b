//! Services at run time: load balancers over servers, and the TraefikService compositions
//! (weighted, mirroring, failover) over other services.
//!
//! Selection is pure and synchronous (smooth weighted round-robin, health flags); moving
//! bytes is the proxy's job (`proxy::dispatch`). Active health checks run in
//! [`health`], passive ejection is recorded here when a forward fails.

pub mod health;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atrium_proto::v1 as pb;
use pb::service::Kind;

/// One backend server.
#[derive(Debug)]
pub struct Server {
    /// `scheme://host:port` (scheme `http`, `https` or `h2c`).
    pub url: http::Uri,
    /// WRR weight.
    pub weight: u32,
    /// Active health check verdict (true until a check says otherwise).
    pub healthy: AtomicBool,
    passive: Mutex<Passive>,
}

#[derive(Debug, Default)]
struct Passive {
    failures: Vec<Instant>,
    ejected_until: Option<Instant>,
}

impl Server {
    #[cfg(test)]
    fn available(&self, now: Instant) -> bool {
        self.available_at(Some(now))
    }

    /// Healthy, and not ejected at `now` (`None`: passive checks are off, nothing is).
    fn available_at(&self, now: Option<Instant>) -> bool {
        self.healthy.load(Ordering::Relaxed)
            && now
                .is_none_or(|now| self.passive.lock().map(|p| p.ejected_until.is_none_or(|t| t <= now)).unwrap_or(true))
    }
}

/// A weighted round-robin load balancer over servers.
#[derive(Debug)]
pub struct LoadBalancer {
    /// Service id.
    pub id: String,
    /// Servers, in snapshot order.
    pub servers: Vec<Server>,
    /// Keep the client's Host header.
    pub pass_host_header: bool,
    /// Whether every server speaks plain HTTP/1.1 (`http://`).
    pub plain_http: bool,
    /// Active health check configuration.
    pub health_check: Option<pb::HealthCheck>,
    passive: Option<pb::PassiveHealthCheck>,
    wrr: Mutex<Vec<i64>>,
}

impl LoadBalancer {
    /// Picks an available server, or `None` when none is.
    pub fn pick(&self) -> Option<&Server> {
        let now = self.ejection_clock();
        let weights = self
            .servers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.weight > 0 && s.available_at(now))
            .map(|(i, s)| (i, i64::from(s.weight)));
        let mut cur = self.wrr.lock().ok()?;
        atrium_routing::wrr::smooth_wrr(&mut cur, weights).map(|i| &self.servers[i])
    }

    /// Whether any server can take traffic.
    pub fn has_available(&self) -> bool {
        let now = self.ejection_clock();
        self.servers.iter().any(|s| s.weight > 0 && s.available_at(now))
    }

    /// The time to compare passive ejections with; `None` without a passive check (no
    /// server can be ejected, so the clock is not read on the request path).
    fn ejection_clock(&self) -> Option<Instant> {
        self.passive.as_ref().map(|_| Instant::now())
    }

    /// Takes over what `old` (the same service in the previous table) learnt about servers
    /// that are still here: health-check verdicts when the check is unchanged, passive
    /// ejections when the passive check is unchanged, and the round-robin position.
    pub fn adopt_state(&self, old: &LoadBalancer) {
        let same_active = self.health_check == old.health_check;
        let same_passive = self.passive == old.passive;
        for s in &self.servers {
            let Some(o) = old.servers.iter().find(|o| o.url == s.url) else { continue };
            if same_active && self.health_check.is_some() {
                s.healthy.store(o.healthy.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            if same_passive && self.passive.is_some() {
                if let (Ok(mut n), Ok(p)) = (s.passive.lock(), o.passive.lock()) {
                    n.failures = p.failures.clone();
                    n.ejected_until = p.ejected_until;
                }
            }
        }
        if self.servers.iter().map(|s| (&s.url, s.weight)).eq(old.servers.iter().map(|s| (&s.url, s.weight))) {
            if let (Ok(mut n), Ok(o)) = (self.wrr.lock(), old.wrr.lock()) {
                n.clone_from(&o);
            }
        }
    }

    /// Records a failed forward to `server` for passive health checking.
    pub fn record_failure(&self, server: &Server) {
        let Some(p) = &self.passive else { return };
        let window = Duration::from_millis(p.failure_window_ms.max(1));
        let now = Instant::now();
        if let Ok(mut st) = server.passive.lock() {
            st.failures.retain(|t| now.duration_since(*t) < window);
            st.failures.push(now);
            if st.failures.len() as u32 >= p.max_failed_attempts.max(1) {
                st.failures.clear();
                st.ejected_until = Some(now + window);
                tracing::warn!(service = %self.id, server = %server.url, "server ejected after repeated failures");
            }
        }
    }
}

/// A service at run time.
#[derive(Debug)]
pub enum Service {
    /// Servers.
    LoadBalancer(Arc<LoadBalancer>),
    /// Weighted round-robin over services.
    Weighted {
        /// Children and weights.
        children: Vec<(Arc<Service>, u32)>,
        /// WRR state.
        wrr: Mutex<Vec<i64>>,
    },
    /// Main service plus mirrors.
    Mirroring {
        /// Where the response comes from.
        main: Arc<Service>,
        /// Mirrors and their percentages.
        mirrors: Vec<(Arc<Service>, u32)>,
        /// Copy the request body to mirrors.
        mirror_body: bool,
        /// Largest body mirrored (-1: unlimited).
        max_body_size: i64,
        /// Requests seen, for the percentages.
        counter: AtomicU64,
    },
    /// Main service, and a fallback when it has nothing available.
    Failover {
        /// Preferred.
        main: Arc<Service>,
        /// Used when `main` has nothing available.
        fallback: Arc<Service>,
    },
    /// A service this data plane cannot serve, with the reason.
    Unavailable(String),
    /// The control plane's portal, at `address` (`host:port`; empty: no portal is served),
    /// for APIPortal `portal` (`namespace/name`, or empty when the router names none).
    Portal {
        /// The APIPortal.
        portal: String,
        /// Where the portal listens.
        address: String,
    },
    /// `name@multicluster`: the children of the snapshot that expose the uplink.
    Multicluster {
        /// The name before `@multicluster` (an uplink, or `<uplink>-<child>`).
        name: String,
        /// The children and their uplinks, as the control plane sees them.
        children: Arc<Vec<pb::Child>>,
    },
}

impl Service {
    /// Whether the service can take a request now, as the snapshot sees it.
    pub fn available(&self) -> bool {
        self.available_with(&|_| false)
    }

    /// Whether the service can take a request now, also leaving out the children for which
    /// `child_down` holds (this data plane's own connection to them failed moments ago).
    pub fn available_with(&self, child_down: &dyn Fn(&str) -> bool) -> bool {
        match self {
            Service::LoadBalancer(lb) => lb.has_available(),
            Service::Weighted { children, .. } => children.iter().any(|(c, w)| *w > 0 && c.available_with(child_down)),
            Service::Mirroring { main, .. } => main.available_with(child_down),
            Service::Failover { main, fallback } => {
                main.available_with(child_down) || fallback.available_with(child_down)
            }
            Service::Unavailable(_) => false,
            Service::Portal { address, .. } => !address.is_empty(),
            Service::Multicluster { name, children } => {
                let (uplink, pinned) = crate::uplink::pick::resolve(children, name);
                children.iter().any(|c| {
                    c.reachable
                        && !child_down(&c.name)
                        && pinned.is_none_or(|p| p == c.name)
                        && c.uplinks.iter().any(|u| u.name == uplink && u.healthy && u.weight > 0)
                })
            }
        }
    }

    /// For weighted services: the next child with something available.
    pub fn pick_child(&self) -> Option<&Arc<Service>> {
        self.pick_child_with(&|_| false)
    }

    /// [`Service::pick_child`], leaving out children for which `child_down` holds.
    pub fn pick_child_with(&self, child_down: &dyn Fn(&str) -> bool) -> Option<&Arc<Service>> {
        let Service::Weighted { children, wrr } = self else { return None };
        let weights = children
            .iter()
            .enumerate()
            .filter(|(_, (c, w))| *w > 0 && c.available_with(child_down))
            .map(|(i, (_, w))| (i, i64::from(*w)));
        let mut cur = wrr.lock().ok()?;
        atrium_routing::wrr::smooth_wrr(&mut cur, weights).map(|i| &children[i].0)
    }

    /// Every load balancer reachable from this service (for health checks).
    pub fn load_balancers(&self, out: &mut Vec<Arc<LoadBalancer>>) {
        match self {
            Service::LoadBalancer(lb) => out.push(lb.clone()),
            Service::Weighted { children, .. } => children.iter().for_each(|(c, _)| c.load_balancers(out)),
            Service::Mirroring { main, mirrors, .. } => {
                main.load_balancers(out);
                mirrors.iter().for_each(|(m, _)| m.load_balancers(out));
            }
            Service::Failover { main, fallback } => {
                main.load_balancers(out);
                fallback.load_balancers(out);
            }
            Service::Unavailable(_) | Service::Multicluster { .. } | Service::Portal { .. } => {}
        }
    }
}

/// Why a snapshot's services cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// A composite service refers, through others, to itself.
    #[error("service {0} refers back to itself")]
    Cycle(String),
    /// A reference to a service the snapshot does not have.
    #[error("unknown service {0:?}")]
    Unknown(String),
    /// A service without a kind.
    #[error("service {0} has no kind")]
    NoKind(String),
    /// A server URL that does not parse or names no host.
    #[error("service {service}: server {url:?}: {why}")]
    Server {
        /// The service.
        service: String,
        /// The URL as written.
        url: String,
        /// What is wrong with it.
        why: String,
    },
}

/// Builds the run-time services of a snapshot. Composite services refer to others by id;
/// the compiler guarantees there is no cycle, and a reference that is missing or cyclic
/// anyway is an error here.
pub fn build(
    services: &[pb::Service],
    children: &[pb::Child],
    portal_address: &str,
) -> Result<HashMap<String, Arc<Service>>, BuildError> {
    let children = Arc::new(children.to_vec());
    let by_id: HashMap<&str, &pb::Service> = services.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut built: HashMap<String, Arc<Service>> = HashMap::new();
    fn get(
        id: &str,
        by_id: &HashMap<&str, &pb::Service>,
        built: &mut HashMap<String, Arc<Service>>,
        stack: &mut Vec<String>,
        children: &Arc<Vec<pb::Child>>,
        portal_address: &str,
    ) -> Result<Arc<Service>, BuildError> {
        if let Some(s) = built.get(id) {
            return Ok(s.clone());
        }
        if stack.iter().any(|s| s == id) {
            return Err(BuildError::Cycle(id.to_string()));
        }
        let svc = by_id.get(id).ok_or_else(|| BuildError::Unknown(id.to_string()))?;
        stack.push(id.to_string());
        let rt = match svc.kind.as_ref().ok_or_else(|| BuildError::NoKind(id.to_string()))? {
            Kind::LoadBalancer(lb) => load_balancer(id, lb)?,
            Kind::Weighted(w) => {
                let mut members = Vec::new();
                for c in &w.services {
                    members.push((get(&c.service, by_id, built, stack, children, portal_address)?, c.weight));
                }
                let n = members.len();
                Service::Weighted { children: members, wrr: Mutex::new(vec![0; n]) }
            }
            Kind::Mirroring(m) => {
                let main = get(&m.service, by_id, built, stack, children, portal_address)?;
                let mut mirrors = Vec::new();
                for mr in &m.mirrors {
                    mirrors
                        .push((get(&mr.service, by_id, built, stack, children, portal_address)?, mr.percent.min(100)));
                }
                Service::Mirroring {
                    main,
                    mirrors,
                    mirror_body: m.mirror_body,
                    max_body_size: m.max_body_size,
                    counter: AtomicU64::new(0),
                }
            }
            Kind::Failover(f) => Service::Failover {
                main: get(&f.service, by_id, built, stack, children, portal_address)?,
                fallback: get(&f.fallback, by_id, built, stack, children, portal_address)?,
            },
            Kind::Multicluster(m) => Service::Multicluster {
                name: if m.child.is_empty() { m.uplink.clone() } else { format!("{}-{}", m.uplink, m.child) },
                children: children.clone(),
            },
            Kind::Portal(p) => Service::Portal { portal: p.name.clone(), address: portal_address.to_string() },
        };
        stack.pop();
        let rt = Arc::new(rt);
        built.insert(id.to_string(), rt.clone());
        Ok(rt)
    }
    for s in services {
        get(&s.id, &by_id, &mut built, &mut Vec::new(), &children, portal_address)?;
    }
    Ok(built)
}

/// Builds load balancer `id`; every server URL must parse and name a host.
fn load_balancer(id: &str, lb: &pb::LoadBalancer) -> Result<Service, BuildError> {
    let mut servers = Vec::new();
    for s in &lb.servers {
        let bad = |why: String| BuildError::Server { service: id.to_string(), url: s.url.clone(), why };
        let url: http::Uri = s.url.parse().map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
        if url.authority().is_none() {
            return Err(bad("it has no host".into()));
        }
        servers.push(Server { url, weight: s.weight, healthy: AtomicBool::new(true), passive: Mutex::default() });
    }
    let n = servers.len();
    Ok(Service::LoadBalancer(Arc::new(LoadBalancer {
        id: id.to_string(),
        plain_http: servers.iter().all(|s| s.url.scheme_str() == Some("http")),
        servers,
        pass_host_header: lb.pass_host_header,
        health_check: lb.health_check.clone(),
        passive: lb.passive_health_check,
        wrr: Mutex::new(vec![0; n]),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lb(id: &str, servers: &[(&str, u32)]) -> pb::Service {
        pb::Service {
            id: id.into(),
            kind: Some(Kind::LoadBalancer(pb::LoadBalancer {
                servers: servers.iter().map(|(u, w)| pb::Server { url: u.to_string(), weight: *w }).collect(),
                pass_host_header: true,
                ..Default::default()
            })),
        }
    }

    #[test]
    fn smooth_wrr_spreads_by_weight() {
        let svcs = build(&[lb("a", &[("http://10.0.0.1:80", 1), ("http://10.0.0.2:80", 3)])], &[], "").unwrap();
        let Service::LoadBalancer(lb) = &*svcs["a"] else { panic!() };
        let picks: Vec<String> = (0..8).map(|_| lb.pick().unwrap().url.to_string()).collect();
        let second = picks.iter().filter(|u| u.contains("10.0.0.2")).count();
        assert_eq!(second, 6, "{picks:?}");
        // Smooth: never three of the heavy server in a row within a cycle of 4.
        assert_ne!(picks[..4].iter().filter(|u| u.contains("10.0.0.1")).count(), 0);
    }

    #[test]
    fn unhealthy_servers_are_skipped_and_none_means_unavailable() {
        let svcs = build(&[lb("a", &[("http://10.0.0.1:80", 1), ("http://10.0.0.2:80", 1)])], &[], "").unwrap();
        let Service::LoadBalancer(lb) = &*svcs["a"] else { panic!() };
        lb.servers[0].healthy.store(false, Ordering::Relaxed);
        for _ in 0..4 {
            assert!(lb.pick().unwrap().url.to_string().contains("10.0.0.2"));
        }
        lb.servers[1].healthy.store(false, Ordering::Relaxed);
        assert!(lb.pick().is_none());
        assert!(!svcs["a"].available());
    }

    #[test]
    fn passive_ejection_after_max_failures() {
        let mut s = lb("a", &[("http://10.0.0.1:80", 1), ("http://10.0.0.2:80", 1)]);
        if let Some(Kind::LoadBalancer(l)) = &mut s.kind {
            l.passive_health_check = Some(pb::PassiveHealthCheck { max_failed_attempts: 2, failure_window_ms: 60_000 });
        }
        let svcs = build(&[s], &[], "").unwrap();
        let Service::LoadBalancer(lb) = &*svcs["a"] else { panic!() };
        lb.record_failure(&lb.servers[0]);
        assert!(lb.servers[0].available(Instant::now()));
        lb.record_failure(&lb.servers[0]);
        assert!(!lb.servers[0].available(Instant::now()));
        assert!(lb.pick().unwrap().url.to_string().contains("10.0.0.2"));
    }

    #[test]
    fn a_new_table_keeps_what_the_old_one_learnt_about_unchanged_servers() {
        let with_checks = |servers: &[(&str, u32)], path: &str| {
            let mut s = lb("a", servers);
            if let Some(Kind::LoadBalancer(l)) = &mut s.kind {
                l.health_check = Some(pb::HealthCheck { path: path.into(), interval_ms: 100, ..Default::default() });
                l.passive_health_check =
                    Some(pb::PassiveHealthCheck { max_failed_attempts: 1, failure_window_ms: 60_000 });
            }
            build(&[s], &[], "").unwrap()
        };
        let lb_of = |svcs: &HashMap<String, Arc<Service>>| match &*svcs["a"] {
            Service::LoadBalancer(lb) => lb.clone(),
            _ => panic!("a load balancer"),
        };
        let (one, two, three) = ("http://10.0.0.1:80", "http://10.0.0.2:80", "http://10.0.0.3:80");
        let old = lb_of(&with_checks(&[(one, 1), (two, 1)], "/health"));
        old.servers[0].healthy.store(false, Ordering::Relaxed);
        old.record_failure(&old.servers[1]);

        // Same checks, one server added: the verdicts about the others carry over.
        let new = lb_of(&with_checks(&[(one, 1), (two, 1), (three, 1)], "/health"));
        new.adopt_state(&old);
        let now = Instant::now();
        assert!(!new.servers[0].available(now), "still failing its health check");
        assert!(!new.servers[1].available(now), "still ejected");
        assert!(new.servers[2].available(now), "a new server starts healthy");
        assert_eq!(new.pick().unwrap().url.to_string(), format!("{three}/"));

        // A changed health check starts from scratch: its verdicts meant something else.
        let changed = lb_of(&with_checks(&[(one, 1), (two, 1)], "/ready"));
        changed.adopt_state(&old);
        assert!(changed.servers[0].healthy.load(Ordering::Relaxed));
        assert!(!changed.servers[1].available(now), "the passive check did not change");
    }

    #[test]
    fn failover_and_weighted_follow_availability() {
        let mut svcs = vec![lb("main", &[("http://10.0.0.1:80", 1)]), lb("fb", &[("http://10.0.0.2:80", 1)])];
        svcs.push(pb::Service {
            id: "f".into(),
            kind: Some(Kind::Failover(pb::Failover { service: "main".into(), fallback: "fb".into() })),
        });
        svcs.push(pb::Service {
            id: "w".into(),
            kind: Some(Kind::Weighted(pb::Weighted {
                services: vec![
                    pb::WeightedService { service: "main".into(), weight: 1 },
                    pb::WeightedService { service: "fb".into(), weight: 1 },
                ],
            })),
        });
        let built = build(&svcs, &[], "").unwrap();
        let Service::LoadBalancer(main) = &*built["main"] else { panic!() };
        main.servers[0].healthy.store(false, Ordering::Relaxed);
        assert!(built["f"].available());
        for _ in 0..3 {
            let c = built["w"].pick_child().unwrap();
            assert!(Arc::ptr_eq(c, &built["fb"]));
        }
    }

    #[test]
    fn a_child_this_data_plane_lost_is_skipped_by_failover_and_weighted() {
        let mc = |id: &str, child: &str| pb::Service {
            id: id.into(),
            kind: Some(Kind::Multicluster(pb::Multicluster { uplink: "crm".into(), child: child.into() })),
        };
        let svcs = vec![
            mc("a", "cluster-a"),
            mc("b", "cluster-b"),
            pb::Service {
                id: "f".into(),
                kind: Some(Kind::Failover(pb::Failover { service: "a".into(), fallback: "b".into() })),
            },
            pb::Service {
                id: "w".into(),
                kind: Some(Kind::Weighted(pb::Weighted {
                    services: vec![
                        pb::WeightedService { service: "a".into(), weight: 1 },
                        pb::WeightedService { service: "b".into(), weight: 1 },
                    ],
                })),
            },
        ];
        let child = |name: &str| pb::Child {
            name: name.into(),
            reachable: true,
            uplinks: vec![pb::UplinkState { name: "crm".into(), weight: 1, healthy: true, entry_points: vec![] }],
            ..Default::default()
        };
        let built = build(&svcs, &[child("cluster-a"), child("cluster-b")], "").unwrap();
        // The snapshot says both are fine; this data plane lost cluster-a.
        let a_down = |c: &str| c == "cluster-a";
        assert!(built["a"].available());
        assert!(!built["a"].available_with(&a_down));
        assert!(built["f"].available_with(&a_down), "the fallback still serves");
        for _ in 0..4 {
            assert!(Arc::ptr_eq(built["w"].pick_child_with(&a_down).unwrap(), &built["b"]));
        }
        assert!(!built["w"].available_with(&|_| true));
    }

    #[test]
    fn dangling_and_cyclic_references_are_errors() {
        let s = pb::Service {
            id: "w".into(),
            kind: Some(Kind::Weighted(pb::Weighted {
                services: vec![pb::WeightedService { service: "w".into(), weight: 1 }],
            })),
        };
        assert!(build(&[s], &[], "").unwrap_err().to_string().contains("refers back"));
        let s = pb::Service {
            id: "f".into(),
            kind: Some(Kind::Failover(pb::Failover { service: "x".into(), fallback: "y".into() })),
        };
        assert!(build(&[s], &[], "").unwrap_err().to_string().contains("unknown service"));
    }
}
