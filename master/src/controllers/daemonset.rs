//! The DaemonSet controller (kube-controller-manager's `daemonset`): one pod per eligible node.
//!
//! A node is eligible when it matches the template's `nodeSelector` and required node affinity
//! and the pod (with the DaemonSet tolerations added) tolerates its `NoSchedule`/`NoExecute`
//! taints. Pods are created for the default scheduler to place: their required node affinity
//! is replaced by a `matchFields` term on `metadata.name`, never `nodeName`. Pods of nodes that
//! are gone or no longer eligible are deleted. The template's history is kept as
//! ControllerRevisions ([`super::history`]); pods carry the current revision's
//! `controller-revision-hash`, and a rolling update replaces the others within `maxUnavailable`
//! (or surges by `maxSurge`). Creations and deletions are awaited in the pod cache before the
//! next round of changes (client-go's expectations).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, PodTemplateSpec, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use tokio::task::JoinSet;

use super::client::{delete_uid, PatchType};
use super::history::{self, REVISION_HASH};
use super::runtime::{self, key_of, Change, Key};
use super::workloads::{
    controller_ref, is_available, is_controlled_by, is_ready, is_terminating, phase,
    pod_from_template, queue_controllers_on_change, scaled_value, Selector,
};
use super::{Action, Context, Error, EventType, Informer, Reconciler, WorkQueue};

/// The pod label with the DaemonSet's template generation (deprecated, still set).
pub const TEMPLATE_GENERATION: &str = "pod-template-generation";
/// The DaemonSet annotation an API server may keep the template generation in.
const TEMPLATE_GENERATION_ANNOTATION: &str = "deprecated.daemonset.template.generation";
/// The most pods created or deleted in one sync (upstream `BurstReplicas`).
const BURST_REPLICAS: usize = 250;
/// How long creations and deletions are awaited before the controller acts again regardless.
const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(300);
/// The first and the longest wait before a failed daemon pod on a node is deleted again.
const FAILED_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const FAILED_BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);

const NODE_NAME_FIELD: &str = "metadata.name";

/// Registers the DaemonSet loop: DaemonSets, their pods and revisions queue their DaemonSet;
/// node changes queue every DaemonSet.
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) {
    let queue = WorkQueue::new();
    let q = queue.clone();
    ctx.informers
        .daemon_sets
        .on_change(move |change| q.add(key_of(&change.object().metadata)));
    queue_controllers_on_change(&ctx.informers.pods, &queue, "DaemonSet");
    queue_controllers_on_change(&ctx.informers.controller_revisions, &queue, "DaemonSet");
    let q = queue.clone();
    let sets = ctx.informers.daemon_sets.clone();
    ctx.informers.nodes.on_change(move |change| {
        let relevant = match change {
            Change::Applied {
                old: Some(old),
                new,
            } => node_placement_changed(old, new),
            _ => true,
        };
        if relevant {
            for ds in sets.list() {
                q.add(key_of(&ds.metadata));
            }
        }
    });
    let controller = Arc::new(DaemonSetController::new(ctx.clone()));
    tasks.spawn(runtime::run(controller, queue, ctx.config.concurrent_syncs));
}

/// Whether a node update can change which daemon pods belong on it (not a heartbeat).
fn node_placement_changed(old: &Node, new: &Node) -> bool {
    old.metadata.labels != new.metadata.labels || old.spec != new.spec
}

/// Reconciles one DaemonSet.
pub struct DaemonSetController {
    ctx: Context,
    expectations: Expectations,
    failed_backoff: FailedBackoff,
}

#[async_trait::async_trait]
impl Reconciler for DaemonSetController {
    fn name(&self) -> &'static str {
        "daemonset"
    }

    async fn reconcile(&self, key: &str) -> Result<Action, Error> {
        let Some(ds) = self.ctx.informers.daemon_sets.get(key) else {
            self.expectations.forget(key);
            return Ok(Action::Done);
        };
        self.sync(key, &ds).await
    }
}

/// The numbers in a DaemonSet's status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub desired: i32,
    pub current: i32,
    pub misscheduled: i32,
    pub ready: i32,
    pub updated: i32,
    pub available: i32,
    pub unavailable: i32,
}

/// What the core loop does: nodes that need a pod, pods to delete, and failed or succeeded pods
/// (deleted unless the node's failed-pod backoff holds them).
#[derive(Debug, Default)]
pub struct ManagePlan {
    pub create: Vec<String>,
    pub delete: Vec<Arc<Pod>>,
    pub failed: Vec<(String, Arc<Pod>)>,
    pub succeeded: Vec<(String, Arc<Pod>)>,
}

/// What a rolling update step does.
#[derive(Debug, Default)]
pub struct RolloutPlan {
    pub delete: Vec<Arc<Pod>>,
    pub create: Vec<String>,
}

type PodsByNode = BTreeMap<String, Vec<Arc<Pod>>>;

impl DaemonSetController {
    pub fn new(ctx: Context) -> Self {
        DaemonSetController {
            ctx,
            expectations: Expectations::default(),
            failed_backoff: FailedBackoff::default(),
        }
    }

