//! How a session ends: [`Closure`], the store's own end-of-turn record.
//!
//! A turn loop that is done with a session *closes* it
//! ([`ReplayStore::close_session`](crate::ReplayStore::close_session),
//! [`SessionHandle::close`](crate::SessionHandle::close)) with a
//! [`CloseReason`]. Closing is what lets a reader tell "the producer is
//! finished" from "the producer is slow" or "the producer died": without it
//! a reader of a turn whose process went away waits forever, and one that
//! missed a "done" message in the payloads never learns it.
//!
//! What a closure promises (the session module and the persister keep it):
//!
//! * **One end.** The first close wins: its reason and its last position
//!   are the session's for the rest of its life; a second close returns
//!   the first one.
//! * **Nothing after it.** Closing seals the ring at `last`: every append
//!   claimed before the seal is delivered to readers (they read through
//!   `last`, waiting for appends in flight), every append after it is
//!   refused with [`Refusal::SessionClosed`](crate::Refusal::SessionClosed).
//! * **Every reader sees it.** A subscription or catch-up that has
//!   delivered position `last` ends with the closure
//!   ([`TryNextError::Closed`](crate::TryNextError::Closed)), never with a
//!   gap and never by waiting; the SSE dialect sends it as a `closed` frame.
//! * **Durable.** With a durable log, the persister writes the closure
//!   into the session's log meta in the commit that makes `last` durable
//!   (or the next one); a store restored from the log finds the session
//!   closed, and a catch-up of a session nobody holds in memory ends with
//!   it too.
//! * **Removal reopens.** A closed session stays readable and closed until
//!   it is removed (a restart or an eviction restores it closed). Removing
//!   it reopens the key: the next session under it is a new, open life that
//!   continues after the closed one. Subscriptions of the closed
//!   incarnation still read through its last position and end with its
//!   closure; a catch-up over a durable log goes on into the next life. With
//!   a log the persister writes the closure and then records the reopening
//!   (a new life, which clears the closure in the log), so a restore after
//!   that finds the key open too. Over a log several nodes share, a node
//!   cannot tell whether it still writes the key, and a life it recorded
//!   for a key another node writes would fence that writer: there the log
//!   learns of the reopening only from a re-creation's own life (a
//!   re-creation on the removing node before the removed session is
//!   through), and a restore after that finds the key closed.

use std::fmt;

/// Why a session was closed.
///
/// With the `serde` feature it serialises as its variant (the Durable
/// Streams records store it so; variants are only ever added at the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum CloseReason {
    /// The producer finished normally.
    Done,
    /// The producer failed; its last events may say why.
    Error,
    /// Somebody stopped the turn before it finished (a user, a timeout).
    Cancelled,
    /// The producer went away without closing (its process or connection
    /// died); whoever noticed closed it on its behalf.
    Interrupted,
}

impl CloseReason {
    /// Every reason, in tag order.
    pub const ALL: [CloseReason; 4] = [
        CloseReason::Done,
        CloseReason::Error,
        CloseReason::Cancelled,
        CloseReason::Interrupted,
    ];

    /// A stable one-byte tag, for logs that store the reason.
    pub fn to_tag(self) -> u8 {
        match self {
            CloseReason::Done => 1,
            CloseReason::Error => 2,
            CloseReason::Cancelled => 3,
            CloseReason::Interrupted => 4,
        }
    }

    /// The reason for a tag written by [`CloseReason::to_tag`].
    pub fn from_tag(tag: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.to_tag() == tag)
    }

    /// Its lower-case name (`done`, `error`, `cancelled`, `interrupted`),
    /// as the SSE dialect and the Durable Streams server write it.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Done => "done",
            CloseReason::Error => "error",
            CloseReason::Cancelled => "cancelled",
            CloseReason::Interrupted => "interrupted",
        }
    }

    /// The reason named `name` by [`CloseReason::as_str`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.as_str() == name)
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A session's end: why, and its last position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Closure {
    /// Why it was closed.
    pub reason: CloseReason,
    /// The last position the session accepted (0 if it had none): readers
    /// that delivered it have everything.
    pub last: u64,
}

impl fmt::Display for Closure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "closed ({}) after position {}", self.reason, self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_names_round_trip_and_unknown_ones_are_refused() {
        for reason in CloseReason::ALL {
            assert_eq!(CloseReason::from_tag(reason.to_tag()), Some(reason));
            assert_eq!(CloseReason::from_name(reason.as_str()), Some(reason));
        }
        assert_eq!(CloseReason::from_tag(0), None);
        assert_eq!(CloseReason::from_tag(5), None);
        assert_eq!(CloseReason::from_name("Done"), None);
    }
}
