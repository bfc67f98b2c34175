//! A local HTTP origin for integration tests: in-memory files, directories, redirects and an
//! endless live TS feed on 127.0.0.1:0, with faults injected per path on command (refuse,
//! hang, stall or cut mid-body, 5xx, HTML that lies about being a playlist, die mid-stream).
//!
//! It records every request before applying faults, so tests can assert what the proxy asked
//! for. It must stay a faithful, boring origin when no fault is set: correct lengths, ranges
//! and validators, nothing clever. It never touches the network beyond loopback.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::future::{pending, Future};
use std::io;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, Request, Response, StatusCode};
use axum::serve::{IncomingStream, Listener};
use axum::Router;
use bytes::{Bytes, BytesMut};
use futures_util::{stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Size of an MPEG-TS packet; the live feed is always cut on this boundary.
pub const TS_PACKET: usize = 188;

/// What a path does instead of answering normally.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status and a short text body.
    Status(u16),
    /// 200 `text/html` with an HTML page: an origin (or captive portal) that lies.
    Html,
    /// Accept and read the request, never answer.
    Hang,
    /// Answer normally after this delay.
    FirstByteDelay(Duration),
    /// Send the headers (with the full Content-Length) and N body bytes, then drop the connection.
    CutAfter(usize),
    /// Send N body bytes, then keep the connection open sending nothing.
    StallAfter(usize),
    /// Send N body bytes, then end the body cleanly (a chunked answer's last chunk).
    EndAfter(usize),
    /// Drop the connection without answering.
    Reset,
    /// Apply the inner fault to the next N requests, then behave normally.
    Times(u32, Box<Fault>),
}

/// One request as the origin saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub query: Option<String>,
    pub headers: HeaderMap,
}

/// A handle on a running origin; clones share it (e.g. with a task that updates a playlist).
#[derive(Clone)]
pub struct Origin {
    pub addr: SocketAddr,
    state: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Exact path (no query) to what is served there. A std mutex: never held across `.await`.
    routes: Mutex<HashMap<String, Route>>,
    /// URL prefix to directory, searched when no exact route matches.
    dirs: Mutex<Vec<(String, PathBuf)>>,
    faults: Mutex<HashMap<String, Fault>>,
    seen: Mutex<HashMap<String, (usize, Seen)>>,
    /// Every request in arrival order, for assertions across paths.
    log: Mutex<Vec<(String, Seen)>>,
    /// Parent of every connection's token: cancelling it is `kill`.
    killed: CancellationToken,
    listener_closed: AtomicBool,
    open_connections: AtomicUsize,
}

#[derive(Clone)]
enum Route {
    File(File),
    Redirect {
        to: String,
        status: StatusCode,
    },
    LiveTs {
        bytes_per_sec: u64,
        started: Instant,
    },
    Paced {
        body: Bytes,
        bytes_per_sec: u64,
    },
    Chunked {
        body: Bytes,
        content_type: String,
    },
}

#[derive(Clone)]
struct File {
    body: Bytes,
    content_type: String,
    etag: String,
    last_modified: String,
}

impl File {
    fn new(body: Bytes, content_type: &str, modified: SystemTime) -> File {
        let since_epoch = modified
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let when = chrono::DateTime::<chrono::Utc>::from(modified);
        File {
            etag: format!("\"{:x}-{:x}\"", body.len(), since_epoch.as_nanos()),
            last_modified: when.format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
            content_type: content_type.to_owned(),
            body,
        }
    }
}

impl Origin {
    /// Listens on 127.0.0.1:0 and serves from a background task until `kill` or the end of
    /// the test's runtime.
    pub async fn start() -> Origin {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = tcp.local_addr().expect("origin address");
        let state = Arc::new(Shared::default());
        let listener = OriginListener {
            tcp: Some(tcp),
            state: state.clone(),
        };
        let app = Router::new()
            .fallback(handle)
            .with_state(state.clone())
            .into_make_service_with_connect_info::<Conn>();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Origin { addr, state }
    }

