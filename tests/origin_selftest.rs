//! Tests of the test origin itself: if it lied about ranges or faults, every suite built on
//! it would prove nothing.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::header;
use reqwest::StatusCode;

use crate::util::eventually;
use crate::util::origin::{ts_packet_number, Fault, Origin, TS_PACKET};
use crate::util::temp_dir::TempDir;

const BODY: &[u8] = b"0123456789abcdefghij";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn origin_with_file() -> Origin {
    let origin = Origin::start().await;
    origin.put("/file.bin", BODY, "application/octet-stream");
    origin
}

fn header(response: &reqwest::Response, name: header::HeaderName) -> &str {
    response.headers()[name].to_str().unwrap()
}

async fn get_range(origin: &Origin, range: &str) -> reqwest::Response {
    client()
        .get(origin.url("/file.bin"))
        .header(header::RANGE, range)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn files_answer_get_and_head_with_validators() {
    let origin = origin_with_file().await;
    let response = client().get(origin.url("/file.bin")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, header::CONTENT_LENGTH), "20");
    assert_eq!(header(&response, header::ACCEPT_RANGES), "bytes");
    assert_eq!(
        header(&response, header::CONTENT_TYPE),
        "application/octet-stream"
    );
    let etag = header(&response, header::ETAG).to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert!(header(&response, header::LAST_MODIFIED).ends_with(" GMT"));
    assert_eq!(response.bytes().await.unwrap(), BODY);

    let head = client().head(origin.url("/file.bin")).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, header::CONTENT_LENGTH), "20");
    assert_eq!(header(&head, header::ETAG), etag);
    assert!(head.bytes().await.unwrap().is_empty());

    let missing = client().get(origin.url("/nope.ts")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn ranges_are_answered_like_a_real_server() {
    let origin = origin_with_file().await;
    for (range, content_range, body) in [
        ("bytes=2-5", "bytes 2-5/20", &BODY[2..=5]),
        ("bytes=15-", "bytes 15-19/20", &BODY[15..]),
        ("bytes=-3", "bytes 17-19/20", &BODY[17..]),
        ("bytes=18-100", "bytes 18-19/20", &BODY[18..]),
        ("bytes=-50", "bytes 0-19/20", BODY),
    ] {
        let response = get_range(&origin, range).await;
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(header(&response, header::CONTENT_RANGE), content_range);
        let length = body.len().to_string();
        assert_eq!(header(&response, header::CONTENT_LENGTH), length);
        assert_eq!(response.bytes().await.unwrap(), body, "{range}");
    }
    for range in ["bytes=20-", "bytes=-0"] {
        let response = get_range(&origin, range).await;
        assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(header(&response, header::CONTENT_RANGE), "bytes */20");
    }
    // Malformed or multi-range: the whole file, as RFC 9110 allows.
    for range in ["bytes=5-2", "items=1-2", "bytes=0-1,4-5"] {
        let response = get_range(&origin, range).await;
        assert_eq!(response.status(), StatusCode::OK, "{range}");
        assert_eq!(response.bytes().await.unwrap(), BODY);
    }
}

#[tokio::test]
async fn if_range_honours_only_the_current_etag() {
    let origin = origin_with_file().await;
    let first = client().head(origin.url("/file.bin")).send().await.unwrap();
    let etag = header(&first, header::ETAG).to_owned();
    let ranged = |if_range: String| {
        client()
            .get(origin.url("/file.bin"))
            .header(header::RANGE, "bytes=10-")
            .header(header::IF_RANGE, if_range)
            .send()
    };
    let same = ranged(etag.clone()).await.unwrap();
    assert_eq!(same.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(same.bytes().await.unwrap(), &BODY[10..]);

    origin.put("/file.bin", &b"a new version of the file"[..], "video/mp2t");
    let changed = ranged(etag).await.unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    assert_eq!(header(&changed, header::CONTENT_TYPE), "video/mp2t");
    assert_eq!(
        changed.bytes().await.unwrap(),
        &b"a new version of the file"[..]
    );
}

#[tokio::test]
async fn directories_are_served_by_extension_and_stay_inside() {
    let dir = TempDir::new("origin-selftest");
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/index.m3u8"), "#EXTM3U\n").unwrap();
    std::fs::write(dir.path().join("seg0.ts"), [0x47; 376]).unwrap();
    let origin = Origin::start().await;
    origin.serve_dir("/media/", dir.path());

    let playlist = client()
        .get(origin.url("/media/sub/index.m3u8"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&playlist, header::CONTENT_TYPE),
        "application/vnd.apple.mpegurl"
    );
    assert_eq!(playlist.text().await.unwrap(), "#EXTM3U\n");

    let segment = get_range_of(&origin, "/media/seg0.ts", "bytes=188-").await;
    assert_eq!(segment.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&segment, header::CONTENT_TYPE), "video/mp2t");
    assert_eq!(segment.bytes().await.unwrap().len(), 188);

    for outside in [
        "/media/../etc/passwd",
        "/media/%2e%2e/seg0.ts",
        "/other/seg0.ts",
    ] {
        let response = client().get(origin.url(outside)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{outside}");
    }
}

async fn get_range_of(origin: &Origin, path: &str, range: &str) -> reqwest::Response {
    client()
        .get(origin.url(path))
        .header(header::RANGE, range)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn redirects_and_request_records() {
    let origin = origin_with_file().await;
    origin.redirect("/old.m3u8", "/file.bin", 302);
    let response = client()
        .get(origin.url("/old.m3u8?token=abc"))
        .header("x-custom", "yes")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(header(&response, header::LOCATION), "/file.bin");

    assert_eq!(origin.hits("/old.m3u8"), 1);
    let seen = origin.last_request("/old.m3u8").unwrap();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.query.as_deref(), Some("token=abc"));
    assert_eq!(seen.headers["x-custom"], "yes");

    origin.remove("/old.m3u8");
    let gone = client().get(origin.url("/old.m3u8")).send().await.unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    assert_eq!(origin.hits("/old.m3u8"), 2);

    // Faulted requests are recorded too, with their method.
    origin.fault("/file.bin", Fault::Status(500));
    client().head(origin.url("/file.bin")).send().await.unwrap();
    assert_eq!(origin.hits("/file.bin"), 1);
    assert_eq!(origin.last_request("/file.bin").unwrap().method, "HEAD");
    assert!(origin.last_request("/never").is_none());
    let paths: Vec<String> = origin
        .requests()
        .into_iter()
        .map(|(path, _)| path)
        .collect();
    assert_eq!(paths, ["/old.m3u8", "/old.m3u8", "/file.bin"]);
    assert_eq!(origin.hits("/never"), 0);
}

#[tokio::test]
async fn status_html_and_times_faults() {
    let origin = origin_with_file().await;
    origin.fault("/file.bin", Fault::Status(503));
    let response = client().get(origin.url("/file.bin")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);

    origin.fault("/file.bin", Fault::Html);
    let response = client().get(origin.url("/file.bin")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(header(&response, header::CONTENT_TYPE).starts_with("text/html"));
    assert!(response.text().await.unwrap().contains("<html>"));

    origin.fault("/file.bin", Fault::Times(2, Box::new(Fault::Status(500))));
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = client().get(origin.url("/file.bin")).send().await.unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [500, 500, 200]);

    origin.fault("/file.bin", Fault::Status(502));
    origin.clear_fault("/file.bin");
    let response = client().get(origin.url("/file.bin")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn hang_and_first_byte_delay() {
    let origin = origin_with_file().await;
    origin.fault("/file.bin", Fault::Hang);
    let hung = client()
        .get(origin.url("/file.bin"))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(hung.unwrap_err().is_timeout());

    origin.fault(
        "/file.bin",
        Fault::FirstByteDelay(Duration::from_millis(300)),
    );
    let started = Instant::now();
    let response = client().get(origin.url("/file.bin")).send().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(response.bytes().await.unwrap(), BODY);
}

#[tokio::test]
async fn cut_after_sends_full_length_then_drops() {
    let origin = origin_with_file().await;
    origin.fault("/file.bin", Fault::CutAfter(7));
    let mut response = client().get(origin.url("/file.bin")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, header::CONTENT_LENGTH), "20");
    let mut received = Vec::new();
    let error = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => received.extend_from_slice(&chunk),
            Ok(None) => panic!("body ended cleanly after {} bytes", received.len()),
            Err(err) => break err,
        }
    };
    assert_eq!(received, &BODY[..7]);
    assert!(error.is_body() || error.is_decode(), "{error:?}");

    // On a range, N counts bytes of the partial body.
    let response = get_range(&origin, "bytes=10-").await;
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert!(response.bytes().await.is_err());
}

#[tokio::test]
async fn stall_after_keeps_the_connection_silent() {
    let origin = origin_with_file().await;
    origin.fault("/file.bin", Fault::StallAfter(5));
    let mut response = client().get(origin.url("/file.bin")).send().await.unwrap();
    let first = response.chunk().await.unwrap().unwrap();
    assert_eq!(first, &BODY[..5]);
    let next = tokio::time::timeout(Duration::from_millis(300), response.chunk()).await;
    assert!(next.is_err(), "expected silence, got {next:?}");
}

#[tokio::test]
async fn reset_drops_the_connection_without_a_response() {
    let origin = origin_with_file().await;
    origin.fault("/file.bin", Fault::Reset);
    let error = client()
        .get(origin.url("/file.bin"))
        .send()
        .await
        .unwrap_err();
    assert!(error.is_request() && !error.is_timeout(), "{error:?}");
    assert_eq!(origin.hits("/file.bin"), 1);
}

/// Reads the live feed until `want` bytes arrived.
async fn read_live(response: &mut reqwest::Response, want: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    while bytes.len() < want {
        bytes.extend_from_slice(&response.chunk().await.unwrap().unwrap());
    }
    bytes
}

#[tokio::test]
async fn live_ts_is_endless_continuous_and_paced() {
    let origin = Origin::start().await;
    origin.live_ts("/live.ts", 188 * 500);
    let started = Instant::now();
    let mut response = client().get(origin.url("/live.ts")).send().await.unwrap();
    assert_eq!(header(&response, header::CONTENT_TYPE), "video/mp2t");
    assert!(response.headers().get(header::CONTENT_LENGTH).is_none());

    let bytes = read_live(&mut response, 188 * 200).await;
    // 200 packets at 500/s: about 0.4 s, and never all at once.
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(bytes.len() % TS_PACKET, 0);
    let numbers: Vec<u64> = bytes
        .chunks(TS_PACKET)
        .map(|packet| ts_packet_number(packet).expect("sync byte"))
        .collect();
    assert!(numbers.windows(2).all(|pair| pair[1] == pair[0] + 1));

    // A second viewer joins the same live position, not packet 0.
    let mut late = client().get(origin.url("/live.ts")).send().await.unwrap();
    let late_first = ts_packet_number(&read_live(&mut late, 188).await).unwrap();
    assert!(late_first + 50 >= *numbers.last().unwrap(), "{late_first}");
}

#[tokio::test]
async fn kill_drops_open_streams_and_refuses_new_connections() {
    let origin = origin_with_file().await;
    origin.live_ts("/live.ts", 188 * 100);
    origin.fault("/file.bin", Fault::Hang);
    let mut live = client().get(origin.url("/live.ts")).send().await.unwrap();
    read_live(&mut live, 188).await;
    let hanging = tokio::spawn(client().get(origin.url("/file.bin")).send());
    eventually(Duration::from_secs(3), "the hanging request", || async {
        (origin.hits("/file.bin") == 1).then_some(())
    })
    .await;

    origin.kill().await;

    let live_end = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match live.chunk().await {
                Ok(Some(_)) => continue,
                other => break other,
            }
        }
    })
    .await
    .expect("live body still open after kill");
    assert!(live_end.is_err(), "live body ended cleanly: {live_end:?}");
    let hung = tokio::time::timeout(Duration::from_secs(2), hanging)
        .await
        .expect("hanging request still open after kill");
    assert!(hung.unwrap().is_err());

    let refused = tokio::net::TcpStream::connect(origin.addr).await;
    assert_eq!(
        refused.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
}

#[tokio::test]
async fn streams_bodies_as_they_come() {
    // The live feed reaches the client chunk by chunk, not at the end.
    let origin = Origin::start().await;
    origin.live_ts("/live.ts", 188 * 50);
    let response = client().get(origin.url("/live.ts")).send().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(1), response.bytes_stream().next())
        .await
        .expect("no first chunk within a second");
    assert!(first.unwrap().unwrap().len() >= TS_PACKET);
}

#[tokio::test]
async fn paced_sends_the_whole_body_at_its_rate() {
    let origin = Origin::start().await;
    let body: Vec<u8> = (0..188 * 100).map(|i| (i % 251) as u8).collect();
    origin.paced("/channel.ts", body.clone(), 188 * 250);
    let started = Instant::now();
    let response = client()
        .get(origin.url("/channel.ts"))
        .send()
        .await
        .unwrap();
    assert!(response.headers().get(header::CONTENT_LENGTH).is_none());
    assert_eq!(response.bytes().await.unwrap(), body);
    // 100 packets at 250 per second.
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "{:?}",
        started.elapsed()
    );
}
