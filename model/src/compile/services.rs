//! Service references → snapshot services.
//!
//! A reference is one of:
//! - a Kubernetes Service and port → a load balancer over the endpoints that
//!   EndpointSlice or Endpoints manifests list for that port;
//! - `X@multicluster` / `X-<child>@multicluster` → multi-cluster routing;
//! - a TraefikService (`weighted`, `mirroring`, `failover`), compiled recursively;
//! - the built-in portal listener (`apiportal`, namespace `traefik`, port 9903).

use atrium_proto::v1 as pb;
use atrium_routing::middleware::config::{DurationError, IntOrString};
use pb::service::Kind;

use super::Ctx;
use crate::diagnostic::Severity;
use crate::resources::Loaded;
use crate::resources::core::{Service as K8sService, ServicePort};
use crate::resources::traefik::{Failover, HealthCheck, LbView, Mirroring, PassiveHealthCheck, ServiceKind, Weighted};

/// The built-in portal service.
pub const PORTAL_SERVICE: (&str, &str, i64) = ("traefik", "apiportal", 9903);
/// `service`, or when it is the built-in portal service and the router names an APIPortal
/// (`namespace/name`), the portal service of that APIPortal.
pub(super) fn portal_of(cx: &mut Ctx<'_>, service: String, portal: &str) -> String {
    let is_portal = cx.services.get(&service).is_some_and(|s| matches!(s.kind, Some(Kind::Portal(_))));
    if !is_portal || portal.is_empty() {
        return service;
    }
    let id = format!("{service}@{portal}");
    cx.services
        .entry(id.clone())
        .or_insert(pb::Service { id: id.clone(), kind: Some(Kind::Portal(pb::Portal { name: portal.to_string() })) });
    id
}

/// Label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Why a health check (active or passive) cannot be used; [`HealthCheckError::field`] names
/// the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthCheckError {
    /// A mode other than `http`.
    #[error("mode {0:?} is not supported yet (only http)")]
    Mode(String),
    /// A duration that does not read.
    #[error("{source}")]
    Duration {
        /// The field.
        field: &'static str,
        /// Why.
        source: DurationError,
    },
    /// `interval: 0`.
    #[error("interval must be positive")]
    ZeroInterval,
    /// A port outside 1-65535.
    #[error("port {0} is not a port")]
    Port(i64),
    /// A status outside 100-599.
    #[error("status {0} is not an HTTP status")]
    Status(i64),
    /// A scheme other than http, https or h2c.
    #[error("scheme {0:?} must be http, https or h2c")]
    Scheme(String),
}

impl HealthCheckError {
    /// The field at fault, under `healthCheck` or `passiveHealthCheck`.
    pub fn field(&self) -> &'static str {
        match self {
            HealthCheckError::Mode(_) => "mode",
            HealthCheckError::Duration { field, .. } => field,
            HealthCheckError::ZeroInterval => "interval",
            HealthCheckError::Port(_) => "port",
            HealthCheckError::Status(_) => "status",
            HealthCheckError::Scheme(_) => "scheme",
        }
    }
}

/// Milliseconds of `v` (field `field`), or `default_ms` without one.
fn ms(v: Option<&IntOrString>, default_ms: u64, field: &'static str) -> Result<u64, HealthCheckError> {
    match v {
        None => Ok(default_ms),
        Some(d) => d
            .as_duration()
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .map_err(|source| HealthCheckError::Duration { field, source }),
    }
}

