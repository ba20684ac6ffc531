//! The Postgres log's writes: [`append`] (one transaction per persister
//! round) and [`archive`].
//!
//! # Invariants
//!
//! * An append is a fixed handful of round trips, whatever the number of
//!   records or sessions: `BEGIN` with the lock of the state row, the lock
//!   of the sessions' rows, (the new sessions), one statement that inserts
//!   every record (`INSERT … unnest`), updates every changed row
//!   (`UPDATE … unnest`), notifies once per changed session and reads the
//!   causal index's state, the rest of the causal index (one statement per
//!   index read or write it makes: none for events without links while no
//!   orphan waits for its parent), `COMMIT`: 4 (5 when it records new
//!   sessions; one more per 64 MiB of payloads, inserted in chunks so that
//!   no statement nears Postgres's 1 GiB message limit).
//! * Everything is validated against the locked rows before anything is
//!   written; a refusal returns before the first write and the transaction
//!   rolls back (dropped), so a refused call changes nothing.
//! * A session's row is created in the transaction that first records it,
//!   its identity number (the listing's order) handed out in the order the
//!   call names new sessions. Two writers creating one session race on the
//!   `(tenant, session)` unique key: the loser's transaction fails and runs
//!   again ([`super::PostgresLog`]'s retry), now validating against the
//!   winner's row.

use std::collections::HashMap;

use ::postgres::Client;

use super::reads::decode_session;
use super::{backend, to_sql, CommitFailed, Conn};
use crate::durable::memory::{apply_to_meta, empty_meta, validate_write};
use crate::durable::stored::LinksV1;
use crate::durable::{Life, LogError, LogRecord, RecordBody, SessionMeta, SessionWrite};
use crate::key::SessionKey;

/// Refuses, by name, a record whose positions a `bigint` cannot hold
/// (module docs of [`super`]) or whose payload is over `max_bytes`: the
/// store writes it as a hole instead of the whole commit failing for ever.
pub(super) fn check_records(writes: &[SessionWrite<'_>], max_bytes: usize) -> Result<(), LogError> {
    // Below i64::MAX, so that `last + 1` is still a bigint in the reads.
    const LAST: u64 = i64::MAX as u64 - 1;
    for write in writes {
        for record in write.records {
            if record.position > LAST || record.last_position() > LAST {
                return Err(LogError::InvalidRecord {
                    key: write.key.clone(),
                    position: record.position,
                    what: "the position is beyond what the Postgres log stores (i64::MAX - 1)",
                });
            }
            if let RecordBody::Event(event) = &record.body {
                if event.payload.len() > max_bytes {
                    return Err(LogError::InvalidRecord {
                        key: write.key.clone(),
                        position: record.position,
                        what: "the payload is larger than the Postgres log's max_record_bytes",
                    });
                }
            }
        }
    }
    Ok(())
}

/// An open transaction on the log's connection, rolled back when dropped
/// uncommitted (a refusal, an error). Opened with a simple query so that
/// `BEGIN` can share a round trip with the first statement.
pub(super) struct Tx<'c> {
    client: &'c mut Client,
    /// The connection's [`Conn::broken`](super::Conn): set when the
    /// rollback fails.
    broken: &'c mut bool,
    open: bool,
}

impl<'c> Tx<'c> {
    /// Runs `begin` (which starts with `BEGIN`).
    pub(super) fn begin(
        client: &'c mut Client,
        broken: &'c mut bool,
        begin: &str,
    ) -> Result<Self, LogError> {
        if let Err(e) = client.batch_execute(begin) {
            // `BEGIN` may have run and the lock failed: end it.
            *broken = client.batch_execute("ROLLBACK").is_err();
            return Err(backend(e));
        }
        Ok(Self {
            client,
            broken,
            open: true,
        })
    }

    pub(super) fn client(&mut self) -> &mut Client {
        self.client
    }

