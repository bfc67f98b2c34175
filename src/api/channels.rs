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
use crate::model::{
    CreatePlaylist, ErrorBody, MergeKey, PlaylistDeleted, PlaylistInfo, PlaylistList,
};
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

/// Whether a request is a channel-list upload (`POST /playlists` with an M3U body, under
/// any `ROOT_PATH`): the connection leaves its body to the handler, which reads up to
/// `CHANNEL_LIST_MAX_MB` rather than the management routes' 1 MB.
pub(crate) fn is_list_upload(
    method: &axum::http::Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
) -> bool {
    method == axum::http::Method::POST
        && uri.path().trim_end_matches('/').ends_with("/playlists")
        && M3U_TYPES.contains(&content_type(headers).as_str())
}

/// The request's media type, lower case, without parameters.
fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

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
        ChannelError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        ChannelError::Invalid { .. } | ChannelError::TooLarge { .. } | ChannelError::NotM3u(_) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
    };
    ApiError::new(status, e.code(), e.to_string())
}

/// The definition of an uploaded list, from the query string.
#[derive(Debug, Default, Deserialize)]
pub(super) struct UploadQuery {
    name: Option<String>,
    provider: Option<String>,
    epg_url: Option<String>,
    merge: Option<MergeKey>,
    refresh_interval_minutes: Option<u64>,
}

/// An uploaded channel list, as the body of `POST /playlists` (documentation only: the
/// handler reads the bytes). The pattern is what the import accepts as a list: `#EXTM3U`
/// first, no control characters but tab, line breaks and form feed.
pub(super) struct M3uUpload;

impl utoipa::PartialSchema for M3uUpload {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "An M3U channel list. Refused (`playlist_not_m3u`) when it is binary, an HTML page, or has neither `#EXTM3U` nor `#EXTINF`.",
            ))
            .pattern(Some(
                "^#EXTM3U[^\\u0000-\\u0008\\u000b\\u000e-\\u001f]*$",
            ))
            .into()
    }
}

impl utoipa::ToSchema for M3uUpload {}

