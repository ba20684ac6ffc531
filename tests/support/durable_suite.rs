//! The durable-log conformance suite: the module invariants of
//! `livereplay::durable`, as functions over `&dyn DurableLog`, so that every
//! backend (memory, redb, and later Redis) is held to the same contract by
//! the same code.
//!
//! A backend's test file includes this module and invokes
//! [`durable_conformance!`] with an expression that builds a fresh,
//! empty [`Backend`] for each test; a backend that survives a restart also
//! invokes [`durable_reopen_conformance!`] with a [`Reopen`] fixture. The
//! macros list every suite function once, here, so a test added to the
//! suite runs against every backend.
//!
//! Every test checks a refused call changed nothing: the meta, the records
//! and the listing are compared before and after.

#![allow(dead_code)] // each backend file uses its own subset of helpers

use livereplay::durable::{
    DurableLog, EventRef, HoleReason, Life, Links, LogError, LogRecord, RecordBody, SessionMeta,
    SessionWrite, StoredEvent,
};
use livereplay::{CloseReason, Closure, Incarnation, SessionKey};

/// A fresh, empty log for one test; dropping it cleans up after it.
pub trait Backend {
    /// The log under test.
    fn log(&self) -> &dyn DurableLog;
}

/// A backend whose log survives being closed and opened again.
pub trait Reopen: Backend {
    /// Closes the log (drops every handle on it) and opens the same store
    /// again.
    fn reopen(&mut self);
}

/// A log opened over a server the test started, under a namespace of its
/// own (a key prefix, a schema), so tests can share one server: the log
/// is dropped before the server (fields drop in order), and reopened on
/// the same server and namespace.
pub struct ServerBackend<S, L> {
    pub log: Option<L>,
    pub namespace: String,
    pub server: S,
    open: fn(&S, &str) -> L,
}

impl<S, L> ServerBackend<S, L> {
    /// Opens the log on `server` under `namespace` with `open`.
    pub fn new(server: S, namespace: String, open: fn(&S, &str) -> L) -> Self {
        let log = open(&server, &namespace);
        Self {
            log: Some(log),
            namespace,
            server,
            open,
        }
    }

    /// The open log.
    pub fn log(&self) -> &L {
        self.log.as_ref().expect("the log is open")
    }
}

impl<S, L: DurableLog> Backend for ServerBackend<S, L> {
    fn log(&self) -> &dyn DurableLog {
        ServerBackend::<S, L>::log(self)
    }
}

impl<S, L: DurableLog> Reopen for ServerBackend<S, L> {
    fn reopen(&mut self) {
        drop(self.log.take());
        self.log = Some((self.open)(&self.server, &self.namespace));
    }
}

/// A name no other call in this process returns:
/// `{stem}{separator}{pid}{separator}{n}`.
pub fn unique_name(stem: &str, separator: char) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{stem}{separator}{}{separator}{n}", std::process::id())
}

/// For a log several writers share (nodes): `writers` (other handles on
/// the same log) append to one session as fast as they can, each racing
/// the others for every position. Exactly one wins each position, the
/// others are refused with the typed `NotContiguous` (the persister's
/// fencing depends on it), and `log` ends contiguous with every position
/// once. Bounded: the writers stop after `limit`.
pub fn concurrent_writers_never_share_a_position(
    log: &dyn DurableLog,
    writers: &[&(dyn DurableLog + Sync)],
    limit: std::time::Duration,
) {
    let k = key("t", "s");
    append_ok(log, &k, Some(life(1, 1)), &[]);
    let wins: Vec<u64> = std::thread::scope(|scope| {
        let handles: Vec<_> = writers
            .iter()
            .map(|writer| {
                let k = k.clone();
                scope.spawn(move || {
                    let mut wins = 0u64;
                    let deadline = std::time::Instant::now() + limit;
                    while std::time::Instant::now() < deadline {
                        let tail = meta_of(*writer, &k).durable_tail;
                        if tail >= 200 {
                            break;
                        }
                        let next = [event(tail + 1, 1)];
                        match writer.append(&[write(&k, None, &next)]) {
                            Ok(()) => wins += 1,
                            Err(LogError::NotContiguous { .. }) => {}
                            Err(e) => panic!("unexpected error: {e}"),
                        }
                    }
                    wins
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a writer panicked"))
            .collect()
    });
    let m = meta_of(log, &k);
    assert_eq!(m.durable_tail, 200);
    assert_eq!(wins.iter().sum::<u64>(), 200, "{wins:?}");
    assert_eq!(m.event_count, 200);
    assert_eq!(load_all(log, &k), events(1..=200, 1));
}

/// Generates one `#[test]` per suite function, each on a fresh backend
/// built by `$backend` (an expression of a type implementing [`Backend`]).
macro_rules! durable_conformance {
    ($backend:expr) => {
        durable_conformance!(@tests $backend;
            empty_call_is_a_no_op,
            refuses_a_gap,
            refuses_an_overlap,
            refuses_a_gap_inside_a_batch,
            refuses_a_wrong_start_on_a_new_session,
            multi_session_call_is_all_or_nothing,
            session_written_twice_in_one_call_validates_against_the_earlier_write,
            first_write_needs_a_life,
            new_life_must_start_at_tail_plus_one,
            new_life_needs_a_fresh_incarnation,
            records_must_carry_the_newest_life,
            a_life_alone_can_be_registered,
            life_of_reports_where_each_life_ends,
            zero_count_hole_is_refused,
            holes_are_loaded_and_counted,
            hole_at_the_tail,
            load_after_orders_and_limits,
            archive_is_monotonic_and_clamped,
            archived_positions_are_not_loaded,
            tail_and_lives_survive_archiving_everything,
            archive_counts_events_not_hole_positions,
            archive_keeps_a_straddling_hole,
            sessions_newest_first_with_limit_and_offset,
            tenants_are_isolated,
            links_round_trip,
            large_payload_round_trips,
            large_payloads_of_every_size_round_trip_and_archive,
            closure_is_stored_at_the_tail_and_cleared_by_a_new_life,
            open_turn_is_stored_and_cleared_by_a_closure_or_a_new_life,
            a_store_that_renewed_its_lease_is_alive,
        );
    };
    (@tests $backend:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let backend = $backend;
                crate::durable_suite::$name(crate::durable_suite::Backend::log(&backend));
            }
        )*
    };
}

/// Generates the tests that close and reopen the store, on a fresh
/// backend built by `$backend` (a type implementing [`Reopen`]).
macro_rules! durable_reopen_conformance {
    ($backend:expr) => {
        durable_reopen_conformance!(@tests $backend;
            reopen_keeps_everything,
            write_after_reopen_continues,
        );
    };
    (@tests $backend:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let mut backend = $backend;
                crate::durable_suite::$name(&mut backend);
            }
        )*
    };
}

