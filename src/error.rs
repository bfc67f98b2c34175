//! Errors at each boundary and how they reach a caller.
//!
//! [`UpstreamError`] says what went wrong with an origin and whether another attempt (or
//! another URL) can help; [`ApiError`] is the one error type of the HTTP layer and renders as
//! `{"detail": "...", "code": "..."}` with the right status. A caller's mistake is never a
//! 500, and is not logged as an error; upstream failures are 502/504.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::model::ErrorBody;

/// What went wrong talking to an origin. Each variant is one condition, and says through
/// [`UpstreamError::remedy`] whether another try, or another URL, can help.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to upstream: {0}")]
    Connect(String),
    #[error("upstream did not answer within {0:?}")]
    FirstByteTimeout(std::time::Duration),
    #[error("upstream stopped sending data")]
    Stalled,
    #[error("upstream answered {0}")]
    Status(u16),
    #[error("upstream answered {0} instead of a playlist")]
    NotPlaylist(&'static str),
    /// A media request (segment, key, direct stream) was answered with something no player
    /// can play, such as an HTML page.
    #[error("upstream answered {0} instead of media")]
    NotMedia(&'static str),
    #[error("upstream playlist is larger than {0} bytes")]
    TooLarge(usize),
    /// A request or body read failed after connecting (a reset, a broken transfer).
    #[error("upstream request failed: {0}")]
    Transport(String),
    /// A body ended before the length its head announced.
    #[error("upstream request failed: upstream body ended early")]
    EndedEarly,
    /// A live stream (no length) ended cleanly; live streams do not end.
    #[error("upstream request failed: live stream ended")]
    LiveEnded,
    /// A body with neither ranges nor a live shape was cut: there is nothing to continue.
    #[error("upstream request failed: upstream cut a body that cannot be resumed")]
    CannotResume,
    /// The answer to a resume does not line up with the bytes the player has (another
    /// length, a changed file).
    #[error("upstream request failed: upstream cannot resume the file at the byte reached")]
    ResumeMismatch,
    /// Connections to this URL keep ending right after they open.
    #[error("upstream request failed: upstream keeps failing right after connecting")]
    KeepsFailing,
    /// A URL answered a reconnect with an error status: mid-stream, that means "not here".
    #[error("upstream request failed: upstream answered {0} when reconnecting")]
    ReconnectStatus(u16),
    /// A playlist listed a URL that cannot be fetched.
    #[error("upstream request failed: upstream listed an invalid URL: {0}")]
    InvalidListedUrl(String),
    /// Every slot of the provider of this URL is taken: no request was made. `elsewhere`
    /// says whether another URL of the stream belongs to another provider (or none).
    #[error("provider {provider} is full: all {max_connections} connections are in use")]
    ProviderFull {
        provider: String,
        max_connections: u32,
        elsewhere: bool,
    },
    /// The HTTP client could not be built (TLS setup): no request was made.
    #[error("cannot build the upstream HTTP client: {0}")]
    Client(String),
}

/// What another attempt can do about an [`UpstreamError`], as failover reads it (after
/// pingora's `RetryType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remedy {
    /// A quick failure: the same URL deserves another try, then the next URL.
    RetrySameUrl,
    /// Another try at the same URL would only repeat a long wait or the same answer;
    /// another URL may help.
    TryOtherUrl,
    /// Nothing will: the origin's considered answer about this resource, or a failure of
    /// ours.
    GiveUp,
}

impl UpstreamError {
    /// Whether another try at the same URL, or another URL, can help.
    pub fn remedy(&self) -> Remedy {
        use UpstreamError::*;
        match self {
            Status(s) if *s >= 500 || *s == 408 || *s == 429 => Remedy::RetrySameUrl,
            Status(_) | TooLarge(_) | CannotResume | Client(_) => Remedy::GiveUp,
            // Never asked again at once: only another provider's URL can help.
            ProviderFull { elsewhere, .. } if *elsewhere => Remedy::TryOtherUrl,
            ProviderFull { .. } => Remedy::GiveUp,
            // Waiting for the same silent origin again only doubles the gap.
            FirstByteTimeout(_) | Stalled => Remedy::TryOtherUrl,
            Connect(_) | NotPlaylist(_) | NotMedia(_) | Transport(_) | EndedEarly | LiveEnded
            | ResumeMismatch | KeepsFailing | ReconnectStatus(_) | InvalidListedUrl(_) => {
                Remedy::RetrySameUrl
            }
        }
    }

