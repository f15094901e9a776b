//! The Kubernetes provider as a configuration source: the API server's objects (watched by
//! [`atrium_k8s::Cluster`]) compiled like files, and what became of each object written
//! back by the leader.

use std::sync::Arc;
use std::time::Duration;

use atrium_k8s::rbac::Component;
use atrium_k8s::{Cluster, Leader, LeaseOptions, StatusWriter};

use crate::config::SourceError;

/// Where and what to watch, and who writes status.
#[derive(Clone)]
pub struct KubeSource {
    /// Namespaces and label selector.
    pub options: atrium_k8s::Options,
    /// The component (its status kinds and Lease name).
    pub component: Component,
    /// The leader Lease; none: this replica always writes status (a single replica).
    pub lease: Option<LeaseOptions>,
    /// A kubeconfig file to use instead of `KUBECONFIG` or the service account.
    pub kubeconfig: Option<std::path::PathBuf>,
    /// A client to use instead of the inferred configuration (tests).
    pub client: Option<kube::Client>,
    started: Arc<tokio::sync::OnceCell<Started>>,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("options", &self.options)
            .field("component", &self.component)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// A started provider: its watches, its leadership and its status writer.
#[derive(Debug, Clone)]
pub struct Started {
    /// The watched objects.
    pub cluster: Cluster,
    /// Whether this replica writes status.
    pub leader: Leader,
    /// The status writer.
    pub status: StatusWriter,
}

impl KubeSource {
    /// A source for `component` (not started).
    pub fn new(options: atrium_k8s::Options, component: Component, lease: Option<LeaseOptions>) -> KubeSource {
        KubeSource { options, component, lease, kubeconfig: None, client: None, started: Arc::default() }
    }

    /// Starts the watches (once) and waits until every kind has listed once.
    pub async fn start(&self) -> Result<&Started, SourceError> {
        self.started
            .get_or_try_init(|| async {
                let client = match &self.client {
                    Some(c) => c.clone(),
                    None => atrium_k8s::cluster::client(self.kubeconfig.as_deref()).await?,
                };
                tracing::info!(
                    namespaces = ?self.options.namespaces,
                    label_selector = ?self.options.label_selector,
                    "watching the Kubernetes API"
                );
                let cluster = Cluster::start(client.clone(), self.options.clone());
                cluster.synced(Duration::from_secs(5)).await;
                let leader = match &self.lease {
                    Some(l) => {
                        let mut l = l.clone();
                        if l.namespace.is_empty() {
                            l.namespace = client.default_namespace().to_string();
                        }
                        tracing::info!(lease = %l.name, namespace = %l.namespace, identity = %l.identity, "campaigning for the leader Lease");
                        Leader::elect(client, l)
                    }
                    None => Leader::always(),
                };
                let identity = self.lease.as_ref().map(|l| l.identity.clone()).unwrap_or_else(|| "atrium".into());
                let status = StatusWriter::start(
                    cluster.clone(),
                    leader.clone(),
                    self.component.status_kinds(),
                    self.component.name(),
                    &identity,
                );
                Ok::<_, SourceError>(Started { cluster, leader, status })
            })
            .await
    }

    /// The started provider, if [`KubeSource::start`] has run.
    pub fn started(&self) -> Option<&Started> {
        self.started.get()
    }
}
