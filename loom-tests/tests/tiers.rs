//! Loom models of the tiers (contract section 10): tombstones against
//! re-creation, the persister against appends, and catch-up against both.
//!
//! The store runs no persister thread under `--cfg loom`; a model runs
//! persister rounds (`ReplayStore::persist_round`, the thread's real loop
//! body) on a loom thread of its own, so loom explores them against appends.
#![cfg(loom)]

use std::sync::Arc as StdArc;

use livereplay::durable::{DurableLog, MemoryLog, RecordBody};
use livereplay::{
    Arc, Config, Cursor, GapReason, ManualClock, ReplayStore, Revision, TryNextError,
};
use loom::thread;
use loom_tests::{check, key, store, MAX_AGE};

/// A store with a durable in-memory log and no persister thread.
fn durable_store(capacity: usize) -> (ReplayStore<u64>, StdArc<MemoryLog>) {
    let log = StdArc::new(MemoryLog::new());
    let store = ReplayStore::builder()
        .config(
            Config::default()
                .with_capacity(capacity)
                .with_max_age(MAX_AGE)
                .with_auto_sweep(false),
        )
        .clock(StdArc::new(ManualClock::new()))
        .durable(log.clone(), U64Codec)
        .build()
        .expect("a valid model configuration");
    (store, log)
}

/// Payloads as 8 little-endian bytes.
struct U64Codec;

impl livereplay::Codec<u64> for U64Codec {
    fn encode(&self, payload: &u64, out: &mut Vec<u8>) -> Result<(), livereplay::CodecError> {
        out.extend_from_slice(&payload.to_le_bytes());
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<u64, livereplay::CodecError> {
        let bytes: [u8; 8] = bytes.try_into().map_err(livereplay::CodecError::new)?;
        Ok(u64::from_le_bytes(bytes))
    }
}

/// Runs persister rounds until nothing is queued.
fn persist_all(store: &ReplayStore<u64>) {
    while let Some(committed) = store.persist_round() {
        assert!(committed, "the in-memory log never fails");
    }
}

/// Model T1: a sweep turning a session dormant races an append by key
/// that revives it (and a handle being dropped). Whichever wins, the append
/// continues the same incarnation at the next position, and the old cursor
/// replays it: eviction shows only as trimming.
#[test]
fn eviction_racing_revival() {
    check("eviction_racing_revival", || {
        let store = Arc::new(store(4));
        let key = key();
        let handle = store.session(&key).unwrap();
        let first = handle.append(Revision(1), 1).unwrap();
        // Empty the ring so the session is evictable once the handle goes.
        assert_eq!(handle.release_through(1), 1);
        let sweeper = {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                drop(handle);
                store.sweep()
            })
        };
        let second = store.append(&key, Revision(1), 2).unwrap();
        let evicted = sweeper.join().unwrap();
        assert!(evicted <= 1);
        assert_eq!(second.incarnation(), first.incarnation(), "same life");
        assert_eq!(second.position(), 2, "positions continue");
        let rest = store.replay_after_cursor(&first.cursor()).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(*rest[0].payload(), 2);
    });
}

/// Model T2: the persister's round races two appends. Clearing the dirty
/// flag before reading (with the fence that pairs with the doorbell's)
/// means every append is either read by the racing round or queues the
/// session again: after the last round both events are durable, in order.
#[test]
fn persister_never_misses_an_append() {
    check("persister_never_misses_an_append", || {
        let (store, log) = durable_store(8);
        let store = Arc::new(store);
        let key = key();
        let handle = store.session(&key).unwrap();
        let persister = {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                store.persist_round();
            })
        };
        handle.append(Revision(1), 1).unwrap();
        handle.append(Revision(1), 2).unwrap();
        persister.join().unwrap();
        persist_all(&store);
        assert_eq!(store.durable_position(&key).unwrap(), Some(2));
        let records = log.load_after(&key, 0, 10).unwrap();
        let payloads: Vec<u64> = records
            .iter()
            .map(|record| match &record.body {
                RecordBody::Event(event) => {
                    u64::from_le_bytes(event.payload[..].try_into().unwrap())
                }
                RecordBody::Hole { .. } => {
                    panic!("no hole with a healthy log and room in the ring")
                }
            })
            .collect();
        assert_eq!(payloads, [1, 2]);
    });
}

