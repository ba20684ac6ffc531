//! Subscriptions, CONTRACT.md section 6: every event after the cursor
//! exactly once, buffered then live with no seam; one gap then the end for
//! a subscriber that falls behind; a non-blocking `try_next`, a blocking
//! `next_timeout`, and a runtime-agnostic `Stream`.
//!
//! Waiting is only ever for another thread, bounded by a generous timeout
//! whose expiry fails the test; assertions are on values, never on how long
//! something took. Age is moved with a `ManualClock`.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use futures_core::Stream;
use livereplay::{
    Config, Cursor, Error, Event, GapReason, ManualClock, NextTimeoutError, ReplayStore, Revision,
    SessionKey, Subscription, Timestamp, TryNextError,
};

const MAX_AGE: Duration = Duration::from_secs(10);

/// How long a test waits for another thread before it gives up and fails.
const PATIENCE: Duration = Duration::from_secs(10);

fn key(tenant: &str, session: &str) -> SessionKey {
    SessionKey::new(tenant, session).expect("a valid key")
}

fn store_with_capacity(capacity: usize) -> ReplayStore<u64> {
    ReplayStore::new(Config::default().with_capacity(capacity)).expect("a valid config")
}

fn aging_store() -> (ReplayStore<u64>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    let store = ReplayStore::builder()
        .config(Config::default().with_max_age(MAX_AGE))
        .clock(clock.clone())
        .build()
        .expect("a valid config");
    (store, clock)
}

fn subscribe_from_start<T: Send + Sync + 'static>(
    store: &ReplayStore<T>,
    key: &SessionKey,
) -> Subscription<T> {
    store
        .subscribe_after_cursor(&Cursor::start(key.clone()))
        .expect("subscribe")
}

/// Drains what `try_next` yields now, as payloads, up to the first `Empty`.
fn drain(subscription: &mut Subscription<u64>) -> Vec<u64> {
    let mut payloads = Vec::new();
    loop {
        match subscription.try_next() {
            Ok(event) => payloads.push(*event.payload()),
            Err(TryNextError::Empty) => return payloads,
            Err(other) => panic!("expected events or Empty, got {other:?}"),
        }
    }
}

/// Waits (bounded) until `count` subscribers of the store are parked.
/// Returns whether that happened in time.
fn wait_until_parked<T: Send + Sync + 'static>(store: &ReplayStore<T>, count: usize) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if store.stats().parked_subscribers == count {
            return true;
        }
        thread::sleep(Duration::from_millis(1));
    }
    false
}

