//! `run(config, shutdown)`: build the state, start the background tasks, serve, drain.
//!
//! Shutdown ends every open viewer connection (live streams never end by themselves), lets
//! in-flight requests finish for a short grace period, and returns.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::{interval, MissedTickBehavior};

use crate::api::{self, AppState};
use crate::cache::Cache;
use crate::config::{Config, ConfigError};
use crate::error::UpstreamError;
use crate::events::{spawn_dispatcher, Webhooks};
use crate::live::Live;
use crate::proxy_url::Signer;
use crate::registry::Registry;
use crate::upstream::Upstream;

/// How long in-flight requests may run after a shutdown signal.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// How often bytes-per-second figures are recomputed.
const RATE_PERIOD: Duration = Duration::from_secs(1);

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot use data directory {path}: {source}")]
    DataDir { path: String, source: io::Error },
    #[error("cannot build the upstream client: {0}")]
    Upstream(#[from] UpstreamError),
    #[error("server error: {0}")]
    Serve(#[from] io::Error),
}

/// Binds `config.host:config.port` and serves until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let addr = SocketAddr::new(config.host, config.port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    tracing::info!(addr = %listener.local_addr()?, "m3u-proxy listening");
    serve(listener, config, shutdown).await
}

/// Serves on an already bound listener (tests bind 127.0.0.1:0 and read the port).
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let state = build_state(config)?;
    let maintenance = spawn_maintenance(state.clone());
    let dispatcher = spawn_dispatcher(
        &state.registry.events,
        state.webhooks.clone(),
        state.upstream.http().clone(),
    );
    let registry = state.registry.clone();
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: closing viewer connections");
        registry.close_all();
        let _ = drained_tx.send(());
    };
    let app = api::app(state).into_make_service_with_connect_info::<SocketAddr>();
    // Without TCP_NODELAY, Nagle's algorithm holds back the second small write of a
    // streamed body until the player's delayed ACK: a 40 ms stall on some requests.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(signal);
    let result = tokio::select! {
        r = server => r.map_err(ServerError::from),
        // A connection that ignores the close (a request stuck upstream) may not hold the
        // process hostage.
        _ = async { let _ = drained_rx.await; tokio::time::sleep(DRAIN_GRACE).await } => Ok(()),
    };
    maintenance.abort();
    dispatcher.abort();
    result
}

/// The shared state: registry, upstream client and signer, with the signing secret from
/// the configuration, the data directory, or (for a lone process) fresh randomness.
pub fn build_state(config: Config) -> Result<AppState, ServerError> {
    config.validate()?;
    let secret = match (&config.secret, &config.data_dir) {
        (Some(s), _) => s.as_bytes().to_vec(),
        (None, Some(dir)) => load_or_create_secret(dir).map_err(|source| ServerError::DataDir {
            path: dir.display().to_string(),
            source,
        })?,
        (None, None) => {
            let mut bytes = vec![0u8; 32];
            rand::fill(&mut bytes[..]);
            bytes
        }
    };
    Ok(AppState {
        registry: Arc::new(Registry::new(&secret).with_client_timeout(config.client_timeout)),
        upstream: Upstream::new(&config)?,
        signer: Arc::new(Signer::new(&secret)),
        webhooks: Arc::new(Webhooks::default()),
        requests: Arc::default(),
        cache: Arc::new(Cache::new(config.cache)),
        live: Arc::new(Live::new(config.fanout)),
        config: Arc::new(config),
    })
}

/// Reads `DIR/secret`, creating it with 32 random bytes (hex) on first start, so stream
/// ids and references issued before a restart stay valid after it.
fn load_or_create_secret(dir: &Path) -> io::Result<Vec<u8>> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("secret");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().as_bytes().to_vec()),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is empty", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            rand::fill(&mut bytes[..]);
            let hex = crate::registry::hex(&bytes);
            write_private(&path, &hex)?;
            Ok(hex.into_bytes())
        }
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> io::Result<()> {
    std::fs::write(path, contents)
}

/// Starts the background task: bytes-per-second figures every second, and the idle sweep
/// every `cleanup_interval` from now (the first sweep one interval after the start, never
/// before). It runs on the tokio clock, so tests drive it with paused time. Abort the
/// handle to stop it.
pub fn spawn_maintenance(state: AppState) -> JoinHandle<()> {
    tokio::spawn(maintain(state))
}

async fn maintain(state: AppState) {
    let cfg = state.config.clone();
    let mut rates = interval(RATE_PERIOD);
    rates.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sweep = interval(cfg.cleanup_interval);
    sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
    sweep.tick().await; // the first tick is immediate; nothing is idle yet
    let mut last_rate = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = rates.tick() => {
                let now = tokio::time::Instant::now();
                state.registry.tick_rates((now - last_rate).as_secs_f64());
                last_rate = now;
                // m3u-editor frees a provider slot on `stream_stopped`: announce it promptly.
                state.registry.note_stopped_viewing();
            }
            _ = sweep.tick() => {
                let swept = state.registry.sweep(
                    cfg.client_timeout.as_millis() as u64,
                    cfg.stream_timeout.map(|d| d.as_millis() as u64),
                );
                if !swept.clients.is_empty() || !swept.streams.is_empty() {
                    tracing::debug!(
                        clients = swept.clients.len(),
                        streams = swept.streams.len(),
                        "cleanup sweep"
                    );
                }
            }
        }
    }
}
