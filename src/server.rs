//! `run(config, shutdown)`: build the state, start the background tasks, serve, drain.
//!
//! Shutdown cancels the one shutdown token (see [`Registry::close_all`]): every open viewer
//! connection, live hub, `/events` feed and webhook delivery ends on it (live streams never
//! end by themselves); other in-flight requests may finish for a short grace period.
//!
//! Player connections are served by an accept loop of our own over hyper's HTTP/1
//! connections (in `server/connection.rs`), so that each one is admitted against
//! `MAX_CONNECTIONS`, timed while its client owes a request, and held to the request size
//! limits before any handler runs.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::AtomicUsize;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{interval, MissedTickBehavior};

use crate::api::{self, AppState};
use crate::cache::Cache;
use crate::channels::{ChannelListRecord, Channels};
use crate::config::{Config, ConfigError, StoreBackend};
use crate::connections::{default_max_connections, Connections};
use crate::error::UpstreamError;
use crate::events::{spawn_dispatcher, Webhooks};
use crate::fleet::presence::Presence;
use crate::fleet::slots::RedisSlots;
use crate::fleet::{Fleet, FleetError};
use crate::live::Live;
use crate::providers::{LocalSlots, ProviderRecord, Providers, SlotPool};
use crate::proxy_url::Signer;
use crate::registry::Registry;
use crate::store::{self, Store, StoreError};
use crate::upstream::Upstream;

mod connection;

use connection::Shared;

/// How long in-flight requests may run after a shutdown signal.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// How long accepting pauses after an error such as running out of descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

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
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Fleet(#[from] FleetError),
    #[error("cannot build the upstream client: {0}")]
    Upstream(#[from] UpstreamError),
    #[error("server error: {0}")]
    Serve(#[from] io::Error),
}

/// Checks every setting and builds the state (secret, data directory, upstream client),
/// then binds `config.host:config.port` and serves until `shutdown` resolves. A setting
/// that cannot work fails before anything listens.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let addr = SocketAddr::new(config.host, config.port);
    let state = build(config).await?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    tracing::info!(addr = %listener.local_addr()?, "m3u-proxy listening");
    serve_state(listener, state, shutdown).await
}

/// Serves on an already bound listener (tests bind 127.0.0.1:0 and read the port).
///
/// First raises the process's soft descriptor limit to its hard limit, as nginx and
/// HAProxy do: every player and upstream connection is a descriptor.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    serve_state(listener, build(config).await?, shutdown).await
}

/// Serves an already built state on an already bound listener (tests keep a handle on
/// the state, e.g. its store), flushing counters once more after the drain.
pub async fn serve_state(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let bound = listener.local_addr()?.to_string();
    let _ = state
        .address
        .set(state.config.advertise.clone().unwrap_or(bound));
    tracing::info!(
        max_connections = state.connections.max(),
        max_connections_per_ip = ?state.connections.per_ip(),
        header_read_timeout = ?state.config.connections.header_read_timeout,
        keepalive_timeout = ?state.config.connections.keepalive_timeout,
        "player connection limits"
    );
    let maintenance = spawn_maintenance(state.clone());
    let flusher = state.store.is_persistent().then(|| {
        store::spawn_flusher(
            state.store.clone(),
            state.registry.clone(),
            state.config.state_flush_interval,
        )
    });
    let (store, stored_registry) = (state.store.clone(), state.registry.clone());
    let presence = state.presence.clone();
    let channel_lists = state.channels.clone().spawn();
    let fleet_view = spawn_fleet_view(&state);
    let dispatcher = spawn_dispatcher(
        &state.registry.events,
        state.webhooks.clone(),
        state.upstream.http().clone(),
    );
    let follower = state
        .sync
        .clone()
        .map(|sync| crate::fleet::sync::spawn((*sync).clone()));
    let registry = state.registry.clone();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: closing viewer connections");
        registry.close_all();
    };
    let result = accept_loop(listener, state, signal).await;
    maintenance.abort();
    channel_lists.abort();
    if let Some(follower) = follower {
        follower.abort();
    }
    dispatcher.abort();
    for task in fleet_view {
        task.abort();
    }
    if let Some(presence) = &presence {
        presence.leave().await;
    }
    if let Some(flusher) = flusher {
        flusher.abort();
        // The viewers are gone: this flush makes the stored counters exact.
        if let Err(e) = store::flush_now(&store, &stored_registry).await {
            tracing::error!(error = %e, "the last counter flush failed");
        }
    }
    let _ = tokio::task::spawn_blocking(move || store.close()).await;
    result
}

