//! The JSON shapes of the API, shared by the server and the CLI so the two can never
//! disagree. Timestamps are RFC 3339 UTC. These types carry data only: no I/O, no locks.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How a stream is played: rewritten HLS playlists, or bytes relayed as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateStream {
    /// An absolute http(s) URL with a host.
    #[schema(
        pattern = "^https?://[a-z]([a-z0-9]|-[a-z0-9])*(\\.[a-z]([a-z0-9]|-[a-z0-9])*)*(:[1-9][0-9]{0,3})?(/[A-Za-z0-9._~/-]*)?$"
    )]
    pub url: String,
    /// Backup URLs, tried in order when the current one fails; each like `url`.
    #[serde(default, deserialize_with = "lenient::list")]
    #[schema(schema_with = schemas::upstream_urls)]
    pub failover_urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[^\\u0000-\\u0008\\u000a-\\u001f\\u007f]*$")]
    pub user_agent: Option<String>,
    /// Extra request headers sent upstream (e.g. `Referer`, `Authorization`). An empty
    /// JSON list (what PHP sends for an empty map) or `null` means none.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "lenient::map"
    )]
    #[schema(schema_with = schemas::upstream_headers)]
    pub headers: BTreeMap<String, String>,
    /// Free-form data of the orchestrator, stored and returned as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_type: Option<StreamType>,
    #[serde(default)]
    pub provider: Option<String>,
    /// m3u-editor's failover: asked for the next URL when the current one fails. Empty
    /// means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        pattern = "^$|^https?://[a-z]([a-z0-9]|-[a-z0-9])*(\\.[a-z]([a-z0-9]|-[a-z0-9])*)*(:[1-9][0-9]{0,3})?(/[A-Za-z0-9._~/-]*)?$"
    )]
    pub failover_resolver_url: Option<String>,
    /// Kodi mode for live TS: a player's Range is ignored and HEAD is answered at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict_live_ts: Option<bool>,
    /// Later playlist refreshes go to where the origin redirected, until that fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_sticky_session: Option<bool>,
}

/// Schemas utoipa cannot derive: the constraints a handler checks, so the OpenAPI document
/// says which inputs are refused.
pub(crate) mod schemas {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
    use utoipa::openapi::{Array, Object, RefOr, Schema};

    /// The pattern of `url`, for a list of URLs.
    const URL: &str = "^https?://[a-z]([a-z0-9]|-[a-z0-9])*(\\.[a-z]([a-z0-9]|-[a-z0-9])*)*(:[1-9][0-9]{0,3})?(/[A-Za-z0-9._~/-]*)?$";

    /// Backup URLs, each an absolute http(s) URL with a host; `null` means none.
    pub fn upstream_urls() -> Array {
        ArrayBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
            .items(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(URL)),
            )
            .build()
    }

    /// Request headers, name to value: names are tokens, values text without control characters (tab aside).
    pub fn header_map() -> Object {
        headers(
            "Extra request headers, name to value.",
            "^[A-Za-z0-9!#$%&'*+.^_`|~-]+$",
            false,
        )
    }

    /// Upstream headers: names are tokens other than the hop-by-hop ones the proxy manages
    /// (`host`, `connection`, ...); values as in [`header_map`].
    pub fn upstream_headers() -> Object {
        headers(
            "Extra request headers sent upstream, name to value (`null` means none). `host`, `content-length`, `connection`, `transfer-encoding`, `upgrade`, `keep-alive` and `te` are the proxy's own.",
            "^(?!(?:[Hh][Oo][Ss][Tt]|[Cc][Oo][Nn][Tt][Ee][Nn][Tt]-[Ll][Ee][Nn][Gg][Tt][Hh]|[Cc][Oo][Nn][Nn][Ee][Cc][Tt][Ii][Oo][Nn]|[Tt][Rr][Aa][Nn][Ss][Ff][Ee][Rr]-[Ee][Nn][Cc][Oo][Dd][Ii][Nn][Gg]|[Uu][Pp][Gg][Rr][Aa][Dd][Ee]|[Kk][Ee][Ee][Pp]-[Aa][Ll][Ii][Vv][Ee]|[Tt][Ee])$)[A-Za-z0-9!#$%&'*+.^_`|~-]+$",
            true,
        )
    }

    fn headers(description: &str, names: &str, nullable: bool) -> Object {
        let types = if nullable {
            SchemaType::from_iter([Type::Object, Type::Null])
        } else {
            SchemaType::Type(Type::Object)
        };
        ObjectBuilder::new()
            .schema_type(types)
            .description(Some(description))
            .property_names(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(names))
                    .build(),
            ))
            .additional_properties(Some(RefOr::T(Schema::Object(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some("^[^\\u0000-\\u0008\\u000a-\\u001f\\u007f]*$"))
                    .build(),
            ))))
            .build()
    }
}

