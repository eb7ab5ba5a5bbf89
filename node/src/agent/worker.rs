//! One pod's worker: makes the pod real and keeps it so, then tears it down.
//!
//! Like kubelet's pod workers, every pod bound to the node has one task that owns everything
//! about it: its sandbox (network namespace, CNI, pod directory), its containers in containerd,
//! restarts with crash-loop backoff, probes, graceful termination and the status it reports.
//! The task wakes on a new version of the pod, on a container's exit, and on its own timers
//! (backoff ends, probes are due); each wake runs one idempotent [`Worker::sync`].
//!
//! The truth about containers is containerd's: a restarted agent hands each worker the
//! containers it finds there (by their CRI labels), and the worker carries on from them, with
//! the same PIDs and restart counts.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, LifecycleHandler, Pod, PodStatus, Probe, Secret, Service, ServiceAccount,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::Api;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::env::{self, Sources};
use super::probe::{self, ProbeKind, ProbeResult};
use super::status::{self, Observed, State, Terminated};
use super::volumes;
use super::Deps;
use crate::hollow::crash_backoff_ms;
use crate::network::Sandbox as NetSandbox;
use crate::runtime::containers::{
    ContainerRecord, TaskState, CONTAINER_NAME_LABEL, KIND_LABEL, POD_NAMESPACE_LABEL,
    POD_NAME_LABEL, POD_UID_LABEL, RESTART_LABEL,
};
use crate::runtime::images::{self, ImageInfo, PullPolicy, Reference, RegistryAuth};
use crate::runtime::spec::{self, ContainerSpec, Limits};
use crate::runtime::SHIM_GROUP_ANNOTATION;

/// A container that ran this long before it exited restarts without backoff (kubelet's reset).
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// How long a worker sleeps when nothing is due (a safety resync).
const RESYNC: Duration = Duration::from_secs(60);
/// The grace period when the pod has none.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Retry delay after a failed step (API or runtime error).
const RETRY: Duration = Duration::from_secs(2);
/// How soon a failed token refresh is tried again.
const TOKEN_RETRY: Duration = Duration::from_secs(10);
/// A projected token is refreshed after at most this long, whatever its lifetime (kubelet's).
const TOKEN_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// When to request a token again, `ttl` after it was issued: once 80% of its lifetime has
/// passed, or after 24 hours (kubelet's token manager).
fn token_refresh_after(ttl: Duration) -> Duration {
    ttl.mul_f64(0.8).min(TOKEN_MAX_AGE)
}

/// What wakes a worker.
#[derive(Debug)]
pub enum Msg {
    /// A new version of the pod.
    Update(Arc<Pod>),
    /// The pod is gone from the API (deleted with grace 0, or its node changed).
    Gone,
    /// A container's task exited.
    Exited {
        id: String,
        code: u32,
        at_nanos: i64,
    },
}

/// One container of the pod as the worker tracks it.
#[derive(Debug)]
struct Slot {
    name: String,
    init: bool,
    /// The newest containerd container for this name.
    current: Option<Current>,
    restart_count: i32,
    last: Option<Terminated>,
    backoff_steps: u32,
    /// Not restarted before this instant.
    not_before: Option<Instant>,
    /// Why it is not running (when it is not).
    waiting: (String, Option<String>),
    image_id: String,
    ready: bool,
    started: bool,
    probes: HashMap<ProbeKind, probe::State>,
}

#[derive(Debug, Clone)]
struct Current {
    id: String,
    started_at: Option<Timestamp>,
    started_instant: Option<Instant>,
    exit: Option<Terminated>,
    cgroups_path: String,
    process: serde_json::Value,
}

impl Slot {
    fn new(name: &str, init: bool) -> Slot {
        Slot {
            name: name.to_string(),
            init,
            current: None,
            restart_count: 0,
            last: None,
            backoff_steps: 0,
            not_before: None,
            waiting: ("ContainerCreating".into(), None),
            image_id: String::new(),
            ready: false,
            started: false,
            probes: HashMap::new(),
        }
    }

    fn running(&self) -> bool {
        self.current
            .as_ref()
            .is_some_and(|c| c.exit.is_none() && c.started_at.is_some())
    }

    fn exited(&self) -> Option<&Terminated> {
        self.current.as_ref().and_then(|c| c.exit.as_ref())
    }

    fn observed(&self, image: &str) -> Observed {
        let state = match &self.current {
            Some(Current { exit: Some(t), .. }) if self.not_before.is_none() => {
                State::Terminated(t.clone())
            }
            Some(Current {
                exit: None,
                started_at: Some(at),
                ..
            }) => State::Running { started_at: *at },
            _ => State::Waiting {
                reason: self.waiting.0.clone(),
                message: self.waiting.1.clone(),
            },
        };
        // While backing off, the last run shows as lastState.
        let last = match (&state, &self.current) {
            (State::Waiting { .. }, Some(Current { exit: Some(t), .. })) => Some(t.clone()),
            _ => self.last.clone(),
        };
        Observed {
            name: self.name.clone(),
            image: image.to_string(),
            image_id: self.image_id.clone(),
            container_id: self
                .current
                .as_ref()
                .map(|c| format!("containerd://{}", c.id)),
            restart_count: self.restart_count,
            state,
            last,
            ready: self.running() && self.ready,
            started: self.running() && self.started,
        }
    }
}

/// The pod's sandbox: its network namespace and addresses.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Sandbox {
    pub netns: PathBuf,
    pub ips: Vec<IpAddr>,
}

/// The worker of one pod.
pub struct Worker {
    deps: Arc<Deps>,
    uid: String,
    pod: Arc<Pod>,
    slots: Vec<Slot>,
    sandbox: Option<Sandbox>,
    volumes: Option<BTreeMap<String, PathBuf>>,
    /// When the projected service-account tokens are next requested again.
    token_refresh_at: Option<Instant>,
    start_time: Option<Timestamp>,
    written: Option<PodStatus>,
    gone: bool,
    finished: bool,
    exits: mpsc::Sender<Msg>,
    /// A failure of the pod as a whole: (reason, message).
    failed: Option<(String, String)>,
}

fn now() -> Timestamp {
    Timestamp::now()
}

fn from_nanos(n: i64) -> Timestamp {
    Timestamp::from_nanosecond(i128::from(n)).unwrap_or_else(|_| now())
}

fn pod_name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

