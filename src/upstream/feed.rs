//! The client of direct streams (files and live feeds), whose bodies are read for hours at
//! the pace of a player: every read of its connections asks for [`READ_BUF_BYTES`], so a
//! viewer costs a few small buffers however fast its origin could send. A connection whose
//! reader proves to be flat out (a download, not a player: 16 MB with no 4 MB of it slower
//! than a second) reads as much as hyper's adaptive buffer asks instead ([`Paced`]), since
//! 16 KiB reads cost a download about half its speed (one read and one write per 16 KiB;
//! BENCHMARKS.md); such a connection is kept for the downloader's next request only
//! ([`retire_unless_reused`]).
//!
//! Through the shared reqwest client a paced direct viewer held about 1.4 MB (BENCHMARKS.md:
//! 160 MB for 100 file viewers, 36.5 MB through this client): hyper's adaptive read buffer
//! (up to ~400 KB), whose chunks each keep their whole buffer allocation alive until the
//! player has them. reqwest cannot set hyper's read strategy, so direct streams go through
//! hyper-util's client with an exact read size, and keep what reqwest gave them: up to ten redirects (the final URL is
//! the answer's [`url`](reqwest::Response::url)), credentials of a URL sent as basic auth,
//! sensitive headers dropped when a redirect leaves the origin, `Referer` on redirects,
//! TLS through rustls with the webpki roots, HTTP/2 where a TLS origin offers it, the
//! connect timeout, and a body that sends nothing for `read_stall` failing as a timeout
//! (which [`UpstreamError::from_reqwest`] reads as [`UpstreamError::Stalled`]). Answers
//! are handed on as [`reqwest::Response`]s, so the code that judges them is the same for
//! both clients.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use base64::Engine;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_rustls::{ConfigBuilderExt, HttpsConnector};
use hyper_util::client::legacy::connect::{
    capture_connection, CaptureConnection, Connected, Connection, HttpConnector,
};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use reqwest::ResponseBuilderExt;
use tokio::time::Sleep;
use url::Url;

use crate::config::UpstreamTimeouts;
use crate::error::UpstreamError;

/// Bytes each read of a feed connection asks for, and so the size of its read buffer and
/// the largest chunk a feed yields. A viewer holds about four of these (the read buffer,
/// the client's body channel, the feed, the chunk being written) beside what the player
/// connection queues; 16 KiB is 33 ms of a 4 Mbit/s stream, a fraction of the socket's
/// own buffer, and kept 100 real-time file viewers under 40 MB (BENCHMARKS.md).
pub const READ_BUF_BYTES: usize = 16 * 1024;

/// Redirects followed before an answer counts as a failure, as reqwest's default policy.
pub const MAX_REDIRECTS: usize = 10;

/// Headers that do not follow a redirect to another origin (scheme, host or port).
const SENSITIVE: [&str; 5] = [
    "authorization",
    "cookie",
    "cookie2",
    "proxy-authorization",
    "www-authenticate",
];

/// The variables through which reqwest's client finds an outgoing proxy.
const PROXY_VARIABLES: [&str; 6] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// Whether the environment (read through `var`) names an outgoing proxy, which this client
/// does not speak: direct streams then go through reqwest's client like everything else.
pub fn system_proxy(var: impl Fn(&str) -> Option<String>) -> bool {
    PROXY_VARIABLES
        .iter()
        .any(|name| var(name).is_some_and(|v| !v.trim().is_empty()))
}

/// The client of direct streams.
#[derive(Debug, Clone)]
pub struct FeedClient {
    http: Client<HttpsConnector<PacedConnector>, EmptyBody>,
    read_stall: Duration,
}

