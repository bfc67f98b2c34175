//! Fleet-wide provider limits: [`RedisSlots`], a [`SlotPool`] whose slots are leases in
//! Redis, so `max_connections` holds across every instance.
//!
//! - `p:slots:{provider}` is a sorted set of holders (`{instance}:{n}`) scored by the
//!   expiry of their lease; `p:slotinfo:{provider}` says who each holder is (stream, kind,
//!   since, instance). One Lua script drops the expired leases, counts the rest and adds
//!   the new one, so two instances racing for the last slot cannot both get it.
//! - Each instance renews its own leases ([`LEASE`], every [`RENEW_EVERY`]); a guard's drop
//!   gives its slot back at once. A crashed instance's slots are free once its leases
//!   expire, at most [`LEASE`] later.
//! - [`SlotPool::stop_stream`] fires this instance's holders of the stream and publishes
//!   the request on `p:stops`, where every instance fires its own; it resolves once Redis
//!   shows none of the stream's slots left.
//! - Redis unreachable (or slower than [`ACQUIRE_TIMEOUT`]): playback does not wait on it.
//!   The connection takes a slot of this instance's own pool under the same limit (the
//!   limit then holds per instance, not for the fleet), and a warning is logged; leases
//!   are taken in Redis again as soon as it answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::{Fleet, COMMAND_TIMEOUT};
use crate::providers::{
    Acquired, Holder, HolderInfo, LocalSlots, SlotError, SlotGuard, SlotPool, Stop,
};

/// How long a slot stays taken without a renewal.
pub const LEASE: Duration = Duration::from_secs(30);

/// How often an instance renews its leases.
pub const RENEW_EVERY: Duration = Duration::from_secs(10);

/// The longest a connection waits on Redis for a slot before using the local pool.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_millis(500);

/// After Redis failed, how long slots come from the local pool without asking it.
const FALLBACK_FOR: Duration = Duration::from_secs(2);

/// How often `stop_stream` looks whether the stopped slots are given back.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Drops expired leases, then adds ARGV[4] if fewer than ARGV[3] are left; returns
/// `{"granted"}` or `{"full", info...}` with the info of every holder.
const ACQUIRE: &str = r#"
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, m in ipairs(expired) do redis.call('HDEL', KEYS[2], m) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local out = {'full'}
  for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    local info = redis.call('HGET', KEYS[2], m)
    if info then table.insert(out, info) end
  end
  return out
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('HSET', KEYS[2], ARGV[4], ARGV[5])
return {'granted'}
"#;

/// Who holds a slot, as `p:slotinfo:{provider}` keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SlotInfo {
    instance: String,
    id: u64,
    stream_id: Option<String>,
    kind: String,
    since: DateTime<Utc>,
}

impl SlotInfo {
    fn holder_info(&self) -> HolderInfo {
        HolderInfo {
            id: self.id,
            stream_id: self.stream_id.clone(),
            kind: static_kind(&self.kind),
            since: self.since,
        }
    }
}

/// The holder kinds the proxy uses, as the `'static` names [`Holder`] takes.
fn static_kind(kind: &str) -> &'static str {
    ["direct", "hls", "probe", "test_connection"]
        .into_iter()
        .find(|k| *k == kind)
        .unwrap_or("other")
}

/// A request on `p:stops`.
#[derive(Debug, Serialize, Deserialize)]
struct StopRequest {
    provider: String,
    stream_id: String,
}

/// A slot held by this instance.
#[derive(Debug)]
struct Mine {
    provider: String,
    info: SlotInfo,
    stop: Arc<Stop>,
}

