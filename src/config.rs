//! The validated runtime configuration. Plain data with defaults that run with no
//! configuration at all; the binary turns flags and environment into a [`Config`], tests
//! build one directly. Nothing here parses arguments or reads the environment.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything the server needs to know at start-up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on (`M3U_PROXY_HOST`).
    pub host: IpAddr,
    /// Port to listen on (`M3U_PROXY_PORT`); 0 picks a free port.
    pub port: u16,
    /// A client with no open connection and no request for this long is forgotten.
    pub client_timeout: Duration,
    /// How many clients are tracked at most; see [`ClientLimits`].
    pub client_limits: ClientLimits,
    /// How often idle clients and streams are swept.
    pub cleanup_interval: Duration,
    /// A stream nobody played for this long is removed; `None` keeps streams forever.
    pub stream_timeout: Option<Duration>,
    /// When set, management routes require this token. Playback and `/health` never do.
    pub api_token: Option<String>,
    /// Secret that signs playlist references and derives stream ids. Instances behind one
    /// load balancer must share it. When `None`, it is read from (or created in) the data
    /// directory, or generated for this process only.
    pub secret: Option<String>,
    /// Where state that must survive a restart lives: the signing secret and, with the
    /// `sqlite` store, the database. `None` with `sqlite` means `./m3u-proxy-data`.
    pub data_dir: Option<PathBuf>,
    /// Where streams, webhooks and counters are kept (`M3U_PROXY_STORE`). The binary's
    /// default is `sqlite`; this struct's is `memory`, so embedding code and tests keep
    /// nothing unless they ask.
    pub store: StoreBackend,
    /// How often counter increments are written to the store (`STATE_FLUSH_INTERVAL`).
    pub state_flush_interval: Duration,
    /// The fleet's Redis (`REDIS_URL` or the compose names); required by, and only used
    /// with, [`StoreBackend::Redis`].
    pub redis: Option<RedisSettings>,
    /// `host:port` the other instances of a fleet (and its operators) reach this one at
    /// (`ADVERTISE_ADDRESS`); `None`: the bound listen address.
    pub advertise: Option<String>,
    /// Peers whose `X-Forwarded-For` / `X-Real-IP` headers are believed.
    pub trusted_proxies: Vec<IpAddr>,
    /// Upstream timeouts; see [`UpstreamTimeouts`].
    pub upstream: UpstreamTimeouts,
    /// Largest playlist accepted from an origin, in bytes.
    pub max_playlist_bytes: usize,
    /// When and how fast to retry an origin and move down a stream's URL list.
    pub failover: FailoverSettings,
    /// The shared segment and playlist cache; see [`CacheSettings`].
    pub cache: CacheSettings,
    /// How viewers of one live TS stream share its upstream; see [`FanoutSettings`].
    pub fanout: FanoutSettings,
    /// Player-side connection timeouts and limits; see [`ConnectionSettings`].
    pub connections: ConnectionSettings,
    /// `ROOT_PATH`: a prefix every route also answers under (`/m3u-proxy/health` as well as
    /// `/health`), for reverse proxies that pass it on. Empty for none; see
    /// [`normalize_root_path`].
    pub root_path: String,
    /// Channel lists: imports, their proxied playlists and the HDHomeRun tuner; see
    /// [`ChannelSettings`].
    pub channels: ChannelSettings,
}

/// Channel lists (`/playlists`) and what is served from them.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelSettings {
    /// `PUBLIC_URL`: the base of the absolute URLs written into proxied playlists, lineups
    /// and guides (`https://tv.example/m3u-proxy`), without a trailing slash. `None`: the
    /// request's scheme and host (the forwarded ones from a trusted proxy).
    pub public_url: Option<String>,
    /// Largest channel list accepted, in bytes (`CHANNEL_LIST_MAX_MB`); a bigger one is
    /// refused as soon as it passes this size.
    pub max_list_bytes: u64,
    /// The tuners the HDHomeRun emulation announces (`HDHOMERUN_TUNER_COUNT`).
    pub tuner_count: u32,
}

impl Default for ChannelSettings {
    fn default() -> Self {
        Self {
            public_url: None,
            max_list_bytes: 100 * 1024 * 1024,
            tuner_count: 2,
        }
    }
}