    /// `http://127.0.0.1:PORT` + path (which may carry a query).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Serves `body` at `path` (no query); replaces whatever was there, with a new ETag.
    pub fn put(&self, path: &str, body: impl Into<Bytes>, content_type: &str) {
        let file = File::new(body.into(), content_type, SystemTime::now());
        self.set_route(path, Route::File(file));
    }

    /// Serves the files under `dir` at `prefix/...`, content type by extension.
    pub fn serve_dir(&self, prefix: &str, dir: &Path) {
        let prefix = prefix.trim_end_matches('/').to_owned();
        self.state
            .dirs
            .lock()
            .unwrap()
            .push((prefix, dir.to_owned()));
    }

    /// Answers `path` with `status` and `Location: to` (absolute or relative, sent as given).
    pub fn redirect(&self, path: &str, to: &str, status: u16) {
        let status = StatusCode::from_u16(status).expect("redirect status");
        let to = to.to_owned();
        self.set_route(path, Route::Redirect { to, status });
    }

    /// An endless MPEG-TS-like body at roughly `bytes_per_sec`, without Content-Length. Each
    /// 188-byte packet starts with 0x47 and carries a running packet number (see
    /// [`ts_packet_number`]) that counts from when this path was set up, like a live channel:
    /// two viewers at the same moment see the same numbers.
    pub fn live_ts(&self, path: &str, bytes_per_sec: u64) {
        let started = Instant::now();
        self.set_route(
            path,
            Route::LiveTs {
                bytes_per_sec,
                started,
            },
        );
    }

    /// Sends `body` (real media, e.g. a TS recording) from its start at `bytes_per_sec`,
    /// without Content-Length, then ends: a live channel as a player sees it, that a test can
    /// decode. Each request gets its own copy from byte 0.
    pub fn paced(&self, path: &str, body: impl Into<Bytes>, bytes_per_sec: u64) {
        let body = body.into();
        self.set_route(
            path,
            Route::Paced {
                body,
                bytes_per_sec,
            },
        );
    }

    /// Sends `body` as fast as it goes, in 64 KB chunks without Content-Length and without
    /// ranges, then ends cleanly: a file from an origin that streams everything chunked.
    pub fn chunked(&self, path: &str, body: impl Into<Bytes>, content_type: &str) {
        let body = body.into();
        let content_type = content_type.to_owned();
        self.set_route(path, Route::Chunked { body, content_type });
    }

    /// Removes what `put`, `redirect` or `live_ts` set at `path` (it becomes 404).
    pub fn remove(&self, path: &str) {
        self.state.routes.lock().unwrap().remove(path);
    }

    /// Sets the fault of `path`, replacing any previous one.
    pub fn fault(&self, path: &str, fault: Fault) {
        self.state
            .faults
            .lock()
            .unwrap()
            .insert(path.to_owned(), fault);
    }

    pub fn clear_fault(&self, path: &str) {
        self.state.faults.lock().unwrap().remove(path);
    }

    /// Requests seen for `path` (query ignored), any method, faulted or not.
    pub fn hits(&self, path: &str) -> usize {
        let seen = self.state.seen.lock().unwrap();
        seen.get(path).map_or(0, |(hits, _)| *hits)
    }

    /// Every request so far, in arrival order, as `(path, what was seen)`.
    pub fn requests(&self) -> Vec<(String, Seen)> {
        self.state.log.lock().unwrap().clone()
    }

    /// TCP connections open to this origin now.
    pub fn open_connections(&self) -> usize {
        self.state.open_connections.load(Ordering::SeqCst)
    }

    pub fn last_request(&self, path: &str) -> Option<Seen> {
        let seen = self.state.seen.lock().unwrap();
        seen.get(path).map(|(_, last)| last.clone())
    }

