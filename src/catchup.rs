//! Catch-up: any cursor ever issued, served from the durable log, then the
//! ring, then live — each event exactly once, in order, with no seam.
//!
//! # Algorithm
//!
//! A catch-up keeps one number, the position `c` of the last event it
//! delivered, and repeats one step:
//!
//! 1. if the session's ring can serve everything after `c` (its tail is
//!    `c`, or event `c + 1` is retained), it hands over to an ordinary ring
//!    subscription after `c` — the same position arithmetic, so there is no
//!    seam;
//! 2. otherwise it reads a batch of records after `c` from the log and
//!    delivers their events, advancing `c`;
//! 3. if neither holds `c + 1` yet (the ring lapped it and the persister
//!    has not reached it), it waits for the persister's next commit, which
//!    writes `c + 1` as an event or as a recorded hole.
//!
//! A ring subscription that falls behind (the ring laps it) is not a gap
//! here: the catch-up returns to step 2 from its `c`. Because the ring only
//! drops what is durable or what it laps (and the persister records every
//! lapped position as a hole), one of the steps always makes progress, and
//! every event is read from exactly one place.
//!
//! # Gaps
//!
//! Only positions that no tier holds end a catch-up, with the count:
//! archived on purpose (`archive_before`: [`GapReason::Trimmed`]) or lost
//! ([`GapReason::Lost`]: a recorded hole, or a cursor beyond the durable
//! end of its life after a crash). A cursor of an incarnation that no tier
//! knows gets [`GapReason::Reset`]; one beyond a live session's tail
//! [`GapReason::Unavailable`].
//!
//! # Several nodes, one shared log
//!
//! On a node that does not write the session (a host serving another
//! node's sessions from Redis), a catch-up never restores the session: it
//! reads the log, and waits for the writer's records through the log's
//! [`LogWatch`](crate::durable::LogWatch) (one tailer thread per store,
//! `crate::tail`). With a shared log ([`is_shared`](crate::durable::DurableLog::is_shared)),
//! a cursor beyond the durable end of the session's *newest* life is not a
//! loss: its writer may be alive and not have shipped it yet, so the
//! catch-up waits for it. If a newer life appears instead (the writer
//! restarted), the positions the reader saw diverge from the log's, and
//! the catch-up ends with `Lost` and the count: a record of another life
//! must begin that life exactly, or the reader's history is not the log's.
//!
//! Reading the log is synchronous I/O (a local redb read of at most
//! [`LOG_BATCH`] records per step), also inside `Stream::poll_next`.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc as StdArc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use event_listener::EventListener;
use futures_core::Stream;

use crate::closure::Closure;
use crate::cursor::{Cursor, Incarnation, Revision};
use crate::durable::{LogError, LogRecord, RecordBody, SessionMeta};
use crate::error::{Gap, GapReason, NextTimeoutError, TryNextError};
use crate::event::{Event, Timestamp};
use crate::key::SessionKey;
use crate::map::{Found, SessionMap};
use crate::persist::Persistence;
use crate::session::{Identity, Shared};
use crate::subscription::Subscription;
use crate::sync::{self, Arc};

/// The most records read from the log in one step.
pub const LOG_BATCH: usize = 512;

/// Records a catch-up's first log step reads. Each full step after reads
/// twice as many, up to [`LOG_BATCH`] and about [`LOG_BATCH_BYTES`]: a
/// reader that stops after a record or two (a Durable Streams response full
/// at its byte budget, a new catch-up for each) loads what it delivers, and
/// one that reads on is at `LOG_BATCH` a step after ten. The count grows
/// by doubling rather than jumping to what the last records' size allows:
/// those may say nothing of the next (a stream's small `Created` record
/// before 1 MiB messages), and doubling keeps what a reader loads within
/// about twice what it delivers, whatever the sizes. Reading
/// `LOG_BATCH` at once made a 100 MiB catch-up of 1 MiB records that the
/// server had released from memory load up to 100 MiB per 1 MiB response.
const FIRST_LOG_BATCH: usize = 1;

