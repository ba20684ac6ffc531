//! The store: sessions by key, with the contract's operations.
//!
//! `ReplayStore` is a thin layer over the [session map](crate::map) and the
//! [sessions](crate::session): it resolves a key (or a cursor's key) to the
//! current incarnation and applies the by-key rules (an unknown session is
//! empty at position 0 and `Unavailable` beyond; a dormant one answers from
//! its tombstone; scoped calls refuse cursors of other keys).
//!
//! With a durable log ([`StoreBuilder::durable`]) it also owns the
//! [persister](crate::persist) thread, and offers the calls that read
//! beyond memory: [catch-up](crate::catchup), durable watermarks, waits and
//! archiving. The ring's own calls stay memory-only and never block.

use std::fmt;
use std::sync::Arc as StdArc;

use std::time::{Duration, Instant};

use thiserror::Error as ThisError;

use crate::catchup::CatchUp;
use crate::clock::{Clock, SystemClock};
use crate::codec::Codec;
use crate::config::{Config, ConfigError};
use crate::cursor::{Cursor, Revision};
use crate::durable::{DurableLog, LogError};
use crate::error::{Error, Gap, GapReason};
use crate::event::Event;
use crate::key::SessionKey;
#[cfg(feature = "dag")]
use crate::links::EventRef;
use crate::links::Links;
use crate::map::{Found, SessionMap};
use crate::persist::{restore_identity, DurableOptions, Persistence};
use crate::ring::LentEvents;
#[cfg(feature = "dag")]
use crate::ring::Read;
use crate::session::{Held, Session, SessionHandle, Shared, Weigher};
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
    pub(crate) sessions: StdArc<SessionMap<T>>,
}

/// The durable tier a builder was given.
struct DurableParts<T> {
    log: StdArc<dyn DurableLog>,
    codec: Box<dyn Codec<T>>,
    options: DurableOptions,
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
    durable: Option<DurableParts<T>>,
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

