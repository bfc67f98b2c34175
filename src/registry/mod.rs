//! The registry of streams and clients, with the counters the hot path bumps, and the
//! cleanup of idle ones. A stream's entry composes the plain [`crate::stream`] types and
//! announces what they report (a switch of URL becomes a `failover` event); it holds no
//! live fan-out state, which [`crate::live`] keeps in its own map.
//!
//! Bytes flowing to a player never wait on this module: a response body holds an
//! `Arc<StreamEntry>` and an `Arc<ClientEntry>` and adds to their atomics per chunk. The
//! maps are behind `std::sync::RwLock`s that are only held for map operations, never
//! across an `.await`. Idle time is measured on the tokio clock so tests can pause it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::config::ClientLimits;
use crate::events::{EventBus, EventType};
use crate::model::{ClientEditorInfo, ClientInfo, StreamEditorInfo, StreamInfo, StreamType};
use crate::stream::{Listings, StreamSettings, Switched, UrlCursor};

/// How long after its last request an HLS viewer still counts as watching (m3u-editor's
/// connection counts, `is_connected`), or two target durations when that is longer: a
/// player polls its playlist about every target duration.
pub const HLS_WATCH_WINDOW_MS: u64 = 10_000;

/// How long after its last connection closed a direct viewer still counts as watching: a
/// player reconnecting at once is not a new viewer, and a hang-up stops counting promptly.
pub const DIRECT_WATCH_GRACE_MS: u64 = 1_000;

/// Monotonic milliseconds since the registry started, on the tokio clock, plus the wall
/// time of that start for reporting.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    start_utc: DateTime<Utc>,
}

impl Clock {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            start_utc: Utc::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub fn started_at(&self) -> DateTime<Utc> {
        self.start_utc
    }

    pub fn uptime_seconds(&self) -> u64 {
        self.start.elapsed().as_secs()
    }
}

/// The wall-clock time of the latest of many moments, read when it happened (not derived
/// from the monotonic clock, which only measures how long ago): microseconds since the
/// epoch, so touching it from many requests is one atomic max.
#[derive(Debug)]
pub struct WallStamp(AtomicI64);

impl WallStamp {
    fn now() -> Self {
        Self(AtomicI64::new(Utc::now().timestamp_micros()))
    }

    fn stamp(&self) {
        self.0
            .fetch_max(Utc::now().timestamp_micros(), Ordering::Relaxed);
    }

    pub fn get(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.0.load(Ordering::Relaxed)).unwrap_or_default()
    }
}

/// Counters shared by a stream, a client and the proxy as a whole.
#[derive(Debug, Default)]
pub struct Counters {
    pub bytes: AtomicU64,
    pub segments: AtomicU64,
    pub errors: AtomicU64,
    pub failovers: AtomicU64,
    pub active_connections: AtomicU64,
    /// Bytes per second over the last rate tick, as `f64` bits.
    rate_bits: AtomicU64,
    /// `bytes` at the last rate tick.
    rate_mark: AtomicU64,
}

impl Counters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub fn bytes_per_second(&self) -> f64 {
        f64::from_bits(self.rate_bits.load(Ordering::Relaxed))
    }

    /// The cumulative counters that persist: bytes, segments, errors, failovers.
    pub fn values(&self) -> [u64; 4] {
        [&self.bytes, &self.segments, &self.errors, &self.failovers].map(Self::get)
    }

    /// Adds restored values (from the store, at start-up) to the four persistent counters.
    pub fn restore(&self, values: [u64; 4]) {
        let counters = [&self.bytes, &self.segments, &self.errors, &self.failovers];
        for (c, v) in counters.into_iter().zip(values) {
            c.fetch_add(v, Ordering::Relaxed);
        }
        self.rate_mark.fetch_add(values[0], Ordering::Relaxed);
    }

    /// Recomputes the rate from the bytes sent since the previous tick.
    fn tick_rate(&self, elapsed_secs: f64) {
        let now = self.bytes.load(Ordering::Relaxed);
        let before = self.rate_mark.swap(now, Ordering::Relaxed);
        let rate = now.saturating_sub(before) as f64 / elapsed_secs.max(1e-3);
        self.rate_bits.store(rate.to_bits(), Ordering::Relaxed);
    }
}

/// One registered stream.
#[derive(Debug)]
pub struct StreamEntry {
    pub id: String,
    pub created_at: DateTime<Utc>,
    settings: RwLock<Arc<StreamSettings>>,
    /// Which of [`StreamSettings::urls`] is in use, and the switches that moved it.
    cursor: UrlCursor,
    /// The variants each URL's playlist listed, to map a variant across a switch.
    pub listings: Listings,
    pub counters: Counters,
    last_access_ms: AtomicU64,
    /// When `last_access_ms` was last moved, on the wall clock, for reports.
    last_access_at: WallStamp,
    /// One more than the time of the last viewer request (0: never viewed). Unlike
    /// `last_access_ms`, registering the stream again does not count as viewing it.
    last_viewed_ms_plus_one: AtomicU64,
    /// This stream's clients: an index beside the registry's map so a stream's page, its
    /// client count and its removal never scan every client. Changed only while the
    /// registry's clients write lock is held, so the two maps always agree.
    clients: RwLock<HashMap<String, Arc<ClientEntry>>>,
    /// Cancelled when the stream is deleted: open viewer connections end. Waiting on it
    /// takes its locks; a body that is flowing checks [`StreamEntry::is_closed`] instead.
    pub closed: CancellationToken,
    /// Set just before `closed` is cancelled: one atomic load per chunk tells a flowing
    /// body to end.
    is_closed: AtomicBool,
    /// Whether `stream_started` was announced and `stream_stopped` not since.
    watched: AtomicBool,
    /// Unix milliseconds of the last switch of URL (0: never).
    last_failover_unix_ms: AtomicI64,
    /// With `use_sticky_session`: the URL index whose playlist redirected, and where to.
    sticky: Mutex<Option<(usize, Url)>>,
    /// The longest `EXT-X-TARGETDURATION` its playlists gave, in ms (0: none seen).
    target_duration_ms: AtomicU64,
    events: EventBus,
    /// The proxy-wide totals, where switches are counted too.
    totals: Arc<Counters>,
    /// What the store holds: see [`Stored`].
    pub stored: Stored,
}

/// How far the store has caught up with a stream: its persistent counters as last handed
/// to the store, and the generation of the settings and position it holds. Only the
/// store's flusher and the management handlers move these.
#[derive(Debug, Default)]
pub struct Stored {
    counters: [AtomicU64; 4],
    generation: AtomicU64,
}

impl Stored {
    pub fn restored(counters: [u64; 4], generation: u64) -> Self {
        Self {
            counters: counters.map(AtomicU64::new),
            generation: AtomicU64::new(generation),
        }
    }

    /// The increments of `counters` since the last call (or the restore), marking them
    /// handed over.
    pub fn take_increments(&self, counters: &Counters) -> [u64; 4] {
        let now = counters.values();
        let mut delta = [0; 4];
        for i in 0..4 {
            let before = self.counters[i].swap(now[i], Ordering::Relaxed);
            delta[i] = now[i].saturating_sub(before);
        }
        delta
    }

    /// The increments of `counters` not handed to the store yet (nothing is marked).
    pub fn pending(&self, counters: &Counters) -> [u64; 4] {
        let now = counters.values();
        std::array::from_fn(|i| now[i].saturating_sub(self.counters[i].load(Ordering::Relaxed)))
    }

