//! The durable tier's log: what it stores, and the one small trait every
//! backend implements.
//!
//! The ring (`crate::ring`) is the hot, bounded, memory-only tier. Behind it a
//! persister thread (`crate::persist`) drains each session's published events,
//! in position order and many per commit, into a [`DurableLog`]. Catch-up
//! (`crate::catchup`) reads the log for positions the ring no longer holds.
//!
//! # Records
//!
//! A session's log is a contiguous run of positions `archived_through + 1 ..=
//! durable_tail`, each covered by exactly one [`LogRecord`]:
//!
//! * an **event** ([`RecordBody::Event`]) at one position: revision,
//!   timestamp, optional causal [`Links`], and the payload encoded by the
//!   store's [`Codec`](crate::Codec);
//! * a **hole** ([`RecordBody::Hole`]) over `count` positions that were
//!   accepted but never reached the log (the ring lapped them while the log
//!   stalled or failed). Holes are explicit so that a reader is told, with
//!   the count, instead of finding nothing.
//!
//! Every record names the [`Incarnation`] (the *life*) that appended it. A
//! session's lives are listed in its [`SessionMeta`]: each process life of a
//! session that was restored from the log appends under a fresh incarnation,
//! starting right after the durable tail it found, so a position is never
//! handed out twice under one incarnation even when a crash lost positions
//! that clients had already seen.
//!
//! # Invariants every backend keeps (the conformance suite checks them)
//!
//! 1. **Contiguity.** [`DurableLog::append`] accepts a session's records only
//!    if they start at `durable_tail + 1` and are contiguous (an event covers
//!    one position, a hole `count >= 1`); otherwise it refuses the whole call
//!    with [`LogError::NotContiguous`] and changes nothing.
//! 2. **Atomicity.** One `append` call is one commit: after a crash either
//!    every session write of the call is there or none is.
//! 3. **Monotonic archive.** [`DurableLog::archive_before`] only moves
//!    forward, never past the durable tail; archived positions are no longer
//!    loaded, and the tail and the lives survive archiving everything.
//! 4. **Tenant scope.** Every call names a [`SessionKey`]; listings are per
//!    tenant. Keys that differ only in where the tenant ends are different
//!    sessions.
//! 5. **Closure.** A [`SessionWrite::closure`] is stored with the records
//!    of its call, only if it closes at the resulting durable tail, and is
//!    what [`DurableLog::meta`] reports until a new life starts (which
//!    clears it). A [`SessionWrite::turn_owner`] is what
//!    [`SessionMeta::open_turn`] reports until a closure or a new life
//!    clears it (a backend that does not keep it says so and reports
//!    `None`).
//! 6. **Read after commit.** A read ([`DurableLog::load_after`],
//!    [`DurableLog::meta`], the index's reads) that happens after an
//!    `append` returned — in the same thread, or in one that synchronised
//!    with it (the store hands the durable watermark over with
//!    Release/Acquire) — sees that append. A lock, a transaction or a
//!    server gives it; a lock-free log must publish each commit with
//!    Release and read with Acquire. The ring frees events once they are
//!    durable, so a read that missed them would find them nowhere.

#[cfg(feature = "dag")]
pub(crate) mod causal;
mod index;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redb")]
mod redb;
#[cfg(feature = "redis")]
mod redis;
#[cfg(any(feature = "redb", feature = "redis", feature = "postgres"))]
mod stored;

pub use self::index::{IndexEntries, IndexRead, IndexStore, IndexWrite};
pub use self::memory::MemoryLog;
#[cfg(feature = "postgres")]
pub use self::postgres::{PostgresLog, PostgresOptions};
#[cfg(feature = "redb")]
pub use self::redb::{RedbDurability, RedbLog, RedbOptions};
#[cfg(feature = "redis")]
pub use self::redis::{RedisLog, RedisOptions};

use thiserror::Error;

use crate::closure::Closure;
use crate::cursor::Incarnation;
use crate::key::SessionKey;
pub use crate::links::{EventRef, Links};

/// One life of a session in the log: the incarnation that appended from
/// `first_position` on (until the next life's first position, or the tail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Life {
    /// The incarnation its events and cursors carry.
    pub incarnation: Incarnation,
    /// The first position it could append: the durable tail it started
    /// after, plus one.
    pub first_position: u64,
}

