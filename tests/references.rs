//! What a rewritten playlist gives away: nothing of the origin. IPTV URLs carry account
//! credentials in the path and the query, and playlists are read by players, logs and
//! anyone a link is shared with.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::Value;

use crate::util::origin::Origin;
use crate::util::Proxy;

const MPEGURL: &str = "application/vnd.apple.mpegurl";

/// Every `URI="..."` value and every URI line of a playlist.
fn references(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() {
            continue;
        }
        if !line.starts_with('#') {
            out.push(line.to_string());
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("URI=\"") {
            let value = &rest[at + 5..];
            let end = value.find('"').expect("closing quote");
            out.push(value[..end].to_string());
            rest = &value[end..];
        }
    }
    out
}

/// What a path segment could be read as: itself, and its bytes under every base64 flavour
/// that accepts it (standard or URL-safe alphabet, padded or not; padding added if missing).
fn readings(segment: &str) -> Vec<String> {
    let mut out = vec![segment.to_string()];
    let padded = format!("{segment}{}", "=".repeat((4 - segment.len() % 4) % 4));
    for text in [segment, padded.as_str()] {
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            if let Ok(bytes) = engine.decode(text) {
                out.push(String::from_utf8_lossy(&bytes).into_owned());
            }
        }
    }
    out
}

#[tokio::test]
async fn references_reveal_no_origin_host_path_or_token() {
    let origin = Origin::start().await;
    let secrets = [
        "127.0.0.1",
        "localhost",
        "acct-user-7731",
        "acct-pass-9c1f",
        "tok3n-5f0e2b",
        "sig-a81d44",
        "keysrv",
    ];
    let base = "/live/acct-user-7731/acct-pass-9c1f";
    origin.put(
        &format!("{base}/master.m3u8"),
        format!(
            "#EXTM3U\n\
             #EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"a\",NAME=\"en\",URI=\"audio/en.m3u8?token=tok3n-5f0e2b\"\n\
             #EXT-X-STREAM-INF:BANDWIDTH=800000,AUDIO=\"a\"\n\
             video/index.m3u8?token=tok3n-5f0e2b\n\
             #EXT-X-STREAM-INF:BANDWIDTH=1600000\n\
             {}/hd/index.m3u8?sig=sig-a81d44\n",
            origin.url(base)
        ),
        MPEGURL,
    );
    origin.put(
        &format!("{base}/video/index.m3u8"),
        format!(
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n\
             #EXT-X-KEY:METHOD=AES-128,URI=\"{}/keysrv/k.key?token=tok3n-5f0e2b\"\n\
             #EXT-X-MAP:URI=\"init.mp4?token=tok3n-5f0e2b\"\n\
             #EXTINF:2,\nseg-1.m4s?token=tok3n-5f0e2b&sig=sig-a81d44\n\
             #EXTINF:2,\n/live/acct-user-7731/acct-pass-9c1f/video/seg-2.m4s\n",
            origin.url("")
        ),
        MPEGURL,
    );
    origin.put(
        &format!("{base}/video/seg-1.m4s"),
        vec![1u8; 64],
        "video/iso.segment",
    );
    let proxy = Proxy::start().await;
    let created = proxy
        .create_stream(&origin.url(&format!("{base}/master.m3u8?token=tok3n-5f0e2b")))
        .await;
    let id = created["stream_id"].as_str().unwrap();

    let master_url = proxy.url(&format!("/hls/{id}/playlist.m3u8?client_id=tv"));
    let master = proxy.http.get(&master_url).send().await.unwrap();
    assert_eq!(master.status(), StatusCode::OK);
    let master = master.text().await.unwrap();
    let mut playlists = vec![(master_url.clone(), master.clone())];
    let variant = references(&master)
        .into_iter()
        .find(|r| r.contains("index.m3u8"))
        .expect("a variant reference");
    let variant_url = url::Url::parse(&master_url)
        .unwrap()
        .join(&variant)
        .unwrap();
    let media = proxy.http.get(variant_url.clone()).send().await.unwrap();
    assert_eq!(media.status(), StatusCode::OK, "the reference still plays");
    let media = media.text().await.unwrap();
    playlists.push((variant_url.to_string(), media.clone()));

    let mut checked = 0;
    for (_, text) in &playlists {
        for secret in secrets {
            assert!(!text.contains(secret), "{secret} in the playlist:\n{text}");
        }
        for reference in references(text) {
            for segment in reference.split(['/', '?', '&', '=']) {
                for reading in readings(segment) {
                    for secret in secrets.iter().chain(&["/live/", "token", "sig="]) {
                        assert!(
                            !reading.contains(secret),
                            "{secret:?} readable in segment {segment:?} of {reference:?}"
                        );
                    }
                }
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 12,
        "segments of master and media references: {checked}"
    );

    // Still playable: a segment reference fetches the origin's bytes.
    let segment = references(&media)
        .into_iter()
        .find(|r| r.ends_with("seg-1.m4s"))
        .expect("the segment keeps its file name and extension");
    let res = proxy
        .http
        .get(variant_url.join(&segment).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap().as_ref(), &[1u8; 64][..]);
}

#[tokio::test]
async fn a_tampered_reference_is_refused_and_nothing_is_fetched() {
    let origin = Origin::start().await;
    origin.put(
        "/p/index.m3u8",
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nseg-1.ts\n",
        MPEGURL,
    );
    origin.put("/p/seg-1.ts", vec![0x47u8; 188], "video/mp2t");
    let proxy = Proxy::start().await;
    let id = proxy.create_stream(&origin.url("/p/index.m3u8")).await["stream_id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/hls/{id}/playlist.m3u8");
    let text = proxy.get(&path).await.text().await.unwrap();
    let reference = references(&text).remove(0);
    let (token, file) = reference.split_once('/').unwrap();
    // Flip each of the token's characters in turn (a sampling keeps the test quick).
    let mut tries = 0;
    for i in (0..token.len()).step_by(3) {
        let mut bytes = token.as_bytes().to_vec();
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(bytes).unwrap();
        let res = proxy.get(&format!("/hls/{id}/{forged}/{file}")).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "byte {i}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], "invalid_reference");
        tries += 1;
    }
    assert!(tries > 5);
    assert_eq!(origin.hits("/p/seg-1.ts"), 0, "nothing fetched");
    let res = proxy.get(&format!("/hls/{id}/{reference}")).await;
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "the untouched reference plays"
    );
}
