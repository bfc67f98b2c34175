//! One player connection: admitted against the limits, served by hyper's HTTP/1 in spells
//! (hyper's connection is made at the client's first byte and given up after a quarter of
//! a second idle, so a player between requests holds only its socket), closed by its
//! clock when the client owes a request for too long, and each request held to the size
//! limits before the router sees it.
//!
//! Nothing here looks at a chunk of a response: the body is passed through with a guard
//! that marks the end of the request, so a viewer streaming for hours is never timed.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::config::ConnectionSettings;
use crate::connections::{
    Activity, AddressSlot, Admitted, Connections, Refusal, Timeout, TooLarge,
};
use crate::model::ErrorBody;

/// Largest request body (management JSON); beyond it, 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Largest request head (request line and headers); beyond it, 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest request target (path and query); beyond it, 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// What hyper itself buffers for a request head before it answers a bare 431. Above
/// [`MAX_HEAD_BYTES`] so that heads a little too large get the API's JSON answer; a head
/// larger than this is cut off without reading it all.
const HARD_HEAD_BYTES: usize = 2 * MAX_HEAD_BYTES;

/// The most hyper buffers in each direction of a connection: its read buffer (which must
/// hold a whole request head, hence [`HARD_HEAD_BYTES`]) and the response bytes queued
/// for a player that reads slower than they come. hyper's default, about 400 KB, let
/// each paced viewer hold that much more.
const MAX_BUF_BYTES: usize = HARD_HEAD_BYTES;

/// Refused connections still being answered; beyond this, a refused connection is
/// closed without an answer so that refusing costs no more than a moment.
const MAX_REFUSING: usize = 256;
/// How long a refused connection may take to read its 503.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// How long a connection we end after a request with a body goes on reading what the
/// client still sends, so that its answer (a 413 before an upload's end) reaches it rather
/// than a reset.
const BODY_LINGER: Duration = Duration::from_secs(2);
/// How long a connection sits idle between requests before hyper's part of it (its read
/// and write buffers, 16 KB) is given up until the next byte: longer than the gap between
/// back-to-back requests, shorter than a player's wait for its next segment.
const PARK_AFTER: Duration = Duration::from_millis(250);

/// What every connection task shares.
pub(super) struct Shared {
    pub limits: ConnectionSettings,
    pub trusted_proxies: Vec<IpAddr>,
    pub connections: Arc<Connections>,
    /// Refused connections whose 503 is being written.
    pub refusing: AtomicUsize,
    pub app: Router,
}

impl Shared {
    /// Admits a new connection and spawns its task, or refuses it at once.
    pub fn accept(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, stop: watch::Receiver<bool>) {
        // Without TCP_NODELAY, Nagle's algorithm holds back the second small write of a
        // streamed body until the player's delayed ACK: a 40 ms stall on some requests.
        let _ = tcp.set_nodelay(true);
        // Behind a trusted proxy, its clients are counted per request, by forwarded address.
        let direct = (!self.trusted_proxies.contains(&peer.ip())).then_some(peer.ip());
        match self.connections.admit(direct) {
            Ok(admitted) => {
                tokio::spawn(self.serve(tcp, peer, admitted, stop));
            }
            Err(refusal) => self.refuse(tcp, refusal),
        }
    }

