//! Faults from the outside: payloads whose `Drop` panics (when the ring
//! overwrites, trims, sweeps or removes them, or when a caller drops a
//! replay result), a payload whose `Clone` panics, a subscriber thread that
//! panics while holding events, and hosts that drop subscriptions while
//! writers are ringing them.
//!
//! After each fault the store must stay usable for that session and every
//! other one (append, replay, subscribe), its statistics must stay right
//! (no subscriber or session counted that is gone), and nothing may leak:
//! every payload ever built is dropped once the store is.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Waker};
use std::thread;
use std::time::{Duration, Instant};

use futures_core::Stream;
use livereplay::{
    Config, Cursor, GapReason, ManualClock, ReplayStore, Revision, SessionKey, TryNextError,
};

/// A payload that counts its live instances and can refuse to be dropped
/// (or cloned).
#[derive(Debug)]
struct Probe {
    live: Arc<AtomicUsize>,
    id: u64,
    panic_on_drop: bool,
}

impl Probe {
    fn new(live: &Arc<AtomicUsize>, id: u64) -> Self {
        live.fetch_add(1, SeqCst);
        Self {
            live: Arc::clone(live),
            id,
            panic_on_drop: false,
        }
    }

    fn panicking(live: &Arc<AtomicUsize>, id: u64) -> Self {
        let mut probe = Self::new(live, id);
        probe.panic_on_drop = true;
        probe
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.live.fetch_sub(1, SeqCst);
        // Never a second panic while unwinding: that would abort the test
        // binary instead of exercising the store.
        if self.panic_on_drop && !thread::panicking() {
            panic!("payload {} panics in Drop", self.id);
        }
    }
}

impl Clone for Probe {
    fn clone(&self) -> Self {
        panic!("the store cloned payload {}", self.id)
    }
}

fn key(session: &str) -> SessionKey {
    SessionKey::new("acme", session).unwrap()
}

fn store_with(config: Config) -> (ReplayStore<Probe>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    let store = ReplayStore::builder()
        .config(config)
        .clock(clock.clone())
        .build()
        .unwrap();
    (store, clock)
}

/// Runs store calls, catching the payload Drop panics they let through.
///
/// When a payload is dropped depends on the ring (it frees memory a
/// segment at a time, when a lap or a trim takes the segment out, or when
/// the session goes), so tests do not say which call panics: they count
/// panics, and check after every call that the store is consistent.
#[derive(Default)]
struct Guard {
    panics: usize,
}

impl Guard {
    fn run<R>(&mut self, f: impl FnOnce() -> R) -> Option<R> {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(value) => Some(value),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .unwrap_or_default();
                assert!(
                    message.contains("panics in Drop"),
                    "unexpected panic: {message:?}"
                );
                self.panics += 1;
                None
            }
        }
    }
}

/// The session still appends, replays and subscribes, and the store's
/// subscriber count is back to what the caller holds (none).
fn assert_usable(store: &ReplayStore<Probe>, key: &SessionKey, live: &Arc<AtomicUsize>) {
    let before = store.current_cursor(key);
    let mut subscription = store.subscribe_after_cursor(&before).unwrap();
    let appended = store
        .append(key, Revision(9), Probe::new(live, 9_000))
        .unwrap();
    assert_eq!(appended.position(), before.position() + 1);
    let replayed = store.replay_after_cursor(&before).unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].payload().id, 9_000);
    assert_eq!(subscription.try_next().unwrap().payload().id, 9_000);
    assert_eq!(subscription.try_next().unwrap_err(), TryNextError::Empty);
    drop(subscription);
    let stats = store.stats();
    assert_eq!(stats.subscribers, 0);
    assert_eq!(stats.parked_subscribers, 0);
}

/// Dropping the store drops every payload it still holds, and every
/// panicking payload panicked exactly once over the test.
fn assert_no_leak(
    store: ReplayStore<Probe>,
    live: &Arc<AtomicUsize>,
    mut guard: Guard,
    panicking: usize,
) {
    guard.run(move || drop(store));
    assert_eq!(live.load(SeqCst), 0, "payloads outlived the store");
    assert_eq!(
        guard.panics, panicking,
        "each panicking payload was dropped exactly once"
    );
}

