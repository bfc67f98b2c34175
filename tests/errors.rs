//! Honest answers: every error the API produces is JSON `{"detail", "code"}` (405 and the
//! HTTP layer's own refusals included), one rule for URL schemes, an origin's 404 stays a
//! 404, and a direct stream's playlist URL answers at once without asking the origin.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::util::origin::Origin;
use crate::util::Proxy;

/// Asserts a JSON error answer with `status` and `code`; returns the body.
async fn json_error(res: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(res.status(), status, "{}", res.url());
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert!(!body["detail"].as_str().unwrap().is_empty(), "{body}");
    body
}

#[tokio::test]
async fn wrong_methods_and_refused_requests_are_json_too() {
    let proxy = Proxy::start().await;
    for (method, path, allow) in [
        (Method::PUT, "/streams", "GET,HEAD,POST"),
        (Method::POST, "/health", "GET,HEAD"),
        (Method::DELETE, "/stats", "GET,HEAD"),
        (Method::POST, "/hls/abc/playlist.m3u8", "GET,HEAD"),
    ] {
        let res = proxy
            .http
            .request(method.clone(), proxy.url(path))
            .send()
            .await
            .unwrap();
        let allowed = res.headers()["allow"].to_str().unwrap().replace(' ', "");
        let mut allowed: Vec<&str> = allowed.split(',').collect();
        allowed.sort_unstable();
        assert_eq!(allowed.join(","), allow, "{method} {path}");
        json_error(res, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    }
    json_error(
        proxy.get("/nowhere").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // A path the extractor cannot decode, and a body over the limit: axum's own refusals.
    json_error(
        proxy.get("/streams/%FF%FE").await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    let huge = vec![b' '; 3 * 1024 * 1024];
    let res = proxy
        .http
        .post(proxy.url("/streams"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    json_error(res, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
}

#[tokio::test]
async fn one_rule_for_unsupported_schemes_on_streams_and_webhooks() {
    let proxy = Proxy::start().await;
    for url in ["ftp://host/x.ts", "file:///etc/passwd"] {
        let res = proxy
            .http
            .post(proxy.url("/streams"))
            .json(&json!({ "url": url }))
            .send()
            .await
            .unwrap();
        json_error(res, StatusCode::UNPROCESSABLE_ENTITY, "unsupported_scheme").await;
        let res = proxy
            .http
            .post(proxy.url("/webhooks"))
            .json(&json!({ "url": url }))
            .send()
            .await
            .unwrap();
        json_error(res, StatusCode::UNPROCESSABLE_ENTITY, "unsupported_scheme").await;
    }
    for (route, body) in [
        ("/streams", json!({"url": "not a url"})),
        ("/webhooks", json!({"url": "not a url"})),
    ] {
        let res = proxy
            .http
            .post(proxy.url(route))
            .json(&body)
            .send()
            .await
            .unwrap();
        json_error(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid_url").await;
    }
}

#[tokio::test]
async fn a_playlist_the_origin_does_not_have_is_a_404() {
    let origin = Origin::start().await;
    let proxy = Proxy::start().await;
    let id = proxy.create_stream(&origin.url("/gone/index.m3u8")).await["stream_id"]
        .as_str()
        .unwrap()
        .to_string();
    let res = proxy.get(&format!("/hls/{id}/playlist.m3u8")).await;
    json_error(res, StatusCode::NOT_FOUND, "upstream_not_found").await;
    assert_eq!(origin.hits("/gone/index.m3u8"), 1, "a 404 is not retried");
}

#[tokio::test]
async fn the_missing_token_message_names_every_way_to_send_it() {
    let proxy = Proxy::start_with(|c| c.api_token = Some("s3cret".into())).await;
    let body = json_error(
        proxy.get("/streams").await,
        StatusCode::UNAUTHORIZED,
        "missing_token",
    )
    .await;
    let detail = body["detail"].as_str().unwrap();
    for way in ["X-API-Token", "Authorization: Bearer", "?api_token="] {
        assert!(detail.contains(way), "{detail}");
    }
}

#[tokio::test]
async fn a_direct_streams_playlist_url_answers_at_once_without_the_origin() {
    let origin = Origin::start().await;
    origin.put("/films/movie.mp4", vec![7u8; 4096], "video/mp4");
    origin.live_ts("/live/channel.ts", 50_000);
    let proxy = Proxy::start().await;
    for path in ["/films/movie.mp4", "/live/channel.ts"] {
        let created = proxy.create_stream(&origin.url(path)).await;
        assert_eq!(created["stream_type"], "direct");
        let id = created["stream_id"].as_str().unwrap();
        assert_eq!(created["stream_endpoint"], format!("/stream/{id}"));
        let playlist_url = created["playlist_url"].as_str().unwrap();
        let hits = origin.hits(path);
        let started = std::time::Instant::now();
        let res = proxy.get(&format!("{playlist_url}?client_id=tv")).await;
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(
            res.headers()["location"],
            format!("../../stream/{id}?client_id=tv")
        );
        json_error(res, StatusCode::TEMPORARY_REDIRECT, "direct_stream").await;
        // A signed-reference path under a direct stream, too.
        let res = proxy.get(&format!("/hls/{id}/token/seg.ts")).await;
        assert_eq!(res.headers()["location"], format!("../../../stream/{id}"));
        assert_eq!(res.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(origin.hits(path), hits, "the origin was not asked");
    }
    // A player that follows the redirect plays the file.
    let id = proxy.create_stream(&origin.url("/films/movie.mp4")).await["stream_id"]
        .as_str()
        .unwrap()
        .to_string();
    let follows = reqwest::Client::builder().no_proxy().build().unwrap();
    let res = follows
        .get(proxy.url(&format!("/hls/{id}/playlist.m3u8")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap().len(), 4096);
}
