//! Player connections: how many are open, which were refused, which timed out, and the
//! clock of each connection that closes it when its client sends nothing.
//!
//! Plain state: atomics, and a lock taken when a connection opens or closes (only with a
//! per-address limit), never per chunk. The accept loop and the connection tasks in
//! `server` drive it; `/health` and `/metrics` read it. It does no I/O.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Descriptors kept back from the player-connection budget for the listener, the data
/// directory, logs, DNS and the webhook client.
pub const RESERVED_DESCRIPTORS: u64 = 64;

/// The default `MAX_CONNECTIONS` for a descriptor limit: half of what is left after the
/// reserve, since each player connection may need an upstream connection of its own (a
/// direct file, a live channel before it is shared); never less than 16.
pub fn default_max_connections(descriptor_limit: u64) -> usize {
    let budget = descriptor_limit.saturating_sub(RESERVED_DESCRIPTORS) / 2;
    usize::try_from(budget).unwrap_or(usize::MAX).max(16)
}

/// Why a connection was closed by the proxy's clock rather than by its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// No complete request head within `HEADER_READ_TIMEOUT`.
    HeaderRead,
    /// A request body that did not arrive within `HEADER_READ_TIMEOUT` of its head.
    RequestBody,
    /// Idle between requests for `KEEPALIVE_TIMEOUT`.
    KeepAlive,
}

impl Timeout {
    pub const ALL: [Timeout; 3] = [
        Timeout::HeaderRead,
        Timeout::RequestBody,
        Timeout::KeepAlive,
    ];

    /// The `timeout` label of `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Timeout::HeaderRead => "header_read",
            Timeout::RequestBody => "request_body",
            Timeout::KeepAlive => "keepalive",
        }
    }
}

/// Why a new connection (or, through a trusted proxy, a request) was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `MAX_CONNECTIONS` connections are open.
    Full,
    /// The client address has `MAX_CONNECTIONS_PER_IP` open.
    PerIp,
}

impl Refusal {
    pub const ALL: [Refusal; 2] = [Refusal::Full, Refusal::PerIp];

    /// The `reason` label of `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Full => "max_connections",
            Refusal::PerIp => "max_connections_per_ip",
        }
    }
}

/// A request refused for its size before it reached a handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TooLarge {
    /// A body over the 1 MB limit (413).
    Body,
    /// A request head over the 64 KB limit (431).
    Head,
    /// A URL over the 8 KB limit (414).
    Uri,
}

impl TooLarge {
    pub const ALL: [TooLarge; 3] = [TooLarge::Body, TooLarge::Head, TooLarge::Uri];

    /// The `limit` label of `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            TooLarge::Body => "body",
            TooLarge::Head => "head",
            TooLarge::Uri => "uri",
        }
    }
}

