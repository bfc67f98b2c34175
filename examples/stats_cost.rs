//! Measures what tracking viewers costs: resident memory per idle client in the registry,
//! and the latency and size of `GET /stats` (and friends) with 10,000 clients through a
//! real server on 127.0.0.1. Run in release:
//!
//! ```text
//! cargo run --release --example stats_cost
//! ```
//!
//! Figures go to stdout as Markdown rows for `docs/bench-stats.md`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use m3u_proxy::config::Config;
use m3u_proxy::model::StreamType;
use m3u_proxy::registry::{Registry, Viewing};
use m3u_proxy::server::build_state;
use m3u_proxy::stream::StreamSettings;

/// A typical player's user agent (hls.js in a desktop browser), 101 bytes.
const USER_AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36";

fn settings(n: usize) -> StreamSettings {
    StreamSettings {
        original_url: format!("http://origin.example/live/channel-{n}/index.m3u8")
            .parse()
            .unwrap(),
        failover_urls: vec![],
        user_agent: None,
        headers: Default::default(),
        metadata: None,
        stream_type: StreamType::Hls,
        provider: None,
        options: Default::default(),
    }
}

/// Resident set size of this process in bytes, from `/proc/self/statm`.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Registers viewers number `clients` (each with its own address) spread over `streams`
/// streams, each having been served one segment, the way the playback routes do it.
fn populate(registry: &Arc<Registry>, streams: usize, clients: std::ops::Range<usize>) {
    let entries: Vec<_> = (0..streams)
        .map(|n| registry.upsert(settings(n)).0)
        .collect();
    for i in clients {
        let stream = &entries[i % streams];
        let ip = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        let id = registry.derive_client_id(&ip, USER_AGENT, &stream.id);
        let (client, _) = registry.client(&id, &stream.id, &ip, USER_AGENT);
        let viewing = Viewing::new(registry.clone(), stream.clone(), client);
        viewing.add_segment();
        viewing.add_bytes(1_500_000);
    }
}

fn memory_per_idle_client() {
    const CLIENTS: usize = 100_000;
    let registry = Arc::new(Registry::new(b"bench"));
    // Warm the allocator and the maps' first growth steps so they are not billed per client.
    populate(&registry, 100, 0..1_000);
    let before = rss_bytes();
    let start = Instant::now();
    populate(&registry, 100, 1_000..1_000 + CLIENTS);
    let took = start.elapsed();
    let after = rss_bytes();
    let per = (after - before) as f64 / CLIENTS as f64;
    println!(
        "| memory per tracked idle client ({CLIENTS} clients, 100 streams, {}-byte user agent) | {per:.0} B (RSS {:.1} MB → {:.1} MB; registered in {:.0} ms) |",
        USER_AGENT.len(),
        before as f64 / 1e6,
        after as f64 / 1e6,
        took.as_secs_f64() * 1e3
    );
    assert_eq!(registry.client_count(), CLIENTS + 1_000);
}

async fn serve(config: Config) -> (SocketAddr, Arc<Registry>) {
    let state = build_state(config).unwrap();
    let registry = state.registry.clone();
    let app = m3u_proxy::api::app(state).into_make_service_with_connect_info::<SocketAddr>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, registry)
}

/// Median and 90th percentile latency of `runs` sequential GETs, and the body size.
async fn measure(http: &reqwest::Client, url: &str, runs: usize) -> (Duration, Duration, usize) {
    let mut times = Vec::with_capacity(runs);
    let mut size = 0;
    for _ in 0..runs {
        let start = Instant::now();
        let body = http.get(url).send().await.unwrap().bytes().await.unwrap();
        times.push(start.elapsed());
        size = body.len();
    }
    times.sort();
    (times[runs / 2], times[runs * 9 / 10], size)
}

async fn stats_latency() {
    const CLIENTS: usize = 10_000;
    const STREAMS: usize = 100;
    const RUNS: usize = 50;
    let config = Config {
        secret: Some("bench".into()),
        ..Config::default()
    };
    let (addr, registry) = serve(config).await;
    populate(&registry, STREAMS, 0..CLIENTS);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let one_stream = registry.streams()[0].id.clone();
    for (label, path) in [
        ("GET /stats", "/stats".to_string()),
        ("GET /clients", "/clients".to_string()),
        ("GET /streams", "/streams".to_string()),
        (
            "GET /streams/{id} (100 clients)",
            format!("/streams/{one_stream}"),
        ),
        ("GET /metrics", "/metrics".to_string()),
        ("GET /health", "/health".to_string()),
    ] {
        let url = format!("http://{addr}{path}");
        measure(&http, &url, 5).await; // warm-up
        let (median, p90, size) = measure(&http, &url, RUNS).await;
        let size = if size >= 10_240 {
            format!("{:.0} KB", size as f64 / 1024.0)
        } else {
            format!("{size} B")
        };
        println!(
            "| {label} with {CLIENTS} clients on {STREAMS} streams | median {:.2} ms, p90 {:.2} ms over {RUNS} requests; {size} |",
            median.as_secs_f64() * 1e3,
            p90.as_secs_f64() * 1e3,
        );
    }
}

fn main() {
    println!("| measure | result |");
    println!("| --- | --- |");
    memory_per_idle_client();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(stats_latency());
}
