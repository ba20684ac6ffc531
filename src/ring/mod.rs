//! The lock-free bounded ring of one session.
//!
//! # Algorithm
//!
//! A ring is a [directory] of segments, a position counter, a
//! published-tail hint, a trim floor and a doorbell.
//!
//! * **Claim.** A writer claims positions with one `fetch_add` on
//!   `claimed` (`n` at once for a batch). Positions are therefore unique
//!   and contiguous whatever the number of writers.
//! * **Publish.** Positions are cut into [segments](segment) of up to 64
//!   (the first one 16, so that a small session stays small);
//!   the directory keeps the segments covering the newest `capacity`
//!   positions (plus one). The writer of position `p` writes its event into
//!   `p`'s [slot] of `p`'s segment, which only it ever writes, once
//!   (a release store of a pointer: the crate's one `unsafe` module); if the
//!   segment is not in the directory yet, the writer installs it by
//!   compare-and-swap over the exact older segment it saw. If the entry
//!   already holds a *later* segment, `p` was lapped: it is outside the
//!   window, the append still succeeded, and readers report `p` trimmed.
//! * **Published tail.** Position `p` is *settled* when its slot is written,
//!   its segment was lapped, or `p` is at or below the floor. The published
//!   tail `P` is the longest settled prefix; it is derived, never locked:
//!   start at the `published` hint and step while the next position is
//!   settled, then raise the hint. Settledness is permanent, so any lower
//!   bound of `P` is a valid hint: a hint left behind by a race only costs a
//!   longer walk.
//! * **Read.** A reader asking for `p <= P` finds `p`'s segment: the event
//!   in its slot is returned; a later segment in the entry means `p` was
//!   lapped (trimmed); an earlier or empty entry means `p` was freed by a
//!   trim (the floor is at or past `p`) or is not published yet. A replay
//!   either counts a reference to each event it returns, or [lends](lend)
//!   them in place while it holds their segments.
//! * **Capacity.** `p` is readable only while `p > P - capacity`; the
//!   directory keeps one segment more than that, so nothing in the window is
//!   ever freed early.
//! * **Batches** claim `n` positions at once and write them last to first,
//!   so a reader that stops at the first unpublished position sees the whole
//!   batch or none of it.
//! * **Trim.** Age and watermark trimming raise a monotonic `floor`
//!   (positions `<= floor` read as trimmed), then take every segment lying
//!   wholly at or below it out of the directory by compare-and-swap against
//!   the exact segment seen.
//! * **Retire.** A segment a writer displaced goes to the ring's
//!   [recycler], not straight to the allocator: if no reader holds it, the
//!   writers of the next positions free its events a few at a time, and
//!   the emptied segment is renumbered for the next installation. A steady
//!   ring thus allocates only its events, and no append frees a whole
//!   segment's worth of them.
//! * **Close.** Closing or removing a session *seals* its ring: it sets
//!   the `CLOSED` bit of `claimed`, and a claim that sees it is refused, so
//!   every append is either before the seal (and belongs to the sealed
//!   incarnation) or refused. The position the seal returns is the last
//!   one accepted; refused claims still count in `claimed` afterwards, so
//!   the session keeps that position (`session::End`).
//!
//! # Invariants
//!
//! 1. Positions are claimed exactly once, in order: `claimed` only grows.
//! 2. A slot is written once, by its position's writer; an entry's segment
//!    number never decreases, except that a trim may empty an entry whose
//!    positions are all `<= floor`.
//! 3. `floor <= P`, and `P` never decreases: readers never see a hole, a
//!    reordering, a duplicate, or an event at or below the floor.
//! 4. A reader that saw position `p` of a batch sees every later position
//!    of the batch (they were written before `p`).
//! 5. No operation waits for another thread: every loop is a CAS retry that
//!    fails only when another thread made progress, or a walk bounded by the
//!    claimed positions.
//! 6. Memory is never freed under a reader: a segment's events go when its
//!    last `Arc` is dropped, or when the recycler, holding that last `Arc`
//!    alone, empties its slots.

mod directory;
mod doorbell;
mod kept;
mod lend;
mod recycler;
mod segment;
mod slot;

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::task::Waker;

