//! Segments, keys and init sections behind a playlist's references: fetched with the
//! policy's same-URL retries, with the "404 at the live edge" rule, and asked of the
//! current URL's mirror when the URL they were listed under has failed; and the headers of
//! an origin's media answer that reach the player.
//!
//! This module decides what to ask and how often; it does not count or answer players:
//! every failure met on the way is handed back for the caller to count.

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use url::Url;

use super::failover::Faults;
use super::{check_media_status, extension_of, Fetch, Upstream};
use crate::error::UpstreamError;
use crate::playlist::UriKind;
use crate::registry::StreamEntry;

/// The content type of an HLS playlist.
pub const PLAYLIST_CONTENT_TYPE: &str = "application/vnd.apple.mpegurl";

/// Response headers of the origin relayed to the player with media.
const RELAYED_RESPONSE_HEADERS: [header::HeaderName; 6] = [
    header::CONTENT_LENGTH,
    header::CONTENT_RANGE,
    header::ACCEPT_RANGES,
    header::ETAG,
    header::LAST_MODIFIED,
    header::CACHE_CONTROL,
];

/// Fetches a segment, key or init section, retrying quick failures on the same URL. A 404
/// is retried once (at the live edge a segment can be listed a moment before it exists) and
/// then passed on: one missing segment never fails the stream over. When the origin of
/// the current URL keeps failing, the stream fails over and the same path is asked of the
/// new URL, so a player holding a playlist from a dead origin need not see an error.
///
/// Every failure met, except the one returned, is reported to `faults` as it happens.
#[allow(clippy::too_many_arguments)]
pub async fn fetch(
    upstream: &Upstream,
    stream: &StreamEntry,
    kind: UriKind,
    method: Method,
    url: &Url,
    headers: &HeaderMap,
    faults: &mut impl Faults,
) -> Result<reqwest::Response, UpstreamError> {
    let fetch = |url: Url| {
        let (method, settings) = (method.clone(), stream.settings());
        async move {
            upstream
                .send(fetch_of(kind), method, &url, &settings, headers)
                .await
                .and_then(|res| check_media_status(&res).map(|_| res))
        }
    };
    let error = match with_retries(upstream, faults, || fetch(url.clone())).await {
        Ok(res) => return Ok(res),
        Err(e) if !e.is_retryable() => return Err(e),
        Err(e) => e,
    };
    let settings = stream.settings();
    let urls: Vec<Url> = settings.urls().cloned().collect();
    let Some((owner, rest)) = owner_of(&urls, url, stream.current_index()) else {
        return Err(error);
    };
    let policy = upstream.failover();
    if owner == stream.current_index() && !policy.switch_after_failure(stream, owner, &error) {
        return Err(error);
    }
    let (_, current) = stream.current_url();
    let Some(mirror) = mirrored(&current, rest) else {
        return Err(error);
    };
    faults.fault(error);
    tracing::info!(stream_id = %stream.id, "asking the current URL for a segment of a failed one");
    with_retries(upstream, faults, || fetch(mirror.clone())).await
}

/// Runs `fetch` with the policy's same-URL retries; a 404 is retried once. Failures that
/// were retried are reported to `faults`; the one returned is left to the caller.
async fn with_retries<F, Fut>(
    upstream: &Upstream,
    faults: &mut impl Faults,
    mut fetch: F,
) -> Result<reqwest::Response, UpstreamError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<reqwest::Response, UpstreamError>>,
{
    let policy = upstream.failover();
    let mut retries = 0;
    loop {
        let answer = fetch().await;
        let retry = match &answer {
            Ok(res) => res.status() == StatusCode::NOT_FOUND && retries == 0,
            Err(e) => {
                e.is_retryable() && e.retries_on_same_url() && retries < policy.settings().retries
            }
        };
        if !retry {
            return answer;
        }
        if let Err(e) = answer {
            faults.fault(e);
        }
        retries += 1;
        tokio::time::sleep(policy.backoff(retries)).await;
    }
}

/// What an upstream request for a reference of this kind is measured as.
pub fn fetch_of(kind: UriKind) -> Fetch {
    match kind {
        UriKind::Playlist => Fetch::Playlist,
        UriKind::Media => Fetch::Media,
        UriKind::Key => Fetch::Key,
    }
}

