//! Loom models of the append path: concurrent writers claiming positions,
//! lapping a small ring, the published tail behind `current_cursor`, and
//! batches becoming visible all at once (contract sections 2, 3 and 5).
//!
//! Each model runs the crate's real ring code under `--cfg loom` and asserts
//! the contract's promise for every interleaving loom explores, not merely
//! that nothing panics.
#![cfg(loom)]

use livereplay::{Arc, Cursor, Event, GapReason, ReplayStore, Revision, SessionKey, TryNextError};
use loom::thread;
use loom_tests::{check, expect_gap, key, positions, store, tally};

/// The one of `candidates` that is the very event object `event` is.
fn is_one_of(event: &Arc<Event<u64>>, candidates: &[&Arc<Event<u64>>]) -> bool {
    candidates
        .iter()
        .any(|candidate| Arc::ptr_eq(event, candidate) && candidate.position() == event.position())
}

/// Model 1: two writers (one through a handle, one by key) and a reader
/// replaying from the start. Positions are unique and contiguous; the
/// reader gets a contiguous run from 1 of exactly the events the writers
/// were handed back; afterwards a replay holds both.
#[test]
fn two_writers_and_a_replayer() {
    check("two_writers_and_a_replayer", || {
        let store = Arc::new(store(8));
        let key = key();
        let handle = store.session(&key).unwrap();
        let by_handle = thread::spawn(move || handle.append(Revision(1), 100).unwrap());
        let by_key = {
            let (store, key) = (Arc::clone(&store), key.clone());
            thread::spawn(move || store.append(&key, Revision(2), 200).unwrap())
        };

        let seen = store
            .replay_after_cursor(&Cursor::start(key.clone()))
            .expect("nothing is trimmed, so a replay from the start succeeds");

        let a = by_handle.join().unwrap();
        let b = by_key.join().unwrap();
        tally(match (seen.len(), seen.first().map(|e| *e.payload())) {
            (0, _) => "replay empty",
            (1, Some(100)) => "replay [handle's]",
            (1, _) => "replay [by key's]",
            (_, Some(100)) => "replay [handle's, by key's]",
            _ => "replay [by key's, handle's]",
        });
        let mut claimed = [a.position(), b.position()];
        claimed.sort_unstable();
        assert_eq!(claimed, [1, 2], "positions are unique and contiguous");

        assert_eq!(
            positions(&seen),
            (1..=seen.len() as u64).collect::<Vec<_>>(),
            "a replay is a contiguous run from 1"
        );
        assert!(seen.iter().all(|event| is_one_of(event, &[&a, &b])));

        let all = store.replay_after_cursor(&Cursor::start(key)).unwrap();
        assert_eq!(positions(&all), [1, 2]);
        assert!(all.iter().all(|event| is_one_of(event, &[&a, &b])));
    });
}

/// Model 1b: two writers and a reader, all through handles (no map lock
/// between them, unlike model 1, whose by-key writer and replayer are
/// ordered by the map's lock). The writer of position 2 may find the hint
/// already raised to 1 by the writer of 1 and raise it to 2 with a plain
/// store, without reading slot 1; a reader that acquires that 2 trusts
/// slot 1 too. Only that writer's Acquire load of the hint
/// (`Ring::advance_past`) carries the other writer's slot into its Release
/// store, so that the reader's replay from the start is a contiguous run
/// from 1 of the writers' own events, never a `Trimmed` gap.
///
/// The reader takes its own handle after the spawns, and not only for
/// realism: the clone touches the holder count, which each writer's handle
/// touches last, when its thread ends. Without that access loom never
/// runs the writers' hint stores before the reader's first load of the
/// hint: its DPOR remembers one last access per atomic, and each writer
/// loads the hint just before it stores it, which hides the reader's
/// earlier load (tokio-rs/loom#166, #392). With it, loom explores the
/// writers finishing before the replay (see loom-tests/README.md).
#[test]
fn a_writer_hands_the_hint_on_over_another_writers_slot() {
    check(
        "a_writer_hands_the_hint_on_over_another_writers_slot",
        || {
            let store = store(8);
            let key = key();
            let handle = store.session(&key).unwrap();
            let (first, second) = (handle.clone(), handle.clone());
            let first = thread::spawn(move || first.append(Revision(1), 100).unwrap());
            let second = thread::spawn(move || second.append(Revision(1), 200).unwrap());

            // The reader takes a handle of its own (see above), then replays.
            let reader = handle.clone();
            let seen = reader
                .replay_after(&Cursor::start(key))
                .expect("nothing is trimmed, so a replay from the start succeeds");

            let a = first.join().unwrap();
            let b = second.join().unwrap();
            assert_eq!(
                positions(&seen),
                (1..=seen.len() as u64).collect::<Vec<_>>(),
                "a replay is a contiguous run from 1"
            );
            assert!(seen.iter().all(|event| is_one_of(event, &[&a, &b])));
        },
    );
}

