//! The single-flight, short-TTL, size-bounded cache that lets N viewers of one HLS stream
//! cause one upstream fetch per segment and per playlist refresh.
//!
//! Segments (and keys, init sections): the first request for a (stream, URL) leads: it
//! fetches through the normal failover path and, when the answer is a cacheable 200, hands
//! the body to a fill task of its own, so a leader whose player hangs up does not cancel
//! the fill for the others. Every request (leader included) then reads the entry: the
//! chunks already received, then the rest as they arrive. A fill that fails mid-body marks
//! the entry failed and drops it: readers end with an error (a cut connection, never a
//! short body that looks complete) and the next request fetches again. Completed entries
//! live for a TTL within a byte budget, oldest evicted first.
//!
//! Playlists: the fetched upstream text is shared for a short TTL (at most half a target
//! duration) by concurrent and following requests; each client still gets its own rewrite.
//!
//! Expiry is by deadline: the maintenance task calls [`Cache::purge`] every second, so once
//! traffic stops (or a stream is deleted) every entry leaves within its TTL and a second,
//! and the bytes held go back to zero, without waiting for a lookup that may never come.
//!
//! It must not: count bytes or segments (the playback route does, per viewer), hold a lock
//! across `.await`, share a failure as if it were content, or cache Range or LL-HLS
//! blocking requests (the route never asks it to).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use reqwest::header::{self, HeaderMap};
use reqwest::StatusCode;
use tokio::sync::watch;
use tokio::time::Instant;
use url::Url;

use crate::config::CacheSettings;
use crate::error::UpstreamError;
use crate::upstream::FetchedPlaylist;

/// The cache shared by every playback request.
pub struct Cache {
    settings: CacheSettings,
    segments: Mutex<Segments>,
    playlists: Mutex<HashMap<String, PlaylistSlot>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Segment entries, their completion order (which is their expiry order) and the bytes
/// they hold.
#[derive(Default)]
struct Segments {
    entries: HashMap<String, Slot>,
    /// (key, serial) of completed entries, oldest first. Stale pairs (an entry replaced or
    /// removed since) are skipped.
    done: VecDeque<(String, u64)>,
    bytes: u64,
    serial: u64,
}

struct Slot {
    entry: Arc<Entry>,
    /// Bytes reserved in the budget (the Content-Length; 0 while the head is awaited).
    size: u64,
    done_at: Option<Instant>,
}

impl Segments {
    fn remove(&mut self, key: &str, serial: u64) {
        if self
            .entries
            .get(key)
            .is_some_and(|s| s.entry.serial == serial)
        {
            let slot = self.entries.remove(key).expect("present");
            self.bytes -= slot.size;
        }
    }

    /// Drops completed entries older than `ttl`, oldest first.
    fn expire(&mut self, now: Instant, ttl: std::time::Duration) {
        while let Some((key, serial)) = self.done.front() {
            match self.entries.get(key) {
                Some(slot) if slot.entry.serial == *serial => {
                    let expired = slot.done_at.is_some_and(|t| now >= t + ttl);
                    if !expired {
                        break;
                    }
                    let (key, serial) = self.done.pop_front().expect("front");
                    self.remove(&key, serial);
                }
                _ => {
                    self.done.pop_front();
                }
            }
        }
    }

