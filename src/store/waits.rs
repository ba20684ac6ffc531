//! Async waits for durability, woken per position: a registry of
//! `(session, position)` waits and one watcher that completes exactly the
//! waits a commit settled.
//!
//! [`ReplayStore::durable_progress`] is store-wide: every commit wakes every
//! waiter, and about half of them (appended while the commit was in
//! flight, so in the next one) only look, arm again and sleep, each a task
//! poll, a listener and a wake from the persister's thread, in the very
//! burst of answers that follows a commit. A host with many writes in
//! flight that each answer once durable (the Durable Streams server) waits
//! here instead: the persister wakes one task, the watcher, which completes
//! the waits whose position is settled now, from the host's runtime.
//!
//! The registry is runtime-agnostic: a registration that finds no watcher
//! running hands one ([`DurableWatcher`], a future) to the caller's `spawn`.
//!
//! # Invariants
//!
//! * **No lost wake-up, the write's side.** A write looks at the watermark,
//!   registers, then looks again: a commit between its first look and its
//!   registration is seen by the second look, and one after the
//!   registration finds the wait in the registry.
//! * **No lost wake-up, the watcher's side.** The watcher arms its two
//!   listeners, on the registry's wake and on the persister's commits,
//!   before it looks at the registry: a commit after that look, or a first
//!   registration after it, wakes it. A registration that makes the
//!   registry non-empty notifies the wake under the registry's lock, so the
//!   watcher never sleeps on the wake alone while a wait it has not seen is
//!   in the registry.
//! * **A watcher while someone waits.** `watcher_running` is set (under the
//!   lock) by the registration that hands out a watcher, and cleared (under
//!   the lock) when that [`DurableWatcher`] is dropped: at its end, or with a
//!   runtime that went away, or unspawned. So a registration that finds it
//!   clear starts another, and that one settles the waits left behind.
//! * **The watcher owns nothing it waits on.** It holds neither the
//!   registry nor the store while it sleeps or completes the waits (only
//!   weak references between its looks), so a host that drops them once
//!   its last write is answered closes the log then, not whenever the
//!   watcher lets go; it ends once either is gone.
//! * **A wait ends once.** A wait's outcome is set once, under its own
//!   lock, which also holds the waker it reports to. A wait given up (its
//!   future dropped) is marked under that lock, and the watcher drops its
//!   entry at its next look: the registry holds at most the waits in flight
//!   since the last commit. Waits left in a registry that is dropped end
//!   `Orphaned` and register again (with a new registry, there is none:
//!   the store is gone with it in practice).
//!
//! Locks are taken registry, then wait; a wait's lock is never held while
//! taking the registry's.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc as StdArc, Weak};
use std::task::{Context, Poll, Waker};

use event_listener::{Event, EventListener};

use crate::key::SessionKey;
use crate::sync::Mutex;

use super::{DurableError, ReplayStore};

/// Waits for positions to be settled in the durable log, each woken by the
/// commit that settles it (see the module docs). One registry serves one
/// store; share it between the tasks that write to that store.
pub struct DurableWaits<T> {
    store: Weak<ReplayStore<T>>,
    registry: Mutex<Registry>,
    /// Wakes the watcher: a first wait registered, or the registry is gone.
    /// A listener owns its share of the event, so the registry's drop still
    /// reaches a watcher that holds only a weak reference.
    wake: Event,
}

#[derive(Default)]
struct Registry {
    waiting: Vec<Waiting>,
    watcher_running: bool,
}

/// One wait in the registry.
struct Waiting {
    key: SessionKey,
    position: u64,
    wait: StdArc<Wait>,
}

/// A wait's state, shared by the writer's [`Registered`] and the registry.
#[derive(Default)]
struct Wait(Mutex<WaitState>);

#[derive(Default)]
struct WaitState {
    outcome: Option<Outcome>,
    waker: Option<Waker>,
    /// The writer gave up (its future was dropped first).
    abandoned: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The position is settled in the log.
    Settled,
    /// The registry went away before: look, and register again.
    Orphaned,
}

