//! The CronJob controller (kube-controller-manager's `cronjob`, the v2 controller): creates a
//! Job for the most recent schedule time that has not run yet, honouring
//! `startingDeadlineSeconds`, `concurrencyPolicy` and `suspend`; keeps `status.active`,
//! `lastScheduleTime` and `lastSuccessfulTime`; deletes finished Jobs beyond the history limits;
//! and requeues itself for the next schedule time.
//!
//! A Job's name is `<cronjob>-<scheduled time in minutes since the epoch>`, so a repeated
//! reconcile for the same time (a stale cache, a lost status write) gets `AlreadyExists` rather
//! than a second Job.

pub mod schedule;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use tokio::task::JoinSet;

use self::schedule::Schedule;
use super::client::delete_options;
use super::events::object_reference;
use super::job::{controller_of, finished_condition};
use super::runtime::{self, key_of, Change};
use super::{Action, Context, Error, EventType, Reconciler, WorkQueue};

/// The annotation that records a Job's scheduled time (RFC 3339).
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// Upstream warns when more schedule times than this were missed.
const TOO_MANY_MISSED: i64 = 100;
/// The longest exact walk over schedule times when the estimate fails.
const MAX_WALK: usize = 100_000;
/// The requeue lands this long after the next schedule time, so the time has surely passed.
const NEXT_SCHEDULE_DELTA: Duration = Duration::from_millis(100);

/// Registers the CronJob loop: CronJob changes and changes of the Jobs they own.
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) {
    let queue = WorkQueue::new();
    let q = queue.clone();
    ctx.informers
        .cron_jobs
        .on_change(move |change: &Change<'_, CronJob>| q.add(key_of(&change.object().metadata)));
    let q = queue.clone();
    ctx.informers
        .jobs
        .on_change(move |change: &Change<'_, Job>| {
            let meta = &change.object().metadata;
            if let Some(owner) = controller_of(meta, "CronJob") {
                q.add(runtime::key(meta.namespace.as_deref(), &owner.name));
            }
        });
    let controller = Arc::new(CronJobController { ctx: ctx.clone() });
    tasks.spawn(runtime::run(controller, queue, ctx.config.concurrent_syncs));
}

pub struct CronJobController {
    pub ctx: Context,
}

#[async_trait::async_trait]
impl Reconciler for CronJobController {
    fn name(&self) -> &'static str {
        "cronjob"
    }

    async fn reconcile(&self, key: &str) -> Result<Action, Error> {
        self.sync(key, Timestamp::now()).await
    }
}

/// How many schedule times were missed since the last run (upstream's `missedSchedulesType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    None,
    Few,
    Many(i64),
}

/// The most recent schedule time in `(earliest, now]` and how many were missed, after
/// upstream's `mostRecentScheduleTime`: an estimate of the count from the first interval, then
/// an exact walk over the last two intervals.
pub fn most_recent_schedule_time(
    schedule: &Schedule,
    earliest: i64,
    now: i64,
) -> Result<(Option<i64>, Missed), String> {
    let Some(t1) = schedule.next(earliest) else {
        return Ok((None, Missed::None));
    };
    if now < t1 {
        return Ok((None, Missed::None));
    }
    let Some(t2) = schedule.next(t1) else {
        return Ok((Some(t1), Missed::Few));
    };
    if now < t2 {
        return Ok((Some(t1), Missed::Few));
    }
    let interval = t2 - t1;
    if interval < 1 {
        return Err("time difference between two schedules is less than 1 second".into());
    }
    let missed = (now - t1) / interval + 1;
    let mut t = t1 + (missed - 2) * interval;
    let mut most_recent = None;
    // The walk is exact for regular schedules; irregular ones (`30 6-16/4 * * 1-5`) start a
    // step early so the cron arithmetic finds the true last time.
    while let Some(next) = schedule.next(t).filter(|n| *n <= now) {
        most_recent = Some(next);
        t = next;
    }
    if most_recent.is_none() {
        // The estimate overshot a gap (a weekend in a weekdays-only schedule): walk from t1.
        t = t1;
        most_recent = Some(t1);
        for _ in 0..MAX_WALK {
            match schedule.next(t).filter(|n| *n <= now) {
                Some(next) => t = next,
                None => break,
            }
            most_recent = Some(t);
        }
    }
    let missed = if missed > TOO_MANY_MISSED {
        Missed::Many(missed)
    } else {
        Missed::Few
    };
    Ok((most_recent, missed))
}

