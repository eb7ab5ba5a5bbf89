//! The scheduler's view of the cluster: one [`NodeInfo`] per node, kept incrementally from
//! informer events (upstream's scheduler cache). Each node carries what the filters and scores
//! need without looking at pods again: allocatable, the sum of its pods' requests, their host
//! ports, and the pods themselves for the rarer affinity and spreading checks.
//!
//! Pods the scheduler has bound but the informer has not yet shown bound are *assumed*: they
//! count on their node like any other, so consecutive decisions never overcommit a node.
//!
//! Nodes live in a `Vec` indexed by [`NodeId`]; an id stays with its name for the cache's life,
//! so pods may name a node that is not (or no longer) there, as upstream allows.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, Taint};

use super::affinity::PodAffinityTerms;
use super::resources::{self, HostPort, Requests, Resources};
use super::selectors::{labels_of, Labels, NO_LABELS};
use crate::controllers::Key;

/// An index into the cache's nodes.
pub type NodeId = usize;

/// The taint the node lifecycle controller puts on a node whose `Ready` condition is `False`.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// The taint for a node whose `Ready` condition is `Unknown`.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// One node and what is placed on it.
#[derive(Debug)]
pub struct NodeInfo {
    pub name: String,
    /// `None` while pods name a node the informer has not shown (or has deleted).
    pub node: Option<Arc<Node>>,
    /// The node's taints, plus the not-ready or unreachable `NoSchedule` taint its `Ready`
    /// condition implies when the node lifecycle controller has not (yet) set it.
    pub taints: Vec<Taint>,
    pub allocatable: Resources,
    /// `status.allocatable.pods`.
    pub allowed_pods: i64,
    /// The sum of the requests of the pods here.
    pub requested: Resources,
    /// The same with the non-zero defaults, for scoring.
    pub non_zero_cpu: i64,
    pub non_zero_memory: i64,
    pub pods: Vec<Arc<PodInfo>>,
    /// Every host port taken here (a multiset: a pod removed gives back its own).
    pub host_ports: Vec<HostPort>,
}

impl NodeInfo {
    fn new(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.to_string(),
            node: None,
            taints: Vec::new(),
            allocatable: Resources::default(),
            allowed_pods: 0,
            requested: Resources::default(),
            non_zero_cpu: 0,
            non_zero_memory: 0,
            pods: Vec::new(),
            host_ports: Vec::new(),
        }
    }

    pub fn labels(&self) -> &Labels {
        self.node
            .as_deref()
            .map_or(&NO_LABELS, |n| labels_of(&n.metadata))
    }

    /// `spec.unschedulable` (cordoned).
    pub fn unschedulable(&self) -> bool {
        self.node
            .as_ref()
            .and_then(|n| n.spec.as_ref())
            .and_then(|s| s.unschedulable)
            .unwrap_or(false)
    }

    /// Takes the new state of the Node object; answers whether anything the scheduler looks at
    /// changed (so heartbeats do not wake parked pods).
    fn set_node(&mut self, node: Arc<Node>) -> bool {
        let status = node.status.as_ref();
        let allocatable = status.and_then(|s| s.allocatable.as_ref());
        let new_allocatable = Resources::from_list(allocatable);
        let new_allowed = allocatable
            .and_then(|a| a.get("pods"))
            .map_or(0, resources::value);
        let new_taints = effective_taints(&node);
        let changed = match &self.node {
            None => true,
            Some(old) => {
                old.metadata.labels != node.metadata.labels
                    || self.unschedulable()
                        != node
                            .spec
                            .as_ref()
                            .and_then(|s| s.unschedulable)
                            .unwrap_or(false)
                    || self.taints != new_taints
                    || self.allocatable != new_allocatable
                    || self.allowed_pods != new_allowed
            }
        };
        self.node = Some(node);
        self.taints = new_taints;
        self.allocatable = new_allocatable;
        self.allowed_pods = new_allowed;
        changed
    }

    fn add(&mut self, pod: Arc<PodInfo>) {
        self.requested.add(&pod.requests.resources);
        self.non_zero_cpu = self.non_zero_cpu.saturating_add(pod.requests.non_zero_cpu);
        self.non_zero_memory = self
            .non_zero_memory
            .saturating_add(pod.requests.non_zero_memory);
        self.host_ports.extend(pod.host_ports.iter().cloned());
        self.pods.push(pod);
    }

    fn remove(&mut self, pod: &Arc<PodInfo>) {
        let Some(i) = self.pods.iter().position(|p| Arc::ptr_eq(p, pod)) else {
            return;
        };
        self.pods.swap_remove(i);
        self.requested.sub(&pod.requests.resources);
        self.non_zero_cpu = self.non_zero_cpu.saturating_sub(pod.requests.non_zero_cpu);
        self.non_zero_memory = self
            .non_zero_memory
            .saturating_sub(pod.requests.non_zero_memory);
        for port in &pod.host_ports {
            if let Some(j) = self.host_ports.iter().position(|p| p == port) {
                self.host_ports.swap_remove(j);
            }
        }
    }
}

