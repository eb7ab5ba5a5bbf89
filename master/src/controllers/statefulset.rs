//! The StatefulSet controller (kube-controller-manager's `statefulset`): pods with stable names
//! `<set>-<ordinal>`, created in order and each only once its predecessors are Running and Ready
//! (`OrderedReady`), or all at once (`Parallel`); removed from the highest ordinal down.
//!
//! The template's history is kept as ControllerRevisions ([`super::history`]): the update
//! revision is the current template's, the current revision the one the pods ran before the
//! rollout. A rolling update deletes, from the highest ordinal down to `partition`, one pod of
//! another revision at a time, waiting for its replacement to be Running and Ready; `OnDelete`
//! leaves that to the user. Pods that failed (or succeeded) are deleted and created again.
//!
//! Not yet: `volumeClaimTemplates` create no PersistentVolumeClaims (Skiff has no such API);
//! pods keep the template's volumes as they are. `maxUnavailable` (alpha upstream) is ignored.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use tokio::task::JoinSet;

use super::client::{delete_uid, PatchType};
use super::history::{self, REVISION_HASH};
use super::runtime::{self, key_of};
use super::workloads::{
    controller_ref, is_available, is_controlled_by, is_ready, is_terminating, phase,
    pod_from_template, queue_controllers_on_change, Selector,
};
use super::{Action, Context, Error, EventType, Reconciler, WorkQueue};

/// The pod label with the pod's own name.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The pod label with the pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// Registers the StatefulSet loop: StatefulSets, their pods and revisions queue their set.
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) {
    let queue = WorkQueue::new();
    let q = queue.clone();
    ctx.informers
        .stateful_sets
        .on_change(move |change| q.add(key_of(&change.object().metadata)));
    queue_controllers_on_change(&ctx.informers.pods, &queue, "StatefulSet");
    queue_controllers_on_change(&ctx.informers.controller_revisions, &queue, "StatefulSet");
    let controller = Arc::new(StatefulSetController { ctx: ctx.clone() });
    tasks.spawn(runtime::run(controller, queue, ctx.config.concurrent_syncs));
}

/// Reconciles one StatefulSet.
pub struct StatefulSetController {
    ctx: Context,
}

impl StatefulSetController {
    pub fn new(ctx: Context) -> Self {
        StatefulSetController { ctx }
    }
}

#[async_trait::async_trait]
impl Reconciler for StatefulSetController {
    fn name(&self) -> &'static str {
        "statefulset"
    }

    async fn reconcile(&self, key: &str) -> Result<Action, Error> {
        let Some(set) = self.ctx.informers.stateful_sets.get(key) else {
            return Ok(Action::Done);
        };
        self.sync(key, &set).await
    }
}

/// The status numbers and revisions a sync computes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub observed_generation: i64,
    pub replicas: i32,
    pub ready: i32,
    pub available: i32,
    pub current: i32,
    pub updated: i32,
    pub current_revision: String,
    pub update_revision: String,
    pub collision_count: i32,
}

/// One write a sync makes to a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Create the replica with this ordinal.
    Create(i32),
    Delete(Arc<Pod>),
    /// Restore the pod's identity labels.
    FixIdentity(Arc<Pod>),
}

/// A set's pods by place: `slots[i]` holds ordinal `start + i` if it exists; `condemned` holds
/// the pods beyond the range, highest ordinal first.
#[derive(Debug, Default)]
pub struct Replicas {
    pub start: i32,
    pub slots: Vec<Option<Arc<Pod>>>,
    pub condemned: Vec<Arc<Pod>>,
}

impl StatefulSetController {
    async fn sync(&self, key: &str, set: &StatefulSet) -> Result<Action, Error> {
        let spec = set.spec.clone().unwrap_or_default();
        let selector = Selector::new(&spec.selector).map_err(|message| Error::Invalid {
            object: format!("statefulset {key}"),
            message,
        })?;
        let pods = self.set_pods(set, &selector);
        let revisions = history::owned(
            &self.ctx.informers.controller_revisions,
            set.metadata.uid.as_deref().unwrap_or_default(),
        );
        let (current, update, collision_count) = self.revisions(set, &spec, &revisions).await?;
        let now = Timestamp::now();
        let (mut status, result) = self
            .update_set(set, &spec, &current, &update, &pods, now)
            .await;
        status.collision_count = collision_count;
        complete_rolling_update(&spec, &mut status);
        self.write_status(set, &status).await?;
        result?;
        self.truncate_history(&spec, &pods, &revisions, &current, &update)
            .await?;
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        if min_ready > 0 && status.available != spec.replicas.unwrap_or(1) {
            let wait = Duration::from_secs(u64::try_from(min_ready).unwrap_or(0));
            return Ok(Action::RequeueAfter(wait));
        }
        Ok(Action::Done)
    }