/// Converts a health check, applying Traefik's defaults (interval 30s, timeout 5s).
pub fn health_check(h: &HealthCheck) -> Result<pb::HealthCheck, HealthCheckError> {
    if let Some(mode) = h.mode.as_deref() {
        if mode != "http" {
            return Err(HealthCheckError::Mode(mode.to_string()));
        }
    }
    let interval = ms(h.interval.as_ref(), 30_000, "interval")?;
    let timeout = ms(h.timeout.as_ref(), 5_000, "timeout")?;
    let unhealthy = ms(h.unhealthy_interval.as_ref(), interval, "unhealthyInterval")?;
    if interval == 0 {
        return Err(HealthCheckError::ZeroInterval);
    }
    let port = match h.port {
        None => 0,
        Some(p) => u32::try_from(p).ok().filter(|p| *p > 0 && *p <= 65535).ok_or(HealthCheckError::Port(p))?,
    };
    let status = match h.status {
        None => 0,
        Some(s) => u32::try_from(s).ok().filter(|s| (100..600).contains(s)).ok_or(HealthCheckError::Status(s))?,
    };
    if let Some(s) = h.scheme.as_deref() {
        if !matches!(s, "http" | "https" | "h2c") {
            return Err(HealthCheckError::Scheme(s.to_string()));
        }
    }
    Ok(pb::HealthCheck {
        path: h.path.clone().unwrap_or_else(|| "/".into()),
        method: h.method.clone().unwrap_or_else(|| "GET".into()).to_uppercase(),
        scheme: h.scheme.clone().unwrap_or_default(),
        hostname: h.hostname.clone().unwrap_or_default(),
        port,
        interval_ms: interval,
        timeout_ms: timeout,
        unhealthy_interval_ms: unhealthy,
        status,
        follow_redirects: h.follow_redirects.unwrap_or(true),
        headers: h.headers.iter().map(|(k, v)| pb::Header { name: k.clone(), value: v.clone() }).collect(),
    })
}

fn passive(p: &PassiveHealthCheck) -> Result<pb::PassiveHealthCheck, HealthCheckError> {
    Ok(pb::PassiveHealthCheck {
        max_failed_attempts: p.max_failed_attempts.unwrap_or(1).clamp(1, u32::MAX as i64) as u32,
        failure_window_ms: ms(p.failure_window.as_ref(), 10_000, "failureWindow")?,
    })
}

fn port_matches(want: &IntOrString, sp: &ServicePort) -> bool {
    match want {
        IntOrString::Int(p) => i64::from(sp.port) == *p,
        IntOrString::Str(name) => sp.name.as_deref() == Some(name.as_str()),
    }
}

fn same_port_name(a: Option<&str>, b: Option<&str>) -> bool {
    a.unwrap_or("") == b.unwrap_or("")
}

