//! Channel lists: a provider's M3U in, each channel a registered stream; the proxied list,
//! its guide and an HDHomeRun lineup out (the routes are in `api::channels`).
//!
//! A list is imported whole or not at all: the body is fetched within `CHANNEL_LIST_MAX_MB`
//! and judged (HTML, binary, not an M3U) before anything changes, and a refresh that fails
//! keeps the list in use. Entries that cannot be proxied (an unsupported scheme, a bad URL,
//! an absurdly long line) are recorded per entry and skipped. Every change goes through
//! [`Channels::reconcile`], which computes the streams all lists want (merging duplicates
//! into failover URLs), registers what changed and retires what is gone: a stream still
//! playing stays until its viewers leave. Stream ids come from the URL
//! ([`Registry::stream_id_for`]), so they are stable across refreshes.
//!
//! Persistent state is one [`ChannelListRecord`] per list (definition and last good body):
//! [`Channels::records`] and [`Channels::restore`] are the hooks of the store. Nothing
//! here writes it to disk except the fetched guides (under the data directory).

mod fetch;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use url::Url;

use crate::config::Config;
use crate::events::EventType;
use crate::model::{
    CreatePlaylist, EntryError, MergeKey, PlaylistInfo, RefreshCounts, RefreshResult, StreamType,
};
use crate::playlist::iptv::{self, Channel};
use crate::playlist::iptv_write::{self, LineupEntry};
use crate::registry::{Registry, Removal};
use crate::store::{Kind, Store};
use crate::stream::{Metadata, StreamSettings, FORBIDDEN_UPSTREAM_HEADERS};

/// Longest URL accepted in an entry.
pub const MAX_URL_BYTES: usize = 8 * 1024;

/// Most bytes of tag lines and URL one entry may have; a longer one is refused.
pub const MAX_ENTRY_BYTES: usize = 64 * 1024;

/// The `#EXTINF` attributes kept after import (the others are only in the source text).
const KEPT_ATTRS: [&str; 5] = [
    "tvg-id",
    "tvg-name",
    "tvg-chno",
    "channel-number",
    "channel-id",
];

/// Refused entries listed per list (all are counted).
const MAX_LISTED_ERRORS: usize = 1_000;

/// Largest guide stored.
const MAX_GUIDE_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// The longest refresh interval: a year.
const MAX_REFRESH_MINUTES: u64 = 525_600;

/// How often retiring streams are checked and due refreshes started.
const TICK: Duration = Duration::from_secs(1);

/// Most timed refreshes running at once: each in a task of its own, so a slow or hanging
/// origin holds up only its own list.
pub const MAX_CONCURRENT_REFRESHES: usize = 4;

/// Most ticks between two touches of every list stream, which keeps them from the idle
/// sweep (`STREAM_TIMEOUT`): a channel of a list is there until the list drops it.
const TOUCH_EVERY_TICKS: u32 = 30;

/// Why a list could not be imported or refreshed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChannelError {
    #[error("playlist not found: {0}")]
    NotFound(String),
    /// The definition cannot work; `code` is the API's error code.
    #[error("{detail}")]
    Invalid { code: &'static str, detail: String },
    #[error("cannot fetch the channel list: {0}")]
    Fetch(String),
    #[error("the channel list is larger than {limit} bytes (CHANNEL_LIST_MAX_MB)")]
    TooLarge { limit: u64 },
    #[error("not an M3U channel list: {0}")]
    NotM3u(String),
    /// The change is in effect but the store could not commit it (it is written when the
    /// store recovers).
    #[error("the change is in effect but could not be saved yet ({0}); it is saved when the store recovers")]
    Store(String),
}

impl ChannelError {
    /// The API's error code.
    pub fn code(&self) -> &'static str {
        match self {
            ChannelError::NotFound(_) => "playlist_not_found",
            ChannelError::Invalid { code, .. } => code,
            ChannelError::Fetch(_) => "playlist_fetch_failed",
            ChannelError::TooLarge { .. } => "playlist_too_large",
            ChannelError::NotM3u(_) => "playlist_not_m3u",
            ChannelError::Store(_) => "store_unavailable",
        }
    }

    fn invalid(code: &'static str, detail: impl Into<String>) -> Self {
        ChannelError::Invalid {
            code,
            detail: detail.into(),
        }
    }
}

/// What survives a restart of one list: its definition and the last body that imported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelListRecord {
    pub id: String,
    pub definition: CreatePlaylist,
    pub created_at: DateTime<Utc>,
    /// The text of the list in use.
    pub source: String,
    /// When `source` was fetched.
    pub refreshed_at: DateTime<Utc>,
}

/// Where a channel's stream is reached.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    url: Url,
    user_agent: Option<String>,
    headers: Vec<(String, String)>,
    stream_type: StreamType,
    /// The stream id of `url` itself, before any merge.
    own_id: String,
    /// Changes when anything the list says about the channel changes.
    fingerprint: u64,
}

/// What is kept of one entry after import, for filters, lineups, merges and metadata (the
/// output is written from the source text, and the targets hold the rest): the display
/// name, the group and the attributes [`KEPT_ATTRS`], in one string. A parsed
/// [`Channel`] with those costs about 600 bytes (a vector and two strings per attribute);
/// this about 120.
#[derive(Debug, Default)]
struct Kept {
    /// The fields one after another: name, group, then each of `KEPT_ATTRS`.
    text: Box<str>,
    /// Where each field ends in `text`.
    ends: [u32; KEPT_FIELDS],
    /// Bit `i`: field `i` is present (an empty value differs from none).
    present: u8,
    line: u32,
}

/// The display name, the group and each of [`KEPT_ATTRS`].
const KEPT_FIELDS: usize = 2 + KEPT_ATTRS.len();