/// In a fleet: the heartbeat and fleet view, the event feed through Redis and the renewal
/// of provider slot leases (nothing for a lone instance).
fn spawn_fleet_view(state: &AppState) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    if let Some(presence) = &state.presence {
        tasks.push(presence.clone().spawn());
    }
    if let Some(slots) = &state.fleet_slots {
        tasks.extend(slots.spawn());
    }
    if let Some(fleet) = &state.fleet {
        tasks.extend(crate::fleet::events::spawn(
            fleet.clone(),
            &state.registry.events,
        ));
    }
    tasks
}

/// Accepts player connections until `signal` resolves, then asks every connection to
/// finish (idle ones close at once, in-flight requests run on) and waits for them for
/// at most [`DRAIN_GRACE`]: a request stuck upstream may not hold the process hostage.
async fn accept_loop(
    listener: TcpListener,
    state: AppState,
    signal: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let shared = Arc::new(Shared {
        limits: state.config.connections,
        trusted_proxies: state.config.trusted_proxies.clone(),
        connections: state.connections.clone(),
        refusing: AtomicUsize::new(0),
        app: api::app(state),
    });
    // Connection tasks hold a receiver: `true` asks them to finish, and `closed()`
    // resolves once the last one is gone.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut signal = std::pin::pin!(signal);
    loop {
        tokio::select! {
            () = &mut signal => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => shared.clone().accept(tcp, peer, stop_rx.clone()),
                Err(e) if is_per_connection(&e) => {}
                Err(e) => {
                    // Out of descriptors (EMFILE) or memory: new connections wait in the
                    // backlog while the open ones go on; retrying at once would spin.
                    tracing::error!(error = %e, "cannot accept connections");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                }
            },
        }
    }
    drop(listener);
    drop(stop_rx);
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(DRAIN_GRACE, stop_tx.closed()).await;
    Ok(())
}

/// An accept error that concerns one connection only (it was reset before we took it).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Raises the soft descriptor limit to the hard limit and logs the limit in effect.
fn raise_descriptor_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => tracing::info!(descriptors = soft, "descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the descriptor limit"),
    }
}

/// The soft descriptor limit now (a generous guess where it cannot be read).
fn descriptor_limit() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
}

/// Connects to the fleet's Redis when the store is `redis` (before anything listens; one
/// attempt, a few seconds at most), then builds the state as [`build_state_with`].
pub async fn build(config: Config) -> Result<AppState, ServerError> {
    config.validate()?;
    let fleet = match (config.store, &config.redis) {
        (StoreBackend::Redis, Some(settings)) => {
            let fleet = Fleet::connect(settings).await?;
            tracing::info!(
                redis = %fleet.location,
                prefix = %fleet.prefix,
                instance = %fleet.instance_id,
                "joined the fleet"
            );
            Some(Arc::new(fleet))
        }
        _ => None,
    };
    build_state_with(config, fleet)
}

/// The state of a lone instance (`memory` or `sqlite` store); `redis` needs [`build`].
pub fn build_state(config: Config) -> Result<AppState, ServerError> {
    build_state_with(config, None)
}

