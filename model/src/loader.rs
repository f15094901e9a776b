//! The one manifest loader: files or directories (recursive), multi-document YAML or JSON,
//! into typed [`Loaded`] resources plus every problem found on the way.
//!
//! Errors are collected, not fatal: a user sees every broken document in one run. Kinds of
//! other API groups (Deployment, ConfigMap, …) are skipped with a debug log, because real
//! manifests mix them in; kinds of Traefik's groups that atrium does not handle yet are
//! warnings, never dropped silently.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::diagnostic::{Diagnostic, Severity};
use crate::resources::{DocSource, KindSupport, Loaded, Resource, decode, kind_support};
use crate::yaml::{Node, NodeKind, parse_documents};

/// Loaded resources and the findings of loading them.
#[derive(Debug, Default, Clone)]
pub struct Manifests {
    /// Resources that decoded, in load order (files sorted by path).
    pub resources: Vec<Loaded>,
    /// Problems, in load order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Manifests {
    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// Resources of one kind.
    pub fn iter(&self) -> impl Iterator<Item = &Loaded> {
        self.resources.iter()
    }
}

fn is_manifest_file(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>, diags: &mut Vec<Diagnostic>) {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            let mut entries: Vec<PathBuf> = match fs::read_dir(path) {
                Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
                Err(e) => {
                    diags.push(Diagnostic::general(
                        Severity::Error,
                        "io",
                        format!("{}: cannot read directory: {e}", path.display()),
                    ));
                    return;
                }
            };
            entries.sort();
            for e in entries {
                let hidden = e.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
                if hidden {
                    continue;
                }
                if e.is_dir() {
                    collect_files(&e, out, diags);
                } else if is_manifest_file(&e) {
                    out.push(e);
                }
            }
        }
        Ok(_) => out.push(path.to_path_buf()),
        Err(e) => diags.push(Diagnostic::general(Severity::Error, "io", format!("{}: {e}", path.display()))),
    }
}

/// Largest manifest or values file read (a bigger one is an error, not a memory spike in
/// the process that serves traffic). Kubernetes keeps each object under 1.5 MiB.
pub const MAX_FILE_BYTES: u64 = 32 << 20;

/// Why a configuration file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// It cannot be opened or read.
    #[error("{}: {source}", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is larger than [`MAX_FILE_BYTES`].
    #[error("{}: larger than {} MiB; not read", file.display(), MAX_FILE_BYTES >> 20)]
    TooLarge {
        /// The file.
        file: PathBuf,
    },
    /// It is not UTF-8 text.
    #[error("{}: not UTF-8 text: {source}", file.display())]
    NotText {
        /// The file.
        file: PathBuf,
        /// Where it stops being text.
        source: std::string::FromUtf8Error,
    },
}

/// Reads a configuration file as text, up to [`MAX_FILE_BYTES`]; the error names the file.
pub fn read_text(path: &Path) -> Result<String, ReadError> {
    use std::io::Read;
    let io = |source| ReadError::Io { file: path.to_path_buf(), source };
    let f = fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    // One byte past the limit tells a file that is too large (also one growing as it is read).
    f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ReadError::TooLarge { file: path.to_path_buf() });
    }
    String::from_utf8(bytes).map_err(|source| ReadError::NotText { file: path.to_path_buf(), source })
}

/// Loads every manifest under `paths`.
pub fn load_paths<P: AsRef<Path>>(paths: &[P]) -> Manifests {
    load_paths_cached(paths, &mut DocCache::default())
}

/// [`load_paths`], parsing only the documents `cache` has not seen (see [`DocCache`]); the
/// cache then holds this load's documents, and only those.
pub fn load_paths_cached<P: AsRef<Path>>(paths: &[P], cache: &mut DocCache) -> Manifests {
    let mut m = Manifests::default();
    let mut files = Vec::new();
    for p in paths {
        collect_files(p.as_ref(), &mut files, &mut m.diagnostics);
    }
    let mut next = DocCache { hasher: cache.hasher.clone(), docs: HashMap::with_capacity(cache.docs.len()), parsed: 0 };
    for f in files {
        match read_text(&f) {
            Ok(text) => load_part_cached(&f, Arc::from(text), &mut m, cache, &mut next),
            Err(e) => m.diagnostics.push(Diagnostic::general(Severity::Error, "io", e.to_string())),
        }
    }
    tracing::debug!(
        parts = next.docs.len(),
        parsed = next.parsed,
        "manifests loaded (parts parsed; the others cached)"
    );
    *cache = next;
    check_duplicates(&mut m);
    m
}

