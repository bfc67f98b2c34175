//! Events as an operator sees them: the `GET /events` feed (Server-Sent Events) and
//! webhooks, including a receiver that is down while viewers keep playing.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::util::origin::{Fault, Origin};
use crate::util::player::Player;
use crate::util::ts_viewer::TsViewer;
use crate::util::{eventually, refused_addr, Proxy};

const MPEGURL: &str = "application/vnd.apple.mpegurl";

/// An HLS stream at `/{dir}/master.m3u8` with two 1000-byte segments.
fn put_stream(origin: &Origin, dir: &str) {
    origin.put(
        &format!("/{dir}/master.m3u8"),
        "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nmedia.m3u8\n",
        MPEGURL,
    );
    origin.put(
        &format!("/{dir}/media.m3u8"),
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\ns0.ts\n#EXTINF:2,\ns1.ts\n#EXT-X-ENDLIST\n",
        MPEGURL,
    );
    for s in ["s0", "s1"] {
        origin.put(&format!("/{dir}/{s}.ts"), vec![0x47u8; 1000], "video/mp2t");
    }
}

/// A reader of an SSE response: one `(event, data)` per message, comments skipped.
struct Feed {
    res: reqwest::Response,
    buf: String,
}

impl Feed {
    async fn open(proxy: &Proxy, query: &str) -> Feed {
        let res = proxy.get(&format!("/events{query}")).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let mut feed = Feed {
            res,
            buf: String::new(),
        };
        // The opening comment: once it is here, the feed is subscribed.
        while !feed.buf.contains("\n\n") {
            feed.read_more().await;
        }
        feed
    }

    async fn read_more(&mut self) {
        let chunk = self
            .res
            .chunk()
            .await
            .unwrap()
            .expect("the feed stays open");
        self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
    }

    /// The next event, or `None` when none comes within `wait`.
    async fn next_within(&mut self, wait: Duration) -> Option<(String, Value)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let message: String = self.buf.drain(..end + 2).collect();
                let mut event = None;
                let mut data = String::new();
                for line in message.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = Some(v.trim_start().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if let Some(event) = event {
                    return Some((event, serde_json::from_str(&data).unwrap()));
                }
            }
            tokio::time::timeout_at(deadline, self.read_more())
                .await
                .ok()?;
        }
    }

    async fn next(&mut self) -> (String, Value) {
        self.next_within(Duration::from_secs(5))
            .await
            .expect("an event within 5 s")
    }
}

