//! The stored forms: a session's meta (format byte, then postcard) and one
//! stream entry per record (module docs' field table), both ways.
//!
//! # Invariants
//!
//! * The stored structs are private mirrors of the public types, so the
//!   format does not change when a public type gains a field.
//! * Decoding never trusts its bytes: a meta or entry that does not decode,
//!   an unknown or repeated field, incarnation 0, a zero-length or
//!   overflowing hole, an unknown hole reason or holes out of order is
//!   [`LogError::Corrupt`], never a panic.

use ::redis::{Cmd, Value};
use serde::{Deserialize, Serialize};

use super::conn::{bulk, cmd};
use crate::cursor::Incarnation;
use crate::durable::stored::{append_tail, read_tail, LinksV1};
use crate::durable::{
    HoleReason, Life, Links, LogError, LogRecord, RecordBody, SessionMeta, StoredEvent,
};
use crate::key::SessionKey;

/// The meta layout this module writes and reads (its first byte).
pub(super) const FORMAT: u8 = 1;

// ---- stored forms -------------------------------------------------------
//
// Private mirrors of the public types, so that the stored format is spelled
// out here and does not change when a public type gains a field.

#[derive(Serialize, Deserialize)]
pub(super) struct MetaV1 {
    seq: u64,
    durable_tail: u64,
    archived_through: u64,
    last_revision: u64,
    event_count: u64,
    /// `(incarnation, first position)`.
    lives: Vec<(u64, u64)>,
    /// `(position, count)` of every hole not wholly archived, ascending.
    holes: Vec<(u64, u64)>,
}

pub(super) fn encode_meta(
    seq: u64,
    meta: &SessionMeta,
    holes: &[(u64, u64)],
) -> Result<Vec<u8>, LogError> {
    let stored = MetaV1 {
        seq,
        durable_tail: meta.durable_tail,
        archived_through: meta.archived_through,
        last_revision: meta.last_revision,
        event_count: meta.event_count,
        lives: meta
            .lives
            .iter()
            .map(|life| (life.incarnation.get(), life.first_position))
            .collect(),
        holes: holes.to_vec(),
    };
    postcard::to_extend(&stored, vec![FORMAT])
        .and_then(|bytes| append_tail(meta.closure, meta.open_turn, bytes))
        .map_err(|e| LogError::Backend(Box::new(e)))
}

