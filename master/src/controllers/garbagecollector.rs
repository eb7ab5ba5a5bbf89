//! The garbage collector: deletes objects whose owners are gone, and carries out the
//! `foregroundDeletion` and `orphan` finalizers a DELETE leaves on an owner.
//!
//! It works over the shared caches (every informer kind but Namespaces and Nodes can be a
//! dependent; any kind can be an owner):
//!
//! - **Background.** An object whose `ownerReferences` all point at owners that no longer exist
//!   (absent from the owner's cache and confirmed absent by a GET through the API — a cache may
//!   lag — or found with another UID) is deleted, with its own GC finalizer's policy or
//!   `Background`, and preconditions on its UID and `resourceVersion`. An owner of a kind no
//!   informer watches is read through the API, its absence remembered (UIDs are never reused),
//!   and the dependent looked at again every minute while it lives.
//! - **Foreground.** An owner marked for deletion with `foregroundDeletion` has its dependents
//!   deleted (in foreground themselves when they own objects too); the finalizer is removed once
//!   no dependent with `blockOwnerDeletion: true` is left, so the API removes the owner.
//! - **Orphan.** An owner marked for deletion with `orphan` has its references removed from
//!   every dependent, then the finalizer.
//!
//! A dependent that still has a live owner keeps it; references to gone or foreground-deleting
//! owners are then dropped from it instead, as upstream does.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::client::{path_of, PatchType};
use super::runtime::{self, key, key_of, split_key, Change, Informer};
use super::{Action, Context, Error, Reconciler, WorkQueue};

/// The finalizer that keeps an owner until its blocking dependents are gone.
pub const FOREGROUND: &str = "foregroundDeletion";
/// The finalizer that keeps an owner until no dependent refers to it.
pub const ORPHAN: &str = "orphan";
/// How often a dependent whose live owner no informer watches is looked at again.
const UNWATCHED_OWNER_RECHECK: Duration = Duration::from_secs(60);
/// How often an owner waiting for its dependents is looked at again (their deletions queue it
/// as well).
const FOREGROUND_RECHECK: Duration = Duration::from_secs(10);
/// How many absent owner UIDs are remembered.
const ABSENT_CACHE: usize = 10_000;

/// Reads one object's metadata from a cache by key.
type GetMeta = Box<dyn Fn(&str) -> Option<ObjectMeta> + Send + Sync>;
/// Reads the metadata of the cached objects owned by a UID.
type OwnedBy = Box<dyn Fn(&str) -> Vec<ObjectMeta> + Send + Sync>;

/// One kind the collector reads from a cache.
struct Kind {
    kind: String,
    group: String,
    plural: String,
    namespaced: bool,
    /// Whether objects of this kind are collected when their owners are gone.
    collectable: bool,
    get: GetMeta,
    owned_by: OwnedBy,
    path: fn(Option<&str>, &str) -> String,
}

impl Kind {
    fn of<K>(informer: &Informer<K>, collectable: bool) -> Kind
    where
        K: Resource<DynamicType = ()>
            + Clone
            + DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        let get_from = informer.clone();
        let owned_from = informer.clone();
        Kind {
            kind: K::kind(&()).to_string(),
            group: K::group(&()).to_string(),
            plural: K::plural(&()).to_string(),
            namespaced: crate::controllers::client::is_namespaced::<K>(),
            collectable,
            get: Box::new(move |key| get_from.get(key).map(|o| o.meta().clone())),
            owned_by: Box::new(move |uid| {
                owned_from
                    .owned_by(uid)
                    .iter()
                    .map(|o| o.meta().clone())
                    .collect()
            }),
            path: |ns, name| path_of::<K>(ns, Some(name)),
        }
    }

    /// The queue key of an object of this kind.
    fn queue_key(&self, meta: &ObjectMeta) -> String {
        format!("{}/{}", self.plural, key_of(meta))
    }
}

