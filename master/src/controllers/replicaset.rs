//! The ReplicaSet controller (kube-controller-manager's `replicaset`): keeps `spec.replicas`
//! active pods for each ReplicaSet, adopting matching orphans and releasing pods that no longer
//! match, and reports counts in `status`.
//!
//! Like upstream it keeps *expectations*: after asking for N creations (or these deletions) it
//! does not act on the ReplicaSet again until the informer has seen them (or 5 minutes pass),
//! so a reconcile over a cache that lags its own writes never overshoots.
//!
//! The selector, pod-readiness and adoption helpers here are shared with the Deployment
//! controller, which claims ReplicaSets the way this one claims pods.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::client::{delete_options, path_of, ClientError, PatchType};
use super::runtime::{self, key_of, Change};
use super::{Action, Api, Context, Error, EventType, Key, Reconciler, WorkQueue};

/// Upstream's `BurstReplicas`: the most pods one reconcile creates or deletes.
pub const BURST_REPLICAS: usize = 500;
/// How long expectations wait for the informer before they are ignored (`ExpectationsTimeout`).
pub const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(300);
/// The annotation that ranks pods for scale-down (lower cost goes first).
pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

// ---------------------------------------------------------------------------------------------
// Shared helpers: selectors, controller references, adoption, pod readiness
// ---------------------------------------------------------------------------------------------

/// A compiled `LabelSelector` (metav1.LabelSelectorAsSelector): a missing selector matches
/// nothing, an empty one everything.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    nothing: bool,
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq)]
struct Requirement {
    key: String,
    op: Op,
    values: BTreeSet<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Selector {
    /// Compiles `selector`; the error says which expression is wrong.
    pub fn new(selector: Option<&LabelSelector>) -> Result<Selector, String> {
        let Some(selector) = selector else {
            return Ok(Selector {
                nothing: true,
                requirements: Vec::new(),
            });
        };
        let mut requirements = Vec::new();
        for (k, v) in selector.match_labels.iter().flatten() {
            requirements.push(Requirement {
                key: k.clone(),
                op: Op::In,
                values: BTreeSet::from([v.clone()]),
            });
        }
        for expr in selector.match_expressions.iter().flatten() {
            let values: BTreeSet<String> = expr.values.iter().flatten().cloned().collect();
            let op = match expr.operator.as_str() {
                "In" => Op::In,
                "NotIn" => Op::NotIn,
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                other => return Err(format!("{other:?} is not a valid label selector operator")),
            };
            let needs_values = matches!(op, Op::In | Op::NotIn);
            if needs_values && values.is_empty() {
                return Err(format!(
                    "key {:?}: for 'in', 'notin' operators, values set can't be empty",
                    expr.key
                ));
            }
            if !needs_values && !values.is_empty() {
                return Err(format!(
                    "key {:?}: values set must be empty for exists and does not exist",
                    expr.key
                ));
            }
            requirements.push(Requirement {
                key: expr.key.clone(),
                op,
                values,
            });
        }
        Ok(Selector {
            nothing: false,
            requirements,
        })
    }

    /// Whether a set of labels satisfies every requirement.
    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        if self.nothing {
            return false;
        }
        self.requirements.iter().all(|r| {
            let value = labels.and_then(|l| l.get(&r.key));
            match r.op {
                Op::In => value.is_some_and(|v| r.values.contains(v)),
                Op::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                Op::Exists => value.is_some(),
                Op::DoesNotExist => value.is_none(),
            }
        })
    }
}

/// Whether a selector selects everything (no labels, no expressions).
pub fn selects_everything(selector: &LabelSelector) -> bool {
    selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty())
}