    /// Commits; an error here leaves the outcome unknown ([`CommitFailed`]).
    pub(super) fn commit(mut self) -> Result<(), LogError> {
        self.open = false;
        self.client
            .batch_execute("COMMIT")
            .map_err(|e| LogError::Backend(Box::new(CommitFailed(e))))
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.open && self.client.batch_execute("ROLLBACK").is_err() {
            // The caller drops the connection rather than run the next
            // call inside this transaction.
            *self.broken = true;
        }
    }
}

/// One session's state while an append is validated.
struct Staged {
    /// Its row's id; `None` until the row exists.
    id: Option<i64>,
    /// `None` if the log does not know it (yet).
    meta: Option<SessionMeta>,
    /// Lives this call registers, in order.
    new_lives: Vec<Life>,
    /// Whether this call changes its row.
    changed: bool,
}

/// One [`crate::durable::DurableLog::append`] attempt, in one transaction.
pub(super) fn append(conn: &mut Conn, writes: &[SessionWrite<'_>]) -> Result<(), LogError> {
    let Conn {
        client,
        statements,
        broken,
    } = conn;
    // Sessions in the order they first appear: the order new ones are
    // numbered (as in the other backends).
    let mut index: HashMap<&SessionKey, usize> = HashMap::new();
    let mut sessions: Vec<&SessionKey> = Vec::new();
    for write in writes {
        index.entry(write.key).or_insert_with(|| {
            sessions.push(write.key);
            sessions.len() - 1
        });
    }
    let tenants: Vec<&str> = sessions.iter().map(|k| k.tenant()).collect();
    let names: Vec<&str> = sessions.iter().map(|k| k.session()).collect();

    let mut tx = Tx::begin(client, broken, &statements.begin_locked)?;
    let rows = tx
        .client()
        .query(&statements.lock_sessions, &[&tenants, &names])
        .map_err(backend)?;
    let mut staged: Vec<Staged> = sessions
        .iter()
        .map(|_| Staged {
            id: None,
            meta: None,
            new_lives: Vec::new(),
            changed: false,
        })
        .collect();
    for row in &rows {
        let (id, key, meta) = decode_session(row)?;
        if let Some(&i) = index.get(&key) {
            staged[i].id = Some(id);
            staged[i].meta = Some(meta);
        }
    }

    // Validate everything before writing anything. A session written twice
    // in one call validates against its state after the earlier write.
    for write in writes {
        let stage = &mut staged[index[write.key]];
        validate_write(write.key, stage.meta.as_ref(), write)?;
        // Nothing to record for a session the log does not know: not
        // listed, no row (as in the other backends).
        if write.is_empty() {
            continue;
        }
        apply_to_meta(stage.meta.get_or_insert_with(empty_meta), write);
        stage.new_lives.extend(write.new_life);
        stage.changed = true;
    }
    if !staged.iter().any(|s| s.changed) {
        // Only empty writes to known sessions; the transaction rolls back.
        return Ok(());
    }

    insert_new_sessions(tx.client(), statements, &sessions, &mut staged)?;
    let state = write_all(tx.client(), statements, writes, &index, &staged)?;
    let mut causal = super::index::TxIndex::new(tx.client(), statements);
    if let Some(state) = state {
        causal.knowing_state(state);
    }
    crate::durable::causal::index_appended(&mut causal, writes)?;
    tx.commit()
}

/// Creates the rows of the sessions this call records first.
fn insert_new_sessions(
    tx: &mut Client,
    statements: &super::schema::Statements,
    sessions: &[&SessionKey],
    staged: &mut [Staged],
) -> Result<(), LogError> {
    let new: Vec<usize> = (0..staged.len())
        .filter(|&i| staged[i].changed && staged[i].id.is_none())
        .collect();
    if new.is_empty() {
        return Ok(());
    }
    let tenants: Vec<&str> = new.iter().map(|&i| sessions[i].tenant()).collect();
    let names: Vec<&str> = new.iter().map(|&i| sessions[i].session()).collect();
    let rows = tx
        .query(&statements.insert_sessions, &[&tenants, &names])
        .map_err(backend)?;
    for row in &rows {
        let id: i64 = row.try_get(0).map_err(backend)?;
        let tenant: &str = row.try_get(1).map_err(backend)?;
        let session: &str = row.try_get(2).map_err(backend)?;
        if let Some(&i) = new
            .iter()
            .find(|&&i| sessions[i].tenant() == tenant && sessions[i].session() == session)
        {
            staged[i].id = Some(id);
        }
    }
    if new.iter().any(|&i| staged[i].id.is_none()) {
        return Err(LogError::Backend(
            "the insert of new sessions returned fewer rows than it was given".into(),
        ));
    }
    Ok(())
}

/// How many payload and link bytes one statement carries at most (but for
/// a single larger record): Postgres refuses a message over 1 GiB, so a
/// large commit inserts its records in several statements of the same
/// transaction instead of failing as a whole, again and again.
const CHUNK_BYTES: usize = 64 << 20;

/// Records as the columns of one multi-row insert (`$1..$9`).
#[derive(Default)]
struct RecordColumns<'a> {
    session_ids: Vec<i64>,
    positions: Vec<i64>,
    incarnations: Vec<i64>,
    revisions: Vec<Option<i64>>,
    timestamps: Vec<Option<i64>>,
    hole_counts: Vec<Option<i64>>,
    hole_reasons: Vec<Option<i16>>,
    links: Vec<Option<Vec<u8>>>,
    payloads: Vec<Option<&'a [u8]>>,
    /// Payload and link bytes so far.
    bytes: usize,
}