/// Events as the writers of a model got them back.
type Events = Vec<Arc<Event<u64>>>;

/// Models 2a and 2c: a capacity-1 store holding position 1, and two
/// writers racing for positions 2, 3 and 4: one appends once through a
/// handle, the other twice by key. Returns the store, the key, event 1,
/// and a join of the writers that gives their events in position order.
fn lapping_writers() -> (
    Arc<ReplayStore<u64>>,
    SessionKey,
    Arc<Event<u64>>,
    impl FnOnce() -> Events,
) {
    let store = Arc::new(store(1));
    let key = key();
    let handle = store.session(&key).unwrap();
    let first = handle.append(Revision(1), 1).unwrap();
    let once = thread::spawn(move || vec![handle.append(Revision(1), 100).unwrap()]);
    let twice = {
        let (store, key) = (Arc::clone(&store), key.clone());
        thread::spawn(move || {
            let a = store.append(&key, Revision(2), 200).unwrap();
            let b = store.append(&key, Revision(2), 201).unwrap();
            vec![a, b]
        })
    };
    let join_writers = move || {
        let mut appended = once.join().unwrap();
        appended.extend(twice.join().unwrap());
        appended.sort_by_key(|event| event.position());
        appended
    };
    (store, key, first, join_writers)
}

/// Model 2a: capacity 1, position 1 already stored; one writer appends
/// once and another twice, so positions 2, 3 and 4 race, and the writer of
/// 4 may lap the writer of 2 (same storage place) before 2 is in. A
/// concurrent replay after 1 gets event 2 or nothing, or a `Trimmed` gap;
/// never another position's event posing as the run after 1. Afterwards
/// the newest event is readable at its place, never the older one it
/// lapped.
#[test]
fn lapping_writers_keep_the_newest_event() {
    check("lapping_writers_keep_the_newest_event", || {
        let (store, key, first, join_writers) = lapping_writers();

        let after_first = store.replay_after_cursor(&first.cursor());

        let appended = join_writers();
        assert_eq!(positions(&appended), [2, 3, 4]);
        match after_first {
            Ok(events) if events.is_empty() => {}
            Ok(events) => {
                assert_eq!(events.len(), 1, "capacity 1 holds one event");
                assert!(
                    is_one_of(&events[0], &[&appended[0]]),
                    "the run after 1 is 2"
                );
            }
            Err(error) => assert_eq!(expect_gap(Err::<(), _>(error)).reason, GapReason::Trimmed),
        }

        assert_eq!(store.current_cursor(&key).position(), 4);
        let last = store.replay_after_position(&key, 3).unwrap();
        assert_eq!(last.len(), 1);
        assert!(
            is_one_of(&last[0], &[&appended[2]]),
            "position 4 holds its own event, not the lapped 2"
        );
        for after in 0..3 {
            let gap = expect_gap(store.replay_after_position(&key, after));
            assert_eq!(
                gap.reason,
                GapReason::Trimmed,
                "only position 4 is retained"
            );
            assert_eq!(gap.latest.position(), 4);
        }
        let gap = expect_gap(store.replay_after_cursor(&first.cursor()));
        assert_eq!(gap.missed, Some(2));
    });
}

/// Model 2c: model 2a's race, with the replay lending the events in place
/// (`replay_with`) instead of returning them. The loan is event 2 itself
/// or nothing, or a `Trimmed` gap, and never runs its closure for a gap;
/// each lent event reads as its writer wrote it (the slot's loom witness
/// checks that every lending read is ordered after the write).
#[test]
fn a_lending_replay_races_lapping_writers() {
    check("a_lending_replay_races_lapping_writers", || {
        let (store, _, first, join_writers) = lapping_writers();

        let lent = store.replay_with(&first.cursor(), |events| {
            let announced = events.len();
            let lent: Vec<_> = events
                .map(|event| {
                    (
                        event as *const Event<u64>,
                        event.position(),
                        *event.payload(),
                    )
                })
                .collect();
            assert_eq!(lent.len(), announced, "a loan's length is exact");
            lent
        });

        let appended = join_writers();
        assert_eq!(positions(&appended), [2, 3, 4]);
        match lent {
            Ok(lent) if lent.is_empty() => tally("lent nothing"),
            Ok(lent) => {
                tally("lent event 2");
                assert_eq!(lent.len(), 1, "capacity 1 holds one event");
                let (lent, position, payload) = lent[0];
                let two = &appended[0];
                assert!(std::ptr::eq(lent, Arc::as_ptr(two)), "the run after 1 is 2");
                assert_eq!((position, payload), (2, *two.payload()));
            }
            Err(error) => {
                tally("gap");
                assert_eq!(expect_gap(Err::<(), _>(error)).reason, GapReason::Trimmed);
            }
        }
        let last = store
            .replay_with(&appended[1].cursor(), |events| {
                events.map(|e| e.position()).collect::<Vec<_>>()
            })
            .unwrap();
        assert_eq!(
            last,
            [4],
            "position 4 holds its own event, not the lapped 2"
        );
    });
}

