//! Talking to origins: one shared HTTP client with timeouts that suit streaming, and the
//! checks that turn an origin's answer into bytes a player can use or an [`UpstreamError`].
//!
//! Connect and first-byte waits are bounded, a silent body counts as stalled after
//! `read_stall`, and media bodies have no total deadline. Playlists are read whole, with a
//! size limit and a deadline, and must look like playlists. This module knows nothing of
//! players, counters or routes.
//!
//! [`failover`] decides when to retry a URL and when to move down a stream's URL list;
//! [`direct`] keeps a direct stream's bytes flowing across those moves. Direct streams
//! ([`Fetch::Direct`]) go through [`feed`]'s client, whose connections read in small
//! pieces; everything else through the shared reqwest client. When the environment names
//! an outgoing proxy (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`), which reqwest honours and
//! the feed client does not, direct streams stay on reqwest too.

pub mod direct;
pub mod failover;
pub mod feed;
pub mod media;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method};
use bytes::BytesMut;
use futures_util::StreamExt;
use url::Url;

use crate::config::{Config, UpstreamTimeouts};
use crate::error::UpstreamError;
use crate::metrics::Histogram;
use crate::providers::{Holder, Providers};
use crate::stream::StreamSettings;

use self::failover::FailoverPolicy;

/// The user agent sent upstream when a stream does not name one.
pub const DEFAULT_USER_AGENT: &str = concat!("m3u-proxy/", env!("CARGO_PKG_VERSION"));

/// Request headers of the player that are relayed upstream: the ones that select bytes or
/// validate a cache. Everything else (cookies, the player's own user agent) stays here.
pub const RELAYED_REQUEST_HEADERS: [HeaderName; 4] = [
    header::RANGE,
    header::IF_RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
];

/// What an upstream request is for; upstream latency is measured per purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    Playlist,
    Media,
    Key,
    Direct,
    /// Learning a new stream's type; not measured.
    Probe,
}

impl Fetch {
    /// The measured purposes, in the order of [`Upstream::latency`].
    pub const MEASURED: [Fetch; 4] = [Fetch::Playlist, Fetch::Media, Fetch::Key, Fetch::Direct];

    pub fn as_str(self) -> &'static str {
        match self {
            Fetch::Playlist => "playlist",
            Fetch::Media => "media",
            Fetch::Key => "key",
            Fetch::Direct => "direct",
            Fetch::Probe => "probe",
        }
    }

    fn slot(self) -> Option<usize> {
        Fetch::MEASURED.iter().position(|f| *f == self)
    }
}

/// The shared upstream client.
#[derive(Debug, Clone)]
pub struct Upstream {
    http: reqwest::Client,
    /// The client of [`Fetch::Direct`] requests; `None` behind an outgoing proxy.
    feed: Option<feed::FeedClient>,
    timeouts: UpstreamTimeouts,
    max_playlist_bytes: usize,
    failover: FailoverPolicy,
    /// Time to response headers, per [`Fetch::MEASURED`] purpose.
    latency: Arc<[Histogram; 4]>,
    /// The connection limits of providers: every upstream connection takes a slot first.
    providers: Arc<Providers>,
}

/// A playlist as fetched: its text and the URL it came from after redirects, which is the
/// base its relative URIs resolve against.
#[derive(Debug, Clone)]
pub struct FetchedPlaylist {
    pub final_url: Url,
    pub text: String,
}

