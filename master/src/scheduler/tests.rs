//! Scheduler tests: placement (table-driven over the pure decision), the queue, and the whole
//! loop against a recording API client.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use super::cache::Cache;
use super::framework::{feasible_nodes_to_find, Decision, Scheduler};
use super::queue::Queue;
use crate::controllers::runtime::key_of;
use crate::controllers::Informer;

// ---- builders -------------------------------------------------------------------------------

/// JSON merge patches over typed objects, to keep cases short.
trait With: Sized {
    fn with(self, patch: Value) -> Self;
}

impl<T: Serialize + DeserializeOwned> With for T {
    fn with(self, patch: Value) -> Self {
        let mut doc = serde_json::to_value(self).unwrap();
        json_patch::merge(&mut doc, &patch);
        serde_json::from_value(doc).unwrap()
    }
}

/// A Ready node with 4 CPUs, 8 GiB and room for 110 pods.
fn node(name: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }))
    .unwrap()
}

/// A pod in `default` whose one container requests `cpu` and `memory` ("" for none).
fn pod(name: &str, cpu: &str, memory: &str) -> Pod {
    let mut requests = serde_json::Map::new();
    if !cpu.is_empty() {
        requests.insert("cpu".into(), json!(cpu));
    }
    if !memory.is_empty() {
        requests.insert("memory".into(), json!(memory));
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": requests}}]},
    }))
    .unwrap()
}

/// A placed pod.
fn on(p: Pod, node: &str) -> Pod {
    p.with(json!({"spec": {"nodeName": node}}))
}

fn labels(pairs: &[(&str, &str)]) -> Value {
    let map: serde_json::Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({"metadata": {"labels": map}})
}

fn zone(z: &str) -> Value {
    labels(&[("topology.kubernetes.io/zone", z)])
}

fn app(a: &str) -> Value {
    labels(&[("app", a)])
}

fn taint(key: &str, value: &str, effect: &str) -> Value {
    json!({"spec": {"taints": [{"key": key, "value": value, "effect": effect}]}})
}

fn tolerations(list: Value) -> Value {
    json!({"spec": {"tolerations": list}})
}

fn spec(patch: Value) -> Value {
    json!({ "spec": patch })
}

fn host_ports(mut p: Pod, ports: Value) -> Pod {
    p.spec.as_mut().unwrap().containers[0].ports = Some(serde_json::from_value(ports).unwrap());
    p
}

fn required_node_affinity(terms: Value) -> Value {
    spec(json!({"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}
    }}}))
}

fn expressions(list: Value) -> Value {
    json!([{ "matchExpressions": list }])
}

fn pod_affinity(kind: &str, required: bool, terms: Value) -> Value {
    let field = if required {
        "requiredDuringSchedulingIgnoredDuringExecution"
    } else {
        "preferredDuringSchedulingIgnoredDuringExecution"
    };
    spec(json!({"affinity": { kind: { field: terms }}}))
}

fn term_app(a: &str, topology_key: &str) -> Value {
    json!({"labelSelector": {"matchLabels": {"app": a}}, "topologyKey": topology_key})
}

const HOSTNAME: &str = "kubernetes.io/hostname";
const ZONE: &str = "topology.kubernetes.io/zone";

fn spread(key: &str, max_skew: i32, when: &str, extra: Value) -> Value {
    let mut c = json!({
        "maxSkew": max_skew,
        "topologyKey": key,
        "whenUnsatisfiable": when,
        "labelSelector": {"matchLabels": {"app": "web"}},
    });
    json_patch::merge(&mut c, &extra);
    spec(json!({ "topologySpreadConstraints": [c] }))
}

fn owned_by(kind: &str, uid: &str) -> Value {
    json!({"metadata": {"ownerReferences": [{
        "apiVersion": "apps/v1", "kind": kind, "name": "owner", "uid": uid, "controller": true,
    }]}})
}

fn namespaces() -> Informer<Namespace> {
    let informer = Informer::new();
    for (name, env) in [
        ("default", ""),
        ("other", ""),
        ("prod-a", "prod"),
        ("prod-b", "prod"),
    ] {
        let mut ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        if !env.is_empty() {
            ns = ns.with(labels(&[("env", env)]));
        }
        informer.apply(ns);
    }
    informer
}

// ---- placement table ------------------------------------------------------------------------

#[derive(Debug)]
enum Expect {
    Placed(&'static [&'static str]),
    Unschedulable(&'static str),
}
use Expect::{Placed, Unschedulable};

struct Case {
    name: &'static str,
    nodes: Vec<Node>,
    placed: Vec<Pod>,
    pod: Pod,
    expect: Expect,
}

fn case(name: &'static str, nodes: Vec<Node>, placed: Vec<Pod>, pod: Pod, expect: Expect) -> Case {
    Case {
        name,
        nodes,
        placed,
        pod,
        expect,
    }
}

fn cache_of(nodes: &[Node], placed: &[Pod]) -> Cache {
    let mut cache = Cache::default();
    for n in nodes {
        cache.upsert_node(Arc::new(n.clone()));
    }
    for p in placed {
        let node = p.spec.as_ref().unwrap().node_name.clone().unwrap();
        cache.add_pod(key_of(&p.metadata), p, &node, false);
    }
    cache
}

/// Schedules the case's pod several times from scratch (ties are broken at random) and
/// compares each outcome with the expectation.
fn check(case: &Case, namespaces: &Informer<Namespace>) -> Result<(), String> {
    for _ in 0..8 {
        let cache = cache_of(&case.nodes, &case.placed);
        let decision = Scheduler::new().schedule(&case.pod, &cache, namespaces);
        let ok = match (&case.expect, &decision) {
            (Placed(names), Decision::Placed(id)) => names.contains(&cache.node(*id).name.as_str()),
            (Unschedulable(want), Decision::Unschedulable(got)) => want == got,
            _ => false,
        };
        if !ok {
            let got = match decision {
                Decision::Placed(id) => format!("Placed({})", cache.node(id).name),
                other => format!("{other:?}"),
            };
            return Err(format!(
                "{}:\n   expected {:?}\n   got      {got}",
                case.name, case.expect
            ));
        }
    }
    Ok(())
}

