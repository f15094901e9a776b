//! The upstream CRD schemas of the API management kinds (`hub.traefik.io`, vendored in
//! `deploy/crds/`, embedded here): every such object is checked against its version's
//! `openAPIV3Schema`, so what Kubernetes would refuse (a missing required field, a value outside an enum, a pattern, a length or
//! a bound) is an error with the file, line and field, in `lint` and wherever manifests
//! load. Unknown fields are the decoder's to refuse (with what atrium does not implement
//! named); `x-kubernetes-validations` rules are checked by the compiler. The routing kinds
//! (`traefik.io`) keep Traefik's own leniency (for example a failover without `errors`,
//! which newer CRDs require but Traefik accepts): their fields are checked by the decoder
//! and the compiler only.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::Value;

use crate::yaml::{Node, from_node, parse_documents};

/// The vendored CRDs.
const CRDS: &[&str] = &[
    include_str!("../../deploy/crds/hub.traefik.io_accesscontrolpolicies.yaml"),
    include_str!("../../deploy/crds/hub.traefik.io_aiservices.yaml"),
    include_str!("../../deploy/crds/hub.traefik.io_apiauths.yaml"),
    include_str!("../../deploy/crds/hub.traefik.io_apibundles.yaml"),
    include_str!("../../deploy/crds/hub.traefik.io_apicatalogitems.yaml"),
    include_str!("../../deploy/crds/hub.traefik.io_apiplans.yaml"),
    include_str!("../../deploy/crds/hub.traefik.io_apiportalauths.yaml"),
    include_str!("../../deploy/crds/hub.traefik.io_apiportals.yaml"),
    include_str!("../../deploy/crds/hub.traefik.io_apiratelimits.yaml"),
    include_str!("../../deploy/crds/hub.traefik.io_apis.yaml"),
    include_str!("../../deploy/crds/hub.traefik.io_apiversions.yaml"),
    include_str!("../../deploy/crds/hub.traefik.io_contentitems.yaml"),
    include_str!("../../deploy/crds/hub.traefik.io_managedapplications.yaml"),
    include_str!("../../deploy/crds/hub.traefik.io_managedsubscriptions.yaml"),
    include_str!("../../deploy/crds/hub.traefik.io_uplinks.yaml"),
    include_str!("../../deploy/crds/traefik.io_ingressroutes.yaml"),
    include_str!("../../deploy/crds/traefik.io_middlewares.yaml"),
    include_str!("../../deploy/crds/traefik.io_serverstransports.yaml"),
    include_str!("../../deploy/crds/traefik.io_tlsoptions.yaml"),
    include_str!("../../deploy/crds/traefik.io_traefikservices.yaml"),
];

/// (apiVersion, kind) → validator.
static VALIDATORS: LazyLock<HashMap<(String, String), jsonschema::Validator>> = LazyLock::new(|| {
    let mut out = HashMap::new();
    for text in CRDS {
        for doc in parse_documents(text).unwrap_or_default() {
            let Ok(crd) = from_node::<Value>(&doc) else { continue };
            let (Some(group), Some(kind)) = (crd["spec"]["group"].as_str(), crd["spec"]["names"]["kind"].as_str())
            else {
                continue;
            };
            if group != "hub.traefik.io" {
                continue;
            }
            for v in crd["spec"]["versions"].as_array().into_iter().flatten() {
                let Some(name) = v["name"].as_str() else { continue };
                if let Ok(validator) = jsonschema::validator_for(&v["schema"]["openAPIV3Schema"]) {
                    out.insert((format!("{group}/{name}"), kind.to_string()), validator);
                }
            }
        }
    }
    out
});

/// A violation: the field (`spec.routes[0].match`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The field, as a path.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// The upstream schema's complaints about `doc` (an object of `api_version`/`kind`), in
/// document order; none for a kind without a vendored CRD.
pub fn check(api_version: &str, kind: &str, doc: &Node) -> Vec<Violation> {
    let Some(validator) = VALIDATORS.get(&(api_version.to_string(), kind.to_string())) else { return Vec::new() };
    let Ok(value) = from_node::<Value>(doc) else { return Vec::new() };
    validator
        .iter_errors(&value)
        .filter(|e| !is_known_guide_deviation(kind, e))
        // Unknown fields are refused by the decoder with a better message.
        .filter(|e| !matches!(e.kind(), jsonschema::error::ValidationErrorKind::AdditionalProperties { .. }))
        .map(|e| Violation { field: field_path(&e.instance_path().to_string()), message: e.to_string() })
        .collect()
}

/// The guide's APIBundle carries `spec.description`, which the upstream APIBundle schema
/// does not define: users bring the guide's YAML unchanged, so it is accepted.
fn is_known_guide_deviation(kind: &str, e: &jsonschema::ValidationError<'_>) -> bool {
    kind == "APIBundle" && e.instance_path().to_string() == "/spec" && e.to_string().contains("'description'")
}

/// A JSON pointer (`/spec/routes/0/match`) as a field path (`spec.routes[0].match`).
fn field_path(pointer: &str) -> String {
    let mut out = String::new();
    for part in pointer.split('/').skip(1) {
        let part = part.replace("~1", "/").replace("~0", "~");
        if part.parse::<usize>().is_ok() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&part);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_text(text: &str) -> Vec<Violation> {
        let doc = parse_documents(text).unwrap().remove(0);
        let api_version = doc.get("apiVersion").and_then(Node::as_str).unwrap().to_string();
        let kind = doc.get("kind").and_then(Node::as_str).unwrap().to_string();
        check(&api_version, &kind, &doc)
    }

    #[test]
    fn required_fields_enums_patterns_and_bounds_are_checked() {
        let v = check_text(
            "apiVersion: hub.traefik.io/v1alpha1\nkind: ManagedApplication\nmetadata: {name: a}\nspec: {owner: o}\n",
        );
        assert!(v.iter().any(|v| v.field == "spec" && v.message.contains("appId")), "{v:?}");
        let v = check_text(
            "apiVersion: hub.traefik.io/v1alpha1\nkind: APIPlan\nmetadata: {name: p}\nspec: {title: t, rateLimit: {limit: 1, bucket: everyone}}\n",
        );
        assert!(v.iter().any(|v| v.field == "spec.rateLimit.bucket"), "{v:?}");
        let v = check_text(
            "apiVersion: hub.traefik.io/v1alpha1\nkind: Uplink\nmetadata: {name: u}\nspec: {exposeName: CRM_API}\n",
        );
        assert!(v.iter().any(|v| v.field == "spec.exposeName"), "{v:?}");
        let ok = check_text(
            "apiVersion: hub.traefik.io/v1alpha1\nkind: APIBundle\nmetadata: {name: b}\nspec: {description: the guide has it}\n",
        );
        assert!(ok.is_empty(), "{ok:?}");
        assert!(check_text("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {}\n").is_empty());
    }

    #[test]
    fn pointers_become_field_paths() {
        assert_eq!(field_path("/spec/routes/0/match"), "spec.routes[0].match");
        assert_eq!(field_path("/metadata/annotations/hub.traefik.io~1api"), "metadata.annotations.hub.traefik.io/api");
        assert_eq!(field_path(""), "");
    }
}
