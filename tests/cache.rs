//! The shared segment and playlist cache: many viewers of one segment cause one upstream
//! fetch and all get every byte, as it arrives; Range bypasses it; a leader hanging up does
//! not hurt the others; an upstream cut is a cut for everyone and is never kept; entries
//! expire and stay within the byte budget; every viewer is still counted exactly.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::util::origin::{Fault, Origin};
use crate::util::player::{uri_lines, Player};
use crate::util::{eventually, Proxy};

const MPEGURL: &str = "application/vnd.apple.mpegurl";

fn body_of(size: usize, seed: u8) -> Bytes {
    (0..size)
        .map(|i| ((i % 251) as u8).wrapping_add(seed))
        .collect::<Vec<_>>()
        .into()
}

/// Registers a media playlist listing `segments` (absolute URLs) and returns the stream id.
async fn stream_of(proxy: &Proxy, origin: &Origin, segments: &[String]) -> String {
    let mut media = String::from("#EXTM3U\n#EXT-X-TARGETDURATION:4\n");
    for s in segments {
        media.push_str(&format!("#EXTINF:4.0,\n{s}\n"));
    }
    media.push_str("#EXT-X-ENDLIST\n");
    origin.put("/live/index.m3u8", media, MPEGURL);
    let created = proxy.create_stream(&origin.url("/live/index.m3u8")).await;
    created["stream_id"].as_str().unwrap().to_string()
}

/// A viewer's playlist: its length and the proxied URLs of its segments.
async fn open(proxy: &Proxy, player: &Player, id: &str) -> (u64, Vec<String>) {
    let url = player.playlist_url(proxy, id);
    let text = player.fetch(&url).await;
    let base = url::Url::parse(&url).unwrap();
    let uris = uri_lines(std::str::from_utf8(&text).unwrap())
        .iter()
        .map(|u| base.join(u).unwrap().to_string())
        .collect();
    (text.len() as u64, uris)
}

/// An origin for one segment whose first connection sends the head and the first half of
/// the body, then waits for the gate: it sends the rest, or (when `cut`) drops the
/// connection. Later connections get the whole body at once. It counts connections.
struct Gated {
    url: String,
    connections: Arc<AtomicUsize>,
    gate: watch::Sender<bool>,
}

impl Gated {
    async fn start(body: Bytes, cut: bool) -> Gated {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/seg/gated.ts", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let (gate, _) = watch::channel(false);
        let (count, gate_tx) = (connections.clone(), gate.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    return;
                };
                let first = count.fetch_add(1, Ordering::SeqCst) == 0;
                let (body, mut gate) = (body.clone(), gate_tx.subscribe());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let header = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: video/mp2t\r\n\
                         Connection: close\r\n\r\n",
                        body.len()
                    );
                    let half = body.len() / 2;
                    let first_part = if first { &body[..half] } else { &body[..] };
                    if tcp.write_all(header.as_bytes()).await.is_err()
                        || tcp.write_all(first_part).await.is_err()
                        || !first
                    {
                        return;
                    }
                    let _ = gate.wait_for(|open| *open).await;
                    if !cut {
                        let _ = tcp.write_all(&body[half..]).await;
                        let _ = tcp.shutdown().await;
                    }
                });
            }
        });
        Gated {
            url,
            connections,
            gate,
        }
    }

    fn open(&self) {
        self.gate.send_replace(true);
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Reads a response until at least `n` body bytes arrived; returns them and the response.
async fn read_at_least(mut res: reqwest::Response, n: usize) -> (Vec<u8>, reqwest::Response) {
    let mut got = Vec::new();
    while got.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(5), res.chunk())
            .await
            .expect("bytes before the origin finished")
            .expect("body")
            .expect("more body");
        got.extend_from_slice(&chunk);
    }
    (got, res)
}

