//! The lock-free bounded ring of one session.
//!
//! # Algorithm
//!
//! A ring is `capacity` slots ([`table`]), a position counter, a
//! published-tail hint, a trim floor and a doorbell.
//!
//! * **Claim.** A writer claims positions with one `fetch_add` on
//!   `claimed` (`n` at once for a batch). Positions are therefore unique
//!   and contiguous whatever the number of writers.
//! * **Install.** Each event knows its position. A writer installs event
//!   `p` into slot `(p - 1) % capacity` by compare-and-swap, and only while
//!   the slot holds an older position ([`slot`]). If a faster writer already
//!   put `p + k·capacity` there, `p` was lapped: it is outside the window,
//!   the append still succeeded, and readers report `p` as trimmed.
//! * **Publish.** Position `p` is *settled* when its slot holds a position
//!   `>= p` or `p` is at or below the floor. The published tail `P` is the
//!   longest settled prefix; it is derived, never locked: start at the
//!   `published` hint and step while the next position is settled, then
//!   raise the hint with `fetch_max`. Every writer and reader does this walk,
//!   so a hint left behind by a race only costs a longer walk.
//! * **Read.** A reader asking for `p <= P` loads the slot: the event at
//!   `p` is returned, a newer position means `p` was overwritten (trimmed),
//!   an empty or older slot means `p` was cleared by a trim (the floor is at
//!   or past `p`) or is not published yet.
//! * **Batches** claim `n` positions at once and install them last to first,
//!   so a reader that stops at the first unpublished position sees the whole
//!   batch or none of it.
//! * **Trim.** Age and watermark trimming raise a monotonic `floor`
//!   (positions `<= floor` read as trimmed), then clear the slots they
//!   trimmed by compare-and-swap against the exact event seen, so a newer
//!   event is never freed. Capacity trimming is the overwrite itself.
//! * **Close.** Removing a session sets the `CLOSED` bit of `claimed`: a
//!   claim that sees it is refused, so every append is either before the
//!   removal (and belongs to the removed incarnation) or refused.
//!
//! # Invariants
//!
//! 1. Positions are claimed exactly once, in order: `claimed` only grows.
//! 2. A slot's held position never decreases, except that a trim may empty
//!    a slot whose position is `<= floor`.
//! 3. `floor <= P`, and `P` never decreases: readers never see a hole, a
//!    reordering, a duplicate, or an event at or below the floor.
//! 4. A reader that saw position `p` of a batch sees every later position
//!    of the batch (they were installed before `p`).
//! 5. No operation waits for another thread: every loop is a CAS retry that
//!    fails only when another thread made progress, or a walk bounded by the
//!    claimed positions.

mod doorbell;
mod slot;
mod table;

use self::slot::SlotRead;
pub(crate) use self::table::CHUNK_SLOTS;

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use crossbeam_utils::CachePadded;
use event_listener::EventListener;

use self::doorbell::Doorbell;
use self::table::SlotTable;
use crate::cursor::Revision;
use crate::event::Event;
use crate::sync::{Arc, AtomicU64};

/// Set in `claimed` once the ring is closed; positions never reach it.
const CLOSED: u64 = 1 << 63;

/// What a reader finds at a position.
pub(crate) enum Read<T> {
    /// The event.
    Event(Arc<Event<T>>),
    /// The position was trimmed (overwritten, released or expired and
    /// cleared).
    Trimmed,
    /// The position is not published yet.
    Pending,
}

pub(crate) struct Ring<T> {
    /// Positions handed out so far (the last claimed position), plus the
    /// `CLOSED` bit. Written by every append: its own cache line.
    claimed: CachePadded<AtomicU64>,
    /// A lower bound of the published tail (see module docs).
    published: CachePadded<AtomicU64>,
    /// Every position `<= floor` is trimmed (watermark or age).
    floor: AtomicU64,
    /// Revision of the newest event a trim cleared, for cursors at a tail
    /// whose event is gone.
    floor_revision: AtomicU64,
    slots: SlotTable<T>,
    doorbell: Doorbell,
}

