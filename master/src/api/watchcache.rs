//! The watch cache: many API watchers served from one store watch per resource.
//!
//! Without it every `?watch=true` request opens its own store watch, so a thousand kubelets
//! watching pods cost a thousand etcd watches, each decoding every pod change. A [`WatchHub`]
//! keeps one *feed* per resource prefix (`/registry/<plural>/`) instead:
//!
//! - one task holds one store watch on the prefix and appends every event to a ring of the
//!   last N events (bounded by count and by bytes), then wakes the subscribers;
//! - a subscriber is a cursor (the last revision it has passed) into that ring, plus the prefix
//!   it asked for (a namespace's watch uses the resource-wide feed and filters). Replay and live
//!   delivery are the same thing: read the ring after the cursor. There is no per-subscriber
//!   channel, so a subscriber that stops reading costs nothing and blocks nobody; once the ring
//!   has dropped events it has not passed, its stream ends with [`store::Error::Expired`];
//! - a watch from a revision the ring no longer covers falls back to a direct store watch for
//!   that client (exact, and `Expired` if the store has compacted it);
//! - when the store watch fails (etcd restarts), the feed re-opens it from the last revision
//!   it saw, with backoff; if that revision has been compacted meanwhile, every subscriber gets
//!   `Expired` (after the events it has not read yet) so its client re-lists;
//! - a feed without subscribers for `idle_timeout` closes its store watch and goes away.
//!
//! The store's invariant "one event per revision" (no multi-key transactions) is relied on:
//! a cursor is a revision, and events at or below it are never delivered again.
//!
//! For the API: an `Expired` item in the middle of a stream means "this watch cannot continue
//! from here". Closing the watch lets the client resume from its last resourceVersion; the hub
//! (or the store) then decides whether that revision can still be served or is really gone.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{BoxStream, Stream};
use futures::StreamExt as _;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::store::{self, Event, Revision, Store};

/// Events a feed keeps for replay by default.
pub const DEFAULT_EVENTS_KEPT: usize = 16_384;
/// Bytes of keys and values a feed keeps for replay by default (whichever limit comes first).
pub const DEFAULT_BYTES_KEPT: usize = 64 << 20;
/// How long a feed without subscribers keeps its store watch by default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Events a subscriber copies out of the ring per lock.
const BATCH: usize = 256;
/// Ring entries a subscriber examines per lock (bounds the lock hold time for narrow prefixes).
const SCAN: usize = 4096;
/// Store events the feed task appends per lock.
const CHUNK: usize = 512;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Serves watches from one store watch per resource prefix. Cheap to clone.
#[derive(Clone)]
pub struct WatchHub {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    events_kept: usize,
    bytes_kept: usize,
    idle_timeout: Duration,
    feeds: Mutex<HashMap<String, Arc<Feed>>>,
    /// Store watches open: one per running feed plus one per fallback client.
    store_watches: Arc<AtomicUsize>,
}

impl WatchHub {
    pub fn new(store: Arc<dyn Store>) -> WatchHub {
        WatchHub {
            inner: Arc::new(Inner {
                store,
                events_kept: DEFAULT_EVENTS_KEPT,
                bytes_kept: DEFAULT_BYTES_KEPT,
                idle_timeout: DEFAULT_IDLE_TIMEOUT,
                feeds: Mutex::new(HashMap::new()),
                store_watches: Arc::new(AtomicUsize::new(0)),
            }),
        }
    }

    /// Keeps at most `events_kept` events per feed (at least 1). Call before the first watch.
    pub fn with_capacity(self, events_kept: usize) -> WatchHub {
        self.configure(|inner| inner.events_kept = events_kept.max(1))
    }

    /// Keeps at most about `bytes_kept` bytes of events per feed (the newest event always stays).
    pub fn with_max_bytes(self, bytes_kept: usize) -> WatchHub {
        self.configure(|inner| inner.bytes_kept = bytes_kept)
    }

    /// Closes a feed's store watch once it has had no subscriber for this long.
    pub fn with_idle_timeout(self, idle_timeout: Duration) -> WatchHub {
        self.configure(|inner| inner.idle_timeout = idle_timeout)
    }

    fn configure(self, change: impl FnOnce(&mut Inner)) -> WatchHub {
        let mut inner = Arc::try_unwrap(self.inner)
            .unwrap_or_else(|_| panic!("configure a WatchHub before cloning or using it"));
        change(&mut inner);
        WatchHub {
            inner: Arc::new(inner),
        }
    }

