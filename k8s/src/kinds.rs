//! The kinds the Kubernetes provider watches: every kind the file provider reads, with how
//! the API server serves it.

use kube::core::ApiResource;

/// One watched kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kind {
    /// The API group (`""` for core).
    pub group: &'static str,
    /// The version.
    pub version: &'static str,
    /// The kind, as written in manifests.
    pub kind: &'static str,
    /// The resource name in URLs.
    pub plural: &'static str,
    /// Defined by a CRD (may be missing from a cluster; parsed strictly).
    pub crd: bool,
    /// The upstream CRD has a `status` subresource that atrium writes.
    pub status: bool,
}

impl Kind {
    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) }
    }

    /// The kube-rs description of the resource.
    pub fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.to_string(),
            version: self.version.to_string(),
            api_version: self.api_version(),
            kind: self.kind.to_string(),
            plural: self.plural.to_string(),
        }
    }

    /// Whether label selectors apply (Traefik applies `labelSelector` to its CRDs only:
    /// Services, EndpointSlices and Secrets are read whatever their labels).
    pub fn selected_by_labels(&self) -> bool {
        self.crd
    }
}

pub(crate) const fn core(kind: &'static str, plural: &'static str) -> Kind {
    Kind { group: "", version: "v1", kind, plural, crd: false, status: false }
}

pub(crate) const fn traefik(kind: &'static str, plural: &'static str) -> Kind {
    Kind { group: "traefik.io", version: "v1alpha1", kind, plural, crd: true, status: false }
}

pub(crate) const fn hub(kind: &'static str, plural: &'static str) -> Kind {
    Kind { group: "hub.traefik.io", version: "v1alpha1", kind, plural, crd: true, status: true }
}

/// Every watched kind, in the order their objects are compiled.
pub const WATCHED: &[Kind] = &[
    core("Service", "services"),
    Kind {
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        plural: "endpointslices",
        crd: false,
        status: false,
    },
    core("Secret", "secrets"),
    traefik("IngressRoute", "ingressroutes"),
    traefik("Middleware", "middlewares"),
    traefik("TraefikService", "traefikservices"),
    // Read to warn that they are not applied yet, as the file provider does.
    traefik("ServersTransport", "serverstransports"),
    traefik("TLSOption", "tlsoptions"),
    hub("Uplink", "uplinks"),
    hub("API", "apis"),
    hub("APIVersion", "apiversions"),
    hub("APIPlan", "apiplans"),
    hub("APIBundle", "apibundles"),
    hub("APICatalogItem", "apicatalogitems"),
    hub("APIPortal", "apiportals"),
    hub("APIPortalAuth", "apiportalauths"),
    hub("APIAuth", "apiauths"),
    hub("ContentItem", "contentitems"),
    hub("ManagedApplication", "managedapplications"),
    hub("ManagedSubscription", "managedsubscriptions"),
];

/// The watched kind named `kind` (as in manifests).
pub fn by_kind(kind: &str) -> Option<&'static Kind> {
    WATCHED.iter().find(|k| k.kind == kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use atrium_model::resources::{KindSupport, kind_support};

    #[test]
    fn every_kind_the_file_provider_reads_is_watched_except_endpoints() {
        for k in WATCHED {
            let s = kind_support(&k.api_version(), k.kind);
            assert!(matches!(s, KindSupport::Known | KindSupport::NotYet), "{} {s:?}", k.kind);
        }
        // Endpoints are mirrored from EndpointSlices by Kubernetes: reading both would
        // count each address twice.
        assert!(by_kind("Endpoints").is_none());
        for kind in ["IngressRoute", "Middleware", "TraefikService", "Service", "EndpointSlice", "Secret", "API"] {
            assert!(by_kind(kind).is_some(), "{kind}");
        }
    }
}