/// The owner reference with `controller: true`, if any.
pub fn controller_ref(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// A controller reference to an `apps/v1` object of `kind` (metav1.NewControllerRef).
pub fn new_controller_ref(kind: &str, owner: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: kind.into(),
        name: owner.name.clone().unwrap_or_default(),
        uid: owner.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// What a controller does with one candidate object (upstream's `ClaimObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Ours and still matching.
    Owned,
    /// An orphan that matches: take it.
    Adopt,
    /// Ours but no longer matching: let it go.
    Release,
    /// Someone else's, or not for us.
    Ignore,
}

/// Decides the fate of `obj` for the controller `owner` whose selector gives `matches`.
pub fn claim(owner: &ObjectMeta, obj: &ObjectMeta, matches: bool) -> Claim {
    let owner_deleting = owner.deletion_timestamp.is_some();
    match controller_ref(obj) {
        Some(r) if Some(&r.uid) != owner.uid.as_ref() => Claim::Ignore,
        Some(_) if matches => Claim::Owned,
        // Being deleted: keep what we own, release nothing.
        Some(_) if owner_deleting => Claim::Ignore,
        Some(_) => Claim::Release,
        None if owner_deleting
            || !matches
            || obj.deletion_timestamp.is_some()
            || obj.namespace != owner.namespace =>
        {
            Claim::Ignore
        }
        None => Claim::Adopt,
    }
}

/// The strategic merge patch that adds `owner` as controller of the object with `uid`.
pub fn adopt_patch(owner: &OwnerReference, uid: Option<&str>) -> Value {
    json!({"metadata": {"ownerReferences": [owner], "uid": uid}})
}

/// The strategic merge patch that removes the owner `owner_uid` from the object with `uid`.
pub fn release_patch(owner_uid: &str, uid: Option<&str>) -> Value {
    json!({"metadata": {"ownerReferences": [{"$patch": "delete", "uid": owner_uid}], "uid": uid}})
}

/// Adopts matching orphans and releases owned objects that no longer match, returning what
/// `owner` (of kind `kind`) now controls among `candidates` (upstream's ControllerRefManager).
pub async fn claim_objects<O, K>(
    api: &Api,
    owner: &O,
    selector: &Selector,
    candidates: Vec<Arc<K>>,
) -> Result<Vec<Arc<K>>, Error>
where
    O: Resource<DynamicType = ()> + DeserializeOwned,
    K: Resource<DynamicType = ()>,
{
    let owner_meta = owner.meta();
    let owner_ref = new_controller_ref(&O::kind(&()), owner_meta);
    let mut claimed = Vec::new();
    let mut rechecked = false;
    let mut failure = None;
    for obj in candidates {
        let meta = obj.meta();
        let decision = claim(owner_meta, meta, selector.matches(meta.labels.as_ref()));
        let path = path_of::<K>(meta.namespace.as_deref(), meta.name.as_deref());
        match decision {
            Claim::Owned => claimed.push(obj),
            Claim::Ignore => {}
            Claim::Release => {
                let patch = release_patch(&owner_ref.uid, meta.uid.as_deref());
                match api.raw().patch(&path, PatchType::Strategic, patch).await {
                    Ok(_) => {}
                    // Gone, or someone else already changed its owners.
                    Err(e) if e.is_not_found() || e.code() == Some(422) => {}
                    Err(e) => failure = failure.or(Some(e)),
                }
            }
            Claim::Adopt => {
                if !rechecked {
                    recheck_owner::<O>(api, owner_meta).await?;
                    rechecked = true;
                }
                let patch = adopt_patch(&owner_ref, meta.uid.as_deref());
                match api.raw().patch(&path, PatchType::Strategic, patch).await {
                    Ok(_) => claimed.push(obj),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => failure = failure.or(Some(e)),
                }
            }
        }
    }
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(claimed),
    }
}

/// Before adopting, reads the owner past the cache: a deleted or replaced owner adopts nothing
/// (upstream's RecheckDeletionTimestamp).
async fn recheck_owner<O>(api: &Api, owner: &ObjectMeta) -> Result<(), Error>
where
    O: Resource<DynamicType = ()> + DeserializeOwned,
{
    let name = owner.name.as_deref().unwrap_or_default();
    let object = format!(
        "{} {}/{name}",
        O::kind(&()),
        owner.namespace.as_deref().unwrap_or_default()
    );
    let fresh: O = api.get(owner.namespace.as_deref(), name).await?;
    if fresh.meta().uid != owner.uid {
        return Err(Error::Invalid {
            object,
            message: "the owner is gone; not adopting".into(),
        });
    }
    if fresh.meta().deletion_timestamp.is_some() {
        return Err(Error::Invalid {
            object,
            message: "the owner is being deleted; not adopting".into(),
        });
    }
    Ok(())
}

/// Not terminal (Succeeded/Failed) and not being deleted (controller.IsPodActive).
pub fn is_pod_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded") | Some("Failed"))
        && pod.metadata.deletion_timestamp.is_none()
}

