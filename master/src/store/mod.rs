//! The state store: one trait, two backends, etcd's data model.
//!
//! Everything the master knows lives here, as bytes under Kubernetes' key layout
//! (`/registry/<resource>/<namespace>/<name>`, or `/registry/<resource>/<name>` for
//! cluster-scoped objects). The model is etcd's, so both backends answer the same way:
//!
//! - one global revision, bumped by every successful write and never by a failed one;
//!   each key carries the revision that created it and the one that last changed it;
//! - create fails if the key exists; update and delete may be made conditional on the key's
//!   mod revision (the basis of the API's 409 Conflict);
//! - a range over a prefix is read at one revision, in key order, and pages with a continue
//!   token that pins that revision, so every page of one list is one consistent snapshot;
//! - a watch on a prefix from a revision delivers every later change under the prefix, in
//!   revision order, exactly once;
//! - history is bounded: after `compact(rev)` a range or watch at an older revision fails with
//!   [`Error::Expired`] (the API's 410 Gone).
//!
//! Backends: [`embedded`] (redb, one file, the default) and [`etcd`] (etcd v3 over gRPC).
//! `store::tests` runs one conformance suite against both.

pub mod embedded;
pub mod etcd;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

/// A store revision. Revisions start at 1 for an empty store (as in etcd); the first write is 2.
pub type Revision = i64;

/// A key with its value and the two revisions etcd keeps for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// The revision of the write that created the key (since it last did not exist).
    pub create_revision: Revision,
    /// The revision of the last write to the key: the object's `resourceVersion`.
    pub mod_revision: Revision,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or changed.
    Put,
    /// The key was deleted.
    Delete,
}

/// One change, as a watch delivers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// After a put, the new state. After a delete, the key with `mod_revision` set to the
    /// deleting revision and an empty value.
    pub kv: KeyValue,
    /// The state before the change, if the key existed. Present for every delete, except on
    /// etcd when the previous revision was already compacted away.
    pub prev: Option<KeyValue>,
}

impl Event {
    /// The revision at which this change happened.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// What a range reads.
#[derive(Clone, Debug, Default)]
pub struct RangeRequest {
    /// Keys starting with this prefix. Use a trailing `/` to mean "the directory".
    pub prefix: String,
    /// At most this many keys (0 or `None`: all).
    pub limit: Option<usize>,
    /// A token from an earlier page's [`RangeResponse::continue_token`]. It pins the revision of
    /// the first page; `revision` must then be unset.
    pub continue_token: Option<String>,
    /// Read at this revision instead of the latest.
    pub revision: Option<Revision>,
    /// The caller does not need [`RangeResponse::remaining`] (a list the server pages for
    /// itself): a backend may leave it unset and stop reading at the page's end, instead of
    /// walking the rest of the range to count it.
    pub skip_count: bool,
}

/// What a range returns.
#[derive(Clone, Debug, Default)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// The revision the range was read at (the list's `resourceVersion`).
    pub revision: Revision,
    /// Set when more keys follow: pass it back to read the next page at the same revision.
    pub continue_token: Option<String>,
    /// How many keys follow this page, when more do (`remainingItemCount`).
    pub remaining: Option<u64>,
}

/// A stream of changes. It ends with an [`Error::Expired`] item if the watcher fell behind
/// compaction, or with an error if the backend failed; otherwise it runs until dropped.
pub type WatchStream = BoxStream<'static, Result<Event>>;

/// The operations every backend provides, with identical semantics.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The latest committed revision.
    async fn current_revision(&self) -> Result<Revision>;

    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Creates the key; fails with [`Error::AlreadyExists`] if it exists.
    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue>;

    /// Replaces an existing key's value. With `expected_mod_revision`, fails with
    /// [`Error::Conflict`] unless the key's mod revision is exactly that. Fails with
    /// [`Error::NotFound`] if the key does not exist.
    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected_mod_revision: Option<Revision>,
    ) -> Result<KeyValue>;

    /// Deletes an existing key and returns its last state. The condition is as for `update`.
    async fn delete(&self, key: &str, expected_mod_revision: Option<Revision>) -> Result<KeyValue>;

    async fn range(&self, request: RangeRequest) -> Result<RangeResponse>;

    /// Watches keys under `prefix`, delivering every change with a revision greater than
    /// `after` (or, with `None`, every change after the current revision).
    async fn watch(&self, prefix: &str, after: Option<Revision>) -> Result<WatchStream>;

    /// Discards the history before `revision`: later ranges at a revision below it, and
    /// watches from below it, fail with [`Error::Expired`]. A range at `revision` itself and a
    /// watch from it still work; the latest state of every key is kept. Compacting to a
    /// revision at or below the current compaction point does nothing.
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// The oldest revision that ranges and watches can still start from.
    async fn compacted_revision(&self) -> Result<Revision>;
}

