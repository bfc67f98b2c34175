//! Playback routes: rewritten HLS playlists, the media and keys behind opaque references,
//! and direct streams. Bytes are relayed as they arrive and counted as they are handed to
//! the player; nothing is buffered whole except playlists.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{BoxStream, Stream};
use futures_util::{FutureExt, StreamExt};
use url::Url;

use crate::cache::{Entry, Filled, Head, Lookup};
use crate::error::{ApiError, UpstreamError};
use crate::live::{Tuned, ViewerBody};
use crate::model::StreamType;
use crate::playlist::{self, UriKind};
use crate::providers::Holder;
use crate::proxy_url::Target;
use crate::registry::{ClientEntry, StreamEntry, Viewing};
use crate::stream::{equivalent, Equivalent, Listing};
use crate::upstream::direct::{Chunk, DirectFeed, Opened};
use crate::upstream::failover::Faults;
use crate::upstream::media::{self, relayed_headers, PLAYLIST_CONTENT_TYPE};
use crate::upstream::{check_media_status, Fetch, FetchedPlaylist};

use super::viewer::query_value;
use super::{AppState, Relayed, Viewer};

/// LL-HLS blocking-reload parameters a player adds to a playlist URL; they are relayed to
/// the origin so a blocking reload blocks there.
const LL_HLS_PARAMS: [&str; 3] = ["_HLS_msn", "_HLS_part", "_HLS_skip"];

/// `GET /hls/{id}/playlist.m3u8`: the stream's playlist, rewritten.
#[utoipa::path(get, path = "/hls/{id}/playlist.m3u8", tag = "playback", security(()),
    params(("id" = String, Path, min_length = 1, description = "Stream id"), ("client_id" = Option<String>, Query, pattern = "^[A-Za-z0-9._:@-]{1,128}$", description = "The viewer's own id"),
        ("username" = Option<String>, Query, description = "The viewer's user name")),
    responses((status = 200, description = "The playlist, every URI rewritten to this proxy", content_type = "application/vnd.apple.mpegurl", body = String),
        (status = 307, description = "A direct stream: see Location (`direct_stream`)", body = crate::model::ErrorBody),
        (status = 400, description = "An invalid client_id (`invalid_client_id`)", body = crate::model::ErrorBody),
        (status = 404, description = "No such stream, or the origin says it is gone (`stream_not_found`, `upstream_not_found`)", body = crate::model::ErrorBody),
        (status = 502, description = "The origin failed (`upstream_unreachable`, `upstream_status`, `upstream_not_playlist`, `upstream_not_media`, `upstream_too_large`, `upstream_error`)", body = crate::model::ErrorBody),
        (status = 503, description = "Too many connections (`too_many_connections`, `too_many_connections_per_ip`)", body = crate::model::ErrorBody),
        (status = 504, description = "The origin did not answer in time (`upstream_timeout`)", body = crate::model::ErrorBody)))]
pub async fn master_playlist(
    State(state): State<AppState>,
    Path(id): Path<String>,
    viewer: Viewer,
    uri: Uri,
) -> Result<Response, ApiError> {
    let stream = find_hls_stream(&state, &id, "../../", uri.query()).await?;
    let client = identify(&state, &stream, &viewer, None);
    let viewing = Viewing::new(state.registry.clone(), stream.clone(), client);
    let start = stream.current_index();
    let fetched = state
        .upstream
        .failover()
        .run(&stream, &mut &viewing, |index, url| {
            let asked = with_ll_hls_params(url.clone(), uri.query());
            let settings = stream.settings();
            let (upstream, cache) = (state.upstream.clone(), state.cache.clone());
            let stream = stream.clone();
            async move {
                let fetch = |url: Url| {
                    let (upstream, cache, settings) =
                        (upstream.clone(), cache.clone(), settings.clone());
                    let stream = stream.clone();
                    async move {
                        cache
                            .playlist(&stream.id, &url, || async {
                                // A fetch upstream rides on the stream's provider slot.
                                let _slot = upstream
                                    .providers()
                                    .hls_use(&stream, &url, index == start)
                                    .await?;
                                upstream.fetch_playlist(&url, &settings).await
                            })
                            .await
                    }
                };
                let fetched = super::editor::sticky_fetch(&stream, index, asked, fetch).await?;
                Ok((url, fetched))
            }
        })
        .await;
    let (_, (url, fetched)) = fetched.inspect_err(|e| viewing.upstream_error(e))?;
    let (response, info) = playlist_response(&state, &stream, viewing, &fetched, "");
    stream.note_target_duration(info.target_duration);
    stream
        .listings
        .remember(&url, Listing::new(stream.generation(), &info));
    Ok(response)
}