    /// Dies like a crashed server: stops listening (later connects are refused) and drops
    /// every open connection, including ones mid-body. Returns once both have happened.
    pub async fn kill(&self) {
        self.state.killed.cancel();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.state.listener_closed.load(Ordering::SeqCst)
            || self.state.open_connections.load(Ordering::SeqCst) > 0
        {
            assert!(
                Instant::now() < deadline,
                "origin connections did not close"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn set_route(&self, path: &str, route: Route) {
        assert!(
            path.starts_with('/') && !path.contains('?'),
            "bad path {path}"
        );
        self.state
            .routes
            .lock()
            .unwrap()
            .insert(path.to_owned(), route);
    }
}

/// The packet number carried by a packet of [`Origin::live_ts`], or `None` if `packet` is
/// not one of them.
pub fn ts_packet_number(packet: &[u8]) -> Option<u64> {
    if packet.len() < 12 || packet[0] != 0x47 {
        return None;
    }
    Some(u64::from_be_bytes(packet[4..12].try_into().unwrap()))
}

fn ts_packet(number: u64) -> [u8; TS_PACKET] {
    let mut packet = [0xff; TS_PACKET];
    // Sync byte, PID 0x100, payload only with a continuity counter: enough TS for a sniffer.
    packet[..4].copy_from_slice(&[0x47, 0x01, 0x00, 0x10 | (number & 0x0f) as u8]);
    packet[4..12].copy_from_slice(&number.to_be_bytes());
    packet
}

async fn handle(
    State(state): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    request: Request<Body>,
) -> Response<Body> {
    // Only the head matters (no route reads a body), and a `Body` is not `Sync`.
    let (request, _body) = request.into_parts();
    let path = request.uri.path().to_owned();
    let seen = Seen {
        method: request.method.clone(),
        query: request.uri.query().map(str::to_owned),
        headers: request.headers.clone(),
    };
    state.log.lock().unwrap().push((path.clone(), seen.clone()));
    state
        .seen
        .lock()
        .unwrap()
        .entry(path.clone())
        .and_modify(|entry| *entry = (entry.0 + 1, seen.clone()))
        .or_insert((1, seen));

    let fault = take_fault(&state, &path);
    let token = conn.token;
    match fault {
        None => serve(&state, &request, &token).await,
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(code).expect("fault status");
            text(
                status,
                "text/plain",
                format!("origin fault: status {code}\n"),
            )
        }
        Some(Fault::Html) => text(
            StatusCode::OK,
            "text/html; charset=utf-8",
            "<!DOCTYPE html><html><head><title>Welcome</title></head>\
             <body><h1>Please log in</h1></body></html>\n"
                .to_owned(),
        ),
        Some(Fault::Hang) => {
            token.cancelled().await;
            closed_connection()
        }
        Some(Fault::FirstByteDelay(delay)) => {
            tokio::select! {
                _ = tokio::time::sleep(delay) => serve(&state, &request, &token).await,
                _ = token.cancelled() => closed_connection(),
            }
        }
        Some(Fault::CutAfter(limit)) => {
            let response = serve(&state, &request, &token).await;
            response.map(|body| truncate(body, limit, None))
        }
        Some(Fault::StallAfter(limit)) => {
            let response = serve(&state, &request, &token).await;
            response.map(|body| truncate(body, limit, Some(token)))
        }
        Some(Fault::EndAfter(limit)) => {
            let response = serve(&state, &request, &token).await;
            response.map(|body| {
                let data = body.into_data_stream();
                Body::from_stream(data.scan(Some(limit), |state, chunk| {
                    let Some(left) = *state else {
                        return std::future::ready(None);
                    };
                    let chunk = chunk.map(|c| c.slice(..c.len().min(left)));
                    let left = left - chunk.as_ref().map_or(0, Bytes::len);
                    *state = (left > 0).then_some(left);
                    std::future::ready(Some(chunk))
                }))
            })
        }
        Some(Fault::Reset) => {
            token.cancel();
            closed_connection()
        }
        Some(Fault::Times(..)) => unreachable!("take_fault unwraps Times"),
    }
}

/// The fault to apply to this request, counting down `Times`.
fn take_fault(state: &Shared, path: &str) -> Option<Fault> {
    let mut faults = state.faults.lock().unwrap();
    let fault = faults.get_mut(path)?;
    let Fault::Times(left, inner) = fault else {
        return Some(fault.clone());
    };
    let inner = (**inner).clone();
    *left = left.saturating_sub(1);
    if *left == 0 {
        faults.remove(path);
    }
    // Nested counts make no sense; the outermost one wins.
    let mut inner = inner;
    while let Fault::Times(_, innermost) = inner {
        inner = *innermost;
    }
    Some(inner)
}

/// What a handler returns once its connection was cancelled: the write fails in `ConnIo`, so
/// none of it reaches the client.
fn closed_connection() -> Response<Body> {
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        "text/plain",
        String::new(),
    )
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .unwrap()
}

async fn serve(state: &Shared, request: &Parts, token: &CancellationToken) -> Response<Body> {
    let path = request.uri.path();
    let route = state.routes.lock().unwrap().get(path).cloned();
    let response = match route {
        Some(Route::File(file)) => serve_file(&file, &request.headers),
        Some(Route::Redirect { to, status }) => Response::builder()
            .status(status)
            .header(header::LOCATION, to)
            .body(Body::empty())
            .unwrap(),
        Some(Route::LiveTs {
            bytes_per_sec,
            started,
        }) => live_body(bytes_per_sec, started, token.clone()),
        Some(Route::Paced {
            body,
            bytes_per_sec,
        }) => paced_body(body, bytes_per_sec),
        Some(Route::Chunked { body, content_type }) => {
            let chunks: Vec<Result<Bytes, Infallible>> = (0..body.len())
                .step_by(64 * 1024)
                .map(|at| Ok(body.slice(at..body.len().min(at + 64 * 1024))))
                .collect();
            Response::builder()
                .header(header::CONTENT_TYPE, content_type)
                .body(Body::from_stream(stream::iter(chunks)))
                .unwrap()
        }
        None => match find_in_dirs(state, path).await {
            Some(file) => serve_file(&file, &request.headers),
            None => text(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found\n".to_owned(),
            ),
        },
    };
    if request.method == Method::HEAD {
        // Same headers as GET, Content-Length included; hyper sends no body for HEAD.
        return response.map(|_| Body::empty());
    }
    response
}

async fn find_in_dirs(state: &Shared, path: &str) -> Option<File> {
    let dirs = state.dirs.lock().unwrap().clone();
    for (prefix, dir) in dirs {
        let Some(rest) = path.strip_prefix(&prefix) else {
            continue;
        };
        let rest = Path::new(rest.trim_start_matches('/'));
        if !rest.components().all(|c| matches!(c, Component::Normal(_))) {
            return None;
        }
        let full = dir.join(rest);
        let Ok(body) = tokio::fs::read(&full).await else {
            continue;
        };
        let modified = tokio::fs::metadata(&full)
            .await
            .and_then(|meta| meta.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        return Some(File::new(body.into(), content_type_of(&full), modified));
    }
    None
}

pub fn content_type_of(path: &Path) -> &'static str {
    match path.extension().and_then(|ext| ext.to_str()).unwrap_or("") {
        "m3u8" => "application/vnd.apple.mpegurl",
        "m3u" => "audio/x-mpegurl",
        "ts" => "video/mp2t",
        "m4s" => "video/iso.segment",
        "mp4" | "m4v" => "video/mp4",
        "m4a" => "audio/mp4",
        "aac" => "audio/aac",
        "vtt" => "text/vtt",
        "mkv" => "video/x-matroska",
        "webm" => "video/webm",
        "html" => "text/html",
        "json" => "application/json",
        _ => "application/octet-stream",
    }
}

fn serve_file(file: &File, headers: &HeaderMap) -> Response<Body> {
    let len = file.body.len() as u64;
    let builder = Response::builder()
        .header(header::CONTENT_TYPE, &file.content_type)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, &file.etag)
        .header(header::LAST_MODIFIED, &file.last_modified);
    let range = headers
        .get(header::RANGE)
        .and_then(|value| value.to_str().ok())
        .filter(|_| if_range_holds(file, headers))
        .and_then(|value| parse_range(value, len));
    match range {
        None => builder
            .header(header::CONTENT_LENGTH, len)
            .body(Body::from(file.body.clone())),
        Some(Err(Unsatisfiable)) => builder
            .status(StatusCode::RANGE_NOT_SATISFIABLE)
            .header(header::CONTENT_RANGE, format!("bytes */{len}"))
            .body(Body::empty()),
        Some(Ok((first, last))) => builder
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {first}-{last}/{len}"))
            .header(header::CONTENT_LENGTH, last - first + 1)
            .body(Body::from(file.body.slice(first as usize..=last as usize))),
    }
    .unwrap()
}