/// What the log knows of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionMeta {
    /// The highest position recorded (event or hole); 0 if none.
    pub durable_tail: u64,
    /// Every position `<= archived_through` was archived and is no longer
    /// loaded.
    pub archived_through: u64,
    /// The revision of the last event recorded (0 if none).
    pub last_revision: u64,
    /// The session's lives, by ascending `first_position` (at least one).
    pub lives: Vec<Life>,
    /// Events (not holes) recorded and not archived.
    pub event_count: u64,
    /// The session's closure (module [`closure`](crate::Closure)), if its
    /// newest life was closed: its `last` is the durable tail. A new life
    /// clears it.
    pub closure: Option<Closure>,
    /// The id of the store whose [`Turn`](crate::Turn) drives the newest
    /// life, while that turn is open: set by a write's
    /// [`SessionWrite::turn_owner`], cleared by a closure or a new life.
    /// Another store that finds the turn left open by a store that is
    /// gone (the log is not shared, or the store's lease ran out) closes
    /// it `Interrupted` (the [`Turn`](crate::Turn) docs; persister
    /// invariant 11).
    pub open_turn: Option<u64>,
}

impl SessionMeta {
    /// The life that appended `incarnation`'s cursors, and the last position
    /// it covers (`durable_tail` for the newest life).
    pub fn life_of(&self, incarnation: Incarnation) -> Option<(Life, u64)> {
        let index = self
            .lives
            .iter()
            .position(|life| life.incarnation == incarnation)?;
        let end = match self.lives.get(index + 1) {
            Some(next) => next.first_position - 1,
            None => self.durable_tail,
        };
        Some((self.lives[index], end))
    }

    /// The newest life.
    pub fn current_life(&self) -> Option<Life> {
        self.lives.last().copied()
    }
}

pub use crate::error::HoleReason;

/// An event as the log stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// The revision given at append.
    pub revision: u64,
    /// The append's timestamp, nanoseconds since the UNIX epoch.
    pub timestamp_nanos: u64,
    /// Causal links, empty for most events.
    pub links: Links,
    /// The payload, as encoded by the store's codec.
    pub payload: Vec<u8>,
}

/// What a record holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordBody {
    /// One event at the record's position.
    Event(StoredEvent),
    /// `count >= 1` positions from the record's position on that no tier
    /// holds.
    Hole {
        /// Positions covered.
        count: u64,
        /// Why.
        reason: HoleReason,
    },
}

/// One record of a session's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// The (first) position it covers.
    pub position: u64,
    /// The life that appended it.
    pub incarnation: Incarnation,
    /// The event or hole.
    pub body: RecordBody,
}

impl LogRecord {
    /// How many positions it covers.
    pub fn len(&self) -> u64 {
        match &self.body {
            RecordBody::Event(_) => 1,
            RecordBody::Hole { count, .. } => *count,
        }
    }

    /// Its payload's length in bytes (0 for a hole).
    pub fn payload_len(&self) -> usize {
        match &self.body {
            RecordBody::Event(event) => event.payload.len(),
            RecordBody::Hole { .. } => 0,
        }
    }

    /// Whether it covers no position (never true of a valid record).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The last position it covers.
    pub fn last_position(&self) -> u64 {
        self.position.saturating_add(self.len().saturating_sub(1))
    }
}

/// One session's part of a [`DurableLog::append`] call.
#[derive(Debug, Clone, Copy)]
pub struct SessionWrite<'a> {
    /// The session.
    pub key: &'a SessionKey,
    /// A life to register before the records (its `first_position` must be
    /// `durable_tail + 1`); `None` when the records continue the newest life.
    pub new_life: Option<Life>,
    /// Contiguous records from `durable_tail + 1` on; may be empty (only
    /// registering the life, or only the closure).
    pub records: &'a [LogRecord],
    /// The session's closure, written in the same commit; its `last` must
    /// be the durable tail after `records` (else the whole call is refused
    /// with [`LogError::NotContiguous`]).
    pub closure: Option<Closure>,
    /// A [`Turn`](crate::Turn) of the store with this id drives the newest
    /// life from this write on (see [`SessionMeta::open_turn`]); applied
    /// after `new_life` and before `closure`, which clears it.
    pub turn_owner: Option<u64>,
}

impl SessionWrite<'_> {
    /// Whether it records nothing (no life, record, closure or turn): a
    /// log skips it, and a session it names need not be known.
    pub fn is_empty(&self) -> bool {
        self.new_life.is_none()
            && self.records.is_empty()
            && self.closure.is_none()
            && self.turn_owner.is_none()
    }
}

