//! The HTTP surface: [`app`] builds the router from an [`AppState`].
//!
//! Management routes speak JSON and sit behind the API token when one is set; playback
//! routes (`/hls/...`, `/stream/...`) never need a token, carry CORS headers for browser
//! players, and answer HEAD. Handlers here translate HTTP to calls on the registry and the
//! upstream client; they hold no lock across an `.await`.

mod channels;
mod editor;
mod events;
mod json;
mod manage;
mod metrics;
pub mod openapi;
mod playback;
mod providers;
mod ui;
mod viewer;
mod webhooks;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::extract::{FromRef, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::config::Config;
use crate::error::ApiError;
use crate::events::{EventBus, Webhooks};
use crate::proxy_url::Signer;
use crate::registry::Registry;
use crate::upstream::Upstream;

pub use metrics::{RequestCounts, MAX_STREAM_SERIES};
pub(crate) use viewer::forwarded_ip;
pub use viewer::Viewer;

/// Everything a handler needs, cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub upstream: Upstream,
    pub signer: Arc<Signer>,
    pub webhooks: Arc<Webhooks>,
    pub requests: Arc<RequestCounts>,
    pub cache: Arc<crate::cache::Cache>,
    /// Live TS sharing: settings, counters and each stream's slot.
    pub live: Arc<crate::live::Live>,
    /// Player connections: open, refused, timed out, and the limits in effect.
    pub connections: Arc<crate::connections::Connections>,
    /// Where streams, webhooks and counters are kept.
    pub store: Arc<crate::store::Store>,
    /// Channel lists and the streams they registered.
    pub channels: Arc<crate::channels::Channels>,
    /// The fleet this instance belongs to (`--store redis`); `None` for a lone instance.
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
    /// `host:port` others reach this instance at: `ADVERTISE_ADDRESS`, else the bound
    /// listen address, set when the listener is handed to the server.
    pub address: Arc<std::sync::OnceLock<String>>,
    /// In a fleet: this instance's heartbeat and the fleet view the statistics routes
    /// report (read from a snapshot, never from Redis on a request).
    pub presence: Option<Arc<crate::fleet::presence::Presence>>,
    /// In a fleet: the provider slots shared through Redis (their renewal runs in the
    /// server).
    pub fleet_slots: Option<crate::fleet::slots::RedisSlots>,
    /// What follows the fleet's changes (`--store redis`), also asked on a miss.
    pub sync: Option<Arc<crate::fleet::sync::Sync>>,
}

impl AppState {
    /// The stream with this id: known here, or (in a fleet) just written by another
    /// instance and not yet announced here, looked up in Redis for a moment.
    pub async fn stream(&self, id: &str) -> Option<Arc<crate::registry::StreamEntry>> {
        if let Some(stream) = self.registry.stream(id) {
            return Some(stream);
        }
        let sync = self.sync.as_ref()?;
        if sync.find_stream(id).await {
            self.registry.stream(id)
        } else {
            None
        }
    }
}

impl FromRef<AppState> for Arc<crate::store::Store> {
    fn from_ref(state: &AppState) -> Arc<crate::store::Store> {
        state.store.clone()
    }
}

impl FromRef<AppState> for EventBus {
    fn from_ref(state: &AppState) -> EventBus {
        state.registry.events.clone()
    }
}

impl FromRef<AppState> for Arc<Webhooks> {
    fn from_ref(state: &AppState) -> Arc<Webhooks> {
        state.webhooks.clone()
    }
}

/// The whole application: management and playback routes, answering at the root and, when
/// `ROOT_PATH` is set, under that prefix too.
pub fn app(state: AppState) -> Router {
    let root = state.config.root_path.clone();
    let routes = routes(state);
    if root.is_empty() {
        return routes;
    }
    // The prefix is taken off before routing, so every route (and its metrics label) is the
    // same with or without it; a reverse proxy may strip it or pass it on.
    Router::new()
        .fallback_service(routes)
        .layer(middleware::from_fn(move |req, next| {
            strip_root_path(root.clone(), req, next)
        }))
}

