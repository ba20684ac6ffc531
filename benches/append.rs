//! Append cost of `livereplay` against the designs a user would otherwise
//! pick (see `baselines`), in the same process:
//!
//! * one session, no subscriber, through the handle and by key, against
//!   the floor (`Arc::new` + wall clock), one broadcast channel, and the
//!   seed's reference store;
//! * appends spread over 10 000 sessions (capacity 128 each, so the run's
//!   memory stays bounded), set up as `spread10k` sets it up (one
//!   implementation, `support/spread.rs`): keys in a fixed pseudo-random
//!   order, ours and the reference populated session by session into one
//!   heap, six turnover cycles of each before any timing; criterion, and in
//!   the paired part whole-cycle turns (docs/benchmark-history.md, "10 000
//!   sessions: why the two methods disagreed");
//! * one session with a live subscriber draining it on another thread;
//! * two threads appending to two distinct sessions: the 2-thread / 1-thread
//!   throughput ratio.
//!
//! Every session starts full, so the figures are the steady state of a ring
//! that overwrites (an append also frees the event it displaces). Payloads
//! are `u64` counters: the store's own cost, not the payload's.
//!
//! Run: `cargo bench --bench append`; smoke: `LIVEREPLAY_BENCH_QUICK=1
//! cargo bench --bench append -- --warm-up-time 0.1 --measurement-time 0.2`.

mod baselines;
#[path = "support/spread.rs"]
mod spread;
mod support;

use std::cell::Cell;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use criterion::{BenchmarkGroup, Criterion, Throughput};
use livereplay::{Cursor, NextTimeoutError, ReplayStore, Revision, Subscription};
use tokio::sync::broadcast::error::RecvError;

use baselines::{floor_append, BroadcastStore, RefReceiver, ReferenceStore};
use spread::{key, reference_id, Design, Layout, Order, Stores};
use support::{Comparison, Contender};

const CAPACITY: usize = 2048;

fn append_one_session(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_one_session");
    group.throughput(Throughput::Elements(1));
    let session_key = key(0);
    let id = reference_id(0);

    let store = ReplayStore::<u64>::default();
    let handle = store.session(&session_key).expect("session");
    for i in 0..CAPACITY as u64 {
        handle.append(Revision(1), i).expect("append");
    }
    let mut next = CAPACITY as u64;
    group.bench_function("ours_handle", |b| {
        b.iter(|| {
            next += 1;
            handle.append(Revision(1), next)
        })
    });
    group.bench_function("ours_key", |b| {
        b.iter(|| {
            next += 1;
            store.append(&session_key, Revision(1), next)
        })
    });
    // A one-thread writer: keeps its segment, hands back the position.
    let mut writer = handle.writer();
    group.bench_function("ours_writer", |b| {
        b.iter(|| {
            next += 1;
            writer.append(Revision(1), next)
        })
    });
    drop(writer);
    assert_eq!(store.event_count(&session_key), CAPACITY as u64);
    drop(handle);
    drop(store);

    let mut position = 0u64;
    group.bench_function("floor", |b| {
        b.iter(|| {
            position += 1;
            floor_append(&session_key, position, position)
        })
    });

    let reference = ReferenceStore::<u64>::with_defaults();
    for i in 0..CAPACITY as u64 {
        reference.append(&id, 1, i);
    }
    group.bench_function("reference", |b| {
        b.iter(|| {
            next += 1;
            reference.append(black_box(&id), 1, next)
        })
    });
    drop(reference);

    let broadcast = BroadcastStore::<u64>::new(CAPACITY);
    let channel = broadcast.session(&id);
    group.bench_function("broadcast_handle", |b| {
        b.iter(|| {
            next += 1;
            channel.append(next)
        })
    });
    group.bench_function("broadcast_key", |b| {
        b.iter(|| {
            next += 1;
            broadcast.append(black_box(&id), next)
        })
    });
    group.finish();
}

