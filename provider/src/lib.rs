//! Where configuration comes from, for every role that compiles manifests (the control
//! plane, the agent, the gateway):
//! - [`Source`]: values plus manifests from files ([`file`]) or from the Kubernetes API
//!   ([`kubernetes`]), compiled the same way ([`config`]: each invalid object left out and
//!   reported, the rest served), then watched: each change is compiled after a quiet
//!   moment and handed to the role;
//! - [`listeners`]: the entrypoints the values declare, moved or turned off by flags.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod file;
pub mod kubernetes;
pub mod listeners;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use atrium_model::values::Values;

pub use config::{Config, SourceError};
pub use file::{Watch, load_values};
pub use kubernetes::KubeSource;

/// Where manifests come from.
#[derive(Debug, Clone)]
pub enum Provider {
    /// Manifest files or folders.
    Files(Vec<PathBuf>),
    /// The Kubernetes API.
    Kubernetes(Box<KubeSource>),
}

/// Values and manifests: what a role compiles and watches.
#[derive(Debug, Clone)]
pub struct Source {
    /// Helm-style values (entrypoints, children, timeouts); none: the defaults. Watched
    /// with either provider (a mounted ConfigMap in a cluster).
    pub values: Option<PathBuf>,
    /// The manifests' provider.
    pub provider: Provider,
    /// Quiet time before a change is applied.
    pub debounce: Duration,
    /// With files: the fingerprint of those the last compile read (see
    /// [`file::fingerprint`]), so that a watch event that changed nothing compiles nothing.
    read: Arc<std::sync::Mutex<Option<u64>>>,
    /// With files: the documents the last compile read, so that the next one parses only
    /// those whose text changed.
    docs: Arc<std::sync::Mutex<atrium_model::loader::DocCache>>,
}

impl Source {
    /// Manifests from files.
    pub fn files(values: Option<PathBuf>, manifests: Vec<PathBuf>, debounce: Duration) -> Source {
        Source { values, provider: Provider::Files(manifests), debounce, read: Arc::default(), docs: Arc::default() }
    }

    /// Manifests from the Kubernetes API.
    pub fn kubernetes(values: Option<PathBuf>, kube: KubeSource, debounce: Duration) -> Source {
        Source {
            values,
            provider: Provider::Kubernetes(Box::new(kube)),
            debounce,
            read: Arc::default(),
            docs: Arc::default(),
        }
    }

    /// Fails when a manifest path does not exist (a typo must not start an empty gateway).
    pub fn check_exists(&self) -> Result<(), SourceError> {
        match &self.provider {
            Provider::Files(paths) => file::check_exists(paths),
            Provider::Kubernetes(_) => Ok(()),
        }
    }

    /// The values alone (the defaults when there is no values file).
    pub fn load_values(&self) -> Result<Values, SourceError> {
        load_values(self.values.as_deref())
    }

    /// The Kubernetes provider, once started.
    pub fn kubernetes_started(&self) -> Option<&kubernetes::Started> {
        match &self.provider {
            Provider::Kubernetes(k) => k.started(),
            Provider::Files(_) => None,
        }
    }

    /// Loads and compiles values and manifests (the Kubernetes provider must have started:
    /// see [`Source::compile_blocking`]). Invalid objects are left out and reported; the
    /// status writer hears of them.
    pub fn compile(&self) -> Result<Config, SourceError> {
        // Taken before reading: a write during the read shows as a change next time.
        let cfg = self.compile_read(self.files_fingerprint());
        // The documents' trees are gone: give their memory back (the resident size is then
        // what the configuration keeps, not the peak of parsing it).
        atrium_sys::release_free_memory();
        cfg
    }