/// Every cached kind.
fn kinds(ctx: &Context) -> Vec<Kind> {
    let i = &ctx.informers;
    vec![
        Kind::of(&i.pods, true),
        Kind::of(&i.services, true),
        Kind::of(&i.endpoints, true),
        Kind::of(&i.endpoint_slices, true),
        Kind::of(&i.service_accounts, true),
        Kind::of(&i.replica_sets, true),
        Kind::of(&i.deployments, true),
        Kind::of(&i.daemon_sets, true),
        Kind::of(&i.stateful_sets, true),
        Kind::of(&i.controller_revisions, true),
        Kind::of(&i.jobs, true),
        Kind::of(&i.cron_jobs, true),
        Kind::of(&i.node_leases, true),
        Kind::of(&i.nodes, false),
        Kind::of(&i.namespaces, false),
    ]
}

fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

fn has_finalizer(meta: &ObjectMeta, finalizer: &str) -> bool {
    meta.finalizers.iter().flatten().any(|f| f == finalizer)
}

/// What became of one owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// Exists and is not deleting its dependents; `recheck` when no informer tells of its
    /// deletion, so the dependent must be looked at again now and then.
    Solid { recheck: bool },
    /// Exists, marked for deletion with `foregroundDeletion`.
    Waiting,
    /// Gone, or replaced by another object with the name.
    Dangling,
}

/// What to do with a dependent given its owners.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    Keep,
    /// Drop the references to these owner UIDs (gone or deleting while another owner lives).
    RemoveRefs(Vec<String>),
    /// Delete with this propagation policy.
    Delete(&'static str),
}

/// Upstream's `attemptToDeleteItem` classification: keep while a solid owner lives (dropping
/// references to the others); otherwise delete — in foreground when an owner waits on it and
/// it has dependents itself, else as its own finalizers say, else in background.
fn decide(
    owners: &[(&OwnerReference, Owner)],
    has_dependents: bool,
    meta: &ObjectMeta,
) -> Decision {
    if owners.is_empty() {
        return Decision::Keep;
    }
    let solid = owners.iter().any(|(_, o)| matches!(o, Owner::Solid { .. }));
    if solid {
        let drop: Vec<String> = owners
            .iter()
            .filter(|(_, o)| !matches!(o, Owner::Solid { .. }))
            .map(|(r, _)| r.uid.clone())
            .collect();
        return if drop.is_empty() {
            Decision::Keep
        } else {
            Decision::RemoveRefs(drop)
        };
    }
    let waiting = owners.iter().any(|(_, o)| *o == Owner::Waiting);
    if waiting && has_dependents {
        return Decision::Delete("Foreground");
    }
    if has_finalizer(meta, ORPHAN) {
        Decision::Delete("Orphan")
    } else if has_finalizer(meta, FOREGROUND) {
        Decision::Delete("Foreground")
    } else {
        Decision::Delete("Background")
    }
}

pub struct GarbageCollector {
    ctx: Context,
    kinds: Arc<Vec<Kind>>,
    /// UIDs of owners confirmed absent through the API.
    absent: Mutex<HashSet<String>>,
}

/// Registers the loop: objects with owners, owners marked for deletion with a GC finalizer, and
/// the dependents and owners of deleted objects are queued.
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) {
    let queue = WorkQueue::new();
    let gc = Arc::new(GarbageCollector::new(ctx.clone()));
    let i = &ctx.informers;
    watch(&i.pods, &gc.kinds, &queue);
    watch(&i.services, &gc.kinds, &queue);
    watch(&i.endpoints, &gc.kinds, &queue);
    watch(&i.endpoint_slices, &gc.kinds, &queue);
    watch(&i.service_accounts, &gc.kinds, &queue);
    watch(&i.replica_sets, &gc.kinds, &queue);
    watch(&i.deployments, &gc.kinds, &queue);
    watch(&i.daemon_sets, &gc.kinds, &queue);
    watch(&i.stateful_sets, &gc.kinds, &queue);
    watch(&i.controller_revisions, &gc.kinds, &queue);
    watch(&i.jobs, &gc.kinds, &queue);
    watch(&i.cron_jobs, &gc.kinds, &queue);
    watch(&i.node_leases, &gc.kinds, &queue);
    watch(&i.nodes, &gc.kinds, &queue);
    watch(&i.namespaces, &gc.kinds, &queue);
    tasks.spawn(runtime::run(gc, queue, ctx.config.concurrent_syncs));
}

