//! The session map: key → the session, resident or dormant.
//!
//! This is the only place with a lock: the map's shard lock, held for one
//! lookup, creation or removal (and, for an append by key, for the append
//! itself under the shard's *read* lock, which other readers share).
//!
//! # Tombstones
//!
//! Evicting a session does not forget it: its entry turns *dormant*, a
//! [`Tombstone`] of a few dozen bytes holding its [`Identity`] and its last
//! position and revision. While the tombstone lives, cursors are answered as
//! if the session had stayed (its events read as trimmed, with the count),
//! and re-creating it continues the same incarnation at the next position,
//! so eviction is invisible to cursors except as trimming. Tombstones are
//! bounded by count and age (`Config::tombstones`,
//! `Config::tombstone_ttl`); once one expires the session is forgotten here
//! (a durable log, if any, still knows it).
//!
//! Turning a session dormant and reviving it both happen under the shard's
//! write lock, so they are totally ordered with each other and with every
//! by-key lookup; the handle and subscription holders that the lock cannot
//! see are excluded by the eviction check (nobody holds it: every
//! reference that leaves the lock is a counted `Held`).
//!
//! Its counters (`live`, creations, evictions) are `Relaxed` atomics: they
//! count and bound, and publish no data; the bound holds through the
//! read-modify-write order of `live` alone.
//!
//! Invariants:
//! * at most `max_sessions` sessions are in the map: a creation reserves its
//!   place in `live` before inserting and gives it back if it did not insert;
//! * a session is evicted only when nobody but the map holds it (no handle,
//!   no subscription, no persister) and it retains no event (and, with a
//!   durable log, everything it holds is durable), decided under the shard's
//!   write lock. No by-key operation can take a reference meanwhile (they
//!   need the shard's read lock), so no append can race an eviction: an
//!   append that returned `Ok` is in a session that is still in the map, or
//!   was removed explicitly with `remove_session` (and its cursors then read
//!   as `Reset` or `Unavailable`);
//! * a removed session is sealed and registered with the persister under
//!   the shard's write lock, before its entry leaves, so a re-creation by
//!   key (which needs that lock) continues after its last position;
//! * a restore's answer (read from the log outside the lock) is used only
//!   if its key's departure stripe did not move while it read: no entry of
//!   the key left the map meanwhile, so the answer is not older than what
//!   the map forgot. Over a shared log, a tombstone is revived only if the
//!   log's newest life is still the tombstone's.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::Arc as StdArc;

use crate::closure::CloseReason;
use crate::cursor::Cursor;
use crate::error::{Gap, GapReason, Refusal};
use crate::event::Timestamp;
use crate::key::{KeyProbe, KeyView, SessionKey};
use crate::session::{Held, Identity, Restored, Session, Shared};
use crate::sync::{Arc, AtomicU64, AtomicUsize, ShardedMap};

/// The fewest creations between two automatic sweeps.
const MIN_SWEEP_INTERVAL: usize = 1024;

/// What an evicted session leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tombstone {
    /// Who it was; `start` is its last position, `start_revision` that
    /// position's revision.
    pub(crate) identity: Identity,
    /// Its creation order, kept so listings stay newest first.
    pub(crate) created: u64,
    /// When it was evicted, for the tombstone's age bound.
    pub(crate) evicted_at: Timestamp,
    /// It was closed (at its last position): revived closed.
    pub(crate) closed: Option<CloseReason>,
}

impl Tombstone {
    /// The cursor at the session's last position.
    pub(crate) fn latest(&self, key: &SessionKey) -> Cursor {
        let last = self.identity.start;
        Cursor::new(
            key.clone(),
            (last > 0).then(|| self.identity.incarnation_at(last)),
            self.identity.start_revision,
            last,
        )
    }

    /// Whether a restore from a shared log found this tombstone's life
    /// still the newest there, ending where the tombstone ends (no other
    /// node wrote the session since), or found a removed session of this
    /// node still on its way to the log.
    fn is_current_in<T>(&self, restored: &Restored<T>) -> bool {
        restored.predecessor.is_some()
            || restored.identity.previous == Some((self.identity.incarnation, self.identity.start))
    }

