//! The stored forms: a session's meta row and one record value (postcard
//! header, then the raw payload), both ways.
//!
//! # Invariants
//!
//! * The stored structs are private mirrors of the public types, so the
//!   file format does not change when a public type gains a field.
//! * Decoding never trusts its bytes: a value that does not decode,
//!   incarnation 0, an unknown hole reason, a zero-length hole or an
//!   overflowing position is [`LogError::Corrupt`], never a panic.

use ::redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::{backend, corrupt};
use crate::cursor::Incarnation;
use crate::durable::stored::{append_closure, read_closure, LinksV1};
use crate::durable::{
    HoleReason, Life, Links, LogError, LogRecord, RecordBody, SessionMeta, StoredEvent,
};
use crate::key::SessionKey;

// ---- stored forms -------------------------------------------------------
//
// Private mirrors of the public types, so that the file format is spelled
// out here and does not change when a public type gains a field. postcard
// writes integers as varints: small numbers cost a byte or two.

#[derive(Serialize, Deserialize)]
struct MetaV1 {
    seq: u64,
    durable_tail: u64,
    archived_through: u64,
    last_revision: u64,
    event_count: u64,
    lives: Vec<LifeV1>,
}

#[derive(Serialize, Deserialize)]
struct LifeV1 {
    incarnation: u64,
    first_position: u64,
}

/// A record's value starts with this; an event's payload follows it raw.
#[derive(Serialize, Deserialize)]
pub(super) struct RecordHeaderV1<'a> {
    incarnation: u64,
    #[serde(borrow)]
    pub(super) body: BodyV1<'a>,
}

#[derive(Serialize, Deserialize)]
pub(super) enum BodyV1<'a> {
    Event {
        revision: u64,
        timestamp_nanos: u64,
        /// `None` for no links at all (one byte, the common case).
        #[serde(borrow)]
        links: Option<LinksV1<'a>>,
    },
    Hole {
        count: u64,
        reason: u8,
    },
}

pub(super) fn encode_meta(seq: u64, meta: &SessionMeta) -> Result<Vec<u8>, LogError> {
    let stored = MetaV1 {
        seq,
        durable_tail: meta.durable_tail,
        archived_through: meta.archived_through,
        last_revision: meta.last_revision,
        event_count: meta.event_count,
        lives: meta
            .lives
            .iter()
            .map(|life| LifeV1 {
                incarnation: life.incarnation.get(),
                first_position: life.first_position,
            })
            .collect(),
    };
    postcard::to_stdvec(&stored)
        .and_then(|bytes| append_closure(meta.closure, bytes))
        .map_err(|e| LogError::Backend(Box::new(e)))
}

/// Reads a session's meta row: its creation number and meta.
pub(super) fn read_meta(
    metas: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    key: &SessionKey,
) -> Result<Option<(u64, SessionMeta)>, LogError> {
    let Some(guard) = metas.get((key.tenant(), key.session())).map_err(backend)? else {
        return Ok(None);
    };
    let bad = |what: String| LogError::Corrupt(format!("{key}, meta: {what}"));
    let (stored, rest): (MetaV1, _) =
        postcard::take_from_bytes(guard.value()).map_err(|e| bad(e.to_string()))?;
    let closure = read_closure(rest, stored.durable_tail).map_err(bad)?;
    let lives = stored
        .lives
        .iter()
        .map(|life| {
            Incarnation::from_raw(life.incarnation)
                .map(|incarnation| Life {
                    incarnation,
                    first_position: life.first_position,
                })
                .ok_or_else(|| bad("a life has incarnation 0".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if stored.archived_through > stored.durable_tail {
        return Err(bad(format!(
            "archived through {} beyond the tail {}",
            stored.archived_through, stored.durable_tail
        )));
    }
    Ok(Some((
        stored.seq,
        SessionMeta {
            durable_tail: stored.durable_tail,
            archived_through: stored.archived_through,
            last_revision: stored.last_revision,
            lives,
            event_count: stored.event_count,
            closure,
        },
    )))
}

/// Writes `record`'s value into `buf` (cleared first, reused across
/// records so a batch allocates once).
pub(super) fn encode_record(record: &LogRecord, buf: &mut Vec<u8>) -> Result<(), LogError> {
    buf.clear();
    let body = match &record.body {
        RecordBody::Event(event) => BodyV1::Event {
            revision: event.revision,
            timestamp_nanos: event.timestamp_nanos,
            links: LinksV1::of(&event.links),
        },
        RecordBody::Hole { count, reason } => BodyV1::Hole {
            count: *count,
            reason: reason.to_tag(),
        },
    };
    let header = RecordHeaderV1 {
        incarnation: record.incarnation.get(),
        body,
    };
    let taken = std::mem::take(buf);
    *buf = postcard::to_extend(&header, taken).map_err(|e| LogError::Backend(Box::new(e)))?;
    if let RecordBody::Event(event) = &record.body {
        buf.extend_from_slice(&event.payload);
    }
    Ok(())
}

/// Decodes a record's header; the rest is the payload (empty for a hole).
pub(super) fn decode_header<'a>(
    key: &SessionKey,
    position: u64,
    bytes: &'a [u8],
) -> Result<(RecordHeaderV1<'a>, &'a [u8]), LogError> {
    postcard::take_from_bytes(bytes).map_err(|e| corrupt(key, position, e))
}

/// The last position a stored record covers, checked: the file may say
/// anything.
pub(super) fn last_position(
    key: &SessionKey,
    position: u64,
    header: &RecordHeaderV1<'_>,
) -> Result<u64, LogError> {
    match header.body {
        BodyV1::Event { .. } => Ok(position),
        BodyV1::Hole { count: 0, .. } => Err(corrupt(key, position, "a hole of zero positions")),
        BodyV1::Hole { count, .. } => position
            .checked_add(count - 1)
            .ok_or_else(|| corrupt(key, position, "a hole past the last position")),
    }
}

pub(super) fn decode_record(
    key: &SessionKey,
    position: u64,
    bytes: &[u8],
) -> Result<LogRecord, LogError> {
    let (header, rest) = decode_header(key, position, bytes)?;
    last_position(key, position, &header)?;
    let incarnation = Incarnation::from_raw(header.incarnation)
        .ok_or_else(|| corrupt(key, position, "incarnation 0"))?;
    let body = match header.body {
        BodyV1::Event {
            revision,
            timestamp_nanos,
            links,
        } => RecordBody::Event(StoredEvent {
            revision,
            timestamp_nanos,
            links: match links {
                None => Links::default(),
                Some(links) => links.into_links(key.tenant()).ok_or_else(|| {
                    corrupt(key, position, "the links' parent is not a valid session id")
                })?,
            },
            payload: rest.to_vec(),
        }),
        BodyV1::Hole { count, reason } => {
            if !rest.is_empty() {
                return Err(corrupt(key, position, "trailing bytes after a hole"));
            }
            let reason = HoleReason::from_tag(reason)
                .ok_or_else(|| corrupt(key, position, format!("unknown hole reason {reason}")))?;
            RecordBody::Hole { count, reason }
        }
    };
    Ok(LogRecord {
        position,
        incarnation,
        body,
    })
}