/// `If-Range` absent, or naming the current ETag or Last-Modified exactly.
fn if_range_holds(file: &File, headers: &HeaderMap) -> bool {
    match headers.get(header::IF_RANGE) {
        None => true,
        Some(value) => value == file.etag.as_str() || value == file.last_modified.as_str(),
    }
}

struct Unsatisfiable;

/// One `bytes=` range as inclusive offsets. `None` means "ignore the header and send it
/// all" (malformed or multi-range, as RFC 9110 allows).
fn parse_range(value: &str, len: u64) -> Option<Result<(u64, u64), Unsatisfiable>> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        let suffix: u64 = last.parse().ok()?;
        if suffix == 0 || len == 0 {
            return Some(Err(Unsatisfiable));
        }
        (len.saturating_sub(suffix), len - 1)
    } else {
        let first: u64 = first.parse().ok()?;
        let last = match last {
            "" => u64::MAX,
            last => last.parse().ok()?,
        };
        if last < first {
            return None;
        }
        if first >= len {
            return Some(Err(Unsatisfiable));
        }
        (first, last.min(len - 1))
    };
    Some(Ok(range))
}

/// The live feed from "now": whole packets every 20 ms until the client or `kill` ends it.
fn live_body(bytes_per_sec: u64, started: Instant, token: CancellationToken) -> Response<Body> {
    let packets_per_sec = (bytes_per_sec / TS_PACKET as u64).max(1);
    let due = move || started.elapsed().as_millis() as u64 * packets_per_sec / 1000;
    let interval = tokio::time::interval(Duration::from_millis(20));
    let chunks = stream::unfold(
        (interval, due(), token),
        move |(mut interval, next, token)| async move {
            tokio::select! {
                _ = interval.tick() => {}
                _ = token.cancelled() => return None,
            }
            // At least one packet per tick so very low rates still trickle.
            let count = due().saturating_sub(next).max(1);
            let mut chunk = BytesMut::with_capacity(count as usize * TS_PACKET);
            for number in next..next + count {
                chunk.extend_from_slice(&ts_packet(number));
            }
            let chunk = Ok::<_, Infallible>(chunk.freeze());
            Some((chunk, (interval, next + count, token)))
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "video/mp2t")
        .body(Body::from_stream(chunks))
        .unwrap()
}

/// `body` in whole TS packets every 20 ms, at `bytes_per_sec`; the connection's own end or
/// a failed write (after `kill`) stops it.
fn paced_body(body: Bytes, bytes_per_sec: u64) -> Response<Body> {
    let per_tick = (bytes_per_sec / 50)
        .next_multiple_of(TS_PACKET as u64)
        .max(TS_PACKET as u64);
    let interval = tokio::time::interval(Duration::from_millis(20));
    let chunks = stream::unfold(
        (interval, body),
        move |(mut interval, mut rest)| async move {
            if rest.is_empty() {
                return None;
            }
            interval.tick().await;
            let chunk = rest.split_to(rest.len().min(per_tick as usize));
            Some((Ok::<_, Infallible>(chunk), (interval, rest)))
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "video/mp2t")
        .body(Body::from_stream(chunks))
        .unwrap()
}

/// Passes the first `limit` body bytes, then fails the body, which makes hyper drop the
/// connection. With `stall_until`, it first sends nothing until that token is cancelled.
fn truncate(body: Body, limit: usize, stall_until: Option<CancellationToken>) -> Body {
    let state = (body.into_data_stream(), limit, stall_until, false);
    Body::from_stream(stream::unfold(
        state,
        |(mut inner, left, stall_until, done)| async move {
            if done {
                return None;
            }
            if left == 0 {
                match &stall_until {
                    Some(token) => token.cancelled().await,
                    // Pending for a moment lets hyper flush what it has buffered (headers
                    // and the first bytes) before the error drops the connection.
                    None => tokio::time::sleep(Duration::from_millis(20)).await,
                }
                let cut = Err(io::Error::other("origin fault: body cut"));
                return Some((cut, (inner, 0, stall_until, true)));
            }
            match inner.next().await? {
                Ok(chunk) => {
                    let chunk = chunk.slice(..chunk.len().min(left));
                    let left = left - chunk.len();
                    Some((Ok(chunk), (inner, left, stall_until, false)))
                }
                Err(err) => Some((Err(io::Error::other(err)), (inner, 0, stall_until, true))),
            }
        },
    ))
}

/// The listener: hands every connection a token (a child of `Shared::killed`) and closes
/// the listening socket on `kill` so later connects are refused.
struct OriginListener {
    tcp: Option<TcpListener>,
    state: Arc<Shared>,
}

/// What a handler knows about its connection: the token that drops it.
#[derive(Clone, Debug)]
struct Conn {
    token: CancellationToken,
}

impl Connected<IncomingStream<'_, OriginListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, OriginListener>) -> Conn {
        stream.remote_addr().clone()
    }
}

