//! Linearizability of one session under real threads: appends, replays
//! from the start, replays after a cursor and `current_cursor`, racing on
//! one session, checked against the contract's sequential model.
//!
//! # The sequential model
//!
//! A session is a log whose *published tail* `P` only grows. An append is
//! given the next position when it claims one; it becomes visible when `P`
//! passes its position, which may be after the append returned (a lower
//! position may still be in flight: contract section 2, readers only see
//! positions `<= P`). A read (replay or `current_cursor`) observes `P` at
//! one instant and returns exactly the events `1..=P` (or after its cursor
//! up to `P`), each the very event its append returned.
//!
//! # The check
//!
//! Every operation records a ticket from one global `SeqCst` counter when
//! it is invoked and when it returns, so ticket order is real-time order.
//! Positions identify appends, so a history is explained by choosing, for
//! every read `r` that observed tail `n(r)`, an instant inside its interval,
//! and for every position `p` an instant at which `P` reaches `p`. Such a
//! choice exists exactly when, for every read `r`:
//!
//! 1. **no stale read**: if every append of a position `<= p` returned
//!    before `r` was invoked, then `n(r) >= p`;
//! 2. **no read from the future**: every append of a position `<= n(r)`
//!    was invoked before `r` returned;
//! 3. **monotonic**: if `r` returned before `s` was invoked, `n(r) <= n(s)`;
//! 4. **exact content**: `r` returned the run `c+1..=n(r)` after its cursor
//!    `c`, in order, each event the one its append returned (and a cursor
//!    names the revision of the event at its position).
//!
//! (Sufficiency: place each read at the latest of its invocation, the
//! invocations of the appends it saw and the instants of the reads that saw
//! less; place `P` reaching `p` just after the reads that did not see `p`.
//! Conditions 1-3 are exactly what keeps every instant inside its interval.)
//!
//! The checker is tested on its own: a negative control feeds it
//! hand-made histories that break each condition and asserts each is
//! rejected, and a positive control that a legal race is accepted.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc as StdArc, Barrier};
use std::thread;
use std::time::Duration;

use livereplay::{Config, Cursor, ManualClock, ReplayStore, Revision, SessionKey};

/// What an operation observed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// An append that was given `position` for its unique `payload`.
    Appended { position: u64, payload: u64 },
    /// A read after position `after` that returned these `(position,
    /// payload)` pairs (a replay), so it observed `P = after + len`.
    Replayed { after: u64, events: Vec<(u64, u64)> },
    /// `current_cursor`: it observed `P = position`, and names the
    /// revision (here: the payload) of the event there.
    Cursor { position: u64, revision: u64 },
}

/// One completed operation: its invocation and response tickets and what
/// it observed.
#[derive(Debug, Clone)]
struct Operation {
    invoked: u64,
    returned: u64,
    outcome: Outcome,
}

/// Why a history is not linearizable.
#[derive(Debug, PartialEq, Eq)]
enum Violation {
    /// Append positions are not exactly `1..=n`, each once.
    Positions,
    /// A read's events are not the contiguous run after its cursor, or not
    /// the events the appends returned.
    Content { read: usize },
    /// Condition 1: a read missed a position whose appends (and every
    /// lower one) had all returned before it started.
    Stale { read: usize, missed: u64 },
    /// Condition 2: a read saw a position whose append had not started.
    Future { read: usize, position: u64 },
    /// Condition 3: a later read saw less than an earlier one.
    Regressed { earlier: usize, later: usize },
}

