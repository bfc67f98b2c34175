//! Playback routes: rewritten HLS playlists, the media and keys behind signed references,
//! and direct streams. Bytes are relayed as they arrive and counted as they are handed to
//! the player; nothing is buffered whole except playlists.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{BoxStream, Stream};
use futures_util::{FutureExt, StreamExt};
use tokio_util::sync::WaitForCancellationFutureOwned;
use url::Url;

use crate::cache::{Entry, Filled, Head, Lookup};
use crate::error::{ApiError, UpstreamError};
use crate::model::StreamType;
use crate::playlist::{self, UriKind};
use crate::proxy_url::Target;
use crate::store::{ClientEntry, StreamEntry, Viewing};
use crate::upstream::direct::{Chunk, DirectFeed, Shape};
use crate::upstream::failover::{self, equivalent, Equivalent, Listing};
use crate::upstream::fanout::{LiveHub, ViewerBody};
use crate::upstream::{check_media_status, extension_of, Fetch, FetchedPlaylist};

use super::viewer::query_value;
use super::{AppState, Viewer};

/// LL-HLS blocking-reload parameters a player adds to a playlist URL; they are relayed to
/// the origin so a blocking reload blocks there.
const LL_HLS_PARAMS: [&str; 3] = ["_HLS_msn", "_HLS_part", "_HLS_skip"];

/// Response headers of the origin relayed to the player with media.
const RELAYED_RESPONSE_HEADERS: [header::HeaderName; 6] = [
    header::CONTENT_LENGTH,
    header::CONTENT_RANGE,
    header::ACCEPT_RANGES,
    header::ETAG,
    header::LAST_MODIFIED,
    header::CACHE_CONTROL,
];

const PLAYLIST_CONTENT_TYPE: &str = "application/vnd.apple.mpegurl";

/// `GET /hls/{id}/playlist.m3u8`: the stream's playlist, rewritten.
pub async fn master_playlist(
    State(state): State<AppState>,
    Path(id): Path<String>,
    viewer: Viewer,
    uri: Uri,
) -> Result<Response, ApiError> {
    let stream = find_stream(&state, &id)?;
    let client = identify(&state, &stream, &viewer, None);
    let viewing = Viewing::new(state.registry.clone(), stream.clone(), client);
    let mut faults = Vec::new();
    let fetched = state
        .upstream
        .failover()
        .run(&stream, &mut faults, |_, url| {
            let url = with_ll_hls_params(url, uri.query());
            let settings = stream.settings();
            let (upstream, cache) = (state.upstream.clone(), state.cache.clone());
            let stream_id = stream.id.clone();
            async move {
                cache
                    .playlist(&stream_id, &url, || {
                        upstream.fetch_playlist(&url, &settings)
                    })
                    .await
            }
        })
        .await;
    report(&viewing, &faults);
    let (index, fetched) = fetched.inspect_err(|e| viewing.upstream_error(e))?;
    let (response, info) = playlist_response(&state, &stream, viewing, &fetched, "");
    stream
        .failover
        .remember(index, Listing::new(stream.generation(), &info));
    Ok(response)
}

