use super::*;
use crate::controllers::client::{Call, RecordingClient};
use crate::controllers::events::{drain, Record};
use crate::controllers::Config;
use k8s_openapi::api::batch::v1::JobSpec;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateTerminated, ContainerStatus, PodCondition, PodSpec,
    PodStatus, PodTemplateSpec,
};
use serde_json::Value;

const NOW: &str = "2025-01-01T00:10:00Z";
const STATUS: &str = "/apis/batch/v1/namespaces/ns/jobs/pi/status";

fn ts(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn at(offset_secs: i64) -> Time {
    Time(Timestamp::from_second(ts(NOW).as_second() + offset_secs).unwrap())
}

/// A Job `ns/pi` with completions 4, parallelism 2, as the API defaults it.
fn job(edit: impl FnOnce(&mut JobSpec, &mut JobStatus)) -> Job {
    let mut labels = std::collections::BTreeMap::new();
    labels.insert(CONTROLLER_UID_LABEL.to_string(), "job-uid".to_string());
    let mut spec = JobSpec {
        completions: Some(4),
        parallelism: Some(2),
        backoff_limit: Some(6),
        completion_mode: Some("NonIndexed".into()),
        suspend: Some(false),
        pod_replacement_policy: Some("TerminatingOrFailed".into()),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                restart_policy: Some("Never".into()),
                containers: vec![Container {
                    name: "pi".into(),
                    image: Some("perl".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        },
        ..Default::default()
    };
    let mut status = JobStatus {
        start_time: Some(at(-60)),
        ..Default::default()
    };
    edit(&mut spec, &mut status);
    Job {
        metadata: ObjectMeta {
            namespace: Some("ns".into()),
            name: Some("pi".into()),
            uid: Some("job-uid".into()),
            resource_version: Some("7".into()),
            ..Default::default()
        },
        spec: Some(spec),
        status: Some(status),
    }
}

/// A pod of the Job in `phase`, holding the tracking finalizer unless `released`.
fn pod(name: &str, phase: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            namespace: Some("ns".into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            creation_timestamp: Some(at(-30)),
            finalizers: Some(vec![TRACKING_FINALIZER.into()]),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "Job".into(),
                name: "pi".into(),
                uid: "job-uid".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some("n1".into()),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some(phase.into()),
            container_statuses: (phase == "Failed" || phase == "Succeeded").then(|| {
                vec![ContainerStatus {
                    name: "pi".into(),
                    state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            finished_at: Some(at(0)),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]
            }),
            conditions: (phase == "Running").then(|| {
                vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }),
    }
}

fn released(mut pod: Pod) -> Pod {
    pod.metadata.finalizers = None;
    pod
}

fn indexed(mut pod: Pod, ix: i32) -> Pod {
    pod.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(COMPLETION_INDEX.into(), ix.to_string());
    pod
}

fn deleting(mut pod: Pod) -> Pod {
    pod.metadata.deletion_timestamp = Some(at(-1));
    pod
}

struct Harness {
    fake: RecordingClient,
    ctrl: JobController,
    events: tokio::sync::mpsc::Receiver<Record>,
}

impl Harness {
    fn new(job: Job, pods: Vec<Pod>) -> Harness {
        let fake = RecordingClient::new();
        let (ctx, events) = Context::new(Arc::new(fake.clone()), Config::default());
        ctx.informers.jobs.apply(job);
        for pod in pods {
            ctx.informers.pods.apply(pod);
        }
        Harness {
            fake,
            ctrl: JobController::new(ctx),
            events,
        }
    }

    async fn sync(&self) -> Action {
        self.ctrl.sync("ns/pi", ts(NOW)).await.unwrap()
    }

    /// The calls in short form, with pod names cut to `create`/`delete`/`patch` + path.
    fn calls(&self) -> Vec<String> {
        self.fake.short_calls()
    }

    fn status_writes(&self) -> Vec<Value> {
        self.fake
            .calls()
            .into_iter()
            .filter(|c| c.path == STATUS)
            .map(|c| c.body["status"].clone())
            .collect()
    }

    fn reasons(&mut self) -> Vec<String> {
        drain(&mut self.events)
            .into_iter()
            .map(|r| r.reason)
            .collect()
    }

    /// Feeds the last status written back into the cache, as the watch would.
    fn apply_written_status(&self) {
        let written: Vec<Call> = self
            .fake
            .calls()
            .into_iter()
            .filter(|c| c.path == STATUS)
            .collect();
        let last = written.last().expect("a status write");
        let job: Job = serde_json::from_value(last.body.clone()).unwrap();
        self.ctrl.ctx.informers.jobs.apply(job);
    }
}

fn condition_types(status: &Value) -> Vec<String> {
    status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{}={}",
                c["type"].as_str().unwrap(),
                c["status"].as_str().unwrap()
            )
        })
        .collect()
}

/// One reconcile from a given cache: the calls made (verb and path) and the action.
struct Case {
    name: &'static str,
    job: Job,
    pods: Vec<Pod>,
    calls: Vec<&'static str>,
    action: Action,
    /// Conditions of the last status write (`Type=Status`).
    conditions: Vec<&'static str>,
    events: Vec<&'static str>,
}

async fn check(case: Case) {
    let mut h = Harness::new(case.job, case.pods);
    let action = h.sync().await;
    let calls = h.calls();
    let expected: Vec<String> = case.calls.iter().map(|c| c.to_string()).collect();
    assert_eq!(calls, expected, "{}: calls", case.name);
    assert_eq!(action, case.action, "{}: action", case.name);
    let last = h.status_writes().last().cloned().unwrap_or(Value::Null);
    assert_eq!(
        condition_types(&last),
        case.conditions,
        "{}: conditions",
        case.name
    );
    assert_eq!(h.reasons(), case.events, "{}: events", case.name);
}

#[tokio::test]
async fn reconcile_outcomes() {
    let create = "create /api/v1/namespaces/ns/pods";
    let status = "update /apis/batch/v1/namespaces/ns/jobs/pi/status";
    let cases = vec![
        Case {
            name: "a new job creates parallelism pods",
            job: job(|_, s| s.start_time = None),
            pods: vec![],
            calls: vec![create, create, status],
            action: Action::Done,
            conditions: vec![],
            events: vec!["SuccessfulCreate", "SuccessfulCreate"],
        },
        Case {
            name: "parallelism is capped by the remaining completions",
            job: job(|_, s| s.succeeded = Some(3)),
            pods: vec![],
            calls: vec![create, status],
            action: Action::Done,
            conditions: vec![],
            events: vec!["SuccessfulCreate"],
        },
        Case {
            name: "steady state writes nothing",
            job: job(|_, s| {
                s.active = Some(2);
                s.ready = Some(2);
            }),
            pods: vec![pod("a", "Running"), pod("b", "Running")],
            calls: vec![],
            action: Action::Done,
            conditions: vec![],
            events: vec![],
        },
        Case {
            name: "completions reached: accounted, released, complete",
            job: job(|spec, s| {
                spec.completions = Some(2);
                s.active = Some(2);
            }),
            pods: vec![pod("a", "Succeeded"), pod("b", "Succeeded")],
            calls: vec![
                status,
                "patch /api/v1/namespaces/ns/pods/a",
                "patch /api/v1/namespaces/ns/pods/b",
                status,
            ],
            action: Action::Done,
            conditions: vec!["SuccessCriteriaMet=True", "Complete=True"],
            events: vec!["Completed"],
        },
        Case {
            name: "extra running pods go once completions are reached",
            job: job(|spec, s| {
                spec.completions = Some(1);
                s.succeeded = Some(1);
            }),
            pods: vec![pod("a", "Running")],
            calls: vec![
                "delete /api/v1/namespaces/ns/pods/a",
                status,
                "patch /api/v1/namespaces/ns/pods/a",
                status,
            ],
            action: Action::Done,
            // The deleted pod is still terminating: Complete waits for it.
            conditions: vec!["SuccessCriteriaMet=True"],
            events: vec!["SuccessfulDelete"],
        },
        Case {
            name: "failures beyond backoffLimit fail the job and delete active pods",
            job: job(|spec, s| {
                spec.backoff_limit = Some(1);
                s.failed = Some(1);
            }),
            pods: vec![pod("f", "Failed"), pod("r", "Running")],
            calls: vec![
                "delete /api/v1/namespaces/ns/pods/r",
                status,
                "patch /api/v1/namespaces/ns/pods/f",
                "patch /api/v1/namespaces/ns/pods/r",
                status,
            ],
            action: Action::Done,
            conditions: vec!["FailureTarget=True"],
            events: vec!["SuccessfulDelete"],
        },
        Case {
            name: "the failure target becomes Failed once no pod is left",
            job: job(|spec, s| {
                spec.backoff_limit = Some(1);
                s.failed = Some(3);
                s.conditions = Some(vec![new_condition(
                    "FailureTarget",
                    "True",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                    ts(NOW),
                )]);
            }),
            pods: vec![released(pod("f", "Failed"))],
            calls: vec![status],
            action: Action::Done,
            conditions: vec!["FailureTarget=True", "Failed=True"],
            events: vec!["BackoffLimitExceeded"],
        },
        Case {
            name: "past the active deadline",
            job: job(|spec, _| spec.active_deadline_seconds = Some(60)),
            pods: vec![pod("a", "Running"), pod("b", "Running")],
            calls: vec![
                "delete /api/v1/namespaces/ns/pods/a",
                "delete /api/v1/namespaces/ns/pods/b",
                status,
                "patch /api/v1/namespaces/ns/pods/a",
                "patch /api/v1/namespaces/ns/pods/b",
                status,
            ],
            action: Action::Done,
            conditions: vec!["FailureTarget=True"],
            events: vec!["SuccessfulDelete", "SuccessfulDelete"],
        },
        Case {
            name: "before the active deadline: requeue at it",
            job: job(|spec, s| {
                spec.active_deadline_seconds = Some(100);
                s.active = Some(2);
                s.ready = Some(2);
            }),
            pods: vec![pod("a", "Running"), pod("b", "Running")],
            calls: vec![],
            action: Action::RequeueAfter(Duration::from_secs(40)),
            conditions: vec![],
            events: vec![],
        },
        Case {
            name: "a failure delays the replacement pod by 10 s",
            job: job(|spec, s| {
                spec.parallelism = Some(1);
                s.active = Some(1);
            }),
            pods: vec![pod("f", "Failed")],
            calls: vec![status, "patch /api/v1/namespaces/ns/pods/f", status],
            action: Action::RequeueAfter(Duration::from_secs(10)),
            conditions: vec![],
            events: vec![],
        },
        Case {
            name: "suspend deletes active pods and resets the start time",
            job: job(|spec, _| spec.suspend = Some(true)),
            pods: vec![pod("a", "Running")],
            calls: vec!["delete /api/v1/namespaces/ns/pods/a", status],
            action: Action::Done,
            conditions: vec!["Suspended=True"],
            events: vec!["SuccessfulDelete", "Suspended"],
        },
        Case {
            name: "resume",
            job: job(|_, s| {
                s.start_time = None;
                s.conditions = Some(vec![new_condition(
                    "Suspended",
                    "True",
                    "JobSuspended",
                    "Job suspended",
                    ts(NOW),
                )]);
            }),
            pods: vec![],
            calls: vec![create, create, status],
            action: Action::Done,
            conditions: vec!["Suspended=False"],
            events: vec!["SuccessfulCreate", "SuccessfulCreate", "Resumed"],
        },
        Case {
            name: "work queue: after a success, no new pods; done when all finished",
            job: job(|spec, s| {
                spec.completions = None;
                s.succeeded = Some(1);
                s.active = Some(1);
                s.ready = Some(1);
            }),
            pods: vec![released(pod("a", "Succeeded")), pod("b", "Running")],
            calls: vec![],
            action: Action::Done,
            conditions: vec![],
            events: vec![],
        },
        Case {
            name: "work queue: complete once the last pod finished",
            job: job(|spec, s| {
                spec.completions = None;
                s.succeeded = Some(1);
                s.active = Some(1);
            }),
            pods: vec![released(pod("a", "Succeeded")), pod("b", "Succeeded")],
            calls: vec![status, "patch /api/v1/namespaces/ns/pods/b", status],
            action: Action::Done,
            conditions: vec!["SuccessCriteriaMet=True", "Complete=True"],
            events: vec!["Completed"],
        },
        Case {
            name: "a deleted pod counts as failed and is replaced",
            job: job(|spec, s| {
                spec.parallelism = Some(1);
                s.active = Some(1);
            }),
            pods: vec![deleting(pod("a", "Running"))],
            calls: vec![status, "patch /api/v1/namespaces/ns/pods/a", status],
            action: Action::RequeueAfter(Duration::from_secs(9)),
            conditions: vec![],
            events: vec![],
        },
        Case {
            name: "a Job managed elsewhere is left alone",
            job: job(|spec, _| spec.managed_by = Some("example.com/other".into())),
            pods: vec![],
            calls: vec![],
            action: Action::Done,
            conditions: vec![],
            events: vec![],
        },
    ];
    for case in cases {
        check(case).await;
    }
}

#[tokio::test]
async fn created_pods_carry_labels_owner_and_finalizer() {
    let h = Harness::new(job(|_, s| s.start_time = None), vec![]);
    h.sync().await;
    let calls = h.fake.calls();
    let body = &calls[0].body;
    assert_eq!(body["metadata"]["generateName"], "pi-");
    assert_eq!(body["metadata"]["finalizers"][0], TRACKING_FINALIZER);
    let labels = &body["metadata"]["labels"];
    assert_eq!(labels[JOB_NAME_LABEL], "pi");
    assert_eq!(labels["job-name"], "pi");
    assert_eq!(labels[CONTROLLER_UID_LABEL], "job-uid");
    assert_eq!(labels["controller-uid"], "job-uid");
    let owner = &body["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Job");
    assert_eq!(owner["controller"], true);
    assert_eq!(owner["blockOwnerDeletion"], true);
    assert_eq!(body["spec"]["containers"][0]["image"], "perl");
    let status = &h.status_writes()[0];
    assert_eq!(status["active"], 2);
    assert_eq!(status["startTime"], "2025-01-01T00:10:00Z");
}

#[tokio::test]
async fn expectations_hold_back_a_second_round_until_the_cache_catches_up() {
    let h = Harness::new(job(|_, s| s.start_time = None), vec![]);
    h.sync().await;
    assert_eq!(
        h.calls().iter().filter(|c| c.starts_with("create")).count(),
        2
    );
    h.fake.clear();
    // The cache has not seen the new pods: nothing is created again.
    h.sync().await;
    assert!(
        h.calls().iter().all(|c| !c.starts_with("create")),
        "{:?}",
        h.calls()
    );
    // The pods show up: expectations are met, and the count is right.
    for name in ["pi-00001", "pi-00002"] {
        h.ctrl.ctx.informers.pods.apply(pod(name, "Pending"));
        let change = Change::Applied {
            old: None,
            new: &pod(name, "Pending"),
        };
        h.ctrl.observe_pod(&change);
    }
    h.fake.clear();
    h.sync().await;
    assert!(
        h.calls().iter().all(|c| !c.starts_with("create")),
        "{:?}",
        h.calls()
    );
}

#[tokio::test]
async fn a_result_is_written_before_the_finalizer_goes_and_counted_once() {
    let h = Harness::new(job(|_, s| s.active = Some(1)), vec![pod("a", "Succeeded")]);
    h.sync().await;
    let calls = h.fake.calls();
    let order: Vec<&str> = calls
        .iter()
        .filter(|c| c.verb != "create")
        .map(|c| c.verb)
        .collect();
    assert_eq!(order, vec!["update", "patch", "update"]);
    let writes = h.status_writes();
    assert_eq!(
        writes[0]["uncountedTerminatedPods"]["succeeded"][0],
        "uid-a"
    );
    assert_eq!(
        writes[0]["succeeded"], 0,
        "not counted before the finalizer goes"
    );
    let patch = calls.iter().find(|c| c.verb == "patch").unwrap();
    assert_eq!(
        patch.body["metadata"]["$deleteFromPrimitiveList/finalizers"][0],
        TRACKING_FINALIZER
    );
    assert_eq!(writes[1]["succeeded"], 1);
    assert_eq!(
        writes[1]["uncountedTerminatedPods"]["succeeded"],
        Value::Null
    );

    // The job's new status arrives, but the pod cache still shows the finalizer: not counted
    // again.
    h.apply_written_status();
    h.fake.clear();
    h.sync().await;
    for write in h.status_writes() {
        assert_eq!(write["succeeded"], 1, "{write}");
        assert_eq!(write["uncountedTerminatedPods"]["succeeded"], Value::Null);
    }
    assert!(
        h.calls().iter().all(|c| !c.starts_with("patch")),
        "{:?}",
        h.calls()
    );
}

#[tokio::test]
async fn an_uncounted_pod_whose_finalizer_is_gone_is_counted() {
    // A previous sync wrote the UID and removed the finalizer, then lost its second write.
    let h = Harness::new(
        job(|_, s| {
            s.active = Some(1);
            s.ready = Some(1);
            s.uncounted_terminated_pods = Some(UncountedTerminatedPods {
                failed: Some(vec!["uid-f".into()]),
                succeeded: None,
            });
        }),
        vec![released(pod("f", "Failed")), pod("a", "Running")],
    );
    h.sync().await;
    let writes = h.status_writes();
    assert_eq!(writes.len(), 1, "{:?}", h.calls());
    assert_eq!(writes[0]["failed"], 1);
    assert_eq!(writes[0]["uncountedTerminatedPods"]["failed"], Value::Null);
}

#[tokio::test]
async fn orphaned_pods_of_a_deleted_or_finished_job_lose_the_finalizer() {
    let fake = RecordingClient::new();
    let (ctx, _events) = Context::new(Arc::new(fake.clone()), Config::default());
    ctx.informers.pods.apply(pod("a", "Running"));
    ctx.informers.pods.apply(released(pod("b", "Succeeded")));
    let ctrl = JobController::new(ctx);
    ctrl.sync("ns/pi", ts(NOW)).await.unwrap();
    assert_eq!(
        fake.short_calls(),
        vec!["patch /api/v1/namespaces/ns/pods/a"]
    );

    fake.clear();
    let finished = job(|_, s| {
        s.conditions = Some(vec![new_condition(
            "Complete",
            "True",
            "CompletionsReached",
            "",
            ts(NOW),
        )]);
    });
    ctrl.ctx.informers.jobs.apply(finished);
    ctrl.sync("ns/pi", ts(NOW)).await.unwrap();
    assert_eq!(
        fake.short_calls(),
        vec!["patch /api/v1/namespaces/ns/pods/a"]
    );
}

#[tokio::test]
async fn indexed_jobs_create_missing_indexes_and_track_completed_ones() {
    let h = Harness::new(
        job(|spec, s| {
            spec.completion_mode = Some("Indexed".into());
            spec.completions = Some(4);
            spec.parallelism = Some(3);
            s.completed_indexes = Some("0".into());
            s.succeeded = Some(1);
            s.active = Some(1);
        }),
        vec![
            indexed(released(pod("p0", "Succeeded")), 0),
            indexed(pod("p1", "Running"), 1),
            indexed(pod("p2", "Succeeded"), 2),
        ],
    );
    h.sync().await;
    let calls = h.fake.calls();
    let creates: Vec<&Call> = calls.iter().filter(|c| c.verb == "create").collect();
    assert_eq!(creates.len(), 1, "{:?}", h.calls());
    let meta = &creates[0].body["metadata"];
    assert_eq!(meta["annotations"][COMPLETION_INDEX], "3");
    assert_eq!(meta["labels"][COMPLETION_INDEX], "3");
    assert_eq!(meta["generateName"], "pi-3-");
    assert_eq!(creates[0].body["spec"]["hostname"], "pi-3");
    assert_eq!(
        creates[0].body["spec"]["containers"][0]["env"][0]["name"],
        "JOB_COMPLETION_INDEX"
    );
    let writes = h.status_writes();
    assert_eq!(writes[0]["completedIndexes"], "0,2");
    assert_eq!(writes[0]["succeeded"], 2);
    assert_eq!(writes[0]["active"], 2);
    assert!(h
        .calls()
        .contains(&"patch /api/v1/namespaces/ns/pods/p2".to_string()));
}

#[tokio::test]
async fn indexed_duplicates_are_deleted() {
    let h = Harness::new(
        job(|spec, s| {
            spec.completion_mode = Some("Indexed".into());
            spec.completions = Some(2);
            spec.parallelism = Some(2);
            s.active = Some(3);
        }),
        vec![
            indexed(pod("a", "Running"), 0),
            indexed(pod("b", "Pending"), 0),
            indexed(pod("c", "Running"), 1),
        ],
    );
    h.sync().await;
    assert_eq!(h.calls()[0], "delete /api/v1/namespaces/ns/pods/b");
}

#[test]
fn indexes_format_and_parse() {
    let cases: &[(&[i32], &str)] = &[
        (&[], ""),
        (&[0], "0"),
        (&[0, 1], "0,1"),
        (&[1, 3, 4, 5, 7], "1,3-5,7"),
        (&[0, 1, 2, 3, 9, 10], "0-3,9,10"),
    ];
    for (indexes, text) in cases {
        let set: BTreeSet<i32> = indexes.iter().copied().collect();
        assert_eq!(format_indexes(&set), *text);
        assert_eq!(parse_indexes(Some(text)), set, "{text}");
    }
}

#[test]
fn active_targets_and_backoff_delays() {
    // (parallelism, completions, succeeded, active) → wanted active
    let cases = [
        ((2, Some(4), 0, 0), 2),
        ((2, Some(4), 3, 0), 1),
        ((2, Some(4), 4, 1), 0),
        ((3, None, 0, 0), 3),
        ((3, None, 1, 2), 2),
        ((0, Some(4), 0, 0), 0),
    ];
    for ((p, c, s, a), want) in cases {
        assert_eq!(want_active(p, c, s, a), want, "{p} {c:?} {s} {a}");
    }
    assert_eq!(backoff_delay(1), Duration::from_secs(10));
    assert_eq!(backoff_delay(3), Duration::from_secs(40));
    assert_eq!(backoff_delay(7), Duration::from_secs(360));
    assert_eq!(backoff_delay(100), Duration::from_secs(360));
    let record = BackoffRecord {
        failures: 2,
        last_failure_ms: 1_000,
    };
    assert_eq!(record.remaining(6_000), Duration::from_secs(15));
    assert_eq!(record.remaining(30_000), Duration::ZERO);
    assert_eq!(BackoffRecord::default().remaining(0), Duration::ZERO);
}

#[tokio::test]
async fn after_deletion_the_last_seen_uid_finds_the_pods() {
    let h = Harness::new(
        job(|_, s| {
            s.active = Some(1);
            s.ready = Some(1);
        }),
        vec![pod("a", "Running")],
    );
    h.sync().await;
    // The Job is deleted; a pod of another Job that had the same name must be left alone.
    h.ctrl.ctx.informers.jobs.delete(&job(|_, _| {}));
    let mut other = pod("x", "Running");
    if let Some(owner) = other.metadata.owner_references.as_mut() {
        owner[0].uid = "older-uid".into();
    }
    h.ctrl.ctx.informers.pods.apply(other);
    h.fake.clear();
    h.sync().await;
    assert_eq!(h.calls(), vec!["patch /api/v1/namespaces/ns/pods/a"]);
}
