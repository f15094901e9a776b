//! Shared helpers for the end-to-end tests of the `atrium` binary.
#![allow(dead_code)]

pub mod backend;
pub mod client;
pub mod exchanges;
pub mod gateway;
pub mod kube;
pub mod otlp;
pub mod portal;
pub mod postgres;
pub mod redis;
pub mod topology;
pub mod webdriver;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A `---`-prefixed Service `name` (port 80) in `ns` and its Endpoints, one subset per
/// address in `addrs`.
pub fn service_manifests(ns: &str, name: &str, addrs: &[std::net::SocketAddr]) -> String {
    let subsets: Vec<String> = addrs
        .iter()
        .map(|a| format!("  - addresses: [{{ip: {}}}]\n    ports: [{{port: {}}}]\n", a.ip(), a.port()))
        .collect();
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{ports: [{{port: 80}}]}}\n---\napiVersion: v1\nkind: Endpoints\nmetadata: {{name: {name}, namespace: {ns}}}\nsubsets:\n{}",
        subsets.join("")
    )
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The seed's example topology.
pub fn example() -> PathBuf {
    repo().join("deploy/examples/multi-cluster-portal")
}

/// Runs the built `atrium` binary with `args` and returns its output.
pub fn atrium<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(env!("CARGO_BIN_EXE_atrium")).args(args).output().expect("the atrium binary runs")
}

/// stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Copies a directory tree.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// A private copy of the example topology.
pub fn example_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&example(), dir.path());
    dir
}

/// The 1-based line of the first line of `file` containing `needle`.
pub fn line_of(file: &Path, needle: &str) -> usize {
    let text = std::fs::read_to_string(file).unwrap();
    text.lines().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle:?} not in {}", file.display())) + 1
}

/// A `kubernetes.io/tls` Secret `ns/name` with a fresh self-signed certificate for `host`,
/// and that certificate's DER.
pub fn tls_secret(ns: &str, name: &str, host: &str) -> (String, Vec<u8>) {
    use base64::Engine;
    let ck = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {ns}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        b64(&ck.cert.pem()),
        b64(&ck.signing_key.serialize_pem())
    );
    (yaml, ck.cert.der().to_vec())
}

/// Polls `check` every 20 ms until it yields `Some`, for at most `limit`; panics naming
/// `what` otherwise. Tests wait on conditions, never on fixed sleeps.
pub async fn eventually<T, F, Fut>(limit: std::time::Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The value of the sample `name{labels}` in a Prometheus text exposition (0 when absent).
pub fn metric(text: &str, sample: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}
