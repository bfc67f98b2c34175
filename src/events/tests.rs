//! Tests of the bus, the SSE feed and webhook deliveries, over real loopback sockets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use super::*;

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn ids_are_monotonic_in_delivery_order_across_threads() {
    let bus = EventBus::new(8192);
    let mut receiver = bus.subscribe();
    std::thread::scope(|scope| {
        for thread in 0..4 {
            let bus = &bus;
            scope.spawn(move || {
                for i in 0..1000 {
                    bus.emit(
                        EventType::ClientConnected,
                        Some("s"),
                        None,
                        json!({ "thread": thread, "i": i }),
                    );
                }
            });
        }
    });
    let ids: Vec<u64> = std::iter::from_fn(|| receiver.try_recv().ok())
        .map(|event| event.id)
        .collect();
    assert_eq!(ids, (1..=4000).collect::<Vec<_>>());
    assert_eq!(bus.last_id(), 4000);
}

#[test]
fn emit_returns_the_event_and_works_without_readers() {
    let bus = EventBus::new(4);
    let event = bus.emit(
        EventType::StreamCreated,
        Some("abc"),
        Some("c1"),
        json!({ "url": "http://origin/live.m3u8" }),
    );
    assert_eq!(event.id, 1);
    assert_eq!(event.stream_id.as_deref(), Some("abc"));
    let json = serde_json::to_value(&event).unwrap();
    assert_eq!(json["event_type"], "stream_created");
    assert_eq!(json["client_id"], "c1");
    assert_eq!(json["data"]["url"], "http://origin/live.m3u8");
    assert_eq!(bus.emit(EventType::Failover, None, None, Value::Null).id, 2);
}

#[test]
fn event_types_parse_from_their_json_names() {
    for event_type in EventType::ALL {
        let json = serde_json::to_value(event_type).unwrap();
        assert_eq!(json, event_type.as_str());
        assert_eq!(event_type.as_str().parse::<EventType>(), Ok(event_type));
    }
    assert_eq!(
        EventFilter::parse_types(" stream_created, failover ,"),
        Ok(vec![EventType::StreamCreated, EventType::Failover])
    );
    assert_eq!(
        "StreamCreated".parse::<EventType>(),
        Err(UnknownEventType("StreamCreated".into()))
    );
}

#[test]
fn retry_delays_double_up_to_the_cap() {
    let base = Duration::from_millis(500);
    let cap = Duration::from_secs(4);
    let delays: Vec<u128> = (0..6)
        .map(|retry| retry_delay(retry, base, cap).as_millis())
        .collect();
    assert_eq!(delays, [500, 1000, 2000, 4000, 4000, 4000]);
    assert_eq!(retry_delay(u32::MAX, base, cap), cap);
}

/// A webhook receiver on loopback: records every body, answers `fail_first` requests with
/// 503, then 200s.
#[derive(Clone, Default)]
struct Receiver {
    bodies: Arc<Mutex<Vec<(String, Value)>>>,
    requests: Arc<AtomicUsize>,
    fail_first: usize,
}

impl Receiver {
    async fn start(fail_first: usize) -> (Receiver, String) {
        let receiver = Receiver {
            fail_first,
            ..Receiver::default()
        };
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(receiver.clone());
        let addr = serve(app).await;
        (receiver, format!("http://{addr}/hook"))
    }