// ---- helpers ------------------------------------------------------------

pub fn key(tenant: &str, session: &str) -> SessionKey {
    SessionKey::new(tenant, session).expect("a valid test key")
}

pub fn inc(raw: u64) -> Incarnation {
    Incarnation::from_raw(raw).expect("a non-zero incarnation")
}

pub fn life(raw: u64, first_position: u64) -> Life {
    Life {
        incarnation: inc(raw),
        first_position,
    }
}

/// An event whose every field depends on its position, so a record read
/// back from the wrong place does not compare equal.
pub fn event(position: u64, incarnation: u64) -> LogRecord {
    LogRecord {
        position,
        incarnation: inc(incarnation),
        body: RecordBody::Event(StoredEvent {
            revision: position * 10,
            timestamp_nanos: 1_700_000_000_000_000_000 + position,
            links: Links::default(),
            payload: format!("payload {position}").into_bytes(),
        }),
    }
}

pub fn events(positions: std::ops::RangeInclusive<u64>, incarnation: u64) -> Vec<LogRecord> {
    positions.map(|p| event(p, incarnation)).collect()
}

pub fn hole(position: u64, incarnation: u64, count: u64) -> LogRecord {
    LogRecord {
        position,
        incarnation: inc(incarnation),
        body: RecordBody::Hole {
            count,
            reason: HoleReason::Lapped,
        },
    }
}

pub fn write<'a>(
    key: &'a SessionKey,
    new_life: Option<Life>,
    records: &'a [LogRecord],
) -> SessionWrite<'a> {
    SessionWrite {
        key,
        new_life,
        records,
        closure: None,
        turn_owner: None,
    }
}

/// Appends one session's write, which must succeed.
pub fn append_ok(
    log: &dyn DurableLog,
    key: &SessionKey,
    new_life: Option<Life>,
    records: &[LogRecord],
) {
    log.append(&[write(key, new_life, records)])
        .unwrap_or_else(|e| panic!("append to {key} failed: {e}"));
}

pub fn meta(log: &dyn DurableLog, key: &SessionKey) -> Option<SessionMeta> {
    log.meta(key).expect("meta")
}

pub fn meta_of(log: &dyn DurableLog, key: &SessionKey) -> SessionMeta {
    meta(log, key).unwrap_or_else(|| panic!("{key} should be recorded"))
}

pub fn load(log: &dyn DurableLog, key: &SessionKey, after: u64, limit: usize) -> Vec<LogRecord> {
    log.load_after(key, after, limit).expect("load_after")
}

pub fn load_all(log: &dyn DurableLog, key: &SessionKey) -> Vec<LogRecord> {
    load(log, key, 0, usize::MAX)
}

pub fn positions(records: &[LogRecord]) -> Vec<u64> {
    records.iter().map(|r| r.position).collect()
}

pub fn listed(log: &dyn DurableLog, tenant: &str) -> Vec<SessionKey> {
    log.sessions(tenant, usize::MAX, 0).expect("sessions")
}

/// Everything a refused call must leave as it was.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    metas: Vec<Option<SessionMeta>>,
    records: Vec<Vec<LogRecord>>,
    listings: Vec<Vec<SessionKey>>,
}

pub fn snapshot(log: &dyn DurableLog, keys: &[&SessionKey]) -> Snapshot {
    let mut tenants: Vec<&str> = keys.iter().map(|k| k.tenant()).collect();
    tenants.sort_unstable();
    tenants.dedup();
    Snapshot {
        metas: keys.iter().map(|k| meta(log, k)).collect(),
        records: keys.iter().map(|k| load_all(log, k)).collect(),
        listings: tenants.iter().map(|t| listed(log, t)).collect(),
    }
}

/// Asserts `result` is an error `expected` accepts, and that the call left
/// `keys` exactly as they were.
pub fn assert_refused(
    log: &dyn DurableLog,
    keys: &[&SessionKey],
    call: impl FnOnce() -> Result<(), LogError>,
    expected: impl FnOnce(&LogError) -> bool,
    what: &str,
) {
    let before = snapshot(log, keys);
    match call() {
        Ok(()) => panic!("{what}: the call was accepted"),
        Err(e) => assert!(expected(&e), "{what}: wrong error: {e:?}"),
    }
    assert_eq!(
        snapshot(log, keys),
        before,
        "{what}: a refused call changed the log"
    );
}

// ---- contiguity ---------------------------------------------------------

pub fn empty_call_is_a_no_op(log: &dyn DurableLog) {
    let k = key("t", "s");
    log.append(&[]).expect("an empty call is fine");
    assert_eq!(meta(log, &k), None);
    append_ok(log, &k, Some(life(1, 1)), &events(1..=2, 1));
    let before = snapshot(log, &[&k]);
    log.append(&[]).expect("an empty call is fine");
    assert_eq!(snapshot(log, &[&k]), before);
}

pub fn refuses_a_gap(log: &dyn DurableLog) {
    let k = key("t", "s");
    append_ok(log, &k, Some(life(1, 1)), &events(1..=3, 1));
    let records = events(5..=6, 1);
    assert_refused(
        log,
        &[&k],
        || log.append(&[write(&k, None, &records)]),
        |e| {
            matches!(
                e,
                LogError::NotContiguous {
                    tail: 3,
                    got: 5,
                    ..
                }
            )
        },
        "a gap after the tail",
    );
    // The refusal did not poison anything: the right start is accepted.
    append_ok(log, &k, None, &events(4..=4, 1));
    assert_eq!(meta_of(log, &k).durable_tail, 4);
}

pub fn refuses_an_overlap(log: &dyn DurableLog) {
    let k = key("t", "s");
    append_ok(log, &k, Some(life(1, 1)), &events(1..=3, 1));
    for start in [1, 3] {
        let records = events(start..=start + 2, 1);
        assert_refused(
            log,
            &[&k],
            || log.append(&[write(&k, None, &records)]),
            |e| matches!(e, LogError::NotContiguous { tail: 3, got, .. } if *got == start),
            "records overlapping the tail",
        );
    }
    assert_eq!(positions(&load_all(log, &k)), [1, 2, 3]);
}

pub fn refuses_a_gap_inside_a_batch(log: &dyn DurableLog) {
    let k = key("t", "s");
    append_ok(log, &k, Some(life(1, 1)), &events(1..=2, 1));
    // 3 is right, 5 skips 4: nothing of the batch may land, not even 3.
    let gap = [event(3, 1), event(5, 1)];
    assert_refused(
        log,
        &[&k],
        || log.append(&[write(&k, None, &gap)]),
        |e| matches!(e, LogError::NotContiguous { got: 5, .. }),
        "a gap inside a batch",
    );
    let repeat = [event(3, 1), event(3, 1)];
    assert_refused(
        log,
        &[&k],
        || log.append(&[write(&k, None, &repeat)]),
        |e| matches!(e, LogError::NotContiguous { got: 3, .. }),
        "a position repeated inside a batch",
    );
    // A hole covers its count: the next record must start after all of it.
    let short = [hole(3, 1, 3), event(5, 1)];
    assert_refused(
        log,
        &[&k],
        || log.append(&[write(&k, None, &short)]),
        |e| matches!(e, LogError::NotContiguous { got: 5, .. }),
        "a record inside the hole before it",
    );
    assert_eq!(meta_of(log, &k).durable_tail, 2);
}

