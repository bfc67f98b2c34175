//! The background flush: every `STATE_FLUSH_INTERVAL`, the counter increments of every
//! stream and of the proxy totals since the last flush, and the documents of streams whose
//! position moved on its own (an automatic failover, a URL a resolver named), go to the
//! store as one batch. Once more at shutdown, after the viewers are gone, so a clean stop
//! keeps exact counters.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{interval, MissedTickBehavior};

use super::records::increments;
use super::{Batch, CounterKey, Kind, Store, StoreError, StreamRecord};
use crate::registry::Registry;

/// One flush now; see the module doc.
pub async fn flush_now(store: &Store, registry: &Registry) -> Result<(), StoreError> {
    store
        .submit_flush(|| {
            let mut batch = Batch::default();
            registry.each_stream(|s| {
                let key = if s.is_listed() {
                    CounterKey::Listed(s.id.clone())
                } else {
                    CounterKey::Stream(s.id.clone())
                };
                batch.add(key, increments(&s.stored, &s.counters));
                let generation = s.generation();
                if generation != s.stored.generation() {
                    if let Ok(doc) = serde_json::to_value(StreamRecord::of(s)) {
                        batch.put(Kind::Stream, &s.id, doc);
                        s.stored.set_generation(generation);
                    }
                }
            });
            batch.add(
                CounterKey::Totals,
                increments(&registry.stored_totals, &registry.totals),
            );
            batch
        })
        .await
}

/// Flushes every `period` until aborted. A failed flush is logged by the store and its
/// increments are kept there for the next one.
pub fn spawn_flusher(
    store: Arc<Store>,
    registry: Arc<Registry>,
    period: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = interval(period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let _ = flush_now(&store, &registry).await;
        }
    })
}
