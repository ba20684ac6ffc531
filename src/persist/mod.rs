//! The persister: write-behind from the rings to the durable log, which the
//! turn loop never waits for.
//!
//! # Protocol
//!
//! Each session has a `dirty` flag and a durable watermark. An append, after
//! publishing, loads `dirty` (one uncontended load in the common case); if
//! it is clear it sets it and pushes the session onto a lock-free queue of
//! dirty sessions (`Session::mark_dirty`, then this module's
//! `DurableTier::queue_dirty`: the core knows the persister only through
//! that trait, so its imports never reach up here). The persister thread pops sessions, **clears `dirty`
//! before reading**, reads each ring from its watermark to its published
//! tail, writes every session's run in **one commit**, and then raises the
//! watermarks and notifies waiters.
//!
//! No lost write (the store-buffer pattern again): the appender does
//! `publish; fence(SeqCst); load dirty`, the persister does
//! `store dirty = false; fence(SeqCst); load tail`. The appender's fence is
//! the doorbell's (`Ring::publish` ends with it), so persistence adds no
//! fence to the append path. Whichever fence comes first in their total
//! order, either the persister's read sees the event, or the appender sees
//! the flag clear and queues the session again.
//!
//! # Invariants
//!
//! 1. The persister is the only writer of the log and of the watermarks;
//!    a watermark only grows, and only after the commit that covers it
//!    (unless the log is found to have lost writes it acknowledged: then
//!    it follows the log back, see invariant 6).
//! 2. Records go to the log in position order, contiguous from the
//!    watermark: positions no tier holds (the ring lapped them and the
//!    budget for undurable events was spent, invariant 10) are written as
//!    one hole record with their count, never skipped; so are payloads the
//!    codec refused.
//! 3. With a log, rings never trim past the watermark by age or watermark,
//!    and a session is never evicted with undurable events (the queue holds
//!    a reference to it while it is dirty).
//! 4. A failed commit changes no watermark: its sessions go back on the
//!    queue and are retried with exponential backoff (10 ms to 1 s), so
//!    persistence resumes by itself when the log recovers. Appends never
//!    see the failure; `stats()` counts it.
//! 5. A removed session's accepted events still reach the log. A session
//!    re-created under its key meanwhile continues after the removed one's
//!    last position, as a new life that the persister records only once the
//!    removed one is durable, so the log stays contiguous and one session's
//!    wait never fails another's commit.
//! 6. The log refusing one session's records (its tail is not our
//!    watermark) never holds the others back: that session is taken out of
//!    the commit, and the log's tail re-read. If the session's newest life
//!    is ours, we adopt the tail (an earlier write landed though its reply
//!    was lost, or the log lost acknowledged writes: `stats()` counts a
//!    regression) and write on from there; otherwise another writer has the
//!    session and it is *fenced*: its events stay in the ring, counted in
//!    `stats()`, and are no longer written. A fenced session may be
//!    evicted, but leaves no tombstone (it would answer for positions the
//!    log never took), and a successor never waits for a fenced
//!    predecessor; until it writes, it reports the predecessor's
//!    watermark as its own, never its start.
//! 7. A record the log refuses for good (`InvalidRecord`: too large for it,
//!    say) is written as a hole (`HoleReason::Refused`), counted with its
//!    key; it never stalls its session or the sessions batched with it.
//! 8. Holes are lost, not durable: the watermark passes them (the log
//!    holds the positions as lost), but every position written as a hole
//!    is remembered by its session (`LostPositions`) and no wait reports
//!    it durable.
//! 9. A removed session is let go once nothing more of it will be
//!    written (all durable, or fenced); dropping the store lets every
//!    queued and removed session go.
//! 10. A ring's capacity bounds what readers are served from memory, not
//!     how far the persister may fall behind: a segment a writer laps
//!     before the persister wrote it is kept (`ring::kept`) within the
//!     store's byte budget ([`DurableOptions::undurable_budget`]) and read
//!     from there; each commit gives back what it made durable. Only a log
//!     that fails or stalls past the budget turns lapped events into holes.
//! 11. A turn's store is in the log while the turn is open. Once a
//!     [`Turn`](crate::Turn) drives a session, the persister records this
//!     store's id as the session's open turn (in the commit that records
//!     its life, or the next), never after the session's closure, which
//!     clears it. A store restored from a log that is not shared (one store
//!     at a time, as redb's file lock makes it) that finds another store's
//!     turn open knows that store is gone with the turn unfinished: it
//!     restores the session closed `Interrupted` at the durable tail, writes
//!     that closure, and counts it (`DurableStats::interrupted_turns`). A
//!     catch-up that reaches the tail of such a session restores it, so
//!     its reader ends with the closure instead of waiting for a writer.
//!     Over a shared log another node's turn may be alive. Each store
//!     holds a lease there ([`DurableOptions::store_lease`], timed by the
//!     store's clock and renewed by the persister every third of it, idle
//!     or not, and before any commit: a mark is never written without its
//!     store's lease), and another store judges a turn interrupted only
//!     once its store's lease ran out (an answer of "alive" is trusted a
//!     tenth of a lease; a log that cannot answer says "alive"). That store
//!     then writes, before it makes the session, a new life of its own and
//!     its closure at the durable tail, in one write: the life clears the
//!     mark and fences the turn's store should it only have stalled
//!     (invariant 6), and the closure makes the interruption durable with
//!     it, never the one without the other. The log refusing that write
//!     means it moved on (the stalled store wrote more, or another store
//!     closed the turn first): the restore reads the log again, so no
//!     closure the log refused is ever served; after three such refusals
//!     in a row it refuses with `LogUnavailable` (retryable), leaving the
//!     mark in the log rather than clear it with a life that closes
//!     nothing. A reader's catch-up writes
//!     the same but makes no session: it reads the closure back from the
//!     log, so no closed session of its node's stands for the key once
//!     another node reopens it in a newer life. Redis and Postgres keep
//!     leases; a log that cannot tell liveness (the trait's default)
//!     leaves the turn to its node.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::{Arc as StdArc, Mutex, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use event_listener::{Event as Notifier, EventListener};