/// Checks a history against the sequential model (module docs).
fn check_history(history: &[Operation]) -> Result<(), Violation> {
    // Appends by position (index 0 unused).
    let mut appends: Vec<Option<&Operation>> = vec![None];
    let mut payload_at = vec![0];
    let mut by_position: Vec<_> = history
        .iter()
        .filter_map(|op| match op.outcome {
            Outcome::Appended { position, payload } => Some((position, payload, op)),
            _ => None,
        })
        .collect();
    by_position.sort_by_key(|&(position, ..)| position);
    for (index, &(position, payload, op)) in by_position.iter().enumerate() {
        if position != index as u64 + 1 {
            return Err(Violation::Positions);
        }
        appends.push(Some(op));
        payload_at.push(payload);
    }
    let appended = by_position.len() as u64;

    // Reads and the tail each observed.
    let mut reads = Vec::new();
    for (read, op) in history.iter().enumerate() {
        let observed = match &op.outcome {
            Outcome::Appended { .. } => continue,
            Outcome::Replayed { after, events } => {
                let contiguous = events.iter().enumerate().all(|(i, &(position, payload))| {
                    position == after + 1 + i as u64
                        && position <= appended
                        && payload_at[position as usize] == payload
                });
                if !contiguous {
                    return Err(Violation::Content { read });
                }
                after + events.len() as u64
            }
            Outcome::Cursor { position, revision } => {
                if *position > appended
                    || (*position > 0 && payload_at[*position as usize] != *revision)
                {
                    return Err(Violation::Content { read });
                }
                *position
            }
        };
        reads.push((read, op, observed));
    }

    // Deadline of position p: when every append of a position <= p had
    // returned; after it, P >= p. Latest start of positions <= p: before
    // it, no read can have seen p.
    let mut deadline = vec![0u64];
    let mut latest_start = vec![0u64];
    for op in appends.iter().skip(1).flatten() {
        deadline.push(deadline.last().copied().unwrap_or(0).max(op.returned));
        latest_start.push(latest_start.last().copied().unwrap_or(0).max(op.invoked));
    }

    for &(read, op, observed) in &reads {
        // Condition 1: deadline is nondecreasing, so check the first
        // position past what was observed.
        let next = observed + 1;
        if next <= appended && deadline[next as usize] < op.invoked {
            return Err(Violation::Stale { read, missed: next });
        }
        // Condition 2.
        if latest_start[observed as usize] > op.returned {
            return Err(Violation::Future {
                read,
                position: observed,
            });
        }
    }
    // Condition 3: sorted by response, a later-invoked read must not see
    // less than the most any read that returned before it saw.
    let mut by_return: Vec<_> = reads
        .iter()
        .map(|&(r, op, n)| (op.returned, r, n))
        .collect();
    by_return.sort_unstable();
    let mut by_invoke: Vec<_> = reads.iter().map(|&(r, op, n)| (op.invoked, r, n)).collect();
    by_invoke.sort_unstable();
    let mut returned = by_return.iter().peekable();
    let mut most: Option<(u64, usize)> = None;
    for &(invoked, later, observed) in &by_invoke {
        while let Some(&&(at, earlier, seen)) = returned.peek() {
            if at >= invoked {
                break;
            }
            if most.is_none_or(|(m, _)| seen > m) {
                most = Some((seen, earlier));
            }
            returned.next();
        }
        if let Some((seen, earlier)) = most {
            if observed < seen {
                return Err(Violation::Regressed { earlier, later });
            }
        }
    }
    Ok(())
}

/// The global real-time order.
static TICKETS: AtomicU64 = AtomicU64::new(0);

fn ticket() -> u64 {
    TICKETS.fetch_add(1, SeqCst)
}

const THREADS: u64 = 3;
const OPERATIONS_PER_THREAD: u64 = 400;
const ROUNDS: u64 = 8;

/// One thread's deterministic mix of operations on one session: appends
/// through a handle and by key, replays from the start and after the last
/// cursor it saw, and `current_cursor`.
fn run_thread(
    store: &ReplayStore<u64>,
    key: &SessionKey,
    thread: u64,
    start: &Barrier,
) -> Vec<Operation> {
    let handle = store.session(key).expect("no bound is configured");
    let mut last_cursor = Cursor::start(key.clone());
    let mut history = Vec::with_capacity(OPERATIONS_PER_THREAD as usize);
    start.wait();
    for step in 0..OPERATIONS_PER_THREAD {
        let payload = thread * 1_000_000 + step;
        let invoked = ticket();
        let outcome = match (step + thread) % 6 {
            0 | 3 => {
                let event = handle.append(Revision(payload), payload).unwrap();
                Outcome::Appended {
                    position: event.position(),
                    payload,
                }
            }
            1 => {
                let event = store.append(key, Revision(payload), payload).unwrap();
                Outcome::Appended {
                    position: event.position(),
                    payload,
                }
            }
            2 => {
                let events = store
                    .replay_after_cursor(&Cursor::start(key.clone()))
                    .expect("nothing is trimmed");
                Outcome::Replayed {
                    after: 0,
                    events: events
                        .iter()
                        .map(|e| (e.position(), *e.payload()))
                        .collect(),
                }
            }
            4 => {
                let cursor = store.current_cursor(key);
                let outcome = Outcome::Cursor {
                    position: cursor.position(),
                    revision: cursor.revision().0,
                };
                last_cursor = cursor;
                outcome
            }
            _ => {
                let events = handle
                    .replay_after(&last_cursor)
                    .expect("a cursor this thread saw is never beyond the tail");
                Outcome::Replayed {
                    after: last_cursor.position(),
                    events: events
                        .iter()
                        .map(|e| (e.position(), *e.payload()))
                        .collect(),
                }
            }
        };
        let returned = ticket();
        history.push(Operation {
            invoked,
            returned,
            outcome,
        });
        // Offer the core to the other threads between operations, so their
        // operations interleave more often than one time slice each.
        thread::yield_now();
    }
    history
}

