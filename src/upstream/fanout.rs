//! Live TS fan-out: every viewer of a live MPEG-TS stream shares one upstream connection.
//!
//! IPTV providers often allow one or two connections per account, and a channel watched in
//! five rooms should not cost five upstream streams. The first viewer of a live stream
//! opens the upstream as usual; its [`DirectFeed`] (reconnects, failover, packet alignment)
//! then runs in a task of its own that broadcasts each chunk of whole TS packets. Viewers
//! who arrive while it runs join at the next chunk, so every viewer starts on a packet
//! boundary. A viewer too slow to keep up with the buffer is dropped (or skipped ahead to
//! the oldest chunk still held, by setting) and counted; it never slows the others. The
//! upstream closes as soon as the last viewer has gone, or, when slow viewers are dropped,
//! as soon as every viewer left is too far behind to be kept (a paused player does not hold
//! a provider's connection open).
//!
//! Only live answers (no length) whose bytes are TS are shared: a file, a byte range or a
//! live stream in another container (whose headers a late joiner would miss) keeps one
//! upstream per viewer. This module counts no player bytes; each viewer's response does.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use bytes::{Bytes, BytesMut};
use futures_util::stream::{self, BoxStream};
use futures_util::StreamExt;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;

use super::direct::{looks_like_ts, Chunk, DirectFeed, Shape};
use crate::config::{FanoutSettings, SlowViewer};
use crate::error::{ApiError, UpstreamError};
use crate::store::{Registry, StreamEntry};

/// How often a hub whose upstream sends nothing checks whether anyone still watches.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// The most bytes a shared chunk holds: small upstream reads are gathered up to it and big
/// ones cut into it, so the buffer holds at most `FANOUT_BUFFER` × 16 KB (4 MB with the
/// default 256 chunks) whatever size the origin's reads come in, and each viewer is woken
/// per chunk, not per network read. A whole number of TS packets (87), so a cut keeps every
/// chunk on a packet boundary.
pub const CHUNK: usize = 87 * super::direct::TS_PACKET;
const _: () = assert!(CHUNK <= 16 * 1024);
/// The longest a gathered chunk waits for more bytes: live players buffer seconds.
const MAX_GATHER: Duration = Duration::from_millis(20);

/// The settings and proxy-wide counters of fan-out, shared by every hub.
#[derive(Debug, Default)]
pub struct Fanout {
    pub settings: FanoutSettings,
    /// Shared live upstreams open now.
    live_upstreams: AtomicU64,
    /// Viewers who joined a running shared upstream instead of opening their own.
    joins: AtomicU64,
    /// Viewers who fell behind the buffer and were disconnected.
    dropped: AtomicU64,
    /// Viewers who fell behind the buffer and skipped ahead.
    skipped: AtomicU64,
}

impl Fanout {
    pub fn new(settings: FanoutSettings) -> Self {
        Self {
            settings,
            ..Self::default()
        }
    }

    /// Whether sharing is on at all (`FANOUT_BUFFER` above zero).
    pub fn enabled(&self) -> bool {
        self.settings.buffer > 0
    }

    pub fn live_upstreams(&self) -> u64 {
        self.live_upstreams.load(Ordering::Relaxed)
    }

    pub fn joins(&self) -> u64 {
        self.joins.load(Ordering::Relaxed)
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}

/// A stream's place for its shared live upstream. The async lock makes "is one running?"
/// and "open one" a single step, so viewers arriving together open the upstream once: the
/// others wait for its answer and join, or get its failure.
#[derive(Default)]
pub struct LiveSlot {
    state: tokio::sync::Mutex<SlotState>,
    /// Set once the stream answered as a file: its viewers never wait on the lock again.
    is_file: AtomicBool,
}

impl std::fmt::Debug for LiveSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSlot")
            .field("is_file", &self.is_file)
            .finish_non_exhaustive()
    }
}

/// What a stream's slot holds, behind its lock.
#[derive(Default)]
pub struct SlotState {
    /// The shared upstream running now, if any.
    pub hub: Option<Arc<LiveHub>>,
    /// The last failure to open the upstream, and when it was met.
    failed: Option<(Instant, ApiError)>,
}

impl SlotState {
    /// The failure met by a viewer who opened the upstream while the caller, here since
    /// `arrived`, waited for the lock: retrying at once would make each waiting viewer
    /// wait out the same dead origin in turn.
    pub fn failed_since(&self, arrived: Instant) -> Option<ApiError> {
        let (at, error) = self.failed.as_ref()?;
        (*at >= arrived).then(|| error.clone())
    }

    /// Remembers a failure to open the upstream, for the viewers waiting behind it.
    pub fn record_failure(&mut self, error: &ApiError) {
        self.failed = Some((Instant::now(), error.clone()));
    }
}

