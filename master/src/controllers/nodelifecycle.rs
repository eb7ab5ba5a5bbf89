//! The node lifecycle controller (kube-controller-manager's `nodelifecycle`, with its taint
//! eviction controller folded in).
//!
//! Every `--node-monitor-period` each Node is looked at:
//!
//! - **Health.** Its heartbeat is its Lease's `renewTime` (in `kube-node-lease`) or its `Ready`
//!   condition's `lastHeartbeatTime`. Staleness is measured on this controller's own clock from
//!   when it last *saw either change* (upstream's `nodeHealthData.probeTimestamp`), never by
//!   comparing the node's timestamps with ours, so skewed clocks do not matter; the clock starts
//!   when the controller first sees the node. With no heartbeat for `--node-monitor-grace-period`
//!   (`--node-startup-grace-period` for a node that never reported `Ready`), every node
//!   condition turns `Unknown` (`NodeStatusUnknown`, "Kubelet stopped posting node status."),
//!   and the pods on a node that is not `Ready` are marked `Ready=False`.
//! - **Taints.** `Ready=False` → `node.kubernetes.io/not-ready`, `Ready=Unknown` →
//!   `node.kubernetes.io/unreachable`, each as `NoSchedule` and `NoExecute`; pressure conditions
//!   and `spec.unschedulable` add their `NoSchedule` taints. The whole list is written with the
//!   node's `resourceVersion`, so a concurrent writer's taints are never lost.
//! - **Eviction.** A pod on a node with `NoExecute` taints that it does not tolerate is deleted
//!   (gracefully) at once; one tolerating them for `tolerationSeconds` at the taint's
//!   `timeAdded` plus those seconds; one tolerating them without seconds stays. At most
//!   [`EVICTIONS_PER_SECOND`] pods are deleted per second.
//! - **Disruption.** Nodes are grouped in zones (`topology.kubernetes.io/region` and `zone`;
//!   a cluster without the labels is one zone). When every zone has no `Ready` node the
//!   controller enters master disruption mode: it removes its `NoExecute` taints and evicts
//!   nothing until a node is `Ready` again, and then gives every node a fresh grace period. A
//!   small zone (≤ 50 nodes) with at least 55 % of its nodes not `Ready` gets no new `NoExecute`
//!   taints either, as upstream's zero eviction rate for partial disruption.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::client::{delete_uid, path_of, PatchType};
use super::runtime::{self, key_of, Change, Key};
use super::{Action, Context, Error, EventType, Reconciler, WorkQueue};

/// Taint of a node whose `Ready` condition is `Unknown`.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Taint of a node whose `Ready` condition is `False`.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
/// Where nodes' heartbeat Leases live.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// The most pods evicted per second.
pub const EVICTIONS_PER_SECOND: u32 = 100;

const NO_EXECUTE: &str = "NoExecute";
const NO_SCHEDULE: &str = "NoSchedule";
/// The conditions a silent node's are set `Unknown` (upstream's Ready plus
/// `remainingNodeConditionTypes`).
const MONITORED: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];
const STOPPED: &str = "Kubelet stopped posting node status.";
const NEVER: &str = "Kubelet never posted node status.";
/// `NoSchedule` taints for conditions that are `True`, and the `unschedulable` one.
const CONDITION_TAINTS: [(&str, &str); 4] = [
    ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "node.kubernetes.io/pid-pressure"),
    (
        "NetworkUnavailable",
        "node.kubernetes.io/network-unavailable",
    ),
];
const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
/// A zone this small in partial disruption gets no new `NoExecute` taints.
const LARGE_ZONE: usize = 50;
const UNHEALTHY_ZONE_THRESHOLD: f64 = 0.55;

/// What the controller last saw of a node, and when on its own clock.
#[derive(Debug, Clone)]
struct Health {
    /// The `Ready` condition's `lastHeartbeatTime` last seen.
    heartbeat: Option<Timestamp>,
    /// The Lease's `renewTime` last seen.
    renewed: Option<Timestamp>,
    /// When either last changed (or the node was first seen).
    probe: Instant,
    /// The `Ready` status last seen, for the `NodeNotReady` event on a transition.
    ready: Option<String>,
    /// When `NoExecute` taints without `timeAdded` were first seen, by taint key.
    untimed: HashMap<String, Timestamp>,
}

/// The controller's heartbeat bookkeeping for `node`: the probe moves to `now` when the Ready
/// heartbeat or the Lease renewal differs from what was seen last.
fn observe(
    previous: Option<&Health>,
    heartbeat: Option<Timestamp>,
    renewed: Option<Timestamp>,
    now: Instant,
) -> Health {
    match previous {
        None => Health {
            heartbeat,
            renewed,
            probe: now,
            ready: None,
            untimed: HashMap::new(),
        },
        Some(prev) => {
            let mut next = prev.clone();
            if prev.heartbeat != heartbeat || prev.renewed != renewed {
                next.probe = now;
            }
            next.heartbeat = heartbeat;
            next.renewed = renewed;
            next
        }
    }
}

fn condition<'a>(conditions: &'a [NodeCondition], kind: &str) -> Option<&'a NodeCondition> {
    conditions.iter().find(|c| c.type_ == kind)
}

/// The conditions of a node that stopped reporting: every monitored one `Unknown`. `None` when
/// they already are.
fn mark_unknown(
    conditions: &[NodeCondition],
    created: Option<&Time>,
    now: Timestamp,
) -> Option<Vec<NodeCondition>> {
    let mut out = conditions.to_vec();
    let mut changed = false;
    for kind in MONITORED {
        match out.iter_mut().find(|c| c.type_ == kind) {
            None => {
                out.push(NodeCondition {
                    type_: kind.into(),
                    status: "Unknown".into(),
                    reason: Some("NodeStatusNeverUpdated".into()),
                    message: Some(NEVER.into()),
                    last_heartbeat_time: created.cloned(),
                    last_transition_time: Some(Time(now)),
                });
                changed = true;
            }
            Some(c) if c.status != "Unknown" => {
                c.status = "Unknown".into();
                c.reason = Some("NodeStatusUnknown".into());
                c.message = Some(STOPPED.into());
                c.last_transition_time = Some(Time(now));
                changed = true;
            }
            Some(_) => {}
        }
    }
    changed.then_some(out)
}

/// What may happen to a node's `NoExecute` taints under the current disruption state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoExecuteMode {
    /// Added and removed as the `Ready` condition says.
    Normal,
    /// Kept or swapped, but not newly added (partial disruption of a small zone).
    Frozen,
    /// Removed (master disruption mode).
    Off,
}

