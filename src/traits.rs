//! The dyn-compatible trait of seed `002` (`LiveReplayStore`), so a runtime
//! can hold `Arc<dyn LiveReplayStore<T>>` and swap implementations.

use crate::cursor::{Cursor, Revision};
use crate::error::Error;
use crate::event::Event;
use crate::key::SessionKey;
use crate::store::ReplayStore;
use crate::subscription::Subscription;
use crate::sync::Arc;

/// Bounded, best-effort live replay for host reconnects.
///
/// Every method is synchronous and non-blocking: a runtime calls it from
/// its turn loop without awaiting.
///
/// ```
/// use std::sync::Arc;
/// use livereplay::{Cursor, LiveReplayStore, ReplayStore, Revision, SessionKey};
///
/// let store: Arc<dyn LiveReplayStore<String>> = Arc::new(ReplayStore::default());
/// let key = SessionKey::new("acme", "chat-1")?;
/// store.append(&key, Revision(1), "hi".into())?;
/// assert_eq!(store.current_cursor(&key).position(), 1);
/// assert_eq!(store.replay_after_cursor(&Cursor::start(key))?.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait LiveReplayStore<T>: Send + Sync {
    /// Appends one event and returns it with its position and cursor.
    fn append(
        &self,
        key: &SessionKey,
        revision: Revision,
        payload: T,
    ) -> Result<Arc<Event<T>>, Error>;

    /// The events after `cursor`, or a gap.
    fn replay_after_cursor(&self, cursor: &Cursor) -> Result<Vec<Arc<Event<T>>>, Error>;

    /// Every event after `cursor`, buffered then live, or a gap.
    fn subscribe_after_cursor(&self, cursor: &Cursor) -> Result<Subscription<T>, Error>;

    /// The latest cursor of the session (the start cursor if it is unknown).
    fn current_cursor(&self, key: &SessionKey) -> Cursor;

    /// Applies retention now; returns how many events were freed.
    fn trim_session(&self, key: &SessionKey) -> Result<usize, Error>;
}

impl<T: Send + Sync + 'static> LiveReplayStore<T> for ReplayStore<T> {
    fn append(
        &self,
        key: &SessionKey,
        revision: Revision,
        payload: T,
    ) -> Result<Arc<Event<T>>, Error> {
        ReplayStore::append(self, key, revision, payload)
    }

    fn replay_after_cursor(&self, cursor: &Cursor) -> Result<Vec<Arc<Event<T>>>, Error> {
        ReplayStore::replay_after_cursor(self, cursor)
    }

    fn subscribe_after_cursor(&self, cursor: &Cursor) -> Result<Subscription<T>, Error> {
        ReplayStore::subscribe_after_cursor(self, cursor)
    }

    fn current_cursor(&self, key: &SessionKey) -> Cursor {
        ReplayStore::current_cursor(self, key)
    }

    fn trim_session(&self, key: &SessionKey) -> Result<usize, Error> {
        Ok(ReplayStore::trim_session(self, key))
    }
}
