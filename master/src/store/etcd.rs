//! The etcd backend: etcd v3 over gRPC, with the `etcd-client` crate.
//!
//! The store's model is etcd's, so most operations are one etcd request:
//!
//! - `get`: a range on the key. `current_revision`: the header of a count-only range.
//! - `create`: a txn `if create_revision(key) == 0 then put`; a failed compare is
//!   [`Error::AlreadyExists`]. The new key's create and mod revisions are the txn's header revision.
//! - `update` / `delete`: a txn `if mod_revision(key) == expected` (or, unconditionally,
//!   `create_revision(key) > 0`, "the key exists") `then put/delete (with prev_kv) else get`. The
//!   else branch's get tells [`Error::NotFound`] from [`Error::Conflict`] in the same round trip.
//!   An update keeps the previous create revision (from the put's prev_kv); a delete returns the
//!   prev_kv, the key's last state.
//! - `range`: a range `[start, prefix_end(prefix))` with the page limit, at the pinned revision if
//!   there is one (a continue token or an explicit revision). etcd's `count` counts every key from
//!   `start` to the end of the range at that revision, so `remaining = count - page length`.
//!   etcd's "required revision has been compacted" is [`Error::Expired`], "required revision is a
//!   future revision" is [`Error::FutureRevision`].
//! - `watch`: one etcd watch on the prefix, with prev_kv, started at revision `after` (not
//!   `after + 1`: etcd refuses a watch whose start revision is *below* its compacted revision, so
//!   starting at `after` makes etcd's check exactly ours, "`after` is older than the compacted
//!   revision"; the events at revision `after` itself are dropped). A range at revision `after`
//!   first fails fast with [`Error::Expired`] in the common case; if a compaction overtakes the
//!   watch later, etcd cancels it with a compact revision and the stream ends with
//!   [`Error::Expired`]. Dropping the stream drops the gRPC stream, which cancels the watch on the
//!   server; no task is left behind. A watch is not resumed on another endpoint when its connection
//!   fails: the stream ends with the error and the caller re-watches from its last revision.
//! - `compact`: a physical compaction (the call returns once etcd has applied it). Compacting at
//!   or below the compacted revision is a no-op, as in the embedded backend.
//! - `compacted_revision`: etcd does not expose it, so it is learned. The store remembers the
//!   highest compacted revision it knows of (its own compactions, and compact revisions reported by
//!   watches), a lower bound since compaction only moves forward. A range at that revision tells
//!   whether it is still current (one request, the usual answer); if it fails as compacted, someone
//!   else compacted further, and a binary search of ranges at revisions up to the current one finds
//!   etcd's compacted revision. A store never compacted answers 0, like the embedded backend.
//!
//! **Endpoints.** Each endpoint has its own client; requests go round-robin over the endpoints
//! that have not failed recently, and fail over to the next one when an endpoint cannot be
//! reached. (`etcd-client`'s own balancing does not route around a dead endpoint: a request sent
//! to it fails.) Reads, watches and compactions fail over after any availability error; writes
//! only when the request was never sent (no connection), so a write is never applied twice. An
//! endpoint that accepts connections but does not answer costs the request that found it a
//! [`Error::Timeout`], and is then avoided for a while. `connect` asks every endpoint at once and
//! succeeds when one answers.
//!
//! **Errors.** Every request, failover included, is bounded by [`Options::request_timeout`]
//! ([`Error::Timeout`]); transport and gRPC "unavailable" failures are [`Error::Unavailable`];
//! anything else is [`Error::Etcd`]. A watch stream has no deadline, but HTTP/2 keep-alive pings
//! end it with an error when its connection dies silently.

use std::collections::VecDeque;
use std::error::Error as _;
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions,
    KvClient, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchClient, WatchOptions,
};
use futures::StreamExt as _;

use super::{
    key_successor, prefix_end, range_start, ContinueToken, Error, Event, EventKind, KeyValue,
    RangeRequest, RangeResponse, Result, Revision, Store, WatchStream,
};

/// gRPC status codes (part of the wire protocol), compared as numbers so that this crate does
/// not need `tonic` as a direct dependency.
const GRPC_DEADLINE_EXCEEDED: i32 = 4;
const GRPC_OUT_OF_RANGE: i32 = 11;
const GRPC_UNAVAILABLE: i32 = 14;

