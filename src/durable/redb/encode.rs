//! The stored forms: a session's meta row and one record value (postcard
//! header, then the raw payload; a large event's payload in chunks), both
//! ways.
//!
//! # Invariants
//!
//! * The stored structs are private mirrors of the public types, so the
//!   file format does not change when a public type gains a field.
//!   Variants are only ever added at the end ([`BodyV1::LargeEvent`] came
//!   with format 2).
//! * A record's value is its whole encoding ([`encode_record`]) unless its
//!   payload is over [`CHUNK_BYTES`] ([`is_large`]): then the value is the
//!   header alone and the payload is in chunks 0, 1, … of at most
//!   [`CHUNK_BYTES`], every one full but the last.
//! * Decoding never trusts its bytes: a value that does not decode,
//!   incarnation 0, an unknown hole reason, a zero-length hole, an
//!   overflowing position, or chunks that do not add up to their event's
//!   length is [`LogError::Corrupt`], never a panic.

use ::redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::{backend, corrupt};
use crate::cursor::Incarnation;
use crate::durable::stored::{append_tail, read_tail, LinksV1};
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
    /// An event whose payload is longer than [`CHUNK_BYTES`]: the value
    /// holds no payload bytes; they are in the chunks table, in order, at
    /// most [`CHUNK_BYTES`] a chunk, `len` in all. Format 2 on.
    LargeEvent {
        revision: u64,
        timestamp_nanos: u64,
        #[serde(borrow)]
        links: Option<LinksV1<'a>>,
        len: u64,
    },
}

impl BodyV1<'_> {
    /// Whether it is an event (one position, a payload), not a hole.
    pub(super) fn is_event(&self) -> bool {
        matches!(self, BodyV1::Event { .. } | BodyV1::LargeEvent { .. })
    }
}

/// The most payload bytes one value holds; a longer payload is chunks of
/// this size. redb keeps a value whole in one leaf page and sizes pages in
/// powers of two, so a 1 MiB payload as one value takes a 2 MiB page
/// (twice the bytes written and `fsync`ed); a chunk is a 256 KiB page less
/// room for its key (two ids of at most 512 bytes) and the page's header.
/// Measured once with redb 4.6 alone (a scratch program, not kept; 200
/// durable commits of 1 MiB each): 358 commits a second and a 520 MiB
/// file as one value, 565 a second and 290 MiB in these chunks. The test
/// `a_large_payload_takes_about_its_own_size_in_the_file` keeps the file
/// size honest.
pub(super) const CHUNK_BYTES: usize = 256 * 1024 - 4 * 1024;

/// `(tenant, session, position, chunk)`: where a large event's payload is.
pub(super) type ChunkKey = (&'static str, &'static str, u64, u32);

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
        .and_then(|bytes| append_tail(meta.closure, meta.open_turn, bytes))
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
    let (closure, open_turn) = read_tail(rest, stored.durable_tail).map_err(bad)?;
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
            open_turn,
        },
    )))
}

/// Writes `record` whole into `buf` (cleared first, reused across records
/// so a batch allocates once): the header, then an event's payload. The
/// records table stores this for every record but a large event
/// ([`is_large`]); a journal frame stores it for every record.
pub(super) fn encode_record(record: &LogRecord, buf: &mut Vec<u8>) -> Result<(), LogError> {
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
    encode_header(record, body, buf)?;
    if let RecordBody::Event(event) = &record.body {
        buf.extend_from_slice(&event.payload);
    }
    Ok(())
}

/// The event of `record` if the records table keeps its payload in chunks.
pub(super) fn is_large(record: &LogRecord) -> Option<&StoredEvent> {
    match &record.body {
        RecordBody::Event(event) if event.payload.len() > CHUNK_BYTES => Some(event),
        _ => None,
    }
}

/// Writes a large event's value into `buf`: its header alone, the payload
/// going to the chunks table.
pub(super) fn encode_large_header(
    record: &LogRecord,
    event: &StoredEvent,
    buf: &mut Vec<u8>,
) -> Result<(), LogError> {
    let body = BodyV1::LargeEvent {
        revision: event.revision,
        timestamp_nanos: event.timestamp_nanos,
        links: LinksV1::of(&event.links),
        len: event.payload.len() as u64,
    };
    encode_header(record, body, buf)
}

