//! `traefik.io/v1alpha1`: IngressRoute, Middleware and TraefikService, with every field of
//! the upstream CRDs. Fields atrium does not implement yet are typed [`NotSupported`].

use std::collections::BTreeMap;

use atrium_routing::middleware::config::{IntOrString, MiddlewareRef, MiddlewareSpec, NotSupported};
use serde::{Deserialize, Serialize};

use super::meta::ObjectMeta;

/// A CRD object: `apiVersion`, `kind`, `metadata`, `spec`, and an optional exported `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct Object<S> {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: S,
    #[serde(default)]
    pub status: Option<serde_json::Value>,
}

/// `kind` of a service reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ServiceKind {
    /// A Kubernetes Service.
    #[default]
    Service,
    /// A TraefikService (or `…@multicluster`).
    TraefikService,
}

/// Active health check of a service or uplink.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct HealthCheck {
    #[serde(default)]
    pub follow_redirects: Option<bool>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub interval: Option<IntOrString>,
    #[serde(default)]
    pub method: Option<String>,
    /// `http` (default) or `grpc`.
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub port: Option<i64>,
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub status: Option<i64>,
    #[serde(default)]
    pub timeout: Option<IntOrString>,
    #[serde(default)]
    pub unhealthy_interval: Option<IntOrString>,
}

/// Passive health check: eject a server after repeated failures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct PassiveHealthCheck {
    #[serde(default)]
    pub failure_window: Option<IntOrString>,
    #[serde(default)]
    pub max_failed_attempts: Option<i64>,
}

/// Declares a struct holding Traefik's `LoadBalancerSpec` fields plus extra ones.
macro_rules! load_balancer_spec {
    ($(#[$m:meta])* pub struct $name:ident { $($extra:tt)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "camelCase")]
        #[allow(missing_docs)]
        pub struct $name {
            pub name: String,
            #[serde(default)]
            pub namespace: Option<String>,
            #[serde(default)]
            pub kind: Option<ServiceKind>,
            #[serde(default)]
            pub port: Option<IntOrString>,
            #[serde(default)]
            pub scheme: Option<String>,
            #[serde(default)]
            pub weight: Option<i64>,
            #[serde(default)]
            pub pass_host_header: Option<bool>,
            /// Boxed, as are the fields below that most references leave out: the
            /// loader's cache keeps every reference of thousands of routes.
            #[serde(default)]
            pub health_check: Option<Box<HealthCheck>>,
            #[serde(default)]
            pub passive_health_check: Option<PassiveHealthCheck>,
            /// `wrr` (or its old name `RoundRobin`) only, for now.
            #[serde(default)]
            pub strategy: Option<String>,
            #[serde(default)]
            pub middlewares: Option<NotSupported>,
            #[serde(default, rename = "nativeLB")]
            pub native_lb: Option<NotSupported>,
            #[serde(default, rename = "nodePortLB")]
            pub node_port_lb: Option<NotSupported>,
            #[serde(default)]
            pub response_forwarding: Option<NotSupported>,
            #[serde(default)]
            pub servers_transport: Option<NotSupported>,
            #[serde(default)]
            pub sticky: Option<NotSupported>,
            $($extra)*
        }

        impl $name {
            /// The load-balancer fields, shared by every service reference shape.
            pub fn lb(&self) -> LbView<'_> {
                LbView {
                    name: &self.name,
                    namespace: self.namespace.as_deref(),
                    kind: self.kind.unwrap_or_default(),
                    port: self.port.as_ref(),
                    scheme: self.scheme.as_deref(),
                    weight: self.weight,
                    pass_host_header: self.pass_host_header,
                    health_check: self.health_check.as_deref(),
                    passive_health_check: self.passive_health_check.as_ref(),
                    strategy: self.strategy.as_deref(),
                }
            }
        }
    };
}

/// The load-balancer fields of any service reference.
#[derive(Debug, Clone, Copy)]
#[allow(missing_docs)]
pub struct LbView<'a> {
    pub name: &'a str,
    pub namespace: Option<&'a str>,
    pub kind: ServiceKind,
    pub port: Option<&'a IntOrString>,
    pub scheme: Option<&'a str>,
    pub weight: Option<i64>,
    pub pass_host_header: Option<bool>,
    pub health_check: Option<&'a HealthCheck>,
    pub passive_health_check: Option<&'a PassiveHealthCheck>,
    pub strategy: Option<&'a str>,
}

load_balancer_spec! {
    /// A service reference with load-balancing options.
    pub struct ServiceRef {}
}

load_balancer_spec! {
    /// A mirror of a mirroring service.
    pub struct MirrorRef {
        #[serde(default)]
        pub percent: Option<i64>,
    }
}

load_balancer_spec! {
    /// `TraefikService.spec.mirroring`.
    pub struct Mirroring {
        #[serde(default)]
        pub max_body_size: Option<i64>,
        #[serde(default)]
        pub mirror_body: Option<bool>,
        #[serde(default)]
        pub mirrors: Vec<MirrorRef>,
    }
}

/// `IngressRoute.spec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct IngressRouteSpec {
    #[serde(default)]
    pub entry_points: Vec<String>,
    pub routes: Vec<Route>,
    #[serde(default)]
    pub tls: Option<RouteTls>,
    #[serde(default)]
    pub ingress_class_name: Option<NotSupported>,
    #[serde(default)]
    pub parent_refs: Option<NotSupported>,
}

/// `Rule` is the only route kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteKind {
    /// A rule-matched route.
    Rule,
}

/// One route of an IngressRoute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct Route {
    #[serde(rename = "match")]
    pub rule: String,
    #[serde(default)]
    pub kind: Option<RouteKind>,
    #[serde(default)]
    pub priority: Option<i64>,
    #[serde(default)]
    pub middlewares: Vec<MiddlewareRef>,
    #[serde(default)]
    pub services: Vec<ServiceRef>,
    /// Only `v3` (the default) is supported.
    #[serde(default)]
    pub syntax: Option<String>,
    #[serde(default)]
    pub observability: Option<NotSupported>,
}

/// `IngressRoute.spec.tls`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct RouteTls {
    #[serde(default)]
    pub secret_name: Option<String>,
    #[serde(default)]
    pub cert_resolver: Option<NotSupported>,
    #[serde(default)]
    pub domains: Option<NotSupported>,
    #[serde(default)]
    pub options: Option<NotSupported>,
    #[serde(default)]
    pub store: Option<NotSupported>,
}

/// `TraefikService.spec`: exactly one of its kinds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct TraefikServiceSpec {
    #[serde(default)]
    pub weighted: Option<Weighted>,
    #[serde(default)]
    pub mirroring: Option<Mirroring>,
    #[serde(default)]
    pub failover: Option<Failover>,
    #[serde(default)]
    pub highest_random_weight: Option<NotSupported>,
}

/// Weighted round-robin over services.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct Weighted {
    #[serde(default)]
    pub services: Vec<ServiceRef>,
    #[serde(default)]
    pub sticky: Option<NotSupported>,
}

/// Failover from `service` to `fallback`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct Failover {
    pub service: ServiceRef,
    pub fallback: ServiceRef,
    #[serde(default)]
    pub errors: Option<NotSupported>,
}

/// `IngressRoute`.
pub type IngressRoute = Object<IngressRouteSpec>;
/// `Middleware`.
pub type Middleware = Object<MiddlewareSpec>;
/// `TraefikService`.
pub type TraefikService = Object<TraefikServiceSpec>;
