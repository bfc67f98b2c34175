//! m3u-editor as a client: its calls in its order, its callbacks (webhooks, the failover
//! resolver), its stream options, and the paths its reverse proxy uses.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::util::origin::{Fault, Origin};
use crate::util::{eventually, Proxy};

const TOKEN: &str = "editor-token";

/// A local receiver of POSTs: every JSON body, and the answers it gives in turn (the last
/// one again when they run out).
#[derive(Clone, Default)]
struct Receiver {
    seen: Arc<Mutex<Vec<Value>>>,
    answers: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    /// Listens on 127.0.0.1:0; returns the URL of `/hook`.
    async fn start(answers: Vec<Value>) -> (Receiver, String) {
        let receiver = Receiver {
            seen: Arc::default(),
            answers: Arc::new(Mutex::new(answers)),
        };
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, url)
    }

    fn seen(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }

    /// The first body with this `event_type` and stream, once it arrived.
    fn event(&self, event_type: &str, stream_id: &str) -> Option<Value> {
        self.seen()
            .into_iter()
            .find(|b| b["event_type"] == event_type && b["stream_id"] == stream_id)
    }
}

async fn receive(State(r): State<Receiver>, Json(body): Json<Value>) -> Json<Value> {
    r.seen.lock().unwrap().push(body);
    let mut answers = r.answers.lock().unwrap();
    let answer = if answers.len() > 1 {
        answers.remove(0)
    } else {
        answers.first().cloned().unwrap_or(json!({"status": "ok"}))
    };
    Json(answer)
}

/// The editor's HTTP client: JSON accepted, the token in `X-API-Token`.
struct Editor<'a> {
    proxy: &'a Proxy,
}

impl Editor<'_> {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.proxy
            .http
            .request(method, self.proxy.url(path))
            .header(ACCEPT, "application/json")
            .header("X-API-Token", TOKEN)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.request(method, path);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    /// `POST /streams` as `createStream` does; returns the answer, which must be 2xx.
    async fn create(&self, body: Value) -> Value {
        let (status, created) = self
            .call(reqwest::Method::POST, "/streams", Some(body))
            .await;
        assert!(status.is_success(), "{status} {created}");
        created
    }

    async fn count(&self, field: &str, values: &str) -> Value {
        self.get(&format!(
            "/streams/counts-by-metadata?field={field}&values={values}&active_only=1"
        ))
        .await["counts"]
            .clone()
    }
}

/// The body `createStream` posts for a channel, with every field it may send.
fn editor_body(url: &str, channel: u64) -> Value {
    json!({
        "url": url,
        "metadata": {
            "id": channel,
            "channel_id": channel.to_string(),
            "type": "channel",
            "playlist_uuid": "pl-uuid-1",
            "original_channel_id": channel,
            "original_playlist_uuid": "pl-uuid-1",
            "is_failover": false,
            "strict_live_ts": false,
            "provider_profile_id": 3,
            "playlist_auth_id": "auth-7",
        },
        "enable_silence_detection": true,
        "silence_threshold_db": -50.0,
        "silence_duration": 3.0,
        "silence_check_interval": 10.0,
        "silence_failover_threshold": 3,
        "silence_monitoring_grace_period": 15.0,
        "failover_urls": [],
        "user_agent": "VLC/3.0.20 LibVLC/3.0.20",
        "headers": {"Referer": "http://editor.local/"},
        "some_future_field": {"nested": [1, 2]},
    })
}

