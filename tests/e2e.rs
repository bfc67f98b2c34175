//! End to end: real media made by ffmpeg, served by the local origin, played through the
//! proxy by real players (ffprobe and `ffmpeg -f null`). Each test first plays the same URL
//! straight from the origin, so a failure here is the proxy's, never the fixture's.
//!
//! These tests need ffmpeg and ffprobe; see `media::require_ffmpeg` for when they skip.

use std::time::{Duration, Instant};

use reqwest::header;
use reqwest::StatusCode;
use serde_json::Value;

use crate::util::media::{
    self, decode, decode_first, decode_joining, ffprobe, sha256_hex, Probe, CLIP_SECONDS,
    PLAYER_MARK,
};
use crate::util::origin::{Origin, Seen};
use crate::util::{poll_for, Proxy};

/// Decoders may add a frame's worth at either end; anything beyond means lost media.
const TOLERANCE: f64 = 0.25;

async fn origin_with_media() -> Origin {
    let origin = Origin::start().await;
    media::serve(&origin);
    origin
}

/// Registers `upstream` and returns the URL a player uses, checking the proxy picked the
/// route a player of this kind needs.
async fn play_url(proxy: &Proxy, upstream: &str, hls: bool) -> String {
    let created: Value = proxy.create_stream(upstream).await;
    let id = created["stream_id"].as_str().expect("stream_id");
    let endpoint = created["stream_endpoint"]
        .as_str()
        .expect("stream_endpoint");
    let expected = if hls {
        format!("/hls/{id}/playlist.m3u8")
    } else {
        format!("/stream/{id}")
    };
    assert_eq!(endpoint, expected, "{created}");
    format!("{}{expected}", proxy.base)
}

/// Fails if any request to the origin after the first `since` came from a player.
fn assert_no_bypass(origin: &Origin, since: usize) {
    let bypass: Vec<String> = origin
        .requests()
        .into_iter()
        .skip(since)
        .filter(|(_, seen)| seen.headers.contains_key(PLAYER_MARK))
        .map(|(path, _)| path)
        .collect();
    assert!(
        bypass.is_empty(),
        "players fetched from the origin directly: {bypass:?}"
    );
}

fn assert_seconds(what: &str, seconds: f64, expected: f64) {
    assert!(
        (seconds - expected).abs() <= TOLERANCE,
        "{what}: {seconds} s, expected {expected} s"
    );
}

/// What the players got through the proxy, and which origin requests that took.
struct Proxied {
    probe: Probe,
    requests: Vec<(String, Seen)>,
}

impl Proxied {
    /// The proxy's requests to the origin for `path`.
    fn requests_for(&self, path: &str) -> Vec<&Seen> {
        let to_path = self
            .requests
            .iter()
            .filter(|(seen_path, _)| seen_path == path);
        to_path.map(|(_, seen)| seen).collect()
    }
}

/// Plays `upstream` directly, then through the proxy, with both players; both runs must
/// decode [`CLIP_SECONDS`] with the same streams and frame count, without errors.
async fn plays_the_same(origin: &Origin, upstream: &str, hls: bool) -> Proxied {
    let direct_probe = ffprobe(upstream).await;
    let direct_decoded = decode(upstream).await;
    assert_seconds("direct ffprobe", direct_probe.duration, CLIP_SECONDS);
    assert_seconds("direct decode", direct_decoded.seconds, CLIP_SECONDS);

    let direct_requests = origin.requests().len();
    let proxy = Proxy::start().await;
    let url = play_url(&proxy, upstream, hls).await;
    let probe = ffprobe(&url).await;
    assert_seconds("proxied ffprobe", probe.duration, direct_probe.duration);
    assert_eq!(
        probe.streams, direct_probe.streams,
        "streams through the proxy"
    );
    let decoded = decode(&url).await;
    assert_seconds("proxied decode", decoded.seconds, direct_decoded.seconds);
    assert_eq!(
        decoded.frames, direct_decoded.frames,
        "frames through the proxy"
    );
    assert_no_bypass(origin, direct_requests);
    let requests = origin.requests().split_off(direct_requests);
    Proxied { probe, requests }
}

#[tokio::test]
async fn master_with_three_variants_and_an_audio_rendition() {
    if !media::require_ffmpeg() {
        return;
    }
    let origin = origin_with_media().await;
    // Behind a redirect: relative variant URIs resolve against the final URL.
    origin.redirect("/go/master.m3u8", "/media/abr/master.m3u8", 302);
    let upstream = origin.url("/go/master.m3u8");
    let proxied = plays_the_same(&origin, &upstream, true).await;

    let probe = &proxied.probe;
    let mut widths: Vec<u64> = probe
        .streams
        .iter()
        .filter(|(kind, _)| kind == "video")
        .filter_map(|(_, width)| *width)
        .collect();
    widths.sort_unstable();
    assert_eq!(widths, [160, 256, 320], "{probe:?}");
    // The variants carry no audio: this stream exists only if EXT-X-MEDIA was followed.
    assert_eq!(probe.count("audio"), 1, "{probe:?}");
    for rendition in ["high", "mid", "low", "audio"] {
        let path = format!("/media/abr/{rendition}/seg0.ts");
        let fetched = proxied.requests_for(&path);
        assert!(
            !fetched.is_empty(),
            "{path} never fetched through the proxy"
        );
    }
}