use crate::clock::Clock;
use crate::closure::Closure;
use crate::codec::Codec;
use crate::cursor::Incarnation;
use crate::durable::{
    DurableLog, HoleReason, Life, LogError, LogRecord, RecordBody, SessionWrite, StoredEvent,
};
use crate::event::Timestamp;
use crate::key::SessionKey;
use crate::ring::{KeepBudget, Undurable};
use crate::session::{AtomicCounter, DurableTier, Lost, Session};
use crate::sync::{fence, Arc, Queue};

mod options;
mod restore;

pub use self::options::DurableOptions;
pub(crate) use self::restore::{continuing_after, restore_identity};

/// How often readers whose log read failed try again (a log that is down
/// is read at most this often by each of them).
const READ_RETRY: Duration = Duration::from_millis(50);

/// Counters of the durable tier (Relaxed: they publish nothing).
#[derive(Default)]
pub(crate) struct PersistCounters {
    pub(crate) persisted_events: AtomicCounter,
    pub(crate) commits: AtomicCounter,
    pub(crate) holes: AtomicCounter,
    pub(crate) lost_events: AtomicCounter,
    pub(crate) unencodable_events: AtomicCounter,
    pub(crate) log_failures: AtomicCounter,
    pub(crate) restored_sessions: AtomicCounter,
    pub(crate) interrupted_turns: AtomicCounter,
    pub(crate) undecodable_events: AtomicCounter,
    pub(crate) fenced_sessions: AtomicCounter,
    pub(crate) log_regressions: AtomicCounter,
    pub(crate) refused_records: AtomicCounter,
    pub(crate) recovered_replies: AtomicCounter,
    pub(crate) fenced_events: AtomicCounter,
}

/// The durable tier of one store.
pub(crate) struct Persistence<T> {
    pub(crate) log: StdArc<dyn DurableLog>,
    pub(crate) codec: Box<dyn Codec<T>>,
    pub(crate) options: DurableOptions,
    queue: Queue<Arc<Session<T>>>,
    /// Notified after every commit (and on shutdown).
    progress: Notifier,
    /// Notified by the persister thread every [`READ_RETRY`] (and by every
    /// `persist_round` a host drives): readers whose log read failed try
    /// again then, even on a session with no commit to wake them.
    retry: Notifier,
    stop: std::sync::atomic::AtomicBool,
    thread: OnceLock<Thread>,
    handle: Mutex<Option<JoinHandle<()>>>,
    pub(crate) counters: PersistCounters,
    last_error: Mutex<Option<String>>,
    /// Removed sessions whose accepted events are not all durable yet, with
    /// the last position they claimed: a session re-created under the same
    /// key continues after them, and its life waits for them (invariant 5).
    removed: crate::sync::Mutex<std::collections::HashMap<SessionKey, RemovedSession<T>>>,
    /// Held for every write to the log, so that a life recorded at restore
    /// time and the persister's commits never record one life twice.
    commit_lock: crate::sync::Mutex<()>,
    /// Wakes catch-ups of sessions other writers of a shared log write.
    tailer: StdArc<crate::tail::Tailer>,
    /// The last session fenced, and the last whose record the log refused
    /// for good: for an operator reading `stats()`.
    last_fenced: Mutex<Option<SessionKey>>,
    last_refused: Mutex<Option<SessionKey>>,
    /// The budget every ring's kept undurable segments share (invariant 10).
    pub(crate) keep_budget: StdArc<KeepBudget<T>>,
    /// This store's id in the log's open-turn marks
    /// ([`SessionMeta::open_turn`](crate::durable::SessionMeta::open_turn)):
    /// random, so no other store, before or after, has it.
    pub(crate) store_id: u64,
    /// The store's clock, which times leases: a simulation that moves it
    /// past a lease makes every renewal due, as a stall would.
    clock: StdArc<dyn Clock>,
    /// This store's lease on a shared log (invariant 11).
    lease: Mutex<LeaseState>,
    /// Other stores a shared log said were alive, and when: asked again
    /// only a tenth of a lease later, so that readers waiting on another
    /// node's turn do not each ask the log every wait slice.
    seen_alive: Mutex<std::collections::HashMap<u64, Timestamp>>,
}

