//! The file provider: values and manifest files loaded, compiled (each invalid object
//! isolated, see [`crate::config`]) and watched; and the debounced watch every provider
//! shares.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use atrium_model::loader::{DocCache, Manifests, load_paths_cached};
use atrium_model::values::Values;

use crate::config::{SourceError, errors_of};

/// Loads the manifests under `paths`, parsing only the documents `cache` does not hold.
pub(crate) fn load(paths: &[PathBuf], cache: &std::sync::Mutex<DocCache>) -> Manifests {
    match cache.lock() {
        Ok(mut c) => load_paths_cached(paths, &mut c),
        Err(_) => load_paths_cached(paths, &mut DocCache::default()),
    }
}

/// A file modified this recently may be modified again within the same timestamp tick
/// (file systems stamp with a coarse clock, some to the second): its fingerprint proves
/// nothing.
const RACY: Duration = Duration::from_secs(2);

/// What the files under `paths` (directories walked, symlinks followed) look like now:
/// each one's path, size, modification time and inode, hashed. Equal fingerprints mean no
/// file was written, added, removed or swapped (a ConfigMap's `..data`) in between. `None`
/// when a file was modified less than [`RACY`] ago (or in the future).
pub(crate) fn fingerprint(paths: &[PathBuf]) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let now = std::time::SystemTime::now();
    let mut files = Vec::new();
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(p) = stack.pop() {
        match std::fs::metadata(&p) {
            Ok(m) if m.is_dir() => match std::fs::read_dir(&p) {
                Ok(entries) => stack.extend(entries.filter_map(Result::ok).map(|e| e.path())),
                Err(_) => files.push((p, 0, 0, 0, 0)),
            },
            Ok(m) => {
                let settled = m.modified().ok().and_then(|t| now.duration_since(t).ok()).is_some_and(|age| age >= RACY);
                if !settled {
                    return None;
                }
                files.push((p, m.len(), m.mtime(), m.mtime_nsec(), m.ino()));
            }
            Err(_) => files.push((p, u64::MAX, 0, 0, 0)),
        }
    }
    files.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    files.hash(&mut h);
    Some(h.finish())
}

