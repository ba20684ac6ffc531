//! Read-side cost of `livereplay` against seed `002_*`'s reference store,
//! in the same process:
//!
//! * replay of the last 100 events after a cursor, with the buffer full
//!   (2048 events);
//! * `current_cursor` then replay from it: the "nothing new" path a host
//!   takes on every reconnect that missed nothing;
//! * the seed runtime's "live replay pressure" turn: 96 events into a
//!   capacity-256 session, replay from the turn start, subscribe from the
//!   turn's first event and read 95 buffered + 1 live event, overflow a
//!   capacity-8 store 3x and replay it for a `Trimmed` gap, and ask for a
//!   cursor 999 999 ahead for `Unavailable`.
//!
//! Every iteration checks what it got (lengths, gap reasons), so a store
//! whose events expired or a wrong baseline fails the bench instead of
//! measuring an error path.
//!
//! Run: `cargo bench --bench replay`; smoke: `LIVEREPLAY_BENCH_QUICK=1
//! cargo bench --bench replay -- --warm-up-time 0.1 --measurement-time 0.2`.

mod baselines;
mod support;

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::Criterion;
use livereplay::{Config, Cursor, Error, Event, GapReason, ReplayStore, Revision, SessionKey};

use baselines::{RefGapReason, ReferenceStore};
use support::{Comparison, Contender};

const CAPACITY: usize = 2048;
const REPLAYED: usize = 100;

const TURN_EVENTS: u64 = 96;
const TURN_CAPACITY: usize = 256;
const SMALL_CAPACITY: usize = 8;
const AHEAD: u64 = 999_999;

fn session_key() -> SessionKey {
    SessionKey::new("acme", "chat-000000").expect("a valid key")
}

const REFERENCE_ID: &str = "acme/chat-000000";

/// What a reader of the replayed events does with them in these benches:
/// reads each payload (and checks there were `REPLAYED`).
fn sum_payloads<'a>(events: impl ExactSizeIterator<Item = &'a Event<u64>>) -> u64 {
    assert_eq!(events.len(), REPLAYED);
    events.map(|event| *event.payload()).sum()
}

fn replay_100(c: &mut Criterion) {
    let mut group = c.benchmark_group("replay_100");
    let key = session_key();
    {
        let store = ReplayStore::<u64>::default();
        let handle = store.session(&key).expect("session");
        let events: Vec<_> = (0..CAPACITY as u64)
            .map(|i| handle.append(Revision(1), i).expect("append"))
            .collect();
        let cursor = events[CAPACITY - REPLAYED - 1].cursor();
        group.bench_function("ours_key", |b| {
            b.iter(|| {
                let events = store.replay_after_cursor(&cursor).expect("replay");
                assert_eq!(events.len(), REPLAYED);
                events
            })
        });
        group.bench_function("ours_handle", |b| {
            b.iter(|| {
                let events = handle.replay_after(&cursor).expect("replay");
                assert_eq!(events.len(), REPLAYED);
                events
            })
        });
        // The floor of a replay that returns shared events: one vector and
        // one reference count increment per event (and their drops).
        let tail = &events[CAPACITY - REPLAYED..];
        group.bench_function("floor", |b| b.iter(|| tail.to_vec()));
        // A reader that uses what it replays: the same three ways, each
        // reading every payload. The floor reads them through a slice.
        group.bench_function("ours_key_read", |b| {
            b.iter(|| {
                let events = store.replay_after_cursor(&cursor).expect("replay");
                sum_payloads(events.iter().map(|event| &**event))
            })
        });
        group.bench_function("ours_lend_key", |b| {
            b.iter(|| {
                store
                    .replay_with(&cursor, |events| sum_payloads(events))
                    .expect("replay")
            })
        });
        group.bench_function("ours_lend_handle", |b| {
            b.iter(|| {
                handle
                    .replay_with(&cursor, |events| sum_payloads(events))
                    .expect("replay")
            })
        });
        group.bench_function("floor_read", |b| {
            b.iter(|| sum_payloads(black_box(tail).iter().map(|event| &**event)))
        });
    }
    {
        let reference = ReferenceStore::<u64>::with_defaults();
        let events: Vec<_> = (0..CAPACITY as u64)
            .map(|i| reference.append(REFERENCE_ID, 1, i))
            .collect();
        let cursor = reference
            .current_cursor(REFERENCE_ID)
            .at(events[CAPACITY - REPLAYED - 1].position);
        group.bench_function("reference", |b| {
            b.iter(|| {
                let events = reference.replay_after_cursor(&cursor).expect("replay");
                assert_eq!(events.len(), REPLAYED);
                events
            })
        });
    }
    group.finish();
}