use self::directory::{Directory, Lookup};
use self::doorbell::Doorbell;
pub(crate) use self::doorbell::Ticket;
use self::kept::KeptRead;
pub(crate) use self::kept::{KeepBudget, Kept, Weigh};
pub use self::lend::LentEvents;
pub(crate) use self::segment::Segment;
use crate::cursor::Revision;
use crate::event::Event;
use crate::sync::{Arc, AtomicU64};

/// A value on a cache line (64 bytes) of its own.
#[repr(align(64))]
struct OwnLine<V>(V);

impl<V> std::ops::Deref for OwnLine<V> {
    type Target = V;

    fn deref(&self) -> &V {
        &self.0
    }
}

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

/// What the persister finds at a position it has not written yet.
pub(crate) enum Undurable<T> {
    /// The event.
    Event(Arc<Event<T>>),
    /// No tier holds it: trimmed, or lapped and let go (see `kept`).
    Lost,
    /// Not readable yet (a hand-over in flight, or not published): the
    /// persister stops before it for this round.
    NotYet,
}

/// `repr(C)`, to place its fields on cache lines (64 bytes) by what
/// touches them, at 256 bytes in all:
///
/// | bytes | what | who |
/// | --- | --- | --- |
/// | 0..64 | `claimed` | every append writes it; nobody else reads it often |
/// | 64..128 | the doorbell | subscribers arming; appends read `parked` |
/// | 128..192 | `published`, the floor, the capacity, the directory's slice and shape | every append writes `published`; every read reads this line and nothing else of the ring |
/// | 192..240 | the directory's recycler | the writers, every fourth append |
/// | 240..248 | the segments kept past the window ([`Kept`]) | a writer that displaces a segment; the persister |
///
/// `published` shares its line with what readers read anyway, so a
/// replay fetches one line of the ring instead of two. Lines are aligned
/// to 64 bytes, not `CachePadded`'s 128 (which guards against the
/// prefetcher's pairing of adjacent lines): the ring is part of every
/// session, and 128-byte alignment cost each resident session 192 bytes
/// (the ring's own padding, and the session `Arc`'s counts padded to 128).
#[repr(C)]
pub(crate) struct Ring<T> {
    /// Positions handed out so far (the last claimed position), plus the
    /// `CLOSED` bit. Written by every append: its own cache line.
    claimed: OwnLine<AtomicU64>,
    doorbell: Doorbell,
    /// A lower bound of the published tail (see module docs).
    published: AtomicU64,
    /// Every position `<= floor` is trimmed (watermark or age).
    floor: AtomicU64,
    /// Revision of the event at the floor when a trim raised it, for
    /// cursors at a tail whose event is gone.
    floor_revision: AtomicU64,
    capacity: u64,
    directory: Directory<T>,
    /// With a durable log: where lapped undurable segments are kept until
    /// the persister has written them (module `kept`).
    kept: Option<Box<Kept<T>>>,
}

impl<T> Ring<T> {
    #[cfg(test)]
    pub(crate) fn new(capacity: usize) -> Self {
        Self::continuing(capacity, 0, Revision::default(), None)
    }