impl Kept {
    fn of(channel: &Channel) -> Self {
        let fields = [Some(channel.name.as_str()), channel.group.as_deref()]
            .into_iter()
            .chain(KEPT_ATTRS.iter().map(|k| channel.attr(k)));
        let mut kept = Kept {
            line: u32::try_from(channel.line).unwrap_or(u32::MAX),
            ..Kept::default()
        };
        let mut text = String::new();
        for (i, field) in fields.enumerate() {
            if let Some(value) = field {
                text.push_str(value);
                kept.present |= 1 << i;
            }
            kept.ends[i] = text.len() as u32;
        }
        kept.text = text.into_boxed_str();
        kept
    }

    fn field(&self, i: usize) -> Option<&str> {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        (self.present & (1 << i) != 0).then(|| &self.text[start..self.ends[i] as usize])
    }

    /// The entry as a channel with only what is kept (its attributes in `KEPT_ATTRS`
    /// order, under those names).
    fn channel(&self) -> Channel {
        Channel {
            duration: -1.0,
            attrs: KEPT_ATTRS
                .iter()
                .enumerate()
                .filter_map(|(i, k)| self.field(2 + i).map(|v| ((*k).to_owned(), v.to_owned())))
                .collect(),
            name: self.field(0).unwrap_or("").to_owned(),
            group: self.field(1).map(str::to_owned),
            vlc_opts: Vec::new(),
            extra_lines: Vec::new(),
            url: String::new(),
            line: self.line as usize,
        }
    }
}

/// One imported list.
#[derive(Debug)]
struct ListState {
    record: ChannelListRecord,
    /// Attributes of the `#EXTM3U` lines.
    header_attrs: Vec<(String, String)>,
    /// Per entry of the source, in order: what is kept of it.
    entries: Vec<Kept>,
    /// Per entry of `parsed`: where it plays, or `None` when it was refused.
    targets: Vec<Option<Target>>,
    errors: Vec<EntryError>,
    last_result: Mutex<RefreshResult>,
}

impl ListState {
    fn channel_count(&self) -> usize {
        self.targets.iter().flatten().count()
    }

    /// The guide the list asks for: `epg_url` when given, else the first URL of the
    /// header's `url-tvg` / `x-tvg-url`.
    fn guide_source(&self) -> Option<String> {
        self.record
            .definition
            .epg_url
            .clone()
            .filter(|u| !u.trim().is_empty())
            .or_else(|| {
                ["url-tvg", "x-tvg-url"].iter().find_map(|k| {
                    self.header_attrs
                        .iter()
                        .find(|(name, _)| name.eq_ignore_ascii_case(k))
                        .map(|(_, v)| v.as_str())
                        .and_then(|v| v.split(',').map(str::trim).find(|u| !u.is_empty()))
                        .map(str::to_owned)
                })
            })
    }
}

/// The stream all lists want at one id.
#[derive(Debug, Clone, PartialEq)]
struct Desired<'a> {
    /// Borrowed from the lists' targets: only the streams that changed are copied, into
    /// their settings.
    urls: Vec<&'a Url>,
    user_agent: Option<&'a str>,
    headers: &'a [(String, String)],
    /// The list and entry whose channel it is first, which its metadata describes (built
    /// only when needed: 50,000 of them at once would cost tens of megabytes).
    first: (usize, usize),
    stream_type: StreamType,
    provider: Option<&'a str>,
}

impl Desired<'_> {
    /// Changes when any of it changes: what the last reconcile registered is kept as this,
    /// not as a second copy of every stream's settings.
    fn digest(&self, metadata: &Metadata) -> u64 {
        let mut h = DefaultHasher::new();
        for u in &self.urls {
            u.as_str().hash(&mut h);
        }
        self.user_agent.hash(&mut h);
        self.headers.hash(&mut h);
        metadata.as_str().hash(&mut h);
        self.stream_type.as_str().hash(&mut h);
        self.provider.hash(&mut h);
        h.finish()
    }

    fn settings(&self, metadata: Metadata) -> StreamSettings {
        let mut headers = HeaderMap::new();
        for (k, v) in self.headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                headers.insert(k, v);
            }
        }
        StreamSettings {
            original_url: self.urls[0].clone(),
            failover_urls: self.urls[1..].iter().map(|u| (*u).clone()).collect(),
            user_agent: self.user_agent.map(str::to_owned),
            headers,
            metadata: Some(metadata),
            stream_type: self.stream_type,
            provider: self.provider.map(str::to_owned),
            options: Default::default(),
        }
    }
}

/// Where an entry of a list plays: its stream after merging.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub stream_id: String,
    pub stream_type: StreamType,
}

impl Route {
    /// The playback path of the stream (`/hls/{id}/playlist.m3u8` or `/stream/{id}`).
    pub fn path(&self) -> String {
        match self.stream_type {
            StreamType::Hls => format!("/hls/{}/playlist.m3u8", self.stream_id),
            StreamType::Direct => format!("/stream/{}", self.stream_id),
        }
    }
}

