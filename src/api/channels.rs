//! Channel-list routes. Management (behind the API token): `POST /playlists` (from a URL,
//! or an uploaded `audio/x-mpegurl` body with `?name=`), `GET /playlists`,
//! `GET|DELETE /playlists/{id}`, `POST /playlists/{id}/refresh`. Playback (no token, like
//! `/hls` and `/stream`): the proxied lists `GET /playlist.m3u` and
//! `GET /playlists/{id}/playlist.m3u` (`?group=`, repeatable, and `?q=`), the guide
//! `GET /playlists/{id}/epg.xml`, and the HDHomeRun tuner (`/discover.json`,
//! `/lineup.json`, `/lineup_status.json`, `/device.xml`).
//!
//! Absolute URLs start at `PUBLIC_URL` when it is set, else at the request's scheme and
//! host (`X-Forwarded-Proto` / `X-Forwarded-Host` believed from `TRUSTED_PROXIES` only),
//! followed by `ROOT_PATH` when the request came in under it.

use std::io::Read;
use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, FromRequestParts, OriginalUri, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::channels::ChannelError;
use crate::error::ApiError;
use crate::model::{CreatePlaylist, MergeKey, PlaylistDeleted, PlaylistInfo, PlaylistList};
use crate::playlist::iptv_write::LineupEntry;

use super::AppState;

/// Content types of an uploaded list (anything else is read as the JSON definition).
const M3U_TYPES: [&str; 6] = [
    "audio/x-mpegurl",
    "audio/mpegurl",
    "application/x-mpegurl",
    "application/vnd.apple.mpegurl",
    "application/mpegurl",
    "text/plain",
];

/// The management routes, behind the API token.
pub fn channels_router() -> Router<AppState> {
    Router::new()
        .route("/playlists", post(create_playlist).get(list_playlists))
        .route("/playlists/{id}", get(get_playlist).delete(delete_playlist))
        .route("/playlists/{id}/refresh", post(refresh_playlist))
}

/// The playback routes: lists, guides and the HDHomeRun tuner, without a token.
pub fn channels_playback_router() -> Router<AppState> {
    Router::new()
        .route("/playlist.m3u", get(all_playlists))
        .route("/playlists/{id}/playlist.m3u", get(one_playlist))
        .route("/playlists/{id}/epg.xml", get(guide))
        .route("/discover.json", get(discover))
        .route("/lineup.json", get(lineup))
        .route("/lineup_status.json", get(lineup_status))
        .route("/device.xml", get(device_xml))
}

fn api_error(e: ChannelError) -> ApiError {
    let status = match &e {
        ChannelError::NotFound(_) => StatusCode::NOT_FOUND,
        ChannelError::Fetch(_) => StatusCode::BAD_GATEWAY,
        ChannelError::Invalid { .. } | ChannelError::TooLarge { .. } | ChannelError::NotM3u(_) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
    };
    ApiError::new(status, e.code(), e.to_string())
}

/// The definition of an uploaded list, from the query string.
#[derive(Debug, Default, Deserialize)]
struct UploadQuery {
    name: Option<String>,
    provider: Option<String>,
    epg_url: Option<String>,
    merge: Option<MergeKey>,
    refresh_interval_minutes: Option<u64>,
}

async fn create_playlist(
    State(state): State<AppState>,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<PlaylistInfo>), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let (definition, upload) = if M3U_TYPES.contains(&content_type.as_str()) {
        let definition = CreatePlaylist {
            name: query.name.unwrap_or_default(),
            provider: query.provider,
            epg_url: query.epg_url,
            merge: query.merge,
            refresh_interval_minutes: query.refresh_interval_minutes,
            ..CreatePlaylist::default()
        };
        (definition, Some(body.to_vec()))
    } else {
        (super::json::parse::<CreatePlaylist>(&body)?, None)
    };
    let info = state
        .channels
        .create(definition, upload)
        .await
        .map_err(api_error)?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn list_playlists(State(state): State<AppState>) -> Json<PlaylistList> {
    let playlists = state.channels.infos();
    Json(PlaylistList {
        total: playlists.len(),
        playlists,
    })
}

