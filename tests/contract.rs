//! The contract, case by case: sections 2–5, 7 and 9 of CONTRACT.md, plus
//! the bounds of section 3 and the configuration checks.
//!
//! Each test pins one rule, named after it, with exact figures (positions,
//! `missed`, the latest cursor), so a regression says which promise broke.
//! Time only moves through a `ManualClock`; nothing here sleeps or spawns.
//! Subscriptions (section 6) are in `subscriptions.rs`, concurrency in
//! `stress.rs`.

use std::sync::Arc;
use std::time::Duration;

use livereplay::{
    Config, ConfigError, Cursor, CursorError, Error, Event, Gap, GapReason, LiveReplayStore,
    ManualClock, Refusal, ReplayStore, Revision, SessionKey, Stats, Timestamp, MAX_CAPACITY,
    MAX_SESSIONS_LIMIT,
};

const MAX_AGE: Duration = Duration::from_secs(10);

fn key(tenant: &str, session: &str) -> SessionKey {
    SessionKey::new(tenant, session).expect("a valid key")
}

fn store_with_capacity(capacity: usize) -> ReplayStore<u64> {
    ReplayStore::new(Config::default().with_capacity(capacity)).expect("a valid config")
}

/// A store whose time only moves when the test says so.
fn store_with_clock(config: Config) -> (ReplayStore<u64>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    let store = ReplayStore::builder()
        .config(config)
        .clock(clock.clone())
        .build()
        .expect("a valid config");
    (store, clock)
}

fn aging_store() -> (ReplayStore<u64>, Arc<ManualClock>) {
    store_with_clock(Config::default().with_max_age(MAX_AGE))
}

/// Appends `payloads` one by one and returns the events.
fn append_all<T: Send + Sync + 'static>(
    store: &ReplayStore<T>,
    key: &SessionKey,
    payloads: impl IntoIterator<Item = T>,
) -> Vec<Arc<Event<T>>> {
    payloads
        .into_iter()
        .map(|payload| store.append(key, Revision(1), payload).expect("append"))
        .collect()
}

fn positions<T>(events: &[Arc<Event<T>>]) -> Vec<u64> {
    events.iter().map(|event| event.position()).collect()
}

fn payloads<T: Clone>(events: &[Arc<Event<T>>]) -> Vec<T> {
    events.iter().map(|event| event.payload().clone()).collect()
}

/// The gap a call must have returned.
#[track_caller]
fn expect_gap<T>(result: Result<Vec<Arc<Event<T>>>, Error>) -> Gap {
    match result {
        Err(Error::Gap(gap)) => gap,
        Err(other) => panic!("expected a gap, got {other:?}"),
        Ok(events) => panic!(
            "expected a gap, got {} events",
            events.len() // `T` need not be Debug
        ),
    }
}

#[track_caller]
fn expect_events<T>(result: Result<Vec<Arc<Event<T>>>, Error>) -> Vec<Arc<Event<T>>> {
    match result {
        Ok(events) => events,
        Err(error) => panic!("expected events, got {error:?}"),
    }
}

// ---------------------------------------------------------------------------
// Section 2: sessions, positions, cursors
// ---------------------------------------------------------------------------

#[test]
fn sessions_of_one_tenant_never_see_each_others_events() {
    let store = ReplayStore::<u64>::default();
    let (a, b) = (key("acme", "a"), key("acme", "b"));
    append_all(&store, &a, [1, 2, 3]);
    append_all(&store, &b, [10, 20]);

    let from_a = expect_events(store.replay_after_cursor(&Cursor::start(a.clone())));
    let from_b = expect_events(store.replay_after_cursor(&Cursor::start(b.clone())));
    assert_eq!(payloads(&from_a), [1, 2, 3]);
    assert_eq!(payloads(&from_b), [10, 20]);
    assert!(from_a.iter().all(|event| event.key() == &a));
    assert!(from_b.iter().all(|event| event.key() == &b));
}

#[test]
fn same_session_id_in_two_tenants_is_two_separate_sessions() {
    let store = ReplayStore::<u64>::default();
    let (acme, globex) = (key("acme", "chat"), key("globex", "chat"));
    let acme_events = append_all(&store, &acme, [1, 2, 3]);
    let globex_events = append_all(&store, &globex, [100]);

    // Each tenant's session numbers its own positions from 1.
    assert_eq!(positions(&acme_events), [1, 2, 3]);
    assert_eq!(positions(&globex_events), [1]);
    assert_ne!(acme_events[0].incarnation(), globex_events[0].incarnation());
    let from_globex = expect_events(store.replay_after_cursor(&Cursor::start(globex.clone())));
    assert_eq!(payloads(&from_globex), [100]);

    // A host serving globex refuses acme's cursor outright.
    assert_eq!(
        store
            .replay_scoped(&globex, &acme_events[0].cursor())
            .unwrap_err(),
        Error::Cursor(CursorError::WrongSession)
    );
    // A forged cursor: acme's incarnation and position, relabelled as
    // globex's. It must not be served globex's positions as if they
    // continued acme's session.
    let forged = Cursor::new(
        globex.clone(),
        Some(acme_events[0].incarnation()),
        Revision(1),
        1,
    );
    let gap = expect_gap(store.replay_after_cursor(&forged));
    assert_eq!(gap.reason, GapReason::Reset);
    assert_eq!(gap.latest, globex_events[0].cursor());
}

#[test]
fn positions_are_one_based_and_contiguous() {
    let store = ReplayStore::<u64>::default();
    let k = key("t", "s");
    let events = append_all(&store, &k, 0..7);
    assert_eq!(positions(&events), (1..=7).collect::<Vec<_>>());
    // A batch continues the same sequence.
    let batch = store.append_batch(&k, Revision(2), [7, 8, 9]).unwrap();
    assert_eq!(positions(&batch), [8, 9, 10]);
    assert_eq!(store.latest_position(&k), Some(10));
    assert_eq!(store.current_cursor(&k).position(), 10);
    let all = expect_events(store.replay_after_cursor(&Cursor::start(k)));
    assert_eq!(positions(&all), (1..=10).collect::<Vec<_>>());
    assert_eq!(payloads(&all), (0..10).collect::<Vec<_>>());
}

#[test]
fn an_events_cursor_names_its_session_incarnation_revision_and_position() {
    let store = ReplayStore::<u64>::default();
    let k = key("t", "s");
    let event = store.append(&k, Revision(42), 0).unwrap();
    let cursor = event.cursor();
    assert_eq!(cursor.key(), &k);
    assert_eq!(cursor.incarnation(), Some(event.incarnation()));
    assert_eq!(cursor.revision(), Revision(42));
    assert_eq!(cursor.position(), 1);
    assert_eq!(store.current_cursor(&k), cursor);
}