#[tokio::test]
async fn the_editors_calls_for_one_viewers_life() {
    let origin = Origin::start().await;
    origin.live_ts("/live/u/p/12345.ts", 200_000);
    origin.live_ts("/live/u/p/12346.ts", 200_000);
    origin.live_ts("/live/u/p/backup.ts", 200_000);
    origin.put("/up", "ok", "text/plain");
    let (hooks, hook_url) = Receiver::start(vec![json!({"status": "ok"})]).await;
    let proxy = Proxy::start_with(|c| c.api_token = Some(TOKEN.into())).await;
    let editor = Editor { proxy: &proxy };

    // The compose health check: a token in the query, right or wrong, is never refused.
    for token in [TOKEN, "wrong"] {
        let started = Instant::now();
        let res = proxy.get(&format!("/health?api_token={token}")).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(started.elapsed() < Duration::from_secs(2));
        let health: Value = res.json().await.unwrap();
        assert_eq!(health["status"], "healthy");
        assert_eq!(health["stats"]["active_streams"], 0, "{health}");
    }
    let (status, _) = editor
        .call(reqwest::Method::GET, "/m3u-proxy/health", None)
        .await;
    assert_eq!(status, StatusCode::OK, "the ROOT_PATH form answers too");
    let no_token = proxy.get("/streams").await;
    assert_eq!(no_token.status(), StatusCode::UNAUTHORIZED);

    // Webhook registration, as at every start (--force: delete by JSON body, then post),
    // then the five-minute run: one webhook, never a duplicate.
    let registration = json!({
        "url": hook_url,
        "events": ["client_connected", "client_disconnected", "stream_started", "stream_stopped"],
        "timeout": 5,
        "retry_attempts": 2,
    });
    for force in [true, true, false] {
        let listed = editor.get("/webhooks").await;
        let known = listed["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["url"] == hook_url.as_str());
        if force && known {
            let (status, _) = editor
                .call(
                    reqwest::Method::DELETE,
                    "/webhooks",
                    Some(json!({"webhook_url": hook_url})),
                )
                .await;
            assert_eq!(status, StatusCode::OK);
        }
        let (status, body) = editor
            .call(
                reqwest::Method::POST,
                "/webhooks",
                Some(registration.clone()),
            )
            .await;
        assert!(status.is_success(), "{status} {body}");
    }
    let listed = editor.get("/webhooks").await;
    assert_eq!(listed["webhooks"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["webhooks"][0]["url"], hook_url.as_str());

    // createStream with the editor's full body.
    let created = editor
        .create(editor_body(&origin.url("/live/u/p/12345.ts"), 42))
        .await;
    let id = created["stream_id"].as_str().unwrap().to_string();
    assert_eq!(created["primary_url"], origin.url("/live/u/p/12345.ts"));
    assert!(created["message"].is_string());

    // The player, through the editor's nginx (prefix kept here), with the Xtream user.
    let mut player = proxy
        .get(&format!("/m3u-proxy/stream/{id}?username=alice"))
        .await;
    assert_eq!(player.status(), StatusCode::OK);
    assert!(player.chunk().await.unwrap().is_some());

    let found = editor
        .get("/streams/by-metadata?field=playlist_uuid&value=pl-uuid-1&active_only=1")
        .await;
    assert_eq!(found["total_matching"], 1, "{found}");
    assert_eq!(found["matching_streams"][0]["stream_id"], id.as_str());
    assert_eq!(found["matching_streams"][0]["client_count"], 1);
    assert_eq!(found["matching_streams"][0]["metadata"]["id"], 42);
    let by_number = editor
        .get("/streams/by-metadata?field=original_channel_id&value=42&active_only=true")
        .await;
    assert_eq!(by_number["total_matching"], 1, "123 matches \"123\"");
    assert_eq!(
        editor.count("provider_profile_id", "3,4").await,
        json!({"3": 1, "4": 0})
    );
    let clients = editor.get("/clients").await;
    assert_eq!(clients["total_clients"], 1);
    assert_eq!(clients["clients"][0]["username"], "alice");
    assert_eq!(clients["clients"][0]["is_connected"], true);
    let streams = editor.get("/streams").await;
    for key in [
        "has_failover",
        "current_failover_index",
        "failover_attempts",
        "created_at",
    ] {
        assert!(streams["streams"][0].get(key).is_some(), "{key}: {streams}");
    }
    let started = eventually(Duration::from_secs(3), "stream_started", || async {
        hooks.event("stream_started", &id)
    })
    .await;
    assert_eq!(started["data"]["metadata"]["playlist_uuid"], "pl-uuid-1");

    // The viewer hangs up: the count drops within 2 s, and stream_stopped frees the slot.
    let hung_up = Instant::now();
    drop(player);
    eventually(Duration::from_secs(2), "the count to drop", || async {
        (editor.count("provider_profile_id", "3").await == json!({"3": 0})).then_some(())
    })
    .await;
    let stopped = eventually(Duration::from_secs(3), "stream_stopped", || async {
        hooks.event("stream_stopped", &id)
    })
    .await;
    assert!(hung_up.elapsed() < Duration::from_secs(3));
    assert_eq!(stopped["data"]["reason"], "last_client_disconnected");
    assert_eq!(stopped["data"]["metadata"]["provider_profile_id"], 3);
    assert!(stopped["event_id"].is_string() && stopped["timestamp"].is_string());
    let connected = hooks
        .event("client_connected", &id)
        .expect("client_connected");
    assert_eq!(connected["data"]["username"], "alice");
    assert_eq!(connected["data"]["metadata"]["id"], 42);

    // At the playlist's limit: stop the oldest stream, but not the channel being opened.
    let other = editor
        .create(editor_body(&origin.url("/live/u/p/12346.ts"), 43))
        .await;
    let other_id = other["stream_id"].as_str().unwrap().to_string();
    let path =
        "/streams/oldest-by-metadata?field=playlist_uuid&value=pl-uuid-1&exclude_channel_id=42";
    let (status, oldest) = editor.call(reqwest::Method::DELETE, path, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(oldest["deleted_count"], 1, "{oldest}");
    assert_eq!(oldest["deleted_stream"], other_id.as_str());
    let (_, none_left) = editor.call(reqwest::Method::DELETE, path, None).await;
    assert_eq!(none_left["deleted_count"], 0, "{none_left}");
    let oldest_stopped = eventually(
        Duration::from_secs(3),
        "stream_stopped of the oldest",
        || async { hooks.event("stream_stopped", &other_id) },
    )
    .await;
    assert_eq!(oldest_stopped["data"]["reason"], "oldest_stream_deletion");

    // The in-app player's stop: its tab leaves; the stream stays while another tab watches.
    let mut tab1 = proxy
        .get(&format!("/m3u-proxy/stream/{id}?client_id=tab1"))
        .await;
    let mut tab2 = proxy
        .get(&format!("/m3u-proxy/stream/{id}?client_id=tab2"))
        .await;
    assert!(tab1.chunk().await.unwrap().is_some());
    assert!(tab2.chunk().await.unwrap().is_some());
    let stop = |cid: &str| {
        format!("/streams/by-metadata?field=channel_id&value=42&force=false&client_id={cid}")
    };
    let (_, kept) = editor
        .call(reqwest::Method::DELETE, &stop("tab1"), None)
        .await;
    assert_eq!(kept["deleted_count"], 0, "{kept}");
    assert_eq!(kept["skipped_streams"][0]["reason"], "has_active_clients");
    let tab1_end = tokio::time::timeout(Duration::from_secs(3), async {
        while let Ok(Some(_)) = tab1.chunk().await {}
    })
    .await;
    assert!(tab1_end.is_ok(), "tab1's connection was ended");
    let (_, gone) = editor
        .call(reqwest::Method::DELETE, &stop("tab2"), None)
        .await;
    assert_eq!(gone["deleted_count"], 1, "{gone}");
    assert_eq!(gone["deleted_streams"][0], id.as_str());
    let tab2_end = tokio::time::timeout(Duration::from_secs(3), async {
        while let Ok(Some(_)) = tab2.chunk().await {}
    })
    .await;
    assert!(tab2_end.is_ok());

    // triggerFailover posts `[]`.
    let mut with_backup = editor_body(&origin.url("/live/u/p/12345.ts"), 42);
    with_backup["failover_urls"] = json!([origin.url("/live/u/p/backup.ts")]);
    let created = editor.create(with_backup).await;
    let id = created["stream_id"].as_str().unwrap().to_string();
    let (status, switched) = editor
        .call(
            reqwest::Method::POST,
            &format!("/streams/{id}/failover"),
            Some(json!([])),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{switched}");
    let streams = editor.get("/streams").await;
    assert_eq!(
        streams["streams"][0]["current_failover_index"], 0,
        "{streams}"
    );

    // Preferences: /info, the resolver test, and a transcode that is refused clearly.
    let info = editor.get("/info").await;
    assert_eq!(info["hardware_acceleration"]["enabled"], false);
    for key in ["type", "device"] {
        assert!(info["hardware_acceleration"].get(key).is_some(), "{info}");
    }
    assert_eq!(info["redis"]["pooling_enabled"], false);
    assert!(info["version"].is_string());
    assert!(!info.to_string().contains(TOKEN), "no secret in /info");
    let (status, tested) = editor
        .call(
            reqwest::Method::POST,
            "/test-connection",
            Some(json!({"url": origin.url("/up")})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tested["success"], true, "{tested}");
    assert_eq!(tested["status_code"], 200);
    assert_eq!(tested["url_tested"], origin.url("/up"));
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (status, failed) = editor
        .call(
            reqwest::Method::POST,
            "/test-connection",
            Some(json!({"url": format!("http://{dead}/up")})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(failed["success"], false, "{failed}");
    let (status, refused) = editor
        .call(
            reqwest::Method::POST,
            "/transcode",
            Some(editor_body(&origin.url("/live/u/p/12345.ts"), 42)),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
    assert_eq!(refused["code"], "transcoding_unsupported");
    let bodies = hooks.seen();
    assert!(
        bodies.iter().all(|b| b["stream_id"].is_string()),
        "{bodies:?}"
    );
}

#[tokio::test]
async fn a_dead_primary_asks_the_resolver_and_null_stops_the_walk() {
    let origin = Origin::start().await;
    origin.put("/live/primary.ts", vec![0x47u8; 188 * 10], "video/mp2t");
    origin.put("/live/backup.ts", vec![0x47u8; 188 * 20], "video/mp2t");
    origin.fault("/live/primary.ts", Fault::Status(503));
    let backup = origin.url("/live/backup.ts");
    let (resolver, resolver_url) =
        Receiver::start(vec![json!({"next_url": backup}), json!({"next_url": null})]).await;
    let proxy = Proxy::start_with(|c| c.failover.backoff = Duration::from_millis(10)).await;
    let mut body = editor_body(&origin.url("/live/primary.ts"), 42);
    body["failover_resolver_url"] = json!(resolver_url);
    let (status, created) = proxy.post_stream(body).await;
    assert!(status.is_success(), "{created}");
    let id = created["stream_id"].as_str().unwrap().to_string();

    let res = proxy.get(&format!("/stream/{id}")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.bytes().await.unwrap().len(),
        188 * 20,
        "the backup's bytes"
    );
    let asked = resolver.seen();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0]["current_url"], origin.url("/live/primary.ts"));
    assert_eq!(asked[0]["current_failover_index"], -1);
    assert_eq!(asked[0]["status_code"], 503);
    assert_eq!(asked[0]["metadata"]["id"], 42);
    assert!(asked[0]["reason"].as_str().unwrap().contains("503"));
    let stream = proxy.get_json(&format!("/streams/{id}")).await;
    assert_eq!(stream["stream"]["current_failover_index"], 0, "{stream}");
    assert_eq!(stream["stream"]["current_url"], backup.as_str());
    assert_eq!(stream["stream"]["has_failover"], true);

    // The backup dies too; the resolver has nothing more: the player gets the failure.
    origin.fault("/live/backup.ts", Fault::Status(500));
    let started = Instant::now();
    let res = proxy.get(&format!("/stream/{id}")).await;
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert!(started.elapsed() < Duration::from_secs(5));
    let asked = resolver.seen();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert_eq!(asked[1]["current_url"], backup.as_str());
    assert_eq!(asked[1]["current_failover_index"], 0);
    assert_eq!(asked[1]["status_code"], 500);
}

#[tokio::test]
async fn a_resolver_that_fails_counts_as_a_failure_of_that_attempt() {
    let origin = Origin::start().await;
    origin.put("/live/primary.ts", vec![0x47u8; 188], "video/mp2t");
    origin.fault("/live/primary.ts", Fault::Status(503));
    let proxy = Proxy::start_with(|c| c.failover.backoff = Duration::from_millis(10)).await;
    // A resolver that refuses connections.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut body = editor_body(&origin.url("/live/primary.ts"), 42);
    body["failover_resolver_url"] = json!(format!("http://{dead}/resolve"));
    let (_, created) = proxy.post_stream(body).await;
    let id = created["stream_id"].as_str().unwrap();
    let started = Instant::now();
    let res = proxy.get(&format!("/stream/{id}")).await;
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn every_route_answers_under_the_root_path_and_redirects_hold_behind_either_proxy() {
    let origin = Origin::start().await;
    origin.put(
        "/tv/index.m3u8",
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\ns0.ts\n#EXT-X-ENDLIST\n",
        "application/vnd.apple.mpegurl",
    );
    origin.put("/tv/s0.ts", vec![0x47u8; 376], "video/mp2t");
    let proxy = Proxy::start().await;
    let (status, created) = proxy
        .post_stream(json!({"url": origin.url("/tv/index.m3u8"), "stream_type": "hls"}))
        .await;
    assert!(status.is_success());
    let id = created["stream_id"].as_str().unwrap();
    // One reverse proxy keeps the prefix, the other strips it: both paths are served, and
    // the relative redirect resolves to the same kind of path it came from.
    for prefix in ["/m3u-proxy", ""] {
        let asked = format!("{prefix}/stream/{id}?username=bob");
        let res = proxy.get(&asked).await;
        assert_eq!(res.status(), StatusCode::TEMPORARY_REDIRECT);
        let location = res.headers()["location"].to_str().unwrap().to_string();
        let base = url::Url::parse(&proxy.url(&asked)).unwrap();
        let target = base.join(&location).unwrap();
        assert_eq!(
            target.path(),
            format!("{prefix}/hls/{id}/playlist.m3u8"),
            "{location}"
        );
        assert_eq!(target.query(), Some("username=bob"));
        let playlist = proxy.http.get(target.clone()).send().await.unwrap();
        assert_eq!(playlist.status(), StatusCode::OK);
        let text = playlist.text().await.unwrap();
        let segment = text.lines().find(|l| !l.starts_with('#')).unwrap();
        let segment_url = target.join(segment).unwrap();
        assert!(segment_url
            .path()
            .starts_with(&format!("{prefix}/hls/{id}/")));
        let bytes = proxy.http.get(segment_url).send().await.unwrap();
        assert_eq!(bytes.status(), StatusCode::OK);
        assert_eq!(bytes.bytes().await.unwrap().len(), 376);
    }
    let clients = proxy.get_json("/m3u-proxy/clients").await;
    assert_eq!(clients["clients"][0]["username"], "bob", "{clients}");
    // Only the prefix itself is stripped, not a look-alike.
    assert_eq!(
        proxy.get("/m3u-proxyx/health").await.status(),
        StatusCode::NOT_FOUND
    );

    let bare = Proxy::start_with(|c| c.root_path = String::new()).await;
    assert_eq!(bare.get("/health").await.status(), StatusCode::OK);
    assert_eq!(
        bare.get("/m3u-proxy/health").await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn strict_live_ts_ignores_ranges_and_answers_head_at_once() {
    let origin = Origin::start().await;
    origin.live_ts("/live/1.ts", 200_000);
    let proxy = Proxy::start().await;
    let (_, created) = proxy
        .post_stream(json!({"url": origin.url("/live/1.ts"), "strict_live_ts": true}))
        .await;
    let id = created["stream_id"].as_str().unwrap().to_string();
    // HEAD never reaches the origin, even a hung one.
    origin.fault("/live/1.ts", Fault::Hang);
    let started = Instant::now();
    let head = proxy
        .http
        .head(proxy.url(&format!("/stream/{id}")))
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-type"], "video/mp2t");
    assert_eq!(head.headers()["accept-ranges"], "none");
    assert!(head.headers().get("content-length").is_none());
    assert_eq!(origin.hits("/live/1.ts"), 0);
    origin.clear_fault("/live/1.ts");
    let mut res = proxy
        .http
        .get(proxy.url(&format!("/stream/{id}")))
        .header("Range", "bytes=5000-")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "a live channel has no ranges");
    assert_eq!(res.headers()["accept-ranges"], "none");
    assert!(res.chunk().await.unwrap().is_some());
    let seen = origin.last_request("/live/1.ts").unwrap();
    assert!(seen.headers.get("range").is_none(), "the Range stayed here");
}

#[tokio::test]
async fn a_sticky_session_refreshes_where_the_origin_redirected_until_it_fails() {
    let origin = Origin::start().await;
    let playlist = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\ns0.ts\n";
    origin.put("/edge/live.m3u8", playlist, "application/vnd.apple.mpegurl");
    origin.redirect("/lb/live.m3u8", &origin.url("/edge/live.m3u8"), 302);
    let proxy = Proxy::start_with(|c| c.cache.playlist_ttl = Duration::ZERO).await;
    let (_, created) = proxy
        .post_stream(json!({
            "url": origin.url("/lb/live.m3u8"),
            "use_sticky_session": true,
        }))
        .await;
    let id = created["stream_id"].as_str().unwrap().to_string();
    let path = format!("/hls/{id}/playlist.m3u8");
    for _ in 0..3 {
        assert_eq!(proxy.get(&path).await.status(), StatusCode::OK);
    }
    assert_eq!(
        origin.hits("/lb/live.m3u8"),
        1,
        "refreshes stick to the edge"
    );
    assert_eq!(origin.hits("/edge/live.m3u8"), 3);
    origin.fault(
        "/edge/live.m3u8",
        Fault::Times(1, Box::new(Fault::Status(404))),
    );
    assert_eq!(proxy.get(&path).await.status(), StatusCode::OK);
    assert_eq!(
        origin.hits("/lb/live.m3u8"),
        2,
        "back to the registered URL"
    );
}

#[tokio::test]
async fn post_bodies_the_editor_sends_and_usernames_in_every_form() {
    let origin = Origin::start().await;
    origin.put("/vod/film.mp4", vec![1u8; 1000], "video/mp4");
    let proxy = Proxy::start().await;
    // PHP sends an empty map as `[]`, and null for unset lists.
    let (status, created) = proxy
        .post_stream(json!({
            "url": origin.url("/vod/film.mp4"),
            "headers": [],
            "failover_urls": null,
            "metadata": {"id": 7, "is_failover": true, "ratio": 1.5},
        }))
        .await;
    assert!(status.is_success(), "{created}");
    let id = created["stream_id"].as_str().unwrap().to_string();
    let found = proxy
        .get_json("/streams/by-metadata?field=is_failover&value=True&active_only=0")
        .await;
    assert_eq!(
        found["total_matching"], 1,
        "booleans match whatever their case"
    );
    let found = proxy
        .get_json("/streams/by-metadata?field=ratio&value=1.5&active_only=false")
        .await;
    assert_eq!(found["total_matching"], 1);
    let bad = proxy
        .get("/streams/by-metadata?field=id&value=7&active_only=maybe")
        .await;
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let missing = proxy.get("/streams/counts-by-metadata?values=1").await;
    assert_eq!(missing.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        missing.json::<Value>().await.unwrap()["code"],
        "missing_parameter"
    );

    for (query, header, name) in [
        ("?user=u1&client_id=a", None, "u1"),
        ("?u=u2&client_id=b", None, "u2"),
        ("?client_id=c", Some("u3"), "u3"),
    ] {
        let mut req = proxy.http.get(proxy.url(&format!("/stream/{id}{query}")));
        if let Some(h) = header {
            req = req.header("X-Username", h);
        }
        assert_eq!(req.send().await.unwrap().bytes().await.unwrap().len(), 1000);
        let cid = &query[query.find("client_id=").unwrap() + 10..];
        let client = proxy.get_json(&format!("/clients/{cid}")).await;
        assert_eq!(client["username"], name, "{client}");
        assert!(client["created_at"].is_string() && client["last_access"].is_string());
    }
    let delete = |path: String| proxy.http.delete(proxy.url(&path)).send();
    let ended = delete(format!("/hls/{id}/clients/a")).await.unwrap();
    assert_eq!(ended.status(), StatusCode::OK);
    let again = delete(format!("/hls/{id}/clients/a")).await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
    let unknown = delete("/webhooks?webhook_url=http://nowhere.invalid/x".into())
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let posted = proxy
        .http
        .post(proxy.url(&format!("/streams/{id}/failover")))
        .header(CONTENT_TYPE, "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        posted.status(),
        StatusCode::BAD_REQUEST,
        "a body of {{}} is fine; the stream has no failover URLs"
    );
    assert_eq!(
        posted.json::<Value>().await.unwrap()["code"],
        "no_failover_urls"
    );
}

#[tokio::test]
async fn host_and_port_are_aliases_and_the_prefixed_names_win() {
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (alias, wins) = (free(), free());
    let spawn = |envs: Vec<(&str, String)>| {
        std::process::Command::new(env!("CARGO_BIN_EXE_m3u-proxy"))
            .env_remove("M3U_PROXY_HOST")
            .env_remove("M3U_PROXY_PORT")
            .env("M3U_PROXY_DATA_DIR", crate::binary::scratch_data_dir())
            .envs(envs)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut a = spawn(vec![
        ("HOST", "127.0.0.1".into()),
        ("PORT", alias.to_string()),
    ]);
    let mut b = spawn(vec![
        ("HOST", "0.0.0.0".into()),
        ("PORT", "1".into()),
        ("M3U_PROXY_HOST", "127.0.0.1".into()),
        ("M3U_PROXY_PORT", wins.to_string()),
    ]);
    let http = crate::util::http_client();
    for port in [alias, wins] {
        let url = format!("http://127.0.0.1:{port}/m3u-proxy/health?api_token=x");
        eventually(Duration::from_secs(10), "the binary to answer", || async {
            let res = http.get(&url).send().await.ok()?;
            res.status().is_success().then_some(())
        })
        .await;
    }
    let _ = a.kill();
    let _ = b.kill();
    let _ = a.wait();
    let _ = b.wait();
}
