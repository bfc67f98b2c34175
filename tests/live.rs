//! The live slot: viewers of a live stream tuning in together, while a shared upstream is
//! still silent, or after it failed, open one origin connection between them and never
//! wait in line behind each other's upstream opening.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use futures_util::StreamExt;

use crate::util::{eventually, Proxy};

const TS_PACKET: usize = 188;

/// A live channel of one account, on loopback: it counts requests and the bodies it is
/// sending at once, waits `head_delay` before answering and `body_delay` before the first
/// byte, and answers 503 while `down`. Its bytes are TS packets, except as `audio/mpeg`.
#[derive(Clone)]
struct Channel {
    addr: SocketAddr,
    state: Arc<ChannelState>,
}

struct ChannelState {
    content_type: &'static str,
    head_delay: Duration,
    body_delay: Duration,
    requests: AtomicUsize,
    open: AtomicUsize,
    max_open: AtomicUsize,
    down: AtomicBool,
    /// Bumped to cut every body being sent.
    cuts: AtomicUsize,
}

/// Decrements the open bodies when the body is dropped (the proxy hung up or it ended).
struct Open(Arc<ChannelState>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Channel {
    async fn start(content_type: &'static str, head_delay: Duration, body_delay: Duration) -> Self {
        let state = Arc::new(ChannelState {
            content_type,
            head_delay,
            body_delay,
            requests: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            max_open: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            cuts: AtomicUsize::new(0),
        });
        let app = Router::new().fallback(answer).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Channel { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}/live/ch1", self.addr)
    }

    fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    fn max_open(&self) -> usize {
        self.state.max_open.load(Ordering::SeqCst)
    }
}

async fn answer(State(state): State<Arc<ChannelState>>) -> Response {
    state.requests.fetch_add(1, Ordering::SeqCst);
    if state.down.load(Ordering::SeqCst) {
        return Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .body(Body::from("down"))
            .unwrap();
    }
    tokio::time::sleep(state.head_delay).await;
    let now_open = state.open.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_open.fetch_max(now_open, Ordering::SeqCst);
    let guard = Open(state.clone());
    let cuts = state.cuts.load(Ordering::SeqCst);
    let body = futures_util::stream::unfold((guard, 0u64), move |(guard, n)| async move {
        let state = guard.0.clone();
        if n == 0 {
            tokio::time::sleep(state.body_delay).await;
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if state.cuts.load(Ordering::SeqCst) != cuts {
            return Some((Err(std::io::Error::other("cut")), (guard, n + 1)));
        }
        let mut chunk = vec![0xffu8; TS_PACKET * 8];
        if state.content_type != "audio/mpeg" {
            for packet in chunk.chunks_mut(TS_PACKET) {
                packet[0] = 0x47;
            }
        }
        Some((Ok(Bytes::from(chunk)), (guard, n + 1)))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, state.content_type)
        .body(Body::from_stream(body))
        .unwrap()
}

/// Registers the channel as a direct stream (no probe: the origin counts only viewers).
async fn register_direct(proxy: &Proxy, channel: &Channel) -> String {
    let (status, created) = proxy
        .post_stream(serde_json::json!({"url": channel.url(), "stream_type": "direct"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["stream_endpoint"].as_str().unwrap().to_string()
}

async fn tune_in(proxy: &Proxy, endpoint: &str) -> reqwest::Response {
    let res = proxy.get(endpoint).await;
    assert_eq!(res.status(), StatusCode::OK);
    res
}

/// Reads at least `n` bytes of a player's body.
async fn read_some(
    res: reqwest::Response,
    n: usize,
) -> impl futures_util::Stream<Item = reqwest::Result<Bytes>> {
    let mut body = res.bytes_stream();
    let mut got = 0;
    tokio::time::timeout(Duration::from_secs(10), async {
        while got < n {
            got += body.next().await.expect("open").expect("no error").len();
        }
    })
    .await
    .expect("bytes within 10 s");
    body
}

#[tokio::test]
async fn a_viewer_who_arrives_before_the_first_byte_joins_the_one_upstream() {
    // The type does not say TS, and the first bytes take a while: the running upstream
    // cannot tell yet whether late joiners are welcome.
    let channel = Channel::start(
        "application/octet-stream",
        Duration::ZERO,
        Duration::from_millis(1500),
    )
    .await;
    let proxy = Proxy::start().await;
    let endpoint = register_direct(&proxy, &channel).await;

    let first = tune_in(&proxy, &endpoint).await;
    let second = tune_in(&proxy, &endpoint).await;
    let (_a, _b) = tokio::join!(read_some(first, 4096), read_some(second, 4096));
    assert_eq!(channel.requests(), 1, "the second viewer joined");
    assert_eq!(channel.max_open(), 1);
}

#[tokio::test]
async fn viewers_tuning_in_together_do_not_wait_in_line() {
    // Each upstream takes 1.5 s to answer, and its bytes are not TS.
    let channel = Channel::start(
        "audio/mpeg",
        Duration::from_millis(1500),
        Duration::from_millis(300),
    )
    .await;
    let proxy = Proxy::start().await;
    let endpoint = register_direct(&proxy, &channel).await;

    let started = Instant::now();
    let answers = futures_util::future::join_all((0..3).map(|_| tune_in(&proxy, &endpoint))).await;
    let waited = started.elapsed();
    // In line, three tune-ins take 4.5 s.
    assert!(
        waited < Duration::from_millis(3000),
        "waited {waited:?} for three tune-ins: in line"
    );
    futures_util::future::join_all(answers.into_iter().map(|res| read_some(res, 4096))).await;
    assert_eq!(channel.requests(), 1, "arrived together, opened once");

    // A viewer who comes once the bytes have shown they are not TS has its own upstream,
    // opened without waiting for anyone.
    let started = Instant::now();
    let later = tune_in(&proxy, &endpoint).await;
    assert!(started.elapsed() < Duration::from_millis(3000));
    let _later = read_some(later, 4096).await;
    assert_eq!(channel.requests(), 2);
}

#[tokio::test]
async fn a_failed_shared_upstream_never_leads_to_two_origin_connections() {
    let channel = Channel::start("video/mp2t", Duration::ZERO, Duration::ZERO).await;
    let proxy = Proxy::start_with(|c| {
        c.failover.retries = 1;
        c.failover.backoff = Duration::from_millis(50);
    })
    .await;
    let endpoint = register_direct(&proxy, &channel).await;
    let first = read_some(tune_in(&proxy, &endpoint).await, 4096).await;

    // The account's connection is cut and the origin refuses for a moment: the shared
    // upstream gives up, and its viewer sees the cut.
    channel.state.down.store(true, Ordering::SeqCst);
    channel.state.cuts.fetch_add(1, Ordering::SeqCst);
    let mut first = Box::pin(first);
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(item) = first.next().await {
            if item.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the first viewer's body ends");
    let gone = eventually(Duration::from_secs(5), "the upstream closed", || async {
        (channel.state.open.load(Ordering::SeqCst) == 0).then_some(())
    });
    gone.await;

    // The origin is back; viewers tune in at once, again and again: one upstream at a time.
    channel.state.down.store(false, Ordering::SeqCst);
    let before = channel.requests();
    let answers = futures_util::future::join_all((0..4).map(|_| tune_in(&proxy, &endpoint))).await;
    futures_util::future::join_all(answers.into_iter().map(|res| read_some(res, 4096))).await;
    assert_eq!(channel.requests(), before + 1);
    assert_eq!(
        channel.max_open(),
        1,
        "never two connections of one account"
    );
}
