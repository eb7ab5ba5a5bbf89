//! The Deployment controller (kube-controller-manager's `deployment`): rolls a Deployment's pod
//! template out through ReplicaSets named `<deployment>-<pod-template-hash>`.
//!
//! Each reconcile claims the namespace's ReplicaSets (adopting and releasing by selector),
//! splits them into the *new* one (whose template equals the Deployment's, ignoring
//! `pod-template-hash`) and the old ones, then either scales (paused, or `spec.replicas`
//! changed: proportionally across active ReplicaSets), or rolls out (`RollingUpdate` within
//! `maxSurge`/`maxUnavailable`, `Recreate` after every old pod is gone), cleans up history
//! beyond `revisionHistoryLimit`, and writes `status` with the `Available` and `Progressing`
//! conditions that `kubectl rollout status` reads.
//!
//! Rollback is client-side (`kubectl rollout undo` patches the template back); an old
//! ReplicaSet whose template matches again becomes the new one and gets the next revision.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use tokio::task::JoinSet;

use super::client::{delete_options, path_of, PatchType};
use super::replicaset::{
    claim_objects, controller_ref, error_message, new_controller_ref, now, selects_everything,
    Selector,
};
use super::runtime::{self, key_of, Change};
use super::{Action, Context, Error, EventType, Reconciler, WorkQueue};

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// The longest `revision-history` annotation kept (upstream's maxRevHistoryLengthInChars).
const MAX_REVISION_HISTORY_CHARS: usize = 2000;
/// Deployment annotations not copied to its ReplicaSets.
const ANNOTATIONS_NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

// Condition reasons, as upstream.
pub const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
pub const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
pub const RS_UPDATED: &str = "ReplicaSetUpdated";
pub const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
pub const TIMED_OUT: &str = "ProgressDeadlineExceeded";
pub const PAUSED: &str = "DeploymentPaused";
pub const RESUMED: &str = "DeploymentResumed";
pub const FAILED_RS_CREATE: &str = "ReplicaSetCreateError";
pub const MIN_AVAILABLE: &str = "MinimumReplicasAvailable";
pub const MIN_UNAVAILABLE: &str = "MinimumReplicasUnavailable";

// ---------------------------------------------------------------------------------------------
// Pure rollout math
// ---------------------------------------------------------------------------------------------

/// FNV-1a, 32 bits.
pub fn fnv32a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |hash, b| {
        (hash ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// rand.SafeEncodeString: each character mapped into an alphabet without vowels or lookalikes.
pub fn safe_encode(s: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes()
        .map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char)
        .collect()
}

/// The `pod-template-hash` of a template (controller.ComputeHash over its JSON).
pub fn compute_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(template).unwrap_or_default();
    if let Some(count) = collision_count {
        bytes.extend_from_slice(&(count as u32).to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
    }
    safe_encode(&fnv32a(&bytes).to_string())
}

/// An int or a percentage of `total`, rounded up or down (GetScaledValueFromIntOrPercent).
pub fn scaled_value(value: &IntOrString, total: i32, round_up: bool) -> Result<i32, String> {
    match value {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(s) => {
            let percent: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| {
                    format!("invalid value for IntOrString: {s:?} is not a percentage")
                })?;
            let scaled = percent * i64::from(total);
            let value = if round_up {
                (scaled + 99).div_euclid(100)
            } else {
                scaled.div_euclid(100)
            };
            Ok(value as i32)
        }
    }
}

/// `maxSurge` (rounded up) and `maxUnavailable` (rounded down) for `desired` replicas; both
/// zero becomes one unavailable (ResolveFenceposts).
pub fn resolve_fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    desired: i32,
) -> Result<(i32, i32), String> {
    let zero = IntOrString::Int(0);
    let surge = scaled_value(max_surge.unwrap_or(&zero), desired, true)?;
    let mut unavailable = scaled_value(max_unavailable.unwrap_or(&zero), desired, false)?;
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    Ok((surge, unavailable))
}

/// How a Deployment replaces pods, with its fenceposts resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Recreate,
    RollingUpdate {
        max_surge: i32,
        max_unavailable: i32,
    },
}

impl Strategy {
    /// The Deployment's strategy (MaxSurge / MaxUnavailable).
    pub fn of(d: &Deployment) -> Result<Strategy, String> {
        let spec = d.spec.clone().unwrap_or_default();
        let replicas = spec.replicas.unwrap_or(1);
        let strategy = spec.strategy.unwrap_or_default();
        match strategy.type_.as_deref() {
            Some("Recreate") => Ok(Strategy::Recreate),
            None | Some("RollingUpdate") => {
                let rolling = strategy.rolling_update.unwrap_or_default();
                let default = IntOrString::String("25%".into());
                let (max_surge, unavailable) = resolve_fenceposts(
                    Some(rolling.max_surge.as_ref().unwrap_or(&default)),
                    Some(rolling.max_unavailable.as_ref().unwrap_or(&default)),
                    replicas,
                )?;
                let max_unavailable = if replicas == 0 {
                    0
                } else {
                    unavailable.min(replicas)
                };
                Ok(Strategy::RollingUpdate {
                    max_surge,
                    max_unavailable,
                })
            }
            Some(other) => Err(format!("deployment strategy {other:?} isn't supported")),
        }
    }

    pub fn max_surge(self) -> i32 {
        match self {
            Strategy::Recreate => 0,
            Strategy::RollingUpdate { max_surge, .. } => max_surge,
        }
    }

    pub fn max_unavailable(self) -> i32 {
        match self {
            Strategy::Recreate => 0,
            Strategy::RollingUpdate {
                max_unavailable, ..
            } => max_unavailable,
        }
    }
}

/// The size the new ReplicaSet may grow to now (NewRSNewReplicas): up to `replicas + maxSurge`
/// pods in all, never past `replicas`.
pub fn new_rs_new_replicas(
    strategy: Strategy,
    replicas: i32,
    total: i32,
    new_replicas: i32,
) -> i32 {
    match strategy {
        Strategy::Recreate => replicas,
        Strategy::RollingUpdate { max_surge, .. } => {
            let max_total = replicas + max_surge;
            if total >= max_total {
                return new_replicas;
            }
            let up = (max_total - total).min(replicas - new_replicas);
            new_replicas + up
        }
    }
}

/// A ReplicaSet's size as the scale-down math sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub replicas: i32,
    pub available: i32,
}

/// New sizes of the active old ReplicaSets (oldest first) after a rolling scale-down step
/// (reconcileOldReplicaSets): unhealthy replicas go first, then healthy ones while more than
/// `replicas - maxUnavailable` stay available.
pub fn scale_down_old(replicas: i32, max_unavailable: i32, new: Size, old: &[Size]) -> Vec<i32> {
    let mut sizes: Vec<i32> = old.iter().map(|s| s.replicas).collect();
    let old_total: i32 = sizes.iter().sum();
    if old_total == 0 {
        return sizes;
    }
    let min_available = replicas - max_unavailable;
    let new_unavailable = new.replicas - new.available;
    let max_scaled_down = old_total + new.replicas - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return sizes;
    }
    // Unhealthy replicas: removing them costs no availability.
    let mut cleaned = 0;
    for (size, s) in sizes.iter_mut().zip(old) {
        if cleaned >= max_scaled_down {
            break;
        }
        if *size == 0 || s.available >= *size {
            continue;
        }
        let n = (max_scaled_down - cleaned).min(*size - s.available);
        *size -= n;
        cleaned += n;
    }
    // Healthy replicas, while the minimum stays available.
    let available: i32 = old.iter().map(|s| s.available).sum::<i32>() + new.available;
    if available <= min_available {
        return sizes;
    }
    let wanted = available - min_available;
    let mut done = 0;
    for size in sizes.iter_mut() {
        if done >= wanted {
            break;
        }
        if *size == 0 {
            continue;
        }
        let n = (*size).min(wanted - done);
        *size -= n;
        done += n;
    }
    sizes
}

/// One active ReplicaSet as proportional scaling sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub name: String,
    pub created: Option<Timestamp>,
    pub replicas: i32,
    /// The `max-replicas` annotation: the Deployment's size + surge when last scaled.
    pub max_replicas: Option<i32>,
}

/// New sizes when `spec.replicas` changed mid-rollout (the proportional part of `scale`):
/// the difference to `replicas + maxSurge` spread over active ReplicaSets in proportion to
/// their size, leftovers to the largest. `status_replicas` stands in for a missing annotation.
pub fn proportional_sizes(
    replicas: i32,
    max_surge: i32,
    status_replicas: i32,
    active: &[Share],
) -> Vec<(String, i32)> {
    let total: i32 = active.iter().map(|s| s.replicas).sum();
    let allowed = if replicas > 0 {
        replicas + max_surge
    } else {
        0
    };
    let to_add = allowed - total;
    let mut sorted: Vec<&Share> = active.iter().collect();
    let by_age = |a: &&Share, b: &&Share| (a.created, &a.name).cmp(&(b.created, &b.name));
    match to_add.cmp(&0) {
        // Larger first; on ties newer first when growing, older first when shrinking.
        Ordering::Greater => {
            sorted.sort_by(|a, b| b.replicas.cmp(&a.replicas).then_with(|| by_age(b, a)))
        }
        Ordering::Less => {
            sorted.sort_by(|a, b| b.replicas.cmp(&a.replicas).then_with(|| by_age(a, b)))
        }
        Ordering::Equal => {}
    }
    let mut added = 0;
    let mut sizes: Vec<(String, i32)> = Vec::new();
    for share in &sorted {
        let mut size = share.replicas;
        if to_add != 0 {
            let p = proportion(share, replicas, max_surge, status_replicas, to_add, added);
            size += p;
            added += p;
        }
        sizes.push((share.name.clone(), size));
    }
    if let Some(first) = sizes.first_mut() {
        if to_add != 0 {
            first.1 = (first.1 + to_add - added).max(0);
        }
    }
    sizes
}

