//! Leader election over a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does:
//! only the holder runs the scheduler and controllers; every master serves the API.
//!
//! A candidate takes the Lease when its holder has not renewed it for `leaseDurationSeconds`
//! as measured on the candidate's own clock (from when it last saw the record change), so the
//! masters' clocks need not agree. Writes are conditional on `resourceVersion`, so two
//! candidates never both win. A leader that cannot renew within the renew deadline stops its
//! loops before anyone else may take over.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::client::{Api, ClientError};

/// Where the Lease lives and how it is held.
#[derive(Debug, Clone)]
pub struct Settings {
    pub namespace: String,
    pub name: String,
    /// This master's identity in `holderIdentity` (host name and a random suffix).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// What a candidate last saw of the Lease, and when (on its own clock).
#[derive(Default)]
struct Observed {
    record: Option<(Option<String>, Option<String>)>,
    at: Option<Instant>,
}

/// The outcome of one attempt.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Held,
    HeldByOther(String),
}

/// Competes for the Lease forever: while holding it, runs the loops `lead` starts, and stops
/// them (aborting every task) as soon as leadership is lost, then competes again.
pub async fn run(api: Api, settings: Settings, mut lead: impl FnMut() -> JoinSet<()>) {
    let mut observed = Observed::default();
    let mut last_holder = String::new();
    loop {
        // Candidate.
        loop {
            match try_acquire_or_renew(&api, &settings, &mut observed).await {
                Ok(Attempt::Held) => break,
                Ok(Attempt::HeldByOther(holder)) => {
                    if holder != last_holder {
                        tracing::info!(leader = holder, "another master leads; standing by");
                        last_holder = holder;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(settings.retry_period).await;
        }
        tracing::info!(
            identity = settings.identity,
            "became leader: starting the scheduler and controllers"
        );
        last_holder = settings.identity.clone();
        let mut tasks = lead();
        let mut renewed = Instant::now();
        // Leader.
        loop {
            tokio::select! {
                _ = tokio::time::sleep(settings.retry_period) => {}
                Some(result) = tasks.join_next() => {
                    if let Err(e) = result {
                        if e.is_panic() {
                            tracing::error!(error = %e, "a control loop panicked");
                        }
                    }
                    continue;
                }
            }
            match try_acquire_or_renew(&api, &settings, &mut observed).await {
                Ok(Attempt::Held) => renewed = Instant::now(),
                Ok(Attempt::HeldByOther(holder)) => {
                    tracing::warn!(leader = holder, "lost the leader Lease");
                    break;
                }
                Err(e) if renewed.elapsed() < settings.renew_deadline => {
                    tracing::debug!(error = %e, "lease renewal failed; retrying");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not renew the leader Lease within the renew deadline");
                    break;
                }
            }
        }
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        tracing::warn!("stopped the scheduler and controllers; standing by");
    }
}

/// Gives the Lease up (on shutdown) so another master takes over at once.
pub async fn release(api: &Api, settings: &Settings) -> Result<(), ClientError> {
    let mut lease: Lease = api.get(Some(&settings.namespace), &settings.name).await?;
    let spec = lease.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
    api.replace(&lease).await.map(|_| ())
}

async fn try_acquire_or_renew(
    api: &Api,
    settings: &Settings,
    observed: &mut Observed,
) -> Result<Attempt, ClientError> {
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let duration_secs = i32::try_from(settings.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let current = match api
        .get::<Lease>(Some(&settings.namespace), &settings.name)
        .await
    {
        Ok(lease) => lease,
        Err(e) if e.is_not_found() => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(settings.name.clone()),
                    namespace: Some(settings.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(settings.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match api.create(&lease).await {
                Ok(_) => Ok(Attempt::Held),
                Err(e) if e.is_already_exists() => Ok(Attempt::HeldByOther(String::new())),
                Err(e) => Err(e),
            };
        }
        Err(e) => return Err(e),
    };
    let spec = current.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let record = (holder.clone(), current.metadata.resource_version.clone());
    if observed.record.as_ref() != Some(&record) {
        observed.record = Some(record);
        observed.at = Some(Instant::now());
    }
    let mine = holder.as_deref() == Some(settings.identity.as_str());
    let held_for =
        Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0));
    let expired = observed.at.is_none_or(|at| at.elapsed() >= held_for);
    if !mine && holder.is_some() && !expired {
        return Ok(Attempt::HeldByOther(holder.unwrap_or_default()));
    }
    let mut lease = current;
    let new_spec = lease.spec.get_or_insert_with(Default::default);
    if !mine {
        new_spec.acquire_time = Some(now.clone());
        new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        new_spec.holder_identity = Some(settings.identity.clone());
    }
    new_spec.lease_duration_seconds = Some(duration_secs);
    new_spec.renew_time = Some(now);
    match api.replace(&lease).await {
        Ok(updated) => {
            observed.record = Some((
                Some(settings.identity.clone()),
                updated.metadata.resource_version.clone(),
            ));
            observed.at = Some(Instant::now());
            Ok(Attempt::Held)
        }
        Err(e) if e.is_conflict() => Ok(Attempt::HeldByOther(holder.unwrap_or_default())),
        Err(e) => Err(e),
    }
}

/// This master's identity: the host name and a random suffix (two masters on one host differ).
pub fn identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host = if host.is_empty() {
        "skiff-master".to_string()
    } else {
        host
    };
    format!("{host}_{}", uuid::Uuid::new_v4())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::client::RecordingClient;
    use serde_json::json;
    use std::sync::Arc;

    fn settings(identity: &str) -> Settings {
        Settings {
            namespace: "kube-system".into(),
            name: "skiff-master".into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(10),
            renew_deadline: Duration::from_secs(8),
            retry_period: Duration::from_secs(2),
        }
    }

    const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/skiff-master";

    #[tokio::test]
    async fn creates_the_lease_when_there_is_none() {
        let fake = RecordingClient::new();
        let api = Api::new(Arc::new(fake.clone()));
        let got = try_acquire_or_renew(&api, &settings("a"), &mut Observed::default())
            .await
            .unwrap();
        assert_eq!(got, Attempt::Held);
        let calls = fake.calls();
        assert_eq!(
            calls[1].short(),
            "create /apis/coordination.k8s.io/v1/namespaces/kube-system/leases"
        );
        assert_eq!(calls[1].body["spec"]["holderIdentity"], "a");
    }

    #[tokio::test(start_paused = true)]
    async fn takes_over_only_after_the_holder_stops_renewing_for_the_lease_duration() {
        let fake = RecordingClient::new();
        let api = Api::new(Arc::new(fake.clone()));
        let lease = |rv: &str| {
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "skiff-master", "namespace": "kube-system", "resourceVersion": rv},
            "spec": {"holderIdentity": "a", "leaseDurationSeconds": 10, "leaseTransitions": 0}})
        };
        fake.set_object(PATH, lease("1"));
        let mut observed = Observed::default();
        let b = settings("b");
        assert_eq!(
            try_acquire_or_renew(&api, &b, &mut observed).await.unwrap(),
            Attempt::HeldByOther("a".into())
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        // The holder renewed: the clock restarts from this observation.
        fake.set_object(PATH, lease("2"));
        assert_eq!(
            try_acquire_or_renew(&api, &b, &mut observed).await.unwrap(),
            Attempt::HeldByOther("a".into())
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(
            try_acquire_or_renew(&api, &b, &mut observed).await.unwrap(),
            Attempt::HeldByOther("a".into())
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        fake.clear();
        assert_eq!(
            try_acquire_or_renew(&api, &b, &mut observed).await.unwrap(),
            Attempt::Held
        );
        let put = &fake.calls()[1];
        assert_eq!(put.short(), format!("update {PATH}"));
        assert_eq!(put.body["spec"]["holderIdentity"], "b");
        assert_eq!(put.body["spec"]["leaseTransitions"], 1);
        assert_eq!(
            put.body["metadata"]["resourceVersion"], "2",
            "the takeover is conditional"
        );
    }

    #[tokio::test]
    async fn a_released_lease_is_taken_at_once_and_errors_are_reported() {
        let fake = RecordingClient::new();
        let api = Api::new(Arc::new(fake.clone()));
        fake.set_object(PATH, json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "skiff-master", "namespace": "kube-system", "resourceVersion": "5"},
            "spec": {"leaseDurationSeconds": 1}}));
        fake.fail_next(PATH, 500, "InternalError");
        let got = try_acquire_or_renew(&api, &settings("b"), &mut Observed::default()).await;
        assert!(got.is_err(), "a failed read is an error the caller retries");
        let got = try_acquire_or_renew(&api, &settings("b"), &mut Observed::default())
            .await
            .unwrap();
        assert_eq!(got, Attempt::Held, "nobody holds it: take it");
        fake.fail_next(PATH, 409, "Conflict");
        fake.set_object(PATH, json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "skiff-master", "namespace": "kube-system", "resourceVersion": "6"},
            "spec": {"leaseDurationSeconds": 1}}));
    }
}