async fn read_rest(mut got: Vec<u8>, mut res: reqwest::Response) -> Result<Vec<u8>, String> {
    loop {
        match res.chunk().await {
            Ok(Some(c)) => got.extend_from_slice(&c),
            Ok(None) => return Ok(got),
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[tokio::test]
async fn concurrent_viewers_of_a_segment_cause_one_fetch_and_are_each_counted() {
    let origin = Origin::start().await;
    let body = body_of(300_000, 7);
    origin.put("/seg/a.ts", body.clone(), "video/mp2t");
    // The origin is slow to answer, so every viewer asks while the first fetch is under way.
    origin.fault(
        "/seg/a.ts",
        Fault::Times(
            1,
            Box::new(Fault::FirstByteDelay(Duration::from_millis(300))),
        ),
    );
    let proxy = Proxy::start().await;
    let id = stream_of(&proxy, &origin, &[origin.url("/seg/a.ts")]).await;
    const VIEWERS: usize = 8;
    let players: Vec<Player> = (0..VIEWERS)
        .map(|i| Player::new(Some("tv"), Some(&format!("viewer-{i}"))))
        .collect();
    let opened = join_all(players.iter().map(|p| open(&proxy, p, &id))).await;
    // Every viewer's playlist names the viewer, but the origin's playlist was fetched once.
    assert_eq!(origin.hits("/live/index.m3u8"), 1);
    for (i, (_, uris)) in opened.iter().enumerate() {
        let again = open(&proxy, &players[i], &id).await;
        assert_eq!(
            &again.1, uris,
            "the rewrite of a shared playlist is per viewer"
        );
    }
    assert_eq!(origin.hits("/live/index.m3u8"), 1);

    let answers = join_all(
        players
            .iter()
            .zip(&opened)
            .map(|(p, (_, uris))| async move {
                let res = p.get(&uris[0]).await;
                let cache = res.headers()["x-cache"].to_str().unwrap().to_string();
                assert_eq!(res.status(), StatusCode::OK);
                assert_eq!(res.headers()["content-length"], "300000");
                (cache, res.bytes().await.unwrap())
            }),
    )
    .await;
    assert_eq!(
        origin.hits("/seg/a.ts"),
        1,
        "one upstream fetch for all viewers"
    );
    for (_, got) in &answers {
        assert!(got == &body, "every viewer gets the segment, byte for byte");
    }
    let misses = answers.iter().filter(|(c, _)| c == "MISS").count();
    assert_eq!(
        misses,
        1,
        "{:?}",
        answers.iter().map(|a| &a.0).collect::<Vec<_>>()
    );

    for (i, (playlist_bytes, _)) in opened.iter().enumerate() {
        let c = eventually(Duration::from_secs(5), "connections released", || async {
            let c = proxy.get_json(&format!("/clients/viewer-{i}")).await;
            (c["active_connections"] == 0).then_some(c)
        })
        .await;
        assert_eq!(
            c["bytes_served"],
            2 * playlist_bytes + 300_000,
            "viewer-{i}"
        );
        assert_eq!(c["segments_served"], 1, "viewer-{i}");
    }
    let stream = proxy.get_json(&format!("/streams/{id}")).await;
    assert_eq!(stream["stream"]["total_segments_served"], VIEWERS as u64);
    assert_eq!(proxy.metric("m3u_proxy_cache_hits_total").await, 7 + 15);
    assert_eq!(proxy.metric("m3u_proxy_cache_misses_total").await, 2);
    assert_eq!(proxy.metric("m3u_proxy_cache_bytes").await, 300_000);
    assert_eq!(proxy.metric("m3u_proxy_segments_served_total").await, 8);
}

#[tokio::test]
async fn a_viewer_joining_mid_fill_gets_the_bytes_so_far_then_the_rest() {
    let body = body_of(400_000, 1);
    let gated = Gated::start(body.clone(), false).await;
    let origin = Origin::start().await;
    let proxy = Proxy::start().await;
    let id = stream_of(&proxy, &origin, std::slice::from_ref(&gated.url)).await;
    let (a, b) = (Player::new(None, Some("a")), Player::new(None, Some("b")));
    let (_, uris_a) = open(&proxy, &a, &id).await;
    let (_, uris_b) = open(&proxy, &b, &id).await;

    let (got_a, res_a) = read_at_least(a.get(&uris_a[0]).await, 1).await;
    // The second viewer arrives while the origin holds back the second half, and gets the
    // first half at once rather than after the whole body.
    let res_b = b.get(&uris_b[0]).await;
    assert_eq!(res_b.headers()["x-cache"], "HIT");
    let (got_b, res_b) = read_at_least(res_b, 200_000).await;
    assert_eq!(&got_b[..], &body[..got_b.len()]);
    gated.open();
    let all_a = read_rest(got_a, res_a).await.unwrap();
    let all_b = read_rest(got_b, res_b).await.unwrap();
    assert!(all_a == body && all_b == body);
    assert_eq!(gated.connections(), 1);
}

#[tokio::test]
async fn a_leader_who_hangs_up_does_not_cut_the_others() {
    let body = body_of(400_000, 2);
    let gated = Gated::start(body.clone(), false).await;
    let origin = Origin::start().await;
    let proxy = Proxy::start().await;
    let id = stream_of(&proxy, &origin, std::slice::from_ref(&gated.url)).await;
    let (a, b) = (Player::new(None, Some("a")), Player::new(None, Some("b")));
    let (_, uris_a) = open(&proxy, &a, &id).await;
    let (playlist_b, uris_b) = open(&proxy, &b, &id).await;

    let (_, res_a) = read_at_least(a.get(&uris_a[0]).await, 1).await;
    let (got_b, res_b) = read_at_least(b.get(&uris_b[0]).await, 1).await;
    drop(res_a);
    eventually(Duration::from_secs(5), "the leader's hang-up", || async {
        let c = proxy.get_json("/clients/a").await;
        (c["active_connections"] == 0).then_some(())
    })
    .await;
    gated.open();
    let all_b = read_rest(got_b, res_b).await.unwrap();
    assert!(all_b == body, "the follower got every byte");
    // And the entry is complete for whoever comes next.
    let res = b.get(&uris_b[0]).await;
    assert_eq!(res.headers()["x-cache"], "HIT");
    assert!(res.bytes().await.unwrap() == body);
    assert_eq!(gated.connections(), 1);
    let c = eventually(
        Duration::from_secs(5),
        "b's connections released",
        || async {
            let c = proxy.get_json("/clients/b").await;
            (c["active_connections"] == 0).then_some(c)
        },
    )
    .await;
    assert_eq!(c["bytes_served"], playlist_b + 800_000);
    assert_eq!(c["segments_served"], 2);
}

#[tokio::test]
async fn an_upstream_cut_mid_fill_cuts_every_viewer_and_is_not_kept() {
    let body = body_of(400_000, 3);
    let gated = Gated::start(body.clone(), true).await;
    let origin = Origin::start().await;
    let proxy = Proxy::start().await;
    let id = stream_of(&proxy, &origin, std::slice::from_ref(&gated.url)).await;
    let player = Player::new(None, Some("p"));
    let (_, uris) = open(&proxy, &player, &id).await;

    let (got_a, res_a) = read_at_least(player.get(&uris[0]).await, 1).await;
    let (got_b, res_b) = read_at_least(player.get(&uris[0]).await, 1).await;
    gated.open();
    let (a, b) = (read_rest(got_a, res_a).await, read_rest(got_b, res_b).await);
    assert!(
        a.is_err(),
        "the leader's body must end with an error, not look complete"
    );
    assert!(
        b.is_err(),
        "a follower's body must end with an error, not look complete"
    );

    // The broken body was dropped: the next request fetches again and gets all of it.
    let res = player.get(&uris[0]).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-cache"], "MISS");
    assert!(res.bytes().await.unwrap() == body);
    assert_eq!(gated.connections(), 2);
}

#[tokio::test]
async fn range_requests_and_heads_go_upstream() {
    let origin = Origin::start().await;
    let body = body_of(100_000, 4);
    origin.put("/seg/r.ts", body.clone(), "video/mp2t");
    let proxy = Proxy::start().await;
    let id = stream_of(&proxy, &origin, &[origin.url("/seg/r.ts")]).await;
    let player = Player::new(None, Some("r"));
    let (_, uris) = open(&proxy, &player, &id).await;
    // Cached first, so a Range request could be (wrongly) answered from the entry.
    assert!(player.fetch(&uris[0]).await == body);
    assert_eq!(origin.hits("/seg/r.ts"), 1);
    for _ in 0..2 {
        let res = player
            .http
            .get(&uris[0])
            .header("range", "bytes=100-199")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(res.headers()["content-range"], "bytes 100-199/100000");
        assert!(res.bytes().await.unwrap() == body.slice(100..200));
    }
    assert_eq!(
        origin.hits("/seg/r.ts"),
        3,
        "each Range request went upstream"
    );
    let head = player.http.head(&uris[0]).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(origin.hits("/seg/r.ts"), 4);
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    let origin = Origin::start().await;
    let body = body_of(50_000, 5);
    origin.put("/seg/t.ts", body.clone(), "video/mp2t");
    let proxy = Proxy::start_with(|c| c.cache.segment_ttl = Duration::from_millis(300)).await;
    let id = stream_of(&proxy, &origin, &[origin.url("/seg/t.ts")]).await;
    let player = Player::new(None, Some("t"));
    let (_, uris) = open(&proxy, &player, &id).await;
    assert!(player.fetch(&uris[0]).await == body);
    assert!(player.fetch(&uris[0]).await == body);
    assert_eq!(origin.hits("/seg/t.ts"), 1);
    let res = eventually(Duration::from_secs(3), "the entry to expire", || async {
        let res = player.get(&uris[0]).await;
        (res.headers()["x-cache"] == "MISS").then_some(res)
    })
    .await;
    assert!(res.bytes().await.unwrap() == body);
    assert_eq!(origin.hits("/seg/t.ts"), 2);
}

#[tokio::test]
async fn the_byte_budget_evicts_the_oldest_and_skips_what_cannot_fit() {
    let origin = Origin::start().await;
    let segs: Vec<Bytes> = (0..3).map(|i| body_of(100_000, i)).collect();
    for (i, s) in segs.iter().enumerate() {
        origin.put(&format!("/seg/b{i}.ts"), s.clone(), "video/mp2t");
    }
    let big = body_of(300_000, 9);
    origin.put("/seg/big.ts", big.clone(), "video/mp2t");
    let proxy = Proxy::start_with(|c| c.cache.max_bytes = 250_000).await;
    let mut urls: Vec<String> = (0..3)
        .map(|i| origin.url(&format!("/seg/b{i}.ts")))
        .collect();
    urls.push(origin.url("/seg/big.ts"));
    let id = stream_of(&proxy, &origin, &urls).await;
    let player = Player::new(None, Some("b"));
    let (_, uris) = open(&proxy, &player, &id).await;

    for (i, s) in segs.iter().enumerate() {
        assert!(player.fetch(&uris[i]).await == s, "b{i}");
        assert!(proxy.metric("m3u_proxy_cache_bytes").await <= 250_000);
    }
    assert_eq!(proxy.metric("m3u_proxy_cache_bytes").await, 200_000);
    // b1 and b2 are held; b0, the oldest, made room for b2.
    assert!(player.fetch(&uris[2]).await == segs[2]);
    assert!(player.fetch(&uris[1]).await == segs[1]);
    assert_eq!(origin.hits("/seg/b1.ts"), 1);
    assert_eq!(origin.hits("/seg/b2.ts"), 1);
    assert!(player.fetch(&uris[0]).await == segs[0]);
    assert_eq!(origin.hits("/seg/b0.ts"), 2);
    // Bigger than the whole budget: relayed, never held.
    for n in 1..=2 {
        let res = player.get(&uris[3]).await;
        assert!(res.headers().get("x-cache").is_none());
        assert!(res.bytes().await.unwrap() == big);
        assert_eq!(origin.hits("/seg/big.ts"), n);
    }
    assert!(proxy.metric("m3u_proxy_cache_bytes").await <= 250_000);
}

#[tokio::test]
async fn errors_are_not_shared_and_the_next_request_fetches() {
    let origin = Origin::start().await;
    let body = body_of(10_000, 6);
    origin.put("/seg/e.ts", body.clone(), "video/mp2t");
    origin.fault("/seg/e.ts", Fault::Status(404));
    let proxy = Proxy::start().await;
    let id = stream_of(&proxy, &origin, &[origin.url("/seg/e.ts")]).await;
    let player = Player::new(None, Some("e"));
    let (_, uris) = open(&proxy, &player, &id).await;
    assert_eq!(player.get(&uris[0]).await.status(), StatusCode::NOT_FOUND);
    origin.clear_fault("/seg/e.ts");
    let res = player.get(&uris[0]).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-cache"], "MISS");
    assert!(res.bytes().await.unwrap() == body);
}
