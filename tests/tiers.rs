//! The tiers of CONTRACT.md section 10, end to end through the public API:
//! tombstones (identity outlives events), the write-behind persister,
//! recorded holes when the log fails, catch-up from log to ring to live,
//! restarts over a redb file, and age trimming that never drops what is not
//! durable yet.
//!
//! Every test is bounded in time: ages use a `ManualClock`, waits use
//! `wait_durable` / `next_timeout` with timeouts, and a stalled log
//! releases itself after a bound (`support/flaky_log.rs`).

#[path = "support/flaky_log.rs"]
mod flaky_log;

use std::sync::Arc;
use std::time::{Duration, Instant};

use livereplay::durable::{DurableLog, HoleReason, MemoryLog, RecordBody};
use livereplay::{
    Config, Cursor, CursorError, DurableError, DurableOptions, Error, Event, Gap, GapReason,
    Incarnation, ManualClock, NextTimeoutError, ReplayStore, Revision, SessionKey, TryNextError,
    Utf8,
};

use flaky_log::{FlakyLog, HealOnDrop, Mode};

/// The longest any single wait in these tests may take.
const WAIT: Duration = Duration::from_secs(5);
/// Past the 10 s `max_age` the age tests use.
const PAST_MAX_AGE: Duration = Duration::from_secs(11);

fn key(session: &str) -> SessionKey {
    SessionKey::new("tenant", session).unwrap()
}

fn payload(position: u64) -> String {
    format!("e{position}")
}

fn expect_gap(result: Result<impl std::fmt::Debug, Error>) -> Gap {
    match result {
        Err(Error::Gap(gap)) => gap,
        other => panic!("expected a gap, got {other:?}"),
    }
}

fn try_next_gap<T: Send + Sync + 'static + std::fmt::Debug>(
    catch_up: &mut livereplay::CatchUp<T>,
) -> Gap {
    match catch_up.try_next() {
        Err(TryNextError::Gap(gap)) => gap,
        other => panic!("expected a gap, got {other:?}"),
    }
}

/// A memory-only store with a manual clock: capacity 8, max age 10 s, no
/// automatic sweeps (evictions happen only where the test asks).
fn memory_store(clock: &Arc<ManualClock>, config: Config) -> ReplayStore<String> {
    ReplayStore::builder()
        .config(
            config
                .with_capacity(8)
                .with_max_age(Duration::from_secs(10))
                .with_auto_sweep(false),
        )
        .clock(clock.clone())
        .build()
        .unwrap()
}

fn durable_store(log: Arc<dyn DurableLog>, capacity: usize) -> ReplayStore<String> {
    ReplayStore::builder()
        .config(Config::default().with_capacity(capacity))
        .durable(log, Utf8)
        .build()
        .unwrap()
}

/// [`durable_store`] with no budget for undurable events: what a ring laps
/// before the persister wrote it is a hole at once.
fn no_budget_store(log: Arc<dyn DurableLog>, capacity: usize) -> ReplayStore<String> {
    ReplayStore::builder()
        .config(Config::default().with_capacity(capacity))
        .durable(log, Utf8)
        .durable_options(DurableOptions::default().with_undurable_budget(0))
        .build()
        .unwrap()
}

/// Appends `count` events, waiting for each to be durable before the next,
/// so the ring never laps the persister.
fn append_durably(
    store: &ReplayStore<String>,
    key: &SessionKey,
    count: u64,
) -> Vec<Arc<Event<String>>> {
    (0..count)
        .map(|_| {
            let next = store.latest_position(key).unwrap_or(0) + 1;
            let event = store.append(key, Revision(1), payload(next)).unwrap();
            assert_eq!(event.position(), next);
            store.wait_durable(key, event.position(), WAIT).unwrap();
            event
        })
        .collect()
}

