//! What a workload measured and how it is reported: per-kind counters and exact latency
//! percentiles (every sample is kept; runs are short), the /proc sampler for the proxy's
//! RSS and CPU and for the load generator's own CPU, and the human and JSON summaries.
//! It must not do any network I/O.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What a request fetched; each kind gets its own counters and percentiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Playlist,
    Segment,
    Direct,
    Range,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Playlist, Kind::Segment, Kind::Direct, Kind::Range];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Playlist => "playlist",
            Kind::Segment => "segment",
            Kind::Direct => "direct",
            Kind::Range => "range",
        }
    }

    /// `.m3u8` URLs are playlists; everything else a segment.
    pub fn of_url(url: &url::Url) -> Kind {
        if url.path().ends_with(".m3u8") {
            Kind::Playlist
        } else {
            Kind::Segment
        }
    }
}

/// Counters of one kind. Latencies are microseconds, kept whole for exact percentiles.
#[derive(Default)]
pub struct KindStats {
    pub requests: u64,
    pub errors: u64,
    pub bytes: u64,
    pub ttfb_us: Vec<u32>,
    pub total_us: Vec<u32>,
}

/// Everything one task (a viewer, a connection) measured; merged at the end.
#[derive(Default)]
pub struct Stats {
    kinds: [KindStats; 4],
    pub stalls: u64,
    pub stall_time: Duration,
    /// Viewer start to first segment (or first body byte) in hand.
    pub startup_us: Vec<u32>,
    /// The first few distinct error messages, so a failing run says why.
    pub error_samples: Vec<String>,
}

const MAX_ERROR_SAMPLES: usize = 5;

impl Stats {
    pub fn kind(&mut self, kind: Kind) -> &mut KindStats {
        &mut self.kinds[kind as usize]
    }

    /// Records a completed request.
    pub fn record(&mut self, kind: Kind, ttfb: Duration, total: Duration, bytes: u64) {
        let k = self.kind(kind);
        k.requests += 1;
        k.bytes += bytes;
        k.ttfb_us.push(micros(ttfb));
        k.total_us.push(micros(total));
    }

    pub fn error(&mut self, kind: Kind, err: impl std::fmt::Display) {
        self.kind(kind).errors += 1;
        if self.error_samples.len() < MAX_ERROR_SAMPLES {
            let text = format!("{}: {err:#}", kind.name());
            if !self.error_samples.contains(&text) {
                self.error_samples.push(text);
            }
        }
    }

    pub fn merge(&mut self, other: Stats) {
        for (mine, theirs) in self.kinds.iter_mut().zip(other.kinds) {
            mine.requests += theirs.requests;
            mine.errors += theirs.errors;
            mine.bytes += theirs.bytes;
            mine.ttfb_us.extend(theirs.ttfb_us);
            mine.total_us.extend(theirs.total_us);
        }
        self.stalls += other.stalls;
        self.stall_time += other.stall_time;
        self.startup_us.extend(other.startup_us);
        for sample in other.error_samples {
            if self.error_samples.len() < MAX_ERROR_SAMPLES && !self.error_samples.contains(&sample)
            {
                self.error_samples.push(sample);
            }
        }
    }
}

pub fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// p50/p95/p99/max in milliseconds.
#[derive(Serialize, Deserialize, Clone, Copy, Default)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(samples: &mut [u32]) -> Option<Percentiles> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        // Nearest-rank: the smallest sample with at least q of the samples at or below it.
        let at = |q: f64| {
            let rank = (q * samples.len() as f64).ceil() as usize;
            f64::from(samples[rank.clamp(1, samples.len()) - 1]) / 1000.0
        };
        Some(Percentiles {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: at(1.0),
        })
    }
}

#[derive(Serialize, Deserialize)]
pub struct KindReport {
    pub requests: u64,
    pub errors: u64,
    pub bytes: u64,
    pub requests_per_s: f64,
    pub mb_per_s: f64,
    pub ttfb_ms: Option<Percentiles>,
    pub total_ms: Option<Percentiles>,
}

#[derive(Serialize, Deserialize, Default)]
pub struct ProcessReport {
    pub pid: u32,
    pub rss_start_mb: f64,
    pub rss_peak_mb: f64,
    pub rss_end_mb: f64,
    /// Percent of one core, averaged over the run (200 = both cores of a 2-core box).
    pub cpu_percent: f64,
}