/// The name of the Job for the schedule time `t` (seconds since the epoch).
pub fn job_name(cron_job: &str, t: i64) -> String {
    format!("{cron_job}-{}", t.div_euclid(60))
}

/// The Job to create for the schedule time `t`, from the CronJob's template.
pub fn job_from_template(cj: &CronJob, t: i64) -> Job {
    let spec = cj.spec.clone().unwrap_or_default();
    let template_meta = spec.job_template.metadata.unwrap_or_default();
    let mut annotations = template_meta.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_TIMESTAMP.into(), rfc3339(t));
    let name = job_name(cj.metadata.name.as_deref().unwrap_or_default(), t);
    Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: cj.metadata.namespace.clone(),
            labels: template_meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "CronJob".into(),
                name: cj.metadata.name.clone().unwrap_or_default(),
                uid: cj.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: spec.job_template.spec,
        status: None,
    }
}

/// The history limits' victims: the oldest (by start time; unstarted ones count as newest)
/// beyond `limit`.
pub fn beyond_limit(mut jobs: Vec<Arc<Job>>, limit: i32) -> Vec<Arc<Job>> {
    let limit = usize::try_from(limit).unwrap_or(0);
    if jobs.len() <= limit {
        return Vec::new();
    }
    jobs.sort_by(|a, b| {
        let start = |j: &Job| {
            j.status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0)
        };
        let order = match (start(a), start(b)) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        };
        order.then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    let excess = jobs.len() - limit;
    jobs.truncate(excess);
    jobs
}

fn rfc3339(t: i64) -> String {
    Timestamp::from_second(t)
        .map(|ts| ts.to_string())
        .unwrap_or_default()
}

fn rfc1123z(t: i64) -> String {
    Timestamp::from_second(t)
        .map(|ts| ts.strftime("%a, %d %b %Y %H:%M:%S %z").to_string())
        .unwrap_or_default()
}

fn time(t: i64) -> Option<Time> {
    Timestamp::from_second(t).ok().map(Time)
}

fn seconds(t: &Option<Time>) -> Option<i64> {
    t.as_ref().map(|t| t.0.as_second())
}

fn uid(meta: &ObjectMeta) -> &str {
    meta.uid.as_deref().unwrap_or_default()
}

impl CronJobController {
    /// One reconcile of the CronJob under `key` at the time `now`.
    pub async fn sync(&self, key: &str, now: Timestamp) -> Result<Action, Error> {
        let Some(cj) = self.ctx.informers.cron_jobs.get(key) else {
            return Ok(Action::Done);
        };
        if cj.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let cj_uid = uid(&cj.metadata).to_string();
        let jobs: Vec<Arc<Job>> = self
            .ctx
            .informers
            .jobs
            .owned_by(&cj_uid)
            .into_iter()
            .filter(|j| controller_of(&j.metadata, "CronJob").is_some_and(|o| o.uid == cj_uid))
            .collect();
        let mut status = cj.status.clone().unwrap_or_default();
        self.track_active(&cj, &jobs, &mut status).await?;
        let result = self.run_schedule(&cj, &jobs, &mut status, now).await;
        // Whatever the schedule step did is recorded, even when it failed half-way.
        let cleanup = match &result {
            Ok(_) => self.cleanup_history(&cj, &jobs, &mut status).await,
            Err(_) => Ok(()),
        };
        if Some(&status) != cj.status.as_ref() {
            let mut updated = (*cj).clone();
            updated.status = Some(status);
            self.ctx.api.replace_status(&updated).await?;
        }
        cleanup?;
        result
    }

