//! `GET /metrics` read by a Prometheus text parser: the values agree with `/stats`, and a
//! deleted stream's series are gone at the next scrape.

use std::collections::HashMap;

use prometheus_parse::{Scrape, Value as Prom};
use reqwest::StatusCode;
use serde_json::Value;

use crate::util::origin::Origin;
use crate::util::player::Player;
use crate::util::Proxy;

const MPEGURL: &str = "application/vnd.apple.mpegurl";

async fn scrape(proxy: &Proxy) -> Scrape {
    let res = proxy.get("/metrics").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = res.text().await.unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("valid exposition text")
}

/// `metric{labels}` → value, for counters and gauges.
fn values(scrape: &Scrape) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for s in &scrape.samples {
        let v = match s.value {
            Prom::Counter(v) | Prom::Gauge(v) | Prom::Untyped(v) => v,
            _ => continue,
        };
        let key = match s.labels.get("stream_id") {
            Some(id) => format!("{}{{{id}}}", s.metric),
            None => s.metric.clone(),
        };
        out.insert(key, v);
    }
    out
}

fn put_stream(origin: &Origin, dir: &str, segment: usize) {
    origin.put(
        &format!("/{dir}/index.m3u8"),
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\na.ts\n#EXTINF:2,\nb.ts\n#EXT-X-ENDLIST\n",
        MPEGURL,
    );
    for s in ["a", "b"] {
        origin.put(&format!("/{dir}/{s}.ts"), vec![1u8; segment], "video/mp2t");
    }
    origin.put(
        &format!("/{dir}/master.m3u8"),
        "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nindex.m3u8\n",
        MPEGURL,
    );
}

