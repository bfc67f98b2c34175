//! The failover policy: when a failed upstream request is retried on the same URL, when the
//! stream moves to its next URL, and how a playlist reference issued under one URL finds
//! its equivalent under another.
//!
//! A quick failure (refused, reset, 5xx, a page that is not a playlist) is retried on the
//! same URL after a short jittered pause; a timeout is not, because waiting for the same
//! silent origin again only doubles the gap. Then the stream moves down its URL list,
//! wrapping, at most once per URL per request and at most `max_switches_per_minute` times
//! a minute per stream, so a set of dead URLs fails fast instead of spinning. This module
//! decides; it does not count, log or answer players, and it never holds a lock across an
//! `.await`.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use url::Url;

use crate::config::FailoverSettings;
use crate::error::UpstreamError;
use crate::playlist::PlaylistInfo;
use crate::store::StreamEntry;

/// The window of the switch cap.
const SWITCH_WINDOW: Duration = Duration::from_secs(60);

/// Retry and switch decisions for every stream, from [`FailoverSettings`].
#[derive(Debug, Clone, Copy)]
pub struct FailoverPolicy {
    settings: FailoverSettings,
}

impl FailoverPolicy {
    pub fn new(settings: FailoverSettings) -> Self {
        Self { settings }
    }

    pub fn settings(&self) -> &FailoverSettings {
        &self.settings
    }

    /// The pause before retry number `n` (1-based): about `backoff * n`, ±50%.
    pub fn backoff(&self, n: u32) -> Duration {
        let base = self.settings.backoff.saturating_mul(n.max(1));
        base.mul_f64(rand::random_range(0.5..1.5))
    }

    /// Runs `attempt(index, url)` against the stream's current URL, retrying quick failures
    /// there, then moving down the URL list until an attempt succeeds, every URL was tried
    /// once, or the switch cap is reached. Returns the index that answered and its answer.
    ///
    /// Every failure met on the way, except the one returned, goes to `faults` as it happens
    /// (so an event about it carries the time it happened) for the caller to count. A non-retryable error (a 404, say) ends the walk at once: it is
    /// the origin's considered answer, and another URL would not be asked the same question.
    pub async fn run<T, F, Fut>(
        &self,
        stream: &StreamEntry,
        faults: &mut impl Faults,
        mut attempt: F,
    ) -> Result<(usize, T), UpstreamError>
    where
        F: FnMut(usize, Url) -> Fut,
        Fut: Future<Output = Result<T, UpstreamError>>,
    {
        let count = stream.settings().url_count();
        let mut tried = 0;
        loop {
            let (index, url) = stream.current_url();
            let mut retries = 0;
            let error = loop {
                match attempt(index, url.clone()).await {
                    Ok(answer) => return Ok((index, answer)),
                    Err(e) if !e.is_retryable() => return Err(e),
                    Err(e)
                        if retries < self.settings.retries
                            && retries_on_same_url(&e)
                            && stream.current_index() == index =>
                    {
                        retries += 1;
                        faults.fault(e);
                        tokio::time::sleep(self.backoff(retries)).await;
                    }
                    Err(e) => break e,
                }
            };
            tried += 1;
            if tried >= count || !self.switch_after_failure(stream, index, &error) {
                return Err(error);
            }
            faults.fault(error);
        }
    }

    /// Moves the stream off `from` after a failure there. True when the stream is now on
    /// another URL (this call or a concurrent one moved it); false when it has a single URL
    /// or the per-minute cap is reached.
    pub fn switch_after_failure(
        &self,
        stream: &StreamEntry,
        from: usize,
        error: &UpstreamError,
    ) -> bool {
        if stream.current_index() != from {
            return true;
        }
        let now = Instant::now();
        let mut recent = stream.failover.switches.lock().expect("switch log lock");
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= SWITCH_WINDOW)
        {
            recent.pop_front();
        }
        if recent.len() >= self.settings.max_switches_per_minute as usize {
            tracing::warn!(stream_id = %stream.id, "failover cap reached; not switching");
            return false;
        }
        match stream.switch_from(from, &error.to_string()) {
            Some(to) if to != from => {
                recent.push_back(now);
                tracing::info!(stream_id = %stream.id, from, to, error = %error, "failed over");
                true
            }
            _ => false,
        }
    }
}