/// About the most payload bytes one log step reads once the records' size
/// is known (a step reads at least one record).
const LOG_BATCH_BYTES: usize = 4 << 20;

/// The longest a waiting catch-up sleeps before it looks again, in case the
/// ring became able to serve it without a commit to announce it.
const MAX_WAIT_SLICE: Duration = Duration::from_millis(50);

/// Every event after a cursor: from the durable log, then the ring, then
/// live. Made by [`ReplayStore::catch_up`](crate::ReplayStore::catch_up).
///
/// Like a [`Subscription`] it yields events exactly once and in order,
/// never blocks in [`try_next`](Self::try_next), waits with
/// [`next_timeout`](Self::next_timeout) or as a [`Stream`], and ends after
/// one gap.
pub struct CatchUp<T> {
    sessions: StdArc<SessionMap<T>>,
    shared: StdArc<Shared<T>>,
    /// The durable tier (the log, its codec, the persister's progress).
    persistence: Option<StdArc<Persistence<T>>>,
    key: SessionKey,
    /// The cursor of the last event delivered (or the starting cursor).
    last_seen: Cursor,
    /// Events read from the log, not yet delivered.
    buffer: VecDeque<Arc<Event<T>>>,
    /// Set once the ring serves us.
    ring: Option<Subscription<T>>,
    /// Armed on the persister's progress while waiting outside the ring.
    listener: Option<EventListener>,
    /// The last log read failed: wait for the persister's next round (not
    /// a commit, which an idle session may never see) to try again.
    read_failed: bool,
    ended: bool,
    /// The session's closure, once everything through its last position
    /// was delivered: the catch-up ends with it.
    closure: Option<Closure>,
    /// Records the next log step asks for (see [`FIRST_LOG_BATCH`]).
    log_batch: usize,
}