impl FeedClient {
    pub fn new(timeouts: &UpstreamTimeouts) -> Result<Self, UpstreamError> {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(timeouts.connect));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| UpstreamError::Client(e.to_string()))?
            .with_webpki_roots()
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(PacedConnector(tcp));
        let http = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build(connector);
        Ok(Self {
            http,
            read_stall: timeouts.read_stall,
        })
    }

    /// Sends a body-less request and follows redirects; the answer's `url()` is the URL
    /// that answered. The status is not judged here, and the head's wait is the caller's
    /// to bound.
    pub async fn send(
        &self,
        method: Method,
        url: &Url,
        mut headers: HeaderMap,
    ) -> Result<reqwest::Response, UpstreamError> {
        if !headers.contains_key(header::ACCEPT) {
            headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        }
        let mut method = method;
        let mut url = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let (res, connection) = self.request(&method, &url, &headers).await?;
            let Some(next) = redirect_target(&res, &url)? else {
                return Ok(self.answer(res, url, connection));
            };
            if matches!(
                res.status(),
                StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND | StatusCode::SEE_OTHER
            ) && method != Method::HEAD
            {
                method = Method::GET;
            }
            if !same_origin(&url, &next) {
                for name in SENSITIVE {
                    headers.remove(name);
                }
            }
            headers.remove(header::REFERER);
            if let Some(referer) = referer(&url, &next) {
                headers.insert(header::REFERER, referer);
            }
            // The redirect's body is dropped unread with its connection.
            url = next;
        }
        Err(UpstreamError::Transport("too many redirects".into()))
    }

    async fn request(
        &self,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
    ) -> Result<(axum::http::Response<Incoming>, CaptureConnection), UpstreamError> {
        let mut target = url.clone();
        let mut headers = headers.clone();
        if !target.username().is_empty() || target.password().is_some() {
            let credentials = format!(
                "{}:{}",
                percent_decoded(target.username()),
                percent_decoded(target.password().unwrap_or(""))
            );
            let basic = base64::engine::general_purpose::STANDARD.encode(credentials);
            if let Ok(v) = HeaderValue::from_str(&format!("Basic {basic}")) {
                headers.entry(header::AUTHORIZATION).or_insert(v);
            }
            let _ = target.set_username("");
            let _ = target.set_password(None);
        }
        target.set_fragment(None);
        let mut request = Request::builder()
            .method(method.clone())
            .uri(target.as_str())
            .body(EmptyBody)
            .map_err(|e| UpstreamError::InvalidListedUrl(e.to_string()))?;
        *request.headers_mut() = headers;
        let connection = capture_connection(&mut request);
        let res = self
            .http
            .request(request)
            .await
            .map_err(|e| UpstreamError::from_feed_client(&e))?;
        Ok((res, connection))
    }

    /// The answer as reqwest's type, its body failing after `read_stall` of silence.
    fn answer(
        &self,
        res: axum::http::Response<Incoming>,
        url: Url,
        connection: CaptureConnection,
    ) -> reqwest::Response {
        let (parts, body) = res.into_parts();
        let body = StallingBody {
            inner: body,
            connection: parts
                .extensions
                .get::<Reads>()
                .cloned()
                .map(|r| (connection, r)),
            flat_out: false,
            stall: self.read_stall,
            timer: Box::pin(tokio::time::sleep(self.read_stall)),
        };
        let mut builder = axum::http::Response::builder()
            .status(parts.status)
            .version(parts.version)
            .url(url);
        *builder.headers_mut().expect("fresh builder") = parts.headers;
        let res = builder
            .body(reqwest::Body::wrap(body))
            .expect("the parts of a response");
        reqwest::Response::from(res)
    }
}

/// Where a redirect answer points, if `res` is one to follow: a 301, 302, 303, 307 or
/// 308 with a `Location` that resolves against `url`. A location that is no URL leaves the
/// answer as it is (the player gets the redirect), one of another scheme is an error.
fn redirect_target(
    res: &axum::http::Response<Incoming>,
    url: &Url,
) -> Result<Option<Url>, UpstreamError> {
    let redirect = matches!(
        res.status(),
        StatusCode::MOVED_PERMANENTLY
            | StatusCode::FOUND
            | StatusCode::SEE_OTHER
            | StatusCode::TEMPORARY_REDIRECT
            | StatusCode::PERMANENT_REDIRECT
    );
    if !redirect {
        return Ok(None);
    }
    let Some(next) = res
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| url.join(v).ok())
    else {
        return Ok(None);
    };
    if !matches!(next.scheme(), "http" | "https") {
        return Err(UpstreamError::Transport(format!(
            "redirect to a {} URL",
            next.scheme()
        )));
    }
    Ok(Some(next))
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// The `Referer` a redirect from `from` to `to` sends: `from` without credentials and
/// fragment, and none from HTTPS to plain HTTP.
fn referer(from: &Url, to: &Url) -> Option<HeaderValue> {
    if from.scheme() == "https" && to.scheme() == "http" {
        return None;
    }
    let mut from = from.clone();
    let _ = from.set_username("");
    let _ = from.set_password(None);
    from.set_fragment(None);
    HeaderValue::from_str(from.as_str()).ok()
}

