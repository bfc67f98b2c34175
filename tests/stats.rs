//! Viewers and statistics: exact bytes and segments per client, per stream and in the
//! proxy totals; viewers who hang up; `/clients`, `/streams/{id}`, `/health`; client
//! addresses behind trusted proxies.

use std::time::Duration;

use serde_json::Value;

use crate::util::origin::{Fault, Origin};
use crate::util::player::{Played, Player};
use crate::util::{eventually, Proxy};

const MPEGURL: &str = "application/vnd.apple.mpegurl";

/// A VOD stream: master → one variant → segments of the given sizes (`seg{i}.ts`).
async fn hls_origin(segment_sizes: &[usize]) -> Origin {
    let origin = Origin::start().await;
    origin.put(
        "/vod/master.m3u8",
        "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000\nlow/index.m3u8\n",
        MPEGURL,
    );
    let mut media = String::from("#EXTM3U\n#EXT-X-TARGETDURATION:4\n");
    for (i, size) in segment_sizes.iter().enumerate() {
        media.push_str(&format!("#EXTINF:4.0,\nseg{i}.ts\n"));
        origin.put(
            &format!("/vod/low/seg{i}.ts"),
            (0..*size).map(|b| (b % 251) as u8).collect::<Vec<_>>(),
            "video/mp2t",
        );
    }
    media.push_str("#EXT-X-ENDLIST\n");
    origin.put("/vod/low/index.m3u8", media, MPEGURL);
    origin
}

async fn stream_id(proxy: &Proxy, origin: &Origin) -> String {
    let created = proxy.create_stream(&origin.url("/vod/master.m3u8")).await;
    created["stream_id"].as_str().unwrap().to_string()
}

/// The client with this user agent in `/clients`.
fn by_user_agent<'a>(clients: &'a Value, ua: &str) -> &'a Value {
    clients["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["user_agent"] == ua)
        .unwrap_or_else(|| panic!("no client with user agent {ua}: {clients}"))
}

/// Waits until no connection is open (a body's end reaches the player just before the
/// proxy releases the connection).
async fn all_closed(proxy: &Proxy) {
    eventually(Duration::from_secs(10), "connections to close", || async {
        let stats = proxy.get_json("/stats").await;
        (stats["proxy"]["active_connections"] == 0).then_some(())
    })
    .await
}