/// Model 2d: capacity 2 (segments of two positions). A `SessionWriter`
/// wrote position 1 and keeps segment 0. On its own thread it appends once
/// more, while a writer by key appends three times (position 5's segment
/// takes segment 0's directory entry) and a reader replays from the start.
/// The kept segment may be displaced between the writer's claim and its
/// write: that write must never surface, and no position may be lost.
/// The replay is a run from 1 of the writers' own payloads, or `Trimmed`;
/// afterwards the tail is 5 and the window holds positions 4 and 5 with
/// their own writers' payloads.
#[test]
fn a_writer_keeping_its_segment_races_a_lapping_writer() {
    check(
        "a_writer_keeping_its_segment_races_a_lapping_writer",
        || {
            let store = Arc::new(store(2));
            let key = key();
            let mut writer = store.session(&key).unwrap().writer();
            assert_eq!(writer.append(Revision(1), 1).unwrap(), 1);
            let kept = thread::spawn(move || (writer.append(Revision(1), 100).unwrap(), 100));
            let by_key = {
                let (store, key) = (Arc::clone(&store), key.clone());
                thread::spawn(move || {
                    (200..203)
                        .map(|payload| {
                            (
                                store.append(&key, Revision(2), payload).unwrap().position(),
                                payload,
                            )
                        })
                        .collect::<Vec<_>>()
                })
            };

            let seen = store.replay_after_cursor(&Cursor::start(key.clone()));

            let mut payload_at = vec![(1, 1), kept.join().unwrap()];
            payload_at.extend(by_key.join().unwrap());
            payload_at.sort_unstable();
            let claimed: Vec<u64> = payload_at.iter().map(|&(position, _)| position).collect();
            assert_eq!(
                claimed,
                [1, 2, 3, 4, 5],
                "positions are unique and contiguous"
            );
            match seen {
                Ok(events) => {
                    tally(if events.is_empty() {
                        "replay empty"
                    } else {
                        "replay a run"
                    });
                    for (event, expected) in events.iter().zip(&payload_at) {
                        assert_eq!((event.position(), *event.payload()), *expected);
                    }
                }
                Err(error) => {
                    tally("gap");
                    assert_eq!(expect_gap(Err::<(), _>(error)).reason, GapReason::Trimmed);
                }
            }

            assert_eq!(store.current_cursor(&key).position(), 5, "no position lost");
            let window: Vec<_> = store
                .replay_after_position(&key, 3)
                .unwrap()
                .iter()
                .map(|event| (event.position(), *event.payload()))
                .collect();
            assert_eq!(
                window,
                payload_at[3..],
                "positions 4 and 5 hold their own events"
            );
        },
    );
}

/// Model 2b: capacity 1, a subscriber reading position after position
/// while one writer appends 2, 3 and 4 (4 takes the storage place of 2).
/// The subscriber gets each position's own event, in order, or a `Trimmed`
/// gap; never a later event when it asked for an earlier position.
#[test]
fn a_reader_on_a_lapped_slot_gets_its_event_or_a_gap() {
    check("a_reader_on_a_lapped_slot_gets_its_event_or_a_gap", || {
        let store = store(1);
        let key = key();
        let handle = store.session(&key).unwrap();
        let first = handle.append(Revision(1), 1).unwrap();
        let mut subscription = handle.subscribe_after(&first.cursor()).unwrap();
        let writer = thread::spawn(move || {
            (2..=4)
                .map(|payload| handle.append(Revision(1), payload).unwrap())
                .collect::<Vec<_>>()
        });

        let reads = [
            subscription.try_next(),
            subscription.try_next(),
            subscription.try_next(),
        ];

        let appended = writer.join().unwrap();
        assert_eq!(positions(&appended), [2, 3, 4]);
        let mut expected = appended.iter();
        for read in reads {
            match read {
                Ok(event) => assert!(
                    is_one_of(&event, &[expected.next().unwrap()]),
                    "each read is the next position's own event"
                ),
                Err(TryNextError::Empty) => {}
                Err(TryNextError::Gap(gap)) => {
                    assert_eq!(gap.reason, GapReason::Trimmed);
                    assert!(subscription.is_ended());
                    break;
                }
                Err(TryNextError::Ended) => panic!("ended without a gap"),
                Err(TryNextError::Closed(closure)) => panic!("nothing closes it: {closure}"),
            }
        }
    });
}

