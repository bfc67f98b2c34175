//! Durable state: the one persistence interface and its backends, `memory` (keeps nothing,
//! for tests and throwaway runs) and `sqlite` (the default: one SQLite file in WAL mode in
//! the data directory). The Redis fleet backend (issue 14) implements the same
//! [`Backend`] trait.
//!
//! # The interface
//!
//! What is stored is deliberately plain, so a key-value store serves it as well as SQL:
//!
//! - **documents**: one serde_json value per ([`Kind`], id): a stream's settings and
//!   failover position, a webhook with its filters, later a provider or a channel list. A
//!   write replaces the whole document; a delete removes it (and, for a stream, its counters).
//! - **counters**: per stream and for the proxy ([`CounterKey`]), four cumulative numbers
//!   ([`CounterSet`]). They are only ever *added to*: the flusher sends the increments since
//!   its last flush, never absolute values (Redis: `HINCRBY`; SQL: `UPDATE .. SET n = n + ?`),
//!   so instances of a fleet can add to the same totals. Increments for a stream whose
//!   document is gone are dropped.
//! - **load**: everything at once, at start-up, before the listener opens.
//!
//! There is no SQL, no transaction and no iterator in the interface: a [`Batch`] is applied
//! as a whole (one SQLite transaction, one Redis `MULTI`).
//!
//! # Threads and durability
//!
//! SQLite is blocking, so a backend never runs on the async runtime: [`Store`] owns one
//! writer thread that receives batches through a channel and answers each through a
//! oneshot. A management write awaits that answer before its handler replies, so an
//! acknowledged change is on disk (`synchronous=FULL`; see `sqlite`). Requests queued
//! while a commit runs are merged into the next one (group commit). Counters are flushed
//! in the background every `STATE_FLUSH_INTERVAL` and once more at shutdown
//! ([`flush::spawn_flusher`]); the hot path only bumps the registry's atomics.
//!
//! A batch that fails (disk full) is not dropped: the writer keeps it, merged with what
//! comes next (the latest document per key wins, increments add up), and commits it all
//! with the next batch that gets through, so a store that recovers loses nothing but the
//! increments of a crash during the outage. While it fails, management writes answer 503
//! `store_unavailable` (their change is live in this process and is written on recovery)
//! and playback carries on.

mod flush;
mod memory;
mod records;
mod sqlite;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::config::StoreBackend;
use crate::metrics::{Histogram, HistogramSnapshot};
use crate::model::StoreStatus;

pub use flush::{flush_now, spawn_flusher};
pub use memory::MemoryBackend;
pub use records::{restore, Restored, StreamRecord};
pub use sqlite::SqliteBackend;

/// The name of the database file in the data directory.
pub const DB_FILE: &str = "m3u-proxy.db";

/// Upper bounds of the flush-duration histogram, in seconds (an fsync is a few ms).
const FLUSH_BUCKETS: [f64; 9] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5];

/// Most queued requests merged into one commit.
const MAX_GROUP: usize = 256;

/// What a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Stream,
    Webhook,
    Provider,
    ChannelList,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Stream,
        Kind::Webhook,
        Kind::Provider,
        Kind::ChannelList,
    ];

    /// The stored name of the kind (a column value, a key prefix).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Stream => "stream",
            Kind::Webhook => "webhook",
            Kind::Provider => "provider",
            Kind::ChannelList => "channel_list",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Whose counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CounterKey {
    /// The proxy-wide totals, deleted streams included.
    Totals,
    /// One stream's, removed with its document.
    Stream(String),
    /// A channel list's stream, which has no document: stored under the same key as
    /// [`CounterKey::Stream`], kept without a document, removed with a delete of its id
    /// (when the list drops the channel).
    Listed(String),
}

/// The cumulative counters that survive a restart: added to, never set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterSet {
    pub bytes: u64,
    pub segments: u64,
    pub errors: u64,
    pub failovers: u64,
}

impl CounterSet {
    pub fn from_array([bytes, segments, errors, failovers]: [u64; 4]) -> Self {
        CounterSet {
            bytes,
            segments,
            errors,
            failovers,
        }
    }

    pub fn to_array(self) -> [u64; 4] {
        [self.bytes, self.segments, self.errors, self.failovers]
    }

    pub fn is_zero(&self) -> bool {
        *self == CounterSet::default()
    }

