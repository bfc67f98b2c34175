//! `GET /events`: the bus as a Server-Sent Events feed, filtered by stream, client and type.
//! Each connection is one bus reader; a reader that falls behind gets an `event: lagged`
//! message with the number of events it missed and then carries on. It never writes to the
//! bus and never holds anything that would slow an emitter.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{FromRef, RawQuery, State};
use axum::http::{header::HeaderName, HeaderValue};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::stream::{self, Stream, StreamExt};
use tokio::sync::broadcast::{self, error::RecvError};

use crate::error::ApiError;
use crate::events::{Event, EventBus, EventFilter, UnknownEventType};

/// How often an idle feed sends a comment, so proxies and players keep the connection open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The router of `GET /events` (`?stream_id=`, `?client_id=`, `?types=a,b`).
pub fn sse_router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    EventBus: FromRef<S>,
{
    Router::new().route("/events", get(event_feed))
}

#[utoipa::path(get, path = "/events", tag = "events",
    params(
        ("stream_id" = Option<String>, Query, description = "Only this stream's events"),
        ("client_id" = Option<String>, Query, description = "Only this client's events"),
        ("types" = Option<String>, Query, description = "Comma-separated event types (may repeat)"),
    ),
    responses(
        (status = 200, description = "Server-Sent Events: each `event:` is an event type, each `data:` an Event as JSON; the feed does not end", content_type = "text/event-stream", body = Event),
        (status = 422, description = "An unknown event type (`unknown_event_type`)", body = crate::model::ErrorBody), (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
async fn event_feed(State(bus): State<EventBus>, RawQuery(query): RawQuery) -> Response {
    let filter = match filter_from_query(query.as_deref().unwrap_or("")) {
        Ok(filter) => filter,
        Err(unknown) => {
            return ApiError::unprocessable("unknown_event_type", unknown.to_string())
                .into_response()
        }
    };
    // Subscribe before answering, so every event emitted after the response head is seen.
    // At shutdown the feed ends, so the connection does not hold the drain open.
    let feed = feed(bus.subscribe(), filter).take_until(bus.shutdown().clone().cancelled_owned());
    let sse = Sse::new(feed).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"));
    // nginx buffers responses unless told otherwise, which would hold events back.
    let no_buffering = (
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    ([no_buffering], sse).into_response()
}

/// Query parameters may repeat (`types=a&types=b`); every `types` value is merged. An empty
/// value (`stream_id=`) restricts nothing, as forms send empty fields.
fn filter_from_query(query: &str) -> Result<EventFilter, UnknownEventType> {
    let mut filter = EventFilter::default();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if value.is_empty() {
            continue;
        }
        match key.as_ref() {
            "stream_id" => filter.stream_id = Some(value.into_owned()),
            "client_id" => filter.client_id = Some(value.into_owned()),
            "types" => filter.types.extend(EventFilter::parse_types(&value)?),
            _ => {}
        }
    }
    Ok(filter)
}

/// The SSE messages of one reader: an opening comment, then matching events and `lagged`
/// notices, until the bus is gone.
fn feed(
    receiver: broadcast::Receiver<Event>,
    filter: EventFilter,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static {
    let opening = stream::once(async { Ok(SseEvent::default().comment("connected")) });
    let events = stream::unfold((receiver, filter), |(mut receiver, filter)| async move {
        loop {
            let message = match receiver.recv().await {
                Ok(event) if filter.matches(&event) => event_message(&event),
                Ok(_) => continue,
                Err(RecvError::Lagged(missed)) => lagged_message(missed),
                Err(RecvError::Closed) => return None,
            };
            return Some((Ok(message), (receiver, filter)));
        }
    });
    opening.chain(events)
}

fn event_message(event: &Event) -> SseEvent {
    let message = SseEvent::default()
        .id(event.id.to_string())
        .event(event.event_type.as_str());
    // Serializing an Event cannot fail (string keys only), but a feed must not die on it.
    match serde_json::to_string(event) {
        Ok(json) => message.data(json),
        Err(err) => message.data(serde_json::json!({ "error": err.to_string() }).to_string()),
    }
}

fn lagged_message(missed: u64) -> SseEvent {
    SseEvent::default()
        .event("lagged")
        .data(serde_json::json!({ "missed": missed }).to_string())
}
