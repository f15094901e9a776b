//! Typed resources: the Kubernetes-style objects users write.
//!
//! [`Resource`] is the closed set of kinds atrium reads. Each loaded object keeps its
//! source file and YAML tree ([`Loaded`]), so any later check — the compiler, `lint` — can
//! point at the exact line of the field it complains about.

pub mod core;
pub mod hub;
pub mod meta;
pub mod traefik;

use std::path::Path;
use std::sync::Arc;

use crate::yaml::{Mark, Node};

pub use meta::ObjectMeta;

/// The group of Traefik's proxy kinds.
pub const TRAEFIK_GROUP: &str = "traefik.io";
/// The group of Traefik Hub's kinds.
pub const HUB_GROUP: &str = "hub.traefik.io";

/// Every kind atrium reads.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Resource {
    IngressRoute(traefik::IngressRoute),
    Middleware(traefik::Middleware),
    TraefikService(traefik::TraefikService),
    Service(core::Service),
    EndpointSlice(core::EndpointSlice),
    Endpoints(core::Endpoints),
    Secret(core::Secret),
    Uplink(hub::Uplink),
    Api(hub::Api),
    ApiVersion(hub::ApiVersion),
    ApiPlan(hub::ApiPlan),
    ApiBundle(hub::ApiBundle),
    ApiCatalogItem(hub::ApiCatalogItem),
    ApiPortal(hub::ApiPortal),
    ApiPortalAuth(hub::ApiPortalAuth),
    ApiAuth(hub::ApiAuth),
    ContentItem(hub::ContentItem),
    ManagedApplication(hub::ManagedApplication),
    ManagedSubscription(hub::ManagedSubscription),
}

macro_rules! each_resource {
    ($self:expr, $r:ident => $e:expr) => {
        match $self {
            Resource::IngressRoute($r) => $e,
            Resource::Middleware($r) => $e,
            Resource::TraefikService($r) => $e,
            Resource::Service($r) => $e,
            Resource::EndpointSlice($r) => $e,
            Resource::Endpoints($r) => $e,
            Resource::Secret($r) => $e,
            Resource::Uplink($r) => $e,
            Resource::Api($r) => $e,
            Resource::ApiVersion($r) => $e,
            Resource::ApiPlan($r) => $e,
            Resource::ApiBundle($r) => $e,
            Resource::ApiCatalogItem($r) => $e,
            Resource::ApiPortal($r) => $e,
            Resource::ApiPortalAuth($r) => $e,
            Resource::ApiAuth($r) => $e,
            Resource::ContentItem($r) => $e,
            Resource::ManagedApplication($r) => $e,
            Resource::ManagedSubscription($r) => $e,
        }
    };
}

impl Resource {
    /// The object's metadata.
    pub fn meta(&self) -> &ObjectMeta {
        each_resource!(self, r => &r.metadata)
    }

    /// The kind, as written in manifests.
    pub fn kind(&self) -> &str {
        each_resource!(self, r => &r.kind)
    }
}

/// How a document's `apiVersion`/`kind` is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindSupport {
    /// A kind atrium reads.
    Known,
    /// A kind of a group atrium handles, not implemented yet: a warning, never dropped
    /// silently.
    NotYet,
    /// A kind of a Traefik group under an API version atrium does not read.
    WrongVersion,
    /// Anything else (Deployment, ConfigMap, …): skipped.
    Foreign,
}

/// Classifies a document by its `apiVersion` and `kind`.
pub fn kind_support(api_version: &str, kind: &str) -> KindSupport {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    match group {
        TRAEFIK_GROUP | HUB_GROUP if version != "v1alpha1" => KindSupport::WrongVersion,
        TRAEFIK_GROUP => match kind {
            "IngressRoute" | "Middleware" | "TraefikService" => KindSupport::Known,
            _ => KindSupport::NotYet,
        },
        HUB_GROUP => match kind {
            "Uplink"
            | "API"
            | "APIVersion"
            | "APIBundle"
            | "APIPlan"
            | "APICatalogItem"
            | "APIPortal"
            | "APIPortalAuth"
            | "APIAuth"
            | "ContentItem"
            | "ManagedApplication"
            | "ManagedSubscription" => KindSupport::Known,
            _ => KindSupport::NotYet,
        },
        "traefik.containo.us" => KindSupport::WrongVersion,
        "" if version == "v1" => match kind {
            "Service" | "Endpoints" | "Secret" => KindSupport::Known,
            _ => KindSupport::Foreign,
        },
        "discovery.k8s.io" if kind == "EndpointSlice" && version == "v1" => KindSupport::Known,
        _ => KindSupport::Foreign,
    }
}

/// Deserialises a document of a known kind.
pub fn decode(kind: &str, doc: &Node) -> Result<Resource, crate::yaml::DeError> {
    use crate::yaml::from_node;
    Ok(match kind {
        "IngressRoute" => Resource::IngressRoute(from_node(doc)?),
        "Middleware" => Resource::Middleware(from_node(doc)?),
        "TraefikService" => Resource::TraefikService(from_node(doc)?),
        "Service" => Resource::Service(from_node(doc)?),
        "EndpointSlice" => Resource::EndpointSlice(from_node(doc)?),
        "Endpoints" => Resource::Endpoints(from_node(doc)?),
        "Secret" => Resource::Secret(from_node(doc)?),
        "Uplink" => Resource::Uplink(from_node(doc)?),
        "API" => Resource::Api(from_node(doc)?),
        "APIVersion" => Resource::ApiVersion(from_node(doc)?),
        "APIPlan" => Resource::ApiPlan(from_node(doc)?),
        "APIBundle" => Resource::ApiBundle(from_node(doc)?),
        "APICatalogItem" => Resource::ApiCatalogItem(from_node(doc)?),
        "APIPortal" => Resource::ApiPortal(from_node(doc)?),
        "APIPortalAuth" => Resource::ApiPortalAuth(from_node(doc)?),
        "APIAuth" => Resource::ApiAuth(from_node(doc)?),
        "ContentItem" => Resource::ContentItem(from_node(doc)?),
        "ManagedApplication" => Resource::ManagedApplication(from_node(doc)?),
        "ManagedSubscription" => Resource::ManagedSubscription(from_node(doc)?),
        other => {
            return Err(crate::yaml::DeError {
                mark: Some(doc.mark),
                path: "kind".into(),
                message: format!("kind {other:?} is not a kind atrium decodes"),
            });
        }
    })
}

/// A resource with where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The source file.
    pub file: Arc<Path>,
    /// The document, for positions.
    pub doc: Node,
    /// The typed resource.
    pub resource: Resource,
}

impl Loaded {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        let m = self.resource.meta();
        format!("{}/{}", m.ns(), m.name)
    }

    /// The namespace (`default` when unset).
    pub fn ns(&self) -> &str {
        self.resource.meta().ns()
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.resource.meta().name
    }

    /// The position of a field (`spec.routes[0].match`), or of its closest parent.
    pub fn mark(&self, field: &str) -> Mark {
        self.doc.locate(field).mark
    }

    /// `Kind namespace/name`, for messages.
    pub fn label(&self) -> String {
        format!("{} {}", self.resource.kind(), self.id())
    }
}