#[test]
fn the_start_cursor_is_position_zero_with_no_incarnation() {
    let start = Cursor::start(key("t", "s"));
    assert_eq!(start.position(), 0);
    assert_eq!(start.incarnation(), None);
    // The current cursor of an unknown session is the start cursor.
    let store = ReplayStore::<u64>::default();
    assert_eq!(store.current_cursor(&key("t", "s")), start);
}

#[test]
fn cursor_debug_output_does_not_print_the_wire_string() {
    let store = ReplayStore::<u64>::default();
    let cursor = store
        .append(&key("acme", "secret-chat"), Revision(3), 1)
        .unwrap()
        .cursor();
    let wire = cursor.to_string();
    let debug = format!("{cursor:?}");
    assert!(!debug.contains(&wire), "{debug} contains {wire}");
}

/// Awkward ids a host meets: separators of the wire form, URL syntax,
/// percent signs, spaces, unicode, and the empty tenant.
const AWKWARD_KEYS: &[(&str, &str)] = &[
    ("", "chat-1"),
    ("tenant:with:colons", "a/b/c"),
    ("dots.in.tenant", "session.with.dots"),
    ("100%", "%2E%25"),
    ("with space", " leading and trailing "),
    ("ünïcødé", "日本語-セッション"),
    ("emoji 🦀", "🦀/🚀:.%"),
    ("lr1.-.0.0.x.y", "-"),
];

#[test]
fn cursor_strings_round_trip_for_awkward_ids() {
    let incarnation = ReplayStore::<u64>::default()
        .append(&key("t", "s"), Revision(0), 0)
        .unwrap()
        .incarnation();
    for &(tenant, session) in AWKWARD_KEYS {
        let k = key(tenant, session);
        for cursor in [
            Cursor::start(k.clone()),
            Cursor::new(k.clone(), Some(incarnation), Revision(u64::MAX), u64::MAX),
        ] {
            let wire = cursor.to_string();
            assert!(
                wire.bytes().all(|b| b.is_ascii_graphic()),
                "{wire:?} is not printable ASCII without spaces"
            );
            let parsed: Cursor = wire.parse().expect("a cursor the crate wrote parses");
            assert_eq!(parsed, cursor);
            assert_eq!(parsed.key().tenant(), tenant);
            assert_eq!(parsed.key().session(), session);
            assert_eq!(Cursor::parse_for(&k, &wire), Ok(cursor));
        }
    }
}

#[test]
fn cursor_strings_with_awkward_ids_resume_a_real_replay() {
    let store = ReplayStore::<u64>::default();
    for (index, &(tenant, session)) in AWKWARD_KEYS.iter().enumerate() {
        let k = key(tenant, session);
        let first = index as u64 * 10;
        let events = append_all(&store, &k, [first, first + 1, first + 2]);
        // The wire string of the first event, as a client would send it back.
        let wire = events[0].cursor().to_string();
        let cursor: Cursor = wire.parse().unwrap();
        let resumed = expect_events(store.replay_scoped(&k, &cursor));
        assert_eq!(
            payloads(&resumed),
            [first + 1, first + 2],
            "{tenant:?}/{session:?}"
        );
        assert!(resumed.iter().all(|event| event.key() == &k));
        // And the start cursor's string reads the whole session.
        let start: Cursor = Cursor::start(k.clone()).to_string().parse().unwrap();
        assert_eq!(
            payloads(&expect_events(store.replay_scoped(&k, &start))),
            [first, first + 1, first + 2]
        );
    }
}

// ---------------------------------------------------------------------------
// Section 5: the replay table, row by row
// ---------------------------------------------------------------------------

#[test]
fn replay_returns_every_event_after_the_cursor_in_position_order() {
    let store = ReplayStore::<u64>::default();
    let k = key("t", "s");
    let events = append_all(&store, &k, 100..110);
    for (index, event) in events.iter().enumerate() {
        let after = expect_events(store.replay_after_cursor(&event.cursor()));
        let expected: Vec<u64> = (event.position() + 1..=10).collect();
        assert_eq!(positions(&after), expected);
        assert_eq!(payloads(&after), payloads(&events[index + 1..]));
    }
}

#[test]
fn replay_at_the_published_tail_is_ok_and_empty() {
    let store = ReplayStore::<u64>::default();
    let k = key("t", "s");
    let events = append_all(&store, &k, [1, 2, 3]);
    assert!(expect_events(store.replay_after_cursor(&events[2].cursor())).is_empty());
    assert!(expect_events(store.replay_after_cursor(&store.current_cursor(&k))).is_empty());
}

#[test]
fn capacity_trim_gives_a_trimmed_gap_with_exact_missed_and_latest() {
    let store = store_with_capacity(4);
    let k = key("t", "s");
    let events = append_all(&store, &k, 1..=10);
    // Retained now: 7..=10.
    let gap = expect_gap(store.replay_after_cursor(&Cursor::start(k.clone())));
    assert_eq!(gap.reason, GapReason::Trimmed);
    assert_eq!(gap.requested, Cursor::start(k.clone()));
    assert_eq!(gap.missed, Some(6), "positions 1..=6 are gone");
    assert_eq!(gap.latest, events[9].cursor());

    let gap = expect_gap(store.replay_after_cursor(&events[2].cursor()));
    assert_eq!(gap.reason, GapReason::Trimmed);
    assert_eq!(gap.requested, events[2].cursor());
    assert_eq!(gap.missed, Some(3), "positions 4..=6 are gone");
    assert_eq!(gap.latest, events[9].cursor());

    // The oldest retained event's predecessor is still a good cursor.
    let rest = expect_events(store.replay_after_cursor(&events[5].cursor()));
    assert_eq!(positions(&rest), [7, 8, 9, 10]);
    assert_eq!(store.event_count(&k), 4);
}

#[test]
fn a_gaps_latest_cursor_is_where_to_resume() {
    let store = store_with_capacity(2);
    let k = key("t", "s");
    append_all(&store, &k, 1..=5);
    let gap = expect_gap(store.replay_after_cursor(&Cursor::start(k.clone())));
    // After reloading a snapshot as of `latest`, resuming there works and
    // yields exactly what comes next.
    assert!(expect_events(store.replay_after_cursor(&gap.latest)).is_empty());
    store.append(&k, Revision(1), 6).unwrap();
    assert_eq!(
        payloads(&expect_events(store.replay_after_cursor(&gap.latest))),
        [6]
    );
}