fn resource_cases() -> Vec<Case> {
    let n = node;
    vec![
        case(
            "fits where there is room",
            vec![
                n("n1").with(json!({"status": {"allocatable": {"cpu": "1"}}})),
                n("n2"),
            ],
            vec![on(pod("a", "800m", ""), "n1")],
            pod("p", "500m", ""),
            Placed(&["n2"]),
        ),
        case(
            "insufficient cpu everywhere",
            vec![n("n1"), n("n2"), n("n3")],
            vec![
                on(pod("a", "3500m", ""), "n1"),
                on(pod("b", "3500m", ""), "n2"),
                on(pod("c", "3500m", ""), "n3"),
            ],
            pod("p", "1", ""),
            Unschedulable(
                "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are \
                 available: 3 No preemption victims found for incoming pod.",
            ),
        ),
        case(
            "more cpu than any node has is not helped by preemption",
            vec![n("n1"), n("n2"), n("n3")],
            vec![],
            pod("p", "8", ""),
            Unschedulable(
                "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are \
                 available: 3 Preemption is not helpful for scheduling.",
            ),
        ),
        case(
            "reasons are counted per node and sorted as strings",
            vec![
                n("n1"),
                n("n2"),
                n("n3").with(taint("node-role.kubernetes.io/control-plane", "", "NoSchedule")),
            ],
            vec![
                on(pod("a", "3500m", "7Gi"), "n1"),
                on(pod("b", "3500m", ""), "n2"),
            ],
            pod("p", "1", "2Gi"),
            Unschedulable(
                "0/3 nodes are available: 1 Insufficient memory, 1 node(s) had untolerated \
                 taint {node-role.kubernetes.io/control-plane: }, 2 Insufficient cpu. \
                 preemption: 0/3 nodes are available: 1 Preemption is not helpful for \
                 scheduling, 2 No preemption victims found for incoming pod.",
            ),
        ),
        case(
            "too many pods",
            vec![
                n("n1").with(json!({"status": {"allocatable": {"pods": "1"}}})),
                n("n2"),
            ],
            vec![on(pod("a", "", ""), "n1"), on(pod("b", "3500m", ""), "n2")],
            pod("p", "1", ""),
            Unschedulable(
                "0/2 nodes are available: 1 Insufficient cpu, 1 Too many pods. preemption: \
                 0/2 nodes are available: 2 No preemption victims found for incoming pod.",
            ),
        ),
        case(
            "a pod without requests fits a node whose cpu is all requested",
            vec![n("n1")],
            vec![on(pod("a", "4", ""), "n1")],
            pod("p", "", ""),
            Placed(&["n1"]),
        ),
        case(
            "init containers need their peak",
            vec![n("n1").with(json!({"status": {"allocatable": {"cpu": "2"}}}))],
            vec![],
            pod("p", "100m", "").with(spec(json!({"initContainers": [
                {"name": "init", "image": "i", "resources": {"requests": {"cpu": "3"}}}
            ]}))),
            Unschedulable(
                "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are \
                 available: 1 Preemption is not helpful for scheduling.",
            ),
        ),
        case(
            "an init peak within the node fits",
            vec![n("n1")],
            vec![],
            pod("p", "100m", "").with(spec(json!({"initContainers": [
                {"name": "init", "image": "i", "resources": {"requests": {"cpu": "3"}}}
            ]}))),
            Placed(&["n1"]),
        ),
        case(
            "sidecars add to the containers",
            vec![n("n1")],
            vec![on(pod("a", "2500m", ""), "n1")],
            pod("p", "1", "").with(spec(json!({"initContainers": [{
                "name": "proxy", "image": "i", "restartPolicy": "Always",
                "resources": {"requests": {"cpu": "1"}},
            }]}))),
            Unschedulable(
                "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are \
                 available: 1 No preemption victims found for incoming pod.",
            ),
        ),
        case(
            "pod overhead counts",
            vec![n("n1")],
            vec![on(pod("a", "2800m", ""), "n1")],
            pod("p", "1", "").with(spec(json!({"overhead": {"cpu": "500m"}}))),
            Unschedulable(
                "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are \
                 available: 1 No preemption victims found for incoming pod.",
            ),
        ),
        case(
            "extended resources go where they are offered",
            vec![
                n("n1"),
                n("n2").with(json!({"status": {"allocatable": {"example.com/gpu": "1"}}})),
            ],
            vec![],
            pod("p", "", "").with(spec(json!({"containers": [{"name": "c", "image": "i",
                "resources": {"requests": {"example.com/gpu": "1"}, "limits": {"example.com/gpu": "1"}}}]}))),
            Placed(&["n2"]),
        ),
        case(
            "an extended resource nowhere offered",
            vec![n("n1")],
            vec![],
            pod("p", "", "").with(spec(json!({"containers": [{"name": "c", "image": "i",
                "resources": {"requests": {"example.com/gpu": "1"}}}]}))),
            Unschedulable(
                "0/1 nodes are available: 1 Insufficient example.com/gpu. preemption: 0/1 \
                 nodes are available: 1 Preemption is not helpful for scheduling.",
            ),
        ),
        case(
            "quantities as large as they get neither overflow nor panic",
            vec![
                n("n1").with(json!({"status": {"allocatable": {"memory": "9Ei"}}})),
                n("n2").with(json!({"status": {"allocatable": {"memory": "9Ei"}}})),
                n("n3").with(json!({"status": {"allocatable": {"memory": "9Ei"}}})),
            ],
            vec![
                on(pod("a", "", "9Ei"), "n1"),
                on(pod("b", "", "9Ei"), "n1"),
            ],
            pod("p", "1", "1Gi"),
            Placed(&["n2", "n3"]),
        ),
    ]
}

