//! Webhooks: URLs that receive matching events as JSON `POST`s, registered through
//! `/webhooks` (whose handlers are in `api::webhooks`). The dispatcher reads the bus and starts one task per delivery, each with a
//! request timeout and retries with exponential backoff; a webhook with too many deliveries
//! in flight drops (and counts) new ones. Nothing here may slow the bus or the proxy: the
//! registry lock is never held across an await and deliveries never run on the bus reader.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Event, EventBus, EventFilter, EventType, UnknownEventType};

/// Registration request (`POST /webhooks` body).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WebhookSpec {
    /// Where events are POSTed; `http` or `https`.
    pub url: String,
    /// Event types to deliver; empty means all.
    #[serde(default)]
    pub events: Vec<EventType>,
    /// Only events of this stream, when set.
    #[serde(default)]
    pub stream_id: Option<String>,
    /// Per-request timeout; defaults to [`WebhookLimits::default_timeout`].
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Retries after the first attempt; defaults to [`WebhookLimits::default_retries`].
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Extra headers sent with every delivery (m3u-editor's `headers`).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

/// A registered webhook and its delivery record, as `GET /webhooks` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Webhook {
    /// Random, unguessable.
    pub id: String,
    pub url: String,
    pub events: Vec<EventType>,
    pub stream_id: Option<String>,
    pub timeout_secs: u64,
    pub max_retries: u32,
    pub created_at: DateTime<Utc>,
    /// Events the receiver accepted (2xx).
    pub delivered: u64,
    /// Events given up on after the last retry or a non-retryable answer.
    pub failed: u64,
    /// Retry attempts made (not counting first attempts).
    pub retries: u64,
    /// Events not attempted because `max_in_flight` deliveries were already running.
    pub dropped: u64,
    /// Deliveries running now (including ones waiting to retry).
    pub in_flight: usize,
    /// HTTP status of the latest answer, if any attempt got one.
    pub last_status: Option<u16>,
    /// The latest failed attempt's reason; kept after later successes, see `last_error_at`.
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
}

/// A webhook as the store keeps it: its id and creation time with the registration
/// (filters, timeout, retries, headers). Delivery counts are not kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookRecord {
    pub id: String,
    pub created_at: DateTime<Utc>,
    #[serde(flatten)]
    pub spec: WebhookSpec,
}

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("invalid webhook url: {0}")]
    InvalidUrl(String),
    /// The same rule as for stream URLs: only http and https.
    #[error("url: only http and https webhook URLs are allowed, not {0}:")]
    UnsupportedScheme(String),
    #[error(transparent)]
    UnknownEventType(#[from] UnknownEventType),
    #[error("{0}")]
    InvalidSetting(String),
    #[error("at most {0} webhooks can be registered")]
    TooMany(usize),
    #[error("invalid webhook header {0:?}")]
    InvalidHeader(String),
}

impl WebhookError {
    /// The `code` of the JSON error answer.
    pub fn code(&self) -> &'static str {
        match self {
            WebhookError::InvalidUrl(_) => "invalid_url",
            WebhookError::UnsupportedScheme(_) => "unsupported_scheme",
            WebhookError::UnknownEventType(_) => "unknown_event_type",
            WebhookError::InvalidSetting(_) => "invalid_setting",
            WebhookError::TooMany(_) => "too_many_webhooks",
            WebhookError::InvalidHeader(_) => "invalid_header",
        }
    }
}

