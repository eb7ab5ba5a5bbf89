//! The root CA publisher (kube-controller-manager's `root-ca-cert-publisher`): every namespace
//! that is not terminating has a ConfigMap `kube-root-ca.crt` whose `ca.crt` is the cluster CA
//! (`--root-ca-file`), so pods can verify the API server; the ServiceAccount admission projects
//! it into every pod's `kube-api-access-*` volume. Recreated when deleted, rewritten when edited.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::task::JoinSet;

use super::runtime::{self, Change};
use super::{Action, Context, Error, Reconciler, WorkQueue};

/// The ConfigMap's name.
pub const CONFIG_MAP: &str = "kube-root-ca.crt";
/// Its key holding the PEM bundle.
pub const KEY: &str = "ca.crt";
const DESCRIPTION_ANNOTATION: &str = "kubernetes.io/description";
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver \
    when using internal endpoints such as the internal service IP or kubernetes.default.svc. No \
    other usage is guaranteed across distributions of Kubernetes clusters.";

fn terminating(ns: &Namespace) -> bool {
    let phase = ns.status.as_ref().and_then(|s| s.phase.as_deref());
    ns.metadata.deletion_timestamp.is_some() || phase == Some("Terminating")
}

/// Publishes the CA bundle into each namespace.
pub struct RootCaPublisher {
    ctx: Context,
    ca_pem: String,
}

impl RootCaPublisher {
    pub fn new(ctx: Context, ca_pem: String) -> Self {
        RootCaPublisher { ctx, ca_pem }
    }

    fn data(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(KEY.to_string(), self.ca_pem.clone())])
    }
}

#[async_trait::async_trait]
impl Reconciler for RootCaPublisher {
    fn name(&self) -> &'static str {
        "root-ca-cert-publisher"
    }

    async fn reconcile(&self, namespace: &str) -> Result<Action, Error> {
        let Some(ns) = self.ctx.informers.namespaces.get(namespace) else {
            return Ok(Action::Done);
        };
        if terminating(&ns) {
            return Ok(Action::Done);
        }
        let cached = self
            .ctx
            .informers
            .root_ca_config_maps
            .get_in(Some(namespace), CONFIG_MAP);
        let Some(existing) = cached else {
            let config_map = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(CONFIG_MAP.into()),
                    namespace: Some(namespace.into()),
                    annotations: Some(BTreeMap::from([(
                        DESCRIPTION_ANNOTATION.to_string(),
                        DESCRIPTION.to_string(),
                    )])),
                    ..Default::default()
                },
                data: Some(self.data()),
                ..Default::default()
            };
            return match self.ctx.api.create(&config_map).await {
                Ok(_) => {
                    tracing::debug!(namespace, "published the root ca");
                    Ok(Action::Done)
                }
                // Created meanwhile, or the cache is behind: the watch brings it back here.
                Err(e) if e.is_already_exists() => Ok(Action::Done),
                Err(e) => Err(e.into()),
            };
        };
        let described = existing
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DESCRIPTION_ANNOTATION))
            .is_some_and(|d| !d.is_empty());
        if existing.data.as_ref() == Some(&self.data()) && described {
            return Ok(Action::Done);
        }
        let mut updated = (*existing).clone();
        updated.data = Some(self.data());
        updated
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(DESCRIPTION_ANNOTATION.into(), DESCRIPTION.into());
        self.ctx.api.replace(&updated).await?;
        Ok(Action::Done)
    }
}

