//! Failover as a player and an operator see it: every trigger and non-trigger, for HLS and
//! direct streams, asserting the bytes the player gets (no byte twice or missing for files;
//! whole, continuous TS packets on one kept connection for live) and what the API reports.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::util::origin::{Fault, Origin, TS_PACKET};
use crate::util::ts_viewer::TsViewer;
use crate::util::{eventually, refused_addr, Proxy};

const MPEGURL: &str = "application/vnd.apple.mpegurl";

/// A proxy with quick retries and short timeouts, so faults resolve within a test.
async fn proxy() -> Proxy {
    Proxy::start_with(|c| {
        c.failover.backoff = Duration::from_millis(50);
        c.upstream.first_byte = Duration::from_millis(800);
        c.upstream.read_stall = Duration::from_secs(1);
    })
    .await
}

/// The stream's info once its last viewer connection is released.
async fn released(proxy: &Proxy, id: &str) -> Value {
    eventually(
        Duration::from_secs(3),
        "the connection released",
        || async {
            let info = stream_info(proxy, id).await;
            (info["active_connections"] == 0).then_some(info)
        },
    )
    .await
}

async fn stream_info(proxy: &Proxy, id: &str) -> Value {
    proxy.get_json(&format!("/streams/{id}")).await["stream"].clone()
}

/// A URL that refuses connections for the rest of the test run (its port stays bound, so
/// no other process can take it and answer).
async fn refused_url(path: &str) -> String {
    let (guard, addr) = refused_addr();
    std::mem::forget(guard);
    format!("http://{addr}{path}")
}

/// A live TS channel on two origins, registered as primary and backup.
struct Channel {
    a: Origin,
    b: Origin,
    proxy: Proxy,
    id: String,
    endpoint: String,
}

async fn channel() -> Channel {
    let a = Origin::start().await;
    a.live_ts("/ch.ts", 100_000);
    let b = Origin::start().await;
    b.live_ts("/ch.ts", 100_000);
    let proxy = proxy().await;
    let (id, endpoint) = proxy.register(&a.url("/ch.ts"), &[b.url("/ch.ts")]).await;
    Channel {
        a,
        b,
        proxy,
        id,
        endpoint,
    }
}

/// An origin whose live TS ends cleanly after `packets` packets (no length, `Connection:
/// close`, then EOF), like a channel that goes off the air.
async fn ending_live_origin(packets: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut next = 1_000_000u64;
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut head = [0u8; 4096];
            let _ = tcp.read(&mut head).await;
            let mut out =
                b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nConnection: close\r\n\r\n"
                    .to_vec();
            for n in next..next + packets {
                let mut p = [0xffu8; TS_PACKET];
                p[..4].copy_from_slice(&[0x47, 0x01, 0x00, 0x10]);
                p[4..12].copy_from_slice(&n.to_be_bytes());
                out.extend_from_slice(&p);
            }
            next += packets + 1000;
            let _ = tcp.write_all(&out).await;
            let _ = tcp.shutdown().await;
        }
    });
    addr
}

#[tokio::test]
async fn live_ts_keeps_the_connection_when_the_primary_dies() {
    let Channel {
        a,
        b,
        proxy,
        id,
        endpoint,
    } = channel().await;

    let mut viewer = TsViewer::open(&proxy, &endpoint).await;
    viewer.read_packets(40, Duration::from_secs(3)).await;
    a.kill().await;
    let killed = Instant::now();
    viewer.read_past_switch(100, Duration::from_secs(5)).await;

    let cuts = viewer.discontinuities();
    assert_eq!(cuts.len(), 1, "one switch, continuous on both sides");
    let gap = viewer.arrived[cuts[0]].saturating_duration_since(killed);
    assert!(gap < Duration::from_secs(2), "backup bytes after {gap:?}");
    assert_eq!(b.hits("/ch.ts"), 1);
    let info = stream_info(&proxy, &id).await;
    assert_eq!(info["current_url"], b.url("/ch.ts"));
    assert_eq!(info["failover_index"], 1);
    assert_eq!(info["failover_count"], 1);
    assert!(info["error_count"].as_u64().unwrap() >= 1);
    assert_eq!(info["active_connections"], 1, "the player's one connection");
}