    fn add(&mut self, other: CounterSet) {
        self.bytes = self.bytes.saturating_add(other.bytes);
        self.segments = self.segments.saturating_add(other.segments);
        self.errors = self.errors.saturating_add(other.errors);
        self.failovers = self.failovers.saturating_add(other.failovers);
    }
}

/// Changes applied together: documents written (`Some`) or deleted (`None`), then counter
/// increments. Later changes of one document replace earlier ones; increments add up.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Batch {
    pub docs: BTreeMap<(Kind, String), Option<serde_json::Value>>,
    pub counters: HashMap<CounterKey, CounterSet>,
}

impl Batch {
    pub fn put(&mut self, kind: Kind, id: &str, doc: serde_json::Value) {
        self.docs.insert((kind, id.to_string()), Some(doc));
    }

    pub fn delete(&mut self, kind: Kind, id: &str) {
        self.docs.insert((kind, id.to_string()), None);
        if kind == Kind::Stream {
            // Increments queued before the delete belong to the stream that is gone.
            self.counters.remove(&CounterKey::Stream(id.to_string()));
            self.counters.remove(&CounterKey::Listed(id.to_string()));
        }
    }

    pub fn add(&mut self, key: CounterKey, delta: CounterSet) {
        if !delta.is_zero() {
            self.counters.entry(key).or_default().add(delta);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty() && self.counters.is_empty()
    }

    /// `later` applied after `self`.
    fn merge(&mut self, later: Batch) {
        for ((kind, id), doc) in later.docs {
            match doc {
                Some(doc) => self.put(kind, &id, doc),
                None => self.delete(kind, &id),
            }
        }
        for (key, delta) in later.counters {
            self.add(key, delta);
        }
    }
}

/// Everything stored, as read at start-up.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Loaded {
    /// Documents by kind, each list ordered by id.
    pub docs: BTreeMap<Kind, Vec<(String, serde_json::Value)>>,
    pub stream_counters: HashMap<String, CounterSet>,
    pub totals: CounterSet,
}

impl Loaded {
    pub fn of(&self, kind: Kind) -> &[(String, serde_json::Value)] {
        self.docs.get(&kind).map_or(&[], Vec::as_slice)
    }
}

/// Why the store could not start, or a write did not commit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    #[error("cannot use data directory {path}: {detail}")]
    Directory { path: String, detail: String },
    #[error("{path} is not a valid database (corrupt or not an m3u-proxy file): {detail}")]
    Corrupt { path: String, detail: String },
    #[error("{path} has schema version {found}, newer than this m3u-proxy supports ({supported}): upgrade m3u-proxy or use another data directory")]
    NewerSchema {
        path: String,
        found: i64,
        supported: i64,
    },
    #[error("{path}: {detail}")]
    Open { path: String, detail: String },
    /// A write that did not commit (disk full, I/O error); kept and retried.
    #[error("store write failed: {0}")]
    Write(String),
    /// The writer thread is gone (the process is stopping).
    #[error("the store is closed")]
    Closed,
}

/// One place state is kept. Runs on the store's writer thread only, so it may block.
pub trait Backend: Send + 'static {
    /// `sqlite`, `memory`, `redis`.
    fn name(&self) -> &'static str;
    /// Where the state is (a file path, a URL without credentials); `None` for memory.
    fn location(&self) -> Option<String>;
    /// Everything stored; called once, before the writer thread starts.
    fn load(&mut self) -> Result<Loaded, StoreError>;
    /// Applies the whole batch or nothing.
    fn apply(&mut self, batch: &Batch) -> Result<(), StoreError>;
}

/// What the writer thread and the handles share.
#[derive(Debug)]
struct Shared {
    started: Instant,
    /// Milliseconds after `started` of the last successful commit, plus one (0: none yet).
    last_ok_ms_plus_one: AtomicU64,
    ok: AtomicBool,
    failures: AtomicU64,
    flush_seconds: Histogram,
    /// Test hook: while set, every commit fails with this message before reaching the
    /// backend, as a full disk would make it fail.
    injected_failure: Mutex<Option<String>>,
}

struct Request {
    batch: Batch,
    ack: oneshot::Sender<Result<(), StoreError>>,
}