    /// Events for keys under `prefix` with revision > `after`, in revision order, then live
    /// ones; `after` ≤ 0 means "from the store's current revision". Same contract as
    /// [`Store::watch`]: `Err(Expired)` when `after` is older than what can be replayed, and
    /// the stream ends with an error item if the watcher falls too far behind (`Expired`) or
    /// its feed can no longer continue (`Expired` after a compaction during a store outage).
    pub async fn watch(
        &self,
        prefix: &str,
        after: Revision,
    ) -> Result<BoxStream<'static, Result<Event, store::Error>>, store::Error> {
        let inner = &self.inner;
        let after = if after <= 0 {
            inner.store.current_revision().await?
        } else {
            after
        };
        let key = feed_key(prefix);
        loop {
            if let Some(feed) = lock(&inner.feeds).get(key) {
                match feed.subscribe(prefix, after) {
                    Some(stream) => return Ok(stream),
                    None => break,
                }
            }
            // No feed yet: open one from this watcher's revision (or the current one, if that
            // is in the future), so that its first watcher is served from it too.
            let current = inner.store.current_revision().await?;
            let start = after.min(current);
            let stream = inner.store.watch(key, Some(start)).await?;
            let stream = Counted::new(stream, &inner.store_watches);
            let mut feeds = lock(&inner.feeds);
            if feeds.contains_key(key) {
                // Another watcher started the feed meanwhile; use theirs.
                continue;
            }
            let feed = Arc::new(Feed::new(key, start, inner));
            feeds.insert(key.to_string(), feed.clone());
            let subscribed = feed.subscribe(prefix, after);
            drop(feeds);
            let span = tracing::debug_span!("watchcache", prefix = key);
            tokio::spawn(
                run_feed(
                    feed,
                    Arc::downgrade(inner),
                    stream,
                    FeedOptions {
                        store: inner.store.clone(),
                        store_watches: inner.store_watches.clone(),
                        idle_timeout: inner.idle_timeout,
                    },
                )
                .instrument(span),
            );
            match subscribed {
                Some(stream) => return Ok(stream),
                None => break,
            }
        }
        // Older than the ring covers: this client gets its own store watch.
        tracing::debug!(
            prefix,
            after,
            "watch older than the cache; watching the store"
        );
        let stream = inner.store.watch(prefix, Some(after)).await?;
        Ok(Counted::new(stream, &inner.store_watches).boxed())
    }

    /// The newest revision this hub has seen for `prefix`'s resource: every event at or below
    /// it is in the feed's ring (readable by every subscriber). `None` without a feed.
    ///
    /// It advances only with events under the resource prefix (or the feed's start), so a
    /// quiet resource reports an old revision. A subscriber may not have *read* up to it yet.
    pub fn progress(&self, prefix: &str) -> Option<Revision> {
        let feed = lock(&self.inner.feeds).get(feed_key(prefix)).cloned()?;
        let newest = lock(&feed.ring).newest;
        Some(newest)
    }

    /// Number of store watches open: one per running feed, one per fallback watcher.
    pub fn store_watches(&self) -> usize {
        self.inner.store_watches.load(Ordering::Acquire)
    }
}

/// The feed a watch on `prefix` uses: `/registry/<plural>/` for anything under it, else the
/// prefix itself.
fn feed_key(prefix: &str) -> &str {
    const ROOT: &str = "/registry/";
    match prefix.strip_prefix(ROOT).and_then(|rest| rest.find('/')) {
        Some(slash) if slash > 0 => &prefix[..ROOT.len() + slash + 1],
        _ => prefix,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Feeds

/// One resource prefix's store watch, ring and subscribers.
struct Feed {
    key: String,
    ring: Mutex<Ring>,
    /// Bumped after every append and at the end; subscribers wait on it.
    appended: watch::Sender<()>,
    /// Raised only under the hub's `feeds` lock, so a feed is never retired while a watcher is
    /// joining it.
    subscribers: AtomicUsize,
}

struct Ring {
    events: VecDeque<Arc<Event>>,
    bytes: usize,
    events_kept: usize,
    bytes_kept: usize,
    /// Every event under the feed's prefix above this revision is in `events` or still to come.
    oldest: Revision,
    /// The newest revision appended (or the feed's start).
    newest: Revision,
    /// Set once the feed has stopped; nothing is appended after it.
    ended: Option<End>,
    /// Per key, the revision and value of its newest event in `events`: an event's `prev` is
    /// usually that same value, read again by the store, and shares its bytes instead (with
    /// 30,000 pods, the pods ring would otherwise hold most objects twice).
    latest: HashMap<String, (Revision, bytes::Bytes)>,
}

impl Ring {
    fn push(&mut self, mut event: Event) {
        if let Some(prev) = event.prev.as_mut() {
            if let Some((revision, value)) = self.latest.get(&prev.key) {
                if *revision == prev.mod_revision && *value == prev.value {
                    prev.value = value.clone();
                }
            }
        }
        match event.kind {
            store::EventKind::Put => {
                let entry = (event.kv.mod_revision, event.kv.value.clone());
                match self.latest.get_mut(&event.kv.key) {
                    Some(latest) => *latest = entry,
                    None => {
                        self.latest.insert(event.kv.key.clone(), entry);
                    }
                }
            }
            store::EventKind::Delete => {
                self.latest.remove(&event.kv.key);
            }
        }
        self.newest = event.revision();
        self.bytes += event_size(&event);
        self.events.push_back(Arc::new(event));
    }

    fn evict(&mut self) -> bool {
        let Some(evicted) = self.events.pop_front() else {
            return false;
        };
        self.bytes -= event_size(&evicted);
        self.oldest = evicted.revision();
        if self
            .latest
            .get(&evicted.kv.key)
            .is_some_and(|(revision, _)| *revision == evicted.revision())
        {
            self.latest.remove(&evicted.kv.key);
        }
        true
    }
}

#[derive(Clone, Copy, Debug)]
enum End {
    /// The store compacted past the feed's position while it was reconnecting.
    Expired { compacted: Revision },
    /// Retired (no subscribers); only a watcher racing the retirement can see this.
    Closed,
}

impl End {
    fn error(self, cursor: Revision) -> store::Error {
        match self {
            End::Expired { compacted } => store::Error::Expired {
                requested: cursor,
                compacted,
            },
            End::Closed => store::Error::Closed,
        }
    }
}

impl Feed {
    fn new(key: &str, start: Revision, inner: &Inner) -> Feed {
        Feed {
            key: key.to_string(),
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                bytes: 0,
                events_kept: inner.events_kept,
                bytes_kept: inner.bytes_kept,
                oldest: start,
                newest: start,
                ended: None,
                latest: HashMap::new(),
            }),
            appended: watch::channel(()).0,
            subscribers: AtomicUsize::new(0),
        }
    }

    /// A stream for `prefix` from `after`, or `None` if the ring does not reach back that far
    /// (or the feed has ended). Call with the hub's `feeds` lock held.
    fn subscribe(self: &Arc<Self>, prefix: &str, after: Revision) -> Option<EventStream> {
        let ring = lock(&self.ring);
        if ring.ended.is_some() || after < ring.oldest {
            return None;
        }
        self.subscribers.fetch_add(1, Ordering::AcqRel);
        let subscriber = Subscriber {
            feed: self.clone(),
            prefix: (prefix != self.key).then(|| prefix.to_string()),
            cursor: after,
            pending: VecDeque::new(),
            appended: self.appended.subscribe(),
            done: false,
        };
        drop(ring);
        Some(futures::stream::unfold(subscriber, Subscriber::next).boxed())
    }

    /// Appends events newer than the newest seen, evicts beyond the limits, wakes subscribers.
    fn append(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        {
            let mut ring = lock(&self.ring);
            for event in events {
                if event.revision() > ring.newest {
                    ring.push(event);
                }
            }
            while ring.events.len() > ring.events_kept
                || (ring.bytes > ring.bytes_kept && ring.events.len() > 1)
            {
                if !ring.evict() {
                    break;
                }
            }
        }
        self.appended.send_replace(());
    }

    fn newest(&self) -> Revision {
        lock(&self.ring).newest
    }

    /// Removes the feed from the hub if it has no subscribers (or the hub is gone) and marks
    /// it ended. Returns whether it did.
    fn retire_if_unused(self: &Arc<Self>, hub: &Weak<Inner>) -> bool {
        let retire = |feeds: Option<&mut HashMap<String, Arc<Feed>>>| {
            if self.subscribers.load(Ordering::Acquire) > 0 {
                return false;
            }
            if let Some(feeds) = feeds {
                if feeds.get(&self.key).is_some_and(|f| Arc::ptr_eq(f, self)) {
                    feeds.remove(&self.key);
                }
            }
            lock(&self.ring).ended = Some(End::Closed);
            true
        };
        match hub.upgrade() {
            Some(inner) => retire(Some(&mut *lock(&inner.feeds))),
            None => retire(None),
        }
    }

    /// Ends the feed for everyone: it leaves the hub (the next watcher starts a new one) and
    /// subscribers get `end` once they have read what is in the ring.
    fn end(self: &Arc<Self>, hub: &Weak<Inner>, end: End) {
        if let Some(inner) = hub.upgrade() {
            let mut feeds = lock(&inner.feeds);
            if feeds.get(&self.key).is_some_and(|f| Arc::ptr_eq(f, self)) {
                feeds.remove(&self.key);
            }
        }
        lock(&self.ring).ended = Some(end);
        self.appended.send_replace(());
    }
}