pub fn refuses_a_wrong_start_on_a_new_session(log: &dyn DurableLog) {
    let k = key("t", "fresh");
    let records = events(2..=3, 1);
    assert_refused(
        log,
        &[&k],
        || log.append(&[write(&k, Some(life(1, 1)), &records)]),
        |e| {
            matches!(
                e,
                LogError::NotContiguous {
                    tail: 0,
                    got: 2,
                    ..
                }
            )
        },
        "a new session starting at 2",
    );
    assert_eq!(meta(log, &k), None, "a refused session is not recorded");
    assert!(
        listed(log, "t").is_empty(),
        "a refused session is not listed"
    );
}

pub fn multi_session_call_is_all_or_nothing(log: &dyn DurableLog) {
    let a = key("t", "a");
    let b = key("t", "b");
    let new = key("t", "new");
    append_ok(log, &a, Some(life(1, 1)), &events(1..=2, 1));
    append_ok(log, &b, Some(life(2, 1)), &events(1..=2, 2));
    let a_next = events(3..=4, 1);
    let b_bad = events(4..=4, 2); // b's tail is 2
    let new_records = events(1..=1, 3);
    let all = [&a, &b, &new];
    // The invalid write last, first, and in the middle: whatever the order,
    // the valid ones must not land.
    assert_refused(
        log,
        &all,
        || {
            log.append(&[
                write(&a, None, &a_next),
                write(&new, Some(life(3, 1)), &new_records),
                write(&b, None, &b_bad),
            ])
        },
        |e| matches!(e, LogError::NotContiguous { key, got: 4, .. } if *key == b),
        "invalid write last",
    );
    assert_refused(
        log,
        &all,
        || {
            log.append(&[
                write(&b, None, &b_bad),
                write(&a, None, &a_next),
                write(&new, Some(life(3, 1)), &new_records),
            ])
        },
        |e| matches!(e, LogError::NotContiguous { .. }),
        "invalid write first",
    );
    // An invalid life in the middle of the call, too.
    let b_next = events(3..=3, 2);
    assert_refused(
        log,
        &all,
        || {
            log.append(&[
                write(&a, None, &a_next),
                write(&b, Some(life(2, 3)), &b_next),
                write(&new, Some(life(3, 1)), &new_records),
            ])
        },
        |e| matches!(e, LogError::BadLife { key, expected: 3 } if *key == b),
        "reused incarnation in the middle",
    );
    assert_eq!(meta(log, &new), None);
    // And the same call made valid lands completely.
    log.append(&[
        write(&a, None, &a_next),
        write(&new, Some(life(3, 1)), &new_records),
        write(&b, None, &b_next),
    ])
    .expect("the valid call");
    assert_eq!(meta_of(log, &a).durable_tail, 4);
    assert_eq!(meta_of(log, &b).durable_tail, 3);
    assert_eq!(meta_of(log, &new).durable_tail, 1);
    assert_eq!(load_all(log, &new), new_records);
}

pub fn session_written_twice_in_one_call_validates_against_the_earlier_write(log: &dyn DurableLog) {
    let k = key("t", "s");
    let first = events(1..=2, 1);
    let second = events(3..=4, 1);
    // The second write continues the first (and inherits its life).
    log.append(&[
        write(&k, Some(life(1, 1)), &first),
        write(&k, None, &second),
    ])
    .expect("a session twice in one call");
    let m = meta_of(log, &k);
    assert_eq!(m.durable_tail, 4);
    assert_eq!(m.event_count, 4);
    assert_eq!(m.lives, [life(1, 1)]);
    assert_eq!(positions(&load_all(log, &k)), [1, 2, 3, 4]);

    // Restarting at the pre-call tail + 1 in the second write is an
    // overlap with the first write, and refuses both.
    let again = events(5..=5, 1);
    assert_refused(
        log,
        &[&k],
        || log.append(&[write(&k, None, &again), write(&k, None, &again)]),
        |e| {
            matches!(
                e,
                LogError::NotContiguous {
                    tail: 5,
                    got: 5,
                    ..
                }
            )
        },
        "the second write overlapping the first",
    );
    // A new life in the second write starts after the first write's tail.
    let first = events(5..=5, 1);
    let second = events(6..=6, 2);
    log.append(&[
        write(&k, None, &first),
        write(&k, Some(life(2, 6)), &second),
    ])
    .expect("a new life after the first write");
    assert_eq!(meta_of(log, &k).lives, [life(1, 1), life(2, 6)]);
    assert_eq!(meta_of(log, &k).durable_tail, 6);
}

// ---- lives --------------------------------------------------------------

pub fn first_write_needs_a_life(log: &dyn DurableLog) {
    let k = key("t", "s");
    let records = events(1..=1, 1);
    assert_refused(
        log,
        &[&k],
        || log.append(&[write(&k, None, &records)]),
        |e| matches!(e, LogError::BadLife { expected: 1, .. }),
        "records without any life",
    );
    assert_eq!(meta(log, &k), None);
}

pub fn new_life_must_start_at_tail_plus_one(log: &dyn DurableLog) {
    let k = key("t", "s");
    let bad_first = events(1..=1, 1);
    assert_refused(
        log,
        &[&k],
        || log.append(&[write(&k, Some(life(1, 2)), &bad_first)]),
        |e| matches!(e, LogError::BadLife { expected: 1, .. }),
        "a first life not at 1",
    );
    append_ok(log, &k, Some(life(1, 1)), &events(1..=3, 1));
    for first in [3, 5, 0, 1] {
        let records = events(4..=4, 2);
        assert_refused(
            log,
            &[&k],
            || log.append(&[write(&k, Some(life(2, first)), &records)]),
            |e| matches!(e, LogError::BadLife { expected: 4, .. }),
            "a new life not at tail + 1",
        );
    }
    append_ok(log, &k, Some(life(2, 4)), &events(4..=4, 2));
    assert_eq!(meta_of(log, &k).lives, [life(1, 1), life(2, 4)]);
}