/// The index of the stream URL whose directory holds `url`, preferring `prefer` when several
/// do (two URLs on one host), and `url`'s path below that directory.
pub fn owner_of<'a>(urls: &[Url], url: &'a Url, prefer: usize) -> Option<(usize, &'a str)> {
    let below = |base: &Url| {
        let path = &base[..url::Position::AfterPath];
        let dir = &path[..path.rfind('/')? + 1];
        url.as_str().strip_prefix(dir)
    };
    if let Some(rest) = urls.get(prefer).and_then(below) {
        return Some((prefer, rest));
    }
    urls.iter()
        .enumerate()
        .find_map(|(i, base)| below(base).map(|rest| (i, rest)))
}

/// Where a mirror at `to` would keep what lies at `rest` below another URL's directory:
/// backups of one channel are often the same files on another host.
pub fn mirrored(to: &Url, rest: &str) -> Option<Url> {
    to.join(rest).ok()
}

/// The origin's headers a player needs, with a content type even when the origin sent none.
pub fn relayed_headers(res: &reqwest::Response, url: &Url, kind: UriKind) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for name in RELAYED_RESPONSE_HEADERS {
        if let Some(v) = res.headers().get(&name) {
            headers.insert(name, v.clone());
        }
    }
    let content_type = res
        .headers()
        .get(header::CONTENT_TYPE)
        .filter(|v| !v.is_empty())
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static(default_content_type(url, kind)));
    headers.insert(header::CONTENT_TYPE, content_type);
    headers
}

/// A content type for media whose origin did not send one, from the URL's extension.
pub fn default_content_type(url: &Url, kind: UriKind) -> &'static str {
    match (kind, extension_of(url).as_deref()) {
        (UriKind::Key, _) => "application/octet-stream",
        (_, Some("ts" | "mts" | "m2ts")) => "video/mp2t",
        (_, Some("mp4" | "m4s" | "m4v" | "cmfv")) => "video/mp4",
        (_, Some("m4a" | "cmfa")) => "audio/mp4",
        (_, Some("aac")) => "audio/aac",
        (_, Some("mp3")) => "audio/mpeg",
        (_, Some("vtt" | "webvtt")) => "text/vtt",
        (_, Some("mkv")) => "video/x-matroska",
        (_, Some("webm")) => "video/webm",
        (_, Some("avi")) => "video/x-msvideo",
        (_, Some("m3u8")) => PLAYLIST_CONTENT_TYPE,
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_maps_to_the_same_path_below_the_backup() {
        let urls: Vec<Url> = [
            "http://a/live/ch1/index.m3u8?t=1",
            "http://b:81/mirror/index.m3u8",
        ]
        .iter()
        .map(|u| Url::parse(u).unwrap())
        .collect();
        let seg = Url::parse("http://a/live/ch1/hi/seg7.ts?x=2").unwrap();
        let (owner, rest) = owner_of(&urls, &seg, 1).unwrap();
        assert_eq!((owner, rest), (0, "hi/seg7.ts?x=2"));
        assert_eq!(
            mirrored(&urls[1], rest).unwrap().as_str(),
            "http://b:81/mirror/hi/seg7.ts?x=2"
        );
        let foreign = Url::parse("http://cdn/seg7.ts").unwrap();
        assert_eq!(owner_of(&urls, &foreign, 0), None);
    }

    #[test]
    fn content_types_default_by_extension_and_kind() {
        let u = |s| Url::parse(s).unwrap();
        assert_eq!(
            default_content_type(&u("http://o/a/seg1.ts?x=1"), UriKind::Media),
            "video/mp2t"
        );
        assert_eq!(
            default_content_type(&u("http://o/init.mp4"), UriKind::Media),
            "video/mp4"
        );
        assert_eq!(
            default_content_type(&u("http://o/k.ts"), UriKind::Key),
            "application/octet-stream"
        );
        assert_eq!(
            default_content_type(&u("http://o/seg"), UriKind::Media),
            "application/octet-stream"
        );
    }
}