#[tokio::test]
async fn the_feed_shows_each_event_once_in_order() {
    let origin = Origin::start().await;
    put_stream(&origin, "main");
    put_stream(&origin, "backup");
    put_stream(&origin, "other");
    let proxy = Proxy::start().await;
    let other = proxy.create_stream(&origin.url("/other/master.m3u8")).await;
    let other_id = other["stream_id"].as_str().unwrap().to_string();
    let mut all = Feed::open(&proxy, "").await;
    let mut only_other = Feed::open(
        &proxy,
        &format!("?stream_id={other_id}&types=stream_deleted,failover"),
    )
    .await;

    let body = json!({
        "url": origin.url("/main/master.m3u8"),
        "failover_urls": [origin.url("/backup/master.m3u8")],
    });
    let (status, created) = proxy.post_stream(body.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = created["stream_id"].as_str().unwrap().to_string();
    let (status, _) = proxy.post_stream(body).await;
    assert_eq!(status, StatusCode::OK);
    let viewer = Player::new(Some("mpv"), Some("viewer1"));
    viewer.play(&proxy, &id).await;
    proxy.switch_now(&id).await;
    // Playing on from the backup is the same viewer: no second `client_connected`.
    viewer.play(&proxy, &id).await;
    assert_eq!(origin.hits("/backup/s0.ts"), 1);
    for stream in [&id, &other_id] {
        let res = proxy
            .http
            .delete(proxy.url(&format!("/streams/{stream}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }

    let expected = [
        ("stream_created", id.as_str(), None),
        ("stream_updated", &id, None),
        ("client_connected", &id, Some("viewer1")),
        ("failover", &id, None),
        ("client_disconnected", &id, Some("viewer1")),
        ("stream_deleted", &id, None),
        ("stream_deleted", &other_id, None),
    ];
    let mut last_id = 0;
    for (kind, stream, client) in expected {
        let (event, data) = all.next().await;
        assert_eq!(event, kind, "{data}");
        assert_eq!(data["event_type"], kind);
        assert_eq!(data["stream_id"], stream, "{data}");
        assert_eq!(data["client_id"].as_str(), client, "{data}");
        let event_id = data["id"].as_u64().unwrap();
        assert!(event_id > last_id, "ids increase: {data}");
        last_id = event_id;
        match kind {
            "failover" => {
                assert_eq!(data["data"]["from_index"], 0);
                assert_eq!(data["data"]["to_index"], 1);
                assert_eq!(data["data"]["reason"], "manual");
            }
            "client_disconnected" => assert_eq!(data["data"]["reason"], "stream_deleted"),
            "client_connected" => assert_eq!(data["data"]["user_agent"], "mpv"),
            _ => {}
        }
    }
    assert_eq!(
        all.next_within(Duration::from_millis(300)).await,
        None,
        "each event once"
    );
    let (event, data) = only_other.next().await;
    assert_eq!(
        (event.as_str(), &data["stream_id"]),
        ("stream_deleted", &json!(other_id))
    );
    assert_eq!(
        only_other.next_within(Duration::from_millis(100)).await,
        None
    );
}

async fn register(proxy: &Proxy, body: Value) -> String {
    let res = proxy
        .http
        .post(proxy.url("/webhooks"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let hook: Value = res.json().await.unwrap();
    hook["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn webhooks_get_the_events_they_asked_for() {
    let origin = Origin::start().await;
    put_stream(&origin, "main");
    let (url, seen) = crate::util::webhook_receiver().await;
    let proxy = Proxy::start().await;
    let hook = register(
        &proxy,
        json!({"url": url, "events": ["stream_created", "stream_deleted"]}),
    )
    .await;
    let id = proxy.create_stream(&origin.url("/main/master.m3u8")).await["stream_id"]
        .as_str()
        .unwrap()
        .to_string();
    Player::new(None, Some("v")).play(&proxy, &id).await;
    proxy
        .http
        .delete(proxy.url(&format!("/streams/{id}")))
        .send()
        .await
        .unwrap();
    let record = eventually(Duration::from_secs(5), "two deliveries", || async {
        let h = proxy.get_json(&format!("/webhooks/{hook}")).await;
        (h["delivered"] == 2).then_some(h)
    })
    .await;
    assert_eq!(record["failed"], 0);
    assert_eq!(record["retries"], 0);
    assert_eq!(record["last_status"], 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut bodies = seen.lock().unwrap().clone();
    bodies.sort_by_key(|b| b["id"].as_u64());
    let got: Vec<(&str, &str)> = bodies
        .iter()
        .map(|b| {
            (
                b["event_type"].as_str().unwrap(),
                b["stream_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![("stream_created", id.as_str()), ("stream_deleted", &id)],
        "only the types asked for, once each"
    );
}

#[tokio::test]
async fn a_receiver_that_is_down_is_retried_and_never_slows_playback() {
    let origin = Origin::start().await;
    put_stream(&origin, "main");
    // A port nobody listens on.
    let (_guard, closed) = refused_addr();
    let proxy = Proxy::start().await;
    let hook = register(
        &proxy,
        json!({
            "url": format!("http://{closed}/hook"),
            "events": ["client_connected"],
            "max_retries": 2,
            "timeout_secs": 1,
        }),
    )
    .await;
    let id = proxy.create_stream(&origin.url("/main/master.m3u8")).await["stream_id"]
        .as_str()
        .unwrap()
        .to_string();
    let viewer = Player::new(Some("vlc"), Some("during-outage"));
    let started = Instant::now();
    let (_, segments) = viewer.open(&proxy, &id).await;
    let mut received = Vec::new();
    for s in &segments {
        received.push(viewer.fetch(s).await);
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "playback waited: {took:?}");
    assert_eq!(received.len(), 2);
    for body in &received {
        assert_eq!(&body[..], &[0x47u8; 1000][..], "same bytes as the origin");
    }
    // Still retrying (the second retry is due ~1.5 s after the event) while playback is done.
    let during = proxy.get_json(&format!("/webhooks/{hook}")).await;
    assert_eq!(during["in_flight"], 1, "{during}");

    let record = eventually(
        Duration::from_secs(10),
        "the delivery to give up",
        || async {
            let h = proxy.get_json(&format!("/webhooks/{hook}")).await;
            (h["failed"] == 1).then_some(h)
        },
    )
    .await;
    assert_eq!(record["retries"], 2, "{record}");
    assert_eq!(record["delivered"], 0);
    assert_eq!(record["in_flight"], 0);
    assert!(
        record["last_error"]
            .as_str()
            .unwrap()
            .contains("connection failed"),
        "{record}"
    );
    let stats = proxy.get_json("/clients/during-outage").await;
    assert_eq!(stats["segments_served"], 2);
}

/// Reads the next three events of `feed`, the failures of one request's tries, and checks
/// they are stamped as far apart as the retries were: the backoff is 200 ms × n, jittered
/// ±50%, so at least 100 ms between tries.
async fn three_retries_apart(feed: &mut Feed) {
    let mut stamps = Vec::new();
    for _ in 0..3 {
        let (_, event) = feed.next().await;
        let at = event["timestamp"].as_str().unwrap().to_owned();
        stamps.push(chrono::DateTime::parse_from_rfc3339(&at).unwrap());
    }
    for pair in stamps.windows(2) {
        let gap = (pair[1] - pair[0]).num_milliseconds();
        assert!(gap >= 90, "events {gap} ms apart: {stamps:?}");
    }
}

/// Each retry's failure is stamped when it happens, on the wall clock: the events of one
/// request's retries are as far apart as the retries were.
#[tokio::test]
async fn retry_failures_carry_the_time_each_one_happened() {
    use crate::util::origin::Fault;
    let origin = Origin::start().await;
    origin.fault("/down/index.m3u8", Fault::Status(503));
    let proxy = Proxy::start_with(|c| {
        c.failover.retries = 2;
        c.failover.backoff = Duration::from_millis(200);
    })
    .await;
    let id = proxy.create_stream(&origin.url("/down/index.m3u8")).await["stream_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut feed = Feed::open(&proxy, "?types=upstream_error").await;
    let res = proxy.get(&format!("/hls/{id}/playlist.m3u8")).await;
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    three_retries_apart(&mut feed).await;
    // Report timestamps are read from the wall clock too, not the start time plus a
    // monotonic count of milliseconds (which gave them all the start's sub-millisecond digits).
    let parse = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    let started = parse(&proxy.get_json("/health").await["started_at"]);
    let detail = proxy.get_json(&format!("/streams/{id}")).await;
    let client = &detail["clients"][0];
    let stamps = [
        parse(&client["first_seen"]),
        parse(&client["last_seen"]),
        parse(&detail["stream"]["last_access"]),
    ];
    assert!(
        stamps
            .iter()
            .any(|t| (*t - started).num_microseconds().unwrap() % 1000 != 0),
        "start + whole milliseconds: {started} {stamps:?}"
    );
}

#[tokio::test]
async fn the_failures_of_a_reconnect_are_announced_oldest_first() {
    let origin = Origin::start().await;
    origin.live_ts("/a.ts", 200_000);
    origin.live_ts("/b.ts", 200_000);
    origin.fault("/b.ts", Fault::Status(503));
    origin.live_ts("/c.ts", 200_000);
    origin.fault("/c.ts", Fault::Status(502));
    let proxy = Proxy::start_with(|c| c.failover.retries = 0).await;
    let (id, endpoint) = proxy
        .register(
            &origin.url("/a.ts"),
            &[origin.url("/b.ts"), origin.url("/c.ts")],
        )
        .await;
    let mut feed = Feed::open(&proxy, &format!("?stream_id={id}&types=upstream_error")).await;
    let mut viewer = TsViewer::open(&proxy, &endpoint).await;
    viewer.read_packets(50, Duration::from_secs(5)).await;
    // Off to b, which answers 503; then c, 502; then back to a, which plays.
    proxy.switch_now(&id).await;
    let mut errors = Vec::new();
    for _ in 0..2 {
        let (_, event) = feed.next().await;
        errors.push(event["data"]["error"].as_str().unwrap().to_string());
    }
    assert_eq!(errors, ["upstream answered 503", "upstream answered 502"]);
    let read = viewer.numbers().len();
    viewer.read_packets(read + 50, Duration::from_secs(5)).await;
}

/// The retries of a live feed's reconnect are announced together once it is over, each
/// with the time it happened: as far apart as the retries were.
#[tokio::test]
async fn the_failures_of_a_reconnect_carry_the_time_each_one_happened() {
    let origin = Origin::start().await;
    origin.live_ts("/a.ts", 200_000);
    origin.live_ts("/b.ts", 200_000);
    origin.fault("/b.ts", Fault::Status(503));
    let proxy = Proxy::start_with(|c| {
        c.failover.retries = 2;
        c.failover.backoff = Duration::from_millis(200);
    })
    .await;
    let (id, endpoint) = proxy
        .register(&origin.url("/a.ts"), &[origin.url("/b.ts")])
        .await;
    let mut feed = Feed::open(&proxy, &format!("?stream_id={id}&types=upstream_error")).await;
    let mut viewer = TsViewer::open(&proxy, &endpoint).await;
    viewer.read_packets(50, Duration::from_secs(5)).await;
    // Off to b, which answers 503 three times (two retries, 200 ms × n apart), then back to a.
    proxy.switch_now(&id).await;
    three_retries_apart(&mut feed).await;
    let read = viewer.numbers().len();
    viewer.read_packets(read + 50, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn shutdown_does_not_wait_for_an_events_reader() {
    let proxy = Proxy::start().await;
    let feed = Feed::open(&proxy, "").await;
    let started = Instant::now();
    proxy.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown took {:?} with an /events reader connected",
        started.elapsed()
    );
    drop(feed);
}