/// The 10 000-session stores as `spread10k` measures them where criterion
/// and whole-cycle turns agree (`SPREAD_ORDER=random
/// SPREAD_LAYOUT=interleaved SPREAD_AGE=6`): ours and the reference filled
/// session by session into one heap, keys in the fixed random order, and
/// `spread::AGE_CYCLES` turnover cycles of each (one in quick mode, none
/// in a test run) before any timing. Round robin on a freshly filled heap,
/// as this case had before, visits memory in the order it was laid out and
/// brings every one of our sessions to a segment boundary in the same lap:
/// its figures drifted with the process's age and with the method.
fn spread_stores() -> Stores {
    let stores = spread::populate(Layout::Interleaved, Design::OursKey, Order::Random);
    if support::bench_mode() {
        spread::age(
            &stores,
            support::samples(spread::AGE_CYCLES as usize, 1) as u64,
        );
    }
    assert_eq!(
        stores
            .ours
            .as_ref()
            .map(|(store, _)| store.stats().sessions),
        Some(spread::SESSIONS)
    );
    assert_eq!(
        stores.reference.as_ref().map(ReferenceStore::session_count),
        Some(spread::SESSIONS)
    );
    stores
}

fn append_spread(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_10k_sessions");
    group.throughput(Throughput::Elements(1));
    let stores = spread_stores();
    // One counter for every design, as before: no design revisits the
    // sessions another has just brought into cache.
    let turn = Cell::new(0);
    for design in [Design::OursKey, Design::OursHandle, Design::Reference] {
        let mut run = spread::runner(&stores, design, &turn);
        group.bench_function(design.name(), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                run(iters);
                start.elapsed()
            })
        });
    }
    {
        // Keeps nothing when nobody listens, so there is no heap to age:
        // same key order, built after the others are timed.
        let broadcast = BroadcastStore::<u64>::new(spread::CAPACITY);
        for id in &stores.ids {
            broadcast.session(id);
        }
        group.bench_function("broadcast_key", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for i in 0..iters {
                    black_box(broadcast.append(&stores.ids[stores.next_session(&turn)], i));
                }
                start.elapsed()
            })
        });
    }
    group.finish();
}

/// A subscription after `cursor`, or, if a fast writer already lapped
/// it again (the machine is loaded: the drainer fell behind while it
/// resubscribed), after the session's current cursor, retried until one
/// holds.
fn resubscribe(store: &ReplayStore<u64>, cursor: &Cursor) -> Subscription<u64> {
    if let Ok(subscription) = store.subscribe_after_cursor(cursor) {
        return subscription;
    }
    loop {
        let current = store.current_cursor(cursor.key());
        if let Ok(subscription) = store.subscribe_after_cursor(&current) {
            return subscription;
        }
    }
}

/// Drains `subscription` until `stop`, resubscribing after a gap (the
/// drainer fell a full ring behind). Returns (delivered, gaps).
fn drain_ours(
    store: &ReplayStore<u64>,
    mut subscription: Subscription<u64>,
    stop: &AtomicBool,
) -> (u64, u64) {
    let (mut delivered, mut gaps) = (0, 0);
    while !stop.load(Ordering::Acquire) {
        match subscription.next_timeout(Duration::from_millis(20)) {
            Ok(event) => {
                black_box(event);
                delivered += 1;
            }
            Err(NextTimeoutError::Timeout) => {}
            Err(NextTimeoutError::Gap(gap)) => {
                gaps += 1;
                subscription = resubscribe(store, &gap.latest);
            }
            Err(NextTimeoutError::Closed(_) | NextTimeoutError::Ended) => {
                let key = subscription.cursor().key().clone();
                subscription = resubscribe(store, &store.current_cursor(&key));
            }
        }
    }
    (delivered, gaps)
}

/// Drains a broadcast receiver until `stop`. Returns (delivered, lag
/// reports).
fn drain_broadcast<E>(
    mut receiver: tokio::sync::broadcast::Receiver<E>,
    stop: &AtomicBool,
) -> (u64, u64)
where
    E: Clone,
{
    let (mut delivered, mut lags) = (0, 0);
    while !stop.load(Ordering::Acquire) {
        match receiver.blocking_recv() {
            Ok(event) => {
                black_box(event);
                delivered += 1;
            }
            Err(RecvError::Lagged(_)) => lags += 1,
            Err(RecvError::Closed) => break,
        }
    }
    (delivered, lags)
}

