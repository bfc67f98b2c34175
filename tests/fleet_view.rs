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
    let a = Presence::new(fa.clone(), ra.clone(), "127.0.0.1:1".into());
    let b = Presence::new(fb.clone(), rb.clone(), "127.0.0.1:2".into());
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
    assert_eq!(clients[0].instance.as_deref(), Some(fb.instance_id.as_str()));
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
        bus_a.emit(EventType::ClientConnected, Some("s1"), Some("c1"), serde_json::json!({}));
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
    bus_b.emit(EventType::StreamCreated, Some("s2"), None, serde_json::json!({}));
    let on_a_events = eventually(Duration::from_secs(5), "B's event on A's bus", || {
        let mut seen = Vec::new();
        while let Ok(e) = on_a.try_recv() {
            seen.push(e);
        }
        let found = seen.iter().any(|e| e.event_type == EventType::StreamCreated);
        async move { found.then_some(seen) }
    })
    .await;
    let injected: Vec<_> = on_a_events.iter().filter(|e| !bus_a.is_local(e)).collect();
    assert_eq!(injected.len(), 1, "{on_a_events:?}");
    assert_eq!(injected[0].instance.as_deref(), Some(fb.instance_id.as_str()));
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
    assert!(started.elapsed() >= Duration::from_millis(1500), "freed before its lease ended");
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
    assert!(started.elapsed() < Duration::from_secs(1), "playback waited on Redis");
    // The limit still holds, here.
    assert!(matches!(
        slots.acquire("p", 1, holder("b")).await.unwrap(),
        Acquired::Full(_)
    ));
}