/// Provider slots shared by the fleet; see the module doc.
#[derive(Debug, Clone)]
pub struct RedisSlots {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    fleet: Arc<Fleet>,
    lease: Duration,
    /// Used while Redis cannot be asked.
    local: LocalSlots,
    /// This instance's leases by holder name. A std lock, never held across an await.
    mine: Mutex<HashMap<String, Mine>>,
    next_id: AtomicU64,
    /// Unix ms until which slots come from `local` without asking Redis.
    fallback_until: AtomicI64,
    script: redis::Script,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Mine>> {
        self.mine.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn slots_key(&self, provider: &str) -> String {
        self.fleet.key(&format!("slots:{provider}"))
    }

    fn info_key(&self, provider: &str) -> String {
        self.fleet.key(&format!("slotinfo:{provider}"))
    }

    /// Fires this instance's holders of `stream_id` at `provider`.
    fn fire(&self, provider: &str, stream_id: &str) -> usize {
        let mine = self.lock();
        let mut fired = 0;
        for m in mine.values() {
            if m.provider == provider && m.info.stream_id.as_deref() == Some(stream_id) {
                m.stop.fire();
                fired += 1;
            }
        }
        fired
    }

    /// Forgets a lease here and removes it from Redis (in the background: a drop cannot
    /// wait). Without a runtime (the process is ending) the lease just expires.
    fn release(self: &Arc<Self>, member: String) {
        let Some(mine) = self.lock().remove(&member) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = self.clone();
        runtime.spawn(async move {
            let mut conn = inner.fleet.conn.clone();
            let mut pipe = redis::pipe();
            pipe.cmd("ZREM")
                .arg(inner.slots_key(&mine.provider))
                .arg(&member)
                .ignore()
                .cmd("HDEL")
                .arg(inner.info_key(&mine.provider))
                .arg(&member)
                .ignore();
            let removed = pipe.query_async::<()>(&mut conn);
            match tokio::time::timeout(COMMAND_TIMEOUT, removed).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, holder = %member, "slot release failed; its lease expires")
                }
                Err(_) => tracing::debug!(holder = %member, "slot release timed out; its lease expires"),
            }
        });
    }

    async fn try_acquire(
        self: &Arc<Self>,
        provider: &str,
        max: u32,
        holder: &Holder,
    ) -> redis::RedisResult<Acquired> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let member = format!("{}:{id}", self.fleet.instance_id);
        let info = SlotInfo {
            instance: self.fleet.instance_id.clone(),
            id,
            stream_id: holder.stream_id.clone(),
            kind: holder.kind.to_string(),
            since: Utc::now(),
        };
        let json = serde_json::to_string(&info).unwrap_or_default();
        let now = Utc::now().timestamp_millis();
        let mut conn = self.fleet.conn.clone();
        let answer: Vec<String> = self
            .script
            .key(self.slots_key(provider))
            .key(self.info_key(provider))
            .arg(now)
            .arg(now + self.lease.as_millis() as i64)
            .arg(max)
            .arg(&member)
            .arg(json)
            .invoke_async(&mut conn)
            .await?;
        if answer.first().map(String::as_str) != Some("granted") {
            let mut holders: Vec<HolderInfo> = answer
                .iter()
                .skip(1)
                .filter_map(|j| serde_json::from_str::<SlotInfo>(j).ok())
                .map(|i| i.holder_info())
                .collect();
            holders.sort_by_key(|h| (h.since, h.id));
            return Ok(Acquired::Full(holders));
        }
        let stop = Arc::new(Stop::default());
        self.lock().insert(
            member.clone(),
            Mine {
                provider: provider.to_string(),
                info,
                stop: stop.clone(),
            },
        );
        let inner = self.clone();
        Ok(Acquired::Granted(SlotGuard::new(
            provider.to_string(),
            stop,
            move || inner.release(member),
        )))
    }

    /// The unexpired slots of `provider` in Redis, oldest first.
    async fn held_in_redis(&self, provider: &str) -> redis::RedisResult<Vec<SlotInfo>> {
        let mut conn = self.fleet.conn.clone();
        let now = Utc::now().timestamp_millis();
        let members: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.slots_key(provider))
            .arg(format!("({now}"))
            .arg("+inf")
            .query_async(&mut conn)
            .await?;
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let infos: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.info_key(provider))
            .arg(&members)
            .query_async(&mut conn)
            .await?;
        let mut infos: Vec<SlotInfo> = infos
            .into_iter()
            .flatten()
            .filter_map(|j| serde_json::from_str(&j).ok())
            .collect();
        infos.sort_by_key(|i| (i.since, i.id));
        Ok(infos)
    }

    /// Extends every lease this instance holds (and writes it back if Redis lost it).
    async fn renew(&self) -> redis::RedisResult<()> {
        let expiry = Utc::now().timestamp_millis() + self.lease.as_millis() as i64;
        let mut pipe = redis::pipe();
        {
            let mine = self.lock();
            if mine.is_empty() {
                return Ok(());
            }
            for (member, m) in mine.iter() {
                pipe.cmd("ZADD")
                    .arg(self.slots_key(&m.provider))
                    .arg(expiry)
                    .arg(member)
                    .ignore()
                    .cmd("HSET")
                    .arg(self.info_key(&m.provider))
                    .arg(member)
                    .arg(serde_json::to_string(&m.info).unwrap_or_default())
                    .ignore();
            }
        }
        let mut conn = self.fleet.conn.clone();
        pipe.query_async::<()>(&mut conn).await
    }
}

impl RedisSlots {
    /// Leases of [`LEASE`]; start [`RedisSlots::spawn`] to renew them and to hear stops.
    pub fn new(fleet: Arc<Fleet>) -> Self {
        Self::with_lease(fleet, LEASE)
    }

    /// Leases of `lease` (renewed every third of it).
    pub fn with_lease(fleet: Arc<Fleet>, lease: Duration) -> Self {
        RedisSlots {
            inner: Arc::new(Inner {
                fleet,
                lease,
                local: LocalSlots::default(),
                mine: Mutex::default(),
                next_id: AtomicU64::new(1),
                fallback_until: AtomicI64::new(0),
                script: redis::Script::new(ACQUIRE),
            }),
        }
    }

