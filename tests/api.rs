//! The management API: streams, failover, clients, health, token, and every bad input.
//!
//! These call the application in process (tower's `oneshot` on the router the server
//! runs): nothing here is about sockets or connections, which tests/hostile.rs and the
//! connection tests cover.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use m3u_proxy::config::Config;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::util::origin::Origin;

/// The application without a server: each request goes straight to the router.
struct App {
    router: Router,
}

/// One answer, read whole.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: axum::body::Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

impl App {
    fn new() -> App {
        App::with(|_| {})
    }

    fn with(f: impl FnOnce(&mut Config)) -> App {
        let mut config = Config {
            secret: Some("test-secret".into()),
            ..Config::default()
        };
        f(&mut config);
        let state = m3u_proxy::server::build_state(config).expect("a valid configuration");
        App {
            router: m3u_proxy::api::app(state),
        }
    }

    /// Sends `method path` with `headers` and a JSON `body` (or a raw one); answers are
    /// read whole, so this is for bodies that end.
    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Body>,
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let mut req = req.body(body.unwrap_or_else(Body::empty)).unwrap();
        // What the connection layer adds before routing.
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
        let res = self.router.clone().oneshot(req).await.unwrap();
        let (parts, body) = res.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .expect("the whole body");
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Answer {
        self.call_with(method, path, &[], body).await
    }

    async fn call_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Answer {
        match body {
            Some(body) => {
                let mut with_type = vec![("content-type", "application/json")];
                with_type.extend_from_slice(headers);
                self.send(method, path, &with_type, Some(Body::from(body.to_string())))
                    .await
            }
            None => self.send(method, path, headers, None).await,
        }
    }

    /// `POST /streams` with a raw body declared as JSON.
    async fn post_raw(&self, body: &'static str) -> Answer {
        self.send(
            "POST",
            "/streams",
            &[("content-type", "application/json")],
            Some(Body::from(body)),
        )
        .await
    }

    async fn post_stream(&self, body: Value) -> (StatusCode, Value) {
        let answer = self.call("POST", "/streams", Some(&body)).await;
        (answer.status, answer.json())
    }

    async fn create_stream(&self, url: &str) -> Value {
        let (status, created) = self.post_stream(json!({ "url": url })).await;
        assert!(
            status.is_success(),
            "POST /streams {url}: {status} {created}"
        );
        created
    }

    async fn get_json(&self, path: &str) -> Value {
        let answer = self.call("GET", path, None).await;
        assert!(answer.status.is_success(), "GET {path}: {}", answer.status);
        answer.json()
    }
}

