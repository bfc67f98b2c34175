//! `POST/GET /webhooks`, `GET/DELETE /webhooks/{id}`: the HTTP face of the webhook
//! registry in [`crate::events`]. Handlers validate and translate; registration, delivery
//! and their counters are the registry's.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRef, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::json::AppJson;
use crate::error::ApiError;
use crate::events::{EventType, Webhook, WebhookError, WebhookSpec, Webhooks};
use crate::store::{Kind, Store};

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        ApiError::unprocessable(e.code(), e.to_string())
    }
}

/// `POST/GET /webhooks`, `GET/DELETE /webhooks/{id}`.
pub fn webhooks_router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Webhooks>: FromRef<S>,
    Arc<Store>: FromRef<S>,
{
    Router::new()
        .route(
            "/webhooks",
            get(list_webhooks)
                .post(register_webhook)
                .delete(remove_webhook_by_url),
        )
        .route("/webhooks/{id}", get(show_webhook).delete(remove_webhook))
        .layer(DefaultBodyLimit::max(64 * 1024))
}

#[derive(Serialize)]
struct WebhookList {
    webhooks: Vec<Webhook>,
    total: usize,
}

/// The body as it arrives: event names stay strings so an unknown one gets its own message.
#[derive(Deserialize)]
struct RawSpec {
    url: String,
    #[serde(default, alias = "event_types")]
    events: Vec<String>,
    #[serde(default)]
    stream_id: Option<String>,
    #[serde(default, alias = "timeout")]
    timeout_secs: Option<u64>,
    #[serde(default, alias = "retry_attempts")]
    max_retries: Option<u32>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
}

async fn register_webhook(
    State(webhooks): State<Arc<Webhooks>>,
    State(store): State<Arc<Store>>,
    AppJson(raw): AppJson<RawSpec>,
) -> Result<Response, ApiError> {
    let events = raw
        .events
        .iter()
        .map(|name| name.parse())
        .collect::<Result<Vec<EventType>, _>>()
        .map_err(WebhookError::from)?;
    let spec = WebhookSpec {
        url: raw.url,
        events,
        stream_id: raw.stream_id,
        timeout_secs: raw.timeout_secs,
        max_retries: raw.max_retries,
        headers: raw.headers,
    };
    // 201 either way: a URL posted again is updated, not doubled.
    let (webhook, _) = webhooks.register_or_update(spec)?;
    store
        .put_with(Kind::Webhook, &webhook.id, || webhooks.record(&webhook.id))
        .await
        .map_err(super::manage::store_unavailable)?;
    Ok((StatusCode::CREATED, Json(webhook)).into_response())
}

async fn list_webhooks(State(webhooks): State<Arc<Webhooks>>) -> Json<WebhookList> {
    let webhooks = webhooks.list();
    Json(WebhookList {
        total: webhooks.len(),
        webhooks,
    })
}

async fn show_webhook(State(webhooks): State<Arc<Webhooks>>, Path(id): Path<String>) -> Response {
    match webhooks.get(&id) {
        Some(webhook) => Json(webhook).into_response(),
        None => unknown_webhook(&id),
    }
}

async fn remove_webhook(
    State(webhooks): State<Arc<Webhooks>>,
    State(store): State<Arc<Store>>,
    Path(id): Path<String>,
) -> Response {
    if !webhooks.remove(&id) {
        return unknown_webhook(&id);
    }
    if let Err(e) = store.delete(Kind::Webhook, &id).await {
        return super::manage::store_unavailable(e).into_response();
    }
    Json(serde_json::json!({ "id": id, "deleted": true })).into_response()
}

/// `DELETE /webhooks?webhook_url=...`, or with `{"webhook_url": ...}` as the JSON body
/// (m3u-editor sends the body).
async fn remove_webhook_by_url(
    State(webhooks): State<Arc<Webhooks>>,
    State(store): State<Arc<Store>>,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    let url = super::viewer::query_value(uri.query(), "webhook_url").or_else(|| {
        serde_json::from_slice::<serde_json::Value>(&body)
            .ok()?
            .get("webhook_url")?
            .as_str()
            .map(str::to_string)
    });
    let Some(url) = url else {
        return ApiError::bad_request(
            "missing_webhook_url",
            "give webhook_url in the query or the JSON body",
        )
        .into_response();
    };
    let removed = webhooks.remove_url_ids(&url);
    if let Err(e) = store.delete_all(Kind::Webhook, &removed).await {
        return super::manage::store_unavailable(e).into_response();
    }
    if !removed.is_empty() {
        Json(serde_json::json!({"message": format!("webhook {url} removed"), "deleted": true}))
            .into_response()
    } else {
        ApiError::not_found("webhook_not_found", format!("no webhook with url {url:?}"))
            .into_response()
    }
}

fn unknown_webhook(id: &str) -> Response {
    ApiError::not_found("webhook_not_found", format!("no webhook with id {id:?}")).into_response()
}
