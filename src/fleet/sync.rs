//! One registry for the fleet: what other instances write reaches this one.
//!
//! [`spawn`] subscribes to `p:changes` on a pub/sub connection of its own. Each message
//! names a document another instance wrote or deleted; this instance reads the document
//! as Redis holds it now (Redis is the truth, not the message) and applies it: a stream is
//! registered, updated, or follows the stored failover position (its viewers here move
//! with it), or is removed, ending its viewers here; webhooks and providers are replaced
//! or removed; a channel list unknown here is taken in (it then refreshes on its own), and
//! one deleted elsewhere is deleted here.
//! An instance's own messages are skipped: its state is already there.
//!
//! After every (re)subscription, the whole registry is compared with Redis, since
//! messages sent while the connection was down are lost: documents changed elsewhere are
//! applied, streams gone from Redis are removed here (after a second look 2 s later, taken
//! beside the follower, which goes on applying changes meanwhile). When Redis comes back
//! empty (it restarted without persistence: `p:secret` is missing), this instance writes
//! back its secret and every document it holds instead, so the fleet's state survives.
//!
//! While the subscription is down, or a `PING` every second gets no answer within
//! [`COMMAND_TIMEOUT`], the fleet counts as unreachable ([`Fleet::is_reachable`]):
//! `/health` says `degraded`. The connection is retried with backoff (100 ms doubling to
//! 1 s). Playback never waits for any of this.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use tokio::task::JoinHandle;

use super::{doc_key, Change, ChangeOp, Fleet, COMMAND_TIMEOUT};
use crate::channels::{ChannelListRecord, Channels};
use crate::events::{WebhookRecord, Webhooks};
use crate::providers::{ProviderRecord, Providers};
use crate::registry::{Registry, Removal, RestoredStream};
use crate::store::{Batch, Kind, Store, StreamRecord};

/// How long a resynchronization waits before it takes a document held here but not
/// in Redis for deleted: a write made here just before has landed by then.
const SECOND_LOOK: Duration = Duration::from_secs(2);

/// The longest pause between two attempts to subscribe again: one connection attempt a
/// second is cheap, and the fleet's view comes back within a second of Redis.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How long a read on miss (an id unknown here) may wait for Redis.
pub const MISS_TIMEOUT: Duration = Duration::from_millis(500);

/// What the subscriber applies changes to.
#[derive(Clone)]
pub struct Sync {
    pub fleet: Arc<Fleet>,
    pub registry: Arc<Registry>,
    pub webhooks: Arc<Webhooks>,
    pub providers: Arc<Providers>,
    pub channels: Arc<Channels>,
    pub store: Arc<Store>,
    /// This instance's signing secret, written back to a Redis that lost it.
    pub secret: Vec<u8>,
}

/// Starts the subscriber; abort the handle to stop it.
pub fn spawn(sync: Sync) -> JoinHandle<()> {
    tokio::spawn(async move { sync.run().await })
}