    async fn sync(&self, key: &str, ds: &DaemonSet) -> Result<Action, Error> {
        let empty = DaemonSetSpec::default();
        let spec = ds.spec.as_ref().unwrap_or(&empty);
        let selector = match Selector::new(&spec.selector) {
            Ok(s) if s.is_empty() => {
                self.ctx.events.record(
                    ds,
                    EventType::Warning,
                    "SelectingAll",
                    "This daemon set is selecting all pods. A non-empty selector is required.",
                );
                return Ok(Action::Done);
            }
            Ok(s) => s,
            Err(message) => {
                return Err(Error::Invalid {
                    object: format!("daemonset {key}"),
                    message,
                })
            }
        };
        // Whether the garbage collector has removed the revisions yet is unknown: leave it.
        if ds.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let (current, old) = self.construct_history(ds, spec).await?;
        let hash = history::hash_label(&current)
            .map(str::to_string)
            .unwrap_or_default();
        let nodes = self.ctx.informers.nodes.list();
        let now = Timestamp::now();
        let pod_spec = daemon_pod_spec(&spec.template);

        if let Some(wait) = self.expectations.pending(key, &self.ctx.informers.pods) {
            // Only the status: this generation has not been acted on yet.
            let requeue = self
                .update_status(ds, &selector, &pod_spec, &nodes, &hash, false, now)
                .await?;
            return Ok(Action::RequeueAfter(
                min_some(Some(wait), requeue).unwrap_or(wait),
            ));
        }

        let mut requeue = None;
        let result = self
            .update_daemon_set(key, ds, &selector, &pod_spec, &nodes, &hash, &old, now)
            .await;
        if let Ok(delay) = &result {
            requeue = *delay;
        }
        let status = self
            .update_status(ds, &selector, &pod_spec, &nodes, &hash, true, now)
            .await;
        result?;
        requeue = min_some(requeue, status?);
        Ok(requeue.map_or(Action::Done, Action::RequeueAfter))
    }

    /// The core loop, then a rolling update step if nothing is awaited, then history cleanup.
    #[allow(clippy::too_many_arguments)]
    async fn update_daemon_set(
        &self,
        key: &str,
        ds: &DaemonSet,
        selector: &Selector,
        pod_spec: &PodSpec,
        nodes: &[Arc<Node>],
        hash: &str,
        old: &[Arc<ControllerRevision>],
        now: Timestamp,
    ) -> Result<Option<Duration>, Error> {
        let spec = ds.spec.clone().unwrap_or_default();
        let by_node = self.daemon_pods(ds, selector, false);
        let plan = plan_manage(
            pod_spec,
            nodes,
            &by_node,
            hash,
            allows_surge(&spec),
            spec.min_ready_seconds.unwrap_or(0),
            now,
        );
        let mut delete = plan.delete;
        let mut requeue = None;
        let ds_uid = ds.metadata.uid.as_deref().unwrap_or_default();
        for (node, pod) in plan.failed {
            let id = format!("{ds_uid}/{node}");
            if let Some(wait) = self.failed_backoff.check(&id, Instant::now()) {
                tracing::debug!(
                    daemonset = key,
                    node,
                    "deleting a failed pod is backing off"
                );
                requeue = min_some(requeue, Some(wait));
                continue;
            }
            let message = format!(
                "Found failed daemon pod {}/{} on node {node}, will try to kill it",
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default()
            );
            self.ctx
                .events
                .record(ds, EventType::Warning, "FailedDaemonPod", message);
            delete.push(pod);
        }
        for (node, pod) in plan.succeeded {
            let message = format!(
                "Found succeeded daemon pod {}/{} on node {node}, will try to delete it",
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default()
            );
            self.ctx
                .events
                .record(ds, EventType::Normal, "SucceededDaemonPod", message);
            delete.push(pod);
        }
        self.sync_nodes(key, ds, delete, plan.create, hash).await?;

        let rolling = update_strategy(&spec) == "RollingUpdate";
        if rolling
            && self
                .expectations
                .pending(key, &self.ctx.informers.pods)
                .is_none()
        {
            let generation = template_generation(ds);
            let plan = plan_rolling_update(&spec, pod_spec, nodes, &by_node, hash, generation, now)
                .map_err(|message| Error::Invalid {
                    object: format!("daemonset {key}"),
                    message,
                })?;
            self.sync_nodes(key, ds, plan.delete, plan.create, hash)
                .await?;
        }

        let with_terminal = self.daemon_pods(ds, selector, true);
        self.cleanup_history(&spec, old, &with_terminal).await?;
        Ok(requeue)
    }

    /// The DaemonSet's pods (controlled by it and selected) by target node. Terminal pods being
    /// deleted only count for `include_deleted_terminal` (history cleanup).
    fn daemon_pods(
        &self,
        ds: &DaemonSet,
        selector: &Selector,
        include_deleted_terminal: bool,
    ) -> PodsByNode {
        let uid = ds.metadata.uid.as_deref().unwrap_or_default();
        let mut by_node = PodsByNode::new();
        for pod in self.ctx.informers.pods.owned_by(uid) {
            if !is_controlled_by(&pod.metadata, uid)
                || !selector.matches(pod.metadata.labels.as_ref())
            {
                continue;
            }
            if !include_deleted_terminal && is_terminal(&pod) && is_terminating(&pod) {
                continue;
            }
            let Some(node) = target_node(&pod) else {
                continue;
            };
            by_node.entry(node.to_string()).or_default().push(pod);
        }
        by_node
    }