/// The handle to the store: cheap to share (`Arc<Store>`), safe to call from async code.
#[derive(Debug)]
pub struct Store {
    backend: &'static str,
    location: Option<String>,
    persistent: bool,
    /// Held while a batch is built and queued, so batches reach the writer in the order
    /// their contents were read (a stale snapshot never lands after a newer one).
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    shared: Arc<Shared>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Store {
    /// Opens the store the configuration names and loads what it holds. `sqlite` creates
    /// `data_dir` (mode 0700) and the database (mode 0600) on first start.
    pub fn open(
        kind: StoreBackend,
        data_dir: Option<&Path>,
    ) -> Result<(Store, Loaded), StoreError> {
        match kind {
            StoreBackend::Memory => Store::start(MemoryBackend, false),
            StoreBackend::Sqlite => {
                let dir =
                    data_dir.map_or_else(|| PathBuf::from(DEFAULT_DATA_DIR), Path::to_path_buf);
                Store::start(SqliteBackend::open(&dir)?, true)
            }
            // Its backend needs the fleet's Redis connection: `fleet::RedisBackend`,
            // started with [`Store::start`] by the server.
            StoreBackend::Redis => Err(StoreError::Open {
                path: "redis".into(),
                detail: "the redis store is started with its fleet connection".into(),
            }),
        }
    }

    /// A store that keeps nothing.
    pub fn memory() -> Store {
        Store::start(MemoryBackend, false)
            .expect("the memory backend cannot fail")
            .0
    }

    /// Loads `backend`, then hands it to a new writer thread; a backend that keeps nothing
    /// (`persistent` false) gets no thread, and writes to it answer at once.
    pub fn start(
        mut backend: impl Backend,
        persistent: bool,
    ) -> Result<(Store, Loaded), StoreError> {
        let loaded = backend.load()?;
        let shared = Arc::new(Shared {
            started: Instant::now(),
            last_ok_ms_plus_one: AtomicU64::new(0),
            ok: AtomicBool::new(true),
            failures: AtomicU64::new(0),
            flush_seconds: Histogram::new(&FLUSH_BUCKETS),
            injected_failure: Mutex::new(None),
        });
        let name = backend.name();
        let location = backend.location();
        let (tx, writer) = if persistent {
            let (tx, rx) = mpsc::channel();
            let shared = shared.clone();
            let writer = std::thread::Builder::new()
                .name("m3u-proxy-store".into())
                .spawn(move || write_loop(backend, rx, &shared))
                .map_err(|e| StoreError::Open {
                    path: location.clone().unwrap_or_default(),
                    detail: format!("cannot start the writer thread: {e}"),
                })?;
            (Some(tx), Some(writer))
        } else {
            (None, None)
        };
        Ok((
            Store {
                backend: name,
                location,
                persistent,
                tx: Mutex::new(tx),
                shared,
                writer: Mutex::new(writer),
            },
            loaded,
        ))
    }

    /// Whether anything is kept (false for `memory`): the flusher runs only then.
    pub fn is_persistent(&self) -> bool {
        self.persistent
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    pub fn location(&self) -> Option<&str> {
        self.location.as_deref()
    }

    /// Builds a batch with `build` and commits it; resolves when it is committed (or
    /// failed and kept for the next commit). `build` runs under the store's queue lock,
    /// so it must be quick and must not wait on anything.
    pub async fn submit(&self, build: impl FnOnce() -> Batch) -> Result<(), StoreError> {
        self.commit(build, false).await
    }

    /// Like [`Store::submit`], but an empty batch is committed too: the periodic flush
    /// commits every interval, so `last_flush_age_ms` in `/health` says the store answers
    /// even while nothing changes (and a test can wait for "a flush after now").
    pub async fn submit_flush(&self, build: impl FnOnce() -> Batch) -> Result<(), StoreError> {
        self.commit(build, true).await
    }

    async fn commit(
        &self,
        build: impl FnOnce() -> Batch,
        even_if_empty: bool,
    ) -> Result<(), StoreError> {
        if !self.persistent {
            return Ok(());
        }
        let rx = {
            let tx = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(tx) = tx.as_ref() else {
                return Err(StoreError::Closed);
            };
            let batch = build();
            if batch.is_empty() && !even_if_empty {
                return Ok(());
            }
            let (ack, rx) = oneshot::channel();
            tx.send(Request { batch, ack })
                .map_err(|_| StoreError::Closed)?;
            rx
        };
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Writes one document, built under the queue lock (see [`Store::submit`]); `None`
    /// writes nothing (the item went away meanwhile).
    pub async fn put_with<T: Serialize>(
        &self,
        kind: Kind,
        id: &str,
        doc: impl FnOnce() -> Option<T>,
    ) -> Result<(), StoreError> {
        self.submit(|| {
            let mut batch = Batch::default();
            if let Some(value) = doc().and_then(|d| serde_json::to_value(d).ok()) {
                batch.put(kind, id, value);
            }
            batch
        })
        .await
    }

    /// Writes one document.
    pub async fn put<T: Serialize>(&self, kind: Kind, id: &str, doc: &T) -> Result<(), StoreError> {
        self.put_with(kind, id, || Some(doc)).await
    }

    /// Deletes one document (a stream's counters with it).
    pub async fn delete(&self, kind: Kind, id: &str) -> Result<(), StoreError> {
        self.submit(|| {
            let mut batch = Batch::default();
            batch.delete(kind, id);
            batch
        })
        .await
    }

    /// Deletes several documents in one commit.
    pub async fn delete_all(&self, kind: Kind, ids: &[String]) -> Result<(), StoreError> {
        self.submit(|| {
            let mut batch = Batch::default();
            for id in ids {
                batch.delete(kind, id);
            }
            batch
        })
        .await
    }

    /// Test hook: while `Some`, every commit fails with that message (as on a full disk),
    /// and what it carried is kept for the first commit after `None`.
    pub fn inject_failure(&self, message: Option<&str>) {
        *self
            .shared
            .injected_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = message.map(str::to_string);
    }

    pub fn health(&self) -> StoreStatus {
        let s = &self.shared;
        let last = s.last_ok_ms_plus_one.load(Ordering::Relaxed).checked_sub(1);
        StoreStatus {
            backend: self.backend.to_string(),
            path: self.location.clone(),
            last_flush_age_ms: last
                .map(|at| (s.started.elapsed().as_millis() as u64).saturating_sub(at)),
            ok: s.ok.load(Ordering::Relaxed),
        }
    }

    /// Commits that failed since the start.
    pub fn flush_failures(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }

    /// How long commits took.
    pub fn flush_seconds(&self) -> HistogramSnapshot {
        self.shared.flush_seconds.snapshot()
    }

    /// Stops the writer thread once everything queued is committed (or failed). Later
    /// writes answer [`StoreError::Closed`].
    pub fn close(&self) {
        drop(
            self.tx
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(writer) = writer {
            let _ = writer.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // The thread ends when the channel closes; nothing waits for it here.
        drop(
            self.tx
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }
}

/// The data directory when none is configured and the store is `sqlite`.
pub const DEFAULT_DATA_DIR: &str = "./m3u-proxy-data";

/// The writer thread: takes a request, merges whatever else is queued into it, commits
/// the lot together with anything kept from failed commits, and answers every request.
fn write_loop(mut backend: impl Backend, rx: mpsc::Receiver<Request>, shared: &Shared) {
    let mut kept = Batch::default();
    while let Ok(first) = rx.recv() {
        let mut acks = vec![first.ack];
        kept.merge(first.batch);
        while acks.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(next) => {
                    kept.merge(next.batch);
                    acks.push(next.ack);
                }
                Err(_) => break,
            }
        }
        let began = Instant::now();
        let injected = shared
            .injected_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let result = match injected {
            Some(message) => Err(StoreError::Write(message)),
            None => backend.apply(&kept),
        };
        shared.flush_seconds.observe_duration(began.elapsed());
        match &result {
            Ok(()) => {
                kept = Batch::default();
                let at = shared.started.elapsed().as_millis() as u64;
                shared.last_ok_ms_plus_one.store(at + 1, Ordering::Relaxed);
                if !shared.ok.swap(true, Ordering::Relaxed) {
                    tracing::info!(backend = backend.name(), "store writes work again");
                }
            }
            Err(e) => {
                shared.failures.fetch_add(1, Ordering::Relaxed);
                if shared.ok.swap(false, Ordering::Relaxed) {
                    tracing::error!(backend = backend.name(), error = %e, "store write failed; kept for the next attempt");
                }
            }
        }
        for ack in acks {
            let _ = ack.send(result.clone());
        }
    }
}

/// How often the flusher writes counters when `STATE_FLUSH_INTERVAL` is not set.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests;
