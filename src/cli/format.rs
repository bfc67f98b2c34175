//! PURE text formatting for the CLI: sizes, rates, durations, truncated URLs, aligned
//! tables and label/value blocks. No I/O and no API calls here, so every rule is unit-tested.

use chrono::{DateTime, Utc};

/// Decimal (SI) units, as disks and network links count: 1 kB is 1,000 bytes.
const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];

/// A byte count for humans: `512 B`, `1.5 kB`, `22.6 MB` (powers of 1000, like the README
/// and every figure the proxy prints).
pub fn bytes(n: u64) -> String {
    if n < 1000 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1000.0;
    let mut unit = 0;
    // Round first so 999.96 kB reads as "1.0 MB", not "1000.0 kB".
    while (value * 10.0).round() / 10.0 >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A transfer rate: `0 B/s`, `1.3 MB/s`. Negative or non-finite input reads as zero.
pub fn rate(bytes_per_second: f64) -> String {
    let n = if bytes_per_second.is_finite() && bytes_per_second > 0.0 {
        bytes_per_second.round() as u64
    } else {
        0
    };
    format!("{}/s", bytes(n))
}

/// A span of time, coarse enough to read at a glance: `45s`, `3m`, `2h 5m`, `3d 4h`.
pub fn duration(seconds: u64) -> String {
    const MINUTE: u64 = 60;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;
    match seconds {
        s if s < MINUTE => format!("{s}s"),
        s if s < HOUR => format!("{}m", s / MINUTE),
        s if s < DAY => format!("{}h {}m", s / HOUR, s % HOUR / MINUTE),
        s => format!("{}d {}h", s / DAY, s % DAY / HOUR),
    }
}

/// How long ago `then` was: `just now`, `3m ago`, `2h 5m ago`. A `then` in the future
/// (clocks of client and server disagree) reads as `just now`.
pub fn ago(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let seconds = (now - then).num_seconds();
    if seconds < 5 {
        "just now".to_owned()
    } else {
        format!("{} ago", duration(seconds as u64))
    }
}

/// A timestamp with its age: `2026-11-24 01:30:00 UTC (3m ago)`.
pub fn timestamp(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!("{} ({})", at.format("%Y-%m-%d %H:%M:%S UTC"), ago(at, now))
}

/// `s` cut to at most `max` characters by replacing its middle with `…`, so both the host
/// and the file name of a long URL stay visible.
pub fn truncate_middle(s: &str, max: usize) -> String {
    let len = s.chars().count();
    if len <= max {
        return s.to_owned();
    }
    if max == 0 {
        return String::new();
    }
    let keep = max - 1;
    let head = keep.div_ceil(2);
    let tail = keep - head;
    let mut out: String = s.chars().take(head).collect();
    out.push('…');
    out.extend(s.chars().skip(len - tail));
    out
}

/// How a column lines up: text to the left, numbers to the right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table with a header row, columns separated by two spaces, no trailing spaces.
#[derive(Debug, Clone)]
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Self {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank, extra cells are dropped.
    pub fn row(&mut self, mut cells: Vec<String>) {
        cells.resize(self.columns.len(), String::new());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, (title, _))| {
                self.rows
                    .iter()
                    .map(|row| row[i].chars().count())
                    .chain([title.chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let header: Vec<String> = self.columns.iter().map(|(t, _)| t.to_string()).collect();
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = " ".repeat(widths[i] - cell.chars().count());
                match self.columns[i].1 {
                    Align::Left => {
                        line.push_str(cell);
                        line.push_str(&pad);
                    }
                    Align::Right => {
                        line.push_str(&pad);
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Label/value lines with the values aligned: `Type      hls`.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(label, _)| label.chars().count())
        .max()
        .unwrap_or(0);
    pairs
        .iter()
        .map(|(label, value)| format!("{label:<width$}  {value}").trim_end().to_owned() + "\n")
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn sizes_pick_the_largest_fitting_unit() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1000), "1.0 kB");
        assert_eq!(bytes(1536), "1.5 kB");
        assert_eq!(bytes(22_584_277), "22.6 MB", "the issue's example");
        assert_eq!(bytes(12_900_000), "12.9 MB");
        assert_eq!(bytes(999_999), "1.0 MB");
        assert_eq!(bytes(5_000_000_000), "5.0 GB");
        assert_eq!(bytes(u64::MAX), "18446.7 PB");
    }

    #[test]
    fn rates_are_sizes_per_second() {
        assert_eq!(rate(0.0), "0 B/s");
        assert_eq!(rate(-3.0), "0 B/s");
        assert_eq!(rate(f64::NAN), "0 B/s");
        assert_eq!(rate(1_258_291.2), "1.3 MB/s");
        assert_eq!(rate(999.4), "999 B/s");
        assert_eq!(rate(999.6), "1.0 kB/s");
    }

    #[test]
    fn durations_are_coarse() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(60), "1m");
        assert_eq!(duration(3 * 60 + 59), "3m");
        assert_eq!(duration(2 * 3600 + 5 * 60 + 9), "2h 5m");
        assert_eq!(duration(3 * 86400 + 4 * 3600 + 59), "3d 4h");
    }

    #[test]
    fn ages_read_relative_to_now() {
        let now = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
        let at = |secs| now - chrono::Duration::seconds(secs);
        assert_eq!(ago(at(2), now), "just now");
        assert_eq!(ago(at(-30), now), "just now");
        assert_eq!(ago(at(180), now), "3m ago");
        assert_eq!(ago(at(7500), now), "2h 5m ago");
        assert_eq!(timestamp(at(180), now), "2026-11-24 11:57:00 UTC (3m ago)");
    }

    #[test]
    fn long_urls_keep_both_ends() {
        assert_eq!(truncate_middle("http://a/b", 20), "http://a/b");
        let url = "http://origin.example.com/very/long/path/to/live/stream.m3u8";
        let cut = truncate_middle(url, 24);
        assert_eq!(cut.chars().count(), 24);
        assert_eq!(cut, "http://origi…stream.m3u8");
        assert_eq!(truncate_middle("abcdef", 1), "…");
        assert_eq!(truncate_middle("abcdef", 0), "");
        assert_eq!(truncate_middle("ééééé", 4), "éé…é");
    }

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&[
            ("ID", Align::Left),
            ("SIZE", Align::Right),
            ("URL", Align::Left),
        ]);
        t.row(vec!["a".into(), "1.0 kB".into(), "http://x".into()]);
        t.row(vec!["long-id".into(), "5 B".into(), String::new()]);
        assert_eq!(
            t.render(),
            "ID         SIZE  URL\n\
             a        1.0 kB  http://x\n\
             long-id     5 B\n"
        );
    }

    #[test]
    fn fields_align_values() {
        assert_eq!(
            fields(&[
                ("Type", "hls".into()),
                ("User agent", "VLC".into()),
                ("Empty", String::new())
            ]),
            "Type        hls\nUser agent  VLC\nEmpty\n"
        );
    }
}
