//! [`Turn`]: a session handle that closes its session when it goes away.
//!
//! A reader's worst case is a producer that died without saying so: it
//! waits on a turn that will never end. A `Turn` owns one
//! [`SessionHandle`] and closes its session exactly once: with the reason
//! given to [`Turn::finish`], or, if it is dropped first (a panic
//! unwinding, a cancelled task, an early `?` return), with
//! [`CloseReason::Interrupted`].
//!
//! A process that dies outright runs no drop. With a durable log the turn
//! covers that too: making a `Turn` records in the log that a turn of this
//! store drives the session (persister invariant 11), and the closure
//! clears it. A store restored from a log that is not shared (redb: one
//! process at a time) that finds a turn another store left open restores
//! the session closed `Interrupted` at its durable tail and writes that
//! closure, so a reader resuming after the crash ends with it instead of
//! waiting. Over a shared log (Redis, Postgres) a turn on another node may
//! be alive: each store holds a lease there
//! ([`DurableOptions::store_lease`](crate::DurableOptions::store_lease)),
//! and once a dead node's lease has run out, the next node to touch the
//! session (a reader at its tail, a writer) closes it `Interrupted` the
//! same way. A node that only stalled past its lease finds its session
//! fenced: what it appends after that is counted lost, never written
//! after the closure.

use std::fmt;

use super::SessionHandle;
use crate::closure::{CloseReason, Closure};
use crate::error::Error;

/// A session handle that closes its session when dropped; see the module
/// docs. Derefs to the [`SessionHandle`] for appends and reads.
///
/// ```
/// use livereplay::{CloseReason, Cursor, NextTimeoutError, ReplayStore, Revision, SessionKey};
/// use std::time::Duration;
///
/// let store = ReplayStore::<String>::default();
/// let key = SessionKey::new("acme", "turn-8")?;
/// let mut reader = store.subscribe_after_cursor(&Cursor::start(key.clone()))?;
/// let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
///     let turn = store.session(&key).unwrap().into_turn();
///     turn.append(Revision(1), "thinking".into()).unwrap();
///     panic!("the model call failed");
/// }));
/// assert!(outcome.is_err());
/// assert_eq!(reader.next_timeout(Duration::from_secs(1))?.payload(), "thinking");
/// let Err(NextTimeoutError::Closed(closure)) = reader.next_timeout(Duration::from_secs(1)) else {
///     panic!("the reader learns the turn ended");
/// };
/// assert_eq!(closure.reason, CloseReason::Interrupted);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Turn<T> {
    handle: SessionHandle<T>,
    /// Cleared by `finish`: the session is closed already.
    on_drop: Option<CloseReason>,
}

impl<T: Send + Sync + 'static> Turn<T> {
    pub(crate) fn new(handle: SessionHandle<T>) -> Self {
        Self {
            handle,
            on_drop: Some(CloseReason::Interrupted),
        }
    }

    /// Closes the session with `reason` (done, error, cancelled) and ends
    /// the turn. If the session was closed already, that closure is
    /// returned (the first close wins).
    pub fn finish(mut self, reason: CloseReason) -> Result<Closure, Error> {
        self.on_drop = None;
        self.handle.close(reason)
    }

    /// The handle the turn appends through.
    pub fn handle(&self) -> &SessionHandle<T> {
        &self.handle
    }
}

impl<T> std::ops::Deref for Turn<T> {
    type Target = SessionHandle<T>;

    fn deref(&self) -> &SessionHandle<T> {
        &self.handle
    }
}

impl<T> Drop for Turn<T> {
    fn drop(&mut self) {
        if let Some(reason) = self.on_drop.take() {
            // A removed session refuses: nothing to close then.
            let _ = crate::session::Session::close(self.handle.session(), reason);
        }
    }
}

impl<T> fmt::Debug for Turn<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Turn")
            .field("key", self.handle.session().key())
            .field("finished", &self.on_drop.is_none())
            .finish()
    }
}