/// Takes `root` off the front of the request path when it is there (`/m3u-proxy/health`
/// and `/m3u-proxy` become `/health` and `/`).
async fn strip_root_path(root: String, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let rest = match path.strip_prefix(root.as_str()) {
        Some("") => Some("/".to_string()),
        Some(rest) if rest.starts_with('/') => Some(rest.to_string()),
        _ => None,
    };
    if let Some(rest) = rest {
        let mut parts = req.uri().clone().into_parts();
        let query = req
            .uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        if let Ok(pq) = format!("{rest}{query}").parse() {
            parts.path_and_query = Some(pq);
            if let Ok(uri) = axum::http::Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
    next.run(req).await
}

fn routes(state: AppState) -> Router {
    let management = Router::new()
        .route(
            "/streams",
            post(manage::create_stream).get(manage::list_streams),
        )
        .route(
            "/streams/{id}",
            get(manage::get_stream).delete(manage::delete_stream),
        )
        .route("/streams/{id}/failover", post(manage::failover))
        .route("/stats", get(manage::stats))
        .route("/clients", get(manage::list_clients))
        .route("/clients/{id}", get(manage::get_client))
        .route("/metrics", get(metrics::render))
        .merge(events::sse_router())
        .merge(webhooks::webhooks_router())
        .merge(providers::providers_router())
        .merge(editor::editor_router())
        .merge(channels::channels_router())
        // Before the layers, so a wrong method meets them like any request.
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));

    let playback = Router::new()
        .route("/hls/{id}/playlist.m3u8", get(playback::master_playlist))
        .route("/hls/{id}/{token}/{file}", get(playback::signed_reference))
        .route("/stream/{id}", get(playback::direct))
        .merge(channels::channels_playback_router())
        // Before CORS, which answers a browser's OPTIONS preflight itself.
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(cors));

    Router::new()
        .route("/health", get(manage::health))
        .merge(ui::ui_router())
        .merge(openapi::openapi_router())
        .merge(management)
        .merge(playback)
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::count_requests,
        ))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such route")
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::http(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("this route does not answer {method}; see the Allow header"),
    )
}

/// Marks a response relayed from an origin: its status and body are the origin's and pass
/// as they were sent, even when they are an error.
#[derive(Debug, Clone, Copy)]
pub struct Relayed;

/// Every error the API itself produces is JSON: the plain-text rejections of axum's
/// extractors (an unreadable path, a body too large) become `{"detail", "code"}` with their
/// status and headers kept. Origin answers relayed on playback routes ([`Relayed`]) pass.
async fn json_errors(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !res.status().is_client_error() || is_json || res.extensions().get::<Relayed>().is_some() {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let detail = match text.trim() {
        "" => parts
            .status
            .canonical_reason()
            .unwrap_or("refused")
            .to_owned(),
        text => text.to_owned(),
    };
    let mut out = ApiError::http(parts.status, detail).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name, value.clone());
        }
    }
    out
}

/// Refuses management calls without the configured token. The token may come as
/// `X-API-Token`, `Authorization: Bearer`, or `?api_token=` (for tools that cannot set
/// headers). Compared in constant time.
async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(expected) = state.config.api_token.as_deref() else {
        return next.run(req).await;
    };
    let headers = req.headers();
    let given = headers
        .get("x-api-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(|t| t.trim().to_string())
        })
        .or_else(|| viewer::query_value(req.uri().query(), "api_token"));
    match given {
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "this route needs the API token (X-API-Token, Authorization: Bearer, or ?api_token=)",
        )
        .into_response(),
        Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => next.run(req).await,
        Some(_) => ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_token",
            "the API token is wrong",
        )
        .into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// CORS for browser players (hls.js on another origin): answers preflights (a `Range`
/// header triggers one) and exposes the headers a player reads.
async fn cors(req: Request, next: Next) -> Response {
    let mut res = if req.method() == Method::OPTIONS {
        let mut res = StatusCode::NO_CONTENT.into_response();
        let h = res.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, HEAD, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            req.headers()
                .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                .cloned()
                .unwrap_or(HeaderValue::from_static("Range, If-Range, Content-Type")),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("86400"),
        );
        res
    } else {
        let mut res = next.run(req).await;
        res.headers_mut().insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Content-Length, Content-Range, Accept-Ranges, Content-Type"),
        );
        res
    };
    res.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    res
}