    /// Whether trying again (or another URL) may succeed. A 4xx other than 408/429 is the
    /// origin's considered answer about this resource; most other failures are faults.
    pub fn is_retryable(&self) -> bool {
        self.remedy() != Remedy::GiveUp
    }

    /// Whether the same URL deserves another try: yes for failures that cost little to
    /// retry, no for timeouts, whose retry costs another full timeout.
    pub fn retries_on_same_url(&self) -> bool {
        self.remedy() == Remedy::RetrySameUrl
    }

    /// Classifies a reqwest error from `send()` or from reading a body.
    pub fn from_reqwest(e: &reqwest::Error) -> Self {
        if e.is_connect() {
            UpstreamError::Connect(root_cause(e))
        } else if e.is_timeout() {
            UpstreamError::Stalled
        } else {
            UpstreamError::Transport(root_cause(e))
        }
    }

    /// Classifies an error of the direct streams' client (`upstream::feed`) from sending a
    /// request, as [`UpstreamError::from_reqwest`] does for reqwest's.
    pub fn from_feed_client(e: &hyper_util::client::legacy::Error) -> Self {
        if e.is_connect() {
            UpstreamError::Connect(root_cause(e))
        } else {
            UpstreamError::Transport(root_cause(e))
        }
    }
}

/// The innermost message of an error chain: "connection refused" rather than reqwest's
/// "error sending request for url (...)", which would also leak the upstream URL.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Every `code` the API answers with, and its status: the one list the README's error table
/// is tested against (`tests/docs.rs`), and that every error answer is checked against in
/// debug builds. Origin answers relayed on playback routes are not the API's and not here.
pub const ERROR_CODES: &[(u16, &str)] = &[
    (307, "direct_stream"),
    (400, "malformed_json"),
    (400, "invalid_client_id"),
    (400, "no_failover_urls"),
    (400, "invalid_request"),
    (400, "missing_webhook_url"),
    (401, "missing_token"),
    (403, "invalid_token"),
    (403, "invalid_reference"),
    (404, "not_found"),
    (404, "stream_not_found"),
    (404, "client_not_found"),
    (404, "webhook_not_found"),
    (404, "upstream_not_found"),
    (404, "provider_not_found"),
    (404, "playlist_not_found"),
    (404, "guide_not_available"),
    (405, "method_not_allowed"),
    (408, "request_timeout"),
    (413, "payload_too_large"),
    (414, "uri_too_long"),
    (422, "invalid_body"),
    (422, "invalid_url"),
    (422, "unsupported_scheme"),
    (422, "invalid_header"),
    (422, "unknown_event_type"),
    (422, "invalid_setting"),
    (422, "too_many_webhooks"),
    (422, "missing_parameter"),
    (422, "invalid_parameter"),
    (422, "invalid_provider"),
    (422, "playlist_not_m3u"),
    (422, "playlist_too_large"),
    (431, "header_too_large"),
    (501, "transcoding_unsupported"),
    (502, "upstream_unreachable"),
    (502, "upstream_status"),
    (502, "upstream_not_playlist"),
    (502, "upstream_not_media"),
    (502, "upstream_too_large"),
    (502, "upstream_error"),
    (502, "playlist_fetch_failed"),
    (503, "provider_full"),
    (503, "too_many_connections"),
    (503, "too_many_connections_per_ip"),
    (503, "store_unavailable"),
    (504, "upstream_timeout"),
];

/// An error answer of the HTTP API.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    /// Where to go instead, sent as `Location` (a redirect that explains itself).
    pub location: Option<String>,
    /// With `provider_full`: the provider and its limit, in the body, and `Retry-After`.
    pub provider: Option<(String, u32)>,
}

