//! The slot table: `capacity` slots in lazily allocated fixed-size chunks.
//!
//! Position `p` lives in slot `(p - 1) % capacity`. Chunks are allocated on
//! first write and installed once, lock-free (racing writers each build a
//! chunk, one wins, the others free theirs); after that a chunk never moves
//! or goes away while the ring lives, so a reader holding `&Slot` is never
//! invalidated. A session with ten events therefore holds one chunk, not
//! `capacity` slots.

use super::slot::Slot;
use crate::sync::OnceSlot;

/// Slots per chunk: 64 pointers, 512 bytes.
pub(crate) const CHUNK_SLOTS: usize = 64;

struct Chunk<T>([Slot<T>; CHUNK_SLOTS]);

pub(crate) struct SlotTable<T> {
    chunks: Box<[OnceSlot<Chunk<T>>]>,
    capacity: u64,
}

impl<T> SlotTable<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        let chunk_count = capacity.div_ceil(CHUNK_SLOTS);
        Self {
            chunks: (0..chunk_count).map(|_| OnceSlot::new()).collect(),
            capacity: capacity as u64,
        }
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    #[inline]
    fn locate(&self, position: u64) -> (usize, usize) {
        debug_assert!(position > 0, "positions are 1-based");
        // Less than `capacity` <= MAX_CAPACITY, so it fits in usize.
        let index = ((position - 1) % self.capacity) as usize;
        (index / CHUNK_SLOTS, index % CHUNK_SLOTS)
    }

    /// The slot of `position`, or `None` if its chunk was never written (so
    /// nothing was ever published there).
    #[inline]
    pub(crate) fn get(&self, position: u64) -> Option<&Slot<T>> {
        let (chunk, offset) = self.locate(position);
        self.chunks[chunk].get().map(|chunk| &chunk.0[offset])
    }

    /// The slot of `position`, allocating its chunk on first touch.
    #[inline]
    pub(crate) fn get_or_alloc(&self, position: u64) -> &Slot<T> {
        let (chunk, offset) = self.locate(position);
        &self.chunks[chunk]
            .get_or_init(|| Box::new(Chunk(std::array::from_fn(|_| Slot::empty()))))
            .0[offset]
    }

    /// Chunks allocated so far (for memory accounting).
    pub(crate) fn allocated_chunks(&self) -> usize {
        self.chunks
            .iter()
            .filter(|chunk| chunk.get().is_some())
            .count()
    }
}