/// etcd's messages for a range or watch at a revision it no longer or does not yet have.
const COMPACTED_MESSAGE: &str = "required revision has been compacted";
const FUTURE_MESSAGE: &str = "required revision is a future revision";

/// How often an idle HTTP/2 connection with open streams (watches) is pinged. etcd refuses pings
/// more often than every 5 s (`--grpc-keepalive-min-time`).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// How long an endpoint that failed is tried only after the others.
const AVOID_FOR: Duration = Duration::from_secs(10);

/// The largest response accepted: gRPC's own limit, so a big list page or event is never
/// refused by the client (etcd bounds requests itself, 1.5 MiB by default).
const MAX_MESSAGE: usize = i32::MAX as usize;

/// Connection settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long to wait for a TCP connection to an endpoint, and for [`EtcdStore::connect`]'s
    /// first request.
    pub connect_timeout: Duration,
    /// How long any one request may take, failover included, before it fails with
    /// [`Error::Timeout`].
    pub request_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// A [`Store`] on an etcd cluster.
pub struct EtcdStore {
    members: Arc<Members>,
    request_timeout: Duration,
    /// The highest compacted revision known (0: none known). See the module documentation.
    compacted: Arc<AtomicI64>,
}

/// One endpoint and its client.
struct Member {
    index: usize,
    url: String,
    kv: KvClient,
    watch: WatchClient,
    /// Holds the connection the clones above share.
    _client: Client,
}

/// The endpoints, and which of them failed lately.
struct Members {
    list: Vec<Member>,
    /// The endpoints, comma-separated, for error messages.
    endpoints: String,
    next: AtomicUsize,
    /// Per endpoint: tried only after the others until then.
    avoid_until: Mutex<Vec<Option<Instant>>>,
}

/// Whether a failed request may be sent again to another endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retry {
    /// Reads, watches, compactions: after any availability failure.
    Idempotent,
    /// Writes: only if the request was never sent (the endpoint could not be connected to).
    Write,
}

/// Why etcd refused a request at a revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RevisionRefusal {
    Compacted,
    Future,
}

/// Whether etcd can read at a revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    Readable,
    Compacted,
    Future,
}

impl Members {
    /// The order to try the endpoints in: round-robin over those that have not failed lately,
    /// then the others (so a request still tries everything when all have failed).
    fn order(&self) -> Vec<usize> {
        let n = self.list.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n.max(1);
        let now = Instant::now();
        let avoid = self
            .avoid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (fresh, failed): (Vec<usize>, Vec<usize>) = (0..n)
            .map(|i| (start + i) % n)
            .partition(|&i| avoid.get(i).copied().flatten().is_none_or(|t| t <= now));
        fresh.into_iter().chain(failed).collect()
    }

    fn mark(&self, index: usize, failed: bool) {
        let mut avoid = self
            .avoid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = avoid.get_mut(index) {
            *slot = failed.then(|| Instant::now() + AVOID_FOR);
        }
    }

    /// Sends `request` to one endpoint after another until one answers, all within `limit`.
    async fn call<T, F, Fut>(
        &self,
        operation: &'static str,
        retry: Retry,
        limit: Duration,
        request: F,
    ) -> Result<T>
    where
        F: Fn(&Member) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + limit;
        let mut failures = Vec::new();
        for index in self.order() {
            let Some(member) = self.list.get(index) else {
                continue;
            };
            let e = match tokio::time::timeout_at(deadline, request(member)).await {
                Ok(Ok(value)) => {
                    self.mark(index, false);
                    return Ok(value);
                }
                Ok(Err(e)) => e,
                Err(_) => {
                    // This endpoint hung (or the ones before it took the time): try the others
                    // first for a while.
                    self.mark(index, true);
                    tracing::debug!(endpoint = %member.url, operation, ?limit, "etcd request timed out");
                    return Err(Error::Timeout {
                        endpoints: self.endpoints.clone(),
                        operation,
                        timeout: limit,
                    });
                }
            };
            let never_sent = is_connect_error(&e);
            let error = map_error(&member.url, operation, e);
            let Error::Unavailable { detail, .. } = &error else {
                return Err(error);
            };
            self.mark(index, true);
            tracing::debug!(endpoint = %member.url, operation, detail, "etcd endpoint failed");
            if self.list.len() == 1 || (retry == Retry::Write && !never_sent) {
                return Err(error);
            }
            failures.push(format!("{}: {detail}", member.url));
        }
        Err(Error::Unavailable {
            endpoints: self.endpoints.clone(),
            detail: failures.join("; "),
        })
    }
}