fn proportion(
    share: &Share,
    replicas: i32,
    max_surge: i32,
    status_replicas: i32,
    to_add: i32,
    added: i32,
) -> i32 {
    if share.replicas == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let fraction = fraction(share, replicas, max_surge, status_replicas);
    let allowed = to_add - added;
    if to_add > 0 {
        fraction.min(allowed)
    } else {
        fraction.max(allowed)
    }
}

fn fraction(share: &Share, replicas: i32, max_surge: i32, status_replicas: i32) -> i32 {
    if replicas == 0 {
        return -share.replicas;
    }
    let max_now = i64::from(replicas + max_surge);
    let before = match share.max_replicas {
        Some(n) if n != 0 => n,
        _ => status_replicas,
    };
    if before == 0 {
        return 0;
    }
    let size = (i64::from(share.replicas) * max_now) as f64 / f64::from(before);
    size.round() as i32 - share.replicas
}

/// Whether two templates are equal but for the `pod-template-hash` label (EqualIgnoreHash).
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    fn strip(t: &PodTemplateSpec) -> PodTemplateSpec {
        let mut t = t.clone();
        let meta = t.metadata.get_or_insert_with(ObjectMeta::default);
        if let Some(labels) = meta.labels.as_mut() {
            labels.remove(POD_TEMPLATE_HASH);
            if labels.is_empty() {
                meta.labels = None;
            }
        }
        t
    }
    strip(a) == strip(b)
}

/// The `revision` annotation as a number (0 when missing or not a number).
pub fn revision_of(meta: &ObjectMeta) -> i64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// Sets `desired-replicas` and `max-replicas`; answers whether anything changed.
pub fn set_replicas_annotations(
    annotations: &mut BTreeMap<String, String>,
    desired: i32,
    max: i32,
) -> bool {
    let mut changed = false;
    for (key, value) in [(DESIRED_REPLICAS, desired), (MAX_REPLICAS, max)] {
        let value = value.to_string();
        if annotations.get(key) != Some(&value) {
            annotations.insert(key.into(), value);
            changed = true;
        }
    }
    changed
}

/// The new ReplicaSet's annotations (SetNewReplicaSetAnnotations): the Deployment's own
/// (some excepted), a revision raised to `new_revision` with the previous one kept in
/// `revision-history`, and for a ReplicaSet about to be created the replica annotations.
pub fn set_new_rs_annotations(
    deployment: Option<&BTreeMap<String, String>>,
    rs: &mut BTreeMap<String, String>,
    new_revision: i64,
    exists: bool,
    desired: i32,
    max: i32,
) -> bool {
    let mut changed = false;
    for (k, v) in deployment.into_iter().flatten() {
        if ANNOTATIONS_NOT_COPIED.contains(&k.as_str()) || rs.get(k) == Some(v) {
            continue;
        }
        rs.insert(k.clone(), v.clone());
        changed = true;
    }
    let old = rs.get(REVISION).cloned();
    let old_number = match old.as_deref() {
        None | Some("") => 0,
        Some(text) => match text.parse::<i64>() {
            Ok(n) => n,
            Err(_) => return false,
        },
    };
    if old_number < new_revision {
        rs.insert(REVISION.into(), new_revision.to_string());
        changed = true;
        if let Some(old) = old {
            append_history(rs, &old);
        }
    }
    if !exists && set_replicas_annotations(rs, desired, max) {
        changed = true;
    }
    changed
}

/// Appends `old` to `revision-history`, dropping the oldest entries past the length limit.
fn append_history(rs: &mut BTreeMap<String, String>, old: &str) {
    let history = rs.get(REVISION_HISTORY).cloned().unwrap_or_default();
    if history.is_empty() {
        rs.insert(REVISION_HISTORY.into(), old.to_string());
        return;
    }
    let parts: Vec<&str> = history.split(',').collect();
    let mut total = history.len() + old.len() + 1;
    let mut start = 0;
    while total > MAX_REVISION_HISTORY_CHARS && start < parts.len() {
        total -= parts[start].len() + 1;
        start += 1;
    }
    if total <= MAX_REVISION_HISTORY_CHARS {
        let mut kept = parts[start..].to_vec();
        kept.push(old);
        rs.insert(REVISION_HISTORY.into(), kept.join(","));
    }
}

pub fn condition<'a>(status: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_)
}

pub fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// SetDeploymentCondition: same status and reason keeps the old one; same status keeps its
/// transition time.
pub fn set_condition(status: &mut DeploymentStatus, mut new: DeploymentCondition) {
    if let Some(current) = condition(status, &new.type_) {
        if current.status == new.status && current.reason == new.reason {
            return;
        }
        if current.status == new.status {
            new.last_transition_time = current.last_transition_time.clone();
        }
    }
    remove_condition(status, &new.type_);
    status.conditions.get_or_insert_with(Vec::new).push(new);
}

pub fn remove_condition(status: &mut DeploymentStatus, type_: &str) {
    if let Some(conditions) = status.conditions.as_mut() {
        conditions.retain(|c| c.type_ != type_);
    }
}

fn n(v: Option<i32>) -> i32 {
    v.unwrap_or(0)
}

/// Zero as absent, as Go's `omitempty` writes it.
fn nz(v: i32) -> Option<i32> {
    (v != 0).then_some(v)
}

/// The status in canonical form (zero counts and empty lists absent), for comparisons.
pub fn canonical(status: &DeploymentStatus) -> DeploymentStatus {
    let mut s = status.clone();
    for field in [
        &mut s.replicas,
        &mut s.updated_replicas,
        &mut s.ready_replicas,
        &mut s.available_replicas,
        &mut s.unavailable_replicas,
        &mut s.terminating_replicas,
    ] {
        *field = field.filter(|v| *v != 0);
    }
    s.observed_generation = s.observed_generation.filter(|g| *g != 0);
    s.conditions = s.conditions.filter(|c| !c.is_empty());
    s
}

/// DeploymentComplete: every replica updated and available, and the spec observed.
pub fn deployment_complete(replicas: i32, generation: i64, status: &DeploymentStatus) -> bool {
    n(status.updated_replicas) == replicas
        && n(status.replicas) == replicas
        && n(status.available_replicas) == replicas
        && status.observed_generation.unwrap_or(0) >= generation
}

/// DeploymentProgressing: more updated, ready or available replicas, or fewer old ones.
pub fn deployment_progressing(old: &DeploymentStatus, new: &DeploymentStatus) -> bool {
    let old_old = n(old.replicas) - n(old.updated_replicas);
    let new_old = n(new.replicas) - n(new.updated_replicas);
    n(new.updated_replicas) > n(old.updated_replicas)
        || new_old < old_old
        || n(new.ready_replicas) > n(old.ready_replicas)
        || n(new.available_replicas) > n(old.available_replicas)
}

/// DeploymentTimedOut: no progress reported for `deadline` seconds.
pub fn deployment_timed_out(
    deadline: Option<i32>,
    status: &DeploymentStatus,
    now: Timestamp,
) -> bool {
    let Some(deadline) = has_deadline(deadline) else {
        return false;
    };
    let Some(c) = condition(status, "Progressing") else {
        return false;
    };
    match c.reason.as_deref() {
        Some(NEW_RS_AVAILABLE) => false,
        Some(TIMED_OUT) => true,
        _ => c
            .last_update_time
            .as_ref()
            .is_some_and(|t| t.0.as_second() + i64::from(deadline) < now.as_second()),
    }
}

/// `progressDeadlineSeconds`, unless unset or "forever" (MaxInt32).
fn has_deadline(deadline: Option<i32>) -> Option<i32> {
    deadline.filter(|d| *d != i32::MAX)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn rs_status(rs: &ReplicaSet) -> (i32, i32, i32) {
    let s = rs.status.clone().unwrap_or_default();
    (s.replicas, n(s.ready_replicas), n(s.available_replicas))
}

fn annotation_i32(rs: &ReplicaSet, key: &str) -> Option<i32> {
    rs.metadata.annotations.as_ref()?.get(key)?.parse().ok()
}

fn by_creation(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    let created = |rs: &ReplicaSet| rs.metadata.creation_timestamp.as_ref().map(|t| t.0);
    (created(a), &a.metadata.name).cmp(&(created(b), &b.metadata.name))
}

// ---------------------------------------------------------------------------------------------
// The controller
// ---------------------------------------------------------------------------------------------

/// Registers the controller's informer callbacks and spawns its workers.
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) {
    let queue = WorkQueue::new();
    let controller = Arc::new(DeploymentController { ctx: ctx.clone() });
    controller.watch(&queue);
    tasks.spawn(runtime::run(controller, queue, ctx.config.concurrent_syncs));
}

pub struct DeploymentController {
    ctx: Context,
}

impl DeploymentController {
    pub fn new(ctx: Context) -> Self {
        DeploymentController { ctx }
    }

    /// Maps Deployment, ReplicaSet and (for Recreate) pod changes to Deployment keys.
    pub fn watch(self: &Arc<Self>, queue: &WorkQueue) {
        let q = queue.clone();
        self.ctx
            .informers
            .deployments
            .on_change(move |change| q.add(key_of(&change.object().metadata)));
        let this = self.clone();
        let q = queue.clone();
        self.ctx
            .informers
            .replica_sets
            .on_change(move |change| this.rs_changed(change, &q));
        let this = self.clone();
        let q = queue.clone();
        self.ctx.informers.pods.on_change(move |change| {
            if let Change::Deleted(pod) = change {
                this.pod_deleted(pod, &q);
            }
        });
    }

    /// The cached Deployment a controller reference points to (kind and UID must match).
    fn resolve(&self, namespace: Option<&str>, meta: &ObjectMeta) -> Option<Arc<Deployment>> {
        let r = controller_ref(meta).filter(|r| r.kind == "Deployment")?;
        let d = self.ctx.informers.deployments.get_in(namespace, &r.name)?;
        (d.metadata.uid.as_deref() == Some(r.uid.as_str())).then_some(d)
    }

