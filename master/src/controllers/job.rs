//! The Job controller (kube-controller-manager's `job`): runs a Job's pods to completion.
//!
//! - Pods come from the template with the Job's labels, `generateName: <job>-`, a controller
//!   owner reference and the `batch.kubernetes.io/job-tracking` finalizer. Active pods are kept
//!   at `min(parallelism, remaining completions)`; in work-queue mode (no `completions`) the Job
//!   is done once a pod succeeded and none is left running. `Indexed` Jobs give each pod a
//!   `batch.kubernetes.io/job-completion-index` annotation and label (plus hostname and the
//!   `JOB_COMPLETION_INDEX` variable) and track `status.completedIndexes`.
//! - Exactly-once accounting, as upstream: a finished pod's UID (or, for Indexed Jobs, its
//!   index) is first written to `status.uncountedTerminatedPods` (`completedIndexes`), then its
//!   finalizer is removed, then the UID moves into `succeeded`/`failed`. Status writes are
//!   conditional on `resourceVersion`, and finalizer removals this process made are remembered
//!   until the cache shows them, so a stale cache cannot count a pod twice.
//! - Failures: `failed > backoffLimit` → `FailureTarget` then `Failed` (`BackoffLimitExceeded`);
//!   `activeDeadlineSeconds` past → `DeadlineExceeded`; either deletes the active pods. New pods
//!   after failures wait 10 s doubling per consecutive failure, at most 6 min.
//! - Success → `SuccessCriteriaMet` then `Complete` with `completionTime`. The terminal
//!   condition waits until no pod is active, terminating or uncounted.
//! - `suspend` deletes the active pods and sets `Suspended`; resuming sets it `False`.
//! - Expectations (as the ReplicaSet controller's) keep a reconcile from creating or deleting
//!   pods again before the cache has seen the previous round.
//!
//! Not done: `podFailurePolicy`, `successPolicy`, `backoffLimitPerIndex`, adopting orphan pods
//! that match the selector, and `managedBy` other than the default (such Jobs are left alone).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use tokio::task::JoinSet;

use super::client::{delete_uid, PatchType};
use super::runtime::{self, key_of, split_key, Change, Key};
use super::{Action, Context, Error, EventType, Reconciler, WorkQueue};

/// The finalizer that keeps a pod until its result is counted in the Job's status.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// An Indexed Job's pod index, as annotation and label.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
const LEGACY_JOB_NAME_LABEL: &str = "job-name";
const LEGACY_CONTROLLER_UID_LABEL: &str = "controller-uid";
/// `spec.managedBy` of Jobs this controller runs (also when unset).
const MANAGED_BY: &str = "kubernetes.io/job-controller";
/// The delay before a new pod after the first failure; it doubles per further failure.
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(360);
/// Expectations older than this are given up on (a lost watch event must not stall a Job).
const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(300);
/// Upstream's cap on pod creations or deletions in one sync.
const MAX_PODS_PER_SYNC: usize = 500;

/// The owner reference marked `controller: true`, if it is of `kind`.
pub fn controller_of<'a>(meta: &'a ObjectMeta, kind: &str) -> Option<&'a OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && o.kind == kind)
}

/// The Job's `Complete` or `Failed` condition, if it is `True`.
pub fn finished_condition(job: &Job) -> Option<&JobCondition> {
    conditions(job.status.as_ref())
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

fn conditions(status: Option<&JobStatus>) -> &[JobCondition] {
    status
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
}

fn condition<'a>(status: &'a JobStatus, type_: &str) -> Option<&'a JobCondition> {
    conditions(Some(status))
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// Registers the Job loop: Job changes, and pod changes mapped to their controller Job.
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) {
    let queue = WorkQueue::new();
    let controller = Arc::new(JobController::new(ctx.clone()));
    let q = queue.clone();
    ctx.informers
        .jobs
        .on_change(move |change: &Change<'_, Job>| q.add(key_of(&change.object().metadata)));
    let q = queue.clone();
    let observer = controller.clone();
    ctx.informers
        .pods
        .on_change(move |change: &Change<'_, Pod>| {
            if let Some(key) = observer.observe_pod(change) {
                q.add(key);
            }
        });
    tasks.spawn(runtime::run(controller, queue, ctx.config.concurrent_syncs));
}

/// What a Job's last round of writes is still waiting to see in the pod cache.
#[derive(Debug)]
struct Expected {
    creations: i64,
    /// UIDs of pods deleted whose deletion the cache has not shown yet.
    deletions: HashSet<String>,
    since: std::time::Instant,
}

/// Consecutive failures since the last success, and when the last one happened (ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackoffRecord {
    pub failures: u32,
    pub last_failure_ms: i64,
}

impl BackoffRecord {
    /// How long new pods must still wait at `now_ms`.
    pub fn remaining(&self, now_ms: i64) -> Duration {
        if self.failures == 0 {
            return Duration::ZERO;
        }
        let delay = backoff_delay(self.failures);
        let elapsed = u64::try_from(now_ms - self.last_failure_ms).unwrap_or(0);
        delay.saturating_sub(Duration::from_millis(elapsed))
    }
}