impl EtcdStore {
    /// Connects to an etcd cluster at `endpoints` (URLs such as `http://127.0.0.1:2379`; any of
    /// them may answer).
    ///
    /// One request is made before returning, so an unreachable cluster fails here, within
    /// `connect_timeout`, with [`Error::Unavailable`] or [`Error::Timeout`].
    pub async fn connect(endpoints: &[String], options: Options) -> Result<EtcdStore> {
        if endpoints.is_empty() {
            return Err(Error::Etcd {
                operation: "connect",
                source: Box::new(etcd_client::Error::InvalidArgs(
                    "no etcd endpoints given".into(),
                )),
            });
        }
        let connect_options = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_keep_alive(KEEPALIVE_INTERVAL, options.request_timeout);
        let mut list = Vec::with_capacity(endpoints.len());
        for (index, url) in endpoints.iter().enumerate() {
            // Connecting only sets the client up: the connection is made by the first request.
            let connecting = Client::connect([url.as_str()], Some(connect_options.clone()));
            let client = match tokio::time::timeout(options.connect_timeout, connecting).await {
                Ok(Ok(client)) => client,
                Ok(Err(e)) => return Err(map_error(url, "connect", e)),
                Err(_) => {
                    return Err(Error::Timeout {
                        endpoints: url.clone(),
                        operation: "connect",
                        timeout: options.connect_timeout,
                    })
                }
            };
            list.push(Member {
                index,
                url: url.clone(),
                kv: client.kv_client().max_decoding_message_size(MAX_MESSAGE),
                watch: client.watch_client().max_decoding_message_size(MAX_MESSAGE),
                _client: client,
            });
        }
        let store = EtcdStore {
            members: Arc::new(Members {
                endpoints: endpoints.join(","),
                next: AtomicUsize::new(0),
                avoid_until: Mutex::new(vec![None; list.len()]),
                list,
            }),
            request_timeout: options.request_timeout,
            compacted: Arc::new(AtomicI64::new(0)),
        };
        // Ask every endpoint at once: one answer is enough (a hung endpoint must not make an
        // otherwise healthy cluster look down). `list` is not empty, as `select_ok` requires.
        let probes = store.members.list.iter().map(|member| {
            let (mut kv, url, limit) = (
                member.kv.clone(),
                member.url.clone(),
                options.connect_timeout,
            );
            Box::pin(async move {
                let options = GetOptions::new().with_count_only();
                match tokio::time::timeout(limit, kv.get(vec![0], Some(options))).await {
                    Ok(Ok(response)) => Ok(response.header().map_or(0, |h| h.revision())),
                    Ok(Err(e)) => Err(map_error(&url, "connect", e)),
                    Err(_) => Err(Error::Timeout {
                        endpoints: url,
                        operation: "connect",
                        timeout: limit,
                    }),
                }
            })
        });
        let (revision, _) = futures::future::select_ok(probes).await?;
        tracing::info!(endpoints = %store.members.endpoints, revision, "connected to etcd");
        Ok(store)
    }

    /// Runs a KV request within the request timeout, failing over between endpoints.
    async fn kv<T, F, Fut>(&self, operation: &'static str, retry: Retry, request: F) -> Result<T>
    where
        F: Fn(KvClient) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        self.members
            .call(operation, retry, self.request_timeout, |m| {
                request(m.kv.clone())
            })
            .await
    }