/// Where [`FailoverPolicy::run`] reports each failure it meets, the moment it meets it.
pub trait Faults {
    fn fault(&mut self, error: UpstreamError);
}

/// Collected, for a caller that reports them later (the direct feed yields them in order).
impl Faults for Vec<UpstreamError> {
    fn fault(&mut self, error: UpstreamError) {
        self.push(error);
    }
}

/// Whether the same URL deserves another try after this error: yes for failures that
/// cost little to retry, no for timeouts, whose retry costs another full timeout.
pub fn retries_on_same_url(e: &UpstreamError) -> bool {
    !matches!(
        e,
        UpstreamError::FirstByteTimeout(_) | UpstreamError::Stalled
    )
}

/// Per-stream failover state, kept in the stream's registry entry.
#[derive(Debug, Default)]
pub struct StreamFailover {
    /// When automatic switches happened, for the per-minute cap.
    switches: Mutex<VecDeque<Instant>>,
    /// What the playlist at each URL index listed when last fetched.
    listings: Mutex<HashMap<usize, Listing>>,
}

/// The playlists a stream URL's playlist lists, in playlist order: enough to find the
/// equivalent of a variant under another URL.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Listing {
    /// The stream's switch generation when this was fetched.
    pub generation: u64,
    /// Variant (and I-frame) playlist URLs; empty for a media playlist.
    pub variants: Vec<String>,
    /// `EXT-X-MEDIA` rendition URLs.
    pub renditions: Vec<String>,
}

impl Listing {
    pub fn new(generation: u64, info: &PlaylistInfo) -> Self {
        Self {
            generation,
            variants: info.variants.clone(),
            renditions: info.renditions.clone(),
        }
    }

    /// A media playlist: the URL itself is the only "variant".
    fn is_media(&self) -> bool {
        self.variants.is_empty() && self.renditions.is_empty()
    }
}

/// Where a playlist reference points under the stream's current URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Equivalent {
    /// Fetch the referenced URL itself.
    Same,
    /// Fetch this playlist listed by the current URL instead.
    Listed(String),
    /// The current URL is itself a media playlist: fetch it.
    StreamUrl,
}

impl StreamFailover {
    /// Remembers what the playlist at URL `index` lists.
    pub fn remember(&self, index: usize, listing: Listing) {
        self.listings
            .lock()
            .expect("listings lock")
            .insert(index, listing);
    }

    /// The listing of URL `index` if it was fetched in `generation`.
    pub fn listing(&self, index: usize, generation: u64) -> Option<Listing> {
        self.listings
            .lock()
            .expect("listings lock")
            .get(&index)
            .filter(|l| l.generation == generation)
            .cloned()
    }

    /// The URL index whose playlist listed `target`, if any did, other than `current`.
    /// `None` when `target` belongs to the current URL or to no known listing (a nested
    /// playlist deeper down, or one from before a restart): it is fetched as it is.
    pub fn listed_elsewhere(&self, target: &str, current: usize) -> Option<Listing> {
        let listings = self.listings.lock().expect("listings lock");
        if listings.get(&current).is_some_and(|l| l.contains(target)) {
            return None;
        }
        listings.values().find(|l| l.contains(target)).cloned()
    }
}

impl Listing {
    fn contains(&self, target: &str) -> bool {
        self.variants
            .iter()
            .chain(&self.renditions)
            .any(|u| u == target)
    }
}

