//! What a backend lends the causal index: an ordered key-value space it
//! updates in the same commit as the records.
//!
//! The causal index (module `dag`, feature `dag`) is written once, over
//! these three small traits, and every backend stores it the way it stores
//! records: [`MemoryLog`](super::MemoryLog) in a `BTreeMap` under its lock,
//! `RedbLog` in one more table of the same file and write transaction,
//! `RedisLog` in a key per entry (so a transaction watches exactly the
//! entries it read) and a lexicographic sorted set, written in the same
//! `MULTI`/`EXEC` as the streams.
//!
//! # Invariants a backend keeps
//!
//! 1. **Same commit.** A backend's [`DurableLog::append`](super::DurableLog::append)
//!    updates the index for the records it appends (by calling
//!    `livereplay::dag::index_appended` on a [`IndexWrite`] over its own
//!    transaction) and commits both or neither. So the index is never
//!    behind the log: a position that is durable is indexed.
//! 2. **Byte order.** [`IndexRead::scan`] returns keys in ascending
//!    lexicographic byte order; the index's key encoding relies on it for
//!    "oldest first" and depth ranges.
//! 3. **Reads see the transaction's writes**, including the records the
//!    same `append` wrote ([`IndexRead::is_event`]).

use super::LogError;
use crate::key::SessionKey;

/// What a scan returns: `(key, value)` pairs in ascending key order.
pub type IndexEntries = Vec<(Vec<u8>, Vec<u8>)>;

/// Reading the index's key-value space.
pub trait IndexRead {
    /// The value at `key`.
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, LogError>;

    /// Entries whose key starts with `prefix` and is strictly greater than
    /// `after` (when given), in ascending byte order, at most `limit`.
    fn scan(
        &mut self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<IndexEntries, LogError>;

    /// Whether the log holds an event (not a hole, not archived) at
    /// `position` of `key`'s session.
    fn is_event(&mut self, key: &SessionKey, position: u64) -> Result<bool, LogError>;
}

/// Writing the index's key-value space, inside the backend's transaction.
pub trait IndexWrite: IndexRead {
    /// Sets `key` to `value`.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), LogError>;

    /// Removes `key` (absent is fine).
    fn delete(&mut self, key: &[u8]) -> Result<(), LogError>;
}

/// A backend's causal index storage ([`DurableLog::index`](super::DurableLog::index)).
pub trait IndexStore: Send + Sync {
    /// A consistent view for one query.
    fn read(&self) -> Result<Box<dyn IndexRead + '_>, LogError>;

    /// Runs `update` in one write transaction and commits it if it returns
    /// `Ok` (a backend may run it again after a conflict, so it must only
    /// read and write through its argument).
    fn write(
        &self,
        update: &mut dyn FnMut(&mut dyn IndexWrite) -> Result<(), LogError>,
    ) -> Result<(), LogError>;
}
