//! HLS playback through the proxy: rewritten playlists, the media, keys and init sections
//! behind signed references, Range, HEAD, redirects, CORS, LL-HLS, and origins that fail.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::util::origin::{Fault, Origin};
use crate::util::Proxy;

const MPEGURL: &str = "application/vnd.apple.mpegurl";

/// The URI lines of a playlist (not tags, not blanks).
fn uri_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// The quoted `URI="..."` value of the first line starting with `tag`.
fn tag_uri<'a>(text: &'a str, tag: &str) -> &'a str {
    let line = text.lines().find(|l| l.starts_with(tag)).expect(tag);
    let start = line.find("URI=\"").expect("URI attribute") + 5;
    let end = start + line[start..].find('"').unwrap();
    &line[start..end]
}

/// Resolves a reference found in the playlist at `playlist_path` (RFC 3986, as a player does).
fn resolve(proxy: &Proxy, playlist_path: &str, reference: &str) -> String {
    url::Url::parse(&proxy.url(playlist_path))
        .unwrap()
        .join(reference)
        .unwrap()
        .to_string()
}

async fn get_text(proxy: &Proxy, url: &str) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let res = proxy.http.get(url).send().await.unwrap();
    (
        res.status(),
        res.headers().clone(),
        res.text().await.unwrap(),
    )
}

struct Vod {
    origin: Origin,
    proxy: Proxy,
    id: String,
}

