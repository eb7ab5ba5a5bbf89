//! The store conformance suite: every case runs once per backend, as
//! `store::tests::embedded::<case>` and `store::tests::etcd::<case>`. The etcd cases start their
//! own etcd on loopback (see [`crate::testing::Etcd`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;

use super::*;

/// A store under test, with whatever keeps it alive (a temporary directory or an etcd process).
struct Harness {
    store: Arc<dyn Store>,
    _keep: Box<dyn std::any::Any + Send>,
}

impl Harness {
    async fn embedded() -> Harness {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = crate::store::embedded::EmbeddedStore::open(&dir.path().join("state.redb"))
            .expect("open embedded store");
        Harness {
            store: Arc::new(store),
            _keep: Box::new(dir),
        }
    }

    async fn etcd() -> Harness {
        let etcd = crate::testing::Etcd::start()
            .await
            .expect("start etcd (is it installed? run cluster/install-deps.sh)");
        let store = crate::store::etcd::EtcdStore::connect(&etcd.endpoints(), Default::default())
            .await
            .expect("connect to etcd");
        Harness {
            store: Arc::new(store),
            _keep: Box::new(etcd),
        }
    }
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let harness = super::Harness::embedded().await;
                    super::cases::$case(harness.store.as_ref()).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let harness = super::Harness::etcd().await;
                    super::cases::$case(harness.store.as_ref()).await;
                }
            )*
        }
    };
}

conformance!(
    get_of_a_missing_key_is_none,
    every_write_bumps_the_revision_by_one,
    create_refuses_an_existing_key,
    update_is_conditional_on_mod_revision,
    delete_is_conditional_and_returns_the_last_state,
    range_reads_a_prefix_in_key_order,
    range_pages_are_one_snapshot,
    range_at_an_older_revision_sees_the_past,
    range_rejects_bad_continue_tokens,
    watch_delivers_every_change_in_order_once,
    watch_replays_history_from_a_revision,
    watch_delete_carries_the_last_state,
    slow_watcher_misses_nothing,
    compaction_expires_older_revisions,
    concurrent_compare_and_swap_loses_no_increment,
);

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Collects `n` events from a watch, failing the test if they do not come within 20 s.
async fn take_events(stream: &mut WatchStream, n: usize) -> Vec<Event> {
    let mut events = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while events.len() < n {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(event))) => events.push(event),
            Ok(Some(Err(e))) => panic!("watch failed after {} events: {e}", events.len()),
            Ok(None) => panic!("watch ended after {} of {n} events", events.len()),
            Err(_) => panic!("timed out after {} of {n} events", events.len()),
        }
    }
    events
}

/// Asserts that no further event arrives within a short while.
async fn assert_quiet(stream: &mut WatchStream) {
    if let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
        panic!("unexpected extra watch item: {item:?}");
    }
}

mod cases {
    use super::*;

    pub async fn get_of_a_missing_key_is_none(store: &dyn Store) {
        assert_eq!(
            store.get("/registry/pods/default/nope").await.unwrap(),
            None
        );
    }

    pub async fn every_write_bumps_the_revision_by_one(store: &dyn Store) {
        let start = store.current_revision().await.unwrap();
        assert!(start >= 1, "revisions start at 1, got {start}");
        let created = store.create("/k/a", b("1")).await.unwrap();
        assert_eq!(created.create_revision, start + 1);
        assert_eq!(created.mod_revision, start + 1);
        let updated = store.update("/k/a", b("2"), None).await.unwrap();
        assert_eq!(updated.mod_revision, start + 2);
        assert_eq!(updated.create_revision, start + 1);
        let deleted = store.delete("/k/a", None).await.unwrap();
        assert_eq!(
            deleted.mod_revision,
            start + 2,
            "delete returns the last state"
        );
        assert_eq!(store.current_revision().await.unwrap(), start + 3);
        // Failed writes do not bump it.
        assert!(store.update("/k/a", b("3"), None).await.is_err());
        assert!(store.delete("/k/a", None).await.is_err());
        assert_eq!(store.current_revision().await.unwrap(), start + 3);
    }