impl Wait {
    fn lock(&self) -> crate::sync::MutexGuard<'_, WaitState> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Ends the wait (once) and wakes its writer.
    fn finish(&self, outcome: Outcome) {
        let waker = {
            let mut state = self.lock();
            if state.outcome.is_some() {
                return;
            }
            state.outcome = Some(outcome);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The writer's side of one registered wait.
struct Registered(StdArc<Wait>);

impl Future for Registered {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut state = self.0.lock();
        if let Some(outcome) = state.outcome {
            return Poll::Ready(outcome);
        }
        match &mut state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        if state.outcome.is_none() {
            state.abandoned = true;
        }
    }
}

/// The registry's watcher: a future to spawn on the host's runtime (see
/// [`DurableWaits::wait`]). Ends once the registry or the store is gone;
/// dropping it earlier lets the next registration start another.
#[must_use = "a watcher does nothing unless spawned"]
pub struct DurableWatcher {
    future: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Clears `watcher_running` when the watcher is dropped.
    _running: Running,
}

impl Future for DurableWatcher {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.future.as_mut().poll(cx)
    }
}

impl std::fmt::Debug for DurableWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableWatcher").finish_non_exhaustive()
    }
}

struct Running(Box<dyn Fn() + Send + Sync>);

impl Drop for Running {
    fn drop(&mut self) {
        (self.0)();
    }
}

impl<T: Send + Sync + 'static> DurableWaits<T> {
    /// A registry for the waits on `store`. It holds the store weakly.
    pub fn new(store: &StdArc<ReplayStore<T>>) -> StdArc<Self> {
        StdArc::new(Self {
            store: StdArc::downgrade(store),
            registry: Mutex::new(Registry::default()),
            wake: Event::new(),
        })
    }

    /// Waits until `position` of `key` is settled in the durable log: as
    /// [`durable_position`](ReplayStore::durable_position) reports it, an
    /// event or a recorded hole (tell them apart with
    /// [`wait_durable`](ReplayStore::wait_durable) if it matters). Returns
    /// `false` only if the store is gone; `NoDurableTier` at once for a
    /// store without a log (nothing would ever settle). Wakes the
    /// persister, so a commit comes soon.
    ///
    /// `spawn` runs a [`DurableWatcher`] on the caller's runtime; it is called
    /// when no watcher runs (the first wait, or after the runtime that ran
    /// the last one went away). Cancel-safe: a dropped wait leaves an entry
    /// the watcher drops at its next look. The caller bounds the wait (a
    /// timeout of its runtime).
    pub async fn wait(
        self: &StdArc<Self>,
        key: &SessionKey,
        position: u64,
        spawn: impl Fn(DurableWatcher),
    ) -> Result<bool, DurableError> {
        loop {
            let Some(store) = self.store.upgrade() else {
                return Ok(false);
            };
            if store.durable_log().is_none() {
                return Err(DurableError::NoDurableTier);
            }
            if settled(&store, key)? >= position {
                return Ok(true);
            }
            let (registered, watcher) = self.register(key, position);
            if let Some(watcher) = watcher {
                spawn(watcher);
            }
            store.nudge_persister();
            // The second look (module docs, "the write's side").
            if settled(&store, key)? >= position {
                return Ok(true);
            }
            drop(store);
            // Settled: the next look confirms it. Orphaned: register again.
            registered.await;
        }
    }

    /// Registers a wait for `position` of `key`; also returns a watcher to
    /// spawn if none runs.
    fn register(
        self: &StdArc<Self>,
        key: &SessionKey,
        position: u64,
    ) -> (Registered, Option<DurableWatcher>) {
        let wait = StdArc::new(Wait::default());
        let mut registry = self.lock();
        let first = registry.waiting.is_empty();
        registry.waiting.push(Waiting {
            key: key.clone(),
            position,
            wait: StdArc::clone(&wait),
        });
        let watcher = if registry.watcher_running {
            if first {
                // Under the lock (module docs, "the watcher's side").
                self.wake.notify(1);
            }
            None
        } else {
            registry.watcher_running = true;
            Some(self.watcher())
        };
        (Registered(wait), watcher)
    }

    fn watcher(self: &StdArc<Self>) -> DurableWatcher {
        let waits = StdArc::downgrade(self);
        let stopped = StdArc::downgrade(self);
        DurableWatcher {
            future: Box::pin(watch(waits)),
            _running: Running(Box::new(move || {
                if let Some(waits) = stopped.upgrade() {
                    waits.lock().watcher_running = false;
                }
            })),
        }
    }

    /// Takes out the waits whose position is settled (to finish) and drops
    /// those abandoned; also returns whether any wait is left.
    fn settle(&self, store: &ReplayStore<T>) -> (Vec<StdArc<Wait>>, bool) {
        let mut registry = self.lock();
        let mut settled_now = Vec::new();
        let mut at = 0;
        while let Some(waiting) = registry.waiting.get(at) {
            if waiting.wait.lock().abandoned {
                drop(registry.waiting.swap_remove(at));
                continue;
            }
            // The log cannot answer now: the wait goes on (its writer
            // bounds it).
            if matches!(
                store.durable_position(&waiting.key),
                Ok(Some(durable)) if durable >= waiting.position
            ) {
                settled_now.push(registry.waiting.swap_remove(at).wait);
            } else {
                at += 1;
            }
        }
        (settled_now, !registry.waiting.is_empty())
    }
}