    fn rs_changed(&self, change: &Change<'_, ReplicaSet>, queue: &WorkQueue) {
        let rs = change.object();
        let ns = rs.metadata.namespace.as_deref();
        let enqueue_owner = |meta: &ObjectMeta| {
            if let Some(d) = self.resolve(ns, meta) {
                queue.add(key_of(&d.metadata));
            }
        };
        match change {
            Change::Deleted(_) => enqueue_owner(&rs.metadata),
            Change::Applied { old, new } => {
                if let Some(old) = old {
                    if old.metadata.resource_version.is_some()
                        && old.metadata.resource_version == new.metadata.resource_version
                    {
                        return;
                    }
                    if controller_ref(&old.metadata) != controller_ref(&new.metadata) {
                        enqueue_owner(&old.metadata);
                    }
                }
                if controller_ref(&new.metadata).is_some() {
                    return enqueue_owner(&new.metadata);
                }
                let labels_changed = old.is_none_or(|o| o.metadata.labels != new.metadata.labels);
                let was_owned = old.is_some_and(|o| controller_ref(&o.metadata).is_some());
                if labels_changed || was_owned {
                    // An orphan: every Deployment that could adopt it.
                    let ns = ns.unwrap_or_default();
                    for d in self.ctx.informers.deployments.list_in(ns) {
                        let spec = d.spec.as_ref();
                        if Selector::new(spec.map(|s| &s.selector))
                            .is_ok_and(|s| s.matches(new.metadata.labels.as_ref()))
                        {
                            queue.add(key_of(&d.metadata));
                        }
                    }
                }
            }
        }
    }

    /// A Recreate rollout waits for old pods to go: each deletion may unblock it.
    fn pod_deleted(&self, pod: &Pod, queue: &WorkQueue) {
        let ns = pod.metadata.namespace.as_deref();
        let Some(r) = controller_ref(&pod.metadata).filter(|r| r.kind == "ReplicaSet") else {
            return;
        };
        let Some(rs) = self.ctx.informers.replica_sets.get_in(ns, &r.name) else {
            return;
        };
        if rs.metadata.uid.as_deref() != Some(r.uid.as_str()) {
            return;
        }
        if let Some(d) = self.resolve(ns, &rs.metadata) {
            let strategy = d.spec.as_ref().and_then(|s| s.strategy.as_ref());
            if strategy.and_then(|s| s.type_.as_deref()) == Some("Recreate") {
                queue.add(key_of(&d.metadata));
            }
        }
    }
}

#[async_trait::async_trait]
impl Reconciler for DeploymentController {
    fn name(&self) -> &'static str {
        "deployment"
    }

    async fn reconcile(&self, key: &str) -> Result<Action, Error> {
        let Some(d) = self.ctx.informers.deployments.get(key) else {
            return Ok(Action::Done);
        };
        let spec = d.spec.clone().unwrap_or_default();
        if selects_everything(&spec.selector) {
            self.ctx.events.record(
                &*d,
                EventType::Warning,
                "SelectingAll",
                "This deployment is selecting all pods. A non-empty selector is required.",
            );
            return Ok(Action::Done);
        }
        let checked = Selector::new(Some(&spec.selector)).and_then(|s| Ok((s, Strategy::of(&d)?)));
        let (selector, strategy) = match checked {
            Ok(ok) => ok,
            Err(message) => {
                // Retrying will not help; a fix to the object requeues it.
                self.ctx.events.record(
                    &*d,
                    EventType::Warning,
                    "InvalidDeployment",
                    message.clone(),
                );
                tracing::warn!(key, message, "deployment cannot be rolled out");
                return Ok(Action::Done);
            }
        };
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let candidates = self.ctx.informers.replica_sets.list_in(&ns);
        let owned = claim_objects(&self.ctx.api, &*d, &selector, candidates).await?;
        let mut rollout = Rollout::new(self, &d, strategy, owned);
        rollout.run().await?;
        rollout.finish().await
    }
}

/// Which status computation ends the reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    /// Counts and `Available` only (syncDeploymentStatus).
    Status,
    /// Counts plus progress estimation (syncRolloutStatus).
    Rollout,
}

/// One reconcile of one Deployment: the ReplicaSets as they are being changed, and the status
/// being built. Every write goes through the API; the caches are never edited.
struct Rollout<'a> {
    c: &'a DeploymentController,
    d: &'a Deployment,
    replicas: i32,
    strategy: Strategy,
    /// The status as it is being rebuilt (conditions, collision count).
    status: DeploymentStatus,
    new_rs: Option<ReplicaSet>,
    /// Every other owned ReplicaSet, oldest first.
    old: Vec<ReplicaSet>,
    finish: Finish,
    now: Timestamp,
}

impl<'a> Rollout<'a> {
    fn new(
        c: &'a DeploymentController,
        d: &'a Deployment,
        strategy: Strategy,
        owned: Vec<Arc<ReplicaSet>>,
    ) -> Self {
        let spec = d.spec.clone().unwrap_or_default();
        let mut all: Vec<ReplicaSet> = owned.iter().map(|rs| (**rs).clone()).collect();
        all.sort_by(by_creation);
        // The oldest with the same template, should there be several (FindNewReplicaSet).
        let new_index = all.iter().position(|rs| {
            let template = rs.spec.as_ref().and_then(|s| s.template.as_ref());
            template.is_some_and(|t| equal_ignore_hash(t, &spec.template))
        });
        let new_rs = new_index.map(|i| all.remove(i));
        Rollout {
            c,
            d,
            replicas: spec.replicas.unwrap_or(1),
            strategy,
            status: d.status.clone().unwrap_or_default(),
            new_rs,
            old: all,
            finish: Finish::Status,
            now: now(),
        }
    }

    fn spec(&self) -> k8s_openapi::api::apps::v1::DeploymentSpec {
        self.d.spec.clone().unwrap_or_default()
    }

    fn deadline(&self) -> Option<i32> {
        has_deadline(self.spec().progress_deadline_seconds)
    }

    fn name(&self) -> &str {
        self.d.metadata.name.as_deref().unwrap_or_default()
    }

    /// syncDeployment after the claim: which path this Deployment takes.
    async fn run(&mut self) -> Result<(), Error> {
        if self.d.metadata.deletion_timestamp.is_some() {
            return self.sync_existing_new_rs().await;
        }
        self.check_paused_conditions();
        self.sync_existing_new_rs().await?;
        let paused = self.spec().paused.unwrap_or(false);
        if paused || self.is_scaling_event() {
            self.scale().await?;
            if paused {
                self.cleanup().await?;
            }
            return Ok(());
        }
        self.finish = Finish::Rollout;
        match self.strategy {
            Strategy::Recreate => self.rollout_recreate().await,
            Strategy::RollingUpdate { .. } => self.rollout_rolling().await,
        }
    }

    /// Paused and resumed show in `Progressing` unless it already says the deadline passed.
    fn check_paused_conditions(&mut self) {
        if self.deadline().is_none() {
            return;
        }
        let reason = condition(&self.status, "Progressing").and_then(|c| c.reason.clone());
        if reason.as_deref() == Some(TIMED_OUT) {
            return;
        }
        let paused = self.spec().paused.unwrap_or(false);
        let shown = reason.as_deref() == Some(PAUSED);
        let (why, message) = match (paused, shown) {
            (true, false) => (PAUSED, "Deployment is paused"),
            (false, true) => (RESUMED, "Deployment is resumed"),
            _ => return,
        };
        let c = new_condition("Progressing", "Unknown", why, message.into(), self.now);
        set_condition(&mut self.status, c);
    }

    fn all(&self) -> impl Iterator<Item = &ReplicaSet> {
        self.old.iter().chain(self.new_rs.as_ref())
    }

    fn max_old_revision(&self) -> i64 {
        self.old
            .iter()
            .map(|rs| revision_of(&rs.metadata))
            .max()
            .unwrap_or(0)
    }

    /// isScalingEvent: an active ReplicaSet was sized for another `spec.replicas`.
    fn is_scaling_event(&self) -> bool {
        self.all()
            .filter(|rs| spec_replicas(rs) > 0)
            .filter_map(|rs| annotation_i32(rs, DESIRED_REPLICAS))
            .any(|desired| desired != self.replicas)
    }

    /// The existing new ReplicaSet gets the latest revision and the Deployment's annotations
    /// and minReadySeconds (getNewReplicaSet for an existing one).
    async fn sync_existing_new_rs(&mut self) -> Result<(), Error> {
        let Some(mut rs) = self.new_rs.clone() else {
            return Ok(());
        };
        let min_ready = self.spec().min_ready_seconds;
        let mut annotations = rs.metadata.annotations.take().unwrap_or_default();
        let changed = set_new_rs_annotations(
            self.d.metadata.annotations.as_ref(),
            &mut annotations,
            self.max_old_revision() + 1,
            true,
            0,
            0,
        );
        rs.metadata.annotations = Some(annotations);
        let rs_spec = rs.spec.get_or_insert_with(ReplicaSetSpec::default);
        let min_ready_changed = rs_spec.min_ready_seconds.unwrap_or(0) != min_ready.unwrap_or(0);
        if changed || min_ready_changed {
            rs_spec.min_ready_seconds = min_ready;
            rs = self.c.ctx.api.replace(&rs).await?;
        }
        if self.deadline().is_some() && condition(&self.status, "Progressing").is_none() {
            let message = format!(
                "Found new replica set {:?}",
                rs.metadata.name.as_deref().unwrap_or_default()
            );
            let c = new_condition("Progressing", "True", FOUND_NEW_RS, message, self.now);
            set_condition(&mut self.status, c);
        }
        self.new_rs = Some(rs);
        Ok(())
    }