    /// Notes `values` as handed to the store.
    pub fn mark_counters(&self, values: [u64; 4]) {
        for (c, v) in self.counters.iter().zip(values) {
            c.store(v, Ordering::Relaxed);
        }
    }

    /// The generation whose settings and position the store holds.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    pub fn set_generation(&self, generation: u64) {
        self.generation.store(generation, Ordering::Relaxed);
    }
}

/// A stream as the store gives it back at start-up.
#[derive(Debug, Clone)]
pub struct RestoredStream {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub settings: StreamSettings,
    pub index: usize,
    pub generation: u64,
    /// Bytes, segments, errors, failovers.
    pub counters: [u64; 4],
}

impl StreamEntry {
    pub fn settings(&self) -> Arc<StreamSettings> {
        self.settings.read().expect("settings lock").clone()
    }

    pub fn current_index(&self) -> usize {
        self.cursor.index()
    }

    /// The URL in use and its index.
    pub fn current_url(&self) -> (usize, Url) {
        let settings = self.settings();
        let index = self.current_index() % settings.url_count();
        (index, settings.url_at(index).clone())
    }

    /// Moves to the URL after `from` (wrapping), unless another request already moved
    /// past it. Returns the new index, or `None` when there is only one URL. A switch is
    /// counted and announced as a `failover` event with its reason.
    pub fn switch_from(&self, from: usize, reason: &str) -> Option<usize> {
        match self.switch(from, reason, None) {
            Switched::Moved { to, .. } | Switched::Followed(to) => Some(to),
            Switched::Single | Switched::Capped => None,
        }
    }

    /// Like [`StreamEntry::switch_from`], at most `cap` times a minute when `cap` is set
    /// (automatic switches); says what happened.
    pub fn switch(&self, from: usize, reason: &str, cap: Option<u32>) -> Switched {
        let count = self.settings().url_count();
        self.switch_to(from, (from + 1) % count.max(1), reason, cap)
    }

    /// Like [`StreamEntry::switch`], to the URL at `to`.
    pub fn switch_to(&self, from: usize, to: usize, reason: &str, cap: Option<u32>) -> Switched {
        // Under the settings read lock: an upsert (which writes settings and clamps the
        // cursor under the write lock) cannot shorten the URL list between the count read
        // here and the move, which would leave the index past the end.
        let switched = {
            let settings = self.settings.read().expect("settings lock");
            self.cursor.switch_to(from, to, settings.url_count(), cap)
        };
        if let Switched::Moved { from, to } = switched {
            self.counters.failovers.fetch_add(1, Ordering::Relaxed);
            self.totals.failovers.fetch_add(1, Ordering::Relaxed);
            self.last_failover_unix_ms
                .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
            self.events.emit(
                EventType::Failover,
                Some(&self.id),
                None,
                with_metadata(
                    serde_json::json!({"from_index": from, "to_index": to, "reason": reason}),
                    &self.settings(),
                ),
            );
        }
        switched
    }

    /// Appends a URL a failover resolver named to the stream's list and returns its index,
    /// or the index it already has.
    pub fn add_resolved_url(&self, url: Url) -> usize {
        let mut settings = self
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = settings.urls().position(|u| *u == url) {
            return i;
        }
        let mut next = (**settings).clone();
        next.failover_urls.push(url);
        let index = next.failover_urls.len();
        *settings = Arc::new(next);
        index
    }

    /// Notes a playlist's target duration: an HLS viewer counts as watching for two of them.
    pub fn note_target_duration(&self, seconds: Option<f64>) {
        if let Some(s) = seconds.filter(|s| s.is_finite() && *s > 0.0) {
            let ms = (s.min(3600.0) * 1000.0) as u64;
            self.target_duration_ms.fetch_max(ms, Ordering::Relaxed);
        }
    }

    /// How long after its last request a viewer of this stream still counts as watching.
    pub fn watch_window_ms(&self) -> u64 {
        match self.settings().stream_type {
            StreamType::Hls => {
                HLS_WATCH_WINDOW_MS.max(2 * self.target_duration_ms.load(Ordering::Relaxed))
            }
            StreamType::Direct => DIRECT_WATCH_GRACE_MS,
        }
    }

    /// With `use_sticky_session`: where URL `index` redirected its playlist, if it did.
    pub fn sticky_url(&self, index: usize) -> Option<Url> {
        let sticky = self.sticky.lock().unwrap_or_else(PoisonError::into_inner);
        sticky
            .as_ref()
            .filter(|(i, _)| *i == index)
            .map(|(_, u)| u.clone())
    }

    /// Remembers (or, with `None`, forgets) where URL `index` redirected its playlist.
    pub fn set_sticky_url(&self, index: usize, url: Option<Url>) {
        *self.sticky.lock().unwrap_or_else(PoisonError::into_inner) = url.map(|u| (index, u));
    }

    pub fn subscribe_switches(&self) -> watch::Receiver<u64> {
        self.cursor.subscribe()
    }

    /// How many times the stream switched URL, or had its URLs changed by a re-post,
    /// since it was registered.
    pub fn generation(&self) -> u64 {
        self.cursor.generation()
    }

    /// Whether the stream was deleted (or the proxy is shutting down): an atomic load.
    pub fn is_closed(&self) -> bool {
        self.is_closed.load(Ordering::Acquire)
    }

    /// Ends every open viewer connection of the stream.
    fn close(&self) {
        self.is_closed.store(true, Ordering::Release);
        self.closed.cancel();
    }

    pub fn touch(&self, now_ms: u64) {
        self.last_access_ms.fetch_max(now_ms, Ordering::Relaxed);
        self.last_access_at.stamp();
    }

    pub fn last_access_ms(&self) -> u64 {
        self.last_access_ms.load(Ordering::Relaxed)
    }

    /// A viewer's request started or ended now.
    fn viewed(&self, now_ms: u64) {
        self.touch(now_ms);
        self.last_viewed_ms_plus_one
            .fetch_max(now_ms + 1, Ordering::Relaxed);
    }

    /// When a viewer last made a request, if ever.
    pub fn last_viewed_ms(&self) -> Option<u64> {
        self.last_viewed_ms_plus_one
            .load(Ordering::Relaxed)
            .checked_sub(1)
    }

    pub fn client_count(&self) -> usize {
        self.clients.read().expect("stream clients lock").len()
    }

    /// This stream's clients, oldest first.
    pub fn clients(&self) -> Vec<Arc<ClientEntry>> {
        let mut v: Vec<_> = self
            .clients
            .read()
            .expect("stream clients lock")
            .values()
            .cloned()
            .collect();
        sort_clients(&mut v);
        v
    }
}

/// One viewer of one stream, identified by `?client_id=` or by (ip, user agent, stream). A
/// named client that plays two streams at once (a multiview player) is two entries, one per
/// stream, so neither session ends when the other makes a request.
#[derive(Debug)]
pub struct ClientEntry {
    pub id: String,
    pub stream_id: String,
    pub ip: String,
    pub user_agent: String,
    pub first_seen_ms: u64,
    /// `first_seen_ms` on the wall clock.
    pub first_seen: DateTime<Utc>,
    last_seen_ms: AtomicU64,
    /// When `last_seen_ms` was last moved, on the wall clock, for reports.
    last_seen_at: WallStamp,
    pub counters: Counters,
    /// The user name of its latest request that gave one (m3u-editor's `?username=`).
    username: Mutex<Option<String>>,
    /// Cancelled when this viewer is ended alone (`DELETE /hls/{id}/clients/{cid}`) or
    /// with its stream: a child of the stream's token.
    pub closed: CancellationToken,
}

