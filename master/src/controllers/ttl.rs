//! The TTL-after-finished controller (kube-controller-manager's `ttl-after-finished`): deletes a
//! finished Job (`Complete` or `Failed`) once `spec.ttlSecondsAfterFinished` has passed since it
//! finished, with `propagationPolicy: Foreground` and a UID precondition; until then it requeues
//! the Job for the moment it expires.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::jiff::Timestamp;
use tokio::task::JoinSet;

use super::client::delete_uid;
use super::job::finished_condition;
use super::runtime::{self, key_of, split_key, Change};
use super::{Action, Context, Error, Reconciler, WorkQueue};

/// Registers the loop: Jobs with a TTL that are finished (or change).
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) {
    let queue = WorkQueue::new();
    let q = queue.clone();
    ctx.informers
        .jobs
        .on_change(move |change: &Change<'_, Job>| {
            if let Change::Applied { new, .. } = change {
                if needs_cleanup(new) {
                    q.add(key_of(&new.metadata));
                }
            }
        });
    let controller = Arc::new(TtlController { ctx: ctx.clone() });
    tasks.spawn(runtime::run(controller, queue, ctx.config.concurrent_syncs));
}

pub struct TtlController {
    pub ctx: Context,
}

#[async_trait::async_trait]
impl Reconciler for TtlController {
    fn name(&self) -> &'static str {
        "ttl-after-finished"
    }

    async fn reconcile(&self, key: &str) -> Result<Action, Error> {
        self.sync(key, Timestamp::now()).await
    }
}

/// A finished, not yet deleted Job with a TTL.
fn needs_cleanup(job: &Job) -> bool {
    job.metadata.deletion_timestamp.is_none()
        && job
            .spec
            .as_ref()
            .is_some_and(|s| s.ttl_seconds_after_finished.is_some())
        && finished_condition(job).is_some()
}

/// When the Job's TTL runs out (ms since the epoch): from `completionTime` for a complete Job,
/// else from the finishing condition's transition time.
pub fn expiry_ms(job: &Job) -> Option<i64> {
    if !needs_cleanup(job) {
        return None;
    }
    let ttl = job.spec.as_ref()?.ttl_seconds_after_finished?;
    let condition = finished_condition(job)?;
    let completion = job.status.as_ref().and_then(|s| s.completion_time.as_ref());
    let finished = match completion {
        Some(t) if condition.type_ == "Complete" => t,
        _ => condition.last_transition_time.as_ref()?,
    };
    Some(finished.0.as_millisecond() + i64::from(ttl) * 1000)
}

impl TtlController {
    /// One reconcile of the Job under `key` at the time `now`.
    pub async fn sync(&self, key: &str, now: Timestamp) -> Result<Action, Error> {
        let Some(job) = self.ctx.informers.jobs.get(key) else {
            return Ok(Action::Done);
        };
        let Some(expiry) = expiry_ms(&job) else {
            return Ok(Action::Done);
        };
        if let Some(wait) = remaining(expiry, now) {
            return Ok(Action::RequeueAfter(wait));
        }
        // The cache may be stale (the TTL just raised): check a fresh copy before deleting.
        let (namespace, name) = split_key(key);
        let fresh = match self.ctx.api.get::<Job>(namespace, name).await {
            Ok(job) => job,
            Err(e) if e.is_not_found() => return Ok(Action::Done),
            Err(e) => return Err(e.into()),
        };
        let Some(expiry) = expiry_ms(&fresh) else {
            return Ok(Action::Done);
        };
        if let Some(wait) = remaining(expiry, now) {
            return Ok(Action::RequeueAfter(wait));
        }
        let uid = fresh.metadata.uid.as_deref().unwrap_or_default();
        tracing::info!(
            job = key,
            "deleting the Job: its TTL after finishing has passed"
        );
        self.ctx
            .api
            .delete::<Job>(namespace, name, &delete_uid(uid, Some("Foreground")))
            .await?;
        Ok(Action::Done)
    }
}