async fn get_playlist(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<PlaylistInfo>, ApiError> {
    state.channels.info(&id).map(Json).map_err(api_error)
}

async fn refresh_playlist(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<PlaylistInfo>, ApiError> {
    state
        .channels
        .refresh(&id)
        .await
        .map(Json)
        .map_err(api_error)
}

async fn delete_playlist(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<PlaylistDeleted>, ApiError> {
    state.channels.delete(&id).map(Json).map_err(api_error)
}

/// The absolute base of the URLs a response writes: `PUBLIC_URL`, or the request's
/// scheme and host, then `ROOT_PATH` when the request came in under it.
pub struct Base(pub String);

impl FromRequestParts<AppState> for Base {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(public) = &state.config.channels.public_url {
            return Ok(Base(public.trim_end_matches('/').to_owned()));
        }
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let trusted = peer.is_some_and(|p| state.config.trusted_proxies.contains(&p));
        let first = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let scheme = match trusted.then(|| first("x-forwarded-proto")).flatten() {
            Some(p) if p.eq_ignore_ascii_case("https") => "https",
            _ => "http",
        };
        let host = trusted
            .then(|| first("x-forwarded-host"))
            .flatten()
            .or_else(|| first("host"))
            .filter(|h| is_host(h))
            .unwrap_or("localhost");
        let root = &state.config.root_path;
        let original = parts
            .extensions
            .get::<OriginalUri>()
            .map(|u| u.0.path().to_owned());
        let under_root = !root.is_empty()
            && original.is_some_and(|p| {
                p != parts.uri.path()
                    && p.strip_prefix(root.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            });
        let prefix = if under_root { root.as_str() } else { "" };
        Ok(Base(format!("{scheme}://{host}{prefix}")))
    }
}

/// Whether `h` can be written into a URL as its authority as it is.
fn is_host(h: &str) -> bool {
    h.len() <= 255
        && h.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_')
        })
}

/// `group` (repeatable), `q` and `playlist` (repeatable) of a query string.
#[derive(Debug, Default)]
struct Filters {
    groups: Vec<String>,
    query: Option<String>,
    playlists: Vec<String>,
}

fn filters(uri: &axum::http::Uri) -> Filters {
    let mut f = Filters::default();
    for (k, v) in url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        match &*k {
            "group" => f.groups.push(v.into_owned()),
            "q" => f.query = Some(v.into_owned()),
            "playlist" => f.playlists.push(v.into_owned()),
            _ => {}
        }
    }
    f
}

async fn all_playlists(
    State(state): State<AppState>,
    base: Base,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    playlist(&state, None, base, &uri)
}

async fn one_playlist(
    State(state): State<AppState>,
    Path(id): Path<String>,
    base: Base,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    playlist(&state, Some(&id), base, &uri)
}

/// The proxied M3U of one list or of all, filtered by the query's `group` and `q`.
fn playlist(
    state: &AppState,
    id: Option<&str>,
    Base(base): Base,
    uri: &axum::http::Uri,
) -> Result<Response, ApiError> {
    let f = filters(uri);
    let body = state
        .channels
        .playlist(id, &base, &f.groups, f.query.as_deref())
        .map_err(api_error)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("audio/x-mpegurl; charset=utf-8"),
        )],
        body,
    )
        .into_response())
}

/// The stored guide: as the origin gave it, gzip kept for a client that accepts it and
/// decompressed on the fly for one that does not. Streamed from the file either way.
async fn guide(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let missing = || {
        ApiError::not_found(
            "guide_not_available",
            format!("no guide was fetched for playlist {id} (see its guide_error)"),
        )
    };
    let file = state
        .channels
        .guide(&id)
        .map_err(api_error)?
        .ok_or_else(missing)?;
    let accepts_gzip = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            let mut parts = e.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        });
    let mut res = if file.gzip && !accepts_gzip {
        let std_file = std::fs::File::open(&file.path).map_err(|_| missing())?;
        Response::new(Body::from_stream(gunzip(std_file)))
    } else {
        let f = tokio::fs::File::open(&file.path)
            .await
            .map_err(|_| missing())?;
        let len = f.metadata().await.map(|m| m.len()).ok();
        let mut res = Response::new(Body::from_stream(tokio_util::io::ReaderStream::new(f)));
        if let Some(len) = len {
            res.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        if file.gzip {
            res.headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        res
    };
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml; charset=utf-8"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    Ok(res)
}

/// The decompressed bytes of a gzip file, read on a blocking thread in 64 KB pieces.
fn gunzip(file: std::fs::File) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut decoder = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file));
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match decoder.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx
                        .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