impl ClientEntry {
    pub fn username(&self) -> Option<String> {
        self.username
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_username(&self, name: Option<&str>) {
        if let Some(name) = name {
            let mut slot = self.username.lock().unwrap_or_else(PoisonError::into_inner);
            if slot.as_deref() != Some(name) {
                *slot = Some(name.to_string());
            }
        }
    }

    pub fn touch(&self, now_ms: u64) {
        self.last_seen_ms.fetch_max(now_ms, Ordering::Relaxed);
        self.last_seen_at.stamp();
    }

    pub fn last_seen_ms(&self) -> u64 {
        self.last_seen_ms.load(Ordering::Relaxed)
    }
}

/// Whether `POST /streams` made a new stream or updated an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    Created,
    Updated,
}

/// Why a stream left the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// `DELETE /streams/{id}`.
    Deleted,
    /// Nobody played it for `STREAM_TIMEOUT`.
    Idle,
    /// `DELETE /streams/by-metadata`.
    MetadataFilter,
    /// `DELETE /streams/oldest-by-metadata`.
    Oldest,
    /// Deleted by another instance of the fleet, which announced the deletion: this one
    /// ends its own viewers only (their `client_disconnected`, and `stream_stopped` if it
    /// was watched here).
    Elsewhere,
}

impl Removal {
    /// The `reason` of its `stream_stopped` event, in m3u-editor's words.
    pub fn stop_reason(self) -> &'static str {
        match self {
            Removal::Deleted | Removal::Elsewhere => "manual_deletion",
            Removal::Idle => "inactive_timeout",
            Removal::MetadataFilter => "metadata_filter_deletion",
            Removal::Oldest => "oldest_stream_deletion",
        }
    }
}

/// `data` with the stream's metadata added as `data.metadata` (m3u-editor reads it on
/// every stream and client event).
fn with_metadata(mut data: serde_json::Value, settings: &StreamSettings) -> serde_json::Value {
    if let Some(map) = data.as_object_mut() {
        map.insert(
            "metadata".into(),
            settings
                .metadata
                .clone()
                .unwrap_or_else(|| serde_json::json!({})),
        );
    }
    data
}

/// What a cleanup sweep removed.
#[derive(Debug, Default, PartialEq)]
pub struct Swept {
    pub clients: Vec<(String, String)>,
    pub streams: Vec<String>,
}

/// A client's key in the registry: (client id, stream id).
type ClientKey = (String, String);

fn client_key(client_id: &str, stream_id: &str) -> ClientKey {
    (client_id.to_string(), stream_id.to_string())
}

/// All streams and clients of this process.
#[derive(Debug)]
pub struct Registry {
    pub clock: Clock,
    id_key: Hmac<Sha256>,
    streams: RwLock<HashMap<String, Arc<StreamEntry>>>,
    /// Every client, keyed by (client id, stream id): ordered so the sessions of one id are
    /// neighbours for `GET /clients/{id}`.
    clients: RwLock<BTreeMap<ClientKey, Arc<ClientEntry>>>,
    /// Proxy-wide totals, including streams since deleted. Shared with every stream so a
    /// switch of URL counts in both.
    pub totals: Arc<Counters>,
    /// How far `totals` were handed to the store.
    pub stored_totals: Stored,
    /// Every change of streams and clients is announced here.
    pub events: EventBus,
    /// `CLIENT_TIMEOUT`: how long after its last request a viewer still counts as active.
    client_timeout_ms: u64,
    /// How many clients are tracked at most, per stream and in all.
    client_limits: ClientLimits,
    /// Viewers served without being tracked because a limit was reached.
    untracked_clients: AtomicU64,
}

impl Registry {
    /// `secret` derives stream ids, so the same URL gets the same id on every instance
    /// that shares the secret, and nobody can guess an id without it.
    pub fn new(secret: &[u8]) -> Self {
        Self {
            clock: Clock::new(),
            id_key: Hmac::new_from_slice(secret).expect("HMAC takes keys of any length"),
            streams: RwLock::default(),
            clients: RwLock::default(),
            totals: Arc::default(),
            stored_totals: Stored::default(),
            events: EventBus::default(),
            client_timeout_ms: 300_000,
            client_limits: ClientLimits::default(),
            untracked_clients: AtomicU64::new(0),
        }
    }

    /// Sets how many clients are tracked at most (`MAX_CLIENTS_PER_STREAM`, `MAX_CLIENTS`).
    pub fn with_client_limits(mut self, limits: ClientLimits) -> Self {
        self.client_limits = limits;
        self
    }

    /// Viewers served without a client entry of their own because a limit was reached.
    pub fn untracked_clients(&self) -> u64 {
        self.untracked_clients.load(Ordering::Relaxed)
    }

    /// Whether one more client may be tracked on `stream`, within the per-stream and the
    /// total limits.
    fn has_room_for_client(&self, total: usize, stream: &StreamEntry) -> bool {
        let limits = self.client_limits;
        let under = |limit: usize, count: usize| limit == 0 || count < limit;
        under(limits.total, total) && under(limits.per_stream, stream.client_count())
    }