pub fn new_life_needs_a_fresh_incarnation(log: &dyn DurableLog) {
    let k = key("t", "s");
    append_ok(log, &k, Some(life(1, 1)), &events(1..=2, 1));
    let current = events(3..=3, 1);
    assert_refused(
        log,
        &[&k],
        || log.append(&[write(&k, Some(life(1, 3)), &current)]),
        |e| matches!(e, LogError::BadLife { expected: 3, .. }),
        "the current incarnation as a new life",
    );
    append_ok(log, &k, Some(life(2, 3)), &events(3..=3, 2));
    let older = events(4..=4, 1);
    assert_refused(
        log,
        &[&k],
        || log.append(&[write(&k, Some(life(1, 4)), &older)]),
        |e| matches!(e, LogError::BadLife { expected: 4, .. }),
        "an older life's incarnation as a new life",
    );
}

pub fn records_must_carry_the_newest_life(log: &dyn DurableLog) {
    let k = key("t", "s");
    let wrong = events(1..=1, 2);
    assert_refused(
        log,
        &[&k],
        || log.append(&[write(&k, Some(life(1, 1)), &wrong)]),
        |e| matches!(e, LogError::InvalidRecord { position: 1, .. }),
        "records not of the new life",
    );
    append_ok(log, &k, Some(life(1, 1)), &events(1..=2, 1));
    append_ok(log, &k, Some(life(2, 3)), &[]);
    // Life 1 is no longer the newest.
    let stale = events(3..=3, 1);
    assert_refused(
        log,
        &[&k],
        || log.append(&[write(&k, None, &stale)]),
        |e| matches!(e, LogError::InvalidRecord { position: 3, .. }),
        "records of an older life",
    );
    // A hole must carry it too; and one stray record spoils the batch.
    let mixed = [event(3, 2), hole(4, 1, 2)];
    assert_refused(
        log,
        &[&k],
        || log.append(&[write(&k, None, &mixed)]),
        |e| matches!(e, LogError::InvalidRecord { position: 4, .. }),
        "a hole of an older life",
    );
    append_ok(log, &k, None, &[event(3, 2), hole(4, 2, 2)]);
    assert_eq!(meta_of(log, &k).durable_tail, 5);
}

pub fn a_life_alone_can_be_registered(log: &dyn DurableLog) {
    let k = key("t", "s");
    append_ok(log, &k, Some(life(1, 1)), &[]);
    let m = meta_of(log, &k);
    assert_eq!(m.lives, [life(1, 1)]);
    assert_eq!((m.durable_tail, m.event_count, m.last_revision), (0, 0, 0));
    assert!(load_all(log, &k).is_empty());
    assert_eq!(listed(log, "t"), std::slice::from_ref(&k));
    append_ok(log, &k, None, &events(1..=2, 1));
    append_ok(log, &k, Some(life(2, 3)), &[]);
    let m = meta_of(log, &k);
    assert_eq!(m.durable_tail, 2, "a life alone does not move the tail");
    assert_eq!(m.current_life(), Some(life(2, 3)));
    append_ok(log, &k, None, &events(3..=3, 2));
    assert_eq!(load_all(log, &k)[2].incarnation, inc(2));
}

pub fn life_of_reports_where_each_life_ends(log: &dyn DurableLog) {
    let k = key("t", "s");
    append_ok(log, &k, Some(life(1, 1)), &events(1..=3, 1));
    append_ok(log, &k, Some(life(2, 4)), &[event(4, 2), hole(5, 2, 2)]);
    append_ok(log, &k, Some(life(3, 7)), &events(7..=8, 3));
    let m = meta_of(log, &k);
    assert_eq!(m.lives, [life(1, 1), life(2, 4), life(3, 7)]);
    assert_eq!(m.life_of(inc(1)), Some((life(1, 1), 3)));
    assert_eq!(
        m.life_of(inc(2)),
        Some((life(2, 4), 6)),
        "a hole ends life 2"
    );
    assert_eq!(
        m.life_of(inc(3)),
        Some((life(3, 7), 8)),
        "the newest ends at the tail"
    );
    assert_eq!(m.life_of(inc(4)), None);
    assert_eq!(m.current_life(), Some(life(3, 7)));
    // A life that has appended nothing yet ends before it starts.
    append_ok(log, &k, Some(life(4, 9)), &[]);
    let m = meta_of(log, &k);
    assert_eq!(m.life_of(inc(3)), Some((life(3, 7), 8)));
    assert_eq!(m.life_of(inc(4)), Some((life(4, 9), 8)));
}

// ---- holes --------------------------------------------------------------

pub fn zero_count_hole_is_refused(log: &dyn DurableLog) {
    let k = key("t", "s");
    let alone = [hole(1, 1, 0)];
    assert_refused(
        log,
        &[&k],
        || log.append(&[write(&k, Some(life(1, 1)), &alone)]),
        |e| matches!(e, LogError::InvalidRecord { position: 1, .. }),
        "a zero-count hole on a new session",
    );
    append_ok(log, &k, Some(life(1, 1)), &events(1..=1, 1));
    let after_events = [event(2, 1), hole(3, 1, 0), event(3, 1)];
    assert_refused(
        log,
        &[&k],
        || log.append(&[write(&k, None, &after_events)]),
        |e| matches!(e, LogError::InvalidRecord { position: 3, .. }),
        "a zero-count hole inside a batch",
    );
}

pub fn holes_are_loaded_and_counted(log: &dyn DurableLog) {
    let k = key("t", "s");
    let mut records = events(1..=2, 1);
    records.push(LogRecord {
        position: 3,
        incarnation: inc(1),
        body: RecordBody::Hole {
            count: 5,
            reason: HoleReason::Unencodable,
        },
    });
    records.push(event(8, 1));
    append_ok(log, &k, Some(life(1, 1)), &records);
    let m = meta_of(log, &k);
    assert_eq!(m.durable_tail, 8, "the tail covers the hole");
    assert_eq!(m.event_count, 3, "holes are not events");
    assert_eq!(m.last_revision, 80);
    assert_eq!(load_all(log, &k), records, "every field round-trips");
    assert_eq!(positions(&load(log, &k, 2, 10)), [3, 8]);
    // Inside the hole: the hole record comes first, whole.
    for after in 3..=6 {
        let loaded = load(log, &k, after, 10);
        assert_eq!(loaded.first(), Some(&records[2]), "after {after}");
        assert_eq!(positions(&loaded), [3, 8], "after {after}");
    }
    assert_eq!(load(log, &k, 6, 1), [records[2].clone()], "limit 1 inside");
    assert_eq!(positions(&load(log, &k, 7, 10)), [8]);
    assert!(load(log, &k, 8, 10).is_empty());
}

