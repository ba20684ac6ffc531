//! Loom models of a session's life: removal and eviction racing appends,
//! and `release_through` racing appends and replays (contract sections 4
//! and 5).
//!
//! The promise checked: an append that returned `Ok` is never silently
//! lost. Either it is replayable, or every cursor that could reach it reads
//! as a gap (`Unavailable` or `Reset`); and a new incarnation never serves
//! an old cursor's positions.
#![cfg(loom)]

use std::time::Duration;

use livereplay::{Arc, Cursor, Error, GapReason, Refusal, Revision, TryNextError};
use loom::thread;
use loom_tests::{check, expect_gap, key, positions, store, store_with_clock, tally, MAX_AGE};

/// Model 7a: `remove_session` races an append through a handle. The append
/// is either refused or lands in the removed incarnation, where the handle
/// can still replay it and the store answers its cursor with a gap; once a
/// new incarnation exists, old cursors read `Reset`, never as positions of
/// the new one.
#[test]
fn remove_racing_a_handle_append() {
    check("remove_racing_a_handle_append", || {
        let store = Arc::new(store(8));
        let key = key();
        let handle = store.session(&key).unwrap();
        let first = handle.append(Revision(1), 1).unwrap();
        let writer = {
            let handle = handle.clone();
            thread::spawn(move || handle.append(Revision(1), 2))
        };

        assert!(store.remove_session(&key));

        let raced = writer.join().unwrap();
        let old_run = handle.replay_after(&Cursor::start(key.clone())).unwrap();
        match &raced {
            Ok(second) => {
                assert_eq!(second.incarnation(), handle.incarnation());
                assert_eq!(second.position(), 2);
                assert_eq!(positions(&old_run), [1, 2], "the handle replays it");
                let gap = expect_gap(store.replay_after_cursor(&first.cursor()));
                assert_eq!(gap.reason, GapReason::Unavailable);
            }
            Err(error) => {
                assert_eq!(*error, Error::Refused(Refusal::SessionRemoved));
                assert_eq!(positions(&old_run), [1]);
            }
        }

        let reborn = store.append(&key, Revision(2), 3).unwrap();
        assert_ne!(reborn.incarnation(), handle.incarnation());
        assert_eq!(reborn.position(), 1);
        let old_cursors = [Some(first.cursor()), raced.ok().map(|e| e.cursor())];
        for cursor in old_cursors.iter().flatten() {
            let gap = expect_gap(store.replay_after_cursor(cursor));
            assert_eq!(
                gap.reason,
                GapReason::Reset,
                "never the new incarnation's events"
            );
            assert_eq!(gap.latest.incarnation(), Some(reborn.incarnation()));
        }
        assert_eq!(
            handle.append(Revision(1), 4).unwrap_err(),
            Error::Refused(Refusal::SessionRemoved)
        );
    });
}

/// Model 7d: `remove_session` races a batch append through a handle: the
/// batch is refused whole or lands whole in the removed incarnation (a
/// close never splits a batch's claim).
#[test]
fn remove_racing_a_batch_append() {
    check("remove_racing_a_batch_append", || {
        let store = store(8);
        let key = key();
        let handle = store.session(&key).unwrap();
        let writer = {
            let handle = handle.clone();
            thread::spawn(move || handle.append_batch(Revision(1), [1, 2]))
        };

        assert!(store.remove_session(&key));

        let raced = writer.join().unwrap();
        let replayed = handle.replay_after(&Cursor::start(key.clone())).unwrap();
        match raced {
            Ok(batch) => {
                assert_eq!(positions(&batch), [1, 2]);
                assert_eq!(positions(&replayed), [1, 2], "the batch landed whole");
            }
            Err(error) => {
                assert_eq!(error, Error::Refused(Refusal::SessionRemoved));
                assert!(replayed.is_empty(), "a refused batch stored nothing");
            }
        }
        assert!(!store.contains_session(&key));
    });
}