/// The store backends; see `crate::store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreBackend {
    /// Keep nothing: a restart starts empty.
    #[default]
    Memory,
    /// One SQLite file in the data directory.
    Sqlite,
    /// The fleet's Redis ([`Config::redis`]), shared by every instance.
    Redis,
}

/// Where the fleet's Redis is and how its keys are named (`crate::fleet` re-exports it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://[:password@]host:port/db` (credentials are never logged; see
    /// `fleet::redacted_url`).
    pub url: String,
    /// Every key starts with this and a colon.
    pub prefix: String,
}

impl StoreBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreBackend::Memory => "memory",
            StoreBackend::Sqlite => "sqlite",
            StoreBackend::Redis => "redis",
        }
    }
}

/// What a player connection may cost: how long it may take to send a request, how long it
/// may sit idle, and how many may be open. Streaming responses are never timed: a viewer
/// reading a film or a live channel holds its connection as long as it reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnectionSettings {
    /// A connection must deliver a complete request head (and then its body) within this
    /// long of connecting or of its first byte after an idle spell (`HEADER_READ_TIMEOUT`).
    pub header_read_timeout: Duration,
    /// An idle keep-alive connection (no request under way) is closed after this long
    /// (`KEEPALIVE_TIMEOUT`).
    pub keepalive_timeout: Duration,
    /// Most player connections open at once (`MAX_CONNECTIONS`); beyond it a new one gets
    /// a prompt 503 and is closed. `None`: derived at start from the descriptor limit.
    pub max_connections: Option<usize>,
    /// Most open connections (or, through a trusted proxy, requests under way) per client
    /// address (`MAX_CONNECTIONS_PER_IP`); `None`: no per-address limit.
    pub max_connections_per_ip: Option<usize>,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            max_connections: None,
            max_connections_per_ip: None,
        }
    }
}

/// Bounds on the clients tracked, so a player that varies `?client_id=` or its user agent
/// cannot grow memory, events and webhook deliveries without limit. A viewer past a limit
/// is served as any other and counted in its stream's figures, but not tracked as a client
/// of its own (no entry, no `client_connected` event) until tracked ones time out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// Clients tracked per stream; zero means no limit.
    pub per_stream: usize,
    /// Clients tracked in all; zero means no limit.
    pub total: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            per_stream: 2_000,
            total: 20_000,
        }
    }
}

/// The default `ROOT_PATH`: where m3u-editor's reverse proxy mounts the proxy.
pub const DEFAULT_ROOT_PATH: &str = "/m3u-proxy";

/// `ROOT_PATH` as routing needs it: one leading slash, no trailing slash, `""` for none
/// (`/` and blanks mean none).
pub fn normalize_root_path(raw: &str) -> String {
    let trimmed = raw.trim().trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("/{trimmed}")
    }
}

/// Live TS fan-out: all viewers of a live stream read one upstream connection through a
/// buffer of recent chunks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FanoutSettings {
    /// Chunks held for viewers that fall behind; zero turns sharing off, so each viewer
    /// opens its own upstream. Upstream reads are gathered or cut into chunks of at most
    /// 16 KB (less when 20 ms of stream bring less): 256 chunks are at most 4 MB, about 5 s
    /// of a channel up to 6 Mbit/s.
    pub buffer: usize,
    /// What happens to a viewer that falls further behind than the buffer.
    pub slow_viewer: SlowViewer,
}

impl Default for FanoutSettings {
    fn default() -> Self {
        Self {
            buffer: 256,
            slow_viewer: SlowViewer::Drop,
        }
    }
}

/// The fate of a live viewer that cannot keep up with its shared upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SlowViewer {
    /// Disconnect it; players reconnect and start again from the live edge.
    #[default]
    Drop,
    /// Skip it ahead to the oldest chunk still buffered: a jump in the picture, no reconnect.
    Skip,
}

/// The single-flight cache that lets many viewers of one HLS stream share each upstream
/// fetch. Segments are immutable in HLS, so a short TTL is safe; the byte budget bounds
/// memory whatever the number of streams.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheSettings {
    /// How long a completed segment stays shared; zero turns segment caching off.
    pub segment_ttl: Duration,
    /// Total bytes of segment bodies held; zero turns segment caching off.
    pub max_bytes: u64,
    /// Largest single body cached; bigger ones are relayed unshared.
    pub max_entry_bytes: u64,
    /// How long a playlist's upstream text is shared (never more than half its target
    /// duration); zero turns playlist sharing off.
    pub playlist_ttl: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            segment_ttl: Duration::from_secs(30),
            max_bytes: 256 * 1024 * 1024,
            max_entry_bytes: 16 * 1024 * 1024,
            playlist_ttl: Duration::from_secs(1),
        }
    }
}