#[tokio::test]
async fn several_viewers_are_counted_exactly_per_client_per_stream_and_in_totals() {
    let origin = hls_origin(&[1000, 2000, 3000]).await;
    let proxy = Proxy::start().await;
    let id = stream_id(&proxy, &origin).await;

    // Two viewers named by client_id (same user agent), two told apart by user agent only.
    let alice = Player::new(Some("hls.js"), Some("alice"));
    let bob = Player::new(Some("hls.js"), Some("bob"));
    let vlc = Player::new(Some("VLC/3.0.18"), None);
    let kodi = Player::new(Some("Kodi/20.2"), None);
    let a = alice.play(&proxy, &id).await;
    // Alice watches the first segment again: a second media request, counted again.
    let (playlists, segments) = alice.open(&proxy, &id).await;
    let again = alice.fetch(&segments[0]).await.len() as u64;
    let a_total = Played {
        bytes: a.bytes + playlists + again,
        segments: a.segments + 1,
    };
    let b = bob.play(&proxy, &id).await;
    let v = vlc.play(&proxy, &id).await;
    let k = kodi.play(&proxy, &id).await;
    assert_eq!(v.segments, 3);
    assert_eq!(
        v.bytes - 6000,
        k.bytes - 6000,
        "same playlists, same length"
    );
    all_closed(&proxy).await;

    let clients = proxy.get_json("/clients").await;
    assert_eq!(clients["total"], 4, "{clients}");
    let vlc_id = by_user_agent(&clients, "VLC/3.0.18")["client_id"]
        .as_str()
        .unwrap()
        .to_string();
    let kodi_id = by_user_agent(&clients, "Kodi/20.2")["client_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(vlc_id, kodi_id, "user agents tell unnamed viewers apart");
    for (client_id, ua, played) in [
        ("alice", "hls.js", a_total),
        ("bob", "hls.js", b),
        (vlc_id.as_str(), "VLC/3.0.18", v),
        (kodi_id.as_str(), "Kodi/20.2", k),
    ] {
        let c = proxy.get_json(&format!("/clients/{client_id}")).await;
        assert_eq!(c["client_id"], client_id);
        assert_eq!(c["stream_id"], id.as_str());
        assert_eq!(c["user_agent"], ua);
        assert_eq!(c["ip_address"], "127.0.0.1");
        assert_eq!(c["bytes_served"], played.bytes, "{client_id}: {c}");
        assert_eq!(c["segments_served"], played.segments, "{client_id}");
        assert_eq!(c["active_connections"], 0);
        assert_eq!(c["is_active"], true, "requested within CLIENT_TIMEOUT");
        let first = chrono::DateTime::parse_from_rfc3339(c["first_seen"].as_str().unwrap());
        let last = chrono::DateTime::parse_from_rfc3339(c["last_seen"].as_str().unwrap());
        assert!(first.unwrap() <= last.unwrap());
    }

    let total_bytes = a_total.bytes + b.bytes + v.bytes + k.bytes;
    let total_segments = a_total.segments + b.segments + v.segments + k.segments;
    assert_eq!(total_segments, 13);

    let detail = proxy.get_json(&format!("/streams/{id}")).await;
    assert_eq!(detail["client_count"], 4);
    assert_eq!(detail["stream"]["client_count"], 4);
    assert_eq!(detail["stream"]["total_bytes_served"], total_bytes);
    assert_eq!(detail["stream"]["total_segments_served"], total_segments);
    assert_eq!(detail["stream"]["error_count"], 0);
    assert_eq!(detail["stream"]["active_connections"], 0);
    assert_eq!(detail["stream"]["is_active"], true);
    let mut listed: Vec<&str> = detail["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap())
        .collect();
    listed.sort_unstable();
    let mut expected = vec!["alice", "bob", vlc_id.as_str(), kodi_id.as_str()];
    expected.sort_unstable();
    assert_eq!(listed, expected);
    let detail_bytes: u64 = detail["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["bytes_served"].as_u64().unwrap())
        .sum();
    assert_eq!(detail_bytes, total_bytes);

    let stats = proxy.get_json("/stats").await;
    let p = &stats["proxy"];
    assert_eq!(p["total_bytes_served"], total_bytes);
    assert_eq!(p["total_segments_served"], total_segments);
    assert_eq!(p["total_streams"], 1);
    assert_eq!(p["active_streams"], 1);
    assert_eq!(p["total_clients"], 4);
    assert_eq!(p["active_clients"], 4);
    assert_eq!(p["total_errors"], 0);
    assert_eq!(stats["streams"][0]["total_bytes_served"], total_bytes);
    assert_eq!(stats["clients"].as_array().unwrap().len(), 4);

    let health = proxy.get_json("/health").await;
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(health["streams"], 1);
    assert_eq!(health["clients"], 4);
    assert_eq!(health["active_connections"], 0);
    assert_eq!(health["total_bytes_served"], total_bytes);
    assert!(health["uptime_seconds"].is_u64());
    assert!(chrono::DateTime::parse_from_rfc3339(health["started_at"].as_str().unwrap()).is_ok());
    // Five requests of the first segment, one upstream fetch: the shared cache serves the
    // others, and each viewer was still counted for what it got (above).
    assert_eq!(origin.hits("/vod/low/seg0.ts"), 1);
}

#[tokio::test]
async fn a_viewer_who_hangs_up_midway_is_counted_for_what_it_was_sent() {
    const BIG: usize = 48 * 1024 * 1024;
    let origin = hls_origin(&[BIG, 400_000]).await;
    // The second segment's origin sends 100,000 bytes and then goes quiet.
    origin.fault("/vod/low/seg1.ts", Fault::StallAfter(100_000));
    let proxy = Proxy::start().await;
    let id = stream_id(&proxy, &origin).await;
    let viewer = Player::new(Some("ffplay"), Some("quitter"));
    let (playlist_bytes, segments) = viewer.open(&proxy, &id).await;

    // A large segment: read a little, then hang up.
    let mut res = viewer.get(&segments[0]).await;
    let mut read = 0u64;
    while read < 256 * 1024 {
        read += res.chunk().await.unwrap().expect("more body").len() as u64;
    }
    drop(res);
    let client = eventually(Duration::from_secs(10), "the hang-up", || async {
        let c = proxy.get_json("/clients/quitter").await;
        (c["active_connections"] == 0).then_some(c)
    })
    .await;
    let counted = client["bytes_served"].as_u64().unwrap() - playlist_bytes;
    assert!(counted >= read, "counted {counted} < read {read}");
    assert!(counted < BIG as u64, "counted the whole segment: {counted}");
    assert_eq!(client["segments_served"], 1);

    // A segment whose origin stalls: the viewer got exactly 100,000 bytes and gives up.
    let mut res = viewer.get(&segments[1]).await;
    let mut read_stalled = 0u64;
    while read_stalled < 100_000 {
        read_stalled += res.chunk().await.unwrap().expect("more body").len() as u64;
    }
    assert_eq!(read_stalled, 100_000);
    drop(res);
    let after = eventually(Duration::from_secs(10), "the second hang-up", || async {
        let c = proxy.get_json("/clients/quitter").await;
        (c["active_connections"] == 0).then_some(c)
    })
    .await;
    assert_eq!(
        after["bytes_served"].as_u64().unwrap(),
        playlist_bytes + counted + 100_000
    );
    assert_eq!(after["segments_served"], 2);
    let stream = proxy.get_json(&format!("/streams/{id}")).await;
    assert_eq!(stream["stream"]["active_connections"], 0);
    assert_eq!(
        stream["stream"]["total_bytes_served"],
        after["bytes_served"]
    );
    all_closed(&proxy).await;
}

#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    let origin = hls_origin(&[500]).await;
    let untrusting = Proxy::start().await;
    // This proxy's balancer (127.0.0.1) sits behind a trusted CDN edge (10.0.0.1).
    let trusting = Proxy::start_with(|c| {
        c.trusted_proxies = vec!["127.0.0.1".parse().unwrap(), "10.0.0.1".parse().unwrap()]
    })
    .await;
    for proxy in [&untrusting, &trusting] {
        let id = stream_id(proxy, &origin).await;
        let behind_lb = Player::new(Some("TiviMate"), Some("lb"))
            .with_header("x-forwarded-for", "203.0.113.7, 10.0.0.1");
        // A viewer that claims an address of its own: the balancer appends the real one.
        let liar = Player::new(Some("TiviMate"), Some("liar"))
            .with_header("x-forwarded-for", "192.0.2.99, 198.51.100.20");
        liar.play(proxy, &id).await;
        behind_lb.play(proxy, &id).await;
        let real_ip =
            Player::new(Some("TiviMate"), Some("real")).with_header("x-real-ip", "198.51.100.9");
        real_ip.play(proxy, &id).await;
        // Two households with the same player behind the same balancer: two viewers.
        for ip in ["192.0.2.1", "192.0.2.2"] {
            Player::new(Some("SmartTV"), None)
                .with_header("x-forwarded-for", ip)
                .play(proxy, &id)
                .await;
        }
    }
    let ip_of = |proxy: &Proxy, id: &'static str| {
        let proxy_url = proxy.url(&format!("/clients/{id}"));
        let http = proxy.http.clone();
        async move {
            let c: Value = http
                .get(proxy_url)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            c["ip_address"].as_str().unwrap().to_string()
        }
    };
    assert_eq!(ip_of(&untrusting, "lb").await, "127.0.0.1");
    assert_eq!(ip_of(&untrusting, "real").await, "127.0.0.1");
    assert_eq!(ip_of(&trusting, "lb").await, "203.0.113.7");
    assert_eq!(ip_of(&trusting, "real").await, "198.51.100.9");
    assert_eq!(ip_of(&untrusting, "liar").await, "127.0.0.1");
    assert_eq!(ip_of(&trusting, "liar").await, "198.51.100.20");
    let smart_tvs = |clients: Value| -> Vec<String> {
        let mut ips: Vec<String> = clients["clients"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["user_agent"] == "SmartTV")
            .map(|c| c["ip_address"].as_str().unwrap().to_string())
            .collect();
        ips.sort();
        ips
    };
    assert_eq!(
        smart_tvs(untrusting.get_json("/clients").await),
        vec!["127.0.0.1"],
        "an untrusted peer's header changes nothing: one viewer"
    );
    assert_eq!(
        smart_tvs(trusting.get_json("/clients").await),
        vec!["192.0.2.1", "192.0.2.2"]
    );
}