    /// A ring whose positions `1..=last` are already settled and trimmed:
    /// the next claim is `last + 1`. A session that continues after
    /// eviction or a restart starts here, so its positions carry on and
    /// cursors at or below `last` read as trimmed, never as another event.
    /// A ring over a durable log `kept`s the segments it laps before the
    /// persister wrote them.
    pub(crate) fn continuing(
        capacity: usize,
        last: u64,
        last_revision: Revision,
        kept: Option<Box<Kept<T>>>,
    ) -> Self {
        Self {
            claimed: OwnLine(AtomicU64::new(last)),
            published: AtomicU64::new(last),
            floor: AtomicU64::new(last),
            floor_revision: AtomicU64::new(last_revision.0),
            capacity: capacity as u64,
            directory: Directory::new(capacity),
            doorbell: Doorbell::new(),
            kept,
        }
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
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

    /// Publishes one claimed event, advances the tail and wakes subscribers.
    #[inline]
    pub(crate) fn publish(&self, event: &Arc<Event<T>>) {
        let displaced = self.directory.publish(event);
        self.announce(event.position, displaced);
    }

    /// [`Ring::publish`] for a writer that keeps the segment it last wrote
    /// to in `cached` and gives its event up: when the position is in that
    /// segment, the event moves into its slot with no directory lookup and
    /// no second reference. See the `handle::writer` module for why a cached
    /// segment that left the directory is still a correct place to write.
    #[inline]
    pub(crate) fn publish_through(
        &self,
        event: Arc<Event<T>>,
        cached: &mut Option<Arc<Segment<T>>>,
    ) {
        let position = event.position;
        let place = self.directory.place(position);
        let (displaced, let_go) = match cached {
            Some(segment) if segment.number() == place.segment => {
                segment.publish_owned(place.offset, event);
                (None, None)
            }
            _ => {
                let displaced = self.directory.publish(&event);
                // The segment that holds the position now (none if it was
                // lapped already), for the writer's next appends.
                let current = self.directory.current(place).ok();
                (displaced, std::mem::replace(cached, current))
            }
        };
        self.announce(position, displaced);
        // Like a displaced segment, the one the writer lets go of may be
        // the last reference to its events: dropped after the announce.
        drop(let_go);
    }

    /// What follows a publish: keeps what it displaced if the log still
    /// needs it, advances the tail past `position`, wakes subscribers, then
    /// retires what the publish displaced and was not kept.
    #[inline]
    fn announce(&self, position: u64, displaced: Option<Arc<Segment<T>>>) {
        // Before the doorbell's fence (module `kept`, invariant 2).
        let displaced = match displaced {
            Some(segment) => self.keep(segment),
            None => None,
        };
        self.advance_past(position, position);
        self.doorbell.ring();
        // Only now, with the append announced, may a lapped payload's
        // `Drop` run (and panic).
        if let Some(displaced) = displaced {
            self.directory.retire(displaced);
        }
        self.directory.recycle_step(position);
    }

    /// Publishes a claimed batch (consecutive positions, ascending) last to
    /// first, so that it becomes visible all at once (invariant 4).
    pub(crate) fn publish_batch(&self, events: &[Arc<Event<T>>]) {
        let mut displaced = Vec::new();
        for event in events.iter().rev() {
            // Before the doorbell's fence (module `kept`, invariant 2).
            let segment = self.directory.publish(event);
            displaced.extend(segment.and_then(|segment| self.keep(segment)));
        }
        if let (Some(first), Some(last)) = (events.first(), events.last()) {
            self.advance_past(first.position, last.position);
        }
        self.doorbell.ring();
        // Oldest first: a batch that laps twice retires the older segment
        // first, so the recycler keeps the newer one draining.
        for segment in displaced.into_iter().rev() {
            self.directory.retire(segment);
        }
        for event in events {
            self.directory.recycle_step(event.position);
        }
    }

    /// Offers a displaced segment to the kept tail; returns it if it is
    /// not kept (for the recycler). Out of line: once per segment, and
    /// inlined it grew every append's code (by 16 instructions).
    #[inline(never)]
    fn keep(&self, segment: Arc<Segment<T>>) -> Option<Arc<Segment<T>>> {
        match &self.kept {
            Some(kept) => {
                let last = self.directory.last_position(segment.number());
                kept.offer(segment, last)
            }
            None => Some(segment),
        }
    }

    /// The persister's read of `position` (`<= P`, above its watermark):
    /// from the directory whether or not it is in the readers' window,
    /// else from the kept segments.
    pub(crate) fn read_undurable(&self, position: u64) -> Undurable<T> {
        if position <= self.floor() {
            return Undurable::Lost;
        }
        let place = self.directory.place(position);
        match self
            .directory
            .with_current(place, |segment| segment.get(place.offset))
        {
            Ok(Some(event)) => Undurable::Event(event),
            Err(Lookup::Newer) => match &self.kept {
                Some(kept) => {
                    match kept.read(place, position, || self.directory.lapped_through()) {
                        KeptRead::Event(event) => Undurable::Event(event),
                        KeptRead::LetGo => Undurable::Lost,
                        KeptRead::InFlight => Undurable::NotYet,
                    }
                }
                None => Undurable::Lost,
            },
            // Freed by a trim that raced us, or not yet published.
            Ok(None) | Err(Lookup::Older) if position <= self.floor() => Undurable::Lost,
            Ok(None) | Err(Lookup::Older) => Undurable::NotYet,
        }
    }

    /// Every position `<= durable` is in the log: the kept segments wholly
    /// at or below it are dropped.
    pub(crate) fn release_kept(&self, durable: u64) {
        if let Some(kept) = &self.kept {
            kept.release_through(durable);
        }
    }

    /// Nothing more of this ring will be written to the log: drops the
    /// kept segments and keeps none from now on.
    pub(crate) fn release_all_kept(&self) {
        if let Some(kept) = &self.kept {
            kept.release_all();
        }
    }

    /// The published tail `P`: every position `<= P` is settled.
    pub(crate) fn published_tail(&self) -> u64 {
        // Acquire: pairs with the Release store or `fetch_max` that raised
        // the hint, so the slot contents that let another thread advance it
        // are visible to our reads of those slots.
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
        if hint + 1 < first {
            // A hole below us (or a stale hint): walk from the hint.
            self.walk(hint, hint);
            return;
        }
        // Relaxed: a shortcut only. If nobody claimed past `last`, there is
        // nothing further to walk to.
        if self.claimed() == last {
            if last > hint {
                // A plain store, not `fetch_max`: the hint only has to be a
                // lower bound of the tail (settledness is permanent, so a
                // walk from any lower bound finds the same tail); a racing
                // writer's higher value overwritten here costs a walk, never
                // a wrong answer. Release: see `published_tail`.
                self.published.store(last, Release);
            }
            return;
        }
        self.walk(hint, hint.max(last));
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
            // Release: see the Acquire in `published_tail`. `fetch_max`
            // keeps concurrent walkers from lowering it needlessly.
            self.published.fetch_max(tail, Release);
        }
        tail
    }