    /// [`Source::compile`] of the files whose fingerprint (taken before reading) is
    /// `fingerprint`.
    fn compile_read(&self, fingerprint: Option<u64>) -> Result<Config, SourceError> {
        let started = std::time::Instant::now();
        let (values, vdiags) = Values::load_optional(self.values.as_deref());
        let manifests = match &self.provider {
            Provider::Files(paths) => file::load(paths, &self.docs),
            Provider::Kubernetes(k) => match k.started() {
                Some(s) => s.cluster.manifests(),
                None => return Err(SourceError::Compile(vec!["the Kubernetes provider has not started".into()])),
            },
        };
        // For the Kubernetes status writer: what this compile reads, with generations
        // (objects that did not decode: any).
        let read: Option<std::collections::BTreeMap<String, Option<i64>>> = self.kubernetes_started().map(|_| {
            manifests
                .diagnostics
                .iter()
                .filter_map(|d| d.object.clone())
                .map(|o| (o, None))
                .chain(manifests.resources.iter().map(|l| (l.label(), l.resource.meta().generation)))
                .collect()
        });
        let loaded = started.elapsed();
        let objects = manifests.resources.len();
        let cfg = config::compile(values, &vdiags, manifests);
        tracing::debug!(
            objects,
            load_ms = loaded.as_secs_f64() * 1e3,
            compile_ms = (started.elapsed() - loaded).as_secs_f64() * 1e3,
            "configuration read and compiled"
        );
        if let Ok(mut read) = self.read.lock() {
            *read = fingerprint;
        }
        let cfg = cfg?;
        if let (Some(s), Some(read)) = (self.kubernetes_started(), read) {
            s.status.set_problems(read, cfg.problems());
        }
        Ok(cfg)
    }

    /// [`Source::compile`], unless the files are as the last compile read them (the watch's
    /// first look, an event that changed nothing): then `None`.
    fn compile_if_changed(&self) -> Option<Result<Config, SourceError>> {
        let now = self.files_fingerprint();
        let unchanged = now.is_some() && self.read.lock().is_ok_and(|r| *r == now);
        (!unchanged).then(|| self.compile_read(now))
    }

    /// With files: the fingerprint of the values file and the manifests now (none when one
    /// was written moments ago, or with Kubernetes).
    fn files_fingerprint(&self) -> Option<u64> {
        match &self.provider {
            Provider::Files(paths) => {
                file::fingerprint(&paths.iter().chain(self.values.iter()).cloned().collect::<Vec<_>>())
            }
            Provider::Kubernetes(_) => None,
        }
    }

    /// Starts the provider (the Kubernetes watches, until every kind has listed once), then
    /// [`Source::compile`] on a blocking thread (compiling thousands of routes takes a
    /// while; the runtime's threads stay free). How every role compiles its first
    /// configuration.
    pub async fn compile_blocking(&self) -> Result<Config, SourceError> {
        if let Provider::Kubernetes(k) = &self.provider {
            k.start().await?;
        }
        let source = self.clone();
        tokio::task::spawn_blocking(move || source.compile())
            .await
            .unwrap_or_else(|e| Err(SourceError::Compile(vec![format!("compiling the configuration failed: {e}")])))
    }

    /// Watches the values file and the manifests (files, or the API server's objects);
    /// after each quiet burst of changes, compiles them and hands a good configuration to
    /// `publish` (on a blocking thread), then gives freed memory back to the system. A refused one is logged line by line and `refused`
    /// hears how many errors it had; so does a reload that panics. Must be called within a
    /// tokio runtime, after [`Source::compile_blocking`]. Watching stops when the
    /// [`Watch`] is dropped.
    pub fn watch(
        &self,
        publish: impl Fn(Config) + Send + Sync + 'static,
        refused: impl Fn(String) + Send + Sync + 'static,
    ) -> Result<Watch, SourceError> {
        let (paths, more) = match &self.provider {
            Provider::Files(p) => (p.iter().chain(self.values.iter()).cloned().collect(), None),
            Provider::Kubernetes(k) => {
                (self.values.iter().cloned().collect(), k.started().map(|s| s.cluster.changes()))
            }
        };
        let values_dirs = self
            .values
            .iter()
            .filter_map(|v| v.parent())
            .map(|d| if d.as_os_str().is_empty() { PathBuf::from(".") } else { d.to_path_buf() })
            .collect();
        let source = self.clone();
        let refused = Arc::new(refused);
        let on_refused = refused.clone();
        file::watch_changes(
            paths,
            values_dirs,
            more,
            self.debounce,
            move || {
                match source.compile_if_changed() {
                    None => return tracing::debug!("no file changed since the last compile"),
                    Some(Ok(cfg)) => publish(cfg),
                    Some(Err(e)) => {
                        let lines = e.lines();
                        for l in &lines {
                            tracing::error!("{l}");
                        }
                        refused(format!("{} error(s) in the configuration", lines.len()));
                    }
                }
                // Once the change is in force (or refused): the documents' trees and the
                // configuration it replaced are gone; give their memory back.
                atrium_sys::release_free_memory();
            },
            move |why| on_refused(why.to_string()),
        )
    }
}