/// The taints this controller owns that `node` should have, as (key, effect).
fn wanted_taints(
    conditions: &[NodeCondition],
    unschedulable: bool,
    current: &[Taint],
    mode: NoExecuteMode,
) -> Vec<(&'static str, &'static str)> {
    let mut wanted = Vec::new();
    let ready = condition(conditions, "Ready").map(|c| c.status.as_str());
    let ready_taint = match ready {
        Some("False") => Some(NOT_READY),
        Some("Unknown") => Some(UNREACHABLE),
        _ => None,
    };
    if let Some(key) = ready_taint {
        wanted.push((key, NO_SCHEDULE));
        let has_any = current
            .iter()
            .any(|t| t.effect == NO_EXECUTE && (t.key == NOT_READY || t.key == UNREACHABLE));
        let add = match mode {
            NoExecuteMode::Normal => true,
            NoExecuteMode::Frozen => has_any,
            NoExecuteMode::Off => false,
        };
        if add {
            wanted.push((key, NO_EXECUTE));
        }
    }
    for (kind, key) in CONDITION_TAINTS {
        if condition(conditions, kind).is_some_and(|c| c.status == "True") {
            wanted.push((key, NO_SCHEDULE));
        }
    }
    if unschedulable {
        wanted.push((UNSCHEDULABLE, NO_SCHEDULE));
    }
    wanted
}

fn managed(taint: &Taint) -> bool {
    let key = taint.key.as_str();
    let ready = (key == NOT_READY || key == UNREACHABLE)
        && (taint.effect == NO_SCHEDULE || taint.effect == NO_EXECUTE);
    let no_schedule = taint.effect == NO_SCHEDULE
        && (key == UNSCHEDULABLE || CONDITION_TAINTS.iter().any(|(_, k)| *k == key));
    ready || no_schedule
}

/// The node's full taint list after this controller's changes, or `None` when unchanged:
/// others' taints stay in place, kept ones keep their `timeAdded`, new ones get `now`.
fn desired_taints(
    current: &[Taint],
    wanted: &[(&'static str, &'static str)],
    now: Timestamp,
) -> Option<Vec<Taint>> {
    let mut out: Vec<Taint> = current
        .iter()
        .filter(|t| !managed(t) || wanted.contains(&(t.key.as_str(), t.effect.as_str())))
        .cloned()
        .collect();
    for (key, effect) in wanted {
        if !out.iter().any(|t| t.key == *key && t.effect == *effect) {
            out.push(Taint {
                key: (*key).into(),
                effect: (*effect).into(),
                time_added: Some(Time(now)),
                value: None,
            });
        }
    }
    (out != current).then_some(out)
}

/// Whether `toleration` tolerates `taint` (core/v1 `Toleration.ToleratesTaint`).
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or_default();
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or_default() {
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or_default()
                == taint.value.as_deref().unwrap_or_default()
        }
        "Exists" => true,
        _ => false,
    }
}

/// What the taint eviction does with a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eviction {
    Now,
    At(Timestamp),
    Never,
}

/// When a pod with `tolerations` leaves a node with these `NoExecute` taints, each with the
/// time it was added: now if one is not tolerated, at the earliest `timeAdded` plus the
/// smallest `tolerationSeconds` of the tolerations matching that taint, or never.
fn eviction(tolerations: &[Toleration], taints: &[(Taint, Timestamp)], now: Timestamp) -> Eviction {
    let mut earliest: Option<Timestamp> = None;
    for (taint, added) in taints.iter().filter(|(t, _)| t.effect == NO_EXECUTE) {
        let matching: Vec<&Toleration> =
            tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Eviction::Now;
        }
        let seconds = matching.iter().filter_map(|t| t.toleration_seconds).min();
        if let Some(seconds) = seconds {
            let at = added
                .checked_add(SignedDuration::from_secs(seconds.max(0)))
                .unwrap_or(Timestamp::MAX);
            earliest = Some(earliest.map_or(at, |e| e.min(at)));
        }
    }
    match earliest {
        Some(at) if at <= now => Eviction::Now,
        Some(at) => Eviction::At(at),
        None => Eviction::Never,
    }
}

/// A zone's health (upstream's `ZoneState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ZoneState {
    Normal,
    PartialDisruption,
    FullDisruption,
}

/// The zone of a node: region and zone labels, as upstream's `GetZoneKey`.
fn zone_of(node: &Node) -> String {
    let labels = node.metadata.labels.as_ref();
    let label = |new: &str, old: &str| {
        labels
            .and_then(|l| l.get(new).or_else(|| l.get(old)))
            .cloned()
            .unwrap_or_default()
    };
    let region = label(
        "topology.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/region",
    );
    let zone = label(
        "topology.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/zone",
    );
    if region.is_empty() && zone.is_empty() {
        String::new()
    } else {
        format!("{region}:\x00:{zone}")
    }
}

fn is_ready(node: &Node) -> bool {
    let conditions = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    condition(conditions, "Ready").is_some_and(|c| c.status == "True")
}

/// A zone's state from its counts of `Ready` and other nodes (upstream's `ComputeZoneState`).
fn zone_state(ready: usize, not_ready: usize) -> ZoneState {
    let total = ready + not_ready;
    if ready == 0 && not_ready > 0 {
        ZoneState::FullDisruption
    } else if not_ready > 2 && not_ready as f64 / total as f64 >= UNHEALTHY_ZONE_THRESHOLD {
        ZoneState::PartialDisruption
    } else {
        ZoneState::Normal
    }
}

/// Each node's zone and readiness as this controller last judged it, with per-zone counts kept
/// up to date as each node is judged, so a node turning `Unknown` counts at once (before its
/// own taints are decided), not one monitor period later.
#[derive(Debug, Default)]
struct Disruption {
    nodes: HashMap<String, (String, bool)>,
    /// Zone → (ready, not ready).
    counts: HashMap<String, (usize, usize)>,
    /// Every zone fully disrupted: no `NoExecute` taints, no evictions.
    master: bool,
    /// Whether every cached node has been counted once.
    seeded: bool,
}

impl Disruption {
    fn set(&mut self, name: &str, zone: String, ready: bool) {
        if let Some((old_zone, was_ready)) = self.nodes.insert(name.into(), (zone.clone(), ready)) {
            self.uncount(&old_zone, was_ready);
        }
        let count = self.counts.entry(zone).or_default();
        if ready {
            count.0 += 1;
        } else {
            count.1 += 1;
        }
    }

