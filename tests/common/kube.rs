//! Helpers for the Kubernetes provider's tests.
#![allow(dead_code)]

use std::path::Path;

use serde_json::Value;

/// The objects of every manifest file under `dir` (sorted) that the provider watches, as
/// JSON: what `kubectl apply -f dir` would leave in a cluster for atrium to read.
pub fn objects(dir: &Path) -> Vec<Value> {
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        out.extend(documents(&std::fs::read_to_string(&f).unwrap()));
    }
    out
}

/// The documents of a YAML text whose kind the provider watches, as JSON.
pub fn documents(text: &str) -> Vec<Value> {
    atrium_model::yaml::parse_documents(text)
        .unwrap()
        .iter()
        .map(|doc| atrium_model::yaml::from_node::<Value>(doc).unwrap())
        .filter(|v| v["kind"].as_str().and_then(atrium_k8s::kinds::by_kind).is_some())
        .collect()
}
