//! One shared live upstream: the task that reads a [`DirectFeed`] and broadcasts it in
//! chunks of whole TS packets, the bodies of its viewers, and the proxy-wide fan-out
//! counters. A viewer too slow to keep up with the buffer is dropped (or skipped ahead to
//! the oldest chunk still held, by setting) and counted; it never slows the others. The
//! upstream closes as soon as the last viewer has gone, or, when slow viewers are dropped,
//! as soon as every viewer left is too far behind to be kept (a paused player does not hold
//! a provider's connection open). This module counts no player bytes; each viewer's
//! response does.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use bytes::{Bytes, BytesMut};
use futures_util::stream::{self, BoxStream};
use futures_util::StreamExt;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::watch;
use tokio::time::Instant;

use super::Slots;
use crate::config::{FanoutSettings, SlowViewer};
use crate::error::UpstreamError;
use crate::registry::{Registry, StreamEntry};
use crate::upstream::direct::{looks_like_ts, Chunk, DirectFeed, Shape};

/// How often a hub whose upstream sends nothing checks whether anyone still watches.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// The most bytes a shared chunk holds: small upstream reads are gathered up to it and big
/// ones cut into it, so the buffer holds at most `FANOUT_BUFFER` × 16 KB (4 MB with the
/// default 256 chunks) whatever size the origin's reads come in, and each viewer is woken
/// per chunk, not per network read. A whole number of TS packets (87), so a cut keeps every
/// chunk on a packet boundary.
pub const CHUNK: usize = 87 * crate::upstream::direct::TS_PACKET;
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

/// One running shared upstream and what a joining viewer needs: the answer's head and the
/// broadcast of its bytes.
pub struct LiveHub {
    pub status: StatusCode,
    pub headers: HeaderMap,
    tx: broadcast::Sender<Bytes>,
    /// Whether late joiners are welcome: the bytes are known to be TS packets.
    joinable: AtomicBool,
    /// Set once the hub takes no more viewers (nobody watched, the stream was deleted, the
    /// feed failed); it leaves its slot once its upstream connection is closed.
    ended: AtomicBool,
    /// Turns true once the upstream connection is closed and the hub has left its slot.
    closed: watch::Sender<bool>,
    /// Why the upstream ended for good, for viewers still reading. Viewers hold this, not
    /// the hub, so the sender goes with the hub and its end reaches them.
    failure: Arc<OnceLock<UpstreamError>>,
    /// Chunks broadcast so far.
    sent: AtomicU64,
    /// Each viewer's count of chunks received, to tell who is still within the buffer.
    progress: Mutex<Vec<Weak<AtomicU64>>>,
    /// The slots of the stream, which this hub leaves when it ends.
    slots: Arc<Slots>,
    stream_id: String,
}

/// What a viewer reads: the shared chunks, as the chunks of its own response.
pub type ViewerBody = BoxStream<'static, Result<Chunk, UpstreamError>>;

/// Whether a hub takes one more viewer.
pub(super) enum Joined {
    /// Yes: this viewer's body, from the next chunk on.
    Body(ViewerBody),
    /// Its bytes are under way and are not TS: a viewer joining now would start mid-frame.
    NotTs,
    /// It is ending; this receiver turns true once its upstream is closed.
    Ending(watch::Receiver<bool>),
}

impl LiveHub {
    /// Whether an answer of `status` and `shape` can be shared at all: a whole live answer
    /// (200, no length).
    /// Whether late joiners are welcome is decided by its content type or, failing that,
    /// by its first bytes: only TS is joined mid-stream.
    pub fn can_share(status: StatusCode, shape: &Shape) -> bool {
        status == StatusCode::OK && matches!(shape, Shape::Live { ts } if *ts != Some(false))
    }

