//! Forks: a stream that inherits a source stream's data up to an offset,
//! read through its *segments*.
//!
//! Owns [`Segment`] and a stream's layout. A stream's data is a list of
//! segments, each a run of one session's records: a plain stream is one
//! (its own session from its `Created` record on); a fork is its source's
//! segments cut at the fork offset, then its own. Inherited data is read
//! in place from the source's session (pointer-based, nothing is copied
//! but a sub-offset's partial record), so a fork costs one record.
//! Invariants:
//!
//! * **One offset space.** An inherited record has the offset it has in the
//!   source; the fork's own records get offsets after the fork offset
//!   (`at + 1 + k`, tagged with the fork's own life), so offsets stay
//!   sorted and unique across the seam, and an offset names its segment:
//!   its tag is the segment's life and its position lies in the segment's
//!   range (ranges of one layout never overlap).
//! * **Inherited data is fixed.** An inherited segment ends at a durable
//!   position; the source's later appends, closure and deletion never show
//!   through it. The source stays readable while forks need it: deleting
//!   it only soft-deletes it (`SoftDeleted`), until its last fork ends
//!   (`ForkRef` records count them, in the source's own log).
//! * Live reads wait on the fork's own session only.

use crate::key::SessionKey;

use super::error::StreamError;
use super::offset::{Offset, OffsetQuery};

/// A run of one session's records in a stream's layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The session the records are in.
    pub key: SessionKey,
    /// The life they belong to (the `Created` record's position): the tag
    /// of their offsets.
    pub tag: u64,
    /// The first session position of the run (the `Created` record).
    pub first: u64,
    /// The last session position of the run, for an inherited segment
    /// (inclusive); `None` for the stream's own, live segment.
    pub last: Option<u64>,
    /// The offset position of `first`.
    pub base: u64,
}

impl Segment {
    /// The stream's own segment: `key`'s life from `life` on, its offsets
    /// starting at `base`.
    pub fn own(key: SessionKey, life: u64, base: u64) -> Self {
        Self {
            key,
            tag: life,
            first: life,
            last: None,
            base,
        }
    }

    /// The offset of session position `position` (at or after `first - 1`).
    pub fn offset_of(&self, position: u64) -> Offset {
        Offset {
            position: shift(position, self.first, self.base),
            life: self.tag,
        }
    }

    /// The session position of an offset position in this segment.
    pub fn position_of(&self, offset_position: u64) -> u64 {
        shift(offset_position, self.base, self.first)
    }

    /// Whether `offset` is one of this segment's, with the own segment's
    /// session tail `tail`.
    fn holds(&self, offset: Offset, tail: u64) -> bool {
        let last = self.last.unwrap_or(tail);
        offset.life == self.tag
            && offset.position >= self.base
            && offset.position <= self.offset_of(last).position
    }
}

/// `value - from + to`, saturating at both ends (offsets come from
/// clients: no arithmetic on them may overflow).
fn shift(value: u64, from: u64, to: u64) -> u64 {
    if value >= from {
        to.saturating_add(value - from)
    } else {
        to.saturating_sub(from - value)
    }
}

/// Where a read resumes: a segment, and the session position after which
/// it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadAt {
    /// The segment's index in the layout.
    pub segment: usize,
    /// The last session position already read (`first - 1` at its start).
    pub after: u64,
}

/// Finds where a read of `query` starts in `layout`, the own segment's
/// session tail being `tail`.
pub fn locate(layout: &[Segment], tail: u64, query: OffsetQuery) -> Result<ReadAt, StreamError> {
    let own = layout.len() - 1;
    let start = ReadAt {
        segment: 0,
        after: layout[0].first - 1,
    };
    let offset = match query {
        OffsetQuery::Start => return Ok(start),
        OffsetQuery::At(offset) if offset.is_start() => return Ok(start),
        OffsetQuery::Now => {
            return Ok(ReadAt {
                segment: own,
                after: tail,
            })
        }
        OffsetQuery::At(offset) => offset,
    };
    for (index, segment) in layout.iter().enumerate() {
        if segment.holds(offset, tail) {
            return Ok(ReadAt {
                segment: index,
                after: segment.position_of(offset.position),
            });
        }
    }
    let mine = &layout[own];
    let tail_offset = mine.offset_of(tail);
    // An older life of this URL's own session (its lives only grow): gone.
    // A life one of the segments has is this layout's, beyond its run:
    // never issued here (a fork's source offsets past the fork point).
    if offset.life < mine.tag && layout.iter().all(|segment| segment.tag != offset.life) {
        return Err(StreamError::Gone(format!(
            "offset {offset} belongs to an older life of this stream (deleted, then created again): read from -1"
        )));
    }
    Err(StreamError::NeverIssued {
        offset,
        tail: tail_offset,
    })
}

