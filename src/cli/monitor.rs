//! `m3u-client monitor`: a screen that redraws every interval with the proxy's totals and
//! its streams, their viewers, the bytes per second measured between two refreshes, errors
//! and failovers. It keeps going while the server is down (and picks up after a restart)
//! and ends on Ctrl-C. Rates and frames are computed by pure functions; only [`run`] does
//! I/O. It must not change anything on the server.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::format;
use super::render;
use crate::client::{ApiClient, ClientError, Endpoint};
use crate::model::{Stats, StreamInfo};

/// ANSI: cursor home, then clear the screen, so each frame replaces the last in place.
pub const CLEAR: &str = "\x1b[H\x1b[2J";

/// Bytes per second between two readings of a counter; `None` when it cannot be known
/// (no time passed, or the counter went backwards because the server restarted).
pub fn rate_between(before: u64, after: u64, elapsed: Duration) -> Option<f64> {
    let seconds = elapsed.as_secs_f64();
    if after < before || seconds <= 0.0 {
        return None;
    }
    Some((after - before) as f64 / seconds)
}

/// The byte counters of the previous refresh, to turn counters into rates.
#[derive(Debug, Default)]
pub struct RateMeter {
    last: Option<Reading>,
}

#[derive(Debug)]
struct Reading {
    at: Instant,
    total: u64,
    streams: HashMap<String, u64>,
}

/// Rates measured at one refresh. Absent entries are unknown (first sight of a stream).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Rates {
    pub total: Option<f64>,
    pub streams: HashMap<String, f64>,
}

impl RateMeter {
    /// Records the counters of `stats` read at `at`, returning the rates since the last one.
    pub fn observe(&mut self, stats: &Stats, at: Instant) -> Rates {
        let reading = Reading {
            at,
            total: stats.proxy.total_bytes_served,
            streams: stats
                .streams
                .iter()
                .map(|s| (s.stream_id.clone(), s.total_bytes_served))
                .collect(),
        };
        let rates = match &self.last {
            None => Rates::default(),
            Some(last) => {
                let elapsed = at.saturating_duration_since(last.at);
                Rates {
                    total: rate_between(last.total, reading.total, elapsed),
                    streams: reading
                        .streams
                        .iter()
                        .filter_map(|(id, &bytes)| {
                            let before = *last.streams.get(id)?;
                            Some((id.clone(), rate_between(before, bytes, elapsed)?))
                        })
                        .collect(),
                }
            }
        };
        self.last = Some(reading);
        rates
    }
}

/// What one refresh produced.
#[derive(Debug)]
pub enum Snapshot<'a> {
    Stats(&'a Stats, &'a Rates),
    /// The server could not be reached; the reason is shown under the retry notice.
    Unreachable(&'a str),
}

/// One screen: a title line, the proxy's totals, then every stream (most viewers first).
pub fn frame(
    server: &str,
    interval: Duration,
    snapshot: &Snapshot<'_>,
    now: DateTime<Utc>,
) -> String {
    let mut out = format!(
        "m3u-proxy monitor  {server}  {}  (every {}, Ctrl-C to quit)\n\n",
        now.format("%H:%M:%S UTC"),
        format::duration(interval.as_secs().max(1))
    );
    let (stats, rates) = match snapshot {
        Snapshot::Unreachable(reason) => {
            out.push_str("server unreachable, retrying...\n");
            out.push_str(&format!("  {reason}\n"));
            return out;
        }
        Snapshot::Stats(stats, rates) => (stats, rates),
    };
    let p = &stats.proxy;
    out.push_str(&format!(
        "up {}  streams {} ({} active)  clients {} ({} active)  connections {}  served {}{}  errors {}  failovers {}\n\n",
        format::duration(p.uptime_seconds),
        p.total_streams,
        p.active_streams,
        p.total_clients,
        p.active_clients,
        p.active_connections,
        format::bytes(p.total_bytes_served),
        rates
            .total
            .map_or_else(String::new, |r| format!(" at {}", format::rate(r))),
        p.total_errors,
        p.total_failovers,
    ));
    if stats.streams.is_empty() {
        out.push_str("No streams.\n");
        return out;
    }
    let mut streams: Vec<&StreamInfo> = stats.streams.iter().collect();
    streams.sort_by(|a, b| {
        b.client_count
            .cmp(&a.client_count)
            .then(b.total_bytes_served.cmp(&a.total_bytes_served))
            .then(a.stream_id.cmp(&b.stream_id))
    });
    out.push_str(&render::stream_rows(&streams, now, "STREAM", |s| {
        rate_cell(rates.streams.get(&s.stream_id).copied())
    }));
    out
}

fn rate_cell(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_owned(), format::rate)
}

/// Refreshes until Ctrl-C. On a terminal each frame replaces the last; otherwise frames
/// follow each other. With `json`, prints the server's `/stats` JSON as one line per
/// refresh instead. Returns an error only for answers retrying cannot fix (4xx, such as
/// a missing token); an unreachable server or a 5xx is shown and retried.
pub async fn run(client: &ApiClient, interval: Duration, json: bool) -> Result<(), ClientError> {
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let tty = std::io::stdout().is_terminal();
    let mut meter = RateMeter::default();
    let mut first = true;
    loop {
        let screen = tokio::select! {
            _ = &mut ctrl_c => break,
            screen = refresh(client, interval, json, &mut meter) => screen?,
        };
        let mut stdout = std::io::stdout().lock();
        // A log (not a terminal) gets frames one after another, a blank line apart.
        let prefix = match (tty, json, first) {
            (true, false, _) => CLEAR,
            (false, false, false) => "\n",
            _ => "",
        };
        first = false;
        // A closed stdout (`monitor | head`) ends the monitor like Ctrl-C would.
        if write!(stdout, "{prefix}{screen}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return Ok(());
        }
        drop(stdout);
        tokio::select! {
            _ = &mut ctrl_c => break,
            () = tokio::time::sleep(interval) => {}
        }
    }
    if tty && !json {
        println!();
    }
    Ok(())
}