    /// The set's pods: controlled by it, selected, and named after it.
    fn set_pods(&self, set: &StatefulSet, selector: &Selector) -> Vec<Arc<Pod>> {
        let uid = set.metadata.uid.as_deref().unwrap_or_default();
        let name = set.metadata.name.as_deref().unwrap_or_default();
        self.ctx
            .informers
            .pods
            .owned_by(uid)
            .into_iter()
            .filter(|p| {
                is_controlled_by(&p.metadata, uid)
                    && selector.matches(p.metadata.labels.as_ref())
                    && parent_and_ordinal(p).is_some_and(|(parent, _)| parent == name)
            })
            .collect()
    }

    /// The current and update revisions (`getStatefulSetRevisions`): the update revision is the
    /// template's, created, or taken back from history by renumbering it (a rollback).
    async fn revisions(
        &self,
        set: &StatefulSet,
        spec: &StatefulSetSpec,
        revisions: &[Arc<ControllerRevision>],
    ) -> Result<(ControllerRevision, ControllerRevision, i32), Error> {
        let status = set.status.clone().unwrap_or_default();
        let mut collision_count = status.collision_count.unwrap_or(0);
        let data = history::template_patch(&spec.template);
        let equal = revisions.iter().rev().find(|r| history::has_data(r, &data));
        let update = match equal {
            Some(eq) if revisions.last().map(|r| &r.metadata.name) == Some(&eq.metadata.name) => {
                (**eq).clone()
            }
            Some(eq) => {
                history::renumber(&self.ctx.api, eq, history::next_revision(revisions)).await?
            }
            None => {
                let revision = new_revision(set, spec, data, history::next_revision(revisions));
                let name = set.metadata.name.as_deref().unwrap_or_default();
                history::create(&self.ctx.api, name, revision, &mut collision_count).await?
            }
        };
        let current = status
            .current_revision
            .as_deref()
            .and_then(|name| {
                revisions
                    .iter()
                    .find(|r| r.metadata.name.as_deref() == Some(name))
            })
            .map(|r| (**r).clone())
            .unwrap_or_else(|| update.clone());
        Ok((current, update, collision_count))
    }

    /// The main loop (`updateStatefulSet`): replace failed replicas and create missing ones,
    /// delete condemned ones, then roll one pod of the update. Answers the status and whether
    /// every write succeeded.
    async fn update_set(
        &self,
        set: &StatefulSet,
        spec: &StatefulSetSpec,
        current: &ControllerRevision,
        update: &ControllerRevision,
        pods: &[Arc<Pod>],
        now: Timestamp,
    ) -> (Status, Result<(), Error>) {
        let name = set.metadata.name.as_deref().unwrap_or_default();
        let replicas = partition_pods(spec, name, pods);
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let mut status = compute_status(&replicas, min_ready, current, update, now);
        status.observed_generation = set.metadata.generation.unwrap_or(0);
        if set.metadata.deletion_timestamp.is_some() {
            return (status, Ok(()));
        }
        let monotonic = spec.pod_management_policy.as_deref() != Some("Parallel");

        let (ops, blocked) = plan_replicas(&replicas, monotonic, min_ready, now);
        let result = self.apply(set, spec, current, update, ops, monotonic).await;
        if blocked || result.is_err() {
            return (status, result);
        }
        let (ops, blocked) = plan_condemned(&replicas, monotonic, min_ready, now);
        let result = self.apply(set, spec, current, update, ops, monotonic).await;
        if blocked || result.is_err() {
            return (status, result);
        }
        if update_strategy(spec) == "OnDelete" {
            return (status, Ok(()));
        }
        let update_name = update.metadata.name.as_deref().unwrap_or_default();
        let Some(pod) = plan_rollout(&replicas, partition(spec), update_name) else {
            return (status, Ok(()));
        };
        tracing::info!(
            statefulset = name,
            pod = pod.metadata.name.as_deref().unwrap_or_default(),
            "pod of StatefulSet is terminating for update"
        );
        let result = self.delete_pod(set, &pod).await;
        if result.is_ok() {
            status.current = status.current.saturating_sub(1);
        }
        (status, result)
    }

