//! The namespace controller: empties a terminating namespace, then finalizes it.
//!
//! A DELETE of a Namespace only marks it (`deletionTimestamp`, phase `Terminating`) while its
//! `spec.finalizers` holds `kubernetes`. This loop then deletes everything in it, kind by kind
//! from the API's resource table, through the API (a deletecollection per kind, so graceful pod
//! deletion, finalizers and the garbage collector's policies apply), and reports progress in the
//! namespace's status conditions as kube-controller-manager does (`NamespaceContentRemaining`,
//! `NamespaceFinalizersRemaining`, `NamespaceDeletionContentFailure` …). It looks again every
//! few seconds (and when a pod in it goes away) until nothing is left, then drops the
//! `kubernetes` finalizer with `PUT /api/v1/namespaces/<name>/finalize`, which removes the
//! namespace.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition, NamespaceStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::client::{path_of, ClientError};
use super::runtime::{self, key_of, Change};
use super::{Action, Context, Error, Reconciler, WorkQueue};
use crate::api::resources::{Resource, RESOURCES};

/// The finalizer this controller owns in `spec.finalizers`.
pub const FINALIZER: &str = "kubernetes";
/// The shortest wait before looking at a namespace with content left again.
const MIN_RECHECK: Duration = Duration::from_secs(2);
/// The longest.
const MAX_RECHECK: Duration = Duration::from_secs(15);

/// What one pass over a namespace's content found.
#[derive(Debug, Default, PartialEq)]
pub struct Content {
    /// `<resource>.<group>` → objects still there.
    pub remaining: BTreeMap<String, usize>,
    /// Finalizer → objects it still holds.
    pub finalizers: BTreeMap<String, usize>,
    /// Failed deletions and lists, as messages.
    pub failures: Vec<String>,
    /// The longest pod termination grace among what is left, in seconds.
    pub grace: i64,
}

impl Content {
    fn done(&self) -> bool {
        self.remaining.is_empty() && self.failures.is_empty()
    }

    /// Upstream's five deletion conditions: (type, status, reason, message).
    fn conditions(&self) -> Vec<(&'static str, &'static str, &'static str, String)> {
        let mut out = vec![
            (
                "NamespaceDeletionDiscoveryFailure",
                "False",
                "ResourcesDiscovered",
                "All resources successfully discovered".to_string(),
            ),
            (
                "NamespaceDeletionGroupVersionParsingFailure",
                "False",
                "ParsedGroupVersions",
                "All legacy kube types successfully parsed".to_string(),
            ),
        ];
        out.push(if self.failures.is_empty() {
            (
                "NamespaceDeletionContentFailure",
                "False",
                "ContentDeleted",
                "All content successfully deleted, may be waiting on finalization".into(),
            )
        } else {
            (
                "NamespaceDeletionContentFailure",
                "True",
                "ContentDeletionFailed",
                format!(
                    "Failed to delete all resource types, {} remaining: {}",
                    self.failures.len(),
                    self.failures.join(", ")
                ),
            )
        });
        out.push(if self.remaining.is_empty() {
            (
                "NamespaceContentRemaining",
                "False",
                "ContentRemoved",
                "All content successfully removed".into(),
            )
        } else {
            let list: Vec<String> = self
                .remaining
                .iter()
                .map(|(r, n)| format!("{r} has {n} resource instances"))
                .collect();
            (
                "NamespaceContentRemaining",
                "True",
                "SomeResourcesRemain",
                format!("Some resources are remaining: {}", list.join(", ")),
            )
        });
        out.push(if self.finalizers.is_empty() {
            (
                "NamespaceFinalizersRemaining",
                "False",
                "ContentHasNoFinalizers",
                "All content-preserving finalizers finished".into(),
            )
        } else {
            let list: Vec<String> = self
                .finalizers
                .iter()
                .map(|(f, n)| format!("{f} in {n} resource instances"))
                .collect();
            (
                "NamespaceFinalizersRemaining",
                "True",
                "SomeFinalizersRemain",
                format!(
                    "Some content in the namespace has finalizers remaining: {}",
                    list.join(", ")
                ),
            )
        });
        out
    }

    /// When to look again: the longest pod grace left, within [2 s, 15 s].
    fn recheck(&self) -> Duration {
        Duration::from_secs(self.grace.max(0) as u64).clamp(MIN_RECHECK, MAX_RECHECK)
    }
}

