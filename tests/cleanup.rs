//! Cleanup on the tokio clock, with time paused: the maintenance task sweeps every
//! `CLEANUP_INTERVAL`, never earlier; clients idle past `CLIENT_TIMEOUT` and streams idle
//! past `STREAM_TIMEOUT` go, with their events; anything with an open connection stays.
//! The same task turns byte counts into bytes-per-second figures every second.

use std::sync::Arc;
use std::time::Duration;

use m3u_proxy::config::Config;
use m3u_proxy::events::{Event, EventType};
use m3u_proxy::registry::{Registry, Viewing};
use m3u_proxy::server::{build_state, spawn_maintenance};
use tokio::sync::broadcast;
use tokio::time::{sleep_until, Instant};

use crate::util::hls_settings;

/// Every event emitted so far, as (type, stream id, client id, reason).
fn drain(rx: &mut broadcast::Receiver<Event>) -> Vec<(EventType, String, Option<String>, String)> {
    let mut out = vec![];
    while let Ok(e) = rx.try_recv() {
        // m3u-editor's restatements (stream_started/stopped) are tested in editor.rs.
        if e.event_type.is_opt_in() {
            continue;
        }
        out.push((
            e.event_type,
            e.stream_id.unwrap_or_default(),
            e.client_id,
            e.data["reason"].as_str().unwrap_or_default().to_string(),
        ));
    }
    out
}

fn has_client(r: &Registry, id: &str) -> bool {
    r.client_by_id(id).is_some()
}

#[tokio::test(start_paused = true)]
async fn sweeps_run_every_cleanup_interval_and_remove_exactly_the_idle() {
    let config = Config {
        cleanup_interval: Duration::from_secs(60),
        client_timeout: Duration::from_secs(90),
        stream_timeout: Some(Duration::from_secs(200)),
        secret: Some("k".into()),
        ..Config::default()
    };
    let state = build_state(config).unwrap();
    let t0 = Instant::now();
    let r = state.registry.clone();
    let mut events = r.events.subscribe();
    let maintenance = spawn_maintenance(state.clone());
    let at = |secs: f64| sleep_until(t0 + Duration::from_secs_f64(secs));

    let (unwatched, _) = r.upsert(hls_settings("http://o/unwatched.m3u8"));
    let (watched, _) = r.upsert(hls_settings("http://o/watched.m3u8"));
    let (idle, _) = r.client("idle", &watched.id, "10.0.0.1", "tv");
    let (busy, _) = r.client("busy", &watched.id, "10.0.0.2", "tv");
    // An open connection (a live viewer, a long download).
    let viewing = Viewing::new(r.clone(), watched.clone(), busy.clone());
    drop((idle, busy));
    drain(&mut events);

    at(50.0).await;
    r.client("late", &watched.id, "10.0.0.3", "tv");
    drain(&mut events);

    // "idle" passed the client timeout at 90 s, but the sweep runs at 120 s, not before.
    at(119.9).await;
    assert!(has_client(&r, "idle"), "swept before the interval");
    assert!(drain(&mut events).is_empty());
    at(120.1).await;
    assert!(!has_client(&r, "idle"));
    assert!(has_client(&r, "late") && has_client(&r, "busy"));
    assert_eq!(watched.client_count(), 2);
    assert_eq!(
        drain(&mut events),
        vec![(
            EventType::ClientDisconnected,
            watched.id.clone(),
            Some("idle".into()),
            "idle".into()
        )]
    );

    // "late" (last request at 50 s) is idle from 140 s, swept at 180 s.
    at(179.9).await;
    assert!(has_client(&r, "late"));
    at(180.1).await;
    assert!(!has_client(&r, "late"));
    assert_eq!(drain(&mut events).len(), 1);

    // The unwatched stream is idle from 200 s; the sweep at 240 s removes it.
    at(239.9).await;
    assert!(
        r.stream(&unwatched.id).is_some(),
        "removed before the interval"
    );
    at(240.1).await;
    assert!(r.stream(&unwatched.id).is_none());
    assert!(unwatched.closed.is_cancelled());
    assert_eq!(
        drain(&mut events),
        vec![(
            EventType::StreamIdleRemoved,
            unwatched.id.clone(),
            None,
            String::new()
        )]
    );

    // An open connection keeps its client and stream however long it lasts.
    at(1000.0).await;
    assert!(has_client(&r, "busy"));
    assert!(r.stream(&watched.id).is_some());
    assert!(drain(&mut events).is_empty());
    drop(viewing); // the viewer hangs up at 1000 s

    // Idle from 1090 s; the next sweep is at 1140 s.
    at(1139.9).await;
    assert!(has_client(&r, "busy"));
    at(1140.1).await;
    assert!(!has_client(&r, "busy"));
    // Idle stream from 1200 s, swept at 1200 s (a sweep is due then).
    at(1199.9).await;
    assert!(r.stream(&watched.id).is_some());
    at(1200.1).await;
    assert!(r.stream(&watched.id).is_none());
    assert_eq!(
        drain(&mut events),
        vec![
            (
                EventType::ClientDisconnected,
                watched.id.clone(),
                Some("busy".into()),
                "idle".into()
            ),
            (
                EventType::StreamIdleRemoved,
                watched.id.clone(),
                None,
                String::new()
            ),
        ]
    );
    assert_eq!(r.client_count(), 0);
    assert_eq!(r.stream_count(), 0);
    maintenance.abort();
}

