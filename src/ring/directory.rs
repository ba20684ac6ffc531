//! The directory: which segment currently holds each part of the window.
//!
//! A session's positions are cut into segments of `segment_len` positions;
//! segment `n` lives in directory entry `n % entries`. There are enough
//! entries for `capacity` positions plus one segment, so the newest
//! `capacity` positions always fit, and storage grows lazily: an entry is
//! filled when its first position is written.
//!
//! **A short first segment.** With full-length segments (64), segment 0
//! holds only the first `PROLOGUE` (16) positions, and segment `n >= 1`
//! holds `PROLOGUE + (n - 1) * len + 1 ..= PROLOGUE + n * len`: a session
//! that stays small (most of them) allocates 16 slots, not 64. The entry
//! count does not change, because segment `n` still lies more than
//! `capacity` positions after segment `n - entries` (its first position
//! minus the other's last is `1 + (entries - 1) * len` for every `n`, the
//! short one included), and once the first lap is over the ring is exactly
//! as before, shifted by 16 positions. Shorter segments (rings of capacity
//! under 64) have no short first segment.
//!
//! Invariants:
//! * the segment number held by an entry never decreases, except that a
//!   trim may empty an entry whose positions are all at or below the floor
//!   (a lapped writer may then put an older segment back; everything it
//!   covers is below the floor, so readers report it trimmed);
//! * a writer installs a new segment by compare-and-swap over the exact
//!   older segment (or empty entry) it saw, so a writer that was lapped can
//!   never replace a newer segment with an older one;
//! * a segment that leaves the directory stays alive while a reader holds
//!   it (`Arc`): memory is never freed under a reader.
//!
//! Replacing a segment is the only write to an entry, once per
//! `segment_len` appends, so `arc-swap`'s writer cost (which grows with the
//! number of threads that use it) is paid once per segment, not per event.

use super::recycler::Recycler;
use super::segment::Segment;
use crate::event::Event;
use std::sync::atomic::Ordering::{Acquire, Release};

use crate::sync::{Arc, AtomicArcCell, AtomicU64, Loaded};

/// Positions per segment at most: 64 slots of 8 bytes.
pub(crate) const MAX_SEGMENT_LEN: usize = 64;

/// Positions in segment 0 when segments are `MAX_SEGMENT_LEN` long: a
/// multiple of the recycler's step, so its steps stay aligned with the
/// segments that follow.
const PROLOGUE: u64 = 16;

/// Where position `p` lives.
#[derive(Clone, Copy)]
pub(crate) struct Place {
    /// Segment number.
    pub(crate) segment: u64,
    /// Directory entry.
    entry: usize,
    /// Slot in the segment.
    pub(crate) offset: usize,
}

/// What an entry holding another segment than the place's says about it.
pub(crate) enum Lookup {
    /// The entry holds a later segment: the place was lapped (trimmed).
    Newer,
    /// The entry is empty or holds an earlier segment: nothing was
    /// published at the place yet, or it was trimmed and freed.
    Older,
}

/// `repr(C)`: the fields every read needs first, the recycler (which only
/// writers touch) last, on a line of its own (see `Ring`'s layout).
#[repr(C)]
pub(crate) struct Directory<T> {
    entries: Box<[AtomicArcCell<Segment<T>>]>,
    /// A power of two, so locating a position is shifts and masks.
    segment_len: u64,
    segment_shift: u32,
    /// Positions in segment 0 if it is short (`PROLOGUE`), or 0.
    prologue: u32,
    /// Where displaced segments go, and where new ones come from.
    recycler: Recycler<T>,
    /// The highest position whose writer found it lapped before it could
    /// store its event (no segment ever held it).
    lapped_through: AtomicU64,
}

