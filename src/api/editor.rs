//! The routes and forms m3u-editor calls that our own API spells differently or lacks:
//! streams by metadata (its connection counts for provider limits), their deletion, one
//! viewer's end, `/info`, `/test-connection`, `/transcode`, and the per-stream options
//! `strict_live_ts` and `use_sticky_session` used by the playback routes.
//!
//! Metadata values are compared as text, the way the editor's Python proxy stores them:
//! `123` matches `"123"`, and `true`/`false` match whatever their case. A stream counts
//! while someone watches it ([`Registry::stream_is_watched`]). Nothing here holds a lock
//! across an `.await`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use url::Url;

use crate::error::{ApiError, UpstreamError};
use crate::model::StreamType;
use crate::registry::{Registry, Removal, StreamEntry};
use crate::upstream::FetchedPlaylist;

use super::AppState;

/// How long `POST /test-connection` waits for an answer.
const TEST_CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// The routes, behind the API token like the rest of the management API.
pub fn editor_router() -> Router<AppState> {
    Router::new()
        .route(
            "/streams/by-metadata",
            get(streams_by_metadata).delete(delete_by_metadata),
        )
        .route("/streams/counts-by-metadata", get(counts_by_metadata))
        .route("/streams/oldest-by-metadata", delete(delete_oldest))
        .route("/hls/{id}/clients/{client_id}", delete(end_client))
        .route("/info", get(info))
        .route("/test-connection", post(test_connection))
        .route("/transcode", post(transcode))
}

/// Parameters from the query string, then (for what the query lacks) a JSON object body:
/// the editor's HTTP client sends a DELETE's data as a JSON body.
struct Params(HashMap<String, String>);

impl Params {
    fn read(uri: &Uri, body: &[u8]) -> Params {
        let mut map: HashMap<String, String> = HashMap::new();
        if let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) {
            for (k, v) in fields {
                if let Some(text) = as_text(&v) {
                    map.insert(k, text);
                }
            }
        }
        if let Some(q) = uri.query() {
            for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
                map.insert(k.into_owned(), v.into_owned());
            }
        }
        Params(map)
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn required(&self, key: &'static str) -> Result<&str, ApiError> {
        self.get(key).ok_or_else(|| {
            ApiError::unprocessable("missing_parameter", format!("{key} is required"))
        })
    }

    /// `1/0/true/false/yes/no/on/off`, any case.
    fn flag(&self, key: &'static str, default: bool) -> Result<bool, ApiError> {
        let Some(raw) = self.get(key) else {
            return Ok(default);
        };
        match raw.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(ApiError::unprocessable(
                "invalid_parameter",
                format!("{key} must be true or false, not {raw:?}"),
            )),
        }
    }
}

/// A metadata value as text: strings as they are, numbers and booleans written out.
fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Whether two texts are equal, booleans compared whatever their case (`True` is `true`).
fn same_text(a: &str, b: &str) -> bool {
    let boolean = |s: &str| s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false");
    a == b || (boolean(a) && a.eq_ignore_ascii_case(b))
}

/// The stream's `metadata[field]` as text.
fn metadata_text(stream: &StreamEntry, field: &str) -> Option<String> {
    stream
        .settings()
        .metadata
        .as_ref()
        .and_then(|m| m.get(field))
        .as_ref()
        .and_then(as_text)
}

/// Whether `metadata.id` is the channel to leave alone.
fn excluded(stream: &StreamEntry, exclude_channel_id: Option<&str>) -> bool {
    exclude_channel_id
        .is_some_and(|ex| metadata_text(stream, "id").is_some_and(|id| same_text(&id, ex)))
}

/// The streams whose `metadata[field]` is `value`, oldest first.
fn matching(registry: &Registry, field: &str, value: &str) -> Vec<Arc<StreamEntry>> {
    registry
        .streams()
        .into_iter()
        .filter(|s| metadata_text(s, field).is_some_and(|v| same_text(&v, value)))
        .collect()
}

/// How many of the stream's clients are watching now.
fn connected_clients(registry: &Registry, stream: &StreamEntry) -> usize {
    stream
        .clients()
        .iter()
        .filter(|c| registry.client_is_connected(c))
        .count()
}

