//! The public handles on one session: [`SessionHandle`], which a turn loop
//! appends through and readers replay and subscribe with,
//! [`SessionWriter`] (module `writer`), a single thread's writer that skips
//! the directory, and [`Turn`] (module `turn`), a handle that closes its
//! session when it goes away.
//!
//! Owns no state of its own: a handle is a [`Held`] reference to a
//! [`Session`] (module `session`), and every operation is the session's,
//! with the store's rules already applied there. Invariants kept here:
//!
//! * while a handle (or a writer, or a subscription) exists, its session is
//!   held and never evicted: the `Held` is made under the map's shard lock
//!   and counted in the session's holders until dropped;
//! * a handle always appends to the incarnation it was made for: a removed
//!   session refuses with [`Refusal::SessionRemoved`](crate::Refusal::SessionRemoved), it
//!   never forwards to a successor under the same key.
//!
//! This module sits above `session`, `subscription` and `ring`, and below
//! `map` and `store`: the session does not know its handles, so the core's
//! imports run one way (`scripts/layers.py` checks it).

mod turn;
mod writer;

use std::fmt;

use crate::cursor::{Cursor, Incarnation, Revision};
use crate::error::Error;
use crate::event::Event;
use crate::key::SessionKey;
use crate::links::Links;
use crate::ring::LentEvents;
use crate::session::{Held, Session};
use crate::subscription::Subscription;
use crate::sync::Arc;

pub use self::turn::Turn;
pub use self::writer::SessionWriter;

/// A session's handle: appends and reads with no map lookup and no lock.
///
/// A turn loop takes one with [`ReplayStore::session`] and appends through
/// it inline. While a handle exists its session is never evicted. If the
/// session is removed ([`ReplayStore::remove_session`]), appends through the
/// handle are refused with [`Refusal::SessionRemoved`](crate::Refusal::SessionRemoved).
///
/// ```
/// use livereplay::{ReplayStore, Revision, SessionKey, Cursor};
///
/// let store = ReplayStore::<String>::default();
/// let key = SessionKey::new("acme", "chat-1")?;
/// let session = store.session(&key)?;
/// let first = session.append(Revision(1), "Hel".to_string())?;
/// session.append(Revision(1), "lo".to_string())?;
/// let after_first = session.replay_after(&first.cursor())?;
/// assert_eq!(after_first[0].payload(), "lo");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// [`ReplayStore::session`]: crate::ReplayStore::session
/// [`ReplayStore::remove_session`]: crate::ReplayStore::remove_session
pub struct SessionHandle<T> {
    session: Held<T>,
}

impl<T> SessionHandle<T> {
    pub(crate) fn new(session: Held<T>) -> Self {
        Self { session }
    }

    pub(crate) fn session(&self) -> &Arc<Session<T>> {
        &self.session
    }
}

impl<T> Clone for SessionHandle<T> {
    fn clone(&self) -> Self {
        Self {
            session: self.session.clone(),
        }
    }
}