/// The pod's `Ready` condition.
pub fn pod_ready_condition(pod: &Pod) -> Option<&PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

pub fn is_pod_ready(pod: &Pod) -> bool {
    pod_ready_condition(pod).is_some_and(|c| c.status == "True")
}

/// How long until a ready pod counts as available: `Some(ZERO)` when it is, `None` when it is
/// not ready (podutil.IsPodAvailable).
pub fn until_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> Option<Duration> {
    let condition = pod_ready_condition(pod).filter(|c| c.status == "True")?;
    if min_ready_seconds <= 0 {
        return Some(Duration::ZERO);
    }
    // A ready pod without a transition time never becomes available (as upstream).
    let since = condition.last_transition_time.as_ref()?.0;
    let at_ms = since
        .as_millisecond()
        .saturating_add(i64::from(min_ready_seconds) * 1000);
    let now_ms = now.as_millisecond();
    if at_ms < now_ms {
        Some(Duration::ZERO)
    } else {
        Some(Duration::from_millis((at_ms - now_ms) as u64 + 1))
    }
}

pub fn is_pod_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    until_available(pod, min_ready_seconds, now) == Some(Duration::ZERO)
}

/// Now, to the second (as `Time` is serialized).
pub fn now() -> Timestamp {
    let now = Timestamp::now();
    Timestamp::from_second(now.as_second()).unwrap_or(now)
}

/// The message of an API error, without the verb and path.
pub fn error_message(e: &ClientError) -> String {
    match e {
        ClientError::Status { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Expectations
// ---------------------------------------------------------------------------------------------

/// Creations and deletions a controller asked for and has not yet seen in its informer
/// (upstream's UIDTrackingControllerExpectations, keyed by controller key).
#[derive(Default)]
pub struct Expectations {
    inner: Mutex<HashMap<Key, Expected>>,
}

struct Expected {
    adds: i64,
    /// Keys of the pods whose deletion we wait to see.
    deletes: HashSet<Key>,
    at: Instant,
}

impl Expectations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Expected>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the controller may act on `key`: nothing pending, or pending for too long.
    pub fn satisfied(&self, key: &str, now: Instant) -> bool {
        match self.lock().get(key) {
            None => true,
            Some(e) => {
                (e.adds <= 0 && e.deletes.is_empty())
                    || now.duration_since(e.at) > EXPECTATIONS_TIMEOUT
            }
        }
    }

    /// Expects `n` creations for `key` from now on.
    pub fn expect_creations(&self, key: &str, n: usize) {
        self.lock().insert(
            key.to_string(),
            Expected {
                adds: n as i64,
                deletes: HashSet::new(),
                at: Instant::now(),
            },
        );
    }

    /// Expects the deletion of these pods for `key` from now on.
    pub fn expect_deletions(&self, key: &str, pods: impl IntoIterator<Item = Key>) {
        self.lock().insert(
            key.to_string(),
            Expected {
                adds: 0,
                deletes: pods.into_iter().collect(),
                at: Instant::now(),
            },
        );
    }

    /// One expected creation happened (or will never happen).
    pub fn creation_observed(&self, key: &str) {
        if let Some(e) = self.lock().get_mut(key) {
            e.adds -= 1;
        }
    }

    /// The pod `pod_key` is gone or going (or its deletion failed).
    pub fn deletion_observed(&self, key: &str, pod_key: &str) {
        if let Some(e) = self.lock().get_mut(key) {
            e.deletes.remove(pod_key);
        }
    }

    /// Drops what was expected for a deleted controller.
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

// ---------------------------------------------------------------------------------------------
// Pure decisions
// ---------------------------------------------------------------------------------------------

/// The batch sizes of a slow start over `count` creations: 1, 2, 4, … (slowStartBatch).
pub fn slow_start_batches(count: usize) -> Vec<usize> {
    let mut batches = Vec::new();
    let mut remaining = count;
    let mut size = remaining.min(1);
    while size > 0 {
        batches.push(size);
        remaining -= size;
        size = (2 * size).min(remaining);
    }
    batches
}

fn phase_ordinal(pod: &Pod) -> u8 {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 0,
    }
}

fn deletion_cost(pod: &Pod) -> i32 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(POD_DELETION_COST))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The highest restart count of regular and of sidecar containers.
fn max_restarts(pod: &Pod) -> (i32, i32) {
    let Some(status) = pod.status.as_ref() else {
        return (0, 0);
    };
    let regular = status
        .container_statuses
        .iter()
        .flatten()
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0);
    let sidecars: HashSet<&str> = pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .map(|c| c.name.as_str())
        .collect();
    let sidecar = status
        .init_container_statuses
        .iter()
        .flatten()
        .filter(|c| sidecars.contains(c.name.as_str()))
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0);
    (regular, sidecar)
}

