//! Direct answers without a Content-Length: a file streamed chunked arrives exactly once
//! (never replayed from byte 0 when it ends), while a live TS that ends is reconnected.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;

use crate::util::media::sha256_hex;
use crate::util::origin::{Fault, Origin, TS_PACKET};
use crate::util::ts_viewer::TsViewer;
use crate::util::Proxy;

/// 3 MB that look like nothing but themselves.
fn movie() -> Vec<u8> {
    (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

/// 3 MB of numbered TS packets: a recording.
fn recording() -> Vec<u8> {
    (0..16_000u32)
        .flat_map(|n| {
            let mut p = [0xffu8; TS_PACKET];
            p[..4].copy_from_slice(&[0x47, 0x01, 0x00, 0x10]);
            p[4..8].copy_from_slice(&n.to_be_bytes());
            p
        })
        .collect()
}

/// The whole body of `endpoint`, read until it ends (or, replayed, until it is longer than
/// `expected` bytes).
async fn body_of(proxy: &Proxy, endpoint: &str, expected: usize) -> Vec<u8> {
    let res = proxy.get(endpoint).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().get("content-length").is_none());
    let mut body = res.bytes_stream();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(chunk) = body.next().await {
            got.extend_from_slice(&chunk.expect("a clean end, no cut"));
            if got.len() > expected {
                break;
            }
        }
    })
    .await
    .expect("the body ends");
    got
}

async fn stream_info(proxy: &Proxy, endpoint: &str) -> serde_json::Value {
    let id = endpoint.rsplit('/').next().unwrap();
    proxy.get_json(&format!("/streams/{id}")).await["stream"].clone()
}

#[tokio::test]
async fn a_chunked_movie_arrives_exactly_once() {
    let origin = Origin::start().await;
    let body = movie();
    // Only the extension tells; then only the content type.
    origin.chunked("/films/movie.mp4", body.clone(), "application/octet-stream");
    origin.chunked("/vod/42", body.clone(), "video/mp4");
    let proxy = Proxy::start().await;
    for path in ["/films/movie.mp4", "/vod/42"] {
        let endpoint = proxy.create_stream(&origin.url(path)).await["stream_endpoint"]
            .as_str()
            .unwrap()
            .to_owned();
        // Registering may probe the origin for the stream's type.
        let before = origin.hits(path);
        let got = body_of(&proxy, &endpoint, body.len()).await;
        assert_eq!(got.len(), body.len(), "{path}: every byte once");
        assert_eq!(sha256_hex(&got), sha256_hex(&body), "{path}");
        assert_eq!(origin.hits(path) - before, 1, "{path}: asked once");
        let info = stream_info(&proxy, &endpoint).await;
        assert_eq!(
            info["error_count"], 0,
            "{path}: the end of a file is no error"
        );
    }
}

#[tokio::test]
async fn a_chunked_ts_recording_with_a_clean_end_arrives_exactly_once() {
    let origin = Origin::start().await;
    let body = recording();
    // TS without a length looks live until it ends: the proxy reconnects, sees the
    // recording start over and ends the player's copy where the first one ended.
    origin.paced("/rec/show.ts", body.clone(), 6_000_000);
    for sharing in [true, false] {
        let proxy = Proxy::start_with(|c| {
            if !sharing {
                c.fanout.buffer = 0;
            }
        })
        .await;
        let before = origin.hits("/rec/show.ts");
        let endpoint = proxy.create_stream(&origin.url("/rec/show.ts")).await["stream_endpoint"]
            .as_str()
            .unwrap()
            .to_owned();
        let got = body_of(&proxy, &endpoint, body.len()).await;
        assert_eq!(got.len(), body.len(), "sharing {sharing}: every byte once");
        assert_eq!(sha256_hex(&got), sha256_hex(&body), "sharing {sharing}");
        let hits = origin.hits("/rec/show.ts") - before;
        assert!(hits <= 2, "sharing {sharing}: {hits} requests");
        let info = stream_info(&proxy, &endpoint).await;
        assert_eq!(info["error_count"], 0, "sharing {sharing}");
    }
}

#[tokio::test]
async fn an_endless_live_ts_that_ends_cleanly_is_reconnected() {
    let origin = Origin::start().await;
    origin.live_ts("/live/ch.ts", 200_000);
    origin.fault(
        "/live/ch.ts",
        Fault::Times(1, Box::new(Fault::EndAfter(50 * TS_PACKET))),
    );
    let proxy = Proxy::start().await;
    let endpoint = proxy.create_stream(&origin.url("/live/ch.ts")).await["stream_endpoint"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut viewer = TsViewer::open(&proxy, &endpoint).await;
    viewer.read_packets(300, Duration::from_secs(8)).await;
    assert_eq!(origin.hits("/live/ch.ts"), 2, "reconnected once");
    let numbers = viewer.numbers();
    assert!(numbers.len() >= 300, "whole numbered packets only");
    assert_eq!(
        viewer.discontinuities().len(),
        1,
        "one cut, then the live feed"
    );
    assert!(viewer.last_run() >= 200, "steady after the reconnection");
    let info = stream_info(&proxy, &endpoint).await;
    assert_eq!(info["error_count"], 1, "the live stream's end is counted");
}