/// 10 s after the first failure, doubling, at most 6 min.
pub fn backoff_delay(failures: u32) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u32::MAX);
    BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_MAX)
}

#[derive(Default)]
struct State {
    expected: HashMap<Key, Expected>,
    /// Pod UIDs per Job whose finalizer this process removed and the cache still shows.
    released: HashMap<Key, HashSet<String>>,
    backoff: HashMap<Key, BackoffRecord>,
    /// The UID of the Job last seen under each key, to find its pods once it is gone.
    uids: HashMap<Key, String>,
}

pub struct JobController {
    ctx: Context,
    state: Mutex<State>,
}

#[async_trait::async_trait]
impl Reconciler for JobController {
    fn name(&self) -> &'static str {
        "job"
    }

    async fn reconcile(&self, key: &str) -> Result<Action, Error> {
        self.sync(key, Timestamp::now()).await
    }
}

fn has_finalizer(pod: &Pod) -> bool {
    pod.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == TRACKING_FINALIZER)
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

/// Whether the pod counts as failed: `Failed`, or deleted before succeeding (unless the Job
/// replaces only `Failed` pods), so that orphaned pods count too.
pub fn is_pod_failed(pod: &Pod, only_failed_replaced: bool) -> bool {
    if phase(pod) == "Failed" {
        return true;
    }
    !only_failed_replaced && pod.metadata.deletion_timestamp.is_some() && phase(pod) != "Succeeded"
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn uid(meta: &ObjectMeta) -> &str {
    meta.uid.as_deref().unwrap_or_default()
}

/// The pod's completion index, if it has a well-formed one.
pub fn completion_index(pod: &Pod) -> Option<i32> {
    let from = |map: &Option<std::collections::BTreeMap<String, String>>| {
        map.as_ref()
            .and_then(|m| m.get(COMPLETION_INDEX))
            .and_then(|v| v.parse::<i32>().ok())
            .filter(|ix| *ix >= 0)
    };
    from(&pod.metadata.annotations).or_else(|| from(&pod.metadata.labels))
}

/// When the pod finished, in ms: its containers' last `finishedAt`, else its deletion, else now.
fn finish_time_ms(pod: &Pod, now_ms: i64) -> i64 {
    let status = pod.status.as_ref();
    let finished = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0.as_millisecond())
        .max();
    finished
        .or_else(|| {
            pod.metadata
                .deletion_timestamp
                .as_ref()
                .map(|t| t.0.as_millisecond())
        })
        .unwrap_or(now_ms)
}

/// Parses `completedIndexes` (`1,3-5,7`); malformed parts are skipped.
pub fn parse_indexes(text: Option<&str>) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in text
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.is_empty())
    {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
            out.extend(a..=b);
        }
    }
    out
}

/// Formats indexes as `completedIndexes` does: three or more consecutive ones as `a-b`.
pub fn format_indexes(indexes: &BTreeSet<i32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut iter = indexes.iter().copied().peekable();
    while let Some(first) = iter.next() {
        let mut last = first;
        while iter.peek() == Some(&(last + 1)) {
            last += 1;
            iter.next();
        }
        match last - first {
            0 => parts.push(first.to_string()),
            1 => parts.push(format!("{first},{last}")),
            _ => parts.push(format!("{first}-{last}")),
        }
    }
    parts.join(",")
}

/// The accounting of one sync: what the status will say before the finalizers go.
#[derive(Debug, Default)]
struct Tracking {
    succeeded: Vec<String>,
    failed: Vec<String>,
    completed: BTreeSet<i32>,
    /// Pods whose finalizer may go once the status holding their result is written.
    release: Vec<Arc<Pod>>,
    new_failure_times: Vec<i64>,
    new_successes: usize,
}

/// The Job's settings that the accounting needs.
struct Shape {
    indexed: bool,
    completions: Option<i32>,
    only_failed_replaced: bool,
}

impl Shape {
    fn of(job: &Job) -> Shape {
        let spec = job.spec.as_ref();
        Shape {
            indexed: spec.and_then(|s| s.completion_mode.as_deref()) == Some("Indexed"),
            completions: spec.and_then(|s| s.completions),
            only_failed_replaced: spec.and_then(|s| s.pod_replacement_policy.as_deref())
                == Some("Failed")
                || spec.and_then(|s| s.pod_failure_policy.as_ref()).is_some(),
        }
    }

    fn valid_index(&self, ix: Option<i32>) -> Option<i32> {
        ix.filter(|ix| self.completions.is_some_and(|c| *ix < c))
    }
}

impl Tracking {
    fn from_status(status: &JobStatus) -> Tracking {
        let uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
        Tracking {
            succeeded: uncounted.succeeded.unwrap_or_default(),
            failed: uncounted.failed.unwrap_or_default(),
            completed: parse_indexes(status.completed_indexes.as_deref()),
            ..Default::default()
        }
    }

