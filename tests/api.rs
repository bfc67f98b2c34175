//! The management API: streams, failover, clients, health, token, and every bad input.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::util::origin::Origin;
use crate::util::Proxy;

async fn expect_error(res: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(res.status(), status);
    assert!(res
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert!(!body["detail"].as_str().unwrap().is_empty());
    body
}

#[tokio::test]
async fn health_is_open_and_reports_counts() {
    let proxy = Proxy::start_with(|c| c.api_token = Some("t0ken".into())).await;
    let health = proxy.get_json("/health").await;
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(health["streams"], 0);
    assert!(health["uptime_seconds"].is_u64());
}

#[tokio::test]
async fn create_is_idempotent_per_url_and_updates_settings() {
    let proxy = Proxy::start().await;
    let (status, first) = proxy
        .post_stream(
            json!({"url": "http://127.0.0.1:9/live/index.m3u8", "user_agent": "VLC/3.0.18"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = first["stream_id"].as_str().unwrap().to_string();
    assert!(id.len() >= 24, "ids are unguessable: {id}");
    assert_eq!(first["stream_type"], "hls");
    assert_eq!(first["stream_endpoint"], format!("/hls/{id}/playlist.m3u8"));
    assert_eq!(first["playlist_url"], format!("/hls/{id}/playlist.m3u8"));
    assert_eq!(first["direct_url"], format!("/stream/{id}"));
    assert_eq!(first["original_url"], "http://127.0.0.1:9/live/index.m3u8");
    assert_eq!(first["current_url"], "http://127.0.0.1:9/live/index.m3u8");
    assert_eq!(first["user_agent"], "VLC/3.0.18");

    let (status, again) = proxy
        .post_stream(json!({
            "url": "http://127.0.0.1:9/live/index.m3u8",
            "failover_urls": ["http://127.0.0.1:9/backup/index.m3u8"],
            "headers": {"Referer": "http://example.invalid/", "Authorization": "secret-value"},
            "metadata": {"channel": 7}
        }))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["stream_id"], id.as_str());
    assert_eq!(
        again["failover_urls"],
        json!(["http://127.0.0.1:9/backup/index.m3u8"])
    );

    let detail = proxy.get_json(&format!("/streams/{id}")).await;
    assert_eq!(detail["stream"]["metadata"], json!({"channel": 7}));
    assert_eq!(detail["client_count"], 0);
    let names = detail["stream"]["header_names"].as_array().unwrap();
    assert!(names.contains(&json!("authorization")));
    assert!(
        !detail.to_string().contains("secret-value"),
        "header values never appear in responses"
    );

    let list = proxy.get_json("/streams").await;
    assert_eq!(list["total"], 1);
    assert_eq!(list["streams"][0]["stream_id"], id.as_str());
}

#[tokio::test]
async fn stream_type_comes_from_the_extension_or_a_probe() {
    let origin = Origin::start().await;
    origin.put(
        "/channel/7",
        "#EXTM3U\n#EXT-X-ENDLIST\n",
        "application/vnd.apple.mpegurl",
    );
    origin.put("/tv/8", vec![0x47u8; 188 * 4], "video/mp2t");
    origin.put("/sniff/9", "#EXTM3U\n#EXT-X-ENDLIST\n", "text/plain");
    let proxy = Proxy::start().await;
    for (path, expected) in [
        ("/channel/7", "hls"),
        ("/tv/8", "direct"),
        ("/sniff/9", "hls"),
        ("/movie.mkv", "direct"),
    ] {
        let created = proxy.create_stream(&origin.url(path)).await;
        assert_eq!(created["stream_type"], expected, "{path}");
    }
    let (_, explicit) = proxy
        .post_stream(json!({"url": origin.url("/other"), "stream_type": "direct"}))
        .await;
    assert_eq!(explicit["stream_type"], "direct");
    assert_eq!(
        explicit["stream_endpoint"].as_str().unwrap(),
        format!("/stream/{}", explicit["stream_id"].as_str().unwrap())
    );
}

#[tokio::test]
async fn every_bad_input_gets_a_clear_json_error() {
    let proxy = Proxy::start().await;
    let post_raw = |body: &'static str| {
        proxy
            .http
            .post(proxy.url("/streams"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    expect_error(
        post_raw("{not json").await.unwrap(),
        StatusCode::BAD_REQUEST,
        "malformed_json",
    )
    .await;
    expect_error(
        post_raw("").await.unwrap(),
        StatusCode::BAD_REQUEST,
        "malformed_json",
    )
    .await;
    expect_error(
        post_raw("{}").await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    )
    .await;
    expect_error(
        post_raw(r#"{"url": 5}"#).await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    )
    .await;
    for (body, code) in [
        (
            json!({"url": "ftp://example.invalid/a.ts"}),
            "unsupported_scheme",
        ),
        (json!({"url": "file:///etc/passwd"}), "unsupported_scheme"),
        (json!({"url": "not a url"}), "invalid_url"),
        (
            json!({"url": "http://ok.invalid/a.m3u8", "failover_urls": ["gopher://x/"]}),
            "unsupported_scheme",
        ),
        (
            json!({"url": "http://ok.invalid/a.m3u8", "headers": {"bad name": "v"}}),
            "invalid_header",
        ),
        (
            json!({"url": "http://ok.invalid/a.m3u8", "headers": {"Host": "evil"}}),
            "invalid_header",
        ),
        (
            json!({"url": "http://ok.invalid/a.m3u8", "user_agent": "line\nbreak"}),
            "invalid_header",
        ),
    ] {
        let res = proxy
            .http
            .post(proxy.url("/streams"))
            .json(&body)
            .send()
            .await
            .unwrap();
        expect_error(res, StatusCode::UNPROCESSABLE_ENTITY, code).await;
    }
    assert_eq!(
        proxy.get_json("/streams").await["total"],
        0,
        "nothing was registered"
    );

    let unknown = "0123456789abcdef01234567";
    expect_error(
        proxy.get(&format!("/streams/{unknown}")).await,
        StatusCode::NOT_FOUND,
        "stream_not_found",
    )
    .await;
    let del = proxy
        .http
        .delete(proxy.url(&format!("/streams/{unknown}")))
        .send()
        .await
        .unwrap();
    expect_error(del, StatusCode::NOT_FOUND, "stream_not_found").await;
    let fo = proxy
        .http
        .post(proxy.url(&format!("/streams/{unknown}/failover")))
        .send()
        .await
        .unwrap();
    expect_error(fo, StatusCode::NOT_FOUND, "stream_not_found").await;
    expect_error(
        proxy.get("/clients/nobody").await,
        StatusCode::NOT_FOUND,
        "client_not_found",
    )
    .await;
    expect_error(
        proxy.get(&format!("/hls/{unknown}/playlist.m3u8")).await,
        StatusCode::NOT_FOUND,
        "stream_not_found",
    )
    .await;
    expect_error(
        proxy.get(&format!("/stream/{unknown}")).await,
        StatusCode::NOT_FOUND,
        "stream_not_found",
    )
    .await;
    expect_error(
        proxy.get("/no/such/route").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    let created = proxy.create_stream("http://127.0.0.1:9/a.m3u8").await;
    let id = created["stream_id"].as_str().unwrap();
    let fo = proxy
        .http
        .post(proxy.url(&format!("/streams/{id}/failover")))
        .send()
        .await
        .unwrap();
    expect_error(fo, StatusCode::BAD_REQUEST, "no_failover_urls").await;
    let bad_client = proxy
        .get(&format!("/hls/{id}/playlist.m3u8?client_id=a/b"))
        .await;
    expect_error(bad_client, StatusCode::BAD_REQUEST, "invalid_client_id").await;
}

#[tokio::test]
async fn manual_failover_walks_the_list_and_wraps() {
    let proxy = Proxy::start().await;
    let (_, created) = proxy
        .post_stream(json!({
            "url": "http://127.0.0.1:9/a.m3u8",
            "failover_urls": ["http://127.0.0.1:9/b.m3u8", "http://127.0.0.1:9/c.m3u8"]
        }))
        .await;
    let id = created["stream_id"].as_str().unwrap();
    let mut seen = vec![];
    for _ in 0..3 {
        let body = proxy.switch_now(id).await;
        seen.push((
            body["previous_url"].as_str().unwrap().to_string(),
            body["current_url"].as_str().unwrap().to_string(),
            body["failover_index"].as_u64().unwrap(),
        ));
    }
    assert_eq!(
        seen,
        vec![
            (
                "http://127.0.0.1:9/a.m3u8".into(),
                "http://127.0.0.1:9/b.m3u8".into(),
                1
            ),
            (
                "http://127.0.0.1:9/b.m3u8".into(),
                "http://127.0.0.1:9/c.m3u8".into(),
                2
            ),
            (
                "http://127.0.0.1:9/c.m3u8".into(),
                "http://127.0.0.1:9/a.m3u8".into(),
                0
            ),
        ]
    );
    let info = proxy.get_json(&format!("/streams/{id}")).await;
    assert_eq!(info["stream"]["failover_count"], 3);
    assert_eq!(info["stream"]["current_url"], "http://127.0.0.1:9/a.m3u8");
    let stats = proxy.get_json("/stats").await;
    assert_eq!(stats["proxy"]["total_failovers"], 3);
}

#[tokio::test]
async fn delete_removes_the_stream() {
    let proxy = Proxy::start().await;
    let created = proxy.create_stream("http://127.0.0.1:9/a.m3u8").await;
    let id = created["stream_id"].as_str().unwrap();
    let res = proxy
        .http
        .delete(proxy.url(&format!("/streams/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["stream_id"], id);
    assert_eq!(
        proxy.get(&format!("/streams/{id}")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(proxy.get_json("/stats").await["proxy"]["total_streams"], 0);
}

/// How a caller presents the token.
#[derive(Clone, Copy, Debug)]
enum Presented {
    Header,
    Bearer,
    Query,
}

fn with_token(
    proxy: &Proxy,
    method: &str,
    path: &str,
    token: Option<(Presented, &str)>,
) -> reqwest::RequestBuilder {
    let url = match token {
        Some((Presented::Query, t)) => {
            let sep = if path.contains('?') { '&' } else { '?' };
            proxy.url(&format!("{path}{sep}api_token={t}"))
        }
        _ => proxy.url(path),
    };
    let mut req = proxy.http.request(method.parse().unwrap(), url);
    match token {
        Some((Presented::Header, t)) => req = req.header("X-API-Token", t),
        Some((Presented::Bearer, t)) => req = req.bearer_auth(t),
        _ => {}
    }
    req
}

#[tokio::test]
async fn the_token_guards_every_management_route_but_never_playback_or_health() {
    let origin = Origin::start().await;
    origin.put(
        "/a.m3u8",
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\ns.ts\n#EXT-X-ENDLIST\n",
        "application/vnd.apple.mpegurl",
    );
    origin.put("/s.ts", vec![0x47u8; 376], "video/mp2t");
    origin.put("/live.ts", vec![0x47u8; 188 * 3], "video/mp2t");
    let proxy = Proxy::start_with(|c| c.api_token = Some("s3cret".into())).await;
    let stream_body = json!({"url": origin.url("/a.m3u8")});
    let hook_body = json!({"url": "http://127.0.0.1:9/hook", "events": ["failover"]});
    let unknown = "0123456789abcdef01234567";
    // Every management route, with the body it takes and the status its handler gives
    // once the token is accepted (unknown ids: the handler's own 404).
    let routes: [(&str, String, Option<&Value>, u16); 14] = [
        ("GET", "/streams".into(), None, 200),
        ("POST", "/streams".into(), Some(&stream_body), 201),
        ("GET", format!("/streams/{unknown}"), None, 404),
        ("DELETE", format!("/streams/{unknown}"), None, 404),
        ("POST", format!("/streams/{unknown}/failover"), None, 404),
        ("GET", "/stats".into(), None, 200),
        ("GET", "/clients".into(), None, 200),
        ("GET", "/clients/nobody".into(), None, 404),
        ("GET", "/metrics".into(), None, 200),
        ("GET", "/events".into(), None, 200),
        ("GET", "/webhooks".into(), None, 200),
        ("POST", "/webhooks".into(), Some(&hook_body), 201),
        ("GET", "/webhooks/nohook".into(), None, 404),
        ("DELETE", "/webhooks/nohook".into(), None, 404),
    ];
    for (method, path, body, accepted) in &routes {
        let send = |token: Option<(Presented, &str)>| {
            let mut req = with_token(&proxy, method, path, token);
            if let Some(b) = body {
                req = req.json(b);
            }
            req.send()
        };
        expect_error(
            send(None).await.unwrap(),
            StatusCode::UNAUTHORIZED,
            "missing_token",
        )
        .await;
        for how in [Presented::Header, Presented::Bearer, Presented::Query] {
            expect_error(
                send(Some((how, "wrong"))).await.unwrap(),
                StatusCode::FORBIDDEN,
                "invalid_token",
            )
            .await;
            let ok = send(Some((how, "s3cret"))).await.unwrap();
            let status = ok.status().as_u16();
            // The same stream posted again is an update.
            let expected =
                if *accepted == 201 && path == "/streams" && !matches!(how, Presented::Header) {
                    200
                } else {
                    *accepted
                };
            assert_eq!(
                status, expected,
                "{method} {path} with the token as {how:?}"
            );
        }
    }
    let no_scheme = proxy
        .http
        .get(proxy.url("/stats"))
        .header("authorization", "s3cret")
        .send()
        .await
        .unwrap();
    expect_error(no_scheme, StatusCode::UNAUTHORIZED, "missing_token").await;

    // Health and playback: no token needed, and a wrong one changes nothing.
    let list: Value = with_token(
        &proxy,
        "GET",
        "/streams",
        Some((Presented::Header, "s3cret")),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let id = list["streams"][0]["stream_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, direct) = {
        let res = with_token(
            &proxy,
            "POST",
            "/streams",
            Some((Presented::Bearer, "s3cret")),
        )
        .json(&json!({"url": origin.url("/live.ts")}))
        .send()
        .await
        .unwrap();
        (res.status(), res.json::<Value>().await.unwrap())
    };
    let direct_id = direct["stream_id"].as_str().unwrap();
    for token in [
        None,
        Some((Presented::Header, "wrong")),
        Some((Presented::Query, "wrong")),
    ] {
        let get = |path: String| with_token(&proxy, "GET", &path, token).send();
        assert_eq!(
            get("/health".into()).await.unwrap().status(),
            StatusCode::OK
        );
        let playlist = get(format!("/hls/{id}/playlist.m3u8")).await.unwrap();
        assert_eq!(
            playlist.status(),
            StatusCode::OK,
            "playback never needs the token"
        );
        let text = playlist.text().await.unwrap();
        let segment = text.lines().find(|l| !l.starts_with('#')).unwrap();
        let seg = proxy
            .http
            .get(format!("{}/hls/{id}/{segment}", proxy.base))
            .send()
            .await
            .unwrap();
        assert_eq!(seg.status(), StatusCode::OK);
        assert_eq!(seg.bytes().await.unwrap().len(), 376);
        let live = get(format!("/stream/{direct_id}")).await.unwrap();
        assert_eq!(live.status(), StatusCode::OK);
        assert_eq!(live.bytes().await.unwrap().len(), 188 * 3);
    }
}