#[tokio::test]
async fn live_ts_fails_over_on_stall_cut_and_end_on_packet_boundaries() {
    let b = Origin::start().await;
    b.live_ts("/backup.ts", 100_000);
    let a = Origin::start().await;
    a.live_ts("/stall.ts", 100_000);
    a.live_ts("/cut.ts", 100_000);
    // Mid-packet on purpose: the partial packet must never reach the player.
    let odd = 40 * TS_PACKET + 77;
    a.fault("/stall.ts", Fault::StallAfter(odd));
    a.fault("/cut.ts", Fault::CutAfter(odd));
    let ends = ending_live_origin(30).await;
    let proxy = proxy().await;

    for primary in [
        a.url("/stall.ts"),
        a.url("/cut.ts"),
        format!("http://{ends}/ends.ts"),
    ] {
        let backup = b.url("/backup.ts");
        let hits_before = b.hits("/backup.ts");
        let (id, endpoint) = proxy
            .register(&primary, std::slice::from_ref(&backup))
            .await;
        let mut viewer = TsViewer::open(&proxy, &endpoint).await;
        viewer.read_packets(200, Duration::from_secs(8)).await;
        // Every byte is in a whole, numbered packet: no partial packet at any cut.
        let numbers = viewer.numbers();
        assert!(numbers.len() >= 200, "{primary}");
        assert!(viewer.last_run() >= 50, "{primary}: steady on the backup");
        assert_eq!(b.hits("/backup.ts"), hits_before + 1, "{primary}");
        let info = stream_info(&proxy, &id).await;
        assert_eq!(info["current_url"], backup, "{primary}");
        assert_eq!(info["failover_count"], 1, "{primary}");
        assert!(info["error_count"].as_u64().unwrap() >= 1, "{primary}");
    }
}

#[tokio::test]
async fn direct_streams_fail_over_before_the_first_byte() {
    let a = Origin::start().await;
    let b = Origin::start().await;
    b.live_ts("/backup.ts", 100_000);
    for (path, fault) in [
        ("/500.ts", Fault::Status(500)),
        ("/html.ts", Fault::Html),
        ("/hang.ts", Fault::Hang),
        ("/reset.ts", Fault::Reset),
    ] {
        a.live_ts(path, 100_000);
        a.fault(path, fault);
    }
    let proxy = proxy().await;
    let mut primaries: Vec<String> = ["/500.ts", "/html.ts", "/hang.ts", "/reset.ts"]
        .iter()
        .map(|p| a.url(p))
        .collect();
    primaries.push(refused_url("/refused.ts").await);
    for primary in primaries {
        let (id, endpoint) = proxy.register(&primary, &[b.url("/backup.ts")]).await;
        let started = Instant::now();
        let mut viewer = TsViewer::open(&proxy, &endpoint).await;
        viewer.read_packets(20, Duration::from_secs(4)).await;
        assert!(viewer.discontinuities().is_empty(), "{primary}");
        assert!(started.elapsed() < Duration::from_secs(3), "{primary}");
        let info = stream_info(&proxy, &id).await;
        assert_eq!(info["failover_index"], 1, "{primary}");
        assert_eq!(info["failover_count"], 1, "{primary}");
        assert!(info["error_count"].as_u64().unwrap() >= 1, "{primary}");
    }
}

