//! Manifests and values as an operator (or an attacker who can write them) provides them:
//! loaded, compiled, and turned into a route table. What the `manifests` fuzz target runs,
//! and what the stable test below replays from its corpus.
//!
//! It must return for any input, without panicking.

use crate::values::Values;

/// One file's text: as manifests (loaded, compiled over the default values, the snapshot
/// made a route table), and as values.
pub fn manifests(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let m = crate::loader::load_text("fuzz.yaml", text);
    let values = Values::default();
    let (compiled, _) = crate::lint::lint_cluster(&m, &values, crate::lint::Role::Parent, None);
    let _ = atrium_routing::table::RouteTable::from_snapshot(&compiled.body, |_| ());
    let _ = Values::parse(std::path::Path::new("values.yaml"), text);
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_manifests_corpus_replays_without_a_panic() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/manifests");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            super::manifests(&std::fs::read(e.unwrap().path()).unwrap());
            n += 1;
        }
        assert!(n > 0, "the manifests corpus is empty");
    }
}