    /// Creates pods on `create` (in slow-start batches) and deletes `delete`, at most
    /// [`BURST_REPLICAS`] of each, and awaits them in the cache.
    async fn sync_nodes(
        &self,
        key: &str,
        ds: &DaemonSet,
        mut delete: Vec<Arc<Pod>>,
        mut create: Vec<String>,
        hash: &str,
    ) -> Result<(), Error> {
        create.truncate(BURST_REPLICAS);
        delete.truncate(BURST_REPLICAS);
        if create.is_empty() && delete.is_empty() {
            return Ok(());
        }
        let template = create_pod_template(ds, hash);
        let mut errors = Vec::new();
        let mut created = Vec::new();
        let mut pos = 0;
        let mut batch = 1;
        while pos < create.len() {
            let end = (pos + batch).min(create.len());
            let results = join_all(
                create[pos..end]
                    .iter()
                    .map(|node| self.create_pod(ds, &template, node)),
            )
            .await;
            let failed_before = errors.len();
            for result in results {
                match result {
                    Ok(pod_key) => created.push(pod_key),
                    Err(e) => errors.push(e),
                }
            }
            if errors.len() > failed_before {
                tracing::debug!(
                    daemonset = key,
                    skipped = create.len() - end,
                    "slow start: creations failed, skipping the rest"
                );
                break;
            }
            pos = end;
            batch *= 2;
        }
        let results = join_all(delete.iter().map(|pod| self.delete_pod(ds, pod))).await;
        let mut deleted = Vec::new();
        for (pod, result) in delete.iter().zip(results) {
            match result {
                Ok(()) => deleted.push((
                    key_of(&pod.metadata),
                    pod.metadata.uid.clone().unwrap_or_default(),
                )),
                Err(e) => errors.push(e),
            }
        }
        self.expectations.expect(key, created, deleted);
        match errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn create_pod(
        &self,
        ds: &DaemonSet,
        template: &PodTemplateSpec,
        node: &str,
    ) -> Result<Key, Error> {
        let pod = new_daemon_pod(ds, template, node);
        match self.ctx.api.create(&pod).await {
            Ok(created) => {
                let name = created.metadata.name.clone().unwrap_or_default();
                self.ctx.events.record(
                    ds,
                    EventType::Normal,
                    "SuccessfulCreate",
                    format!("Created pod: {name}"),
                );
                Ok(key_of(&created.metadata))
            }
            Err(e) => {
                self.ctx.events.record(
                    ds,
                    EventType::Warning,
                    "FailedCreate",
                    format!("Error creating: {e}"),
                );
                Err(e.into())
            }
        }
    }

    async fn delete_pod(&self, ds: &DaemonSet, pod: &Pod) -> Result<(), Error> {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let result = self
            .ctx
            .api
            .delete::<Pod>(
                pod.metadata.namespace.as_deref(),
                name,
                &delete_uid(uid, None),
            )
            .await;
        match result {
            Ok(()) => {
                self.ctx.events.record(
                    ds,
                    EventType::Normal,
                    "SuccessfulDelete",
                    format!("Deleted pod: {name}"),
                );
                Ok(())
            }
            // The pod with that UID is gone and another took its name.
            Err(e) if e.is_conflict() => Ok(()),
            Err(e) => {
                self.ctx.events.record(
                    ds,
                    EventType::Warning,
                    "FailedDelete",
                    format!("Error deleting: {e}"),
                );
                Err(e.into())
            }
        }
    }

    /// The revision of the current template (created or renumbered if needed) and the others
    /// (upstream `constructHistory`).
    async fn construct_history(
        &self,
        ds: &DaemonSet,
        spec: &DaemonSetSpec,
    ) -> Result<(ControllerRevision, Vec<Arc<ControllerRevision>>), Error> {
        let uid = ds.metadata.uid.as_deref().unwrap_or_default();
        let data = history::template_patch(&spec.template);
        let (current, old): (Vec<_>, Vec<_>) =
            history::owned(&self.ctx.informers.controller_revisions, uid)
                .into_iter()
                .partition(|r| history::has_data(r, &data));
        let next = old.iter().map(|r| r.revision).max().unwrap_or(0) + 1;
        let current = match self.dedup_current(ds, current).await? {
            None => self.snapshot(ds, spec, data, next).await?,
            Some(cur) if cur.revision < next => {
                history::renumber(&self.ctx.api, &cur, next).await?
            }
            Some(cur) => cur,
        };
        Ok((current, old))
    }

    /// Keeps the newest of several revisions of the current template: pods of the others are
    /// relabelled to it, then the others are deleted.
    async fn dedup_current(
        &self,
        ds: &DaemonSet,
        mut current: Vec<Arc<ControllerRevision>>,
    ) -> Result<Option<ControllerRevision>, Error> {
        let Some(keep) = current.pop() else {
            return Ok(None);
        };
        let keep_hash = history::hash_label(&keep).unwrap_or_default();
        let uid = ds.metadata.uid.as_deref().unwrap_or_default();
        for dup in current {
            let dup_hash = history::hash_label(&dup).unwrap_or_default();
            for pod in self.ctx.informers.pods.owned_by(uid) {
                let labels = pod.metadata.labels.as_ref();
                if labels
                    .and_then(|l| l.get(REVISION_HASH))
                    .map(String::as_str)
                    == Some(dup_hash)
                {
                    self.ctx
                        .api
                        .patch::<Pod>(
                            pod.metadata.namespace.as_deref(),
                            pod.metadata.name.as_deref().unwrap_or_default(),
                            PatchType::Merge,
                            &json!({"metadata": {"labels": {REVISION_HASH: keep_hash}}}),
                        )
                        .await?;
                }
            }
            history::delete(&self.ctx.api, &dup).await?;
        }
        Ok(Some((*keep).clone()))
    }

    /// Records the current template as revision `number` (upstream `snapshot`). A name taken by
    /// another template bumps `status.collisionCount` and fails, to retry with the new hash.
    async fn snapshot(
        &self,
        ds: &DaemonSet,
        spec: &DaemonSetSpec,
        data: serde_json::Value,
        number: i64,
    ) -> Result<ControllerRevision, Error> {
        let collisions = ds.status.as_ref().and_then(|s| s.collision_count);
        let hash = compute_hash(&spec.template, collisions);
        let name = history::revision_name(ds.metadata.name.as_deref().unwrap_or_default(), &hash);
        let mut labels = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        labels.insert(REVISION_HASH.into(), hash);
        let revision = ControllerRevision {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: ds.metadata.namespace.clone(),
                labels: Some(labels),
                annotations: ds.metadata.annotations.clone(),
                owner_references: Some(vec![controller_ref(ds)]),
                ..Default::default()
            },
            data: Some(RawExtension(data.clone())),
            revision: number,
        };
        let err = match self.ctx.api.create(&revision).await {
            Ok(created) => return Ok(created),
            Err(e) if e.is_already_exists() => e,
            Err(e) => return Err(e.into()),
        };
        let namespace = ds.metadata.namespace.as_deref();
        let existing: ControllerRevision = self.ctx.api.get(namespace, &name).await?;
        if history::has_data(&existing, &data) {
            return Ok(existing);
        }
        let ds_name = ds.metadata.name.as_deref().unwrap_or_default();
        let fresh: DaemonSet = self.ctx.api.get(namespace, ds_name).await?;
        let fresh_count = fresh.status.as_ref().and_then(|s| s.collision_count);
        if fresh_count == collisions {
            let bumped = collisions.unwrap_or(0).saturating_add(1);
            tracing::info!(
                daemonset = ds_name,
                collisions = bumped,
                "revision hash collision; bumping collisionCount"
            );
            self.ctx
                .api
                .patch_status::<DaemonSet>(
                    namespace,
                    ds_name,
                    &json!({"status": {"collisionCount": bumped}}),
                )
                .await?;
        }
        Err(err.into())
    }