/// A panic in a lapped payload's Drop must not cost the append that lapped
/// it its place: every claimed position is published, or the session's
/// tail would stop there for good.
///
/// (Failed with the first segment ring, 452a091: the displaced segment was
/// dropped before the new event was written, so the panic left a hole that
/// stalled the tail for good. Fixed in 9cc5313.)
#[test]
fn a_payload_panicking_when_the_ring_laps_it() {
    let live = Arc::new(AtomicUsize::new(0));
    let mut guard = Guard::default();
    let (store, _clock) = store_with(Config::default().with_capacity(2));
    let (victim, bystander) = (key("victim"), key("bystander"));
    store
        .append(&bystander, Revision(1), Probe::new(&live, 100))
        .unwrap();
    store
        .append(&victim, Revision(1), Probe::panicking(&live, 1))
        .unwrap();
    for position in 2..=40 {
        guard.run(|| store.append(&victim, Revision(1), Probe::new(&live, position)));
        assert_eq!(
            store.latest_position(&victim),
            Some(position),
            "position {position} was claimed but never published"
        );
    }
    assert_eq!(guard.panics, 1, "the lap dropped the panicking payload");
    let replayed = store.replay_after_position(&victim, 38).unwrap();
    assert_eq!(
        replayed.iter().map(|e| e.payload().id).collect::<Vec<_>>(),
        [39, 40]
    );
    drop(replayed);

    // Batches: published whole even when their lap panics.
    store
        .append(&victim, Revision(2), Probe::panicking(&live, 41))
        .unwrap();
    let mut appended = 41;
    for _ in 0..20 {
        let batch = [
            Probe::new(&live, appended + 1),
            Probe::new(&live, appended + 2),
        ];
        guard.run(|| store.append_batch(&victim, Revision(2), batch));
        appended += 2;
        assert_eq!(
            store.latest_position(&victim),
            Some(appended),
            "a batch was claimed but not published whole"
        );
    }
    assert_eq!(guard.panics, 2);
    assert_eq!(store.stats().appends, 1 + appended);
    assert_usable(&store, &victim, &live);
    assert_usable(&store, &bystander, &live);
    assert_no_leak(store, &live, guard, 2);
}

#[test]
fn a_payload_panicking_when_a_release_or_an_age_trim_frees_it() {
    let live = Arc::new(AtomicUsize::new(0));
    let mut guard = Guard::default();
    let (store, clock) = store_with(
        Config::default()
            .with_capacity(8)
            .with_max_age(Duration::from_secs(10)),
    );
    let victim = key("victim");
    // 19 events in a window of 8: no position is lapped before a trim has
    // freed it, so the only drops are the trims' (and the store's).
    for id in 1..=16 {
        let probe = if id == 1 || id == 9 {
            Probe::panicking(&live, id)
        } else {
            Probe::new(&live, id)
        };
        store.append(&victim, Revision(1), probe).unwrap();
        if id == 12 {
            // The window holds 5..=12; releasing through 8 trims 5..=8.
            let released = guard.run(|| store.release_through(&victim, 8));
            assert!(matches!(released, Some(4) | None), "{released:?}");
            assert_eq!(store.event_count(&victim), 4);
            assert_eq!(guard.run(|| store.release_through(&victim, 8)), Some(0));
            let gap = store.replay_after_position(&victim, 0).unwrap_err();
            assert_eq!(gap.as_gap().unwrap().missed, Some(8));
        }
    }
    clock.advance(Duration::from_secs(11));
    for id in 17..=19 {
        store
            .append(&victim, Revision(1), Probe::new(&live, id))
            .unwrap();
    }
    // 9..=16 expired: the trim takes them.
    guard.run(|| store.trim_session(&victim));
    assert_eq!(store.event_count(&victim), 3);
    assert_eq!(guard.run(|| store.trim_session(&victim)), Some(0));
    let fresh = store.replay_after_position(&victim, 16).unwrap();
    assert_eq!(
        fresh.iter().map(|e| e.payload().id).collect::<Vec<_>>(),
        [17, 18, 19]
    );
    drop(fresh);
    assert!(store.contains_session(&victim));
    assert_usable(&store, &victim, &live);
    // However the ring frees memory, each panicking payload panicked once.
    assert_no_leak(store, &live, guard, 2);
}

