//! A segment: `len` consecutive positions of one session, each written at
//! most once.
//!
//! Invariant: the slot of position `p` is written only by the writer that
//! claimed `p`, exactly once, and never changes afterwards while the
//! segment lives. Readers therefore never race a replacement: a slot is
//! empty (not published yet) or holds the one event of its position.
//! A segment's storage is reused only once it has left the window and no
//! other thread holds a reference to it: its owner then empties the slots
//! (`&mut`, see [`super::recycler`]) and gives it a new number before it
//! goes back into the directory, so no reader ever sees a slot change.

use super::slot::WriteOnce;
use crate::event::Event;
use crate::sync::Arc;

/// Not aligned to a cache line: the `Arc`'s reference counts share the
/// line with the number and slot pointer every append reads. A replay reads
/// a segment in place without counting a reference; only a subscription
/// takes one, once per segment it enters. Aligning the fields to their own
/// line measured the same (append with a replaying reader, fan-out to 64
/// subscribers, delivery) and cost every session 88 bytes.
pub(crate) struct Segment<T> {
    /// Which segment of the session this is (see the directory for the
    /// positions it covers).
    number: u64,
    slots: Box<[WriteOnce<Event<T>>]>,
}

impl<T> Segment<T> {
    pub(crate) fn new(number: u64, len: usize) -> Self {
        Self {
            number,
            slots: (0..len).map(|_| WriteOnce::new()).collect(),
        }
    }

    pub(crate) fn number(&self) -> u64 {
        self.number
    }

    /// Publishes `event` in slot `offset`. Only the writer that claimed the
    /// position calls this, once.
    #[inline]
    pub(crate) fn publish(&self, offset: usize, event: &Arc<Event<T>>) {
        self.publish_owned(offset, Arc::clone(event));
    }

    /// [`Segment::publish`], moving the writer's reference into the slot.
    #[inline]
    pub(crate) fn publish_owned(&self, offset: usize, event: Arc<Event<T>>) {
        let position = event.position;
        let first_write = self.slots[offset].set(event);
        debug_assert!(first_write, "position {position} written twice");
    }

    /// The event at `offset`, if it is published.
    #[inline]
    pub(crate) fn get(&self, offset: usize) -> Option<Arc<Event<T>>> {
        self.slots[offset].get()
    }

    /// The event at `offset`, if it is published, lent for as long as the
    /// segment is borrowed (no reference taken).
    #[inline]
    pub(crate) fn peek(&self, offset: usize) -> Option<&Event<T>> {
        self.slots.get(offset)?.peek()
    }

    /// The slots at `offsets` (clamped to the segment), for a reader that
    /// goes through them in order (see `ring::lend`).
    #[inline]
    pub(crate) fn slots(&self, offsets: std::ops::Range<usize>) -> &[WriteOnce<Event<T>>] {
        self.slots.get(offsets).unwrap_or(&[])
    }

    /// Whether the event at `offset` is published (no reference taken).
    #[inline]
    pub(crate) fn is_published(&self, offset: usize) -> bool {
        self.slots[offset].is_set()
    }

    /// Slots in the segment.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Empties slot `offset` (out of range: `None`). Needs the segment
    /// exclusively: a segment out of the directory that no one else holds.
    #[inline]
    pub(crate) fn take(&mut self, offset: usize) -> Option<Arc<Event<T>>> {
        self.slots.get_mut(offset)?.take()
    }

    /// Makes an emptied segment segment `number` (exclusively held, like
    /// [`Segment::take`]).
    pub(crate) fn renumber(&mut self, number: u64) {
        debug_assert!(
            (0..self.len()).all(|offset| !self.is_published(offset)),
            "a segment is renumbered only once emptied"
        );
        self.number = number;
    }
}
