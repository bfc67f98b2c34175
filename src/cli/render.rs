//! PURE: the API's answers as text for people. Every function takes `now` so ages are
//! testable, and returns a string ending in a newline. No I/O, no API calls.

use chrono::{DateTime, Utc};

use super::format::{self, Align, Table};
use crate::client::Created;
use crate::model::{
    ClientInfo, FailoverDone, Health, PlaylistInfo, ProviderInfo, Stats, StreamDeleted,
    StreamDetail, StreamInfo, StreamType,
};

/// URLs in tables are cut to this many characters; `info` shows them whole.
pub const URL_WIDTH: usize = 48;

/// The path a player opens for a stream (relative to the server's base URL).
pub fn play_path(stream_type: StreamType, stream_id: &str) -> String {
    match stream_type {
        StreamType::Hls => format!("/hls/{stream_id}/playlist.m3u8"),
        StreamType::Direct => format!("/stream/{stream_id}"),
    }
}

/// `create`: what was registered and where to play it. `play_url` is absolute.
pub fn created(created: &Created, play_url: &str) -> String {
    let s = &created.stream;
    let verb = if created.is_new {
        "Created"
    } else {
        "Updated existing"
    };
    let mut pairs = vec![
        ("Play at", play_url.to_owned()),
        ("Type", s.stream_type.as_str().to_owned()),
        ("URL", s.original_url.clone()),
    ];
    for (i, url) in s.failover_urls.iter().enumerate() {
        pairs.push((if i == 0 { "Failover" } else { "" }, url.clone()));
    }
    if let Some(ua) = &s.user_agent {
        pairs.push(("User agent", ua.clone()));
    }
    format!(
        "{verb} stream {}\n{}",
        s.stream_id,
        indent(&format::fields(&pairs))
    )
}

/// `list` (and the streams part of `stats`).
pub fn stream_table(streams: &[StreamInfo], now: DateTime<Utc>) -> String {
    if streams.is_empty() {
        return "No streams.\n".to_owned();
    }
    let rows: Vec<&StreamInfo> = streams.iter().collect();
    let table = stream_rows(&rows, now, "ID", |s| format::rate(s.bytes_per_second));
    format!("{table}{}\n", count(streams.len(), "stream"))
}

/// The stream table shared by `list` and `monitor`, which differ in the first column's
/// title and in where a stream's rate comes from.
pub fn stream_rows(
    streams: &[&StreamInfo],
    now: DateTime<Utc>,
    id_title: &'static str,
    rate: impl Fn(&StreamInfo) -> String,
) -> String {
    let mut table = Table::new(&[
        (id_title, Align::Left),
        ("TYPE", Align::Left),
        ("VIEWERS", Align::Right),
        ("SERVED", Align::Right),
        ("RATE", Align::Right),
        ("ERRORS", Align::Right),
        ("FAILOVERS", Align::Right),
        ("LAST ACCESS", Align::Left),
        ("URL", Align::Left),
    ]);
    for s in streams {
        table.row(vec![
            s.stream_id.clone(),
            s.stream_type.as_str().to_owned(),
            s.client_count.to_string(),
            format::bytes(s.total_bytes_served),
            rate(s),
            s.error_count.to_string(),
            s.failover_count.to_string(),
            format::ago(s.last_access, now),
            format::truncate_middle(&s.current_url, URL_WIDTH),
        ]);
    }
    table.render()
}

/// `info ID`: every field of the stream, then its viewers.
pub fn stream_detail(detail: &StreamDetail, play_url: &str, now: DateTime<Utc>) -> String {
    let s = &detail.stream;
    let urls = 1 + s.failover_urls.len();
    let mut pairs = vec![
        ("Stream", s.stream_id.clone()),
        ("Type", s.stream_type.as_str().to_owned()),
        ("Play at", play_url.to_owned()),
        ("Status", status(s)),
        ("Original URL", s.original_url.clone()),
        (
            "Current URL",
            format!("{} (#{} of {urls})", s.current_url, s.failover_index + 1),
        ),
    ];
    for (i, url) in s.failover_urls.iter().enumerate() {
        pairs.push((if i == 0 { "Failover URLs" } else { "" }, url.clone()));
    }
    pairs.extend([
        (
            "User agent",
            s.user_agent.clone().unwrap_or_else(|| "(default)".into()),
        ),
        ("Headers", header_names(&s.header_names)),
        (
            "Served",
            served(
                s.total_bytes_served,
                s.total_segments_served,
                s.bytes_per_second,
            ),
        ),
        ("Errors", s.error_count.to_string()),
        ("Failovers", s.failover_count.to_string()),
        ("Created", format::timestamp(s.created_at, now)),
        ("Last access", format::timestamp(s.last_access, now)),
    ]);
    if let Some(metadata) = &s.metadata {
        pairs.push(("Metadata", metadata.to_string()));
    }
    format!(
        "{}\n{}",
        format::fields(&pairs),
        client_table(&detail.clients, now)
    )
}