pub fn hole_at_the_tail(log: &dyn DurableLog) {
    let k = key("t", "s");
    append_ok(log, &k, Some(life(1, 1)), &[event(1, 1), hole(2, 1, 4)]);
    let m = meta_of(log, &k);
    assert_eq!((m.durable_tail, m.event_count, m.last_revision), (5, 1, 10));
    assert_eq!(positions(&load(log, &k, 4, 10)), [2]);
    assert!(load(log, &k, 5, 10).is_empty());
    // The next record starts after the whole hole.
    append_ok(log, &k, None, &events(6..=6, 1));
    assert_eq!(positions(&load(log, &k, 4, 10)), [2, 6]);
}

// ---- load_after ---------------------------------------------------------

pub fn load_after_orders_and_limits(log: &dyn DurableLog) {
    let k = key("t", "s");
    let first = events(1..=4, 1);
    let second = events(5..=10, 1);
    append_ok(log, &k, Some(life(1, 1)), &first);
    append_ok(log, &k, None, &second);
    let all = [first, second].concat();
    assert_eq!(load_all(log, &k), all, "two batches, in order, equal");
    assert_eq!(positions(&load(log, &k, 0, 3)), [1, 2, 3]);
    assert_eq!(positions(&load(log, &k, 3, 3)), [4, 5, 6]);
    assert_eq!(positions(&load(log, &k, 9, 5)), [10]);
    assert!(load(log, &k, 10, 5).is_empty());
    assert!(load(log, &k, 0, 0).is_empty(), "limit 0");
    assert!(load(log, &k, 1_000, 5).is_empty());
    assert!(
        load(log, &key("t", "unknown"), 0, 5).is_empty(),
        "an unknown session"
    );
    // Paging through with the last position seen gets every record once.
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = load(log, &k, after, 3);
        let Some(last) = page.last() else { break };
        after = last.last_position();
        seen.extend(page);
    }
    assert_eq!(seen, all);
}

// ---- archive ------------------------------------------------------------

pub fn archive_is_monotonic_and_clamped(log: &dyn DurableLog) {
    let k = key("t", "s");
    let unknown = key("t", "unknown");
    assert_eq!(log.archive_before(&unknown, 10).expect("archive"), 0);
    assert_eq!(meta(log, &unknown), None, "archiving does not create");
    append_ok(log, &k, Some(life(1, 1)), &events(1..=5, 1));
    assert_eq!(log.archive_before(&k, 0).expect("archive"), 0);
    assert_eq!(log.archive_before(&k, 2).expect("archive"), 2);
    let m = meta_of(log, &k);
    assert_eq!((m.archived_through, m.event_count), (2, 3));
    for lower in [0, 1, 2] {
        assert_eq!(log.archive_before(&k, lower).expect("archive"), 0);
        assert_eq!(meta_of(log, &k).archived_through, 2, "not moved back");
    }
    assert_eq!(log.archive_before(&k, 100).expect("archive"), 3);
    let m = meta_of(log, &k);
    assert_eq!(m.archived_through, 5, "clamped to the tail");
    assert_eq!((m.durable_tail, m.event_count), (5, 0));
    assert_eq!(log.archive_before(&k, u64::MAX).expect("archive"), 0);
    // The clamp is to the tail at the time: a later append can be archived.
    append_ok(log, &k, None, &events(6..=7, 1));
    assert_eq!(log.archive_before(&k, 6).expect("archive"), 1);
    assert_eq!(meta_of(log, &k).archived_through, 6);
    assert_eq!(positions(&load_all(log, &k)), [7]);
}

pub fn archived_positions_are_not_loaded(log: &dyn DurableLog) {
    let k = key("t", "s");
    append_ok(log, &k, Some(life(1, 1)), &events(1..=6, 1));
    assert_eq!(log.archive_before(&k, 3).expect("archive"), 3);
    for after in [0, 1, 3] {
        assert_eq!(
            positions(&load(log, &k, after, 10)),
            [4, 5, 6],
            "after {after}"
        );
    }
    assert_eq!(
        positions(&load(log, &k, 0, 1)),
        [4],
        "limit counts from the first kept"
    );
    assert_eq!(positions(&load(log, &k, 4, 10)), [5, 6]);
}

pub fn tail_and_lives_survive_archiving_everything(log: &dyn DurableLog) {
    let k = key("t", "s");
    append_ok(log, &k, Some(life(1, 1)), &events(1..=3, 1));
    append_ok(log, &k, Some(life(2, 4)), &[event(4, 2), hole(5, 2, 2)]);
    let before = meta_of(log, &k);
    assert_eq!(log.archive_before(&k, u64::MAX).expect("archive"), 4);
    let after = meta_of(log, &k);
    assert_eq!(after.durable_tail, 6);
    assert_eq!(after.archived_through, 6);
    assert_eq!(after.lives, before.lives);
    assert_eq!(after.last_revision, before.last_revision);
    assert_eq!(after.event_count, 0);
    assert_eq!(after.life_of(inc(1)), Some((life(1, 1), 3)));
    assert!(load_all(log, &k).is_empty());
    assert_eq!(listed(log, "t"), std::slice::from_ref(&k), "still listed");
    // Appends continue after the tail, not after the last record kept.
    let restart = events(1..=1, 2);
    assert_refused(
        log,
        &[&k],
        || log.append(&[write(&k, None, &restart)]),
        |e| {
            matches!(
                e,
                LogError::NotContiguous {
                    tail: 6,
                    got: 1,
                    ..
                }
            )
        },
        "restarting an archived session at 1",
    );
    let reused = events(7..=7, 1);
    assert_refused(
        log,
        &[&k],
        || log.append(&[write(&k, Some(life(1, 7)), &reused)]),
        |e| matches!(e, LogError::BadLife { expected: 7, .. }),
        "reusing an archived life's incarnation",
    );
    append_ok(log, &k, Some(life(3, 7)), &events(7..=7, 3));
    assert_eq!(positions(&load_all(log, &k)), [7]);
    assert_eq!(meta_of(log, &k).event_count, 1);
}

pub fn archive_counts_events_not_hole_positions(log: &dyn DurableLog) {
    let k = key("t", "s");
    let records = [
        event(1, 1),
        event(2, 1),
        hole(3, 1, 4),
        event(7, 1),
        event(8, 1),
    ];
    append_ok(log, &k, Some(life(1, 1)), &records);
    assert_eq!(meta_of(log, &k).event_count, 4);
    assert_eq!(log.archive_before(&k, 7).expect("archive"), 3, "1, 2 and 7");
    let m = meta_of(log, &k);
    assert_eq!((m.archived_through, m.event_count), (7, 1));
    assert_eq!(positions(&load_all(log, &k)), [8]);
}

