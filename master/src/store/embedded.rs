//! The embedded backend: one redb file, no other process.
//!
//! Three tables hold etcd's model:
//!
//! - `kv`: key → (create revision, mod revision, value): the latest state, for gets and lists;
//! - `log`: revision → the change made at that revision, with the key's previous state: the
//!   history that watches replay and that historical ranges undo, trimmed by compaction;
//! - `meta`: the format marker, the current revision and the compacted revision.
//!
//! **Group commit.** Every write goes through one writer thread. It takes all the requests
//! queued at that moment (up to [`MAX_BATCH`]), applies them in order in one redb write
//! transaction, each with its own revision, and commits once: concurrent writers share one fsync.
//! A request is acknowledged only after its batch is durable (redb `Durability::Immediate`).
//!
//! **Watch.** After a commit the writer publishes the batch's events, in revision order, on an
//! in-memory broadcast channel. A watcher subscribes first, then replays the log from its start
//! revision to a snapshot, then follows the channel, skipping what it already delivered; if it
//! falls behind the channel it replays the log again from where it was. So every change is
//! delivered once, in order, even to slow watchers, until compaction passes them by.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use futures::StreamExt as _;
use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::Instrument as _;

use super::{
    key_successor, prefix_end, range_start, ContinueToken, Error, Event, EventKind, KeyValue,
    RangeRequest, RangeResponse, Result, Revision, Store, WatchStream,
};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_FORMAT: &str = "format";
const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";
const FORMAT_VERSION: u64 = 1;

/// The most requests one commit carries.
pub const MAX_BATCH: usize = 1024;
/// Queued write requests before writers wait.
const WRITE_QUEUE: usize = 4096;
/// Events the broadcast channel holds for slow watchers before they replay from the log.
const EVENT_BUFFER: usize = 4096;
/// redb's page cache when no size is given: enough for the B-tree's upper pages, which every
/// read walks. Leaf pages come from the kernel's page cache; the API server's watch cache and
/// the controllers' informers serve the hot reads. With 30,000 pods a 64 MiB cache cost 60 MiB
/// of RSS and made no difference to scheduling throughput (BENCHMARKS.md).
pub const DEFAULT_CACHE_BYTES: usize = 16 << 20;
/// Log entries a watcher replays per read transaction.
const REPLAY_PAGE: usize = 1024;

pub struct EmbeddedStore {
    shared: Arc<Shared>,
    writer: Option<mpsc::Sender<WriteRequest>>,
    writer_thread: Option<JoinHandle<()>>,
}

struct Shared {
    path: PathBuf,
    db: Database,
    revision: AtomicI64,
    compacted: AtomicI64,
    events: broadcast::Sender<Arc<Event>>,
}