fn watch<K>(informer: &Informer<K>, kinds: &Arc<Vec<Kind>>, queue: &WorkQueue)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let kinds = kinds.clone();
    let queue = queue.clone();
    let plural = K::plural(&()).to_string();
    informer.on_change(move |change| {
        let meta = change.object().meta();
        let own_key = format!("{plural}/{}", key_of(meta));
        let owners = || {
            for r in meta.owner_references.iter().flatten() {
                if let Some(k) = owner_kind(&kinds, r) {
                    let ns = if k.namespaced {
                        meta.namespace.as_deref()
                    } else {
                        None
                    };
                    queue.add(format!("{}/{}", k.plural, key(ns, &r.name)));
                }
            }
        };
        match change {
            Change::Applied { .. } => {
                let refs = meta
                    .owner_references
                    .as_ref()
                    .is_some_and(|r| !r.is_empty());
                let deleting = meta.deletion_timestamp.is_some();
                let gc_finalizer = has_finalizer(meta, ORPHAN) || has_finalizer(meta, FOREGROUND);
                if refs || (deleting && gc_finalizer) {
                    queue.add(own_key);
                }
                if deleting {
                    owners();
                }
            }
            Change::Deleted(_) => {
                owners();
                let Some(uid) = meta.uid.as_deref() else {
                    return;
                };
                for k in kinds.iter() {
                    for dependent in (k.owned_by)(uid) {
                        queue.add(k.queue_key(&dependent));
                    }
                }
            }
        }
    });
}

fn owner_kind<'a>(kinds: &'a [Kind], r: &OwnerReference) -> Option<&'a Kind> {
    let group = group_of(&r.api_version);
    kinds.iter().find(|k| k.kind == r.kind && k.group == group)
}

impl GarbageCollector {
    pub fn new(ctx: Context) -> Self {
        let kinds = Arc::new(kinds(&ctx));
        GarbageCollector {
            ctx,
            kinds,
            absent: Mutex::default(),
        }
    }

    fn is_absent(&self, uid: &str) -> bool {
        self.absent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(uid)
    }

    fn remember_absent(&self, uid: &str) {
        let mut absent = self.absent.lock().unwrap_or_else(|p| p.into_inner());
        if absent.len() >= ABSENT_CACHE {
            absent.clear();
        }
        absent.insert(uid.to_string());
    }

    /// Every cached object that names `uid` as an owner, with its kind.
    fn dependents(&self, uid: &str) -> Vec<(&Kind, ObjectMeta)> {
        self.kinds
            .iter()
            .flat_map(|k| (k.owned_by)(uid).into_iter().map(move |m| (k, m)))
            .collect()
    }

