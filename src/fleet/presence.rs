//! Presence: every instance's heartbeat, and the fleet view built from all of them.
//!
//! Once a second each instance writes its heartbeat (`p:instance:{id}`, JSON, expiring
//! after [`HEARTBEAT_TTL`]; also early, within moments of a viewer arriving or leaving)
//! and notes the time in `p:instances`; then it reads every live
//! instance's heartbeat and the stored counters (`p:totals`, `p:counters:{stream id}` as
//! the store's flush adds to them) into one [`Snapshot`]. Handlers read that snapshot only,
//! never Redis: a request costs the same with Redis slow or down, and answers from the last
//! known state. An instance that stops beating (killed, cut off) leaves the view once its
//! heartbeat is [`HEARTBEAT_TTL`] old, whether or not Redis has expired the key yet.
//!
//! Fleet-wide figures are the stored counters plus this instance's increments not flushed
//! yet, and the viewers of every live instance (this one's read live from the registry).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio::time::{interval, timeout, MissedTickBehavior};

use super::{Fleet, COMMAND_TIMEOUT};
use crate::events::{Event, EventType};
use crate::model::{ClientInfo, Health, InstanceInfo, Stats, StreamDetail, StreamInfo};
use crate::registry::{Counters, Registry, StreamEntry};

/// How often an instance writes its heartbeat and reads the others'.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_secs(1);

/// How long an instance gathers viewers arriving together before it beats early.
const EARLY_BEAT_GATHER: Duration = Duration::from_millis(100);

/// The least time between the starts of two early beats.
const EARLY_BEAT_GAP: Duration = Duration::from_millis(500);

/// How long a heartbeat stays valid: an instance silent this long has left the fleet.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(15);

/// Stream counters are read in pipelines of this many streams.
const COUNTER_BATCH: usize = 1000;

/// Every stream's counters are read this often; in between, only those of streams some
/// instance has viewers of (or had, within [`RECENT`]): only a watched stream's counters
/// move, and a channel list's 50,000 streams must not cost 50,000 reads a second.
const FULL_SWEEP: Duration = Duration::from_secs(30);

/// How long after its last viewer anywhere a stream's counters are still read every
/// second (its last increments reach Redis with the next flush of that instance).
const RECENT: Duration = Duration::from_secs(10);

/// What one instance says about itself every second (`p:instance:{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub id: String,
    /// Where it listens (`host:port`).
    pub address: String,
    pub started_at: DateTime<Utc>,
    /// Its viewers, as its `/clients` shows them.
    pub clients: Vec<ClientInfo>,
    /// Player connections streaming now.
    pub connections: u64,
    /// Bytes written to players since it started.
    pub bytes: u64,
    pub bytes_per_second: f64,
    /// The streams it has viewers of, by id.
    pub streams: BTreeMap<String, StreamPresence>,
    pub last_heartbeat: DateTime<Utc>,
}

/// One stream's viewers on one instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamPresence {
    pub clients: usize,
    pub active_clients: usize,
    pub connections: u64,
    pub bytes_per_second: f64,
}

/// The fleet as last read from Redis.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every instance whose heartbeat was there, this one's included.
    pub instances: Vec<Heartbeat>,
    /// `p:totals`: bytes, segments, errors, failovers; `None` before the first read.
    pub totals: Option<[u64; 4]>,
    /// `p:counters:{id}` of every stream known here, as last read (see [`FULL_SWEEP`]).
    pub counters: Arc<HashMap<String, [u64; 4]>>,
    /// When the read finished.
    pub read_at: Option<DateTime<Utc>>,
}