    /// Brings `status.active` in line with the owned Jobs, and `lastSuccessfulTime` with the
    /// completed ones.
    async fn track_active(
        &self,
        cj: &CronJob,
        jobs: &[Arc<Job>],
        status: &mut CronJobStatus,
    ) -> Result<(), Error> {
        let mut active = status.active.take().unwrap_or_default();
        for job in jobs {
            let job_uid = uid(&job.metadata);
            let listed = active.iter().any(|r| r.uid.as_deref() == Some(job_uid));
            let finished = finished_condition(job);
            match finished {
                None if !listed && job.metadata.deletion_timestamp.is_none() => {
                    // Ours but not listed: created by a reconcile whose status write was lost.
                    active.push(object_reference(job.as_ref()));
                }
                Some(condition) if listed => {
                    let name = job.metadata.name.as_deref().unwrap_or_default();
                    self.ctx.events.record(
                        cj,
                        EventType::Normal,
                        "SawCompletedJob",
                        format!("Saw completed job: {name}, condition: {}", condition.type_),
                    );
                    active.retain(|r| r.uid.as_deref() != Some(job_uid));
                }
                _ => {}
            }
            if finished.is_some_and(|c| c.type_ == "Complete") {
                let done = job.status.as_ref().and_then(|s| s.completion_time.clone());
                if seconds(&done) > seconds(&status.last_successful_time) {
                    status.last_successful_time = done;
                }
            }
        }
        // Listed Jobs the cache does not have: ask the API before forgetting them, as the cache
        // may simply not have seen a new Job yet.
        let mut kept = Vec::with_capacity(active.len());
        for reference in active {
            let cached = jobs
                .iter()
                .any(|j| j.metadata.uid.is_some() && j.metadata.uid == reference.uid);
            if cached || self.still_exists(&reference).await? {
                kept.push(reference);
            } else {
                self.ctx.events.record(
                    cj,
                    EventType::Normal,
                    "MissingJob",
                    format!(
                        "Active job went missing: {}",
                        reference.name.as_deref().unwrap_or_default()
                    ),
                );
            }
        }
        status.active = (!kept.is_empty()).then_some(kept);
        Ok(())
    }