fn replay_at_tail(c: &mut Criterion) {
    let mut group = c.benchmark_group("replay_at_tail");
    let key = session_key();
    {
        let store = ReplayStore::<u64>::default();
        let handle = store.session(&key).expect("session");
        for i in 0..CAPACITY as u64 {
            handle.append(Revision(1), i).expect("append");
        }
        group.bench_function("ours_key", |b| {
            b.iter(|| {
                let cursor = store.current_cursor(&key);
                let events = store.replay_after_cursor(&cursor).expect("replay");
                assert!(events.is_empty());
                (cursor, events)
            })
        });
        group.bench_function("ours_handle", |b| {
            b.iter(|| {
                let cursor = handle.current_cursor();
                let events = handle.replay_after(&cursor).expect("replay");
                assert!(events.is_empty());
                (cursor, events)
            })
        });
    }
    {
        let reference = ReferenceStore::<u64>::with_defaults();
        for i in 0..CAPACITY as u64 {
            reference.append(REFERENCE_ID, 1, i);
        }
        group.bench_function("reference", |b| {
            b.iter(|| {
                let cursor = reference.current_cursor(REFERENCE_ID);
                let events = reference.replay_after_cursor(&cursor).expect("replay");
                assert!(events.is_empty());
                (cursor, events)
            })
        });
    }
    group.finish();
}

/// One "live replay pressure" turn on `livereplay`, through the store's
/// by-key methods (what the seed's trait offers a runtime).
fn pressure_turn_ours(store: &ReplayStore<u64>, small: &ReplayStore<u64>, key: &SessionKey) {
    let turn_start = store.current_cursor(key);
    for i in 0..TURN_EVENTS {
        store.append(key, Revision(1), i).expect("append");
    }
    let replayed = store.replay_after_cursor(&turn_start).expect("replay");
    assert_eq!(replayed.len(), TURN_EVENTS as usize);

    let mut subscription = store
        .subscribe_after_cursor(&replayed[0].cursor())
        .expect("subscribe");
    for _ in 1..TURN_EVENTS {
        subscription.try_next().expect("a buffered event");
    }
    let appended = store.append(key, Revision(1), TURN_EVENTS).expect("append");
    let live = subscription.try_next().expect("the live event");
    assert_eq!(live.position(), appended.position());

    let small_start = small.current_cursor(key);
    for i in 0..3 * SMALL_CAPACITY as u64 {
        small.append(key, Revision(1), i).expect("append");
    }
    match small.replay_after_cursor(&small_start) {
        Err(Error::Gap(gap)) if gap.reason == GapReason::Trimmed => {}
        other => panic!("expected a Trimmed gap, got {other:?}"),
    }

    let tail = store.current_cursor(key);
    let ahead = Cursor::new(
        key.clone(),
        tail.incarnation(),
        tail.revision(),
        tail.position() + AHEAD,
    );
    match store.replay_after_cursor(&ahead) {
        Err(Error::Gap(gap)) if gap.reason == GapReason::Unavailable => {}
        other => panic!("expected an Unavailable gap, got {other:?}"),
    }
}

/// The same turn on the reference store.
fn pressure_turn_reference(store: &ReferenceStore<u64>, small: &ReferenceStore<u64>, id: &str) {
    let turn_start = store.current_cursor(id);
    for i in 0..TURN_EVENTS {
        store.append(id, 1, i);
    }
    let replayed = store.replay_after_cursor(&turn_start).expect("replay");
    assert_eq!(replayed.len(), TURN_EVENTS as usize);

    let (buffered, mut receiver) = store
        .subscribe_after_cursor(&turn_start.at(replayed[0].position))
        .expect("subscribe");
    assert_eq!(buffered.len(), TURN_EVENTS as usize - 1);
    let appended = store.append(id, 1, TURN_EVENTS);
    let live = receiver.try_recv().expect("the live event");
    assert_eq!(live.position, appended.position);

    let small_start = small.current_cursor(id);
    for i in 0..3 * SMALL_CAPACITY as u64 {
        small.append(id, 1, i);
    }
    match small.replay_after_cursor(&small_start) {
        Err(gap) if gap.reason == RefGapReason::Trimmed => {}
        other => panic!("expected a Trimmed gap, got {other:?}"),
    }

    let tail = store.current_cursor(id);
    match store.replay_after_cursor(&tail.at(tail.position + AHEAD)) {
        Err(gap) if gap.reason == RefGapReason::Unavailable => {}
        other => panic!("expected an Unavailable gap, got {other:?}"),
    }
}

