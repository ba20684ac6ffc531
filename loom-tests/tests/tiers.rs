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
    Arc, Config, Cursor, DurableOptions, GapReason, ManualClock, ReplayStore, Revision, SessionKey,
    TryNextError,
};
use loom::sync::atomic::AtomicU64;
use loom::sync::Mutex;
use loom::thread;
use loom_tests::{check, key, store, tally, U64Codec, MAX_AGE};

/// A store with a durable in-memory log and no persister thread.
fn durable_store(capacity: usize) -> (ReplayStore<u64>, StdArc<MemoryLog>) {
    durable_store_with(capacity, MemoryLog::new())
}

/// A store with `log` as its durable log and no persister thread.
fn durable_store_with<L: DurableLog>(capacity: usize, log: L) -> (ReplayStore<u64>, StdArc<L>) {
    let log = StdArc::new(log);
    (durable_store_on(capacity, log.clone()), log)
}

/// A store over a log other stores may share (nodes), no persister thread,
/// and no budget for undurable events (a lapped segment is a hole at once:
/// the models of holes need laps to lose events).
fn durable_store_on(capacity: usize, log: StdArc<dyn DurableLog>) -> ReplayStore<u64> {
    durable_store_keeping(capacity, log, 0)
}

/// [`durable_store_on`] with `budget` bytes for undurable events kept past
/// the rings' windows.
fn durable_store_keeping(
    capacity: usize,
    log: StdArc<dyn DurableLog>,
    budget: usize,
) -> ReplayStore<u64> {
    ReplayStore::builder()
        .config(
            Config::default()
                .with_capacity(capacity)
                .with_max_age(MAX_AGE)
                .with_auto_sweep(false),
        )
        .clock(StdArc::new(ManualClock::new()))
        .durable(log, U64Codec)
        .durable_options(DurableOptions::default().with_undurable_budget(budget))
        .build()
        .expect("a valid model configuration")
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

    /// One log that several stores (nodes) write, as over one Redis.
    fn shared() -> Self {
        Self {
            lock: Mutex::new(()),
            inner: MemoryLog::shared(),
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

    fn is_shared(&self) -> bool {
        self.inner.is_shared()
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

/// Model T12: a turn is made from a handle while a persister round runs
/// on a session that is clean (everything durable). Marking the turn
/// under the session's `end` lock and queueing the session after it means
/// either the racing round reads the mark or the session is queued again:
/// after the last round the log holds the open turn (persister invariant
/// 11), whatever the interleaving. Fails under `turn-queued-before-marked`
/// (the session queued before the mark is set: the round takes it, finds
/// no mark, and nothing queues it again).
#[test]
fn a_turn_racing_a_round_reaches_the_log() {
    check("a_turn_racing_a_round_reaches_the_log", || {
        let (store, log) = durable_store(8);
        let store = Arc::new(store);
        let key = key();
        let handle = store.session(&key).unwrap();
        handle.append(Revision(1), 1).unwrap();
        persist_all(&store);
        let persister = {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                store.persist_round();
            })
        };
        let turn = handle.into_turn();
        persister.join().unwrap();
        persist_all(&store);
        let meta = log.meta(&key).unwrap().unwrap();
        assert!(meta.open_turn.is_some(), "the open turn was never written");
        drop(turn);
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
/// slot (its directory holds two: position 3 displaces position 1), with
/// no budget to keep what it laps. Position 1 reaches the log as its event
/// (read before the lap) or as a recorded hole of exactly one position
/// (lapped first), never skipped; `stats()` counts the loss, and catch-up
/// reports it with its count. Mutation: `let-go-unmarked`.
#[test]
fn lapped_positions_become_a_recorded_hole() {
    check("lapped_positions_become_a_recorded_hole", || {
        let (store, log) = durable_store(1);
        let store = Arc::new(store);
        let key = key();
        let handle = store.session(&key).unwrap();
        let writer = thread::spawn(move || {
            for payload in 1..=3 {
                handle.append(Revision(1), payload).unwrap();
            }
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
            records.last().unwrap().last_position(),
            3,
            "contiguous to the tail"
        );
        assert_eq!(store.durable_position(&key).unwrap(), Some(3));
    });
}

/// Model T11 (issue 21, item 11): T4 with a budget for undurable events.
/// Position 1 is durable (and the life recorded) before the race; then the
/// writer appends 2..=4, and 4 laps position 2, handing its segment to the
/// ring's kept tail. The persister, racing it, reads position 2 before the
/// lap, from the kept tail after the hand-over, or stops before it while
/// the hand-over is in flight, and the writer's append then queues the
/// session again. Whichever: every position reaches the log as its event,
/// nothing is a hole, and the kept bytes go back to zero. Mutation:
/// `in-flight-read-as-let-go`.
#[test]
fn a_lap_within_the_budget_loses_nothing() {
    check("a_lap_within_the_budget_loses_nothing", || {
        let log = StdArc::new(LockedLog::new());
        let store = Arc::new(durable_store_keeping(1, log.clone(), 1 << 20));
        let key = key();
        let handle = store.session(&key).unwrap();
        handle.append(Revision(1), 1).unwrap();
        persist_all(&store);
        let writer = thread::spawn(move || {
            for payload in 2..=4 {
                handle.append(Revision(1), payload).unwrap();
            }
        });
        if store.persist_round() == Some(true) {
            tally("a round during the writes");
        }
        writer.join().unwrap();
        persist_all(&store);
        let expected: Vec<(u64, u64)> = (1..=4).map(|p| (p, p)).collect();
        assert_eq!(logged_events(&*log, &key), expected);
        let durable = store.stats().durable.unwrap();
        assert_eq!((durable.lost_events, durable.kept_bytes), (0, 0));
        tally(if durable.kept_segments == 1 {
            "position 2 kept"
        } else {
            "position 2 written before the lap"
        });
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

/// The events a log holds for `key`, as `(position, payload)`.
fn logged_events(log: &dyn DurableLog, key: &SessionKey) -> Vec<(u64, u64)> {
    log.load_after(key, 0, 16)
        .unwrap()
        .into_iter()
        .filter_map(|record| match record.body {
            RecordBody::Event(event) => {
                let payload = u64::from_le_bytes(event.payload.try_into().unwrap());
                Some((record.position, payload))
            }
            RecordBody::Hole { .. } => None,
        })
        .collect()
}

/// Model T7 (issue 21, item 1): an append by key that creates the session
/// races another thread's append and `remove_session` of it, with a log
/// and nothing persisted yet. A re-creation continues after the removed
/// session's last position (it is registered under the map's lock before
/// it leaves), and a restore that read the log before the removal is not
/// used (the key's departure stripe moved): every accepted event reaches
/// the log once, at a position no other event has, and nothing is fenced.
/// Mutations: `remove-registers-after-leaving`, `restore-ignores-departures`.
#[test]
fn removal_racing_recreation_by_key() {
    check("removal_racing_recreation_by_key", || {
        let (store, log) = durable_store_with(4, LockedLog::new());
        let store = Arc::new(store);
        let key = key();
        let remover = {
            let store = Arc::clone(&store);
            let key = key.clone();
            thread::spawn(move || {
                let first = store.append(&key, Revision(1), 1);
                assert!(store.remove_session(&key));
                first.unwrap().position()
            })
        };
        let second = store.append(&key, Revision(1), 2);
        let first = remover.join().unwrap();
        persist_all(&store);
        let mut expected = vec![(first, 1)];
        match second {
            Ok(second) => {
                tally(if second.position() > first {
                    "re-created after the removal"
                } else {
                    "created before the other append"
                });
                expected.push((second.position(), 2));
            }
            // It found the session resident, and the removal sealed it
            // before the append claimed a position.
            Err(livereplay::Error::Refused(livereplay::Refusal::SessionRemoved)) => {
                tally("refused: removed meanwhile");
            }
            Err(other) => panic!("unexpected refusal {other}"),
        }
        expected.sort_unstable();
        assert_eq!(logged_events(&*log, &key), expected);
        assert_eq!(store.stats().durable.unwrap().fenced_sessions, 0);
    });
}

/// Model T8 (issue 21, item 4): node A evicted a session to a tombstone;
/// node B writes the session over the shared log while A appends to it
/// again. If B's write was in the log before A's append began, A must
/// continue after it (asking the log), not revive its tombstone at B's
/// position and be fenced. Mutation: `revive-without-asking-the-log`.
#[test]
fn tombstone_revival_against_another_nodes_life() {
    check("tombstone_revival_against_another_nodes_life", || {
        let log = StdArc::new(LockedLog::shared());
        let a = durable_store_on(4, log.clone());
        let b = durable_store_on(4, log.clone());
        let key = key();
        a.append(&key, Revision(1), 1).unwrap();
        persist_all(&a);
        a.release_through(&key, 1);
        a.trim_session(&key);
        assert!(!a.is_resident(&key), "A keeps only a tombstone");
        let b_wrote = Arc::new(loom::sync::atomic::AtomicBool::new(false));
        let node_b = {
            let b_wrote = Arc::clone(&b_wrote);
            let key = key.clone();
            thread::spawn(move || {
                b.append(&key, Revision(1), 2).unwrap();
                persist_all(&b);
                // SeqCst: the model's own flag, read by node A below.
                b_wrote.store(true, std::sync::atomic::Ordering::SeqCst);
            })
        };
        // SeqCst: see above.
        let after_b = b_wrote.load(std::sync::atomic::Ordering::SeqCst);
        let appended = a.append(&key, Revision(1), 3).unwrap();
        while a.persist_round().is_some() {}
        node_b.join().unwrap();
        let fenced = a.stats().durable.unwrap().fenced_sessions;
        if after_b {
            tally("A appended after B's commit");
            assert_eq!(
                appended.position(),
                3,
                "A revived its tombstone under B's position"
            );
            assert_eq!(fenced, 0, "A was fenced though it came after B");
        } else {
            // Two writers at once: the log takes one life; a fenced one is
            // counted (the contract's take-over rule).
            tally(if fenced == 0 {
                "concurrent: A's life stands"
            } else {
                "concurrent: A fenced"
            });
        }
        // The log never holds a position twice, and holds A's event unless
        // A was fenced.
        let logged = logged_events(&*log, &key);
        let mut positions: Vec<u64> = logged.iter().map(|(position, _)| *position).collect();
        positions.dedup();
        assert_eq!(positions.len(), logged.len());
        assert_eq!(logged.iter().any(|&(_, payload)| payload == 3), fenced == 0);
    });
}

/// Model T9 (issue 21, item 5): a wait for a position races the commit
/// that writes it as a hole (the ring lapped it). The session records its
/// holes before the watermark passes them, so the wait never answers
/// "durable" for a lost position: it times out before the commit, or
/// answers `Lost` after. Mutation: `watermark-before-holes-recorded`.
#[test]
fn a_wait_never_vouches_for_a_hole() {
    check("a_wait_never_vouches_for_a_hole", || {
        // Capacity 1: the directory holds two positions, 3 laps 1.
        let (store, log) = durable_store_with(1, LockedLog::new());
        let store = Arc::new(store);
        let key = key();
        for payload in 1..=3 {
            store.append(&key, Revision(1), payload).unwrap();
        }
        let persister = {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                store.persist_round();
            })
        };
        match store.wait_durable(&key, 1, Duration::ZERO) {
            Err(livereplay::DurableError::Lost { through: 1, .. }) => tally("lost"),
            Err(livereplay::DurableError::Timeout { .. }) => tally("not yet"),
            other => panic!("position 1 is a hole, yet the wait said {other:?}"),
        }
        persister.join().unwrap();
        persist_all(&store);
        assert_eq!(logged_events(&*log, &key), vec![(2, 2), (3, 3)]);
        assert!(matches!(
            store.wait_durable(&key, 1, Duration::ZERO),
            Err(livereplay::DurableError::Lost { .. })
        ));
        assert_eq!(store.wait_durable(&key, 3, Duration::ZERO).unwrap(), 3);
    });
}

/// Model T10 (issue 21, item 10): with tombstones off, a trim that evicts
/// an empty session races an append by key that revives it between the
/// eviction and the forgetting of its tombstone. The dormant count never
/// goes below zero (it is a usize: it would wrap). Found by reading;
/// confirmed by this model.
#[test]
fn a_revival_racing_a_trim_keeps_the_dormant_count() {
    check("a_revival_racing_a_trim_keeps_the_dormant_count", || {
        let store = Arc::new(
            ReplayStore::<u64>::builder()
                .config(
                    Config::default()
                        .with_capacity(4)
                        .with_max_age(MAX_AGE)
                        .with_auto_sweep(false)
                        .with_tombstones(0, MAX_AGE),
                )
                .clock(StdArc::new(ManualClock::new()))
                .build()
                .unwrap(),
        );
        let key = key();
        store.append(&key, Revision(1), 1).unwrap();
        store.release_through(&key, 1);
        let trimmer = {
            let store = Arc::clone(&store);
            let key = key.clone();
            thread::spawn(move || {
                store.trim_session(&key);
            })
        };
        store.append(&key, Revision(1), 2).unwrap();
        trimmer.join().unwrap();
        let stats = store.stats();
        assert!(
            stats.dormant_sessions <= 1,
            "dormant count wrapped: {stats:?}"
        );
        tally(if store.is_resident(&key) {
            "resident"
        } else {
            "trimmed after"
        });
    });
}
