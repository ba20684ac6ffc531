//! Retiring lapped segments: their events freed a few per append, their
//! storage reused for the next segment.
//!
//! # Why
//!
//! A writer that installs segment `n` displaces segment `n - entries`, whose
//! events (up to 64) have all left the window. Dropping that segment inline
//! made one append in 64 free 64 events and allocate two blocks: a plateau
//! of about 1.8 µs from p98.4 on, against about 120 ns for every other
//! append. Here the displacing append hands the segment to its ring's
//! recycler instead; every `step`-th position's writer then frees `step` of
//! its events (the segment is empty just as the next one is due), and the
//! emptied segment becomes the *spare* that the next installation renumbers
//! and puts back: a steady ring allocates nothing but its events.
//!
//! # Exclusive ownership, not a new protocol
//!
//! * A displaced segment is kept only if `Arc::get_mut` shows that the
//!   recycler holds the one reference to it. It is out of the directory, so
//!   no reader can find it again; a reader that still holds it (a
//!   subscription keeps its segment; a reader inside the directory cell's
//!   guard, whose reference the displacing compare-and-swap accounted for)
//!   makes it shared, and then it is dropped as before by whoever lets go
//!   last. The slots are emptied through `&mut`: exclusive by the type
//!   system, no atomics, nothing for a reader to race.
//! * A spare goes back into the directory by the same compare-and-swap as a
//!   fresh segment, which publishes its new number and empty slots to
//!   every reader that loads the entry.
//! * **No ABA.** The directory's compare-and-swap compares pointers, and a
//!   recycled segment comes back at the same address. A writer only
//!   compares against a segment it holds (inside the cell's guard), and a
//!   held segment is never unique, so never recycled while anyone could
//!   compare against it.
//! * The recycler's state sits behind a mutex that is only ever *tried*: a
//!   writer that finds it taken skips its step (the segment is finished
//!   off by a later step, or dropped whole when the next one retires).
//!   Nothing waits, so the ring stays lock-free (its invariant 5).
//!
//! # Invariants
//!
//! 1. Only segments that are out of the directory and uniquely held are
//!    drained or kept.
//! 2. At most one segment is draining and one is spare per ring: the
//!    recycler holds at most two segments' slots (counted in
//!    `allocated_slots`).
//! 3. The spare is empty: every slot was taken before it became the spare.
//! 4. Taken events are dropped after the lock is released (a payload whose
//!    `Drop` panics cannot poison it), and after the append that takes them
//!    has been announced (the ring calls in after its doorbell).
//!
//! Under loom the directory's cell stand-in keeps every value it ever held
//! alive, so a displaced segment is never unique there and these paths do
//! not run in the models: what they rely on is `Arc`'s uniqueness and a
//! try-lock, not an ordering of this crate's atomics. (Loom still sees the
//! uniqueness check of every retired segment; the `work` hint it does not
//! see, see [`HintUsize`].) What the models cannot reach, `tests/stress.rs`
//! does: writers lapping a tiny ring and a full-length one under readers
//! and a subscriber, with every event checked, fail at once if a segment
//! comes back with its old events.
//!
//! `allocated_slots` counts a draining segment as full-length, also while
//! it is a ring's short first one (once per ring, for one lap).

use std::sync::atomic::Ordering::Relaxed;

use super::segment::Segment;
use crate::event::Event;
use crate::sync::{Arc, HintUsize, Mutex};

/// Events freed per step, at most (the step is also at most the segment
/// length, so that a segment drains in exactly `len / step` steps).
const DRAIN_STEP: u64 = 4;

/// `work` bit: a segment is draining.
const DRAINING: usize = 1;
/// `work` bit: an empty segment waits to be reused.
const SPARE: usize = 2;

pub(crate) struct Recycler<T> {
    /// Which of `DRAINING` and `SPARE` the state holds: lets the append
    /// path skip the lock when there is nothing to do. Written under the
    /// lock; read Relaxed, as a hint only (the lock orders the state; a
    /// stale reading skips a step or finds nothing to do).
    work: HintUsize,
    state: Mutex<State<T>>,
    /// `min(DRAIN_STEP, segment length)`: a power of two.
    step: u32,
    /// Length of the segments it keeps as spares: a ring's short first
    /// segment is drained like the others, then dropped.
    segment_len: u32,
}