/// The counts of player connections, shared by the accept loop, the connection tasks and
/// the `/health` and `/metrics` handlers.
#[derive(Debug)]
pub struct Connections {
    max: usize,
    per_ip: Option<usize>,
    /// The soft descriptor limit in effect, reported by `/health`.
    descriptor_limit: u64,
    open: AtomicU64,
    refused: [AtomicU64; 2],
    timed_out: [AtomicU64; 3],
    too_large: [AtomicU64; 3],
    /// Open connections (or requests through a trusted proxy) per client address; only
    /// kept with a per-address limit. A plain mutex: it is held for one map update.
    by_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl Connections {
    pub fn new(max: usize, per_ip: Option<usize>, descriptor_limit: u64) -> Self {
        Connections {
            max,
            per_ip,
            descriptor_limit,
            open: AtomicU64::new(0),
            refused: Default::default(),
            timed_out: Default::default(),
            too_large: Default::default(),
            by_ip: Mutex::default(),
        }
    }

    /// `MAX_CONNECTIONS` in effect.
    pub fn max(&self) -> usize {
        self.max
    }

    /// `MAX_CONNECTIONS_PER_IP` in effect.
    pub fn per_ip(&self) -> Option<usize> {
        self.per_ip
    }

    pub fn descriptor_limit(&self) -> u64 {
        self.descriptor_limit
    }

    /// Player connections open now.
    pub fn open(&self) -> u64 {
        self.open.load(Relaxed)
    }

    pub fn refused(&self, why: Refusal) -> u64 {
        self.refused[why as usize].load(Relaxed)
    }

    pub fn timed_out(&self, which: Timeout) -> u64 {
        self.timed_out[which as usize].load(Relaxed)
    }

    pub fn too_large(&self, what: TooLarge) -> u64 {
        self.too_large[what as usize].load(Relaxed)
    }

    pub fn count_timeout(&self, which: Timeout) {
        self.timed_out[which as usize].fetch_add(1, Relaxed);
    }

    pub fn count_too_large(&self, what: TooLarge) {
        self.too_large[what as usize].fetch_add(1, Relaxed);
    }

    /// Admits a new connection, counted against the limit and, when `ip` is given and a
    /// per-address limit is set, against that address (pass `None` for a trusted proxy,
    /// whose clients are counted per request). The connection counts until the returned
    /// guard is dropped.
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Admitted, Refusal> {
        if self.open.fetch_add(1, Relaxed) >= self.max as u64 {
            self.open.fetch_sub(1, Relaxed);
            return Err(self.refuse(Refusal::Full));
        }
        let address = match ip.map(|ip| self.admit_address(ip)).transpose() {
            Ok(address) => address.flatten(),
            Err(refusal) => {
                self.open.fetch_sub(1, Relaxed);
                return Err(refusal);
            }
        };
        Ok(Admitted {
            connections: self.clone(),
            _address: address,
        })
    }

    /// Counts one more user of `ip` against the per-address limit: `Ok(None)` when there is
    /// no such limit.
    pub fn admit_address(self: &Arc<Self>, ip: IpAddr) -> Result<Option<AddressSlot>, Refusal> {
        let Some(limit) = self.per_ip else {
            return Ok(None);
        };
        {
            let mut by_ip = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
            let n = by_ip.entry(ip).or_insert(0);
            if *n >= limit {
                drop(by_ip);
                return Err(self.refuse(Refusal::PerIp));
            }
            *n += 1;
        }
        Ok(Some(AddressSlot {
            connections: self.clone(),
            ip,
        }))
    }

    fn refuse(&self, why: Refusal) -> Refusal {
        self.refused[why as usize].fetch_add(1, Relaxed);
        why
    }
}

/// One admitted connection; dropping it gives its place back.
#[derive(Debug)]
pub struct Admitted {
    connections: Arc<Connections>,
    /// Given back with the connection.
    _address: Option<AddressSlot>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.connections.open.fetch_sub(1, Relaxed);
    }
}

/// One use of a client address under the per-address limit; dropping it gives it back.
#[derive(Debug)]
pub struct AddressSlot {
    connections: Arc<Connections>,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut by_ip = self
            .connections
            .by_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

/// Where one connection stands, for its clock.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request head since this instant (connected, or first byte after idle).
    Head(Instant),
    /// This many requests are being answered (their responses may stream for hours).
    Busy(u32),
    /// Idle between requests since this instant.
    Idle(Instant),
}

/// The clock of one connection: a deadline while the client owes a request head or sits
/// idle, none while a response is under way. The connection's reads call
/// [`Activity::bytes_read`], its requests [`Activity::request_started`] and
/// [`Activity::request_finished`]; its task sleeps until [`Activity::deadline`] and wakes
/// on [`Activity::changed`].
#[derive(Debug)]
pub struct Activity {
    header_read: Duration,
    keepalive: Duration,
    phase: Mutex<Phase>,
    /// Idle: the next byte read starts a request head. Read on every read of the socket,
    /// so it is an atomic; the lock is taken only when it is set.
    idle: AtomicBool,
    changed: Notify,
}