fn ready_time(pod: &Pod) -> Option<Timestamp> {
    if !is_pod_ready(pod) {
        return None;
    }
    pod_ready_condition(pod)?
        .last_transition_time
        .as_ref()
        .map(|t| t.0)
}

/// Unknown first, then younger first in log2 buckets of age (LogarithmicScaleDown); within a
/// bucket, by UID.
fn compare_times(
    a: Option<Timestamp>,
    b: Option<Timestamp>,
    pa: &Pod,
    pb: &Pod,
    now: Timestamp,
) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) if a == b => Ordering::Equal,
        (Some(a), Some(b)) => {
            let bucket = |t: Timestamp| {
                let age = now.as_nanosecond() - t.as_nanosecond();
                if age > 0 {
                    (age as f64).log2() as i64
                } else {
                    -1
                }
            };
            match bucket(a).cmp(&bucket(b)) {
                Ordering::Equal => pa.metadata.uid.cmp(&pb.metadata.uid),
                other => other,
            }
        }
    }
}

/// Scale-down order (ActivePodsWithRanks): `Less` is deleted first. `rank_*` counts the
/// related active pods on the same node (doubled-up pods go first).
pub fn deletion_order(a: &Pod, rank_a: usize, b: &Pod, rank_b: usize, now: Timestamp) -> Ordering {
    let node = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default()
    };
    let (node_a, node_b) = (node(a), node(b));
    if node_a != node_b && (node_a.is_empty() || node_b.is_empty()) {
        return if node_a.is_empty() {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    }
    let phase = phase_ordinal(a).cmp(&phase_ordinal(b));
    if phase != Ordering::Equal {
        return phase;
    }
    let (ready_a, ready_b) = (is_pod_ready(a), is_pod_ready(b));
    if ready_a != ready_b {
        return if ready_a {
            Ordering::Greater
        } else {
            Ordering::Less
        };
    }
    let cost = deletion_cost(a).cmp(&deletion_cost(b));
    if cost != Ordering::Equal {
        return cost;
    }
    if rank_a != rank_b {
        return rank_b.cmp(&rank_a);
    }
    if ready_a && ready_b {
        let (ta, tb) = (ready_time(a), ready_time(b));
        if ta != tb {
            return compare_times(ta, tb, a, b, now);
        }
    }
    let restarts = max_restarts(b).cmp(&max_restarts(a));
    if restarts != Ordering::Equal {
        return restarts;
    }
    let (ca, cb) = (
        a.metadata.creation_timestamp.as_ref().map(|t| t.0),
        b.metadata.creation_timestamp.as_ref().map(|t| t.0),
    );
    if ca != cb {
        return compare_times(ca, cb, a, b, now);
    }
    Ordering::Equal
}

/// The `count` pods to delete, in deletion order; `related` are the active pods of every
/// ReplicaSet under the same controller (for the doubled-up rank).
pub fn pods_to_delete(
    pods: &[Arc<Pod>],
    related: &[Arc<Pod>],
    count: usize,
    now: Timestamp,
) -> Vec<Arc<Pod>> {
    if count >= pods.len() {
        return pods.to_vec();
    }
    let mut on_node: HashMap<String, usize> = HashMap::new();
    for pod in related.iter().filter(|p| is_pod_active(p)) {
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        *on_node.entry(node.unwrap_or_default()).or_default() += 1;
    }
    let rank = |p: &Pod| {
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
        on_node.get(&node.unwrap_or_default()).copied().unwrap_or(0)
    };
    let mut ranked: Vec<(usize, &Arc<Pod>)> = pods.iter().map(|p| (rank(p), p)).collect();
    ranked.sort_by(|(ra, a), (rb, b)| deletion_order(a, *ra, b, *rb, now));
    ranked
        .into_iter()
        .take(count)
        .map(|(_, p)| p.clone())
        .collect()
}