/// Loads the documents of one file's text into `m`.
pub fn load_str(file: &Path, text: &str, m: &mut Manifests) {
    let mut next = DocCache::default();
    load_part_cached(file, Arc::from(text), m, &mut DocCache::default(), &mut next);
}

/// What loading the documents of a part of a file found, positioned as if the part began
/// the file (line 1): kept by [`DocCache`], placed at the part's line when used.
#[derive(Debug, Default)]
struct LoadedPart {
    /// Each object, with its document's index in the part and its item index in a `List`.
    resources: Vec<(Arc<Resource>, usize, Option<usize>)>,
    diagnostics: Vec<Diagnostic>,
}

/// The documents of the last load, by the hash of their text (a part of a file cut at
/// document markers, see [`split_documents`]): a reload parses only the parts whose text
/// changed. A 10,000-route file edited in one place is parsed in one place.
///
/// What it keeps per part is the typed objects (shared with the loads that use them) and
/// the findings; no YAML tree. Keyed with a per-process random hash: manifests are trusted
/// input, and a collision needs the key.
#[derive(Debug, Default)]
pub struct DocCache {
    hasher: std::hash::RandomState,
    docs: HashMap<u64, Arc<LoadedPart>>,
    /// Parts parsed by the load that filled it (the others were found in the cache).
    parsed: usize,
}

impl DocCache {
    /// Parts held.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// Parts the load that filled it had to parse (the others it found here).
    pub fn parsed(&self) -> usize {
        self.parsed
    }
}

/// The parts of a YAML stream that parse on their own, as byte ranges with their first
/// line: cut before each document marker (`---` at the start of a line, which no scalar
/// may contain). A stream with directives (`%YAML`, `%TAG`, which apply to the document
/// that follows) is one part.
fn split_documents(text: &str) -> Vec<(std::ops::Range<usize>, usize)> {
    let mut parts = Vec::new();
    let (mut start, mut start_line, mut line, mut at) = (0, 1, 1, 0);
    let bytes = text.as_bytes();
    while at < bytes.len() {
        let end = bytes[at..].iter().position(|&b| b == b'\n').map_or(bytes.len(), |i| at + i + 1);
        let l = &bytes[at..end];
        if l.first() == Some(&b'%') {
            return vec![(0..text.len(), 1)];
        }
        let marker = l.starts_with(b"---") && matches!(l.get(3), None | Some(b' ' | b'\t' | b'\n' | b'\r'));
        if marker && at > start {
            parts.push((start..at, start_line));
            (start, start_line) = (at, line);
        }
        at = end;
        line += 1;
    }
    if start < text.len() || parts.is_empty() {
        parts.push((start..text.len(), start_line));
    }
    parts
}

/// Loads each part of `text` from `cache` (moved to `next`) or by parsing it (then kept in
/// `next`).
fn load_part_cached(file: &Path, text: Arc<str>, m: &mut Manifests, cache: &mut DocCache, next: &mut DocCache) {
    use std::hash::BuildHasher;
    let file: Arc<Path> = Arc::from(file);
    for (range, line) in split_documents(&text) {
        let part = &text[range.clone()];
        let key = next.hasher.hash_one(part);
        let loaded = match next.docs.get(&key).cloned().or_else(|| cache.docs.remove(&key)) {
            Some(l) => l,
            None => {
                next.parsed += 1;
                Arc::new(load_part(&file, part))
            }
        };
        let place = |d: &Diagnostic| Diagnostic {
            file: Some(file.clone()),
            line: if d.line == 0 { 0 } else { d.line + line - 1 },
            ..d.clone()
        };
        m.diagnostics.extend(loaded.diagnostics.iter().map(place));
        m.resources.extend(loaded.resources.iter().map(|(resource, doc, item)| Loaded {
            file: file.clone(),
            source: DocSource { text: text.clone(), range: range.clone(), line, doc: *doc, item: *item },
            resource: resource.clone(),
        }));
        next.docs.insert(key, loaded);
    }
}

