//! The Postgres log's reads: [`load_after`], [`meta`], [`sessions`], and
//! the checked decoding of the rows every part of the log reads.
//!
//! # Invariants
//!
//! * Each read is one statement, so it sees one snapshot: `load_after`
//!   reads the session's archive mark and its records together.
//! * Rows are checked as they are decoded (module docs of [`super`]):
//!   anything this code would not have written is [`LogError::Corrupt`].

use std::time::Duration;

use ::postgres::Row;

use super::{backend, from_sql, position_from_sql, to_sql, Conn};
use crate::closure::{CloseReason, Closure};
use crate::cursor::Incarnation;
use crate::durable::stored::LinksV1;
use crate::durable::{
    HoleReason, Life, Links, LogError, LogRecord, RecordBody, SessionMeta, StoredEvent,
};
use crate::key::SessionKey;

/// A session row (`schema::SESSION_COLUMNS`): its id, key and meta.
pub(super) fn decode_session(row: &Row) -> Result<(i64, SessionKey, SessionMeta), LogError> {
    let id: i64 = row.try_get(0).map_err(backend)?;
    let tenant: &str = row.try_get(1).map_err(backend)?;
    let session: &str = row.try_get(2).map_err(backend)?;
    let key = SessionKey::new(tenant, session).map_err(|e| {
        LogError::Corrupt(format!(
            "a session row ({tenant:?}, {session:?}) is not a valid key: {e}"
        ))
    })?;
    let number = |index: usize, what: &str| -> Result<u64, LogError> {
        position_from_sql(row.try_get(index).map_err(backend)?, what, &key)
    };
    let durable_tail = number(3, "durable tail")?;
    let archived_through = number(4, "archive mark")?;
    let last_revision = from_sql(row.try_get(5).map_err(backend)?);
    let event_count = number(6, "event count")?;
    let incarnations: Vec<i64> = row.try_get(7).map_err(backend)?;
    let firsts: Vec<i64> = row.try_get(8).map_err(backend)?;
    let bad = |what: String| LogError::Corrupt(format!("{key}, session row: {what}"));
    if archived_through > durable_tail {
        return Err(bad(format!(
            "archived through {archived_through} beyond the tail {durable_tail}"
        )));
    }
    if incarnations.len() != firsts.len() {
        return Err(bad("lives' arrays of different lengths".into()));
    }
    let close_reason: Option<i16> = row.try_get(9).map_err(backend)?;
    let close_last: Option<i64> = row.try_get(10).map_err(backend)?;
    let closure = match (close_reason, close_last) {
        (None, None) => None,
        (Some(reason), Some(last)) => {
            let reason = u8::try_from(reason)
                .ok()
                .and_then(CloseReason::from_tag)
                .ok_or_else(|| bad(format!("unknown close reason {reason}")))?;
            let last = position_from_sql(last, "closure's last position", &key)?;
            if last != durable_tail {
                return Err(bad(format!(
                    "closed at {last} but the durable tail is {durable_tail}"
                )));
            }
            Some(Closure { reason, last })
        }
        _ => return Err(bad("half a closure".into())),
    };
    let lives = incarnations
        .iter()
        .zip(&firsts)
        .map(|(&incarnation, &first)| {
            Ok(Life {
                incarnation: Incarnation::from_raw(from_sql(incarnation))
                    .ok_or_else(|| bad("a life has incarnation 0".into()))?,
                first_position: position_from_sql(first, "life's first position", &key)?,
            })
        })
        .collect::<Result<Vec<_>, LogError>>()?;
    Ok((
        id,
        key,
        SessionMeta {
            durable_tail,
            archived_through,
            last_revision,
            lives,
            event_count,
            closure,
            open_turn: row
                .try_get::<_, Option<i64>>(11)
                .map_err(backend)?
                .map(from_sql),
        },
    ))
}