/// Reads `count` events from a catch-up, checking they are exactly the
/// positions after `after`, in order, with their payloads.
fn read_exactly(catch_up: &mut livereplay::CatchUp<String>, after: u64, count: u64) {
    for expected in after + 1..=after + count {
        let event = catch_up
            .next_timeout(WAIT)
            .unwrap_or_else(|e| panic!("waiting for position {expected}: {e:?}"));
        assert_eq!(event.position(), expected);
        assert_eq!(event.payload(), &payload(expected));
        assert_eq!(catch_up.cursor().position(), expected);
    }
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ---------------------------------------------------------------------------
// 1. Tombstones (no durable log)
// ---------------------------------------------------------------------------

/// Finding (a): a session evicted after its only event expired still answers
/// the start cursor with `Trimmed` and the exact count, and its tail cursor
/// with an empty replay (not `Unavailable`).
#[test]
fn evicted_session_answers_start_cursor_trimmed_and_tail_cursor_empty() {
    let clock = Arc::new(ManualClock::new());
    let store = memory_store(&clock, Config::default());
    let k = key("a");

    // Both start cursors: the by-key one of an unknown session, and the one
    // a resident, still empty session hands out (it names the incarnation).
    let unknown_start = store.current_cursor(&k);
    assert_eq!(unknown_start.position(), 0);
    let handle = store.session(&k).unwrap();
    let resident_start = store.current_cursor(&k);
    assert_eq!(resident_start.position(), 0);
    assert_eq!(resident_start.incarnation(), Some(handle.incarnation()));
    drop(handle);

    let event = store.append(&k, Revision(1), payload(1)).unwrap();
    assert_eq!(event.position(), 1);
    clock.advance(PAST_MAX_AGE);
    assert_eq!(store.trim_session(&k), 1, "the expired event is freed");
    assert!(!store.is_resident(&k), "an idle, empty session is evicted");
    assert!(store.contains_session(&k), "its tombstone remains");

    for start in [&unknown_start, &resident_start] {
        let gap = expect_gap(store.replay_after_cursor(start));
        assert_eq!(gap.reason, GapReason::Trimmed);
        assert_eq!(gap.missed, Some(1));
        assert_eq!(gap.latest, event.cursor());
        // Catch-up (no log) agrees with the replay.
        let mut catch_up = store.catch_up(start).unwrap();
        let gap = try_next_gap(&mut catch_up);
        assert_eq!((gap.reason, gap.missed), (GapReason::Trimmed, Some(1)));
    }
    assert_eq!(store.replay_after_cursor(&event.cursor()).unwrap().len(), 0);
    assert_eq!(
        store.replay_after_position(&k, 1).unwrap().len(),
        0,
        "by position, the tail of the dormant session is its tail"
    );
    let gap = expect_gap(store.replay_after_position(&k, 2));
    assert_eq!(gap.reason, GapReason::Unavailable);
    assert_eq!(store.current_cursor(&k), event.cursor());
    assert_eq!(store.latest_position(&k), Some(1));
    assert!(
        !store.is_resident(&k),
        "answering from the tombstone revives nothing"
    );

    // The same answer while the session is resident (a handle keeps it).
    let k2 = key("a2");
    let start = store.current_cursor(&k2);
    let handle = store.session(&k2).unwrap();
    handle.append(Revision(1), payload(1)).unwrap();
    clock.advance(PAST_MAX_AGE);
    assert_eq!(store.trim_session(&k2), 1);
    assert!(store.is_resident(&k2));
    let gap = expect_gap(store.replay_after_cursor(&start));
    assert_eq!((gap.reason, gap.missed), (GapReason::Trimmed, Some(1)));
}

/// Finding (b) and the tombstone counters: re-creating an evicted session by
/// append continues its incarnation at last + 1; a subscriber at the dormant
/// tail revives it and receives the next append; a cursor below the tail is
/// answered from the tombstone without reviving anything.
#[test]
fn recreated_session_continues_and_subscribe_at_tail_revives() {
    let clock = Arc::new(ManualClock::new());
    let store = memory_store(&clock, Config::default());
    let k = key("b");
    let counts = |store: &ReplayStore<String>| {
        let s = store.stats();
        (
            s.sessions,
            s.dormant_sessions,
            s.evicted_sessions,
            s.revived_sessions,
            s.forgotten_tombstones,
        )
    };

    let e1 = store.append(&k, Revision(1), payload(1)).unwrap();
    assert_eq!(counts(&store), (1, 0, 0, 0, 0));
    clock.advance(PAST_MAX_AGE);
    assert_eq!(store.trim_session(&k), 1);
    assert_eq!(counts(&store), (0, 1, 1, 0, 0));

    // Re-create by append: same incarnation, next position.
    let e2 = store.append(&k, Revision(2), payload(2)).unwrap();
    assert_eq!(e2.position(), 2);
    assert_eq!(e2.incarnation(), e1.incarnation());
    assert_eq!(counts(&store), (1, 0, 1, 1, 0));
    let replayed = store.replay_after_cursor(&e1.cursor()).unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].position(), 2);

    clock.advance(PAST_MAX_AGE);
    assert_eq!(store.trim_session(&k), 1);
    assert_eq!(counts(&store), (0, 1, 2, 1, 0));

    // A cursor below the dormant tail: answered from the tombstone, no revive.
    let gap = expect_gap(store.subscribe_after_cursor(&e1.cursor()).map(|_| ()));
    assert_eq!((gap.reason, gap.missed), (GapReason::Trimmed, Some(1)));
    assert_eq!(gap.latest, e2.cursor());
    assert!(!store.is_resident(&k));
    assert_eq!(counts(&store), (0, 1, 2, 1, 0));

    // A subscriber at the dormant tail revives it and gets the next append.
    let mut subscription = store.subscribe_after_cursor(&e2.cursor()).unwrap();
    assert!(store.is_resident(&k));
    assert_eq!(counts(&store), (1, 0, 2, 2, 0));
    assert_eq!(subscription.try_next().unwrap_err(), TryNextError::Empty);
    let e3 = store.append(&k, Revision(3), payload(3)).unwrap();
    assert_eq!((e3.position(), e3.incarnation()), (3, e1.incarnation()));
    let got = subscription.next_timeout(WAIT).unwrap();
    assert_eq!(got.position(), 3);
    assert_eq!(got.payload(), &payload(3));

    // Not evictable while subscribed.
    clock.advance(PAST_MAX_AGE);
    assert_eq!(store.trim_session(&k), 1);
    assert!(store.is_resident(&k));
    assert_eq!(counts(&store), (1, 0, 2, 2, 0));
    drop(subscription);
    assert_eq!(store.sweep(), 1);
    assert_eq!(counts(&store), (0, 1, 3, 2, 0));
    assert_eq!(store.current_cursor(&k), e3.cursor());
}

/// `Config::with_tombstones(max, ttl)`: a tombstone older than its ttl is
/// forgotten by the next sweep; the session is then unknown (its cursors are
/// `Unavailable`, or `Reset` once a new incarnation exists) and re-creating
/// it starts a new incarnation at position 1.
#[test]
fn tombstone_ttl_forgets_the_session() {
    let clock = Arc::new(ManualClock::new());
    let store = memory_store(
        &clock,
        Config::default().with_tombstones(100, Duration::from_secs(60)),
    );
    let k = key("ttl");
    let e1 = store.append(&k, Revision(1), payload(1)).unwrap();
    store.append(&k, Revision(1), payload(2)).unwrap();
    clock.advance(PAST_MAX_AGE);
    assert_eq!(store.trim_session(&k), 2);
    assert_eq!(store.stats().dormant_sessions, 1);

    clock.advance(Duration::from_secs(59));
    assert_eq!(store.sweep(), 0);
    assert!(store.contains_session(&k), "59 s old: still remembered");
    assert_eq!(store.stats().forgotten_tombstones, 0);

    clock.advance(Duration::from_secs(2));
    store.sweep();
    let stats = store.stats();
    assert_eq!((stats.dormant_sessions, stats.forgotten_tombstones), (0, 1));
    assert!(!store.contains_session(&k));
    assert_eq!(store.current_cursor(&k).position(), 0);

    let gap = expect_gap(store.replay_after_cursor(&e1.cursor()));
    assert_eq!(gap.reason, GapReason::Unavailable);
    let gap = expect_gap(store.catch_up(&e1.cursor()).map(|_| ()));
    assert_eq!(gap.reason, GapReason::Unavailable);

    let again = store.append(&k, Revision(1), payload(1)).unwrap();
    assert_eq!(again.position(), 1);
    assert_ne!(again.incarnation(), e1.incarnation());
    let gap = expect_gap(store.replay_after_cursor(&e1.cursor()));
    assert_eq!(gap.reason, GapReason::Reset);
    let gap = expect_gap(store.catch_up(&e1.cursor()).map(|_| ()));
    assert_eq!(gap.reason, GapReason::Reset);
    assert_eq!(store.stats().revived_sessions, 0);
}