fn append_live_subscriber(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_live_subscriber");
    group.throughput(Throughput::Elements(1));
    let session_key = key(0);
    let id = reference_id(0);
    let mut next = 0u64;

    {
        let store = ReplayStore::<u64>::default();
        let handle = store.session(&session_key).expect("session");
        for i in 0..CAPACITY as u64 {
            handle.append(Revision(1), i).expect("append");
        }
        let subscription = handle
            .subscribe_after(&handle.current_cursor())
            .expect("subscribe");
        let stop = AtomicBool::new(false);
        let (delivered, gaps) = thread::scope(|scope| {
            let drainer = scope.spawn(|| drain_ours(&store, subscription, &stop));
            group.bench_function("ours_handle", |b| {
                b.iter(|| {
                    next += 1;
                    handle.append(Revision(1), next)
                })
            });
            stop.store(true, Ordering::Release);
            handle.append(Revision(1), 0).expect("wake the drainer");
            drainer.join().expect("drainer")
        });
        println!("ours: subscriber drained {delivered} events, {gaps} gaps (resubscribed)");
    }
    {
        let reference = ReferenceStore::<u64>::with_defaults();
        for i in 0..CAPACITY as u64 {
            reference.append(&id, 1, i);
        }
        let (_, receiver): (_, RefReceiver<u64>) = reference
            .subscribe_after_cursor(&reference.current_cursor(&id))
            .expect("subscribe");
        let stop = AtomicBool::new(false);
        let (delivered, lags) = thread::scope(|scope| {
            let drainer = scope.spawn(|| drain_broadcast(receiver, &stop));
            group.bench_function("reference", |b| {
                b.iter(|| {
                    next += 1;
                    reference.append(&id, 1, next)
                })
            });
            stop.store(true, Ordering::Release);
            reference.append(&id, 1, 0);
            drainer.join().expect("drainer")
        });
        println!("reference: subscriber drained {delivered} events, {lags} lag reports");
    }
    {
        let broadcast = BroadcastStore::<u64>::new(CAPACITY);
        let channel = broadcast.session(&id);
        let receiver = channel.subscribe();
        let stop = AtomicBool::new(false);
        let (delivered, lags) = thread::scope(|scope| {
            let drainer = scope.spawn(|| drain_broadcast(receiver, &stop));
            group.bench_function("broadcast_handle", |b| {
                b.iter(|| {
                    next += 1;
                    channel.append(next)
                })
            });
            stop.store(true, Ordering::Release);
            channel.append(0);
            drainer.join().expect("drainer")
        });
        println!("broadcast: subscriber drained {delivered} events, {lags} lag reports");
    }
    group.finish();
}

/// Runs `append(thread, i)` for `i in 0..iters` on `threads` threads that
/// start together; returns the time from the first start to the last end.
fn parallel(threads: usize, iters: u64, append: &(impl Fn(usize, u64) + Sync)) -> Duration {
    let barrier = Barrier::new(threads);
    let spans: Vec<(Instant, Instant)> = thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    for i in 0..iters {
                        append(t, i);
                    }
                    (start, Instant::now())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("worker"))
            .collect()
    });
    let first_start = spans
        .iter()
        .map(|s| s.0)
        .min()
        .expect("one thread at least");
    let last_end = spans
        .iter()
        .map(|s| s.1)
        .max()
        .expect("one thread at least");
    last_end - first_start
}

fn bench_threads(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    append: &(impl Fn(usize, u64) + Sync),
) {
    for threads in [1, 2] {
        group.throughput(Throughput::Elements(threads as u64));
        group.bench_function(format!("{name}_{threads}t"), |b| {
            b.iter_custom(|iters| parallel(threads, iters, append))
        });
    }
}

fn append_two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_two_threads");
    let keys = [key(0), key(1)];
    let ids = [reference_id(0), reference_id(1)];
    {
        let store = ReplayStore::<u64>::default();
        let handles = keys
            .clone()
            .map(|key| store.session(&key).expect("session"));
        for handle in &handles {
            for i in 0..CAPACITY as u64 {
                handle.append(Revision(1), i).expect("append");
            }
        }
        bench_threads(&mut group, "ours_handle", &|t, i| {
            black_box(handles[t].append(Revision(1), i).expect("append"));
        });
        bench_threads(&mut group, "ours_key", &|t, i| {
            black_box(store.append(&keys[t], Revision(1), i).expect("append"));
        });
    }
    {
        let reference = ReferenceStore::<u64>::with_defaults();
        for id in &ids {
            for i in 0..CAPACITY as u64 {
                reference.append(id, 1, i);
            }
        }
        bench_threads(&mut group, "reference", &|t, i| {
            black_box(reference.append(&ids[t], 1, i));
        });
    }
    group.finish();
}