    /// The contract's answer to `cursor` on the dormant session: as if the
    /// session were resident with every event trimmed.
    pub(crate) fn answer(&self, cursor: &Cursor) -> Result<(), Gap> {
        let key = cursor.key();
        let last = self.identity.start;
        let after = cursor.position();
        let gap = |reason, missed| Gap {
            reason,
            requested: cursor.clone(),
            latest: self.latest(key),
            missed,
        };
        if after > 0 {
            match (cursor.incarnation(), self.identity.previous) {
                (Some(i), _) if i == self.identity.incarnation => {}
                (Some(i), Some((previous, end))) if i == previous => {
                    if after > end {
                        return Err(gap(GapReason::Lost, Some(after - end)));
                    }
                }
                (Some(_), _) => return Err(gap(GapReason::Reset, None)),
                (None, _) => {}
            }
        }
        if after > last {
            return Err(gap(GapReason::Unavailable, None));
        }
        if after < last {
            return Err(gap(GapReason::Trimmed, Some(last - after)));
        }
        Ok(())
    }
}

/// A map entry.
pub(crate) enum Entry<T> {
    /// In memory, with its ring.
    Resident(Arc<Session<T>>),
    /// Evicted; its identity is remembered.
    Dormant(Tombstone),
}

/// What a by-key lookup found.
pub(crate) enum Found<'a, T> {
    Resident(&'a Arc<Session<T>>),
    Dormant(&'a Tombstone),
}

pub(crate) struct SessionMap<T> {
    map: ShardedMap<SessionKey, Entry<T>>,
    /// Resident sessions in the map (plus in-flight reservations).
    live: AtomicUsize,
    /// Dormant sessions in the map.
    dormant: AtomicUsize,
    /// Creations since the last sweep.
    created_since_sweep: AtomicUsize,
    /// Creation counter, for "newest first".
    next_created: AtomicU64,
    /// Sessions evicted over the store's life.
    evicted: AtomicU64,
    /// Sessions revived from a tombstone over the store's life.
    revived: AtomicU64,
    /// Tombstones dropped (by age or count) over the store's life.
    forgotten: AtomicU64,
    /// Entries that left the map, counted per stripe of keys: a restore
    /// (log I/O outside the lock) is used only if its key's stripe did not
    /// move meanwhile. Striped so that churn on other keys rarely sends a
    /// restore round again.
    departures: Box<[AtomicU64]>,
}

/// Departure stripes: a restore retries when another key of its stripe
/// left the map while it read the log (1 in 256 at worst).
#[cfg(not(loom))]
const DEPARTURE_STRIPES: usize = 256;
#[cfg(loom)]
const DEPARTURE_STRIPES: usize = 2;

impl<T> SessionMap<T> {
    pub(crate) fn new() -> Self {
        Self {
            map: ShardedMap::new(),
            live: AtomicUsize::new(0),
            dormant: AtomicUsize::new(0),
            created_since_sweep: AtomicUsize::new(0),
            next_created: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            revived: AtomicU64::new(0),
            forgotten: AtomicU64::new(0),
            departures: (0..DEPARTURE_STRIPES).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Runs `f` on the resident session while the shard's read lock is held.
    #[inline]
    pub(crate) fn with<R>(
        &self,
        key: &SessionKey,
        f: impl FnOnce(&Arc<Session<T>>) -> R,
    ) -> Option<R> {
        self.map
            .with(key, |entry| match entry {
                Entry::Resident(session) => Some(f(session)),
                Entry::Dormant(_) => None,
            })
            .flatten()
    }

    /// Runs `f` on the resident session with `state` while the shard's
    /// read lock is held; `Err(state)` if `key` is not resident (absent or
    /// dormant), so the caller keeps what it moved in.
    #[inline]
    pub(crate) fn with_resident<S, R>(
        &self,
        key: &SessionKey,
        state: S,
        f: impl FnOnce(&Arc<Session<T>>, S) -> R,
    ) -> Result<R, S> {
        self.map.with_state(key, state, |entry, state| match entry {
            Entry::Resident(session) => Ok(f(session, state)),
            Entry::Dormant(_) => Err(state),
        })
    }

    /// Runs `f` on whatever the map holds for `key`, under the read lock.
    pub(crate) fn with_found<R>(
        &self,
        key: &SessionKey,
        f: impl FnOnce(Found<'_, T>) -> R,
    ) -> Option<R> {
        self.map.with(key, |entry| match entry {
            Entry::Resident(session) => f(Found::Resident(session)),
            Entry::Dormant(tombstone) => f(Found::Dormant(tombstone)),
        })
    }

    /// The key the map holds for these ids (resident or dormant), found
    /// without building a key: one hash of the ids, no allocation.
    pub(crate) fn known_key(&self, tenant: &str, session: &str) -> Option<SessionKey> {
        let probe = KeyProbe::new(tenant, session);
        self.map
            .with_entry(&probe as &dyn KeyView, |key, _| key.clone())
    }

    /// The resident session, held (taken under the shard's lock, so no
    /// eviction can slip between the look and the hold).
    pub(crate) fn get(&self, key: &SessionKey) -> Option<Held<T>> {
        self.with(key, Held::new)
    }

    /// The resident session for `key`: revived from its tombstone, or
    /// created with the identity `restore` gives (called outside the lock;
    /// the durable tier reads the log there), subject to `max_sessions`.
    ///
    /// A restore is used only if no session of the key left the map while
    /// it ran (its answer may predate that session's writes: the key's
    /// departure stripe is compared under the write lock). Over a shared
    /// log a tombstone is revived only if the log's newest life is still
    /// the tombstone's, ending where it ended; otherwise another node wrote
    /// the session meanwhile and it is restored after that node's tail.
    pub(crate) fn get_or_create(
        &self,
        key: &SessionKey,
        shared: &StdArc<Shared<T>>,
        restore: &dyn Fn() -> Result<Restored<T>, Refusal>,
    ) -> Result<Held<T>, Refusal> {
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
        // Before the look (and the restore): a departure after this is seen
        // under the lock below.
        let departures = self.departures_seen(key);
        // What the map holds now: nothing, or a tombstone.
        let seen: Option<Option<Tombstone>> = self.map.with(key, |entry| match entry {
            Entry::Dormant(tombstone) => Some(*tombstone),
            Entry::Resident(_) => None,
        });
        let shared_log = shared
            .durable
            .as_ref()
            .is_some_and(|durable| durable.log_is_shared());
        // Only a key the map does not know at all, or a tombstone another
        // node may have written past, needs `restore`; ask it before taking
        // the write lock, so no I/O happens under it.
        let ask = match seen {
            None => true,
            Some(Some(_)) => shared_log,
            Some(None) => false,
        };
        let restored = if ask { Some(restore()) } else { None };
        let restored = match restored.transpose() {
            Ok(restored) => restored,
            Err(refusal) => {
                self.live.fetch_sub(1, Relaxed);
                return Err(refusal);
            }
        };
        enum Outcome<T> {
            Existing(Held<T>),
            Created(Held<T>),
            Revived(Held<T>),
            /// The entry appeared or changed between the two looks.
            Retry,
        }
        let make = |restored, created| {
            Arc::new(Session::new(
                key.clone(),
                restored,
                created,
                StdArc::clone(shared),
            ))
        };
        let outcome = self.map.update(key, |entry| {
            // Relaxed: departures of this key are counted under this lock.
            let unchanged = self.departures[self.stripe(key)].load(Relaxed) == departures;
            match entry {
                Some(Entry::Resident(session)) => (None, Outcome::Existing(Held::new(session))),
                Some(entry @ Entry::Dormant(_)) => {
                    let Entry::Dormant(tombstone) = *entry else {
                        return (None, Outcome::Retry);
                    };
                    if !unchanged || seen.is_none_or(|seen| seen != Some(tombstone)) {
                        return (None, Outcome::Retry);
                    }
                    let restored = match restored {
                        Some(restored) if !tombstone.is_current_in(&restored) => restored,
                        _ => Restored::continuing(tombstone.identity).closed(tombstone.closed),
                    };
                    let session = make(restored, tombstone.created);
                    let held = Held::new(&session);
                    *entry = Entry::Resident(session);
                    (None, Outcome::Revived(held))
                }
                None => match restored {
                    Some(restored) if unchanged && seen.is_none() => {
                        let created = self.next_created.fetch_add(1, Relaxed);
                        let session = make(restored, created);
                        let held = Held::new(&session);
                        (Some(Entry::Resident(session)), Outcome::Created(held))
                    }
                    _ => (None, Outcome::Retry),
                },
            }
        });
        match outcome {
            Outcome::Existing(session) => {
                self.live.fetch_sub(1, Relaxed);
                Ok(session)
            }
            Outcome::Revived(session) => {
                self.dormant.fetch_sub(1, Relaxed);
                self.revived.fetch_add(1, Relaxed);
                if let Some(durable) = &shared.durable {
                    durable.created(&session);
                }
                Ok(session)
            }
            Outcome::Created(session) => {
                if shared.config.auto_sweep {
                    self.maybe_sweep(shared);
                }
                if let Some(durable) = &shared.durable {
                    durable.created(&session);
                }
                Ok(session)
            }
            Outcome::Retry => {
                // The key changed between our look and the lock (a session
                // left, a tombstone was forgotten or replaced): look again.
                self.live.fetch_sub(1, Relaxed);
                self.get_or_create(key, shared, restore)
            }
        }
    }

    /// The departure stripe of `key`.
    fn stripe(&self, key: &SessionKey) -> usize {
        (KeyView::key_hash(key) as usize) % self.departures.len()
    }

    /// How many sessions of `key`'s stripe have left the map.
    fn departures_seen(&self, key: &SessionKey) -> u64 {
        // Acquire: pairs with `departed`'s Release, so a restore that
        // starts after it sees what the departure registered (a removed
        // session waiting for the log).
        self.departures[self.stripe(key)].load(Acquire)
    }

    /// `key`'s entry leaves the map (removed, or its tombstone forgotten):
    /// restores that began before must not be used. Call under the shard's
    /// write lock, after registering what the departure leaves behind.
    fn departed(&self, key: &SessionKey) {
        // Release: see `departures_seen`.
        self.departures[self.stripe(key)].fetch_add(1, Release);
    }

    /// Sweeps when enough sessions were created since the last sweep that
    /// its O(sessions) cost is amortised to O(1) per creation.
    fn maybe_sweep(&self, shared: &Shared<T>) {
        let interval = (self.live.load(Relaxed) / 2).max(MIN_SWEEP_INTERVAL);
        if self.created_since_sweep.fetch_add(1, Relaxed) + 1 >= interval {
            self.sweep(shared);
        }
    }

    /// The tombstone a resident session leaves if it is evictable now.
    fn evict(session: &Arc<Session<T>>, now: Timestamp) -> Option<Tombstone> {
        if !Session::is_evictable(session, now) {
            return None;
        }
        let mut identity = session.identity();
        identity.start = session.ring.published_tail();
        identity.start_revision = session.ring.revision_at(identity.start);
        Some(Tombstone {
            identity,
            created: session.created(),
            evicted_at: now,
            closed: session.closure().map(|closure| closure.reason),
        })
    }

    /// Turns every idle session dormant (trimmed to nothing, nobody holding
    /// it) and forgets tombstones past their age or count bound. Returns
    /// how many sessions it evicted.
    pub(crate) fn sweep(&self, shared: &Shared<T>) -> usize {
        self.created_since_sweep.store(0, Relaxed);
        let now = shared.now();
        let ttl = shared.config.tombstone_ttl_nanos();
        let keep_tombstones = shared.config.tombstones;
        // Each eviction is counted as it happens, and evicted sessions are
        // dropped only after the sweep: a payload whose `Drop` panics (in
        // the eviction check's trim) must not leave the counts wrong.
        let mut evicted = Vec::new();
        let mut forgotten = 0;
        let mut dormant_since = Vec::new();
        self.map.retain(|key, entry| {
            let tombstone = match entry {
                Entry::Resident(session) => match Self::evict(session, now) {
                    Some(tombstone) => tombstone,
                    None => return true,
                },
                Entry::Dormant(tombstone) => {
                    let age = now
                        .as_nanos()
                        .saturating_sub(tombstone.evicted_at.as_nanos());
                    if age > ttl {
                        forgotten += 1;
                        self.departed(key);
                        return false;
                    }
                    dormant_since.push(tombstone.evicted_at);
                    return true;
                }
            };
            let Entry::Resident(session) = std::mem::replace(entry, Entry::Dormant(tombstone))
            else {
                return true;
            };
            let remembered = keep_tombstones > 0 && Self::remembers(&session, &tombstone);
            if !remembered {
                self.departed(key);
            }
            self.account_eviction(shared, &session, remembered);
            evicted.push(session);
            if remembered {
                dormant_since.push(tombstone.evicted_at);
            }
            remembered
        });
        // Over the count bound: forget the oldest tombstones.
        if dormant_since.len() > keep_tombstones {
            let excess = dormant_since.len() - keep_tombstones;
            let (_, &mut cutoff, _) = dormant_since.select_nth_unstable(excess - 1);
            let mut left = excess;
            self.map.retain(|key, entry| match entry {
                Entry::Dormant(tombstone) if left > 0 && tombstone.evicted_at <= cutoff => {
                    left -= 1;
                    forgotten += 1;
                    self.departed(key);
                    false
                }
                _ => true,
            });
        }
        self.dormant.fetch_sub(forgotten, Relaxed);
        self.forgotten.fetch_add(forgotten as u64, Relaxed);
        evicted.len()
    }

    /// Whether an evicted session leaves its tombstone. Not if it never
    /// had a position (nothing to remember), nor if it was fenced: another
    /// writer has the session in the log, and the tombstone would answer
    /// for positions of a life the log never took (its last position as
    /// durable, its cursor as the latest); the log answers instead.
    fn remembers(session: &Session<T>, tombstone: &Tombstone) -> bool {
        tombstone.identity.start > 0 && !session.fenced.load(Relaxed)
    }

    /// Counts one eviction; `remembered` if it left a tombstone.
    fn account_eviction(&self, shared: &Shared<T>, session: &Session<T>, remembered: bool) {
        shared
            .counters
            .appends_of_gone_sessions
            .add(session.last_claimed() - session.identity().start);
        self.live.fetch_sub(1, Relaxed);
        self.evicted.fetch_add(1, Relaxed);
        if remembered {
            self.dormant.fetch_add(1, Relaxed);
        }
    }

    /// Trims one session and turns it dormant if that left it idle.
    pub(crate) fn trim(&self, key: &SessionKey, shared: &Shared<T>) -> usize {
        let now = shared.now();
        let Some(freed) = self.with(key, |session| session.trim(now)) else {
            return 0;
        };
        let keep_tombstones = shared.config.tombstones > 0;
        let evicted = self.map.update(key, |entry| {
            let Some(entry) = entry else {
                return (None, None);
            };
            let Entry::Resident(session) = &*entry else {
                return (None, None);
            };
            let Some(tombstone) = Self::evict(session, now) else {
                return (None, None);
            };
            let Entry::Resident(session) = std::mem::replace(entry, Entry::Dormant(tombstone))
            else {
                return (None, None);
            };
            (None, Some((session, tombstone)))
        });
        if let Some((session, tombstone)) = evicted {
            // Counted as dormant: it is, until the removal below, and a
            // revival in between counts it out (counting only remembered
            // ones let such a revival take `dormant` below zero).
            self.account_eviction(shared, &session, true);
            let remembered = keep_tombstones && Self::remembers(&session, &tombstone);
            if !remembered {
                let forgotten = self.map.remove_if(key, |entry| {
                    let dormant = matches!(entry, Entry::Dormant(_));
                    if dormant {
                        self.departed(key);
                    }
                    dormant
                });
                if forgotten.is_some() {
                    self.dormant.fetch_sub(1, Relaxed);
                }
            }
        }
        freed
    }

    /// Removes the session whatever holds it, tombstone included; later
    /// appends through a handle are refused and subscribers end with a
    /// `Reset` gap.
    ///
    /// Under the shard's write lock, before the entry leaves, the ring is
    /// sealed and, with a log, the session is registered as the key's
    /// removed predecessor: a by-key re-creation (which needs that lock)
    /// then continues after its last position. Subscribers are woken only
    /// after the lock is let go (a waker may run anything).
    pub(crate) fn remove(&self, key: &SessionKey, shared: &StdArc<Shared<T>>) -> bool {
        self.remove_entry(key, shared).is_some()
    }

    /// [`SessionMap::remove`], returning what it removed: `Some(Some(s))`
    /// a resident session (sealed, with its last position), `Some(None)` a
    /// tombstone.
    pub(crate) fn remove_entry(
        &self,
        key: &SessionKey,
        shared: &StdArc<Shared<T>>,
    ) -> Option<Option<(Arc<Session<T>>, u64)>> {
        let removed = self.map.remove_if(key, |entry| {
            match entry {
                Entry::Resident(session) => {
                    let last = session.seal_removed();
                    // Its accepted events still go to the log; a re-created
                    // session must continue after them.
                    if let Some(durable) = &shared.durable {
                        durable.removed(session, last);
                    }
                }
                // Evicted closed: its closure is in the log, and removal
                // reopens the key (crate `closure`), which only the durable
                // tier can tell the log. It gets the session back, removed.
                Entry::Dormant(tombstone) if tombstone.closed.is_some() => {
                    // Not over a shared log (see `persist`'s `needs_reopen`).
                    let durable = shared.durable.as_ref().filter(|d| !d.log_is_shared());
                    if let Some(durable) = durable {
                        let restored =
                            Restored::continuing(tombstone.identity).closed(tombstone.closed);
                        let session = Arc::new(Session::new(
                            key.clone(),
                            restored,
                            tombstone.created,
                            StdArc::clone(shared),
                        ));
                        let last = session.seal_removed();
                        durable.removed(&session, last);
                    }
                }
                Entry::Dormant(_) => {}
            }
            self.departed(key);
            true
        });
        match removed {
            Some(Entry::Resident(session)) => {
                self.live.fetch_sub(1, Relaxed);
                session.ring.wake_closed();
                // Appends racing the seal may still land: count what was
                // claimed when it closed.
                let last = session.last_claimed();
                shared
                    .counters
                    .appends_of_gone_sessions
                    .add(last - session.identity().start);
                Some(Some((session, last)))
            }
            Some(Entry::Dormant(_)) => {
                self.dormant.fetch_sub(1, Relaxed);
                Some(None)
            }
            None => None,
        }
    }

    /// Resident sessions.
    pub(crate) fn len(&self) -> usize {
        self.live.load(Relaxed)
    }

    /// Dormant sessions (tombstones).
    pub(crate) fn dormant(&self) -> usize {
        self.dormant.load(Relaxed)
    }

    pub(crate) fn evicted(&self) -> u64 {
        self.evicted.load(Relaxed)
    }

    pub(crate) fn revived(&self) -> u64 {
        self.revived.load(Relaxed)
    }

    pub(crate) fn forgotten(&self) -> u64 {
        self.forgotten.load(Relaxed)
    }

    /// The sessions of `tenant` (resident or dormant), newest first.
    pub(crate) fn of_tenant(&self, tenant: &str, limit: usize, offset: usize) -> Vec<SessionKey> {
        let mut found = Vec::new();
        self.map.for_each(|key, entry| {
            if key.tenant() == tenant {
                let created = match entry {
                    Entry::Resident(session) => session.created(),
                    Entry::Dormant(tombstone) => tombstone.created,
                };
                found.push((created, key.clone()));
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

    /// Visits every resident session.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&SessionKey, &Arc<Session<T>>)) {
        self.map.for_each(|key, entry| {
            if let Entry::Resident(session) = entry {
                f(key, session);
            }
        });
    }
}