fn expect_gap_error(error: Error) -> livereplay::Gap {
    match error {
        Error::Gap(gap) => gap,
        other => panic!("expected a gap, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Buffered, then live, with no seam
// ---------------------------------------------------------------------------

#[test]
fn buffered_then_live_events_arrive_exactly_once_in_order() {
    let store = ReplayStore::<u64>::default();
    let k = key("t", "s");
    for payload in 1..=3 {
        store.append(&k, Revision(1), payload).unwrap();
    }
    let mut subscription = subscribe_from_start(&store, &k);
    for payload in 4..=6 {
        store.append(&k, Revision(1), payload).unwrap();
    }
    assert_eq!(drain(&mut subscription), [1, 2, 3, 4, 5, 6]);
    store.append(&k, Revision(1), 7).unwrap();
    assert_eq!(drain(&mut subscription), [7]);
    assert_eq!(subscription.cursor(), &store.current_cursor(&k));
    assert!(!subscription.is_ended());
}

#[test]
fn a_subscription_after_a_cursor_starts_right_after_it() {
    let store = ReplayStore::<u64>::default();
    let k = key("t", "s");
    let events: Vec<_> = (1..=5)
        .map(|payload| store.append(&k, Revision(1), payload).unwrap())
        .collect();
    let mut subscription = store.subscribe_after_cursor(&events[1].cursor()).unwrap();
    assert_eq!(subscription.cursor(), &events[1].cursor());
    assert_eq!(drain(&mut subscription), [3, 4, 5]);
    assert_eq!(subscription.cursor(), &events[4].cursor());
}

#[test]
fn a_subscription_at_the_tail_yields_only_live_events() {
    let store = ReplayStore::<u64>::default();
    let k = key("t", "s");
    store.append(&k, Revision(1), 1).unwrap();
    let mut subscription = store
        .subscribe_after_cursor(&store.current_cursor(&k))
        .unwrap();
    assert_eq!(subscription.try_next().unwrap_err(), TryNextError::Empty);
    let live = store.append(&k, Revision(2), 2).unwrap();
    let received = subscription.try_next().unwrap();
    assert!(Arc::ptr_eq(&received, &live));
    assert_eq!(subscription.try_next().unwrap_err(), TryNextError::Empty);
}

#[test]
fn subscribing_before_the_session_exists_receives_the_first_append() {
    let store = ReplayStore::<u64>::default();
    let k = key("t", "not-yet");
    let mut subscription = subscribe_from_start(&store, &k);
    assert_eq!(subscription.try_next().unwrap_err(), TryNextError::Empty);
    // Crate-doc choice: the subscription created the session, so the
    // runtime's first append lands in the incarnation it listens to.
    assert!(store.contains_session(&k));
    let first = store.append(&k, Revision(1), 1).unwrap();
    assert_eq!(first.position(), 1);
    let received = subscription.try_next().unwrap();
    assert_eq!(received.position(), 1);
    assert_eq!(subscription.cursor(), &first.cursor());
}

#[test]
fn a_batch_reaches_a_subscriber_whole_and_in_order() {
    let store = ReplayStore::<u64>::default();
    let k = key("t", "s");
    let mut subscription = subscribe_from_start(&store, &k);
    store.append_batch(&k, Revision(1), [1, 2, 3]).unwrap();
    store.append(&k, Revision(1), 4).unwrap();
    assert_eq!(drain(&mut subscription), [1, 2, 3, 4]);
}

#[test]
fn appends_racing_the_subscribe_call_are_neither_lost_nor_repeated() {
    const EVENTS: u64 = 1000;
    let store = Arc::new(ReplayStore::<u64>::default()); // capacity 2048: no trimming
    let k = key("t", "s");
    let writer = {
        let (store, k) = (Arc::clone(&store), k.clone());
        thread::spawn(move || {
            for payload in 1..=EVENTS {
                store.append(&k, Revision(1), payload).unwrap();
            }
        })
    };
    // Subscribe while the writer runs: some events are buffered by then,
    // the rest arrive live.
    let mut subscription = subscribe_from_start(&store, &k);
    let mut received = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while (received.len() as u64) < EVENTS && Instant::now() < deadline {
        match subscription.next_timeout(Duration::from_millis(100)) {
            Ok(event) => {
                assert_eq!(event.position(), *event.payload());
                received.push(*event.payload());
            }
            Err(NextTimeoutError::Timeout) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    writer.join().unwrap();
    assert_eq!(received, (1..=EVENTS).collect::<Vec<_>>());
    assert_eq!(subscription.try_next().unwrap_err(), TryNextError::Empty);
}

// ---------------------------------------------------------------------------
// Subscribe checks its cursor like a replay
// ---------------------------------------------------------------------------

#[test]
fn subscribe_refuses_the_cursors_replay_refuses() {
    let store = store_with_capacity(2);
    let k = key("t", "s");
    let events: Vec<_> = (1..=5)
        .map(|payload| store.append(&k, Revision(1), payload).unwrap())
        .collect();

    let trimmed = expect_gap_error(
        store
            .subscribe_after_cursor(&events[0].cursor())
            .unwrap_err(),
    );
    assert_eq!(
        (trimmed.reason, trimmed.missed),
        (GapReason::Trimmed, Some(2))
    );
    assert_eq!(trimmed.latest, events[4].cursor());

    let ahead = Cursor::new(k.clone(), Some(events[0].incarnation()), Revision(1), 9);
    let unavailable = expect_gap_error(store.subscribe_after_cursor(&ahead).unwrap_err());
    assert_eq!(unavailable.reason, GapReason::Unavailable);

    let unknown = key("t", "unknown");
    let at_three = Cursor::new(unknown.clone(), None, Revision(1), 3);
    let unavailable = expect_gap_error(store.subscribe_after_cursor(&at_three).unwrap_err());
    assert_eq!(unavailable.reason, GapReason::Unavailable);
    assert!(
        !store.contains_session(&unknown),
        "a refused subscribe creates nothing"
    );

    store.remove_session(&k);
    store.append(&k, Revision(1), 10).unwrap();
    let reset = expect_gap_error(
        store
            .subscribe_after_cursor(&events[4].cursor())
            .unwrap_err(),
    );
    assert_eq!(reset.reason, GapReason::Reset);
    assert_eq!(store.stats().subscribers, 0);
}

// ---------------------------------------------------------------------------
// Lag: one gap, then the end
// ---------------------------------------------------------------------------

#[test]
fn a_subscriber_overrun_by_capacity_gets_one_trimmed_gap_then_ends() {
    let store = store_with_capacity(4);
    let k = key("t", "s");
    let mut subscription = subscribe_from_start(&store, &k);
    let events: Vec<_> = (1..=10)
        .map(|payload| store.append(&k, Revision(1), payload).unwrap())
        .collect();

    let TryNextError::Gap(gap) = subscription.try_next().unwrap_err() else {
        panic!("expected a gap")
    };
    assert_eq!(gap.reason, GapReason::Trimmed);
    assert_eq!(gap.requested.position(), 0);
    assert_eq!(gap.missed, Some(6), "positions 1..=6 were overwritten");
    assert_eq!(gap.latest, events[9].cursor());
    assert!(subscription.is_ended());
    for _ in 0..3 {
        assert_eq!(subscription.try_next().unwrap_err(), TryNextError::Ended);
    }
    assert_eq!(
        subscription
            .next_timeout(Duration::from_millis(1))
            .unwrap_err(),
        NextTimeoutError::Ended
    );
    assert_eq!(store.stats().lagged_subscribers, 1);

    // The latest cursor is where a fresh subscription picks up.
    let mut resubscribed = store.subscribe_after_cursor(&gap.latest).unwrap();
    assert_eq!(resubscribed.try_next().unwrap_err(), TryNextError::Empty);
    store.append(&k, Revision(1), 11).unwrap();
    assert_eq!(drain(&mut resubscribed), [11]);
}

#[test]
fn a_subscriber_that_read_some_events_reports_what_it_missed_after_them() {
    let store = store_with_capacity(4);
    let k = key("t", "s");
    let mut subscription = subscribe_from_start(&store, &k);
    store.append(&k, Revision(1), 1).unwrap();
    let second = store.append(&k, Revision(1), 2).unwrap();
    assert_eq!(drain(&mut subscription), [1, 2]);
    for payload in 3..=12 {
        store.append(&k, Revision(1), payload).unwrap();
    }
    // Retained: 9..=12; 3..=8 are gone.
    let TryNextError::Gap(gap) = subscription.try_next().unwrap_err() else {
        panic!("expected a gap")
    };
    assert_eq!(gap.reason, GapReason::Trimmed);
    assert_eq!(gap.requested, second.cursor());
    assert_eq!(gap.missed, Some(6));
    assert_eq!(gap.latest.position(), 12);
    assert_eq!(subscription.try_next().unwrap_err(), TryNextError::Ended);
}

#[test]
fn a_subscriber_behind_by_age_gets_one_trimmed_gap_then_ends() {
    let (store, clock) = aging_store();
    let k = key("t", "s");
    let mut subscription = subscribe_from_start(&store, &k);
    let first = store.append(&k, Revision(1), 1).unwrap();
    assert_eq!(subscription.try_next().unwrap().position(), 1);
    assert_eq!(subscription.try_next().unwrap_err(), TryNextError::Empty);
    store.append(&k, Revision(1), 2).unwrap();
    let last = store.append(&k, Revision(1), 3).unwrap();

    // Having caught up, the subscription checks what comes next against a
    // fresh clock reading.
    clock.advance(MAX_AGE + Duration::from_secs(1));
    let TryNextError::Gap(gap) = subscription.try_next().unwrap_err() else {
        panic!("expected a gap")
    };
    assert_eq!(gap.reason, GapReason::Trimmed);
    assert_eq!(gap.requested, first.cursor());
    assert_eq!(gap.missed, Some(2), "positions 2 and 3 aged out");
    assert_eq!(gap.latest, last.cursor());
    assert_eq!(subscription.try_next().unwrap_err(), TryNextError::Ended);
    assert_eq!(store.stats().lagged_subscribers, 1);
}

/// One clock reading checks a run of at most 16 events: an event that aged
/// out after its run began is still yielded, the 17th is checked against a
/// new reading.
#[test]
fn a_run_of_events_is_checked_against_one_clock_reading_and_is_at_most_16_long() {
    let (store, clock) = aging_store();
    let k = key("t", "s");
    let mut subscription = subscribe_from_start(&store, &k);
    for payload in 1..=20 {
        store.append(&k, Revision(1), payload).unwrap();
    }
    assert_eq!(subscription.try_next().unwrap().position(), 1);

    clock.advance(MAX_AGE + Duration::from_secs(1));
    for position in 2..=16 {
        assert_eq!(subscription.try_next().unwrap().position(), position);
    }
    let TryNextError::Gap(gap) = subscription.try_next().unwrap_err() else {
        panic!("expected a gap: the 17th event starts a run with a new reading")
    };
    assert_eq!(gap.reason, GapReason::Trimmed);
    assert_eq!(gap.requested.position(), 16);
    assert_eq!(gap.missed, Some(4), "positions 17 to 20 aged out");
    assert_eq!(store.stats().lagged_subscribers, 1);
}

/// See the contract test of the same situation: a later position with an
/// older timestamp (several writers, or a wall clock stepping back).
#[test]
fn a_subscriber_whose_next_event_ages_out_before_the_last_one_gets_a_sane_gap() {
    let (store, clock) = aging_store();
    let k = key("t", "s");
    let mut subscription = subscribe_from_start(&store, &k);
    clock.set(Timestamp::from_nanos(100_000_000_000));
    store.append(&k, Revision(1), 1).unwrap();
    clock.set(Timestamp::from_nanos(90_000_000_000));
    let second = store.append(&k, Revision(1), 2).unwrap();
    clock.set(Timestamp::from_nanos(101_000_000_000));
    assert_eq!(subscription.try_next().unwrap().position(), 1);
    let TryNextError::Gap(gap) = subscription.try_next().unwrap_err() else {
        panic!("expected a gap")
    };
    assert_eq!(gap.reason, GapReason::Trimmed);
    assert!(
        gap.missed.is_none_or(|missed| missed == 1),
        "only position 2 is missed, not {:?}",
        gap.missed
    );
    assert_eq!(gap.latest, second.cursor());
}

#[test]
fn a_stream_yields_the_gap_once_then_ends() {
    let store = store_with_capacity(2);
    let k = key("t", "s");
    let mut subscription = subscribe_from_start(&store, &k);
    for payload in 1..=5 {
        store.append(&k, Revision(1), payload).unwrap();
    }
    let mut cx = Context::from_waker(Waker::noop());
    let mut stream = Pin::new(&mut subscription);
    match stream.as_mut().poll_next(&mut cx) {
        Poll::Ready(Some(Err(gap))) => {
            assert_eq!((gap.reason, gap.missed), (GapReason::Trimmed, Some(3)))
        }
        other => panic!("expected a gap, got {other:?}"),
    }
    assert!(matches!(
        stream.as_mut().poll_next(&mut cx),
        Poll::Ready(None)
    ));
    assert!(matches!(
        stream.as_mut().poll_next(&mut cx),
        Poll::Ready(None)
    ));
}

// ---------------------------------------------------------------------------
// Blocking wait with a timeout
// ---------------------------------------------------------------------------

#[test]
fn next_timeout_is_woken_by_an_append_from_another_thread() {
    let store = Arc::new(ReplayStore::<u64>::default());
    let k = key("t", "s");
    let mut subscription = subscribe_from_start(&store, &k);
    let writer = {
        let (store, k) = (Arc::clone(&store), k.clone());
        thread::spawn(move || {
            // Append once the subscriber is parked, so the wake-up is what
            // delivers the event (appending anyway if it never parks).
            let saw_parked = wait_until_parked(&store, 1);
            store.append(&k, Revision(1), 42).unwrap();
            saw_parked
        })
    };
    let event = subscription.next_timeout(PATIENCE).unwrap();
    assert_eq!(*event.payload(), 42);
    assert!(writer.join().unwrap(), "the subscriber never parked");
    assert_eq!(store.stats().parked_subscribers, 0);
}

/// `Duration::MAX` waits with no timer: the wake-up alone must deliver.
/// The wait runs on its own thread so that a lost wake-up fails the test
/// after `PATIENCE` instead of hanging it.
#[test]
fn next_timeout_without_a_deadline_is_woken_by_an_append() {
    let store = Arc::new(ReplayStore::<u64>::default());
    let k = key("t", "s");
    let mut subscription = subscribe_from_start(&store, &k);
    let (delivered, received) = std::sync::mpsc::channel();
    let waiter = thread::spawn(move || {
        let result = subscription.next_timeout(Duration::MAX);
        let _ = delivered.send(result.map(|event| *event.payload()));
    });
    assert!(wait_until_parked(&store, 1), "the subscriber never parked");
    store.append(&k, Revision(1), 42).unwrap();
    let payload = received
        .recv_timeout(PATIENCE)
        .expect("woken within PATIENCE")
        .unwrap();
    assert_eq!(payload, 42);
    waiter.join().unwrap();
    assert_eq!(store.stats().parked_subscribers, 0);
}

#[test]
fn next_timeout_times_out_when_nothing_comes_and_stays_usable() {
    let store = ReplayStore::<u64>::default();
    let k = key("t", "s");
    store.append(&k, Revision(1), 1).unwrap();
    let mut subscription = subscribe_from_start(&store, &k);
    assert_eq!(
        *subscription
            .next_timeout(Duration::from_millis(20))
            .unwrap()
            .payload(),
        1,
        "a buffered event is returned without waiting"
    );
    assert_eq!(
        subscription
            .next_timeout(Duration::from_millis(20))
            .unwrap_err(),
        NextTimeoutError::Timeout
    );
    assert_eq!(
        subscription.next_timeout(Duration::ZERO).unwrap_err(),
        NextTimeoutError::Timeout
    );
    assert_eq!(store.stats().parked_subscribers, 0);
    store.append(&k, Revision(1), 2).unwrap();
    assert_eq!(
        *subscription
            .next_timeout(Duration::from_millis(20))
            .unwrap()
            .payload(),
        2
    );
}

#[test]
fn next_timeout_reports_a_gap_then_the_end() {
    let store = store_with_capacity(1);
    let k = key("t", "s");
    let mut subscription = subscribe_from_start(&store, &k);
    store.append(&k, Revision(1), 1).unwrap();
    store.append(&k, Revision(1), 2).unwrap();
    let NextTimeoutError::Gap(gap) = subscription
        .next_timeout(Duration::from_millis(20))
        .unwrap_err()
    else {
        panic!("expected a gap")
    };
    assert_eq!((gap.reason, gap.missed), (GapReason::Trimmed, Some(1)));
    assert_eq!(
        subscription
            .next_timeout(Duration::from_millis(20))
            .unwrap_err(),
        NextTimeoutError::Ended
    );
}

// ---------------------------------------------------------------------------
// The Stream implementation, polled by hand and by an executor
// ---------------------------------------------------------------------------

/// A waker that counts its wake-ups.
#[derive(Default)]
struct CountingWaker {
    wakes: AtomicUsize,
}

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_stream_polled_with_a_noop_waker_is_pending_then_ready_after_an_append() {
    let store = ReplayStore::<u64>::default();
    let k = key("t", "s");
    let mut subscription = subscribe_from_start(&store, &k);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(Pin::new(&mut subscription).poll_next(&mut cx).is_pending());
    assert_eq!(store.stats().parked_subscribers, 1);
    store.append(&k, Revision(1), 7).unwrap();
    match Pin::new(&mut subscription).poll_next(&mut cx) {
        Poll::Ready(Some(Ok(event))) => assert_eq!(*event.payload(), 7),
        other => panic!("expected the event, got {other:?}"),
    }
    assert_eq!(store.stats().parked_subscribers, 0);
}

#[test]
fn a_pending_stream_is_woken_by_an_append_and_then_yields_it() {
    let store = ReplayStore::<u64>::default();
    let k = key("t", "s");
    let mut subscription = subscribe_from_start(&store, &k);
    let counter = Arc::new(CountingWaker::default());
    let waker = Waker::from(Arc::clone(&counter));
    let mut cx = Context::from_waker(&waker);

    assert!(Pin::new(&mut subscription).poll_next(&mut cx).is_pending());
    assert_eq!(counter.wakes.load(Ordering::SeqCst), 0);
    store.append(&k, Revision(1), 1).unwrap();
    assert!(
        counter.wakes.load(Ordering::SeqCst) >= 1,
        "the append did not wake the pending stream"
    );
    match Pin::new(&mut subscription).poll_next(&mut cx) {
        Poll::Ready(Some(Ok(event))) => assert_eq!(event.position(), 1),
        other => panic!("expected the event, got {other:?}"),
    }

    // Not pending any more: the next append owes it no wake-up.
    let wakes_after_ready = counter.wakes.load(Ordering::SeqCst);
    store.append(&k, Revision(1), 2).unwrap();
    assert_eq!(counter.wakes.load(Ordering::SeqCst), wakes_after_ready);
    match Pin::new(&mut subscription).poll_next(&mut cx) {
        Poll::Ready(Some(Ok(event))) => assert_eq!(event.position(), 2),
        other => panic!("expected the event, got {other:?}"),
    }
    assert!(Pin::new(&mut subscription).poll_next(&mut cx).is_pending());
}

#[tokio::test]
async fn a_stream_driven_by_an_executor_receives_events_from_a_writer_thread() {
    use futures_util::StreamExt;

    let store = Arc::new(ReplayStore::<u64>::default());
    let k = key("t", "s");
    let mut subscription = subscribe_from_start(&store, &k);
    let writer = {
        let (store, k) = (Arc::clone(&store), k.clone());
        thread::spawn(move || {
            let saw_parked = wait_until_parked(&store, 1);
            for payload in 1..=3 {
                store.append(&k, Revision(1), payload).unwrap();
            }
            saw_parked
        })
    };
    let mut received = Vec::new();
    while received.len() < 3 {
        let next = tokio::time::timeout(PATIENCE, subscription.next())
            .await
            .expect("no event within the patience bound");
        let event: Arc<Event<u64>> = next.expect("the stream ended").expect("a gap");
        received.push(*event.payload());
    }
    assert_eq!(received, [1, 2, 3]);
    assert!(writer.join().unwrap(), "the stream never parked");
}

// ---------------------------------------------------------------------------
// Removal, dropping, and keeping the session alive
// ---------------------------------------------------------------------------

#[test]
fn remove_session_ends_a_subscriber_with_a_reset_after_what_was_published() {
    let store = ReplayStore::<u64>::default();
    let k = key("t", "s");
    let mut subscription = subscribe_from_start(&store, &k);
    let mut last = None;
    for payload in 1..=3 {
        last = Some(store.append(&k, Revision(1), payload).unwrap());
    }
    assert!(store.remove_session(&k));
    // What was published before the removal is still delivered...
    assert_eq!(
        (0..3)
            .map(|_| *subscription.try_next().unwrap().payload())
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    // ...then one Reset gap, then the end.
    let TryNextError::Gap(gap) = subscription.try_next().unwrap_err() else {
        panic!("expected a gap")
    };
    assert_eq!(gap.reason, GapReason::Reset);
    assert_eq!(gap.requested, last.unwrap().cursor());
    assert_eq!(subscription.try_next().unwrap_err(), TryNextError::Ended);
}

#[test]
fn remove_session_wakes_a_parked_subscriber_with_a_reset() {
    let store = Arc::new(ReplayStore::<u64>::default());
    let k = key("t", "s");
    let mut subscription = subscribe_from_start(&store, &k);
    let remover = {
        let (store, k) = (Arc::clone(&store), k.clone());
        thread::spawn(move || {
            let saw_parked = wait_until_parked(&store, 1);
            assert!(store.remove_session(&k));
            saw_parked
        })
    };
    let NextTimeoutError::Gap(gap) = subscription.next_timeout(PATIENCE).unwrap_err() else {
        panic!("expected a gap")
    };
    assert_eq!(gap.reason, GapReason::Reset);
    assert!(remover.join().unwrap(), "the subscriber never parked");
    assert!(subscription.is_ended());
}

#[test]
fn dropping_subscriptions_updates_the_subscriber_figures() {
    let store = ReplayStore::<u64>::default();
    let k = key("t", "s");
    let mut parked = subscribe_from_start(&store, &k);
    let idle = subscribe_from_start(&store, &k);
    assert_eq!(store.stats().subscribers, 2);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(Pin::new(&mut parked).poll_next(&mut cx).is_pending());
    assert_eq!(store.stats().parked_subscribers, 1);

    drop(parked);
    let stats = store.stats();
    assert_eq!((stats.subscribers, stats.parked_subscribers), (1, 0));
    drop(idle);
    let stats = store.stats();
    assert_eq!((stats.subscribers, stats.parked_subscribers), (0, 0));
    // Appends afterwards find nobody to wake.
    store.append(&k, Revision(1), 1).unwrap();
    assert_eq!(store.stats().parked_subscribers, 0);
}

#[test]
fn a_subscription_keeps_its_session_from_being_evicted() {
    let (store, clock) = aging_store();
    let k = key("t", "s");
    let mut subscription = subscribe_from_start(&store, &k);
    let first = store.append(&k, Revision(1), 1).unwrap();
    assert_eq!(drain(&mut subscription), [1]);

    clock.advance(MAX_AGE + Duration::from_secs(1));
    assert_eq!(store.trim_session(&k), 1);
    assert_eq!(store.sweep(), 0);
    assert!(store.is_resident(&k));
    // The next append continues the incarnation the subscriber listens to.
    let second = store.append(&k, Revision(1), 2).unwrap();
    assert_eq!(second.incarnation(), first.incarnation());
    assert_eq!(drain(&mut subscription), [2]);

    drop(subscription);
    clock.advance(MAX_AGE + Duration::from_secs(1));
    assert_eq!(store.sweep(), 1);
    assert!(!store.is_resident(&k), "evicted once nobody holds it");
}
