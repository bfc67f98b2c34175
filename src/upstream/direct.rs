//! A direct stream's bytes across upstream failures: one player connection, as many
//! upstream connections as it takes.
//!
//! Whether an answer without a length is live or a file is read from the evidence at hand:
//! a file's container (by content type or the URL's extension: `.mp4`, `.mkv`, ...) or an
//! offer of byte ranges on a stream that does not say it is TS make it a file, relayed once
//! and ended where the origin ends it. TS says nothing either way (IPTV serves live channels
//! and recordings alike as `.ts`), so a TS answer is taken as live, and the proof comes when
//! it ends: the reconnection's first bytes are compared with the feed's first bytes, and an
//! origin that starts over from byte 0 was a file that has ended. Time would not tell:
//! a recording served in real time ends after as long as a live connection does.
//!
//! A live stream (no length) that ends, errors, stalls, or whose stream is switched
//! (`POST /streams/{id}/failover` or another viewer's failure, seen through the stream's
//! switch generation) is reconnected on the current URL under the [`FailoverPolicy`](super::failover::FailoverPolicy); an
//! MPEG-TS feed is cut and joined on 188-byte packet boundaries, so the player sees whole
//! packets only: the partial packet at a cut is dropped and the new feed starts at the first
//! sync byte that repeats one packet later. A file (known length, byte ranges) resumes with
//! `Range: bytes=N-` from the first byte the player has not had, on the same or the next
//! URL, and a resumed answer that does not line up (another length, a changed file) is
//! refused rather than spliced in. Per chunk this does no lock and no await on the registry.
//! It does not count bytes or answer players; it yields [`Chunk`]s to whoever does.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use bytes::{Buf, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures_util::stream::{self, BoxStream};
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use url::Url;

use super::failover::Faults;
use super::{check_media_status, Fetch, Upstream};
use crate::error::UpstreamError;
use crate::providers::{Holder, SlotGuard};
use crate::registry::StreamEntry;
use crate::stream::StreamSettings;

/// An opened direct upstream: the URL index and URL that answered, the answer, and the
/// provider slot its connection holds (none when its URL belongs to no provider).
pub type Opened = (usize, Url, reqwest::Response, Option<SlotGuard>);

/// What a stream's viewer gets when its provider's slot is taken back for another stream.
pub const STOPPED_FOR_PROVIDER: &str = "stream stopped to make room on its provider";

/// Size of an MPEG-TS packet.
pub const TS_PACKET: usize = 188;
/// The TS sync byte every packet starts with.
const TS_SYNC: u8 = 0x47;
/// How long a connection must last before losing it is a fresh failure rather than one
/// more in a row.
const STABLE: Duration = Duration::from_secs(10);

/// Failures waiting to be yielded, oldest first, each stamped when it happened.
#[derive(Debug, Default)]
struct StampedFaults(VecDeque<(UpstreamError, DateTime<Utc>)>);

impl Faults for StampedFaults {
    fn fault(&mut self, error: UpstreamError) {
        self.0.push_back((error, Utc::now()));
    }
}