/// The namespace's conditions with `content`'s, or `None` when they already say the same
/// (transition times are kept for unchanged statuses).
fn merge_conditions(
    current: &[NamespaceCondition],
    content: &Content,
    now: Timestamp,
) -> Option<Vec<NamespaceCondition>> {
    let mut out: Vec<NamespaceCondition> = current.to_vec();
    let mut changed = false;
    for (kind, status, reason, message) in content.conditions() {
        let wanted = NamespaceCondition {
            type_: kind.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_transition_time: Some(Time(now)),
        };
        match out.iter_mut().find(|c| c.type_ == kind) {
            None => {
                out.push(wanted);
                changed = true;
            }
            Some(c) => {
                if c.status == wanted.status
                    && c.reason == wanted.reason
                    && c.message == wanted.message
                {
                    continue;
                }
                let transition = if c.status == wanted.status {
                    c.last_transition_time.clone()
                } else {
                    wanted.last_transition_time.clone()
                };
                *c = NamespaceCondition {
                    last_transition_time: transition,
                    ..wanted
                };
                changed = true;
            }
        }
    }
    changed.then_some(out)
}

/// The collection path of `r` in `namespace`.
fn collection(r: &Resource, namespace: &str) -> String {
    if r.group.is_empty() {
        format!("/api/{}/namespaces/{namespace}/{}", r.version, r.plural)
    } else {
        format!(
            "/apis/{}/{}/namespaces/{namespace}/{}",
            r.group, r.version, r.plural
        )
    }
}

/// Adds what a list's items say to `content`.
fn count(content: &mut Content, r: &Resource, items: &[Value]) {
    if items.is_empty() {
        return;
    }
    *content
        .remaining
        .entry(format!("{}.{}", r.plural, r.group))
        .or_default() += items.len();
    for item in items {
        let finalizers = item
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str);
        for f in finalizers {
            *content.finalizers.entry(f.to_string()).or_default() += 1;
        }
        if r.kind == "Pod" {
            let grace = item
                .pointer("/metadata/deletionGracePeriodSeconds")
                .or_else(|| item.pointer("/spec/terminationGracePeriodSeconds"))
                .and_then(Value::as_i64)
                .unwrap_or(0);
            content.grace = content.grace.max(grace);
        }
    }
}

pub struct NamespaceController {
    ctx: Context,
}

/// Registers the loop: namespace changes queue the namespace; a pod going away in a terminating
/// namespace queues it too.
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) {
    let queue = WorkQueue::new();
    let q = queue.clone();
    ctx.informers.namespaces.on_change(move |change| {
        if change.object().metadata.deletion_timestamp.is_some() {
            q.add(key_of(&change.object().metadata));
        }
    });
    let q = queue.clone();
    let namespaces = ctx.informers.namespaces.clone();
    ctx.informers.pods.on_change(move |change| {
        if let Change::Deleted(pod) = change {
            let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
            if namespaces
                .get(ns)
                .is_some_and(|n| n.metadata.deletion_timestamp.is_some())
            {
                q.add(ns.to_string());
            }
        }
    });
    let controller = Arc::new(NamespaceController { ctx: ctx.clone() });
    tasks.spawn(runtime::run(controller, queue, ctx.config.concurrent_syncs));
}

impl NamespaceController {
    pub fn new(ctx: Context) -> Self {
        NamespaceController { ctx }
    }

    /// Deletes what is left of every namespaced kind in `namespace` and reports what remains.
    async fn delete_content(&self, namespace: &str) -> Content {
        let mut content = Content::default();
        for r in RESOURCES.iter().filter(|r| r.namespaced) {
            let path = collection(r, namespace);
            let items = match self.list(&path).await {
                Ok(items) => items,
                Err(e) => {
                    content.failures.push(e.to_string());
                    continue;
                }
            };
            let live = items
                .iter()
                .any(|i| i.pointer("/metadata/deletionTimestamp").is_none());
            if !live {
                count(&mut content, r, &items);
                continue;
            }
            let options = json!({"propagationPolicy": "Background"});
            if let Err(e) = self.ctx.api.raw().delete(&path, options).await {
                if !e.is_not_found() {
                    content.failures.push(e.to_string());
                }
            }
            match self.list(&path).await {
                Ok(items) => count(&mut content, r, &items),
                Err(e) => content.failures.push(e.to_string()),
            }
        }
        content
    }

