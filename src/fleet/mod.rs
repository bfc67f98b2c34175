//! The fleet: several instances acting as one proxy through one Redis (`--store redis`).
//!
//! This module owns the connection to Redis and the names of every key the fleet uses, so
//! one place says what lives where. [`presence`] writes this instance's heartbeat and
//! reads the fleet view the statistics routes report; [`events`] joins the instances'
//! event feeds; [`slots`] keeps provider limits for the whole fleet. Everything is under one prefix (`REDIS_PREFIX`,
//! default `m3u-proxy`), so one Redis can serve several fleets, and nothing here is ever
//! replicated by hand: Redis is the shared state.
//!
//! # Keys (prefix `p`)
//!
//! | key | type | what |
//! |-----|------|------|
//! | `p:doc:{kind}` | hash | id → the JSON document of a stream, webhook, provider or channel list |
//! | `p:counters:{stream id}` | hash | `bytes`, `segments`, `errors`, `failovers`: added to with `HINCRBY` |
//! | `p:totals` | hash | the same four numbers for the whole fleet, deleted streams included |
//! | `p:changes` | pub/sub | one message per document written or deleted, so the others reload it |
//! | `p:secret` | string | the signing secret, set once by the first instance (`SET NX`) |
//! | `p:instance:{id}` | string | an instance's heartbeat (JSON), with a TTL |
//! | `p:instances` | sorted set | instance id → time of its last heartbeat (ms) |
//! | `p:events` | pub/sub | every instance's events |
//! | `p:slots:{provider}` | sorted set | a provider's slots: holder → lease expiry (ms) |
//! | `p:slotinfo:{provider}` | hash | holder → who holds the slot (JSON) |
//! | `p:stops` | pub/sub | requests to stop a stream's holders of a provider slot |

mod backend;
pub mod events;
pub mod presence;
pub mod slots;
pub mod sync;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub use backend::{
    connect_blocking, counter_set, counters_key, doc_key, shared_secret, Change, ChangeOp,
    RedisBackend,
};

/// The key prefix when `REDIS_PREFIX` is not set.
pub const DEFAULT_PREFIX: &str = "m3u-proxy";

/// Where the fleet's Redis is and how its keys are named (defined in `config`, which
/// every module may use).
pub use crate::config::RedisSettings;

/// Builds a Redis URL from m3u-editor's compose names (`REDIS_HOST`, `REDIS_PORT` or
/// `REDIS_SERVER_PORT`, `REDIS_DB`, `REDIS_PASSWORD`); `None` when no host is given.
pub fn url_from_parts(
    host: Option<&str>,
    port: Option<u16>,
    db: Option<u32>,
    password: Option<&str>,
) -> Option<String> {
    let host = host.map(str::trim).filter(|h| !h.is_empty())?;
    let auth = match password.filter(|p| !p.is_empty()) {
        Some(p) => format!(":{}@", percent_encode_userinfo(p)),
        None => String::new(),
    };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    Some(format!(
        "redis://{auth}{host}:{}/{}",
        port.unwrap_or(6379),
        db.unwrap_or(0)
    ))
}

fn percent_encode_userinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The URL without its password, for logs and `/health`.
pub fn redacted_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "redis://(invalid URL)".to_string(),
    }
}

/// Why the fleet's Redis could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FleetError {
    #[error("invalid REDIS_URL {url}: {detail}")]
    InvalidUrl { url: String, detail: String },
    #[error("cannot reach Redis at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("cannot read the fleet's secret from Redis at {url}: {detail}")]
    Secret { url: String, detail: String },
}

