//! PURE helpers for `GET /metrics`: the Prometheus text exposition format (version 0.0.4)
//! and a lock-free latency [`Histogram`]. There is no global registry here: whoever owns
//! the counters builds a [`PromText`] per scrape from their current values. No I/O, no
//! locks, no knowledge of streams or clients.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The `Content-Type` of a [`PromText`] answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bucket bounds in seconds for upstream latencies: from a cached hit on a LAN to an origin
/// that is about to time out.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A histogram of durations with fixed bucket bounds, updated with atomics only so that it
/// can sit on the hot path.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds in seconds, increasing, finite.
    bounds: Box<[f64]>,
    /// Observations per bucket (not cumulative); the last one is the `+Inf` bucket.
    counts: Box<[AtomicU64]>,
    /// Sum of observations in nanoseconds: an integer adds with one `fetch_add`, where an
    /// `f64` sum would need a compare-and-swap loop.
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// A histogram with these upper bounds (seconds). They are sorted and de-duplicated, and
    /// non-finite ones dropped, since `+Inf` is always the last bucket.
    pub fn new(bounds: &[f64]) -> Self {
        let mut bounds: Vec<f64> = bounds.iter().copied().filter(|b| b.is_finite()).collect();
        bounds.sort_by(f64::total_cmp);
        bounds.dedup();
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram {
            bounds: bounds.into_boxed_slice(),
            counts,
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// A histogram with [`LATENCY_BUCKETS`].
    pub fn latency() -> Self {
        Histogram::new(&LATENCY_BUCKETS)
    }

    /// Records one observation in seconds. Negative values count as 0; NaN and infinities
    /// are ignored, as no duration measures that way.
    pub fn observe(&self, secs: f64) {
        if !secs.is_finite() {
            return;
        }
        let secs = secs.max(0.0);
        // Buckets are "less than or equal": the first bound not below the value.
        let bucket = self.bounds.partition_point(|&bound| bound < secs);
        self.counts[bucket].fetch_add(1, Relaxed);
        // `as` saturates, so an absurd value cannot wrap the sum by itself.
        self.sum_nanos
            .fetch_add((secs * 1e9).round() as u64, Relaxed);
    }

    pub fn observe_duration(&self, duration: Duration) {
        self.observe(duration.as_secs_f64());
    }

    /// The current values. `count` is the total of the buckets, so a snapshot taken while
    /// others observe is always self-consistent; only `sum` may trail by in-flight updates.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (bound, count) in self.bounds.iter().zip(self.counts.iter()) {
            cumulative += count.load(Relaxed);
            buckets.push((*bound, cumulative));
        }
        let overflow = self.counts.last().map_or(0, |count| count.load(Relaxed));
        HistogramSnapshot {
            buckets,
            count: cumulative + overflow,
            sum: self.sum_nanos.load(Relaxed) as f64 / 1e9,
        }
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::latency()
    }
}

/// A histogram's values at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, cumulative count)` for each finite bound, increasing.
    pub buckets: Vec<(f64, u64)>,
    /// Every observation: the `+Inf` bucket and `_count`.
    pub count: u64,
    /// Sum of observations in seconds.
    pub sum: f64,
}

/// The kind of a metric family, as written on its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// A sample value; integers are written exactly, floats with `+Inf`/`-Inf`/`NaN` spelled as
/// the format wants.
pub trait MetricValue {
    fn write_to(&self, out: &mut String);
}

macro_rules! integer_metric_value {
    ($($t:ty),*) => {$(
        impl MetricValue for $t {
            fn write_to(&self, out: &mut String) {
                let _ = write!(out, "{self}");
            }
        }
    )*};
}
integer_metric_value!(u64, u32, usize, i64);

impl MetricValue for f64 {
    fn write_to(&self, out: &mut String) {
        write_float(out, *self);
    }
}

fn write_float(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value == f64::INFINITY {
        out.push_str("+Inf");
    } else if value == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        // Rust's shortest round-trip form ("0.005", "1", "1234.5") parses as a Go float.
        let _ = write!(out, "{value}");
    }
}

/// A Prometheus text page under construction.
///
/// Samples may be added in any order: each family's `# HELP`/`# TYPE` is written once and its
/// samples are kept together, in the order the families were first named. A family named
/// again with another kind is a programming error: debug builds panic, release builds drop
/// the sample rather than write an invalid page.
#[derive(Debug, Default)]
pub struct PromText {
    families: Vec<Family>,
    /// Family name -> index in `families`.
    index: HashMap<String, usize>,
}

#[derive(Debug)]
struct Family {
    name: String,
    help: String,
    kind: MetricKind,
    samples: String,
}

impl PromText {
    pub fn new() -> Self {
        PromText::default()
    }