/// Bounds and defaults of the registry and its deliveries.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookLimits {
    pub max_webhooks: usize,
    /// Deliveries of one webhook running at once; beyond it new events are dropped.
    pub max_in_flight: usize,
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub default_retries: u32,
    pub max_retries: u32,
    /// Delay before the first retry; it doubles per retry up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for WebhookLimits {
    fn default() -> Self {
        WebhookLimits {
            max_webhooks: 100,
            max_in_flight: 64,
            default_timeout: Duration::from_secs(10),
            max_timeout: Duration::from_secs(120),
            default_retries: 3,
            max_retries: 10,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// The delay before retry number `retry` (0 = the first retry): `base * 2^retry`, capped.
pub fn retry_delay(retry: u32, base: Duration, cap: Duration) -> Duration {
    base.checked_mul(2u32.saturating_pow(retry))
        .map_or(cap, |delay| delay.min(cap))
}

/// The registry of webhooks with their delivery counters.
#[derive(Debug, Default)]
pub struct Webhooks {
    limits: WebhookLimits,
    /// In registration order. A std lock: held only to copy or edit the list, never across
    /// an await.
    hooks: RwLock<Vec<Arc<Entry>>>,
    /// Events the dispatcher never saw because it fell behind the bus.
    missed_events: AtomicU64,
}

#[derive(Debug)]
struct Entry {
    id: String,
    url: url::Url,
    filter: EventFilter,
    timeout: Duration,
    max_retries: u32,
    headers: reqwest::header::HeaderMap,
    created_at: DateTime<Utc>,
    removed: AtomicBool,
    delivered: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
    dropped: AtomicU64,
    in_flight: AtomicUsize,
    last: Mutex<LastOutcome>,
}

#[derive(Debug, Default)]
struct LastOutcome {
    status: Option<u16>,
    error: Option<String>,
    error_at: Option<DateTime<Utc>>,
    attempt_at: Option<DateTime<Utc>>,
}

impl Webhooks {
    pub fn new(limits: WebhookLimits) -> Self {
        Webhooks {
            limits,
            hooks: RwLock::default(),
            missed_events: AtomicU64::new(0),
        }
    }

    pub fn limits(&self) -> &WebhookLimits {
        &self.limits
    }

    /// Validates and registers a webhook; it receives events emitted from now on. A URL
    /// already registered is updated in place (same id, fresh settings), never duplicated:
    /// m3u-editor registers its URL again on every start. The boolean is true when new.
    pub fn register_or_update(&self, spec: WebhookSpec) -> Result<(Webhook, bool), WebhookError> {
        let url = valid_url(&spec.url)?;
        let existing = self.entries().into_iter().find(|e| e.url == url);
        let Some(old) = existing else {
            return self.register(spec).map(|w| (w, true));
        };
        let fresh = self.build(spec, Some((&old.id, old.created_at)))?;
        let mut hooks = self.hooks.write().unwrap_or_else(PoisonError::into_inner);
        match hooks.iter().position(|e| Arc::ptr_eq(e, &old)) {
            Some(i) => hooks[i] = Arc::clone(&fresh),
            None => hooks.push(Arc::clone(&fresh)),
        }
        drop(hooks);
        old.removed.store(true, Relaxed);
        tracing::info!(webhook_id = %fresh.id, "webhook updated");
        Ok((fresh.view(), false))
    }

    /// Unregisters every webhook with this URL; false when there was none.
    pub fn remove_url(&self, raw: &str) -> bool {
        !self.remove_url_ids(raw).is_empty()
    }

    /// Unregisters every webhook with this URL and returns their ids.
    pub fn remove_url_ids(&self, raw: &str) -> Vec<String> {
        let Ok(url) = valid_url(raw) else {
            return Vec::new();
        };
        let ids: Vec<String> = self
            .entries()
            .iter()
            .filter(|e| e.url == url)
            .map(|e| e.id.clone())
            .collect();
        ids.into_iter().filter(|id| self.remove(id)).collect()
    }

    /// Validates and registers a webhook; it receives events emitted from now on.
    pub fn register(&self, spec: WebhookSpec) -> Result<Webhook, WebhookError> {
        let entry = self.build(spec, None)?;
        let mut hooks = self.hooks.write().unwrap_or_else(PoisonError::into_inner);
        if hooks.len() >= self.limits.max_webhooks {
            return Err(WebhookError::TooMany(self.limits.max_webhooks));
        }
        hooks.push(Arc::clone(&entry));
        drop(hooks);
        tracing::info!(webhook_id = %entry.id, "webhook registered");
        Ok(entry.view())
    }

    /// A validated entry for `spec`, with a fresh id or the given one.
    fn build(
        &self,
        spec: WebhookSpec,
        keep: Option<(&String, DateTime<Utc>)>,
    ) -> Result<Arc<Entry>, WebhookError> {
        let url = valid_url(&spec.url)?;
        let timeout = match spec.timeout_secs {
            None => self.limits.default_timeout,
            Some(secs) if secs >= 1 && Duration::from_secs(secs) <= self.limits.max_timeout => {
                Duration::from_secs(secs)
            }
            Some(secs) => {
                return Err(WebhookError::InvalidSetting(format!(
                    "timeout_secs must be between 1 and {}, not {secs}",
                    self.limits.max_timeout.as_secs()
                )))
            }
        };
        let max_retries = spec.max_retries.unwrap_or(self.limits.default_retries);
        if max_retries > self.limits.max_retries {
            return Err(WebhookError::InvalidSetting(format!(
                "max_retries must be at most {}, not {max_retries}",
                self.limits.max_retries
            )));
        }
        let mut events = Vec::with_capacity(spec.events.len());
        for event_type in spec.events {
            if !events.contains(&event_type) {
                events.push(event_type);
            }
        }
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &spec.headers {
            let bad = || WebhookError::InvalidHeader(name.clone());
            headers.insert(
                reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())
                    .map_err(|_| bad())?,
                reqwest::header::HeaderValue::from_str(value).map_err(|_| bad())?,
            );
        }
        let (id, created_at) = match keep {
            Some((id, at)) => (id.clone(), at),
            None => (format!("{:032x}", rand::random::<u128>()), Utc::now()),
        };
        Ok(Arc::new(Entry {
            id,
            url,
            filter: EventFilter {
                types: events,
                stream_id: spec.stream_id,
                client_id: None,
            },
            timeout,
            max_retries,
            headers,
            created_at,
            removed: AtomicBool::new(false),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            last: Mutex::default(),
        }))
    }

    /// The webhook with this id as the store keeps it.
    pub fn record(&self, id: &str) -> Option<WebhookRecord> {
        let entry = self.entries().into_iter().find(|e| e.id == id)?;
        Some(WebhookRecord {
            id: entry.id.clone(),
            created_at: entry.created_at,
            spec: WebhookSpec {
                url: entry.url.to_string(),
                events: entry.filter.types.clone(),
                stream_id: entry.filter.stream_id.clone(),
                timeout_secs: Some(entry.timeout.as_secs()),
                max_retries: Some(entry.max_retries),
                headers: entry
                    .headers
                    .iter()
                    .map(|(n, v)| {
                        (
                            n.as_str().to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
            },
        })
    }

    /// Puts back a webhook the store kept, with its id, at start-up.
    pub fn restore(&self, record: WebhookRecord) -> Result<(), WebhookError> {
        let entry = self.build(record.spec, Some((&record.id, record.created_at)))?;
        let mut hooks = self.hooks.write().unwrap_or_else(PoisonError::into_inner);
        if hooks.len() >= self.limits.max_webhooks {
            return Err(WebhookError::TooMany(self.limits.max_webhooks));
        }
        hooks.retain(|e| e.id != entry.id);
        hooks.push(entry);
        Ok(())
    }

    /// Every webhook with its delivery record, in registration order.
    pub fn list(&self) -> Vec<Webhook> {
        self.entries().iter().map(|entry| entry.view()).collect()
    }

    pub fn get(&self, id: &str) -> Option<Webhook> {
        self.entries()
            .iter()
            .find(|entry| entry.id == id)
            .map(|entry| entry.view())
    }

    /// Unregisters a webhook; its deliveries in progress stop before their next retry.
    pub fn remove(&self, id: &str) -> bool {
        let mut hooks = self.hooks.write().unwrap_or_else(PoisonError::into_inner);
        let Some(index) = hooks.iter().position(|entry| entry.id == id) else {
            return false;
        };
        let entry = hooks.remove(index);
        drop(hooks);
        entry.removed.store(true, Relaxed);
        tracing::info!(webhook_id = %entry.id, "webhook removed");
        true
    }

    pub fn len(&self) -> usize {
        self.hooks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Events the dispatcher missed because it fell behind the bus buffer.
    pub fn missed_events(&self) -> u64 {
        self.missed_events.load(Relaxed)
    }

    fn entries(&self) -> Vec<Arc<Entry>> {
        self.hooks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Starts one delivery task per matching webhook, which gives up at `shutdown`. Must
    /// run inside a tokio runtime.
    fn dispatch(&self, event: &Event, http: &reqwest::Client, shutdown: &CancellationToken) {
        let mut body = None;
        for entry in self.entries() {
            if !entry.filter.matches(event) {
                continue;
            }
            let Some(slot) = InFlight::try_acquire(&entry, self.limits.max_in_flight) else {
                entry.dropped.fetch_add(1, Relaxed);
                tracing::warn!(webhook_id = %entry.id, event_id = event.id, "webhook delivery dropped: too many in flight");
                continue;
            };
            let body = body.get_or_insert_with(|| webhook_body(event)).clone();
            let delivery = Delivery {
                slot,
                http: http.clone(),
                body,
                event_id: event.id,
                event_type: event.event_type,
                base_backoff: self.limits.base_backoff,
                max_backoff: self.limits.max_backoff,
            };
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = delivery.run() => {}
                    () = shutdown.cancelled() => {}
                }
            });
        }
    }
}

/// The JSON a receiver gets: the event, plus `event_id` (the id as a string), the name
/// m3u-editor's receiver reads.
fn webhook_body(event: &Event) -> Bytes {
    let mut value = serde_json::to_value(event).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.insert("event_id".into(), event.id.to_string().into());
    }
    Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
}

fn valid_url(raw: &str) -> Result<url::Url, WebhookError> {
    let url =
        url::Url::parse(raw.trim()).map_err(|err| WebhookError::InvalidUrl(err.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(WebhookError::UnsupportedScheme(url.scheme().to_owned()));
    }
    Ok(url)
}

impl Entry {
    fn view(&self) -> Webhook {
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        Webhook {
            id: self.id.clone(),
            url: self.url.to_string(),
            events: self.filter.types.clone(),
            stream_id: self.filter.stream_id.clone(),
            timeout_secs: self.timeout.as_secs(),
            max_retries: self.max_retries,
            created_at: self.created_at,
            delivered: self.delivered.load(Relaxed),
            failed: self.failed.load(Relaxed),
            retries: self.retries.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            last_status: last.status,
            last_error: last.error.clone(),
            last_error_at: last.error_at,
            last_attempt_at: last.attempt_at,
        }
    }

    fn record(&self, status: Option<u16>, error: Option<String>) {
        let now = Utc::now();
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        last.attempt_at = Some(now);
        if status.is_some() {
            last.status = status;
        }
        if error.is_some() {
            last.error = error;
            last.error_at = Some(now);
        }
    }
}

/// One of a webhook's `max_in_flight` delivery slots; given back when dropped, so a
/// delivery task that panics or is cancelled still frees its slot.
struct InFlight(Arc<Entry>);

impl InFlight {
    fn try_acquire(entry: &Arc<Entry>, max: usize) -> Option<InFlight> {
        entry
            .in_flight
            .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| InFlight(Arc::clone(entry)))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// One event on its way to one webhook.
struct Delivery {
    slot: InFlight,
    http: reqwest::Client,
    body: Bytes,
    event_id: u64,
    event_type: EventType,
    base_backoff: Duration,
    max_backoff: Duration,
}

/// What one attempt came to.
enum Attempt {
    Delivered,
    Retryable(String),
    Final(String),
}

impl Delivery {
    async fn run(self) {
        let entry = &self.slot.0;
        let mut retry = 0;
        loop {
            let reason = match self.attempt(entry).await {
                Attempt::Delivered => {
                    entry.delivered.fetch_add(1, Relaxed);
                    return;
                }
                Attempt::Retryable(reason) if retry < entry.max_retries => reason,
                Attempt::Retryable(reason) | Attempt::Final(reason) => {
                    entry.failed.fetch_add(1, Relaxed);
                    tracing::warn!(webhook_id = %entry.id, event_id = self.event_id, error = %reason, "webhook delivery failed");
                    return;
                }
            };
            tracing::debug!(webhook_id = %entry.id, event_id = self.event_id, retry, error = %reason, "webhook delivery will be retried");
            tokio::time::sleep(retry_delay(retry, self.base_backoff, self.max_backoff)).await;
            if entry.removed.load(Relaxed) {
                return;
            }
            entry.retries.fetch_add(1, Relaxed);
            retry += 1;
        }
    }

    async fn attempt(&self, entry: &Entry) -> Attempt {
        let request = self
            .http
            .post(entry.url.clone())
            .timeout(entry.timeout)
            .headers(entry.headers.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::USER_AGENT, "M3U-Proxy-Webhook/1.0")
            .header("x-m3u-proxy-event", self.event_type.as_str())
            .header("x-m3u-proxy-event-id", self.event_id)
            .body(self.body.clone());
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                // The receiver's body is of no use; not reading it lets the connection close.
                drop(response);
                if status.is_success() {
                    entry.record(Some(status.as_u16()), None);
                    return Attempt::Delivered;
                }
                let reason = format!("receiver answered {status}");
                entry.record(Some(status.as_u16()), Some(reason.clone()));
                // Other 4xx answers will not change by asking again.
                let retryable = status.is_server_error()
                    || status == reqwest::StatusCode::REQUEST_TIMEOUT
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                if retryable {
                    Attempt::Retryable(reason)
                } else {
                    Attempt::Final(reason)
                }
            }
            Err(err) => {
                let reason = transport_error(&err, entry.timeout);
                entry.record(None, Some(reason.clone()));
                Attempt::Retryable(reason)
            }
        }
    }
}

/// A reason for the record, without the URL (it may carry a token) but with the root cause.
fn transport_error(err: &reqwest::Error, timeout: Duration) -> String {
    if err.is_timeout() {
        return format!("timed out after {} s", timeout.as_secs());
    }
    let mut root: &dyn std::error::Error = err;
    while let Some(source) = root.source() {
        root = source;
    }
    let kind = if err.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    format!("{kind}: {root}")
}

/// Reads the bus and starts the deliveries of each event. Subscribes before returning, so
/// every event emitted afterwards is considered. Ends at the bus's shutdown, or when every
/// [`EventBus`] clone is gone.
pub fn spawn_dispatcher(
    bus: &EventBus,
    webhooks: Arc<Webhooks>,
    http: reqwest::Client,
) -> JoinHandle<()> {
    let mut receiver = bus.subscribe();
    let shutdown = bus.shutdown().clone();
    // Named before the dispatcher starts (at start-up), so captured here: holding the bus
    // would keep it from ever closing.
    let own = bus.instance().map(str::to_owned);
    tokio::spawn(async move {
        loop {
            let received = tokio::select! {
                received = receiver.recv() => received,
                () = shutdown.cancelled() => return,
            };
            match received {
                // In a fleet every instance sees every event; each delivers its own, so a
                // webhook gets each event once.
                Ok(event) if event.instance.is_some() && event.instance != own => {}
                Ok(event) => webhooks.dispatch(&event, &http, &shutdown),
                Err(RecvError::Lagged(missed)) => {
                    webhooks.missed_events.fetch_add(missed, Relaxed);
                    tracing::warn!(missed, "webhook dispatcher fell behind the event bus");
                }
                Err(RecvError::Closed) => return,
            }
        }
    })
}