/// A master (relative, root-relative, absolute and extensionless variants plus an audio
/// rendition) whose media playlist has a key, an init section and byte-range segments.
async fn vod() -> Vod {
    let origin = Origin::start().await;
    let master = format!(
        "#EXTM3U\n\
         #EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aud\",NAME=\"en\",URI=\"audio/en.m3u8\"\n\
         #EXT-X-STREAM-INF:BANDWIDTH=800000,AUDIO=\"aud\"\n\
         low/index.m3u8\n\
         #EXT-X-STREAM-INF:BANDWIDTH=1600000,AUDIO=\"aud\"\n\
         /vod/mid/index.m3u8?quality=mid\n\
         #EXT-X-STREAM-INF:BANDWIDTH=3200000\n\
         {}\n\
         #EXT-X-STREAM-INF:BANDWIDTH=100000\n\
         variant?id=7\n",
        origin.url("/vod/high/index.m3u8")
    );
    origin.put("/vod/master.m3u8", master, MPEGURL);
    let media = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:4\n\
                 #EXT-X-KEY:METHOD=AES-128,URI=\"../keys/k1.key\",IV=0x1\n\
                 #EXT-X-MAP:URI=\"init.mp4\"\n\
                 #EXTINF:4.0,\nseg0.m4s\n\
                 #EXTINF:4.0,\n#EXT-X-BYTERANGE:1000@0\nall.m4s\n\
                 #EXTINF:4.0,\n#EXT-X-BYTERANGE:1000@1000\nall.m4s\n\
                 #EXT-X-ENDLIST\n";
    for p in [
        "/vod/low/index.m3u8",
        "/vod/mid/index.m3u8",
        "/vod/high/index.m3u8",
        "/vod/variant",
        "/vod/audio/en.m3u8",
    ] {
        origin.put(p, media, MPEGURL);
    }
    origin.put(
        "/vod/keys/k1.key",
        vec![7u8; 16],
        "application/octet-stream",
    );
    origin.put("/vod/low/init.mp4", b"INIT-SECTION".to_vec(), "video/mp4");
    origin.put("/vod/low/seg0.m4s", vec![1u8; 5000], "video/iso.segment");
    origin.put(
        "/vod/low/all.m4s",
        (0..2000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
        "",
    );
    let proxy = Proxy::start().await;
    let created = proxy.create_stream(&origin.url("/vod/master.m3u8")).await;
    let id = created["stream_id"].as_str().unwrap().to_string();
    Vod { origin, proxy, id }
}

#[tokio::test]
async fn a_master_playlist_is_rewritten_so_every_request_comes_back() {
    let Vod { origin, proxy, id } = vod().await;
    let path = format!("/hls/{id}/playlist.m3u8");
    let (status, headers, text) = get_text(&proxy, &proxy.url(&path)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], MPEGURL);
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert!(!text.contains("127.0.0.1"), "no upstream URL leaks: {text}");
    assert_eq!(text.lines().count(), 10, "line count preserved");
    assert!(text.contains("#EXT-X-STREAM-INF:BANDWIDTH=800000,AUDIO=\"aud\"\n"));

    let variants = uri_lines(&text);
    assert_eq!(variants.len(), 4);
    let upstream_paths = [
        "/vod/low/index.m3u8",
        "/vod/mid/index.m3u8",
        "/vod/high/index.m3u8",
        "/vod/variant",
    ];
    for (reference, upstream) in variants.iter().zip(upstream_paths) {
        assert!(
            !reference.starts_with('/') && !reference.contains("://"),
            "relative: {reference}"
        );
        assert!(
            reference.ends_with(".m3u8"),
            "a playlist reference ends in .m3u8: {reference}"
        );
        let (status, headers, body) = get_text(&proxy, &resolve(&proxy, &path, reference)).await;
        assert_eq!(status, StatusCode::OK, "{upstream}");
        assert_eq!(headers["content-type"], MPEGURL);
        assert!(body.starts_with("#EXTM3U\n#EXT-X-VERSION:7\n"));
        assert_eq!(origin.hits(upstream), 1, "{upstream} fetched once");
    }
    assert_eq!(
        origin
            .last_request("/vod/mid/index.m3u8")
            .unwrap()
            .query
            .as_deref(),
        Some("quality=mid"),
        "query strings of upstream URIs survive"
    );
    let audio = tag_uri(&text, "#EXT-X-MEDIA");
    let (status, _, _) = get_text(&proxy, &resolve(&proxy, &path, audio)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(origin.hits("/vod/audio/en.m3u8"), 1);
}

#[tokio::test]
async fn media_keys_init_sections_and_byte_ranges_play_through_references() {
    let Vod { origin, proxy, id } = vod().await;
    let master_path = format!("/hls/{id}/playlist.m3u8");
    let (_, _, master) = get_text(&proxy, &proxy.url(&master_path)).await;
    let media_url = resolve(&proxy, &master_path, uri_lines(&master)[0]);
    let media_path = url::Url::parse(&media_url).unwrap().path().to_string();
    let (_, _, media) = get_text(&proxy, &media_url).await;

    let key_ref = tag_uri(&media, "#EXT-X-KEY");
    assert!(
        key_ref.starts_with("../") && key_ref.ends_with(".key"),
        "{key_ref}"
    );
    let key = proxy
        .http
        .get(resolve(&proxy, &media_path, key_ref))
        .send()
        .await
        .unwrap();
    assert_eq!(key.status(), StatusCode::OK);
    assert_eq!(key.bytes().await.unwrap().to_vec(), vec![7u8; 16]);

    let map_ref = tag_uri(&media, "#EXT-X-MAP");
    assert!(map_ref.ends_with("init.mp4"), "{map_ref}");
    let init = proxy
        .http
        .get(resolve(&proxy, &media_path, map_ref))
        .send()
        .await
        .unwrap();
    assert_eq!(init.headers()["content-type"], "video/mp4");
    assert_eq!(init.bytes().await.unwrap().as_ref(), b"INIT-SECTION");

    let segs = uri_lines(&media);
    assert_eq!(segs.len(), 3);
    assert!(segs[0].ends_with("seg0.m4s"), "extension kept: {}", segs[0]);
    let seg = proxy
        .http
        .get(resolve(&proxy, &media_path, segs[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(seg.status(), StatusCode::OK);
    assert_eq!(
        seg.headers()["content-type"],
        "video/iso.segment",
        "upstream type wins"
    );
    assert_eq!(seg.headers()["content-length"], "5000");
    assert_eq!(seg.bytes().await.unwrap().to_vec(), vec![1u8; 5000]);

    // A byte-range segment: the player's Range goes upstream and the 206 comes back.
    let all: Vec<u8> = (0..2000u32).map(|i| (i % 251) as u8).collect();
    let ranged = proxy
        .http
        .get(resolve(&proxy, &media_path, segs[2]))
        .header("Range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.headers()["content-range"], "bytes 1000-1999/2000");
    assert_eq!(
        ranged.headers()["content-type"],
        "video/mp4",
        "a default when upstream sent none"
    );
    assert_eq!(ranged.bytes().await.unwrap().as_ref(), &all[1000..2000]);
    assert_eq!(
        origin.last_request("/vod/low/all.m4s").unwrap().headers["range"],
        "bytes=1000-1999"
    );

    // HEAD: headers without a body.
    let head = proxy
        .http
        .head(resolve(&proxy, &media_path, segs[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-length"], "5000");
    assert!(head.bytes().await.unwrap().is_empty());
    assert_eq!(
        origin.last_request("/vod/low/seg0.m4s").unwrap().method,
        "HEAD"
    );
    let before = proxy.get_json(&format!("/streams/{id}")).await;
    let head = proxy
        .http
        .head(proxy.url(&master_path))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-type"], MPEGURL);
    let length: usize = head.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (_, _, text) = get_text(&proxy, &proxy.url(&master_path)).await;
    assert_eq!(length, text.len(), "HEAD tells the playlist's length");

    let stats = proxy.get_json(&format!("/streams/{id}")).await;
    assert_eq!(
        stats["stream"]["total_segments_served"], 3,
        "init + 2 segments; a HEAD plays nothing"
    );
    assert_eq!(
        stats["stream"]["total_bytes_served"].as_u64().unwrap(),
        before["stream"]["total_bytes_served"].as_u64().unwrap() + text.len() as u64,
        "only the GET of the playlist counts bytes"
    );
    assert_eq!(
        stats["client_count"], 1,
        "one viewer across playlists, keys and segments"
    );
}

#[tokio::test]
async fn forged_or_foreign_references_are_refused_without_fetching() {
    let Vod { origin, proxy, id } = vod().await;
    let other = proxy
        .create_stream(&origin.url("/vod/low/index.m3u8"))
        .await;
    let other_id = other["stream_id"].as_str().unwrap();
    let master_path = format!("/hls/{id}/playlist.m3u8");
    let (_, _, master) = get_text(&proxy, &proxy.url(&master_path)).await;
    let reference = uri_lines(&master)[0].to_string();
    let hits_before = origin.hits("/vod/low/index.m3u8");

    let mut forged = reference.clone().into_bytes();
    forged[5] = if forged[5] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    for url in [
        resolve(&proxy, &master_path, &forged),
        proxy.url(&format!("/hls/{other_id}/{reference}")),
        proxy.url(&format!("/hls/{id}/garbage!!/x.ts")),
    ] {
        let res = proxy.http.get(&url).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{url}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], "invalid_reference");
    }
    assert_eq!(
        origin.hits("/vod/low/index.m3u8"),
        hits_before,
        "nothing fetched"
    );
}

#[tokio::test]
async fn relative_uris_resolve_against_the_url_after_redirects() {
    let origin = Origin::start().await;
    origin.redirect("/short/live.m3u8", "/real/path/live.m3u8", 302);
    origin.put(
        "/real/path/live.m3u8",
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nseg1.ts\n",
        MPEGURL,
    );
    origin.put("/real/path/seg1.ts", vec![0x47u8; 376], "video/mp2t");
    let proxy = Proxy::start().await;
    let id = proxy.create_stream(&origin.url("/short/live.m3u8")).await["stream_id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/hls/{id}/playlist.m3u8");
    let (_, _, text) = get_text(&proxy, &proxy.url(&path)).await;
    let seg = proxy
        .http
        .get(resolve(&proxy, &path, uri_lines(&text)[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(seg.status(), StatusCode::OK);
    assert_eq!(seg.bytes().await.unwrap().len(), 376);
    assert_eq!(origin.hits("/real/path/seg1.ts"), 1);
}

#[tokio::test]
async fn user_agent_headers_and_ll_hls_parameters_reach_the_origin() {
    let origin = Origin::start().await;
    origin.put(
        "/ll/live.m3u8",
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES\n",
        MPEGURL,
    );
    let proxy = Proxy::start().await;
    let (_, created) = proxy
        .post_stream(json!({
            "url": origin.url("/ll/live.m3u8"),
            "user_agent": "Custom/1.0",
            "headers": {"Referer": "http://portal.invalid/"}
        }))
        .await;
    let id = created["stream_id"].as_str().unwrap();
    let res = proxy
        .get(&format!(
            "/hls/{id}/playlist.m3u8?_HLS_msn=42&_HLS_part=1&client_id=tv1"
        ))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let seen = origin.last_request("/ll/live.m3u8").unwrap();
    assert_eq!(seen.query.as_deref(), Some("_HLS_msn=42&_HLS_part=1"));
    assert_eq!(seen.headers["user-agent"], "Custom/1.0");
    assert_eq!(seen.headers["referer"], "http://portal.invalid/");
    assert!(proxy.get_json("/clients/tv1").await["stream_id"] == id);
}

#[tokio::test]
async fn browsers_get_cors_preflights_answered() {
    let Vod { proxy, id, .. } = vod().await;
    let res = proxy
        .http
        .request(
            reqwest::Method::OPTIONS,
            proxy.url(&format!("/hls/{id}/playlist.m3u8")),
        )
        .header("Origin", "http://player.example")
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "range")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    assert_eq!(res.headers()["access-control-allow-headers"], "range");
}

#[tokio::test]
async fn failing_origins_give_the_player_a_clear_502_or_504() {
    let origin = Origin::start().await;
    let proxy = Proxy::start_with(|c| c.upstream.first_byte = Duration::from_millis(800)).await;
    let cases = [
        (
            "/bad/status.m3u8",
            Fault::Status(503),
            StatusCode::BAD_GATEWAY,
            "upstream_status",
        ),
        (
            "/bad/html.m3u8",
            Fault::Html,
            StatusCode::BAD_GATEWAY,
            "upstream_not_playlist",
        ),
        (
            "/bad/hang.m3u8",
            Fault::Hang,
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
        ),
        (
            "/bad/reset.m3u8",
            Fault::Reset,
            StatusCode::BAD_GATEWAY,
            "upstream_error",
        ),
    ];
    for (path, fault, status, code) in cases {
        origin.put(path, "#EXTM3U\n", MPEGURL);
        origin.fault(path, fault);
        let id = proxy.create_stream(&origin.url(path)).await["stream_id"]
            .as_str()
            .unwrap()
            .to_string();
        let started = Instant::now();
        let res = proxy.get(&format!("/hls/{id}/playlist.m3u8")).await;
        assert_eq!(res.status(), status, "{path}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], code, "{path}: {body}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{path} answered promptly"
        );
        let info = proxy.get_json(&format!("/streams/{id}")).await;
        assert!(
            info["stream"]["error_count"].as_u64().unwrap() >= 1,
            "{path}"
        );
    }
    // A deadline for the whole playlist shorter than the first-byte timeout: an origin that
    // never answers is reported as silent, not as one that stopped sending data.
    let proxy = Proxy::start_with(|c| {
        c.upstream.first_byte = Duration::from_secs(5);
        c.upstream.playlist_total = Duration::from_millis(600);
    })
    .await;
    let id = proxy.create_stream(&origin.url("/bad/hang.m3u8")).await["stream_id"]
        .as_str()
        .unwrap()
        .to_string();
    let res = proxy.get(&format!("/hls/{id}/playlist.m3u8")).await;
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["detail"], "upstream did not answer within 600ms",
        "{body}"
    );
    // A missing playlist upstream is a 404 for the player (`upstream_not_found`), not a hang.
    let id = proxy.create_stream(&origin.url("/missing.m3u8")).await["stream_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        proxy
            .get(&format!("/hls/{id}/playlist.m3u8"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    // A refused connection (the origin is gone).
    origin.kill().await;
    let res = proxy.get(&format!("/hls/{id}/playlist.m3u8")).await;
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        res.json::<Value>().await.unwrap()["code"],
        "upstream_unreachable"
    );
}

#[tokio::test]
async fn a_missing_segment_stays_a_404_for_the_player() {
    let origin = Origin::start().await;
    origin.put(
        "/l/live.m3u8",
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\ngone.ts\n#EXTINF:2,\nhtml.ts\n",
        MPEGURL,
    );
    origin.put("/l/html.ts", "x", "video/mp2t");
    origin.fault("/l/html.ts", Fault::Html);
    let proxy = Proxy::start().await;
    let id = proxy.create_stream(&origin.url("/l/live.m3u8")).await["stream_id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/hls/{id}/playlist.m3u8");
    let (_, _, text) = get_text(&proxy, &proxy.url(&path)).await;
    let refs = uri_lines(&text);
    let gone = proxy
        .http
        .get(resolve(&proxy, &path, refs[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    let html = proxy
        .http
        .get(resolve(&proxy, &path, refs[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        html.status(),
        StatusCode::BAD_GATEWAY,
        "an HTML page is never relayed as media"
    );
}

#[tokio::test]
async fn a_playlist_failure_switches_to_the_backup_within_the_request() {
    let origin = Origin::start().await;
    origin.put("/primary.m3u8", "#EXTM3U\n", MPEGURL);
    origin.fault("/primary.m3u8", Fault::Status(500));
    origin.put(
        "/backup.m3u8",
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nb.ts\n",
        MPEGURL,
    );
    let proxy = Proxy::start().await;
    let (_, created) = proxy
        .post_stream(json!({"url": origin.url("/primary.m3u8"), "failover_urls": [origin.url("/backup.m3u8")]}))
        .await;
    let id = created["stream_id"].as_str().unwrap();
    let res = proxy.get(&format!("/hls/{id}/playlist.m3u8")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.text().await.unwrap().contains("#EXTINF:2,"));
    let info = proxy.get_json(&format!("/streams/{id}")).await;
    assert_eq!(info["stream"]["current_url"], origin.url("/backup.m3u8"));
    assert_eq!(info["stream"]["failover_index"], 1);
}