/// `clients` (and the viewers of `info` and `stats`).
pub fn client_table(clients: &[ClientInfo], now: DateTime<Utc>) -> String {
    if clients.is_empty() {
        return "No clients.\n".to_owned();
    }
    let mut table = Table::new(&[
        ("CLIENT", Align::Left),
        ("STREAM", Align::Left),
        ("IP", Align::Left),
        ("SERVED", Align::Right),
        ("SEGMENTS", Align::Right),
        ("RATE", Align::Right),
        ("CONNS", Align::Right),
        ("LAST SEEN", Align::Left),
        ("USER AGENT", Align::Left),
    ]);
    for c in clients {
        table.row(vec![
            c.client_id.clone(),
            c.stream_id.clone().unwrap_or_else(|| "-".into()),
            c.ip_address.clone(),
            format::bytes(c.bytes_served),
            c.segments_served.to_string(),
            format::rate(c.bytes_per_second),
            c.active_connections.to_string(),
            format::ago(c.last_seen, now),
            format::truncate_middle(&c.user_agent, 32),
        ]);
    }
    format!("{}{}\n", table.render(), count(clients.len(), "client"))
}

/// `providers`.
pub fn provider_table(providers: &[ProviderInfo], now: DateTime<Utc>) -> String {
    if providers.is_empty() {
        return "No providers.\n".to_owned();
    }
    let mut table = Table::new(&[
        ("PROVIDER", Align::Left),
        ("CONNS", Align::Right),
        ("MAX", Align::Right),
        ("ON FULL", Align::Left),
        ("REFUSED", Align::Right),
        ("REPLACED", Align::Right),
        ("OLDEST SLOT", Align::Left),
        ("HOSTS", Align::Left),
    ]);
    for p in providers {
        let oldest = p.slots.iter().min_by_key(|s| s.since).map_or_else(
            || "-".to_owned(),
            |s| {
                let stream = s.stream_id.as_deref().unwrap_or(&s.kind);
                format!("{stream} ({})", format::ago(s.since, now))
            },
        );
        table.row(vec![
            p.name.clone(),
            p.active_connections.to_string(),
            p.max_connections.to_string(),
            p.on_full.as_str().to_owned(),
            p.rejections.to_string(),
            p.replacements.to_string(),
            oldest,
            format::truncate_middle(&p.hosts.join(","), 40),
        ]);
    }
    format!("{}{}\n", table.render(), count(providers.len(), "provider"))
}

/// `clients ID`.
pub fn client_detail(c: &ClientInfo, now: DateTime<Utc>) -> String {
    format::fields(&[
        ("Client", c.client_id.clone()),
        ("Stream", c.stream_id.clone().unwrap_or_else(|| "-".into())),
        ("IP address", c.ip_address.clone()),
        ("User agent", c.user_agent.clone()),
        (
            "Served",
            served(c.bytes_served, c.segments_served, c.bytes_per_second),
        ),
        ("Connections", c.active_connections.to_string()),
        ("First seen", format::timestamp(c.first_seen, now)),
        ("Last seen", format::timestamp(c.last_seen, now)),
    ])
}