fn node_cases() -> Vec<Case> {
    let n = node;
    let cordoned = json!({"spec": {"unschedulable": true}});
    let ready =
        |status: &str| json!({"status": {"conditions": [{"type": "Ready", "status": status}]}});
    vec![
        case(
            "cordoned nodes are skipped",
            vec![n("n1").with(cordoned.clone()), n("n2")],
            vec![on(pod("a", "1", ""), "n2")],
            pod("p", "", ""),
            Placed(&["n2"]),
        ),
        case(
            "every node cordoned",
            vec![n("n1").with(cordoned.clone()), n("n2").with(cordoned.clone())],
            vec![],
            pod("p", "", ""),
            Unschedulable(
                "0/2 nodes are available: 2 node(s) were unschedulable. preemption: 0/2 \
                 nodes are available: 2 Preemption is not helpful for scheduling.",
            ),
        ),
        case(
            "tolerating the unschedulable taint admits a cordoned node",
            vec![n("n1").with(cordoned.clone())],
            vec![],
            pod("p", "", "").with(tolerations(json!([{
                "key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"
            }]))),
            Placed(&["n1"]),
        ),
        case(
            "nodes not Ready are tainted not-ready or unreachable",
            vec![
                n("n1").with(ready("False")),
                n("n2").with(ready("Unknown")),
                n("n3").with(json!({"status": {"conditions": null}})),
            ],
            vec![],
            pod("p", "", ""),
            Unschedulable(
                "0/3 nodes are available: 1 node(s) had untolerated taint \
                 {node.kubernetes.io/unreachable: }, 2 node(s) had untolerated taint \
                 {node.kubernetes.io/not-ready: }. preemption: 0/3 nodes are available: 3 \
                 Preemption is not helpful for scheduling.",
            ),
        ),
        case(
            "pods tolerating everything go to nodes not Ready",
            vec![n("n1").with(ready("False"))],
            vec![],
            pod("p", "", "").with(tolerations(json!([{"operator": "Exists"}]))),
            Placed(&["n1"]),
        ),
        case(
            "spec.nodeName picks the node",
            vec![n("n1"), n("n2"), n("n3")],
            vec![on(pod("a", "1", ""), "n2")],
            pod("p", "", "").with(spec(json!({"nodeName": "n2"}))),
            Placed(&["n2"]),
        ),
        case(
            "spec.nodeName of a node that does not exist",
            vec![n("n1"), n("n2")],
            vec![],
            pod("p", "", "").with(spec(json!({"nodeName": "n9"}))),
            Unschedulable(
                "0/2 nodes are available: 2 node(s) didn't match the requested node name. \
                 preemption: 0/2 nodes are available: 2 Preemption is not helpful for \
                 scheduling.",
            ),
        ),
        case(
            "control-plane taint keeps pods off",
            vec![
                n("n1").with(taint("node-role.kubernetes.io/control-plane", "", "NoSchedule")),
                n("n2"),
            ],
            vec![on(pod("a", "1", ""), "n2")],
            pod("p", "", ""),
            Placed(&["n2"]),
        ),
        case(
            "NoExecute taints filter too, with their value in the message",
            vec![n("n1").with(taint("dedicated", "gpu", "NoExecute"))],
            vec![],
            pod("p", "", ""),
            Unschedulable(
                "0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}. \
                 preemption: 0/1 nodes are available: 1 Preemption is not helpful for \
                 scheduling.",
            ),
        ),
        case(
            "an Equal toleration with the taint's value",
            vec![n("n1").with(taint("dedicated", "gpu", "NoExecute"))],
            vec![],
            pod("p", "", "").with(tolerations(json!([{
                "key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoExecute"
            }]))),
            Placed(&["n1"]),
        ),
        case(
            "an Equal toleration with another value",
            vec![n("n1").with(taint("dedicated", "gpu", "NoExecute"))],
            vec![],
            pod("p", "", "").with(tolerations(json!([{"key": "dedicated", "value": "tpu"}]))),
            Unschedulable(
                "0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}. \
                 preemption: 0/1 nodes are available: 1 Preemption is not helpful for \
                 scheduling.",
            ),
        ),
        case(
            "PreferNoSchedule does not filter but scores the node down",
            vec![
                n("n1").with(taint("spot", "true", "PreferNoSchedule")),
                n("n2"),
            ],
            vec![on(pod("a", "1", "1Gi"), "n2")],
            pod("p", "", ""),
            Placed(&["n2"]),
        ),
        case(
            "a tolerated PreferNoSchedule taint does not score the node down",
            vec![
                n("n1").with(taint("spot", "true", "PreferNoSchedule")),
                n("n2"),
            ],
            vec![on(pod("a", "1", "1Gi"), "n2")],
            pod("p", "", "").with(tolerations(json!([{"key": "spot", "operator": "Exists"}]))),
            Placed(&["n1"]),
        ),
    ]
}

fn node_affinity_cases() -> Vec<Case> {
    let n = node;
    let zones = || {
        vec![
            n("n1").with(zone("a")),
            n("n2").with(zone("b")),
            n("n3").with(zone("c")),
        ]
    };
    vec![
        case(
            "nodeSelector",
            vec![n("n1"), n("n2").with(labels(&[("disktype", "ssd")]))],
            vec![on(pod("a", "2", ""), "n2")],
            pod("p", "", "").with(spec(json!({"nodeSelector": {"disktype": "ssd"}}))),
            Placed(&["n2"]),
        ),
        case(
            "nodeSelector matching no node",
            vec![n("n1"), n("n2")],
            vec![],
            pod("p", "", "").with(spec(json!({"nodeSelector": {"disktype": "ssd"}}))),
            Unschedulable(
                "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector. \
                 preemption: 0/2 nodes are available: 2 Preemption is not helpful for \
                 scheduling.",
            ),
        ),
        case(
            "required affinity In",
            zones(),
            vec![],
            pod("p", "", "").with(required_node_affinity(expressions(json!([
                {"key": ZONE, "operator": "In", "values": ["a", "b"]}
            ])))),
            Placed(&["n1", "n2"]),
        ),
        case(
            "required affinity NotIn",
            zones(),
            vec![],
            pod("p", "", "").with(required_node_affinity(expressions(json!([
                {"key": ZONE, "operator": "NotIn", "values": ["a"]}
            ])))),
            Placed(&["n2", "n3"]),
        ),
        case(
            "required affinity Exists and DoesNotExist are ANDed within a term",
            vec![
                n("n1").with(zone("a")).with(labels(&[("gpu", "yes")])),
                n("n2").with(zone("b")),
                n("n3"),
            ],
            vec![],
            pod("p", "", "").with(required_node_affinity(expressions(json!([
                {"key": ZONE, "operator": "Exists"},
                {"key": "gpu", "operator": "DoesNotExist"},
            ])))),
            Placed(&["n2"]),
        ),
        case(
            "required affinity Gt and Lt compare integers",
            vec![
                n("n1").with(labels(&[("cores", "4")])),
                n("n2").with(labels(&[("cores", "16")])),
                n("n3").with(labels(&[("cores", "32")])),
            ],
            vec![],
            pod("p", "", "").with(required_node_affinity(expressions(json!([
                {"key": "cores", "operator": "Gt", "values": ["8"]},
                {"key": "cores", "operator": "Lt", "values": ["20"]},
            ])))),
            Placed(&["n2"]),
        ),
        case(
            "node selector terms are ORed",
            zones(),
            vec![],
            pod("p", "", "").with(required_node_affinity(json!([
                {"matchExpressions": [{"key": ZONE, "operator": "In", "values": ["a"]}]},
                {"matchExpressions": [{"key": ZONE, "operator": "In", "values": ["c"]}]},
            ]))),
            Placed(&["n1", "n3"]),
        ),
        case(
            "matchFields on metadata.name (DaemonSet pods)",
            zones(),
            vec![on(pod("a", "2", ""), "n2")],
            pod("p", "", "").with(required_node_affinity(json!([
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}
            ]))),
            Placed(&["n2"]),
        ),
        case(
            "matchFields on a full node counts the other nodes as not named",
            zones(),
            vec![on(pod("a", "3500m", ""), "n2")],
            pod("p", "1", "").with(required_node_affinity(json!([
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}
            ]))),
            Unschedulable(
                "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't satisfy \
                 plugin(s) [NodeAffinity]. preemption: 0/3 nodes are available: 1 No \
                 preemption victims found for incoming pod, 2 Preemption is not helpful for \
                 scheduling.",
            ),
        ),
        case(
            "preferred node affinity: the heavier term wins",
            zones(),
            vec![],
            pod("p", "", "").with(spec(json!({"affinity": {"nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 10, "preference": {"matchExpressions": [{"key": ZONE, "operator": "In", "values": ["a"]}]}},
                    {"weight": 50, "preference": {"matchExpressions": [{"key": ZONE, "operator": "In", "values": ["b"]}]}},
                ]
            }}}))),
            Placed(&["n2"]),
        ),
    ]
}

