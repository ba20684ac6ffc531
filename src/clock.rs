//! Where append timestamps come from, and what age retention compares
//! against.
//!
//! The store reads its clock once per append and once per replay or
//! delivered event; tests inject a [`ManualClock`] and move time forward
//! explicitly instead of sleeping.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::event::Timestamp;

/// A source of timestamps.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock ([`SystemTime::now`]).
///
/// A wall clock can step: a step back makes no event look older (ages
/// saturate at zero); a step forward ages events early, which a replay
/// reports as a gap rather than serving stale data.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> Timestamp {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Timestamp::from_nanos(u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX))
    }
}

/// A clock that only moves when told to: for tests of age retention.
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use livereplay::{Clock, ManualClock};
///
/// let clock = Arc::new(ManualClock::new());
/// let before = clock.now();
/// clock.advance(Duration::from_secs(5));
/// assert_eq!(clock.now().elapsed_at(before), Duration::ZERO);
/// assert_eq!(before.elapsed_at(clock.now()), Duration::from_secs(5));
/// ```
pub struct ManualClock {
    nanos: AtomicU64,
}

impl ManualClock {
    /// A clock standing at an arbitrary fixed instant (1 s after the epoch).
    pub fn new() -> Self {
        Self::starting_at(Timestamp::from_nanos(1_000_000_000))
    }

    /// A clock standing at `start`.
    pub fn starting_at(start: Timestamp) -> Self {
        Self {
            nanos: AtomicU64::new(start.as_nanos()),
        }
    }

    /// Moves the clock forward by `by` (saturating).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // Relaxed: the clock value carries no other data; readers only need
        // some value in its modification order.
        let _ = self
            .nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add(by))
            });
    }

    /// Sets the clock to `to` (it may go back, as a wall clock can).
    pub fn set(&self, to: Timestamp) {
        self.nanos.store(to.as_nanos(), Ordering::Relaxed);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_nanos(self.nanos.load(Ordering::Relaxed))
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ManualClock").field(&self.now()).finish()
    }
}