impl<T: Send + Sync + 'static> CatchUp<T> {
    /// Checks `cursor` against every tier, then starts after it. A log that
    /// cannot answer is an error to retry (`LogUnavailable`), never a gap:
    /// a gap tells the client to throw its state away.
    pub(crate) fn start(
        sessions: StdArc<SessionMap<T>>,
        shared: StdArc<Shared<T>>,
        persistence: Option<StdArc<Persistence<T>>>,
        cursor: &Cursor,
    ) -> Result<Self, crate::Error> {
        let this = Self {
            sessions,
            shared,
            persistence,
            key: cursor.key().clone(),
            last_seen: cursor.clone(),
            buffer: VecDeque::new(),
            ring: None,
            listener: None,
            read_failed: false,
            ended: false,
            closure: None,
            log_batch: FIRST_LOG_BATCH,
        };
        let verdict = this
            .check(cursor)
            .map_err(|error| crate::Refusal::LogUnavailable {
                reason: error.to_string(),
            })?;
        if let Err(gap) = verdict {
            this.shared.counters.count_gap(gap.reason);
            return Err(gap.into());
        }
        Ok(this)
    }

    /// The gap table for a cursor, against memory first, then the log
    /// (whose error is the outer `Err`).
    fn check(&self, cursor: &Cursor) -> Result<Result<(), Gap>, LogError> {
        let after = cursor.position();
        if after == 0 {
            return Ok(Ok(()));
        }
        let in_memory = self.sessions.with_found(&self.key, |found| match found {
            Found::Resident(session) => (session.identity(), session.ring.published_tail()),
            Found::Dormant(tombstone) => (tombstone.identity, tombstone.identity.start),
        });
        if let Some((identity, tail)) = in_memory {
            if let Some(verdict) = judge(&identity, tail, cursor) {
                let Err((reason, missed)) = verdict else {
                    return Ok(Ok(()));
                };
                // Over a shared log another node may have written past what
                // memory knows: the gap's latest cursor comes from the log,
                // and a log that cannot say is an error, not a stale cursor.
                if let Some(persistence) = self.persistence.as_ref().filter(|_| self.shared_log()) {
                    let meta = persistence.log.meta(&self.key)?;
                    return Ok(Err(self.gap_with(Some(meta.as_ref()), reason, missed)));
                }
                return Ok(Err(self.gap(reason, missed)));
            }
        }
        let meta = match &self.persistence {
            Some(persistence) => persistence.log.meta(&self.key)?,
            None => None,
        };
        let gap = |reason, missed| self.gap_with(Some(meta.as_ref()), reason, missed);
        Ok(match (cursor.incarnation(), meta.as_ref()) {
            (Some(incarnation), Some(meta)) => match meta.life_of(incarnation) {
                // A shared log's newest life may have a writer alive on
                // another node that has not shipped `after` yet: wait for
                // it (`read_log` reports a loss if another life takes over).
                Some((life, _)) if self.shared_log() && meta.current_life() == Some(life) => Ok(()),
                Some((_, end)) if after > end => Err(gap(GapReason::Lost, Some(after - end))),
                Some(_) => Ok(()),
                None => Err(gap(GapReason::Reset, None)),
            },
            (None, Some(meta)) if after <= meta.durable_tail => Ok(()),
            (Some(_), None) if in_memory.is_some() => Err(gap(GapReason::Reset, None)),
            // The log never heard of the session, yet a cursor of it exists:
            // its first life (from position 1) died before its first commit.
            (Some(_), None) if self.persistence.is_some() => Err(gap(GapReason::Lost, Some(after))),
            _ => Err(gap(GapReason::Unavailable, None)),
        })
    }

    fn shared_log(&self) -> bool {
        self.persistence
            .as_ref()
            .is_some_and(|persistence| persistence.log.is_shared())
    }

    /// Arms the wake-up of a catch-up waiting off the ring: another writer
    /// of a shared log recording after us (a session not resident here), or
    /// this store's next commit. Look once more after arming, then wait.
    fn arm(&self) -> Option<EventListener> {
        let persistence = self.persistence.as_ref()?;
        if self.read_failed {
            let listener = persistence.retry_listen();
            persistence.nudge();
            return Some(listener);
        }
        if self.sessions.with(&self.key, |_| ()).is_none() {
            if let Some(listener) = persistence.tail_listen(&self.key, self.last_seen.position()) {
                return Some(listener);
            }
        }
        let listener = persistence.listen();
        persistence.nudge();
        Some(listener)
    }

    /// The log's meta for a gap's `latest` cursor: best effort (the gap is
    /// already decided; a log that cannot answer leaves the start cursor).
    fn meta(&self) -> Option<SessionMeta> {
        let persistence = self.persistence.as_ref()?;
        persistence.log.meta(&self.key).ok().flatten()
    }

    /// The session's latest cursor, from whichever tier knows it best:
    /// memory, unless the log is shared and another node wrote further.
    /// With the log's meta if the caller read it already (one read fewer,
    /// and a log that fails a second read cannot leave a stale cursor in a
    /// gap the first read decided); `None` reads it (best effort).
    fn latest_with(&self, read: Option<Option<&SessionMeta>>) -> Cursor {
        let in_memory = self.sessions.with_found(&self.key, |found| match found {
            Found::Resident(session) => session.current_cursor(),
            Found::Dormant(tombstone) => tombstone.latest(&self.key),
        });
        if let Some(cursor) = &in_memory {
            if !self.shared_log() {
                return cursor.clone();
            }
        }
        let meta = match read {
            Some(meta) => meta.cloned(),
            None => self.meta(),
        };
        let logged = match meta {
            Some(meta) if meta.durable_tail > 0 => Some(Cursor::new(
                self.key.clone(),
                meta.current_life().map(|life| life.incarnation),
                Revision(meta.last_revision),
                meta.durable_tail,
            )),
            _ => None,
        };
        match (in_memory, logged) {
            (Some(memory), Some(log)) if log.position() > memory.position() => log,
            (Some(memory), _) => memory,
            (None, Some(log)) => log,
            (None, None) => Cursor::start(self.key.clone()),
        }
    }

    fn gap(&self, reason: GapReason, missed: Option<u64>) -> Gap {
        self.gap_with(None, reason, missed)
    }

    /// [`gap`](Self::gap) with the log's meta if the caller read it
    /// (`Some(None)`: the log has no such session).
    fn gap_with(
        &self,
        meta: Option<Option<&SessionMeta>>,
        reason: GapReason,
        missed: Option<u64>,
    ) -> Gap {
        Gap {
            reason,
            requested: self.last_seen.clone(),
            latest: self.latest_with(meta),
            missed,
        }
    }

    /// The cursor of the last event delivered: where to resume from.
    pub fn cursor(&self) -> &Cursor {
        &self.last_seen
    }

    /// Whether the catch-up has reached the ring (it now reads live).
    pub fn is_live(&self) -> bool {
        self.ring.is_some()
    }

    /// Whether it has ended (after its gap or closure).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// How the session ended, once the catch-up delivered everything
    /// through its last position; see [`Subscription::closure`].
    pub fn closure(&self) -> Option<Closure> {
        self.closure
    }

    /// The next event if one is available now; never waits for one (it
    /// may read the log).
    pub fn try_next(&mut self) -> Result<Arc<Event<T>>, TryNextError> {
        if self.ended {
            return Err(TryNextError::Ended);
        }
        match self.step() {
            Ok(Some(event)) => Ok(event),
            Ok(None) => match self.closure {
                Some(closure) => {
                    self.finish();
                    Err(TryNextError::Closed(closure))
                }
                None => Err(TryNextError::Empty),
            },
            Err(gap) => {
                self.end(&gap);
                Err(TryNextError::Gap(gap))
            }
        }
    }

    /// The next event, waiting up to `timeout` for one. Blocks the thread.
    /// As with [`Subscription::next_timeout`], `Duration::MAX` waits with
    /// no timer.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Arc<Event<T>>, NextTimeoutError> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            match self.try_next() {
                Err(TryNextError::Empty) => {}
                Ok(event) => return Ok(event),
                Err(TryNextError::Gap(gap)) => return Err(NextTimeoutError::Gap(gap)),
                Err(TryNextError::Closed(closure)) => {
                    return Err(NextTimeoutError::Closed(closure))
                }
                Err(TryNextError::Ended) => return Err(NextTimeoutError::Ended),
            }
            let remaining = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::MAX,
            };
            if remaining.is_zero() {
                return Err(NextTimeoutError::Timeout);
            }
            if let Some(subscription) = self.ring.as_mut() {
                match subscription.next_timeout(remaining) {
                    Ok(event) => {
                        self.last_seen = event.cursor();
                        return Ok(event);
                    }
                    Err(NextTimeoutError::Gap(gap))
                        if gap.reason == GapReason::Trimmed
                            || (gap.reason == GapReason::Reset && self.persistence.is_some()) =>
                    {
                        self.ring = None;
                    }
                    Err(NextTimeoutError::Gap(gap)) => {
                        self.end(&gap);
                        return Err(NextTimeoutError::Gap(gap));
                    }
                    Err(NextTimeoutError::Closed(closure)) => {
                        if self.closed_on_the_ring(closure) {
                            self.finish();
                            return Err(NextTimeoutError::Closed(closure));
                        }
                    }
                    Err(other) => return Err(other),
                }
                continue;
            }
            // Off the ring and nothing durable yet: wait for a commit (ours,
            // or another writer's on a shared log).
            let Some(listener) = self.arm() else {
                continue;
            };
            match self.try_next() {
                Err(TryNextError::Empty) => {}
                Ok(event) => return Ok(event),
                Err(TryNextError::Gap(gap)) => return Err(NextTimeoutError::Gap(gap)),
                Err(TryNextError::Closed(closure)) => {
                    return Err(NextTimeoutError::Closed(closure))
                }
                Err(TryNextError::Ended) => return Err(NextTimeoutError::Ended),
            }
            sync::wait_listener(listener, remaining.min(MAX_WAIT_SLICE));
        }
    }

    fn end(&mut self, gap: &Gap) {
        self.finish();
        self.shared.counters.count_gap(gap.reason);
    }

    /// The ring subscription ended with `closure`: whether the catch-up
    /// ends with it too (recorded in `closure`). Not if the session was
    /// removed since and a log keeps the key: removal reopens it, so the
    /// log decides whether a new life goes on (the ring subscription is
    /// dropped and the next step reads the log, as after a removal's
    /// `Reset`).
    fn closed_on_the_ring(&mut self, closure: Closure) -> bool {
        let reopened = self.persistence.is_some()
            && self
                .ring
                .as_ref()
                .is_some_and(Subscription::session_is_removed);
        if reopened {
            self.ring = None;
            return false;
        }
        self.closure = Some(closure);
        true
    }

    /// Ends the catch-up (after its gap, or its closure).
    fn finish(&mut self) {
        self.ended = true;
        self.ring = None;
        self.listener = None;
        self.buffer.clear();
    }

    /// One step of the algorithm (module docs): an event, nothing yet, or
    /// the gap that ends the catch-up.
    fn step(&mut self) -> Result<Option<Arc<Event<T>>>, Gap> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                self.last_seen = event.cursor();
                return Ok(Some(event));
            }
            if let Some(subscription) = self.ring.as_mut() {
                match subscription.try_next() {
                    Ok(event) => {
                        self.last_seen = event.cursor();
                        return Ok(Some(event));
                    }
                    Err(TryNextError::Empty) => return Ok(None),
                    // Everything through the closure was delivered.
                    Err(TryNextError::Closed(closure)) => {
                        if self.closed_on_the_ring(closure) {
                            return Ok(None);
                        }
                        continue;
                    }
                    // Lapped, or the session was removed under us (its
                    // events still reach the log, and a re-created session
                    // continues after them): back to the log from where
                    // we are.
                    Err(TryNextError::Gap(gap))
                        if matches!(gap.reason, GapReason::Trimmed | GapReason::Reset)
                            && self.persistence.is_some() =>
                    {
                        self.ring = None;
                        continue;
                    }
                    Err(TryNextError::Gap(gap)) => return Err(gap),
                    Err(TryNextError::Ended) if self.persistence.is_some() => {
                        self.ring = None;
                        continue;
                    }
                    Err(TryNextError::Ended) => return Err(self.gap(GapReason::Reset, None)),
                }
            }
            let after = self.last_seen.position();
            if let Some(session) = self.sessions.get(&self.key) {
                // The ring serves the reader only if its cursor names this
                // life or the one it continues, up to where that one ended
                // (a crash may have lost the rest: `Lost`, with the count);
                // a cursor of another life reads the log, which knows the
                // lives in between.
                let tail = session.ring.published_tail();
                let verdict = judge(&session.identity(), tail, &self.last_seen);
                if let Some(Err((reason, missed))) = verdict {
                    return Err(self.gap(reason, missed));
                }
                if verdict.is_some() && session.serves_after(after) {
                    self.ring = Some(Subscription::start_unchecked(
                        session,
                        self.last_seen.clone(),
                    ));
                    continue;
                }
            }
            match self.read_log(after)? {
                LogStep::Read | LogStep::Resident => continue,
                LogStep::Nothing => {}
                // With a log, wait for a writer to make the session
                // resident (its commit wakes us): a reader does not restore
                // a session, which would record a new life for every read.
                LogStep::AtTail if self.persistence.is_some() => {}
                LogStep::AtTail => {
                    // Nothing after us anywhere: wait on the ring, making
                    // the session resident (as a subscribe at the tail does).
                    let restore =
                        || crate::persist::restore_identity(self.persistence.as_deref(), &self.key);
                    if let Ok(session) =
                        self.sessions
                            .get_or_create(&self.key, &self.shared, &restore)
                    {
                        if session.serves_after(after) {
                            self.ring = Some(Subscription::start_unchecked(
                                session,
                                self.last_seen.clone(),
                            ));
                            continue;
                        }
                    }
                }
            }
            return Ok(None);
        }
    }

    /// Reads the log after `after` into the buffer.
    fn read_log(&mut self, after: u64) -> Result<LogStep, Gap> {
        let Some(persistence) = self.persistence.as_ref() else {
            // No log: what the ring cannot serve is trimmed, or not there.
            let resident = self.sessions.get(&self.key);
            return match resident {
                Some(session) if session.ring.published_tail() > after => {
                    let missed = session.missed_after(after);
                    Err(self.gap(GapReason::Trimmed, Some(missed)))
                }
                Some(_) => Ok(LogStep::Nothing),
                None => match self.sessions.with_found(&self.key, |found| match found {
                    Found::Dormant(tombstone) => Some(tombstone.identity.start),
                    Found::Resident(_) => None,
                }) {
                    Some(Some(last)) if last > after => {
                        Err(self.gap(GapReason::Trimmed, Some(last - after)))
                    }
                    _ => Ok(LogStep::AtTail),
                },
            };
        };
        let log = StdArc::clone(&persistence.log);
        self.read_failed = false;
        let Ok(meta) = log.meta(&self.key) else {
            self.read_failed = true;
            return Ok(LogStep::Nothing);
        };
        let Some(meta) = meta else {
            let resident = self.sessions.get(&self.key);
            return Ok(match resident {
                Some(_) => LogStep::Nothing,
                None => LogStep::AtTail,
            });
        };
        if meta.archived_through > after {
            return Err(self.gap_with(
                Some(Some(&meta)),
                GapReason::Trimmed,
                Some(meta.archived_through - after),
            ));
        }
        if meta.durable_tail <= after {
            let resident = self.sessions.get(&self.key);
            return match (resident, meta.closure) {
                (Some(_), _) => Ok(LogStep::Nothing),
                // Closed in the log and nobody holds it here (evicted, or
                // written by another node): everything was delivered.
                (None, Some(closure)) if closure.last == after => {
                    self.closure = Some(closure);
                    Ok(LogStep::Nothing)
                }
                // The reader saw positions past the closure, which the log
                // will never hold: a crashed life's, lost from where that
                // life's durable run ended.
                (None, Some(closure)) => {
                    let end = self
                        .last_seen
                        .incarnation()
                        .and_then(|seen| meta.life_of(seen))
                        .map_or(closure.last, |(_, end)| end.min(closure.last));
                    Err(self.gap_with(Some(Some(&meta)), GapReason::Lost, Some(after - end)))
                }
                // A turn whose store is gone left it open: no writer will
                // come (persister invariant 11).
                (None, None) if persistence.left_open_by_a_gone_store(&meta) => {
                    Ok(if log.is_shared() {
                        // The closure is written to the log and read back
                        // from it: no session of this node's stands for the
                        // key (another node may reopen it in a newer life),
                        // and the reader ends with the log's closure. A
                        // refusal means the log moved on: the next step
                        // reads it.
                        match persistence.interrupt_in_log(&self.key, &meta) {
                            Ok(true) => LogStep::Read,
                            Ok(false) => LogStep::Nothing,
                            Err(_) => {
                                self.read_failed = true;
                                LogStep::Nothing
                            }
                        }
                    } else {
                        // Restored closed `Interrupted` here, its closure
                        // written by the persister; the ring ends the reader.
                        let restore =
                            || crate::persist::restore_identity(Some(persistence), &self.key);
                        match self
                            .sessions
                            .get_or_create(&self.key, &self.shared, &restore)
                        {
                            Ok(_) => LogStep::Resident,
                            Err(_) => {
                                self.read_failed = true;
                                LogStep::Nothing
                            }
                        }
                    })
                }
                (None, None) => Ok(LogStep::AtTail),
            };
        }
        let Ok(records) = log.load_after(&self.key, after, self.log_batch) else {
            self.read_failed = true;
            return Ok(LogStep::Nothing);
        };
        self.log_batch = next_log_batch(self.log_batch, &records);
        // The life of the last event delivered or buffered: a record of
        // another life must begin that life exactly (a life boundary), or
        // the reader's history and the log's diverged at a crash.
        let mut life = self
            .buffer
            .back()
            .map(|event| event.incarnation)
            .or(self.last_seen.incarnation());
        for (expected, record) in (after + 1..).zip(records) {
            if record.position > expected || record.last_position() < expected {
                // Not contiguous with what we have: stop and read again.
                break;
            }
            if life.is_some_and(|seen| seen != record.incarnation) {
                let began = meta
                    .life_of(record.incarnation)
                    .map_or(record.position, |(life, _)| life.first_position);
                let reader_life_end = life.and_then(|seen| meta.life_of(seen)).map(|(_, end)| end);
                if began < expected || reader_life_end.is_some_and(|end| end < expected - 1) {
                    // Positions `began..expected` the reader has from its
                    // own life; the log holds another life's there (an
                    // event, or a hole that life recorded).
                    if self.buffer.is_empty() {
                        // The reader's own life ended before what it saw
                        // (a crash lost the rest): every position it saw
                        // past that end is lost, whatever lives came
                        // between.
                        let missed = match life.and_then(|seen| meta.life_of(seen)) {
                            Some((_, end)) if end < after => after - end,
                            _ => expected - began,
                        };
                        return Err(self.gap_with(
                            Some(Some(&meta)),
                            GapReason::Lost,
                            Some(missed),
                        ));
                    }
                    break;
                }
            }
            if let RecordBody::Event(_) = &record.body {
                life = Some(record.incarnation);
            }
            match record.body {
                RecordBody::Hole { .. } => {
                    if self.buffer.is_empty() {
                        let missed = record.last_position() - after;
                        return Err(self.gap_with(
                            Some(Some(&meta)),
                            GapReason::Lost,
                            Some(missed),
                        ));
                    }
                    break;
                }
                RecordBody::Event(_) => match self.decode(record) {
                    Some(event) => self.buffer.push_back(event),
                    None => {
                        if self.buffer.is_empty() {
                            return Err(self.gap_with(Some(Some(&meta)), GapReason::Lost, Some(1)));
                        }
                        break;
                    }
                },
            }
        }
        Ok(if self.buffer.is_empty() {
            LogStep::Nothing
        } else {
            LogStep::Read
        })
    }

    fn decode(&self, record: LogRecord) -> Option<Arc<Event<T>>> {
        decode_record(self.persistence.as_deref(), &self.key, record)
    }
}

