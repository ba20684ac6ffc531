//! Where a session the map does not hold starts: after a removed session
//! still on its way to the log, after the log's durable tail as a new life
//! (or closed, as the log says it is or as a turn left open by a store
//! that is gone makes it: persister invariant 11), or new. Called outside
//! the map's lock (it may read the log); the map decides under its lock
//! whether the answer is still current, so an answer may be dropped: what
//! it counts is counted when the session is made (`Persistence::created`),
//! but for a turn it closes over a shared log, which it writes itself (a
//! dropped answer's closure is still the log's: a second one, made by the
//! answer that won, closes a life of its own at the same tail).

use crate::closure::{CloseReason, Closure};
use crate::cursor::{Incarnation, Revision};
use crate::durable::{Life, LogError, SessionMeta, SessionWrite};
use crate::error::Refusal;
use crate::event::Timestamp;
use crate::key::SessionKey;
use crate::session::{Identity, Restored, Session};
use crate::sync::Arc;
use std::time::Duration;

use super::Persistence;

/// The identity of a session the map does not know: restored from the
/// durable log if it remembers the session (a new life that continues
/// after the durable tail), else new. The flag says whether the life must
/// be recorded in the log.
///
/// A restored session always starts a new incarnation: the previous
/// process may have handed out positions past the durable tail before it
/// died, so continuing its incarnation could hand a position out twice.
/// A new life that continues after `removed` (removed with `last` its
/// last position), recorded once `removed` is through. If `removed` was
/// closed, this life reopens the key (its life, recorded after the
/// closure, clears it in the log), so the persister need not.
pub(crate) fn continuing_after<T>(removed: Arc<Session<T>>, last: u64) -> Restored<T> {
    removed.succeeded();
    Restored {
        identity: Identity {
            incarnation: Incarnation::fresh(),
            start: last,
            start_revision: removed.ring.revision_at(last),
            previous: Some((removed.incarnation(), last)),
        },
        record_life: true,
        predecessor: Some(removed),
        closed: None,
        interrupted: false,
    }
}

/// A session nobody knew: a fresh identity, its life recorded in the log
/// if there is one.
fn new_session<T>(record_life: bool) -> Restored<T> {
    Restored {
        identity: Identity::fresh(),
        record_life,
        predecessor: None,
        closed: None,
        interrupted: false,
    }
}

pub(crate) fn restore_identity<T>(
    persistence: Option<&Persistence<T>>,
    key: &SessionKey,
) -> Result<Restored<T>, Refusal> {
    let Some(persistence) = persistence else {
        return Ok(new_session(false));
    };
    // A removed incarnation still being written: continue after its last
    // claimed position (the log does not have it yet).
    if let Some((removed, last)) = persistence.removed_pending(key) {
        return Ok(continuing_after(removed, last));
    }
    // A turn closed over a shared log is written before the session is
    // made (`close_interrupted`); the log refusing it means it moved on
    // (the turn's store, only stalled, wrote more, or another store closed
    // it first), and the meta is read again. A log that keeps moving for a
    // few rounds refuses the restore for now: a plain restore would write
    // a new life that clears the turn's mark, and the turn would never be
    // closed (its readers would wait for good).
    let mut interrupting = INTERRUPT_ATTEMPTS;
    loop {
        let meta = persistence
            .log
            .meta(key)
            .map_err(|error| Refusal::LogUnavailable {
                reason: error.to_string(),
            })?;
        let Some(meta) = meta else {
            return Ok(new_session(true));
        };
        let identity = after_the_log(&meta);
        let interrupted = persistence.left_open_by_a_gone_store(&meta);
        if interrupted && persistence.log.is_shared() {
            interrupting -= 1;
            if persistence.close_interrupted(key, &identity)? {
                persistence.counters.restored_sessions.add(1);
                return Ok(Restored {
                    identity,
                    record_life: false,
                    predecessor: None,
                    closed: Some(CloseReason::Interrupted),
                    // Written: nothing left for the persister.
                    interrupted: false,
                });
            }
            if interrupting > 0 {
                continue;
            }
            return Err(Refusal::LogUnavailable {
                reason: format!(
                    "it kept changing under {INTERRUPT_ATTEMPTS} attempts to close a turn \
                     a gone store left open"
                ),
            });
        }
        persistence.counters.restored_sessions.add(1);
        let closed = meta
            .closure
            .filter(|closure| closure.last == meta.durable_tail)
            .map(|closure| closure.reason)
            .or(interrupted.then_some(CloseReason::Interrupted));
        return Ok(Restored {
            identity,
            // A closed session takes no appends: no life of its own to
            // record (its cursors name the life that closed it).
            record_life: closed.is_none(),
            predecessor: None,
            closed,
            interrupted,
        });
    }
}

