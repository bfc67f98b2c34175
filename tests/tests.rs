//! The one integration-test binary: every suite spawns the proxy on 127.0.0.1:0 against
//! local origins.

mod api;
mod cli;
mod direct;
mod e2e;
mod hls;
mod origin_selftest;
mod util;