/// `GET /hls/{id}/{token}/{file}`: whatever a signed reference points at.
pub async fn signed_reference(
    State(state): State<AppState>,
    Path((id, token, _file)): Path<(String, String, String)>,
    viewer: Viewer,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let stream = find_stream(&state, &id)?;
    // Verified before anything is fetched: a forged or foreign reference costs one HMAC.
    let target = state.signer.decode(&id, &token).map_err(|e| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_reference",
            format!("this reference was not issued by this proxy for this stream: {e}"),
        )
    })?;
    let url = Url::parse(&target.url).map_err(|_| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_reference",
            "reference holds no URL",
        )
    })?;
    let client = identify(&state, &stream, &viewer, target.client_id.as_deref());
    let viewing = Viewing::new(state.registry.clone(), stream.clone(), client);
    match target.kind {
        UriKind::Playlist => {
            let mut faults = Vec::new();
            let fetched = state
                .upstream
                .failover()
                .run(&stream, &mut faults, |index, _| {
                    nested_playlist(&state, &stream, &url, index, uri.query())
                })
                .await;
            report(&viewing, &faults);
            let (_, fetched) = fetched.inspect_err(|e| viewing.upstream_error(e))?;
            Ok(playlist_response(&state, &stream, viewing, &fetched, "../").0)
        }
        kind => {
            // A HEAD asks about a segment without playing it.
            let is_segment = kind == UriKind::Media && method == Method::GET;
            // A byte range is one player's business: it goes upstream as asked.
            let shareable = method == Method::GET && !headers.contains_key(header::RANGE);
            let lookup = shareable
                .then(|| state.cache.segment(&stream.id, &url))
                .flatten();
            let leader = match lookup {
                Some(Lookup::Join(entry)) => {
                    if let Some(head) = state.cache.join(&entry).await {
                        return Ok(shared_response(head, entry, viewing, is_segment, "HIT"));
                    }
                    // Its leader gave up (an error or an answer not worth sharing).
                    None
                }
                Some(Lookup::Lead(leader)) => Some(leader),
                None => None,
            };
            let res = fetch_media(&state, &stream, &viewing, kind, method, &url, &headers).await?;
            let res = match leader {
                Some(leader) if res.status() == StatusCode::OK => {
                    let headers = relayed_headers(&res, &url, kind);
                    match leader.fill(res, headers.clone()) {
                        Filled::Shared(entry) => {
                            let head = Head {
                                status: StatusCode::OK,
                                headers,
                            };
                            return Ok(shared_response(head, entry, viewing, is_segment, "MISS"));
                        }
                        Filled::Unshared(res) => res,
                    }
                }
                _ => res,
            };
            relay(res, &url, kind, viewing, is_segment, plain_body)
        }
    }
}

/// Fetches a playlist behind a reference for the stream's URL `index`. When the reference
/// was issued under another URL of the stream (a player re-polling a variant after a
/// switch), its equivalent under `index` is fetched instead, so the player moves too.
async fn nested_playlist(
    state: &AppState,
    stream: &StreamEntry,
    target: &Url,
    index: usize,
    query: Option<&str>,
) -> Result<Arc<FetchedPlaylist>, UpstreamError> {
    let settings = stream.settings();
    let mut url = target.clone();
    if let Some(old) = stream.failover.listed_elsewhere(target.as_str(), index) {
        let generation = stream.generation();
        let new = match stream.failover.listing(index, generation) {
            Some(listing) => listing,
            None => {
                let top = state
                    .upstream
                    .fetch_playlist(settings.url_at(index), &settings)
                    .await?;
                let info = playlist::rewrite(&top.text, &top.final_url, |u, _| u.to_string()).info;
                let listing = Listing::new(generation, &info);
                stream.failover.remember(index, listing.clone());
                listing
            }
        };
        url = match equivalent(&old, &new, target.as_str()) {
            Equivalent::Same => url,
            Equivalent::StreamUrl => settings.url_at(index).clone(),
            Equivalent::Listed(u) => {
                Url::parse(&u).map_err(|e| UpstreamError::Other(e.to_string()))?
            }
        };
    }
    let url = with_ll_hls_params(url, query);
    state
        .cache
        .playlist(&stream.id, &url, || {
            state.upstream.fetch_playlist(&url, &settings)
        })
        .await
}

