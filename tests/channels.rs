//! Channel lists end to end: two provider lists served by a local origin are imported,
//! written back out with the proxy's URLs, played with ffprobe, merged, refreshed, guided,
//! offered as an HDHomeRun tuner, and refused when they are not lists at all.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::util::media::{self, ffprobe};
use crate::util::origin::{Fault, Origin};
use crate::util::{eventually, Proxy};

const LIST_A: &str = include_str!("fixtures/channels/a.m3u");
const LIST_B: &str = include_str!("fixtures/channels/b.m3u");
const M3U: &str = "audio/x-mpegurl";

fn fill(template: &str, origin: &Origin) -> String {
    template
        .replace("{ORIGIN}", &origin.url(""))
        .replace("{HOST}", &origin.addr.to_string())
}

/// An origin with the media fixtures, list A at `/a.m3u` and list B at `/b.m3u`, and the
/// primary URL of the shared channel dead.
async fn start_origin() -> Origin {
    let origin = Origin::start().await;
    media::serve(&origin);
    origin.put("/a.m3u", fill(LIST_A, &origin), M3U);
    origin.put("/b.m3u", fill(LIST_B, &origin), M3U);
    origin.fault("/dead/shared.mp4", Fault::Status(503));
    origin
}

async fn post_json(proxy: &Proxy, path: &str, body: Value) -> (StatusCode, Value) {
    let res = proxy
        .http
        .post(proxy.url(path))
        .json(&body)
        .send()
        .await
        .expect("POST");
    let status = res.status();
    (status, res.json().await.expect("JSON answer"))
}

async fn import(proxy: &Proxy, body: Value) -> Value {
    let (status, info) = post_json(proxy, "/playlists", body).await;
    assert_eq!(status, StatusCode::CREATED, "{info}");
    info
}

async fn text(proxy: &Proxy, path: &str) -> String {
    let res = proxy.get(path).await;
    assert_eq!(res.status(), StatusCode::OK, "GET {path}");
    res.text().await.unwrap()
}

/// The source's lines a player reads (no BOM, no blank lines), without the entries named.
fn source_lines(source: &str, dropped: &[&str]) -> Vec<String> {
    let lines: Vec<String> = source
        .split(['\r', '\n'])
        .map(|l| l.trim_start_matches('\u{feff}').to_string())
        .filter(|l| !l.trim().is_empty())
        .collect();
    let mut out = Vec::new();
    let mut skip_url = false;
    for l in lines {
        if dropped.iter().any(|d| l.contains(d)) {
            skip_url = true;
            continue;
        }
        if skip_url && !l.starts_with('#') {
            skip_url = false;
            continue;
        }
        out.push(l);
    }
    out
}

