//! The writes: [`DurableLog::append`](crate::durable::DurableLog::append) and [`DurableLog::archive_before`](crate::durable::DurableLog::archive_before) as
//! optimistic `WATCH` … `MULTI`/`EXEC` transactions.
//!
//! # Invariants
//!
//! * An attempt reads every meta it validates against under `WATCH` (with
//!   its sessions' waiting-orphan entries of the causal index, which every
//!   append reads; the index watches any other entry as it reads it, see
//!   `index.rs`), plans the whole call (records, metas, listings, the
//!   index's writes) from those reads, and sends it as one `MULTI`/`EXEC`:
//!   all of it or, when a watched key changed, none of it, and the call
//!   starts over (at most [`MAX_ATTEMPTS`] times). An attempt that fails or
//!   refuses leaves nothing watched on the connection.
//! * Nothing an append watches belongs to another session unless one of
//!   its links points there, so appends to different sessions do not abort
//!   each other (issue 21 item 9).
//! * Validation is the same code as [`MemoryLog`](super::super::MemoryLog)'s
//!   ([`validate_write`], [`apply_to_meta`]): the backends refuse the same
//!   writes.
//! * A session's stream and meta change only together; an archive trims
//!   exactly the entries wholly at or below its watermark and counts the
//!   events it removes from the meta's holes, without reading them.

use std::collections::HashMap;

use ::redis::{Cmd, Connection, Value};

use super::conn::{bulk, cmd, contended, exec, int, ok_reply, one, round_trip, unwatch};
use super::encode::{decode_meta, encode_meta, xadd};
use super::keys::{listing_key, SessionKeys};
use super::{index, RedisLog, MAX_ATTEMPTS};
use crate::durable::memory::{apply_to_meta, empty_meta, validate_write};
use crate::durable::{LogError, RecordBody, SessionMeta, SessionWrite};
use crate::key::SessionKey;

