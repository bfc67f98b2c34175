use serde_json::json;
fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    s.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
}
fn measure<T>(name: &str, n: usize, mut f: impl FnMut(usize) -> T) -> Vec<T> {
    let before = rss();
    let v: Vec<T> = (0..n).map(&mut f).collect();
    let after = rss();
    println!("{name}: {:.0} B each", (after - before) as f64 / n as f64);
    v
}
#[tokio::main]
async fn main() {
    let n = 50_000;
    use std::mem::size_of;
    println!("sizes: entry {} settings {} cursor {} listings {} headermap {} url {} options {} counters {} stored {}",
        size_of::<m3u_proxy::registry::StreamEntry>(), size_of::<m3u_proxy::stream::StreamSettings>(),
        size_of::<m3u_proxy::stream::UrlCursor>(), size_of::<m3u_proxy::stream::Listings>(),
        size_of::<axum::http::HeaderMap>(), size_of::<url::Url>(), size_of::<m3u_proxy::stream::StreamOptions>(),
        size_of::<m3u_proxy::registry::Counters>(), size_of::<m3u_proxy::registry::Stored>());
    let _a = measure("metadata", n, |n| {
        json!({"playlist": "pl-0123456789ab", "playlist_name": "big",
                "tvg_id": format!("ch{n}.example"), "tvg_name": format!("Channel {n}"),
                "group": format!("Group {}", n % 40), "channel_number": n.to_string()})
    });
    let _b = measure("url", n, |n| {
        url::Url::parse(&format!(
            "http://provider.example:8080/live/user/pass/{n}.ts"
        ))
        .unwrap()
    });
    let _c = measure("watch", n, |_| tokio::sync::watch::Sender::new(0u64));
    let parent = tokio_util::sync::CancellationToken::new();
    let _d = measure("child token", n, |_| parent.child_token());
    let _e = measure("id string", n, |n| format!("{:024x}", n));
    let registry = m3u_proxy::registry::Registry::new(b"bench");
    let _f = measure("registry no metadata", n, |n| {
        registry.upsert_quietly(m3u_proxy::stream::StreamSettings {
            original_url: format!("http://provider.example:8080/live/user/pass/{n}.ts").parse().unwrap(),
            failover_urls: vec![], user_agent: None, headers: Default::default(), metadata: Some(json!({"playlist": "pl-0123456789ab", "playlist_name": "big","tvg_id": format!("ch{n}.example"), "tvg_name": format!("Channel {n}"),"group": format!("Group {}", n % 40), "channel_number": n.to_string()}).into()),
            stream_type: m3u_proxy::model::StreamType::Direct, provider: None, options: Default::default(),
        }).0
    });
}
