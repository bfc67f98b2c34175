//! The server binary: flags and environment → `Config`, logging, `server::run`. Every
//! setting is checked before anything listens; a failure is one `error: ...` line on
//! stderr, exit code 2 for a setting that cannot work, 1 for a start that failed.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use m3u_proxy::config::{
    CacheSettings, ChannelSettings, ClientLimits, Config, ConnectionSettings, FailoverSettings,
    FanoutSettings, RedisSettings, SlowViewer, StoreBackend, UpstreamTimeouts,
};
use m3u_proxy::fleet::FleetError;
use m3u_proxy::logging::{self, LogFormat};
use m3u_proxy::server::ServerError;
use m3u_proxy::store::StoreError;

/// mimalloc gives freed memory back to the system within moments of the thread that owns
/// it allocating again; glibc's malloc keeps what a burst of viewers used resident long
/// after they left (see BENCHMARKS.md). A worker thread that goes idle after a burst
/// allocates nothing more, so it collects when it parks ([`collect_when_idle`]).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The least time between two collections on one worker thread.
const COLLECT_EVERY: Duration = Duration::from_secs(1);

/// Runs on a worker thread each time it runs out of tasks: at most once per
/// [`COLLECT_EVERY`], its freed pages go back to mimalloc's arenas and what the arenas hold
/// unused goes back to the system. Without it, the memory a burst of viewers used stayed
/// resident on the threads that served them until traffic resumed (103 MB 35 s after the
/// benchmark run, from 14 MB idle: BENCHMARKS.md).
fn collect_when_idle() {
    thread_local! {
        static LAST: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
    }
    let now = Instant::now();
    let due = LAST.with(|last| {
        let due = last
            .get()
            .is_none_or(|at| now.duration_since(at) >= COLLECT_EVERY);
        if due {
            last.set(Some(now));
        }
        due
    });
    if due {
        mimalloc_collect();
    }
}

