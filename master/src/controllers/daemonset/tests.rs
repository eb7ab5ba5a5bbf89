use super::*;
use crate::controllers::client::{Call, RecordingClient};
use crate::controllers::events::{drain, Record};
use crate::controllers::Config;
use serde_json::Value;
use tokio::sync::mpsc::Receiver;

const NS: &str = "kube-system";
const DS_PATH: &str = "/apis/apps/v1/namespaces/kube-system/daemonsets/agent";
const PODS: &str = "/api/v1/namespaces/kube-system/pods";
const REVISIONS: &str = "/apis/apps/v1/namespaces/kube-system/controllerrevisions";

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

/// A DaemonSet `agent` with `spec` merged over a plain one.
fn daemon_set(image: &str, extra_spec: Value) -> DaemonSet {
    let mut v = json!({
        "metadata": {"name": "agent", "namespace": NS, "uid": "ds-uid", "generation": 1},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "a", "image": image}]}
            },
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
            "revisionHistoryLimit": 10
        }
    });
    if let (Some(spec), Some(extra)) = (v["spec"].as_object_mut(), extra_spec.as_object()) {
        for (k, val) in extra {
            spec.insert(k.clone(), val.clone());
        }
    }
    from(v)
}

fn hash_of_ds(ds: &DaemonSet) -> String {
    compute_hash(&ds.spec.as_ref().unwrap().template, None)
}

/// The ControllerRevision the controller would have made for `ds`'s template.
fn revision(ds: &DaemonSet, number: i64) -> ControllerRevision {
    let hash = hash_of_ds(ds);
    from(json!({
        "metadata": {
            "name": format!("agent-{hash}"), "namespace": NS, "uid": format!("rev-{hash}"),
            "labels": {"app": "agent", REVISION_HASH: hash},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent", "uid": "ds-uid", "controller": true}]
        },
        "data": history::template_patch(&ds.spec.as_ref().unwrap().template),
        "revision": number
    }))
}

fn node(name: &str, labels: Value, taints: Value) -> Node {
    from(json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}}))
}

fn plain_node(name: &str) -> Node {
    node(name, json!({}), json!([]))
}

/// A Running pod of `agent` on `node` at revision `hash`.
fn pod(name: &str, node: &str, hash: &str, ready: bool) -> Pod {
    from(json!({
        "metadata": {
            "name": name, "namespace": NS, "uid": format!("uid-{name}"),
            "creationTimestamp": "2025-01-01T00:00:00Z",
            "labels": {"app": "agent", REVISION_HASH: hash},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent", "uid": "ds-uid", "controller": true}]
        },
        "spec": {"nodeName": node, "containers": [{"name": "a", "image": "x"}]},
        "status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": "2025-01-01T00:00:00Z"}
        ]}
    }))
}

struct Fixture {
    fake: RecordingClient,
    ctx: Context,
    events: Receiver<Record>,
    controller: DaemonSetController,
}

fn fixture(
    ds: &DaemonSet,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    revisions: Vec<ControllerRevision>,
) -> Fixture {
    let fake = RecordingClient::new();
    let (ctx, events) = Context::new(Arc::new(fake.clone()), Config::default());
    ctx.informers.daemon_sets.apply(ds.clone());
    for n in nodes {
        ctx.informers.nodes.apply(n);
    }
    for p in pods {
        ctx.informers.pods.apply(p);
    }
    for r in revisions {
        ctx.informers.controller_revisions.apply(r);
    }
    let controller = DaemonSetController::new(ctx.clone());
    Fixture {
        fake,
        ctx,
        events,
        controller,
    }
}

impl Fixture {
    async fn run(&self) -> Action {
        self.controller
            .reconcile("kube-system/agent")
            .await
            .unwrap()
    }
    fn calls(&self, verb: &str, prefix: &str) -> Vec<Call> {
        self.fake
            .calls()
            .into_iter()
            .filter(|c| c.verb == verb && c.path.starts_with(prefix))
            .collect()
    }
    fn reasons(&mut self) -> Vec<String> {
        drain(&mut self.events)
            .into_iter()
            .map(|r| r.reason)
            .collect()
    }
}

