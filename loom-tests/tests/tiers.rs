//! Loom models of the tiers (contract section 10): tombstones against
//! re-creation, the persister against appends, and catch-up against both.
//!
//! The store runs no persister thread under `--cfg loom`; a model runs
//! persister rounds (`ReplayStore::persist_round`, the thread's real loop
//! body) on a loom thread of its own, so loom explores them against appends.
#![cfg(loom)]

use std::sync::Arc as StdArc;
use std::time::Duration;

use livereplay::durable::{
    DurableLog, LogError, LogRecord, MemoryLog, RecordBody, SessionMeta, SessionWrite,
};
use livereplay::{
    Arc, Config, Cursor, GapReason, ManualClock, ReplayStore, Revision, SessionKey, TryNextError,
};
use loom::sync::atomic::AtomicU64;
use loom::sync::Mutex;
use loom::thread;
use loom_tests::{check, key, store, tally, MAX_AGE};

/// A store with a durable in-memory log and no persister thread.
fn durable_store(capacity: usize) -> (ReplayStore<u64>, StdArc<MemoryLog>) {
    durable_store_with(capacity, MemoryLog::new())
}

/// A store with `log` as its durable log and no persister thread.
fn durable_store_with<L: DurableLog>(capacity: usize, log: L) -> (ReplayStore<u64>, StdArc<L>) {
    let log = StdArc::new(log);
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

/// The in-memory log with every call under a loom mutex. `MemoryLog`'s own
/// `std` mutex is invisible to loom (under loom it orders calls by the real
/// order the scheduler ran them in, never a weaker one); with this lock the
/// log's synchronisation, a lock as in every built-in backend (a mutex, a
/// redb transaction, one Redis server), is part of the model.
struct LockedLog {
    lock: Mutex<()>,
    inner: MemoryLog,
}

impl LockedLog {
    fn new() -> Self {
        Self {
            lock: Mutex::new(()),
            inner: MemoryLog::new(),
        }
    }
}

impl DurableLog for LockedLog {
    fn append(&self, writes: &[SessionWrite<'_>]) -> Result<(), LogError> {
        let _locked = self.lock.lock().unwrap();
        self.inner.append(writes)
    }

    fn load_after(
        &self,
        key: &SessionKey,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        let _locked = self.lock.lock().unwrap();
        self.inner.load_after(key, after, limit)
    }

    fn meta(&self, key: &SessionKey) -> Result<Option<SessionMeta>, LogError> {
        let _locked = self.lock.lock().unwrap();
        self.inner.meta(key)
    }

    fn archive_before(&self, key: &SessionKey, watermark: u64) -> Result<u64, LogError> {
        let _locked = self.lock.lock().unwrap();
        self.inner.archive_before(key, watermark)
    }

    fn sessions(
        &self,
        tenant: &str,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<SessionKey>, LogError> {
        let _locked = self.lock.lock().unwrap();
        self.inner.sessions(tenant, limit, offset)
    }
}

/// A log whose commits are published by a Release store of its durable
/// tail and read with Acquire (one session), as a lock-free log would do:
/// a reader synchronises with the commit it reads, but a reader that never
/// read it may still see an older tail. No built-in backend is like this
/// (each orders every read after every earlier commit); the `DurableLog`
/// trait does not say whether one may be.
struct PublishedLog {
    published: AtomicU64,
    inner: MemoryLog,
}

impl PublishedLog {
    fn new() -> Self {
        Self {
            published: AtomicU64::new(0),
            inner: MemoryLog::new(),
        }
    }

    fn published(&self) -> u64 {
        self.published.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl DurableLog for PublishedLog {
    fn append(&self, writes: &[SessionWrite<'_>]) -> Result<(), LogError> {
        self.inner.append(writes)?;
        for write in writes {
            if let Some(meta) = self.inner.meta(write.key)? {
                self.published
                    .store(meta.durable_tail, std::sync::atomic::Ordering::Release);
            }
        }
        Ok(())
    }

    fn load_after(
        &self,
        key: &SessionKey,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        let published = self.published();
        let mut records = self.inner.load_after(key, after, limit)?;
        records.retain(|record| record.position + record.len() - 1 <= published);
        Ok(records)
    }

    fn meta(&self, key: &SessionKey) -> Result<Option<SessionMeta>, LogError> {
        let published = self.published();
        Ok(self.inner.meta(key)?.map(|mut meta| {
            meta.durable_tail = meta.durable_tail.min(published);
            meta
        }))
    }

    fn archive_before(&self, key: &SessionKey, watermark: u64) -> Result<u64, LogError> {
        self.inner.archive_before(key, watermark)
    }

    fn sessions(
        &self,
        tenant: &str,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<SessionKey>, LogError> {
        self.inner.sessions(tenant, limit, offset)
    }
}

/// The positions of the events a log holds for `key`.
fn logged_positions(log: &dyn DurableLog, key: &SessionKey) -> Vec<u64> {
    log.load_after(key, 0, 16)
        .unwrap()
        .iter()
        .filter(|record| matches!(record.body, RecordBody::Event(_)))
        .map(|record| record.position)
        .collect()
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

/// The body of models T5 and T5w: two events wait for the persister; a
/// round races `release_through(2)`, which a durable log limits to the
/// durable watermark (`Session::trim_limit`). A release that freed events
/// finds them in the log at once, on its own thread. The watermark's store
/// (`commit`) and load (`Session::durable`) are Relaxed: nothing but the
/// log's own synchronisation orders the releaser's read of the log after
/// the commit.
///
/// The releaser first takes (and drops) a durable-progress listener, as an
/// async caller waiting for durability does. This is the kind of trigger
/// model 1b needs: the listener list is what the round touches last (its
/// commit's notification), while the round's last access to the watermark
/// before its store is its own load (in `collect`), which hides an earlier
/// load by the releaser from loom's DPOR (tokio-rs/loom#166). Here
/// it is not needed (other races, on the ring, already make loom run the
/// round's store before the release's load: bound 3, 139 executions, 31 of
/// them free), but it is cheap and explores more (989 executions, 366
/// free); with or without it, the model fails at once if the persister
/// raises the watermark before its commit (loom-tests/README.md).
fn release_gated_by_the_watermark<L: DurableLog>(log: L) {
    let (store, log) = durable_store_with(8, log);
    let store = Arc::new(store);
    let key = key();
    let handle = store.session(&key).unwrap();
    handle.append(Revision(1), 1).unwrap();
    handle.append(Revision(1), 2).unwrap();
    let persister = {
        let store = Arc::clone(&store);
        thread::spawn(move || {
            store.persist_round();
        })
    };

    drop(store.durable_progress());
    let freed = handle.release_through(2);
    if freed == 0 {
        tally("nothing durable yet, nothing freed");
    } else {
        tally("freed after the commit");
        assert_eq!(freed, 2);
        assert_eq!(
            logged_positions(&*log, &key),
            [1, 2],
            "a release frees only what the log holds"
        );
    }

    persister.join().unwrap();
    persist_all(&store);
    assert_eq!(store.durable_position(&key).unwrap(), Some(2));
    assert_eq!(logged_positions(&*log, &key), [1, 2]);
}

/// Model T5: a release racing a persister round frees only what the log
/// holds, with a log whose reads are ordered after every earlier commit by
/// a lock (as in every built-in backend). See
/// [`release_gated_by_the_watermark`].
#[test]
fn a_release_frees_only_what_the_log_holds() {
    check("a_release_frees_only_what_the_log_holds", || {
        release_gated_by_the_watermark(LockedLog::new());
    });
}

/// Model T5w: the same with a log that publishes its commits only by
/// Release/Acquire (`PublishedLog`), not a lock. With the watermark's
/// store (`commit`) and load (`Session::durable`) Relaxed, as they once
/// were, it failed: a releaser that read the raised watermark was not
/// ordered after the commit, and its read of such a log missed the records
/// it had just freed from the ring. The watermark is now stored with
/// Release and loaded with Acquire; weakening either fails this model.
#[test]
fn a_release_frees_only_what_a_published_log_holds() {
    check("a_release_frees_only_what_a_published_log_holds", || {
        release_gated_by_the_watermark(PublishedLog::new());
    });
}

/// Model T6: `wait_durable` racing the persister round that makes the
/// position durable returns (a lost wake-up is a loom deadlock: under loom
/// the wait has no timeout). The waiter loads the watermark (Relaxed),
/// listens, loads it again, and waits; the commit stores the watermark
/// (Relaxed), then notifies. The listener list's lock orders the two: if
/// the commit's notification takes it first, the waiter's second load
/// comes after the store.
#[test]
fn wait_durable_is_woken_by_the_commit() {
    check("wait_durable_is_woken_by_the_commit", || {
        let (store, _log) = durable_store_with(8, LockedLog::new());
        let store = Arc::new(store);
        let key = key();
        let handle = store.session(&key).unwrap();
        handle.append(Revision(1), 1).unwrap();
        handle.append(Revision(1), 2).unwrap();
        let persister = {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                store.persist_round();
            })
        };
        let durable = store
            .wait_durable(&key, 2, Duration::from_secs(3600))
            .unwrap();
        assert_eq!(durable, 2);
        persister.join().unwrap();
    });
}
