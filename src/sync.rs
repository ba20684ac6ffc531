//! The one switch between `std` and `loom`.
//!
//! Every concurrent protocol in this crate takes its atomics, fences, `Arc`
//! and thread-visible cells from here, so that `RUSTFLAGS="--cfg loom"` runs
//! the crate's real code under loom's model checker.
//!
//! Three third-party primitives cannot be seen into by loom; under
//! `cfg(loom)` each is replaced by a small stand-in that is **linearizable**,
//! which is the only property of the real type the protocols rely on:
//!
//! | real type | stand-in under loom | why the stand-in is faithful |
//! | --- | --- | --- |
//! | [`arc_swap::ArcSwapOption`] ([`AtomicArcCell`]) | a loom `AtomicUsize` index (into every value stored, kept alive) loaded and compared-and-swapped with `SeqCst` | `arc-swap` performs its load and compare-and-swap with `SeqCst` accesses to one pointer; the index is that pointer. Unlike a mutex (the first stand-in), a load synchronises only with the store it reads, so a reader's look at an entry gives it no ordering with another reader, as with the real cell |
//! | [`crossbeam_queue::SegQueue`] ([`Queue`]) | a `loom::sync::Mutex<VecDeque<_>>` | `SegQueue` is a linearizable MPMC FIFO whose push happens-before the pop that takes the value; a mutex gives exactly that |
//! | [`dashmap::DashMap`] ([`ShardedMap`]) | a `loom::sync::Mutex<HashMap<_, _>>` | each `DashMap` call runs under its shard's lock, so per key it is linearizable; one global lock is the same behaviour with a coarser shard |
//!
//! `event-listener` is not replaced: it supports loom itself (its `loom`
//! feature is switched on under `cfg(loom)`), so its real code is checked.
//! Nor is the ring's write-once slot (`ring::slot`): it is the crate's own
//! code on loom's `AtomicPtr` and `Arc`, with a [`Witness`] that lets loom
//! check that every read of an event is ordered after its write.
//! Loom cannot model timeouts, so under loom a timed wait waits without one.

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU64, AtomicUsize};
// The doorbell's wait list: std's mutex, loom's under `cfg(loom)` (a std
// primitive loom models itself, not a stand-in).
#[cfg(loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};
#[cfg(not(loom))]
pub use std::sync::Arc;
#[cfg(not(loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU64, AtomicUsize};
#[cfg(loom)]
pub use loom::sync::Arc;

/// An atomic that is only ever a hint: whatever a load returns, the code
/// reading it stays correct (it only decides whether to look behind a lock
/// that guards the real state). `std`'s under both configurations: loom
/// would only multiply interleavings on a value no outcome depends on.
pub(crate) type HintUsize = std::sync::atomic::AtomicUsize;

pub(crate) use cell::{AtomicArcCell, Loaded};
pub(crate) use map::ShardedMap;
pub(crate) use park::{park, thread_waker};
pub(crate) use queue::Queue;
pub(crate) use witness::Witness;

/// Waits on an `event-listener` listener for at most `timeout`; returns
/// whether it was notified.
#[cfg(not(loom))]
pub(crate) fn wait_listener(
    listener: event_listener::EventListener,
    timeout: std::time::Duration,
) -> bool {
    use event_listener::Listener;
    listener.wait_timeout(timeout).is_some()
}

/// Under loom a timeout cannot be modelled: wait for the notification, so a
/// lost wake-up shows up as the deadlock loom reports.
#[cfg(loom)]
pub(crate) fn wait_listener(
    listener: event_listener::EventListener,
    _timeout: std::time::Duration,
) -> bool {
    use event_listener::Listener;
    listener.wait();
    true
}

/// Takes the pointer out of an atomic held exclusively, leaving null, with
/// no atomic operation (`&mut` is the synchronisation).
#[inline]
pub(crate) fn take_ptr<T>(atomic: &mut AtomicPtr<T>) -> *mut T {
    #[cfg(not(loom))]
    return std::mem::replace(atomic.get_mut(), std::ptr::null_mut());
    #[cfg(loom)]
    return atomic.with_mut(|value| std::mem::replace(value, std::ptr::null_mut()));
}

