//! The failover policy: when a failed upstream request is retried on the same URL and when
//! the stream moves to its next URL. (What each URL lists, to map a variant across a
//! switch, is kept in [`crate::stream::Listings`]; segments follow a switch in
//! [`super::media`].)
//!
//! A quick failure (refused, reset, 5xx, a page that is not a playlist) is retried on the
//! same URL after a short jittered pause; a timeout is not, because waiting for the same
//! silent origin again only doubles the gap. Then the stream moves down its URL list,
//! wrapping, at most once per URL per request and at most `max_switches_per_minute` times
//! a minute per stream, so a set of dead URLs fails fast instead of spinning. This module
//! decides; it does not count, log or answer players, and it never holds a lock across an
//! `.await`.
//!
//! A stream with a `failover_resolver_url` (m3u-editor's resolver mode) asks it instead of
//! walking a fixed list: the resolver gets `{current_url, metadata, current_failover_index,
//! status_code, reason}` (index -1 for the original URL) and answers `{next_url}`. The URL it
//! names is appended to the stream's list and used; `null`, an error or no answer within
//! [`RESOLVER_TIMEOUT`] ends the walk with the failure met.

use std::future::Future;
use std::time::Duration;

use url::Url;

use crate::config::FailoverSettings;
use crate::error::UpstreamError;
use crate::registry::StreamEntry;
use crate::stream::Switched;

/// How long a failover resolver may take to answer.
pub const RESOLVER_TIMEOUT: Duration = Duration::from_secs(10);

/// Most resolver answers one request follows before it gives up.
pub const MAX_RESOLVES_PER_REQUEST: u32 = 5;

/// Retry and switch decisions for every stream, from [`FailoverSettings`].
#[derive(Debug, Clone)]
pub struct FailoverPolicy {
    settings: FailoverSettings,
    /// The client that asks failover resolvers; without one they are not asked.
    resolver_http: Option<reqwest::Client>,
}

impl FailoverPolicy {
    pub fn new(settings: FailoverSettings) -> Self {
        Self {
            settings,
            resolver_http: None,
        }
    }

    /// Lets the policy ask streams' failover resolvers with `http`.
    pub fn with_resolver_client(mut self, http: reqwest::Client) -> Self {
        self.resolver_http = Some(http);
        self
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
        let resolver = stream.settings().options.failover_resolver_url.clone();
        let mut tried = 0;
        let mut resolved = 0;
        loop {
            let (index, url) = stream.current_url();
            let mut retries = 0;
            let error = loop {
                match attempt(index, url.clone()).await {
                    Ok(answer) => return Ok((index, answer)),
                    // A resolver is told the status and decides for itself.
                    Err(e @ UpstreamError::Status(_)) if resolver.is_some() => break e,
                    Err(e) if !e.is_retryable() => return Err(e),
                    Err(e)
                        if retries < self.settings.retries
                            && e.retries_on_same_url()
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
            if let Some(resolver) = &resolver {
                resolved += 1;
                if resolved > MAX_RESOLVES_PER_REQUEST
                    || !self.resolve(stream, index, &url, resolver, &error).await
                {
                    return Err(error);
                }
                faults.fault(error);
                continue;
            }
            if tried >= count || !self.switch_after_failure(stream, index, &error) {
                return Err(error);
            }
            faults.fault(error);
        }
    }

    /// Asks the stream's resolver for the URL after `url` (at `from`) and moves the stream
    /// there. True when the stream is now on another URL.
    async fn resolve(
        &self,
        stream: &StreamEntry,
        from: usize,
        url: &Url,
        resolver: &Url,
        error: &UpstreamError,
    ) -> bool {
        if stream.current_index() != from {
            return true;
        }
        let Some(http) = &self.resolver_http else {
            return false;
        };
        let body = serde_json::json!({
            "current_url": url.as_str(),
            "metadata": stream.settings().metadata.as_ref().map_or_else(|| serde_json::json!({}), crate::stream::Metadata::value),
            "current_failover_index": from as i64 - 1,
            "status_code": match error {
                UpstreamError::Status(code) => Some(*code),
                _ => None,
            },
            "reason": error.to_string(),
        });
        let next = match ask_resolver(http, resolver, &body).await {
            Ok(Some(next)) => next,
            Ok(None) => {
                tracing::info!(stream_id = %stream.id, "failover resolver has no next URL");
                return false;
            }
            Err(why) => {
                tracing::warn!(stream_id = %stream.id, error = %why, "failover resolver failed");
                return false;
            }
        };
        let to = stream.add_resolved_url(next);
        let cap = self.settings.max_switches_per_minute;
        match stream.switch_to(from, to, &error.to_string(), Some(cap)) {
            Switched::Moved { .. } => {
                tracing::info!(stream_id = %stream.id, from, to, error = %error, "failed over to the resolver's URL");
                true
            }
            Switched::Followed(now) => now != from,
            Switched::Capped | Switched::Single => false,
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
        let cap = self.settings.max_switches_per_minute;
        match stream.switch(from, &error.to_string(), Some(cap)) {
            Switched::Moved { to, .. } => {
                tracing::info!(stream_id = %stream.id, from, to, error = %error, "failed over");
                true
            }
            Switched::Followed(to) => to != from,
            Switched::Capped => {
                tracing::warn!(stream_id = %stream.id, "failover cap reached; not switching");
                false
            }
            Switched::Single => false,
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

/// One resolver call: `Ok(None)` for `{"next_url": null}`.
async fn ask_resolver(
    http: &reqwest::Client,
    resolver: &Url,
    body: &serde_json::Value,
) -> Result<Option<Url>, String> {
    let res = http
        .post(resolver.clone())
        .timeout(RESOLVER_TIMEOUT)
        .json(body)
        .send()
        .await
        .map_err(|e| UpstreamError::from_reqwest(&e).to_string())?;
    if !res.status().is_success() {
        return Err(format!("resolver answered {}", res.status()));
    }
    let answer: serde_json::Value = res.json().await.map_err(|e| e.to_string())?;
    match answer.get("next_url") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(serde_json::Value::String(s)) => {
            let url = Url::parse(s.trim()).map_err(|e| format!("next_url {s:?}: {e}"))?;
            if matches!(url.scheme(), "http" | "https") {
                Ok(Some(url))
            } else {
                Err(format!("next_url {s:?} is not http(s)"))
            }
        }
        Some(other) => Err(format!("next_url is not a string: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let registry = crate::registry::Registry::new(b"k");
        let settings = crate::stream::StreamSettings {
            original_url: Url::parse("http://o/0").unwrap(),
            failover_urls: (1..urls)
                .map(|i| Url::parse(&format!("http://o/{i}")).unwrap())
                .collect(),
            user_agent: None,
            headers: Default::default(),
            metadata: None,
            stream_type: crate::model::StreamType::Hls,
            provider: None,
            options: Default::default(),
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
        tokio::time::advance(crate::stream::SWITCH_WINDOW).await;
        assert!(p.run(&s, &mut Vec::new(), |_, _| dead()).await.is_err());
        assert_eq!(s.generation(), 3, "a minute later it may switch again");
        assert!(!p.switch_after_failure(&stream(1), 0, &UpstreamError::Stalled));
    }
}