    /// Deletes the oldest revisions beyond `revisionHistoryLimit` that no pod runs.
    async fn cleanup_history(
        &self,
        spec: &DaemonSetSpec,
        old: &[Arc<ControllerRevision>],
        pods: &PodsByNode,
    ) -> Result<(), Error> {
        for revision in revisions_to_delete(spec, old, pods) {
            history::delete(&self.ctx.api, &revision).await?;
        }
        Ok(())
    }

    /// Writes the status if it changed; answers when to look again for `minReadySeconds`.
    #[allow(clippy::too_many_arguments)]
    async fn update_status(
        &self,
        ds: &DaemonSet,
        selector: &Selector,
        pod_spec: &PodSpec,
        nodes: &[Arc<Node>],
        hash: &str,
        observe_generation: bool,
        now: Timestamp,
    ) -> Result<Option<Duration>, Error> {
        let spec = ds.spec.clone().unwrap_or_default();
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let by_node = self.daemon_pods(ds, selector, false);
        let generation = template_generation(ds);
        let counts = compute_counts(pod_spec, nodes, &by_node, hash, generation, min_ready, now);
        let status = ds.status.clone().unwrap_or_default();
        let observed = Counts {
            desired: status.desired_number_scheduled,
            current: status.current_number_scheduled,
            misscheduled: status.number_misscheduled,
            ready: status.number_ready,
            updated: status.updated_number_scheduled.unwrap_or(0),
            available: status.number_available.unwrap_or(0),
            unavailable: status.number_unavailable.unwrap_or(0),
        };
        let ds_generation = ds.metadata.generation.unwrap_or(0);
        let generation_seen = status.observed_generation.unwrap_or(0) >= ds_generation;
        if counts != observed || !generation_seen {
            let mut patch = json!({
                "desiredNumberScheduled": counts.desired,
                "currentNumberScheduled": counts.current,
                "numberMisscheduled": counts.misscheduled,
                "numberReady": counts.ready,
                "updatedNumberScheduled": counts.updated,
                "numberAvailable": counts.available,
                "numberUnavailable": counts.unavailable,
            });
            if observe_generation {
                patch["observedGeneration"] = json!(ds_generation);
            }
            self.ctx
                .api
                .patch_status::<DaemonSet>(
                    ds.metadata.namespace.as_deref(),
                    ds.metadata.name.as_deref().unwrap_or_default(),
                    &json!({ "status": patch }),
                )
                .await?;
        }
        // Look again once the ready pods have been ready for minReadySeconds.
        let wait = (min_ready > 0 && counts.ready != counts.available)
            .then(|| Duration::from_secs(u64::try_from(min_ready).unwrap_or(0)));
        Ok(wait)
    }
}

