//! The `/events` routes over real loopback sockets (a feed is read as it streams) and the
//! `/webhooks` routes called in process (the bus, the webhook registry and deliveries are
//! tested in `events`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::Router;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::events::sse_router;
use super::webhooks::webhooks_router;
use crate::events::{Event, EventBus, EventType, Webhook, Webhooks};

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// One SSE message as a player would read it.
#[derive(Debug, PartialEq)]
struct Frame {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

/// Reads an SSE response frame by frame, skipping comment-only frames (keep-alives).
struct SseReader {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    buffer: String,
}

impl SseReader {
    async fn open(url: String) -> SseReader {
        let response = reqwest::get(url).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "{:?}",
            response.headers()
        );
        SseReader {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    async fn next(&mut self) -> Frame {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let raw: String = self.buffer.drain(..end + 2).collect();
                let mut frame = Frame {
                    id: None,
                    event: None,
                    data: String::new(),
                };
                let mut fields = 0;
                for line in raw.lines() {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "id" => frame.id = Some(value.to_owned()),
                        "event" => frame.event = Some(value.to_owned()),
                        "data" => frame.data.push_str(value),
                        _ => continue,
                    }
                    fields += 1;
                }
                if fields > 0 {
                    return frame;
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(5), self.body.next())
                .await
                .expect("no SSE frame within 5 s")
                .expect("SSE stream ended")
                .unwrap();
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

#[tokio::test]
async fn sse_feed_filters_by_stream_and_type() {
    let bus = EventBus::new(64);
    let addr = serve(sse_router().with_state(bus.clone())).await;
    let mut feed = SseReader::open(format!(
        "http://{addr}/events?stream_id=a&client_id=&types=stream_created&types=failover"
    ))
    .await;

    let created = bus.emit(EventType::StreamCreated, Some("a"), None, json!({"n": 1}));
    bus.emit(EventType::StreamCreated, Some("b"), None, json!({}));
    bus.emit(EventType::ClientConnected, Some("a"), Some("c"), json!({}));
    let failover = bus.emit(
        EventType::Failover,
        Some("a"),
        None,
        json!({"current_url": "http://backup/"}),
    );
    bus.emit(EventType::StreamDeleted, Some("a"), None, json!({}));
    bus.emit(EventType::Failover, None, None, json!({}));
    let last = bus.emit(EventType::StreamCreated, Some("a"), None, json!({}));

    for expected in [created, failover, last] {
        let frame = feed.next().await;
        assert_eq!(frame.id, Some(expected.id.to_string()));
        assert_eq!(frame.event.as_deref(), Some(expected.event_type.as_str()));
        let event: Event = serde_json::from_str(&frame.data).unwrap();
        assert_eq!(event, expected);
    }
}

#[tokio::test]
async fn sse_reader_that_falls_behind_is_told_how_many_events_it_missed() {
    let bus = EventBus::new(4);
    let addr = serve(sse_router().with_state(bus.clone())).await;
    let mut feed = SseReader::open(format!("http://{addr}/events")).await;

    // The test runtime has one thread: the feed cannot read while these are emitted.
    for i in 0..20 {
        bus.emit(
            EventType::ClientConnected,
            Some("s"),
            None,
            json!({ "i": i }),
        );
    }
    let lagged = feed.next().await;
    assert_eq!(lagged.event.as_deref(), Some("lagged"));
    assert_eq!(lagged.id, None);
    assert_eq!(
        serde_json::from_str::<Value>(&lagged.data).unwrap(),
        json!({"missed": 16})
    );
    for id in 17..=20 {
        assert_eq!(feed.next().await.id, Some(id.to_string()));
    }
    // And it carries on with new events.
    let next = bus.emit(EventType::Failover, Some("s"), None, json!({}));
    assert_eq!(feed.next().await.id, Some(next.id.to_string()));
}

#[tokio::test]
async fn sse_unknown_type_filter_is_a_json_422() {
    let bus = EventBus::new(4);
    let addr = serve(sse_router().with_state(bus)).await;
    let response = reqwest::get(format!("http://{addr}/events?types=stream_created,nope"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "unknown_event_type");
    assert!(body["detail"].as_str().unwrap().contains("\"nope\""));
}

/// What the `/webhooks` router needs.
#[derive(Clone)]
struct HookState {
    webhooks: Arc<Webhooks>,
    store: Arc<crate::store::Store>,
}

impl axum::extract::FromRef<HookState> for Arc<Webhooks> {
    fn from_ref(s: &HookState) -> Self {
        s.webhooks.clone()
    }
}

impl axum::extract::FromRef<HookState> for Arc<crate::store::Store> {
    fn from_ref(s: &HookState) -> Self {
        s.store.clone()
    }
}

/// The `/webhooks` router, called without a socket.
fn webhooks_api() -> (Arc<Webhooks>, Router) {
    let webhooks = Arc::new(Webhooks::default());
    let router = webhooks_router().with_state(HookState {
        webhooks: webhooks.clone(),
        store: Arc::new(crate::store::Store::memory()),
    });
    (webhooks, router)
}

/// Calls `router` in process (tower's `oneshot`, no socket) and returns the status and the
/// JSON answer.
async fn call(router: &Router, method: &str, uri: &str, body: &str) -> (StatusCode, Value) {
    let request = axum::http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_owned()))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn webhooks_api_registers_lists_shows_and_removes() {
    let (webhooks, api) = webhooks_api();
    let body = json!({
        "url": "http://127.0.0.1:9/hook",
        "events": ["failover", "stream_deleted"],
        "stream_id": "s1",
        "timeout_secs": 5,
    });
    let (status, created) = call(&api, "POST", "/webhooks", &body.to_string()).await;
    assert_eq!(status, StatusCode::CREATED);
    let created: Webhook = serde_json::from_value(created).unwrap();
    assert_eq!(created.id.len(), 32);
    assert_eq!(
        created.events,
        [EventType::Failover, EventType::StreamDeleted]
    );
    assert_eq!((created.timeout_secs, created.max_retries), (5, 3));
    assert_eq!(created.stream_id.as_deref(), Some("s1"));

    let body = json!({ "url": "https://example.invalid/x" }).to_string();
    let (_, second) = call(&api, "POST", "/webhooks", &body).await;
    let second: Webhook = serde_json::from_value(second).unwrap();
    assert_ne!(second.id, created.id);
    assert!(second.events.is_empty());

    let (_, list) = call(&api, "GET", "/webhooks", "").await;
    assert_eq!(list["total"], 2);
    assert_eq!(list["webhooks"][0]["id"], created.id.as_str());
    assert_eq!(list["webhooks"][1]["id"], second.id.as_str());
    assert_eq!(list["webhooks"][0]["delivered"], 0);

    let one = format!("/webhooks/{}", created.id);
    let (status, shown) = call(&api, "GET", &one, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(serde_json::from_value::<Webhook>(shown).unwrap(), created);

    let (status, _) = call(&api, "DELETE", &one, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(webhooks.len(), 1);
    for method in ["DELETE", "GET"] {
        let (status, body) = call(&api, method, &one, "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["code"], "webhook_not_found");
    }
}

#[tokio::test]
async fn webhooks_api_refuses_bad_input_with_json_errors() {
    let (webhooks, api) = webhooks_api();
    let cases = [
        (r#"{"url": "ftp://host/x"}"#, 422, "unsupported_scheme"),
        (r#"{"url": "not a url"}"#, 422, "invalid_url"),
        (
            r#"{"url": "file:///etc/passwd"}"#,
            422,
            "unsupported_scheme",
        ),
        (
            r#"{"url": "http://h/", "events": ["failover", "boom"]}"#,
            422,
            "unknown_event_type",
        ),
        (
            r#"{"url": "http://h/", "timeout_secs": 0}"#,
            422,
            "invalid_setting",
        ),
        (
            r#"{"url": "http://h/", "max_retries": 99}"#,
            422,
            "invalid_setting",
        ),
        (r#"{"events": []}"#, 422, "invalid_body"),
        (r#"{"url": 5}"#, 422, "invalid_body"),
        (r#"{"url": "http://h/""#, 400, "malformed_json"),
        ("", 400, "malformed_json"),
    ];
    for (body, status, code) in cases {
        let (answered, answer) = call(&api, "POST", "/webhooks", body).await;
        assert_eq!(answered.as_u16(), status, "{body}");
        assert_eq!(answer["code"], code, "{body}: {answer}");
        assert!(answer["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    assert!(webhooks.is_empty());
}