fn pressure_turn(c: &mut Criterion) {
    let mut group = c.benchmark_group("pressure_turn");
    let key = session_key();
    {
        let store = ReplayStore::<u64>::new(Config::default().with_capacity(TURN_CAPACITY))
            .expect("config");
        let small = ReplayStore::<u64>::new(Config::default().with_capacity(SMALL_CAPACITY))
            .expect("config");
        group.bench_function("ours", |b| {
            b.iter(|| pressure_turn_ours(&store, &small, &key))
        });
    }
    {
        let max_age = Duration::from_secs(120);
        let store = ReferenceStore::<u64>::new(TURN_CAPACITY, max_age);
        let small = ReferenceStore::<u64>::new(SMALL_CAPACITY, max_age);
        group.bench_function("reference", |b| {
            b.iter(|| pressure_turn_reference(&store, &small, REFERENCE_ID))
        });
    }
    group.finish();
}

const COMPARISONS: &[Comparison] = &[
    Comparison {
        scenario: "replay of 100 events after a cursor, buffer full (2048), by key",
        ours: "replay_100/ours_key",
        others: &[
            ("reference (seed 002)", "replay_100/reference"),
            ("floor (clone 100 Arcs into a Vec)", "replay_100/floor"),
        ],
    },
    Comparison {
        scenario: "replay of 100 events lent in place (replay_with), each payload read, by key",
        ours: "replay_100/ours_lend_key",
        others: &[
            ("replay_after_cursor, then each payload read", "replay_100/ours_key_read"),
            ("floor (read 100 payloads through a slice of Arcs)", "replay_100/floor_read"),
        ],
    },
    Comparison {
        scenario: "replay of 100 events lent in place (replay_with), each payload read, through the handle",
        ours: "replay_100/ours_lend_handle",
        others: &[
            ("replay_after_cursor, then each payload read", "replay_100/ours_key_read"),
            ("floor (read 100 payloads through a slice of Arcs)", "replay_100/floor_read"),
        ],
    },
    Comparison {
        scenario: "replay of 100 events after a cursor, buffer full (2048), through the handle",
        ours: "replay_100/ours_handle",
        others: &[("reference (seed 002)", "replay_100/reference")],
    },
    Comparison {
        scenario: "current_cursor + replay from the tail (nothing new), by key",
        ours: "replay_at_tail/ours_key",
        others: &[("reference (seed 002)", "replay_at_tail/reference")],
    },
    Comparison {
        scenario: "current_cursor + replay from the tail (nothing new), through the handle",
        ours: "replay_at_tail/ours_handle",
        others: &[("reference (seed 002)", "replay_at_tail/reference")],
    },
    Comparison {
        scenario: "live replay pressure turn (97 appends, replay, subscribe 95+1, 2 gaps)",
        ours: "pressure_turn/ours",
        others: &[("reference (seed 002)", "pressure_turn/reference")],
    },
];