/// The count bound: over `max` tombstones, a sweep forgets the oldest
/// evicted first.
#[test]
fn tombstone_count_bound_forgets_the_oldest_first() {
    let clock = Arc::new(ManualClock::new());
    let store = memory_store(
        &clock,
        Config::default().with_tombstones(2, Duration::from_secs(3600)),
    );
    let keys: Vec<_> = ["c0", "c1", "c2", "c3"].into_iter().map(key).collect();
    for k in &keys {
        store.append(k, Revision(1), payload(1)).unwrap();
    }
    clock.advance(PAST_MAX_AGE);
    // Evicted one second apart, oldest first; `trim_session` does not apply
    // the count bound, the sweep does.
    for k in &keys[..3] {
        assert_eq!(store.trim_session(k), 1);
        clock.advance(Duration::from_secs(1));
    }
    assert_eq!(store.stats().dormant_sessions, 3);
    assert_eq!(store.sweep(), 1, "the fourth session is evicted too");
    let stats = store.stats();
    assert_eq!(stats.evicted_sessions, 4);
    assert_eq!(stats.dormant_sessions, 2);
    assert_eq!(stats.forgotten_tombstones, 2);
    assert!(!store.contains_session(&keys[0]));
    assert!(!store.contains_session(&keys[1]));
    assert!(store.contains_session(&keys[2]));
    assert!(store.contains_session(&keys[3]));
    // The survivors still continue their incarnation.
    let tail = store.current_cursor(&keys[2]);
    assert_eq!(tail.position(), 1);
    let next = store.append(&keys[2], Revision(1), payload(2)).unwrap();
    assert_eq!(
        (next.position(), Some(next.incarnation())),
        (2, tail.incarnation())
    );
    assert_eq!(store.stats().revived_sessions, 1);
}

// ---------------------------------------------------------------------------
// 2. The persister, over a MemoryLog
// ---------------------------------------------------------------------------

fn assert_log_holds(store: &ReplayStore<String>, k: &SessionKey, through: u64) {
    let records = store
        .durable_log()
        .unwrap()
        .load_after(k, 0, 100_000)
        .unwrap();
    assert_eq!(records.len() as u64, through, "{k}: one record per event");
    for (expected, record) in (1..).zip(&records) {
        assert_eq!(record.position, expected);
        match &record.body {
            RecordBody::Event(stored) => {
                assert_eq!(
                    String::from_utf8(stored.payload.clone()).unwrap(),
                    payload(expected)
                )
            }
            other => panic!("{k}: position {expected} is {other:?}"),
        }
    }
}

#[test]
fn persister_writes_every_event_in_order() {
    let log = Arc::new(MemoryLog::new());
    let store = durable_store(log.clone(), 64);
    let k = key("p");
    assert_eq!(store.durable_position(&k), Ok(None));

    let mut last = None;
    for position in 1..=40 {
        last = Some(store.append(&k, Revision(1), payload(position)).unwrap());
    }
    let last = last.unwrap();
    assert_eq!(store.wait_durable(&k, 40, WAIT), Ok(40));
    assert_eq!(store.durable_position(&k), Ok(Some(40)));
    assert_log_holds(&store, &k, 40);
    let records = log.load_after(&k, 0, 1).unwrap();
    assert_eq!(records[0].incarnation, last.incarnation());

    let batch = store
        .append_batch(&k, Revision(2), (41..=60).map(payload))
        .unwrap();
    assert_eq!(batch.first().unwrap().position(), 41);
    assert_eq!(store.wait_durable(&k, 60, WAIT), Ok(60));
    assert_eq!(store.durable_position(&k), Ok(Some(60)));
    assert_log_holds(&store, &k, 60);
    let meta = log.meta(&k).unwrap().unwrap();
    assert_eq!((meta.durable_tail, meta.event_count), (60, 60));
    assert_eq!(meta.last_revision, 2);
    assert_eq!(meta.lives.len(), 1);

    assert!(matches!(
        store.wait_durable(&k, 61, WAIT),
        Err(DurableError::NoSuchPosition { position: 61, .. })
    ));
    let durable = store.stats().durable.unwrap();
    assert_eq!(durable.persisted_events, 60);
    assert!(durable.commits > 0);
    assert_eq!(
        (durable.holes, durable.lost_events, durable.log_failures),
        (0, 0, 0)
    );
    assert_eq!(durable.undurable_events, 0);

    let plain = ReplayStore::<String>::default();
    assert_eq!(
        plain.wait_durable(&k, 1, WAIT),
        Err(DurableError::NoDurableTier)
    );
    assert_eq!(plain.durable_position(&k), Ok(None));
    assert!(plain.stats().durable.is_none());
}