    /// Starts the renewal of this instance's leases and the reader of `p:stops` (its own
    /// connection, subscribing again with backoff). Abort both handles to stop.
    pub fn spawn(&self) -> [JoinHandle<()>; 2] {
        let inner = self.inner.clone();
        let renew = tokio::spawn(async move {
            let period = (inner.lease / 3).min(RENEW_EVERY);
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match tokio::time::timeout(COMMAND_TIMEOUT, inner.renew()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "provider slot leases not renewed"),
                    Err(_) => tracing::warn!("provider slot leases not renewed (timed out)"),
                }
            }
        });
        let inner = self.inner.clone();
        let stops = tokio::spawn(async move {
            let channel = inner.fleet.key("stops");
            let mut wait = Duration::from_millis(100);
            loop {
                let subscribed = async {
                    let mut pubsub = inner.fleet.client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    redis::RedisResult::Ok(pubsub)
                };
                if let Ok(Ok(pubsub)) = tokio::time::timeout(COMMAND_TIMEOUT, subscribed).await {
                    wait = Duration::from_millis(100);
                    let mut messages = pubsub.into_on_message();
                    while let Some(message) = messages.next().await {
                        let Ok(payload) = message.get_payload::<String>() else {
                            continue;
                        };
                        if let Ok(req) = serde_json::from_str::<StopRequest>(&payload) {
                            inner.fire(&req.provider, &req.stream_id);
                        }
                    }
                    tracing::warn!("provider stop feed lost; subscribing again");
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
        });
        [renew, stops]
    }

    fn falling_back(&self) -> bool {
        Utc::now().timestamp_millis() < self.inner.fallback_until.load(Ordering::Relaxed)
    }

    fn note_failure(&self, what: &str) {
        let until = Utc::now().timestamp_millis() + FALLBACK_FOR.as_millis() as i64;
        let before = self.inner.fallback_until.swap(until, Ordering::Relaxed);
        if before < Utc::now().timestamp_millis() - 1000 {
            tracing::warn!(error = what, "fleet provider slots unavailable: limits are kept per instance until Redis answers");
        }
    }
}

impl SlotPool for RedisSlots {
    fn acquire<'a>(
        &'a self,
        provider: &'a str,
        max: u32,
        holder: Holder,
    ) -> BoxFuture<'a, Result<Acquired, SlotError>> {
        Box::pin(async move {
            if !self.falling_back() {
                let asked = self.inner.try_acquire(provider, max, &holder);
                match tokio::time::timeout(ACQUIRE_TIMEOUT, asked).await {
                    Ok(Ok(acquired)) => return Ok(acquired),
                    Ok(Err(e)) => self.note_failure(&e.to_string()),
                    Err(_) => self.note_failure("timed out"),
                }
            }
            self.inner.local.acquire(provider, max, holder).await
        })
    }

    fn stop_stream<'a>(
        &'a self,
        provider: &'a str,
        stream_id: &'a str,
    ) -> BoxFuture<'a, Result<(), SlotError>> {
        Box::pin(async move {
            self.inner.fire(provider, stream_id);
            let local = self.inner.local.stop_stream(provider, stream_id);
            let request = serde_json::to_string(&StopRequest {
                provider: provider.to_string(),
                stream_id: stream_id.to_string(),
            })
            .unwrap_or_default();
            let mut conn = self.inner.fleet.conn.clone();
            let mut publish = redis::cmd("PUBLISH");
            publish.arg(self.inner.fleet.key("stops")).arg(request);
            let published = publish.query_async::<i64>(&mut conn);
            match tokio::time::timeout(COMMAND_TIMEOUT, published).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(SlotError(e.to_string())),
                Err(_) => return Err(SlotError("timed out".into())),
            }
            local.await?;
            loop {
                let held =
                    tokio::time::timeout(COMMAND_TIMEOUT, self.inner.held_in_redis(provider))
                        .await
                        .map_err(|_| SlotError("timed out".into()))?
                        .map_err(|e| SlotError(e.to_string()))?;
                if !held
                    .iter()
                    .any(|i| i.stream_id.as_deref() == Some(stream_id))
                {
                    return Ok(());
                }
                tokio::time::sleep(STOP_POLL).await;
            }
        })
    }

    fn held<'a>(&'a self, provider: &'a str) -> BoxFuture<'a, Result<Vec<HolderInfo>, SlotError>> {
        Box::pin(async move {
            let mut held: Vec<HolderInfo> = self.inner.local.held(provider).await?;
            if self.falling_back() {
                return Ok(held);
            }
            // Read by `/stats` and `/providers`: bounded like a slot request.
            let in_redis =
                tokio::time::timeout(ACQUIRE_TIMEOUT, self.inner.held_in_redis(provider)).await;
            match in_redis {
                Ok(Ok(infos)) => held.extend(infos.iter().map(SlotInfo::holder_info)),
                Ok(Err(e)) if held.is_empty() => return Err(SlotError(e.to_string())),
                Err(_) if held.is_empty() => return Err(SlotError("timed out".into())),
                _ => {}
            }
            held.sort_by_key(|h| (h.since, h.id));
            Ok(held)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_back_as_the_names_the_proxy_uses() {
        assert_eq!(static_kind("hls"), "hls");
        assert_eq!(static_kind("test_connection"), "test_connection");
        assert_eq!(static_kind("something new"), "other");
    }
}