/// This instance's heartbeat and its copy of the fleet view.
pub struct Presence {
    fleet: Arc<Fleet>,
    registry: Arc<Registry>,
    /// Set when the listener is bound.
    address: Arc<OnceLock<String>>,
    /// `registry.totals.bytes` when this process started serving (after the restore of the
    /// stored totals), so `bytes` is what this instance served.
    bytes_at_start: u64,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Streams with viewers somewhere lately, and when they were last seen so.
    hot: std::sync::Mutex<HashMap<String, std::time::Instant>>,
    /// When every stream's counters were last read.
    last_sweep: std::sync::Mutex<Option<std::time::Instant>>,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("instance", &self.fleet.instance_id)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Presence {
    /// `address` is where this instance listens (`host:port`, set once bound), for the
    /// breakdown. Make it
    /// after the store's restore, so the restored totals do not count as served here.
    pub fn new(fleet: Arc<Fleet>, registry: Arc<Registry>, address: Arc<OnceLock<String>>) -> Self {
        Presence {
            bytes_at_start: Counters::get(&registry.totals.bytes),
            fleet,
            registry,
            address,
            snapshot: RwLock::default(),
            hot: std::sync::Mutex::default(),
            last_sweep: std::sync::Mutex::default(),
        }
    }

    pub fn instance_id(&self) -> &str {
        &self.fleet.instance_id
    }

    /// Beats and reads every [`HEARTBEAT_PERIOD`] until aborted; a failure is logged once
    /// (and its end), the last snapshot stays in use meanwhile.
    pub fn spawn(self: Arc<Self>) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = interval(HEARTBEAT_PERIOD);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut events = self.registry.events.subscribe();
            let mut failing = false;
            loop {
                let early = tokio::select! {
                    // The period first: under steady churn the reads still come on time.
                    biased;
                    _ = tick.tick() => false,
                    () = self.viewers_changed(&mut events) => true,
                };
                let result = if early {
                    // A viewer came or left here: the others see it at their next read
                    // rather than after this instance's next period too. Viewers arriving
                    // together go in one beat, and early beats come at most every
                    // EARLY_BEAT_GAP.
                    tokio::time::sleep(EARLY_BEAT_GATHER).await;
                    while !events.is_empty() {
                        let _ = events.try_recv();
                    }
                    let beat = timeout(COMMAND_TIMEOUT, self.beat()).await;
                    tokio::time::sleep(EARLY_BEAT_GAP.saturating_sub(EARLY_BEAT_GATHER)).await;
                    beat.unwrap_or_else(|_| Err(timed_out()))
                } else {
                    match timeout(COMMAND_TIMEOUT, self.beat()).await {
                        Ok(Ok(())) => timeout(COMMAND_TIMEOUT * 2, self.read())
                            .await
                            .unwrap_or_else(|_| Err(timed_out())),
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(timed_out()),
                    }
                };
                match result {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!("fleet heartbeat works again");
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "fleet heartbeat failed; the fleet view is the last one read");
                    }
                    Err(_) => {}
                }
            }
        })
    }

    /// Returns when a viewer connects to or leaves this instance (or events were missed);
    /// never once the bus is closed.
    async fn viewers_changed(&self, events: &mut broadcast::Receiver<Event>) {
        loop {
            match events.recv().await {
                Ok(e) => {
                    let here = e
                        .instance
                        .as_deref()
                        .is_none_or(|i| i == self.instance_id());
                    let viewers = matches!(
                        e.event_type,
                        EventType::ClientConnected | EventType::ClientDisconnected
                    );
                    if here && viewers {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    }

    /// This instance's heartbeat as of now.
    pub fn heartbeat(&self) -> Heartbeat {
        let r = &self.registry;
        let clients: Vec<ClientInfo> = r
            .clients()
            .iter()
            .map(|c| {
                let mut info = r.client_info(c);
                info.instance = Some(self.fleet.instance_id.clone());
                info
            })
            .collect();
        let mut streams: BTreeMap<String, StreamPresence> = BTreeMap::new();
        for c in &clients {
            if let Some(id) = &c.stream_id {
                let s = streams.entry(id.clone()).or_default();
                s.clients += 1;
                s.active_clients += usize::from(c.is_active);
            }
        }
        r.each_stream(|s| {
            let connections = Counters::get(&s.counters.active_connections);
            if connections > 0 || streams.contains_key(&s.id) {
                let p = streams.entry(s.id.clone()).or_default();
                p.connections = connections;
                p.bytes_per_second = s.counters.bytes_per_second();
            }
        });
        Heartbeat {
            id: self.fleet.instance_id.clone(),
            address: self.address.get().cloned().unwrap_or_default(),
            started_at: r.clock.started_at(),
            clients,
            connections: Counters::get(&r.totals.active_connections),
            bytes: Counters::get(&r.totals.bytes).saturating_sub(self.bytes_at_start),
            bytes_per_second: r.totals.bytes_per_second(),
            streams,
            last_heartbeat: Utc::now(),
        }
    }

    /// Writes the heartbeat: `SET p:instance:{id} PX ttl` and `ZADD p:instances`.
    pub async fn beat(&self) -> redis::RedisResult<()> {
        let beat = self.heartbeat();
        let json = serde_json::to_string(&beat).map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Client, "heartbeat", e.to_string()))
        })?;
        let mut conn = self.fleet.conn.clone();
        redis::pipe()
            .cmd("SET")
            .arg(self.fleet.key(&format!("instance:{}", beat.id)))
            .arg(json)
            .arg("PX")
            .arg(HEARTBEAT_TTL.as_millis() as u64)
            .ignore()
            .cmd("ZADD")
            .arg(self.fleet.key("instances"))
            .arg(beat.last_heartbeat.timestamp_millis())
            .arg(&beat.id)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
    }

    /// Takes this instance out of the fleet view at once (a clean shutdown).
    pub async fn leave(&self) {
        let mut conn = self.fleet.conn.clone();
        let id = &self.fleet.instance_id;
        let mut pipe = redis::pipe();
        pipe.cmd("DEL")
            .arg(self.fleet.key(&format!("instance:{id}")))
            .ignore()
            .cmd("ZREM")
            .arg(self.fleet.key("instances"))
            .arg(id)
            .ignore();
        let left = pipe.query_async::<()>(&mut conn);
        if let Ok(Err(e)) | Err(e) = timeout(COMMAND_TIMEOUT, left)
            .await
            .map_err(|_| timed_out())
        {
            tracing::debug!(error = %e, "could not take this instance out of the fleet view");
        }
    }

    /// Reads every live heartbeat and the stored counters into a new snapshot.
    pub async fn read(&self) -> redis::RedisResult<()> {
        let mut conn = self.fleet.conn.clone();
        let now_ms = Utc::now().timestamp_millis();
        let ttl_ms = HEARTBEAT_TTL.as_millis() as i64;
        let instances_key = self.fleet.key("instances");
        let (ids, totals): (Vec<String>, HashMap<String, u64>) = redis::pipe()
            // Entries of instances gone long ago are tidied away.
            .cmd("ZREMRANGEBYSCORE")
            .arg(&instances_key)
            .arg("-inf")
            .arg(now_ms - 4 * ttl_ms)
            .ignore()
            .cmd("ZRANGEBYSCORE")
            .arg(&instances_key)
            .arg(now_ms - ttl_ms)
            .arg("+inf")
            .cmd("HGETALL")
            .arg(self.fleet.key("totals"))
            .query_async(&mut conn)
            .await?;
        let mut instances = Vec::with_capacity(ids.len());
        if !ids.is_empty() {
            let keys: Vec<String> = ids
                .iter()
                .map(|id| self.fleet.key(&format!("instance:{id}")))
                .collect();
            let beats: Vec<Option<String>> =
                redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
            for json in beats.into_iter().flatten() {
                match serde_json::from_str::<Heartbeat>(&json) {
                    Ok(beat) => instances.push(beat),
                    Err(e) => tracing::debug!(error = %e, "unreadable heartbeat skipped"),
                }
            }
        }
        let now = std::time::Instant::now();
        let sweep = self
            .last_sweep
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none_or(|at| now.duration_since(at) >= FULL_SWEEP);
        let ids: Vec<String> = {
            let mut hot = self.hot.lock().unwrap_or_else(|e| e.into_inner());
            for beat in &instances {
                for id in beat.streams.keys() {
                    hot.insert(id.clone(), now);
                }
            }
            hot.retain(|_, seen| now.duration_since(*seen) < RECENT);
            if sweep {
                let mut ids = Vec::new();
                self.registry.each_stream(|s| ids.push(s.id.clone()));
                ids
            } else {
                hot.keys().cloned().collect()
            }
        };
        let previous = self.snapshot().counters.clone();
        if !sweep && ids.is_empty() {
            return self.publish(instances, &totals, previous);
        }
        let mut counters = if sweep {
            HashMap::with_capacity(ids.len())
        } else {
            HashMap::clone(&previous)
        };
        for chunk in ids.chunks(COUNTER_BATCH) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.cmd("HGETALL")
                    .arg(self.fleet.key(&format!("counters:{id}")));
            }
            let read: Vec<HashMap<String, u64>> = pipe.query_async(&mut conn).await?;
            for (id, fields) in chunk.iter().zip(read) {
                if fields.is_empty() {
                    counters.remove(id);
                } else {
                    counters.insert(id.clone(), four(&fields));
                }
            }
        }
        if sweep {
            *self.last_sweep.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
        }
        self.publish(instances, &totals, Arc::new(counters))
    }

    fn publish(
        &self,
        instances: Vec<Heartbeat>,
        totals: &HashMap<String, u64>,
        counters: Arc<HashMap<String, [u64; 4]>>,
    ) -> redis::RedisResult<()> {
        let snapshot = Snapshot {
            instances,
            totals: Some(four(totals)),
            counters,
            read_at: Some(Utc::now()),
        };
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
        Ok(())
    }

    /// The snapshot last read (empty before the first read).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The fleet as handlers see it now: the last snapshot without this instance and
    /// without instances silent for [`HEARTBEAT_TTL`].
    pub fn view(&self) -> View<'_> {
        let snapshot = self.snapshot();
        let oldest = Utc::now() - chrono::Duration::from_std(HEARTBEAT_TTL).unwrap_or_default();
        let others = snapshot
            .instances
            .iter()
            .enumerate()
            .filter(|(_, b)| b.id != self.fleet.instance_id && b.last_heartbeat > oldest)
            .map(|(i, _)| i)
            .collect();
        View {
            presence: self,
            snapshot,
            others,
        }
    }
}