/// Records one bounded history of `THREADS` threads racing on one session.
fn record_history() -> Vec<Operation> {
    let store = StdArc::new(
        ReplayStore::builder()
            .config(
                Config::default()
                    .with_capacity(4096)
                    .with_max_age(Duration::from_secs(3600)),
            )
            .clock(StdArc::new(ManualClock::new()))
            .build()
            .unwrap(),
    );
    let key = SessionKey::new("tenant", "linearizable").unwrap();
    let start = StdArc::new(Barrier::new(THREADS as usize));
    let threads: Vec<_> = (0..THREADS)
        .map(|thread| {
            let (store, key, start) = (store.clone(), key.clone(), start.clone());
            thread::spawn(move || run_thread(&store, &key, thread, &start))
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().expect("no operation panics"))
        .collect()
}

#[test]
fn concurrent_histories_are_linearizable() {
    for round in 0..ROUNDS {
        let history = record_history();
        assert_eq!(history.len() as u64, THREADS * OPERATIONS_PER_THREAD);
        if let Err(violation) = check_history(&history) {
            panic!("round {round}: {violation:?} in {history:#?}");
        }
    }
}

/// Builds a hand-made operation.
fn op(invoked: u64, returned: u64, outcome: Outcome) -> Operation {
    Operation {
        invoked,
        returned,
        outcome,
    }
}

fn append(invoked: u64, returned: u64, position: u64) -> Operation {
    op(
        invoked,
        returned,
        Outcome::Appended {
            position,
            payload: 100 + position,
        },
    )
}

fn replay(invoked: u64, returned: u64, positions: &[u64]) -> Operation {
    op(
        invoked,
        returned,
        Outcome::Replayed {
            after: 0,
            events: positions.iter().map(|&p| (p, 100 + p)).collect(),
        },
    )
}

#[test]
fn the_checker_accepts_a_legal_race() {
    // Append 2 returned before the read started, but append 1 was still in
    // flight: the read may see nothing (P = 0) — the contract's published
    // tail — and a later read sees both.
    let history = [
        append(0, 9, 1),
        append(1, 3, 2),
        replay(4, 5, &[]),
        op(
            6,
            7,
            Outcome::Cursor {
                position: 0,
                revision: 0,
            },
        ),
        replay(10, 11, &[1, 2]),
        op(
            12,
            13,
            Outcome::Cursor {
                position: 2,
                revision: 102,
            },
        ),
    ];
    assert_eq!(check_history(&history), Ok(()));
}

#[test]
fn the_checker_rejects_non_linearizable_histories() {
    let rejected = [
        // Both appends returned before the read started: it must see them.
        (
            vec![append(0, 1, 1), append(2, 3, 2), replay(4, 5, &[1])],
            Violation::Stale { read: 2, missed: 2 },
        ),
        // The read returned before append 2 was even invoked.
        (
            vec![append(0, 1, 1), replay(2, 3, &[1, 2]), append(4, 5, 2)],
            Violation::Future {
                read: 1,
                position: 2,
            },
        ),
        // A later read sees less than an earlier one.
        (
            vec![append(0, 9, 1), replay(2, 3, &[1]), replay(4, 5, &[])],
            Violation::Regressed {
                earlier: 1,
                later: 2,
            },
        ),
        // A hole in a replay.
        (
            vec![append(0, 1, 1), append(0, 1, 2), replay(2, 3, &[2])],
            Violation::Content { read: 2 },
        ),
        // Another event served at a position.
        (
            vec![
                append(0, 1, 1),
                op(
                    2,
                    3,
                    Outcome::Replayed {
                        after: 0,
                        events: vec![(1, 999)],
                    },
                ),
            ],
            Violation::Content { read: 1 },
        ),
        // A cursor naming the wrong revision.
        (
            vec![
                append(0, 1, 1),
                op(
                    2,
                    3,
                    Outcome::Cursor {
                        position: 1,
                        revision: 7,
                    },
                ),
            ],
            Violation::Content { read: 1 },
        ),
        // Two appends given the same position.
        (vec![append(0, 1, 1), append(0, 1, 1)], Violation::Positions),
    ];
    for (history, violation) in rejected {
        assert_eq!(check_history(&history), Err(violation), "{history:#?}");
    }
}