/// `/discover.json`, as an HDHomeRun answers it.
#[derive(Debug, Serialize)]
struct Discover {
    #[serde(rename = "FriendlyName")]
    friendly_name: &'static str,
    #[serde(rename = "Manufacturer")]
    manufacturer: &'static str,
    #[serde(rename = "ModelNumber")]
    model_number: &'static str,
    #[serde(rename = "FirmwareName")]
    firmware_name: &'static str,
    #[serde(rename = "FirmwareVersion")]
    firmware_version: &'static str,
    #[serde(rename = "DeviceID")]
    device_id: String,
    #[serde(rename = "DeviceAuth")]
    device_auth: &'static str,
    #[serde(rename = "BaseURL")]
    base_url: String,
    #[serde(rename = "LineupURL")]
    lineup_url: String,
    #[serde(rename = "TunerCount")]
    tuner_count: u32,
}

/// `/lineup_status.json`: never scanning, a cable source.
#[derive(Debug, Serialize)]
struct LineupStatus {
    #[serde(rename = "ScanInProgress")]
    scan_in_progress: u8,
    #[serde(rename = "ScanPossible")]
    scan_possible: u8,
    #[serde(rename = "Source")]
    source: &'static str,
    #[serde(rename = "SourceList")]
    source_list: [&'static str; 1],
}

const FRIENDLY_NAME: &str = "m3u-proxy";

/// A stable 8-hex-digit DeviceID, derived from the secret (the same on every restart and
/// every instance sharing the secret).
fn device_id(state: &AppState) -> String {
    let key = Url::parse("m3u-proxy:hdhomerun-device").expect("a constant URL");
    state.registry.stream_id_for(&key)[..8].to_ascii_uppercase()
}

async fn discover(State(state): State<AppState>, Base(base): Base) -> Json<Discover> {
    Json(Discover {
        friendly_name: FRIENDLY_NAME,
        manufacturer: "Silicondust",
        model_number: "HDTC-2US",
        firmware_name: "hdhomeruntc_atsc",
        firmware_version: "20200101",
        device_id: device_id(&state),
        device_auth: "m3u-proxy",
        lineup_url: format!("{base}/lineup.json"),
        base_url: base,
        tuner_count: state.config.channels.tuner_count,
    })
}

async fn lineup(
    State(state): State<AppState>,
    Base(base): Base,
    uri: axum::http::Uri,
) -> Json<Vec<LineupEntry>> {
    Json(state.channels.lineup(&filters(&uri).playlists, &base))
}

async fn lineup_status() -> Json<LineupStatus> {
    Json(LineupStatus {
        scan_in_progress: 0,
        scan_possible: 1,
        source: "Cable",
        source_list: ["Cable"],
    })
}

async fn device_xml(State(state): State<AppState>, Base(base): Base) -> Response {
    let id = device_id(&state);
    let xml = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<root xmlns="urn:schemas-upnp-org:device-1-0">
  <specVersion><major>1</major><minor>0</minor></specVersion>
  <URLBase>{base}</URLBase>
  <device>
    <deviceType>urn:schemas-upnp-org:device:MediaServer:1</deviceType>
    <friendlyName>{FRIENDLY_NAME}</friendlyName>
    <manufacturer>Silicondust</manufacturer>
    <modelName>HDTC-2US</modelName>
    <modelNumber>HDTC-2US</modelNumber>
    <serialNumber>{id}</serialNumber>
    <UDN>uuid:{id}</UDN>
  </device>
</root>
"#
    );
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/xml; charset=utf-8"),
        )],
        xml,
    )
        .into_response()
}
