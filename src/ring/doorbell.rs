//! Waking parked subscribers without taxing writers when nobody waits.
//!
//! A subscriber that found nothing new *arms* the doorbell (registers an
//! `event-listener` listener and counts itself in `parked`), **re-checks**
//! the ring, and only then waits. A writer *rings* after publishing: one
//! fence and one load of `parked`, and a notification only when somebody is
//! parked.
//!
//! No lost wake-up (the store-buffer pattern, closed by two SeqCst fences):
//! the subscriber does `parked += 1; fence; read slot`, the writer does
//! `write slot; fence; read parked`. The two fences are totally ordered: if
//! the writer's comes first, the subscriber's re-check sees the event; if
//! the subscriber's comes first, the writer sees `parked > 0` and notifies,
//! and the listener registered before `parked` was raised receives it:
//! `event-listener` orders its own `listen` and `notify`, and a writer that
//! read the raised `parked` cannot take the listener list before the
//! `listen` that came before the raise (its read would read from a store
//! that happens after it). So `parked` itself needs no Acquire or Release:
//! the fences and the listener list carry the ordering (the mutation sweep,
//! loom-tests/README.md, confirms no model depends on more).

use event_listener::{Event as Notifier, EventListener};

use crate::sync::{fence, AtomicUsize};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};

pub(crate) struct Doorbell {
    notifier: Notifier,
    parked: AtomicUsize,
}

impl Doorbell {
    pub(crate) fn new() -> Self {
        Self {
            notifier: Notifier::new(),
            parked: AtomicUsize::new(0),
        }
    }

    /// Writer side, after publishing: wakes every armed subscriber.
    #[inline]
    pub(crate) fn ring(&self) {
        // SeqCst fence: orders our publish before the `parked` load against
        // the subscriber's `parked` increment before its re-check.
        fence(SeqCst);
        // Relaxed: the fence above orders it; the listener list orders the
        // notification after the listener's registration (module docs).
        if self.parked.load(Relaxed) != 0 {
            self.notifier.notify(usize::MAX);
        }
    }

    /// Wakes every listener unconditionally (the ring was closed).
    pub(crate) fn ring_all(&self) {
        self.notifier.notify(usize::MAX);
    }

    /// Subscriber side: registers a listener. The caller must re-check the
    /// ring after this returns and before waiting, and call
    /// [`Doorbell::disarm`] once for every `arm` when it stops waiting.
    pub(crate) fn arm(&self) -> EventListener {
        let listener = self.notifier.listen();
        // Relaxed: the registration is ordered by the listener list, the
        // increment by the fence below (module docs).
        self.parked.fetch_add(1, Relaxed);
        // SeqCst fence: pairs with the fence in `ring` (module docs).
        fence(SeqCst);
        listener
    }

    pub(crate) fn disarm(&self) {
        // Relaxed: an over-count only costs a writer a spurious notify; the
        // decrement publishes nothing.
        self.parked.fetch_sub(1, Relaxed);
    }

    /// Subscribers currently armed.
    pub(crate) fn parked(&self) -> usize {
        self.parked.load(Relaxed)
    }
}