impl<T: Send + Sync + 'static> SessionHandle<T> {
    /// The session's key.
    pub fn key(&self) -> &SessionKey {
        self.session.key()
    }

    /// The incarnation this handle appends to.
    pub fn incarnation(&self) -> Incarnation {
        self.session.incarnation()
    }

    /// Appends one event; see [`ReplayStore::append`](crate::ReplayStore::append).
    #[inline]
    pub fn append(&self, revision: Revision, payload: T) -> Result<Arc<Event<T>>, Error> {
        Ok(Session::append(&self.session, revision, payload)?)
    }

    /// Closes the session; see
    /// [`ReplayStore::close_session`](crate::ReplayStore::close_session).
    /// Refused with [`Refusal::SessionRemoved`](crate::Refusal::SessionRemoved)
    /// if it was removed.
    pub fn close(&self, reason: crate::CloseReason) -> Result<crate::Closure, Error> {
        Ok(Session::close(&self.session, reason)?)
    }

    /// The session's closure, if it was closed.
    pub fn closure(&self) -> Option<crate::Closure> {
        self.session.closure()
    }

    /// This handle as a [`Turn`]: it closes the session when dropped
    /// (`Interrupted`) unless [`Turn::finish`] closed it first. With a
    /// durable log the turn is recorded there too, so that if this store
    /// goes away first (the process dies), the store restored after it
    /// closes the session `Interrupted` (see [`Turn`]).
    pub fn into_turn(self) -> Turn<T> {
        Session::open_turn(&self.session);
        Turn::new(self)
    }

    /// A writer for one thread: appends that skip the directory lookup and
    /// hand back the position instead of the event (see [`SessionWriter`]).
    pub fn writer(&self) -> SessionWriter<T> {
        SessionWriter::new(self.clone())
    }

    /// Appends one event with causal links; see
    /// [`ReplayStore::append_linked`](crate::ReplayStore::append_linked).
    pub fn append_linked(
        &self,
        revision: Revision,
        payload: T,
        links: Links,
    ) -> Result<Arc<Event<T>>, Error> {
        links.check_for(self.key())?;
        let links = (!links.is_empty()).then(|| Box::new(links));
        Ok(Session::append_with(
            &self.session,
            revision,
            payload,
            links,
        )?)
    }

    /// Appends a batch visible all at once; see
    /// [`ReplayStore::append_batch`](crate::ReplayStore::append_batch).
    pub fn append_batch(
        &self,
        revision: Revision,
        payloads: impl IntoIterator<Item = T>,
    ) -> Result<Vec<Arc<Event<T>>>, Error> {
        Ok(Session::append_batch(
            &self.session,
            revision,
            payloads.into_iter().collect(),
        )?)
    }

    /// Events after `cursor`, which must be for this session.
    pub fn replay_after(&self, cursor: &Cursor) -> Result<Vec<Arc<Event<T>>>, Error> {
        cursor.check_key(self.key())?;
        Ok(self.session.replay_after(cursor)?)
    }

    /// The events after `cursor` (which must be for this session), lent
    /// to `read` in place instead of returned: the same events and the
    /// same gaps as [`replay_after`](Self::replay_after), with no
    /// reference counted per event. See
    /// [`ReplayStore::replay_with`](crate::ReplayStore::replay_with).
    ///
    /// ```
    /// use livereplay::{Cursor, ReplayStore, Revision, SessionKey};
    ///
    /// let store = ReplayStore::<String>::default();
    /// let handle = store.session(&SessionKey::new("tenant", "chat")?)?;
    /// for word in ["lent", "not", "cloned"] {
    ///     handle.append(Revision(1), word.to_owned())?;
    /// }
    /// let start = Cursor::start(handle.key().clone());
    /// let line = handle.replay_with(&start, |events| {
    ///     events.map(|event| event.payload().as_str()).collect::<Vec<_>>().join(" ")
    /// })?;
    /// assert_eq!(line, "lent not cloned");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn replay_with<R>(
        &self,
        cursor: &Cursor,
        read: impl FnOnce(LentEvents<'_, T>) -> R,
    ) -> Result<R, Error> {
        cursor.check_key(self.key())?;
        Ok(self.session.lend_after(cursor, read)?)
    }

    /// Subscribes after `cursor`, which must be for this session.
    pub fn subscribe_after(&self, cursor: &Cursor) -> Result<Subscription<T>, Error> {
        cursor.check_key(self.key())?;
        Ok(Subscription::start(self.session.clone(), cursor)?)
    }

    /// The cursor at the published tail.
    pub fn current_cursor(&self) -> Cursor {
        self.session.current_cursor()
    }

    /// The latest published position, `None` before the first event.
    pub fn latest_position(&self) -> Option<u64> {
        self.session.latest_position()
    }

    /// Events retained now.
    pub fn event_count(&self) -> u64 {
        self.session.retained(self.session.shared.now())
    }

    /// Trims every position `<= watermark`; returns how many retained
    /// events it freed. A watermark below an earlier one is a no-op; one
    /// beyond the published tail is clamped to it.
    pub fn release_through(&self, watermark: u64) -> usize {
        self.session.release_through(watermark)
    }

    /// Applies age retention now; returns how many events it freed.
    pub fn trim(&self) -> usize {
        self.session.trim(self.session.shared.now())
    }
}

impl<T> fmt::Debug for SessionHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SessionHandle")
            .field(&**self.session)
            .finish()
    }
}