/// The one-line JSON a run prints with `--json`; the driver's `table` reads it back.
#[derive(Serialize, Deserialize)]
pub struct Report {
    pub workload: String,
    pub label: Option<String>,
    pub target: Option<String>,
    pub round: Option<u32>,
    pub url: String,
    pub concurrency: u64,
    pub duration_s: f64,
    pub requests: u64,
    pub errors: u64,
    pub requests_per_s: f64,
    pub mb_per_s: f64,
    pub stalls: u64,
    pub stall_s: f64,
    pub startup_ms: Option<Percentiles>,
    pub kinds: BTreeMap<String, KindReport>,
    pub proxy: Option<ProcessReport>,
    /// The load generator's own CPU, percent of one core.
    pub loadgen_cpu_percent: f64,
    /// The origin's CPU (sum over `--origin-pid`s), percent of one core.
    #[serde(default)]
    pub origin_cpu_percent: Option<f64>,
    pub error_samples: Vec<String>,
}

/// Labels a run for the driver's table.
pub struct Tags {
    pub label: Option<String>,
    pub target: Option<String>,
    pub round: Option<u32>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        workload: &str,
        tags: Tags,
        url: &str,
        concurrency: u64,
        elapsed: Duration,
        mut stats: Stats,
        proxy: Option<ProcessReport>,
        loadgen_cpu_percent: f64,
        origin_cpu_percent: Option<f64>,
    ) -> Report {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let mut kinds = BTreeMap::new();
        let (mut requests, mut errors, mut bytes) = (0, 0, 0);
        for kind in Kind::ALL {
            let k = stats.kind(kind);
            if k.requests == 0 && k.errors == 0 {
                continue;
            }
            requests += k.requests;
            errors += k.errors;
            bytes += k.bytes;
            kinds.insert(
                kind.name().to_string(),
                KindReport {
                    requests: k.requests,
                    errors: k.errors,
                    bytes: k.bytes,
                    requests_per_s: k.requests as f64 / secs,
                    mb_per_s: k.bytes as f64 / secs / 1e6,
                    ttfb_ms: Percentiles::of(&mut k.ttfb_us),
                    total_ms: Percentiles::of(&mut k.total_us),
                },
            );
        }
        Report {
            workload: workload.to_string(),
            label: tags.label,
            target: tags.target,
            round: tags.round,
            url: url.to_string(),
            concurrency,
            duration_s: secs,
            requests,
            errors,
            requests_per_s: requests as f64 / secs,
            mb_per_s: bytes as f64 / secs / 1e6,
            stalls: stats.stalls,
            stall_s: stats.stall_time.as_secs_f64(),
            startup_ms: Percentiles::of(&mut stats.startup_us),
            kinds,
            proxy,
            loadgen_cpu_percent,
            origin_cpu_percent,
            error_samples: stats.error_samples,
        }
    }

    pub fn print(&self, json: bool) {
        if json {
            println!(
                "{}",
                serde_json::to_string(self).expect("report serializes")
            );
            // A progress line for whoever watches the driver; stdout stays pure JSON.
            let p99 = |k: &KindReport| k.ttfb_ms.map_or(0.0, |p| p.p99);
            let kinds: Vec<String> = self
                .kinds
                .iter()
                .map(|(name, k)| format!("{name} p99 {:.2} ms", p99(k)))
                .collect();
            eprintln!(
                "    {:.0} req/s, {:.1} MB/s, {}, {} errors, {} stalls, load generator {:.0}% CPU{}{}",
                self.requests_per_s,
                self.mb_per_s,
                kinds.join(", "),
                self.errors,
                self.stalls,
                self.loadgen_cpu_percent,
                self.origin_cpu_percent
                    .map_or(String::new(), |c| format!(", origin {c:.0}% CPU")),
                self.proxy.as_ref().map_or(String::new(), |p| format!(
                    ", proxy {:.0}% CPU {:.1} MB peak RSS",
                    p.cpu_percent, p.rss_peak_mb
                )),
            );
            for sample in &self.error_samples {
                eprintln!("    error: {sample}");
            }
            return;
        }
        println!(
            "{} {} — {} concurrent, {:.2} s",
            self.workload, self.url, self.concurrency, self.duration_s
        );
        println!(
            "  total: {} requests ({:.0}/s), {:.1} MB/s, {} errors, {} stalls ({:.1} s)",
            self.requests,
            self.requests_per_s,
            self.mb_per_s,
            self.errors,
            self.stalls,
            self.stall_s
        );
        if let Some(s) = &self.startup_ms {
            println!(
                "  startup ms: p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}",
                s.p50, s.p95, s.p99, s.max
            );
        }
        for (name, k) in &self.kinds {
            println!(
                "  {name:9} {:>9} req {:>9.0}/s {:>9.1} MB/s {:>5} err",
                k.requests, k.requests_per_s, k.mb_per_s, k.errors
            );
            for (what, p) in [("ttfb", &k.ttfb_ms), ("total", &k.total_ms)] {
                if let Some(p) = p {
                    println!(
                        "  {:9} {what:5} ms: p50 {:.3}  p95 {:.3}  p99 {:.3}  max {:.3}",
                        "", p.p50, p.p95, p.p99, p.max
                    );
                }
            }
        }
        if let Some(p) = &self.proxy {
            println!(
                "  proxy pid {}: RSS {:.1} MB at start, {:.1} MB peak, {:.1} MB at end; CPU {:.0}% of a core",
                p.pid, p.rss_start_mb, p.rss_peak_mb, p.rss_end_mb, p.cpu_percent
            );
        }
        println!(
            "  load generator CPU {:.0}% of a core",
            self.loadgen_cpu_percent
        );
        if let Some(cpu) = self.origin_cpu_percent {
            println!("  origin CPU {cpu:.0}% of a core");
        }
        for sample in &self.error_samples {
            println!("  error: {sample}");
        }
    }
}

