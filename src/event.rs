//! Events: what an append stores and a replay returns.
//!
//! An event is immutable once built and shared as `Arc<Event<T>>`: the ring
//! holds one reference (in its segment), every reader that returned it holds
//! others. It knows its own position and incarnation, so it can always name
//! its own cursor.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cursor::{Cursor, Incarnation, Revision};
use crate::key::SessionKey;
use crate::links::{EventRef, Links};

/// Wall-clock time of an append, in nanoseconds since the UNIX epoch, as
/// read from the store's [`Clock`](crate::Clock).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// From nanoseconds since the UNIX epoch.
    pub const fn from_nanos(nanos: u64) -> Self {
        Self(nanos)
    }

    /// Nanoseconds since the UNIX epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// As a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.0)
    }

    /// How long before `now` this is; zero if it is not before `now` (a
    /// clock that stepped back never makes an event look older).
    pub fn elapsed_at(self, now: Timestamp) -> Duration {
        Duration::from_nanos(now.0.saturating_sub(self.0))
    }
}

/// One appended event.
pub struct Event<T> {
    pub(crate) key: SessionKey,
    pub(crate) incarnation: Incarnation,
    pub(crate) revision: Revision,
    pub(crate) position: u64,
    pub(crate) timestamp: Timestamp,
    /// `None` for an event appended without links: one word, no allocation.
    pub(crate) links: Option<Box<Links>>,
    pub(crate) payload: T,
}

impl<T> Event<T> {
    /// The session it belongs to.
    pub fn key(&self) -> &SessionKey {
        &self.key
    }

    /// The incarnation of the session it was appended to.
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// The revision given at append.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Its 1-based position in the session.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// When it was appended.
    pub fn timestamp(&self) -> Timestamp {
        self.timestamp
    }

    /// The causal links it was appended with, if any.
    pub fn links(&self) -> Option<&Links> {
        self.links.as_deref()
    }

    /// The reference other events use to name it as their parent.
    pub fn reference(&self) -> EventRef {
        EventRef::new(self.key.clone(), self.position)
    }

    /// The payload.
    pub fn payload(&self) -> &T {
        &self.payload
    }

    /// The cursor that means "seen up to and including this event": what a
    /// host sends to its client (as an SSE `id:`, say) to resume from.
    pub fn cursor(&self) -> Cursor {
        Cursor::new(
            self.key.clone(),
            Some(self.incarnation),
            self.revision,
            self.position,
        )
    }
}

impl<T: fmt::Debug> fmt::Debug for Event<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("key", &self.key)
            .field("incarnation", &self.incarnation)
            .field("revision", &self.revision.0)
            .field("position", &self.position)
            .field("timestamp", &self.timestamp)
            .field("links", &self.links)
            .field("payload", &self.payload)
            .finish()
    }
}
