//! Management routes: streams, failover, statistics, clients, health.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use url::Url;

use crate::error::ApiError;
use crate::model::{
    ClientInfo, ClientList, CreateStream, FailoverDone, Health, HealthStats, ProxyStats, Stats,
    StreamCreated, StreamDeleted, StreamDetail, StreamList, StreamType,
};
use crate::registry::{Counters, Removal, StreamEntry, Upsert};
use crate::store::{Kind, StoreError, StreamRecord};
use crate::stream::{StreamOptions, StreamSettings, FORBIDDEN_UPSTREAM_HEADERS};

use super::json::AppJson;
use super::AppState;

/// Extensions that name a direct (non-HLS) stream.
const DIRECT_EXTENSIONS: [&str; 16] = [
    "ts", "mts", "m2ts", "mp4", "m4v", "mkv", "webm", "avi", "mov", "flv", "mpg", "mpeg", "mp3",
    "aac", "m4a", "ogg",
];

#[utoipa::path(
    post, path = "/streams", tag = "streams",
    request_body = CreateStream,
    responses(
        (status = 201, description = "Stream registered", body = StreamCreated),
        (status = 200, description = "The URL was registered already: its settings are updated", body = StreamCreated),
        (status = 400, description = "The body is not JSON (`malformed_json`)", body = crate::model::ErrorBody),
        (status = 422, description = "A field is wrong: `invalid_body`, `invalid_url`, `unsupported_scheme`, `invalid_header`", body = crate::model::ErrorBody),
        (status = 503, description = "The change is in effect but not saved yet (`store_unavailable`); a retry is harmless", body = crate::model::ErrorBody),
        (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody),
    )
)]
pub async fn create_stream(
    State(state): State<AppState>,
    AppJson(req): AppJson<CreateStream>,
) -> Result<impl IntoResponse, ApiError> {
    let original_url = parse_upstream_url("url", &req.url)?;
    let failover_urls = req
        .failover_urls
        .iter()
        .map(|u| parse_upstream_url("failover_urls", u))
        .collect::<Result<Vec<_>, _>>()?;
    let headers = upstream_headers(&req)?;
    let options = StreamOptions {
        failover_resolver_url: req
            .failover_resolver_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
            .map(|u| parse_upstream_url("failover_resolver_url", u))
            .transpose()?,
        strict_live_ts: req.strict_live_ts.unwrap_or(false),
        use_sticky_session: req.use_sticky_session.unwrap_or(false),
    };
    let existing = state
        .registry
        .stream(&state.registry.stream_id_for(&original_url));
    let mut settings = StreamSettings {
        original_url,
        failover_urls,
        user_agent: req.user_agent.filter(|ua| !ua.is_empty()),
        headers,
        metadata: req.metadata,
        stream_type: StreamType::Hls,
        provider: req.provider.filter(|p| !p.trim().is_empty()),
        options,
    };
    settings.stream_type = match (req.stream_type, existing) {
        (Some(t), _) => t,
        // Posting the same URL again keeps what was learned the first time.
        (None, Some(s)) => s.settings().stream_type,
        (None, None) => detect_stream_type(&state, &settings).await,
    };
    let (entry, upsert) = state.registry.upsert(settings);
    if upsert == Upsert::Updated {
        // New URLs may answer differently: a file before may be a live channel now.
        state.live.forget_file(&entry.id);
    }
    save_stream(&state, &entry).await?;
    let settings = entry.settings();
    let playlist_url = format!("/hls/{}/playlist.m3u8", entry.id);
    let direct_url = format!("/stream/{}", entry.id);
    tracing::info!(stream_id = %entry.id, stream_type = settings.stream_type.as_str(), ?upsert, "stream registered");
    let body = StreamCreated {
        stream_id: entry.id.clone(),
        stream_type: settings.stream_type,
        stream_endpoint: match settings.stream_type {
            StreamType::Hls => playlist_url.clone(),
            StreamType::Direct => direct_url.clone(),
        },
        playlist_url,
        direct_url,
        original_url: settings.original_url.to_string(),
        current_url: entry.current_url().1.to_string(),
        failover_urls: settings.failover_urls.iter().map(Url::to_string).collect(),
        user_agent: settings.user_agent.clone(),
        created_at: entry.created_at,
        primary_url: settings.original_url.to_string(),
        message: match upsert {
            Upsert::Created => "Stream created".to_string(),
            Upsert::Updated => "Stream updated".to_string(),
        },
    };
    let status = match upsert {
        Upsert::Created => StatusCode::CREATED,
        Upsert::Updated => StatusCode::OK,
    };
    Ok((status, Json(body)))
}

