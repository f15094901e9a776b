//! A topology directory: one parent cluster and its children, on disk.
//!
//! ```text
//! example/
//!   parent/values.yaml      ← recognises the directory as a topology
//!   parent/manifests/…
//!   cluster-a/values.yaml   ← a child; its folder name is its cluster name, and the key
//!   cluster-a/manifests/…     under `hub.providers.multicluster.children` in the parent
//! ```
//!
//! `lint` uses it to check the whole picture (an `X@multicluster` service that no child
//! exposes), and `atrium up` runs it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::diagnostic::{Diagnostic, Severity};
use crate::loader::{Manifests, load_paths};
use crate::values::Values;

/// One cluster of a topology.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// `parent`, or the child's name.
    pub name: String,
    /// Its folder.
    pub dir: PathBuf,
    /// Its static configuration.
    pub values: Values,
    /// Its resources.
    pub manifests: Manifests,
}

/// A parent and its children.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The topology's folder.
    pub root: PathBuf,
    /// The parent cluster.
    pub parent: Cluster,
    /// Children, sorted by name.
    pub children: Vec<Cluster>,
}

/// Whether `dir` is a topology directory (it has `parent/values.yaml`).
pub fn is_topology(dir: &Path) -> bool {
    dir.join("parent").join("values.yaml").is_file()
}

fn load_cluster(name: &str, dir: &Path, diags: &mut Vec<Diagnostic>) -> Cluster {
    let values_file = dir.join("values.yaml");
    let (values, d) = Values::load_optional(Some(&values_file).filter(|f| f.is_file()).map(|f| f.as_path()));
    diags.extend(d);
    let manifests_dir = dir.join("manifests");
    let manifests = if manifests_dir.is_dir() { load_paths(&[manifests_dir]) } else { Manifests::default() };
    Cluster { name: name.to_string(), dir: dir.to_path_buf(), values, manifests }
}

/// Loads a topology directory. Findings of values files are returned; each cluster's
/// manifest findings stay in its `manifests.diagnostics`.
pub fn load(root: &Path) -> (Topology, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let parent = load_cluster("parent", &root.join("parent"), &mut diags);
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir(root).map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    dirs.sort();
    let declared: BTreeMap<&String, _> = parent.values.children().collect();
    let mut children = Vec::new();
    for d in dirs {
        let Some(name) = d.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
        if name == "parent" || name.starts_with('.') || !d.is_dir() {
            continue;
        }
        if !d.join("values.yaml").is_file() && !d.join("manifests").is_dir() {
            continue;
        }
        if !declared.contains_key(&name) {
            let file = parent.values.file.clone();
            let msg = format!(
                "child folder {name:?} is not listed under hub.providers.multicluster.children in the parent's values; the parent will not dial it"
            );
            diags.push(match file {
                Some(f) => Diagnostic::at(Severity::Warning, "topology-child", &f, Default::default(), msg),
                None => Diagnostic::general(Severity::Warning, "topology-child", msg),
            });
        }
        children.push(load_cluster(&name, &d, &mut diags));
    }
    for name in declared.keys() {
        if !children.iter().any(|c| &&c.name == name) {
            if let (Some(f), Some(doc)) = (&parent.values.file, &parent.values.doc) {
                let mark = doc.locate(&format!("hub.providers.multicluster.children.{name}")).mark;
                diags.push(Diagnostic::at(
                    Severity::Warning,
                    "topology-child",
                    f,
                    mark,
                    format!("child {name:?} has no folder in this topology; lint cannot check what it exposes"),
                ));
            }
        }
    }
    (Topology { root: root.to_path_buf(), parent, children }, diags)
}
