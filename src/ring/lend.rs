//! A replay that lends the events in place instead of handing out
//! references to them.
//!
//! `Ring::read_range` clones an `Arc` for every event it returns, into a
//! `Vec`, and the caller drops them later: two atomic writes to each event
//! (about 10 ns each on the machine BENCHMARKS.md was measured on) and an
//! allocation, which a host that only encodes and sends the events does
//! not need. A loan of 100 events costs about a sixth of that replay.
//!
//! It does not make a concurrent writer's appends cheaper. What a
//! replaying reader costs a writer whose ring laps is the reuse of memory
//! the reader has read, whether or not the reader wrote to it; a lending
//! reader at the same replay rate costs the writer about as much
//! (docs/benchmark-history.md, "Issue 13, fifth round").
//!
//! [`Ring::lend_range`] reads the same range through the same directory
//! entries, but keeps each segment it read alive with the entry's guard
//! ([`Loaded`]: no reference count) and lends the events to the caller's
//! closure as `&Event<T>` ([`LentEvents`]). The reader then only reads the
//! events' lines; a caller copies out what it keeps (a payload, or the
//! bytes it encoded).
//!
//! # Invariants
//!
//! 1. **Nothing is freed under a loan.** Every segment holding a lent
//!    event is held by its [`Loaded`] until the closure returns, whatever
//!    the writers lap or trim meanwhile (the ring's invariant 6): a lapped
//!    segment is kept whole, as it is for a subscription holding it.
//! 2. **A loan is all or nothing, with `read_range`'s answer.** The closure
//!    runs only once every position of the range was found set in its own
//!    segment and the floor was re-checked after that, in the same order
//!    as `read_range`; otherwise the first position it could not serve is
//!    returned and the closure never runs.
//! 3. **A lent event does not change during the loan.** A slot changes only
//!    through `&mut Segment`, which needs the segment's only reference; the
//!    loan holds one (the directory's guard, which a writer that takes the
//!    segment out turns into a counted reference).
//!
//! The price of invariant 1 is the caller's to choose: a segment lapped
//! during a long loan cannot be recycled, so the writer that lapped it
//! allocates a fresh one, and the lapped one (with its events) is freed by
//! the thread whose loan ends last.

use std::fmt;
use std::iter::FusedIterator;
use std::ops::Range;

use super::segment::Segment;
use super::slot::WriteOnce;
use super::Ring;
use crate::event::Event;
use crate::sync::Loaded;

/// The part of a loan that lies in one segment.
struct Span<T> {
    segment: Loaded<Segment<T>>,
    offsets: Range<usize>,
}

impl<T> Span<T> {
    /// The span's slots (none if the segment were gone, which a span's
    /// making rules out).
    fn slots(&self) -> &[WriteOnce<Event<T>>] {
        self.segment
            .get()
            .map_or(&[], |segment| segment.slots(self.offsets.clone()))
    }
}

/// Events lent by a replay, oldest first: an iterator of `&Event<T>` that
/// lives no longer than the closure it was lent to.
///
/// Made by [`ReplayStore::replay_with`](crate::ReplayStore::replay_with)
/// and [`SessionHandle::replay_with`](crate::SessionHandle::replay_with).
/// Its length is exact, and cloning it is cheap (it restarts from where
/// the clone was made, without touching the events).
pub struct LentEvents<'a, T> {
    /// The spans not entered yet.
    spans: &'a [Span<T>],
    /// The slots of the span being read, not yet yielded.
    slots: std::slice::Iter<'a, WriteOnce<Event<T>>>,
    remaining: usize,
}

impl<'a, T> LentEvents<'a, T> {
    /// No events (a cursor at the tail).
    pub(crate) fn empty() -> Self {
        Self::new(&[], 0)
    }

    fn new(spans: &'a [Span<T>], count: usize) -> Self {
        Self {
            spans,
            slots: [].iter(),
            remaining: count,
        }
    }
}

impl<'a, T> Iterator for LentEvents<'a, T> {
    type Item = &'a Event<T>;

    #[inline]
    fn next(&mut self) -> Option<&'a Event<T>> {
        loop {
            match self.slots.next() {
                // Always set (invariants 2 and 3); an empty slot would
                // only shorten the loan.
                Some(slot) => {
                    if let Some(event) = slot.peek() {
                        self.remaining = self.remaining.saturating_sub(1);
                        return Some(event);
                    }
                }
                None => {
                    let (span, rest) = self.spans.split_first()?;
                    self.spans = rest;
                    self.slots = span.slots().iter();
                }
            }
        }
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl<T> ExactSizeIterator for LentEvents<'_, T> {}

impl<T> FusedIterator for LentEvents<'_, T> {}

impl<T> Clone for LentEvents<'_, T> {
    fn clone(&self) -> Self {
        Self {
            spans: self.spans,
            slots: self.slots.clone(),
            remaining: self.remaining,
        }
    }
}