impl Activity {
    /// A connection that has just been accepted: it owes a request head.
    pub fn new(header_read: Duration, keepalive: Duration) -> Self {
        Activity {
            header_read,
            keepalive,
            phase: Mutex::new(Phase::Head(Instant::now())),
            idle: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the connection must be closed if nothing changes, and why; `None` while a
    /// response is under way.
    pub fn deadline(&self) -> Option<(Instant, Timeout)> {
        match *self.phase() {
            Phase::Head(since) => Some((since + self.header_read, Timeout::HeaderRead)),
            Phase::Busy(_) => None,
            Phase::Idle(since) => Some((since + self.keepalive, Timeout::KeepAlive)),
        }
    }

    /// Since when the connection has been idle between requests, if it is.
    pub fn idle_since(&self) -> Option<Instant> {
        match *self.phase() {
            Phase::Idle(since) => Some(since),
            Phase::Head(_) | Phase::Busy(_) => None,
        }
    }

    /// Bytes arrived from the client: after an idle spell, they start a request head,
    /// which must be complete within the header read timeout.
    pub fn bytes_read(&self) {
        if !self.idle.load(Relaxed) {
            return;
        }
        let mut phase = self.phase();
        if let Phase::Idle(_) = *phase {
            *phase = Phase::Head(Instant::now());
            self.idle.store(false, Relaxed);
            drop(phase);
            self.changed.notify_one();
        }
    }

    /// A complete request head arrived: no deadline until its response is done.
    pub fn request_started(&self) {
        let mut phase = self.phase();
        *phase = match *phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            Phase::Head(_) | Phase::Idle(_) => Phase::Busy(1),
        };
        self.idle.store(false, Relaxed);
        drop(phase);
        self.changed.notify_one();
    }

    /// A response ended (or its client went away): the last one makes the connection idle.
    pub fn request_finished(&self) {
        let mut phase = self.phase();
        if let Phase::Busy(n) = *phase {
            *phase = if n > 1 {
                Phase::Busy(n - 1)
            } else {
                self.idle.store(true, Relaxed);
                Phase::Idle(Instant::now())
            };
        }
        drop(phase);
        self.changed.notify_one();
    }

    /// Resolves when the deadline may have moved.
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_limit_leaves_room_for_upstreams_and_the_store() {
        assert_eq!(default_max_connections(1024), 480);
        assert_eq!(default_max_connections(1_048_576), 524_256);
        assert_eq!(default_max_connections(20), 16);
    }

    #[test]
    fn connections_beyond_the_limits_are_refused_and_their_places_come_back() {
        let c = Arc::new(Connections::new(3, Some(2), 1024));
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = c.admit(Some(a)).unwrap();
        let second = c.admit(Some(a)).unwrap();
        assert_eq!(c.admit(Some(a)).unwrap_err(), Refusal::PerIp);
        assert_eq!(c.open(), 2, "a refused address gives its place back");
        let third = c.admit(Some(b)).unwrap();
        assert_eq!(c.admit(None).unwrap_err(), Refusal::Full);
        assert_eq!(
            (c.refused(Refusal::PerIp), c.refused(Refusal::Full)),
            (1, 1)
        );
        drop(first);
        assert_eq!(c.open(), 2);
        let again = c.admit(Some(a)).unwrap();
        drop((second, third, again));
        assert_eq!(c.open(), 0);
        assert!(c.by_ip.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_runs_only_while_the_client_owes_a_request() {
        let secs = Duration::from_secs;
        let activity = Activity::new(secs(10), secs(60));
        let start = Instant::now();
        assert_eq!(
            activity.deadline(),
            Some((start + secs(10), Timeout::HeaderRead))
        );
        tokio::time::advance(secs(3)).await;
        activity.request_started();
        assert_eq!(
            activity.deadline(),
            None,
            "a streaming response is never timed"
        );
        tokio::time::advance(secs(7200)).await;
        activity.bytes_read(); // a request body, or bytes while busy: no change
        assert_eq!(activity.deadline(), None);
        activity.request_finished();
        let idle = Instant::now();
        assert_eq!(
            activity.deadline(),
            Some((idle + secs(60), Timeout::KeepAlive))
        );
        tokio::time::advance(secs(30)).await;
        activity.bytes_read();
        let head = Instant::now();
        assert_eq!(
            activity.deadline(),
            Some((head + secs(10), Timeout::HeaderRead))
        );
        activity.bytes_read();
        assert_eq!(
            activity.deadline(),
            Some((head + secs(10), Timeout::HeaderRead))
        );
    }
}