fn port_cases() -> Vec<Case> {
    let n = node;
    let port = |p: Pod, port: i32, protocol: &str, ip: &str| {
        let mut spec = json!({"containerPort": port, "hostPort": port, "protocol": protocol});
        if !ip.is_empty() {
            spec["hostIP"] = json!(ip);
        }
        host_ports(p, json!([spec]))
    };
    vec![
        case(
            "a taken host port sends the pod elsewhere",
            vec![n("n1"), n("n2")],
            vec![
                port(on(pod("a", "", ""), "n1"), 8080, "TCP", ""),
                on(pod("b", "2", "2Gi"), "n2"),
            ],
            port(pod("p", "", ""), 8080, "TCP", ""),
            Placed(&["n2"]),
        ),
        case(
            "the host port taken everywhere",
            vec![n("n1"), n("n2")],
            vec![
                port(on(pod("a", "", ""), "n1"), 8080, "TCP", ""),
                port(on(pod("b", "", ""), "n2"), 8080, "TCP", ""),
            ],
            port(pod("p", "", ""), 8080, "TCP", ""),
            Unschedulable(
                "0/2 nodes are available: 2 node(s) didn't have free ports for the requested \
                 pod ports. preemption: 0/2 nodes are available: 2 No preemption victims \
                 found for incoming pod.",
            ),
        ),
        case(
            "UDP and TCP on the same port do not collide",
            vec![n("n1")],
            vec![port(on(pod("a", "", ""), "n1"), 53, "TCP", "")],
            port(pod("p", "", ""), 53, "UDP", ""),
            Placed(&["n1"]),
        ),
        case(
            "different host IPs do not collide",
            vec![n("n1")],
            vec![port(on(pod("a", "", ""), "n1"), 8080, "TCP", "10.0.0.1")],
            port(pod("p", "", ""), 8080, "TCP", "10.0.0.2"),
            Placed(&["n1"]),
        ),
        case(
            "the wildcard address collides with a specific one",
            vec![n("n1")],
            vec![port(on(pod("a", "", ""), "n1"), 8080, "TCP", "10.0.0.1")],
            port(pod("p", "", ""), 8080, "TCP", ""),
            Unschedulable(
                "0/1 nodes are available: 1 node(s) didn't have free ports for the requested \
                 pod ports. preemption: 0/1 nodes are available: 1 No preemption victims \
                 found for incoming pod.",
            ),
        ),
    ]
}