    /// Runs `ops`: one after another, stopping at the first error, when `monotonic`; else in
    /// slow-start batches (1, 2, 4 …), stopping after a batch with an error.
    async fn apply(
        &self,
        set: &StatefulSet,
        spec: &StatefulSetSpec,
        current: &ControllerRevision,
        update: &ControllerRevision,
        ops: Vec<Op>,
        monotonic: bool,
    ) -> Result<(), Error> {
        let run = |op: &Op| {
            let op = op.clone();
            async move {
                match op {
                    Op::Create(ordinal) => {
                        let pod = versioned_pod(set, spec, current, update, ordinal);
                        self.create_pod(set, pod).await
                    }
                    Op::Delete(pod) => self.delete_pod(set, &pod).await,
                    Op::FixIdentity(pod) => self.fix_identity(set, &pod).await,
                }
            }
        };
        if monotonic {
            for op in &ops {
                run(op).await?;
            }
            return Ok(());
        }
        let mut pos = 0;
        let mut batch = 1;
        while pos < ops.len() {
            let end = (pos + batch).min(ops.len());
            let results = join_all(ops[pos..end].iter().map(run)).await;
            if let Some(e) = results.into_iter().find_map(Result::err) {
                return Err(e);
            }
            pos = end;
            batch *= 2;
        }
        Ok(())
    }

    async fn create_pod(&self, set: &StatefulSet, pod: Pod) -> Result<(), Error> {
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let set_name = set.metadata.name.as_deref().unwrap_or_default();
        match self.ctx.api.create(&pod).await {
            Ok(_) => {
                self.ctx.events.record(
                    set,
                    EventType::Normal,
                    "SuccessfulCreate",
                    format!("create Pod {pod_name} in StatefulSet {set_name} successful"),
                );
                Ok(())
            }
            // Created by an earlier sync the cache has not shown yet, unless the cache holds a
            // pod of that name that is not ours.
            Err(e) if e.is_already_exists() && !self.taken_by_other(set, &pod_name) => Ok(()),
            Err(e) => {
                self.ctx.events.record(
                    set,
                    EventType::Warning,
                    "FailedCreate",
                    format!("create Pod {pod_name} in StatefulSet {set_name} failed error: {e}"),
                );
                Err(e.into())
            }
        }
    }

    fn taken_by_other(&self, set: &StatefulSet, pod_name: &str) -> bool {
        let uid = set.metadata.uid.as_deref().unwrap_or_default();
        self.ctx
            .informers
            .pods
            .get_in(set.metadata.namespace.as_deref(), pod_name)
            .is_some_and(|p| !is_controlled_by(&p.metadata, uid))
    }

    async fn delete_pod(&self, set: &StatefulSet, pod: &Pod) -> Result<(), Error> {
        let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
        let set_name = set.metadata.name.as_deref().unwrap_or_default();
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let result = self
            .ctx
            .api
            .delete::<Pod>(
                pod.metadata.namespace.as_deref(),
                pod_name,
                &delete_uid(uid, None),
            )
            .await;
        match result {
            // A conflict: the pod with that UID is gone and its successor took the name.
            Ok(()) => {}
            Err(e) if e.is_conflict() => {}
            Err(e) => {
                self.ctx.events.record(
                    set,
                    EventType::Warning,
                    "FailedDelete",
                    format!("delete Pod {pod_name} in StatefulSet {set_name} failed error: {e}"),
                );
                return Err(e.into());
            }
        }
        self.ctx.events.record(
            set,
            EventType::Normal,
            "SuccessfulDelete",
            format!("delete Pod {pod_name} in StatefulSet {set_name} successful"),
        );
        Ok(())
    }

    async fn fix_identity(&self, set: &StatefulSet, pod: &Pod) -> Result<(), Error> {
        let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
        let set_name = set.metadata.name.as_deref().unwrap_or_default();
        let ordinal = parent_and_ordinal(pod).map_or(0, |(_, o)| o);
        let patch = json!({"metadata": {"labels": {
            POD_NAME_LABEL: pod_name,
            POD_INDEX_LABEL: ordinal.to_string(),
        }}});
        let result = self
            .ctx
            .api
            .patch::<Pod>(
                pod.metadata.namespace.as_deref(),
                pod_name,
                PatchType::Merge,
                &patch,
            )
            .await;
        let (kind, reason, outcome) = match &result {
            Ok(_) => (
                EventType::Normal,
                "SuccessfulUpdate",
                "successful".to_string(),
            ),
            Err(e) => (
                EventType::Warning,
                "FailedUpdate",
                format!("failed error: {e}"),
            ),
        };
        self.ctx.events.record(
            set,
            kind,
            reason,
            format!("update Pod {pod_name} in StatefulSet {set_name} {outcome}"),
        );
        result.map(|_| ()).map_err(Error::from)
    }