    /// Puts a durable log behind the rings: a persister thread writes every
    /// appended event to `log` (payloads through `codec`), catch-up serves
    /// any cursor from it, and sessions it remembers are restored on first
    /// touch. The append path gains one load in the common case.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use livereplay::durable::MemoryLog;
    /// use livereplay::{ReplayStore, Revision, SessionKey, Utf8};
    ///
    /// let store = ReplayStore::<String>::builder()
    ///     .durable(Arc::new(MemoryLog::new()), Utf8)
    ///     .build()?;
    /// let key = SessionKey::new("acme", "chat-1")?;
    /// let event = store.append(&key, Revision(1), "hello".to_string())?;
    /// store.wait_durable(&key, event.position(), Duration::from_secs(5))?;
    /// assert_eq!(store.durable_position(&key)?, Some(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn durable(mut self, log: StdArc<dyn DurableLog>, codec: impl Codec<T>) -> Self {
        self.durable = Some(DurableParts {
            log,
            codec: Box::new(codec),
            options: DurableOptions::default(),
        });
        self
    }

    /// Tunes the durable tier (no effect without [`StoreBuilder::durable`]).
    pub fn durable_options(mut self, options: DurableOptions) -> Self {
        if let Some(durable) = self.durable.as_mut() {
            durable.options = options;
        }
        self
    }

    /// Checks the configuration and builds the store (and starts its
    /// persister, with a durable log).
    pub fn build(self) -> Result<ReplayStore<T>, ConfigError> {
        self.config.validate()?;
        let persistence = self
            .durable
            .map(|parts| StdArc::new(Persistence::new(parts.log, parts.codec, parts.options)));
        if let Some(persistence) = &persistence {
            Persistence::start(persistence).map_err(|error| ConfigError::PersisterThread {
                reason: error.to_string(),
            })?;
        }
        Ok(ReplayStore {
            shared: StdArc::new(Shared {
                max_age_nanos: self.config.max_age_nanos(),
                config: self.config,
                clock: self.clock,
                payload_limit: self.payload_limit,
                counters: Default::default(),
                persistence,
            }),
            sessions: StdArc::new(SessionMap::new()),
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
            durable: None,
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
        Ok(SessionHandle::new(self.resident(key)?))
    }

    /// The resident session for `key`: revived from its tombstone, restored
    /// from the durable log, or new.
    fn resident(&self, key: &SessionKey) -> Result<Held<T>, crate::Refusal> {
        self.sessions
            .get_or_create(key, &self.shared, &|| restore_identity(&self.shared, key))
    }

    /// Appends one event to `key`'s session (created if absent) and returns
    /// it, with its position and cursor. Never waits for another thread
    /// beyond the map's shard lock for the lookup.
    #[inline(always)]
    pub fn append(
        &self,
        key: &SessionKey,
        revision: Revision,
        payload: T,
    ) -> Result<Arc<Event<T>>, Error> {
        // Widened to `Error` here, in the caller, as a handle's append
        // does: what crosses the call is the small `Refusal` result, not
        // `Error` (80 bytes, which a caller that moves the result copies
        // back from memory it was just written to).
        Ok(self.append_by_key(key, revision, payload)?)
    }

    /// [`append`](Self::append), refused with a [`Refusal`](crate::Refusal)
    /// (the only way it fails).
    #[inline(never)]
    fn append_by_key(
        &self,
        key: &SessionKey,
        revision: Revision,
        payload: T,
    ) -> Result<Arc<Event<T>>, crate::Refusal> {
        // Resident: append under the shard's read lock (no reference
        // leaves it, so nothing to count or let go).
        match self
            .sessions
            .with_resident(key, payload, |session, payload| {
                Session::append(session, revision, payload)
            }) {
            Ok(appended) => appended,
            // Absent or dormant: the payload came back untouched.
            Err(payload) => self.append_to_new(key, revision, payload),
        }
    }

    /// [`append`](Self::append) to a session that is not resident: creates
    /// or revives it first. Out of line, so the resident path stays small.
    #[cold]
    #[inline(never)]
    fn append_to_new(
        &self,
        key: &SessionKey,
        revision: Revision,
        payload: T,
    ) -> Result<Arc<Event<T>>, crate::Refusal> {
        // A refused append changes nothing, not even the session map.
        self.shared.check_payload(&payload)?;
        let session = self.resident(key)?;
        Session::append(&session, revision, payload)
    }

    /// Appends one event carrying causal [`Links`] (a parent, a correlation
    /// id, a kind, a lane, whether it waits for an acknowledgement).
    ///
    /// Exactly as cheap and as wait-free as [`append`](Self::append) when
    /// `links` is empty. Links are checked for shape only (see
    /// [`Links::check_for`]): a parent in another tenant is refused with
    /// [`Error::Link`], a parent that does not exist is accepted (the
    /// causal index reports it as missing).
    ///
    /// ```
    /// use livereplay::{Config, Links, ReplayStore, Revision, SessionKey};
    ///
    /// let store = ReplayStore::<String>::new(Config::default())?;
    /// let key = SessionKey::new("acme", "turn-1")?;
    /// let call = store.append_linked(&key, Revision(1), "search(\"rust\")".into(),
    ///     Links::new().kind("tool_call").correlation("call-1"))?;
    /// let result = store.append_linked(&key, Revision(1), "3 hits".into(),
    ///     Links::new().parent(call.reference()).kind("tool_result"))?;
    /// assert_eq!(result.links().unwrap().parent, Some(call.reference()));
    ///
    /// let other = SessionKey::new("globex", "turn-1")?;
    /// assert!(store.append_linked(&other, Revision(1), "x".into(),
    ///     Links::new().parent(call.reference())).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn append_linked(
        &self,
        key: &SessionKey,
        revision: Revision,
        payload: T,
        links: Links,
    ) -> Result<Arc<Event<T>>, Error> {
        if links.is_empty() {
            return self.append(key, revision, payload);
        }
        links.check_for(key)?;
        self.shared.check_payload(&payload)?;
        let session = self.resident(key)?;
        Ok(Session::append_with(
            &session,
            revision,
            payload,
            Some(Box::new(links)),
        )?)
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
        let session = self.resident(key)?;
        Ok(Session::append_batch(&session, revision, payloads)?)
    }

    /// Every event after `cursor`, in position order, as one contiguous run
    /// starting right after it, or the [`Gap`] that prevents it (see the
    /// crate docs for the gap table).
    pub fn replay_after_cursor(&self, cursor: &Cursor) -> Result<Vec<Arc<Event<T>>>, Error> {
        let found = self.sessions.with_found(cursor.key(), |found| match found {
            Found::Resident(session) => session.replay_after(cursor),
            Found::Dormant(tombstone) => tombstone
                .answer(cursor)
                .map(|()| Vec::new())
                .inspect_err(|gap| self.shared.counters.count_gap(gap.reason)),
        });
        match found {
            Some(result) => Ok(result?),
            None if cursor.position() == 0 => Ok(Vec::new()),
            None => Err(self.unknown_session_gap(cursor)),
        }
    }

    /// The events after `cursor`, lent to `read` in place instead of
    /// returned: the same events, in the same order, with the same gaps as
    /// [`replay_after_cursor`](Self::replay_after_cursor), and `read` runs
    /// only when there is no gap (with no events for a cursor at the tail).
    ///
    /// A replay that returns events counts a reference to each (an atomic
    /// write to the event), the caller drops it later (another), and the
    /// references travel in a `Vec`. Lending writes nothing to the events
    /// and collects nothing: a host that encodes the events it sends, or
    /// copies out what it keeps, pays for that only. A replay of 100
    /// events read this way costs about a sixth of a cloning one
    /// (BENCHMARKS.md, "Issue 13, fifth round"). To keep events themselves
    /// (`Arc`s), use [`replay_after_cursor`](Self::replay_after_cursor).
    ///
    /// While `read` runs, the segments it reads from stay allocated, even
    /// if writers lap them: keep it short (encode, copy, send to a
    /// buffer), not a wait on a socket. It runs on the calling thread,
    /// outside the session map's lock, and may call back into the store.
    ///
    /// ```
    /// use livereplay::{Cursor, ReplayStore, Revision, SessionKey};
    ///
    /// let store = ReplayStore::<u64>::default();
    /// let key = SessionKey::new("tenant", "counter")?;
    /// for n in 1..=10 {
    ///     store.append(&key, Revision(1), n)?;
    /// }
    /// let after_three = Cursor::new(key.clone(), None, Revision(1), 3);
    /// let (count, sum) = store.replay_with(&after_three, |events| {
    ///     (events.len(), events.map(|event| *event.payload()).sum::<u64>())
    /// })?;
    /// assert_eq!((count, sum), (7, (4..=10).sum()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn replay_with<R>(
        &self,
        cursor: &Cursor,
        read: impl FnOnce(LentEvents<'_, T>) -> R,
    ) -> Result<R, Error> {
        // The session leaves the map's lock held (so no eviction can free
        // it), and `read` runs outside the lock.
        let found = self.sessions.with_found(cursor.key(), |found| match found {
            Found::Resident(session) => Ok(Some(Held::new(session))),
            Found::Dormant(tombstone) => tombstone
                .answer(cursor)
                .map(|()| None)
                .inspect_err(|gap| self.shared.counters.count_gap(gap.reason)),
        });
        match found {
            Some(Ok(Some(session))) => Ok(session.lend_after(cursor, read)?),
            Some(Ok(None)) => Ok(read(LentEvents::empty())),
            Some(Err(gap)) => Err(gap.into()),
            None if cursor.position() == 0 => Ok(read(LentEvents::empty())),
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
        let known = self.sessions.with_found(cursor.key(), |found| match found {
            Found::Resident(_) => Ok(()),
            Found::Dormant(tombstone) => tombstone.answer(cursor),
        });
        let session = match known {
            // A dormant session answers from its tombstone; a subscriber at
            // its tail revives it and waits there.
            Some(Err(gap)) => {
                self.shared.counters.count_gap(gap.reason);
                return Err(gap.into());
            }
            Some(Ok(())) => self.resident(cursor.key())?,
            None if cursor.position() == 0 => self.resident(cursor.key())?,
            None => return Err(self.unknown_session_gap(cursor)),
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
            .with_found(key, |found| match found {
                Found::Resident(session) => session.current_cursor(),
                Found::Dormant(tombstone) => tombstone.latest(key),
            })
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
    ///
    /// With a durable log, the events it accepted still reach the log, and
    /// a session re-created under the key continues after them as a new
    /// life, so catch-up serves the removed incarnation's cursors from the
    /// log.
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
            .with_found(key, |found| match found {
                Found::Resident(session) => session.latest_position(),
                Found::Dormant(tombstone) => {
                    Some(tombstone.identity.start).filter(|&last| last > 0)
                }
            })
            .flatten()
    }

    /// How many events the session retains now (0 if it does not exist).
    pub fn event_count(&self, key: &SessionKey) -> u64 {
        let now = self.shared.now();
        self.sessions
            .with(key, |session| session.retained(now))
            .unwrap_or(0)
    }

    /// Whether the store knows the session: resident, or dormant (evicted,
    /// with its identity kept in a tombstone).
    pub fn contains_session(&self, key: &SessionKey) -> bool {
        self.sessions.with_found(key, |_| ()).is_some()
    }

    /// Whether the session is resident: in memory, with its ring.
    pub fn is_resident(&self, key: &SessionKey) -> bool {
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
            dormant_sessions: self.sessions.dormant(),
            evicted_sessions: self.sessions.evicted(),
            revived_sessions: self.sessions.revived(),
            forgotten_tombstones: self.sessions.forgotten(),
            appends: counters.appends_of_gone_sessions.get(),
            gaps_trimmed: counters.gaps_trimmed.get(),
            gaps_unavailable: counters.gaps_unavailable.get(),
            gaps_reset: counters.gaps_reset.get(),
            gaps_lost: counters.gaps_lost.get(),
            lagged_subscribers: counters.lagged_subscribers.get(),
            ..Stats::default()
        };
        if let Some(persistence) = &self.shared.persistence {
            let c = &persistence.counters;
            let (last_fenced, last_refused) = persistence.given_up();
            stats.durable = Some(DurableStats {
                persisted_events: c.persisted_events.get(),
                commits: c.commits.get(),
                holes: c.holes.get(),
                lost_events: c.lost_events.get(),
                unencodable_events: c.unencodable_events.get(),
                undecodable_events: c.undecodable_events.get(),
                log_failures: c.log_failures.get(),
                restored_sessions: c.restored_sessions.get(),
                fenced_sessions: c.fenced_sessions.get(),
                log_regressions: c.log_regressions.get(),
                undurable_events: 0,
                last_fenced,
                waiting_sessions: 0,
                refused_records: c.refused_records.get(),
                recovered_replies: c.recovered_replies.get(),
                last_refused,
                last_error: persistence.last_error(),
            });
        }
        let now = self.shared.now();
        self.sessions.for_each(|_, session| {
            if let Some(durable) = stats.durable.as_mut() {
                durable.undurable_events += session
                    .ring
                    .published_tail()
                    .saturating_sub(session.durable());
                if session.durable() < session.identity().start {
                    durable.waiting_sessions += 1;
                }
            }
            stats.appends += session.ring.claimed() - session.identity().start;
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
    /// Evicted sessions remembered by a tombstone now.
    pub dormant_sessions: usize,
    /// Sessions revived from a tombstone (continuing their positions).
    pub revived_sessions: u64,
    /// Tombstones forgotten by age or count.
    pub forgotten_tombstones: u64,
    /// Gaps reported with reason `Lost`.
    pub gaps_lost: u64,
    /// The durable tier's counters, if the store has one.
    pub durable: Option<DurableStats>,
}

/// The durable tier's counters; see [`ReplayStore::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DurableStats {
    /// Events written to the log.
    pub persisted_events: u64,
    /// Commits that succeeded.
    pub commits: u64,
    /// Hole records written (positions no tier holds).
    pub holes: u64,
    /// Positions covered by holes: accepted events lost because the ring
    /// lapped them before the log took them, or the codec refused them.
    pub lost_events: u64,
    /// Payloads the codec could not encode (each also in a hole).
    pub unencodable_events: u64,
    /// Stored payloads the codec could not decode (catch-up reported them
    /// as lost).
    pub undecodable_events: u64,
    /// Commits that failed (each retried until it succeeds).
    pub log_failures: u64,
    /// Sessions restored from the log (a new life after its durable tail).
    pub restored_sessions: u64,
    /// Sessions another writer took over in the log (a newer life there):
    /// their later events stay in this store's rings and are not written.
    pub fenced_sessions: u64,
    /// Times the log's tail was found behind a watermark it had
    /// acknowledged (it lost writes, e.g. a Redis restart without fsync):
    /// what the ring still held was written again, the rest as a hole.
    pub log_regressions: u64,
    /// The last session fenced, for an operator to look at.
    pub last_fenced: Option<SessionKey>,
    /// Re-created sessions whose life waits now for a removed predecessor's
    /// events to reach the log.
    pub waiting_sessions: u64,
    /// Records the log refused for good (written as holes instead).
    pub refused_records: u64,
    /// Times the log was found ahead of a watermark: a commit had landed
    /// though its reply was lost (a network log), and the watermark
    /// adopted the log's tail.
    pub recovered_replies: u64,
    /// The session of the last record the log refused.
    pub last_refused: Option<SessionKey>,
    /// Events published in resident sessions but not yet durable.
    pub undurable_events: u64,
    /// The last error the log returned, if any.
    pub last_error: Option<String>,
}

/// Resolves after the persister's next commit; see
/// [`ReplayStore::durable_progress`].
#[must_use = "a future does nothing unless awaited"]
pub struct DurableProgress(Option<event_listener::EventListener>);

impl std::future::Future for DurableProgress {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        match self.get_mut().0.as_mut() {
            Some(listener) => std::pin::Pin::new(listener).poll(cx),
            None => std::task::Poll::Ready(()),
        }
    }
}

impl fmt::Debug for DurableProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableProgress")
            .field("pending", &self.0.is_some())
            .finish()
    }
}