    fn remove(&mut self, name: &str) {
        if let Some((zone, ready)) = self.nodes.remove(name) {
            self.uncount(&zone, ready);
        }
    }

    fn uncount(&mut self, zone: &str, ready: bool) {
        if let Some(count) = self.counts.get_mut(zone) {
            if ready {
                count.0 = count.0.saturating_sub(1);
            } else {
                count.1 = count.1.saturating_sub(1);
            }
            if *count == (0, 0) {
                self.counts.remove(zone);
            }
        }
    }

    /// Recomputes master disruption; `Some(entered)` when it changed.
    fn settle(&mut self) -> Option<bool> {
        let master = !self.counts.is_empty()
            && self
                .counts
                .values()
                .all(|(r, n)| zone_state(*r, *n) == ZoneState::FullDisruption);
        let changed = master != self.master;
        self.master = master;
        changed.then_some(master)
    }

    fn mode(&self, zone: &str) -> NoExecuteMode {
        if self.master {
            return NoExecuteMode::Off;
        }
        match self.counts.get(zone) {
            Some((r, n))
                if zone_state(*r, *n) == ZoneState::PartialDisruption && r + n <= LARGE_ZONE =>
            {
                NoExecuteMode::Frozen
            }
            _ => NoExecuteMode::Normal,
        }
    }
}

/// At most `limit` evictions in any one-second window.
#[derive(Debug, Default)]
struct RateGate {
    window: Option<Instant>,
    used: u32,
}

impl RateGate {
    fn take(&mut self, now: Instant, limit: u32) -> bool {
        match self.window {
            Some(start) if now.duration_since(start) < Duration::from_secs(1) => {}
            _ => {
                self.window = Some(now);
                self.used = 0;
            }
        }
        if self.used < limit {
            self.used += 1;
            true
        } else {
            false
        }
    }
}

/// Pod keys by the node they are bound to, kept by a pod informer callback.
#[derive(Default)]
struct PodsByNode {
    map: Mutex<HashMap<String, BTreeSet<Key>>>,
}

impl PodsByNode {
    fn node_of(pod: &Pod) -> Option<&str> {
        pod.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty())
    }

    fn change(&self, change: &Change<'_, Pod>) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let (old, new) = match change {
            Change::Applied { old, new } => (*old, Some(*new)),
            Change::Deleted(old) => (Some(*old), None),
        };
        if let Some(old) = old {
            if let Some(node) = Self::node_of(old) {
                if let Some(keys) = map.get_mut(node) {
                    keys.remove(&key_of(&old.metadata));
                    if keys.is_empty() {
                        map.remove(node);
                    }
                }
            }
        }
        if let Some(new) = new {
            if let Some(node) = Self::node_of(new) {
                map.entry(node.to_string())
                    .or_default()
                    .insert(key_of(&new.metadata));
            }
        }
    }

    fn on(&self, node: &str) -> Vec<Key> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(node)
            .map(|k| k.iter().cloned().collect())
            .unwrap_or_default()
    }
}

pub struct NodeLifecycle {
    ctx: Context,
    health: Mutex<HashMap<String, Health>>,
    disruption: Mutex<Disruption>,
    gate: Mutex<RateGate>,
    pods: Arc<PodsByNode>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Registers the loop: node changes and pods on tainted nodes queue the node, and every
/// `--node-monitor-period` the disruption state is recomputed and every node queued.
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) {
    let queue = WorkQueue::new();
    let controller = Arc::new(NodeLifecycle::new(ctx.clone()));
    let q = queue.clone();
    ctx.informers.nodes.on_change(move |change| {
        q.add(key_of(&change.object().metadata));
    });
    let q = queue.clone();
    let nodes = ctx.informers.nodes.clone();
    ctx.informers.pods.on_change(move |change| {
        let Some(node) = PodsByNode::node_of(change.object()) else {
            return;
        };
        let tainted = nodes.get(node).is_some_and(|n| {
            n.spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| t.iter().any(|t| t.effect == NO_EXECUTE))
        });
        if tainted {
            q.add(node.to_string());
        }
    });
    let monitor = controller.clone();
    let q = queue.clone();
    tasks.spawn(async move {
        monitor.ctx.informers.wait_synced().await;
        let mut tick = tokio::time::interval(monitor.ctx.config.node_monitor_period);
        loop {
            tick.tick().await;
            monitor.update_disruption(Instant::now());
            for node in monitor.ctx.informers.nodes.list() {
                q.add(key_of(&node.metadata));
            }
        }
    });
    tasks.spawn(runtime::run(controller, queue, ctx.config.concurrent_syncs));
}

impl NodeLifecycle {
    pub fn new(ctx: Context) -> Self {
        let pods = Arc::new(PodsByNode::default());
        let index = pods.clone();
        ctx.informers
            .pods
            .on_change(move |change| index.change(change));
        NodeLifecycle {
            ctx,
            health: Mutex::default(),
            disruption: Mutex::default(),
            gate: Mutex::default(),
            pods,
        }
    }

    /// One monitor pass over every cached node: each is judged (Ready and not silent for longer
    /// than its grace) before any is acted on, so nodes that go silent together enter master
    /// disruption together, as upstream's `monitorNodeHealth` does; deleted nodes are forgotten.
    pub fn update_disruption(&self, now: Instant) {
        let nodes = self.ctx.informers.nodes.list();
        let judged: Vec<(String, String, bool)> = nodes
            .iter()
            .map(|node| {
                let (_, stale) = self.assess(node, now);
                let name = node.metadata.name.clone().unwrap_or_default();
                (name, zone_of(node), is_ready(node) && !stale)
            })
            .collect();
        let transition = {
            let mut disruption = lock(&self.disruption);
            let names: std::collections::HashSet<&str> =
                judged.iter().map(|(n, _, _)| n.as_str()).collect();
            let gone: Vec<String> = disruption
                .nodes
                .keys()
                .filter(|n| !names.contains(n.as_str()))
                .cloned()
                .collect();
            for name in gone {
                disruption.remove(&name);
            }
            for (name, zone, ready) in judged {
                disruption.set(&name, zone, ready);
            }
            disruption.seeded = true;
            disruption.settle()
        };
        self.disruption_changed(transition, now);
    }