enum Op {
    Create {
        key: String,
        value: Bytes,
    },
    Update {
        key: String,
        value: Bytes,
        expected: Option<Revision>,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
    Compact {
        revision: Revision,
    },
}

struct WriteRequest {
    op: Op,
    reply: oneshot::Sender<Result<Option<KeyValue>>>,
}

impl EmbeddedStore {
    /// Opens the store file at `path`, creating it (and its directory) if it does not exist.
    ///
    /// An existing file is checked page by page before use: a truncated or damaged file, or one
    /// that is not a Skiff store, is an error naming the file, never an empty store.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// [`open`](Self::open) with redb's page cache capped at `cache_bytes` (redb's own default
    /// is 1 GiB, which a busy store fills: it shows as resident memory).
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Self> {
        let db = open_database(path, cache_bytes)?;
        let (revision, compacted) = read_meta(&db, path)?;
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            db,
            revision: AtomicI64::new(revision),
            compacted: AtomicI64::new(compacted),
            events,
        });
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let writer_shared = shared.clone();
        let writer_thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(&writer_shared, rx))
            .map_err(|e| Error::Open {
                path: path.to_path_buf(),
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        tracing::info!(path = %path.display(), revision, compacted, "opened embedded store");
        Ok(Self {
            shared,
            writer: Some(tx),
            writer_thread: Some(writer_thread),
        })
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    async fn write(&self, op: Op) -> Result<Option<KeyValue>> {
        let (reply, answer) = oneshot::channel();
        let writer = self.writer.as_ref().ok_or(Error::Closed)?;
        writer
            .send(WriteRequest { op, reply })
            .await
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Shared) -> Result<T> + Send + 'static,
    {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| Error::Internal(format!("store read task failed: {e}")))?
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Closing the queue ends the writer after the requests already queued; waiting for it
        // means the file is closed (and may be reopened) once the store is dropped, unless a
        // watcher still holds it.
        self.writer.take();
        if let Some(thread) = self.writer_thread.take() {
            if thread.join().is_err() {
                tracing::error!(path = %self.shared.path.display(), "store writer thread panicked");
            }
        }
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.shared.revision.load(Ordering::Acquire))
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_string();
        self.read(move |shared| {
            let txn = shared.db.begin_read().map_err(|e| shared.storage(e))?;
            let kv = txn.open_table(KV).map_err(|e| shared.storage(e))?;
            let found = kv.get(key.as_str()).map_err(|e| shared.storage(e))?;
            found
                .map(|v| Record::decode(v.value(), &shared.path).map(|r| r.into_kv(key.clone())))
                .transpose()
        })
        .await
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        let op = Op::Create {
            key: key.to_string(),
            value,
        };
        self.write(op).await?.ok_or_else(missing_result)
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected_mod_revision: Option<Revision>,
    ) -> Result<KeyValue> {
        let op = Op::Update {
            key: key.to_string(),
            value,
            expected: expected_mod_revision,
        };
        self.write(op).await?.ok_or_else(missing_result)
    }

    async fn delete(&self, key: &str, expected_mod_revision: Option<Revision>) -> Result<KeyValue> {
        let op = Op::Delete {
            key: key.to_string(),
            expected: expected_mod_revision,
        };
        self.write(op).await?.ok_or_else(missing_result)
    }

    async fn range(&self, request: RangeRequest) -> Result<RangeResponse> {
        self.read(move |shared| shared.range(&request)).await
    }

    async fn watch(&self, prefix: &str, after: Option<Revision>) -> Result<WatchStream> {
        // Subscribe before reading the revision: every commit after this point reaches the
        // channel, and every commit before it is in the log the replay reads.
        let live = self.shared.events.subscribe();
        let current = self.shared.revision.load(Ordering::Acquire);
        let after = after.unwrap_or(current);
        let compacted = self.shared.compacted.load(Ordering::Acquire);
        if after < compacted {
            return Err(Error::Expired {
                requested: after,
                compacted,
            });
        }
        let (tx, rx) = mpsc::channel(256);
        let span = tracing::debug_span!("store-watch", prefix, after);
        tokio::spawn(
            watch_task(self.shared.clone(), prefix.to_string(), after, live, tx).instrument(span),
        );
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.write(Op::Compact { revision }).await.map(|_| ())
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        Ok(self.shared.compacted.load(Ordering::Acquire))
    }
}

fn missing_result() -> Error {
    Error::Internal("store writer returned no result".into())
}

// ---------------------------------------------------------------------------------------------
// Opening

fn open_database(path: &Path, cache_bytes: usize) -> Result<Database> {
    let open_error = |reason: String| Error::Open {
        path: path.to_path_buf(),
        reason,
    };
    let exists = path
        .try_exists()
        .map_err(|e| open_error(format!("cannot stat it: {e}")))?;
    if !exists {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_error(format!("cannot create {}: {e}", dir.display())))?;
        }
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| open_error(e.to_string()))?;
        initialise(&db, path)?;
        return Ok(db);
    }
    // The file is untrusted input: verify every page, and turn a panic deep in the reader (redb
    // debug builds assert on impossible states) into the same clear error.
    let opened = catch_unwind(AssertUnwindSafe(|| {
        Database::builder()
            .set_cache_size(cache_bytes)
            .set_check_integrity_on_open(true)
            .open(path)
    }));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Err(open_error(
            "it is in use by another process (is another skiff-master running?)".into(),
        )),
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))) => {
            Err(open_error(e.to_string()))
        }
        Ok(Err(e)) => Err(Error::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }),
        Err(_) => Err(Error::Corrupt {
            path: path.to_path_buf(),
            detail: "the database reader failed on its contents".into(),
        }),
    }
}

fn initialise(db: &Database, path: &Path) -> Result<()> {
    let storage = |e: redb::Error| Error::Storage {
        path: path.to_path_buf(),
        source: Box::new(e),
    };
    let txn = db.begin_write().map_err(|e| storage(e.into()))?;
    {
        let mut meta = txn.open_table(META).map_err(|e| storage(e.into()))?;
        for (name, value) in [
            (META_FORMAT, FORMAT_VERSION),
            (META_REVISION, 1),
            (META_COMPACTED, 0),
        ] {
            meta.insert(name, value).map_err(|e| storage(e.into()))?;
        }
        txn.open_table(KV).map_err(|e| storage(e.into()))?;
        txn.open_table(LOG).map_err(|e| storage(e.into()))?;
    }
    txn.commit().map_err(|e| storage(e.into()))
}