    /// Evicts completed entries, oldest first, until `size` more bytes fit in `budget`.
    fn make_room(&mut self, size: u64, budget: u64) -> bool {
        while self.bytes + size > budget {
            let Some((key, serial)) = self.done.pop_front() else {
                return false;
            };
            self.remove(&key, serial);
        }
        true
    }
}

/// The status line and headers every reader of an entry gets.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// One cached answer, filled once and read by any number of requests.
pub struct Entry {
    serial: u64,
    state: Mutex<Fill>,
    /// Bumped on every change of `state`; readers wait on it with no lock held.
    progress: watch::Sender<u64>,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Phase {
    /// The leader is waiting for the origin's response head.
    Pending,
    Filling,
    Done,
    /// The body broke mid-way: readers are cut.
    Failed,
    /// The leader's answer was not cacheable (or it gave up): others fetch for themselves.
    Abandoned,
}

struct Fill {
    phase: Phase,
    head: Option<Head>,
    /// (offset, bytes), in order; one chunk once the entry is complete.
    chunks: Vec<(usize, Bytes)>,
    len: usize,
}

impl Fill {
    /// The bytes at `offset` and after, up to the end of the chunk holding it.
    fn from(&self, offset: usize) -> Option<Bytes> {
        if offset >= self.len {
            return None;
        }
        let i = self.chunks.partition_point(|(start, _)| *start <= offset) - 1;
        let (start, bytes) = &self.chunks[i];
        Some(bytes.slice(offset - start..))
    }
}

impl Entry {
    fn new(serial: u64) -> Self {
        Self {
            serial,
            state: Mutex::new(Fill {
                phase: Phase::Pending,
                head: None,
                chunks: Vec::new(),
                len: 0,
            }),
            progress: watch::Sender::new(0),
        }
    }

    fn update(&self, f: impl FnOnce(&mut Fill)) {
        f(&mut self.state.lock().expect("cache entry lock"));
        self.progress.send_modify(|n| *n += 1);
    }

    /// Waits until the head is known: `None` when the leader gave up or failed first.
    async fn head(&self) -> Option<Head> {
        let mut rx = self.progress.subscribe();
        loop {
            rx.borrow_and_update();
            let (phase, head) = {
                let s = self.state.lock().expect("cache entry lock");
                (s.phase, s.head.clone())
            };
            match phase {
                Phase::Pending => {}
                Phase::Filling | Phase::Done => return head,
                Phase::Failed | Phase::Abandoned => return None,
            }
            // The entry owns the sender, so this only ends on a change.
            let _ = rx.changed().await;
        }
    }

    /// The body from the first byte: what has arrived, then the rest as it arrives.
    pub fn body(self: Arc<Self>) -> BoxStream<'static, Result<Bytes, UpstreamError>> {
        let rx = self.progress.subscribe();
        futures_util::stream::unfold(
            (self, 0usize, rx, false),
            |(entry, offset, mut rx, ended)| async move {
                if ended {
                    return None;
                }
                loop {
                    rx.borrow_and_update();
                    let (next, phase) = {
                        let s = entry.state.lock().expect("cache entry lock");
                        (s.from(offset), s.phase)
                    };
                    if let Some(bytes) = next {
                        let n = bytes.len();
                        return Some((Ok(bytes), (entry, offset + n, rx, false)));
                    }
                    match phase {
                        Phase::Done => return None,
                        Phase::Failed | Phase::Abandoned => {
                            let e = UpstreamError::EndedEarly;
                            return Some((Err(e), (entry, offset, rx, true)));
                        }
                        Phase::Pending | Phase::Filling => {
                            let _ = rx.changed().await;
                        }
                    }
                }
            },
        )
        .boxed()
    }
}

/// What a segment request should do.
pub enum Lookup {
    /// Another request leads (or led) the fetch: read its entry.
    Join(Arc<Entry>),
    /// This request fetches; hand the answer to [`Leader::fill`].
    Lead(Leader),
}

/// What [`Leader::fill`] made of an answer.
pub enum Filled {
    /// Being filled: read it like everyone else.
    Shared(Arc<Entry>),
    /// Not worth sharing: relay it to this player only.
    Unshared(reqwest::Response),
}

/// The right (and duty) to fill an entry. Dropped without filling (the fetch failed, the
/// answer is not cacheable, the request was cancelled), it steps aside: waiting requests
/// fetch for themselves and the next one leads again.
pub struct Leader {
    cache: Arc<Cache>,
    key: String,
    entry: Option<Arc<Entry>>,
}

impl Drop for Leader {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.cache.forget(&self.key, entry.serial);
            entry.update(|s| s.phase = Phase::Abandoned);
        }
    }
}

