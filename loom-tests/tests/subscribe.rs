//! Loom models of subscriptions: the seam between buffered and live events
//! when a subscribe races an append, and the doorbell that wakes a parked
//! subscriber, blocking (`next_timeout`) and async (`Stream`) (contract
//! section 6).
//!
//! Under loom, `next_timeout` waits without a timeout, so a lost wake-up is
//! reported by loom as a deadlock: these models fail on one rather than
//! pass by timing out.
#![cfg(loom)]

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::time::Duration;

use futures_core::Stream;
use livereplay::{
    Arc, CloseReason, Cursor, Error, Event, GapReason, NextTimeoutError, Refusal, Revision,
    Subscription, TryNextError,
};
use loom::thread;
use loom_tests::{check, key, store};

/// Long enough never to expire; under loom the wait has no timeout anyway.
const FOREVER: Duration = Duration::from_secs(3600);

/// The next item of a stream (`StreamExt::next`, written out so the models
/// need nothing but `futures-core`).
fn next<S: Stream + Unpin>(stream: &mut S) -> impl Future<Output = Option<S::Item>> + '_ {
    poll_fn(move |cx| Pin::new(&mut *stream).poll_next(cx))
}

/// Model 4a: subscribing from the start of a session that does not exist
/// yet races the append that creates it. The subscriber gets the event
/// exactly once, whether it was buffered when it subscribed or live after.
#[test]
fn subscribe_racing_the_first_append_sees_it_once() {
    check("subscribe_racing_the_first_append_sees_it_once", || {
        let store = Arc::new(store(8));
        let key = key();
        let writer = {
            let (store, key) = (Arc::clone(&store), key.clone());
            thread::spawn(move || store.append(&key, Revision(1), 7).unwrap())
        };

        let mut subscription = store
            .subscribe_after_cursor(&Cursor::start(key.clone()))
            .unwrap();
        let during = subscription.try_next();

        let appended = writer.join().unwrap();
        let after = [subscription.try_next(), subscription.try_next()];
        let delivered: Vec<_> = [during].into_iter().chain(after).flatten().collect();
        assert_eq!(delivered.len(), 1, "delivered exactly once");
        assert!(Arc::ptr_eq(&delivered[0], &appended));
        assert_eq!(subscription.try_next().unwrap_err(), TryNextError::Empty);
    });
}

/// Model 4b: subscribing after a cursor of an existing session races an
/// append through a handle: the raced event is delivered exactly once.
#[test]
fn subscribe_after_a_cursor_racing_an_append_sees_it_once() {
    check(
        "subscribe_after_a_cursor_racing_an_append_sees_it_once",
        || {
            let store = store(8);
            let key = key();
            let handle = store.session(&key).unwrap();
            let first = handle.append(Revision(1), 1).unwrap();
            let writer = {
                let handle = handle.clone();
                thread::spawn(move || handle.append(Revision(1), 2).unwrap())
            };

            let mut subscription = store.subscribe_after_cursor(&first.cursor()).unwrap();
            let during = subscription.try_next();

            let second = writer.join().unwrap();
            let after = [subscription.try_next(), subscription.try_next()];
            let delivered: Vec<_> = [during].into_iter().chain(after).flatten().collect();
            assert_eq!(delivered.len(), 1, "delivered exactly once");
            assert!(Arc::ptr_eq(&delivered[0], &second));
        },
    );
}

/// A writer appends twice while the subscriber, from the start, waits for
/// each event with `wait`: it gets both, in order, the very events the
/// writer got back, and is not counted as parked afterwards.
fn woken_by_two_appends(wait: impl Fn(&mut Subscription<u64>) -> Arc<Event<u64>>) {
    let store = store(8);
    let key = key();
    let handle = store.session(&key).unwrap();
    let mut subscription = handle.subscribe_after(&Cursor::start(key)).unwrap();
    let writer = thread::spawn(move || {
        let first = handle.append(Revision(1), 1).unwrap();
        let second = handle.append(Revision(1), 2).unwrap();
        (first, second)
    });

    let woken = [wait(&mut subscription), wait(&mut subscription)];

    let (first, second) = writer.join().unwrap();
    assert!(Arc::ptr_eq(&woken[0], &first));
    assert!(Arc::ptr_eq(&woken[1], &second));
    assert_eq!(
        store.stats().parked_subscribers,
        0,
        "every arm was disarmed: writers pay nothing for a subscriber that stopped waiting"
    );
}

/// Model 5a: a subscriber blocked in `next_timeout` is woken by each of two
/// appends it has not seen, in order (a lost wake-up is a loom deadlock).
#[test]
fn a_parked_subscriber_is_woken_by_every_append() {
    check("a_parked_subscriber_is_woken_by_every_append", || {
        woken_by_two_appends(|subscription| subscription.next_timeout(FOREVER).unwrap());
    });
}