    /// Writes the status if it differs from the stored one (`inconsistentStatus`).
    async fn write_status(&self, set: &StatefulSet, status: &Status) -> Result<(), Error> {
        let stored = set.status.clone().unwrap_or_default();
        let stored = Status {
            observed_generation: stored.observed_generation.unwrap_or(0),
            replicas: stored.replicas,
            ready: stored.ready_replicas.unwrap_or(0),
            available: stored.available_replicas.unwrap_or(0),
            current: stored.current_replicas.unwrap_or(0),
            updated: stored.updated_replicas.unwrap_or(0),
            current_revision: stored.current_revision.unwrap_or_default(),
            update_revision: stored.update_revision.unwrap_or_default(),
            collision_count: stored.collision_count.unwrap_or(0),
        };
        if stored == *status {
            return Ok(());
        }
        let patch = json!({
            "observedGeneration": status.observed_generation,
            "replicas": status.replicas,
            "readyReplicas": status.ready,
            "availableReplicas": status.available,
            "currentReplicas": status.current,
            "updatedReplicas": status.updated,
            "currentRevision": status.current_revision,
            "updateRevision": status.update_revision,
            "collisionCount": status.collision_count,
        });
        self.ctx
            .api
            .patch_status::<StatefulSet>(
                set.metadata.namespace.as_deref(),
                set.metadata.name.as_deref().unwrap_or_default(),
                &json!({ "status": patch }),
            )
            .await?;
        Ok(())
    }

    /// Deletes the oldest revisions beyond `revisionHistoryLimit` that are neither current,
    /// nor the update, nor run by a pod.
    async fn truncate_history(
        &self,
        spec: &StatefulSetSpec,
        pods: &[Arc<Pod>],
        revisions: &[Arc<ControllerRevision>],
        current: &ControllerRevision,
        update: &ControllerRevision,
    ) -> Result<(), Error> {
        for revision in revisions_to_delete(spec, pods, revisions, current, update) {
            history::delete(&self.ctx.api, &revision).await?;
        }
        Ok(())
    }
}

fn update_strategy(spec: &StatefulSetSpec) -> &str {
    spec.update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
}

/// The rolling update's partition (0 without one).
fn partition(spec: &StatefulSetSpec) -> i32 {
    spec.update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0)
        .max(0)
}

/// A pod's set name and ordinal, from its name `<set>-<ordinal>`.
pub fn parent_and_ordinal(pod: &Pod) -> Option<(&str, i32)> {
    let name = pod.metadata.name.as_deref()?;
    let (parent, ordinal) = name.rsplit_once('-')?;
    if ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((parent, ordinal.parse().ok()?))
}

fn ordinal_of(pod: &Pod) -> i32 {
    parent_and_ordinal(pod).map_or(-1, |(_, o)| o)
}

/// The revision a pod runs (its `controller-revision-hash`, a revision name for StatefulSets).
fn pod_revision(pod: &Pod) -> &str {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(REVISION_HASH))
        .map_or("", String::as_str)
}

fn is_running_and_ready(pod: &Pod) -> bool {
    phase(pod) == "Running" && is_ready(pod)
}

fn is_running_and_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    phase(pod) == "Running" && is_available(pod, min_ready_seconds, now)
}

fn is_healthy(pod: &Pod) -> bool {
    is_running_and_ready(pod) && !is_terminating(pod)
}

/// Whether the pod's name and labels say who it is (`identityMatches`).
fn identity_matches(pod: &Pod) -> bool {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(POD_NAME_LABEL))
        .is_some_and(|l| l == name)
}