/// Imports a list from `url` (a JSON definition), or from the body itself when it is sent
/// as `audio/x-mpegurl` (or `text/plain`, `application/vnd.apple.mpegurl`, ...), its
/// definition then in the query string. Nothing is created unless the whole body is a
/// channel list.
#[utoipa::path(post, path = "/playlists", tag = "playlists",
    params(("name" = String, Query, pattern = "\\S", description = "An uploaded list's name: required with an upload (422 `missing_parameter` without it); ignored with a JSON definition, which carries its own"),
        ("provider" = Option<String>, Query, description = "An uploaded list's provider"),
        ("epg_url" = Option<String>, Query, pattern = "^$|^https?://[a-z]([a-z0-9]|-[a-z0-9])*(\\.[a-z]([a-z0-9]|-[a-z0-9])*)*(:[1-9][0-9]{0,3})?(/[A-Za-z0-9._~/-]*)?$", description = "An uploaded list's guide (XMLTV) URL"),
        ("merge" = Option<MergeKey>, Query, description = "An uploaded list's merge key"),
        ("refresh_interval_minutes" = Option<u64>, Query, minimum = 0, maximum = 525600, description = "An uploaded list's refresh interval; 0: only on request")),
    request_body(description = "The list's definition as JSON (fetched from its `url`), or the list itself with its definition in the query",
        content((CreatePlaylist = "application/json"), (M3uUpload = "audio/x-mpegurl"), (M3uUpload = "text/plain"))),
    responses((status = 201, description = "The list is imported and its channels are streams", body = PlaylistInfo),
        (status = 400, description = "The body is not JSON (`malformed_json`), or the query or body cannot be read (`invalid_request`)", body = ErrorBody),
        (status = 413, description = "An uploaded list is larger than `CHANNEL_LIST_MAX_MB`, or a JSON definition larger than 1 MB (`payload_too_large`)", body = ErrorBody),
        (status = 422, description = "The definition or the list is wrong: `invalid_body`, `missing_parameter`, `invalid_parameter` (`refresh_interval_minutes` over a year), `invalid_url`, `unsupported_scheme`, `invalid_header`, `playlist_too_large` (beyond `CHANNEL_LIST_MAX_MB`), `playlist_not_m3u`", body = ErrorBody),
        (status = 502, description = "The list's URL could not be fetched (`playlist_fetch_failed`)", body = ErrorBody),
        (status = 503, description = "The list is imported but not saved yet (`store_unavailable`)", body = ErrorBody),
        (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
pub(super) async fn create_playlist(
    State(state): State<AppState>,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<PlaylistInfo>), ApiError> {
    let stall = state.config.connections.header_read_timeout;
    let (definition, upload) = if M3U_TYPES.contains(&content_type(&headers).as_str()) {
        let definition = CreatePlaylist {
            name: query.name.unwrap_or_default(),
            provider: query.provider,
            epg_url: query.epg_url,
            merge: query.merge,
            refresh_interval_minutes: query.refresh_interval_minutes,
            ..CreatePlaylist::default()
        };
        let limit = state.config.channels.max_list_bytes;
        let too_large =
            || format!("the uploaded list is larger than {limit} bytes (CHANNEL_LIST_MAX_MB)");
        (
            definition,
            Some(read_body(body, &headers, limit, stall, too_large).await?),
        )
    } else {
        let too_large = || {
            format!(
                "a list's definition is at most {MAX_DEFINITION_BYTES} bytes of JSON (upload \
                 a list itself as audio/x-mpegurl)"
            )
        };
        let body = read_body(body, &headers, MAX_DEFINITION_BYTES, stall, too_large).await?;
        (json_definition(&body)?, None)
    };
    let info = state
        .channels
        .create(definition, upload)
        .await
        .map_err(api_error)?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// Most bytes of a JSON definition: the management routes' limit (the connection reads
/// those bodies before the handler, so this only guards a handler called directly).
const MAX_DEFINITION_BYTES: u64 = 1024 * 1024;

/// The request body, read as it arrives into one buffer of at most `limit` bytes: a
/// declared `Content-Length` over it is refused before reading, and a body that grows past
/// it is refused when it does (413 `payload_too_large`, `too_large` saying why); a body
/// that stops arriving for `stall` is a 408.
async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: u64,
    stall: std::time::Duration,
    too_large: impl Fn() -> String,
) -> Result<Vec<u8>, ApiError> {
    use futures_util::StreamExt;
    let refuse = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            too_large(),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(refuse());
    }
    // Room for what was declared, within a first allocation that a lying client cannot
    // make large.
    let mut out = Vec::with_capacity(declared.unwrap_or(0).min(limit).min(16 << 20) as usize);
    let mut chunks = body.into_data_stream();
    loop {
        let next = tokio::time::timeout(stall, chunks.next())
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    format!(
                        "the request body stopped arriving for {} s",
                        stall.as_secs_f64()
                    ),
                )
            })?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request("invalid_request", format!("cannot read the body: {e}"))
        })?;
        if (out.len() + chunk.len()) as u64 > limit {
            return Err(refuse());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The JSON definition of a list. `refresh_interval_minutes` may be written `5.0`: JSON has
/// one number type, and JSON Schema counts `5.0` as an integer.
fn json_definition(body: &[u8]) -> Result<CreatePlaylist, ApiError> {
    let mut value = super::json::parse::<serde_json::Value>(body)?;
    if let Some(v) = value.get_mut("refresh_interval_minutes") {
        let whole = v
            .as_f64()
            .filter(|f| {
                v.as_u64().is_none() && f.fract() == 0.0 && *f >= 0.0 && *f < u64::MAX as f64
            })
            .map(|f| f as u64);
        if let Some(w) = whole {
            *v = w.into();
        }
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::unprocessable("invalid_body", format!("invalid request body: {e}")))
}

#[utoipa::path(get, path = "/playlists", tag = "playlists",
    responses((status = 200, description = "Every list, oldest first", body = PlaylistList),
        (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
pub(super) async fn list_playlists(State(state): State<AppState>) -> Json<PlaylistList> {
    let playlists = state.channels.infos();
    Json(PlaylistList {
        total: playlists.len(),
        playlists,
    })
}

#[utoipa::path(get, path = "/playlists/{id}", tag = "playlists",
    params(("id" = String, Path, min_length = 1, description = "Playlist id")),
    responses((status = 200, description = "The list, its latest refresh and its refused entries", body = PlaylistInfo),
        (status = 404, description = "No such list (`playlist_not_found`)", body = ErrorBody),
        (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
pub(super) async fn get_playlist(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<PlaylistInfo>, ApiError> {
    state.channels.info(&id).map(Json).map_err(api_error)
}

/// Fetches the list again (an uploaded list is read again from its stored body); a failure
/// keeps the list in use and is recorded in its `last_result`.
#[utoipa::path(post, path = "/playlists/{id}/refresh", tag = "playlists",
    params(("id" = String, Path, min_length = 1, description = "Playlist id")),
    responses((status = 200, description = "Refreshed; `last_result` says what changed", body = PlaylistInfo),
        (status = 404, description = "No such list (`playlist_not_found`)", body = ErrorBody),
        (status = 422, description = "The list's definition or the fetched body is refused (`invalid_url`, `unsupported_scheme`, `invalid_header`, `playlist_too_large`, `playlist_not_m3u`); the list in use is kept", body = ErrorBody),
        (status = 502, description = "The list's URL could not be fetched (`playlist_fetch_failed`); the list in use is kept", body = ErrorBody),
        (status = 503, description = "Refreshed, but not saved yet (`store_unavailable`)", body = ErrorBody),
        (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
pub(super) async fn refresh_playlist(
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

#[utoipa::path(delete, path = "/playlists/{id}", tag = "playlists",
    params(("id" = String, Path, min_length = 1, description = "Playlist id")),
    responses((status = 200, description = "List removed; its streams go, those still playing when their viewers leave", body = PlaylistDeleted),
        (status = 404, description = "No such list (`playlist_not_found`)", body = ErrorBody),
        (status = 503, description = "Removed, but not saved yet (`store_unavailable`)", body = ErrorBody),
        (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
pub(super) async fn delete_playlist(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<PlaylistDeleted>, ApiError> {
    state
        .channels
        .delete(&id)
        .await
        .map(Json)
        .map_err(api_error)
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

#[utoipa::path(get, path = "/playlist.m3u", tag = "playlists", security(()),
    params(("group" = Option<Vec<String>>, Query, style = Form, explode, description = "Only channels of these groups (repeatable)"),
        ("q" = Option<String>, Query, description = "Only channels whose name contains this")),
    responses((status = 200, description = "Every list's channels, each URL pointing at this proxy, with the guides in `url-tvg`", content_type = "audio/x-mpegurl", body = String)))]
pub(super) async fn all_playlists(
    State(state): State<AppState>,
    base: Base,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    playlist(&state, None, base, &uri)
}

#[utoipa::path(get, path = "/playlists/{id}/playlist.m3u", tag = "playlists", security(()),
    params(("id" = String, Path, min_length = 1, description = "Playlist id"), ("group" = Option<Vec<String>>, Query, style = Form, explode, description = "Only channels of these groups (repeatable)"),
        ("q" = Option<String>, Query, description = "Only channels whose name contains this")),
    responses((status = 200, description = "The list's channels, each URL pointing at this proxy", content_type = "audio/x-mpegurl", body = String),
        (status = 404, description = "No such list (`playlist_not_found`)", body = ErrorBody)))]
pub(super) async fn one_playlist(
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
#[utoipa::path(get, path = "/playlists/{id}/epg.xml", tag = "playlists", security(()),
    params(("id" = String, Path, min_length = 1, description = "Playlist id")),
    responses((status = 200, description = "The list's guide (XMLTV), as the origin gave it: gzip (`Content-Encoding: gzip`) to a client that accepts it", content_type = "application/xml", body = String),
        (status = 404, description = "No such list (`playlist_not_found`), or no guide was fetched for it (`guide_not_available`)", body = ErrorBody)))]
pub(super) async fn guide(
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
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Discover {
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
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct LineupStatus {
    #[serde(rename = "ScanInProgress")]
    scan_in_progress: u8,
    #[serde(rename = "ScanPossible")]
    scan_possible: u8,
    #[serde(rename = "Source")]
    source: &'static str,
    #[serde(rename = "SourceList")]
    #[schema(value_type = Vec<String>)]
    source_list: [&'static str; 1],
}

/// The schema of [`LineupEntry`] (documentation only; a test keeps the two alike).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = LineupEntry)]
pub(super) struct LineupEntryDoc {
    #[serde(rename = "GuideNumber")]
    guide_number: String,
    #[serde(rename = "GuideName")]
    guide_name: String,
    #[serde(rename = "URL")]
    url: String,
}

const FRIENDLY_NAME: &str = "m3u-proxy";

/// A stable 8-hex-digit DeviceID, derived from the secret (the same on every restart and
/// every instance sharing the secret).
fn device_id(state: &AppState) -> String {
    let key = Url::parse("m3u-proxy:hdhomerun-device").expect("a constant URL");
    state.registry.stream_id_for(&key)[..8].to_ascii_uppercase()
}

/// The tuners to announce: the connections of the providers the lists name (those defined),
/// else `HDHOMERUN_TUNER_COUNT`.
async fn tuner_count(state: &AppState) -> u32 {
    let providers = state.upstream.providers();
    let limits: u32 = state
        .channels
        .provider_names()
        .iter()
        .filter_map(|name| providers.get(name))
        .map(|p| p.max_connections())
        .fold(0, u32::saturating_add);
    if limits > 0 {
        limits
    } else {
        state.config.channels.tuner_count
    }
}

#[utoipa::path(get, path = "/discover.json", tag = "hdhomerun", security(()),
    responses((status = 200, description = "This proxy as an HDHomeRun tuner (Plex, Jellyfin, Emby)", body = Discover)))]
pub(super) async fn discover(State(state): State<AppState>, Base(base): Base) -> Json<Discover> {
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
        tuner_count: tuner_count(&state).await,
    })
}

#[utoipa::path(get, path = "/lineup.json", tag = "hdhomerun", security(()),
    params(("playlist" = Option<Vec<String>>, Query, style = Form, explode, description = "Only the channels of these lists (repeatable)")),
    responses((status = 200, description = "Every channel, numbered, with its stream URL", body = Vec<LineupEntryDoc>)))]
pub(super) async fn lineup(
    State(state): State<AppState>,
    Base(base): Base,
    uri: axum::http::Uri,
) -> Json<Vec<LineupEntry>> {
    Json(state.channels.lineup(&filters(&uri).playlists, &base))
}

#[utoipa::path(get, path = "/lineup_status.json", tag = "hdhomerun", security(()),
    responses((status = 200, description = "Never scanning; a cable source", body = LineupStatus)))]
pub(super) async fn lineup_status() -> Json<LineupStatus> {
    Json(LineupStatus {
        scan_in_progress: 0,
        scan_possible: 1,
        source: "Cable",
        source_list: ["Cable"],
    })
}

#[utoipa::path(get, path = "/device.xml", tag = "hdhomerun", security(()),
    responses((status = 200, description = "The UPnP device description of the tuner", content_type = "application/xml", body = String)))]
pub(super) async fn device_xml(State(state): State<AppState>, Base(base): Base) -> Response {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented lineup entry has the fields the real one serializes.
    #[test]
    fn lineup_entry_doc_matches() {
        let real = serde_json::to_value(LineupEntry {
            guide_number: "1".into(),
            guide_name: "A".into(),
            url: "http://p/stream/x".into(),
        })
        .unwrap();
        let doc = serde_json::to_value(LineupEntryDoc {
            guide_number: "1".into(),
            guide_name: "A".into(),
            url: "http://p/stream/x".into(),
        })
        .unwrap();
        assert_eq!(real, doc);
    }

    #[test]
    fn a_whole_float_is_a_refresh_interval() {
        let body = br#"{"name": "a", "url": "http://a/", "refresh_interval_minutes": 5.0}"#;
        let d = json_definition(body).unwrap();
        assert_eq!(d.refresh_interval_minutes, Some(5));
        let half = br#"{"name": "a", "refresh_interval_minutes": 5.5}"#;
        assert_eq!(json_definition(half).unwrap_err().code, "invalid_body");
        assert_eq!(json_definition(b"{").unwrap_err().code, "malformed_json");
    }
}
