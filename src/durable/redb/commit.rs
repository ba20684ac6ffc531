//! The writes: [`DurableLog::append`](crate::durable::DurableLog::append) and [`DurableLog::archive_before`](crate::durable::DurableLog::archive_before),
//! each one redb write transaction, staged and then committed: as the log's
//! durability says, or through the journal (module `journal`), whose
//! frames this module also replays at open.
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
//! * Staging is a function of the call and the state it reads, nothing
//!   else, so a journal frame replayed on the state it first ran on lands
//!   the same way (the frame records the call, not its effects).

use std::collections::HashMap;

use ::redb::{Database, ReadableTable, WriteTransaction};

use super::encode::{
    decode_header, decode_record, encode_large_header, encode_meta, encode_record, is_large,
    last_position, read_meta, BodyV1, CHUNK_BYTES,
};
use super::index::IndexTxn;
use super::journal::{self, EntryBuf, EntryV1, Journal};
use super::{backend, RedbLog, CHUNKS, INDEX, LISTING, META, NEXT_SEQ_KEY, RECORDS, STATE};
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
        let Some(archived) = stage_archive(&txn, key, watermark)? else {
            return Ok(0);
        };
        self.finish(
            txn,
            || {
                journal::head(&EntryV1::Archive {
                    tenant: key.tenant(),
                    session: key.session(),
                    watermark,
                })
            },
            &[],
        )?;
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
        // A call too large for a frame is a checkpoint (module `journal`):
        // it needs no frame built.
        if self.journal.is_some() && journal::too_large_for_a_frame(writes) {
            stage_append(&txn, writes, None)?;
            return self.with_journal(|journal| journal.checkpoint(txn));
        }
        let mut entry = self.journal.as_ref().map(|_| EntryBuf::default());
        stage_append(&txn, writes, entry.as_mut())?;
        let blobs = entry.as_ref().map_or(&[][..], EntryBuf::blobs);
        self.finish(
            txn,
            || entry.as_ref().map_or(Ok(Vec::new()), EntryBuf::append_head),
            blobs,
        )
    }

    /// Commits a staged call: through the journal when there is one (its
    /// frame's payload is `head()` then `blobs`), else as the log's
    /// durability says.
    pub(super) fn finish(
        &self,
        txn: WriteTransaction,
        head: impl FnOnce() -> Result<Vec<u8>, LogError>,
        blobs: &[u8],
    ) -> Result<(), LogError> {
        if self.journal.is_none() {
            return txn.commit().map_err(backend);
        }
        let head = head()?;
        self.with_journal(|journal| journal.commit(txn, &head, blobs))
    }

    /// Runs `f` on the journal (under [`RedbDurability::Journaled`] only).
    pub(super) fn with_journal<R>(
        &self,
        f: impl FnOnce(&mut Journal) -> Result<R, LogError>,
    ) -> Result<R, LogError> {
        let Some((_, journal)) = &self.journal else {
            return Err(LogError::Backend("this log keeps no journal".into()));
        };
        let mut journal = journal.lock().unwrap_or_else(|e| e.into_inner());
        match journal.as_mut() {
            Some(journal) => f(journal),
            None => Err(LogError::Backend(
                "the journal is not open (an earlier failure closed it; the next call reopens it)"
                    .into(),
            )),
        }
    }

    /// Replays the journal into a freshly opened `db` and checkpoints, so
    /// that redb's durable state holds every acknowledged call (module
    /// `journal`). A no-op for a log without a journal.
    pub(super) fn recover_journal(&self, db: &Database) -> Result<(), LogError> {
        let path = Journal::path_of(&self.path);
        let Some((capacity, slot)) = &self.journal else {
            // Opened without the journal, the file may still hold frames
            // of a journaled run: they are acknowledged calls.
            if path.exists() {
                let through = journal::through(db)?;
                drop(self.replay_journal(db, path.clone(), 0, through)?);
                std::fs::remove_file(&path).map_err(|e| LogError::Backend(Box::new(e)))?;
            }
            return Ok(());
        };
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        *slot = None;
        let through = journal::through(db)?;
        *slot = Some(self.replay_journal(db, path, *capacity, through)?);
        Ok(())
    }

    /// Applies the journal's frames above `through` to `db` in one durable
    /// commit (a checkpoint); returns the journal, ready to write.
    fn replay_journal(
        &self,
        db: &Database,
        path: std::path::PathBuf,
        capacity: u64,
        through: u64,
    ) -> Result<Journal, LogError> {
        let recovered = Journal::recover(path, capacity, through)?;
        let mut journal = recovered.journal;
        let txn = db.begin_write().map_err(backend)?;
        for (seq, payload) in &recovered.frames {
            replay(&txn, payload).map_err(|e| match e {
                // The disk failing now is worth a retry.
                LogError::Backend(_) => e,
                // A frame that does not apply is damage, not weather.
                e => LogError::Corrupt(format!(
                    "{}: frame {seq} does not apply to {}: {e}",
                    journal.path().display(),
                    self.path.display()
                )),
            })?;
        }
        journal.checkpoint(txn)?;
        Ok(journal)
    }
}

