//! OpenAPI specs: the control plane fetches each API's `openApiSpec.url` itself (http,
//! https, or `file://` under `--spec-dir`), within bounds (10 MiB, 10 s, 5 redirects; the
//! YAML parser's depth and alias limits), puts the `override.servers` in it, keeps it,
//! and fetches it again every `refreshInterval`; a failure is retried with backoff (1 s,
//! doubling, at most 5 minutes) and the last good spec stays in use.
//!
//! What a fetch gives reaches data planes through the snapshot: each API's operations
//! (for `validateRequestMethodAndPath` and operation filters), its servers' base paths,
//! and a status line (`ok: …`, `error: …`, `pending`) that the admin API shows. A spec that
//! cannot be fetched never blocks routing: its API is served as configured, without
//! method and path validation until a spec arrives.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atrium_data_plane::fetch::Fetcher;
use atrium_proto::v1 as pb;
use tokio::sync::watch;

/// Largest spec document.
const MAX_SPEC_BYTES: usize = 10 << 20;
/// Longest fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait between two attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What identifies a spec fetch: the API, its URL and its override servers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    api: String,
    url: String,
    servers: Vec<String>,
}

/// The latest result for one API's spec.
#[derive(Debug, Clone, Default)]
pub(crate) struct Spec {
    /// `ok: N operations`, `error: …`, `pending`.
    pub(crate) status: String,
    /// The operations of the last good document.
    pub(crate) operations: Vec<pb::Operation>,
    /// Its servers' base paths (after the override).
    pub(crate) base_paths: Vec<String>,
    /// The last good document, servers overridden (for the portal).
    pub(crate) document: Option<Arc<serde_json::Value>>,
}

/// The specs of the APIs in force, and their fetch tasks.
pub(crate) struct Specs {
    spec_dir: Option<PathBuf>,
    results: Mutex<HashMap<Key, Spec>>,
    tasks: Mutex<HashMap<Key, tokio::task::JoinHandle<()>>>,
    /// Bumped when a result changes what the snapshot carries.
    changed: watch::Sender<u64>,
}

impl Specs {
    /// Specs fetched with `file://` allowed under `spec_dir` only.
    pub(crate) fn new(spec_dir: Option<PathBuf>) -> (Arc<Specs>, watch::Receiver<u64>) {
        let (changed, rx) = watch::channel(0);
        let specs = Specs { spec_dir, results: Mutex::default(), tasks: Mutex::default(), changed };
        (Arc::new(specs), rx)
    }