    /// Reads nothing at `revision`, to learn whether etcd still (or already) has it.
    async fn probe(&self, revision: Revision) -> Result<Probe> {
        let probed = self
            .kv("probe revision", Retry::Idempotent, |mut kv| async move {
                let options = GetOptions::new().with_count_only().with_revision(revision);
                kv.get(vec![0], Some(options)).await
            })
            .await;
        match probed {
            Ok(_) => Ok(Probe::Readable),
            Err(e) => match revision_refusal(&e) {
                Some(RevisionRefusal::Compacted) => Ok(Probe::Compacted),
                Some(RevisionRefusal::Future) => Ok(Probe::Future),
                None => Err(e),
            },
        }
    }

    /// The conditional write of an update or delete: `op` if the key exists (with the expected
    /// mod revision), else a read of the key to say why not.
    async fn conditional(
        &self,
        operation: &'static str,
        key: &str,
        expected: Option<Revision>,
        op: TxnOp,
    ) -> Result<TxnResponse> {
        let compare = match expected {
            Some(revision) => Compare::mod_revision(key, CompareOp::Equal, revision),
            None => Compare::create_revision(key, CompareOp::Greater, 0),
        };
        let txn = Txn::new()
            .when([compare])
            .and_then([op])
            .or_else([TxnOp::get(key, None)]);
        let response = self
            .kv(operation, Retry::Write, |mut kv| {
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await?;
        if response.succeeded() {
            Ok(response)
        } else {
            Err(refusal(key, expected, &response))
        }
    }

    /// The error for a request at a compacted revision.
    async fn expired(&self, requested: Revision) -> Error {
        let compacted = match self.compacted_revision().await {
            Ok(compacted) if compacted > requested => compacted,
            Ok(_) => requested.saturating_add(1),
            Err(e) => {
                tracing::debug!(error = %e, "cannot learn etcd's compacted revision");
                self.compacted
                    .load(Ordering::Acquire)
                    .max(requested.saturating_add(1))
            }
        };
        Error::Expired {
            requested,
            compacted,
        }
    }

    /// The error for a request at a revision etcd does not have yet.
    async fn future(&self, requested: Revision) -> Error {
        let current = match self.current_revision().await {
            Ok(current) => current,
            Err(e) => {
                tracing::debug!(error = %e, "cannot learn etcd's current revision");
                0
            }
        };
        Error::FutureRevision { requested, current }
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn current_revision(&self) -> Result<Revision> {
        let response = self
            .kv("current revision", Retry::Idempotent, |mut kv| async move {
                kv.get(vec![0], Some(GetOptions::new().with_count_only()))
                    .await
            })
            .await?;
        header_revision(response.header())
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let mut response = self
            .kv("get", Retry::Idempotent, |mut kv| {
                let key = key.to_string();
                async move { kv.get(key, None).await }
            })
            .await?;
        response
            .take_kvs()
            .into_iter()
            .next()
            .map(to_kv)
            .transpose()
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value.to_vec(), None)]);
        let response = self
            .kv("create", Retry::Write, |mut kv| {
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await?;
        if !response.succeeded() {
            return Err(Error::AlreadyExists {
                key: key.to_string(),
            });
        }
        let revision = header_revision(response.header())?;
        Ok(KeyValue {
            key: key.to_string(),
            value,
            create_revision: revision,
            mod_revision: revision,
        })
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected_mod_revision: Option<Revision>,
    ) -> Result<KeyValue> {
        let put = TxnOp::put(key, value.to_vec(), Some(PutOptions::new().with_prev_key()));
        let response = self
            .conditional("update", key, expected_mod_revision, put)
            .await?;
        let revision = header_revision(response.header())?;
        let prev = response
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Put(mut put) => put.take_prev_key(),
                _ => None,
            })
            .ok_or_else(|| {
                Error::Internal(format!(
                    "etcd did not return the previous value of updated key {key}"
                ))
            })?;
        Ok(KeyValue {
            key: key.to_string(),
            value,
            create_revision: prev.create_revision(),
            mod_revision: revision,
        })
    }