/// How failover behaves. The stall limit is [`UpstreamTimeouts::read_stall`]: a body that
/// sends nothing for that long is a failure like any other.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailoverSettings {
    /// Extra attempts on the same URL after a quick failure (refused, reset, 5xx, a page
    /// that is not a playlist) before moving to the next URL. Timeouts move on at once:
    /// waiting for the same silent origin again would double the gap.
    pub retries: u32,
    /// Base pause before a retry on the same URL; each retry waits about `backoff * n`,
    /// jittered by ±50% so viewers of one dead origin do not retry in lockstep.
    pub backoff: Duration,
    /// Most automatic switches of one stream within a minute. Past it, requests fail
    /// instead of switching, so a set of dead URLs does not spin. Manual switches
    /// (`POST /streams/{id}/failover`) are never capped.
    pub max_switches_per_minute: u32,
}

impl Default for FailoverSettings {
    fn default() -> Self {
        Self {
            retries: 2,
            backoff: Duration::from_millis(200),
            max_switches_per_minute: 6,
        }
    }
}

/// Timeouts that suit streaming: bounded waits for a connection and for the first byte,
/// a stall limit between body chunks, and no total deadline on media bodies (a live stream
/// or a two-hour film must not be cut by a clock).
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTimeouts {
    /// TCP + TLS connect.
    pub connect: Duration,
    /// From request sent to response headers received.
    pub first_byte: Duration,
    /// Longest silence between two body chunks before the upstream counts as stalled.
    pub read_stall: Duration,
    /// Whole-body deadline for playlists, which are small and must be fresh.
    pub playlist_total: Duration,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(10),
            read_stall: Duration::from_secs(10),
            playlist_total: Duration::from_secs(15),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: IpAddr::from([0, 0, 0, 0]),
            port: 8001,
            client_timeout: Duration::from_secs(300),
            client_limits: ClientLimits::default(),
            cleanup_interval: Duration::from_secs(60),
            stream_timeout: Some(Duration::from_secs(3600)),
            api_token: None,
            secret: None,
            data_dir: None,
            store: StoreBackend::Memory,
            state_flush_interval: Duration::from_secs(1),
            redis: None,
            advertise: None,
            trusted_proxies: Vec::new(),
            upstream: UpstreamTimeouts::default(),
            max_playlist_bytes: 16 * 1024 * 1024,
            failover: FailoverSettings::default(),
            cache: CacheSettings::default(),
            fanout: FanoutSettings::default(),
            connections: ConnectionSettings::default(),
            root_path: DEFAULT_ROOT_PATH.to_string(),
            channels: ChannelSettings::default(),
        }
    }
}

/// A configuration value that cannot work.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    #[error("API token must not be empty")]
    EmptyToken,
    #[error("{0} must be at most {1}")]
    TooLarge(&'static str, u64),
    #[error("PUBLIC_URL must be an absolute http or https URL, not {0:?}")]
    PublicUrl(String),
    #[error("--store redis needs REDIS_URL (or REDIS_HOST)")]
    NoRedis,
    #[error("REDIS_PREFIX must not be empty")]
    EmptyRedisPrefix,
}

/// Largest `FANOUT_BUFFER`: its slots are allocated when a live stream is first shared.
pub const MAX_FANOUT_BUFFER: usize = 65_536;