/// `GET /hls/{id}/{token}/{file}`: whatever an opaque reference points at.
#[utoipa::path(get, path = "/hls/{id}/{token}/{file}", tag = "playback", security(()),
    params(("id" = String, Path, min_length = 1, description = "Stream id"),
        ("token" = String, Path, min_length = 1, description = "An opaque reference issued in a rewritten playlist"),
        ("file" = String, Path, min_length = 1, description = "A file name, for players that look at it"), ("client_id" = Option<String>, Query, pattern = "^[A-Za-z0-9._:@-]{1,128}$", description = "The viewer's own id"),
        ("username" = Option<String>, Query, description = "The viewer's user name")),
    responses((status = 200, description = "A nested playlist, a segment or a key, as the origin sent it", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "Part of a segment (Range)", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "An invalid client_id (`invalid_client_id`)", body = crate::model::ErrorBody),
        (status = 403, description = "A reference this proxy did not issue for this stream (`invalid_reference`)", body = crate::model::ErrorBody),
        (status = 404, description = "No such stream, or the origin says it is gone (`stream_not_found`, `upstream_not_found`)", body = crate::model::ErrorBody),
        (status = 502, description = "The origin failed (`upstream_unreachable`, `upstream_status`, `upstream_not_playlist`, `upstream_not_media`, `upstream_too_large`, `upstream_error`)", body = crate::model::ErrorBody),
        (status = 503, description = "Too many connections (`too_many_connections`, `too_many_connections_per_ip`)", body = crate::model::ErrorBody),
        (status = 504, description = "The origin did not answer in time (`upstream_timeout`)", body = crate::model::ErrorBody)))]
pub async fn signed_reference(
    State(state): State<AppState>,
    Path((id, token, _file)): Path<(String, String, String)>,
    viewer: Viewer,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let stream = find_hls_stream(&state, &id, "../../../", uri.query()).await?;
    // Verified before anything is fetched: a forged or foreign reference costs one AEAD open.
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
            let fetched = state
                .upstream
                .failover()
                .run(&stream, &mut &viewing, |index, _| {
                    nested_playlist(&state, &stream, &url, index, uri.query())
                })
                .await;
            let (_, fetched) = fetched.inspect_err(|e| viewing.upstream_error(e))?;
            let (response, info) = playlist_response(&state, &stream, viewing, &fetched, "../");
            stream.note_target_duration(info.target_duration);
            Ok(response)
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
            // The fetch rides on the stream's provider slot (its HLS session).
            let slot = state
                .upstream
                .providers()
                .hls_use(&stream, &url, true)
                .await
                .inspect_err(|e| viewing.upstream_error(e))?;
            let res = media::fetch(
                &state.upstream,
                &stream,
                kind,
                method,
                &url,
                &headers,
                &mut &viewing,
            )
            .await;
            let res = res.inspect_err(|e| viewing.upstream_error(e))?;
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
            relay(res, &url, kind, viewing, is_segment, |res| {
                holding(plain_body(res), slot)
            })
        }
    }
}

/// Fetches a playlist behind a reference for the stream's URL `index`. When the reference
/// was issued under another URL of the stream (a player re-polling a variant after a
/// switch), its equivalent under `index` is fetched instead, so the player moves too.
async fn nested_playlist(
    state: &AppState,
    stream: &Arc<StreamEntry>,
    target: &Url,
    index: usize,
    query: Option<&str>,
) -> Result<Arc<FetchedPlaylist>, UpstreamError> {
    let settings = stream.settings();
    let current = settings.url_at(index);
    let mut url = target.clone();
    if let Some(old) = stream.listings.listed_elsewhere(target.as_str(), current) {
        let generation = stream.generation();
        let new = match stream.listings.listing(current, generation) {
            Some(listing) => listing,
            None => {
                let _slot = state
                    .upstream
                    .providers()
                    .hls_use(stream, current, true)
                    .await?;
                let top = state.upstream.fetch_playlist(current, &settings).await?;
                let info = playlist::rewrite(&top.text, &top.final_url, |u, _| u.to_string()).info;
                let listing = Listing::new(generation, &info);
                stream.listings.remember(current, listing.clone());
                listing
            }
        };
        url = match equivalent(&old, &new, target.as_str()) {
            Equivalent::Same => url,
            Equivalent::StreamUrl => current.clone(),
            Equivalent::Listed(u) => {
                Url::parse(&u).map_err(|e| UpstreamError::InvalidListedUrl(e.to_string()))?
            }
        };
    }
    let url = with_ll_hls_params(url, query);
    state
        .cache
        .playlist(&stream.id, &url, || async {
            let _slot = state
                .upstream
                .providers()
                .hls_use(stream, &url, true)
                .await?;
            state.upstream.fetch_playlist(&url, &settings).await
        })
        .await
}