    async fn delete(&self, key: &str, expected_mod_revision: Option<Revision>) -> Result<KeyValue> {
        let delete = TxnOp::delete(key, Some(DeleteOptions::new().with_prev_key()));
        let response = self
            .conditional("delete", key, expected_mod_revision, delete)
            .await?;
        response
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Delete(mut delete) => delete.take_prev_kvs().into_iter().next(),
                _ => None,
            })
            .map(to_kv)
            .unwrap_or_else(|| {
                Err(Error::Internal(format!(
                    "etcd did not return the last state of deleted key {key}"
                )))
            })
    }

    async fn range(&self, request: RangeRequest) -> Result<RangeResponse> {
        let (start, pinned) = range_start(&request)?;
        let mut options = GetOptions::new().with_range(range_end(&request.prefix));
        if let Some(limit) = request.limit.filter(|l| *l > 0) {
            options = options.with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        if let Some(revision) = pinned {
            options = options.with_revision(revision);
        }
        let start_key = range_key(&start);
        let result = self
            .kv("range", Retry::Idempotent, |mut kv| {
                let (key, options) = (start_key.clone(), options.clone());
                async move { kv.get(key, Some(options)).await }
            })
            .await;
        let mut response = match (result, pinned) {
            (Ok(response), _) => response,
            (Err(e), Some(revision)) => {
                return Err(match revision_refusal(&e) {
                    Some(RevisionRefusal::Compacted) => self.expired(revision).await,
                    Some(RevisionRefusal::Future) => self.future(revision).await,
                    None => e,
                })
            }
            (Err(e), None) => return Err(e),
        };
        let revision = match pinned {
            Some(revision) => revision,
            None => header_revision(response.header())?,
        };
        let more = response.more();
        let count = u64::try_from(response.count()).unwrap_or(0);
        let kvs = response
            .take_kvs()
            .into_iter()
            .map(to_kv)
            .collect::<Result<Vec<_>>>()?;
        let continue_token = match (more, kvs.last()) {
            (true, Some(last)) => Some(
                ContinueToken {
                    revision,
                    start: key_successor(&last.key),
                }
                .encode(),
            ),
            _ => None,
        };
        let remaining = continue_token
            .as_ref()
            .map(|_| count.saturating_sub(kvs.len() as u64));
        Ok(RangeResponse {
            kvs,
            revision,
            continue_token,
            remaining,
        })
    }

    async fn watch(&self, prefix: &str, after: Option<Revision>) -> Result<WatchStream> {
        let after = match after {
            None => self.current_revision().await?,
            Some(after) => match self.probe(after.max(1)).await? {
                Probe::Compacted => return Err(self.expired(after).await),
                // A future `after` is fine: the watch waits for it, as the embedded one does.
                Probe::Readable | Probe::Future => after,
            },
        };
        let options = WatchOptions::new()
            .with_range(range_end(prefix))
            .with_start_revision(after.max(1))
            .with_prev_key();
        let key = range_key(prefix);
        let (stream, member) = self
            .members
            .call("watch", Retry::Idempotent, self.request_timeout, |m| {
                let (mut client, index) = (m.watch.clone(), m.index);
                let (key, options) = (key.clone(), options.clone());
                async move {
                    let stream = client.watch(key, Some(options)).await?;
                    Ok((stream, index))
                }
            })
            .await?;
        tracing::debug!(prefix, after, "etcd watch started");
        let state = WatchState {
            stream,
            pending: VecDeque::new(),
            after,
            delivered: after,
            done: false,
            members: self.members.clone(),
            member,
            compacted: self.compacted.clone(),
        };
        Ok(futures::stream::unfold(state, next_event).fuse().boxed())
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        if revision <= 0 {
            return Ok(());
        }
        let compacted = self
            .kv("compact", Retry::Idempotent, |mut kv| async move {
                let options = CompactionOptions::new().with_physical();
                kv.compact(revision, Some(options)).await
            })
            .await;
        match compacted {
            Ok(_) => {
                self.compacted.fetch_max(revision, Ordering::AcqRel);
                tracing::info!(endpoints = %self.members.endpoints, revision, "compacted etcd");
                Ok(())
            }
            Err(e) => match revision_refusal(&e) {
                // etcd has compacted at or past this revision already.
                Some(RevisionRefusal::Compacted) => {
                    self.compacted.fetch_max(revision, Ordering::AcqRel);
                    Ok(())
                }
                Some(RevisionRefusal::Future) => Err(self.future(revision).await),
                None => Err(e),
            },
        }
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        let mut known = self.compacted.load(Ordering::Acquire);
        let mut probe = self.probe(known.max(1)).await?;
        if probe == Probe::Future {
            // etcd is behind what this store saw compacted: its data was replaced. Start over.
            tracing::warn!(
                endpoints = %self.members.endpoints,
                known,
                "etcd's history is shorter than the compacted revision seen before"
            );
            self.compacted.store(0, Ordering::Release);
            known = 0;
            probe = self.probe(1).await?;
        }
        if probe == Probe::Readable {
            return Ok(known);
        }
        // Ranges fail below etcd's compacted revision and work at and above it: binary search
        // between a revision that failed and the current one, which always works.
        let mut failed = known.max(1);
        let mut readable = self.current_revision().await?;
        while readable - failed > 1 {
            let middle = failed + (readable - failed) / 2;
            match self.probe(middle).await? {
                Probe::Compacted => failed = middle,
                Probe::Readable | Probe::Future => readable = middle,
            }
        }
        let previous = self.compacted.fetch_max(readable, Ordering::AcqRel);
        tracing::debug!(
            endpoints = %self.members.endpoints,
            compacted = readable,
            previous,
            "learned etcd's compacted revision"
        );
        Ok(readable.max(previous))
    }
}