/// The crate's one `unsafe`: a call into mimalloc's C API.
#[allow(unsafe_code)]
fn mimalloc_collect() {
    // SAFETY: `mi_collect` takes no pointer and may be called on any thread at any time;
    // it frees only blocks already freed, in the calling thread's heap and the arenas.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// A fast, dependable HTTP proxy for HLS and IPTV streams.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on; `HOST` is read when M3U_PROXY_HOST is unset [default: 0.0.0.0]
    #[arg(long, env = "M3U_PROXY_HOST")]
    host: Option<IpAddr>,
    /// Port to listen on; `PORT` is read when M3U_PROXY_PORT is unset [default: 8001]
    #[arg(long, env = "M3U_PROXY_PORT")]
    port: Option<u16>,
    /// Path prefix every route also answers under (empty for none).
    #[arg(long, env = "ROOT_PATH", default_value = m3u_proxy::config::DEFAULT_ROOT_PATH)]
    root_path: String,
    /// Log at debug level (same as LOG_LEVEL=debug).
    #[arg(long)]
    debug: bool,
    /// Log level or filter (off, error, warn, info, debug, trace, or a filter such as
    /// m3u_proxy=debug,info).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log lines as text (coloured only on a terminal, never with NO_COLOR) or JSON.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormatArg,
    /// Seconds after which a client without requests or open connections is forgotten.
    #[arg(long, env = "CLIENT_TIMEOUT", default_value_t = 300)]
    client_timeout: u64,
    /// Clients tracked per stream at most (0 = no limit); more viewers are served untracked.
    #[arg(long, env = "MAX_CLIENTS_PER_STREAM", default_value_t = 2_000)]
    max_clients_per_stream: usize,
    /// Clients tracked in all at most (0 = no limit); more viewers are served untracked.
    #[arg(long, env = "MAX_CLIENTS", default_value_t = 20_000)]
    max_clients: usize,
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
    /// Directory for state that survives restarts: the generated signing secret and the
    /// database [default: ./m3u-proxy-data]
    #[arg(long, env = "M3U_PROXY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where streams, webhooks and counters are kept: sqlite (a database in the data
    /// directory), memory (nothing survives a restart) or redis (shared by a fleet of
    /// instances; see REDIS_URL).
    #[arg(long, env = "M3U_PROXY_STORE", value_enum, default_value = "sqlite")]
    store: StoreArg,
    /// The fleet's Redis with --store redis: redis://[:password@]host:port/db (default:
    /// built from REDIS_HOST and the other REDIS_ names).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// Redis host with --store redis when REDIS_URL is not set.
    #[arg(long, env = "REDIS_HOST")]
    redis_host: Option<String>,
    /// Redis port; `REDIS_SERVER_PORT` is read when REDIS_PORT is unset [default: 6379]
    #[arg(long, env = "REDIS_PORT")]
    redis_port: Option<u16>,
    /// Redis database number [default: 0]
    #[arg(long, env = "REDIS_DB")]
    redis_db: Option<u32>,
    /// Redis password when REDIS_URL is not set.
    #[arg(long, env = "REDIS_PASSWORD", hide_env_values = true)]
    redis_password: Option<String>,
    /// Prefix of every Redis key, so one Redis can hold several fleets.
    #[arg(long, env = "REDIS_PREFIX", default_value = m3u_proxy::fleet::DEFAULT_PREFIX)]
    redis_prefix: String,
    /// host:port the other instances of a fleet reach this one at, shown in the fleet
    /// view (default: the bound listen address).
    #[arg(long, env = "ADVERTISE_ADDRESS")]
    advertise_address: Option<String>,
    /// Seconds between writes of counter increments to the store (also written at shutdown).
    #[arg(long, env = "STATE_FLUSH_INTERVAL", default_value_t = 1.0)]
    state_flush_interval: f64,
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
    /// Seconds a player connection may take to send a complete request head (and its body).
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value_t = 10.0)]
    header_read_timeout: f64,
    /// Seconds an idle keep-alive player connection stays open.
    #[arg(long, env = "KEEPALIVE_TIMEOUT", default_value_t = 60.0)]
    keepalive_timeout: f64,
    /// Most player connections open at once; beyond it, 503 (default: from the
    /// descriptor limit).
    #[arg(long, env = "MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Most connections per client address (the forwarded one behind TRUSTED_PROXIES);
    /// default: no limit.
    #[arg(long, env = "MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: Option<usize>,
    /// Base of the absolute URLs in proxied channel lists, lineups and guides
    /// (default: the request's scheme and host).
    #[arg(long, env = "PUBLIC_URL")]
    public_url: Option<String>,
    /// Largest channel list accepted, in megabytes.
    #[arg(long, env = "CHANNEL_LIST_MAX_MB", default_value_t = 100)]
    channel_list_max_mb: u64,
    /// Tuners the HDHomeRun emulation announces (/discover.json TunerCount).
    #[arg(long, env = "HDHOMERUN_TUNER_COUNT", default_value_t = 2)]
    hdhomerun_tuner_count: u32,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StoreArg {
    Sqlite,
    Memory,
    Redis,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SlowViewerArg {
    Drop,
    Skip,
}

/// The value of an alias variable (`HOST`, `PORT`: the names m3u-editor's compose files
/// set) when the `M3U_PROXY_` name and the flag were not given.
fn alias<T: std::str::FromStr>(given: Option<T>, name: &str) -> Result<Option<T>, String>
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
            .map_err(|e| format!("{name}={v:?}: {e}")),
        _ => Ok(None),
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

fn seconds(name: &str, s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| format!("{name} must be a number of seconds of 0 or more, not {s}"))
}

impl Args {
    /// The fleet's Redis: `REDIS_URL`, else a URL built from the compose names; `None`
    /// unless `--store redis` (m3u-editor's compose files set `REDIS_HOST` for its own use).
    fn redis(&self) -> Result<Option<RedisSettings>, String> {
        if !matches!(self.store, StoreArg::Redis) {
            return Ok(None);
        }
        let url = match self.redis_url.as_deref().map(str::trim) {
            Some(url) if !url.is_empty() => Some(url.to_string()),
            _ => m3u_proxy::fleet::url_from_parts(
                self.redis_host.as_deref(),
                alias(self.redis_port, "REDIS_SERVER_PORT")?,
                self.redis_db,
                self.redis_password.as_deref(),
            ),
        };
        Ok(url.map(|url| RedisSettings {
            url,
            prefix: self.redis_prefix.trim().to_string(),
        }))
    }

