//! The fleet view (issue 14): presence and fleet-wide figures, one event feed, provider
//! slots shared through Redis. Each test starts its own `redis-server`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use m3u_proxy::events::{EventBus, EventType};
use m3u_proxy::fleet::presence::Presence;
use m3u_proxy::fleet::slots::RedisSlots;
use m3u_proxy::fleet::{Fleet, RedisSettings};
use m3u_proxy::providers::{Acquired, Holder, SlotPool};
use m3u_proxy::registry::Registry;

use crate::util::redis::{require_redis, RedisServer};
use crate::util::{eventually, hls_settings};

async fn instance(server: &RedisServer) -> Arc<Fleet> {
    let settings = RedisSettings {
        url: server.url(),
        prefix: "t".into(),
    };
    Arc::new(Fleet::connect(&settings).await.expect("redis answers"))
}

fn holder(stream: &str) -> Holder {
    Holder {
        stream_id: Some(stream.into()),
        kind: "direct",
    }
}

#[tokio::test]
async fn an_instance_sees_the_viewers_and_counters_of_the_others() {
    if !require_redis() {
        return;
    }
    let server = RedisServer::start();
    let (fa, fb) = (instance(&server).await, instance(&server).await);
    let (ra, rb) = (
        Arc::new(Registry::new(b"secret")),
        Arc::new(Registry::new(b"secret")),
    );
    let (sa, _) = ra.upsert(hls_settings("http://127.0.0.1:9/a.m3u8"));
    let (sb, _) = rb.upsert(hls_settings("http://127.0.0.1:9/a.m3u8"));
    assert_eq!(sa.id, sb.id, "one secret, one id");
    rb.client("viewer-on-b", &sb.id, "10.0.0.2", "VLC/3");
    let address = |a: &str| Arc::new(std::sync::OnceLock::from(a.to_string()));
    let a = Presence::new(fa.clone(), ra.clone(), address("127.0.0.1:1"));
    let b = Presence::new(fb.clone(), rb.clone(), address("127.0.0.1:2"));
    b.beat().await.unwrap();
    a.beat().await.unwrap();

    // Stored counters (as the flush writes them) plus A's increments not flushed yet.
    let mut conn = fa.conn.clone();
    let _: () = redis::cmd("HINCRBY")
        .arg("t:totals")
        .arg("bytes")
        .arg(1000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("HINCRBY")
        .arg(format!("t:counters:{}", sa.id))
        .arg("bytes")
        .arg(700)
        .query_async(&mut conn)
        .await
        .unwrap();
    ra.totals.bytes.fetch_add(5, Ordering::Relaxed);
    sa.counters.bytes.fetch_add(5, Ordering::Relaxed);
    a.read().await.unwrap();

    let view = a.view();
    assert_eq!(view.totals()[0], 1005);
    let clients = view.all_clients(Vec::new());
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0].client_id, "viewer-on-b");
    assert_eq!(
        clients[0].instance.as_deref(),
        Some(fb.instance_id.as_str())
    );
    let mut info = ra.stream_info(&sa);
    assert_eq!(info.client_count, 0);
    view.stream(&sa, &mut info);
    assert_eq!((info.client_count, info.total_bytes_served), (1, 705));
    let instances = view.instances();
    assert_eq!(instances.len(), 2);
    assert_eq!(instances[0].id, fa.instance_id, "this instance first");
    assert_eq!(
        (instances[1].address.as_str(), instances[1].clients),
        ("127.0.0.1:2", 1)
    );

    // An instance that leaves is out of the view at the next read.
    b.leave().await;
    a.read().await.unwrap();
    let view = a.view();
    assert_eq!(view.instances().len(), 1);
    assert!(view.all_clients(Vec::new()).is_empty());
}

