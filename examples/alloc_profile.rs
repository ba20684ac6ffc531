//! Allocations and memory of `livereplay` against seed `002_*`'s reference
//! store, measured with a counting global allocator and `/proc/self/statm`.
//!
//! Prints, for the steady state of a full ring:
//! * allocations and bytes per append (the contract's target: one), by key
//!   and through the handle, and for a session's first 2048 appends;
//! * allocations per replay of 100 events (target: the result vector only)
//!   and per live event a subscription delivers (target: none);
//! * resident and heap memory for 100 000 sessions x 16 events of 64-byte
//!   payloads, each design measured in a fresh child process so one
//!   design's freed pages do not flatter the other;
//! * what an idle session leaves behind once its events expired and it was
//!   evicted (a `ManualClock` moves time; the store is swept);
//! * the live heap per tombstone: 100 000 sessions of one event each,
//!   expired and swept until `stats().dormant_sessions` is 100 000.
//!
//! Allocation counts are measured figures and are only printed; what the
//! contract promises is asserted (evicted sessions are gone, nothing is
//! retained after expiry), so the run fails if it breaks.
//!
//! Run: `cargo run --release --example alloc_profile` (about a minute;
//! `LIVEREPLAY_BENCH_QUICK=1` uses 10 000 sessions instead of 100 000).
//! `alloc_profile --op <name> <n>` runs one operation `n` times, for
//! counting instructions under `valgrind --tool=callgrind`.

#[path = "../benches/baselines/mod.rs"]
mod baselines;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::process::Command;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use livereplay::{Config, Cursor, ManualClock, ReplayStore, Revision, SessionKey};

use baselines::{BroadcastSession, ReferenceStore};

/// Counts every allocation and the bytes allocated and live, forwarding the
/// work to the system allocator.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