/// What the feed yields besides its end.
#[derive(Debug)]
pub enum Chunk {
    /// Bytes for the player.
    Bytes(Bytes),
    /// A failure the feed recovered from (or is recovering from), with when it happened:
    /// for counting only, and reported with its own time (a reconnect's failures come out
    /// together once it is over).
    Fault(UpstreamError, DateTime<Utc>),
    /// The player's connection must end now for a reason that is not the origin's (a
    /// viewer too slow for a shared live stream): cut, and not counted as an origin error.
    Abort(&'static str),
}

/// Content types of file containers: an answer of one of these is a file even without a
/// length (a live channel comes as TS, HLS or FLV, not as one of these). MP3 is not
/// among them: a length-less `audio/mpeg` (`.mp3`) is most often internet radio, which
/// must reconnect; a file of it replayed from byte 0 is still caught on reconnection.
const FILE_TYPES: &[&str] = &[
    "video/mp4",
    "video/x-m4v",
    "video/quicktime",
    "video/x-matroska",
    "video/webm",
    "video/x-msvideo",
    "video/x-ms-wmv",
    "audio/mp4",
    "audio/x-m4a",
    "audio/flac",
];
/// URL extensions of file containers, for origins that send no useful content type.
const FILE_EXTENSIONS: &[&str] = &[
    "mp4", "m4v", "mov", "mkv", "webm", "avi", "wmv", "m4a", "flac",
];
/// How many of a live feed's first bytes are kept to recognise an origin that sends them
/// again after a reconnection (a file replayed from byte 0, not a live stream).
const REPLAY_PROBE: usize = 16 * 1024;

/// How a direct answer can be continued after a cut.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// No length and no sign of a file: reconnect and carry on, unless the reconnection
    /// starts over with the feed's first bytes. `ts` is `None` until the first bytes tell.
    Live { ts: Option<bool> },
    /// A byte range of a file that accepts ranges: resume from `next`.
    File {
        /// Absolute offset of the next byte the player gets.
        next: u64,
        /// Absolute offset of the last byte the player asked for.
        last: u64,
        /// The file's length, which every resumed answer must repeat.
        total: u64,
    },
    /// A file that cannot be resumed (a known length without ranges, or a file without a
    /// length): relayed once, its end is the end and a cut ends it.
    Once,
}

impl Shape {
    /// Reads the shape of an origin's answer to a GET, from its head and its URL (after
    /// redirects): a lengthless answer from a path such as `/films/movie.mp4` is a file.
    pub fn of_answer(res: &reqwest::Response) -> Shape {
        let shape = Shape::of(res.status(), res.headers());
        let extension = res
            .url()
            .path_segments()
            .and_then(|mut s| s.next_back())
            .and_then(|name| name.rsplit_once('.'))
            .map(|(_, ext)| ext.to_ascii_lowercase());
        let file = extension.is_some_and(|ext| FILE_EXTENSIONS.contains(&ext.as_str()));
        match shape {
            Shape::Live { ts: None } if file => Shape::Once,
            shape => shape,
        }
    }

    /// Reads the shape of an origin's successful answer to a GET from its head.
    pub fn of(status: StatusCode, headers: &HeaderMap) -> Shape {
        let text = |name| {
            headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        if status == StatusCode::PARTIAL_CONTENT {
            return match text(header::CONTENT_RANGE).and_then(parse_content_range) {
                Some((next, last, total)) => Shape::File { next, last, total },
                None => Shape::Once,
            };
        }
        let length = text(header::CONTENT_LENGTH).and_then(|v| v.trim().parse::<u64>().ok());
        let ranges = text(header::ACCEPT_RANGES).is_some_and(|v| v.contains("bytes"));
        let content_type = text(header::CONTENT_TYPE).map(str::to_ascii_lowercase);
        let is_type = |types: &[&str]| {
            content_type
                .as_deref()
                .is_some_and(|ct| types.iter().any(|t| ct.starts_with(t)))
        };
        match length {
            // IPTV panels offer ranges on live TS channels too: for TS they prove nothing.
            None if is_type(FILE_TYPES) || (ranges && !is_type(&["video/mp2t"])) => Shape::Once,
            None => Shape::Live {
                ts: content_type.filter(|ct| ct.contains("mp2t")).map(|_| true),
            },
            Some(len) if ranges && len > 0 => Shape::File {
                next: 0,
                last: len - 1,
                total: len,
            },
            Some(_) => Shape::Once,
        }
    }
}

/// `bytes FIRST-LAST/TOTAL` as numbers (a `*` total is no use for resuming).
fn parse_content_range(v: &str) -> Option<(u64, u64, u64)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let parse = |s: &str| s.trim().parse::<u64>().ok();
    let (first, last, total) = (parse(first)?, parse(last)?, parse(total)?);
    (first <= last && last < total).then_some((first, last, total))
}

