//! Memory that returns: players minting clients (a new `?client_id=` or user agent on every
//! request) are tracked only up to the client limits, and once traffic stops the client
//! table and the shared cache empty on their own.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use m3u_proxy::cache::{Filled, Lookup};
use m3u_proxy::config::{ClientLimits, Config};
use m3u_proxy::server::{build_state, spawn_maintenance};
use m3u_proxy::upstream::FetchedPlaylist;
use reqwest::StatusCode;
use url::Url;

use crate::util::origin::Origin;
use crate::util::{eventually, hls_settings, Proxy};

const MPEGURL: &str = "application/vnd.apple.mpegurl";

/// Fills the segment cache with `size` bytes at `url`, and reads them back as a viewer.
async fn fill_segment(cache: &Arc<m3u_proxy::cache::Cache>, stream: &str, url: &Url, size: usize) {
    let Some(Lookup::Lead(leader)) = cache.segment(stream, url) else {
        panic!("a fresh key leads");
    };
    let answer = axum::http::Response::new(vec![0x47u8; size]);
    let Filled::Shared(entry) = leader.fill(answer.into(), Default::default()) else {
        panic!("a 200 with a length is cached");
    };
    let got: usize = entry
        .body()
        .map(|b| b.unwrap().len())
        .collect::<Vec<_>>()
        .await
        .iter()
        .sum();
    assert_eq!(got, size);
}

#[tokio::test(start_paused = true)]
async fn twenty_thousand_clients_and_a_cache_fill_leave_nothing_behind() {
    let config = Config {
        client_timeout: Duration::from_secs(60),
        cleanup_interval: Duration::from_secs(10),
        client_limits: ClientLimits {
            per_stream: 1_000,
            total: 1_500,
        },
        secret: Some("k".into()),
        ..Config::default()
    };
    let state = build_state(config).unwrap();
    let r = state.registry.clone();
    let maintenance = spawn_maintenance(state.clone());
    let (a, _) = r.upsert(hls_settings("http://o/a.m3u8"));
    let (b, _) = r.upsert(hls_settings("http://o/b.m3u8"));
    let events_before = r.events.last_id();

    // 20,000 players: on stream a each names itself, on stream b each has its own agent.
    for n in 0..10_000 {
        r.client(&format!("p{n}"), &a.id, "10.0.0.1", "tv");
    }
    for n in 0..10_000 {
        let agent = format!("player/{n}");
        let id = r.derive_client_id("10.0.0.2", &agent, &b.id);
        r.client(&id, &b.id, "10.0.0.2", &agent);
    }
    assert_eq!(a.client_count(), 1_000, "the per-stream limit");
    assert_eq!(b.client_count(), 500, "the rest of the total");
    assert_eq!(r.client_count(), 1_500);
    assert_eq!(r.untracked_clients(), 18_500);
    assert_eq!(
        r.events.last_id() - events_before,
        1_500,
        "events (and webhooks) for tracked clients only"
    );

    // A cache fill: segments of both streams and their playlists.
    let cache = state.cache.clone();
    for (i, s) in [&a, &b].into_iter().enumerate() {
        for n in 0..5 {
            let url: Url = format!("http://o/{i}/seg{n}.ts").parse().unwrap();
            fill_segment(&cache, &s.id, &url, 200_000).await;
        }
        let url: Url = format!("http://o/{i}.m3u8").parse().unwrap();
        let text = "#EXTM3U\n#EXT-X-TARGETDURATION:6\n".to_owned();
        let fetched = FetchedPlaylist {
            final_url: url.clone(),
            text,
        };
        cache
            .playlist(&s.id, &url, || async { Ok(fetched) })
            .await
            .unwrap();
    }
    assert_eq!(cache.bytes(), 2_000_000);
    assert_eq!(cache.entries(), 12);
    // A deleted stream's entries go the same way.
    r.remove_stream(&b.id, m3u_proxy::registry::Removal::Deleted);

    // Traffic stops: past the TTL and the client timeout, nothing is held.
    tokio::time::sleep(Duration::from_secs(32)).await;
    assert_eq!((cache.bytes(), cache.entries()), (0, 0), "the cache purged");
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert_eq!(r.client_count(), 0);
    assert_eq!(a.client_count(), 0);
    // And the room is back for the next players.
    let (_, tracked) = r.client("next", &a.id, "10.0.0.3", "tv");
    assert!(tracked);
    maintenance.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_past_the_limits_play_untracked_and_the_cache_empties_when_they_stop() {
    let origin = Origin::start().await;
    let mut text = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n".to_owned();
    for n in 0..3 {
        text.push_str(&format!("#EXTINF:2.0,\nseg{n}.ts\n"));
        origin.put(&format!("/seg{n}.ts"), vec![0x47u8; 100_000], "video/mp2t");
    }
    origin.put("/live.m3u8", text, MPEGURL);
    let proxy = Proxy::start_with(|c| {
        c.cache.segment_ttl = Duration::from_secs(1);
        c.client_limits = ClientLimits {
            per_stream: 100,
            total: 150,
        };
    })
    .await;
    let id = proxy.create_stream(&origin.url("/live.m3u8")).await["stream_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let playlist = proxy.url(&format!("/hls/{id}/playlist.m3u8"));
    futures_util::stream::iter(0..400u32)
        .for_each_concurrent(16, |n| {
            let req = if n % 2 == 0 {
                proxy.http.get(format!("{playlist}?client_id=p{n}"))
            } else {
                proxy
                    .http
                    .get(&playlist)
                    .header("User-Agent", format!("player/{n}"))
            };
            async move {
                let res = req.send().await.unwrap();
                assert_eq!(res.status(), StatusCode::OK, "players past the limits play");
                res.bytes().await.unwrap();
            }
        })
        .await;
    assert_eq!(proxy.metric("m3u_proxy_clients").await, 100);
    assert_eq!(proxy.metric("m3u_proxy_clients_untracked_total").await, 300);
    // One stream created, its first viewer (stream_started), one connect per tracked client.
    assert_eq!(proxy.metric("m3u_proxy_events_total").await, 102);

    let text = proxy.http.get(&playlist).send().await.unwrap();
    for line in text
        .text()
        .await
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
    {
        let url = Url::parse(&playlist).unwrap().join(line).unwrap();
        let res = proxy.http.get(url).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.bytes().await.unwrap().len(), 100_000);
    }
    assert_eq!(proxy.metric("m3u_proxy_cache_bytes").await, 300_000);
    eventually(Duration::from_secs(10), "the cache emptied", || async {
        let held = proxy.metric("m3u_proxy_cache_bytes").await;
        let entries = proxy.metric("m3u_proxy_cache_entries").await;
        (held == 0 && entries == 0).then_some(())
    })
    .await;
}