/// Which backend, and how to reach it.
#[derive(Clone, Debug)]
pub enum Backend {
    /// One redb file under the data directory, with a page cache of at most `cache_bytes`.
    Embedded { path: PathBuf, cache_bytes: usize },
    /// An etcd cluster; any of the endpoints may answer.
    Etcd { endpoints: Vec<String> },
}

/// Opens the configured backend.
pub async fn open(backend: &Backend) -> Result<Arc<dyn Store>> {
    Ok(match backend {
        Backend::Embedded { path, cache_bytes } => {
            let (path, cache_bytes) = (path.clone(), *cache_bytes);
            let store = tokio::task::spawn_blocking(move || {
                embedded::EmbeddedStore::open_with_cache(&path, cache_bytes)
            })
            .await
            .map_err(|e| Error::Internal(format!("store open task failed: {e}")))??;
            Arc::new(store)
        }
        Backend::Etcd { endpoints } => {
            Arc::new(etcd::EtcdStore::connect(endpoints, etcd::Options::default()).await?)
        }
    })
}

/// Keeps history bounded the way kube-apiserver does: every `interval`, compact to the revision
/// that was current one interval earlier, so watchers always have at least `interval` to resume.
pub fn spawn_compactor(store: Arc<dyn Store>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut previous: Option<Revision> = None;
        loop {
            ticker.tick().await;
            if let Some(target) = previous {
                match store.compact(target).await {
                    Ok(()) => tracing::debug!(revision = target, "compacted store history"),
                    Err(e) => tracing::warn!(revision = target, error = %e, "compaction failed"),
                }
            }
            match store.current_revision().await {
                Ok(current) => previous = Some(current),
                Err(e) => tracing::warn!(error = %e, "cannot read the store revision"),
            }
        }
    })
}

/// The store key of an object: `/registry/<resource>/<namespace>/<name>`, or
/// `/registry/<resource>/<name>` when `namespace` is `None` (cluster-scoped).
pub fn object_key(resource: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("/registry/{resource}/{ns}/{name}"),
        None => format!("/registry/{resource}/{name}"),
    }
}

/// The prefix under which a resource's objects live, in one namespace or in all.
pub fn resource_prefix(resource: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("/registry/{resource}/{ns}/"),
        None => format!("/registry/{resource}/"),
    }
}

/// The first key after every key that starts with `prefix` (etcd's "range end" for a prefix),
/// or `None` if there is none (the prefix is empty or all `0xff`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A continue token: the revision a paged range reads at and the key it resumes from, as
/// base64 JSON (the shape Kubernetes uses, so tokens look familiar in logs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContinueToken {
    #[serde(rename = "rv")]
    pub revision: Revision,
    /// The first key of the next page.
    pub start: String,
}

impl ContinueToken {
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// Decodes a token and checks that it continues a range over `prefix`.
    pub fn decode(token: &str, prefix: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidContinue {
            reason: reason.to_string(),
        };
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.trim_end_matches('='))
            .map_err(|_| invalid("not base64"))?;
        let parsed: ContinueToken =
            serde_json::from_slice(&json).map_err(|_| invalid("not a continue token"))?;
        if parsed.revision <= 0 {
            return Err(invalid("revision must be positive"));
        }
        if !parsed.start.starts_with(prefix) {
            return Err(invalid("token belongs to a different list"));
        }
        Ok(parsed)
    }
}

