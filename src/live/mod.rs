//! Live TS fan-out: every viewer of a live MPEG-TS stream shares one upstream connection.
//!
//! IPTV providers often allow one or two connections per account, and a channel watched in
//! five rooms should not cost five upstream streams. The first viewer of a live stream
//! opens the upstream as usual; its [`DirectFeed`] (reconnects, failover, packet alignment)
//! then runs in a [`LiveHub`] task of its own that broadcasts each chunk of whole TS
//! packets. Viewers who arrive while it runs join at the next chunk, so every viewer starts
//! on a packet boundary.
//!
//! Only live answers (no length) whose bytes are TS are shared: a file, a byte range or a
//! live stream in another container (whose headers a late joiner would miss) keeps one
//! upstream per viewer. [`Live`] holds each stream's [`LiveSlot`] in its own map and makes
//! the open-or-join decision ([`Live::tune_in`]); opening an upstream and answering the
//! player are the caller's.

mod hub;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use tokio::time::Instant;
use url::Url;

pub use hub::{Fanout, LiveHub, ViewerBody};

use crate::config::FanoutSettings;
use crate::error::ApiError;
use crate::registry::{Registry, StreamEntry};
use crate::upstream::direct::{DirectFeed, Shape};
use crate::upstream::media::relayed_headers;
use crate::upstream::Upstream;

/// Live sharing of the whole proxy: its settings and counters, and one slot per stream
/// that had a viewer tune in.
#[derive(Debug, Default)]
pub struct Live {
    pub fanout: Arc<Fanout>,
    slots: Mutex<HashMap<String, Arc<LiveSlot>>>,
}

/// What a viewer asking for a whole direct stream gets.
pub enum Tuned {
    /// The bytes of a shared upstream: the head its first viewer got, and this viewer's body.
    Shared {
        status: axum::http::StatusCode,
        headers: HeaderMap,
        body: ViewerBody,
    },
    /// An upstream of its own, as the opener returned it: its URL index, URL and answer.
    Own(usize, Url, reqwest::Response),
}

impl Live {
    pub fn new(settings: FanoutSettings) -> Self {
        Self {
            fanout: Arc::new(Fanout::new(settings)),
            slots: Mutex::default(),
        }
    }

    /// Whether a viewer asking for the whole of `stream` should go through its slot:
    /// sharing is on, and the stream is not known to be a file.
    pub fn may_share(&self, stream: &StreamEntry) -> bool {
        self.fanout.enabled() && self.slot(&stream.id).may_share()
    }

    /// Forgets what the stream's answers were, after its URLs changed: a file before may
    /// be a live channel now.
    pub fn forget_file(&self, stream_id: &str) {
        if let Some(slot) = self.slots.lock().expect("live slots lock").get(stream_id) {
            slot.is_file.store(false, Ordering::Relaxed);
        }
    }

    fn slot(&self, stream_id: &str) -> Arc<LiveSlot> {
        self.slots
            .lock()
            .expect("live slots lock")
            .entry(stream_id.to_string())
            .or_default()
            .clone()
    }

    /// A GET for a whole direct stream. A live TS stream is read once for all its viewers:
    /// join the shared upstream that runs, or `open` one while holding the stream's slot,
    /// so viewers arriving together open it once. Anything else is this viewer's own
    /// upstream.
    pub async fn tune_in<F, Fut>(
        &self,
        upstream: &Upstream,
        registry: &Arc<Registry>,
        stream: &Arc<StreamEntry>,
        open: F,
    ) -> Result<Tuned, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(usize, Url, reqwest::Response), ApiError>>,
    {
        let arrived = Instant::now();
        let live_slot = self.slot(&stream.id);
        let mut slot = live_slot.lock().await;
        let running = slot
            .hub
            .as_ref()
            .and_then(|hub| Some((hub.clone(), hub.join(&self.fanout)?)));
        if let Some((hub, body)) = running {
            drop(slot);
            return Ok(shared(&hub, body));
        }
        if let Some(error) = slot.failed_since(arrived) {
            // The viewer ahead of this one just failed to open it: same answer, at once.
            return Err(error);
        }
        let (index, url, res) = open().await.inspect_err(|e| slot.record_failure(e))?;
        let shape = Shape::of(res.status(), res.headers());
        if slot.hub.is_none() && LiveHub::can_share(res.status(), &shape) {
            let headers = relayed_headers(&res, &url, crate::playlist::UriKind::Media);
            let ts = shape == (Shape::Live { ts: Some(true) });
            let status = res.status();
            let feed = DirectFeed::new(upstream.clone(), stream.clone(), index, res);
            let (hub, body) = LiveHub::start(
                self.fanout.clone(),
                registry.clone(),
                stream.clone(),
                live_slot.clone(),
                status,
                headers,
                ts,
                feed,
            );
            slot.hub = Some(hub.clone());
            drop(slot);
            return Ok(shared(&hub, body));
        }
        if res.status().is_success() && !matches!(shape, Shape::Live { .. }) {
            // A file: its later viewers go straight to the origin, never through the slot.
            live_slot.is_file.store(true, Ordering::Relaxed);
        }
        drop(slot);
        Ok(Tuned::Own(index, url, res))
    }
}

fn shared(hub: &LiveHub, body: ViewerBody) -> Tuned {
    Tuned::Shared {
        status: hub.status,
        headers: hub.headers.clone(),
        body,
    }
}

/// A stream's place for its shared live upstream. The async lock makes "is one running?"
/// and "open one" a single step, so viewers arriving together open the upstream once: the
/// others wait for its answer and join, or get its failure.
#[derive(Default)]
pub struct LiveSlot {
    state: tokio::sync::Mutex<SlotState>,
    /// Set once the stream answered as a file: its viewers never wait on the lock again.
    is_file: AtomicBool,
}

impl std::fmt::Debug for LiveSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSlot")
            .field("is_file", &self.is_file)
            .finish_non_exhaustive()
    }
}

/// What a stream's slot holds, behind its lock.
#[derive(Default)]
pub struct SlotState {
    /// The shared upstream running now, if any.
    pub hub: Option<Arc<LiveHub>>,
    /// The last failure to open the upstream, and when it was met.
    failed: Option<(Instant, ApiError)>,
}

impl SlotState {
    /// The failure met by a viewer who opened the upstream while the caller, here since
    /// `arrived`, waited for the lock: retrying at once would make each waiting viewer
    /// wait out the same dead origin in turn.
    fn failed_since(&self, arrived: Instant) -> Option<ApiError> {
        let (at, error) = self.failed.as_ref()?;
        (*at >= arrived).then(|| error.clone())
    }

    /// Remembers a failure to open the upstream, for the viewers waiting behind it.
    fn record_failure(&mut self, error: &ApiError) {
        self.failed = Some((Instant::now(), error.clone()));
    }
}

impl LiveSlot {
    fn may_share(&self) -> bool {
        !self.is_file.load(Ordering::Relaxed)
    }

    async fn lock(&self) -> tokio::sync::MutexGuard<'_, SlotState> {
        self.state.lock().await
    }
}
