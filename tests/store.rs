//! Durable state (issue 12): what survives a SIGKILL and a SIGTERM of the real binary, a
//! reference issued before a restart, the start-up refusals (corrupt file, newer schema,
//! unwritable directory), and a store that fails at runtime (injected write errors, as on a
//! full disk) and recovers.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use m3u_proxy::config::{Config, StoreBackend};
use m3u_proxy::server::{build_state, serve_state};

use crate::binary::{start, stop_with};
use crate::util::origin::Origin;
use crate::util::temp_dir::TempDir;
use crate::util::{eventually, http_client, metric_sample};

const STREAMS: usize = 1000;
const MPEGURL: &str = "application/vnd.apple.mpegurl";

/// A media playlist of three 2 KB segments under `/ch/{i}/`.
fn serve_channel(origin: &Origin, i: usize) {
    let mut playlist = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:4\n");
    for n in 0..3 {
        playlist.push_str(&format!("#EXTINF:4.0,\nseg{n}.ts\n"));
        origin.put(
            &format!("/ch/{i}/seg{n}.ts"),
            vec![(i + n) as u8; 2048],
            "video/mp2t",
        );
    }
    playlist.push_str("#EXT-X-ENDLIST\n");
    origin.put(&format!("/ch/{i}/index.m3u8"), playlist, MPEGURL);
}

/// The rewritten playlist's references, as absolute URLs.
async fn references(http: &reqwest::Client, base: &str, id: &str) -> Vec<String> {
    let res = http
        .get(format!("{base}/hls/{id}/playlist.m3u8"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l {
            l if l.starts_with("http") => l.to_string(),
            l if l.starts_with('/') => format!("{base}{l}"),
            l => format!("{base}/hls/{id}/{l}"),
        })
        .collect()
}

/// Plays every segment of the stream once; returns the bytes received.
async fn play(http: &reqwest::Client, base: &str, id: &str) -> usize {
    let mut bytes = 0;
    for url in references(http, base, id).await {
        let res = http.get(&url).send().await.unwrap();
        assert_eq!(res.status(), 200, "{url}");
        bytes += res.bytes().await.unwrap().len();
    }
    bytes
}

async fn get_json(http: &reqwest::Client, url: String) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

/// What must come back, per stream: settings, position and counters (not the figures of
/// the running process such as rates, activity or last access).
async fn durable_state(http: &reqwest::Client, base: &str) -> (BTreeMap<String, Value>, Value) {
    let list = get_json(http, format!("{base}/streams")).await;
    let mut streams = BTreeMap::new();
    for s in list["streams"].as_array().unwrap() {
        let keep = [
            "stream_type",
            "original_url",
            "current_url",
            "failover_urls",
            "failover_index",
            "failover_count",
            "user_agent",
            "header_names",
            "metadata",
            "total_bytes_served",
            "total_segments_served",
            "error_count",
            "created_at",
        ];
        let picked: serde_json::Map<String, Value> = keep
            .iter()
            .map(|k| (k.to_string(), s[*k].clone()))
            .collect();
        streams.insert(s["stream_id"].as_str().unwrap().to_string(), picked.into());
    }
    let stats = get_json(http, format!("{base}/stats")).await;
    let p = &stats["proxy"];
    let totals = json!({
        "bytes": p["total_bytes_served"],
        "segments": p["total_segments_served"],
        "errors": p["total_errors"],
        "failovers": p["total_failovers"],
    });
    (streams, totals)
}

/// The webhooks without their delivery figures.
async fn webhooks(http: &reqwest::Client, base: &str) -> Vec<Value> {
    let list = get_json(http, format!("{base}/webhooks")).await;
    list["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            json!({
                "id": w["id"], "url": w["url"], "events": w["events"],
                "stream_id": w["stream_id"], "timeout_secs": w["timeout_secs"],
                "max_retries": w["max_retries"], "created_at": w["created_at"],
            })
        })
        .collect()
}

