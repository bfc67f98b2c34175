//! Which of a stream's URLs is in use, and the switches that moved it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// The window of the per-minute switch cap.
pub const SWITCH_WINDOW: Duration = Duration::from_secs(60);

/// The index of the URL in use among `[original_url, failover_urls...]`, the generation
/// that counts its changes, and the times of recent automatic switches.
#[derive(Debug)]
pub struct UrlCursor {
    current: AtomicUsize,
    /// Bumped on every switch of URL; every viewer watches it, so a switch reaches all of
    /// them (a one-shot flag would reach only the first reader).
    generation: watch::Sender<u64>,
    /// The same count as an atomic, for readers that look per chunk: reading the watch
    /// takes its lock.
    changes: AtomicU64,
    /// When capped switches happened, for the per-minute cap.
    switches: Mutex<VecDeque<Instant>>,
}

impl Default for UrlCursor {
    fn default() -> Self {
        Self {
            current: AtomicUsize::new(0),
            generation: watch::Sender::new(0),
            changes: AtomicU64::new(0),
            switches: Mutex::default(),
        }
    }
}

/// What a request to move off a URL came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switched {
    /// This call moved the cursor to `to`.
    Moved { from: usize, to: usize },
    /// Another request had already moved it; it is at this index now.
    Followed(usize),
    /// There is nowhere else to go: a single URL.
    Single,
    /// The per-minute cap of automatic switches is reached.
    Capped,
}

impl UrlCursor {
    /// A cursor restored from the store: at `index`, with `generation` changes behind it.
    pub fn restored(index: usize, generation: u64) -> Self {
        Self {
            current: AtomicUsize::new(index),
            generation: watch::Sender::new(generation),
            changes: AtomicU64::new(generation),
            switches: Mutex::default(),
        }
    }

    pub fn index(&self) -> usize {
        self.current.load(Ordering::Acquire)
    }

    /// How many times the URL in use, or the list of URLs, changed.
    pub fn generation(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Moves to the URL after `from` among `count` (wrapping), unless another request
    /// already moved past it. With `cap`, at most that many such moves happen per
    /// [`SWITCH_WINDOW`]; manual switches pass `None`.
    pub fn switch(&self, from: usize, count: usize, cap: Option<u32>) -> Switched {
        self.switch_to(from, (from + 1) % count.max(1), count, cap)
    }

    /// Like [`UrlCursor::switch`], to the URL at `to` (a URL a failover resolver named).
    pub fn switch_to(&self, from: usize, to: usize, count: usize, cap: Option<u32>) -> Switched {
        if count < 2 || to >= count || to == from {
            return Switched::Single;
        }
        let now = Instant::now();
        let mut recent = self.switches.lock().expect("switch log lock");
        if let Some(cap) = cap {
            while recent
                .front()
                .is_some_and(|t| now.duration_since(*t) >= SWITCH_WINDOW)
            {
                recent.pop_front();
            }
            if recent.len() >= cap as usize {
                return Switched::Capped;
            }
        }
        match self
            .current
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                if cap.is_some() {
                    recent.push_back(now);
                }
                self.renew();
                Switched::Moved { from, to }
            }
            // Someone else switched first: use their choice rather than switching twice.
            Err(now) => Switched::Followed(now),
        }
    }

    /// Bumps the generation without moving: the stream's URLs changed (a re-post), so
    /// what was learned under the old ones (variant listings) is stale, and every feed
    /// checks whether the URL it reads is still the one in use.
    pub fn renew(&self) {
        let made = self.changes.fetch_add(1, Ordering::AcqRel) + 1;
        self.generation.send_replace(made);
    }

    /// Takes the position another instance of a fleet stored: `index` at `generation`, when
    /// that is newer than this cursor's (or as new, at another index: then one past it, so
    /// the store hears this instance's choice and the fleet agrees on it). Moves without
    /// counting a switch or honouring the cap: the instance that switched did both. Every
    /// viewer sees the move as it sees a switch here. True when the cursor moved.
    pub fn follow(&self, index: usize, generation: u64, count: usize) -> bool {
        let _serialized = self.switches.lock().expect("switch log lock");
        let index = if index < count { index } else { 0 };
        let (at, mine) = (self.index(), self.generation());
        let made = if generation > mine {
            generation
        } else if generation == mine && index != at {
            generation + 1
        } else {
            return false;
        };
        self.current.store(index, Ordering::Release);
        self.changes.store(made, Ordering::Release);
        self.generation.send_replace(made);
        true
    }

    /// Brings the index back to the original URL when a shorter URL list leaves it out of
    /// range.
    pub fn clamp(&self, count: usize) {
        if self.index() >= count {
            self.current.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn following_takes_newer_positions_and_breaks_ties_one_past_them() {
        let cursor = UrlCursor::restored(0, 3);
        let seen = cursor.subscribe();
        assert!(!cursor.follow(1, 2, 3), "an older position is ignored");
        assert!(!cursor.follow(0, 3, 3), "the same position changes nothing");
        assert!(cursor.follow(2, 5, 3), "a newer one is taken");
        assert_eq!((cursor.index(), cursor.generation()), (2, 5));
        assert!(seen.has_changed().unwrap(), "viewers see the move");
        assert!(cursor.follow(1, 5, 3), "as new, elsewhere: taken, one past");
        assert_eq!((cursor.index(), cursor.generation()), (1, 6));
        assert!(cursor.follow(9, 7, 3), "an index past a shorter list");
        assert_eq!(cursor.index(), 0);
    }
}