/// When this store last renewed its lease on a shared log, and last
/// tried to (`None`: never).
#[derive(Default)]
struct LeaseState {
    renewed: Option<Timestamp>,
    tried: Option<Timestamp>,
}

/// A removed session and the last position it claimed.
type RemovedSession<T> = (Arc<Session<T>>, u64);

impl<T> Pending<T> {
    /// Turns the event record at `position` into a hole (the log refused
    /// it for good); `false` if no event record is there.
    fn refuse(&mut self, position: u64) -> bool {
        let Some(record) = self.records.iter_mut().find(|record| {
            record.position == position && matches!(record.body, RecordBody::Event(_))
        }) else {
            return false;
        };
        record.body = RecordBody::Hole {
            count: 1,
            reason: HoleReason::Refused,
        };
        true
    }
}

/// One session's share of a commit.
struct Pending<T> {
    session: Arc<Session<T>>,
    new_life: Option<Life>,
    records: Vec<LogRecord>,
    /// The session's closure, written with these records: they reach its
    /// last position.
    closure: Option<Closure>,
    /// The open turn to record: this store's id (invariant 11).
    turn_owner: Option<u64>,
    /// `new_life` is the one that reopens a removed closed session's key.
    reopen: bool,
    /// The watermark once committed.
    through: u64,
    /// The tail was further than one batch: queue again after the commit.
    more: bool,
}

impl<T: Send + Sync + 'static> Persistence<T> {
    pub(crate) fn new(
        log: StdArc<dyn DurableLog>,
        codec: Box<dyn Codec<T>>,
        options: DurableOptions,
        weigh: Option<crate::ring::Weigh<T>>,
        clock: StdArc<dyn Clock>,
    ) -> Self {
        Self {
            keep_budget: StdArc::new(KeepBudget::new(options.undurable_budget, weigh)),
            tailer: StdArc::new(crate::tail::Tailer::new(StdArc::clone(&log))),
            log,
            codec,
            options,
            queue: Queue::new(),
            progress: Notifier::new(),
            retry: Notifier::new(),
            stop: std::sync::atomic::AtomicBool::new(false),
            thread: OnceLock::new(),
            handle: Mutex::new(None),
            counters: PersistCounters::default(),
            last_error: Mutex::new(None),
            removed: crate::sync::Mutex::new(std::collections::HashMap::new()),
            commit_lock: crate::sync::Mutex::new(()),
            last_fenced: Mutex::new(None),
            last_refused: Mutex::new(None),
            store_id: Incarnation::fresh().get(),
            clock,
            lease: Mutex::new(LeaseState::default()),
            seen_alive: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Starts the persister thread. Under loom there is none: models run
    /// [`Persistence::round`] on threads of their own.
    #[cfg(loom)]
    pub(crate) fn start(_: &StdArc<Self>) -> std::io::Result<()> {
        Ok(())
    }

    /// Starts the persister thread, unless the host drives the rounds.
    #[cfg(not(loom))]
    pub(crate) fn start(this: &StdArc<Self>) -> std::io::Result<()> {
        if !this.options.persister_thread {
            return Ok(());
        }
        let worker = StdArc::clone(this);
        let handle = std::thread::Builder::new()
            .name("livereplay-persister".into())
            .spawn(move || worker.run())?;
        let _ = this.thread.set(handle.thread().clone());
        *this.handle.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(())
    }
}

/// What the core tells the persister (the core never names this type).
impl<T: Send + Sync + 'static> DurableTier<T> for Persistence<T> {
    #[inline]
    fn queue_dirty(&self, session: &Arc<Session<T>>) {
        self.queue.push(Arc::clone(session));
        if self.options.wake_on_dirty {
            self.nudge();
        }
    }

    fn created(&self, session: &Arc<Session<T>>) {
        Persistence::created(self, session);
    }

    fn removed(&self, session: &Arc<Session<T>>, last: u64) {
        Persistence::removed(self, session, last);
    }

    fn log_is_shared(&self) -> bool {
        self.log.is_shared()
    }

    fn keep_budget(&self) -> &StdArc<KeepBudget<T>> {
        &self.keep_budget
    }

    fn count_fenced_events(&self, events: u64) {
        self.counters.fenced_events.add(events);
    }
}