#[cfg(not(loom))]
mod witness {
    /// Nothing outside loom: see the loom version.
    pub(crate) struct Witness;

    impl Witness {
        pub(crate) fn new() -> Self {
            Self
        }

        #[inline(always)]
        pub(crate) fn write(&self) {}

        #[inline(always)]
        pub(crate) fn read(&self) {}

        #[inline(always)]
        pub(crate) fn take(&mut self) {}
    }
}

#[cfg(loom)]
#[allow(unsafe_code)]
mod witness {
    /// Stands for the data a write-once slot publishes: the writer records
    /// a write, each reader a read, the owner that empties the slot a
    /// write, on a loom cell, so loom reports ("causality violation") any
    /// read or write not ordered after the previous write. The data itself
    /// (an `Arc`'s allocation) is plain memory loom does not track.
    pub(crate) struct Witness(loom::cell::UnsafeCell<()>);

    // SAFETY: the cell holds `()` and is never dereferenced: `with` and
    // `with_mut` only record an access in loom's model, whose state loom
    // keeps for one running thread at a time.
    unsafe impl Sync for Witness {}

    impl Witness {
        pub(crate) fn new() -> Self {
            Self(loom::cell::UnsafeCell::new(()))
        }

        pub(crate) fn write(&self) {
            self.0.with_mut(|_| ());
        }

        pub(crate) fn read(&self) {
            self.0.with(|_| ());
        }

        pub(crate) fn take(&mut self) {
            self.0.with_mut(|_| ());
        }
    }
}

#[cfg(not(loom))]
mod cell {
    use std::sync::Arc;

    use arc_swap::ArcSwapOption;

    /// A cell holding an optional `Arc<E>` that readers clone while writers
    /// replace it. `arc-swap` carries the burden of not freeing an `Arc` a
    /// reader is cloning.
    pub(crate) struct AtomicArcCell<E>(ArcSwapOption<E>);

    impl<E> AtomicArcCell<E> {
        pub(crate) fn empty() -> Self {
            Self(ArcSwapOption::const_empty())
        }

        /// Runs `f` on the current value without touching its reference
        /// count (arc-swap's debt-based `load`).
        #[inline]
        pub(crate) fn with<R>(&self, f: impl FnOnce(Option<&Arc<E>>) -> R) -> R {
            let guard = self.0.load();
            f(guard.as_ref())
        }

        /// The current value, held without touching its reference count
        /// while the [`Loaded`] lives (arc-swap's guard; a thread holding
        /// more than a few at once gets counted references for the rest).
        #[inline]
        pub(crate) fn load(&self) -> Loaded<E> {
            Loaded(self.0.load())
        }

        /// Replaces the value with `new` if it is still exactly `current`
        /// (pointer identity). `Some(displaced)` if it did, `None` if the
        /// value had changed. The displaced value is handed back so the
        /// caller chooses when it is dropped (a payload's `Drop` runs then).
        #[inline]
        pub(crate) fn compare_and_set(
            &self,
            current: Option<&Arc<E>>,
            new: Option<Arc<E>>,
        ) -> Option<Option<Arc<E>>> {
            let current_ptr = current.map_or(std::ptr::null(), Arc::as_ptr);
            let previous = self.0.compare_and_swap(current_ptr, new);
            let previous_ptr = previous.as_ref().map_or(std::ptr::null(), Arc::as_ptr);
            (previous_ptr == current_ptr).then(|| arc_swap::Guard::into_inner(previous))
        }
    }

    /// A value of an [`AtomicArcCell`] as it was loaded, kept alive (not
    /// freed, whatever the cell holds meanwhile) until this is dropped.
    pub(crate) struct Loaded<E>(arc_swap::Guard<Option<Arc<E>>>);

    impl<E> Loaded<E> {
        #[inline]
        pub(crate) fn get(&self) -> Option<&Arc<E>> {
            self.0.as_ref()
        }
    }
}