/// Waits until `/health` reports a store commit that began after `since`.
async fn flushed_after(http: &reqwest::Client, base: &str, since: Instant) {
    eventually(Duration::from_secs(10), "a counter flush", || {
        let health = http.get(format!("{base}/health")).send();
        async move {
            let health: Value = health.await.ok()?.json().await.ok()?;
            let age = health["store"]["last_flush_age_ms"].as_u64()?;
            // A margin for the commit's own duration: the flush read the counters after
            // `since`.
            (age + 100 < since.elapsed().as_millis() as u64).then_some(())
        }
    })
    .await;
}

async fn kill(child: &mut std::process::Child, signal: &str) -> std::process::ExitStatus {
    stop_with(child, signal).await.0
}

/// The binary on the sqlite store in `dir`, flushing every 0.2 s.
async fn launch_on(dir: &str) -> (std::process::Child, String) {
    let dir = dir.to_string();
    start(move |port| {
        let envs = vec![
            ("M3U_PROXY_HOST", "127.0.0.1".into()),
            ("M3U_PROXY_PORT", port.to_string()),
            ("M3U_PROXY_DATA_DIR", dir.clone()),
            ("STATE_FLUSH_INTERVAL", "0.2".into()),
            ("LOG_LEVEL", "warn".into()),
        ];
        (envs, vec![])
    })
    .await
}