impl Sync {
    async fn run(&self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.subscribe_and_follow().await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::debug!(error = %e, "fleet subscription failed");
                }
            }
            if self.fleet.reachable.swap(false, Ordering::Relaxed) {
                tracing::warn!(redis = %self.fleet.location, "lost the fleet's Redis; serving what this instance knows");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Subscribes, resynchronizes, then applies messages until the connection fails.
    async fn subscribe_and_follow(&self) -> redis::RedisResult<()> {
        let mut pubsub =
            tokio::time::timeout(COMMAND_TIMEOUT, self.fleet.client.get_async_pubsub())
                .await
                .map_err(|_| timed_out())??;
        tokio::time::timeout(COMMAND_TIMEOUT, pubsub.subscribe(self.fleet.key("changes")))
            .await
            .map_err(|_| timed_out())??;
        self.resync().await?;
        if !self.fleet.reachable.swap(true, Ordering::Relaxed) {
            tracing::info!(redis = %self.fleet.location, "following the fleet's changes");
        }
        let mut messages = pubsub.into_on_message();
        let mut ping = tokio::time::interval(Duration::from_secs(1));
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else {
                        return Err(redis::RedisError::from((redis::ErrorKind::Io, "subscription closed")));
                    };
                    let Ok(payload) = message.get_payload::<String>() else { continue };
                    match serde_json::from_str::<Change>(&payload) {
                        Ok(change) if change.instance != self.fleet.instance_id => {
                            if let Err(e) = self.apply_change(&change).await {
                                tracing::warn!(kind = change.kind.as_str(), id = %change.id, error = %e, "cannot read a change of the fleet; resynchronizing");
                                self.resync().await?;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "unreadable fleet change ignored"),
                    }
                }
                _ = ping.tick() => {
                    let mut conn = self.fleet.conn.clone();
                    let answered = tokio::time::timeout(
                        COMMAND_TIMEOUT,
                        redis::cmd("PING").query_async::<String>(&mut conn),
                    )
                    .await
                    .is_ok_and(|r| r.is_ok());
                    if !answered {
                        return Err(timed_out());
                    }
                }
            }
        }
    }

    /// Reads the changed document and applies it.
    async fn apply_change(&self, change: &Change) -> redis::RedisResult<()> {
        let doc = match change.op {
            ChangeOp::Delete => None,
            ChangeOp::Put => self.read_doc(change.kind, &change.id).await?,
        };
        self.apply(change.kind, &change.id, doc);
        Ok(())
    }

    /// One document as Redis holds it (`None`: there is none).
    pub async fn read_doc(
        &self,
        kind: Kind,
        id: &str,
    ) -> redis::RedisResult<Option<serde_json::Value>> {
        let mut conn = self.fleet.conn.clone();
        let body: Option<String> = tokio::time::timeout(
            COMMAND_TIMEOUT,
            conn.hget(doc_key(&self.fleet.prefix, kind), id),
        )
        .await
        .map_err(|_| timed_out())??;
        Ok(body.and_then(|b| serde_json::from_str(&b).ok()))
    }

    /// Applies one document (`None`: deleted) to this instance.
    fn apply(&self, kind: Kind, id: &str, doc: Option<serde_json::Value>) {
        match (kind, doc) {
            (Kind::Stream, Some(doc)) => self.apply_stream(id, doc),
            (Kind::Stream, None) => {
                if self
                    .registry
                    .remove_stream(id, Removal::Elsewhere)
                    .is_some()
                {
                    tracing::debug!(stream_id = %id, "stream deleted elsewhere in the fleet");
                }
            }
            (Kind::Webhook, Some(doc)) => match serde_json::from_value::<WebhookRecord>(doc) {
                Ok(record) if self.webhooks.record(id).as_ref() == Some(&record) => {}
                Ok(record) => {
                    if let Err(error) = self.webhooks.restore(record) {
                        tracing::warn!(webhook_id = %id, %error, "webhook of the fleet skipped");
                    }
                }
                Err(error) => {
                    tracing::warn!(webhook_id = %id, %error, "unreadable webhook of the fleet")
                }
            },
            (Kind::Webhook, None) => {
                self.webhooks.remove(id);
            }
            (Kind::Provider, Some(doc)) => match serde_json::from_value::<ProviderRecord>(doc) {
                Ok(record) => {
                    if self.providers.get(id).is_none_or(|p| p.record != record) {
                        self.providers.put(record);
                    }
                }
                Err(error) => {
                    tracing::warn!(provider = %id, %error, "unreadable provider of the fleet")
                }
            },
            (Kind::Provider, None) => {
                self.providers.delete(id);
            }
            (Kind::ChannelList, Some(doc)) => {
                let known = self.channels.records().iter().any(|r| r.id == id);
                match serde_json::from_value::<ChannelListRecord>(doc) {
                    Ok(record) if known => {
                        self.channels.follow(record);
                    }
                    Ok(record) => self.channels.restore(vec![record], &Default::default()),
                    Err(error) => {
                        tracing::warn!(playlist = %id, %error, "unreadable channel list of the fleet")
                    }
                }
            }
            // Deleted here as there: its streams go (those still playing here when their
            // viewers leave). Writing the delete again is harmless: the others no longer
            // have the list when it reaches them.
            (Kind::ChannelList, None) => {
                let known = self.channels.records().iter().any(|r| r.id == id);
                if known {
                    let (channels, id) = (self.channels.clone(), id.to_string());
                    tokio::spawn(async move {
                        if let Err(error) = channels.delete(&id).await {
                            tracing::debug!(playlist = %id, %error, "channel list deleted elsewhere");
                        }
                    });
                }
            }
        }
    }

    fn apply_stream(&self, id: &str, doc: serde_json::Value) {
        let record = serde_json::from_value::<StreamRecord>(doc)
            .map_err(|e| e.to_string())
            .and_then(|r| Ok((r.settings()?, r)));
        match record {
            Ok((settings, record)) => {
                self.registry.apply_remote(RestoredStream {
                    id: id.to_string(),
                    created_at: record.created_at,
                    settings,
                    index: record.failover_index,
                    generation: record.generation,
                    counters: [0; 4],
                });
            }
            Err(error) => tracing::warn!(stream_id = %id, %error, "unreadable stream of the fleet"),
        }
    }

    /// Looks for a stream unknown here in Redis (bounded by [`MISS_TIMEOUT`]) and takes
    /// it in; true when it is now known.
    pub async fn find_stream(&self, id: &str) -> bool {
        let doc = tokio::time::timeout(MISS_TIMEOUT, self.read_doc(Kind::Stream, id)).await;
        match doc {
            Ok(Ok(Some(doc))) => {
                self.apply_stream(id, doc);
                self.registry.stream(id).is_some()
            }
            _ => false,
        }
    }

    /// Compares everything with Redis; see the module doc.
    async fn resync(&self) -> redis::RedisResult<()> {
        let mut conn = self.fleet.conn.clone();
        let secret: Option<String> =
            tokio::time::timeout(COMMAND_TIMEOUT, conn.get(self.fleet.key("secret")))
                .await
                .map_err(|_| timed_out())??;
        if secret.is_none() {
            return self.reseed().await;
        }
        // Held here but not in Redis: deleted elsewhere while this instance did not
        // listen, or created here a moment ago with its write still on the way. Which one
        // is told by a second look once such a write has had time to land.
        let mut missing: Vec<(Kind, String)> = Vec::new();
        for kind in Kind::ALL {
            let docs: std::collections::HashMap<String, String> = tokio::time::timeout(
                COMMAND_TIMEOUT * 5,
                conn.hgetall(doc_key(&self.fleet.prefix, kind)),
            )
            .await
            .map_err(|_| timed_out())??;
            if kind == Kind::Stream {
                for s in self.registry.streams() {
                    // A channel list's streams are kept with the list, not on their own.
                    if !docs.contains_key(&s.id) && !self.channels.owns_stream(&s.id) {
                        missing.push((kind, s.id.clone()));
                    }
                }
            }
            if kind == Kind::Webhook {
                for hook in self.webhooks.list() {
                    if !docs.contains_key(&hook.id) {
                        missing.push((kind, hook.id.clone()));
                    }
                }
            }
            for (id, body) in docs {
                if let Ok(doc) = serde_json::from_str(&body) {
                    self.apply(kind, &id, Some(doc));
                }
            }
        }
        if !missing.is_empty() {
            // Apart from the follower, which meanwhile applies the fleet's changes as they
            // come (a failover on another instance must not wait for the second look).
            let this = self.clone();
            tokio::spawn(async move { this.second_look(missing).await });
        }
        Ok(())
    }

    /// After [`SECOND_LOOK`], removes what is still held here but missing in Redis. A
    /// document that cannot be looked up is kept: the next resync looks again.
    async fn second_look(&self, missing: Vec<(Kind, String)>) {
        tokio::time::sleep(SECOND_LOOK).await;
        let mut conn = self.fleet.conn.clone();
        for (kind, id) in missing {
            let there = tokio::time::timeout(
                COMMAND_TIMEOUT,
                conn.hexists::<_, _, bool>(doc_key(&self.fleet.prefix, kind), &id),
            )
            .await;
            match there {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => match kind {
                    Kind::Webhook => {
                        self.webhooks.remove(&id);
                    }
                    _ => self.apply(kind, &id, None),
                },
                Ok(Err(_)) | Err(_) => {
                    tracing::debug!(kind = kind.as_str(), %id, "second look failed; kept until the next resync");
                    return;
                }
            }
        }
    }

    /// Redis lost everything: puts this instance's secret and documents back.
    async fn reseed(&self) -> redis::RedisResult<()> {
        tracing::warn!(redis = %self.fleet.location, "the fleet's Redis is empty (restarted without persistence?): writing back what this instance holds");
        let mut conn = self.fleet.conn.clone();
        let secret = String::from_utf8_lossy(&self.secret).into_owned();
        tokio::time::timeout(
            COMMAND_TIMEOUT,
            redis::cmd("SET")
                .arg(self.fleet.key("secret"))
                .arg(secret)
                .arg("NX")
                .query_async::<Option<String>>(&mut conn),
        )
        .await
        .map_err(|_| timed_out())??;
        let registry = self.registry.clone();
        let webhooks = self.webhooks.clone();
        let providers = self.providers.clone();
        let channels = self.channels.clone();
        let written = self
            .store
            .submit(move || {
                let mut batch = Batch::default();
                for s in registry.streams() {
                    if channels.owns_stream(&s.id) {
                        continue;
                    }
                    if let Ok(doc) = serde_json::to_value(StreamRecord::of(&s)) {
                        batch.put(Kind::Stream, &s.id, doc);
                    }
                }
                for hook in webhooks.list() {
                    let doc = webhooks.record(&hook.id).map(serde_json::to_value);
                    if let Some(Ok(doc)) = doc {
                        batch.put(Kind::Webhook, &hook.id, doc);
                    }
                }
                for provider in providers.all() {
                    if let Ok(doc) = serde_json::to_value(&provider.record) {
                        batch.put(Kind::Provider, provider.name(), doc);
                    }
                }
                for record in channels.records() {
                    if let Ok(doc) = serde_json::to_value(&record) {
                        batch.put(Kind::ChannelList, &record.id, doc);
                    }
                }
                batch
            })
            .await;
        written.map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Io, "write back", e.to_string()))
        })
    }
}

fn timed_out() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "timed out"))
}