impl LiveSlot {
    /// Whether a viewer asking for the whole stream should go through the slot: false
    /// once the stream is known to be a file, where sharing never applies.
    pub fn may_share(&self) -> bool {
        !self.is_file.load(Ordering::Relaxed)
    }

    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, SlotState> {
        self.state.lock().await
    }

    /// Remembers that this stream answers with files, not live streams.
    pub fn mark_file(&self) {
        self.is_file.store(true, Ordering::Relaxed);
    }

    /// Forgets what the stream's answers were, after its URLs changed.
    pub fn forget_file(&self) {
        self.is_file.store(false, Ordering::Relaxed);
    }
}

/// One running shared upstream and what a joining viewer needs: the answer's head and the
/// broadcast of its bytes.
pub struct LiveHub {
    pub status: StatusCode,
    pub headers: HeaderMap,
    tx: broadcast::Sender<Bytes>,
    /// Whether late joiners are welcome: the bytes are known to be TS packets.
    joinable: AtomicBool,
    /// Why the upstream ended for good, for viewers still reading. Viewers hold this, not
    /// the hub, so the sender goes with the hub and its end reaches them.
    failure: Arc<OnceLock<String>>,
    /// Chunks broadcast so far.
    sent: AtomicU64,
    /// Each viewer's count of chunks received, to tell who is still within the buffer.
    progress: Mutex<Vec<Weak<AtomicU64>>>,
}

/// What a viewer reads: the shared chunks, as the chunks of its own response.
pub type ViewerBody = BoxStream<'static, Result<Chunk, UpstreamError>>;

impl LiveHub {
    /// Whether an answer of `status` and `shape` can be shared at all: a whole live answer
    /// (200, no length).
    /// Whether late joiners are welcome is decided by its content type or, failing that,
    /// by its first bytes: only TS is joined mid-stream.
    pub fn can_share(status: StatusCode, shape: &Shape) -> bool {
        status == StatusCode::OK && matches!(shape, Shape::Live { ts } if *ts != Some(false))
    }

    /// Starts sharing `feed`, whose answer had `status` and `headers` (as relayed to
    /// players), and returns the hub with the first viewer's body. The caller stores the
    /// hub in the stream's slot while still holding its lock.
    pub fn start(
        fanout: Arc<Fanout>,
        registry: Arc<Registry>,
        stream: Arc<StreamEntry>,
        status: StatusCode,
        headers: HeaderMap,
        ts: bool,
        feed: DirectFeed,
    ) -> (Arc<LiveHub>, ViewerBody) {
        let (tx, rx) = broadcast::channel(fanout.settings.buffer.max(1));
        let hub = Arc::new(LiveHub {
            status,
            headers,
            tx,
            joinable: AtomicBool::new(ts),
            failure: Arc::default(),
            sent: AtomicU64::new(0),
            progress: Mutex::default(),
        });
        let body = hub.viewer(rx, fanout.clone());
        fanout.live_upstreams.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(run(hub.clone(), feed, fanout, registry, stream));
        (hub, body)
    }

    /// A body for one more viewer, from the next chunk on; `None` when this hub takes no
    /// joiners (its bytes are not TS, or it has ended).
    pub fn join(self: &Arc<Self>, fanout: &Arc<Fanout>) -> Option<ViewerBody> {
        if !self.joinable.load(Ordering::Acquire) || self.failure.get().is_some() {
            return None;
        }
        let rx = self.tx.subscribe();
        fanout.joins.fetch_add(1, Ordering::Relaxed);
        Some(self.viewer(rx, fanout.clone()))
    }

    /// The body of a viewer reading `rx`, whose progress the hub follows from now on.
    fn viewer(&self, rx: broadcast::Receiver<Bytes>, fanout: Arc<Fanout>) -> ViewerBody {
        let progress = Arc::new(AtomicU64::new(self.sent.load(Ordering::Relaxed)));
        let mut all = self.progress.lock().expect("progress lock");
        all.retain(|p| p.strong_count() > 0);
        all.push(Arc::downgrade(&progress));
        viewer_body(self.failure.clone(), rx, progress, fanout)
    }

    /// Whether anyone still watches. When slow viewers are dropped, a viewer further
    /// behind than the buffer (a paused player) is as good as gone: it will be dropped
    /// when it next reads, so it does not keep the upstream open meanwhile.
    fn watched(&self, fanout: &Fanout) -> bool {
        if self.tx.receiver_count() == 0 {
            return false;
        }
        if fanout.settings.slow_viewer == SlowViewer::Skip {
            return true;
        }
        let sent = self.sent.load(Ordering::Relaxed);
        let buffer = fanout.settings.buffer as u64;
        let progress = self.progress.lock().expect("progress lock");
        progress
            .iter()
            .filter_map(Weak::upgrade)
            .any(|p| sent.saturating_sub(p.load(Ordering::Relaxed)) <= buffer)
    }