/// The position of the first TS sync byte in `buf` that repeats one packet later.
fn find_sync(buf: &[u8]) -> Option<usize> {
    (0..buf.len().saturating_sub(TS_PACKET))
        .find(|&i| buf[i] == TS_SYNC && buf[i + TS_PACKET] == TS_SYNC)
}

/// Whether `bytes` are whole TS packets, as a feed of TS yields them.
pub fn looks_like_ts(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes.len().is_multiple_of(TS_PACKET)
        && bytes.chunks(TS_PACKET).all(|p| p[0] == TS_SYNC)
}

/// Cuts a byte feed into whole TS packets, realigning after every [`Packets::cut`].
#[derive(Debug, Default)]
struct Packets {
    /// Bytes held back: a partial packet, or bytes searched for a sync while aligning.
    carry: BytesMut,
    aligned: bool,
}

impl Packets {
    /// Whole packets of what has arrived so far, if any.
    fn push(&mut self, bytes: Bytes) -> Option<Bytes> {
        if self.aligned && self.carry.is_empty() && bytes.len().is_multiple_of(TS_PACKET) {
            // The usual case for a TS origin: aligned chunks pass without a copy.
            return Some(bytes);
        }
        self.carry.extend_from_slice(&bytes);
        if !self.aligned {
            match find_sync(&self.carry) {
                Some(at) => {
                    self.carry.advance(at);
                    self.aligned = true;
                }
                None => {
                    // Only the last packet's worth can still hold the start of a sync.
                    let keep = self.carry.len().min(TS_PACKET);
                    self.carry.advance(self.carry.len() - keep);
                    return None;
                }
            }
        }
        let whole = self.carry.len() / TS_PACKET * TS_PACKET;
        (whole > 0).then(|| self.carry.split_to(whole).freeze())
    }

    /// The upstream was cut: its partial packet is dropped and the next feed realigned.
    fn cut(&mut self) {
        self.carry.clear();
        self.aligned = false;
    }
}

/// Everything needed to open (or reopen) the upstream of one direct response.
pub struct DirectFeed {
    upstream: Upstream,
    stream: Arc<StreamEntry>,
    /// The URL index the current body comes from, and that URL: a re-post of the stream
    /// may put another URL at the same index.
    index: usize,
    url: Url,
    body: Option<BoxStream<'static, Result<Bytes, reqwest::Error>>>,
    shape: Shape,
    packets: Packets,
    /// The validator of the file on the URL it started on, sent as `If-Range` there.
    etag: Option<(usize, HeaderValue)>,
    /// Resolves when the stream switches URL; re-armed after each switch. Polled only
    /// while the body waits for bytes (polling it takes the watch's lock).
    switched: Pin<Box<dyn Future<Output = watch::Receiver<u64>> + Send>>,
    /// The stream's switch generation last looked at: while bytes flow, a switch is seen
    /// through one atomic load per chunk.
    generation: u64,
    /// When the current upstream connected. A connection lost sooner than [`STABLE`] after
    /// it opened counts as another failed attempt on its URL, so an origin that keeps
    /// cutting (or ending) right away is left after the retries, not reconnected forever.
    connected_at: Instant,
    /// Consecutive short-lived connections on the current URL.
    short_runs: u32,
    /// The last loss was a timeout: move to the next URL rather than wait on this one again.
    move_on: bool,
    /// The first bytes of a live feed as its origin sent them, up to [`REPLAY_PROBE`].
    first: BytesMut,
    /// Whether `first` is still being recorded (the first connection is open).
    recording: bool,
    /// After a live feed reconnected: the new connection's bytes that so far repeat
    /// `first`, held back until they differ (a live stream) or all of `first` has come
    /// again (a file replayed from byte 0: the feed ends there).
    replay: Option<BytesMut>,
    /// The clean end of a live feed, reported only once the reconnection shows it was not
    /// the end of a file.
    unconfirmed_end: Option<UpstreamError>,
    /// The provider slot the current connection holds, and a future that resolves when
    /// it is taken back (polled only while the body waits, like `switched`).
    slot: Option<SlotGuard>,
    slot_stopped: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Failures to report before anything else, oldest first.
    faults: StampedFaults,
    /// The failure that ends the feed, yielded once the faults before it are out.
    failed: Option<UpstreamError>,
    done: bool,
}