fn expect_error(answer: &Answer, status: StatusCode, code: &str) -> Value {
    assert_eq!(answer.status, status);
    assert!(answer.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body = answer.json();
    assert_eq!(body["code"], code, "{body}");
    assert!(!body["detail"].as_str().unwrap().is_empty());
    body
}

#[tokio::test]
async fn health_is_open_and_reports_counts() {
    let app = App::with(|c| c.api_token = Some("t0ken".into()));
    let health = app.get_json("/health").await;
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(health["streams"], 0);
    assert!(health["uptime_seconds"].is_u64());
}

#[tokio::test]
async fn create_is_idempotent_per_url_and_updates_settings() {
    let app = App::new();
    let (status, first) = app
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

    let (status, again) = app
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

    let detail = app.get_json(&format!("/streams/{id}")).await;
    assert_eq!(detail["stream"]["metadata"], json!({"channel": 7}));
    assert_eq!(detail["client_count"], 0);
    let names = detail["stream"]["header_names"].as_array().unwrap();
    assert!(names.contains(&json!("authorization")));
    assert!(
        !detail.to_string().contains("secret-value"),
        "header values never appear in responses"
    );

    let list = app.get_json("/streams").await;
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
    let app = App::new();
    for (path, expected) in [
        ("/channel/7", "hls"),
        ("/tv/8", "direct"),
        ("/sniff/9", "hls"),
        ("/movie.mkv", "direct"),
    ] {
        let created = app.create_stream(&origin.url(path)).await;
        assert_eq!(created["stream_type"], expected, "{path}");
    }
    let (_, explicit) = app
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
    let app = App::new();
    for (body, status, code) in [
        ("{not json", StatusCode::BAD_REQUEST, "malformed_json"),
        ("", StatusCode::BAD_REQUEST, "malformed_json"),
        ("{}", StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        (
            r#"{"url": 5}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
    ] {
        expect_error(&app.post_raw(body).await, status, code);
    }
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
        let answer = app.call("POST", "/streams", Some(&body)).await;
        expect_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, code);
    }
    assert_eq!(
        app.get_json("/streams").await["total"],
        0,
        "nothing was registered"
    );

    let unknown = "0123456789abcdef01234567";
    for (method, path, code) in [
        ("GET", format!("/streams/{unknown}"), "stream_not_found"),
        ("DELETE", format!("/streams/{unknown}"), "stream_not_found"),
        (
            "POST",
            format!("/streams/{unknown}/failover"),
            "stream_not_found",
        ),
        ("GET", "/clients/nobody".into(), "client_not_found"),
        (
            "GET",
            format!("/hls/{unknown}/playlist.m3u8"),
            "stream_not_found",
        ),
        ("GET", format!("/stream/{unknown}"), "stream_not_found"),
        ("GET", "/no/such/route".into(), "not_found"),
    ] {
        let answer = app.call(method, &path, None).await;
        expect_error(&answer, StatusCode::NOT_FOUND, code);
    }

    let created = app.create_stream("http://127.0.0.1:9/a.m3u8").await;
    let id = created["stream_id"].as_str().unwrap();
    let fo = app
        .call("POST", &format!("/streams/{id}/failover"), None)
        .await;
    expect_error(&fo, StatusCode::BAD_REQUEST, "no_failover_urls");
    let bad_client = app
        .call(
            "GET",
            &format!("/hls/{id}/playlist.m3u8?client_id=a/b"),
            None,
        )
        .await;
    expect_error(&bad_client, StatusCode::BAD_REQUEST, "invalid_client_id");
}

#[tokio::test]
async fn manual_failover_walks_the_list_and_wraps() {
    let app = App::new();
    let (_, created) = app
        .post_stream(json!({
            "url": "http://127.0.0.1:9/a.m3u8",
            "failover_urls": ["http://127.0.0.1:9/b.m3u8", "http://127.0.0.1:9/c.m3u8"]
        }))
        .await;
    let id = created["stream_id"].as_str().unwrap();
    let mut seen = vec![];
    for _ in 0..3 {
        let answer = app
            .call("POST", &format!("/streams/{id}/failover"), None)
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        let body = answer.json();
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
    let info = app.get_json(&format!("/streams/{id}")).await;
    assert_eq!(info["stream"]["failover_count"], 3);
    assert_eq!(info["stream"]["current_url"], "http://127.0.0.1:9/a.m3u8");
    let stats = app.get_json("/stats").await;
    assert_eq!(stats["proxy"]["total_failovers"], 3);
}

#[tokio::test]
async fn delete_removes_the_stream() {
    let app = App::new();
    let created = app.create_stream("http://127.0.0.1:9/a.m3u8").await;
    let id = created["stream_id"].as_str().unwrap();
    let answer = app.call("DELETE", &format!("/streams/{id}"), None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["stream_id"], id);
    let after = app.call("GET", &format!("/streams/{id}"), None).await;
    assert_eq!(after.status, StatusCode::NOT_FOUND);
    assert_eq!(app.get_json("/stats").await["proxy"]["total_streams"], 0);
}

/// How a caller presents the token.
#[derive(Clone, Copy, Debug)]
enum Presented {
    Header,
    Bearer,
    Query,
}

/// Calls `method path` with the token presented as `token` says.
async fn with_token(
    app: &App,
    method: &str,
    path: &str,
    token: Option<(Presented, &str)>,
    body: Option<&Value>,
) -> Answer {
    let path = match token {
        Some((Presented::Query, t)) => {
            let sep = if path.contains('?') { '&' } else { '?' };
            format!("{path}{sep}api_token={t}")
        }
        _ => path.to_owned(),
    };
    let bearer;
    let headers: &[(&str, &str)] = match token {
        Some((Presented::Header, t)) => &[("x-api-token", t)],
        Some((Presented::Bearer, t)) => {
            bearer = format!("Bearer {t}");
            &[("authorization", &bearer)]
        }
        _ => &[],
    };
    app.call_with(method, &path, headers, body).await
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
    let app = App::with(|c| c.api_token = Some("s3cret".into()));
    let stream_body = json!({"url": origin.url("/a.m3u8")});
    let hook_body = json!({"url": "http://127.0.0.1:9/hook", "events": ["failover"]});
    let unknown = "0123456789abcdef01234567";
    // Every management route, with the body it takes and the status its handler gives
    // once the token is accepted (unknown ids: the handler's own 404). `/events` streams
    // without end, so only its refusals are read whole here.
    let routes: [(&str, String, Option<&Value>, u16); 13] = [
        ("GET", "/streams".into(), None, 200),
        ("POST", "/streams".into(), Some(&stream_body), 201),
        ("GET", format!("/streams/{unknown}"), None, 404),
        ("DELETE", format!("/streams/{unknown}"), None, 404),
        ("POST", format!("/streams/{unknown}/failover"), None, 404),
        ("GET", "/stats".into(), None, 200),
        ("GET", "/clients".into(), None, 200),
        ("GET", "/clients/nobody".into(), None, 404),
        ("GET", "/metrics".into(), None, 200),
        ("GET", "/webhooks".into(), None, 200),
        ("POST", "/webhooks".into(), Some(&hook_body), 201),
        ("GET", "/webhooks/nohook".into(), None, 404),
        ("DELETE", "/webhooks/nohook".into(), None, 404),
    ];
    for (method, path, body, accepted) in &routes {
        let send = |token| with_token(&app, method, path, token, *body);
        expect_error(&send(None).await, StatusCode::UNAUTHORIZED, "missing_token");
        for how in [Presented::Header, Presented::Bearer, Presented::Query] {
            expect_error(
                &send(Some((how, "wrong"))).await,
                StatusCode::FORBIDDEN,
                "invalid_token",
            );
            let status = send(Some((how, "s3cret"))).await.status.as_u16();
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
    // The event feed: refused without the right token, opened with it.
    expect_error(
        &with_token(&app, "GET", "/events", None, None).await,
        StatusCode::UNAUTHORIZED,
        "missing_token",
    );
    for how in [Presented::Header, Presented::Bearer, Presented::Query] {
        expect_error(
            &with_token(&app, "GET", "/events", Some((how, "wrong")), None).await,
            StatusCode::FORBIDDEN,
            "invalid_token",
        );
        let path = match how {
            Presented::Query => "/events?api_token=s3cret",
            _ => "/events",
        };
        let mut req = Request::get(path);
        match how {
            Presented::Header => req = req.header("x-api-token", "s3cret"),
            Presented::Bearer => req = req.header("authorization", "Bearer s3cret"),
            Presented::Query => {}
        }
        let res = app
            .router
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "/events with the token as {how:?}"
        );
    }
    let no_scheme = app
        .call_with("GET", "/stats", &[("authorization", "s3cret")], None)
        .await;
    expect_error(&no_scheme, StatusCode::UNAUTHORIZED, "missing_token");

    // Health and playback: no token needed, and a wrong one changes nothing.
    let list = with_token(
        &app,
        "GET",
        "/streams",
        Some((Presented::Header, "s3cret")),
        None,
    )
    .await
    .json();
    let id = list["streams"][0]["stream_id"]
        .as_str()
        .unwrap()
        .to_string();
    let direct = with_token(
        &app,
        "POST",
        "/streams",
        Some((Presented::Bearer, "s3cret")),
        Some(&json!({"url": origin.url("/live.ts")})),
    )
    .await
    .json();
    let direct_id = direct["stream_id"].as_str().unwrap();
    for token in [
        None,
        Some((Presented::Header, "wrong")),
        Some((Presented::Query, "wrong")),
    ] {
        let app = &app;
        let get = |path: String| async move { with_token(app, "GET", &path, token, None).await };
        assert_eq!(get("/health".into()).await.status, StatusCode::OK);
        let playlist = get(format!("/hls/{id}/playlist.m3u8")).await;
        assert_eq!(
            playlist.status,
            StatusCode::OK,
            "playback never needs the token"
        );
        let text = String::from_utf8(playlist.body.to_vec()).unwrap();
        let segment = text.lines().find(|l| !l.starts_with('#')).unwrap();
        let seg = app.call("GET", &format!("/hls/{id}/{segment}"), None).await;
        assert_eq!(seg.status, StatusCode::OK);
        assert_eq!(seg.body.len(), 376);
        let live = get(format!("/stream/{direct_id}")).await;
        assert_eq!(live.status, StatusCode::OK);
        assert_eq!(live.body.len(), 188 * 3);
    }
}