    #[inline]
    fn is_settled(&self, position: u64) -> bool {
        let place = self.directory.place(position);
        match self
            .directory
            .with_current(place, |segment| segment.is_published(place.offset))
        {
            Ok(true) | Err(Lookup::Newer) => true,
            Ok(false) | Err(_) => position <= self.floor(),
        }
    }

    /// Every position `<= floor` is trimmed.
    #[inline]
    pub(crate) fn floor(&self) -> u64 {
        // Relaxed: a reader that needs the floor to be current is one that
        // found a segment taken out of the directory by a trim; the trim
        // raised the floor before taking it out, and the reader's load of
        // the directory entry acquired that removal (or a later RMW of the
        // entry, which carries it along).
        self.floor.load(Relaxed)
    }

    /// What a reader finds at `position` (`>= 1`). Positions `capacity` or
    /// more behind the published tail read as trimmed.
    #[inline]
    pub(crate) fn read(&self, position: u64) -> Read<T> {
        if position <= self.floor() || self.beyond_capacity(position) {
            return Read::Trimmed;
        }
        let place = self.directory.place(position);
        match self
            .directory
            .with_current(place, |segment| segment.get(place.offset))
        {
            Ok(Some(event)) => Read::Event(event),
            Err(Lookup::Newer) => Read::Trimmed,
            // Freed by a trim that raced us, or not yet published.
            Ok(None) | Err(_) if position <= self.floor() => Read::Trimmed,
            Ok(None) | Err(_) => Read::Pending,
        }
    }

    /// [`Ring::read`] lending the event to `f` instead of counting a
    /// reference to it, for a caller that knows `position` is within the
    /// capacity of a tail it read: `None` unless the position's event is
    /// above the floor and still in the directory.
    ///
    /// It does not check the capacity window itself: that reads
    /// `claimed`, the line every append writes, and its callers already
    /// checked the window against the tail they read.
    #[inline]
    pub(crate) fn with_event<R>(&self, position: u64, f: impl FnOnce(&Event<T>) -> R) -> Option<R> {
        if position <= self.floor() {
            return None;
        }
        let place = self.directory.place(position);
        self.directory
            .with_current(place, |segment| segment.peek(place.offset).map(f))
            .ok()
            .flatten()
    }