/// The equivalent under `new` of `target`, a playlist that `old` listed: the one at the
/// same position among variants (or renditions), or the last one when `new` lists fewer.
pub fn equivalent(old: &Listing, new: &Listing, target: &str) -> Equivalent {
    if new.is_media() {
        return Equivalent::StreamUrl;
    }
    let pick = |from: &[String], to: &[String]| {
        let at = from.iter().position(|u| u == target)?;
        to.get(at.min(to.len().checked_sub(1)?)).cloned()
    };
    pick(&old.variants, &new.variants)
        .or_else(|| pick(&old.renditions, &new.renditions))
        // A rendition with no counterpart: the first variant still plays.
        .or_else(|| new.variants.first().cloned())
        .map_or(Equivalent::Same, Equivalent::Listed)
}

/// The index of the stream URL whose directory holds `url`, preferring `prefer` when several
/// do (two URLs on one host), and `url`'s path below that directory.
pub fn owner_of<'a>(urls: &[Url], url: &'a Url, prefer: usize) -> Option<(usize, &'a str)> {
    let below = |base: &Url| {
        let path = &base[..url::Position::AfterPath];
        let dir = &path[..path.rfind('/')? + 1];
        url.as_str().strip_prefix(dir)
    };
    if let Some(rest) = urls.get(prefer).and_then(below) {
        return Some((prefer, rest));
    }
    urls.iter()
        .enumerate()
        .find_map(|(i, base)| below(base).map(|rest| (i, rest)))
}

