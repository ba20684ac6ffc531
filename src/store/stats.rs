//! [`Stats`] and [`DurableStats`]: the counters an operator reads. Taking
//! them walks the sessions (O(sessions)); nothing here adds work to the
//! append path (appends are read off each ring's position counter, rare
//! events have store-wide counters).

use crate::key::SessionKey;

use super::ReplayStore;

impl<T: Send + Sync + 'static> ReplayStore<T> {
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
            closed_sessions: counters.closures.get(),
            appends_refused_closed: counters.refused_after_close.get(),
            ..Stats::default()
        };
        if let Some(persistence) = &self.persistence {
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
                interrupted_turns: c.interrupted_turns.get(),
                fenced_sessions: c.fenced_sessions.get(),
                fenced_events: c.fenced_events.get(),
                log_regressions: c.log_regressions.get(),
                undurable_events: 0,
                last_fenced,
                waiting_sessions: 0,
                refused_records: c.refused_records.get(),
                recovered_replies: c.recovered_replies.get(),
                last_refused,
                kept_bytes: persistence.keep_budget.used(),
                kept_segments: persistence.keep_budget.segments().0,
                let_go_segments: persistence.keep_budget.segments().1,
                last_error: persistence.last_error(),
            });
        }
        let now = self.shared.now();
        self.sessions.for_each(|_, session| {
            if let Some(durable) = stats.durable.as_mut() {
                let watermark = session.durable();
                durable.undurable_events += session.ring.published_tail().saturating_sub(watermark);
                if watermark < session.identity().start && !session.predecessor_is_fenced() {
                    durable.waiting_sessions += 1;
                }
            }
            stats.appends += session.last_claimed() - session.identity().start;
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
    /// Sessions closed since the store was built
    /// ([`ReplayStore::close_session`]; a second close of one is not
    /// counted).
    pub closed_sessions: u64,
    /// Appends refused because their session was closed: producers that
    /// kept writing after the end of their turn.
    pub appends_refused_closed: u64,
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
    /// Turns a store that is gone left open (its process died, or it was
    /// dropped with the turn alive), closed
    /// [`Interrupted`](crate::CloseReason::Interrupted) when this store
    /// restored their sessions (module `closure`).
    pub interrupted_turns: u64,
    /// Sessions another writer took over in the log (a newer life there):
    /// their later events stay in this store's rings and are not written.
    pub fenced_sessions: u64,
    /// Events accepted by fenced sessions of this store and never written
    /// (another writer had the session), counted when such a session is
    /// dropped from memory (evicted or removed and let go); while it is
    /// resident they are in `undurable_events`.
    pub fenced_events: u64,
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
    /// Bytes of undurable events kept now past their rings' windows, for
    /// the persister (at most about
    /// [`DurableOptions::undurable_budget`](crate::DurableOptions::undurable_budget)).
    pub kept_bytes: u64,
    /// Lapped segments kept for the persister so far (each up to 64
    /// events).
    pub kept_segments: u64,
    /// Lapped undurable segments let go because the budget was spent:
    /// their events are written as holes (in `lost_events`).
    pub let_go_segments: u64,
    /// The last error the log returned, if any.
    pub last_error: Option<String>,
}