    /// [`Ring::read`] for a reader going forward one position at a time
    /// (a subscription): it keeps the segment it reads from in `held`, so
    /// that reading the next position of the same segment costs no
    /// directory lookup, and takes one reference per segment instead.
    ///
    /// Same answers as `read`, from one look at the directory at most: the
    /// floor and capacity checks come first; a set slot of the held segment
    /// holds its position's one event (a slot is written once, by its
    /// position's writer, whichever object of the segment holds it); any
    /// other case looks the entry up once and classifies it as `read` does.
    #[inline]
    pub(crate) fn read_forward(
        &self,
        position: u64,
        held: &mut Option<Arc<Segment<T>>>,
    ) -> Read<T> {
        if position <= self.floor() || self.beyond_capacity(position) {
            return Read::Trimmed;
        }
        let place = self.directory.place(position);
        let found = match held {
            Some(segment) if segment.number() == place.segment => {
                if let Some(event) = segment.get(place.offset) {
                    return Read::Event(event);
                }
                // Not there yet, or the held segment left the directory.
                self.directory
                    .with_current(place, |segment| segment.get(place.offset))
            }
            _ => self.directory.current(place).map(|segment| {
                let event = segment.get(place.offset);
                // The segment left behind is dropped here (its events with
                // it, if this was the last reference).
                *held = Some(segment);
                event
            }),
        };
        match found {
            Ok(Some(event)) => Read::Event(event),
            Err(Lookup::Newer) => Read::Trimmed,
            // Freed by a trim that raced us, or not yet published.
            Ok(None) | Err(_) if position <= self.floor() => Read::Trimmed,
            Ok(None) | Err(_) => Read::Pending,
        }
    }

    /// Appends the events at `from..=to` (all `<= P`) to `out`, one
    /// directory lookup per segment. Returns the first position it could not
    /// read (trimmed meanwhile), if any.
    ///
    /// A segment is read in place, through the directory's guard, without
    /// taking a reference to it: the segment's reference count shares a
    /// cache line with the segment number and slot pointer every append
    /// reads, so a replayer that counted references would make each of
    /// the writer's appends fetch that line back.
    pub(crate) fn read_range(
        &self,
        from: u64,
        to: u64,
        out: &mut Vec<Arc<Event<T>>>,
    ) -> Result<(), u64> {
        let mut position = from;
        while position <= to {
            let place = self.directory.place(position);
            let segment_len = self.directory.segment_len_of(place.segment);
            let segment_end = to.min(position + (segment_len - place.offset as u64) - 1);
            let read = self.directory.with_current(place, |segment| {
                for offset in place.offset..=place.offset + (segment_end - position) as usize {
                    match segment.get(offset) {
                        Some(event) => out.push(event),
                        None => return Err(position + (offset - place.offset) as u64),
                    }
                }
                Ok(())
            });
            match read {
                Ok(Ok(())) => {}
                Ok(Err(unread)) => return Err(unread),
                Err(_) => return Err(position),
            }
            position = segment_end + 1;
        }
        if from <= self.floor().min(to) {
            // A trim raised the floor into what we read: not servable whole.
            return Err(from);
        }
        Ok(())
    }

    /// Raises the floor to `to` (clamped to the published tail) and frees
    /// every segment that lies wholly at or below it. Returns how many
    /// retained positions it newly trimmed.
    ///
    /// Positions `<= unreadable_through` count as already trimmed (the
    /// caller knows, say, that they had expired); positions out of the
    /// capacity window always do.
    pub(crate) fn raise_floor(&self, to: u64, unreadable_through: u64) -> usize {
        let tail = self.published_tail();
        let to = to.min(tail);
        // Relaxed: see `floor()`; what needs ordering is the segments taken
        // out below, which come after this in program order.
        let previous = self.floor.fetch_max(to, Relaxed);
        if to <= previous {
            return 0;
        }
        if let Read::Event(event) = self.read_unfloored(to) {
            // Relaxed: informational only.
            self.floor_revision.store(event.revision.0, Relaxed);
        }
        let lowest_held = tail.saturating_sub(self.capacity()) + 1;
        let newly_trimmed =
            to.saturating_sub(previous.max(lowest_held - 1).max(unreadable_through));
        // Dropped when this returns, after every segment is out of the
        // directory: a panicking payload `Drop` cannot leave the trim half
        // done.
        let _freed = self.directory.free_through(previous + 1, to);
        newly_trimmed as usize
    }