/// Deserializers that accept what PHP clients send for "nothing": `null` and `[]`.
mod lenient {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum MapOrList {
        Map(BTreeMap<String, String>),
        List(Vec<serde_json::Value>),
    }

    pub fn map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
        match Option::<MapOrList>::deserialize(d)? {
            None => Ok(BTreeMap::new()),
            Some(MapOrList::Map(m)) => Ok(m),
            Some(MapOrList::List(l)) if l.is_empty() => Ok(BTreeMap::new()),
            Some(MapOrList::List(_)) => Err(serde::de::Error::custom(
                "expected a map of header names to values",
            )),
        }
    }

    pub fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
    }
}

/// `POST /streams` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// m3u-editor's names: the registered URL, and a line for logs.
    #[serde(default)]
    pub primary_url: String,
    #[serde(default)]
    pub message: String,
}

/// One stream as the API reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StreamInfo {
    pub stream_id: String,
    pub stream_type: StreamType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
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
    /// The same facts under m3u-editor's names.
    #[serde(flatten)]
    pub editor: StreamEditorInfo,
}

/// A stream's failover state as m3u-editor reads it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StreamEditorInfo {
    #[serde(default)]
    pub has_failover: bool,
    #[serde(default)]
    pub failover_resolver_url: Option<String>,
    /// -1 on the original URL, else the index in `failover_urls`.
    #[serde(default)]
    pub current_failover_index: i64,
    #[serde(default)]
    pub failover_attempts: u64,
    #[serde(default)]
    pub last_failover_time: Option<DateTime<Utc>>,
}

/// One viewer of one stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// The same facts under m3u-editor's names, and the viewer's user name.
    #[serde(flatten)]
    pub editor: ClientEditorInfo,
    /// In a fleet (`--store redis`): the instance this viewer is connected to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// A client as m3u-editor reads it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClientEditorInfo {
    /// `?username=`, `?user=`, `?u=` or `X-Username` of its latest request.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_access: Option<DateTime<Utc>>,
    /// Watching now: a connection is open, or an HLS request came within the last 10 s.
    #[serde(default)]
    pub is_connected: bool,
}

/// `GET /streams`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StreamList {
    pub streams: Vec<StreamInfo>,
    pub total: usize,
}

/// `GET /streams/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StreamDetail {
    pub stream: StreamInfo,
    pub clients: Vec<ClientInfo>,
    pub client_count: usize,
}

/// `GET /clients`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClientList {
    pub clients: Vec<ClientInfo>,
    pub total: usize,
    /// m3u-editor's name of `total`.
    #[serde(default)]
    pub total_clients: usize,
}

/// `DELETE /streams/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StreamDeleted {
    pub stream_id: String,
    pub message: String,
}

/// `POST /streams/{id}/failover`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FailoverDone {
    pub stream_id: String,
    pub previous_url: String,
    pub current_url: String,
    pub failover_index: usize,
}

/// Totals of the whole proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Stats {
    pub proxy: ProxyStats,
    pub streams: Vec<StreamInfo>,
    pub clients: Vec<ClientInfo>,
    /// The providers with their slots; empty from an older server.
    #[serde(default)]
    pub providers: Vec<ProviderInfo>,
    /// In a fleet (`--store redis`): every live instance, this one first; the totals above
    /// are the fleet's. Absent for a lone instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceInfo>,
}