/// A live watch: etcd's stream and the events of its last response not yet delivered.
struct WatchState {
    stream: etcd_client::WatchStream,
    pending: VecDeque<Event>,
    /// Events at or below this revision are not delivered (the watch starts at it, inclusive).
    after: Revision,
    /// The revision of the last event delivered (or `after`).
    delivered: Revision,
    done: bool,
    members: Arc<Members>,
    /// The endpoint the watch runs on.
    member: usize,
    compacted: Arc<AtomicI64>,
}

async fn next_event(mut state: WatchState) -> Option<(Result<Event>, WatchState)> {
    loop {
        if let Some(event) = state.pending.pop_front() {
            state.delivered = event.revision();
            return Some((Ok(event), state));
        }
        if state.done {
            return None;
        }
        let url = state
            .members
            .list
            .get(state.member)
            .map_or_else(|| state.members.endpoints.clone(), |m| m.url.clone());
        let failure = match state.stream.message().await {
            Ok(Some(response)) => {
                let compact_revision = response.compact_revision();
                if compact_revision > 0 {
                    state
                        .compacted
                        .fetch_max(compact_revision, Ordering::AcqRel);
                    Error::Expired {
                        requested: state.delivered,
                        compacted: compact_revision,
                    }
                } else if response.canceled() {
                    cancellation(&url, response.cancel_reason())
                } else {
                    match to_events(response.events(), state.after) {
                        Ok(events) => {
                            state.pending.extend(events);
                            continue;
                        }
                        Err(e) => e,
                    }
                }
            }
            Ok(None) => Error::Unavailable {
                endpoints: url,
                detail: "etcd closed the watch stream".into(),
            },
            Err(e) => map_error(&url, "watch", e),
        };
        if failure.is_unavailable() {
            state.members.mark(state.member, true);
        }
        tracing::debug!(error = %failure, delivered = state.delivered, "etcd watch ended");
        state.done = true;
        return Some((Err(failure), state));
    }
}

/// The error for a watch etcd canceled for a reason other than compaction.
fn cancellation(endpoints: &str, reason: &str) -> Error {
    if reason.contains("no leader") {
        Error::Unavailable {
            endpoints: endpoints.to_string(),
            detail: reason.to_string(),
        }
    } else {
        Error::Etcd {
            operation: "watch",
            source: Box::new(etcd_client::Error::WatchError(format!(
                "etcd canceled the watch: {reason}"
            ))),
        }
    }
}