fn remaining(expiry_ms: i64, now: Timestamp) -> Option<Duration> {
    let left = expiry_ms - now.as_millisecond();
    (left > 0).then(|| Duration::from_millis(u64::try_from(left).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::client::RecordingClient;
    use crate::controllers::Config;
    use k8s_openapi::api::batch::v1::{JobCondition, JobSpec, JobStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn job(ttl: Option<i32>, finished: Option<(&str, &str)>) -> Job {
        let conditions = finished.map(|(type_, at)| {
            vec![JobCondition {
                type_: type_.into(),
                status: "True".into(),
                last_transition_time: Some(Time(ts(at))),
                ..Default::default()
            }]
        });
        Job {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                name: Some("pi".into()),
                uid: Some("job-uid".into()),
                ..Default::default()
            },
            spec: Some(JobSpec {
                ttl_seconds_after_finished: ttl,
                ..Default::default()
            }),
            status: Some(JobStatus {
                conditions,
                ..Default::default()
            }),
        }
    }

    #[tokio::test]
    async fn deletes_after_the_ttl_and_requeues_before() {
        let path = "/apis/batch/v1/namespaces/ns/jobs/pi";
        // (job, now, expected calls, expected action)
        let cases: Vec<(&str, Job, &str, Vec<&str>, Action)> = vec![
            (
                "no ttl",
                job(None, Some(("Complete", "2025-01-01T00:00:00Z"))),
                "2025-01-02T00:00:00Z",
                vec![],
                Action::Done,
            ),
            (
                "not finished",
                job(Some(10), None),
                "2025-01-02T00:00:00Z",
                vec![],
                Action::Done,
            ),
            (
                "before expiry",
                job(Some(100), Some(("Complete", "2025-01-01T00:00:00Z"))),
                "2025-01-01T00:01:00Z",
                vec![],
                Action::RequeueAfter(Duration::from_secs(40)),
            ),
            (
                "failed, expired",
                job(Some(100), Some(("Failed", "2025-01-01T00:00:00Z"))),
                "2025-01-01T00:01:40Z",
                vec!["get", "delete"],
                Action::Done,
            ),
        ];
        for (name, job, now, calls, action) in cases {
            let fake = RecordingClient::new();
            fake.set_object(path, serde_json::to_value(&job).unwrap());
            let (ctx, _events) = Context::new(Arc::new(fake.clone()), Config::default());
            ctx.informers.jobs.apply(job);
            let controller = TtlController { ctx };
            let got = controller.sync("ns/pi", ts(now)).await.unwrap();
            assert_eq!(got, action, "{name}");
            let seen: Vec<&str> = fake.calls().iter().map(|c| c.verb).collect();
            assert_eq!(seen, calls, "{name}");
            if let Some(delete) = fake.calls().iter().find(|c| c.verb == "delete") {
                assert_eq!(delete.path, path);
                assert_eq!(delete.body["propagationPolicy"], "Foreground");
                assert_eq!(delete.body["preconditions"]["uid"], "job-uid");
            }
        }
    }

    #[tokio::test]
    async fn a_fresh_copy_with_a_longer_ttl_saves_the_job() {
        let fake = RecordingClient::new();
        let stale = job(Some(10), Some(("Complete", "2025-01-01T00:00:00Z")));
        let fresh = job(Some(3600), Some(("Complete", "2025-01-01T00:00:00Z")));
        fake.set_object(
            "/apis/batch/v1/namespaces/ns/jobs/pi",
            serde_json::to_value(&fresh).unwrap(),
        );
        let (ctx, _events) = Context::new(Arc::new(fake.clone()), Config::default());
        ctx.informers.jobs.apply(stale);
        let controller = TtlController { ctx };
        let got = controller
            .sync("ns/pi", ts("2025-01-01T00:01:00Z"))
            .await
            .unwrap();
        assert_eq!(got, Action::RequeueAfter(Duration::from_secs(3540)));
        assert_eq!(
            fake.short_calls(),
            vec!["get /apis/batch/v1/namespaces/ns/jobs/pi"]
        );
    }
}