    pub async fn create_refuses_an_existing_key(store: &dyn Store) {
        let first = store.create("/registry/ns/a", b("one")).await.unwrap();
        let before = store.current_revision().await.unwrap();
        match store.create("/registry/ns/a", b("two")).await {
            Err(Error::AlreadyExists { key }) => assert_eq!(key, "/registry/ns/a"),
            other => panic!("expected AlreadyExists, got {other:?}"),
        }
        assert_eq!(store.current_revision().await.unwrap(), before);
        let got = store.get("/registry/ns/a").await.unwrap().unwrap();
        assert_eq!(got, first, "the failed create changed nothing");
        assert_eq!(got.value, b("one"));
    }

    pub async fn update_is_conditional_on_mod_revision(store: &dyn Store) {
        let v1 = store.create("/k/x", b("1")).await.unwrap();
        let v2 = store
            .update("/k/x", b("2"), Some(v1.mod_revision))
            .await
            .unwrap();
        assert_eq!(v2.value, b("2"));
        match store
            .update("/k/x", b("stale"), Some(v1.mod_revision))
            .await
        {
            Err(Error::Conflict {
                key,
                expected,
                actual,
            }) => {
                assert_eq!(key, "/k/x");
                assert_eq!(expected, v1.mod_revision);
                assert_eq!(actual, v2.mod_revision);
            }
            other => panic!("expected Conflict, got {other:?}"),
        }
        assert_eq!(store.get("/k/x").await.unwrap().unwrap(), v2);
        match store.update("/k/missing", b("1"), None).await {
            Err(Error::NotFound { key }) => assert_eq!(key, "/k/missing"),
            other => panic!("expected NotFound, got {other:?}"),
        }
        match store.update("/k/missing", b("1"), Some(5)).await {
            Err(Error::NotFound { .. }) => {}
            other => panic!("expected NotFound, got {other:?}"),
        }
        assert_eq!(store.get("/k/missing").await.unwrap(), None);
    }

    pub async fn delete_is_conditional_and_returns_the_last_state(store: &dyn Store) {
        let v1 = store.create("/k/d", b("1")).await.unwrap();
        let v2 = store.update("/k/d", b("2"), None).await.unwrap();
        match store.delete("/k/d", Some(v1.mod_revision)).await {
            Err(Error::Conflict { actual, .. }) => assert_eq!(actual, v2.mod_revision),
            other => panic!("expected Conflict, got {other:?}"),
        }
        let last = store.delete("/k/d", Some(v2.mod_revision)).await.unwrap();
        assert_eq!(last, v2);
        assert_eq!(store.get("/k/d").await.unwrap(), None);
        match store.delete("/k/d", None).await {
            Err(Error::NotFound { .. }) => {}
            other => panic!("expected NotFound, got {other:?}"),
        }
        let again = store.create("/k/d", b("3")).await.unwrap();
        assert!(
            again.create_revision > v2.mod_revision,
            "a recreated key starts anew"
        );
        assert_eq!(again.create_revision, again.mod_revision);
    }

