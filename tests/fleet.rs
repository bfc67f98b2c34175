//! The fleet's registry with `--store redis`: instances on one real `redis-server` share
//! their streams, counters and signing secret; the binary takes the Redis settings from
//! flags, `REDIS_URL` or m3u-editor's compose names.

use std::process::Command;
use std::time::Duration;

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