/// Why [`ReplayStore::wait_durable`] returned without the position being
/// durable.
#[derive(Debug, Clone, PartialEq, Eq, ThisError)]
#[non_exhaustive]
pub enum DurableError {
    /// The store has no durable log; build it with [`StoreBuilder::durable`].
    #[error("the store has no durable log: build it with StoreBuilder::durable")]
    NoDurableTier,
    /// The position is not durable yet; `durable` is how far the session is.
    #[error("position {position} is not durable after the timeout (durable through {durable}); the log may be stalled: see stats().durable")]
    Timeout {
        /// The position waited for.
        position: u64,
        /// The session's durable watermark at the deadline.
        durable: u64,
    },
    /// The session has no such position (nothing was appended there).
    #[error("position {position} was never appended (the session's last position is {last})")]
    NoSuchPosition {
        /// The position asked for.
        position: u64,
        /// The session's last position.
        last: u64,
    },
    /// The log recorded the position as lost (a hole): no tier holds its
    /// event, and it will never be durable.
    #[error("position {position} will never be durable: the log recorded positions up to {through} as lost ({reason})")]
    Lost {
        /// The position waited for.
        position: u64,
        /// The last position of the hole it is in.
        through: u64,
        /// Why the log has a hole there.
        reason: crate::durable::HoleReason,
    },
    /// The log could not be read.
    #[error("the durable log failed: {0}")]
    Log(String),
}

