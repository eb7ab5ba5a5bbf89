//! The machinery every control loop shares, in the shape of kube-rs and client-go:
//!
//! - [`Informer`]: one watch per kind feeding a cache (the reflector) and change callbacks, shared
//!   by every controller that reads that kind, so 30,000 pods are held once, not once per loop.
//!   A [compact](Informer::compact) informer holds each object serialised and decodes it on
//!   each read: a decoded k8s-openapi `Pod` costs about 7.5 KB, its JSON a fifth of that.
//! - [`WorkQueue`]: deduplicated keys, delayed requeues and per-key exponential backoff; a key is
//!   never reconciled by two workers at once, and a key added while it is being reconciled is
//!   reconciled again afterwards.
//! - [`run`]: workers that pop keys and call a [`Reconciler`], requeueing on error.
//!
//! A reconcile compares desired with observed state from the caches and never assumes it saw
//! every event; the queue only says *which* object to look at again.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::fmt::Debug;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt as _;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::Error;

/// A cache key: `namespace/name` for namespaced objects, `name` for cluster-scoped ones.
pub type Key = String;

/// The cache key of an object's metadata.
pub fn key_of(meta: &ObjectMeta) -> Key {
    key(
        meta.namespace.as_deref(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

/// The cache key of `name` in `namespace` (`None` for cluster-scoped objects).
pub fn key(namespace: Option<&str>, name: &str) -> Key {
    match namespace {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}

/// Splits a key into its namespace (if any) and name.
pub fn split_key(key: &str) -> (Option<&str>, &str) {
    match key.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, key),
    }
}

/// What changed in an informer's cache.
pub enum Change<'a, K> {
    /// Added (`old` is `None`) or modified.
    Applied { old: Option<&'a K>, new: &'a K },
    /// Removed; the last state the cache held.
    Deleted(&'a K),
}

impl<K> Change<'_, K> {
    /// The object as it is now, or as it was last seen for a deletion.
    pub fn object(&self) -> &K {
        match self {
            Change::Applied { new, .. } => new,
            Change::Deleted(old) => old,
        }
    }
}

type Handler<K> = Box<dyn Fn(&Change<'_, K>) + Send + Sync>;

/// Labels, as in `metadata.labels`.
pub type Labels = BTreeMap<String, String>;

/// One cached object.
enum Slot<K> {
    /// Decoded once, shared by every reader.
    Decoded(Arc<K>),
    /// Serialised; decoded by each reader.
    Compact(Arc<Compact>),
}

impl<K> Clone for Slot<K> {
    fn clone(&self) -> Self {
        match self {
            Slot::Decoded(obj) => Slot::Decoded(obj.clone()),
            Slot::Compact(c) => Slot::Compact(c.clone()),
        }
    }
}

/// An object as a compact informer holds it: its JSON, its labels so that selectors pick
/// objects without decoding the others, and its owners' UIDs for the owner index.
struct Compact {
    labels: Option<Labels>,
    owners: Box<[String]>,
    json: Box<[u8]>,
}

impl<K: Resource<DynamicType = ()> + DeserializeOwned> Slot<K> {
    fn labels(&self) -> Option<&Labels> {
        match self {
            Slot::Decoded(obj) => obj.meta().labels.as_ref(),
            Slot::Compact(c) => c.labels.as_ref(),
        }
    }

    /// The UIDs in its `ownerReferences`.
    fn owners(&self) -> Vec<&str> {
        match self {
            Slot::Decoded(obj) => owner_uids(obj.meta()).collect(),
            Slot::Compact(c) => c.owners.iter().map(String::as_str).collect(),
        }
    }

    /// The object, decoded if need be. Decoding what this cache encoded fails only if the
    /// type's serde implementations disagree with each other; such an object is logged and
    /// treated as absent.
    fn object(&self) -> Option<Arc<K>> {
        match self {
            Slot::Decoded(obj) => Some(obj.clone()),
            Slot::Compact(c) => match serde_json::from_slice(&c.json) {
                Ok(obj) => Some(Arc::new(obj)),
                Err(e) => {
                    tracing::error!(kind = %K::kind(&()), error = %e, "cannot decode a cached object");
                    None
                }
            },
        }
    }
}

struct Cache<K> {
    objects: BTreeMap<Key, Slot<K>>,
    /// Owner UID → keys of the objects that name it in `ownerReferences`. Compact objects are
    /// indexed too, so their owners find them without decoding the rest.
    by_owner: HashMap<String, BTreeSet<Key>>,
}

struct InformerInner<K> {
    cache: RwLock<Cache<K>>,
    handlers: RwLock<Vec<Handler<K>>>,
    synced: tokio::sync::watch::Sender<bool>,
    /// Hold objects serialised ([`Informer::compact`]).
    compact: bool,
}

/// A shared cache of one kind, kept by one watch, with callbacks on every change.
///
/// Tests fill it directly with [`Informer::apply`]; in the master, [`Informer::run`] drives it
/// from the API.
pub struct Informer<K> {
    inner: Arc<InformerInner<K>>,
}

impl<K> Clone for Informer<K> {
    fn clone(&self) -> Self {
        Informer {
            inner: self.inner.clone(),
        }
    }
}

impl<K> Default for Informer<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug
        + Send
        + Sync
        + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug
        + Send
        + Sync
        + 'static,
{
    /// An informer that holds each object decoded, shared by every reader.
    pub fn new() -> Self {
        Self::with_storage(false)
    }

    /// An informer that holds each object as JSON and decodes it on every read (`get`, `list`
    /// …; callbacks get the decoded object as it arrives, and the old one decoded once). For
    /// kinds with many objects and few reads per change: pods.
    pub fn compact() -> Self {
        Self::with_storage(true)
    }

    fn with_storage(compact: bool) -> Self {
        Informer {
            inner: Arc::new(InformerInner {
                cache: RwLock::new(Cache {
                    objects: BTreeMap::new(),
                    by_owner: HashMap::new(),
                }),
                handlers: RwLock::new(Vec::new()),
                synced: tokio::sync::watch::Sender::new(false),
                compact,
            }),
        }
    }

    /// The slot that holds `obj`, and `obj` itself (decoded) for the callbacks.
    fn slot(&self, obj: K) -> (Slot<K>, Arc<K>) {
        let obj = Arc::new(obj);
        if !self.inner.compact {
            return (Slot::Decoded(obj.clone()), obj);
        }
        match serde_json::to_vec(&*obj) {
            Ok(json) => {
                let compact = Compact {
                    labels: obj.meta().labels.clone(),
                    owners: owner_uids(obj.meta()).map(str::to_string).collect(),
                    json: json.into_boxed_slice(),
                };
                (Slot::Compact(Arc::new(compact)), obj)
            }
            // Serialising a k8s-openapi object cannot fail; keep it decoded if it ever does.
            Err(e) => {
                tracing::error!(kind = %K::kind(&()), error = %e, "cannot serialise an object; caching it decoded");
                (Slot::Decoded(obj.clone()), obj)
            }
        }
    }

    /// Decodes `slots` outside the cache's lock.
    fn objects(slots: Vec<Slot<K>>) -> Vec<Arc<K>> {
        slots.iter().filter_map(Slot::object).collect()
    }

    /// Registers a callback for every change. Callbacks run on the informer's task with no lock
    /// held, so they may read any cache; they should only enqueue keys and return.
    pub fn on_change(&self, handler: impl Fn(&Change<'_, K>) + Send + Sync + 'static) {
        write(&self.inner.handlers).push(Box::new(handler));
    }

    /// The cached object under `key`.
    pub fn get(&self, key: &str) -> Option<Arc<K>> {
        let slot = read(&self.inner.cache).objects.get(key).cloned();
        slot?.object()
    }

    /// The cached object `name` in `namespace` (`None` for cluster-scoped kinds).
    pub fn get_in(&self, namespace: Option<&str>, name: &str) -> Option<Arc<K>> {
        self.get(&key(namespace, name))
    }

    /// Every cached object, in key order.
    pub fn list(&self) -> Vec<Arc<K>> {
        let slots = read(&self.inner.cache).objects.values().cloned().collect();
        Self::objects(slots)
    }

    /// The cached objects for which `keep` holds, in key order. A compact informer decodes
    /// one object at a time and keeps only those, instead of all of them at once.
    pub fn list_where(&self, keep: impl Fn(&K) -> bool) -> Vec<Arc<K>> {
        let slots: Vec<Slot<K>> = read(&self.inner.cache).objects.values().cloned().collect();
        slots
            .iter()
            .filter_map(Slot::object)
            .filter(|o| keep(o))
            .collect()
    }

    /// Every cached object in `namespace`, in name order.
    pub fn list_in(&self, namespace: &str) -> Vec<Arc<K>> {
        self.list_in_labelled(namespace, |_| true)
    }

    /// The cached objects in `namespace` whose labels pass `select` (`None`: no labels), in name
    /// order. Only those are decoded.
    pub fn list_in_labelled(
        &self,
        namespace: &str,
        select: impl Fn(Option<&Labels>) -> bool,
    ) -> Vec<Arc<K>> {
        let from = format!("{namespace}/");
        // '0' sorts right after '/', so the range is exactly the keys with this prefix.
        let to = format!("{namespace}0");
        let slots = read(&self.inner.cache)
            .objects
            .range(from..to)
            .filter(|(_, o)| select(o.labels()))
            .map(|(_, o)| o.clone())
            .collect();
        Self::objects(slots)
    }

    /// The cached objects whose `ownerReferences` name the owner with this UID.
    pub fn owned_by(&self, owner_uid: &str) -> Vec<Arc<K>> {
        let slots = {
            let cache = read(&self.inner.cache);
            cache
                .by_owner
                .get(owner_uid)
                .into_iter()
                .flatten()
                .filter_map(|k| cache.objects.get(k).cloned())
                .collect()
        };
        Self::objects(slots)
    }

    /// How many objects the cache holds.
    pub fn len(&self) -> usize {
        read(&self.inner.cache).objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the first full list has been loaded.
    pub fn is_synced(&self) -> bool {
        *self.inner.synced.borrow()
    }

    /// Waits until the first full list has been loaded.
    pub async fn wait_synced(&self) {
        let mut rx = self.inner.synced.subscribe();
        // The sender lives as long as `self`, so this only ends when synced.
        let _ = rx.wait_for(|synced| *synced).await;
    }

    /// Marks the cache as loaded (tests that fill it by hand call this).
    pub fn mark_synced(&self) {
        self.inner.synced.send_replace(true);
    }

    /// Stores `obj` (added or modified) and tells the callbacks.
    pub fn apply(&self, obj: K) {
        let (slot, new) = self.slot(obj);
        let key = key_of(new.meta());
        let old = {
            let mut cache = write(&self.inner.cache);
            let old = cache.objects.insert(key.clone(), slot);
            if let Some(old) = &old {
                unindex(&mut cache.by_owner, &old.owners(), &key);
            }
            index(&mut cache.by_owner, owner_uids(new.meta()), &key);
            old
        };
        let old = old.and_then(|o| o.object());
        self.notify(&Change::Applied {
            old: old.as_deref(),
            new: &new,
        });
    }

    /// Removes the object under `obj`'s key and tells the callbacks.
    pub fn delete(&self, obj: &K) {
        let key = key_of(obj.meta());
        let old = {
            let mut cache = write(&self.inner.cache);
            let old = cache.objects.remove(&key);
            if let Some(old) = &old {
                unindex(&mut cache.by_owner, &old.owners(), &key);
            }
            old
        };
        // The last state we held, or what the watch said if we never held it.
        match old.and_then(|o| o.object()) {
            Some(old) => self.notify(&Change::Deleted(&old)),
            None => self.notify(&Change::Deleted(obj)),
        }
    }

    /// Replaces the whole cache after a (re-)list: applies every listed object and deletes the
    /// cached ones the list no longer has.
    pub fn replace_all(&self, objs: Vec<K>) {
        let listed: HashSet<Key> = objs.iter().map(|o| key_of(o.meta())).collect();
        let gone: Vec<Slot<K>> = read(&self.inner.cache)
            .objects
            .iter()
            .filter(|(k, _)| !listed.contains(*k))
            .map(|(_, o)| o.clone())
            .collect();
        let gone = Self::objects(gone);
        for obj in objs {
            let unchanged = self.get(&key_of(obj.meta())).is_some_and(|cur| {
                cur.meta().resource_version.is_some()
                    && cur.meta().resource_version == obj.meta().resource_version
            });
            if !unchanged {
                self.apply(obj);
            }
        }
        for obj in gone {
            self.delete(&obj);
        }
        self.mark_synced();
    }

    fn notify(&self, change: &Change<'_, K>) {
        for handler in read(&self.inner.handlers).iter() {
            handler(change);
        }
    }

    /// Keeps the cache in step with the API until the task is dropped: list, then watch,
    /// re-listing after errors with kube's default backoff.
    pub async fn run(self, api: kube::Api<K>, config: watcher::Config) {
        let kind = K::kind(&()).to_string();
        let stream = watcher(api, config).default_backoff();
        futures::pin_mut!(stream);
        let mut buffer: Vec<K> = Vec::new();
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Init) => buffer.clear(),
                Ok(watcher::Event::InitApply(obj)) => buffer.push(obj),
                Ok(watcher::Event::InitDone) => {
                    let objs = std::mem::take(&mut buffer);
                    tracing::debug!(kind, count = objs.len(), "informer listed");
                    self.replace_all(objs);
                }
                Ok(watcher::Event::Apply(obj)) => self.apply(obj),
                Ok(watcher::Event::Delete(obj)) => self.delete(&obj),
                Err(e) => tracing::warn!(kind, error = %e, "watch failed; retrying with backoff"),
            }
        }
    }
}

fn owner_uids(meta: &ObjectMeta) -> impl Iterator<Item = &str> {
    meta.owner_references
        .iter()
        .flatten()
        .map(|owner| owner.uid.as_str())
}

fn index<'a>(
    by_owner: &mut HashMap<String, BTreeSet<Key>>,
    owners: impl Iterator<Item = &'a str>,
    key: &Key,
) {
    for uid in owners {
        by_owner
            .entry(uid.to_string())
            .or_default()
            .insert(key.clone());
    }
}