/// A list's stored guide.
#[derive(Debug, Clone, PartialEq)]
pub struct Guide {
    pub path: PathBuf,
    /// The file is gzip, as the origin gave it.
    pub gzip: bool,
    pub fetched_at: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct GuideState {
    file: Option<Guide>,
    error: Option<String>,
}

/// What a reconcile did to the registry.
#[derive(Debug, Default, Clone)]
struct Applied {
    /// The streams removed, whose stored counters go with them.
    removed: Vec<String>,
    retiring: usize,
}

/// Every channel list of this process and the streams they registered.
#[derive(Debug)]
pub struct Channels {
    registry: Arc<Registry>,
    http: reqwest::Client,
    config: Arc<Config>,
    guide_dir: PathBuf,
    lists: RwLock<BTreeMap<String, Arc<ListState>>>,
    /// Per list, per entry: its stream.
    routes: RwLock<HashMap<String, Arc<Vec<Option<Route>>>>>,
    guides: RwLock<HashMap<String, GuideState>>,
    /// What the last reconcile registered: stream id to [`Desired::digest`]. Also
    /// serializes reconciles.
    applied: Mutex<HashMap<String, u64>>,
    /// Streams no list wants any more that were still playing.
    retiring: Mutex<HashSet<String>>,
    /// When each list with an interval is refreshed next.
    next_refresh: Mutex<HashMap<String, Instant>>,
    /// The lists whose timed refresh is running or waiting for a place.
    refreshing: Mutex<HashSet<String>>,
    /// Where each list's record is kept across restarts.
    store: Arc<Store>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Channels {
    /// Guides are stored under `DATA_DIR/guides`, else in a directory of the system's
    /// temporary directory.
    pub fn new(registry: Arc<Registry>, http: reqwest::Client, config: Arc<Config>) -> Self {
        let guide_dir = match &config.data_dir {
            Some(dir) => dir.join("guides"),
            None => std::env::temp_dir().join(format!("m3u-proxy-guides-{}", std::process::id())),
        };
        Self {
            registry,
            http,
            config,
            guide_dir,
            lists: RwLock::default(),
            routes: RwLock::default(),
            guides: RwLock::default(),
            applied: Mutex::default(),
            retiring: Mutex::default(),
            next_refresh: Mutex::default(),
            refreshing: Mutex::default(),
            store: Arc::new(Store::memory()),
        }
    }

    /// Keeps each list's record in `store` (the default keeps nothing).
    pub fn with_store(mut self, store: Arc<Store>) -> Self {
        self.store = store;
        self
    }

    /// Writes the list's record as it is now (or its removal) and waits for the commit.
    async fn persist(&self, id: &str) -> Result<(), ChannelError> {
        let record = self.list(id).ok().map(|l| l.record.clone());
        let saved = match record {
            Some(record) => self.store.put(Kind::ChannelList, id, &record).await,
            None => self.store.delete(Kind::ChannelList, id).await,
        };
        saved.map_err(|e| ChannelError::Store(e.to_string()))
    }

    fn sorted_lists(&self) -> Vec<Arc<ListState>> {
        let mut lists: Vec<_> = self
            .lists
            .read()
            .expect("lists lock")
            .values()
            .cloned()
            .collect();
        lists.sort_by(|a, b| {
            (a.record.created_at, &a.record.id).cmp(&(b.record.created_at, &b.record.id))
        });
        lists
    }

    fn list(&self, id: &str) -> Result<Arc<ListState>, ChannelError> {
        self.lists
            .read()
            .expect("lists lock")
            .get(id)
            .cloned()
            .ok_or_else(|| ChannelError::NotFound(id.to_owned()))
    }

    /// Imports a list from its URL, or from `upload` (the body of the request). Nothing
    /// changes unless the whole body is a channel list.
    pub async fn create(
        &self,
        definition: CreatePlaylist,
        upload: Option<Vec<u8>>,
    ) -> Result<PlaylistInfo, ChannelError> {
        let checked = check_definition(&definition, upload.is_some())?;
        let body = match upload {
            Some(body) => {
                let limit = self.config.channels.max_list_bytes;
                if body.len() as u64 > limit {
                    return Err(ChannelError::TooLarge { limit });
                }
                body
            }
            None => self.fetch_list(&definition, &checked).await?,
        };
        let text = fetch::list_text(body)?;
        let id = format!("pl-{}", crate::registry::hex(&rand::random::<[u8; 6]>()));
        let now = Utc::now();
        let record = ChannelListRecord {
            id: id.clone(),
            definition,
            created_at: now,
            source: text,
            refreshed_at: now,
        };
        let removed = self.install(record, None);
        self.forget(&removed).await;
        self.schedule(&id);
        self.refresh_guide(&id).await;
        self.persist(&id).await?;
        self.info(&id)
    }

    async fn fetch_list(
        &self,
        definition: &CreatePlaylist,
        checked: &Checked,
    ) -> Result<Vec<u8>, ChannelError> {
        let Some(url) = &checked.url else {
            return Err(ChannelError::invalid(
                "missing_parameter",
                "url: the list's URL is required (or upload the list as audio/x-mpegurl)",
            ));
        };
        let t = &self.config.upstream;
        let req = fetch::Request {
            url,
            user_agent: definition.user_agent.as_deref(),
            headers: &checked.headers,
            first_byte: t.first_byte.max(Duration::from_secs(30)),
            read_stall: t.read_stall.max(Duration::from_secs(30)),
        };
        fetch::body(&self.http, &req, self.config.channels.max_list_bytes).await
    }

    /// Fetches the list again (an uploaded list is read again from its stored body) and
    /// applies what changed; a failure keeps the list in use and is recorded.
    pub async fn refresh(&self, id: &str) -> Result<PlaylistInfo, ChannelError> {
        let old = self.list(id)?;
        self.schedule(id);
        let definition = old.record.definition.clone();
        let fetched = match &definition.url {
            None => Ok(old.record.source.clone()),
            Some(_) => match check_definition(&definition, false) {
                Ok(checked) => self
                    .fetch_list(&definition, &checked)
                    .await
                    .and_then(fetch::list_text),
                Err(e) => Err(e),
            },
        };
        match fetched {
            Ok(text) => {
                let record = ChannelListRecord {
                    source: text,
                    refreshed_at: Utc::now(),
                    ..old.record.clone()
                };
                // Deleted while fetching: nothing to refresh.
                if self.list(id).is_err() {
                    return Err(ChannelError::NotFound(id.to_owned()));
                }
                let removed = self.install(record, Some(&old));
                self.forget(&removed).await;
                self.refresh_guide(id).await;
                self.persist(id).await?;
                self.info(id)
            }
            Err(e) => {
                let result = RefreshResult {
                    at: Utc::now(),
                    ok: false,
                    error: Some(e.to_string()),
                    code: Some(e.code().to_owned()),
                    counts: RefreshCounts::default(),
                };
                tracing::warn!(playlist = id, error = %e, "channel list refresh failed; the list in use is kept");
                self.announce(&old, &result);
                *lock(&old.last_result) = result;
                Err(e)
            }
        }
    }

    /// Takes a list as another instance of a fleet refreshed (or re-imported) it: its
    /// channels are applied here as the refresh applied them there, and its next timed
    /// refresh counts from now, so one instance, not each, fetches it per interval. The
    /// refreshing instance stored the record, announced the refresh and dropped the
    /// counters of removed channels; none of that is repeated here. False when the list
    /// is unknown here or already as given.
    pub fn follow(&self, record: ChannelListRecord) -> bool {
        let Ok(old) = self.list(&record.id) else {
            return false;
        };
        if old.record == record {
            return false;
        }
        let id = record.id.clone();
        let state = Arc::new(self.build(record, Some(&old)));
        self.lists
            .write()
            .expect("lists lock")
            .insert(id.clone(), state.clone());
        self.reconcile();
        self.schedule(&id);
        tracing::info!(playlist = %id, channels = state.channel_count(), "channel list refreshed elsewhere applied");
        true
    }

    /// Builds the state of `record`, puts it in place of `old` and applies it.
    /// Returns the streams it removed.
    fn install(&self, record: ChannelListRecord, old: Option<&ListState>) -> Vec<String> {
        let state = Arc::new(self.build(record, old));
        let id = state.record.id.clone();
        self.lists
            .write()
            .expect("lists lock")
            .insert(id.clone(), state.clone());
        let done = self.reconcile();
        let result = lock(&state.last_result).clone();
        self.announce(&state, &result);
        tracing::info!(playlist = %id, channels = state.channel_count(), counts = ?result.counts, "channel list applied");
        done.removed
    }

    /// Deletes the stored counters of streams the lists dropped (they have no document;
    /// a delete of their id removes the counters). A failure leaves them behind, to be
    /// added to the stream if its URL comes back.
    async fn forget(&self, removed: &[String]) {
        if removed.is_empty() {
            return;
        }
        if let Err(e) = self.store.delete_all(Kind::Stream, removed).await {
            tracing::warn!(error = %e, streams = removed.len(), "stored counters of dropped channels not deleted");
        }
    }

    fn announce(&self, list: &ListState, result: &RefreshResult) {
        let c = result.counts;
        self.registry.events.emit(
            EventType::PlaylistRefreshed,
            None,
            None,
            serde_json::json!({
                "playlist_id": list.record.id,
                "name": list.record.definition.name,
                "ok": result.ok,
                "error": result.error,
                "added": c.added,
                "removed": c.removed,
                "updated": c.updated,
                "unchanged": c.unchanged,
                "errors": c.errors,
            }),
        );
    }

    /// Parses `record`'s body and resolves each entry, counting what changed since `old`.
    /// One entry at a time: only what is kept of each is held.
    fn build(&self, record: ChannelListRecord, old: Option<&ListState>) -> ListState {
        let definition = &record.definition;
        let list_headers = checked_headers(&definition.headers).unwrap_or_default();
        let mut errors = Vec::new();
        let mut error_count = 0;
        let mut entries = Vec::new();
        let mut targets = Vec::new();
        let header_attrs = iptv::parse_each(&record.source, |channel| {
            match self.target(&channel, definition, &list_headers) {
                Ok(t) => {
                    targets.push(Some(t));
                    entries.push(Kept::of(&channel));
                }
                Err((code, detail)) => {
                    error_count += 1;
                    if errors.len() < MAX_LISTED_ERRORS {
                        errors.push(EntryError {
                            line: channel.line,
                            url: channel.url.chars().take(200).collect(),
                            code: code.to_owned(),
                            detail,
                        });
                    }
                    targets.push(None);
                    entries.push(Kept::default());
                }
            }
        });
        entries.shrink_to_fit();
        targets.shrink_to_fit();
        let counts = count_changes(
            old.map(|o| &o.targets[..]).unwrap_or(&[]),
            &targets,
            error_count,
        );
        ListState {
            last_result: Mutex::new(RefreshResult {
                at: Utc::now(),
                ok: true,
                error: None,
                code: None,
                counts,
            }),
            record,
            header_attrs,
            entries,
            targets,
            errors,
        }
    }

    /// Where `channel` plays, or why it cannot be proxied.
    fn target(
        &self,
        channel: &Channel,
        definition: &CreatePlaylist,
        list_headers: &[(String, String)],
    ) -> Result<Target, (&'static str, String)> {
        let size = channel.url.len()
            + channel.name.len()
            + channel
                .attrs
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + channel
                .vlc_opts
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + channel.extra_lines.iter().map(String::len).sum::<usize>();
        if channel.url.len() > MAX_URL_BYTES || size > MAX_ENTRY_BYTES {
            return Err((
                "line_too_long",
                format!(
                    "the entry is {size} bytes long; at most {MAX_ENTRY_BYTES} (and a URL of \
                     {MAX_URL_BYTES}) are accepted"
                ),
            ));
        }
        // Kodi's `URL|User-Agent=...&Referer=...` suffix carries headers.
        let (raw_url, pipe) = match channel.url.split_once('|') {
            Some((u, h)) => (u, Some(h)),
            None => (channel.url.as_str(), None),
        };
        let url = Url::parse(raw_url.trim())
            .map_err(|e| ("invalid_url", format!("not a valid URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err((
                "unsupported_scheme",
                format!(
                    "only http and https channels can be proxied, not {}:",
                    url.scheme()
                ),
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(("invalid_url", "the URL has no host".into()));
        }
        let mut headers: Vec<(String, String)> = list_headers.to_vec();
        let mut user_agent = definition.user_agent.clone().filter(|u| !u.is_empty());
        let mut set = |name: &str, value: &str| {
            let name = name.trim();
            if name.eq_ignore_ascii_case("user-agent") {
                user_agent = Some(value.to_owned());
                return;
            }
            let Ok(h) = HeaderName::from_bytes(name.as_bytes()) else {
                return;
            };
            if FORBIDDEN_UPSTREAM_HEADERS.contains(&h.as_str())
                || HeaderValue::from_str(value).is_err()
            {
                return;
            }
            headers.retain(|(k, _)| !k.eq_ignore_ascii_case(h.as_str()));
            headers.push((h.as_str().to_owned(), value.to_owned()));
        };
        for line in &channel.extra_lines {
            let Some(prop) = iptv::directive(line, "#KODIPROP:") else {
                continue;
            };
            let (key, value) = prop.split_once('=').unwrap_or((prop, ""));
            if key.trim().starts_with("inputstream.adaptive.") && key.trim().ends_with("_headers") {
                for (k, v) in url::form_urlencoded::parse(value.as_bytes()) {
                    set(&k, &v);
                }
            }
        }
        if let Some(pipe) = pipe {
            for (k, v) in url::form_urlencoded::parse(pipe.as_bytes()) {
                set(&k, &v);
            }
        }
        if let Some(referrer) = channel.vlc_opt("http-referrer") {
            set("Referer", referrer);
        }
        if let Some(ua) = channel.vlc_opt("http-user-agent") {
            set("User-Agent", ua);
        }
        let user_agent = user_agent.filter(|ua| HeaderValue::from_str(ua).is_ok());
        let mut hasher = DefaultHasher::new();
        channel.attrs.hash(&mut hasher);
        channel.name.hash(&mut hasher);
        channel.vlc_opts.hash(&mut hasher);
        channel.extra_lines.hash(&mut hasher);
        channel.duration.to_bits().hash(&mut hasher);
        Ok(Target {
            own_id: self.registry.stream_id_for(&url),
            stream_type: stream_type_of(&url),
            url,
            user_agent,
            headers,
            fingerprint: hasher.finish(),
        })
    }

    /// Computes the streams every list wants and brings the registry there: new and
    /// changed ones registered, the ones no list wants removed (or, while they play,
    /// retired: removed when their viewers have left).
    fn reconcile(&self) -> Applied {
        let mut applied = lock(&self.applied);
        let lists = self.sorted_lists();
        // Keyed by the targets' ids, borrowed: a reconcile of 50,000 channels copies only
        // what it keeps.
        let mut desired: HashMap<&str, Desired> = HashMap::new();
        let mut merged: HashMap<(MergeKey, String), &str> = HashMap::new();
        let mut routes = HashMap::new();
        for (list_index, list) in lists.iter().enumerate() {
            let definition = &list.record.definition;
            let mut list_routes = Vec::with_capacity(list.targets.len());
            for (entry_index, (channel, target)) in
                list.entries.iter().zip(&list.targets).enumerate()
            {
                let Some(t) = target else {
                    list_routes.push(None);
                    continue;
                };
                let key = definition
                    .merge
                    .and_then(|k| merge_key(k, &channel.channel()));
                if let Some(id) = key.as_ref().and_then(|k| merged.get(k)) {
                    if let Some(d) = desired.get_mut(*id) {
                        if !d.urls.contains(&&t.url) {
                            d.urls.push(&t.url);
                        }
                        list_routes.push(Some(Route {
                            stream_id: (*id).to_owned(),
                            stream_type: d.stream_type,
                        }));
                        continue;
                    }
                }
                let id = t.own_id.as_str();
                let d = desired.entry(id).or_insert_with(|| Desired {
                    urls: vec![&t.url],
                    user_agent: t.user_agent.as_deref(),
                    headers: &t.headers,
                    first: (list_index, entry_index),
                    stream_type: t.stream_type,
                    provider: definition
                        .provider
                        .as_deref()
                        .filter(|p| !p.trim().is_empty()),
                });
                list_routes.push(Some(Route {
                    stream_id: id.to_owned(),
                    stream_type: d.stream_type,
                }));
                if let Some(k) = key {
                    merged.insert(k, id);
                }
            }
            routes.insert(list.record.id.clone(), Arc::new(list_routes));
        }
        let mut digests = HashMap::with_capacity(desired.len());
        for (id, d) in &desired {
            let (list, entry) = d.first;
            let meta = metadata(&lists[list].record, &lists[list].entries[entry].channel());
            let digest = d.digest(&meta);
            digests.insert((*id).to_owned(), digest);
            if applied.get(*id) != Some(&digest) || self.registry.stream(id).is_none() {
                // One `playlist_refreshed` event says what changed, not one event per stream.
                let (entry, _) = self.registry.upsert_quietly(d.settings(meta));
                entry.set_listed();
            }
        }
        let mut done = Applied::default();
        let mut retiring = lock(&self.retiring);
        retiring.retain(|id| !desired.contains_key(id.as_str()));
        for id in applied
            .keys()
            .filter(|id| !desired.contains_key(id.as_str()))
        {
            match self.registry.stream(id) {
                Some(s) if self.is_playing(&s) => {
                    retiring.insert(id.clone());
                    done.retiring += 1;
                }
                Some(_) => {
                    self.registry.remove_stream(id, Removal::Deleted);
                    done.removed.push(id.clone());
                }
                None => {}
            }
        }
        drop(retiring);
        *applied = digests;
        *self.routes.write().expect("routes lock") = routes;
        done
    }

    fn is_playing(&self, s: &crate::registry::StreamEntry) -> bool {
        crate::registry::Counters::get(&s.counters.active_connections) > 0
            || self.registry.stream_is_active(s)
    }

    /// Removes a list: its streams go, except those still playing, which go when their
    /// viewers leave. Its guide file is deleted.
    pub async fn delete(&self, id: &str) -> Result<crate::model::PlaylistDeleted, ChannelError> {
        self.lists
            .write()
            .expect("lists lock")
            .remove(id)
            .ok_or_else(|| ChannelError::NotFound(id.to_owned()))?;
        lock(&self.next_refresh).remove(id);
        let done = self.reconcile();
        self.forget(&done.removed).await;
        let guide = self.guides.write().expect("guides lock").remove(id);
        if let Some(file) = guide.and_then(|g| g.file) {
            let _ = std::fs::remove_file(file.path);
        }
        self.persist(id).await?;
        Ok(crate::model::PlaylistDeleted {
            id: id.to_owned(),
            streams_removed: done.removed.len(),
            streams_retiring: done.retiring,
        })
    }

    /// Whether the stream `id` is a channel of a list (or one retiring): such streams are
    /// kept with their list, not as stream documents of their own.
    pub fn owns_stream(&self, id: &str) -> bool {
        lock(&self.applied).contains_key(id) || lock(&self.retiring).contains(id)
    }

    /// The providers the lists name, each once.
    pub fn provider_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .sorted_lists()
            .iter()
            .filter_map(|l| l.record.definition.provider.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Every list, oldest first.
    pub fn infos(&self) -> Vec<PlaylistInfo> {
        self.sorted_lists()
            .iter()
            .map(|l| self.info_of(l))
            .collect()
    }

    pub fn info(&self, id: &str) -> Result<PlaylistInfo, ChannelError> {
        let list = self.list(id)?;
        Ok(self.info_of(&list))
    }

    fn info_of(&self, list: &ListState) -> PlaylistInfo {
        let d = &list.record.definition;
        let mut seen = HashSet::new();
        let groups = list
            .entries
            .iter()
            .zip(&list.targets)
            .filter(|(_, t)| t.is_some())
            .filter_map(|(c, _)| c.field(1))
            .filter(|g| seen.insert(*g))
            .map(str::to_owned)
            .collect();
        let id = &list.record.id;
        let guides = self.guides.read().expect("guides lock");
        let guide = guides.get(id);
        PlaylistInfo {
            id: id.clone(),
            name: d.name.clone(),
            url: d.url.clone(),
            provider: d.provider.clone(),
            merge: d.merge,
            refresh_interval_minutes: d.refresh_interval_minutes,
            channel_count: list.channel_count(),
            groups,
            created_at: list.record.created_at,
            last_refresh: list.record.refreshed_at,
            last_result: lock(&list.last_result).clone(),
            errors: list.errors.clone(),
            playlist_url: format!("/playlists/{id}/playlist.m3u"),
            guide_url: list
                .guide_source()
                .map(|_| format!("/playlists/{id}/epg.xml")),
            guide_available: guide.is_some_and(|g| g.file.is_some()),
            guide_error: guide.and_then(|g| g.error.clone()),
        }
    }

    /// The proxied M3U of list `id` (or of every list, under one `#EXTM3U` of its own),
    /// with absolute URLs under `base`, only the channels in `groups` (when given) whose
    /// name contains `query` (when given).
    pub fn playlist(
        &self,
        id: Option<&str>,
        base: &str,
        groups: &[String],
        query: Option<&str>,
    ) -> Result<String, ChannelError> {
        let lists = match id {
            Some(id) => vec![self.list(id)?],
            None => self.sorted_lists(),
        };
        let routes = self.routes.read().expect("routes lock").clone();
        let guide = |l: &ListState| {
            l.guide_source()
                .map(|_| format!("{base}/playlists/{}/epg.xml", l.record.id))
        };
        let mut out = String::with_capacity(lists.iter().map(|l| l.record.source.len()).sum());
        if id.is_none() {
            out.push_str("#EXTM3U");
            let guides: Vec<String> = lists.iter().filter_map(|l| guide(l)).collect();
            if !guides.is_empty() {
                out.push_str(&format!(" url-tvg=\"{}\"", guides.join(",")));
            }
            out.push('\n');
        }
        for list in &lists {
            let Some(list_routes) = routes.get(&list.record.id) else {
                continue;
            };
            let entries = &list.entries;
            let everything = groups.is_empty() && query.is_none_or(str::is_empty);
            iptv_write::write_channels(
                &mut out,
                &list.record.source,
                id.is_some(),
                guide(list).as_deref(),
                |i| {
                    let route = list_routes.get(i)?.as_ref()?;
                    let entry = entries.get(i)?;
                    (everything || iptv_write::selected(&entry.channel(), groups, query))
                        .then(|| format!("{base}{}", route.path()))
                },
            );
        }
        Ok(out)
    }

    /// The HDHomeRun lineup of the lists named in `only` (every list when empty), oldest
    /// list first, numbered on where a list gives no number.
    pub fn lineup(&self, only: &[String], base: &str) -> Vec<LineupEntry> {
        let routes = self.routes.read().expect("routes lock").clone();
        let mut out = Vec::new();
        let mut next = 1;
        for list in self.sorted_lists() {
            if !only.is_empty() && !only.contains(&list.record.id) {
                continue;
            }
            let Some(list_routes) = routes.get(&list.record.id) else {
                continue;
            };
            let channels = list.entries.iter().map(Kept::channel);
            let (entries, after) = iptv_write::lineup(channels, next, |i| {
                let route = list_routes.get(i)?.as_ref()?;
                Some(format!("{base}{}", route.path()))
            });
            next = after;
            out.extend(entries);
        }
        out
    }

    /// The stored guide of list `id`, if one was fetched.
    pub fn guide(&self, id: &str) -> Result<Option<Guide>, ChannelError> {
        self.list(id)?;
        Ok(self
            .guides
            .read()
            .expect("guides lock")
            .get(id)
            .and_then(|g| g.file.clone()))
    }

    /// Fetches the list's guide to its file; a failure keeps the previous file.
    async fn refresh_guide(&self, id: &str) {
        let Ok(list) = self.list(id) else { return };
        let Some(source) = list.guide_source() else {
            return;
        };
        let result = self.fetch_guide(&list, &source).await;
        let mut guides = self.guides.write().expect("guides lock");
        let state = guides.entry(id.to_owned()).or_default();
        match result {
            Ok(file) => {
                *state = GuideState {
                    file: Some(file),
                    error: None,
                }
            }
            Err(e) => {
                tracing::warn!(playlist = id, error = %e, "guide fetch failed");
                state.error = Some(e.to_string());
            }
        }
    }

    async fn fetch_guide(&self, list: &ListState, source: &str) -> Result<Guide, ChannelError> {
        let url = Url::parse(source)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| ChannelError::invalid("invalid_url", format!("guide URL {source:?}")))?;
        let d = &list.record.definition;
        let headers = header_map(&checked_headers(&d.headers).unwrap_or_default());
        tokio::fs::create_dir_all(&self.guide_dir)
            .await
            .map_err(|e| ChannelError::Fetch(format!("cannot store the guide: {e}")))?;
        let path = self.guide_dir.join(format!("{}.xmltv", list.record.id));
        let t = &self.config.upstream;
        let req = fetch::Request {
            url: &url,
            user_agent: d.user_agent.as_deref(),
            headers: &headers,
            first_byte: t.first_byte.max(Duration::from_secs(30)),
            read_stall: t.read_stall.max(Duration::from_secs(30)),
        };
        let gzip = fetch::to_file(&self.http, &req, &path, MAX_GUIDE_BYTES).await?;
        Ok(Guide {
            path,
            gzip,
            fetched_at: Utc::now(),
        })
    }

    fn schedule(&self, id: &str) {
        let Ok(list) = self.list(id) else { return };
        let mut next = lock(&self.next_refresh);
        match list.record.definition.refresh_interval_minutes {
            Some(m) if m > 0 => {
                let minute = self.config.channels.refresh_minute;
                let minutes = u32::try_from(m.min(MAX_REFRESH_MINUTES)).unwrap_or(u32::MAX);
                next.insert(id.to_owned(), Instant::now() + minute * minutes);
            }
            _ => {
                next.remove(id);
            }
        }
    }

    /// The records to persist, one per list.
    pub fn records(&self) -> Vec<ChannelListRecord> {
        self.sorted_lists()
            .iter()
            .map(|l| l.record.clone())
            .collect()
    }

    /// Puts stored lists back at startup, without fetching, their streams with the
    /// counters stored for them (`counters`, by stream id); a guide file left in the guide
    /// directory is served again.
    pub fn restore(&self, records: Vec<ChannelListRecord>, counters: &HashMap<String, [u64; 4]>) {
        for record in records {
            let id = record.id.clone();
            let state = Arc::new(self.build(record, None));
            self.lists
                .write()
                .expect("lists lock")
                .insert(id.clone(), state);
            self.schedule(&id);
            let path = self.guide_dir.join(format!("{id}.xmltv"));
            if let Ok(head) = std::fs::read(&path).map(|b| b.get(..2) == Some(&[0x1f, 0x8b][..])) {
                self.guides.write().expect("guides lock").insert(
                    id,
                    GuideState {
                        file: Some(Guide {
                            path,
                            gzip: head,
                            fetched_at: Utc::now(),
                        }),
                        error: None,
                    },
                );
            }
        }
        self.reconcile();
        for id in lock(&self.applied).keys() {
            if let (Some(values), Some(s)) = (counters.get(id), self.registry.stream(id)) {
                s.restore_counters(*values);
            }
        }
    }

    /// Removes retired streams whose viewers left and keeps list streams from the idle
    /// sweep.
    async fn tick(&self, count: u32) {
        let retiring: Vec<String> = lock(&self.retiring).iter().cloned().collect();
        let mut removed = Vec::new();
        for id in retiring {
            let gone = match self.registry.stream(&id) {
                Some(s) if self.is_playing(&s) => false,
                Some(_) => {
                    self.registry.remove_stream(&id, Removal::Deleted);
                    removed.push(id.clone());
                    true
                }
                None => true,
            };
            if gone {
                lock(&self.retiring).remove(&id);
            }
        }
        self.forget(&removed).await;
        // Often enough for any STREAM_TIMEOUT: at least twice per timeout.
        let touch_every = self.config.stream_timeout.map_or(TOUCH_EVERY_TICKS, |t| {
            ((t.as_secs() / 2) as u32).clamp(1, TOUCH_EVERY_TICKS)
        });
        if count.is_multiple_of(touch_every) {
            let now = self.registry.clock.now_ms();
            let ids: Vec<String> = lock(&self.applied).keys().cloned().collect();
            for id in ids {
                if let Some(s) = self.registry.stream(&id) {
                    s.touch(now);
                }
            }
        }
    }

    /// The lists whose refresh time has come and whose refresh is not already running,
    /// marked as running.
    fn take_due(&self) -> Vec<String> {
        let now = Instant::now();
        let mut refreshing = lock(&self.refreshing);
        let due: Vec<String> = lock(&self.next_refresh)
            .iter()
            .filter(|(id, at)| **at <= now && !refreshing.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        refreshing.extend(due.iter().cloned());
        due
    }

    /// Runs the periodic work until the handle is aborted.
    pub fn spawn(self: Arc<Self>) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(TICK);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut count = 0u32;
            // Aborted with this task.
            let mut refreshes = tokio::task::JoinSet::new();
            let places = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_REFRESHES));
            loop {
                ticks.tick().await;
                count = count.wrapping_add(1);
                self.tick(count).await;
                for id in self.take_due() {
                    let (this, places) = (self.clone(), places.clone());
                    refreshes.spawn(async move {
                        if let Ok(_place) = places.acquire_owned().await {
                            let _ = this.refresh(&id).await;
                        }
                        lock(&this.refreshing).remove(&id);
                    });
                }
                while refreshes.try_join_next().is_some() {}
            }
        })
    }
}

