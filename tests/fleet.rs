//! The fleet's registry with `--store redis`: instances on one real `redis-server` share
//! their streams, counters and signing secret; the binary takes the Redis settings from
//! flags, `REDIS_URL` or m3u-editor's compose names.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use m3u_proxy::config::{RedisSettings, StoreBackend};
use serde_json::{json, Value};

use crate::binary::{start, stop_with};
use crate::util::origin::Origin;
use crate::util::redis::{require_redis, RedisServer};
use crate::util::{eventually, Proxy};

/// An in-process instance on `redis` with its own secret unset (the fleet's is used).
async fn instance(redis: &RedisServer) -> Proxy {
    let url = redis.url();
    Proxy::start_with(move |c| {
        c.store = StoreBackend::Redis;
        c.redis = Some(RedisSettings {
            url,
            prefix: "fleet-test".into(),
        });
        c.secret = None;
    })
    .await
}

/// One Redis command on a connection of its own.
fn redis_query<T: redis::FromRedisValue>(redis: &RedisServer, cmd: &mut redis::Cmd) -> T {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    cmd.query(&mut conn).unwrap()
}

async fn health(proxy: &Proxy) -> Value {
    eventually(Duration::from_secs(10), "/health answering", || async {
        let res = proxy.http.get(proxy.url("/health")).send().await.ok()?;
        res.json::<Value>().await.ok()
    })
    .await
}