impl<T> fmt::Debug for LentEvents<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LentEvents")
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl<T> Ring<T> {
    /// Lends the events at `from..=to` (all `<= P`) to `lend`, or returns
    /// the first position it could not read (trimmed meanwhile) without
    /// calling `lend`: the same answer as `read_range`, read the same way.
    pub(crate) fn lend_range<R>(
        &self,
        from: u64,
        to: u64,
        lend: impl FnOnce(LentEvents<'_, T>) -> R,
    ) -> Result<R, u64> {
        if from > to {
            return Ok(lend(LentEvents::empty()));
        }
        let count = to - from + 1;
        // Segments the range spans, at most (a short first one included).
        let spans_at_most = count.div_ceil(self.directory.segment_len_of(1)) + 1;
        let mut spans = Vec::with_capacity(spans_at_most as usize);
        let mut position = from;
        while position <= to {
            let place = self.directory.place(position);
            let segment_len = self.directory.segment_len_of(place.segment);
            let segment_end = to.min(position + (segment_len - place.offset as u64) - 1);
            let offsets = place.offset..place.offset + (segment_end - position + 1) as usize;
            let loaded = self.directory.load(place);
            match loaded.get() {
                Some(segment) if segment.number() == place.segment => {
                    if let Some(unset) = offsets.clone().find(|&o| !segment.is_published(o)) {
                        return Err(position + (unset - place.offset) as u64);
                    }
                }
                _ => return Err(position),
            }
            spans.push(Span {
                segment: loaded,
                offsets,
            });
            position = segment_end + 1;
        }
        if from <= self.floor().min(to) {
            // A trim raised the floor into what we read: not servable whole.
            return Err(from);
        }
        Ok(lend(LentEvents::new(&spans, count as usize)))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::super::tests::event;
    use super::*;
    use crate::sync::Arc;

    fn filled(capacity: usize, events: &[Arc<Event<u64>>]) -> Ring<u64> {
        let ring = Ring::new(capacity);
        for event in events {
            ring.claim(1);
            ring.publish(event);
        }
        ring
    }

    #[test]
    fn a_loan_yields_the_range_in_order_across_segment_seams() {
        // Capacity 2048: a first segment of 16, then 64 each.
        let events: Vec<_> = (1..=200).map(event).collect();
        let ring = filled(2048, &events);
        for (from, to) in [(1, 200), (10, 17), (16, 16), (17, 80), (81, 81), (5, 150)] {
            let lent = ring
                .lend_range(from, to, |lent| {
                    assert_eq!(lent.len(), (to - from + 1) as usize);
                    lent.map(|event| event.payload).collect::<Vec<_>>()
                })
                .expect("all published");
            assert!(lent.into_iter().eq(from..=to), "{from}..={to}");
        }
        assert!(ring
            .lend_range(7, 6, |lent| lent.len() == 0)
            .expect("empty"));
    }

    #[test]
    fn a_loan_counts_no_reference_to_the_events() {
        let events: Vec<_> = (1..=20).map(event).collect();
        let ring = filled(64, &events);
        ring.lend_range(1, 20, |lent| {
            for (event, lent) in events.iter().zip(lent) {
                assert!(std::ptr::eq(&**event, lent), "the event itself");
                assert_eq!(Arc::strong_count(event), 2, "ours and the slot's");
            }
        })
        .expect("all published");
    }

    #[test]
    fn a_loan_is_refused_where_a_read_is() {
        let ring = Ring::new(8);
        ring.claim(3);
        ring.publish(&event(1));
        ring.publish(&event(3));
        // 2 is not published: no loan, and the closure never runs.
        assert_eq!(ring.lend_range(1, 3, |_| unreachable!()), Err(2));
        ring.publish(&event(2));
        ring.raise_floor(1, 0);
        assert_eq!(ring.lend_range(1, 3, |_| unreachable!()), Err(1));
        assert_eq!(ring.lend_range(2, 3, |lent| lent.count()), Ok(2));
    }

    /// Under Miri (`.ci/run`) this also checks the loans' reads against
    /// the writer's frees and reuses for races and use-after-free.
    #[test]
    fn loans_racing_a_lapping_writer_are_whole_runs_or_refused() {
        // Capacity 16: two directory entries of 16, lapped every 16 appends.
        let ring = Ring::<u64>::new(16);
        let last = if cfg!(miri) { 150 } else { 20_000 };
        let (mut whole, mut refused) = (0, 0);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for position in 1..=last {
                    ring.claim(1);
                    ring.publish(&event(position));
                }
            });
            while ring.published_tail() < last {
                let tail = ring.published_tail();
                let from = tail.saturating_sub(7).max(1);
                let lent = ring.lend_range(from, tail, |lent| {
                    lent.map(|event| event.payload).collect::<Vec<_>>()
                });
                match lent {
                    Ok(payloads) => {
                        assert!(payloads.into_iter().eq(from..=tail), "{from}..={tail}");
                        whole += 1;
                    }
                    Err(unread) => {
                        assert!(
                            (from..=tail).contains(&unread),
                            "{unread} of {from}..={tail}"
                        );
                        refused += 1;
                    }
                }
                std::thread::yield_now();
            }
        });
        assert!(whole + refused > 0, "the reader read while the writer ran");
    }

    #[test]
    fn a_segment_lapped_during_a_loan_is_kept_whole_until_it_ends() {
        // Capacity 4: segments of 4 positions, 2 directory entries.
        let events: Vec<_> = (1..=16).map(event).collect();
        let ring = filled(4, &events[..4]);
        let lent = ring.lend_range(1, 4, |mut lent| {
            let first = lent.next().expect("1");
            // Lap the segment 1..=4 twice while it is lent.
            for event in &events[4..] {
                ring.claim(1);
                ring.publish(event);
            }
            assert!(matches!(ring.read(1), super::super::Read::Trimmed));
            assert_eq!(first.payload, 1, "still readable");
            assert_eq!(Arc::strong_count(&events[0]), 2, "not freed");
            std::iter::once(first.payload)
                .chain(lent.map(|event| event.payload))
                .collect::<Vec<_>>()
        });
        assert_eq!(lent, Ok(vec![1, 2, 3, 4]));
        assert_eq!(
            Arc::strong_count(&events[0]),
            1,
            "freed once the loan ended"
        );
    }
}
