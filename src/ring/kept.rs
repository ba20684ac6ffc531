//! The undurable tail a ring keeps past its capacity.
//!
//! A ring over a durable log is a write-behind buffer: its events are the
//! only copy until the persister has written them. Its window (`capacity`)
//! is what *readers* are served from memory; it is not how much the log may
//! fall behind. A writer that laps a segment whose positions are not all
//! durable yet hands it here instead of to the recycler, and the persister
//! reads those positions from here, so a burst into a healthy log reaches
//! the log whole. What bounds memory is a byte budget for the whole store
//! ([`KeepBudget`]): once it is spent, a lapped segment is let go, and its
//! undurable positions become a recorded hole: holes then mean that the log
//! failed or stalled for longer than the budget covers.
//!
//! # Protocol
//!
//! * **Keep or let go.** The writer whose publish displaced segment `S`
//!   decides, *before* the doorbell's `SeqCst` fence of its append: if
//!   `S`'s last position is above `kept_above` (a lower bound of the
//!   durable watermark) and the budget has room for `S`'s weight, `S` goes
//!   onto `arrivals` (a lock-free queue); otherwise, if `S` holds
//!   undurable positions, `let_go_through` is raised to its last position.
//!   A writer whose own position was lapped before any segment held it
//!   raises the directory's `lapped_through` instead (in the rare branch
//!   of `Directory::publish` that finds it, so the append path returns
//!   nothing more).
//! * **Read.** The persister reading position `p` whose segment the
//!   directory no longer holds (a newer one is there) first reads both
//!   marks, then moves every arrival into `held` (its own, ordered by
//!   segment number) and looks `p` up there. Found: the event. Not found
//!   and `p` at or below a mark: a hole. Neither: the writer that
//!   displaced `p`'s segment is between its compare-and-swap and its
//!   hand-over: the persister stops before `p` for this round.
//! * **Release.** After a commit raises the watermark to `w`, the persister
//!   raises `kept_above` to `w` and drops every held segment wholly at or
//!   below it, returning its weight to the budget. A fenced session (no
//!   longer written by us) releases everything and keeps nothing more.
//!
//! # Invariants
//!
//! 1. **No event the persister needs is dropped while the budget has
//!    room.** A segment with an undurable position is kept or counted in
//!    `let_go_through`, never both silently: a position the persister
//!    writes as a hole is at or below `let_go_through`.
//! 2. **No stall.** The persister's stop at an in-flight hand-over is
//!    temporary: the writer's hand-over comes before its fence, and its
//!    append then loads the session's dirty flag. Against the persister's
//!    "clear dirty, fence, read", either the persister's read sees the
//!    hand-over, or the writer sees the flag clear and queues the session
//!    again (the persister's own store-buffer argument, `crate::persist`).
//! 3. **Bounded.** The weight of every kept segment is reserved in the
//!    budget before it is kept and returned when it is dropped (released,
//!    or with the ring): the store's kept bytes never exceed the budget by
//!    more than the segments being reserved concurrently (one per writer).
//! 4. **The append path is unchanged** but for one branch per displaced
//!    segment (once per `segment_len` appends): a ring that displaces a
//!    durable segment retires it to the recycler as before.
//!
//! `kept_above` is a hint (Relaxed): a stale, lower value only keeps a
//! segment that was durable already, which the next release drops.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::Arc as StdArc;

use super::directory::Place;
use super::segment::Segment;
use crate::event::Event;
use crate::sync::{Arc, AtomicU64, Mutex, Queue};

/// How a store weighs a payload in bytes (the store's payload weigher).
pub(crate) type Weigh<T> = StdArc<dyn Fn(&T) -> usize + Send + Sync>;

/// The store-wide byte budget for segments kept past their ring's window.
pub(crate) struct KeepBudget<T> {
    limit: u64,
    used: AtomicU64,
    /// Weighs each kept event's payload; `None`: only the event's own size.
    weigh: Option<Weigh<T>>,
    /// Segments kept so far, and those let go for want of budget
    /// (Relaxed counters: they publish nothing).
    kept_segments: AtomicU64,
    let_go_segments: AtomicU64,
}

impl<T> KeepBudget<T> {
    pub(crate) fn new(limit: usize, weigh: Option<Weigh<T>>) -> Self {
        Self {
            limit: limit as u64,
            used: AtomicU64::new(0),
            weigh,
            kept_segments: AtomicU64::new(0),
            let_go_segments: AtomicU64::new(0),
        }
    }

