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
//! upstream per viewer. [`Live`] holds each stream's slot in its own map and makes the
//! open-or-join decision ([`Live::tune_in`]); opening an upstream and answering the player
//! are the caller's. No lock is held while an upstream opens: viewers arriving while one
//! opens wait for its outcome, not for a lock, and a hub that failed or is ending counts
//! as an empty slot once its own connection is closed, so one account never has two.

mod hub;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::http::{HeaderMap, StatusCode};
use tokio::sync::watch;

use self::hub::Joined;
pub use self::hub::{Fanout, LiveHub, ViewerBody};

use crate::config::FanoutSettings;
use crate::error::ApiError;
use crate::playlist::UriKind;
use crate::registry::{Registry, StreamEntry};
use crate::upstream::direct::{self, DirectFeed, Shape};
use crate::upstream::media::relayed_headers;
use crate::upstream::Upstream;

/// Live sharing of the whole proxy: its settings and counters, and the slot of each stream
/// that has a shared upstream, is opening one, or is known to be a file.
#[derive(Debug, Default)]
pub struct Live {
    pub fanout: Arc<Fanout>,
    slots: Arc<Slots>,
}

/// What a viewer asking for a whole direct stream gets.
pub enum Tuned {
    /// The bytes of a shared upstream: the head its first viewer got, and this viewer's body.
    Shared {
        status: StatusCode,
        headers: HeaderMap,
        body: ViewerBody,
    },
    /// An upstream of its own, as the opener returned it: its URL index, URL, answer and
    /// provider slot.
    Own(direct::Opened),
}

impl Live {
    pub fn new(settings: FanoutSettings) -> Self {
        Self {
            fanout: Arc::new(Fanout::new(settings)),
            slots: Arc::default(),
        }
    }

    /// Whether a viewer asking for the whole of `stream` should go through its slot:
    /// sharing is on, and the stream is not known to be a file.
    pub fn may_share(&self, stream: &StreamEntry) -> bool {
        self.fanout.enabled() && !matches!(self.slots.lock().get(&stream.id), Some(Slot::File))
    }

    /// Forgets what the stream's answers were, after its URLs changed (a file before may
    /// be a live channel now) or the stream was deleted. A running hub leaves by itself.
    pub fn forget_file(&self, stream_id: &str) {
        let mut slots = self.slots.lock();
        if matches!(slots.get(stream_id), Some(Slot::File)) {
            slots.remove(stream_id);
        }
    }

    /// A GET for a whole direct stream. A live TS stream is read once for all its viewers:
    /// join the shared upstream that runs, wait for the viewer opening one, or `open` it
    /// for everyone. Anything that cannot be shared is this viewer's own upstream, opened
    /// at once. No lock is held while `open` runs.
    pub async fn tune_in<F, Fut>(
        &self,
        upstream: &Upstream,
        registry: &Arc<Registry>,
        stream: &Arc<StreamEntry>,
        open: F,
    ) -> Result<Tuned, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<direct::Opened, ApiError>>,
    {
        let leading = loop {
            match self.slots.step(&stream.id, &self.fanout) {
                Step::Join(hub, body) => return Ok(shared(&hub, body)),
                Step::OpenOwn => break None,
                Step::Lead(leading) => break Some(leading),
                Step::WaitOpening(mut outcome) => {
                    let opened = outcome.wait_for(Option::is_some).await.ok();
                    match opened.and_then(|o| o.clone()) {
                        // The viewer ahead of this one just failed to open it: same answer.
                        Some(Opened::Failed(error)) => return Err(error),
                        Some(Opened::Unshared) => break None,
                        // A hub to join, or the opener gave up (its player hung up).
                        Some(Opened::Shared) | None => continue,
                    }
                }
                Step::WaitClosed(mut closed) => {
                    let _ = closed.wait_for(|closed| *closed).await;
                }
            }
        };
        let opened = open().await;
        let Some(leading) = leading else {
            return Ok(Tuned::Own(opened?));
        };
        let (index, url, res, slot) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                leading.finish(None, Opened::Failed(error.clone()));
                return Err(error);
            }
        };
        let status = res.status();
        let shape = Shape::of(status, res.headers());
        if LiveHub::can_share(status, &shape) {
            let headers = relayed_headers(&res, &url, UriKind::Media);
            let ts = shape == (Shape::Live { ts: Some(true) });
            // The hub's feed holds the slot, and gives it back when its connection closes.
            let feed = DirectFeed::new(upstream.clone(), stream.clone(), index, res, slot);
            let (hub, body) = LiveHub::start(
                self.fanout.clone(),
                registry.clone(),
                stream.clone(),
                self.slots.clone(),
                status,
                headers,
                ts,
                feed,
            );
            leading.finish(Some(Slot::Running(hub.clone())), Opened::Shared);
            return Ok(shared(&hub, body));
        }
        // A file: its later viewers go straight to the origin, never through the slot.
        let file = status.is_success() && !matches!(shape, Shape::Live { .. });
        leading.finish(file.then_some(Slot::File), Opened::Unshared);
        Ok(Tuned::Own((index, url, res, slot)))
    }
}