    /// Creates the new ReplicaSet for the current template (getNewReplicaSet, missing case).
    async fn create_new_rs(&mut self) -> Result<(), Error> {
        let d = self.d;
        let spec = self.spec();
        let hash = compute_hash(&spec.template, self.status.collision_count);
        let mut template = spec.template.clone();
        let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
        meta.labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let labels = meta.labels.clone();
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let name = format!("{}-{hash}", self.name());
        let total: i32 = self.old.iter().map(spec_replicas).sum();
        let size = new_rs_new_replicas(self.strategy, self.replicas, total, 0);
        let mut annotations = BTreeMap::new();
        let max = self.replicas + self.strategy.max_surge();
        let revision = self.max_old_revision() + 1;
        set_new_rs_annotations(
            d.metadata.annotations.as_ref(),
            &mut annotations,
            revision,
            false,
            self.replicas,
            max,
        );
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: d.metadata.namespace.clone(),
                owner_references: Some(vec![new_controller_ref("Deployment", &d.metadata)]),
                labels,
                annotations: Some(annotations),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(size),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        match self.c.ctx.api.create(&rs).await {
            Ok(created) => {
                if size > 0 {
                    let message = format!("Scaled up replica set {name} from 0 to {size}");
                    self.c
                        .ctx
                        .events
                        .record(d, EventType::Normal, "ScalingReplicaSet", message);
                }
                if self.deadline().is_some() {
                    let message = format!("Created new replica set {name:?}");
                    let c = new_condition("Progressing", "True", NEW_RS_CREATED, message, self.now);
                    set_condition(&mut self.status, c);
                }
                self.new_rs = Some(created);
                Ok(())
            }
            Err(e) if e.is_already_exists() => {
                let ns = d.metadata.namespace.as_deref();
                let existing = self.c.ctx.informers.replica_sets.get_in(ns, &name);
                let Some(existing) = existing else {
                    // Our own creation, not cached yet: look again later.
                    return Err(e.into());
                };
                let ours = controller_ref(&existing.metadata)
                    .is_some_and(|r| Some(&r.uid) == d.metadata.uid.as_ref());
                let same = existing
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| equal_ignore_hash(t, &spec.template));
                if ours && same {
                    self.new_rs = Some((*existing).clone());
                    return Ok(());
                }
                // A hash collision: the next attempt hashes with a higher count.
                let count = self.status.collision_count.unwrap_or(0) + 1;
                self.status.collision_count = Some(count);
                tracing::info!(deployment = %key_of(&d.metadata), count, "hash collision; bumping collisionCount");
                self.write_status(self.status.clone()).await?;
                Err(e.into())
            }
            Err(e) => {
                let message = format!(
                    "Failed to create new replica set {name:?}: {}",
                    error_message(&e)
                );
                if self.deadline().is_some() {
                    let c = new_condition(
                        "Progressing",
                        "False",
                        FAILED_RS_CREATE,
                        message.clone(),
                        self.now,
                    );
                    set_condition(&mut self.status, c);
                    // The bigger problem is the one being returned.
                    let _ = self.write_status(self.status.clone()).await;
                }
                self.c
                    .ctx
                    .events
                    .record(d, EventType::Warning, FAILED_RS_CREATE, message);
                Err(e.into())
            }
        }
    }

    /// Sets a ReplicaSet's size and replica annotations, with an event when the size changes
    /// (scaleReplicaSet); the written object replaces ours.
    async fn scale_rs(&mut self, name: &str, size: i32) -> Result<bool, Error> {
        let Some(rs) = self
            .all()
            .find(|rs| rs.metadata.name.as_deref() == Some(name))
            .cloned()
        else {
            return Ok(false);
        };
        let current = spec_replicas(&rs);
        let max = self.replicas + self.strategy.max_surge();
        let mut updated = rs.clone();
        let mut annotations = updated.metadata.annotations.take().unwrap_or_default();
        let annotations_changed = set_replicas_annotations(&mut annotations, self.replicas, max);
        updated.metadata.annotations = Some(annotations);
        if current == size && !annotations_changed {
            return Ok(false);
        }
        updated
            .spec
            .get_or_insert_with(ReplicaSetSpec::default)
            .replicas = Some(size);
        let written = self.c.ctx.api.replace(&updated).await?;
        if current != size {
            let direction = if current < size { "up" } else { "down" };
            let message = format!("Scaled {direction} replica set {name} from {current} to {size}");
            self.c
                .ctx
                .events
                .record(self.d, EventType::Normal, "ScalingReplicaSet", message);
        }
        if self
            .new_rs
            .as_ref()
            .is_some_and(|rs| rs.metadata.name.as_deref() == Some(name))
        {
            self.new_rs = Some(written);
        } else if let Some(slot) = self
            .old
            .iter_mut()
            .find(|rs| rs.metadata.name.as_deref() == Some(name))
        {
            *slot = written;
        }
        Ok(current != size)
    }

    /// Scales to a changed `spec.replicas` without rolling anything out (`scale`).
    async fn scale(&mut self) -> Result<(), Error> {
        // One active ReplicaSet (or none: the newest) takes the whole size.
        let mut active: Vec<&ReplicaSet> = self.all().filter(|rs| spec_replicas(rs) > 0).collect();
        let only = match active.len() {
            0 => self.new_rs.as_ref().or(self.old.last()),
            1 => active.pop(),
            _ => None,
        };
        if let Some(rs) = only {
            let name = rs.metadata.name.clone().unwrap_or_default();
            if spec_replicas(rs) != self.replicas {
                self.scale_rs(&name, self.replicas).await?;
            }
            return Ok(());
        }
        // A saturated new ReplicaSet: the old ones go.
        if self.new_rs.as_ref().is_some_and(|rs| self.saturated(rs)) {
            let names: Vec<String> = self.active_old_names();
            for name in names {
                self.scale_rs(&name, 0).await?;
            }
            return Ok(());
        }
        if let Strategy::RollingUpdate { max_surge, .. } = self.strategy {
            let shares: Vec<Share> = self
                .all()
                .filter(|rs| spec_replicas(rs) > 0)
                .map(|rs| Share {
                    name: rs.metadata.name.clone().unwrap_or_default(),
                    created: rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    replicas: spec_replicas(rs),
                    max_replicas: annotation_i32(rs, MAX_REPLICAS),
                })
                .collect();
            let status_replicas = n(self.d.status.as_ref().and_then(|s| s.replicas));
            for (name, size) in
                proportional_sizes(self.replicas, max_surge, status_replicas, &shares)
            {
                self.scale_rs(&name, size).await?;
            }
        }
        Ok(())
    }

    fn saturated(&self, rs: &ReplicaSet) -> bool {
        spec_replicas(rs) == self.replicas
            && annotation_i32(rs, DESIRED_REPLICAS) == Some(self.replicas)
            && rs_status(rs).2 == self.replicas
    }

    fn active_old_names(&self) -> Vec<String> {
        self.old
            .iter()
            .filter(|rs| spec_replicas(rs) > 0)
            .filter_map(|rs| rs.metadata.name.clone())
            .collect()
    }

    /// rolloutRolling: grow the new ReplicaSet within the surge, shrink old ones within the
    /// unavailability budget, and clean up once complete.
    async fn rollout_rolling(&mut self) -> Result<(), Error> {
        if self.new_rs.is_none() {
            self.create_new_rs().await?;
        }
        let Some(new_rs) = self.new_rs.clone() else {
            return Ok(());
        };
        let new_name = new_rs.metadata.name.clone().unwrap_or_default();
        let new_size = spec_replicas(&new_rs);
        // reconcileNewReplicaSet
        let target = match new_size.cmp(&self.replicas) {
            Ordering::Equal => None,
            Ordering::Greater => Some(self.replicas),
            Ordering::Less => {
                let total: i32 = self.all().map(spec_replicas).sum();
                Some(new_rs_new_replicas(
                    self.strategy,
                    self.replicas,
                    total,
                    new_size,
                ))
            }
        };
        if let Some(size) = target {
            if self.scale_rs(&new_name, size).await? {
                return Ok(());
            }
        }
        // reconcileOldReplicaSets
        let active: Vec<(String, Size)> = self
            .old
            .iter()
            .filter(|rs| spec_replicas(rs) > 0)
            .map(|rs| {
                let size = Size {
                    replicas: spec_replicas(rs),
                    available: rs_status(rs).2,
                };
                (rs.metadata.name.clone().unwrap_or_default(), size)
            })
            .collect();
        let new_size = Size {
            replicas: spec_replicas(&new_rs),
            available: rs_status(&new_rs).2,
        };
        let sizes: Vec<Size> = active.iter().map(|(_, s)| *s).collect();
        let targets = scale_down_old(
            self.replicas,
            self.strategy.max_unavailable(),
            new_size,
            &sizes,
        );
        let mut scaled_down = false;
        for ((name, before), after) in active.iter().zip(targets) {
            if after != before.replicas {
                scaled_down |= self.scale_rs(name, after).await?;
            }
        }
        if scaled_down {
            return Ok(());
        }
        if deployment_complete(
            self.replicas,
            self.d.metadata.generation.unwrap_or(0),
            &self.status,
        ) {
            self.cleanup().await?;
        }
        Ok(())
    }

    /// rolloutRecreate: every old pod gone before the new ReplicaSet grows.
    async fn rollout_recreate(&mut self) -> Result<(), Error> {
        let mut scaled = false;
        for name in self.active_old_names() {
            scaled |= self.scale_rs(&name, 0).await?;
        }
        if scaled || self.old_pods_running() {
            return Ok(());
        }
        if self.new_rs.is_none() {
            self.create_new_rs().await?;
        }
        if let Some(name) = self.new_rs.as_ref().and_then(|rs| rs.metadata.name.clone()) {
            self.scale_rs(&name, self.replicas).await?;
        }
        if deployment_complete(
            self.replicas,
            self.d.metadata.generation.unwrap_or(0),
            &self.status,
        ) {
            self.cleanup().await?;
        }
        Ok(())
    }

    /// Whether an old ReplicaSet still has pods, or pods not yet terminal (oldPodsRunning).
    fn old_pods_running(&self) -> bool {
        if self.old.iter().map(|rs| rs_status(rs).0).sum::<i32>() > 0 {
            return true;
        }
        self.old.iter().any(|rs| {
            let uid = rs.metadata.uid.clone().unwrap_or_default();
            self.c.ctx.informers.pods.owned_by(&uid).iter().any(|pod| {
                let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                controller_ref(&pod.metadata).is_some_and(|r| r.uid == uid)
                    && !matches!(phase, Some("Succeeded") | Some("Failed"))
            })
        })
    }

    /// Deletes the oldest empty old ReplicaSets beyond `revisionHistoryLimit` (cleanupDeployment).
    async fn cleanup(&mut self) -> Result<(), Error> {
        let Some(limit) = self
            .spec()
            .revision_history_limit
            .filter(|l| *l != i32::MAX)
        else {
            return Ok(());
        };
        let mut cleanable: Vec<&ReplicaSet> = self
            .old
            .iter()
            .filter(|rs| rs.metadata.deletion_timestamp.is_none())
            .collect();
        let excess = cleanable.len() as i64 - i64::from(limit);
        if excess <= 0 {
            return Ok(());
        }
        cleanable.sort_by(|a, b| {
            revision_of(&a.metadata)
                .cmp(&revision_of(&b.metadata))
                .then_with(|| by_creation(a, b))
        });
        let doomed: Vec<(Option<String>, String)> = cleanable
            .into_iter()
            .take(excess as usize)
            .filter(|rs| {
                let observed = rs
                    .status
                    .as_ref()
                    .and_then(|s| s.observed_generation)
                    .unwrap_or(0);
                rs_status(rs).0 == 0
                    && spec_replicas(rs) == 0
                    && rs.metadata.generation.unwrap_or(0) <= observed
            })
            .map(|rs| {
                (
                    rs.metadata.namespace.clone(),
                    rs.metadata.name.clone().unwrap_or_default(),
                )
            })
            .collect();
        for (ns, name) in doomed {
            tracing::debug!(deployment = %key_of(&self.d.metadata), replicaset = name, "cleaning up old replica set");
            self.c
                .ctx
                .api
                .delete::<ReplicaSet>(ns.as_deref(), &name, &delete_options(None))
                .await?;
        }
        Ok(())
    }

    /// calculateStatus: counts from the ReplicaSets and the `Available` condition.
    fn calculate_status(&self) -> DeploymentStatus {
        let sum = |f: &dyn Fn(&ReplicaSet) -> i32| self.all().map(f).sum::<i32>();
        let available = sum(&|rs| rs_status(rs).2);
        let total = sum(&spec_replicas);
        let mut status = DeploymentStatus {
            observed_generation: self.d.metadata.generation,
            replicas: nz(sum(&|rs| rs_status(rs).0)),
            updated_replicas: nz(self.new_rs.as_ref().map_or(0, |rs| rs_status(rs).0)),
            ready_replicas: nz(sum(&|rs| rs_status(rs).1)),
            available_replicas: nz(available),
            unavailable_replicas: nz((total - available).max(0)),
            collision_count: self.status.collision_count,
            conditions: self.status.conditions.clone(),
            terminating_replicas: None,
        };
        let c = if available >= self.replicas - self.strategy.max_unavailable() {
            new_condition(
                "Available",
                "True",
                MIN_AVAILABLE,
                "Deployment has minimum availability.".into(),
                self.now,
            )
        } else {
            new_condition(
                "Available",
                "False",
                MIN_UNAVAILABLE,
                "Deployment does not have minimum availability.".into(),
                self.now,
            )
        };
        set_condition(&mut status, c);
        status
    }

    /// syncRolloutStatus: the status plus progress (complete, progressing, timed out) and
    /// ReplicaSet failures.
    fn rollout_status(&self) -> DeploymentStatus {
        let mut status = self.calculate_status();
        let deadline = self.deadline();
        if deadline.is_none() {
            remove_condition(&mut status, "Progressing");
        }
        let current = condition(&self.status, "Progressing");
        let complete_before = n(status.replicas) == n(status.updated_replicas)
            && current.is_some_and(|c| c.reason.as_deref() == Some(NEW_RS_AVAILABLE));
        let generation = self.d.metadata.generation.unwrap_or(0);
        let rs_name = self.new_rs.as_ref().and_then(|rs| rs.metadata.name.clone());
        let subject = match &rs_name {
            Some(name) => format!("ReplicaSet {name:?}"),
            None => format!("Deployment {:?}", self.name()),
        };
        if deadline.is_some() && !complete_before {
            let old = self.d.status.clone().unwrap_or_default();
            if deployment_complete(self.replicas, generation, &status) {
                let message = format!("{subject} has successfully progressed.");
                set_condition(
                    &mut status,
                    new_condition("Progressing", "True", NEW_RS_AVAILABLE, message, self.now),
                );
            } else if deployment_progressing(&old, &status) {
                let message = format!("{subject} is progressing.");
                let mut c = new_condition("Progressing", "True", RS_UPDATED, message, self.now);
                if let Some(current) = current {
                    if current.status == "True" {
                        c.last_transition_time = current.last_transition_time.clone();
                    }
                    remove_condition(&mut status, "Progressing");
                }
                set_condition(&mut status, c);
            } else if deployment_timed_out(deadline, &status, self.now) {
                let message = format!("{subject} has timed out progressing.");
                set_condition(
                    &mut status,
                    new_condition("Progressing", "False", TIMED_OUT, message, self.now),
                );
            }
        }
        match self.replica_failure() {
            Some(c) => set_condition(&mut status, c),
            None => remove_condition(&mut status, "ReplicaFailure"),
        }
        status
    }

    /// The new ReplicaSet's `ReplicaFailure`, else any old one's (getReplicaFailures).
    fn replica_failure(&self) -> Option<DeploymentCondition> {
        let failure = |rs: &ReplicaSet| {
            let c = rs
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "ReplicaFailure")?
                .clone();
            Some(DeploymentCondition {
                type_: c.type_,
                status: c.status,
                reason: c.reason,
                message: c.message,
                last_update_time: c.last_transition_time.clone(),
                last_transition_time: c.last_transition_time,
            })
        };
        self.new_rs
            .as_ref()
            .and_then(failure)
            .or_else(|| self.all().find_map(failure))
    }

    async fn write_status(&self, status: DeploymentStatus) -> Result<(), Error> {
        let mut updated = self.d.clone();
        updated.status = Some(status);
        self.c.ctx.api.replace_status(&updated).await?;
        Ok(())
    }

    /// Writes the status when it changed and the Deployment's revision annotation when it
    /// differs from the new ReplicaSet's; answers when to check the progress deadline.
    async fn finish(self) -> Result<Action, Error> {
        let status = match self.finish {
            Finish::Status => self.calculate_status(),
            Finish::Rollout => self.rollout_status(),
        };
        let cached = self.d.status.clone().unwrap_or_default();
        if canonical(&status) != canonical(&cached) {
            self.write_status(status.clone()).await?;
        }
        let revision = self
            .new_rs
            .as_ref()
            .and_then(|rs| rs.metadata.annotations.as_ref()?.get(REVISION).cloned());
        let current = self
            .d
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION));
        if let Some(revision) = revision.filter(|r| Some(r) != current) {
            let ns = self.d.metadata.namespace.as_deref();
            let path = path_of::<Deployment>(ns, Some(self.name()));
            let patch = json!({"metadata": {"annotations": {REVISION: revision}}});
            self.c
                .ctx
                .api
                .raw()
                .patch(&path, PatchType::Merge, patch)
                .await?;
        }
        Ok(self.progress_check(&status))
    }

    /// requeueStuckDeployment: when an unfinished rollout would pass its deadline.
    fn progress_check(&self, status: &DeploymentStatus) -> Action {
        let Some(deadline) = self.deadline().filter(|_| self.finish == Finish::Rollout) else {
            return Action::Done;
        };
        let Some(c) = condition(status, "Progressing") else {
            return Action::Done;
        };
        let generation = self.d.metadata.generation.unwrap_or(0);
        let paused = self.spec().paused.unwrap_or(false);
        if paused
            || c.reason.as_deref() == Some(TIMED_OUT)
            || deployment_complete(self.replicas, generation, status)
        {
            return Action::Done;
        }
        let Some(updated) = c.last_update_time.as_ref() else {
            return Action::Done;
        };
        let due = updated.0.as_second() + i64::from(deadline);
        let after = (due - self.now.as_second()).max(0) as u64;
        // A second more, so the deadline has passed when we look.
        Action::RequeueAfter(Duration::from_secs(after + 1))
    }
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // the case tables
mod tests {
    use super::*;
    use crate::controllers::client::RecordingClient;
    use crate::controllers::events::{drain, Record};
    use crate::controllers::Config;
    use k8s_openapi::api::apps::v1::{
        DeploymentSpec, DeploymentStrategy, ReplicaSetStatus, RollingUpdateDeployment,
    };
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use tokio::sync::mpsc::Receiver;