/// Checks, after an eviction raced an append that returned `appended`,
/// that the append is replayable by key, and that the cursor of the expired
/// event `expired` reads `Reset` if the append started a new incarnation.
fn assert_append_survived(
    store: &livereplay::ReplayStore<u64>,
    expired: &livereplay::Event<u64>,
    appended: &Arc<livereplay::Event<u64>>,
) {
    let key = appended.key();
    let replayed = store
        .replay_after_position(key, appended.position() - 1)
        .expect("an append that returned Ok is replayable by key");
    assert_eq!(replayed.len(), 1);
    assert!(Arc::ptr_eq(&replayed[0], appended));
    assert_eq!(
        store.current_cursor(key).incarnation(),
        Some(appended.incarnation())
    );
    let after_expired = store.replay_after_cursor(&expired.cursor());
    if appended.incarnation() == expired.incarnation() {
        assert_eq!(appended.position(), 2);
        assert_eq!(positions(&after_expired.unwrap()), [2]);
    } else {
        assert_eq!(appended.position(), 1);
        assert_eq!(expect_gap(after_expired).reason, GapReason::Reset);
    }
}

/// Model 7b: `trim_session` evicting an expired session races an append by
/// key. The append is never eaten by the eviction.
#[test]
fn eviction_racing_an_append_by_key() {
    check("eviction_racing_an_append_by_key", || {
        let (store, clock) = store_with_clock(8);
        let store = Arc::new(store);
        let key = key();
        let expired = store.append(&key, Revision(1), 1).unwrap();
        clock.advance(MAX_AGE + Duration::from_secs(1));
        let writer = {
            let (store, key) = (Arc::clone(&store), key.clone());
            thread::spawn(move || store.append(&key, Revision(2), 2).unwrap())
        };

        store.trim_session(&key);

        let appended = writer.join().unwrap();
        assert_append_survived(&store, &expired, &appended);
    });
}

/// Model 7c: `sweep` racing an append through a handle taken just before:
/// a session someone holds is never evicted, so the append stays
/// replayable by key.
#[test]
fn sweep_racing_a_handle_append() {
    check("sweep_racing_a_handle_append", || {
        let (store, clock) = store_with_clock(8);
        let store = Arc::new(store);
        let key = key();
        let expired = store.append(&key, Revision(1), 1).unwrap();
        clock.advance(MAX_AGE + Duration::from_secs(1));
        let writer = {
            let (store, key) = (Arc::clone(&store), key.clone());
            thread::spawn(move || {
                let handle = store.session(&key).unwrap();
                handle.append(Revision(2), 2).unwrap()
            })
        };

        store.sweep();

        let appended = writer.join().unwrap();
        assert_append_survived(&store, &expired, &appended);
    });
}

/// Model 8: `release_through` from two threads (watermarks 2 and 1) races
/// an append and replays. A replay that starts after a release returned
/// never yields a position at or below its watermark, a subscriber never
/// finds an already published position empty, a lower watermark never
/// lowers the floor, and every released event is counted once.
#[test]
fn release_through_is_monotonic_and_hides_what_it_released() {
    check(
        "release_through_is_monotonic_and_hides_what_it_released",
        || {
            let store = Arc::new(store(8));
            let key = key();
            let handle = store.session(&key).unwrap();
            let one = handle.append(Revision(1), 1).unwrap();
            handle.append(Revision(1), 2).unwrap();
            let mut reading = store.subscribe_after_cursor(&one.cursor()).unwrap();
            let mut idle = store.subscribe_after_cursor(&one.cursor()).unwrap();
            let writer = thread::spawn(move || handle.append(Revision(1), 3).unwrap());
            let releaser = {
                let (store, key) = (Arc::clone(&store), key.clone());
                thread::spawn(move || {
                    let freed = store.release_through(&key, 2);
                    for after in [0, 1] {
                        let gap = expect_gap(store.replay_after_position(&key, after));
                        assert_eq!(gap.reason, GapReason::Trimmed);
                    }
                    let rest = store.replay_after_position(&key, 2).unwrap();
                    assert!(positions(&rest).iter().all(|&p| p == 3));
                    freed
                })
            };

            match reading.try_next() {
                Ok(event) => assert_eq!(event.position(), 2),
                Err(TryNextError::Gap(gap)) => assert_eq!(gap.reason, GapReason::Trimmed),
                Err(other) => panic!("position 2 is published: read it or a gap, not {other:?}"),
            }
            let freed_here = store.release_through(&key, 1);
            assert_eq!(
                expect_gap(store.replay_after_position(&key, 0)).reason,
                GapReason::Trimmed
            );
            match store.replay_after_position(&key, 1) {
                Ok(events) => assert_eq!(
                    positions(&events),
                    (2..2 + events.len() as u64).collect::<Vec<_>>()
                ),
                Err(error) => {
                    assert_eq!(expect_gap(Err::<(), _>(error)).reason, GapReason::Trimmed)
                }
            }

            let freed_there = releaser.join().unwrap();
            writer.join().unwrap();
            assert_eq!(freed_here + freed_there, 2, "each event is freed once");
            match idle.try_next() {
                Err(TryNextError::Gap(gap)) => assert_eq!(gap.reason, GapReason::Trimmed),
                other => panic!("position 2 was released: expected a gap, got {other:?}"),
            }
            let gap = expect_gap(store.replay_after_position(&key, 1));
            assert_eq!(gap.reason, GapReason::Trimmed, "the higher watermark holds");
            assert_eq!(gap.missed, Some(1));
            assert_eq!(gap.latest.position(), 3);
            assert_eq!(
                positions(&store.replay_after_position(&key, 2).unwrap()),
                [3]
            );
            assert_eq!(store.release_through(&key, 2), 0);
        },
    );
}

