//! The session map: key → current incarnation of the session.
//!
//! This is the only place with a lock: the map's shard lock, held for one
//! lookup, creation or removal (and, for an append by key, for the append
//! itself under the shard's *read* lock, which other readers share).
//!
//! Its counters (`live`, creations, evictions) are `Relaxed` atomics: they
//! count and bound, and publish no data; the bound holds through the
//! read-modify-write order of `live` alone.
//!
//! Invariants:
//! * at most `max_sessions` sessions are in the map: a creation reserves its
//!   place in `live` before inserting and gives it back if it did not insert;
//! * a session is evicted only when nobody but the map holds it (no handle,
//!   no subscription) and it retains no event, decided under the shard's
//!   write lock. No by-key operation can take a reference meanwhile (they
//!   need the shard's read lock), so no append can race an eviction: an
//!   append that returned `Ok` is in a session that is still in the map, or
//!   was removed explicitly with `remove_session` (and its cursors then read
//!   as `Reset` or `Unavailable`).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc as StdArc;

use crate::error::Refusal;
use crate::key::SessionKey;
use crate::session::{Session, Shared};
use crate::sync::{Arc, AtomicU64, AtomicUsize, ShardedMap};

/// The fewest creations between two automatic sweeps.
const MIN_SWEEP_INTERVAL: usize = 1024;

pub(crate) struct SessionMap<T> {
    map: ShardedMap<SessionKey, Arc<Session<T>>>,
    /// Sessions in the map (plus in-flight reservations).
    live: AtomicUsize,
    /// Creations since the last sweep.
    created_since_sweep: AtomicUsize,
    /// Creation counter, for "newest first".
    next_created: AtomicU64,
    /// Sessions evicted over the store's life.
    evicted: AtomicU64,
}

impl<T> SessionMap<T> {
    pub(crate) fn new() -> Self {
        Self {
            map: ShardedMap::new(),
            live: AtomicUsize::new(0),
            created_since_sweep: AtomicUsize::new(0),
            next_created: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    /// Runs `f` on the session while the shard's read lock is held.
    #[inline]
    pub(crate) fn with<R>(
        &self,
        key: &SessionKey,
        f: impl FnOnce(&Arc<Session<T>>) -> R,
    ) -> Option<R> {
        self.map.with(key, f)
    }

    pub(crate) fn get(&self, key: &SessionKey) -> Option<Arc<Session<T>>> {
        self.map.with(key, Arc::clone)
    }

    /// The session for `key`, created if absent (subject to `max_sessions`).
    pub(crate) fn get_or_create(
        &self,
        key: &SessionKey,
        shared: &StdArc<Shared<T>>,
    ) -> Result<Arc<Session<T>>, Refusal> {
        if let Some(session) = self.get(key) {
            return Ok(session);
        }
        let max = shared.config.max_sessions;
        // Relaxed: `live` is a bound, enforced by the RMW order alone.
        if self.live.fetch_add(1, Relaxed) >= max {
            self.live.fetch_sub(1, Relaxed);
            self.sweep(shared);
            if self.live.fetch_add(1, Relaxed) >= max {
                self.live.fetch_sub(1, Relaxed);
                return Err(Refusal::TooManySessions { max });
            }
        }
        let (session, inserted) = self.map.get_or_try_insert(key, || {
            let created = self.next_created.fetch_add(1, Relaxed);
            Ok::<_, Refusal>(Arc::new(Session::new(
                key.clone(),
                created,
                StdArc::clone(shared),
            )))
        })?;
        if !inserted {
            self.live.fetch_sub(1, Relaxed);
        } else if shared.config.auto_sweep {
            self.maybe_sweep(shared);
        }
        Ok(session)
    }

    /// Sweeps when enough sessions were created since the last sweep that
    /// its O(sessions) cost is amortised to O(1) per creation.
    fn maybe_sweep(&self, shared: &Shared<T>) {
        let interval = (self.live.load(Relaxed) / 2).max(MIN_SWEEP_INTERVAL);
        if self.created_since_sweep.fetch_add(1, Relaxed) + 1 >= interval {
            self.sweep(shared);
        }
    }

    /// Evicts every idle session (trimmed to nothing, nobody holding it).
    /// Returns how many it evicted.
    pub(crate) fn sweep(&self, shared: &Shared<T>) -> usize {
        self.created_since_sweep.store(0, Relaxed);
        let now = shared.now();
        // Evicted sessions are dropped only after the sweep has accounted
        // for them: a payload whose `Drop` panics must not leave the counts
        // wrong (or unwind out of the map's shard lock).
        let mut evicted = Vec::new();
        self.map.retain(|_, session| {
            let evict = Session::is_evictable(session, now);
            if evict {
                evicted.push(Arc::clone(session));
            }
            !evict
        });
        for session in &evicted {
            shared
                .counters
                .appends_of_gone_sessions
                .add(session.ring.claimed());
        }
        if !evicted.is_empty() {
            self.live.fetch_sub(evicted.len(), Relaxed);
            self.evicted.fetch_add(evicted.len() as u64, Relaxed);
        }
        evicted.len()
    }

    /// Trims one session and evicts it if that left it idle.
    pub(crate) fn trim(&self, key: &SessionKey, shared: &Shared<T>) -> usize {
        let now = shared.now();
        let Some(freed) = self.map.with(key, |session| session.trim(now)) else {
            return 0;
        };
        if let Some(session) = self
            .map
            .remove_if(key, |session| Session::is_evictable(session, now))
        {
            shared
                .counters
                .appends_of_gone_sessions
                .add(session.ring.claimed());
            self.live.fetch_sub(1, Relaxed);
            self.evicted.fetch_add(1, Relaxed);
        }
        freed
    }

    /// Removes the session whatever holds it; later appends through a
    /// handle are refused and subscribers end with a `Reset` gap.
    pub(crate) fn remove(&self, key: &SessionKey, shared: &Shared<T>) -> bool {
        match self.map.remove_if(key, |_| true) {
            Some(session) => {
                self.live.fetch_sub(1, Relaxed);
                session.ring.close();
                // Appends racing the close may still land: count what was
                // claimed when it closed.
                shared
                    .counters
                    .appends_of_gone_sessions
                    .add(session.ring.claimed());
                true
            }
            None => false,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.live.load(Relaxed)
    }

    pub(crate) fn evicted(&self) -> u64 {
        self.evicted.load(Relaxed)
    }

    /// The sessions of `tenant`, newest first.
    pub(crate) fn of_tenant(&self, tenant: &str, limit: usize, offset: usize) -> Vec<SessionKey> {
        let mut found = Vec::new();
        self.map.for_each(|key, session| {
            if key.tenant() == tenant {
                found.push((session.created(), key.clone()));
            }
        });
        found.sort_unstable_by_key(|(created, _)| std::cmp::Reverse(*created));
        found
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|(_, key)| key)
            .collect()
    }

    pub(crate) fn for_each(&self, f: impl FnMut(&SessionKey, &Arc<Session<T>>)) {
        self.map.for_each(f);
    }
}
