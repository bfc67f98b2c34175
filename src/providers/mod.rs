//! Providers: accounts or origins with a connection limit, and the slots that enforce it.
//!
//! A provider is a name, the `host:port`s of its origins and `max_connections`. A stream
//! belongs to the provider it names (`"provider"` in `POST /streams`), else to the
//! provider whose hosts match the URL in use ([`host_key`]); a failover to another host
//! moves it to that host's provider. Every upstream connection to a provider holds one
//! slot ([`SlotGuard`], given back on drop): a live channel's shared upstream, a file
//! viewer's connection, a probe, `/test-connection`; an HLS stream holds one slot for
//! its whole watched session ([`hls`]), however many playlist and segment fetches ride on
//! it. When every slot is taken, `reject` refuses with `provider_full` before any
//! upstream request, and `replace_oldest` stops the stream that took its slot longest ago
//! and waits for its connection to close.
//!
//! The counting is behind [`SlotPool`] ([`LocalSlots`] here; a fleet shares it). The pure
//! parts (validation, host matching, the choice of the stream to stop) are apart from it.
//! Definitions change through [`Providers::put`] and [`Providers::delete`] only, and come
//! back at start-up through [`Providers::restore`]. Uses `registry`, `events`, `model`,
//! `error`.

pub mod hls;
mod pool;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::error::UpstreamError;
use crate::events::EventType;
use crate::model::{OnFull, ProviderInfo, ProviderSlot, ProviderSpec};
use crate::registry::Registry;
use crate::stream::StreamSettings;

pub use pool::{Acquired, Holder, HolderInfo, LocalSlots, SlotError, SlotGuard, SlotPool, Stop};

/// The most connections a provider may be given: beyond it a limit means nothing.
pub const MAX_CONNECTIONS_LIMIT: u32 = 10_000;
/// The most hosts of one provider.
pub const MAX_HOSTS: usize = 100;
/// The longest a provider name may be.
pub const MAX_NAME_LEN: usize = 64;
/// How long `replace_oldest` waits for the stopped stream's connection to close.
pub const REPLACE_WAIT: Duration = Duration::from_secs(5);

/// A provider's definition, as it is kept (and persisted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderRecord {
    pub name: String,
    #[serde(flatten)]
    pub spec: ProviderSpec,
}

/// Why a definition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidProvider(pub String);

/// Checks a name: 1 to 64 letters, digits, `-`, `_` or `.`.
pub fn validate_name(name: &str) -> Result<(), InvalidProvider> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(InvalidProvider(format!(
            "provider name {name:?} must be 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.'"
        )))
    }
}

/// Checks a definition and returns it with its hosts normalized (lowercase, no default
/// port spelled out twice).
pub fn validate(name: &str, spec: ProviderSpec) -> Result<ProviderRecord, InvalidProvider> {
    validate_name(name)?;
    if spec.hosts.is_empty() {
        return Err(InvalidProvider(
            "hosts must list at least one host:port".into(),
        ));
    }
    if spec.hosts.len() > MAX_HOSTS {
        return Err(InvalidProvider(format!(
            "hosts lists {} hosts; at most {MAX_HOSTS}",
            spec.hosts.len()
        )));
    }
    if !(1..=MAX_CONNECTIONS_LIMIT).contains(&spec.max_connections) {
        return Err(InvalidProvider(format!(
            "max_connections must be between 1 and {MAX_CONNECTIONS_LIMIT}, not {}",
            spec.max_connections
        )));
    }
    let mut hosts = Vec::with_capacity(spec.hosts.len());
    for h in &spec.hosts {
        let host = parse_host(h).ok_or_else(|| {
            InvalidProvider(format!("host {h:?} is not host:port (or a host name)"))
        })?;
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    Ok(ProviderRecord {
        name: name.to_string(),
        spec: ProviderSpec { hosts, ..spec },
    })
}

/// `host:port` or `host` as this module compares it: lowercase, without a trailing dot.
fn parse_host(text: &str) -> Option<String> {
    let text = text.trim();
    if text.is_empty() || text.contains(['/', '@', '?', '#', ' ']) {
        return None;
    }
    let (host, port) = match split_port(text) {
        (host, Some(port)) => (host, Some(port.parse::<u16>().ok()?)),
        (host, None) => (host, None),
    };
    let url = Url::parse(&format!("http://{host}/")).ok()?;
    let host = url.host_str()?.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return None;
    }
    Some(match port {
        Some(port) => format!("{host}:{port}"),
        None => host,
    })
}

