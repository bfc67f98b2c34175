//! The slot accounting of providers behind one interface, [`SlotPool`], and its local
//! implementation, [`LocalSlots`]. A slot is taken with [`SlotPool::acquire`] and given
//! back when its [`SlotGuard`] is dropped; a holder asked to stop ([`SlotPool::stop_stream`])
//! sees its guard's [`Stop`] fire, closes its upstream and drops the guard.
//!
//! The interface is async and fallible so that a fleet-wide pool (leases in Redis) can
//! implement it too; the local one answers at once and never fails. No lock is held
//! across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Who asks for a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The stream the slot is for; `None` for requests of no stream (`/test-connection`).
    pub stream_id: Option<String>,
    /// What the connection is for: `direct`, `hls`, `probe`, `test_connection`.
    pub kind: &'static str,
}

/// One slot held now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderInfo {
    /// Numbers the slots of a pool, in the order they were taken.
    pub id: u64,
    pub stream_id: Option<String>,
    pub kind: &'static str,
    pub since: DateTime<Utc>,
}

/// What [`SlotPool::acquire`] found.
pub enum Acquired {
    Granted(SlotGuard),
    /// Every slot is taken: by these holders.
    Full(Vec<HolderInfo>),
}

/// The pool could not be asked (a fleet's store is unreachable).
#[derive(Debug, Clone, thiserror::Error)]
#[error("provider slots unavailable: {0}")]
pub struct SlotError(pub String);

/// Slot accounting of every provider, by provider name.
pub trait SlotPool: Send + Sync + std::fmt::Debug {
    /// Takes one of `max` slots of `provider` for `holder`, or says who holds them all.
    fn acquire<'a>(
        &'a self,
        provider: &'a str,
        max: u32,
        holder: Holder,
    ) -> BoxFuture<'a, Result<Acquired, SlotError>>;

    /// Asks every holder of `provider` for `stream_id` to stop, and resolves once all of
    /// their slots are given back.
    fn stop_stream<'a>(
        &'a self,
        provider: &'a str,
        stream_id: &'a str,
    ) -> BoxFuture<'a, Result<(), SlotError>>;

    /// The slots of `provider` held now, oldest first.
    fn held<'a>(&'a self, provider: &'a str) -> BoxFuture<'a, Result<Vec<HolderInfo>, SlotError>>;
}

/// The signal a holder watches: set when its stream is stopped to make room. One atomic
/// load per chunk tells a flowing body; the token is awaited only while a body waits.
#[derive(Debug, Default)]
pub struct Stop {
    flag: AtomicBool,
    token: CancellationToken,
}

impl Stop {
    pub fn fire(&self) {
        self.flag.store(true, Ordering::Release);
        self.token.cancel();
    }

    pub fn is_fired(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Resolves when the signal fires.
    pub fn fired(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }
}

/// One held slot; dropping it gives the slot back.
pub struct SlotGuard {
    pub provider: String,
    pub stop: Arc<Stop>,
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl std::fmt::Debug for SlotGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotGuard")
            .field("provider", &self.provider)
            .field("stopped", &self.stop.is_fired())
            .finish()
    }
}

