//! The driver's results table: reads the one-line JSON reports of a run (each tagged with a
//! label, a target — `direct` or `proxy`, or two proxies by store, `memory` and `redis` —
//! and a round), takes the median of each figure over the rounds, and prints a Markdown
//! table with the ratio of the subject to the baseline (proxy/direct by default). It only
//! reads reports; it runs nothing.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::stats::{KindReport, Percentiles, Report};

type Figure = fn(&Report) -> Option<f64>;

fn kind<'a>(r: &'a Report, name: &str) -> Option<&'a KindReport> {
    r.kinds.get(name)
}

fn ttfb(r: &Report, name: &str, pick: fn(&Percentiles) -> f64) -> Option<f64> {
    kind(r, name)?.ttfb_ms.as_ref().map(pick)
}

fn total(r: &Report, name: &str, pick: fn(&Percentiles) -> f64) -> Option<f64> {
    kind(r, name)?.total_ms.as_ref().map(pick)
}

/// The figures worth a row for each workload, by what it measured.
fn figures(r: &Report) -> Vec<(&'static str, Figure)> {
    let mut rows: Vec<(&'static str, Figure)> = match r.workload.as_str() {
        "get" if r.kinds.contains_key("playlist") => vec![
            ("requests/s", |r| Some(r.requests_per_s)),
            ("TTFB p50 ms", |r| ttfb(r, "playlist", |p| p.p50)),
            ("TTFB p99 ms", |r| ttfb(r, "playlist", |p| p.p99)),
        ],
        "get" => vec![
            ("MB/s", |r| Some(r.mb_per_s)),
            ("requests/s", |r| Some(r.requests_per_s)),
            ("TTFB p99 ms", |r| ttfb(r, "segment", |p| p.p99)),
        ],
        "hls" => vec![
            ("stalls", |r| Some(r.stalls as f64)),
            ("segment TTFB p50 ms", |r| ttfb(r, "segment", |p| p.p50)),
            ("segment TTFB p99 ms", |r| ttfb(r, "segment", |p| p.p99)),
            ("playlist TTFB p99 ms", |r| ttfb(r, "playlist", |p| p.p99)),
            ("startup p99 ms", |r| r.startup_ms.map(|p| p.p99)),
            ("MB/s", |r| Some(r.mb_per_s)),
        ],
        "direct" => vec![
            ("MB/s", |r| Some(r.mb_per_s)),
            ("TTFB p99 ms", |r| ttfb(r, "direct", |p| p.p99)),
            ("stalls", |r| Some(r.stalls as f64)),
        ],
        "latency" => vec![
            ("TTFB p50 ms", |r| {
                r.kinds.values().next()?.ttfb_ms.map(|p| p.p50)
            }),
            ("total p50 ms", |r| {
                r.kinds.values().next()?.total_ms.map(|p| p.p50)
            }),
            ("total p99 ms", |r| {
                r.kinds.values().next()?.total_ms.map(|p| p.p99)
            }),
        ],
        "range" => vec![
            ("requests/s", |r| Some(r.requests_per_s)),
            ("MB/s", |r| Some(r.mb_per_s)),
            ("TTFB p99 ms", |r| ttfb(r, "range", |p| p.p99)),
            ("total p99 ms", |r| total(r, "range", |p| p.p99)),
        ],
        _ => vec![("requests/s", |r| Some(r.requests_per_s))],
    };
    rows.push(("load generator CPU %", |r| Some(r.loadgen_cpu_percent)));
    rows.push(("origin CPU %", |r| r.origin_cpu_percent));
    rows.push(("proxy CPU %", |r| r.proxy.as_ref().map(|p| p.cpu_percent)));
    rows.push(("proxy peak RSS MB", |r| {
        r.proxy.as_ref().map(|p| p.rss_peak_mb)
    }));
    rows
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

fn fmt(v: Option<f64>) -> String {
    match v {
        None => "—".to_string(),
        Some(0.0) => "0".to_string(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) if v.abs() >= 1.0 => format!("{v:.2}"),
        Some(v) => format!("{v:.3}"),
    }
}

pub struct Extra {
    pub idle_rss_kb: Option<u64>,
    pub final_rss_kb: Option<u64>,
    /// The target of the first column and the denominator of the ratio (`direct`).
    pub baseline: String,
    /// The target compared with it (`proxy`).
    pub subject: String,
}

/// The Markdown table, and the total number of failed requests in the reports.
pub fn render(input: &Path, extra: &Extra) -> Result<(String, u64)> {
    let text =
        std::fs::read_to_string(input).with_context(|| format!("read {}", input.display()))?;
    let mut groups: Vec<(String, Vec<Report>)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let report: Report = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a report", input.display(), n + 1))?;
        let label = report
            .label
            .clone()
            .unwrap_or_else(|| report.workload.clone());
        match groups.iter_mut().find(|(l, _)| *l == label) {
            Some((_, reports)) => reports.push(report),
            None => groups.push((label, vec![report])),
        }
    }
    let mut out = String::new();
    let (b, s) = (extra.baseline.as_str(), extra.subject.as_str());
    let _ = writeln!(
        out,
        "| workload | figure | {b} | {s} | {s}/{b} | {s}, each round |"
    );
    out.push_str("| --- | --- | ---: | ---: | ---: | ---: |\n");
    let mut failed = 0;
    for (label, reports) in &groups {
        let of = |target: &str| -> Vec<&Report> {
            reports
                .iter()
                .filter(|r| r.target.as_deref() == Some(target))
                .collect()
        };
        let (direct, proxy) = (of(b), of(s));
        let rounds = direct.len().max(proxy.len());
        let mut first = true;
        let mut name = || {
            if std::mem::take(&mut first) {
                format!("{label} (×{rounds})")
            } else {
                String::new()
            }
        };
        for (figure, get) in figures(&reports[0]) {
            let d = median(direct.iter().filter_map(|r| get(r)).collect());
            let p = median(proxy.iter().filter_map(|r| get(r)).collect());
            if d.is_none() && p.is_none() {
                continue;
            }
            let ratio = match (d, p) {
                (Some(d), Some(p)) if d != 0.0 => fmt(Some(p / d)),
                _ => "—".to_string(),
            };
            // Medians hide a bad round; the spread shows it.
            let each: Vec<String> = proxy.iter().map(|r| fmt(get(r))).collect();
            let _ = writeln!(
                out,
                "| {} | {figure} | {} | {} | {ratio} | {} |",
                name(),
                fmt(d),
                fmt(p),
                each.join(" / ")
            );
        }
        if reports[0].workload == "latency" {
            let get: Figure = |r| r.kinds.values().next()?.total_ms.map(|p| p.p50);
            let d = median(direct.iter().filter_map(|r| get(r)).collect());
            let p = median(proxy.iter().filter_map(|r| get(r)).collect());
            if let (Some(d), Some(p)) = (d, p) {
                let what = if b == "direct" {
                    "added latency".to_string()
                } else {
                    format!("{s} minus {b}")
                };
                let _ = writeln!(
                    out,
                    "| {} | **{what}, median (ms)** | | **{:.3}** | | |",
                    name(),
                    p - d
                );
            }
        }
        let errors = |rs: &[&Report]| rs.iter().map(|r| r.errors).sum::<u64>();
        let (de, pe) = (errors(&direct), errors(&proxy));
        failed += de + pe;
        let _ = writeln!(
            out,
            "| {} | failed requests (sum) | {de} | {pe} | | |",
            name()
        );
    }
    if extra.idle_rss_kb.is_some() || extra.final_rss_kb.is_some() {
        let mb = |kb: Option<u64>| fmt(kb.map(|kb| kb as f64 / 1024.0));
        let _ = writeln!(
            out,
            "| proxy RSS | idle, after start and stream creation (MB) | | {} | | |",
            mb(extra.idle_rss_kb)
        );
        let _ = writeln!(
            out,
            "| proxy RSS | after all workloads (MB) | | {} | | |",
            mb(extra.final_rss_kb)
        );
    }
    Ok((out, failed))
}