/// Each failure of a failover walk is counted (and its event emitted) as it happens.
impl Faults for &Viewing {
    fn fault(&mut self, error: UpstreamError) {
        self.upstream_error(&error);
    }
}

/// `GET /stream/{id}`: a direct file or live stream, relayed byte for byte with Range.
#[utoipa::path(get, path = "/stream/{id}", tag = "playback", security(()),
    params(("id" = String, Path, min_length = 1, description = "Stream id"), ("client_id" = Option<String>, Query, pattern = "^[A-Za-z0-9._:@-]{1,128}$", description = "The viewer's own id"),
        ("username" = Option<String>, Query, description = "The viewer's user name")),
    responses((status = 200, description = "The stream's bytes, relayed as they arrive", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "A range of a file", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 307, description = "An HLS stream: see Location"),
        (status = 400, description = "An invalid client_id (`invalid_client_id`)", body = crate::model::ErrorBody),
        (status = 404, description = "No such stream, or the origin says it is gone (`stream_not_found`, `upstream_not_found`)", body = crate::model::ErrorBody),
        (status = 502, description = "The origin failed (`upstream_unreachable`, `upstream_status`, `upstream_not_playlist`, `upstream_not_media`, `upstream_too_large`, `upstream_error`)", body = crate::model::ErrorBody),
        (status = 503, description = "Too many connections (`too_many_connections`, `too_many_connections_per_ip`)", body = crate::model::ErrorBody),
        (status = 504, description = "The origin did not answer in time (`upstream_timeout`)", body = crate::model::ErrorBody)))]
pub async fn direct(
    State(state): State<AppState>,
    Path(id): Path<String>,
    viewer: Viewer,
    method: Method,
    mut headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let stream = find_stream(&state, &id).await?;
    if stream.settings().stream_type == StreamType::Hls {
        // A player pointed at the direct route of an HLS stream still gets to play it. The
        // location is relative, so it holds behind a proxy that strips a path prefix and
        // behind one that does not; the query (user name, client id) goes along.
        let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        let location = format!("../hls/{id}/playlist.m3u8{query}");
        return Ok((
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, location)],
        )
            .into_response());
    }
    let strict = super::editor::strict_live_ts(&stream);
    if strict {
        if method == Method::HEAD {
            return Ok(super::editor::strict_head());
        }
        // Kodi seeks a live TS with a Range; a live channel has no ranges to give.
        headers.remove(header::RANGE);
        headers.remove(header::IF_RANGE);
    }
    let mut res = direct_response(&state, stream, viewer, method, headers).await?;
    if strict {
        super::editor::strict_headers(res.headers_mut());
    }
    Ok(res)
}

async fn direct_response(
    state: &AppState,
    stream: Arc<StreamEntry>,
    viewer: Viewer,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let client = identify(state, &stream, &viewer, None);
    let viewing = Viewing::new(state.registry.clone(), stream.clone(), client);
    let shareable =
        method == Method::GET && asks_from_the_start(&headers) && state.live.may_share(&stream);
    if shareable {
        let open = || open_direct(state, &stream, &viewing, &Method::GET, &headers);
        let tuned = state
            .live
            .tune_in(&state.upstream, &state.registry, &stream, open)
            .await?;
        return match tuned {
            Tuned::Shared {
                status,
                headers,
                body,
            } => Ok(shared_live_response(status, headers, body, viewing)),
            Tuned::Own(opened) => relay_direct(state, stream, &Method::GET, opened, viewing),
        };
    }
    let opened = open_direct(state, &stream, &viewing, &method, &headers).await?;
    relay_direct(state, stream, &method, opened, viewing)
}