impl Config {
    /// Checks values that would make the server misbehave rather than fail loudly.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let t = &self.upstream;
        for (name, d) in [
            ("client timeout", self.client_timeout),
            ("cleanup interval", self.cleanup_interval),
            ("upstream connect timeout", t.connect),
            ("upstream first-byte timeout", t.first_byte),
            ("upstream read-stall timeout", t.read_stall),
            ("playlist timeout", t.playlist_total),
            ("header read timeout", self.connections.header_read_timeout),
            ("keep-alive timeout", self.connections.keepalive_timeout),
            ("state flush interval", self.state_flush_interval),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.max_playlist_bytes == 0 {
            return Err(ConfigError::Zero("max playlist size"));
        }
        if self.failover.max_switches_per_minute == 0 {
            return Err(ConfigError::Zero("failover switches per minute"));
        }
        if self.api_token.as_deref() == Some("") {
            return Err(ConfigError::EmptyToken);
        }
        if self.connections.max_connections == Some(0) {
            return Err(ConfigError::Zero("max connections"));
        }
        if self.connections.max_connections_per_ip == Some(0) {
            return Err(ConfigError::Zero("max connections per ip"));
        }
        if self.channels.max_list_bytes == 0 {
            return Err(ConfigError::Zero("channel list size"));
        }
        if self.channels.tuner_count == 0 {
            return Err(ConfigError::Zero("HDHomeRun tuner count"));
        }
        if let Some(public) = &self.channels.public_url {
            let ok = url::Url::parse(public)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
            if !ok {
                return Err(ConfigError::PublicUrl(public.clone()));
            }
        }
        if self.store == StoreBackend::Redis {
            match &self.redis {
                None => return Err(ConfigError::NoRedis),
                Some(r) if r.prefix.trim().is_empty() => return Err(ConfigError::EmptyRedisPrefix),
                Some(_) => {}
            }
        }
        if self.fanout.buffer > MAX_FANOUT_BUFFER {
            return Err(ConfigError::TooLarge(
                "fan-out buffer",
                MAX_FANOUT_BUFFER as u64,
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_documentation() {
        let c = Config::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.port, 8001);
        assert_eq!(c.client_timeout, Duration::from_secs(300));
        assert_eq!(c.client_limits.per_stream, 2_000);
        assert_eq!(c.client_limits.total, 20_000);
        assert_eq!(c.cleanup_interval, Duration::from_secs(60));
        assert_eq!(c.stream_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(c.failover.retries, 2);
        assert_eq!(c.failover.backoff, Duration::from_millis(200));
        assert_eq!(c.failover.max_switches_per_minute, 6);
        assert_eq!(c.cache.segment_ttl, Duration::from_secs(30));
        assert_eq!(c.cache.max_bytes, 256 * 1024 * 1024);
        assert_eq!(c.cache.playlist_ttl, Duration::from_secs(1));
        assert_eq!(c.fanout.buffer, 256);
        assert_eq!(c.fanout.slow_viewer, SlowViewer::Drop);
        assert_eq!(c.connections.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.connections.keepalive_timeout, Duration::from_secs(60));
        assert_eq!(c.connections.max_connections, None);
        assert_eq!(c.connections.max_connections_per_ip, None);
        assert_eq!(c.root_path, "/m3u-proxy");
        assert_eq!(
            c.store,
            StoreBackend::Memory,
            "the binary's default is sqlite"
        );
        assert_eq!(c.state_flush_interval, Duration::from_secs(1));
    }

    #[test]
    fn root_paths_are_normalized() {
        assert_eq!(normalize_root_path("/m3u-proxy"), "/m3u-proxy");
        assert_eq!(normalize_root_path("m3u-proxy/"), "/m3u-proxy");
        assert_eq!(normalize_root_path(" /a/b/ "), "/a/b");
        assert_eq!(normalize_root_path("/"), "");
        assert_eq!(normalize_root_path(""), "");
    }

    #[test]
    fn zero_durations_and_empty_tokens_are_refused() {
        let mut c = Config {
            cleanup_interval: Duration::ZERO,
            ..Config::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::Zero("cleanup interval")));
        c.cleanup_interval = Duration::from_secs(1);
        c.api_token = Some(String::new());
        assert_eq!(c.validate(), Err(ConfigError::EmptyToken));
        c.api_token = None;
        c.fanout.buffer = MAX_FANOUT_BUFFER + 1;
        assert_eq!(
            c.validate(),
            Err(ConfigError::TooLarge(
                "fan-out buffer",
                MAX_FANOUT_BUFFER as u64
            ))
        );
        c.fanout.buffer = 0;
        assert_eq!(c.validate(), Ok(()), "0 turns sharing off");
        c.store = StoreBackend::Redis;
        assert_eq!(c.validate(), Err(ConfigError::NoRedis));
        c.redis = Some(RedisSettings {
            url: "redis://127.0.0.1:6379/0".into(),
            prefix: " ".into(),
        });
        assert_eq!(c.validate(), Err(ConfigError::EmptyRedisPrefix));
        c.redis.as_mut().unwrap().prefix = "m3u-proxy".into();
        assert_eq!(c.validate(), Ok(()));
    }
}