    /// Records the results of finished pods that still hold the finalizer. When `finishing`,
    /// every pod that did not succeed counts as failed (the Job is ending and kills them).
    fn account(
        &mut self,
        pods: &[Arc<Pod>],
        released: &HashSet<String>,
        shape: &Shape,
        finishing: bool,
        now_ms: i64,
    ) {
        for pod in pods {
            let pod_uid = uid(&pod.metadata).to_string();
            if !has_finalizer(pod)
                || released.contains(&pod_uid)
                || self.release.iter().any(|p| uid(&p.metadata) == pod_uid)
            {
                continue;
            }
            let succeeded = phase(pod) == "Succeeded";
            let known_failed = self.failed.contains(&pod_uid);
            if succeeded && !known_failed {
                if shape.indexed {
                    if let Some(ix) = shape.valid_index(completion_index(pod)) {
                        if self.completed.insert(ix) {
                            self.new_successes += 1;
                        }
                    }
                } else if !self.succeeded.contains(&pod_uid) {
                    self.succeeded.push(pod_uid);
                    self.new_successes += 1;
                }
                self.release.push(pod.clone());
            } else if known_failed
                || is_pod_failed(pod, shape.only_failed_replaced)
                || (finishing && !succeeded)
            {
                let counted = !shape.indexed || shape.valid_index(completion_index(pod)).is_some();
                if !known_failed && counted {
                    self.failed.push(pod_uid);
                    self.new_failure_times.push(finish_time_ms(pod, now_ms));
                }
                self.release.push(pod.clone());
            }
        }
    }

    /// Moves the UIDs whose pods no longer hold the finalizer (or are gone) into the counters.
    fn settle(&mut self, status: &mut JobStatus, pods: &[Arc<Pod>], released: &HashSet<String>) {
        let holds = |id: &String| {
            !released.contains(id)
                && pods
                    .iter()
                    .any(|p| uid(&p.metadata) == id && has_finalizer(p))
        };
        let before = (self.succeeded.len(), self.failed.len());
        self.succeeded.retain(holds);
        self.failed.retain(holds);
        let add = |count: &mut Option<i32>, n: usize| {
            let n = i32::try_from(n).unwrap_or(i32::MAX);
            *count = Some(count.unwrap_or(0).saturating_add(n));
        };
        add(&mut status.succeeded, before.0 - self.succeeded.len());
        add(&mut status.failed, before.1 - self.failed.len());
    }

    fn write_into(&self, status: &mut JobStatus, shape: &Shape) {
        let uncounted = UncountedTerminatedPods {
            succeeded: (!self.succeeded.is_empty()).then(|| self.succeeded.clone()),
            failed: (!self.failed.is_empty()).then(|| self.failed.clone()),
        };
        status.uncounted_terminated_pods = Some(uncounted);
        if shape.indexed {
            status.completed_indexes = Some(format_indexes(&self.completed));
            status.succeeded = Some(i32::try_from(self.completed.len()).unwrap_or(i32::MAX));
        }
    }

    fn is_empty(&self) -> bool {
        self.succeeded.is_empty() && self.failed.is_empty()
    }
}

fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Sets a condition, keeping its transition time when its status does not change.
fn set_condition(status: &mut JobStatus, new: JobCondition) {
    let list = status.conditions.get_or_insert_with(Vec::new);
    match list.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) if old.status == new.status => {
            old.reason = new.reason;
            old.message = new.message;
        }
        Some(old) => *old = new,
        None => list.push(new),
    }
}