fn min_some(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn update_strategy(spec: &DaemonSetSpec) -> &str {
    spec.update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
}

/// `maxSurge` of `total` (0 unless RollingUpdate with a surge).
fn surge_count(spec: &DaemonSetSpec, total: i32) -> Result<i32, String> {
    if update_strategy(spec) != "RollingUpdate" {
        return Ok(0);
    }
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    match rolling.and_then(|r| r.max_surge.as_ref()) {
        Some(v) => scaled_value(v, total, true),
        None => Ok(0),
    }
}

/// `maxUnavailable` of `total`.
fn unavailable_count(spec: &DaemonSetSpec, total: i32) -> Result<i32, String> {
    if update_strategy(spec) != "RollingUpdate" {
        return Ok(0);
    }
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    match rolling.and_then(|r| r.max_unavailable.as_ref()) {
        Some(v) => scaled_value(v, total, true),
        None => Ok(0),
    }
}

fn allows_surge(spec: &DaemonSetSpec) -> bool {
    surge_count(spec, 1).is_ok_and(|n| n != 0)
}

/// The template generation: the deprecated annotation if the API server keeps it, else the
/// DaemonSet's generation.
fn template_generation(ds: &DaemonSet) -> Option<i64> {
    ds.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TEMPLATE_GENERATION_ANNOTATION))
        .and_then(|g| g.parse().ok())
        .or(ds.metadata.generation)
}

/// Whether the pod runs the current template (`util.IsPodUpdated`): the revision hash, or the
/// deprecated template generation, matches.
fn is_updated(pod: &Pod, hash: &str, generation: Option<i64>) -> bool {
    let label = |k: &str| pod.metadata.labels.as_ref().and_then(|l| l.get(k));
    let hash_matches = !hash.is_empty() && label(REVISION_HASH).is_some_and(|h| h == hash);
    let generation_matches =
        generation.is_some_and(|g| label(TEMPLATE_GENERATION).is_some_and(|l| *l == g.to_string()));
    hash_matches || generation_matches
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(phase(pod), "Failed" | "Succeeded")
}

/// `controller.ComputeHash`: FNV-1a of the template's JSON and the collision count.
pub fn compute_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(template).unwrap_or_default();
    if let Some(n) = collision_count {
        let mut count = [0u8; 8];
        count[..4].copy_from_slice(&n.to_le_bytes());
        bytes.extend_from_slice(&count);
    }
    history::safe_encode(&history::fnv32a(&bytes).to_string())
}

/// The tolerations every daemon pod gets (`util.AddOrUpdateDaemonPodTolerations`).
fn daemon_tolerations(host_network: bool) -> Vec<Toleration> {
    let toleration = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    let mut out = vec![
        toleration("node.kubernetes.io/not-ready", "NoExecute"),
        toleration("node.kubernetes.io/unreachable", "NoExecute"),
        toleration("node.kubernetes.io/disk-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/memory-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/pid-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        out.push(toleration(
            "node.kubernetes.io/network-unavailable",
            "NoSchedule",
        ));
    }
    out
}

/// Adds `toleration` unless one with the same key, operator, value and effect is there; one
/// that differs only otherwise (`tolerationSeconds`) is replaced
/// (`AddOrUpdateTolerationInPodSpec`).
fn add_or_update_toleration(spec: &mut PodSpec, toleration: Toleration) {
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    let same = |t: &Toleration| {
        t.key == toleration.key
            && t.operator == toleration.operator
            && t.value == toleration.value
            && t.effect == toleration.effect
    };
    match tolerations.iter_mut().find(|t| same(t)) {
        Some(existing) => *existing = toleration,
        None => tolerations.push(toleration),
    }
}

/// The template's pod spec as a daemon pod has it: with the DaemonSet tolerations.
pub fn daemon_pod_spec(template: &PodTemplateSpec) -> PodSpec {
    let mut spec = template.spec.clone().unwrap_or_default();
    for t in daemon_tolerations(spec.host_network == Some(true)) {
        add_or_update_toleration(&mut spec, t);
    }
    spec
}

/// The template pods are created from (`util.CreatePodTemplate`): tolerations, the revision
/// hash and the template generation.
fn create_pod_template(ds: &DaemonSet, hash: &str) -> PodTemplateSpec {
    let empty = DaemonSetSpec::default();
    let template = &ds.spec.as_ref().unwrap_or(&empty).template;
    let mut meta = template.metadata.clone().unwrap_or_default();
    let labels = meta.labels.get_or_insert_with(Default::default);
    if let Some(generation) = template_generation(ds) {
        labels.insert(TEMPLATE_GENERATION.into(), generation.to_string());
    }
    if !hash.is_empty() {
        labels.insert(REVISION_HASH.into(), hash.into());
    }
    PodTemplateSpec {
        metadata: Some(meta),
        spec: Some(daemon_pod_spec(template)),
    }
}

/// A daemon pod for `node`: the template with its required node affinity replaced by one
/// `matchFields` term on the node's name (`ReplaceDaemonSetPodNodeNameNodeAffinity`).
fn new_daemon_pod(ds: &DaemonSet, template: &PodTemplateSpec, node: &str) -> Pod {
    let mut pod = pod_from_template(
        template,
        ds.metadata.namespace.as_deref(),
        controller_ref(ds),
    );
    pod.metadata.generate_name = Some(format!(
        "{}-",
        ds.metadata.name.as_deref().unwrap_or_default()
    ));
    let spec = pod.spec.get_or_insert_with(Default::default);
    let term = NodeSelectorTerm {
        match_fields: Some(vec![NodeSelectorRequirement {
            key: NODE_NAME_FIELD.into(),
            operator: "In".into(),
            values: Some(vec![node.to_string()]),
        }]),
        match_expressions: None,
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    node_affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![term],
    });
    pod
}