impl<'a> RecordColumns<'a> {
    fn push(&mut self, session_id: i64, record: &'a LogRecord) -> Result<(), LogError> {
        self.session_ids.push(session_id);
        self.positions.push(to_sql(record.position));
        self.incarnations.push(to_sql(record.incarnation.get()));
        match &record.body {
            RecordBody::Event(event) => {
                let links = LinksV1::of(&event.links)
                    .map(|stored| postcard::to_stdvec(&stored))
                    .transpose()
                    .map_err(|e| LogError::Backend(Box::new(e)))?;
                self.bytes += event.payload.len() + links.as_ref().map_or(0, Vec::len);
                self.revisions.push(Some(to_sql(event.revision)));
                self.timestamps.push(Some(to_sql(event.timestamp_nanos)));
                self.hole_counts.push(None);
                self.hole_reasons.push(None);
                self.links.push(links);
                self.payloads.push(Some(event.payload.as_slice()));
            }
            RecordBody::Hole { count, reason } => {
                self.revisions.push(None);
                self.timestamps.push(None);
                self.hole_counts.push(Some(to_sql(*count)));
                self.hole_reasons.push(Some(i16::from(reason.to_tag())));
                self.links.push(None);
                self.payloads.push(None);
            }
        }
        Ok(())
    }
}