/// The status the pods call for (calculateStatus); `failure` is the error of this reconcile's
/// creations or deletions, if any.
pub fn calculate_status(
    rs: &ReplicaSet,
    pods: &[Arc<Pod>],
    failure: Option<&str>,
    now: Timestamp,
) -> ReplicaSetStatus {
    let mut status = rs.status.clone().unwrap_or_default();
    let spec = rs.spec.clone().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let (mut labeled, mut ready, mut available) = (0, 0, 0);
    for pod in pods {
        let labels = pod.metadata.labels.as_ref();
        if template_labels
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        {
            labeled += 1;
        }
        if is_pod_ready(pod) {
            ready += 1;
            if is_pod_available(pod, min_ready, now) {
                available += 1;
            }
        }
    }
    let has_failure = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "ReplicaFailure");
    match failure {
        Some(message) if !has_failure => {
            let desired = spec.replicas.unwrap_or(1) as usize;
            let reason = match pods.len().cmp(&desired) {
                Ordering::Less => "FailedCreate",
                Ordering::Greater => "FailedDelete",
                Ordering::Equal => "",
            };
            status
                .conditions
                .get_or_insert_with(Vec::new)
                .push(ReplicaSetCondition {
                    type_: "ReplicaFailure".into(),
                    status: "True".into(),
                    reason: Some(reason.into()),
                    message: Some(message.into()),
                    last_transition_time: Some(Time(now)),
                });
        }
        None if has_failure => {
            if let Some(conditions) = status.conditions.as_mut() {
                conditions.retain(|c| c.type_ != "ReplicaFailure");
            }
        }
        _ => {}
    }
    status.replicas = pods.len() as i32;
    status.fully_labeled_replicas = Some(labeled);
    status.ready_replicas = Some(ready);
    status.available_replicas = Some(available);
    status
}

/// Whether two statuses agree on what upstream compares (zero and absent are the same).
pub fn same_status(a: &ReplicaSetStatus, b: &ReplicaSetStatus) -> bool {
    let n = |v: Option<i32>| v.unwrap_or(0);
    let conditions = |s: &ReplicaSetStatus| s.conditions.clone().unwrap_or_default();
    a.replicas == b.replicas
        && n(a.fully_labeled_replicas) == n(b.fully_labeled_replicas)
        && n(a.ready_replicas) == n(b.ready_replicas)
        && n(a.available_replicas) == n(b.available_replicas)
        && a.observed_generation.unwrap_or(0) == b.observed_generation.unwrap_or(0)
        && conditions(a) == conditions(b)
}

/// A pod for `rs` from its template (controller.GetPodFromTemplate).
pub fn pod_from_template(rs: &ReplicaSet) -> Result<Pod, String> {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    if meta.labels.as_ref().is_none_or(|l| l.is_empty()) {
        return Err("unable to create pods, no labels".into());
    }
    let name = rs.metadata.name.as_deref().unwrap_or_default();
    Ok(Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: rs.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![new_controller_ref("ReplicaSet", &rs.metadata)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    })
}

// ---------------------------------------------------------------------------------------------
// The controller
// ---------------------------------------------------------------------------------------------

/// Registers the controller's informer callbacks and spawns its workers.
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) {
    let queue = WorkQueue::new();
    let controller = Arc::new(ReplicaSetController::new(ctx.clone()));
    controller.watch(&queue);
    tasks.spawn(runtime::run(controller, queue, ctx.config.concurrent_syncs));
}

pub struct ReplicaSetController {
    ctx: Context,
    expectations: Expectations,
    /// Namespace → keys of the pods with no controller: the adoption candidates.
    orphans: Mutex<HashMap<String, BTreeSet<Key>>>,
}

impl ReplicaSetController {
    pub fn new(ctx: Context) -> Self {
        ReplicaSetController {
            ctx,
            expectations: Expectations::default(),
            orphans: Mutex::default(),
        }
    }