#[tokio::test]
async fn events_of_one_instance_reach_the_bus_of_another_once() {
    if !require_redis() {
        return;
    }
    let server = RedisServer::start();
    let (fa, fb) = (instance(&server).await, instance(&server).await);
    let (bus_a, bus_b) = (EventBus::new(1024), EventBus::new(1024));
    let tasks_a = m3u_proxy::fleet::events::spawn(fa.clone(), &bus_a);
    let tasks_b = m3u_proxy::fleet::events::spawn(fb.clone(), &bus_b);
    let mut on_b = bus_b.subscribe();
    let mut on_a = bus_a.subscribe();
    // The subscriptions are made in the background: emit until one arrives.
    let remote = eventually(Duration::from_secs(5), "A's event on B's bus", || {
        bus_a.emit(
            EventType::ClientConnected,
            Some("s1"),
            Some("c1"),
            serde_json::json!({}),
        );
        let next = on_b.try_recv().ok();
        async move {
            if next.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            next
        }
    })
    .await;
    assert_eq!(remote.event_type, EventType::ClientConnected);
    assert_eq!(remote.instance.as_deref(), Some(fa.instance_id.as_str()));
    assert_eq!(remote.client_id.as_deref(), Some("c1"));
    assert!(!bus_b.is_local(&remote));

    // B's own event goes to A; nothing comes back to where it started.
    bus_b.emit(
        EventType::StreamCreated,
        Some("s2"),
        None,
        serde_json::json!({}),
    );
    let on_a_events = eventually(Duration::from_secs(5), "B's event on A's bus", || {
        let mut seen = Vec::new();
        while let Ok(e) = on_a.try_recv() {
            seen.push(e);
        }
        let found = seen
            .iter()
            .any(|e| e.event_type == EventType::StreamCreated);
        async move { found.then_some(seen) }
    })
    .await;
    let injected: Vec<_> = on_a_events.iter().filter(|e| !bus_a.is_local(e)).collect();
    assert_eq!(injected.len(), 1, "{on_a_events:?}");
    assert_eq!(
        injected[0].instance.as_deref(),
        Some(fb.instance_id.as_str())
    );
    let mut created_on_b = 0;
    while let Ok(e) = on_b.try_recv() {
        assert!(bus_b.is_local(&e) || e.instance.as_deref() == Some(fa.instance_id.as_str()));
        created_on_b += usize::from(e.event_type == EventType::StreamCreated);
    }
    assert_eq!(created_on_b, 1, "B's own event came back to B");
    for t in tasks_a.into_iter().chain(tasks_b) {
        t.abort();
    }
}

#[tokio::test]
async fn a_provider_limit_holds_across_instances() {
    if !require_redis() {
        return;
    }
    let server = RedisServer::start();
    let a = RedisSlots::new(instance(&server).await);
    let b = RedisSlots::new(instance(&server).await);
    let _tasks: Vec<_> = a.spawn().into_iter().chain(b.spawn()).collect();
    let Acquired::Granted(guard) = a.acquire("p", 1, holder("s-a")).await.unwrap() else {
        panic!("the first slot")
    };
    match b.acquire("p", 1, holder("s-b")).await.unwrap() {
        Acquired::Full(by) => {
            assert_eq!(by.len(), 1);
            assert_eq!(by[0].stream_id.as_deref(), Some("s-a"));
        }
        Acquired::Granted(_) => panic!("two slots of a provider limited to one"),
    }
    assert_eq!(b.held("p").await.unwrap().len(), 1, "B sees A's slot");

    // B stops A's stream: A's holder is told, gives its slot back, and B gets it.
    let stop = guard.stop.clone();
    let holder_task = tokio::spawn(async move {
        stop.fired().await;
        drop(guard);
    });
    tokio::time::timeout(Duration::from_secs(5), b.stop_stream("p", "s-a"))
        .await
        .expect("released in time")
        .unwrap();
    holder_task.await.unwrap();
    let Acquired::Granted(_by_b) = b.acquire("p", 1, holder("s-b")).await.unwrap() else {
        panic!("the freed slot")
    };
    assert!(matches!(
        a.acquire("p", 1, holder("s-a")).await.unwrap(),
        Acquired::Full(_)
    ));
}