/// One refresh: the text to show, or the error that should end the monitor.
async fn refresh(
    client: &ApiClient,
    interval: Duration,
    json: bool,
    meter: &mut RateMeter,
) -> Result<String, ClientError> {
    let retryable = |err: &ClientError| match err {
        ClientError::Unreachable { .. }
        | ClientError::Decode { .. }
        | ClientError::NotProxy { .. } => true,
        ClientError::Api { status, .. } => *status >= 500,
        ClientError::InvalidServer { .. } | ClientError::InvalidId(_) => false,
    };
    if json {
        return match client.raw_json(Endpoint::Stats).await {
            // As the server sent it, keys in its order, on one line (NDJSON).
            Ok(text) => Ok(format!("{}\n", one_line(&text))),
            Err(err) if retryable(&err) => Ok(format!(
                "{}\n",
                serde_json::json!({ "error": err.to_string() })
            )),
            Err(err) => Err(err),
        };
    }
    let now = Utc::now();
    match client.stats().await {
        Ok(stats) => {
            let rates = meter.observe(&stats, Instant::now());
            Ok(frame(
                client.base(),
                interval,
                &Snapshot::Stats(&stats, &rates),
                now,
            ))
        }
        Err(err) if retryable(&err) => {
            let reason = err.to_string();
            Ok(frame(
                client.base(),
                interval,
                &Snapshot::Unreachable(&reason),
                now,
            ))
        }
        Err(err) => Err(err),
    }
}

/// `json` on one line: whitespace outside strings dropped, everything else (key order,
/// number spelling) kept byte for byte.
pub fn one_line(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if !c.is_whitespace() {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::fixtures;

    #[test]
    fn json_is_put_on_one_line_as_it_was_sent() {
        let sent = "{\n  \"zeta\": 1,\n  \"alpha\": \"a b\\\" \\n\",\n  \"m\": [1.50, 2]\n}";
        assert_eq!(
            one_line(sent),
            r#"{"zeta":1,"alpha":"a b\" \n","m":[1.50,2]}"#
        );
    }

    fn stats(streams: Vec<StreamInfo>) -> Stats {
        fixtures::stats(streams)
    }

    #[test]
    fn rates_need_two_readings_and_a_forward_counter() {
        let t = Duration::from_secs(2);
        assert_eq!(rate_between(1000, 5000, t), Some(2000.0));
        assert_eq!(rate_between(1000, 1000, t), Some(0.0));
        assert_eq!(rate_between(5000, 1000, t), None);
        assert_eq!(rate_between(0, 10, Duration::ZERO), None);
    }

    #[test]
    fn meter_turns_counters_into_rates() {
        let mut meter = RateMeter::default();
        let t0 = Instant::now();
        let first = meter.observe(&stats(vec![fixtures::stream("a", 1000)]), t0);
        assert_eq!(first, Rates::default());
        let second = meter.observe(
            &stats(vec![fixtures::stream("a", 5000), fixtures::stream("b", 10)]),
            t0 + Duration::from_secs(4),
        );
        assert_eq!(second.streams.get("a"), Some(&1000.0));
        // "b" was not there before: unknown, not "10 bytes in 4 s".
        assert_eq!(second.streams.get("b"), None);
        assert_eq!(second.total, Some(1002.5));
        // Restart with fresh counters: unknown again rather than a huge negative rate.
        let third = meter.observe(
            &stats(vec![fixtures::stream("a", 100)]),
            t0 + Duration::from_secs(6),
        );
        assert_eq!(third.streams.get("a"), None);
        assert_eq!(third.total, None);
    }

    #[test]
    fn frame_lists_busiest_streams_first_with_measured_rates() {
        let mut quiet = fixtures::stream("quiet", 10);
        quiet.client_count = 0;
        let busy = fixtures::stream("busy", 3_000_000);
        let stats = stats(vec![quiet, busy]);
        let rates = Rates {
            total: Some(2000.0),
            streams: HashMap::from([("busy".to_owned(), 1500.0)]),
        };
        let text = frame(
            "http://p:8001",
            Duration::from_secs(5),
            &Snapshot::Stats(&stats, &rates),
            fixtures::now(),
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("m3u-proxy monitor  http://p:8001  12:00:00 UTC  (every 5s"),
            "{text}"
        );
        assert!(
            lines[2].contains("served 3.0 MB at 2.0 kB/s  errors"),
            "{text}"
        );
        let busy_at = lines.iter().position(|l| l.starts_with("busy ")).unwrap();
        let quiet_at = lines.iter().position(|l| l.starts_with("quiet ")).unwrap();
        assert!(busy_at < quiet_at, "{text}");
        assert!(
            lines[busy_at].contains("3.0 MB") && lines[busy_at].contains("1.5 kB/s"),
            "{text}"
        );
        assert!(lines[quiet_at].contains(" - "), "{text}");
    }

    #[test]
    fn frame_says_when_the_server_is_down() {
        let text = frame(
            "http://p:8001",
            Duration::from_secs(1),
            &Snapshot::Unreachable("cannot reach m3u-proxy at http://p:8001: connection refused"),
            fixtures::now(),
        );
        assert!(
            text.contains("\nserver unreachable, retrying...\n"),
            "{text}"
        );
        assert!(text.contains("connection refused"), "{text}");
    }
}