fn to_events(events: &[etcd_client::Event], after: Revision) -> Result<Vec<Event>> {
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        let kv = event
            .kv()
            .ok_or_else(|| Error::Internal("etcd sent a watch event without a key".into()))?;
        if kv.mod_revision() <= after {
            continue;
        }
        let prev = event.prev_kv().map(to_kv_ref).transpose()?;
        // etcd marks a deletion by a key value with no create revision (a tombstone), exactly as
        // it decides the event type itself. (`Event::event_type` would panic on an unknown type.)
        out.push(if kv.create_revision() == 0 {
            Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: key_string(kv.key().to_vec())?,
                    value: Bytes::new(),
                    create_revision: 0,
                    mod_revision: kv.mod_revision(),
                },
                prev,
            }
        } else {
            Event {
                kind: EventKind::Put,
                kv: to_kv_ref(kv)?,
                prev,
            }
        });
    }
    Ok(out)
}

/// Maps an etcd client error: connection failures and etcd's "unavailable" (no leader, leader
/// changed, request timed out in raft) are [`Error::Unavailable`], the rest
/// [`Error::Etcd`] (callers that read at a revision look for etcd's revision errors in it).
fn map_error(endpoints: &str, operation: &'static str, e: etcd_client::Error) -> Error {
    let unavailable = match &e {
        etcd_client::Error::TransportError(t) => Some(describe(t.to_string(), t.source())),
        etcd_client::Error::IoError(io) => Some(describe(io.to_string(), io.source())),
        etcd_client::Error::GRpcStatus(status) => {
            // A status etcd sent has no source; one with a source was made by the client from
            // a connection failure (a reset or broken connection reads as "unknown").
            let code = i32::from(status.code());
            let local = status.source().is_some();
            (local || code == GRPC_UNAVAILABLE || code == GRPC_DEADLINE_EXCEEDED)
                .then(|| describe(status.message().to_string(), status.source()))
        }
        _ => None,
    };
    match unavailable {
        Some(detail) => Error::Unavailable {
            endpoints: endpoints.to_string(),
            detail,
        },
        None => Error::Etcd {
            operation,
            source: Box::new(e),
        },
    }
}

/// An error's text and its causes, on one line, leaving out tonic's uninformative "transport
/// error" and any cause the text already shows.
fn describe(text: String, mut source: Option<&(dyn std::error::Error + 'static)>) -> String {
    let mut text = text;
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if cause_text != "transport error" && !text.contains(&cause_text) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Whether a request failed before it was sent: the endpoint could not be connected to. Such
/// errors come from the connector (`hyper-util`), as gRPC "unavailable" statuses whose message
/// names the failed step ("tcp connect error", "dns error", ...).
fn is_connect_error(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message();
            i32::from(status.code()) == GRPC_UNAVAILABLE
                && (message.starts_with("tcp ") || message.starts_with("dns error"))
        }
        _ => false,
    }
}

/// Whether an error is etcd refusing to read at a compacted or future revision.
fn revision_refusal(e: &Error) -> Option<RevisionRefusal> {
    let Error::Etcd { source, .. } = e else {
        return None;
    };
    let etcd_client::Error::GRpcStatus(status) = source.as_ref() else {
        return None;
    };
    if i32::from(status.code()) != GRPC_OUT_OF_RANGE {
        return None;
    }
    if status.message().contains(COMPACTED_MESSAGE) {
        Some(RevisionRefusal::Compacted)
    } else if status.message().contains(FUTURE_MESSAGE) {
        Some(RevisionRefusal::Future)
    } else {
        None
    }
}

/// Why a conditional update or delete was refused, from the txn's else branch (a get).
fn refusal(key: &str, expected: Option<Revision>, response: &TxnResponse) -> Error {
    let current = response.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(get) => Some(get.kvs().first().map(|kv| kv.mod_revision())),
        _ => None,
    });
    match (current, expected) {
        (Some(None), _) => Error::NotFound {
            key: key.to_string(),
        },
        (Some(Some(actual)), Some(expected)) => Error::Conflict {
            key: key.to_string(),
            expected,
            actual,
        },
        (Some(Some(_)), None) => Error::Internal(format!(
            "etcd refused a write to existing key {key} that had no condition"
        )),
        (None, _) => Error::Internal(format!(
            "etcd refused a write to key {key} without reading it"
        )),
    }
}

/// The first key of a range from `start`: etcd has no empty keys, and `"\0"` is the smallest.
fn range_key(start: &str) -> Vec<u8> {
    if start.is_empty() {
        vec![0]
    } else {
        start.as_bytes().to_vec()
    }
}