#[tokio::test]
async fn a_crashed_holders_slot_is_free_when_its_lease_ends() {
    if !require_redis() {
        return;
    }
    let server = RedisServer::start();
    let crashed = RedisSlots::with_lease(instance(&server).await, Duration::from_secs(2));
    let other = RedisSlots::new(instance(&server).await);
    let Acquired::Granted(guard) = crashed.acquire("p", 1, holder("a")).await.unwrap() else {
        panic!()
    };
    // Never released, never renewed: as if the process had been killed.
    std::mem::forget(guard);
    assert!(matches!(
        other.acquire("p", 1, holder("b")).await.unwrap(),
        Acquired::Full(_)
    ));
    let started = std::time::Instant::now();
    eventually(Duration::from_secs(5), "the lease to expire", || async {
        matches!(
            other.acquire("p", 1, holder("b")).await.unwrap(),
            Acquired::Granted(_)
        )
        .then_some(())
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "freed before its lease ended"
    );
}

#[tokio::test]
async fn slots_come_from_the_local_pool_while_redis_is_down() {
    if !require_redis() {
        return;
    }
    let mut server = RedisServer::start();
    let slots = RedisSlots::new(instance(&server).await);
    server.stop();
    let started = std::time::Instant::now();
    let Acquired::Granted(_first) = slots.acquire("p", 1, holder("a")).await.unwrap() else {
        panic!("a local slot")
    };
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "playback waited on Redis"
    );
    // The limit still holds, here.
    assert!(matches!(
        slots.acquire("p", 1, holder("b")).await.unwrap(),
        Acquired::Full(_)
    ));
}

// --- Instances of the proxy on one Redis -------------------------------------------------

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::util::origin::Origin;
use crate::util::Proxy;
use m3u_proxy::config::StoreBackend;

/// An in-process instance of the fleet on `redis`.
async fn proxy(redis: &RedisServer) -> Proxy {
    let url = redis.url();
    Proxy::start_with(move |c| {
        c.store = StoreBackend::Redis;
        c.redis = Some(RedisSettings {
            url,
            prefix: "view".into(),
        });
        c.secret = None;
    })
    .await
}

/// An instance's own id, as its `/health` breakdown gives it first.
async fn id_of(p: &Proxy) -> String {
    let health = p.get_json("/health").await;
    health["instances"][0]["id"].as_str().unwrap().to_string()
}

/// Plays `path` on `p` to its end as the viewer `agent`; returns the bytes.
async fn play(p: &Proxy, path: &str, agent: &str) -> usize {
    let res = p
        .http
        .get(p.url(path))
        .header("user-agent", agent)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.bytes().await.unwrap().len()
}