    /// Bytes of undurable events kept past their rings' windows now.
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Relaxed)
    }

    /// Segments kept so far, and segments let go because the budget was
    /// spent.
    pub(crate) fn segments(&self) -> (u64, u64) {
        (
            self.kept_segments.load(Relaxed),
            self.let_go_segments.load(Relaxed),
        )
    }

    /// The weight of `segment`: each slot's event's own size (and the
    /// slot), plus each published payload as the store weighs it. `None`
    /// when the events' own size alone does not fit the budget's limit
    /// (so a spent or zero budget costs no weighing).
    fn weight_of(&self, segment: &Segment<T>) -> Option<u64> {
        let own = std::mem::size_of::<Event<T>>() + std::mem::size_of::<usize>();
        let mut bytes = own * segment.len();
        if (bytes as u64).saturating_add(self.used()) > self.limit {
            return None;
        }
        if let Some(weigh) = &self.weigh {
            for offset in 0..segment.len() {
                if let Some(event) = segment.peek(offset) {
                    bytes += weigh(&event.payload);
                }
            }
        }
        Some(bytes as u64)
    }

    /// Reserves `weight` bytes if the budget has room for them.
    fn reserve(&self, weight: u64) -> bool {
        // Relaxed: a budget is a bound, not a synchronisation; a race lets
        // concurrent reservations overshoot by one segment each at most.
        let mut used = self.used.load(Relaxed);
        loop {
            if used.saturating_add(weight) > self.limit {
                return false;
            }
            match self
                .used
                .compare_exchange_weak(used, used + weight, Relaxed, Relaxed)
            {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    fn give_back(&self, weight: u64) {
        self.used.fetch_sub(weight, Relaxed);
    }
}

/// A segment kept past the window, with the weight reserved for it.
struct KeptSegment<T> {
    segment: Arc<Segment<T>>,
    last_position: u64,
    weight: u64,
}

/// What the persister finds at an undurable position the directory no
/// longer holds.
pub(crate) enum KeptRead<T> {
    Event(Arc<Event<T>>),
    /// Let go (the budget was spent, or the position was lapped before its
    /// writer published it): a hole.
    LetGo,
    /// Its segment's hand-over is in flight: try again next round.
    InFlight,
}

/// One ring's kept segments (see the module docs).
pub(crate) struct Kept<T> {
    budget: StdArc<KeepBudget<T>>,
    /// A lower bound of the durable watermark: segments wholly at or below
    /// it are not kept. `u64::MAX` once nothing more is to be kept.
    kept_above: AtomicU64,
    /// Every undurable position at or below it that is not kept was let go.
    let_go_through: AtomicU64,
    /// Segments handed over by writers, not yet seen by the persister.
    arrivals: Queue<KeptSegment<T>>,
    /// The persister's: kept segments by number.
    held: Mutex<BTreeMap<u64, KeptSegment<T>>>,
}

impl<T> Kept<T> {
    pub(crate) fn new(budget: StdArc<KeepBudget<T>>, durable: u64) -> Self {
        Self {
            budget,
            kept_above: AtomicU64::new(durable),
            let_go_through: AtomicU64::new(0),
            arrivals: Queue::new(),
            held: Mutex::new(BTreeMap::new()),
        }
    }

    /// A writer displaced `segment`, whose last position is
    /// `last_position`: keeps it if it holds undurable positions and the
    /// budget has room; otherwise gives it back for the recycler.
    pub(crate) fn offer(
        &self,
        segment: Arc<Segment<T>>,
        last_position: u64,
    ) -> Option<Arc<Segment<T>>> {
        // Relaxed: a hint (module docs).
        if last_position <= self.kept_above.load(Relaxed) {
            return Some(segment);
        }
        let weight = self.budget.weight_of(&segment);
        if let Some(weight) = weight.filter(|&weight| self.budget.reserve(weight)) {
            self.budget.kept_segments.fetch_add(1, Relaxed);
            self.arrivals.push(KeptSegment {
                segment,
                last_position,
                weight,
            });
            None
        } else {
            self.budget.let_go_segments.fetch_add(1, Relaxed);
            self.let_go(last_position);
            Some(segment)
        }
    }

    /// Every undurable position up to `position` that is not kept is lost.
    fn let_go(&self, position: u64) {
        // Release: pairs with the persister's Acquire in `read`, so that a
        // persister that sees it also sees the arrivals pushed before it.
        self.let_go_through.fetch_max(position, Release);
    }

    /// The persister's read of `position` (at `place`), which the
    /// directory no longer holds; `lapped_through` reads the directory's
    /// count of positions lapped before their writers stored them.
    pub(crate) fn read(
        &self,
        place: Place,
        position: u64,
        lapped_through: impl FnOnce() -> u64,
    ) -> KeptRead<T> {
        // Read before the arrivals (Acquire, see `let_go`): a writer's
        // arrivals pushed before it let a later segment go are then seen.
        let let_go_through = self.let_go_through.load(Acquire).max(lapped_through());
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(arrival) = self.arrivals.pop() {
            let number = arrival.segment.number();
            if let Some(twice) = held.insert(number, arrival) {
                // Kept twice cannot happen (a segment leaves the directory
                // once); return the weight if it ever did.
                self.budget.give_back(twice.weight);
            }
        }
        let found = held.get(&place.segment);
        if let Some(event) = found.and_then(|kept| kept.segment.get(place.offset)) {
            return KeptRead::Event(event);
        }
        if position <= let_go_through {
            KeptRead::LetGo
        } else {
            KeptRead::InFlight
        }
    }

    /// Everything through `durable` is in the log: drops the segments
    /// wholly at or below it.
    pub(crate) fn release_through(&self, durable: u64) {
        self.kept_above.fetch_max(durable, Relaxed);
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(arrival) = self.arrivals.pop() {
            held.insert(arrival.segment.number(), arrival);
        }
        held.retain(|_, kept| {
            let keep = kept.last_position > durable;
            if !keep {
                self.budget.give_back(kept.weight);
            }
            keep
        });
    }

    /// Nothing more of this ring will be written (fenced): drops every kept
    /// segment and keeps none from now on.
    pub(crate) fn release_all(&self) {
        self.release_through(u64::MAX);
    }

    /// Segments this ring keeps now (arrivals included).
    #[cfg(test)]
    pub(crate) fn kept_segments(&self) -> usize {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(arrival) = self.arrivals.pop() {
            held.insert(arrival.segment.number(), arrival);
        }
        held.len()
    }
}

impl<T> Drop for Kept<T> {
    fn drop(&mut self) {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        for kept in held.values() {
            self.budget.give_back(kept.weight);
        }
        while let Some(arrival) = self.arrivals.pop() {
            self.budget.give_back(arrival.weight);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Arc as StdArc;

    use super::{KeepBudget, Kept};
    use crate::cursor::Revision;
    use crate::ring::tests::event;
    use crate::ring::{Ring, Undurable};

    /// A ring of capacity 4 (segments of 4, two entries) over `budget`, with
    /// nothing durable yet.
    fn ring(budget: &StdArc<KeepBudget<u64>>) -> Ring<u64> {
        let kept = Kept::new(StdArc::clone(budget), 0);
        Ring::continuing(4, 0, Revision::default(), Some(Box::new(kept)))
    }

    fn read_all(ring: &Ring<u64>, through: u64) -> Vec<Option<u64>> {
        (1..=through)
            .map(|position| match ring.read_undurable(position) {
                Undurable::Event(event) => Some(event.payload),
                Undurable::Lost => None,
                Undurable::NotYet => panic!("{position} not readable yet"),
            })
            .collect()
    }

    #[test]
    fn a_lapped_undurable_segment_is_kept_until_released() {
        let budget = StdArc::new(KeepBudget::new(1 << 20, None));
        let ring = ring(&budget);
        for position in 1..=20 {
            ring.publish(&event(position));
        }
        // Segments 1..=4 to 9..=12 were lapped: all kept.
        assert_eq!(ring.kept.as_ref().unwrap().kept_segments(), 3);
        assert_eq!(budget.segments(), (3, 0));
        assert!(budget.used() > 0);
        let all: Vec<_> = (1..=20).map(Some).collect();
        assert_eq!(read_all(&ring, 20), all);
        // Durable through 6: only the segment wholly below goes.
        ring.release_kept(6);
        assert_eq!(ring.kept.as_ref().unwrap().kept_segments(), 2);
        ring.release_kept(12);
        assert_eq!(ring.kept.as_ref().unwrap().kept_segments(), 0);
        assert_eq!(budget.used(), 0);
        // Segments lapped once they are durable are not kept.
        ring.release_kept(20);
        for position in 21..=28 {
            ring.publish(&event(position));
        }
        assert_eq!(budget.segments(), (3, 0), "13..=20 were durable");
    }

    #[test]
    fn a_spent_budget_lets_go_and_the_positions_read_as_lost() {
        // Room for one segment of four `Event<u64>`s, not two.
        let weight = {
            let ring = ring(&StdArc::new(KeepBudget::new(usize::MAX, None)));
            for position in 1..=12 {
                ring.publish(&event(position));
            }
            ring.kept.as_ref().unwrap().budget.used()
        };
        let budget = StdArc::new(KeepBudget::new(weight as usize, None));
        let ring = ring(&budget);
        for position in 1..=16 {
            ring.publish(&event(position));
        }
        assert_eq!(budget.segments(), (1, 1));
        let mut expected: Vec<_> = (1..=16).map(Some).collect();
        for lost in &mut expected[4..8] {
            *lost = None;
        }
        assert_eq!(read_all(&ring, 16), expected);
        ring.release_all_kept();
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn dropping_the_ring_gives_the_budget_back() {
        let budget = StdArc::new(KeepBudget::new(1 << 20, None));
        {
            let ring = ring(&budget);
            for position in 1..=40 {
                ring.publish(&event(position));
            }
            assert!(budget.used() > 0);
        }
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn payloads_are_weighed_with_the_stores_weigher() {
        let plain = StdArc::new(KeepBudget::<u64>::new(1 << 20, None));
        let weighed = StdArc::new(KeepBudget::<u64>::new(
            1 << 20,
            Some(StdArc::new(|_: &u64| 1000)),
        ));
        let used: Vec<u64> = [&plain, &weighed]
            .into_iter()
            .map(|budget| {
                let ring = ring(budget);
                for position in 1..=12 {
                    ring.publish(&event(position));
                }
                budget.used()
            })
            .collect();
        assert_eq!(used[1], used[0] + 4 * 1000);
    }
}