/// `stats`: the proxy's totals, then every stream and every client.
pub fn stats(stats: &Stats, now: DateTime<Utc>) -> String {
    let p = &stats.proxy;
    let totals = format::fields(&[
        (
            "Proxy",
            format!(
                "m3u-proxy {}, up {}",
                p.version,
                format::duration(p.uptime_seconds)
            ),
        ),
        (
            "Streams",
            format!("{} ({} active)", p.total_streams, p.active_streams),
        ),
        (
            "Clients",
            format!("{} ({} active)", p.total_clients, p.active_clients),
        ),
        ("Connections", p.active_connections.to_string()),
        (
            "Served",
            served(
                p.total_bytes_served,
                p.total_segments_served,
                p.bytes_per_second,
            ),
        ),
        ("Errors", p.total_errors.to_string()),
        ("Failovers", p.total_failovers.to_string()),
    ]);
    format!(
        "{totals}\n{}\n{}",
        stream_table(&stats.streams, now),
        client_table(&stats.clients, now)
    )
}

/// `health`: one line.
pub fn health(h: &Health) -> String {
    format!(
        "{}: m3u-proxy {}, up {}, {}, {}, {}\n",
        h.status,
        h.version,
        format::duration(h.uptime_seconds),
        count(h.streams, "stream"),
        count(h.clients, "client"),
        count(h.active_connections as usize, "connection")
    )
}

/// `delete ID`.
pub fn deleted(d: &StreamDeleted) -> String {
    format!("Deleted stream {}\n", d.stream_id)
}

/// `playlists`: one row per channel list.
pub fn playlist_table(lists: &[PlaylistInfo], now: DateTime<Utc>) -> String {
    if lists.is_empty() {
        return "No channel lists.\n".to_owned();
    }
    let mut table = Table::new(&[
        ("ID", Align::Left),
        ("NAME", Align::Left),
        ("CHANNELS", Align::Right),
        ("ERRORS", Align::Right),
        ("REFRESHED", Align::Left),
        ("LAST RESULT", Align::Left),
        ("URL", Align::Left),
    ]);
    for l in lists {
        table.row(vec![
            l.id.clone(),
            l.name.clone(),
            l.channel_count.to_string(),
            l.last_result.counts.errors.to_string(),
            format::ago(l.last_refresh, now),
            result_word(l),
            format::truncate_middle(l.url.as_deref().unwrap_or("(uploaded)"), URL_WIDTH),
        ]);
    }
    format!("{}{}\n", table.render(), count(lists.len(), "channel list"))
}

fn result_word(l: &PlaylistInfo) -> String {
    match (&l.last_result.ok, &l.last_result.code) {
        (true, _) => "ok".to_owned(),
        (false, Some(code)) => format!("failed ({code})"),
        (false, None) => "failed".to_owned(),
    }
}

/// `import` and `refresh`: what the list holds now and what changed.
pub fn playlist_summary(l: &PlaylistInfo, playlist_url: &str) -> String {
    let c = &l.last_result.counts;
    let mut out = format!(
        "Channel list {} ({}): {} channels in {} groups\n  \
         added {}, removed {}, updated {}, unchanged {}, refused {}\n  Playlist: {playlist_url}\n",
        l.id,
        l.name,
        l.channel_count,
        l.groups.len(),
        c.added,
        c.removed,
        c.updated,
        c.unchanged,
        c.errors,
    );
    for e in l.errors.iter().take(5) {
        out.push_str(&format!("  line {}: {} ({})\n", e.line, e.detail, e.code));
    }
    if l.errors.len() > 5 {
        out.push_str(&format!(
            "  ... and {} more refused entries\n",
            c.errors - 5
        ));
    }
    out
}

/// `failover ID`.
pub fn failover(f: &FailoverDone) -> String {
    format!(
        "Stream {} switched to URL #{}: {}\n  (was {})\n",
        f.stream_id,
        f.failover_index + 1,
        f.current_url,
        f.previous_url
    )
}

fn status(s: &StreamInfo) -> String {
    let state = if s.is_active { "active" } else { "idle" };
    format!(
        "{state}, {}, {}",
        count(s.client_count, "viewer"),
        count(s.active_connections as usize, "connection")
    )
}

fn header_names(names: &[String]) -> String {
    if names.is_empty() {
        "(none)".to_owned()
    } else {
        format!("{} (values hidden)", names.join(", "))
    }
}

fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}