impl RedisLog {
    /// One attempt of [`DurableLog::append`](crate::durable::DurableLog::append): `Ok(false)` if a watched
    /// key changed and the call must start over. Leaves nothing watched.
    fn try_append(
        &self,
        slot: &mut Option<Connection>,
        reused: bool,
        writes: &[SessionWrite<'_>],
    ) -> Result<bool, LogError> {
        // Sessions in the order they first appear: the order new ones get
        // their creation numbers (as in the other backends).
        let mut index: HashMap<&SessionKey, usize> = HashMap::new();
        let mut sessions: Vec<&SessionKey> = Vec::new();
        for write in writes {
            index.entry(write.key).or_insert_with(|| {
                sessions.push(write.key);
                sessions.len() - 1
            });
        }
        let keys: Vec<SessionKeys> = sessions
            .iter()
            .map(|key| SessionKeys::new(&self.options.prefix, key))
            .collect();
        // The causal index entries every append reads, its sessions'
        // waiting orphans, are watched with the metas and read ahead; the
        // index numbers its events with links take are reserved in the same
        // round trip (see `index`). Nothing else is watched up front: the
        // index watches what it reads, as it reads it.
        let prefix = self.options.prefix.as_str();
        let waiting: Vec<(Vec<u8>, Vec<u8>)> = sessions
            .iter()
            .map(|key| {
                let entry = crate::durable::causal::waiting_key(key);
                let redis_key = index::entry_key(prefix, &entry);
                (entry, redis_key)
            })
            .collect();
        let linked = crate::durable::causal::linked_events(writes);
        let mut watch = cmd("WATCH");
        for k in &keys {
            watch.arg(&k.meta);
        }
        for (_, redis_key) in &waiting {
            watch.arg(redis_key.as_slice());
        }
        let mut read = vec![watch];
        read.extend(keys.iter().map(|k| cmd("GET").arg(&k.meta).clone()));
        read.extend(
            waiting
                .iter()
                .map(|(_, redis_key)| cmd("GET").arg(redis_key.as_slice()).clone()),
        );
        if linked > 0 {
            read.push(index::reserve_numbers(prefix, linked));
        }
        let mut replies = self.first_trip(slot, reused, &read)?;
        let read_ahead = (|| {
            let reserved = match linked {
                0 => None,
                _ => Some(index::reserved_from(
                    replies.pop().unwrap_or(Value::Nil),
                    linked,
                )?),
            };
            let tail = replies.split_off(replies.len().saturating_sub(waiting.len()));
            let mut known = HashMap::with_capacity(waiting.len());
            for ((entry, _), reply) in waiting.into_iter().zip(tail) {
                known.insert(entry, bulk(reply, "GET")?);
            }
            Ok::<_, LogError>(index::ReadAhead { known, reserved })
        })();
        let read_ahead = match read_ahead {
            Ok(read_ahead) => read_ahead,
            Err(e) => {
                unwatch(slot);
                return Err(e);
            }
        };
        let first = FirstTrip {
            replies,
            read_ahead,
        };
        match self.stage_append(slot, writes, &index, &sessions, &keys, first) {
            Ok(Some(tx)) => exec(slot, &tx, "append"),
            Ok(None) => {
                // Only empty writes to known sessions: nothing changes.
                unwatch(slot);
                Ok(true)
            }
            Err(e) => {
                unwatch(slot);
                Err(e)
            }
        }
    }

    /// Validates an append against the metas read under `WATCH` and builds
    /// its transaction; `None` if it changes nothing.
    fn stage_append(
        &self,
        slot: &mut Option<Connection>,
        writes: &[SessionWrite<'_>],
        index: &HashMap<&SessionKey, usize>,
        sessions: &[&SessionKey],
        keys: &[SessionKeys],
        first: FirstTrip,
    ) -> Result<Option<Vec<Cmd>>, LogError> {
        let mut replies = first.replies.into_iter();
        ok_reply(replies.next().unwrap_or(Value::Nil), "WATCH")?;
        let mut staged = Vec::with_capacity(sessions.len());
        for (key, reply) in sessions.iter().zip(replies) {
            let (seq, meta, holes) = match decode_meta(key, reply)? {
                Some((seq, meta, holes)) => (Some(seq), Some(meta), holes),
                None => (None, None, Vec::new()),
            };
            staged.push(Staged {
                seq,
                meta,
                holes,
                changed: false,
                first_recorded: false,
            });
        }
        // Validate everything before writing anything. A session written
        // twice in one call validates against its state after the earlier
        // write.
        for write in writes {
            let stage = &mut staged[index[write.key]];
            validate_write(write.key, stage.meta.as_ref(), write)?;
            // Nothing to record for a session the log does not know: not
            // listed, no meta (as in the other backends).
            if write.is_empty() {
                continue;
            }
            apply_to_meta(stage.meta.get_or_insert_with(empty_meta), write);
            stage
                .holes
                .extend(write.records.iter().filter_map(|r| match r.body {
                    RecordBody::Hole { count, .. } => Some((r.position, count)),
                    RecordBody::Event(_) => None,
                }));
            stage.changed = true;
        }
        if !staged.iter().any(|s| s.changed) {
            return Ok(None);
        }
        let new = staged
            .iter()
            .filter(|s| s.changed && s.seq.is_none())
            .count() as u64;
        if new > 0 {
            // Creation numbers, outside the transaction (its commands
            // cannot use each other's results); an abort wastes them.
            let counter = format!("{}:seq", self.options.prefix);
            let reply = round_trip(slot, &[cmd("INCRBY").arg(counter).arg(new).clone()])?;
            let last = int(one(reply, "INCRBY")?, "INCRBY")?;
            let first = last.saturating_sub(new - 1);
            let unlisted = staged.iter_mut().filter(|s| s.changed && s.seq.is_none());
            for (seq, stage) in (first..).zip(unlisted) {
                stage.seq = Some(seq);
                stage.first_recorded = true;
            }
        }
        let mut tx = vec![cmd("MULTI")];
        for write in writes {
            let log = &keys[index[write.key]].log;
            for record in write.records {
                tx.push(xadd(log, record)?);
            }
        }
        for ((key, k), stage) in sessions.iter().zip(keys).zip(&staged) {
            let (true, Some(seq), Some(meta)) = (stage.changed, stage.seq, stage.meta.as_ref())
            else {
                continue;
            };
            let bytes = encode_meta(seq, meta, &stage.holes)?;
            tx.push(cmd("SET").arg(&k.meta).arg(bytes).clone());
            if stage.first_recorded {
                tx.push(
                    cmd("ZADD")
                        .arg(listing_key(&self.options.prefix, key.tenant()))
                        .arg("NX")
                        .arg(seq)
                        .arg(key.session())
                        .clone(),
                );
            }
        }
        // The index's writes, planned with reads under the same WATCH.
        let mut staged_index = index::Staged::new(slot, &self.options.prefix, first.read_ahead);
        crate::durable::causal::index_appended(&mut staged_index, writes)?;
        tx.extend(staged_index.commands());
        tx.push(cmd("EXEC"));
        Ok(Some(tx))
    }

    /// One attempt of [`DurableLog::archive_before`](crate::durable::DurableLog::archive_before); `None` if a watched
    /// key changed. Leaves nothing watched.
    fn try_archive(
        &self,
        slot: &mut Option<Connection>,
        reused: bool,
        key: &SessionKey,
        watermark: u64,
    ) -> Result<Option<u64>, LogError> {
        let keys = SessionKeys::new(&self.options.prefix, key);
        let replies = self.first_trip(
            slot,
            reused,
            &[
                cmd("WATCH").arg(&keys.meta).clone(),
                cmd("GET").arg(&keys.meta).clone(),
            ],
        )?;
        match stage_archive(key, &keys, watermark, replies) {
            Ok(Some((tx, events))) => Ok(exec(slot, &tx, "archive")?.then_some(events)),
            Ok(None) => {
                unwatch(slot);
                Ok(Some(0))
            }
            Err(e) => {
                unwatch(slot);
                Err(e)
            }
        }
    }

    /// [`DurableLog::append`](crate::durable::DurableLog::append): validated attempts until one commits.
    pub(super) fn append_all(&self, writes: &[SessionWrite<'_>]) -> Result<(), LogError> {
        if writes.is_empty() {
            return Ok(());
        }
        self.check_sizes(writes)?;
        let (mut slot, reused) = self.connection()?;
        for attempt in 0..MAX_ATTEMPTS {
            if self.try_append(&mut slot, reused && attempt == 0, writes)? {
                return Ok(());
            }
            self.note_aborted();
        }
        Err(contended("append"))
    }

    /// [`DurableLog::archive_before`](crate::durable::DurableLog::archive_before).
    pub(super) fn archive(&self, key: &SessionKey, watermark: u64) -> Result<u64, LogError> {
        let (mut slot, reused) = self.connection()?;
        for attempt in 0..MAX_ATTEMPTS {
            if let Some(archived) =
                self.try_archive(&mut slot, reused && attempt == 0, key, watermark)?
            {
                return Ok(archived);
            }
            self.note_aborted();
        }
        Err(contended("archive"))
    }
}

impl RedisLog {
    /// Refuses, by name, a record whose payload or links the server would
    /// not take (its bulk limit): Redis closes the connection on such a
    /// command, which would fail every session of the commit.
    fn check_sizes(&self, writes: &[SessionWrite<'_>]) -> Result<(), LogError> {
        for write in writes {
            for record in write.records {
                let RecordBody::Event(event) = &record.body else {
                    continue;
                };
                // Links are bounded far below any bulk limit by their check
                // at append (`Links::check_for`); the payload is not.
                if event.payload.len() > self.bulk_limit {
                    return Err(LogError::InvalidRecord {
                        key: write.key.clone(),
                        position: record.position,
                        what: "the payload is larger than the Redis server's bulk limit (proto-max-bulk-len)",
                    });
                }
            }
        }
        Ok(())
    }
}

/// What an append's first round trip read.
struct FirstTrip {
    /// `WATCH`'s reply, then each session's meta.
    replies: Vec<Value>,
    /// What the causal index read ahead and reserved.
    read_ahead: index::ReadAhead,
}

/// Plans an archive from the meta read under `WATCH`: its transaction and
/// the events it archives, or `None` if there is nothing to archive.
fn stage_archive(
    key: &SessionKey,
    keys: &SessionKeys,
    watermark: u64,
    replies: Vec<Value>,
) -> Result<Option<([Cmd; 4], u64)>, LogError> {
    let mut replies = replies.into_iter();
    ok_reply(replies.next().unwrap_or(Value::Nil), "WATCH")?;
    let Some((seq, mut meta, mut holes)) = decode_meta(key, replies.next().unwrap_or(Value::Nil))?
    else {
        return Ok(None);
    };
    let watermark = watermark.min(meta.durable_tail);
    if watermark <= meta.archived_through {
        return Ok(None);
    }
    let (min_id, events) = plan_archive(key, &meta, &holes, watermark)?;
    meta.event_count = meta.event_count.checked_sub(events).ok_or_else(|| {
        LogError::Corrupt(format!(
            "{key}: the meta counts {} events, but {events} are archived",
            meta.event_count
        ))
    })?;
    meta.archived_through = watermark;
    holes.retain(|&(position, count)| position + (count - 1) > watermark);
    let tx = [
        cmd("MULTI"),
        cmd("XTRIM")
            .arg(&keys.log)
            .arg("MINID")
            .arg("=")
            .arg(format!("{min_id}-0"))
            .clone(),
        cmd("SET")
            .arg(&keys.meta)
            .arg(encode_meta(seq, &meta, &holes)?)
            .clone(),
        cmd("EXEC"),
    ];
    Ok(Some((tx, events)))
}

/// One session's state while an append is validated.
struct Staged {
    /// Its creation number; `None` until it is first recorded.
    seq: Option<u64>,
    /// `None` if the log does not know it (yet).
    meta: Option<SessionMeta>,
    /// Holes not wholly archived: `(position, count)`.
    holes: Vec<(u64, u64)>,
    /// Whether this call changes its meta.
    changed: bool,
    /// Whether this call records it first (and lists it).
    first_recorded: bool,
}

/// Where to trim and how many events that removes: `(min id, events)`.
/// Entries cover `first kept ..= tail` contiguously; the entries below the
/// min id cover `first kept .. min id`, each event one position, each hole
/// its count.
fn plan_archive(
    key: &SessionKey,
    meta: &SessionMeta,
    holes: &[(u64, u64)],
    watermark: u64,
) -> Result<(u64, u64), LogError> {
    let straddling = |at: u64| {
        holes
            .iter()
            .find(|&&(position, count)| position <= at && position + (count - 1) > at)
            .map(|&(position, _)| position)
    };
    let after = |at: u64| {
        at.checked_add(1).ok_or_else(|| {
            LogError::Corrupt(format!("{key}: the meta's tail is the last position"))
        })
    };
    let first_kept = match straddling(meta.archived_through) {
        Some(position) => position,
        None => after(meta.archived_through)?,
    };
    let min_id = match straddling(watermark) {
        Some(position) => position,
        None => after(watermark)?,
    };
    let positions = min_id.saturating_sub(first_kept);
    let hole_positions: u64 = holes
        .iter()
        .filter(|&&(position, _)| position >= first_kept && position < min_id)
        .map(|&(_, count)| count)
        .sum();
    let events = positions.checked_sub(hole_positions).ok_or_else(|| {
        LogError::Corrupt(format!(
            "{key}: the meta's holes cover more than positions {first_kept}..{min_id}"
        ))
    })?;
    Ok((min_id, events))
}