impl Leader {
    /// Starts filling the entry from `res` when it is cacheable (a 200 with a
    /// Content-Length within the per-entry cap and the budget, not `no-store`), and
    /// returns the entry to read. Otherwise gives the response back, to be relayed as is.
    pub fn fill(mut self, res: reqwest::Response, headers: HeaderMap) -> Filled {
        let settings = &self.cache.settings;
        let no_store = res
            .headers()
            .get_all(header::CACHE_CONTROL)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.contains("no-store")));
        let size = match res.content_length() {
            Some(n) if res.status() == StatusCode::OK && !no_store => n,
            _ => return Filled::Unshared(res),
        };
        if size > settings.max_entry_bytes || !self.cache.reserve(&self.key, self.serial(), size) {
            return Filled::Unshared(res);
        }
        let entry = self.entry.take().expect("a leader holds its entry");
        entry.update(|s| {
            s.phase = Phase::Filling;
            s.head = Some(Head {
                status: res.status(),
                headers,
            });
        });
        let (cache, key) = (self.cache.clone(), std::mem::take(&mut self.key));
        tokio::spawn(fill(cache, key, entry.clone(), res, size));
        Filled::Shared(entry)
    }

    fn serial(&self) -> u64 {
        self.entry.as_ref().map_or(0, |e| e.serial)
    }
}

/// Reads the whole upstream body into `entry`, whoever is still reading it.
async fn fill(
    cache: Arc<Cache>,
    key: String,
    entry: Arc<Entry>,
    res: reqwest::Response,
    size: u64,
) {
    let mut body = res.bytes_stream();
    let mut outcome = Ok(());
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(bytes) if bytes.is_empty() => {}
            Ok(bytes) => {
                let mut over = false;
                entry.update(|s| {
                    let start = s.len;
                    s.len += bytes.len();
                    over = s.len as u64 > size;
                    s.chunks.push((start, bytes));
                });
                if over {
                    outcome = Err("upstream sent more than its Content-Length".to_string());
                    break;
                }
            }
            Err(e) => {
                outcome = Err(UpstreamError::from_reqwest(&e).to_string());
                break;
            }
        }
    }
    let len = entry.state.lock().expect("cache entry lock").len as u64;
    if outcome.is_ok() && len != size {
        outcome = Err(format!("upstream sent {len} of {size} bytes"));
    }
    match outcome {
        Ok(()) => {
            entry.update(|s| {
                // One contiguous buffer: later readers get the segment in one write.
                if s.chunks.len() > 1 {
                    let mut whole = BytesMut::with_capacity(s.len);
                    for (_, b) in &s.chunks {
                        whole.extend_from_slice(b);
                    }
                    s.chunks = vec![(0, whole.freeze())];
                }
                s.phase = Phase::Done;
            });
            cache.completed(&key, entry.serial);
        }
        Err(reason) => {
            tracing::debug!(url = %key, %reason, "cached fill failed; readers are cut");
            cache.forget(&key, entry.serial);
            entry.update(|s| s.phase = Phase::Failed);
        }
    }
}

/// A playlist fetch shared by the requests that arrive while it runs and for a TTL after.
struct PlaylistSlot {
    rx: watch::Receiver<Shared>,
    expires: Option<Instant>,
}

#[derive(Clone)]
enum Shared {
    Pending,
    Ready(Arc<FetchedPlaylist>),
    Failed,
}

/// Removes a playlist slot whose leader did not finish (failed or was cancelled), so the
/// requests waiting on it fetch for themselves.
struct PlaylistLeader<'a> {
    cache: &'a Cache,
    key: String,
    tx: Option<watch::Sender<Shared>>,
}

impl Drop for PlaylistLeader<'_> {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let mut map = self.cache.playlists.lock().expect("playlist cache lock");
            if map
                .get(&self.key)
                .is_some_and(|s| s.rx.same_channel(&tx.subscribe()))
            {
                map.remove(&self.key);
            }
            drop(map);
            tx.send_replace(Shared::Failed);
        }
    }
}

