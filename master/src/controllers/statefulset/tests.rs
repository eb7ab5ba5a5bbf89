use super::*;
use crate::controllers::client::{Call, RecordingClient};
use crate::controllers::events::{drain, Record};
use crate::controllers::Config;
use serde_json::Value;
use tokio::sync::mpsc::Receiver;

const NS: &str = "db";
const SET_PATH: &str = "/apis/apps/v1/namespaces/db/statefulsets/web";
const PODS: &str = "/api/v1/namespaces/db/pods";
const REVISIONS: &str = "/apis/apps/v1/namespaces/db/controllerrevisions";

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

/// A StatefulSet `web` running `image`, with `extra` merged over its spec.
fn stateful_set(image: &str, replicas: i32, extra: Value) -> StatefulSet {
    let mut v = json!({
        "metadata": {"name": "web", "namespace": NS, "uid": "set-uid", "generation": 1},
        "spec": {
            "replicas": replicas,
            "serviceName": "web-svc",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": image}]}
            },
            "podManagementPolicy": "OrderedReady",
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
            "revisionHistoryLimit": 10
        }
    });
    for (k, val) in extra.as_object().unwrap() {
        v["spec"][k] = val.clone();
    }
    from(v)
}

/// The revision the controller makes for `set`'s template.
fn revision(set: &StatefulSet, number: i64) -> ControllerRevision {
    let data = history::template_patch(&set.spec.as_ref().unwrap().template);
    let hash = history::hash_revision(&data, Some(0));
    from(json!({
        "metadata": {
            "name": format!("web-{hash}"), "namespace": NS, "uid": format!("rev-{hash}"),
            "labels": {"app": "web", REVISION_HASH: hash},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "uid": "set-uid", "controller": true}]
        },
        "data": data,
        "revision": number
    }))
}

fn name_of(r: &ControllerRevision) -> String {
    r.metadata.name.clone().unwrap()
}

/// Pod `web-<ordinal>` at `revision`, in `phase`, ready or not.
fn pod(ordinal: i32, revision: &str, phase: &str, ready: bool) -> Pod {
    let name = format!("web-{ordinal}");
    from(json!({
        "metadata": {
            "name": name, "namespace": NS, "uid": format!("uid-{name}"),
            "labels": {"app": "web", REVISION_HASH: revision, POD_NAME_LABEL: name, POD_INDEX_LABEL: ordinal.to_string()},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "uid": "set-uid", "controller": true}]
        },
        "spec": {"containers": [{"name": "c", "image": "x"}], "nodeName": "n1"},
        "status": {"phase": phase, "conditions": [
            {"type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": "2025-01-01T00:00:00Z"}
        ]}
    }))
}

fn ready(ordinal: i32, revision: &str) -> Pod {
    pod(ordinal, revision, "Running", true)
}

fn terminating(mut p: Pod) -> Pod {
    p.metadata.deletion_timestamp = Some(from(json!("2025-01-01T00:00:00Z")));
    p
}

struct Fixture {
    fake: RecordingClient,
    events: Receiver<Record>,
    controller: StatefulSetController,
}

fn fixture(set: &StatefulSet, pods: Vec<Pod>, revisions: Vec<ControllerRevision>) -> Fixture {
    let fake = RecordingClient::new();
    let (ctx, events) = Context::new(Arc::new(fake.clone()), Config::default());
    ctx.informers.stateful_sets.apply(set.clone());
    for p in pods {
        ctx.informers.pods.apply(p);
    }
    for r in revisions {
        ctx.informers.controller_revisions.apply(r);
    }
    let controller = StatefulSetController::new(ctx);
    Fixture {
        fake,
        events,
        controller,
    }
}