impl<T> Persistence<T> {
    /// A session was created: if its life is new to the log, have the
    /// persister record it now, so cursors of this life are known to the
    /// log even if the process dies before its first event is written.
    ///
    /// A session restored from the log (a new life after its durable tail)
    /// records its life **now**, before the caller gets it: if the process
    /// died before the persister's next commit, cursors of this life would
    /// be unknown to the log, and a reader could not be told how many of
    /// its events were lost. This is the one write on the path of a first
    /// touch, once per session per process life (take a handle off the
    /// turn loop to keep it there). If it fails, the persister records the
    /// life with the first events.
    pub(crate) fn created(&self, session: &Arc<Session<T>>) {
        if !session.life_unrecorded.load(Relaxed) {
            // Restored closed because its store left its turn open, over a
            // log that is not shared (no other new session has a closure
            // the log lacks; over a shared log the restore wrote it): the
            // closure is this store's to write (invariant 11).
            if session.closure_to_write().is_some() {
                self.counters.interrupted_turns.add(1);
                Session::mark_dirty(session);
            }
            return;
        }
        let restored = session.identity().previous.is_some();
        let waits = session
            .predecessor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        if restored && !waits {
            let _writing = self.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
            if session.life_unrecorded.load(Relaxed) {
                let life = Life {
                    incarnation: session.incarnation(),
                    first_position: session.identity().start + 1,
                };
                let write = SessionWrite {
                    key: session.key(),
                    new_life: Some(life),
                    records: &[],
                    closure: None,
                    turn_owner: None,
                };
                match self.log.append(&[write]) {
                    Ok(()) => {
                        self.counters.commits.add(1);
                        session.life_unrecorded.store(false, Relaxed);
                        return;
                    }
                    Err(error) => self.failed(&error),
                }
            }
        }
        Session::mark_dirty(session);
    }

