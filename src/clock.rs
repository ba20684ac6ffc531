//! Where append timestamps come from, and what age retention compares
//! against.
//!
//! The store reads its clock once per append, once per replay, and once
//! per run of up to 16 events a subscription delivers (see
//! [`Subscription`](crate::Subscription)); tests inject a [`ManualClock`]
//! and move time forward explicitly instead of sleeping. [`SystemClock`]
//! (the default) reads the wall clock each time; [`CoarseClock`] reads a
//! copy of it that a background thread refreshes every tick, for hosts
//! where the clock read is a measurable share of an append or a delivery.
//!
//! Invariant: every clock here gives nanoseconds since the Unix epoch (or,
//! for [`ManualClock`], whatever the test sets); none of them is monotonic,
//! and the store saturates ages at zero when a clock steps back.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread;
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
        // In u64, saturating (as `as_nanos` then a saturating cast would,
        // without the u128 product): this runs on every append.
        Timestamp::from_nanos(
            since_epoch
                .as_secs()
                .saturating_mul(1_000_000_000)
                .saturating_add(u64::from(since_epoch.subsec_nanos())),
        )
    }
}

/// The wall clock, read by a background thread once per tick: reading it
/// is one relaxed atomic load (about a nanosecond, against about 25 ns for
/// [`SystemClock`] on a KVM guest).
///
/// **Precision**: a reading is the wall clock as of the last tick, so it
/// lags [`SystemClock`] by up to one tick plus however late the ticker
/// thread is scheduled (on an overloaded machine, milliseconds). Timestamps
/// of appends within one tick are equal. For age retention this means an
/// event may be served up to that lag past its `max_age`, and never
/// trimmed before it: with the default 120 s `max_age` and a 1 ms tick,
/// negligible. Use [`SystemClock`] where timestamps must resolve events
/// closer together than a tick.
///
/// **Cost**: one thread per clock, waking once per tick (1 000 wake-ups a
/// second with the 1 ms default); it stops within a tick of the last clone
/// of the clock being dropped. Share one clock between stores.
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use livereplay::{Clock, CoarseClock, ReplayStore, SystemClock};
///
/// let clock = Arc::new(CoarseClock::new(Duration::from_millis(1)));
/// let lag = SystemClock.now().as_nanos().saturating_sub(clock.now().as_nanos());
/// assert!(lag < 60_000_000_000, "a recent reading");
/// let store = ReplayStore::<u64>::builder().clock(clock).build()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct CoarseClock {
    shared: Arc<CoarseShared>,
}

struct CoarseShared {
    /// The wall clock at the last tick, in nanoseconds since the epoch.
    nanos: AtomicU64,
    tick: Duration,
}

impl CoarseClock {
    /// A clock refreshed every `tick` (at least 1 µs) by a thread of its
    /// own, named `livereplay-clock`. If the thread cannot be started the
    /// clock reads [`SystemClock`] on every call instead.
    pub fn new(tick: Duration) -> Self {
        let tick = tick.max(Duration::from_micros(1));
        let shared = Arc::new(CoarseShared {
            nanos: AtomicU64::new(SystemClock.now().as_nanos()),
            tick,
        });
        let weak: Weak<CoarseShared> = Arc::downgrade(&shared);
        let started = thread::Builder::new()
            .name("livereplay-clock".into())
            .spawn(move || loop {
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                // Relaxed: the value carries no other data.
                shared
                    .nanos
                    .store(SystemClock.now().as_nanos(), Ordering::Relaxed);
                let tick = shared.tick;
                drop(shared);
                thread::sleep(tick);
            });
        if started.is_err() {
            // No ticker: mark the clock as uncached (0 is never a reading).
            shared.nanos.store(0, Ordering::Relaxed);
        }
        Self { shared }
    }

    /// How often the clock is refreshed.
    pub fn tick(&self) -> Duration {
        self.shared.tick
    }
}

impl Default for CoarseClock {
    /// A clock with a 1 ms tick.
    fn default() -> Self {
        Self::new(Duration::from_millis(1))
    }
}

impl Clock for CoarseClock {
    #[inline]
    fn now(&self) -> Timestamp {
        // Relaxed: the value carries no other data; any recent value in its
        // modification order is a valid (coarse) reading.
        match self.shared.nanos.load(Ordering::Relaxed) {
            0 => SystemClock.now(),
            nanos => Timestamp::from_nanos(nanos),
        }
    }
}

impl fmt::Debug for CoarseClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoarseClock")
            .field("tick", &self.shared.tick)
            .field("now", &self.now())
            .finish()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_follows_the_wall_clock_within_its_tick() {
        let clock = CoarseClock::new(Duration::from_millis(1));
        let first = clock.now();
        // Bounded, not a fixed sleep: a loaded machine (or Miri's
        // interpreter) may run the ticker late, but must run it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let later = loop {
            thread::sleep(Duration::from_millis(1));
            let later = clock.now();
            if later > first || std::time::Instant::now() > deadline {
                break later;
            }
        };
        assert!(later > first, "the ticker moved it within 10 s");
        let lag = SystemClock
            .now()
            .as_nanos()
            .saturating_sub(later.as_nanos());
        // Generous: the ticker may be descheduled on a loaded machine.
        assert!(lag < 5_000_000_000, "lag {lag} ns");
    }

    #[test]
    fn the_ticker_stops_with_the_last_clone() {
        let clock = CoarseClock::new(Duration::from_millis(1));
        let weak = Arc::downgrade(&clock.shared);
        let copy = clock.clone();
        drop(clock);
        assert!(weak.upgrade().is_some(), "a clone keeps it");
        drop(copy);
        // The ticker holds a strong reference only while it stores.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if weak.upgrade().is_none() {
                return;
            }
            thread::sleep(Duration::from_millis(1));
        }
        panic!("the clock outlived its last clone by 10 s");
    }
}