#[test]
fn age_trim_gives_a_trimmed_gap_once_events_pass_max_age() {
    let (store, clock) = aging_store();
    let k = key("t", "s");
    let old = append_all(&store, &k, [1, 2, 3]);
    clock.advance(Duration::from_secs(5));
    let young = append_all(&store, &k, [4, 5]);

    // Nothing has aged out yet.
    assert_eq!(
        positions(&expect_events(
            store.replay_after_cursor(&Cursor::start(k.clone()))
        )),
        [1, 2, 3, 4, 5]
    );
    // 11 s after the first three: they are past max_age, the last two not.
    clock.advance(Duration::from_secs(6));
    let gap = expect_gap(store.replay_after_cursor(&Cursor::start(k.clone())));
    assert_eq!(gap.reason, GapReason::Trimmed);
    assert_eq!(gap.missed, Some(3));
    assert_eq!(gap.latest, young[1].cursor());
    let gap = expect_gap(store.replay_after_cursor(&old[0].cursor()));
    assert_eq!(gap.missed, Some(2));
    assert_eq!(
        payloads(&expect_events(store.replay_after_cursor(&old[2].cursor()))),
        [4, 5]
    );
    assert_eq!(store.event_count(&k), 2);
}

/// Timestamps are read before a position is claimed, so with several
/// writers (or a wall clock stepping back, which `ManualClock::set` models)
/// a later position can carry an older timestamp and age out first.
#[test]
fn an_event_aging_out_before_its_predecessor_gives_a_sane_trimmed_gap() {
    let (store, clock) = aging_store();
    let k = key("t", "s");
    clock.set(Timestamp::from_nanos(100_000_000_000));
    let first = store.append(&k, Revision(1), 1).unwrap();
    clock.set(Timestamp::from_nanos(90_000_000_000));
    let second = store.append(&k, Revision(1), 2).unwrap();
    // 11 s after the second event's timestamp, 1 s after the first's.
    clock.set(Timestamp::from_nanos(101_000_000_000));
    let gap = expect_gap(store.replay_after_cursor(&first.cursor()));
    assert_eq!(gap.reason, GapReason::Trimmed);
    assert!(
        gap.missed.is_none_or(|missed| missed == 1),
        "only position 2 is missed, not {:?}",
        gap.missed
    );
    assert_eq!(gap.latest, second.cursor());
}

#[test]
fn trim_session_frees_expired_events_then_evicts_the_idle_session() {
    let (store, clock) = aging_store();
    let k = key("t", "s");
    let events = append_all(&store, &k, [1, 2, 3]);
    // Before max_age passes, a trim frees nothing and the session stays.
    assert_eq!(store.trim_session(&k), 0);
    assert!(store.contains_session(&k));

    clock.advance(MAX_AGE + Duration::from_secs(1));
    assert_eq!(store.trim_session(&k), 3);
    // Evicted: its events are gone, its identity is kept (section 10).
    assert!(!store.is_resident(&k));
    assert!(store.contains_session(&k), "dormant, not forgotten");
    assert_eq!(store.stats().evicted_sessions, 1);
    assert_eq!(store.stats().sessions, 0);
    assert_eq!(store.stats().dormant_sessions, 1);
    // A cursor at the evicted tail is at the tail; the start cursor was
    // trimmed, with the exact count.
    assert!(expect_events(store.replay_after_cursor(&events[2].cursor())).is_empty());
    let gap = expect_gap(store.replay_after_cursor(&Cursor::start(k.clone())));
    assert_eq!(gap.reason, GapReason::Trimmed);
    assert_eq!(gap.missed, Some(3));
    assert_eq!(gap.latest, events[2].cursor());
    // Trimming a dormant session is a no-op.
    assert_eq!(store.trim_session(&k), 0);
}

#[test]
fn trim_session_keeps_a_session_that_still_holds_events() {
    let (store, clock) = aging_store();
    let k = key("t", "s");
    append_all(&store, &k, [1, 2]);
    clock.advance(MAX_AGE + Duration::from_secs(1));
    append_all(&store, &k, [3]);
    assert_eq!(store.trim_session(&k), 2);
    assert!(store.contains_session(&k));
    assert_eq!(store.event_count(&k), 1);
    assert_eq!(store.latest_position(&k), Some(3));
}

#[test]
fn trim_session_does_not_evict_a_session_with_a_handle() {
    let (store, clock) = aging_store();
    let k = key("t", "s");
    let handle = store.session(&k).unwrap();
    handle.append(Revision(1), 1).unwrap();
    clock.advance(MAX_AGE + Duration::from_secs(1));
    assert_eq!(store.trim_session(&k), 1);
    assert!(store.contains_session(&k));
    // The handle still appends to the same incarnation.
    let next = handle.append(Revision(1), 2).unwrap();
    assert_eq!(next.position(), 2);
    assert_eq!(store.current_cursor(&k), next.cursor());
}

#[test]
fn release_through_trims_every_position_up_to_the_watermark() {
    let store = ReplayStore::<u64>::default();
    let k = key("t", "s");
    let events = append_all(&store, &k, 1..=10);
    assert_eq!(store.release_through(&k, 4), 4);
    let gap = expect_gap(store.replay_after_cursor(&Cursor::start(k.clone())));
    assert_eq!(gap.reason, GapReason::Trimmed);
    assert_eq!(gap.missed, Some(4));
    assert_eq!(gap.latest, events[9].cursor());
    let gap = expect_gap(store.replay_after_cursor(&events[1].cursor()));
    assert_eq!(gap.missed, Some(2));
    assert_eq!(
        positions(&expect_events(
            store.replay_after_cursor(&events[3].cursor())
        )),
        [5, 6, 7, 8, 9, 10]
    );
    assert_eq!(store.event_count(&k), 6);
}

#[test]
fn release_through_is_monotonic_and_a_lower_watermark_is_a_no_op() {
    let store = ReplayStore::<u64>::default();
    let k = key("t", "s");
    let events = append_all(&store, &k, 1..=10);
    assert_eq!(store.release_through(&k, 6), 6);
    assert_eq!(store.release_through(&k, 3), 0);
    assert_eq!(store.release_through(&k, 6), 0);
    assert_eq!(store.release_through(&k, 0), 0);
    // Nothing at or below the watermark came back.
    let gap = expect_gap(store.replay_after_cursor(&events[4].cursor()));
    assert_eq!(gap.missed, Some(1));
    // Raising it again counts only the newly trimmed.
    assert_eq!(store.release_through(&k, 8), 2);
    for cursor_position in 0..=10u64 {
        if let Ok(replayed) = store.replay_after_position(&k, cursor_position) {
            assert!(
                replayed.iter().all(|event| event.position() > 8),
                "replay after {cursor_position} returned a released position"
            );
        }
    }
    assert_eq!(
        positions(&expect_events(store.replay_after_position(&k, 8))),
        [9, 10]
    );
}

#[test]
fn release_through_counts_only_events_not_already_trimmed_by_capacity() {
    let store = store_with_capacity(4);
    let k = key("t", "s");
    append_all(&store, &k, 1..=10);
    // 1..=6 are already gone to capacity; 7 and 8 are newly released.
    assert_eq!(store.release_through(&k, 8), 2);
    assert_eq!(
        positions(&expect_events(store.replay_after_position(&k, 8))),
        [9, 10]
    );
}