/// The node a daemon pod is for (`util.GetTargetNodeName`): `nodeName`, else the node of its
/// `matchFields` affinity.
pub fn target_node(pod: &Pod) -> Option<&str> {
    let spec = pod.spec.as_ref()?;
    if let Some(name) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        return Some(name);
    }
    let required = spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?;
    for term in &required.node_selector_terms {
        for r in term.match_fields.iter().flatten() {
            if r.key == NODE_NAME_FIELD && r.operator == "In" {
                return match r.values.as_deref() {
                    Some([one]) => Some(one.as_str()),
                    _ => None,
                };
            }
        }
    }
    None
}

/// Whether a toleration tolerates a taint (`Toleration.ToleratesTaint`).
fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    let set = |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_string);
    if set(&t.effect).is_some_and(|e| e != taint.effect) {
        return false;
    }
    if set(&t.key).is_some_and(|k| k != taint.key) {
        return false;
    }
    match t.operator.as_deref().unwrap_or("") {
        "" | "Equal" => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        "Exists" => true,
        _ => false,
    }
}

/// Whether a node matches a node selector requirement, given the value it has for the key.
fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        op @ ("Gt" | "Lt") => {
            let (Some(v), [bound]) = (value, values) else {
                return false;
            };
            match (v.parse::<i64>(), bound.parse::<i64>()) {
                (Ok(v), Ok(b)) if op == "Gt" => v > b,
                (Ok(v), Ok(b)) => v < b,
                _ => false,
            }
        }
        _ => false,
    }
}

fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.metadata.labels.as_ref();
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.and_then(|l| l.get(&r.key)).map(String::as_str)))
        && fields.iter().all(|r| {
            r.key == NODE_NAME_FIELD && requirement_matches(r, node.metadata.name.as_deref())
        })
}

/// `nodeSelector` and required node affinity (`nodeaffinity.GetRequiredNodeAffinity(pod).Match`).
fn node_affinity_matches(spec: &PodSpec, node: &Node) -> bool {
    let labels = node.metadata.labels.as_ref();
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v));
    if !selector_ok {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        None => true,
        Some(r) => r.node_selector_terms.iter().any(|t| term_matches(t, node)),
    }
}

/// `NodeShouldRunDaemonPod` for a daemon pod spec (tolerations added): whether a pod should be
/// started on the node, and whether a running one may stay (it tolerates the `NoExecute`
/// taints even if not the `NoSchedule` ones).
pub fn node_should_run(node: &Node, spec: &PodSpec) -> (bool, bool) {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    if spec
        .node_name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && n != name)
    {
        return (false, false);
    }
    if !node_affinity_matches(spec, node) {
        return (false, false);
    }
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    let untolerated = |effects: &[&str]| {
        taints.iter().any(|taint| {
            effects.contains(&taint.effect.as_str())
                && !tolerations.iter().any(|t| tolerates(t, taint))
        })
    };
    if untolerated(&["NoSchedule", "NoExecute"]) {
        return (false, !untolerated(&["NoExecute"]));
    }
    (true, true)
}

/// Scheduled pods first, then the oldest, then by name (`podByCreationTimestampAndPhase`).
fn sort_oldest_first(pods: &mut [Arc<Pod>]) {
    pods.sort_by(|a, b| {
        let unscheduled = |p: &Pod| {
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_none_or(str::is_empty)
        };
        let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        (unscheduled(a), created(a), &a.metadata.name).cmp(&(
            unscheduled(b),
            created(b),
            &b.metadata.name,
        ))
    });
}

fn hash_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(REVISION_HASH))
        .map(String::as_str)
}

/// The core loop's decisions for every node (`podsShouldBeOnNode`), plus the daemon pods of
/// nodes that no longer exist.
pub fn plan_manage(
    pod_spec: &PodSpec,
    nodes: &[Arc<Node>],
    by_node: &PodsByNode,
    hash: &str,
    surge: bool,
    min_ready_seconds: i32,
    now: Timestamp,
) -> ManagePlan {
    let mut plan = ManagePlan::default();
    for node in nodes {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let (should_run, should_continue) = node_should_run(node, pod_spec);
        let pods = by_node.get(name);
        match pods {
            None if should_run => plan.create.push(name.to_string()),
            Some(pods) if should_continue => {
                let mut running = Vec::new();
                for pod in pods.iter().filter(|p| !is_terminating(p)) {
                    match phase(pod) {
                        "Failed" => plan.failed.push((name.to_string(), pod.clone())),
                        "Succeeded" => plan.succeeded.push((name.to_string(), pod.clone())),
                        _ => running.push(pod.clone()),
                    }
                }
                sort_oldest_first(&mut running);
                if !surge {
                    // One pod per node: all but the oldest go.
                    plan.delete.extend(running.into_iter().skip(1));
                } else if running.is_empty() && should_run {
                    plan.create.push(name.to_string());
                } else if running.len() > 1 {
                    prune_surged(&mut plan, running, hash, min_ready_seconds, now);
                }
            }
            Some(pods) if !should_continue => plan
                .delete
                .extend(pods.iter().filter(|p| !is_terminating(p)).cloned()),
            _ => {}
        }
    }
    // Pods whose node is gone: nothing else will remove the unscheduled ones, and the
    // bound ones have no node to run on.
    for (name, pods) in by_node {
        if !nodes
            .iter()
            .any(|n| n.metadata.name.as_deref() == Some(name))
        {
            plan.delete
                .extend(pods.iter().filter(|p| !is_terminating(p)).cloned());
        }
    }
    plan
}