    fn bodies(&self) -> Vec<(String, Value)> {
        self.bodies.lock().unwrap().clone()
    }
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if receiver.requests.fetch_add(1, Ordering::SeqCst) < receiver.fail_first {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let event_type = headers["x-m3u-proxy-event"].to_str().unwrap().to_owned();
    let body = serde_json::from_slice(&body).unwrap();
    receiver.bodies.lock().unwrap().push((event_type, body));
    StatusCode::NO_CONTENT
}

fn quick_limits() -> WebhookLimits {
    WebhookLimits {
        base_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        ..WebhookLimits::default()
    }
}

fn spec(url: &str, events: &[EventType]) -> WebhookSpec {
    WebhookSpec {
        url: url.to_owned(),
        events: events.to_vec(),
        ..WebhookSpec::default()
    }
}

#[tokio::test]
async fn webhook_receives_matching_events_as_json() {
    let (receiver, url) = Receiver::start(0).await;
    let bus = EventBus::new(64);
    let webhooks = Arc::new(Webhooks::new(quick_limits()));
    let failovers = webhooks
        .register(spec(&url, &[EventType::Failover, EventType::StreamDeleted]))
        .unwrap();
    let all_of_b = webhooks
        .register(WebhookSpec {
            stream_id: Some("b".into()),
            ..spec(&url, &[])
        })
        .unwrap();
    spawn_dispatcher(&bus, webhooks.clone(), reqwest::Client::new());

    bus.emit(EventType::StreamCreated, Some("a"), None, json!({}));
    let failover = bus.emit(EventType::Failover, Some("a"), None, json!({"index": 1}));
    let joined = bus.emit(EventType::ClientConnected, Some("b"), Some("c"), json!({}));
    wait_until("two deliveries", || receiver.bodies().len() == 2).await;
    // Nothing else arrives afterwards.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut bodies = receiver.bodies();
    bodies.sort_by_key(|(_, body)| body["id"].as_u64());
    // The event as JSON, plus `event_id` (the id as a string, for m3u-editor).
    let body_of = |event: &Event| {
        let mut body = serde_json::to_value(event).unwrap();
        body["event_id"] = event.id.to_string().into();
        body
    };
    assert_eq!(
        bodies,
        vec![
            ("failover".to_owned(), body_of(&failover)),
            ("client_connected".to_owned(), body_of(&joined)),
        ]
    );
    for id in [&failovers.id, &all_of_b.id] {
        let record = webhooks.get(id).unwrap();
        assert_eq!((record.delivered, record.failed), (1, 0));
        assert_eq!(record.last_status, Some(204));
        assert_eq!(record.last_error, None);
    }
}

#[tokio::test]
async fn webhook_answering_503_is_retried_until_it_accepts() {
    let (receiver, url) = Receiver::start(2).await;
    let bus = EventBus::new(64);
    let webhooks = Arc::new(Webhooks::new(quick_limits()));
    let hook = webhooks.register(spec(&url, &[])).unwrap();
    spawn_dispatcher(&bus, webhooks.clone(), reqwest::Client::new());

    bus.emit(EventType::UpstreamError, Some("a"), None, json!({}));
    wait_until("a delivery", || {
        webhooks.get(&hook.id).unwrap().delivered == 1
    })
    .await;
    let record = webhooks.get(&hook.id).unwrap();
    assert_eq!((record.retries, record.failed), (2, 0));
    assert_eq!(record.last_status, Some(204));
    assert_eq!(
        record.last_error.as_deref(),
        Some("receiver answered 503 Service Unavailable")
    );
    assert_eq!(receiver.requests.load(Ordering::SeqCst), 3);
    assert_eq!(receiver.bodies().len(), 1);
}

#[tokio::test]
async fn webhook_that_is_down_is_retried_then_failed() {
    // Bound but not listening: refused, and no other process can take the port meanwhile.
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind(([127, 0, 0, 1], 0).into()).unwrap();
    let port = closed.local_addr().unwrap().port();
    let bus = EventBus::new(64);
    let webhooks = Arc::new(Webhooks::new(quick_limits()));
    let hook = webhooks
        .register(WebhookSpec {
            max_retries: Some(3),
            ..spec(&format!("http://127.0.0.1:{port}/hook?token=secret"), &[])
        })
        .unwrap();
    spawn_dispatcher(&bus, webhooks.clone(), reqwest::Client::new());

    let started = Instant::now();
    bus.emit(EventType::StreamCreated, Some("a"), None, json!({}));
    wait_until("a failure", || webhooks.get(&hook.id).unwrap().failed == 1).await;
    let record = webhooks.get(&hook.id).unwrap();
    assert_eq!(
        (record.delivered, record.retries, record.in_flight),
        (0, 3, 0)
    );
    assert_eq!(record.last_status, None);
    let error = record.last_error.unwrap();
    assert!(error.starts_with("connection failed"), "{error}");
    assert!(!error.contains("secret"), "{error}");
    // Backoff 10 + 20 + 40 ms (capped) between the four attempts.
    assert!(started.elapsed() >= Duration::from_millis(70));
}

#[tokio::test]
async fn webhook_that_hangs_times_out() {
    let app = Router::new().route("/hook", post(std::future::pending::<()>));
    let addr = serve(app).await;
    let bus = EventBus::new(64);
    let webhooks = Arc::new(Webhooks::new(quick_limits()));
    let hook = webhooks
        .register(WebhookSpec {
            timeout_secs: Some(1),
            max_retries: Some(0),
            ..spec(&format!("http://{addr}/hook"), &[])
        })
        .unwrap();
    spawn_dispatcher(&bus, webhooks.clone(), reqwest::Client::new());

    let started = Instant::now();
    bus.emit(EventType::StreamCreated, Some("a"), None, json!({}));
    wait_until("a failure", || webhooks.get(&hook.id).unwrap().failed == 1).await;
    assert!(started.elapsed() >= Duration::from_secs(1));
    let record = webhooks.get(&hook.id).unwrap();
    assert_eq!(record.last_error.as_deref(), Some("timed out after 1 s"));
    assert_eq!((record.delivered, record.retries), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_stays_fast_while_a_webhook_hangs_and_every_event_is_accounted_for() {
    let app = Router::new().route("/hook", post(std::future::pending::<()>));
    let addr = serve(app).await;
    let bus = EventBus::new(1024);
    let webhooks = Arc::new(Webhooks::new(WebhookLimits {
        max_in_flight: 8,
        ..quick_limits()
    }));
    let hook = webhooks
        .register(WebhookSpec {
            timeout_secs: Some(1),
            max_retries: Some(0),
            ..spec(&format!("http://{addr}/hook"), &[])
        })
        .unwrap();
    spawn_dispatcher(&bus, webhooks.clone(), reqwest::Client::new());

    let started = Instant::now();
    for i in 0..10_000 {
        bus.emit(
            EventType::ClientConnected,
            Some("s"),
            None,
            json!({ "i": i }),
        );
    }
    let elapsed = started.elapsed();
    // An emit that waited on the hanging receiver would take its 1 s timeout, so 10,000 of
    // them hours; the bound is loose so that a busy machine (a debug build beside other
    // work takes about 0.6 s) does not fail it.
    assert!(
        elapsed < Duration::from_secs(5),
        "10,000 emits took {elapsed:?}"
    );

    // Each event is failed (timed out), dropped (too many in flight) or missed by a lagging
    // dispatcher, and counted as such.
    wait_until("every event accounted for", || {
        let record = webhooks.get(&hook.id).unwrap();
        record.failed + record.dropped + webhooks.missed_events() == 10_000
    })
    .await;
    let record = webhooks.get(&hook.id).unwrap();
    assert!(record.failed <= 8, "{record:?}");
    assert!(record.dropped > 0, "{record:?}");
    assert_eq!((record.delivered, record.in_flight), (0, 0));
}

#[test]
fn the_editors_events_reach_only_readers_that_name_them() {
    let bus = EventBus::new(8);
    let started = bus.emit(EventType::StreamStarted, Some("a"), None, json!({}));
    let created = bus.emit(EventType::StreamCreated, Some("a"), None, json!({}));
    let everything = EventFilter::default();
    assert!(!everything.matches(&started));
    assert!(everything.matches(&created));
    let editor = EventFilter {
        types: vec![EventType::StreamStarted, EventType::StreamStopped],
        ..EventFilter::default()
    };
    assert!(editor.matches(&started));
    assert!(!editor.matches(&created));
}

#[test]
fn a_url_registered_again_is_updated_not_doubled() {
    let webhooks = Webhooks::new(quick_limits());
    let first = webhooks
        .register_or_update(spec("http://editor/hook", &[EventType::StreamStopped]))
        .unwrap();
    assert!(first.1, "new");
    let again = webhooks
        .register_or_update(WebhookSpec {
            timeout_secs: Some(5),
            ..spec("http://editor/hook", &[EventType::StreamStarted])
        })
        .unwrap();
    assert!(!again.1, "updated");
    assert_eq!(again.0.id, first.0.id);
    let all = webhooks.list();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].events, vec![EventType::StreamStarted]);
    assert_eq!(all[0].timeout_secs, 5);
    assert!(webhooks.remove_url("http://editor/hook"));
    assert!(!webhooks.remove_url("http://editor/hook"));
    assert!(webhooks.is_empty());
}