#[tokio::test]
async fn manual_failover_moves_every_live_viewer_at_once() {
    let Channel {
        a,
        b,
        proxy,
        id,
        endpoint,
    } = channel().await;
    let mut viewers = Vec::new();
    for _ in 0..3 {
        let mut v = TsViewer::open(&proxy, &endpoint).await;
        v.read_packets(20, Duration::from_secs(3)).await;
        viewers.push(v);
    }
    let done = proxy.switch_now(&id).await;
    let switched = Instant::now();
    assert_eq!(done["current_url"], b.url("/ch.ts"));

    for v in &mut viewers {
        v.read_past_switch(60, Duration::from_secs(3)).await;
        let cuts = v.discontinuities();
        assert_eq!(
            cuts.len(),
            1,
            "each viewer switched once, on its connection"
        );
        let after = v.arrived[cuts[0]].saturating_duration_since(switched);
        assert!(after < Duration::from_secs(1), "moved after {after:?}");
    }
    // The three viewers share one upstream: one connection to each URL in turn.
    assert_eq!(a.hits("/ch.ts"), 1, "one shared upstream on the primary");
    assert_eq!(
        b.hits("/ch.ts"),
        1,
        "all three viewers on one backup upstream"
    );
    let info = stream_info(&proxy, &id).await;
    assert_eq!(info["failover_count"], 1);
    assert_eq!(info["error_count"], 0, "a manual switch is not an error");
    assert_eq!(info["active_connections"], 3);
}

#[tokio::test]
async fn a_viewer_hanging_up_is_not_a_failure() {
    let Channel {
        a: _primary,
        b,
        proxy,
        id,
        endpoint,
    } = channel().await;
    let mut viewer = TsViewer::open(&proxy, &endpoint).await;
    viewer.read_packets(20, Duration::from_secs(3)).await;
    drop(viewer);
    let info = released(&proxy, &id).await;
    assert_eq!(info["failover_count"], 0);
    assert_eq!(info["error_count"], 0);
    assert_eq!(b.hits("/ch.ts"), 0);
}