#[tokio::test]
async fn state_survives_sigkill_and_sigterm_of_the_binary() {
    let origin = Origin::start().await;
    for i in 0..4 {
        serve_channel(&origin, i);
    }
    let data = TempDir::new("store-restart");
    let dir = data.path().display().to_string();
    let launch = || launch_on(&dir);
    let http = http_client();
    let (mut child, base) = launch().await;

    let started = Instant::now();
    let ids: Vec<String> = futures_util::stream::iter(0..STREAMS)
        .map(|i| {
            let (http, base) = (http.clone(), base.clone());
            let body = json!({
                "url": origin.url(&format!("/ch/{i}/index.m3u8")),
                "failover_urls": [origin.url(&format!("/ch/{}/index.m3u8", i + 1)), origin.url(&format!("/backup/{i}.m3u8"))],
                "headers": {"Authorization": format!("Bearer tok-{i}"), "X-Seq": i.to_string()},
                "user_agent": format!("agent/{i}"),
                "metadata": {"channel": i, "name": format!("Channel {i}")},
            });
            async move {
                let res = http.post(format!("{base}/streams")).json(&body).send().await.unwrap();
                assert_eq!(res.status(), 201);
                let created: Value = res.json().await.unwrap();
                created["stream_id"].as_str().unwrap().to_string()
            }
        })
        .buffered(16)
        .collect()
        .await;
    eprintln!("{STREAMS} streams registered in {:?}", started.elapsed());
    for (url, events, stream) in [
        (
            "http://127.0.0.1:9/hook-a",
            json!(["failover"]),
            Value::Null,
        ),
        (
            "http://127.0.0.1:9/hook-b",
            json!(["stream_created", "stream_deleted"]),
            json!(ids[1]),
        ),
    ] {
        let res = http
            .post(format!("{base}/webhooks"))
            .json(&json!({"url": url, "events": events, "stream_id": stream, "timeout_secs": 3, "max_retries": 0}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
    }
    for id in &ids[..3] {
        assert_eq!(play(&http, &base, id).await, 3 * 2048);
    }
    let switched = http
        .post(format!("{base}/streams/{}/failover", ids[2]))
        .send()
        .await
        .unwrap();
    assert_eq!(switched.status(), 200);
    // A reference issued now, to be played after the restarts.
    let reference = references(&http, &base, &ids[0]).await[0].clone();
    let reference_path = reference.strip_prefix(&base).unwrap().to_string();

    let before_read = Instant::now();
    let (streams, totals) = durable_state(&http, &base).await;
    let hooks = webhooks(&http, &base).await;
    assert_eq!(streams.len(), STREAMS);
    assert_eq!(hooks.len(), 2);
    assert_eq!(streams[&ids[2]]["failover_index"], 1);
    assert!(
        totals["bytes"].as_u64().unwrap() > 3 * 3 * 2048,
        "segments and playlists"
    );
    flushed_after(&http, &base, before_read).await;
    let status = kill(&mut child, "-KILL").await;
    assert!(!status.success(), "killed: {status}");

    let (mut child, base) = launch().await;
    let (after_streams, after_totals) = durable_state(&http, &base).await;
    assert_eq!(after_streams.len(), STREAMS);
    assert!(
        after_streams == streams,
        "every stream, setting, position and counter is back after SIGKILL"
    );
    assert_eq!(after_totals, totals, "proxy totals after SIGKILL");
    assert_eq!(
        webhooks(&http, &base).await,
        hooks,
        "webhooks after SIGKILL"
    );
    let res = http
        .get(format!("{base}{reference_path}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        200,
        "a reference issued before the restart still plays"
    );
    assert_eq!(res.bytes().await.unwrap().len(), 2048);
    let seen = origin.last_request("/ch/0/seg0.ts").unwrap();
    assert_eq!(
        seen.headers["authorization"], "Bearer tok-0",
        "header values are back"
    );
    assert_eq!(seen.headers["user-agent"], "agent/0");

    // More traffic, then SIGTERM at once: the last flush at shutdown makes it exact.
    assert_eq!(play(&http, &base, &ids[3]).await, 3 * 2048);
    let before = after_totals["bytes"].as_u64().unwrap();
    let (streams, totals) = durable_state(&http, &base).await;
    assert!(totals["bytes"].as_u64().unwrap() > before + 3 * 2048);
    let status = kill(&mut child, "-TERM").await;
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    let (mut child, base) = launch().await;
    let (after_streams, after_totals) = durable_state(&http, &base).await;
    assert!(
        after_streams == streams,
        "exact per-stream counters after SIGTERM"
    );
    assert_eq!(after_totals, totals, "exact totals after SIGTERM");
    let res = http
        .get(format!("{base}{reference_path}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for file in ["m3u-proxy.db", "secret"] {
            let mode = std::fs::metadata(data.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
    }
    let health = get_json(&http, format!("{base}/health")).await;
    assert_eq!(health["store"]["backend"], "sqlite");
    assert_eq!(health["store"]["ok"], true);
    assert!(health["store"]["path"]
        .as_str()
        .unwrap()
        .ends_with("m3u-proxy.db"));
    kill(&mut child, "-TERM").await;
}

/// Runs the binary on `dir` and expects it to refuse to start: non-zero exit, one
/// `error: ...` line on stderr that says `says`.
fn refuses_to_start(dir: &std::path::Path, says: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_m3u-proxy"))
        .args(["--host", "127.0.0.1", "--port", "0"])
        .env("M3U_PROXY_DATA_DIR", dir)
        .env("LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_ne!(out.status.code(), None, "an exit, not a crash: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(says),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_corrupt_database_stops_the_start_with_one_line() {
    let data = TempDir::new("store-corrupt");
    let db = data.path().join("m3u-proxy.db");
    std::fs::write(&db, vec![0x5a; 8192]).unwrap();
    refuses_to_start(data.path(), "is not a valid database");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        vec![0x5a; 8192],
        "never reset silently"
    );
}

#[test]
fn a_database_from_a_newer_version_stops_the_start() {
    let data = TempDir::new("store-newer");
    let db = data.path().join("m3u-proxy.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    refuses_to_start(
        data.path(),
        "has schema version 99, newer than this m3u-proxy supports (1)",
    );
}

#[test]
fn an_unwritable_data_directory_stops_the_start() {
    let data = TempDir::new("store-unwritable");
    let file = data.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    refuses_to_start(&file.join("data"), "cannot use data directory");
}

/// An in-process proxy on a sqlite store in `dir`, with a handle on its state.
struct Running {
    base: String,
    state: m3u_proxy::api::AppState,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn run_in(dir: &std::path::Path) -> Running {
    run_with(dir, |_| {}).await
}

async fn run_with(dir: &std::path::Path, f: impl FnOnce(&mut Config)) -> Running {
    let mut config = Config {
        host: [127, 0, 0, 1].into(),
        port: 0,
        store: StoreBackend::Sqlite,
        data_dir: Some(dir.to_path_buf()),
        state_flush_interval: Duration::from_millis(100),
        ..Config::default()
    };
    config.upstream.connect = Duration::from_secs(2);
    f(&mut config);
    let state = build_state(config).expect("state");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn({
        let state = state.clone();
        async move {
            serve_state(listener, state, async {
                let _ = rx.await;
            })
            .await
            .expect("serves");
        }
    });
    Running {
        base,
        state,
        stop: Some(tx),
        task,
    }
}

impl Running {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}

#[tokio::test]
async fn a_failing_store_keeps_playback_answers_503_and_recovers() {
    let origin = Origin::start().await;
    for i in 0..2 {
        serve_channel(&origin, i);
    }
    let data = TempDir::new("store-disk-full");
    let proxy = run_in(data.path()).await;
    let (http, base) = (http_client(), proxy.base.clone());
    let post = |i: usize| {
        http.post(format!("{base}/streams"))
            .json(&json!({"url": origin.url(&format!("/ch/{i}/index.m3u8"))}))
            .send()
    };
    let first: Value = post(0).await.unwrap().json().await.unwrap();
    let id = first["stream_id"].as_str().unwrap().to_string();

    // The disk fills up (an injected write error through the store's test hook).
    let store = Arc::clone(&proxy.state.store);
    store.inject_failure(Some("database or disk is full"));
    let refused = post(1).await.unwrap();
    assert_eq!(refused.status(), 503);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "store_unavailable", "{body}");
    let second_id = proxy
        .state
        .registry
        .stream_id_for(&origin.url("/ch/1/index.m3u8").parse().unwrap());
    assert_eq!(play(&http, &base, &id).await, 3 * 2048, "playback goes on");
    let health = get_json(&http, format!("{base}/health")).await;
    assert_eq!(health["store"]["ok"], false, "{health}");
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metric_sample(
            &metrics,
            "m3u_proxy_store_flush_failures_total{backend=\"sqlite\"}"
        ) >= 1
    );
    assert!(
        metrics.contains("m3u_proxy_store_flush_seconds_bucket{backend=\"sqlite\""),
        "{metrics}"
    );

    // Space comes back: the next flush writes what was kept, and writes work again.
    store.inject_failure(None);
    eventually(Duration::from_secs(10), "the store to recover", || {
        let health = http.get(format!("{base}/health")).send();
        async move {
            let health: Value = health.await.ok()?.json().await.ok()?;
            (health["store"]["ok"] == true).then_some(())
        }
    })
    .await;
    let stats = get_json(&http, format!("{base}/stats")).await;
    let bytes = stats["proxy"]["total_bytes_served"].clone();
    let played = get_json(&http, format!("{base}/streams/{id}")).await["stream"]
        ["total_bytes_served"]
        .clone();
    assert!(played.as_u64().unwrap() > 3 * 2048);
    proxy.stop().await;

    let proxy = run_in(data.path()).await;
    let base = proxy.base.clone();
    let stream = get_json(&http, format!("{base}/streams/{second_id}")).await;
    assert_eq!(
        stream["stream"]["stream_id"],
        second_id.as_str(),
        "the write refused with 503 was kept: {stream}"
    );
    let stream = get_json(&http, format!("{base}/streams/{id}")).await;
    assert_eq!(
        stream["stream"]["total_bytes_served"], played,
        "bytes played during the outage"
    );
    let stats = get_json(&http, format!("{base}/stats")).await;
    assert_eq!(stats["proxy"]["total_bytes_served"], bytes);
    proxy.stop().await;
}

#[tokio::test]
async fn the_memory_store_keeps_nothing_and_says_so() {
    let proxy = crate::util::Proxy::start().await;
    let health: Value = proxy
        .http
        .get(proxy.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        health["store"],
        json!({"backend": "memory", "path": null, "last_flush_age_ms": null, "ok": true})
    );
}

/// The stored document of a stream, read from the database while the proxy runs.
fn stored_stream(dir: &std::path::Path, id: &str) -> Option<Value> {
    let conn = rusqlite::Connection::open(dir.join("m3u-proxy.db")).ok()?;
    let body: String = conn
        .query_row(
            "SELECT body FROM docs WHERE kind = 'stream' AND id = ?1",
            [id],
            |r| r.get(0),
        )
        .ok()?;
    serde_json::from_str(&body).ok()
}

#[tokio::test]
async fn an_automatic_failover_and_an_idle_removal_reach_the_store_without_a_management_write() {
    let origin = Origin::start().await;
    serve_channel(&origin, 0);
    let (_dead_socket, dead) = crate::util::refused_addr();
    let data = TempDir::new("store-auto");
    let proxy = run_with(data.path(), |c| {
        c.failover.retries = 0;
        c.stream_timeout = Some(Duration::from_secs(2));
        c.cleanup_interval = Duration::from_secs(1);
    })
    .await;
    let (http, base) = (http_client(), proxy.base.clone());
    let created: Value = http
        .post(format!("{base}/streams"))
        .json(&json!({
            "url": format!("http://{dead}/ch.m3u8"),
            "failover_urls": [origin.url("/ch/0/index.m3u8")],
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["stream_id"].as_str().unwrap().to_string();
    assert_eq!(
        stored_stream(data.path(), &id).unwrap()["failover_index"],
        0
    );
    // The dead origin is left for the backup on its own.
    assert_eq!(play(&http, &base, &id).await, 3 * 2048);
    eventually(Duration::from_secs(10), "the switch in the store", || {
        let doc = stored_stream(data.path(), &id);
        async move { (doc?["failover_index"] == 1).then_some(()) }
    })
    .await;
    // Nobody plays it for STREAM_TIMEOUT: the sweep removes it, and so does the store.
    eventually(
        Duration::from_secs(15),
        "the idle stream gone from the store",
        || {
            let gone = stored_stream(data.path(), &id).is_none();
            async move { gone.then_some(()) }
        },
    )
    .await;
    proxy.stop().await;
}

#[tokio::test]
async fn providers_and_a_streams_provider_survive_a_restart() {
    let dir = TempDir::new("store-providers");
    let http = http_client();
    let proxy = run_in(dir.path()).await;
    let spec = json!({"hosts": ["iptv.example.com:8080"], "max_connections": 2, "on_full": "replace_oldest"});
    let res = http
        .put(format!("{}/providers/acme", proxy.base))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let res = http
        .put(format!("{}/providers/gone", proxy.base))
        .json(&json!({"hosts": ["gone.example.com"], "max_connections": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let res = http
        .delete(format!("{}/providers/gone", proxy.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = http
        .post(format!("{}/streams", proxy.base))
        .json(&json!({"url": "http://127.0.0.1:9/live.ts", "provider": "acme"}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    let id = res.json::<Value>().await.unwrap()["stream_id"]
        .as_str()
        .unwrap()
        .to_string();
    proxy.stop().await;

    let proxy = run_in(dir.path()).await;
    let list = get_json(&http, format!("{}/providers", proxy.base)).await;
    assert_eq!(list["total"], 1, "{list}");
    let acme = &list["providers"][0];
    assert_eq!(acme["name"], "acme");
    assert_eq!(acme["hosts"], spec["hosts"]);
    assert_eq!(acme["max_connections"], 2);
    assert_eq!(acme["on_full"], "replace_oldest");
    let stream = get_json(&http, format!("{}/streams/{id}", proxy.base)).await;
    assert_eq!(stream["stream"]["provider"], "acme", "{stream}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_channel_list_survives_a_restart_with_its_stream_ids() {
    let dir = TempDir::new("store-channels");
    let http = http_client();
    let list = "#EXTM3U\n#EXTINF:-1 tvg-id=\"one\" group-title=\"News\",One\nhttp://127.0.0.1:9/one.ts\n#EXTINF:-1 tvg-id=\"two\",Two\nhttp://127.0.0.1:9/two/index.m3u8\n";
    let proxy = run_in(dir.path()).await;
    let res = http
        .post(format!("{}/playlists?name=home", proxy.base))
        .header("content-type", "audio/x-mpegurl")
        .body(list)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let m3u = |base: String| {
        let http = http.clone();
        let id = id.clone();
        async move {
            let res = http
                .get(format!("{base}/playlists/{id}/playlist.m3u"))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            res.text().await.unwrap()
        }
    };
    // The channel URLs without the base (it differs per run): the same stream ids after.
    let urls = |text: &str, base: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("http"))
            .map(|l| l.trim_start_matches(base).to_string())
            .collect()
    };
    let before = urls(&m3u(proxy.base.clone()).await, &proxy.base);
    assert_eq!(before.len(), 2, "{before:?}");
    proxy.stop().await;

    let proxy = run_in(dir.path()).await;
    let info = get_json(&http, format!("{}/playlists/{id}", proxy.base)).await;
    assert_eq!(info["name"], "home", "{info}");
    assert_eq!(info["channel_count"], 2, "{info}");
    assert_eq!(urls(&m3u(proxy.base.clone()).await, &proxy.base), before);
    let deleted = http
        .delete(format!("{}/playlists/{id}", proxy.base))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    proxy.stop().await;
    let proxy = run_in(dir.path()).await;
    let lists = get_json(&http, format!("{}/playlists", proxy.base)).await;
    assert_eq!(lists["total"], 0, "{lists}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_channel_list_streams_counters_survive_a_sigkill_and_go_with_the_list() {
    let origin = Origin::start().await;
    serve_channel(&origin, 0);
    serve_channel(&origin, 1);
    let data = TempDir::new("store-list-counters");
    let dir = data.path().display().to_string();
    let launch = || launch_on(&dir);
    let http = http_client();
    let (mut child, base) = launch().await;
    let list = format!(
        "#EXTM3U\n#EXTINF:-1 tvg-id=\"zero\",Zero\n{}\n#EXTINF:-1 tvg-id=\"one\",One\n{}\n",
        origin.url("/ch/0/index.m3u8"),
        origin.url("/ch/1/index.m3u8")
    );
    let res = http
        .post(format!("{base}/playlists?name=home"))
        .header("content-type", "audio/x-mpegurl")
        .body(list)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let list_id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let streams = get_json(&http, format!("{base}/streams")).await;
    let mut ids: Vec<(String, String)> = streams["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["original_url"].as_str().unwrap().to_string(),
                s["stream_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    ids.sort();
    let played = &ids[0].1;
    assert_eq!(play(&http, &base, played).await, 3 * 2048);
    let bytes = |base: String, id: String| {
        let http = http.clone();
        async move {
            get_json(&http, format!("{base}/streams/{id}")).await["stream"]["total_bytes_served"]
                .as_u64()
                .unwrap()
        }
    };
    let before = bytes(base.clone(), played.clone()).await;
    assert!(before >= 3 * 2048, "segments and the playlist: {before}");
    let after_play = Instant::now();
    flushed_after(&http, &base, after_play).await;
    let status = kill(&mut child, "-KILL").await;
    assert!(!status.success(), "killed: {status}");

    let (mut child, base) = launch().await;
    assert_eq!(
        bytes(base.clone(), played.clone()).await,
        before,
        "the list channel's bytes after SIGKILL"
    );
    assert_eq!(bytes(base.clone(), ids[1].1.clone()).await, 0);
    // Played again: the count goes on from there, and survives again.
    assert_eq!(play(&http, &base, played).await, 3 * 2048);
    let again = bytes(base.clone(), played.clone()).await;
    assert!(again >= before + 3 * 2048, "{again} after {before}");
    let since = Instant::now();
    flushed_after(&http, &base, since).await;
    kill(&mut child, "-KILL").await;
    let (mut child, base) = launch().await;
    assert_eq!(bytes(base.clone(), played.clone()).await, again);

    // Deleting the list deletes its streams' counters: imported again (same URLs, same
    // ids), they start from zero.
    let res = http
        .delete(format!("{base}/playlists/{list_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    kill(&mut child, "-TERM").await;
    let (mut child, base) = launch().await;
    let list = format!(
        "#EXTM3U\n#EXTINF:-1,Zero\n{}\n",
        origin.url("/ch/0/index.m3u8")
    );
    let res = http
        .post(format!("{base}/playlists?name=again"))
        .header("content-type", "audio/x-mpegurl")
        .body(list)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(bytes(base.clone(), played.clone()).await, 0);
    kill(&mut child, "-TERM").await;
}