#[tokio::test]
async fn stats_on_one_instance_sum_the_viewers_and_bytes_of_the_others() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start();
    let origin = Origin::start().await;
    origin.put("/film.mp4", vec![3u8; 40_000], "video/mp4");
    let (a, b, c) = (
        proxy(&redis).await,
        proxy(&redis).await,
        proxy(&redis).await,
    );
    let mut endpoint = String::new();
    let mut id = String::new();
    for p in [&a, &b, &c] {
        (id, endpoint) = p.register(&origin.url("/film.mp4"), &[]).await;
    }
    let (id_b, id_c) = (id_of(&b).await, id_of(&c).await);
    assert_eq!(play(&b, &endpoint, "viewer-on-b").await, 40_000);
    assert_eq!(play(&c, &endpoint, "viewer-on-c").await, 40_000);
    let played = std::time::Instant::now();

    let stats = eventually(
        Duration::from_secs(2),
        "B's and C's viewers on A",
        || async {
            let stats = a.get_json("/stats").await;
            (stats["proxy"]["total_clients"] == 2).then_some(stats)
        },
    )
    .await;
    assert!(played.elapsed() < Duration::from_secs(2));
    let on = crate::util::clients_by_instance(&stats);
    assert_eq!(
        on,
        [
            ("viewer-on-b".to_string(), id_b.clone()),
            ("viewer-on-c".to_string(), id_c.clone())
        ]
    );
    let instances = stats["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 3, "{stats}");
    assert_eq!(instances[0]["address"], a.addr.to_string());
    let b_row = instances.iter().find(|i| i["id"] == id_b.as_str()).unwrap();
    assert_eq!(
        (b_row["clients"].as_u64(), b_row["bytes"].as_u64()),
        (Some(1), Some(40_000))
    );

    // The bytes come through the stored counters once B and C have flushed.
    let stats = eventually(Duration::from_secs(5), "the fleet's bytes on A", || async {
        let stats = a.get_json("/stats").await;
        (stats["proxy"]["total_bytes_served"] == 80_000).then_some(stats)
    })
    .await;
    let stream = &stats["streams"][0];
    assert_eq!(
        (
            stream["client_count"].as_u64(),
            stream["total_bytes_served"].as_u64()
        ),
        (Some(2), Some(80_000))
    );
    let detail = a.get_json(&format!("/streams/{id}")).await;
    assert_eq!(detail["client_count"], 2, "{detail}");
    assert_eq!(detail["stream"]["total_bytes_served"], 80_000);
    let listed = a.get_json("/streams").await;
    assert_eq!(listed["streams"][0]["client_count"], 2);
    let clients = a.get_json("/clients").await;
    assert_eq!(clients["total"], 2);
    let one = clients["clients"][0]["client_id"]
        .as_str()
        .unwrap()
        .to_string();
    let found = a.get_json(&format!("/clients/{one}")).await;
    assert_eq!(
        found["client_id"],
        one.as_str(),
        "another instance's client by id"
    );
    let health = a.get_json("/health").await;
    assert_eq!(
        (
            health["clients"].as_u64(),
            health["total_bytes_served"].as_u64()
        ),
        (Some(2), Some(80_000))
    );
    assert_eq!(health["stats"]["total_clients"], 2);
    assert_eq!(health["instances"].as_array().unwrap().len(), 3);
    let page = a.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        crate::util::metric_sample(&page, "m3u_proxy_fleet_instances"),
        3
    );
    assert_eq!(
        crate::util::metric_sample(&page, "m3u_proxy_fleet_bytes_served_total"),
        80_000
    );
    assert_eq!(
        crate::util::metric_sample(&page, "m3u_proxy_bytes_served_total"),
        0,
        "A's own family"
    );

    // A stopped instance leaves the view (at once when it stops cleanly).
    c.stop().await;
    eventually(Duration::from_secs(3), "C out of A's view", || async {
        let stats = a.get_json("/stats").await;
        (stats["instances"].as_array().unwrap().len() == 2 && stats["proxy"]["total_clients"] == 1)
            .then_some(())
    })
    .await;
}

