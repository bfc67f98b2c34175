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
#[derive(Debug, Serialize)]
struct ProviderDeleted {
    name: String,
    deleted: bool,
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found("provider_not_found", format!("provider not found: {name}"))
}

async fn list_providers(State(state): State<AppState>) -> Json<ProviderList> {
    let providers = state.upstream.providers().infos().await;
    Json(ProviderList {
        total: providers.len(),
        providers,
    })
}

async fn show_provider(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ProviderInfo>, ApiError> {
    let providers = state.upstream.providers();
    let provider = providers.get(&name).ok_or_else(|| not_found(&name))?;
    Ok(Json(providers.info(&provider).await))
}

/// Creates (201) or replaces (200) a provider. Lowering `max_connections` below the slots
/// held now ends none of them: new connections wait until enough have closed.
async fn put_provider(
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

async fn delete_provider(
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