/// A session's creation number, meta and unarchived holes, from a `GET`
/// reply; `None` if the key does not exist.
#[allow(clippy::type_complexity)]
pub(super) fn decode_meta(
    key: &SessionKey,
    reply: Value,
) -> Result<Option<(u64, SessionMeta, Vec<(u64, u64)>)>, LogError> {
    let Some(bytes) = bulk(reply, "GET")? else {
        return Ok(None);
    };
    let bad = |what: String| LogError::Corrupt(format!("{key}, meta: {what}"));
    let Some((&format, rest)) = bytes.split_first() else {
        return Err(bad("empty".into()));
    };
    if format != FORMAT {
        return Err(bad(format!(
            "format {format}; this version reads format {FORMAT}"
        )));
    }
    let (stored, trailing): (MetaV1, _) =
        postcard::take_from_bytes(rest).map_err(|e| bad(e.to_string()))?;
    let (closure, open_turn) = read_tail(trailing, stored.durable_tail).map_err(bad)?;
    if stored.archived_through > stored.durable_tail {
        return Err(bad(format!(
            "archived through {} beyond the tail {}",
            stored.archived_through, stored.durable_tail
        )));
    }
    let lives = stored
        .lives
        .iter()
        .map(|&(incarnation, first_position)| {
            Incarnation::from_raw(incarnation)
                .map(|incarnation| Life {
                    incarnation,
                    first_position,
                })
                .ok_or_else(|| bad("a life has incarnation 0".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut previous_end = 0u64;
    for &(position, count) in &stored.holes {
        let end = position.checked_add(count.wrapping_sub(1));
        match end {
            Some(end)
                if count > 0
                    && position > previous_end
                    && end <= stored.durable_tail
                    && end > stored.archived_through =>
            {
                previous_end = end;
            }
            _ => return Err(bad(format!("a bad hole ({position}, {count})"))),
        }
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
        stored.holes,
    )))
}

/// An `XADD` of one record at the id of its position.
pub(super) fn xadd(log: &str, record: &LogRecord) -> Result<Cmd, LogError> {
    let mut c = cmd("XADD");
    c.arg(log)
        .arg(format!("{}-0", record.position))
        .arg("i")
        .arg(record.incarnation.get());
    match &record.body {
        RecordBody::Event(event) => {
            c.arg("r")
                .arg(event.revision)
                .arg("t")
                .arg(event.timestamp_nanos);
            if let Some(links) = LinksV1::of(&event.links) {
                let bytes =
                    postcard::to_stdvec(&links).map_err(|e| LogError::Backend(Box::new(e)))?;
                c.arg("l").arg(bytes);
            }
            c.arg("d").arg(event.payload.as_slice());
        }
        RecordBody::Hole { count, reason } => {
            c.arg("n").arg(*count).arg("w").arg(reason.to_tag());
        }
    }
    Ok(c)
}

/// Decimal digits only (no sign, no spaces), as this module writes them.
pub(super) fn parse_u64(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// One stream entry (`[id, [field, value, …]]`) as a record, checked.
pub(super) fn decode_entry(key: &SessionKey, entry: Value) -> Result<LogRecord, LogError> {
    let bad = |what: String| LogError::Corrupt(format!("{key}, stream entry: {what}"));
    let Value::Array(parts) = entry else {
        return Err(bad("not an [id, fields] pair".into()));
    };
    let mut parts = parts.into_iter();
    let (Some(Value::BulkString(id)), Some(fields), None) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("not an [id, fields] pair".into()));
    };
    let position = match id.iter().position(|&b| b == b'-') {
        Some(dash) if &id[dash + 1..] == b"0" => parse_u64(&id[..dash]),
        _ => None,
    }
    .filter(|&p| p > 0)
    .ok_or_else(|| {
        bad(format!(
            "id {:?} is not <position>-0",
            String::from_utf8_lossy(&id)
        ))
    })?;
    let bad = |what: String| {
        LogError::Corrupt(format!(
            "{key}, stream entry at position {position}: {what}"
        ))
    };
    let fields = match fields {
        Value::Array(fields) if fields.len() % 2 == 0 => fields,
        _ => return Err(bad("fields are not name/value pairs".into())),
    };
    let mut values: [Option<Vec<u8>>; 8] = Default::default();
    const NAMES: [&[u8]; 8] = [b"i", b"r", b"t", b"l", b"d", b"n", b"w", b""];
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        let (Value::BulkString(name), Value::BulkString(value)) = (name, value) else {
            return Err(bad("a field is not a string".into()));
        };
        let Some(slot) = NAMES[..7].iter().position(|n| *n == name.as_slice()) else {
            return Err(bad(format!(
                "unknown field {:?}",
                String::from_utf8_lossy(&name)
            )));
        };
        if values[slot].replace(value).is_some() {
            return Err(bad(format!(
                "field {:?} twice",
                String::from_utf8_lossy(&name)
            )));
        }
    }
    let [i, r, t, l, d, n, w, _] = values;
    let number = |value: Option<Vec<u8>>, name: &str| {
        value
            .as_deref()
            .and_then(parse_u64)
            .ok_or_else(|| bad(format!("field {name} missing or not a number")))
    };
    let incarnation =
        Incarnation::from_raw(number(i, "i")?).ok_or_else(|| bad("incarnation 0".into()))?;
    let body = if n.is_some() {
        if r.is_some() || t.is_some() || l.is_some() || d.is_some() {
            return Err(bad("a hole with event fields".into()));
        }
        let count = number(n, "n")?;
        if count == 0 {
            return Err(bad("a hole of zero positions".into()));
        }
        if position.checked_add(count - 1).is_none() {
            return Err(bad("a hole past the last position".into()));
        }
        let tag = number(w, "w")?;
        let reason = u8::try_from(tag)
            .ok()
            .and_then(HoleReason::from_tag)
            .ok_or_else(|| bad(format!("unknown hole reason {tag}")))?;
        RecordBody::Hole { count, reason }
    } else {
        if w.is_some() {
            return Err(bad("an event with a hole reason".into()));
        }
        let links = match l {
            None => Links::default(),
            Some(bytes) => {
                let (links, rest): (LinksV1<'_>, _) =
                    postcard::take_from_bytes(&bytes).map_err(|e| bad(format!("links: {e}")))?;
                if !rest.is_empty() {
                    return Err(bad("trailing bytes after the links".into()));
                }
                links
                    .into_links(key.tenant())
                    .ok_or_else(|| bad("the links' parent is not a valid session id".into()))?
            }
        };
        RecordBody::Event(StoredEvent {
            revision: number(r, "r")?,
            timestamp_nanos: number(t, "t")?,
            links,
            payload: d.ok_or_else(|| bad("an event without a payload field".into()))?,
        })
    };
    Ok(LogRecord {
        position,
        incarnation,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cursor::Incarnation;
    use crate::durable::{Life, SessionMeta};

    #[test]
    fn malformed_entries_are_corrupt_not_panics() {
        let key = SessionKey::new("t", "s").expect("key");
        let s = |b: &[u8]| Value::BulkString(b.to_vec());
        let entry = |id: &[u8], fields: Vec<Value>| Value::Array(vec![s(id), Value::Array(fields)]);
        let good = entry(
            b"3-0",
            vec![s(b"i"), s(b"1"), s(b"n"), s(b"2"), s(b"w"), s(b"1")],
        );
        assert!(decode_entry(&key, good).is_ok());
        let cases = [
            entry(
                b"3-1",
                vec![s(b"i"), s(b"1"), s(b"n"), s(b"2"), s(b"w"), s(b"1")],
            ),
            entry(
                b"0-0",
                vec![s(b"i"), s(b"1"), s(b"n"), s(b"2"), s(b"w"), s(b"1")],
            ),
            entry(b"x-0", vec![]),
            entry(
                b"3-0",
                vec![s(b"i"), s(b"0"), s(b"n"), s(b"2"), s(b"w"), s(b"1")],
            ),
            entry(
                b"3-0",
                vec![s(b"i"), s(b"1"), s(b"n"), s(b"0"), s(b"w"), s(b"1")],
            ),
            entry(
                b"3-0",
                vec![s(b"i"), s(b"1"), s(b"n"), s(b"2"), s(b"w"), s(b"9")],
            ),
            entry(b"3-0", vec![s(b"i"), s(b"1"), s(b"n"), s(b"2")]),
            entry(
                b"3-0",
                vec![s(b"i"), s(b"1"), s(b"r"), s(b"1"), s(b"t"), s(b"1")],
            ),
            entry(
                b"3-0",
                vec![
                    s(b"i"),
                    s(b"1"),
                    s(b"r"),
                    s(b"1"),
                    s(b"t"),
                    s(b"1"),
                    s(b"d"),
                    s(b""),
                    s(b"l"),
                    s(b"\xff\xff"),
                ],
            ),
            entry(
                b"3-0",
                vec![
                    s(b"i"),
                    s(b"+1"),
                    s(b"r"),
                    s(b"1"),
                    s(b"t"),
                    s(b"1"),
                    s(b"d"),
                    s(b""),
                ],
            ),
            entry(b"3-0", vec![s(b"i"), s(b"1"), s(b"i"), s(b"1")]),
            entry(b"3-0", vec![s(b"q"), s(b"1")]),
            entry(b"3-0", vec![s(b"i")]),
            entry(
                b"18446744073709551615-0",
                vec![s(b"i"), s(b"1"), s(b"n"), s(b"2"), s(b"w"), s(b"1")],
            ),
            Value::Int(3),
            Value::Array(vec![s(b"3-0")]),
        ];
        for case in cases {
            let debug = format!("{case:?}");
            assert!(
                matches!(decode_entry(&key, case), Err(LogError::Corrupt(_))),
                "{debug}"
            );
        }
    }

    #[test]
    fn malformed_meta_is_corrupt_not_a_panic() {
        let key = SessionKey::new("t", "s").expect("key");
        let meta = SessionMeta {
            durable_tail: 9,
            archived_through: 2,
            last_revision: 4,
            lives: vec![Life {
                incarnation: Incarnation::from_raw(7).expect("non-zero"),
                first_position: 1,
            }],
            event_count: 3,
            closure: None,
            open_turn: None,
        };
        let bytes = encode_meta(5, &meta, &[(3, 4)]).expect("encode");
        let decoded = decode_meta(&key, Value::BulkString(bytes.clone())).expect("decode");
        assert_eq!(decoded, Some((5, meta.clone(), vec![(3, 4)])));
        for cut in 0..bytes.len() {
            let result = decode_meta(&key, Value::BulkString(bytes[..cut].to_vec()));
            assert!(matches!(result, Err(LogError::Corrupt(_))), "cut at {cut}");
        }
        let mut other = bytes.clone();
        other[0] = 2;
        assert!(matches!(
            decode_meta(&key, Value::BulkString(other)),
            Err(LogError::Corrupt(_))
        ));
        // A closed meta: the open one's bytes, then the closure's; every
        // cut inside the closure, a closure off the tail, or an unknown
        // reason is corrupt.
        let closed = SessionMeta {
            closure: Some(crate::Closure {
                reason: crate::CloseReason::Cancelled,
                last: 9,
            }),
            ..meta.clone()
        };
        let closed_bytes = encode_meta(5, &closed, &[(3, 4)]).expect("encode");
        assert_eq!(closed_bytes[..bytes.len()], bytes[..]);
        let decoded = decode_meta(&key, Value::BulkString(closed_bytes.clone())).expect("decode");
        assert_eq!(decoded, Some((5, closed.clone(), vec![(3, 4)])));
        for cut in bytes.len() + 1..closed_bytes.len() {
            let result = decode_meta(&key, Value::BulkString(closed_bytes[..cut].to_vec()));
            assert!(matches!(result, Err(LogError::Corrupt(_))), "cut at {cut}");
        }
        let off_tail = SessionMeta {
            closure: Some(crate::Closure {
                reason: crate::CloseReason::Done,
                last: 8,
            }),
            ..meta.clone()
        };
        let mut unknown = closed_bytes.clone();
        unknown[bytes.len()] = 9;
        let mut trailing = closed_bytes.clone();
        trailing.push(0);
        for bad in [
            encode_meta(5, &off_tail, &[(3, 4)]).expect("encode"),
            unknown,
            trailing,
        ] {
            assert!(matches!(
                decode_meta(&key, Value::BulkString(bad)),
                Err(LogError::Corrupt(_))
            ));
        }
        // An open turn: the open meta's bytes, then the turn's store; a
        // closure wins over it (they exclude each other in a valid meta).
        let driven = SessionMeta {
            open_turn: Some(u64::MAX - 3),
            ..meta.clone()
        };
        let driven_bytes = encode_meta(5, &driven, &[(3, 4)]).expect("encode");
        assert_eq!(driven_bytes[..bytes.len()], bytes[..]);
        let decoded = decode_meta(&key, Value::BulkString(driven_bytes.clone())).expect("decode");
        assert_eq!(decoded, Some((5, driven.clone(), vec![(3, 4)])));
        for cut in bytes.len() + 1..driven_bytes.len() {
            let result = decode_meta(&key, Value::BulkString(driven_bytes[..cut].to_vec()));
            assert!(matches!(result, Err(LogError::Corrupt(_))), "cut at {cut}");
        }
        let both = SessionMeta {
            open_turn: Some(7),
            ..closed.clone()
        };
        let decoded = decode_meta(
            &key,
            Value::BulkString(encode_meta(5, &both, &[(3, 4)]).expect("encode")),
        )
        .expect("decode");
        assert_eq!(decoded, Some((5, closed.clone(), vec![(3, 4)])));
        for holes in [[(3, 0)], [(1, 2)], [(8, 3)], [(u64::MAX, 2)]] {
            let bytes = encode_meta(5, &meta, &holes).expect("encode");
            assert!(
                matches!(
                    decode_meta(&key, Value::BulkString(bytes)),
                    Err(LogError::Corrupt(_))
                ),
                "{holes:?}"
            );
        }
    }
}