/// Sorts the set's pods into the ordinal range and the condemned beyond it.
pub fn partition_pods(spec: &StatefulSetSpec, set_name: &str, pods: &[Arc<Pod>]) -> Replicas {
    let start = spec
        .ordinals
        .as_ref()
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0);
    let count = spec.replicas.unwrap_or(1).max(0);
    let mut replicas = Replicas {
        start,
        slots: vec![None; usize::try_from(count).unwrap_or(0)],
        condemned: Vec::new(),
    };
    for pod in pods {
        let Some((parent, ordinal)) = parent_and_ordinal(pod) else {
            continue;
        };
        if parent != set_name {
            continue;
        }
        match usize::try_from(ordinal - start) {
            Ok(i) if i < replicas.slots.len() => replicas.slots[i] = Some(pod.clone()),
            _ => replicas.condemned.push(pod.clone()),
        }
    }
    replicas
        .condemned
        .sort_by_key(|p| std::cmp::Reverse(ordinal_of(p)));
    replicas
}

/// The status of the pods as they are (`computeReplicaStatus`).
pub fn compute_status(
    replicas: &Replicas,
    min_ready_seconds: i32,
    current: &ControllerRevision,
    update: &ControllerRevision,
    now: Timestamp,
) -> Status {
    let current_name = current.metadata.name.clone().unwrap_or_default();
    let update_name = update.metadata.name.clone().unwrap_or_default();
    let mut status = Status {
        current_revision: current_name.clone(),
        update_revision: update_name.clone(),
        ..Default::default()
    };
    let live = replicas.slots.iter().flatten().chain(&replicas.condemned);
    for pod in live {
        status.replicas += 1;
        if is_running_and_ready(pod) {
            status.ready += 1;
            if is_running_and_available(pod, min_ready_seconds, now) {
                status.available += 1;
            }
        }
        if !is_terminating(pod) {
            let revision = pod_revision(pod);
            if revision == current_name {
                status.current += 1;
            }
            if revision == update_name {
                status.updated += 1;
            }
        }
    }
    status
}

/// A finished rolling update makes the update revision current (`completeRollingUpdate`).
fn complete_rolling_update(spec: &StatefulSetSpec, status: &mut Status) {
    if update_strategy(spec) == "RollingUpdate"
        && status.updated == status.replicas
        && status.ready == status.replicas
    {
        status.current = status.updated;
        status.current_revision = status.update_revision.clone();
    }
}

/// What to do for the replicas in range (`processReplica` over each): replace failed or
/// succeeded pods, create missing ones, restore identities. With `monotonic`, stops (and says
/// so) at the first replica that is not Running, Ready and Available, or after the first
/// create or delete.
pub fn plan_replicas(
    replicas: &Replicas,
    monotonic: bool,
    min_ready_seconds: i32,
    now: Timestamp,
) -> (Vec<Op>, bool) {
    let mut ops = Vec::new();
    for (i, slot) in replicas.slots.iter().enumerate() {
        let ordinal = replicas.start + i32::try_from(i).unwrap_or(i32::MAX);
        let Some(pod) = slot else {
            ops.push(Op::Create(ordinal));
            if monotonic {
                return (ops, true);
            }
            continue;
        };
        if matches!(phase(pod), "Failed" | "Succeeded") {
            // Created again once the old one is gone.
            if !is_terminating(pod) {
                ops.push(Op::Delete(pod.clone()));
            }
            if monotonic {
                return (ops, true);
            }
            continue;
        }
        if monotonic
            && (is_terminating(pod)
                || !is_running_and_ready(pod)
                || !is_running_and_available(pod, min_ready_seconds, now))
        {
            return (ops, true);
        }
        if !identity_matches(pod) {
            ops.push(Op::FixIdentity(pod.clone()));
        }
    }
    (ops, false)
}

/// Which condemned pods to delete (`processCondemned`), highest ordinal first; with
/// `monotonic`, one at a time, only while the others are healthy (the first unhealthy pod may
/// go), and not while one is terminating.
pub fn plan_condemned(
    replicas: &Replicas,
    monotonic: bool,
    min_ready_seconds: i32,
    now: Timestamp,
) -> (Vec<Op>, bool) {
    // The first unhealthy pod: the lowest missing or unhealthy replica, else the lowest
    // unhealthy condemned pod.
    let first_unhealthy = replicas
        .slots
        .iter()
        .enumerate()
        .find(|(_, slot)| slot.as_ref().is_none_or(|p| !is_healthy(p)))
        .map(|(i, _)| replicas.start + i32::try_from(i).unwrap_or(i32::MAX))
        .or_else(|| {
            replicas
                .condemned
                .iter()
                .rev()
                .find(|p| !is_healthy(p))
                .map(|p| ordinal_of(p))
        });
    let mut ops = Vec::new();
    for pod in &replicas.condemned {
        if is_terminating(pod) {
            if monotonic {
                return (ops, true);
            }
            continue;
        }
        let first = first_unhealthy == Some(ordinal_of(pod));
        if monotonic
            && !first
            && (!is_running_and_ready(pod)
                || !is_running_and_available(pod, min_ready_seconds, now))
        {
            return (ops, true);
        }
        ops.push(Op::Delete(pod.clone()));
        if monotonic {
            return (ops, true);
        }
    }
    (ops, false)
}

