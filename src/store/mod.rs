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
//!
//! This file holds the store and its memory-only calls; beside it,
//! `builder.rs` builds a store, `durable.rs` holds the calls that reach the
//! log (and their error and progress types), and `stats.rs` the counters.

use std::fmt;
use std::sync::Arc as StdArc;

use crate::config::{Config, ConfigError};
use crate::cursor::{Cursor, Revision};
use crate::error::{Error, Gap, GapReason};
use crate::event::Event;
use crate::handle::SessionHandle;
use crate::key::SessionKey;
use crate::links::Links;
use crate::map::{Found, SessionMap};
use crate::persist::{restore_identity, Persistence};
use crate::ring::LentEvents;
use crate::session::{Held, Session, Shared};
use crate::subscription::Subscription;
use crate::sync::Arc;

mod builder;
mod durable;
mod stats;
mod waits;

pub use self::builder::StoreBuilder;
pub use self::durable::{DurableError, DurableProgress};
pub use self::stats::{DurableStats, Stats};
pub use self::waits::{DurableWaits, DurableWatcher};

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
    /// The durable tier, if any (the core sees it as `shared.durable`).
    persistence: Option<StdArc<Persistence<T>>>,
    pub(crate) sessions: StdArc<SessionMap<T>>,
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
        self.sessions.get_or_create(key, &self.shared, &|| {
            restore_identity(self.persistence.as_deref(), key)
        })
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
    /// (BENCHMARKS.md, "Replay"). To keep events themselves
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

    /// Closes `key`'s session (created if absent, as an append would):
    /// readers deliver every event it accepted and then end with the
    /// [`Closure`](crate::Closure), later appends are refused with
    /// [`Refusal::SessionClosed`](crate::Refusal::SessionClosed), and with a
    /// durable log the closure is written with its last event, so a
    /// restored store finds the session closed. The first close wins: a
    /// later one returns it. Removing the session reopens its key: the next
    /// session under it is a new, open life. Never waits for the log.
    ///
    /// ```
    /// use livereplay::{CloseReason, Cursor, ReplayStore, Revision, SessionKey, TryNextError};
    ///
    /// let store = ReplayStore::<&'static str>::default();
    /// let key = SessionKey::new("acme", "turn-7")?;
    /// let mut reader = store.subscribe_after_cursor(&Cursor::start(key.clone()))?;
    /// store.append(&key, Revision(1), "the answer")?;
    /// let closure = store.close_session(&key, CloseReason::Done)?;
    /// assert_eq!(closure.last, 1);
    /// assert_eq!(*reader.try_next()?.payload(), "the answer");
    /// assert_eq!(reader.try_next().unwrap_err(), TryNextError::Closed(closure));
    /// assert!(store.append(&key, Revision(1), "late").is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn close_session(
        &self,
        key: &SessionKey,
        reason: crate::CloseReason,
    ) -> Result<crate::Closure, Error> {
        let session = self.resident(key)?;
        Ok(Session::close(&session, reason)?)
    }

    /// Opens a closed session's key again now: the session (restored if
    /// needed) is removed and a new, open life made at once that continues
    /// after it, as [`remove_session`](Self::remove_session) followed by a
    /// first append would, but without the wait: over a log several nodes
    /// share, a removal alone does not reopen the key in the log (the
    /// `closure` module docs), a life made here does. For a writer that
    /// knows it writes the key (over a shared log, the node that holds it).
    /// An open session is returned as it is.
    pub fn reopen_session(&self, key: &SessionKey) -> Result<SessionHandle<T>, Error> {
        let held = self.resident(key)?;
        if held.closure().is_none() {
            return Ok(SessionHandle::new(held));
        }
        drop(held);
        let removed = match self.sessions.remove_entry(key, &self.shared) {
            Some(Some((session, last))) => Some((session, last)),
            _ => None,
        };
        let restore = || match &removed {
            Some((session, last)) if self.persistence.is_some() => {
                Ok(crate::persist::continuing_after(Arc::clone(session), *last))
            }
            _ => restore_identity(self.persistence.as_deref(), key),
        };
        let held = self.sessions.get_or_create(key, &self.shared, &restore)?;
        Ok(SessionHandle::new(held))
    }

    /// The session's closure if it is resident and closed (see
    /// [`ReplayStore::close_session`]). A session only in the durable log
    /// is not looked up: [`ReplayStore::catch_up`] reports its closure.
    pub fn closure(&self, key: &SessionKey) -> Option<crate::Closure> {
        self.sessions.get(key).and_then(|session| session.closure())
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
}

impl<T> Drop for ReplayStore<T> {
    fn drop(&mut self) {
        // Write what is left (bounded by the shutdown timeout), then stop
        // the persister thread.
        if let Some(persistence) = &self.persistence {
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