/// How many records the log step after one that asked for `asked` and got
/// `records` asks for: twice as many after a full step, up to
/// [`LOG_BATCH`] and about [`LOG_BATCH_BYTES`] of payloads the size of
/// these; the same after a short one (the tail was near).
fn next_log_batch(asked: usize, records: &[LogRecord]) -> usize {
    if records.len() < asked {
        return asked;
    }
    let bytes: usize = records.iter().map(LogRecord::payload_len).sum();
    let average = bytes / records.len().max(1);
    let by_bytes = LOG_BATCH_BYTES / average.max(1);
    asked.saturating_mul(2).min(LOG_BATCH).min(by_bytes.max(1))
}

/// The event a log record holds, decoded with the store's codec; `None`
/// for a hole, or a payload the codec refuses (counted).
pub(crate) fn decode_record<T: Send + Sync + 'static>(
    persistence: Option<&Persistence<T>>,
    key: &SessionKey,
    record: LogRecord,
) -> Option<Arc<Event<T>>> {
    let persistence = persistence?;
    let RecordBody::Event(stored) = record.body else {
        return None;
    };
    match persistence.codec.decode(&stored.payload) {
        Ok(payload) => Some(Arc::new(Event {
            key: key.clone(),
            incarnation: record.incarnation,
            revision: Revision(stored.revision),
            position: record.position,
            timestamp: Timestamp::from_nanos(stored.timestamp_nanos),
            links: (!stored.links.is_empty()).then(|| Box::new(stored.links)),
            payload,
        })),
        Err(_) => {
            persistence.counters.undecodable_events.add(1);
            None
        }
    }
}

