//! The ServiceAccount controller (kube-controller-manager's `serviceaccount`): every namespace
//! that is not terminating has a ServiceAccount `default`, recreated if deleted. (Tokens are not
//! this controller's business.)

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::task::JoinSet;

use super::runtime::{self, Change};
use super::{Action, Context, Error, Reconciler, WorkQueue};

/// The ServiceAccounts every namespace gets.
const DEFAULT_ACCOUNTS: &[&str] = &["default"];

fn active(ns: &Namespace) -> bool {
    let phase = ns.status.as_ref().and_then(|s| s.phase.as_deref());
    ns.metadata.deletion_timestamp.is_none() && matches!(phase, None | Some("Active"))
}

/// Ensures the default ServiceAccounts of each namespace.
pub struct ServiceAccountController {
    ctx: Context,
}

impl ServiceAccountController {
    pub fn new(ctx: Context) -> Self {
        ServiceAccountController { ctx }
    }
}

#[async_trait::async_trait]
impl Reconciler for ServiceAccountController {
    fn name(&self) -> &'static str {
        "serviceaccount"
    }

    async fn reconcile(&self, namespace: &str) -> Result<Action, Error> {
        let Some(ns) = self.ctx.informers.namespaces.get(namespace) else {
            return Ok(Action::Done);
        };
        if !active(&ns) {
            return Ok(Action::Done);
        }
        for name in DEFAULT_ACCOUNTS {
            let accounts = &self.ctx.informers.service_accounts;
            if accounts.get_in(Some(namespace), name).is_some() {
                continue;
            }
            let account = ServiceAccount {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    namespace: Some(namespace.to_string()),
                    ..Default::default()
                },
                ..Default::default()
            };
            match self.ctx.api.create(&account).await {
                Ok(_) => tracing::debug!(namespace, name, "created service account"),
                // Created meanwhile (or by us, and the cache is behind).
                Err(e) if e.is_already_exists() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Action::Done)
    }
}

/// Queues every namespace, by name, when it is added or changes: the per-namespace loops'
/// trigger (the default ServiceAccounts, `kube-root-ca.crt`).
pub(super) fn queue_namespaces(informers: &super::Informers, queue: &WorkQueue) {
    let queue = queue.clone();
    informers.namespaces.on_change(move |change| {
        if let Change::Applied { new, .. } = change {
            queue.add(new.metadata.name.clone().unwrap_or_default());
        }
    });
}

/// Registers the callbacks and starts the loop once the caches are loaded.
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) {
    let queue = WorkQueue::new();
    let informers = &ctx.informers;
    queue_namespaces(informers, &queue);
    {
        let queue = queue.clone();
        informers.service_accounts.on_change(move |change| {
            let Change::Deleted(old) = change else {
                return;
            };
            let name = old.metadata.name.as_deref().unwrap_or_default();
            if let (true, Some(ns)) = (
                DEFAULT_ACCOUNTS.contains(&name),
                old.metadata.namespace.clone(),
            ) {
                queue.add(ns);
            }
        });
    }
    let informers = informers.clone();
    let controller = Arc::new(ServiceAccountController::new(ctx.clone()));
    let workers = ctx.config.concurrent_syncs;
    tasks.spawn(async move {
        informers.namespaces.wait_synced().await;
        informers.service_accounts.wait_synced().await;
        runtime::run(controller, queue, workers).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::client::RecordingClient;
    use crate::controllers::Config;
    use k8s_openapi::api::core::v1::NamespaceStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn namespace(name: &str, phase: Option<&str>, deleting: bool) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                deletion_timestamp: deleting
                    .then_some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)),
                ..Default::default()
            },
            status: Some(NamespaceStatus {
                phase: phase.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn account(ns: &str, name: &str) -> ServiceAccount {
        ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn default_account_per_active_namespace() {
        // (namespace, its accounts, failure to inject, expected calls, error expected)
        type Case = (
            Namespace,
            Vec<&'static str>,
            Option<(u16, &'static str)>,
            Vec<&'static str>,
            bool,
        );
        let create = "create /api/v1/namespaces/ns/serviceaccounts";
        let cases: Vec<Case> = vec![
            (
                namespace("ns", Some("Active"), false),
                vec![],
                None,
                vec![create],
                false,
            ),
            (
                namespace("ns", None, false),
                vec!["builder"],
                None,
                vec![create],
                false,
            ),
            (
                namespace("ns", Some("Active"), false),
                vec!["default"],
                None,
                vec![],
                false,
            ),
            (
                namespace("ns", Some("Terminating"), false),
                vec![],
                None,
                vec![],
                false,
            ),
            (
                namespace("ns", Some("Active"), true),
                vec![],
                None,
                vec![],
                false,
            ),
            (
                namespace("ns", Some("Active"), false),
                vec![],
                Some((409, "AlreadyExists")),
                vec![create],
                false,
            ),
            (
                namespace("ns", Some("Active"), false),
                vec![],
                Some((500, "InternalError")),
                vec![create],
                true,
            ),
        ];
        for (i, (ns, accounts, failure, expected, fails)) in cases.into_iter().enumerate() {
            let fake = RecordingClient::new();
            let (ctx, _rx) = Context::new(Arc::new(fake.clone()), Config::default());
            ctx.informers.namespaces.apply(ns);
            for name in accounts {
                ctx.informers.service_accounts.apply(account("ns", name));
            }
            if let Some((code, reason)) = failure {
                fake.fail_next("/api/v1/namespaces/ns/serviceaccounts", code, reason);
            }
            let result = ServiceAccountController::new(ctx).reconcile("ns").await;
            assert_eq!(fake.short_calls(), expected, "case {i}");
            assert_eq!(result.is_err(), fails, "case {i}: {result:?}");
            if !expected.is_empty() {
                let body = &fake.calls()[0].body;
                assert_eq!(
                    (&body["metadata"]["name"], &body["metadata"]["namespace"]),
                    (&serde_json::json!("default"), &serde_json::json!("ns")),
                    "case {i}"
                );
            }
        }
    }

    #[tokio::test]
    async fn unknown_namespace_is_left_alone() {
        let fake = RecordingClient::new();
        let (ctx, _rx) = Context::new(Arc::new(fake.clone()), Config::default());
        let result = ServiceAccountController::new(ctx).reconcile("gone").await;
        assert_eq!(result.unwrap(), Action::Done);
        assert!(fake.calls().is_empty());
    }
}
