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

/// Whether [`plan`] may pick this pod or needs to see it: terminated, terminating, or bound
/// to a node that is not there. The collector looks only at these, so a pass does not hold
/// every pod decoded at once.
pub fn may_be_collected(pod: &Pod, nodes: &HashMap<String, Arc<Node>>) -> bool {
    terminated(pod)
        || pod.metadata.deletion_timestamp.is_some()
        || node_name(pod).is_some_and(|node| !nodes.contains_key(node))
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
        let nodes: HashMap<String, Arc<Node>> = self
            .ctx
            .informers
            .nodes
            .list()
            .into_iter()
            .map(|n| (n.metadata.name.clone().unwrap_or_default(), n))
            .collect();
        let pods = self
            .ctx
            .informers
            .pods
            .list_where(|pod| may_be_collected(pod, &nodes));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::client::RecordingClient;
    use crate::controllers::Config;
    use k8s_openapi::api::core::v1::{
        NodeCondition, NodeSpec, NodeStatus, PodSpec, PodStatus, Taint,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn ts(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_750_000_000 + seconds).unwrap()
    }

    fn pod(name: &str, node: &str, phase: &str, created: i64) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                creation_timestamp: Some(Time(ts(created))),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: (!node.is_empty()).then(|| node.to_string()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
        })
    }

    fn deleting(p: Arc<Pod>) -> Arc<Pod> {
        let mut p = (*p).clone();
        p.metadata.deletion_timestamp = Some(Time(ts(0)));
        Arc::new(p)
    }

    fn node(name: &str, ready: &str, out_of_service: bool) -> (String, Arc<Node>) {
        let taints = out_of_service.then(|| {
            vec![Taint {
                key: OUT_OF_SERVICE.into(),
                effect: "NoExecute".into(),
                ..Default::default()
            }]
        });
        let node = Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints,
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: ready.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        };
        (name.to_string(), Arc::new(node))
    }

    fn names(chosen: &[(Arc<Pod>, Why)]) -> Vec<(String, Why)> {
        chosen
            .iter()
            .map(|(p, why)| (p.metadata.name.clone().unwrap_or_default(), *why))
            .collect()
    }

    #[test]
    fn plans_follow_upstream_podgc() {
        let nodes: HashMap<String, Arc<Node>> = [
            node("up", "True", false),
            node("dead", "False", true),
            node("tainted-but-ready", "True", true),
        ]
        .into();
        let mut evicted = (*pod("evicted", "up", "Failed", 9)).clone();
        evicted.status.as_mut().unwrap().reason = Some("Evicted".into());
        let t0 = Instant::now();
        type Case = (&'static str, Vec<Arc<Pod>>, usize, Vec<(&'static str, Why)>);
        let cases: Vec<Case> = vec![
            (
                "terminated beyond the threshold: evicted first, then the oldest",
                vec![
                    pod("new", "up", "Succeeded", 5),
                    pod("old", "up", "Failed", 1),
                    Arc::new(evicted),
                    pod("mid", "up", "Succeeded", 3),
                    pod("running", "up", "Running", 0),
                ],
                2,
                vec![("evicted", Why::Terminated), ("old", Why::Terminated)],
            ),
            (
                "under the threshold",
                vec![pod("a", "up", "Succeeded", 1)],
                2,
                vec![],
            ),
            (
                "terminating on an out-of-service node",
                vec![
                    deleting(pod("stuck", "dead", "Running", 1)),
                    pod("alive", "dead", "Running", 1),
                    deleting(pod("fine", "tainted-but-ready", "Running", 1)),
                    deleting(pod("up-and-going", "up", "Running", 1)),
                ],
                10,
                vec![("stuck", Why::OutOfService)],
            ),
            (
                "terminating and never bound",
                vec![
                    deleting(pod("pending", "", "Pending", 1)),
                    pod("waiting", "", "Pending", 1),
                ],
                10,
                vec![("pending", Why::Unscheduled)],
            ),
        ];
        for (name, pods, threshold, expected) in cases {
            let mut missing = HashMap::new();
            let got = names(&plan(&pods, &nodes, &mut missing, t0, threshold));
            let expected: Vec<(String, Why)> = expected
                .into_iter()
                .map(|(n, w)| (n.to_string(), w))
                .collect();
            assert_eq!(got, expected, "{name}");
        }
    }

    #[test]
    fn orphans_wait_out_the_quarantine() {
        let nodes: HashMap<String, Arc<Node>> = [node("up", "True", false)].into();
        let pods = vec![
            pod("lost", "gone", "Running", 1),
            pod("ok", "up", "Running", 1),
        ];
        let mut missing = HashMap::new();
        let t0 = Instant::now();
        assert!(plan(&pods, &nodes, &mut missing, t0, 10).is_empty());
        let t39 = t0 + Duration::from_secs(39);
        assert!(plan(&pods, &nodes, &mut missing, t39, 10).is_empty());
        let t40 = t0 + Duration::from_secs(40);
        assert_eq!(
            names(&plan(&pods, &nodes, &mut missing, t40, 10)),
            vec![("lost".to_string(), Why::Orphaned)]
        );
        // The node came back: the quarantine starts over next time it goes.
        let back: HashMap<String, Arc<Node>> =
            [node("up", "True", false), node("gone", "True", false)].into();
        assert!(plan(&pods, &back, &mut missing, t40, 10).is_empty());
        assert!(missing.is_empty());
    }

    #[tokio::test]
    async fn orphaned_pods_are_failed_and_force_deleted_once_the_node_is_confirmed_gone() {
        let fake = RecordingClient::new();
        let (ctx, _rx) = Context::new(Arc::new(fake.clone()), Config::default());
        ctx.informers
            .pods
            .apply((*pod("lost", "gone", "Running", 1)).clone());
        ctx.informers
            .pods
            .apply((*pod("cached-late", "late", "Running", 1)).clone());
        fake.set_object("/api/v1/nodes/late", json!({"metadata": {"name": "late"}}));
        let gc = PodGc::new(ctx, TERMINATED_POD_THRESHOLD);
        let t0 = Instant::now();
        assert_eq!(
            gc.run_at(t0, ts(0)).await.unwrap(),
            Action::RequeueAfter(GC_PERIOD)
        );
        assert!(fake.calls().is_empty());
        gc.run_at(t0 + QUARANTINE, ts(40)).await.unwrap();
        assert_eq!(
            fake.short_calls(),
            vec![
                "get /api/v1/nodes/late",
                "get /api/v1/nodes/gone",
                "patch /api/v1/namespaces/default/pods/lost/status",
                "delete /api/v1/namespaces/default/pods/lost",
            ]
        );
        let calls = fake.calls();
        assert_eq!(calls[2].body["status"]["phase"], "Failed");
        assert_eq!(
            calls[2].body["status"]["conditions"][0]["reason"],
            "DeletionByPodGC"
        );
        assert_eq!(calls[3].body["gracePeriodSeconds"], 0);
        assert_eq!(calls[3].body["preconditions"]["uid"], "uid-lost");
    }
}