/// Model 5b: the async path. A `Stream` polled by loom's `block_on` is
/// woken through its waker by an append it has not seen.
#[test]
fn a_pending_stream_is_woken_by_an_append() {
    check("a_pending_stream_is_woken_by_an_append", || {
        let store = store(8);
        let key = key();
        let handle = store.session(&key).unwrap();
        let mut subscription = handle.subscribe_after(&Cursor::start(key)).unwrap();
        let writer = thread::spawn(move || handle.append(Revision(1), 1).unwrap());

        let item = loom::future::block_on(next(&mut subscription));

        let appended = writer.join().unwrap();
        let event = item
            .expect("the stream has not ended")
            .expect("nothing is trimmed");
        assert!(Arc::ptr_eq(&event, &appended));
        assert_eq!(subscription.try_next().unwrap_err(), TryNextError::Empty);
        assert_eq!(store.stats().parked_subscribers, 0, "the stream disarmed");
    });
}

/// Model 5e: a `Stream` woken by two appends in a row: the second wait
/// arms afresh after the first disarmed, and re-checks before `Pending`.
#[test]
fn a_stream_is_woken_by_every_append() {
    check("a_stream_is_woken_by_every_append", || {
        woken_by_two_appends(|subscription| {
            loom::future::block_on(next(subscription))
                .expect("not ended")
                .expect("nothing is trimmed")
        });
    });
}

/// Model 5c: removing the session wakes a parked subscriber, which ends
/// with a `Reset` gap rather than waiting forever.
#[test]
fn removing_the_session_wakes_a_parked_subscriber() {
    check("removing_the_session_wakes_a_parked_subscriber", || {
        let store = Arc::new(store(8));
        let key = key();
        let mut subscription = store
            .subscribe_after_cursor(&Cursor::start(key.clone()))
            .unwrap();
        let remover = {
            let (store, key) = (Arc::clone(&store), key.clone());
            thread::spawn(move || store.remove_session(&key))
        };

        let woken = subscription.next_timeout(FOREVER);

        assert!(remover.join().unwrap(), "the session existed");
        match woken {
            Err(NextTimeoutError::Gap(gap)) => assert_eq!(gap.reason, GapReason::Reset),
            other => panic!("expected a Reset gap, got {other:?}"),
        }
        assert!(subscription.is_ended());
    });
}

/// Model 5f: closing the session races an append through a handle while a
/// subscriber is parked in `next_timeout`. The append lands before the
/// closure (and the closure's last position is its) or is refused naming
/// the closure; the subscriber is woken, gets every position through the
/// closure's last, the one in flight included, and ends with the closure
/// itself, never with a removal's `Reset` gap. Mutations
/// `close-seals-outside-lock` (the reader can find the ring sealed before
/// the closure is recorded) and `closed-reader-skips-in-flight` (it ends
/// at the closure without waiting for an append claimed before the seal)
/// each fail it.
#[test]
fn close_racing_an_append_ends_a_parked_subscriber_after_everything() {
    check(
        "close_racing_an_append_ends_a_parked_subscriber_after_everything",
        || {
            let store = Arc::new(store(8));
            let key = key();
            let handle = store.session(&key).unwrap();
            let mut subscription = store
                .subscribe_after_cursor(&Cursor::start(key.clone()))
                .unwrap();
            let writer = {
                let handle = handle.clone();
                thread::spawn(move || handle.append(Revision(1), 1))
            };
            let closer = thread::spawn(move || handle.close(CloseReason::Cancelled));

            let mut delivered = Vec::new();
            let ended = loop {
                match subscription.next_timeout(FOREVER) {
                    Ok(event) => delivered.push(event.position()),
                    Err(NextTimeoutError::Closed(closure)) => break closure,
                    Err(other) => panic!("expected the events, then the closure: {other:?}"),
                }
            };

            let closure = closer.join().unwrap().unwrap();
            assert_eq!(ended, closure, "the reader ends with the closure");
            match writer.join().unwrap() {
                Ok(event) => assert_eq!(closure.last, event.position()),
                Err(error) => {
                    assert_eq!(error, Error::Refused(Refusal::SessionClosed { closure }));
                    assert_eq!(closure.last, 0);
                }
            }
            assert_eq!(delivered, (1..=closure.last).collect::<Vec<_>>());
            assert_eq!(subscription.closure(), Some(closure));
        },
    );
}

/// Model 5d: two subscribers parked in `next_timeout` on their own threads
/// are both woken by one append (the doorbell wakes every armed listener),
/// and neither stays counted as parked.
#[test]
fn one_append_wakes_every_parked_subscriber() {
    check("one_append_wakes_every_parked_subscriber", || {
        let store = store(8);
        let key = key();
        let handle = store.session(&key).unwrap();
        let subscribers: Vec<_> = (0..2)
            .map(|_| {
                let mut subscription = handle.subscribe_after(&Cursor::start(key.clone())).unwrap();
                thread::spawn(move || subscription.next_timeout(FOREVER).unwrap())
            })
            .collect();

        let appended = handle.append(Revision(1), 1).unwrap();

        for subscriber in subscribers {
            assert!(Arc::ptr_eq(&subscriber.join().unwrap(), &appended));
        }
        assert_eq!(store.stats().parked_subscribers, 0);
    });
}