/// With surge, a node keeps the oldest new pod and, while that is not yet available, the
/// oldest old pod if ready; every other pod goes.
fn prune_surged(
    plan: &mut ManagePlan,
    running: Vec<Arc<Pod>>,
    hash: &str,
    min_ready_seconds: i32,
    now: Timestamp,
) {
    let (mut oldest_new, mut oldest_old) = (None, None);
    for pod in running {
        let slot = if hash_of(&pod) == Some(hash) {
            &mut oldest_new
        } else {
            &mut oldest_old
        };
        if slot.is_none() {
            *slot = Some(pod);
        } else {
            plan.delete.push(pod);
        }
    }
    if let (Some(new), Some(old)) = (oldest_new, oldest_old) {
        if !is_ready(&old) || is_available(&new, min_ready_seconds, now) {
            plan.delete.push(old);
        }
    }
}

/// The new and the old pod on a node, or `None` when it has more than one of either
/// (`findUpdatedPodsOnNode`).
#[allow(clippy::type_complexity)]
fn updated_pods_on_node<'a>(
    pods: &[&'a Arc<Pod>],
    hash: &str,
    generation: Option<i64>,
) -> Option<(Option<&'a Arc<Pod>>, Option<&'a Arc<Pod>>)> {
    let (mut new, mut old) = (None, None);
    for pod in pods.iter().copied().filter(|p| !is_terminating(p)) {
        let slot = if is_updated(pod, hash, generation) {
            &mut new
        } else {
            &mut old
        };
        if slot.is_some() {
            return None;
        }
        *slot = Some(pod);
    }
    Some((new, old))
}

/// One rolling update step (`rollingUpdate`): without surge, delete old pods while fewer than
/// `maxUnavailable` are unavailable (the core loop recreates them); with surge, start new pods
/// beside old ones, up to `maxSurge` at once, and delete an old pod once its replacement is
/// available.
pub fn plan_rolling_update(
    spec: &DaemonSetSpec,
    pod_spec: &PodSpec,
    nodes: &[Arc<Node>],
    by_node: &PodsByNode,
    hash: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Result<RolloutPlan, String> {
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let mut per_node: BTreeMap<&str, Vec<&Arc<Pod>>> = by_node
        .iter()
        .map(|(n, pods)| (n.as_str(), pods.iter().collect()))
        .collect();
    let mut desired = 0;
    for node in nodes {
        if node_should_run(node, pod_spec).0 {
            desired += 1;
            per_node
                .entry(node.metadata.name.as_deref().unwrap_or_default())
                .or_default();
        }
    }
    let mut max_unavailable = unavailable_count(spec, desired)?;
    let max_surge = surge_count(spec, desired)?;
    if desired > 0 && max_unavailable == 0 && max_surge == 0 {
        max_unavailable = 1;
    }
    let available = |p: &Pod| is_available(p, min_ready, now);
    let mut plan = RolloutPlan::default();

    if max_surge == 0 {
        let mut unavailable = 0;
        let mut candidates = Vec::new();
        for pods in per_node.values() {
            match updated_pods_on_node(pods, hash, generation) {
                None | Some((None, None)) | Some((Some(_), Some(_))) => unavailable += 1,
                Some((Some(new), None)) => {
                    if !available(new) {
                        unavailable += 1;
                    }
                }
                Some((None, Some(old))) => {
                    if !available(old) {
                        // Not serving anyway: replace it now.
                        plan.delete.push((*old).clone());
                        unavailable += 1;
                    } else if unavailable < max_unavailable {
                        candidates.push((*old).clone());
                    }
                }
            }
        }
        let room = usize::try_from(max_unavailable - unavailable).unwrap_or(0);
        plan.delete.extend(candidates.into_iter().take(room));
        return Ok(plan);
    }

    let node_runs = |name: &str| {
        nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(name))
            .is_some_and(|n| node_should_run(n, pod_spec).0)
    };
    let mut surging = 0;
    let mut available_count = 0;
    let mut allowed = Vec::new();
    let mut candidates = Vec::new();
    let mut should_not_run = Vec::new();
    for (&name, pods) in &per_node {
        let Some((new, old)) = updated_pods_on_node(pods, hash, generation) else {
            surging += 1;
            continue;
        };
        if let Some(pod) = old.or(new) {
            if available(pod) {
                available_count += 1;
            }
        }
        match (new, old) {
            (_, None) => {}
            (None, Some(old)) if !available(old) => {
                if node_runs(name) {
                    allowed.push(name.to_string());
                } else {
                    plan.delete.push((*old).clone());
                }
            }
            (None, Some(old)) => {
                if !node_runs(name) {
                    should_not_run.push((*old).clone());
                } else if surging < max_surge {
                    candidates.push(name.to_string());
                }
            }
            (Some(new), Some(old)) => {
                if available(new) {
                    plan.delete.push((*old).clone());
                } else {
                    surging += 1;
                }
            }
        }
    }
    // Pods on nodes that no longer fit go only while the others keep the set available.
    let deletable = usize::try_from(available_count - desired).unwrap_or(0);
    plan.delete
        .extend(should_not_run.into_iter().take(deletable));
    let room = usize::try_from(max_surge - surging).unwrap_or(0);
    plan.create = allowed;
    plan.create.extend(candidates.into_iter().take(room));
    Ok(plan)
}

