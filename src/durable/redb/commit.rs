//! The writes: [`DurableLog::append`](crate::durable::DurableLog::append) and [`DurableLog::archive_before`](crate::durable::DurableLog::archive_before),
//! each one redb write transaction.
//!
//! # Invariants
//!
//! * A call validates every write against the metas read inside its own
//!   write transaction (redb runs one at a time) before it writes
//!   anything, with the same rules as [`MemoryLog`](super::super::MemoryLog);
//!   a refused call is dropped uncommitted, so nothing of it lands.
//! * Records, metas, listing rows and the causal index's entries of one
//!   call commit together or not at all.
//! * An archive removes exactly the records wholly at or below its
//!   watermark and lowers the event count by the events among them.

use std::collections::HashMap;

use ::redb::{Database, ReadableTable};

use super::encode::{decode_header, encode_meta, encode_record, last_position, read_meta, BodyV1};
use super::index::IndexTxn;
use super::{backend, RedbLog, INDEX, LISTING, META, NEXT_SEQ_KEY, RECORDS, STATE};
use crate::durable::memory::{apply_to_meta, empty_meta, validate_write};
use crate::durable::{LogError, SessionMeta, SessionWrite};
use crate::key::SessionKey;

impl RedbLog {
    pub(super) fn archive_in(
        &self,
        db: &Database,
        key: &SessionKey,
        watermark: u64,
    ) -> Result<u64, LogError> {
        // Read and decide inside the write transaction: the persister may
        // be appending, and the tail checked must be the tail archived.
        let txn = self.begin_write(db)?;
        let archived;
        {
            let mut metas = txn.open_table(META).map_err(backend)?;
            let Some((seq, mut meta)) = read_meta(&metas, key)? else {
                return Ok(0);
            };
            let watermark = watermark.min(meta.durable_tail);
            if watermark <= meta.archived_through {
                return Ok(0);
            }
            let (tenant, session) = (key.tenant(), key.session());
            let mut records = txn.open_table(RECORDS).map_err(backend)?;
            // Records are contiguous, so only the last one at or below the
            // watermark can reach past it (a straddling hole); it stays, and
            // loads skip its archived part.
            let mut gone = Vec::new();
            let mut events = 0u64;
            for entry in records
                .range((tenant, session, 0)..=(tenant, session, watermark))
                .map_err(backend)?
            {
                let (k, v) = entry.map_err(backend)?;
                let position = k.value().2;
                let (header, _) = decode_header(key, position, v.value())?;
                if last_position(key, position, &header)? <= watermark {
                    gone.push(position);
                    if matches!(header.body, BodyV1::Event { .. }) {
                        events += 1;
                    }
                }
            }
            for position in gone {
                records
                    .remove((tenant, session, position))
                    .map_err(backend)?;
            }
            meta.event_count = meta.event_count.checked_sub(events).ok_or_else(|| {
                LogError::Corrupt(format!(
                    "{key}: the meta counts {} events, but {events} were archived",
                    meta.event_count
                ))
            })?;
            meta.archived_through = watermark;
            let bytes = encode_meta(seq, &meta)?;
            metas
                .insert((tenant, session), bytes.as_slice())
                .map_err(backend)?;
            archived = events;
        }
        txn.commit().map_err(backend)?;
        Ok(archived)
    }
    pub(super) fn append_in(
        &self,
        db: &Database,
        writes: &[SessionWrite<'_>],
    ) -> Result<(), LogError> {
        if writes.is_empty() {
            return Ok(());
        }
        let txn = self.begin_write(db)?;
        {
            let mut metas = txn.open_table(META).map_err(backend)?;
            // Validate everything before writing anything: one call is all
            // or nothing (an early return drops, so aborts, the
            // transaction). A session written twice in one call validates
            // against its state after the earlier write. `staged` keeps the
            // order sessions first appear in, which is the order new ones
            // get their creation numbers (as in `MemoryLog`).
            let mut staged: Vec<Staged<'_>> = Vec::new();
            let mut index: HashMap<&SessionKey, usize> = HashMap::new();
            for write in writes {
                let (slot, seq, meta) = match index.get(write.key) {
                    Some(&i) => (Some(i), staged[i].seq, Some(staged[i].meta.clone())),
                    None => match read_meta(&metas, write.key)? {
                        Some((seq, meta)) => (None, Some(seq), Some(meta)),
                        None => (None, None, None),
                    },
                };
                validate_write(write.key, meta.as_ref(), write)?;
                // Nothing to record for a session the log does not know
                // (as in `MemoryLog`): not listed, no meta.
                if meta.is_none()
                    && write.new_life.is_none()
                    && write.records.is_empty()
                    && write.closure.is_none()
                {
                    continue;
                }
                let mut meta = meta.unwrap_or_else(empty_meta);
                apply_to_meta(&mut meta, write);
                match slot {
                    Some(i) => staged[i].meta = meta,
                    None => {
                        index.insert(write.key, staged.len());
                        staged.push(Staged {
                            key: write.key,
                            seq,
                            meta,
                        });
                    }
                }
            }

            let mut state = txn.open_table(STATE).map_err(backend)?;
            let mut listing = txn.open_table(LISTING).map_err(backend)?;
            let first_seq = state
                .get(NEXT_SEQ_KEY)
                .map_err(backend)?
                .map_or(0, |v| v.value());
            let mut next_seq = first_seq;
            for session in &staged {
                let key = session.key;
                let seq = match session.seq {
                    Some(seq) => seq,
                    None => {
                        let seq = next_seq;
                        next_seq += 1;
                        listing
                            .insert((key.tenant(), seq), key.session())
                            .map_err(backend)?;
                        seq
                    }
                };
                let bytes = encode_meta(seq, &session.meta)?;
                metas
                    .insert((key.tenant(), key.session()), bytes.as_slice())
                    .map_err(backend)?;
            }
            if next_seq != first_seq {
                state.insert(NEXT_SEQ_KEY, next_seq).map_err(backend)?;
            }

            let mut records = txn.open_table(RECORDS).map_err(backend)?;
            let mut buf = Vec::new();
            for write in writes {
                let (tenant, session) = (write.key.tenant(), write.key.session());
                for record in write.records {
                    encode_record(record, &mut buf)?;
                    records
                        .insert((tenant, session, record.position), buf.as_slice())
                        .map_err(backend)?;
                }
            }
            // The index in the same transaction: durable exactly when the
            // records are.
            let mut index = txn.open_table(INDEX).map_err(backend)?;
            crate::durable::causal::index_appended(
                &mut IndexTxn {
                    index: &mut index,
                    records: &records,
                },
                writes,
            )?;
        }
        txn.commit().map_err(backend)
    }
}

/// One session's state while an append is validated.
pub(super) struct Staged<'k> {
    key: &'k SessionKey,
    /// Its creation number; `None` until it is first recorded.
    seq: Option<u64>,
    meta: SessionMeta,
}
