//! Direct streams through `/stream/{id}`: files with Range, If-Range, HEAD and 416; live
//! TS without a length, streamed as it arrives; hang-ups and deletes end the upstream.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::util::origin::{ts_packet_number, Fault, Origin, TS_PACKET};
use crate::util::{eventually, Proxy};

fn movie() -> Vec<u8> {
    (0..300_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

async fn direct_stream(proxy: &Proxy, url: &str) -> String {
    let created = proxy.create_stream(url).await;
    assert_eq!(created["stream_type"], "direct");
    created["stream_endpoint"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn files_are_relayed_whole_and_by_range() {
    let origin = Origin::start().await;
    let body = movie();
    origin.put("/films/movie.mp4", body.clone(), "video/mp4");
    let proxy = Proxy::start().await;
    let endpoint = direct_stream(&proxy, &origin.url("/films/movie.mp4")).await;

    let full = proxy.get(&endpoint).await;
    assert_eq!(full.status(), StatusCode::OK);
    assert_eq!(
        full.headers()["content-length"],
        body.len().to_string().as_str()
    );
    assert_eq!(full.headers()["content-type"], "video/mp4");
    assert_eq!(full.headers()["accept-ranges"], "bytes");
    let etag = full.headers()["etag"].clone();
    assert_eq!(full.bytes().await.unwrap().as_ref(), &body[..]);

    let part = proxy
        .http
        .get(proxy.url(&endpoint))
        .header("Range", "bytes=1000-")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 1000-{}/{}", body.len() - 1, body.len()).as_str()
    );
    assert_eq!(part.bytes().await.unwrap().as_ref(), &body[1000..]);

    let tail = proxy
        .http
        .get(proxy.url(&endpoint))
        .header("Range", "bytes=-100")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        tail.bytes().await.unwrap().as_ref(),
        &body[body.len() - 100..]
    );

    let beyond = proxy
        .http
        .get(proxy.url(&endpoint))
        .header("Range", "bytes=999999999-")
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        beyond.headers()["content-range"],
        format!("bytes */{}", body.len()).as_str()
    );

    // If-Range with the current validator gets the range; a stale one gets the whole file.
    let fresh = proxy
        .http
        .get(proxy.url(&endpoint))
        .header("Range", "bytes=0-9")
        .header("If-Range", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), StatusCode::PARTIAL_CONTENT);
    let stale = proxy
        .http
        .get(proxy.url(&endpoint))
        .header("Range", "bytes=0-9")
        .header("If-Range", "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::OK);
    assert_eq!(stale.bytes().await.unwrap().len(), body.len());

    let head = proxy.http.head(proxy.url(&endpoint)).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()["content-length"],
        body.len().to_string().as_str()
    );
    assert!(head.bytes().await.unwrap().is_empty());
    assert_eq!(
        origin.last_request("/films/movie.mp4").unwrap().method,
        "HEAD"
    );

    let id = endpoint.rsplit('/').next().unwrap();
    let info = proxy.get_json(&format!("/streams/{id}")).await;
    let expected = 2 * body.len() + (body.len() - 1000) + 100 + 10;
    assert_eq!(
        info["stream"]["total_bytes_served"], expected as u64,
        "bytes counted as written"
    );
    assert_eq!(info["stream"]["active_connections"], 0);
}