/// Registers the callbacks and starts the loop once the caches are loaded. Without
/// `--root-ca-file` there is nothing to publish, and the loop does not start.
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) {
    let Some(path) = ctx.config.root_ca_file.clone() else {
        tracing::warn!("no --root-ca-file: kube-root-ca.crt ConfigMaps are not published");
        return;
    };
    let ca_pem = match std::fs::read_to_string(&path) {
        Ok(pem) => pem,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot read the root ca; kube-root-ca.crt ConfigMaps are not published");
            return;
        }
    };
    let queue = WorkQueue::new();
    let informers = &ctx.informers;
    super::serviceaccount::queue_namespaces(informers, &queue);
    {
        let queue = queue.clone();
        informers.root_ca_config_maps.on_change(move |change| {
            let cm = match change {
                Change::Applied { new, .. } => new,
                Change::Deleted(old) => old,
            };
            if cm.metadata.name.as_deref() == Some(CONFIG_MAP) {
                queue.add(cm.metadata.namespace.clone().unwrap_or_default());
            }
        });
    }
    let informers = informers.clone();
    let controller = Arc::new(RootCaPublisher::new(ctx.clone(), ca_pem));
    let workers = ctx.config.concurrent_syncs;
    tasks.spawn(async move {
        informers.namespaces.wait_synced().await;
        informers.root_ca_config_maps.wait_synced().await;
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

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn namespace(phase: &str, deleting: bool) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some("ns".into()),
                deletion_timestamp: deleting
                    .then_some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)),
                ..Default::default()
            },
            status: Some(NamespaceStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn config_map(ca: &str, annotated: bool) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(CONFIG_MAP.into()),
                namespace: Some("ns".into()),
                annotations: annotated.then(|| {
                    BTreeMap::from([(DESCRIPTION_ANNOTATION.to_string(), DESCRIPTION.to_string())])
                }),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(KEY.to_string(), ca.to_string())])),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn publishes_the_ca_in_every_active_namespace() {
        let create = "create /api/v1/namespaces/ns/configmaps";
        let replace = "update /api/v1/namespaces/ns/configmaps/kube-root-ca.crt";
        // (namespace, its ConfigMap, expected calls)
        let cases: Vec<(Namespace, Option<ConfigMap>, Vec<&str>)> = vec![
            (namespace("Active", false), None, vec![create]),
            (
                namespace("Active", false),
                Some(config_map(PEM, true)),
                vec![],
            ),
            (
                namespace("Active", false),
                Some(config_map("old", true)),
                vec![replace],
            ),
            (
                namespace("Active", false),
                Some(config_map(PEM, false)),
                vec![replace],
            ),
            (namespace("Terminating", false), None, vec![]),
            (namespace("Active", true), None, vec![]),
        ];
        for (i, (ns, cm, expected)) in cases.into_iter().enumerate() {
            let fake = RecordingClient::new();
            let (ctx, _rx) = Context::new(Arc::new(fake.clone()), Config::default());
            ctx.informers.namespaces.apply(ns);
            if let Some(cm) = cm {
                ctx.informers.root_ca_config_maps.apply(cm);
            }
            let publisher = RootCaPublisher::new(ctx, PEM.into());
            publisher.reconcile("ns").await.unwrap();
            assert_eq!(fake.short_calls(), expected, "case {i}");
            if let Some(call) = fake.calls().first() {
                assert_eq!(
                    call.body["data"],
                    serde_json::json!({"ca.crt": PEM}),
                    "case {i}"
                );
                assert_eq!(
                    call.body["metadata"]["annotations"][DESCRIPTION_ANNOTATION],
                    serde_json::json!(DESCRIPTION),
                    "case {i}"
                );
            }
        }
    }

    #[tokio::test]
    async fn already_exists_is_not_an_error_and_others_are() {
        for (code, reason, fails) in [(409, "AlreadyExists", false), (500, "InternalError", true)] {
            let fake = RecordingClient::new();
            let (ctx, _rx) = Context::new(Arc::new(fake.clone()), Config::default());
            ctx.informers.namespaces.apply(namespace("Active", false));
            fake.fail_next("/api/v1/namespaces/ns/configmaps", code, reason);
            let result = RootCaPublisher::new(ctx, PEM.into()).reconcile("ns").await;
            assert_eq!(result.is_err(), fails, "{reason}: {result:?}");
        }
    }
}
