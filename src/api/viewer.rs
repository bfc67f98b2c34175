//! Who is asking: the viewer behind a playback request.
//!
//! The identity is `?client_id=` when the player (or the orchestrator that built its URL)
//! names itself, else derived from (ip, user agent, stream) so a player that sends nothing
//! special still counts once. The ip is the socket peer, or `X-Forwarded-For` /
//! `X-Real-IP` when the peer is a configured trusted proxy; headers from anyone else are
//! ignored, since a viewer could otherwise claim any address.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};

use crate::error::ApiError;

use super::AppState;

/// The longest client id accepted from a query string.
const MAX_CLIENT_ID: usize = 128;

/// The facts of a playback request that identify its viewer.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// `?client_id=` when given (validated).
    pub named: Option<String>,
    pub ip: IpAddr,
    pub user_agent: String,
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let ip = if state.config.trusted_proxies.contains(&peer) {
            forwarded_ip(&parts.headers).unwrap_or(peer)
        } else {
            peer
        };
        let named = match query_value(parts.uri.query(), "client_id") {
            None => None,
            Some(id) if valid_client_id(&id) => Some(id),
            Some(_) => {
                return Err(ApiError::bad_request(
                    "invalid_client_id",
                    "client_id must be 1-128 characters of letters, digits and . _ - : @",
                ))
            }
        };
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        Ok(Viewer {
            named,
            ip,
            user_agent,
        })
    }
}

/// The first address of `X-Forwarded-For` (the original client), else `X-Real-IP`.
fn forwarded_ip(headers: &HeaderMap) -> Option<IpAddr> {
    let xff = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.trim().parse().ok());
    xff.or_else(|| {
        headers
            .get("x-real-ip")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
    })
}

/// The decoded value of one query parameter.
pub fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

fn valid_client_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_CLIENT_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:@".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn forwarded_addresses_take_the_first_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.7, 10.0.0.1"),
        );
        assert_eq!(forwarded_ip(&h), Some("203.0.113.7".parse().unwrap()));
        h.remove("x-forwarded-for");
        h.insert("x-real-ip", HeaderValue::from_static("2001:db8::1"));
        assert_eq!(forwarded_ip(&h), Some("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn client_ids_are_validated() {
        assert!(valid_client_id("tv-livingroom_01"));
        assert!(valid_client_id("user@example.org"));
        assert!(!valid_client_id(""));
        assert!(!valid_client_id("a/b"));
        assert!(!valid_client_id(&"x".repeat(129)));
        assert_eq!(
            query_value(Some("a=1&client_id=tv%201"), "client_id").as_deref(),
            Some("tv 1")
        );
    }
}