#[test]
fn release_through_beyond_the_tail_is_clamped_to_the_tail() {
    let store = ReplayStore::<u64>::default();
    let k = key("t", "s");
    let events = append_all(&store, &k, 1..=4);
    assert_eq!(store.release_through(&k, 100), 4);
    assert_eq!(store.event_count(&k), 0);
    assert_eq!(store.latest_position(&k), Some(4));
    assert!(expect_events(store.replay_after_cursor(&events[3].cursor())).is_empty());
    // The watermark stopped at 4, so the next events are retained.
    let next = append_all(&store, &k, [5, 6]);
    assert_eq!(positions(&next), [5, 6]);
    assert_eq!(
        positions(&expect_events(
            store.replay_after_cursor(&events[3].cursor())
        )),
        [5, 6]
    );
    // Releasing an unknown session does nothing.
    assert_eq!(store.release_through(&key("t", "unknown"), 10), 0);
}

#[test]
fn release_through_a_handle_matches_the_store() {
    let store = ReplayStore::<u64>::default();
    let k = key("t", "s");
    let handle = store.session(&k).unwrap();
    for payload in 1..=5 {
        handle.append(Revision(1), payload).unwrap();
    }
    assert_eq!(handle.release_through(2), 2);
    assert_eq!(handle.release_through(1), 0);
    assert_eq!(handle.event_count(), 3);
    assert_eq!(
        positions(&expect_events(store.replay_after_position(&k, 2))),
        [3, 4, 5]
    );
}

#[test]
fn a_cursor_beyond_the_tail_is_unavailable() {
    let store = ReplayStore::<u64>::default();
    let k = key("t", "s");
    let events = append_all(&store, &k, [1, 2, 3]);
    let ahead = Cursor::new(k.clone(), Some(events[0].incarnation()), Revision(1), 5);
    let gap = expect_gap(store.replay_after_cursor(&ahead));
    assert_eq!(gap.reason, GapReason::Unavailable);
    assert_eq!(gap.requested, ahead);
    assert_eq!(gap.latest, events[2].cursor());
    assert_eq!(gap.missed, None);
}

#[test]
fn an_unknown_session_is_unavailable_past_zero_and_empty_at_zero() {
    let store = ReplayStore::<u64>::default();
    let k = key("t", "never-seen");
    assert!(expect_events(store.replay_after_cursor(&Cursor::start(k.clone()))).is_empty());
    let gap = expect_gap(store.replay_after_position(&k, 3));
    assert_eq!(gap.reason, GapReason::Unavailable);
    assert_eq!(gap.latest, Cursor::start(k.clone()));
    assert_eq!(gap.missed, None);
    // Reading does not create the session.
    assert!(!store.contains_session(&k));
}

#[test]
fn an_evicted_session_recreated_continues_its_incarnation() {
    let (store, clock) = aging_store();
    let k = key("t", "s");
    let first = append_all(&store, &k, [1, 2]);
    clock.advance(MAX_AGE + Duration::from_secs(1));
    store.trim_session(&k);
    assert!(!store.is_resident(&k));

    let next = store.append(&k, Revision(1), 3).unwrap();
    assert_eq!(next.position(), 3, "positions continue after eviction");
    assert_eq!(next.incarnation(), first[0].incarnation());
    assert_eq!(store.stats().revived_sessions, 1);
    // Eviction shows to cursors only as trimming.
    let rest = expect_events(store.replay_after_cursor(&first[1].cursor()));
    assert_eq!(rest.iter().map(|e| *e.payload()).collect::<Vec<_>>(), [3]);
    let gap = expect_gap(store.replay_after_cursor(&first[0].cursor()));
    assert_eq!(gap.reason, GapReason::Trimmed);
    assert_eq!(gap.missed, Some(1));
}

#[test]
fn an_old_cursor_gets_reset_after_the_tombstone_is_forgotten_and_recreated() {
    let (store, clock) = store_with_clock(
        Config::default()
            .with_max_age(MAX_AGE)
            .with_tombstones(0, Duration::from_secs(1)),
    );
    let k = key("t", "s");
    let first_life = append_all(&store, &k, [1, 2]);
    clock.advance(MAX_AGE + Duration::from_secs(1));
    store.trim_session(&k);
    assert!(!store.contains_session(&k));

    let second_life = store.append(&k, Revision(1), 3).unwrap();
    assert_eq!(second_life.position(), 1, "a new incarnation counts from 1");
    assert_ne!(second_life.incarnation(), first_life[0].incarnation());
    let gap = expect_gap(store.replay_after_cursor(&first_life[1].cursor()));
    assert_eq!(gap.reason, GapReason::Reset);
    assert_eq!(gap.requested, first_life[1].cursor());
    assert_eq!(gap.latest, second_life.cursor());
    assert_eq!(gap.missed, None);
    // Even a cursor whose position exists in the new life is not served it.
    let gap = expect_gap(store.replay_after_cursor(&first_life[0].cursor()));
    assert_eq!(gap.reason, GapReason::Reset);
}

#[test]
fn sweep_evicts_idle_sessions_and_their_old_cursors_get_reset() {
    let (store, clock) = store_with_clock(
        Config::default()
            .with_max_age(MAX_AGE)
            .with_tombstones(0, Duration::from_secs(1)),
    );
    let (idle, busy) = (key("t", "idle"), key("t", "busy"));
    let old = store.append(&idle, Revision(1), 1).unwrap();
    clock.advance(MAX_AGE + Duration::from_secs(1));
    store.append(&busy, Revision(1), 2).unwrap();
    assert_eq!(store.sweep(), 1);
    assert!(!store.contains_session(&idle));
    assert!(store.contains_session(&busy));

    let fresh = store.append(&idle, Revision(1), 3).unwrap();
    assert_ne!(fresh.incarnation(), old.incarnation());
    let gap = expect_gap(store.replay_after_cursor(&old.cursor()));
    assert_eq!(gap.reason, GapReason::Reset);
    assert_eq!(gap.latest, fresh.cursor());
}

#[test]
fn a_cursor_from_before_a_store_restart_is_unavailable_then_reset() {
    let k = key("t", "s");
    let before_restart = ReplayStore::<u64>::default();
    let old = append_all(&before_restart, &k, [1, 2, 3]);
    let wire = old[2].cursor().to_string();

    // The process restarted: a new, empty store gets the client's cursor.
    let after_restart = ReplayStore::<u64>::default();
    let cursor: Cursor = wire.parse().unwrap();
    let gap = expect_gap(after_restart.replay_after_cursor(&cursor));
    assert_eq!(gap.reason, GapReason::Unavailable);

    // Once the session exists here it is another incarnation, even where its
    // positions overlap the old ones.
    let new = append_all(&after_restart, &k, [10, 20, 30, 40]);
    assert_ne!(new[0].incarnation(), old[0].incarnation());
    let gap = expect_gap(after_restart.replay_after_cursor(&cursor));
    assert_eq!(gap.reason, GapReason::Reset);
    assert_eq!(gap.latest, new[3].cursor());
}