/// What an event costs in the ring, roughly.
fn event_size(event: &Event) -> usize {
    const OVERHEAD: usize = 128;
    OVERHEAD
        + event.kv.key.len()
        + event.kv.value.len()
        + event
            .prev
            .as_ref()
            .map_or(0, |p| p.key.len() + p.value.len())
}

struct FeedOptions {
    store: Arc<dyn Store>,
    store_watches: Arc<AtomicUsize>,
    idle_timeout: Duration,
}

/// Why a connected store watch stopped.
enum Stop {
    Retired,
    Failed(store::Error),
}

/// The feed's task: append what the store watch delivers; re-open it when it fails; retire
/// when idle.
async fn run_feed(feed: Arc<Feed>, hub: Weak<Inner>, mut stream: Counted, options: FeedOptions) {
    loop {
        match follow(&feed, &hub, stream, &options).await {
            Stop::Retired => {
                tracing::debug!("no watchers left; closed the store watch");
                return;
            }
            Stop::Failed(error) => match reconnect(&feed, &hub, error, &options).await {
                Some(reopened) => stream = reopened,
                None => return,
            },
        }
    }
}

async fn follow(
    feed: &Arc<Feed>,
    hub: &Weak<Inner>,
    stream: Counted,
    options: &FeedOptions,
) -> Stop {
    let mut chunks = stream.ready_chunks(CHUNK);
    let check =
        (options.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(10));
    let mut ticker = tokio::time::interval(check);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut idle_since: Option<Instant> = None;
    loop {
        tokio::select! {
            chunk = chunks.next() => {
                let Some(items) = chunk else {
                    return Stop::Failed(store::Error::Internal(format!(
                        "the store watch on {} ended", feed.key
                    )));
                };
                let mut events = Vec::with_capacity(items.len());
                let mut failure = None;
                for item in items {
                    match item {
                        Ok(event) => events.push(event),
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    }
                }
                feed.append(events);
                if let Some(e) = failure {
                    return Stop::Failed(e);
                }
            }
            _ = ticker.tick() => {
                if feed.subscribers.load(Ordering::Acquire) > 0 {
                    idle_since = None;
                    continue;
                }
                let since = *idle_since.get_or_insert_with(Instant::now);
                let hub_gone = hub.strong_count() == 0;
                if (hub_gone || since.elapsed() >= options.idle_timeout)
                    && feed.retire_if_unused(hub)
                {
                    return Stop::Retired;
                }
            }
        }
    }
}

