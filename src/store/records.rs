//! The documents of each kind, and putting them back at start-up ([`restore`]).

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use url::Url;

use super::{CounterSet, Kind, Loaded};
use crate::events::{WebhookRecord, Webhooks};
use crate::model::StreamType;
use crate::registry::{Registry, RestoredStream, Stored, StreamEntry};
use crate::stream::{Metadata, StreamOptions, StreamSettings};

/// A stream as stored (kind `stream`, keyed by its id): what `POST /streams` gave, with
/// header values (they may be tokens: the database file is mode 0600), and where failover
/// stands. Counters are stored apart, as increments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamRecord {
    pub original_url: String,
    #[serde(default)]
    pub failover_urls: Vec<String>,
    #[serde(default)]
    pub user_agent: Option<String>,
    /// Name and value pairs, in order.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    pub stream_type: StreamType,
    /// The provider named in `POST /streams`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default)]
    pub failover_resolver_url: Option<String>,
    #[serde(default)]
    pub strict_live_ts: bool,
    #[serde(default)]
    pub use_sticky_session: bool,
    pub created_at: DateTime<Utc>,
    /// Index of the URL in use in `[original_url, failover_urls...]`.
    #[serde(default)]
    pub failover_index: usize,
    /// Changes of URL or URL list so far (see `StreamEntry::generation`).
    #[serde(default)]
    pub generation: u64,
}

impl StreamRecord {
    /// The stream as it is now.
    pub fn of(entry: &StreamEntry) -> StreamRecord {
        let generation = entry.generation();
        let s = entry.settings();
        StreamRecord {
            original_url: s.original_url.to_string(),
            failover_urls: s.failover_urls.iter().map(Url::to_string).collect(),
            user_agent: s.user_agent.clone(),
            headers: s
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            metadata: s.metadata.as_ref().map(Metadata::value),
            stream_type: s.stream_type,
            provider: s.provider.clone(),
            failover_resolver_url: s.options.failover_resolver_url.as_ref().map(Url::to_string),
            strict_live_ts: s.options.strict_live_ts,
            use_sticky_session: s.options.use_sticky_session,
            created_at: entry.created_at,
            failover_index: entry.current_index(),
            generation,
        }
    }

    /// The settings back, checked as `POST /streams` checked them.
    pub fn settings(&self) -> Result<StreamSettings, String> {
        let url = |raw: &str| Url::parse(raw).map_err(|e| format!("{raw}: {e}"));
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let name =
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("{name}: {e}"))?;
            let value = HeaderValue::from_str(value).map_err(|e| format!("{name}: {e}"))?;
            headers.append(name, value);
        }
        Ok(StreamSettings {
            original_url: url(&self.original_url)?,
            failover_urls: self
                .failover_urls
                .iter()
                .map(|u| url(u))
                .collect::<Result<_, _>>()?,
            user_agent: self.user_agent.clone(),
            headers,
            metadata: self.metadata.as_ref().map(Metadata::new),
            stream_type: self.stream_type,
            provider: self.provider.clone(),
            options: StreamOptions {
                failover_resolver_url: self
                    .failover_resolver_url
                    .as_deref()
                    .map(url)
                    .transpose()?,
                strict_live_ts: self.strict_live_ts,
                use_sticky_session: self.use_sticky_session,
            },
        })
    }
}

/// What [`restore`] put back.
#[derive(Debug, Default)]
pub struct Restored {
    pub streams: usize,
    pub webhooks: usize,
    /// Documents that could not be read back (each logged).
    pub skipped: usize,
    /// Providers and channel lists, for their modules to take (issues 13 and 15).
    pub providers: Vec<(String, serde_json::Value)>,
    pub channel_lists: Vec<(String, serde_json::Value)>,
    /// Counters stored without a stream document: the channel lists' streams', which the
    /// lists register again.
    pub listed_counters: std::collections::HashMap<String, [u64; 4]>,
}

/// Puts streams (with their position and counters), the proxy totals and webhooks back,
/// before the listener opens. A document that cannot be read is logged and skipped: one
/// bad row never stops the rest from coming back. Each document is read where it lies
/// (not copied first) and dropped once its stream is back, so 100,000 stored streams are
/// never held twice.
pub fn restore(mut loaded: Loaded, registry: &Registry, webhooks: &Webhooks) -> Restored {
    let mut restored = Restored::default();
    let streams = loaded.docs.remove(&Kind::Stream).unwrap_or_default();
    for (id, doc) in streams {
        let id = &id;
        let record = StreamRecord::deserialize(&doc)
            .map_err(|e| e.to_string())
            .and_then(|r| Ok((r.settings()?, r)));
        let (settings, record) = match record {
            Ok(ok) => ok,
            Err(error) => {
                tracing::warn!(stream_id = %id, %error, "stored stream skipped");
                restored.skipped += 1;
                continue;
            }
        };
        if registry.stream_id_for(&settings.original_url) != *id {
            tracing::warn!(stream_id = %id, "stored stream was registered under another secret; its id is kept");
        }
        let counters = loaded.stream_counters.remove(id).unwrap_or_default();
        registry.restore_stream(RestoredStream {
            id: id.clone(),
            created_at: record.created_at,
            settings,
            index: record.failover_index,
            generation: record.generation,
            counters: counters.to_array(),
        });
        restored.streams += 1;
    }
    registry.restore_totals(loaded.totals.to_array());
    // In registration order, as `GET /webhooks` lists them.
    let mut hooks: Vec<(String, Result<WebhookRecord, String>)> = loaded
        .docs
        .remove(&Kind::Webhook)
        .unwrap_or_default()
        .into_iter()
        .map(|(id, doc)| (id, serde_json::from_value(doc).map_err(|e| e.to_string())))
        .collect();
    hooks.sort_by_key(|(_, r)| r.as_ref().ok().map(|r| r.created_at));
    for (id, record) in hooks {
        let result = record.and_then(|r| webhooks.restore(r).map_err(|e| e.to_string()));
        match result {
            Ok(()) => restored.webhooks += 1,
            Err(error) => {
                tracing::warn!(webhook_id = %id, %error, "stored webhook skipped");
                restored.skipped += 1;
            }
        }
    }
    restored.providers = loaded.docs.remove(&Kind::Provider).unwrap_or_default();
    restored.channel_lists = loaded.docs.remove(&Kind::ChannelList).unwrap_or_default();
    restored.listed_counters = loaded
        .stream_counters
        .into_iter()
        .map(|(id, set)| (id, set.to_array()))
        .collect();
    restored
}

/// The increments of a stream's (or the totals') counters since they were last handed to
/// the store.
pub(super) fn increments(stored: &Stored, counters: &crate::registry::Counters) -> CounterSet {
    CounterSet::from_array(stored.take_increments(counters))
}