#[test]
fn a_position_zero_cursor_of_an_old_incarnation_reads_the_new_one_from_the_start() {
    // Crate-doc choice: position 0 means "nothing seen", whatever life.
    let store = ReplayStore::<u64>::default();
    let k = key("t", "s");
    let old = store.append(&k, Revision(1), 1).unwrap();
    assert!(store.remove_session(&k));
    store.append(&k, Revision(1), 2).unwrap();
    let zero_of_old_life = Cursor::new(k.clone(), Some(old.incarnation()), Revision(0), 0);
    assert_eq!(
        payloads(&expect_events(store.replay_after_cursor(&zero_of_old_life))),
        [2]
    );
}

#[test]
fn strings_that_are_not_cursors_are_malformed() {
    let k = key("t", "s");
    let good = ReplayStore::<u64>::default()
        .append(&k, Revision(1), 1)
        .unwrap()
        .cursor()
        .to_string();
    let bad_inputs = [
        String::new(),
        "hello".into(),
        "lr1".into(),
        "lr1.".into(),
        "lr2.-.0.0.t.s".into(),
        "lr1.-.0.0.t".into(),
        "lr1.-.0.0.t.s.extra".into(),
        "lr1.-.x.0.t.s".into(),
        "lr1.-.0.-1.t.s".into(),
        "lr1.nothex.0.1.t.s".into(),
        "lr1.-.0.0.t.".into(),
        "lr1.-.0.0.t.%zz".into(),
        "lr1.-.0.0.t.s ".into(),
        " lr1.-.0.0.t.s".into(),
        "lr1.-.0.0.t.s\n".into(),
        good.replace('.', ":"),
        good[..good.len() - 1].to_string() + "\u{fffd}",
    ];
    for bad in &bad_inputs {
        assert!(
            matches!(bad.parse::<Cursor>(), Err(CursorError::Malformed { .. })),
            "{bad:?} was not refused as malformed"
        );
        assert!(
            matches!(
                Cursor::parse_for(&k, bad),
                Err(CursorError::Malformed { .. })
            ),
            "{bad:?} was not refused as malformed by parse_for"
        );
    }
    // The malformed error converts into the store's error type.
    let error: Error = "nope".parse::<Cursor>().unwrap_err().into();
    assert!(matches!(
        error,
        Error::Cursor(CursorError::Malformed { .. })
    ));
}

#[test]
fn a_scoped_replay_refuses_another_keys_cursor() {
    let store = ReplayStore::<u64>::default();
    let (mine, theirs) = (key("t", "mine"), key("t", "theirs"));
    store.append(&mine, Revision(1), 1).unwrap();
    let their_cursor = store.append(&theirs, Revision(1), 2).unwrap().cursor();
    let wrong = Error::Cursor(CursorError::WrongSession);
    assert_eq!(
        store.replay_scoped(&mine, &their_cursor).unwrap_err(),
        wrong
    );
    assert_eq!(
        store
            .replay_scoped(&mine, &Cursor::start(theirs.clone()))
            .unwrap_err(),
        wrong
    );
    let handle = store.session(&mine).unwrap();
    assert_eq!(handle.replay_after(&their_cursor).unwrap_err(), wrong);
    assert_eq!(
        Cursor::parse_for(&mine, &their_cursor.to_string()),
        Err(CursorError::WrongSession)
    );
    // With its own key, the same call serves the events.
    assert_eq!(
        payloads(&expect_events(
            store.replay_scoped(&mine, &Cursor::start(mine.clone()))
        )),
        [1]
    );
}

#[test]
fn a_scoped_subscribe_refuses_another_keys_cursor() {
    let store = ReplayStore::<u64>::default();
    let (mine, theirs) = (key("acme", "chat"), key("globex", "chat"));
    store.append(&mine, Revision(1), 1).unwrap();
    let their_cursor = store.append(&theirs, Revision(1), 2).unwrap().cursor();
    let wrong = Error::Cursor(CursorError::WrongSession);
    assert_eq!(
        store.subscribe_scoped(&mine, &their_cursor).unwrap_err(),
        wrong
    );
    let handle = store.session(&mine).unwrap();
    assert_eq!(handle.subscribe_after(&their_cursor).unwrap_err(), wrong);
    assert_eq!(store.stats().subscribers, 0);
}

// ---------------------------------------------------------------------------
// Section 3: append, batches and bounds
// ---------------------------------------------------------------------------

#[test]
fn append_returns_the_stored_event() {
    let store = ReplayStore::<String>::default();
    let k = key("t", "s");
    let event = store.append(&k, Revision(9), "hello".to_string()).unwrap();
    assert_eq!(event.payload(), "hello");
    assert_eq!(event.revision(), Revision(9));
    assert_eq!(event.key(), &k);
    let replayed = expect_events(store.replay_after_cursor(&Cursor::start(k)));
    assert!(Arc::ptr_eq(&replayed[0], &event), "replay shares the event");
}

#[test]
fn a_batch_gets_consecutive_positions_after_earlier_events() {
    let store = ReplayStore::<u64>::default();
    let k = key("t", "s");
    let single = store.append(&k, Revision(1), 0).unwrap();
    let batch = store.append_batch(&k, Revision(2), [1, 2, 3]).unwrap();
    assert_eq!(positions(&batch), [2, 3, 4]);
    assert!(batch.iter().all(|event| event.revision() == Revision(2)));
    assert!(batch
        .iter()
        .all(|event| event.incarnation() == single.incarnation()));
    let after_single = expect_events(store.replay_after_cursor(&single.cursor()));
    assert_eq!(payloads(&after_single), [1, 2, 3]);
    // The same through a handle.
    let handle = store.session(&k).unwrap();
    let more = handle.append_batch(Revision(3), vec![4, 5]).unwrap();
    assert_eq!(positions(&more), [5, 6]);
}

#[test]
fn a_batch_as_large_as_the_capacity_is_accepted() {
    let store = store_with_capacity(4);
    let k = key("t", "s");
    store.append(&k, Revision(1), 0).unwrap();
    let batch = store.append_batch(&k, Revision(1), [1, 2, 3, 4]).unwrap();
    assert_eq!(positions(&batch), [2, 3, 4, 5]);
    assert_eq!(
        payloads(&expect_events(store.replay_after_position(&k, 1))),
        [1, 2, 3, 4]
    );
}

#[test]
fn a_batch_larger_than_the_capacity_is_refused_and_stores_nothing() {
    let store = store_with_capacity(4);
    let k = key("t", "s");
    store.append(&k, Revision(1), 0).unwrap();
    let before = store.stats();
    assert_eq!(
        store
            .append_batch(&k, Revision(1), [1, 2, 3, 4, 5])
            .unwrap_err(),
        Error::Refused(Refusal::BatchTooLarge {
            len: 5,
            capacity: 4
        })
    );
    let handle = store.session(&k).unwrap();
    assert!(matches!(
        handle.append_batch(Revision(1), 0..100),
        Err(Error::Refused(Refusal::BatchTooLarge {
            len: 100,
            capacity: 4
        }))
    ));
    assert_eq!(store.latest_position(&k), Some(1));
    assert_eq!(store.stats().appends, before.appends);
    // No position was used up.
    assert_eq!(store.append(&k, Revision(1), 9).unwrap().position(), 2);
}