/// Model 8b: with capacity 2 a storage segment holds two positions, so
/// `release_through(2)` frees the whole first segment while a subscriber
/// and a replay may be reading it and a writer appends position 3. Readers
/// get position 1's own event or a `Trimmed` gap, never an empty answer for
/// a published position; after the release returned, nothing at or below 2
/// is served.
#[test]
fn release_through_frees_a_segment_under_readers() {
    check("release_through_frees_a_segment_under_readers", || {
        let store = Arc::new(store(2));
        let key = key();
        let handle = store.session(&key).unwrap();
        let one = handle.append(Revision(1), 1).unwrap();
        handle.append(Revision(1), 2).unwrap();
        let mut reading = handle.subscribe_after(&Cursor::start(key.clone())).unwrap();
        let mut idle = handle.subscribe_after(&Cursor::start(key.clone())).unwrap();
        let writer = thread::spawn(move || handle.append(Revision(1), 3).unwrap());
        let releaser = {
            let (store, key) = (Arc::clone(&store), key.clone());
            thread::spawn(move || {
                store.release_through(&key, 2);
                let rest = store.replay_after_position(&key, 2).unwrap();
                assert!(positions(&rest).iter().all(|&p| p == 3));
                let gap = expect_gap(store.replay_after_position(&key, 1));
                assert_eq!(gap.reason, GapReason::Trimmed);
            })
        };

        match reading.try_next() {
            Ok(event) => assert!(Arc::ptr_eq(&event, &one)),
            Err(TryNextError::Gap(gap)) => assert_eq!(gap.reason, GapReason::Trimmed),
            Err(other) => panic!("position 1 is published: read it or a gap, not {other:?}"),
        }
        match store.replay_after_position(&key, 0) {
            Ok(events) => assert_eq!(
                positions(&events),
                (1..=events.len() as u64).collect::<Vec<_>>()
            ),
            Err(error) => assert_eq!(expect_gap(Err::<(), _>(error)).reason, GapReason::Trimmed),
        }

        releaser.join().unwrap();
        let three = writer.join().unwrap();
        match idle.try_next() {
            Err(TryNextError::Gap(gap)) => assert_eq!(gap.reason, GapReason::Trimmed),
            other => panic!("positions 1 and 2 were released: expected a gap, got {other:?}"),
        }
        let rest = store.replay_after_position(&key, 2).unwrap();
        assert_eq!(rest.len(), 1);
        assert!(Arc::ptr_eq(&rest[0], &three));
        assert_eq!(store.event_count(&key), 1);
    });
}