impl<T> Ring<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            claimed: CachePadded::new(AtomicU64::new(0)),
            published: CachePadded::new(AtomicU64::new(0)),
            floor: AtomicU64::new(0),
            floor_revision: AtomicU64::new(0),
            slots: SlotTable::new(capacity),
            doorbell: Doorbell::new(),
        }
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.slots.capacity()
    }

    /// Claims `count >= 1` consecutive positions; returns the first, or
    /// `None` if the ring is closed.
    #[inline]
    pub(crate) fn claim(&self, count: u64) -> Option<u64> {
        // Relaxed: uniqueness comes from the RMW's modification order; the
        // counter publishes no data (slots do, with their own ordering).
        let previous = self.claimed.fetch_add(count, Relaxed);
        if previous & CLOSED != 0 {
            None
        } else {
            Some(previous + 1)
        }
    }

    /// Installs one claimed event, advances the tail and wakes subscribers.
    #[inline]
    pub(crate) fn publish(&self, event: &Arc<Event<T>>) {
        let displaced = self.slots.get_or_alloc(event.position).install(event);
        self.advance_past(event.position, event.position);
        self.doorbell.ring();
        // Only now, with the append announced, may a payload's Drop run.
        drop(displaced);
    }

    /// Installs a claimed batch (consecutive positions, ascending) last to
    /// first, so that it becomes visible all at once (invariant 4).
    pub(crate) fn publish_batch(&self, events: &[Arc<Event<T>>]) {
        let displaced: Vec<_> = events
            .iter()
            .rev()
            .map(|event| self.slots.get_or_alloc(event.position).install(event))
            .collect();
        if let (Some(first), Some(last)) = (events.first(), events.last()) {
            self.advance_past(first.position, last.position);
        }
        self.doorbell.ring();
        drop(displaced);
    }

    /// The published tail `P`: every position `<= P` is settled.
    pub(crate) fn published_tail(&self) -> u64 {
        // Acquire: pairs with the Release `fetch_max` in `walk`, so the slot
        // contents that let another thread advance the hint are visible to
        // our reads of those slots.
        let hint = self.published.load(Acquire);
        self.walk(hint, hint)
    }

    /// A writer that just settled `first..=last`: advances the tail through
    /// them (and past, over positions settled by faster writers). When the
    /// hint already reaches `first - 1`, the writer's own slots are known
    /// settled and are not read again: the common single-writer case.
    #[inline]
    fn advance_past(&self, first: u64, last: u64) {
        // Acquire: see `published_tail`.
        let hint = self.published.load(Acquire);
        let from = if hint + 1 >= first {
            hint.max(last)
        } else {
            hint
        };
        self.walk(hint, from);
    }

    /// Steps from `from` (settled) while the next position is settled and
    /// raises the hint from `hint` to where it stopped.
    #[inline]
    fn walk(&self, hint: u64, from: u64) -> u64 {
        let mut tail = from;
        while self.is_settled(tail + 1) {
            tail += 1;
        }
        if tail > hint {
            // Release: see the Acquire in `published_tail`.
            self.published.fetch_max(tail, Release);
        }
        tail
    }

    #[inline]
    fn is_settled(&self, position: u64) -> bool {
        match self.slots.get(position) {
            Some(slot) if slot.holds_at_least(position) => true,
            _ => position <= self.floor(),
        }
    }

    /// Every position `<= floor` is trimmed.
    #[inline]
    pub(crate) fn floor(&self) -> u64 {
        // Relaxed: a reader that needs the floor to be current is one that
        // saw a slot emptied by a trim; the trim raised the floor before
        // clearing the slot, and the reader's load of the slot acquired
        // that clear.
        self.floor.load(Relaxed)
    }

    /// What a reader finds at `position` (`>= 1`).
    #[inline]
    pub(crate) fn read(&self, position: u64) -> Read<T> {
        if position <= self.floor() {
            return Read::Trimmed;
        }
        let found = match self.slots.get(position) {
            Some(slot) => slot.read(position),
            None => SlotRead::Older,
        };
        match found {
            SlotRead::Current(event) => Read::Event(event),
            SlotRead::Newer => Read::Trimmed,
            // Emptied by a trim that raced us, or not yet published.
            SlotRead::Older if position <= self.floor() => Read::Trimmed,
            SlotRead::Older => Read::Pending,
        }
    }

    /// Raises the floor to `to` (clamped to the published tail) and frees
    /// the events it trims. Returns how many retained events it freed.
    pub(crate) fn raise_floor(&self, to: u64) -> usize {
        let tail = self.published_tail();
        let to = to.min(tail);
        // Relaxed: see `floor()`; what needs ordering is the slot clears
        // below, which come after this in program order.
        let previous = self.floor.fetch_max(to, Relaxed);
        if to <= previous {
            return 0;
        }
        let lowest_held = tail.saturating_sub(self.capacity()) + 1;
        let mut freed = Vec::new();
        for position in (previous + 1).max(lowest_held)..=to {
            if let Some(event) = self
                .slots
                .get(position)
                .and_then(|slot| slot.clear(position))
            {
                if position == to {
                    self.floor_revision.store(event.revision.0, Relaxed);
                }
                freed.push(event);
            }
        }
        // Dropped here, after every slot is cleared: a panicking payload
        // `Drop` cannot leave the trim half done.
        freed.len()
    }

    /// The revision of the event at the tail, if that is known.
    pub(crate) fn revision_at(&self, position: u64) -> Revision {
        if position == 0 {
            return Revision::default();
        }
        match self.read(position) {
            Read::Event(event) => event.revision,
            // Relaxed: informational only.
            _ => Revision(self.floor_revision.load(Relaxed)),
        }
    }

    /// Closes the ring: later claims are refused; subscribers are woken.
    /// Returns how many positions were claimed before it closed.
    pub(crate) fn close(&self) -> u64 {
        // Relaxed: claims synchronise through the RMW order only; the wake
        // below carries its own fences.
        let claimed = self.claimed.fetch_or(CLOSED, Relaxed) & !CLOSED;
        self.doorbell.ring_all();
        claimed
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.claimed.load(Relaxed) & CLOSED != 0
    }

    /// Positions claimed so far (published or in flight). After a close,
    /// refused claims are counted too.
    pub(crate) fn claimed(&self) -> u64 {
        self.claimed.load(Relaxed) & !CLOSED
    }

    pub(crate) fn arm(&self) -> EventListener {
        self.doorbell.arm()
    }

    pub(crate) fn disarm(&self) {
        self.doorbell.disarm();
    }

    pub(crate) fn parked(&self) -> usize {
        self.doorbell.parked()
    }

    pub(crate) fn allocated_chunks(&self) -> usize {
        self.slots.allocated_chunks()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::cursor::Incarnation;
    use crate::event::Timestamp;
    use crate::key::SessionKey;

    fn event(position: u64) -> Arc<Event<u64>> {
        Arc::new(Event {
            key: SessionKey::new("t", "s").unwrap(),
            incarnation: Incarnation::from_raw(1).unwrap(),
            revision: Revision(position),
            position,
            timestamp: Timestamp::default(),
            payload: position,
        })
    }

    fn position_at(ring: &Ring<u64>, position: u64) -> Option<u64> {
        match ring.read(position) {
            Read::Event(event) => Some(event.payload),
            _ => None,
        }
    }

    #[test]
    fn claims_are_contiguous_and_refused_after_close() {
        let ring = Ring::<u64>::new(4);
        assert_eq!(ring.claim(1), Some(1));
        assert_eq!(ring.claim(3), Some(2));
        assert_eq!(ring.claim(1), Some(5));
        assert_eq!(ring.close(), 5);
        assert_eq!(ring.claim(1), None);
        assert!(ring.is_closed());
    }

    #[test]
    fn tail_stops_at_the_first_unpublished_position() {
        let ring = Ring::new(8);
        for _ in 0..3 {
            ring.claim(1);
        }
        ring.publish(&event(1));
        ring.publish(&event(3));
        assert_eq!(ring.published_tail(), 1, "position 2 is a hole");
        assert!(matches!(ring.read(2), Read::Pending));
        ring.publish(&event(2));
        assert_eq!(ring.published_tail(), 3);
    }

    #[test]
    fn a_lapped_writer_never_replaces_a_newer_event() {
        let ring = Ring::new(2);
        for _ in 0..3 {
            ring.claim(1);
        }
        ring.publish(&event(3)); // laps slot of position 1 before 1 is written
        ring.publish(&event(1));
        assert_eq!(position_at(&ring, 3), Some(3));
        assert!(matches!(ring.read(1), Read::Trimmed));
        ring.publish(&event(2));
        assert_eq!(ring.published_tail(), 3);
    }

    #[test]
    fn a_batch_is_installed_last_to_first() {
        let ring = Ring::new(8);
        let first = ring.claim(3).unwrap();
        let batch: Vec<_> = (first..first + 3).map(event).collect();
        ring.publish_batch(&batch);
        assert_eq!(ring.published_tail(), 3);
        assert_eq!(
            (1..=3).map(|p| position_at(&ring, p)).collect::<Vec<_>>(),
            [Some(1), Some(2), Some(3)]
        );
    }

    #[test]
    fn the_floor_is_monotonic_clamped_and_frees_what_it_trims() {
        let ring = Ring::new(8);
        let events: Vec<_> = (1..=5).map(event).collect();
        for e in &events {
            ring.claim(1);
            ring.publish(e);
        }
        assert_eq!(ring.raise_floor(2), 2);
        assert_eq!(
            Arc::strong_count(&events[0]),
            1,
            "the ring let go of position 1"
        );
        assert_eq!(ring.raise_floor(1), 0, "a lower watermark is a no-op");
        assert_eq!(ring.raise_floor(100), 3, "clamped to the tail");
        assert_eq!(ring.floor(), 5);
        assert!(matches!(ring.read(5), Read::Trimmed));
        assert_eq!(
            ring.revision_at(5),
            Revision(5),
            "the tail's revision survives its trim"
        );
        assert_eq!(ring.published_tail(), 5);
    }

    #[test]
    fn storage_grows_one_chunk_at_a_time() {
        let ring = Ring::new(2048);
        assert_eq!(ring.allocated_chunks(), 0);
        for position in 1..=10 {
            ring.claim(1);
            ring.publish(&event(position));
        }
        assert_eq!(ring.allocated_chunks(), 1);
        for position in 11..=CHUNK_SLOTS as u64 + 1 {
            ring.claim(1);
            ring.publish(&event(position));
        }
        assert_eq!(ring.allocated_chunks(), 2);
    }
}