/// The cgroup path of a container: kubelet's cgroupfs layout.
pub fn cgroups_path(pod: &Pod, container_id: &str) -> String {
    let uid = pod.metadata.uid.as_deref().unwrap_or("");
    let qos = pod
        .status
        .as_ref()
        .and_then(|s| s.qos_class.as_deref())
        .unwrap_or("BestEffort");
    match qos {
        "Guaranteed" => format!("/kubepods/pod{uid}/{container_id}"),
        "Burstable" => format!("/kubepods/burstable/pod{uid}/{container_id}"),
        _ => format!("/kubepods/besteffort/pod{uid}/{container_id}"),
    }
}

impl Worker {
    /// A worker for `pod`, carrying on from the containers containerd already has for it.
    pub fn new(
        deps: Arc<Deps>,
        pod: Arc<Pod>,
        adopted: Vec<ContainerRecord>,
        exits: mpsc::Sender<Msg>,
    ) -> Worker {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let mut slots: Vec<Slot> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| Slot::new(&c.name, true))
            .chain(spec.containers.iter().map(|c| Slot::new(&c.name, false)))
            .collect();
        let sandbox = std::fs::read(volumes::pod_dir(&deps.root, &uid).join("sandbox.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let mut worker = Worker {
            deps,
            uid,
            pod,
            slots: Vec::new(),
            sandbox,
            volumes: None,
            token_refresh_at: None,
            start_time: None,
            written: None,
            gone: false,
            finished: false,
            exits,
            failed: None,
        };
        // Adopt: the newest container per name is current; its restart count carries on.
        let mut by_name: BTreeMap<String, Vec<ContainerRecord>> = BTreeMap::new();
        for r in adopted {
            by_name
                .entry(r.label(CONTAINER_NAME_LABEL).to_string())
                .or_default()
                .push(r);
        }
        for slot in &mut slots {
            let Some(records) = by_name.get_mut(&slot.name) else {
                continue;
            };
            records.sort_by_key(ContainerRecord::restart_count);
            let Some(newest) = records.last() else {
                continue;
            };
            slot.restart_count = newest.restart_count();
            slot.image_id = newest.image.clone();
            let (started_at, exit) = match &newest.state {
                TaskState::Running { .. } => (Some(now()), None),
                TaskState::Exited { code, at_nanos } => (
                    Some(now()),
                    Some(Terminated {
                        exit_code: *code as i32,
                        reason: if *code == 0 { "Completed" } else { "Error" }.into(),
                        message: None,
                        started_at: None,
                        finished_at: from_nanos(*at_nanos),
                        container_id: Some(format!("containerd://{}", newest.id)),
                    }),
                ),
                _ => (None, None),
            };
            // A running container was already ready before the restart if the API said so.
            let was_ready = worker
                .pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.name == slot.name))
                .map(|c| (c.ready, c.started.unwrap_or(false), c.state.clone()));
            if let Some((ready, started, state)) = was_ready {
                slot.ready = ready;
                slot.started = started;
                if let Some(at) = state.and_then(|s| s.running).and_then(|r| r.started_at) {
                    if exit.is_none() {
                        slot.current = Some(Current {
                            id: newest.id.clone(),
                            started_at: Some(at.0),
                            started_instant: Some(Instant::now()),
                            exit: None,
                            cgroups_path: cgroups_path(&worker.pod, &newest.id),
                            process: serde_json::Value::Null,
                        });
                    }
                }
            }
            if slot.current.is_none() {
                slot.current = Some(Current {
                    id: newest.id.clone(),
                    started_at,
                    started_instant: Some(Instant::now()),
                    exit,
                    cgroups_path: cgroups_path(&worker.pod, &newest.id),
                    process: serde_json::Value::Null,
                });
            }
            if matches!(newest.state, TaskState::Running { .. }) {
                worker.watch_exit(newest.id.clone());
            }
        }
        worker.slots = slots;
        worker.start_time = worker
            .pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0);
        worker
    }

    /// Runs until the pod is torn down.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let name = pod_name(&self.pod);
        tracing::debug!(pod = %name, uid = %self.uid, "pod worker started");
        loop {
            let wake = self.sync().await;
            if self.finished {
                break;
            }
            let deadline = wake.unwrap_or_else(|| Instant::now() + RESYNC);
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => self.handle(msg),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => {}
            }
            while let Ok(msg) = rx.try_recv() {
                self.handle(msg);
            }
        }
        tracing::debug!(pod = %name, uid = %self.uid, "pod worker done");
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Update(pod) => self.pod = pod,
            Msg::Gone => self.gone = true,
            Msg::Exited { id, code, at_nanos } => {
                let oom = {
                    let path = self
                        .slots
                        .iter()
                        .filter_map(|s| s.current.as_ref())
                        .find(|c| c.id == id)
                        .map(|c| c.cgroups_path.clone());
                    path.is_some_and(|p| oom_killed(&p))
                };
                for slot in &mut self.slots {
                    let Some(current) = slot.current.as_mut().filter(|c| c.id == id) else {
                        continue;
                    };
                    if current.exit.is_some() {
                        continue;
                    }
                    let reason = if oom {
                        "OOMKilled"
                    } else if code == 0 {
                        "Completed"
                    } else {
                        "Error"
                    };
                    current.exit = Some(Terminated {
                        exit_code: code as i32,
                        reason: reason.into(),
                        message: None,
                        started_at: current.started_at,
                        finished_at: from_nanos(at_nanos),
                        container_id: Some(format!("containerd://{id}")),
                    });
                    slot.ready = false;
                    tracing::info!(pod = %pod_name(&self.pod), container = %slot.name, code, reason, "container exited");
                }
            }
        }
    }

    fn watch_exit(&self, id: String) {
        let runtime = self.deps.runtime.clone();
        let tx = self.exits.clone();
        tokio::spawn(async move {
            // Wait can fail while containerd restarts; retry a few times, then report the
            // state containerd has.
            for attempt in 0..10u32 {
                match runtime.wait(&id).await {
                    Ok(exit) => {
                        let _ = tx
                            .send(Msg::Exited {
                                id,
                                code: exit.code,
                                at_nanos: exit.at_nanos,
                            })
                            .await;
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(container = %id, error = %format!("{e:#}"), attempt, "wait failed");
                        tokio::time::sleep(RETRY).await;
                    }
                }
            }
        });
    }

    /// One pass: converge the pod toward its spec; returns when to look again.
    async fn sync(&mut self) -> Option<Instant> {
        if self.gone || self.pod.metadata.deletion_timestamp.is_some() {
            self.terminate().await;
            return None;
        }
        let phase = self
            .written
            .as_ref()
            .or(self.pod.status.as_ref())
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            // Finished pods keep their containers (for logs) but give back their network.
            if self.sandbox.is_some() {
                self.teardown_network().await;
            }
            return None;
        }
        if self.start_time.is_none() {
            self.start_time = Some(now());
        }
        let mut wake: Option<Instant> = None;
        let mut soonest = |at: Instant| {
            wake = Some(wake.map_or(at, |w: Instant| w.min(at)));
        };
        // Setting up: take one of the node's start slots for this pass (see Deps::starts).
        let deps = self.deps.clone();
        let setting_up = self.sandbox.is_none()
            || self
                .slots
                .iter()
                .any(|s| s.current.is_none() && s.not_before.is_none());
        let start_slot = if setting_up {
            deps.starts.acquire().await.ok()
        } else {
            None
        };
        if let Err(e) = self.ensure_sandbox().await {
            tracing::warn!(pod = %pod_name(&self.pod), error = %format!("{e:#}"), "cannot set up the pod sandbox");
            for slot in &mut self.slots {
                if !slot.running() {
                    slot.waiting = ("ContainerCreating".into(), Some(format!("{e:#}")));
                }
            }
            self.write_status().await;
            return Some(Instant::now() + RETRY);
        }
        if let Some(at) = self.refresh_tokens().await {
            soonest(at);
        }
        if let Some(deadline) = self.active_deadline() {
            if Instant::now() >= deadline {
                self.failed = Some((
                    "DeadlineExceeded".into(),
                    "Pod was active on the node longer than the specified deadline".into(),
                ));
                self.kill_all(Duration::ZERO).await;
                self.write_status().await;
                return None;
            }
            soonest(deadline);
        }
        let restart_policy = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        // Init containers, one at a time, in order.
        let init_count = self.slots.iter().filter(|s| s.init).count();
        let mut initialized = true;
        for i in 0..init_count {
            if self.slots[i].exited().is_some_and(|t| t.exit_code == 0) {
                continue;
            }
            initialized = false;
            if let Some(at) = self.step_container(i, &restart_policy).await {
                soonest(at);
            }
            break;
        }
        if initialized {
            for i in init_count..self.slots.len() {
                if let Some(at) = self.step_container(i, &restart_policy).await {
                    soonest(at);
                }
            }
            if let Some(at) = self.run_probes().await {
                soonest(at);
            }
        } else {
            for slot in self.slots.iter_mut().filter(|s| !s.init) {
                slot.waiting = ("PodInitializing".into(), None);
            }
        }
        // The slot bounds the node's work; writing the status is the master's.
        drop(start_slot);
        self.write_status().await;
        wake
    }

    /// When `activeDeadlineSeconds` runs out, counted from the pod's start.
    fn active_deadline(&self) -> Option<Instant> {
        let seconds = self.pod.spec.as_ref()?.active_deadline_seconds?;
        let start = self.start_time?;
        let elapsed = now().duration_since(start).as_secs_f64().max(0.0);
        let left = (seconds as f64 - elapsed).max(0.0);
        Some(Instant::now() + Duration::from_secs_f64(left))
    }

    /// Starts, restarts or leaves alone container `i`; returns when it next needs a look.
    async fn step_container(&mut self, i: usize, restart_policy: &str) -> Option<Instant> {
        if self.slots[i].running() {
            return None;
        }
        if let Some(exit) = self.slots[i].exited().cloned() {
            let restart = match restart_policy {
                "Always" => !self.slots[i].init || exit.exit_code != 0,
                "OnFailure" => exit.exit_code != 0,
                _ => false,
            };
            if !restart {
                return None;
            }
            let slot = &mut self.slots[i];
            if slot.not_before.is_none() {
                let ran = slot
                    .current
                    .as_ref()
                    .and_then(|c| c.started_instant)
                    .map(|s| s.elapsed())
                    .unwrap_or_default();
                if ran >= BACKOFF_RESET {
                    slot.backoff_steps = 0;
                }
                slot.backoff_steps += 1;
                let delay = Duration::from_millis(crash_backoff_ms(slot.backoff_steps));
                slot.not_before = Some(Instant::now() + delay);
                slot.waiting = (
                    "CrashLoopBackOff".into(),
                    Some(format!(
                        "back-off {}s restarting failed container={} pod={}",
                        delay.as_secs(),
                        slot.name,
                        pod_name(&self.pod)
                    )),
                );
            }
            let not_before = slot.not_before?;
            if Instant::now() < not_before {
                return Some(not_before);
            }
            slot.last = Some(exit);
            slot.restart_count += 1;
        } else if let Some(at) = self.slots[i].not_before {
            // Backing off after a failure to create the container.
            if Instant::now() < at {
                return Some(at);
            }
        }
        match self.start_container(i).await {
            Ok(()) => {
                self.slots[i].not_before = None;
                None
            }
            Err(StartError { reason, message }) => {
                let slot = &mut self.slots[i];
                tracing::warn!(pod = %pod_name(&self.pod), container = %slot.name, %reason, %message, "cannot start container");
                slot.waiting = (reason, Some(message));
                slot.backoff_steps += 1;
                let delay = Duration::from_millis(crash_backoff_ms(slot.backoff_steps))
                    .min(Duration::from_secs(300));
                let at = Instant::now() + delay.max(RETRY);
                slot.not_before = Some(at);
                Some(at)
            }
        }
    }

    fn container_spec(&self, i: usize) -> Option<Container> {
        let spec = self.pod.spec.as_ref()?;
        let slot = &self.slots[i];
        if slot.init {
            spec.init_containers
                .iter()
                .flatten()
                .find(|c| c.name == slot.name)
                .cloned()
        } else {
            spec.containers
                .iter()
                .find(|c| c.name == slot.name)
                .cloned()
        }
    }

    async fn start_container(&mut self, i: usize) -> Result<(), StartError> {
        let container = self.container_spec(i).ok_or_else(|| StartError {
            reason: "CreateContainerConfigError".into(),
            message: "container is not in the pod spec".into(),
        })?;
        let image_name = container.image.clone().unwrap_or_default();
        let policy = PullPolicy::from_spec(container.image_pull_policy.as_deref(), &image_name);
        let auths = self.pull_auths(&image_name).await;
        let image = images::ensure_image(&self.deps.runtime, &image_name, policy, &auths)
            .await
            .map_err(|e| StartError {
                reason: e.reason().to_string(),
                message: e.to_string(),
            })?;
        self.slots[i].image_id = format!(
            "{}@{}",
            image.name.split(['@']).next().unwrap_or(""),
            image.digest
        );
        let sources = self
            .fetch_sources(&container)
            .await
            .map_err(|e| StartError {
                reason: "CreateContainerConfigError".into(),
                message: e,
            })?;
        let pod_dir = volumes::pod_dir(&self.deps.root, &self.uid);
        if self.volumes.is_none() {
            let prepared =
                volumes::prepare(&self.pod, &pod_dir, &sources).map_err(|e| StartError {
                    reason: "CreateContainerConfigError".into(),
                    message: e.to_string(),
                })?;
            self.volumes = Some(prepared);
            self.token_refresh_at = sources.token_refresh.map(|d| Instant::now() + d);
        }
        let vols = self.volumes.clone().unwrap_or_default();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (spec_json, process) = self
            .build_spec(&container, &image, &sources, &vols, &id)
            .map_err(|message| StartError {
                reason: "CreateContainerConfigError".into(),
                message,
            })?;
        let slot = &self.slots[i];
        let labels = HashMap::from([
            (
                POD_NAMESPACE_LABEL.to_string(),
                self.pod.metadata.namespace.clone().unwrap_or_default(),
            ),
            (
                POD_NAME_LABEL.to_string(),
                self.pod.metadata.name.clone().unwrap_or_default(),
            ),
            (POD_UID_LABEL.to_string(), self.uid.clone()),
            (CONTAINER_NAME_LABEL.to_string(), slot.name.clone()),
            (RESTART_LABEL.to_string(), slot.restart_count.to_string()),
            (
                KIND_LABEL.to_string(),
                if slot.init { "init" } else { "app" }.to_string(),
            ),
        ]);
        let fail = |reason: &str| {
            let reason = reason.to_string();
            move |e: anyhow::Error| StartError {
                reason,
                message: format!("{e:#}"),
            }
        };
        // The previous container of this name goes (its logs stay in the log directory).
        if let Some(old) = self.slots[i].current.take() {
            if let Err(e) = self.deps.runtime.remove_container(&old.id).await {
                tracing::warn!(container = %old.id, error = %format!("{e:#}"), "cannot remove the previous container");
            }
        }
        if let Err(e) = self
            .deps
            .runtime
            .create_container(&id, &image.name, &image.chain_id, labels, &spec_json)
            .await
        {
            // Perhaps the image's snapshot went: the next try resolves the image afresh.
            self.deps.runtime.remember_image(&image.name, None);
            return Err(fail("CreateContainerError")(e));
        }
        let log_path = self.log_path(&self.slots[i].name, self.slots[i].restart_count);
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StartError {
                reason: "CreateContainerError".into(),
                message: format!("cannot create {}: {e}", dir.display()),
            })?;
        }
        let stdio = (self.deps.log_uri)(&log_path);
        let cgroups = cgroups_path(&self.pod, &id);
        match self.deps.runtime.start_task(&id, &stdio).await {
            Ok(_pid) => {}
            Err(e) => {
                let _ = self.deps.runtime.remove_container(&id).await;
                return Err(fail("RunContainerError")(e));
            }
        }
        let slot = &mut self.slots[i];
        slot.current = Some(Current {
            id: id.clone(),
            started_at: Some(now()),
            started_instant: Some(Instant::now()),
            exit: None,
            cgroups_path: cgroups,
            process,
        });
        slot.ready = false;
        slot.started = false;
        slot.probes.clear();
        tracing::info!(pod = %pod_name(&self.pod), container = %slot.name, id = %id, restarts = slot.restart_count, "container started");
        self.watch_exit(id.clone());
        // postStart runs after the start; a failure kills the container (kubelet's rule).
        if let Some(handler) = container
            .lifecycle
            .as_ref()
            .and_then(|l| l.post_start.clone())
        {
            if let Err(message) = self.run_hook(i, &handler, DEFAULT_GRACE).await {
                tracing::warn!(pod = %pod_name(&self.pod), container = %container.name, %message, "postStart hook failed");
                let _ = self
                    .deps
                    .runtime
                    .signal(&id, libc::SIGKILL as u32, true)
                    .await;
            }
        }
        Ok(())
    }

    /// `<pod-logs-dir>/<namespace>_<name>_<uid>/<container>/<restart>.log`
    fn log_path(&self, container: &str, restart: i32) -> PathBuf {
        crate::logs::container_log_path(
            &self.deps.pod_logs_dir,
            self.pod.metadata.namespace.as_deref().unwrap_or(""),
            self.pod.metadata.name.as_deref().unwrap_or(""),
            &self.uid,
            container,
            restart.max(0) as u32,
        )
    }

    fn build_spec(
        &self,
        container: &Container,
        image: &ImageInfo,
        sources: &Prefetched,
        vols: &BTreeMap<String, PathBuf>,
        id: &str,
    ) -> Result<(serde_json::Value, serde_json::Value), String> {
        let env = env::environment(&self.pod, container, &image.config.env, sources)
            .map_err(|e| e.to_string())?;
        let mut env = env;
        // The pod's view of itself that kubelet always adds.
        if !env.iter().any(|(k, _)| k == "HOSTNAME") {
            env.push((
                "HOSTNAME".into(),
                self.pod.metadata.name.clone().unwrap_or_default(),
            ));
        }
        let args = env::command_line(container, &image.config.entrypoint, &image.config.cmd, &env);
        if args.is_empty() {
            return Err("no command specified: the image has no entrypoint or cmd and the container sets no command".into());
        }
        let pod_spec = self.pod.spec.clone().unwrap_or_default();
        let pod_security = pod_spec.security_context.clone().unwrap_or_default();
        let security = container.security_context.clone().unwrap_or_default();
        let (image_uid, image_gid) = parse_user(&image.config.user);
        let uid = security
            .run_as_user
            .or(pod_security.run_as_user)
            .map(|u| u as u32)
            .unwrap_or(image_uid);
        let gid = security
            .run_as_group
            .or(pod_security.run_as_group)
            .map(|g| g as u32)
            .unwrap_or(image_gid);
        if security.run_as_non_root.or(pod_security.run_as_non_root) == Some(true) && uid == 0 {
            return Err("container has runAsNonRoot and image will run as root".into());
        }
        let mut mounts = volumes::etc_files(
            &self.pod,
            &volumes::pod_dir(&self.deps.root, &self.uid),
            self.sandbox
                .as_ref()
                .and_then(|s| s.ips.first())
                .map(|ip| ip.to_string())
                .as_deref(),
        )
        .map_err(|e| format!("cannot write the pod's /etc files: {e}"))?;
        mounts.extend(volumes::container_mounts(container, vols).map_err(|e| e.to_string())?);
        let resources = container.resources.clone().unwrap_or_default();
        let get =
            |map: &Option<
                BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
            >,
             key: &str| { map.as_ref().and_then(|m| m.get(key)).map(|q| q.0.clone()) };
        let limits = Limits::from_resources(
            get(&resources.requests, "cpu").and_then(|q| super::quantity::millis(&q)),
            get(&resources.limits, "cpu").and_then(|q| super::quantity::millis(&q)),
            get(&resources.limits, "memory").and_then(|q| super::quantity::bytes(&q)),
        );
        let caps = security.capabilities.clone().unwrap_or_default();
        let netns = self
            .sandbox
            .as_ref()
            .map(|s| s.netns.clone())
            .ok_or("the pod has no sandbox")?;
        let c = ContainerSpec {
            args,
            env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd: container
                .working_dir
                .clone()
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| image.config.working_dir.clone()),
            uid,
            gid,
            additional_gids: pod_security
                .supplemental_groups
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|g| g as u32)
                .collect(),
            hostname: pod_spec
                .hostname
                .clone()
                .or_else(|| self.pod.metadata.name.clone())
                .unwrap_or_default(),
            netns,
            cgroups_path: cgroups_path(&self.pod, id),
            mounts,
            read_only_rootfs: security.read_only_root_filesystem.unwrap_or(false),
            limits,
            add_capabilities: caps.add.unwrap_or_default(),
            drop_capabilities: caps.drop.unwrap_or_default(),
            privileged: security.privileged.unwrap_or(false),
            no_new_privileges: security.allow_privilege_escalation == Some(false),
            terminal: container.tty.unwrap_or(false),
            annotations: self
                .pod
                .metadata
                .uid
                .iter()
                .map(|uid| (SHIM_GROUP_ANNOTATION.to_string(), uid.clone()))
                .collect(),
        };
        let spec = spec::runtime_spec(&c);
        let process = spec["process"].clone();
        Ok((spec, process))
    }

    /// Registry credentials for `image` from the pod's `imagePullSecrets`.
    async fn pull_auths(&self, image: &str) -> Vec<RegistryAuth> {
        let Ok(reference) = Reference::parse(image) else {
            return Vec::new();
        };
        self.pull_secrets()
            .await
            .iter()
            .filter_map(|b| RegistryAuth::from_dockerconfigjson(b, &reference.registry))
            .collect()
    }

    async fn pull_secrets(&self) -> Vec<Vec<u8>> {
        let names: Vec<String> = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.image_pull_secrets.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.name)
            .collect();
        let api: Api<Secret> = Api::namespaced(
            self.deps.client.clone(),
            self.pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let mut out = Vec::new();
        for name in names {
            if let Ok(Some(secret)) = api.get_opt(&name).await {
                if let Some(data) = secret
                    .data
                    .and_then(|d| d.get(".dockerconfigjson").cloned())
                {
                    out.push(data.0);
                }
            }
        }
        out
    }

    /// Reads the ConfigMaps and Secrets the pod refers to (env, envFrom, volumes).
    async fn fetch_sources(&self, container: &Container) -> Result<Prefetched, String> {
        let mut config_maps = Vec::new();
        let mut secrets = Vec::new();
        for e in container.env.iter().flatten() {
            if let Some(from) = &e.value_from {
                if let Some(k) = &from.config_map_key_ref {
                    config_maps.push(k.name.clone());
                }
                if let Some(k) = &from.secret_key_ref {
                    secrets.push(k.name.clone());
                }
            }
        }
        for e in container.env_from.iter().flatten() {
            if let Some(r) = &e.config_map_ref {
                config_maps.push(r.name.clone());
            }
            if let Some(r) = &e.secret_ref {
                secrets.push(r.name.clone());
            }
        }
        for v in self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default()
        {
            if let Some(c) = &v.config_map {
                config_maps.push(c.name.clone());
            }
            if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
                secrets.push(s);
            }
            for p in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
                if let Some(c) = &p.config_map {
                    config_maps.push(c.name.clone());
                }
                if let Some(s) = &p.secret {
                    secrets.push(s.name.clone());
                }
            }
        }
        config_maps.sort();
        config_maps.dedup();
        secrets.sort();
        secrets.dedup();
        let mut out = Prefetched::default();
        if self.volumes.is_none() {
            (out.tokens, out.token_refresh) = self.fetch_tokens().await?;
        }
        // kubelet gives every container the `kubernetes` Service's variables.
        out.services.extend(
            self.deps
                .kubernetes_service
                .state()
                .iter()
                .map(|service| Service::clone(service)),
        );
        let ns = self.pod.metadata.namespace.as_deref().unwrap_or("default");
        let cm_api: Api<ConfigMap> = Api::namespaced(self.deps.client.clone(), ns);
        let secret_api: Api<Secret> = Api::namespaced(self.deps.client.clone(), ns);
        for name in config_maps {
            match cm_api.get_opt(&name).await {
                Ok(Some(cm)) => {
                    let mut data: BTreeMap<String, Vec<u8>> = cm
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes()))
                        .collect();
                    data.extend(
                        cm.binary_data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.0)),
                    );
                    out.config_maps.insert(name, data);
                }
                Ok(None) => {}
                Err(e) => return Err(format!("cannot read configmap {name}: {e}")),
            }
        }
        for name in secrets {
            match secret_api.get_opt(&name).await {
                Ok(Some(s)) => {
                    let mut data: BTreeMap<String, Vec<u8>> = s
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect();
                    data.extend(
                        s.string_data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.into_bytes())),
                    );
                    out.secrets.insert(name, data);
                }
                Ok(None) => {}
                Err(e) => return Err(format!("cannot read secret {name}: {e}")),
            }
        }
        Ok(out)
    }

    /// Requests a token bound to this pod for every (audience, expirationSeconds) its projected
    /// volumes ask for (TokenRequest on its service account, as kubelet); returns them and when
    /// the first needs refreshing.
    async fn fetch_tokens(&self) -> Result<(TokenMap, Option<Duration>), String> {
        let requests = volumes::token_requests(&self.pod);
        let mut tokens = TokenMap::new();
        let mut refresh: Option<Duration> = None;
        if requests.is_empty() {
            return Ok((tokens, refresh));
        }
        let ns = self.pod.metadata.namespace.as_deref().unwrap_or("default");
        let account = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| "default".into());
        let api: Api<ServiceAccount> = Api::namespaced(self.deps.client.clone(), ns);
        for (audience, seconds) in requests {
            let request = TokenRequest {
                spec: TokenRequestSpec {
                    audiences: if audience.is_empty() {
                        Vec::new()
                    } else {
                        vec![audience.clone()]
                    },
                    expiration_seconds: Some(seconds),
                    bound_object_ref: Some(BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: self.pod.metadata.name.clone(),
                        uid: Some(self.uid.clone()),
                    }),
                },
                ..TokenRequest::default()
            };
            let issued = api
                .create_token_request(&account, &PostParams::default(), &request)
                .await
                .map_err(|e| format!("failed to fetch token: {e}"))?;
            let Some(status) = issued.status else {
                return Err("failed to fetch token: the answer has no status".into());
            };
            let ttl = Duration::try_from(status.expiration_timestamp.0.duration_since(now()))
                .unwrap_or_default();
            let after = token_refresh_after(ttl);
            refresh = Some(refresh.map_or(after, |r| r.min(after)));
            tokens.insert((audience, seconds), status.token);
        }
        Ok((tokens, refresh))
    }

    /// Requests fresh tokens once the current ones are due and rewrites them in the pod's
    /// projected volumes; returns when to look again. Before the volumes are first set up
    /// there is nothing to refresh ([`volumes::prepare`] writes the first tokens); after an
    /// agent restart the adopted pod's tokens are refreshed at once.
    async fn refresh_tokens(&mut self) -> Option<Instant> {
        if volumes::token_requests(&self.pod).is_empty() {
            return None;
        }
        let pod_dir = volumes::pod_dir(&self.deps.root, &self.uid);
        if self.volumes.is_none() && !pod_dir.join("volumes").is_dir() {
            return None;
        }
        if let Some(at) = self.token_refresh_at.filter(|at| Instant::now() < *at) {
            return Some(at);
        }
        let fetched = self.fetch_tokens().await.and_then(|(tokens, refresh)| {
            let sources = Prefetched {
                tokens,
                ..Prefetched::default()
            };
            volumes::write_tokens(&self.pod, &pod_dir, &sources)
                .map(|()| refresh)
                .map_err(|e| e.to_string())
        });
        let at = match fetched {
            Ok(refresh) => {
                tracing::debug!(pod = %pod_name(&self.pod), "refreshed the service account tokens");
                Instant::now() + refresh.unwrap_or(RESYNC)
            }
            Err(e) => {
                tracing::warn!(pod = %pod_name(&self.pod), error = %e, "cannot refresh the service account tokens");
                Instant::now() + TOKEN_RETRY
            }
        };
        self.token_refresh_at = Some(at);
        Some(at)
    }

    async fn ensure_sandbox(&mut self) -> anyhow::Result<()> {
        if self.sandbox.is_some() {
            return Ok(());
        }
        let host_network = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let pod_dir = volumes::pod_dir(&self.deps.root, &self.uid);
        std::fs::create_dir_all(&pod_dir)?;
        let sandbox = if host_network {
            Sandbox {
                netns: PathBuf::from("/proc/1/ns/net"),
                ips: self.deps.node_ip.parse().into_iter().collect(),
            }
        } else {
            let net = self.deps.network.setup(&self.net_sandbox()).await?;
            Sandbox {
                netns: net.netns,
                ips: net.ips,
            }
        };
        std::fs::write(pod_dir.join("sandbox.json"), serde_json::to_vec(&sandbox)?)?;
        tracing::info!(pod = %pod_name(&self.pod), ips = ?sandbox.ips, "pod sandbox ready");
        self.sandbox = Some(sandbox);
        Ok(())
    }

    /// The network's key for this pod: its UID names the sandbox (netns `skiff-<uid>`).
    fn net_sandbox(&self) -> NetSandbox {
        NetSandbox {
            id: self.uid.clone(),
            pod_namespace: self.pod.metadata.namespace.clone().unwrap_or_default(),
            pod_name: self.pod.metadata.name.clone().unwrap_or_default(),
            pod_uid: self.uid.clone(),
        }
    }

    async fn teardown_network(&mut self) {
        let host_network = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        if !host_network {
            if let Err(e) = self.deps.network.teardown(&self.net_sandbox()).await {
                tracing::warn!(pod = %pod_name(&self.pod), error = %format!("{e:#}"), "cannot tear down the pod network");
                return;
            }
        }
        let _ =
            std::fs::remove_file(volumes::pod_dir(&self.deps.root, &self.uid).join("sandbox.json"));
        self.sandbox = None;
    }

    /// Runs due probes; returns when the next one is due.
    async fn run_probes(&mut self) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        let pod_ip = self.sandbox.as_ref().and_then(|s| s.ips.first().copied());
        for i in 0..self.slots.len() {
            if self.slots[i].init || !self.slots[i].running() {
                continue;
            }
            let Some(container) = self.container_spec(i) else {
                continue;
            };
            let started_instant = self.slots[i]
                .current
                .as_ref()
                .and_then(|c| c.started_instant)
                .unwrap_or_else(Instant::now);
            let kinds: [(ProbeKind, Option<&Probe>); 3] = [
                (ProbeKind::Startup, container.startup_probe.as_ref()),
                (ProbeKind::Liveness, container.liveness_probe.as_ref()),
                (ProbeKind::Readiness, container.readiness_probe.as_ref()),
            ];
            if container.startup_probe.is_none() {
                self.slots[i].started = true;
            }
            if container.readiness_probe.is_none() {
                self.slots[i].ready = self.slots[i].started;
            }
            for (kind, probe) in kinds {
                let Some(probe) = probe else { continue };
                // Liveness and readiness wait for the startup probe.
                if kind != ProbeKind::Startup && !self.slots[i].started {
                    continue;
                }
                if kind == ProbeKind::Startup && self.slots[i].started {
                    continue;
                }
                let state = self.slots[i]
                    .probes
                    .entry(kind)
                    .or_insert_with(|| probe::State::new(probe, started_instant));
                if Instant::now() < state.next_at {
                    wake = Some(wake.map_or(state.next_at, |w| w.min(state.next_at)));
                    continue;
                }
                let current = self.slots[i].current.clone();
                let result = match (&current, pod_ip) {
                    (Some(current), _) if probe.exec.is_some() => {
                        let command = probe
                            .exec
                            .as_ref()
                            .and_then(|e| e.command.clone())
                            .unwrap_or_default();
                        let timeout = probe::timeout(probe);
                        match self
                            .deps
                            .runtime
                            .exec_and_wait(
                                &current.id,
                                &self.process_of(current),
                                &command,
                                timeout,
                            )
                            .await
                        {
                            Ok(Some(0)) => ProbeResult::Success,
                            Ok(Some(code)) => {
                                ProbeResult::Failure(format!("command exited with {code}"))
                            }
                            Ok(None) => {
                                ProbeResult::Failure(format!("command timed out after {timeout:?}"))
                            }
                            Err(e) => ProbeResult::Failure(format!("{e:#}")),
                        }
                    }
                    (_, Some(ip)) => probe::network_probe(probe, ip, &container).await,
                    _ => ProbeResult::Failure("the pod has no IP".into()),
                };
                let state = self.slots[i].probes.get_mut(&kind).expect("inserted above");
                let outcome = state.record(probe, &result);
                wake = Some(wake.map_or(state.next_at, |w| w.min(state.next_at)));
                let slot = &mut self.slots[i];
                match (kind, outcome) {
                    (ProbeKind::Readiness, Some(ok)) => slot.ready = ok,
                    (ProbeKind::Startup, Some(true)) => slot.started = true,
                    (ProbeKind::Liveness, Some(false)) | (ProbeKind::Startup, Some(false)) => {
                        let what = if kind == ProbeKind::Liveness {
                            "Liveness"
                        } else {
                            "Startup"
                        };
                        tracing::info!(pod = %pod_name(&self.pod), container = %slot.name, ?result, "{what} probe failed; restarting the container");
                        let grace = self.grace_period();
                        if let Some(current) = self.slots[i].current.clone() {
                            self.stop_container(i, &current.id, grace).await;
                        }
                        wake = Some(Instant::now());
                        break;
                    }
                    _ => {}
                }
            }
        }
        wake
    }

    fn process_of(&self, current: &Current) -> serde_json::Value {
        if current.process.is_null() {
            serde_json::json!({
                "args": [],
                "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "cwd": "/",
                "user": {"uid": 0, "gid": 0},
            })
        } else {
            current.process.clone()
        }
    }

    fn grace_period(&self) -> Duration {
        let seconds = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or(self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(DEFAULT_GRACE.as_secs() as i64);
        Duration::from_secs(seconds.max(0) as u64)
    }

    /// Runs a lifecycle handler against container `i`, bounded by `limit`.
    async fn run_hook(
        &self,
        i: usize,
        handler: &LifecycleHandler,
        limit: Duration,
    ) -> Result<(), String> {
        let Some(current) = self.slots[i].current.clone() else {
            return Ok(());
        };
        if let Some(exec) = &handler.exec {
            let command = exec.command.clone().unwrap_or_default();
            return match self
                .deps
                .runtime
                .exec_and_wait(&current.id, &self.process_of(&current), &command, limit)
                .await
            {
                Ok(Some(0)) => Ok(()),
                Ok(Some(code)) => Err(format!("command {command:?} exited with {code}")),
                Ok(None) => Err(format!("command {command:?} did not finish in {limit:?}")),
                Err(e) => Err(format!("{e:#}")),
            };
        }
        if let Some(sleep) = &handler.sleep {
            tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64).min(limit)).await;
            return Ok(());
        }
        let container = self.container_spec(i).unwrap_or_default();
        let ip = self.sandbox.as_ref().and_then(|s| s.ips.first().copied());
        if let (Some(http), Some(ip)) = (&handler.http_get, ip) {
            let probe = Probe {
                http_get: Some(http.clone()),
                timeout_seconds: Some(limit.as_secs().max(1) as i32),
                ..Probe::default()
            };
            return match probe::network_probe(&probe, ip, &container).await {
                ProbeResult::Success => Ok(()),
                ProbeResult::Failure(m) => Err(m),
            };
        }
        Ok(())
    }

    /// preStop, SIGTERM, then SIGKILL after `grace`; waits for the exit.
    async fn stop_container(&mut self, i: usize, id: &str, grace: Duration) {
        let deadline = Instant::now() + grace;
        if !grace.is_zero() {
            if let Some(handler) = self
                .container_spec(i)
                .and_then(|c| c.lifecycle)
                .and_then(|l| l.pre_stop)
            {
                if let Err(message) = self.run_hook(i, &handler, grace).await {
                    tracing::info!(pod = %pod_name(&self.pod), container = %self.slots[i].name, %message, "preStop hook failed");
                }
            }
            let _ = self
                .deps
                .runtime
                .signal(id, libc::SIGTERM as u32, false)
                .await;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let exited = tokio::time::timeout(left, self.deps.runtime.wait(id)).await;
        let exit = match exited {
            Ok(Ok(exit)) => exit,
            _ => {
                let _ = self
                    .deps
                    .runtime
                    .signal(id, libc::SIGKILL as u32, true)
                    .await;
                match tokio::time::timeout(Duration::from_secs(10), self.deps.runtime.wait(id))
                    .await
                {
                    Ok(Ok(exit)) => exit,
                    _ => crate::runtime::containers::Exit {
                        code: 137,
                        at_nanos: now().as_nanosecond() as i64,
                    },
                }
            }
        };
        self.handle(Msg::Exited {
            id: id.to_string(),
            code: exit.code,
            at_nanos: exit.at_nanos,
        });
    }

    /// Stops every running container, all at once, each within `grace`.
    async fn kill_all(&mut self, grace: Duration) {
        let running: Vec<(usize, String)> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.running())
            .filter_map(|(i, s)| s.current.as_ref().map(|c| (i, c.id.clone())))
            .collect();
        // Each stop waits on its own; run them one after another but with a shared deadline
        // by giving each the time left.
        let deadline = Instant::now() + grace;
        for (i, id) in running {
            let left = deadline.saturating_duration_since(Instant::now());
            self.stop_container(i, &id, left).await;
        }
    }

    /// Graceful termination, then the pod's removal from the node and from the API.
    async fn terminate(&mut self) {
        let grace = if self.gone {
            Duration::ZERO
        } else {
            self.grace_period()
        };
        self.kill_all(grace).await;
        self.write_status().await;
        self.teardown_network().await;
        for slot in &self.slots {
            if let Some(c) = &slot.current {
                if let Err(e) = self.deps.runtime.remove_container(&c.id).await {
                    tracing::warn!(container = %c.id, error = %format!("{e:#}"), "cannot remove container");
                }
            }
        }
        // The pod's logs go with it, as kubelet's do.
        let logs = crate::logs::pod_log_dir(
            &self.deps.pod_logs_dir,
            self.pod.metadata.namespace.as_deref().unwrap_or(""),
            self.pod.metadata.name.as_deref().unwrap_or(""),
            &self.uid,
        );
        if let Err(e) = std::fs::remove_dir_all(&logs) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %logs.display(), error = %e, "cannot remove the pod's logs");
            }
        }
        if let Err(e) = volumes::remove_pod_dir(&volumes::pod_dir(&self.deps.root, &self.uid)) {
            tracing::warn!(pod = %pod_name(&self.pod), error = %e, "cannot remove the pod directory");
        }
        if !self.gone {
            // The final delete: grace 0, only this incarnation of the pod.
            let api: Api<Pod> = Api::namespaced(
                self.deps.client.clone(),
                self.pod.metadata.namespace.as_deref().unwrap_or("default"),
            );
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(self.uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            let name = self.pod.metadata.name.clone().unwrap_or_default();
            for attempt in 0..5u32 {
                match api.delete(&name, &params).await {
                    Ok(_) => break,
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => break,
                    Err(e) => {
                        tracing::warn!(pod = %pod_name(&self.pod), error = %e, attempt, "cannot delete the pod");
                        tokio::time::sleep(RETRY).await;
                    }
                }
            }
        }
        tracing::info!(pod = %pod_name(&self.pod), "pod torn down");
        self.finished = true;
    }

    /// Computes the status and writes it when it differs from what the API has.
    async fn write_status(&mut self) {
        if self.gone {
            return;
        }
        let spec = self.pod.spec.clone().unwrap_or_default();
        let image_of = |name: &str| {
            spec.init_containers
                .iter()
                .flatten()
                .chain(spec.containers.iter())
                .find(|c| c.name == name)
                .and_then(|c| c.image.clone())
                .unwrap_or_default()
        };
        let init: Vec<Observed> = self
            .slots
            .iter()
            .filter(|s| s.init)
            .map(|s| s.observed(&image_of(&s.name)))
            .collect();
        let app: Vec<Observed> = self
            .slots
            .iter()
            .filter(|s| !s.init)
            .map(|s| s.observed(&image_of(&s.name)))
            .collect();
        let ips: Vec<String> = self
            .sandbox
            .as_ref()
            .map(|s| s.ips.iter().map(ToString::to_string).collect())
            .or_else(|| {
                self.pod
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ips.as_ref())
                    .map(|ips| ips.iter().map(|i| i.ip.clone()).collect())
            })
            .unwrap_or_default();
        let failed = self.failed.as_ref().map(|(r, m)| (r.as_str(), m.as_str()));
        let status = status::pod_status(&status::Inputs {
            pod: &self.pod,
            init: &init,
            app: &app,
            pod_ips: &ips,
            host_ip: Some(&self.deps.node_ip),
            start_time: self.start_time,
            failed,
            now: now(),
        });
        if self.pod.status.as_ref() == Some(&status) || self.written.as_ref() == Some(&status) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(
            self.deps.client.clone(),
            self.pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        let patch = serde_json::json!({ "status": status });
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(pod) => {
                self.written = Some(status);
                // Keep our view of the pod current (resourceVersion, status) without waiting
                // for the watch.
                if pod.metadata.uid.as_deref() == Some(self.uid.as_str()) {
                    self.pod = Arc::new(pod);
                }
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                tracing::warn!(pod = %pod_name(&self.pod), error = %e, "cannot write pod status");
            }
        }
    }
}

