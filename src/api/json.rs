//! [`AppJson`], the one JSON body extractor of the API (after axum's `AppJson` example):
//! every way a body can be refused becomes an [`ApiError`], so each route answers the same
//! codes for the same mistakes.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON request body, read whatever its content type (curl users forget the header).
/// Refused as `malformed_json` (400) when it is not JSON, `invalid_body` (422) when it is
/// JSON of the wrong shape, and `invalid_body` with the body's own status when it cannot be
/// read (too large, cut).
#[derive(Debug, Clone, Copy, Default)]
pub struct AppJson<T>(pub T);

impl<T, S> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|r| ApiError::new(r.status(), "invalid_body", r.body_text()))?;
        parse(&body).map(AppJson)
    }
}

/// Decodes a JSON body, telling syntax errors (400) from well-formed JSON of the wrong
/// shape (422).
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::unprocessable("invalid_body", format!("invalid request body: {e}"))
        }
        _ => ApiError::bad_request("malformed_json", format!("malformed JSON: {e}")),
    })
}
