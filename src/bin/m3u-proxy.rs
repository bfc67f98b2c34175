//! The server binary: flags and environment → `Config`, logging, `server::run`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use m3u_proxy::config::{
    CacheSettings, Config, FailoverSettings, FanoutSettings, SlowViewer, UpstreamTimeouts,
};
use tracing_subscriber::EnvFilter;

/// A fast, dependable HTTP proxy for HLS and IPTV streams.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on [default: 0.0.0.0; `HOST` is read when M3U_PROXY_HOST is unset].
    #[arg(long, env = "M3U_PROXY_HOST")]
    host: Option<IpAddr>,
    /// Port to listen on [default: 8001; `PORT` is read when M3U_PROXY_PORT is unset].
    #[arg(long, env = "M3U_PROXY_PORT")]
    port: Option<u16>,
    /// Path prefix every route also answers under (empty for none).
    #[arg(long, env = "ROOT_PATH", default_value = m3u_proxy::config::DEFAULT_ROOT_PATH)]
    root_path: String,
    /// Log at debug level (same as LOG_LEVEL=debug).
    #[arg(long)]
    debug: bool,
    /// Log level or filter (error, warn, info, debug, trace, or a tracing filter).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Seconds after which a client without requests or open connections is forgotten.
    #[arg(long, env = "CLIENT_TIMEOUT", default_value_t = 300)]
    client_timeout: u64,
    /// Seconds between sweeps of idle clients and streams.
    #[arg(long, env = "CLEANUP_INTERVAL", default_value_t = 60)]
    cleanup_interval: u64,
    /// Seconds after which a stream nobody plays is removed (0 = never).
    #[arg(long, env = "STREAM_TIMEOUT", default_value_t = 3600)]
    stream_timeout: u64,
    /// Token required by the management API (playback and /health never need it).
    #[arg(long, env = "API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Secret that signs playlist references and derives stream ids; share it between
    /// instances behind one load balancer.
    #[arg(long, env = "M3U_PROXY_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Directory for state that survives restarts (the generated signing secret).
    #[arg(long, env = "M3U_PROXY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Comma-separated addresses of reverse proxies whose X-Forwarded-For is trusted.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxies: Vec<IpAddr>,
    /// Seconds to wait for an upstream connection.
    #[arg(long, env = "UPSTREAM_CONNECT_TIMEOUT", default_value_t = 5.0)]
    connect_timeout: f64,
    /// Seconds to wait for an upstream's response headers.
    #[arg(long, env = "UPSTREAM_FIRST_BYTE_TIMEOUT", default_value_t = 10.0)]
    first_byte_timeout: f64,
    /// Seconds of upstream silence mid-body before it counts as stalled.
    #[arg(long, env = "UPSTREAM_READ_TIMEOUT", default_value_t = 10.0)]
    read_timeout: f64,
    /// Seconds allowed to fetch a whole playlist.
    #[arg(long, env = "PLAYLIST_TIMEOUT", default_value_t = 15.0)]
    playlist_timeout: f64,
    /// Largest playlist accepted from an origin, in bytes.
    #[arg(long, env = "MAX_PLAYLIST_BYTES", default_value_t = 16 * 1024 * 1024)]
    max_playlist_bytes: usize,
    /// Extra attempts on the same upstream URL after a quick failure, before failing over.
    #[arg(long, env = "FAILOVER_RETRIES", default_value_t = 2)]
    failover_retries: u32,
    /// Base pause in milliseconds before retrying the same URL (jittered, growing per try).
    #[arg(long, env = "FAILOVER_BACKOFF_MS", default_value_t = 200)]
    failover_backoff_ms: u64,
    /// Most automatic failovers of one stream per minute.
    #[arg(long, env = "FAILOVER_MAX_PER_MINUTE", default_value_t = 6)]
    failover_max_per_minute: u32,
    /// Seconds a fetched segment is shared with other viewers (0 = no segment cache).
    #[arg(long, env = "CACHE_SEGMENT_TTL", default_value_t = 30.0)]
    cache_segment_ttl: f64,
    /// Megabytes of segments the shared cache may hold (0 = no segment cache).
    #[arg(long, env = "CACHE_MAX_MB", default_value_t = 256)]
    cache_max_mb: u64,
    /// Largest single segment cached, in megabytes; bigger ones are relayed unshared.
    #[arg(long, env = "CACHE_MAX_ENTRY_MB", default_value_t = 16)]
    cache_max_entry_mb: u64,
    /// Seconds a fetched playlist is shared (capped at half its target duration; 0 = off).
    #[arg(long, env = "CACHE_PLAYLIST_TTL", default_value_t = 1.0)]
    cache_playlist_ttl: f64,
    /// Upstream chunks buffered for the viewers sharing a live TS stream (0 = no sharing:
    /// one upstream connection per viewer).
    #[arg(long, env = "FANOUT_BUFFER", default_value_t = 256)]
    fanout_buffer: usize,
    /// What to do with a live viewer that falls behind the buffer: drop it, or skip it ahead.
    #[arg(long, env = "SLOW_VIEWER", value_enum, default_value = "drop")]
    slow_viewer: SlowViewerArg,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SlowViewerArg {
    Drop,
    Skip,
}

