//! Live TS fan-out: the viewers of one live channel share one upstream connection, join on
//! a packet boundary, are counted each for what they get, and a slow one never holds up
//! the others. Files and byte ranges are never shared.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::util::origin::{Fault, Origin, TS_PACKET};
use crate::util::ts_viewer::TsViewer;
use crate::util::{eventually, Proxy};
use m3u_proxy::config::SlowViewer;

/// A viewer of `endpoint` as client `client`: a live answer, without a length.
async fn tune_in(proxy: &Proxy, endpoint: &str, client: &str) -> TsViewer {
    let res = proxy.get(&format!("{endpoint}?client_id={client}")).await;
    assert!(res.headers().get("content-length").is_none(), "live");
    TsViewer::from_response(res)
}

/// Long enough for any read here on a busy machine.
const WITHIN: Duration = Duration::from_secs(5);

fn assert_continuous(viewer: &TsViewer) {
    assert_eq!(
        viewer.discontinuities(),
        [0usize; 0],
        "a packet missing or repeated"
    );
}

/// `m3u_proxy_live_slow_viewers_total` for `action` (`dropped` or `skipped`).
async fn slow_viewers(proxy: &Proxy, action: &str) -> u64 {
    let series = format!("m3u_proxy_live_slow_viewers_total{{action=\"{action}\"}}");
    proxy.metric(&series).await
}

/// Waits until the shared upstream is gone: no connection to the origin, none counted.
async fn wait_upstream_closed(origin: &Origin, proxy: &Proxy, within: Duration) {
    eventually(within, "the upstream closed", || async {
        (origin.open_connections() == 0 && proxy.metric("m3u_proxy_live_upstreams").await == 0)
            .then_some(())
    })
    .await;
}

/// A channel fast enough (8 MB/s) to overrun a stalled reader's socket buffers and a
/// fan-out buffer of 64 chunks (1 MB, an eighth of a second of it, while the origin
/// sends 160 KB every 20 ms); returns the origin, the proxy and the channel's endpoint.
async fn fast_channel(slow_viewer: SlowViewer) -> (Origin, Proxy, String) {
    let origin = Origin::start().await;
    origin.live_ts("/fast.ts", 8_000_000);
    let proxy = Proxy::start_with(|c| {
        c.fanout.buffer = 64;
        c.fanout.slow_viewer = slow_viewer;
    })
    .await;
    let (_, endpoint) = proxy.register(&origin.url("/fast.ts"), &[]).await;
    (origin, proxy, endpoint)
}