#[cfg(loom)]
mod cell {
    use std::sync::atomic::Ordering::SeqCst;
    use std::sync::Mutex as StdMutex;

    use loom::sync::atomic::AtomicUsize;
    use loom::sync::Arc;

    /// Like `ArcSwapOption`: the current value is a loom atomic (an index
    /// into every value ever stored, 0 for none) loaded and compared-and-
    /// swapped with SeqCst, as arc-swap does with its pointer. A load
    /// synchronises only with the store it reads, never with other loads,
    /// so the stand-in adds no ordering the real cell lacks. Values stay
    /// alive for the model's execution, as arc-swap keeps a value alive for
    /// a reader that loaded it.
    pub(crate) struct AtomicArcCell<E> {
        current: AtomicUsize,
        values: StdMutex<Vec<Arc<E>>>,
    }

    impl<E> AtomicArcCell<E> {
        pub(crate) fn empty() -> Self {
            Self {
                current: AtomicUsize::new(0),
                values: StdMutex::new(Vec::new()),
            }
        }

        fn value(&self, index: usize) -> Option<Arc<E>> {
            let values = self.values.lock().unwrap();
            index.checked_sub(1).map(|i| Arc::clone(&values[i]))
        }

        pub(crate) fn with<R>(&self, f: impl FnOnce(Option<&Arc<E>>) -> R) -> R {
            f(self.load().get())
        }

        pub(crate) fn load(&self) -> Loaded<E> {
            Loaded(self.value(self.current.load(SeqCst)))
        }

        pub(crate) fn compare_and_set(
            &self,
            current: Option<&Arc<E>>,
            new: Option<Arc<E>>,
        ) -> Option<Option<Arc<E>>> {
            let new_index = match new {
                Some(value) => {
                    let mut values = self.values.lock().unwrap();
                    values.push(value);
                    values.len()
                }
                None => 0,
            };
            let mut seen = self.current.load(SeqCst);
            loop {
                let held = self.value(seen);
                let same = match (held.as_ref(), current) {
                    (None, None) => true,
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    _ => false,
                };
                if !same {
                    return None;
                }
                match self
                    .current
                    .compare_exchange(seen, new_index, SeqCst, SeqCst)
                {
                    Ok(_) => return Some(held),
                    // Another index that may hold the same value: look again.
                    Err(actual) => seen = actual,
                }
            }
        }
    }

    /// A loaded value, kept alive by its own reference (the values list
    /// keeps it alive anyway, as arc-swap's guard does).
    pub(crate) struct Loaded<E>(Option<Arc<E>>);

    impl<E> Loaded<E> {
        pub(crate) fn get(&self) -> Option<&Arc<E>> {
            self.0.as_ref()
        }
    }
}

#[cfg(not(loom))]
mod map {
    use std::hash::Hash;

    use std::hash::{BuildHasherDefault, Hasher};

    use dashmap::mapref::entry::Entry;
    use dashmap::DashMap;

    /// Passes a key's precomputed 64-bit hash through (session keys hash
    /// themselves once, seeded, at creation). Anything else written is
    /// folded in, so it stays a correct, if plain, hasher.
    #[derive(Default)]
    pub(crate) struct PrehashedKeys(u64);

    impl Hasher for PrehashedKeys {
        fn finish(&self) -> u64 {
            self.0
        }

        fn write(&mut self, bytes: &[u8]) {
            for &byte in bytes {
                self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
            }
        }

        fn write_u64(&mut self, hash: u64) {
            self.0 ^= hash;
        }
    }

    /// The session map: a concurrent hash map whose only lock is a shard
    /// lock held for the duration of one call.
    pub(crate) struct ShardedMap<K, V>(DashMap<K, V, BuildHasherDefault<PrehashedKeys>>);

    impl<K: Eq + Hash + Clone, V> ShardedMap<K, V> {
        pub(crate) fn new() -> Self {
            Self(DashMap::default())
        }

        /// Runs `f` on the value while the shard's read lock is held, so a
        /// removal of that key cannot interleave with `f`.
        #[inline]
        pub(crate) fn with<R>(&self, key: &K, f: impl FnOnce(&V) -> R) -> Option<R> {
            self.0.get(key).map(|entry| f(entry.value()))
        }

