//! One event feed for the fleet: this instance's events go out on `p:events`, the other
//! instances' come in from it and join the local bus ([`EventBus::inject`]), so `/events`
//! on any instance shows every instance's events. Each event carries the id of the
//! instance where it happened (`instance`); webhooks deliver only their own instance's
//! events (see `events::spawn_dispatcher`), so each delivery happens once for the fleet.
//!
//! Events are a live feed, not a log: one emitted while Redis is unreachable reaches this
//! instance's readers but not the others'.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use super::{Fleet, COMMAND_TIMEOUT};
use crate::events::{Event, EventBus};

/// Waits between attempts to subscribe again, doubling up to the last.
const RESUBSCRIBE_BACKOFF: [Duration; 4] = [
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

/// Names this process on `bus` and starts both directions: the publisher of local events
/// and the subscriber that injects remote ones. Abort both handles to stop.
pub fn spawn(fleet: Arc<Fleet>, bus: &EventBus) -> [JoinHandle<()>; 2] {
    bus.set_instance(&fleet.instance_id);
    [
        tokio::spawn(publish(fleet.clone(), bus.subscribe(), bus.clone())),
        tokio::spawn(subscribe(fleet, bus.clone())),
    ]
}

/// `PUBLISH p:events` for every event emitted here.
async fn publish(
    fleet: Arc<Fleet>,
    mut receiver: tokio::sync::broadcast::Receiver<Event>,
    bus: EventBus,
) {
    let channel = fleet.key("events");
    let mut conn = fleet.conn.clone();
    let mut failing = false;
    loop {
        let event = tokio::select! {
            received = receiver.recv() => match received {
                Ok(event) => event,
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "fleet event publisher fell behind the bus");
                    continue;
                }
                Err(RecvError::Closed) => return,
            },
            () = bus.shutdown().cancelled() => return,
        };
        if event.instance.as_deref() != Some(fleet.instance_id.as_str()) {
            continue; // another instance's, injected here
        }
        let Ok(json) = serde_json::to_string(&event) else {
            continue;
        };
        let sent = tokio::time::timeout(
            COMMAND_TIMEOUT,
            redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(json)
                .query_async::<i64>(&mut conn),
        )
        .await;
        match sent {
            Ok(Ok(_)) if failing => {
                failing = false;
                tracing::info!("fleet events are published again");
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) if failing => {}
            Ok(Err(e)) => {
                failing = true;
                tracing::warn!(error = %e, "fleet event not published; the other instances miss it");
            }
            Err(_) => {
                failing = true;
                tracing::warn!(
                    "fleet event not published (timed out); the other instances miss it"
                );
            }
        }
    }
}

/// Reads `p:events` on a connection of its own, subscribing again with backoff after a
/// loss, and injects every other instance's event into the local bus.
async fn subscribe(fleet: Arc<Fleet>, bus: EventBus) {
    let channel = fleet.key("events");
    let mut attempt = 0usize;
    loop {
        let subscribed = async {
            let mut pubsub = fleet.client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            redis::RedisResult::Ok(pubsub)
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, subscribed).await {
            Ok(Ok(pubsub)) => {
                if attempt > 0 {
                    tracing::info!("fleet event feed subscribed again");
                }
                attempt = 0;
                let mut messages = pubsub.into_on_message();
                loop {
                    let message = tokio::select! {
                        m = messages.next() => m,
                        () = bus.shutdown().cancelled() => return,
                    };
                    let Some(message) = message else { break };
                    let Ok(payload) = message.get_payload::<String>() else {
                        continue;
                    };
                    match serde_json::from_str::<Event>(&payload) {
                        Ok(event) if !bus.is_local(&event) => {
                            bus.inject(event);
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "unreadable fleet event skipped"),
                    }
                }
                tracing::warn!("fleet event feed lost; subscribing again");
            }
            Ok(Err(e)) if attempt == 0 => {
                tracing::warn!(error = %e, "cannot subscribe to the fleet event feed; retrying")
            }
            _ => {}
        }
        let wait = RESUBSCRIBE_BACKOFF[attempt.min(RESUBSCRIBE_BACKOFF.len() - 1)];
        attempt += 1;
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = bus.shutdown().cancelled() => return,
        }
    }
}