/// The headline ratios again, robust to the machine's load drifting: the
/// designs take turns in short batches (see `support::paired`).
fn paired_replay() {
    let mut csv = String::from(support::PAIRED_CSV_HEADER);
    println!(
        "\n== replay: paired comparisons (ratio = other / first; > 1 means the first is faster) =="
    );
    let key = session_key();
    let store = ReplayStore::<u64>::default();
    let handle = store.session(&key).expect("session");
    let events: Vec<_> = (0..CAPACITY as u64)
        .map(|i| handle.append(Revision(1), i).expect("append"))
        .collect();
    let cursor = events[CAPACITY - REPLAYED - 1].cursor();
    let tail = &events[CAPACITY - REPLAYED..];
    let reference = ReferenceStore::<u64>::with_defaults();
    for i in 0..CAPACITY as u64 {
        reference.append(REFERENCE_ID, 1, i);
    }
    let reference_cursor = reference
        .current_cursor(REFERENCE_ID)
        .at((CAPACITY - REPLAYED) as u64);
    let replay_reference = |n| {
        for _ in 0..n {
            let events = reference
                .replay_after_cursor(&reference_cursor)
                .expect("replay");
            assert_eq!(events.len(), REPLAYED);
        }
    };
    support::paired(
        "replay_100",
        vec![
            Contender::new("ours_key", |n| {
                for _ in 0..n {
                    let events = store.replay_after_cursor(&cursor).expect("replay");
                    assert_eq!(events.len(), REPLAYED);
                }
            }),
            Contender::new("reference", replay_reference),
            Contender::new("ours_handle", |n| {
                for _ in 0..n {
                    let events = handle.replay_after(&cursor).expect("replay");
                    assert_eq!(events.len(), REPLAYED);
                }
            }),
            Contender::new("floor", |n| {
                for _ in 0..n {
                    black_box(tail.to_vec());
                }
            }),
        ],
        &mut csv,
    );
    support::paired(
        "replay_100_read",
        vec![
            Contender::new("ours_lend_key", |n| {
                for _ in 0..n {
                    black_box(
                        store
                            .replay_with(&cursor, |events| sum_payloads(events))
                            .expect("replay"),
                    );
                }
            }),
            Contender::new("ours_key_read", |n| {
                for _ in 0..n {
                    let events = store.replay_after_cursor(&cursor).expect("replay");
                    black_box(sum_payloads(events.iter().map(|event| &**event)));
                }
            }),
            Contender::new("ours_lend_handle", |n| {
                for _ in 0..n {
                    black_box(
                        handle
                            .replay_with(&cursor, |events| sum_payloads(events))
                            .expect("replay"),
                    );
                }
            }),
            Contender::new("floor_read", |n| {
                for _ in 0..n {
                    black_box(sum_payloads(black_box(tail).iter().map(|event| &**event)));
                }
            }),
        ],
        &mut csv,
    );
    support::paired(
        "replay_at_tail",
        vec![
            Contender::new("ours_key", |n| {
                for _ in 0..n {
                    let tail = store.current_cursor(&key);
                    assert!(store.replay_after_cursor(&tail).expect("replay").is_empty());
                }
            }),
            Contender::new("reference", |n| {
                for _ in 0..n {
                    let tail = reference.current_cursor(REFERENCE_ID);
                    assert!(reference
                        .replay_after_cursor(&tail)
                        .expect("replay")
                        .is_empty());
                }
            }),
            Contender::new("ours_handle", |n| {
                for _ in 0..n {
                    let tail = handle.current_cursor();
                    assert!(handle.replay_after(&tail).expect("replay").is_empty());
                }
            }),
        ],
        &mut csv,
    );
    drop((events, handle, store, reference));

    let store =
        ReplayStore::<u64>::new(Config::default().with_capacity(TURN_CAPACITY)).expect("config");
    let small =
        ReplayStore::<u64>::new(Config::default().with_capacity(SMALL_CAPACITY)).expect("config");
    let max_age = Duration::from_secs(120);
    let reference = ReferenceStore::<u64>::new(TURN_CAPACITY, max_age);
    let reference_small = ReferenceStore::<u64>::new(SMALL_CAPACITY, max_age);
    support::paired(
        "pressure_turn",
        vec![
            Contender::new("ours", |n| {
                for _ in 0..n {
                    pressure_turn_ours(&store, &small, &key);
                }
            }),
            Contender::new("reference", |n| {
                for _ in 0..n {
                    pressure_turn_reference(&reference, &reference_small, REFERENCE_ID);
                }
            }),
        ],
        &mut csv,
    );
    support::write_out("replay-paired.csv", &csv);
}

fn main() {
    let since = SystemTime::now();
    let mut criterion = support::criterion();
    replay_100(&mut criterion);
    replay_at_tail(&mut criterion);
    pressure_turn(&mut criterion);
    criterion.final_summary();
    support::report("replay", since, COMPARISONS);
    if support::paired_enabled() {
        paired_replay();
    }
}
