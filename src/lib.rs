//! m3u-proxy: a fast, dependable HTTP proxy for HLS and IPTV streams.
//!
//! It stands between media players and stream origins: playlists are rewritten so every
//! request comes back through the proxy, segments and direct files are streamed byte for
//! byte, failed origins are replaced by backup URLs, and every viewer is counted.
//!
//! # Layout
//!
//! Each module, what it owns, and (after "Uses") the modules of the crate it imports. The
//! import graph has no cycle: a module only uses modules listed before it here.
//!
//! - [`playlist`] — PURE: the lossless line-based HLS rewriter and the IPTV M3U reader.
//! - [`proxy_url`] — PURE: the opaque references (encrypted, authenticated) written into
//!   rewritten playlists. Uses `playlist`.
//! - [`config`] — the validated runtime configuration and its defaults.
//! - [`connections`] — player connections: counts, limits, and the clock that closes silent ones.
//! - [`model`] — the JSON shapes of the API, shared by the server and the CLI.
//! - [`error`] — [`error::UpstreamError`] (one variant per origin failure, each saying
//!   through [`error::Remedy`] whether another try or another URL can help) and
//!   [`error::ApiError`], the HTTP layer's `{"detail","code"}` answer. Uses `model`.
//! - [`metrics`] — PURE: Prometheus text exposition and lock-free latency histograms.
//! - [`events`] — typed events: the in-process bus (which carries the process's one
//!   shutdown token), the webhook registry and its dispatcher (the `/events` and
//!   `/webhooks` handlers are in `api`). Uses `model`.
//! - [`stream`] — a stream as plain data: its settings, its URL cursor (index in use,
//!   generation, switch cap and log) and the variant listings of each URL; emits nothing.
//!   Uses `model`, `playlist`.
//! - [`registry`] — the streams and clients of this process with their hot-path counters,
//!   and the cleanup of idle ones; a stream entry composes `stream` types and announces
//!   switches as events. Uses `stream`, `events`, `model`, `error`.
//! - [`providers`] — accounts or origins with a connection limit: their definitions, the
//!   host matching of URLs, the slots behind one interface (`SlotPool`, local here) with
//!   `reject` and `replace_oldest`, and the one slot of a watched HLS stream
//!   (`providers::hls`). Uses `registry`, `events`, `stream`, `model`, `error`.
//! - [`upstream`] — talking to origins: the shared HTTP client and its checks, the
//!   failover policy (`upstream::failover`: retry here or move down the URL list), the
//!   direct feed that survives a cut (`upstream::direct`) and the small-read client it
//!   opens direct streams with (`upstream::feed`), and segment fetches with
//!   retries, the 404-at-the-live-edge rule and the mirror after a switch
//!   (`upstream::media`); every connection takes its provider's slot first. Uses
//!   `providers`, `registry`, `stream`, `config`, `error`, `metrics`, `playlist`.
//! - [`cache`] — single-flight, short-TTL, size-bounded sharing of segments and playlist
//!   fetches among viewers; followers get bytes as they arrive. Uses `upstream`, `config`,
//!   `error`.
//! - [`live`] — the live TS fan-out that gives a channel's viewers one upstream
//!   connection: each stream's slot in its own map, the open-or-join decision, and the hub
//!   task that broadcasts a feed (`live::hub`). Uses `upstream`, `registry`, `config`,
//!   `error`, `playlist`.
//! - [`store`] — durable state: the one persistence interface (documents by kind and id,
//!   additive counters, a load at start-up), its `memory` and `sqlite` backends on a
//!   writer thread of their own, the stream and webhook documents, the restore before
//!   listening and the background counter flush. Uses `registry`, `events`, `stream`,
//!   `model`, `metrics`, `config`.
//! - [`channels`] — channel lists: fetched or uploaded M3U lists imported atomically, each
//!   channel a registered stream (duplicates of merged lists become failover URLs), the
//!   refresh loop, retiring of dropped channels, the stored guides; what the proxied list
//!   and the HDHomeRun lineup say. Uses `playlist`, `registry`, `upstream`, `stream`,
//!   `events`, `config`, `model`, `store` (each list's record).
//! - [`fleet`] — several instances as one proxy through one Redis (`--store redis`): the
//!   connection (reconnecting with backoff), the name of every key the fleet uses, the
//!   store's Redis backend and the fleet's shared secret (`fleet::backend`), and the
//!   follower of other instances' changes with its full resync and reads on miss
//!   (`fleet::sync`); the heartbeats and the fleet view the statistics routes report
//!   (`fleet::presence`), the one event feed (`fleet::events`) and provider slots as
//!   leases in Redis (`fleet::slots`). Uses `store`, `channels`, `providers`, `registry`,
//!   `events`, `model`, `config`.
//! - [`api`] — axum routers: management (JSON), playback (HLS, direct), `/metrics`,
//!   `/events` (SSE), `/webhooks`, `/providers`, channel lists and the HDHomeRun tuner
//!   (`api::channels`), and m3u-editor's forms of them
//!   (`api::editor`: streams by metadata, `/info`, `/test-connection`, strict live TS, sticky
//!   sessions), the dashboard and `/docs` embedded from `ui/` (`api::ui`), and
//!   `/openapi.json` generated from the handlers and `model` types (`api::openapi`).
//!   Translates HTTP to calls on the modules above.
//! - [`logging`] — the server's log set-up: checked `LOG_LEVEL`, colour only on a terminal,
//!   text or JSON lines.
//! - [`server`] — `run(config, shutdown)`: build state, spawn background tasks, accept
//!   player connections (admitted against the limits, timed while they owe a request),
//!   serve, drain.
//! - [`client`] — a typed client of the API, used by the `m3u-client` CLI. Uses `model`.
//! - [`cli`] — what the CLI shows: tables, sizes, rates, ages, error lines, the `monitor`
//!   screen. Uses `client`, `model`.
//!
//! The binaries in `src/bin/` only parse arguments and call into this library.

pub mod api;
pub mod cache;
pub mod channels;
pub mod cli;
pub mod client;
pub mod config;
pub mod connections;
pub mod error;
pub mod events;
pub mod fleet;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod playlist;
pub mod providers;
pub mod proxy_url;
pub mod registry;
pub mod server;
pub mod store;
pub mod stream;
pub mod upstream;