    /// Starts sharing `feed`, whose answer had `status` and `headers` (as relayed to
    /// players), and returns the hub with the first viewer's body. The caller puts the hub
    /// in the stream's slot.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start(
        fanout: Arc<Fanout>,
        registry: Arc<Registry>,
        stream: Arc<StreamEntry>,
        slots: Arc<Slots>,
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
            ended: AtomicBool::new(false),
            closed: watch::Sender::new(false),
            failure: Arc::default(),
            sent: AtomicU64::new(0),
            progress: Mutex::default(),
            slots,
            stream_id: stream.id.clone(),
        });
        let body = hub.viewer(rx, fanout.clone());
        fanout.live_upstreams.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(run(hub.clone(), feed, fanout, registry, stream));
        (hub, body)
    }

    /// One more viewer, if this hub takes it. Called with the slots locked: the hub sends
    /// its first chunk and retires under the same lock, so a viewer either gets the stream
    /// from its first byte (whatever the container) or joins a TS stream mid-way, and
    /// never joins a hub that is retiring.
    pub(super) fn join(&self, fanout: &Arc<Fanout>) -> Joined {
        if self.ended.load(Ordering::Acquire) {
            return Joined::Ending(self.closed.subscribe());
        }
        if !self.joinable.load(Ordering::Acquire) && self.sent.load(Ordering::Acquire) > 0 {
            return Joined::NotTs;
        }
        let rx = self.tx.subscribe();
        fanout.joins.fetch_add(1, Ordering::Relaxed);
        Joined::Body(self.viewer(rx, fanout.clone()))
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

    /// Ends this hub for joiners if nobody watches: true when it should end. Joiners
    /// subscribe while holding the slots' lock, so none can slip in between.
    fn retire_if_unwatched(&self, fanout: &Fanout) -> bool {
        let _slots = self.slots.lock();
        if self.watched(fanout) {
            return false;
        }
        self.ended.store(true, Ordering::Release);
        true
    }

    /// Broadcasts one chunk; false when nobody watches any more and the hub should end.
    fn share(&self, chunk: Bytes, fanout: &Fanout) -> bool {
        let sent = if self.sent.load(Ordering::Relaxed) == 0 {
            // Viewers who subscribed before this chunk get the stream from its first byte;
            // see `join`. Only the first chunk takes the lock.
            let _slots = self.slots.lock();
            self.sent.fetch_add(1, Ordering::Release);
            self.tx.send(chunk)
        } else {
            self.sent.fetch_add(1, Ordering::Relaxed);
            self.tx.send(chunk)
        };
        sent.is_ok() || !self.retire_if_unwatched(fanout)
    }

    /// Leaves the stream's slot, once the upstream connection is closed: only then may
    /// another viewer open a new one.
    fn leave(self: &Arc<Self>) {
        self.ended.store(true, Ordering::Release);
        self.slots.vacate_hub(&self.stream_id, self);
        self.closed.send_replace(true);
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
                if !hub.watched(&fanout) && hub.retire_if_unwatched(&fanout) {
                    tracing::debug!(stream_id = %stream.id, "no viewer keeps up with the shared live stream");
                    break None;
                }
            }
            () = ready, if gathered.due.is_some() => {
                if !hub.share(gathered.take(), &fanout) {
                    break None;
                }
            }
            item = feed.next() => match item {
                Some(Ok(Chunk::Bytes(mut bytes))) => {
                    if !hub.joinable.load(Ordering::Relaxed) && looks_like_ts(&bytes) {
                        hub.joinable.store(true, Ordering::Release);
                    }
                    while let Some(chunk) = gathered.add(&mut bytes) {
                        if !hub.share(chunk, &fanout) {
                            break 'feed None;
                        }
                    }
                }
                // A failure the feed recovers from belongs to the stream, not to a viewer.
                Some(Ok(Chunk::Fault(e, at))) => {
                    registry.stream_upstream_error_at(&stream, &e, None, at)
                }
                Some(Ok(Chunk::Abort(_))) => break None,
                end @ (None | Some(Err(_))) => {
                    // What arrived before the end (of a file) or the failure still
                    // reaches the viewers.
                    if gathered.due.is_some() {
                        hub.share(gathered.take(), &fanout);
                    }
                    break end.and_then(Result::err);
                }
            },
        }
    };
    // No more joiners; the upstream connection closes before anyone may open another.
    hub.ended.store(true, Ordering::Release);
    drop(feed);
    if let Some(error) = failure {
        // Viewers read what is buffered, then end with this error.
        let _ = hub.failure.set(error);
    }
    hub.leave();
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
    failure: Arc<OnceLock<UpstreamError>>,
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
                    let error = failure.get()?.clone();
                    return Some((Err(error), None));
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