/// Reads an SSE response until an event's JSON satisfies `wanted`.
async fn sse_until(res: reqwest::Response, wanted: impl Fn(&Value) -> bool) -> Value {
    use futures_util::StreamExt;
    let mut body = res.bytes_stream();
    let mut text = String::new();
    loop {
        let chunk = body.next().await.expect("the feed goes on").unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let message: String = text.drain(..end + 2).collect();
            for line in message.lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    if let Ok(v) = serde_json::from_str::<Value>(data.trim()) {
                        if wanted(&v) {
                            return v;
                        }
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn the_event_feed_of_one_instance_shows_the_others_and_webhooks_fire_once() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start();
    let origin = Origin::start().await;
    origin.put("/film.mp4", vec![3u8; 10_000], "video/mp4");
    let (a, b, c) = (
        proxy(&redis).await,
        proxy(&redis).await,
        proxy(&redis).await,
    );
    let (id_a, id_c) = (id_of(&a).await, id_of(&c).await);
    let (hook_url, seen) = crate::util::webhook_receiver().await;
    // Every follower of p:changes is running (a stream created on B is known on A and C)
    // before the webhook is written.
    let (_, endpoint) = b.register(&origin.url("/film.mp4"), &[]).await;
    for p in [&a, &c] {
        eventually(
            Duration::from_secs(2),
            "B's stream known everywhere",
            || async { (p.get_json("/streams").await["total"] == 1).then_some(()) },
        )
        .await;
    }
    // One webhook, registered on A: every instance knows it, every instance sees every
    // instance's events, and each event is delivered once, by the instance where it happened.
    let res = a
        .http
        .post(a.url("/webhooks"))
        .json(&json!({"url": hook_url, "events": ["client_connected"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    for p in [&b, &c] {
        eventually(
            Duration::from_secs(2),
            "the webhook known everywhere",
            || async {
                let hooks = p.get_json("/webhooks").await;
                (hooks.to_string().contains(&hook_url)).then_some(())
            },
        )
        .await;
    }
    let feed = a
        .http
        .get(a.url("/events?types=client_connected"))
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), StatusCode::OK);
    play(&c, &endpoint, "viewer-on-c").await;
    let event = tokio::time::timeout(
        Duration::from_secs(5),
        sse_until(feed, |e| e["instance"] == id_c.as_str()),
    )
    .await
    .expect("C's client_connected on A's feed");
    assert_eq!(event["event_type"], "client_connected");
    play(&a, &endpoint, "viewer-on-a").await;

    // A's and C's events, each delivered once: two deliveries, not one per instance.
    // Generous: on a loaded machine a delivery may need its retry.
    let both = crate::util::poll_for(Duration::from_secs(15), || async {
        (seen.lock().unwrap().len() >= 2).then_some(())
    })
    .await;
    if both.is_none() {
        let mut hooks = Vec::new();
        for p in [&a, &b, &c] {
            hooks.push(p.get_json("/webhooks").await);
        }
        panic!(
            "deliveries: {:?}\nwebhooks on A, B, C: {hooks:?}",
            seen.lock().unwrap()
        );
    }
    // Give a duplicate (from B or the other instance) time to show up; deliveries of the
    // same process are quick, so one second is far beyond the first two.
    let settled = crate::util::poll_for(Duration::from_secs(1), || async {
        (seen.lock().unwrap().len() > 2).then_some(())
    })
    .await;
    assert!(settled.is_none(), "{:?}", seen.lock().unwrap());
    let mut from: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|d| d["instance"].as_str().unwrap_or_default().to_string())
        .collect();
    from.sort();
    let mut expected = vec![id_a, id_c];
    expected.sort();
    assert_eq!(from, expected);
}

/// Opens `path` on `p` and reads its first bytes; the response stays open while kept.
async fn watch(p: &Proxy, path: &str) -> reqwest::Response {
    let mut res = p.http.get(p.url(path)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.chunk().await.unwrap().is_some(), "bytes flow");
    res
}

/// Registers `path` of `origin` on `p` as a live TS stream; returns its `/stream/` path.
async fn live_stream(p: &Proxy, origin: &Origin, path: &str) -> String {
    let (status, created) = p
        .post_stream(json!({"url": origin.url(path), "stream_type": "direct"}))
        .await;
    assert!(status.is_success(), "{status} {created}");
    created["direct_url"].as_str().unwrap().to_string()
}

/// Defines provider `acc` (every URL of `origin`, at most one connection) on `on`, and
/// waits until every one of `all` knows it.
async fn one_slot_provider(on: &Proxy, all: &[&Proxy], origin: &Origin) {
    let host = origin
        .url("/")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let res = on
        .http
        .put(on.url("/providers/acc"))
        .json(&json!({"hosts": [host], "max_connections": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    for p in all {
        eventually(
            Duration::from_secs(2),
            "the provider known everywhere",
            || async { (p.get("/providers/acc").await.status() == StatusCode::OK).then_some(()) },
        )
        .await;
    }
}

#[tokio::test]
async fn a_provider_limit_of_one_holds_for_two_instances() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start();
    let origin = Origin::start().await;
    origin.live_ts("/one.ts", 100_000);
    origin.live_ts("/two.ts", 100_000);
    let (a, b) = (proxy(&redis).await, proxy(&redis).await);
    one_slot_provider(&a, &[&b], &origin).await;
    let one = live_stream(&a, &origin, "/one.ts").await;
    let two = live_stream(&b, &origin, "/two.ts").await;
    let viewer = watch(&a, &one).await;

    // A holds the provider's one slot: B's channel of the same provider is refused.
    let refused = b.get(&two).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "provider_full", "{body}");
    let stats = b.get_json("/stats").await;
    assert_eq!(
        stats["providers"][0]["active_connections"], 1,
        "B sees A's slot"
    );

    // A's viewer leaves, A gives the slot back, and B's channel plays.
    drop(viewer);
    eventually(Duration::from_secs(10), "B's channel playing", || async {
        let mut res = b.http.get(b.url(&two)).send().await.ok()?;
        (res.status() == StatusCode::OK && !res.chunk().await.ok()??.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_killed_instance_leaves_the_view_and_frees_its_slots() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start();
    let origin = Origin::start().await;
    origin.live_ts("/one.ts", 100_000);
    origin.live_ts("/two.ts", 100_000);
    let a = proxy(&redis).await;
    let url = redis.url();
    let (mut killed, base) = crate::binary::start(|port| {
        (
            vec![
                ("M3U_PROXY_HOST", "127.0.0.1".to_string()),
                ("M3U_PROXY_PORT", port.to_string()),
                ("M3U_PROXY_STORE", "redis".to_string()),
                ("REDIS_URL", url.clone()),
                ("REDIS_PREFIX", "view".to_string()),
                ("LOG_LEVEL", "warn".to_string()),
            ],
            vec![],
        )
    })
    .await;
    one_slot_provider(&a, &[&a], &origin).await;
    let one = live_stream(&a, &origin, "/one.ts").await;
    let two = live_stream(&a, &origin, "/two.ts").await;
    let http = crate::util::http_client();
    eventually(
        Duration::from_secs(2),
        "the provider on the binary",
        || async {
            let res = http
                .get(format!("{base}/providers/acc"))
                .send()
                .await
                .ok()?;
            (res.status() == StatusCode::OK).then_some(())
        },
    )
    .await;
    let mut viewer = http.get(format!("{base}{one}")).send().await.unwrap();
    assert_eq!(viewer.status(), StatusCode::OK);
    assert!(viewer.chunk().await.unwrap().is_some());
    let id_a = id_of(&a).await;
    // The viewers A reports on other instances (A's own refused request is a client too).
    let elsewhere = |stats: &Value| {
        stats["clients"].as_array().map_or(0, |cs| {
            cs.iter().filter(|c| c["instance"] != id_a.as_str()).count()
        })
    };
    eventually(
        Duration::from_secs(2),
        "the binary's viewer on A",
        || async { (elsewhere(&a.get_json("/stats").await) == 1).then_some(()) },
    )
    .await;
    assert_eq!(a.get(&two).await.status(), StatusCode::SERVICE_UNAVAILABLE);

    // SIGKILL: no goodbye, no release. Its heartbeat expires (15 s), its lease too (30 s).
    killed.kill().unwrap();
    killed.wait().unwrap();
    let killed_at = std::time::Instant::now();
    eventually(
        Duration::from_secs(30),
        "its viewer out of A's view",
        || async {
            let stats = a.get_json("/stats").await;
            (elsewhere(&stats) == 0 && stats["instances"].as_array()?.len() == 1).then_some(())
        },
    )
    .await;
    eventually(
        Duration::from_secs(31).saturating_sub(killed_at.elapsed()),
        "its provider slot freed",
        || async {
            let mut res = a.http.get(a.url(&two)).send().await.ok()?;
            (res.status() == StatusCode::OK && !res.chunk().await.ok()??.is_empty()).then_some(())
        },
    )
    .await;
    assert!(killed_at.elapsed() <= Duration::from_secs(31));
    drop(viewer);
}
