//! Hostile and careless clients against the real binary: connections that never finish a
//! request, that never send a byte, too many connections, and requests too large, while
//! a viewer keeps playing.

use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::binary::start;
use crate::util::origin::Origin;
use crate::util::{create_stream_at, eventually, http_client, metric_sample};

/// The header read timeout the tests run with.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// The binary, killed when the test ends however it ends.
struct Running {
    child: Child,
    base: String,
    addr: String,
    http: reqwest::Client,
}

impl Running {
    async fn start(envs: &[(&'static str, &str)]) -> Running {
        // The test holds thousands of sockets of its own.
        let _ = rlimit::increase_nofile_limit(u64::MAX);
        let (child, base) = start(|port| {
            let mut all = vec![
                ("M3U_PROXY_HOST", "127.0.0.1".to_string()),
                ("M3U_PROXY_PORT", port.to_string()),
                ("LOG_LEVEL", "warn".to_string()),
            ];
            all.extend(envs.iter().map(|(k, v)| (*k, v.to_string())));
            (all, Vec::new())
        })
        .await;
        Running {
            child,
            addr: base.trim_start_matches("http://").to_string(),
            base,
            http: http_client(),
        }
    }

    async fn health(&self) -> Value {
        let res = self.http.get(format!("{}/health", self.base)).send().await;
        res.expect("/health answers").json().await.unwrap()
    }

    async fn metric(&self, series: &str) -> u64 {
        let url = format!("{}/metrics", self.base);
        let res = self.http.get(url).send().await.unwrap();
        metric_sample(&res.text().await.unwrap(), series)
    }

    /// Registers a live TS channel and starts a viewer reading it.
    async fn viewer(&self, origin: &Origin) -> Viewer {
        origin.live_ts("/live.ts", 100_000);
        let created = create_stream_at(&self.http, &self.base, &origin.url("/live.ts")).await;
        let endpoint = created["stream_endpoint"].as_str().unwrap();
        // Its own client: its connection must not be one the test's other requests share.
        let mut res = http_client()
            .get(format!("{}{endpoint}", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let viewer = Viewer {
            endpoint: endpoint.to_string(),
            bytes: Arc::default(),
            ended: Arc::default(),
        };
        let (bytes, ended) = (viewer.bytes.clone(), viewer.ended.clone());
        tokio::spawn(async move {
            while let Ok(Some(chunk)) = res.chunk().await {
                bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            ended.store(true, Ordering::Relaxed);
        });
        viewer.assert_playing().await;
        viewer
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A live viewer reading in the background.
struct Viewer {
    /// `/stream/{id}` of the channel.
    endpoint: String,
    bytes: Arc<AtomicU64>,
    ended: Arc<AtomicBool>,
}

impl Viewer {
    /// Asserts that the viewer's connection is open and bytes keep arriving.
    async fn assert_playing(&self) {
        let before = self.bytes.load(Ordering::Relaxed);
        eventually(
            Duration::from_secs(3),
            "the viewer receives more bytes",
            || {
                let grew = self.bytes.load(Ordering::Relaxed) > before + 10_000;
                async move { grew.then_some(()) }
            },
        )
        .await;
        assert!(!self.ended.load(Ordering::Relaxed), "the viewer was cut");
    }
}

/// Waits until the server closes `tcp` (end of stream or reset); returns how long it took.
async fn closed_by_server(tcp: &mut TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    let mut sink = [0u8; 1024];
    let closed = tokio::time::timeout(within, async {
        loop {
            match tcp.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "still open after {within:?}");
    started.elapsed()
}

/// Opens `n` connections at once (a few at a time, as a flood would arrive).
async fn connect_many(addr: &str, n: usize) -> Vec<TcpStream> {
    let mut all = Vec::with_capacity(n);
    for batch in (0..n).collect::<Vec<_>>().chunks(100) {
        let opened = futures_util::future::join_all(batch.iter().map(|_| TcpStream::connect(addr)));
        for tcp in opened.await {
            all.push(tcp.expect("connect"));
        }
    }
    all
}

#[tokio::test]
async fn slow_header_connections_are_closed_in_time_while_a_viewer_plays_and_health_answers() {
    let origin = Origin::start().await;
    let proxy = Running::start(&[("HEADER_READ_TIMEOUT", "2"), ("KEEPALIVE_TIMEOUT", "3")]).await;
    let viewer = proxy.viewer(&origin).await;

    // 500 clients that send a header line every 500 ms and never finish the head.
    let slow = connect_many(&proxy.addr, 500).await;
    let tasks: Vec<_> = slow
        .into_iter()
        .map(|mut tcp| {
            tokio::spawn(async move {
                let opened = Instant::now();
                let _ = tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await;
                let (mut read, mut write) = tcp.split();
                let trickle = async {
                    for i in 0.. {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        let line = format!("X-Slow-{i}: still coming\r\n");
                        if write.write_all(line.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                };
                let mut sink = [0u8; 256];
                tokio::select! {
                    () = trickle => {}
                    _ = read.read(&mut sink) => {}
                    () = tokio::time::sleep(Duration::from_secs(10)) => panic!("still open after 10 s"),
                }
                opened.elapsed()
            })
        })
        .collect();

    // Meanwhile the operator and the viewer are served.
    for _ in 0..3 {
        let asked = Instant::now();
        let health = proxy.health().await;
        assert!(asked.elapsed() < Duration::from_secs(1), "/health is slow");
        assert!(
            health["open_connections"].as_u64().unwrap() >= 2,
            "{health}"
        );
        viewer.assert_playing().await;
    }
    let mut slowest = Duration::ZERO;
    for task in tasks {
        slowest = slowest.max(task.await.unwrap());
    }
    assert!(
        slowest <= HEADER_TIMEOUT + Duration::from_secs(2),
        "the last slow connection was closed after {slowest:?}"
    );
    // Longer than both timeouts: the streaming viewer was never cut.
    viewer.assert_playing().await;
    let closed = proxy
        .metric("m3u_proxy_connections_timed_out_total{timeout=\"header_read\"}")
        .await;
    assert!(closed >= 500, "{closed} timed out");
    eventually(
        Duration::from_secs(3),
        "the slow connections are gone",
        || async {
            let open = proxy.health().await["open_connections"].as_u64().unwrap();
            (open <= 3).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn silent_connections_are_closed_within_the_timeout_and_idle_ones_after_keepalive() {
    let proxy = Running::start(&[("HEADER_READ_TIMEOUT", "2"), ("KEEPALIVE_TIMEOUT", "4")]).await;
    let silent = connect_many(&proxy.addr, 2000).await;
    let opened = Instant::now();
    let waits: Vec<_> = silent
        .into_iter()
        .map(|mut tcp| {
            tokio::spawn(async move { closed_by_server(&mut tcp, Duration::from_secs(10)).await })
        })
        .collect();
    for wait in waits {
        wait.await.unwrap();
    }
    let took = opened.elapsed();
    assert!(
        took <= HEADER_TIMEOUT + Duration::from_secs(1),
        "2,000 silent connections closed after {took:?}"
    );
    let closed = proxy
        .metric("m3u_proxy_connections_timed_out_total{timeout=\"header_read\"}")
        .await;
    assert!(closed >= 2000, "{closed} timed out");

    // An idle keep-alive connection is held for KEEPALIVE_TIMEOUT, not the header timeout.
    let mut tcp = TcpStream::connect(&proxy.addr).await.unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 12];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    let idle = closed_by_server(&mut tcp, Duration::from_secs(8)).await;
    assert!(
        idle >= Duration::from_millis(3500) && idle <= Duration::from_secs(6),
        "idle connection closed after {idle:?}"
    );
    let idle_closed = proxy
        .metric("m3u_proxy_connections_timed_out_total{timeout=\"keepalive\"}")
        .await;
    assert!(idle_closed >= 1);
}

#[tokio::test]
async fn beyond_max_connections_the_next_is_refused_at_once_and_a_viewer_continues() {
    let origin = Origin::start().await;
    let proxy = Running::start(&[("MAX_CONNECTIONS", "100"), ("HEADER_READ_TIMEOUT", "60")]).await;
    let viewer = proxy.viewer(&origin).await;
    // The viewer, the test client's pooled connection and 98 idle ones: 100.
    let _idle = connect_many(&proxy.addr, 98).await;
    eventually(Duration::from_secs(5), "100 connections open", || async {
        let health = proxy.health().await;
        assert_eq!(health["max_connections"], 100);
        (health["open_connections"] == 100).then_some(())
    })
    .await;

    let asked = Instant::now();
    let mut extra = TcpStream::connect(&proxy.addr).await.unwrap();
    let _ = extra
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(1), extra.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the 101st connection was left waiting");
    assert!(asked.elapsed() < Duration::from_secs(1));
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["code"], "too_many_connections");

    viewer.assert_playing().await;
    // The pooled connection still works, and the refusal was counted.
    let refused = proxy
        .metric("m3u_proxy_connections_refused_total{reason=\"max_connections\"}")
        .await;
    assert!(refused >= 1);
    // A place given back is a place to take.
    drop(_idle);
    eventually(
        Duration::from_secs(5),
        "a new connection is served",
        || async {
            http_client()
                .get(format!("{}/health", proxy.base))
                .send()
                .await
                .ok()
                .filter(|res| res.status() == 200)
        },
    )
    .await;
    viewer.assert_playing().await;
}

#[tokio::test]
async fn oversized_bodies_heads_and_urls_get_the_api_json_error() {
    let proxy = Running::start(&[]).await;
    let http = &proxy.http;
    let streams = format!("{}/streams", proxy.base);
    let error = |res: reqwest::Response| async move {
        let status = res.status().as_u16();
        let body: Value = res.json().await.expect("a JSON error body");
        assert!(body["detail"].is_string(), "{body}");
        (status, body["code"].as_str().unwrap().to_string())
    };

    // 16 MB: far more than the socket buffers hold, so the answer comes while the client
    // is still sending; it must reach the client rather than a reset.
    let big = format!(
        "{{\"url\":\"http://a.example.com/{}\"}}",
        "a".repeat(16 << 20)
    );
    let res = http.post(&streams).body(big.clone()).send().await.unwrap();
    assert_eq!(error(res).await, (413, "payload_too_large".into()));
    // Without a declared length too (a chunked body).
    let chunks = futures_util::stream::iter(
        big.into_bytes()
            .chunks(64 * 1024)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let res = http
        .post(&streams)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(error(res).await, (413, "payload_too_large".into()));

    let res = http
        .get(format!("{}/health", proxy.base))
        .header("X-Padding", "p".repeat(100 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(error(res).await, (431, "header_too_large".into()));

    let long = format!("{}/streams/{}", proxy.base, "x".repeat(9 * 1024));
    let res = http.get(long).send().await.unwrap();
    assert_eq!(error(res).await, (414, "uri_too_long".into()));

    // A body within the limit is served as before.
    let res = http.post(&streams).body("{").send().await.unwrap();
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn per_address_limit_counts_direct_clients_and_forwarded_ones_behind_a_trusted_proxy() {
    let origin = Origin::start().await;
    let proxy = Running::start(&[
        ("MAX_CONNECTIONS_PER_IP", "3"),
        ("TRUSTED_PROXIES", "127.0.0.2"),
    ])
    .await;
    // Three connections from 127.0.0.1 (the viewer and the test client among them).
    let viewer = proxy.viewer(&origin).await;
    let _third = TcpStream::connect(&proxy.addr).await.unwrap();
    eventually(Duration::from_secs(3), "3 connections open", || async {
        (proxy.health().await["open_connections"] == 3).then_some(())
    })
    .await;
    let mut fourth = TcpStream::connect(&proxy.addr).await.unwrap();
    let _ = fourth
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), fourth.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too_many_connections_per_ip"), "{answer}");
    viewer.assert_playing().await;

    // Through the trusted proxy at 127.0.0.2, streams under way are counted per
    // forwarded client: three for one, then 503; another client is still served.
    let endpoint = viewer.endpoint.clone();
    let mut held = Vec::new();
    for n in 0..5 {
        let client = if n < 4 { "203.0.113.7" } else { "203.0.113.8" };
        let (tcp, head) = via_proxy(&proxy.addr, &endpoint, client).await;
        let expected = if n == 3 {
            "HTTP/1.1 503"
        } else {
            "HTTP/1.1 200"
        };
        assert!(head.starts_with(expected), "request {n}: {head}");
        if n == 3 {
            assert!(head.contains("too_many_connections_per_ip"), "{head}");
        }
        held.push(tcp);
    }
    viewer.assert_playing().await;
}

/// A GET sent from 127.0.0.2 (the trusted proxy) for `client`; returns the connection and
/// what arrived of the answer (its head, and the body when it is short).
async fn via_proxy(addr: &str, path: &str, client: &str) -> (TcpStream, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut tcp = socket.connect(addr.parse().unwrap()).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {client}\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    (tcp, String::from_utf8_lossy(&answer[..n]).into_owned())
}

/// The proxy's resident memory, in KB.
fn rss_kb(child: &Child) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Reads HTTP/1.1 answers with a length off one socket, keeping what came after each.
#[derive(Default)]
struct Answers {
    buf: Vec<u8>,
}

impl Answers {
    /// The next answer's status and body.
    async fn next(&mut self, tcp: &mut TcpStream) -> (u16, Vec<u8>) {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if self.buf.len() >= end + 4 + length {
                    let status = head[9..12].parse().unwrap();
                    let body = self.buf[end + 4..end + 4 + length].to_vec();
                    self.buf.drain(..end + 4 + length);
                    return (status, body);
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk))
                .await
                .expect("an answer within 5 s")
                .unwrap();
            assert!(n > 0, "the connection was closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A player between requests holds its socket, not hyper's buffers: 1,000 keep-alive
/// connections idle after one request each cost the proxy under 13 KB apiece (16 KB
/// while hyper kept them), and an idle connection answers its next requests on the same
/// socket: one sent whole, one sent in two pieces around a pause, two pipelined.
#[tokio::test]
async fn idle_keep_alive_connections_give_up_their_buffers_and_answer_on_the_same_socket() {
    const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    let proxy = Running::start(&[]).await;
    let before = rss_kb(&proxy.child);
    let mut conns = connect_many(&proxy.addr, 1000).await;
    let mut answers: Vec<Answers> = (0..conns.len()).map(|_| Answers::default()).collect();
    for tcp in &mut conns {
        tcp.write_all(HEALTH).await.unwrap();
    }
    for (tcp, answers) in conns.iter_mut().zip(&mut answers) {
        assert_eq!(answers.next(tcp).await.0, 200);
    }
    eventually(
        Duration::from_secs(10),
        "1,000 idle keep-alive connections under 13 KB each",
        || async {
            let per_connection = rss_kb(&proxy.child).saturating_sub(before) / 1000;
            (per_connection < 13).then_some(())
        },
    )
    .await;

    let (tcp, answers) = (&mut conns[0], &mut answers[0]);
    tcp.write_all(HEALTH).await.unwrap();
    let (status, body) = answers.next(tcp).await;
    assert_eq!(status, 200);
    let health: Value = serde_json::from_slice(&body).unwrap();
    // All 1,000 still open (beside, perhaps, the test client's own).
    let open = health["open_connections"].as_u64().unwrap();
    assert!((1000..=1001).contains(&open), "{health}");

    tcp.write_all(b"GET /health HTTP/1.1\r\nHo").await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    tcp.write_all(b"st: x\r\n\r\n").await.unwrap();
    assert_eq!(answers.next(tcp).await.0, 200);

    tokio::time::sleep(Duration::from_millis(600)).await;
    tcp.write_all(&[HEALTH, b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"].concat())
        .await
        .unwrap();
    assert_eq!(answers.next(tcp).await.0, 200);
    assert_eq!(answers.next(tcp).await.0, 404);
}
