//! Writes waiting for their records to be durable, on one node: a registry
//! of `(stream, position)` waits and one watcher task per service that
//! wakes exactly the writes a commit made durable.
//!
//! Why not every write on the store's `durable_progress` (as the reads and
//! the several-nodes path still do): that event is store-wide, so each
//! commit woke every waiting write, and about half of them (appended while
//! the commit was in flight, so in the next one) only looked, armed again
//! and slept — a task poll, a listener and a wake from the persister's
//! thread each, in the very burst of responses that follows a commit.
//! Here the persister wakes one task, the watcher, which completes the
//! writes that are durable now, from a tokio worker.
//!
//! # Invariants
//!
//! * **No lost wake-up.** A write registers, then looks at the watermark
//!   again, so a commit between its first look and its registration is
//!   seen by that second look. The watcher arms its listener on the
//!   persister's commits before it looks at the registry, so a commit
//!   after that look wakes it; and it is woken when the registry goes from
//!   empty to not empty (under the registry's lock), so it never sleeps on
//!   the commits while a write it has not seen waits.
//! * **A watcher while someone waits.** The watcher is (re)started by the
//!   registration that finds none running (the first one, or after the
//!   runtime that ran it went away); a write whose watcher vanished with
//!   its wake registers again. The watcher holds neither the service nor
//!   the store while it waits, nor when it tells the writes (so the last
//!   write's answer never races the log's closing), and ends once either
//!   is gone.
//! * **Nothing waits without a nudge.** A write wakes the persister itself
//!   (as `durable_progress` does), so a persister asleep for its flush
//!   interval starts the commit at once.
//! * Bounded: a write that gives up (its deadline, or its request dropped)
//!   leaves its entry behind, which the watcher drops on its next look; so
//!   the registry holds at most the writes in flight since the last commit.

use std::sync::{Arc as StdArc, Mutex, Weak};

use tokio::sync::{oneshot, Notify};

use crate::key::SessionKey;
use crate::store::ReplayStore;

use super::error::StreamError;
use super::record::StreamRecord;

/// One write waiting: its stream, its record's position, and how to tell
/// it the position is durable.
struct Waiting {
    key: SessionKey,
    position: u64,
    done: oneshot::Sender<()>,
}

#[derive(Default)]
struct Inner {
    waiting: Vec<Waiting>,
    watcher: Option<tokio::task::JoinHandle<()>>,
}

/// The waits of one service (see the module docs).
pub(crate) struct DurableWaits {
    inner: Mutex<Inner>,
    /// Wakes the watcher: a first write registered, or the service is gone.
    /// Outside `inner`'s `Arc` so the watcher can still be woken by the
    /// drop.
    wake: StdArc<Notify>,
}

impl Default for DurableWaits {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            wake: StdArc::new(Notify::new()),
        }
    }
}

impl Drop for DurableWaits {
    fn drop(&mut self) {
        // The watcher finds the registry gone and ends.
        self.wake.notify_one();
    }
}

impl DurableWaits {
    /// Registers a wait for `position` of `key`; the receiver completes once
    /// it is durable (or errs if the watcher went away: register again).
    /// Starts the watcher if none runs. Must be called inside a tokio
    /// runtime.
    pub(crate) fn register(
        self: &StdArc<Self>,
        store: &StdArc<ReplayStore<StreamRecord>>,
        key: &SessionKey,
        position: u64,
    ) -> oneshot::Receiver<()> {
        let (done, receiver) = oneshot::channel();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let first = inner.waiting.is_empty();
        inner.waiting.push(Waiting {
            key: key.clone(),
            position,
            done,
        });
        if inner
            .watcher
            .as_ref()
            .is_none_or(tokio::task::JoinHandle::is_finished)
        {
            let waits = StdArc::downgrade(self);
            let wake = StdArc::clone(&self.wake);
            let store = StdArc::downgrade(store);
            inner.watcher = Some(tokio::spawn(watch(waits, wake, store)));
        } else if first {
            self.wake.notify_one();
        }
        receiver
    }