/// The node's taints, plus the `NoSchedule` taint its `Ready` condition implies: not-ready for
/// `False` or no condition yet, unreachable for `Unknown`.
fn effective_taints(node: &Node) -> Vec<Taint> {
    let mut taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.as_str());
    let implied = match ready {
        Some("True") => None,
        Some("Unknown") => Some(TAINT_UNREACHABLE),
        _ => Some(TAINT_NOT_READY),
    };
    let already = taints
        .iter()
        .any(|t| t.key == TAINT_NOT_READY || t.key == TAINT_UNREACHABLE);
    if let (Some(key), false) = (implied, already) {
        taints.push(Taint {
            key: key.into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        });
    }
    taints
}

/// What the cache keeps of a pod bound (or assumed) to a node, computed once. It holds no
/// `Pod`: with tens of thousands of pods placed, a decoded copy each would dwarf the rest.
#[derive(Debug)]
pub struct PodInfo {
    pub key: Key,
    namespace: String,
    labels: Labels,
    uid: String,
    /// The [`spreading_owner`]'s UID.
    spreading_owner: Option<String>,
    pub node: NodeId,
    pub requests: Requests,
    pub host_ports: Vec<HostPort>,
    /// Being deleted: still holds its resources, but no longer counts for spreading.
    pub terminating: bool,
    /// Bound by us; the informer has not shown the binding yet.
    pub assumed: bool,
    /// Its pod affinity and anti-affinity terms, if it has any.
    pub affinity: Option<PodAffinityTerms>,
}

impl PodInfo {
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    pub fn uid(&self) -> &str {
        &self.uid
    }
}

/// The UID of the controller that system-default spreading groups a pod by: its controller
/// owner when that is a ReplicaSet, StatefulSet or ReplicationController.
pub fn spreading_owner(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .filter(|o| {
            matches!(
                o.kind.as_str(),
                "ReplicaSet" | "StatefulSet" | "ReplicationController"
            )
        })
        .map(|o| o.uid.as_str())
}

/// Every node and every placed pod.
#[derive(Debug, Default)]
pub struct Cache {
    nodes: Vec<NodeInfo>,
    ids: HashMap<String, NodeId>,
    /// The nodes that exist, in the order the filters visit them.
    live: Vec<NodeId>,
    pods: HashMap<Key, Arc<PodInfo>>,
    /// Spreading owner UID → node → how many of its non-terminating pods are there.
    by_owner: HashMap<String, HashMap<NodeId, u32>>,
    /// Pods with pod affinity or anti-affinity terms.
    with_affinity: HashMap<Key, Arc<PodInfo>>,
    /// How many of those have required anti-affinity terms.
    required_anti_affinity: usize,
}

impl Cache {
    /// The nodes that exist, in visiting order.
    pub fn live(&self) -> &[NodeId] {
        &self.live
    }

    pub fn node(&self, id: NodeId) -> &NodeInfo {
        &self.nodes[id]
    }

    /// The id of an existing node.
    pub fn live_id(&self, name: &str) -> Option<NodeId> {
        self.ids
            .get(name)
            .copied()
            .filter(|&id| self.nodes[id].node.is_some())
    }

    /// Every placed pod.
    pub fn pods(&self) -> impl Iterator<Item = &Arc<PodInfo>> {
        self.pods.values()
    }

    pub fn pod(&self, key: &str) -> Option<&Arc<PodInfo>> {
        self.pods.get(key)
    }