/// CPU time of a process in clock ticks (utime + stime), from `/proc/<pid>/stat`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ')' come state (field 3) ... utime is field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn rss_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn ticks_per_second() -> f64 {
    // CLK_TCK is 100 on every Linux we run on; ask getconf in case it is not.
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU time of one process between two points in time.
pub struct CpuClock {
    stat_path: PathBuf,
    start_ticks: u64,
    start: Instant,
    ticks_per_s: f64,
}

impl CpuClock {
    pub fn start(pid: Option<u32>) -> CpuClock {
        let stat_path = match pid {
            Some(pid) => PathBuf::from(format!("/proc/{pid}/stat")),
            None => PathBuf::from("/proc/self/stat"),
        };
        let start_ticks = read_ticks(&stat_path).unwrap_or(0);
        CpuClock {
            stat_path,
            start_ticks,
            start: Instant::now(),
            ticks_per_s: ticks_per_second(),
        }
    }

    /// Percent of one core used since `start`.
    pub fn percent(&self) -> f64 {
        let ticks = read_ticks(&self.stat_path).unwrap_or(self.start_ticks);
        let cpu_s = ticks.saturating_sub(self.start_ticks) as f64 / self.ticks_per_s;
        100.0 * cpu_s / self.start.elapsed().as_secs_f64().max(1e-9)
    }
}

fn read_ticks(path: &PathBuf) -> Option<u64> {
    cpu_ticks(&std::fs::read_to_string(path).ok()?)
}

pub fn read_rss_kb(pid: u32) -> Option<u64> {
    rss_kb(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Samples a process's RSS every 100 ms for the length of a run.
pub struct ProcessSampler {
    pid: u32,
    cpu: CpuClock,
    rss_start_kb: u64,
    peak: tokio::task::JoinHandle<u64>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl ProcessSampler {
    pub fn start(pid: u32) -> ProcessSampler {
        let rss_start_kb = read_rss_kb(pid).unwrap_or(0);
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let peak = tokio::spawn(async move {
            let mut peak = rss_start_kb;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Some(rss) = read_rss_kb(pid) {
                            peak = peak.max(rss);
                        }
                    }
                    _ = stopped.changed() => return peak,
                }
            }
        });
        ProcessSampler {
            pid,
            cpu: CpuClock::start(Some(pid)),
            rss_start_kb,
            peak,
            stop,
        }
    }

    pub async fn finish(self) -> ProcessReport {
        let cpu_percent = self.cpu.percent();
        let rss_end_kb = read_rss_kb(self.pid).unwrap_or(0);
        let _ = self.stop.send(true);
        let peak = self.peak.await.unwrap_or(0).max(rss_end_kb);
        ProcessReport {
            pid: self.pid,
            rss_start_mb: self.rss_start_kb as f64 / 1024.0,
            rss_peak_mb: peak as f64 / 1024.0,
            rss_end_mb: rss_end_kb as f64 / 1024.0,
            cpu_percent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_skip_a_command_name_with_spaces() {
        let stat = "42 (tokio (rt) x) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3";
        assert_eq!(cpu_ticks(stat), Some(300));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<u32> = (1..=100).map(|n| n * 1000).collect();
        let p = Percentiles::of(&mut samples).unwrap();
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
    }
}