    /// Whether `position` is `capacity` or more behind the published tail.
    /// The directory may still hold it (it frees whole segments), but the
    /// window does not. One relaxed load in the common case: only when
    /// enough positions were claimed does it walk to the tail.
    #[inline]
    fn beyond_capacity(&self, position: u64) -> bool {
        let window_end = position.saturating_add(self.capacity);
        window_end <= self.claimed() && window_end <= self.published_tail()
    }

    /// `read` ignoring the floor (the floor was just raised past it).
    fn read_unfloored(&self, position: u64) -> Read<T> {
        let place = self.directory.place(position);
        match self
            .directory
            .with_current(place, |segment| segment.get(place.offset))
        {
            Ok(Some(event)) => Read::Event(event),
            _ => Read::Trimmed,
        }
    }

    /// The revision of the event at the tail, if that is known.
    pub(crate) fn revision_at(&self, position: u64) -> Revision {
        if position == 0 {
            return Revision::default();
        }
        // Looked at, not counted: every cursor at the tail reads the newest
        // event, which its writer may still be touching.
        self.with_event(position, |event| event.revision)
            // Relaxed: informational only.
            .unwrap_or_else(|| Revision(self.floor_revision.load(Relaxed)))
    }

    /// Closes the ring: later claims are refused; subscribers are woken.
    /// Returns how many positions were claimed before it closed.
    pub(crate) fn close(&self) -> u64 {
        let claimed = self.seal();
        self.wake_closed();
        claimed
    }

    /// Closes the ring without waking anyone (a caller under a lock must
    /// not run a subscriber's waker there): later claims are refused.
    /// Returns how many positions were claimed before it closed; call
    /// [`Ring::wake_closed`] once the lock is let go.
    pub(crate) fn seal(&self) -> u64 {
        // Relaxed: claims synchronise through the RMW order only; the wake
        // that follows carries its own fences.
        self.claimed.fetch_or(CLOSED, Relaxed) & !CLOSED
    }

    /// Wakes the subscribers of a sealed ring, so they see it closed.
    pub(crate) fn wake_closed(&self) {
        self.doorbell.ring_all();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.claimed.load(Relaxed) & CLOSED != 0
    }

    /// Positions claimed so far (published or in flight). After a close,
    /// refused claims are counted too.
    pub(crate) fn claimed(&self) -> u64 {
        self.claimed.load(Relaxed) & !CLOSED
    }

    /// Registers `waker` to be woken by the next publish or the close; see
    /// the `doorbell` module for the protocol (re-check, then wait).
    pub(crate) fn arm(&self, waker: Waker) -> Ticket {
        self.doorbell.arm(waker)
    }

    /// Whether the armed `ticket` was rung; if not, it stays armed with
    /// `waker`.
    pub(crate) fn poll_armed(&self, ticket: Ticket, waker: &Waker) -> bool {
        self.doorbell.poll(ticket, waker)
    }

    /// Gives an armed ticket back.
    pub(crate) fn disarm(&self, ticket: Ticket) {
        self.doorbell.disarm(ticket);
    }

    pub(crate) fn parked(&self) -> usize {
        self.doorbell.parked()
    }

    pub(crate) fn allocated_slots(&self) -> usize {
        self.directory.allocated_slots()
    }
}

#[cfg(all(test, not(loom)))]
pub(crate) mod tests {
    #[test]
    fn the_ring_keeps_its_layout() {
        // The table in `Ring`'s docs; a field added in the wrong place
        // costs every resident session 128 bytes.
        assert_eq!(std::mem::size_of::<Ring<Vec<u8>>>(), 256);
        assert_eq!(std::mem::offset_of!(Ring<Vec<u8>>, published), 128);
        assert_eq!(std::mem::offset_of!(Ring<Vec<u8>>, directory) % 64, 32);
    }

    use super::*;
    use crate::cursor::Incarnation;
    use crate::event::Timestamp;
    use crate::key::SessionKey;