/// A definition's URL and headers, checked.
struct Checked {
    url: Option<Url>,
    headers: HeaderMap,
}

fn check_definition(d: &CreatePlaylist, upload: bool) -> Result<Checked, ChannelError> {
    if d.name.trim().is_empty() {
        return Err(ChannelError::invalid(
            "missing_parameter",
            "name: every list needs a name",
        ));
    }
    if d.refresh_interval_minutes.unwrap_or(0) > MAX_REFRESH_MINUTES {
        return Err(ChannelError::invalid(
            "invalid_parameter",
            format!(
                "refresh_interval_minutes: at most {MAX_REFRESH_MINUTES} (a year), or 0 for none"
            ),
        ));
    }
    let url = match (&d.url, upload) {
        (Some(raw), false) => Some(http_url("url", raw)?),
        _ => None,
    };
    if let Some(epg) = d.epg_url.as_deref().filter(|u| !u.trim().is_empty()) {
        http_url("epg_url", epg)?;
    }
    if let Some(ua) = &d.user_agent {
        HeaderValue::from_str(ua).map_err(|_| {
            ChannelError::invalid("invalid_header", "user_agent: not a valid header value")
        })?;
    }
    let headers = header_map(&checked_headers(&d.headers)?);
    Ok(Checked { url, headers })
}