impl Fixture {
    async fn run(&self) -> Action {
        self.controller.reconcile("db/web").await.unwrap()
    }
    fn calls(&self, verb: &str, prefix: &str) -> Vec<Call> {
        self.fake
            .calls()
            .into_iter()
            .filter(|c| c.verb == verb && c.path.starts_with(prefix))
            .collect()
    }
    /// The pod writes, as `create web-0`, `delete web-2`, `patch web-1`.
    fn pod_ops(&self) -> Vec<String> {
        self.fake
            .calls()
            .into_iter()
            .filter(|c| c.path.starts_with(PODS))
            .map(|c| match c.verb {
                "create" => format!(
                    "create {}",
                    c.body["metadata"]["name"].as_str().unwrap_or("?")
                ),
                verb => format!("{verb} {}", c.path.trim_start_matches(&format!("{PODS}/"))),
            })
            .collect()
    }
    fn status(&self) -> Option<Value> {
        self.calls("patch", &format!("{SET_PATH}/status"))
            .pop()
            .map(|c| c.body["status"].clone())
    }
}

/// Given a set at the update revision `v2` (older pods run `v1`), one reconcile makes exactly
/// these pod writes.
struct Case {
    name: &'static str,
    set: StatefulSet,
    pods: Vec<Pod>,
    ops: &'static [&'static str],
}