    /// Maps pod and ReplicaSet changes to ReplicaSet keys on `queue`.
    pub fn watch(self: &Arc<Self>, queue: &WorkQueue) {
        let this = self.clone();
        let q = queue.clone();
        self.ctx
            .informers
            .replica_sets
            .on_change(move |change| match change {
                Change::Applied { new, .. } => q.add(key_of(&new.metadata)),
                Change::Deleted(old) => {
                    let key = key_of(&old.metadata);
                    this.expectations.forget(&key);
                    q.add(key);
                }
            });
        let this = self.clone();
        let q = queue.clone();
        self.ctx.informers.pods.on_change(move |change| {
            this.index_orphan(change);
            match change {
                Change::Applied { old: None, new } => this.pod_added(new, &q),
                Change::Applied {
                    old: Some(old),
                    new,
                } => this.pod_updated(old, new, &q),
                Change::Deleted(old) => this.pod_deleted(old, &q),
            }
        });
    }

    fn orphans(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeSet<Key>>> {
        self.orphans.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn index_orphan(&self, change: &Change<'_, Pod>) {
        let pod = change.object();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let key = key_of(&pod.metadata);
        let mut orphans = self.orphans();
        let orphan =
            matches!(change, Change::Applied { .. }) && controller_ref(&pod.metadata).is_none();
        if orphan {
            orphans.entry(ns).or_default().insert(key);
        } else if let Some(keys) = orphans.get_mut(&ns) {
            keys.remove(&key);
            if keys.is_empty() {
                orphans.remove(&ns);
            }
        }
    }

    /// The cached ReplicaSet a controller reference points to (kind and UID must match).
    fn resolve(&self, namespace: Option<&str>, r: &OwnerReference) -> Option<Key> {
        if r.kind != "ReplicaSet" {
            return None;
        }
        let rs = self.ctx.informers.replica_sets.get_in(namespace, &r.name)?;
        (rs.metadata.uid.as_deref() == Some(r.uid.as_str())).then(|| key_of(&rs.metadata))
    }

    /// ReplicaSets in the pod's namespace whose selector matches it.
    fn matching(&self, pod: &Pod) -> Vec<Key> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        self.ctx
            .informers
            .replica_sets
            .list_in(ns)
            .iter()
            .filter(|rs| {
                Selector::new(rs.spec.as_ref().map(|s| &s.selector))
                    .is_ok_and(|s| s.matches(pod.metadata.labels.as_ref()))
            })
            .map(|rs| key_of(&rs.metadata))
            .collect()
    }

    fn pod_added(&self, pod: &Pod, queue: &WorkQueue) {
        if pod.metadata.deletion_timestamp.is_some() {
            return self.pod_deleted(pod, queue);
        }
        let ns = pod.metadata.namespace.as_deref();
        match controller_ref(&pod.metadata) {
            Some(r) => {
                if let Some(key) = self.resolve(ns, r) {
                    self.expectations.creation_observed(&key);
                    queue.add(key);
                }
            }
            None => self.matching(pod).into_iter().for_each(|k| queue.add(k)),
        }
    }

    fn pod_updated(&self, old: &Pod, cur: &Pod, queue: &WorkQueue) {
        if old.metadata.resource_version.is_some()
            && old.metadata.resource_version == cur.metadata.resource_version
        {
            return;
        }
        let labels_changed = old.metadata.labels != cur.metadata.labels;
        if cur.metadata.deletion_timestamp.is_some() {
            self.pod_deleted(cur, queue);
            if labels_changed {
                self.pod_deleted(old, queue);
            }
            return;
        }
        let ns = cur.metadata.namespace.as_deref();
        let (old_ref, cur_ref) = (controller_ref(&old.metadata), controller_ref(&cur.metadata));
        let ref_changed = old_ref != cur_ref;
        if let (true, Some(r)) = (ref_changed, old_ref) {
            if let Some(key) = self.resolve(ns, r) {
                queue.add(key);
            }
        }
        match cur_ref {
            Some(r) => {
                let Some(key) = self.resolve(ns, r) else {
                    return;
                };
                // A pod that just became ready becomes available minReadySeconds later.
                let min_ready = self
                    .ctx
                    .informers
                    .replica_sets
                    .get(&key)
                    .and_then(|rs| rs.spec.as_ref()?.min_ready_seconds)
                    .unwrap_or(0);
                if min_ready > 0 && !is_pod_ready(old) && is_pod_ready(cur) {
                    let delay = Duration::from_secs(min_ready as u64 + 1);
                    queue.add_after(key.clone(), delay);
                }
                queue.add(key);
            }
            None if labels_changed || ref_changed => {
                self.matching(cur).into_iter().for_each(|k| queue.add(k))
            }
            None => {}
        }
    }

    fn pod_deleted(&self, pod: &Pod, queue: &WorkQueue) {
        let Some(r) = controller_ref(&pod.metadata) else {
            return;
        };
        if let Some(key) = self.resolve(pod.metadata.namespace.as_deref(), r) {
            self.expectations
                .deletion_observed(&key, &key_of(&pod.metadata));
            queue.add(key);
        }
    }

    /// Active pods this ReplicaSet controls or might adopt.
    fn candidate_pods(&self, rs: &ReplicaSet) -> Vec<Arc<Pod>> {
        let pods = &self.ctx.informers.pods;
        let uid = rs.metadata.uid.as_deref().unwrap_or_default();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let owned = pods.owned_by(uid);
        let ns = rs.metadata.namespace.clone().unwrap_or_default();
        let orphan_keys: Vec<Key> = self
            .orphans()
            .get(&ns)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default();
        let orphans = orphan_keys.iter().filter_map(|k| pods.get(k));
        for pod in owned.into_iter().chain(orphans) {
            if is_pod_active(&pod) && seen.insert(key_of(&pod.metadata)) {
                out.push(pod);
            }
        }
        out
    }

    /// The active pods of every ReplicaSet with the same controller as `rs` (for ranking).
    fn related_pods(&self, rs: &ReplicaSet) -> Vec<Arc<Pod>> {
        let Some(owner) = controller_ref(&rs.metadata) else {
            return Vec::new();
        };
        let siblings = self.ctx.informers.replica_sets.owned_by(&owner.uid);
        siblings
            .iter()
            .filter(|s| controller_ref(&s.metadata).is_some_and(|r| r.uid == owner.uid))
            .flat_map(|s| {
                let uid = s.metadata.uid.clone().unwrap_or_default();
                self.ctx
                    .informers
                    .pods
                    .owned_by(&uid)
                    .into_iter()
                    .filter(move |p| controller_ref(&p.metadata).is_some_and(|r| r.uid == uid))
            })
            .collect()
    }

    /// Creates or deletes pods toward `spec.replicas` (manageReplicas).
    async fn manage_replicas(
        &self,
        key: &str,
        rs: &ReplicaSet,
        pods: &[Arc<Pod>],
    ) -> Result<(), Error> {
        let desired = rs
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1)
            .max(0) as usize;
        match pods.len().cmp(&desired) {
            Ordering::Equal => Ok(()),
            Ordering::Less => {
                let count = (desired - pods.len()).min(BURST_REPLICAS);
                tracing::debug!(key, need = desired, creating = count, "too few replicas");
                self.expectations.expect_creations(key, count);
                let (created, result) = self.create_pods(rs, count).await;
                // The informer will never see the creations that were not made.
                for _ in created..count {
                    self.expectations.creation_observed(key);
                }
                result
            }
            Ordering::Greater => {
                let count = (pods.len() - desired).min(BURST_REPLICAS);
                tracing::debug!(key, need = desired, deleting = count, "too many replicas");
                let related = self.related_pods(rs);
                let victims = pods_to_delete(pods, &related, count, now());
                self.expectations
                    .expect_deletions(key, victims.iter().map(|p| key_of(&p.metadata)));
                self.delete_pods(key, rs, &victims).await
            }
        }
    }