/// Fetches a segment, key or init section, retrying quick failures on the same URL. A 404
/// is retried once (at the live edge a segment can be listed a moment before it exists) and
/// then passed on: one missing segment never fails the stream over. When the origin of
/// the current URL keeps failing, the stream fails over and the same path is asked of the
/// new URL, so a player holding a playlist from a dead origin need not see an error.
async fn fetch_media(
    state: &AppState,
    stream: &StreamEntry,
    viewing: &Viewing,
    kind: UriKind,
    method: Method,
    url: &Url,
    headers: &HeaderMap,
) -> Result<reqwest::Response, ApiError> {
    let fetch = |url: Url| {
        let (method, settings) = (method.clone(), stream.settings());
        async move {
            state
                .upstream
                .send(fetch_of(kind), method, &url, &settings, headers)
                .await
                .and_then(|res| check_media_status(&res).map(|_| res))
        }
    };
    let error = match with_retries(state, viewing, || fetch(url.clone())).await {
        Ok(res) => return Ok(res),
        Err(e) if !e.is_retryable() => {
            viewing.upstream_error(&e);
            return Err(e.into());
        }
        Err(e) => e,
    };
    viewing.upstream_error(&error);
    let settings = stream.settings();
    let urls: Vec<Url> = settings.urls().cloned().collect();
    let Some((owner, rest)) = failover::owner_of(&urls, url, stream.current_index()) else {
        return Err(error.into());
    };
    let policy = state.upstream.failover();
    if owner == stream.current_index() && !policy.switch_after_failure(stream, owner, &error) {
        return Err(error.into());
    }
    let (_, current) = stream.current_url();
    let Some(mirror) = failover::mirrored(&current, rest) else {
        return Err(error.into());
    };
    tracing::info!(stream_id = %stream.id, "asking the current URL for a segment of a failed one");
    with_retries(state, viewing, || fetch(mirror.clone()))
        .await
        .map_err(|e| {
            viewing.upstream_error(&e);
            e.into()
        })
}

/// Runs `fetch` with the policy's same-URL retries; a 404 is retried once. Failures that
/// were retried are counted here; the one returned is left to the caller.
async fn with_retries<F, Fut>(
    state: &AppState,
    viewing: &Viewing,
    mut fetch: F,
) -> Result<reqwest::Response, UpstreamError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<reqwest::Response, UpstreamError>>,
{
    let policy = state.upstream.failover();
    let mut retries = 0;
    loop {
        let answer = fetch().await;
        let retry = match &answer {
            Ok(res) => res.status() == StatusCode::NOT_FOUND && retries == 0,
            Err(e) => {
                e.is_retryable()
                    && failover::retries_on_same_url(e)
                    && retries < policy.settings().retries
            }
        };
        if !retry {
            return answer;
        }
        if let Err(e) = &answer {
            viewing.upstream_error(e);
        }
        retries += 1;
        tokio::time::sleep(policy.backoff(retries)).await;
    }
}

fn report(viewing: &Viewing, faults: &[UpstreamError]) {
    for e in faults {
        viewing.upstream_error(e);
    }
}

/// `GET /stream/{id}`: a direct file or live stream, relayed byte for byte with Range.
pub async fn direct(
    State(state): State<AppState>,
    Path(id): Path<String>,
    viewer: Viewer,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let stream = find_stream(&state, &id)?;
    if stream.settings().stream_type == StreamType::Hls {
        // A player pointed at the direct route of an HLS stream still gets to play it.
        let location = format!("../hls/{id}/playlist.m3u8");
        return Ok((
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, location)],
        )
            .into_response());
    }
    let client = identify(&state, &stream, &viewer, None);
    let viewing = Viewing::new(state.registry.clone(), stream.clone(), client);
    let shareable = method == Method::GET
        && state.fanout.enabled()
        && stream.live.may_share()
        && asks_from_the_start(&headers);
    if shareable {
        return direct_shared(&state, stream, viewing, &headers).await;
    }
    let (index, url, res) = open_direct(&state, &stream, &viewing, &method, &headers).await?;
    relay_direct(&state, stream, &method, index, &url, res, viewing)
}