/// One live instance of a fleet, as its last heartbeat (every second) told it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceInfo {
    /// Unique per process: host name, pid and a random suffix.
    pub id: String,
    /// Where it listens (`host:port`).
    pub address: String,
    pub started_at: DateTime<Utc>,
    /// Its tracked viewers.
    pub clients: usize,
    /// Player connections streaming from it now.
    pub connections: u64,
    /// Bytes it has written to players since it started.
    pub bytes: u64,
    /// When it last wrote its heartbeat; an instance silent for 15 s leaves the fleet view.
    pub last_heartbeat: DateTime<Utc>,
}

/// `GET /health`: cheap, for load balancers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// `healthy`, or `degraded` while the store cannot write or the fleet's Redis does not
    /// answer (still a 200: playback goes on).
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
    /// The totals under m3u-editor's names.
    #[serde(default)]
    pub stats: HealthStats,
    /// Where state is kept and whether writes work; absent from older servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreStatus>,
    /// In a fleet (`--store redis`): every live instance, this one first; `clients`,
    /// `active_connections`, `total_bytes_served` and `stats` are then the fleet's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceInfo>,
}

/// `GET /health` `store`: the state backend and how its writes go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StoreStatus {
    /// `sqlite` or `memory`.
    pub backend: String,
    /// The database file; `null` for `memory`.
    pub path: Option<String>,
    /// Milliseconds since the last successful commit (a management write or a counter
    /// flush); `null` before the first one, and always for `memory`, which writes nothing.
    pub last_flush_age_ms: Option<u64>,
    /// False while writes fail (disk full); management writes then answer 503.
    pub ok: bool,
}

/// `GET /health` `stats`, as m3u-editor reads them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HealthStats {
    pub total_streams: usize,
    pub active_streams: usize,
    pub total_clients: usize,
    pub active_clients: usize,
    pub total_bytes_served: u64,
    pub total_segments_served: u64,
    pub uptime_seconds: u64,
}

/// Every error answer of the API: `{"detail": "...", "code": "..."}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub detail: String,
    pub code: String,
    /// With `provider_full`: the provider whose slots are all taken, and its limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
}

/// What a provider's full slots do to a new connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Refuse it at once: 503 `provider_full`, before any upstream request.
    #[default]
    Reject,
    /// Stop the provider's stream started longest ago, then open it.
    ReplaceOldest,
}

impl OnFull {
    pub fn as_str(self) -> &'static str {
        match self {
            OnFull::Reject => "reject",
            OnFull::ReplaceOldest => "replace_oldest",
        }
    }
}

/// `PUT /providers/{name}`: an account or origin with a connection limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// `host:port` (or `host`, any port) of each origin of the provider.
    #[schema(min_items = 1, max_items = 100)]
    pub hosts: Vec<String>,
    #[schema(minimum = 1, maximum = 10000)]
    pub max_connections: u32,
    #[serde(default)]
    pub on_full: OnFull,
}

/// One slot of a provider held now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProviderSlot {
    pub stream_id: Option<String>,
    /// `direct` (a live channel's shared upstream or a file viewer), `hls` (a watched HLS
    /// stream), `probe` or `test_connection`.
    pub kind: String,
    pub since: DateTime<Utc>,
}

/// A provider as the API reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProviderInfo {
    pub name: String,
    pub hosts: Vec<String>,
    pub max_connections: u32,
    pub on_full: OnFull,
    pub active_connections: u64,
    /// Connections refused because every slot was taken.
    #[serde(default)]
    pub rejections: u64,
    /// Streams stopped to make room (`replace_oldest`).
    #[serde(default)]
    pub replacements: u64,
    /// The slots held now, oldest first.
    #[serde(default)]
    pub slots: Vec<ProviderSlot>,
}