#[test]
fn a_replay_result_whose_payload_panics_when_the_caller_drops_it() {
    let live = Arc::new(AtomicUsize::new(0));
    let mut guard = Guard::default();
    let (store, _clock) = store_with(Config::default().with_capacity(4));
    let victim = key("victim");
    store
        .append(&victim, Revision(1), Probe::panicking(&live, 1))
        .unwrap();
    store
        .append(&victim, Revision(1), Probe::new(&live, 2))
        .unwrap();
    let replayed = store.replay_after_position(&victim, 0).unwrap();
    // The store lets go of everything while the caller holds the events, so
    // the last reference (and the panic) is the caller's.
    assert!(store.remove_session(&victim));
    assert_eq!(live.load(SeqCst), 2);
    guard.run(move || drop(replayed));
    assert_eq!(guard.panics, 1);
    assert_eq!(
        live.load(SeqCst),
        0,
        "the other event of the result was dropped too"
    );
    assert_usable(&store, &victim, &live);
    assert_no_leak(store, &live, guard, 1);
}

#[test]
fn payloads_are_moved_never_cloned() {
    // `Probe::clone` panics: any clone in append, batch, replay, subscribe,
    // trims or the store's drop would fail this test.
    let live = Arc::new(AtomicUsize::new(0));
    let (store, clock) = store_with(
        Config::default()
            .with_capacity(4)
            .with_max_age(Duration::from_secs(1)),
    );
    let k = key("s");
    let session = store.session(&k).unwrap();
    let mut subscription = store
        .subscribe_after_cursor(&Cursor::start(k.clone()))
        .unwrap();
    session.append(Revision(1), Probe::new(&live, 1)).unwrap();
    store.append(&k, Revision(1), Probe::new(&live, 2)).unwrap();
    store
        .append_batch(&k, Revision(1), (3..6).map(|i| Probe::new(&live, i)))
        .unwrap();
    // Five events in four slots: the subscriber from the start lags.
    assert!(matches!(
        subscription.try_next(),
        Err(TryNextError::Gap(gap)) if gap.reason == GapReason::Trimmed && gap.missed == Some(1)
    ));
    let replayed = store.replay_after_position(&k, 1).unwrap();
    assert_eq!(replayed.len(), 4);
    clock.advance(Duration::from_secs(2));
    assert_eq!(session.trim(), 4);
    drop((replayed, session, subscription));
    assert_eq!(store.sweep(), 1);
    assert_eq!(live.load(SeqCst), 0);
    assert_no_leak(store, &live, Guard::default(), 0);
}