#[test]
fn an_empty_batch_is_ok_and_changes_nothing() {
    let store = ReplayStore::<u64>::default();
    let k = key("t", "s");
    assert!(store.append_batch(&k, Revision(1), []).unwrap().is_empty());
    assert!(
        !store.contains_session(&k),
        "an empty batch creates nothing"
    );
    store.append(&k, Revision(1), 1).unwrap();
    assert!(store
        .append_batch(&k, Revision(1), Vec::new())
        .unwrap()
        .is_empty());
    let handle = store.session(&k).unwrap();
    assert!(handle
        .append_batch(Revision(1), std::iter::empty())
        .unwrap()
        .is_empty());
    assert_eq!(store.latest_position(&k), Some(1));
    assert_eq!(store.append(&k, Revision(1), 2).unwrap().position(), 2);
}

#[test]
fn creating_a_session_past_max_sessions_is_refused() {
    let (store, _clock) = store_with_clock(Config::default().with_max_sessions(2));
    store.append(&key("t", "one"), Revision(1), 1).unwrap();
    store.append(&key("t", "two"), Revision(1), 2).unwrap();
    let third = key("t", "three");
    let refused = Error::Refused(Refusal::TooManySessions { max: 2 });
    assert_eq!(store.append(&third, Revision(1), 3).unwrap_err(), refused);
    assert_eq!(store.session(&third).unwrap_err(), refused);
    assert_eq!(
        store.append_batch(&third, Revision(1), [3]).unwrap_err(),
        refused
    );
    assert_eq!(
        store
            .subscribe_after_cursor(&Cursor::start(third.clone()))
            .unwrap_err(),
        refused
    );
    assert!(!store.contains_session(&third));
    assert_eq!(store.stats().sessions, 2);
    // Existing sessions still take appends.
    assert_eq!(
        store
            .append(&key("t", "one"), Revision(1), 4)
            .unwrap()
            .position(),
        2
    );
}

#[test]
fn the_session_bound_frees_up_once_idle_sessions_expire() {
    let (store, clock) =
        store_with_clock(Config::default().with_max_sessions(2).with_max_age(MAX_AGE));
    store.append(&key("t", "one"), Revision(1), 1).unwrap();
    store.append(&key("t", "two"), Revision(1), 2).unwrap();
    let third = key("t", "three");
    assert!(store.append(&third, Revision(1), 3).is_err());

    clock.advance(MAX_AGE + Duration::from_secs(1));
    // The creation itself evicts the idle sessions to make room.
    assert_eq!(store.append(&third, Revision(1), 3).unwrap().position(), 1);
    assert!(store.contains_session(&third));
    assert_eq!(store.stats().evicted_sessions, 2);
}

#[test]
fn a_session_held_by_a_handle_keeps_counting_against_the_bound() {
    let (store, clock) =
        store_with_clock(Config::default().with_max_sessions(1).with_max_age(MAX_AGE));
    let _held = store.session(&key("t", "held")).unwrap();
    clock.advance(MAX_AGE + Duration::from_secs(1));
    assert_eq!(
        store
            .append(&key("t", "other"), Revision(1), 1)
            .unwrap_err(),
        Error::Refused(Refusal::TooManySessions { max: 1 })
    );
}

fn store_with_payload_limit(max_bytes: usize) -> ReplayStore<String> {
    ReplayStore::builder()
        .payload_limit(max_bytes, |payload: &String| payload.len())
        .build()
        .unwrap()
}

#[test]
fn a_payload_over_the_limit_is_refused_and_nothing_is_stored() {
    let store = store_with_payload_limit(8);
    let k = key("t", "s");
    store.append(&k, Revision(1), "12345678".into()).unwrap();
    assert_eq!(
        store
            .append(&k, Revision(1), "123456789".into())
            .unwrap_err(),
        Error::Refused(Refusal::PayloadTooLarge { size: 9, max: 8 })
    );
    // One oversized payload refuses the whole batch.
    assert_eq!(
        store
            .append_batch(&k, Revision(1), ["ok".into(), "far too long".into()])
            .unwrap_err(),
        Error::Refused(Refusal::PayloadTooLarge { size: 12, max: 8 })
    );
    let handle = store.session(&k).unwrap();
    assert!(matches!(
        handle.append(Revision(1), "x".repeat(100)),
        Err(Error::Refused(Refusal::PayloadTooLarge {
            size: 100,
            max: 8
        }))
    ));
    assert_eq!(store.latest_position(&k), Some(1));
    assert_eq!(store.stats().appends, 1);
    assert_eq!(
        store
            .append(&k, Revision(1), "ok".into())
            .unwrap()
            .position(),
        2
    );
}

#[test]

fn a_refused_first_payload_does_not_create_the_session() {
    // "Returns a typed error and changes nothing" (section 3).
    let store = store_with_payload_limit(8);
    let k = key("t", "s");
    assert!(store.append(&k, Revision(1), "123456789".into()).is_err());
    assert!(!store.contains_session(&k));
    assert!(store
        .append_batch(&k, Revision(1), ["123456789".into()])
        .is_err());
    assert!(!store.contains_session(&k));
    assert!(store.sessions("t", 10, 0).is_empty());
    assert_eq!(store.stats().sessions, 0);
}

#[test]

fn a_refused_first_batch_does_not_create_the_session() {
    let store = store_with_capacity(2);
    let k = key("t", "s");
    assert!(store.append_batch(&k, Revision(1), [1, 2, 3]).is_err());
    assert!(!store.contains_session(&k));
    assert_eq!(store.stats().sessions, 0);
}

#[test]
fn remove_session_refuses_handle_appends_and_resets_old_cursors() {
    let store = ReplayStore::<u64>::default();
    let k = key("t", "s");
    let handle = store.session(&k).unwrap();
    handle.append(Revision(1), 1).unwrap();
    let last = handle.append(Revision(1), 2).unwrap();

    assert!(store.remove_session(&k));
    assert!(!store.remove_session(&k), "already gone");
    assert!(!store.contains_session(&k));
    assert_eq!(
        handle.append(Revision(1), 3).unwrap_err(),
        Error::Refused(Refusal::SessionRemoved)
    );
    assert_eq!(
        handle.append_batch(Revision(1), [3, 4]).unwrap_err(),
        Error::Refused(Refusal::SessionRemoved)
    );
    let gap = expect_gap(store.replay_after_cursor(&last.cursor()));
    assert_eq!(gap.reason, GapReason::Unavailable);

    // The next append by key starts a new incarnation.
    let fresh = store.append(&k, Revision(1), 10).unwrap();
    assert_eq!(fresh.position(), 1);
    assert_ne!(fresh.incarnation(), last.incarnation());
    let gap = expect_gap(store.replay_after_cursor(&last.cursor()));
    assert_eq!(gap.reason, GapReason::Reset);
    assert_eq!(gap.latest, fresh.cursor());
    // The old handle stays refused: it belongs to the removed incarnation.
    assert_eq!(
        handle.append(Revision(1), 11).unwrap_err(),
        Error::Refused(Refusal::SessionRemoved)
    );
    assert_eq!(
        payloads(&expect_events(store.replay_after_cursor(&Cursor::start(k)))),
        [10]
    );
}

