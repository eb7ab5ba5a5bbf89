//! The pod garbage collector (kube-controller-manager's `podgc`), every 20 seconds:
//!
//! - terminated pods (`Succeeded`/`Failed`) beyond [`TERMINATED_POD_THRESHOLD`] are deleted,
//!   evicted ones first, then the oldest;
//! - pods bound to a node that no longer exists are deleted once the node has been missing for
//!   [`QUARANTINE`] and a GET through the API confirms it is gone (orphaned pods get the
//!   `DisruptionTarget` condition, reason `DeletionByPodGC`);
//! - terminating pods on a node that is not `Ready` and carries the
//!   `node.kubernetes.io/out-of-service` taint, and terminating pods never bound to a node, are
//!   deleted.
//!
//! Every deletion is forced (`gracePeriodSeconds: 0`, preconditioned on the pod's UID); a pod
//! not yet in a terminal phase is first marked `Failed`, as upstream's
//! `markFailedAndDeletePodWithCondition` does.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, Preconditions, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::client::{path_of, PatchType};
use super::runtime::{self, key_of};
use super::{Action, Context, Error, Reconciler, WorkQueue};

/// kube-controller-manager's `--terminated-pod-gc-threshold` default.
pub const TERMINATED_POD_THRESHOLD: usize = 12_500;
/// How often the collector runs (upstream's `gcCheckPeriod`).
pub const GC_PERIOD: Duration = Duration::from_secs(20);
/// How long a node must be missing before its pods are deleted (upstream's `quarantineTime`).
pub const QUARANTINE: Duration = Duration::from_secs(40);
/// The taint that lets terminating pods on a dead node go.
pub const OUT_OF_SERVICE: &str = "node.kubernetes.io/out-of-service";
/// The single queue key of this loop.
const KEY: &str = "podgc";

/// Why a pod is collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Beyond the terminated pod threshold.
    Terminated,
    /// Its node has been gone for the quarantine (the node still to be confirmed gone).
    Orphaned,
    /// Terminating on a node that is out of service.
    OutOfService,
    /// Terminating and never bound.
    Unscheduled,
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

fn terminated(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn out_of_service(node: &Node) -> bool {
    let taints = node.spec.as_ref().and_then(|s| s.taints.as_deref());
    let tainted = taints
        .unwrap_or_default()
        .iter()
        .any(|t| t.key == OUT_OF_SERVICE);
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    tainted && !ready
}

/// Evicted pods first, then by creation time, then by key (upstream's
/// `byEvictionAndCreationTimestamp`).
fn oldest_first(a: &Arc<Pod>, b: &Arc<Pod>) -> Ordering {
    let evicted = |p: &Pod| p.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("Evicted");
    evicted(b)
        .cmp(&evicted(a))
        .then_with(|| {
            let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            created(a).cmp(&created(b))
        })
        .then_with(|| key_of(&a.metadata).cmp(&key_of(&b.metadata)))
}

/// The pods to collect now. `missing` remembers since when each node pods are bound to has been
/// missing from `nodes` (entries for nodes that came back or lost all pods are dropped).
pub fn plan(
    pods: &[Arc<Pod>],
    nodes: &HashMap<String, Arc<Node>>,
    missing: &mut HashMap<String, Instant>,
    now: Instant,
    threshold: usize,
) -> Vec<(Arc<Pod>, Why)> {
    let mut out = Vec::new();
    let mut chosen: HashSet<String> = HashSet::new();
    let mut push = |pod: &Arc<Pod>, why: Why, out: &mut Vec<(Arc<Pod>, Why)>| {
        if chosen.insert(key_of(&pod.metadata)) {
            out.push((pod.clone(), why));
        }
    };

    let mut done: Vec<&Arc<Pod>> = pods.iter().filter(|p| terminated(p)).collect();
    if threshold > 0 && done.len() > threshold {
        done.sort_by(|a, b| oldest_first(a, b));
        for pod in &done[..done.len() - threshold] {
            push(pod, Why::Terminated, &mut out);
        }
    }

    let mut still_missing = HashSet::new();
    for pod in pods {
        let deleting = pod.metadata.deletion_timestamp.is_some();
        match node_name(pod) {
            None if deleting => push(pod, Why::Unscheduled, &mut out),
            None => {}
            Some(node) => match nodes.get(node) {
                Some(n) if deleting && out_of_service(n) => push(pod, Why::OutOfService, &mut out),
                Some(_) => {}
                None => {
                    still_missing.insert(node.to_string());
                    let since = *missing.entry(node.to_string()).or_insert(now);
                    if now.duration_since(since) >= QUARANTINE {
                        push(pod, Why::Orphaned, &mut out);
                    }
                }
            },
        }
    }
    missing.retain(|node, _| still_missing.contains(node));
    out
}

pub struct PodGc {
    ctx: Context,
    missing: Mutex<HashMap<String, Instant>>,
    threshold: usize,
}

/// Registers the loop: one key, run every [`GC_PERIOD`].
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) {
    let queue = WorkQueue::new();
    queue.add(KEY);
    let gc = Arc::new(PodGc::new(ctx.clone(), TERMINATED_POD_THRESHOLD));
    tasks.spawn(runtime::run(gc, queue, 1));
}