/// Opens a direct stream's upstream under the failover policy, counting the failures met.
/// Each attempt first takes a slot of its URL's provider: the first URL tried may stop the
/// provider's oldest stream (`replace_oldest`), a failover attempt skips a full provider.
async fn open_direct(
    state: &AppState,
    stream: &Arc<StreamEntry>,
    viewing: &Viewing,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Opened, ApiError> {
    let start = stream.current_index();
    let opened = state
        .upstream
        .failover()
        .run(stream, &mut { viewing }, |index, url| {
            let (upstream, settings) = (state.upstream.clone(), stream.settings());
            let (method, headers) = (method.clone(), headers.clone());
            let holder = Holder {
                stream_id: Some(stream.id.clone()),
                kind: "direct",
            };
            async move {
                let slot = upstream
                    .providers()
                    .slot(&settings, &url, holder, index == start)
                    .await?;
                let res = upstream
                    .send(Fetch::Direct, method, &url, &settings, &headers)
                    .await?;
                check_media_status(&res)?;
                Ok((url, res, slot))
            }
        })
        .await;
    let (index, (url, res, slot)) = opened.inspect_err(|e| {
        viewing.upstream_error(e);
        tracing::warn!(stream_id = %stream.id, error = %e, "direct upstream failed");
    })?;
    Ok((index, url, res, slot))
}

/// One viewer's own direct upstream: a GET's body continues across failures; the body
/// holds the connection's provider slot until it is dropped.
fn relay_direct(
    state: &AppState,
    stream: Arc<StreamEntry>,
    method: &Method,
    (index, url, res, slot): Opened,
    viewing: Viewing,
) -> Result<Response, ApiError> {
    if method == Method::GET && res.status().is_success() {
        let upstream = state.upstream.clone();
        return relay(res, &url, UriKind::Media, viewing, false, move |res| {
            DirectFeed::new(upstream, stream, index, res, slot).into_stream()
        });
    }
    relay(res, &url, UriKind::Media, viewing, false, |res| {
        holding(plain_body(res), slot)
    })
}

/// `body`, holding `held` (a provider slot) until it is dropped.
fn holding<T: Send + 'static>(
    body: BoxStream<'static, Result<Chunk, UpstreamError>>,
    held: T,
) -> BoxStream<'static, Result<Chunk, UpstreamError>> {
    futures_util::stream::unfold((body, held), |(mut body, held)| async move {
        let item = body.next().await?;
        Some((item, (body, held)))
    })
    .boxed()
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
fn shared_live_response(
    status: StatusCode,
    headers: HeaderMap,
    body: ViewerBody,
    viewing: Viewing,
) -> Response {
    let mut builder = Response::builder().status(status).extension(Relayed);
    *builder.headers_mut().expect("fresh builder") = headers;
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

async fn find_stream(state: &AppState, id: &str) -> Result<Arc<StreamEntry>, ApiError> {
    state
        .stream(id)
        .await
        .ok_or_else(|| ApiError::stream_not_found(id))
}

/// The stream behind an `/hls/{id}/...` route. A stream known to be direct has no playlist:
/// its player is sent to `/stream/{id}` at once (`up` climbs from the route to the root,
/// relative so a reverse proxy's path prefix is kept), and the origin is not asked for a
/// playlist it does not have.
async fn find_hls_stream(
    state: &AppState,
    id: &str,
    up: &str,
    query: Option<&str>,
) -> Result<Arc<StreamEntry>, ApiError> {
    let stream = find_stream(state, id).await?;
    if stream.settings().stream_type == StreamType::Direct {
        let query = query.map(|q| format!("?{q}")).unwrap_or_default();
        return Err(ApiError::redirect(
            "direct_stream",
            format!("{up}stream/{id}{query}"),
            format!("stream {id} is a direct stream, not HLS: play /stream/{id}"),
        ));
    }
    Ok(stream)
}

/// The client behind a request: the id carried in a reference, else the one the
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
    let (client, _new) = state.registry.client_named(
        &id,
        &stream.id,
        &ip,
        &viewer.user_agent,
        viewer.username.as_deref(),
    );
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
    let mut builder = Response::builder().status(status).extension(Relayed);
    *builder.headers_mut().expect("fresh builder") = relayed_headers(&res, url, kind);
    Ok(builder
        .body(counted_body(body(res), viewing))
        .expect("relayed headers are valid"))
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
    let mut builder = Response::builder().status(head.status).extension(Relayed);
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
    // The client's token is a child of the stream's: deleting either ends the body.
    let closed = viewing.client.closed.clone().cancelled_owned();
    Body::from_stream(CountedBody {
        inner,
        viewing,
        closed: Box::pin(closed),
        done: false,
    })
}