struct State<T> {
    /// The segment being drained, and the next offset to empty.
    draining: Option<(Arc<Segment<T>>, usize)>,
    spare: Option<Arc<Segment<T>>>,
}

impl<T> Recycler<T> {
    pub(crate) fn new(segment_len: u64) -> Self {
        Self {
            work: HintUsize::new(0),
            state: Mutex::new(State {
                draining: None,
                spare: None,
            }),
            // Both at most MAX_SEGMENT_LEN.
            step: DRAIN_STEP.min(segment_len) as u32,
            segment_len: segment_len as u32,
        }
    }

    /// A segment for `number`, of `len` slots: the spare, renumbered, if
    /// there is one at hand and it is that long; otherwise a new
    /// allocation.
    #[inline]
    pub(crate) fn segment(&self, number: u64, len: usize) -> Arc<Segment<T>> {
        if self.work.load(Relaxed) & SPARE != 0 && len == self.segment_len as usize {
            if let Ok(mut state) = self.state.try_lock() {
                if let Some(mut spare) = state.spare.take() {
                    self.work.fetch_and(!SPARE, Relaxed);
                    drop(state);
                    // Unique by invariant 1; `None` cannot happen, and would
                    // only cost the allocation below.
                    if let Some(segment) = Arc::get_mut(&mut spare) {
                        segment.renumber(number);
                        return spare;
                    }
                }
            }
        }
        Arc::new(Segment::new(number, len))
    }

    /// Takes a segment the directory no longer holds: drained later if no
    /// one else holds it, dropped now (by this call or its last holder)
    /// otherwise.
    pub(crate) fn retire(&self, mut displaced: Arc<Segment<T>>) {
        if Arc::get_mut(&mut displaced).is_none() {
            return;
        }
        let Ok(mut state) = self.state.try_lock() else {
            return;
        };
        // A segment still draining (steps were skipped) is finished off
        // here, outside the lock.
        let unfinished = state.draining.replace((displaced, 0));
        self.work.fetch_or(DRAINING, Relaxed);
        drop(state);
        drop(unfinished);
    }

    /// The step of the append that published `position`: every `step`-th
    /// position frees up to `step` events of the draining segment.
    #[inline]
    pub(crate) fn step(&self, position: u64) {
        if position & (u64::from(self.step) - 1) != 0 || self.work.load(Relaxed) & DRAINING == 0 {
            return;
        }
        self.drain(self.step as usize);
    }

    /// Frees up to `count` (at most `DRAIN_STEP`) events of the draining
    /// segment.
    fn drain(&self, count: usize) {
        let Ok(mut state) = self.state.try_lock() else {
            return;
        };
        let Some((mut segment, mut next)) = state.draining.take() else {
            return;
        };
        let mut freed: [Option<Arc<Event<T>>>; DRAIN_STEP as usize] = Default::default();
        let mut leftover = None;
        match Arc::get_mut(&mut segment) {
            Some(exclusive) => {
                let end = exclusive.len().min(next + count.min(freed.len()));
                for place in &mut freed[..end - next] {
                    *place = exclusive.take(next);
                    next += 1;
                }
                if next < exclusive.len() {
                    state.draining = Some((segment, next));
                } else if state.spare.is_none() && exclusive.len() == self.segment_len as usize {
                    state.spare = Some(segment);
                    self.work.fetch_or(SPARE, Relaxed);
                } else {
                    leftover = Some(segment);
                }
            }
            None => leftover = Some(segment),
        }
        if state.draining.is_none() {
            self.work.fetch_and(!DRAINING, Relaxed);
        }
        drop(state);
        drop(freed);
        drop(leftover);
    }

    /// Slots the recycler holds (a draining and a spare segment at most).
    pub(crate) fn held_segments(&self) -> usize {
        self.work.load(Relaxed).count_ones() as usize
    }
}
