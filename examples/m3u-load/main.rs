//! m3u-load: the load tool behind `bench/run.sh`. It simulates real viewers against an
//! origin or the proxy (real-time HLS viewers, direct-stream viewers, Range readers,
//! flat-out GETs, one-at-a-time latency), samples the proxy's RSS and CPU from /proc, and
//! reports per-kind rates and TTFB percentiles as text or one-line JSON. It also generates
//! synthetic media (`gen`), serves it when nginx is absent (`origin`), and turns a run's
//! reports into the results table (`table`). It talks to 127.0.0.1 only and must not grow
//! into a general HTTP client: see `http`.
//!
//! Run with `cargo run --release --example m3u-load -- <command> --help`.

mod content;
mod hls;
mod http;
mod load;
mod origin;
mod stats;
mod table;

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio::time::Instant;
use url::Url;

use crate::stats::{CpuClock, Kind, ProcessSampler, Report, Stats, Tags};

#[derive(Parser)]
#[command(
    name = "m3u-load",
    about = "Load generator and benchmark helper for m3u-proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write synthetic HLS (two variants, VOD and live playlists), small.ts and big.ts.
    Gen {
        #[arg(long)]
        dir: PathBuf,
        /// Segments per media playlist.
        #[arg(long, default_value_t = 150)]
        segments: usize,
        #[arg(long, default_value_t = 2.0)]
        segment_seconds: f64,
        /// Bits per second of variant 0 (variant 1 gets a quarter).
        #[arg(long, default_value_t = 1_000_000)]
        bitrate: u64,
        /// Size of big.ts in MB.
        #[arg(long, default_value_t = 64)]
        file_mb: u64,
    },
    /// Serve a directory from memory on 127.0.0.1 (GET, HEAD, Range).
    Origin {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// N real-time HLS viewers of a master or media playlist.
    Hls {
        #[arg(long)]
        url: Url,
        #[arg(long, default_value_t = 100)]
        viewers: u64,
        /// Seconds.
        #[arg(long, default_value_t = 20.0)]
        duration: f64,
        /// Seconds over which viewers join (spreads the startup burst).
        #[arg(long, default_value_t = 2.0)]
        ramp: f64,
        /// Which variant of a master to watch.
        #[arg(long, default_value_t = 0)]
        variant: usize,
        /// Seconds of media buffered ahead before the next segment is fetched
        /// [default: one target duration].
        #[arg(long)]
        buffer: Option<f64>,
        #[command(flatten)]
        common: Common,
    },
    /// N viewers of a direct stream (file or live TS), at a bitrate or flat out.
    Direct {
        #[arg(long)]
        url: Url,
        #[arg(long, default_value_t = 50)]
        viewers: u64,
        #[arg(long, default_value_t = 20.0)]
        duration: f64,
        /// Bits per second each viewer consumes; flat out when absent.
        #[arg(long)]
        bitrate: Option<u64>,
        #[arg(long, default_value_t = 1.0)]
        ramp: f64,
        #[command(flatten)]
        common: Common,
    },
    /// Random Range reads of a file, checked for 206 and exact Content-Range.
    Range {
        #[arg(long)]
        url: Url,
        #[arg(long, default_value_t = 16)]
        concurrency: u64,
        #[arg(long, default_value_t = 10_000)]
        requests: u64,
        /// Bytes per range.
        #[arg(long, default_value_t = 65_536)]
        chunk: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Flat-out GETs of one URL over C keep-alive connections.
    Get {
        #[arg(long)]
        url: Url,
        #[arg(long, default_value_t = 64)]
        concurrency: u64,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// What the URL is [default: playlist for .m3u8, else segment].
        #[arg(long, value_enum)]
        kind: Option<KindArg>,
        #[command(flatten)]
        common: Common,
    },
    /// Sequential GETs on one connection: TTFB and total latency at concurrency 1.
    Latency {
        #[arg(long)]
        url: Url,
        #[arg(long, default_value_t = 2_000)]
        requests: u64,
        #[arg(long, default_value_t = 50)]
        warmup: u64,
        #[arg(long, value_enum)]
        kind: Option<KindArg>,
        #[command(flatten)]
        common: Common,
    },
    /// Print the absolute URL of the first segment behind a master or media playlist.
    Probe {
        #[arg(long)]
        url: Url,
        #[arg(long, default_value_t = 0)]
        variant: usize,
    },
    /// Print a free TCP port on 127.0.0.1.
    FreePort,
    /// Print the Markdown results table from a file of `--json` reports.
    Table {
        #[arg(long)]
        input: PathBuf,
        /// The proxy's RSS when idle, in kB, for the RSS rows.
        #[arg(long)]
        idle_rss_kb: Option<u64>,
        /// The proxy's RSS after the run, in kB.
        #[arg(long)]
        final_rss_kb: Option<u64>,
        /// Exit non-zero when any report counted a failed request.
        #[arg(long)]
        fail_on_errors: bool,
        /// The target of the first column, the ratio's denominator.
        #[arg(long, default_value = "direct")]
        baseline: String,
        /// The target compared with the baseline.
        #[arg(long, default_value = "proxy")]
        subject: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum KindArg {
    Playlist,
    Segment,
    Direct,
}

impl KindArg {
    fn kind(this: Option<KindArg>, url: &Url) -> Kind {
        match this {
            Some(KindArg::Playlist) => Kind::Playlist,
            Some(KindArg::Segment) => Kind::Segment,
            Some(KindArg::Direct) => Kind::Direct,
            None => Kind::of_url(url),
        }
    }
}

/// Options every workload takes.
#[derive(Args)]
struct Common {
    /// The proxy's pid: its RSS and CPU are sampled from /proc every 100 ms.
    #[arg(long)]
    pid: Option<u32>,
    /// The origin's processes (e.g. every nginx worker): their CPU is summed and reported,
    /// so a run shows where a small machine's cores went.
    #[arg(long = "origin-pid")]
    origin_pids: Vec<u32>,
    /// Print one line of JSON instead of the human summary.
    #[arg(long)]
    json: bool,
    /// Name of the workload in the results table.
    #[arg(long)]
    label: Option<String>,
    /// `direct` or `proxy`, for the results table.
    #[arg(long)]
    target: Option<String>,
    #[arg(long)]
    round: Option<u32>,
}

/// Exit status of a run in which any request failed: the driver's smoke mode checks it.
const FAILED_REQUESTS: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("m3u-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn seconds(s: f64) -> Result<Duration> {
    if !(s.is_finite() && s >= 0.0) {
        bail!("{s} is not a number of seconds");
    }
    Ok(Duration::from_secs_f64(s))
}

async fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Gen {
            dir,
            segments,
            segment_seconds,
            bitrate,
            file_mb,
        } => {
            if segments == 0 || segment_seconds <= 0.0 {
                bail!("--segments and --segment-seconds must be positive");
            }
            content::generate(
                &dir,
                &content::GenOptions {
                    segments,
                    segment_seconds,
                    bitrate,
                    file_mb,
                },
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Origin { dir, port } => {
            origin::serve(&dir, port).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Hls {
            url,
            viewers,
            duration,
            ramp,
            variant,
            buffer,
            common,
        } => {
            let origin = http::Origin::of(&url)?;
            let (duration, ramp) = (seconds(duration)?, seconds(ramp)?);
            let opts = Arc::new(hls::ViewerOptions { variant, buffer });
            let master = Arc::new(url.clone());
            measure(
                "hls",
                &url,
                viewers,
                common,
                duration,
                |deadline| async move {
                    let t0 = Instant::now();
                    Ok(load::run_workers(viewers, |i| {
                        let start_at = t0 + ramp.mul_f64(i as f64 / viewers.max(1) as f64);
                        hls::viewer(
                            i,
                            origin.clone(),
                            master.clone(),
                            opts.clone(),
                            start_at,
                            deadline,
                        )
                    })
                    .await)
                },
            )
            .await
        }
        Command::Direct {
            url,
            viewers,
            duration,
            bitrate,
            ramp,
            common,
        } => {
            let pace = load::Pace {
                bitrate,
                ahead: 2.0,
            };
            let ramp = seconds(ramp)?;
            let target = url.clone();
            measure(
                "direct",
                &url,
                viewers,
                common,
                seconds(duration)?,
                |deadline| load::direct(target, viewers, pace, ramp, deadline),
            )
            .await
        }
        Command::Range {
            url,
            concurrency,
            requests,
            chunk,
            common,
        } => {
            let target = url.clone();
            measure("range", &url, concurrency, common, Duration::MAX, |_| {
                load::range(target, concurrency, requests, chunk)
            })
            .await
        }
        Command::Get {
            url,
            concurrency,
            duration,
            kind,
            common,
        } => {
            let kind = KindArg::kind(kind, &url);
            let target = url.clone();
            measure(
                "get",
                &url,
                concurrency,
                common,
                seconds(duration)?,
                |deadline| load::get(target, kind, concurrency, deadline),
            )
            .await
        }
        Command::Latency {
            url,
            requests,
            warmup,
            kind,
            common,
        } => {
            let kind = KindArg::kind(kind, &url);
            let target = url.clone();
            measure("latency", &url, 1, common, Duration::MAX, |_| {
                load::latency(target, kind, requests, warmup)
            })
            .await
        }
        Command::Probe { url, variant } => {
            let mut conn = http::Conn::new(http::Origin::of(&url)?, 64 * 1024);
            let mut stats = Stats::default();
            let Some((media_url, playlist)) = hls::open(&mut conn, &url, variant, &mut stats).await
            else {
                bail!("cannot open {url}: {:?}", stats.error_samples);
            };
            let (uri, _) = playlist
                .segment(playlist.media_sequence)
                .expect("open checks for segments");
            println!("{}", media_url.join(uri)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::FreePort => {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            println!("{}", listener.local_addr()?.port());
            Ok(ExitCode::SUCCESS)
        }
        Command::Table {
            input,
            idle_rss_kb,
            final_rss_kb,
            fail_on_errors,
            baseline,
            subject,
        } => {
            let (text, failed) = table::render(
                &input,
                &table::Extra {
                    idle_rss_kb,
                    final_rss_kb,
                    baseline,
                    subject,
                },
            )?;
            print!("{text}");
            Ok(if fail_on_errors && failed > 0 {
                eprintln!("m3u-load: {failed} requests failed");
                ExitCode::from(FAILED_REQUESTS)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// Runs a workload until its deadline (or completion), sampling the proxy and this
/// process, then prints the report.
async fn measure<F, Fut>(
    workload: &str,
    url: &Url,
    concurrency: u64,
    common: Common,
    duration: Duration,
    work: F,
) -> Result<ExitCode>
where
    F: FnOnce(Instant) -> Fut,
    Fut: Future<Output = Result<Stats>>,
{
    let sampler = common.pid.map(ProcessSampler::start);
    let own_cpu = CpuClock::start(None);
    let origin_cpu: Vec<CpuClock> = common
        .origin_pids
        .iter()
        .map(|&pid| CpuClock::start(Some(pid)))
        .collect();
    let started = Instant::now();
    let deadline = started
        .checked_add(duration)
        .unwrap_or(started + Duration::from_secs(86_400 * 365));
    let stats = work(deadline).await?;
    let elapsed = started.elapsed();
    let loadgen_cpu = own_cpu.percent();
    let origin_cpu =
        (!origin_cpu.is_empty()).then(|| origin_cpu.iter().map(CpuClock::percent).sum::<f64>());
    let proxy = match sampler {
        Some(s) => Some(s.finish().await),
        None => None,
    };
    let report = Report::build(
        workload,
        Tags {
            label: common.label,
            target: common.target,
            round: common.round,
        },
        url.as_str(),
        concurrency,
        elapsed,
        stats,
        proxy,
        loadgen_cpu,
        origin_cpu,
    );
    report.print(common.json);
    Ok(if report.errors > 0 {
        ExitCode::from(FAILED_REQUESTS)
    } else {
        ExitCode::SUCCESS
    })
}
