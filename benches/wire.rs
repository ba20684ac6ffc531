//! From the wire (issue 13): what a host does when a client reconnects with
//! its ids and its last cursor as text: build the key, parse the cursor
//! scoped to it, replay the 100 events after it.
//!
//! * `new_key`: [`SessionKey::new`] from the ids, then
//!   [`Cursor::parse_for`] (the generic path: a fresh key every time);
//! * `resolve_key`: [`ReplayStore::resolve_key`] (the store's own key for a
//!   known session, no allocation), then [`Cursor::parse_for`];
//! * `parse_cursor`: [`ReplayStore::parse_cursor`] from the cursor string
//!   alone (the ids inside it), then the key from the cursor;
//! * each of them followed by `replay_scoped` of 100 events.
//!
//! Paired rounds (designs taking turns in ~2 ms batches) give the time per
//! operation and ratios to the first design; a counting allocator gives
//! allocations per operation. Everything is measured in one process.
//!
//! Run: `cargo bench --bench wire`. Quick mode (`LIVEREPLAY_BENCH_QUICK=1`,
//! or run without `--bench`) takes few rounds. Writes
//! `target/livereplay-bench/wire-paired.csv`.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use livereplay::{Cursor, ReplayStore, Revision, SessionKey};

use support::Contender;

/// Counts allocations (all threads; the bench runs on one).
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call goes to the system allocator unchanged; only counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CAPACITY: usize = 2048;
const REPLAYED: usize = 100;
const TENANT: &str = "acme";
const SESSION: &str = "chat-000042";

/// Allocations per call of `f`, over `n` calls.
fn allocations_per(n: u64, mut f: impl FnMut()) -> f64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..n {
        f();
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / n as f64
}

fn main() {
    let quick = support::quick() || !support::bench_mode();
    let store = ReplayStore::<u64>::default();
    let key = SessionKey::new(TENANT, SESSION).expect("key");
    // Other sessions, so the map is not trivially small.
    for i in 0..1000 {
        let other = SessionKey::new(TENANT, &format!("chat-{i:06}x")).expect("key");
        store.append(&other, Revision(1), i).expect("append");
    }
    let events: Vec<_> = (0..CAPACITY as u64)
        .map(|i| store.append(&key, Revision(1), i).expect("append"))
        .collect();
    let wire = events[CAPACITY - REPLAYED - 1].cursor().to_string();
    drop(events);

    let new_key = || {
        let key = SessionKey::new(TENANT, SESSION).expect("key");
        let cursor = Cursor::parse_for(&key, &wire).expect("cursor");
        (key, cursor)
    };
    let resolve_key = || {
        let key = store.resolve_key(TENANT, SESSION).expect("key");
        let cursor = Cursor::parse_for(&key, &wire).expect("cursor");
        (key, cursor)
    };
    let parse_cursor = || {
        let cursor = store.parse_cursor(&wire).expect("cursor");
        (cursor.key().clone(), cursor)
    };
    let replay = |(key, cursor): (SessionKey, Cursor)| {
        let events = store.replay_scoped(&key, &cursor).expect("replay");
        assert_eq!(events.len(), REPLAYED);
        events
    };

    println!(
        "\n== from the wire: ids + cursor string -> key and cursor (then replay of {REPLAYED}) =="
    );
    for (name, per) in [
        (
            "new_key + parse_for",
            allocations_per(1000, || drop(black_box(new_key()))),
        ),
        (
            "resolve_key + parse_for",
            allocations_per(1000, || drop(black_box(resolve_key()))),
        ),
        (
            "parse_cursor",
            allocations_per(1000, || drop(black_box(parse_cursor()))),
        ),
        (
            "str::parse",
            allocations_per(1000, || drop(black_box(wire.parse::<Cursor>()))),
        ),
    ] {
        println!("  allocations per op, {name:<28} {per:.2}");
    }
    for (name, per) in [
        (
            "reconnect, new_key",
            allocations_per(1000, || drop(replay(new_key()))),
        ),
        (
            "reconnect, resolve_key",
            allocations_per(1000, || drop(replay(resolve_key()))),
        ),
    ] {
        println!("  allocations per op, {name:<28} {per:.2} (1 is the replay's Vec)");
    }
    if quick {
        println!("wire: quick mode (few rounds; figures are not meaningful)");
    }

    let mut csv = String::from(support::PAIRED_CSV_HEADER);
    support::paired(
        "key_and_parse",
        vec![
            Contender::new("new_key + parse_for", |n| {
                for _ in 0..n {
                    black_box(new_key());
                }
            }),
            Contender::new("resolve_key + parse_for", |n| {
                for _ in 0..n {
                    black_box(resolve_key());
                }
            }),
            Contender::new("parse_cursor", |n| {
                for _ in 0..n {
                    black_box(parse_cursor());
                }
            }),
            Contender::new("str::parse", |n| {
                for _ in 0..n {
                    black_box(wire.parse::<Cursor>().expect("cursor"));
                }
            }),
        ],
        &mut csv,
    );
    support::paired(
        "reconnect (key + parse + replay of 100)",
        vec![
            Contender::new("new_key", |n| {
                for _ in 0..n {
                    black_box(replay(new_key()));
                }
            }),
            Contender::new("resolve_key", |n| {
                for _ in 0..n {
                    black_box(replay(resolve_key()));
                }
            }),
            Contender::new("replay only (key and cursor at hand)", |n| {
                let (key, cursor) = resolve_key();
                for _ in 0..n {
                    black_box(replay((key.clone(), cursor.clone())));
                }
            }),
        ],
        &mut csv,
    );
    support::write_out("wire-paired.csv", &csv);
}
