//! The write-once slot: one event's place in a segment, set at most once by
//! the writer that claimed its position, read by anyone, emptied only by
//! its exclusive owner.
//!
//! This is the one module of the crate as built with `unsafe` code (a
//! loom build adds the `Sync` of its witness). A slot is an
//! [`AtomicPtr`] that is null (empty) or the pointer of an `Arc<E>` made by
//! [`Arc::into_raw`]; while it is non-null, the slot owns that one strong
//! reference. Setting a slot is a plain release store; `std::sync::OnceLock`
//! does the same job with two locked read-modify-writes (it must let
//! several threads race to set it, which a claimed position never does).
//! That was 10 to 12 ns of a 125 ns append, and a slot is now 8 bytes
//! instead of 16 (docs/benchmark-history.md, "Issue 13, fourth round").
//!
//! # Invariants
//!
//! 1. **A non-null pointer came from `Arc::into_raw` of an `Arc<E>`, and
//!    the slot holds that strong reference** until the pointer leaves the
//!    slot: only [`WriteOnce::take`] and `Drop` take it out, and both turn
//!    it back into the `Arc` they then own, exactly once.
//! 2. **The pointer never changes while the slot is shared.** `set` stores
//!    only over null, and only `take`/`Drop` (which hold `&mut`) empty a
//!    slot; so a reader that loaded a pointer holding `&self` knows the
//!    slot's reference is alive for as long as its borrow lasts. That is
//!    what lets [`WriteOnce::peek`] lend the value for the borrow instead
//!    of counting a reference.
//! 3. **What a reader sees is complete.** `set` publishes with `Release`;
//!    `get`, `peek` and `is_set` load with `Acquire`: a reader that sees the
//!    pointer sees the event written behind it (the allocation and every
//!    field written before the `Arc` reached `set`).
//!
//! Only the writer that claimed a position sets its slot (the ring's claim
//! makes positions unique), so `set` needs no compare-and-swap. Should that
//! ever break, two racing `set`s would both store: the first `Arc` would be
//! leaked, never freed under a reader, so even then nothing is unsound.
//!
//! Under `cfg(loom)` the same code runs on loom's `AtomicPtr` and `Arc`,
//! and a [`Witness`] records the write of the event and each read of it, so
//! loom reports a read that the `Release`/`Acquire` pair does not order
//! after the write (a weakened ordering fails the models in which a reader
//! takes an event written on another thread with no other synchronisation
//! between them; `loom-tests/README.md` lists them).

#![allow(unsafe_code)]

use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use crate::sync::{take_ptr, Arc, AtomicPtr, Witness};

/// A slot for one `Arc<E>`, set at most once, then read by any number of
/// threads until its owner empties it through `&mut`.
pub(crate) struct WriteOnce<E> {
    value: AtomicPtr<E>,
    witness: Witness,
    /// The slot owns an `Arc<E>`: it is `Send`/`Sync` only when `Arc<E>`
    /// is, and dropping it may drop an `E`.
    _owns: PhantomData<Arc<E>>,
}

impl<E> WriteOnce<E> {
    pub(crate) fn new() -> Self {
        Self {
            value: AtomicPtr::new(ptr::null_mut()),
            witness: Witness::new(),
            _owns: PhantomData,
        }
    }

    /// Sets the value; `false` (and `value` dropped) if it was already set.
    #[inline]
    pub(crate) fn set(&self, value: Arc<E>) -> bool {
        // Relaxed: only this slot's one writer stores here (invariant 2 and
        // the module docs); the check only guards against a second `set`.
        if !self.value.load(Relaxed).is_null() {
            return false;
        }
        self.witness.write();
        // Release: publishes the event behind the pointer (invariant 3).
        self.value.store(Arc::into_raw(value).cast_mut(), Release);
        true
    }

    /// The value, if set: a new strong reference to it.
    #[inline]
    pub(crate) fn get(&self) -> Option<Arc<E>> {
        // Acquire: pairs with `set`'s Release (invariant 3).
        let value = self.value.load(Acquire);
        if value.is_null() {
            return None;
        }
        self.witness.read();
        // SAFETY: `value` came from `Arc::into_raw` and the slot holds its
        // strong reference (invariant 1), which cannot be released while
        // `&self` is borrowed (invariant 2): the count is at least 1 for
        // the whole call, as `increment_strong_count` requires. The new
        // count is the one `from_raw` takes over, so the slot keeps its
        // own.
        unsafe {
            Arc::increment_strong_count(value);
            Some(Arc::from_raw(value))
        }
    }