/// A sweep that evicts some sessions and then hits a panicking payload
/// must still count the ones it evicted: otherwise `stats().sessions`
/// stays high forever and `max_sessions` refuses creations the store has
/// room for. (Failed before 9cc5313.)
#[test]
fn a_payload_panicking_while_a_sweep_evicts_other_sessions() {
    const IDLE: usize = 40;
    let live = Arc::new(AtomicUsize::new(0));
    let mut guard = Guard::default();
    // Room for exactly the sessions of one round, so a session counted
    // after it was evicted would show as a refusal to create new ones.
    let (store, clock) = store_with(
        Config::default()
            .with_capacity(4)
            .with_max_age(Duration::from_secs(10))
            .with_max_sessions(IDLE + 1)
            .with_auto_sweep(false),
    );
    let mut evicted_before_the_panic = 0;
    let mut rounds = 0;
    for round in 0..10 {
        rounds += 1;
        let idle: Vec<SessionKey> = (0..IDLE)
            .map(|i| key(&format!("r{round}-idle-{i}")))
            .collect();
        let victim = key(&format!("r{round}-victim"));
        for (i, k) in idle.iter().enumerate() {
            store
                .append(k, Revision(1), Probe::new(&live, i as u64))
                .unwrap();
        }
        store
            .append(&victim, Revision(1), Probe::panicking(&live, 999))
            .unwrap();
        clock.advance(Duration::from_secs(11));
        let panics_before = guard.panics;
        guard.run(|| store.sweep());
        assert_eq!(
            guard.panics,
            panics_before + 1,
            "round {round}: the sweep dropped it"
        );
        let gone = idle.iter().filter(|k| !store.is_resident(k)).count();
        evicted_before_the_panic += gone;
        let remaining = IDLE - gone + usize::from(store.is_resident(&victim));
        // The panic interrupted the sweep; the next one finishes it.
        assert_eq!(store.sweep(), remaining, "round {round}");
        let stats = store.stats();
        assert_eq!(stats.retained_events, 0, "round {round}");
        assert_eq!(
            stats.sessions, 0,
            "round {round}: sessions counted after eviction"
        );
        assert_eq!(
            stats.evicted_sessions,
            ((round + 1) * (IDLE + 1)) as u64,
            "round {round}"
        );
        if evicted_before_the_panic > 0 && round >= 1 {
            break;
        }
    }
    assert!(
        evicted_before_the_panic > 0,
        "the panicking session was always swept first; the test proved nothing"
    );
    // The bound still admits a full set of sessions.
    for i in 0..=IDLE {
        store
            .append(
                &key(&format!("after-{i}")),
                Revision(1),
                Probe::new(&live, 0),
            )
            .unwrap();
    }
    assert_usable(&store, &key("after-0"), &live);
    assert_no_leak(store, &live, guard, rounds);
}

#[test]
fn a_payload_panicking_when_its_session_is_removed_or_the_store_dropped() {
    let live = Arc::new(AtomicUsize::new(0));
    let mut guard = Guard::default();
    let (store, _clock) = store_with(Config::default().with_capacity(4));
    let (victim, bystander) = (key("victim"), key("bystander"));
    store
        .append(&bystander, Revision(1), Probe::new(&live, 100))
        .unwrap();
    store
        .append(&victim, Revision(1), Probe::panicking(&live, 1))
        .unwrap();
    store
        .append(&victim, Revision(1), Probe::new(&live, 2))
        .unwrap();
    assert_eq!(
        guard.run(|| store.remove_session(&victim)),
        None,
        "removal dropped it"
    );
    assert!(!store.contains_session(&victim));
    assert_eq!(store.stats().sessions, 1);
    assert_eq!(live.load(SeqCst), 1, "only the bystander's payload is left");
    assert_usable(&store, &victim, &live);
    assert_usable(&store, &bystander, &live);

    // With one session left the whole ring unwinds through the panic.
    // (With several, the hash table holding them stops dropping at the
    // first panicking element, as std's `HashMap` does, and leaks the rest:
    // memory-safe, but see the report of issue #6.)
    assert!(store.remove_session(&victim));
    store
        .append(&bystander, Revision(1), Probe::panicking(&live, 3))
        .unwrap();
    assert_no_leak(store, &live, guard, 2);
}

#[test]
fn a_subscriber_thread_panicking_while_holding_events() {
    let live = Arc::new(AtomicUsize::new(0));
    let (store, _clock) = store_with(Config::default().with_capacity(64));
    let store = Arc::new(store);
    let k = key("s");
    for i in 0..5 {
        store.append(&k, Revision(1), Probe::new(&live, i)).unwrap();
    }
    let subscriber = {
        let store = Arc::clone(&store);
        let k = k.clone();
        thread::spawn(move || {
            let mut subscription = store.subscribe_after_cursor(&Cursor::start(k)).unwrap();
            let held: Vec<_> = (0..3).map(|_| subscription.try_next().unwrap()).collect();
            // Park once so the panic happens with the doorbell armed too.
            let _ = subscription.next_timeout(Duration::ZERO);
            panic!("subscriber gives up holding {} events", held.len());
        })
    };
    assert!(subscriber.join().is_err(), "the subscriber thread panicked");
    let stats = store.stats();
    assert_eq!(
        stats.subscribers, 0,
        "its subscription was dropped while unwinding"
    );
    assert_eq!(stats.parked_subscribers, 0);
    assert_eq!(store.replay_after_position(&k, 0).unwrap().len(), 5);
    assert_usable(&store, &k, &live);
    let store = Arc::into_inner(store).expect("the thread released its reference");
    assert_no_leak(store, &live, Guard::default(), 0);
}