    /// Follows a configuration: starts fetching the specs of new APIs (or of changed URLs
    /// or servers), stops fetching the ones no longer there.
    pub(crate) fn follow(self: &Arc<Self>, apis: &[pb::Api]) {
        let wanted: HashMap<Key, u64> = apis
            .iter()
            .filter(|a| !a.spec_url.is_empty())
            .map(|a| {
                let key = Key { api: a.id.clone(), url: a.spec_url.clone(), servers: a.spec_override_servers.clone() };
                (key, a.spec_refresh_ms)
            })
            .collect();
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|k, t| {
            let keep = wanted.contains_key(k);
            if !keep {
                t.abort();
            }
            keep
        });
        self.results.lock().unwrap_or_else(|p| p.into_inner()).retain(|k, _| wanted.contains_key(k));
        for (key, refresh_ms) in wanted {
            if tasks.contains_key(&key) {
                continue;
            }
            let specs = self.clone();
            let refresh = Duration::from_millis(refresh_ms.max(60_000));
            let k = key.clone();
            tasks.insert(key, tokio::spawn(async move { specs.keep_fetching(k, refresh).await }));
        }
    }

    /// Fills the spec fields of `apis` from the latest results.
    pub(crate) fn apply(&self, apis: &mut [pb::Api]) {
        let results = self.results.lock().unwrap_or_else(|p| p.into_inner());
        for a in apis.iter_mut().filter(|a| !a.spec_url.is_empty()) {
            let key = Key { api: a.id.clone(), url: a.spec_url.clone(), servers: a.spec_override_servers.clone() };
            let Some(spec) = results.get(&key) else { continue };
            a.spec_status = spec.status.clone();
            a.operations = spec.operations.clone();
            if a.spec_override_servers.is_empty() {
                a.spec_base_paths = spec.base_paths.clone();
            }
        }
    }

    /// The latest document of `api`, if one was fetched.
    #[allow(dead_code)]
    pub(crate) fn document(&self, api: &str) -> Option<Arc<serde_json::Value>> {
        let results = self.results.lock().unwrap_or_else(|p| p.into_inner());
        results.iter().find(|(k, _)| k.api == api).and_then(|(_, s)| s.document.clone())
    }

    async fn keep_fetching(self: Arc<Self>, key: Key, refresh: Duration) {
        let mut failures = 0u32;
        loop {
            let wait = match fetch(&key.url, self.spec_dir.as_deref()).await.and_then(|doc| parse(&doc, &key.servers)) {
                Ok(spec) => {
                    if failures > 0 || self.status_of(&key).is_none_or(|s| !s.starts_with("ok")) {
                        tracing::info!(api = %key.api, url = %key.url, operations = spec.operations.len(), "OpenAPI spec fetched");
                    }
                    failures = 0;
                    self.record(&key, spec);
                    refresh
                }
                Err(why) => {
                    failures += 1;
                    tracing::warn!(api = %key.api, url = %key.url, error = %why, attempt = failures,
                        "OpenAPI spec fetch failed; routing is unaffected and the last good spec stays in use");
                    self.record_failure(&key, &why);
                    let backoff = Duration::from_secs(1u64 << (failures - 1).min(9)).min(MAX_BACKOFF);
                    backoff.min(refresh)
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    fn status_of(&self, key: &Key) -> Option<String> {
        self.results.lock().ok()?.get(key).map(|s| s.status.clone())
    }

    fn record(&self, key: &Key, spec: Spec) {
        let mut results = self.results.lock().unwrap_or_else(|p| p.into_inner());
        let before = results.get(key).map(|s| (s.status.clone(), s.operations.clone(), s.base_paths.clone()));
        let after = (spec.status.clone(), spec.operations.clone(), spec.base_paths.clone());
        results.insert(key.clone(), spec);
        drop(results);
        if before.as_ref() != Some(&after) {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    fn record_failure(&self, key: &Key, why: &str) {
        let mut results = self.results.lock().unwrap_or_else(|p| p.into_inner());
        let entry = results.entry(key.clone()).or_default();
        let status = if entry.document.is_some() {
            format!("error: {why} (the last good spec stays in use)")
        } else {
            format!("error: {why}")
        };
        let changed = entry.status != status;
        entry.status = status;
        drop(results);
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
    }
}

/// Fetches a spec document: http(s) with [`Fetcher`], `file://` only inside `spec_dir`.
async fn fetch(url: &str, spec_dir: Option<&Path>) -> Result<Vec<u8>, String> {
    if let Some(path) = url.strip_prefix("file://") {
        return read_local(Path::new(path), spec_dir);
    }
    let fetcher = Fetcher::new("", FETCH_TIMEOUT, MAX_SPEC_BYTES).map_err(|e| e.to_string())?;
    fetcher.get(url).await.map(|b| b.to_vec()).map_err(|e| e.to_string())
}

/// Reads `path` if it is inside `spec_dir` once symlinks and `..` are resolved.
fn read_local(path: &Path, spec_dir: Option<&Path>) -> Result<Vec<u8>, String> {
    let Some(dir) = spec_dir else {
        return Err("file:// specs are read only under --spec-dir, which is not set".into());
    };
    let dir = dir.canonicalize().map_err(|e| format!("--spec-dir {}: {e}", dir.display()))?;
    let real = path.canonicalize().map_err(|e| format!("{}: {e}", path.display()))?;
    if !real.starts_with(&dir) {
        return Err(format!("{} is outside --spec-dir {}", path.display(), dir.display()));
    }
    let meta = std::fs::metadata(&real).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > MAX_SPEC_BYTES as u64 {
        return Err(format!("larger than {MAX_SPEC_BYTES} bytes"));
    }
    std::fs::read(&real).map_err(|e| format!("{}: {e}", path.display()))
}

/// The operations of an OpenAPI document (JSON or YAML, parsed within the YAML bounds), with
/// `servers` replaced by `override_servers` when given.
fn parse(doc: &[u8], override_servers: &[String]) -> Result<Spec, String> {
    let text = std::str::from_utf8(doc).map_err(|_| "the document is not UTF-8 text".to_string())?;
    let nodes =
        atrium_model::yaml::parse_documents(text).map_err(|e| format!("invalid YAML or JSON: {}", e.message))?;
    let node = nodes.into_iter().next().ok_or("the document is empty")?;
    let mut v: serde_json::Value =
        atrium_model::yaml::from_node_at(&node, "").map_err(|e| format!("not an OpenAPI document: {}", e.message))?;
    let obj = v.as_object_mut().ok_or("not an OpenAPI document: not a mapping")?;
    if !obj.contains_key("openapi") && !obj.contains_key("swagger") {
        return Err("not an OpenAPI document: no `openapi` version".into());
    }
    if !override_servers.is_empty() {
        let servers: Vec<serde_json::Value> =
            override_servers.iter().map(|u| serde_json::json!({ "url": u })).collect();
        obj.insert("servers".into(), serde_json::Value::Array(servers));
    }
    let base_paths: Vec<String> = obj
        .get("servers")
        .and_then(|s| s.as_array())
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("url")?.as_str())
        .filter_map(|u| {
            let path = match u.split_once("://") {
                Some((_, rest)) => rest.find('/').map_or("", |i| &rest[i..]),
                None => u,
            };
            let path = path.trim_end_matches('/');
            (path.starts_with('/') && !path.contains('{')).then(|| path.to_string())
        })
        .collect();
    const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
    let mut operations = Vec::new();
    if let Some(paths) = obj.get("paths").and_then(|p| p.as_object()) {
        for (path, item) in paths {
            let Some(item) = item.as_object() else { continue };
            for m in METHODS.iter().filter(|m| item.contains_key(**m)) {
                operations.push(pb::Operation { method: m.to_ascii_uppercase(), path: path.clone() });
            }
        }
    }
    operations.sort_by(|a, b| (&a.path, &a.method).cmp(&(&b.path, &b.method)));
    Ok(Spec {
        status: format!("ok: {} operations", operations.len()),
        operations,
        base_paths,
        document: Some(Arc::new(v)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = "openapi: 3.0.3\ninfo: {title: CRM, version: '1'}\nservers: [{url: 'https://internal/crm/'}]\npaths:\n  /employees:\n    get: {}\n    post: {}\n  /employees/{id}:\n    get: {}\n    parameters: []\n";

    #[test]
    fn operations_and_servers_come_from_the_document_or_the_override() {
        let s = parse(SPEC.as_bytes(), &[]).unwrap();
        let ops: Vec<String> = s.operations.iter().map(|o| format!("{} {}", o.method, o.path)).collect();
        assert_eq!(ops, ["GET /employees", "POST /employees", "GET /employees/{id}"]);
        assert_eq!(s.base_paths, ["/crm"]);
        assert_eq!(s.status, "ok: 3 operations");
        let s = parse(SPEC.as_bytes(), &["https://api.example.com/v2".into()]).unwrap();
        assert_eq!(s.base_paths, ["/v2"]);
        assert_eq!(s.document.unwrap()["servers"][0]["url"], "https://api.example.com/v2");
        let json = r#"{"openapi": "3.1.0", "paths": {"/a": {"delete": {}}}}"#;
        assert_eq!(parse(json.as_bytes(), &[]).unwrap().operations[0].method, "DELETE");
    }

    #[test]
    fn documents_that_are_not_specs_are_refused_with_a_reason() {
        assert!(parse(b"just: yaml", &[]).unwrap_err().contains("no `openapi` version"));
        assert!(parse(b"[1, 2", &[]).unwrap_err().contains("invalid YAML"));
        assert!(parse(&[0xff, 0xfe], &[]).unwrap_err().contains("UTF-8"));
        // A billion laughs stops at the parser's alias limit.
        let mut bomb = String::from("openapi: 3.0.0\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..40 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        assert!(parse(bomb.as_bytes(), &[]).is_err());
    }

    #[test]
    fn file_specs_are_read_only_under_the_spec_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let inside = tmp.path().join("specs");
        std::fs::create_dir(&inside).unwrap();
        std::fs::write(inside.join("crm.yaml"), SPEC).unwrap();
        std::fs::write(tmp.path().join("secret.yaml"), "x").unwrap();
        assert!(read_local(&inside.join("crm.yaml"), Some(&inside)).is_ok());
        let escape = inside.join("../secret.yaml");
        assert!(read_local(&escape, Some(&inside)).unwrap_err().contains("outside --spec-dir"));
        assert!(read_local(&inside.join("crm.yaml"), None).unwrap_err().contains("--spec-dir"));
    }
}