pub fn archive_keeps_a_straddling_hole(log: &dyn DurableLog) {
    let k = key("t", "s");
    let records = [event(1, 1), event(2, 1), hole(3, 1, 5), event(8, 1)];
    append_ok(log, &k, Some(life(1, 1)), &records);
    assert_eq!(log.archive_before(&k, 5).expect("archive"), 2);
    let m = meta_of(log, &k);
    assert_eq!(
        (m.archived_through, m.event_count, m.durable_tail),
        (5, 1, 8)
    );
    // The hole still covers 6 and 7, so it is loaded, whole, first.
    let loaded = load_all(log, &k);
    assert_eq!(loaded, records[2..].to_vec());
    assert_eq!(load(log, &k, 6, 10), records[2..].to_vec());
    assert_eq!(positions(&load(log, &k, 7, 10)), [8]);
    // Past its end, the hole goes, and no event is counted for it.
    assert_eq!(log.archive_before(&k, 7).expect("archive"), 0);
    let m = meta_of(log, &k);
    assert_eq!((m.archived_through, m.event_count), (7, 1));
    assert_eq!(positions(&load_all(log, &k)), [8]);
}

// ---- listing and tenants ------------------------------------------------

pub fn sessions_newest_first_with_limit_and_offset(log: &dyn DurableLog) {
    let keys: Vec<SessionKey> = (1..=5).map(|i| key("t", &format!("s{i}"))).collect();
    for k in &keys {
        append_ok(log, k, Some(life(1, 1)), &events(1..=1, 1));
    }
    // Another tenant's sessions, interleaved in time, are not listed.
    append_ok(log, &key("u", "s9"), Some(life(1, 1)), &[]);
    // Writing to an old session again does not make it newer.
    append_ok(log, &keys[0], None, &events(2..=2, 1));
    let newest_first: Vec<SessionKey> = keys.iter().rev().cloned().collect();
    let page = |limit, offset| log.sessions("t", limit, offset).expect("sessions");
    assert_eq!(page(10, 0), newest_first);
    assert_eq!(page(2, 0), newest_first[0..2]);
    assert_eq!(page(2, 2), newest_first[2..4]);
    assert_eq!(page(2, 4), newest_first[4..5]);
    assert!(page(2, 5).is_empty());
    assert!(page(0, 0).is_empty());
    assert!(page(usize::MAX, usize::MAX).is_empty());
    assert_eq!(page(usize::MAX, 1), newest_first[1..]);
    assert_eq!(listed(log, "u"), [key("u", "s9")]);
    assert!(listed(log, "v").is_empty());
    // Two sessions first recorded in one call come before every older one.
    let (x, y) = (key("t", "x"), key("t", "y"));
    let one = events(1..=1, 1);
    log.append(&[
        write(&x, Some(life(1, 1)), &one),
        write(&y, Some(life(1, 1)), &one),
    ])
    .expect("two new sessions");
    let mut newest_two = page(2, 0);
    newest_two.sort_by(|a, b| a.session().cmp(b.session()));
    assert_eq!(newest_two, [x, y]);
    assert_eq!(page(10, 2), newest_first);
}

pub fn tenants_are_isolated(log: &dyn DurableLog) {
    // The same concatenated text, split differently: different sessions.
    let ab_c = key("ab", "c");
    let a_bc = key("a", "bc");
    let empty_abc = key("", "abc");
    append_ok(log, &ab_c, Some(life(1, 1)), &events(1..=3, 1));
    append_ok(log, &a_bc, Some(life(2, 1)), &[event(1, 2)]);
    append_ok(log, &empty_abc, Some(life(3, 1)), &[hole(1, 3, 2)]);
    assert_eq!(meta_of(log, &ab_c).durable_tail, 3);
    assert_eq!(meta_of(log, &a_bc).durable_tail, 1);
    assert_eq!(meta_of(log, &a_bc).lives, [life(2, 1)]);
    assert_eq!(meta_of(log, &empty_abc).event_count, 0);
    assert_eq!(load_all(log, &ab_c), events(1..=3, 1));
    assert_eq!(load_all(log, &a_bc), [event(1, 2)]);
    assert_eq!(load_all(log, &empty_abc), [hole(1, 3, 2)]);
    assert_eq!(listed(log, "ab"), std::slice::from_ref(&ab_c));
    assert_eq!(listed(log, "a"), std::slice::from_ref(&a_bc));
    assert_eq!(listed(log, ""), std::slice::from_ref(&empty_abc));
    assert!(listed(log, "abc").is_empty());
    assert_eq!(meta(log, &key("abc", "x")), None);
    // Each key's tail is its own.
    let next = events(2..=2, 2);
    log.append(&[write(&a_bc, None, &next)])
        .expect("a/bc continues at 2");
    assert_eq!(meta_of(log, &ab_c).durable_tail, 3);
    // Archiving one leaves the others.
    assert_eq!(log.archive_before(&ab_c, 3).expect("archive"), 3);
    assert_eq!(positions(&load_all(log, &a_bc)), [1, 2]);
    assert_eq!(meta_of(log, &a_bc).archived_through, 0);
    assert_eq!(load_all(log, &empty_abc), [hole(1, 3, 2)]);
}

// ---- payloads and links -------------------------------------------------

fn with_links(position: u64, links: Links, payload: Vec<u8>) -> LogRecord {
    LogRecord {
        position,
        incarnation: inc(1),
        body: RecordBody::Event(StoredEvent {
            revision: position,
            timestamp_nanos: position,
            links,
            payload,
        }),
    }
}

pub fn links_round_trip(log: &dyn DurableLog) {
    let k = key("t", "s");
    let full = Links {
        parent: Some(EventRef::new(key("t", "other/session ✓"), u64::MAX)),
        correlation: Some("corr-42".into()),
        kind: Some("tool.call".into()),
        lane: Some("sub-agent 3".into()),
        requires_ack: true,
    };
    let records = vec![
        with_links(1, full, b"x".to_vec()),
        with_links(
            2,
            Links {
                requires_ack: true,
                ..Links::default()
            },
            Vec::new(),
        ),
        with_links(
            3,
            Links {
                parent: Some(EventRef::new(key("t", "p"), 0)),
                ..Links::default()
            },
            vec![0; 3],
        ),
        // Present but empty is not absent.
        with_links(
            4,
            Links {
                correlation: Some("".into()),
                lane: Some("".into()),
                ..Links::default()
            },
            vec![0xff; 2],
        ),
        with_links(5, Links::default(), Vec::new()),
        LogRecord {
            position: 6,
            incarnation: inc(u64::MAX),
            body: RecordBody::Event(StoredEvent {
                revision: u64::MAX,
                timestamp_nanos: u64::MAX,
                links: Links {
                    kind: Some("k".into()),
                    ..Links::default()
                },
                payload: b"last".to_vec(),
            }),
        },
    ];
    append_ok(log, &k, Some(life(1, 1)), &records[..5]);
    append_ok(log, &k, Some(life(u64::MAX, 6)), &records[5..]);
    assert_eq!(load_all(log, &k), records);
    let m = meta_of(log, &k);
    assert_eq!(m.last_revision, u64::MAX);
    assert_eq!(m.current_life(), Some(life(u64::MAX, 6)));
}

