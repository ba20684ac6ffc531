//! The causal index (`crate::dag`) in the `livereplay.index` table: its
//! reads inside an append's write transaction and in a read snapshot.
//!
//! # Invariants
//!
//! * An append's index writes go to the same write transaction as its
//!   records, so the index is never behind the log; reads in that
//!   transaction see its own writes, records included.
//! * A query reads one redb read transaction: a consistent snapshot.

use ::redb::{ReadableDatabase, ReadableTable};

use super::encode::decode_header;
use super::journal::{self, EntryV1};
use super::{backend, RedbLog, INDEX, RECORDS};
use crate::durable::{IndexEntries, IndexRead, IndexStore, IndexWrite, LogError};
use crate::key::SessionKey;

pub(super) type IndexTable<'txn> = ::redb::Table<'txn, &'static [u8], &'static [u8]>;
pub(super) type RecordsTable<'txn> =
    ::redb::Table<'txn, (&'static str, &'static str, u64), &'static [u8]>;

/// The causal index inside a write transaction.
pub(super) struct IndexTxn<'a, 'txn> {
    pub(super) index: &'a mut IndexTable<'txn>,
    pub(super) records: &'a RecordsTable<'txn>,
    /// Under the journal, an index write's puts and deletes, for its frame
    /// (a call that runs a closure is journaled by what the closure did).
    /// `None` inside an append, whose frame replays the indexing itself.
    pub(super) recorded: Option<&'a mut Recorded>,
}

/// The causal index in one read transaction (a consistent snapshot).
pub(super) struct IndexSnapshot {
    index: ::redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    records: ::redb::ReadOnlyTable<(&'static str, &'static str, u64), &'static [u8]>,
}

pub(super) fn index_get(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    key: &[u8],
) -> Result<Option<Vec<u8>>, LogError> {
    Ok(table.get(key).map_err(backend)?.map(|v| v.value().to_vec()))
}

pub(super) fn index_scan(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
) -> Result<IndexEntries, LogError> {
    use std::ops::Bound;
    let start = match after {
        Some(after) if after >= prefix => Bound::Excluded(after),
        _ => Bound::Included(prefix),
    };
    let mut out = Vec::new();
    for entry in table
        .range::<&[u8]>((start, Bound::Unbounded))
        .map_err(backend)?
    {
        let (k, v) = entry.map_err(backend)?;
        if out.len() >= limit || !k.value().starts_with(prefix) {
            break;
        }
        out.push((k.value().to_vec(), v.value().to_vec()));
    }
    Ok(out)
}

pub(super) fn record_is_event(
    records: &impl ReadableTable<(&'static str, &'static str, u64), &'static [u8]>,
    key: &SessionKey,
    position: u64,
) -> Result<bool, LogError> {
    // Archiving removes records, so a record that is there is not archived.
    let Some(bytes) = records
        .get((key.tenant(), key.session(), position))
        .map_err(backend)?
    else {
        return Ok(false);
    };
    let (header, _) = decode_header(key, position, bytes.value())?;
    Ok(header.body.is_event())
}

impl IndexRead for IndexTxn<'_, '_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, LogError> {
        index_get(&*self.index, key)
    }

    fn scan(
        &mut self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<IndexEntries, LogError> {
        index_scan(&*self.index, prefix, after, limit)
    }

    fn is_event(&mut self, key: &SessionKey, position: u64) -> Result<bool, LogError> {
        record_is_event(self.records, key, position)
    }
}

impl IndexWrite for IndexTxn<'_, '_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), LogError> {
        self.index.insert(key, value).map_err(backend)?;
        if let Some(recorded) = self.recorded.as_deref_mut() {
            recorded.ops.push((length(key)?, Some(length(value)?)));
            recorded.blobs.extend_from_slice(key);
            recorded.blobs.extend_from_slice(value);
        }
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), LogError> {
        self.index.remove(key).map_err(backend)?;
        if let Some(recorded) = self.recorded.as_deref_mut() {
            recorded.ops.push((length(key)?, None));
            recorded.blobs.extend_from_slice(key);
        }
        Ok(())
    }
}

impl IndexRead for IndexSnapshot {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, LogError> {
        index_get(&self.index, key)
    }

    fn scan(
        &mut self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<IndexEntries, LogError> {
        index_scan(&self.index, prefix, after, limit)
    }

    fn is_event(&mut self, key: &SessionKey, position: u64) -> Result<bool, LogError> {
        record_is_event(&self.records, key, position)
    }
}

impl IndexStore for RedbLog {
    fn read(&self) -> Result<Box<dyn IndexRead + '_>, LogError> {
        let txn = self.database()?.begin_read().map_err(backend)?;
        Ok(Box::new(IndexSnapshot {
            index: txn.open_table(INDEX).map_err(backend)?,
            records: txn.open_table(RECORDS).map_err(backend)?,
        }))
    }

    fn write(
        &self,
        update: &mut dyn FnMut(&mut dyn IndexWrite) -> Result<(), LogError>,
    ) -> Result<(), LogError> {
        let db = self.database()?;
        self.write_failed((|| {
            let txn = self.begin_write(&db)?;
            let mut recorded = self.journal.as_ref().map(|_| Recorded::default());
            {
                let mut index = txn.open_table(INDEX).map_err(backend)?;
                let records = txn.open_table(RECORDS).map_err(backend)?;
                update(&mut IndexTxn {
                    index: &mut index,
                    records: &records,
                    recorded: recorded.as_mut(),
                })?;
            }
            let Recorded { ops, blobs } = recorded.unwrap_or_default();
            self.finish(txn, || journal::head(&EntryV1::Index(ops)), &blobs)
        })())
    }
}

/// The puts and deletes of an index write, for its journal frame.
#[derive(Default)]
pub(super) struct Recorded {
    /// `(key length, value length or None for a delete)`.
    ops: Vec<(u32, Option<u32>)>,
    /// The keys' and values' bytes, in order.
    blobs: Vec<u8>,
}

fn length(bytes: &[u8]) -> Result<u32, LogError> {
    u32::try_from(bytes.len())
        .map_err(|_| LogError::Backend("an index entry of 4 GiB or more".into()))
}