#[tokio::test]
async fn ordering_scaling_and_rolling_updates() {
    let v1 = stateful_set("web:1", 3, json!({}));
    let v2 = stateful_set("web:2", 3, json!({}));
    let (r1, r2) = (name_of(&revision(&v1, 1)), name_of(&revision(&v2, 2)));
    let (r1, r2) = (r1.as_str(), r2.as_str());
    let parallel = |replicas: i32| {
        stateful_set(
            "web:2",
            replicas,
            json!({"podManagementPolicy": "Parallel"}),
        )
    };
    let with_partition = |p: i32| {
        stateful_set(
            "web:2",
            3,
            json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": p}}}),
        )
    };
    let cases = vec![
        Case {
            name: "OrderedReady creates ordinal 0 first",
            set: v2.clone(),
            pods: vec![],
            ops: &["create web-0"],
        },
        Case {
            name: "and waits while it is not Ready",
            set: v2.clone(),
            pods: vec![pod(0, r2, "Running", false)],
            ops: &[],
        },
        Case {
            name: "or Pending",
            set: v2.clone(),
            pods: vec![pod(0, r2, "Pending", false)],
            ops: &[],
        },
        Case {
            name: "then creates 1",
            set: v2.clone(),
            pods: vec![ready(0, r2)],
            ops: &["create web-1"],
        },
        Case {
            name: "a gap is filled before anything else",
            set: v2.clone(),
            pods: vec![ready(0, r2), ready(2, r2)],
            ops: &["create web-1"],
        },
        Case {
            name: "Parallel creates all at once",
            set: parallel(3),
            pods: vec![],
            ops: &["create web-0", "create web-1", "create web-2"],
        },
        Case {
            name: "Parallel does not wait for unready pods",
            set: parallel(3),
            pods: vec![pod(0, r2, "Pending", false)],
            ops: &["create web-1", "create web-2"],
        },
        Case {
            name: "scale down removes the highest ordinal only",
            set: stateful_set("web:2", 1, json!({})),
            pods: vec![ready(0, r2), ready(1, r2), ready(2, r2)],
            ops: &["delete web-2"],
        },
        Case {
            name: "and waits for it to terminate",
            set: stateful_set("web:2", 1, json!({})),
            pods: vec![ready(0, r2), ready(1, r2), terminating(ready(2, r2))],
            ops: &[],
        },
        Case {
            name: "an unready condemned pod goes if it is the first unhealthy one",
            set: stateful_set("web:2", 1, json!({})),
            pods: vec![ready(0, r2), ready(1, r2), pod(2, r2, "Running", false)],
            ops: &["delete web-2"],
        },
        Case {
            name: "but not while a lower one is unhealthy",
            set: stateful_set("web:2", 1, json!({})),
            pods: vec![
                ready(0, r2),
                pod(1, r2, "Running", false),
                pod(2, r2, "Running", false),
            ],
            ops: &[],
        },
        Case {
            name: "Parallel scale down removes all condemned pods",
            set: parallel(1),
            pods: vec![ready(0, r2), ready(1, r2), ready(2, r2)],
            ops: &["delete web-2", "delete web-1"],
        },
        Case {
            name: "rolling update deletes the highest old pod first",
            set: v2.clone(),
            pods: vec![ready(0, r1), ready(1, r1), ready(2, r1)],
            ops: &["delete web-2"],
        },
        Case {
            name: "the replacement is created at the update revision",
            set: v2.clone(),
            pods: vec![ready(0, r1), ready(1, r1)],
            ops: &["create web-2"],
        },
        Case {
            name: "and awaited before the next one goes",
            set: v2.clone(),
            pods: vec![ready(0, r1), ready(1, r1), pod(2, r2, "Running", false)],
            ops: &[],
        },
        Case {
            name: "once it is Ready, the next old pod goes",
            set: v2.clone(),
            pods: vec![ready(0, r1), ready(1, r1), ready(2, r2)],
            ops: &["delete web-1"],
        },
        Case {
            name: "partition 2 updates only ordinals from 2",
            set: with_partition(2),
            pods: vec![ready(0, r1), ready(1, r1), ready(2, r1)],
            ops: &["delete web-2"],
        },
        Case {
            name: "and stops there",
            set: with_partition(2),
            pods: vec![ready(0, r1), ready(1, r1), ready(2, r2)],
            ops: &[],
        },
        Case {
            name: "OnDelete leaves old pods",
            set: stateful_set("web:2", 3, json!({"updateStrategy": {"type": "OnDelete"}})),
            pods: vec![ready(0, r1), ready(1, r1), ready(2, r1)],
            ops: &[],
        },
        Case {
            name: "a failed pod is deleted to be created again",
            set: v2.clone(),
            pods: vec![ready(0, r2), pod(1, r2, "Failed", false), ready(2, r2)],
            ops: &["delete web-1"],
        },
        Case {
            name: "a pod that lost its identity label gets it back",
            set: v2.clone(),
            pods: vec![
                {
                    let mut p = ready(0, r2);
                    p.metadata.labels.as_mut().unwrap().remove(POD_NAME_LABEL);
                    p
                },
                ready(1, r2),
                ready(2, r2),
            ],
            ops: &["patch web-0"],
        },
        Case {
            name: "ordinals start where asked",
            set: stateful_set("web:2", 2, json!({"ordinals": {"start": 5}})),
            pods: vec![ready(5, r2)],
            ops: &["create web-6"],
        },
        Case {
            name: "pods below the start are condemned",
            set: stateful_set("web:2", 1, json!({"ordinals": {"start": 1}})),
            pods: vec![ready(0, r2), ready(1, r2)],
            ops: &["delete web-0"],
        },
    ];
    for case in cases {
        // The set's history: v1 then v2, the pods' revision before the update current.
        let mut set = case.set.clone();
        let revs = vec![revision(&v1, 1), revision(&set, 2)];
        let current = if case.pods.iter().any(|p| pod_revision(p) == r1) {
            r1.to_string()
        } else {
            name_of(&revs[1])
        };
        set.status = Some(from(json!({"replicas": 0, "currentRevision": current})));
        let f = fixture(&set, case.pods, revs);
        f.run().await;
        assert_eq!(f.pod_ops(), case.ops, "{}", case.name);
    }
}