fn host_port(ip: &str, port: i32) -> String {
    if ip.contains(':') { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") }
}

impl<'a> Ctx<'a> {
    /// Compiles one reference; returns the service id, or `None` after reporting why.
    pub(super) fn service_ref(
        &mut self,
        obj: &'a Loaded,
        ns: &str,
        r: LbView<'_>,
        path: &str,
        owner: &str,
    ) -> Option<String> {
        let name = r.name;
        if let Some(strategy) = r.strategy {
            if !matches!(strategy, "wrr" | "RoundRobin") {
                self.err(
                    obj,
                    &format!("{path}.strategy"),
                    "unsupported-field",
                    format!("strategy {strategy:?} is not supported yet (only wrr)"),
                );
                return None;
            }
        }
        if let Some(uplink) = name.strip_suffix("@multicluster") {
            return self.multicluster(obj, uplink, path);
        }
        if let Some((_, provider)) = name.split_once('@') {
            if provider != "kubernetescrd" {
                self.err(obj, &format!("{path}.name"), "unresolved-reference", format!("service {name:?}: provider {provider:?} is not available in atrium (only kubernetescrd and multicluster)"));
                return None;
            }
        }
        let bare = name.split('@').next().unwrap_or(name);
        let svc_ns = r.namespace.unwrap_or(ns);
        match r.kind {
            ServiceKind::TraefikService => self.traefik_service(obj, svc_ns, bare, path),
            ServiceKind::Service => {
                let port_is_portal = r.port.is_none_or(|p| matches!(p, IntOrString::Int(9903)));
                if (svc_ns, bare) == (PORTAL_SERVICE.0, PORTAL_SERVICE.1) && port_is_portal {
                    let id = format!("{}/{}:{}", PORTAL_SERVICE.0, PORTAL_SERVICE.1, PORTAL_SERVICE.2);
                    self.services.entry(id.clone()).or_insert(pb::Service {
                        id: id.clone(),
                        kind: Some(Kind::Portal(pb::Portal { name: String::new() })),
                    });
                    return Some(id);
                }
                self.kubernetes_service(obj, svc_ns, bare, r, path, owner)
            }
        }
    }

    fn multicluster(&mut self, obj: &'a Loaded, name: &str, path: &str) -> Option<String> {
        let id = format!("{name}@multicluster");
        let target = match self.registry {
            None => Some(pb::Multicluster { uplink: name.to_string(), child: String::new() }),
            Some(reg) => super::resolve_multicluster(reg, name),
        };
        let Some(target) = target else {
            self.err(
                obj,
                &format!("{path}.name"),
                "multicluster-unknown-uplink",
                format!(
                    "no child cluster exposes an uplink for {id:?} (uplinks: {})",
                    super::known_uplinks(self.registry)
                ),
            );
            return None;
        };
        self.services
            .entry(id.clone())
            .or_insert(pb::Service { id: id.clone(), kind: Some(Kind::Multicluster(target)) });
        Some(id)
    }

    fn traefik_service(&mut self, obj: &'a Loaded, ns: &str, name: &str, path: &str) -> Option<String> {
        let id = format!("{ns}/{name}");
        if self.services.contains_key(&id) {
            return Some(id);
        }
        let Some(&(ts_obj, ts)) = self.traefik_services.get(&(ns.to_string(), name.to_string())) else {
            self.err(
                obj,
                &format!("{path}.name"),
                "unresolved-reference",
                format!("TraefikService {id} does not exist"),
            );
            return None;
        };
        if self.in_progress.contains(&id) {
            self.err(
                obj,
                &format!("{path}.name"),
                "reference-cycle",
                format!("TraefikService {id} refers back to itself"),
            );
            return None;
        }
        let set = [ts.spec.weighted.is_some(), ts.spec.mirroring.is_some(), ts.spec.failover.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if set != 1 {
            self.err(
                ts_obj,
                "spec",
                "schema",
                "a TraefikService needs exactly one of weighted, mirroring or failover".to_string(),
            );
            return None;
        }
        self.in_progress.push(id.clone());
        let kind = if let Some(w) = &ts.spec.weighted {
            self.weighted_kind(ts_obj, ns, &id, w)
        } else if let Some(m) = &ts.spec.mirroring {
            self.mirroring_kind(ts_obj, ns, &id, m)
        } else {
            let f = ts.spec.failover.as_ref()?;
            self.failover_kind(ts_obj, ns, &id, f)
        };
        self.in_progress.pop();
        let kind = kind?;
        self.services.insert(id.clone(), pb::Service { id: id.clone(), kind: Some(kind) });
        Some(id)
    }

    /// Compiles the `weighted` TraefikService `id`; `None` when one of its services does not resolve.
    fn weighted_kind(&mut self, ts_obj: &'a Loaded, ns: &str, id: &str, w: &Weighted) -> Option<Kind> {
        let mut services = Vec::new();
        for (i, s) in w.services.iter().enumerate() {
            let p = format!("spec.weighted.services[{i}]");
            let sid = self.service_ref(ts_obj, ns, s.lb(), &p, id);
            let weight = s.weight.unwrap_or(1);
            if weight < 0 {
                self.err(ts_obj, &format!("{p}.weight"), "schema", "weight must not be negative".into());
            }
            services.push(sid.map(|sid| pb::WeightedService { service: sid, weight: weight.max(0) as u32 }));
        }
        services.into_iter().collect::<Option<Vec<_>>>().map(|mut s| {
            s.sort_by(|a, b| a.service.cmp(&b.service));
            Kind::Weighted(pb::Weighted { services: s })
        })
    }

    /// Compiles the `mirroring` TraefikService `id`; `None` when its service or a mirror does
    /// not resolve.
    fn mirroring_kind(&mut self, ts_obj: &'a Loaded, ns: &str, id: &str, m: &Mirroring) -> Option<Kind> {
        let main = self.service_ref(ts_obj, ns, m.lb(), "spec.mirroring", id);
        let mut mirrors = Vec::new();
        for (i, mr) in m.mirrors.iter().enumerate() {
            let p = format!("spec.mirroring.mirrors[{i}]");
            let percent = mr.percent.unwrap_or(0);
            if !(0..=100).contains(&percent) {
                self.err(
                    ts_obj,
                    &format!("{p}.percent"),
                    "schema",
                    format!("percent {percent} must be between 0 and 100"),
                );
            }
            mirrors.push(
                self.service_ref(ts_obj, ns, mr.lb(), &p, id)
                    .map(|s| pb::Mirror { service: s, percent: percent.clamp(0, 100) as u32 }),
            );
        }
        match (main, mirrors.into_iter().collect::<Option<Vec<_>>>()) {
            (Some(service), Some(mut mirrors)) => {
                mirrors.sort_by(|a, b| a.service.cmp(&b.service));
                Some(Kind::Mirroring(pb::Mirroring {
                    service,
                    mirrors,
                    mirror_body: m.mirror_body.unwrap_or(true),
                    max_body_size: m.max_body_size.unwrap_or(-1),
                }))
            }
            _ => None,
        }
    }

    /// Compiles the `failover` TraefikService `id`; `None` when its service or fallback does
    /// not resolve.
    fn failover_kind(&mut self, ts_obj: &'a Loaded, ns: &str, id: &str, f: &Failover) -> Option<Kind> {
        let service = self.service_ref(ts_obj, ns, f.service.lb(), "spec.failover.service", id);
        let fallback = self.service_ref(ts_obj, ns, f.fallback.lb(), "spec.failover.fallback", id);
        match (service, fallback) {
            (Some(service), Some(fallback)) => Some(Kind::Failover(pb::Failover { service, fallback })),
            _ => None,
        }
    }

    fn kubernetes_service(
        &mut self,
        obj: &'a Loaded,
        ns: &str,
        name: &str,
        r: LbView<'_>,
        path: &str,
        owner: &str,
    ) -> Option<String> {
        let Some(&(svc_obj, svc)) = self.k8s_services.get(&(ns.to_string(), name.to_string())) else {
            self.err(
                obj,
                &format!("{path}.name"),
                "unresolved-reference",
                format!("Service {ns}/{name} does not exist"),
            );
            return None;
        };
        let sp = self.service_port(obj, ns, name, svc, r.port, path)?;
        let scheme = self.server_scheme(obj, path, r.scheme, sp)?;
        let servers = self.servers(svc_obj, ns, name, svc, sp, &scheme);
        let (hc, ph) = self.health_checks(obj, path, r)?;
        let lb = pb::LoadBalancer {
            servers,
            pass_host_header: r.pass_host_header.unwrap_or(true),
            health_check: hc,
            passive_health_check: ph,
            scheme: if scheme == "h2c" { "h2c".into() } else { String::new() },
        };
        let port_label = r.port.map(|p| p.to_string()).unwrap_or_else(|| sp.port.to_string());
        let base = format!("{ns}/{name}:{port_label}");
        let default_opts = r.pass_host_header.is_none()
            && r.health_check.is_none()
            && r.passive_health_check.is_none()
            && r.scheme.is_none();
        let id = if default_opts { base } else { format!("{base}@{owner}") };
        self.services.insert(id.clone(), pb::Service { id: id.clone(), kind: Some(Kind::LoadBalancer(lb)) });
        Some(id)
    }

    /// The port of Service `ns/name` that a reference asks for (`want`, or its only port);
    /// `None` after reporting why there is none.
    fn service_port(
        &mut self,
        obj: &'a Loaded,
        ns: &str,
        name: &str,
        svc: &'a K8sService,
        want: Option<&IntOrString>,
        path: &str,
    ) -> Option<&'a ServicePort> {
        let sp = match want {
            Some(want) => svc.spec.ports.iter().find(|sp| port_matches(want, sp)),
            None if svc.spec.ports.len() == 1 => svc.spec.ports.first(),
            None => {
                self.err(
                    obj,
                    path,
                    "schema",
                    format!("Service {ns}/{name} has {} ports: say which with `port`", svc.spec.ports.len()),
                );
                return None;
            }
        };
        if sp.is_none() {
            let want = want.map(|p| p.to_string()).unwrap_or_default();
            self.err(
                obj,
                &format!("{path}.port"),
                "unresolved-reference",
                format!("Service {ns}/{name} has no port {want}"),
            );
        }
        sp
    }

    /// The scheme to reach the servers of port `sp` with: the reference's, or `https` for
    /// port 443 and ports named `https…`; `None` after reporting a scheme that is not one.
    fn server_scheme(&mut self, obj: &'a Loaded, path: &str, scheme: Option<&str>, sp: &ServicePort) -> Option<String> {
        match scheme {
            Some(s @ ("http" | "https" | "h2c")) => Some(s.to_string()),
            Some(s) => {
                self.err(obj, &format!("{path}.scheme"), "schema", format!("scheme {s:?} must be http, https or h2c"));
                None
            }
            None if sp.port == 443 || sp.name.as_deref().is_some_and(|n| n.starts_with("https")) => {
                Some("https".into())
            }
            None => Some("http".into()),
        }
    }

    /// The servers of port `sp` of a Service, sorted; warns once when it has none.
    fn servers(
        &mut self,
        svc_obj: &'a Loaded,
        ns: &str,
        name: &str,
        svc: &K8sService,
        sp: &ServicePort,
        scheme: &str,
    ) -> Vec<pb::Server> {
        let mut servers: Vec<pb::Server> = self
            .endpoints(ns, svc, sp)
            .into_iter()
            .map(|hp| pb::Server { url: format!("{scheme}://{hp}"), weight: 1 })
            .collect();
        servers.sort_by(|a, b| a.url.cmp(&b.url));
        servers.dedup();
        if servers.is_empty() {
            self.warn_once(
                svc_obj,
                format!("no-endpoints:{ns}/{name}:{}", sp.port),
                "no-endpoints",
                format!("Service {ns}/{name} port {} has no ready endpoints (add an EndpointSlice or Endpoints manifest); requests to it get 503", sp.port),
            );
        }
        servers
    }

    /// The active and passive health checks of a reference; `None` after reporting one that
    /// cannot be used.
    fn health_checks(
        &mut self,
        obj: &'a Loaded,
        path: &str,
        r: LbView<'_>,
    ) -> Option<(Option<pb::HealthCheck>, Option<pb::PassiveHealthCheck>)> {
        let hc = match r.health_check.map(health_check).transpose() {
            Ok(h) => h,
            Err(e) => {
                self.err(obj, &format!("{path}.healthCheck.{}", e.field()), "schema", e.to_string());
                return None;
            }
        };
        let ph = match r.passive_health_check.map(passive).transpose() {
            Ok(p) => p,
            Err(e) => {
                self.err(obj, &format!("{path}.passiveHealthCheck.{}", e.field()), "schema", e.to_string());
                return None;
            }
        };
        Some((hc, ph))
    }

    /// `ip:port` of every ready endpoint of a Service port, from EndpointSlices and
    /// Endpoints (or the ExternalName).
    fn endpoints(&self, ns: &str, svc: &K8sService, sp: &ServicePort) -> Vec<String> {
        let name = &svc.metadata.name;
        let mut out = Vec::new();
        for (slice_obj, slice) in &self.slices {
            if slice_obj.ns() != ns || slice.metadata.labels.get(SERVICE_NAME_LABEL) != Some(name) {
                continue;
            }
            let port = slice
                .ports
                .iter()
                .find(|p| same_port_name(p.name.as_deref(), sp.name.as_deref()))
                .or_else(|| (slice.ports.len() == 1).then(|| &slice.ports[0]))
                .and_then(|p| p.port);
            let Some(port) = port else { continue };
            for ep in &slice.endpoints {
                if ep.conditions.ready == Some(false) {
                    continue;
                }
                out.extend(ep.addresses.iter().map(|a| host_port(a, port)));
            }
        }
        if let Some(eps) = self.endpoints_objects.get(&(ns.to_string(), name.clone())) {
            for subset in &eps.subsets {
                let port = subset
                    .ports
                    .iter()
                    .find(|p| same_port_name(p.name.as_deref(), sp.name.as_deref()))
                    .or_else(|| (subset.ports.len() == 1).then(|| &subset.ports[0]))
                    .and_then(|p| p.port);
                let Some(port) = port else { continue };
                out.extend(subset.addresses.iter().map(|a| host_port(&a.ip, port)));
            }
        }
        if out.is_empty() && svc.spec.type_.as_deref() == Some("ExternalName") {
            if let Some(ext) = &svc.spec.external_name {
                out.push(host_port(ext, sp.port));
            }
        }
        out
    }

    pub(super) fn warn_once(&mut self, obj: &Loaded, key: String, code: &'static str, msg: String) {
        if self.warned.insert(key) {
            self.diag(Severity::Warning, obj, "", code, msg);
        }
    }
}