impl<T> Directory<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        // The largest power of two <= min(capacity, MAX_SEGMENT_LEN).
        let segment_len = 1usize << capacity.min(MAX_SEGMENT_LEN).ilog2();
        let entries = capacity.div_ceil(segment_len) + 1;
        let prologue = if segment_len == MAX_SEGMENT_LEN {
            PROLOGUE as u32
        } else {
            0
        };
        Self {
            entries: (0..entries).map(|_| AtomicArcCell::empty()).collect(),
            segment_len: segment_len as u64,
            segment_shift: segment_len.trailing_zeros(),
            prologue,
            recycler: Recycler::new(segment_len as u64),
            lapped_through: AtomicU64::new(0),
        }
    }

    /// Positions in segment `number`.
    #[inline]
    pub(crate) fn segment_len_of(&self, number: u64) -> u64 {
        if number == 0 && self.prologue != 0 {
            u64::from(self.prologue)
        } else {
            self.segment_len
        }
    }

    /// See the field: every position at or below it that no segment holds
    /// was lapped before its writer stored it.
    pub(crate) fn lapped_through(&self) -> u64 {
        // Acquire: see `publish`.
        self.lapped_through.load(Acquire)
    }

    /// The last position of segment `number`.
    #[inline]
    pub(crate) fn last_position(&self, number: u64) -> u64 {
        self.first_position(number) + self.segment_len_of(number) - 1
    }

    /// The first position of segment `number`.
    fn first_position(&self, number: u64) -> u64 {
        match (number, u64::from(self.prologue)) {
            (_, 0) => number * self.segment_len + 1,
            (0, _) => 1,
            (_, prologue) => prologue + (number - 1) * self.segment_len + 1,
        }
    }

    #[inline]
    pub(crate) fn place(&self, position: u64) -> Place {
        debug_assert!(position > 0, "positions are 1-based");
        let index = position - 1;
        let prologue = u64::from(self.prologue);
        let (segment, offset) = if index < prologue {
            (0, index)
        } else {
            let index = index - prologue;
            (
                (index >> self.segment_shift) + u64::from(prologue != 0),
                index & (self.segment_len - 1),
            )
        };
        Place {
            segment,
            // Fewer entries than MAX_CAPACITY, so it fits in usize.
            entry: (segment % self.entries.len() as u64) as usize,
            offset: offset as usize,
        }
    }

    /// Runs `f` on the place's segment without taking a reference to it,
    /// or returns what the entry holds instead.
    #[inline]
    pub(crate) fn with_current<R>(
        &self,
        place: Place,
        f: impl FnOnce(&Segment<T>) -> R,
    ) -> Result<R, Lookup> {
        self.entries[place.entry].with(|held| match held {
            Some(segment) if segment.number() == place.segment => Ok(f(segment)),
            _ => Err(classify(held, place)),
        })
    }

    /// What the place's entry holds now, kept alive while the returned
    /// [`Loaded`] lives, without taking a reference to it (for a reader
    /// that lends what it read; see `ring::lend`).
    #[inline]
    pub(crate) fn load(&self, place: Place) -> Loaded<Segment<T>> {
        self.entries[place.entry].load()
    }

    /// The place's segment, with a reference taken (for a reader that
    /// keeps it across reads), or what the entry holds instead.
    #[inline]
    pub(crate) fn current(&self, place: Place) -> Result<Arc<Segment<T>>, Lookup> {
        self.entries[place.entry].with(|held| match held {
            Some(segment) if segment.number() == place.segment => Ok(Arc::clone(segment)),
            _ => Err(classify(held, place)),
        })
    }

    /// Publishes `event` at its place, installing its segment first if it
    /// is not there yet. If the place was already lapped, the event is
    /// outside the window and is not stored (readers report it trimmed).
    ///
    /// Returns the older segment it took out of the directory, if any, for
    /// the caller to [retire](Directory::retire) once the append is
    /// announced: a payload whose `Drop` panics must not stop this event
    /// from being published.
    ///
    /// An event lapped before it could be stored raises
    /// [`Directory::lapped_through`] to its position.
    #[must_use = "dropping the displaced segment frees its events"]
    pub(crate) fn publish(&self, event: &Arc<Event<T>>) -> Option<Arc<Segment<T>>> {
        let place = self.place(event.position);
        let entry = &self.entries[place.entry];
        let mut displaced = None;
        loop {
            let done = entry.with(|held| match held {
                Some(segment) if segment.number() == place.segment => {
                    segment.publish(place.offset, event);
                    true
                }
                Some(segment) if segment.number() > place.segment => {
                    // Release: pairs with the persister's Acquire (module
                    // `kept`): it then sees what this writer kept before.
                    self.lapped_through.fetch_max(event.position, Release);
                    true
                }
                _ => {
                    // Older or empty: install ours over exactly what we saw.
                    // If another writer of the same segment won the race,
                    // the next turn finds its segment and ours is dropped.
                    let fresh = self
                        .recycler
                        .segment(place.segment, self.segment_len_of(place.segment) as usize);
                    if let Some(older) = entry.compare_and_set(held, Some(fresh)) {
                        displaced = older;
                    }
                    false
                }
            });
            if done {
                return displaced;
            }
        }
    }

    /// Frees every segment whose positions are all in `from..=to`, taking
    /// them out of the directory by compare-and-swap against the exact
    /// segment seen. Returns them so the caller drops them (and their
    /// events) when it chooses.
    pub(crate) fn free_through(&self, from: u64, to: u64) -> Vec<Arc<Segment<T>>> {
        let mut freed = Vec::new();
        if from > to {
            return freed;
        }
        let first = self.place(from).segment;
        let last = self.place(to).segment;
        for number in first..=last {
            let segment_first = self.first_position(number);
            if segment_first + self.segment_len_of(number) - 1 > to {
                break;
            }
            let place = self.place(segment_first);
            let entry = &self.entries[place.entry];
            let taken = entry.with(|held| match held {
                Some(segment) if segment.number() == number => {
                    entry.compare_and_set(held, None).flatten()
                }
                _ => None,
            });
            freed.extend(taken);
        }
        freed
    }

    /// Hands a displaced segment to the recycler (see [`Recycler::retire`]).
    #[inline]
    pub(crate) fn retire(&self, displaced: Arc<Segment<T>>) {
        self.recycler.retire(displaced);
    }

    /// The recycler's step for the append of `position`: frees a few events
    /// of a retired segment (see [`Recycler::step`]).
    #[inline]
    pub(crate) fn recycle_step(&self, position: u64) {
        self.recycler.step(position);
    }

    /// Segments currently allocated (in the directory or held by the
    /// recycler), and their length.
    pub(crate) fn allocated_slots(&self) -> usize {
        let in_entries: usize = self
            .entries
            .iter()
            .map(|entry| entry.with(|held| held.map_or(0, |segment| segment.len())))
            .sum();
        in_entries + self.recycler.held_segments() * self.segment_len as usize
    }
}

/// What `held` says about `place`, whose segment it is not.
#[inline]
fn classify<T>(held: Option<&Arc<Segment<T>>>, place: Place) -> Lookup {
    match held {
        Some(segment) if segment.number() > place.segment => Lookup::Newer,
        _ => Lookup::Older,
    }
}