#[tokio::test]
async fn created_pods_carry_identity_revision_and_owner() {
    let set = stateful_set("web:1", 1, json!({}));
    let rev = revision(&set, 1);
    let mut f = fixture(&set, vec![], vec![rev.clone()]);
    assert_eq!(f.run().await, Action::Done);
    let body = &f.calls("create", PODS)[0].body;
    assert_eq!(body["metadata"]["name"], "web-0");
    assert_eq!(body["metadata"]["labels"][POD_NAME_LABEL], "web-0");
    assert_eq!(body["metadata"]["labels"][POD_INDEX_LABEL], "0");
    assert_eq!(body["metadata"]["labels"][REVISION_HASH], name_of(&rev));
    assert_eq!(body["metadata"]["labels"]["app"], "web");
    assert_eq!(
        body["metadata"]["ownerReferences"][0]["kind"],
        "StatefulSet"
    );
    assert_eq!(body["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(body["spec"]["hostname"], "web-0");
    assert_eq!(body["spec"]["subdomain"], "web-svc");
    assert_eq!(body["spec"]["containers"][0]["image"], "web:1");
    let reasons: Vec<String> = drain(&mut f.events).into_iter().map(|r| r.reason).collect();
    assert_eq!(reasons, vec!["SuccessfulCreate"]);
}

#[tokio::test]
async fn pods_below_the_partition_are_recreated_at_the_current_revision() {
    let v1 = stateful_set("web:1", 3, json!({}));
    let v2 = stateful_set(
        "web:2",
        3,
        json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}}),
    );
    let (rev1, rev2) = (revision(&v1, 1), revision(&v2, 2));
    let mut set = v2.clone();
    set.status = Some(from(
        json!({"replicas": 2, "currentRevision": name_of(&rev1)}),
    ));
    let f = fixture(
        &set,
        vec![ready(1, &name_of(&rev1)), ready(2, &name_of(&rev2))],
        vec![rev1.clone(), rev2],
    );
    f.run().await;
    let body = &f.calls("create", PODS)[0].body;
    assert_eq!(body["metadata"]["name"], "web-0");
    assert_eq!(body["metadata"]["labels"][REVISION_HASH], name_of(&rev1));
    assert_eq!(body["spec"]["containers"][0]["image"], "web:1");
}

#[tokio::test]
async fn status_tracks_the_rollout_and_completes_it() {
    let v1 = stateful_set("web:1", 2, json!({}));
    let v2 = stateful_set("web:2", 2, json!({}));
    let (rev1, rev2) = (revision(&v1, 1), revision(&v2, 2));
    let (r1, r2) = (name_of(&rev1), name_of(&rev2));
    // Mid-rollout: web-1 updated, web-0 not yet.
    let mut set = v2.clone();
    set.status = Some(from(json!({"replicas": 2, "currentRevision": r1})));
    let f = fixture(
        &set,
        vec![ready(0, &r1), ready(1, &r2)],
        vec![rev1.clone(), rev2.clone()],
    );
    f.run().await;
    assert_eq!(
        f.status().unwrap(),
        json!({
            "observedGeneration": 1, "replicas": 2, "readyReplicas": 2, "availableReplicas": 2,
            "currentReplicas": 0, "updatedReplicas": 1, "currentRevision": r1,
            "updateRevision": r2, "collisionCount": 0
        }),
        "web-0 is being deleted, so it no longer counts as current"
    );
    // Every pod updated and ready: the update revision becomes current.
    let f = fixture(&set, vec![ready(0, &r2), ready(1, &r2)], vec![rev1, rev2]);
    f.run().await;
    let status = f.status().unwrap();
    assert_eq!(status["currentRevision"], r2.as_str());
    assert_eq!(status["currentReplicas"], 2);
    assert_eq!(status["updatedReplicas"], 2);
}

#[tokio::test]
async fn status_is_not_written_when_unchanged() {
    let mut set = stateful_set("web:1", 1, json!({}));
    let rev = revision(&set, 1);
    let r = name_of(&rev);
    set.status = Some(from(json!({
        "observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "availableReplicas": 1,
        "currentReplicas": 1, "updatedReplicas": 1, "currentRevision": r,
        "updateRevision": r, "collisionCount": 0
    })));
    let f = fixture(&set, vec![ready(0, &r)], vec![rev]);
    assert_eq!(f.run().await, Action::Done);
    assert!(f.fake.calls().is_empty(), "{:?}", f.fake.short_calls());
}