/// The "Served" field of every detail view: bytes, segments and the current rate.
fn served(bytes: u64, segments: u64, bytes_per_second: f64) -> String {
    format!(
        "{} in {segments} segments, {}",
        format::bytes(bytes),
        format::rate(bytes_per_second)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::fixtures::{now, stream};

    fn client() -> ClientInfo {
        ClientInfo {
            client_id: "c1".into(),
            stream_id: Some("s1".into()),
            user_agent: "VLC/3.0.18".into(),
            ip_address: "127.0.0.1".into(),
            first_seen: now() - chrono::Duration::minutes(10),
            last_seen: now() - chrono::Duration::seconds(30),
            bytes_served: 1536,
            segments_served: 2,
            active_connections: 0,
            bytes_per_second: 0.0,
            is_active: true,
            editor: Default::default(),
            instance: None,
        }
    }

    #[test]
    fn stream_table_shows_sizes_rates_and_ages() {
        let text = stream_table(&[stream("s1", 12_900_000)], now());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("ID  TYPE  VIEWERS"), "{text}");
        for part in [
            "s1",
            "hls",
            "12.9 MB",
            "2.0 kB/s",
            "3m ago",
            "http://backup/live.m3u8",
        ] {
            assert!(lines[1].contains(part), "{part} missing in {text}");
        }
        assert_eq!(lines[2], "1 stream");
        assert_eq!(stream_table(&[], now()), "No streams.\n");
    }

    #[test]
    fn detail_shows_failover_position_and_hides_header_values() {
        let detail = StreamDetail {
            stream: stream("s1", 100),
            clients: vec![client()],
            client_count: 1,
        };
        let text = stream_detail(&detail, "http://p/hls/s1/playlist.m3u8", now());
        assert!(
            text.contains("Current URL    http://backup/live.m3u8 (#2 of 2)"),
            "{text}"
        );
        assert!(
            text.contains("Headers        Referer (values hidden)"),
            "{text}"
        );
        assert!(
            text.contains("Status         active, 2 viewers, 1 connection"),
            "{text}"
        );
        assert!(text.contains("(2h 0m ago)"), "{text}");
        assert!(text.contains("c1"), "{text}");
        assert!(text.contains("1.5 kB"), "{text}");
    }

    #[test]
    fn created_says_new_or_updated() {
        let stream = crate::model::StreamCreated {
            stream_id: "s1".into(),
            stream_type: StreamType::Direct,
            stream_endpoint: "/stream/s1".into(),
            playlist_url: "/hls/s1/playlist.m3u8".into(),
            direct_url: "/stream/s1".into(),
            original_url: "http://o/a.ts".into(),
            current_url: "http://o/a.ts".into(),
            failover_urls: vec!["http://b/a.ts".into(), "http://c/a.ts".into()],
            user_agent: Some("VLC".into()),
            created_at: now(),
            primary_url: "http://o/a.ts".into(),
            message: "Stream created".into(),
        };
        let mut c = Created {
            stream,
            is_new: true,
        };
        let text = created(&c, "http://p/stream/s1");
        assert_eq!(
            text,
            "Created stream s1\n  Play at     http://p/stream/s1\n  Type        direct\n  \
             URL         http://o/a.ts\n  Failover    http://b/a.ts\n              http://c/a.ts\n  \
             User agent  VLC\n"
        );
        c.is_new = false;
        assert!(created(&c, "x").starts_with("Updated existing stream s1\n"));
    }

    #[test]
    fn health_is_one_line() {
        let h = Health {
            status: "healthy".into(),
            version: "0.1.0".into(),
            started_at: now() - chrono::Duration::seconds(7500),
            uptime_seconds: 7500,
            streams: 1,
            clients: 2,
            active_connections: 0,
            total_bytes_served: 0,
            open_connections: 0,
            max_connections: 0,
            stats: Default::default(),
            store: None,
            instances: Vec::new(),
        };
        assert_eq!(
            health(&h),
            "healthy: m3u-proxy 0.1.0, up 2h 5m, 1 stream, 2 clients, 0 connections\n"
        );
    }

    #[test]
    fn play_paths_follow_the_stream_type() {
        assert_eq!(play_path(StreamType::Hls, "x"), "/hls/x/playlist.m3u8");
        assert_eq!(play_path(StreamType::Direct, "x"), "/stream/x");
    }
}
