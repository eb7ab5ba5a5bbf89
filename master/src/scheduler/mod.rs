//! The scheduler: places pods without `spec.nodeName` on nodes, writing only `pods/binding`
//! (and, for pods it cannot place, their `PodScheduled` condition and an Event).
//!
//! Shape (kube-scheduler 1.33, default profile):
//!
//! - informer callbacks keep the node-info [`cache`] in step with pods and nodes, and feed the
//!   scheduling [`queue`] with the pods that need a node;
//! - one task takes pods off the queue one at a time and decides where each goes
//!   ([`framework::Scheduler::schedule`]: [`filters`], then [`scores`]) — sequential, as
//!   upstream, so every decision sees the previous ones;
//! - the chosen node is *assumed* in the cache at once and the binding is sent by a spawned
//!   task (at most [`MAX_IN_FLIGHT`] at a time), so the next decision does not wait for the API.
//!   A failed binding un-assumes the pod and retries it after a backoff.
//!
//! Not implemented: preemption (the message says no victims were found), volume plugins,
//! image locality, extenders, multiple profiles.

pub mod affinity;
pub mod cache;
pub mod filters;
pub mod framework;
pub mod queue;
pub mod resources;
pub mod scores;
pub mod selectors;
pub mod spread;

#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::controllers::client::PatchType;
use crate::controllers::runtime::{key_of, Change};
use crate::controllers::{Api, Context, EventRecorder, EventType, Informer, Key};
use cache::Cache;
use framework::{Decision, Scheduler};
use queue::Queue;

/// The `spec.schedulerName` this scheduler serves.
pub const SCHEDULER_NAME: &str = "default-scheduler";
/// Bindings and status writes in flight at once; the scheduling loop waits beyond that.
pub const MAX_IN_FLIGHT: usize = 64;

/// Starts the scheduler: registers its informer callbacks and spawns its loop.
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) {
    let shared = Shared::new(
        ctx.informers.pods.clone(),
        ctx.informers.nodes.clone(),
        ctx.informers.namespaces.clone(),
    );
    let on_pod = shared.clone();
    ctx.informers
        .pods
        .on_change(move |change| on_pod.on_pod(change));
    let on_node = shared.clone();
    ctx.informers
        .nodes
        .on_change(move |change| on_node.on_node(change));
    let api = ctx.api.clone();
    let events = ctx.events.clone();
    tasks.spawn(
        shared
            .run(api, events)
            .instrument(tracing::info_span!("scheduler")),
    );
}

/// The cache and the queue, with what the callbacks and the loop share.
struct State {
    cache: Cache,
    queue: Queue,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the loop when a pod becomes active.
    wake: Notify,
    pods: Informer<Pod>,
    nodes: Informer<Node>,
    namespaces: Informer<Namespace>,
}

