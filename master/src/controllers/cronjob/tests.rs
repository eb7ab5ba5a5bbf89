use super::*;
use crate::controllers::client::RecordingClient;
use crate::controllers::events::{drain, Record};
use crate::controllers::Config;
use k8s_openapi::api::batch::v1::{CronJobSpec, JobCondition, JobSpec, JobStatus, JobTemplateSpec};
use serde_json::Value;

const CRON_STATUS: &str = "/apis/batch/v1/namespaces/ns/cronjobs/cron/status";
const JOBS: &str = "/apis/batch/v1/namespaces/ns/jobs";

fn ts(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn t(text: &str) -> Time {
    Time(ts(text))
}

/// `ns/cron`, every 5 minutes, created at midnight.
fn cron(edit: impl FnOnce(&mut CronJobSpec, &mut CronJobStatus)) -> CronJob {
    let mut labels = BTreeMap::new();
    labels.insert("app".to_string(), "report".to_string());
    let mut spec = CronJobSpec {
        schedule: "*/5 * * * *".into(),
        concurrency_policy: Some("Allow".into()),
        suspend: Some(false),
        successful_jobs_history_limit: Some(3),
        failed_jobs_history_limit: Some(1),
        job_template: JobTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels),
                ..Default::default()
            }),
            spec: Some(JobSpec {
                backoff_limit: Some(2),
                ..Default::default()
            }),
        },
        ..Default::default()
    };
    let mut status = CronJobStatus::default();
    edit(&mut spec, &mut status);
    CronJob {
        metadata: ObjectMeta {
            namespace: Some("ns".into()),
            name: Some("cron".into()),
            uid: Some("cj-uid".into()),
            resource_version: Some("3".into()),
            creation_timestamp: Some(t("2025-01-01T00:00:00Z")),
            ..Default::default()
        },
        spec: Some(spec),
        status: Some(status),
    }
}