/// The shared state: registry, upstream client and signer, with the signing secret from
/// the configuration, the fleet's Redis, the data directory, or (for a lone process)
/// fresh randomness. With `--store redis`, `fleet` is the connection [`build`] made.
pub fn build_state_with(
    config: Config,
    fleet: Option<Arc<Fleet>>,
) -> Result<AppState, ServerError> {
    config.validate()?;
    let data_dir = match config.store {
        StoreBackend::Sqlite => Some(
            config
                .data_dir
                .clone()
                .unwrap_or_else(|| store::DEFAULT_DATA_DIR.into()),
        ),
        StoreBackend::Memory | StoreBackend::Redis => config.data_dir.clone(),
    };
    // The store first: it creates the data directory (mode 0700) where the secret goes.
    let (store, loaded) = match (config.store, &fleet) {
        (StoreBackend::Redis, Some(fleet)) => Store::start(fleet.backend(), true)?,
        (StoreBackend::Redis, None) => {
            return Err(ServerError::Store(StoreError::Open {
                path: "redis".into(),
                detail: "--store redis needs the fleet connection (server::build)".into(),
            }))
        }
        (kind, _) => Store::open(kind, data_dir.as_deref())?,
    };
    let secret = match (&config.secret, &fleet, &data_dir) {
        (Some(s), _, _) => s.as_bytes().to_vec(),
        (None, Some(fleet), _) => fleet.secret()?,
        (None, None, Some(dir)) => {
            load_or_create_secret(dir).map_err(|source| ServerError::DataDir {
                path: dir.display().to_string(),
                source,
            })?
        }
        (None, None, None) => {
            let mut bytes = vec![0u8; 32];
            rand::fill(&mut bytes[..]);
            bytes
        }
    };
    raise_descriptor_limit();
    let descriptors = descriptor_limit();
    let limits = config.connections;
    let connections = Connections::new(
        limits
            .max_connections
            .unwrap_or_else(|| default_max_connections(descriptors)),
        limits.max_connections_per_ip,
        descriptors,
    );
    let registry = Arc::new(
        Registry::new(&secret)
            .with_client_timeout(config.client_timeout)
            .with_client_limits(config.client_limits),
    );
    let webhooks = Webhooks::default();
    let restored = store::restore(&loaded, &registry, &webhooks);
    tracing::info!(
        backend = store.backend(),
        path = store.location().unwrap_or("-"),
        streams = restored.streams,
        webhooks = restored.webhooks,
        skipped = restored.skipped,
        "state store"
    );
    // In a fleet, provider limits hold for every instance together, and events say where
    // they happened.
    let fleet_slots = fleet.as_ref().map(|f| RedisSlots::new(f.clone()));
    let pool: Arc<dyn SlotPool> = match &fleet_slots {
        Some(slots) => Arc::new(slots.clone()),
        None => Arc::new(LocalSlots::default()),
    };
    if let Some(fleet) = &fleet {
        registry.events.set_instance(&fleet.instance_id);
    }
    let providers = Providers::new(pool, Some(registry.clone()));
    providers.restore(restored.providers.iter().filter_map(|(name, doc)| {
        serde_json::from_value::<ProviderRecord>(doc.clone())
            .map_err(|error| tracing::warn!(provider = %name, %error, "stored provider skipped"))
            .ok()
    }));
    let upstream = Upstream::new(&config)?.with_providers(Arc::new(providers));
    let mut config = config;
    // Guides are kept next to the database, so they are served again after a restart.
    config.data_dir = data_dir;
    let config = Arc::new(config);
    let address: Arc<std::sync::OnceLock<String>> = Arc::default();
    let presence = fleet
        .as_ref()
        .map(|f| Arc::new(Presence::new(f.clone(), registry.clone(), address.clone())));
    let store = Arc::new(store);
    let channels = Channels::new(registry.clone(), upstream.http().clone(), config.clone())
        .with_store(store.clone());
    channels.restore(
        restored
            .channel_lists
            .iter()
            .filter_map(|(id, doc)| {
                serde_json::from_value::<ChannelListRecord>(doc.clone())
                    .map_err(|error| tracing::warn!(playlist = %id, %error, "stored channel list skipped"))
                    .ok()
            })
            .collect(),
    );
    let channels = Arc::new(channels);
    let webhooks = Arc::new(webhooks);
    let sync = fleet.as_ref().map(|fleet| {
        Arc::new(crate::fleet::sync::Sync {
            fleet: fleet.clone(),
            registry: registry.clone(),
            webhooks: webhooks.clone(),
            providers: upstream.providers().clone(),
            channels: channels.clone(),
            store: store.clone(),
            secret: secret.clone(),
        })
    });
    Ok(AppState {
        channels,
        registry,
        upstream,
        signer: Arc::new(Signer::new(&secret)),
        webhooks,
        store,
        requests: Arc::default(),
        cache: Arc::new(Cache::new(config.cache)),
        live: Arc::new(Live::new(config.fanout)),
        connections: Arc::new(connections),
        config,
        presence,
        fleet_slots,
        fleet,
        address,
        sync,
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

/// Starts the background task: bytes-per-second figures and the purge of expired cache
/// entries every second, and the idle sweep
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
                state.cache.purge();
                // m3u-editor frees a provider slot on `stream_stopped`: announce it promptly.
                state.registry.note_stopped_viewing();
            }
            _ = sweep.tick() => {
                let swept = state.registry.sweep(
                    cfg.client_timeout.as_millis() as u64,
                    cfg.stream_timeout.map(|d| d.as_millis() as u64),
                );
                // In a fleet, "nobody played it" holds for this instance only (a load
                // balancer sends a channel's viewers to one instance): it is forgotten here
                // and stays in Redis for the others (and a later request here finds it).
                if !swept.streams.is_empty() && state.store.is_persistent() && state.fleet.is_none() {
                    let (store, ids) = (state.store.clone(), swept.streams.clone());
                    tokio::spawn(async move {
                        let _ = store.delete_all(crate::store::Kind::Stream, &ids).await;
                    });
                }
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
