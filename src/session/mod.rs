//! One incarnation of one session (its handles are module `handle`).
//!
//! Also the core's one seam to the durable tier: [`DurableTier`], which
//! the persister implements, and the positions a session knows were lost
//! (`lost`), which the persister records and waits consult. The core never
//! imports the tier.
//!
//! A [`Session`] owns its ring and applies the contract's rules on top of it:
//! it builds events (one allocation per append), turns what the ring reports
//! into the gap table of the contract (section 5), and applies age retention,
//! which the ring does not know about.
//!
//! Invariants kept here:
//! * a session's incarnation never changes. A cursor names the life that
//!   wrote its position: a cursor of this incarnation, or of the life this
//!   one continues (`Identity::previous`, a restore from the durable log) at
//!   or below where that life ended, is served by position arithmetic; one
//!   of the previous life beyond its end gets `Lost` with the count; any
//!   other (with a position > 0) gets `Reset`;
//! * positions continue: a session revived from a tombstone or restored
//!   from the log starts its ring after the last position known, so a
//!   position is never handed out twice under one incarnation;
//! * with a durable log, nothing above the durable watermark is trimmed by
//!   age or watermark (only lapping can take it, and the persister records
//!   that as a hole), and an append marks the session dirty *after* its
//!   publish fence (see [`Session::append`]);
//! * an event is readable only while it is newer than `max_age`; replay and
//!   subscriptions check the age of the first event they return, trims
//!   raise the floor past expired events and free them;
//! * closing and removing seal the ring under the session's `end` lock: the
//!   last position accepted is the first seal's, whichever came first, and
//!   a reader that finds the ring sealed learns under that lock whether it
//!   was closed (and delivers through the closure's last position, then
//!   ends with it) or removed (see [`Session::close`], crate `closure`).

mod lost;

use std::fmt;
use std::sync::Arc as StdArc;

use crate::clock::Clock;
use crate::closure::{CloseReason, Closure};
use crate::config::Config;
use crate::cursor::{Cursor, Incarnation, Revision};
use crate::error::{Gap, GapReason, Refusal};
use crate::event::{Event, Timestamp};
use crate::key::SessionKey;
use crate::links::Links;
use crate::ring::{KeepBudget, LentEvents, Read, Ring, Segment};
use crate::sync::{Arc, AtomicBool, AtomicU64, AtomicUsize};

pub(crate) use self::lost::{Lost, LostPositions};

/// Weighs a payload for [`Refusal::PayloadTooLarge`] (and for the
/// durable tier's budget of undurable events).
pub(crate) type Weigher<T> = crate::ring::Weigh<T>;

/// What every session of a store shares: the bounds, the clock and the
/// store-wide counters.
pub(crate) struct Shared<T> {
    pub(crate) config: Config,
    pub(crate) max_age_nanos: u64,
    pub(crate) clock: StdArc<dyn Clock>,
    pub(crate) payload_limit: Option<(usize, Weigher<T>)>,
    pub(crate) counters: Counters,
    /// The durable tier, if the store has one: what the core tells it.
    pub(crate) durable: Option<StdArc<dyn DurableTier<T>>>,
}

/// The durable tier as the core sees it: the few things a session and the
/// map tell the tier above them. The persister (`crate::persist`)
/// implements it and is the only thing that knows what a log is; the core
/// never imports it, so the layers' imports run one way.
///
/// None of it is on an append's common path: a session calls
/// [`DurableTier::queue_dirty`] only when its own `dirty` flag was clear
/// (once per persister round), the rest on creation, removal and drop.
pub(crate) trait DurableTier<T>: Send + Sync {
    /// `session` was clean and now has events the tier has not written
    /// (its `dirty` flag was just set, after the append's publish fence):
    /// queue it for the next write.
    fn queue_dirty(&self, session: &Arc<Session<T>>);

    /// A session was created; the tier may record its life now.
    fn created(&self, session: &Arc<Session<T>>);

    /// A session was removed (under its shard's lock) with `last` its last
    /// position: its accepted events still go to the log.
    fn removed(&self, session: &Arc<Session<T>>, last: u64);

    /// Whether other nodes write the same log (a tombstone then asks it).
    fn log_is_shared(&self) -> bool;

    /// The store-wide budget for lapped segments not yet written.
    fn keep_budget(&self) -> &StdArc<KeepBudget<T>>;

    /// A fenced session went with `events` accepted events never written.
    fn count_fenced_events(&self, events: u64);
}

/// Store-wide counters of rare events (gaps, lag, eviction). Nothing on the
/// append path touches them: appends are counted per session by the ring's
/// own position counter. Plain `std` atomics, Relaxed: they publish no data.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) gaps_trimmed: AtomicCounter,
    pub(crate) gaps_unavailable: AtomicCounter,
    pub(crate) gaps_reset: AtomicCounter,
    pub(crate) gaps_lost: AtomicCounter,
    pub(crate) lagged_subscribers: AtomicCounter,
    /// Appends of sessions no longer in the map.
    pub(crate) appends_of_gone_sessions: AtomicCounter,
    /// Sessions closed (module `closure`).
    pub(crate) closures: AtomicCounter,
    /// Appends refused because their session was closed: a producer that
    /// missed the end of its own turn.
    pub(crate) refused_after_close: AtomicCounter,
}