/// This instance's handle to the fleet: its id, the key prefix and the Redis connections.
#[derive(Clone)]
pub struct Fleet {
    /// Unique per process (host name, pid and a random suffix).
    pub instance_id: String,
    pub prefix: String,
    /// The URL without credentials.
    pub location: String,
    /// For blocking connections (the store's writer thread) and pub/sub subscriptions.
    pub client: redis::Client,
    /// The shared async connection: multiplexed, reconnects on its own with backoff.
    pub conn: ConnectionManager,
    /// Whether Redis answers and this instance follows the fleet's changes (kept by
    /// `sync`); `/health` says `degraded` while it does not.
    pub reachable: Arc<AtomicBool>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("instance_id", &self.instance_id)
            .field("prefix", &self.prefix)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// How long one Redis command may take before it counts as failed: playback never waits
/// on Redis, and management calls answer 503 rather than hang.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

impl Fleet {
    /// Connects to Redis (one attempt, [`COMMAND_TIMEOUT`]); after that the connection
    /// manager reconnects with exponential backoff (100 ms up to 5 s) by itself.
    pub async fn connect(settings: &RedisSettings) -> Result<Fleet, FleetError> {
        let location = redacted_url(&settings.url);
        let client =
            redis::Client::open(settings.url.as_str()).map_err(|e| FleetError::InvalidUrl {
                url: location.clone(),
                detail: e.to_string(),
            })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(5))
            .set_number_of_retries(2);
        let conn = tokio::time::timeout(
            COMMAND_TIMEOUT * 2,
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| FleetError::Unreachable {
            url: location.clone(),
            detail: "timed out".into(),
        })?
        .map_err(|e| FleetError::Unreachable {
            url: location.clone(),
            detail: e.to_string(),
        })?;
        Ok(Fleet {
            instance_id: new_instance_id(),
            prefix: settings.prefix.clone(),
            location,
            client,
            conn,
            reachable: Arc::new(AtomicBool::new(true)),
        })
    }

    /// `prefix:suffix`.
    pub fn key(&self, suffix: &str) -> String {
        key(&self.prefix, suffix)
    }

    /// See [`Fleet::reachable`].
    pub fn is_reachable(&self) -> bool {
        self.reachable.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The store backend on this fleet's Redis (a blocking connection of its own).
    pub fn backend(&self) -> RedisBackend {
        RedisBackend::new(
            self.client.clone(),
            &self.prefix,
            &self.instance_id,
            &self.location,
        )
    }

    /// The fleet's shared signing secret; see [`shared_secret`].
    pub fn secret(&self) -> Result<Vec<u8>, FleetError> {
        shared_secret(&self.client, &self.prefix).map_err(|e| FleetError::Secret {
            url: self.location.clone(),
            detail: e.to_string(),
        })
    }
}

/// `prefix:suffix`.
pub fn key(prefix: &str, suffix: &str) -> String {
    format!("{prefix}:{suffix}")
}

/// `host-pid-xxxx`: readable in `/stats`, unique across restarts.
fn new_instance_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "m3u-proxy".into());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_names_build_a_url() {
        assert_eq!(url_from_parts(None, Some(6380), None, None), None);
        assert_eq!(
            url_from_parts(Some("redis"), None, None, None).as_deref(),
            Some("redis://redis:6379/0")
        );
        assert_eq!(
            url_from_parts(Some("10.0.0.5"), Some(6380), Some(2), Some("p@ss word")).as_deref(),
            Some("redis://:p%40ss%20word@10.0.0.5:6380/2")
        );
        assert_eq!(
            url_from_parts(Some("::1"), None, None, None).as_deref(),
            Some("redis://[::1]:6379/0")
        );
    }

    #[test]
    fn the_password_never_shows() {
        assert_eq!(
            redacted_url("redis://:secret@host:6379/1"),
            "redis://:***@host:6379/1"
        );
        assert_eq!(redacted_url("redis://host:6379/0"), "redis://host:6379/0");
        assert!(!redacted_url("not a url :secret@").contains("secret"));
    }

    #[test]
    fn keys_share_the_prefix() {
        assert_eq!(key("m3u-proxy", "doc:stream"), "m3u-proxy:doc:stream");
    }
}