fn urls(m3u: &str) -> Vec<String> {
    m3u.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn two_lists_are_imported_written_back_and_played() {
    let origin = start_origin().await;
    let proxy = Proxy::start().await;
    let a = import(
        &proxy,
        json!({"name": "A", "url": origin.url("/a.m3u"), "merge": "tvg-id", "provider": "acme"}),
    )
    .await;
    let b = import(
        &proxy,
        json!({"name": "B", "url": origin.url("/b.m3u"), "merge": "tvg-id"}),
    )
    .await;
    let (a_id, b_id) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    assert_eq!(a["channel_count"], 3, "{a}");
    assert_eq!(a["groups"], json!(["News", "Movies"]));
    assert_eq!(a["last_result"]["counts"]["added"], 3);
    assert_eq!(a["errors"][0]["code"], "unsupported_scheme", "{a}");
    assert_eq!(a["errors"][0]["line"], 12);
    assert_eq!(b["channel_count"], 2);

    // Every line but the URLs, byte for byte; the refused entry is left out.
    let out = text(&proxy, &format!("/playlists/{a_id}/playlist.m3u")).await;
    let guide = proxy.url(&format!("/playlists/{a_id}/epg.xml"));
    let mut want = source_lines(&fill(LIST_A, &origin), &["RTMP Channel"]);
    want[0] = format!("#EXTM3U url-tvg=\"{guide}\" tvg-shift=0 catchup=\"shift\"");
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got.len(), want.len(), "{out}");
    for (g, w) in got.iter().zip(&want) {
        if w.starts_with('#') {
            assert_eq!(g, w);
        } else {
            assert!(g.starts_with(&proxy.base), "{g} replaces {w}");
        }
    }
    assert!(!out.contains("rtmp://"));

    // Stream ids come from the URLs; the list's provider and the channel's metadata.
    let streams = proxy.get_json("/streams").await;
    assert_eq!(
        streams["total"], 4,
        "the shared channel is one stream: {streams}"
    );
    let news = streams["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["original_url"] == origin.url("/media/direct/clip.ts"))
        .expect("news stream")
        .clone();
    assert_eq!(news["provider"], "acme");
    assert_eq!(
        news["metadata"],
        json!({"playlist": a_id, "playlist_name": "A", "tvg_id": "news.one",
               "tvg_name": "News One", "group": "News", "channel_number": "101"})
    );
    let shared = streams["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["original_url"] == origin.url("/dead/shared.mp4"))
        .expect("the merged stream")
        .clone();
    assert_eq!(
        shared["failover_urls"],
        json!([origin.url("/media/direct/clip.mp4")])
    );
    // Both lists point their shared channel at the one stream.
    let out_b = text(&proxy, &format!("/playlists/{b_id}/playlist.m3u")).await;
    let shared_path = format!("/stream/{}", shared["stream_id"].as_str().unwrap());
    assert!(out.contains(&shared_path) && out_b.contains(&shared_path));

    // All lists under one header; filters.
    let all = text(&proxy, "/playlist.m3u").await;
    assert!(all.starts_with(&format!(
        "#EXTM3U url-tvg=\"{guide},{}\"\n",
        proxy.url(&format!("/playlists/{b_id}/epg.xml"))
    )));
    assert_eq!(urls(&all).len(), 5);
    let sports = text(&proxy, "/playlist.m3u?group=Sports&group=Movies").await;
    assert_eq!(urls(&sports).len(), 3, "{sports}");
    let query = text(&proxy, "/playlist.m3u?q=news%20one").await;
    assert_eq!(urls(&query).len(), 1, "{query}");
    assert!(query.contains("News One HD"));

    if !media::require_ffmpeg() {
        return;
    }
    // Every URL of both lists plays, the merged one through its failover URL.
    for url in urls(&all) {
        let probe = ffprobe(&url).await;
        assert!(probe.duration > 0.5, "{url}: {probe:?}");
    }
    let seen = origin
        .last_request("/media/direct/clip.ts")
        .expect("news played");
    assert_eq!(seen.headers["user-agent"], "ListPlayer/1.0 (A)");
    assert_eq!(seen.headers["referer"], origin.url("/portal").as_str());
    let seen = origin
        .last_request("/media/abr/master.m3u8")
        .expect("film played");
    assert_eq!(seen.headers["x-kodi-token"], "abc123");
    assert!(origin.hits("/dead/shared.mp4") > 0);
    assert!(
        origin.hits("/media/direct/clip.mp4") > 0,
        "failed over to list B's URL"
    );
}

/// Reads `/events` until a `playlist_refreshed` event comes; returns its data.
async fn next_refresh_event(res: &mut reqwest::Response, buf: &mut String) -> Value {
    loop {
        if let Some(start) = buf.find("event: playlist_refreshed") {
            if let Some(end) = buf[start..].find("\n\n") {
                let message: String = buf.drain(..start + end + 2).collect();
                let data = message
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .collect::<String>();
                let event: Value = serde_json::from_str(data.trim()).unwrap();
                assert_eq!(event["event_type"], "playlist_refreshed");
                return event["data"].clone();
            }
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), res.chunk())
            .await
            .expect("an event in time")
            .unwrap()
            .expect("the feed stays open");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn a_refresh_applies_exactly_what_changed_and_a_failed_one_keeps_the_list() {
    let origin = start_origin().await;
    let proxy = Proxy::start().await;
    let mut events = proxy.get("/events?types=playlist_refreshed").await;
    let mut buf = String::new();
    let a = import(&proxy, json!({"name": "A", "url": origin.url("/a.m3u")})).await;
    let id = a["id"].as_str().unwrap().to_string();
    let first = next_refresh_event(&mut events, &mut buf).await;
    assert_eq!(
        (first["added"].as_u64(), first["errors"].as_u64()),
        (Some(3), Some(1))
    );
    let before = proxy.get_json("/streams").await;
    let id_of = |streams: &Value, url: &str| {
        streams["streams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["original_url"] == url)
            .map(|s| s["stream_id"].as_str().unwrap().to_string())
    };
    let news_url = origin.url("/media/direct/clip.ts");
    let news_id = id_of(&before, &news_url).unwrap();

    // The film goes, a channel comes, the news changes group, the shared one stays.
    let changed = fill(LIST_A, &origin)
        .replace(
            "group-title=\"News\" catchup=\"default\"",
            "group-title=\"World\" catchup=\"default\"",
        )
        .replace(
            &format!("{}\r\n", origin.url("/media/abr/master.m3u8")),
            &format!("{}\r\n", origin.url("/media/live/index.m3u8")),
        );
    origin.put("/a.m3u", changed, M3U);
    let (status, after) = post_json(&proxy, &format!("/playlists/{id}/refresh"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_eq!(
        after["last_result"]["counts"],
        json!({"added": 1, "removed": 1, "updated": 1, "unchanged": 1, "errors": 1})
    );
    let event = next_refresh_event(&mut events, &mut buf).await;
    assert_eq!(
        [
            &event["added"],
            &event["removed"],
            &event["updated"],
            &event["unchanged"]
        ],
        [&json!(1), &json!(1), &json!(1), &json!(1)]
    );
    let streams = proxy.get_json("/streams").await;
    assert_eq!(
        id_of(&streams, &news_url),
        Some(news_id.clone()),
        "same URL, same id"
    );
    assert!(id_of(&streams, &origin.url("/media/abr/master.m3u8")).is_none());
    assert!(id_of(&streams, &origin.url("/media/live/index.m3u8")).is_some());
    let news = proxy.get_json(&format!("/streams/{news_id}")).await;
    assert_eq!(news["stream"]["metadata"]["group"], "World", "{news}");
    let out = text(&proxy, &format!("/playlists/{id}/playlist.m3u")).await;

    // Failed refreshes (an HTML page, a 500) keep the list in use.
    for (fault, status, code) in [
        (
            Fault::Html,
            StatusCode::UNPROCESSABLE_ENTITY,
            "playlist_not_m3u",
        ),
        (
            Fault::Status(500),
            StatusCode::BAD_GATEWAY,
            "playlist_fetch_failed",
        ),
    ] {
        origin.fault("/a.m3u", fault);
        let (got, body) = post_json(&proxy, &format!("/playlists/{id}/refresh"), json!({})).await;
        assert_eq!((got, body["code"].as_str()), (status, Some(code)), "{body}");
        let info = proxy.get_json(&format!("/playlists/{id}")).await;
        assert_eq!(info["last_result"]["ok"], false);
        assert_eq!(info["last_result"]["code"], code);
        assert_eq!(info["channel_count"], 3);
        assert_eq!(
            text(&proxy, &format!("/playlists/{id}/playlist.m3u")).await,
            out
        );
        let event = next_refresh_event(&mut events, &mut buf).await;
        assert_eq!(event["ok"], false);
    }
    assert_eq!(proxy.get_json("/streams").await["total"], 3);
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

#[tokio::test]
async fn the_guide_is_served_kept_gzip_and_refreshed() {
    let origin = start_origin().await;
    let xml = "<?xml version=\"1.0\"?><tv><channel id=\"news.one\"/></tv>\n";
    origin.put("/guide.xml.gz", gzip(xml.as_bytes()), "application/gzip");
    let proxy = Proxy::start().await;
    let a = import(&proxy, json!({"name": "A", "url": origin.url("/a.m3u")})).await;
    let id = a["id"].as_str().unwrap();
    assert_eq!(a["guide_available"], true, "{a}");
    let path = format!("/playlists/{id}/epg.xml");

    let plain = proxy.get(&path).await;
    assert_eq!(plain.status(), StatusCode::OK);
    assert!(plain.headers().get("content-encoding").is_none());
    assert_eq!(
        plain.text().await.unwrap(),
        xml,
        "decompressed for a client without gzip"
    );
    let gz = proxy
        .http
        .get(proxy.url(&path))
        .header("accept-encoding", "gzip, deflate")
        .send()
        .await
        .unwrap();
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    assert_eq!(
        gz.bytes().await.unwrap(),
        gzip(xml.as_bytes()),
        "as the origin gave it"
    );

    let newer = xml.replace("news.one", "news.two");
    origin.put("/guide.xml.gz", gzip(newer.as_bytes()), "application/gzip");
    post_json(&proxy, &format!("/playlists/{id}/refresh"), json!({})).await;
    assert_eq!(text(&proxy, &path).await, newer);

    // List B's plain guide is missing at the origin: no guide, and its error is reported.
    let b = import(&proxy, json!({"name": "B", "url": origin.url("/b.m3u")})).await;
    assert_eq!(b["guide_available"], false);
    assert!(b["guide_error"].as_str().unwrap().contains("404"), "{b}");
    let missing = proxy
        .get(&format!("/playlists/{}/epg.xml", b["id"].as_str().unwrap()))
        .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["code"], "guide_not_available");
}

#[tokio::test]
async fn the_hdhomerun_tuner_lists_channels_that_play() {
    let origin = start_origin().await;
    let proxy = Proxy::start_with(|c| c.channels.tuner_count = 4).await;
    let b = import(&proxy, json!({"name": "B", "url": origin.url("/b.m3u")})).await;
    import(&proxy, json!({"name": "A", "url": origin.url("/a.m3u")})).await;

    let discover = proxy.get_json("/discover.json").await;
    let device_id = discover["DeviceID"].as_str().unwrap().to_string();
    assert_eq!(device_id.len(), 8);
    assert_eq!(
        discover,
        json!({
            "FriendlyName": "m3u-proxy", "Manufacturer": "Silicondust",
            "ModelNumber": "HDTC-2US", "FirmwareName": "hdhomeruntc_atsc",
            "FirmwareVersion": "20200101", "DeviceID": device_id, "DeviceAuth": "m3u-proxy",
            "BaseURL": proxy.base, "LineupURL": proxy.url("/lineup.json"), "TunerCount": 4,
        })
    );
    assert_eq!(
        proxy.get_json("/lineup_status.json").await,
        json!({"ScanInProgress": 0, "ScanPossible": 1, "Source": "Cable", "SourceList": ["Cable"]})
    );
    let xml = text(&proxy, "/device.xml").await;
    assert!(
        xml.contains(&format!("<UDN>uuid:{device_id}</UDN>")),
        "{xml}"
    );
    assert!(xml.contains(&format!("<URLBase>{}</URLBase>", proxy.base)));

    let all = proxy.get_json("/lineup.json").await;
    assert_eq!(all.as_array().unwrap().len(), 5);
    let b_id = b["id"].as_str().unwrap();
    let lineup = proxy
        .get_json(&format!("/lineup.json?playlist={b_id}"))
        .await;
    let entries = lineup.as_array().unwrap();
    let shape: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["GuideNumber"].as_str().unwrap(),
                e["GuideName"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(shape, [("1", "Shared Channel (B)"), ("202", "Sports Two")]);
    // The same device after a restart with the same secret.
    let again = Proxy::start().await;
    assert_eq!(
        again.get_json("/discover.json").await["DeviceID"],
        device_id.as_str()
    );

    if !media::require_ffmpeg() {
        return;
    }
    for e in entries {
        let url = e["URL"].as_str().unwrap();
        assert!(url.starts_with(&proxy.base), "{url}");
        assert!(ffprobe(url).await.duration > 0.5, "{url}");
    }
}

#[tokio::test]
async fn urls_follow_public_url_root_path_and_trusted_proxies_and_need_no_token() {
    let origin = start_origin().await;
    let body = json!({"name": "B", "url": origin.url("/b.m3u")});
    let proxy = Proxy::start_with(|c| {
        c.api_token = Some("sekrit".into());
        c.trusted_proxies = vec![[127, 0, 0, 1].into()];
    })
    .await;
    let (status, _) = post_json(&proxy, "/playlists", body.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let res = proxy
        .http
        .post(proxy.url("/playlists"))
        .header("x-api-token", "sekrit")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let plain = text(&proxy, "/playlist.m3u").await;
    assert!(urls(&plain)
        .iter()
        .all(|u| u.starts_with(&format!("{}/", proxy.base))));
    let rooted = text(&proxy, "/m3u-proxy/playlist.m3u").await;
    assert!(
        urls(&rooted)
            .iter()
            .all(|u| u.starts_with(&proxy.url("/m3u-proxy/stream/"))
                || u.starts_with(&proxy.url("/m3u-proxy/hls/"))),
        "{rooted}"
    );
    let forwarded = proxy
        .http
        .get(proxy.url("/playlist.m3u"))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "tv.example")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        urls(&forwarded)
            .iter()
            .all(|u| u.starts_with("https://tv.example/")),
        "{forwarded}"
    );

    // An untrusted peer's forwarded headers are ignored; PUBLIC_URL wins over everything.
    let untrusting =
        Proxy::start_with(|c| c.channels.public_url = Some("https://iptv.example/p".into())).await;
    import(&untrusting, body).await;
    let public = untrusting
        .http
        .get(untrusting.url("/playlist.m3u"))
        .header("x-forwarded-host", "evil.example")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        urls(&public)
            .iter()
            .all(|u| u.starts_with("https://iptv.example/p/")),
        "{public}"
    );
    let discover = untrusting.get_json("/discover.json").await;
    assert_eq!(discover["BaseURL"], "https://iptv.example/p");
    let plain_proxy = Proxy::start().await;
    import(
        &plain_proxy,
        json!({"name": "B", "url": origin.url("/b.m3u")}),
    )
    .await;
    let ignored = plain_proxy
        .http
        .get(plain_proxy.url("/playlist.m3u"))
        .header("x-forwarded-host", "evil.example")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!ignored.contains("evil.example"));
}

#[tokio::test]
async fn an_uploaded_list_imports_and_a_deleted_list_keeps_playing_channels_until_viewers_leave() {
    let origin = start_origin().await;
    origin.live_ts("/live/endless.ts", 200_000);
    let proxy = Proxy::start_with(|c| c.client_timeout = Duration::from_millis(300)).await;
    let body = format!(
        "#EXTM3U\n#EXTINF:-1 tvg-id=\"live\",Live\n{}\n#EXTINF:-1,Clip\n{}\n",
        origin.url("/live/endless.ts"),
        origin.url("/media/direct/clip.ts")
    );
    let res = proxy
        .http
        .post(proxy.url("/playlists?name=Upload"))
        .header("content-type", M3U)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let info: Value = res.json().await.unwrap();
    let id = info["id"].as_str().unwrap();
    assert_eq!(
        (info["name"].as_str(), info["channel_count"].as_u64()),
        (Some("Upload"), Some(2))
    );
    let out = text(&proxy, &format!("/playlists/{id}/playlist.m3u")).await;
    let live_url = urls(&out)[0].clone();
    let live_id = live_url.rsplit('/').next().unwrap().to_string();

    let mut viewer = proxy.http.get(&live_url).send().await.unwrap();
    assert_eq!(viewer.status(), StatusCode::OK);
    assert!(viewer.chunk().await.unwrap().is_some());
    let res = proxy
        .http
        .delete(proxy.url(&format!("/playlists/{id}")))
        .send()
        .await
        .unwrap();
    let deleted: Value = res.json().await.unwrap();
    assert_eq!(
        deleted,
        json!({"id": id, "streams_removed": 1, "streams_retiring": 1})
    );
    assert_eq!(
        proxy.get(&format!("/playlists/{id}")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert!(
        viewer.chunk().await.unwrap().is_some(),
        "the viewer keeps watching"
    );
    assert_eq!(
        proxy.get(&format!("/streams/{live_id}")).await.status(),
        StatusCode::OK
    );
    drop(viewer);
    eventually(
        Duration::from_secs(10),
        "the retired stream to go",
        || async {
            (proxy.get(&format!("/streams/{live_id}")).await.status() == StatusCode::NOT_FOUND)
                .then_some(())
        },
    )
    .await;
    assert_eq!(proxy.get_json("/streams").await["total"], 0);
}

/// A server whose every answer is an endless chunked body of `#EXTINF` lines (about 2 GB if
/// read to the end), counting the bytes it produced.
async fn endless_origin() -> (String, Arc<AtomicU64>) {
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            let chunk = bytes::Bytes::from("#EXTINF:-1,x\nhttp://a.example/x.ts\n".repeat(30_000));
            let total: u64 = 2 * 1024 * 1024 * 1024;
            let stream = futures_util::stream::unfold(0u64, move |done| {
                let chunk = chunk.clone();
                let counter = counter.clone();
                async move {
                    (done < total).then(|| {
                        counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        (
                            Ok::<_, std::io::Error>(chunk.clone()),
                            done + chunk.len() as u64,
                        )
                    })
                }
            });
            axum::body::Body::from_stream(stream)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/huge.m3u"), sent)
}

#[tokio::test]
async fn bad_lists_are_refused_whole_and_bad_entries_one_by_one() {
    let origin = start_origin().await;
    let proxy = Proxy::start().await;
    origin.put(
        "/page.m3u",
        "<!DOCTYPE html><html><body>Log in</body></html>",
        "text/html",
    );
    let mut binary = vec![0u8; 4096];
    binary[..4].copy_from_slice(b"PK\x03\x04");
    origin.put("/list.zip", binary, "application/octet-stream");
    origin.put("/notes.txt", "hello\nhttp://a.example/x\n", "text/plain");
    let (huge, sent) = endless_origin().await;
    for (url, code) in [
        (origin.url("/page.m3u"), "playlist_not_m3u"),
        (origin.url("/list.zip"), "playlist_not_m3u"),
        (origin.url("/notes.txt"), "playlist_not_m3u"),
        (origin.url("/missing.m3u"), "playlist_fetch_failed"),
        (huge, "playlist_too_large"),
        (
            "ftp://example.com/list.m3u".to_string(),
            "unsupported_scheme",
        ),
    ] {
        let (status, body) =
            post_json(&proxy, "/playlists", json!({"name": "x", "url": url})).await;
        assert!(
            status.is_client_error() || status.is_server_error(),
            "{url}: {status}"
        );
        assert_eq!(body["code"], code, "{url}: {body}");
    }
    let cap = 100 * 1024 * 1024;
    let produced = sent.load(Ordering::Relaxed);
    assert!(
        produced < 2 * cap,
        "stopped early: {produced} bytes of 2 GB produced"
    );
    let (status, body) =
        post_json(&proxy, "/playlists", json!({"url": origin.url("/b.m3u")})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("missing_parameter"))
    );
    assert_eq!(
        proxy.get_json("/playlists").await["total"],
        0,
        "nothing half-imported"
    );
    assert_eq!(proxy.get_json("/streams").await["total"], 0);

    // 10 MB lines and odd schemes are refused per entry; the rest imports.
    let long = "x".repeat(10 * 1024 * 1024);
    let list = format!(
        "#EXTM3U\n#EXTINF:-1 tvg-name=\"{long}\",Long\n{ok}/1.ts\n#EXTINF:-1,Long URL\n{ok}/{long}.ts\n\
         #EXTINF:-1,UDP\nudp://@239.0.0.1:1234\n#EXTINF:-1,Bad\nhttp://[::1\n#EXTINF:-1,Good\n{ok}/good.ts\n",
        ok = origin.url("/ch")
    );
    origin.put("/long.m3u", list, M3U);
    let info = import(
        &proxy,
        json!({"name": "long", "url": origin.url("/long.m3u")}),
    )
    .await;
    assert_eq!(info["channel_count"], 1, "{}", info["errors"]);
    let codes: Vec<(&str, u64)> = info["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["code"].as_str().unwrap(), e["line"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        codes,
        [
            ("line_too_long", 2),
            ("line_too_long", 4),
            ("unsupported_scheme", 6),
            ("invalid_url", 8)
        ]
    );
    assert_eq!(info["last_result"]["counts"]["errors"], 4);
    let out = text(
        &proxy,
        &format!("/playlists/{}/playlist.m3u", info["id"].as_str().unwrap()),
    )
    .await;
    assert!(
        out.len() < 1000,
        "refused entries are left out: {} bytes",
        out.len()
    );
}

/// Runs `m3u-client --server BASE ARGS`; returns (exit code, stdout, stderr).
async fn client(base: &str, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_m3u-client"))
        .arg("--server")
        .arg(base)
        .args(args)
        .env_remove("API_TOKEN")
        .env_remove("M3U_PROXY_URL")
        .output()
        .await
        .expect("m3u-client runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_imports_lists_and_refreshes_them() {
    let origin = start_origin().await;
    let proxy = Proxy::start().await;
    let (code, out, err) = client(
        &proxy.base,
        &[
            "import",
            &origin.url("/a.m3u"),
            "--name",
            "Provider A",
            "--merge",
            "tvg-id",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Provider A"), "{out}");
    assert!(out.contains("3 channels in 2 groups"), "{out}");
    assert!(
        out.contains("added 3, removed 0, updated 0, unchanged 0, refused 1"),
        "{out}"
    );
    assert!(
        out.contains("line 12: only http and https channels"),
        "{out}"
    );
    let id = proxy.get_json("/playlists").await["playlists"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        out.contains(&proxy.url(&format!("/playlists/{id}/playlist.m3u"))),
        "{out}"
    );

    let (code, table, _) = client(&proxy.base, &["playlists"]).await;
    assert_eq!(code, 0);
    let row = table.lines().find(|l| l.starts_with(&id)).expect("a row");
    assert!(
        row.contains("Provider A") && row.contains(" 3 ") && row.contains("ok"),
        "{table}"
    );
    assert!(table.contains("1 channel list"), "{table}");

    let (code, out, _) = client(&proxy.base, &["refresh", &id]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("added 0, removed 0, updated 0, unchanged 3"),
        "{out}"
    );
    let (code, json_out, _) = client(&proxy.base, &["--json", "playlists"]).await;
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(v["total"], 1);

    let (code, _, err) = client(&proxy.base, &["refresh", "pl-000000000000"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("playlist not found"), "{err}");
}

#[tokio::test]
async fn list_streams_outlive_the_idle_sweep() {
    let origin = start_origin().await;
    let proxy = Proxy::start_with(|c| {
        c.stream_timeout = Some(Duration::from_secs(2));
        c.cleanup_interval = Duration::from_secs(1);
    })
    .await;
    import(&proxy, json!({"name": "B", "url": origin.url("/b.m3u")})).await;
    // A stream of no list, idle like them: once the sweep removed it, it has had its chance
    // at the list's streams too.
    let control = proxy
        .create_stream(&origin.url("/media/direct/clip.ts"))
        .await;
    let control_id = control["stream_id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(15), "the idle sweep", || async {
        (proxy.get(&format!("/streams/{control_id}")).await.status() == StatusCode::NOT_FOUND)
            .then_some(())
    })
    .await;
    assert_eq!(proxy.get_json("/streams").await["total"], 2);
}

#[tokio::test]
async fn the_tuner_count_is_the_connection_limit_of_the_lists_providers() {
    let origin = start_origin().await;
    let proxy = Proxy::start_with(|c| c.channels.tuner_count = 4).await;
    import(
        &proxy,
        json!({"name": "A", "url": origin.url("/a.m3u"), "provider": "acme"}),
    )
    .await;
    // The provider is not defined yet: the setting.
    assert_eq!(proxy.get_json("/discover.json").await["TunerCount"], 4);
    let res = proxy
        .http
        .put(proxy.url("/providers/acme"))
        .json(&json!({"hosts": ["iptv.example.com"], "max_connections": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(proxy.get_json("/discover.json").await["TunerCount"], 3);
}

#[tokio::test]
async fn a_refresh_interval_over_a_year_is_refused() {
    let origin = start_origin().await;
    let proxy = Proxy::start().await;
    let res = proxy
        .http
        .post(proxy.url("/playlists"))
        .json(
            &json!({"name": "A", "url": origin.url("/a.m3u"), "refresh_interval_minutes": 525_601}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "invalid_parameter");
    let huge = proxy
        .http
        .post(proxy.url("/playlists"))
        .json(&json!({"name": "A", "url": origin.url("/a.m3u"), "refresh_interval_minutes": u64::MAX}))
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(proxy.get_json("/playlists").await["total"], 0);
}

/// A provider-shaped list of `channels` entries pointing at `origin`, about 150 bytes each.
fn big_list(origin: &Origin, channels: usize) -> String {
    let mut body = String::from("#EXTM3U\n");
    for n in 0..channels {
        body.push_str(&format!(
            "#EXTINF:-1 tvg-id=\"ch{n}\" group-title=\"Group {}\",Channel {n}\n{}\n",
            n % 7,
            origin.url(&format!("/live/user/pass/{n}.ts"))
        ));
    }
    body
}

#[tokio::test]
async fn an_upload_over_two_megabytes_imports_and_one_over_the_limit_is_a_413() {
    let origin = start_origin().await;
    let proxy = Proxy::start_with(|c| c.channels.max_list_bytes = 6 * 1024 * 1024).await;
    let body = big_list(&origin, 40_000);
    assert!(body.len() > 3 * 1024 * 1024 && body.len() < 6 * 1024 * 1024);
    let res = proxy
        .http
        .post(proxy.url("/playlists?name=Big"))
        .header("content-type", M3U)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let status = res.status();
    let info: Value = res.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{info}");
    assert_eq!(info["channel_count"], 40_000);
    let out = text(
        &proxy,
        &format!("/playlists/{}/playlist.m3u", info["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(urls(&out).len(), 40_000);

    // Over the limit, declared: refused before it is read.
    let over = big_list(&origin, 60_000);
    assert!(over.len() > 6 * 1024 * 1024);
    let res = proxy
        .http
        .post(proxy.url("/playlists?name=Over"))
        .header("content-type", M3U)
        .body(over.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["code"], "payload_too_large");
    let detail = err["detail"].as_str().unwrap();
    assert!(
        detail.contains("6291456 bytes (CHANNEL_LIST_MAX_MB)"),
        "{detail}"
    );
    // Over the limit, chunked without a length: refused once it grows past it.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = over
        .as_bytes()
        .chunks(256 * 1024)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let res = proxy
        .http
        .post(proxy.url("/playlists?name=Over"))
        .header("content-type", M3U)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        proxy.get_json("/playlists").await["playlists"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // A JSON definition keeps the management limit.
    let padded = json!({"name": "J", "url": origin.url("/a.m3u"), "provider": "x".repeat(2 << 20)});
    let (status, err) = post_json(&proxy, "/playlists", padded).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );
}

#[tokio::test]
async fn timed_refreshes_come_on_their_interval_and_a_hanging_origin_holds_up_only_its_list() {
    let origin = Origin::start().await;
    let entry = |n: usize| format!("#EXTINF:-1,Ch {n}\n{}\n", origin.url(&format!("/c/{n}.ts")));
    origin.put("/slow.m3u", format!("#EXTM3U\n{}", entry(0)), M3U);
    origin.put("/fast.m3u", format!("#EXTM3U\n{}", entry(1)), M3U);
    // One minute of `refresh_interval_minutes` lasts 400 ms here.
    let proxy = Proxy::start_with(|c| c.channels.refresh_minute = Duration::from_millis(400)).await;
    let slow = import(
        &proxy,
        json!({"name": "slow", "url": origin.url("/slow.m3u"), "refresh_interval_minutes": 1}),
    )
    .await;
    let fast = import(
        &proxy,
        json!({"name": "fast", "url": origin.url("/fast.m3u"), "refresh_interval_minutes": 2}),
    )
    .await;
    let (slow_id, fast_id) = (slow["id"].as_str().unwrap(), fast["id"].as_str().unwrap());
    // The slow list's origin now accepts and never answers: its refresh waits 30 s.
    origin.fault("/slow.m3u", Fault::Hang);
    let hung = Instant::now();
    eventually(
        Duration::from_secs(5),
        "the slow list's refresh to start",
        || async { (origin.hits("/slow.m3u") >= 2).then_some(()) },
    )
    .await;
    // The fast list changes at its origin and nobody asks for a refresh.
    origin.put(
        "/fast.m3u",
        format!("#EXTM3U\n{}{}", entry(1), entry(2)),
        M3U,
    );
    let info = eventually(
        Duration::from_secs(10),
        "a timed refresh of the fast list",
        || async {
            let info = proxy.get_json(&format!("/playlists/{fast_id}")).await;
            (info["channel_count"] == 2).then_some(info)
        },
    )
    .await;
    assert_eq!(info["last_result"]["ok"], true, "{info}");
    assert_eq!(info["last_result"]["counts"]["added"], 1, "{info}");
    // And it keeps coming, every 800 ms, while the slow one still hangs.
    let first = info["last_refresh"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(10), "another timed refresh", || async {
        let info = proxy.get_json(&format!("/playlists/{fast_id}")).await;
        (info["last_refresh"].as_str() != Some(&first)).then_some(())
    })
    .await;
    assert!(
        hung.elapsed() < Duration::from_secs(25),
        "{:?}",
        hung.elapsed()
    );
    // The hanging refresh is not started twice, and the slow list is kept as it was.
    assert_eq!(origin.hits("/slow.m3u"), 2);
    let info = proxy.get_json(&format!("/playlists/{slow_id}")).await;
    assert_eq!(info["channel_count"], 1, "{info}");
}