    /// Sets how long after its last request a viewer (and its stream) still counts as
    /// active in reports; an HLS player is between requests most of the time.
    pub fn with_client_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.client_timeout_ms = timeout.as_millis() as u64;
        self
    }

    /// Active at `now_ms`: a connection is open, or the last request is within
    /// `CLIENT_TIMEOUT`.
    fn is_active(&self, now_ms: u64, counters: &Counters, last_ms: Option<u64>) -> bool {
        Counters::get(&counters.active_connections) > 0
            || last_ms.is_some_and(|last| now_ms.saturating_sub(last) < self.client_timeout_ms)
    }

    /// A connection is open or a viewer made a request within `CLIENT_TIMEOUT`.
    pub fn stream_is_active(&self, s: &StreamEntry) -> bool {
        self.stream_active_at(self.clock.now_ms(), s)
    }

    fn stream_active_at(&self, now_ms: u64, s: &StreamEntry) -> bool {
        self.is_active(now_ms, &s.counters, s.last_viewed_ms())
    }

    fn client_active_at(&self, now_ms: u64, c: &ClientEntry) -> bool {
        self.is_active(now_ms, &c.counters, Some(c.last_seen_ms()))
    }

    /// When something was last seen, for reports: now while a connection is open (a live
    /// viewer makes one request and then watches for hours), else its last request's end.
    fn last_seen_utc(&self, counters: &Counters, last: &WallStamp) -> DateTime<Utc> {
        if Counters::get(&counters.active_connections) > 0 {
            Utc::now()
        } else {
            last.get()
        }
    }

    /// The id of the stream whose original URL is `url`: 96 bits of HMAC, hex.
    pub fn stream_id_for(&self, url: &Url) -> String {
        let mut mac = self.id_key.clone();
        mac.update(b"stream-id\0");
        mac.update(url.as_str().as_bytes());
        hex(&mac.finalize().into_bytes()[..12])
    }

    /// The id of a viewer that did not name itself: the same player on the same stream
    /// gets the same id, without the address or user agent being readable from it.
    pub fn derive_client_id(&self, ip: &str, user_agent: &str, stream_id: &str) -> String {
        let mut mac = self.id_key.clone();
        for part in ["client-id", ip, user_agent, stream_id] {
            mac.update(part.as_bytes());
            mac.update(b"\0");
        }
        format!("c-{}", hex(&mac.finalize().into_bytes()[..8]))
    }

    /// Registers a stream, or replaces the settings of the stream with the same URL.
    pub fn upsert(&self, settings: StreamSettings) -> (Arc<StreamEntry>, Upsert) {
        let (entry, upsert) = self.upsert_quietly(settings);
        let settings = entry.settings();
        let event = match upsert {
            Upsert::Created => EventType::StreamCreated,
            Upsert::Updated => EventType::StreamUpdated,
        };
        self.events.emit(
            event,
            Some(&entry.id),
            None,
            with_metadata(
                serde_json::json!({
                    "stream_type": settings.stream_type,
                    "failover_urls": settings.failover_urls.len(),
                }),
                &settings,
            ),
        );
        (entry, upsert)
    }

    /// [`Registry::upsert`] without its `stream_created` / `stream_updated` event: a channel
    /// list registers thousands of streams at once and announces them as one
    /// `playlist_refreshed` event instead.
    pub fn upsert_quietly(&self, settings: StreamSettings) -> (Arc<StreamEntry>, Upsert) {
        let id = self.stream_id_for(&settings.original_url);
        let now = self.clock.now_ms();
        let mut streams = self.streams.write().expect("streams lock");
        if let Some(entry) = streams.get(&id) {
            let count = settings.url_count();
            let new_urls = !entry.settings().urls().eq(settings.urls());
            let mut current = entry.settings.write().expect("settings lock");
            *current = Arc::new(settings);
            // A shorter failover list may leave the index out of range; clamped before the
            // lock is released, so no switch sees the new list with the old index.
            entry.cursor.clamp(count);
            drop(current);
            if new_urls {
                // Running viewers look again: a feed whose URL is no longer the one in
                // use moves to it, and variant listings of the old URLs are refetched.
                entry.cursor.renew();
            }
            entry.touch(now);
            return (entry.clone(), Upsert::Updated);
        }
        let entry = self.new_entry(RestoredStream {
            id: id.clone(),
            created_at: Utc::now(),
            settings,
            index: 0,
            generation: 0,
            counters: [0; 4],
        });
        streams.insert(id, entry.clone());
        (entry, Upsert::Created)
    }

    /// Puts back a stream the store held, with its position and counters, announcing
    /// nothing (it was announced when it was created). Its idle time starts now.
    pub fn restore_stream(&self, r: RestoredStream) -> Arc<StreamEntry> {
        let entry = self.new_entry(r);
        self.streams
            .write()
            .expect("streams lock")
            .insert(entry.id.clone(), entry.clone());
        entry
    }

    /// A new entry, not yet in the map: at `r.index` (the original URL when out of range)
    /// with `r.counters`, which the store is taken to hold already. Its idle time starts now.
    fn new_entry(&self, r: RestoredStream) -> Arc<StreamEntry> {
        let now = self.clock.now_ms();
        let index = if r.index < r.settings.url_count() {
            r.index
        } else {
            0
        };
        let counters = Counters::default();
        counters.restore(r.counters);
        Arc::new(StreamEntry {
            id: r.id,
            created_at: r.created_at,
            settings: RwLock::new(Arc::new(r.settings)),
            cursor: UrlCursor::restored(index, r.generation),
            listings: Listings::default(),
            counters,
            last_access_ms: AtomicU64::new(now),
            last_access_at: WallStamp::now(),
            last_viewed_ms_plus_one: AtomicU64::new(0),
            clients: RwLock::default(),
            closed: self.events.shutdown().child_token(),
            is_closed: AtomicBool::new(false),
            watched: AtomicBool::new(false),
            last_failover_unix_ms: AtomicI64::new(0),
            sticky: Mutex::new(None),
            target_duration_ms: AtomicU64::new(0),
            events: self.events.clone(),
            totals: self.totals.clone(),
            stored: Stored::restored(r.counters, r.generation),
        })
    }

    /// Takes a stream as another instance of the fleet stored it: registers it (quietly,
    /// with no counters of this instance's) or replaces its settings and follows its
    /// position (see `UrlCursor::follow`), so viewers here move with a failover decided
    /// there. The store is taken to hold that generation already. False when it is not
    /// new and nothing moved.
    pub fn apply_remote(&self, r: RestoredStream) -> bool {
        let existing = self.stream(&r.id);
        let Some(entry) = existing else {
            self.restore_stream(RestoredStream {
                counters: [0; 4],
                ..r
            });
            return true;
        };
        let count = r.settings.url_count();
        let new_urls = !entry.settings().urls().eq(r.settings.urls());
        {
            let mut current = entry.settings.write().expect("settings lock");
            *current = Arc::new(r.settings);
            entry.cursor.clamp(count);
        }
        let moved = entry.cursor.follow(r.index, r.generation, count);
        if new_urls && !moved {
            entry.cursor.renew();
        }
        if entry.generation() == r.generation {
            entry.stored.set_generation(r.generation);
        }
        moved || new_urls
    }

    /// Puts back the proxy totals the store held (at start-up, before any traffic).
    pub fn restore_totals(&self, values: [u64; 4]) {
        self.totals.restore(values);
        self.stored_totals.mark_counters(values);
    }

    /// Calls `f` on every stream, in no order, under the map's read lock: `f` must not
    /// call back into the registry's maps.
    pub fn each_stream(&self, mut f: impl FnMut(&Arc<StreamEntry>)) {
        for s in self.streams.read().expect("streams lock").values() {
            f(s);
        }
    }

    /// Counts an origin failure of `stream` (in its errors and the totals) and announces it
    /// as an `upstream_error` event, naming the client whose request met it, if one did.
    pub fn stream_upstream_error(
        &self,
        stream: &StreamEntry,
        error: &crate::error::UpstreamError,
        client_id: Option<&str>,
    ) {
        self.stream_upstream_error_at(stream, error, client_id, Utc::now());
    }

    /// [`Registry::stream_upstream_error`] for a failure that happened at `at`.
    pub fn stream_upstream_error_at(
        &self,
        stream: &StreamEntry,
        error: &crate::error::UpstreamError,
        client_id: Option<&str>,
        at: DateTime<Utc>,
    ) {
        self.count_error(stream);
        self.events.emit_at(
            at,
            EventType::UpstreamError,
            Some(&stream.id),
            client_id,
            with_metadata(
                serde_json::json!({"error": error.to_string(), "retryable": error.is_retryable()}),
                &stream.settings(),
            ),
        );
    }

    /// Counts one error of `stream`, in its counters and the totals.
    pub fn count_error(&self, stream: &StreamEntry) {
        for c in [&self.totals, &stream.counters] {
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn stream(&self, id: &str) -> Option<Arc<StreamEntry>> {
        self.streams.read().expect("streams lock").get(id).cloned()
    }

    pub fn streams(&self) -> Vec<Arc<StreamEntry>> {
        let mut all: Vec<_> = self
            .streams
            .read()
            .expect("streams lock")
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        all
    }

    pub fn stream_count(&self) -> usize {
        self.streams.read().expect("streams lock").len()
    }

    /// Removes a stream and its clients, ends its open connections, and announces it.
    pub fn remove_stream(&self, id: &str, why: Removal) -> Option<(Arc<StreamEntry>, Vec<String>)> {
        let entry = self.streams.write().expect("streams lock").remove(id)?;
        entry.close();
        let gone: Vec<String> = {
            let mut clients = self.clients.write().expect("clients lock");
            let mut own = entry.clients.write().expect("stream clients lock");
            let mut gone: Vec<_> = own.drain().map(|(_, c)| c).collect();
            sort_clients(&mut gone);
            for c in &gone {
                clients.remove(&client_key(&c.id, id));
            }
            gone.iter().map(|c| c.id.clone()).collect()
        };
        let reason = match why {
            Removal::Idle => "stream_idle",
            _ => "stream_deleted",
        };
        let settings = entry.settings();
        for c in &gone {
            self.client_gone(c, id, reason, &settings);
        }
        let event = match why {
            Removal::Idle => EventType::StreamIdleRemoved,
            _ => EventType::StreamDeleted,
        };
        let mut data = serde_json::json!({
            "total_bytes_served": Counters::get(&entry.counters.bytes),
            "clients": gone.len(),
        });
        if why != Removal::Elsewhere {
            self.events.emit(
                event,
                Some(id),
                None,
                with_metadata(data.clone(), &settings),
            );
        }
        data["reason"] = why.stop_reason().into();
        if why != Removal::Elsewhere || entry.watched.load(Ordering::Relaxed) {
            self.events.emit(
                EventType::StreamStopped,
                Some(id),
                None,
                with_metadata(data, &settings),
            );
        }
        entry.watched.store(false, Ordering::Relaxed);
        Some((entry, gone))
    }

    fn client_gone(&self, client_id: &str, stream_id: &str, reason: &str, of: &StreamSettings) {
        self.events.emit(
            EventType::ClientDisconnected,
            Some(stream_id),
            Some(client_id),
            with_metadata(serde_json::json!({"reason": reason}), of),
        );
    }

    /// [`Registry::client_gone`] for a stream that may have gone meanwhile.
    fn client_gone_of(&self, client_id: &str, stream_id: &str, reason: &str) {
        let settings = self.stream(stream_id).map(|s| s.settings());
        match settings {
            Some(settings) => self.client_gone(client_id, stream_id, reason, &settings),
            None => {
                self.events.emit(
                    EventType::ClientDisconnected,
                    Some(stream_id),
                    Some(client_id),
                    serde_json::json!({"reason": reason, "metadata": {}}),
                );
            }
        }
    }

    /// Ends one viewer of one stream: forgets it and closes its open connections. False
    /// when that stream has no such client.
    pub fn remove_client(&self, stream_id: &str, client_id: &str) -> bool {
        let Some(stream) = self.stream(stream_id) else {
            return false;
        };
        let removed = {
            let mut clients = self.clients.write().expect("clients lock");
            let removed = stream
                .clients
                .write()
                .expect("stream clients lock")
                .remove(client_id);
            if removed.is_some() {
                clients.remove(&client_key(client_id, stream_id));
            }
            removed
        };
        let Some(client) = removed else {
            return false;
        };
        client.closed.cancel();
        self.client_gone(client_id, stream_id, "removed", &stream.settings());
        true
    }

    /// Watching at `now_ms` (m3u-editor's connection counts): a connection is open, or the
    /// last one closed within `window` ms: [`DIRECT_WATCH_GRACE_MS`], or for HLS
    /// [`HLS_WATCH_WINDOW_MS`] or two target durations.
    fn watching_at(
        &self,
        now_ms: u64,
        counters: &Counters,
        last_ms: Option<u64>,
        window: u64,
    ) -> bool {
        Counters::get(&counters.active_connections) > 0
            || last_ms.is_some_and(|last| now_ms.saturating_sub(last) < window)
    }

    /// Someone is watching the stream now (see [`Registry::watching_at`]).
    pub fn stream_is_watched(&self, s: &StreamEntry) -> bool {
        self.watching_at(
            self.clock.now_ms(),
            &s.counters,
            s.last_viewed_ms(),
            s.watch_window_ms(),
        )
    }

    /// This client is watching its stream now.
    pub fn client_is_connected(&self, c: &ClientEntry) -> bool {
        let window = self
            .stream(&c.stream_id)
            .map_or(DIRECT_WATCH_GRACE_MS, |s| s.watch_window_ms());
        self.watching_at(
            self.clock.now_ms(),
            &c.counters,
            Some(c.last_seen_ms()),
            window,
        )
    }

    /// Announces `stream_stopped` with `reason` (and `extra` in its data) for a stream the
    /// proxy stops without removing it (`provider_limit`); its viewers' connections end.
    pub fn stream_stopped_for(&self, stream_id: &str, reason: &str, extra: serde_json::Value) {
        let Some(s) = self.stream(stream_id) else {
            return;
        };
        s.watched.store(false, Ordering::Relaxed);
        let mut data = serde_json::json!({"reason": reason});
        if let (Some(map), Some(extra)) = (data.as_object_mut(), extra.as_object()) {
            map.extend(extra.clone());
        }
        self.events.emit(
            EventType::StreamStopped,
            Some(stream_id),
            None,
            with_metadata(data, &s.settings()),
        );
    }

    /// Announces `stream_stopped` (`last_client_disconnected`) for every stream whose last
    /// viewer left since `stream_started`. Called about once a second.
    pub fn note_stopped_viewing(&self) {
        let now = self.clock.now_ms();
        let stopped: Vec<Arc<StreamEntry>> = self
            .streams
            .read()
            .expect("streams lock")
            .values()
            .filter(|s| {
                s.watched.load(Ordering::Relaxed)
                    && !self.watching_at(now, &s.counters, s.last_viewed_ms(), s.watch_window_ms())
            })
            .cloned()
            .collect();
        for s in stopped {
            if s.watched.swap(false, Ordering::AcqRel) {
                self.events.emit(
                    EventType::StreamStopped,
                    Some(&s.id),
                    None,
                    with_metadata(
                        serde_json::json!({"reason": "last_client_disconnected"}),
                        &s.settings(),
                    ),
                );
            }
        }
    }

    /// Shuts down: cancels the one shutdown token, which ends every open viewer connection
    /// and live hub (each stream's `closed` is its child), every `/events` feed and the
    /// webhook deliveries. The streams stay registered.
    pub fn close_all(&self) {
        for s in self.streams.read().expect("streams lock").values() {
            s.close();
        }
        self.events.shutdown().cancel();
    }

    /// The client with this id on this stream, created on first sight. The boolean is true
    /// when new.
    pub fn client(
        &self,
        id: &str,
        stream_id: &str,
        ip: &str,
        user_agent: &str,
    ) -> (Arc<ClientEntry>, bool) {
        self.client_named(id, stream_id, ip, user_agent, None)
    }

    /// [`Registry::client`], noting the viewer's user name when the request gave one.
    pub fn client_named(
        &self,
        id: &str,
        stream_id: &str,
        ip: &str,
        user_agent: &str,
        username: Option<&str>,
    ) -> (Arc<ClientEntry>, bool) {
        let now = self.clock.now_ms();
        let stream = self.stream(stream_id);
        let known = |s: &StreamEntry| {
            s.clients
                .read()
                .expect("stream clients lock")
                .get(id)
                .cloned()
        };
        if let Some(c) = stream.as_deref().and_then(known) {
            c.touch(now);
            c.set_username(username);
            return (c, false);
        }
        let mut clients = self.clients.write().expect("clients lock");
        let key = client_key(id, stream_id);
        if let Some(c) = clients.get(&key) {
            c.touch(now);
            c.set_username(username);
            return (c.clone(), false);
        }
        let entry = Arc::new(ClientEntry {
            id: id.to_string(),
            stream_id: stream_id.to_string(),
            ip: ip.to_string(),
            user_agent: user_agent.to_string(),
            first_seen_ms: now,
            first_seen: Utc::now(),
            last_seen_at: WallStamp::now(),
            last_seen_ms: AtomicU64::new(now),
            counters: Counters::default(),
            username: Mutex::new(username.map(str::to_string)),
            closed: match &stream {
                Some(s) => s.closed.child_token(),
                // A stream deleted meanwhile: nothing left to watch.
                None => {
                    let closed = CancellationToken::new();
                    closed.cancel();
                    closed
                }
            },
        });
        // A stream deleted while this request was on its way: the request is about to end,
        // and tracking its viewer would leave a client of nothing behind.
        let Some(stream) = stream.filter(|s| !s.closed.is_cancelled()) else {
            return (entry, false);
        };
        if !self.has_room_for_client(clients.len(), &stream) {
            // Served and counted in the stream's figures, but not tracked on its own.
            self.untracked_clients.fetch_add(1, Ordering::Relaxed);
            return (entry, false);
        }
        clients.insert(key, entry.clone());
        stream
            .clients
            .write()
            .expect("stream clients lock")
            .insert(id.to_string(), entry.clone());
        drop(clients);
        self.events.emit(
            EventType::ClientConnected,
            Some(stream_id),
            Some(id),
            with_metadata(
                serde_json::json!({
                    "ip_address": ip,
                    "user_agent": user_agent,
                    "username": username,
                    "stream_client_count": stream.client_count(),
                }),
                &stream.settings(),
            ),
        );
        (entry, true)
    }

    /// The client with this id; of a named client playing several streams, the session
    /// seen last.
    pub fn client_by_id(&self, id: &str) -> Option<Arc<ClientEntry>> {
        let clients = self.clients.read().expect("clients lock");
        clients
            .range(client_key(id, "")..)
            .take_while(|((client_id, _), _)| client_id == id)
            .map(|(_, c)| c)
            .max_by_key(|c| c.last_seen_ms())
            .cloned()
    }

    pub fn clients(&self) -> Vec<Arc<ClientEntry>> {
        let mut all: Vec<_> = self
            .clients
            .read()
            .expect("clients lock")
            .values()
            .cloned()
            .collect();
        sort_clients(&mut all);
        all
    }

    /// The clients of one stream, oldest first; empty for an unknown stream.
    pub fn clients_of(&self, stream_id: &str) -> Vec<Arc<ClientEntry>> {
        self.stream(stream_id)
            .map(|s| s.clients())
            .unwrap_or_default()
    }

    pub fn client_count(&self) -> usize {
        self.clients.read().expect("clients lock").len()
    }

    /// Streams and clients active now (see [`Registry::stream_is_active`]): one pass over
    /// each map with no copies, for `/metrics`.
    pub fn active_counts(&self) -> (usize, usize) {
        let now = self.clock.now_ms();
        let streams = self
            .streams
            .read()
            .expect("streams lock")
            .values()
            .filter(|s| self.stream_active_at(now, s))
            .count();
        let clients = self
            .clients
            .read()
            .expect("clients lock")
            .values()
            .filter(|c| self.client_active_at(now, c))
            .count();
        (streams, clients)
    }

    /// Updates every bytes-per-second figure; called once per rate period.
    pub fn tick_rates(&self, elapsed_secs: f64) {
        self.totals.tick_rate(elapsed_secs);
        for s in self.streams.read().expect("streams lock").values() {
            s.counters.tick_rate(elapsed_secs);
        }
        for c in self.clients.read().expect("clients lock").values() {
            c.counters.tick_rate(elapsed_secs);
        }
    }

    /// Removes clients idle past `client_timeout` and streams idle past `stream_timeout`.
    /// Anything with an open connection is never idle.
    pub fn sweep(&self, client_timeout_ms: u64, stream_timeout_ms: Option<u64>) -> Swept {
        let now = self.clock.now_ms();
        let mut swept = Swept::default();
        if let Some(limit) = stream_timeout_ms {
            let idle: Vec<String> = self
                .streams
                .read()
                .expect("streams lock")
                .values()
                .filter(|s| {
                    Counters::get(&s.counters.active_connections) == 0
                        && now.saturating_sub(s.last_access_ms()) >= limit
                })
                .map(|s| s.id.clone())
                .collect();
            for id in idle {
                if let Some((_, clients)) = self.remove_stream(&id, Removal::Idle) {
                    swept
                        .clients
                        .extend(clients.into_iter().map(|c| (c, id.clone())));
                    swept.streams.push(id);
                }
            }
        }
        let mut idle_clients = Vec::new();
        {
            let mut clients = self.clients.write().expect("clients lock");
            clients.retain(|_, c| {
                let idle = Counters::get(&c.counters.active_connections) == 0
                    && now.saturating_sub(c.last_seen_ms()) >= client_timeout_ms;
                if idle {
                    idle_clients.push((c.id.clone(), c.stream_id.clone()));
                }
                !idle
            });
            for (client_id, stream_id) in &idle_clients {
                if let Some(s) = self.stream(stream_id) {
                    s.clients
                        .write()
                        .expect("stream clients lock")
                        .remove(client_id);
                }
            }
        }
        idle_clients.sort();
        for (client_id, stream_id) in &idle_clients {
            self.client_gone_of(client_id, stream_id, "idle");
        }
        swept.clients.extend(idle_clients);
        swept
    }

    pub fn stream_info(&self, s: &StreamEntry) -> StreamInfo {
        let settings = s.settings();
        let index = s.current_index() % settings.url_count();
        let active = Counters::get(&s.counters.active_connections);
        StreamInfo {
            stream_id: s.id.clone(),
            stream_type: settings.stream_type,
            provider: settings.provider.clone(),
            original_url: settings.original_url.to_string(),
            current_url: settings.url_at(index).to_string(),
            failover_urls: settings.failover_urls.iter().map(Url::to_string).collect(),
            failover_index: index,
            failover_count: Counters::get(&s.counters.failovers),
            user_agent: settings.user_agent.clone(),
            header_names: settings
                .headers
                .keys()
                .map(|k| k.as_str().to_string())
                .collect(),
            metadata: settings.metadata.clone(),
            client_count: s.client_count(),
            active_connections: active,
            total_bytes_served: Counters::get(&s.counters.bytes),
            total_segments_served: Counters::get(&s.counters.segments),
            error_count: Counters::get(&s.counters.errors),
            bytes_per_second: s.counters.bytes_per_second(),
            is_active: self.stream_is_active(s),
            created_at: s.created_at,
            last_access: self.last_seen_utc(&s.counters, &s.last_access_at),
            editor: StreamEditorInfo {
                has_failover: !settings.failover_urls.is_empty()
                    || settings.options.failover_resolver_url.is_some(),
                failover_resolver_url: settings
                    .options
                    .failover_resolver_url
                    .as_ref()
                    .map(Url::to_string),
                current_failover_index: index as i64 - 1,
                failover_attempts: Counters::get(&s.counters.failovers),
                last_failover_time: match s.last_failover_unix_ms.load(Ordering::Relaxed) {
                    0 => None,
                    ms => DateTime::from_timestamp_millis(ms),
                },
            },
        }
    }

    pub fn client_info(&self, c: &ClientEntry) -> ClientInfo {
        ClientInfo {
            client_id: c.id.clone(),
            stream_id: Some(c.stream_id.clone()),
            user_agent: c.user_agent.clone(),
            ip_address: c.ip.clone(),
            first_seen: c.first_seen,
            last_seen: self.last_seen_utc(&c.counters, &c.last_seen_at),
            bytes_served: Counters::get(&c.counters.bytes),
            segments_served: Counters::get(&c.counters.segments),
            active_connections: Counters::get(&c.counters.active_connections),
            bytes_per_second: c.counters.bytes_per_second(),
            is_active: self.client_active_at(self.clock.now_ms(), c),
            editor: ClientEditorInfo {
                username: c.username(),
                created_at: Some(c.first_seen),
                last_access: Some(self.last_seen_utc(&c.counters, &c.last_seen_at)),
                is_connected: self.client_is_connected(c),
            },
            instance: None,
        }
    }
}

/// Oldest first, then by id, so listings are stable.
fn sort_clients(clients: &mut [Arc<ClientEntry>]) {
    clients.sort_unstable_by(|a, b| a.first_seen_ms.cmp(&b.first_seen_ms).then(a.id.cmp(&b.id)));
}

/// Lowercase hex of some bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Holds a viewer's connection open in the counters: created when a response starts,
/// dropped when its body ends or the player hangs up. Bytes are counted through it.
#[derive(Debug)]
pub struct Viewing {
    pub registry: Arc<Registry>,
    pub stream: Arc<StreamEntry>,
    pub client: Arc<ClientEntry>,
}

impl Viewing {
    pub fn new(
        registry: Arc<Registry>,
        stream: Arc<StreamEntry>,
        client: Arc<ClientEntry>,
    ) -> Self {
        let now = registry.clock.now_ms();
        stream.viewed(now);
        client.touch(now);
        for c in [&registry.totals, &stream.counters, &client.counters] {
            c.active_connections.fetch_add(1, Ordering::Relaxed);
        }
        if !stream.closed.is_cancelled() && !stream.watched.swap(true, Ordering::AcqRel) {
            registry.events.emit(
                EventType::StreamStarted,
                Some(&stream.id),
                Some(&client.id),
                with_metadata(
                    serde_json::json!({
                        "url": stream.current_url().1.as_str(),
                        "client_id": client.id,
                    }),
                    &stream.settings(),
                ),
            );
        }
        Self {
            registry,
            stream,
            client,
        }
    }

    /// Counts bytes written to the player: three relaxed atomic adds, no lock.
    pub fn add_bytes(&self, n: u64) {
        for c in [
            &self.registry.totals,
            &self.stream.counters,
            &self.client.counters,
        ] {
            c.bytes.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn add_segment(&self) {
        for c in [
            &self.registry.totals,
            &self.stream.counters,
            &self.client.counters,
        ] {
            c.segments.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn add_error(&self) {
        self.registry.count_error(&self.stream);
    }

    /// Counts an origin failure and announces it as an `upstream_error` event.
    pub fn upstream_error(&self, error: &crate::error::UpstreamError) {
        self.upstream_error_at(error, Utc::now());
    }

    /// [`Viewing::upstream_error`] for a failure that happened at `at`.
    pub fn upstream_error_at(&self, error: &crate::error::UpstreamError, at: DateTime<Utc>) {
        self.registry
            .stream_upstream_error_at(&self.stream, error, Some(&self.client.id), at);
    }
}

impl Drop for Viewing {
    fn drop(&mut self) {
        let now = self.registry.clock.now_ms();
        self.stream.viewed(now);
        self.client.touch(now);
        for c in [
            &self.registry.totals,
            &self.stream.counters,
            &self.client.counters,
        ] {
            c.active_connections.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderMap;

    use super::*;
    use crate::model::StreamType;

    fn settings(url: &str, failover: &[&str]) -> StreamSettings {
        StreamSettings {
            original_url: Url::parse(url).unwrap(),
            failover_urls: failover.iter().map(|u| Url::parse(u).unwrap()).collect(),
            user_agent: None,
            headers: HeaderMap::new(),
            metadata: None,
            stream_type: StreamType::Hls,
            provider: None,
            options: Default::default(),
        }
    }

    #[test]
    fn same_url_same_id_and_ids_depend_on_the_secret() {
        let a = Registry::new(b"one");
        let b = Registry::new(b"two");
        let (s1, k1) = a.upsert(settings("http://o/a.m3u8", &[]));
        let (s2, k2) = a.upsert(settings("http://o/a.m3u8", &["http://b/a.m3u8"]));
        assert_eq!((k1, k2), (Upsert::Created, Upsert::Updated));
        assert_eq!(s1.id, s2.id);
        assert_eq!(s1.id.len(), 24);
        assert_eq!(s2.settings().failover_urls.len(), 1);
        assert_ne!(
            s1.id,
            b.stream_id_for(&Url::parse("http://o/a.m3u8").unwrap())
        );
    }

    #[tokio::test]
    async fn switching_wraps_and_concurrent_switches_count_once() {
        let r = Registry::new(b"k");
        let (s, _) = r.upsert(settings("http://o/a", &["http://o/b", "http://o/c"]));
        let watch = s.subscribe_switches();
        assert_eq!(s.switch_from(0, "test"), Some(1));
        // A second request that also saw index 0 fail follows the first switch.
        assert_eq!(s.switch_from(0, "test"), Some(1));
        assert!(watch.has_changed().unwrap());
        assert_eq!(s.switch_from(1, "test"), Some(2));
        assert_eq!(s.switch_from(2, "test"), Some(0));
        assert_eq!(s.current_url().1.as_str(), "http://o/a");
        assert_eq!(Counters::get(&s.counters.failovers), 3);
        assert_eq!(
            Counters::get(&r.totals.failovers),
            3,
            "proxy totals count switches"
        );
        let (single, _) = r.upsert(settings("http://o/single", &[]));
        assert_eq!(single.switch_from(0, "test"), None);
    }

    #[test]
    fn a_switch_racing_an_upsert_that_shortens_the_list_never_leaves_the_index_out_of_range() {
        let r = Registry::new(b"k");
        let long = || settings("http://o/a", &["http://o/b", "http://o/c"]);
        let (s, _) = r.upsert(long());
        for round in 0..500 {
            r.upsert(long());
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    for _ in 0..200 {
                        s.switch_from(s.current_url().0, "test");
                    }
                });
                scope.spawn(|| r.upsert(settings("http://o/a", &[])));
            });
            assert_eq!(
                s.current_index(),
                0,
                "round {round}: index past the single URL"
            );
        }
        // And a stream stuck past its end could not be switched any more.
        r.upsert(long());
        assert_eq!(s.switch_from(s.current_url().0, "test"), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_keeps_open_connections_and_removes_idle_ones() {
        let r = Arc::new(Registry::new(b"k"));
        let (s, _) = r.upsert(settings("http://o/a", &[]));
        let (idle, _) = r.client("idle", &s.id, "1.1.1.1", "ua");
        let (busy, _) = r.client("busy", &s.id, "1.1.1.2", "ua");
        let viewing = Viewing::new(r.clone(), s.clone(), busy.clone());
        tokio::time::advance(std::time::Duration::from_secs(301)).await;
        let swept = r.sweep(300_000, Some(3_600_000));
        assert_eq!(swept.clients, vec![("idle".to_string(), s.id.clone())]);
        assert!(r.client_by_id("busy").is_some());
        drop((viewing, idle));
        tokio::time::advance(std::time::Duration::from_secs(3600)).await;
        let swept = r.sweep(300_000, Some(3_600_000));
        assert_eq!(swept.streams, vec![s.id.clone()]);
        assert!(s.closed.is_cancelled());
        assert_eq!(r.client_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn open_connections_are_seen_now_and_activity_lasts_the_client_timeout() {
        use std::time::Duration;
        let r = Arc::new(Registry::new(b"k").with_client_timeout(Duration::from_secs(300)));
        let (s, _) = r.upsert(settings("http://o/a", &[]));
        assert!(!r.stream_info(&s).is_active, "registered, never viewed");
        let (c, _) = r.client("live", &s.id, "1.1.1.1", "ua");
        let viewing = Viewing::new(r.clone(), s.clone(), c.clone());
        tokio::time::advance(Duration::from_secs(1000)).await;
        let info = r.client_info(&c);
        let seen_now = |t: DateTime<Utc>| (Utc::now() - t).num_milliseconds().abs() < 1000;
        assert!(seen_now(info.last_seen), "an open connection is seen now");
        assert!(info.is_active);
        assert!(seen_now(r.stream_info(&s).last_access));
        drop(viewing); // hangs up at 1000 s
        let hung_up = r.client_info(&c).last_seen;
        tokio::time::advance(Duration::from_millis(299_999)).await;
        assert!(r.client_info(&c).is_active);
        assert!(r.stream_info(&s).is_active);
        tokio::time::advance(Duration::from_millis(1)).await;
        let info = r.client_info(&c);
        assert!(!info.is_active);
        assert_eq!(info.last_seen, hung_up, "the wall time of the hang-up");
        assert!(!r.stream_info(&s).is_active);
    }

    #[tokio::test(start_paused = true)]
    async fn a_direct_viewer_stops_counting_a_second_after_hanging_up_and_hls_after_ten() {
        use std::time::Duration;
        let r = Arc::new(Registry::new(b"k"));
        let mut direct = settings("http://o/live.ts", &[]);
        direct.stream_type = StreamType::Direct;
        let (d, _) = r.upsert(direct);
        let (h, _) = r.upsert(settings("http://o/a.m3u8", &[]));
        let mut events = r.events.subscribe();
        let (dc, _) = r.client("tv", &d.id, "1.1.1.1", "ua");
        let (hc, _) = r.client("phone", &h.id, "1.1.1.2", "ua");
        let watching = Viewing::new(r.clone(), d.clone(), dc.clone());
        drop(Viewing::new(r.clone(), h.clone(), hc.clone())); // one playlist request
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(
            r.stream_is_watched(&d),
            "an open connection counts for hours"
        );
        assert!(r.client_is_connected(&dc));
        assert!(!r.stream_is_watched(&h));
        drop(watching);
        assert!(
            r.stream_is_watched(&d),
            "a reconnect a moment later is not a new viewer"
        );
        tokio::time::advance(Duration::from_millis(DIRECT_WATCH_GRACE_MS)).await;
        assert!(!r.stream_is_watched(&d));
        assert!(!r.client_is_connected(&dc));
        // A playlist with 6 s segments: polled every 6 s, counted for 12.
        h.note_target_duration(Some(6.0));
        drop(Viewing::new(r.clone(), h.clone(), hc.clone()));
        tokio::time::advance(Duration::from_millis(12_000 - 1)).await;
        assert!(
            r.stream_is_watched(&h),
            "an HLS player between two requests"
        );
        r.note_stopped_viewing();
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!r.stream_is_watched(&h));
        r.note_stopped_viewing();
        r.note_stopped_viewing();
        let seen: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
            .filter(|e| e.event_type.is_opt_in())
            .map(|e| (e.event_type, e.stream_id.unwrap(), e.data["reason"].clone()))
            .collect();
        let stopped = || serde_json::Value::from("last_client_disconnected");
        assert_eq!(
            seen,
            vec![
                (
                    EventType::StreamStarted,
                    d.id.clone(),
                    serde_json::Value::Null
                ),
                (
                    EventType::StreamStarted,
                    h.id.clone(),
                    serde_json::Value::Null
                ),
                (EventType::StreamStopped, d.id.clone(), stopped()),
                (EventType::StreamStopped, h.id.clone(), stopped()),
            ],
            "each start and stop once"
        );
    }

    #[tokio::test]
    async fn a_named_client_on_two_streams_is_one_session_on_each_and_never_flaps() {
        let r = Registry::new(b"k");
        let (a, _) = r.upsert(settings("http://o/a", &[]));
        let (b, _) = r.upsert(settings("http://o/b", &[]));
        let mut events = r.events.subscribe();
        assert!(r.client("tv", &a.id, "1.1.1.1", "ua").1);
        assert!(!r.client("tv", &a.id, "1.1.1.1", "ua").1, "seen before");
        r.client("phone", &b.id, "1.1.1.2", "ua");
        assert_eq!(a.client_count(), 1);
        assert_eq!(r.clients_of(&b.id)[0].id, "phone");
        // The named client "tv" plays b beside a (a multiview player): a session on each,
        // and its requests to either keep both.
        assert!(r.client("tv", &b.id, "1.1.1.1", "ua").1);
        for _ in 0..3 {
            assert!(
                !r.client("tv", &a.id, "1.1.1.1", "ua").1,
                "tv flapped back to a"
            );
            assert!(
                !r.client("tv", &b.id, "1.1.1.1", "ua").1,
                "tv flapped back to b"
            );
        }
        assert_eq!((a.client_count(), b.client_count()), (1, 2));
        assert_eq!(r.client_count(), 3);
        assert!(r.clients_of("unknown").is_empty());
        let kinds: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
            .map(|e| (e.event_type, e.client_id.unwrap(), e.stream_id.unwrap()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (EventType::ClientConnected, "tv".into(), a.id.clone()),
                (EventType::ClientConnected, "phone".into(), b.id.clone()),
                (EventType::ClientConnected, "tv".into(), b.id.clone()),
            ]
        );
        // `GET /clients/tv` shows the session seen last.
        tokio::time::pause();
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        r.client("tv", &a.id, "1.1.1.1", "ua");
        assert_eq!(r.client_by_id("tv").unwrap().stream_id, a.id);
        // Deleting one stream ends only that session.
        r.remove_stream(&b.id, Removal::Deleted);
        assert_eq!(r.client_by_id("tv").unwrap().stream_id, a.id);
        assert_eq!(r.client_count(), 1);
        // A request that arrives as its stream is deleted is served but not tracked.
        r.remove_stream(&a.id, Removal::Deleted);
        let (ghost, new) = r.client("late", &a.id, "1.1.1.3", "ua");
        assert!(!new);
        assert_eq!(ghost.id, "late");
        assert!(r.client_by_id("late").is_none());
    }
}