    /// Declares a family; its `# HELP`/`# TYPE` lines are written even if no sample follows
    /// (e.g. a per-stream family while there are no streams).
    pub fn family(&mut self, name: &str, help: &str, kind: MetricKind) -> &mut Self {
        self.family_samples(name, help, kind);
        self
    }

    /// One sample of a counter family (name it `..._total` by convention).
    pub fn counter(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: impl MetricValue,
    ) -> &mut Self {
        self.sample(name, help, MetricKind::Counter, labels, value)
    }

    /// One sample of a gauge family.
    pub fn gauge(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: impl MetricValue,
    ) -> &mut Self {
        self.sample(name, help, MetricKind::Gauge, labels, value)
    }

    /// One labelled histogram: its `_bucket` lines (cumulative, ending with `le="+Inf"`),
    /// `_sum` and `_count`.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        snapshot: &HistogramSnapshot,
    ) -> &mut Self {
        let Some(out) = self.family_samples(name, help, MetricKind::Histogram) else {
            return self;
        };
        let bucket = format!("{name}_bucket");
        let mut le = String::new();
        for &(bound, count) in &snapshot.buckets {
            le.clear();
            write_float(&mut le, bound);
            write_sample(out, &bucket, labels, Some(&le), count);
        }
        write_sample(out, &bucket, labels, Some("+Inf"), snapshot.count);
        write_sample(out, &format!("{name}_sum"), labels, None, snapshot.sum);
        write_sample(out, &format!("{name}_count"), labels, None, snapshot.count);
        self
    }

    /// The page: every family with its header and samples.
    pub fn finish(self) -> String {
        let size = self
            .families
            .iter()
            .map(|f| f.samples.len() + f.help.len() + 2 * f.name.len() + 32)
            .sum();
        let mut out = String::with_capacity(size);
        for family in &self.families {
            out.push_str("# HELP ");
            out.push_str(&family.name);
            out.push(' ');
            escape_into(&mut out, &family.help, false);
            out.push_str("\n# TYPE ");
            out.push_str(&family.name);
            out.push(' ');
            out.push_str(family.kind.as_str());
            out.push('\n');
            out.push_str(&family.samples);
        }
        out
    }

    fn sample(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricKind,
        labels: &[(&str, &str)],
        value: impl MetricValue,
    ) -> &mut Self {
        if let Some(out) = self.family_samples(name, help, kind) {
            write_sample(out, name, labels, None, value);
        }
        self
    }

    /// The sample buffer of a family, created on first use; `None` on a kind mismatch.
    fn family_samples(&mut self, name: &str, help: &str, kind: MetricKind) -> Option<&mut String> {
        debug_assert!(is_metric_name(name), "invalid metric name {name:?}");
        let index = match self.index.get(name) {
            Some(&index) => index,
            None => {
                self.families.push(Family {
                    name: name.to_owned(),
                    help: help.to_owned(),
                    kind,
                    samples: String::new(),
                });
                self.index.insert(name.to_owned(), self.families.len() - 1);
                self.families.len() - 1
            }
        };
        let family = &mut self.families[index];
        debug_assert_eq!(family.kind, kind, "metric {name:?} used with two kinds");
        (family.kind == kind).then_some(&mut family.samples)
    }
}