/// Applies a journal frame's append (each write with its turn's store),
/// the records' bytes in `rest`.
fn replay_append<'a>(
    txn: &WriteTransaction,
    writes: impl Iterator<Item = (journal::WriteV1<'a>, Option<u64>)>,
    mut rest: &[u8],
) -> Result<(), LogError> {
    let mut owned = Vec::new();
    for (write, turn_owner) in writes {
        let key = SessionKey::new(write.tenant, write.session)
            .map_err(|e| LogError::Corrupt(format!("journal: a session key: {e}")))?;
        let mut records = Vec::with_capacity(write.records.len());
        for &(position, len) in write.records.iter() {
            records.push(decode_record(
                &key,
                position,
                journal::take(&mut rest, len)?,
            )?);
        }
        owned.push((key, write.life()?, records, write.closure()?, turn_owner));
    }
    let writes: Vec<SessionWrite<'_>> = owned
        .iter()
        .map(
            |(key, new_life, records, closure, turn_owner)| SessionWrite {
                key,
                new_life: *new_life,
                records,
                closure: *closure,
                turn_owner: *turn_owner,
            },
        )
        .collect();
    stage_append(txn, &writes, None)
}

/// Applies one journal frame's call to `txn`, as it first ran.
fn replay(txn: &WriteTransaction, payload: &[u8]) -> Result<(), LogError> {
    let (entry, mut rest) = journal::decode(payload)?;
    match entry {
        EntryV1::Append(writes) => {
            replay_append(txn, writes.into_iter().map(|write| (write, None)), rest)
        }
        EntryV1::AppendWithTurns(writes) => replay_append(txn, writes.into_iter(), rest),
        EntryV1::Archive {
            tenant,
            session,
            watermark,
        } => {
            let key = SessionKey::new(tenant, session)
                .map_err(|e| LogError::Corrupt(format!("journal: a session key: {e}")))?;
            stage_archive(txn, &key, watermark).map(|_| ())
        }
        EntryV1::Index(ops) => {
            let mut index = txn.open_table(INDEX).map_err(backend)?;
            for (key_len, value_len) in ops {
                let key = journal::take(&mut rest, key_len)?;
                match value_len {
                    Some(len) => {
                        let value = journal::take(&mut rest, len)?;
                        index.insert(key, value).map_err(backend)?;
                    }
                    None => {
                        index.remove(key).map_err(backend)?;
                    }
                }
            }
            Ok(())
        }
    }
}