impl Cache {
    pub fn new(settings: CacheSettings) -> Self {
        Self {
            settings,
            segments: Mutex::default(),
            playlists: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Requests answered from a shared fetch (segments and playlists).
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Requests that fetched upstream for the cache.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// Bytes of segment bodies held (and reserved by fills under way).
    pub fn bytes(&self) -> u64 {
        self.segments.lock().expect("segment cache lock").bytes
    }

    /// Segment entries and playlist slots held (fills and fetches under way included).
    pub fn entries(&self) -> usize {
        let segments = self
            .segments
            .lock()
            .expect("segment cache lock")
            .entries
            .len();
        segments + self.playlists.lock().expect("playlist cache lock").len()
    }

    /// Drops every completed segment and playlist past its deadline. Segments expire in
    /// completion order, so this stops at the first one still fresh; playlist slots are
    /// as many as the playlists polled within a TTL.
    pub fn purge(&self) {
        let now = Instant::now();
        self.segments
            .lock()
            .expect("segment cache lock")
            .expire(now, self.settings.segment_ttl);
        self.playlists
            .lock()
            .expect("playlist cache lock")
            .retain(|_, s| s.expires.is_none_or(|t| now < t));
    }

    /// Joins or leads the fetch of `url` for `stream`; `None` when segment caching is off.
    pub fn segment(self: &Arc<Self>, stream: &str, url: &Url) -> Option<Lookup> {
        if self.settings.max_bytes == 0 || self.settings.segment_ttl.is_zero() {
            return None;
        }
        let key = format!("{stream} {url}");
        let mut s = self.segments.lock().expect("segment cache lock");
        s.expire(Instant::now(), self.settings.segment_ttl);
        if let Some(slot) = s.entries.get(&key) {
            return Some(Lookup::Join(slot.entry.clone()));
        }
        s.serial += 1;
        let entry = Arc::new(Entry::new(s.serial));
        s.entries.insert(
            key.clone(),
            Slot {
                entry: entry.clone(),
                size: 0,
                done_at: None,
            },
        );
        drop(s);
        self.misses.fetch_add(1, Ordering::Relaxed);
        Some(Lookup::Lead(Leader {
            cache: self.clone(),
            key,
            entry: Some(entry),
        }))
    }

    /// The head of a joined entry, counting a hit; `None` when its leader gave up, and the
    /// request should fetch for itself.
    pub async fn join(&self, entry: &Entry) -> Option<Head> {
        let head = entry.head().await?;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(head)
    }

    fn reserve(&self, key: &str, serial: u64, size: u64) -> bool {
        let mut s = self.segments.lock().expect("segment cache lock");
        if s.entries.get(key).is_none_or(|e| e.entry.serial != serial) {
            return false;
        }
        if !s.make_room(size, self.settings.max_bytes) {
            return false;
        }
        s.bytes += size;
        s.entries.get_mut(key).expect("checked").size = size;
        true
    }

    fn completed(&self, key: &str, serial: u64) {
        let mut s = self.segments.lock().expect("segment cache lock");
        if let Some(slot) = s.entries.get_mut(key).filter(|e| e.entry.serial == serial) {
            slot.done_at = Some(Instant::now());
            s.done.push_back((key.to_string(), serial));
        }
    }

    fn forget(&self, key: &str, serial: u64) {
        self.segments
            .lock()
            .expect("segment cache lock")
            .remove(key, serial);
    }

    /// The upstream text of the playlist at `url`: shared with requests for the same
    /// (stream, URL) under way or finished within the TTL, else fetched with `fetch`.
    /// A failure is never shared: the requests that waited on it fetch for themselves.
    pub async fn playlist<F, Fut>(
        &self,
        stream: &str,
        url: &Url,
        fetch: F,
    ) -> Result<Arc<FetchedPlaylist>, UpstreamError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<FetchedPlaylist, UpstreamError>>,
    {
        let ttl = self.settings.playlist_ttl;
        let blocking = url.query().is_some_and(|q| q.contains("_HLS_"));
        if ttl.is_zero() || blocking {
            return fetch().await.map(Arc::new);
        }
        let key = format!("{stream} {url}");
        let now = Instant::now();
        let waiting = {
            let mut map = self.playlists.lock().expect("playlist cache lock");
            let current = map.get(&key).and_then(|slot| {
                let fresh = slot.expires.is_none_or(|t| now < t);
                let usable = !matches!(*slot.rx.borrow(), Shared::Failed);
                (fresh && usable).then(|| slot.rx.clone())
            });
            match current {
                Some(rx) => Ok(rx),
                None => {
                    let (tx, rx) = watch::channel(Shared::Pending);
                    map.insert(key.clone(), PlaylistSlot { rx, expires: None });
                    Err(tx)
                }
            }
        };
        let waiting = match waiting {
            Ok(rx) => Some(rx),
            Err(tx) => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                let leader = PlaylistLeader {
                    cache: self,
                    key,
                    tx: Some(tx),
                };
                return self.lead_playlist(leader, fetch).await;
            }
        };
        if let Some(mut rx) = waiting {
            let shared = rx
                .wait_for(|s| !matches!(s, Shared::Pending))
                .await
                .map(|s| s.clone())
                .unwrap_or(Shared::Failed);
            if let Shared::Ready(p) = shared {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(p);
            }
        }
        fetch().await.map(Arc::new)
    }

    async fn lead_playlist<F, Fut>(
        &self,
        mut leader: PlaylistLeader<'_>,
        fetch: F,
    ) -> Result<Arc<FetchedPlaylist>, UpstreamError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<FetchedPlaylist, UpstreamError>>,
    {
        // On an error (or if this future is dropped) the leader's Drop clears the slot.
        let fetched = Arc::new(fetch().await?);
        let ttl = playlist_ttl(self.settings.playlist_ttl, &fetched.text);
        let tx = leader.tx.take().expect("a leader holds its sender");
        {
            let mut map = self.playlists.lock().expect("playlist cache lock");
            match map.get_mut(&leader.key) {
                Some(slot) if slot.rx.same_channel(&tx.subscribe()) => {
                    slot.expires = Some(Instant::now() + ttl);
                }
                _ => {}
            }
        }
        tx.send_replace(Shared::Ready(fetched.clone()));
        Ok(fetched)
    }
}

/// How long a fetched playlist is shared: the setting, but never more than half the
/// target duration, so a live playlist is at most half a segment behind the origin.
fn playlist_ttl(setting: std::time::Duration, text: &str) -> std::time::Duration {
    let target = text.lines().find_map(|l| {
        l.trim()
            .strip_prefix("#EXT-X-TARGETDURATION:")
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    match target {
        Some(t) if t > 0.0 => setting.min(std::time::Duration::from_secs_f64(t / 2.0)),
        _ => setting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn playlist_ttl_is_at_most_half_a_target_duration() {
        let s = Duration::from_secs(1);
        assert_eq!(playlist_ttl(s, "#EXTM3U\n#EXT-X-TARGETDURATION:6\n"), s);
        assert_eq!(
            playlist_ttl(s, "#EXTM3U\n#EXT-X-TARGETDURATION:1\n"),
            Duration::from_millis(500)
        );
        assert_eq!(
            playlist_ttl(s, "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\na\n"),
            s
        );
    }

    #[test]
    fn reads_start_anywhere_in_the_chunks() {
        let fill = Fill {
            phase: Phase::Filling,
            head: None,
            chunks: vec![
                (0, Bytes::from_static(b"abc")),
                (3, Bytes::from_static(b"de")),
            ],
            len: 5,
        };
        assert_eq!(fill.from(0).unwrap(), "abc");
        assert_eq!(fill.from(2).unwrap(), "c");
        assert_eq!(fill.from(3).unwrap(), "de");
        assert_eq!(fill.from(4).unwrap(), "e");
        assert!(fill.from(5).is_none());
    }

    #[test]
    fn the_budget_evicts_completed_entries_oldest_first() {
        let mut s = Segments::default();
        for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
            let serial = i as u64 + 1;
            s.entries.insert(
                key.into(),
                Slot {
                    entry: Arc::new(Entry::new(serial)),
                    size: 10,
                    done_at: Some(Instant::now()),
                },
            );
            s.bytes += 10;
            s.done.push_back((key.into(), serial));
        }
        assert!(s.make_room(15, 30));
        assert!(!s.entries.contains_key("a") && !s.entries.contains_key("b"));
        assert!(s.entries.contains_key("c"));
        assert_eq!(s.bytes, 10);
        assert!(!s.make_room(31, 30));
    }
}