/// The node each created pod's matchFields affinity names.
fn created_nodes(f: &Fixture) -> Vec<String> {
    f.calls("create", PODS)
        .iter()
        .map(|c| {
            c.body["spec"]["affinity"]["nodeAffinity"]
                ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
                ["matchFields"][0]["values"][0]
                .as_str()
                .unwrap_or("?")
                .to_string()
        })
        .collect()
}

fn deleted(f: &Fixture) -> Vec<String> {
    f.calls("delete", PODS)
        .iter()
        .map(|c| c.path.trim_start_matches(&format!("{PODS}/")).to_string())
        .collect()
}

#[tokio::test]
async fn creates_one_pod_per_eligible_node_for_the_scheduler() {
    let ds = daemon_set("agent:1", json!({}));
    let hash = hash_of_ds(&ds);
    let nodes = vec![
        plain_node("n1"),
        plain_node("n2"),
        node(
            "tainted",
            json!({}),
            json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
        ),
        // Cordoned and not ready: daemon pods tolerate both.
        node(
            "cordoned",
            json!({}),
            json!([
                {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
                {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}
            ]),
        ),
    ];
    let mut f = fixture(&ds, nodes, vec![], vec![revision(&ds, 1)]);
    assert_eq!(f.run().await, Action::Done);
    assert_eq!(created_nodes(&f), vec!["cordoned", "n1", "n2"]);
    let body = &f.calls("create", PODS)[0].body;
    assert_eq!(body["metadata"]["generateName"], "agent-");
    assert_eq!(body["metadata"]["labels"][REVISION_HASH], hash.as_str());
    assert_eq!(body["metadata"]["labels"][TEMPLATE_GENERATION], "1");
    assert_eq!(body["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "ds-uid");
    assert!(
        body["spec"].get("nodeName").is_none(),
        "the scheduler places daemon pods"
    );
    let fields = &body["spec"]["affinity"]["nodeAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchFields"]
        [0];
    assert_eq!(fields["key"], "metadata.name");
    assert_eq!(fields["operator"], "In");
    let tolerations = body["spec"]["tolerations"].as_array().unwrap();
    assert_eq!(
        tolerations.len(),
        6,
        "no network-unavailable without hostNetwork"
    );
    assert!(tolerations
        .iter()
        .any(|t| t["key"] == "node.kubernetes.io/not-ready" && t["effect"] == "NoExecute"));
    assert_eq!(f.reasons(), vec!["SuccessfulCreate"; 3]);
    // Nothing is running yet: the status says so and observes the generation.
    let status = &f.calls("patch", &format!("{DS_PATH}/status"))[0].body["status"];
    assert_eq!(status["desiredNumberScheduled"], 3);
    assert_eq!(status["currentNumberScheduled"], 0);
    assert_eq!(status["numberUnavailable"], 3);
    assert_eq!(status["observedGeneration"], 1);
}

#[tokio::test]
async fn waits_for_its_creations_before_acting_again() {
    let ds = daemon_set("agent:1", json!({}));
    let hash = hash_of_ds(&ds);
    let f = fixture(&ds, vec![plain_node("n1")], vec![], vec![revision(&ds, 1)]);
    f.run().await;
    assert_eq!(f.calls("create", PODS).len(), 1);
    let awaited = f.controller.expectations.lock()["kube-system/agent"]
        .creates
        .clone();
    let created = awaited[0].trim_start_matches("kube-system/").to_string();
    f.fake.clear();
    // The new pod is not in the cache yet: no second pod, no observed generation.
    let action = f.run().await;
    assert!(matches!(action, Action::RequeueAfter(_)), "{action:?}");
    assert!(f.calls("create", PODS).is_empty());
    // Once the cache has it, the controller acts again (and has nothing to do).
    let seen = pod(&created, "n1", &hash, true);
    f.ctx.informers.pods.apply(seen);
    f.fake.clear();
    assert_eq!(f.run().await, Action::Done);
    assert!(f.calls("create", PODS).is_empty());
    let status = &f.calls("patch", &format!("{DS_PATH}/status"))[0].body["status"];
    assert_eq!(status["numberAvailable"], 1);
    assert_eq!(status["updatedNumberScheduled"], 1);
}

/// One reconcile over `pods` on `nodes`: the pods deleted and the nodes given new pods.
struct Case {
    name: &'static str,
    ds: DaemonSet,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    deleted: &'static [&'static str],
    created_on: &'static [&'static str],
}

async fn check(case: Case) {
    let revisions = vec![revision(&case.ds, 2)];
    let f = fixture(&case.ds, case.nodes, case.pods, revisions);
    f.run().await;
    assert_eq!(deleted(&f), case.deleted, "{}: deleted", case.name);
    assert_eq!(
        created_nodes(&f),
        case.created_on,
        "{}: created on",
        case.name
    );
}

#[tokio::test]
async fn core_loop_and_rolling_update_decisions() {
    let v1 = daemon_set("agent:1", json!({}));
    let v2 = daemon_set("agent:2", json!({}));
    let (h1, h2) = (hash_of_ds(&v1), hash_of_ds(&v2));
    let three = || vec![plain_node("n1"), plain_node("n2"), plain_node("n3")];
    let with_strategy = |unavailable: Value, surge: Value| {
        daemon_set(
            "agent:2",
            json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": unavailable, "maxSurge": surge}}}),
        )
    };
    let cases = vec![
        Case {
            name: "pods of deleted nodes go",
            ds: v1.clone(),
            nodes: vec![plain_node("n1")],
            pods: vec![pod("p1", "n1", &h1, true), pod("p-gone", "gone", &h1, true)],
            deleted: &["p-gone"],
            created_on: &[],
        },
        Case {
            name: "an untolerated NoExecute taint evicts, NoSchedule keeps running pods",
            ds: v1.clone(),
            nodes: vec![
                node(
                    "noexec",
                    json!({}),
                    json!([{"key": "k", "effect": "NoExecute"}]),
                ),
                node(
                    "nosched",
                    json!({}),
                    json!([{"key": "k", "effect": "NoSchedule"}]),
                ),
            ],
            pods: vec![
                pod("p1", "noexec", &h1, true),
                pod("p2", "nosched", &h1, true),
            ],
            deleted: &["p1"],
            created_on: &[],
        },
        Case {
            name: "nodes no longer selected lose their pods",
            ds: daemon_set(
                "agent:1",
                json!({"template": {"metadata": {"labels": {"app": "agent"}}, "spec": {
                    "nodeSelector": {"role": "edge"}, "containers": [{"name": "a", "image": "agent:1"}]}}}),
            ),
            nodes: vec![
                node("edge", json!({"role": "edge"}), json!([])),
                plain_node("core"),
            ],
            pods: vec![pod("p1", "core", "whatever", true)],
            deleted: &["p1"],
            created_on: &["edge"],
        },
        Case {
            name: "extra pods on a node: all but the oldest go",
            ds: v1.clone(),
            nodes: vec![plain_node("n1")],
            pods: vec![pod("a-old", "n1", &h1, true), {
                let mut p = pod("b-new", "n1", &h1, true);
                p.metadata.creation_timestamp = Some(from(json!("2025-01-02T00:00:00Z")));
                p
            }],
            deleted: &["b-new"],
            created_on: &[],
        },
        Case {
            name: "rolling update: one old pod at a time with maxUnavailable 1",
            ds: v2.clone(),
            nodes: three(),
            pods: vec![
                pod("p1", "n1", &h1, true),
                pod("p2", "n2", &h1, true),
                pod("p3", "n3", &h1, true),
            ],
            deleted: &["p1"],
            created_on: &[],
        },
        Case {
            name: "rolling update: two at a time with maxUnavailable 2",
            ds: with_strategy(json!(2), json!(0)),
            nodes: three(),
            pods: vec![
                pod("p1", "n1", &h1, true),
                pod("p2", "n2", &h1, true),
                pod("p3", "n3", &h1, true),
            ],
            deleted: &["p1", "p2"],
            created_on: &[],
        },
        Case {
            name: "rolling update: percentages round up",
            ds: with_strategy(json!("34%"), json!(0)),
            nodes: three(),
            pods: vec![
                pod("p1", "n1", &h1, true),
                pod("p2", "n2", &h1, true),
                pod("p3", "n3", &h1, true),
            ],
            deleted: &["p1", "p2"],
            created_on: &[],
        },
        Case {
            name: "rolling update: waits while a new pod is unavailable",
            ds: v2.clone(),
            nodes: three(),
            pods: vec![
                pod("p1", "n1", &h2, false),
                pod("p2", "n2", &h1, true),
                pod("p3", "n3", &h1, true),
            ],
            deleted: &[],
            created_on: &[],
        },
        Case {
            name: "rolling update: unavailable old pods are replaced at once",
            ds: v2.clone(),
            nodes: three(),
            pods: vec![
                pod("p1", "n1", &h2, false),
                pod("p2", "n2", &h1, false),
                pod("p3", "n3", &h1, true),
            ],
            deleted: &["p2"],
            created_on: &[],
        },
        Case {
            name: "surge: a new pod beside an old one, up to maxSurge",
            ds: with_strategy(json!(0), json!(1)),
            nodes: three(),
            pods: vec![
                pod("p1", "n1", &h1, true),
                pod("p2", "n2", &h1, true),
                pod("p3", "n3", &h1, true),
            ],
            deleted: &[],
            created_on: &["n1"],
        },
        Case {
            name: "surge: the old pod goes once the new one is available",
            ds: with_strategy(json!(0), json!(1)),
            nodes: three(),
            pods: vec![
                pod("p1", "n1", &h1, true),
                pod("q1", "n1", &h2, true),
                pod("p2", "n2", &h1, true),
                pod("p3", "n3", &h1, true),
            ],
            deleted: &["p1"],
            created_on: &[],
        },
        Case {
            name: "OnDelete: old pods stay",
            ds: daemon_set("agent:2", json!({"updateStrategy": {"type": "OnDelete"}})),
            nodes: three(),
            pods: vec![
                pod("p1", "n1", &h1, true),
                pod("p2", "n2", &h1, true),
                pod("p3", "n3", &h1, true),
            ],
            deleted: &[],
            created_on: &[],
        },
    ];
    for case in cases {
        check(case).await;
    }
}

#[tokio::test]
async fn failed_pods_are_deleted_with_backoff() {
    let ds = daemon_set("agent:1", json!({}));
    let hash = hash_of_ds(&ds);
    let mut failed = pod("p1", "n1", &hash, false);
    failed.status.as_mut().unwrap().phase = Some("Failed".into());
    let mut f = fixture(
        &ds,
        vec![plain_node("n1")],
        vec![failed.clone()],
        vec![revision(&ds, 1)],
    );
    f.run().await;
    assert_eq!(deleted(&f), vec!["p1"]);
    assert!(f.reasons().contains(&"FailedDaemonPod".to_string()));
    // The node fails the next pod at once: the controller waits before deleting again.
    f.controller.expectations.forget("kube-system/agent");
    let mut again = failed;
    again.metadata.name = Some("p2".into());
    again.metadata.uid = Some("uid-p2".into());
    f.ctx.informers.pods.delete(&pod("p1", "n1", &hash, false));
    f.ctx.informers.pods.apply(again);
    f.fake.clear();
    let action = f.run().await;
    assert!(deleted(&f).is_empty());
    assert!(
        matches!(action, Action::RequeueAfter(d) if d <= FAILED_BACKOFF_INITIAL),
        "{action:?}"
    );
}

#[tokio::test]
async fn status_counts_ready_available_updated_and_misscheduled() {
    let ds = daemon_set("agent:2", json!({"updateStrategy": {"type": "OnDelete"}}));
    let h2 = hash_of_ds(&ds);
    let nodes = vec![
        plain_node("n1"),
        plain_node("n2"),
        plain_node("n3"),
        node(
            "evicting",
            json!({}),
            json!([{"key": "k", "effect": "NoSchedule"}]),
        ),
    ];
    let pods = vec![
        pod("p1", "n1", &h2, true),
        pod("p2", "n2", "old", true),
        pod("p3", "n3", &h2, false),
        pod("p4", "evicting", &h2, true),
    ];
    let f = fixture(&ds, nodes, pods, vec![revision(&ds, 1)]);
    f.run().await;
    let status = &f.calls("patch", &format!("{DS_PATH}/status"))[0].body["status"];
    assert_eq!(
        *status,
        json!({
            "desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberMisscheduled": 1,
            "numberReady": 2, "numberAvailable": 2, "numberUnavailable": 1,
            "updatedNumberScheduled": 2, "observedGeneration": 1
        })
    );
}

#[tokio::test]
async fn status_is_not_written_when_unchanged() {
    let mut ds = daemon_set("agent:1", json!({}));
    let hash = hash_of_ds(&ds);
    ds.status = Some(from(json!({
        "desiredNumberScheduled": 1, "currentNumberScheduled": 1, "numberMisscheduled": 0,
        "numberReady": 1, "numberAvailable": 1, "numberUnavailable": 0,
        "updatedNumberScheduled": 1, "observedGeneration": 1
    })));
    let f = fixture(
        &ds,
        vec![plain_node("n1")],
        vec![pod("p1", "n1", &hash, true)],
        vec![revision(&ds, 1)],
    );
    assert_eq!(f.run().await, Action::Done);
    assert!(f.fake.calls().is_empty(), "{:?}", f.fake.short_calls());
}

#[tokio::test]
async fn revisions_are_created_renumbered_and_limited() {
    // No revision yet: one is created for the template.
    let ds = daemon_set("agent:3", json!({"revisionHistoryLimit": 1}));
    let f = fixture(&ds, vec![], vec![], vec![]);
    f.run().await;
    let created = f.calls("create", REVISIONS);
    assert_eq!(created.len(), 1);
    let body = &created[0].body;
    let hash = hash_of_ds(&ds);
    assert_eq!(body["metadata"]["name"], format!("agent-{hash}"));
    assert_eq!(body["metadata"]["labels"][REVISION_HASH], hash.as_str());
    assert_eq!(body["data"]["spec"]["template"]["$patch"], "replace");
    assert_eq!(
        body["data"]["spec"]["template"]["spec"]["containers"][0]["image"],
        "agent:3"
    );
    assert_eq!(body["revision"], 1);

    // Three old revisions (one still run by a pod), limit 1: the two oldest unused go; the
    // current one, found at revision 2, is renumbered past the newest (4).
    let old = |image: &str, n: i64| revision(&daemon_set(image, json!({})), n);
    let (r1, r2, r4) = (old("agent:1", 1), old("agent:2", 3), old("agent:4", 4));
    let live = history::hash_label(&r1).unwrap().to_string();
    let f = fixture(
        &ds,
        vec![plain_node("n1")],
        vec![pod("p1", "n1", &live, true)],
        vec![r1, r2.clone(), r4.clone(), revision(&ds, 2)],
    );
    f.run().await;
    let updates = f.calls("update", REVISIONS);
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].body["revision"], 5);
    let deleted: Vec<String> = f
        .calls("delete", REVISIONS)
        .iter()
        .map(|c| c.path.clone())
        .collect();
    assert_eq!(
        deleted,
        vec![
            format!("{REVISIONS}/{}", r2.metadata.name.unwrap()),
            format!("{REVISIONS}/{}", r4.metadata.name.unwrap()),
        ]
    );
}