fn http_url(field: &str, raw: &str) -> Result<Url, ChannelError> {
    crate::stream::upstream_url(field, raw).map_err(|e| ChannelError::invalid(e.code, e.detail))
}

fn checked_headers(
    headers: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, ChannelError> {
    headers
        .iter()
        .map(|(name, value)| {
            let bad = |what: &str| {
                ChannelError::invalid("invalid_header", format!("headers: {what}: {name}"))
            };
            let h = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| bad("not a valid header name"))?;
            if FORBIDDEN_UPSTREAM_HEADERS.contains(&h.as_str()) {
                return Err(bad("this header is managed by the proxy"));
            }
            HeaderValue::from_str(value).map_err(|_| bad("not a valid header value"))?;
            Ok((h.as_str().to_owned(), value.clone()))
        })
        .collect()
}

fn header_map(headers: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            map.insert(k, v);
        }
    }
    map
}

/// The stream type from the URL alone (a list of 50,000 channels is not probed): HLS for
/// `.m3u8` (or `m3u8` anywhere in the URL), else direct.
fn stream_type_of(url: &Url) -> StreamType {
    match crate::upstream::extension_of(url).as_deref() {
        Some("m3u8") => StreamType::Hls,
        _ if url.as_str().contains("m3u8") => StreamType::Hls,
        _ => StreamType::Direct,
    }
}