impl From<LogError> for DurableError {
    fn from(error: LogError) -> Self {
        DurableError::Log(error.to_string())
    }
}

/// The durable tier's calls.
impl<T: Send + Sync + 'static> ReplayStore<T> {
    /// Every event after `cursor`, from the durable log, then the ring,
    /// then live: any cursor this store (or an earlier process over the same
    /// log) ever issued. Each event is delivered exactly once, in order,
    /// with no seam between the tiers; the only gaps are positions no tier
    /// holds (archived: `Trimmed`; a recorded hole or a crash:
    /// `Lost`), each with its count.
    ///
    /// Without a durable log it serves what memory holds, like
    /// [`subscribe_after_cursor`](Self::subscribe_after_cursor).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use livereplay::durable::MemoryLog;
    /// use livereplay::{Config, Cursor, ReplayStore, Revision, SessionKey, Utf8};
    ///
    /// let store = ReplayStore::<String>::builder()
    ///     .config(Config::default().with_capacity(4))
    ///     .durable(Arc::new(MemoryLog::new()), Utf8)
    ///     .build()?;
    /// let key = SessionKey::new("acme", "chat-1")?;
    /// for token in ["a", "b", "c", "d", "e", "f"] {
    ///     let event = store.append(&key, Revision(1), token.to_string())?;
    ///     // (A writer faster than the log would lap it: holes, `Lost`.)
    ///     store.wait_durable(&key, event.position(), Duration::from_secs(5))?;
    /// }
    /// // The ring holds only the last 4; the log has the rest.
    /// let mut all = store.catch_up(&Cursor::start(key.clone()))?;
    /// let mut text = String::new();
    /// for _ in 0..6 {
    ///     text += all.next_timeout(Duration::from_secs(5))?.payload();
    /// }
    /// assert_eq!(text, "abcdef");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn catch_up(&self, cursor: &Cursor) -> Result<CatchUp<T>, Error> {
        CatchUp::start(
            StdArc::clone(&self.sessions),
            StdArc::clone(&self.shared),
            cursor,
        )
    }

    /// [`catch_up`](Self::catch_up), refusing a cursor for another key.
    pub fn catch_up_scoped(&self, key: &SessionKey, cursor: &Cursor) -> Result<CatchUp<T>, Error> {
        cursor.check_key(key)?;
        self.catch_up(cursor)
    }

    /// Up to `limit` events after `cursor` from every tier, without waiting
    /// for new ones (a one-shot [`catch_up`](Self::catch_up)). Reads the log.
    pub fn catch_up_replay(
        &self,
        cursor: &Cursor,
        limit: usize,
    ) -> Result<Vec<Arc<Event<T>>>, Error> {
        let mut catch_up = self.catch_up(cursor)?;
        let mut events = Vec::new();
        while events.len() < limit {
            match catch_up.try_next() {
                Ok(event) => events.push(event),
                Err(crate::TryNextError::Gap(gap)) if events.is_empty() => return Err(gap.into()),
                Err(_) => break,
            }
        }
        Ok(events)
    }

    /// The event at `event`'s position if the session is resident and its
    /// ring still holds it.
    #[cfg(feature = "dag")]
    pub(crate) fn event_in_ring(&self, event: &EventRef) -> Option<Arc<Event<T>>> {
        self.sessions
            .with(&event.key, |session| {
                match session.ring.read(event.position) {
                    Read::Event(found) => Some(found),
                    _ => None,
                }
            })
            .flatten()
    }

    /// The events the durable log holds at positions `first ..= last` of
    /// `key`'s session, in position order: holes, archived positions and
    /// payloads the codec refuses are left out. One log read (`last -
    /// first + 1` records at most).
    #[cfg(feature = "dag")]
    pub(crate) fn events_in_log(
        &self,
        key: &SessionKey,
        first: u64,
        last: u64,
    ) -> Result<Vec<Arc<Event<T>>>, LogError> {
        let Some(persistence) = &self.shared.persistence else {
            return Ok(Vec::new());
        };
        let (Some(before), Some(span)) = (first.checked_sub(1), last.checked_sub(first)) else {
            return Ok(Vec::new());
        };
        let limit = usize::try_from(span)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        let records = persistence.log.load_after(key, before, limit)?;
        Ok(records
            .into_iter()
            .filter(|record| (first..=last).contains(&record.position))
            .filter_map(|record| crate::catchup::decode_record(&self.shared, key, record))
            .collect())
    }

    /// The session's durable watermark: every position at or below it is
    /// settled in the log, as an event or recorded as lost (a hole;
    /// [`wait_durable`](Self::wait_durable) tells them apart). `None` without a durable log or for a session neither
    /// memory nor the log knows. Reads the log for sessions not in memory.
    pub fn durable_position(&self, key: &SessionKey) -> Result<Option<u64>, DurableError> {
        let Some(persistence) = &self.shared.persistence else {
            return Ok(None);
        };
        let in_memory = self.sessions.with_found(key, |found| match found {
            Found::Resident(session) => session.durable(),
            Found::Dormant(tombstone) => tombstone.identity.start,
        });
        if let Some(durable) = in_memory {
            return Ok(Some(durable));
        }
        // Removed, its events on their way: it answers, as in
        // `wait_durable` (the log may be ahead of it after a lost reply,
        // until the persister re-reads it).
        if let Some((removed, _)) = persistence.removed_pending(key) {
            return Ok(Some(removed.durable()));
        }
        Ok(persistence.log.meta(key)?.map(|meta| meta.durable_tail))
    }

    /// Waits until `position` of `key`'s session is durable, at most
    /// `timeout`; returns the watermark then. A position the log recorded
    /// as lost is [`DurableError::Lost`], never durable. For callers that want "durable
    /// when it returns" (seed 003) — never the turn loop.
    pub fn wait_durable(
        &self,
        key: &SessionKey,
        position: u64,
        timeout: Duration,
    ) -> Result<u64, DurableError> {
        let Some(persistence) = &self.shared.persistence else {
            return Err(DurableError::NoDurableTier);
        };
        let deadline = Instant::now().checked_add(timeout);
        loop {
            // The resident session, or one removed whose events are still
            // on their way to the log (it answers until they are through).
            let resident = self.sessions.get(key);
            let removed = match resident {
                Some(_) => None,
                None => persistence.removed_pending(key),
            };
            let tracked = match (&resident, &removed) {
                (Some(held), _) => Some((&***held, held.ring.claimed())),
                (None, Some((session, last))) => Some((&**session, *last)),
                (None, None) => None,
            };
            let durable = match tracked {
                Some((session, last)) => {
                    if position > last {
                        return Err(DurableError::NoSuchPosition { position, last });
                    }
                    session.durable()
                }
                None => {
                    let durable = self.durable_position(key)?.unwrap_or(0);
                    if position > durable {
                        return Err(DurableError::NoSuchPosition {
                            position,
                            last: durable,
                        });
                    }
                    durable
                }
            };
            if durable >= position {
                // Settled: in the log as an event, or recorded as lost.
                let session = tracked.map(|(session, _)| session);
                if let Some((reason, through)) = persistence.lost_at(key, session, position)? {
                    return Err(DurableError::Lost {
                        position,
                        through,
                        reason,
                    });
                }
                return Ok(durable);
            }
            let listener = persistence.listen();
            if tracked.is_some_and(|(session, _)| session.durable() >= position) {
                continue;
            }
            persistence.nudge();
            let remaining = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::MAX,
            };
            if remaining.is_zero() {
                return Err(DurableError::Timeout { position, durable });
            }
            crate::sync::wait_listener(listener, remaining);
        }
    }

    /// If this store's persister wrote `position` of `key`'s resident
    /// session as a hole, the hole's last position: an event a reader took
    /// from the ring is then lost after all (the ring lapped it before the
    /// log took it), and no durable-only reader may send it. `None` for a
    /// session not resident here: the log serves its events, never a hole.
    #[cfg(feature = "axum")]
    pub(crate) fn lost_after_read(&self, key: &SessionKey, position: u64) -> Option<u64> {
        let persistence = self.shared.persistence.as_ref()?;
        let session = self.sessions.get(key)?;
        let lost = persistence.lost_at(key, Some(&**session), position);
        // A log that cannot answer (only for positions older than what the
        // session tracks): the event came from the ring, so send it.
        let through = lost.ok().flatten().map(|(_, through)| through)?;
        self.shared.counters.count_gap(GapReason::Lost);
        Some(through)
    }

    /// A future that resolves after the persister's next commit (at once
    /// without a durable log), for async callers that wait for a position
    /// to become durable: check [`durable_position`](Self::durable_position),
    /// take this, check again, then await it. It wakes the persister so the
    /// commit comes soon. Runtime-agnostic.
    pub fn durable_progress(&self) -> DurableProgress {
        DurableProgress(self.shared.persistence.as_ref().map(|persistence| {
            let listener = persistence.listen();
            persistence.nudge();
            listener
        }))
    }

    /// Archives every position `<= watermark` of the session in the durable
    /// log (seed `archive_before`) and releases it from the ring. Monotonic;
    /// clamped to what is durable. Returns how many events the log archived.
    pub fn archive_before(&self, key: &SessionKey, watermark: u64) -> Result<u64, DurableError> {
        let Some(persistence) = &self.shared.persistence else {
            return Err(DurableError::NoDurableTier);
        };
        let archived = persistence.log.archive_before(key, watermark)?;
        self.release_through(key, watermark);
        Ok(archived)
    }

    /// Runs one persister round on the calling thread, for a store built
    /// with [`DurableOptions::with_persister_thread`]`(false)`: a
    /// deterministic simulation drives every node's persistence this way,
    /// in an order its seed chooses. Returns `None` if nothing was queued
    /// (or the store has a persister thread, which does this itself), else
    /// whether the commit succeeded.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use livereplay::durable::MemoryLog;
    /// use livereplay::{DurableOptions, ReplayStore, Revision, SessionKey, Utf8};
    ///
    /// let store = ReplayStore::<String>::builder()
    ///     .durable(Arc::new(MemoryLog::new()), Utf8)
    ///     .durable_options(DurableOptions::default().with_persister_thread(false))
    ///     .build()?;
    /// let key = SessionKey::new("acme", "chat-1")?;
    /// store.append(&key, Revision(1), "hello".to_string())?;
    /// assert_eq!(store.durable_position(&key)?, Some(0));
    /// assert_eq!(store.persist_round(), Some(true));
    /// assert_eq!(store.durable_position(&key)?, Some(1));
    /// assert_eq!(store.persist_round(), None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn persist_round(&self) -> Option<bool> {
        let persistence = self.shared.persistence.as_ref()?;
        if persistence.has_thread() {
            return None;
        }
        persistence.retry_reads();
        persistence.round()
    }

    /// The durable log, if the store has one.
    pub fn durable_log(&self) -> Option<&StdArc<dyn DurableLog>> {
        self.shared.persistence.as_ref().map(|p| &p.log)
    }
}

impl<T> Drop for ReplayStore<T> {
    fn drop(&mut self) {
        // Write what is left (bounded by the shutdown timeout), then stop
        // the persister thread.
        if let Some(persistence) = &self.shared.persistence {
            persistence.shutdown();
            // Nothing will write the rings any more: refuse what handles
            // that outlive the store would append, instead of accepting
            // events no tier will ever hold.
            self.sessions.for_each(|_, session| {
                session.ring.close();
            });
        }
    }
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