    async fn still_exists(&self, reference: &ObjectReference) -> Result<bool, Error> {
        let name = reference.name.as_deref().unwrap_or_default();
        match self
            .ctx
            .api
            .get::<Job>(reference.namespace.as_deref(), name)
            .await
        {
            Ok(job) => Ok(job.metadata.uid == reference.uid),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Starts the Job for the most recent unmet schedule time, if it is due and allowed; returns
    /// when to look again.
    async fn run_schedule(
        &self,
        cj: &CronJob,
        jobs: &[Arc<Job>],
        status: &mut CronJobStatus,
        now: Timestamp,
    ) -> Result<Action, Error> {
        let spec = cj.spec.clone().unwrap_or_default();
        if spec.suspend == Some(true) {
            return Ok(Action::Done);
        }
        if let Some(tz) = spec.time_zone.as_deref() {
            if tz != "UTC" && tz != "Etc/UTC" {
                self.ctx.events.record(
                    cj,
                    EventType::Warning,
                    "UnknownTimeZone",
                    format!("invalid timeZone: {tz:?}: only UTC is supported"),
                );
                return Ok(Action::Done);
            }
        }
        let schedule = match Schedule::parse(&spec.schedule) {
            Ok(s) => s,
            Err(e) => {
                self.ctx.events.record(
                    cj,
                    EventType::Warning,
                    "UnparseableSchedule",
                    format!("unparseable schedule: {:?} : {e}", spec.schedule),
                );
                return Ok(Action::Done);
            }
        };
        let now_s = now.as_second();
        let created = seconds(&cj.metadata.creation_timestamp).unwrap_or(now_s);
        let mut earliest = seconds(&status.last_schedule_time).unwrap_or(created);
        if let Some(deadline) = spec.starting_deadline_seconds {
            earliest = earliest.max(now_s.saturating_sub(deadline));
        }
        let (due, missed) = match most_recent_schedule_time(&schedule, earliest, now_s) {
            Ok(found) => found,
            Err(e) => {
                self.ctx.events.record(
                    cj,
                    EventType::Warning,
                    "InvalidSchedule",
                    format!("invalid schedule: {} : {e}", spec.schedule),
                );
                return Ok(Action::Done);
            }
        };
        if let Missed::Many(n) = missed {
            self.ctx.events.record(
                cj,
                EventType::Warning,
                "TooManyMissedTimes",
                format!("too many missed start times: {n}. Set or decrease .spec.startingDeadlineSeconds or check clock skew"),
            );
        }
        if let Some(t) = due {
            self.start_due(cj, jobs, status, t, now_s).await?;
        }
        Ok(self.next_action(&schedule, status, created, now))
    }

    /// Handles the schedule time `t` that has come: too late, already run, forbidden, or a new
    /// Job (after deleting the running ones under `Replace`).
    async fn start_due(
        &self,
        cj: &CronJob,
        jobs: &[Arc<Job>],
        status: &mut CronJobStatus,
        t: i64,
        now: i64,
    ) -> Result<(), Error> {
        let spec = cj.spec.clone().unwrap_or_default();
        if let Some(deadline) = spec.starting_deadline_seconds {
            if t.saturating_add(deadline) < now {
                self.ctx.events.record(
                    cj,
                    EventType::Warning,
                    "MissSchedule",
                    format!("Missed scheduled time to start a job: {}", rfc1123z(t)),
                );
                return Ok(());
            }
        }
        let name = job_name(cj.metadata.name.as_deref().unwrap_or_default(), t);
        let active = status.active.clone().unwrap_or_default();
        let already = active.iter().any(|r| r.name.as_deref() == Some(&name))
            || jobs
                .iter()
                .any(|j| j.metadata.name.as_deref() == Some(&name));
        if already {
            return Ok(());
        }
        match spec.concurrency_policy.as_deref() {
            Some("Forbid") if !active.is_empty() => {
                self.ctx.events.record(
                    cj,
                    EventType::Normal,
                    "JobAlreadyActive",
                    "Not starting job because prior execution is running and concurrency policy is Forbid",
                );
                return Ok(());
            }
            Some("Replace") => {
                for reference in &active {
                    self.delete_job(cj, reference, status).await?;
                }
            }
            _ => {}
        }
        let job = job_from_template(cj, t);
        match self.ctx.api.create(&job).await {
            Ok(created) => {
                self.ctx.events.record(
                    cj,
                    EventType::Normal,
                    "SuccessfulCreate",
                    format!("Created job {name}"),
                );
                status
                    .active
                    .get_or_insert_with(Vec::new)
                    .push(object_reference(&created));
            }
            // Created before by a reconcile whose status write was lost; the Job shows up in
            // the cache and joins `active` then.
            Err(e) if e.is_already_exists() => {}
            Err(e) => {
                self.ctx.events.record(
                    cj,
                    EventType::Warning,
                    "FailedCreate",
                    format!("Error creating job: {e}"),
                );
                return Err(e.into());
            }
        }
        if Some(t) > seconds(&status.last_schedule_time) {
            status.last_schedule_time = time(t);
        }
        Ok(())
    }

    async fn delete_job(
        &self,
        cj: &CronJob,
        reference: &ObjectReference,
        status: &mut CronJobStatus,
    ) -> Result<(), Error> {
        let name = reference.name.as_deref().unwrap_or_default();
        let namespace = cj.metadata.namespace.as_deref();
        self.ctx
            .api
            .delete::<Job>(namespace, name, &delete_options(Some("Background")))
            .await?;
        self.ctx.events.record(
            cj,
            EventType::Normal,
            "SuccessfulDelete",
            format!("Deleted job {name}"),
        );
        if let Some(active) = status.active.as_mut() {
            active.retain(|r| r.uid != reference.uid || r.name != reference.name);
            if active.is_empty() {
                status.active = None;
            }
        }
        Ok(())
    }

    /// Requeue just after the next schedule time.
    fn next_action(
        &self,
        schedule: &Schedule,
        status: &CronJobStatus,
        created: i64,
        now: Timestamp,
    ) -> Action {
        let now_s = now.as_second();
        let earliest = seconds(&status.last_schedule_time).unwrap_or(created);
        let base = match most_recent_schedule_time(schedule, earliest, now_s) {
            Ok((Some(t), _)) => t,
            Ok((None, _)) => earliest,
            Err(_) => return Action::Done,
        };
        let Some(next) = schedule.next(base) else {
            return Action::Done;
        };
        let wait_ms = (next.saturating_mul(1000) - now.as_millisecond()).max(0);
        let wait = Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0));
        Action::RequeueAfter(wait + NEXT_SCHEDULE_DELTA)
    }

    /// Deletes the oldest finished Jobs beyond `successfulJobsHistoryLimit` and
    /// `failedJobsHistoryLimit`.
    async fn cleanup_history(
        &self,
        cj: &CronJob,
        jobs: &[Arc<Job>],
        status: &mut CronJobStatus,
    ) -> Result<(), Error> {
        let spec = cj.spec.clone().unwrap_or_default();
        let mut by_outcome: BTreeMap<&str, Vec<Arc<Job>>> = BTreeMap::new();
        for job in jobs {
            if job.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if let Some(condition) = finished_condition(job) {
                by_outcome
                    .entry(if condition.type_ == "Complete" {
                        "Complete"
                    } else {
                        "Failed"
                    })
                    .or_default()
                    .push(job.clone());
            }
        }
        for (outcome, limit) in [
            ("Complete", spec.successful_jobs_history_limit),
            ("Failed", spec.failed_jobs_history_limit),
        ] {
            let (Some(limit), Some(finished)) = (limit, by_outcome.remove(outcome)) else {
                continue;
            };
            for job in beyond_limit(finished, limit) {
                self.delete_job(cj, &object_reference(job.as_ref()), status)
                    .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