    /// The owner `r` of a dependent in `namespace`: from its cache when one keeps it, confirmed
    /// through the API before it counts as gone.
    async fn owner(&self, namespace: Option<&str>, r: &OwnerReference) -> Result<Owner, Error> {
        if self.is_absent(&r.uid) {
            return Ok(Owner::Dangling);
        }
        let classify = |meta: &ObjectMeta, recheck: bool| {
            if meta.uid.as_deref() != Some(r.uid.as_str()) {
                Owner::Dangling
            } else if meta.deletion_timestamp.is_some() && has_finalizer(meta, FOREGROUND) {
                Owner::Waiting
            } else {
                Owner::Solid { recheck }
            }
        };
        let group = group_of(&r.api_version);
        let (path, recheck) = match owner_kind(&self.kinds, r) {
            Some(k) => {
                let ns = if k.namespaced { namespace } else { None };
                if let Some(meta) = (k.get)(&key(ns, &r.name)) {
                    let found = classify(&meta, false);
                    if found != Owner::Dangling {
                        return Ok(found);
                    }
                }
                ((k.path)(ns, &r.name), false)
            }
            None => {
                let found = crate::api::resources::RESOURCES
                    .iter()
                    .find(|res| res.kind == r.kind && res.group == group);
                let Some(res) = found else {
                    // Not a kind this API serves: never treated as gone.
                    tracing::debug!(
                        kind = r.kind,
                        api_version = r.api_version,
                        "owner kind unknown; keeping dependent"
                    );
                    return Ok(Owner::Solid { recheck: false });
                };
                let ns = if res.namespaced { namespace } else { None };
                (api_path(res, ns, &r.name), true)
            }
        };
        match self.ctx.api.raw().get(&path).await {
            Ok(value) => {
                let meta: ObjectMeta = value
                    .get("metadata")
                    .cloned()
                    .and_then(|m| serde_json::from_value(m).ok())
                    .unwrap_or_default();
                let found = classify(&meta, recheck);
                if found == Owner::Dangling {
                    self.remember_absent(&r.uid);
                }
                Ok(found)
            }
            Err(e) if e.is_not_found() => {
                self.remember_absent(&r.uid);
                Ok(Owner::Dangling)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes `meta` (of kind `k`) if none of its owners is left, or drops references to gone
    /// owners while one lives.
    async fn attempt_delete(&self, k: &Kind, meta: &ObjectMeta) -> Result<Action, Error> {
        let refs = meta.owner_references.clone().unwrap_or_default();
        let mut owners = Vec::with_capacity(refs.len());
        for r in &refs {
            owners.push((r, self.owner(meta.namespace.as_deref(), r).await?));
        }
        let uid = meta.uid.clone().unwrap_or_default();
        let has_dependents = !self.dependents(&uid).is_empty();
        let recheck = owners
            .iter()
            .any(|(_, o)| *o == Owner::Solid { recheck: true });
        let name = meta.name.as_deref().unwrap_or_default();
        let ns = meta.namespace.as_deref().filter(|n| !n.is_empty());
        let path = (k.path)(ns, name);
        match decide(&owners, has_dependents, meta) {
            Decision::Keep => {}
            Decision::RemoveRefs(uids) => {
                let rest: Vec<&OwnerReference> =
                    refs.iter().filter(|r| !uids.contains(&r.uid)).collect();
                let patch = json!({"metadata": {
                    "ownerReferences": rest,
                    "resourceVersion": meta.resource_version,
                }});
                self.patch(&path, patch).await?;
            }
            Decision::Delete(policy) => {
                let options = json!({
                    "propagationPolicy": policy,
                    "preconditions": {"uid": uid, "resourceVersion": meta.resource_version},
                });
                match self.ctx.api.raw().delete(&path, options).await {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
                tracing::info!(
                    kind = k.kind,
                    object = key_of(meta),
                    policy,
                    "deleting: its owners are gone"
                );
                return Ok(Action::Done);
            }
        }
        Ok(if recheck {
            Action::RequeueAfter(UNWATCHED_OWNER_RECHECK)
        } else {
            Action::Done
        })
    }

    async fn patch(&self, path: &str, patch: Value) -> Result<(), Error> {
        match self
            .ctx
            .api
            .raw()
            .patch(path, PatchType::Merge, patch)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes `finalizer` from the owner `meta`.
    async fn remove_finalizer(
        &self,
        k: &Kind,
        meta: &ObjectMeta,
        finalizer: &str,
    ) -> Result<(), Error> {
        let rest: Vec<&String> = meta
            .finalizers
            .iter()
            .flatten()
            .filter(|f| *f != finalizer)
            .collect();
        let name = meta.name.as_deref().unwrap_or_default();
        let ns = meta.namespace.as_deref().filter(|n| !n.is_empty());
        let patch = json!({"metadata": {
            "finalizers": rest,
            "resourceVersion": meta.resource_version,
        }});
        self.patch(&(k.path)(ns, name), patch).await
    }

    /// `foregroundDeletion`: delete the dependents; drop the finalizer once no blocking one is
    /// left.
    async fn foreground(&self, k: &Kind, owner: &ObjectMeta) -> Result<Action, Error> {
        let uid = owner.uid.clone().unwrap_or_default();
        let dependents = self.dependents(&uid);
        let blocking = dependents.iter().any(|(_, m)| {
            m.owner_references
                .iter()
                .flatten()
                .any(|r| r.uid == uid && r.block_owner_deletion == Some(true))
        });
        if !blocking {
            self.remove_finalizer(k, owner, FOREGROUND).await?;
            tracing::info!(
                kind = k.kind,
                object = key_of(owner),
                "dependents deleted; owner released"
            );
            return Ok(Action::Done);
        }
        for (dk, dependent) in &dependents {
            if dk.collectable && dependent.deletion_timestamp.is_none() {
                self.attempt_delete(dk, dependent).await?;
            }
        }
        Ok(Action::RequeueAfter(FOREGROUND_RECHECK))
    }

    /// `orphan`: remove the references to the owner from its dependents, then the finalizer.
    async fn orphan(&self, k: &Kind, owner: &ObjectMeta) -> Result<Action, Error> {
        let uid = owner.uid.clone().unwrap_or_default();
        for (dk, dependent) in self.dependents(&uid) {
            let rest: Vec<&OwnerReference> = dependent
                .owner_references
                .iter()
                .flatten()
                .filter(|r| r.uid != uid)
                .collect();
            let name = dependent.name.as_deref().unwrap_or_default();
            let ns = dependent.namespace.as_deref().filter(|n| !n.is_empty());
            let patch = json!({"metadata": {
                "ownerReferences": if rest.is_empty() { Value::Null } else { json!(rest) },
                "resourceVersion": dependent.resource_version,
            }});
            self.patch(&(dk.path)(ns, name), patch).await?;
        }
        self.remove_finalizer(k, owner, ORPHAN).await?;
        tracing::info!(
            kind = k.kind,
            object = key_of(owner),
            "dependents orphaned; owner released"
        );
        Ok(Action::Done)
    }
}

/// The API path of `name` of the served resource `r`.
fn api_path(r: &crate::api::resources::Resource, namespace: Option<&str>, name: &str) -> String {
    let base = if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    };
    match namespace {
        Some(ns) => format!("{base}/namespaces/{ns}/{}/{name}", r.plural),
        None => format!("{base}/{}/{name}", r.plural),
    }
}

#[async_trait::async_trait]
impl Reconciler for GarbageCollector {
    fn name(&self) -> &'static str {
        "garbagecollector"
    }

    async fn reconcile(&self, queue_key: &str) -> Result<Action, Error> {
        // Owners are judged from complete caches only.
        self.ctx.informers.wait_synced().await;
        let Some((plural, object_key)) = queue_key.split_once('/') else {
            return Ok(Action::Done);
        };
        let Some(k) = self.kinds.iter().find(|k| k.plural == plural) else {
            return Ok(Action::Done);
        };
        let (ns, name) = split_key(object_key);
        let Some(meta) = (k.get)(&key(ns, name)) else {
            return Ok(Action::Done);
        };
        if meta.deletion_timestamp.is_some() {
            if has_finalizer(&meta, ORPHAN) {
                return self.orphan(k, &meta).await;
            }
            if has_finalizer(&meta, FOREGROUND) {
                return self.foreground(k, &meta).await;
            }
            return Ok(Action::Done);
        }
        if k.collectable
            && meta
                .owner_references
                .as_ref()
                .is_some_and(|r| !r.is_empty())
        {
            return self.attempt_delete(k, &meta).await;
        }
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::client::RecordingClient;
    use crate::controllers::Config;
    use k8s_openapi::api::apps::v1::ReplicaSet;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn setup() -> (GarbageCollector, RecordingClient) {
        let fake = RecordingClient::new();
        let (ctx, _rx) = Context::new(Arc::new(fake.clone()), Config::default());
        let i = &ctx.informers;
        i.pods.mark_synced();
        i.nodes.mark_synced();
        i.namespaces.mark_synced();
        i.services.mark_synced();
        i.endpoints.mark_synced();
        i.endpoint_slices.mark_synced();
        i.service_accounts.mark_synced();
        i.root_ca_config_maps.mark_synced();
        i.replica_sets.mark_synced();
        i.deployments.mark_synced();
        i.daemon_sets.mark_synced();
        i.stateful_sets.mark_synced();
        i.controller_revisions.mark_synced();
        i.jobs.mark_synced();
        i.cron_jobs.mark_synced();
        i.node_leases.mark_synced();
        (GarbageCollector::new(ctx), fake)
    }

    fn owner(kind: &str, api_version: &str, name: &str, uid: &str, block: bool) -> OwnerReference {
        OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: block.then_some(true),
        }
    }

    fn rs_ref(name: &str, uid: &str) -> OwnerReference {
        owner("ReplicaSet", "apps/v1", name, uid, true)
    }

    fn meta(name: &str, uid: &str, owners: Vec<OwnerReference>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            uid: Some(uid.into()),
            resource_version: Some("3".into()),
            owner_references: (!owners.is_empty()).then_some(owners),
            ..Default::default()
        }
    }

    fn pod(name: &str, owners: Vec<OwnerReference>) -> Pod {
        Pod {
            metadata: meta(name, &format!("uid-{name}"), owners),
            ..Default::default()
        }
    }

    fn rs(name: &str, uid: &str, finalizer: Option<&str>) -> ReplicaSet {
        let mut m = meta(name, uid, vec![]);
        if let Some(f) = finalizer {
            m.finalizers = Some(vec![f.into()]);
            m.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        }
        ReplicaSet {
            metadata: m,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn orphans_are_deleted_and_owned_objects_kept() {
        let (gc, fake) = setup();
        let i = &gc.ctx.informers;
        i.replica_sets.apply(rs("web-1", "rs1", None));
        i.pods.apply(pod("owned", vec![rs_ref("web-1", "rs1")]));
        i.pods.apply(pod("orphan", vec![rs_ref("old", "rs-gone")]));
        i.pods
            .apply(pod("replaced", vec![rs_ref("web-1", "rs-previous")]));
        i.pods.apply(pod(
            "half",
            vec![rs_ref("old", "rs-gone"), rs_ref("web-1", "rs1")],
        ));
        i.pods.apply(pod(
            "by-configmap",
            vec![owner("ConfigMap", "v1", "cfg", "cm1", false)],
        ));
        i.pods.apply(pod(
            "by-dead-configmap",
            vec![owner("ConfigMap", "v1", "dead", "cm2", false)],
        ));
        i.pods.apply(pod(
            "by-unknown-kind",
            vec![owner("Widget", "example.com/v1", "w", "w1", false)],
        ));
        fake.set_object(
            "/api/v1/namespaces/default/configmaps/cfg",
            json!({"metadata": {"name": "cfg", "uid": "cm1"}}),
        );
        let rs_path = "/apis/apps/v1/namespaces/default/replicasets";
        let pods = "/api/v1/namespaces/default/pods";
        let cases: Vec<(&str, Vec<String>, Action)> = vec![
            ("owned", vec![], Action::Done),
            (
                "orphan",
                vec![
                    format!("get {rs_path}/old"),
                    format!("delete {pods}/orphan"),
                ],
                Action::Done,
            ),
            (
                "replaced",
                vec![
                    format!("get {rs_path}/web-1"),
                    format!("delete {pods}/replaced"),
                ],
                Action::Done,
            ),
            // "old" is remembered as absent: no second GET.
            ("half", vec![format!("patch {pods}/half")], Action::Done),
            (
                "by-configmap",
                vec!["get /api/v1/namespaces/default/configmaps/cfg".into()],
                Action::RequeueAfter(UNWATCHED_OWNER_RECHECK),
            ),
            (
                "by-dead-configmap",
                vec![
                    "get /api/v1/namespaces/default/configmaps/dead".into(),
                    format!("delete {pods}/by-dead-configmap"),
                ],
                Action::Done,
            ),
            ("by-unknown-kind", vec![], Action::Done),
        ];
        for (name, calls, action) in cases {
            fake.clear();
            let got = gc.reconcile(&format!("pods/default/{name}")).await.unwrap();
            assert_eq!((fake.short_calls(), got), (calls, action), "{name}");
        }
        // The deletion is preconditioned and in background; the patch keeps the live owner.
        fake.clear();
        gc.reconcile("pods/default/orphan").await.unwrap();
        let body = &fake.calls()[0].body;
        assert_eq!(body["propagationPolicy"], "Background");
        assert_eq!(body["preconditions"]["uid"], "uid-orphan");
        assert_eq!(body["preconditions"]["resourceVersion"], "3");
        fake.clear();
        gc.reconcile("pods/default/half").await.unwrap();
        let refs = &fake.calls()[0].body["metadata"]["ownerReferences"];
        assert_eq!(refs.as_array().unwrap().len(), 1);
        assert_eq!(refs[0]["uid"], "rs1");
    }

    #[tokio::test]
    async fn foreground_deletes_dependents_and_waits_for_the_blocking_ones() {
        let (gc, fake) = setup();
        let i = &gc.ctx.informers;
        i.replica_sets.apply(rs("fg", "fg1", Some(FOREGROUND)));
        let blocking = pod("blocking", vec![rs_ref("fg", "fg1")]);
        i.pods.apply(blocking.clone());
        i.pods.apply(pod(
            "loose",
            vec![owner("ReplicaSet", "apps/v1", "fg", "fg1", false)],
        ));
        let mut leaving = pod("leaving", vec![rs_ref("fg", "fg1")]);
        leaving.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        i.pods.apply(leaving.clone());

        let action = gc.reconcile("replicasets/default/fg").await.unwrap();
        assert_eq!(action, Action::RequeueAfter(FOREGROUND_RECHECK));
        assert_eq!(
            fake.short_calls(),
            vec![
                "delete /api/v1/namespaces/default/pods/blocking",
                "delete /api/v1/namespaces/default/pods/loose",
            ]
        );

        // The blocking pods are gone; the loose one does not hold the owner.
        fake.clear();
        i.pods.delete(&blocking);
        i.pods.delete(&leaving);
        let action = gc.reconcile("replicasets/default/fg").await.unwrap();
        assert_eq!(action, Action::Done);
        assert_eq!(
            fake.short_calls(),
            vec!["patch /apis/apps/v1/namespaces/default/replicasets/fg"]
        );
        let body = &fake.calls()[0].body;
        assert_eq!(body["metadata"]["finalizers"], json!([]));
        assert_eq!(body["metadata"]["resourceVersion"], "3");
    }

    #[tokio::test]
    async fn orphan_strips_owner_references_then_the_finalizer() {
        let (gc, fake) = setup();
        let i = &gc.ctx.informers;
        i.replica_sets.apply(rs("web-1", "rs1", None));
        i.replica_sets.apply(rs("or", "or1", Some(ORPHAN)));
        i.pods.apply(pod("only", vec![rs_ref("or", "or1")]));
        i.pods.apply(pod(
            "shared",
            vec![rs_ref("or", "or1"), rs_ref("web-1", "rs1")],
        ));
        let action = gc.reconcile("replicasets/default/or").await.unwrap();
        assert_eq!(action, Action::Done);
        assert_eq!(
            fake.short_calls(),
            vec![
                "patch /api/v1/namespaces/default/pods/only",
                "patch /api/v1/namespaces/default/pods/shared",
                "patch /apis/apps/v1/namespaces/default/replicasets/or",
            ]
        );
        let calls = fake.calls();
        assert_eq!(calls[0].body["metadata"]["ownerReferences"], Value::Null);
        assert_eq!(
            calls[1].body["metadata"]["ownerReferences"][0]["uid"],
            "rs1"
        );
        assert_eq!(calls[2].body["metadata"]["finalizers"], json!([]));
        // Owners being deleted without a GC finalizer are not acted on.
        fake.clear();
        let mut plain = rs("plain", "p1", Some("example.com/other"));
        plain.metadata.finalizers = Some(vec!["example.com/other".into()]);
        i.replica_sets.apply(plain);
        assert_eq!(
            gc.reconcile("replicasets/default/plain").await.unwrap(),
            Action::Done
        );
        assert!(fake.calls().is_empty());
    }

    #[test]
    fn decisions_follow_attempt_to_delete_item() {
        let a = rs_ref("a", "a");
        let b = rs_ref("b", "b");
        let m = meta("x", "x", vec![]);
        let mut orphaning = m.clone();
        orphaning.finalizers = Some(vec![ORPHAN.into()]);
        let solid = Owner::Solid { recheck: false };
        type Case<'a> = (
            Vec<(&'a OwnerReference, Owner)>,
            bool,
            &'a ObjectMeta,
            Decision,
        );
        let cases: Vec<Case> = vec![
            (vec![], false, &m, Decision::Keep),
            (vec![(&a, solid)], false, &m, Decision::Keep),
            (
                vec![(&a, solid), (&b, Owner::Dangling)],
                false,
                &m,
                Decision::RemoveRefs(vec!["b".into()]),
            ),
            (
                vec![(&a, solid), (&b, Owner::Waiting)],
                false,
                &m,
                Decision::RemoveRefs(vec!["b".into()]),
            ),
            (
                vec![(&a, Owner::Dangling)],
                false,
                &m,
                Decision::Delete("Background"),
            ),
            (
                vec![(&a, Owner::Waiting)],
                true,
                &m,
                Decision::Delete("Foreground"),
            ),
            (
                vec![(&a, Owner::Waiting)],
                false,
                &m,
                Decision::Delete("Background"),
            ),
            (
                vec![(&a, Owner::Dangling)],
                true,
                &orphaning,
                Decision::Delete("Orphan"),
            ),
        ];
        for (owners, has_dependents, meta, expected) in cases {
            assert_eq!(
                decide(&owners, has_dependents, meta),
                expected,
                "{owners:?}"
            );
        }
    }

    #[test]
    fn deleting_an_owner_queues_its_dependents() {
        let (gc, _fake) = setup();
        let queue = WorkQueue::new();
        let i = &gc.ctx.informers;
        watch(&i.pods, &gc.kinds, &queue);
        watch(&i.replica_sets, &gc.kinds, &queue);
        let owner = rs("web-1", "rs1", None);
        i.replica_sets.apply(owner.clone());
        assert!(
            queue.is_empty(),
            "an owner without a GC finalizer is not queued"
        );
        i.pods.apply(pod("a", vec![rs_ref("web-1", "rs1")]));
        assert_eq!(queue.try_next().as_deref(), Some("pods/default/a"));
        queue.done("pods/default/a");
        i.replica_sets.delete(&owner);
        assert_eq!(queue.try_next().as_deref(), Some("pods/default/a"));
    }
}