/// Model T3: catch-up from the start races an appender that laps a ring of
/// one slot and a persister round. Each position is delivered exactly once,
/// in order, from whichever tier held it; a position neither held (lapped
/// before the round) is a `Lost` gap with its exact count, never skipped.
#[test]
fn catch_up_hands_over_exactly_once() {
    check("catch_up_hands_over_exactly_once", || {
        let (store, _log) = durable_store(1);
        let store = Arc::new(store);
        let key = key();
        let handle = store.session(&key).unwrap();
        let writer = {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                handle.append(Revision(1), 1).unwrap();
                store.persist_round();
                handle.append(Revision(1), 2).unwrap();
            })
        };
        let mut catch_up = store.catch_up(&Cursor::start(key.clone())).unwrap();
        let mut delivered = Vec::new();
        let mut lost = None;
        // One read while the writer runs, then to the end once it is done.
        let mut read = |catch_up: &mut livereplay::CatchUp<u64>| match catch_up.try_next() {
            Ok(event) => {
                assert_eq!(event.position(), *event.payload());
                delivered.push(event.position());
                true
            }
            Err(TryNextError::Gap(gap)) => {
                assert_eq!(gap.reason, GapReason::Lost, "only a loss may interrupt");
                lost = gap.missed;
                false
            }
            Err(_) => false,
        };
        read(&mut catch_up);
        writer.join().unwrap();
        persist_all(&store);
        for _ in 0..4 {
            if catch_up.is_ended() {
                break;
            }
            read(&mut catch_up);
        }
        match lost {
            // Exactly once, in order.
            None => assert_eq!(delivered, [1, 2], "every position exactly once"),
            // Position 1 was lapped before any round read it: one hole of
            // one position, reported before anything after it.
            Some(missed) => {
                assert_eq!(missed, 1);
                assert!(delivered.is_empty());
            }
        }
    });
}

/// Model T4: a persister round races a writer that laps a ring of one
/// slot. Position 1 reaches the log as its event (read before the lap) or
/// as a recorded hole of exactly one position (lapped first), never skipped;
/// `stats()` counts the loss, and catch-up reports it with its count.
#[test]
fn lapped_positions_become_a_recorded_hole() {
    check("lapped_positions_become_a_recorded_hole", || {
        let (store, log) = durable_store(1);
        let store = Arc::new(store);
        let key = key();
        let handle = store.session(&key).unwrap();
        let writer = thread::spawn(move || {
            handle.append(Revision(1), 1).unwrap();
            handle.append(Revision(1), 2).unwrap();
        });
        store.persist_round();
        writer.join().unwrap();
        persist_all(&store);
        let records = log.load_after(&key, 0, 10).unwrap();
        let lost = store.stats().durable.unwrap().lost_events;
        match &records[0].body {
            RecordBody::Event(_) => assert_eq!(lost, 0),
            RecordBody::Hole { count, .. } => {
                assert_eq!((*count, lost), (1, 1), "one position, counted");
                let gap = match store
                    .catch_up(&Cursor::start(key.clone()))
                    .unwrap()
                    .try_next()
                {
                    Err(TryNextError::Gap(gap)) => gap,
                    other => panic!("expected the hole's gap, got {other:?}"),
                };
                assert_eq!((gap.reason, gap.missed), (GapReason::Lost, Some(1)));
            }
        }
        assert_eq!(
            records.last().unwrap().position,
            2,
            "contiguous to the tail"
        );
        assert_eq!(store.durable_position(&key).unwrap(), Some(2));
    });
}