        /// Like [`with`](Self::with), handing `state` to `f` by value, or
        /// back as `Err(state)` if the key is absent (or if `f` gives it
        /// back): a caller that moves something into the call (an append's
        /// payload) gets it back without wrapping it in an `Option`.
        #[inline]
        pub(crate) fn with_state<S, R>(
            &self,
            key: &K,
            state: S,
            f: impl FnOnce(&V, S) -> Result<R, S>,
        ) -> Result<R, S> {
            match self.0.get(key) {
                Some(entry) => f(entry.value(), state),
                None => Err(state),
            }
        }

        /// Runs `f` on the stored key and value of the entry that `key`
        /// (any borrowed form of the map's key) finds, while the shard's
        /// read lock is held.
        #[inline]
        pub(crate) fn with_entry<Q, R>(&self, key: &Q, f: impl FnOnce(&K, &V) -> R) -> Option<R>
        where
            K: std::borrow::Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            self.0.get(key).map(|entry| f(entry.key(), entry.value()))
        }

        /// Under the shard's write lock, `f` sees the value for `key` (and
        /// may change it in place) and returns a value to store in its
        /// place (or to insert), if any, and a result.
        pub(crate) fn update<R>(
            &self,
            key: &K,
            f: impl FnOnce(Option<&mut V>) -> (Option<V>, R),
        ) -> R {
            match self.0.entry(key.clone()) {
                Entry::Occupied(mut entry) => {
                    let (new, result) = f(Some(entry.get_mut()));
                    if let Some(value) = new {
                        entry.insert(value);
                    }
                    result
                }
                Entry::Vacant(entry) => {
                    let (new, result) = f(None);
                    if let Some(value) = new {
                        entry.insert(value);
                    }
                    result
                }
            }
        }

        /// Removes `key` if `pred` holds, deciding under the shard's write lock.
        pub(crate) fn remove_if(&self, key: &K, pred: impl FnOnce(&V) -> bool) -> Option<V> {
            self.0
                .remove_if(key, |_, value| pred(value))
                .map(|(_, value)| value)
        }

        /// Keeps the entries for which `keep` holds (which may change them
        /// in place), one shard at a time under its write lock.
        pub(crate) fn retain(&self, mut keep: impl FnMut(&K, &mut V) -> bool) {
            self.0.retain(|key, value| keep(key, value));
        }

        /// Visits every entry (shard by shard, not a snapshot).
        pub(crate) fn for_each(&self, mut f: impl FnMut(&K, &V)) {
            for entry in self.0.iter() {
                f(entry.key(), entry.value());
            }
        }
    }
}

#[cfg(loom)]
mod map {
    use std::collections::HashMap;
    use std::hash::Hash;

    use loom::sync::Mutex;

    pub(crate) struct ShardedMap<K, V>(Mutex<HashMap<K, V>>);

    impl<K: Eq + Hash + Clone, V> ShardedMap<K, V> {
        pub(crate) fn new() -> Self {
            Self(Mutex::new(HashMap::new()))
        }

        pub(crate) fn with<R>(&self, key: &K, f: impl FnOnce(&V) -> R) -> Option<R> {
            self.0.lock().unwrap().get(key).map(f)
        }

        pub(crate) fn with_state<S, R>(
            &self,
            key: &K,
            state: S,
            f: impl FnOnce(&V, S) -> Result<R, S>,
        ) -> Result<R, S> {
            match self.0.lock().unwrap().get(key) {
                Some(value) => f(value, state),
                None => Err(state),
            }
        }

        pub(crate) fn with_entry<Q, R>(&self, key: &Q, f: impl FnOnce(&K, &V) -> R) -> Option<R>
        where
            K: std::borrow::Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            self.0
                .lock()
                .unwrap()
                .get_key_value(key)
                .map(|(key, value)| f(key, value))
        }