fn percent_decoded(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// A connection's reads are judged in blocks of this many bytes: a block that takes more
/// than [`BLOCK_TIME`] (a reader below 4 MB/s, 32 Mbit/s, above any real-time stream)
/// makes the connection paced again at once.
const BLOCK_BYTES: usize = 4_000_000;
const BLOCK_TIME: Duration = Duration::from_secs(1);

/// Blocks in a row, each within [`BLOCK_TIME`], after which a connection counts as read
/// flat out: 16 MB, more than a real-time viewer's start pushes into its socket buffers
/// (100 paced file viewers wrote 4.9-7.1 MB before their socket first pushed back, and
/// two blocks judged enough of them fast to peak at 48.7 MB; BENCHMARKS.md).
const FAST_BLOCKS: usize = 4;

/// The TCP connection of a feed, which hands each read at most [`READ_BUF_BYTES`] while its
/// reader is paced, and whatever hyper's adaptive buffer asks for (up to ~400 KB, as
/// reqwest's client) once the reader takes the bytes as fast as they come. A paced viewer
/// so holds small chunks, and a download is not held to 16 KiB per read, wake-up and
/// write (which cost it about half its speed: BENCHMARKS.md). The judgement is made per
/// read, on the reads of this connection, whichever request they serve: a pooled
/// connection picked up after more than a second is paced again.
struct Paced {
    tcp: tokio::net::TcpStream,
    reads: Reads,
    block_start: std::time::Instant,
    block_bytes: usize,
    fast_blocks: usize,
}

impl Paced {
    fn new(tcp: tokio::net::TcpStream) -> Self {
        Self {
            tcp,
            reads: Reads::default(),
            block_start: std::time::Instant::now(),
            block_bytes: 0,
            fast_blocks: 0,
        }
    }

    /// The most the next read, starting `now`, takes from the socket: a block that has
    /// run past its time ends the fast spell before the read, not after it.
    fn read_cap(&mut self, now: std::time::Instant) -> usize {
        if now.duration_since(self.block_start) > BLOCK_TIME {
            self.fast_blocks = 0;
            self.block_start = now;
            self.block_bytes = 0;
        }
        if self.fast_blocks >= FAST_BLOCKS {
            usize::MAX
        } else {
            READ_BUF_BYTES
        }
    }

    fn record(&mut self, n: usize, now: std::time::Instant) {
        self.reads.add();
        self.block_bytes += n;
        if self.block_bytes >= BLOCK_BYTES {
            self.fast_blocks = (self.fast_blocks + 1).min(FAST_BLOCKS);
            self.block_start = now;
            self.block_bytes = 0;
        }
    }
}

impl tokio::io::AsyncRead for Paced {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let now = std::time::Instant::now();
        let cap = this.read_cap(now);
        let n = if buf.remaining() <= cap {
            let before = buf.filled().len();
            std::task::ready!(Pin::new(&mut this.tcp).poll_read(cx, buf))?;
            buf.filled().len() - before
        } else {
            // Into at most `cap` bytes of the caller's (uninitialised) buffer, without
            // zeroing them first as a `ReadBuf` of our own would.
            loop {
                std::task::ready!(this.tcp.poll_read_ready(cx))?;
                match this
                    .tcp
                    .try_read_buf(&mut bytes::BufMut::limit(&mut *buf, cap))
                {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
        };
        this.record(n, now);
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Paced {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

impl Connection for Paced {
    fn connected(&self) -> Connected {
        self.tcp.connected().extra(self.reads.clone())
    }
}

/// How many reads a [`Paced`] connection has made, handed to each of its answers.
#[derive(Debug, Clone, Default)]
struct Reads(Arc<std::sync::atomic::AtomicU64>);

impl Reads {
    fn add(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// How soon after an answer read flat out its connection must be used again to be kept:
/// a downloader's next request comes within a round trip; a connection left idle past
/// this is closed rather than handed, with its grown read buffer (~400 KB, which hyper
/// keeps for the connection's life), to a paced viewer.
const REUSE_WINDOW: Duration = Duration::from_millis(200);

/// Closes `connection` once it is back in the pool, unless it was used again within
/// [`REUSE_WINDOW`].
fn retire_unless_reused(connection: CaptureConnection, reads: Reads) {
    let seen = reads.count();
    tokio::spawn(async move {
        tokio::time::sleep(REUSE_WINDOW).await;
        if reads.count() == seen {
            if let Some(connected) = connection.connection_metadata().as_ref() {
                // A poisoned connection is not checked out of the pool again.
                connected.poison();
            }
        }
    });
}

/// [`HttpConnector`] whose connections are [`Paced`].
#[derive(Debug, Clone)]
struct PacedConnector(HttpConnector);

type Connecting =
    Pin<Box<dyn Future<Output = Result<TokioIo<Paced>, Box<dyn StdError + Send + Sync>>> + Send>>;

impl tower::Service<axum::http::Uri> for PacedConnector {
    type Response = TokioIo<Paced>;
    type Error = Box<dyn StdError + Send + Sync>;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: axum::http::Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            Ok(TokioIo::new(Paced::new(io.into_inner())))
        })
    }
}

/// The empty body of every feed request.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmptyBody;

impl Body for EmptyBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        true
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(0)
    }
}

/// An answer's body that fails with a timeout when no frame comes for `stall`, as
/// reqwest's `read_timeout` does.
struct StallingBody {
    inner: Incoming,
    /// The connection and its reads: one read flat out (a chunk past [`READ_BUF_BYTES`]
    /// says so) has a grown read buffer, and is retired after this answer unless a
    /// downloader uses it again at once ([`retire_unless_reused`]).
    connection: Option<(CaptureConnection, Reads)>,
    flat_out: bool,
    stall: Duration,
    timer: Pin<Box<Sleep>>,
}

impl Body for StallingBody {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + this.stall;
                this.timer.as_mut().reset(next);
                // A small chunk (a paced reader's) is copied out of the connection's read
                // buffer, which is then free for the next read instead of being pinned by
                // the chunk until the player has it.
                let flat_out = &mut this.flat_out;
                let frame = frame.map_data(|data| {
                    if data.len() <= READ_BUF_BYTES {
                        Bytes::copy_from_slice(&data)
                    } else {
                        *flat_out = true;
                        data
                    }
                });
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                if let Some((connection, reads)) = this.connection.take().filter(|_| this.flat_out)
                {
                    retire_unless_reused(connection, reads);
                }
                Poll::Ready(None)
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "upstream stopped sending data",
                ))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_sensitive_headers_stay_with_their_origin() {
        let a = Url::parse("https://user:pw@a.example/x#f").unwrap();
        let b = Url::parse("https://a.example:443/y").unwrap();
        let c = Url::parse("http://a.example/y").unwrap();
        assert!(same_origin(&a, &b));
        assert!(!same_origin(&a, &c));
        assert_eq!(referer(&a, &b).unwrap(), "https://a.example/x");
        assert!(referer(&a, &c).is_none());
        assert_eq!(percent_decoded("p%40ss+w"), "p@ss+w");
    }

    #[test]
    fn an_outgoing_proxy_in_the_environment_is_noticed() {
        assert!(!system_proxy(|_| None));
        assert!(!system_proxy(|_| Some(" ".into())));
        assert!(system_proxy(
            |n| (n == "https_proxy").then(|| "http://p:3128".into())
        ));
    }

    /// An origin that writes `total` bytes (or until the client goes) as fast as the
    /// socket takes them, and the client's answer from it.
    async fn far_ahead_origin(total: usize) -> reqwest::Response {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 4096];
            let _ = tcp.read(&mut head).await.unwrap();
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {total}\r\n\r\n");
            tcp.write_all(head.as_bytes()).await.unwrap();
            let piece: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
            let mut sent = 0;
            while sent < total {
                let n = piece.len().min(total - sent);
                if tcp.write_all(&piece[..n]).await.is_err() {
                    return;
                }
                sent += n;
            }
        });
        let client = FeedClient::new(&UpstreamTimeouts::default()).unwrap();
        let url = Url::parse(&format!("http://{addr}/big.ts")).unwrap();
        let res = client
            .send(Method::GET, &url, HeaderMap::new())
            .await
            .unwrap();
        assert_eq!(res.content_length(), Some(total as u64));
        res
    }

    /// Reads one chunk of an endless or long body.
    async fn chunk(
        chunks: &mut (impl futures_util::Stream<Item = reqwest::Result<Bytes>> + Unpin),
    ) -> Bytes {
        futures_util::StreamExt::next(chunks)
            .await
            .expect("the body goes on")
            .unwrap()
    }

    /// A player's start: 12 MB taken as fast as they come (less than [`FAST_BLOCKS`]
    /// blocks), then 16 KiB every 10 ms (1.6 MB/s) from an origin far ahead: every chunk
    /// is at most [`READ_BUF_BYTES`], and the bytes are all there, in order.
    #[tokio::test]
    async fn a_paced_reader_gets_small_chunks_however_far_ahead_the_origin_is() {
        const BURST: usize = 12_000_000;
        const TOTAL: usize = BURST + (1 << 20);
        let res = far_ahead_origin(TOTAL).await;
        let mut chunks = res.bytes_stream();
        let (mut got, mut largest) = (0usize, 0usize);
        while let Some(chunk) = futures_util::StreamExt::next(&mut chunks).await {
            let chunk = chunk.unwrap();
            assert!(chunk
                .iter()
                .enumerate()
                .all(|(i, b)| *b == ((got + i) % (64 * 1024) % 251) as u8));
            got += chunk.len();
            largest = largest.max(chunk.len());
            if got > BURST {
                // The pace of a player, not a wait for a condition.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        assert_eq!(got, TOTAL);
        assert!(largest <= READ_BUF_BYTES, "a chunk of {largest} bytes");
    }

    /// A reader that takes the bytes as fast as they come is not held to 16 KiB reads
    /// once it has read [`FAST_BLOCKS`] blocks that way; when it then pauses as a player
    /// whose buffer is full, it is held to them again.
    #[tokio::test]
    async fn a_flat_out_reader_gets_large_chunks_until_it_slows_down() {
        let res = far_ahead_origin(1 << 40).await;
        let mut chunks = res.bytes_stream();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut got = 0;
        loop {
            let c = chunk(&mut chunks).await;
            if c.len() > READ_BUF_BYTES {
                break;
            }
            got += c.len();
            assert!(
                tokio::time::Instant::now() < deadline,
                "no chunk over {READ_BUF_BYTES} bytes in 20 s"
            );
        }
        assert!(
            got >= (FAST_BLOCKS - 1) * BLOCK_BYTES,
            "large chunks after {got} bytes"
        );

        // A pause longer than a block's time: what was read before it may still come
        // in large chunks (two at most: hyper's read buffer and its body channel), what
        // is read after it comes in small ones.
        tokio::time::sleep(BLOCK_TIME + Duration::from_millis(500)).await;
        let sizes: Vec<usize> = {
            let mut sizes = Vec::new();
            for _ in 0..40 {
                sizes.push(chunk(&mut chunks).await.len());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            sizes
        };
        assert!(
            sizes[2..].iter().all(|n| *n <= READ_BUF_BYTES),
            "chunks after the pause: {sizes:?}"
        );
    }

    /// A keep-alive origin that answers every request on a connection with `total` bytes,
    /// counting the connections it accepted.
    async fn counting_origin(total: usize) -> (Url, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/big.ts", listener.local_addr().unwrap())).unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let body = vec![0x47u8; total];
                    let mut head = Vec::new();
                    loop {
                        let mut byte = [0u8; 1024];
                        let Ok(n) = tcp.read(&mut byte).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        head.extend_from_slice(&byte[..n]);
                        if !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            continue;
                        }
                        head.clear();
                        let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {total}\r\n\r\n");
                        if tcp.write_all(answer.as_bytes()).await.is_err()
                            || tcp.write_all(&body).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        (url, accepted)
    }

    /// Reads an answer to its end; whether any chunk was past [`READ_BUF_BYTES`].
    async fn read_whole(client: &FeedClient, url: &Url) -> bool {
        let res = client
            .send(Method::GET, url, HeaderMap::new())
            .await
            .unwrap();
        let mut chunks = res.bytes_stream();
        let mut large = false;
        while let Some(c) = futures_util::StreamExt::next(&mut chunks).await {
            large |= c.unwrap().len() > READ_BUF_BYTES;
        }
        large
    }

    /// A connection read flat out is used again by a downloader's next request at once,
    /// and closed, not pooled, when it is left idle past [`REUSE_WINDOW`]: a paced viewer
    /// would inherit its grown read buffer. A paced connection stays pooled.
    #[tokio::test]
    async fn a_connection_read_flat_out_is_kept_for_the_next_download_but_not_left_in_the_pool() {
        use std::sync::atomic::Ordering::SeqCst;
        let client = FeedClient::new(&UpstreamTimeouts::default()).unwrap();

        let (url, accepted) = counting_origin(24_000_000).await;
        assert!(read_whole(&client, &url).await, "read flat out");
        assert!(read_whole(&client, &url).await);
        assert_eq!(
            accepted.load(SeqCst),
            1,
            "the next download used the connection"
        );
        tokio::time::sleep(REUSE_WINDOW * 3).await;
        read_whole(&client, &url).await;
        assert_eq!(
            accepted.load(SeqCst),
            2,
            "the idle fast connection was closed"
        );

        let (url, accepted) = counting_origin(1 << 20).await;
        assert!(
            !read_whole(&client, &url).await,
            "1 MB is not read flat out"
        );
        tokio::time::sleep(REUSE_WINDOW * 3).await;
        read_whole(&client, &url).await;
        assert_eq!(accepted.load(SeqCst), 1, "a paced connection stays pooled");
    }
}