/// The fleet view of one request: see [`Presence::view`].
pub struct View<'a> {
    presence: &'a Presence,
    snapshot: Arc<Snapshot>,
    /// Indexes into `snapshot.instances` of the other live instances.
    others: Vec<usize>,
}

impl View<'_> {
    /// The other live instances' heartbeats.
    pub fn others(&self) -> impl Iterator<Item = &Heartbeat> {
        self.others.iter().map(|&i| &self.snapshot.instances[i])
    }

    /// Every live instance, this one first (as of now), then the others by id.
    pub fn instances(&self) -> Vec<InstanceInfo> {
        let own = self.presence.heartbeat();
        let mut others: Vec<&Heartbeat> = self.others().collect();
        others.sort_by(|a, b| a.id.cmp(&b.id));
        std::iter::once(&own)
            .chain(others)
            .map(|b| InstanceInfo {
                id: b.id.clone(),
                address: b.address.clone(),
                started_at: b.started_at,
                clients: b.clients.len(),
                connections: b.connections,
                bytes: b.bytes,
                last_heartbeat: b.last_heartbeat,
            })
            .collect()
    }

    /// The fleet's bytes, segments, errors and failovers: the stored totals plus this
    /// instance's increments not flushed yet (this instance's own before the first read).
    pub fn totals(&self) -> [u64; 4] {
        let r = &self.presence.registry;
        match self.snapshot.totals {
            Some(stored) => add(stored, r.stored_totals.pending(&r.totals)),
            None => r.totals.values(),
        }
    }

    /// Player connections streaming on every live instance.
    pub fn connections(&self) -> u64 {
        Counters::get(&self.presence.registry.totals.active_connections)
            + self.others().map(|b| b.connections).sum::<u64>()
    }

    /// Bytes per second of the whole fleet.
    pub fn bytes_per_second(&self) -> f64 {
        self.presence.registry.totals.bytes_per_second()
            + self.others().map(|b| b.bytes_per_second).sum::<f64>()
    }

    /// The viewers of the other live instances, each with its `instance`.
    pub fn other_clients(&self) -> impl Iterator<Item = &ClientInfo> {
        self.others().flat_map(|b| b.clients.iter())
    }

    /// `clients` (this instance's) marked with this instance's id, then every other live
    /// instance's.
    pub fn all_clients(&self, mut clients: Vec<ClientInfo>) -> Vec<ClientInfo> {
        let own = self.presence.instance_id();
        for c in &mut clients {
            c.instance = Some(own.to_string());
        }
        clients.extend(self.other_clients().cloned());
        clients
    }

    /// Turns this instance's report of `entry` into the fleet's: stored counters plus the
    /// increments not flushed yet, and every live instance's viewers and connections.
    pub fn stream(&self, entry: &StreamEntry, info: &mut StreamInfo) {
        let mut counters = entry.counters.values();
        if let Some(stored) = self.snapshot.counters.get(&entry.id) {
            counters = add(*stored, entry.stored.pending(&entry.counters));
        }
        info.total_bytes_served = counters[0];
        info.total_segments_served = counters[1];
        info.error_count = counters[2];
        info.failover_count = counters[3];
        info.editor.failover_attempts = counters[3];
        for p in self.others().filter_map(|b| b.streams.get(&entry.id)) {
            info.client_count += p.clients;
            info.active_connections += p.connections;
            info.bytes_per_second += p.bytes_per_second;
            info.is_active |= p.active_clients > 0 || p.connections > 0;
        }
    }

    /// A client of another live instance.
    pub fn client(&self, id: &str) -> Option<ClientInfo> {
        self.other_clients().find(|c| c.client_id == id).cloned()
    }

    /// `/stats` for the fleet: see the module doc.
    pub fn stats(&self, stats: &mut Stats) {
        let r = &self.presence.registry;
        for info in &mut stats.streams {
            if let Some(entry) = r.stream(&info.stream_id) {
                self.stream(&entry, info);
            }
        }
        stats.clients = self.all_clients(std::mem::take(&mut stats.clients));
        let [bytes, segments, errors, failovers] = self.totals();
        let p = &mut stats.proxy;
        p.active_streams = stats.streams.iter().filter(|s| s.is_active).count();
        p.total_clients = stats.clients.len();
        p.active_clients = stats.clients.iter().filter(|c| c.is_active).count();
        p.active_connections = self.connections();
        p.total_bytes_served = bytes;
        p.total_segments_served = segments;
        p.total_errors = errors;
        p.total_failovers = failovers;
        p.bytes_per_second = self.bytes_per_second();
        stats.instances = self.instances();
    }

    /// `/streams/{id}` for the fleet.
    pub fn stream_detail(&self, entry: &StreamEntry, detail: &mut StreamDetail) {
        self.stream(entry, &mut detail.stream);
        let own = self.presence.instance_id();
        for c in &mut detail.clients {
            c.instance = Some(own.to_string());
        }
        detail.clients.extend(
            self.other_clients()
                .filter(|c| c.stream_id.as_deref() == Some(entry.id.as_str()))
                .cloned(),
        );
        detail.client_count = detail.clients.len();
    }

    /// `/health` for the fleet.
    pub fn health(&self, health: &mut Health) {
        let [bytes, segments, ..] = self.totals();
        let others: Vec<&Heartbeat> = self.others().collect();
        let other_clients: usize = others.iter().map(|b| b.clients.len()).sum();
        let other_active = others
            .iter()
            .flat_map(|b| &b.clients)
            .filter(|c| c.is_active)
            .count();
        // A stream is active in the fleet when it is active on any instance.
        let r = &self.presence.registry;
        let mut active_elsewhere = 0;
        for b in &others {
            for (id, p) in &b.streams {
                if p.active_clients > 0 || p.connections > 0 {
                    let here = r.stream(id).is_some_and(|s| r.stream_is_active(&s));
                    active_elsewhere += usize::from(!here);
                }
            }
        }
        health.clients += other_clients;
        health.active_connections = self.connections();
        health.total_bytes_served = bytes;
        let s = &mut health.stats;
        s.total_clients += other_clients;
        s.active_clients += other_active;
        s.active_streams = (s.active_streams + active_elsewhere).min(s.total_streams);
        s.total_bytes_served = bytes;
        s.total_segments_served = segments;
        health.instances = self.instances();
    }
}

fn add(a: [u64; 4], b: [u64; 4]) -> [u64; 4] {
    std::array::from_fn(|i| a[i].saturating_add(b[i]))
}

/// The four counters of a `p:counters:*` or `p:totals` hash.
fn four(fields: &HashMap<String, u64>) -> [u64; 4] {
    ["bytes", "segments", "errors", "failovers"].map(|f| fields.get(f).copied().unwrap_or(0))
}

fn timed_out() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "timed out"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_read_from_a_hash() {
        let fields: HashMap<String, u64> = [("bytes", 10), ("failovers", 2), ("other", 9)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(four(&fields), [10, 0, 0, 2]);
        assert_eq!(
            add([1, 2, 3, 4], [10, 0, 0, u64::MAX]),
            [11, 2, 3, u64::MAX]
        );
    }
}