    /// Takes this hub out of the stream's slot if nobody watches: true when it should end.
    /// Joiners subscribe while holding the slot's lock, so none can slip in between.
    async fn retire_if_unwatched(self: &Arc<Self>, stream: &StreamEntry, fanout: &Fanout) -> bool {
        let mut slot = stream.live.lock().await;
        if self.watched(fanout) {
            return false;
        }
        self.leave(&mut slot);
        true
    }

    /// Broadcasts one chunk; false when nobody watches any more and the hub should end.
    async fn share(self: &Arc<Self>, chunk: Bytes, stream: &StreamEntry, fanout: &Fanout) -> bool {
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.tx.send(chunk).is_ok() || !self.retire_if_unwatched(stream, fanout).await
    }

    /// Ends this hub for joiners: later viewers open a new upstream.
    fn leave(self: &Arc<Self>, slot: &mut SlotState) {
        self.joinable.store(false, Ordering::Release);
        if slot.hub.as_ref().is_some_and(|h| Arc::ptr_eq(h, self)) {
            slot.hub = None;
        }
    }
}

/// The hub's task: reads the feed and broadcasts it until nobody watches, the stream is
/// deleted, or the feed fails for good.
async fn run(
    hub: Arc<LiveHub>,
    feed: DirectFeed,
    fanout: Arc<Fanout>,
    registry: Arc<Registry>,
    stream: Arc<StreamEntry>,
) {
    let mut feed = feed.into_stream();
    let mut idle = tokio::time::interval(IDLE_CHECK);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gathered = Gathered::default();
    let failure = 'feed: loop {
        let ready = match gathered.due {
            Some(due) => tokio::time::sleep_until(due),
            None => tokio::time::sleep(IDLE_CHECK),
        };
        tokio::select! {
            () = stream.closed.cancelled() => break None,
            _ = idle.tick() => {
                if !hub.watched(&fanout) && hub.retire_if_unwatched(&stream, &fanout).await {
                    tracing::debug!(stream_id = %stream.id, "no viewer keeps up with the shared live stream");
                    break None;
                }
            }
            () = ready, if gathered.due.is_some() => {
                if !hub.share(gathered.take(), &stream, &fanout).await {
                    break None;
                }
            }
            item = feed.next() => match item {
                Some(Ok(Chunk::Bytes(mut bytes))) => {
                    if !hub.joinable.load(Ordering::Relaxed) && looks_like_ts(&bytes) {
                        hub.joinable.store(true, Ordering::Release);
                    }
                    while let Some(chunk) = gathered.add(&mut bytes) {
                        if !hub.share(chunk, &stream, &fanout).await {
                            break 'feed None;
                        }
                    }
                }
                // A failure the feed recovers from belongs to the stream, not to a viewer.
                Some(Ok(Chunk::Fault(e))) => registry.stream_upstream_error(&stream, &e, None),
                Some(Ok(Chunk::Abort(_))) => break None,
                end @ (None | Some(Err(_))) => {
                    // What arrived before the end (of a file) or the failure still
                    // reaches the viewers.
                    if gathered.due.is_some() {
                        hub.share(gathered.take(), &stream, &fanout).await;
                    }
                    break end.and_then(Result::err).map(|e| e.to_string());
                }
            },
        }
    };
    if let Some(reason) = failure {
        // Viewers read what is buffered, then end with this error.
        let _ = hub.failure.set(reason);
    }
    hub.leave(&mut *stream.live.lock().await);
    fanout.live_upstreams.fetch_sub(1, Ordering::Relaxed);
    tracing::debug!(stream_id = %stream.id, "shared live upstream closed");
}

/// Upstream reads as chunks of [`CHUNK`] bytes, or of what arrived within [`MAX_GATHER`].
#[derive(Default)]
struct Gathered {
    bytes: BytesMut,
    /// When the gathered bytes must go out; `None` while there are none.
    due: Option<Instant>,
}

impl Gathered {
    /// Takes bytes of `read` and returns a full chunk to share when there is one: call it
    /// again until `None`, when `read` is used up. With nothing gathered before it, a read
    /// of a chunk or more is cut into chunks without a copy.
    fn add(&mut self, read: &mut Bytes) -> Option<Bytes> {
        if self.due.is_none() && read.len() >= CHUNK {
            return Some(read.split_to(CHUNK));
        }
        if read.is_empty() {
            return None;
        }
        let n = (CHUNK - self.bytes.len()).min(read.len());
        self.bytes.extend_from_slice(&read.split_to(n));
        self.due.get_or_insert_with(|| Instant::now() + MAX_GATHER);
        (self.bytes.len() >= CHUNK).then(|| self.take())
    }