impl Counters {
    pub(crate) fn count_gap(&self, reason: GapReason) {
        match reason {
            GapReason::Trimmed => &self.gaps_trimmed,
            GapReason::Unavailable => &self.gaps_unavailable,
            GapReason::Reset => &self.gaps_reset,
            GapReason::Lost => &self.gaps_lost,
        }
        .add(1);
    }
}

/// A statistics counter.
#[derive(Default)]
pub(crate) struct AtomicCounter(std::sync::atomic::AtomicU64);

impl AtomicCounter {
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl<T> Shared<T> {
    #[inline]
    pub(crate) fn now(&self) -> Timestamp {
        self.clock.now()
    }

    #[inline]
    fn is_expired(&self, event: &Event<T>, now: Timestamp) -> bool {
        now.as_nanos().saturating_sub(event.timestamp.as_nanos()) > self.max_age_nanos
    }

    /// The bounds a batch must meet (capacity, payload sizes).
    pub(crate) fn check_batch(&self, payloads: &[T]) -> Result<(), Refusal> {
        let capacity = self.config.capacity;
        if payloads.len() > capacity {
            return Err(Refusal::BatchTooLarge {
                len: payloads.len(),
                capacity,
            });
        }
        payloads
            .iter()
            .try_for_each(|payload| self.check_payload(payload))
    }

    #[inline]
    pub(crate) fn check_payload(&self, payload: &T) -> Result<(), Refusal> {
        match &self.payload_limit {
            Some((max, weigh)) => {
                let size = weigh(payload);
                if size > *max {
                    return Err(Refusal::PayloadTooLarge { size, max: *max });
                }
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// Who a session is: its incarnation, where its ring starts, and the life
/// it continues. Kept by tombstones, so eviction forgets only events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    /// The incarnation this session appends under.
    pub(crate) incarnation: Incarnation,
    /// The last position before the ring's first (0 for a new session).
    pub(crate) start: u64,
    /// The revision of the event at `start`.
    pub(crate) start_revision: Revision,
    /// The life this incarnation continues after a restore from the durable
    /// log, and the last position that life wrote (where this one began).
    pub(crate) previous: Option<(Incarnation, u64)>,
}

impl Identity {
    /// A session seen for the first time.
    pub(crate) fn fresh() -> Self {
        Self {
            incarnation: Incarnation::fresh(),
            start: 0,
            start_revision: Revision::default(),
            previous: None,
        }
    }

    /// The first position this incarnation wrote or will write.
    pub(crate) fn first_own_position(&self) -> u64 {
        self.previous.map_or(1, |(_, end)| end + 1)
    }

    /// The incarnation a cursor at `position` names: the life that wrote it.
    pub(crate) fn incarnation_at(&self, position: u64) -> Incarnation {
        match self.previous {
            Some((previous, _)) if position > 0 && position < self.first_own_position() => previous,
            _ => self.incarnation,
        }
    }
}

/// Where a session that the map did not hold starts: its identity, whether
/// its life must be recorded in the durable log, and the removed
/// incarnation it must wait for, if any.
pub(crate) struct Restored<T> {
    pub(crate) identity: Identity,
    pub(crate) record_life: bool,
    pub(crate) predecessor: Option<Arc<Session<T>>>,
    /// The log holds the session's closure (at `identity.start`): it is
    /// restored closed.
    pub(crate) closed: Option<CloseReason>,
    /// `closed` is not in the log: a turn its store left open is closed
    /// here, and the durable tier writes the closure.
    pub(crate) interrupted: bool,
}

impl<T> Restored<T> {
    /// A session that continues `identity` with nothing to record.
    pub(crate) fn continuing(identity: Identity) -> Self {
        Self {
            identity,
            record_life: false,
            predecessor: None,
            closed: None,
            interrupted: false,
        }
    }

    /// The same, closed with `reason` if that is `Some`.
    pub(crate) fn closed(mut self, reason: Option<CloseReason>) -> Self {
        self.closed = reason;
        self
    }
}

pub(crate) struct Session<T> {
    key: SessionKey,
    identity: Identity,
    /// Creation order in the store, for "newest first" listings.
    created: u64,
    pub(crate) ring: Ring<T>,
    pub(crate) shared: StdArc<Shared<T>>,
    /// Live subscriptions (statistics only).
    pub(crate) subscribers: std::sync::atomic::AtomicUsize,
    /// References to the session outside the map ([`Held`]: handles,
    /// subscriptions, and every transient one a by-key call takes). Eviction
    /// requires 0, read with Acquire against each holder's Release when it
    /// lets go, so the store sees a holder's last appends before it decides
    /// the session is empty. An explicit count, not `Arc::strong_count`, so
    /// that loom sees the protocol's orderings.
    holders: AtomicUsize,
    /// Every position `<= durable` is in the durable log (0 without one).
    pub(crate) durable: AtomicU64,
    /// Set by an append that found it clear, which then queues the session
    /// for the persister; cleared by the persister before it reads.
    pub(crate) dirty: AtomicBool,
    /// This incarnation is not yet recorded as a life in the log.
    pub(crate) life_unrecorded: std::sync::atomic::AtomicBool,
    /// Another writer owns the session in the log: the persister no longer
    /// writes it (see `crate::persist`, invariant 6).
    pub(crate) fenced: std::sync::atomic::AtomicBool,
    /// A removed incarnation of the same key whose last events are still
    /// on their way to the log: this life is recorded only after them
    /// (the persister waits), so the log stays contiguous. Taken (and
    /// dropped) by the persister once it is durable.
    pub(crate) predecessor: crate::sync::Mutex<Option<Arc<Session<T>>>>,
    /// Positions of this session the persister wrote as holes: no tier
    /// holds them, so no wait may report them durable.
    pub(crate) lost: crate::sync::Mutex<LostPositions>,
    /// How the ring was sealed (closed, removed), under one lock; see
    /// [`Session::close`].
    end: crate::sync::Mutex<End>,
}

/// How a session's ring was sealed. Closing and removing both seal it;
/// they take this lock to do so, which gives them one answer for the last
/// position (the ring's position counter keeps counting refused claims
/// after a seal) and lets a reader that finds the ring sealed tell which
/// it was (see [`Session::close`]).
#[derive(Debug, Default)]
pub(crate) struct End {
    /// Set by the first close; never changes after.
    pub(crate) closure: Option<Closure>,
    /// The session was removed from the store.
    pub(crate) removed: bool,
    /// The closure is in the durable log (set by the persister, or at a
    /// restore that found it there).
    pub(crate) closure_in_log: bool,
    /// Removed after it closed, a re-creation continues after it (its new
    /// life reopens the key in the log).
    pub(crate) succeeded: bool,
    /// Removed after it closed, the persister recorded the life that
    /// reopens the key in the log (no re-creation did).
    pub(crate) reopened: bool,
    /// Whether a [`Turn`](crate::Turn) drives the session, and where its
    /// mark is (persister invariant 11).
    pub(crate) turn: TurnMark,
}

/// A session's open turn, as the durable tier knows it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TurnMark {
    /// No turn.
    #[default]
    None,
    /// A turn drives the session; the log does not know yet.
    ToWrite,
    /// The log holds the mark (until a closure or a new life clears it).
    InLog,
    /// Never to be written: the session was removed before it handed out
    /// a position of its own, and its life is never recorded.
    Dropped,
}

/// What ends a reader: a gap, or the session's closure once everything
/// through its last position was delivered.
#[derive(Debug)]
pub(crate) enum Ending {
    Gap(Gap),
    Closed(Closure),
}

/// How a read after a cursor starts, once the cursor is checked.
pub(crate) enum Resume {
    /// Nothing after the cursor yet.
    AtTail,
    /// Events after the cursor up to `tail`; the first one had not aged
    /// out when it was checked.
    From { tail: u64 },
}

impl<T> Session<T> {
    /// A session with `identity`, whose positions up to `identity.start`
    /// are all durable already (`durable_through`), and whose life must be
    /// recorded in the log if `record_life`.
    pub(crate) fn new(
        key: SessionKey,
        restored: Restored<T>,
        created: u64,
        shared: StdArc<Shared<T>>,
    ) -> Self {
        let Restored {
            identity,
            record_life,
            predecessor,
            closed,
            interrupted,
        } = restored;
        let session = Self {
            key,
            created,
            ring: Ring::continuing(
                shared.config.capacity,
                identity.start,
                identity.start_revision,
                shared.durable.as_ref().map(|durable| {
                    Box::new(crate::ring::Kept::new(
                        StdArc::clone(durable.keep_budget()),
                        identity.start,
                    ))
                }),
            ),
            identity,
            shared,
            subscribers: std::sync::atomic::AtomicUsize::new(0),
            holders: AtomicUsize::new(0),
            durable: AtomicU64::new(identity.start),
            dirty: AtomicBool::new(false),
            life_unrecorded: std::sync::atomic::AtomicBool::new(record_life),
            fenced: std::sync::atomic::AtomicBool::new(false),
            predecessor: crate::sync::Mutex::new(predecessor),
            lost: crate::sync::Mutex::new(Default::default()),
            end: crate::sync::Mutex::new(End::default()),
        };
        if let Some(reason) = closed {
            // Restored from a log that holds the closure (or a turn whose
            // store is gone): sealed before anyone can claim, at the
            // durable tail it was restored at.
            let last = session.ring.seal();
            let mut end = session.end.lock().unwrap_or_else(|e| e.into_inner());
            end.closure = Some(Closure { reason, last });
            end.closure_in_log = !interrupted;
        }
        session
    }

    pub(crate) fn identity(&self) -> Identity {
        self.identity
    }

    /// A new holder; see [`Held`].
    fn hold(&self) {
        // Relaxed: a new holder is made under the map's lock (which orders
        // it before any eviction that could see it) or from another holder;
        // only letting go needs ordering.
        self.holders
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// A holder lets go, after its last append.
    fn let_go(&self) {
        // Release: pairs with the Acquire in `is_evictable`, so our appends
        // are visible to the store that sees us gone.
        self.holders
            .fetch_sub(1, std::sync::atomic::Ordering::Release);
    }

    /// The durable watermark: every position `<=` it is in the log (as an
    /// event, or as a hole the log records as lost). A session that
    /// continues a removed one still on its way to the log reports that
    /// one's watermark until it is through: its own starts where the
    /// removed one ended, which is not durable yet.
    pub(crate) fn durable(&self) -> u64 {
        // Acquire, paired with the persister's Release stores: whoever sees
        // the watermark (a release, a trim) is ordered after the commit
        // that raised it, so a log read it then makes sees those records
        // even on a log that publishes commits by Release/Acquire alone
        // (loom model T5w fails with Relaxed here).
        let own = self.durable.load(std::sync::atomic::Ordering::Acquire);
        if own == self.identity.start && self.identity.previous.is_some() {
            let predecessor = self.predecessor.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(old) = predecessor.as_ref() {
                return own.min(old.durable());
            }
        }
        own
    }

    /// Whether this session's removed predecessor was fenced: its
    /// positions before this life's start will never be written, and this
    /// life does not wait for them (persister invariant 6).
    pub(crate) fn predecessor_is_fenced(&self) -> bool {
        self.predecessor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|old| old.fenced.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// The persister's own watermark: where its next write starts.
    pub(crate) fn written(&self) -> u64 {
        // Relaxed: the persister is the only writer of the watermark.
        self.durable.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How far age and watermark trims may go: with a durable log, never
    /// past what is durable (the ring is the only copy of the rest).
    /// A fenced session's ring is no longer written to the log (another
    /// writer has the session): it is trimmed like a memory-only one.
    fn trim_limit(&self) -> u64 {
        let fenced = self.fenced.load(std::sync::atomic::Ordering::Relaxed);
        if self.shared.durable.is_some() && !fenced {
            self.durable()
        } else {
            u64::MAX
        }
    }

    /// After a publish (or when the persister must come back to it): queue
    /// the session for the durable tier unless it is queued already.
    #[inline]
    pub(crate) fn mark_dirty(this: &Arc<Self>) {
        if let Some(durable) = &this.shared.durable {
            // Relaxed: ordered after the publish by the doorbell's SeqCst
            // fence (`crate::persist`'s protocol); already set is the
            // common case, one load.
            if !this.dirty.load(std::sync::atomic::Ordering::Relaxed)
                && !this.dirty.swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                durable.queue_dirty(this);
            }
        }
    }

    pub(crate) fn key(&self) -> &SessionKey {
        &self.key
    }

    pub(crate) fn incarnation(&self) -> Incarnation {
        self.identity.incarnation
    }

    pub(crate) fn created(&self) -> u64 {
        self.created
    }

    fn build(
        &self,
        position: u64,
        revision: Revision,
        timestamp: Timestamp,
        links: Option<Box<Links>>,
        payload: T,
    ) -> Arc<Event<T>> {
        Arc::new(Event {
            key: self.key.clone(),
            incarnation: self.identity.incarnation,
            revision,
            position,
            timestamp,
            links,
            payload,
        })
    }

    /// Appends one event.
    ///
    /// With a durable log, the session is marked dirty *after* the publish:
    /// `Ring::publish` ends with the doorbell's SeqCst fence, which also
    /// orders our publish before the `dirty` load against the persister's
    /// clear-fence-read (see `crate::persist`): either the persister's read
    /// sees this event, or this load sees the flag cleared and queues the
    /// session again.
    #[inline]
    pub(crate) fn append(
        this: &Arc<Self>,
        revision: Revision,
        payload: T,
    ) -> Result<Arc<Event<T>>, Refusal> {
        Self::append_with(this, revision, payload, None)
    }

    /// Appends one event carrying `links` (already checked for shape).
    #[inline]
    pub(crate) fn append_with(
        this: &Arc<Self>,
        revision: Revision,
        payload: T,
        links: Option<Box<Links>>,
    ) -> Result<Arc<Event<T>>, Refusal> {
        let event = this.claim_and_build(revision, payload, links)?;
        this.ring.publish(&event);
        Self::mark_dirty(this);
        Ok(event)
    }

    /// [`Session::append`] for a [`SessionWriter`](crate::SessionWriter):
    /// through the writer's cached segment, the event given up to the ring.
    /// Returns its position.
    #[inline]
    pub(crate) fn append_through(
        this: &Arc<Self>,
        revision: Revision,
        payload: T,
        cached: &mut Option<Arc<Segment<T>>>,
    ) -> Result<u64, Refusal> {
        let event = this.claim_and_build(revision, payload, None)?;
        let position = event.position;
        this.ring.publish_through(event, cached);
        Self::mark_dirty(this);
        Ok(position)
    }

    /// Checks the payload, reads the clock, claims one position and builds
    /// its event.
    #[inline]
    fn claim_and_build(
        &self,
        revision: Revision,
        payload: T,
        links: Option<Box<Links>>,
    ) -> Result<Arc<Event<T>>, Refusal> {
        self.shared.check_payload(&payload)?;
        let timestamp = self.shared.now();
        let Some(position) = self.ring.claim(1) else {
            return Err(self.sealed_refusal());
        };
        Ok(self.build(position, revision, timestamp, links, payload))
    }

    pub(crate) fn append_batch(
        this: &Arc<Self>,
        revision: Revision,
        payloads: Vec<T>,
    ) -> Result<Vec<Arc<Event<T>>>, Refusal> {
        if payloads.is_empty() {
            return Ok(Vec::new());
        }
        this.shared.check_batch(&payloads)?;
        let timestamp = this.shared.now();
        let Some(first) = this.ring.claim(payloads.len() as u64) else {
            return Err(this.sealed_refusal());
        };
        let events: Vec<_> = payloads
            .into_iter()
            .zip(first..)
            .map(|(payload, position)| this.build(position, revision, timestamp, None, payload))
            .collect();
        this.ring.publish_batch(&events);
        Self::mark_dirty(this);
        Ok(events)
    }

    /// Why a claim was refused: the ring is sealed, by a close or a removal.
    #[cold]
    fn sealed_refusal(&self) -> Refusal {
        match self.closure() {
            Some(closure) => {
                self.shared.counters.refused_after_close.add(1);
                Refusal::SessionClosed { closure }
            }
            None => Refusal::SessionRemoved,
        }
    }

    fn lock_end(&self) -> crate::sync::MutexGuard<'_, End> {
        self.end.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session's closure, if it was closed.
    pub(crate) fn closure(&self) -> Option<Closure> {
        self.lock_end().closure
    }

    /// Closes the session (module `closure`): seals the ring at the last
    /// position claimed, records why, wakes every reader and tells the
    /// durable tier. The first close wins; a later one returns it. A
    /// removed session cannot be closed.
    ///
    /// The seal happens *under* the `end` lock, with the closure stored
    /// before the lock is let go. A reader that finds the ring sealed then
    /// takes the lock (`closure`), and must see the closure if a close
    /// sealed it: had its lock come first, its earlier look at the ring
    /// would have happened before the seal, and could not have seen it
    /// (loom model `close_vs_append_and_reader`, mutation
    /// `close-seals-outside-lock`).
    pub(crate) fn close(this: &Arc<Self>, reason: CloseReason) -> Result<Closure, Refusal> {
        let mut end = this.lock_end();
        if let Some(closure) = end.closure {
            return Ok(closure);
        }
        if end.removed || this.ring.is_closed() {
            // Removed, or its store is gone (`ReplayStore`'s drop seals
            // every ring).
            return Err(Refusal::SessionRemoved);
        }
        let closure = Closure {
            reason,
            last: this.ring.seal(),
        };
        end.closure = Some(closure);
        drop(end);
        this.shared.counters.closures.add(1);
        this.ring.wake_closed();
        // The persister writes the closure once `last` is durable: queue
        // the session. The `end` lock orders this against the persister,
        // which clears `dirty` before it takes that lock to look.
        Self::mark_dirty(this);
        Ok(closure)
    }

    /// Seals the ring for a removal (under the map's shard lock) and
    /// returns the last position the session accepted: the closure's, if
    /// it was closed first (the counter has counted refused claims since).
    pub(crate) fn seal_removed(&self) -> u64 {
        let mut end = self.lock_end();
        end.removed = true;
        match end.closure {
            Some(closure) => closure.last,
            None => self.ring.seal(),
        }
    }

    /// Whether the session was removed from its store.
    pub(crate) fn is_removed(&self) -> bool {
        self.lock_end().removed
    }

    /// The closure the persister must still write: closed, not yet in the
    /// log. The persister marks it written with [`Session::closure_written`].
    pub(crate) fn closure_to_write(&self) -> Option<Closure> {
        let end = self.lock_end();
        end.closure.filter(|_| !end.closure_in_log)
    }

    /// The persister committed the closure, or let it go with the life it
    /// closed (removed before it wrote anything, and succeeded by a
    /// re-creation whose life reopens the key): nothing of it is left to
    /// write.
    pub(crate) fn closure_written(&self) {
        self.lock_end().closure_in_log = true;
    }

    /// Whether the log must still be told this session was removed: its
    /// closure, or its open turn, is in the log (the one would restore the
    /// key closed, the other interrupted: persister invariant 11), and
    /// neither a re-creation nor the persister has recorded the life that
    /// reopens it (module `closure`: removal reopens the key).
    pub(crate) fn needs_reopen(&self) -> bool {
        let end = self.lock_end();
        end.removed
            && (end.closure.is_some() || end.turn == TurnMark::InLog)
            && !end.succeeded
            && !end.reopened
    }

    /// A [`Turn`](crate::Turn) now drives the session: the durable tier
    /// records the open turn (persister invariant 11), so that a store
    /// restored after this one is gone closes it `Interrupted`. Nothing to
    /// record for a closed or removed session, or a second turn.
    pub(crate) fn open_turn(this: &Arc<Self>) {
        let mut end = this.lock_end();
        if end.turn != TurnMark::None || end.closure.is_some() || end.removed {
            return;
        }
        end.turn = TurnMark::ToWrite;
        drop(end);
        // As in `close`: the `end` lock orders this against the persister,
        // which clears `dirty` before it takes that lock to look.
        Self::mark_dirty(this);
    }

    /// Whether the persister must still record the open turn: a turn
    /// drives the session, not yet in the log, and it is not closed (a
    /// closure ends the turn, and the mark must never follow it). Removed,
    /// it is written only if a round read it before the removal; a removed
    /// session with nothing left to write drops it instead (its key is
    /// open again). A successor's life waits until it is one or the other.
    pub(crate) fn turn_to_write(&self) -> bool {
        let end = self.lock_end();
        end.turn == TurnMark::ToWrite && end.closure.is_none()
    }

    /// [`Session::closure_to_write`] and [`Session::turn_to_write`], read
    /// under one take of the lock (the persister's collect).
    pub(crate) fn end_to_write(&self) -> (Option<Closure>, bool) {
        let end = self.lock_end();
        let closure = end.closure.filter(|_| !end.closure_in_log);
        let turn = end.turn == TurnMark::ToWrite && end.closure.is_none();
        (closure, turn)
    }

    /// The persister recorded the open turn (`in_log`), or will never
    /// record it (its life is never recorded).
    pub(crate) fn turn_settled(&self, in_log: bool) {
        let mut end = self.lock_end();
        if end.turn == TurnMark::ToWrite {
            end.turn = if in_log {
                TurnMark::InLog
            } else {
                TurnMark::Dropped
            };
        }
    }

    /// Whether a turn ever drove the session.
    pub(crate) fn has_turn(&self) -> bool {
        self.lock_end().turn != TurnMark::None
    }

    /// A re-creation continues after this removed session: its own new
    /// life reopens the key.
    pub(crate) fn succeeded(&self) {
        self.lock_end().succeeded = true;
    }

    /// The persister recorded the life that reopens the key.
    pub(crate) fn reopened(&self) {
        self.lock_end().reopened = true;
    }

    /// The last position the session accepted and will ever deliver, if
    /// it is closed; otherwise every position claimed so far.
    pub(crate) fn last_claimed(&self) -> u64 {
        if self.ring.is_closed() {
            if let Some(closure) = self.closure() {
                return closure.last;
            }
        }
        self.ring.claimed()
    }

    /// The cursor at the published tail.
    pub(crate) fn current_cursor(&self) -> Cursor {
        let tail = self.ring.published_tail();
        self.cursor_at(tail)
    }

    /// The cursor at `position`: it names the life that wrote the position.
    pub(crate) fn cursor_at(&self, position: u64) -> Cursor {
        Cursor::new(
            self.key.clone(),
            Some(self.identity.incarnation_at(position)),
            self.ring.revision_at(position),
            position,
        )
    }

    fn gap(&self, reason: GapReason, requested: &Cursor, missed: Option<u64>) -> Gap {
        self.shared.counters.count_gap(reason);
        Gap {
            reason,
            requested: requested.clone(),
            latest: self.current_cursor(),
            missed,
        }
    }

    /// Checks `cursor` (already scoped to this session's key) against the
    /// gap table and finds the first event after it.
    pub(crate) fn resume(&self, cursor: &Cursor) -> Result<Resume, Gap> {
        let after = cursor.position();
        if after > 0 {
            match cursor.incarnation() {
                Some(i) if i == self.identity.incarnation => {}
                Some(i) => match self.identity.previous {
                    Some((previous, end)) if i == previous => {
                        if after > end {
                            return Err(self.gap(GapReason::Lost, cursor, Some(after - end)));
                        }
                    }
                    _ => return Err(self.gap(GapReason::Reset, cursor, None)),
                },
                None => {}
            }
        }
        self.resume_at(cursor)
    }

    /// [`Session::resume`] by position alone (the cursor's life is known to
    /// lead to this session's positions).
    pub(crate) fn resume_at(&self, cursor: &Cursor) -> Result<Resume, Gap> {
        let after = cursor.position();
        let tail = self.ring.published_tail();
        if after > tail {
            return Err(self.gap(GapReason::Unavailable, cursor, None));
        }
        if after == tail {
            return Ok(Resume::AtTail);
        }
        let now = self.shared.now();
        // The first event is only looked at, not counted, so that a
        // lending replay writes nothing to the events it reads.
        let first_is_live = tail - after <= self.ring.capacity()
            && self
                .ring
                .with_event(after + 1, |first| !self.shared.is_expired(first, now))
                .unwrap_or(false);
        if first_is_live {
            return Ok(Resume::From { tail });
        }
        let missed = self
            .first_retained(after + 1, tail, now)
            .saturating_sub(after + 1);
        Err(self.gap(GapReason::Trimmed, cursor, Some(missed)))
    }

    /// The oldest position `>= from` still readable (`tail + 1` if none
    /// is). Starting at `from` keeps "missed" counts honest when a later
    /// event carries an older timestamp (several writers, a clock stepping
    /// back): the count never goes below zero.
    fn first_retained(&self, from: u64, tail: u64, now: Timestamp) -> u64 {
        let window_start = (tail.saturating_sub(self.ring.capacity()) + 1)
            .max(self.ring.floor() + 1)
            .max(from);
        (window_start..=tail)
            .find(|&position| match self.ring.read(position) {
                Read::Event(event) => !self.shared.is_expired(&event, now),
                _ => false,
            })
            .unwrap_or(tail + 1)
    }

    /// Every event after `cursor`, or the gap that prevents it.
    pub(crate) fn replay_after(&self, cursor: &Cursor) -> Result<Vec<Arc<Event<T>>>, Gap> {
        let tail = match self.resume(cursor)? {
            Resume::AtTail => return Ok(Vec::new()),
            Resume::From { tail } => tail,
        };
        let from = cursor.position() + 1;
        let mut events = Vec::with_capacity((tail - from + 1) as usize);
        match self.ring.read_range(from, tail, &mut events) {
            Ok(()) => Ok(events),
            Err(_) => Err(self.trimmed_while_read(cursor, tail)),
        }
    }

    /// [`Session::replay_after`], lending the events to `lend` in place
    /// (see `ring::lend`): the same events and the same gaps, and `lend`
    /// runs only if there is no gap.
    pub(crate) fn lend_after<R>(
        &self,
        cursor: &Cursor,
        lend: impl FnOnce(LentEvents<'_, T>) -> R,
    ) -> Result<R, Gap> {
        let tail = match self.resume(cursor)? {
            Resume::AtTail => return Ok(lend(LentEvents::empty())),
            Resume::From { tail } => tail,
        };
        self.ring
            .lend_range(cursor.position() + 1, tail, lend)
            .map_err(|_| self.trimmed_while_read(cursor, tail))
    }

    /// The gap of a replay whose run was trimmed while it read: the run
    /// from the cursor can no longer be served whole.
    fn trimmed_while_read(&self, cursor: &Cursor, tail: u64) -> Gap {
        let from = cursor.position() + 1;
        let missed = self
            .first_retained(from, tail, self.shared.now())
            .saturating_sub(from);
        self.gap(GapReason::Trimmed, cursor, Some(missed))
    }

    /// Reads position `next` for a subscription: the event, nothing yet, or
    /// the gap that ends the subscription.
    /// `counted`: whether a lag gap counts in the statistics (catch-up
    /// falls back to the log instead, so its lag is no gap).
    pub(crate) fn read_next(
        &self,
        next: u64,
        last_seen: &Cursor,
        counted: bool,
    ) -> Result<Option<Arc<Event<T>>>, Ending> {
        match self.ring.read(next) {
            Read::Event(event) => {
                let now = self.shared.now();
                if self.shared.is_expired(&event, now) {
                    return Err(Ending::Gap(self.lag_gap(next, last_seen, now, counted)));
                }
                Ok(Some(event))
            }
            Read::Pending if self.ring.is_closed() => match self.closure() {
                // Claimed before the close and still being published: its
                // writer rings the doorbell when it is.
                Some(closure) if next <= closure.last => Ok(None),
                Some(closure) => Err(Ending::Closed(closure)),
                None => {
                    // A catch-up's subscription (`counted` false) leaves the
                    // counting to the catch-up, which reports the gap itself.
                    if counted {
                        self.shared.counters.count_gap(GapReason::Reset);
                    }
                    Err(Ending::Gap(Gap {
                        reason: GapReason::Reset,
                        requested: last_seen.clone(),
                        latest: Cursor::start(self.key.clone()),
                        missed: None,
                    }))
                }
            },
            Read::Pending => Ok(None),
            Read::Trimmed => Err(Ending::Gap(self.lag_gap(
                next,
                last_seen,
                self.shared.now(),
                counted,
            ))),
        }
    }

    /// The gap of a subscriber whose next position left the window.
    fn lag_gap(&self, next: u64, last_seen: &Cursor, now: Timestamp, counted: bool) -> Gap {
        let tail = self.ring.published_tail();
        let missed = self.first_retained(next, tail, now).saturating_sub(next);
        if !counted {
            return Gap {
                reason: GapReason::Trimmed,
                requested: last_seen.clone(),
                latest: self.current_cursor(),
                missed: Some(missed),
            };
        }
        self.shared.counters.lagged_subscribers.add(1);
        self.gap(GapReason::Trimmed, last_seen, Some(missed))
    }

    /// How many positions after `after` the ring can no longer serve.
    pub(crate) fn missed_after(&self, after: u64) -> u64 {
        let tail = self.ring.published_tail();
        self.first_retained(after + 1, tail, self.shared.now())
            .saturating_sub(after + 1)
    }

    /// Whether the ring can serve everything after `after` now: it is the
    /// tail, or the next event is retained. Counts nothing.
    pub(crate) fn serves_after(&self, after: u64) -> bool {
        let tail = self.ring.published_tail();
        if after == tail {
            return true;
        }
        if after > tail || tail - after > self.ring.capacity() {
            return false;
        }
        match self.ring.read(after + 1) {
            Read::Event(first) => !self.shared.is_expired(&first, self.shared.now()),
            _ => false,
        }
    }

    /// Applies age retention now: raises the floor past expired events and
    /// frees them. Returns how many events it freed.
    pub(crate) fn trim(&self, now: Timestamp) -> usize {
        let tail = self.ring.published_tail();
        let start = (tail.saturating_sub(self.ring.capacity()) + 1).max(self.ring.floor() + 1);
        let mut expired_through = 0;
        for position in start..=tail {
            match self.ring.read(position) {
                Read::Event(event) if self.shared.is_expired(&event, now) => {
                    expired_through = position
                }
                Read::Trimmed => expired_through = position,
                _ => break,
            }
        }
        let expired_through = expired_through.min(self.trim_limit());
        if expired_through <= self.ring.floor() {
            return 0;
        }
        self.ring.raise_floor(expired_through, 0)
    }

    /// `release_through` of the contract: trims every position `<= watermark`.
    /// Returns how many readable events it trimmed (expired ones were
    /// already unreadable).
    pub(crate) fn release_through(&self, watermark: u64) -> usize {
        let tail = self.ring.published_tail();
        let first_readable = self.first_retained(1, tail, self.shared.now());
        self.ring
            .raise_floor(watermark.min(self.trim_limit()), first_readable - 1)
    }

    pub(crate) fn latest_position(&self) -> Option<u64> {
        Some(self.ring.published_tail()).filter(|&tail| tail > 0)
    }

    /// Events readable now.
    pub(crate) fn retained(&self, now: Timestamp) -> u64 {
        let tail = self.ring.published_tail();
        tail + 1 - self.first_retained(1, tail, now)
    }

    /// Whether the store may evict this session: nobody but the map holds
    /// it and it retains no event. Call with the map's shard lock held, so
    /// no by-key operation can take a new reference meanwhile.
    pub(crate) fn is_evictable(this: &Arc<Self>, now: Timestamp) -> bool {
        // Acquire: pairs with the Release of the last holder's `let_go`,
        // which came after its last append: those appends are visible to
        // the checks below.
        if this.holders.load(std::sync::atomic::Ordering::Acquire) != 0 {
            return false;
        }
        this.trim(now);
        let tail = this.ring.published_tail();
        // With a log: everything durable, and the life recorded (a tombstone
        // revives a session as a life the log already knows); or fenced,
        // when another writer has the session and nothing more of this life
        // will be written (its loss is counted; over a shared log a revival
        // asks the log, so the tombstone is never revived over the writer).
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        let settled = this.shared.durable.is_none()
            || this.fenced.load(relaxed)
            || (this.durable() >= tail
                && !this.life_unrecorded.load(relaxed)
                && this.closure_to_write().is_none());
        tail == this.last_claimed() && this.ring.floor() >= tail && settled
    }
}

impl<T> Drop for Session<T> {
    /// A fenced session's accepted events that were never written are lost
    /// to this node: counted once, when the session is gone (while it is
    /// resident they show in `undurable_events`).
    fn drop(&mut self) {
        if let Some(durable) = &self.shared.durable {
            if self.fenced.load(std::sync::atomic::Ordering::Relaxed) {
                let lost = self.ring.published_tail().saturating_sub(self.written());
                durable.count_fenced_events(lost);
            }
        }
    }
}

impl<T> fmt::Debug for Session<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("key", &self.key)
            .field("incarnation", &self.identity.incarnation)
            .field("published", &self.ring.published_tail())
            .finish_non_exhaustive()
    }
}

/// A reference to a resident session that keeps it from eviction: the
/// only way a session leaves the map's lock. Made under that lock (or from
/// another `Held`), it counts itself in the session's holders and lets go
/// when dropped.
pub(crate) struct Held<T>(Arc<Session<T>>);

impl<T> Held<T> {
    /// Holds `session`; call with the map's shard lock held.
    pub(crate) fn new(session: &Arc<Session<T>>) -> Self {
        session.hold();
        Self(Arc::clone(session))
    }
}

impl<T> Clone for Held<T> {
    fn clone(&self) -> Self {
        Self::new(&self.0)
    }
}

impl<T> std::ops::Deref for Held<T> {
    type Target = Arc<Session<T>>;

    fn deref(&self) -> &Arc<Session<T>> {
        &self.0
    }
}

impl<T> Drop for Held<T> {
    fn drop(&mut self) {
        self.0.let_go();
    }
}