/// Fails when a manifest path does not exist (a typo must not start an empty gateway).
pub(crate) fn check_exists(paths: &[PathBuf]) -> Result<(), SourceError> {
    match paths.iter().find(|p| !p.exists()) {
        Some(p) => Err(SourceError::Missing(p.clone())),
        None => Ok(()),
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
pub struct Watch {
    _files: Option<notify::RecommendedWatcher>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How long a burst of file events that ended in a finished write must stay quiet before it
/// is compiled: long enough for the events the same write sends together (an editor's
/// rename after its close), far shorter than any debounce.
const SETTLE: Duration = Duration::from_millis(2);

/// Whether a file event ends a write: the file was closed after writing, renamed into
/// place (an editor's or the kubelet's atomic swap) or removed. Other events (created,
/// data written) may be followed by more of the same write.
fn ends_a_write(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    matches!(
        kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Remove(_)
    )
}

/// Watches `paths`, the directories `values_dirs` (not their subdirectories), and `more` (a
/// counter another watch bumps), and calls `on_change` (on a blocking thread) once each
/// burst of changes is over:
/// - a burst whose last file event ends a write (see [`ends_a_write`]) is compiled after
///   [`SETTLE`] of quiet: a one-file edit is served as soon as the file is closed;
/// - any other burst (a file still being written, the Kubernetes provider's changes) after
///   `debounce` of quiet;
/// - either at most 10 × `debounce` after it began.
///
/// Changes that arrive while `on_change` runs are coalesced into the next call. A reload
/// that panics is a refused configuration like any other: `refused` hears of it, and the
/// previous configuration stays.
pub(crate) fn watch_changes(
    paths: Vec<PathBuf>,
    values_dirs: Vec<PathBuf>,
    more: Option<tokio::sync::watch::Receiver<u64>>,
    debounce: Duration,
    on_change: impl Fn() + Send + Sync + 'static,
    refused: impl Fn(&str) + Send + Sync + 'static,
) -> Result<Watch, SourceError> {
    use notify::{RecursiveMode, Watcher};
    // Each change says whether it ends a write.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let first = tx.clone();
    let files = if paths.is_empty() && values_dirs.is_empty() {
        None
    } else {
        let tx = tx.clone();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if let Ok(ev) = ev {
                if ends_a_write(&ev.kind) || !matches!(ev.kind, notify::EventKind::Access(_)) {
                    let _ = tx.send(ends_a_write(&ev.kind));
                }
            }
        })
        .map_err(|source| SourceError::Watch { path: PathBuf::new(), source })?;
        for p in &paths {
            watcher
                .watch(p, RecursiveMode::Recursive)
                .map_err(|source| SourceError::Watch { path: p.clone(), source })?;
        }
        // A values file mounted from a ConfigMap is a symlink through `..data`, which the
        // kubelet swaps: its directory sees the swap, the old target only its deletion.
        for v in &values_dirs {
            watcher
                .watch(v, RecursiveMode::NonRecursive)
                .map_err(|source| SourceError::Watch { path: v.clone(), source })?;
        }
        Some(watcher)
    };
    if let Some(mut more) = more {
        let tx = tx.clone();
        tokio::spawn(async move {
            while more.changed().await.is_ok() {
                if tx.send(false).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    // A change made between the caller's first compile and this watch would otherwise wait
    // for the next one: look once now (an unchanged configuration is not swapped again).
    let _ = first.send(true);
    let on_change = Arc::new(on_change);
    let task = tokio::spawn(async move {
        let _keep = first;
        while let Some(mut ended) = rx.recv().await {
            let deadline = tokio::time::Instant::now() + debounce * 10;
            loop {
                let quiet = if ended { SETTLE.min(debounce) } else { debounce };
                match tokio::time::timeout(quiet, rx.recv()).await {
                    Ok(Some(e)) if tokio::time::Instant::now() < deadline => ended = e,
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
    Ok(Watch { _files: files, task })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Source;

    const ROUTE: &str = "apiVersion: traefik.io/v1alpha1\nkind: IngressRoute\nmetadata:\n  name: r\n  namespace: apps\nspec:\n  routes:\n    - match: PathPrefix(`/a`)\n      kind: Rule\n      services:\n        - name: ext\n          port: 80\n";
    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: ext\n  namespace: apps\nspec:\n  type: ExternalName\n  externalName: backend.test\n  ports:\n    - port: 80\n";

    fn source(dir: &Path) -> Source {
        Source::files(None, vec![dir.to_path_buf()], Duration::from_millis(20))
    }

    #[test]
    fn a_missing_path_is_named() {
        let s = Source::files(None, vec!["/nonexistent/x".into()], Duration::ZERO);
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
    async fn files_as_the_last_compile_read_them_are_not_compiled_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r.yaml");
        std::fs::write(&file, ROUTE).unwrap();
        std::fs::write(dir.path().join("svc.yaml"), SERVICE).unwrap();
        // Files written just now may be written again within their timestamp's tick: those
        // are compiled again. Written a while ago (backdated here), they are not.
        let past = std::time::SystemTime::now() - Duration::from_secs(10);
        for f in ["r.yaml", "svc.yaml"] {
            std::fs::File::options().write(true).open(dir.path().join(f)).unwrap().set_modified(past).unwrap();
        }
        let one = std::slice::from_ref(&file);
        assert!(fingerprint(one).is_some_and(|f| Some(f) == fingerprint(one)));
        let src = source(dir.path());
        src.compile().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let _w = src
            .watch(
                move |c| {
                    let _ = tx.send(c.body.routers.len());
                },
                |_| {},
            )
            .unwrap();
        // The watch's first look finds nothing new: no second compile of the same files.
        assert!(tokio::time::timeout(Duration::from_millis(400), rx.recv()).await.is_err(), "nothing published");
        // A new file is a change.
        std::fs::write(dir.path().join("r2.yaml"), ROUTE.replace("name: r\n", "name: r2\n")).unwrap();
        let n = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
        assert_eq!(n, 2);
        // So is a file written with the same length; and files written moments ago have no
        // fingerprint to trust.
        std::fs::write(&file, ROUTE.replace("`/a`", "`/b`")).unwrap();
        assert_eq!(tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap(), 2);
        assert_eq!(fingerprint(&[dir.path().to_path_buf()]), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_file_is_applied_at_once_and_one_being_written_waits_for_the_debounce() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("r.yaml"), ROUTE).unwrap();
        std::fs::write(dir.path().join("svc.yaml"), SERVICE).unwrap();
        let past = std::time::SystemTime::now() - Duration::from_secs(10);
        for f in ["r.yaml", "svc.yaml"] {
            std::fs::File::options().write(true).open(dir.path().join(f)).unwrap().set_modified(past).unwrap();
        }
        // A debounce far longer than the test: only a finished write is applied in time.
        let src = Source::files(None, vec![dir.path().to_path_buf()], Duration::from_secs(60));
        src.compile().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let tx2 = tx.clone();
        let _w =
            src.watch(move |c| drop(tx.send(Ok(c.body.routers.len()))), move |why| drop(tx2.send(Err(why)))).unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(300), rx.recv()).await.is_err(), "nothing changed yet");
        // Half a document, the file left open: not compiled (it would be refused).
        let mut open = std::fs::File::create(dir.path().join("r2.yaml")).unwrap();
        let second = ROUTE.replace("name: r\n", "name: r2\n");
        let (head, tail) = second.split_at(second.len() / 2);
        open.write_all(head.as_bytes()).unwrap();
        open.flush().unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(500), rx.recv()).await.is_err(),
            "a file still being written waits for the debounce"
        );
        // Finished and closed: applied at once, not after the minute of debounce.
        open.write_all(tail.as_bytes()).unwrap();
        drop(open);
        let n = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("applied without the debounce");
        assert_eq!(n, Some(Ok(2)));
        // A file written in one go (write and close), too.
        std::fs::write(dir.path().join("r3.yaml"), ROUTE.replace("name: r\n", "name: r3\n")).unwrap();
        let n = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("applied without the debounce");
        assert_eq!(n, Some(Ok(3)));
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

#[cfg(test)]
mod configmap_tests {
    use super::*;
    use crate::Source;

    /// A values file mounted from a ConfigMap: `values.yaml -> ..data/values.yaml`, and
    /// `..data -> ..<timestamp>`, which the kubelet swaps atomically on every update.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn values_mounted_from_a_configmap_are_reloaded_through_the_data_swap() {
        let mount = tempfile::tempdir().unwrap();
        let manifests = tempfile::tempdir().unwrap();
        let write_version = |name: &str, port: u16| {
            let dir = mount.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("values.yaml"), format!("ports:\n  web:\n    port: {port}\n")).unwrap();
        };
        let swap_to = |name: &str| {
            // As the kubelet does: a new symlink renamed over `..data`.
            let tmp = mount.path().join("..data_tmp");
            std::os::unix::fs::symlink(name, &tmp).unwrap();
            std::fs::rename(&tmp, mount.path().join("..data")).unwrap();
        };
        write_version("..2026_12_03_1", 8001);
        swap_to("..2026_12_03_1");
        std::os::unix::fs::symlink("..data/values.yaml", mount.path().join("values.yaml")).unwrap();
        let src = Source::files(
            Some(mount.path().join("values.yaml")),
            vec![manifests.path().to_path_buf()],
            Duration::from_millis(20),
        );
        let web = |c: &crate::Config| c.values.entry_points().find(|(n, _)| *n == "web").map(|(_, e)| e.port);
        assert_eq!(web(&src.compile().unwrap()), Some(8001));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let _w = src
            .watch(
                move |c| {
                    let _ = tx.send(web(&c));
                },
                |why| panic!("{why}"),
            )
            .unwrap();
        write_version("..2026_12_03_2", 8002);
        swap_to("..2026_12_03_2");
        std::fs::remove_dir_all(mount.path().join("..2026_12_03_1")).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Some(8002))) => break,
                Ok(Some(_)) => continue,
                _ => panic!("the swapped values were not reloaded"),
            }
        }
        // And the next update too (the watch follows the directory, not the old target).
        write_version("..2026_12_03_3", 8003);
        swap_to("..2026_12_03_3");
        loop {
            match tokio::time::timeout_at(deadline + Duration::from_secs(10), rx.recv()).await {
                Ok(Some(Some(8003))) => break,
                Ok(Some(_)) => continue,
                _ => panic!("the second swap was not reloaded"),
            }
        }
    }
}
