//! Loom models of the durable waits (`store::waits`): a write waiting for
//! its position to be durable, a watcher woken by the persister's commits
//! and by registrations, and the persister's round, each on a loom thread.
//!
//! The store runs no persister thread under `--cfg loom`; a model runs
//! `ReplayStore::persist_round` (the thread's real loop body) itself. The
//! watcher is the registry's real future, run by `loom::future::block_on`
//! on a loom thread the model's `spawn` starts. Under loom a wait has no
//! timeout, so a lost wake-up is the deadlock loom reports.
#![cfg(loom)]

use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc as StdArc;
use std::task::{Context, Waker};

use livereplay::durable::MemoryLog;
use livereplay::{
    Config, DurableOptions, DurableWaits, DurableWatcher, ManualClock, ReplayStore, Revision,
    SessionKey,
};
use loom::thread::{self, JoinHandle};
use loom_tests::{check, key, U64Codec, MAX_AGE};

/// A store with an in-memory durable log and no persister thread.
fn durable_store() -> StdArc<ReplayStore<u64>> {
    StdArc::new(
        ReplayStore::builder()
            .config(
                Config::default()
                    .with_capacity(8)
                    .with_max_age(MAX_AGE)
                    .with_auto_sweep(false),
            )
            .clock(StdArc::new(ManualClock::new()))
            .durable(StdArc::new(MemoryLog::new()), U64Codec)
            .durable_options(DurableOptions::default())
            .build()
            .expect("a valid model configuration"),
    )
}

/// The watchers a model's `spawn` started, each on a loom thread.
#[derive(Default)]
struct Watchers(RefCell<Vec<JoinHandle<()>>>);

impl Watchers {
    fn spawn(&self, watcher: DurableWatcher) {
        self.0
            .borrow_mut()
            .push(thread::spawn(move || loom::future::block_on(watcher)));
    }

    fn count(&self) -> usize {
        self.0.borrow().len()
    }

    /// Joins every watcher: each ends once the registry is gone.
    fn join(self) {
        for watcher in self.0.into_inner() {
            watcher.join().unwrap();
        }
    }
}

/// One write's wait for `position`, answered `true` (settled).
fn wait_for(
    waits: &StdArc<DurableWaits<u64>>,
    watchers: &Watchers,
    key: &SessionKey,
    position: u64,
) {
    let settled =
        loom::future::block_on(waits.wait(key, position, |watcher| watchers.spawn(watcher)))
            .expect("the in-memory log answers");
    assert!(settled, "the store is alive: the wait ends settled");
}

/// A persister round on its own thread.
fn commit(store: &StdArc<ReplayStore<u64>>) -> JoinHandle<()> {
    let store = StdArc::clone(store);
    thread::spawn(move || {
        store.persist_round();
    })
}

/// Model W1: a write waits for its position while the persister's round
/// that makes it durable runs, and the write's registration starts the
/// watcher. Whichever comes first (the commit before the write's first
/// look, between its looks, between its registration and the watcher's
/// look, or after), the write is told; the watcher then ends with the
/// registry. `watcher-arms-after-look` (the watcher listens for commits
/// after it looked at the registry) deadlocks it: a commit between the
/// look and the listener is missed.
#[test]
fn a_write_racing_its_commit_is_told() {
    check("a_write_racing_its_commit_is_told", || {
        let store = durable_store();
        let key = key();
        let position = store.append(&key, Revision(1), 1).unwrap().position();
        let waits = DurableWaits::new(&store);
        let watchers = Watchers::default();
        let persister = commit(&store);
        wait_for(&waits, &watchers, &key, position);
        assert!(store.durable_position(&key).unwrap() >= Some(position));
        assert!(watchers.count() <= 1, "at most one watcher per registry");
        drop(waits);
        watchers.join();
        persister.join().unwrap();
    });
}

/// Model W2: a watcher that has no wait left sleeps on the registry's wake
/// alone. A second write registers while it goes to sleep (or sleeps), and
/// the round that makes the second write durable runs meanwhile. The second
/// write is told (by the same watcher, or by its own second look). The
/// first write's registration and round are not raced (model W1 races
/// them): only the watcher's way to sleep is. `registration-skips-the-wake` (a
/// first registration does not wake a running watcher) deadlocks it: the
/// watcher sleeps through the commit, since it listens for commits only
/// while a wait is registered.
#[test]
fn an_idle_watcher_is_woken_by_a_registration() {
    check("an_idle_watcher_is_woken_by_a_registration", || {
        let store = durable_store();
        let key = key();
        let waits = DurableWaits::new(&store);
        let watchers = Watchers::default();
        // The first write registers (one poll: not durable yet), which
        // starts the watcher; then its round runs here, and the watcher
        // tells it. The watcher then has nothing left to wait for.
        let first = store.append(&key, Revision(1), 1).unwrap().position();
        let mut first_wait = Box::pin(waits.wait(&key, first, |watcher| watchers.spawn(watcher)));
        let registered = first_wait
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()));
        assert!(
            registered.is_pending(),
            "nothing is durable before the round"
        );
        assert_eq!(watchers.count(), 1, "the registration started the watcher");
        assert_eq!(store.persist_round(), Some(true));
        assert!(loom::future::block_on(first_wait).unwrap());
        // The second write races its round and the watcher's sleep.
        let second = store.append(&key, Revision(1), 2).unwrap().position();
        let persister = commit(&store);
        wait_for(&waits, &watchers, &key, second);
        assert!(
            watchers.count() <= 1,
            "a running watcher tells the second write"
        );
        drop(waits);
        watchers.join();
        persister.join().unwrap();
    });
}