/// What a look at the log found.
enum LogStep {
    /// Events were buffered.
    Read,
    /// Nothing after us is durable yet (the persister will get there).
    Nothing,
    /// Nothing after us exists in any tier, and no session is resident.
    AtTail,
    /// The session was made resident: the ring serves the rest.
    Resident,
}

/// The gap table for `cursor` against a session known in memory; `None`
/// if its incarnation is not this session's (the log may know it).
fn judge(
    identity: &Identity,
    tail: u64,
    cursor: &Cursor,
) -> Option<Result<(), (GapReason, Option<u64>)>> {
    let after = cursor.position();
    let own = |incarnation: Incarnation| incarnation == identity.incarnation;
    match (cursor.incarnation(), identity.previous) {
        (Some(i), _) if own(i) => Some(if after > tail {
            Err((GapReason::Unavailable, None))
        } else {
            Ok(())
        }),
        (Some(i), Some((previous, end))) if i == previous => Some(if after > end {
            Err((GapReason::Lost, Some(after - end)))
        } else {
            Ok(())
        }),
        (Some(_), _) => None,
        (None, _) if after > tail => None,
        (None, _) => Some(Ok(())),
    }
}

impl<T: Send + Sync + 'static> Stream for CatchUp<T> {
    type Item = Result<Arc<Event<T>>, Gap>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match this.try_next() {
                Ok(event) => {
                    this.listener = None;
                    return Poll::Ready(Some(Ok(event)));
                }
                Err(TryNextError::Gap(gap)) => return Poll::Ready(Some(Err(gap))),
                Err(TryNextError::Closed(_) | TryNextError::Ended) => return Poll::Ready(None),
                Err(TryNextError::Empty) => {}
            }
            if let Some(subscription) = this.ring.as_mut() {
                match Pin::new(&mut *subscription).poll_next(cx) {
                    Poll::Ready(Some(Ok(event))) => {
                        this.last_seen = event.cursor();
                        return Poll::Ready(Some(Ok(event)));
                    }
                    // Lapped, or removed under us: back to the log (see
                    // `step`).
                    Poll::Ready(Some(Err(gap)))
                        if matches!(gap.reason, GapReason::Trimmed | GapReason::Reset)
                            && this.persistence.is_some() =>
                    {
                        this.ring = None;
                        continue;
                    }
                    Poll::Ready(Some(Err(gap))) => {
                        this.end(&gap);
                        return Poll::Ready(Some(Err(gap)));
                    }
                    Poll::Ready(None) if subscription.closure().is_some() => {
                        let closure = subscription.closure();
                        if closure.is_some_and(|closure| this.closed_on_the_ring(closure)) {
                            this.finish();
                            return Poll::Ready(None);
                        }
                        continue;
                    }
                    Poll::Ready(None) if this.persistence.is_some() => {
                        this.ring = None;
                        continue;
                    }
                    Poll::Ready(None) => {
                        let gap = this.gap(GapReason::Reset, None);
                        this.end(&gap);
                        return Poll::Ready(Some(Err(gap)));
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            if this.persistence.is_none() {
                // No log to wait for (the session could not be made
                // resident): look again on the next poll.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            match this.listener.as_mut() {
                // Arm, then loop to re-check before waiting.
                None => this.listener = this.arm(),
                Some(listener) => match Pin::new(listener).poll(cx) {
                    Poll::Ready(()) => this.listener = None,
                    Poll::Pending => return Poll::Pending,
                },
            }
        }
    }
}

impl<T> fmt::Debug for CatchUp<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatchUp")
            .field("key", &self.key)
            .field("after", &self.last_seen.position())
            .field("live", &self.ring.is_some())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}