    pub async fn range_reads_a_prefix_in_key_order(store: &dyn Store) {
        for key in [
            "/registry/pods/b/two",
            "/registry/pods/a/one",
            "/registry/podsx/a/other",
            "/registry/pods/a/three",
            "/registry/pod",
        ] {
            store.create(key, b(key)).await.unwrap();
        }
        let all = store
            .range(RangeRequest {
                prefix: "/registry/pods/".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let keys: Vec<_> = all.kvs.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "/registry/pods/a/one",
                "/registry/pods/a/three",
                "/registry/pods/b/two"
            ]
        );
        assert!(all.kvs.iter().all(|kv| kv.value == b(&kv.key)));
        assert_eq!(all.revision, store.current_revision().await.unwrap());
        assert_eq!(all.continue_token, None);
        assert_eq!(all.remaining, None);
        let one_ns = store
            .range(RangeRequest {
                prefix: "/registry/pods/a/".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(one_ns.kvs.len(), 2);
        let none = store
            .range(RangeRequest {
                prefix: "/registry/services/".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(none.kvs.is_empty());
    }

    pub async fn range_pages_are_one_snapshot(store: &dyn Store) {
        for i in 0..25 {
            store
                .create(&format!("/p/{i:02}"), b(&format!("v{i}")))
                .await
                .unwrap();
        }
        let page = |token: Option<String>| RangeRequest {
            prefix: "/p/".into(),
            limit: Some(10),
            continue_token: token,
            revision: None,
            skip_count: false,
        };
        let first = store.range(page(None)).await.unwrap();
        assert_eq!(first.kvs.len(), 10);
        assert_eq!(first.remaining, Some(15));
        let snapshot = first.revision;
        // Change the keyspace between pages: the next pages must not see it.
        store.delete("/p/15", None).await.unwrap();
        store.update("/p/20", b("changed"), None).await.unwrap();
        store.create("/p/13a", b("new")).await.unwrap();
        let second = store.range(page(first.continue_token)).await.unwrap();
        assert_eq!(second.revision, snapshot);
        assert_eq!(second.remaining, Some(5));
        let third = store.range(page(second.continue_token)).await.unwrap();
        assert_eq!(third.revision, snapshot);
        assert_eq!(third.continue_token, None);
        assert_eq!(third.remaining, None);
        let seen: Vec<_> = [first.kvs, second.kvs, third.kvs]
            .concat()
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect();
        let expected: Vec<_> = (0..25)
            .map(|i| (format!("/p/{i:02}"), b(&format!("v{i}"))))
            .collect();
        assert_eq!(seen, expected);
        // A fresh list sees the changes.
        let fresh = store
            .range(RangeRequest {
                prefix: "/p/".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(fresh.kvs.len(), 25);
        assert!(fresh.kvs.iter().any(|kv| kv.key == "/p/13a"));
        assert!(!fresh.kvs.iter().any(|kv| kv.key == "/p/15"));
        // Pages that skip the count hold the same keys, and go on to the same end.
        let mut token = None;
        let mut uncounted = Vec::new();
        for _ in 0..10 {
            let page = store
                .range(RangeRequest {
                    prefix: "/p/".into(),
                    limit: Some(7),
                    continue_token: token,
                    skip_count: true,
                    ..Default::default()
                })
                .await
                .unwrap();
            assert!(page.kvs.len() <= 7);
            uncounted.extend(page.kvs);
            token = page.continue_token;
            if token.is_none() {
                break;
            }
        }
        assert_eq!(token, None, "still paging after 10 pages");
        assert_eq!(uncounted, fresh.kvs);
    }

    pub async fn range_at_an_older_revision_sees_the_past(store: &dyn Store) {
        store.create("/h/a", b("a1")).await.unwrap();
        let b1 = store.create("/h/b", b("b1")).await.unwrap();
        let then = store.current_revision().await.unwrap();
        store.update("/h/a", b("a2"), None).await.unwrap();
        store.delete("/h/b", None).await.unwrap();
        store.create("/h/c", b("c1")).await.unwrap();
        let past = store
            .range(RangeRequest {
                prefix: "/h/".into(),
                revision: Some(then),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(past.revision, then);
        let values: Vec<_> = past.kvs.iter().map(|kv| kv.value.clone()).collect();
        assert_eq!(values, [b("a1"), b("b1")]);
        assert_eq!(past.kvs[1], b1);
        let now = store.current_revision().await.unwrap();
        match store
            .range(RangeRequest {
                prefix: "/h/".into(),
                revision: Some(now + 100),
                ..Default::default()
            })
            .await
        {
            Err(Error::FutureRevision { requested, .. }) => assert_eq!(requested, now + 100),
            other => panic!("expected FutureRevision, got {other:?}"),
        }
    }

    pub async fn range_rejects_bad_continue_tokens(store: &dyn Store) {
        store.create("/t/a", b("1")).await.unwrap();
        store.create("/t/b", b("1")).await.unwrap();
        let first = store
            .range(RangeRequest {
                prefix: "/t/".into(),
                limit: Some(1),
                ..Default::default()
            })
            .await
            .unwrap();
        let token = first.continue_token.expect("a second page");
        for (prefix, token, revision) in [
            ("/t/", "garbage!".to_string(), None),
            ("/other/", token.clone(), None),
            ("/t/", token.clone(), Some(first.revision)),
        ] {
            let result = store
                .range(RangeRequest {
                    prefix: prefix.into(),
                    continue_token: Some(token),
                    revision,
                    limit: Some(1),
                    skip_count: false,
                })
                .await;
            assert!(
                matches!(result, Err(Error::InvalidContinue { .. })),
                "{prefix}: {result:?}"
            );
        }
    }

    pub async fn watch_delivers_every_change_in_order_once(store: &dyn Store) {
        let mut watch = store.watch("/w/", None).await.unwrap();
        let start = store.current_revision().await.unwrap();
        // Eight writers, each creating, updating and deleting its own keys, plus noise outside
        // the prefix that the watch must not deliver.
        let store_ptr: &dyn Store = store;
        let writes = futures::future::join_all((0..8).map(|w| async move {
            let mut done = Vec::new();
            for i in 0..10 {
                let key = format!("/w/{w}/{i}");
                let kv = store_ptr.create(&key, b("c")).await.unwrap();
                done.push((kv.mod_revision, EventKind::Put, key.clone()));
                let kv = store_ptr
                    .update(&key, b("u"), Some(kv.mod_revision))
                    .await
                    .unwrap();
                done.push((kv.mod_revision, EventKind::Put, key.clone()));
                store_ptr
                    .create(&format!("/noise/{w}/{i}"), b("n"))
                    .await
                    .unwrap();
                if i % 2 == 0 {
                    let last = store_ptr.delete(&key, None).await.unwrap();
                    assert_eq!(last.value, b("u"));
                    let now = store_ptr.get(&key).await.unwrap();
                    assert_eq!(now, None);
                    done.push((0, EventKind::Delete, key));
                }
            }
            done
        }))
        .await;
        let expected: usize = writes.iter().map(Vec::len).sum();
        let events = take_events(&mut watch, expected).await;
        assert_quiet(&mut watch).await;
        let revisions: Vec<_> = events.iter().map(Event::revision).collect();
        assert!(
            revisions.windows(2).all(|w| w[0] < w[1]),
            "revisions must strictly increase: {revisions:?}"
        );
        assert!(revisions[0] > start);
        assert!(events.iter().all(|e| e.kv.key.starts_with("/w/")));
        // Every acknowledged put is there with its revision; every delete is there once.
        let by_revision: BTreeMap<_, _> = events.iter().map(|e| (e.revision(), e)).collect();
        for (revision, kind, key) in writes.iter().flatten() {
            if *kind == EventKind::Put {
                let event = by_revision.get(revision).expect("a put event per write");
                assert_eq!((&event.kv.key, event.kind), (key, EventKind::Put));
            } else {
                let deletes = events
                    .iter()
                    .filter(|e| e.kind == EventKind::Delete && &e.kv.key == key)
                    .count();
                assert_eq!(deletes, 1, "one delete event for {key}");
            }
        }
    }

    pub async fn watch_replays_history_from_a_revision(store: &dyn Store) {
        let from = store.current_revision().await.unwrap();
        let a = store.create("/r/a", b("1")).await.unwrap();
        store.create("/elsewhere", b("1")).await.unwrap();
        let a2 = store.update("/r/a", b("2"), None).await.unwrap();
        let mut watch = store.watch("/r/", Some(from)).await.unwrap();
        let replayed = take_events(&mut watch, 2).await;
        assert_eq!(replayed[0].kv, a);
        assert_eq!(replayed[0].prev, None);
        assert_eq!(replayed[1].kv, a2);
        assert_eq!(replayed[1].prev.as_ref(), Some(&a));
        // Then live changes follow, without a gap or a repeat.
        let a3 = store.update("/r/a", b("3"), None).await.unwrap();
        let live = take_events(&mut watch, 1).await;
        assert_eq!(live[0].kv, a3);
        assert_quiet(&mut watch).await;
        // Starting after the last change delivers only what follows.
        let mut later = store.watch("/r/", Some(a3.mod_revision)).await.unwrap();
        let a4 = store.update("/r/a", b("4"), None).await.unwrap();
        assert_eq!(take_events(&mut later, 1).await[0].kv, a4);
    }

    pub async fn watch_delete_carries_the_last_state(store: &dyn Store) {
        let kv = store.create("/del/x", b("last words")).await.unwrap();
        let mut watch = store.watch("/del/", None).await.unwrap();
        let deleted = store.delete("/del/x", None).await.unwrap();
        let event = take_events(&mut watch, 1).await.remove(0);
        assert_eq!(event.kind, EventKind::Delete);
        assert_eq!(event.kv.key, "/del/x");
        assert!(event.kv.mod_revision > kv.mod_revision);
        assert_eq!(event.prev, Some(deleted));
    }

    pub async fn slow_watcher_misses_nothing(store: &dyn Store) {
        // More changes than any in-memory buffer holds arrive before the watcher reads one.
        const N: usize = 6000;
        let mut watch = store.watch("/slow/", None).await.unwrap();
        let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        futures::future::join_all((0..32).map(|_| {
            let counter = counter.clone();
            async move {
                loop {
                    let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= N {
                        break;
                    }
                    store
                        .create(&format!("/slow/{i:05}"), b("v"))
                        .await
                        .unwrap();
                }
            }
        }))
        .await;
        let events = take_events(&mut watch, N).await;
        let mut keys: Vec<_> = events.iter().map(|e| e.kv.key.clone()).collect();
        assert!(events.windows(2).all(|w| w[0].revision() < w[1].revision()));
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), N, "every key exactly once");
        assert_quiet(&mut watch).await;
    }

    pub async fn compaction_expires_older_revisions(store: &dyn Store) {
        let old = store.current_revision().await.unwrap();
        store.create("/c/a", b("1")).await.unwrap();
        store.create("/c/b", b("1")).await.unwrap();
        let kept = store.update("/c/a", b("2"), None).await.unwrap();
        let upto = kept.mod_revision;
        store.compact(upto).await.unwrap();
        assert!(store.compacted_revision().await.unwrap() >= upto);
        // Watching from before the compaction point fails with Expired, up front or as the
        // stream's first item.
        match store.watch("/c/", Some(old)).await {
            Err(Error::Expired { .. }) => {}
            Err(other) => panic!("expected Expired, got {other:?}"),
            Ok(mut stream) => {
                match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
                    Ok(Some(Err(Error::Expired { .. }))) => {}
                    other => panic!("expected an Expired item, got {other:?}"),
                }
            }
        }
        match store
            .range(RangeRequest {
                prefix: "/c/".into(),
                revision: Some(old),
                ..Default::default()
            })
            .await
        {
            Err(Error::Expired { requested, .. }) => assert_eq!(requested, old),
            other => panic!("expected Expired, got {other:?}"),
        }
        // The latest state survives, and watching from the compaction point works.
        let latest = store
            .range(RangeRequest {
                prefix: "/c/".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(latest.kvs.len(), 2);
        assert_eq!(latest.kvs[0], kept);
        let mut watch = store.watch("/c/", Some(upto)).await.unwrap();
        let next = store.update("/c/b", b("2"), None).await.unwrap();
        assert_eq!(take_events(&mut watch, 1).await[0].kv, next);
    }

    pub async fn concurrent_compare_and_swap_loses_no_increment(store: &dyn Store) {
        store.create("/counter", b("0")).await.unwrap();
        const WORKERS: usize = 8;
        const EACH: usize = 15;
        futures::future::join_all((0..WORKERS).map(|_| async move {
            for _ in 0..EACH {
                loop {
                    let current = store.get("/counter").await.unwrap().unwrap();
                    let n: usize = std::str::from_utf8(&current.value)
                        .unwrap()
                        .parse()
                        .unwrap();
                    match store
                        .update(
                            "/counter",
                            b(&(n + 1).to_string()),
                            Some(current.mod_revision),
                        )
                        .await
                    {
                        Ok(_) => break,
                        Err(Error::Conflict { .. }) => continue,
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
            }
        }))
        .await;
        let last = store.get("/counter").await.unwrap().unwrap();
        assert_eq!(last.value, b(&(WORKERS * EACH).to_string()));
    }
}