/// Model 3: `current_cursor` racing two writers never hands out a cursor
/// past the published tail: everything up to it replays, and a replay
/// after it is not a gap.
#[test]
fn current_cursor_never_points_past_the_published_tail() {
    check(
        "current_cursor_never_points_past_the_published_tail",
        || {
            let store = Arc::new(store(8));
            let key = key();
            let handle = store.session(&key).unwrap();
            let incarnation = handle.incarnation();
            let by_handle = thread::spawn(move || handle.append(Revision(1), 100).unwrap());
            let by_key = {
                let (store, key) = (Arc::clone(&store), key.clone());
                thread::spawn(move || store.append(&key, Revision(2), 200).unwrap())
            };

            let cursor = store.current_cursor(&key);
            let from_start = store
                .replay_after_cursor(&Cursor::start(key.clone()))
                .unwrap();
            let after_cursor = store
                .replay_after_cursor(&cursor)
                .expect("a handed-out cursor is never beyond the published tail");

            let a = by_handle.join().unwrap();
            let b = by_key.join().unwrap();
            tally(
                match (cursor.position(), from_start.len(), after_cursor.len()) {
                    (0, 0, 0) => "cursor 0, replays empty",
                    (0, _, _) => "cursor 0, replays see more",
                    (1, 1, 0) => "cursor 1, replays see no more",
                    (1, _, _) => "cursor 1, replays see more",
                    _ => "cursor 2",
                },
            );
            assert!(from_start.len() as u64 >= cursor.position());
            assert_eq!(
                positions(&from_start),
                (1..=from_start.len() as u64).collect::<Vec<_>>()
            );
            assert_eq!(
                positions(&after_cursor),
                (cursor.position() + 1..=cursor.position() + after_cursor.len() as u64)
                    .collect::<Vec<_>>()
            );
            if cursor.position() > 0 {
                assert_eq!(cursor.incarnation(), Some(incarnation));
                let at_cursor = if a.position() == cursor.position() {
                    a
                } else {
                    b
                };
                assert_eq!(
                    cursor.revision(),
                    at_cursor.revision(),
                    "the cursor names the revision of the event at its position"
                );
            }
        },
    );
}

/// Model 6: a batch of two racing a single append and a reader. The
/// reader sees both events of the batch or neither, whatever positions the
/// single append takes around it; a subscriber that read the batch's first
/// event can read its second at once.
#[test]
fn a_batch_is_seen_whole_or_not_at_all() {
    check("a_batch_is_seen_whole_or_not_at_all", || {
        let store = Arc::new(store(8));
        let key = key();
        let handle = store.session(&key).unwrap();
        let mut subscription = handle.subscribe_after(&Cursor::start(key.clone())).unwrap();
        let batch_writer =
            thread::spawn(move || handle.append_batch(Revision(1), [10, 11]).unwrap());
        let single_writer = {
            let (store, key) = (Arc::clone(&store), key.clone());
            thread::spawn(move || store.append(&key, Revision(2), 20).unwrap())
        };

        let seen = store
            .replay_after_cursor(&Cursor::start(key.clone()))
            .unwrap();
        let batch_seen = seen
            .iter()
            .filter(|event| *event.payload() == 10 || *event.payload() == 11)
            .count();
        assert!(
            batch_seen == 0 || batch_seen == 2,
            "saw {batch_seen} of the batch's 2 events"
        );
        let mut streamed = Vec::new();
        while let Ok(event) = subscription.try_next() {
            streamed.push(event);
            if streamed.len() == 3 {
                break;
            }
        }
        if let Some(last) = streamed.last() {
            assert_ne!(
                *last.payload(),
                10,
                "the batch's second event is readable as soon as its first is"
            );
        }

        let batch = batch_writer.join().unwrap();
        let single = single_writer.join().unwrap();
        tally(match (batch_seen, seen.len(), streamed.len()) {
            (0, 0, _) => "replay empty",
            (0, _, _) => "replay [single]",
            (2, 2, _) => "replay [batch]",
            (2, _, 3) => "replay all three, stream all three",
            (2, _, _) => "replay all three, stream fewer",
            _ => "other",
        });
        assert_eq!(batch[1].position(), batch[0].position() + 1);
        assert!(single.position() == 1 || single.position() == 3);
        let all = store.replay_after_cursor(&Cursor::start(key)).unwrap();
        assert_eq!(positions(&all), [1, 2, 3]);
        assert!(all
            .iter()
            .chain(&seen)
            .chain(&streamed)
            .all(|event| is_one_of(event, &[&batch[0], &batch[1], &single])));
    });
}