    /// The placed pods that have pod affinity or anti-affinity terms.
    pub fn pods_with_affinity(&self) -> impl Iterator<Item = &Arc<PodInfo>> {
        self.with_affinity.values()
    }

    /// Whether some placed pod has required anti-affinity terms.
    pub fn has_required_anti_affinity(&self) -> bool {
        self.required_anti_affinity > 0
    }

    /// Per node, how many non-terminating pods of this spreading owner are there.
    pub fn owner_counts(&self, owner_uid: &str) -> Option<&HashMap<NodeId, u32>> {
        self.by_owner.get(owner_uid)
    }

    fn slot(&mut self, name: &str) -> NodeId {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.nodes.len();
        self.nodes.push(NodeInfo::new(name));
        self.ids.insert(name.to_string(), id);
        id
    }

    /// Adds or updates a node; answers whether anything the scheduler looks at changed.
    pub fn upsert_node(&mut self, node: Arc<Node>) -> bool {
        let name = node.metadata.name.clone().unwrap_or_default();
        let id = self.slot(&name);
        let was_live = self.nodes[id].node.is_some();
        let changed = self.nodes[id].set_node(node);
        if !was_live {
            self.live.push(id);
        }
        changed
    }

    /// Removes a node; its pods stay counted on its slot until they go too.
    pub fn remove_node(&mut self, name: &str) {
        if let Some(&id) = self.ids.get(name) {
            self.nodes[id].node = None;
            self.live.retain(|&l| l != id);
        }
    }

    /// Places (or re-places) the pod under `key` on `node_name`.
    pub fn add_pod(&mut self, key: Key, pod: &Pod, node_name: &str, assumed: bool) {
        self.remove_pod(&key);
        let node = self.slot(node_name);
        let spec = pod.spec.as_ref();
        let meta = &pod.metadata;
        let info = Arc::new(PodInfo {
            key: key.clone(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            labels: labels_of(meta).clone(),
            uid: meta.uid.clone().unwrap_or_default(),
            spreading_owner: spreading_owner(pod).map(str::to_string),
            requests: spec.map(resources::pod_requests).unwrap_or_default(),
            host_ports: spec.map(resources::host_ports).unwrap_or_default(),
            terminating: meta.deletion_timestamp.is_some(),
            assumed,
            affinity: PodAffinityTerms::of(pod),
            node,
        });
        if !info.terminating {
            if let Some(owner) = &info.spreading_owner {
                *self
                    .by_owner
                    .entry(owner.clone())
                    .or_default()
                    .entry(node)
                    .or_insert(0) += 1;
            }
        }
        if let Some(affinity) = &info.affinity {
            if !affinity.required_anti_affinity.is_empty() {
                self.required_anti_affinity += 1;
            }
            self.with_affinity.insert(key.clone(), info.clone());
        }
        self.nodes[node].add(info.clone());
        self.pods.insert(key, info);
    }

    /// Removes the pod under `key` from its node.
    pub fn remove_pod(&mut self, key: &str) -> Option<Arc<PodInfo>> {
        let info = self.pods.remove(key)?;
        if !info.terminating {
            if let Some(owner) = &info.spreading_owner {
                if let Some(per_node) = self.by_owner.get_mut(owner) {
                    if let Some(n) = per_node.get_mut(&info.node) {
                        *n -= 1;
                        if *n == 0 {
                            per_node.remove(&info.node);
                        }
                    }
                    if per_node.is_empty() {
                        self.by_owner.remove(owner);
                    }
                }
            }
        }
        if let Some(affinity) = &info.affinity {
            if !affinity.required_anti_affinity.is_empty() {
                self.required_anti_affinity -= 1;
            }
            self.with_affinity.remove(key);
        }
        self.nodes[info.node].remove(&info);
        Some(info)
    }

    /// Un-assumes a pod whose binding failed; a pod the informer has shown bound meanwhile, or
    /// a newer pod under the same name, stays.
    pub fn forget_assumed(&mut self, key: &str, uid: &str) -> bool {
        let ours = self
            .pods
            .get(key)
            .is_some_and(|p| p.assumed && p.uid() == uid);
        ours && self.remove_pod(key).is_some()
    }
}
