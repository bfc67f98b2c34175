//! Who is asking: the viewer behind a playback request.
//!
//! The identity is `?client_id=` when the player (or the orchestrator that built its URL)
//! names itself, else derived from (ip, user agent, stream) so a player that sends nothing
//! special still counts once. The ip is the socket peer, or `X-Forwarded-For` /
//! `X-Real-IP` when the peer is a configured trusted proxy; headers from anyone else are
//! ignored, since a viewer could otherwise claim any address. Even behind a trusted proxy,
//! only the hops that trusted proxies appended are believed, never what the viewer sent.

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
    /// `?username=`, `?user=`, `?u=` or `X-Username` (m3u-editor adds the Xtream user).
    pub username: Option<String>,
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let trusted = &state.config.trusted_proxies;
        let ip = if trusted.contains(&peer) {
            forwarded_ip(&parts.headers, trusted).unwrap_or(peer)
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
        let username = ["username", "user", "u"]
            .iter()
            .find_map(|k| query_value(parts.uri.query(), k))
            .or_else(|| {
                parts
                    .headers
                    .get("x-username")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            })
            .map(|u| u.trim().chars().take(MAX_CLIENT_ID).collect::<String>())
            .filter(|u| !u.is_empty());
        Ok(Viewer {
            named,
            ip,
            user_agent,
            username,
        })
    }
}

/// The viewer's address as trusted proxies report it. Each proxy appends the address it
/// saw to `X-Forwarded-For`, so the list is walked from the right past the trusted proxies
/// themselves; the first other hop is the viewer. Entries left of it are whatever the viewer
/// sent and are never believed. An unreadable hop where the viewer should be gives `None`
/// (the peer is used). Without the header, `X-Real-IP`, which the proxy sets whole.
pub(crate) fn forwarded_ip(headers: &HeaderMap, trusted: &[IpAddr]) -> Option<IpAddr> {
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    if hops.is_empty() {
        return headers
            .get("x-real-ip")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_hop(v.trim()));
    }
    let mut viewer = None;
    for hop in hops.iter().rev() {
        let ip = parse_hop(hop)?;
        viewer = Some(ip);
        if !trusted.contains(&ip) {
            break;
        }
    }
    viewer
}

/// An address as proxies write it: `203.0.113.7`, `2001:db8::1`, or with a port
/// (`203.0.113.7:5123`, `[2001:db8::1]:5123`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
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

    fn xff(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn forwarded_addresses_believe_only_what_trusted_proxies_appended() {
        let lb: IpAddr = "10.0.0.1".parse().unwrap();
        let cdn: IpAddr = "10.0.0.2".parse().unwrap();
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // The viewer sent "198.51.100.1" itself; the balancer appended what it saw.
        assert_eq!(
            forwarded_ip(&xff("198.51.100.1, 203.0.113.7"), &[lb]),
            ip("203.0.113.7")
        );
        // A chain of trusted proxies is walked past.
        assert_eq!(
            forwarded_ip(&xff("203.0.113.7, 10.0.0.2"), &[lb, cdn]),
            ip("203.0.113.7")
        );
        assert_eq!(
            forwarded_ip(&xff("203.0.113.7, 10.0.0.2"), &[lb]),
            ip("10.0.0.2")
        );
        assert_eq!(
            forwarded_ip(&xff("[2001:db8::1]:443, 203.0.113.9:5123"), &[lb]),
            ip("203.0.113.9")
        );
        assert_eq!(forwarded_ip(&xff("unknown"), &[lb]), None);
        assert_eq!(forwarded_ip(&xff("10.0.0.2"), &[cdn]), ip("10.0.0.2"));
        let mut h = HeaderMap::new();
        h.insert("x-real-ip", HeaderValue::from_static("2001:db8::1"));
        assert_eq!(forwarded_ip(&h, &[lb]), ip("2001:db8::1"));
        // Two header lines read as one list, in order.
        let mut h = xff("198.51.100.1");
        h.append("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        assert_eq!(forwarded_ip(&h, &[lb]), ip("203.0.113.7"));
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