/// The `Retry-After` of a `provider_full` answer, in seconds.
pub const PROVIDER_FULL_RETRY_AFTER: u32 = 5;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            location: None,
            provider: None,
        }
    }

    /// A 307 to `location` (relative to the request), with a JSON body saying why.
    pub fn redirect(code: &'static str, location: String, detail: impl Into<String>) -> Self {
        Self {
            location: Some(location),
            ..Self::new(StatusCode::TEMPORARY_REDIRECT, code, detail)
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, detail)
    }

    /// An answer of the HTTP layer itself (no route, wrong method, a body or path the
    /// extractors refused), with the code for its status.
    pub fn http(status: StatusCode, detail: impl Into<String>) -> Self {
        let code = match status {
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            _ => return Self::bad_request("invalid_request", detail),
        };
        Self::new(status, code, detail)
    }

    pub fn stream_not_found(id: &str) -> Self {
        Self::not_found("stream_not_found", format!("stream not found: {id}"))
    }
}

impl From<UpstreamError> for ApiError {
    fn from(e: UpstreamError) -> Self {
        let (status, code) = match &e {
            UpstreamError::FirstByteTimeout(_) | UpstreamError::Stalled => {
                (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
            }
            UpstreamError::Connect(_) => (StatusCode::BAD_GATEWAY, "upstream_unreachable"),
            // The origin says the playlist is gone: a player should hear the same.
            UpstreamError::Status(404 | 410) => (StatusCode::NOT_FOUND, "upstream_not_found"),
            UpstreamError::Status(_) => (StatusCode::BAD_GATEWAY, "upstream_status"),
            UpstreamError::NotPlaylist(_) => (StatusCode::BAD_GATEWAY, "upstream_not_playlist"),
            UpstreamError::NotMedia(_) => (StatusCode::BAD_GATEWAY, "upstream_not_media"),
            UpstreamError::TooLarge(_) => (StatusCode::BAD_GATEWAY, "upstream_too_large"),
            UpstreamError::Transport(_)
            | UpstreamError::EndedEarly
            | UpstreamError::LiveEnded
            | UpstreamError::CannotResume
            | UpstreamError::ResumeMismatch
            | UpstreamError::KeepsFailing
            | UpstreamError::ReconnectStatus(_)
            | UpstreamError::InvalidListedUrl(_)
            | UpstreamError::Client(_) => (StatusCode::BAD_GATEWAY, "upstream_error"),
            UpstreamError::ProviderFull { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "provider_full")
            }
        };
        let provider = match &e {
            UpstreamError::ProviderFull {
                provider,
                max_connections,
                ..
            } => Some((provider.clone(), *max_connections)),
            _ => None,
        };
        ApiError {
            provider,
            ..ApiError::new(status, code, e.to_string())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        debug_assert!(
            ERROR_CODES.contains(&(self.status.as_u16(), self.code)),
            "unlisted error code {} {}",
            self.status,
            self.code
        );
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, code = self.code, detail = %self.detail, "request failed");
        } else {
            tracing::debug!(status = %self.status, code = self.code, detail = %self.detail, "request refused");
        }
        let (provider, max_connections) = self.provider.clone().unzip();
        let mut res = (
            self.status,
            Json(ErrorBody {
                detail: self.detail,
                code: self.code.to_string(),
                provider,
                max_connections,
            }),
        )
            .into_response();
        if self.provider.is_some() {
            res.headers_mut()
                .insert("retry-after", HeaderValue::from(PROVIDER_FULL_RETRY_AFTER));
        }
        if let Some(location) = self.location.and_then(|l| HeaderValue::try_from(l).ok()) {
            res.headers_mut().insert("location", location);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timeouts_move_on_and_quick_failures_retry() {
        assert!(!UpstreamError::Stalled.retries_on_same_url());
        assert!(!UpstreamError::FirstByteTimeout(Duration::from_secs(1)).retries_on_same_url());
        assert!(UpstreamError::Status(503).retries_on_same_url());
        assert!(UpstreamError::Connect("refused".into()).retries_on_same_url());
        // A 404 is the origin's answer: neither the same URL nor another is asked again.
        assert_eq!(UpstreamError::Status(404).remedy(), Remedy::GiveUp);
        assert!(!UpstreamError::Status(404).is_retryable());
        assert_eq!(UpstreamError::Stalled.remedy(), Remedy::TryOtherUrl);
    }
}
