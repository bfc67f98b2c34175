//! Typed events of the proxy on an in-process bus, and where they go: the log, the
//! Server-Sent Events feed (`GET /events`, served by `api::events`) and registered webhooks
//! ([`Webhooks`], [`spawn_dispatcher`]; `/webhooks` is served by `api::webhooks`).
//!
//! [`EventBus::emit`] is called from request handlers and background tasks, so it must never
//! block or await: it numbers the event, logs it and hands it to a tokio broadcast channel.
//! Everything slow (HTTP deliveries, SSE writes) happens in other tasks that read the bus. A
//! reader that falls behind the bus buffer is told how many events it missed; no loss is
//! silent. This module knows nothing of streams or clients beyond their ids.

mod webhooks;

#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use webhooks::{
    retry_delay, spawn_dispatcher, Webhook, WebhookError, WebhookLimits, WebhookRecord,
    WebhookSpec, Webhooks,
};

/// How many events the bus keeps for readers that are momentarily behind.
pub const DEFAULT_CAPACITY: usize = 1024;

/// What happened. Serialized (and parsed in filters) as its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    StreamCreated,
    StreamUpdated,
    StreamDeleted,
    StreamIdleRemoved,
    ClientConnected,
    ClientDisconnected,
    Failover,
    UpstreamError,
    /// A stream got its first viewer (m3u-editor's name).
    StreamStarted,
    /// A stream's last viewer left, or the stream was removed; `data.reason` says which.
    StreamStopped,
    /// A connection was refused because every slot of its provider was taken.
    ProviderFull,
    /// A channel list was imported or refreshed (or a refresh failed), with its counts.
    PlaylistRefreshed,
}

impl EventType {
    /// Every event type, in declaration order.
    pub const ALL: [EventType; 12] = [
        EventType::StreamCreated,
        EventType::StreamUpdated,
        EventType::StreamDeleted,
        EventType::StreamIdleRemoved,
        EventType::ClientConnected,
        EventType::ClientDisconnected,
        EventType::Failover,
        EventType::UpstreamError,
        EventType::StreamStarted,
        EventType::StreamStopped,
        EventType::ProviderFull,
        EventType::PlaylistRefreshed,
    ];

    /// m3u-editor's vocabulary (`stream_started`, `stream_stopped`), which restates what the
    /// other events say: delivered only to readers that name it, so a feed or webhook with
    /// no type filter sees what it always saw.
    pub fn is_opt_in(self) -> bool {
        matches!(self, EventType::StreamStarted | EventType::StreamStopped)
    }

