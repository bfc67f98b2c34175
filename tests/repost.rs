//! Posting a stream again while it plays: its running viewers (a live TS feed shared by a
//! hub, an HLS player polling a variant) take the new URLs, user agent and headers, at the
//! latest on their next upstream request.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::util::origin::Origin;
use crate::util::ts_viewer::TsViewer;
use crate::util::{eventually, Proxy};

const MPEGURL: &str = "application/vnd.apple.mpegurl";
const WITHIN: Duration = Duration::from_secs(5);

/// An origin named `name` with a live TS channel at `/ch.ts` and a master at
/// `/master.m3u8` whose `lo` variant lists one segment whose body names the origin.
async fn origin(name: &str, bytes_per_sec: u64) -> Origin {
    let o = Origin::start().await;
    o.live_ts("/ch.ts", bytes_per_sec);
    o.put(
        "/master.m3u8",
        "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000\nlo/index.m3u8\n",
        MPEGURL,
    );
    o.put(
        "/lo/index.m3u8",
        format!(
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:7\n\
             #EXTINF:2.0,\n{name}/seg7.ts\n"
        ),
        MPEGURL,
    );
    o.put(
        &format!("/lo/{name}/seg7.ts"),
        format!("{name}/seg7"),
        "video/mp2t",
    );
    o
}

fn uri_line(text: &str) -> String {
    text.lines()
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap()
        .to_string()
}

fn resolve(base: &str, reference: &str) -> String {
    url::Url::parse(base)
        .unwrap()
        .join(reference)
        .unwrap()
        .to_string()
}

