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
        self.published_tail();
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
        self.published_tail();
        self.doorbell.ring();
        drop(displaced);
    }

    /// The published tail `P`: every position `<= P` is settled.
    pub(crate) fn published_tail(&self) -> u64 {
        // Acquire: pairs with the Release `fetch_max` below, so the slot
        // contents that let another thread advance the hint are visible to
        // our reads of those slots.
        let hint = self.published.load(Acquire);
        let mut tail = hint;
        while self.is_settled(tail + 1) {
            tail += 1;
        }
        if tail > hint {
            // Release: see the Acquire above.
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