thread_local! {
    /// Allocations made by the current thread (no destructor, so it stays
    /// readable while a thread is torn down).
    static THREAD_ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_allocation(size: usize) {
    ALLOCATIONS.fetch_add(1, Relaxed);
    ALLOCATED_BYTES.fetch_add(size as u64, Relaxed);
    LIVE_BYTES.fetch_add(size as i64, Relaxed);
    let _ = THREAD_ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
}

fn thread_allocations() -> u64 {
    THREAD_ALLOCATIONS.with(Cell::get)
}

// SAFETY: every method forwards its arguments unchanged to `System`, which
// upholds the `GlobalAlloc` contract; the counters are plain atomics and
// never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_allocation(layout.size());
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_allocation(layout.size());
        // SAFETY: forwarded as received.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as i64, Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_allocation(new_size);
        LIVE_BYTES.fetch_sub(layout.size() as i64, Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations and bytes allocated while `f` ran.
fn counted<R>(f: impl FnOnce() -> R) -> (R, u64, u64) {
    let (allocations, bytes) = (ALLOCATIONS.load(Relaxed), ALLOCATED_BYTES.load(Relaxed));
    let result = f();
    (
        result,
        ALLOCATIONS.load(Relaxed) - allocations,
        ALLOCATED_BYTES.load(Relaxed) - bytes,
    )
}

fn live_bytes() -> i64 {
    LIVE_BYTES.load(Relaxed)
}

/// Resident set size from `/proc/self/statm`, in bytes (0 if unreadable).
fn resident_bytes() -> u64 {
    const PAGE: u64 = 4096;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * PAGE)
}

type Payload = [u8; 64];
const CAPACITY: usize = 2048;
const PER_APPEND_RUNS: u64 = 100_000;
const EVENTS_PER_SESSION: usize = 16;

fn key(i: usize) -> SessionKey {
    SessionKey::new("acme", &format!("chat-{i:06}")).expect("a valid key")
}

fn reference_id(i: usize) -> String {
    format!("acme/chat-{i:06}")
}

fn sessions_for_memory() -> usize {
    let quick = std::env::var("LIVEREPLAY_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    if quick {
        10_000
    } else {
        100_000
    }
}

fn per(count: u64, runs: u64) -> f64 {
    count as f64 / runs as f64
}

fn print_per(label: &str, unit: &str, allocations: u64, bytes: u64, runs: u64) {
    println!(
        "  {label:<44} {:>8.3} allocations/{unit}  {:>8.1} bytes/{unit}",
        per(allocations, runs),
        per(bytes, runs)
    );
}

fn appends() {
    println!(
        "== allocations per append (u64 payload; steady state: the ring is full and overwrites) =="
    );
    let session_key = key(0);
    let id = reference_id(0);

    let store = ReplayStore::<u64>::default();
    let handle = store.session(&session_key).expect("session");
    let ((), cold_allocations, cold_bytes) = counted(|| {
        for i in 0..CAPACITY as u64 {
            black_box(handle.append(Revision(1), i).expect("append"));
        }
    });
    let ((), allocations, bytes) = counted(|| {
        for i in 0..PER_APPEND_RUNS {
            black_box(handle.append(Revision(1), i).expect("append"));
        }
    });
    print_per(
        "ours, through the handle",
        "append",
        allocations,
        bytes,
        PER_APPEND_RUNS,
    );
    let ((), allocations, bytes) = counted(|| {
        for i in 0..PER_APPEND_RUNS {
            black_box(store.append(&session_key, Revision(1), i).expect("append"));
        }
    });
    print_per(
        "ours, by key",
        "append",
        allocations,
        bytes,
        PER_APPEND_RUNS,
    );
    print_per(
        "ours, first 2048 appends of a session",
        "append",
        cold_allocations,
        cold_bytes,
        CAPACITY as u64,
    );

    let ((), allocations, bytes) = counted(|| {
        for i in 0..PER_APPEND_RUNS {
            black_box(baselines::floor_append(&session_key, i, i));
        }
    });
    print_per(
        "floor (Arc::new + clock)",
        "append",
        allocations,
        bytes,
        PER_APPEND_RUNS,
    );

    let reference = ReferenceStore::<u64>::with_defaults();
    let ((), cold_allocations, cold_bytes) = counted(|| {
        for i in 0..CAPACITY as u64 {
            black_box(reference.append(&id, 1, i));
        }
    });
    let ((), allocations, bytes) = counted(|| {
        for i in 0..PER_APPEND_RUNS {
            black_box(reference.append(&id, 1, i));
        }
    });
    print_per(
        "reference (seed 002)",
        "append",
        allocations,
        bytes,
        PER_APPEND_RUNS,
    );
    print_per(
        "reference, first 2048 appends of a session",
        "append",
        cold_allocations,
        cold_bytes,
        CAPACITY as u64,
    );

    let channel = BroadcastSession::<u64>::new(CAPACITY);
    let mut receiver = channel.subscribe();
    let ((), allocations, bytes) = counted(|| {
        for i in 0..PER_APPEND_RUNS {
            black_box(channel.append(i));
            // Keep the receiver current so every send stores its event.
            black_box(receiver.try_recv().expect("the event just sent"));
        }
    });
    print_per(
        "broadcast channel (send + receive)",
        "append",
        allocations,
        bytes,
        PER_APPEND_RUNS,
    );
}

fn reads() {
    const REPLAYED: usize = 100;
    const RUNS: u64 = 10_000;
    println!("\n== allocations per replay of {REPLAYED} events (ring full, 2048) and per delivered live event ==");
    let session_key = key(0);
    let id = reference_id(0);

    let store = ReplayStore::<u64>::default();
    let handle = store.session(&session_key).expect("session");
    let events: Vec<_> = (0..CAPACITY as u64)
        .map(|i| handle.append(Revision(1), i).expect("append"))
        .collect();
    let cursor = events[CAPACITY - REPLAYED - 1].cursor();
    drop(events);
    let ((), allocations, bytes) = counted(|| {
        for _ in 0..RUNS {
            let replayed = store.replay_after_cursor(&cursor).expect("replay");
            assert_eq!(replayed.len(), REPLAYED);
        }
    });
    print_per(
        "ours, replay of 100 by key",
        "replay",
        allocations,
        bytes,
        RUNS,
    );
    let ((), allocations, _) = counted(|| {
        for _ in 0..RUNS {
            let replayed = handle.replay_after(&cursor).expect("replay");
            assert_eq!(replayed.len(), REPLAYED);
        }
    });
    println!(
        "  {:<44} {:>8.3} allocations/replayed event",
        "ours, replay of 100 through the handle",
        per(allocations, RUNS * REPLAYED as u64)
    );
    let ((), allocations, _) = counted(|| {
        for _ in 0..RUNS {
            let tail = store.current_cursor(&session_key);
            assert!(store.replay_after_cursor(&tail).expect("replay").is_empty());
        }
    });
    print_per(
        "ours, current_cursor + replay at the tail",
        "call",
        allocations,
        0,
        RUNS,
    );

    let reference = ReferenceStore::<u64>::with_defaults();
    for i in 0..CAPACITY as u64 {
        reference.append(&id, 1, i);
    }
    let reference_cursor = reference
        .current_cursor(&id)
        .at((CAPACITY - REPLAYED) as u64);
    let ((), allocations, bytes) = counted(|| {
        for _ in 0..RUNS {
            let replayed = reference
                .replay_after_cursor(&reference_cursor)
                .expect("replay");
            assert_eq!(replayed.len(), REPLAYED);
        }
    });
    print_per(
        "reference, replay of 100",
        "replay",
        allocations,
        bytes,
        RUNS,
    );

    let mut subscription = handle
        .subscribe_after(&handle.current_cursor())
        .expect("subscribe");
    let mut delivered_allocations = 0;
    for i in 0..RUNS {
        handle.append(Revision(1), i).expect("append");
        let (event, allocations, _) = counted(|| subscription.try_next().expect("the live event"));
        assert_eq!(*event.payload(), i);
        delivered_allocations += allocations;
    }
    println!(
        "  {:<44} {:>8.3} allocations/event",
        "ours, live event delivered (try_next)",
        per(delivered_allocations, RUNS)
    );

    let (_, mut receiver) = reference
        .subscribe_after_cursor(&reference.current_cursor(&id))
        .expect("subscribe");
    let mut delivered_allocations = 0;
    for i in 0..RUNS {
        reference.append(&id, 1, i);
        let (event, allocations, _) = counted(|| receiver.try_recv().expect("the live event"));
        assert_eq!(event.payload, i);
        delivered_allocations += allocations;
    }
    println!(
        "  {:<44} {:>8.3} allocations/event",
        "reference, live event delivered (try_recv)",
        per(delivered_allocations, RUNS)
    );
}

/// A subscriber that parks between events (as a host waiting for tokens
/// does): allocations made on the subscriber's thread per delivered event,
/// counted there, so the writer's own allocations do not mix in.
fn parked_deliveries() {
    const RUNS: u64 = 2_000;
    const PATIENCE: Duration = Duration::from_secs(10);
    const PARK_PAUSE: Duration = Duration::from_micros(300);
    println!(
        "\n== allocations on a parked subscriber's thread per delivered event ({RUNS} wake-ups) =="
    );
    let session_key = key(0);
    let id = reference_id(0);

    let store = ReplayStore::<u64>::default();
    let handle = store.session(&session_key).expect("session");
    let mut subscription = handle
        .subscribe_after(&handle.current_cursor())
        .expect("subscribe");
    let per_event = std::thread::scope(|scope| {
        let subscriber = scope.spawn(move || {
            let before = thread_allocations();
            for i in 0..RUNS {
                let event = subscription.next_timeout(PATIENCE).expect("an event");
                assert_eq!(*event.payload(), i);
            }
            thread_allocations() - before
        });
        for i in 0..RUNS {
            // Give the subscriber time to park, so (nearly) every delivery
            // is a wake-up.
            std::thread::sleep(PARK_PAUSE);
            handle.append(Revision(1), i).expect("append");
        }
        subscriber.join().expect("subscriber")
    });
    println!(
        "  {:<44} {:>8.3} allocations/event",
        "ours, next_timeout after parking",
        per(per_event, RUNS)
    );

    // The same through the `Stream`, polled by a current-thread tokio
    // runtime on the subscriber's thread.
    let stream_key = key(1);
    let handle = store.session(&stream_key).expect("session");
    let mut stream = handle
        .subscribe_after(&handle.current_cursor())
        .expect("subscribe");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a tokio runtime");
    let per_event = std::thread::scope(|scope| {
        let subscriber = scope.spawn(move || {
            // The runtime's first poll sets up its own state: not counted.
            let first = runtime.block_on(futures_util::StreamExt::next(&mut stream));
            assert!(first.is_some());
            let before = thread_allocations();
            for i in 1..RUNS {
                let event = runtime
                    .block_on(futures_util::StreamExt::next(&mut stream))
                    .expect("not ended")
                    .expect("an event");
                assert_eq!(*event.payload(), i);
            }
            thread_allocations() - before
        });
        for i in 0..RUNS {
            std::thread::sleep(PARK_PAUSE);
            handle.append(Revision(1), i).expect("append");
        }
        subscriber.join().expect("subscriber")
    });
    println!(
        "  {:<44} {:>8.3} allocations/event",
        "ours, Stream after parking (tokio block_on)",
        per(per_event, RUNS - 1)
    );

    let reference = ReferenceStore::<u64>::with_defaults();
    let (_, mut receiver) = reference
        .subscribe_after_cursor(&reference.current_cursor(&id))
        .expect("subscribe");
    let per_event = std::thread::scope(|scope| {
        let subscriber = scope.spawn(move || {
            let before = thread_allocations();
            for i in 0..RUNS {
                let event = receiver.blocking_recv().expect("an event");
                assert_eq!(event.payload, i);
            }
            thread_allocations() - before
        });
        for i in 0..RUNS {
            std::thread::sleep(PARK_PAUSE);
            reference.append(&id, 1, i);
        }
        subscriber.join().expect("subscriber")
    });
    println!(
        "  {:<44} {:>8.3} allocations/event",
        "reference, blocking_recv (parks when empty)",
        per(per_event, RUNS)
    );
}

/// In a child process: fills one design with `sessions` x 16 events of
/// 64-byte payloads and prints what that cost in heap and resident memory.
/// Full sessions for the bytes-per-event figure: each appended to twice its
/// capacity, so it has lapped and holds what a steady ring holds.
fn full_sessions_for_memory() -> usize {
    sessions_for_memory() / 500
}

fn memory_child(design: &str, sessions: usize, appends_per_session: usize) {
    let payload: Payload = [7; 64];
    // What stays: the appends, or the capacity once a session has lapped.
    let retained = appends_per_session.min(CAPACITY);
    let (heap_before, resident_before) = (live_bytes(), resident_bytes());
    let report = |label: &str| {
        let heap = (live_bytes() - heap_before) as f64;
        let resident = resident_bytes().saturating_sub(resident_before) as f64;
        let events = (sessions * retained) as f64;
        println!(
            "  {label:<34} heap {:>7.1} MiB ({:>6.0} B/session, {:>5.0} B/event)   resident {:>7.1} MiB ({:>6.0} B/session)",
            heap / 1048576.0,
            heap / sessions as f64,
            heap / events,
            resident / 1048576.0,
            resident / sessions as f64,
        );
    };
    match design {
        "ours" => {
            let store = ReplayStore::<Payload>::new(
                Config::default()
                    .with_max_sessions(200_000)
                    .with_capacity(CAPACITY),
            )
            .expect("config");
            for s in 0..sessions {
                let key = key(s);
                for _ in 0..appends_per_session {
                    store.append(&key, Revision(1), payload).expect("append");
                }
            }
            assert_eq!(store.stats().sessions, sessions);
            report("ours");
            black_box(&store);
        }
        "reference" => {
            let store = ReferenceStore::<Payload>::with_defaults();
            for s in 0..sessions {
                let id = reference_id(s);
                for _ in 0..appends_per_session {
                    store.append(&id, 1, payload);
                }
            }
            assert_eq!(store.session_count(), sessions);
            report("reference (seed 002)");
            black_box(&store);
        }
        other => panic!("unknown design {other}"),
    }
}

fn memory() {
    let small = (sessions_for_memory(), EVENTS_PER_SESSION);
    let full = (full_sessions_for_memory(), 2 * CAPACITY);
    for (sessions, appends) in [small, full] {
        let shape = if appends > CAPACITY {
            format!("{appends} appends each (full: {CAPACITY} kept)")
        } else {
            format!("{appends} events")
        };
        println!(
            "\n== memory for {sessions} sessions x {shape} of 64-byte payloads (each in a fresh process; heap = live bytes allocated) =="
        );
        let exe = std::env::current_exe().expect("the example's own path");
        for design in ["ours", "reference"] {
            let output = Command::new(&exe)
                .args([
                    "--memory",
                    design,
                    &sessions.to_string(),
                    &appends.to_string(),
                ])
                .output()
                .expect("run the memory child");
            print!("{}", String::from_utf8_lossy(&output.stdout));
            assert!(
                output.status.success(),
                "memory child for {design} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

fn eviction() {
    let sessions = sessions_for_memory();
    println!("\n== idle sessions after their events expire: {sessions} sessions x {EVENTS_PER_SESSION} events ==");
    let payload: Payload = [7; 64];
    let clock = Arc::new(ManualClock::new());
    // Tombstones off: this measures what a forgotten session leaves (with
    // them on, the default, an evicted session stays known: `tombstones()`
    // below measures that).
    let store = ReplayStore::<Payload>::builder()
        .config(
            Config::default()
                .with_max_sessions(200_000)
                .with_tombstones(0, Duration::from_secs(3600)),
        )
        .clock(clock.clone())
        .build()
        .expect("config");
    let heap_before = live_bytes();
    for s in 0..sessions {
        let key = key(s);
        for _ in 0..EVENTS_PER_SESSION {
            store.append(&key, Revision(1), payload).expect("append");
        }
    }
    let heap_full = live_bytes() - heap_before;
    let last_key = key(sessions - 1);
    let last_cursor = store.current_cursor(&last_key);

    clock.advance(store.config().max_age + Duration::from_secs(1));
    let evicted = store.sweep();
    let stats = store.stats();
    assert_eq!(stats.sessions, 0, "every expired, idle session is evicted");
    assert_eq!(
        stats.retained_events, 0,
        "nothing is retained after max_age"
    );
    assert_eq!(evicted, sessions, "sweep evicted every session");
    assert!(!store.contains_session(&last_key));
    assert!(
        store.replay_after_cursor(&last_cursor).is_err(),
        "a cursor of an evicted session is answered with a gap"
    );
    let heap_after = live_bytes() - heap_before;
    println!(
        "  ours: {:.1} MiB while full; after sweep: sessions {} (evicted {evicted}), heap left {} B = {:.1} B per evicted session",
        heap_full as f64 / 1048576.0,
        stats.sessions,
        heap_after,
        heap_after as f64 / sessions as f64
    );

    // The reference design keeps a session until someone trims it by id.
    let max_age = Duration::from_millis(200);
    let reference = ReferenceStore::<Payload>::new(CAPACITY, max_age);
    let heap_before = live_bytes();
    for s in 0..sessions {
        let id = reference_id(s);
        for _ in 0..EVENTS_PER_SESSION {
            reference.append(&id, 1, payload);
        }
    }
    std::thread::sleep(max_age * 2);
    let heap_expired = live_bytes() - heap_before;
    for s in 0..sessions {
        reference.trim_session(&reference_id(s));
    }
    let heap_after = live_bytes() - heap_before;
    println!(
        "  reference: {:.1} MiB after expiry until trimmed by id; after trim_session of every id: sessions {}, heap left {} B = {:.1} B per removed session",
        heap_expired as f64 / 1048576.0,
        reference.session_count(),
        heap_after,
        heap_after as f64 / sessions as f64
    );
    drop(store);
    black_box(Cursor::start(last_key));
}

/// What a tombstone costs: sessions with one event each, expired and swept,
/// so every one turns dormant (its identity remembered for its cursors).
/// Live heap before the sessions were created and after the sweep, divided
/// by the count: the tombstone and its map entry (key included).
fn tombstones() {
    const SESSIONS: usize = 100_000;
    println!("\n== tombstones: {SESSIONS} sessions x 1 event, expired and swept (ManualClock past max_age) ==");
    let clock = Arc::new(ManualClock::new());
    let store = ReplayStore::<Payload>::builder()
        .config(
            Config::default()
                .with_max_sessions(2 * SESSIONS)
                .with_tombstones(SESSIONS, Duration::from_secs(3600)),
        )
        .clock(clock.clone())
        .build()
        .expect("config");
    let heap_before = live_bytes();
    for s in 0..SESSIONS {
        store.append(&key(s), Revision(1), [7; 64]).expect("append");
    }
    let heap_resident = live_bytes() - heap_before;
    let last_key = key(SESSIONS - 1);
    let last_cursor = store.current_cursor(&last_key);

    clock.advance(store.config().max_age + Duration::from_secs(1));
    let evicted = store.sweep();
    let heap_dormant = live_bytes() - heap_before;
    let stats = store.stats();
    assert_eq!(evicted, SESSIONS, "sweep evicted every session");
    assert_eq!(stats.sessions, 0, "no session is resident");
    assert_eq!(
        stats.dormant_sessions, SESSIONS,
        "every session is a tombstone"
    );
    assert!(store.contains_session(&last_key));
    assert!(
        store
            .replay_after_cursor(&last_cursor)
            .expect("at the tail")
            .is_empty(),
        "a tombstone answers its last cursor as if the session were resident"
    );
    println!(
        "  ours: resident {:.1} MiB ({:.0} B/session with its event); dormant {:.1} MiB = {:.1} B per tombstone (stats().dormant_sessions = {})",
        heap_resident as f64 / 1048576.0,
        heap_resident as f64 / SESSIONS as f64,
        heap_dormant as f64 / 1048576.0,
        heap_dormant as f64 / SESSIONS as f64,
        stats.dormant_sessions
    );
    drop(store);
}

/// `--op <name> <n>`: fills the stores, then runs one operation `n` times,
/// for `valgrind --tool=callgrind` (instructions per operation = the
/// difference between `n` and `0`, divided by `n`; see
/// docs/benchmark-history.md, "Instructions per operation (callgrind)").
fn single_op(op: &str, n: u64) {
    let session_key = key(0);
    let id = reference_id(0);
    let store = ReplayStore::<u64>::default();
    let handle = store.session(&session_key).expect("session");
    let reference = ReferenceStore::<u64>::with_defaults();
    // Two laps, so every ring is full and overwrites.
    for i in 0..2 * CAPACITY as u64 {
        handle.append(Revision(1), i).expect("append");
        reference.append(&id, 1, i);
    }
    let tail = handle.current_cursor();
    let ours_100 = Cursor::new(
        session_key.clone(),
        tail.incarnation(),
        tail.revision(),
        tail.position() - 100,
    );
    let reference_tail = reference.current_cursor(&id);
    let reference_100 = reference_tail.at(reference_tail.position - 100);
    match op {
        "ours_handle" => (0..n).for_each(|i| {
            black_box(handle.append(Revision(1), i).expect("append"));
        }),
        "ours_key" => (0..n).for_each(|i| {
            black_box(store.append(&session_key, Revision(1), i).expect("append"));
        }),
        "floor" => (0..n).for_each(|i| {
            black_box(baselines::floor_append(&session_key, i, i));
        }),
        "reference" => (0..n).for_each(|i| {
            black_box(reference.append(&id, 1, i));
        }),
        "ours_replay100" => (0..n).for_each(|_| {
            black_box(store.replay_after_cursor(&ours_100).expect("replay"));
        }),
        "reference_replay100" => (0..n).for_each(|_| {
            black_box(
                reference
                    .replay_after_cursor(&reference_100)
                    .expect("replay"),
            );
        }),
        "ours_tail" => (0..n).for_each(|_| {
            let tail = store.current_cursor(&session_key);
            black_box(store.replay_after_cursor(&tail).expect("replay"));
        }),
        "reference_tail" => (0..n).for_each(|_| {
            let tail = reference.current_cursor(&id);
            black_box(reference.replay_after_cursor(&tail).expect("replay"));
        }),
        other => panic!("unknown op {other}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, design, sessions, appends] if flag == "--memory" => {
            let count = |n: &String| n.parse().expect("--memory <design> <sessions> <appends>");
            return memory_child(design, count(sessions), count(appends));
        }
        [flag, op, n] if flag == "--op" => {
            return single_op(op, n.parse().expect("--op <name> <count>"));
        }
        _ => {}
    }
    appends();
    reads();
    parked_deliveries();
    memory();
    eviction();
    tombstones();
}
