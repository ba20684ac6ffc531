//! The store: sessions by key, with the contract's operations.
//!
//! `ReplayStore` is a thin layer over the [session map](crate::map) and the
//! [sessions](crate::session): it resolves a key (or a cursor's key) to the
//! current incarnation and applies the by-key rules (an unknown session is
//! empty at position 0 and `Unavailable` beyond; scoped calls refuse
//! cursors of other keys).

use std::fmt;
use std::sync::Arc as StdArc;

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ConfigError};
use crate::cursor::{Cursor, Revision};
use crate::error::{Error, Gap, GapReason};
use crate::event::Event;
use crate::key::SessionKey;
use crate::map::SessionMap;
use crate::session::{SessionHandle, Shared, Weigher};
use crate::subscription::Subscription;
use crate::sync::Arc;

/// Bounded, lock-free, per-session live replay.
///
/// ```
/// use livereplay::{Cursor, Error, GapReason, ReplayStore, Revision, SessionKey, Config};
///
/// let store = ReplayStore::new(Config::default().with_capacity(2))?;
/// let key = SessionKey::new("acme", "chat-1")?;
/// let first = store.append(&key, Revision(1), "a")?;
/// store.append(&key, Revision(1), "b")?;
/// // A host that saw the first event resumes after it:
/// let rest = store.replay_after_cursor(&first.cursor())?;
/// assert_eq!(rest.len(), 1);
/// // One that fell out of the window gets a precise gap:
/// store.append(&key, Revision(1), "c")?;
/// let Err(Error::Gap(gap)) = store.replay_after_cursor(&Cursor::start(key.clone())) else {
///     panic!("expected a gap")
/// };
/// assert_eq!(gap.reason, GapReason::Trimmed);
/// assert_eq!(gap.missed, Some(1));
/// assert_eq!(gap.latest.position(), 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ReplayStore<T> {
    shared: StdArc<Shared<T>>,
    sessions: SessionMap<T>,
}

/// Builds a [`ReplayStore`] with a custom clock or a payload limit.
///
/// ```
/// use std::sync::Arc;
/// use livereplay::{Config, ManualClock, ReplayStore};
///
/// let clock = Arc::new(ManualClock::new());
/// let store = ReplayStore::<String>::builder()
///     .config(Config::default().with_capacity(128))
///     .clock(clock.clone())
///     .payload_limit(64 * 1024, |payload: &String| payload.len())
///     .build()?;
/// # Ok::<(), livereplay::ConfigError>(())
/// ```
pub struct StoreBuilder<T> {
    config: Config,
    clock: StdArc<dyn Clock>,
    payload_limit: Option<(usize, Weigher<T>)>,
}

impl<T: Send + Sync + 'static> StoreBuilder<T> {
    /// The retention and size bounds (default [`Config::default`]).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The clock timestamps and age retention use (default [`SystemClock`]).
    pub fn clock(mut self, clock: StdArc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Refuses payloads that `weigh` says are larger than `max_bytes`, with
    /// [`Refusal::PayloadTooLarge`](crate::Refusal::PayloadTooLarge).
    pub fn payload_limit(
        mut self,
        max_bytes: usize,
        weigh: impl Fn(&T) -> usize + Send + Sync + 'static,
    ) -> Self {
        self.payload_limit = Some((max_bytes, Box::new(weigh)));
        self
    }

    /// Checks the configuration and builds the store.
    pub fn build(self) -> Result<ReplayStore<T>, ConfigError> {
        self.config.validate()?;
        Ok(ReplayStore {
            shared: StdArc::new(Shared {
                max_age_nanos: self.config.max_age_nanos(),
                config: self.config,
                clock: self.clock,
                payload_limit: self.payload_limit,
                counters: Default::default(),
            }),
            sessions: SessionMap::new(),
        })
    }
}

impl<T: Send + Sync + 'static> Default for ReplayStore<T> {
    fn default() -> Self {
        Self::builder()
            .build()
            .unwrap_or_else(|_| unreachable!("the default configuration is valid"))
    }
}