/// A new life after the log's durable tail, with an incarnation the log
/// has never seen for the session.
fn after_the_log(meta: &SessionMeta) -> Identity {
    let mut incarnation = Incarnation::fresh();
    while meta.life_of(incarnation).is_some() {
        incarnation = Incarnation::fresh();
    }
    Identity {
        incarnation,
        start: meta.durable_tail,
        start_revision: Revision(meta.last_revision),
        previous: meta
            .current_life()
            .map(|life| (life.incarnation, meta.durable_tail)),
    }
}

/// How many times a restore tries to close a turn interrupted over a
/// shared log while the log keeps moving on, before it refuses with
/// [`Refusal::LogUnavailable`] (the caller's next try starts again).
const INTERRUPT_ATTEMPTS: u32 = 3;

impl<T> Persistence<T> {
    /// Whether `meta`'s newest life has a turn another store left open
    /// and that store is gone, so the turn was interrupted (invariant 11).
    /// Over a log that is not shared it is gone (one store at a time has
    /// such a log); over a shared log it is gone once its lease ran out.
    /// A log that cannot answer counts as saying it is alive: a blip never
    /// closes a turn.
    pub(crate) fn left_open_by_a_gone_store(&self, meta: &SessionMeta) -> bool {
        let Some(owner) = meta.open_turn.filter(|&store| store != self.store_id) else {
            return false;
        };
        meta.closure.is_none() && (!self.log.is_shared() || !self.store_alive(owner))
    }

    /// Closes in the log, over a shared log, a turn its gone store left
    /// open ([`Persistence::left_open_by_a_gone_store`] said so of `meta`),
    /// without making the session here: what a reader's catch-up does, so
    /// that no closed session of this node's would stand for the key after
    /// the log moved on (another node's newer life reopening it). The
    /// reader then reads the closure from the log. `Ok(false)` as for
    /// `close_interrupted`.
    pub(crate) fn interrupt_in_log(
        &self,
        key: &SessionKey,
        meta: &SessionMeta,
    ) -> Result<bool, Refusal> {
        self.close_interrupted(key, &after_the_log(meta))
    }

    /// Closes, over a shared log, a turn its gone store left open: one
    /// write of a new life of this store's (`identity`, after the durable
    /// tail) and its closure at that tail (invariant 11). The new life
    /// clears the turn's mark and fences the turn's store, were it only
    /// stalled: its records no longer carry the newest life (invariant 6).
    /// `Ok(false)` if the log refused it for this session (it moved on
    /// since the meta was read, or another store closed it first).
    fn close_interrupted(&self, key: &SessionKey, identity: &Identity) -> Result<bool, Refusal> {
        let write = SessionWrite {
            key,
            new_life: Some(Life {
                incarnation: identity.incarnation,
                first_position: identity.start + 1,
            }),
            records: &[],
            closure: Some(Closure {
                reason: CloseReason::Interrupted,
                last: identity.start,
            }),
            turn_owner: None,
        };
        match self.log.append(&[write]) {
            Ok(()) => {
                self.counters.interrupted_turns.add(1);
                Ok(true)
            }
            Err(LogError::BadLife { .. } | LogError::NotContiguous { .. }) => Ok(false),
            Err(error) => Err(Refusal::LogUnavailable {
                reason: error.to_string(),
            }),
        }
    }

    /// Whether the store `owner` is alive on the shared log, an answer of
    /// `true` kept for a tenth of a lease.
    fn store_alive(&self, owner: u64) -> bool {
        let fresh = self.options.store_lease / 10;
        let mut seen = self.seen_alive.lock().unwrap_or_else(|e| e.into_inner());
        if seen.get(&owner).is_some_and(|&at| self.within(at, fresh)) {
            return true;
        }
        let asked = self.clock.now();
        let alive = self.log.store_alive(owner).unwrap_or(true);
        if alive {
            seen.insert(owner, asked);
        } else {
            seen.remove(&owner);
        }
        // Bounded by the stores whose turns this store's readers wait on;
        // a long-lived store forgets the stale answers now and then.
        if seen.len() > 1024 {
            seen.retain(|_, &mut at| self.within(at, fresh));
        }
        alive
    }

    /// Whether less than `span` has passed since `then` on the store's
    /// clock (a clock that stepped back says no: the answer is renewed).
    pub(super) fn within(&self, then: Timestamp, span: Duration) -> bool {
        let now = self.clock.now().as_nanos();
        now >= then.as_nanos() && u128::from(now - then.as_nanos()) < span.as_nanos()
    }
}