    fn failed(&self, error: &crate::durable::LogError) {
        self.counters.log_failures.add(1);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_string());
    }

    /// A session was removed after claiming `last` positions; remember it
    /// until its events are durable (or it is fenced: they never will be).
    /// Called under the map's shard lock, before the entry leaves, so a
    /// re-creation by key finds it.
    pub(crate) fn removed(&self, session: &Arc<Session<T>>, last: u64) {
        // Closed: its closure must reach the log, and then the removal too
        // (a new life, which reopens the key), so it is queued even if it
        // has nothing else to write. So with a turn, whose mark the log
        // may hold (or be about to: a round that read it may be committing)
        // and the reopening life clears (invariant 11).
        let reopens = session.closure().is_some() || session.has_turn();
        let unwritten = session.durable() < last || reopens;
        if unwritten && !session.fenced.load(Relaxed) {
            self.removed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(session.key().clone(), (Arc::clone(session), last));
            if reopens {
                Session::mark_dirty(session);
            }
        }
    }

    /// Whether the log must still be told that `session`, closed or with
    /// its open turn in the log, was removed (`Session::needs_reopen`).
    /// Never over a shared log: a node cannot tell whether it still writes
    /// the key there, and a life it recorded for a key another node writes
    /// would fence that writer. There a removal reopens the key only
    /// through a re-creation's own life.
    fn needs_reopen(&self, session: &Session<T>) -> bool {
        !self.log.is_shared() && session.needs_reopen()
    }

    /// The last position `session` claimed, if it is the removed session
    /// registered under its key.
    fn removed_last(&self, session: &Arc<Session<T>>) -> Option<u64> {
        let removed = self.removed.lock().unwrap_or_else(|e| e.into_inner());
        match removed.get(session.key()) {
            Some((held, last)) if Arc::ptr_eq(held, session) => Some(*last),
            _ => None,
        }
    }

    /// Whether `session` was removed with nothing more of it to write: it
    /// was removed (not only closed), and it is fenced, or its watermark reached the
    /// position it was sealed at (appends refused after the seal still
    /// count in the ring's `claimed`), or it is not registered as a removed
    /// session waiting for the log. If so it is let go, so its ring is
    /// freed without waiting for its key to be used again.
    fn settle_removed(&self, session: &Arc<Session<T>>) -> bool {
        // A sealed ring is removed or closed; only the lock tells which.
        if !session.ring.is_closed() || !session.is_removed() {
            return false;
        }
        let fenced = session.fenced.load(Relaxed);
        let mut removed = self.removed.lock().unwrap_or_else(|e| e.into_inner());
        let (done, registered) = match removed.get(session.key()) {
            Some((held, last)) if Arc::ptr_eq(held, session) => (
                fenced
                    || (session.written() >= *last
                        && session.closure_to_write().is_none()
                        && !self.needs_reopen(session)),
                true,
            ),
            _ => (true, false),
        };
        // Dropped after the lock is let go.
        let settled = (done && registered).then(|| removed.remove(session.key()));
        drop(removed);
        drop(settled);
        done
    }

    /// Counts a session fenced (another writer has it in the log).
    fn fence(&self, session: &Arc<Session<T>>) {
        session.fenced.store(true, Relaxed);
        // Never written now: what the ring kept for the log goes.
        session.ring.release_all_kept();
        self.counters.fenced_sessions.add(1);
        *self.last_fenced.lock().unwrap_or_else(|e| e.into_inner()) = Some(session.key().clone());
    }

    /// The last session fenced and the last whose record the log refused.
    pub(crate) fn given_up(&self) -> (Option<SessionKey>, Option<SessionKey>) {
        let fenced = self.last_fenced.lock().unwrap_or_else(|e| e.into_inner());
        let refused = self.last_refused.lock().unwrap_or_else(|e| e.into_inner());
        (fenced.clone(), refused.clone())
    }

    /// Whether `position` of `session` was written as a hole (why, and
    /// the hole's last position): from the session's own record of its
    /// holes, or from the log for positions older than that record.
    pub(crate) fn lost_at(
        &self,
        key: &SessionKey,
        session: Option<&Session<T>>,
        position: u64,
    ) -> Result<Option<(HoleReason, u64)>, LogError> {
        if let Some(session) = session {
            let lost = session.lost.lock().unwrap_or_else(|e| e.into_inner());
            match lost.at(position, session.identity().start) {
                Lost::Yes(reason, last) => return Ok(Some((reason, last))),
                Lost::No => return Ok(None),
                Lost::AskTheLog => {}
            }
        }
        let first = self.log.load_after(key, position.saturating_sub(1), 1)?;
        Ok(first.first().and_then(|record| match record.body {
            RecordBody::Hole { reason, .. }
                if (record.position..=record.last_position()).contains(&position) =>
            {
                Some((reason, record.last_position()))
            }
            _ => None,
        }))
    }

    /// The removed incarnation of `key` still waiting for the log, if any.
    pub(crate) fn removed_pending(&self, key: &SessionKey) -> Option<RemovedSession<T>> {
        let mut removed = self.removed.lock().unwrap_or_else(|e| e.into_inner());
        let (session, last) = removed.get(key)?;
        // Through once its events and its closure or turn, if it has one,
        // are in the log (a re-creation then reads the log and finds them).
        if session.durable() >= *last
            && session.closure_to_write().is_none()
            && !session.turn_to_write()
            && !self.needs_reopen(session)
        {
            removed.remove(key);
            return None;
        }
        Some((Arc::clone(session), *last))
    }

    /// Wakes the persister now.
    pub(crate) fn nudge(&self) {
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }

    /// A listener notified after the next commit.
    pub(crate) fn listen(&self) -> EventListener {
        self.progress.listen()
    }

    /// A listener notified within [`READ_RETRY`]: a reader whose log read
    /// failed waits on it to try again.
    pub(crate) fn retry_listen(&self) -> EventListener {
        self.retry.listen()
    }

    /// Wakes the readers waiting to retry a failed log read.
    pub(crate) fn retry_reads(&self) {
        self.retry.notify(usize::MAX);
    }

    /// A listener woken once another writer of the shared log records a
    /// position after `after` in `key`'s session; `None` if the log cannot
    /// be waited on.
    pub(crate) fn tail_listen(&self, key: &SessionKey, after: u64) -> Option<EventListener> {
        self.tailer
            .available()
            .then(|| self.tailer.listen(key, after))
    }

    /// Whether a persister thread writes the log (else the host calls
    /// `persist_round`).
    pub(crate) fn has_thread(&self) -> bool {
        self.thread.get().is_some()
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops the persister after it has written what is queued (or after
    /// the shutdown timeout), and waits for it.
    pub(crate) fn shutdown(&self) {
        // Release: the persister that sees the stop also sees every queue
        // push made before it.
        self.stop.store(true, Release);
        self.nudge();
        let handle = self.handle.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
        // Nothing more will be written: let the sessions still queued or
        // removed go (they hold the store's shared state, which holds them).
        self.removed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        while self.queue.pop().is_some() {}
        self.tailer.shutdown();
    }
}

impl<T: Send + Sync + 'static> Persistence<T> {
    #[cfg_attr(loom, allow(dead_code))]
    fn run(&self) {
        let mut backoff = Duration::ZERO;
        let mut stop_deadline = None;
        let mut retried = Instant::now();
        loop {
            if retried.elapsed() >= READ_RETRY {
                self.retry_reads();
                retried = Instant::now();
            }
            // Acquire: see `shutdown`.
            if stop_deadline.is_none() && self.stop.load(Acquire) {
                stop_deadline = Some(Instant::now() + self.options.shutdown_timeout);
            }
            let Some(committed) = self.round() else {
                if stop_deadline.is_some() {
                    break;
                }
                std::thread::park_timeout(self.options.flush_interval);
                continue;
            };
            if committed {
                backoff = Duration::ZERO;
            } else {
                backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                if stop_deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                    break;
                }
                // Sleep out the whole backoff: `park_timeout` returns on any
                // unpark, and every failed commit wakes the callers waiting
                // in `wait_durable` (or a catch-up), which nudge us again at
                // once, so a bare park turned the retry into a hot loop
                // against a failing log (thousands of attempts a second).
                // Only a first stop request cuts it short, for one prompt
                // retry before shutting down.
                let until = Instant::now() + backoff;
                loop {
                    let now = Instant::now();
                    // Acquire: see `shutdown`.
                    if now >= until || (stop_deadline.is_none() && self.stop.load(Acquire)) {
                        break;
                    }
                    std::thread::park_timeout(until - now);
                }
            }
        }
        self.progress.notify(usize::MAX);
    }

    /// One round: pops the dirty sessions (up to a batch of events), reads
    /// them and writes one commit. `None` if nothing was queued, else
    /// whether the commit succeeded.
    pub(crate) fn round(&self) -> Option<bool> {
        let mut batch = Vec::new();
        let mut events = 0;
        // A session appended to after `collect` cleared its flag is queued
        // again and may be popped again in this same round. Collecting it
        // twice would write its run (and a new life) twice in one commit,
        // which the log refuses whole, failing every session of the batch
        // into the backoff. So a session is collected once per round; a
        // second pop is queued again (still dirty) for the next round. So is
        // a session whose removed predecessor is not durable yet.
        let mut keys = std::collections::HashSet::new();
        let mut again = Vec::new();
        let mut waiting = Vec::new();
        while events < self.options.max_batch_events {
            let Some(session) = self.queue.pop() else {
                break;
            };
            if session.fenced.load(Relaxed) {
                // Another writer has it: it leaves the queue, and stays
                // dirty, so appends never queue it again.
                continue;
            }
            if !keys.insert(Arc::as_ptr(&session) as usize) {
                again.push(session);
                continue;
            }
            if self.waits_for_predecessor(&session) {
                waiting.push(session);
                continue;
            }
            self.collect_into(&mut batch, &mut events, session);
        }
        // A predecessor popped after its successor may have let it go in
        // this round (written, or abandoned): look once more, so that a
        // round never ends empty with a successor that could go on (a
        // drain that stops at an empty round would leave it unwritten).
        for session in waiting {
            if events < self.options.max_batch_events && !self.waits_for_predecessor(&session) {
                self.collect_into(&mut batch, &mut events, session);
            } else {
                again.push(session);
            }
        }
        for session in again {
            self.queue.push(session);
        }
        if batch.is_empty() {
            // Renewed while idle too: a turn's mark outlives its commits.
            // A failure is retried a thirtieth of a lease later (and fails
            // the next commit).
            if let Err(error) = self.keep_alive_if_due(true) {
                self.failed(&error);
            }
            return None;
        }
        Some(self.commit(batch))
    }

    /// Over a shared log, renews this store's lease once a third of it has
    /// passed (invariant 11); nothing over a log that is not shared. An
    /// idle round that failed to renew tries again a thirtieth of a lease
    /// later, not every round (a log that is down would be asked hundreds
    /// of times a second); a commit always tries, and fails without it.
    fn keep_alive_if_due(&self, idle: bool) -> Result<(), LogError> {
        if !self.log.is_shared() {
            return Ok(());
        }
        let mut lease_state = self.lease.lock().unwrap_or_else(|e| e.into_inner());
        let lease = self.options.store_lease;
        if lease_state
            .renewed
            .is_some_and(|at| self.within(at, lease / 3))
            || (idle
                && lease_state
                    .tried
                    .is_some_and(|at| self.within(at, lease / 30)))
        {
            return Ok(());
        }
        // Timed from before the call: the lease the log grants starts no
        // earlier than this.
        let now = self.clock.now();
        lease_state.tried = Some(now);
        self.log.keep_alive(self.store_id, lease)?;
        lease_state.renewed = Some(now);
        Ok(())
    }

    /// Collects `session`'s share of the round into `batch`, or settles it
    /// if it has nothing to write.
    fn collect_into(
        &self,
        batch: &mut Vec<Pending<T>>,
        events: &mut usize,
        session: Arc<Session<T>>,
    ) {
        let pending = self.collect(session, self.options.max_batch_events - *events);
        if pending.records.is_empty()
            && pending.new_life.is_none()
            && pending.closure.is_none()
            && pending.turn_owner.is_none()
        {
            // Nothing to write (an abandoned life, or a wake-up with no new
            // event): nothing to commit for it.
            let _ = self.settle_removed(&pending.session);
            return;
        }
        *events += pending.records.len();
        batch.push(pending);
    }

    /// Whether `session`'s life must wait for its removed predecessor's
    /// events to be durable (invariant 5). Drops the predecessor once they
    /// are.
    fn waits_for_predecessor(&self, session: &Arc<Session<T>>) -> bool {
        let mut predecessor = session
            .predecessor
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // A fenced predecessor will never be durable: its events are lost
        // to another writer (counted when it was fenced), and this life
        // goes ahead (the log decides whether it is still ours). It is
        // kept, not dropped: until this life writes, its watermark is the
        // predecessor's (`Session::durable`), never this life's start,
        // which the log does not hold.
        // `durable()`, not the predecessor's own watermark: a predecessor
        // that itself waits (removed before it wrote anything) reports its
        // own predecessor's, so a chain of removals is written in order.
        // A closed predecessor's closure must be in the log first: written
        // after this life, it would close it.
        // So must its open turn (invariant 11), which the new life clears.
        let Some(old) = predecessor.as_ref() else {
            return false;
        };
        if old.fenced.load(Relaxed) {
            // Kept until this life has written past its start.
            if session.written() > session.identity().start {
                *predecessor = None;
            }
            return false;
        }
        let waiting = old.durable() < session.identity().start
            || old.closure_to_write().is_some()
            || old.turn_to_write();
        if !waiting {
            *predecessor = None;
        }
        waiting
    }

    /// Reads one session's undurable run (at most `room` positions).
    fn collect(&self, session: Arc<Session<T>>, room: usize) -> Pending<T> {
        // Clear first, then read (module docs): Relaxed store, ordered
        // before the reads by the SeqCst fence.
        session.dirty.store(false, Relaxed);
        fence(SeqCst);
        let from = session.written() + 1;
        let tail = session.ring.published_tail();
        let through = tail.min(from.saturating_add(room.max(1) as u64 - 1));
        let incarnation = session.incarnation();
        let mut records: Vec<LogRecord> = Vec::new();
        let mut payload = Vec::new();
        for position in from..=through {
            let hole = match session.ring.read_undurable(position) {
                Undurable::Event(event) => {
                    payload.clear();
                    match self.codec.encode(event.payload(), &mut payload) {
                        Ok(()) => {
                            records.push(LogRecord {
                                position,
                                incarnation,
                                body: RecordBody::Event(StoredEvent {
                                    revision: event.revision().0,
                                    timestamp_nanos: event.timestamp().as_nanos(),
                                    links: event.links().cloned().unwrap_or_default(),
                                    payload: payload.clone(),
                                }),
                            });
                            continue;
                        }
                        Err(_) => {
                            self.counters.unencodable_events.add(1);
                            HoleReason::Unencodable
                        }
                    }
                }
                Undurable::Lost => HoleReason::Lapped,
                // A lapped segment's hand-over in flight (`ring::kept`):
                // its writer queues the session again.
                Undurable::NotYet => break,
            };
            match records.last_mut() {
                Some(LogRecord {
                    body:
                        RecordBody::Hole {
                            count,
                            reason: previous,
                        },
                    ..
                }) if *previous == hole => *count += 1,
                _ => records.push(LogRecord {
                    position,
                    incarnation,
                    body: RecordBody::Hole {
                        count: 1,
                        reason: hole,
                    },
                }),
            }
        }
        let through = records.last().map_or(from - 1, LogRecord::last_position);
        // A removed session that handed out no position of its own has no
        // cursor to answer for: its life is never recorded (recorded late,
        // it would come after a successor's and fence it).
        let abandoned = records.is_empty() && self.settle_removed(&session);
        if abandoned {
            // Its closure and its turn go with it: a successor's life
            // reopens the key, and must not wait for what nobody will
            // write.
            session.closure_written();
            session.turn_settled(false);
        }
        let new_life = (session.life_unrecorded.load(Relaxed) && !abandoned).then(|| Life {
            incarnation,
            first_position: session.identity().start + 1,
        });
        // A closure goes into the commit that reaches its last position
        // (or the next one); closing queues the session, so one that
        // closes after everything was durable gets a round of its own.
        // Read after `dirty` was cleared: `Session::close` stores the
        // closure under a lock it takes before it looks at `dirty`.
        // A turn that drives the session is recorded in this commit or the
        // next, never after its closure (no turn to write once closed; in
        // one commit the log applies the turn before the closure). Both
        // under one take of the session's `end` lock.
        let (closure, turn) = session.end_to_write();
        let closure = closure.filter(|closure| closure.last == through && !abandoned);
        let turn_owner = (turn && !abandoned).then_some(self.store_id);
        // Removed after its closure reached the log, with no re-creation
        // to reopen the key: a life of no events does (a new life clears
        // the closure). Never in the closure's own commit, which would
        // close the new life instead.
        let reopen = closure.is_none()
            && new_life.is_none()
            && records.is_empty()
            && self.needs_reopen(&session)
            && match session.closure() {
                Some(closure) => closure.last == through,
                // Removed with its open turn in the log (invariant 11):
                // once everything it accepted is written.
                None => self
                    .removed_last(&session)
                    .is_some_and(|last| through >= last),
            };
        let new_life = if reopen {
            Some(Life {
                incarnation: Incarnation::fresh(),
                first_position: through + 1,
            })
        } else {
            new_life
        };
        Pending {
            more: through < tail,
            session,
            new_life,
            records,
            closure,
            turn_owner,
            reopen,
            through,
        }
    }

    /// Writes one commit; raises the watermarks if it succeeded, queues the
    /// sessions again if it failed. Returns whether it made progress: a
    /// round whose every session the log refused, and that re-reading the
    /// log did not resolve, is a failure (the caller backs off).
    fn commit(&self, mut batch: Vec<Pending<T>>) -> bool {
        let writing = self.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
        // Sessions the log refused by name, taken out of the commit so that
        // one session's refusal never holds the others back (invariant 6),
        // with whether re-reading the log resolved the refusal.
        let mut set_aside: Vec<(Pending<T>, bool)> = Vec::new();
        let result = loop {
            let keys: Vec<_> = batch.iter().map(|p| p.session.key().clone()).collect();
            let writes: Vec<SessionWrite<'_>> = batch
                .iter()
                .zip(&keys)
                .map(|(pending, key)| SessionWrite {
                    key,
                    // Recorded at restore time meanwhile: not again (the
                    // life that reopens a removed closed key is new).
                    new_life: pending.new_life.filter(|_| {
                        pending.reopen || pending.session.life_unrecorded.load(Relaxed)
                    }),
                    records: &pending.records,
                    closure: pending.closure,
                    turn_owner: pending.turn_owner,
                })
                .collect();
            // The lease first: a turn's mark must never be in the log
            // while its store is not alive there (invariant 11).
            if let Err(error) = self.keep_alive_if_due(false) {
                break Err(error);
            }
            let result = self.log.append(&writes);
            drop(writes);
            // A record the log refuses for good (malformed for it, too
            // large) is written as a hole instead: the rest of its session
            // and of the commit go on (invariant 7).
            if let Err(error @ LogError::InvalidRecord { key, position, .. }) = &result {
                let refused = batch.iter_mut().find(|p| p.session.key() == key);
                if refused.is_some_and(|pending| pending.refuse(*position)) {
                    self.failed(error);
                    self.counters.refused_records.add(1);
                    *self.last_refused.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(key.clone());
                    continue;
                }
            }
            let refused = match &result {
                Err(
                    LogError::NotContiguous { key, .. }
                    | LogError::BadLife { key, .. }
                    | LogError::InvalidRecord { key, .. },
                ) => batch.iter().position(|p| p.session.key() == key),
                _ => None,
            };
            let (Some(index), Err(error)) = (refused, &result) else {
                break result;
            };
            self.failed(error);
            let pending = batch.remove(index);
            let resolved = self.resync(&pending.session);
            set_aside.push((pending, resolved));
            if batch.is_empty() {
                break Ok(());
            }
        };
        let ok = match &result {
            Ok(()) => !batch.is_empty() || set_aside.iter().any(|(_, resolved)| *resolved),
            Err(_) => false,
        };
        match result {
            Ok(()) if !batch.is_empty() => {
                self.counters.commits.add(1);
                for pending in &batch {
                    let mut lost = None;
                    for record in &pending.records {
                        match record.body {
                            RecordBody::Event(_) => self.counters.persisted_events.add(1),
                            RecordBody::Hole { count, reason } => {
                                self.counters.holes.add(1);
                                self.counters.lost_events.add(count);
                                lost.get_or_insert_with(|| {
                                    pending
                                        .session
                                        .lost
                                        .lock()
                                        .unwrap_or_else(|e| e.into_inner())
                                })
                                .record(
                                    record.position,
                                    record.last_position(),
                                    reason,
                                );
                            }
                        }
                    }
                    drop(lost);
                    pending.session.life_unrecorded.store(false, Relaxed);
                    if pending.closure.is_some() {
                        pending.session.closure_written();
                    }
                    if pending.turn_owner.is_some() {
                        pending.session.turn_settled(true);
                    }
                    if pending.reopen {
                        pending.session.reopened();
                    }
                    // Release: a reader that acquires the raised watermark
                    // (a release, a trim) is ordered after the commit.
                    pending.session.durable.store(pending.through, Release);
                    pending.session.ring.release_kept(pending.through);
                }
            }
            Ok(()) => {}
            Err(error) => self.failed(&error),
        }
        drop(writing);
        for pending in batch {
            // A removed closed session comes back once its closure is in:
            // the next round reopens its key.
            if !ok || pending.more || self.needs_reopen(&pending.session) {
                Session::mark_dirty(&pending.session);
            } else {
                let _ = self.settle_removed(&pending.session);
            }
        }
        for (pending, _) in set_aside {
            if pending.session.fenced.load(Relaxed) {
                let _ = self.settle_removed(&pending.session);
            } else {
                Session::mark_dirty(&pending.session);
            }
        }
        self.progress.notify(usize::MAX);
        ok
    }

    /// The log refused `session`'s records: its tail is not where our
    /// watermark says. Either an earlier write of ours landed though its
    /// reply was lost (a network log), or the log lost writes it had
    /// acknowledged, or another writer owns the session now. Re-reads the
    /// log and adopts its tail in the first two cases (the next round
    /// writes from there: what the ring still holds, else a hole), and
    /// fences the session in the third. Returns whether that resolved the
    /// refusal (`false`: the log could not be read, or agrees with us and
    /// refused anyway: retrying at once would only be refused again).
    fn resync(&self, session: &Arc<Session<T>>) -> bool {
        let Ok(meta) = self.log.meta(session.key()) else {
            return false; // unreachable log: retried later, from where we were
        };
        let tail = meta.as_ref().map_or(0, |meta| meta.durable_tail);
        let newest = meta.as_ref().and_then(|meta| meta.current_life());
        let ours = newest.is_some_and(|life| life.incarnation == session.incarnation());
        if ours {
            session.life_unrecorded.store(false, Relaxed);
            let published = session.ring.published_tail();
            let durable = session.written();
            if tail > durable {
                self.counters.recovered_replies.add(1);
                let lost = &mut session.lost.lock().unwrap_or_else(|e| e.into_inner());
                lost.ask_the_log_through(tail);
                // Release: as in `commit`, after the log's read of the tail.
                session.durable.store(tail.min(published), Release);
                session.ring.release_kept(tail.min(published));
            } else if tail < durable {
                self.counters.log_regressions.add(1);
                let lost = &mut session.lost.lock().unwrap_or_else(|e| e.into_inner());
                lost.forget_above(tail);
                // Release: as in `commit`, after the log's read of the tail.
                session.durable.store(tail, Release);
            }
            // Only a moved watermark is progress; a life found recorded
            // alone is retried after the usual backoff.
            tail != durable
        } else if !(session.life_unrecorded.load(Relaxed) && tail == session.identity().start) {
            // Another life is the newest (or the log moved on under a life
            // we have not recorded yet): another writer has the session.
            self.fence(session);
            true
        } else {
            false
        }
    }
}