#[test]
fn hosts_dropping_subscriptions_while_writers_ring() {
    const SUBSCRIBERS: usize = 4;
    const ROUNDS: usize = 50;
    let live = Arc::new(AtomicUsize::new(0));
    let (store, _clock) = store_with(Config::default().with_capacity(256));
    let store = Arc::new(store);
    let k = key("busy");
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let subscribers: Vec<_> = (0..SUBSCRIBERS)
        .map(|s| {
            let (store, k, done) = (Arc::clone(&store), k.clone(), Arc::clone(&done));
            thread::spawn(move || {
                let mut delivered = 0;
                for round in 0..ROUNDS {
                    let mut subscription = store
                        .subscribe_after_cursor(&store.current_cursor(&k))
                        .unwrap();
                    // Wait for one or two live events (parked, so the
                    // writers ring this subscription), then drop it at once,
                    // possibly while a writer is in the middle of waking it.
                    for _ in 0..1 + (round + s) % 2 {
                        match subscription.next_timeout(Duration::from_secs(10)) {
                            Ok(_) => delivered += 1,
                            // Lapped by the writers: also a way to leave.
                            Err(livereplay::NextTimeoutError::Gap(_)) => break,
                            Err(other) => panic!("subscriber {s}: {other:?}"),
                        }
                    }
                }
                done.fetch_add(1, SeqCst);
                delivered
            })
        })
        .collect();
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let (store, k, live, stop) = (
                Arc::clone(&store),
                k.clone(),
                Arc::clone(&live),
                Arc::clone(&stop),
            );
            thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut appended = 0u64;
                while !stop.load(SeqCst) && Instant::now() < deadline {
                    store
                        .append(&k, Revision(w), Probe::new(&live, appended))
                        .unwrap();
                    appended += 1;
                    if appended.is_multiple_of(64) {
                        thread::yield_now();
                    }
                }
                appended
            })
        })
        .collect();
    // An async host polls a stream once (arming it) and drops it while the
    // writers keep ringing.
    while done.load(SeqCst) < SUBSCRIBERS {
        // The writers may lap the ring between the two calls (on a loaded
        // machine, or before the session exists, from the start cursor):
        // then the cursor is `Trimmed`, as the contract says, and the host
        // tries again.
        let mut stream = match store.subscribe_after_cursor(&store.current_cursor(&k)) {
            Ok(stream) => stream,
            Err(livereplay::Error::Gap(gap)) if gap.reason == livereplay::GapReason::Trimmed => {
                thread::yield_now();
                continue;
            }
            Err(other) => panic!("subscribe at the current cursor: {other}"),
        };
        let mut context = Context::from_waker(Waker::noop());
        // Pending (armed) or an event, depending on timing: either way the
        // stream is dropped while the writers keep ringing.
        let _ = std::pin::Pin::new(&mut stream).poll_next(&mut context);
        drop(stream);
        thread::yield_now();
    }
    let delivered: usize = subscribers.into_iter().map(|t| t.join().unwrap()).sum();
    stop.store(true, SeqCst);
    let appended: u64 = writers.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(delivered > 0, "subscribers were woken");
    assert!(appended > 0);
    let stats = store.stats();
    assert_eq!(stats.subscribers, 0);
    assert_eq!(stats.parked_subscribers, 0);
    assert_eq!(stats.appends, appended);
    assert_usable(&store, &k, &live);
    assert_usable(&store, &key("other"), &live);
    let store = Arc::into_inner(store).expect("every thread released its reference");
    assert_no_leak(store, &live, Guard::default(), 0);
}