fn unindex(by_owner: &mut HashMap<String, BTreeSet<Key>>, owners: &[&str], key: &Key) {
    for &uid in owners {
        if let Some(keys) = by_owner.get_mut(uid) {
            keys.remove(key);
            if keys.is_empty() {
                by_owner.remove(uid);
            }
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing until something changes.
    Done,
    /// Look again after this long even if nothing changes (deadlines, TTLs, schedules).
    RequeueAfter(Duration),
}

/// One control loop: makes the world match the object under a key. Must be idempotent.
#[async_trait::async_trait]
pub trait Reconciler: Send + Sync + 'static {
    /// The loop's name in logs (`Deployment`, `scheduler` …).
    fn name(&self) -> &'static str;
    /// Brings the object under `key` (which may no longer exist) toward its desired state.
    async fn reconcile(&self, key: &str) -> Result<Action, Error>;
}

/// The first retry after a failed reconcile; each further failure doubles it.
const BACKOFF_BASE: Duration = Duration::from_millis(5);
/// The longest wait between retries of a failing key.
const BACKOFF_MAX: Duration = Duration::from_secs(300);

#[derive(Default)]
struct QueueState {
    ready: VecDeque<Key>,
    queued: HashSet<Key>,
    processing: HashSet<Key>,
    /// Keys added while being processed: queued again when done.
    again: HashSet<Key>,
    /// Deadline-ordered delayed adds; an entry is live only if it matches `due`.
    delayed: BinaryHeap<Reverse<(Instant, Key)>>,
    due: HashMap<Key, Instant>,
    failures: HashMap<Key, u32>,
}

/// A deduplicating queue of keys with delays and per-key backoff (client-go's workqueue).
#[derive(Clone)]
pub struct WorkQueue {
    state: Arc<Mutex<QueueState>>,
    notify: Arc<Notify>,
}

impl Default for WorkQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkQueue {
    pub fn new() -> Self {
        WorkQueue {
            state: Arc::default(),
            notify: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `key` now, unless it is already waiting.
    pub fn add(&self, key: impl Into<Key>) {
        let key = key.into();
        let mut state = self.lock();
        if state.processing.contains(&key) {
            state.again.insert(key);
            return;
        }
        if state.queued.insert(key.clone()) {
            state.ready.push_back(key);
            drop(state);
            self.notify.notify_one();
        }
    }

    /// Queues `key` after `delay`; an earlier pending delay for the key wins.
    pub fn add_after(&self, key: impl Into<Key>, delay: Duration) {
        let key = key.into();
        if delay.is_zero() {
            return self.add(key);
        }
        let at = Instant::now() + delay;
        let mut state = self.lock();
        if state.due.get(&key).is_some_and(|&due| due <= at) {
            return;
        }
        state.due.insert(key.clone(), at);
        state.delayed.push(Reverse((at, key)));
        drop(state);
        // A sleeping worker may need to wake earlier than it planned.
        self.notify.notify_one();
    }

    /// Queues `key` after its backoff: 5 ms doubling per consecutive failure, at most 5 min.
    pub fn add_backoff(&self, key: impl Into<Key>) {
        let key = key.into();
        let failures = {
            let mut state = self.lock();
            let n = state.failures.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        self.add_after(key, backoff(failures));
    }

    /// Clears `key`'s failure count (after a successful reconcile).
    pub fn forget(&self, key: &str) {
        self.lock().failures.remove(key);
    }

    /// How many consecutive failures `key` has had.
    pub fn failures(&self, key: &str) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// How many keys are ready or delayed (for tests and metrics).
    pub fn len(&self) -> usize {
        let state = self.lock();
        state.ready.len() + state.due.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the next key that is ready without waiting, if any (tests use this).
    pub fn try_next(&self) -> Option<Key> {
        let mut state = self.lock();
        promote_due(&mut state, Instant::now());
        let key = state.ready.pop_front()?;
        state.queued.remove(&key);
        state.processing.insert(key.clone());
        Some(key)
    }

    /// Waits for the next ready key and marks it as being processed; call [`WorkQueue::done`]
    /// with it afterwards.
    pub async fn next(&self) -> Key {
        loop {
            let notified = self.notify.notified();
            let wake_at = {
                let mut state = self.lock();
                promote_due(&mut state, Instant::now());
                if let Some(key) = state.ready.pop_front() {
                    state.queued.remove(&key);
                    state.processing.insert(key.clone());
                    return key;
                }
                state.delayed.peek().map(|Reverse((at, _))| *at)
            };
            match wake_at {
                Some(at) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Marks `key` as processed; if it was added meanwhile, it is queued again.
    pub fn done(&self, key: &str) {
        let again = {
            let mut state = self.lock();
            state.processing.remove(key);
            state.again.remove(key)
        };
        if again {
            self.add(key.to_string());
        }
    }
}

fn promote_due(state: &mut QueueState, now: Instant) {
    while let Some(Reverse((at, _))) = state.delayed.peek() {
        if *at > now {
            break;
        }
        let Some(Reverse((at, key))) = state.delayed.pop() else {
            break;
        };
        // A stale entry: the key was re-delayed to an earlier time and already promoted.
        if state.due.get(&key) != Some(&at) {
            continue;
        }
        state.due.remove(&key);
        if state.processing.contains(&key) {
            state.again.insert(key);
        } else if state.queued.insert(key.clone()) {
            state.ready.push_back(key);
        }
    }
}

/// The wait before retry number `failures` (1-based).
pub fn backoff(failures: u32) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u32::MAX);
    BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_MAX)
}

/// Runs `workers` workers over `queue` until the task is dropped. Each key is reconciled by one
/// worker at a time; errors are logged once here and requeued with backoff.
pub async fn run<R: Reconciler>(reconciler: Arc<R>, queue: WorkQueue, workers: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let reconciler = reconciler.clone();
        let queue = queue.clone();
        tasks.spawn(async move {
            loop {
                let key = queue.next().await;
                let span = tracing::debug_span!("reconcile", controller = reconciler.name(), key);
                match reconciler.reconcile(&key).instrument(span).await {
                    Ok(Action::Done) => queue.forget(&key),
                    Ok(Action::RequeueAfter(delay)) => {
                        queue.forget(&key);
                        queue.add_after(key.clone(), delay);
                    }
                    Err(e) => {
                        let failures = queue.failures(&key) + 1;
                        if e.is_conflict() {
                            tracing::debug!(controller = reconciler.name(), key, error = %e, "conflict; retrying");
                        } else {
                            tracing::warn!(controller = reconciler.name(), key, failures, error = %e, "reconcile failed; retrying with backoff");
                        }
                        queue.add_backoff(key.clone());
                    }
                }
                queue.done(&key);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn pod(ns: &str, name: &str, owner: Option<&str>, rv: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                resource_version: Some(rv.into()),
                owner_references: owner.map(|uid| {
                    vec![OwnerReference {
                        uid: uid.into(),
                        name: "o".into(),
                        kind: "ReplicaSet".into(),
                        api_version: "apps/v1".into(),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn keys_round_trip() {
        assert_eq!(key(Some("ns"), "a"), "ns/a");
        assert_eq!(key(None, "node-1"), "node-1");
        assert_eq!(split_key("ns/a"), (Some("ns"), "a"));
        assert_eq!(split_key("node-1"), (None, "node-1"));
    }

    /// Both storages, decoded and compact.
    fn informers() -> [Informer<Pod>; 2] {
        [Informer::new(), Informer::compact()]
    }

    #[test]
    fn informer_indexes_owners_and_namespaces() {
        for informer in informers() {
            indexes_owners_and_namespaces(informer);
        }
    }

    fn indexes_owners_and_namespaces(informer: Informer<Pod>) {
        informer.apply(pod("a", "p1", Some("rs1"), "1"));
        informer.apply(pod("a", "p2", Some("rs1"), "2"));
        informer.apply(pod("ab", "p3", Some("rs2"), "3"));
        informer.apply(pod("b", "p4", None, "4"));
        assert_eq!(informer.list_in("a").len(), 2, "namespace a only, not ab");
        assert_eq!(informer.owned_by("rs1").len(), 2);
        // The owner changes: the index follows.
        informer.apply(pod("a", "p2", Some("rs2"), "5"));
        assert_eq!(informer.owned_by("rs1").len(), 1);
        assert_eq!(informer.owned_by("rs2").len(), 2);
        informer.delete(&pod("a", "p1", None, "6"));
        assert!(informer.owned_by("rs1").is_empty());
        assert_eq!(informer.len(), 3);
    }

    #[test]
    fn compact_informer_reads_back_what_it_was_given() {
        let informer = Informer::<Pod>::compact();
        let mut labelled = pod("a", "p1", Some("rs1"), "1");
        labelled.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        labelled.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            node_name: Some("n1".into()),
            ..Default::default()
        });
        informer.apply(labelled.clone());
        informer.apply(pod("a", "p2", None, "2"));
        assert_eq!(informer.get("a/p1").as_deref(), Some(&labelled));
        let web = |labels: Option<&Labels>| labels.is_some_and(|l| l.get("app").is_some());
        let picked = informer.list_in_labelled("a", web);
        assert_eq!(picked.len(), 1);
        assert_eq!(*picked[0], labelled);
        let unlabelled = informer.list_where(|p| p.metadata.labels.is_none());
        assert_eq!(unlabelled.len(), 1);
        assert_eq!(unlabelled[0].metadata.name.as_deref(), Some("p2"));
        // Callbacks get the old object back, decoded.
        let olds = Arc::new(Mutex::new(Vec::new()));
        let log = olds.clone();
        informer.on_change(move |change| {
            if let Change::Applied { old: Some(old), .. } = change {
                log.lock().unwrap().push((*old).clone());
            }
        });
        informer.apply(pod("a", "p1", None, "3"));
        assert_eq!(*olds.lock().unwrap(), vec![labelled]);
        assert!(informer.owned_by("rs1").is_empty());
    }

    #[test]
    fn relist_reports_deletions_and_skips_unchanged() {
        for informer in informers() {
            relist(informer);
        }
    }

    fn relist(informer: Informer<Pod>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        informer.on_change(move |change| {
            let what = match change {
                Change::Applied { old: None, new } => {
                    format!("add {}", new.metadata.name.as_deref().unwrap_or(""))
                }
                Change::Applied { new, .. } => {
                    format!("update {}", new.metadata.name.as_deref().unwrap_or(""))
                }
                Change::Deleted(old) => {
                    format!("delete {}", old.metadata.name.as_deref().unwrap_or(""))
                }
            };
            log.lock().unwrap().push(what);
        });
        informer.apply(pod("a", "keep", None, "1"));
        informer.apply(pod("a", "gone", None, "2"));
        informer.apply(pod("a", "changed", None, "3"));
        seen.lock().unwrap().clear();
        assert!(!informer.is_synced());
        informer.replace_all(vec![
            pod("a", "keep", None, "1"),
            pod("a", "changed", None, "9"),
            pod("a", "new", None, "10"),
        ]);
        assert!(informer.is_synced());
        assert_eq!(
            *seen.lock().unwrap(),
            vec!["update changed", "add new", "delete gone"]
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(5));
        assert_eq!(backoff(2), Duration::from_millis(10));
        assert_eq!(backoff(5), Duration::from_millis(80));
        assert_eq!(backoff(40), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn queue_deduplicates_and_requeues_keys_added_while_processing() {
        let q = WorkQueue::new();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        let a = q.try_next().unwrap();
        assert_eq!(a, "a");
        q.add("a"); // changed while being reconciled
        assert_eq!(q.try_next().as_deref(), Some("b"));
        assert_eq!(q.try_next(), None, "a is not handed to a second worker");
        q.done("a");
        assert_eq!(q.try_next().as_deref(), Some("a"));
        q.done("a");
        q.done("b");
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_keys_come_due_and_the_earliest_delay_wins() {
        let q = WorkQueue::new();
        q.add_after("late", Duration::from_secs(10));
        q.add_after("late", Duration::from_secs(1));
        q.add_after("late", Duration::from_secs(5));
        assert_eq!(q.try_next(), None);
        let started = Instant::now();
        let key = q.next().await;
        assert_eq!(key, "late");
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        q.done(&key);
        // The stale 10 s entry must not deliver the key again.
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(q.try_next(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_and_forget_resets() {
        let q = WorkQueue::new();
        q.add_backoff("k");
        q.add_backoff("k");
        assert_eq!(q.failures("k"), 2);
        let started = Instant::now();
        let key = q.next().await;
        // The first (5 ms) delay is the earliest pending one.
        assert_eq!(started.elapsed(), Duration::from_millis(5));
        q.done(&key);
        q.forget("k");
        assert_eq!(q.failures("k"), 0);
    }
}