impl<T> DurableWaits<T> {
    fn lock(&self) -> crate::sync::MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<T> Drop for DurableWaits<T> {
    fn drop(&mut self) {
        let waiting = std::mem::take(&mut self.lock().waiting);
        for waiting in waiting {
            waiting.wait.finish(Outcome::Orphaned);
        }
        // The watcher finds the registry gone and ends.
        self.wake.notify(usize::MAX);
    }
}

impl<T> std::fmt::Debug for DurableWaits<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let registry = self.lock();
        f.debug_struct("DurableWaits")
            .field("waiting", &registry.waiting.len())
            .field("watcher_running", &registry.watcher_running)
            .finish()
    }
}

/// How far `key` is settled in the log (0 for a session nobody knows).
fn settled<T: Send + Sync + 'static>(
    store: &ReplayStore<T>,
    key: &SessionKey,
) -> Result<u64, DurableError> {
    Ok(store.durable_position(key)?.unwrap_or(0))
}

/// The watcher: after every commit (and whenever a first wait registers),
/// finishes the waits that are settled.
async fn watch<T: Send + Sync + 'static>(waits: Weak<DurableWaits<T>>) {
    loop {
        let Some(registry) = waits.upgrade() else {
            return;
        };
        let woken = registry.wake.listen();
        let Some(store) = registry.store.upgrade() else {
            return;
        };
        if store.durable_log().is_none() {
            // Its progress resolves at once: the loop would never sleep
            // (and `wait` refuses such a store before registering).
            return;
        }
        // Both armed before the look below (module docs, "the watcher's
        // side").
        let progress = store.durable_progress();
        let (settled_now, waiting) = registry.settle(&store);
        drop((registry, store));
        for wait in settled_now {
            wait.finish(Outcome::Settled);
        }
        if waiting {
            first_of(progress, woken).await;
        } else {
            drop(progress);
            woken.await;
        }
    }
}

