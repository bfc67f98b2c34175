//! Shared test helpers: the proxy started for real on 127.0.0.1:0.

#![allow(dead_code)]

pub mod media;
pub mod origin;
pub mod player;
pub mod redis;
pub mod temp_dir;
pub mod ts_viewer;

use std::net::SocketAddr;
use std::sync::Arc;

use m3u_proxy::config::Config;
use m3u_proxy::model::StreamType;
use m3u_proxy::stream::StreamSettings;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A running proxy. Dropping it shuts the server down.
pub struct Proxy {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A client that never goes through a system proxy and never follows redirects, so tests
/// see exactly what the proxy answers.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("test client")
}

impl Proxy {
    pub async fn start() -> Proxy {
        Self::start_with(|_| {}).await
    }

    /// Starts with the test defaults (loopback, free port, short upstream timeouts) changed
    /// by `f`.
    pub async fn start_with(f: impl FnOnce(&mut Config)) -> Proxy {
        let mut config = Config {
            host: [127, 0, 0, 1].into(),
            port: 0,
            secret: Some("test-secret".into()),
            ..Config::default()
        };
        config.upstream.connect = std::time::Duration::from_secs(2);
        config.upstream.first_byte = std::time::Duration::from_secs(3);
        config.upstream.read_stall = std::time::Duration::from_secs(3);
        config.upstream.playlist_total = std::time::Duration::from_secs(5);
        f(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            m3u_proxy::server::serve(listener, config, async {
                let _ = rx.await;
            })
            .await
            .expect("proxy serves");
        });
        Proxy {
            addr,
            base: format!("http://{addr}"),
            http: http_client(),
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `POST /streams` with a JSON body; returns status and JSON answer.
    pub async fn post_stream(&self, body: Value) -> (reqwest::StatusCode, Value) {
        let res = self
            .http
            .post(self.url("/streams"))
            .json(&body)
            .send()
            .await
            .expect("POST /streams");
        let status = res.status();
        (status, res.json().await.expect("JSON answer"))
    }

    /// Registers `url` and returns the proxy's answer (`stream_id`, `stream_endpoint`, ...).
    pub async fn create_stream(&self, url: &str) -> Value {
        create_stream_at(&self.http, &self.base, url).await
    }

    /// Registers `url` with `backups` as its failover URLs; returns (stream id, playback
    /// endpoint path).
    pub async fn register(&self, url: &str, backups: &[String]) -> (String, String) {
        let (status, created) = self
            .post_stream(json!({"url": url, "failover_urls": backups}))
            .await;
        assert!(status.is_success(), "{status} {created}");
        (
            created["stream_id"].as_str().unwrap().to_string(),
            created["stream_endpoint"].as_str().unwrap().to_string(),
        )
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.expect("GET")
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let res = self.get(path).await;
        assert!(res.status().is_success(), "GET {path}: {}", res.status());
        res.json().await.expect("JSON")
    }

    /// `POST /streams/{id}/failover`, which must succeed; returns its answer.
    pub async fn switch_now(&self, id: &str) -> Value {
        let path = format!("/streams/{id}/failover");
        let res = self.http.post(self.url(&path)).send().await.unwrap();
        assert_eq!(res.status(), reqwest::StatusCode::OK, "POST {path}");
        res.json().await.unwrap()
    }

    /// The value of the `/metrics` sample `series` (a name, with its labels if it has
    /// any, exactly as the page writes them).
    pub async fn metric(&self, series: &str) -> u64 {
        let page = self.get("/metrics").await.text().await.unwrap();
        metric_sample(&page, series)
    }

    /// Shuts the server down and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Registers `url` on the proxy at `base` (an in-process [`Proxy`], the real binary, a
/// restarted server) and returns its answer (`stream_id`, `stream_endpoint`, ...).
pub async fn create_stream_at(http: &reqwest::Client, base: &str, url: &str) -> Value {
    let res = http
        .post(format!("{base}/streams"))
        .json(&json!({ "url": url }))
        .send()
        .await
        .expect("POST /streams");
    let status = res.status();
    let body: Value = res.json().await.expect("JSON answer");
    assert!(status.is_success(), "create stream: {status} {body}");
    body
}

/// The settings of an HLS stream at `url` with nothing else set, for tests that use the
/// registry without HTTP.
pub fn hls_settings(url: &str) -> StreamSettings {
    StreamSettings {
        original_url: url.parse().unwrap(),
        failover_urls: vec![],
        user_agent: None,
        headers: Default::default(),
        metadata: None,
        stream_type: StreamType::Hls,
        provider: None,
        options: Default::default(),
    }
}

/// An address where nothing listens and nothing will while the guard lives: a socket bound
/// to a free port but not listening, so connections to it are refused. (Binding a listener
/// and dropping it leaves the port free for any other process to take.)
pub fn refused_addr() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let addr = socket.local_addr().expect("bound address");
    (socket, addr)
}

/// The value of the sample `series` (name and labels as written) on a `/metrics` page.
pub fn metric_sample(page: &str, series: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{page}"))
        .trim()
        .parse()
        .unwrap()
}

/// Polls `check` every 20 ms until it gives `Some`, and panics with `what` after `within`.
/// The one way tests wait for a condition (a connection released, a webhook delivered, a
/// cache entry expired): never a fixed sleep.
pub async fn eventually<T, F, Fut>(within: std::time::Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    poll_for(within, check)
        .await
        .unwrap_or_else(|| panic!("timed out after {within:?} waiting for {what}"))
}

/// [`eventually`] that gives `None` after `within` instead of panicking, for a caller that
/// has more to say about the failure (a child's stderr, say).
pub async fn poll_for<T, F, Fut>(within: std::time::Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A webhook receiver on 127.0.0.1:0 that records every body it is sent: its URL (path
/// `/hook`) and the bodies in order of arrival.
pub async fn webhook_receiver() -> (String, Arc<std::sync::Mutex<Vec<Value>>>) {
    use axum::routing::post;
    let seen: Arc<std::sync::Mutex<Vec<Value>>> = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |axum::Json(body): axum::Json<Value>| {
            let record = record.clone();
            async move {
                record.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

/// `(user agent, instance)` of every client in a fleet's `/stats`, sorted.
pub fn clients_by_instance(stats: &Value) -> Vec<(String, String)> {
    let mut on: Vec<(String, String)> = stats["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["user_agent"].as_str().unwrap().to_string(),
                c["instance"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    on.sort();
    on
}
