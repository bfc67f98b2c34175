//! The one integration-test binary: every suite spawns the proxy on 127.0.0.1:0 against
//! local origins.

mod api;
mod binary;
mod cache;
mod channels;
mod cleanup;
mod cli;
mod direct;
mod docs;
mod e2e;
mod editor;
mod errors;
mod events;
mod failover;
mod failover_e2e;
mod fanout;
mod feed_client;
mod fleet;
mod fleet_lb;
mod fleet_view;
mod hls;
mod hostile;
mod lengthless;
mod live;
mod memory;
mod metrics;
mod origin_selftest;
mod playlist_shapes;
mod providers;
mod references;
mod repost;
mod stats;
mod store;
mod util;
mod web;