#[tokio::test]
async fn revisions_are_created_rolled_back_and_limited() {
    // A first sync records the template as revision 1, current and update at once.
    let set = stateful_set("web:1", 0, json!({}));
    let f = fixture(&set, vec![], vec![]);
    f.run().await;
    let created = f.calls("create", REVISIONS);
    assert_eq!(created.len(), 1);
    let expected = revision(&set, 1);
    assert_eq!(created[0].body["metadata"]["name"], name_of(&expected));
    assert_eq!(
        created[0].body["metadata"]["labels"][REVISION_HASH],
        expected.metadata.labels.as_ref().unwrap()[REVISION_HASH].as_str()
    );
    assert_eq!(created[0].body["data"], expected.data.as_ref().unwrap().0);
    assert_eq!(created[0].body["revision"], 1);
    let status = f.status().unwrap();
    assert_eq!(status["currentRevision"], name_of(&expected));
    assert_eq!(status["updateRevision"], name_of(&expected));

    // Back to an older template: its revision is renumbered after the newest, not copied.
    let old = |image: &str, n: i64| revision(&stateful_set(image, 0, json!({})), n);
    let (a, b) = (old("web:1", 1), old("web:2", 2));
    let mut set = stateful_set("web:1", 0, json!({}));
    set.status = Some(from(json!({"replicas": 0, "currentRevision": name_of(&b)})));
    let f = fixture(&set, vec![], vec![a.clone(), b.clone()]);
    f.run().await;
    assert!(f.calls("create", REVISIONS).is_empty());
    let updates = f.calls("update", REVISIONS);
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].path, format!("{REVISIONS}/{}", name_of(&a)));
    assert_eq!(updates[0].body["revision"], 3);

    // Limit 1: of four unused old revisions the three oldest go; one run by a pod stays.
    let mut set = stateful_set("web:9", 1, json!({"revisionHistoryLimit": 1}));
    let olds: Vec<_> = (1..=5)
        .map(|i| old(&format!("web:{i}"), i64::from(i)))
        .collect();
    let current = revision(&set, 6);
    set.status = Some(from(
        json!({"replicas": 1, "currentRevision": name_of(&current)}),
    ));
    let mut revisions = olds.clone();
    revisions.push(current.clone());
    let f = fixture(&set, vec![ready(0, &name_of(&olds[1]))], revisions);
    f.run().await;
    let deleted: Vec<String> = f
        .calls("delete", REVISIONS)
        .iter()
        .map(|c| c.path.clone())
        .collect();
    let expected: Vec<String> = [0, 2, 3]
        .iter()
        .map(|&i| format!("{REVISIONS}/{}", name_of(&olds[i])))
        .collect();
    assert_eq!(deleted, expected);
}

#[tokio::test]
async fn min_ready_seconds_requeues_until_available() {
    let mut set = stateful_set("web:1", 1, json!({"minReadySeconds": 30}));
    let rev = revision(&set, 1);
    set.status = Some(from(
        json!({"replicas": 1, "currentRevision": name_of(&rev)}),
    ));
    let mut p = ready(0, &name_of(&rev));
    // Ready just now: not available for another 30 s.
    p.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_transition_time = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()),
    );
    let f = fixture(&set, vec![p], vec![rev]);
    assert_eq!(f.run().await, Action::RequeueAfter(Duration::from_secs(30)));
    assert_eq!(f.status().unwrap()["availableReplicas"], 0);
}

#[test]
fn ordinals_parse_from_names() {
    let named = |n: &str| Pod {
        metadata: ObjectMeta {
            name: Some(n.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let cases = [
        ("web-0", Some(("web", 0))),
        ("my-web-12", Some(("my-web", 12))),
        ("web-", None),
        ("web", None),
        ("web-x1", None),
        ("web--1", Some(("web-", 1))),
    ];
    for (name, expected) in cases {
        assert_eq!(parent_and_ordinal(&named(name)), expected, "{name}");
    }
}
