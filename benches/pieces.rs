//! The pieces of an append through a handle, each alone (issue 13): what
//! the primitives the ring is built from cost on this machine, next to the
//! floor (`Arc::new` of an event + the wall clock) measured in the same run.
//!
//! docs/benchmark-history.md ("Issue 13, third round: where a handle
//! append's time above the floor goes") adds these up against the append
//! itself: the extras each pay for a guarantee, and together they bound
//! how close to the floor an append can come without a cheaper primitive.
//!
//! * `floor`: the floor itself (`baselines::floor_append`);
//! * `clock`: `SystemTime::now` since the epoch, as `SystemClock` reads it;
//! * `claim`: one relaxed `fetch_add` (a position claim);
//! * `fence_and_load`: a SeqCst fence and a relaxed load (the doorbell's
//!   check for parked subscribers);
//! * `arc_clone_drop`: an `Arc` clone and its drop (the slot's own
//!   reference to the event, and the caller's);
//! * `once_lock_set`: `OnceLock::set` of an `Arc` clone into a fresh slot
//!   (the write-once slot until issue 13's fourth round), with that clone's
//!   drop when the slots are reset every 2048 sets, as a lapped ring frees
//!   them: subtract `arc_clone_drop` for the set alone;
//! * `release_store`: a relaxed load and a release store of a pointer (the
//!   write-once slot since then, `ring::slot`, without the `Arc` clone it
//!   stores);
//! * `arc_swap_load`: an `arc-swap` load and its guard's drop (the
//!   directory's entry);
//! * `try_lock_unlock`: an uncontended `Mutex::try_lock` and unlock (the
//!   recycler's lock, taken every fourth append).
//!
//! Run: `cargo bench --bench pieces` (criterion; criterion's flags work).

mod baselines;

use std::hint::black_box;
use std::sync::atomic::{fence, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwapOption;
use criterion::{criterion_group, criterion_main, Criterion};
use livereplay::SessionKey;

use baselines::{floor_append, wall_clock_nanos};

/// A ring's worth of slots: `once_lock_set` resets them as a lapped ring
/// frees its slots, once per this many sets.
const SLOTS: usize = 2048;

fn pieces(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_pieces");
    let key = SessionKey::new("acme", "chat-000000").expect("a valid key");

    let mut position = 0u64;
    group.bench_function("floor", |b| {
        b.iter(|| {
            position += 1;
            floor_append(&key, position, position)
        })
    });
    group.bench_function("clock", |b| b.iter(wall_clock_nanos));

    let claimed = AtomicU64::new(0);
    group.bench_function("claim", |b| {
        // Relaxed, as the ring's claim: only uniqueness matters.
        b.iter(|| claimed.fetch_add(1, Ordering::Relaxed))
    });

    let parked = AtomicUsize::new(0);
    group.bench_function("fence_and_load", |b| {
        b.iter(|| {
            // SeqCst and Relaxed, as the doorbell's ring.
            fence(Ordering::SeqCst);
            parked.load(Ordering::Relaxed)
        })
    });

    let event = Arc::new(7u64);
    group.bench_function("arc_clone_drop", |b| b.iter(|| Arc::clone(&event)));

    let mut slots: Vec<OnceLock<Arc<u64>>> = (0..SLOTS).map(|_| OnceLock::new()).collect();
    let mut next = 0usize;
    group.bench_function("once_lock_set", |b| {
        b.iter(|| {
            if next == SLOTS {
                slots.iter_mut().for_each(|slot| drop(slot.take()));
                next = 0;
            }
            let stored = slots[next].set(Arc::clone(&event)).is_ok();
            next += 1;
            stored
        })
    });

    // The slot's set: a pointer that stays valid (the bench's own event),
    // stored where the check found null, as `WriteOnce::set` does.
    let stored = AtomicPtr::new(std::ptr::null_mut::<u64>());
    let pointer = Arc::as_ptr(&event).cast_mut();
    group.bench_function("release_store", |b| {
        b.iter(|| {
            // Relaxed then Release, as the slot: one writer per slot.
            let was_empty = stored.load(Ordering::Relaxed).is_null();
            stored.store(black_box(pointer), Ordering::Release);
            stored.store(std::ptr::null_mut(), Ordering::Relaxed);
            was_empty
        })
    });

    let entry = ArcSwapOption::from(Some(Arc::new(3u64)));
    group.bench_function("arc_swap_load", |b| {
        b.iter(|| entry.load().as_ref().map(|value| **value))
    });

    let lock = Mutex::new(0u64);
    group.bench_function("try_lock_unlock", |b| {
        b.iter(|| {
            if let Ok(mut count) = lock.try_lock() {
                *count += 1;
            }
        })
    });
    group.finish();
    black_box(slots);
}

criterion_group!(benches, pieces);
criterion_main!(benches);