const COMPARISONS: &[Comparison] = &[
    Comparison {
        scenario: "append, one session, no subscriber, through the handle",
        ours: "append_one_session/ours_handle",
        others: &[
            ("floor (Arc::new + clock)", "append_one_session/floor"),
            ("broadcast channel", "append_one_session/broadcast_handle"),
            ("reference (seed 002)", "append_one_session/reference"),
        ],
    },
    Comparison {
        scenario:
            "append, one session, no subscriber, through a SessionWriter (returns the position)",
        ours: "append_one_session/ours_writer",
        others: &[
            ("floor (Arc::new + clock)", "append_one_session/floor"),
            ("ours through the handle", "append_one_session/ours_handle"),
            ("reference (seed 002)", "append_one_session/reference"),
        ],
    },
    Comparison {
        scenario: "append, one session, no subscriber, by key",
        ours: "append_one_session/ours_key",
        others: &[
            ("reference (seed 002)", "append_one_session/reference"),
            (
                "broadcast by key (dashmap)",
                "append_one_session/broadcast_key",
            ),
        ],
    },
    Comparison {
        scenario: "append spread over 10 000 sessions (random order, one aged heap), by key",
        ours: "append_10k_sessions/ours_key",
        others: &[
            ("reference (seed 002)", "append_10k_sessions/reference"),
            (
                "broadcast by key (dashmap)",
                "append_10k_sessions/broadcast_key",
            ),
        ],
    },
    Comparison {
        scenario:
            "append spread over 10 000 sessions (random order, one aged heap), through handles",
        ours: "append_10k_sessions/ours_handle",
        others: &[("reference (seed 002)", "append_10k_sessions/reference")],
    },
    Comparison {
        scenario: "append with one live subscriber draining on another thread",
        ours: "append_live_subscriber/ours_handle",
        others: &[
            ("reference (seed 002)", "append_live_subscriber/reference"),
            (
                "broadcast channel",
                "append_live_subscriber/broadcast_handle",
            ),
        ],
    },
];