/// The merge key of a channel: its `tvg-id`, or its display name, when not empty.
fn merge_key(key: MergeKey, channel: &Channel) -> Option<(MergeKey, String)> {
    let value = match key {
        MergeKey::TvgId => channel.attr("tvg-id")?.trim(),
        MergeKey::Name => channel.name.trim(),
    };
    (!value.is_empty()).then(|| (key, value.to_owned()))
}

/// A channel stream's metadata: `{playlist, playlist_name, tvg_id, tvg_name, group,
/// channel_number}`.
fn metadata(record: &ChannelListRecord, channel: &Channel) -> Metadata {
    Metadata::new(&serde_json::json!({
        "playlist": record.id,
        "playlist_name": record.definition.name,
        "tvg_id": channel.attr("tvg-id"),
        "tvg_name": channel.attr("tvg-name").map_or(channel.name.as_str(), |n| n),
        "group": channel.group,
        "channel_number": channel.attr("tvg-chno"),
    }))
}

/// Counts, by stream id of each entry's own URL, what changed from `old` to `new`.
fn count_changes(old: &[Option<Target>], new: &[Option<Target>], errors: usize) -> RefreshCounts {
    fn by_id(targets: &[Option<Target>]) -> HashMap<&str, u64> {
        targets
            .iter()
            .flatten()
            .map(|t| (t.own_id.as_str(), t.fingerprint))
            .collect()
    }
    let (old, new) = (by_id(old), by_id(new));
    let mut counts = RefreshCounts {
        errors,
        ..RefreshCounts::default()
    };
    for (id, print) in &new {
        match old.get(id) {
            None => counts.added += 1,
            Some(p) if p == print => counts.unchanged += 1,
            Some(_) => counts.updated += 1,
        }
    }
    counts.removed = old.keys().filter(|id| !new.contains_key(*id)).count();
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channels() -> Channels {
        let config = Arc::new(Config::default());
        Channels::new(
            Arc::new(Registry::new(b"test")),
            reqwest::Client::new(),
            config,
        )
    }

    #[tokio::test]
    async fn restored_records_register_their_streams_again() {
        let source = "#EXTM3U\n#EXTINF:-1 tvg-id=\"a\",A\nhttp://o.example/a.ts\n\
                      #EXTINF:-1,B\nhttp://o.example/b.m3u8\n#EXTINF:-1,C\nudp://x\n";
        let record = ChannelListRecord {
            id: "pl-000000000001".into(),
            definition: CreatePlaylist {
                name: "stored".into(),
                url: Some("http://o.example/list.m3u".into()),
                ..CreatePlaylist::default()
            },
            created_at: Utc::now(),
            source: source.into(),
            refreshed_at: Utc::now(),
        };
        // A record survives a JSON round trip, as the store keeps it.
        let stored: ChannelListRecord =
            serde_json::from_str(&serde_json::to_string(&record).unwrap()).unwrap();
        assert_eq!(stored, record);
        let channels = channels();
        channels.restore(vec![stored], &HashMap::new());
        let info = channels.info("pl-000000000001").unwrap();
        assert_eq!((info.channel_count, info.errors.len()), (2, 1));
        assert_eq!(channels.registry.stream_count(), 2);
        assert_eq!(channels.records(), vec![record]);
        let out = channels
            .playlist(Some("pl-000000000001"), "http://p", &[], None)
            .unwrap();
        let a = channels
            .registry
            .stream_id_for(&"http://o.example/a.ts".parse().unwrap());
        assert!(out.contains(&format!("http://p/stream/{a}\n")), "{out}");
        assert!(out.contains("/playlist.m3u8\n") && !out.contains("udp://"));
        channels.delete("pl-000000000001").await.unwrap();
        assert_eq!(channels.registry.stream_count(), 0);
        assert!(channels.records().is_empty());
    }
}