/// Resolves when either resolves.
async fn first_of(mut progress: super::DurableProgress, mut woken: EventListener) {
    std::future::poll_fn(|cx| {
        if Pin::new(&mut progress).poll(cx).is_ready() {
            return Poll::Ready(());
        }
        Pin::new(&mut woken).poll(cx).map(drop)
    })
    .await;
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::durable::MemoryLog;
    use crate::{DurableOptions, Revision};

    /// A store with an in-memory log whose persister the test drives.
    fn store() -> StdArc<ReplayStore<Vec<u8>>> {
        StdArc::new(
            ReplayStore::builder()
                .durable(StdArc::new(MemoryLog::new()), crate::RawBytes)
                .durable_options(DurableOptions::default().with_persister_thread(false))
                .build()
                .expect("store"),
        )
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// Appends `byte` to `key`; returns its position.
    fn append<S: std::ops::Deref<Target = ReplayStore<Vec<u8>>>>(
        store: &S,
        key: &SessionKey,
        byte: u8,
    ) -> u64 {
        store
            .append(key, Revision(1), vec![byte])
            .expect("append")
            .position()
    }

    /// The `spawn` of the tests: the watcher on the test's runtime.
    fn spawn(watcher: DurableWatcher) {
        tokio::spawn(watcher);
    }

    fn waiting(waits: &DurableWaits<Vec<u8>>) -> usize {
        waits.lock().waiting.len()
    }

    /// Several writes on several sessions wait at once; one commit finishes
    /// them all, with one watcher, and leaves the registry empty.
    #[test]
    fn one_commit_finishes_every_write_it_settles() {
        let store = store();
        let waits = DurableWaits::new(&store);
        let keys: Vec<SessionKey> = (0..4)
            .map(|n| SessionKey::new("t", &format!("s{n}")).expect("key"))
            .collect();
        let spawned = std::sync::atomic::AtomicUsize::new(0);
        runtime().block_on(async {
            let writes = keys.iter().map(|key| {
                let position = store
                    .append(key, Revision(1), vec![1])
                    .expect("append")
                    .position();
                let spawned = &spawned;
                let waits = &waits;
                async move {
                    waits
                        .wait(key, position, |watcher| {
                            spawned.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tokio::spawn(watcher);
                        })
                        .await
                }
            });
            let commit = async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                store.persist_round()
            };
            let (told, committed) = tokio::join!(futures_util::future::join_all(writes), commit);
            assert_eq!(committed, Some(true));
            assert!(told.into_iter().all(|told| told.expect("wait")));
        });
        assert_eq!(spawned.into_inner(), 1, "one watcher for every write");
        assert_eq!(waiting(&waits), 0);
    }

    /// A write that gives up (its future dropped at its deadline) leaves an
    /// entry that the watcher drops at its next look: the registry returns
    /// to empty.
    #[test]
    fn a_write_that_gives_up_leaves_nothing_behind() {
        let store = store();
        let waits = DurableWaits::new(&store);
        let key = SessionKey::new("t", "given-up").expect("key");
        runtime().block_on(async {
            let position = append(&store, &key, 1);
            let wait = waits.wait(&key, position, spawn);
            assert!(tokio::time::timeout(Duration::from_millis(20), wait)
                .await
                .is_err());
            assert_eq!(waiting(&waits), 1, "the abandoned entry waits for a look");
            assert_eq!(store.persist_round(), Some(true));
            // The watcher looks after the commit.
            for _ in 0..100 {
                if waiting(&waits) == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(waiting(&waits), 0);
        });
    }

    /// A watcher dropped unspawned (or with its runtime) is replaced by the
    /// next registration, which then finishes the wait left behind too.
    #[test]
    fn a_dropped_watcher_is_replaced_by_the_next_registration() {
        let store = store();
        let waits = DurableWaits::new(&store);
        let key = SessionKey::new("t", "replaced").expect("key");
        let first = append(&store, &key, 1);
        let (left_behind, watcher) = waits.register(&key, first);
        assert!(watcher.is_some(), "the first registration starts a watcher");
        drop(watcher);
        assert!(!waits.lock().watcher_running);
        let second = append(&store, &key, 2);
        assert_eq!(store.persist_round(), Some(true));
        runtime().block_on(async {
            assert!(waits.wait(&key, second, spawn).await.expect("wait"));
            // The registration above found the position settled at its
            // first look; a new one (a later position) starts the watcher.
            let third = append(&store, &key, 3);
            let wait = waits.wait(&key, third, spawn);
            let commit = async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                store.persist_round()
            };
            let (told, _) = tokio::join!(wait, commit);
            assert!(told.expect("wait"));
            let outcome = tokio::time::timeout(Duration::from_secs(5), left_behind)
                .await
                .expect("the wait left behind was finished");
            assert_eq!(outcome, Outcome::Settled);
        });
    }

    /// A store without a log settles nothing: the wait says so at once
    /// rather than start a watcher that would never sleep.
    #[test]
    fn a_store_without_a_log_is_refused() {
        let store = StdArc::new(ReplayStore::<Vec<u8>>::builder().build().expect("store"));
        let waits = DurableWaits::new(&store);
        let key = SessionKey::new("t", "memory-only").expect("key");
        let position = append(&store, &key, 1);
        // Bounded: without the refusal the wait would hang (the watcher
        // ends at once, as it must, and nothing settles).
        let answer = runtime().block_on(async {
            tokio::time::timeout(Duration::from_secs(1), waits.wait(&key, position, spawn)).await
        });
        assert!(
            matches!(answer, Ok(Err(DurableError::NoDurableTier))),
            "{answer:?}"
        );
        assert!(!waits.lock().watcher_running, "no watcher was started");
    }

    /// Waits left in a registry that is dropped end `Orphaned`, not never.
    #[test]
    fn a_dropped_registry_orphans_its_waits() {
        let store = store();
        let waits = DurableWaits::new(&store);
        let key = SessionKey::new("t", "orphan").expect("key");
        let position = append(&store, &key, 1);
        let (registered, watcher) = waits.register(&key, position);
        drop(waits);
        drop(watcher);
        let outcome = runtime().block_on(registered);
        assert_eq!(outcome, Outcome::Orphaned);
    }
}