/// A GET for a whole direct stream. A live TS stream is read once for all its viewers:
/// join the shared upstream that runs, or open one while holding the stream's slot, so
/// viewers arriving together open it once. Anything else is this viewer's own upstream.
async fn direct_shared(
    state: &AppState,
    stream: Arc<StreamEntry>,
    viewing: Viewing,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let arrived = tokio::time::Instant::now();
    let mut slot = stream.live.lock().await;
    let running = slot
        .hub
        .as_ref()
        .and_then(|hub| Some((hub.clone(), hub.join(&state.fanout)?)));
    if let Some((hub, body)) = running {
        drop(slot);
        return Ok(shared_live_response(&hub, body, viewing));
    }
    if let Some(error) = slot.failed_since(arrived) {
        // The viewer ahead of this one just failed to open it: same answer, at once.
        return Err(error);
    }
    let opened = open_direct(state, &stream, &viewing, &Method::GET, headers).await;
    let (index, url, res) = opened.inspect_err(|e| slot.record_failure(e))?;
    let shape = Shape::of_answer(&res);
    if slot.hub.is_none() && LiveHub::can_share(res.status(), &shape) {
        let headers = relayed_headers(&res, &url, UriKind::Media);
        let ts = shape == (Shape::Live { ts: Some(true) });
        let status = res.status();
        let feed = DirectFeed::new(state.upstream.clone(), stream.clone(), index, res);
        let (hub, body) = LiveHub::start(
            state.fanout.clone(),
            state.registry.clone(),
            stream.clone(),
            status,
            headers,
            ts,
            feed,
        );
        slot.hub = Some(hub.clone());
        drop(slot);
        return Ok(shared_live_response(&hub, body, viewing));
    }
    if res.status().is_success() && !matches!(shape, Shape::Live { .. }) {
        // A file: its later viewers go straight to the origin, never through the slot.
        stream.live.mark_file();
    }
    drop(slot);
    relay_direct(state, stream, &Method::GET, index, &url, res, viewing)
}

/// Opens a direct stream's upstream under the failover policy, counting the failures met.
async fn open_direct(
    state: &AppState,
    stream: &Arc<StreamEntry>,
    viewing: &Viewing,
    method: &Method,
    headers: &HeaderMap,
) -> Result<(usize, Url, reqwest::Response), ApiError> {
    let mut faults = Vec::new();
    let opened = state
        .upstream
        .failover()
        .run(stream, &mut faults, |_, url| {
            let (upstream, settings) = (state.upstream.clone(), stream.settings());
            let (method, headers) = (method.clone(), headers.clone());
            async move {
                let res = upstream
                    .send(Fetch::Direct, method, &url, &settings, &headers)
                    .await?;
                check_media_status(&res)?;
                Ok((url, res))
            }
        })
        .await;
    report(viewing, &faults);
    let (index, (url, res)) = opened.inspect_err(|e| {
        viewing.upstream_error(e);
        tracing::warn!(stream_id = %stream.id, error = %e, "direct upstream failed");
    })?;
    Ok((index, url, res))
}

/// One viewer's own direct upstream: a GET's body continues across failures.
fn relay_direct(
    state: &AppState,
    stream: Arc<StreamEntry>,
    method: &Method,
    index: usize,
    url: &Url,
    res: reqwest::Response,
    viewing: Viewing,
) -> Result<Response, ApiError> {
    if method == Method::GET && res.status().is_success() {
        let upstream = state.upstream.clone();
        return relay(res, url, UriKind::Media, viewing, false, move |res| {
            DirectFeed::new(upstream, stream, index, res).into_stream()
        });
    }
    relay(res, url, UriKind::Media, viewing, false, plain_body)
}

/// Whether a direct request wants the stream from its start, as every live viewer does
/// (ffmpeg sends `Range: bytes=0-` even for live streams); other ranges are never shared.
fn asks_from_the_start(headers: &HeaderMap) -> bool {
    match headers.get(header::RANGE) {
        None => true,
        Some(v) => v.as_bytes().eq_ignore_ascii_case(b"bytes=0-"),
    }
}

/// A viewer's answer from a shared live upstream: the head the origin gave its first
/// viewer, and the broadcast bytes, counted for this viewer.
fn shared_live_response(hub: &LiveHub, body: ViewerBody, viewing: Viewing) -> Response {
    let mut builder = Response::builder().status(hub.status);
    *builder.headers_mut().expect("fresh builder") = hub.headers.clone();
    builder
        .body(counted_body(body, viewing))
        .expect("relayed headers are valid")
}

/// An upstream body relayed as it is, once.
fn plain_body(res: reqwest::Response) -> BoxStream<'static, Result<Chunk, UpstreamError>> {
    res.bytes_stream()
        .map(|r| {
            r.map(Chunk::Bytes)
                .map_err(|e| UpstreamError::from_reqwest(&e))
        })
        .boxed()
}