#[tokio::test]
async fn a_stream_written_by_one_instance_is_in_redis_and_loaded_by_the_next() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start();
    let origin = Origin::start().await;
    origin.put("/film.mp4", vec![7u8; 50_000], "video/mp4");
    let a = instance(&redis).await;
    let (id, endpoint) = a.register(&origin.url("/film.mp4"), &[]).await;
    let stored: Option<String> = redis_query(
        &redis,
        redis::cmd("HGET").arg("fleet-test:doc:stream").arg(&id),
    );
    let stored: Value = serde_json::from_str(&stored.expect("the stream's document")).unwrap();
    assert_eq!(stored["original_url"], origin.url("/film.mp4"));
    let health_a = health(&a).await;
    assert_eq!(health_a["store"]["backend"], "redis");
    assert_eq!(health_a["store"]["path"], redis.url());

    // The bytes played through A reach the fleet's counters within a flush or two.
    let body = a.get(&endpoint).await.bytes().await.unwrap();
    assert_eq!(body.len(), 50_000);
    let counted = eventually(Duration::from_secs(5), "the bytes in p:totals", || async {
        let bytes: Option<u64> = redis_query(
            &redis,
            redis::cmd("HGET").arg("fleet-test:totals").arg("bytes"),
        );
        bytes.filter(|&b| b >= 50_000)
    })
    .await;
    assert_eq!(counted, 50_000);
    let per_stream: Option<u64> = redis_query(
        &redis,
        redis::cmd("HGET")
            .arg(format!("fleet-test:counters:{id}"))
            .arg("bytes"),
    );
    assert_eq!(per_stream, Some(50_000));

    // B starts after: it knows the stream, its counters, and signs with the same secret
    // (the same URL derives the same id; A's playback path plays through B).
    let b = instance(&redis).await;
    let listed = b.get_json(&format!("/streams/{id}")).await;
    assert_eq!(
        listed["stream"]["original_url"],
        origin.url("/film.mp4"),
        "{listed}"
    );
    let again = b.create_stream(&origin.url("/film.mp4")).await;
    assert_eq!(again["stream_id"], id.as_str());
    let through_b = b.get(&endpoint).await;
    assert_eq!(through_b.status(), 200);
    assert_eq!(through_b.bytes().await.unwrap().len(), 50_000);
    let secret: Option<String> = redis_query(&redis, redis::cmd("GET").arg("fleet-test:secret"));
    assert_eq!(secret.map(|s| s.len()), Some(64), "32 random bytes in hex");

    // A delete removes the document and its counters from Redis.
    let res = a
        .http
        .delete(a.url(&format!("/streams/{id}")))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let doc: bool = redis_query(
        &redis,
        redis::cmd("HEXISTS").arg("fleet-test:doc:stream").arg(&id),
    );
    let counters: bool = redis_query(
        &redis,
        redis::cmd("EXISTS").arg(format!("fleet-test:counters:{id}")),
    );
    assert_eq!((doc, counters), (false, false));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn the_binary_joins_a_fleet_through_the_compose_names_and_refuses_bad_redis_settings() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start();
    let port = redis.port;
    let (mut child, base) = start(|p| {
        (
            vec![
                ("M3U_PROXY_HOST", "127.0.0.1".to_string()),
                ("M3U_PROXY_PORT", p.to_string()),
                ("M3U_PROXY_STORE", "redis".to_string()),
                ("REDIS_HOST", "127.0.0.1".to_string()),
                ("REDIS_SERVER_PORT", port.to_string()),
                ("REDIS_DB", "3".to_string()),
                ("REDIS_PREFIX", "bin".to_string()),
            ],
            vec![],
        )
    })
    .await;
    let http = crate::util::http_client();
    let health: Value = http
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["store"]["backend"], "redis");
    assert_eq!(
        health["store"]["path"],
        format!("redis://127.0.0.1:{port}/3")
    );
    let res = http
        .post(format!("{base}/streams"))
        .json(&json!({"url": "http://127.0.0.1:9/a.m3u8"}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let created: Value = res.json().await.unwrap();
    let in_db3: bool = {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/3")).unwrap();
        let mut conn = client.get_connection().unwrap();
        redis::cmd("HEXISTS")
            .arg("bin:doc:stream")
            .arg(created["stream_id"].as_str().unwrap())
            .query(&mut conn)
            .unwrap()
    };
    assert!(in_db3, "the document is in database 3 under the prefix");
    let (status, _) = stop_with(&mut child, "-TERM").await;
    assert!(status.success(), "{status}");

    // No Redis named, a Redis nobody answers at, a URL that is not one.
    let dead = crate::binary::free_port();
    for (envs, says, code) in [
        (vec![], "--store redis needs REDIS_URL (or REDIS_HOST)", 2),
        (
            vec![("REDIS_URL", format!("redis://:hunter2@127.0.0.1:{dead}/0"))],
            "cannot reach Redis at redis://:***@127.0.0.1",
            1,
        ),
        (
            vec![("REDIS_URL", "http://nowhere/".to_string())],
            "invalid REDIS_URL",
            2,
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_m3u-proxy"))
            .args(["--host", "127.0.0.1", "--port", "0", "--store", "redis"])
            .env_remove("REDIS_URL")
            .env_remove("REDIS_HOST")
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{stderr}");
        assert!(stderr.contains(says), "{says}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

const MPEGURL: &str = "application/vnd.apple.mpegurl";

fn media_playlist(dir: &str) -> String {
    let mut text =
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:1\n".to_string();
    for n in 1..4 {
        text.push_str(&format!("#EXTINF:2.0,\n{dir}/seg{n}.ts\n"));
    }
    text
}

/// Whether `GET /streams/{id}` on `proxy` answers 200 (and its JSON when it does).
async fn stream_on(proxy: &Proxy, id: &str) -> Option<Value> {
    let res = proxy.get(&format!("/streams/{id}")).await;
    if res.status() != 200 {
        return None;
    }
    res.json().await.ok()
}

/// Whether `GET /streams` on `proxy` lists `id`, without a read on miss.
async fn listed_on(proxy: &Proxy, id: &str) -> Option<Value> {
    let all: Value = proxy.get_json("/streams").await;
    let streams = all.get("streams").unwrap_or(&all).as_array()?.clone();
    streams.into_iter().find(|s| s["stream_id"] == id)
}

#[tokio::test]
async fn creates_updates_failovers_and_deletes_on_one_instance_reach_the_others() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start();
    let origin = Origin::start().await;
    origin.put("/a/live.m3u8", media_playlist("a"), MPEGURL);
    origin.put("/b/live.m3u8", media_playlist("b"), MPEGURL);
    origin.live_ts("/live.ts", 100_000);
    let (a, b, c) = (
        instance(&redis).await,
        instance(&redis).await,
        instance(&redis).await,
    );

    // Created on A: listed on B and C within a second (by the announcement, not a miss).
    let (hls, _) = a.register(&origin.url("/a/live.m3u8"), &[]).await;
    for other in [&b, &c] {
        eventually(
            Duration::from_secs(1),
            "the stream listed elsewhere",
            || listed_on(other, &hls),
        )
        .await;
    }
    // Updated on A (a backup URL added): B and C see it within a second.
    let (again, _) = a
        .register(&origin.url("/a/live.m3u8"), &[origin.url("/b/live.m3u8")])
        .await;
    assert_eq!(again, hls);
    for other in [&b, &c] {
        eventually(
            Duration::from_secs(1),
            "the backup URL elsewhere",
            || async {
                let s = listed_on(other, &hls).await?;
                (s["failover_urls"] == json!([origin.url("/b/live.m3u8")])).then_some(())
            },
        )
        .await;
    }

    // A reference signed by A plays through B: the fleet shares one secret.
    let playlist = format!("/hls/{hls}/playlist.m3u8");
    origin.put("/a/a/seg1.ts", vec![0x47u8; 1880], "video/mp2t");
    let text = a.get(&playlist).await.text().await.unwrap();
    let first = text
        .lines()
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap();
    let reference = url::Url::parse(&a.url(&playlist))
        .unwrap()
        .join(first)
        .unwrap();
    let through_b = b.get(reference.path()).await;
    assert_eq!(through_b.status(), 200, "{first}");
    assert_eq!(through_b.bytes().await.unwrap().len(), 1880);

    // B plays it; a manual failover on C moves B's next playlist to the backup.
    assert_eq!(b.get(&playlist).await.status(), 200);
    assert_eq!(origin.hits("/b/live.m3u8"), 0);
    c.switch_now(&hls).await;
    eventually(Duration::from_secs(1), "B on the backup URL", || async {
        let s = listed_on(&b, &hls).await?;
        (s["current_url"] == origin.url("/b/live.m3u8")).then_some(())
    })
    .await;
    let before = origin.hits("/b/live.m3u8");
    assert_eq!(b.get(&playlist).await.status(), 200);
    assert!(
        origin.hits("/b/live.m3u8") > before,
        "B's next playlist came from the backup"
    );
    // A hears of C's failover as B did (each within 1 s, not necessarily together).
    eventually(Duration::from_secs(1), "A on the backup URL", || async {
        let s = listed_on(&a, &hls).await?;
        (s["current_url"] == origin.url("/b/live.m3u8")).then_some(())
    })
    .await;

    // A live viewer on C; the stream deleted on A: C's viewer is cut within 2 s.
    let (live, endpoint) = a.register(&origin.url("/live.ts"), &[]).await;
    let mut viewer = eventually(Duration::from_secs(2), "C playing A's stream", || async {
        let res = c.get(&endpoint).await;
        (res.status() == 200).then(|| crate::util::ts_viewer::TsViewer::from_response(res))
    })
    .await;
    viewer.read_packets(50, Duration::from_secs(5)).await;
    let res = a
        .http
        .delete(a.url(&format!("/streams/{live}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Ended as a delete here ends it (the body closes), within 2 s.
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = viewer.body.next().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "C's viewer still open 2 s after the delete on A"
    );
    assert!(stream_on(&c, &live).await.is_none(), "gone on C");
    assert!(stream_on(&b, &live).await.is_none(), "gone on B");
    for p in [a, b, c] {
        p.stop().await;
    }
}

#[tokio::test]
async fn a_stream_unknown_here_is_looked_up_in_redis_before_a_404() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start();
    let origin = Origin::start().await;
    origin.put("/film.mp4", vec![1u8; 10_000], "video/mp4");
    let a = instance(&redis).await;
    // Written to Redis behind every instance's back (no announcement): only a read on
    // miss can find it.
    let (id, endpoint) = a.register(&origin.url("/film.mp4"), &[]).await;
    let doc: String = redis_query(
        &redis,
        redis::cmd("HGET").arg("fleet-test:doc:stream").arg(&id),
    );
    let b = instance(&redis).await;
    let _: () = redis_query(
        &redis,
        redis::cmd("HDEL").arg("fleet-test:doc:stream").arg(&id),
    );
    let other = "0123456789abcdef01234567";
    let _: () = redis_query(
        &redis,
        redis::cmd("HSET")
            .arg("fleet-test:doc:stream")
            .arg(other)
            .arg(&doc),
    );
    assert_eq!(b.get(&format!("/streams/{other}")).await.status(), 200);
    assert!(listed_on(&b, other).await.is_some(), "taken in");
    assert_eq!(
        b.get("/streams/ffffffffffffffffffffffff").await.status(),
        404
    );
    let res = b.get(&endpoint.replace(&id, other)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().len(), 10_000);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn an_automatic_failover_on_one_instance_is_seen_by_all() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start();
    let origin = Origin::start().await;
    origin.put("/a/live.m3u8", media_playlist("a"), MPEGURL);
    origin.fault("/a/live.m3u8", crate::util::origin::Fault::Status(500));
    origin.put("/b/live.m3u8", media_playlist("b"), MPEGURL);
    let (a, b, c) = (
        instance(&redis).await,
        instance(&redis).await,
        instance(&redis).await,
    );
    let (id, _) = a
        .register(&origin.url("/a/live.m3u8"), &[origin.url("/b/live.m3u8")])
        .await;
    eventually(Duration::from_secs(1), "the stream on B", || {
        listed_on(&b, &id)
    })
    .await;
    // B's player meets the dead primary: B switches by itself, within the request.
    let res = b.get(&format!("/hls/{id}/playlist.m3u8")).await;
    assert_eq!(res.status(), 200);
    let on_b = listed_on(&b, &id).await.unwrap();
    assert_eq!(on_b["current_url"], origin.url("/b/live.m3u8"));
    // Its flusher stores the new position; A and C follow within a flush and a message.
    for other in [&a, &c] {
        eventually(
            Duration::from_secs(3),
            "the backup URL in use elsewhere",
            || async {
                let s = listed_on(other, &id).await?;
                (s["current_url"] == origin.url("/b/live.m3u8")).then_some(())
            },
        )
        .await;
    }
    let primary_hits = origin.hits("/a/live.m3u8");
    let res = c.get(&format!("/hls/{id}/playlist.m3u8")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        origin.hits("/a/live.m3u8"),
        primary_hits,
        "C does not try the dead primary again"
    );
    for p in [a, b, c] {
        p.stop().await;
    }
}

#[tokio::test]
async fn redis_down_for_15_s_playback_goes_on_writes_503_and_nothing_counted_is_lost() {
    if !require_redis() {
        return;
    }
    let mut redis = RedisServer::start();
    let origin = Origin::start().await;
    origin.live_ts("/live.ts", 100_000);
    let a = instance(&redis).await;
    let (id, endpoint) = a.register(&origin.url("/live.ts"), &[]).await;
    let mut viewer = crate::util::ts_viewer::TsViewer::open(&a, &endpoint).await;
    viewer.read_packets(100, Duration::from_secs(5)).await;
    assert_eq!(health(&a).await["status"], "healthy");

    redis.stop();
    let down_at = viewer.bytes.len();
    eventually(Duration::from_secs(3), "/health degraded", || async {
        (health(&a).await["status"] == "degraded").then_some(())
    })
    .await;
    let h = health(&a).await;
    assert_eq!(h["store"]["backend"], "redis");
    let (status, body) = a
        .post_stream(json!({"url": origin.url("/during-outage.ts")}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "store_unavailable");
    // Bytes keep flowing for the 15 s; reads answer from what this instance knows.
    let outage = std::time::Instant::now();
    while outage.elapsed() < Duration::from_secs(15) {
        let more = viewer.numbers().len() + 50;
        viewer.read_packets(more, Duration::from_secs(3)).await;
    }
    let during = (viewer.bytes.len() - down_at) as u64;
    assert!(during > 1_000_000, "{during} bytes in 15 s at 100 kB/s");
    assert!(stream_on(&a, &id).await.is_some());

    // Back (empty: it kept nothing): writes work within 5 s, the documents are written
    // back, and the outage's bytes are in the fleet's totals.
    redis.restart();
    eventually(Duration::from_secs(5), "writes working again", || async {
        let (status, _) = a
            .post_stream(json!({"url": origin.url("/after-outage.ts")}))
            .await;
        (status == 200 || status == 201).then_some(())
    })
    .await;
    let totals = eventually(
        Duration::from_secs(5),
        "the outage's bytes in p:totals",
        || async {
            let bytes: Option<u64> = redis_query(
                &redis,
                redis::cmd("HGET").arg("fleet-test:totals").arg("bytes"),
            );
            bytes.filter(|&b| b >= during)
        },
    )
    .await;
    assert!(totals >= during);
    eventually(
        Duration::from_secs(5),
        "the stream written back",
        || async {
            let back: bool = redis_query(
                &redis,
                redis::cmd("HEXISTS").arg("fleet-test:doc:stream").arg(&id),
            );
            back.then_some(())
        },
    )
    .await;
    let secret: Option<String> = redis_query(&redis, redis::cmd("GET").arg("fleet-test:secret"));
    assert!(secret.is_some(), "the secret written back");
    eventually(Duration::from_secs(5), "/health healthy again", || async {
        (health(&a).await["status"] == "healthy").then_some(())
    })
    .await;
    viewer
        .read_packets(viewer.numbers().len() + 50, Duration::from_secs(3))
        .await;
    a.stop().await;
}

#[tokio::test]
async fn webhooks_and_providers_defined_on_one_instance_reach_the_others() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start();
    let (a, b) = (instance(&redis).await, instance(&redis).await);
    let res = a
        .http
        .post(a.url("/webhooks"))
        .json(&json!({"url": "http://127.0.0.1:9/hook", "events": ["stream_created"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let hook: Value = res.json().await.unwrap();
    let hook_id = hook["id"].as_str().unwrap().to_string();
    let res = a
        .http
        .put(a.url("/providers/acc"))
        .json(&json!({"hosts": ["127.0.0.1:9"], "max_connections": 2}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    eventually(
        Duration::from_secs(1),
        "the webhook and provider on B",
        || async {
            let hook = b.get(&format!("/webhooks/{hook_id}")).await;
            let provider = b.get("/providers/acc").await;
            if hook.status() != 200 || provider.status() != 200 {
                return None;
            }
            let provider: Value = provider.json().await.ok()?;
            Some(provider)
        },
    )
    .await;
    for path in [format!("/webhooks/{hook_id}"), "/providers/acc".to_string()] {
        let res = a.http.delete(a.url(&path)).send().await.unwrap();
        assert!(res.status().is_success(), "{path}: {}", res.status());
    }
    eventually(Duration::from_secs(1), "both gone on B", || async {
        let hook = b.get(&format!("/webhooks/{hook_id}")).await.status();
        let provider = b.get("/providers/acc").await.status();
        (hook == 404 && provider == 404).then_some(())
    })
    .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_channel_list_imported_refreshed_or_deleted_on_one_instance_is_on_all() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start();
    let origin = Origin::start().await;
    origin.put(
        "/list.m3u",
        format!(
            "#EXTM3U\n#EXTINF:-1 tvg-id=\"one\",One\n{}\n#EXTINF:-1 tvg-id=\"two\",Two\n{}\n",
            origin.url("/one.ts"),
            origin.url("/two.ts")
        ),
        "audio/x-mpegurl",
    );
    let (a, b) = (instance(&redis).await, instance(&redis).await);
    let res = a
        .http
        .post(a.url("/playlists"))
        .json(&json!({"name": "L", "url": origin.url("/list.m3u")}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let list: Value = res.json().await.unwrap();
    let list_id = list["id"].as_str().unwrap().to_string();
    let on_a: Value = a.get_json("/streams").await;
    assert_eq!(on_a["total"], 2, "{on_a}");
    // B imports it too: the same channels under the same stream ids.
    eventually(
        Duration::from_secs(3),
        "the list's channels on B",
        || async {
            let on_b: Value = b.get_json("/streams").await;
            let ids = |v: &Value| {
                let mut ids: Vec<String> = v["streams"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| s["stream_id"].as_str().unwrap_or("").to_string())
                    .collect();
                ids.sort();
                ids
            };
            (ids(&on_b) == ids(&on_a)).then_some(())
        },
    )
    .await;
    assert_eq!(b.get(&format!("/playlists/{list_id}")).await.status(), 200);
    // A refresh on A that drops a channel and adds one is applied on B as on A.
    origin.put(
        "/list.m3u",
        format!(
            "#EXTM3U\n#EXTINF:-1 tvg-id=\"one\",One\n{}\n#EXTINF:-1 tvg-id=\"three\",Three\n{}\n",
            origin.url("/one.ts"),
            origin.url("/three.ts")
        ),
        "audio/x-mpegurl",
    );
    let res = a
        .http
        .post(a.url(&format!("/playlists/{list_id}/refresh")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let on_a: Value = a.get_json("/streams").await;
    let ids = |v: &Value| {
        let mut ids: Vec<String> = v["streams"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| s["stream_id"].as_str().unwrap_or("").to_string())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(on_a["total"], 2, "{on_a}");
    eventually(
        Duration::from_secs(2),
        "the refreshed channels on B",
        || async {
            let on_b: Value = b.get_json("/streams").await;
            let m3u = b
                .get(&format!("/playlists/{list_id}/playlist.m3u"))
                .await
                .text()
                .await
                .ok()?;
            (ids(&on_b) == ids(&on_a) && m3u.contains(",Three") && !m3u.contains(",Two"))
                .then_some(())
        },
    )
    .await;
    let res = a
        .http
        .delete(a.url(&format!("/playlists/{list_id}")))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    eventually(
        Duration::from_secs(2),
        "the list and its channels gone on B",
        || async {
            let gone = b.get(&format!("/playlists/{list_id}")).await.status() == 404;
            let streams: Value = b.get_json("/streams").await;
            (gone && streams["total"] == 0).then_some(())
        },
    )
    .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn the_backend_drops_increments_of_a_stream_whose_document_is_gone() {
    use m3u_proxy::store::{Backend, Batch, CounterKey, CounterSet, Kind};
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut backend = m3u_proxy::fleet::RedisBackend::new(client, "unit", "me", "here");
    let mut batch = Batch::default();
    batch.put(Kind::Stream, "kept", json!({"x": 1}));
    batch.add(
        CounterKey::Stream("kept".into()),
        CounterSet::from_array([5, 1, 0, 0]),
    );
    batch.add(
        CounterKey::Stream("gone".into()),
        CounterSet::from_array([7, 0, 0, 0]),
    );
    batch.add(CounterKey::Totals, CounterSet::from_array([12, 1, 0, 0]));
    backend.apply(&batch).unwrap();
    backend.apply(&batch).unwrap();
    let loaded = backend.load().unwrap();
    assert_eq!(
        loaded.of(Kind::Stream),
        &[("kept".to_string(), json!({"x": 1}))]
    );
    assert_eq!(
        loaded.stream_counters.get("kept"),
        Some(&CounterSet::from_array([10, 2, 0, 0]))
    );
    assert!(!loaded.stream_counters.contains_key("gone"));
    let gone: bool = redis_query(&redis, redis::cmd("EXISTS").arg("unit:counters:gone"));
    assert!(!gone, "no counters for a stream without a document");
    assert_eq!(loaded.totals, CounterSet::from_array([24, 2, 0, 0]));
    let mut delete = Batch::default();
    delete.delete(Kind::Stream, "kept");
    backend.apply(&delete).unwrap();
    let loaded = backend.load().unwrap();
    assert!(loaded.of(Kind::Stream).is_empty());
    assert!(
        loaded.stream_counters.is_empty(),
        "deleted with the document"
    );
    assert_eq!(loaded.totals.bytes, 24, "the totals keep deleted streams");
    // Redis gone: a write fails (the store keeps it); back, the next one works.
    let mut redis = redis;
    redis.stop();
    assert!(backend.apply(&batch).is_err());
    redis.restart();
    backend.apply(&batch).unwrap();
}

#[tokio::test]
async fn three_binaries_share_one_registry() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start();
    let mut children = Vec::new();
    let mut bases = Vec::new();
    for _ in 0..3 {
        let (child, base, _) = fleet_binary(&redis.url()).await;
        children.push(child);
        bases.push(base);
    }
    let http = crate::util::http_client();
    let created =
        crate::util::create_stream_at(&http, &bases[0], "http://127.0.0.1:9/x.m3u8").await;
    let id = created["stream_id"].as_str().unwrap().to_string();
    for base in &bases[1..] {
        eventually(Duration::from_secs(1), "listed on the others", || async {
            let all: Value = http
                .get(format!("{base}/streams"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            all["streams"]
                .as_array()?
                .iter()
                .any(|s| s["stream_id"] == id.as_str())
                .then_some(())
        })
        .await;
    }
    for mut child in children {
        let (status, _) = stop_with(&mut child, "-TERM").await;
        assert!(status.success(), "{status}");
    }
}

/// A resynchronization with Redis (after every reconnect of the change feed) runs while
/// the instance answers: a webhook or stream written there meanwhile is held locally
/// before its write reaches Redis, and must not be taken for one deleted elsewhere.
#[tokio::test]
async fn writes_made_while_an_instance_resynchronizes_are_kept() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start();
    let origin = Origin::start().await;
    let proxy = instance(&redis).await;
    let base = proxy.url("");
    let base = base.trim_end_matches('/');
    let mut hooks = Vec::new();
    let mut streams = Vec::new();
    for round in 0..10 {
        // Every subscriber is cut: the instance reconnects its change feed and resyncs.
        let _: redis::Value = redis_query(
            &redis,
            redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"),
        );
        for n in 0..5 {
            let res = proxy
                .http
                .post(proxy.url("/webhooks"))
                .json(&json!({"url": format!("http://127.0.0.1:9/hook-{round}-{n}"), "events": ["stream_created"]}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 201);
            let hook: Value = res.json().await.unwrap();
            hooks.push(hook["id"].as_str().unwrap().to_string());
            let url = origin.url(&format!("/live-{round}-{n}.ts"));
            let stream = crate::util::create_stream_at(&proxy.http, base, &url).await;
            streams.push(stream["stream_id"].as_str().unwrap().to_string());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Past the last resynchronization's second look (2 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    for hook in &hooks {
        assert_eq!(
            proxy.get(&format!("/webhooks/{hook}")).await.status(),
            200,
            "webhook {hook}"
        );
    }
    for stream in &streams {
        assert_eq!(
            proxy.get(&format!("/streams/{stream}")).await.status(),
            200,
            "stream {stream}"
        );
    }
}

/// A real `m3u-proxy` binary of the fleet on the Redis at `url`; returns it, its base URL
/// and its instance id (the first of its `/health` breakdown).
async fn fleet_binary(url: &str) -> (std::process::Child, String, String) {
    let url = url.to_string();
    let (child, base) = start(move |p| {
        (
            vec![
                ("M3U_PROXY_HOST", "127.0.0.1".to_string()),
                ("M3U_PROXY_PORT", p.to_string()),
                ("M3U_PROXY_STORE", "redis".to_string()),
                ("REDIS_URL", url.clone()),
            ],
            vec![],
        )
    })
    .await;
    let http = crate::util::http_client();
    let id = eventually(Duration::from_secs(10), "the instance id", || async {
        let health = json_at(&http, &format!("{base}/health")).await?;
        Some(health["instances"][0]["id"].as_str()?.to_string())
    })
    .await;
    (child, base, id)
}

/// The JSON of a 200 answer to `GET url`, `None` for anything else.
async fn json_at(http: &reqwest::Client, url: &str) -> Option<Value> {
    let res = http.get(url).send().await.ok()?;
    if res.status() != 200 {
        return None;
    }
    res.json().await.ok()
}

/// The entry of stream `id` in `GET /streams` at `base`.
async fn listed_at(http: &reqwest::Client, base: &str, id: &str) -> Option<Value> {
    let all = json_at(http, &format!("{base}/streams")).await?;
    all["streams"]
        .as_array()?
        .iter()
        .find(|s| s["stream_id"] == id)
        .cloned()
}

/// Reads the SSE response `res` in the background, keeping every event's JSON in order.
fn collect_sse(res: reqwest::Response) -> Arc<Mutex<Vec<Value>>> {
    let events: Arc<Mutex<Vec<Value>>> = Arc::default();
    let keep = events.clone();
    tokio::spawn(async move {
        let mut body = res.bytes_stream();
        let mut text = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = text.find("\n\n") {
                let message: String = text.drain(..end + 2).collect();
                for line in message.lines() {
                    if let Some(data) = line.strip_prefix("data:") {
                        if let Ok(v) = serde_json::from_str::<Value>(data.trim()) {
                            keep.lock().unwrap().push(v);
                        }
                    }
                }
            }
        }
    });
    events
}

/// An event's identity in a fleet: the instance where it happened and its id there.
fn event_key(event: &Value) -> (String, u64) {
    (
        event["instance"].as_str().unwrap_or_default().to_string(),
        event["id"].as_u64().unwrap_or_default(),
    )
}

/// Issue 14's whole story with three real binaries on one `redis-server`: create on A, list
/// on B and C; HLS through B and live TS through C; A's `/stats` and `/events` show the
/// others; a manual failover on C moves B's playlist to the backup; a delete on A ends C's
/// viewer; a webhook registered on A gets each event once; SIGTERM stops all three cleanly.
#[tokio::test]
async fn three_binaries_play_report_fail_over_and_delete_as_one_fleet() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start();
    let (main, backup) = (Origin::start().await, Origin::start().await);
    for origin in [&main, &backup] {
        origin.put("/live.m3u8", media_playlist("hls"), MPEGURL);
        for n in 1..4 {
            origin.put(&format!("/hls/seg{n}.ts"), vec![0x47u8; 1880], "video/mp2t");
        }
    }
    main.live_ts("/live.ts", 100_000);
    let (mut a, base_a, id_a) = fleet_binary(&redis.url()).await;
    let (mut b, base_b, id_b) = fleet_binary(&redis.url()).await;
    let (mut c, base_c, id_c) = fleet_binary(&redis.url()).await;
    let http = crate::util::http_client();

    // A webhook registered on A, known on B and C before anything happens there.
    let (hook_url, deliveries) = crate::util::webhook_receiver().await;
    let types = [
        "stream_created",
        "client_connected",
        "failover",
        "stream_deleted",
    ];
    let res = http
        .post(format!("{base_a}/webhooks"))
        .json(&json!({"url": hook_url, "events": types}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let hook: Value = res.json().await.unwrap();
    let hook_id = hook["id"].as_str().unwrap().to_string();
    for base in [&base_b, &base_c] {
        eventually(Duration::from_secs(2), "the webhook on B and C", || {
            let url = format!("{base}/webhooks/{hook_id}");
            let http = &http;
            async move { json_at(http, &url).await }
        })
        .await;
    }
    let feed = http.get(format!("{base_a}/events")).send().await.unwrap();
    assert_eq!(feed.status(), 200);
    let feed = collect_sse(feed);

    // Created on A (the HLS one with a backup URL): listed on B and C within a second.
    let created: Value = http
        .post(format!("{base_a}/streams"))
        .json(&json!({"url": main.url("/live.m3u8"), "failover_urls": [backup.url("/live.m3u8")]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let hls = created["stream_id"].as_str().unwrap().to_string();
    let created = crate::util::create_stream_at(&http, &base_a, &main.url("/live.ts")).await;
    let live = created["stream_id"].as_str().unwrap().to_string();
    let live_endpoint = created["stream_endpoint"].as_str().unwrap().to_string();
    for base in [&base_b, &base_c] {
        eventually(Duration::from_secs(1), "A's streams on B and C", || async {
            let s = listed_at(&http, base, &hls).await?;
            listed_at(&http, base, &live).await?;
            (s["failover_urls"] == json!([backup.url("/live.m3u8")])).then_some(())
        })
        .await;
    }

    // An HLS viewer plays through B: the playlist and its three segments, real bytes.
    let playlist = format!("{base_b}/hls/{hls}/playlist.m3u8");
    let play_b = |expected_origin: &'static str| {
        let (http, playlist) = (http.clone(), playlist.clone());
        async move {
            let res = http
                .get(&playlist)
                .header("user-agent", "hls-viewer-on-b")
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200, "{expected_origin}");
            let text = res.text().await.unwrap();
            let uris = crate::util::player::uri_lines(&text);
            assert_eq!(uris.len(), 3, "{text}");
            let mut bytes = 0;
            for uri in uris {
                let url = url::Url::parse(&playlist).unwrap().join(&uri).unwrap();
                let res = http
                    .get(url)
                    .header("user-agent", "hls-viewer-on-b")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 200, "{uri}");
                let body = res.bytes().await.unwrap();
                assert_eq!(body.as_ref(), &[0x47u8; 1880][..], "{uri}");
                bytes += body.len() as u64;
            }
            bytes
        }
    };
    let hls_bytes = play_b("main").await;
    assert_eq!(hls_bytes, 3 * 1880);
    assert_eq!(main.hits("/hls/seg3.ts"), 1);
    assert_eq!(backup.hits("/live.m3u8"), 0);

    // A live TS viewer on C, read in the background so it never falls behind.
    let res = http
        .get(format!("{base_c}{live_endpoint}"))
        .header("user-agent", "ts-viewer-on-c")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "video/mp2t");
    let live_read = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = live_read.clone();
    let mut viewer = tokio::spawn(async move {
        let mut body = res.bytes_stream();
        let mut first = None;
        while let Some(Ok(chunk)) = body.next().await {
            first.get_or_insert(chunk[0]);
            counted.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        first
    });
    let read_now = || live_read.load(std::sync::atomic::Ordering::Relaxed);
    eventually(Duration::from_secs(5), "50 TS packets on C", || async {
        (read_now() >= 50 * 188).then_some(())
    })
    .await;

    // A's /stats: B's and C's viewers, each on its instance, within 2 s; the bytes too.
    let watched = std::time::Instant::now();
    let on_c = read_now();
    let stats = crate::util::poll_for(Duration::from_secs(2), || async {
        let stats = json_at(&http, &format!("{base_a}/stats")).await?;
        let row = |id: &str| {
            let rows = stats["instances"].as_array()?;
            let r = rows.iter().find(|r| r["id"] == id)?;
            Some((r["clients"].as_u64()?, r["bytes"].as_u64()?))
        };
        let (b_row, c_row) = (row(&id_b)?, row(&id_c)?);
        (stats["proxy"]["total_clients"] == 2
            && b_row.0 == 1
            && b_row.1 >= hls_bytes
            && c_row.0 == 1
            && c_row.1 >= on_c)
            .then_some(stats)
    })
    .await;
    let Some(stats) = stats else {
        let now = json_at(&http, &format!("{base_a}/stats")).await;
        panic!("A's /stats after 2 s (want B: 1 client, {hls_bytes} B; C: 1, {on_c} B): {now:?}");
    };
    assert!(watched.elapsed() < Duration::from_secs(3));
    assert_eq!(stats["instances"].as_array().unwrap().len(), 3, "{stats}");
    let viewers = crate::util::clients_by_instance(&stats);
    assert_eq!(
        viewers,
        [
            ("hls-viewer-on-b".to_string(), id_b.clone()),
            ("ts-viewer-on-c".to_string(), id_c.clone())
        ],
        "{stats}"
    );
    // The fleet's total (stored counters, flushed every second by B and C) sums them.
    eventually(Duration::from_secs(5), "the fleet's bytes on A", || async {
        let stats = json_at(&http, &format!("{base_a}/stats")).await?;
        (stats["proxy"]["total_bytes_served"].as_u64()? >= hls_bytes + on_c).then_some(())
    })
    .await;

    // A's event feed shows C's client_connected.
    eventually(
        Duration::from_secs(5),
        "C's client_connected on A's feed",
        || async {
            feed.lock()
                .unwrap()
                .iter()
                .any(|e| {
                    e["event_type"] == "client_connected"
                        && e["instance"] == id_c.as_str()
                        && e["stream_id"] == live.as_str()
                })
                .then_some(())
        },
    )
    .await;

    // A manual failover on C: B's next playlist comes from the backup origin.
    let res = http
        .post(format!("{base_c}/streams/{hls}/failover"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let switched: Value = res.json().await.unwrap();
    assert_eq!(
        switched["current_url"],
        backup.url("/live.m3u8"),
        "{switched}"
    );
    eventually(Duration::from_secs(2), "B on the backup URL", || async {
        let s = listed_at(&http, &base_b, &hls).await?;
        (s["current_url"] == backup.url("/live.m3u8")).then_some(())
    })
    .await;
    let main_playlists = main.hits("/live.m3u8");
    assert_eq!(play_b("backup").await, hls_bytes);
    assert!(
        backup.hits("/live.m3u8") >= 1,
        "B's playlist from the backup"
    );
    assert!(backup.hits("/hls/seg1.ts") >= 1, "and its segments");
    assert_eq!(
        main.hits("/live.m3u8"),
        main_playlists,
        "not the main origin"
    );

    // Deleted on A: C's live viewer ends within 2 s.
    let res = http
        .delete(format!("{base_a}/streams/{live}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let ended = tokio::time::timeout(Duration::from_secs(2), &mut viewer).await;
    let first = ended
        .expect("C's viewer still open 2 s after the delete on A")
        .unwrap();
    assert_eq!(first, Some(0x47), "C's viewer got TS");
    eventually(Duration::from_secs(2), "gone on C", || async {
        let res = http
            .get(format!("{base_c}/streams/{live}"))
            .send()
            .await
            .ok()?;
        (res.status() == 404).then_some(())
    })
    .await;

    // The webhook: every event of its types on A's fleet feed delivered once, not three
    // times (each by the instance where it happened).
    let wanted = |events: &[Value]| -> Vec<(String, u64)> {
        let mut keys: Vec<_> = events
            .iter()
            .filter(|e| types.iter().any(|t| e["event_type"] == *t))
            .map(event_key)
            .collect();
        keys.sort();
        keys
    };
    let expected = eventually(Duration::from_secs(5), "the delete on A's feed", || async {
        let events = feed.lock().unwrap().clone();
        events
            .iter()
            .any(|e| e["event_type"] == "stream_deleted")
            .then(|| wanted(&events))
    })
    .await;
    for (kind, on) in [
        ("stream_created", &id_a),
        ("client_connected", &id_b),
        ("client_connected", &id_c),
        ("failover", &id_c),
        ("stream_deleted", &id_a),
    ] {
        assert!(
            feed.lock()
                .unwrap()
                .iter()
                .any(|e| e["event_type"] == kind && e["instance"] == on.as_str()),
            "{kind} of {on} on A's feed: {:?}",
            feed.lock().unwrap()
        );
    }
    let delivered = || {
        let mut keys: Vec<_> = deliveries.lock().unwrap().iter().map(event_key).collect();
        keys.sort();
        keys
    };
    let all = crate::util::poll_for(Duration::from_secs(15), || async {
        let got = delivered();
        expected.iter().all(|k| got.contains(k)).then_some(())
    })
    .await;
    assert!(
        all.is_some(),
        "expected {expected:?}, delivered {:?}",
        delivered()
    );
    // A duplicate (from another instance) would come within this window.
    let extra = crate::util::poll_for(Duration::from_secs(1), || async {
        (delivered().len() > expected.len()).then_some(())
    })
    .await;
    assert!(
        extra.is_none(),
        "one delivery per event: expected {expected:?}, delivered {:?}",
        delivered()
    );
    assert_eq!(delivered(), expected);

    for child in [&mut a, &mut b, &mut c] {
        let (status, _) = stop_with(child, "-TERM").await;
        assert!(status.success(), "clean exit on SIGTERM: {status}");
    }
}