impl PodGc {
    pub fn new(ctx: Context, threshold: usize) -> Self {
        PodGc {
            ctx,
            missing: Mutex::default(),
            threshold,
        }
    }

    /// One collection pass at `now` (the quarantine clock) and `wall` (condition timestamps).
    pub async fn run_at(&self, now: Instant, wall: Timestamp) -> Result<Action, Error> {
        let pods = self.ctx.informers.pods.list();
        let nodes: HashMap<String, Arc<Node>> = self
            .ctx
            .informers
            .nodes
            .list()
            .into_iter()
            .map(|n| (n.metadata.name.clone().unwrap_or_default(), n))
            .collect();
        let chosen = {
            let mut missing = self.missing.lock().unwrap_or_else(|p| p.into_inner());
            plan(&pods, &nodes, &mut missing, now, self.threshold)
        };
        let mut confirmed: HashMap<String, bool> = HashMap::new();
        for (pod, why) in chosen {
            if why == Why::Orphaned {
                let node = node_name(&pod).unwrap_or_default().to_string();
                let gone = match confirmed.get(&node) {
                    Some(gone) => *gone,
                    None => {
                        let gone = match self.ctx.api.get::<Node>(None, &node).await {
                            Ok(_) => false,
                            Err(e) if e.is_not_found() => true,
                            Err(e) => return Err(e.into()),
                        };
                        confirmed.insert(node.clone(), gone);
                        gone
                    }
                };
                if !gone {
                    continue;
                }
            }
            self.collect(&pod, why, wall).await?;
        }
        Ok(Action::RequeueAfter(GC_PERIOD))
    }

    /// Marks `pod` `Failed` if it is not terminal yet, then force-deletes it.
    async fn collect(&self, pod: &Pod, why: Why, wall: Timestamp) -> Result<(), Error> {
        let ns = pod.metadata.namespace.as_deref();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        if !terminated(pod) {
            let mut status = json!({"phase": "Failed"});
            if why == Why::Orphaned {
                status["conditions"] = json!([{
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": "DeletionByPodGC",
                    "message": "PodGC: node no longer exists",
                    "lastTransitionTime": Time(wall),
                }]);
            }
            let path = format!("{}/status", path_of::<Pod>(ns, Some(name)));
            match self
                .ctx
                .api
                .raw()
                .patch(&path, PatchType::Strategic, json!({"status": status}))
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        let options = DeleteOptions {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        self.ctx.api.delete::<Pod>(ns, name, &options).await?;
        tracing::info!(pod = key_of(&pod.metadata), reason = ?why, "pod garbage-collected");
        Ok(())
    }
}

#[async_trait::async_trait]
impl Reconciler for PodGc {
    fn name(&self) -> &'static str {
        "podgc"
    }

    async fn reconcile(&self, _key: &str) -> Result<Action, Error> {
        self.ctx.informers.pods.wait_synced().await;
        self.ctx.informers.nodes.wait_synced().await;
        self.run_at(Instant::now(), Timestamp::now()).await
    }
}
