//! m3u-proxy: a fast, dependable HTTP proxy for HLS and IPTV streams.
//!
//! It stands between media players and stream origins: playlists are rewritten so every
//! request comes back through the proxy, segments and direct files are streamed byte for
//! byte, failed origins are replaced by backup URLs, and every viewer is counted.
//!
//! # Layout
//!
//! - [`playlist`] — PURE: the lossless line-based HLS rewriter and the IPTV M3U reader.
//! - [`proxy_url`] — PURE: the signed references written into rewritten playlists.
//! - [`config`] — the validated runtime configuration and its defaults.
//! - [`connections`] — player connections: counts, limits, and the clock that closes silent ones.
//! - [`model`] — the JSON shapes of the API, shared by the server and the CLI.
//! - [`error`] — error types at each boundary, and how they become HTTP responses.
//! - [`upstream`] — the shared HTTP client: fetches with streaming-friendly timeouts, the
//!   failover policy (`upstream::failover`), the direct feed that survives a cut
//!   (`upstream::direct`) and the live TS fan-out that gives a channel's viewers one
//!   upstream connection (`upstream::fanout`).
//! - [`cache`] — single-flight, short-TTL, size-bounded sharing of segments and playlist
//!   fetches among viewers; followers get bytes as they arrive.
//! - [`store`] — the registry of streams and clients with their hot-path counters.
//! - [`events`] — typed events: the in-process bus, the SSE feed and webhooks.
//! - [`metrics`] — PURE: Prometheus text exposition and lock-free latency histograms.
//! - [`api`] — axum routers: management (JSON) and playback (HLS, direct).
//! - [`server`] — `run(config, shutdown)`: build state, spawn background tasks, accept
//!   player connections (admitted against the limits, timed while they owe a request),
//!   serve, drain.
//! - [`client`] — a typed client of the API, used by the `m3u-client` CLI.
//! - [`cli`] — what the CLI shows: tables, sizes, rates, ages, error lines, the `monitor` screen.
//!
//! The binaries in `src/bin/` only parse arguments and call into this library.

pub mod api;
pub mod cache;
pub mod cli;
pub mod client;
pub mod config;
pub mod connections;
pub mod error;
pub mod events;
pub mod metrics;
pub mod model;
pub mod playlist;
pub mod proxy_url;
pub mod server;
pub mod store;
pub mod upstream;