    /// Creates `count` pods in slow-start batches; answers how many were created.
    async fn create_pods(&self, rs: &ReplicaSet, count: usize) -> (usize, Result<(), Error>) {
        let pod = match pod_from_template(rs) {
            Ok(pod) => pod,
            Err(message) => {
                self.ctx.events.record(
                    rs,
                    EventType::Warning,
                    "FailedCreate",
                    format!("Error creating: {message}"),
                );
                let object = format!("replicaset {}", key_of(&rs.metadata));
                return (0, Err(Error::Invalid { object, message }));
            }
        };
        let mut created = 0;
        for batch in slow_start_batches(count) {
            let calls = (0..batch).map(|_| self.create_pod(rs, &pod));
            let results = futures::future::join_all(calls).await;
            created += results.iter().filter(|r| r.is_ok()).count();
            if let Some(e) = results.into_iter().find_map(Result::err) {
                return (created, Err(e));
            }
        }
        (created, Ok(()))
    }

    async fn create_pod(&self, rs: &ReplicaSet, pod: &Pod) -> Result<(), Error> {
        match self.ctx.api.create(pod).await {
            Ok(created) => {
                let name = created.metadata.name.unwrap_or_default();
                self.ctx.events.record(
                    rs,
                    EventType::Normal,
                    "SuccessfulCreate",
                    format!("Created pod: {name}"),
                );
                Ok(())
            }
            Err(e) => {
                let message = error_message(&e);
                // In a terminating namespace every creation fails; that is not news.
                if !message.contains("being terminated") {
                    self.ctx.events.record(
                        rs,
                        EventType::Warning,
                        "FailedCreate",
                        format!("Error creating: {message}"),
                    );
                }
                Err(e.into())
            }
        }
    }