impl<T: Send + Sync + 'static> ReplayStore<T> {
    /// A store with `config` and the system clock.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        Self::builder().config(config).build()
    }

    /// A builder, for a custom clock or a payload limit.
    pub fn builder() -> StoreBuilder<T> {
        StoreBuilder {
            config: Config::default(),
            clock: StdArc::new(SystemClock),
            payload_limit: None,
        }
    }

    /// The configuration the store was built with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// A handle to the session for `key`, created if absent: appends and
    /// reads through it take no lock and no map lookup. The session is not
    /// evicted while the handle lives.
    pub fn session(&self, key: &SessionKey) -> Result<SessionHandle<T>, Error> {
        Ok(SessionHandle {
            session: self.sessions.get_or_create(key, &self.shared)?,
        })
    }

    /// Appends one event to `key`'s session (created if absent) and returns
    /// it, with its position and cursor. Never waits for another thread
    /// beyond the map's shard lock for the lookup.
    pub fn append(
        &self,
        key: &SessionKey,
        revision: Revision,
        payload: T,
    ) -> Result<Arc<Event<T>>, Error> {
        let mut payload = Some(payload);
        let appended = self.sessions.with(key, |session| {
            payload.take().map(|p| session.append(revision, p))
        });
        if let Some(Some(result)) = appended {
            return Ok(result?);
        }
        // Absent: create it. `payload` is still ours (the closure did not run).
        let Some(payload) = payload else {
            unreachable!("the payload is consumed only by an append that returned")
        };
        // A refused append changes nothing, not even the session map.
        self.shared.check_payload(&payload)?;
        let session = self.sessions.get_or_create(key, &self.shared)?;
        Ok(session.append(revision, payload)?)
    }

    /// Appends `payloads` with consecutive positions, visible all at once: a
    /// reader sees none or all of them. A batch larger than the capacity is
    /// refused whole. An empty batch stores nothing and returns nothing.
    pub fn append_batch(
        &self,
        key: &SessionKey,
        revision: Revision,
        payloads: impl IntoIterator<Item = T>,
    ) -> Result<Vec<Arc<Event<T>>>, Error> {
        let payloads: Vec<T> = payloads.into_iter().collect();
        if payloads.is_empty() {
            return Ok(Vec::new());
        }
        // A refused batch changes nothing, not even the session map.
        self.shared.check_batch(&payloads)?;
        let session = self.sessions.get_or_create(key, &self.shared)?;
        Ok(session.append_batch(revision, payloads)?)
    }

    /// Every event after `cursor`, in position order, as one contiguous run
    /// starting right after it, or the [`Gap`] that prevents it (see the
    /// crate docs for the gap table).
    pub fn replay_after_cursor(&self, cursor: &Cursor) -> Result<Vec<Arc<Event<T>>>, Error> {
        match self
            .sessions
            .with(cursor.key(), |session| session.replay_after(cursor))
        {
            Some(result) => Ok(result?),
            None if cursor.position() == 0 => Ok(Vec::new()),
            None => Err(self.unknown_session_gap(cursor)),
        }
    }

    /// [`replay_after_cursor`](Self::replay_after_cursor), refusing a cursor
    /// for another key than `key` with `CursorError::WrongSession`.
    pub fn replay_scoped(
        &self,
        key: &SessionKey,
        cursor: &Cursor,
    ) -> Result<Vec<Arc<Event<T>>>, Error> {
        cursor.check_key(key)?;
        self.replay_after_cursor(cursor)
    }

    /// Every event after `position` of the session's current incarnation
    /// (seed `load_since` / `load_events_after`), with the same gap rules.
    pub fn replay_after_position(
        &self,
        key: &SessionKey,
        position: u64,
    ) -> Result<Vec<Arc<Event<T>>>, Error> {
        self.replay_after_cursor(&Cursor::new(
            key.clone(),
            None,
            Revision::default(),
            position,
        ))
    }

    /// Subscribes after `cursor`: every later event exactly once, buffered
    /// first, then live. Checks the cursor like a replay. Creates the
    /// session if it does not exist and the cursor is at position 0, so a
    /// host can subscribe before the runtime's first append.
    pub fn subscribe_after_cursor(&self, cursor: &Cursor) -> Result<Subscription<T>, Error> {
        let session = if cursor.position() == 0 {
            self.sessions.get_or_create(cursor.key(), &self.shared)?
        } else {
            match self.sessions.get(cursor.key()) {
                Some(session) => session,
                None => return Err(self.unknown_session_gap(cursor)),
            }
        };
        Ok(Subscription::start(session, cursor)?)
    }

    /// [`subscribe_after_cursor`](Self::subscribe_after_cursor), refusing a
    /// cursor for another key than `key`.
    pub fn subscribe_scoped(
        &self,
        key: &SessionKey,
        cursor: &Cursor,
    ) -> Result<Subscription<T>, Error> {
        cursor.check_key(key)?;
        self.subscribe_after_cursor(cursor)
    }

    /// The cursor at the session's published tail; the start cursor if the
    /// session does not exist.
    pub fn current_cursor(&self, key: &SessionKey) -> Cursor {
        self.sessions
            .with(key, |session| session.current_cursor())
            .unwrap_or_else(|| Cursor::start(key.clone()))
    }

    /// Applies the retention bounds to `key`'s session now, frees what it
    /// trims, and evicts the session if it is left empty with nobody holding
    /// it. Returns how many events it freed.
    pub fn trim_session(&self, key: &SessionKey) -> usize {
        self.sessions.trim(key, &self.shared)
    }

    /// Trims every position `<= watermark` of `key`'s session (seed
    /// `archive_before`). The watermark is monotonic: a lower value is a
    /// no-op; one beyond the published tail is clamped to it. Returns how
    /// many retained events it newly trimmed.
    pub fn release_through(&self, key: &SessionKey, watermark: u64) -> usize {
        self.sessions
            .with(key, |session| session.release_through(watermark))
            .unwrap_or(0)
    }

    /// Removes the session now, whatever holds it. Appends through its
    /// handles are refused afterwards; its subscribers end with a `Reset`
    /// gap; its cursors read as `Unavailable` (or `Reset` once a new
    /// incarnation exists). Returns whether it existed.
    pub fn remove_session(&self, key: &SessionKey) -> bool {
        self.sessions.remove(key, &self.shared)
    }

    /// Evicts every idle session: trimmed to nothing, with no handle or
    /// subscription. Runs automatically as sessions are created unless
    /// [`Config::auto_sweep`] is off. Returns how many it evicted.
    pub fn sweep(&self) -> usize {
        self.sessions.sweep(&self.shared)
    }

    /// The latest published position, `None` if the session has no events
    /// or does not exist.
    pub fn latest_position(&self, key: &SessionKey) -> Option<u64> {
        self.sessions
            .with(key, |session| session.latest_position())
            .flatten()
    }

    /// How many events the session retains now (0 if it does not exist).
    pub fn event_count(&self, key: &SessionKey) -> u64 {
        let now = self.shared.now();
        self.sessions
            .with(key, |session| session.retained(now))
            .unwrap_or(0)
    }

    /// Whether the session exists.
    pub fn contains_session(&self, key: &SessionKey) -> bool {
        self.sessions.with(key, |_| ()).is_some()
    }

    /// The sessions of `tenant`, newest first, skipping `offset`, at most
    /// `limit`. Walks every session: a query for operators, not a hot path.
    pub fn sessions(&self, tenant: &str, limit: usize, offset: usize) -> Vec<SessionKey> {
        self.sessions.of_tenant(tenant, limit, offset)
    }

    /// Counters for operators: cheap, approximate under concurrency.
    ///
    /// It walks the sessions (O(sessions)); nothing here adds work to the
    /// append path: appends are read off each ring's position counter, rare
    /// events (gaps, lag, eviction) have store-wide counters.
    pub fn stats(&self) -> Stats {
        let counters = &self.shared.counters;
        let mut stats = Stats {
            sessions: self.sessions.len(),
            evicted_sessions: self.sessions.evicted(),
            appends: counters.appends_of_gone_sessions.get(),
            gaps_trimmed: counters.gaps_trimmed.get(),
            gaps_unavailable: counters.gaps_unavailable.get(),
            gaps_reset: counters.gaps_reset.get(),
            lagged_subscribers: counters.lagged_subscribers.get(),
            ..Stats::default()
        };
        let now = self.shared.now();
        self.sessions.for_each(|_, session| {
            stats.appends += session.ring.claimed();
            stats.retained_events += session.retained(now);
            stats.subscribers += session
                .subscribers
                .load(std::sync::atomic::Ordering::Relaxed);
            stats.parked_subscribers += session.ring.parked();
            stats.allocated_slots += session.ring.allocated_slots();
        });
        stats
    }
}