/// `host:port` as (host, Some(port digits)); a host alone (an IPv6 `[::1]` too) as
/// (host, None).
fn split_port(text: &str) -> (&str, Option<&str>) {
    match text.rsplit_once(':') {
        Some((host, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!host.contains(':') || host.ends_with(']')) =>
        {
            (host, Some(port))
        }
        _ => (text, None),
    }
}

/// The `host:port` of a URL as providers list it, the port being the scheme's default
/// when the URL gives none (`http://a.example/x` is `a.example:80`).
pub fn host_key(url: &Url) -> Option<String> {
    let host = url.host_str()?.trim_end_matches('.').to_ascii_lowercase();
    let port = url.port_or_known_default()?;
    Some(format!("{host}:{port}"))
}

/// Whether a provider's host entry covers `key` (`host:port`): the same, or a bare host
/// naming it on any port.
fn covers(entry: &str, key: &str) -> bool {
    entry == key
        || match split_port(entry) {
            (host, None) => split_port(key).0 == host,
            _ => false,
        }
}

/// The stream to stop to make room: the one whose oldest slot was taken longest ago,
/// not `except` (the stream asking), and not a holder of no stream (a probe).
pub fn oldest_stream(holders: &[HolderInfo], except: Option<&str>) -> Option<String> {
    holders
        .iter()
        .filter(|h| h.stream_id.is_some() && h.stream_id.as_deref() != except)
        .min_by_key(|h| (h.since, h.id))
        .and_then(|h| h.stream_id.clone())
}

/// One provider: its definition and counters.
#[derive(Debug)]
pub struct Provider {
    pub record: ProviderRecord,
    counters: Arc<ProviderCounters>,
}

#[derive(Debug, Default)]
struct ProviderCounters {
    rejections: AtomicU64,
    replacements: AtomicU64,
}

impl Provider {
    pub fn name(&self) -> &str {
        &self.record.name
    }

    pub fn max_connections(&self) -> u32 {
        self.record.spec.max_connections
    }

    pub fn rejections(&self) -> u64 {
        self.counters.rejections.load(Ordering::Relaxed)
    }

    pub fn replacements(&self) -> u64 {
        self.counters.replacements.load(Ordering::Relaxed)
    }
}

/// Every provider of the proxy, and the slots of each.
#[derive(Debug)]
pub struct Providers {
    defs: RwLock<BTreeMap<String, Arc<Provider>>>,
    pool: Arc<dyn SlotPool>,
    /// Where `provider_full` and `stream_stopped` are announced; none in unit tests.
    registry: Option<Arc<Registry>>,
    pub hls: hls::HlsSessions,
}

impl Default for Providers {
    fn default() -> Self {
        Self::new(Arc::new(LocalSlots::default()), None)
    }
}

impl Providers {
    pub fn new(pool: Arc<dyn SlotPool>, registry: Option<Arc<Registry>>) -> Self {
        Self {
            defs: RwLock::default(),
            pool,
            registry,
            hls: hls::HlsSessions::default(),
        }
    }

    /// Whether any provider is defined: without one, nothing here is asked per request.
    pub fn is_empty(&self) -> bool {
        self.defs.read().expect("providers lock").is_empty()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Provider>> {
        self.defs.read().expect("providers lock").get(name).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Provider>> {
        self.defs
            .read()
            .expect("providers lock")
            .values()
            .cloned()
            .collect()
    }

    /// Creates or replaces a provider (the one place a definition changes; persist here).
    /// True when it is new. Its counters and held slots carry over an update.
    pub fn put(&self, record: ProviderRecord) -> bool {
        let mut defs = self.defs.write().expect("providers lock");
        let counters = defs
            .get(&record.name)
            .map(|p| p.counters.clone())
            .unwrap_or_default();
        let name = record.name.clone();
        defs.insert(name, Arc::new(Provider { record, counters }))
            .is_none()
    }

    /// Removes a provider (the one place a definition goes; persist here). Slots held
    /// for it are given back as their connections close.
    pub fn delete(&self, name: &str) -> bool {
        self.defs
            .write()
            .expect("providers lock")
            .remove(name)
            .is_some()
    }

    /// The definitions kept before a restart.
    pub fn restore(&self, records: impl IntoIterator<Item = ProviderRecord>) {
        for r in records {
            self.put(r);
        }
    }

    /// The provider of a connection to `url` for a stream naming `named`: that provider
    /// when it exists, else the one whose hosts cover the URL's host and port.
    pub fn provider_for(&self, named: Option<&str>, url: &Url) -> Option<Arc<Provider>> {
        let defs = self.defs.read().expect("providers lock");
        if defs.is_empty() {
            return None;
        }
        if let Some(p) = named.and_then(|n| defs.get(n)) {
            return Some(p.clone());
        }
        let key = host_key(url)?;
        defs.values()
            .find(|p| p.record.spec.hosts.iter().any(|h| covers(h, &key)))
            .cloned()
    }

    /// Whether another URL of the stream than `url` belongs to another provider (or
    /// none): a full provider is then worth skipping rather than giving up.
    fn elsewhere(&self, settings: &StreamSettings, provider: &str, url: &Url) -> bool {
        settings.urls().any(|u| {
            u != url
                && self
                    .provider_for(settings.provider.as_deref(), u)
                    .is_none_or(|p| p.name() != provider)
        })
    }

    /// A slot for a connection to `url` for `settings`' stream, when `url` belongs to a
    /// provider (`None` when it belongs to none). Full: `replace_oldest` stops the oldest
    /// stream when `may_replace` (a failover attempt never does), else `ProviderFull`.
    pub async fn slot(
        &self,
        settings: &StreamSettings,
        url: &Url,
        holder: Holder,
        may_replace: bool,
    ) -> Result<Option<SlotGuard>, UpstreamError> {
        let named = settings.provider.as_deref();
        self.take(named, url, holder, may_replace, |p| {
            self.elsewhere(settings, p, url)
        })
        .await
    }

    /// A slot for a connection to `url` of no stream (`/test-connection`): refused when
    /// the provider is full, never stopping a stream.
    pub async fn slot_of_no_stream(
        &self,
        url: &Url,
        kind: &'static str,
    ) -> Result<Option<SlotGuard>, UpstreamError> {
        let holder = Holder {
            stream_id: None,
            kind,
        };
        self.take(None, url, holder, false, |_| false).await
    }

    async fn take(
        &self,
        named: Option<&str>,
        url: &Url,
        holder: Holder,
        may_replace: bool,
        elsewhere: impl FnOnce(&str) -> bool,
    ) -> Result<Option<SlotGuard>, UpstreamError> {
        let Some(provider) = self.provider_for(named, url) else {
            return Ok(None);
        };
        let replace = may_replace && provider.record.spec.on_full == OnFull::ReplaceOldest;
        // Each round stops one stream; a few rounds cover streams racing for the slot.
        for _ in 0..3 {
            let acquired = self
                .pool
                .acquire(provider.name(), provider.max_connections(), holder.clone())
                .await;
            let holders = match acquired {
                Ok(Acquired::Granted(guard)) => return Ok(Some(guard)),
                Ok(Acquired::Full(holders)) => holders,
                Err(e) => {
                    tracing::warn!(provider = provider.name(), error = %e, "provider slots unavailable");
                    Vec::new()
                }
            };
            let victim = replace
                .then(|| oldest_stream(&holders, holder.stream_id.as_deref()))
                .flatten();
            let Some(victim) = victim else { break };
            self.replace(&provider, &victim, holder.stream_id.as_deref())
                .await;
        }
        provider.counters.rejections.fetch_add(1, Ordering::Relaxed);
        if let Some(registry) = &self.registry {
            registry.events.emit(
                EventType::ProviderFull,
                holder.stream_id.as_deref(),
                None,
                serde_json::json!({
                    "provider": provider.name(),
                    "max_connections": provider.max_connections(),
                    "on_full": provider.record.spec.on_full.as_str(),
                    "url_host": host_key(url),
                }),
            );
        }
        tracing::info!(provider = provider.name(), stream_id = ?holder.stream_id, "provider full: connection refused");
        Err(UpstreamError::ProviderFull {
            provider: provider.name().to_string(),
            max_connections: provider.max_connections(),
            elsewhere: elsewhere(provider.name()),
        })
    }

    /// Stops `victim`'s connections to `provider` and waits (at most [`REPLACE_WAIT`])
    /// until they are closed.
    async fn replace(&self, provider: &Provider, victim: &str, by: Option<&str>) {
        provider
            .counters
            .replacements
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(provider = provider.name(), stream_id = victim, by = ?by, "provider full: stopping its oldest stream");
        if let Some(registry) = &self.registry {
            registry.stream_stopped_for(
                victim,
                "provider_limit",
                serde_json::json!({"provider": provider.name(), "replaced_by": by}),
            );
        }
        let stopped = self.pool.stop_stream(provider.name(), victim);
        match tokio::time::timeout(REPLACE_WAIT, stopped).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(provider = provider.name(), error = %e, "provider slots unavailable")
            }
            Err(_) => {
                tracing::warn!(
                    provider = provider.name(),
                    stream_id = victim,
                    "stopped stream still holds its slot"
                )
            }
        }
    }

    /// A provider as the API reports it, with the slots held now.
    pub async fn info(&self, provider: &Provider) -> ProviderInfo {
        let held = self.pool.held(provider.name()).await.unwrap_or_default();
        ProviderInfo {
            name: provider.name().to_string(),
            hosts: provider.record.spec.hosts.clone(),
            max_connections: provider.max_connections(),
            on_full: provider.record.spec.on_full,
            active_connections: held.len() as u64,
            rejections: provider.rejections(),
            replacements: provider.replacements(),
            slots: held
                .into_iter()
                .map(|h| ProviderSlot {
                    stream_id: h.stream_id,
                    kind: h.kind.to_string(),
                    since: h.since,
                })
                .collect(),
        }
    }

    /// Every provider as the API reports it, by name.
    pub async fn infos(&self) -> Vec<ProviderInfo> {
        let mut out = Vec::new();
        for p in self.all() {
            out.push(self.info(&p).await);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;

    fn spec(hosts: &[&str], max: u32) -> ProviderSpec {
        ProviderSpec {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            max_connections: max,
            on_full: OnFull::Reject,
        }
    }

    #[test]
    fn definitions_are_checked_and_hosts_normalized() {
        let r = validate("acc-1", spec(&["IPTV.Example.com:8080", "b.example."], 2)).unwrap();
        assert_eq!(r.spec.hosts, ["iptv.example.com:8080", "b.example"]);
        assert!(validate("", spec(&["a:1"], 1)).is_err());
        assert!(validate("a b", spec(&["a:1"], 1)).is_err());
        assert!(validate(&"x".repeat(65), spec(&["a:1"], 1)).is_err());
        assert!(validate("a", spec(&[], 1)).is_err());
        assert!(validate("a", spec(&["a:1"], 0)).is_err());
        assert!(validate("a", spec(&["a:1"], MAX_CONNECTIONS_LIMIT + 1)).is_err());
        for bad in ["", "http://a/", "a:99999", "a b", "user@a:1"] {
            assert!(validate("a", spec(&[bad], 1)).is_err(), "{bad:?}");
        }
        assert_eq!(parse_host("a.example:80").as_deref(), Some("a.example:80"));
        assert_eq!(parse_host("127.0.0.1:9").as_deref(), Some("127.0.0.1:9"));
    }

    #[test]
    fn urls_match_by_host_and_port_with_the_default_port_of_the_scheme() {
        let providers = Providers::default();
        providers.put(validate("a", spec(&["a.example:80", "x.example:8080"], 1)).unwrap());
        providers.put(validate("b", spec(&["b.example"], 1)).unwrap());
        let of = |u: &str| {
            providers
                .provider_for(None, &Url::parse(u).unwrap())
                .map(|p| p.name().to_string())
        };
        assert_eq!(of("http://A.example/live.ts").as_deref(), Some("a"));
        assert_eq!(of("https://a.example/live.ts"), None, "port 443 is not 80");
        assert_eq!(of("http://x.example:8080/p").as_deref(), Some("a"));
        assert_eq!(of("http://x.example:8081/p"), None);
        assert_eq!(of("https://b.example:1234/p").as_deref(), Some("b"));
        assert_eq!(of("http://other/p"), None);
        // A stream naming its provider belongs to it whatever the host.
        let named = providers.provider_for(Some("b"), &Url::parse("http://a.example/").unwrap());
        assert_eq!(named.unwrap().name(), "b");
    }

    #[test]
    fn the_stream_stopped_is_the_one_holding_a_slot_longest() {
        let at = |s| Utc.timestamp_opt(s, 0).unwrap();
        let h = |id, stream: Option<&str>, since| HolderInfo {
            id,
            stream_id: stream.map(str::to_string),
            kind: "direct",
            since: at(since),
        };
        let holders = [
            h(3, Some("new"), 30),
            h(1, None, 5),
            h(2, Some("old"), 10),
            h(4, Some("asker"), 1),
        ];
        assert_eq!(
            oldest_stream(&holders, Some("asker")).as_deref(),
            Some("old")
        );
        assert_eq!(oldest_stream(&holders[..2], Some("new")), None);
        assert_eq!(oldest_stream(&[], None), None);
    }

    #[tokio::test]
    async fn reject_refuses_and_replace_oldest_stops_the_oldest_stream() {
        let providers = Providers::default();
        let mut record = validate("p", spec(&["o.example"], 1)).unwrap();
        providers.put(record.clone());
        let settings = crate::stream::StreamSettings {
            original_url: Url::parse("http://o.example/1.ts").unwrap(),
            failover_urls: Vec::new(),
            user_agent: None,
            headers: Default::default(),
            metadata: None,
            stream_type: crate::model::StreamType::Direct,
            provider: None,
            options: Default::default(),
        };
        let url = settings.original_url.clone();
        let holder = |s: &str| Holder {
            stream_id: Some(s.into()),
            kind: "direct",
        };
        let first = providers
            .slot(&settings, &url, holder("one"), true)
            .await
            .unwrap()
            .unwrap();
        let refused = providers.slot(&settings, &url, holder("two"), true).await;
        assert!(matches!(
            refused,
            Err(UpstreamError::ProviderFull {
                max_connections: 1,
                elsewhere: false,
                ..
            })
        ));
        assert_eq!(providers.get("p").unwrap().rejections(), 1);

        record.spec.on_full = OnFull::ReplaceOldest;
        providers.put(record);
        let stop = first.stop.clone();
        let holder_task = tokio::spawn(async move {
            stop.fired().await;
            drop(first);
        });
        // A failover attempt never replaces.
        assert!(providers
            .slot(&settings, &url, holder("two"), false)
            .await
            .is_err());
        let _second = providers
            .slot(&settings, &url, holder("two"), true)
            .await
            .unwrap()
            .expect("a slot once the oldest stream let go");
        holder_task.await.unwrap();
        let p = providers.get("p").unwrap();
        assert_eq!((p.rejections(), p.replacements()), (2, 1));
        let info = providers.info(&p).await;
        assert_eq!(info.active_connections, 1);
        assert_eq!(info.slots[0].stream_id.as_deref(), Some("two"));
    }
}
