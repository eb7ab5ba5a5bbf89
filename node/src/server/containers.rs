//! Finding a pod's container in containerd by the CRI labels the pod worker puts on every
//! container it creates.

use std::path::{Path, PathBuf};

use containerd_client::services::v1::{GetRequest, ListContainersRequest};
use containerd_client::types::v1::Status;

use crate::runtime::Containerd;

/// Label: the pod's namespace.
pub const LABEL_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// Label: the pod's name.
pub const LABEL_POD: &str = "io.kubernetes.pod.name";
/// Label: the pod's UID.
pub const LABEL_UID: &str = "io.kubernetes.pod.uid";
/// Label: the container's name in the pod spec.
pub const LABEL_CONTAINER: &str = "io.kubernetes.container.name";
/// Label: how often the container was restarted before this run (decimal).
pub const LABEL_RESTART_COUNT: &str = "skiff.io/restart-count";

/// Why a container could not be found.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("container {container:?} of pod {namespace}/{pod} is not on this node")]
    NotFound {
        namespace: String,
        pod: String,
        container: String,
    },
    #[error("containerd failed to {action}: {source}")]
    Containerd {
        action: &'static str,
        #[source]
        source: tonic::Status,
    },
}

/// One run of a pod's container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The containerd container ID (also its task ID).
    pub id: String,
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub container: String,
    pub restart_count: u32,
    /// Whether its task is running now.
    pub running: bool,
}

impl Found {
    /// This run's log file.
    pub fn log_path(&self, pod_logs_dir: &Path) -> PathBuf {
        crate::logs::container_log_path(
            pod_logs_dir,
            &self.namespace,
            &self.pod,
            &self.uid,
            &self.container,
            self.restart_count,
        )
    }

    /// The previous run's log file, if there was one.
    pub fn previous_log_path(&self, pod_logs_dir: &Path) -> Option<PathBuf> {
        let previous = self.restart_count.checked_sub(1)?;
        Some(crate::logs::container_log_path(
            pod_logs_dir,
            &self.namespace,
            &self.pod,
            &self.uid,
            &self.container,
            previous,
        ))
    }
}

/// Finds the container `container` of pod `namespace/pod`: the run whose task is running, or
/// else the one with the highest restart count.
pub async fn find(
    containerd: &Containerd,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Result<Found, LookupError> {
    let filter = format!(
        "labels.\"{LABEL_NAMESPACE}\"=={namespace},labels.\"{LABEL_POD}\"=={pod},labels.\"{LABEL_CONTAINER}\"=={container}"
    );
    let list = containerd
        .client()
        .containers()
        .list(containerd.request(ListContainersRequest {
            filters: vec![filter],
        }))
        .await
        .map_err(|source| LookupError::Containerd {
            action: "list containers",
            source,
        })?
        .into_inner();
    let mut best: Option<Found> = None;
    for c in list.containers {
        let label = |k: &str| c.labels.get(k).cloned().unwrap_or_default();
        // The filter already matched; checking again keeps a quoting surprise from serving
        // another pod's container.
        if label(LABEL_NAMESPACE) != namespace
            || label(LABEL_POD) != pod
            || label(LABEL_CONTAINER) != container
        {
            continue;
        }
        let found = Found {
            running: is_running(containerd, &c.id).await,
            id: c.id.clone(),
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            uid: label(LABEL_UID),
            container: container.to_string(),
            restart_count: label(LABEL_RESTART_COUNT).parse().unwrap_or(0),
        };
        let better = match &best {
            None => true,
            Some(b) => (found.running, found.restart_count) > (b.running, b.restart_count),
        };
        if better {
            best = Some(found);
        }
    }
    best.ok_or_else(|| LookupError::NotFound {
        namespace: namespace.to_string(),
        pod: pod.to_string(),
        container: container.to_string(),
    })
}

/// Whether container `id`'s task is running (no task, or an error, counts as not running).
pub async fn is_running(containerd: &Containerd, id: &str) -> bool {
    let request = containerd.request(GetRequest {
        container_id: id.to_string(),
        exec_id: String::new(),
    });
    match containerd.client().tasks().get(request).await {
        Ok(r) => r.into_inner().process.is_some_and(|p| {
            p.status == Status::Running as i32 || p.status == Status::Paused as i32
        }),
        Err(_) => false,
    }
}