impl Listener for OriginListener {
    type Io = ConnIo;
    type Addr = Conn;

    async fn accept(&mut self) -> (ConnIo, Conn) {
        loop {
            let Some(tcp) = &self.tcp else {
                return pending().await;
            };
            let accepted = tokio::select! {
                accepted = tcp.accept() => accepted,
                _ = self.state.killed.cancelled() => {
                    self.tcp = None;
                    self.state.listener_closed.store(true, Ordering::SeqCst);
                    continue;
                }
            };
            // Accept errors (out of descriptors, aborted handshakes) are transient.
            let Ok((stream, _peer)) = accepted else {
                continue;
            };
            let token = self.state.killed.child_token();
            self.state.open_connections.fetch_add(1, Ordering::SeqCst);
            let io = ConnIo {
                stream,
                dropped: Box::pin(token.clone().cancelled_owned()),
                token: token.clone(),
                state: self.state.clone(),
            };
            return (io, Conn { token });
        }
    }

    fn local_addr(&self) -> io::Result<Conn> {
        Ok(Conn {
            token: self.state.killed.child_token(),
        })
    }
}

/// A TCP connection that fails every read and write once its token is cancelled, so hyper
/// drops it at once, whatever it was doing.
struct ConnIo {
    stream: TcpStream,
    /// Registers the connection task's waker, so a cancel wakes an idle connection too.
    dropped: Pin<Box<WaitForCancellationFutureOwned>>,
    token: CancellationToken,
    state: Arc<Shared>,
}

impl ConnIo {
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.token.is_cancelled() || self.dropped.as_mut().poll(cx).is_ready() {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        Ok(())
    }
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        self.state.open_connections.fetch_sub(1, Ordering::SeqCst);
    }
}

impl fmt::Debug for ConnIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnIo")
            .field("stream", &self.stream)
            .finish()
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