/// `GET /providers`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProviderList {
    pub providers: Vec<ProviderInfo>,
    pub total: usize,
}

/// `POST /playlists`: a channel list to import from `url` (or from the uploaded body).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatePlaylist {
    #[serde(default)]
    #[schema(required = true, pattern = "\\S")]
    pub name: String,
    /// Where the list is fetched (absent for an uploaded list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        value_type = String,
        required = true,
        pattern = "^https?://[a-z]([a-z0-9]|-[a-z0-9])*(\\.[a-z]([a-z0-9]|-[a-z0-9])*)*(:[1-9][0-9]{0,3})?(/[A-Za-z0-9._~/-]*)?$"
    )]
    pub url: Option<String>,
    /// Minutes between automatic refreshes; absent or 0: only on request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 525600)]
    pub refresh_interval_minutes: Option<u64>,
    /// Sent when fetching the list and the guide, and to channels that set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[^\\u0000-\\u0008\\u000a-\\u001f\\u007f]*$")]
    pub user_agent: Option<String>,
    /// Sent when fetching the list and the guide, and to every channel of the list.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "lenient::map"
    )]
    #[schema(schema_with = schemas::upstream_headers)]
    pub headers: BTreeMap<String, String>,
    /// The provider whose connection limits the list's streams count against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The guide (XMLTV) to fetch when the list's `#EXTM3U` names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        pattern = "^$|^https?://[a-z]([a-z0-9]|-[a-z0-9])*(\\.[a-z]([a-z0-9]|-[a-z0-9])*)*(:[1-9][0-9]{0,3})?(/[A-Za-z0-9._~/-]*)?$"
    )]
    pub epg_url: Option<String>,
    /// Channels with the same key across all merged lists become one stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge: Option<MergeKey>,
}

/// What makes two channels of merged lists the same channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum MergeKey {
    #[serde(rename = "tvg-id")]
    TvgId,
    #[serde(rename = "name")]
    Name,
}

/// What an import or refresh changed in a list, by channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RefreshCounts {
    pub added: usize,
    pub removed: usize,
    pub updated: usize,
    pub unchanged: usize,
    /// Entries refused (and skipped): see the list's `errors`.
    pub errors: usize,
}

/// One entry of a list that was refused and skipped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EntryError {
    /// 1-based line of the entry's `#EXTINF` (or URL) in the list.
    pub line: usize,
    /// The start of the entry's URL line.
    pub url: String,
    /// `unsupported_scheme`, `invalid_url` or `line_too_long`.
    pub code: String,
    pub detail: String,
}

/// The outcome of the latest import or refresh of a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RefreshResult {
    pub at: DateTime<Utc>,
    pub ok: bool,
    /// Why it failed (the previous list was kept), and the error's code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub counts: RefreshCounts,
}

/// A channel list as the API reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlaylistInfo {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub merge: Option<MergeKey>,
    #[serde(default)]
    pub refresh_interval_minutes: Option<u64>,
    /// Channels imported (refused entries not counted).
    pub channel_count: usize,
    /// The groups of its channels, in first-seen order.
    pub groups: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// When the list in use was fetched.
    pub last_refresh: DateTime<Utc>,
    /// The latest import or refresh, successful or not.
    pub last_result: RefreshResult,
    /// The entries refused by the list in use (at most 1,000 are listed).
    pub errors: Vec<EntryError>,
    /// Paths of its proxied playlist and guide.
    pub playlist_url: String,
    #[serde(default)]
    pub guide_url: Option<String>,
    /// Whether a guide was fetched and is served, and its error if the latest fetch failed.
    pub guide_available: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guide_error: Option<String>,
}

/// `GET /playlists` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlaylistList {
    pub total: usize,
    pub playlists: Vec<PlaylistInfo>,
}

/// `DELETE /playlists/{id}` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlaylistDeleted {
    pub id: String,
    /// Its streams removed now, and those still playing that go when their viewers leave.
    pub streams_removed: usize,
    pub streams_retiring: usize,
}
