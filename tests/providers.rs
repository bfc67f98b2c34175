//! Provider connection limits (issue 13), against a local origin that enforces a limit of
//! its own, as an IPTV panel does, and records the most connections it ever had open.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::util::{eventually, refused_addr, Proxy};

/// An origin that allows `limit` responses in progress at once (a response is in progress
/// from its request until its body ends or the peer closes), refuses more with 403 as a
/// provider does, and records the highest number it ever had in progress. Every response
/// closes its connection, so a response is one TCP connection.
///
/// A request arriving while the origin is at its limit waits up to [`GRACE`] for a closing
/// connection to be noticed (its FIN may still be in flight on this side) before it is
/// counted and judged: a connection the proxy closed before opening the next one never
/// counts twice, one it kept open does.
struct LimitedOrigin {
    addr: SocketAddr,
    state: Arc<OriginState>,
    task: JoinHandle<()>,
}

const GRACE: Duration = Duration::from_millis(100);

#[derive(Default)]
struct OriginState {
    limit: usize,
    open: AtomicUsize,
    max_seen: AtomicUsize,
    refused: AtomicUsize,
    hits: Mutex<BTreeMap<String, usize>>,
}

/// One response in progress.
struct InProgress(Arc<OriginState>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl OriginState {
    async fn admit(self: &Arc<Self>) -> Option<InProgress> {
        let deadline = tokio::time::Instant::now() + GRACE;
        while self.open.load(Ordering::SeqCst) >= self.limit
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let now = self.open.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_seen.fetch_max(now, Ordering::SeqCst);
        if now > self.limit {
            self.open.fetch_sub(1, Ordering::SeqCst);
            self.refused.fetch_add(1, Ordering::SeqCst);
            return None;
        }
        Some(InProgress(self.clone()))
    }
}

impl LimitedOrigin {
    async fn start(limit: usize) -> LimitedOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(OriginState {
            limit,
            ..OriginState::default()
        });
        let serving = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, serving.clone()));
            }
        });
        LimitedOrigin { addr, state, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn max_seen(&self) -> usize {
        self.state.max_seen.load(Ordering::SeqCst)
    }

    fn refused(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }

    fn open(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }

    fn hits(&self, path: &str) -> usize {
        self.state
            .hits
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for LimitedOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn ts_packets(n: usize) -> Vec<u8> {
    let mut out = vec![0u8; 188 * n];
    for p in out.chunks_mut(188) {
        p[0] = 0x47;
    }
    out
}

/// Reads one request head and answers it: `/live/*` endless TS, `/vod/*` a large file sent
/// slowly, `/hls/*.m3u8` a live playlist, `/hls/*.ts` a segment.
async fn serve(mut sock: TcpStream, state: Arc<OriginState>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
    *state.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    let Some(_in_progress) = state.admit().await else {
        let body = "max connections reached";
        let _ = sock
            .write_all(
                format!(
                    "HTTP/1.1 403 Forbidden\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await;
        return;
    };
    let (mut rd, mut wr) = sock.split();
    let (head, chunk, total, pause): (String, Vec<u8>, Option<usize>, Duration) = if path
        .starts_with("/live/")
    {
        (
            "HTTP/1.1 200 OK\r\ncontent-type: video/mp2t\r\nconnection: close\r\n\r\n".into(),
            ts_packets(20),
            None,
            Duration::from_millis(10),
        )
    } else if path.starts_with("/vod/") {
        let total = 64 * 1024 * 1024;
        (
                format!("HTTP/1.1 200 OK\r\ncontent-type: video/mp4\r\naccept-ranges: bytes\r\ncontent-length: {total}\r\nconnection: close\r\n\r\n"),
                vec![7u8; 16 * 1024],
                Some(total),
                Duration::from_millis(10),
            )
    } else if path.ends_with(".m3u8") {
        let body = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:2.0,\nseg0.ts\n#EXTINF:2.0,\nseg1.ts\n".to_string();
        let head = format!("HTTP/1.1 200 OK\r\ncontent-type: application/vnd.apple.mpegurl\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
        (head, body.into_bytes(), Some(0), Duration::ZERO)
    } else {
        let body = ts_packets(50);
        let head = format!("HTTP/1.1 200 OK\r\ncontent-type: video/mp2t\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
        (head, body, Some(0), Duration::ZERO)
    };
    if wr.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    if total == Some(0) {
        // A whole small body at once.
        let _ = wr.write_all(&chunk).await;
        return;
    }
    let mut sent = 0;
    let mut peer = [0u8; 64];
    loop {
        if total.is_some_and(|t| sent >= t) {
            return;
        }
        tokio::select! {
            // The peer closed (or sent more): the connection is over for this origin.
            _ = rd.read(&mut peer) => return,
            () = tokio::time::sleep(pause) => {
                if wr.write_all(&chunk).await.is_err() {
                    return;
                }
                sent += chunk.len();
            }
        }
    }
}

async fn put_provider(proxy: &Proxy, name: &str, body: Value) -> (StatusCode, Value) {
    let res = proxy
        .http
        .put(proxy.url(&format!("/providers/{name}")))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status();
    (status, res.json().await.unwrap())
}

/// An origin allowing `origin_limit` connections, and a proxy with provider `acc` over it.
async fn limited(origin_limit: usize, max: u32, on_full: &str) -> (LimitedOrigin, Proxy) {
    let origin = LimitedOrigin::start(origin_limit).await;
    let proxy = Proxy::start().await;
    let body = json!({"hosts": [origin.host()], "max_connections": max, "on_full": on_full});
    let (status, answer) = put_provider(&proxy, "acc", body).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    (origin, proxy)
}

async fn provider(proxy: &Proxy, name: &str) -> Value {
    proxy.get_json(&format!("/providers/{name}")).await
}

/// Registers a stream of known type (no probe) and returns its id.
async fn stream(proxy: &Proxy, url: &str, backups: &[String], stream_type: &str) -> String {
    let (status, created) = proxy
        .post_stream(json!({"url": url, "failover_urls": backups, "stream_type": stream_type}))
        .await;
    assert!(status.is_success(), "{status} {created}");
    created["stream_id"].as_str().unwrap().to_string()
}

/// A viewer reading a stream in the background; `bytes` grows as it reads, `ended` is set
/// when its connection ends. Aborting the task hangs up.
struct Watcher {
    bytes: Arc<AtomicUsize>,
    ended: Arc<std::sync::atomic::AtomicBool>,
    task: JoinHandle<()>,
}

impl Watcher {
    async fn start(proxy: &Proxy, id: &str) -> Watcher {
        let mut res = proxy.get(&format!("/stream/{id}")).await;
        assert_eq!(res.status(), StatusCode::OK, "viewer of {id}");
        let first = res.chunk().await.unwrap().expect("a first chunk");
        let bytes = Arc::new(AtomicUsize::new(first.len()));
        let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (b, e) = (bytes.clone(), ended.clone());
        let task = tokio::spawn(async move {
            while let Ok(Some(chunk)) = res.chunk().await {
                b.fetch_add(chunk.len(), Ordering::Relaxed);
            }
            e.store(true, Ordering::SeqCst);
        });
        Watcher { bytes, ended, task }
    }

    fn ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }
}

/// `GET /events?types=...`, once subscribed (its opening comment has arrived).
async fn events(proxy: &Proxy, types: &str) -> reqwest::Response {
    let mut res = proxy.get(&format!("/events?types={types}")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let opening = res.chunk().await.unwrap().expect("the opening comment");
    assert!(!opening.is_empty());
    res
}

/// Reads the feed until an event's line contains every one of `needles`; returns that line.
async fn event_with(feed: &mut reqwest::Response, needles: &[&str]) -> String {
    let mut text = String::new();
    let read = async {
        loop {
            if let Some(line) = text
                .lines()
                .find(|l| l.starts_with("data:") && needles.iter().all(|n| l.contains(n)))
            {
                return line.to_string();
            }
            let chunk = feed.chunk().await.unwrap().expect("the feed stays open");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .unwrap_or_else(|_| panic!("no event with {needles:?}"))
}

#[tokio::test]
async fn definitions_are_validated_listed_and_deleted() {
    let proxy = Proxy::start().await;
    let good = json!({"hosts": ["iptv.example.com:8080"], "max_connections": 2});
    let bad = [
        ("bad%20name", good.clone()),
        ("a", json!({"hosts": [], "max_connections": 1})),
        ("a", json!({"hosts": ["a:1"], "max_connections": 0})),
        ("a", json!({"hosts": ["a:1"], "max_connections": 1_000_000})),
        ("a", json!({"hosts": ["http://a/"], "max_connections": 1})),
        (
            "a",
            json!({"hosts": ["a:1"], "max_connections": 1, "on_full": "queue"}),
        ),
    ];
    for (name, body) in bad {
        let (status, answer) = put_provider(&proxy, name, body.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{name} {body}: {answer}"
        );
        assert!(
            answer["code"].is_string() && answer["detail"].is_string(),
            "{answer}"
        );
    }
    let (status, created) = put_provider(&proxy, "acc", good.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["on_full"], "reject");
    assert_eq!(created["active_connections"], 0);
    let (status, _) = put_provider(&proxy, "acc", good.clone()).await;
    assert_eq!(status, StatusCode::OK, "a second PUT updates");
    // One host belongs to one provider.
    let (status, answer) = put_provider(&proxy, "other", good).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer["code"], "invalid_provider");
    let list = proxy.get_json("/providers").await;
    assert_eq!(list["total"], 1);
    assert_eq!(list["providers"][0]["name"], "acc");
    let stats = proxy.get_json("/stats").await;
    assert_eq!(stats["providers"][0]["max_connections"], 2);
    assert_eq!(
        proxy
            .metric("m3u_proxy_provider_max_connections{provider=\"acc\"}")
            .await,
        2
    );
    let res = proxy
        .http
        .delete(proxy.url("/providers/acc"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = proxy.get("/providers/acc").await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["code"], "provider_not_found");
}

#[tokio::test]
async fn a_live_channel_shares_one_slot_and_a_second_channel_is_refused_until_it_frees() {
    let (origin, proxy) = limited(1, 1, "reject").await;
    let one = stream(&proxy, &origin.url("/live/1.ts"), &[], "direct").await;
    let two = stream(&proxy, &origin.url("/live/2.ts"), &[], "direct").await;

    let mut viewers = Vec::new();
    for _ in 0..5 {
        viewers.push(Watcher::start(&proxy, &one).await);
    }
    assert_eq!(origin.max_seen(), 1, "five viewers, one upstream");
    assert_eq!(provider(&proxy, "acc").await["active_connections"], 1);

    let mut feed = events(&proxy, "provider_full").await;
    let started = Instant::now();
    let res = proxy.get(&format!("/stream/{two}")).await;
    let took = started.elapsed();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    event_with(&mut feed, &["provider_full", "\"provider\":\"acc\"", &two]).await;
    assert!(took < Duration::from_secs(1), "refused in {took:?}");
    assert!(res.headers().contains_key("retry-after"));
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["code"], "provider_full", "{answer}");
    assert_eq!(answer["provider"], "acc");
    assert_eq!(answer["max_connections"], 1);
    assert_eq!(origin.hits("/live/2.ts"), 0, "the origin never saw it");
    assert_eq!(
        proxy
            .metric("m3u_proxy_provider_rejections_total{provider=\"acc\"}")
            .await,
        1
    );

    for v in &viewers {
        assert!(v.bytes.load(Ordering::Relaxed) > 0 && !v.ended());
    }
    for v in viewers {
        v.task.abort();
    }
    eventually(Duration::from_secs(5), "the slot to be free", || async {
        (provider(&proxy, "acc").await["active_connections"] == 0).then_some(())
    })
    .await;
    let two_viewer = Watcher::start(&proxy, &two).await;
    assert!(two_viewer.bytes.load(Ordering::Relaxed) > 0);
    assert_eq!(origin.max_seen(), 1, "never two at once");
    assert_eq!(origin.refused(), 0, "the origin never had to refuse");
    two_viewer.task.abort();
}

#[tokio::test]
async fn replace_oldest_zaps_to_the_new_channel_and_cuts_the_old_one() {
    let (origin, proxy) = limited(1, 1, "replace_oldest").await;
    let one = stream(&proxy, &origin.url("/live/1.ts"), &[], "direct").await;
    let two = stream(&proxy, &origin.url("/live/2.ts"), &[], "direct").await;
    let old = [
        Watcher::start(&proxy, &one).await,
        Watcher::start(&proxy, &one).await,
    ];

    let mut feed = events(&proxy, "stream_stopped").await;
    let started = Instant::now();
    let mut res = proxy.get(&format!("/stream/{two}")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let first = res.chunk().await.unwrap().expect("channel 2's first bytes");
    let took = started.elapsed();
    assert!(!first.is_empty());
    assert!(took < Duration::from_secs(2), "first byte after {took:?}");
    eventually(
        Duration::from_secs(3),
        "channel 1's viewers to be cut",
        || async { old.iter().all(Watcher::ended).then_some(()) },
    )
    .await;
    assert_eq!(origin.max_seen(), 1, "one connection throughout");
    assert_eq!(origin.refused(), 0);
    event_with(&mut feed, &["stream_stopped", "provider_limit", &one]).await;
    let p = provider(&proxy, "acc").await;
    assert_eq!(p["replacements"], 1);
    assert_eq!(p["slots"][0]["stream_id"], two.as_str());
    assert_eq!(
        proxy
            .metric("m3u_proxy_provider_replacements_total{provider=\"acc\"}")
            .await,
        1
    );
}

/// The first media URI of a rewritten playlist, as a path on the proxy.
fn first_segment(id: &str, playlist: &str) -> String {
    let uri = playlist
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .expect("a segment");
    format!("/hls/{id}/{uri}")
}

#[tokio::test]
async fn an_hls_stream_holds_one_slot_while_watched_and_frees_it_when_idle() {
    let (origin, proxy) = limited(4, 1, "reject").await;
    let a = stream(&proxy, &origin.url("/hls/a.m3u8"), &[], "hls").await;
    let b = stream(&proxy, &origin.url("/hls/b.m3u8"), &[], "hls").await;

    let playlist = proxy.get(&format!("/hls/{a}/playlist.m3u8")).await;
    assert_eq!(playlist.status(), StatusCode::OK);
    let segment = first_segment(&a, &playlist.text().await.unwrap());
    // Two segment fetches at once ride on the stream's one slot.
    let (s1, s2) = tokio::join!(proxy.get(&segment), proxy.get(&segment));
    assert_eq!((s1.status(), s2.status()), (StatusCode::OK, StatusCode::OK));
    let last_fetch = Instant::now();
    let p = provider(&proxy, "acc").await;
    assert_eq!(p["active_connections"], 1, "{p}");
    assert_eq!(p["slots"][0]["stream_id"], a.as_str());
    assert_eq!(p["slots"][0]["kind"], "hls");

    let res = proxy.get(&format!("/hls/{b}/playlist.m3u8")).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(origin.hits("/hls/b.m3u8"), 0);

    eventually(
        Duration::from_secs(20),
        "the idle HLS slot to be freed",
        || async { (provider(&proxy, "acc").await["active_connections"] == 0).then_some(()) },
    )
    .await;
    let idle = last_fetch.elapsed();
    assert!(idle >= Duration::from_secs(9), "freed after {idle:?} idle");
    let res = proxy.get(&format!("/hls/{b}/playlist.m3u8")).await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn failover_skips_a_full_provider_without_asking_it() {
    let full = LimitedOrigin::start(1).await;
    let free = LimitedOrigin::start(1).await;
    let (_guard, dead) = refused_addr();
    let proxy = Proxy::start().await;
    put_provider(
        &proxy,
        "full",
        json!({"hosts": [full.host()], "max_connections": 1}),
    )
    .await;
    let busy = stream(&proxy, &full.url("/live/busy.ts"), &[], "direct").await;
    let holder = Watcher::start(&proxy, &busy).await;

    let walked = stream(
        &proxy,
        &format!("http://{dead}/live.ts"),
        &[full.url("/live/backup.ts"), free.url("/live/other.ts")],
        "direct",
    )
    .await;
    let viewer = Watcher::start(&proxy, &walked).await;
    assert!(viewer.bytes.load(Ordering::Relaxed) > 0);
    assert_eq!(
        full.hits("/live/backup.ts"),
        0,
        "the full provider was skipped"
    );
    assert_eq!(free.hits("/live/other.ts"), 1);
    let info = proxy.get_json(&format!("/streams/{walked}")).await;
    assert!(
        info.to_string().contains(&free.url("/live/other.ts")),
        "{info}"
    );
    assert_eq!(full.max_seen(), 1);
    holder.task.abort();
    viewer.task.abort();
}

#[tokio::test]
async fn vod_viewers_hold_a_slot_each_and_a_hang_up_frees_it_at_once() {
    let (origin, proxy) = limited(2, 2, "reject").await;
    let film = stream(&proxy, &origin.url("/vod/film.mp4"), &[], "direct").await;
    let first = Watcher::start(&proxy, &film).await;
    let _second = Watcher::start(&proxy, &film).await;
    let res = proxy.get(&format!("/stream/{film}")).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["code"], "provider_full");
    assert_eq!(
        origin.hits("/vod/film.mp4"),
        2,
        "the third never reached it"
    );

    first.task.abort();
    let third = eventually(
        Duration::from_secs(3),
        "the third viewer to start",
        || async {
            let mut res = proxy.get(&format!("/stream/{film}")).await;
            if res.status() != StatusCode::OK {
                return None;
            }
            res.chunk().await.ok().flatten().map(|_| res)
        },
    )
    .await;
    assert_eq!(origin.max_seen(), 2);
    assert_eq!(origin.refused(), 0);
    assert!(origin.open() <= 2);
    drop(third);
}

#[tokio::test]
async fn test_connection_needs_a_slot_too() {
    let (origin, proxy) = limited(1, 1, "reject").await;
    let live = stream(&proxy, &origin.url("/live/1.ts"), &[], "direct").await;
    let viewer = Watcher::start(&proxy, &live).await;
    let res = proxy
        .http
        .post(proxy.url("/test-connection"))
        .json(&json!({"url": origin.url("/vod/x.mp4")}))
        .send()
        .await
        .unwrap();
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["success"], false, "{answer}");
    assert_eq!(answer["error"], "provider_full");
    assert_eq!(origin.hits("/vod/x.mp4"), 0);
    viewer.task.abort();
}

#[tokio::test]
async fn m3u_client_lists_the_providers_with_their_slots() {
    let (origin, proxy) = limited(1, 1, "replace_oldest").await;
    let live = stream(&proxy, &origin.url("/live/1.ts"), &[], "direct").await;
    let viewer = Watcher::start(&proxy, &live).await;
    let run = |json: bool| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_m3u-client"));
        command
            .args(["--server", &proxy.base, "providers"])
            .env_remove("M3U_PROXY_URL")
            .env_remove("API_TOKEN");
        if json {
            command.arg("--json");
        }
        command.output()
    };
    let out = run(false).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let row = text.lines().find(|l| l.starts_with("acc")).expect(&text);
    for cell in ["1", "replace_oldest", &live, &origin.host()] {
        assert!(row.contains(cell), "{cell} in {row}");
    }
    assert!(text.ends_with("1 provider\n"), "{text}");
    let out = run(true).await.unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["providers"][0]["active_connections"], 1);
    viewer.task.abort();
}
