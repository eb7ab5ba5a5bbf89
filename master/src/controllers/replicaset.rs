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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::client::RecordingClient;
    use crate::controllers::events::{drain, Record};
    use crate::controllers::Config;
    use k8s_openapi::api::apps::v1::ReplicaSetSpec;
    use k8s_openapi::api::core::v1::{
        Container, ContainerStatus, PodSpec, PodStatus, PodTemplateSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use tokio::sync::mpsc::Receiver;

    struct Fixture {
        fake: RecordingClient,
        ctx: Context,
        rx: Receiver<Record>,
        controller: Arc<ReplicaSetController>,
        queue: WorkQueue,
    }

    fn fixture() -> Fixture {
        let fake = RecordingClient::new();
        let (ctx, rx) = Context::new(Arc::new(fake.clone()), Config::default());
        let controller = Arc::new(ReplicaSetController::new(ctx.clone()));
        let queue = WorkQueue::new();
        controller.watch(&queue);
        Fixture {
            fake,
            ctx,
            rx,
            controller,
            queue,
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn ago(seconds: i64) -> Time {
        Time(Timestamp::from_second(now().as_second() - seconds).unwrap())
    }

    fn replica_set(name: &str, replicas: i32) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                generation: Some(1),
                resource_version: Some("1".into()),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: labels(&[("app", "web")]),
                    ..Default::default()
                },
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: labels(&[("app", "web"), ("tier", "front")]),
                        annotations: labels(&[("note", "kept")]),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "web".into(),
                            image: Some("nginx".into()),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                }),
                min_ready_seconds: None,
            }),
            status: None,
        }
    }

    /// A pod of `owner` (or an orphan) that is scheduled, running and ready for an hour.
    fn pod(name: &str, owner: Option<&ReplicaSet>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                resource_version: Some("1".into()),
                labels: labels(&[("app", "web"), ("tier", "front")]),
                creation_timestamp: Some(ago(3600)),
                owner_references: owner
                    .map(|rs| vec![new_controller_ref("ReplicaSet", &rs.metadata)]),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: Some(ago(3600)),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn with(mut p: Pod, f: impl FnOnce(&mut Pod)) -> Pod {
        f(&mut p);
        p
    }

    fn unscheduled(p: &mut Pod) {
        p.spec.as_mut().unwrap().node_name = None;
        pending(p);
    }
    fn pending(p: &mut Pod) {
        let status = p.status.as_mut().unwrap();
        status.phase = Some("Pending".into());
        not_ready(p);
    }
    fn not_ready(p: &mut Pod) {
        p.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "False".into();
    }

    fn events(rx: &mut Receiver<Record>) -> Vec<String> {
        drain(rx)
            .into_iter()
            .map(|r| format!("{} {}", r.reason, r.message))
            .collect()
    }

    #[tokio::test]
    async fn creates_missing_pods_from_the_template_in_slow_start_batches() {
        let mut f = fixture();
        let rs = replica_set("web", 3);
        f.ctx.informers.replica_sets.apply(rs);
        let action = f.controller.reconcile("ns/web").await.unwrap();
        assert_eq!(action, Action::Done);
        let calls = f.fake.calls();
        let creates: Vec<_> = calls.iter().filter(|c| c.verb == "create").collect();
        assert_eq!(creates.len(), 3, "{:?}", f.fake.short_calls());
        let body = &creates[0].body;
        assert_eq!(creates[0].path, "/api/v1/namespaces/ns/pods");
        assert_eq!(body["metadata"]["generateName"], "web-");
        assert_eq!(body["metadata"]["namespace"], "ns");
        assert_eq!(
            body["metadata"]["labels"],
            json!({"app": "web", "tier": "front"})
        );
        assert_eq!(body["metadata"]["annotations"], json!({"note": "kept"}));
        assert_eq!(
            body["metadata"]["ownerReferences"],
            json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "uid-web",
                    "controller": true, "blockOwnerDeletion": true}])
        );
        assert_eq!(body["spec"]["containers"][0]["image"], "nginx");
        // No pods were seen yet: the status says 0, for generation 1.
        let status = calls.last().unwrap();
        assert_eq!(
            status.short(),
            "update /apis/apps/v1/namespaces/ns/replicasets/web/status"
        );
        assert_eq!(status.body["status"]["replicas"], 0);
        assert_eq!(status.body["status"]["observedGeneration"], 1);
        let events = events(&mut f.rx);
        assert_eq!(events.len(), 3);
        assert!(
            events
                .iter()
                .all(|e| e.starts_with("SuccessfulCreate Created pod: web-")),
            "{events:?}"
        );
    }

    #[tokio::test]
    async fn expectations_hold_creations_until_the_informer_sees_them() {
        let f = fixture();
        let rs = replica_set("web", 3);
        f.ctx.informers.replica_sets.apply(rs.clone());
        f.controller.reconcile("ns/web").await.unwrap();
        assert_eq!(
            f.fake.calls().iter().filter(|c| c.verb == "create").count(),
            3
        );
        // The cache still shows no pods: a second reconcile must not create three more.
        f.fake.clear();
        f.controller.reconcile("ns/web").await.unwrap();
        assert!(
            f.fake.calls().iter().all(|c| c.verb != "create"),
            "{:?}",
            f.fake.short_calls()
        );
        // Two of three seen: still waiting.
        f.ctx.informers.pods.apply(pod("web-a", Some(&rs)));
        f.ctx.informers.pods.apply(pod("web-b", Some(&rs)));
        f.controller.reconcile("ns/web").await.unwrap();
        assert!(f.fake.calls().iter().all(|c| c.verb != "create"));
        // All seen; one is then deleted by someone else: one replacement.
        f.ctx.informers.pods.apply(pod("web-c", Some(&rs)));
        f.ctx.informers.pods.delete(&pod("web-c", Some(&rs)));
        f.fake.clear();
        f.controller.reconcile("ns/web").await.unwrap();
        let creates = f.fake.calls().iter().filter(|c| c.verb == "create").count();
        assert_eq!(creates, 1, "{:?}", f.fake.short_calls());
        assert_eq!(
            f.queue.try_next().as_deref(),
            Some("ns/web"),
            "pod events queue the owner"
        );
    }

    #[tokio::test]
    async fn a_failed_creation_stops_the_batch_and_is_not_expected() {
        let mut f = fixture();
        f.ctx.informers.replica_sets.apply(replica_set("web", 4));
        f.fake
            .fail_next("/api/v1/namespaces/ns/pods", 403, "Forbidden");
        let err = f.controller.reconcile("ns/web").await.unwrap_err();
        assert!(err.to_string().contains("403"), "{err}");
        let calls = f.fake.short_calls();
        // The first batch of one failed: nothing more was tried, the failure is in the status.
        assert_eq!(
            calls.iter().filter(|c| c.starts_with("create")).count(),
            1,
            "{calls:?}"
        );
        let status = f.fake.calls().last().unwrap().body["status"].clone();
        assert_eq!(status["conditions"][0]["type"], "ReplicaFailure");
        assert_eq!(status["conditions"][0]["reason"], "FailedCreate");
        assert_eq!(
            events(&mut f.rx),
            vec!["FailedCreate Error creating: injected by the test"]
        );
        // Nothing is pending: the retry creates all four.
        f.fake.clear();
        f.controller.reconcile("ns/web").await.unwrap();
        assert_eq!(
            f.fake.calls().iter().filter(|c| c.verb == "create").count(),
            4
        );
    }

    #[tokio::test]
    async fn surplus_pods_are_deleted_least_established_first() {
        let mut f = fixture();
        let rs = replica_set("web", 2);
        f.ctx.informers.replica_sets.apply(rs.clone());
        let pods = [
            pod("ready-old", Some(&rs)),
            with(pod("unscheduled", Some(&rs)), unscheduled),
            with(pod("not-ready", Some(&rs)), not_ready),
            with(pod("ready-new", Some(&rs)), |p| {
                p.metadata.creation_timestamp = Some(ago(10));
                p.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_transition_time =
                    Some(ago(5));
            }),
            with(pod("done", Some(&rs)), |p| {
                p.status.as_mut().unwrap().phase = Some("Succeeded".into())
            }),
        ];
        for p in pods {
            f.ctx.informers.pods.apply(p);
        }
        f.controller.reconcile("ns/web").await.unwrap();
        let deletes: Vec<String> = f
            .fake
            .short_calls()
            .into_iter()
            .filter(|c| c.starts_with("delete"))
            .collect();
        assert_eq!(
            deletes,
            vec![
                "delete /api/v1/namespaces/ns/pods/unscheduled",
                "delete /api/v1/namespaces/ns/pods/not-ready"
            ]
        );
        let events = events(&mut f.rx);
        assert!(
            events.contains(&"SuccessfulDelete Deleted pod: unscheduled".to_string()),
            "{events:?}"
        );
        // The two deletions are expected: nothing more happens until they are seen.
        f.fake.clear();
        f.controller.reconcile("ns/web").await.unwrap();
        assert!(f
            .fake
            .short_calls()
            .iter()
            .all(|c| !c.starts_with("delete")));
        let doomed = with(pod("unscheduled", Some(&rs)), |p| {
            p.metadata.resource_version = Some("2".into())
        });
        f.ctx.informers.pods.delete(&doomed);
        f.ctx.informers.pods.delete(&pod("not-ready", Some(&rs)));
        assert!(f
            .controller
            .expectations
            .satisfied("ns/web", Instant::now()));
    }

    #[test]
    fn deletion_order_follows_upstream_ranking() {
        let base = pod("base", None);
        let now = now();
        // (name, pod a, rank a, pod b, rank b, expected order of a vs b)
        let cases: Vec<(&str, Pod, usize, Pod, usize, Ordering)> = vec![
            (
                "unscheduled first",
                with(base.clone(), unscheduled),
                0,
                base.clone(),
                0,
                Ordering::Less,
            ),
            (
                "pending before running",
                with(base.clone(), pending),
                0,
                base.clone(),
                0,
                Ordering::Less,
            ),
            (
                "unknown between pending and running",
                with(base.clone(), |p| {
                    p.status.as_mut().unwrap().phase = Some("Unknown".into())
                }),
                0,
                with(base.clone(), pending),
                0,
                Ordering::Greater,
            ),
            (
                "not ready first",
                with(base.clone(), not_ready),
                0,
                base.clone(),
                0,
                Ordering::Less,
            ),
            (
                "lower deletion cost first",
                with(base.clone(), |p| {
                    p.metadata.annotations = labels(&[(POD_DELETION_COST, "-5")])
                }),
                0,
                base.clone(),
                0,
                Ordering::Less,
            ),
            (
                "doubled up first",
                base.clone(),
                3,
                base.clone(),
                1,
                Ordering::Less,
            ),
            (
                "ready more recently first",
                with(base.clone(), |p| {
                    p.status.as_mut().unwrap().conditions.as_mut().unwrap()[0]
                        .last_transition_time = Some(ago(10))
                }),
                0,
                base.clone(),
                0,
                Ordering::Less,
            ),
            (
                "more restarts first",
                with(base.clone(), |p| {
                    p.status.as_mut().unwrap().container_statuses = Some(vec![ContainerStatus {
                        name: "web".into(),
                        restart_count: 4,
                        ..Default::default()
                    }])
                }),
                0,
                base.clone(),
                0,
                Ordering::Less,
            ),
            (
                "newer first",
                with(base.clone(), |p| {
                    p.metadata.creation_timestamp = Some(ago(30))
                }),
                0,
                base.clone(),
                0,
                Ordering::Less,
            ),
            (
                "unknown creation first",
                with(base.clone(), |p| p.metadata.creation_timestamp = None),
                0,
                base.clone(),
                0,
                Ordering::Less,
            ),
            ("same", base.clone(), 0, base.clone(), 0, Ordering::Equal),
        ];
        for (name, a, ra, b, rb, expected) in cases {
            assert_eq!(deletion_order(&a, ra, &b, rb, now), expected, "{name}");
            if expected != Ordering::Equal {
                assert_eq!(
                    deletion_order(&b, rb, &a, ra, now),
                    expected.reverse(),
                    "{name} (swapped)"
                );
            }
        }
    }

    #[tokio::test]
    async fn adopts_matching_orphans_and_releases_pods_that_stopped_matching() {
        let f = fixture();
        let rs = replica_set("web", 2);
        f.ctx.informers.replica_sets.apply(rs.clone());
        // The adoption re-reads the ReplicaSet past the cache first.
        f.fake.set_object(
            "/apis/apps/v1/namespaces/ns/replicasets/web",
            serde_json::to_value(&rs).unwrap(),
        );
        f.ctx.informers.pods.apply(pod("orphan", None));
        f.ctx.informers.pods.apply(with(pod("other", None), |p| {
            p.metadata.labels = labels(&[("app", "db")])
        }));
        f.ctx
            .informers
            .pods
            .apply(with(pod("strayed", Some(&rs)), |p| {
                p.metadata.labels = labels(&[("app", "db")])
            }));
        f.ctx.informers.pods.apply(pod("kept", Some(&rs)));
        f.controller.reconcile("ns/web").await.unwrap();
        let calls = f.fake.calls();
        let patches: Vec<_> = calls.iter().filter(|c| c.verb == "patch").collect();
        assert_eq!(patches.len(), 2, "{:?}", f.fake.short_calls());
        let patch = |name: &str| {
            let path = format!("/api/v1/namespaces/ns/pods/{name}");
            patches
                .iter()
                .find(|c| c.path == path)
                .map(|c| c.body["metadata"]["ownerReferences"].clone())
        };
        let adopted = patch("orphan").expect("the orphan is adopted");
        assert_eq!(adopted[0]["uid"], "uid-web");
        assert_eq!(adopted[0]["controller"], true);
        let released = patch("strayed").expect("the strayed pod is released");
        assert_eq!(released, json!([{"$patch": "delete", "uid": "uid-web"}]));
        // kept + orphan are the two replicas: nothing to create.
        assert!(calls.iter().all(|c| c.verb != "create"));
        assert_eq!(calls.last().unwrap().body["status"]["replicas"], 2);
    }

    #[tokio::test]
    async fn a_replica_set_being_deleted_adopts_and_creates_nothing() {
        let f = fixture();
        let rs = with_rs(replica_set("web", 3), |rs| {
            rs.metadata.deletion_timestamp = Some(ago(1))
        });
        f.ctx.informers.replica_sets.apply(rs);
        f.ctx.informers.pods.apply(pod("orphan", None));
        f.controller.reconcile("ns/web").await.unwrap();
        assert_eq!(
            f.fake.short_calls(),
            vec!["update /apis/apps/v1/namespaces/ns/replicasets/web/status"]
        );
    }

    fn with_rs(mut rs: ReplicaSet, f: impl FnOnce(&mut ReplicaSet)) -> ReplicaSet {
        f(&mut rs);
        rs
    }

    #[tokio::test]
    async fn status_counts_ready_and_available_and_requeues_for_min_ready_seconds() {
        let f = fixture();
        let rs = with_rs(replica_set("web", 3), |rs| {
            rs.spec.as_mut().unwrap().min_ready_seconds = Some(30)
        });
        f.ctx.informers.replica_sets.apply(rs.clone());
        f.ctx.informers.pods.apply(pod("available", Some(&rs)));
        f.ctx
            .informers
            .pods
            .apply(with(pod("just-ready", Some(&rs)), |p| {
                p.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_transition_time =
                    Some(ago(10))
            }));
        f.ctx
            .informers
            .pods
            .apply(with(pod("mislabeled", Some(&rs)), |p| {
                p.metadata.labels = labels(&[("app", "web")]);
                not_ready(p);
            }));
        let action = f.controller.reconcile("ns/web").await.unwrap();
        let status = f.fake.calls().last().unwrap().body["status"].clone();
        assert_eq!(status["replicas"], 3);
        assert_eq!(status["fullyLabeledReplicas"], 2);
        assert_eq!(status["readyReplicas"], 2);
        assert_eq!(status["availableReplicas"], 1);
        // just-ready becomes available 20 s from now; look again just after.
        let Action::RequeueAfter(delay) = action else {
            panic!("expected a requeue, got {action:?}");
        };
        assert!(
            delay > Duration::from_secs(20) && delay <= Duration::from_secs(22),
            "{delay:?}"
        );
        // The same status again is not written.
        let mut written = rs.clone();
        written.status = serde_json::from_value(status).unwrap();
        f.ctx.informers.replica_sets.apply(written);
        f.fake.clear();
        f.controller.reconcile("ns/web").await.unwrap();
        assert!(f.fake.calls().is_empty(), "{:?}", f.fake.short_calls());
    }

    #[tokio::test]
    async fn a_missing_replica_set_needs_nothing() {
        let f = fixture();
        assert_eq!(
            f.controller.reconcile("ns/gone").await.unwrap(),
            Action::Done
        );
        assert!(f.fake.calls().is_empty());
    }

    #[test]
    fn selectors_match_like_upstream() {
        let expr = |key: &str, op: &str, values: &[&str]| LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        };
        let selector =
            |labels_: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>| LabelSelector {
                match_labels: (!labels_.is_empty()).then(|| labels(labels_).unwrap()),
                match_expressions: (!exprs.is_empty()).then_some(exprs),
            };
        let web = labels(&[("app", "web"), ("env", "prod")]);
        let cases: Vec<(&str, Option<LabelSelector>, Result<bool, ()>)> = vec![
            ("missing selects nothing", None, Ok(false)),
            (
                "empty selects everything",
                Some(selector(&[], vec![])),
                Ok(true),
            ),
            (
                "labels match",
                Some(selector(&[("app", "web")], vec![])),
                Ok(true),
            ),
            (
                "labels differ",
                Some(selector(&[("app", "db")], vec![])),
                Ok(false),
            ),
            (
                "in",
                Some(selector(&[], vec![expr("env", "In", &["prod", "qa"])])),
                Ok(true),
            ),
            (
                "notin",
                Some(selector(&[], vec![expr("env", "NotIn", &["prod"])])),
                Ok(false),
            ),
            (
                "notin absent",
                Some(selector(&[], vec![expr("x", "NotIn", &["1"])])),
                Ok(true),
            ),
            (
                "exists",
                Some(selector(&[], vec![expr("env", "Exists", &[])])),
                Ok(true),
            ),
            (
                "does not exist",
                Some(selector(&[], vec![expr("env", "DoesNotExist", &[])])),
                Ok(false),
            ),
            (
                "in without values",
                Some(selector(&[], vec![expr("env", "In", &[])])),
                Err(()),
            ),
            (
                "exists with values",
                Some(selector(&[], vec![expr("env", "Exists", &["a"])])),
                Err(()),
            ),
            (
                "bad operator",
                Some(selector(&[], vec![expr("env", "Near", &["a"])])),
                Err(()),
            ),
        ];
        for (name, sel, expected) in cases {
            let got = Selector::new(sel.as_ref())
                .map(|s| s.matches(web.as_ref()))
                .map_err(|_| ());
            assert_eq!(got, expected, "{name}");
        }
    }

    #[test]
    fn claims_follow_the_controller_ref_manager() {
        let owner = replica_set("web", 1).metadata;
        let deleting = ObjectMeta {
            deletion_timestamp: Some(ago(1)),
            ..owner.clone()
        };
        let ours = pod("a", Some(&replica_set("web", 1))).metadata;
        let theirs = pod("b", Some(&replica_set("other", 1))).metadata;
        let orphan = pod("c", None).metadata;
        let orphan_elsewhere = ObjectMeta {
            namespace: Some("other".into()),
            ..orphan.clone()
        };
        let cases = [
            ("ours, matching", &owner, &ours, true, Claim::Owned),
            ("ours, not matching", &owner, &ours, false, Claim::Release),
            (
                "ours, owner deleting",
                &deleting,
                &ours,
                false,
                Claim::Ignore,
            ),
            (
                "ours, matching, owner deleting",
                &deleting,
                &ours,
                true,
                Claim::Owned,
            ),
            ("someone else's", &owner, &theirs, true, Claim::Ignore),
            ("orphan, matching", &owner, &orphan, true, Claim::Adopt),
            (
                "orphan, not matching",
                &owner,
                &orphan,
                false,
                Claim::Ignore,
            ),
            (
                "orphan, owner deleting",
                &deleting,
                &orphan,
                true,
                Claim::Ignore,
            ),
            (
                "orphan in another namespace",
                &owner,
                &orphan_elsewhere,
                true,
                Claim::Ignore,
            ),
        ];
        for (name, owner, obj, matches, expected) in cases {
            assert_eq!(claim(owner, obj, matches), expected, "{name}");
        }
    }

    #[test]
    fn slow_start_doubles() {
        let cases: &[(usize, &[usize])] = &[
            (0, &[]),
            (1, &[1]),
            (3, &[1, 2]),
            (10, &[1, 2, 4, 3]),
            (500, &[1, 2, 4, 8, 16, 32, 64, 128, 245]),
        ];
        for (count, expected) in cases {
            assert_eq!(slow_start_batches(*count), *expected, "{count}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn expectations_expire() {
        let e = Expectations::default();
        e.expect_creations("k", 2);
        assert!(!e.satisfied("k", Instant::now()));
        e.creation_observed("k");
        e.creation_observed("k");
        assert!(e.satisfied("k", Instant::now()));
        e.expect_deletions("k", ["ns/a".to_string()]);
        e.deletion_observed("k", "ns/b");
        assert!(
            !e.satisfied("k", Instant::now()),
            "another pod's deletion does not count"
        );
        tokio::time::advance(EXPECTATIONS_TIMEOUT + Duration::from_secs(1)).await;
        assert!(e.satisfied("k", Instant::now()));
    }
}
