//! Store configuration: the retention bounds of every session and the
//! bounds that keep the whole store's memory finite.
//!
//! A [`Config`] is checked once, when the store is built; a configuration
//! that cannot work is refused there with a [`ConfigError`], never later.

use std::time::Duration;

use thiserror::Error;

/// The largest per-session capacity accepted (events).
pub const MAX_CAPACITY: usize = 1 << 22;

/// The largest `max_sessions` accepted.
pub const MAX_SESSIONS_LIMIT: usize = 1 << 32;

/// Retention and size bounds.
///
/// ```
/// use std::time::Duration;
/// use livereplay::Config;
///
/// let config = Config::default()
///     .with_capacity(256)
///     .with_max_age(Duration::from_secs(30))
///     .with_max_sessions(10_000);
/// assert!(config.validate().is_ok());
/// assert!(Config::default().with_capacity(0).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Events kept per session (default 2048). Storage grows lazily, in
    /// segments of up to 64 slots (the first of 16), up to this plus one
    /// segment, and up to two more while the ring laps (one being freed,
    /// one kept for reuse).
    pub capacity: usize,
    /// How long an event is kept (default 120 s).
    pub max_age: Duration,
    /// How many sessions may exist at once (default 100 000). Creating one
    /// more first evicts idle sessions, then is refused with
    /// [`Refusal::TooManySessions`](crate::Refusal::TooManySessions).
    pub max_sessions: usize,
    /// Sweep idle sessions automatically as new ones are created, so memory
    /// stays bounded by live sessions without a maintenance task (default
    /// `true`). The sweep's cost is amortised over creations; a host that
    /// prefers to call [`ReplayStore::sweep`](crate::ReplayStore::sweep) on
    /// its own schedule can turn this off.
    pub auto_sweep: bool,
    /// How many evicted sessions are remembered as tombstones at most
    /// (default 100 000; 0 forgets evicted sessions at once). A tombstone
    /// keeps a session's identity (incarnation, last position and revision)
    /// so that cursors are answered as if it had never left memory and a
    /// re-created session continues its positions. Beyond the bound the
    /// oldest are forgotten first.
    pub tombstones: usize,
    /// How long a tombstone is remembered (default 1 hour). After that a
    /// session that has no durable log behind it is unknown again: its
    /// cursors get `Unavailable`, then `Reset` once it is re-created.
    pub tombstone_ttl: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            capacity: 2048,
            max_age: Duration::from_secs(120),
            max_sessions: 100_000,
            auto_sweep: true,
            tombstones: 100_000,
            tombstone_ttl: Duration::from_secs(3600),
        }
    }
}

impl Config {
    /// Sets [`Config::capacity`].
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// Sets [`Config::max_age`].
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// Sets [`Config::max_sessions`].
    pub fn with_max_sessions(mut self, max_sessions: usize) -> Self {
        self.max_sessions = max_sessions;
        self
    }

    /// Sets [`Config::auto_sweep`].
    pub fn with_auto_sweep(mut self, auto_sweep: bool) -> Self {
        self.auto_sweep = auto_sweep;
        self
    }

    /// Sets [`Config::tombstones`] and [`Config::tombstone_ttl`].
    pub fn with_tombstones(mut self, max: usize, ttl: Duration) -> Self {
        self.tombstones = max;
        self.tombstone_ttl = ttl;
        self
    }

    /// Checks that the configuration can work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.capacity == 0 {
            return Err(ConfigError::ZeroCapacity);
        }
        if self.capacity > MAX_CAPACITY {
            return Err(ConfigError::CapacityTooLarge {
                capacity: self.capacity,
                max: MAX_CAPACITY,
            });
        }
        if self.max_age.is_zero() {
            return Err(ConfigError::ZeroMaxAge);
        }
        if u64::try_from(self.max_age.as_nanos()).is_err() {
            return Err(ConfigError::MaxAgeTooLarge {
                max_age: self.max_age,
            });
        }
        if self.max_sessions == 0 {
            return Err(ConfigError::ZeroMaxSessions);
        }
        if self.max_sessions > MAX_SESSIONS_LIMIT {
            return Err(ConfigError::TooManySessionsAllowed {
                max_sessions: self.max_sessions,
                max: MAX_SESSIONS_LIMIT,
            });
        }
        Ok(())
    }

    pub(crate) fn tombstone_ttl_nanos(&self) -> u64 {
        // Saturating: a longer time-to-live than 584 years is "forever".
        u64::try_from(self.tombstone_ttl.as_nanos()).unwrap_or(u64::MAX)
    }

    pub(crate) fn max_age_nanos(&self) -> u64 {
        // validate() guarantees it fits.
        u64::try_from(self.max_age.as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// `capacity` is 0: no event could ever be replayed.
    #[error("capacity is 0: a session must keep at least one event")]
    ZeroCapacity,
    /// `capacity` is larger than [`MAX_CAPACITY`].
    #[error("capacity {capacity} is larger than the supported maximum {max}")]
    CapacityTooLarge {
        /// The configured capacity.
        capacity: usize,
        /// The limit.
        max: usize,
    },
    /// `max_age` is zero: every event would be trimmed at once.
    #[error("max_age is zero: events would expire as soon as they are appended")]
    ZeroMaxAge,
    /// `max_age` does not fit in 64-bit nanoseconds (about 584 years).
    #[error("max_age {max_age:?} is too large; use at most a few days")]
    MaxAgeTooLarge {
        /// The configured age.
        max_age: Duration,
    },
    /// `max_sessions` is 0: no session could be created.
    #[error("max_sessions is 0: no session could ever be created")]
    ZeroMaxSessions,
    /// `max_sessions` is larger than [`MAX_SESSIONS_LIMIT`].
    #[error("max_sessions {max_sessions} is larger than the supported maximum {max}")]
    TooManySessionsAllowed {
        /// The configured bound.
        max_sessions: usize,
        /// The limit.
        max: usize,
    },
    /// The durable tier's persister thread could not be started.
    #[error("the persister thread could not be started: {reason}")]
    PersisterThread {
        /// What the OS said.
        reason: String,
    },
}