fn read_meta(db: &Database, path: &Path) -> Result<(Revision, Revision)> {
    let corrupt = |detail: String| Error::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let read = || -> std::result::Result<[Option<u64>; 3], redb::Error> {
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        let get = |name| -> std::result::Result<Option<u64>, redb::Error> {
            Ok(meta.get(name)?.map(|v| v.value()))
        };
        Ok([get(META_FORMAT)?, get(META_REVISION)?, get(META_COMPACTED)?])
    };
    match read() {
        Ok([Some(FORMAT_VERSION), Some(revision), Some(compacted)]) => {
            Ok((to_revision(revision), to_revision(compacted)))
        }
        Ok([Some(format), ..]) if format != FORMAT_VERSION => Err(corrupt(format!(
            "unknown store format {format} (this skiff-master reads format {FORMAT_VERSION})"
        ))),
        Ok(_) => Err(corrupt("not a skiff store: its metadata is missing".into())),
        Err(redb::Error::TableDoesNotExist(_)) => Err(corrupt(
            "not a skiff store: it has no metadata table".into(),
        )),
        Err(e) => Err(corrupt(e.to_string())),
    }
}

fn to_revision(r: u64) -> Revision {
    Revision::try_from(r).unwrap_or(Revision::MAX)
}

fn to_log_key(r: Revision) -> u64 {
    u64::try_from(r).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Encoding: a key's record and a log entry, little-endian, length-prefixed.

struct Record {
    create: Revision,
    modified: Revision,
    value: Bytes,
}

impl Record {
    fn encode_into(create: Revision, modified: Revision, value: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&create.to_le_bytes());
        out.extend_from_slice(&modified.to_le_bytes());
        out.extend_from_slice(value);
    }

    fn decode(bytes: &[u8], path: &Path) -> Result<Self> {
        let mut r = Reader { bytes, path };
        Ok(Record {
            create: r.i64()?,
            modified: r.i64()?,
            value: Bytes::copy_from_slice(r.rest()),
        })
    }

    fn into_kv(self, key: String) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.create,
            mod_revision: self.modified,
        }
    }
}

/// `value` in an allocation of its own size. Callers often hand over a serialiser's `Vec` (up
/// to twice as large as its contents) or a slice of a request body, and the value lives on in
/// the watch cache's ring: a 1.5 KB copy per write is cheaper than keeping the rest.
fn exact(value: &Bytes) -> Bytes {
    Bytes::copy_from_slice(value)
}