fn fetch_of(kind: UriKind) -> Fetch {
    match kind {
        UriKind::Playlist => Fetch::Playlist,
        UriKind::Media => Fetch::Media,
        UriKind::Key => Fetch::Key,
    }
}

fn find_stream(state: &AppState, id: &str) -> Result<Arc<StreamEntry>, ApiError> {
    state
        .registry
        .stream(id)
        .ok_or_else(|| ApiError::stream_not_found(id))
}

/// The client behind a request: the id carried in a signed reference, else the one the
/// viewer named, else one derived from (ip, user agent, stream).
fn identify(
    state: &AppState,
    stream: &StreamEntry,
    viewer: &Viewer,
    carried: Option<&str>,
) -> Arc<ClientEntry> {
    let ip = viewer.ip.to_string();
    let id = carried
        .map(str::to_string)
        .or_else(|| viewer.named.clone())
        .unwrap_or_else(|| {
            state
                .registry
                .derive_client_id(&ip, &viewer.user_agent, &stream.id)
        });
    let (client, _new) = state
        .registry
        .client(&id, &stream.id, &ip, &viewer.user_agent);
    client
}

/// Adds the player's LL-HLS blocking-reload parameters to an upstream playlist URL.
fn with_ll_hls_params(mut url: Url, query: Option<&str>) -> Url {
    let params: Vec<(String, String)> = LL_HLS_PARAMS
        .iter()
        .filter_map(|k| query_value(query, k).map(|v| (k.to_string(), v)))
        .collect();
    if !params.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in &params {
            pairs.append_pair(k, v);
        }
    }
    url
}

/// The rewritten playlist as a response. `prefix` climbs from the requested path back to
/// `/hls/{id}/`: empty for the stream's playlist, `../` for one behind a reference.
fn playlist_response(
    state: &AppState,
    stream: &StreamEntry,
    viewing: Viewing,
    fetched: &FetchedPlaylist,
    prefix: &str,
) -> (Response, playlist::PlaylistInfo) {
    let client_id = viewing.client.id.clone();
    let rewritten = playlist::rewrite(&fetched.text, &fetched.final_url, |url, kind| {
        let target = Target {
            url: url.to_string(),
            kind,
            client_id: Some(client_id.clone()),
        };
        format!("{prefix}{}", state.signer.encode(&stream.id, &target))
    });
    let length = rewritten.text.len();
    let chunk = Chunk::Bytes(Bytes::from(rewritten.text));
    let body = counted_body(futures_util::stream::iter([Ok(chunk)]).boxed(), viewing);
    let response = (
        [
            (header::CONTENT_TYPE, PLAYLIST_CONTENT_TYPE.to_string()),
            (header::CACHE_CONTROL, "no-cache".to_string()),
            (header::CONTENT_LENGTH, length.to_string()),
        ],
        body,
    )
        .into_response();
    (response, rewritten.info)
}

/// Relays an origin's media answer: status, the headers a player needs, and the body as
/// it arrives through `body`. A missing segment stays a 404 (the player skips it); other
/// origin errors become 502.
fn relay(
    res: reqwest::Response,
    url: &Url,
    kind: UriKind,
    viewing: Viewing,
    is_segment: bool,
    body: impl FnOnce(reqwest::Response) -> BoxStream<'static, Result<Chunk, UpstreamError>>,
) -> Result<Response, ApiError> {
    check_media_status(&res).inspect_err(|e| viewing.upstream_error(e))?;
    let status = res.status();
    let passes = status.is_success()
        || matches!(
            status,
            StatusCode::NOT_MODIFIED
                | StatusCode::NOT_FOUND
                | StatusCode::GONE
                | StatusCode::RANGE_NOT_SATISFIABLE
        );
    if !passes {
        let e = UpstreamError::Status(status.as_u16());
        viewing.upstream_error(&e);
        return Err(e.into());
    }
    if !status.is_success() {
        viewing.add_error();
    } else if is_segment {
        viewing.add_segment();
    }
    let mut builder = Response::builder().status(status);
    *builder.headers_mut().expect("fresh builder") = relayed_headers(&res, url, kind);
    Ok(builder
        .body(counted_body(body(res), viewing))
        .expect("relayed headers are valid"))
}

