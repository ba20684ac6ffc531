//! One ring slot: an atomically replaceable `Option<Arc<Event<T>>>`.
//!
//! Invariant: the position of the event a slot holds never decreases,
//! except that trimming may empty a slot whose position is at or below the
//! ring's floor. That is what makes a slot self-describing: a reader looking
//! for position `p` compares the held event's position with `p`
//! ([`SlotRead`]), and a writer never lets an older event replace a newer
//! one (it compares before it swaps, and swaps only the exact event it
//! compared).

use crate::event::Event;
use crate::sync::{Arc, AtomicArcCell};

pub(crate) struct Slot<T>(AtomicArcCell<Event<T>>);

/// The outcome of [`Slot::install`].
#[must_use = "the displaced event is dropped wherever this is"]
pub(crate) enum Installed<T> {
    /// Installed; holds what it displaced (dropping it frees that event).
    Replaced(
        #[allow(dead_code, reason = "held only to choose when it is dropped")]
        Option<Arc<Event<T>>>,
    ),
    /// Not installed: a later position is already there.
    Lapped,
}

/// What a slot says about position `p`.
pub(crate) enum SlotRead<T> {
    /// It holds the event at `p`.
    Current(Arc<Event<T>>),
    /// It holds a later position: `p` was overwritten (lapped).
    Newer,
    /// It is empty or holds an earlier position: `p` is not published, or
    /// was trimmed and cleared (the caller tells which from the floor).
    Older,
}

impl<T> Slot<T> {
    pub(crate) fn empty() -> Self {
        Self(AtomicArcCell::empty())
    }

    /// Installs `event` unless the slot already holds a position at or past
    /// it (a later writer lapped this one: the event is then already outside
    /// the window, and readers report it trimmed).
    ///
    /// Returns the event it displaced, for the caller to drop once the
    /// append is fully published: a payload whose `Drop` panics must not
    /// leave a published event unannounced.
    pub(crate) fn install(&self, event: &Arc<Event<T>>) -> Installed<T> {
        let position = event.position;
        loop {
            let outcome = self.0.with(|current| {
                if current.is_some_and(|held| held.position >= position) {
                    return Some(Installed::Lapped);
                }
                // The CAS fails only if another writer or a trim changed the
                // slot since we looked: look again (lock-free, not waiting).
                self.0
                    .compare_and_set(current, Some(Arc::clone(event)))
                    .map(Installed::Replaced)
            });
            if let Some(installed) = outcome {
                return installed;
            }
        }
    }

    #[inline]
    pub(crate) fn read(&self, position: u64) -> SlotRead<T> {
        self.0.with(|current| match current {
            Some(event) if event.position == position => SlotRead::Current(Arc::clone(event)),
            Some(event) if event.position > position => SlotRead::Newer,
            _ => SlotRead::Older,
        })
    }

    /// Whether `position` is settled here: published, or already lapped.
    #[inline]
    pub(crate) fn holds_at_least(&self, position: u64) -> bool {
        self.0
            .with(|current| current.is_some_and(|event| event.position >= position))
    }

    /// Empties the slot if it holds exactly `position`; returns the event
    /// it removed. Compare-and-swap against the exact event seen, so a newer
    /// event installed meanwhile is never cleared.
    pub(crate) fn clear(&self, position: u64) -> Option<Arc<Event<T>>> {
        self.0.with(|current| match current {
            Some(event) if event.position == position => {
                self.0.compare_and_set(current, None).flatten()
            }
            _ => None,
        })
    }
}