    /// Event `position` of a test session, its payload its position.
    pub(crate) fn event(position: u64) -> Arc<Event<u64>> {
        Arc::new(Event {
            key: SessionKey::new("t", "s").unwrap(),
            incarnation: Incarnation::from_raw(1).unwrap(),
            revision: Revision(position),
            position,
            timestamp: Timestamp::default(),
            links: None,
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
    fn a_lapped_writer_never_replaces_a_newer_segment() {
        // Capacity 2: segments of 2 positions, 2 directory entries; position
        // 5 shares an entry with position 1.
        let ring = Ring::new(2);
        ring.claim(5);
        ring.publish(&event(5));
        ring.publish(&event(1));
        assert!(matches!(ring.read(1), Read::Trimmed), "1 was lapped by 5");
        assert_eq!(position_at(&ring, 5), Some(5), "the later segment survived");
        for position in 2..=4 {
            ring.publish(&event(position));
        }
        assert_eq!(ring.published_tail(), 5);
        assert!(
            matches!(ring.read(3), Read::Trimmed),
            "beyond capacity of the tail"
        );
        assert_eq!(position_at(&ring, 4), Some(4));
    }

    #[test]
    fn a_batch_is_installed_last_to_first() {
        let ring = Ring::new(8);
        let first = ring.claim(3).unwrap();
        let batch: Vec<_> = (first..first + 3).map(event).collect();
        ring.publish_batch(&batch);
        assert_eq!(ring.published_tail(), 3);
        let mut read = Vec::new();
        assert!(ring.read_range(1, 3, &mut read).is_ok());
        assert_eq!(
            read.iter().map(|e| e.payload).collect::<Vec<_>>(),
            [1, 2, 3]
        );
    }

    #[test]
    fn the_floor_is_monotonic_clamped_and_frees_whole_segments() {
        // Capacity 4: one segment holds positions 1..=4.
        let ring = Ring::new(4);
        let events: Vec<_> = (1..=5).map(event).collect();
        for e in &events {
            ring.claim(1);
            ring.publish(e);
        }
        assert_eq!(
            ring.raise_floor(2, 0),
            1,
            "position 1 was already out of the window"
        );
        assert_eq!(
            Arc::strong_count(&events[0]),
            2,
            "its segment still holds 3 and 4"
        );
        assert_eq!(ring.raise_floor(1, 0), 0, "a lower watermark is a no-op");
        assert_eq!(ring.raise_floor(4, 0), 2);
        assert_eq!(
            Arc::strong_count(&events[0]),
            1,
            "the segment 1..=4 was freed"
        );
        assert_eq!(ring.raise_floor(100, 0), 1, "clamped to the tail");
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
    fn a_continuing_ring_starts_after_its_last_position() {
        let ring = Ring::continuing(4, 70, Revision(9), None);
        assert_eq!(ring.published_tail(), 70);
        assert!(matches!(ring.read(70), Read::Trimmed));
        assert_eq!(ring.revision_at(70), Revision(9));
        assert_eq!(ring.claim(1), Some(71));
        ring.publish(&event(71));
        assert_eq!(ring.published_tail(), 71);
        assert_eq!(position_at(&ring, 71), Some(71));
        assert_eq!(
            ring.allocated_slots(),
            4,
            "no storage for the old positions"
        );
    }

    fn segment_at(ring: &Ring<u64>, position: u64) -> Arc<Segment<u64>> {
        let place = ring.directory.place(position);
        match ring.directory.current(place) {
            Ok(segment) => segment,
            Err(_) => panic!("position {position} has no segment"),
        }
    }

    #[test]
    fn a_lapped_segment_is_freed_over_the_next_appends_then_reused() {
        // Capacity 4: segments of 4 positions, 2 directory entries, and
        // a recycler step of 4.
        let ring = Ring::new(4);
        let events: Vec<_> = (1..=16).map(event).collect();
        let publish = |position: u64| {
            ring.claim(1);
            ring.publish(&events[position as usize - 1]);
        };
        for position in 1..=8 {
            publish(position);
        }
        let first_segment = Arc::as_ptr(&segment_at(&ring, 1));
        publish(9);
        // Segment 0 (positions 1..=4) was displaced: retired, not freed.
        assert!(matches!(ring.read(1), Read::Trimmed));
        assert_eq!(Arc::strong_count(&events[0]), 2, "held until a step");
        for position in 10..=11 {
            publish(position);
            assert_eq!(Arc::strong_count(&events[0]), 2, "not a step yet");
        }
        publish(12);
        for event in &events[..4] {
            assert_eq!(Arc::strong_count(event), 1, "freed by the step at 12");
        }
        assert_eq!(ring.allocated_slots(), 12, "two in the directory, a spare");
        publish(13);
        assert_eq!(
            Arc::as_ptr(&segment_at(&ring, 13)),
            first_segment,
            "the spare came back as segment 3"
        );
        assert_eq!(position_at(&ring, 13), Some(13));
        assert!(
            matches!(ring.read(14), Read::Pending),
            "its slots are empty"
        );
        for position in 14..=16 {
            publish(position);
            assert_eq!(position_at(&ring, position), Some(position));
        }
        assert!(matches!(ring.read(12), Read::Trimmed));
        assert_eq!(ring.published_tail(), 16);
    }

    #[test]
    fn a_lapped_segment_a_reader_holds_is_left_whole() {
        let ring = Ring::new(4);
        let events: Vec<_> = (1..=12).map(event).collect();
        for event in &events[..4] {
            ring.claim(1);
            ring.publish(event);
        }
        let mut held = None;
        assert!(matches!(ring.read_forward(2, &mut held), Read::Event(_)));
        for event in &events[4..] {
            ring.claim(1);
            ring.publish(event);
        }
        let segment = held.expect("the reader keeps its segment");
        for offset in 0..4 {
            assert_eq!(
                segment.get(offset).map(|event| event.payload),
                Some(offset as u64 + 1),
                "never emptied under its reader"
            );
        }
        drop(segment);
        assert_eq!(Arc::strong_count(&events[0]), 1, "freed by its last holder");
    }

    #[test]
    fn a_batch_that_laps_frees_what_it_displaced() {
        let ring = Ring::new(4);
        let events: Vec<_> = (1..=20).map(event).collect();
        let first = ring.claim(20).unwrap();
        assert_eq!(first, 1);
        ring.publish_batch(&events);
        assert_eq!(ring.published_tail(), 20);
        for event in &events[..12] {
            assert_eq!(Arc::strong_count(event), 1, "outside the window: freed");
        }
        let mut read = Vec::new();
        assert!(ring.read_range(17, 20, &mut read).is_ok());
        assert_eq!(read.len(), 4);
        assert!(
            ring.allocated_slots() <= 16,
            "two segments, a spare at most"
        );
    }

    #[test]
    fn a_full_length_ring_laps_through_its_short_first_segment() {
        // Capacity 64: segments of 64 after a first one of 16, 2 entries.
        let ring = Ring::new(64);
        let events: Vec<_> = (1..=400).map(event).collect();
        for event in &events {
            let position = event.position;
            ring.claim(1);
            ring.publish(event);
            let window = position.saturating_sub(63).max(1)..=position;
            let mut read = Vec::new();
            assert!(ring
                .read_range(*window.start(), position, &mut read)
                .is_ok());
            assert!(read.iter().map(|e| e.payload).eq(window), "at {position}");
            if position > 64 {
                assert!(matches!(ring.read(position - 64), Read::Trimmed));
            }
            // Two segments in the directory, one draining or spare.
            assert!(ring.allocated_slots() <= 3 * 64, "at {position}");
        }
        for event in &events[..400 - 64 - 2 * 64] {
            assert_eq!(Arc::strong_count(event), 1, "{} is freed", event.position);
        }
    }

    #[test]
    fn storage_grows_one_segment_at_a_time() {
        let ring = Ring::new(2048);
        assert_eq!(ring.allocated_slots(), 0);
        for position in 1..=10 {
            ring.claim(1);
            ring.publish(&event(position));
        }
        assert_eq!(ring.allocated_slots(), 16, "a short first segment");
        for position in 11..=80 {
            ring.claim(1);
            ring.publish(&event(position));
        }
        assert_eq!(ring.allocated_slots(), 16 + 64, "17..=80: one full one");
        ring.claim(1);
        ring.publish(&event(81));
        assert_eq!(ring.allocated_slots(), 16 + 2 * 64);
        let mut read = Vec::new();
        assert!(
            ring.read_range(1, 81, &mut read).is_ok(),
            "across both seams"
        );
        assert!(read.iter().map(|e| e.payload).eq(1..=81));
    }
}