/// The origin's headers a player needs, with a content type even when the origin sent none.
fn relayed_headers(res: &reqwest::Response, url: &Url, kind: UriKind) -> HeaderMap {
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

/// A response read from a shared cache entry, counted for this viewer like any other.
fn shared_response(
    head: Head,
    entry: Arc<Entry>,
    viewing: Viewing,
    is_segment: bool,
    cache: &'static str,
) -> Response {
    if is_segment {
        viewing.add_segment();
    }
    let body = entry.body().map(|r| r.map(Chunk::Bytes)).boxed();
    let mut builder = Response::builder().status(head.status);
    let headers = builder.headers_mut().expect("fresh builder");
    *headers = head.headers;
    headers.insert("x-cache", HeaderValue::from_static(cache));
    builder
        .body(counted_body(body, viewing))
        .expect("relayed headers are valid")
}

/// A response body that counts its bytes as they are handed to the player: a HEAD answer,
/// whose body is never sent, counts nothing, and a viewer who hangs up counts what it got.
fn counted_body(inner: BoxStream<'static, Result<Chunk, UpstreamError>>, viewing: Viewing) -> Body {
    let closed = viewing.stream.closed.clone().cancelled_owned();
    Body::from_stream(CountedBody {
        inner,
        viewing,
        closed: Box::pin(closed),
        done: false,
    })
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

/// A relayed body that counts bytes as they are handed to the player (and the faults a
/// failover feed recovered from), ends when the stream is deleted, and releases the
/// viewer's connection when dropped (the player hung up or the body ended). Dropping it
/// drops the upstream response, which cancels the upstream request.
struct CountedBody {
    inner: BoxStream<'static, Result<Chunk, UpstreamError>>,
    viewing: Viewing,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    done: bool,
}

impl Stream for CountedBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.closed.poll_unpin(cx).is_ready() {
            self.done = true;
            return Poll::Ready(None);
        }
        loop {
            return match self.inner.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(Chunk::Bytes(bytes)))) => {
                    self.viewing.add_bytes(bytes.len() as u64);
                    Poll::Ready(Some(Ok(bytes)))
                }
                Poll::Ready(Some(Ok(Chunk::Fault(e)))) => {
                    self.viewing.upstream_error(&e);
                    continue;
                }
                Poll::Ready(Some(Ok(Chunk::Abort(why)))) => {
                    self.done = true;
                    Poll::Ready(Some(Err(std::io::Error::other(why))))
                }
                Poll::Ready(Some(Err(e))) => {
                    // Ending with an error makes the server abort the response, so the
                    // player sees a cut body, never a short one that looks complete.
                    self.done = true;
                    self.viewing.upstream_error(&e);
                    Poll::Ready(Some(Err(std::io::Error::other(e.to_string()))))
                }
                Poll::Ready(None) => {
                    self.done = true;
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_for_the_whole_stream_may_share_it() {
        let with = |range: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(r) = range {
                h.insert(header::RANGE, HeaderValue::from_str(r).unwrap());
            }
            asks_from_the_start(&h)
        };
        assert!(with(None));
        assert!(with(Some("bytes=0-")));
        assert!(with(Some("BYTES=0-")));
        assert!(!with(Some("bytes=0-99")));
        assert!(!with(Some("bytes=100-")));
        assert!(!with(Some("bytes=-500")));
    }

    #[test]
    fn ll_hls_parameters_are_relayed_and_others_are_not() {
        let url = Url::parse("http://o/live.m3u8?token=a").unwrap();
        let out = with_ll_hls_params(url, Some("_HLS_msn=12&_HLS_part=3&client_id=x"));
        assert_eq!(
            out.as_str(),
            "http://o/live.m3u8?token=a&_HLS_msn=12&_HLS_part=3"
        );
        let plain = with_ll_hls_params(Url::parse("http://o/a.m3u8").unwrap(), None);
        assert_eq!(plain.as_str(), "http://o/a.m3u8");
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