/// A snapshot of the store's counters; see [`ReplayStore::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Sessions in the store.
    pub sessions: usize,
    /// Events appended since the store was built (removed and evicted
    /// sessions included).
    pub appends: u64,
    /// Events readable now, over all sessions.
    pub retained_events: u64,
    /// Live subscriptions.
    pub subscribers: usize,
    /// Subscribers waiting for an event.
    pub parked_subscribers: usize,
    /// Subscriptions ended because they fell out of the retention window.
    pub lagged_subscribers: u64,
    /// Gaps reported with reason `Trimmed` (replays, subscribes, lag).
    pub gaps_trimmed: u64,
    /// Gaps reported with reason `Unavailable`.
    pub gaps_unavailable: u64,
    /// Gaps reported with reason `Reset`.
    pub gaps_reset: u64,
    /// Ring slots allocated, over all sessions (16 bytes each).
    pub allocated_slots: usize,
    /// Sessions evicted since the store was built.
    pub evicted_sessions: u64,
}

impl<T> ReplayStore<T> {
    /// The by-key answer for a cursor past 0 on a session that does not exist.
    fn unknown_session_gap(&self, cursor: &Cursor) -> Error {
        self.shared.counters.count_gap(GapReason::Unavailable);
        Error::Gap(Gap {
            reason: GapReason::Unavailable,
            requested: cursor.clone(),
            latest: Cursor::start(cursor.key().clone()),
            missed: None,
        })
    }
}

impl<T> fmt::Debug for ReplayStore<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayStore")
            .field("config", &self.shared.config)
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}