    const NS: &str = "ns";

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels(&[("app", "web")])),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "web".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    fn deployment(replicas: i32, image: &str) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                namespace: Some(NS.into()),
                name: Some("web".into()),
                uid: Some("uid-web".into()),
                generation: Some(1),
                resource_version: Some("1".into()),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: Some(labels(&[("app", "web")])),
                    ..Default::default()
                },
                template: template(image),
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(IntOrString::Int(1)),
                        max_unavailable: Some(IntOrString::Int(1)),
                    }),
                }),
                revision_history_limit: Some(10),
                progress_deadline_seconds: Some(600),
                ..Default::default()
            }),
            status: None,
        }
    }

    /// The Deployment controller over hand-fed caches, with a tiny API that writes the calls
    /// back into the caches and a ReplicaSet controller whose pods are available at once.
    struct Sim {
        fake: RecordingClient,
        ctx: Context,
        rx: Receiver<Record>,
        controller: Arc<DeploymentController>,
        clock: i64,
    }

    impl Sim {
        fn new(d: Deployment) -> Sim {
            let fake = RecordingClient::new();
            let (ctx, rx) = Context::new(Arc::new(fake.clone()), Config::default());
            let controller = Arc::new(DeploymentController::new(ctx.clone()));
            ctx.informers.deployments.apply(d);
            Sim {
                fake,
                ctx,
                rx,
                controller,
                clock: 0,
            }
        }

        fn deployment(&self) -> Arc<Deployment> {
            self.ctx.informers.deployments.get("ns/web").unwrap()
        }

        /// Changes the Deployment as a user would (the generation follows spec changes).
        fn edit(&self, f: impl FnOnce(&mut DeploymentSpec)) {
            let mut d = (*self.deployment()).clone();
            f(d.spec.as_mut().unwrap());
            d.metadata.generation = Some(d.metadata.generation.unwrap_or(1) + 1);
            self.ctx.informers.deployments.apply(d);
        }

        fn rs(&self, name: &str) -> Arc<ReplicaSet> {
            self.ctx
                .informers
                .replica_sets
                .get_in(Some(NS), name)
                .unwrap()
        }

        fn replica_sets(&self) -> Vec<Arc<ReplicaSet>> {
            let mut all = self.ctx.informers.replica_sets.list_in(NS);
            all.sort_by(|a, b| by_creation(a, b));
            all
        }

        /// `name=size` of every ReplicaSet, oldest first.
        fn sizes(&self) -> Vec<String> {
            self.replica_sets()
                .iter()
                .map(|rs| format!("{}={}", revision_of(&rs.metadata), spec_replicas(rs)))
                .collect()
        }

        fn add_rs(&mut self, image: &str, revision: i64, replicas: i32) -> String {
            let d = self.deployment();
            let mut t = template(image);
            let hash = compute_hash(&t, None);
            t.metadata
                .as_mut()
                .unwrap()
                .labels
                .as_mut()
                .unwrap()
                .insert(POD_TEMPLATE_HASH.into(), hash.clone());
            let name = format!("web-{hash}");
            self.clock += 1;
            let rs = ReplicaSet {
                metadata: ObjectMeta {
                    namespace: Some(NS.into()),
                    name: Some(name.clone()),
                    uid: Some(format!("uid-{name}")),
                    generation: Some(1),
                    creation_timestamp: Some(Time(
                        Timestamp::from_second(1_700_000_000 + self.clock).unwrap(),
                    )),
                    owner_references: Some(vec![new_controller_ref("Deployment", &d.metadata)]),
                    labels: t.metadata.as_ref().unwrap().labels.clone(),
                    annotations: Some(labels(&[(REVISION, &revision.to_string())])),
                    ..Default::default()
                },
                spec: Some(ReplicaSetSpec {
                    replicas: Some(replicas),
                    template: Some(t),
                    ..Default::default()
                }),
                status: None,
            };
            self.ctx.informers.replica_sets.apply(rs);
            name
        }

        /// Reconciles, then applies what was written back into the caches.
        async fn reconcile(&mut self) -> Action {
            self.fake.clear();
            let action = self.controller.reconcile("ns/web").await.unwrap();
            for call in self.fake.calls() {
                self.apply(call.verb, &call.path, call.body);
            }
            action
        }

        fn apply(&mut self, verb: &str, path: &str, body: serde_json::Value) {
            let rs_path = "/apis/apps/v1/namespaces/ns/replicasets";
            let d_path = "/apis/apps/v1/namespaces/ns/deployments/web";
            match (verb, path) {
                ("create", p) if p == rs_path => {
                    let mut rs: ReplicaSet = serde_json::from_value(body).unwrap();
                    self.clock += 1;
                    rs.metadata.creation_timestamp = Some(Time(
                        Timestamp::from_second(1_700_000_000 + self.clock).unwrap(),
                    ));
                    rs.metadata.generation = Some(1);
                    self.ctx.informers.replica_sets.apply(rs);
                }
                ("update", p) if p.starts_with(rs_path) => {
                    let rs: ReplicaSet = serde_json::from_value(body).unwrap();
                    self.ctx.informers.replica_sets.apply(rs);
                }
                ("delete", p) if p.starts_with(rs_path) => {
                    let name = p.rsplit('/').next().unwrap();
                    let rs = self.rs(name);
                    self.ctx.informers.replica_sets.delete(&rs);
                }
                ("update", p) if p == format!("{d_path}/status") => {
                    let written: Deployment = serde_json::from_value(body).unwrap();
                    let mut d = (*self.deployment()).clone();
                    d.status = written.status;
                    self.ctx.informers.deployments.apply(d);
                }
                ("patch", p) if p == d_path => {
                    let mut d = (*self.deployment()).clone();
                    let annotations = d.metadata.annotations.get_or_insert_with(BTreeMap::new);
                    for (k, v) in body["metadata"]["annotations"].as_object().unwrap() {
                        annotations.insert(k.clone(), v.as_str().unwrap().to_string());
                    }
                    self.ctx.informers.deployments.apply(d);
                }
                other => panic!("unexpected call {other:?}"),
            }
        }

        /// The ReplicaSet controller's part: every ReplicaSet has its pods, `available` of
        /// them available (all when `None`).
        fn settle(&self, available: Option<i32>) {
            for rs in self.replica_sets() {
                let mut rs = (*rs).clone();
                let size = spec_replicas(&rs);
                let available = available.map_or(size, |a| a.min(size));
                rs.status = Some(ReplicaSetStatus {
                    replicas: size,
                    ready_replicas: Some(available),
                    available_replicas: Some(available),
                    observed_generation: rs.metadata.generation,
                    ..Default::default()
                });
                self.ctx.informers.replica_sets.apply(rs);
            }
        }

        fn status(&self) -> DeploymentStatus {
            self.deployment().status.clone().unwrap_or_default()
        }

        fn progressing(&self) -> (String, String) {
            let status = self.status();
            let c = condition(&status, "Progressing")
                .cloned()
                .unwrap_or_default();
            (c.status, c.reason.unwrap_or_default())
        }

        fn events(&mut self) -> Vec<String> {
            drain(&mut self.rx)
                .into_iter()
                .map(|r| format!("{} {}", r.reason, r.message))
                .collect()
        }
    }

    /// What `kubectl rollout status` waits for.
    fn rollout_done(d: &Deployment) -> bool {
        let status = d.status.clone().unwrap_or_default();
        let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
            && n(status.updated_replicas) == replicas
            && n(status.replicas) == n(status.updated_replicas)
            && n(status.available_replicas) == n(status.updated_replicas)
    }

    #[tokio::test]
    async fn first_rollout_creates_the_hashed_replica_set_at_revision_one() {
        let mut sim = Sim::new(deployment(3, "web:1"));
        sim.reconcile().await;
        let hash = compute_hash(&template("web:1"), None);
        let name = format!("web-{hash}");
        let calls = sim.fake.calls();
        assert_eq!(
            calls[0].short(),
            "create /apis/apps/v1/namespaces/ns/replicasets"
        );
        let rs = sim.rs(&name);
        assert_eq!(spec_replicas(&rs), 3);
        let annotations = rs.metadata.annotations.clone().unwrap();
        assert_eq!(annotations[REVISION], "1");
        assert_eq!(annotations[DESIRED_REPLICAS], "3");
        assert_eq!(annotations[MAX_REPLICAS], "4");
        let spec = rs.spec.clone().unwrap();
        assert_eq!(spec.selector.match_labels.unwrap()[POD_TEMPLATE_HASH], hash);
        assert_eq!(
            spec.template.unwrap().metadata.unwrap().labels.unwrap()[POD_TEMPLATE_HASH],
            hash
        );
        assert_eq!(rs.metadata.labels.clone().unwrap()[POD_TEMPLATE_HASH], hash);
        assert_eq!(controller_ref(&rs.metadata).unwrap().uid, "uid-web");
        assert_eq!(
            sim.events(),
            vec![format!(
                "ScalingReplicaSet Scaled up replica set {name} from 0 to 3"
            )]
        );
        assert_eq!(
            sim.deployment().metadata.annotations.clone().unwrap()[REVISION],
            "1"
        );
        assert_eq!(sim.progressing(), ("True".into(), NEW_RS_CREATED.into()));
        assert!(!rollout_done(&sim.deployment()));
        // The pods come up: the rollout is complete, and says so.
        sim.settle(None);
        let action = sim.reconcile().await;
        assert_eq!(action, Action::Done);
        let d = sim.deployment();
        assert!(rollout_done(&d), "{:?}", d.status);
        assert_eq!(sim.progressing(), ("True".into(), NEW_RS_AVAILABLE.into()));
        let status = sim.status();
        let available = condition(&status, "Available").unwrap();
        assert_eq!(
            (available.status.as_str(), available.reason.as_deref()),
            ("True", Some(MIN_AVAILABLE))
        );
        assert_eq!(status.observed_generation, Some(1));
        // Nothing changes: nothing is written.
        sim.reconcile().await;
        assert!(sim.fake.calls().is_empty(), "{:?}", sim.fake.short_calls());
    }

    #[tokio::test]
    async fn a_template_change_rolls_out_within_surge_and_unavailability() {
        let mut sim = Sim::new(deployment(4, "web:1"));
        sim.reconcile().await;
        sim.settle(None);
        sim.reconcile().await;
        sim.edit(|spec| spec.template = template("web:2"));
        let mut steps = 0;
        loop {
            sim.reconcile().await;
            let total: i32 = sim.replica_sets().iter().map(|rs| spec_replicas(rs)).sum();
            assert!(
                total <= 5,
                "more than replicas + maxSurge: {:?}",
                sim.sizes()
            );
            sim.settle(None);
            let available: i32 = sim.replica_sets().iter().map(|rs| rs_status(rs).2).sum();
            assert!(
                available >= 3,
                "less than replicas - maxUnavailable: {:?}",
                sim.sizes()
            );
            if rollout_done(&sim.deployment()) {
                break;
            }
            steps += 1;
            assert!(steps < 10, "the rollout does not finish: {:?}", sim.sizes());
        }
        assert_eq!(sim.sizes(), vec!["1=0", "2=4"]);
        assert_eq!(
            sim.deployment().metadata.annotations.clone().unwrap()[REVISION],
            "2"
        );
        assert_eq!(sim.progressing(), ("True".into(), NEW_RS_AVAILABLE.into()));
        let events = sim.events();
        assert!(
            events.iter().any(|e| e.contains("Scaled down replica set")),
            "{events:?}"
        );
    }

    #[tokio::test]
    async fn each_rolling_step_waits_for_availability() {
        let mut sim = Sim::new(deployment(4, "web:1"));
        sim.reconcile().await;
        sim.settle(None);
        sim.reconcile().await;
        sim.edit(|spec| spec.template = template("web:2"));
        // Surge one new pod, and one old pod may go (4 available - 3 minimum).
        sim.reconcile().await;
        assert_eq!(sim.sizes(), vec!["1=3", "2=1"]);
        assert_eq!(sim.progressing(), ("True".into(), NEW_RS_CREATED.into()));
        // The new pod is not available yet; 4 pods < 5: grow the new one.
        sim.settle_rs_available(1, 3);
        sim.settle_rs_available(2, 0);
        sim.reconcile().await;
        assert_eq!(sim.sizes(), vec!["1=3", "2=2"]);
        // Nothing available in the new ReplicaSet: stuck at the limits.
        sim.settle_rs_available(2, 0);
        sim.reconcile().await;
        assert_eq!(sim.sizes(), vec!["1=3", "2=2"]);
        assert!(sim
            .fake
            .calls()
            .iter()
            .all(|c| !c.path.contains("replicasets")));
        // Both new pods available: two old ones may go.
        sim.settle_rs_available(2, 2);
        sim.reconcile().await;
        assert_eq!(sim.sizes(), vec!["1=1", "2=2"]);
    }

    impl Sim {
        /// Sets the ReplicaSet of `revision` to have all its pods, `available` available.
        fn settle_rs_available(&self, revision: i64, available: i32) {
            let rs = self
                .replica_sets()
                .into_iter()
                .find(|rs| revision_of(&rs.metadata) == revision)
                .unwrap();
            let mut rs = (*rs).clone();
            let size = spec_replicas(&rs);
            rs.status = Some(ReplicaSetStatus {
                replicas: size,
                ready_replicas: Some(available),
                available_replicas: Some(available),
                observed_generation: rs.metadata.generation,
                ..Default::default()
            });
            self.ctx.informers.replica_sets.apply(rs);
        }
    }

    #[tokio::test]
    async fn recreate_scales_old_to_zero_and_waits_for_old_pods() {
        let mut d = deployment(3, "web:2");
        d.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: None,
        });
        let mut sim = Sim::new(d);
        let old = sim.add_rs("web:1", 1, 3);
        sim.settle(None);
        sim.reconcile().await;
        assert_eq!(
            sim.sizes(),
            vec!["1=0"],
            "old scaled down, no new ReplicaSet yet"
        );
        // The old pods are still there (status says 3).
        sim.reconcile().await;
        assert_eq!(sim.sizes(), vec!["1=0"]);
        // The ReplicaSet counts none, but one old pod is still terminating.
        sim.settle(None);
        let rs = sim.rs(&old);
        let pod = Pod {
            metadata: ObjectMeta {
                namespace: Some(NS.into()),
                name: Some("old-pod".into()),
                owner_references: Some(vec![super::super::replicaset::new_controller_ref(
                    "ReplicaSet",
                    &rs.metadata,
                )]),
                deletion_timestamp: Some(Time(now())),
                ..Default::default()
            },
            spec: None,
            status: Some(k8s_openapi::api::core::v1::PodStatus {
                phase: Some("Running".into()),
                ..Default::default()
            }),
        };
        sim.ctx.informers.pods.apply(pod.clone());
        sim.reconcile().await;
        assert_eq!(sim.sizes(), vec!["1=0"]);
        sim.ctx.informers.pods.delete(&pod);
        sim.reconcile().await;
        assert_eq!(
            sim.sizes(),
            vec!["1=0", "2=3"],
            "the new ReplicaSet at full size at once"
        );
    }

    #[tokio::test]
    async fn rollback_reuses_the_old_replica_set_with_the_next_revision() {
        let mut sim = Sim::new(deployment(2, "web:1"));
        let first = sim.add_rs("web:1", 1, 0);
        sim.add_rs("web:2", 2, 2);
        sim.settle(None);
        // What `kubectl rollout undo` leaves: the template of revision 1.
        sim.reconcile().await;
        let calls = sim.fake.short_calls();
        assert!(calls.iter().all(|c| !c.starts_with("create")), "{calls:?}");
        let rs = sim.rs(&first);
        let annotations = rs.metadata.annotations.clone().unwrap();
        assert_eq!(annotations[REVISION], "3");
        assert_eq!(annotations[REVISION_HISTORY], "1");
        assert_eq!(
            sim.deployment().metadata.annotations.clone().unwrap()[REVISION],
            "3"
        );
        // Then it rolls forward onto it as onto any new ReplicaSet.
        for _ in 0..6 {
            sim.settle(None);
            sim.reconcile().await;
        }
        assert_eq!(sim.sizes(), vec!["3=2", "2=0"]);
        assert!(rollout_done(&sim.deployment()));
    }

    #[tokio::test]
    async fn paused_deployments_scale_but_do_not_roll_out() {
        let mut sim = Sim::new(deployment(2, "web:1"));
        sim.add_rs("web:1", 1, 2);
        sim.settle(None);
        sim.edit(|spec| {
            spec.paused = Some(true);
            spec.template = template("web:2");
            spec.replicas = Some(5);
        });
        sim.reconcile().await;
        assert_eq!(sim.sizes(), vec!["1=5"], "scaled, no new ReplicaSet");
        assert_eq!(sim.progressing(), ("Unknown".into(), PAUSED.into()));
        sim.settle(None);
        sim.reconcile().await;
        assert_eq!(sim.sizes(), vec!["1=5"]);
        // Resumed: the rollout starts.
        sim.edit(|spec| spec.paused = Some(false));
        sim.reconcile().await;
        assert_eq!(sim.replica_sets().len(), 2);
        assert_eq!(sim.progressing(), ("True".into(), NEW_RS_CREATED.into()));
    }

    #[tokio::test]
    async fn old_replica_sets_beyond_the_history_limit_are_deleted() {
        let mut d = deployment(2, "web:4");
        d.spec.as_mut().unwrap().revision_history_limit = Some(1);
        let mut sim = Sim::new(d);
        let r1 = sim.add_rs("web:1", 1, 0);
        let r2 = sim.add_rs("web:2", 2, 0);
        sim.add_rs("web:3", 3, 0);
        sim.add_rs("web:4", 4, 2);
        sim.settle(None);
        // The first pass records the complete status; cleanup follows a complete rollout.
        sim.reconcile().await;
        assert!(rollout_done(&sim.deployment()));
        sim.reconcile().await;
        let deletes: Vec<String> = sim
            .fake
            .short_calls()
            .into_iter()
            .filter(|c| c.starts_with("delete"))
            .collect();
        let path = |name: &str| format!("delete /apis/apps/v1/namespaces/ns/replicasets/{name}");
        assert_eq!(deletes, vec![path(&r1), path(&r2)]);
    }

    #[tokio::test]
    async fn a_stuck_rollout_exceeds_its_progress_deadline() {
        let mut sim = Sim::new(deployment(2, "web:2"));
        sim.add_rs("web:1", 1, 2);
        // No pod ever becomes available: the rollout goes as far as it can, then stops.
        for _ in 0..6 {
            sim.reconcile().await;
            sim.settle(Some(0));
        }
        sim.reconcile().await;
        assert!(sim.fake.calls().is_empty(), "{:?}", sim.fake.short_calls());
        assert_eq!(
            sim.sizes(),
            vec!["1=1", "2=2"],
            "surge used up, no availability to spend"
        );
        // Progress was last seen long ago.
        let mut d = (*sim.deployment()).clone();
        let status = d.status.as_mut().unwrap();
        for c in status.conditions.iter_mut().flatten() {
            c.last_update_time = Some(Time(
                Timestamp::from_second(now().as_second() - 700).unwrap(),
            ));
        }
        let mut stale = d.clone();
        sim.ctx.informers.deployments.apply(d);
        let action = sim.reconcile().await;
        assert_eq!(sim.progressing(), ("False".into(), TIMED_OUT.into()));
        assert_eq!(action, Action::Done);
        // Within the deadline it asks to look again when it would pass.
        for c in stale
            .status
            .as_mut()
            .unwrap()
            .conditions
            .iter_mut()
            .flatten()
        {
            c.last_update_time = Some(Time(
                Timestamp::from_second(now().as_second() - 100).unwrap(),
            ));
        }
        sim.ctx.informers.deployments.apply(stale);
        let action = sim.reconcile().await;
        let Action::RequeueAfter(after) = action else {
            panic!("expected a progress check, got {action:?}");
        };
        assert!(
            after >= Duration::from_secs(499) && after <= Duration::from_secs(502),
            "{after:?}"
        );
    }

    #[tokio::test]
    async fn orphan_replica_sets_are_adopted() {
        let mut sim = Sim::new(deployment(2, "web:1"));
        let name = sim.add_rs("web:1", 1, 2);
        let mut rs = (*sim.rs(&name)).clone();
        rs.metadata.owner_references = None;
        sim.ctx.informers.replica_sets.apply(rs);
        let d = serde_json::to_value(&*sim.deployment()).unwrap();
        sim.fake
            .set_object("/apis/apps/v1/namespaces/ns/deployments/web", d);
        sim.fake.clear();
        sim.controller.reconcile("ns/web").await.unwrap();
        let calls = sim.fake.calls();
        let adopt = calls.iter().find(|c| c.verb == "patch").unwrap();
        assert_eq!(
            adopt.path,
            format!("/apis/apps/v1/namespaces/ns/replicasets/{name}")
        );
        assert_eq!(
            adopt.body["metadata"]["ownerReferences"][0]["kind"],
            "Deployment"
        );
        assert!(
            calls.iter().all(|c| c.verb != "create"),
            "the adopted ReplicaSet is the new one"
        );
    }

    #[test]
    fn fenceposts_round_surge_up_and_unavailability_down() {
        let pct = |s: &str| IntOrString::String(s.into());
        let cases: Vec<(IntOrString, IntOrString, i32, Result<(i32, i32), ()>)> = vec![
            (pct("25%"), pct("25%"), 10, Ok((3, 2))),
            (pct("25%"), pct("25%"), 4, Ok((1, 1))),
            (pct("25%"), pct("25%"), 1, Ok((1, 0))),
            (IntOrString::Int(0), pct("10%"), 5, Ok((0, 1))),
            (IntOrString::Int(2), IntOrString::Int(0), 3, Ok((2, 0))),
            (pct("0%"), pct("0%"), 0, Ok((0, 1))),
            (pct("abc"), IntOrString::Int(1), 3, Err(())),
        ];
        for (surge, unavailable, desired, expected) in cases {
            let got = resolve_fenceposts(Some(&surge), Some(&unavailable), desired).map_err(|_| ());
            assert_eq!(got, expected, "{surge:?} {unavailable:?} {desired}");
        }
    }

    #[test]
    fn the_new_replica_set_grows_within_the_surge() {
        let rolling = Strategy::RollingUpdate {
            max_surge: 1,
            max_unavailable: 1,
        };
        // (strategy, replicas, total now, new now, expected)
        let cases = [
            (rolling, 3, 0, 0, 3),
            (rolling, 4, 4, 0, 1),
            (rolling, 4, 5, 1, 1),
            (rolling, 4, 3, 1, 3),
            (rolling, 4, 1, 3, 4),
            (Strategy::Recreate, 4, 9, 0, 4),
        ];
        for (strategy, replicas, total, new, expected) in cases {
            assert_eq!(
                new_rs_new_replicas(strategy, replicas, total, new),
                expected,
                "{replicas} {total} {new}"
            );
        }
    }

    #[test]
    fn old_replica_sets_shrink_within_the_unavailability_budget() {
        let s = |replicas, available| Size {
            replicas,
            available,
        };
        // (case, replicas, maxUnavailable, new, old, expected old sizes)
        let cases: Vec<(&str, i32, i32, Size, Vec<Size>, Vec<i32>)> = vec![
            (
                "all available, one may go",
                4,
                1,
                s(1, 0),
                vec![s(4, 4)],
                vec![3],
            ),
            (
                "new not available blocks",
                4,
                1,
                s(2, 0),
                vec![s(3, 3)],
                vec![3],
            ),
            (
                "new available: old shrinks",
                4,
                1,
                s(2, 2),
                vec![s(3, 3)],
                vec![1],
            ),
            (
                "unhealthy first",
                4,
                1,
                s(1, 0),
                vec![s(2, 1), s(2, 2)],
                vec![1, 2],
            ),
            (
                "oldest first",
                4,
                2,
                s(0, 0),
                vec![s(2, 2), s(2, 2)],
                vec![0, 2],
            ),
            ("no old pods", 4, 1, s(4, 4), vec![s(0, 0)], vec![0]),
            ("done", 2, 1, s(2, 2), vec![s(2, 2)], vec![0]),
        ];
        for (name, replicas, max_unavailable, new, old, expected) in cases {
            assert_eq!(
                scale_down_old(replicas, max_unavailable, new, &old),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn scaling_mid_rollout_is_proportional() {
        let share = |name: &str, created: i64, replicas, max: Option<i32>| Share {
            name: name.into(),
            created: Timestamp::from_second(created).ok(),
            replicas,
            max_replicas: max,
        };
        // (replicas, maxSurge, status replicas, shares, expected)
        let cases: Vec<(i32, i32, i32, Vec<Share>, Vec<(&str, i32)>)> = vec![
            (
                8,
                1,
                5,
                vec![share("old", 1, 3, Some(5)), share("new", 2, 2, Some(5))],
                vec![("old", 5), ("new", 4)],
            ),
            (
                2,
                1,
                5,
                vec![share("old", 1, 3, Some(5)), share("new", 2, 2, Some(5))],
                vec![("old", 2), ("new", 1)],
            ),
            (
                0,
                1,
                5,
                vec![share("old", 1, 3, Some(5)), share("new", 2, 2, Some(5))],
                vec![("old", 0), ("new", 0)],
            ),
            // No annotation: the status count stands in.
            (
                10,
                0,
                5,
                vec![share("a", 1, 3, None), share("b", 2, 2, None)],
                vec![("a", 6), ("b", 4)],
            ),
            // Ties grow the newer first.
            (
                6,
                0,
                4,
                vec![share("a", 1, 2, Some(4)), share("b", 2, 2, Some(4))],
                vec![("b", 3), ("a", 3)],
            ),
        ];
        for (replicas, surge, status, shares, expected) in cases {
            let got = proportional_sizes(replicas, surge, status, &shares);
            let expected: Vec<(String, i32)> = expected
                .into_iter()
                .map(|(n, s)| (n.to_string(), s))
                .collect();
            assert_eq!(got, expected, "{replicas} {shares:?}");
        }
    }

    #[test]
    fn hashes_are_fnv_safe_encoded_and_change_with_collisions() {
        assert_eq!(fnv32a(b""), 0x811c9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c292c);
        assert_eq!(safe_encode("0123456789"), "456789bcdf");
        let t = template("web:1");
        let hash = compute_hash(&t, None);
        assert!(hash.chars().all(|c| "456789bcdf".contains(c)), "{hash}");
        assert_eq!(hash, compute_hash(&t.clone(), None), "stable");
        assert_ne!(hash, compute_hash(&template("web:2"), None));
        assert_ne!(hash, compute_hash(&t, Some(1)));
    }

    #[test]
    fn templates_compare_without_the_hash_label() {
        let mut hashed = template("web:1");
        hashed
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(POD_TEMPLATE_HASH.into(), "x".into());
        assert!(equal_ignore_hash(&hashed, &template("web:1")));
        assert!(!equal_ignore_hash(&hashed, &template("web:2")));
    }

    #[test]
    fn revisions_move_up_with_history() {
        let d = labels(&[("kubernetes.io/change-cause", "v2"), (REVISION, "9")]);
        // (current annotations, new revision, exists, expected changed, expected annotations)
        let cases: Vec<(
            BTreeMap<String, String>,
            i64,
            bool,
            bool,
            BTreeMap<String, String>,
        )> = vec![
            (
                BTreeMap::new(),
                1,
                false,
                true,
                labels(&[
                    ("kubernetes.io/change-cause", "v2"),
                    (REVISION, "1"),
                    (DESIRED_REPLICAS, "3"),
                    (MAX_REPLICAS, "4"),
                ]),
            ),
            (
                labels(&[("kubernetes.io/change-cause", "v2"), (REVISION, "1")]),
                3,
                true,
                true,
                labels(&[
                    ("kubernetes.io/change-cause", "v2"),
                    (REVISION, "3"),
                    (REVISION_HISTORY, "1"),
                ]),
            ),
            (
                labels(&[
                    ("kubernetes.io/change-cause", "v2"),
                    (REVISION, "3"),
                    (REVISION_HISTORY, "1"),
                ]),
                5,
                true,
                true,
                labels(&[
                    ("kubernetes.io/change-cause", "v2"),
                    (REVISION, "5"),
                    (REVISION_HISTORY, "1,3"),
                ]),
            ),
            (
                labels(&[("kubernetes.io/change-cause", "v2"), (REVISION, "7")]),
                5,
                true,
                false,
                labels(&[("kubernetes.io/change-cause", "v2"), (REVISION, "7")]),
            ),
        ];
        for (mut current, revision, exists, changed, expected) in cases {
            let got = set_new_rs_annotations(Some(&d), &mut current, revision, exists, 3, 4);
            assert_eq!((got, &current), (changed, &expected), "{revision}");
        }
    }

    #[test]
    fn progress_and_completion_follow_the_counts() {
        let st = |replicas, updated, ready, available| DeploymentStatus {
            observed_generation: Some(2),
            replicas: Some(replicas),
            updated_replicas: Some(updated),
            ready_replicas: Some(ready),
            available_replicas: Some(available),
            ..Default::default()
        };
        assert!(deployment_complete(3, 2, &st(3, 3, 3, 3)));
        assert!(
            !deployment_complete(3, 3, &st(3, 3, 3, 3)),
            "generation not observed"
        );
        assert!(
            !deployment_complete(3, 2, &st(4, 3, 4, 4)),
            "an old pod remains"
        );
        assert!(deployment_progressing(&st(4, 1, 3, 3), &st(4, 2, 3, 3)));
        assert!(deployment_progressing(&st(5, 2, 3, 3), &st(4, 2, 3, 3)));
        assert!(!deployment_progressing(&st(4, 2, 3, 3), &st(4, 2, 3, 3)));
    }
}
