//! The request-level workloads: flat-out GETs at a concurrency, one-at-a-time latency,
//! direct-stream viewers (paced to a bitrate or flat out) and Range readers, plus the
//! `fetch` step every workload shares. Each worker owns one connection and its own
//! `Stats`; nothing is shared on the hot path but the clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use tokio::time::{sleep_until, Instant};
use url::Url;

use crate::http::{Conn, Origin};
use crate::stats::{Kind, Stats};

/// Buffer for connections that move bulk bytes: fewer, larger reads.
const BULK_BUFFER: usize = 64 * 1024;

/// One GET, body drained (into `keep` when given); counted in `stats` under `kind`.
/// Returns the body size, or `None` after recording an error (non-2xx counts as one).
pub async fn fetch(
    conn: &mut Conn,
    url: &Url,
    kind: Kind,
    keep: Option<&mut Vec<u8>>,
    stats: &mut Stats,
) -> Option<u64> {
    let start = Instant::now();
    let head = match conn.send(url, None).await {
        Ok(head) => head,
        Err(e) => {
            stats.error(kind, e);
            return None;
        }
    };
    if !(200..300).contains(&head.status) {
        stats.error(kind, format!("HTTP {} from {url}", head.status));
        if conn.finish(None).await.is_err() {
            conn.reset();
        }
        return None;
    }
    match conn.finish(keep).await {
        Ok(n) => {
            if head.content_length.is_some_and(|len| len != n) {
                stats.error(
                    kind,
                    format!("{n} body bytes, Content-Length said otherwise"),
                );
                return None;
            }
            stats.record(kind, head.ttfb, start.elapsed(), n);
            Some(n)
        }
        Err(e) => {
            stats.error(kind, e);
            None
        }
    }
}

/// Runs `workers` copies of a worker and merges what they measured.
pub async fn run_workers<F, Fut>(workers: u64, make: F) -> Stats
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = Stats> + Send + 'static,
{
    let handles: Vec<_> = (0..workers).map(|i| tokio::spawn(make(i))).collect();
    let mut total = Stats::default();
    for handle in handles {
        match handle.await {
            Ok(stats) => total.merge(stats),
            Err(e) => total.error(Kind::Segment, anyhow!("worker panicked: {e}")),
        }
    }
    total
}