/// Where a mirror at `to` would keep what lies at `rest` below another URL's directory:
/// backups of one channel are often the same files on another host.
pub fn mirrored(to: &Url, rest: &str) -> Option<Url> {
    to.join(rest).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_maps_to_the_same_path_below_the_backup() {
        let urls: Vec<Url> = [
            "http://a/live/ch1/index.m3u8?t=1",
            "http://b:81/mirror/index.m3u8",
        ]
        .iter()
        .map(|u| Url::parse(u).unwrap())
        .collect();
        let seg = Url::parse("http://a/live/ch1/hi/seg7.ts?x=2").unwrap();
        let (owner, rest) = owner_of(&urls, &seg, 1).unwrap();
        assert_eq!((owner, rest), (0, "hi/seg7.ts?x=2"));
        assert_eq!(
            mirrored(&urls[1], rest).unwrap().as_str(),
            "http://b:81/mirror/hi/seg7.ts?x=2"
        );
        let foreign = Url::parse("http://cdn/seg7.ts").unwrap();
        assert_eq!(owner_of(&urls, &foreign, 0), None);
    }

    fn listing(variants: &[&str], renditions: &[&str]) -> Listing {
        Listing {
            generation: 0,
            variants: variants.iter().map(|s| s.to_string()).collect(),
            renditions: renditions.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn variants_map_by_position_and_clamp_to_the_last() {
        let old = listing(&["a/lo", "a/mid", "a/hi"], &["a/en"]);
        let new = listing(&["b/lo", "b/hi"], &["b/en"]);
        let eq = |t| equivalent(&old, &new, t);
        assert_eq!(eq("a/lo"), Equivalent::Listed("b/lo".into()));
        assert_eq!(eq("a/mid"), Equivalent::Listed("b/hi".into()));
        assert_eq!(eq("a/hi"), Equivalent::Listed("b/hi".into()));
        assert_eq!(eq("a/en"), Equivalent::Listed("b/en".into()));
        let bare = listing(&["b/only"], &[]);
        assert_eq!(
            equivalent(&old, &bare, "a/en"),
            Equivalent::Listed("b/only".into())
        );
        assert_eq!(
            equivalent(&old, &listing(&[], &[]), "a/hi"),
            Equivalent::StreamUrl
        );
    }

    #[test]
    fn a_reference_of_the_current_url_or_of_none_is_fetched_as_is() {
        let book = StreamFailover::default();
        book.remember(0, listing(&["a/lo"], &[]));
        book.remember(1, listing(&["b/lo"], &[]));
        assert_eq!(book.listed_elsewhere("a/lo", 0), None);
        assert_eq!(
            book.listed_elsewhere("a/lo", 1),
            Some(listing(&["a/lo"], &[]))
        );
        assert_eq!(book.listed_elsewhere("a/deeper", 1), None);
        assert!(book.listing(1, 0).is_some());
        assert!(book.listing(1, 1).is_none(), "stale after a switch");
    }

    #[test]
    fn backoff_grows_and_is_jittered_within_half() {
        let p = FailoverPolicy::new(FailoverSettings {
            backoff: Duration::from_millis(100),
            ..FailoverSettings::default()
        });
        for n in 1..4u32 {
            let d = p.backoff(n).as_millis() as u32;
            assert!((50 * n..=150 * n).contains(&d), "retry {n}: {d} ms");
        }
    }

    fn stream(urls: usize) -> std::sync::Arc<StreamEntry> {
        let registry = crate::store::Registry::new(b"k");
        let settings = crate::store::StreamSettings {
            original_url: Url::parse("http://o/0").unwrap(),
            failover_urls: (1..urls)
                .map(|i| Url::parse(&format!("http://o/{i}")).unwrap())
                .collect(),
            user_agent: None,
            headers: Default::default(),
            metadata: None,
            stream_type: crate::model::StreamType::Hls,
        };
        registry.upsert(settings).0
    }

    fn policy(retries: u32, cap: u32) -> FailoverPolicy {
        FailoverPolicy::new(FailoverSettings {
            retries,
            backoff: Duration::from_millis(100),
            max_switches_per_minute: cap,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn quick_failures_retry_then_walk_the_list_once() {
        let s = stream(3);
        let mut tried = Vec::new();
        let mut faults = Vec::new();
        let answer = policy(2, 10)
            .run(&s, &mut faults, |index, _| {
                tried.push(index);
                async move {
                    match index {
                        2 => Ok("third"),
                        _ => Err(UpstreamError::Status(503)),
                    }
                }
            })
            .await;
        assert_eq!(answer.unwrap(), (2, "third"));
        assert_eq!(tried, [0, 0, 0, 1, 1, 1, 2]);
        assert_eq!(faults.len(), 6);
        assert_eq!(s.current_index(), 2);

        // Timeouts move on at once; a 404 stops the walk where it is.
        let s = stream(2);
        let mut tried = Vec::new();
        let answer = policy(2, 10)
            .run(&s, &mut Vec::new(), |index, _| {
                tried.push(index);
                async move {
                    match index {
                        0 => Err::<(), _>(UpstreamError::Stalled),
                        _ => Err(UpstreamError::Status(404)),
                    }
                }
            })
            .await;
        assert!(matches!(answer, Err(UpstreamError::Status(404))));
        assert_eq!(tried, [0, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn switches_are_capped_per_minute() {
        let s = stream(2);
        let p = policy(0, 2);
        let dead = || async { Err::<(), _>(UpstreamError::Status(500)) };
        for _ in 0..5 {
            assert!(p.run(&s, &mut Vec::new(), |_, _| dead()).await.is_err());
        }
        assert_eq!(s.generation(), 2, "two switches, then the cap");
        tokio::time::advance(SWITCH_WINDOW).await;
        assert!(p.run(&s, &mut Vec::new(), |_, _| dead()).await.is_err());
        assert_eq!(s.generation(), 3, "a minute later it may switch again");
        assert!(!p.switch_after_failure(&stream(1), 0, &UpstreamError::Stalled));
    }

    #[test]
    fn timeouts_move_on_and_quick_failures_retry() {
        assert!(!retries_on_same_url(&UpstreamError::Stalled));
        assert!(!retries_on_same_url(&UpstreamError::FirstByteTimeout(
            Duration::from_secs(1)
        )));
        assert!(retries_on_same_url(&UpstreamError::Status(503)));
        assert!(retries_on_same_url(&UpstreamError::Connect(
            "refused".into()
        )));
    }
}
