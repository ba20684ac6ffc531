//! Where a session the map does not hold starts: after a removed session
//! still on its way to the log, after the log's durable tail as a new life
//! (or closed, as the log says it is or as a turn left open by a store
//! that is gone makes it: persister invariant 11), or new. Called outside
//! the map's lock (it may read the log); the map decides under its lock
//! whether the answer is still current, so an answer may be dropped: what
//! it counts is counted when the session is made (`Persistence::created`).

use crate::closure::CloseReason;
use crate::cursor::{Incarnation, Revision};
use crate::durable::SessionMeta;
use crate::error::Refusal;
use crate::key::SessionKey;
use crate::session::{Identity, Restored, Session};
use crate::sync::Arc;

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

pub(crate) fn restore_identity<T>(
    persistence: Option<&Persistence<T>>,
    key: &SessionKey,
) -> Result<Restored<T>, Refusal> {
    let Some(persistence) = persistence else {
        return Ok(Restored {
            identity: Identity::fresh(),
            record_life: false,
            predecessor: None,
            closed: None,
            interrupted: false,
        });
    };
    // A removed incarnation still being written: continue after its last
    // claimed position (the log does not have it yet).
    if let Some((removed, last)) = persistence.removed_pending(key) {
        return Ok(continuing_after(removed, last));
    }
    let meta = persistence
        .log
        .meta(key)
        .map_err(|error| Refusal::LogUnavailable {
            reason: error.to_string(),
        })?;
    let Some(meta) = meta else {
        return Ok(Restored {
            identity: Identity::fresh(),
            record_life: true,
            predecessor: None,
            closed: None,
            interrupted: false,
        });
    };
    let mut incarnation = Incarnation::fresh();
    while meta.life_of(incarnation).is_some() {
        incarnation = Incarnation::fresh();
    }
    persistence.counters.restored_sessions.add(1);
    let interrupted = persistence.left_open_by_a_gone_store(&meta);
    let closed = meta
        .closure
        .filter(|closure| closure.last == meta.durable_tail)
        .map(|closure| closure.reason)
        .or(interrupted.then_some(CloseReason::Interrupted));
    Ok(Restored {
        identity: Identity {
            incarnation,
            start: meta.durable_tail,
            start_revision: Revision(meta.last_revision),
            previous: meta
                .current_life()
                .map(|life| (life.incarnation, meta.durable_tail)),
        },
        // A closed session takes no appends: no life of its own to record
        // (its cursors name the life that closed it).
        record_life: closed.is_none(),
        predecessor: None,
        closed,
        interrupted,
    })
}

impl<T> Persistence<T> {
    /// Whether `meta`'s newest life has a turn another store left open on
    /// a log that is not shared: that store is gone (one store at a time
    /// has such a log), so the turn was interrupted (invariant 11).
    pub(crate) fn left_open_by_a_gone_store(&self, meta: &SessionMeta) -> bool {
        meta.closure.is_none()
            && !self.log.is_shared()
            && meta.open_turn.is_some_and(|store| store != self.store_id)
    }
}
