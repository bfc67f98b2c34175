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

#[derive(Serialize, utoipa::ToSchema)]
struct WebhookList {
    webhooks: Vec<Webhook>,
    total: usize,
}

/// The body as it arrives: event names stay strings so an unknown one gets its own message.
#[derive(Deserialize, utoipa::ToSchema)]
struct RawSpec {
    #[schema(
        pattern = "^https?://[a-z]([a-z0-9]|-[a-z0-9])*(\\.[a-z]([a-z0-9]|-[a-z0-9])*)*(:[1-9][0-9]{0,3})?(/[A-Za-z0-9._~/-]*)?$"
    )]
    url: String,
    #[serde(default, alias = "event_types")]
    #[schema(value_type = Vec<EventType>)]
    events: Vec<String>,
    #[serde(default)]
    stream_id: Option<String>,
    #[serde(default, alias = "timeout", deserialize_with = "whole_number")]
    #[schema(minimum = 1, maximum = 120)]
    timeout_secs: Option<u64>,
    #[serde(default, alias = "retry_attempts", deserialize_with = "whole_number")]
    #[schema(maximum = 10)]
    max_retries: Option<u32>,
    #[serde(default)]
    #[schema(schema_with = crate::model::schemas::header_map)]
    headers: std::collections::BTreeMap<String, String>,
}

/// A whole number, also when written `5.0` (JSON has one number type, and JSON Schema
/// counts `5.0` as an integer).
fn whole_number<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    let whole = n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
            .map(|f| f as u64)
    });
    whole
        .and_then(|w| T::try_from(w).ok())
        .map(Some)
        .ok_or_else(|| {
            serde::de::Error::custom(format!("expected a whole number in range, not {n}"))
        })
}

/// `DELETE /webhooks` body, as m3u-editor sends it (`?webhook_url=` works too).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // a schema only: the handler reads the body leniently
struct RemoveByUrl {
    webhook_url: String,
}

#[utoipa::path(post, path = "/webhooks", tag = "webhooks", request_body = RawSpec,
    responses((status = 201, description = "Registered (or updated, for a URL posted again)", body = Webhook),
        (status = 400, description = "The body is not JSON (`malformed_json`)", body = crate::model::ErrorBody),
        (status = 422, description = "A field is wrong: `invalid_body`, `invalid_url`, `unknown_event_type`, `invalid_setting`, `too_many_webhooks`, ...", body = crate::model::ErrorBody),
        (status = 503, description = "The change is in effect but not saved yet (`store_unavailable`); a retry is harmless", body = crate::model::ErrorBody),
        (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
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
        // An empty field (as forms send it) restricts nothing, as on `GET /events`.
        stream_id: raw.stream_id.filter(|id| !id.is_empty()),
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

#[utoipa::path(get, path = "/webhooks", tag = "webhooks",
    responses((status = 200, description = "Every webhook and its delivery record", body = WebhookList), (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
async fn list_webhooks(State(webhooks): State<Arc<Webhooks>>) -> Json<WebhookList> {
    let webhooks = webhooks.list();
    Json(WebhookList {
        total: webhooks.len(),
        webhooks,
    })
}

#[utoipa::path(get, path = "/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, min_length = 1, description = "Webhook id")),
    responses((status = 200, description = "One webhook", body = Webhook),
        (status = 404, description = "No such webhook (`webhook_not_found`)", body = crate::model::ErrorBody), (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
async fn show_webhook(State(webhooks): State<Arc<Webhooks>>, Path(id): Path<String>) -> Response {
    match webhooks.get(&id) {
        Some(webhook) => Json(webhook).into_response(),
        None => unknown_webhook(&id),
    }
}

#[utoipa::path(delete, path = "/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, min_length = 1, description = "Webhook id")),
    responses((status = 200, description = "Removed", body = serde_json::Value),
        (status = 404, description = "No such webhook (`webhook_not_found`)", body = crate::model::ErrorBody), (status = 503, description = "The change is in effect but not saved yet (`store_unavailable`); a retry is harmless", body = crate::model::ErrorBody),
        (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
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
#[utoipa::path(delete, path = "/webhooks", tag = "webhooks",
    params(("webhook_url" = Option<String>, Query, description = "The webhook's URL (or give it as `{\"webhook_url\": ...}` in a JSON body)")),
    request_body(content = RemoveByUrl, description = "The webhook's URL (m3u-editor sends it so); `?webhook_url=` may stand in for the body"),
    responses((status = 200, description = "Removed", body = serde_json::Value),
        (status = 400, description = "No webhook_url given (`missing_webhook_url`)", body = crate::model::ErrorBody),
        (status = 404, description = "No webhook with that URL (`webhook_not_found`)", body = crate::model::ErrorBody), (status = 503, description = "The change is in effect but not saved yet (`store_unavailable`); a retry is harmless", body = crate::model::ErrorBody),
        (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
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