#[tokio::test]
async fn fmp4_with_init_section_and_absolute_uris() {
    if !media::require_ffmpeg() {
        return;
    }
    let origin = origin_with_media().await;
    let playlist = String::from_utf8(media::media().read("fmp4/index.m3u8")).unwrap();
    let base = origin.url("/media/fmp4/");
    let absolute = playlist
        .replace("URI=\"init.mp4\"", &format!("URI=\"{base}init.mp4\""))
        .replace("\nseg", &format!("\n{base}seg"));
    assert!(absolute.contains("#EXT-X-MAP:URI=\"http://"), "{absolute}");
    origin.put("/fmp4.m3u8", absolute, "application/vnd.apple.mpegurl");

    let proxied = plays_the_same(&origin, &origin.url("/fmp4.m3u8"), true).await;
    assert!(!proxied.requests_for("/media/fmp4/init.mp4").is_empty());
}

#[tokio::test]
async fn aes_128_with_a_root_relative_key() {
    if !media::require_ffmpeg() {
        return;
    }
    let origin = origin_with_media().await;
    let upstream = origin.url("/media/aes/index.m3u8");
    let proxied = plays_the_same(&origin, &upstream, true).await;
    assert!(!proxied.requests_for(media::KEY_PATH).is_empty());
}

#[tokio::test]
async fn byte_range_segments() {
    if !media::require_ffmpeg() {
        return;
    }
    let origin = origin_with_media().await;
    let upstream = origin.url("/media/byterange/index.m3u8");
    let proxied = plays_the_same(&origin, &upstream, true).await;
    // Every fetch of the single file is a range: a whole-file fetch would mean the proxy
    // dropped EXT-X-BYTERANGE's Range on the way.
    let fetches = proxied.requests_for("/media/byterange/index.ts");
    assert!(!fetches.is_empty());
    for seen in fetches {
        let range = seen
            .headers
            .get(header::RANGE)
            .map(|value| value.to_str().unwrap());
        assert!(
            range.is_some_and(|range| range.starts_with("bytes=")),
            "{range:?}"
        );
    }
}

#[tokio::test]
async fn live_sliding_window_plays_past_its_first_window() {
    if !media::require_ffmpeg() {
        return;
    }
    let origin = origin_with_media().await;
    let proxy = Proxy::start().await;
    let path = "/media/live/live.m3u8";
    let window = media::live_window(&origin, path);
    let url = play_url(&proxy, &origin.url(path), true).await;

    // ffmpeg starts at the live edge and follows the window until EXT-X-ENDLIST.
    let decoded = decode(&url).await;
    window.await.unwrap();
    let total = media::LIVE_SEGMENTS as f64;
    let first_window = media::LIVE_WINDOW as f64;
    assert!(
        decoded.seconds > first_window + 1.0 && decoded.seconds <= total + TOLERANCE,
        "decoded {} s of a {total} s live stream",
        decoded.seconds
    );
    assert!(
        origin.hits(path) > 3,
        "playlist refreshed {} times",
        origin.hits(path)
    );
    assert_no_bypass(&origin, 0);
}