#[tokio::test]
async fn live_ts_streams_as_it_arrives_and_hang_ups_release_the_upstream() {
    let origin = Origin::start().await;
    origin.live_ts("/live/ch1.ts", 200_000);
    let proxy = Proxy::start().await;
    let endpoint = direct_stream(&proxy, &origin.url("/live/ch1.ts")).await;
    let id = endpoint.rsplit('/').next().unwrap().to_string();

    let res = proxy.get(&endpoint).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers().get("content-length").is_none(),
        "a live stream has no length"
    );
    assert_eq!(res.headers()["content-type"], "video/mp2t");
    let mut body = res.bytes_stream();
    let mut got = Vec::new();
    // The first bytes arrive long before any "whole file" could: the body is streamed.
    tokio::time::timeout(Duration::from_secs(3), async {
        while got.len() < 20 * TS_PACKET {
            got.extend_from_slice(&body.next().await.unwrap().unwrap());
        }
    })
    .await
    .expect("live bytes flow");
    let first = ts_packet_number(&got[..TS_PACKET]).expect("a TS packet");
    for (i, packet) in got.chunks_exact(TS_PACKET).take(20).enumerate() {
        assert_eq!(
            ts_packet_number(packet),
            Some(first + i as u64),
            "continuous packets"
        );
    }
    let info = proxy.get_json(&format!("/streams/{id}")).await;
    assert_eq!(info["stream"]["active_connections"], 1);
    assert_eq!(info["clients"][0]["active_connections"], 1);

    drop(body); // the viewer hangs up
    let info = eventually(
        Duration::from_secs(3),
        "the connection released",
        || async {
            let info = proxy.get_json(&format!("/streams/{id}")).await;
            (info["stream"]["active_connections"] == 0).then_some(info)
        },
    )
    .await;
    let served = info["stream"]["total_bytes_served"].as_u64().unwrap();
    assert!(served >= got.len() as u64, "partial responses are counted");
}

#[tokio::test]
async fn deleting_a_stream_ends_its_viewers() {
    let origin = Origin::start().await;
    origin.live_ts("/live/ch2.ts", 100_000);
    let proxy = Proxy::start().await;
    let endpoint = direct_stream(&proxy, &origin.url("/live/ch2.ts")).await;
    let id = endpoint.rsplit('/').next().unwrap().to_string();
    let res = proxy.get(&endpoint).await;
    let mut body = res.bytes_stream();
    body.next().await.unwrap().unwrap();
    let del = proxy
        .http
        .delete(proxy.url(&format!("/streams/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::OK);
    let ended = tokio::time::timeout(Duration::from_secs(3), async {
        while let Some(Ok(_)) = body.next().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the viewer's connection ended with the stream"
    );
}

#[tokio::test]
async fn direct_failures_are_clear_and_fail_over_before_the_first_byte() {
    let origin = Origin::start().await;
    origin.put("/a.ts", vec![0x47u8; 1880], "video/mp2t");
    origin.fault("/a.ts", Fault::Status(503));
    origin.put("/b.ts", vec![0x47u8; 3760], "video/mp2t");
    origin.put("/html.ts", "x", "video/mp2t");
    origin.fault("/html.ts", Fault::Html);
    let proxy = Proxy::start_with(|c| c.upstream.first_byte = Duration::from_millis(800)).await;

    let (_, created) = proxy
        .post_stream(json!({"url": origin.url("/a.ts"), "failover_urls": [origin.url("/b.ts")]}))
        .await;
    let res = proxy
        .get(created["stream_endpoint"].as_str().unwrap())
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap().len(), 3760, "the backup's bytes");

    let endpoint = direct_stream(&proxy, &origin.url("/html.ts")).await;
    let res = proxy.get(&endpoint).await;
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    // An HTML page where media was asked for is a media error, not a playlist error.
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "upstream_not_media", "{body}");
    assert_eq!(
        body["detail"], "upstream answered an HTML page instead of media",
        "{body}"
    );

    origin.put("/hang.ts", "x", "video/mp2t");
    origin.fault("/hang.ts", Fault::Hang);
    let endpoint = direct_stream(&proxy, &origin.url("/hang.ts")).await;
    let res = proxy.get(&endpoint).await;
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        res.json::<Value>().await.unwrap()["code"],
        "upstream_timeout"
    );

    let endpoint = direct_stream(&proxy, &origin.url("/none.ts")).await;
    assert_eq!(proxy.get(&endpoint).await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_hls_stream_opened_as_direct_redirects_to_its_playlist() {
    let proxy = Proxy::start().await;
    let created = proxy.create_stream("http://127.0.0.1:9/x/index.m3u8").await;
    let id = created["stream_id"].as_str().unwrap();
    let res = proxy.get(&format!("/stream/{id}")).await;
    assert_eq!(res.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = res.headers()["location"].to_str().unwrap();
    let resolved = url::Url::parse(&proxy.url(&format!("/stream/{id}")))
        .unwrap()
        .join(location)
        .unwrap();
    assert_eq!(resolved.path(), format!("/hls/{id}/playlist.m3u8"));
}