/// Whether a pod not yet bound is this scheduler's to place now.
fn wants_node(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    let ours = matches!(
        spec.scheduler_name.as_deref(),
        None | Some("") | Some(SCHEDULER_NAME)
    );
    let gated = spec
        .scheduling_gates
        .as_ref()
        .is_some_and(|g| !g.is_empty());
    ours && !gated
        && spec.node_name.as_deref().unwrap_or_default().is_empty()
        && pod.metadata.deletion_timestamp.is_none()
        && !is_terminal(pod)
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn bound_node(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// Whether an update can change where the pod fits (upstream's `isPodUpdated` ignores status
/// and bookkeeping metadata).
fn spec_or_labels_changed(old: Option<&Pod>, new: &Pod) -> bool {
    old.is_none_or(|old| old.spec != new.spec || old.metadata.labels != new.metadata.labels)
}

fn created_nanos(pod: &Pod) -> i128 {
    pod.metadata
        .creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_nanosecond())
}

/// What the loop does after a decision, outside the lock.
enum Outcome {
    Bind {
        node: String,
    },
    Report {
        reason: &'static str,
        message: String,
    },
    Nothing,
}

impl Shared {
    fn new(
        pods: Informer<Pod>,
        nodes: Informer<Node>,
        namespaces: Informer<Namespace>,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            state: Mutex::new(State {
                cache: Cache::default(),
                queue: Queue::default(),
            }),
            wake: Notify::new(),
            pods,
            nodes,
            namespaces,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps the cache and queue in step with a pod change. Runs on the informer's task.
    fn on_pod(&self, change: &Change<'_, Pod>) {
        let now = Instant::now();
        let key = key_of(&change.object().metadata);
        let mut wake = false;
        match change {
            Change::Applied { old, new } => {
                let mut state = self.lock();
                if let Some(node) = bound_node(new) {
                    state.queue.remove(&key);
                    if is_terminal(new) {
                        // A finished pod frees its node: parked pods may fit now.
                        if state.cache.remove_pod(&key).is_some() {
                            state.queue.move_all(now);
                            wake = true;
                        }
                    } else {
                        state.cache.add_pod(key, new, node, false);
                    }
                } else if wants_node(new) {
                    let uid = new.metadata.uid.as_deref().unwrap_or_default();
                    if state
                        .cache
                        .pod(&key)
                        .is_some_and(|p| p.assumed && p.uid() == uid)
                    {
                        // Bound by us a moment ago; the informer has not caught up yet.
                        return;
                    }
                    let priority = new.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
                    let changed = spec_or_labels_changed(*old, new);
                    state.queue.add_or_update(
                        &key,
                        uid,
                        priority,
                        created_nanos(new),
                        changed,
                        now,
                    );
                    wake = true;
                } else {
                    // Not (or no longer) ours, or being deleted before it was bound.
                    state.queue.remove(&key);
                }
            }
            Change::Deleted(_) => {
                let mut state = self.lock();
                state.queue.remove(&key);
                if state.cache.remove_pod(&key).is_some() {
                    state.queue.move_all(now);
                    wake = true;
                }
            }
        }
        if wake {
            self.wake.notify_one();
        }
    }

    /// Keeps the cache in step with a node change; a new node or one that changed in a way that
    /// matters moves parked pods back.
    fn on_node(&self, change: &Change<'_, Node>) {
        let now = Instant::now();
        match change {
            Change::Applied { new, .. } => {
                let name = new.metadata.name.clone().unwrap_or_default();
                let node = self
                    .nodes
                    .get(&name)
                    .filter(|n| std::ptr::eq(n.as_ref(), *new))
                    .unwrap_or_else(|| Arc::new((*new).clone()));
                let mut state = self.lock();
                if state.cache.upsert_node(node) {
                    state.queue.move_all(now);
                    drop(state);
                    self.wake.notify_one();
                }
            }
            Change::Deleted(old) => {
                let name = old.metadata.name.as_deref().unwrap_or_default();
                self.lock().cache.remove_node(name);
            }
        }
    }

    /// The scheduling loop: waits for the caches, then schedules pod after pod.
    async fn run(self: Arc<Self>, api: Api, events: EventRecorder) {
        self.pods.wait_synced().await;
        self.nodes.wait_synced().await;
        tracing::info!("scheduler caches synced; scheduling");
        let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let mut writes = JoinSet::new();
        let mut scheduler = Scheduler::new();
        let mut since_yield = 0u32;
        loop {
            while writes.try_join_next().is_some() {}
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (key, uid) = self.next().await;
            let Some(pod) = self.pods.get(&key) else {
                self.lock().queue.remove(&key);
                continue;
            };
            let outcome = self.decide(&mut scheduler, &key, &uid, &pod);
            match outcome {
                Outcome::Bind { node } => {
                    let shared = self.clone();
                    let api = api.clone();
                    let events = events.clone();
                    let span = tracing::debug_span!("bind", pod = %key, node);
                    writes.spawn(
                        async move {
                            shared
                                .bind(&api, &events, &pod, key, uid, node, permit)
                                .await;
                        }
                        .instrument(span),
                    );
                }
                Outcome::Report { reason, message } => {
                    events.record(
                        &*pod,
                        EventType::Warning,
                        "FailedScheduling",
                        message.clone(),
                    );
                    if let Some(patch) = unschedulable_patch(&pod, reason, &message) {
                        let api = api.clone();
                        writes.spawn(async move {
                            write_condition(&api, &pod, patch).await;
                            drop(permit);
                        });
                    }
                }
                Outcome::Nothing => {}
            }
            // Decisions are CPU work with no await in them: let the runtime breathe.
            since_yield += 1;
            if since_yield >= 32 {
                since_yield = 0;
                tokio::task::yield_now().await;
            }
        }
    }

    /// The next pod to schedule, waiting for one to be ready.
    async fn next(&self) -> (Key, String) {
        loop {
            let notified = self.wake.notified();
            let due = {
                let mut state = self.lock();
                if let Some(next) = state.queue.pop(Instant::now()) {
                    return next;
                }
                state.queue.next_due()
            };
            match due {
                Some(at) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// One scheduling cycle under the lock: decide, and assume the pod on its node.
    fn decide(&self, scheduler: &mut Scheduler, key: &str, uid: &str, pod: &Arc<Pod>) -> Outcome {
        let now = Instant::now();
        let mut state = self.lock();
        let State { cache, queue } = &mut *state;
        if pod.metadata.uid.as_deref().unwrap_or_default() != uid || !wants_node(pod) {
            // Replaced, bound or deleted since it was queued; its own event handles the rest.
            queue.done(key, uid);
            return Outcome::Nothing;
        }
        match scheduler.schedule(pod, cache, &self.namespaces) {
            Decision::Placed(id) => {
                let node = cache.node(id).name.clone();
                cache.add_pod(key.to_string(), pod, &node, true);
                Outcome::Bind { node }
            }
            Decision::Unschedulable(message) => {
                queue.unschedulable(key, uid, now);
                Outcome::Report {
                    reason: "Unschedulable",
                    message,
                }
            }
            Decision::NoNodes => {
                queue.unschedulable(key, uid, now);
                Outcome::Report {
                    reason: "SchedulerError",
                    message: framework::NO_NODES_MESSAGE.to_string(),
                }
            }
        }
    }

    /// Binds an assumed pod; on failure un-assumes it and retries (or leaves it to the
    /// informer when the pod is already bound or gone).
    #[allow(clippy::too_many_arguments)]
    async fn bind(
        &self,
        api: &Api,
        events: &EventRecorder,
        pod: &Pod,
        key: Key,
        uid: String,
        node: String,
        permit: OwnedSemaphorePermit,
    ) {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let result = api.bind(ns, name, &node).await;
        drop(permit);
        let now = Instant::now();
        match result {
            Ok(()) => {
                tracing::debug!(pod = %key, node, "bound");
                events.record(
                    pod,
                    EventType::Normal,
                    "Scheduled",
                    format!("Successfully assigned {ns}/{name} to {node}"),
                );
                self.lock().queue.done(&key, &uid);
            }
            Err(e) => {
                let mut state = self.lock();
                state.cache.forget_assumed(&key, &uid);
                // The node has room again for whatever was parked behind this pod.
                state.queue.move_all(now);
                if e.is_not_found() {
                    state.queue.remove(&key);
                } else if e.code() == Some(409) {
                    tracing::debug!(pod = %key, error = %e, "binding conflicted; the pod is bound or being deleted");
                    state.queue.park_in_flight(&key, &uid, now);
                } else {
                    tracing::warn!(pod = %key, node, error = %e, "binding failed; retrying with backoff");
                    state.queue.failed(&key, &uid, now);
                    events.record(
                        pod,
                        EventType::Warning,
                        "FailedScheduling",
                        format!("running Bind plugin \"DefaultBinder\": {e}"),
                    );
                }
                drop(state);
                self.wake.notify_one();
            }
        }
    }
}

/// The strategic merge patch that sets `PodScheduled=False` with this reason and message, or
/// `None` when the pod already says so.
fn unschedulable_patch(pod: &Pod, reason: &str, message: &str) -> Option<serde_json::Value> {
    let current = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"));
    if current.is_some_and(|c| {
        c.status == "False"
            && c.reason.as_deref() == Some(reason)
            && c.message.as_deref() == Some(message)
    }) {
        return None;
    }
    // The transition time moves only when the status does.
    let since = current
        .filter(|c| c.status == "False")
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    Some(json!({"status": {"conditions": [{
        "type": "PodScheduled",
        "status": "False",
        "reason": reason,
        "message": message,
        "lastProbeTime": null,
        "lastTransitionTime": since,
    }]}}))
}

async fn write_condition(api: &Api, pod: &Pod, patch: serde_json::Value) {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let path = format!("/api/v1/namespaces/{ns}/pods/{name}/status");
    match api.raw().patch(&path, PatchType::Strategic, patch).await {
        Ok(_) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => {
            tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "could not set PodScheduled=False")
        }
    }
}