    /// The value, if set, borrowed for as long as the slot is: no
    /// reference count is touched, so a reader that only looks at the
    /// value leaves its cache line shared with the writer instead of
    /// writing to it (see `ring::lend`).
    #[inline]
    pub(crate) fn peek(&self) -> Option<&E> {
        // Acquire: pairs with `set`'s Release (invariant 3).
        let value = self.value.load(Acquire);
        if value.is_null() {
            return None;
        }
        self.witness.read();
        // SAFETY: `value` came from `Arc::into_raw`, so it points to the
        // live `E` of an `Arc` allocation, and the slot holds one strong
        // reference to it (invariant 1). That reference is released only
        // through `&mut self` (invariant 2), which cannot exist while the
        // returned borrow, tied to `&self`, does: the `E` outlives the
        // borrow. Nobody can have it mutably meanwhile: an `Arc` lends
        // `&mut E` only to the holder of its one reference (`get_mut`), and
        // while the slot holds one, any other holder sees a count of at
        // least two.
        Some(unsafe { &*value })
    }

    /// Whether the value is set (no reference taken).
    #[inline]
    pub(crate) fn is_set(&self) -> bool {
        // Acquire: as in `get`, so "set" implies the event is visible.
        !self.value.load(Acquire).is_null()
    }

    /// Empties the slot. `&mut`: only the slot's one owner can.
    #[inline]
    pub(crate) fn take(&mut self) -> Option<Arc<E>> {
        let value = take_ptr(&mut self.value);
        if value.is_null() {
            return None;
        }
        self.witness.take();
        // SAFETY: `value` came from `Arc::into_raw` and the slot held its
        // strong reference (invariant 1); the slot is now null, so this is
        // the one place that reference is turned back into an `Arc`.
        Some(unsafe { Arc::from_raw(value) })
    }
}

impl<E> Drop for WriteOnce<E> {
    fn drop(&mut self) {
        drop(self.take());
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_set_once_and_read_many_times() {
        let slot = WriteOnce::new();
        assert!(!slot.is_set());
        assert!(slot.get().is_none());
        let first = Arc::new(String::from("first"));
        assert!(slot.set(Arc::clone(&first)));
        assert!(slot.is_set());
        let read = slot.get().expect("set");
        assert!(Arc::ptr_eq(&read, &first));
        // The slot, `first` and `read`.
        assert_eq!(Arc::strong_count(&first), 3);
        let second = Arc::new(String::from("second"));
        assert!(!slot.set(Arc::clone(&second)), "a second set is refused");
        assert_eq!(Arc::strong_count(&second), 1, "and drops its value");
        assert_eq!(*slot.get().expect("still set"), "first");
    }

    #[test]
    fn take_empties_the_slot_and_hands_its_reference_back() {
        let mut slot = WriteOnce::new();
        let event = Arc::new(7_u64);
        slot.set(Arc::clone(&event));
        let taken = slot.take().expect("set");
        assert!(Arc::ptr_eq(&taken, &event));
        assert!(slot.take().is_none());
        assert!(!slot.is_set());
        drop(taken);
        assert_eq!(Arc::strong_count(&event), 1, "the slot holds nothing");
        assert!(slot.set(Arc::new(8)), "an emptied slot is set again");
    }

    #[test]
    fn dropping_a_set_slot_releases_its_value() {
        let event = Arc::new(vec![1_u8; 16]);
        let slot = WriteOnce::new();
        slot.set(Arc::clone(&event));
        drop(slot);
        assert_eq!(Arc::strong_count(&event), 1);
    }

    #[test]
    fn a_peek_lends_the_value_without_counting_a_reference() {
        let slot = WriteOnce::new();
        assert!(slot.peek().is_none());
        let event = Arc::new(String::from("lent"));
        slot.set(Arc::clone(&event));
        let lent = slot.peek().expect("set");
        assert!(std::ptr::eq(lent, &*event), "the value itself, not a copy");
        assert_eq!(Arc::strong_count(&event), 2, "the slot's and ours only");
        assert_eq!(lent, "lent");
    }

    /// Readers racing the one writer see nothing or the whole value; under
    /// Miri (`.ci/run`) this also checks the accesses for data races.
    #[test]
    fn readers_racing_the_writer_see_nothing_or_the_whole_value() {
        let slot = WriteOnce::new();
        std::thread::scope(|scope| {
            let readers: Vec<_> = (0..2)
                .map(|_| {
                    scope.spawn(|| loop {
                        if let Some(lent) = slot.peek() {
                            assert_eq!(*lent, [7_u64; 4]);
                            let value = slot.get().expect("set for good");
                            assert_eq!(*value, [7_u64; 4]);
                            return;
                        }
                        std::thread::yield_now();
                    })
                })
                .collect();
            scope.spawn(|| assert!(slot.set(Arc::new([7_u64; 4]))));
            for reader in readers {
                reader.join().expect("reader");
            }
        });
        assert_eq!(Arc::strong_count(&slot.get().expect("set")), 2);
    }
}