/// Parses and decodes one part of a file, positioned from its line 1.
fn load_part(file: &Arc<Path>, part: &str) -> LoadedPart {
    let mut out = LoadedPart::default();
    match parse_documents(part) {
        Ok(docs) => {
            out.resources.reserve(docs.len());
            for (i, doc) in docs.into_iter().enumerate() {
                load_document(file, doc, i, None, &mut out);
            }
        }
        Err(e) => out.diagnostics.push(Diagnostic::at(
            Severity::Error,
            "yaml-syntax",
            file,
            e.mark,
            format!("invalid YAML: {}", e.message),
        )),
    }
    out
}

fn scalar_field<'a>(doc: &'a Node, key: &str) -> Option<&'a str> {
    doc.get(key).and_then(Node::as_str)
}

fn load_document(file: &Arc<Path>, doc: Node, index: usize, item: Option<usize>, m: &mut LoadedPart) {
    if !matches!(doc.kind, NodeKind::Map(_)) {
        m.diagnostics.push(Diagnostic::at(
            Severity::Error,
            "schema",
            file,
            doc.mark,
            format!("a manifest document must be a mapping with apiVersion and kind, found {}", doc.describe()),
        ));
        return;
    }
    let (Some(api_version), Some(kind)) = (scalar_field(&doc, "apiVersion"), scalar_field(&doc, "kind")) else {
        let missing = if scalar_field(&doc, "apiVersion").is_none() { "apiVersion" } else { "kind" };
        m.diagnostics.push(Diagnostic::at(
            Severity::Error,
            "schema",
            file,
            doc.mark,
            format!("document has no {missing}"),
        ));
        return;
    };
    let (api_version, kind) = (api_version.to_string(), kind.to_string());
    // `kubectl get -o yaml` of several objects gives a List.
    if kind == "List" && api_version == "v1" {
        if let Some(Node { kind: NodeKind::Seq(items), .. }) = doc.get("items") {
            for (i, it) in items.clone().into_iter().enumerate() {
                load_document(file, it, index, Some(i), m);
            }
        }
        return;
    }
    let name = doc.get("metadata").and_then(|md| scalar_field(md, "name")).unwrap_or("?").to_string();
    match kind_support(&api_version, &kind) {
        KindSupport::Known => match decode(&kind, &doc) {
            Ok(resource) => {
                if resource.meta().name.is_empty() {
                    m.diagnostics.push(Diagnostic::at(Severity::Error, "schema", file, doc.mark, format!("{kind} has no metadata.name")));
                    return;
                }
                let ns = resource.meta().namespace.clone().unwrap_or_else(|| "default".into());
                for v in crate::schema::check(&api_version, &kind, &doc) {
                    let at = doc.locate(&v.field).mark;
                    m.diagnostics.push(Diagnostic {
                        object: Some(format!("{kind} {ns}/{name}")),
                        field: (!v.field.is_empty()).then(|| v.field.clone()),
                        ..Diagnostic::at(Severity::Error, "schema", file, at, format!("upstream schema: {}", v.message))
                    });
                }
                // Kept by the cache: a clone holds exactly what it needs (decoding leaves
                // spare capacity: 2.9 KB for a one-route IngressRoute, 1.2 KB cloned).
                m.resources.push((Arc::new(resource.clone()), index, item));
            }
            Err(e) => {
                let ns = doc.get("metadata").and_then(|md| scalar_field(md, "namespace")).unwrap_or("default");
                let code = if e.message.contains("not supported yet") { "unsupported-field" } else { "schema" };
                m.diagnostics.push(Diagnostic {
                    object: Some(format!("{kind} {ns}/{name}")),
                    field: (!e.path.is_empty()).then(|| e.path.clone()),
                    ..Diagnostic::at(Severity::Error, code, file, e.mark.unwrap_or(doc.mark), e.message)
                });
            }
        },
        KindSupport::NotYet => m.diagnostics.push(Diagnostic::at(
            Severity::Warning,
            "unsupported-kind",
            file,
            doc.mark,
            format!("{kind} {name} ({api_version}) is not supported yet by atrium and is not applied"),
        )),
        KindSupport::WrongVersion => m.diagnostics.push(Diagnostic::at(
            Severity::Error,
            "unsupported-kind",
            file,
            doc.get("apiVersion").map(|n| n.mark).unwrap_or(doc.mark),
            format!(
                "{kind} {name}: apiVersion {api_version:?} is not supported; Traefik v3 kinds use traefik.io/v1alpha1 or hub.traefik.io/v1alpha1"
            ),
        )),
        KindSupport::Foreign => {
            tracing::debug!(file = %file.display(), %api_version, %kind, %name, "skipping a kind atrium does not read");
        }
    }
}