#[test]
fn persister_keeps_up_with_many_sessions_on_two_threads() {
    const SESSIONS: usize = 16;
    const EVENTS: u64 = 40;
    let store = durable_store(Arc::new(MemoryLog::new()), 64);
    std::thread::scope(|scope| {
        for thread in 0..2 {
            let store = &store;
            scope.spawn(move || {
                let keys: Vec<_> = (0..SESSIONS)
                    .map(|s| key(&format!("t{thread}-{s}")))
                    .collect();
                for position in 1..=EVENTS {
                    for k in &keys {
                        if position % 10 == 0 {
                            // Some batches of one among the single appends.
                            store
                                .append_batch(k, Revision(1), [payload(position)])
                                .unwrap();
                        } else {
                            let event = store.append(k, Revision(1), payload(position)).unwrap();
                            assert_eq!(event.position(), position);
                        }
                    }
                }
            });
        }
    });
    for thread in 0..2 {
        for s in 0..SESSIONS {
            let k = key(&format!("t{thread}-{s}"));
            assert_eq!(store.wait_durable(&k, EVENTS, WAIT), Ok(EVENTS));
            assert_log_holds(&store, &k, EVENTS);
        }
    }
    let durable = store.stats().durable.unwrap();
    assert_eq!(durable.persisted_events, 2 * SESSIONS as u64 * EVENTS);
    assert!(durable.commits > 0);
    assert_eq!(
        (durable.holes, durable.lost_events, durable.log_failures),
        (0, 0, 0)
    );
    assert_eq!(durable.undurable_events, 0);
}

// ---------------------------------------------------------------------------
// 3. A failing log: appends go on, lapped positions become one recorded hole
// ---------------------------------------------------------------------------

#[test]
fn failing_log_records_one_lapped_hole_and_recovers_by_itself() {
    let flaky = Arc::new(FlakyLog::new(Mode::Failing));
    // No budget for undurable events: the ring's first segment (1..=8),
    // lapped by 17..=20 while the log fails, is let go at once.
    let store = no_budget_store(flaky.clone(), 8);
    // Declared after the store, so dropped before it: the store's Drop
    // flushes, which must not wait on a failing log.
    let _heal = HealOnDrop(&flaky);
    let k = key("flaky");

    let events: Vec<_> = (1..=20)
        .map(|position| store.append(&k, Revision(1), payload(position)).unwrap())
        .collect();
    assert_eq!(events.last().unwrap().position(), 20);
    wait_until("the persister has failed", || {
        store.stats().durable.unwrap().log_failures > 0
    });
    assert!(matches!(
        store.wait_durable(&k, 1, Duration::from_millis(50)),
        Err(DurableError::Timeout {
            position: 1,
            durable: 0
        })
    ));
    let durable = store.stats().durable.unwrap();
    assert_eq!(durable.persisted_events, 0);
    assert_eq!(durable.undurable_events, 20);
    assert!(durable.last_error.unwrap().contains("injected failure"));
    assert!(flaky.inner().meta(&k).unwrap().is_none(), "nothing written");

    // Recovery: the persister finds out by itself (no wait_durable nudging).
    flaky.set(Mode::Healthy);
    wait_until("persistence resumes", || {
        store.durable_position(&k).unwrap() == Some(20)
    });
    let records = flaky.inner().load_after(&k, 0, 100).unwrap();
    assert_eq!(
        records.len(),
        1 + 12,
        "one hole, then the 12 events the ring still held"
    );
    assert_eq!(records[0].position, 1);
    assert_eq!(
        records[0].body,
        RecordBody::Hole {
            count: 8,
            reason: HoleReason::Lapped
        }
    );
    for (record, position) in records[1..].iter().zip(9..) {
        assert_eq!(record.position, position);
        assert!(matches!(record.body, RecordBody::Event(_)));
    }
    let durable = store.stats().durable.unwrap();
    assert_eq!((durable.holes, durable.lost_events), (1, 8));
    assert_eq!(durable.let_go_segments, 1);
    assert!(durable.log_failures > 0);
    assert_eq!(durable.persisted_events, 12);

    // Later events go through again, one by one.
    append_durably(&store, &k, 10);
    assert_eq!(store.durable_position(&k), Ok(Some(30)));
    let durable = store.stats().durable.unwrap();
    assert_eq!((durable.persisted_events, durable.lost_events), (22, 8));

    // Readers are told, with the count.
    let mut from_start = store.catch_up(&Cursor::start(k.clone())).unwrap();
    let gap = try_next_gap(&mut from_start);
    assert_eq!((gap.reason, gap.missed), (GapReason::Lost, Some(8)));
    assert_eq!(gap.latest.position(), 30);
    assert!(from_start.is_ended());
    let mut inside = store.catch_up(&events[4].cursor()).unwrap();
    let gap = try_next_gap(&mut inside);
    assert_eq!((gap.reason, gap.missed), (GapReason::Lost, Some(3)));
    let gap = expect_gap(store.catch_up_replay(&Cursor::start(k.clone()), 100));
    assert_eq!((gap.reason, gap.missed), (GapReason::Lost, Some(8)));
    assert!(store.stats().gaps_lost >= 3);

    // Just after the hole: the rest, 9..=20 from the log, then the ring.
    let mut after_hole = store.catch_up(&events[7].cursor()).unwrap();
    read_exactly(&mut after_hole, 8, 22);
    assert_eq!(after_hole.try_next().unwrap_err(), TryNextError::Empty);
    assert!(after_hole.is_live());
}

/// Issue 21, item 11: the same outage within the budget for undurable
/// events loses nothing: the ring keeps what it laps for the persister,
/// which writes all of it once the log heals, and gives the bytes back.
#[test]
fn failing_log_within_the_budget_loses_nothing() {
    let flaky = Arc::new(FlakyLog::new(Mode::Failing));
    let store = durable_store(flaky.clone(), 8);
    let _heal = HealOnDrop(&flaky);
    let k = key("flaky-kept");
    for position in 1..=200 {
        store.append(&k, Revision(1), payload(position)).unwrap();
    }
    wait_until("the persister has failed", || {
        store.stats().durable.unwrap().log_failures > 0
    });
    let durable = store.stats().durable.unwrap();
    assert!(
        durable.kept_segments > 0 && durable.kept_bytes > 0,
        "{durable:?}"
    );
    assert_eq!(
        store.event_count(&k),
        8,
        "readers are served the window only"
    );
    flaky.set(Mode::Healthy);
    assert_eq!(store.wait_durable(&k, 200, WAIT), Ok(200));
    assert_log_holds(&store, &k, 200);
    let durable = store.stats().durable.unwrap();
    assert_eq!((durable.holes, durable.lost_events), (0, 0));
    assert_eq!((durable.kept_bytes, durable.let_go_segments), (0, 0));
    // A reader from the start reads every event, from the log.
    let mut from_start = store.catch_up(&Cursor::start(k.clone())).unwrap();
    read_exactly(&mut from_start, 0, 200);
}

