//! `PUT/GET/DELETE /providers/{name}`, `GET /providers`: the HTTP face of
//! [`crate::providers`]. Handlers validate and translate; the slots and their counting
//! are the providers module's.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::json::AppJson;
use super::manage::store_unavailable;
use super::AppState;
use crate::error::ApiError;
use crate::model::{ProviderInfo, ProviderList, ProviderSpec};
use crate::providers::{validate, validate_name, InvalidProvider};
use crate::store::Kind;

impl From<InvalidProvider> for ApiError {
    fn from(e: InvalidProvider) -> Self {
        ApiError::unprocessable("invalid_provider", e.to_string())
    }
}

/// `GET /providers`, `PUT/GET/DELETE /providers/{name}`.
pub fn providers_router() -> Router<AppState> {
    Router::new()
        .route("/providers", get(list_providers))
        .route(
            "/providers/{name}",
            get(show_provider).put(put_provider).delete(delete_provider),
        )
}

/// `DELETE /providers/{name}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct ProviderDeleted {
    name: String,
    deleted: bool,
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found("provider_not_found", format!("provider not found: {name}"))
}

#[utoipa::path(get, path = "/providers", tag = "providers",
    responses((status = 200, description = "Every provider with its slots in use", body = ProviderList),
        (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
pub(super) async fn list_providers(State(state): State<AppState>) -> Json<ProviderList> {
    let providers = state.upstream.providers().infos().await;
    Json(ProviderList {
        total: providers.len(),
        providers,
    })
}

#[utoipa::path(get, path = "/providers/{name}", tag = "providers",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "Provider name")),
    responses((status = 200, description = "The provider and its slots in use", body = ProviderInfo),
        (status = 404, description = "No such provider (`provider_not_found`)", body = crate::model::ErrorBody),
        (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
pub(super) async fn show_provider(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ProviderInfo>, ApiError> {
    let providers = state.upstream.providers();
    let provider = providers.get(&name).ok_or_else(|| not_found(&name))?;
    Ok(Json(providers.info(&provider).await))
}

/// Creates (201) or replaces (200) a provider. Lowering `max_connections` below the slots
/// held now ends none of them: new connections wait until enough have closed.
#[utoipa::path(put, path = "/providers/{name}", tag = "providers",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "Provider name")),
    request_body = ProviderSpec,
    responses((status = 201, description = "Provider defined", body = ProviderInfo),
        (status = 200, description = "Provider replaced", body = ProviderInfo),
        (status = 400, description = "The body is not JSON (`malformed_json`)", body = crate::model::ErrorBody),
        (status = 422, description = "A field is wrong: `invalid_body`, `invalid_provider`", body = crate::model::ErrorBody),
        (status = 503, description = "Defined, but not saved yet (`store_unavailable`)", body = crate::model::ErrorBody),
        (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
pub(super) async fn put_provider(
    State(state): State<AppState>,
    Path(name): Path<String>,
    AppJson(spec): AppJson<ProviderSpec>,
) -> Result<impl IntoResponse, ApiError> {
    let record = validate(&name, spec)?;
    let providers = state.upstream.providers();
    if let Some(other) = providers.all().into_iter().find(|p| {
        p.name() != name
            && p.record
                .spec
                .hosts
                .iter()
                .any(|h| record.spec.hosts.contains(h))
    }) {
        return Err(ApiError::unprocessable(
            "invalid_provider",
            format!(
                "a host of provider {name} already belongs to provider {}",
                other.name()
            ),
        ));
    }
    let created = providers.put(record.clone());
    tracing::info!(provider = %name, created, "provider defined");
    state
        .store
        .put(Kind::Provider, &name, &record)
        .await
        .map_err(store_unavailable)?;
    let provider = providers.get(&name).ok_or_else(|| not_found(&name))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(providers.info(&provider).await)))
}

#[utoipa::path(delete, path = "/providers/{name}", tag = "providers",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "Provider name")),
    responses((status = 200, description = "Provider removed; its streams are no longer limited", body = ProviderDeleted),
        (status = 404, description = "No such provider (`provider_not_found`)", body = crate::model::ErrorBody),
        (status = 503, description = "Removed, but not saved yet (`store_unavailable`)", body = crate::model::ErrorBody),
        (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
pub(super) async fn delete_provider(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ProviderDeleted>, ApiError> {
    validate_name(&name).map_err(|_| not_found(&name))?;
    if !state.upstream.providers().delete(&name) {
        return Err(not_found(&name));
    }
    tracing::info!(provider = %name, "provider deleted");
    state
        .store
        .delete(Kind::Provider, &name)
        .await
        .map_err(store_unavailable)?;
    Ok(Json(ProviderDeleted {
        name,
        deleted: true,
    }))
}