fn inter_pod_cases() -> Vec<Case> {
    let n = node;
    let three = || vec![n("n1"), n("n2"), n("n3")];
    let zoned = || {
        vec![
            n("n1").with(zone("a")),
            n("n2").with(zone("a")),
            n("n3").with(zone("b")),
        ]
    };
    let in_ns = |p: Pod, ns: &str| p.with(json!({"metadata": {"namespace": ns}}));
    vec![
        case(
            "required affinity joins the matching pod's node",
            three(),
            vec![on(pod("db", "1", "1Gi").with(app("db")), "n2")],
            pod("p", "", "").with(pod_affinity(
                "podAffinity",
                true,
                json!([term_app("db", HOSTNAME)]),
            )),
            Placed(&["n2"]),
        ),
        case(
            "required affinity to pods that do not exist",
            three(),
            vec![],
            pod("p", "", "").with(pod_affinity(
                "podAffinity",
                true,
                json!([term_app("db", HOSTNAME)]),
            )),
            Unschedulable(
                "0/3 nodes are available: 3 node(s) didn't match pod affinity rules. \
                 preemption: 0/3 nodes are available: 3 Preemption is not helpful for \
                 scheduling.",
            ),
        ),
        case(
            "the first pod of a group with affinity to itself goes anywhere",
            three(),
            vec![],
            pod("p", "", "").with(app("db")).with(pod_affinity(
                "podAffinity",
                true,
                json!([term_app("db", HOSTNAME)]),
            )),
            Placed(&["n1", "n2", "n3"]),
        ),
        case(
            "required anti-affinity per hostname",
            three(),
            vec![
                on(pod("w1", "", "").with(app("web")), "n1"),
                on(pod("w2", "", "").with(app("web")), "n2"),
                on(pod("x", "2", "2Gi"), "n3"),
            ],
            pod("p", "", "").with(app("web")).with(pod_affinity(
                "podAntiAffinity",
                true,
                json!([term_app("web", HOSTNAME)]),
            )),
            Placed(&["n3"]),
        ),
        case(
            "required anti-affinity per zone",
            zoned(),
            vec![
                on(pod("w1", "", "").with(app("web")), "n1"),
                on(pod("x", "2", "2Gi"), "n3"),
            ],
            pod("p", "", "").with(pod_affinity(
                "podAntiAffinity",
                true,
                json!([term_app("web", ZONE)]),
            )),
            Placed(&["n3"]),
        ),
        case(
            "placed pods' anti-affinity keeps the pod away",
            vec![n("n1"), n("n2")],
            vec![
                on(
                    pod("lonely", "", "").with(pod_affinity(
                        "podAntiAffinity",
                        true,
                        json!([term_app("web", HOSTNAME)]),
                    )),
                    "n1",
                ),
                on(pod("x", "2", "2Gi"), "n2"),
            ],
            pod("p", "", "").with(app("web")),
            Placed(&["n2"]),
        ),
        case(
            "placed pods' anti-affinity everywhere",
            vec![n("n1"), n("n2")],
            vec![
                on(
                    pod("l1", "", "").with(pod_affinity(
                        "podAntiAffinity",
                        true,
                        json!([term_app("web", HOSTNAME)]),
                    )),
                    "n1",
                ),
                on(
                    pod("l2", "", "").with(pod_affinity(
                        "podAntiAffinity",
                        true,
                        json!([term_app("web", HOSTNAME)]),
                    )),
                    "n2",
                ),
            ],
            pod("p", "", "").with(app("web")),
            Unschedulable(
                "0/2 nodes are available: 2 node(s) didn't satisfy existing pods \
                 anti-affinity rules. preemption: 0/2 nodes are available: 2 No preemption \
                 victims found for incoming pod.",
            ),
        ),
        case(
            "affinity terms look in the listed namespaces",
            three(),
            vec![
                on(pod("db1", "", "").with(app("db")), "n1"),
                on(in_ns(pod("db2", "", "").with(app("db")), "other"), "n2"),
            ],
            pod("p", "", "").with(pod_affinity(
                "podAffinity",
                true,
                json!([{"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": HOSTNAME,
                        "namespaces": ["other"]}]),
            )),
            Placed(&["n2"]),
        ),
        case(
            "affinity terms look in the namespaces the selector picks",
            three(),
            vec![
                on(pod("db1", "", "").with(app("db")), "n1"),
                on(in_ns(pod("db2", "", "").with(app("db")), "prod-a"), "n3"),
            ],
            pod("p", "", "").with(pod_affinity(
                "podAffinity",
                true,
                json!([{"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": HOSTNAME,
                        "namespaceSelector": {"matchLabels": {"env": "prod"}}}]),
            )),
            Placed(&["n3"]),
        ),
        case(
            "preferred affinity outweighs load",
            vec![n("n1"), n("n2")],
            vec![
                on(pod("cache", "1", "1Gi").with(app("cache")), "n2"),
                on(pod("x", "1", "1Gi"), "n2"),
            ],
            pod("p", "", "").with(pod_affinity(
                "podAffinity",
                false,
                json!([{"weight": 100, "podAffinityTerm": term_app("cache", HOSTNAME)}]),
            )),
            Placed(&["n2"]),
        ),
        case(
            "preferred anti-affinity outweighs load",
            vec![n("n1"), n("n2")],
            vec![
                on(pod("w", "", "").with(app("web")), "n1"),
                on(pod("x", "1", "1Gi"), "n2"),
            ],
            pod("p", "", "").with(pod_affinity(
                "podAntiAffinity",
                false,
                json!([{"weight": 100, "podAffinityTerm": term_app("web", HOSTNAME)}]),
            )),
            Placed(&["n2"]),
        ),
        case(
            "a placed pod's required affinity draws matching pods to it",
            vec![n("n1"), n("n2")],
            vec![
                on(
                    pod("follower", "1", "1Gi").with(pod_affinity(
                        "podAffinity",
                        true,
                        json!([term_app("web", HOSTNAME)]),
                    )),
                    "n1",
                ),
                on(pod("x", "1", "1Gi"), "n1"),
            ],
            pod("p", "", "").with(app("web")),
            Placed(&["n1"]),
        ),
    ]
}