    /// The items of a collection; a kind the API does not serve has none.
    async fn list(&self, path: &str) -> Result<Vec<Value>, ClientError> {
        match self.ctx.api.raw().get(path).await {
            Ok(list) => Ok(list
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()),
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    pub async fn reconcile_at(&self, name: &str, now: Timestamp) -> Result<Action, Error> {
        let Some(ns) = self.ctx.informers.namespaces.get(name) else {
            return Ok(Action::Done);
        };
        if ns.metadata.deletion_timestamp.is_none() {
            return Ok(Action::Done);
        }
        let finalizers = ns
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.clone())
            .unwrap_or_default();
        if !finalizers.iter().any(|f| f == FINALIZER) {
            return Ok(Action::Done);
        }
        let content = self.delete_content(name).await;
        let mut ns = (*ns).clone();
        let status = ns.status.get_or_insert_with(NamespaceStatus::default);
        let current = status.conditions.clone().unwrap_or_default();
        let merged = merge_conditions(&current, &content, now);
        let terminating = status.phase.as_deref() == Some("Terminating");
        if merged.is_some() || !terminating {
            status.phase = Some("Terminating".into());
            if let Some(conditions) = merged {
                status.conditions = Some(conditions);
            }
            ns = self.ctx.api.replace_status(&ns).await?;
        }
        if !content.failures.is_empty() {
            tracing::warn!(
                namespace = name,
                failures = ?content.failures,
                "could not delete all content of the namespace; retrying"
            );
        }
        if !content.done() {
            return Ok(Action::RequeueAfter(content.recheck()));
        }
        self.finalize(ns).await?;
        tracing::info!(namespace = name, "namespace emptied and finalized");
        Ok(Action::Done)
    }

    /// Drops `kubernetes` from `spec.finalizers` through the `finalize` subresource.
    async fn finalize(&self, mut ns: Namespace) -> Result<(), Error> {
        let name = ns.metadata.name.clone().unwrap_or_default();
        let spec = ns.spec.get_or_insert_with(Default::default);
        let rest: Vec<String> = spec
            .finalizers
            .take()
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f != FINALIZER)
            .collect();
        spec.finalizers = Some(rest);
        let mut body = serde_json::to_value(&ns).map_err(|e| Error::Invalid {
            object: format!("namespace {name}"),
            message: format!("cannot encode: {e}"),
        })?;
        body["apiVersion"] = json!("v1");
        body["kind"] = json!("Namespace");
        let path = format!("{}/finalize", path_of::<Namespace>(None, Some(&name)));
        match self.ctx.api.raw().replace(&path, body).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[async_trait::async_trait]
impl Reconciler for NamespaceController {
    fn name(&self) -> &'static str {
        "namespace"
    }

    async fn reconcile(&self, key: &str) -> Result<Action, Error> {
        self.reconcile_at(key, Timestamp::now()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::client::RecordingClient;
    use crate::controllers::Config;
    use k8s_openapi::api::core::v1::NamespaceSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn ts(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_750_000_000 + seconds).unwrap()
    }

    fn terminating(name: &str) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                resource_version: Some("4".into()),
                deletion_timestamp: Some(Time(ts(0))),
                ..Default::default()
            },
            spec: Some(NamespaceSpec {
                finalizers: Some(vec![FINALIZER.into()]),
            }),
            status: Some(NamespaceStatus {
                phase: Some("Terminating".into()),
                ..Default::default()
            }),
        }
    }

    fn setup(ns: Namespace) -> (NamespaceController, RecordingClient) {
        let fake = RecordingClient::new();
        let (ctx, _rx) = Context::new(Arc::new(fake.clone()), Config::default());
        ctx.informers.namespaces.apply(ns);
        (NamespaceController::new(ctx), fake)
    }

    /// The calls other than list reads.
    fn writes(fake: &RecordingClient) -> Vec<String> {
        fake.short_calls()
            .into_iter()
            .filter(|c| !c.starts_with("get "))
            .collect()
    }

    fn condition(body: &Value, kind: &str) -> (String, String) {
        let found = body["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == kind)
            .unwrap();
        (
            found["status"].as_str().unwrap().to_string(),
            found["message"].as_str().unwrap().to_string(),
        )
    }

    #[tokio::test]
    async fn content_is_deleted_then_the_namespace_finalized() {
        let (c, fake) = setup(terminating("demo"));
        let pods = "/api/v1/namespaces/demo/pods";
        let cms = "/api/v1/namespaces/demo/configmaps";
        fake.set_object(
            pods,
            json!({"items": [{"metadata": {"name": "web"}, "spec": {"terminationGracePeriodSeconds": 5}}]}),
        );
        fake.set_object(
            cms,
            json!({"items": [
                {"metadata": {"name": "a"}},
                {"metadata": {"name": "b", "deletionTimestamp": "2025-01-01T00:00:00Z", "finalizers": ["example.com/hold"]}},
            ]}),
        );
        let action = c.reconcile_at("demo", ts(10)).await.unwrap();
        assert_eq!(action, Action::RequeueAfter(Duration::from_secs(5)));
        assert_eq!(
            writes(&fake),
            vec![
                format!("delete {pods}"),
                format!("delete {cms}"),
                "update /api/v1/namespaces/demo/status".into(),
            ]
        );
        // Every namespaced kind was listed, through the API.
        let lists = fake
            .short_calls()
            .iter()
            .filter(|c| c.starts_with("get "))
            .count();
        assert!(lists >= RESOURCES.iter().filter(|r| r.namespaced).count());
        let calls = fake.calls();
        assert_eq!(calls[1].body["propagationPolicy"], "Background");
        let status = &calls.last().unwrap().body;
        assert_eq!(
            condition(status, "NamespaceContentRemaining"),
            (
                "True".into(),
                "Some resources are remaining: configmaps. has 2 resource instances, pods. has 1 resource instances".into()
            )
        );
        assert_eq!(
            condition(status, "NamespaceFinalizersRemaining"),
            (
                "True".into(),
                "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances".into()
            )
        );
        assert_eq!(
            condition(status, "NamespaceDeletionContentFailure").0,
            "False"
        );

        // Everything is gone: the conditions say so and the finalizer goes.
        fake.clear();
        fake.set_object(pods, json!({"items": []}));
        fake.set_object(cms, json!({"items": []}));
        let action = c.reconcile_at("demo", ts(20)).await.unwrap();
        assert_eq!(action, Action::Done);
        assert_eq!(
            writes(&fake),
            vec![
                "update /api/v1/namespaces/demo/status",
                "update /api/v1/namespaces/demo/finalize",
            ]
        );
        let calls = fake.calls();
        let finalize = &calls.last().unwrap().body;
        assert_eq!(finalize["spec"]["finalizers"], json!([]));
        assert_eq!(finalize["kind"], "Namespace");
    }

    #[tokio::test]
    async fn a_failed_deletion_is_reported_and_retried() {
        let (c, fake) = setup(terminating("demo"));
        let secrets = "/api/v1/namespaces/demo/secrets";
        fake.set_object(secrets, json!({"items": [{"metadata": {"name": "s"}}]}));
        fake.fail_next(secrets, 500, "InternalError");
        let action = c.reconcile_at("demo", ts(10)).await.unwrap();
        assert!(matches!(action, Action::RequeueAfter(_)));
        let calls = fake.calls();
        let status = &calls.last().unwrap().body;
        let (state, message) = condition(status, "NamespaceDeletionContentFailure");
        assert_eq!(state, "True");
        assert!(
            message.starts_with("Failed to delete all resource types, 1 remaining: "),
            "{message}"
        );
        assert!(!writes(&fake).iter().any(|c| c.ends_with("/finalize")));
    }

    #[tokio::test]
    async fn live_and_finalized_namespaces_are_left_alone() {
        let mut live = terminating("live");
        live.metadata.deletion_timestamp = None;
        let (c, fake) = setup(live);
        assert_eq!(c.reconcile_at("live", ts(0)).await.unwrap(), Action::Done);
        let mut done = terminating("done");
        done.spec = Some(NamespaceSpec {
            finalizers: Some(vec![]),
        });
        c.ctx.informers.namespaces.apply(done);
        assert_eq!(c.reconcile_at("done", ts(0)).await.unwrap(), Action::Done);
        assert_eq!(c.reconcile_at("gone", ts(0)).await.unwrap(), Action::Done);
        assert!(fake.calls().is_empty(), "{:?}", fake.short_calls());
    }
}