/// `concurrency` connections each requesting `url` back to back until `deadline`.
pub async fn get(url: Url, kind: Kind, concurrency: u64, deadline: Instant) -> Result<Stats> {
    let origin = Origin::of(&url)?;
    let url = Arc::new(url);
    Ok(run_workers(concurrency, |_| {
        let (origin, url) = (origin.clone(), url.clone());
        async move {
            let mut stats = Stats::default();
            let mut conn = Conn::new(origin, BULK_BUFFER);
            while Instant::now() < deadline {
                if fetch(&mut conn, &url, kind, None, &mut stats)
                    .await
                    .is_none()
                {
                    // Failing fast must not turn into a busy loop.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            stats
        }
    })
    .await)
}

/// One connection, `requests` sequential requests after a short warm-up.
pub async fn latency(url: Url, kind: Kind, requests: u64, warmup: u64) -> Result<Stats> {
    let mut conn = Conn::new(Origin::of(&url)?, BULK_BUFFER);
    let mut discard = Stats::default();
    for _ in 0..warmup {
        fetch(&mut conn, &url, kind, None, &mut discard).await;
    }
    let mut stats = Stats::default();
    for sample in discard.error_samples {
        stats.error(kind, format!("warm-up: {sample}"));
    }
    for _ in 0..requests {
        fetch(&mut conn, &url, kind, None, &mut stats).await;
    }
    Ok(stats)
}

/// How a direct viewer consumes: a player at `bitrate` bits/s keeping at most `ahead`
/// seconds buffered, or flat out.
#[derive(Clone, Copy)]
pub struct Pace {
    pub bitrate: Option<u64>,
    pub ahead: f64,
}

/// `viewers` connections reading `url` until `deadline`, re-requesting when a body ends
/// (a file); viewers start spread over `ramp`.
pub async fn direct(
    url: Url,
    viewers: u64,
    pace: Pace,
    ramp: Duration,
    deadline: Instant,
) -> Result<Stats> {
    let origin = Origin::of(&url)?;
    let t0 = Instant::now();
    Ok(run_workers(viewers, |i| {
        let origin = origin.clone();
        let url = Arc::new(crate::hls::with_client_id(&url, i));
        let start_at = t0 + ramp.mul_f64(i as f64 / viewers.max(1) as f64);
        direct_viewer(origin, url, pace, start_at, deadline)
    })
    .await)
}

async fn direct_viewer(
    origin: Origin,
    url: Arc<Url>,
    pace: Pace,
    start_at: Instant,
    deadline: Instant,
) -> Stats {
    let mut stats = Stats::default();
    sleep_until(start_at).await;
    let started = Instant::now();
    let mut conn = Conn::new(origin, BULK_BUFFER);
    let byte_rate = pace.bitrate.map(|b| b as f64 / 8.0);
    let mut received = 0u64;
    // The instant media time 0 was (or would have been) on screen; None before playback.
    let mut play_start: Option<Instant> = None;
    'requests: while Instant::now() < deadline {
        let start = Instant::now();
        let head = match conn.send(&url, None).await {
            Ok(head) if (200..300).contains(&head.status) => head,
            Ok(head) => {
                stats.error(Kind::Direct, format!("HTTP {} from {url}", head.status));
                conn.reset();
                sleep_until((Instant::now() + Duration::from_millis(250)).min(deadline)).await;
                continue;
            }
            Err(e) => {
                stats.error(Kind::Direct, e);
                sleep_until((Instant::now() + Duration::from_millis(250)).min(deadline)).await;
                continue;
            }
        };
        let mut cut = false;
        loop {
            if Instant::now() >= deadline {
                cut = true;
                break;
            }
            if let (Some(rate), Some(ps)) = (byte_rate, play_start) {
                let buffered_until = ps + Duration::from_secs_f64(received as f64 / rate);
                if let Some(wait_until) =
                    buffered_until.checked_sub(Duration::from_secs_f64(pace.ahead))
                {
                    if wait_until > Instant::now() {
                        sleep_until(wait_until.min(deadline)).await;
                        continue;
                    }
                }
            }
            let n = match conn.read_body(None).await {
                Ok(0) => break,
                Ok(n) => n as u64,
                Err(e) => {
                    stats.error(Kind::Direct, e);
                    continue 'requests;
                }
            };
            if received == 0 {
                stats
                    .startup_us
                    .push(crate::stats::micros(started.elapsed()));
            }
            received += n;
            stats.kind(Kind::Direct).bytes += n;
            if let Some(rate) = byte_rate {
                let now = Instant::now();
                let media = Duration::from_secs_f64(received as f64 / rate);
                match play_start {
                    // Playback starts once one second of media is in.
                    None if media >= Duration::from_secs(1) => {
                        play_start = Some(now - media + Duration::from_secs(1))
                    }
                    None => {}
                    Some(ps) if now > ps + media => {
                        // The playhead caught up with the bytes: it waited until now.
                        stats.stalls += 1;
                        stats.stall_time += now - (ps + media);
                        play_start = Some(now - media);
                    }
                    Some(_) => {}
                }
            }
        }
        // Bytes were counted as they came; this adds the request and its timings.
        stats.record(Kind::Direct, head.ttfb, start.elapsed(), 0);
        if cut {
            conn.reset();
        }
    }
    stats
}

/// `requests` random `chunk`-byte Range reads of `url` over `concurrency` connections,
/// each checked for 206, the exact Content-Range and the body length.
pub async fn range(url: Url, concurrency: u64, requests: u64, chunk: u64) -> Result<Stats> {
    let origin = Origin::of(&url)?;
    let mut probe = Conn::new(origin.clone(), BULK_BUFFER);
    let head = probe.send(&url, Some("bytes=0-0")).await?;
    probe.finish(None).await?;
    let size: u64 = head
        .content_range
        .as_deref()
        .and_then(|cr| cr.rsplit('/').next())
        .and_then(|total| total.parse().ok())
        .ok_or_else(|| {
            anyhow!(
                "{url} answered bytes=0-0 with {} and no Content-Range total",
                head.status
            )
        })?;
    let chunk = chunk.clamp(1, size);
    let left = Arc::new(AtomicU64::new(requests));
    let url = Arc::new(url);
    Ok(run_workers(concurrency, |i| {
        let (origin, url, left) = (origin.clone(), url.clone(), left.clone());
        async move {
            let mut stats = Stats::default();
            let mut conn = Conn::new(origin, BULK_BUFFER);
            let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ (i + 1));
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let start_byte = rng.next() % (size - chunk + 1);
                let end = start_byte + chunk - 1;
                let t = Instant::now();
                let header = format!("bytes={start_byte}-{end}");
                let result = async {
                    let head = conn.send(&url, Some(&header)).await?;
                    let n = conn.finish(None).await?;
                    let expected = format!("bytes {start_byte}-{end}/{size}");
                    if head.status != 206 || head.content_range.as_deref() != Some(&expected) {
                        return Err(anyhow!(
                            "{header}: got {} {:?}, expected 206 {expected:?}",
                            head.status,
                            head.content_range
                        ));
                    }
                    if n != chunk {
                        return Err(anyhow!("{header}: {n} body bytes"));
                    }
                    Ok((head.ttfb, n))
                }
                .await;
                match result {
                    Ok((ttfb, n)) => stats.record(Kind::Range, ttfb, t.elapsed(), n),
                    Err(e) => {
                        conn.reset();
                        stats.error(Kind::Range, e);
                    }
                }
            }
            stats
        }
    })
    .await)
}

/// A tiny PRNG: Range offsets need spread, not quality, and no shared state.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