impl DirectFeed {
    /// Continues `res`, the answer of URL `index` to a GET (its connection holding `slot`),
    /// across failures.
    pub fn new(
        upstream: Upstream,
        stream: Arc<StreamEntry>,
        index: usize,
        res: reqwest::Response,
        slot: Option<SlotGuard>,
    ) -> Self {
        let shape = Shape::of_answer(&res);
        let live = matches!(shape, Shape::Live { .. });
        let etag = res.headers().get(header::ETAG).map(|v| (index, v.clone()));
        let switches = stream.subscribe_switches();
        Self {
            upstream,
            index,
            url: stream.settings().url_at(index).clone(),
            body: Some(res.bytes_stream().boxed()),
            shape,
            packets: Packets::default(),
            recording: live,
            first: BytesMut::new(),
            replay: None,
            unconfirmed_end: None,
            etag,
            switched: arm(switches),
            generation: stream.generation(),
            connected_at: Instant::now(),
            short_runs: 0,
            move_on: false,
            slot_stopped: arm_stop(slot.as_ref()),
            slot,
            faults: StampedFaults::default(),
            failed: None,
            done: false,
            stream,
        }
    }

    /// The feed as a stream of chunks; it ends after an `Err` or at the end of a file.
    pub fn into_stream(self) -> BoxStream<'static, Result<Chunk, UpstreamError>> {
        stream::unfold(self, |mut feed| async move {
            let item = feed.next().await?;
            Some((item, feed))
        })
        .boxed()
    }

    async fn next(&mut self) -> Option<Result<Chunk, UpstreamError>> {
        loop {
            if let Some((fault, at)) = self.faults.0.pop_front() {
                return Some(Ok(Chunk::Fault(fault, at)));
            }
            if let Some(e) = self.failed.take() {
                self.done = true;
                return Some(Err(e));
            }
            if self.done {
                return None;
            }
            if self.slot.as_ref().is_some_and(|s| s.stop.is_fired()) {
                // Its provider wants the slot for another stream: close, and end.
                tracing::info!(stream_id = %self.stream.id, "direct upstream stopped for its provider's limit");
                self.drop_upstream();
                self.slot = None;
                self.done = true;
                return Some(Ok(Chunk::Abort(STOPPED_FOR_PROVIDER)));
            }
            let generation = self.stream.generation();
            if generation != self.generation {
                self.generation = generation;
                // Someone switched the stream, or a re-post changed its URLs: follow at
                // once, no failure of ours. A body that cannot be resumed finishes where
                // it is.
                if self.stream.current_url() != (self.index, self.url.clone())
                    && self.shape != Shape::Once
                {
                    self.drop_upstream();
                }
            }
            let Some(body) = self.body.as_mut() else {
                if let Err(e) = self.reconnect().await {
                    self.confirm_end();
                    self.failed = Some(e);
                }
                continue;
            };
            tokio::select! {
                // The body first: while it has bytes, the switch watch is not touched.
                biased;
                chunk = body.next() => match chunk {
                    Some(Ok(bytes)) => {
                        if let Some(out) = self.screen(bytes).and_then(|b| self.take(b)) {
                            return Some(Ok(Chunk::Bytes(out)));
                        }
                    }
                    Some(Err(e)) => self.lost(UpstreamError::from_reqwest(&e)),
                    None => match self.shape {
                        Shape::File { next, last, .. } if next <= last => {
                            self.lost(UpstreamError::EndedEarly)
                        }
                        Shape::Live { .. } if self.replay.as_ref().is_some_and(|h| !h.is_empty()) => {
                            // The reconnection repeated the first bytes, then ended.
                            self.replayed();
                        }
                        Shape::Live { .. } => {
                            let end = self.lose(UpstreamError::LiveEnded);
                            self.unconfirmed_end = Some(end);
                        }
                        _ => return None,
                    },
                },
                switches = &mut self.switched => {
                    // Seen by the generation check above.
                    self.switched = arm(switches);
                }
                // Seen by the slot check above.
                () = &mut self.slot_stopped => {}
            }
        }
    }

    /// Records a live feed's first bytes and, after a reconnection, holds back bytes that
    /// repeat them: `None` while held (or once they proved a replay, which ends the feed).
    fn screen(&mut self, bytes: Bytes) -> Option<Bytes> {
        let Some(held) = self.replay.as_mut() else {
            if self.recording {
                let n = (REPLAY_PROBE - self.first.len()).min(bytes.len());
                self.first.extend_from_slice(&bytes[..n]);
            }
            return Some(bytes);
        };
        let at = held.len();
        let n = (self.first.len() - at).min(bytes.len());
        if bytes[..n] == self.first[at..at + n] {
            if at + n == self.first.len() {
                self.replayed();
            } else {
                held.extend_from_slice(&bytes);
            }
            return None;
        }
        // New bytes: the origin is live, and the end before was a real one.
        let mut held = self.replay.take().expect("comparing");
        if let Some(end) = self.unconfirmed_end.take() {
            self.faults.fault(end);
        }
        if held.is_empty() {
            return Some(bytes);
        }
        held.extend_from_slice(&bytes);
        Some(held.freeze())
    }

    /// The origin started over with the feed's first bytes: what ended was a file, and the
    /// player has all of it. Nothing of the repeat is sent.
    fn replayed(&mut self) {
        tracing::info!(stream_id = %self.stream.id, url_index = self.index, "direct upstream sent its first bytes again: a file that has ended");
        self.unconfirmed_end = None;
        self.replay = None;
        self.drop_upstream();
        self.done = true;
    }

    /// Reports the clean end of a live feed that the reconnection could not prove to be
    /// the end of a file.
    fn confirm_end(&mut self) {
        self.replay = None;
        if let Some(end) = self.unconfirmed_end.take() {
            self.faults.fault(end);
        }
    }

    /// Turns upstream bytes into player bytes for the shape.
    fn take(&mut self, bytes: Bytes) -> Option<Bytes> {
        match &mut self.shape {
            Shape::Once => Some(bytes),
            Shape::File { next, last, .. } => {
                let left = (*last + 1).saturating_sub(*next);
                let bytes = bytes.slice(..bytes.len().min(left as usize));
                *next += bytes.len() as u64;
                (!bytes.is_empty()).then_some(bytes)
            }
            Shape::Live { ts } => {
                let is_ts = *ts.get_or_insert_with(|| {
                    bytes.first() == Some(&TS_SYNC)
                        && bytes.get(TS_PACKET).is_none_or(|b| *b == TS_SYNC)
                });
                if is_ts {
                    self.packets.push(bytes)
                } else {
                    Some(bytes)
                }
            }
        }
    }

    fn drop_upstream(&mut self) {
        self.body = None;
        self.packets.cut();
        self.recording = false;
        if self.replay.is_some() {
            self.confirm_end();
        }
    }

    /// The current upstream failed; the next poll reconnects.
    fn lost(&mut self, error: UpstreamError) {
        let error = self.lose(error);
        self.faults.fault(error);
    }

    /// Drops the current upstream after `error`, and hands the error back to be reported.
    fn lose(&mut self, error: UpstreamError) -> UpstreamError {
        if self.connected_at.elapsed() < STABLE {
            self.short_runs += 1;
        } else {
            self.short_runs = 0;
        }
        self.move_on = !error.retries_on_same_url();
        tracing::info!(stream_id = %self.stream.id, url_index = self.index, error = %error, "direct upstream lost");
        self.drop_upstream();
        error
    }

    /// Opens the stream's current URL (retrying, then failing over under the policy) and
    /// continues from where the player is.
    async fn reconnect(&mut self) -> Result<(), UpstreamError> {
        let policy = self.upstream.failover().clone();
        if self.shape == Shape::Once {
            return Err(UpstreamError::CannotResume);
        }
        if std::mem::take(&mut self.move_on) && self.stream.current_index() == self.index {
            // A single-URL stream (or a capped one) stays and reconnects below.
            let e = UpstreamError::Stalled;
            if policy.switch_after_failure(&self.stream, self.index, &e) {
                self.short_runs = 0;
            }
        }
        if self.short_runs > 0 && self.stream.current_index() == self.index {
            // The last connection failed soon after opening: a retry like any other, then
            // a switch.
            if self.short_runs > policy.settings().retries {
                let e = UpstreamError::KeepsFailing;
                if !policy.switch_after_failure(&self.stream, self.index, &e) {
                    return Err(e);
                }
                self.short_runs = 0;
            } else if self.short_runs > 1 {
                // The first loss reconnects at once; a URL that keeps failing waits.
                tokio::time::sleep(policy.backoff(self.short_runs - 1)).await;
            }
        }
        let settings = self.stream.settings();
        let resume = match self.shape {
            Shape::File { next, last, total } => Some((next, last, total)),
            _ => None,
        };
        let etag = self.etag.clone();
        let upstream = self.upstream.clone();
        // The old connection is closed: its slot goes back before another is taken.
        self.slot = None;
        self.slot_stopped = arm_stop(None);
        let stream_id = self.stream.id.clone();
        let opened = policy
            .run(&self.stream, &mut self.faults, |index, url| {
                let upstream = upstream.clone();
                let settings = settings.clone();
                let etag = etag
                    .as_ref()
                    .filter(|(i, _)| *i == index)
                    .map(|(_, v)| v.clone());
                let holder = Holder {
                    stream_id: Some(stream_id.clone()),
                    kind: "direct",
                };
                async move {
                    // A reconnection never stops another stream to get in.
                    let slot = upstream
                        .providers()
                        .slot(&settings, &url, holder, false)
                        .await?;
                    let res = reopen(&upstream, &url, &settings, resume, etag).await?;
                    Ok((url, res, slot))
                }
            })
            .await;
        let (index, (url, res, slot)) = opened?;
        self.slot_stopped = arm_stop(slot.as_ref());
        self.slot = slot;
        tracing::info!(stream_id = %self.stream.id, url_index = index, "direct upstream reconnected");
        if index != self.index {
            self.short_runs = 0;
        }
        self.index = index;
        self.url = url;
        self.connected_at = Instant::now();
        self.body = Some(res.bytes_stream().boxed());
        if matches!(self.shape, Shape::Live { .. }) && !self.first.is_empty() {
            self.replay = Some(BytesMut::new());
        }
        Ok(())
    }
}