/// Model 8c: model 8b's release of a whole segment, racing a replay that
/// lends the events in place (`replay_with`) and a writer appending 3. The
/// loan is a run from 1 of the writers' own events, each read as written,
/// or a `Trimmed` gap (its closure never runs then); once the release
/// returned, no loan holds a position at or below 2.
#[test]
fn release_through_frees_a_segment_under_a_loan() {
    check("release_through_frees_a_segment_under_a_loan", || {
        let store = Arc::new(store(2));
        let key = key();
        let handle = store.session(&key).unwrap();
        handle.append(Revision(1), 1).unwrap();
        handle.append(Revision(1), 2).unwrap();
        let writer = thread::spawn(move || handle.append(Revision(1), 3).unwrap());
        let releaser = {
            let (store, key) = (Arc::clone(&store), key.clone());
            thread::spawn(move || {
                store.release_through(&key, 2);
                let after = Cursor::new(key.clone(), None, Revision(1), 0);
                let gap = expect_gap(store.replay_with(&after, |_| panic!("lent after a gap")));
                assert_eq!(gap.reason, GapReason::Trimmed);
                let rest = Cursor::new(key, None, Revision(1), 2);
                let lent = store
                    .replay_with(&rest, |events| {
                        events.map(|e| e.position()).collect::<Vec<_>>()
                    })
                    .unwrap();
                assert!(lent.iter().all(|&p| p == 3), "nothing at or below 2");
            })
        };

        let lent = store.replay_with(&Cursor::start(key.clone()), |events| {
            events
                .map(|event| (event.position(), *event.payload()))
                .collect::<Vec<_>>()
        });
        match lent {
            Ok(lent) => {
                tally(if lent.is_empty() {
                    "lent nothing"
                } else {
                    "lent a run"
                });
                for (index, &(position, payload)) in lent.iter().enumerate() {
                    assert_eq!(position, index as u64 + 1, "a run from 1");
                    assert_eq!(payload, position, "each event as its writer wrote it");
                }
            }
            Err(error) => {
                tally("gap");
                assert_eq!(expect_gap(Err::<(), _>(error)).reason, GapReason::Trimmed);
            }
        }

        releaser.join().unwrap();
        writer.join().unwrap();
    });
}

/// Model 7e: a handle appends and is dropped while a sweep decides whether
/// the session is empty. The sweep may evict only after seeing the handle
/// gone (the holder count, Acquire against the handle's Release), and then
/// it sees the append too: the event stays replayable, whether the session
/// stayed resident or turned dormant and was revived. (Loom cannot see the
/// `Arc` count's orderings; the holder count is what this model checks.)
#[test]
fn a_dropped_handles_last_append_survives_a_sweep() {
    check("a_dropped_handles_last_append_survives_a_sweep", || {
        let store = Arc::new(store(8));
        let key = key();
        let handle = store.session(&key).unwrap();
        let first = handle.append(Revision(1), 1).unwrap();
        // Empty the ring: the session is evictable as soon as nobody holds it.
        assert_eq!(handle.release_through(1), 1);
        let writer = thread::spawn(move || {
            let second = handle.append(Revision(1), 2).unwrap();
            drop(handle);
            second
        });
        store.sweep();
        let second = writer.join().unwrap();
        let rest = store.replay_after_cursor(&first.cursor()).unwrap();
        assert_eq!(
            positions(&rest),
            [second.position()],
            "the last append survived"
        );
        assert_eq!(store.current_cursor(&key), second.cursor());
    });
}

/// Model 7f: like 7e, but the handle is dropped on another thread than the
/// one that appended through it (a handle is `Send`: handed to a thread
/// that then lets it go; the join is that hand-over). The appender's
/// SeqCst fence (the doorbell's, at the end of every publish) comes before
/// its own thread's later accesses only, not before the dropper's holder
/// decrement; so only that decrement's Release (`Session::let_go`),
/// carried on by the join, orders the append before a sweep that reads
/// the holder count at 0. In 7e the appender drops its own handle, and the
/// fence, sequenced before that Relaxed-or-not decrement, already
/// synchronises with the sweep's Acquire: why 7e cannot catch a Relaxed
/// `let_go` (loom-tests/README.md).
#[test]
fn a_handle_dropped_on_another_thread_keeps_its_append() {
    check(
        "a_handle_dropped_on_another_thread_keeps_its_append",
        || {
            let store = Arc::new(store(8));
            let key = key();
            let handle = store.session(&key).unwrap();
            let first = handle.append(Revision(1), 1).unwrap();
            // Empty the ring: the session is evictable as soon as nobody holds it.
            assert_eq!(handle.release_through(1), 1);
            let writer = thread::spawn(move || {
                let second = handle.append(Revision(1), 2).unwrap();
                (handle, second)
            });
            let dropper = thread::spawn(move || {
                let (handle, second) = writer.join().unwrap();
                drop(handle);
                second
            });
            store.sweep();
            let second = dropper.join().unwrap();
            let rest = store.replay_after_cursor(&first.cursor()).unwrap();
            assert_eq!(
                positions(&rest),
                [second.position()],
                "the last append survived"
            );
            assert_eq!(store.current_cursor(&key), second.cursor());
        },
    );
}