/// The status numbers (`updateDaemonSetStatus`): each eligible node's oldest pod decides.
pub fn compute_counts(
    pod_spec: &PodSpec,
    nodes: &[Arc<Node>],
    by_node: &PodsByNode,
    hash: &str,
    generation: Option<i64>,
    min_ready_seconds: i32,
    now: Timestamp,
) -> Counts {
    let mut c = Counts::default();
    for node in nodes {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let pods = by_node.get(name).filter(|p| !p.is_empty());
        if !node_should_run(node, pod_spec).0 {
            if pods.is_some() {
                c.misscheduled += 1;
            }
            continue;
        }
        c.desired += 1;
        let Some(pods) = pods else { continue };
        c.current += 1;
        let mut pods = pods.clone();
        sort_oldest_first(&mut pods);
        let pod = &pods[0];
        if is_ready(pod) {
            c.ready += 1;
            if is_available(pod, min_ready_seconds, now) {
                c.available += 1;
            }
        }
        if is_updated(pod, hash, generation) {
            c.updated += 1;
        }
    }
    c.unavailable = c.desired - c.available;
    c
}

/// The oldest revisions beyond `revisionHistoryLimit` whose hash no pod carries
/// (`cleanupHistory`).
fn revisions_to_delete(
    spec: &DaemonSetSpec,
    old: &[Arc<ControllerRevision>],
    pods: &PodsByNode,
) -> Vec<Arc<ControllerRevision>> {
    let limit = usize::try_from(
        spec.revision_history_limit
            .unwrap_or(history::DEFAULT_HISTORY_LIMIT),
    )
    .unwrap_or(0);
    let mut to_kill = old.len().saturating_sub(limit);
    if to_kill == 0 {
        return Vec::new();
    }
    let live: Vec<&str> = pods.values().flatten().filter_map(|p| hash_of(p)).collect();
    let mut old = old.to_vec();
    old.sort_by_key(|r| r.revision);
    let mut out = Vec::new();
    for revision in old {
        if to_kill == 0 {
            break;
        }
        if history::hash_label(&revision).is_some_and(|h| live.contains(&h)) {
            continue;
        }
        out.push(revision);
        to_kill -= 1;
    }
    out
}

/// Pod creations and deletions a DaemonSet waits to see in the cache before acting again.
#[derive(Default)]
struct Expectations(Mutex<HashMap<Key, Pending>>);

struct Pending {
    /// Keys of created pods not yet in the cache.
    creates: Vec<Key>,
    /// Keys and UIDs of deleted pods still in the cache without a deletion timestamp.
    deletes: Vec<(Key, String)>,
    since: Instant,
}

impl Expectations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Pending>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expect(&self, key: &str, creates: Vec<Key>, deletes: Vec<(Key, String)>) {
        if creates.is_empty() && deletes.is_empty() {
            return;
        }
        let mut map = self.lock();
        let pending = map.entry(key.to_string()).or_insert_with(|| Pending {
            creates: Vec::new(),
            deletes: Vec::new(),
            since: Instant::now(),
        });
        pending.creates.extend(creates);
        pending.deletes.extend(deletes);
        pending.since = Instant::now();
    }

    /// How long the DaemonSet still waits for the cache, or `None` if it has seen everything
    /// (or waited [`EXPECTATIONS_TIMEOUT`]).
    fn pending(&self, key: &str, pods: &Informer<Pod>) -> Option<Duration> {
        let mut map = self.lock();
        let p = map.get_mut(key)?;
        let waited = p.since.elapsed();
        p.creates.retain(|k| pods.get(k).is_none());
        p.deletes.retain(|(k, uid)| {
            pods.get(k).is_some_and(|pod| {
                pod.metadata.uid.as_deref() == Some(uid.as_str()) && !is_terminating(&pod)
            })
        });
        if waited >= EXPECTATIONS_TIMEOUT || (p.creates.is_empty() && p.deletes.is_empty()) {
            map.remove(key);
            return None;
        }
        Some(EXPECTATIONS_TIMEOUT - waited)
    }

    fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

/// Per (DaemonSet, node) backoff for deleting failed pods, so the controller does not fight a
/// node that keeps failing them.
#[derive(Default)]
struct FailedBackoff(Mutex<HashMap<String, (Instant, Duration)>>);

impl FailedBackoff {
    /// The remaining wait while `id` backs off; otherwise starts its next, longer backoff and
    /// answers `None` (go ahead).
    fn check(&self, id: &str, now: Instant) -> Option<Duration> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 1024 {
            map.retain(|_, (last, _)| now.duration_since(*last) < 2 * FAILED_BACKOFF_MAX);
        }
        let next = match map.get(id) {
            Some((last, delay)) => {
                let since = now.duration_since(*last);
                if since < *delay {
                    return Some(*delay - since);
                }
                if since > 2 * FAILED_BACKOFF_MAX {
                    FAILED_BACKOFF_INITIAL
                } else {
                    (*delay * 2).min(FAILED_BACKOFF_MAX)
                }
            }
            None => FAILED_BACKOFF_INITIAL,
        };
        map.insert(id.to_string(), (now, next));
        None
    }
}

#[cfg(test)]
mod tests;