    fn into_config(self) -> Result<Config, String> {
        Ok(Config {
            redis: self.redis()?,
            advertise: self
                .advertise_address
                .as_deref()
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_string),
            host: alias(self.host, "HOST")?.unwrap_or(IpAddr::from([0, 0, 0, 0])),
            port: alias(self.port, "PORT")?.unwrap_or(8001),
            root_path: m3u_proxy::config::normalize_root_path(&self.root_path),
            client_timeout: Duration::from_secs(self.client_timeout),
            client_limits: ClientLimits {
                per_stream: self.max_clients_per_stream,
                total: self.max_clients,
            },
            cleanup_interval: Duration::from_secs(self.cleanup_interval),
            stream_timeout: (self.stream_timeout > 0)
                .then(|| Duration::from_secs(self.stream_timeout)),
            api_token: self.api_token.filter(|t| !t.is_empty()),
            secret: self.secret.filter(|s| !s.is_empty()),
            data_dir: match self.store {
                StoreArg::Sqlite => self
                    .data_dir
                    .or_else(|| Some(PathBuf::from(m3u_proxy::store::DEFAULT_DATA_DIR))),
                StoreArg::Memory | StoreArg::Redis => self.data_dir,
            },
            store: match self.store {
                StoreArg::Sqlite => StoreBackend::Sqlite,
                StoreArg::Memory => StoreBackend::Memory,
                StoreArg::Redis => StoreBackend::Redis,
            },
            state_flush_interval: seconds("--state-flush-interval", self.state_flush_interval)?,
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
            connections: ConnectionSettings {
                header_read_timeout: seconds("--header-read-timeout", self.header_read_timeout)?,
                keepalive_timeout: seconds("--keepalive-timeout", self.keepalive_timeout)?,
                max_connections: self.max_connections,
                max_connections_per_ip: self.max_connections_per_ip,
            },
            channels: ChannelSettings {
                public_url: self
                    .public_url
                    .map(|u| u.trim().trim_end_matches('/').to_string())
                    .filter(|u| !u.is_empty()),
                max_list_bytes: self.channel_list_max_mb.saturating_mul(1024 * 1024),
                tuner_count: self.hdhomerun_tuner_count,
                ..ChannelSettings::default()
            },
        })
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when
/// the future is first polled: a signal sent as soon as the proxy answers must stop it
/// cleanly rather than kill it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).ok();
        let mut int = signal(SignalKind::interrupt()).ok();
        async move {
            tokio::select! { () = next(&mut term) => {}, () = next(&mut int) => {} }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The next delivery of `signal`; never, when its handler could not be installed.
#[cfg(unix)]
async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Exit code of a setting that cannot work, as for a usage error.
const BAD_SETTING: u8 = 2;

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(collect_when_idle)
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(run()),
        Err(err) => fail(1, &format!("error: cannot start the runtime: {err}")),
    }
}

async fn run() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(err) => match m3u_proxy::cli::usage_error(&err, "m3u-proxy") {
            Some(lines) => return fail(BAD_SETTING, &lines),
            None => err.exit(),
        },
    };
    let level = if args.debug { "debug" } else { &args.log_level };
    let filter = match logging::filter(level) {
        Ok(filter) => filter,
        Err(err) => return fail(BAD_SETTING, &format!("error: LOG_LEVEL: {err}")),
    };
    let format = match args.log_format {
        LogFormatArg::Text => LogFormat::Text,
        LogFormatArg::Json => LogFormat::Json,
    };
    let config = match args.into_config() {
        Ok(config) => config,
        Err(err) => return fail(BAD_SETTING, &format!("error: {err}")),
    };
    if let Err(err) = config.validate() {
        return fail(BAD_SETTING, &format!("error: invalid configuration: {err}"));
    }
    logging::init(&filter, format);
    match m3u_proxy::server::run(config, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        // Each error's message already holds its cause: printed once, on one line.
        Err(
            err @ (ServerError::Config(_)
            | ServerError::DataDir { .. }
            | ServerError::Store(StoreError::Directory { .. })
            | ServerError::Fleet(FleetError::InvalidUrl { .. })),
        ) => fail(BAD_SETTING, &format!("error: {err}")),
        Err(err) => fail(1, &format!("error: {err}")),
    }
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("{message}");
    ExitCode::from(code)
}
