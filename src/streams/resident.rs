//! The bound on large records held in memory.
//!
//! A stream's recent records stay in its session's ring, so live readers
//! are served from memory. The ring's window counts records, not bytes:
//! 2 048 appends of 8 MiB would pin 16 GiB, and the store has no way to
//! tell a token delta from a file. This module owns the byte bound on the
//! *large* records (at least [`LARGE`] bytes) that protocol writes leave
//! in memory, across all streams: once their bytes pass
//! [`StreamsOptions::large_records_in_memory`](super::StreamsOptions::large_records_in_memory),
//! the oldest are released from memory (`ReplayStore::release_through`),
//! and readers reach them in the durable log, as they reach anything older
//! than the window (module `crate::catchup`: a reader the release
//! overtakes goes back to the log from where it is). Each protocol
//! response starts a catch-up and stops it at its byte budget, so what a
//! catch-up loads per log step matters here: it grows from one record
//! (`catchup::FIRST_LOG_BATCH`), else a response of one released 1 MiB
//! record loaded up to 512 of them.
//!
//! # Invariants
//!
//! * **Releasing changes where a record is read from, never whether.** A
//!   record is entered only once its append was acknowledged as durable,
//!   and the store never trims a ring above its durable watermark anyway.
//! * **Bounded, by whole segments.** The ledger's bytes are at most the
//!   bound once `note` returns, and it holds at most `bound / LARGE`
//!   entries. A release raises the ring's floor, and the ring frees memory
//!   a segment at a time (64 positions; its slots are write-once and
//!   emptied only by an exclusive owner, module `crate::ring::slot`): a
//!   stream's newest segment keeps its records until the stream moves
//!   past it. So memory holds the bound plus, per stream, at most one
//!   segment's large records (measured: one stream of 256 KiB appends
//!   for 6 s, 738-749 MiB resident before, 197 MiB with the default
//!   bound). Records released with an earlier one of their stream still
//!   count until their turn: the bound may release early, never late.
//! * Small records are not counted: the window's count bounds them, and a
//!   ledger entry per token delta would cost more than the delta.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use crate::key::SessionKey;
use crate::store::ReplayStore;

use super::record::StreamRecord;

/// A record of at least this many payload bytes is large.
pub const LARGE: usize = 64 * 1024;

/// The large records in memory, oldest first.
pub(crate) struct Resident {
    ledger: Mutex<Ledger>,
    /// Large records released from memory so far (Relaxed: a statistic).
    released: AtomicU64,
}

#[derive(Default)]
struct Ledger {
    bytes: u64,
    records: VecDeque<(SessionKey, u64, u64)>,
}

impl Resident {
    pub(crate) fn new() -> Self {
        Self {
            ledger: Mutex::new(Ledger::default()),
            released: AtomicU64::new(0),
        }
    }

    /// `key`'s record at `position`, of `bytes` payload bytes, is durable
    /// and in memory: counts it if it is large, then releases the oldest
    /// large records from memory until the rest fit in `bound`.
    pub(crate) fn note(
        &self,
        store: &ReplayStore<StreamRecord>,
        key: &SessionKey,
        position: u64,
        bytes: usize,
        bound: usize,
    ) {
        if bytes < LARGE {
            return;
        }
        let mut ledger = self.ledger.lock().unwrap_or_else(|e| e.into_inner());
        ledger.bytes += bytes as u64;
        ledger
            .records
            .push_back((key.clone(), position, bytes as u64));
        while ledger.bytes > bound as u64 {
            let Some((key, position, bytes)) = ledger.records.pop_front() else {
                break;
            };
            ledger.bytes -= bytes;
            // A session removed or re-created since frees nothing it
            // should keep: only what is durable, which the log serves.
            store.release_through(&key, position);
            self.released.fetch_add(1, Relaxed);
        }
    }

    /// Bytes of large records counted as in memory now.
    pub(crate) fn bytes(&self) -> u64 {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }

    /// Large records released from memory so far.
    pub(crate) fn released(&self) -> u64 {
        self.released.load(Relaxed)
    }
}