/// The end of the range of keys under `prefix`; `"\0"` means "to the last key" to etcd.
fn range_end(prefix: &str) -> Vec<u8> {
    prefix_end(prefix.as_bytes()).unwrap_or_else(|| vec![0])
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| Error::Internal("etcd sent a response without a header".into()))
}

fn key_string(key: Vec<u8>) -> Result<String> {
    String::from_utf8(key).map_err(|e| {
        Error::Internal(format!(
            "etcd holds a key that is not utf-8: {}",
            String::from_utf8_lossy(e.as_bytes())
        ))
    })
}

fn to_kv(kv: etcd_client::KeyValue) -> Result<KeyValue> {
    let create_revision = kv.create_revision();
    let mod_revision = kv.mod_revision();
    let (key, value) = kv.into_key_value();
    Ok(KeyValue {
        key: key_string(key)?,
        value: Bytes::from(value),
        create_revision,
        mod_revision,
    })
}

fn to_kv_ref(kv: &etcd_client::KeyValue) -> Result<KeyValue> {
    Ok(KeyValue {
        key: key_string(kv.key().to_vec())?,
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    })
}

#[cfg(test)]
mod tests {
    //! What only the etcd backend has: endpoints that fail.

    use futures::StreamExt as _;

    use super::*;

    fn short() -> Options {
        Options {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(2),
        }
    }

    #[tokio::test]
    async fn an_unreachable_etcd_is_a_typed_error_within_the_timeout() {
        let started = Instant::now();
        let result = EtcdStore::connect(&["http://127.0.0.1:1".to_string()], short()).await;
        match result {
            Err(e) => assert!(
                e.is_unavailable(),
                "expected Unavailable or Timeout, got {e}"
            ),
            Ok(_) => panic!("connected to a port nothing listens on"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn an_etcd_that_goes_away_fails_requests_and_ends_watches() {
        let mut etcd = crate::testing::Etcd::start().await.unwrap();
        let store = EtcdStore::connect(&etcd.endpoints(), short())
            .await
            .unwrap();
        store.create("/k", Bytes::from_static(b"v")).await.unwrap();
        let mut watch = store.watch("/", None).await.unwrap();
        etcd.stop();
        let started = Instant::now();
        for attempt in 0..3 {
            match store.get("/k").await {
                Err(e) => assert!(e.is_unavailable(), "attempt {attempt}: {e}"),
                Ok(v) => panic!("attempt {attempt}: read {v:?} from a stopped etcd"),
            }
            match store.create("/k2", Bytes::new()).await {
                Err(e) => assert!(e.is_unavailable(), "attempt {attempt}: {e}"),
                Ok(v) => panic!("attempt {attempt}: wrote {v:?} to a stopped etcd"),
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "six failed requests took {:?}",
            started.elapsed()
        );
        let ended = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match watch.next().await {
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => break Some(e),
                    None => break None,
                }
            }
        })
        .await
        .expect("the watch ends when etcd goes away");
        if let Some(e) = ended {
            assert!(e.is_unavailable(), "watch ended with {e}");
        }
    }

    #[tokio::test]
    async fn one_live_endpoint_among_dead_ones_serves_everything() {
        let etcd = crate::testing::Etcd::start().await.unwrap();
        let endpoints = vec![
            "http://127.0.0.1:1".to_string(),
            etcd.endpoint.clone(),
            "http://127.0.0.1:2".to_string(),
        ];
        let store = EtcdStore::connect(&endpoints, short()).await.unwrap();
        let mut watch = store.watch("/multi/", None).await.unwrap();
        for i in 0..30 {
            store
                .create(&format!("/multi/{i:02}"), Bytes::new())
                .await
                .unwrap_or_else(|e| panic!("create {i}: {e}"));
        }
        let listed = store
            .range(RangeRequest {
                prefix: "/multi/".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(listed.kvs.len(), 30);
        for i in 0..30 {
            let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
                .await
                .expect("event in time")
                .expect("stream open")
                .expect("event");
            assert_eq!(event.kv.key, format!("/multi/{i:02}"));
        }
    }
}
