//! Measures a 50,000-channel list: how long `POST /playlists` takes to fetch, judge and
//! register it, how long `GET /playlists/{id}/playlist.m3u` takes to write it, and how much
//! resident memory the proxy holds for it, through a real server on 127.0.0.1 with the list
//! served by a local origin (whose direct fetch time is given for comparison). Run in
//! release:
//!
//! ```text
//! cargo run --release --example channel_list_scale [CHANNELS] [ROUNDS]
//! ```

use std::time::{Duration, Instant};

use m3u_proxy::config::Config;
use serde_json::{json, Value};

/// Resident set size of this process in bytes, from `/proc/self/statm`.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// A provider-shaped list: every channel with id, name, logo, group and number, some with
/// catchup attributes and `#EXTVLCOPT`, direct and HLS URLs.
fn list(channels: usize) -> String {
    let mut out = String::from("#EXTM3U url-tvg=\"http://epg.example/guide.xml.gz\"\n");
    for n in 0..channels {
        out.push_str(&format!(
            "#EXTINF:-1 tvg-id=\"ch{n}.example\" tvg-name=\"Channel {n}\" \
             tvg-logo=\"http://logos.example/{n}.png\" tvg-chno=\"{n}\" \
             group-title=\"Group {}\"{},Channel {n} HD\n",
            n % 40,
            if n % 5 == 0 {
                " catchup=\"default\" catchup-days=\"7\""
            } else {
                ""
            }
        ));
        if n % 10 == 0 {
            out.push_str("#EXTVLCOPT:http-user-agent=Mozilla/5.0 (Player)\n");
        }
        if n % 2 == 0 {
            out.push_str(&format!(
                "http://provider.example:8080/live/user/pass/{n}.ts\n"
            ));
        } else {
            out.push_str(&format!(
                "http://provider.example:8080/live/user/pass/{n}.m3u8\n"
            ));
        }
    }
    out
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let channels: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50_000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let body = list(channels);
    let body_len = body.len();

    let origin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin_addr = origin.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/list.m3u",
        axum::routing::get(move || {
            let body = body.clone();
            async move { body }
        }),
    );
    tokio::spawn(async move { axum::serve(origin, app).await.unwrap() });
    let list_url = format!("http://{origin_addr}/list.m3u");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let config = Config {
        host: [127, 0, 0, 1].into(),
        port: 0,
        secret: Some("bench".into()),
        ..Config::default()
    };
    tokio::spawn(async move {
        m3u_proxy::server::serve(listener, config, std::future::pending())
            .await
            .unwrap()
    });
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    // Wait for the server, and warm the client's connection pool.
    while http.get(format!("{base}/health")).send().await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut direct = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let got = http
            .get(&list_url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(got.len(), body_len);
        direct.push(t.elapsed());
    }

    let rss_before = rss_bytes();
    let mut imports = Vec::new();
    let mut rss_after = 0;
    let mut id = String::new();
    for round in 0..rounds {
        if round > 0 {
            let res = http
                .delete(format!("{base}/playlists/{id}"))
                .send()
                .await
                .unwrap();
            assert!(res.status().is_success());
        }
        let t = Instant::now();
        let res = http
            .post(format!("{base}/playlists"))
            .json(&json!({"name": "big", "url": list_url}))
            .send()
            .await
            .unwrap();
        let elapsed = t.elapsed();
        assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
        let info: Value = res.json().await.unwrap();
        assert_eq!(info["channel_count"], channels);
        id = info["id"].as_str().unwrap().to_string();
        imports.push(elapsed);
        if round == 0 {
            rss_after = rss_bytes();
        }
    }

    let mut outputs = Vec::new();
    let mut out_len = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        let out = http
            .get(format!("{base}/playlists/{id}/playlist.m3u"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        outputs.push(t.elapsed());
        out_len = out.len();
    }

    let mut refreshes = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let res = http
            .post(format!("{base}/playlists/{id}/refresh"))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success());
        refreshes.push(t.elapsed());
    }

    // For comparison: what the registry alone holds for as many streams with the same
    // metadata, registered directly (after everything else, so it does not skew the above).
    let registry = m3u_proxy::registry::Registry::new(b"bench");
    let rss_registry = rss_bytes();
    for n in 0..channels {
        registry.upsert_quietly(m3u_proxy::stream::StreamSettings {
            original_url: format!("http://provider.example:8080/live/user/pass/{n}.ts")
                .parse()
                .unwrap(),
            failover_urls: vec![],
            user_agent: None,
            headers: Default::default(),
            metadata: Some(
                json!({"playlist": "pl-0123456789ab", "playlist_name": "big",
                "tvg_id": format!("ch{n}.example"), "tvg_name": format!("Channel {n}"),
                "group": format!("Group {}", n % 40), "channel_number": n.to_string()})
                .into(),
            ),
            stream_type: m3u_proxy::model::StreamType::Direct,
            provider: None,
            options: Default::default(),
        });
    }
    let registry_mb = rss_bytes().saturating_sub(rss_registry) as f64 / (1024.0 * 1024.0);

    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    println!(
        "channels: {channels}, list {:.1} MB, output {:.1} MB, {rounds} rounds (medians)",
        body_len as f64 / 1e6,
        out_len as f64 / 1e6
    );
    println!("| what | median |");
    println!("| --- | --- |");
    println!(
        "| origin fetch of the list, direct | {} |",
        ms(median(direct))
    );
    println!(
        "| import (`POST /playlists`, fetch included) | {} |",
        ms(median(imports))
    );
    println!("| refresh, list unchanged | {} |", ms(median(refreshes)));
    println!(
        "| proxied M3U output (`GET /playlists/{{id}}/playlist.m3u`) | {} |",
        ms(median(outputs))
    );
    println!(
        "| resident memory added by the first import | {:.1} MB |",
        (rss_after.saturating_sub(rss_before)) as f64 / (1024.0 * 1024.0)
    );
    println!(
        "| of which the registry alone, same streams registered directly | {registry_mb:.1} MB |"
    );
}