#[tokio::test]
async fn metrics_parse_and_agree_with_stats() {
    let origin = Origin::start().await;
    put_stream(&origin, "one", 3000);
    put_stream(&origin, "two", 7000);
    let proxy = Proxy::start().await;
    let mut ids = vec![];
    for dir in ["one", "two"] {
        let created = proxy
            .create_stream(&origin.url(&format!("/{dir}/master.m3u8")))
            .await;
        ids.push(created["stream_id"].as_str().unwrap().to_string());
    }
    for (n, id) in ids.iter().enumerate() {
        for viewer in 0..=n {
            Player::new(Some("mpv"), Some(&format!("v{viewer}")))
                .play(&proxy, id)
                .await;
        }
    }
    let res = proxy
        .http
        .post(proxy.url(&format!("/streams/{}/failover", ids[0])))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::BAD_REQUEST,
        "no backup to switch to"
    );

    let stats: Value = proxy.get_json("/stats").await;
    let page = scrape(&proxy).await;
    let m = values(&page);
    let p = &stats["proxy"];
    let num = |v: &Value| v.as_f64().unwrap();
    assert_eq!(
        m["m3u_proxy_bytes_served_total"],
        num(&p["total_bytes_served"])
    );
    assert_eq!(
        m["m3u_proxy_segments_served_total"],
        num(&p["total_segments_served"])
    );
    assert_eq!(m["m3u_proxy_segments_served_total"], 6.0);
    assert_eq!(m["m3u_proxy_streams"], 2.0);
    assert_eq!(m["m3u_proxy_clients"], num(&p["total_clients"]));
    assert_eq!(m["m3u_proxy_active_clients"], num(&p["active_clients"]));
    // v0 plays both streams: a client on each.
    assert_eq!(m["m3u_proxy_active_clients"], 3.0, "v0 twice and v1");
    assert_eq!(m["m3u_proxy_active_streams"], num(&p["active_streams"]));
    assert_eq!(m["m3u_proxy_active_streams"], 2.0);
    assert_eq!(m["m3u_proxy_failovers_total"], 0.0);
    assert_eq!(m["m3u_proxy_upstream_errors_total"], 0.0);
    for s in stats["streams"].as_array().unwrap() {
        let id = s["stream_id"].as_str().unwrap();
        let series = |name: &str| m[&format!("{name}{{{id}}}")];
        assert_eq!(
            series("m3u_proxy_stream_bytes_served_total"),
            num(&s["total_bytes_served"])
        );
        assert_eq!(
            series("m3u_proxy_stream_segments_served_total"),
            num(&s["total_segments_served"])
        );
        assert_eq!(series("m3u_proxy_stream_clients"), num(&s["client_count"]));
        assert_eq!(series("m3u_proxy_stream_errors_total"), 0.0);
        assert_eq!(series("m3u_proxy_stream_failover_index"), 0.0);
    }
    assert_eq!(
        m[&format!("m3u_proxy_stream_segments_served_total{{{}}}", ids[1])],
        4.0
    );
    // Requests are counted by route template, not by URL.
    let playlists = page
        .samples
        .iter()
        .find(|s| {
            s.metric == "m3u_proxy_requests_total"
                && s.labels.get("route") == Some("/hls/:id/playlist.m3u8")
                && s.labels.get("status") == Some("2xx")
        })
        .expect("playlist requests");
    assert!(matches!(playlists.value, Prom::Counter(v) if v == 3.0));
    let latency = page
        .samples
        .iter()
        .find(|s| {
            s.metric == "m3u_proxy_upstream_latency_seconds"
                && s.labels.get("kind") == Some("media")
        })
        .expect("a media latency histogram");
    match &latency.value {
        Prom::Histogram(buckets) => {
            // Six segment requests, four distinct segments: the shared cache fetched each once.
            assert_eq!(
                buckets.last().unwrap().count,
                4.0,
                "one per upstream segment fetch"
            )
        }
        other => panic!("not a histogram: {other:?}"),
    }

    let res = proxy
        .http
        .delete(proxy.url(&format!("/streams/{}", ids[0])))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let after = scrape(&proxy).await;
    let gone: Vec<_> = after
        .samples
        .iter()
        .filter(|s| s.labels.get("stream_id") == Some(ids[0].as_str()))
        .map(|s| s.metric.clone())
        .collect();
    assert!(
        gone.is_empty(),
        "series of a deleted stream remain: {gone:?}"
    );
    let m = values(&after);
    assert_eq!(m["m3u_proxy_streams"], 1.0);
    assert!(m.contains_key(&format!(
        "m3u_proxy_stream_bytes_served_total{{{}}}",
        ids[1]
    )));
    // Proxy-wide totals keep what the deleted stream served.
    assert_eq!(
        m["m3u_proxy_bytes_served_total"],
        num(&p["total_bytes_served"])
    );
}

#[tokio::test]
async fn per_stream_series_are_capped_with_watched_streams_kept() {
    let origin = Origin::start().await;
    put_stream(&origin, "watched", 100);
    let proxy = Proxy::start().await;
    let cap = m3u_proxy::api::MAX_STREAM_SERIES;
    let mut unwatched = vec![];
    for n in 0..cap {
        let created = proxy
            .create_stream(&format!("http://127.0.0.1:9/ch{n}.m3u8"))
            .await;
        unwatched.push(created["stream_id"].as_str().unwrap().to_string());
    }
    let watched = proxy
        .create_stream(&origin.url("/watched/master.m3u8"))
        .await;
    let watched = watched["stream_id"].as_str().unwrap();
    Player::new(None, Some("v")).play(&proxy, watched).await;

    let m = values(&scrape(&proxy).await);
    assert_eq!(m["m3u_proxy_streams"], (cap + 1) as f64);
    assert_eq!(m["m3u_proxy_stream_series_omitted"], 1.0);
    let has = |id: &str| m.contains_key(&format!("m3u_proxy_stream_bytes_served_total{{{id}}}"));
    assert!(has(watched), "a watched stream keeps its series");
    assert!(has(&unwatched[0]));
    assert!(
        !has(&unwatched[cap - 1]),
        "the newest unwatched stream is left out"
    );
    let per_stream = m
        .keys()
        .filter(|k| k.starts_with("m3u_proxy_stream_bytes_served_total{"))
        .count();
    assert_eq!(per_stream, cap);
}
