//! The file provider: values and manifest files → a compiled configuration, then watched.
//!
//! [`FileSource::compile`] loads the values and every manifest and compiles them; any error
//! (with its file and line) refuses the whole set. [`FileSource::watch`] recompiles after each
//! burst of changes has been quiet for the debounce time and hands each good result to the
//! role's `publish`; a bad one is logged line by line and refused, so the previous
//! configuration stays in force. Every role that reads files (control plane, agent,
//! gateway) goes through here: one way to load, compile and reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use atrium_model::diagnostic::Diagnostic;
use atrium_model::loader::{Manifests, load_paths};
use atrium_model::resources::Resource;
use atrium_model::values::Values;
use atrium_proto::v1 as pb;
use atrium_routing::rules::Rule;
use base64::Engine;

/// Values and manifests on disk.
#[derive(Debug, Clone)]
pub struct FileSource {
    /// Helm-style values (entrypoints, children, timeouts); none: the defaults.
    pub values: Option<PathBuf>,
    /// Manifest files or folders.
    pub manifests: Vec<PathBuf>,
    /// Quiet time before a change is applied.
    pub debounce: Duration,
}

/// A configuration that compiled: the values it was compiled with, and the snapshot body.
#[derive(Debug, Clone)]
pub struct Config {
    /// The values.
    pub values: Values,
    /// The compiled snapshot body, with the TLS certificates routers name.
    pub body: pb::SnapshotBody,
}

/// Why a configuration cannot be loaded or watched.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A manifest path does not exist.
    #[error("{}: no such file or directory", .0.display())]
    Missing(PathBuf),
    /// The values do not load (each line names the file, line and field).
    #[error("invalid values:\n{}", .0.join("\n"))]
    Values(Vec<String>),
    /// The manifests do not compile (each line names the file, line and field).
    #[error("the configuration does not compile:\n{}", .0.join("\n"))]
    Compile(Vec<String>),
    /// A path cannot be watched.
    #[error("watching {}: {source}", path.display())]
    Watch {
        /// The path.
        path: PathBuf,
        /// Why.
        source: notify::Error,
    },
}

impl SourceError {
    /// The error lines (one per finding).
    pub fn lines(&self) -> Vec<String> {
        match self {
            SourceError::Values(l) | SourceError::Compile(l) => l.clone(),
            other => vec![other.to_string()],
        }
    }
}

fn errors_of(diags: &[Diagnostic]) -> Vec<String> {
    diags.iter().filter(|d| d.is_error()).map(|d| d.to_string()).collect()
}

impl FileSource {
    /// Fails when a manifest path does not exist (a typo must not start an empty gateway).
    pub fn check_exists(&self) -> Result<(), SourceError> {
        match self.manifests.iter().find(|p| !p.exists()) {
            Some(p) => Err(SourceError::Missing(p.clone())),
            None => Ok(()),
        }
    }

    /// The values alone (the defaults when there is no values file).
    pub fn load_values(&self) -> Result<Values, SourceError> {
        load_values(self.values.as_deref())
    }

    /// Loads and compiles values and manifests. Warnings are logged; any error refuses
    /// the whole configuration.
    pub fn compile(&self) -> Result<Config, SourceError> {
        let (values, vdiags) = Values::load_optional(self.values.as_deref());
        let m = load_paths(&self.manifests);
        let compiled = atrium_model::compile::compile(&m, &values, None);
        let mut errors = errors_of(&vdiags);
        errors.extend(errors_of(&m.diagnostics));
        errors.extend(errors_of(&compiled.diagnostics));
        for d in vdiags.iter().chain(&m.diagnostics).chain(&compiled.diagnostics).filter(|d| !d.is_error()) {
            tracing::warn!("{d}");
        }
        let mut body = compiled.body;
        match certificates(&m, &body) {
            Ok(c) => body.tls_certificates = c,
            Err(e) => errors.push(e),
        }
        if !errors.is_empty() {
            return Err(SourceError::Compile(errors));
        }
        Ok(Config { values, body })
    }