/// Every record of the call, every changed row and the notifications: one
/// statement, or (past [`CHUNK_BYTES`]) a records-only insert per chunk
/// before it.
fn write_all(
    tx: &mut Client,
    statements: &super::schema::Statements,
    writes: &[SessionWrite<'_>],
    index: &HashMap<&SessionKey, usize>,
    staged: &[Staged],
) -> Result<Option<Option<Vec<u8>>>, LogError> {
    let mut columns = RecordColumns::default();
    for write in writes {
        let Some(id) = staged[index[write.key]].id else {
            continue;
        };
        for record in write.records {
            if columns.bytes >= CHUNK_BYTES {
                let full = std::mem::take(&mut columns);
                let c = &full;
                tx.execute(
                    &statements.insert_records,
                    &[
                        &c.session_ids,
                        &c.positions,
                        &c.incarnations,
                        &c.revisions,
                        &c.timestamps,
                        &c.hole_counts,
                        &c.hole_reasons,
                        &c.links,
                        &c.payloads,
                    ],
                )
                .map_err(backend)?;
            }
            columns.push(id, record)?;
        }
    }
    let c = &columns;
    let (mut ids, mut tails, mut last_revisions, mut events) = (vec![], vec![], vec![], vec![]);
    let (mut owners, mut life_incarnations, mut firsts) = (vec![], vec![], vec![]);
    let (mut close_reasons, mut close_lasts) = (Vec::<Option<i16>>::new(), Vec::new());
    let mut open_turns = Vec::<Option<i64>>::new();
    for stage in staged.iter().filter(|s| s.changed) {
        let (Some(id), Some(meta)) = (stage.id, stage.meta.as_ref()) else {
            continue;
        };
        ids.push(id);
        tails.push(to_sql(meta.durable_tail));
        last_revisions.push(to_sql(meta.last_revision));
        events.push(to_sql(meta.event_count));
        close_reasons.push(meta.closure.map(|c| i16::from(c.reason.to_tag())));
        close_lasts.push(meta.closure.map(|c| to_sql(c.last)));
        open_turns.push(meta.open_turn.map(to_sql));
        for life in &stage.new_lives {
            owners.push(id);
            life_incarnations.push(to_sql(life.incarnation.get()));
            firsts.push(to_sql(life.first_position));
        }
    }
    let state_key = crate::durable::causal::NUMBER_KEY;
    let rows = tx
        .query(
            &statements.write_all,
            &[
                &c.session_ids,
                &c.positions,
                &c.incarnations,
                &c.revisions,
                &c.timestamps,
                &c.hole_counts,
                &c.hole_reasons,
                &c.links,
                &c.payloads,
                &ids,
                &tails,
                &last_revisions,
                &events,
                &owners,
                &life_incarnations,
                &firsts,
                &statements.channel,
                &state_key,
                &close_reasons,
                &close_lasts,
                &open_turns,
            ],
        )
        .map_err(backend)?;
    // The index's state as of this transaction (one row per changed
    // session, at least one).
    rows.first()
        .map(|row| row.try_get::<_, Option<Vec<u8>>>(1))
        .transpose()
        .map_err(backend)
}

/// One [`crate::durable::DurableLog::archive_before`] attempt: deletes the
/// records wholly at or below the watermark (a hole straddling it stays)
/// and moves the row's archive mark, in one transaction. `watermark` is at
/// most `i64::MAX`.
pub(super) fn archive(conn: &mut Conn, key: &SessionKey, watermark: u64) -> Result<u64, LogError> {
    let Conn {
        client,
        statements,
        broken,
    } = conn;
    let mut tx = Tx::begin(client, broken, "BEGIN")?;
    let rows = tx
        .client()
        .query(
            &statements.lock_sessions,
            &[&[key.tenant()].as_slice(), &[key.session()].as_slice()],
        )
        .map_err(backend)?;
    let Some(row) = rows.first() else {
        return Ok(0);
    };
    let (id, _, meta) = decode_session(row)?;
    let watermark = watermark.min(meta.durable_tail);
    if watermark <= meta.archived_through {
        return Ok(0);
    }
    let archived: i64 = tx
        .client()
        .query_one(&statements.archive, &[&id, &to_sql(watermark)])
        .and_then(|row| row.try_get(0))
        .map_err(backend)?;
    let archived = u64::try_from(archived).unwrap_or(0);
    if archived > meta.event_count {
        return Err(LogError::Corrupt(format!(
            "{key}: the row counts {} events, but {archived} are archived",
            meta.event_count
        )));
    }
    tx.client()
        .execute(
            &statements.set_archived,
            &[&id, &to_sql(watermark), &to_sql(archived)],
        )
        .map_err(backend)?;
    tx.commit()?;
    Ok(archived)
}