/// Why a container could not be started: a kubelet waiting reason and its message.
#[derive(Debug)]
struct StartError {
    reason: String,
    message: String,
}

/// Service-account tokens by (audience, expirationSeconds).
type TokenMap = BTreeMap<(String, i64), String>;

/// ConfigMaps, Secrets, tokens and Services read from the API for one container start.
#[derive(Default)]
struct Prefetched {
    config_maps: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    tokens: TokenMap,
    /// How soon the first of `tokens` should be requested again.
    token_refresh: Option<Duration>,
    services: Vec<Service>,
}

impl Sources for Prefetched {
    fn config_map(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        self.config_maps.get(name).cloned()
    }
    fn secret(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        self.secrets.get(name).cloned()
    }
    fn service_account_token(&self, audience: &str, expiration_seconds: i64) -> Option<String> {
        self.tokens
            .get(&(audience.to_string(), expiration_seconds))
            .cloned()
    }
    fn services(&self) -> Vec<Service> {
        self.services.clone()
    }
}

/// A numeric image user (`uid`, `uid:gid`); names need the image's /etc/passwd and fall back
/// to root.
fn parse_user(user: &str) -> (u32, u32) {
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let uid = u.parse().unwrap_or(0);
    let gid = g.parse().unwrap_or(uid);
    (uid, gid)
}