async fn get_text(proxy: &Proxy, url: &str) -> String {
    let res = proxy.http.get(url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{url}");
    res.text().await.unwrap()
}

/// A player of an HLS stream: its variant reference, refreshed like a live playlist.
struct HlsPlayer {
    variant: String,
}

impl HlsPlayer {
    async fn start(proxy: &Proxy, id: &str) -> HlsPlayer {
        let master_url = proxy.url(&format!("/hls/{id}/playlist.m3u8"));
        let master = get_text(proxy, &master_url).await;
        HlsPlayer {
            variant: resolve(&master_url, &uri_line(&master)),
        }
    }

    /// Refreshes the variant and fetches its segment: the body names the origin.
    async fn refresh(&self, proxy: &Proxy) -> String {
        let media = get_text(proxy, &self.variant).await;
        let segment = resolve(&self.variant, &uri_line(&media));
        get_text(proxy, &segment).await
    }
}

async fn repost(proxy: &Proxy, url: &str, backups: &[String], token: &str) {
    let (status, _) = proxy
        .post_stream(json!({
            "url": url,
            "failover_urls": backups,
            "user_agent": format!("box/{token}"),
            "headers": {"x-account": token},
        }))
        .await;
    assert_eq!(status, StatusCode::OK, "an update");
}

fn saw(origin: &Origin, path: &str, token: &str) -> bool {
    origin.last_request(path).is_some_and(|seen| {
        let header = |name| seen.headers.get(name).and_then(|v| v.to_str().ok());
        header("x-account") == Some(token)
            && header("user-agent") == Some(format!("box/{token}").as_str())
    })
}

/// A proxy with quick retries and two streams on `a` with `b` as backup, a live TS one
/// and an HLS one, each with a player; `c` is there to be posted.
struct Playing {
    a: Origin,
    b: Origin,
    c: Origin,
    proxy: Proxy,
    ts_id: String,
    hls_id: String,
    viewer: TsViewer,
    player: HlsPlayer,
}

impl Playing {
    /// Posts both streams again with `c` instead of `b` as backup, and with the account
    /// header and user agent `token`.
    async fn replace_backup_with_c(&self, token: &str) {
        for path in ["/ch.ts", "/master.m3u8"] {
            repost(&self.proxy, &self.a.url(path), &[self.c.url(path)], token).await;
        }
    }
}

async fn playing() -> Playing {
    // Distinct rates, so a move between origins shows as a jump in packet numbers.
    let (a, b, c) = (
        origin("a", 100_000).await,
        origin("b", 150_000).await,
        origin("c", 200_000).await,
    );
    let proxy = Proxy::start_with(|c| c.failover.backoff = Duration::from_millis(50)).await;
    let (ts_id, ts_endpoint) = proxy.register(&a.url("/ch.ts"), &[b.url("/ch.ts")]).await;
    let (hls_id, _) = proxy
        .register(&a.url("/master.m3u8"), &[b.url("/master.m3u8")])
        .await;
    let mut viewer = TsViewer::open(&proxy, &ts_endpoint).await;
    viewer.read_packets(20, WITHIN).await;
    let player = HlsPlayer::start(&proxy, &hls_id).await;
    assert_eq!(player.refresh(&proxy).await, "a/seg7");
    Playing {
        a,
        b,
        c,
        proxy,
        ts_id,
        hls_id,
        viewer,
        player,
    }
}

#[tokio::test]
async fn a_repost_moves_viewers_off_a_backup_it_removed_with_the_new_headers() {
    let mut p = playing().await;
    // Both streams fail over to the backup b.
    p.proxy.switch_now(&p.ts_id).await;
    p.proxy.switch_now(&p.hls_id).await;
    p.viewer.read_past_switch(20, WITHIN).await;
    assert_eq!(p.player.refresh(&p.proxy).await, "b/seg7");

    // The operator replaces b with c, with a new account header and user agent.
    p.replace_backup_with_c("new").await;

    // The HLS player's next refresh comes from c, asked with the new settings.
    assert_eq!(p.player.refresh(&p.proxy).await, "c/seg7");
    assert!(saw(&p.c, "/lo/index.m3u8", "new"));
    assert!(saw(&p.c, "/lo/c/seg7.ts", "new"));
    // The live viewer moves to c on its connection, asked with the new settings.
    p.viewer.read_past_switch(20, WITHIN).await;
    assert_eq!(p.c.hits("/ch.ts"), 1);
    assert!(saw(&p.c, "/ch.ts", "new"));
    let b_hits = p.b.hits("/ch.ts") + p.b.hits("/lo/index.m3u8");
    assert_eq!(p.player.refresh(&p.proxy).await, "c/seg7");
    assert_eq!(
        p.b.hits("/ch.ts") + p.b.hits("/lo/index.m3u8"),
        b_hits,
        "b is left"
    );
}

#[tokio::test]
async fn after_a_repost_a_manual_failover_goes_to_the_new_backup_with_the_new_headers() {
    let mut p = playing().await;
    p.replace_backup_with_c("new").await;
    // The URLs in use did not change: nobody is cut, and the next upstream requests
    // (once the playlist cache's short lifetime is over) carry the new headers.
    eventually(WITHIN, "a refresh asked with the new headers", || async {
        assert_eq!(p.player.refresh(&p.proxy).await, "a/seg7");
        saw(&p.a, "/lo/index.m3u8", "new").then_some(())
    })
    .await;
    let read = p.viewer.numbers().len();
    p.viewer.read_packets(read + 20, WITHIN).await;
    assert!(p.viewer.discontinuities().is_empty(), "nobody is cut");

    let done = p.proxy.switch_now(&p.ts_id).await;
    assert_eq!(done["current_url"], p.c.url("/ch.ts"));
    p.proxy.switch_now(&p.hls_id).await;
    p.viewer.read_past_switch(20, WITHIN).await;
    assert!(saw(&p.c, "/ch.ts", "new"));
    assert_eq!(p.player.refresh(&p.proxy).await, "c/seg7");
    assert!(saw(&p.c, "/lo/index.m3u8", "new"));
    assert_eq!(p.b.hits("/ch.ts") + p.b.hits("/master.m3u8"), 0);
}