/// Resolves a range request's start key and revision, shared by both backends.
pub(crate) fn range_start(request: &RangeRequest) -> Result<(String, Option<Revision>)> {
    match &request.continue_token {
        Some(token) => {
            if request.revision.is_some() {
                return Err(Error::InvalidContinue {
                    reason: "a continue token cannot be combined with a revision".into(),
                });
            }
            let token = ContinueToken::decode(token, &request.prefix)?;
            Ok((token.start, Some(token.revision)))
        }
        None => Ok((request.prefix.clone(), request.revision.filter(|r| *r > 0))),
    }
}

/// The smallest key after `key`.
pub(crate) fn key_successor(key: &str) -> String {
    let mut next = String::with_capacity(key.len() + 1);
    next.push_str(key);
    next.push('\0');
    next
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Store errors. The API maps them to Kubernetes `Status` codes: `AlreadyExists` 409,
/// `NotFound` 404, `Conflict` 409, `Expired` 410, `InvalidContinue` 400, `Unavailable` and
/// `Timeout` 503/504, the rest 500.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("key {key} already exists")]
    AlreadyExists { key: String },

    #[error("key {key} not found")]
    NotFound { key: String },

    #[error("key {key} was modified: expected mod revision {expected}, found {actual}")]
    Conflict {
        key: String,
        expected: Revision,
        actual: Revision,
    },

    #[error("revision {requested} has been compacted; the oldest available is {compacted}")]
    Expired {
        requested: Revision,
        compacted: Revision,
    },

    #[error("revision {requested} is in the future; the current revision is {current}")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },

    #[error("invalid continue token: {reason}")]
    InvalidContinue { reason: String },

    #[error("cannot open store file {path}: {reason}")]
    Open { path: PathBuf, reason: String },

    #[error("store file {path} is corrupted: {detail}; restore it from a backup, or move it away to start an empty store")]
    Corrupt { path: PathBuf, detail: String },

    #[error("storage error on {path}: {source}")]
    Storage {
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },

    #[error("etcd at {endpoints} is unavailable: {detail}")]
    Unavailable { endpoints: String, detail: String },

    #[error("etcd at {endpoints} did not answer {operation} within {timeout:?}")]
    Timeout {
        endpoints: String,
        operation: &'static str,
        timeout: Duration,
    },

    #[error("etcd request {operation} failed: {source}")]
    Etcd {
        operation: &'static str,
        #[source]
        source: Box<etcd_client::Error>,
    },

    #[error("the store is closed")]
    Closed,

    #[error("internal store error: {0}")]
    Internal(String),
}

impl Error {
    /// True for errors that say the backend cannot be reached now (worth retrying later).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. } | Error::Timeout { .. } | Error::Closed
        )
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn keys_follow_kubernetes_layout() {
        assert_eq!(
            object_key("pods", Some("default"), "web-0"),
            "/registry/pods/default/web-0"
        );
        assert_eq!(object_key("nodes", None, "n1"), "/registry/nodes/n1");
        assert_eq!(resource_prefix("pods", None), "/registry/pods/");
        assert_eq!(
            resource_prefix("pods", Some("kube-system")),
            "/registry/pods/kube-system/"
        );
    }

    #[test]
    fn prefix_end_cases() {
        let check = |input: &[u8], expected: Option<&[u8]>| {
            assert_eq!(prefix_end(input).as_deref(), expected, "prefix {input:?}");
        };
        check(b"/a/", Some(b"/a0"));
        check(b"a\xff", Some(b"b"));
        check(b"\xff\xff", None);
        check(b"", None);
    }

    #[test]
    fn continue_token_round_trips_and_rejects_garbage() {
        let token = ContinueToken {
            revision: 42,
            start: "/registry/pods/default/b".into(),
        };
        let encoded = token.encode();
        assert_eq!(
            ContinueToken::decode(&encoded, "/registry/pods/").unwrap(),
            token
        );
        for (bad, why) in [
            ("!!!", "not base64"),
            ("e30", "not a continue token"),
            (encoded.as_str(), "token belongs to a different list"),
        ] {
            let prefix = if bad == encoded {
                "/registry/services/"
            } else {
                "/registry/pods/"
            };
            match ContinueToken::decode(bad, prefix) {
                Err(Error::InvalidContinue { reason }) => assert_eq!(reason, why),
                other => panic!("{bad}: expected InvalidContinue({why}), got {other:?}"),
            }
        }
    }
}