pub fn large_payload_round_trips(log: &dyn DurableLog) {
    let k = key("t", "s");
    let big: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(31) >> 3) as u8)
        .collect();
    let records = [
        event(1, 1),
        with_links(
            2,
            Links {
                kind: Some("blob".into()),
                ..Links::default()
            },
            big,
        ),
        event(3, 1),
    ];
    append_ok(log, &k, Some(life(1, 1)), &records);
    assert_eq!(load_all(log, &k), records);
    assert_eq!(load(log, &k, 1, 1), [records[1].clone()]);
    assert_eq!(load(log, &k, 2, 1), [records[2].clone()]);
}

/// Payloads of sizes around where a backend may split one (redb keeps
/// those over 258 048 bytes in chunks of that size) read back exactly, one
/// to a call and several in one, with links, beside a session whose id
/// extends this one's; archiving some leaves the rest whole.
pub fn large_payloads_of_every_size_round_trip_and_archive(log: &dyn DurableLog) {
    const CHUNK: usize = 258_048;
    let (k, neighbour) = (key("t", "s"), key("t", "s2"));
    let sizes = [
        CHUNK - 1,
        CHUNK,
        CHUNK + 1,
        2 * CHUNK,
        2 * CHUNK + 7,
        1024 * 1024,
        3 * 1024 * 1024 + 5,
    ];
    let payload = |position: u64, len: usize| -> Vec<u8> {
        (0..len)
            .map(|i| (i as u64).wrapping_mul(position * 2 + 1) as u8)
            .collect()
    };
    let records: Vec<LogRecord> = sizes
        .iter()
        .zip(1u64..)
        .map(|(&len, position)| {
            let links = Links {
                kind: Some(format!("size-{len}").into()),
                ..Links::default()
            };
            with_links(position, links, payload(position, len))
        })
        .collect();
    append_ok(log, &k, Some(life(1, 1)), &records[..1]);
    append_ok(log, &k, None, &records[1..3]);
    append_ok(log, &k, None, &records[3..]);
    let beside = [with_links(1, Links::default(), payload(9, CHUNK + 3))];
    append_ok(log, &neighbour, Some(life(1, 1)), &beside);
    assert_eq!(load_all(log, &k), records);
    assert_eq!(load(log, &k, 3, 2), records[3..5].to_vec());
    assert_eq!(log.archive_before(&k, 4).expect("archive"), 4);
    assert_eq!(load_all(log, &k), records[4..].to_vec());
    assert_eq!(load_all(log, &neighbour), beside);
    assert_eq!(meta_of(log, &k).event_count, 3);
}

// ---- closure ------------------------------------------------------------

fn closed(reason: CloseReason, last: u64) -> Option<Closure> {
    Some(Closure { reason, last })
}

pub fn closure_is_stored_at_the_tail_and_cleared_by_a_new_life(log: &dyn DurableLog) {
    let k = key("t", "s");
    let other = key("t", "other");
    // Off the tail (before it, past it, or past the records of its own
    // call): refused whole, with the other session of the call.
    append_ok(log, &k, Some(life(1, 1)), &events(1..=2, 1));
    for (records, last) in [(vec![], 1), (vec![], 3), (events(3..=4, 1), 3)] {
        assert_refused(
            log,
            &[&k, &other],
            || {
                log.append(&[
                    write(&other, Some(life(9, 1)), &[]),
                    SessionWrite {
                        closure: closed(CloseReason::Done, last),
                        ..write(&k, None, &records)
                    },
                ])
            },
            |e| matches!(e, LogError::NotContiguous { .. }),
            "a closure off the tail",
        );
    }
    // With the last records, in one call.
    let tail = events(3..=4, 1);
    log.append(&[SessionWrite {
        closure: closed(CloseReason::Cancelled, 4),
        ..write(&k, None, &tail)
    }])
    .expect("records and their closure");
    let m = meta_of(log, &k);
    assert_eq!(m.closure, closed(CloseReason::Cancelled, 4));
    assert_eq!((m.durable_tail, m.event_count), (4, 4));
    // Archiving leaves it; a new life clears it.
    log.archive_before(&k, 4).expect("archive");
    assert_eq!(meta_of(log, &k).closure, closed(CloseReason::Cancelled, 4));
    append_ok(log, &k, Some(life(2, 5)), &[]);
    assert_eq!(meta_of(log, &k).closure, None);
    // Alone, after the records (another commit), and on a session whose
    // first write is its life: each backend stores every reason.
    append_ok(log, &k, None, &events(5..=5, 2));
    log.append(&[SessionWrite {
        closure: closed(CloseReason::Interrupted, 5),
        ..write(&k, None, &[])
    }])
    .expect("a closure alone");
    assert_eq!(
        meta_of(log, &k).closure,
        closed(CloseReason::Interrupted, 5)
    );
    log.append(&[SessionWrite {
        closure: closed(CloseReason::Error, 0),
        ..write(&other, Some(life(3, 1)), &[])
    }])
    .expect("a life and its closure");
    assert_eq!(meta_of(log, &other).closure, closed(CloseReason::Error, 0));
    assert_eq!(meta(log, &key("t", "never")), None);
}

