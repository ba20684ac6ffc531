//! Waking parked subscribers without taxing writers when nobody waits.
//!
//! The doorbell owns the wait list of one ring: a slab of wakers, one slot
//! per armed subscriber, under a mutex, and the count `parked` of armed
//! subscribers, which a writer reads to learn that nobody waits.
//!
//! A subscriber that found nothing new *arms* the doorbell (puts its
//! [`Waker`] in a free slot, then counts itself in `parked`), **re-checks**
//! the ring, and only then waits. A writer *rings* after publishing: one
//! fence and one load of `parked`, and it takes the list only when somebody
//! is parked, then wakes every armed slot.
//!
//! No lost wake-up (the store-buffer pattern, closed by two SeqCst fences):
//! the subscriber does `register; parked += 1; fence; read slot`, the writer
//! does `write slot; fence; read parked`. The two fences are totally
//! ordered: if the writer's comes first, the subscriber's re-check sees the
//! event; if the subscriber's comes first, the writer sees `parked > 0` and
//! takes the list, and finds the registration there: the registration's
//! critical section precedes the increment in program order, so a writer
//! that read the increment cannot have locked the list before it (its load
//! would then happen before the store it read from). So `parked` itself
//! needs no Acquire or Release: the fences and the mutex carry the ordering.
//!
//! Invariants:
//! * a slot is owned by the subscriber that armed it from `arm` until its
//!   `disarm` (every `arm` is paired with exactly one `disarm`): a writer
//!   only takes the waker out of an armed slot and marks it rung, it never
//!   frees a slot, so a slot index is never reused under its owner;
//! * wakers are woken and dropped outside the lock (an executor's waker may
//!   run arbitrary code), and no allocation happens once the slab has grown
//!   to the number of subscribers armed at once: the steady state of a
//!   wake-up is allocation-free (a waker clone is a reference count).

use std::task::Waker;

use crate::sync::{fence, AtomicUsize, Mutex, MutexGuard};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};

/// Wakers woken per turn of the lock: a writer takes up to this many, lets
/// the lock go, wakes them, and comes back for more.
const WAKE_BATCH: usize = 16;

/// An armed subscriber's slot in the wait list; hand it back to
/// [`Doorbell::disarm`] exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket(usize);

enum Slot {
    /// Nobody owns it; its index is on the free list.
    Free,
    /// Owned, waiting for a ring.
    Armed(Waker),
    /// Owned, rung since it was armed (the waker was taken and woken).
    Rung,
}

#[derive(Default)]
struct WaitList {
    slots: Vec<Slot>,
    free: Vec<usize>,
}

pub(crate) struct Doorbell {
    waiters: Mutex<WaitList>,
    parked: AtomicUsize,
}

impl Doorbell {
    pub(crate) fn new() -> Self {
        Self {
            waiters: Mutex::new(WaitList::default()),
            parked: AtomicUsize::new(0),
        }
    }

    fn list(&self) -> MutexGuard<'_, WaitList> {
        // A panic never happens under this lock (wakers run outside it), so
        // poisoning carries no meaning here: take the list as it is.
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writer side, after publishing: wakes every armed subscriber.
    #[inline]
    pub(crate) fn ring(&self) {
        // SeqCst fence: orders our publish before the `parked` load against
        // the subscriber's `parked` increment before its re-check.
        fence(SeqCst);
        // Relaxed: the fence above orders it; the mutex orders the list
        // after the registration (module docs).
        if self.parked.load(Relaxed) != 0 {
            self.wake_all();
        }
    }

    /// Wakes every armed subscriber unconditionally (the ring was closed).
    pub(crate) fn ring_all(&self) {
        // No fence: the closer's `CLOSED` bit precedes its lock of the list,
        // so a subscriber registered after that lock re-checks and sees it.
        self.wake_all();
    }

    #[cold]
    fn wake_all(&self) {
        let mut from = 0;
        loop {
            let mut batch: [Option<Waker>; WAKE_BATCH] = Default::default();
            let mut taken = 0;
            {
                let mut list = self.list();
                while from < list.slots.len() && taken < WAKE_BATCH {
                    let slot = &mut list.slots[from];
                    from += 1;
                    if matches!(slot, Slot::Armed(_)) {
                        if let Slot::Armed(waker) = std::mem::replace(slot, Slot::Rung) {
                            batch[taken] = Some(waker);
                            taken += 1;
                        }
                    }
                }
            }
            for waker in batch.iter_mut().take(taken) {
                if let Some(waker) = waker.take() {
                    waker.wake();
                }
            }
            if taken < WAKE_BATCH {
                return;
            }
        }
    }

    /// Subscriber side: registers `waker`. The caller must re-check the
    /// ring after this returns and before waiting, and call
    /// [`Doorbell::disarm`] with the ticket once it stops waiting.
    pub(crate) fn arm(&self, waker: Waker) -> Ticket {
        let ticket = {
            let mut list = self.list();
            match list.free.pop() {
                Some(index) => {
                    list.slots[index] = Slot::Armed(waker);
                    Ticket(index)
                }
                None => {
                    list.slots.push(Slot::Armed(waker));
                    Ticket(list.slots.len() - 1)
                }
            }
        };
        // Relaxed: the registration is ordered by the mutex, the increment
        // by the fence below (module docs).
        self.parked.fetch_add(1, Relaxed);
        // SeqCst fence: pairs with the fence in `ring` (module docs).
        fence(SeqCst);
        ticket
    }

    /// Whether the slot was rung since it was armed; if not, keeps it armed
    /// with `waker` (replacing the stored one if it would wake another task).
    pub(crate) fn poll(&self, ticket: Ticket, waker: &Waker) -> bool {
        let mut list = self.list();
        match &mut list.slots[ticket.0] {
            Slot::Rung => true,
            Slot::Armed(stored) => {
                if !stored.will_wake(waker) {
                    let old = std::mem::replace(stored, waker.clone());
                    drop(list);
                    drop(old);
                }
                false
            }
            // Never: the slot is ours until `disarm`.
            Slot::Free => true,
        }
    }

    /// Gives the slot back: the subscriber stopped waiting.
    pub(crate) fn disarm(&self, ticket: Ticket) {
        let stale = {
            let mut list = self.list();
            let stale = std::mem::replace(&mut list.slots[ticket.0], Slot::Free);
            list.free.push(ticket.0);
            stale
        };
        // Relaxed: an over-count only costs a writer a needless look at the
        // list; the decrement publishes nothing.
        self.parked.fetch_sub(1, Relaxed);
        // A waker never woken is dropped here, outside the lock.
        drop(stale);
    }

    /// Subscribers currently armed.
    pub(crate) fn parked(&self) -> usize {
        self.parked.load(Relaxed)
    }
}