impl SlotGuard {
    /// A guard that gives its slot back by calling `release`, once.
    pub fn new(
        provider: String,
        stop: Arc<Stop>,
        release: impl FnOnce() + Send + Sync + 'static,
    ) -> Self {
        Self {
            provider,
            stop,
            release: Some(Box::new(release)),
        }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

/// The slots of this process only.
#[derive(Debug, Default)]
pub struct LocalSlots {
    inner: Arc<LocalInner>,
}

#[derive(Debug, Default)]
struct LocalInner {
    /// Held slots by provider. A std lock, held only to change or read the map.
    held: Mutex<HashMap<String, Vec<Held>>>,
    /// Bumped on every release, for [`SlotPool::stop_stream`] to wait on.
    released: watch::Sender<u64>,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct Held {
    info: HolderInfo,
    stop: Arc<Stop>,
}

impl LocalInner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Held>>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release(&self, provider: &str, id: u64) {
        {
            let mut held = self.lock();
            if let Some(slots) = held.get_mut(provider) {
                slots.retain(|h| h.info.id != id);
                if slots.is_empty() {
                    held.remove(provider);
                }
            }
        }
        self.released.send_modify(|n| *n += 1);
    }
}

impl LocalSlots {
    fn try_acquire(&self, provider: &str, max: u32, holder: Holder) -> Acquired {
        let mut held = self.inner.lock();
        let slots = held.entry(provider.to_string()).or_default();
        if slots.len() >= max as usize {
            let infos = slots.iter().map(|h| h.info.clone()).collect();
            if slots.is_empty() {
                held.remove(provider);
            }
            return Acquired::Full(infos);
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let stop = Arc::new(Stop::default());
        slots.push(Held {
            info: HolderInfo {
                id,
                stream_id: holder.stream_id,
                kind: holder.kind,
                since: Utc::now(),
            },
            stop: stop.clone(),
        });
        drop(held);
        let inner = self.inner.clone();
        let name = provider.to_string();
        Acquired::Granted(SlotGuard::new(provider.to_string(), stop, move || {
            inner.release(&name, id)
        }))
    }

    fn stream_slots(&self, provider: &str, stream_id: &str) -> Vec<u64> {
        self.inner
            .lock()
            .get(provider)
            .map(|slots| {
                slots
                    .iter()
                    .filter(|h| h.info.stream_id.as_deref() == Some(stream_id))
                    .map(|h| h.info.id)
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl SlotPool for LocalSlots {
    fn acquire<'a>(
        &'a self,
        provider: &'a str,
        max: u32,
        holder: Holder,
    ) -> BoxFuture<'a, Result<Acquired, SlotError>> {
        let acquired = self.try_acquire(provider, max, holder);
        Box::pin(async move { Ok(acquired) })
    }

    fn stop_stream<'a>(
        &'a self,
        provider: &'a str,
        stream_id: &'a str,
    ) -> BoxFuture<'a, Result<(), SlotError>> {
        Box::pin(async move {
            let mut released = self.inner.released.subscribe();
            let ids = {
                let held = self.inner.lock();
                let mut ids = Vec::new();
                for h in held.get(provider).into_iter().flatten() {
                    if h.info.stream_id.as_deref() == Some(stream_id) {
                        h.stop.fire();
                        ids.push(h.info.id);
                    }
                }
                ids
            };
            loop {
                let left = self.stream_slots(provider, stream_id);
                if !left.iter().any(|id| ids.contains(id)) {
                    return Ok(());
                }
                if released.changed().await.is_err() {
                    return Ok(());
                }
            }
        })
    }

    fn held<'a>(&'a self, provider: &'a str) -> BoxFuture<'a, Result<Vec<HolderInfo>, SlotError>> {
        let infos = self
            .inner
            .lock()
            .get(provider)
            .map(|slots| slots.iter().map(|h| h.info.clone()).collect())
            .unwrap_or_default();
        Box::pin(async move { Ok(infos) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(stream: &str) -> Holder {
        Holder {
            stream_id: Some(stream.into()),
            kind: "direct",
        }
    }

    #[tokio::test]
    async fn never_more_than_max_and_a_drop_gives_the_slot_back() {
        let pool = LocalSlots::default();
        let Acquired::Granted(a) = pool.acquire("p", 1, holder("a")).await.unwrap() else {
            panic!("first slot")
        };
        match pool.acquire("p", 1, holder("b")).await.unwrap() {
            Acquired::Full(by) => assert_eq!(by[0].stream_id.as_deref(), Some("a")),
            Acquired::Granted(_) => panic!("two slots of one"),
        }
        // Other providers are counted apart.
        assert!(matches!(
            pool.acquire("q", 1, holder("b")).await.unwrap(),
            Acquired::Granted(_)
        ));
        drop(a);
        assert!(pool.held("p").await.unwrap().is_empty());
        assert!(matches!(
            pool.acquire("p", 1, holder("b")).await.unwrap(),
            Acquired::Granted(_)
        ));
    }

    #[tokio::test]
    async fn stopping_a_stream_fires_its_holders_and_waits_for_their_release() {
        let pool = Arc::new(LocalSlots::default());
        let Acquired::Granted(a) = pool.acquire("p", 2, holder("a")).await.unwrap() else {
            panic!()
        };
        let Acquired::Granted(_b) = pool.acquire("p", 2, holder("b")).await.unwrap() else {
            panic!()
        };
        let stop = a.stop.clone();
        let holder_task = tokio::spawn(async move {
            stop.fired().await;
            drop(a);
        });
        let stopping = pool.clone();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stopping.stop_stream("p", "a"),
        )
        .await
        .expect("released in time")
        .unwrap();
        holder_task.await.unwrap();
        let left = pool.held("p").await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].stream_id.as_deref(), Some("b"));
    }
}