/// A write's `turn_owner` is the meta's `open_turn` until a closure or a
/// new life clears it; a turn needs a life, as records do.
pub fn open_turn_is_stored_and_cleared_by_a_closure_or_a_new_life(log: &dyn DurableLog) {
    let k = key("t", "s");
    fn turn(store: u64, write: SessionWrite<'_>) -> SessionWrite<'_> {
        SessionWrite {
            turn_owner: Some(store),
            ..write
        }
    }
    // No life: refused like a record would be.
    assert_refused(
        log,
        &[&k],
        || log.append(&[turn(7, write(&k, None, &[]))]),
        |e| matches!(e, LogError::BadLife { .. }),
        "a turn on a session with no life",
    );
    // With the life that it drives, in one call.
    append_ok(log, &k, Some(life(1, 1)), &events(1..=2, 1));
    log.append(&[turn(7, write(&k, None, &[]))])
        .expect("a turn alone");
    assert_eq!(meta_of(log, &k).open_turn, Some(7));
    // Records after it leave it; another turn replaces it.
    append_ok(log, &k, None, &events(3..=3, 1));
    assert_eq!(meta_of(log, &k).open_turn, Some(7));
    log.append(&[turn(u64::MAX, write(&k, None, &[]))])
        .expect("another store's turn");
    assert_eq!(meta_of(log, &k).open_turn, Some(u64::MAX));
    // A closure clears it, also in the turn's own call.
    log.append(&[SessionWrite {
        closure: closed(CloseReason::Done, 3),
        ..write(&k, None, &[])
    }])
    .expect("the closure");
    let m = meta_of(log, &k);
    assert_eq!(
        (m.open_turn, m.closure),
        (None, closed(CloseReason::Done, 3))
    );
    append_ok(log, &k, Some(life(2, 4)), &[]);
    log.append(&[SessionWrite {
        turn_owner: Some(9),
        closure: closed(CloseReason::Error, 3),
        ..write(&k, None, &[])
    }])
    .expect("a turn and its closure in one call");
    assert_eq!(meta_of(log, &k).open_turn, None);
    // A new life clears it; the new life's own turn sets it again.
    append_ok(log, &k, Some(life(3, 4)), &events(4..=4, 3));
    log.append(&[turn(5, write(&k, None, &[]))])
        .expect("a turn");
    assert_eq!(meta_of(log, &k).open_turn, Some(5));
    append_ok(log, &k, Some(life(4, 5)), &[]);
    assert_eq!(meta_of(log, &k).open_turn, None);
    log.append(&[SessionWrite {
        turn_owner: Some(6),
        ..write(&k, Some(life(5, 5)), &[])
    }])
    .expect("a life and its turn");
    let m = meta_of(log, &k);
    assert_eq!((m.open_turn, m.closure, m.durable_tail), (Some(6), None, 4));
}

/// A store is alive while its lease runs: a log never says a store that
/// just renewed is gone (it would close that store's open turns), and
/// never fails to answer. A log with a clock for leases (Redis) says a
/// store gone once its lease ran out; the others (no leases, or leases
/// without a clock: `MemoryLog::expire_store`) keep saying what they said.
pub fn a_store_that_renewed_its_lease_is_alive(log: &dyn DurableLog) {
    let lease = std::time::Duration::from_millis(300);
    let (store, other) = (u64::MAX - 1, 0x5eed);
    log.keep_alive(store, lease).expect("a lease");
    log.keep_alive(other, lease).expect("another store's lease");
    assert!(log.store_alive(store).expect("an answer"));
    assert!(log.store_alive(other).expect("an answer"));
    // Renewed with a longer lease, the store outlives the other's.
    log.keep_alive(store, lease * 20).expect("a renewal");
    std::thread::sleep(lease * 2);
    assert!(log.store_alive(store).expect("an answer"));
    log.store_alive(other).expect("an answer after its lease");
}

// ---- reopen -------------------------------------------------------------

/// A log with a bit of everything: two tenants, lives, holes, links,
/// archived positions, a life registered alone.
fn populate(log: &dyn DurableLog) -> Vec<SessionKey> {
    let a = key("t", "a");
    let b = key("t", "b");
    let c = key("u", "c");
    append_ok(log, &a, Some(life(1, 1)), &events(1..=3, 1));
    append_ok(log, &b, Some(life(2, 1)), &[event(1, 2), hole(2, 2, 3)]);
    append_ok(
        log,
        &a,
        Some(life(3, 4)),
        &[
            with_links(
                4,
                Links {
                    parent: Some(EventRef::new(b.clone(), 1)),
                    correlation: Some("c".into()),
                    kind: None,
                    lane: Some("l".into()),
                    requires_ack: true,
                },
                vec![7; 1000],
            ),
            hole(5, 3, 2),
            event(7, 3),
        ]
        .iter()
        .map(|r| LogRecord {
            incarnation: inc(3),
            ..r.clone()
        })
        .collect::<Vec<_>>(),
    );
    append_ok(log, &c, Some(life(4, 1)), &events(1..=2, 4));
    append_ok(log, &c, Some(life(5, 3)), &[]);
    assert_eq!(log.archive_before(&a, 5).expect("archive"), 4);
    log.append(&[SessionWrite {
        closure: Some(Closure {
            reason: CloseReason::Done,
            last: 4,
        }),
        ..write(&b, None, &[])
    }])
    .expect("close b");
    vec![a, b, c]
}

pub fn reopen_keeps_everything(backend: &mut dyn Reopen) {
    let keys = populate(backend.log());
    let refs: Vec<&SessionKey> = keys.iter().collect();
    let before = snapshot(backend.log(), &refs);
    assert!(before.metas.iter().all(Option::is_some));
    backend.reopen();
    assert_eq!(snapshot(backend.log(), &refs), before);
    let a = &keys[0];
    let m = meta_of(backend.log(), a);
    assert_eq!(m.archived_through, 5);
    assert_eq!(m.lives, [life(1, 1), life(3, 4)]);
    assert_eq!(m.event_count, 1);
    assert_eq!(
        load(backend.log(), a, 0, 10)[0].position,
        5,
        "straddling hole"
    );
    assert_eq!(
        listed(backend.log(), "t"),
        [keys[1].clone(), keys[0].clone()]
    );
    // Opening twice more changes nothing either.
    backend.reopen();
    backend.reopen();
    assert_eq!(snapshot(backend.log(), &refs), before);
}

pub fn write_after_reopen_continues(backend: &mut dyn Reopen) {
    let keys = populate(backend.log());
    backend.reopen();
    let log = backend.log();
    let (a, c) = (&keys[0], &keys[2]);
    // The tail was remembered: a restart at 1 is refused, as is the old
    // life's incarnation.
    let restart = events(1..=1, 3);
    assert_refused(
        log,
        &[a],
        || log.append(&[write(a, None, &restart)]),
        |e| {
            matches!(
                e,
                LogError::NotContiguous {
                    tail: 7,
                    got: 1,
                    ..
                }
            )
        },
        "restart at 1 after reopen",
    );
    let reused = events(8..=8, 1);
    assert_refused(
        log,
        &[a],
        || log.append(&[write(a, Some(life(1, 8)), &reused)]),
        |e| matches!(e, LogError::BadLife { expected: 8, .. }),
        "an old incarnation after reopen",
    );
    // A new life continues right after the tail; c continues its newest
    // life, registered alone before the reopen.
    append_ok(log, a, Some(life(6, 8)), &events(8..=9, 6));
    append_ok(log, c, None, &events(3..=3, 5));
    assert_eq!(positions(&load_all(log, a)), [5, 7, 8, 9]);
    assert_eq!(meta_of(log, c).durable_tail, 3);
    // A session first recorded after the reopen is the newest: the
    // creation order survived.
    let d = key("t", "d");
    append_ok(log, &d, Some(life(7, 1)), &events(1..=1, 7));
    assert_eq!(
        listed(log, "t"),
        [d.clone(), keys[1].clone(), keys[0].clone()]
    );
    backend.reopen();
    let log = backend.log();
    assert_eq!(meta_of(log, a).durable_tail, 9);
    assert_eq!(meta_of(log, a).event_count, 3);
    assert_eq!(positions(&load_all(log, a)), [5, 7, 8, 9]);
    assert_eq!(listed(log, "t"), [d, keys[1].clone(), keys[0].clone()]);
}