fn encode_header(record: &LogRecord, body: BodyV1<'_>, buf: &mut Vec<u8>) -> Result<(), LogError> {
    buf.clear();
    let header = RecordHeaderV1 {
        incarnation: record.incarnation.get(),
        body,
    };
    let taken = std::mem::take(buf);
    *buf = postcard::to_extend(&header, taken).map_err(|e| LogError::Backend(Box::new(e)))?;
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
        BodyV1::Event { .. } | BodyV1::LargeEvent { .. } => Ok(position),
        BodyV1::Hole { count: 0, .. } => Err(corrupt(key, position, "a hole of zero positions")),
        BodyV1::Hole { count, .. } => position
            .checked_add(count - 1)
            .ok_or_else(|| corrupt(key, position, "a hole past the last position")),
    }
}

/// Decodes a record written whole by [`encode_record`] (a journal frame's):
/// a large event's header here is damage.
pub(super) fn decode_record(
    key: &SessionKey,
    position: u64,
    bytes: &[u8],
) -> Result<LogRecord, LogError> {
    decode_with(key, position, bytes, |_| {
        Err(corrupt(
            key,
            position,
            "a large event's header outside the records table",
        ))
    })
}

/// Decodes a value of the records table, reading a large event's payload
/// from `chunks`.
pub(super) fn decode_stored_record(
    key: &SessionKey,
    position: u64,
    bytes: &[u8],
    chunks: &impl ReadableTable<ChunkKey, &'static [u8]>,
) -> Result<LogRecord, LogError> {
    decode_with(key, position, bytes, |len| {
        read_chunks(chunks, key, position, len)
    })
}

/// A large event's payload, checked: its chunks number from 0 without a
/// break, none is empty or over [`CHUNK_BYTES`], and they add up to `len`.
fn read_chunks(
    chunks: &impl ReadableTable<ChunkKey, &'static [u8]>,
    key: &SessionKey,
    position: u64,
    len: u64,
) -> Result<Vec<u8>, LogError> {
    let len = usize::try_from(len).map_err(|_| corrupt(key, position, "a payload too large"))?;
    let (tenant, session) = (key.tenant(), key.session());
    let mut payload = Vec::new();
    payload
        .try_reserve_exact(len)
        .map_err(|_| corrupt(key, position, format!("a payload of {len} bytes")))?;
    for (expected, entry) in chunks
        .range((tenant, session, position, 0)..=(tenant, session, position, u32::MAX))
        .map_err(backend)?
        .enumerate()
    {
        let (k, v) = entry.map_err(backend)?;
        let chunk = v.value();
        if k.value().3 as usize != expected
            || chunk.is_empty()
            || chunk.len() > CHUNK_BYTES
            || chunk.len() > len - payload.len()
        {
            return Err(corrupt(
                key,
                position,
                format!("chunk {} of the payload", k.value().3),
            ));
        }
        payload.extend_from_slice(chunk);
    }
    if payload.len() != len {
        return Err(corrupt(
            key,
            position,
            format!(
                "the payload's chunks hold {} of its {len} bytes",
                payload.len()
            ),
        ));
    }
    Ok(payload)
}

fn decode_with(
    key: &SessionKey,
    position: u64,
    bytes: &[u8],
    large_payload: impl FnOnce(u64) -> Result<Vec<u8>, LogError>,
) -> Result<LogRecord, LogError> {
    let (header, rest) = decode_header(key, position, bytes)?;
    last_position(key, position, &header)?;
    let incarnation = Incarnation::from_raw(header.incarnation)
        .ok_or_else(|| corrupt(key, position, "incarnation 0"))?;
    let links_of = |links: Option<LinksV1<'_>>| match links {
        None => Ok(Links::default()),
        Some(links) => links
            .into_links(key.tenant())
            .ok_or_else(|| corrupt(key, position, "the links' parent is not a valid session id")),
    };
    let body = match header.body {
        BodyV1::Event {
            revision,
            timestamp_nanos,
            links,
        } => RecordBody::Event(StoredEvent {
            revision,
            timestamp_nanos,
            links: links_of(links)?,
            payload: rest.to_vec(),
        }),
        BodyV1::LargeEvent {
            revision,
            timestamp_nanos,
            links,
            len,
        } => {
            if !rest.is_empty() {
                return Err(corrupt(
                    key,
                    position,
                    "payload bytes after a large event's header",
                ));
            }
            RecordBody::Event(StoredEvent {
                revision,
                timestamp_nanos,
                links: links_of(links)?,
                payload: large_payload(len)?,
            })
        }
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