#[tokio::test(start_paused = true)]
async fn a_stream_timeout_of_zero_keeps_streams_and_clients_of_removed_streams_go_with_them() {
    let config = Config {
        cleanup_interval: Duration::from_secs(10),
        client_timeout: Duration::from_secs(300),
        stream_timeout: None,
        secret: Some("k".into()),
        ..Config::default()
    };
    let state = build_state(config).unwrap();
    let t0 = Instant::now();
    let r: Arc<Registry> = state.registry.clone();
    let maintenance = spawn_maintenance(state.clone());
    let (kept, _) = r.upsert(hls_settings("http://o/kept.m3u8"));
    r.client("viewer", &kept.id, "10.0.0.1", "tv");
    sleep_until(t0 + Duration::from_secs(100_000)).await;
    assert!(
        r.stream(&kept.id).is_some(),
        "STREAM_TIMEOUT=0 keeps streams"
    );
    assert!(!has_client(&r, "viewer"), "clients still expire");

    // Deleting a stream ends its clients' sessions at once, with an event each.
    let mut events = r.events.subscribe();
    r.client("a", &kept.id, "10.0.0.1", "tv");
    r.client("b", &kept.id, "10.0.0.2", "tv");
    drain(&mut events);
    r.remove_stream(&kept.id, m3u_proxy::registry::Removal::Deleted);
    assert_eq!(r.client_count(), 0);
    let got = drain(&mut events);
    assert_eq!(
        got.iter()
            .map(|e| (e.0, e.2.clone(), e.3.clone()))
            .collect::<Vec<_>>(),
        vec![
            (
                EventType::ClientDisconnected,
                Some("a".into()),
                "stream_deleted".into()
            ),
            (
                EventType::ClientDisconnected,
                Some("b".into()),
                "stream_deleted".into()
            ),
            (EventType::StreamDeleted, None, String::new()),
        ]
    );
    maintenance.abort();
}

#[tokio::test(start_paused = true)]
async fn bytes_per_second_is_the_last_second_of_traffic() {
    let state = build_state(Config {
        secret: Some("k".into()),
        ..Config::default()
    })
    .unwrap();
    let t0 = Instant::now();
    let r = state.registry.clone();
    let maintenance = spawn_maintenance(state.clone());
    let at = |secs: f64| sleep_until(t0 + Duration::from_secs_f64(secs));
    let (s, _) = r.upsert(hls_settings("http://o/rate.m3u8"));
    let (c, _) = r.client("viewer", &s.id, "10.0.0.1", "tv");
    let viewing = Viewing::new(r.clone(), s.clone(), c.clone());
    at(0.5).await;
    viewing.add_bytes(3_000);
    at(1.1).await;
    assert_eq!(r.client_info(&c).bytes_per_second, 3_000.0);
    assert_eq!(r.stream_info(&s).bytes_per_second, 3_000.0);
    assert_eq!(r.totals.bytes_per_second(), 3_000.0);
    viewing.add_bytes(500);
    at(2.1).await;
    assert_eq!(r.client_info(&c).bytes_per_second, 500.0);
    at(3.1).await;
    assert_eq!(
        r.client_info(&c).bytes_per_second,
        0.0,
        "nothing sent in the last second"
    );
    assert_eq!(r.client_info(&c).bytes_served, 3_500);
    maintenance.abort();
}
