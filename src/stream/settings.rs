//! A stream's settings, as `POST /streams` gave them.

use axum::http::HeaderMap;
use url::Url;

use crate::model::StreamType;

/// The settings of a stream, replaced as a whole when the stream is posted again.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub original_url: Url,
    pub failover_urls: Vec<Url>,
    pub user_agent: Option<String>,
    /// Extra headers sent upstream; values may be secrets and are never reported.
    pub headers: HeaderMap,
    pub metadata: Option<Metadata>,
    pub stream_type: StreamType,
    /// The provider (connection-limited account) this stream belongs to, by name.
    pub provider: Option<String>,
    /// m3u-editor's per-stream options.
    pub options: StreamOptions,
}

/// A stream's metadata (any JSON value, an object in practice), kept as its compact JSON
/// text: a parsed six-key object costs about 1 kB (a tree node and a string per key and
/// value), its text about 150 bytes, and a channel list registers tens of thousands of
/// streams whose metadata is read only for events, filters and reports.
#[derive(Clone, PartialEq, Eq)]
pub struct Metadata(Box<str>);

impl Metadata {
    pub fn new(value: &serde_json::Value) -> Self {
        Self(value.to_string().into_boxed_str())
    }

    /// The value, parsed again.
    pub fn value(&self) -> serde_json::Value {
        // The text was written from a value, so it parses.
        serde_json::from_str(&self.0).unwrap_or_default()
    }

    /// The member `key` of an object's metadata.
    pub fn get(&self, key: &str) -> Option<serde_json::Value> {
        match self.value() {
            serde_json::Value::Object(mut map) => map.remove(key),
            _ => None,
        }
    }

    /// The compact JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<serde_json::Value> for Metadata {
    fn from(value: serde_json::Value) -> Self {
        Self::new(&value)
    }
}

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Per-stream options m3u-editor sets; all off by default.
#[derive(Debug, Clone, Default)]
pub struct StreamOptions {
    /// Asked for the next URL (`{current_url, metadata, current_failover_index,
    /// status_code, reason}` → `{next_url}`) when the last URL of the list fails.
    pub failover_resolver_url: Option<Url>,
    /// Live TS for Kodi: ignore a player's Range, answer HEAD at once.
    pub strict_live_ts: bool,
    /// Refresh the playlist at the URL the origin redirected to, until it fails.
    pub use_sticky_session: bool,
}

impl StreamSettings {
    /// `[original_url, failover_urls...]`, the list failover walks.
    pub fn urls(&self) -> impl Iterator<Item = &Url> {
        std::iter::once(&self.original_url).chain(self.failover_urls.iter())
    }

    pub fn url_count(&self) -> usize {
        1 + self.failover_urls.len()
    }

    pub fn url_at(&self, index: usize) -> &Url {
        match index % self.url_count() {
            0 => &self.original_url,
            i => &self.failover_urls[i - 1],
        }
    }
}

/// Request headers a caller (or a channel list) may not set for the upstream: they describe
/// the connection, which is ours to manage.
pub const FORBIDDEN_UPSTREAM_HEADERS: [&str; 7] = [
    "host",
    "content-length",
    "connection",
    "transfer-encoding",
    "upgrade",
    "keep-alive",
    "te",
];

/// Why a URL cannot be an upstream: the API's error code and what to tell the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadUpstreamUrl {
    pub code: &'static str,
    pub detail: String,
}

/// An absolute http(s) URL with a host: the only kind of upstream the proxy fetches.
/// `field` names the input in the message.
pub fn upstream_url(field: &str, raw: &str) -> Result<Url, BadUpstreamUrl> {
    let bad = |code, detail| BadUpstreamUrl { code, detail };
    let url = Url::parse(raw.trim()).map_err(|e| {
        bad(
            "invalid_url",
            format!("{field}: not a valid URL ({e}): {raw}"),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(
            "unsupported_scheme",
            format!(
                "{field}: only http and https URLs can be proxied, not {}:",
                url.scheme()
            ),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad(
            "invalid_url",
            format!("{field}: the URL has no host: {raw}"),
        ));
    }
    Ok(url)
}