/// An archive's changes in `txn`: how many events it archived, or `None`
/// when there was nothing to archive (nothing written).
fn stage_archive(
    txn: &WriteTransaction,
    key: &SessionKey,
    watermark: u64,
) -> Result<Option<u64>, LogError> {
    let archived;
    {
        let mut metas = txn.open_table(META).map_err(backend)?;
        let Some((seq, mut meta)) = read_meta(&metas, key)? else {
            return Ok(None);
        };
        let watermark = watermark.min(meta.durable_tail);
        if watermark <= meta.archived_through {
            return Ok(None);
        }
        let (tenant, session) = (key.tenant(), key.session());
        let mut records = txn.open_table(RECORDS).map_err(backend)?;
        // Records are contiguous, so only the last one at or below the
        // watermark can reach past it (a straddling hole); it stays, and
        // loads skip its archived part.
        let mut gone = Vec::new();
        let mut events = 0u64;
        let mut chunked = false;
        for entry in records
            .range((tenant, session, 0)..=(tenant, session, watermark))
            .map_err(backend)?
        {
            let (k, v) = entry.map_err(backend)?;
            let position = k.value().2;
            let (header, _) = decode_header(key, position, v.value())?;
            if last_position(key, position, &header)? <= watermark {
                gone.push(position);
                events += u64::from(header.body.is_event());
                chunked |= matches!(header.body, BodyV1::LargeEvent { .. });
            }
        }
        for position in gone {
            records
                .remove((tenant, session, position))
                .map_err(backend)?;
        }
        // Only events own chunks, and every event at or below the
        // watermark is gone.
        if chunked {
            txn.open_table(CHUNKS)
                .map_err(backend)?
                .retain_in(
                    (tenant, session, 0, 0)..=(tenant, session, watermark, u32::MAX),
                    |_, _| false,
                )
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
    Ok(Some(archived))
}

/// An append's changes in `txn`, validated first; with `entry`, also what
/// its journal frame records.
fn stage_append(
    txn: &WriteTransaction,
    writes: &[SessionWrite<'_>],
    mut entry: Option<&mut EntryBuf>,
) -> Result<(), LogError> {
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
            if meta.is_none() && write.is_empty() {
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
        // Opened only for a large event: most calls have none.
        let mut chunks = None;
        let mut buf = Vec::new();
        for write in writes {
            let (tenant, session) = (write.key.tenant(), write.key.session());
            if let Some(entry) = entry.as_deref_mut() {
                entry.session(write);
            }
            for record in write.records {
                let position = record.position;
                let Some(event) = is_large(record) else {
                    encode_record(record, &mut buf)?;
                    records
                        .insert((tenant, session, position), buf.as_slice())
                        .map_err(backend)?;
                    if let Some(entry) = entry.as_deref_mut() {
                        entry.record(position, &buf)?;
                    }
                    continue;
                };
                encode_large_header(record, event, &mut buf)?;
                records
                    .insert((tenant, session, position), buf.as_slice())
                    .map_err(backend)?;
                let chunks = match &mut chunks {
                    Some(chunks) => chunks,
                    None => chunks.insert(txn.open_table(CHUNKS).map_err(backend)?),
                };
                for (n, chunk) in event.payload.chunks(CHUNK_BYTES).enumerate() {
                    let n = u32::try_from(n).map_err(|_| LogError::InvalidRecord {
                        key: write.key.clone(),
                        position,
                        what: "a payload too large for the log",
                    })?;
                    chunks
                        .insert((tenant, session, position, n), chunk)
                        .map_err(backend)?;
                }
                // A frame holds the record whole; replaying it chunks it
                // again through this very function.
                if let Some(entry) = entry.as_deref_mut() {
                    encode_record(record, &mut buf)?;
                    entry.record(position, &buf)?;
                }
            }
        }
        // The index in the same transaction: durable exactly when the
        // records are.
        let mut index = txn.open_table(INDEX).map_err(backend)?;
        crate::durable::causal::index_appended(
            &mut IndexTxn {
                index: &mut index,
                records: &records,
                recorded: None,
            },
            writes,
        )?;
    }
    Ok(())
}

/// One session's state while an append is validated.
pub(super) struct Staged<'k> {
    key: &'k SessionKey,
    /// Its creation number; `None` until it is first recorded.
    seq: Option<u64>,
    meta: SessionMeta,
}