impl Upstream {
    pub fn new(config: &Config) -> Result<Self, UpstreamError> {
        let t = config.upstream;
        let http = reqwest::Client::builder()
            .connect_timeout(t.connect)
            .read_timeout(t.read_stall)
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::limited(10))
            .build()
            .map_err(|e| UpstreamError::Client(e.to_string()))?;
        let failover = FailoverPolicy::new(config.failover).with_resolver_client(http.clone());
        Ok(Self {
            http,
            feed: if feed::system_proxy(|name| std::env::var(name).ok()) {
                tracing::info!("an outgoing proxy is set: direct streams use the shared client");
                None
            } else {
                Some(feed::FeedClient::new(&t)?)
            },
            timeouts: t,
            max_playlist_bytes: config.max_playlist_bytes,
            failover,
            latency: Arc::new(std::array::from_fn(|_| Histogram::latency())),
            providers: Arc::default(),
        })
    }

    /// This client with the proxy's providers (which announce through its registry).
    pub fn with_providers(mut self, providers: Arc<Providers>) -> Self {
        self.providers = providers;
        self
    }

    /// The providers whose slots every upstream connection takes.
    pub fn providers(&self) -> &Arc<Providers> {
        &self.providers
    }

    /// The underlying client, for callers that need plain HTTP (webhooks, probes).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// When to retry and when to switch URL.
    pub fn failover(&self) -> &FailoverPolicy {
        &self.failover
    }

    /// The latency histogram of a measured purpose.
    pub fn latency(&self, fetch: Fetch) -> Option<&Histogram> {
        fetch.slot().map(|i| &self.latency[i])
    }

    /// Sends a request with the stream's user agent and headers plus the relayed player
    /// headers, and waits at most `first_byte` for the response head. The status is not
    /// judged here.
    pub async fn send(
        &self,
        fetch: Fetch,
        method: Method,
        url: &Url,
        settings: &StreamSettings,
        player_headers: &HeaderMap,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut headers = settings.headers.clone();
        let ua = settings.user_agent.as_deref().unwrap_or(DEFAULT_USER_AGENT);
        if let Ok(v) = HeaderValue::from_str(ua) {
            headers.insert(header::USER_AGENT, v);
        }
        for name in RELAYED_REQUEST_HEADERS {
            if let Some(v) = player_headers.get(&name) {
                headers.insert(name, v.clone());
            }
        }
        let request = async {
            if let (Fetch::Direct, Some(feed)) = (fetch, &self.feed) {
                return feed.send(method, url, headers).await;
            }
            match self
                .http
                .request(method, url.clone())
                .headers(headers)
                .send()
                .await
            {
                Ok(res) => Ok(res),
                Err(e) if e.is_timeout() => {
                    Err(UpstreamError::FirstByteTimeout(self.timeouts.first_byte))
                }
                Err(e) => Err(UpstreamError::from_reqwest(&e)),
            }
        };
        let started = tokio::time::Instant::now();
        let result = tokio::time::timeout(self.timeouts.first_byte, request)
            .await
            .unwrap_or(Err(UpstreamError::FirstByteTimeout(
                self.timeouts.first_byte,
            )));
        if let (Ok(_), Some(h)) = (&result, self.latency(fetch)) {
            h.observe_duration(started.elapsed());
        }
        result
    }

    /// Fetches a playlist whole: a success status, at most `max_playlist_bytes`, within the
    /// playlist deadline, and text that is a playlist (an HTML error page with status 200
    /// is an error, not a playlist).
    pub async fn fetch_playlist(
        &self,
        url: &Url,
        settings: &StreamSettings,
    ) -> Result<FetchedPlaylist, UpstreamError> {
        let deadline = self.timeouts.playlist_total;
        // Whether the head arrived before the deadline: if not, the origin never answered,
        // which is not the same as a body that stopped coming.
        let answered = std::sync::atomic::AtomicBool::new(false);
        let fetch = async {
            let res = self
                .send(
                    Fetch::Playlist,
                    Method::GET,
                    url,
                    settings,
                    &HeaderMap::new(),
                )
                .await?;
            answered.store(true, std::sync::atomic::Ordering::Relaxed);
            let status = res.status();
            if !status.is_success() {
                return Err(UpstreamError::Status(status.as_u16()));
            }
            let final_url = res.url().clone();
            if res
                .content_length()
                .is_some_and(|n| n > self.max_playlist_bytes as u64)
            {
                return Err(UpstreamError::TooLarge(self.max_playlist_bytes));
            }
            let mut body = BytesMut::new();
            let mut chunks = res.bytes_stream();
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|e| UpstreamError::from_reqwest(&e))?;
                if body.len() + chunk.len() > self.max_playlist_bytes {
                    return Err(UpstreamError::TooLarge(self.max_playlist_bytes));
                }
                body.extend_from_slice(&chunk);
            }
            let text = String::from_utf8_lossy(&body).into_owned();
            if !crate::playlist::looks_like_playlist(&text) {
                return Err(UpstreamError::NotPlaylist(describe_non_playlist(&text)));
            }
            Ok(FetchedPlaylist { final_url, text })
        };
        match tokio::time::timeout(deadline, fetch).await {
            Ok(result) => result,
            Err(_) if !answered.load(std::sync::atomic::Ordering::Relaxed) => {
                Err(UpstreamError::FirstByteTimeout(deadline))
            }
            Err(_) => Err(UpstreamError::Stalled),
        }
    }
}