/// The source's layout cut at `at`: what a fork at `at` inherits (nothing
/// for the zero offset). `at` must be an offset of the source at or
/// before its tail `tail`.
pub fn inherit(source: &[Segment], tail: u64, at: Offset) -> Result<Vec<Segment>, StreamError> {
    if at.is_start() {
        return Ok(Vec::new());
    }
    for (index, segment) in source.iter().enumerate() {
        if segment.holds(at, tail) {
            let mut inherited = source[..index].to_vec();
            let mut cut = segment.clone();
            cut.last = Some(segment.position_of(at.position));
            inherited.push(cut);
            return Ok(inherited);
        }
    }
    let own = &source[source.len() - 1];
    Err(StreamError::BadRequest(format!(
        "Stream-Fork-Offset {at} is not an offset of the source at or before its tail {}",
        own.offset_of(tail)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> SessionKey {
        SessionKey::new("", name).unwrap()
    }

    #[test]
    fn a_forks_offsets_continue_its_sources_and_name_their_segment() {
        // Source: life at 3, data at 3..=9. Fork at source offset 6, own
        // life at 1.
        let source = vec![Segment::own(key("s"), 3, 3)];
        let at = source[0].offset_of(6);
        let mut layout = inherit(&source, 9, at).unwrap();
        assert_eq!(layout[0].last, Some(6));
        layout.push(Segment::own(key("f"), 1, at.position + 1));
        let own_first = layout[1].offset_of(1);
        assert!(
            own_first > at,
            "the fork's own offsets sort after the fork point"
        );
        assert_eq!(
            locate(&layout, 4, OffsetQuery::At(source[0].offset_of(4))),
            Ok(ReadAt {
                segment: 0,
                after: 4
            })
        );
        assert_eq!(
            locate(&layout, 4, OffsetQuery::At(layout[1].offset_of(2))),
            Ok(ReadAt {
                segment: 1,
                after: 2
            })
        );
        // Beyond the fork point in the source's space: not the fork's.
        assert!(locate(&layout, 4, OffsetQuery::At(source[0].offset_of(8))).is_err());
        assert_eq!(
            locate(&layout, 4, OffsetQuery::Start),
            Ok(ReadAt {
                segment: 0,
                after: 2
            })
        );
        assert!(inherit(&source, 9, source[0].offset_of(10)).is_err());
        assert_eq!(inherit(&source, 9, Offset::ZERO), Ok(Vec::new()));
    }

    #[test]
    fn an_older_life_of_a_fork_is_gone_and_past_its_fork_point_never_issued() {
        // Source: life at 3, data at 3..=9. The fork's URL had a life at 1
        // (deleted); the fork now there was created at 12, from source
        // offset 6.
        let source = vec![Segment::own(key("s"), 3, 3)];
        let at = source[0].offset_of(6);
        let mut layout = inherit(&source, 9, at).unwrap();
        layout.push(Segment::own(key("f"), 12, at.position + 1));
        let old_life = Segment::own(key("f"), 1, 1).offset_of(2);
        assert!(matches!(
            locate(&layout, 13, OffsetQuery::At(old_life)),
            Err(StreamError::Gone(_))
        ));
        assert!(matches!(
            locate(&layout, 13, OffsetQuery::At(source[0].offset_of(8))),
            Err(StreamError::NeverIssued { .. })
        ));
        let beyond = Offset {
            position: u64::MAX,
            life: u64::MAX,
        };
        assert!(matches!(
            locate(&layout, 13, OffsetQuery::At(beyond)),
            Err(StreamError::NeverIssued { .. })
        ));
    }
}