/// `GET /streams/by-metadata?field=&value=&active_only=`.
#[utoipa::path(get, path = "/streams/by-metadata", tag = "editor",
    params(("field" = String, Query, min_length = 1, description = "Metadata field"),
        ("value" = String, Query, min_length = 1, description = "Metadata value, compared as text"), ("active_only" = Option<String>, Query, pattern = "^([01]|[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|[Yy][Ee][Ss]|[Nn][Oo]|[Oo][Nn]|[Oo][Ff][Ff])?$", description = "Only watched streams [default: true] (1/0, true/false, yes/no, on/off in any case; empty means the default)")),
    responses((status = 200, description = "Matching streams", body = serde_json::Value), (status = 422, description = "A parameter is missing or wrong (`missing_parameter`, `invalid_parameter`)", body = crate::model::ErrorBody), (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
async fn streams_by_metadata(
    State(state): State<AppState>,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let params = Params::read(&uri, &[]);
    let field = params.required("field")?;
    let value = params.required("value")?;
    let active_only = params.flag("active_only", true)?;
    let r = &state.registry;
    let mut total_clients = 0;
    let streams: Vec<Value> = matching(r, field, value)
        .iter()
        .filter(|s| !active_only || r.stream_is_watched(s))
        .map(|s| {
            let clients = connected_clients(r, s);
            total_clients += clients;
            let info = r.stream_info(s);
            json!({
                "stream_id": s.id,
                "client_count": clients,
                "metadata": info.metadata.unwrap_or_else(|| json!({})),
                "last_access": info.last_access,
                "is_active": r.stream_is_watched(s),
                "url": info.current_url,
                "stream_type": info.stream_type,
                "created_at": info.created_at,
            })
        })
        .collect();
    Ok(Json(json!({
        "filter": {"field": field, "value": value},
        "active_only": active_only,
        "total_matching": streams.len(),
        "total_clients": total_clients,
        "matching_streams": streams,
    })))
}

/// `GET /streams/counts-by-metadata?field=&values=a,b,c&active_only=`: every value asked
/// for is in `counts`, 0 when nothing matches.
#[utoipa::path(get, path = "/streams/counts-by-metadata", tag = "editor",
    params(("field" = String, Query, min_length = 1, description = "Metadata field"), ("active_only" = Option<String>, Query, pattern = "^([01]|[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|[Yy][Ee][Ss]|[Nn][Oo]|[Oo][Nn]|[Oo][Ff][Ff])?$", description = "Only watched streams [default: true] (1/0, true/false, yes/no, on/off in any case; empty means the default)")),
    responses((status = 200, description = "Stream counts per value of the field", body = serde_json::Value), (status = 422, description = "A parameter is missing or wrong (`missing_parameter`, `invalid_parameter`)", body = crate::model::ErrorBody), (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
async fn counts_by_metadata(
    State(state): State<AppState>,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let params = Params::read(&uri, &[]);
    let field = params.required("field")?;
    let values: Vec<&str> = params
        .get("values")
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let active_only = params.flag("active_only", true)?;
    let r = &state.registry;
    let texts: Vec<String> = r
        .streams()
        .iter()
        .filter(|s| !active_only || r.stream_is_watched(s))
        .filter_map(|s| metadata_text(s, field))
        .collect();
    let counts: serde_json::Map<String, Value> = values
        .iter()
        .map(|v| {
            let n = texts.iter().filter(|t| same_text(t, v)).count();
            (v.to_string(), json!(n))
        })
        .collect();
    Ok(Json(json!({"field": field, "counts": counts})))
}

/// `DELETE /streams/by-metadata` (`field`, `value`, `force`, `client_id`,
/// `exclude_channel_id`; query or JSON body). With `force=false` the named client is ended
/// first, and a stream is deleted only when nobody else watches it.
#[utoipa::path(delete, path = "/streams/by-metadata", tag = "editor",
    params(("field" = String, Query, min_length = 1, description = "Metadata field"),
        ("value" = String, Query, min_length = 1, description = "Metadata value, compared as text"), ("force" = Option<String>, Query, pattern = "^([01]|[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|[Yy][Ee][Ss]|[Nn][Oo]|[Oo][Nn]|[Oo][Ff][Ff])?$", description = "[default: true] (1/0, true/false, yes/no, on/off in any case; empty means the default)"),
        ("client_id" = Option<String>, Query, description = ""), ("exclude_channel_id" = Option<String>, Query, description = "")),
    responses((status = 200, description = "What was deleted", body = serde_json::Value), (status = 422, description = "A parameter is missing or wrong (`missing_parameter`, `invalid_parameter`)", body = crate::model::ErrorBody), (status = 503, description = "The change is in effect but not saved yet (`store_unavailable`); a retry is harmless", body = crate::model::ErrorBody),
        (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
async fn delete_by_metadata(
    State(state): State<AppState>,
    uri: Uri,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let params = Params::read(&uri, &body);
    let field = params.required("field")?;
    let value = params.required("value")?;
    let force = params.flag("force", true)?;
    let client_id = params.get("client_id");
    let exclude = params.get("exclude_channel_id");
    let r = &state.registry;
    let mut deleted = Vec::new();
    let mut skipped = Vec::new();
    for s in matching(r, field, value) {
        if excluded(&s, exclude) {
            continue;
        }
        if !force {
            if let Some(cid) = client_id {
                r.remove_client(&s.id, cid);
            }
            let others = connected_clients(r, &s);
            if others > 0 {
                skipped.push(json!({
                    "stream_id": s.id,
                    "reason": "has_active_clients",
                    "active_clients": others,
                }));
                continue;
            }
        }
        if r.remove_stream(&s.id, Removal::MetadataFilter).is_some() {
            deleted.push(s.id.clone());
        }
    }
    tracing::info!(
        field,
        value,
        deleted = deleted.len(),
        skipped = skipped.len(),
        "streams deleted by metadata"
    );
    state
        .store
        .delete_all(crate::store::Kind::Stream, &deleted)
        .await
        .map_err(super::manage::store_unavailable)?;
    Ok(Json(json!({
        "message": format!("deleted {} stream(s) with {field}={value}", deleted.len()),
        "deleted_count": deleted.len(),
        "deleted_streams": deleted,
        "skipped_streams": skipped,
    })))
}

/// `DELETE /streams/oldest-by-metadata`: the oldest matching stream, watched or not,
/// except the channel `exclude_channel_id`.
#[utoipa::path(delete, path = "/streams/oldest-by-metadata", tag = "editor",
    params(("field" = String, Query, min_length = 1, description = "Metadata field"),
        ("value" = String, Query, min_length = 1, description = "Metadata value, compared as text"), ("exclude_channel_id" = Option<String>, Query, description = "")),
    responses((status = 200, description = "The stream stopped, if any", body = serde_json::Value), (status = 422, description = "A parameter is missing or wrong (`missing_parameter`, `invalid_parameter`)", body = crate::model::ErrorBody), (status = 503, description = "The change is in effect but not saved yet (`store_unavailable`); a retry is harmless", body = crate::model::ErrorBody),
        (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
async fn delete_oldest(
    State(state): State<AppState>,
    uri: Uri,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let params = Params::read(&uri, &body);
    let field = params.required("field")?;
    let value = params.required("value")?;
    let exclude = params.get("exclude_channel_id");
    let r = &state.registry;
    let oldest = matching(r, field, value)
        .into_iter()
        .filter(|s| !excluded(s, exclude))
        .min_by_key(|s| s.created_at);
    let removed = oldest.and_then(|s| r.remove_stream(&s.id, Removal::Oldest));
    if let Some((s, _)) = &removed {
        state
            .store
            .delete(crate::store::Kind::Stream, &s.id)
            .await
            .map_err(super::manage::store_unavailable)?;
    }
    Ok(Json(match removed {
        Some((s, _)) => {
            let age = (chrono::Utc::now() - s.created_at).num_milliseconds() as f64 / 1000.0;
            json!({
                "message": format!("stopped the oldest stream with {field}={value}"),
                "deleted_stream": s.id,
                "stream_age_seconds": age,
                "deleted_count": 1,
            })
        }
        None => json!({
            "message": format!("no stream with {field}={value} to stop"),
            "deleted_stream": null,
            "deleted_count": 0,
        }),
    }))
}

/// `DELETE /hls/{id}/clients/{client_id}`: ends one viewer; its open connections close.
#[utoipa::path(delete, path = "/hls/{id}/clients/{client_id}", tag = "editor",
    params(("id" = String, Path, min_length = 1, description = "Stream id"), ("client_id" = String, Path, min_length = 1, description = "Client id")),
    responses((status = 200, description = "The viewer is gone; its connections close", body = serde_json::Value),
        (status = 404, description = "No such stream or client (`stream_not_found`, `client_not_found`)", body = crate::model::ErrorBody), (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
async fn end_client(
    State(state): State<AppState>,
    Path((id, client_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    if state.registry.stream(&id).is_none() {
        return Err(ApiError::stream_not_found(&id));
    }
    if !state.registry.remove_client(&id, &client_id) {
        return Err(ApiError::not_found(
            "client_not_found",
            format!("stream {id} has no client {client_id}"),
        ));
    }
    Ok(Json(
        json!({"message": format!("client {client_id} removed from stream {id}")}),
    ))
}

/// `GET /info`: what this proxy is, with the keys the editor reads. It relays streams
/// unchanged: no transcoding, no ffmpeg, no hardware acceleration, no Redis. No secret.
#[utoipa::path(get, path = "/info", tag = "editor",
    responses((status = 200, description = "What this proxy is and does", body = serde_json::Value), (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
async fn info(State(state): State<AppState>) -> Json<Value> {
    let c = &state.config;
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "implementation": "m3u-proxy (Rust)",
        "ffmpeg_version": null,
        "streamlink_version": null,
        "ytdlp_version": null,
        "hardware_acceleration": {"enabled": false, "type": null, "device": null, "ffmpeg_args": []},
        "redis": {
            "enabled": false,
            "pooling_enabled": false,
            "max_clients_per_stream": null,
            "sharing_strategy": if c.fanout.buffer > 0 { "url_only" } else { "disabled" },
        },
        "transcoding": {"enabled": false, "profiles": {}},
        "configuration": {
            "client_timeout": c.client_timeout.as_secs(),
            "stream_timeout": c.stream_timeout.map(|d| d.as_secs()),
            "cleanup_interval": c.cleanup_interval.as_secs(),
            "max_retries": c.failover.retries,
            "default_user_agent": crate::upstream::DEFAULT_USER_AGENT,
            "root_path": c.root_path,
        },
        "features": {
            "live_sharing": c.fanout.buffer > 0,
            "segment_cache": c.cache.max_bytes > 0 && !c.cache.segment_ttl.is_zero(),
            "failover_resolver": true,
            "webhooks": true,
            "transcoding": false,
            "broadcasts": false,
        },
        "worker": {"worker_id": null, "heartbeat_interval": null, "multi_worker_mode": false},
    }))
}

/// `POST /test-connection {url}`: a short GET of the URL; always 200, the outcome inside.
#[utoipa::path(post, path = "/test-connection", tag = "editor", request_body(content = Option<serde_json::Value>, description = "`{\"url\": ...}`; anything else is answered 200 with `success: false`"),
    responses((status = 200, description = "Always 200; the outcome inside", body = serde_json::Value), (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
async fn test_connection(State(state): State<AppState>, body: Bytes) -> Json<Value> {
    let raw = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("url").and_then(Value::as_str).map(str::to_string));
    let Some(raw) = raw else {
        return Json(json!({
            "success": false,
            "message": "give the URL to test as {\"url\": ...}",
            "status_code": null,
            "url_tested": null,
        }));
    };
    let url = match Url::parse(raw.trim()) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => u,
        _ => {
            return Json(json!({
                "success": false,
                "message": "not an http(s) URL",
                "status_code": null,
                "url_tested": raw,
                "error": "invalid_url",
            }))
        }
    };
    // A test is a connection like any other: it needs a slot of the URL's provider.
    let slot = state
        .upstream
        .providers()
        .slot_of_no_stream(&url, "test_connection")
        .await;
    let _slot = match slot {
        Ok(slot) => slot,
        Err(e) => {
            return Json(json!({
                "success": false,
                "message": format!("not tested: {e}"),
                "status_code": null,
                "url_tested": raw,
                "error": "provider_full",
            }))
        }
    };
    let answer = state
        .upstream
        .http()
        .get(url)
        .timeout(TEST_CONNECTION_TIMEOUT)
        .send()
        .await;
    Json(match answer {
        Ok(res) => {
            let status = res.status();
            json!({
                "success": status.is_success(),
                "message": format!("the URL answered {status}"),
                "status_code": status.as_u16(),
                "url_tested": raw,
            })
        }
        Err(e) => {
            let why = UpstreamError::from_reqwest(&e).to_string();
            json!({
                "success": false,
                "message": format!("connection failed: {why}"),
                "status_code": null,
                "url_tested": raw,
                "error": why,
            })
        }
    })
}

/// `POST /transcode`: this proxy relays streams unchanged.
#[utoipa::path(post, path = "/transcode", tag = "editor",
    responses((status = 501, description = "This proxy does not transcode (`transcoding_unsupported`)", body = crate::model::ErrorBody), (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
async fn transcode() -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "transcoding_unsupported",
        "this proxy relays streams unchanged and does not transcode; create the stream with POST /streams",
    )
}

/// Whether `strict_live_ts` applies: set on a direct stream whose URL is not a file
/// (films, series and timeshift keep their ranges).
pub fn strict_live_ts(stream: &StreamEntry) -> bool {
    let settings = stream.settings();
    if !settings.options.strict_live_ts || settings.stream_type != StreamType::Direct {
        return false;
    }
    let url = stream.current_url().1;
    let path = url.path().to_ascii_lowercase();
    let file = [".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v"]
        .iter()
        .any(|e| path.ends_with(e))
        || ["/movie/", "/series/", "/timeshift/"]
            .iter()
            .any(|p| path.contains(p));
    !file
}

/// The answer to a HEAD in strict live TS mode, given at once without asking the origin.
pub fn strict_head() -> Response {
    // A body of unknown length, so no `Content-Length: 0` is written.
    let body = axum::body::Body::from_stream(futures_util::stream::empty::<
        Result<Bytes, std::io::Error>,
    >());
    let mut res = (StatusCode::OK, body).into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp2t"));
    strict_headers(res.headers_mut());
    res
}

/// A live TS has no length and no ranges.
pub fn strict_headers(headers: &mut HeaderMap) {
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::CONTENT_RANGE);
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("none"));
}

/// Fetches the playlist of URL `index` with `fetch`; with `use_sticky_session`, at the URL
/// it last redirected to while that works, then at `url` again, remembering a new redirect.
pub async fn sticky_fetch<F, Fut>(
    stream: &StreamEntry,
    index: usize,
    url: Url,
    fetch: F,
) -> Result<Arc<FetchedPlaylist>, UpstreamError>
where
    F: Fn(Url) -> Fut,
    Fut: Future<Output = Result<Arc<FetchedPlaylist>, UpstreamError>>,
{
    if !stream.settings().options.use_sticky_session {
        return fetch(url).await;
    }
    if let Some(sticky) = stream.sticky_url(index) {
        match fetch(sticky).await {
            Ok(fetched) => return Ok(fetched),
            Err(e) => {
                tracing::info!(stream_id = %stream.id, error = %e, "sticky URL failed; back to the registered one");
                stream.set_sticky_url(index, None);
            }
        }
    }
    let fetched = fetch(url.clone()).await?;
    if fetched.final_url != url {
        stream.set_sticky_url(index, Some(fetched.final_url.clone()));
    }
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_compared_as_text_and_booleans_whatever_their_case() {
        assert_eq!(as_text(&json!(123)).as_deref(), Some("123"));
        assert_eq!(as_text(&json!(true)).as_deref(), Some("true"));
        assert_eq!(as_text(&json!("abc")).as_deref(), Some("abc"));
        assert_eq!(as_text(&json!({"a": 1})), None);
        assert!(same_text("123", "123"));
        assert!(!same_text("123", "1234"));
        assert!(same_text("True", "true"));
        assert!(same_text("false", "FALSE"));
        assert!(!same_text("Abc", "abc"), "only booleans are case-blind");
    }

    #[test]
    fn parameters_come_from_the_query_then_the_json_body() {
        let uri: Uri = "/x?field=a&force=0".parse().unwrap();
        let p = Params::read(&uri, br#"{"field": "b", "value": 7, "active_only": true}"#);
        assert_eq!(p.get("field"), Some("a"));
        assert_eq!(p.get("value"), Some("7"));
        assert!(!p.flag("force", true).unwrap());
        assert!(p.flag("active_only", false).unwrap());
        assert!(p.flag("missing", true).unwrap());
        let bad = Params::read(&"/x?force=maybe".parse().unwrap(), b"[]");
        assert_eq!(
            bad.flag("force", true).unwrap_err().code,
            "invalid_parameter"
        );
    }
}