// ---------------------------------------------------------------------------
// 4. Catch-up: log, then ring, then live
// ---------------------------------------------------------------------------

#[test]
fn catch_up_from_any_cursor_reads_log_then_ring_then_live() {
    let store = durable_store(Arc::new(MemoryLog::new()), 4);
    let k = key("cu");
    let events = append_durably(&store, &k, 100);
    assert_eq!(store.event_count(&k), 4, "the ring holds only the last 4");

    for start in [0u64, 1, 2, 50, 95, 96, 97, 99, 100] {
        let tail = store.latest_position(&k).unwrap();
        let cursor = if start == 0 {
            Cursor::start(k.clone())
        } else {
            events[start as usize - 1].cursor()
        };
        let mut catch_up = store.catch_up(&cursor).unwrap();
        read_exactly(&mut catch_up, start, tail - start);
        assert_eq!(catch_up.try_next().unwrap_err(), TryNextError::Empty);
        assert!(
            catch_up.is_live(),
            "from {start}: at the tail it reads the ring"
        );
        assert_eq!(
            catch_up
                .next_timeout(Duration::from_millis(20))
                .unwrap_err(),
            NextTimeoutError::Timeout
        );
        // Live: the next append arrives, once.
        let next = append_durably(&store, &k, 1).pop().unwrap();
        let got = catch_up.next_timeout(WAIT).unwrap();
        assert_eq!(got.position(), next.position());
        assert_eq!(catch_up.try_next().unwrap_err(), TryNextError::Empty);

        // The one-shot form agrees.
        let replayed = store.catch_up_replay(&cursor, 1000).unwrap();
        let positions: Vec<u64> = replayed.iter().map(|e| e.position()).collect();
        assert_eq!(positions, (start + 1..=tail + 1).collect::<Vec<_>>());
        let limited = store.catch_up_replay(&cursor, 3).unwrap();
        assert_eq!(limited.len() as u64, 3.min(tail + 1 - start));
    }
    let durable = store.stats().durable.unwrap();
    assert_eq!((durable.holes, durable.lost_events), (0, 0));
}

#[test]
fn catch_up_races_a_writer_exactly_once_in_order() {
    const PRE: u64 = 100;
    const TOTAL: u64 = 400;
    let store = durable_store(Arc::new(MemoryLog::new()), 4);
    let k = key("race");
    let events = append_durably(&store, &k, PRE);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            for _ in PRE..TOTAL {
                append_durably(&store, &k, 1);
                if store.latest_position(&k).unwrap().is_multiple_of(16) {
                    std::thread::yield_now();
                }
            }
        });
        for start in [0, 50] {
            let store = &store;
            let cursor = match start {
                0 => Cursor::start(k.clone()),
                n => events[n - 1].cursor(),
            };
            scope.spawn(move || {
                let mut catch_up = store.catch_up(&cursor).unwrap();
                let mut positions = Vec::new();
                while positions.last() != Some(&TOTAL) {
                    let event = catch_up
                        .next_timeout(WAIT)
                        .unwrap_or_else(|e| panic!("after {:?}: {e:?}", positions.last()));
                    assert_eq!(event.payload(), &payload(event.position()));
                    positions.push(event.position());
                }
                assert_eq!(positions, (start as u64 + 1..=TOTAL).collect::<Vec<_>>());
                assert_eq!(catch_up.try_next().unwrap_err(), TryNextError::Empty);
            });
        }
        writer.join().unwrap();
    });
    assert!(started.elapsed() < WAIT);
    let durable = store.stats().durable.unwrap();
    assert_eq!(
        (durable.holes, durable.lost_events),
        (0, 0),
        "no hole: no gap was allowed"
    );
    assert_eq!(store.stats().gaps_lost + store.stats().gaps_trimmed, 0);
}

#[test]
fn catch_up_as_a_stream() {
    use futures_util::StreamExt;

    let store = Arc::new(durable_store(Arc::new(MemoryLog::new()), 4));
    let k = key("stream");
    append_durably(&store, &k, 20);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut catch_up = store.catch_up(&Cursor::start(k.clone())).unwrap();
    runtime.block_on(async {
        for expected in 1..=20 {
            let event = tokio::time::timeout(WAIT, catch_up.next())
                .await
                .expect("an event in time")
                .expect("the stream goes on")
                .expect("no gap");
            assert_eq!(event.position(), expected);
        }
    });
    // A writer on another thread while the stream waits (the ring laps a
    // slow reader: the stream goes back to the log without a seam).
    let writer = {
        let store = Arc::clone(&store);
        let k = k.clone();
        std::thread::spawn(move || {
            append_durably(&store, &k, 30);
        })
    };
    runtime.block_on(async {
        for expected in 21..=50 {
            let event = tokio::time::timeout(WAIT, catch_up.next())
                .await
                .expect("an event in time")
                .expect("the stream goes on")
                .expect("no gap");
            assert_eq!(event.position(), expected);
            assert_eq!(event.payload(), &payload(expected));
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(20), catch_up.next())
                .await
                .is_err(),
            "nothing more"
        );
    });
    writer.join().unwrap();

    // A stream that hits a gap yields it once, then ends.
    assert_eq!(store.archive_before(&k, 10), Ok(10));
    let mut archived = store.catch_up(&Cursor::start(k.clone())).unwrap();
    runtime.block_on(async {
        let first = tokio::time::timeout(WAIT, archived.next()).await.unwrap();
        let gap = first.unwrap().unwrap_err();
        assert_eq!((gap.reason, gap.missed), (GapReason::Trimmed, Some(10)));
        let end = tokio::time::timeout(WAIT, archived.next()).await.unwrap();
        assert!(end.is_none());
    });
}