/// The pod to create for `job` (with `index` for Indexed Jobs).
pub fn pod_from_template(job: &Job, index: Option<i32>) -> Pod {
    let spec = job.spec.clone().unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    let job_uid = uid(&job.metadata).to_string();
    let mut meta = spec.template.metadata.unwrap_or_default();
    let labels = meta.labels.get_or_insert_with(Default::default);
    for (k, v) in [
        (JOB_NAME_LABEL, &name),
        (LEGACY_JOB_NAME_LABEL, &name),
        (CONTROLLER_UID_LABEL, &job_uid),
        (LEGACY_CONTROLLER_UID_LABEL, &job_uid),
    ] {
        labels.entry(k.into()).or_insert_with(|| v.clone());
    }
    let mut pod_spec = spec.template.spec.unwrap_or_default();
    meta.generate_name = Some(format!("{name}-"));
    if let Some(ix) = index {
        labels.insert(COMPLETION_INDEX.into(), ix.to_string());
        meta.annotations
            .get_or_insert_with(Default::default)
            .insert(COMPLETION_INDEX.into(), ix.to_string());
        meta.generate_name = Some(format!("{name}-{ix}-"));
        if pod_spec.hostname.is_none() {
            pod_spec.hostname = Some(format!("{name}-{ix}"));
        }
        let env = EnvVar {
            name: "JOB_COMPLETION_INDEX".into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: None,
                    field_path: format!("metadata.labels['{COMPLETION_INDEX}']"),
                }),
                ..Default::default()
            }),
        };
        let init = pod_spec.init_containers.iter_mut().flatten();
        for container in pod_spec.containers.iter_mut().chain(init) {
            let vars = container.env.get_or_insert_with(Vec::new);
            if !vars.iter().any(|v| v.name == env.name) {
                vars.push(env.clone());
            }
        }
    }
    meta.name = None;
    meta.namespace = job.metadata.namespace.clone();
    meta.finalizers
        .get_or_insert_with(Vec::new)
        .push(TRACKING_FINALIZER.into());
    meta.owner_references = Some(vec![OwnerReference {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        name,
        uid: job_uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    Pod {
        metadata: meta,
        spec: Some(pod_spec),
        status: None,
    }
}

/// How many pods should be active: `min(parallelism, remaining completions)`; in work-queue
/// mode, once a pod succeeded, no new ones (the running ones finish).
pub fn want_active(parallelism: i32, completions: Option<i32>, succeeded: i32, active: i32) -> i32 {
    let parallelism = parallelism.max(0);
    match completions {
        None if succeeded > 0 => active.min(parallelism),
        None => parallelism,
        Some(c) => parallelism.min((c - succeeded).max(0)),
    }
}

/// Which pods to delete first: unscheduled, pending, not ready, newest.
fn deletion_order(a: &Arc<Pod>, b: &Arc<Pod>) -> std::cmp::Ordering {
    let rank = |p: &Pod| {
        let scheduled = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
        let phase = match phase(p) {
            "Pending" => 0,
            "Unknown" => 1,
            _ => 2,
        };
        (scheduled, phase, is_ready(p))
    };
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    rank(a)
        .cmp(&rank(b))
        .then_with(|| created(b).cmp(&created(a)))
}

/// Sum of container restarts of running or pending pods (for `restartPolicy: OnFailure`).
fn past_backoff_limit_on_failure(job: &Job, pods: &[Arc<Pod>]) -> bool {
    let spec = job.spec.as_ref();
    let policy = spec
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.restart_policy.as_deref());
    if policy != Some("OnFailure") {
        return false;
    }
    let limit = spec.and_then(|s| s.backoff_limit).unwrap_or(6);
    let restarts: i32 = pods
        .iter()
        .filter(|p| matches!(phase(p), "Running" | "Pending"))
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        })
        .map(|c| c.restart_count)
        .sum();
    if limit == 0 {
        restarts > 0
    } else {
        restarts >= limit
    }
}