        pub(crate) fn update<R>(
            &self,
            key: &K,
            f: impl FnOnce(Option<&mut V>) -> (Option<V>, R),
        ) -> R {
            let mut map = self.0.lock().unwrap();
            let (new, result) = f(map.get_mut(key));
            if let Some(value) = new {
                map.insert(key.clone(), value);
            }
            result
        }

        pub(crate) fn remove_if(&self, key: &K, pred: impl FnOnce(&V) -> bool) -> Option<V> {
            let mut map = self.0.lock().unwrap();
            if map.get(key).is_some_and(pred) {
                map.remove(key)
            } else {
                None
            }
        }

        pub(crate) fn retain(&self, mut keep: impl FnMut(&K, &mut V) -> bool) {
            self.0.lock().unwrap().retain(|key, value| keep(key, value));
        }

        pub(crate) fn for_each(&self, mut f: impl FnMut(&K, &V)) {
            for (key, value) in self.0.lock().unwrap().iter() {
                f(key, value);
            }
        }
    }
}

#[cfg(not(loom))]
mod queue {
    use crossbeam_queue::SegQueue;

    /// An unbounded lock-free MPMC queue (the persister's dirty sessions).
    pub(crate) struct Queue<E>(SegQueue<E>);

    impl<E> Queue<E> {
        pub(crate) fn new() -> Self {
            Self(SegQueue::new())
        }

        #[inline]
        pub(crate) fn push(&self, value: E) {
            self.0.push(value);
        }

        pub(crate) fn pop(&self) -> Option<E> {
            self.0.pop()
        }
    }
}

#[cfg(loom)]
mod queue {
    use std::collections::VecDeque;

    use loom::sync::Mutex;

    pub(crate) struct Queue<E>(Mutex<VecDeque<E>>);

    impl<E> Queue<E> {
        pub(crate) fn new() -> Self {
            Self(Mutex::new(VecDeque::new()))
        }

        pub(crate) fn push(&self, value: E) {
            self.0.lock().unwrap().push_back(value);
        }

        pub(crate) fn pop(&self) -> Option<E> {
            self.0.lock().unwrap().pop_front()
        }
    }
}

/// Blocking waits on the current thread: a waker that unparks it, and a
/// park with a timeout (std's, or loom's, which has no timeout).
mod park {
    use std::task::Waker;

    /// A waker that unparks the current thread, for blocking waits. Cached per
    /// thread: after a thread's first wait, arming clones a reference count.
    #[cfg(not(loom))]
    pub(crate) fn thread_waker() -> Waker {
        use std::sync::Arc;
        use std::task::Wake;

        struct Unparker(std::thread::Thread);

        impl Wake for Unparker {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }

            fn wake_by_ref(self: &Arc<Self>) {
                self.0.unpark();
            }
        }

        thread_local! {
            static WAKER: Waker = Waker::from(Arc::new(Unparker(std::thread::current())));
        }
        WAKER
            .try_with(Waker::clone)
            // In a thread-local destructor: build one for this wait.
            .unwrap_or_else(|_| Waker::from(Arc::new(Unparker(std::thread::current()))))
    }

    /// Parks the current thread until woken (or spuriously) or `timeout`;
    /// with no timeout, no timer is armed at all (a timed wait costs the
    /// kernel a timer per wait, about 0.1 µs of every wake-up).
    #[cfg(not(loom))]
    pub(crate) fn park(timeout: Option<std::time::Duration>) {
        match timeout {
            Some(timeout) => std::thread::park_timeout(timeout),
            None => std::thread::park(),
        }
    }

    /// Under loom: a waker that unparks the current loom thread.
    #[cfg(loom)]
    pub(crate) fn thread_waker() -> Waker {
        use std::sync::Arc;
        use std::task::Wake;

        struct Unparker(loom::thread::Thread);

        impl Wake for Unparker {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }

        Waker::from(Arc::new(Unparker(loom::thread::current())))
    }

    /// Under loom a timeout cannot be modelled: park until unparked, so a lost
    /// wake-up shows up as the deadlock loom reports.
    #[cfg(loom)]
    pub(crate) fn park(_timeout: Option<std::time::Duration>) {
        loom::thread::park();
    }
}