    /// The snake_case name, as in JSON, SSE `event:` lines and filters.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::StreamCreated => "stream_created",
            EventType::StreamUpdated => "stream_updated",
            EventType::StreamDeleted => "stream_deleted",
            EventType::StreamIdleRemoved => "stream_idle_removed",
            EventType::ClientConnected => "client_connected",
            EventType::ClientDisconnected => "client_disconnected",
            EventType::Failover => "failover",
            EventType::UpstreamError => "upstream_error",
            EventType::StreamStarted => "stream_started",
            EventType::StreamStopped => "stream_stopped",
            EventType::ProviderFull => "provider_full",
            EventType::PlaylistRefreshed => "playlist_refreshed",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of [`EventType::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type {0:?}; expected one of stream_created, stream_updated, stream_deleted, stream_idle_removed, client_connected, client_disconnected, failover, upstream_error, stream_started, stream_stopped, provider_full")]
pub struct UnknownEventType(pub String);

impl FromStr for EventType {
    type Err = UnknownEventType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownEventType(s.to_owned()))
    }
}

/// One event as the feed, the webhooks and the log see it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct Event {
    /// Monotonic per process, starting at 1; the order in which readers receive events.
    pub id: u64,
    pub timestamp: DateTime<Utc>,
    pub event_type: EventType,
    pub stream_id: Option<String>,
    pub client_id: Option<String>,
    /// Details of the event; its shape depends on `event_type`.
    pub data: serde_json::Value,
    /// In a fleet (`--store redis`): the id of the instance where it happened (the feed of
    /// every instance shows the events of all of them); absent for a lone instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// Which events a reader wants. Empty `types` means every type but the opt-in ones
/// ([`EventType::is_opt_in`]); `None` ids match any event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub types: Vec<EventType>,
    pub stream_id: Option<String>,
    pub client_id: Option<String>,
}

impl EventFilter {
    pub fn matches(&self, event: &Event) -> bool {
        let wanted_type = if self.types.is_empty() {
            !event.event_type.is_opt_in()
        } else {
            self.types.contains(&event.event_type)
        };
        wanted_type
            && wanted(&self.stream_id, &event.stream_id)
            && wanted(&self.client_id, &event.client_id)
    }

    /// Parses a comma-separated list of type names (`stream_created,failover`); blanks between
    /// commas are ignored so `types=` and trailing commas mean "no restriction".
    pub fn parse_types(list: &str) -> Result<Vec<EventType>, UnknownEventType> {
        list.split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(EventType::from_str)
            .collect()
    }
}

fn wanted(filter: &Option<String>, actual: &Option<String>) -> bool {
    filter.is_none() || filter == actual
}

/// The in-process event bus. Cheap to clone: clones share one channel and one id sequence.
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<BusInner>,
}

struct BusInner {
    /// The last id handed out. Numbering and sending happen under this std mutex so that ids
    /// reach every reader in increasing order even when tasks emit concurrently; the guard
    /// covers no await and no I/O, only a counter bump and a non-blocking channel send.
    last_id: Mutex<u64>,
    sender: broadcast::Sender<Event>,
    /// The process's shutdown signal. It lives here because every long-lived reader of the
    /// bus (an `/events` feed, the webhook dispatcher and its deliveries) must end on it;
    /// the registry derives each stream's `closed` token (viewer bodies, live hubs) from it.
    shutdown: CancellationToken,
    /// In a fleet: this instance's id, written into every event emitted here.
    instance: OnceLock<String>,
}

impl EventBus {
    /// A bus that keeps up to `capacity` (at least 1) events for readers that are behind.
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        EventBus {
            inner: Arc::new(BusInner {
                last_id: Mutex::new(0),
                sender,
                shutdown: CancellationToken::new(),
                instance: OnceLock::new(),
            }),
        }
    }

    /// Numbers, logs and broadcasts an event, and returns it. Never blocks, never awaits;
    /// having no reader at all is fine.
    pub fn emit(
        &self,
        event_type: EventType,
        stream_id: Option<&str>,
        client_id: Option<&str>,
        data: serde_json::Value,
    ) -> Event {
        self.emit_at(Utc::now(), event_type, stream_id, client_id, data)
    }

    /// [`EventBus::emit`] for something that happened at `at`, a moment ago.
    pub fn emit_at(
        &self,
        at: DateTime<Utc>,
        event_type: EventType,
        stream_id: Option<&str>,
        client_id: Option<&str>,
        data: serde_json::Value,
    ) -> Event {
        let event = {
            let mut last_id = self
                .inner
                .last_id
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *last_id += 1;
            let event = Event {
                id: *last_id,
                timestamp: at,
                event_type,
                stream_id: stream_id.map(str::to_owned),
                client_id: client_id.map(str::to_owned),
                data,
                instance: self.inner.instance.get().cloned(),
            };
            // An error only means nobody is listening right now.
            let _ = self.inner.sender.send(event.clone());
            event
        };
        tracing::info!(
            target: "m3u_proxy::events",
            event_id = event.id,
            event_type = event.event_type.as_str(),
            stream_id = event.stream_id.as_deref(),
            client_id = event.client_id.as_deref(),
            data = %event.data,
            "event"
        );
        event
    }

    /// Names this process in a fleet: every event emitted from now on carries `id` as its
    /// `instance`. Set once, at start-up; a second call changes nothing.
    pub fn set_instance(&self, id: &str) {
        let _ = self.inner.instance.set(id.to_owned());
    }

    /// This instance's id in a fleet.
    pub fn instance(&self) -> Option<&str> {
        self.inner.instance.get().map(String::as_str)
    }

    /// Whether `event` happened in this process (not another instance of the fleet).
    pub fn is_local(&self, event: &Event) -> bool {
        event.instance.is_none() || event.instance.as_deref() == self.instance()
    }

    /// Hands an event of another instance of the fleet to this bus's readers, numbered in
    /// this process's sequence (so feed ids keep increasing) with its time and `instance`
    /// kept. Never blocks, never awaits.
    pub fn inject(&self, mut event: Event) -> Event {
        {
            let mut last_id = self
                .inner
                .last_id
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *last_id += 1;
            event.id = *last_id;
            let _ = self.inner.sender.send(event.clone());
        }
        tracing::debug!(
            target: "m3u_proxy::events",
            event_id = event.id,
            event_type = event.event_type.as_str(),
            instance = event.instance.as_deref(),
            "event of another instance"
        );
        event
    }

    /// A reader of every event emitted from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.sender.subscribe()
    }

    /// The id of the latest event (0 before the first); also the number emitted so far.
    pub fn last_id(&self) -> u64 {
        *self
            .inner
            .last_id
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Cancelled when the process shuts down: readers of the bus stop reading.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Readers currently subscribed (SSE connections, the webhook dispatcher, ...).
    pub fn subscriber_count(&self) -> usize {
        self.inner.sender.receiver_count()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new(DEFAULT_CAPACITY)
    }
}

impl fmt::Debug for EventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBus")
            .field("last_id", &self.last_id())
            .field("subscribers", &self.subscriber_count())
            .finish()
    }
}