fn spread_cases() -> Vec<Case> {
    let n = node;
    let web = |name: &str, node: &str| on(pod(name, "", "").with(app("web")), node);
    let two_zones = || vec![n("n1").with(zone("a")), n("n2").with(zone("b"))];
    vec![
        case(
            "DoNotSchedule keeps the skew within maxSkew",
            two_zones(),
            vec![
                web("w1", "n1"),
                web("w2", "n1"),
                web("w3", "n2"),
                on(pod("x", "2", "2Gi"), "n2"),
            ],
            pod("p", "", "")
                .with(app("web"))
                .with(spread(ZONE, 1, "DoNotSchedule", json!({}))),
            Placed(&["n2"]),
        ),
        case(
            "DoNotSchedule with no node within the skew",
            two_zones(),
            vec![
                web("w1", "n1"),
                web("w2", "n1"),
                on(pod("x", "4", ""), "n2"),
            ],
            pod("p", "1", "")
                .with(app("web"))
                .with(spread(ZONE, 1, "DoNotSchedule", json!({}))),
            Unschedulable(
                "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) didn't match pod \
                 topology spread constraints. preemption: 0/2 nodes are available: 2 No \
                 preemption victims found for incoming pod.",
            ),
        ),
        case(
            "nodes without the topology label are out",
            vec![n("n1").with(zone("a")), n("n2")],
            vec![on(pod("x", "2", "2Gi"), "n1")],
            pod("p", "", "")
                .with(app("web"))
                .with(spread(ZONE, 1, "DoNotSchedule", json!({}))),
            Placed(&["n1"]),
        ),
        case(
            "the only node lacks the topology label",
            vec![n("n1")],
            vec![],
            pod("p", "", "")
                .with(app("web"))
                .with(spread(ZONE, 1, "DoNotSchedule", json!({}))),
            Unschedulable(
                "0/1 nodes are available: 1 node(s) didn't match pod topology spread \
                 constraints (missing required label). preemption: 0/1 nodes are available: 1 \
                 Preemption is not helpful for scheduling.",
            ),
        ),
        case(
            "minDomains above the domains there are makes the minimum 0",
            vec![n("n1").with(zone("a")), n("n2").with(zone("a"))],
            vec![web("w1", "n1")],
            pod("p", "", "").with(app("web")).with(spread(
                ZONE,
                1,
                "DoNotSchedule",
                json!({"minDomains": 2}),
            )),
            Unschedulable(
                "0/2 nodes are available: 2 node(s) didn't match pod topology spread \
                 constraints. preemption: 0/2 nodes are available: 2 No preemption victims \
                 found for incoming pod.",
            ),
        ),
        case(
            "without minDomains one domain is fine",
            vec![n("n1").with(zone("a")), n("n2").with(zone("a"))],
            vec![web("w1", "n1")],
            pod("p", "", "")
                .with(app("web"))
                .with(spread(ZONE, 1, "DoNotSchedule", json!({}))),
            Placed(&["n1", "n2"]),
        ),
        case(
            "nodeAffinityPolicy Honor: nodes the pod cannot use are not domains",
            vec![
                n("n1").with(zone("a")).with(labels(&[("pool", "x")])),
                n("n2").with(zone("b")),
            ],
            vec![web("w1", "n1"), web("w2", "n1")],
            pod("p", "", "")
                .with(app("web"))
                .with(spec(json!({"nodeSelector": {"pool": "x"}})))
                .with(spread(ZONE, 1, "DoNotSchedule", json!({}))),
            Placed(&["n1"]),
        ),
        case(
            "nodeAffinityPolicy Ignore: they are",
            vec![
                n("n1").with(zone("a")).with(labels(&[("pool", "x")])),
                n("n2").with(zone("b")),
            ],
            vec![web("w1", "n1"), web("w2", "n1")],
            pod("p", "", "")
                .with(app("web"))
                .with(spec(json!({"nodeSelector": {"pool": "x"}})))
                .with(spread(
                    ZONE,
                    1,
                    "DoNotSchedule",
                    json!({"nodeAffinityPolicy": "Ignore"}),
                )),
            Unschedulable(
                "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, \
                 1 node(s) didn't match pod topology spread constraints. preemption: 0/2 nodes \
                 are available: 1 No preemption victims found for incoming pod, 1 Preemption \
                 is not helpful for scheduling.",
            ),
        ),
        case(
            "ScheduleAnyway spreads against load",
            vec![n("n1"), n("n2")],
            vec![
                web("w1", "n1"),
                web("w2", "n1"),
                on(pod("x", "1", "1Gi"), "n2"),
            ],
            pod("p", "", "").with(app("web")).with(spread(
                HOSTNAME,
                1,
                "ScheduleAnyway",
                json!({}),
            )),
            Placed(&["n2"]),
        ),
        case(
            "system default spreading: a ReplicaSet's pods spread over nodes",
            vec![n("n1"), n("n2")],
            vec![
                on(pod("r1", "", "").with(owned_by("ReplicaSet", "rs1")), "n1"),
                on(pod("r2", "", "").with(owned_by("ReplicaSet", "rs1")), "n1"),
                on(pod("x", "1", "1Gi"), "n2"),
            ],
            pod("p", "", "").with(owned_by("ReplicaSet", "rs1")),
            Placed(&["n2"]),
        ),
        case(
            "no controller, no default spreading: load decides",
            vec![n("n1"), n("n2")],
            vec![
                on(pod("r1", "", "").with(owned_by("ReplicaSet", "rs1")), "n1"),
                on(pod("r2", "", "").with(owned_by("ReplicaSet", "rs1")), "n1"),
                on(pod("x", "1", "1Gi"), "n2"),
            ],
            pod("p", "", ""),
            Placed(&["n1"]),
        ),
        case(
            "system default spreading over zones",
            vec![
                n("n1").with(zone("a")),
                n("n2").with(zone("a")),
                n("n3").with(zone("b")),
            ],
            vec![
                on(pod("r1", "", "").with(owned_by("StatefulSet", "ss1")), "n1"),
                on(pod("r2", "", "").with(owned_by("StatefulSet", "ss1")), "n1"),
                on(pod("x", "1", "1Gi"), "n3"),
            ],
            pod("p", "", "").with(owned_by("StatefulSet", "ss1")),
            Placed(&["n3"]),
        ),
    ]
}

fn score_cases() -> Vec<Case> {
    let n = node;
    vec![
        case(
            "least allocated: the emptier node",
            vec![n("n1"), n("n2")],
            vec![on(pod("a", "3", ""), "n1"), on(pod("b", "1", ""), "n2")],
            pod("p", "500m", "512Mi"),
            Placed(&["n2"]),
        ),
        case(
            "balanced allocation: equal free shares, the balanced node",
            vec![n("n1"), n("n2")],
            vec![
                on(pod("a", "1", "3Gi"), "n1"),
                on(pod("b", "0", "5Gi"), "n2"),
            ],
            pod("p", "1", "1Gi"),
            Placed(&["n1"]),
        ),
    ]
}