#[test]
fn catch_up_after_archive_reports_trimmed_with_the_count() {
    let store = durable_store(Arc::new(MemoryLog::new()), 4);
    let k = key("archive");
    let events = append_durably(&store, &k, 100);
    assert_eq!(store.archive_before(&k, 30), Ok(30));
    assert_eq!(store.archive_before(&k, 10), Ok(0), "monotonic");

    let mut from_start = store.catch_up(&Cursor::start(k.clone())).unwrap();
    let gap = try_next_gap(&mut from_start);
    assert_eq!((gap.reason, gap.missed), (GapReason::Trimmed, Some(30)));
    assert_eq!(gap.latest.position(), 100);
    assert_eq!(from_start.try_next().unwrap_err(), TryNextError::Ended);

    let mut from_ten = store.catch_up(&events[9].cursor()).unwrap();
    let gap = try_next_gap(&mut from_ten);
    assert_eq!((gap.reason, gap.missed), (GapReason::Trimmed, Some(20)));
    let gap = expect_gap(store.catch_up_replay(&Cursor::start(k.clone()), 10));
    assert_eq!((gap.reason, gap.missed), (GapReason::Trimmed, Some(30)));

    let mut from_edge = store.catch_up(&events[29].cursor()).unwrap();
    read_exactly(&mut from_edge, 30, 70);
    assert!(
        store.durable_log().unwrap().load_after(&k, 0, 1).unwrap()[0].position == 31,
        "archived records are not loaded"
    );
}

#[test]
fn catch_up_refuses_foreign_incarnations_and_other_keys() {
    let store = durable_store(Arc::new(MemoryLog::new()), 4);
    let k = key("own");
    let other = key("other");
    let events = append_durably(&store, &k, 10);
    let foreign = Incarnation::from_raw(events[0].incarnation().get() ^ 1).unwrap();

    let gap = expect_gap(
        store
            .catch_up(&Cursor::new(k.clone(), Some(foreign), Revision(1), 5))
            .map(|_| ()),
    );
    assert_eq!(gap.reason, GapReason::Reset);
    assert_eq!(gap.latest, events[9].cursor());
    // Beyond the tail of the own life: not there (yet).
    let gap = expect_gap(
        store
            .catch_up(&Cursor::new(
                k.clone(),
                Some(events[0].incarnation()),
                Revision(1),
                11,
            ))
            .map(|_| ()),
    );
    assert_eq!(gap.reason, GapReason::Unavailable);
    // A session no tier knows.
    let gap = expect_gap(
        store
            .catch_up(&Cursor::new(key("nobody"), None, Revision(1), 3))
            .map(|_| ()),
    );
    assert_eq!(gap.reason, GapReason::Unavailable);

    let cursor = events[4].cursor();
    assert!(matches!(
        store.catch_up_scoped(&other, &cursor),
        Err(Error::Cursor(CursorError::WrongSession))
    ));
    let mut scoped = store.catch_up_scoped(&k, &cursor).unwrap();
    read_exactly(&mut scoped, 5, 5);
}

// ---------------------------------------------------------------------------
// 5. Restart over a redb file
// ---------------------------------------------------------------------------

#[cfg(feature = "redb")]
mod restart {
    use super::*;
    use livereplay::durable::RedbLog;
    use livereplay::Postcard;

