//! Errors. Every one is typed, `Send + Sync + 'static`, and says what to do.
//!
//! * [`Gap`] — the store cannot serve a cursor; it carries the reason, the
//!   requested cursor, the latest cursor (where to resume after reloading a
//!   snapshot) and, where known, how many events were missed, so recovery
//!   takes one step.
//! * [`CursorError`](crate::CursorError) — the cursor itself is unusable.
//! * [`Refusal`] — a configured bound refused an append; nothing changed.
//! * [`Error`] — any of the three, for the store's methods.

use std::fmt;

use thiserror::Error;

use crate::closure::Closure;
use crate::cursor::{Cursor, CursorError};
use crate::links::LinkError;

/// Why a cursor cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GapReason {
    /// The event after the cursor was trimmed (capacity, age or watermark).
    Trimmed,
    /// The cursor is beyond the session's published tail, or the session is
    /// unknown here.
    Unavailable,
    /// The cursor belongs to an earlier incarnation of the session (it was
    /// evicted, removed, or the process restarted).
    Reset,
    /// Events after the cursor were accepted but no tier holds them: the
    /// ring overwrote them while the durable log stalled or failed (a hole
    /// the log recorded), or the process crashed before they were persisted
    /// (the cursor is beyond its life's durable end). `missed` says how many.
    Lost,
}

impl fmt::Display for GapReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GapReason::Trimmed => "the events after the cursor were trimmed",
            GapReason::Unavailable => "the cursor is not available here",
            GapReason::Reset => "the session was reset since the cursor was issued",
            GapReason::Lost => "the events after the cursor were lost before they were persisted",
        })
    }
}

/// The store cannot continue from a cursor: reload a snapshot from the
/// durable source, then resume after [`Gap::latest`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("gap at position {}: {reason}{}; reload a snapshot and resume after the latest cursor (position {})",
    .requested.position(),
    .missed.map(|n| format!(" ({n} events missed)")).unwrap_or_default(),
    .latest.position())]
pub struct Gap {
    /// Why.
    pub reason: GapReason,
    /// The cursor that was asked for.
    pub requested: Cursor,
    /// The session's latest cursor when the gap was found: what a snapshot
    /// taken now covers, and where to resume after reloading it.
    pub latest: Cursor,
    /// How many events after `requested` can no longer be served, where
    /// known (trimming, losses); `None` for `Unavailable` and `Reset`.
    pub missed: Option<u64>,
}

/// A configured bound refused an append or a session creation; the store
/// is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    /// Creating the session would exceed `max_sessions`, even after evicting
    /// idle sessions.
    #[error("the store holds its maximum of {max} sessions; raise Config::max_sessions or remove finished sessions")]
    TooManySessions {
        /// The configured bound.
        max: usize,
    },
    /// A batch larger than the session's capacity could never be replayed
    /// whole.
    #[error("a batch of {len} events exceeds the session capacity of {capacity}; split it")]
    BatchTooLarge {
        /// The batch's length.
        len: usize,
        /// The session capacity.
        capacity: usize,
    },
    /// The payload is larger than the configured payload limit.
    #[error("the payload weighs {size} bytes; the store accepts at most {max}")]
    PayloadTooLarge {
        /// What the weigher said.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// The session was removed with `remove_session` while this handle was
    /// held; get a new handle with `ReplayStore::session`.
    #[error("the session was removed; get a new handle from the store to start a new incarnation")]
    SessionRemoved,
    /// The session was closed (see [`Closure`]): it takes no more appends.
    /// Removing it reopens the key for a new life.
    #[error(
        "the session is {closure}: it takes no more appends; remove it to start a new life under its key"
    )]
    SessionClosed {
        /// How it ended.
        closure: Closure,
    },
    /// The session is not in memory and the durable log, which knows where
    /// its positions continue, could not be read. Nothing was appended; try
    /// again once the log is reachable.
    #[error("the durable log could not be read to restore the session ({reason}); retry later")]
    LogUnavailable {
        /// What the log said.
        reason: String,
    },
}

/// Any error of the store's methods.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// The cursor is unusable.
    #[error(transparent)]
    Cursor(#[from] CursorError),
    /// The cursor cannot be served; see [`Gap`].
    #[error(transparent)]
    Gap(#[from] Gap),
    /// A configured bound refused the call.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The append's links are malformed; nothing was appended.
    #[error(transparent)]
    Link(#[from] LinkError),
}

impl Error {
    /// The gap, if this is one.
    pub fn as_gap(&self) -> Option<&Gap> {
        match self {
            Error::Gap(gap) => Some(gap),
            _ => None,
        }
    }
}

/// Why [`Subscription::try_next`](crate::Subscription::try_next) returned
/// no event.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TryNextError {
    /// Nothing new yet; try again later or wait.
    #[error("no new event yet")]
    Empty,
    /// The subscriber fell out of the retention window (or the session was
    /// reset); the subscription has ended. Resubscribe after reloading.
    #[error(transparent)]
    Gap(Gap),
    /// The session was closed and every event through its last position
    /// was delivered: nothing more will come. The subscription has ended.
    #[error("the session is {0}; everything was delivered")]
    Closed(Closure),
    /// The subscription ended earlier (after its gap or closure).
    #[error("the subscription has ended; resubscribe")]
    Ended,
}

/// Why [`Subscription::next_timeout`](crate::Subscription::next_timeout)
/// returned no event.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NextTimeoutError {
    /// Nothing arrived within the timeout.
    #[error("no new event within the timeout")]
    Timeout,
    /// See [`TryNextError::Gap`].
    #[error(transparent)]
    Gap(Gap),
    /// See [`TryNextError::Closed`].
    #[error("the session is {0}; everything was delivered")]
    Closed(Closure),
    /// See [`TryNextError::Ended`].
    #[error("the subscription has ended; resubscribe")]
    Ended,
}

/// Why a hole was recorded: why positions no tier holds were lost (a
/// [`GapReason::Lost`] gap's cause). Defined here, beside the gaps, so the
/// core can remember holes without importing the log that records them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HoleReason {
    /// The ring overwrote the events before the persister could write them:
    /// the log was stalled or failing for longer than the ring's window.
    Lapped,
    /// The events could not be encoded by the store's codec.
    Unencodable,
    /// The log refused the record for good (malformed for it, or too
    /// large), so it was written as a hole instead.
    Refused,
}

impl HoleReason {
    /// A stable one-byte tag, for backends that store the reason.
    pub fn to_tag(self) -> u8 {
        match self {
            HoleReason::Lapped => 1,
            HoleReason::Unencodable => 2,
            HoleReason::Refused => 3,
        }
    }

    /// The reason for a tag written by [`HoleReason::to_tag`].
    pub fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            1 => Some(HoleReason::Lapped),
            2 => Some(HoleReason::Unencodable),
            3 => Some(HoleReason::Refused),
            _ => None,
        }
    }
}

impl fmt::Display for HoleReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HoleReason::Lapped => "lapped by the ring before it was persisted",
            HoleReason::Unencodable => "the payload could not be encoded",
            HoleReason::Refused => "the log refused the record",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_error<E: std::error::Error + Send + Sync + 'static>() {}

    #[test]
    fn errors_are_send_sync_static() {
        assert_error::<Error>();
        assert_error::<Gap>();
        assert_error::<TryNextError>();
        assert_error::<NextTimeoutError>();
        assert_error::<crate::ConfigError>();
        assert_error::<crate::KeyError>();
    }
}