impl Upstream {
    /// Asks the origin what a URL is: `Some(true)` for an HLS playlist (by content type or
    /// a `#EXTM3U` sniff of the first bytes), `Some(false)` for anything else it serves,
    /// `None` when it cannot tell within a few seconds.
    /// A probe takes a slot of the URL's provider like any connection, and is skipped
    /// (`None`) when the provider is full.
    pub async fn probe_is_playlist(&self, url: &Url, settings: &StreamSettings) -> Option<bool> {
        let holder = Holder {
            stream_id: None,
            kind: "probe",
        };
        let _slot = self
            .providers
            .slot(settings, url, holder, false)
            .await
            .ok()?;
        let probe = async {
            let res = self
                .send(Fetch::Probe, Method::GET, url, settings, &HeaderMap::new())
                .await
                .ok()?;
            if !res.status().is_success() {
                return None;
            }
            let ct = res
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_ascii_lowercase();
            if ct.contains("mpegurl") {
                return Some(true);
            }
            if ct.starts_with("video/") || ct.starts_with("audio/") {
                return Some(false);
            }
            let mut chunks = res.bytes_stream();
            let first = chunks.next().await?.ok()?;
            Some(crate::playlist::looks_like_playlist(
                &String::from_utf8_lossy(&first),
            ))
        };
        tokio::time::timeout(PROBE_TIMEOUT, probe)
            .await
            .ok()
            .flatten()
    }
}

/// How long `POST /streams` waits to learn a stream's type from its origin.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Names what an origin sent instead of a playlist, for the error a player or operator sees.
fn describe_non_playlist(text: &str) -> &'static str {
    let head = text.trim_start().get(..64).unwrap_or(text.trim_start());
    let lower = head.to_ascii_lowercase();
    if lower.starts_with("<!doctype html") || lower.starts_with("<html") || lower.contains("<head")
    {
        "an HTML page"
    } else if text.trim().is_empty() {
        "an empty body"
    } else {
        "data that is not a playlist"
    }
}

/// Judges an origin's answer to a media request before any byte is relayed: a 5xx, or an
/// HTML page where media was asked for, is a failure another attempt may cure.
pub fn check_media_status(res: &reqwest::Response) -> Result<(), UpstreamError> {
    let status = res.status();
    if status.is_server_error() {
        return Err(UpstreamError::Status(status.as_u16()));
    }
    if status.is_success() && is_html(res.headers()) {
        return Err(UpstreamError::NotMedia("an HTML page"));
    }
    Ok(())
}

/// The lowercased extension of a URL's last path segment (`seg1.TS?x=1` → `ts`), which
/// names a stream's type and a media default content type.
pub fn extension_of(url: &Url) -> Option<String> {
    url.path()
        .rsplit('/')
        .next()
        .and_then(|name| name.rsplit_once('.'))
        .map(|(_, ext)| ext.to_ascii_lowercase())
}

/// Whether a response head says its body is an HTML page, which no media request wants.
pub fn is_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/html")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_came_instead_of_a_playlist() {
        assert_eq!(
            describe_non_playlist("<!DOCTYPE html><html>"),
            "an HTML page"
        );
        assert_eq!(describe_non_playlist("  \n"), "an empty body");
        assert_eq!(
            describe_non_playlist("\u{0}\u{1}binary"),
            "data that is not a playlist"
        );
    }

    #[test]
    fn html_content_types_are_recognised() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        assert!(is_html(&h));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp2t"));
        assert!(!is_html(&h));
    }
}
