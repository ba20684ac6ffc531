//! [`LostPositions`]: the positions one session's persister wrote as
//! holes, so that no wait reports them durable (the persister's invariant 8).
//!
//! Invariants: ranges are ascending, disjoint, and adjacent ranges of one
//! reason are merged; a position at or below `forgotten_through` (dropped
//! past the cap, or written by a commit whose reply was lost) is answered
//! by the log, never by this record.

use crate::error::HoleReason;

/// The positions of one session the persister wrote as holes, so that no
/// wait reports them durable. Holes are rare (the log failed or stalled
/// past the ring, or refused a record), so a short list: past
/// [`LostPositions::MAX_RANGES`] the oldest ranges are dropped and the
/// positions they covered are looked up in the log instead.
#[derive(Debug, Default)]
pub(crate) struct LostPositions {
    /// `(first, last, reason)`, ascending, adjacent ranges of one reason
    /// merged.
    ranges: Vec<(u64, u64, HoleReason)>,
    /// Positions at or below this may be in a dropped range.
    forgotten_through: u64,
}

/// Whether a position is known lost.
pub(crate) enum Lost {
    /// The persister wrote it in a hole, for this reason, through this
    /// position.
    Yes(HoleReason, u64),
    /// It did not (as far as this session knows).
    No,
    /// Ask the log: the position is older than what this session tracks.
    AskTheLog,
}

impl LostPositions {
    const MAX_RANGES: usize = 64;

    pub(crate) fn record(&mut self, first: u64, last: u64, reason: HoleReason) {
        match self.ranges.last_mut() {
            Some((_, end, previous)) if *end + 1 == first && *previous == reason => *end = last,
            _ => self.ranges.push((first, last, reason)),
        }
        if self.ranges.len() > Self::MAX_RANGES {
            let (_, end, _) = self.ranges.remove(0);
            self.forgotten_through = end;
        }
    }

    /// The log was found ahead of the watermark (a commit landed though
    /// its reply was lost): which of those positions are holes only the
    /// log knows, so ask it for everything up to `tail`.
    pub(crate) fn ask_the_log_through(&mut self, tail: u64) {
        self.forgotten_through = self.forgotten_through.max(tail);
    }

    /// The log was found behind the watermark (it lost writes it had
    /// acknowledged): what is above `tail` is written again, holes
    /// included, and recorded then.
    pub(crate) fn forget_above(&mut self, tail: u64) {
        self.ranges.retain(|&(first, _, _)| first <= tail);
        if let Some((_, last, _)) = self.ranges.last_mut() {
            *last = (*last).min(tail);
        }
    }

    /// Whether `position` (of a session that starts after `start`) is lost.
    pub(crate) fn at(&self, position: u64, start: u64) -> Lost {
        if position <= start || position <= self.forgotten_through {
            return Lost::AskTheLog;
        }
        match self
            .ranges
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&position))
        {
            Some(&(_, last, reason)) => Lost::Yes(reason, last),
            None => Lost::No,
        }
    }
}