/// Writes the stream's document (settings and position) and waits for the commit.
pub(super) async fn save_stream(state: &AppState, entry: &StreamEntry) -> Result<(), ApiError> {
    state
        .store
        .put_with(Kind::Stream, &entry.id, || {
            let record = StreamRecord::of(entry);
            entry.stored.set_generation(record.generation);
            Some(record)
        })
        .await
        .map_err(store_unavailable)
}

/// A write the store did not commit: 503. The change is in effect in this process and the
/// store keeps it for its next commit, so the answer says so and a retry is harmless.
pub(super) fn store_unavailable(e: StoreError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        format!("the change is in effect but could not be saved yet ({e}); it is saved when the store recovers"),
    )
}

/// An absolute http(s) URL with a host: the only kind of upstream the proxy will fetch.
fn parse_upstream_url(field: &str, raw: &str) -> Result<Url, ApiError> {
    crate::stream::upstream_url(field, raw).map_err(|e| ApiError::unprocessable(e.code, e.detail))
}

fn upstream_headers(req: &CreateStream) -> Result<HeaderMap, ApiError> {
    let mut map = HeaderMap::new();
    for (name, value) in &req.headers {
        let bad = |what: &str| {
            ApiError::unprocessable("invalid_header", format!("headers: {what}: {name}"))
        };
        let name_h = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| bad("not a valid header name"))?;
        if FORBIDDEN_UPSTREAM_HEADERS.contains(&name_h.as_str()) {
            return Err(bad("this header is managed by the proxy"));
        }
        let value_h = HeaderValue::from_str(value)
            .map_err(|_| bad("the value is not a valid header value"))?;
        map.insert(name_h, value_h);
    }
    if let Some(ua) = &req.user_agent {
        HeaderValue::from_str(ua).map_err(|_| {
            ApiError::unprocessable("invalid_header", "user_agent: not a valid header value")
        })?;
    }
    Ok(map)
}

/// The stream type from the URL's extension, else from a short probe of the origin
/// (content type, then a `#EXTM3U` sniff). An origin that cannot be probed now gets a guess
/// from the URL, since it may well be up by the time a player asks.
async fn detect_stream_type(state: &AppState, settings: &StreamSettings) -> StreamType {
    let url = &settings.original_url;
    match crate::upstream::extension_of(url).as_deref() {
        Some("m3u8") => return StreamType::Hls,
        Some(e) if DIRECT_EXTENSIONS.contains(&e) => return StreamType::Direct,
        _ => {}
    }
    match state.upstream.probe_is_playlist(url, settings).await {
        Some(true) => StreamType::Hls,
        Some(false) => StreamType::Direct,
        None if url.as_str().contains("m3u8") => StreamType::Hls,
        None => StreamType::Direct,
    }
}