    /// [`FileSource::compile`] on a blocking thread (compiling thousands of routes takes a
    /// while; the runtime's threads stay free). How every role compiles its first
    /// configuration.
    pub async fn compile_blocking(&self) -> Result<Config, SourceError> {
        let source = self.clone();
        tokio::task::spawn_blocking(move || source.compile())
            .await
            .unwrap_or_else(|e| Err(SourceError::Compile(vec![format!("compiling the configuration failed: {e}")])))
    }

    /// The paths to watch: the manifests and the values file.
    fn paths(&self) -> Vec<PathBuf> {
        self.manifests.iter().chain(self.values.iter()).cloned().collect()
    }

    /// Watches the files; after each quiet burst of changes, compiles them and hands a good
    /// configuration to `publish` (on a blocking thread). A bad one is logged line by line
    /// and `refused` hears how many errors it had; so does a reload that panics. Must be
    /// called within a tokio runtime. Watching stops when the [`Watch`] is dropped.
    pub fn watch(
        &self,
        publish: impl Fn(Config) + Send + Sync + 'static,
        refused: impl Fn(String) + Send + Sync + 'static,
    ) -> Result<Watch, SourceError> {
        let source = self.clone();
        let refused = Arc::new(refused);
        let on_refused = refused.clone();
        watch_paths(
            self.paths(),
            self.debounce,
            move || match source.compile() {
                Ok(cfg) => publish(cfg),
                Err(e) => {
                    let lines = e.lines();
                    for l in &lines {
                        tracing::error!("{l}");
                    }
                    refused(format!("{} error(s) in the configuration", lines.len()));
                }
            },
            move |why| on_refused(why.to_string()),
        )
    }
}

/// Loads a values file (the defaults when there is none); any error refuses it.
pub fn load_values(values: Option<&Path>) -> Result<Values, SourceError> {
    let (v, d) = Values::load_optional(values);
    let errors = errors_of(&d);
    if !errors.is_empty() {
        return Err(SourceError::Values(errors));
    }
    Ok(v)
}

/// A watch in force; dropping it stops watching.
#[derive(Debug)]
pub struct Watch(#[allow(dead_code)] notify::RecommendedWatcher);

/// Watches `paths` and calls `on_change` (on a blocking thread) after each burst of
/// changes has been quiet for `debounce` (and at most 10 × `debounce` after it began). A
/// reload that panics is a refused configuration like any other: `refused` hears of it,
/// and the previous configuration stays.
fn watch_paths(
    paths: Vec<PathBuf>,
    debounce: Duration,
    on_change: impl Fn() + Send + Sync + 'static,
    refused: impl Fn(&str) + Send + Sync + 'static,
) -> Result<Watch, SourceError> {
    use notify::{RecursiveMode, Watcher};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let first = tx.clone();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if !matches!(ev.kind, notify::EventKind::Access(_)) {
                let _ = tx.send(());
            }
        }
    })
    .map_err(|source| SourceError::Watch { path: PathBuf::new(), source })?;
    for p in &paths {
        watcher.watch(p, RecursiveMode::Recursive).map_err(|source| SourceError::Watch { path: p.clone(), source })?;
    }
    // A change made between the caller's first compile and this watch would otherwise wait
    // for the next one: look once now (an unchanged configuration is not swapped again).
    let _ = first.send(());
    let on_change = Arc::new(on_change);
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            let deadline = tokio::time::Instant::now() + debounce * 10;
            loop {
                match tokio::time::timeout(debounce, rx.recv()).await {
                    Ok(Some(())) if tokio::time::Instant::now() < deadline => continue,
                    Ok(None) => return,
                    _ => break,
                }
            }
            let f = on_change.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || f()).await {
                refused(&format!("the configuration reload failed: {e}"));
            }
        }
    });
    Ok(Watch(watcher))
}