    /// The bytes gathered so far, as one chunk.
    fn take(&mut self) -> Bytes {
        self.due = None;
        self.bytes.split().freeze()
    }
}

/// A viewer's side of the broadcast.
fn viewer_body(
    failure: Arc<OnceLock<String>>,
    rx: broadcast::Receiver<Bytes>,
    progress: Arc<AtomicU64>,
    fanout: Arc<Fanout>,
) -> ViewerBody {
    stream::unfold(Some((failure, rx, progress, fanout)), |state| async move {
        let (failure, mut rx, progress, fanout) = state?;
        loop {
            match rx.recv().await {
                Ok(bytes) => {
                    progress.fetch_add(1, Ordering::Relaxed);
                    let next = Some((failure, rx, progress, fanout));
                    return Some((Ok(Chunk::Bytes(bytes)), next));
                }
                Err(RecvError::Lagged(missed)) => match fanout.settings.slow_viewer {
                    SlowViewer::Skip => {
                        progress.fetch_add(missed, Ordering::Relaxed);
                        fanout.skipped.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(missed, "slow live viewer skipped ahead");
                    }
                    SlowViewer::Drop => {
                        fanout.dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(missed, "slow live viewer dropped");
                        let why = "viewer fell behind the shared live stream";
                        return Some((Ok(Chunk::Abort(why)), None));
                    }
                },
                Err(RecvError::Closed) => {
                    let reason = failure.get()?.clone();
                    return Some((Err(UpstreamError::Other(reason)), None));
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use axum::http::{header, HeaderValue};

    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), HeaderValue::from_str(v).unwrap()))
            .collect()
    }

    /// Every chunk `read` makes, and what stays gathered after it.
    fn chunks(g: &mut Gathered, read: &Bytes) -> Vec<Bytes> {
        let mut read = read.clone();
        std::iter::from_fn(|| g.add(&mut read)).collect()
    }

    #[test]
    fn small_reads_are_gathered_and_big_ones_cut_into_chunks() {
        let mut g = Gathered::default();
        let big = Bytes::from(vec![1u8; 3 * CHUNK + 1000]);
        let out = chunks(&mut g, &big);
        assert_eq!(out.len(), 3);
        assert!(
            out.iter().all(|c| c.len() == CHUNK),
            "no chunk above the bound"
        );
        assert_eq!(out[0].as_ptr(), big.as_ptr(), "cut without a copy");
        assert_eq!(g.bytes.len(), 1000, "the rest waits for more");
        assert!(g.due.is_some(), "a deadline while bytes wait");
        assert_eq!(g.take().len(), 1000);

        let small = Bytes::from(vec![2u8; 1500]);
        for _ in 0..CHUNK / 1500 {
            assert!(chunks(&mut g, &small).is_empty());
        }
        let out = chunks(&mut g, &small);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), CHUNK, "gathered up to one chunk, never more");
        assert_eq!(g.bytes.len(), (CHUNK / 1500 + 1) * 1500 - CHUNK);

        // Bytes already waiting go first: a big read after them fills their chunk.
        let out = chunks(&mut g, &big);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0][0], 2);
        assert!(out.iter().all(|c| c.len() == CHUNK));
    }

    #[test]
    fn only_live_answers_that_may_be_ts_are_shared() {
        let ts = headers(&[(header::CONTENT_TYPE, "video/mp2t")]);
        assert!(LiveHub::can_share(
            StatusCode::OK,
            &Shape::of(StatusCode::OK, &ts)
        ));
        // Another or no type: run as a hub, joinable once the bytes prove to be TS.
        let unknown = headers(&[(header::CONTENT_TYPE, "application/octet-stream")]);
        assert!(LiveHub::can_share(
            StatusCode::OK,
            &Shape::of(StatusCode::OK, &unknown)
        ));
        let file = headers(&[
            (header::CONTENT_TYPE, "video/mp2t"),
            (header::CONTENT_LENGTH, "1000"),
        ]);
        assert!(!LiveHub::can_share(
            StatusCode::OK,
            &Shape::of(StatusCode::OK, &file)
        ));
        let range = headers(&[(header::CONTENT_RANGE, "bytes 0-9/100")]);
        assert!(!LiveHub::can_share(
            StatusCode::PARTIAL_CONTENT,
            &Shape::of(StatusCode::PARTIAL_CONTENT, &range)
        ));
    }
}