#[tokio::test]
async fn viewers_of_a_live_channel_share_one_upstream_and_are_counted_each() {
    let origin = Origin::start().await;
    origin.live_ts("/live/news.ts", 200_000);
    let proxy = Proxy::start().await;
    let (id, endpoint) = proxy.register(&origin.url("/live/news.ts"), &[]).await;

    // Five players tune in at once.
    let names: Vec<String> = (0..5).map(|i| format!("room-{i}")).collect();
    let mut viewers =
        futures_util::future::join_all(names.iter().map(|name| tune_in(&proxy, &endpoint, name)))
            .await;
    for v in &mut viewers {
        v.read_packets(100, WITHIN).await;
        assert_continuous(v);
    }
    assert_eq!(
        origin.hits("/live/news.ts"),
        1,
        "one upstream for five viewers"
    );
    assert_eq!(proxy.metric("m3u_proxy_live_upstreams").await, 1);
    assert_eq!(proxy.metric("m3u_proxy_live_joins_total").await, 4);

    // A late joiner starts on a packet boundary, later in the same channel.
    let mut late = tune_in(&proxy, &endpoint, "room-late").await;
    late.read_packets(50, WITHIN).await;
    assert_continuous(&late);
    let late_numbers = late.numbers();
    assert!(
        late_numbers[0] > viewers[0].numbers()[0],
        "{late_numbers:?}"
    );
    assert_eq!(origin.hits("/live/news.ts"), 1);

    // Each viewer is its own client, counted for the bytes it was sent.
    let info = proxy.get_json(&format!("/streams/{id}")).await;
    assert_eq!(info["stream"]["active_connections"], 6);
    let clients = info["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 6, "{info}");
    let total: u64 = clients
        .iter()
        .map(|c| c["bytes_served"].as_u64().unwrap())
        .sum();
    assert_eq!(info["stream"]["total_bytes_served"], total);
    for c in clients {
        assert!(
            c["bytes_served"].as_u64().unwrap() >= 50 * TS_PACKET as u64,
            "{c}"
        );
    }
    let read: usize = viewers.iter().map(|v| v.bytes.len()).sum::<usize>() + late.bytes.len();
    assert!(total >= read as u64, "counted {total}, read {read}");
}

#[tokio::test]
async fn the_upstream_closes_when_the_last_viewer_leaves() {
    let origin = Origin::start().await;
    origin.live_ts("/ch.ts", 100_000);
    let proxy = Proxy::start().await;
    let (_, endpoint) = proxy.register(&origin.url("/ch.ts"), &[]).await;

    let mut first = TsViewer::open(&proxy, &endpoint).await;
    let mut second = TsViewer::open(&proxy, &endpoint).await;
    first.read_packets(10, WITHIN).await;
    second.read_packets(10, WITHIN).await;
    drop(first);
    // One viewer left: the other keeps playing on the same upstream.
    second.read_packets(200, WITHIN).await;
    assert_continuous(&second);
    assert_eq!(origin.hits("/ch.ts"), 1);
    assert_eq!(proxy.metric("m3u_proxy_live_upstreams").await, 1);

    drop(second);
    wait_upstream_closed(&origin, &proxy, Duration::from_secs(3)).await;

    // The next viewer opens a new upstream, from the live edge.
    let mut again = TsViewer::open(&proxy, &endpoint).await;
    again.read_packets(10, WITHIN).await;
    assert_eq!(origin.hits("/ch.ts"), 2);
}

/// `names` watch a channel whose primary dies; returns the stream's error count after
/// every viewer is on the backup, having checked each moved once on its connection and
/// the viewers moved together, on one upstream.
async fn primary_dies_under(names: &[&str]) -> u64 {
    let a = Origin::start().await;
    a.live_ts("/ch.ts", 100_000);
    let b = Origin::start().await;
    b.live_ts("/ch.ts", 100_000);
    let proxy = Proxy::start_with(|c| {
        c.failover.backoff = Duration::from_millis(50);
        c.upstream.read_stall = Duration::from_secs(1);
    })
    .await;
    let (id, endpoint) = proxy.register(&a.url("/ch.ts"), &[b.url("/ch.ts")]).await;

    let mut viewers = Vec::new();
    for name in names {
        let mut v = tune_in(&proxy, &endpoint, name).await;
        v.read_packets(20, WITHIN).await;
        viewers.push(v);
    }
    a.kill().await;
    for v in &mut viewers {
        v.read_past_switch(100, WITHIN).await;
        assert_eq!(
            v.discontinuities().len(),
            1,
            "one switch, on the same connection"
        );
    }
    assert_eq!(a.hits("/ch.ts"), 1);
    assert_eq!(b.hits("/ch.ts"), 1, "one upstream on the backup");
    let info = proxy.get_json(&format!("/streams/{id}")).await["stream"].clone();
    assert_eq!(info["failover_count"], 1);
    assert_eq!(info["active_connections"], names.len());
    info["error_count"].as_u64().unwrap()
}

#[tokio::test]
async fn when_the_primary_dies_every_viewer_moves_with_the_one_upstream() {
    let alone = primary_dies_under(&["alone"]).await;
    let together = primary_dies_under(&["one", "two", "three"]).await;
    assert!(alone >= 1);
    // The loss is the stream's, met once by the shared upstream: not once per viewer.
    assert_eq!(together, alone, "errors with three viewers and with one");
}

#[tokio::test]
async fn a_slow_viewer_is_dropped_and_never_holds_up_the_others() {
    let (origin, proxy, endpoint) = fast_channel(SlowViewer::Drop).await;

    let mut steady = tune_in(&proxy, &endpoint, "steady").await;
    let mut stalled = tune_in(&proxy, &endpoint, "stalled").await;
    // The steady viewer reads 24 MB (3 s of stream) while the other reads nothing.
    steady.read_packets(24_000_000 / TS_PACKET, WITHIN).await;
    assert_continuous(&steady);
    // The stalled player finds what its buffers held, then a cut connection: it fell
    // further behind than the shared buffer, so it is let go rather than waited for.
    stalled.read_until_cut(WITHIN).await;
    assert_continuous(&stalled);
    assert!(
        stalled.bytes.len() < steady.bytes.len() / 2,
        "it really fell behind"
    );
    assert_eq!(slow_viewers(&proxy, "dropped").await, 1);
    // The steady viewer never noticed.
    steady
        .read_packets(steady.numbers().len() + 1000, WITHIN)
        .await;
    assert_continuous(&steady);
    assert_eq!(origin.hits("/fast.ts"), 1);
}

#[tokio::test]
async fn a_paused_player_does_not_keep_the_upstream_open() {
    let (origin, proxy, endpoint) = fast_channel(SlowViewer::Drop).await;

    // The only viewer reads a little, then pauses with its connection open.
    let mut paused = tune_in(&proxy, &endpoint, "paused").await;
    paused.read_packets(100, WITHIN).await;
    wait_upstream_closed(&origin, &proxy, Duration::from_secs(10)).await;
    // Resuming, it gets what its buffers held, then a cut: its player reconnects.
    paused.read_until_cut(WITHIN).await;
    assert_continuous(&paused);
    assert_eq!(slow_viewers(&proxy, "dropped").await, 1);
    let mut again = tune_in(&proxy, &endpoint, "paused").await;
    again.read_packets(10, WITHIN).await;
    assert_eq!(
        origin.hits("/fast.ts"),
        2,
        "a new upstream for the player that came back"
    );
}

#[tokio::test]
async fn a_slow_viewer_skips_ahead_when_told_to() {
    let (_origin, proxy, endpoint) = fast_channel(SlowViewer::Skip).await;

    let mut steady = tune_in(&proxy, &endpoint, "steady").await;
    let mut behind = tune_in(&proxy, &endpoint, "behind").await;
    steady.read_packets(24_000_000 / TS_PACKET, WITHIN).await;
    assert_continuous(&steady);
    // The viewer that fell behind keeps its connection and jumps forward, whole packets only.
    behind.read_packets(steady.numbers().len(), WITHIN).await;
    let numbers = behind.numbers();
    assert!(!behind.discontinuities().is_empty(), "no skip");
    assert!(numbers.windows(2).all(|w| w[1] > w[0]), "never backwards");
    assert!(slow_viewers(&proxy, "skipped").await >= 1);
    assert_eq!(slow_viewers(&proxy, "dropped").await, 0);
}

#[tokio::test]
async fn viewers_waiting_on_a_dead_channel_share_its_failure() {
    let origin = Origin::start().await;
    origin.live_ts("/dead.ts", 100_000);
    origin.fault("/dead.ts", Fault::Hang);
    let proxy = Proxy::start_with(|c| c.upstream.first_byte = Duration::from_millis(1500)).await;
    let (_, endpoint) = proxy.register(&origin.url("/dead.ts"), &[]).await;

    // Three players tune in together: one waits out the origin, the others get its answer
    // instead of each waiting out the same silence in turn.
    let started = Instant::now();
    let answers = futures_util::future::join_all((0..3).map(|_| proxy.get(&endpoint))).await;
    let waited = started.elapsed();
    for res in answers {
        assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    }
    assert!(
        waited < Duration::from_millis(2900),
        "waited {waited:?}: in turn"
    );
    assert_eq!(origin.hits("/dead.ts"), 1);

    // A player who comes later tries again, and plays once the origin is back.
    origin.clear_fault("/dead.ts");
    let mut later = TsViewer::open(&proxy, &endpoint).await;
    later.read_packets(10, WITHIN).await;
    assert_eq!(origin.hits("/dead.ts"), 2);
}

#[tokio::test]
async fn files_ranges_and_a_zero_buffer_are_never_shared() {
    let origin = Origin::start().await;
    let file: Vec<u8> = (0..94_000u32).map(|i| (i % 251) as u8).collect();
    origin.put("/movie.ts", file.clone(), "video/mp2t");
    origin.live_ts("/ch.ts", 100_000);
    let proxy = Proxy::start().await;

    // A file: every viewer gets it whole, from its own upstream request.
    let (_, movie) = proxy.register(&origin.url("/movie.ts"), &[]).await;
    let (a, b) = tokio::join!(proxy.get(&movie), proxy.get(&movie));
    assert_eq!(a.bytes().await.unwrap(), file);
    assert_eq!(b.bytes().await.unwrap(), file);
    assert_eq!(origin.hits("/movie.ts"), 2);

    // A range of a live channel is the viewer's own request.
    let (_, live) = proxy.register(&origin.url("/ch.ts"), &[]).await;
    let mut shared = TsViewer::open(&proxy, &live).await;
    shared.read_packets(5, WITHIN).await;
    let ranged = proxy
        .http
        .get(proxy.url(&live))
        .header("range", "bytes=1000-")
        .send()
        .await
        .unwrap();
    assert!(ranged.status().is_success());
    drop(ranged);
    assert_eq!(origin.hits("/ch.ts"), 2);

    // FANOUT_BUFFER=0: one upstream per viewer.
    let unshared = Proxy::start_with(|c| c.fanout.buffer = 0).await;
    let (_, live) = unshared.register(&origin.url("/ch.ts"), &[]).await;
    let before = origin.hits("/ch.ts");
    let mut one = TsViewer::open(&unshared, &live).await;
    let mut two = TsViewer::open(&unshared, &live).await;
    one.read_packets(5, WITHIN).await;
    two.read_packets(5, WITHIN).await;
    assert_eq!(origin.hits("/ch.ts"), before + 2);
    assert_eq!(unshared.metric("m3u_proxy_live_joins_total").await, 0);
    assert_eq!(unshared.metric("m3u_proxy_live_upstreams").await, 0);
}