// ---------------------------------------------------------------------------
// Section 7: the trait
// ---------------------------------------------------------------------------

/// A runtime's view: only the trait, never the concrete store.
fn turn_loop(store: &dyn LiveReplayStore<String>, key: &SessionKey) -> Cursor {
    for token in ["Hel", "lo"] {
        store.append(key, Revision(1), token.to_string()).unwrap();
    }
    store.current_cursor(key)
}

#[test]
fn the_store_works_behind_an_arc_dyn_live_replay_store() {
    let store: Arc<dyn LiveReplayStore<String>> = Arc::new(ReplayStore::<String>::default());
    let k = key("t", "s");
    let tail = turn_loop(store.as_ref(), &k);
    assert_eq!(tail.position(), 2);

    let all = expect_events(store.replay_after_cursor(&Cursor::start(k.clone())));
    let text: String = all.iter().map(|event| event.payload().as_str()).collect();
    assert_eq!(text, "Hello");

    let mut subscription = store.subscribe_after_cursor(&tail).unwrap();
    let shared = Arc::clone(&store);
    shared.append(&k, Revision(1), "!".into()).unwrap();
    assert_eq!(subscription.try_next().unwrap().payload(), "!");
    assert_eq!(store.trim_session(&k), Ok(0));
    let gap = expect_gap(store.replay_after_cursor(&Cursor::new(
        k.clone(),
        tail.incarnation(),
        Revision(1),
        99,
    )));
    assert_eq!(gap.reason, GapReason::Unavailable);
}

#[test]
fn trait_trim_session_applies_age_retention() {
    let clock = Arc::new(ManualClock::new());
    let store: Arc<dyn LiveReplayStore<u64>> = Arc::new(
        ReplayStore::builder()
            .config(Config::default().with_max_age(MAX_AGE))
            .clock(clock.clone())
            .build()
            .unwrap(),
    );
    let k = key("t", "s");
    store.append(&k, Revision(1), 1).unwrap();
    store.append(&k, Revision(1), 2).unwrap();
    clock.advance(MAX_AGE + Duration::from_secs(1));
    assert_eq!(store.trim_session(&k), Ok(2));
    // Evicted, but its identity stays: the cursor is still at position 2.
    assert_eq!(store.current_cursor(&k).position(), 2);
}

// ---------------------------------------------------------------------------
// Section 9: neighbour-contract queries
// ---------------------------------------------------------------------------

#[test]
fn latest_position_is_none_without_events_and_the_tail_after() {
    let store = ReplayStore::<u64>::default();
    let k = key("t", "s");
    assert_eq!(store.latest_position(&k), None);
    let handle = store.session(&k).unwrap();
    assert!(store.contains_session(&k));
    assert_eq!(store.latest_position(&k), None, "exists, but no events");
    assert_eq!(handle.latest_position(), None);
    append_all(&store, &k, [1, 2, 3]);
    assert_eq!(store.latest_position(&k), Some(3));
    assert_eq!(handle.latest_position(), Some(3));
}

#[test]
fn event_count_counts_retained_events() {
    let (store, clock) = store_with_clock(Config::default().with_capacity(4).with_max_age(MAX_AGE));
    let k = key("t", "s");
    assert_eq!(store.event_count(&k), 0);
    append_all(&store, &k, [1, 2, 3]);
    assert_eq!(store.event_count(&k), 3);
    append_all(&store, &k, [4, 5, 6]);
    assert_eq!(store.event_count(&k), 4, "capped by capacity");
    store.release_through(&k, 4);
    assert_eq!(store.event_count(&k), 2);
    clock.advance(MAX_AGE + Duration::from_secs(1));
    assert_eq!(store.event_count(&k), 0, "aged out, even before a trim");
    assert_eq!(store.session(&k).unwrap().event_count(), 0);
}

#[test]
fn contains_session_follows_creation_and_removal() {
    let store = ReplayStore::<u64>::default();
    let k = key("t", "s");
    assert!(!store.contains_session(&k));
    store.append(&k, Revision(1), 1).unwrap();
    assert!(store.contains_session(&k));
    assert!(!store.contains_session(&key("other", "s")));
    store.remove_session(&k);
    assert!(!store.contains_session(&k));
}

#[test]
fn sessions_lists_a_tenants_sessions_newest_first_with_paging() {
    let store = ReplayStore::<u64>::default();
    let names = ["s1", "s2", "s3", "s4", "s5"];
    for name in names {
        store.append(&key("acme", name), Revision(1), 0).unwrap();
        // Another tenant's sessions interleaved must never be listed.
        store
            .append(&key("globex", &format!("g-{name}")), Revision(1), 0)
            .unwrap();
    }
    let newest_first: Vec<SessionKey> = names.iter().rev().map(|n| key("acme", n)).collect();
    assert_eq!(store.sessions("acme", 10, 0), newest_first);
    assert_eq!(store.sessions("acme", 2, 0), newest_first[0..2]);
    assert_eq!(store.sessions("acme", 2, 2), newest_first[2..4]);
    assert_eq!(store.sessions("acme", 2, 4), newest_first[4..5]);
    assert!(store.sessions("acme", 2, 6).is_empty());
    assert!(store.sessions("acme", 0, 0).is_empty());
    assert!(store.sessions("nobody", 10, 0).is_empty());
    assert!(store.sessions("", 10, 0).is_empty());
    let globex = store.sessions("globex", 100, 0);
    assert_eq!(globex.len(), 5);
    assert!(globex.iter().all(|k| k.tenant() == "globex"));

    // A removed session leaves the listing; a recreated one is the newest.
    store.remove_session(&key("acme", "s3"));
    store.append(&key("acme", "s3"), Revision(1), 0).unwrap();
    assert_eq!(
        store.sessions("acme", 3, 0),
        [key("acme", "s3"), key("acme", "s5"), key("acme", "s4")]
    );
}

