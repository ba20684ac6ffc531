//! The store's calls that reach beyond memory: catch-up from any cursor,
//! durable watermarks and waits, archiving, and a persister round driven by
//! the host. The ring's own calls (in `super`) stay memory-only.

use std::fmt;
use std::sync::Arc as StdArc;
use std::time::{Duration, Instant};

use thiserror::Error as ThisError;

use crate::catchup::CatchUp;
use crate::cursor::Cursor;
use crate::durable::{DurableLog, LogError};
use crate::error::Error;
#[cfg(feature = "axum")]
use crate::error::GapReason;
use crate::event::Event;
use crate::key::SessionKey;
#[cfg(feature = "dag")]
use crate::links::EventRef;
use crate::map::Found;
#[cfg(feature = "dag")]
use crate::ring::Read;
use crate::sync::Arc;

use super::ReplayStore;

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
    /// The store has no durable log; build it with [`StoreBuilder::durable`](crate::StoreBuilder::durable).
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
            self.persistence.clone(),
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
        let Some(persistence) = &self.persistence else {
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
            .filter_map(|record| {
                crate::catchup::decode_record(self.persistence.as_deref(), key, record)
            })
            .collect())
    }

    /// The session's durable watermark: every position at or below it is
    /// settled in the log, as an event or recorded as lost (a hole;
    /// [`wait_durable`](Self::wait_durable) tells them apart). `None` without a durable log or for a session neither
    /// memory nor the log knows. Reads the log for sessions not in memory.
    pub fn durable_position(&self, key: &SessionKey) -> Result<Option<u64>, DurableError> {
        let Some(persistence) = &self.persistence else {
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
        let Some(persistence) = &self.persistence else {
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
                (Some(held), _) => Some((&***held, held.last_claimed())),
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
        let persistence = self.persistence.as_ref()?;
        // The common case, asked for every event a durable-only stream
        // sends: this store never wrote a hole (nor adopted a commit whose
        // reply was lost, which may have written one), so no session of
        // it can hold one. Two loads, no lookup. (Relaxed counters, but
        // each is raised before the Release store of the watermark that
        // made the caller find the event durable, which it read with
        // Acquire: a hole under that watermark is counted here.)
        let counters = &persistence.counters;
        if counters.holes.get() == 0 && counters.recovered_replies.get() == 0 {
            return None;
        }
        let session = self.sessions.get(key)?;
        let lost = persistence.lost_at(key, Some(&**session), position);
        // A log that cannot answer (only for positions older than what the
        // session tracks): the event came from the ring, so send it.
        let through = lost.ok().flatten().map(|(_, through)| through)?;
        self.shared.counters.count_gap(GapReason::Lost);
        Some(through)
    }

    /// Whether `key`'s resident session is fenced: another writer took its
    /// position in the shared log, so its unwritten events never will be
    /// (persist invariant 6). A waiter for one of them stops waiting.
    #[cfg(feature = "durable-streams")]
    pub(crate) fn is_fenced(&self, key: &SessionKey) -> bool {
        // Relaxed: the persister sets it before it notifies progress, and
        // a waiter that misses it waits out its own deadline.
        self.sessions
            .get(key)
            .is_some_and(|session| session.fenced.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// A future that resolves after the persister's next commit (at once
    /// without a durable log), for async callers that wait for a position
    /// to become durable: check [`durable_position`](Self::durable_position),
    /// take this, check again, then await it. It wakes the persister so the
    /// commit comes soon. Runtime-agnostic.
    pub fn durable_progress(&self) -> DurableProgress {
        DurableProgress(self.persistence.as_ref().map(|persistence| {
            let listener = persistence.listen();
            persistence.nudge();
            listener
        }))
    }

    /// Wakes the persister now (a no-op without one): for a caller that
    /// waits for durability by other means than
    /// [`durable_progress`](Self::durable_progress), which does this too.
    pub(crate) fn nudge_persister(&self) {
        if let Some(persistence) = &self.persistence {
            persistence.nudge();
        }
    }

    /// Archives every position `<= watermark` of the session in the durable
    /// log (seed `archive_before`) and releases it from the ring. Monotonic;
    /// clamped to what is durable. Returns how many events the log archived.
    pub fn archive_before(&self, key: &SessionKey, watermark: u64) -> Result<u64, DurableError> {
        let Some(persistence) = &self.persistence else {
            return Err(DurableError::NoDurableTier);
        };
        let archived = persistence.log.archive_before(key, watermark)?;
        self.release_through(key, watermark);
        Ok(archived)
    }

    /// Runs one persister round on the calling thread, for a store built
    /// with [`DurableOptions::with_persister_thread`](crate::DurableOptions::with_persister_thread)`(false)`: a
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
        let persistence = self.persistence.as_ref()?;
        if persistence.has_thread() {
            return None;
        }
        persistence.retry_reads();
        persistence.round()
    }

    /// The durable log, if the store has one.
    pub fn durable_log(&self) -> Option<&StdArc<dyn DurableLog>> {
        self.persistence.as_ref().map(|p| &p.log)
    }

    /// This store's id in its durable log (random, new for every store):
    /// the owner its open turns' marks name
    /// ([`SessionMeta::open_turn`](crate::durable::SessionMeta::open_turn))
    /// and whose lease it holds over a shared log
    /// ([`DurableLog::keep_alive`]). `None` without a log.
    pub fn store_id(&self) -> Option<u64> {
        self.persistence.as_ref().map(|p| p.store_id)
    }
}
