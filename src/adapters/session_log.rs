//! [`SessionLog`]: seeds 000/001's durable session log.

use std::sync::Arc as StdArc;
use std::time::Duration;

use super::{AdapterError, Durable};
use crate::event::Event;
use crate::key::SessionKey;
use crate::store::ReplayStore;
use crate::sync::Arc;

/// A per-session, append-only, durable log with 1-based ordinals (the
/// `SessionLog` of seeds 000/001), over a durable [`ReplayStore`].
///
/// * [`append`](Self::append) returns the highest ordinal assigned, durable
///   when it returns;
/// * [`load_since`](Self::load_since) returns every event with an ordinal
///   above the cursor, in order, skipping archived ones;
/// * [`archive_before`](Self::archive_before) is monotonic and returns how
///   many events it archived.
///
/// ```
/// use std::sync::Arc;
/// use livereplay::adapters::SessionLog;
/// use livereplay::durable::MemoryLog;
/// use livereplay::{ReplayStore, SessionKey, Utf8};
///
/// let store = Arc::new(
///     ReplayStore::<String>::builder()
///         .durable(Arc::new(MemoryLog::new()), Utf8)
///         .build()?,
/// );
/// let log = SessionLog::new(store)?;
/// let thread = SessionKey::new("acme", "thread-1")?;
/// assert_eq!(log.append(&thread, ["a".into(), "b".into()])?, 2);
/// assert_eq!(log.load_since(&thread, 1)?[0].payload(), "b");
/// assert_eq!(log.archive_before(&thread, 1)?, 1);
/// assert_eq!(log.load_since(&thread, 0)?.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SessionLog<T> {
    durable: Durable<T>,
}

impl<T: Send + Sync + 'static> SessionLog<T> {
    /// A view of `store`, which must have a durable log.
    pub fn new(store: StdArc<ReplayStore<T>>) -> Result<Self, AdapterError> {
        Ok(Self {
            durable: Durable::new(store)?,
        })
    }

    /// How long an append waits for durability (default 10 s).
    pub fn with_durable_timeout(mut self, timeout: Duration) -> Self {
        self.durable.timeout = timeout;
        self
    }

    /// Appends `events` (visible all at once) and returns the highest
    /// ordinal assigned; with no events, the highest ordinal so far.
    pub fn append(
        &self,
        key: &SessionKey,
        events: impl IntoIterator<Item = T>,
    ) -> Result<u64, AdapterError> {
        match self.durable.append(key, events.into_iter().collect())? {
            Some((_, last)) => Ok(last),
            None => Ok(self.durable.latest(key)?.unwrap_or(0)),
        }
    }

    /// Every event with an ordinal above `cursor` (0: from the beginning),
    /// in ordinal order; archived ordinals are skipped.
    pub fn load_since(
        &self,
        key: &SessionKey,
        cursor: u64,
    ) -> Result<Vec<Arc<Event<T>>>, AdapterError> {
        self.durable.load_after(key, cursor)
    }

    /// Archives every ordinal `<= watermark`; monotonic (a lower watermark
    /// is a no-op). Returns how many events it archived.
    pub fn archive_before(&self, key: &SessionKey, watermark: u64) -> Result<usize, AdapterError> {
        let archived = self.durable.store.archive_before(key, watermark)?;
        Ok(usize::try_from(archived).unwrap_or(usize::MAX))
    }
}