/// The value of an alias variable (`HOST`, `PORT`: the names m3u-editor's compose files
/// set) when the `M3U_PROXY_` name and the flag were not given.
fn alias<T: std::str::FromStr>(given: Option<T>, name: &str) -> anyhow::Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    if given.is_some() {
        return Ok(given);
    }
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{name}={v:?}: {e}")),
        _ => Ok(None),
    }
}

fn seconds(name: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("{name} must be a number of seconds"))
}

impl Args {
    fn into_config(self) -> anyhow::Result<Config> {
        Ok(Config {
            host: alias(self.host, "HOST")?.unwrap_or(IpAddr::from([0, 0, 0, 0])),
            port: alias(self.port, "PORT")?.unwrap_or(8001),
            root_path: m3u_proxy::config::normalize_root_path(&self.root_path),
            client_timeout: Duration::from_secs(self.client_timeout),
            cleanup_interval: Duration::from_secs(self.cleanup_interval),
            stream_timeout: (self.stream_timeout > 0)
                .then(|| Duration::from_secs(self.stream_timeout)),
            api_token: self.api_token.filter(|t| !t.is_empty()),
            secret: self.secret.filter(|s| !s.is_empty()),
            data_dir: self.data_dir,
            trusted_proxies: self.trusted_proxies,
            upstream: UpstreamTimeouts {
                connect: seconds("--connect-timeout", self.connect_timeout)?,
                first_byte: seconds("--first-byte-timeout", self.first_byte_timeout)?,
                read_stall: seconds("--read-timeout", self.read_timeout)?,
                playlist_total: seconds("--playlist-timeout", self.playlist_timeout)?,
            },
            max_playlist_bytes: self.max_playlist_bytes,
            failover: FailoverSettings {
                retries: self.failover_retries,
                backoff: Duration::from_millis(self.failover_backoff_ms),
                max_switches_per_minute: self.failover_max_per_minute,
            },
            cache: CacheSettings {
                segment_ttl: seconds("--cache-segment-ttl", self.cache_segment_ttl)?,
                max_bytes: self.cache_max_mb.saturating_mul(1024 * 1024),
                max_entry_bytes: self.cache_max_entry_mb.saturating_mul(1024 * 1024),
                playlist_ttl: seconds("--cache-playlist-ttl", self.cache_playlist_ttl)?,
            },
            fanout: FanoutSettings {
                buffer: self.fanout_buffer,
                slow_viewer: match self.slow_viewer {
                    SlowViewerArg::Drop => SlowViewer::Drop,
                    SlowViewerArg::Skip => SlowViewer::Skip,
                },
            },
        })
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let level = if args.debug {
        "debug".to_string()
    } else {
        args.log_level.to_ascii_lowercase()
    };
    let filter = EnvFilter::try_new(&level).with_context(|| format!("bad LOG_LEVEL {level:?}"))?;
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let config = args.into_config()?;
    m3u_proxy::server::run(config, shutdown_signal()).await?;
    Ok(())
}
