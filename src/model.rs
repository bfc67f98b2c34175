//! The JSON shapes of the API, shared by the server and the CLI so the two can never
//! disagree. Timestamps are RFC 3339 UTC. These types carry data only: no I/O, no locks.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How a stream is played: rewritten HLS playlists, or bytes relayed as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamType {
    /// An HLS playlist (`/hls/{id}/playlist.m3u8`).
    Hls,
    /// A direct file or live transport stream (`/stream/{id}`).
    Direct,
}

impl StreamType {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamType::Hls => "hls",
            StreamType::Direct => "direct",
        }
    }
}

/// `POST /streams` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateStream {
    pub url: String,
    #[serde(default)]
    pub failover_urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// Extra request headers sent upstream (e.g. `Referer`, `Authorization`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Free-form data of the orchestrator, stored and returned as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_type: Option<StreamType>,
}

/// `POST /streams` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamCreated {
    pub stream_id: String,
    pub stream_type: StreamType,
    /// The path a player should open: `playlist_url` for HLS, `direct_url` otherwise.
    pub stream_endpoint: String,
    pub playlist_url: String,
    pub direct_url: String,
    pub original_url: String,
    pub current_url: String,
    pub failover_urls: Vec<String>,
    pub user_agent: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// One stream as the API reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamInfo {
    pub stream_id: String,
    pub stream_type: StreamType,
    pub original_url: String,
    pub current_url: String,
    pub failover_urls: Vec<String>,
    /// Index of `current_url` in `[original_url, failover_urls...]`.
    pub failover_index: usize,
    pub failover_count: u64,
    pub user_agent: Option<String>,
    /// Names of the extra upstream headers; values may be secrets and are never shown.
    pub header_names: Vec<String>,
    pub metadata: Option<serde_json::Value>,
    pub client_count: usize,
    pub active_connections: u64,
    pub total_bytes_served: u64,
    pub total_segments_served: u64,
    pub error_count: u64,
    pub bytes_per_second: f64,
    /// A connection is open or a viewer made a request within `CLIENT_TIMEOUT`.
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub last_access: DateTime<Utc>,
}

/// One viewer of one stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub client_id: String,
    pub stream_id: Option<String>,
    pub user_agent: String,
    pub ip_address: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub bytes_served: u64,
    pub segments_served: u64,
    pub active_connections: u64,
    pub bytes_per_second: f64,
    /// A connection is open or the last request is within `CLIENT_TIMEOUT` (an HLS player
    /// spends most of its time between requests). Defaulted when reading an older server.
    #[serde(default)]
    pub is_active: bool,
}

/// `GET /streams`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamList {
    pub streams: Vec<StreamInfo>,
    pub total: usize,
}

/// `GET /streams/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamDetail {
    pub stream: StreamInfo,
    pub clients: Vec<ClientInfo>,
    pub client_count: usize,
}

/// `GET /clients`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientList {
    pub clients: Vec<ClientInfo>,
    pub total: usize,
}

/// `DELETE /streams/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamDeleted {
    pub stream_id: String,
    pub message: String,
}

/// `POST /streams/{id}/failover`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailoverDone {
    pub stream_id: String,
    pub previous_url: String,
    pub current_url: String,
    pub failover_index: usize,
}

/// Totals of the whole proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyStats {
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub uptime_seconds: u64,
    pub total_streams: usize,
    pub active_streams: usize,
    pub total_clients: usize,
    pub active_clients: usize,
    pub active_connections: u64,
    pub total_bytes_served: u64,
    pub total_segments_served: u64,
    pub total_errors: u64,
    pub total_failovers: u64,
    pub bytes_per_second: f64,
}

/// `GET /stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub proxy: ProxyStats,
    pub streams: Vec<StreamInfo>,
    pub clients: Vec<ClientInfo>,
}

/// `GET /health`: cheap, for load balancers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    /// Defaulted (to the Unix epoch) when reading an older server.
    #[serde(default)]
    pub started_at: DateTime<Utc>,
    pub uptime_seconds: u64,
    pub streams: usize,
    pub clients: usize,
    pub active_connections: u64,
    #[serde(default)]
    pub total_bytes_served: u64,
    /// Player TCP connections open now (idle keep-alive ones included), against
    /// `max_connections`: beyond it new connections are refused with 503.
    #[serde(default)]
    pub open_connections: u64,
    #[serde(default)]
    pub max_connections: u64,
}

/// Every error answer of the API: `{"detail": "...", "code": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub detail: String,
    pub code: String,
}