    /// Counts node `name` with this controller's latest judgement of it.
    fn judge(&self, name: &str, zone: String, ready: bool, now: Instant) {
        let transition = {
            let mut disruption = lock(&self.disruption);
            disruption.set(name, zone, ready);
            disruption.settle()
        };
        self.disruption_changed(transition, now);
    }

    /// Logs entering or leaving master disruption mode; leaving it restarts every node's grace
    /// period at `now`, as upstream does.
    fn disruption_changed(&self, transition: Option<bool>, now: Instant) {
        match transition {
            Some(true) => {
                tracing::warn!("no node is Ready: entering master disruption mode; evictions stop")
            }
            Some(false) => {
                tracing::info!("a node is Ready again: exiting master disruption mode");
                for health in lock(&self.health).values_mut() {
                    health.probe = now;
                }
            }
            None => {}
        }
    }

    /// Records `node`'s heartbeats as seen at `now`; says whether it has been silent for longer
    /// than its grace period.
    fn assess(&self, node: &Node, now: Instant) -> (Health, bool) {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let (heartbeat, renewed) = self.heartbeats(node);
        let health = {
            let mut map = lock(&self.health);
            let health = observe(map.get(name), heartbeat, renewed, now);
            map.insert(name.to_string(), health.clone());
            health
        };
        let reported = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_deref())
            .is_some_and(|c| condition(c, "Ready").is_some());
        let grace = if reported {
            self.ctx.config.node_monitor_grace_period
        } else {
            self.ctx.config.node_startup_grace_period
        };
        let stale = now.duration_since(health.probe) > grace;
        (health, stale)
    }

    fn heartbeats(&self, node: &Node) -> (Option<Timestamp>, Option<Timestamp>) {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let conditions = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_deref())
            .unwrap_or_default();
        let heartbeat = condition(conditions, "Ready")
            .and_then(|c| c.last_heartbeat_time.as_ref())
            .map(|t| t.0);
        let renewed = self
            .ctx
            .informers
            .node_leases
            .get_in(Some(NODE_LEASE_NAMESPACE), name)
            .and_then(|l| {
                l.spec
                    .as_ref()
                    .and_then(|s| s.renew_time.as_ref())
                    .map(|t| t.0)
            });
        (heartbeat, renewed)
    }

    /// One pass over node `name` at `now` (this controller's clock) and `wall` (for the
    /// timestamps it writes and the taints' `timeAdded`).
    pub async fn reconcile_at(
        &self,
        name: &str,
        now: Instant,
        wall: Timestamp,
    ) -> Result<Action, Error> {
        if !lock(&self.disruption).seeded {
            self.update_disruption(now);
        }
        let Some(cached) = self.ctx.informers.nodes.get(name) else {
            lock(&self.health).remove(name);
            let transition = {
                let mut disruption = lock(&self.disruption);
                disruption.remove(name);
                disruption.settle()
            };
            self.disruption_changed(transition, now);
            return Ok(Action::Done);
        };
        let mut node = (*cached).clone();
        let (mut health, stale) = self.assess(&node, now);
        let mut conditions = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        if stale {
            if let Some(updated) =
                mark_unknown(&conditions, node.metadata.creation_timestamp.as_ref(), wall)
            {
                node.status.get_or_insert_with(Default::default).conditions = Some(updated.clone());
                node = self.ctx.api.replace_status(&node).await?;
                tracing::info!(
                    node = name,
                    "node stopped posting status: conditions Unknown"
                );
                conditions = updated;
                health.heartbeat = condition(&conditions, "Ready")
                    .and_then(|c| c.last_heartbeat_time.as_ref())
                    .map(|t| t.0);
            }
        }
        let ready = condition(&conditions, "Ready").map(|c| c.status.clone());
        if health.ready.as_deref() == Some("True") && ready.as_deref() != Some("True") {
            self.ctx.events.record(
                &node,
                EventType::Normal,
                "NodeNotReady",
                format!("Node {name} status is now: NodeNotReady"),
            );
        }
        health.ready = ready.clone();
        self.judge(name, zone_of(&node), ready.as_deref() == Some("True"), now);

        let taints = self.reconcile_taints(&mut node, &conditions, wall).await?;
        if ready.as_deref() != Some("True") {
            self.mark_pods_not_ready(name, wall).await?;
        }
        let timed = resolve_added(&taints, &mut health.untimed, wall);
        if let Some(h) = lock(&self.health).get_mut(name) {
            h.heartbeat = health.heartbeat;
            h.ready = health.ready.clone();
            h.untimed = health.untimed.clone();
        }
        self.evict(name, &timed, now, wall).await
    }

    /// Writes the node's taints when this controller's part of them changes; returns them.
    async fn reconcile_taints(
        &self,
        node: &mut Node,
        conditions: &[NodeCondition],
        wall: Timestamp,
    ) -> Result<Vec<Taint>, Error> {
        let spec = node.spec.clone().unwrap_or_default();
        let current = spec.taints.clone().unwrap_or_default();
        let mode = lock(&self.disruption).mode(&zone_of(node));
        let wanted = wanted_taints(
            conditions,
            spec.unschedulable.unwrap_or(false),
            &current,
            mode,
        );
        let Some(taints) = desired_taints(&current, &wanted, wall) else {
            return Ok(current);
        };
        node.spec.get_or_insert_with(Default::default).taints =
            (!taints.is_empty()).then(|| taints.clone());
        *node = self.ctx.api.replace(&*node).await?;
        tracing::debug!(
            node = node.metadata.name.as_deref().unwrap_or_default(),
            ?wanted,
            "node taints updated"
        );
        Ok(taints)
    }

    /// `MarkPodsNotReady`: the `Ready` condition of every pod on the node turns `False`.
    async fn mark_pods_not_ready(&self, node: &str, wall: Timestamp) -> Result<(), Error> {
        for key in self.pods.on(node) {
            let Some(pod) = self.ctx.informers.pods.get(&key) else {
                continue;
            };
            let ready = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_deref())
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if !ready {
                continue;
            }
            let ns = pod.metadata.namespace.as_deref();
            let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
            let path = format!("{}/status", path_of::<Pod>(ns, Some(pod_name)));
            let patch = json!({"status": {"conditions": [
                {"type": "Ready", "status": "False", "lastTransitionTime": Time(wall)}
            ]}});
            match self
                .ctx
                .api
                .raw()
                .patch(&path, PatchType::Strategic, patch)
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            }
            self.ctx.events.record(
                &*pod,
                EventType::Warning,
                "NodeNotReady",
                "Node is not ready",
            );
        }
        Ok(())
    }

    /// Deletes the pods on `node` whose tolerations ran out; asks to come back at the next
    /// deadline.
    async fn evict(
        &self,
        node: &str,
        taints: &[(Taint, Timestamp)],
        now: Instant,
        wall: Timestamp,
    ) -> Result<Action, Error> {
        if !taints.iter().any(|(t, _)| t.effect == NO_EXECUTE) {
            return Ok(Action::Done);
        }
        let mut next: Option<Duration> = None;
        let mut soonest = |d: Duration| next = Some(next.map_or(d, |n: Duration| n.min(d)));
        for key in self.pods.on(node) {
            let Some(pod) = self.ctx.informers.pods.get(&key) else {
                continue;
            };
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let tolerations = pod
                .spec
                .as_ref()
                .and_then(|s| s.tolerations.as_deref())
                .unwrap_or_default();
            match eviction(tolerations, taints, wall) {
                Eviction::Never => {}
                Eviction::At(at) => {
                    let wait = at.duration_since(wall);
                    soonest(Duration::try_from(wait).unwrap_or(Duration::from_secs(1)));
                }
                Eviction::Now => {
                    if !lock(&self.gate).take(now, EVICTIONS_PER_SECOND) {
                        soonest(Duration::from_secs(1));
                        continue;
                    }
                    self.evict_pod(&pod, wall).await?;
                }
            }
        }
        Ok(next.map_or(Action::Done, Action::RequeueAfter))
    }

    /// Upstream's `addConditionAndDeletePod`: a `DisruptionTarget` condition, then a DELETE.
    async fn evict_pod(&self, pod: &Pod, wall: Timestamp) -> Result<(), Error> {
        let ns = pod.metadata.namespace.as_deref();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        self.ctx.events.record(
            pod,
            EventType::Normal,
            "TaintManagerEviction",
            format!("Marking for deletion Pod {}", key_of(&pod.metadata)),
        );
        let path = format!("{}/status", path_of::<Pod>(ns, Some(name)));
        let patch = json!({"status": {"conditions": [{
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "DeletionByTaintManager",
            "message": "Taint manager: deleting due to NoExecute taint",
            "lastTransitionTime": Time(wall),
        }]}});
        match self
            .ctx
            .api
            .raw()
            .patch(&path, PatchType::Strategic, patch)
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        self.ctx
            .api
            .delete::<Pod>(ns, name, &delete_uid(uid, None))
            .await?;
        tracing::info!(pod = key_of(&pod.metadata), node = ?pod.spec.as_ref().and_then(|s| s.node_name.as_deref()), "evicted: NoExecute taint not tolerated (any more)");
        Ok(())
    }
}