#[tokio::test]
async fn direct_files_are_byte_identical_with_and_without_range() {
    if !media::require_ffmpeg() {
        return;
    }
    let origin = origin_with_media().await;
    let proxy = Proxy::start().await;
    for (file, content_type) in [("clip.ts", "video/mp2t"), ("clip.mp4", "video/mp4")] {
        let original = media::media().read(&format!("direct/{file}"));
        let len = original.len();
        let url = play_url(&proxy, &origin.url(&format!("/media/direct/{file}")), false).await;

        let whole = proxy.http.get(&url).send().await.unwrap();
        assert_eq!(whole.status(), StatusCode::OK, "{file}");
        assert_eq!(whole.headers()[header::CONTENT_TYPE], content_type);
        assert_eq!(
            whole.headers()[header::CONTENT_LENGTH],
            len.to_string().as_str()
        );
        let body = whole.bytes().await.unwrap();
        assert_eq!(sha256_hex(&body), sha256_hex(&original), "{file}");

        let head = proxy.http.head(&url).send().await.unwrap();
        assert_eq!(head.status(), StatusCode::OK, "{file} HEAD");
        assert_eq!(
            head.headers()[header::CONTENT_LENGTH],
            len.to_string().as_str()
        );

        let middle = (len / 3, 2 * len / 3);
        for (range, first, last) in [
            (
                format!("bytes={}-{}", middle.0, middle.1),
                middle.0,
                middle.1,
            ),
            (format!("bytes={}-", len - 1000), len - 1000, len - 1),
            ("bytes=-188".to_owned(), len - 188, len - 1),
        ] {
            let partial = proxy
                .http
                .get(&url)
                .header(header::RANGE, &range)
                .send()
                .await
                .unwrap();
            assert_eq!(
                partial.status(),
                StatusCode::PARTIAL_CONTENT,
                "{file} {range}"
            );
            let content_range = format!("bytes {first}-{last}/{len}");
            assert_eq!(
                partial.headers()[header::CONTENT_RANGE],
                content_range.as_str()
            );
            let body = partial.bytes().await.unwrap();
            assert_eq!(
                sha256_hex(&body),
                sha256_hex(&original[first..=last]),
                "{range}"
            );
        }
        let beyond = proxy
            .http
            .get(&url)
            .header(header::RANGE, format!("bytes={len}-"))
            .send()
            .await
            .unwrap();
        assert_eq!(beyond.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{file}");

        // Players seek with Range too (the mp4's index sits at its end).
        let probe = ffprobe(&url).await;
        assert_seconds(&format!("{file} ffprobe"), probe.duration, CLIP_SECONDS);
        let decoded = decode(&url).await;
        assert_seconds(&format!("{file} decode"), decoded.seconds, CLIP_SECONDS);
        assert_eq!(decoded.frames, 100, "{file}: 4 s at 25 fps");
    }
    assert_no_bypass(&origin, 0);
}

#[tokio::test]
async fn live_ts_is_relayed_as_it_arrives_and_decodes() {
    if !media::require_ffmpeg() {
        return;
    }
    let origin = Origin::start().await;
    let recording = media::media().read("direct/clip.ts");
    // Real time: the origin takes CLIP_SECONDS to send the whole recording.
    let rate = (recording.len() as f64 / CLIP_SECONDS) as u64;
    // Two channels, so each viewer is the first of its own stream and starts at byte 0.
    origin.paced("/channel/one.ts", recording.clone(), rate);
    origin.paced("/channel/two.ts", recording.clone(), rate);
    let proxy = Proxy::start().await;

    let url = play_url(&proxy, &origin.url("/channel/one.ts"), false).await;
    let started = Instant::now();
    let mut response = proxy.http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get(header::CONTENT_LENGTH).is_none());
    let mut received = Vec::new();
    let first = response.chunk().await.unwrap().expect("first bytes");
    let first_byte = started.elapsed();
    received.extend_from_slice(&first);
    // Half the recording is enough: what a live stream does at its end is failover's business.
    let half = recording.len() / 2;
    while received.len() < half {
        received.extend_from_slice(&response.chunk().await.unwrap().expect("more bytes"));
    }
    drop(response);
    assert!(
        first_byte < Duration::from_secs(1),
        "first byte after {first_byte:?}: the proxy buffered the live stream"
    );
    assert_eq!(
        sha256_hex(&received[..half]),
        sha256_hex(&recording[..half])
    );

    let url = play_url(&proxy, &origin.url("/channel/two.ts"), false).await;
    let started = Instant::now();
    let decoded = decode_first(&url, 2.0).await;
    assert_seconds("live decode", decoded.seconds, 2.0);
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "2 s of live media decoded in {:?}: not paced like a live stream",
        started.elapsed()
    );
    assert_no_bypass(&origin, 0);
}

#[tokio::test]
async fn two_players_share_one_live_upstream_and_both_decode() {
    if !media::require_ffmpeg() {
        return;
    }
    let origin = Origin::start().await;
    let recording = media::media().read("direct/clip.ts");
    let rate = (recording.len() as f64 / CLIP_SECONDS) as u64;
    origin.paced("/channel/shared.ts", recording, rate);
    let proxy = Proxy::start().await;
    let url = play_url(&proxy, &origin.url("/channel/shared.ts"), false).await;
    let id = url.rsplit('/').next().unwrap().to_owned();

    // The first player opens the channel from its start; the second tunes in half a
    // second later, mid-stream, on the same upstream connection.
    let second = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        decode_joining(&url, 1.5).await
    };
    // Once both play (and before the 4 s recording ends, when the proxy reconnects as for
    // any live stream that ends), the origin has been asked once.
    let while_both_play = poll_for(Duration::from_millis(3500), || async {
        let info = proxy.get_json(&format!("/streams/{id}")).await;
        (info["stream"]["active_connections"] == 2).then(|| origin.hits("/channel/shared.ts"))
    });
    let (first, second, hits) = tokio::join!(decode_first(&url, 2.0), second, while_both_play);
    let hits = hits.expect("both players connected at once");
    assert_eq!(hits, 1, "both players on one upstream");
    assert_seconds("first player", first.seconds, 2.0);
    assert_seconds("player who joined", second.seconds, 1.5);
    // Its picture starts at the first keyframe after it joined (one a second): at least
    // half a second of 25 fps video within its 1.5 s.
    assert!(second.frames >= 12, "{} frames decoded", second.frames);
    assert_no_bypass(&origin, 0);
}