/// A relayed body that counts bytes as they are handed to the player (and the faults a
/// failover feed recovered from), ends when the stream is deleted, and releases the
/// viewer's connection when dropped (the player hung up or the body ended). Dropping it
/// drops the upstream response, which cancels the upstream request.
///
/// Per chunk it does atomics only: a flowing body sees a deletion through
/// [`StreamEntry::is_closed`]; the stream's token (whose locks every viewer of the
/// stream shares) is polled only while the body waits for bytes.
struct CountedBody {
    inner: BoxStream<'static, Result<Chunk, UpstreamError>>,
    viewing: Viewing,
    /// Resolves when the stream is deleted.
    closed: Pin<Box<dyn Future<Output = ()> + Send>>,
    done: bool,
}

impl Stream for CountedBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done || self.viewing.stream.is_closed() {
            self.done = true;
            return Poll::Ready(None);
        }
        loop {
            return match self.inner.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(Chunk::Bytes(bytes)))) => {
                    self.viewing.add_bytes(bytes.len() as u64);
                    Poll::Ready(Some(Ok(bytes)))
                }
                Poll::Ready(Some(Ok(Chunk::Fault(e, at)))) => {
                    self.viewing.upstream_error_at(&e, at);
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
                Poll::Pending if self.closed.poll_unpin(cx).is_ready() => {
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

    fn viewing() -> Viewing {
        let registry = Arc::new(crate::registry::Registry::new(b"k"));
        let (stream, _) = registry.upsert(crate::stream::StreamSettings {
            original_url: Url::parse("http://o/live.ts").unwrap(),
            failover_urls: Vec::new(),
            user_agent: None,
            headers: HeaderMap::new(),
            metadata: None,
            stream_type: StreamType::Direct,
            provider: None,
            options: Default::default(),
        });
        let (client, _) = registry.client("c", &stream.id, "127.0.0.1", "ua");
        Viewing::new(registry, stream, client)
    }

    fn body(
        inner: BoxStream<'static, Result<Chunk, UpstreamError>>,
        viewing: Viewing,
        closed: impl Future<Output = ()> + Send + 'static,
    ) -> CountedBody {
        CountedBody {
            inner,
            viewing,
            closed: Box::pin(closed),
            done: false,
        }
    }

    #[tokio::test]
    async fn a_flowing_body_touches_no_lock_of_the_stream_per_chunk() {
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = polls.clone();
        // Stands for the stream's cancellation token: counts how often it is looked at.
        let closed = futures_util::future::poll_fn(move |_| {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Poll::<()>::Pending
        });
        let chunks = (0..1000).map(|_| Ok(Chunk::Bytes(Bytes::from_static(&[0x47; 188]))));
        let viewing = viewing();
        let stream = viewing.stream.clone();
        let mut body = body(futures_util::stream::iter(chunks).boxed(), viewing, closed);
        let mut bytes = 0;
        while let Some(chunk) = body.next().await {
            bytes += chunk.unwrap().len();
        }
        assert_eq!(bytes, 188_000);
        assert_eq!(
            crate::registry::Counters::get(&stream.counters.bytes),
            188_000
        );
        assert_eq!(polls.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn deleting_the_stream_ends_flowing_and_waiting_bodies() {
        let viewing = viewing();
        let (registry, stream) = (viewing.registry.clone(), viewing.stream.clone());
        let endless =
            futures_util::stream::repeat_with(|| Ok(Chunk::Bytes(Bytes::from_static(b"x"))));
        let closed = stream.closed.clone().cancelled_owned();
        let mut flowing = body(endless.boxed(), viewing, closed);
        assert!(flowing.next().await.is_some());

        let waiting_viewing = Viewing::new(
            registry.clone(),
            stream.clone(),
            registry.client("d", &stream.id, "127.0.0.1", "ua").0,
        );
        let closed = stream.closed.clone().cancelled_owned();
        let mut waiting = body(
            futures_util::stream::pending().boxed(),
            waiting_viewing,
            closed,
        );
        let waiting = tokio::spawn(async move { waiting.next().await.is_none() });
        tokio::task::yield_now().await;

        registry.remove_stream(&stream.id, crate::registry::Removal::Deleted);
        assert!(flowing.next().await.is_none());
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await;
        assert!(ended.unwrap().unwrap());
    }
}