impl JobController {
    pub fn new(ctx: Context) -> Self {
        JobController {
            ctx,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Updates expectations from a pod change and returns the key of its Job, if any.
    pub fn observe_pod(&self, change: &Change<'_, Pod>) -> Option<Key> {
        let pod = change.object();
        let owner = controller_of(&pod.metadata, "Job")?;
        let key = runtime::key(pod.metadata.namespace.as_deref(), &owner.name);
        let pod_uid = uid(&pod.metadata).to_string();
        let mut state = self.lock();
        let (created, deleted) = match change {
            Change::Applied { old: None, new } => (true, new.metadata.deletion_timestamp.is_some()),
            Change::Applied {
                old: Some(old),
                new,
            } => (
                false,
                old.metadata.deletion_timestamp.is_none()
                    && new.metadata.deletion_timestamp.is_some(),
            ),
            Change::Deleted(_) => (false, true),
        };
        if let Some(expected) = state.expected.get_mut(&key) {
            if created {
                expected.creations -= 1;
            }
            if deleted {
                expected.deletions.remove(&pod_uid);
            }
        }
        let gone = matches!(change, Change::Deleted(_)) || !has_finalizer(pod);
        if gone {
            if let Some(released) = state.released.get_mut(&key) {
                released.remove(&pod_uid);
            }
        }
        Some(key)
    }

    fn satisfied(&self, key: &str) -> bool {
        match self.lock().expected.get(key) {
            None => true,
            Some(e) => {
                (e.creations <= 0 && e.deletions.is_empty())
                    || e.since.elapsed() > EXPECTATIONS_TIMEOUT
            }
        }
    }

    fn expect(&self, key: &str, creations: i64, deletions: Vec<String>) {
        let mut state = self.lock();
        state.expected.insert(
            key.to_string(),
            Expected {
                creations,
                deletions: deletions.into_iter().collect(),
                since: std::time::Instant::now(),
            },
        );
    }

    fn lower_creations(&self, key: &str, n: i64) {
        if let Some(e) = self.lock().expected.get_mut(key) {
            e.creations -= n;
        }
    }

    fn deletion_failed(&self, key: &str, pod_uid: &str) {
        if let Some(e) = self.lock().expected.get_mut(key) {
            e.deletions.remove(pod_uid);
        }
    }

    fn released(&self, key: &str) -> HashSet<String> {
        self.lock().released.get(key).cloned().unwrap_or_default()
    }

    fn forget(&self, key: &str) {
        let mut state = self.lock();
        state.expected.remove(key);
        state.released.remove(key);
        state.backoff.remove(key);
        state.uids.remove(key);
    }

    /// The backoff record of `key` (tests read it).
    pub fn backoff_record(&self, key: &str) -> BackoffRecord {
        self.lock().backoff.get(key).copied().unwrap_or_default()
    }

    /// The backoff record once this sync's new results count: a success resets it, failures
    /// add up.
    fn backoff_after(&self, key: &str, tracking: &Tracking) -> BackoffRecord {
        let mut record = self.backoff_record(key);
        if tracking.new_successes > 0 {
            record = BackoffRecord::default();
        }
        if let Some(last) = tracking.new_failure_times.iter().max() {
            let n = u32::try_from(tracking.new_failure_times.len()).unwrap_or(u32::MAX);
            record.failures = record.failures.saturating_add(n);
            record.last_failure_ms = record.last_failure_ms.max(*last);
        }
        record
    }

    fn set_backoff(&self, key: &str, record: BackoffRecord) {
        self.lock().backoff.insert(key.to_string(), record);
    }

    /// One reconcile of the Job under `key` at the time `now`.
    pub async fn sync(&self, key: &str, now: Timestamp) -> Result<Action, Error> {
        let (namespace, name) = split_key(key);
        let Some(job) = self.ctx.informers.jobs.get(key) else {
            // Gone: its pods keep no finalizer. The last UID seen finds them without a scan.
            let last_uid = self.lock().uids.get(key).cloned();
            let held = self
                .release_orphans(namespace.unwrap_or_default(), name, last_uid.as_deref())
                .await?;
            if !held {
                self.forget(key);
            }
            return Ok(Action::Done);
        };
        let managed_by = job.spec.as_ref().and_then(|s| s.managed_by.as_deref());
        if managed_by.is_some_and(|m| m != MANAGED_BY) {
            return Ok(Action::Done);
        }
        let job_uid = uid(&job.metadata).to_string();
        if finished_condition(&job).is_some() || job.metadata.deletion_timestamp.is_some() {
            self.release_orphans(namespace.unwrap_or_default(), name, Some(&job_uid))
                .await?;
            let mut state = self.lock();
            state.expected.remove(key);
            state.backoff.remove(key);
            return Ok(Action::Done);
        }
        self.lock().uids.insert(key.to_string(), job_uid.clone());
        let pods: Vec<Arc<Pod>> = self
            .ctx
            .informers
            .pods
            .owned_by(&job_uid)
            .into_iter()
            .filter(|p| controller_of(&p.metadata, "Job").is_some_and(|o| o.uid == job_uid))
            .collect();
        Sync {
            ctrl: self,
            key,
            job: &job,
            pods: &pods,
            now,
        }
        .run()
        .await
    }

    /// Removes the tracking finalizer from the pods of a Job that is gone or finished: those of
    /// `owner_uid` if known, else every pod whose controller is a Job of this name. Answers
    /// whether any such pod was found holding it.
    async fn release_orphans(
        &self,
        namespace: &str,
        name: &str,
        owner_uid: Option<&str>,
    ) -> Result<bool, Error> {
        let pods = match owner_uid {
            Some(owner) => self.ctx.informers.pods.owned_by(owner),
            None => self.ctx.informers.pods.list_in(namespace),
        };
        let mut held = false;
        for pod in pods {
            let ours = controller_of(&pod.metadata, "Job")
                .is_some_and(|o| o.name == name && owner_uid.is_none_or(|u| u == o.uid));
            if ours && has_finalizer(&pod) {
                held = true;
                self.remove_finalizer(&pod).await?;
            }
        }
        Ok(held)
    }

    async fn remove_finalizer(&self, pod: &Pod) -> Result<(), Error> {
        let patch =
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": [TRACKING_FINALIZER]}});
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        match self
            .ctx
            .api
            .patch::<Pod>(
                pod.metadata.namespace.as_deref(),
                name,
                PatchType::Strategic,
                &patch,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// One sync of a live, unfinished Job.
struct Sync<'a> {
    ctrl: &'a JobController,
    key: &'a str,
    job: &'a Job,
    pods: &'a [Arc<Pod>],
    now: Timestamp,
}

/// What managing the pods did.
#[derive(Default)]
struct Managed {
    created: usize,
    deleted: Vec<String>,
    requeue: Option<Duration>,
    error: Option<Error>,
}

impl Sync<'_> {
    async fn run(self) -> Result<Action, Error> {
        let ctx = &self.ctrl.ctx;
        let spec = self.job.spec.clone().unwrap_or_default();
        let shape = Shape::of(self.job);
        let now_ms = self.now.as_millisecond();
        let original = self.job.status.clone().unwrap_or_default();
        let mut status = original.clone();
        let suspended = spec.suspend == Some(true);
        if status.start_time.is_none() && !suspended {
            status.start_time = Some(Time(self.now));
        }
        let released = self.ctrl.released(self.key);

        // Results of pods that finished since the last sync.
        let mut tracking = Tracking::from_status(&status);
        let ending = |s: &JobStatus| {
            condition(s, "FailureTarget")
                .or_else(|| condition(s, "SuccessCriteriaMet"))
                .cloned()
        };
        let mut interim = ending(&status);
        tracking.account(self.pods, &released, &shape, interim.is_some(), now_ms);
        let succeeded = |t: &Tracking, s: &JobStatus| {
            if shape.indexed {
                i32::try_from(t.completed.len()).unwrap_or(i32::MAX)
            } else {
                s.succeeded.unwrap_or(0) + i32::try_from(t.succeeded.len()).unwrap_or(i32::MAX)
            }
        };
        let failed =
            status.failed.unwrap_or(0) + i32::try_from(tracking.failed.len()).unwrap_or(i32::MAX);

        let active_pods: Vec<Arc<Pod>> = self
            .pods
            .iter()
            .filter(|p| !is_terminal(p) && p.metadata.deletion_timestamp.is_none())
            .cloned()
            .collect();
        let terminating = self
            .pods
            .iter()
            .filter(|p| !is_terminal(p) && p.metadata.deletion_timestamp.is_some())
            .count();

        // Failure: too many failed pods, or past the deadline.
        let mut requeue: Option<Duration> = None;
        if interim.is_none() {
            let backoff_limit = spec.backoff_limit.unwrap_or(6);
            if failed > backoff_limit || past_backoff_limit_on_failure(self.job, self.pods) {
                interim = Some(new_condition(
                    "FailureTarget",
                    "True",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                    self.now,
                ));
            } else if let (Some(deadline), Some(start), false) =
                (spec.active_deadline_seconds, &status.start_time, suspended)
            {
                let end_ms = start.0.as_millisecond() + deadline.saturating_mul(1000);
                if now_ms >= end_ms {
                    interim = Some(new_condition(
                        "FailureTarget",
                        "True",
                        "DeadlineExceeded",
                        "Job was active longer than specified deadline",
                        self.now,
                    ));
                } else {
                    requeue = Some(Duration::from_millis(
                        u64::try_from(end_ms - now_ms).unwrap_or(0),
                    ));
                }
            }
        }

        // Pods: all go when the Job ends or is suspended; else towards the wanted count.
        let backoff = self.ctrl.backoff_after(self.key, &tracking);
        let managed = if !self.ctrl.satisfied(self.key) {
            // The cache has not caught up with the last round of creations and deletions.
            Managed::default()
        } else if interim.is_some() || suspended {
            self.delete_pods(&active_pods).await
        } else {
            let done = succeeded(&tracking, &status);
            self.manage(&shape, &tracking, &active_pods, terminating, done, backoff)
                .await
        };
        let active = i32::try_from(active_pods.len() + managed.created - managed.deleted.len())
            .unwrap_or(i32::MAX);
        requeue = min_some(requeue, managed.requeue);

        // Success, judged after the pods were managed.
        if interim.is_none() {
            let done = succeeded(&tracking, &status);
            let complete = match spec.completions {
                None => done > 0 && active == 0,
                Some(c) => done >= c && active == 0,
            };
            if complete {
                interim = Some(new_condition(
                    "SuccessCriteriaMet",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                    self.now,
                ));
            }
        }
        if let Some(c) = &interim {
            // The Job is ending: every pod that did not succeed counts as failed.
            tracking.account(self.pods, &released, &shape, true, now_ms);
            set_condition(&mut status, c.clone());
        }

        status.active = Some(active);
        let deleted_now: HashSet<&String> = managed.deleted.iter().collect();
        let ready = active_pods
            .iter()
            .filter(|p| is_ready(p) && !deleted_now.contains(&uid(&p.metadata).to_string()))
            .count();
        status.ready = Some(i32::try_from(ready).unwrap_or(i32::MAX));
        status.terminating =
            Some(i32::try_from(terminating + managed.deleted.len()).unwrap_or(i32::MAX));
        self.suspension(&mut status, suspended);

        // Write the results, release the finalizers, then move the results into the counters.
        tracking.settle(&mut status, self.pods, &released);
        tracking.write_into(&mut status, &shape);
        self.finish(&mut status, &tracking, &released);
        let mut written = self.job.clone();
        if !same_status(&status, &original) {
            written.status = Some(status.clone());
            written = ctx.api.replace_status(&written).await?;
            // Recorded only once written, so a failed write does not count a failure twice.
            self.ctrl
                .set_backoff(self.key, self.ctrl.backoff_after(self.key, &tracking));
        }
        if !tracking.release.is_empty() {
            let mut now_released = released.clone();
            for pod in &tracking.release {
                self.ctrl.remove_finalizer(pod).await?;
                let pod_uid = uid(&pod.metadata).to_string();
                self.ctrl
                    .lock()
                    .released
                    .entry(self.key.to_string())
                    .or_default()
                    .insert(pod_uid.clone());
                now_released.insert(pod_uid);
            }
            let before = status.clone();
            tracking.settle(&mut status, self.pods, &now_released);
            tracking.write_into(&mut status, &shape);
            self.finish(&mut status, &tracking, &now_released);
            if !same_status(&status, &before) {
                written.status = Some(status);
                ctx.api.replace_status(&written).await?;
            }
        }
        if let Some(e) = managed.error {
            return Err(e);
        }
        Ok(requeue.map_or(Action::Done, Action::RequeueAfter))
    }

    /// Adds `Complete`/`Failed` once an ending Job has no pod left active, terminating or
    /// uncounted.
    fn finish(&self, status: &mut JobStatus, tracking: &Tracking, released: &HashSet<String>) {
        let Some(interim) = condition(status, "FailureTarget")
            .or_else(|| condition(status, "SuccessCriteriaMet"))
            .cloned()
        else {
            return;
        };
        let holding = self
            .pods
            .iter()
            .any(|p| has_finalizer(p) && !released.contains(uid(&p.metadata)));
        let quiet = status.active.unwrap_or(0) == 0 && status.terminating.unwrap_or(0) == 0;
        if holding || !quiet || !tracking.is_empty() {
            return;
        }
        let (type_, reason) = if interim.type_ == "FailureTarget" {
            ("Failed", interim.reason.clone().unwrap_or_default())
        } else {
            status.completion_time = Some(Time(self.now));
            ("Complete", interim.reason.clone().unwrap_or_default())
        };
        let message = interim.message.clone().unwrap_or_default();
        set_condition(
            status,
            new_condition(type_, "True", &reason, &message, self.now),
        );
        let events = &self.ctrl.ctx.events;
        if type_ == "Complete" {
            events.record(self.job, EventType::Normal, "Completed", "Job completed");
        } else {
            events.record(self.job, EventType::Warning, &reason, message);
        }
    }

    /// `Suspended=True` when suspended (resetting `startTime`, so the deadline restarts),
    /// `Suspended=False` when resumed.
    fn suspension(&self, status: &mut JobStatus, suspended: bool) {
        let was = condition(status, "Suspended").is_some();
        let events = &self.ctrl.ctx.events;
        if suspended && !was {
            status.start_time = None;
            set_condition(
                status,
                new_condition(
                    "Suspended",
                    "True",
                    "JobSuspended",
                    "Job suspended",
                    self.now,
                ),
            );
            events.record(self.job, EventType::Normal, "Suspended", "Job suspended");
        } else if !suspended && was {
            set_condition(
                status,
                new_condition("Suspended", "False", "JobResumed", "Job resumed", self.now),
            );
            events.record(self.job, EventType::Normal, "Resumed", "Job resumed");
        }
    }

    /// Creates or deletes pods towards the wanted number of active ones.
    async fn manage(
        &self,
        shape: &Shape,
        tracking: &Tracking,
        active_pods: &[Arc<Pod>],
        terminating: usize,
        succeeded: i32,
        backoff: BackoffRecord,
    ) -> Managed {
        let parallelism = self
            .job
            .spec
            .as_ref()
            .and_then(|s| s.parallelism)
            .unwrap_or(1);
        let active = i32::try_from(active_pods.len()).unwrap_or(i32::MAX);
        let want = if shape.indexed {
            let completed = i32::try_from(tracking.completed.len()).unwrap_or(i32::MAX);
            want_active(parallelism, shape.completions, completed, active)
        } else {
            want_active(parallelism, shape.completions, succeeded, active)
        };
        // Indexed: pods without a usable index, for a completed index, or duplicates go first.
        let mut surplus: Vec<Arc<Pod>> = Vec::new();
        let mut keep: Vec<Arc<Pod>> = Vec::new();
        if shape.indexed {
            let mut seen = HashSet::new();
            let mut sorted = active_pods.to_vec();
            sorted.sort_by(|a, b| deletion_order(b, a));
            for pod in sorted {
                match shape.valid_index(completion_index(&pod)) {
                    Some(ix) if !tracking.completed.contains(&ix) && seen.insert(ix) => {
                        keep.push(pod)
                    }
                    _ => surplus.push(pod),
                }
            }
        } else {
            keep = active_pods.to_vec();
        }
        let kept = i32::try_from(keep.len()).unwrap_or(i32::MAX);
        if kept > want || !surplus.is_empty() {
            keep.sort_by(deletion_order);
            let extra = usize::try_from(kept - want).unwrap_or(0);
            surplus.extend(keep.into_iter().take(extra));
            return self.delete_pods(&surplus).await;
        }
        let mut missing = usize::try_from(want - kept).unwrap_or(0);
        if shape.only_failed_replaced {
            missing = missing.saturating_sub(terminating);
        }
        if missing == 0 {
            return Managed::default();
        }
        let wait = backoff.remaining(self.now.as_millisecond());
        if !wait.is_zero() {
            return Managed {
                requeue: Some(wait),
                ..Default::default()
            };
        }
        let indexes: Vec<Option<i32>> = if shape.indexed {
            let taken: HashSet<i32> = keep.iter().filter_map(|p| completion_index(p)).collect();
            (0..shape.completions.unwrap_or(0))
                .filter(|ix| !tracking.completed.contains(ix) && !taken.contains(ix))
                .take(missing)
                .map(Some)
                .collect()
        } else {
            vec![None; missing]
        };
        self.create_pods(indexes).await
    }

    /// Creates pods in slow-start batches (1, 2, 4 …), stopping at the first failure.
    async fn create_pods(&self, indexes: Vec<Option<i32>>) -> Managed {
        let ctx = &self.ctrl.ctx;
        let indexes: Vec<Option<i32>> = indexes.into_iter().take(MAX_PODS_PER_SYNC).collect();
        let total = indexes.len();
        self.ctrl.expect(
            self.key,
            i64::try_from(total).unwrap_or(i64::MAX),
            Vec::new(),
        );
        let mut managed = Managed::default();
        let mut batch = 1;
        let mut rest = indexes.as_slice();
        while !rest.is_empty() {
            let (now, later) = rest.split_at(batch.min(rest.len()));
            rest = later;
            let pods: Vec<Pod> = now
                .iter()
                .map(|ix| pod_from_template(self.job, *ix))
                .collect();
            let results = futures::future::join_all(pods.iter().map(|p| ctx.api.create(p))).await;
            let mut failures = 0;
            for result in results {
                match result {
                    Ok(pod) => {
                        managed.created += 1;
                        let name = pod.metadata.name.unwrap_or_default();
                        ctx.events.record(
                            self.job,
                            EventType::Normal,
                            "SuccessfulCreate",
                            format!("Created pod: {name}"),
                        );
                    }
                    Err(e) => {
                        failures += 1;
                        ctx.events.record(
                            self.job,
                            EventType::Warning,
                            "FailedCreate",
                            format!("Error creating: {e}"),
                        );
                        managed.error.get_or_insert(e.into());
                    }
                }
            }
            if failures > 0 {
                let skipped = i64::try_from(failures + rest.len()).unwrap_or(i64::MAX);
                self.ctrl.lower_creations(self.key, skipped);
                break;
            }
            batch *= 2;
        }
        managed
    }

    /// Deletes `pods` (at most [`MAX_PODS_PER_SYNC`] of them).
    async fn delete_pods(&self, pods: &[Arc<Pod>]) -> Managed {
        let ctx = &self.ctrl.ctx;
        let victims: Vec<&Arc<Pod>> = pods.iter().take(MAX_PODS_PER_SYNC).collect();
        let mut managed = Managed::default();
        if victims.is_empty() {
            return managed;
        }
        let uids: Vec<String> = victims
            .iter()
            .map(|p| uid(&p.metadata).to_string())
            .collect();
        self.ctrl.expect(self.key, 0, uids);
        for pod in victims {
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            let pod_uid = uid(&pod.metadata);
            let result = ctx
                .api
                .delete::<Pod>(
                    pod.metadata.namespace.as_deref(),
                    name,
                    &delete_uid(pod_uid, None),
                )
                .await;
            match result {
                Ok(()) => {
                    managed.deleted.push(pod_uid.to_string());
                    ctx.events.record(
                        self.job,
                        EventType::Normal,
                        "SuccessfulDelete",
                        format!("Deleted pod: {name}"),
                    );
                }
                Err(e) => {
                    self.ctrl.deletion_failed(self.key, pod_uid);
                    ctx.events.record(
                        self.job,
                        EventType::Warning,
                        "FailedDelete",
                        format!("Error deleting: {e}"),
                    );
                    managed.error.get_or_insert(e.into());
                }
            }
        }
        managed
    }
}

/// Status equality that does not tell an absent field from its empty or zero value, so a
/// round trip through the API never looks like a change (which would write forever).
fn same_status(a: &JobStatus, b: &JobStatus) -> bool {
    fn normal(s: &JobStatus) -> JobStatus {
        let mut s = s.clone();
        for count in [
            &mut s.active,
            &mut s.ready,
            &mut s.terminating,
            &mut s.succeeded,
            &mut s.failed,
        ] {
            if *count == Some(0) {
                *count = None;
            }
        }
        if s.uncounted_terminated_pods.as_ref().is_some_and(|u| {
            u.succeeded.as_ref().is_none_or(Vec::is_empty)
                && u.failed.as_ref().is_none_or(Vec::is_empty)
        }) {
            s.uncounted_terminated_pods = None;
        }
        if s.conditions.as_ref().is_some_and(Vec::is_empty) {
            s.conditions = None;
        }
        if s.completed_indexes.as_deref() == Some("") {
            s.completed_indexes = None;
        }
        s
    }
    normal(a) == normal(b)
}

fn min_some(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
#[path = "job_tests.rs"]
mod tests;
