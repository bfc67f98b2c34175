//! HLS sessions: a provider counts an HLS stream being watched as one connection, not its
//! sockets. The stream's first upstream fetch to a provider takes one slot; every later
//! playlist, segment and key fetch of the stream to that provider (two at once too) rides
//! on it; the slot is given back once the stream's fetches have been idle for its watch
//! window (two target durations, at least 10 s) and none is under way, or at once when the
//! stream is stopped to make room.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use url::Url;

use super::{Holder, Providers, SlotGuard};
use crate::error::UpstreamError;
use crate::registry::StreamEntry;

/// How often an open session checks whether it is idle.
const IDLE_CHECK: Duration = Duration::from_millis(500);

/// The open HLS sessions, by stream and provider.
#[derive(Debug, Default)]
pub struct HlsSessions {
    /// One cell per (stream, provider), never removed (a few bytes per pair): the cell's
    /// async lock makes its first fetches take one slot between them.
    cells: Mutex<HashMap<(String, String), Arc<Cell>>>,
}

#[derive(Debug, Default)]
struct Cell {
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
}

#[derive(Debug)]
struct Session {
    /// Dropped with the last holder of the session: the slot goes back.
    _guard: SlotGuard,
    stop: Arc<super::Stop>,
    started: Instant,
    /// Milliseconds after `started` of the last fetch's start or end.
    last_ms: AtomicU64,
    /// Fetches under way.
    in_flight: AtomicU64,
}

impl Session {
    fn touch(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// One fetch riding on its stream's session; the session stays while any is held.
#[derive(Debug)]
pub struct HlsUse {
    session: Arc<Session>,
}

impl Drop for HlsUse {
    fn drop(&mut self) {
        self.session.touch();
        self.session.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Providers {
    /// The session slot an HLS fetch of `url` for `stream` rides on: the stream's open
    /// session with the URL's provider, else a new one (which may be refused, or stop the
    /// oldest stream when `may_replace`). `None` when the URL belongs to no provider.
    pub async fn hls_use(
        &self,
        stream: &Arc<StreamEntry>,
        url: &Url,
        may_replace: bool,
    ) -> Result<Option<HlsUse>, UpstreamError> {
        let settings = stream.settings();
        let Some(provider) = self.provider_for(settings.provider.as_deref(), url) else {
            return Ok(None);
        };
        let cell = self
            .hls
            .cells
            .lock()
            .expect("hls sessions lock")
            .entry((stream.id.clone(), provider.name().to_string()))
            .or_default()
            .clone();
        let mut open = cell.session.lock().await;
        if let Some(session) = open.as_ref().filter(|s| !s.stop.is_fired()) {
            session.in_flight.fetch_add(1, Ordering::Relaxed);
            session.touch();
            return Ok(Some(HlsUse {
                session: session.clone(),
            }));
        }
        let holder = Holder {
            stream_id: Some(stream.id.clone()),
            kind: "hls",
        };
        let Some(guard) = self.slot(&settings, url, holder, may_replace).await? else {
            return Ok(None);
        };
        let session = Arc::new(Session {
            stop: guard.stop.clone(),
            _guard: guard,
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicU64::new(1),
        });
        *open = Some(session.clone());
        drop(open);
        tokio::spawn(expire(cell, session.clone(), stream.clone()));
        tracing::debug!(stream_id = %stream.id, provider = provider.name(), "HLS session took a provider slot");
        Ok(Some(HlsUse { session }))
    }
}

/// Ends a session once it is idle for the stream's watch window with no fetch under way,
/// or at once when it is stopped; its slot goes back when the last fetch on it ends.
async fn expire(cell: Arc<Cell>, session: Arc<Session>, stream: Arc<StreamEntry>) {
    let stopped = session.stop.fired();
    tokio::pin!(stopped);
    loop {
        let ended = tokio::select! {
            () = &mut stopped => true,
            () = stream.closed.cancelled() => true,
            () = tokio::time::sleep(IDLE_CHECK) => false,
        };
        let window = Duration::from_millis(stream.watch_window_ms());
        // Decided under the cell's lock, which every new fetch takes to ride on it.
        let mut open = cell.session.lock().await;
        let idle = session.in_flight.load(Ordering::Relaxed) == 0 && session.idle_for() >= window;
        if ended || idle {
            if open.as_ref().is_some_and(|s| Arc::ptr_eq(s, &session)) {
                *open = None;
            }
            break;
        }
    }
    tracing::debug!(stream_id = %stream.id, "HLS session gave its provider slot back");
}