/// A Job of the CronJob, started at `start`, finished as `outcome` (`Complete`/`Failed`) or
/// running.
fn job(name: &str, start: &str, outcome: Option<&str>) -> Job {
    let conditions = outcome.map(|type_| {
        vec![JobCondition {
            type_: type_.into(),
            status: "True".into(),
            ..Default::default()
        }]
    });
    Job {
        metadata: ObjectMeta {
            namespace: Some("ns".into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "CronJob".into(),
                name: "cron".into(),
                uid: "cj-uid".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: None,
        status: Some(JobStatus {
            start_time: Some(t(start)),
            completion_time: (outcome == Some("Complete")).then(|| t(start)),
            conditions,
            ..Default::default()
        }),
    }
}

fn reference(job: &Job) -> ObjectReference {
    object_reference(job)
}

/// The name of the Job for the schedule time `at`.
fn name_at(at: &str) -> String {
    job_name("cron", ts(at).as_second())
}

struct Harness {
    fake: RecordingClient,
    ctrl: CronJobController,
    events: tokio::sync::mpsc::Receiver<Record>,
}

impl Harness {
    fn new(cj: CronJob, jobs: Vec<Job>) -> Harness {
        let fake = RecordingClient::new();
        let (ctx, events) = Context::new(Arc::new(fake.clone()), Config::default());
        ctx.informers.cron_jobs.apply(cj);
        for job in jobs {
            ctx.informers.jobs.apply(job);
        }
        Harness {
            fake,
            ctrl: CronJobController { ctx },
            events,
        }
    }

    async fn sync(&self, now: &str) -> Action {
        self.ctrl.sync("ns/cron", ts(now)).await.unwrap()
    }

    fn reasons(&mut self) -> Vec<String> {
        drain(&mut self.events)
            .into_iter()
            .map(|r| r.reason)
            .collect()
    }

    fn last_status(&self) -> Value {
        self.fake
            .calls()
            .into_iter()
            .rfind(|c| c.path == CRON_STATUS)
            .map(|c| c.body["status"].clone())
            .unwrap_or(Value::Null)
    }
}

struct Case {
    name: &'static str,
    cron: CronJob,
    jobs: Vec<Job>,
    now: &'static str,
    calls: Vec<String>,
    events: Vec<&'static str>,
    action: Action,
}

fn requeue(secs: u64) -> Action {
    Action::RequeueAfter(Duration::from_secs(secs) + NEXT_SCHEDULE_DELTA)
}

async fn check(case: Case) {
    let mut h = Harness::new(case.cron, case.jobs);
    let action = h.sync(case.now).await;
    assert_eq!(h.fake.short_calls(), case.calls, "{}: calls", case.name);
    assert_eq!(h.reasons(), case.events, "{}: events", case.name);
    assert_eq!(action, case.action, "{}: action", case.name);
}

#[tokio::test]
async fn reconcile_outcomes() {
    let create = format!("create {JOBS}");
    let status = format!("update {CRON_STATUS}");
    let delete = |name: &str| format!("delete {JOBS}/{name}");
    let running = job(
        &name_at("2025-01-01T00:05:00Z"),
        "2025-01-01T00:05:00Z",
        None,
    );
    let cases = vec![
        Case {
            name: "nothing due yet",
            cron: cron(|_, _| {}),
            jobs: vec![],
            now: "2025-01-01T00:04:00Z",
            calls: vec![],
            events: vec![],
            action: requeue(60),
        },
        Case {
            name: "due: one Job",
            cron: cron(|_, _| {}),
            jobs: vec![],
            now: "2025-01-01T00:05:30Z",
            calls: vec![create.clone(), status.clone()],
            events: vec!["SuccessfulCreate"],
            action: requeue(270),
        },
        Case {
            name: "already run for this time",
            cron: cron(|_, s| {
                s.last_schedule_time = Some(t("2025-01-01T00:05:00Z"));
                s.active = Some(vec![reference(&running)]);
            }),
            jobs: vec![running.clone()],
            now: "2025-01-01T00:06:00Z",
            calls: vec![],
            events: vec![],
            action: requeue(240),
        },
        Case {
            name: "a stale CronJob whose Job the cache already has: no second Job",
            cron: cron(|_, _| {}),
            jobs: vec![running.clone()],
            now: "2025-01-01T00:06:00Z",
            // The Job joins `active`; no create.
            calls: vec![status.clone()],
            events: vec![],
            action: requeue(240),
        },
        Case {
            name: "Forbid skips while a Job runs",
            cron: cron(|spec, s| {
                spec.concurrency_policy = Some("Forbid".into());
                s.last_schedule_time = Some(t("2025-01-01T00:05:00Z"));
                s.active = Some(vec![reference(&running)]);
            }),
            jobs: vec![running.clone()],
            now: "2025-01-01T00:10:00Z",
            calls: vec![],
            events: vec!["JobAlreadyActive"],
            action: requeue(300),
        },
        Case {
            name: "Allow runs alongside",
            cron: cron(|_, s| {
                s.last_schedule_time = Some(t("2025-01-01T00:05:00Z"));
                s.active = Some(vec![reference(&running)]);
            }),
            jobs: vec![running.clone()],
            now: "2025-01-01T00:10:00Z",
            calls: vec![create.clone(), status.clone()],
            events: vec!["SuccessfulCreate"],
            action: requeue(300),
        },
        Case {
            name: "Replace deletes the running Job first",
            cron: cron(|spec, s| {
                spec.concurrency_policy = Some("Replace".into());
                s.last_schedule_time = Some(t("2025-01-01T00:05:00Z"));
                s.active = Some(vec![reference(&running)]);
            }),
            jobs: vec![running.clone()],
            now: "2025-01-01T00:10:00Z",
            calls: vec![
                delete(&name_at("2025-01-01T00:05:00Z")),
                create.clone(),
                status.clone(),
            ],
            events: vec!["SuccessfulDelete", "SuccessfulCreate"],
            action: requeue(300),
        },
        Case {
            name: "suspended",
            cron: cron(|spec, _| spec.suspend = Some(true)),
            jobs: vec![],
            now: "2025-01-01T00:10:00Z",
            calls: vec![],
            events: vec![],
            action: Action::Done,
        },
        Case {
            name: "missed beyond startingDeadlineSeconds: nothing runs",
            cron: cron(|spec, _| spec.starting_deadline_seconds = Some(60)),
            jobs: vec![],
            now: "2025-01-01T00:07:00Z",
            calls: vec![],
            events: vec![],
            action: requeue(180),
        },
        Case {
            name: "within startingDeadlineSeconds",
            cron: cron(|spec, _| spec.starting_deadline_seconds = Some(200)),
            jobs: vec![],
            now: "2025-01-01T00:07:00Z",
            calls: vec![create.clone(), status.clone()],
            events: vec!["SuccessfulCreate"],
            action: requeue(180),
        },
        Case {
            name: "an unknown time zone",
            cron: cron(|spec, _| spec.time_zone = Some("Europe/Berlin".into())),
            jobs: vec![],
            now: "2025-01-01T00:10:00Z",
            calls: vec![],
            events: vec!["UnknownTimeZone"],
            action: Action::Done,
        },
        Case {
            name: "Etc/UTC is UTC",
            cron: cron(|spec, _| spec.time_zone = Some("Etc/UTC".into())),
            jobs: vec![],
            now: "2025-01-01T00:05:00Z",
            calls: vec![create.clone(), status.clone()],
            events: vec!["SuccessfulCreate"],
            action: requeue(300),
        },
        Case {
            name: "many missed times: a warning, and only the latest runs",
            cron: cron(|spec, _| spec.schedule = "* * * * *".into()),
            jobs: vec![],
            now: "2025-01-02T00:00:30Z",
            calls: vec![create.clone(), status.clone()],
            events: vec!["TooManyMissedTimes", "SuccessfulCreate"],
            action: requeue(30),
        },
        Case {
            name: "a finished active Job leaves the list",
            cron: cron(|_, s| {
                s.last_schedule_time = Some(t("2025-01-01T00:05:00Z"));
                s.active = Some(vec![reference(&running)]);
            }),
            jobs: vec![job(
                &name_at("2025-01-01T00:05:00Z"),
                "2025-01-01T00:05:00Z",
                Some("Complete"),
            )],
            now: "2025-01-01T00:06:00Z",
            calls: vec![status.clone()],
            events: vec!["SawCompletedJob"],
            action: requeue(240),
        },
        Case {
            name: "an active Job gone from the cache and the API",
            cron: cron(|_, s| {
                s.last_schedule_time = Some(t("2025-01-01T00:05:00Z"));
                s.active = Some(vec![reference(&running)]);
            }),
            jobs: vec![],
            now: "2025-01-01T00:06:00Z",
            calls: vec![
                format!("get {JOBS}/{}", name_at("2025-01-01T00:05:00Z")),
                status.clone(),
            ],
            events: vec!["MissingJob"],
            action: requeue(240),
        },
        Case {
            name: "an unparseable schedule",
            cron: cron(|spec, _| spec.schedule = "61 * * * *".into()),
            jobs: vec![],
            now: "2025-01-01T00:10:00Z",
            calls: vec![],
            events: vec!["UnparseableSchedule"],
            action: Action::Done,
        },
    ];
    for case in cases {
        check(case).await;
    }
}

#[tokio::test]
async fn the_created_job_comes_from_the_template() {
    let h = Harness::new(cron(|_, _| {}), vec![]);
    h.sync("2025-01-01T00:05:30Z").await;
    let calls = h.fake.calls();
    let body = &calls[0].body;
    let minutes = ts("2025-01-01T00:05:00Z").as_second() / 60;
    assert_eq!(body["metadata"]["name"], format!("cron-{minutes}"));
    assert_eq!(
        body["metadata"]["annotations"][SCHEDULED_TIMESTAMP],
        "2025-01-01T00:05:00Z"
    );
    assert_eq!(body["metadata"]["labels"]["app"], "report");
    let owner = &body["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "CronJob");
    assert_eq!(owner["uid"], "cj-uid");
    assert_eq!(owner["controller"], true);
    assert_eq!(body["spec"]["backoffLimit"], 2);
    let status = h.last_status();
    assert_eq!(status["lastScheduleTime"], "2025-01-01T00:05:00Z");
    assert_eq!(status["active"][0]["name"], format!("cron-{minutes}"));
    assert_eq!(status["active"][0]["kind"], "Job");
}

#[tokio::test]
async fn each_schedule_time_fires_exactly_once() {
    let h = Harness::new(cron(|_, _| {}), vec![]);
    h.sync("2025-01-01T00:05:30Z").await;
    // The status write is lost and the Job not yet in the cache: the retry hits AlreadyExists
    // and records the schedule time instead of failing or creating twice.
    h.fake.clear();
    h.fake.fail_next(JOBS, 409, "AlreadyExists");
    h.sync("2025-01-01T00:05:40Z").await;
    assert_eq!(
        h.fake.short_calls(),
        vec![format!("create {JOBS}"), format!("update {CRON_STATUS}")]
    );
    assert_eq!(h.last_status()["lastScheduleTime"], "2025-01-01T00:05:00Z");
    // Once the caches catch up, nothing more happens until the next time.
    let written: CronJob = serde_json::from_value(
        h.fake
            .calls()
            .into_iter()
            .rfind(|c| c.path == CRON_STATUS)
            .unwrap()
            .body,
    )
    .unwrap();
    h.ctrl.ctx.informers.cron_jobs.apply(written);
    h.ctrl.ctx.informers.jobs.apply(job(
        &name_at("2025-01-01T00:05:00Z"),
        "2025-01-01T00:05:00Z",
        None,
    ));
    h.fake.clear();
    h.sync("2025-01-01T00:09:59Z").await;
    let creates = h.fake.short_calls();
    assert!(
        creates.iter().all(|c| !c.starts_with("create")),
        "{creates:?}"
    );
    h.sync("2025-01-01T00:10:00Z").await;
    let creates = h.fake.short_calls();
    assert_eq!(
        creates.iter().filter(|c| c.starts_with("create")).count(),
        1,
        "{creates:?}"
    );
}

#[tokio::test]
async fn history_limits_delete_the_oldest_finished_jobs() {
    let jobs = vec![
        job("c1", "2025-01-01T00:01:00Z", Some("Complete")),
        job("c2", "2025-01-01T00:02:00Z", Some("Complete")),
        job("c3", "2025-01-01T00:03:00Z", Some("Complete")),
        job("c4", "2025-01-01T00:04:00Z", Some("Complete")),
        job("c5", "2025-01-01T00:00:30Z", Some("Complete")),
        job("f1", "2025-01-01T00:01:00Z", Some("Failed")),
        job("f2", "2025-01-01T00:02:00Z", Some("Failed")),
        job("r1", "2025-01-01T00:00:00Z", None),
    ];
    let mut h = Harness::new(
        cron(|_, s| s.last_schedule_time = Some(t("2025-01-01T00:05:00Z"))),
        jobs,
    );
    h.sync("2025-01-01T00:06:00Z").await;
    let deletes: Vec<String> = h
        .fake
        .calls()
        .into_iter()
        .filter(|c| c.verb == "delete")
        .map(|c| {
            assert_eq!(c.body["propagationPolicy"], "Background");
            c.path.rsplit('/').next().unwrap().to_string()
        })
        .collect();
    assert_eq!(deletes, vec!["c5", "c1", "f1"]);
    let reasons = h.reasons();
    assert_eq!(
        reasons.iter().filter(|r| *r == "SuccessfulDelete").count(),
        3
    );
    // The running Job r1 joined `active`; the newest complete one set lastSuccessfulTime.
    let status = h.last_status();
    assert_eq!(status["active"][0]["name"], "r1");
    assert_eq!(status["lastSuccessfulTime"], "2025-01-01T00:04:00Z");
}

#[test]
fn most_recent_times() {
    let s = |expr: &str| Schedule::parse(expr).unwrap();
    let sec = |text: &str| ts(text).as_second();
    // (schedule, earliest, now) → (most recent, missed)
    let cases: &[(&str, &str, &str, Option<&str>, Missed)] = &[
        (
            "*/5 * * * *",
            "2025-01-01T00:00:00Z",
            "2025-01-01T00:04:59Z",
            None,
            Missed::None,
        ),
        (
            "*/5 * * * *",
            "2025-01-01T00:00:00Z",
            "2025-01-01T00:05:00Z",
            Some("2025-01-01T00:05:00Z"),
            Missed::Few,
        ),
        (
            "*/5 * * * *",
            "2025-01-01T00:00:00Z",
            "2025-01-01T00:17:00Z",
            Some("2025-01-01T00:15:00Z"),
            Missed::Few,
        ),
        (
            "30 6-16/4 * * 1-5",
            "2025-01-03T00:00:00Z",
            "2025-01-06T12:00:00Z",
            Some("2025-01-06T10:30:00Z"),
            Missed::Few,
        ),
        // Friday 14:30 is the last before a weekend the estimate jumps over.
        (
            "30 6-16/4 * * 1-5",
            "2025-01-03T00:00:00Z",
            "2025-01-05T12:00:00Z",
            Some("2025-01-03T14:30:00Z"),
            Missed::Few,
        ),
        (
            "0 * * * *",
            "2025-01-01T00:00:00Z",
            "2025-01-10T00:30:00Z",
            Some("2025-01-10T00:00:00Z"),
            Missed::Many(216),
        ),
    ];
    for (expr, earliest, now, want, missed) in cases {
        let got = most_recent_schedule_time(&s(expr), sec(earliest), sec(now)).unwrap();
        assert_eq!(got, (want.map(sec), *missed), "{expr} {earliest} {now}");
    }
}