/// Prints the 2-thread / 1-thread throughput ratios (time per iteration is
/// one append on each thread, so the ratio is `threads * t1 / t2`).
fn report_scaling(since: SystemTime) {
    println!(
        "\n== append_two_threads: throughput 2 threads / 1 thread (this machine has {} cores) ==",
        thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut csv = String::from("design,t1_ns,t2_ns,scaling\n");
    for name in ["ours_handle", "ours_key", "reference"] {
        let t1 = support::criterion_median(&format!("append_two_threads/{name}_1t"), since);
        let t2 = support::criterion_median(&format!("append_two_threads/{name}_2t"), since);
        if let (Some(t1), Some(t2)) = (t1, t2) {
            let scaling = 2.0 * t1 / t2;
            println!(
                "  {name:<12} 1 thread {:>10}/append   2 threads {:>10}/append each   scaling {scaling:.2}x",
                support::human(t1),
                support::human(t2)
            );
            use std::fmt::Write as _;
            let _ = writeln!(csv, "{name},{t1:.2},{t2:.2},{scaling:.3}");
        }
    }
    support::write_out("append-scaling.csv", &csv);
}

/// The headline ratios again, robust to the machine's load drifting: the
/// designs take turns in short batches (see `support::paired`).
fn paired_append() {
    let mut csv = String::from(support::PAIRED_CSV_HEADER);
    println!(
        "\n== append: paired comparisons (ratio = other / first; > 1 means the first is faster) =="
    );
    let session_key = key(0);
    let id = reference_id(0);
    let store = ReplayStore::<u64>::default();
    let handle = store.session(&session_key).expect("session");
    let reference = ReferenceStore::<u64>::with_defaults();
    let broadcast = BroadcastStore::<u64>::new(CAPACITY);
    let channel = broadcast.session(&id);
    for i in 0..CAPACITY as u64 {
        handle.append(Revision(1), i).expect("append");
        reference.append(&id, 1, i);
    }
    let mut writer = handle.writer();
    support::paired(
        "append_one_session_handle",
        vec![
            Contender::new("ours_handle", |n| {
                for i in 0..n {
                    black_box(handle.append(Revision(1), i).expect("append"));
                }
            }),
            Contender::new("ours_writer", |n| {
                for i in 0..n {
                    black_box(writer.append(Revision(1), i).expect("append"));
                }
            }),
            Contender::new("floor", |n| {
                for i in 0..n {
                    black_box(floor_append(&session_key, i, i));
                }
            }),
            Contender::new("broadcast_handle", |n| {
                for i in 0..n {
                    black_box(channel.append(i));
                }
            }),
            Contender::new("reference", |n| {
                for i in 0..n {
                    black_box(reference.append(black_box(&id), 1, i));
                }
            }),
        ],
        &mut csv,
    );
    support::paired(
        "append_one_session_key",
        vec![
            Contender::new("ours_key", |n| {
                for i in 0..n {
                    black_box(store.append(&session_key, Revision(1), i).expect("append"));
                }
            }),
            Contender::new("reference", |n| {
                for i in 0..n {
                    black_box(reference.append(black_box(&id), 1, i));
                }
            }),
            Contender::new("broadcast_key", |n| {
                for i in 0..n {
                    black_box(broadcast.append(black_box(&id), i));
                }
            }),
        ],
        &mut csv,
    );
    drop((handle, store, reference, channel, broadcast));

    // Whole-cycle turns, not 2 ms batches: a batch is shorter than one lap
    // of 10 000 sessions, so each would start on lines the other design has
    // just evicted, inflating both (docs/benchmark-history.md, "10 000
    // sessions: why the two methods disagreed", point 4).
    let stores = spread_stores();
    let designs = [Design::OursKey, Design::Reference, Design::OursHandle];
    let turns = designs.map(|_| Cell::new(0));
    let mut contenders: Vec<_> = designs
        .iter()
        .zip(&turns)
        .map(|(&design, turn)| (design.name(), spread::runner(&stores, design, turn)))
        .collect();
    let rounds = support::samples(6, 1);
    let per = spread::take_turns(&mut contenders, rounds, spread::CYCLE);
    let names: Vec<&str> = contenders.iter().map(|(name, _)| *name).collect();
    spread::print_turns(
        &format!(
            "append_10k_sessions  (whole cycles: {rounds} rounds, turns of {} appends, designs taking turns; random order, one aged heap)",
            spread::CYCLE
        ),
        &names,
        &per,
        false,
    );
    for ((name, times), ratios) in names.iter().zip(&per).zip(spread::ratios_to_first(&per)) {
        use std::fmt::Write as _;
        let _ = writeln!(
            csv,
            "append_10k_sessions,{name},{:.2},{:.3},{:.3},{:.3}",
            support::at_quantile(times, 0.5),
            support::at_quantile(&ratios, 0.5),
            support::at_quantile(&ratios, 0.25),
            support::at_quantile(&ratios, 0.75),
        );
    }
    drop(contenders);
    drop(stores);

    let keys = [key(0), key(1)];
    let ids = [reference_id(0), reference_id(1)];
    let store = ReplayStore::<u64>::default();
    let handles = keys
        .clone()
        .map(|key| store.session(&key).expect("session"));
    let reference = ReferenceStore::<u64>::with_defaults();
    for (handle, id) in handles.iter().zip(&ids) {
        for i in 0..CAPACITY as u64 {
            handle.append(Revision(1), i).expect("append");
            reference.append(id, 1, i);
        }
    }
    let ours = |t: usize, i: u64| {
        black_box(handles[t].append(Revision(1), i).expect("append"));
    };
    let theirs = |t: usize, i: u64| {
        black_box(reference.append(&ids[t], 1, i));
    };
    println!("(two threads: time per iteration is one append on each thread; scaling = 2 / ratio; {} cores)",
        thread::available_parallelism().map_or(0, |n| n.get()));
    // The floor needs no shared state at all: how far this machine lets
    // two threads scale right now (on a loaded 2-core machine, not 2x).
    let control = |_: usize, i: u64| {
        black_box(floor_append(&keys[0], i, i));
    };
    for (name, append) in [
        ("ours_handle", &ours as &(dyn Fn(usize, u64) + Sync)),
        ("reference", &theirs),
        ("floor_control", &control),
    ] {
        support::paired_batches(
            &format!("append_two_threads_{name}"),
            vec![
                Contender::new("1_thread", |n| {
                    black_box(parallel(1, n, &append));
                }),
                Contender::new("2_threads", |n| {
                    black_box(parallel(2, n, &append));
                }),
            ],
            Duration::from_millis(20),
            &mut csv,
        );
    }
    support::write_out("append-paired.csv", &csv);
}

fn main() {
    let since = SystemTime::now();
    let mut criterion = support::criterion();
    append_one_session(&mut criterion);
    append_spread(&mut criterion);
    append_live_subscriber(&mut criterion);
    append_two_threads(&mut criterion);
    criterion.final_summary();
    support::report("append", since, COMPARISONS);
    report_scaling(since);
    if support::paired_enabled() {
        paired_append();
    }
}