fn write_sample(
    out: &mut String,
    name: &str,
    labels: &[(&str, &str)],
    le: Option<&str>,
    value: impl MetricValue,
) {
    out.push_str(name);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let le = le.map(|le| ("le", le));
        for (i, (label, value)) in labels.iter().copied().chain(le).enumerate() {
            debug_assert!(is_label_name(label), "invalid label name {label:?}");
            if i > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            escape_into(out, value, true);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    value.write_to(out);
    out.push('\n');
}

/// Escapes `\` and line feeds, and `"` inside label values, as the text format requires.
fn escape_into(out: &mut String, text: &str, label_value: bool) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if label_value => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut page = PromText::new();
        page.counter(
            "m3u_requests_total",
            "Requests with \\ and\nnewline \"quoted\".",
            &[("stream_id", "a\\b\"c\nd")],
            1u64,
        );
        assert_eq!(
            page.finish(),
            "# HELP m3u_requests_total Requests with \\\\ and\\nnewline \"quoted\".\n\
             # TYPE m3u_requests_total counter\n\
             m3u_requests_total{stream_id=\"a\\\\b\\\"c\\nd\"} 1\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_bounds_inclusive() {
        let histogram = Histogram::new(&[0.1, 0.01, 1.0, f64::INFINITY, 0.1]);
        for secs in [0.001, 0.01, 0.05, 0.1, 0.5, 2.0, 7.0, -3.0, f64::NAN] {
            histogram.observe(secs);
        }
        let snapshot = histogram.snapshot();
        // -3 counts as 0; NaN is ignored; 0.01 and 0.1 fall in their own "le" bucket.
        assert_eq!(snapshot.buckets, vec![(0.01, 3), (0.1, 5), (1.0, 6)]);
        assert_eq!(snapshot.count, 8);
        assert!((snapshot.sum - 9.661).abs() < 1e-9, "sum {}", snapshot.sum);
    }

    #[test]
    fn concurrent_observations_are_all_counted() {
        let histogram = Histogram::latency();
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let histogram = &histogram;
                scope.spawn(move || {
                    for i in 0..10_000 {
                        histogram.observe_duration(Duration::from_millis((thread * 10 + i) % 50));
                    }
                });
            }
        });
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 40_000);
        assert_eq!(snapshot.buckets.last().map(|b| b.1), Some(40_000));
    }

    #[test]
    fn full_page_keeps_families_together_with_one_header() {
        let latency = Histogram::new(&[0.05, 0.5]);
        latency.observe(0.02);
        latency.observe(0.25);
        latency.observe(3.0);

        let mut page = PromText::new();
        page.family("m3u_streams", "Registered streams.", MetricKind::Gauge)
            .gauge("m3u_streams", "Registered streams.", &[], 2usize)
            .counter(
                "m3u_bytes_total",
                "Bytes written to players.",
                &[("stream_id", "s1")],
                18_446_744_073_709_551_615u64,
            )
            .gauge(
                "m3u_bytes_per_second",
                "Current throughput.",
                &[("stream_id", "s1")],
                1234.5,
            )
            // Back to an earlier family: its sample joins it, no second header.
            .counter(
                "m3u_bytes_total",
                "Bytes written to players.",
                &[("stream_id", "s2")],
                0u64,
            )
            .gauge(
                "m3u_bytes_per_second",
                "",
                &[("stream_id", "s2")],
                f64::INFINITY,
            )
            .histogram(
                "m3u_upstream_latency_seconds",
                "Time to the upstream's response head.",
                &[("stream_id", "s1"), ("kind", "media")],
                &latency.snapshot(),
            )
            .family("m3u_clients", "Tracked clients.", MetricKind::Gauge);

        let expected = "\
# HELP m3u_streams Registered streams.
# TYPE m3u_streams gauge
m3u_streams 2
# HELP m3u_bytes_total Bytes written to players.
# TYPE m3u_bytes_total counter
m3u_bytes_total{stream_id=\"s1\"} 18446744073709551615
m3u_bytes_total{stream_id=\"s2\"} 0
# HELP m3u_bytes_per_second Current throughput.
# TYPE m3u_bytes_per_second gauge
m3u_bytes_per_second{stream_id=\"s1\"} 1234.5
m3u_bytes_per_second{stream_id=\"s2\"} +Inf
# HELP m3u_upstream_latency_seconds Time to the upstream's response head.
# TYPE m3u_upstream_latency_seconds histogram
m3u_upstream_latency_seconds_bucket{stream_id=\"s1\",kind=\"media\",le=\"0.05\"} 1
m3u_upstream_latency_seconds_bucket{stream_id=\"s1\",kind=\"media\",le=\"0.5\"} 2
m3u_upstream_latency_seconds_bucket{stream_id=\"s1\",kind=\"media\",le=\"+Inf\"} 3
m3u_upstream_latency_seconds_sum{stream_id=\"s1\",kind=\"media\"} 3.27
m3u_upstream_latency_seconds_count{stream_id=\"s1\",kind=\"media\"} 3
# HELP m3u_clients Tracked clients.
# TYPE m3u_clients gauge
";
        assert_eq!(page.finish(), expected);
    }

    #[test]
    fn unlabelled_histogram_and_special_floats() {
        let mut page = PromText::new();
        page.histogram(
            "h_seconds",
            "h",
            &[],
            &HistogramSnapshot {
                buckets: vec![(1.0, 0)],
                count: 0,
                sum: 0.0,
            },
        )
        .gauge("g", "g", &[], f64::NAN)
        .gauge("n", "n", &[], f64::NEG_INFINITY)
        .gauge("z", "z", &[], 0.000001);
        assert_eq!(
            page.finish(),
            "# HELP h_seconds h\n# TYPE h_seconds histogram\n\
             h_seconds_bucket{le=\"1\"} 0\nh_seconds_bucket{le=\"+Inf\"} 0\n\
             h_seconds_sum 0\nh_seconds_count 0\n\
             # HELP g g\n# TYPE g gauge\ng NaN\n\
             # HELP n n\n# TYPE n gauge\nn -Inf\n\
             # HELP z z\n# TYPE z gauge\nz 0.000001\n"
        );
    }
}