    /// Answers a refused connection with a 503 and closes it. The answer is written
    /// without waiting; the socket then lingers briefly so that closing it with the
    /// request unread does not reset the connection before the client reads the answer.
    fn refuse(self: Arc<Self>, tcp: TcpStream, refusal: Refusal) {
        let answer = refusal_answer(refusal, &self.connections);
        if tcp.try_write(&answer).is_err() || self.refusing.fetch_add(1, Relaxed) >= MAX_REFUSING {
            self.refusing.fetch_sub(1, Relaxed);
            return;
        }
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REFUSAL_LINGER, drain_and_close(tcp)).await;
            self.refusing.fetch_sub(1, Relaxed);
        });
    }

    /// Serves the connection in spells: hyper's connection (with its buffers, 16 KB) is
    /// made when the client sends a byte and given up once the connection has been idle
    /// for [`PARK_AFTER`], so that a player between requests holds only its socket.
    async fn serve(
        self: Arc<Self>,
        mut tcp: TcpStream,
        peer: SocketAddr,
        admitted: Admitted,
        mut stop: watch::Receiver<bool>,
    ) {
        let limits = self.limits;
        let activity = Arc::new(Activity::new(
            limits.header_read_timeout,
            limits.keepalive_timeout,
        ));
        // Whether the last request came with a body, which may be left unread.
        let had_body = Arc::new(AtomicBool::new(false));
        let mut builder = hyper::server::conn::http1::Builder::new();
        // Our own clock (`Activity`) times heads and idle spells; hyper's would also cut
        // idle keep-alive connections at the header timeout.
        builder
            .header_read_timeout(None)
            .max_header_size(HARD_HEAD_BYTES)
            .max_buf_size(MAX_BUF_BYTES);
        // What hyper had read of the next request when it was given up.
        let mut unread = Bytes::new();
        loop {
            if unread.is_empty() && !self.parked(&tcp, peer, &activity, &mut stop).await {
                break;
            }
            let io = TokioIo::new(Watched {
                tcp,
                unread,
                activity: activity.clone(),
            });
            let service = {
                let activity = activity.clone();
                let had_body = had_body.clone();
                let shared = self.clone();
                hyper::service::service_fn(move |req: Request<Incoming>| {
                    had_body.store(!http_body::Body::is_end_stream(req.body()), Relaxed);
                    // Boxed so that the connection is `Unpin` and gives its socket back.
                    Box::pin(shared.clone().request(peer, activity.clone(), req))
                })
            };
            // Boxed: a parked connection's task holds no hyper state at all.
            let mut conn = Box::new(builder.serve_connection(io, service));
            let (mut stopping, mut parking, mut ended_here) = (false, false, false);
            loop {
                let expired = until(activity.deadline().map(|(at, _)| at));
                let idle_since = activity.idle_since().filter(|_| !had_body.load(Relaxed));
                let park = until(idle_since.map(|since| since + PARK_AFTER));
                tokio::select! {
                    result = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => {
                        match result {
                            Ok(()) => ended_here = true,
                            Err(e) => tracing::trace!(error = %e, %peer, "connection ended"),
                        }
                        break;
                    }
                    () = activity.changed() => {}
                    () = expired => {
                        if self.timed_out(&activity, peer) {
                            break;
                        }
                    }
                    _ = stop.wait_for(|stop| *stop), if !stopping => {
                        stopping = true;
                        Pin::new(&mut *conn).graceful_shutdown();
                    }
                    () = park, if !stopping && !parking => {
                        // Idle after a request without a body (hyper has read all of it,
                        // and no response head is still to be written): hyper ends at
                        // once, or once it has flushed the last response, and what the
                        // client sent since is handed to the next spell. After a body,
                        // which the handler may have left unread, hyper keeps the
                        // connection.
                        if activity.idle_since() == idle_since {
                            parking = true;
                            Pin::new(&mut *conn).graceful_shutdown();
                        }
                    }
                }
            }
            if !ended_here {
                break;
            }
            let parts = (*conn).into_parts();
            let watched = parts.io.into_inner();
            tcp = watched.tcp;
            if parking && !stopping {
                // hyper read what it holds before what `Watched` had still to give it.
                unread = if watched.unread.is_empty() {
                    parts.read_buf
                } else {
                    [&parts.read_buf[..], &watched.unread[..]].concat().into()
                };
                continue;
            }
            if had_body.load(Relaxed) {
                // An unread body in the socket would make closing it send a reset, which
                // can reach the client before our answer does: read the rest first.
                let _ = tokio::time::timeout(BODY_LINGER, drain_and_close(tcp)).await;
            }
            break;
        }
        drop(admitted);
    }

    /// Waits, holding nothing but the socket, until the client sends a byte (true), or
    /// its time is up, the server stops or the socket fails (false).
    async fn parked(
        &self,
        tcp: &TcpStream,
        peer: SocketAddr,
        activity: &Activity,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        loop {
            let expired = until(activity.deadline().map(|(at, _)| at));
            tokio::select! {
                ready = tcp.readable() => return ready.is_ok(),
                () = expired => {
                    if self.timed_out(activity, peer) {
                        return false;
                    }
                }
                _ = stop.wait_for(|stop| *stop) => return false,
            }
        }
    }

    /// Whether the connection's deadline has passed (counted and logged if so).
    fn timed_out(&self, activity: &Activity, peer: SocketAddr) -> bool {
        let now = tokio::time::Instant::now();
        match activity.deadline().filter(|(at, _)| *at <= now) {
            Some((_, why)) => {
                self.connections.count_timeout(why);
                tracing::debug!(%peer, timeout = why.label(), "closing a silent connection");
                true
            }
            None => false,
        }
    }

    /// One request: held to the size limits, its body read in full within the header
    /// timeout, then routed; the response body carries the guard that ends the request.
    async fn request(
        self: Arc<Self>,
        peer: SocketAddr,
        activity: Arc<Activity>,
        req: Request<Incoming>,
    ) -> Result<Response<Tracked>, Infallible> {
        activity.request_started();
        // Made before any await: a request dropped half-way (its client left) ends too.
        let mut guard = RequestGuard {
            activity,
            _address: None,
        };
        let response = match self.admit_request(peer, &req) {
            Ok(address) => {
                guard._address = address;
                self.route(peer, req).await
            }
            Err(rejection) => rejection.response(&self.connections),
        };
        Ok(response.map(|body| Tracked {
            body,
            _guard: guard,
        }))
    }

    /// Checks the request head against the limits and, through a trusted proxy, the
    /// forwarded address against the per-address limit.
    fn admit_request(
        &self,
        peer: SocketAddr,
        req: &Request<Incoming>,
    ) -> Result<Option<AddressSlot>, Rejection> {
        let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let too_large = if uri_len > MAX_URI_BYTES {
            Some(TooLarge::Uri)
        } else if head_len(req.method().as_str(), uri_len, req.headers()) > MAX_HEAD_BYTES {
            Some(TooLarge::Head)
        } else if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64)
            && !crate::api::is_list_upload(req.method(), req.uri(), req.headers())
        {
            Some(TooLarge::Body)
        } else {
            None
        };
        if let Some(what) = too_large {
            self.connections.count_too_large(what);
            return Err(Rejection::TooLarge(what));
        }
        if !self.trusted_proxies.contains(&peer.ip()) {
            return Ok(None);
        }
        let Some(client) = crate::api::forwarded_ip(req.headers(), &self.trusted_proxies) else {
            return Ok(None);
        };
        self.connections
            .admit_address(client)
            .map_err(Rejection::Refused)
    }

    /// Reads the body (bounded in size and time) and hands the request to the router.
    async fn route(&self, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        let body = if http_body::Body::is_end_stream(&body) {
            Body::empty()
        } else if crate::api::is_list_upload(&parts.method, &parts.uri, &parts.headers) {
            // A channel list (up to CHANNEL_LIST_MAX_MB) is read by its handler as it
            // arrives, bounded there in size and in the time between chunks.
            Body::new(body)
        } else {
            // Bodies are small JSON documents: reading them here, whole, bounds the time
            // a client may take to send one, which a handler reading it would not.
            let read = axum::body::to_bytes(Body::new(body), MAX_BODY_BYTES);
            match tokio::time::timeout(self.limits.header_read_timeout, read).await {
                Ok(Ok(bytes)) => Body::from(bytes),
                // A declared length was checked already: this one had none, or lied.
                Ok(Err(_)) => {
                    self.connections.count_too_large(TooLarge::Body);
                    return closing(body_too_large());
                }
                Err(_) => {
                    self.connections.count_timeout(Timeout::RequestBody);
                    return closing(json_error(
                        StatusCode::REQUEST_TIMEOUT,
                        "request_timeout",
                        format!(
                            "the request body did not arrive within {} s",
                            self.limits.header_read_timeout.as_secs_f64()
                        ),
                    ));
                }
            }
        };
        parts.extensions.insert(ConnectInfo(peer));
        let req = Request::from_parts(parts, body);
        match self.app.clone().oneshot(req).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// Why a request was answered before it reached the router.
enum Rejection {
    TooLarge(TooLarge),
    /// The forwarded client is at the per-address limit.
    Refused(Refusal),
}

impl Rejection {
    fn response(self, connections: &Connections) -> Response<Body> {
        match self {
            // The whole URL was read: the connection can go on.
            Rejection::TooLarge(TooLarge::Uri) => json_error(
                StatusCode::URI_TOO_LONG,
                "uri_too_long",
                format!("the request URL is longer than {MAX_URI_BYTES} bytes"),
            ),
            Rejection::TooLarge(TooLarge::Head) => closing(json_error(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "header_too_large",
                format!("the request head is larger than {MAX_HEAD_BYTES} bytes"),
            )),
            Rejection::TooLarge(TooLarge::Body) => closing(body_too_large()),
            Rejection::Refused(refusal) => json_error_from(refusal, connections),
        }
    }
}

/// The size of a request head as sent, near enough: request line and header lines.
fn head_len(method: &str, uri_len: usize, headers: &HeaderMap) -> usize {
    let request_line = method.len() + 1 + uri_len + " HTTP/1.1\r\n".len();
    headers.iter().fold(request_line, |n, (name, value)| {
        n + name.as_str().len() + 2 + value.len() + 2
    })
}

/// `{"detail","code"}` with `status`, built here rather than through `ApiError`, which
/// logs: a flood of refusals must not flood the log.
fn json_error(status: StatusCode, code: &str, detail: String) -> Response<Body> {
    let body = serde_json::to_vec(&ErrorBody {
        detail,
        code: code.to_string(),
        ..ErrorBody::default()
    })
    .unwrap_or_default();
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

fn body_too_large() -> Response<Body> {
    json_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
    )
}

/// Ends the connection after this answer: the rest of what the client sends (an unread
/// body, an oversized head) cannot be told from the next request.
fn closing(mut res: Response<Body>) -> Response<Body> {
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}

fn refusal_detail(refusal: Refusal, connections: &Connections) -> (&'static str, String) {
    match refusal {
        Refusal::Full => (
            "too_many_connections",
            format!(
                "the proxy has {} connections open, its limit; try again shortly",
                connections.max()
            ),
        ),
        Refusal::PerIp => (
            "too_many_connections_per_ip",
            format!(
                "this address has {} connections open, the limit per address",
                connections.per_ip().unwrap_or_default()
            ),
        ),
    }
}

/// A 503 for a request refused by the per-address limit behind a trusted proxy.
fn json_error_from(refusal: Refusal, connections: &Connections) -> Response<Body> {
    let (code, detail) = refusal_detail(refusal, connections);
    let mut res = json_error(StatusCode::SERVICE_UNAVAILABLE, code, detail);
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    res
}

/// The raw HTTP/1.1 503 written to a refused connection.
fn refusal_answer(refusal: Refusal, connections: &Connections) -> Vec<u8> {
    let (code, detail) = refusal_detail(refusal, connections);
    let body = serde_json::to_string(&ErrorBody {
        detail,
        code: code.to_string(),
        ..ErrorBody::default()
    })
    .unwrap_or_default();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sleeps until `at`, or for ever.
async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Closes our side for writing and reads what the client still sends until it closes.
async fn drain_and_close(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    // On the heap: an array here would make every connection's task 4 KB larger.
    let mut sink = vec![0u8; 4096];
    while let Ok(n) = tcp.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

/// Marks the end of a request when the response body is done or dropped.
struct RequestGuard {
    activity: Arc<Activity>,
    /// The forwarded address's place under the per-address limit, given back with it.
    _address: Option<AddressSlot>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.activity.request_finished();
    }
}

/// A response body that ends its request when hyper is done with it. Every frame passes
/// straight through.
pub(super) struct Tracked {
    body: Body,
    _guard: RequestGuard,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket, telling the connection's clock when bytes arrive; what an earlier spell's
/// hyper had read and not used comes first.
struct Watched {
    tcp: TcpStream,
    unread: Bytes,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.unread.is_empty() {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread.split_to(n));
            this.activity.bytes_read();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_length_counts_the_request_line_and_every_header_line() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("a"));
        // "GET /x HTTP/1.1\r\n" + "host: a\r\n"
        assert_eq!(head_len("GET", 2, &headers), 17 + 9);
    }

    #[test]
    fn a_refused_connection_reads_a_complete_json_503() {
        let c = Connections::new(100, None, 1024);
        let answer = String::from_utf8(refusal_answer(Refusal::Full, &c)).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let body: ErrorBody = serde_json::from_str(body).unwrap();
        assert_eq!(body.code, "too_many_connections");
        assert!(body.detail.contains("100"), "{}", body.detail);
    }
}