/// A record row (`schema::RECORD_COLUMNS`), checked.
pub(super) fn decode_record(key: &SessionKey, row: &Row) -> Result<LogRecord, LogError> {
    let position: i64 = row.try_get(0).map_err(backend)?;
    let position = u64::try_from(position)
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| LogError::Corrupt(format!("{key}: a record at position {position}")))?;
    let bad = |what: String| LogError::Corrupt(format!("{key}, record at {position}: {what}"));
    let incarnation = Incarnation::from_raw(from_sql(row.try_get(1).map_err(backend)?))
        .ok_or_else(|| bad("incarnation 0".into()))?;
    let revision: Option<i64> = row.try_get(2).map_err(backend)?;
    let timestamp: Option<i64> = row.try_get(3).map_err(backend)?;
    let hole_count: Option<i64> = row.try_get(4).map_err(backend)?;
    let hole_reason: Option<i16> = row.try_get(5).map_err(backend)?;
    let links: Option<&[u8]> = row.try_get(6).map_err(backend)?;
    let payload: Option<Vec<u8>> = row.try_get(7).map_err(backend)?;
    let body = match (revision, timestamp, hole_count, hole_reason, payload) {
        (Some(revision), Some(timestamp), None, None, Some(payload)) => {
            let links = match links {
                None => Links::default(),
                Some(bytes) => {
                    let (stored, rest): (LinksV1<'_>, _) =
                        postcard::take_from_bytes(bytes).map_err(|e| bad(format!("links: {e}")))?;
                    if !rest.is_empty() {
                        return Err(bad("trailing bytes after the links".into()));
                    }
                    stored
                        .into_links(key.tenant())
                        .ok_or_else(|| bad("the links' parent is not a valid session id".into()))?
                }
            };
            RecordBody::Event(StoredEvent {
                revision: from_sql(revision),
                timestamp_nanos: from_sql(timestamp),
                links,
                payload,
            })
        }
        (None, None, Some(count), Some(reason), None) if links.is_none() => {
            let count = u64::try_from(count)
                .ok()
                .filter(|&c| c > 0)
                .ok_or_else(|| bad(format!("a hole of {count} positions")))?;
            if position.checked_add(count - 1).is_none() {
                return Err(bad("a hole past the last position".into()));
            }
            let reason = u8::try_from(reason)
                .ok()
                .and_then(HoleReason::from_tag)
                .ok_or_else(|| bad(format!("unknown hole reason {reason}")))?;
            RecordBody::Hole { count, reason }
        }
        _ => return Err(bad("neither an event nor a hole".into())),
    };
    Ok(LogRecord {
        position,
        incarnation,
        body,
    })
}

/// [`crate::durable::DurableLog::load_after`]; `after < i64::MAX`,
/// `limit > 0`.
pub(super) fn load_after(
    conn: &mut Conn,
    key: &SessionKey,
    after: u64,
    limit: usize,
) -> Result<Vec<LogRecord>, LogError> {
    let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = conn
        .client
        .query(
            &conn.statements.load_after,
            &[&key.tenant(), &key.session(), &to_sql(after), &limit_sql],
        )
        .map_err(backend)?;
    let mut out: Vec<LogRecord> = Vec::with_capacity(rows.len());
    for row in &rows {
        let record = decode_record(key, row)?;
        if let Some(last) = out.last() {
            if record.position != last.last_position() + 1 {
                return Err(LogError::Corrupt(format!(
                    "{key}: the record at {} follows one ending at {}",
                    record.position,
                    last.last_position()
                )));
            }
        }
        out.push(record);
    }
    Ok(out)
}

/// [`crate::durable::DurableLog::meta`].
pub(super) fn meta(conn: &mut Conn, key: &SessionKey) -> Result<Option<SessionMeta>, LogError> {
    let row = conn
        .client
        .query_opt(&conn.statements.meta, &[&key.tenant(), &key.session()])
        .map_err(backend)?;
    row.map(|row| decode_session(&row).map(|(_, _, meta)| meta))
        .transpose()
}

/// [`crate::durable::DurableLog::keep_alive`]: the lease in whole
/// milliseconds, at least one.
pub(super) fn keep_alive(conn: &mut Conn, store: u64, lease: Duration) -> Result<(), LogError> {
    let millis = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX).max(1);
    conn.client
        .execute(&conn.statements.keep_alive, &[&to_sql(store), &millis])
        .map_err(backend)?;
    Ok(())
}

/// [`crate::durable::DurableLog::store_alive`].
pub(super) fn store_alive(conn: &mut Conn, store: u64) -> Result<bool, LogError> {
    conn.client
        .query_one(&conn.statements.store_alive, &[&to_sql(store)])
        .map_err(backend)?
        .try_get(0)
        .map_err(backend)
}

/// [`crate::durable::DurableLog::sessions`]; `limit > 0`.
pub(super) fn sessions(
    conn: &mut Conn,
    tenant: &str,
    limit: usize,
    offset: usize,
) -> Result<Vec<SessionKey>, LogError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let offset = i64::try_from(offset).unwrap_or(i64::MAX);
    let rows = conn
        .client
        .query(&conn.statements.sessions, &[&tenant, &limit, &offset])
        .map_err(backend)?;
    rows.iter()
        .map(|row| {
            let session: &str = row.try_get(0).map_err(backend)?;
            SessionKey::new(tenant, session).map_err(|e| {
                LogError::Corrupt(format!(
                    "listed session {session:?} of tenant {tenant:?} is not a valid key: {e}"
                ))
            })
        })
        .collect()
}