/// The pod a rolling update deletes next: from the highest ordinal down to `partition`, the
/// first of another revision that is not terminating, unless a pod above it is not healthy yet.
pub fn plan_rollout(
    replicas: &Replicas,
    partition: i32,
    update_revision: &str,
) -> Option<Arc<Pod>> {
    let min = usize::try_from(partition).unwrap_or(0);
    for slot in replicas.slots.iter().skip(min).rev() {
        let pod = slot.as_ref()?;
        if pod_revision(pod) != update_revision && !is_terminating(pod) {
            return Some(pod.clone());
        }
        if !is_healthy(pod) {
            return None;
        }
    }
    None
}

/// The revisions to delete to keep `revisionHistoryLimit` unused ones, oldest first.
fn revisions_to_delete(
    spec: &StatefulSetSpec,
    pods: &[Arc<Pod>],
    revisions: &[Arc<ControllerRevision>],
    current: &ControllerRevision,
    update: &ControllerRevision,
) -> Vec<Arc<ControllerRevision>> {
    let live = |name: &str| {
        current.metadata.name.as_deref() == Some(name)
            || update.metadata.name.as_deref() == Some(name)
            || pods.iter().any(|p| pod_revision(p) == name)
    };
    let unused: Vec<_> = revisions
        .iter()
        .filter(|r| !live(r.metadata.name.as_deref().unwrap_or_default()))
        .cloned()
        .collect();
    let limit = usize::try_from(
        spec.revision_history_limit
            .unwrap_or(history::DEFAULT_HISTORY_LIMIT),
    )
    .unwrap_or(0);
    let excess = unused.len().saturating_sub(limit);
    unused.into_iter().take(excess).collect()
}

/// The set's template as revision `number` (`newRevision`): named after the hash of its data.
fn new_revision(
    set: &StatefulSet,
    spec: &StatefulSetSpec,
    data: serde_json::Value,
    number: i64,
) -> ControllerRevision {
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    ControllerRevision {
        metadata: ObjectMeta {
            namespace: set.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: set.metadata.annotations.clone(),
            owner_references: Some(vec![controller_ref(set)]),
            ..Default::default()
        },
        data: Some(RawExtension(data)),
        revision: number,
    }
}

/// The pod for `ordinal` (`newVersionedStatefulSetPod`): below the partition it is made from
/// the current revision, else from the update revision.
fn versioned_pod(
    set: &StatefulSet,
    spec: &StatefulSetSpec,
    current: &ControllerRevision,
    update: &ControllerRevision,
    ordinal: i32,
) -> Pod {
    let start = spec
        .ordinals
        .as_ref()
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0);
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let below_partition = update_strategy(spec) == "RollingUpdate"
        && rolling.is_some()
        && ordinal < start.saturating_add(partition(spec));
    let revision = if below_partition { current } else { update };
    let template = history::template_of(revision).unwrap_or_else(|| spec.template.clone());
    let revision_name = revision.metadata.name.as_deref().unwrap_or_default();
    new_pod(set, spec, &template, revision_name, ordinal)
}

/// A pod of the set at `ordinal` from `template` (`newStatefulSetPod`): its name, identity
/// labels, revision, `hostname` and `subdomain`.
fn new_pod(
    set: &StatefulSet,
    spec: &StatefulSetSpec,
    template: &PodTemplateSpec,
    revision: &str,
    ordinal: i32,
) -> Pod {
    let set_name = set.metadata.name.as_deref().unwrap_or_default();
    let name = format!("{set_name}-{ordinal}");
    let mut pod = pod_from_template(
        template,
        set.metadata.namespace.as_deref(),
        controller_ref(set),
    );
    pod.metadata.name = Some(name.clone());
    let labels = pod.metadata.labels.get_or_insert_with(Default::default);
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(REVISION_HASH.into(), revision.into());
    let pod_spec = pod.spec.get_or_insert_with(Default::default);
    pod_spec.hostname = Some(name);
    pod_spec.subdomain = spec.service_name.clone().filter(|s| !s.is_empty());
    pod
}

#[cfg(test)]
mod tests;