fn movie() -> Vec<u8> {
    (0..300_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect()
}

#[tokio::test]
async fn a_cut_file_resumes_on_the_same_url_from_the_byte_reached() {
    let a = Origin::start().await;
    let b = Origin::start().await;
    let body = movie();
    a.put("/movie.mp4", body.clone(), "video/mp4");
    b.put("/movie.mp4", body.clone(), "video/mp4");
    a.fault(
        "/movie.mp4",
        Fault::Times(1, Box::new(Fault::CutAfter(100_003))),
    );
    let proxy = proxy().await;
    let (id, endpoint) = proxy
        .register(&a.url("/movie.mp4"), &[b.url("/movie.mp4")])
        .await;

    let res = proxy.get(&endpoint).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-length"], "300000");
    let etag = res.headers()["etag"].clone();
    let got = res.bytes().await.expect("a whole body");
    assert!(got[..] == body[..], "every byte once, in order");
    assert_eq!(a.hits("/movie.mp4"), 2);
    let resumed = a.last_request("/movie.mp4").unwrap();
    assert_eq!(resumed.headers["range"], "bytes=100003-299999");
    assert_eq!(
        resumed.headers["if-range"], etag,
        "only the same file is spliced"
    );
    assert_eq!(b.hits("/movie.mp4"), 0);
    let info = stream_info(&proxy, &id).await;
    assert_eq!(info["failover_count"], 0);
    assert_eq!(info["total_bytes_served"], 300_000);
}

#[tokio::test]
async fn a_stalled_range_resumes_on_the_next_url() {
    let a = Origin::start().await;
    let b = Origin::start().await;
    let body = movie();
    a.put("/movie.mp4", body.clone(), "video/mp4");
    b.put("/movie.mp4", body.clone(), "video/mp4");
    a.fault("/movie.mp4", Fault::StallAfter(120_000));
    let proxy = proxy().await;
    let (id, endpoint) = proxy
        .register(&a.url("/movie.mp4"), &[b.url("/movie.mp4")])
        .await;

    let res = proxy
        .http
        .get(proxy.url(&endpoint))
        .header("Range", "bytes=1000-")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(res.headers()["content-range"], "bytes 1000-299999/300000");
    let got = res.bytes().await.expect("a whole body");
    assert_eq!(got.len(), body.len() - 1000);
    assert!(got[..] == body[1000..], "every byte once, in order");
    let resumed = b.last_request("/movie.mp4").unwrap();
    assert_eq!(resumed.headers["range"], "bytes=121000-299999");
    let info = stream_info(&proxy, &id).await;
    assert_eq!(info["failover_index"], 1);
    assert_eq!(info["failover_count"], 1);
    assert_eq!(info["total_bytes_served"], 299_000);
}

#[tokio::test]
async fn a_different_file_on_the_backup_is_never_spliced_in() {
    let a = Origin::start().await;
    let b = Origin::start().await;
    let body = movie();
    a.put("/movie.mp4", body.clone(), "video/mp4");
    b.put("/movie.mp4", body[..250_000].to_vec(), "video/mp4");
    a.fault("/movie.mp4", Fault::StallAfter(50_000));
    let proxy = proxy().await;
    let (id, endpoint) = proxy
        .register(&a.url("/movie.mp4"), &[b.url("/movie.mp4")])
        .await;

    let res = proxy.get(&endpoint).await;
    let mut stream = res.bytes_stream();
    let mut got = Vec::new();
    let mut failed = false;
    // The primary sends 50 000 bytes and dies; the backup has another file.
    while got.len() < 50_000 {
        got.extend_from_slice(&stream.next().await.unwrap().unwrap());
    }
    a.kill().await;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => got.extend_from_slice(&c),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the player sees a cut body, not a short one");
    assert_eq!(got.len(), 50_000);
    assert!(got[..] == body[..50_000]);
    assert!(
        b.hits("/movie.mp4") >= 1,
        "the backup was asked and refused"
    );
    let info = stream_info(&proxy, &id).await;
    assert!(info["error_count"].as_u64().unwrap() >= 2);
}

/// A live-looking media playlist whose segments live under `dir`.
fn media_playlist(dir: &str, first: u64) -> String {
    let mut text = format!(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:{first}\n"
    );
    for n in first..first + 3 {
        text.push_str(&format!("#EXTINF:2.0,\n{dir}/seg{n}.ts\n"));
    }
    text
}

fn uri_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Resolves a reference found in the playlist at `from` (a path on the proxy or a full URL).
fn resolve(proxy: &Proxy, from: &str, reference: &str) -> String {
    let base = if from.starts_with("http") {
        from.to_string()
    } else {
        proxy.url(from)
    };
    url::Url::parse(&base)
        .unwrap()
        .join(reference)
        .unwrap()
        .to_string()
}

async fn get_text(proxy: &Proxy, url: &str) -> (StatusCode, String) {
    let res = proxy.http.get(url).send().await.unwrap();
    (res.status(), res.text().await.unwrap())
}

#[tokio::test]
async fn playlist_failures_switch_within_the_request() {
    let a = Origin::start().await;
    let b = Origin::start().await;
    b.put("/live.m3u8", media_playlist("b", 10), MPEGURL);
    let mut primaries = Vec::new();
    for (path, fault) in [
        ("/500.m3u8", Some(Fault::Status(500))),
        ("/502.m3u8", Some(Fault::Status(502))),
        ("/html.m3u8", Some(Fault::Html)),
        ("/hang.m3u8", Some(Fault::Hang)),
        ("/reset.m3u8", Some(Fault::Reset)),
        ("/stall.m3u8", Some(Fault::StallAfter(20))),
        ("/garbage.m3u8", None),
    ] {
        match fault {
            Some(fault) => {
                a.put(path, media_playlist("a", 10), MPEGURL);
                a.fault(path, fault);
            }
            // 200 with the right content type, but not a playlist.
            None => a.put(path, "404 channel offline\n", MPEGURL),
        }
        primaries.push(a.url(path));
    }
    primaries.push(refused_url("/live.m3u8").await);
    let proxy = proxy().await;
    for primary in primaries {
        let (id, _) = proxy.register(&primary, &[b.url("/live.m3u8")]).await;
        let started = Instant::now();
        let (status, text) =
            get_text(&proxy, &proxy.url(&format!("/hls/{id}/playlist.m3u8"))).await;
        assert_eq!(status, StatusCode::OK, "{primary}");
        assert!(text.starts_with("#EXTM3U"), "{primary}: {text}");
        assert_eq!(uri_lines(&text).len(), 3, "{primary}");
        assert!(started.elapsed() < Duration::from_secs(3), "{primary}");
        let info = stream_info(&proxy, &id).await;
        assert_eq!(info["current_url"], b.url("/live.m3u8"), "{primary}");
        assert_eq!(info["failover_count"], 1, "{primary}");
        assert!(info["error_count"].as_u64().unwrap() >= 1, "{primary}");
    }
}

#[tokio::test]
async fn a_passing_blip_is_retried_on_the_same_url() {
    let a = Origin::start().await;
    let b = Origin::start().await;
    a.put("/live.m3u8", media_playlist("a", 10), MPEGURL);
    a.fault("/live.m3u8", Fault::Times(1, Box::new(Fault::Status(503))));
    b.put("/live.m3u8", media_playlist("b", 10), MPEGURL);
    let proxy = proxy().await;
    let (id, _) = proxy
        .register(&a.url("/live.m3u8"), &[b.url("/live.m3u8")])
        .await;
    let (status, _) = get_text(&proxy, &proxy.url(&format!("/hls/{id}/playlist.m3u8"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(a.hits("/live.m3u8"), 2, "retried");
    assert_eq!(b.hits("/live.m3u8"), 0, "not switched");
    let info = stream_info(&proxy, &id).await;
    assert_eq!(info["failover_count"], 0);
    assert_eq!(info["error_count"], 1);
}

#[tokio::test]
async fn a_missing_segment_at_the_live_edge_is_retried_then_passed_on() {
    let a = Origin::start().await;
    let b = Origin::start().await;
    a.put("/live.m3u8", media_playlist("a", 10), MPEGURL);
    a.put("/a/seg10.ts", vec![0x47u8; 1880], "video/mp2t");
    a.fault("/a/seg10.ts", Fault::Times(1, Box::new(Fault::Status(404))));
    b.put("/live.m3u8", media_playlist("b", 10), MPEGURL);
    let proxy = proxy().await;
    let (id, _) = proxy
        .register(&a.url("/live.m3u8"), &[b.url("/live.m3u8")])
        .await;
    let path = format!("/hls/{id}/playlist.m3u8");
    let (_, text) = get_text(&proxy, &proxy.url(&path)).await;
    let refs = uri_lines(&text);

    // Listed a moment before the origin has it: the retry gets it.
    let res = proxy
        .http
        .get(resolve(&proxy, &path, &refs[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap().len(), 1880);
    assert_eq!(a.hits("/a/seg10.ts"), 2);

    // Really missing: one retry, then the player gets the 404 and skips it.
    let res = proxy
        .http
        .get(resolve(&proxy, &path, &refs[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(a.hits("/a/seg11.ts"), 2);
    let info = stream_info(&proxy, &id).await;
    assert_eq!(
        info["failover_count"], 0,
        "a missing segment never switches"
    );
    assert_eq!(info["failover_index"], 0);
    assert_eq!(b.hits("/live.m3u8"), 0);
}

/// A primary and a backup master with two variants each, over distinct media playlists.
async fn two_masters() -> (Origin, Origin) {
    let a = Origin::start().await;
    let b = Origin::start().await;
    for (origin, name) in [(&a, "a"), (&b, "b")] {
        let master = "#EXTM3U\n\
             #EXT-X-STREAM-INF:BANDWIDTH=800000\nlo/index.m3u8\n\
             #EXT-X-STREAM-INF:BANDWIDTH=2400000\nhi/index.m3u8\n";
        origin.put("/master.m3u8", master, MPEGURL);
        for v in ["lo", "hi"] {
            origin.put(
                &format!("/{v}/index.m3u8"),
                media_playlist(&format!("{name}{v}"), 100),
                MPEGURL,
            );
            // The body names where it came from.
            origin.put(
                &format!("/{v}/{name}{v}/seg100.ts"),
                format!("{name}{v}/seg100"),
                "video/mp2t",
            );
        }
    }
    (a, b)
}

#[tokio::test]
async fn manual_failover_reaches_every_hls_viewer_within_one_refresh() {
    let (a, b) = two_masters().await;
    let proxy = proxy().await;
    let (id, _) = proxy
        .register(&a.url("/master.m3u8"), &[b.url("/master.m3u8")])
        .await;
    let master_path = format!("/hls/{id}/playlist.m3u8");

    // Three players, each polling one variant's media playlist through its reference.
    let mut players = Vec::new();
    for (i, client) in ["tv", "phone", "laptop"].iter().enumerate() {
        let master_url = format!("{}?client_id={client}", proxy.url(&master_path));
        let (status, master) = get_text(&proxy, &master_url).await;
        assert_eq!(status, StatusCode::OK);
        let variant = resolve(&proxy, &master_path, &uri_lines(&master)[i % 2]);
        let (status, media) = get_text(&proxy, &variant).await;
        assert_eq!(status, StatusCode::OK);
        let old_segment = resolve(&proxy, &variant, &uri_lines(&media)[0]);
        players.push((variant, old_segment, i % 2));
    }
    // tv and laptop poll the same variant, and share its upstream fetch (the playlist cache).
    let a_variant_hits = a.hits("/lo/index.m3u8") + a.hits("/hi/index.m3u8");
    assert_eq!(a_variant_hits, 2);

    proxy.switch_now(&id).await;

    // All three refresh at once; each gets its variant's equivalent on the backup.
    let proxy = &proxy;
    let refreshes = players
        .iter()
        .map(|(variant, old_segment, which)| async move {
            let (status, media) = get_text(proxy, variant).await;
            assert_eq!(status, StatusCode::OK);
            let segment = resolve(proxy, variant, &uri_lines(&media)[0]);
            let (status, body) = get_text(proxy, &segment).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body, ["blo/seg100", "bhi/seg100"][*which]);
            // A segment listed before the switch still plays from where it was signed.
            let (status, body) = get_text(proxy, old_segment).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body, ["alo/seg100", "ahi/seg100"][*which]);
        });
    futures_util::future::join_all(refreshes).await;
    assert_eq!(b.hits("/lo/index.m3u8") + b.hits("/hi/index.m3u8"), 2);
    assert_eq!(
        a.hits("/lo/index.m3u8") + a.hits("/hi/index.m3u8"),
        a_variant_hits,
        "no refresh went to the old URL"
    );
    assert!(
        (1..=3).contains(&b.hits("/master.m3u8")),
        "the backup's master fetched to map the variants"
    );
    let info = stream_info(proxy, &id).await;
    assert_eq!(info["failover_count"], 1);
    assert_eq!(info["current_url"], b.url("/master.m3u8"));
}

#[tokio::test]
async fn a_failing_variant_refresh_switches_to_the_backups_variant_within_the_request() {
    let (a, b) = two_masters().await;
    let proxy = proxy().await;
    let (id, _) = proxy
        .register(&a.url("/master.m3u8"), &[b.url("/master.m3u8")])
        .await;
    let master_path = format!("/hls/{id}/playlist.m3u8");
    let (_, master) = get_text(&proxy, &proxy.url(&master_path)).await;
    let hi = resolve(&proxy, &master_path, &uri_lines(&master)[1]);
    let (status, _) = get_text(&proxy, &hi).await;
    assert_eq!(status, StatusCode::OK);

    a.fault("/hi/index.m3u8", Fault::Status(503));
    // The player refreshes until the shared copy of the playlist (kept at most half a
    // target duration) is gone and a refresh asks the origin, which fails: that same
    // request answers with the backup's variant.
    let media = eventually(
        Duration::from_secs(5),
        "a refresh past the cache",
        || async {
            let (status, media) = get_text(&proxy, &hi).await;
            assert_eq!(status, StatusCode::OK);
            (b.hits("/hi/index.m3u8") == 1).then_some(media)
        },
    )
    .await;
    let segment = resolve(&proxy, &hi, &uri_lines(&media)[0]);
    assert_eq!(proxy.http.get(&segment).send().await.unwrap().status(), 200);
    assert!(
        b.last_request("/hi/bhi/seg100.ts").is_some(),
        "the backup's segment"
    );
    assert_eq!(b.hits("/hi/index.m3u8"), 1);
    assert_eq!(b.hits("/lo/index.m3u8"), 0, "same position: hi for hi");
    let info = stream_info(&proxy, &id).await;
    assert_eq!(info["failover_index"], 1);
    assert_eq!(info["failover_count"], 1);
    assert!(info["error_count"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn a_dead_set_of_urls_fails_fast_without_spinning() {
    let a = Origin::start().await;
    a.put("/x.m3u8", "x", MPEGURL);
    a.fault("/x.m3u8", Fault::Status(500));
    a.put("/y.m3u8", "x", MPEGURL);
    a.fault("/y.m3u8", Fault::Status(500));
    let proxy = Proxy::start_with(|c| {
        c.failover.backoff = Duration::from_millis(20);
        c.failover.max_switches_per_minute = 2;
    })
    .await;
    let (id, _) = proxy.register(&a.url("/x.m3u8"), &[a.url("/y.m3u8")]).await;
    let started = Instant::now();
    for _ in 0..5 {
        let res = proxy.get(&format!("/hls/{id}/playlist.m3u8")).await;
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    let info = stream_info(&proxy, &id).await;
    assert_eq!(info["failover_count"], 2, "capped at two a minute");
    // Each request tries each URL at most once (with its retries): 3 tries per URL.
    assert!(a.hits("/x.m3u8") + a.hits("/y.m3u8") <= 5 * 2 * 3);
}

#[tokio::test]
async fn segments_of_a_dead_origin_come_from_its_mirror() {
    let a = Origin::start().await;
    let b = Origin::start().await;
    for origin in [&a, &b] {
        origin.put("/ch/live.m3u8", media_playlist("v", 10), MPEGURL);
        for n in 10..13 {
            origin.put(
                &format!("/ch/v/seg{n}.ts"),
                vec![n as u8; 940],
                "video/mp2t",
            );
        }
    }
    let proxy = proxy().await;
    let (id, _) = proxy
        .register(&a.url("/ch/live.m3u8"), &[b.url("/ch/live.m3u8")])
        .await;
    let path = format!("/hls/{id}/playlist.m3u8");
    let (_, text) = get_text(&proxy, &proxy.url(&path)).await;
    let refs = uri_lines(&text);

    a.kill().await;
    // Signed under the dead primary, answered by the backup at the same path.
    let res = proxy
        .http
        .get(resolve(&proxy, &path, &refs[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap()[..], [11u8; 940][..]);
    assert_eq!(b.hits("/ch/v/seg11.ts"), 1);
    let info = stream_info(&proxy, &id).await;
    assert_eq!(info["failover_index"], 1);
    assert_eq!(info["failover_count"], 1);
    // The next refresh comes from the backup without another switch.
    let (status, _) = get_text(&proxy, &proxy.url(&path)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(b.hits("/ch/live.m3u8"), 1);
    assert_eq!(stream_info(&proxy, &id).await["failover_count"], 1);
}

#[tokio::test]
async fn a_manual_switch_moves_a_file_download_at_once_without_a_byte_twice() {
    let a = Origin::start().await;
    let b = Origin::start().await;
    let body = movie();
    a.put("/movie.mp4", body.clone(), "video/mp4");
    b.put("/movie.mp4", body.clone(), "video/mp4");
    // The primary is slow, not dead: only the operator's switch moves the viewer.
    a.fault("/movie.mp4", Fault::StallAfter(100_000));
    let proxy = Proxy::start_with(|c| c.upstream.read_stall = Duration::from_secs(30)).await;
    let (id, endpoint) = proxy
        .register(&a.url("/movie.mp4"), &[b.url("/movie.mp4")])
        .await;

    let res = proxy.get(&endpoint).await;
    let mut stream = res.bytes_stream();
    let mut got = Vec::new();
    while got.len() < 100_000 {
        got.extend_from_slice(&stream.next().await.unwrap().unwrap());
    }
    proxy.switch_now(&id).await;
    let switched = Instant::now();
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.expect("no cut"));
    }
    assert!(switched.elapsed() < Duration::from_secs(2));
    assert_eq!(got.len(), body.len());
    assert!(got[..] == body[..], "every byte once, in order");
    let resumed = b.last_request("/movie.mp4").unwrap();
    assert_eq!(resumed.headers["range"], "bytes=100000-299999");
    assert!(
        resumed.headers.get("if-range").is_none(),
        "another origin's ETag"
    );
    let info = stream_info(&proxy, &id).await;
    assert_eq!(info["error_count"], 0);
    assert_eq!(info["failover_count"], 1);
}

#[tokio::test]
async fn a_viewer_hanging_up_mid_segment_is_not_a_failure() {
    let a = Origin::start().await;
    let b = Origin::start().await;
    a.put("/live.m3u8", media_playlist("a", 10), MPEGURL);
    a.put("/a/seg10.ts", vec![0x47u8; 4_000_000], "video/mp2t");
    b.put("/live.m3u8", media_playlist("b", 10), MPEGURL);
    let proxy = proxy().await;
    let (id, _) = proxy
        .register(&a.url("/live.m3u8"), &[b.url("/live.m3u8")])
        .await;
    let path = format!("/hls/{id}/playlist.m3u8");
    let (_, text) = get_text(&proxy, &proxy.url(&path)).await;
    let res = proxy
        .http
        .get(resolve(&proxy, &path, &uri_lines(&text)[0]))
        .send()
        .await
        .unwrap();
    let mut body = res.bytes_stream();
    body.next().await.unwrap().unwrap();
    drop(body);
    let info = released(&proxy, &id).await;
    assert_eq!(info["failover_count"], 0);
    assert_eq!(info["error_count"], 0);
    assert_eq!(b.hits("/live.m3u8"), 0);
}

#[tokio::test]
async fn a_live_viewer_is_let_go_when_every_url_is_dead() {
    let a = Origin::start().await;
    a.live_ts("/ch.ts", 100_000);
    let proxy = proxy().await;
    let backup = refused_url("/ch.ts").await;
    let (id, endpoint) = proxy.register(&a.url("/ch.ts"), &[backup]).await;
    let mut viewer = TsViewer::open(&proxy, &endpoint).await;
    viewer.read_packets(20, Duration::from_secs(3)).await;
    a.kill().await;
    // The connection ends instead of spinning.
    viewer.read_until_cut(Duration::from_secs(5)).await;
    let info = stream_info(&proxy, &id).await;
    assert_eq!(info["failover_count"], 1, "one switch, then it gives up");
    assert_eq!(info["active_connections"], 0);
    assert!(info["error_count"].as_u64().unwrap() >= 2);
}
