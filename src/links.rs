//! Causal links: what an event may say about where it came from.
//!
//! An event appended with [`ReplayStore::append_linked`] (or
//! [`SessionHandle::append_linked`]) carries [`Links`]: a parent (any
//! earlier event of the same tenant, named by an [`EventRef`], which a
//! [`Cursor`] converts into), a correlation id, a kind, a lane, and whether
//! it waits for an acknowledgement. The ring keeps them with the event; the
//! persister writes them into the durable log's records; the log's causal
//! index (module `dag`, feature `dag`) is built from them, off the append
//! path.
//!
//! # What an append checks, and what it does not
//!
//! An append never waits, so links are checked for **shape** only:
//!
//! * a parent in another tenant is refused ([`LinkError::CrossTenant`]): the
//!   index is per tenant, and a link across tenants would leak one tenant's
//!   history into another's queries;
//! * position 0 names no event ([`LinkError::NoSuchPosition`]);
//! * a correlation id, kind or lane longer than [`MAX_LINK_LEN`] bytes is
//!   refused ([`LinkError::TooLong`]): they are index keys.
//!
//! A parent that does not exist (yet) is accepted: the queries report it as
//! missing, and the index resolves it if it is appended later.
//!
//! An append without links costs what it did before links existed: the
//! event holds `None` (one word, no allocation).
//!
//! [`ReplayStore::append_linked`]: crate::ReplayStore::append_linked
//! [`SessionHandle::append_linked`]: crate::SessionHandle::append_linked

use std::fmt;

use thiserror::Error;

use crate::cursor::Cursor;
use crate::key::SessionKey;

/// The longest correlation id, kind or lane an append accepts, in bytes.
pub const MAX_LINK_LEN: usize = 1024;

/// A reference to one event: its session and position.
///
/// ```
/// use livereplay::{Cursor, EventRef, Revision, SessionKey};
///
/// let key = SessionKey::new("acme", "turn-1")?;
/// let cursor = Cursor::new(key.clone(), None, Revision(1), 7);
/// assert_eq!(EventRef::from(&cursor), EventRef::new(key, 7));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EventRef {
    /// The session (its tenant is the event's tenant).
    pub key: SessionKey,
    /// The 1-based position in that session.
    pub position: u64,
}

impl EventRef {
    /// The event at `position` of `key`'s session.
    pub fn new(key: SessionKey, position: u64) -> Self {
        Self { key, position }
    }
}

impl From<&Cursor> for EventRef {
    /// The event a cursor was issued for (the last one its holder saw).
    fn from(cursor: &Cursor) -> Self {
        Self::new(cursor.key().clone(), cursor.position())
    }
}

impl fmt::Debug for EventRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.key, self.position)
    }
}

impl fmt::Display for EventRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.key, self.position)
    }
}

/// Causal links an event may carry.
///
/// Built with the chained setters; every field is optional.
///
/// ```
/// use livereplay::{EventRef, Links, SessionKey};
///
/// let key = SessionKey::new("acme", "turn-1")?;
/// let links = Links::new()
///     .parent(EventRef::new(key, 3))
///     .correlation("call-42")
///     .kind("tool_result")
///     .lane("tools")
///     .requires_ack();
/// assert!(!links.is_empty());
/// assert!(Links::new().is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Links {
    /// The event this one follows from.
    pub parent: Option<EventRef>,
    /// A correlation id shared by related events.
    pub correlation: Option<Box<str>>,
    /// What kind of event this is (the caller's vocabulary).
    pub kind: Option<Box<str>>,
    /// The lane (sub-agent, tool, UI) it belongs to.
    pub lane: Option<Box<str>>,
    /// Whether the event waits for an acknowledgement.
    pub requires_ack: bool,
}

impl Links {
    /// No link at all.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the parent.
    pub fn parent(mut self, parent: impl Into<EventRef>) -> Self {
        self.parent = Some(parent.into());
        self
    }

    /// Sets the correlation id.
    pub fn correlation(mut self, id: impl Into<Box<str>>) -> Self {
        self.correlation = Some(id.into());
        self
    }

    /// Sets the kind.
    pub fn kind(mut self, kind: impl Into<Box<str>>) -> Self {
        self.kind = Some(kind.into());
        self
    }

    /// Sets the lane.
    pub fn lane(mut self, lane: impl Into<Box<str>>) -> Self {
        self.lane = Some(lane.into());
        self
    }

    /// Marks the event as waiting for an acknowledgement.
    pub fn requires_ack(mut self) -> Self {
        self.requires_ack = true;
        self
    }

    /// Whether there is no link at all (the common case, stored as one byte).
    pub fn is_empty(&self) -> bool {
        self.parent.is_none()
            && self.correlation.is_none()
            && self.kind.is_none()
            && self.lane.is_none()
            && !self.requires_ack
    }

    /// Checks the shape of links an event of `key`'s session would carry
    /// (see the module docs).
    pub fn check_for(&self, key: &SessionKey) -> Result<(), LinkError> {
        if let Some(parent) = &self.parent {
            if parent.key.tenant() != key.tenant() {
                return Err(LinkError::CrossTenant {
                    tenant: key.tenant().into(),
                    parent: parent.clone(),
                });
            }
            if parent.position == 0 {
                return Err(LinkError::NoSuchPosition {
                    parent: parent.clone(),
                });
            }
        }
        for (field, value) in [
            ("correlation", &self.correlation),
            ("kind", &self.kind),
            ("lane", &self.lane),
        ] {
            if let Some(value) = value {
                if value.len() > MAX_LINK_LEN {
                    return Err(LinkError::TooLong {
                        field,
                        len: value.len(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Links an append refused; nothing was appended.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The parent belongs to another tenant.
    #[error(
        "the parent {parent} is in another tenant than {tenant:?}; links stay within a tenant"
    )]
    CrossTenant {
        /// The appending session's tenant.
        tenant: Box<str>,
        /// The parent given.
        parent: EventRef,
    },
    /// The parent names position 0, which no event has (positions start at
    /// 1; a start cursor names nothing).
    #[error(
        "the parent {parent} names position 0, which no event has; use the cursor of an event"
    )]
    NoSuchPosition {
        /// The parent given.
        parent: EventRef,
    },
    /// A correlation id, kind or lane is longer than [`MAX_LINK_LEN`].
    #[error("the link's {field} is {len} bytes; at most {MAX_LINK_LEN} are accepted")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tenant: &str, session: &str) -> SessionKey {
        SessionKey::new(tenant, session).unwrap()
    }

    #[test]
    fn a_parent_in_another_tenant_is_refused() {
        let links = Links::new().parent(EventRef::new(key("b", "s"), 1));
        assert!(matches!(
            links.check_for(&key("a", "s")),
            Err(LinkError::CrossTenant { .. })
        ));
        assert_eq!(links.check_for(&key("b", "other")), Ok(()));
    }

    #[test]
    fn position_zero_and_long_fields_are_refused() {
        let zero = Links::new().parent(EventRef::new(key("a", "s"), 0));
        assert!(matches!(
            zero.check_for(&key("a", "s")),
            Err(LinkError::NoSuchPosition { .. })
        ));
        let long = Links::new().kind("k".repeat(MAX_LINK_LEN + 1));
        assert_eq!(
            long.check_for(&key("a", "s")),
            Err(LinkError::TooLong {
                field: "kind",
                len: MAX_LINK_LEN + 1
            })
        );
        let just = Links::new().lane("l".repeat(MAX_LINK_LEN));
        assert_eq!(just.check_for(&key("a", "s")), Ok(()));
    }
}