    async fn delete_pods(
        &self,
        key: &str,
        rs: &ReplicaSet,
        victims: &[Arc<Pod>],
    ) -> Result<(), Error> {
        let calls = victims.iter().map(|pod| async move {
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            let ns = pod.metadata.namespace.as_deref();
            match self
                .ctx
                .api
                .delete::<Pod>(ns, name, &delete_options(None))
                .await
            {
                Ok(()) => {
                    self.ctx.events.record(
                        rs,
                        EventType::Normal,
                        "SuccessfulDelete",
                        format!("Deleted pod: {name}"),
                    );
                    Ok(())
                }
                Err(e) => {
                    // The informer will never see this deletion.
                    self.expectations
                        .deletion_observed(key, &key_of(&pod.metadata));
                    self.ctx.events.record(
                        rs,
                        EventType::Warning,
                        "FailedDelete",
                        format!("Error deleting: {}", error_message(&e)),
                    );
                    Err(Error::from(e))
                }
            }
        });
        let results = futures::future::join_all(calls).await;
        results.into_iter().find(Result::is_err).unwrap_or(Ok(()))
    }

    /// Writes `status` through the status subresource when it differs.
    async fn write_status(
        &self,
        rs: &ReplicaSet,
        mut status: ReplicaSetStatus,
    ) -> Result<(), Error> {
        let generation = rs.metadata.generation.unwrap_or(0);
        let current = rs.status.clone().unwrap_or_default();
        status.observed_generation = Some(generation);
        if same_status(&current, &status) {
            return Ok(());
        }
        let mut updated = rs.clone();
        updated.status = Some(status);
        self.ctx.api.replace_status(&updated).await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Reconciler for ReplicaSetController {
    fn name(&self) -> &'static str {
        "replicaset"
    }

    async fn reconcile(&self, key: &str) -> Result<Action, Error> {
        let Some(rs) = self.ctx.informers.replica_sets.get(key) else {
            self.expectations.forget(key);
            return Ok(Action::Done);
        };
        let needs_sync = self.expectations.satisfied(key, Instant::now());
        let spec = rs.spec.clone().unwrap_or_default();
        let selector = match Selector::new(Some(&spec.selector)) {
            Ok(selector) => selector,
            Err(message) => {
                // Retrying will not help; a fix to the object requeues it.
                self.ctx.events.record(
                    &*rs,
                    EventType::Warning,
                    "InvalidSelector",
                    message.clone(),
                );
                tracing::warn!(key, message, "replicaset has an invalid selector");
                return Ok(Action::Done);
            }
        };
        let candidates = self.candidate_pods(&rs);
        let pods = claim_objects(&self.ctx.api, &*rs, &selector, candidates).await?;
        let mut failure = None;
        if needs_sync && rs.metadata.deletion_timestamp.is_none() {
            failure = self.manage_replicas(key, &rs, &pods).await.err();
        }
        let now = now();
        let message = failure.as_ref().map(failure_message);
        let status = calculate_status(&rs, &pods, message.as_deref(), now);
        self.write_status(&rs, status).await?;
        if let Some(e) = failure {
            return Err(e);
        }
        // Look again when the next ready pod becomes available.
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let next = pods
            .iter()
            .filter_map(|p| until_available(p, min_ready, now))
            .filter(|d| !d.is_zero())
            .min();
        Ok(match next {
            Some(delay) => Action::RequeueAfter(delay + Duration::from_secs(1)),
            None => Action::Done,
        })
    }
}

fn failure_message(e: &Error) -> String {
    match e {
        Error::Client(c) => error_message(c),
        other => other.to_string(),
    }
}
