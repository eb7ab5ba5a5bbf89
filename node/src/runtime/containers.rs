//! Containers and their tasks in containerd: create (snapshot + container record), start, signal,
//! wait, delete, and list what exists (so a restarted agent can adopt it).
//!
//! A container's identity lives in containerd, not in the agent: every container carries the
//! CRI labels (`io.kubernetes.pod.*`, `io.kubernetes.container.name`) and Skiff's own
//! ([`RESTART_LABEL`], [`KIND_LABEL`]), so listing containerd is enough to rebuild the agent's
//! view after `kill -9`. The task ID equals the container ID.

use std::collections::HashMap;

use anyhow::Context as _;
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::snapshots::{
    MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, GetRequest, KillRequest, ListContainersRequest, StartRequest, WaitRequest,
};
use containerd_client::types::v1::Status;
use containerd_client::types::Mount;
use prost_types::Any;
use tonic::Code;

use super::spec::SPEC_TYPE_URL;

/// The type URL of a process spec (for exec).
pub const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
use super::Containerd;

/// The pod's namespace (CRI label).
pub const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// The pod's name (CRI label).
pub const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
/// The pod's UID (CRI label).
pub const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";
/// The container's name in the pod spec (CRI label).
pub const CONTAINER_NAME_LABEL: &str = "io.kubernetes.container.name";
/// How many times this container of the pod had restarted when this one was made (decimal).
pub const RESTART_LABEL: &str = "skiff.io/restart-count";
/// `init` or `app`.
pub const KIND_LABEL: &str = "skiff.io/container-kind";

/// The runc shim.
pub const RUNTIME: &str = "io.containerd.runc.v2";
/// The snapshotter rootfs snapshots come from.
pub const SNAPSHOTTER: &str = "overlayfs";

/// Marks an object as a root for containerd's garbage collector (the value is a timestamp).
pub const GC_ROOT_LABEL: &str = "containerd.io/gc.root";

/// The value of [`GC_ROOT_LABEL`]: now, in RFC 3339.
pub fn gc_root_value() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// What containerd knows of one container and its task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRecord {
    pub id: String,
    pub labels: HashMap<String, String>,
    pub image: String,
    pub state: TaskState,
}

impl ContainerRecord {
    /// A label's value, or "".
    pub fn label(&self, key: &str) -> &str {
        self.labels.get(key).map(String::as_str).unwrap_or("")
    }

    /// The restart count the container was made with.
    pub fn restart_count(&self) -> i32 {
        self.label(RESTART_LABEL).parse().unwrap_or(0)
    }
}

/// A task's state as containerd reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskState {
    /// The container exists but has no task (never started, or its task was deleted).
    NoTask,
    /// Created, not started.
    Created,
    Running {
        pid: u32,
    },
    Exited {
        code: u32,
        /// Unix time in nanoseconds.
        at_nanos: i64,
    },
    /// Paused, pausing, unknown.
    Other,
}

/// A finished process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    pub code: u32,
    /// Unix time in nanoseconds.
    pub at_nanos: i64,
}

fn nanos(ts: Option<&prost_types::Timestamp>) -> i64 {
    ts.map_or(0, |t| t.seconds * 1_000_000_000 + i64::from(t.nanos))
}

/// Whether a gRPC error is containerd's "not found".
pub fn is_not_found(e: &tonic::Status) -> bool {
    e.code() == Code::NotFound
}