/// Why a log call failed. The persister retries failed writes by itself;
/// readers get the error.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LogError {
    /// The records do not continue the session's log contiguously (a bug in
    /// the caller, or two writers on one log); nothing was written.
    #[error("records for {key} start at position {got}, but the durable tail is {tail}: a log takes contiguous records from one writer")]
    NotContiguous {
        /// The session.
        key: SessionKey,
        /// The tail the log has.
        tail: u64,
        /// Where the records started.
        got: u64,
    },
    /// A new life does not start right after the durable tail, or reuses an
    /// incarnation the session already had.
    #[error("a new life of {key} must start at the durable tail + 1 ({expected}) with a fresh incarnation")]
    BadLife {
        /// The session.
        key: SessionKey,
        /// The first position it must start at.
        expected: u64,
    },
    /// A record is malformed (a hole of zero positions, say).
    #[error("invalid record at position {position} of {key}: {what}")]
    InvalidRecord {
        /// The session.
        key: SessionKey,
        /// The record's position.
        position: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// Stored bytes could not be read back: the file is damaged or was
    /// written by an incompatible version.
    #[error("the log is corrupt: {0}")]
    Corrupt(String),
    /// The backend failed (I/O error, disk full, connection lost). Retrying
    /// later may succeed.
    #[error("the log backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A durable, per-session, append-only log of [`LogRecord`]s.
///
/// Synchronous and object-safe: the store holds an `Arc<dyn DurableLog>`
/// and calls it from its persister thread and from catch-up readers, never
/// from the append path. Implementations: [`MemoryLog`] (tests), `RedbLog`
/// (feature `redb`, one crash-safe file).
pub trait DurableLog: Send + Sync + 'static {
    /// Writes every session's records (and new lives) in one atomic commit.
    /// See the module invariants for what is refused.
    fn append(&self, writes: &[SessionWrite<'_>]) -> Result<(), LogError>;

    /// Records covering positions after `after`, in order, at most `limit`
    /// records: the first one covers `max(after, archived_through) + 1`
    /// (a hole may start before it). Empty if nothing is recorded there.
    fn load_after(
        &self,
        key: &SessionKey,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogRecord>, LogError>;

    /// What the log knows of the session; `None` if it never recorded it.
    fn meta(&self, key: &SessionKey) -> Result<Option<SessionMeta>, LogError>;

    /// Archives every position `<= watermark` (clamped to the durable tail).
    /// Monotonic: a watermark at or below the current one is a no-op.
    /// Returns how many events (not hole positions) it newly archived.
    fn archive_before(&self, key: &SessionKey, watermark: u64) -> Result<u64, LogError>;

    /// The sessions of `tenant` the log knows, newest first (by when the log
    /// first recorded them), skipping `offset`, at most `limit`.
    fn sessions(
        &self,
        tenant: &str,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<SessionKey>, LogError>;

    /// Whether other processes may write this log too (several nodes, one
    /// Redis). Then a cursor beyond the durable end of its life may still
    /// be written by a writer that is alive elsewhere: catch-up waits for
    /// it instead of reporting it lost, until a newer life shows the writer
    /// restarted. Default: `false` (one process owns the log, as redb's
    /// file lock ensures).
    fn is_shared(&self) -> bool {
        false
    }

    /// Over a shared log: says the store `store` (its id, as its turns'
    /// marks carry it: [`SessionMeta::open_turn`]) is alive for `lease`
    /// from now. The persister calls it at least every third of its lease
    /// ([`DurableOptions::store_lease`](crate::DurableOptions::store_lease))
    /// and before a commit that writes a turn's mark. Default: nothing (a
    /// log that cannot keep liveness; see [`DurableLog::store_alive`]).
    fn keep_alive(&self, store: u64, lease: std::time::Duration) -> Result<(), LogError> {
        let _ = (store, lease);
        Ok(())
    }

    /// Over a shared log: whether the store `store` said it was alive
    /// within its lease. A turn another store left open over a shared log
    /// is closed `Interrupted` only once this says `false`. Default:
    /// `true`, so a log that cannot tell never judges a turn interrupted.
    fn store_alive(&self, store: u64) -> Result<bool, LogError> {
        let _ = store;
        Ok(true)
    }

    /// How a node that does not write a session waits for another writer's
    /// records, if this log can tell (a catch-up on a host node uses it for
    /// live events). Default: `None` (only this store's persister writes).
    fn watch(&self) -> Option<&dyn LogWatch> {
        None
    }

    /// The causal index this log keeps with its records (see
    /// [`IndexStore`]), if it keeps one: the built-in backends do when the
    /// `dag` feature is on. Default: `None` (the `dag` queries refuse).
    fn index(&self) -> Option<&dyn IndexStore> {
        None
    }
}

/// Waiting for records written by other writers of a shared log.
pub trait LogWatch: Send + Sync {
    /// Blocks until the log holds a record after `after` for at least one
    /// `(session, after)` of `interest`, or `timeout` passes; returns the
    /// indices into `interest` of those that do (empty at the timeout).
    fn wait_any(
        &self,
        interest: &[(SessionKey, u64)],
        timeout: std::time::Duration,
    ) -> Result<Vec<usize>, LogError>;
}