#[test]
fn placement() {
    let namespaces = namespaces();
    let cases: Vec<Case> = [
        resource_cases(),
        node_cases(),
        node_affinity_cases(),
        port_cases(),
        inter_pod_cases(),
        spread_cases(),
        score_cases(),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| check(c, &namespaces).err())
        .collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn ties_are_broken_at_random() {
    let nodes: Vec<Node> = (1..=5).map(|i| node(&format!("n{i}"))).collect();
    let cache = cache_of(&nodes, &[]);
    let mut scheduler = Scheduler::new();
    let mut chosen = std::collections::BTreeSet::new();
    for _ in 0..100 {
        match scheduler.schedule(&pod("p", "", ""), &cache, &namespaces()) {
            Decision::Placed(id) => chosen.insert(id),
            other => panic!("{other:?}"),
        };
    }
    assert!(
        chosen.len() >= 3,
        "only {chosen:?} chosen among 5 equal nodes"
    );
}

#[test]
fn no_nodes_at_all() {
    let cache = Cache::default();
    let decision = Scheduler::new().schedule(&pod("p", "", ""), &cache, &namespaces());
    assert_eq!(decision, Decision::NoNodes);
}

#[test]
fn large_clusters_score_a_share_of_the_nodes() {
    for (all, wanted) in [
        (0, 0),
        (50, 50),
        (100, 100),
        (500, 230),
        (1000, 420),
        (5000, 500),
        (6000, 300),
    ] {
        assert_eq!(feasible_nodes_to_find(all), wanted, "{all} nodes");
    }
}

#[test]
fn assumed_pods_count_on_their_node() {
    let mut cache = cache_of(&[node("n1")], &[]);
    cache.add_pod("default/a".into(), &pod("a", "3", ""), "n1", true);
    let decision = Scheduler::new().schedule(&pod("b", "2", ""), &cache, &namespaces());
    assert!(
        matches!(decision, Decision::Unschedulable(_)),
        "{decision:?}"
    );
    // A failed binding gives the room back.
    assert!(cache.forget_assumed("default/a", "uid-a"));
    let decision = Scheduler::new().schedule(&pod("b", "2", ""), &cache, &namespaces());
    assert!(matches!(decision, Decision::Placed(_)), "{decision:?}");
}

#[test]
fn node_heartbeats_are_not_changes() {
    let mut cache = Cache::default();
    assert!(
        cache.upsert_node(Arc::new(node("n1"))),
        "a new node is a change"
    );
    let beat = node("n1").with(json!({"status": {"conditions": [
        {"type": "Ready", "status": "True", "lastHeartbeatTime": "2025-01-01T00:00:00Z"}
    ]}}));
    assert!(!cache.upsert_node(Arc::new(beat)));
    let tainted = node("n1").with(taint("k", "v", "NoSchedule"));
    assert!(cache.upsert_node(Arc::new(tainted)));
}

// ---- queue ----------------------------------------------------------------------------------

fn add(q: &mut Queue, key: &str, created: i128, now: tokio::time::Instant) {
    q.add_or_update(key, &format!("uid-{key}"), 0, created, true, now);
}

#[tokio::test(start_paused = true)]
async fn queue_pops_oldest_first_and_by_priority() {
    let now = tokio::time::Instant::now();
    let mut q = Queue::default();
    add(&mut q, "b", 2, now);
    add(&mut q, "a", 1, now);
    q.add_or_update("urgent", "uid-urgent", 1000, 3, true, now);
    let order: Vec<String> = std::iter::from_fn(|| q.pop(now).map(|(k, _)| k)).collect();
    assert_eq!(order, ["urgent", "a", "b"]);
}

#[tokio::test(start_paused = true)]
async fn parked_pods_move_back_on_cluster_events() {
    let t0 = tokio::time::Instant::now();
    let mut q = Queue::default();
    add(&mut q, "p", 1, t0);
    let (key, uid) = q.pop(t0).unwrap();
    q.unschedulable(&key, &uid, t0);
    assert_eq!(q.counts(), (0, 0, 1, 0), "parked");
    assert!(
        q.pop(t0 + Duration::from_secs(30)).is_none(),
        "stays parked without an event"
    );

    // A node is added after the 1 s backoff ran out: straight back to active.
    let t1 = t0 + Duration::from_secs(2);
    q.move_all(t1);
    assert_eq!(q.pop(t1).map(|(k, _)| k).as_deref(), Some("p"));

    // Unschedulable again (2nd attempt: 2 s backoff); an event right away waits out the backoff.
    q.unschedulable("p", &uid, t1);
    q.move_all(t1);
    assert_eq!(q.counts(), (0, 1, 0, 0), "backing off");
    assert!(q.pop(t1 + Duration::from_millis(1900)).is_none());
    assert!(q.pop(t1 + Duration::from_secs(2)).is_some());
}

#[tokio::test(start_paused = true)]
async fn parked_pods_are_retried_after_a_minute() {
    let t0 = tokio::time::Instant::now();
    let mut q = Queue::default();
    add(&mut q, "p", 1, t0);
    let (key, uid) = q.pop(t0).unwrap();
    q.unschedulable(&key, &uid, t0);
    assert_eq!(q.next_due(), Some(t0 + super::queue::MAX_PARKED));
    assert!(q.pop(t0 + Duration::from_secs(59)).is_none());
    assert!(q.pop(t0 + Duration::from_secs(60)).is_some());
}

#[tokio::test(start_paused = true)]
async fn an_event_during_the_cycle_retries_instead_of_parking() {
    let t0 = tokio::time::Instant::now();
    let mut q = Queue::default();
    add(&mut q, "p", 1, t0);
    let (key, uid) = q.pop(t0).unwrap();
    q.move_all(t0); // a node was added while "p" was being scheduled
    q.unschedulable(&key, &uid, t0);
    assert_eq!(q.counts(), (0, 1, 0, 0), "backoff, not parked");
    assert!(q.pop(t0 + Duration::from_secs(1)).is_some());
}

#[tokio::test(start_paused = true)]
async fn bind_errors_back_off_doubling_to_ten_seconds() {
    let t0 = tokio::time::Instant::now();
    let mut q = Queue::default();
    add(&mut q, "p", 1, t0);
    let mut now = t0;
    for expected in [1, 2, 4, 8, 10, 10] {
        let (key, uid) = q.pop(now).unwrap();
        q.failed(&key, &uid, now);
        let wait = Duration::from_secs(expected);
        assert!(q.pop(now + wait - Duration::from_millis(1)).is_none());
        now += wait;
    }
    assert!(q.pop(now).is_some());
    // Bound at last: forgotten.
    q.done("p", "uid-p");
    assert_eq!(q.counts(), (0, 0, 0, 0));
}

// ---- the loop against a recording client -----------------------------------------------------

mod live {
    use super::*;
    use crate::controllers::client::RecordingClient;
    use crate::controllers::events::{drain, Record};
    use crate::controllers::{Config, Context};
    use tokio::task::JoinSet;

    struct Harness {
        ctx: Context,
        fake: RecordingClient,
        events: tokio::sync::mpsc::Receiver<Record>,
        _tasks: JoinSet<()>,
    }

    fn harness() -> Harness {
        let fake = RecordingClient::new();
        let (ctx, events) = Context::new(Arc::new(fake.clone()), Config::default());
        let mut tasks = JoinSet::new();
        super::super::start(&ctx, &mut tasks);
        ctx.informers.nodes.mark_synced();
        ctx.informers.pods.mark_synced();
        ctx.informers
            .namespaces
            .apply(serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap());
        Harness {
            ctx,
            fake,
            events,
            _tasks: tasks,
        }
    }

    impl Harness {
        /// Lets the loop run until `n` calls were made (or a generous deadline passes).
        async fn calls(&self, n: usize) -> Vec<String> {
            for _ in 0..200 {
                if self.fake.calls().len() >= n {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            self.fake.short_calls()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn binds_what_fits_and_reports_what_does_not() {
        let mut h = harness();
        h.ctx.informers.nodes.apply(node("n1"));
        h.ctx.informers.pods.apply(pod("a", "3", ""));
        let calls = h.calls(1).await;
        assert_eq!(calls, ["create /api/v1/namespaces/default/pods/a/binding"]);
        assert_eq!(h.fake.calls()[0].body["target"]["name"], "n1");

        // "a" is assumed on n1 (the informer has not shown it bound): "b" must not fit.
        h.ctx.informers.pods.apply(pod("b", "2", ""));
        let calls = h.calls(2).await;
        assert_eq!(calls[1], "patch /api/v1/namespaces/default/pods/b/status");
        let condition = &h.fake.calls()[1].body["status"]["conditions"][0];
        assert_eq!(condition["type"], "PodScheduled");
        assert_eq!(condition["status"], "False");
        assert_eq!(condition["reason"], "Unschedulable");
        let message = "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are \
                       available: 1 No preemption victims found for incoming pod.";
        assert_eq!(condition["message"], message);

        let events = drain(&mut h.events);
        let summary: Vec<(String, String, String)> = events
            .iter()
            .map(|e| {
                (
                    e.regarding.name.clone().unwrap_or_default(),
                    e.reason.clone(),
                    e.message.clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "a".to_string(),
                    "Scheduled".to_string(),
                    "Successfully assigned default/a to n1".to_string()
                ),
                (
                    "b".to_string(),
                    "FailedScheduling".to_string(),
                    message.to_string()
                ),
            ]
        );

        // The binding shows up; then "a" finishes: "b" is retried and fits.
        let bound = on(pod("a", "3", ""), "n1");
        h.ctx.informers.pods.apply(bound.clone());
        h.ctx
            .informers
            .pods
            .apply(bound.with(json!({"status": {"phase": "Succeeded"}})));
        let calls = h.calls(3).await;
        assert_eq!(calls[2], "create /api/v1/namespaces/default/pods/b/binding");
    }

    #[tokio::test(start_paused = true)]
    async fn the_condition_is_written_only_when_it_changes() {
        let h = harness();
        h.ctx
            .informers
            .nodes
            .apply(node("n1").with(json!({"spec": {"unschedulable": true}})));
        let message = "0/1 nodes are available: 1 node(s) were unschedulable. preemption: 0/1 \
                       nodes are available: 1 Preemption is not helpful for scheduling.";
        // The pod already carries the condition this attempt would write.
        let p = pod("p", "", "").with(json!({"status": {"conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
        }]}}));
        h.ctx.informers.pods.apply(p);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(h.fake.short_calls(), Vec::<String>::new());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_binding_is_retried_after_backoff() {
        let h = harness();
        h.fake.fail_next(
            "/api/v1/namespaces/default/pods/a/binding",
            500,
            "InternalError",
        );
        h.ctx.informers.nodes.apply(node("n1"));
        h.ctx.informers.pods.apply(pod("a", "1", ""));
        let calls = h.calls(2).await;
        assert_eq!(
            calls,
            [
                "create /api/v1/namespaces/default/pods/a/binding",
                "create /api/v1/namespaces/default/pods/a/binding"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_conflicting_binding_is_dropped() {
        let h = harness();
        h.fake
            .fail_next("/api/v1/namespaces/default/pods/a/binding", 409, "Conflict");
        h.ctx.informers.nodes.apply(node("n1"));
        h.ctx.informers.pods.apply(pod("a", "1", ""));
        h.calls(1).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(h.fake.short_calls().len(), 1, "not retried");
        // The pod was bound by someone else: nothing left to do.
        h.ctx.informers.pods.apply(on(pod("a", "1", ""), "n1"));
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(h.fake.short_calls().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn pods_for_other_schedulers_or_gated_are_left_alone() {
        let h = harness();
        h.ctx.informers.nodes.apply(node("n1"));
        h.ctx
            .informers
            .pods
            .apply(pod("other", "", "").with(spec(json!({"schedulerName": "my-scheduler"}))));
        h.ctx
            .informers
            .pods
            .apply(pod("gated", "", "").with(spec(json!({"schedulingGates": [{"name": "wait"}]}))));
        h.ctx.informers.pods.apply(
            pod("gone", "", "")
                .with(json!({"metadata": {"deletionTimestamp": "2025-01-01T00:00:00Z"}})),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(h.fake.short_calls(), Vec::<String>::new());
    }

    #[tokio::test(start_paused = true)]
    async fn a_parked_pod_is_placed_when_a_node_arrives() {
        let h = harness();
        h.ctx.informers.pods.apply(pod("p", "1", ""));
        let calls = h.calls(1).await;
        assert_eq!(calls, ["patch /api/v1/namespaces/default/pods/p/status"]);
        assert_eq!(
            h.fake.calls()[0].body["status"]["conditions"][0]["message"],
            "no nodes available to schedule pods"
        );
        h.ctx.informers.nodes.apply(node("n1"));
        let calls = h.calls(2).await;
        assert_eq!(calls[1], "create /api/v1/namespaces/default/pods/p/binding");
    }
}

/// Times 10,000 pods over 1,000 nodes in-process. Run on a quiet machine with
/// `cargo test --release -p skiff-master --lib scheduler::tests::throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput() {
    let nodes: Vec<Node> = (0..1000)
        .map(|i| node(&format!("node-{i:04}")).with(zone(&format!("zone-{}", i % 3))))
        .collect();
    let mut cache = cache_of(&nodes, &[]);
    let namespaces = namespaces();
    let mut scheduler = Scheduler::new();
    let pods: Vec<Pod> = (0..10_000)
        .map(|i| {
            pod(&format!("p{i}"), "100m", "128Mi")
                .with(owned_by("ReplicaSet", &format!("rs{}", i % 20)))
        })
        .collect();
    let started = std::time::Instant::now();
    for p in pods {
        match scheduler.schedule(&p, &cache, &namespaces) {
            Decision::Placed(id) => {
                let name = cache.node(id).name.clone();
                cache.add_pod(key_of(&p.metadata), &p, &name, true);
            }
            other => panic!("{other:?}"),
        }
    }
    let elapsed = started.elapsed();
    println!(
        "10,000 pods over 1,000 nodes in {elapsed:?} ({:.0} pods/s)",
        10_000.0 / elapsed.as_secs_f64()
    );
}