    /// A temporary directory removed on drop (also when the test fails).
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let dir = std::env::temp_dir().join(format!(
                "livereplay-tiers-{name}-{}-{nanos}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    type Payload = (u64, String);

    fn open(path: &std::path::Path) -> ReplayStore<Payload> {
        ReplayStore::builder()
            .config(Config::default().with_capacity(8))
            .durable(Arc::new(RedbLog::open(path).unwrap()), Postcard)
            .build()
            .unwrap()
    }

    fn value(position: u64) -> Payload {
        (position, payload(position))
    }

    #[test]
    fn a_cursor_from_before_a_restart_resumes_exactly() {
        let dir = TempDir::new("restart");
        let path = dir.0.join("log.redb");
        let k = key("restart");

        // Life A.
        let store_a = open(&path);
        // Each event durable before the next: the ring (capacity 8) never
        // laps the persister, so life A leaves no hole.
        let a_events: Vec<_> = (1..=50)
            .map(|p| {
                let event = store_a.append(&k, Revision(p), value(p)).unwrap();
                assert_eq!(store_a.wait_durable(&k, p, WAIT), Ok(p));
                event
            })
            .collect();
        let a_incarnation = a_events[0].incarnation();
        assert_eq!(store_a.stats().durable.unwrap().lost_events, 0);
        let c10 = a_events[9].cursor().to_string();
        let c50 = a_events[49].cursor().to_string();
        drop(a_events);
        drop(store_a);

        // Life B, over the same file.
        let store_b = open(&path);
        assert!(!store_b.is_resident(&k));
        assert_eq!(store_b.durable_position(&k), Ok(Some(50)));
        let forged = Cursor::new(k.clone(), Some(a_incarnation), Revision(1), 60);
        // Not resident yet: answered from the log's lives.
        let gap = expect_gap(store_b.catch_up(&forged).map(|_| ()));
        assert_eq!((gap.reason, gap.missed), (GapReason::Lost, Some(10)));
        assert_eq!(gap.latest.position(), 50);

        let mut catch_up = store_b
            .catch_up(&Cursor::parse_for(&k, &c10).unwrap())
            .unwrap();
        for expected in 11..=50 {
            let event = catch_up.next_timeout(WAIT).unwrap();
            assert_eq!(event.position(), expected);
            assert_eq!(event.payload(), &value(expected));
            assert_eq!(event.incarnation(), a_incarnation);
            assert_eq!(event.revision(), Revision(expected));
        }
        assert_eq!(catch_up.try_next().unwrap_err(), TryNextError::Empty);
        // A reader waiting at the tail does not restore the session (that
        // would record a new life per read); the first touch by a writer,
        // here a handle, does.
        assert!(!catch_up.is_live());
        assert!(!store_b.is_resident(&k));
        let handle = store_b.session(&k).unwrap();
        assert!(store_b.is_resident(&k));
        let tail = store_b.current_cursor(&k);
        assert_eq!(tail.position(), 50);
        assert_eq!(
            tail.incarnation(),
            Some(a_incarnation),
            "the tail names life A"
        );
        assert_eq!(tail.revision(), Revision(50));

        // In memory now: the same answer for the forged cursor.
        let gap = expect_gap(store_b.catch_up(&forged).map(|_| ()));
        assert_eq!((gap.reason, gap.missed), (GapReason::Lost, Some(10)));
        let gap = expect_gap(store_b.replay_after_cursor(&forged));
        assert_eq!((gap.reason, gap.missed), (GapReason::Lost, Some(10)));
        // A's tail cursor is at the tail.
        let at_tail = Cursor::parse_for(&k, &c50).unwrap();
        assert!(store_b.replay_after_cursor(&at_tail).unwrap().is_empty());

        let b_events: Vec<_> = (51..=55)
            .map(|p| store_b.append(&k, Revision(p), value(p)).unwrap())
            .collect();
        let b_incarnation = b_events[0].incarnation();
        assert_ne!(b_incarnation, a_incarnation);
        for (event, expected) in b_events.iter().zip(51..) {
            assert_eq!(event.position(), expected, "B never hands out <= 50");
            assert_eq!(event.incarnation(), b_incarnation);
        }
        for expected in 51..=55 {
            let event = catch_up.next_timeout(WAIT).unwrap();
            assert_eq!(
                (event.position(), event.incarnation()),
                (expected, b_incarnation)
            );
        }
        assert!(catch_up.is_live(), "handed over to B's ring");
        assert_eq!(catch_up.try_next().unwrap_err(), TryNextError::Empty);
        drop(handle);

        let mut from_a_tail = store_b.catch_up(&at_tail).unwrap();
        for expected in 51..=55 {
            assert_eq!(from_a_tail.next_timeout(WAIT).unwrap().position(), expected);
        }
        let replayed = store_b.replay_after_cursor(&at_tail).unwrap();
        assert_eq!(
            replayed.iter().map(|e| e.position()).collect::<Vec<_>>(),
            (51..=55).collect::<Vec<_>>()
        );
        let gap = expect_gap(store_b.replay_after_cursor(&forged));
        assert_eq!((gap.reason, gap.missed), (GapReason::Lost, Some(10)));

        assert_eq!(store_b.wait_durable(&k, 55, WAIT), Ok(55));
        let log = store_b.durable_log().unwrap();
        let meta = log.meta(&k).unwrap().unwrap();
        assert_eq!(meta.durable_tail, 55);
        assert_eq!(meta.lives.len(), 2);
        assert_eq!(meta.lives[0].incarnation, a_incarnation);
        assert_eq!(
            (meta.lives[1].incarnation, meta.lives[1].first_position),
            (b_incarnation, 51)
        );
        let records = log.load_after(&k, 0, 100).unwrap();
        assert_eq!(records.len(), 55);
        for (record, position) in records.iter().zip(1..) {
            assert_eq!(record.position, position);
            let life = if position <= 50 {
                a_incarnation
            } else {
                b_incarnation
            };
            assert_eq!(record.incarnation, life);
        }
        assert_eq!(store_b.stats().durable.unwrap().restored_sessions, 1);
        drop((catch_up, from_a_tail));
        drop(store_b);
    }
}

// ---------------------------------------------------------------------------
// 6. Age trimming never drops what is not durable
// ---------------------------------------------------------------------------

#[test]
fn age_trim_keeps_undurable_events_while_the_log_stalls() {
    let clock = Arc::new(ManualClock::new());
    let flaky = Arc::new(FlakyLog::new(Mode::Healthy));
    let store = ReplayStore::builder()
        .config(
            Config::default()
                .with_capacity(16)
                .with_max_age(Duration::from_secs(10))
                .with_auto_sweep(false),
        )
        .clock(clock.clone())
        .durable(flaky.clone(), Utf8)
        .build()
        .unwrap();
    let _heal = HealOnDrop(&flaky);
    let k = key("stall");
    let first = append_durably(&store, &k, 3);

    flaky.set(Mode::Stalled);
    for position in 4..=8 {
        store.append(&k, Revision(1), payload(position)).unwrap();
    }
    wait_until("the persister is stalled in the log", || {
        flaky.stalled_calls() > 0
    });
    clock.advance(PAST_MAX_AGE);

    assert_eq!(
        store.trim_session(&k),
        3,
        "only the durable 1..=3 are freed"
    );
    assert_eq!(store.trim_session(&k), 0);
    assert_eq!(
        store.release_through(&k, 8),
        0,
        "not past the durable watermark"
    );
    assert_eq!(store.sweep(), 0);
    assert!(store.is_resident(&k), "not evicted while undurable");
    assert_eq!(store.durable_position(&k), Ok(Some(3)));
    assert_eq!(store.stats().durable.unwrap().undurable_events, 5);

    // A catch-up waits for the log rather than reporting a gap.
    let mut catch_up = store.catch_up(&first[2].cursor()).unwrap();
    assert_eq!(catch_up.try_next().unwrap_err(), TryNextError::Empty);

    flaky.set(Mode::Healthy);
    assert_eq!(store.wait_durable(&k, 8, WAIT), Ok(8));
    read_exactly(&mut catch_up, 3, 5);
    drop(catch_up);
    let durable = store.stats().durable.unwrap();
    assert_eq!((durable.persisted_events, durable.lost_events), (8, 0));

    assert_eq!(store.trim_session(&k), 5, "durable now: freed");
    assert!(!store.is_resident(&k), "and evicted");
    assert!(store.contains_session(&k));
    assert_eq!(store.durable_position(&k), Ok(Some(8)));
    assert_eq!(store.current_cursor(&k).position(), 8);
}

/// A caller waiting in `wait_durable` while the log fails must not defeat
/// the persister's backoff (10 ms doubling to 1 s): the waiter nudges the
/// persister, and every failed commit wakes the waiter again.
#[test]
fn waiting_on_a_failing_log_keeps_the_backoff() {
    let flaky = Arc::new(FlakyLog::new(Mode::Failing));
    let store = durable_store(flaky.clone(), 64);
    let _heal = HealOnDrop(&flaky);
    let k = key("backoff");
    store.append(&k, Revision(1), payload(1)).unwrap();
    let started = Instant::now();
    assert!(matches!(
        store.wait_durable(&k, 1, Duration::from_millis(300)),
        Err(DurableError::Timeout {
            position: 1,
            durable: 0
        })
    ));
    let elapsed = started.elapsed();
    // 10 + 20 + 40 + 80 + 160 ms: about 6 attempts in 300 ms; allow slack
    // for the first attempt and scheduling, but not a hot loop.
    let attempts = flaky.failed_calls();
    assert!(
        attempts <= 12,
        "{attempts} failed commits in {elapsed:?}: the backoff was skipped"
    );
    flaky.set(Mode::Healthy);
    assert_eq!(store.wait_durable(&k, 1, WAIT), Ok(1));
}

/// A session removed while its events are still on the way to the log,
/// then re-created: the removed incarnation's events still land, and the
/// new life continues after its last position (recorded only once they
/// are durable), so both become durable and the log stays contiguous.
/// (It used to restore from the log's stale meta and be refused for ever.)
#[test]
fn removed_then_recreated_session_becomes_durable() {
    let flaky = Arc::new(FlakyLog::new(Mode::Stalled));
    let store = ReplayStore::builder()
        .config(Config::default().with_capacity(64))
        .durable(flaky.clone(), Utf8)
        .durable_options(
            livereplay::DurableOptions::default().with_shutdown_timeout(Duration::from_millis(200)),
        )
        .build()
        .unwrap();
    let _heal = HealOnDrop(&flaky);
    let k = key("removed");
    for position in 1..=5 {
        store.append(&k, Revision(1), payload(position)).unwrap();
    }
    wait_until("the persister is stalled", || flaky.stalled_calls() > 0);
    assert!(store.remove_session(&k));
    let again = store.append(&k, Revision(1), payload(1)).unwrap();
    assert_eq!(again.position(), 6, "continues after the removed life");
    flaky.set(Mode::Healthy);
    assert_eq!(
        store.wait_durable(&k, again.position(), Duration::from_secs(2)),
        Ok(again.position()),
        "{:?}",
        store.stats().durable
    );
    let meta = flaky.meta(&k).unwrap().unwrap();
    assert_eq!(meta.lives.len(), 2);
    assert_eq!(meta.lives[1].first_position, 6);
    assert_eq!(meta.durable_tail, 6);
    assert_eq!(
        store.stats().durable.unwrap().log_failures,
        0,
        "nothing refused"
    );
}

/// A write that reached the log but whose reply was lost (a network log):
/// the persister's retry is refused as not contiguous, so it re-reads the
/// log, adopts the tail its own write left there, and writes on. Every
/// position is in the log exactly once, and nothing is fenced.
#[test]
fn a_lost_reply_is_adopted_not_written_twice() {
    let flaky = Arc::new(FlakyLog::new(Mode::Healthy));
    let store = ReplayStore::builder()
        .config(Config::default().with_capacity(64))
        .durable(flaky.clone(), Utf8)
        .build()
        .unwrap();
    let k = key("lost-reply");
    let other = key("bystander");
    for position in 1..=5 {
        store.append(&k, Revision(1), payload(position)).unwrap();
    }
    assert_eq!(store.wait_durable(&k, 5, WAIT), Ok(5));
    flaky.set(Mode::LoseReply);
    for position in 6..=10 {
        store.append(&k, Revision(1), payload(position)).unwrap();
        store
            .append(&other, Revision(1), payload(position))
            .unwrap();
    }
    assert_eq!(store.wait_durable(&k, 10, WAIT), Ok(10));
    assert_eq!(store.wait_durable(&other, 5, WAIT), Ok(5));
    let records = flaky.load_after(&k, 0, 100).unwrap();
    let positions: Vec<u64> = records.iter().map(|r| r.position).collect();
    assert_eq!(positions, (1..=10).collect::<Vec<_>>(), "each exactly once");
    let stats = store.stats().durable.unwrap();
    assert!(flaky.failed_calls() >= 1);
    assert_eq!((stats.fenced_sessions, stats.lost_events), (0, 0));
}

/// Two stores writing one session through one log (two nodes, one
/// session): the second store's first touch records a newer life, so the
/// first store's next write for that session is refused. It fences that
/// session (its later events stay in its ring, counted) and keeps writing
/// its other sessions: one session's refusal never holds the others back.
#[test]
fn a_session_taken_over_by_another_writer_is_fenced_alone() {
    let log = Arc::new(MemoryLog::new());
    let store_a = ReplayStore::builder()
        .durable(log.clone(), Utf8)
        .build()
        .unwrap();
    let store_b = ReplayStore::builder()
        .durable(log.clone(), Utf8)
        .build()
        .unwrap();
    let (shared, own) = (key("shared"), key("own"));
    store_a.append(&shared, Revision(1), payload(1)).unwrap();
    assert_eq!(store_a.wait_durable(&shared, 1, WAIT), Ok(1));
    // Node B touches the session: a new life after the durable tail.
    let b_event = store_b.append(&shared, Revision(1), payload(2)).unwrap();
    assert_eq!(b_event.position(), 2);
    assert_eq!(store_b.wait_durable(&shared, 2, WAIT), Ok(2));
    // Node A writes on, to both sessions, in the same rounds.
    store_a.append(&shared, Revision(1), payload(2)).unwrap();
    for position in 1..=3 {
        store_a
            .append(&own, Revision(1), payload(position))
            .unwrap();
    }
    assert_eq!(store_a.wait_durable(&own, 3, WAIT), Ok(3), "not held back");
    wait_until("node A fences the shared session", || {
        store_a.stats().durable.unwrap().fenced_sessions == 1
    });
    let meta = log.meta(&shared).unwrap().unwrap();
    assert_eq!(
        meta.durable_tail, 2,
        "A's second event never reached the log"
    );
    assert_eq!(
        meta.current_life().unwrap().incarnation,
        b_event.incarnation()
    );
    assert_eq!(store_a.durable_position(&shared).unwrap(), Some(1));
}