/// The certificates routers name by `tls.secretName`, each with the hosts of the rules of
/// the routers naming it, checked here so that a broken Secret is an error with its file.
fn certificates(m: &Manifests, body: &pb::SnapshotBody) -> Result<Vec<pb::TlsCertificate>, String> {
    let mut out: std::collections::BTreeMap<String, pb::TlsCertificate> = Default::default();
    for r in &body.routers {
        let Some(secret) = r.tls.as_ref().map(|t| t.secret.as_str()).filter(|s| !s.is_empty()) else { continue };
        let Some(l) = m.resources.iter().find(|l| matches!(l.resource, Resource::Secret(_)) && l.id() == secret) else {
            continue;
        };
        let Resource::Secret(s) = &l.resource else { continue };
        let file = l.file.display();
        let field = |k: &str| -> Result<Vec<u8>, String> {
            if let Some(v) = s.string_data.get(k) {
                return Ok(v.as_bytes().to_vec());
            }
            let b64 = s.data.get(k).ok_or_else(|| format!("{file}: Secret {secret} has no {k}"))?;
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| format!("{file}: Secret {secret} data.{k}: invalid base64: {e}"))
        };
        let (cert, key) = (field("tls.crt")?, field("tls.key")?);
        atrium_data_plane::trust::certified_key(&cert, &key).map_err(|e| format!("{file}: Secret {secret}: {e}"))?;
        let text = |b: Vec<u8>, k: &str| {
            String::from_utf8(b).map_err(|_| format!("{file}: Secret {secret} {k} is not PEM text"))
        };
        if !out.contains_key(secret) {
            let c = pb::TlsCertificate {
                secret: secret.to_string(),
                server_names: Vec::new(),
                cert_pem: text(cert, "tls.crt")?,
                key_pem: text(key, "tls.key")?,
            };
            out.insert(secret.to_string(), c);
        }
        let entry = out.get_mut(secret).expect("inserted above");
        entry.server_names.extend(Rule::parse(&r.rule).ok().and_then(|rule| rule.required_hosts()).unwrap_or_default());
    }
    Ok(out
        .into_values()
        .map(|mut c| {
            c.server_names.sort();
            c.server_names.dedup();
            c
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str = "apiVersion: traefik.io/v1alpha1\nkind: IngressRoute\nmetadata:\n  name: r\n  namespace: apps\nspec:\n  routes:\n    - match: PathPrefix(`/a`)\n      kind: Rule\n      services:\n        - name: ext\n          port: 80\n";
    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: ext\n  namespace: apps\nspec:\n  type: ExternalName\n  externalName: backend.test\n  ports:\n    - port: 80\n";

    fn source(dir: &Path) -> FileSource {
        FileSource { values: None, manifests: vec![dir.to_path_buf()], debounce: Duration::from_millis(20) }
    }

    #[test]
    fn a_missing_path_is_named() {
        let s = FileSource { values: None, manifests: vec!["/nonexistent/x".into()], debounce: Duration::ZERO };
        assert_eq!(s.check_exists().unwrap_err().to_string(), "/nonexistent/x: no such file or directory");
    }

    #[test]
    fn a_broken_manifest_is_refused_with_its_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("r.yaml"), "kind: IngressRoute\nspec: [\n").unwrap();
        let e = source(dir.path()).compile().unwrap_err();
        let lines = e.lines();
        assert!(!lines.is_empty());
        assert!(lines.iter().all(|l| l.contains("r.yaml:")), "{lines:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_are_published_and_bad_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r.yaml");
        std::fs::write(&file, ROUTE).unwrap();
        std::fs::write(dir.path().join("svc.yaml"), SERVICE).unwrap();
        let src = source(dir.path());
        assert_eq!(src.compile().unwrap().body.routers.len(), 1);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let tx2 = tx.clone();
        let _w =
            src.watch(move |c| drop(tx.send(Ok(c.body.routers.len()))), move |why| drop(tx2.send(Err(why)))).unwrap();
        std::fs::write(&file, ROUTE.replace("`/a`", "`/b`") + "---\n" + &ROUTE.replace("name: r\n", "name: r2\n"))
            .unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
        assert_eq!(first, Ok(2));
        std::fs::write(&file, "kind: IngressRoute\nspec: [\n").unwrap();
        let refused = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap().unwrap_err();
        assert!(refused.contains("error(s) in the configuration"), "{refused}");
    }
}