/// Whether the kernel OOM-killed a process in the container's memory cgroup (v1 or v2).
pub fn oom_killed(cgroups_path: &str) -> bool {
    let rel = cgroups_path.trim_start_matches('/');
    let count = |file: PathBuf| {
        std::fs::read_to_string(file).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
    };
    let v1 = count(
        PathBuf::from("/sys/fs/cgroup/memory")
            .join(rel)
            .join("memory.oom_control"),
    );
    let v2 = count(
        PathBuf::from("/sys/fs/cgroup/unified")
            .join(rel)
            .join("memory.events"),
    )
    .or_else(|| {
        count(
            PathBuf::from("/sys/fs/cgroup")
                .join(rel)
                .join("memory.events"),
        )
    });
    v1.or(v2).is_some_and(|n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_refreshed_at_80_percent_or_after_a_day() {
        let check = |ttl_secs: u64, expected_secs: u64| {
            assert_eq!(
                token_refresh_after(Duration::from_secs(ttl_secs)),
                Duration::from_secs(expected_secs),
                "ttl {ttl_secs}"
            );
        };
        assert_eq!(
            token_refresh_after(Duration::from_secs(3607)),
            Duration::from_millis(2_885_600)
        );
        check(3600, 2880);
        check(600, 480);
        check(0, 0);
        check(365 * 24 * 3600, 24 * 3600);
    }
}