fn shared(hub: &LiveHub, body: ViewerBody) -> Tuned {
    Tuned::Shared {
        status: hub.status,
        headers: hub.headers.clone(),
        body,
    }
}

/// Each stream's slot by stream id; no entry is an empty slot. A std lock, held only to
/// read or change an entry, to subscribe a joiner, or for a hub's first chunk: never
/// across an `.await`, and never while an upstream opens.
#[derive(Default)]
struct Slots {
    by_stream: Mutex<HashMap<String, Slot>>,
    /// Numbers the openings, so an opener only ever clears its own.
    openings: AtomicU64,
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots")
            .field("streams", &self.lock().len())
            .finish()
    }
}

/// What a stream's slot holds.
enum Slot {
    /// A viewer is opening the upstream; the others wait for what it finds.
    Opening {
        id: u64,
        outcome: watch::Receiver<Option<Opened>>,
    },
    /// A shared upstream runs.
    Running(Arc<LiveHub>),
    /// The stream answered with a file: its viewers go straight to the origin.
    File,
}

/// What the viewer who opened the upstream found, for the viewers who waited on it.
#[derive(Clone)]
enum Opened {
    /// A shared upstream runs now: join it.
    Shared,
    /// The answer cannot be shared: open your own.
    Unshared,
    /// Opening failed: the waiting viewers get the same answer rather than each waiting
    /// out the same dead origin in turn.
    Failed(ApiError),
}

/// What a viewer does next.
enum Step<'a> {
    Join(Arc<LiveHub>, ViewerBody),
    OpenOwn,
    Lead(Leading<'a>),
    WaitOpening(watch::Receiver<Option<Opened>>),
    /// A hub is ending: wait until its upstream connection is closed.
    WaitClosed(watch::Receiver<bool>),
}

impl Slots {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        self.by_stream.lock().expect("live slots lock")
    }

    /// Looks at the stream's slot and decides, in one step under the lock: join the
    /// running hub, wait, open an upstream of one's own, or become the one who opens it.
    fn step(&self, stream_id: &str, fanout: &Arc<Fanout>) -> Step<'_> {
        let mut slots = self.lock();
        match slots.get(stream_id) {
            Some(Slot::Running(hub)) => match hub.join(fanout) {
                Joined::Body(body) => return Step::Join(hub.clone(), body),
                Joined::NotTs => return Step::OpenOwn,
                Joined::Ending(closed) => return Step::WaitClosed(closed),
            },
            Some(Slot::Opening { outcome, .. }) => return Step::WaitOpening(outcome.clone()),
            Some(Slot::File) => return Step::OpenOwn,
            None => {}
        }
        let id = self.openings.fetch_add(1, Ordering::Relaxed);
        let (outcome, waiting) = watch::channel(None);
        slots.insert(
            stream_id.to_string(),
            Slot::Opening {
                id,
                outcome: waiting,
            },
        );
        Step::Lead(Leading {
            slots: self,
            stream_id: stream_id.to_string(),
            id,
            outcome,
        })
    }

    /// Empties the stream's slot if `hub` is still in it.
    fn vacate_hub(&self, stream_id: &str, hub: &Arc<LiveHub>) {
        let mut slots = self.lock();
        if matches!(slots.get(stream_id), Some(Slot::Running(h)) if Arc::ptr_eq(h, hub)) {
            slots.remove(stream_id);
        }
    }
}

/// The viewer opening a stream's upstream for everyone. Dropped before it finishes (its
/// player hung up), it empties the slot, and the viewers waiting look again.
struct Leading<'a> {
    slots: &'a Slots,
    stream_id: String,
    id: u64,
    outcome: watch::Sender<Option<Opened>>,
}

impl Leading<'_> {
    /// Puts `slot` in the stream's slot (or empties it) and tells the waiting viewers.
    fn finish(self, slot: Option<Slot>, opened: Opened) {
        {
            let mut slots = self.slots.lock();
            if self.is_current(&slots) {
                match slot {
                    Some(slot) => slots.insert(self.stream_id.clone(), slot),
                    None => slots.remove(&self.stream_id),
                };
            }
        }
        self.outcome.send_replace(Some(opened));
    }

    fn is_current(&self, slots: &HashMap<String, Slot>) -> bool {
        matches!(slots.get(&self.stream_id), Some(Slot::Opening { id, .. }) if *id == self.id)
    }
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if self.outcome.borrow().is_some() {
            return;
        }
        let mut slots = self.slots.lock();
        if self.is_current(&slots) {
            slots.remove(&self.stream_id);
        }
    }
}