/// Each `NoExecute` taint with the time it was added: its `timeAdded`, else when this
/// controller first saw it (remembered in `untimed`).
fn resolve_added(
    taints: &[Taint],
    untimed: &mut HashMap<String, Timestamp>,
    wall: Timestamp,
) -> Vec<(Taint, Timestamp)> {
    let mut seen = HashMap::new();
    let out = taints
        .iter()
        .filter(|t| t.effect == NO_EXECUTE)
        .map(|t| {
            let added = match &t.time_added {
                Some(at) => at.0,
                None => {
                    let first = *untimed.get(&t.key).unwrap_or(&wall);
                    seen.insert(t.key.clone(), first);
                    first
                }
            };
            (t.clone(), added)
        })
        .collect();
    *untimed = seen;
    out
}

#[async_trait::async_trait]
impl Reconciler for NodeLifecycle {
    fn name(&self) -> &'static str {
        "nodelifecycle"
    }

    async fn reconcile(&self, key: &str) -> Result<Action, Error> {
        // Heartbeats, pods and the disruption counts are judged from complete caches only.
        let informers = &self.ctx.informers;
        informers.nodes.wait_synced().await;
        informers.node_leases.wait_synced().await;
        informers.pods.wait_synced().await;
        self.reconcile_at(key, Instant::now(), Timestamp::now())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::client::RecordingClient;
    use crate::controllers::events::{drain, Record};
    use crate::controllers::Config;
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus, PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
    use tokio::sync::mpsc::Receiver;

    /// Wall-clock seconds from a fixed origin.
    fn ts(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_750_000_000 + seconds).unwrap()
    }

    fn setup() -> (NodeLifecycle, RecordingClient, Receiver<Record>) {
        let fake = RecordingClient::new();
        let (ctx, rx) = Context::new(Arc::new(fake.clone()), Config::default());
        (NodeLifecycle::new(ctx), fake, rx)
    }

    fn cond(kind: &str, status: &str, heartbeat: Timestamp) -> NodeCondition {
        NodeCondition {
            type_: kind.into(),
            status: status.into(),
            last_heartbeat_time: Some(Time(heartbeat)),
            last_transition_time: Some(Time(heartbeat)),
            ..Default::default()
        }
    }

    fn taint(key: &str, effect: &str, added: Option<Timestamp>) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            time_added: added.map(Time),
            value: None,
        }
    }

    fn node(name: &str, conditions: Vec<NodeCondition>, taints: Vec<Taint>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                resource_version: Some("7".into()),
                creation_timestamp: Some(Time(ts(-1000))),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: (!taints.is_empty()).then_some(taints),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(conditions),
                ..Default::default()
            }),
        }
    }

    fn lease(name: &str, renewed: Timestamp) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(NODE_LEASE_NAMESPACE.into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(renewed)),
                ..Default::default()
            }),
        }
    }

    fn toleration(key: &str, operator: &str, seconds: Option<i64>) -> Toleration {
        Toleration {
            key: (!key.is_empty()).then(|| key.to_string()),
            operator: Some(operator.into()),
            effect: Some(NO_EXECUTE.into()),
            toleration_seconds: seconds,
            value: None,
        }
    }

    fn pod(name: &str, node: &str, tolerations: Vec<Toleration>, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                tolerations: Some(tolerations),
                ..Default::default()
            }),
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn reasons(rx: &mut Receiver<Record>) -> Vec<String> {
        drain(rx).into_iter().map(|r| r.reason).collect()
    }

    #[tokio::test]
    async fn a_silent_node_goes_unknown_after_the_grace_measured_on_our_clock() {
        let (c, fake, mut rx) = setup();
        // The node's clock is years behind ours: only changes count, not the values.
        let skewed = Timestamp::from_second(946_684_800).unwrap();
        c.ctx
            .informers
            .nodes
            .apply(node("n1", vec![cond("Ready", "True", skewed)], vec![]));
        c.ctx.informers.node_leases.apply(lease("n1", skewed));
        // Another node stays Ready, so this is no master disruption.
        c.ctx
            .informers
            .nodes
            .apply(node("n2", vec![cond("Ready", "True", ts(0))], vec![]));
        c.ctx
            .informers
            .pods
            .apply(pod("web", "n1", vec![toleration("", "Exists", None)], true));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(
            c.reconcile_at("n1", at(0), ts(0)).await.unwrap(),
            Action::Done
        );
        assert_eq!(
            c.reconcile_at("n1", at(45), ts(45)).await.unwrap(),
            Action::Done
        );
        // A Lease renewal restarts the grace period.
        c.ctx
            .informers
            .node_leases
            .apply(lease("n1", skewed + SignedDuration::from_secs(40)));
        c.reconcile_at("n1", at(46), ts(46)).await.unwrap();
        c.reconcile_at("n1", at(96), ts(96)).await.unwrap();
        assert!(fake.calls().is_empty(), "{:?}", fake.short_calls());

        c.reconcile_at("n1", at(97), ts(97)).await.unwrap();
        assert_eq!(
            fake.short_calls(),
            vec![
                "update /api/v1/nodes/n1/status",
                "update /api/v1/nodes/n1",
                "patch /api/v1/namespaces/default/pods/web/status",
            ]
        );
        let calls = fake.calls();
        let conditions = calls[0].body["status"]["conditions"].as_array().unwrap();
        let types: Vec<(&str, &str, &str)> = conditions
            .iter()
            .map(|c| {
                (
                    c["type"].as_str().unwrap(),
                    c["status"].as_str().unwrap(),
                    c["reason"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            types,
            vec![
                ("Ready", "Unknown", "NodeStatusUnknown"),
                ("MemoryPressure", "Unknown", "NodeStatusNeverUpdated"),
                ("DiskPressure", "Unknown", "NodeStatusNeverUpdated"),
                ("PIDPressure", "Unknown", "NodeStatusNeverUpdated"),
            ]
        );
        assert_eq!(conditions[0]["message"], STOPPED);
        assert_eq!(calls[0].body["metadata"]["resourceVersion"], "7");
        let taints: Vec<(&str, &str)> = calls[1].body["spec"]["taints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["key"].as_str().unwrap(), t["effect"].as_str().unwrap()))
            .collect();
        assert_eq!(
            taints,
            vec![(UNREACHABLE, NO_SCHEDULE), (UNREACHABLE, NO_EXECUTE)]
        );
        assert!(calls[1].body["spec"]["taints"][1]["timeAdded"].is_string());
        assert_eq!(calls[2].body["status"]["conditions"][0]["status"], "False");
        assert_eq!(reasons(&mut rx), vec!["NodeNotReady", "NodeNotReady"]);
    }

    #[tokio::test]
    async fn a_node_that_never_reported_gets_the_startup_grace() {
        let (c, fake, _rx) = setup();
        c.ctx.informers.nodes.apply(node("n1", vec![], vec![]));
        let t0 = Instant::now();
        c.reconcile_at("n1", t0, ts(0)).await.unwrap();
        c.reconcile_at("n1", t0 + Duration::from_secs(60), ts(60))
            .await
            .unwrap();
        assert!(fake.calls().is_empty(), "{:?}", fake.short_calls());
        c.reconcile_at("n1", t0 + Duration::from_secs(61), ts(61))
            .await
            .unwrap();
        let calls = fake.calls();
        assert_eq!(calls[0].short(), "update /api/v1/nodes/n1/status");
        let ready = &calls[0].body["status"]["conditions"][0];
        assert_eq!(
            (
                &ready["type"],
                &ready["status"],
                &ready["reason"],
                &ready["message"]
            ),
            (
                &json!("Ready"),
                &json!("Unknown"),
                &json!("NodeStatusNeverUpdated"),
                &json!(NEVER)
            )
        );
    }

    #[test]
    fn taints_follow_conditions_and_disruption() {
        use NoExecuteMode::*;
        let old = Some(ts(-100));
        let user = taint("example.com/gpu", "NoSchedule", None);
        #[allow(clippy::type_complexity)]
        let cases: Vec<(
            &str,
            &str,
            Vec<Taint>,
            NoExecuteMode,
            bool,
            Option<Vec<(&str, &str, Option<Timestamp>)>>,
        )> = vec![
            (
                "ready: nothing to do",
                "True",
                vec![user.clone()],
                Normal,
                false,
                None,
            ),
            (
                "not ready: both not-ready taints",
                "False",
                vec![user.clone()],
                Normal,
                false,
                Some(vec![
                    ("example.com/gpu", "NoSchedule", None),
                    (NOT_READY, NO_SCHEDULE, Some(ts(0))),
                    (NOT_READY, NO_EXECUTE, Some(ts(0))),
                ]),
            ),
            (
                "unknown swaps not-ready for unreachable",
                "Unknown",
                vec![
                    taint(NOT_READY, NO_SCHEDULE, old),
                    taint(NOT_READY, NO_EXECUTE, old),
                ],
                Normal,
                false,
                Some(vec![
                    (UNREACHABLE, NO_SCHEDULE, Some(ts(0))),
                    (UNREACHABLE, NO_EXECUTE, Some(ts(0))),
                ]),
            ),
            (
                "ready again removes ours, keeps others'",
                "True",
                vec![
                    taint(UNREACHABLE, NO_SCHEDULE, old),
                    user.clone(),
                    taint(UNREACHABLE, NO_EXECUTE, old),
                ],
                Normal,
                false,
                Some(vec![("example.com/gpu", "NoSchedule", None)]),
            ),
            (
                "kept taints keep their time",
                "Unknown",
                vec![taint(UNREACHABLE, NO_SCHEDULE, old)],
                Normal,
                false,
                Some(vec![
                    (UNREACHABLE, NO_SCHEDULE, old),
                    (UNREACHABLE, NO_EXECUTE, Some(ts(0))),
                ]),
            ),
            (
                "frozen zone: no new NoExecute",
                "Unknown",
                vec![],
                Frozen,
                false,
                Some(vec![(UNREACHABLE, NO_SCHEDULE, Some(ts(0)))]),
            ),
            (
                "frozen zone: an existing one is swapped",
                "Unknown",
                vec![taint(NOT_READY, NO_EXECUTE, old)],
                Frozen,
                false,
                Some(vec![
                    (UNREACHABLE, NO_SCHEDULE, Some(ts(0))),
                    (UNREACHABLE, NO_EXECUTE, Some(ts(0))),
                ]),
            ),
            (
                "master disruption removes NoExecute",
                "Unknown",
                vec![
                    taint(UNREACHABLE, NO_SCHEDULE, old),
                    taint(UNREACHABLE, NO_EXECUTE, old),
                ],
                Off,
                false,
                Some(vec![(UNREACHABLE, NO_SCHEDULE, old)]),
            ),
            (
                "cordoned",
                "True",
                vec![],
                Normal,
                true,
                Some(vec![(UNSCHEDULABLE, NO_SCHEDULE, Some(ts(0)))]),
            ),
        ];
        for (name, ready, current, mode, unschedulable, expected) in cases {
            let conditions = vec![cond("Ready", ready, ts(-1))];
            let wanted = wanted_taints(&conditions, unschedulable, &current, mode);
            let got = desired_taints(&current, &wanted, ts(0)).map(|taints| {
                taints
                    .iter()
                    .map(|t| {
                        (
                            t.key.clone(),
                            t.effect.clone(),
                            t.time_added.as_ref().map(|t| t.0),
                        )
                    })
                    .collect::<Vec<_>>()
            });
            let expected = expected.map(|e| {
                e.into_iter()
                    .map(|(k, e, t)| (k.to_string(), e.to_string(), t))
                    .collect::<Vec<_>>()
            });
            assert_eq!(got, expected, "{name}");
        }
        let pressure = vec![
            cond("Ready", "True", ts(0)),
            cond("MemoryPressure", "True", ts(0)),
        ];
        assert_eq!(
            wanted_taints(&pressure, false, &[], Normal),
            vec![("node.kubernetes.io/memory-pressure", NO_SCHEDULE)]
        );
    }

    #[test]
    fn eviction_follows_tolerations() {
        let unreachable = (taint(UNREACHABLE, NO_EXECUTE, None), ts(0));
        let not_ready = (taint(NOT_READY, NO_EXECUTE, None), ts(50));
        type Case = (
            &'static str,
            Vec<Toleration>,
            Vec<(Taint, Timestamp)>,
            Timestamp,
            Eviction,
        );
        let cases: Vec<Case> = vec![
            (
                "no toleration",
                vec![],
                vec![unreachable.clone()],
                ts(10),
                Eviction::Now,
            ),
            (
                "tolerated for 300 s",
                vec![toleration(UNREACHABLE, "Exists", Some(300))],
                vec![unreachable.clone()],
                ts(10),
                Eviction::At(ts(300)),
            ),
            (
                "tolerated for 300 s, elapsed",
                vec![toleration(UNREACHABLE, "Exists", Some(300))],
                vec![unreachable.clone()],
                ts(300),
                Eviction::Now,
            ),
            (
                "tolerated forever",
                vec![toleration(UNREACHABLE, "Exists", None)],
                vec![unreachable.clone()],
                ts(10_000),
                Eviction::Never,
            ),
            (
                "another key",
                vec![toleration(NOT_READY, "Exists", None)],
                vec![unreachable.clone()],
                ts(10),
                Eviction::Now,
            ),
            (
                "everything tolerated",
                vec![toleration("", "Exists", None)],
                vec![unreachable.clone(), not_ready.clone()],
                ts(10),
                Eviction::Never,
            ),
            (
                "the earliest deadline of several taints",
                vec![
                    toleration(UNREACHABLE, "Exists", None),
                    toleration(NOT_READY, "Exists", Some(60)),
                ],
                vec![unreachable.clone(), not_ready.clone()],
                ts(10),
                Eviction::At(ts(110)),
            ),
            (
                "Equal with another value",
                vec![Toleration {
                    value: Some("x".into()),
                    ..toleration(UNREACHABLE, "Equal", None)
                }],
                vec![unreachable.clone()],
                ts(10),
                Eviction::Now,
            ),
            (
                "negative seconds mean now",
                vec![toleration(UNREACHABLE, "Exists", Some(-5))],
                vec![unreachable.clone()],
                ts(0),
                Eviction::Now,
            ),
            (
                "NoSchedule taints never evict",
                vec![],
                vec![(taint(UNREACHABLE, NO_SCHEDULE, None), ts(0))],
                ts(10),
                Eviction::Never,
            ),
        ];
        for (name, tolerations, taints, now, expected) in cases {
            assert_eq!(eviction(&tolerations, &taints, now), expected, "{name}");
        }
    }

    fn not_ready_node(name: &str) -> Node {
        node(
            name,
            vec![cond("Ready", "False", ts(0))],
            vec![
                taint(NOT_READY, NO_SCHEDULE, Some(ts(0))),
                taint(NOT_READY, NO_EXECUTE, Some(ts(0))),
            ],
        )
    }

    #[tokio::test]
    async fn pods_are_evicted_at_once_or_when_their_toleration_runs_out() {
        let (c, fake, mut rx) = setup();
        c.ctx.informers.nodes.apply(not_ready_node("n1"));
        c.ctx
            .informers
            .nodes
            .apply(node("n2", vec![cond("Ready", "True", ts(0))], vec![]));
        let pods = &c.ctx.informers.pods;
        pods.apply(pod("plain", "n1", vec![], false));
        pods.apply(pod(
            "patient",
            "n1",
            vec![toleration(NOT_READY, "Exists", Some(300))],
            false,
        ));
        pods.apply(pod(
            "daemon",
            "n1",
            vec![toleration(NOT_READY, "Exists", None)],
            false,
        ));
        let mut leaving = pod("leaving", "n1", vec![], false);
        leaving.metadata.deletion_timestamp = Some(Time(ts(50)));
        pods.apply(leaving);
        pods.apply(pod("elsewhere", "n2", vec![], false));
        let t0 = Instant::now();

        let action = c.reconcile_at("n1", t0, ts(100)).await.unwrap();
        assert_eq!(action, Action::RequeueAfter(Duration::from_secs(200)));
        assert_eq!(
            fake.short_calls(),
            vec![
                "patch /api/v1/namespaces/default/pods/plain/status",
                "delete /api/v1/namespaces/default/pods/plain",
            ]
        );
        let calls = fake.calls();
        assert_eq!(
            calls[0].body["status"]["conditions"][0]["reason"],
            "DeletionByTaintManager"
        );
        assert_eq!(calls[1].body["preconditions"]["uid"], "uid-plain");
        let events = drain(&mut rx);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].reason, "TaintManagerEviction");
        assert_eq!(events[0].message, "Marking for deletion Pod default/plain");

        fake.clear();
        pods.delete(&pod("plain", "n1", vec![], false));
        // The kubelet still reports (NotReady), so the node does not turn Unknown.
        let mut reporting = not_ready_node("n1");
        reporting.status.as_mut().unwrap().conditions = Some(vec![cond("Ready", "False", ts(250))]);
        c.ctx.informers.nodes.apply(reporting);
        let action = c
            .reconcile_at("n1", t0 + Duration::from_secs(200), ts(300))
            .await
            .unwrap();
        assert_eq!(action, Action::Done);
        assert_eq!(
            fake.short_calls(),
            vec![
                "patch /api/v1/namespaces/default/pods/patient/status",
                "delete /api/v1/namespaces/default/pods/patient",
            ]
        );
    }

    #[tokio::test]
    async fn nothing_is_evicted_while_no_node_is_ready() {
        let (c, fake, _rx) = setup();
        c.ctx.informers.nodes.apply(not_ready_node("n1"));
        c.ctx.informers.nodes.apply(not_ready_node("n2"));
        c.ctx
            .informers
            .pods
            .apply(pod("plain", "n1", vec![], false));
        let t0 = Instant::now();
        c.update_disruption(t0);
        c.reconcile_at("n1", t0, ts(100)).await.unwrap();
        // Master disruption mode: the NoExecute taint goes, no pod is deleted.
        assert_eq!(fake.short_calls(), vec!["update /api/v1/nodes/n1"]);
        let taints = fake.calls()[0].body["spec"]["taints"].clone();
        assert_eq!(
            taints,
            json!([{"key": NOT_READY, "effect": NO_SCHEDULE, "timeAdded": Time(ts(0))}])
        );

        // A node comes back: eviction resumes.
        c.ctx
            .informers
            .nodes
            .apply(node("n2", vec![cond("Ready", "True", ts(0))], vec![]));
        c.reconcile_at("n2", t0, ts(100)).await.unwrap();
        fake.clear();
        c.reconcile_at("n1", t0, ts(100)).await.unwrap();
        assert_eq!(
            fake.short_calls(),
            vec![
                "patch /api/v1/namespaces/default/pods/plain/status",
                "delete /api/v1/namespaces/default/pods/plain",
            ]
        );
    }

    #[tokio::test]
    async fn the_last_node_to_go_silent_enters_disruption_before_its_taints_are_decided() {
        let (c, fake, _rx) = setup();
        let mut gone = not_ready_node("n1");
        gone.status.as_mut().unwrap().conditions = Some(vec![cond("Ready", "Unknown", ts(0))]);
        c.ctx.informers.nodes.apply(gone);
        c.ctx
            .informers
            .nodes
            .apply(node("n2", vec![cond("Ready", "True", ts(0))], vec![]));
        c.ctx
            .informers
            .pods
            .apply(pod("plain", "n2", vec![], false));
        let t0 = Instant::now();
        c.update_disruption(t0);
        c.reconcile_at("n2", t0, ts(0)).await.unwrap();
        fake.clear();
        c.reconcile_at("n2", t0 + Duration::from_secs(51), ts(51))
            .await
            .unwrap();
        // n2 turns Unknown; with no Ready node left it gets no NoExecute taint, and its pod stays.
        assert_eq!(
            fake.short_calls(),
            vec!["update /api/v1/nodes/n2/status", "update /api/v1/nodes/n2"]
        );
        assert_eq!(
            fake.calls()[1].body["spec"]["taints"],
            json!([{"key": UNREACHABLE, "effect": NO_SCHEDULE, "timeAdded": Time(ts(51))}])
        );
    }

    #[tokio::test]
    async fn nodes_that_go_silent_together_enter_disruption_together() {
        let (c, fake, _rx) = setup();
        for n in ["n1", "n2"] {
            c.ctx
                .informers
                .nodes
                .apply(node(n, vec![cond("Ready", "True", ts(0))], vec![]));
            c.ctx
                .informers
                .pods
                .apply(pod(&format!("p-{n}"), n, vec![], false));
        }
        let t0 = Instant::now();
        c.update_disruption(t0);
        c.update_disruption(t0 + Duration::from_secs(51));
        c.reconcile_at("n1", t0 + Duration::from_secs(51), ts(51))
            .await
            .unwrap();
        assert_eq!(
            fake.short_calls(),
            vec!["update /api/v1/nodes/n1/status", "update /api/v1/nodes/n1"]
        );
        assert_eq!(
            fake.calls()[1].body["spec"]["taints"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn zones_are_judged_by_their_ready_nodes() {
        let mut d = Disruption::default();
        for (name, zone, ready) in [
            ("a1", "a", false),
            ("a2", "a", false),
            ("b1", "b", true),
            ("c1", "c", true),
            ("c2", "c", false),
            ("c3", "c", false),
            ("c4", "c", false),
        ] {
            d.set(name, zone.into(), ready);
        }
        assert_eq!(d.settle(), None);
        // One zone down while others are up: upstream evicts at the normal rate there; a small
        // zone mostly down gets no new NoExecute taints.
        assert_eq!(d.mode("a"), NoExecuteMode::Normal);
        assert_eq!(d.mode("b"), NoExecuteMode::Normal);
        assert_eq!(d.mode("c"), NoExecuteMode::Frozen);
        // Every zone down: master disruption, entered once.
        d.set("b1", "b".into(), false);
        d.set("c1", "c".into(), false);
        assert_eq!(d.settle(), Some(true));
        assert_eq!(d.settle(), None);
        assert_eq!(d.mode("a"), NoExecuteMode::Off);
        // A node judged again moves between the counts; a deleted one leaves them.
        d.set("c1", "c".into(), true);
        assert_eq!(d.settle(), Some(false));
        d.remove("c1");
        assert_eq!(d.settle(), Some(true));
        assert_eq!(d.counts["c"], (0, 3));
    }

    #[test]
    fn the_rate_gate_lets_a_hundred_through_per_second() {
        let mut gate = RateGate::default();
        let t0 = Instant::now();
        let passed = (0..150)
            .filter(|_| gate.take(t0, EVICTIONS_PER_SECOND))
            .count();
        assert_eq!(passed, 100);
        assert!(gate.take(t0 + Duration::from_secs(1), EVICTIONS_PER_SECOND));
    }
}