#[test]
fn replay_after_position_follows_the_same_gap_rules() {
    let store = store_with_capacity(4);
    let k = key("t", "s");
    append_all(&store, &k, 1..=6);
    // Retained: 3..=6.
    assert_eq!(
        positions(&expect_events(store.replay_after_position(&k, 2))),
        [3, 4, 5, 6]
    );
    assert_eq!(
        positions(&expect_events(store.replay_after_position(&k, 4))),
        [5, 6]
    );
    assert!(expect_events(store.replay_after_position(&k, 6)).is_empty());
    let gap = expect_gap(store.replay_after_position(&k, 0));
    assert_eq!((gap.reason, gap.missed), (GapReason::Trimmed, Some(2)));
    let gap = expect_gap(store.replay_after_position(&k, 7));
    assert_eq!(gap.reason, GapReason::Unavailable);
    assert_eq!(gap.latest.position(), 6);
}

#[test]
fn replay_after_position_reads_the_current_incarnation() {
    let store = ReplayStore::<u64>::default();
    let k = key("t", "s");
    append_all(&store, &k, [1, 2, 3]);
    store.remove_session(&k);
    append_all(&store, &k, [10, 20]);
    // Positions are numbers in whatever life exists: no Reset here.
    assert_eq!(
        payloads(&expect_events(store.replay_after_position(&k, 1))),
        [20]
    );
}

#[test]
fn stats_count_a_known_sequence() {
    let (store, clock) = store_with_clock(Config::default().with_capacity(4).with_max_age(MAX_AGE));
    assert_eq!(store.stats(), Stats::default());

    let (a, b, gone) = (key("t", "a"), key("t", "b"), key("t", "gone"));
    append_all(&store, &a, 1..=6); // retains 3..=6
    append_all(&store, &b, [1, 2]);
    let subscription = store
        .subscribe_after_cursor(&Cursor::start(b.clone()))
        .unwrap();
    expect_gap(store.replay_after_cursor(&Cursor::start(a.clone()))); // Trimmed
    expect_gap(store.replay_after_position(&gone, 1)); // Unavailable
    let stats = store.stats();
    assert_eq!(stats.sessions, 2);
    assert_eq!(stats.appends, 8);
    assert_eq!(stats.retained_events, 6);
    assert_eq!(stats.subscribers, 1);
    assert_eq!(stats.parked_subscribers, 0);
    assert_eq!(stats.gaps_trimmed, 1);
    assert_eq!(stats.gaps_unavailable, 1);
    assert_eq!(stats.gaps_reset, 0);
    assert_eq!(stats.lagged_subscribers, 0);
    assert_eq!(stats.evicted_sessions, 0);
    assert!(stats.allocated_slots >= 6, "slots hold the retained events");

    // Age out everything; `a` is evicted by its trim, `b` is held by the
    // subscription. Appends of evicted sessions still count.
    drop(subscription);
    let old_a = store.current_cursor(&a);
    clock.advance(MAX_AGE + Duration::from_secs(1));
    assert_eq!(store.trim_session(&a), 4);
    assert_eq!(store.stats().dormant_sessions, 1);
    store.append(&a, Revision(1), 7).unwrap(); // revives `a` at position 7
    assert_eq!(expect_events(store.replay_after_cursor(&old_a)).len(), 1);
    let stats = store.stats();
    assert_eq!(stats.evicted_sessions, 1);
    assert_eq!(stats.revived_sessions, 1);
    assert_eq!(stats.dormant_sessions, 0);
    assert_eq!(stats.sessions, 2);
    assert_eq!(stats.appends, 9);
    assert_eq!(stats.retained_events, 1, "only the new event of `a`");
    assert_eq!(stats.subscribers, 0);
    assert_eq!(stats.gaps_reset, 0);
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

#[test]
fn configurations_that_cannot_work_are_refused_at_build_time() {
    let cases = [
        (
            Config::default().with_capacity(0),
            ConfigError::ZeroCapacity,
        ),
        (
            Config::default().with_capacity(MAX_CAPACITY + 1),
            ConfigError::CapacityTooLarge {
                capacity: MAX_CAPACITY + 1,
                max: MAX_CAPACITY,
            },
        ),
        (
            Config::default().with_max_age(Duration::ZERO),
            ConfigError::ZeroMaxAge,
        ),
        (
            Config::default().with_max_age(Duration::MAX),
            ConfigError::MaxAgeTooLarge {
                max_age: Duration::MAX,
            },
        ),
        (
            Config::default().with_max_sessions(0),
            ConfigError::ZeroMaxSessions,
        ),
        (
            Config::default().with_max_sessions(MAX_SESSIONS_LIMIT + 1),
            ConfigError::TooManySessionsAllowed {
                max_sessions: MAX_SESSIONS_LIMIT + 1,
                max: MAX_SESSIONS_LIMIT,
            },
        ),
    ];
    for (config, expected) in cases {
        assert_eq!(config.validate(), Err(expected.clone()));
        assert_eq!(
            ReplayStore::<u64>::new(config.clone()).unwrap_err(),
            expected
        );
        assert_eq!(
            ReplayStore::<u64>::builder()
                .config(config)
                .build()
                .unwrap_err(),
            expected
        );
    }
}

#[test]
fn the_extreme_valid_configurations_are_accepted() {
    for config in [
        Config::default().with_capacity(1),
        Config::default().with_capacity(MAX_CAPACITY),
        Config::default().with_max_age(Duration::from_nanos(1)),
        Config::default().with_max_sessions(1),
        Config::default().with_max_sessions(MAX_SESSIONS_LIMIT),
        Config::default().with_auto_sweep(false),
    ] {
        let store = ReplayStore::<u64>::new(config.clone()).unwrap();
        assert_eq!(store.config(), &config);
    }
    let defaults = Config::default();
    assert_eq!(defaults.capacity, 2048);
    assert_eq!(defaults.max_age, Duration::from_secs(120));
}

#[test]
fn a_capacity_of_one_keeps_only_the_newest_event() {
    let store = store_with_capacity(1);
    let k = key("t", "s");
    let events = append_all(&store, &k, [1, 2, 3]);
    assert_eq!(
        payloads(&expect_events(
            store.replay_after_cursor(&events[1].cursor())
        )),
        [3]
    );
    let gap = expect_gap(store.replay_after_cursor(&events[0].cursor()));
    assert_eq!(gap.missed, Some(1));
}

// ---------------------------------------------------------------------------
// The `serde` feature
// ---------------------------------------------------------------------------

#[cfg(feature = "serde")]
#[test]
fn a_cursor_round_trips_through_serde_json_as_its_wire_string() {
    let store = ReplayStore::<u64>::default();
    let k = key("ünï:code", "a/b.c");
    let cursor = store.append(&k, Revision(3), 1).unwrap().cursor();
    let json = serde_json::to_string(&cursor).unwrap();
    assert_eq!(json, serde_json::to_string(&cursor.to_string()).unwrap());
    let back: Cursor = serde_json::from_str(&json).unwrap();
    assert_eq!(back, cursor);
    assert!(serde_json::from_str::<Cursor>("\"not a cursor\"").is_err());
    assert!(serde_json::from_str::<Cursor>("42").is_err());
}