/// Re-opens the feed's store watch from the newest revision it has, with backoff. `None` when
/// the feed ended instead (compacted past it, or nobody is left to serve).
async fn reconnect(
    feed: &Arc<Feed>,
    hub: &Weak<Inner>,
    mut error: store::Error,
    options: &FeedOptions,
) -> Option<Counted> {
    let mut backoff = BACKOFF_MIN;
    let mut attempt = 0u32;
    loop {
        if let store::Error::Expired { compacted, .. } = error {
            tracing::warn!(
                newest = feed.newest(),
                compacted,
                "the store compacted past this watch cache; ending its watchers so they re-list"
            );
            feed.end(hub, End::Expired { compacted });
            return None;
        }
        if attempt == 0 {
            tracing::warn!(error = %error, newest = feed.newest(), "store watch failed; re-opening it");
        } else {
            tracing::debug!(error = %error, attempt, "re-opening the store watch failed");
        }
        if feed.retire_if_unused(hub) {
            return None;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
        attempt += 1;
        match options.store.watch(&feed.key, Some(feed.newest())).await {
            Ok(stream) => {
                tracing::info!(attempt, from = feed.newest(), "re-opened the store watch");
                return Some(Counted::new(stream, &options.store_watches));
            }
            Err(e) => error = e,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Subscribers

type EventStream = BoxStream<'static, Result<Event, store::Error>>;

/// One watcher: a cursor into its feed's ring.
struct Subscriber {
    feed: Arc<Feed>,
    /// The prefix asked for, when narrower than the feed's.
    prefix: Option<String>,
    /// Events at or below this revision have been passed (delivered, queued or filtered out).
    cursor: Revision,
    /// Events copied out of the ring, not yet yielded.
    pending: VecDeque<Arc<Event>>,
    appended: watch::Receiver<()>,
    done: bool,
}

enum Refill {
    /// The cursor moved (events may have been queued).
    Moved,
    /// Nothing after the cursor yet.
    Empty,
    /// The stream ends with this error.
    End(store::Error),
}

impl Subscriber {
    async fn next(mut self) -> Option<(Result<Event, store::Error>, Subscriber)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(Event::clone(&event)), self));
            }
            if self.done {
                return None;
            }
            // Mark the current appends seen before reading the ring, so an append after the
            // read wakes the wait below.
            self.appended.borrow_and_update();
            match self.refill() {
                Refill::Moved => {}
                Refill::Empty => {
                    if self.appended.changed().await.is_err() {
                        self.done = true;
                        return Some((Err(store::Error::Closed), self));
                    }
                }
                Refill::End(error) => {
                    self.done = true;
                    return Some((Err(error), self));
                }
            }
        }
    }

    fn refill(&mut self) -> Refill {
        let ring = lock(&self.feed.ring);
        if self.cursor < ring.oldest {
            // The ring dropped events this watcher had not read: it fell too far behind.
            return Refill::End(store::Error::Expired {
                requested: self.cursor,
                compacted: ring.oldest,
            });
        }
        let start = ring.events.partition_point(|e| e.revision() <= self.cursor);
        let mut moved = false;
        for event in ring.events.range(start..).take(SCAN) {
            moved = true;
            self.cursor = event.revision();
            let wanted = match &self.prefix {
                Some(prefix) => event.kv.key.starts_with(prefix.as_str()),
                None => true,
            };
            if wanted {
                self.pending.push_back(event.clone());
                if self.pending.len() >= BATCH {
                    break;
                }
            }
        }
        match ring.ended {
            _ if moved => Refill::Moved,
            Some(end) => Refill::End(end.error(self.cursor)),
            None => Refill::Empty,
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.feed.subscribers.fetch_sub(1, Ordering::AcqRel);
    }
}

// ---------------------------------------------------------------------------------------------
// Counting store watches

/// A store watch stream that is counted in [`WatchHub::store_watches`] while it exists.
struct Counted {
    stream: store::WatchStream,
    open: Arc<AtomicUsize>,
}

impl Counted {
    fn new(stream: store::WatchStream, open: &Arc<AtomicUsize>) -> Counted {
        open.fetch_add(1, Ordering::AcqRel);
        Counted {
            stream,
            open: open.clone(),
        }
    }
}

impl Stream for Counted {
    type Item = store::Result<Event>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.poll_next_unpin(cx)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    //! Against the embedded store (a temporary file), a wrapper around it whose watches can be
    //! broken on demand, and one case against a real etcd.

    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicBool;

    use bytes::Bytes;

    use super::*;
    use crate::store::embedded::EmbeddedStore;
    use crate::store::{EventKind, KeyValue, RangeRequest, RangeResponse, WatchStream};

    type Watch = BoxStream<'static, Result<Event, store::Error>>;

    struct Embedded {
        store: Arc<dyn Store>,
        _dir: tempfile::TempDir,
    }

    fn embedded() -> Embedded {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = EmbeddedStore::open(&dir.path().join("state.redb")).expect("open store");
        Embedded {
            store: Arc::new(store),
            _dir: dir,
        }
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    async fn take(watch: &mut Watch, n: usize) -> Vec<Event> {
        let mut events = Vec::with_capacity(n);
        let deadline = Instant::now() + Duration::from_secs(30);
        while events.len() < n {
            match tokio::time::timeout_at(deadline, watch.next()).await {
                Ok(Some(Ok(event))) => events.push(event),
                Ok(Some(Err(e))) => panic!("watch failed after {} events: {e}", events.len()),
                Ok(None) => panic!("watch ended after {} of {n} events", events.len()),
                Err(_) => panic!("timed out after {} of {n} events", events.len()),
            }
        }
        events
    }

    async fn assert_quiet(watch: &mut Watch) {
        if let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(300), watch.next()).await
        {
            panic!("unexpected extra watch item: {item:?}");
        }
    }