/// Two objects with the same kind, namespace and name are an error naming both places.
fn check_duplicates(m: &mut Manifests) {
    // Positions only for the duplicates found: finding one parses its document again.
    let mut first: HashMap<(&str, &str, &str), usize> = HashMap::with_capacity(m.resources.len());
    let mut dropped = Vec::new();
    for (i, r) in m.resources.iter().enumerate() {
        let key = (r.resource.kind(), r.ns(), r.name());
        match first.get(&key) {
            Some(&f) => {
                let f = &m.resources[f];
                m.diagnostics.push(Diagnostic {
                    object: Some(r.label()),
                    ..Diagnostic::at(
                        Severity::Error,
                        "duplicate",
                        &r.file,
                        r.mark(""),
                        format!(
                            "duplicate {} {}/{}: already defined at {}:{}",
                            key.0,
                            key.1,
                            key.2,
                            f.file.display(),
                            f.mark("")
                        ),
                    )
                });
                dropped.push(i);
            }
            None => drop(first.insert(key, i)),
        }
    }
    if !dropped.is_empty() {
        let mut i = 0;
        m.resources.retain(|_| {
            i += 1;
            dropped.binary_search(&(i - 1)).is_err()
        });
    }
}

/// Convenience for tests and tools: load text as if it came from `name`.
pub fn load_text(name: &str, text: &str) -> Manifests {
    let mut m = Manifests::default();
    load_str(Path::new(name), text, &mut m);
    check_duplicates(&mut m);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str = "apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata:
  name: crm-api
  namespace: apps
spec:
  entryPoints: [web]
  routes:
    - match: PathPrefix(`/crm`)
      kind: Rule
      services:
        - name: crm-service
          port: 80
";

    #[test]
    fn documents_are_cut_at_markers_only() {
        let parts = |t: &str| split_documents(t).into_iter().map(|(r, l)| (t[r].to_string(), l)).collect::<Vec<_>>();
        assert_eq!(
            parts("a: 1\n---\nb: 2\n--- {c: 3}\n"),
            vec![("a: 1\n".into(), 1), ("---\nb: 2\n".into(), 2), ("--- {c: 3}\n".into(), 4)]
        );
        // Not markers: `---x`, an indented `---`, a `---` inside a block scalar's content.
        let t = "a: |\n  ---\n  text\nb: ---x\n";
        assert_eq!(parts(t), vec![(t.to_string(), 1)]);
        // Directives apply to the document after them: one part.
        let t = "%YAML 1.2\n---\na: 1\n---\nb: 2\n";
        assert_eq!(parts(t), vec![(t.to_string(), 1)]);
        assert_eq!(parts(""), vec![(String::new(), 1)]);
        assert_eq!(parts("---\r\na: 1\r\n---\r\n"), vec![("---\r\na: 1\r\n".into(), 1), ("---\r\n".into(), 3)]);
    }

    #[test]
    fn a_reload_parses_only_changed_documents_and_places_cached_findings_anew() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("routes.yaml");
        let bad = ROUTE.replace("crm-api", "bad").replace("      kind: Rule\n", "      kind: Rule\n      matchh: x\n");
        let other = ROUTE.replace("crm-api", "other");
        std::fs::write(&f, format!("{ROUTE}---\n{bad}---\n{other}")).unwrap();
        let mut cache = DocCache::default();
        let m = load_paths_cached(&[&f], &mut cache);
        assert_eq!((cache.parsed(), cache.len()), (3, 3));
        assert_eq!(m.resources.len(), 2);
        assert!(
            m.diagnostics[0].to_string().contains("routes.yaml:25:7: error: IngressRoute apps/bad"),
            "{:?}",
            m.diagnostics
        );

        // The first document grows by two lines: only it is parsed again; the finding and
        // the positions of the documents after it move with their text.
        let grown = ROUTE.replace("metadata:\n", "metadata:\n  labels:\n    team: crm\n");
        std::fs::write(&f, format!("{grown}---\n{bad}---\n{other}")).unwrap();
        let m = load_paths_cached(&[&f], &mut cache);
        assert_eq!((cache.parsed(), cache.len()), (1, 3));
        assert_eq!(m.diagnostics.len(), 1);
        assert!(
            m.diagnostics[0].to_string().contains("routes.yaml:27:7: error: IngressRoute apps/bad"),
            "{:?}",
            m.diagnostics
        );
        let other = m.resources.iter().find(|l| l.name() == "other").unwrap();
        assert_eq!(other.mark("spec.routes[0].match").line, 40);
        assert_eq!(m.resources[0].resource.meta().labels.get("team").map(String::as_str), Some("crm"));

        // Nothing changed: nothing parsed. Documents removed leave the cache (the one left
        // was cached).
        load_paths_cached(&[&f], &mut cache);
        assert_eq!((cache.parsed(), cache.len()), (0, 3));
        std::fs::write(&f, &grown).unwrap();
        let m = load_paths_cached(&[&f], &mut cache);
        assert_eq!((cache.parsed(), cache.len(), m.resources.len()), (0, 1, 1));
    }

    #[test]
    fn objects_of_a_list_point_at_their_own_item() {
        let text = "apiVersion: v1\nkind: List\nitems:\n  - apiVersion: v1\n    kind: Service\n    metadata: {name: a}\n    spec: {ports: [{port: 80}]}\n  - apiVersion: v1\n    kind: Service\n    metadata: {name: b}\n    spec: {ports: [{port: 81}]}\n";
        let m = load_text("list.yaml", &format!("---\n{text}"));
        assert_eq!(m.resources.len(), 2);
        assert_eq!(m.resources[1].name(), "b");
        assert_eq!(m.resources[1].mark("spec.ports[0].port").line, 12);
        assert_eq!(m.resources[0].mark("metadata.name").line, 7);
    }

    #[test]
    fn loads_known_kinds_and_skips_foreign_ones() {
        let text = format!("{ROUTE}---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\nspec: {{}}\n");
        let m = load_text("a.yaml", &text);
        assert!(m.diagnostics.is_empty(), "{:?}", m.diagnostics);
        assert_eq!(m.resources.len(), 1);
        assert_eq!(m.resources[0].label(), "IngressRoute apps/crm-api");
    }

    #[test]
    fn unknown_field_error_has_file_line_column_and_path() {
        let text = ROUTE.replace("      kind: Rule\n", "      kind: Rule\n      matchh: x\n");
        let m = load_text("apps/route.yaml", &text);
        assert_eq!(m.diagnostics.len(), 1);
        let d = m.diagnostics[0].to_string();
        assert!(
            d.starts_with(
                "apps/route.yaml:11:7: error: IngressRoute apps/crm-api spec.routes[0].matchh: unknown field `matchh`"
            ),
            "{d}"
        );
    }

    #[test]
    fn wrong_type_and_missing_field() {
        let text = ROUTE.replace("port: 80", "port: [80]");
        let m = load_text("r.yaml", &text);
        let d = m.diagnostics[0].to_string();
        assert!(
            d.contains("r.yaml:13:17:")
                && d.contains("expected an integer or a string")
                && d.contains("spec.routes[0].services[0].port"),
            "{d}"
        );
        let text = ROUTE.replace("    - match: PathPrefix(`/crm`)\n      kind: Rule\n", "    - kind: Rule\n");
        let m = load_text("r.yaml", &text);
        let d = m.diagnostics[0].to_string();
        assert!(d.contains("missing field `match`") && d.contains("spec.routes[0]"), "{d}");
    }

    #[test]
    fn bad_indentation_is_a_syntax_error_with_position() {
        let m = load_text("bad.yaml", "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n namespace: b\n");
        assert_eq!(m.diagnostics[0].code, "yaml-syntax");
        assert_eq!(m.diagnostics[0].line, 5);
    }

    #[test]
    fn errors_are_collected_across_documents() {
        let bad1 = ROUTE.replace("kind: Rule", "kind: Rules");
        let bad2 = ROUTE.replace("crm-api", "other").replace("entryPoints: [web]", "entryPoints: web");
        let m = load_text("x.yaml", &format!("{bad1}---\n{bad2}---\n{}", ROUTE.replace("crm-api", "ok")));
        assert_eq!(m.diagnostics.len(), 2, "{:?}", m.diagnostics);
        assert_eq!(m.resources.len(), 1);
    }

    #[test]
    fn duplicates_name_both_places() {
        let m = load_text("d.yaml", &format!("{ROUTE}---\n{ROUTE}"));
        assert_eq!(m.resources.len(), 1);
        let d = m.diagnostics[0].to_string();
        assert!(d.contains("d.yaml:15:1") && d.contains("already defined at d.yaml:1:1"), "{d}");
    }

    #[test]
    fn unsupported_kinds_and_fields_are_named() {
        let m = load_text(
            "u.yaml",
            "apiVersion: traefik.io/v1alpha1\nkind: IngressRouteTCP\nmetadata:\n  name: t\nspec: {}\n---\napiVersion: traefik.io/v1alpha1\nkind: Middleware\nmetadata:\n  name: fa\nspec:\n  forwardAuth:\n    address: http://auth\n",
        );
        assert_eq!(m.diagnostics.len(), 2);
        assert_eq!(m.diagnostics[0].code, "unsupported-kind");
        assert_eq!(m.diagnostics[0].severity, Severity::Warning);
        assert_eq!(m.diagnostics[1].code, "unsupported-field");
        assert!(m.diagnostics[1].to_string().contains("spec.forwardAuth: not supported yet"), "{}", m.diagnostics[1]);
    }

    #[test]
    fn kubectl_exports_with_status_and_full_metadata_load() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata:\n    name: s\n    namespace: apps\n    uid: 1234\n    resourceVersion: \"99\"\n    creationTimestamp: \"2026-01-01T00:00:00Z\"\n    managedFields:\n    - manager: kubectl\n  spec:\n    clusterIP: 10.0.0.1\n    ports:\n    - port: 80\n      targetPort: 8080\n  status:\n    loadBalancer: {}\n";
        let m = load_text("l.yaml", text);
        // uid must be a string: a plain number is reported, precisely.
        assert_eq!(m.diagnostics.len(), 1);
        assert!(m.diagnostics[0].to_string().contains("metadata.uid"), "{}", m.diagnostics[0]);
        let m = load_text("l.yaml", &text.replace("uid: 1234", "uid: \"1234\""));
        assert!(m.diagnostics.is_empty(), "{:?}", m.diagnostics);
        assert_eq!(m.resources[0].label(), "Service apps/s");
    }

    #[test]
    fn json_manifests_load() {
        let m = load_text(
            "s.json",
            r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"s","namespace":"apps"},"spec":{"ports":[{"port":80}]}}"#,
        );
        assert!(m.diagnostics.is_empty(), "{:?}", m.diagnostics);
        assert_eq!(m.resources.len(), 1);
    }
}