impl Containerd {
    /// Prepares a writable rootfs snapshot on `parent` (the image's chain ID) and creates the
    /// container record with its runtime spec. Idempotent for a retried call with the same ID.
    pub async fn create_container(
        &self,
        id: &str,
        image: &str,
        parent_snapshot: &str,
        labels: HashMap<String, String>,
        spec: &serde_json::Value,
    ) -> anyhow::Result<()> {
        let prepared = self
            .client()
            .snapshots()
            .prepare(self.request(PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: id.into(),
                parent: parent_snapshot.into(),
                // containerd's garbage collector removes snapshots nothing refers to; until the
                // container record refers to this one, it is a root. remove_container removes it.
                labels: HashMap::from([(GC_ROOT_LABEL.to_string(), gc_root_value())]),
            }))
            .await;
        match prepared {
            Ok(_) => {}
            Err(e) if e.code() == Code::AlreadyExists => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot prepare the root filesystem of {id} on {parent_snapshot}")
                })
            }
        }
        let container = Container {
            id: id.into(),
            labels,
            image: image.into(),
            runtime: Some(Runtime {
                name: RUNTIME.into(),
                options: self.oci.options(),
            }),
            spec: Some(Any {
                type_url: SPEC_TYPE_URL.into(),
                value: serde_json::to_vec(spec)?,
            }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: id.into(),
            ..Container::default()
        };
        match self
            .client()
            .containers()
            .create(self.request(CreateContainerRequest {
                container: Some(container),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Code::AlreadyExists => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot create container {id}")),
        }
    }

    /// Creates the container's task with its output going to `stdio_uri` (a path, or a
    /// `binary://` logger) and starts it. Returns the process ID.
    pub async fn start_task(&self, id: &str, stdio_uri: &str) -> anyhow::Result<u32> {
        let mounts: Vec<Mount> = self
            .client()
            .snapshots()
            .mounts(self.request(MountsRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: id.into(),
            }))
            .await
            .with_context(|| format!("cannot get the root filesystem mounts of {id}"))?
            .into_inner()
            .mounts;
        let created = self
            .client()
            .tasks()
            .create(self.request(CreateTaskRequest {
                container_id: id.into(),
                rootfs: mounts,
                stdout: stdio_uri.into(),
                stderr: stdio_uri.into(),
                ..CreateTaskRequest::default()
            }))
            .await;
        if let Err(e) = created {
            if e.code() != Code::AlreadyExists {
                return Err(e).with_context(|| format!("cannot create the task of {id}"));
            }
        }
        let started = self
            .client()
            .tasks()
            .start(self.request(StartRequest {
                container_id: id.into(),
                exec_id: String::new(),
            }))
            .await
            .with_context(|| format!("cannot start {id}"))?;
        Ok(started.into_inner().pid)
    }

    /// Sends `signal` to the task's init process (`all`: to every process in it).
    /// A task that is gone or already stopped is not an error.
    pub async fn signal(&self, id: &str, signal: u32, all: bool) -> anyhow::Result<()> {
        match self
            .client()
            .tasks()
            .kill(self.request(KillRequest {
                container_id: id.into(),
                exec_id: String::new(),
                signal,
                all,
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) || e.code() == Code::FailedPrecondition => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot signal {id}")),
        }
    }

    /// Waits until the task exits. Returns at once for a task that has already exited.
    pub async fn wait(&self, id: &str) -> anyhow::Result<Exit> {
        let response = self
            .client()
            .tasks()
            .wait(self.request(WaitRequest {
                container_id: id.into(),
                exec_id: String::new(),
            }))
            .await
            .with_context(|| format!("cannot wait for {id}"))?
            .into_inner();
        Ok(Exit {
            code: response.exit_status,
            at_nanos: nanos(response.exited_at.as_ref()),
        })
    }

    /// The task's state.
    pub async fn task_state(&self, id: &str) -> anyhow::Result<TaskState> {
        match self
            .client()
            .tasks()
            .get(self.request(GetRequest {
                container_id: id.into(),
                exec_id: String::new(),
            }))
            .await
        {
            Ok(response) => Ok(response
                .into_inner()
                .process
                .map_or(TaskState::NoTask, |p| state_of(&p))),
            Err(e) if is_not_found(&e) => Ok(TaskState::NoTask),
            Err(e) => Err(e).with_context(|| format!("cannot get the task of {id}")),
        }
    }

    /// Removes the task (which must have exited), the container and its snapshot. Anything
    /// already gone is skipped.
    pub async fn remove_container(&self, id: &str) -> anyhow::Result<()> {
        match self
            .client()
            .tasks()
            .delete(self.request(DeleteTaskRequest {
                container_id: id.into(),
            }))
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e).with_context(|| format!("cannot delete the task of {id}")),
        }
        match self
            .client()
            .containers()
            .delete(self.request(DeleteContainerRequest { id: id.into() }))
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e).with_context(|| format!("cannot delete container {id}")),
        }
        match self
            .client()
            .snapshots()
            .remove(self.request(RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: id.into(),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove the snapshot of {id}")),
        }
    }

    /// Runs `args` inside the running container `id` (its environment and working directory,
    /// as `process` in the runtime spec says) without input or output, and waits up to
    /// `timeout` for it. Returns the exit code; a process that overruns is killed and reported
    /// as `None`. For probes and lifecycle hooks.
    pub async fn exec_and_wait(
        &self,
        id: &str,
        process: &serde_json::Value,
        args: &[String],
        timeout: std::time::Duration,
    ) -> anyhow::Result<Option<u32>> {
        use containerd_client::services::v1::{DeleteProcessRequest, ExecProcessRequest};
        let exec_id = format!("probe-{}", uuid::Uuid::new_v4().simple());
        let mut process = process.clone();
        process["args"] = serde_json::json!(args);
        process["terminal"] = serde_json::json!(false);
        self.client()
            .tasks()
            .exec(self.request(ExecProcessRequest {
                container_id: id.into(),
                exec_id: exec_id.clone(),
                spec: Some(Any {
                    type_url: PROCESS_TYPE_URL.into(),
                    value: serde_json::to_vec(&process)?,
                }),
                ..ExecProcessRequest::default()
            }))
            .await
            .with_context(|| format!("cannot exec in {id}"))?;
        let result = async {
            // Wait is registered before Start so a quick exit is not missed.
            let mut tasks = self.client().tasks();
            let wait = tasks.wait(self.request(WaitRequest {
                container_id: id.into(),
                exec_id: exec_id.clone(),
            }));
            let mut starter = self.client().tasks();
            let start = starter.start(self.request(StartRequest {
                container_id: id.into(),
                exec_id: exec_id.clone(),
            }));
            let (waited, started) = tokio::join!(tokio::time::timeout(timeout, wait), start);
            started.with_context(|| format!("cannot start the exec in {id}"))?;
            match waited {
                Ok(w) => Ok(Some(
                    w.with_context(|| format!("cannot wait for the exec in {id}"))?
                        .into_inner()
                        .exit_status,
                )),
                Err(_) => {
                    let _ = self
                        .client()
                        .tasks()
                        .kill(self.request(KillRequest {
                            container_id: id.into(),
                            exec_id: exec_id.clone(),
                            signal: libc::SIGKILL as u32,
                            all: false,
                        }))
                        .await;
                    Ok(None)
                }
            }
        }
        .await;
        let _ = self
            .client()
            .tasks()
            .delete_process(self.request(DeleteProcessRequest {
                container_id: id.into(),
                exec_id,
            }))
            .await;
        result
    }

    /// Every container in the namespace with its task's state; `filters` are containerd
    /// filter expressions (`labels."io.kubernetes.pod.uid"==abc`), ORed.
    pub async fn list_containers(
        &self,
        filters: &[String],
    ) -> anyhow::Result<Vec<ContainerRecord>> {
        let containers = self
            .client()
            .containers()
            .list(self.request(ListContainersRequest {
                filters: filters.to_vec(),
            }))
            .await
            .context("cannot list containers")?
            .into_inner()
            .containers;
        let tasks = self
            .client()
            .tasks()
            .list(
                self.request(containerd_client::services::v1::ListTasksRequest {
                    filter: String::new(),
                }),
            )
            .await
            .context("cannot list tasks")?
            .into_inner()
            .tasks;
        let states: HashMap<&str, TaskState> =
            tasks.iter().map(|p| (p.id.as_str(), state_of(p))).collect();
        Ok(containers
            .into_iter()
            .map(|c| ContainerRecord {
                state: states
                    .get(c.id.as_str())
                    .cloned()
                    .unwrap_or(TaskState::NoTask),
                id: c.id,
                labels: c.labels,
                image: c.image,
            })
            .collect())
    }
}

fn state_of(p: &containerd_client::types::v1::Process) -> TaskState {
    match Status::try_from(p.status).unwrap_or(Status::Unknown) {
        Status::Created => TaskState::Created,
        Status::Running => TaskState::Running { pid: p.pid },
        Status::Stopped => TaskState::Exited {
            code: p.exit_status,
            at_nanos: nanos(p.exited_at.as_ref()),
        },
        _ => TaskState::Other,
    }
}