#[tokio::test]
async fn a_selector_of_everything_is_refused() {
    let mut ds = daemon_set("agent:1", json!({}));
    ds.spec.as_mut().unwrap().selector = Default::default();
    let mut f = fixture(&ds, vec![plain_node("n1")], vec![], vec![]);
    assert_eq!(f.run().await, Action::Done);
    assert!(f.fake.calls().is_empty());
    assert_eq!(f.reasons(), vec!["SelectingAll"]);
}

#[test]
fn node_eligibility() {
    let spec = |extra: Value| -> PodSpec {
        let mut v = json!({"containers": [{"name": "a", "image": "x"}]});
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        daemon_pod_spec(&PodTemplateSpec {
            metadata: None,
            spec: Some(from(v)),
        })
    };
    let affinity = |op: &str, values: Value| {
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": op, "values": values}]}]}}}})
    };
    let taint = |key: &str, effect: &str| json!([{"key": key, "effect": effect}]);
    let zone_a = json!({"zone": "a", "cpus": "8"});
    // (name, pod spec fields, node labels, node taints, (should run, should continue))
    type Row = (&'static str, Value, Value, Value, (bool, bool));
    let cases: Vec<Row> = vec![
        (
            "no constraints",
            json!({}),
            json!({}),
            json!([]),
            (true, true),
        ),
        (
            "nodeSelector matches",
            json!({"nodeSelector": {"zone": "a"}}),
            zone_a.clone(),
            json!([]),
            (true, true),
        ),
        (
            "nodeSelector does not",
            json!({"nodeSelector": {"zone": "b"}}),
            zone_a.clone(),
            json!([]),
            (false, false),
        ),
        (
            "affinity In",
            affinity("In", json!(["a", "c"])),
            zone_a.clone(),
            json!([]),
            (true, true),
        ),
        (
            "affinity NotIn",
            affinity("NotIn", json!(["a"])),
            zone_a.clone(),
            json!([]),
            (false, false),
        ),
        (
            "affinity Gt",
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "cpus", "operator": "Gt", "values": ["4"]}]}]}}}}),
            zone_a.clone(),
            json!([]),
            (true, true),
        ),
        (
            "matchFields on the name",
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["other"]}]}]}}}}),
            json!({}),
            json!([]),
            (false, false),
        ),
        (
            "template nodeName elsewhere",
            json!({"nodeName": "other"}),
            json!({}),
            json!([]),
            (false, false),
        ),
        (
            "NoSchedule taint: no new pod, running one stays",
            json!({}),
            json!({}),
            taint("k", "NoSchedule"),
            (false, true),
        ),
        (
            "NoExecute taint: evicted",
            json!({}),
            json!({}),
            taint("k", "NoExecute"),
            (false, false),
        ),
        (
            "PreferNoSchedule is ignored",
            json!({}),
            json!({}),
            taint("k", "PreferNoSchedule"),
            (true, true),
        ),
        (
            "tolerated by Exists",
            json!({"tolerations": [{"operator": "Exists"}]}),
            json!({}),
            taint("k", "NoExecute"),
            (true, true),
        ),
        (
            "tolerated by Equal",
            json!({"tolerations": [{"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}]}),
            json!({}),
            json!([{"key": "k", "value": "v", "effect": "NoSchedule"}]),
            (true, true),
        ),
        (
            "wrong value",
            json!({"tolerations": [{"key": "k", "value": "w"}]}),
            json!({}),
            json!([{"key": "k", "value": "v", "effect": "NoSchedule"}]),
            (false, true),
        ),
        (
            "unreachable is tolerated",
            json!({}),
            json!({}),
            taint("node.kubernetes.io/unreachable", "NoExecute"),
            (true, true),
        ),
        (
            "memory pressure is tolerated",
            json!({}),
            json!({}),
            taint("node.kubernetes.io/memory-pressure", "NoSchedule"),
            (true, true),
        ),
        (
            "network-unavailable without hostNetwork",
            json!({}),
            json!({}),
            taint("node.kubernetes.io/network-unavailable", "NoSchedule"),
            (false, true),
        ),
        (
            "network-unavailable with hostNetwork",
            json!({"hostNetwork": true}),
            json!({}),
            taint("node.kubernetes.io/network-unavailable", "NoSchedule"),
            (true, true),
        ),
    ];
    for (name, pod_spec, labels, taints, expected) in cases {
        let n = node("n1", labels, taints);
        assert_eq!(node_should_run(&n, &spec(pod_spec)), expected, "{name}");
    }
}

#[test]
fn daemon_tolerations_are_added_once() {
    let template: PodTemplateSpec = from(json!({"spec": {"containers": [], "tolerations": [
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}
    ]}}));
    let spec = daemon_pod_spec(&template);
    let not_ready = spec
        .tolerations
        .unwrap()
        .iter()
        .filter(|t| t.key.as_deref() == Some("node.kubernetes.io/not-ready"))
        .count();
    assert_eq!(not_ready, 1);
}

#[test]
fn target_node_comes_from_node_name_or_match_fields() {
    let mut p = pod("p", "n1", "h", true);
    assert_eq!(target_node(&p), Some("n1"));
    p.spec.as_mut().unwrap().node_name = None;
    assert_eq!(target_node(&p), None);
    let ds = daemon_set("agent:1", json!({}));
    let created = new_daemon_pod(&ds, &create_pod_template(&ds, "h"), "n7");
    assert_eq!(target_node(&created), Some("n7"));
}