/// A future that resolves when `slot` is taken back; never without a slot.
fn arm_stop(slot: Option<&SlotGuard>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    match slot {
        Some(slot) => Box::pin(slot.stop.fired()),
        None => Box::pin(std::future::pending()),
    }
}

/// A future that resolves with the receiver when the stream next switches URL.
fn arm(
    mut switches: watch::Receiver<u64>,
) -> Pin<Box<dyn Future<Output = watch::Receiver<u64>> + Send>> {
    Box::pin(async move {
        if switches.changed().await.is_err() {
            // The stream is gone; its `closed` token ends the response.
            std::future::pending::<()>().await;
        }
        switches
    })
}

/// Asks `url` for the rest of a direct stream: a live feed from now, or a file from byte
/// `resume.0`. An answer that cannot continue what the player has is an error, so the
/// policy moves on to the next URL.
async fn reopen(
    upstream: &Upstream,
    url: &Url,
    settings: &StreamSettings,
    resume: Option<(u64, u64, u64)>,
    etag: Option<HeaderValue>,
) -> Result<reqwest::Response, UpstreamError> {
    let mut headers = HeaderMap::new();
    if let Some((next, last, _)) = resume {
        let range = HeaderValue::from_str(&format!("bytes={next}-{last}"))
            .expect("digits are a valid header");
        headers.insert(header::RANGE, range);
        if let Some(etag) = etag {
            // Same URL: a changed file answers 200 instead of splicing another file in.
            headers.insert(header::IF_RANGE, etag);
        }
    }
    let res = upstream
        .send(Fetch::Direct, Method::GET, url, settings, &headers)
        .await?;
    check_media_status(&res)?;
    let status = res.status();
    if !status.is_success() {
        // Mid-stream, a 404 from the next URL means "not here", not "stop playing".
        return Err(UpstreamError::ReconnectStatus(status.as_u16()));
    }
    if let Some((next, last, total)) = resume {
        let lines_up = match Shape::of(status, res.headers()) {
            Shape::File {
                next: n,
                last: l,
                total: t,
            } => n == next && l == last && t == total,
            // A whole file is fine when the player had nothing of it yet.
            _ => status == StatusCode::OK && next == 0 && res.content_length() == Some(total),
        };
        if !lines_up {
            return Err(UpstreamError::ResumeMismatch);
        }
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(n: u8) -> Vec<u8> {
        let mut p = vec![n; TS_PACKET];
        p[0] = TS_SYNC;
        p
    }

    #[test]
    fn aligned_chunks_pass_and_split_ones_are_rejoined() {
        let mut p = Packets {
            aligned: true,
            ..Packets::default()
        };
        let two = [packet(1), packet(2)].concat();
        assert_eq!(p.push(Bytes::from(two.clone())).unwrap(), two);
        assert_eq!(p.push(Bytes::copy_from_slice(&two[..100])), None);
        assert_eq!(p.push(Bytes::copy_from_slice(&two[100..])).unwrap(), two);
    }

    #[test]
    fn a_cut_drops_the_partial_packet_and_the_next_feed_starts_on_a_sync() {
        let mut p = Packets {
            aligned: true,
            ..Packets::default()
        };
        let one = packet(1);
        assert_eq!(p.push(Bytes::copy_from_slice(&one[..50])), None);
        p.cut();
        // The new feed starts mid-packet, with a stray 0x47 that is not a sync.
        let mut feed = vec![0x00, TS_SYNC, 0x01];
        feed.extend(packet(7));
        feed.extend(packet(8));
        feed.extend(&packet(9)[..10]);
        let out = p.push(Bytes::from(feed)).unwrap();
        assert_eq!(out, [packet(7), packet(8)].concat());
        assert_eq!(
            p.push(Bytes::copy_from_slice(&packet(9)[10..])).unwrap(),
            packet(9)
        );
    }

    #[test]
    fn only_whole_packets_look_like_ts() {
        let two = [packet(1), packet(2)].concat();
        assert!(looks_like_ts(&two));
        assert!(!looks_like_ts(&two[..200]));
        assert!(!looks_like_ts(&[]));
        let mut off = two.clone();
        off[TS_PACKET] = 0;
        assert!(!looks_like_ts(&off));
    }

    #[test]
    fn garbage_without_sync_is_dropped_while_aligning() {
        let mut p = Packets::default();
        assert_eq!(p.push(Bytes::from(vec![0u8; 1000])), None);
        assert!(p.carry.len() <= TS_PACKET);
    }

    #[test]
    fn shapes_follow_length_ranges_and_content_range() {
        let h = |pairs: &[(header::HeaderName, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(k.clone(), HeaderValue::from_str(v).unwrap());
            }
            m
        };
        assert_eq!(
            Shape::of(StatusCode::OK, &h(&[(header::CONTENT_TYPE, "video/mp2t")])),
            Shape::Live { ts: Some(true) }
        );
        assert_eq!(
            Shape::of(
                StatusCode::OK,
                &h(&[
                    (header::CONTENT_LENGTH, "100"),
                    (header::ACCEPT_RANGES, "bytes")
                ])
            ),
            Shape::File {
                next: 0,
                last: 99,
                total: 100
            }
        );
        assert_eq!(
            Shape::of(StatusCode::OK, &h(&[(header::CONTENT_LENGTH, "100")])),
            Shape::Once
        );
        assert_eq!(
            Shape::of(
                StatusCode::PARTIAL_CONTENT,
                &h(&[(header::CONTENT_RANGE, "bytes 10-19/100")])
            ),
            Shape::File {
                next: 10,
                last: 19,
                total: 100
            }
        );
        // No length: a file's container, or ranges on anything but TS, make a file.
        assert_eq!(
            Shape::of(StatusCode::OK, &h(&[(header::CONTENT_TYPE, "video/mp4")])),
            Shape::Once
        );
        assert_eq!(
            Shape::of(StatusCode::OK, &h(&[(header::ACCEPT_RANGES, "bytes")])),
            Shape::Once
        );
        assert_eq!(
            Shape::of(
                StatusCode::OK,
                &h(&[
                    (header::CONTENT_TYPE, "video/mp2t"),
                    (header::ACCEPT_RANGES, "bytes")
                ])
            ),
            Shape::Live { ts: Some(true) }
        );
        assert_eq!(parse_content_range("bytes 5-1/10"), None);
        assert_eq!(parse_content_range("bytes 0-9/*"), None);
    }

    #[tokio::test]
    async fn flowing_bytes_touch_no_lock_of_the_switch_watch_or_the_slot() {
        let config = crate::config::Config::default();
        let upstream = Upstream::new(&config).unwrap();
        let registry = crate::registry::Registry::new(b"k");
        let (stream, _) = registry.upsert(StreamSettings {
            original_url: Url::parse("http://o/a.ts").unwrap(),
            failover_urls: vec![Url::parse("http://b/a.ts").unwrap()],
            user_agent: None,
            headers: HeaderMap::new(),
            metadata: None,
            stream_type: crate::model::StreamType::Direct,
            provider: None,
            options: Default::default(),
        });
        let chunks = (0..1000u32).map(|_| Ok::<_, std::io::Error>(Bytes::from(packet(1))));
        let answer = axum::http::Response::builder()
            .header(header::CONTENT_LENGTH, (1000 * TS_PACKET).to_string())
            .body(reqwest::Body::wrap_stream(stream::iter(chunks)))
            .unwrap();
        let mut feed = DirectFeed::new(upstream, stream, 0, reqwest::Response::from(answer), None);
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = polls.clone();
        // Stands for the switch watch: counts how often it is looked at.
        feed.switched = Box::pin(futures_util::future::poll_fn(move |_| {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::task::Poll::Pending
        }));
        // And for the provider slot's stop signal, with the same count.
        let counted = polls.clone();
        feed.slot_stopped = Box::pin(futures_util::future::poll_fn(move |_| {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::task::Poll::Pending
        }));
        let mut bytes = 0;
        while let Some(chunk) = feed.next().await {
            match chunk.unwrap() {
                Chunk::Bytes(b) => bytes += b.len(),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(bytes, 1000 * TS_PACKET);
        assert!(
            polls.load(std::sync::atomic::Ordering::Relaxed) <= 2,
            "the watch and the slot's stop were polled {} times",
            polls.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
}
