//! What direct streams keep from the shared client now that their own client
//! (`upstream::feed`) fetches them: redirects and the final URL, the stream's user agent and
//! headers, credentials of the URL, and what must not follow a redirect to another origin.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::util::origin::Origin;
use crate::util::Proxy;

/// 1 MB that look like nothing but themselves.
fn movie() -> Vec<u8> {
    (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

async fn direct_stream(proxy: &Proxy, body: Value) -> String {
    let (status, created) = proxy.post_stream(body).await;
    assert!(status.is_success(), "{status} {created}");
    assert_eq!(created["stream_type"], "direct", "{created}");
    created["stream_endpoint"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_redirected_direct_stream_keeps_its_headers_and_is_judged_by_its_final_url() {
    let origin = Origin::start().await;
    let body = movie();
    // No length and no telling content type: only the final URL's `.mp4` says "file".
    origin.chunked("/films/movie.mp4", body.clone(), "application/octet-stream");
    origin.redirect("/play", "/hop", 302);
    origin.redirect("/hop", &origin.url("/films/movie.mp4"), 301);
    let proxy = Proxy::start().await;
    let endpoint = direct_stream(
        &proxy,
        json!({
            "url": origin.url("/play"),
            "stream_type": "direct",
            "user_agent": "box/7",
            "headers": {"x-account": "a7"},
        }),
    )
    .await;
    let before = origin.hits("/films/movie.mp4");

    let res = proxy.get(&endpoint).await;
    assert_eq!(res.status(), StatusCode::OK);
    let got = res.bytes().await.unwrap();
    assert_eq!(got.len(), body.len(), "the file once, never replayed");
    assert!(got.as_ref() == &body[..]);
    assert_eq!(origin.hits("/films/movie.mp4") - before, 1);

    let seen = origin.last_request("/films/movie.mp4").unwrap();
    assert_eq!(seen.headers["user-agent"], "box/7");
    assert_eq!(seen.headers["x-account"], "a7");
    assert_eq!(seen.headers["referer"], origin.url("/hop").as_str());
    let hop = origin.last_request("/hop").unwrap();
    assert_eq!(hop.headers["user-agent"], "box/7");
    assert_eq!(hop.headers["referer"], origin.url("/play").as_str());
}

#[tokio::test]
async fn ten_redirects_are_followed_and_the_eleventh_is_a_clear_error() {
    let origin = Origin::start().await;
    origin.put("/r11.ts", vec![0x47u8; 188 * 10], "video/mp2t");
    for i in 0..11 {
        origin.redirect(&format!("/r{i}.ts"), &format!("/r{}.ts", i + 1), 302);
    }
    let proxy = Proxy::start().await;

    let ten = direct_stream(
        &proxy,
        json!({"url": origin.url("/r1.ts"), "stream_type": "direct"}),
    )
    .await;
    let res = proxy.get(&ten).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap().len(), 1880);

    let eleven = direct_stream(
        &proxy,
        json!({"url": origin.url("/r0.ts"), "stream_type": "direct"}),
    )
    .await;
    let res = proxy.get(&eleven).await;
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "upstream_error", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("too many redirects"),
        "{body}"
    );
}

#[tokio::test]
async fn credentials_go_as_basic_auth_and_stay_behind_when_a_redirect_leaves_the_origin() {
    let first = Origin::start().await;
    let second = Origin::start().await;
    second.put("/file.ts", vec![0x47u8; 188 * 20], "video/mp2t");
    first.redirect("/auth.ts", &second.url("/file.ts"), 307);
    let proxy = Proxy::start().await;
    let url = first
        .url("/auth.ts")
        .replace("http://", "http://user:p%40ss@");
    let endpoint = direct_stream(
        &proxy,
        json!({"url": url, "stream_type": "direct", "headers": {"cookie": "session=1", "x-keep": "k"}}),
    )
    .await;

    let res = proxy.get(&endpoint).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap().len(), 188 * 20);

    let asked = first.last_request("/auth.ts").unwrap();
    // base64("user:p@ss")
    assert_eq!(asked.headers["authorization"], "Basic dXNlcjpwQHNz");
    assert_eq!(asked.headers["cookie"], "session=1");
    let followed = second.last_request("/file.ts").unwrap();
    assert!(followed.headers.get("authorization").is_none());
    assert!(followed.headers.get("cookie").is_none());
    assert_eq!(followed.headers["x-keep"], "k");
}