    /// Takes out the waits whose position is durable (their senders, to
    /// complete) and drops those nobody waits for any more; also returns
    /// whether any wait is left.
    fn settle(&self, store: &ReplayStore<StreamRecord>) -> (Vec<oneshot::Sender<()>>, bool) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut durable_now = Vec::new();
        let mut at = 0;
        while let Some(waiting) = inner.waiting.get(at) {
            if waiting.done.is_closed() {
                drop(inner.waiting.swap_remove(at));
                continue;
            }
            // The log cannot answer now: the write keeps waiting (up to its
            // deadline).
            if matches!(
                store.durable_position(&waiting.key),
                Ok(Some(durable)) if durable >= waiting.position
            ) {
                durable_now.push(inner.waiting.swap_remove(at).done);
            } else {
                at += 1;
            }
        }
        (durable_now, !inner.waiting.is_empty())
    }
}

/// The watcher: after every commit (and whenever a first write registers),
/// completes the waits that are durable. Ends once the service or the
/// store is gone (a store's persister wakes its listeners as it stops).
async fn watch(
    waits: Weak<DurableWaits>,
    wake: StdArc<Notify>,
    store: Weak<ReplayStore<StreamRecord>>,
) {
    loop {
        let woken = wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let (Some(registry), Some(store)) = (waits.upgrade(), store.upgrade()) else {
            return;
        };
        // Armed before the look below (module docs, "No lost wake-up").
        let progress = store.durable_progress();
        let (durable_now, waiting) = registry.settle(&store);
        // Neither is held while waiting, nor when the writes are told: a
        // host that drops the service and the store once its last write is
        // answered closes the log then, not whenever the watcher lets go.
        drop((registry, store));
        for done in durable_now {
            // The write may have given up meanwhile: nothing to tell then.
            let _ = done.send(());
        }
        if waiting {
            tokio::select! {
                () = progress => {}
                () = &mut woken => {}
            }
        } else {
            drop(progress);
            woken.await;
        }
    }
}

impl super::DurableStreams {
    /// [`durable_by`](super::DurableStreams::durable_by) on one node: waits
    /// in the registry rather than on every commit.
    pub(crate) async fn durable_by_registered(
        &self,
        key: &SessionKey,
        position: u64,
        deadline: tokio::time::Instant,
    ) -> Result<bool, StreamError> {
        loop {
            if self.durable(key)? >= position {
                return Ok(true);
            }
            let done = self.durable_waits.register(&self.store, key, position);
            self.store.nudge_persister();
            if self.durable(key)? >= position {
                return Ok(true);
            }
            // Completed: durable (the look above confirms it); failed: the
            // watcher went away, so register again.
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                return Ok(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::durable::MemoryLog;
    use crate::{DurableOptions, Postcard, Revision};

    /// A write waits for the commit that covers it, and is still told when
    /// the runtime that ran the first watcher is gone (the next write's
    /// registration starts another). The host drives the persister here, so
    /// the write is certain to wait: its record is not durable until the
    /// round runs, after it registered.
    #[test]
    fn a_write_is_told_after_its_commit_across_runtimes() {
        let store = StdArc::new(
            ReplayStore::<StreamRecord>::builder()
                .durable(StdArc::new(MemoryLog::new()), Postcard)
                .durable_options(DurableOptions::default().with_persister_thread(false))
                .build()
                .expect("store"),
        );
        let service = super::super::DurableStreams::new(StdArc::clone(&store));
        let key = service.key("", "waits").expect("key");
        for round in 0..2 {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let durable = runtime.block_on(async {
                let position = store
                    .append(&key, Revision(0), StreamRecord::data("x"))
                    .expect("append")
                    .position();
                assert!(service.durable(&key).expect("watermark") < position);
                let persister = StdArc::clone(&store);
                let commit = tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    persister.persist_round()
                });
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                let durable = service
                    .durable_by(&key, position, deadline)
                    .await
                    .expect("wait");
                assert_eq!(commit.await.expect("round"), Some(true), "round {round}");
                assert!(service.durable(&key).expect("watermark") >= position);
                durable
            });
            assert!(durable, "round {round}: the write was not told");
        }
    }
}
