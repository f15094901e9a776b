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

/// Every kind atrium reads. Each boxed: the kinds differ in size by hundreds of bytes,
/// and the loader's cache keeps thousands of them.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Resource {
    IngressRoute(Box<traefik::IngressRoute>),
    Middleware(Box<traefik::Middleware>),
    TraefikService(Box<traefik::TraefikService>),
    Service(Box<core::Service>),
    EndpointSlice(Box<core::EndpointSlice>),
    Endpoints(Box<core::Endpoints>),
    Secret(Box<core::Secret>),
    Uplink(Box<hub::Uplink>),
    Api(Box<hub::Api>),
    ApiVersion(Box<hub::ApiVersion>),
    ApiPlan(Box<hub::ApiPlan>),
    ApiBundle(Box<hub::ApiBundle>),
    ApiCatalogItem(Box<hub::ApiCatalogItem>),
    ApiPortal(Box<hub::ApiPortal>),
    ApiPortalAuth(Box<hub::ApiPortalAuth>),
    ApiAuth(Box<hub::ApiAuth>),
    ContentItem(Box<hub::ContentItem>),
    ManagedApplication(Box<hub::ManagedApplication>),
    ManagedSubscription(Box<hub::ManagedSubscription>),
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
        "IngressRoute" => Resource::IngressRoute(Box::new(from_node(doc)?)),
        "Middleware" => Resource::Middleware(Box::new(from_node(doc)?)),
        "TraefikService" => Resource::TraefikService(Box::new(from_node(doc)?)),
        "Service" => Resource::Service(Box::new(from_node(doc)?)),
        "EndpointSlice" => Resource::EndpointSlice(Box::new(from_node(doc)?)),
        "Endpoints" => Resource::Endpoints(Box::new(from_node(doc)?)),
        "Secret" => Resource::Secret(Box::new(from_node(doc)?)),
        "Uplink" => Resource::Uplink(Box::new(from_node(doc)?)),
        "API" => Resource::Api(Box::new(from_node(doc)?)),
        "APIVersion" => Resource::ApiVersion(Box::new(from_node(doc)?)),
        "APIPlan" => Resource::ApiPlan(Box::new(from_node(doc)?)),
        "APIBundle" => Resource::ApiBundle(Box::new(from_node(doc)?)),
        "APICatalogItem" => Resource::ApiCatalogItem(Box::new(from_node(doc)?)),
        "APIPortal" => Resource::ApiPortal(Box::new(from_node(doc)?)),
        "APIPortalAuth" => Resource::ApiPortalAuth(Box::new(from_node(doc)?)),
        "APIAuth" => Resource::ApiAuth(Box::new(from_node(doc)?)),
        "ContentItem" => Resource::ContentItem(Box::new(from_node(doc)?)),
        "ManagedApplication" => Resource::ManagedApplication(Box::new(from_node(doc)?)),
        "ManagedSubscription" => Resource::ManagedSubscription(Box::new(from_node(doc)?)),
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
    /// Where its document is in the file's text, for positions.
    pub source: DocSource,
    /// The typed resource, shared with the loader's cache of documents (see
    /// [`crate::loader::DocCache`]).
    pub resource: Arc<Resource>,
}

/// Where a loaded object's document is: a part of its file's text (cut at document
/// markers), the document's index within it, and, for an item of a `List`, the item's
/// index. The tree is not kept: positions are found by parsing that part again, which
/// only a finding about the object needs.
#[derive(Clone)]
pub struct DocSource {
    /// The whole file's text.
    pub text: Arc<str>,
    /// The part of `text` the document was parsed from.
    pub range: std::ops::Range<usize>,
    /// The 1-based line of the file where that part begins.
    pub line: usize,
    /// The document's index within that part.
    pub doc: usize,
    /// The item's index, for an object of a `List`.
    pub item: Option<usize>,
}

impl std::fmt::Debug for DocSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DocSource(line {}, document {}, item {:?})", self.line, self.doc, self.item)
    }
}

impl DocSource {
    /// The position of `field` (`spec.routes[0].match`), or of its closest parent; in the
    /// file, as the loader saw it.
    pub fn mark(&self, field: &str) -> Mark {
        let start = Mark { line: self.line, col: 1 };
        let Some(part) = self.text.get(self.range.clone()) else { return start };
        let Ok(docs) = crate::yaml::parse_documents(part) else { return start };
        let Some(mut node) = docs.get(self.doc) else { return start };
        if let Some(i) = self.item {
            match node.get("items").map(|n| &n.kind) {
                Some(crate::yaml::NodeKind::Seq(items)) if i < items.len() => node = &items[i],
                _ => return start,
            }
        }
        let m = node.locate(field).mark;
        Mark { line: m.line + self.line - 1, col: m.col }
    }
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
        self.source.mark(field)
    }

    /// `Kind namespace/name`, for messages.
    pub fn label(&self) -> String {
        format!("{} {}", self.resource.kind(), self.id())
    }
}