    /// Waits until the hub's feed for `prefix` has appended `revision`.
    async fn wait_progress(hub: &WatchHub, prefix: &str, revision: Revision) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while hub.progress(prefix) < Some(revision) {
            assert!(
                Instant::now() < deadline,
                "the feed did not reach {revision}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn revisions(events: &[Event]) -> Vec<Revision> {
        events.iter().map(Event::revision).collect()
    }

    /// Writes `n` creates under `prefix`, returning their revisions in order.
    async fn write(store: &dyn Store, prefix: &str, tag: &str, n: usize) -> Vec<Revision> {
        let mut done = Vec::with_capacity(n);
        for i in 0..n {
            let kv = store
                .create(&format!("{prefix}{tag}-{i}"), b("v"))
                .await
                .unwrap();
            done.push(kv.mod_revision);
        }
        done
    }

    #[test]
    fn ring_shares_a_previous_value_with_the_event_that_wrote_it() {
        let kv = |value: &str, revision: Revision| KeyValue {
            key: "/registry/pods/a/p".into(),
            value: b(value),
            create_revision: 1,
            mod_revision: revision,
        };
        let event = |kind, now: KeyValue, prev: Option<KeyValue>| Event {
            kind,
            kv: now,
            prev,
        };
        let mut ring = Ring {
            events: VecDeque::new(),
            bytes: 0,
            events_kept: 2,
            bytes_kept: usize::MAX,
            oldest: 0,
            newest: 0,
            ended: None,
            latest: HashMap::new(),
        };
        ring.push(event(EventKind::Put, kv("one", 1), None));
        // The store read the previous value again: equal bytes, another allocation.
        ring.push(event(EventKind::Put, kv("two", 2), Some(kv("one", 1))));
        ring.push(event(EventKind::Delete, kv("", 3), Some(kv("two", 2))));
        let shared = |newer: usize, older: usize| {
            let prev = &ring.events[newer].prev.as_ref().unwrap().value;
            prev.as_ptr() == ring.events[older].kv.value.as_ptr()
        };
        assert!(shared(1, 0), "the update's prev is the create's value");
        assert!(shared(2, 1), "the delete's prev is the update's value");
        assert!(ring.latest.is_empty(), "a deleted key has no latest value");
        // Evicting keeps the map to what the ring holds.
        ring.push(event(EventKind::Put, kv("three", 4), None));
        assert_eq!(ring.latest.len(), 1);
        while ring.events.len() > 1 {
            assert!(ring.evict());
        }
        assert_eq!(ring.latest.len(), 1, "the newest event's value stays");
        assert!(ring.evict());
        assert!(ring.latest.is_empty());
    }

    #[test]
    fn feed_key_is_the_resource_prefix() {
        let check = |input: &str, expected: &str| assert_eq!(feed_key(input), expected, "{input}");
        check("/registry/pods/", "/registry/pods/");
        check("/registry/pods/ns1/", "/registry/pods/");
        check("/registry/pods/ns1/web-0", "/registry/pods/");
        check("/registry/nodes/", "/registry/nodes/");
        check("/registry/pods", "/registry/pods");
        check("/registry/", "/registry/");
        check("/registry//x", "/registry//x");
        check("/w/", "/w/");
        check("", "");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn hundred_watchers_share_one_store_watch() {
        const WATCHERS: usize = 100;
        const WRITES: usize = 1000;
        const WRITERS: usize = 10;
        let harness = embedded();
        let store = harness.store.clone();
        let hub = WatchHub::new(store.clone());
        let start = store.current_revision().await.unwrap();
        let mut watchers = Vec::new();
        for _ in 0..WATCHERS {
            let mut watch = hub.watch("/registry/pods/", start).await.unwrap();
            watchers.push(tokio::spawn(async move {
                let mut seen = Vec::with_capacity(WRITES);
                let deadline = Instant::now() + Duration::from_secs(60);
                while seen.len() < WRITES {
                    match tokio::time::timeout_at(deadline, watch.next()).await {
                        Ok(Some(Ok(event))) => seen.push((event.revision(), Instant::now())),
                        other => panic!("after {} events: {other:?}", seen.len()),
                    }
                }
                assert_quiet(&mut watch).await;
                seen
            }));
        }
        assert_eq!(hub.store_watches(), 1);
        let began = Instant::now();
        let writes = futures::future::join_all((0..WRITERS).map(|w| {
            let store = store.clone();
            async move {
                let mut done = Vec::new();
                for i in 0..WRITES / WRITERS {
                    let key = store::object_key(
                        "pods",
                        Some(&format!("ns{}", w % 3)),
                        &format!("p{w}-{i}"),
                    );
                    let kv = store.create(&key, b("{}")).await.unwrap();
                    done.push((kv.mod_revision, Instant::now()));
                }
                done
            }
        }))
        .await;
        let acked: BTreeMap<Revision, Instant> = writes.into_iter().flatten().collect();
        let expected: Vec<Revision> = acked.keys().copied().collect();
        assert_eq!(expected.len(), WRITES);
        let mut latencies = Vec::with_capacity(WATCHERS * WRITES);
        for watcher in watchers {
            let seen = watcher.await.unwrap();
            let got: Vec<Revision> = seen.iter().map(|(r, _)| *r).collect();
            assert_eq!(got, expected, "every write once, in order");
            latencies.extend(
                seen.iter()
                    .map(|(r, at)| at.saturating_duration_since(acked[r])),
            );
        }
        assert_eq!(hub.store_watches(), 1);
        latencies.sort();
        let pct = |p: usize| latencies[(latencies.len() - 1) * p / 100];
        println!(
            "watchcache: {WATCHERS} watchers x {WRITES} writes in {:?}; delivery after the write's ack: p50 {:?} p99 {:?} max {:?}",
            began.elapsed(),
            pct(50),
            pct(99),
            pct(100)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watchers_from_past_revisions_get_exactly_what_follows() {
        let harness = embedded();
        let store = harness.store.as_ref();
        let hub = WatchHub::new(harness.store.clone());
        let start = store.current_revision().await.unwrap();
        let mut first = hub.watch("/registry/pods/", start).await.unwrap();
        let written = write(store, "/registry/pods/a/", "p", 50).await;
        store
            .create("/registry/services/a/s", b("v"))
            .await
            .unwrap();
        assert_eq!(revisions(&take(&mut first, 50).await), written);
        let mut all = written.clone();
        for from in [start, written[0], written[10], written[48], written[49]] {
            let mut watch = hub.watch("/registry/pods/", from).await.unwrap();
            let expected: Vec<_> = all.iter().copied().filter(|r| *r > from).collect();
            assert_eq!(
                revisions(&take(&mut watch, expected.len()).await),
                expected,
                "from {from}"
            );
            assert_quiet(&mut watch).await;
            // Then live, without a gap or a repeat.
            let live = store
                .create(&format!("/registry/pods/a/live-{from}"), b("v"))
                .await
                .unwrap();
            assert_eq!(take(&mut watch, 1).await[0].kv, live);
            assert_quiet(&mut watch).await;
            all.push(live.mod_revision);
        }
        assert_eq!(hub.store_watches(), 1, "all served from the one feed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watcher_older_than_the_ring_falls_back_to_the_store() {
        let harness = embedded();
        let store = harness.store.as_ref();
        let hub = WatchHub::new(harness.store.clone()).with_capacity(10);
        let start = store.current_revision().await.unwrap();
        // A watcher that never reads keeps the feed open.
        let _idle = hub.watch("/registry/pods/", start).await.unwrap();
        let written = write(store, "/registry/pods/a/", "p", 50).await;
        wait_progress(&hub, "/registry/pods/", written[49]).await;
        // The ring keeps the last 10: from written[39] on it is served from memory.
        let mut cached = hub.watch("/registry/pods/", written[39]).await.unwrap();
        assert_eq!(revisions(&take(&mut cached, 10).await), written[40..]);
        assert_eq!(hub.store_watches(), 1);
        // Older: a store watch of its own, still exact.
        let mut old = hub.watch("/registry/pods/a/", written[5]).await.unwrap();
        assert_eq!(hub.store_watches(), 2);
        assert_eq!(revisions(&take(&mut old, 44).await), written[6..]);
        let live = store.create("/registry/pods/a/live", b("v")).await.unwrap();
        assert_eq!(take(&mut old, 1).await[0].kv, live);
        assert_quiet(&mut old).await;
        drop(old);
        assert_eq!(hub.store_watches(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_compacted_revision_is_expired() {
        let harness = embedded();
        let store = harness.store.as_ref();
        let hub = WatchHub::new(harness.store.clone()).with_capacity(10);
        let start = store.current_revision().await.unwrap();
        let written = write(store, "/registry/pods/a/", "p", 20).await;
        store.compact(written[10]).await.unwrap();
        // Without a feed: the feed cannot start there.
        match hub.watch("/registry/pods/", start).await {
            Err(store::Error::Expired { requested, .. }) => assert_eq!(requested, start),
            Ok(_) => panic!("expected Expired, got a stream"),
            Err(e) => panic!("expected Expired, got {e}"),
        }
        assert_eq!(hub.store_watches(), 0);
        let _feed = hub.watch("/registry/pods/", written[15]).await.unwrap();
        let more = write(store, "/registry/pods/a/", "q", 20).await;
        wait_progress(&hub, "/registry/pods/", more[19]).await;
        store.compact(more[15]).await.unwrap();
        // With a feed: older than its ring and compacted in the store.
        assert!(matches!(
            hub.watch("/registry/pods/a/", more[2]).await,
            Err(store::Error::Expired { .. })
        ));
        // Inside the ring the cache still serves it, though the store has compacted it.
        let mut cached = hub.watch("/registry/pods/a/", more[12]).await.unwrap();
        assert_eq!(revisions(&take(&mut cached, 7).await), more[13..]);
        assert_eq!(hub.store_watches(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_namespace_watch_sees_only_its_keys() {
        let harness = embedded();
        let store = harness.store.as_ref();
        let hub = WatchHub::new(harness.store.clone());
        let start = store.current_revision().await.unwrap();
        let mut ns1 = hub.watch("/registry/pods/ns1/", start).await.unwrap();
        let mut ns2 = hub.watch("/registry/pods/ns2/", start).await.unwrap();
        let mut all = hub.watch("/registry/pods/", start).await.unwrap();
        let mut mine = Vec::new();
        for i in 0..30 {
            let ns = ["ns1", "ns2", "ns10"][i % 3];
            let kv = store
                .create(
                    &store::object_key("pods", Some(ns), &format!("p{i}")),
                    b("v"),
                )
                .await
                .unwrap();
            if ns == "ns1" {
                mine.push(kv.mod_revision);
            }
            store
                .create(
                    &store::object_key("services", Some("ns1"), &format!("s{i}")),
                    b("v"),
                )
                .await
                .unwrap();
        }
        let deleted = store.delete("/registry/pods/ns1/p0", None).await.unwrap();
        let got = take(&mut ns1, 11).await;
        assert!(got
            .iter()
            .all(|e| e.kv.key.starts_with("/registry/pods/ns1/")));
        assert_eq!(revisions(&got[..10]), mine);
        assert_eq!(got[10].kind, EventKind::Delete);
        assert_eq!(got[10].prev.as_ref(), Some(&deleted));
        assert_quiet(&mut ns1).await;
        assert_eq!(take(&mut ns2, 10).await.len(), 10);
        assert_quiet(&mut ns2).await;
        assert_eq!(take(&mut all, 31).await.len(), 31);
        assert_quiet(&mut all).await;
        assert_eq!(hub.store_watches(), 1);
        assert_eq!(
            hub.progress("/registry/pods/ns2/"),
            Some(got[10].revision())
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscriber_that_never_reads_is_cut_off_without_blocking_others() {
        let harness = embedded();
        let store = harness.store.as_ref();
        let hub = WatchHub::new(harness.store.clone()).with_capacity(64);
        let start = store.current_revision().await.unwrap();
        let mut stalled = hub.watch("/registry/pods/", start).await.unwrap();
        let mut reader = hub.watch("/registry/pods/", start).await.unwrap();
        let reading = tokio::spawn(async move {
            let got = take(&mut reader, 200).await;
            (reader, got)
        });
        let written = write(store, "/registry/pods/a/", "p", 200).await;
        let (mut reader, got) = reading.await.unwrap();
        assert_eq!(revisions(&got), written);
        match tokio::time::timeout(Duration::from_secs(5), stalled.next()).await {
            Ok(Some(Err(store::Error::Expired { requested, .. }))) => assert_eq!(requested, start),
            other => panic!("expected Expired, got {other:?}"),
        }
        assert!(
            stalled.next().await.is_none(),
            "the stream ends after the error"
        );
        // The other watcher carries on.
        let live = store.create("/registry/pods/a/live", b("v")).await.unwrap();
        assert_eq!(take(&mut reader, 1).await[0].kv, live);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watch_at_the_current_revision_gets_only_new_events() {
        let harness = embedded();
        let store = harness.store.as_ref();
        let hub = WatchHub::new(harness.store.clone());
        write(store, "/registry/pods/a/", "old", 5).await;
        // Start the feed earlier than now, so the ring holds older events to skip.
        let mut early = hub.watch("/registry/pods/", 1).await.unwrap();
        assert_eq!(take(&mut early, 5).await.len(), 5);
        let now = store.current_revision().await.unwrap();
        let mut at_now = hub.watch("/registry/pods/", now).await.unwrap();
        let mut from_zero = hub.watch("/registry/pods/", 0).await.unwrap();
        assert_quiet(&mut at_now).await;
        let new = write(store, "/registry/pods/a/", "new", 3).await;
        assert_eq!(revisions(&take(&mut at_now, 3).await), new);
        assert_eq!(revisions(&take(&mut from_zero, 3).await), new);
        assert_quiet(&mut at_now).await;
        // A revision in the future waits for it, as the store's watch does.
        let last = *new.last().unwrap();
        let mut future = hub.watch("/registry/pods/", last + 2).await.unwrap();
        let more = write(store, "/registry/pods/a/", "more", 4).await;
        assert_eq!(revisions(&take(&mut future, 2).await), more[2..]);
        assert_quiet(&mut future).await;
        assert_eq!(hub.store_watches(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn progress_advances_and_idle_feeds_close() {
        let harness = embedded();
        let store = harness.store.as_ref();
        let hub =
            WatchHub::new(harness.store.clone()).with_idle_timeout(Duration::from_millis(200));
        assert_eq!(hub.progress("/registry/pods/"), None);
        let start = store.current_revision().await.unwrap();
        let mut watch = hub.watch("/registry/pods/ns1/", start).await.unwrap();
        assert_eq!(hub.progress("/registry/pods/"), Some(start));
        let written = write(store, "/registry/pods/ns1/", "p", 3).await;
        take(&mut watch, 3).await;
        assert_eq!(hub.progress("/registry/pods/ns2/"), Some(written[2]));
        drop(watch);
        let deadline = Instant::now() + Duration::from_secs(5);
        while hub.store_watches() > 0 {
            assert!(Instant::now() < deadline, "the idle feed did not close");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(hub.progress("/registry/pods/"), None);
        // A new watcher starts a new feed.
        let mut again = hub.watch("/registry/pods/", written[1]).await.unwrap();
        assert_eq!(revisions(&take(&mut again, 1).await), written[2..]);
        assert_eq!(hub.store_watches(), 1);
    }

    /// The embedded store, with watches that can be broken (as an etcd restart does) and
    /// opens that can be made to fail.
    struct Flaky {
        inner: Arc<dyn Store>,
        breaker: watch::Sender<u64>,
        failing_opens: AtomicUsize,
        opened: AtomicUsize,
        down: AtomicBool,
    }

    impl Flaky {
        fn new(inner: Arc<dyn Store>) -> Arc<Flaky> {
            Arc::new(Flaky {
                inner,
                breaker: watch::channel(0).0,
                failing_opens: AtomicUsize::new(0),
                opened: AtomicUsize::new(0),
                down: AtomicBool::new(false),
            })
        }

        /// Ends every open watch with `Unavailable`; the next `failing` opens fail too.
        fn break_watches(&self, failing: usize) {
            self.failing_opens.store(failing, Ordering::SeqCst);
            self.breaker.send_modify(|n| *n += 1);
        }

        fn unavailable() -> store::Error {
            store::Error::Unavailable {
                endpoints: "flaky".into(),
                detail: "broken on purpose".into(),
            }
        }
    }

    #[async_trait::async_trait]
    impl Store for Flaky {
        async fn current_revision(&self) -> store::Result<Revision> {
            self.inner.current_revision().await
        }
        async fn get(&self, key: &str) -> store::Result<Option<KeyValue>> {
            self.inner.get(key).await
        }
        async fn create(&self, key: &str, value: Bytes) -> store::Result<KeyValue> {
            self.inner.create(key, value).await
        }
        async fn update(
            &self,
            key: &str,
            value: Bytes,
            expected: Option<Revision>,
        ) -> store::Result<KeyValue> {
            self.inner.update(key, value, expected).await
        }
        async fn delete(&self, key: &str, expected: Option<Revision>) -> store::Result<KeyValue> {
            self.inner.delete(key, expected).await
        }
        async fn range(&self, request: RangeRequest) -> store::Result<RangeResponse> {
            self.inner.range(request).await
        }
        async fn watch(&self, prefix: &str, after: Option<Revision>) -> store::Result<WatchStream> {
            let failing = self.failing_opens.load(Ordering::SeqCst);
            if failing > 0 {
                self.failing_opens.store(failing - 1, Ordering::SeqCst);
                return Err(Flaky::unavailable());
            }
            if self.down.load(Ordering::SeqCst) {
                return Err(Flaky::unavailable());
            }
            let mut broken = self.breaker.subscribe();
            broken.borrow_and_update();
            let stream = self.inner.watch(prefix, after).await?;
            self.opened.fetch_add(1, Ordering::SeqCst);
            let until = async move {
                let _ = broken.changed().await;
            };
            Ok(stream
                .take_until(until)
                .chain(futures::stream::once(async { Err(Flaky::unavailable()) }))
                .boxed())
        }
        async fn compact(&self, revision: Revision) -> store::Result<()> {
            self.inner.compact(revision).await
        }
        async fn compacted_revision(&self) -> store::Result<Revision> {
            self.inner.compacted_revision().await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broken_store_watch_is_reopened_without_a_gap() {
        let harness = embedded();
        let flaky = Flaky::new(harness.store.clone());
        let store = flaky.as_ref();
        let hub = WatchHub::new(flaky.clone());
        let start = store.current_revision().await.unwrap();
        let mut watchers = Vec::new();
        for _ in 0..5 {
            watchers.push(hub.watch("/registry/pods/", start).await.unwrap());
        }
        let mut expected = write(store, "/registry/pods/a/", "before", 10).await;
        for watch in &mut watchers {
            assert_eq!(revisions(&take(watch, 10).await), expected);
        }
        // Break the watch, fail two re-opens, and write while it is down.
        flaky.break_watches(2);
        let during = write(store, "/registry/pods/a/", "during", 10).await;
        let after = write(store, "/registry/pods/a/", "after", 10).await;
        for watch in &mut watchers {
            let got = take(watch, 20).await;
            assert_eq!(revisions(&got[..10]), during);
            assert_eq!(revisions(&got[10..]), after);
            assert_quiet(watch).await;
        }
        expected.extend(during);
        expected.extend(after);
        assert_eq!(
            flaky.opened.load(Ordering::SeqCst),
            2,
            "one feed, re-opened once"
        );
        assert_eq!(hub.store_watches(), 1);
        // A late joiner still replays everything from the ring.
        let mut late = hub.watch("/registry/pods/", start).await.unwrap();
        assert_eq!(revisions(&take(&mut late, 30).await), expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compaction_during_an_outage_ends_watchers_with_expired() {
        let harness = embedded();
        let flaky = Flaky::new(harness.store.clone());
        let store = flaky.as_ref();
        let hub = WatchHub::new(flaky.clone());
        let start = store.current_revision().await.unwrap();
        let mut watch = hub.watch("/registry/pods/", start).await.unwrap();
        let pods = write(store, "/registry/pods/a/", "p", 3).await;
        wait_progress(&hub, "/registry/pods/", pods[2]).await;
        // The store goes away; meanwhile other resources change and history is compacted.
        flaky.down.store(true, Ordering::SeqCst);
        flaky.break_watches(0);
        write(store, "/registry/services/a/", "s", 5).await;
        let now = store.current_revision().await.unwrap();
        store.compact(now).await.unwrap();
        flaky.down.store(false, Ordering::SeqCst);
        // The watcher gets what it had not read, then Expired, then the end.
        assert_eq!(revisions(&take(&mut watch, 3).await), pods);
        match tokio::time::timeout(Duration::from_secs(10), watch.next()).await {
            Ok(Some(Err(store::Error::Expired {
                requested,
                compacted,
            }))) => {
                assert_eq!(requested, pods[2]);
                assert!(
                    compacted >= now,
                    "compacted {compacted}, expected at least {now}"
                );
            }
            other => panic!("expected Expired, got {other:?}"),
        }
        assert!(watch.next().await.is_none());
        assert_eq!(hub.store_watches(), 0);
        // Re-listing and watching from the list's revision works, on a new feed.
        let mut again = hub.watch("/registry/pods/", now).await.unwrap();
        let new = store.create("/registry/pods/a/new", b("v")).await.unwrap();
        assert_eq!(take(&mut again, 1).await[0].kv, new);
        assert_eq!(hub.store_watches(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_watchers_share_one_watch() {
        let etcd = crate::testing::Etcd::start()
            .await
            .expect("start etcd (is it installed? run cluster/install-deps.sh)");
        let store: Arc<dyn Store> = Arc::new(
            crate::store::etcd::EtcdStore::connect(&etcd.endpoints(), Default::default())
                .await
                .expect("connect to etcd"),
        );
        let hub = WatchHub::new(store.clone()).with_capacity(1000);
        let before = write(store.as_ref(), "/registry/pods/ns3/", "pre", 10).await;
        let start = store.current_revision().await.unwrap();
        let mut all = Vec::new();
        for _ in 0..20 {
            all.push(hub.watch("/registry/pods/", start).await.unwrap());
        }
        let mut ns = hub.watch("/registry/pods/ns1/", start).await.unwrap();
        let mut written = Vec::new();
        let mut mine = Vec::new();
        for i in 0..200 {
            let namespace = if i % 4 == 0 { "ns1" } else { "ns2" };
            let kv = store
                .create(
                    &store::object_key("pods", Some(namespace), &format!("p{i}")),
                    b("v"),
                )
                .await
                .unwrap();
            written.push(kv.mod_revision);
            if namespace == "ns1" {
                mine.push(kv.mod_revision);
            }
        }
        for watch in &mut all {
            assert_eq!(revisions(&take(watch, 200).await), written);
        }
        assert_eq!(revisions(&take(&mut ns, 50).await), mine);
        assert_quiet(&mut ns).await;
        assert_eq!(hub.store_watches(), 1);
        // Older than the feed: the store serves it; compacted: Expired.
        let mut old = hub.watch("/registry/pods/", before[4]).await.unwrap();
        assert_eq!(hub.store_watches(), 2);
        assert_eq!(revisions(&take(&mut old, 5).await), before[5..]);
        assert_eq!(revisions(&take(&mut old, 200).await), written);
        drop(old);
        store.compact(written[50]).await.unwrap();
        assert!(matches!(
            hub.watch("/registry/pods/", before[4]).await,
            Err(store::Error::Expired { .. })
        ));
        assert_eq!(hub.store_watches(), 1);
    }
}