#[utoipa::path(get, path = "/streams", tag = "streams",
    responses((status = 200, description = "Every stream", body = StreamList), (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
pub async fn list_streams(State(state): State<AppState>) -> Json<StreamList> {
    let view = state.presence.as_ref().map(|p| p.view());
    let streams: Vec<_> = state
        .registry
        .streams()
        .iter()
        .map(|s| {
            let mut info = state.registry.stream_info(s);
            if let Some(view) = &view {
                view.stream(s, &mut info);
            }
            info
        })
        .collect();
    Json(StreamList {
        total: streams.len(),
        streams,
    })
}

#[utoipa::path(get, path = "/streams/{id}", tag = "streams",
    params(("id" = String, Path, min_length = 1, description = "Stream id")),
    responses((status = 200, description = "The stream and its viewers", body = StreamDetail),
        (status = 404, description = "No such stream (`stream_not_found`)", body = crate::model::ErrorBody), (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
pub async fn get_stream(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<StreamDetail>, ApiError> {
    let stream = state
        .stream(&id)
        .await
        .ok_or_else(|| ApiError::stream_not_found(&id))?;
    let clients: Vec<ClientInfo> = state
        .registry
        .clients_of(&id)
        .iter()
        .map(|c| state.registry.client_info(c))
        .collect();
    let mut detail = StreamDetail {
        stream: state.registry.stream_info(&stream),
        client_count: clients.len(),
        clients,
    };
    if let Some(presence) = &state.presence {
        presence.view().stream_detail(&stream, &mut detail);
    }
    Ok(Json(detail))
}

#[utoipa::path(delete, path = "/streams/{id}", tag = "streams",
    params(("id" = String, Path, min_length = 1, description = "Stream id")),
    responses((status = 200, description = "Stream deleted; its viewers are disconnected", body = StreamDeleted),
        (status = 404, description = "No such stream (`stream_not_found`)", body = crate::model::ErrorBody), (status = 503, description = "The change is in effect but not saved yet (`store_unavailable`); a retry is harmless", body = crate::model::ErrorBody),
        (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
pub async fn delete_stream(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<StreamDeleted>, ApiError> {
    state
        .registry
        .remove_stream(&id, Removal::Deleted)
        .ok_or_else(|| ApiError::stream_not_found(&id))?;
    state.live.forget_file(&id);
    tracing::info!(stream_id = %id, "stream deleted");
    state
        .store
        .delete(Kind::Stream, &id)
        .await
        .map_err(store_unavailable)?;
    Ok(Json(StreamDeleted {
        message: format!("stream {id} deleted"),
        stream_id: id,
    }))
}

#[utoipa::path(post, path = "/streams/{id}/failover", tag = "streams",
    params(("id" = String, Path, min_length = 1, description = "Stream id")),
    responses((status = 200, description = "Switched to the next URL", body = FailoverDone),
        (status = 400, description = "The stream has no failover URLs (`no_failover_urls`)", body = crate::model::ErrorBody),
        (status = 404, description = "No such stream (`stream_not_found`)", body = crate::model::ErrorBody),
        (status = 503, description = "Switched, but not saved yet (`store_unavailable`); a retry switches again", body = crate::model::ErrorBody),
        (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
pub async fn failover(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<FailoverDone>, ApiError> {
    let stream = state
        .registry
        .stream(&id)
        .ok_or_else(|| ApiError::stream_not_found(&id))?;
    let (from, previous) = stream.current_url();
    let index = stream.switch_from(from, "manual").ok_or_else(|| {
        ApiError::bad_request(
            "no_failover_urls",
            "this stream has no failover URLs to switch to",
        )
    })?;
    let current = stream.settings().url_at(index).to_string();
    tracing::info!(stream_id = %id, failover_index = index, "manual failover");
    save_stream(&state, &stream).await?;
    Ok(Json(FailoverDone {
        stream_id: id,
        previous_url: previous.to_string(),
        current_url: current,
        failover_index: index,
    }))
}

/// Proxy totals, every stream and every client: one pass over each map, no per-stream
/// scan of the clients.
#[utoipa::path(get, path = "/stats", tag = "stats",
    responses((status = 200, description = "Proxy totals, every stream and every client", body = Stats), (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
pub async fn stats(State(state): State<AppState>) -> Json<Stats> {
    let r = &state.registry;
    let streams: Vec<_> = r.streams().iter().map(|s| r.stream_info(s)).collect();
    let clients: Vec<_> = r.clients().iter().map(|c| r.client_info(c)).collect();
    let t = &r.totals;
    let proxy = ProxyStats {
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at: r.clock.started_at(),
        uptime_seconds: r.clock.uptime_seconds(),
        total_streams: streams.len(),
        active_streams: streams.iter().filter(|s| s.is_active).count(),
        total_clients: clients.len(),
        active_clients: clients.iter().filter(|c| c.is_active).count(),
        active_connections: Counters::get(&t.active_connections),
        total_bytes_served: Counters::get(&t.bytes),
        total_segments_served: Counters::get(&t.segments),
        total_errors: Counters::get(&t.errors),
        total_failovers: Counters::get(&t.failovers),
        bytes_per_second: t.bytes_per_second(),
    };
    let providers = state.upstream.providers().infos().await;
    let mut stats = Stats {
        proxy,
        streams,
        clients,
        providers,
        instances: Vec::new(),
    };
    if let Some(presence) = &state.presence {
        presence.view().stats(&mut stats);
    }
    Json(stats)
}

#[utoipa::path(get, path = "/clients", tag = "stats",
    responses((status = 200, description = "Every viewer", body = ClientList), (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
pub async fn list_clients(State(state): State<AppState>) -> Json<ClientList> {
    let r = &state.registry;
    let mut clients: Vec<_> = r.clients().iter().map(|c| r.client_info(c)).collect();
    if let Some(presence) = &state.presence {
        clients = presence.view().all_clients(clients);
    }
    Json(ClientList {
        total: clients.len(),
        total_clients: clients.len(),
        clients,
    })
}

#[utoipa::path(get, path = "/clients/{id}", tag = "stats",
    params(("id" = String, Path, min_length = 1, description = "Client id")),
    responses((status = 200, description = "One viewer", body = ClientInfo),
        (status = 404, description = "No such client (`client_not_found`)", body = crate::model::ErrorBody), (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
pub async fn get_client(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ClientInfo>, ApiError> {
    let presence = state.presence.as_ref();
    match state.registry.client_by_id(&id) {
        Some(c) => {
            let mut info = state.registry.client_info(&c);
            info.instance = presence.map(|p| p.instance_id().to_string());
            Ok(Json(info))
        }
        None => presence
            .and_then(|p| p.view().client(&id))
            .map(Json)
            .ok_or_else(|| {
                ApiError::not_found("client_not_found", format!("client not found: {id}"))
            }),
    }
}

/// Cheap on purpose: counts and atomics only, no per-stream work beyond one pass over each
/// map for the active counts. Never asks for the token: `?api_token=` is ignored.
#[utoipa::path(get, path = "/health", tag = "stats", security(()),
    responses((status = 200, description = "The proxy is up; cheap counts", body = Health)))]
pub async fn health(State(state): State<AppState>) -> Json<Health> {
    let r = &state.registry;
    let (active_streams, active_clients) = r.active_counts();
    let mut health = Health {
        // A store that cannot write, or a fleet whose Redis does not answer: still 200, so a
        // load balancer does not pull every instance at once.
        status: if state.store.health().ok && state.fleet.as_ref().is_none_or(|f| f.is_reachable())
        {
            "healthy"
        } else {
            "degraded"
        }
        .to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at: r.clock.started_at(),
        uptime_seconds: r.clock.uptime_seconds(),
        streams: r.stream_count(),
        clients: r.client_count(),
        active_connections: Counters::get(&r.totals.active_connections),
        total_bytes_served: Counters::get(&r.totals.bytes),
        open_connections: state.connections.open(),
        max_connections: state.connections.max() as u64,
        stats: HealthStats {
            total_streams: r.stream_count(),
            active_streams,
            total_clients: r.client_count(),
            active_clients,
            total_bytes_served: Counters::get(&r.totals.bytes),
            total_segments_served: Counters::get(&r.totals.segments),
            uptime_seconds: r.clock.uptime_seconds(),
        },
        store: Some(state.store.health()),
        instances: Vec::new(),
    };
    if let Some(presence) = &state.presence {
        presence.view().health(&mut health);
    }
    Json(health)
}