/// A log entry: `kind u8 | key_len u32 | key | has_prev u8 | [prev record_len u32 | prev record]
/// | new record (puts only)`. The revision is the table key.
fn encode_log(kind: EventKind, key: &str, prev: Option<&Record>, new: Option<&Record>) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        key.len() + 64 + prev.map_or(0, |p| p.value.len()) + new.map_or(0, |n| n.value.len()),
    );
    out.push(match kind {
        EventKind::Put => 0,
        EventKind::Delete => 1,
    });
    out.extend_from_slice(&len_u32(key.len()).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    match prev {
        Some(p) => {
            out.push(1);
            out.extend_from_slice(&len_u32(16 + p.value.len()).to_le_bytes());
            Record::encode_into(p.create, p.modified, &p.value, &mut out);
        }
        None => out.push(0),
    }
    if let Some(n) = new {
        Record::encode_into(n.create, n.modified, &n.value, &mut out);
    }
    out
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn decode_log(revision: Revision, bytes: &[u8], path: &Path) -> Result<Event> {
    let mut r = Reader { bytes, path };
    let kind = match r.u8()? {
        0 => EventKind::Put,
        1 => EventKind::Delete,
        other => return Err(r.corrupt(format!("unknown log entry kind {other}"))),
    };
    let key_len = r.u32()? as usize;
    let key = std::str::from_utf8(r.take(key_len)?)
        .map_err(|_| r.corrupt("log entry key is not UTF-8".into()))?
        .to_string();
    let prev = match r.u8()? {
        0 => None,
        _ => {
            let len = r.u32()? as usize;
            Some(Record::decode(r.take(len)?, path)?.into_kv(key.clone()))
        }
    };
    let kv = match kind {
        EventKind::Put => Record::decode(r.rest(), path)?.into_kv(key),
        EventKind::Delete => KeyValue {
            key,
            value: Bytes::new(),
            create_revision: 0,
            mod_revision: revision,
        },
    };
    Ok(Event { kind, kv, prev })
}

struct Reader<'a> {
    bytes: &'a [u8],
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn corrupt(&self, detail: String) -> Error {
        Error::Corrupt {
            path: self.path.to_path_buf(),
            detail,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(self.corrupt(format!(
                "a record is truncated: wanted {n} bytes, found {}",
                self.bytes.len()
            )));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        let mut b = [0; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }

    fn i64(&mut self) -> Result<i64> {
        let mut b = [0; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(i64::from_le_bytes(b))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }
}

// ---------------------------------------------------------------------------------------------
// The writer: group commit

fn writer_loop(shared: &Shared, mut queue: mpsc::Receiver<WriteRequest>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = queue.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        shared.commit_batch(&mut batch);
    }
}

/// What one request did inside a batch.
enum Applied {
    Done(Option<KeyValue>),
    Refused(Error),
}

impl Shared {
    fn storage(&self, e: impl Into<redb::Error>) -> Error {
        Error::Storage {
            path: self.path.clone(),
            source: Box::new(e.into()),
        }
    }

    fn commit_batch(&self, batch: &mut Vec<WriteRequest>) {
        let start_revision = self.revision.load(Ordering::Acquire);
        let start_compacted = self.compacted.load(Ordering::Acquire);
        let mut events = Vec::new();
        let outcome = self.apply_batch(batch, start_revision, start_compacted, &mut events);
        match outcome {
            Ok((outcomes, revision, compacted)) => {
                self.revision.store(revision, Ordering::Release);
                self.compacted.store(compacted, Ordering::Release);
                for event in events {
                    // No receivers is fine: nobody is watching.
                    let _ = self.events.send(Arc::new(event));
                }
                for (request, applied) in batch.drain(..).zip(outcomes) {
                    let answer = match applied {
                        Applied::Done(kv) => Ok(kv),
                        Applied::Refused(e) => Err(e),
                    };
                    let _ = request.reply.send(answer);
                }
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "store commit failed");
                let message = e.to_string();
                for request in batch.drain(..) {
                    let _ = request.reply.send(Err(Error::Internal(format!(
                        "commit to {} failed: {message}",
                        self.path.display()
                    ))));
                }
            }
        }
    }

    /// Applies a batch in one transaction and commits it. Returns each request's outcome and
    /// the new revision and compacted revision; on error nothing was committed.
    fn apply_batch(
        &self,
        batch: &[WriteRequest],
        mut revision: Revision,
        mut compacted: Revision,
        events: &mut Vec<Event>,
    ) -> std::result::Result<(Vec<Applied>, Revision, Revision), redb::Error> {
        let txn = self.db.begin_write()?;
        let mut outcomes = Vec::with_capacity(batch.len());
        {
            let mut kv = txn.open_table(KV)?;
            let mut log = txn.open_table(LOG)?;
            let mut buf = Vec::new();
            for request in batch {
                let applied = match &request.op {
                    Op::Create { key, value } => {
                        if kv.get(key.as_str())?.is_some() {
                            Applied::Refused(Error::AlreadyExists { key: key.clone() })
                        } else {
                            revision += 1;
                            let new = Record {
                                create: revision,
                                modified: revision,
                                value: exact(value),
                            };
                            self.put(&mut kv, &mut log, &mut buf, key, None, &new, revision)?;
                            let kv = new.into_kv(key.clone());
                            events.push(Event {
                                kind: EventKind::Put,
                                kv: kv.clone(),
                                prev: None,
                            });
                            Applied::Done(Some(kv))
                        }
                    }
                    Op::Update {
                        key,
                        value,
                        expected,
                    } => match self.check(&kv, key, *expected)? {
                        Err(refused) => Applied::Refused(refused),
                        Ok(prev) => {
                            revision += 1;
                            let new = Record {
                                create: prev.create,
                                modified: revision,
                                value: exact(value),
                            };
                            self.put(
                                &mut kv,
                                &mut log,
                                &mut buf,
                                key,
                                Some(&prev),
                                &new,
                                revision,
                            )?;
                            let kv = new.into_kv(key.clone());
                            events.push(Event {
                                kind: EventKind::Put,
                                kv: kv.clone(),
                                prev: Some(prev.into_kv(key.clone())),
                            });
                            Applied::Done(Some(kv))
                        }
                    },
                    Op::Delete { key, expected } => match self.check(&kv, key, *expected)? {
                        Err(refused) => Applied::Refused(refused),
                        Ok(prev) => {
                            revision += 1;
                            kv.remove(key.as_str())?;
                            let entry = encode_log(EventKind::Delete, key, Some(&prev), None);
                            log.insert(to_log_key(revision), entry.as_slice())?;
                            let prev = prev.into_kv(key.clone());
                            events.push(Event {
                                kind: EventKind::Delete,
                                kv: KeyValue {
                                    key: key.clone(),
                                    value: Bytes::new(),
                                    create_revision: 0,
                                    mod_revision: revision,
                                },
                                prev: Some(prev.clone()),
                            });
                            Applied::Done(Some(prev))
                        }
                    },
                    Op::Compact { revision: target } => {
                        if *target > revision {
                            Applied::Refused(Error::FutureRevision {
                                requested: *target,
                                current: revision,
                            })
                        } else {
                            if *target > compacted {
                                log.retain_in(..=to_log_key(*target), |_, _| false)?;
                                compacted = *target;
                            }
                            Applied::Done(None)
                        }
                    }
                };
                outcomes.push(applied);
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(META_REVISION, to_log_key(revision))?;
            meta.insert(META_COMPACTED, to_log_key(compacted))?;
        }
        txn.commit()?;
        Ok((outcomes, revision, compacted))
    }

    /// Reads a key for a conditional write: its record, or why the write is refused.
    fn check(
        &self,
        kv: &redb::Table<&str, &[u8]>,
        key: &str,
        expected: Option<Revision>,
    ) -> std::result::Result<Result<Record>, redb::Error> {
        let Some(current) = kv.get(key)? else {
            return Ok(Err(Error::NotFound {
                key: key.to_string(),
            }));
        };
        let record = match Record::decode(current.value(), &self.path) {
            Ok(record) => record,
            Err(e) => return Ok(Err(e)),
        };
        Ok(match expected {
            Some(expected) if expected != record.modified => Err(Error::Conflict {
                key: key.to_string(),
                expected,
                actual: record.modified,
            }),
            _ => Ok(record),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn put(
        &self,
        kv: &mut redb::Table<&str, &[u8]>,
        log: &mut redb::Table<u64, &[u8]>,
        buf: &mut Vec<u8>,
        key: &str,
        prev: Option<&Record>,
        new: &Record,
        revision: Revision,
    ) -> std::result::Result<(), redb::Error> {
        buf.clear();
        Record::encode_into(new.create, new.modified, &new.value, buf);
        kv.insert(key, buf.as_slice())?;
        let entry = encode_log(EventKind::Put, key, prev, Some(new));
        log.insert(to_log_key(revision), entry.as_slice())?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Reads

    fn range(&self, request: &RangeRequest) -> Result<RangeResponse> {
        let (start, pinned) = range_start(request)?;
        let end =
            prefix_end(request.prefix.as_bytes()).map(|e| String::from_utf8_lossy(&e).into_owned());
        let txn = self.db.begin_read().map_err(|e| self.storage(e))?;
        let meta = txn.open_table(META).map_err(|e| self.storage(e))?;
        let meta_get = |name| -> Result<Revision> {
            Ok(meta
                .get(name)
                .map_err(|e| self.storage(e))?
                .map_or(0, |v| to_revision(v.value())))
        };
        let current = meta_get(META_REVISION)?;
        let compacted = meta_get(META_COMPACTED)?;
        let revision = match pinned {
            None => current,
            Some(r) if r > current => {
                return Err(Error::FutureRevision {
                    requested: r,
                    current,
                })
            }
            Some(r) if r < compacted => {
                return Err(Error::Expired {
                    requested: r,
                    compacted,
                })
            }
            Some(r) => r,
        };

        // Keys changed after `revision` take their state from before the first such change.
        let mut overrides: BTreeMap<String, Option<KeyValue>> = BTreeMap::new();
        if revision < current {
            let log = txn.open_table(LOG).map_err(|e| self.storage(e))?;
            let entries = log
                .range(to_log_key(revision) + 1..)
                .map_err(|e| self.storage(e))?;
            for entry in entries {
                let (rev, bytes) = entry.map_err(|e| self.storage(e))?;
                let event = decode_log(to_revision(rev.value()), bytes.value(), &self.path)?;
                let key = event.kv.key;
                let in_range = key.as_str() >= start.as_str() && key.starts_with(&request.prefix);
                if in_range && !overrides.contains_key(&key) {
                    overrides.insert(key, event.prev);
                }
            }
        }

        let kv = txn.open_table(KV).map_err(|e| self.storage(e))?;
        let upper = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let mut latest = kv
            .range::<&str>((Bound::Included(start.as_str()), upper))
            .map_err(|e| self.storage(e))?
            .peekable();
        let mut pending = overrides.into_iter().peekable();
        let limit = request.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let mut kvs = Vec::new();
        let mut total: u64 = 0;
        // Merge the latest state with the overrides, in key order.
        loop {
            let next_latest = match latest.peek() {
                Some(Ok((k, _))) => Some(k.value().to_string()),
                Some(Err(_)) => {
                    let Some(Err(e)) = latest.next() else {
                        unreachable!("peeked an error")
                    };
                    return Err(self.storage(e));
                }
                None => None,
            };
            let next_override = pending.peek().map(|(k, _)| k.clone());
            let item = match (next_latest, next_override) {
                (None, None) => break,
                (Some(l), Some(o)) if o <= l => {
                    if o == l {
                        latest.next();
                    }
                    pending.next().and_then(|(_, kv)| kv)
                }
                // Past the page only the count matters: skip decoding, or stop if not counting.
                (Some(_), _) if kvs.len() >= limit => {
                    latest.next();
                    total += 1;
                    if request.skip_count {
                        break;
                    }
                    continue;
                }
                (Some(l), _) => {
                    let Some(Ok((_, v))) = latest.next() else {
                        unreachable!("peeked a key")
                    };
                    Some(Record::decode(v.value(), &self.path)?.into_kv(l))
                }
                (None, Some(_)) => pending.next().and_then(|(_, kv)| kv),
            };
            if let Some(item) = item {
                total += 1;
                if kvs.len() < limit {
                    kvs.push(item);
                } else if request.skip_count {
                    break;
                }
            }
        }
        let more = total > kvs.len() as u64;
        Ok(RangeResponse {
            continue_token: match (more, kvs.last()) {
                (true, Some(last)) => Some(
                    ContinueToken {
                        revision,
                        start: key_successor(&last.key),
                    }
                    .encode(),
                ),
                _ => None,
            },
            remaining: (more && !request.skip_count).then(|| total - kvs.len() as u64),
            kvs,
            revision,
        })
    }

    /// Reads up to [`REPLAY_PAGE`] changes under `prefix` after revision `after`. Returns them
    /// and the revision the replay reached (the snapshot's revision when it is complete).
    fn replay(&self, prefix: &str, after: Revision) -> Result<(Vec<Event>, Revision, bool)> {
        let txn = self.db.begin_read().map_err(|e| self.storage(e))?;
        let meta = txn.open_table(META).map_err(|e| self.storage(e))?;
        let meta_get = |name| -> Result<Revision> {
            Ok(meta
                .get(name)
                .map_err(|e| self.storage(e))?
                .map_or(0, |v| to_revision(v.value())))
        };
        let current = meta_get(META_REVISION)?;
        let compacted = meta_get(META_COMPACTED)?;
        if after < compacted {
            return Err(Error::Expired {
                requested: after,
                compacted,
            });
        }
        let log = txn.open_table(LOG).map_err(|e| self.storage(e))?;
        let mut events = Vec::new();
        let mut reached = after;
        let mut scanned = 0;
        for entry in log
            .range(to_log_key(after) + 1..)
            .map_err(|e| self.storage(e))?
        {
            let (rev, bytes) = entry.map_err(|e| self.storage(e))?;
            let rev = to_revision(rev.value());
            let event = decode_log(rev, bytes.value(), &self.path)?;
            if event.kv.key.starts_with(prefix) {
                events.push(event);
            }
            reached = rev;
            scanned += 1;
            if scanned == REPLAY_PAGE {
                return Ok((events, reached, false));
            }
        }
        Ok((events, reached.max(current), true))
    }
}

// ---------------------------------------------------------------------------------------------
// Watch

async fn watch_task(
    shared: Arc<Shared>,
    prefix: String,
    mut after: Revision,
    mut live: broadcast::Receiver<Arc<Event>>,
    tx: mpsc::Sender<Result<Event>>,
) {
    'replay: loop {
        // Replay the log up to a snapshot, page by page.
        loop {
            let replayed = {
                let shared = shared.clone();
                let prefix = prefix.clone();
                tokio::task::spawn_blocking(move || shared.replay(&prefix, after)).await
            };
            let (events, reached, complete) = match replayed {
                Ok(Ok(page)) => page,
                Ok(Err(e)) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                Err(e) => {
                    let _ = tx
                        .send(Err(Error::Internal(format!("watch replay failed: {e}"))))
                        .await;
                    return;
                }
            };
            for event in events {
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            after = reached;
            if complete {
                break;
            }
        }
        // Follow the channel.
        loop {
            let received = tokio::select! {
                _ = tx.closed() => return,
                received = live.recv() => received,
            };
            match received {
                Ok(event) => {
                    if event.revision() <= after {
                        continue;
                    }
                    after = event.revision();
                    if event.kv.key.starts_with(&prefix)
                        && tx.send(Ok(Event::clone(&event))).await.is_err()
                    {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, after, "watcher fell behind; replaying from the log");
                    continue 'replay;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! What only the embedded backend has: a file that survives restarts, crashes and damage.

    use std::io::{BufRead as _, Seek as _, Write as _};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use super::*;

    fn open(path: &Path) -> EmbeddedStore {
        EmbeddedStore::open(path).expect("open store")
    }

    #[tokio::test]
    async fn reopening_keeps_keys_revisions_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let (kept, revision) = {
            let store = open(&path);
            store.create("/a", Bytes::from_static(b"1")).await.unwrap();
            let kept = store.create("/b", Bytes::from_static(b"2")).await.unwrap();
            store.compact(kept.create_revision - 1).await.unwrap();
            (kept, store.current_revision().await.unwrap())
        };
        let store = open(&path);
        assert_eq!(store.current_revision().await.unwrap(), revision);
        assert_eq!(store.compacted_revision().await.unwrap(), revision - 1);
        assert_eq!(store.get("/b").await.unwrap(), Some(kept));
        let next = store.create("/c", Bytes::new()).await.unwrap();
        assert_eq!(
            next.mod_revision,
            revision + 1,
            "revisions continue after a restart"
        );
    }

    #[test]
    fn a_second_opener_is_refused_while_the_first_holds_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let _first = open(&path);
        match EmbeddedStore::open(&path) {
            Err(Error::Open { path: p, reason }) => {
                assert_eq!(p, path);
                assert!(reason.contains("in use"), "{reason}");
            }
            other => panic!("expected Open error, got {:?}", other.err()),
        }
    }

    /// Writes a store with some keys and returns its path and length.
    fn populated(dir: &Path) -> (PathBuf, u64) {
        let path = dir.join("state.redb");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = open(&path);
            for i in 0..2000 {
                let value = Bytes::from(format!("value-{i}-{}", "x".repeat(200)));
                store
                    .create(&format!("/registry/k/{i:05}"), value)
                    .await
                    .unwrap();
            }
        });
        let len = std::fs::metadata(&path).unwrap().len();
        (path, len)
    }

    fn assert_refused(path: &Path, what: &str) {
        match EmbeddedStore::open(path) {
            Err(e @ (Error::Corrupt { .. } | Error::Open { .. })) => {
                let message = e.to_string();
                assert!(
                    message.contains(&path.display().to_string()),
                    "{what}: the error names the file: {message}"
                );
            }
            Ok(store) => {
                // Opening may only succeed if the damage is beyond what the store uses, and then
                // the data must still all be there (never an empty store).
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                let count = rt.block_on(async {
                    store
                        .range(RangeRequest {
                            prefix: "/registry/k/".into(),
                            ..Default::default()
                        })
                        .await
                        .map(|r| r.kvs.len())
                });
                assert!(
                    matches!(count, Ok(2000) | Err(Error::Corrupt { .. })),
                    "{what}: opened a damaged store that reads {count:?}"
                );
            }
            Err(other) => panic!("{what}: unexpected error kind: {other}"),
        }
    }

    #[test]
    fn damaged_files_are_refused_with_the_file_named() {
        type Damage = fn(&Path, u64);
        let cases: [(&str, Damage); 5] = [
            ("empty file", |p, _| {
                std::fs::File::create(p).unwrap();
            }),
            ("truncated to half", |p, len| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(p)
                    .unwrap()
                    .set_len(len / 2)
                    .unwrap();
            }),
            ("truncated header", |p, _| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(p)
                    .unwrap()
                    .set_len(100)
                    .unwrap();
            }),
            ("garbage in the middle", |p, len| {
                let mut f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
                for offset in [len / 3, len / 2, 2 * len / 3] {
                    f.seek(std::io::SeekFrom::Start(offset)).unwrap();
                    f.write_all(&[0xA5; 4096]).unwrap();
                }
            }),
            ("not a database", |p, _| {
                std::fs::write(p, b"{\"kind\":\"Pod\"} this is not a store file").unwrap();
            }),
        ];
        for (what, damage) in cases {
            let dir = tempfile::tempdir().unwrap();
            let (path, len) = populated(dir.path());
            damage(&path, len);
            assert_refused(&path, what);
            assert!(path.exists(), "{what}: the damaged file is left in place");
        }
    }

    #[test]
    fn a_redb_file_of_another_program_is_not_taken_for_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(TableDefinition::<&str, u64>::new("theirs"))
                .unwrap()
                .insert("x", 1)
                .unwrap();
            txn.commit().unwrap();
        }
        match EmbeddedStore::open(&path) {
            Err(Error::Corrupt { detail, .. }) => assert!(detail.contains("not a skiff store")),
            other => panic!("expected Corrupt, got {:?}", other.err()),
        }
    }

    const CHILD_ENV: &str = "SKIFF_CRASH_WRITER_STORE";

    /// The child of `kill_9_loses_no_acknowledged_write`: writes from 8 tasks and prints every
    /// acknowledged write until it is killed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "run as a child process by kill_9_loses_no_acknowledged_write"]
    async fn crash_writer_child() {
        let path = std::env::var(CHILD_ENV).expect("run by kill_9_loses_no_acknowledged_write");
        let store = Arc::new(open(Path::new(&path)));
        let (acks, mut printed) = mpsc::unbounded_channel::<String>();
        for writer in 0..8 {
            let store = store.clone();
            let acks = acks.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    let key = format!("/crash/{writer}/{i}");
                    let value = Bytes::from(format!("{writer}:{i}"));
                    let kv = store.create(&key, value).await.unwrap();
                    let _ = acks.send(format!("ack {key} {}", kv.mod_revision));
                }
            });
        }
        let mut out = std::io::stdout().lock();
        while let Some(line) = printed.recv().await {
            writeln!(out, "{line}").unwrap();
            out.flush().unwrap();
        }
    }

    #[test]
    fn kill_9_loses_no_acknowledged_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let exe = std::env::current_exe().unwrap();
        let mut acknowledged: BTreeMap<String, Revision> = BTreeMap::new();
        // Three crashes at different moments of the burst, on the same file.
        for (round, wanted) in [(0, 300usize), (1, 1500), (2, 4000)] {
            let mut child = Command::new(&exe)
                .args([
                    "--ignored",
                    "--exact",
                    "store::embedded::tests::crash_writer_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, &path)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("start the crash writer");
            let stdout = child.stdout.take().unwrap();
            let mut lines = std::io::BufReader::new(stdout).lines();
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut this_round = 0;
            while this_round < wanted && Instant::now() < deadline {
                let Some(Ok(line)) = lines.next() else { break };
                let mut parts = line.split(' ');
                if let (Some("ack"), Some(key), Some(rev)) =
                    (parts.next(), parts.next(), parts.next())
                {
                    acknowledged.insert(format!("{round}{key}"), rev.parse().unwrap());
                    this_round += 1;
                }
            }
            // SIGKILL mid-burst: the writers are still going.
            child.kill().unwrap();
            // Acknowledgements already printed before the kill also count.
            for line in lines.map_while(|l| l.ok()) {
                let mut parts = line.split(' ');
                if let (Some("ack"), Some(key), Some(rev)) =
                    (parts.next(), parts.next(), parts.next())
                {
                    acknowledged.insert(format!("{round}{key}"), rev.parse().unwrap());
                }
            }
            child.wait().unwrap();
            assert!(
                this_round >= wanted,
                "round {round}: child acknowledged only {this_round}"
            );

            // Reopen: every acknowledged write is there with its revision; every key is one the
            // child wrote; revisions went only forward.
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                let store = open(&path);
                let all = store
                    .range(RangeRequest {
                        prefix: "/crash/".into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                let present: BTreeMap<_, _> = all
                    .kvs
                    .iter()
                    .map(|kv| (kv.key.clone(), kv.mod_revision))
                    .collect();
                for kv in &all.kvs {
                    let mut parts = kv.key.trim_start_matches("/crash/").split('/');
                    let expected = format!("{}:{}", parts.next().unwrap(), parts.next().unwrap());
                    assert_eq!(
                        kv.value,
                        Bytes::from(expected),
                        "no write that was never issued"
                    );
                }
                for (key, revision) in acknowledged
                    .iter()
                    .filter(|(k, _)| k.starts_with(&round.to_string()))
                {
                    let key = &key[1..];
                    assert_eq!(
                        present.get(key),
                        Some(revision),
                        "acknowledged {key} was lost"
                    );
                }
                assert!(store.current_revision().await.unwrap() >= all.revision);
                // Clear the round's keys so the next round's child starts its numbering afresh.
                for kv in all.kvs {
                    store.delete(&kv.key, None).await.unwrap();
                }
            });
        }
    }
}
