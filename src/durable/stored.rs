//! The stored forms shared by the backends that serialise records (redb,
//! Redis), so that both spell them one way: an event's causal [`Links`],
//! and the tail of a session's meta: its [`Closure`], or the store whose
//! turn drives its newest life.
//!
//! A private mirror of the public type: the stored format is written out
//! here and does not change when `Links` gains a field. Postcard, borrowed
//! strings; `None` for an event with no link at all (one byte in the
//! record, the common case).

use serde::{Deserialize, Serialize};

use super::{EventRef, Links};
#[cfg(any(feature = "redb", feature = "redis"))]
use crate::closure::{CloseReason, Closure};
use crate::key::SessionKey;

#[derive(Serialize, Deserialize)]
pub(super) struct LinksV1<'a> {
    #[serde(borrow)]
    parent: Option<(&'a str, u64)>,
    #[serde(borrow)]
    correlation: Option<&'a str>,
    #[serde(borrow)]
    kind: Option<&'a str>,
    #[serde(borrow)]
    lane: Option<&'a str>,
    requires_ack: bool,
}

impl<'a> LinksV1<'a> {
    /// The stored form of `links`; `None` when there is no link at all.
    pub(super) fn of(links: &'a Links) -> Option<Self> {
        (!links.is_empty()).then(|| Self {
            parent: links.parent.as_ref().map(|p| (p.key.session(), p.position)),
            correlation: links.correlation.as_deref(),
            kind: links.kind.as_deref(),
            lane: links.lane.as_deref(),
            requires_ack: links.requires_ack,
        })
    }

    /// The links it stands for, on an event of `tenant`; `None` when the
    /// stored parent is not a valid session id (the bytes are damaged).
    pub(super) fn into_links(self, tenant: &str) -> Option<Links> {
        let parent = match self.parent {
            Some((session, position)) => Some(EventRef {
                key: SessionKey::new(tenant, session).ok()?,
                position,
            }),
            None => None,
        };
        Some(Links {
            parent,
            correlation: self.correlation.map(Into::into),
            kind: self.kind.map(Into::into),
            lane: self.lane.map(Into::into),
            requires_ack: self.requires_ack,
        })
    }
}

/// How a session's newest life ends or is driven, as the serialising
/// backends store it after their meta's fields: nothing while the life is
/// open with no turn (so a meta written before closures existed reads as
/// open, and an open session's meta is byte-for-byte what it was), its
/// closure once closed, or the id of the store whose turn drives it. The
/// two exclude each other (a closure ends the turn), so one form holds
/// either: a reason tag of 1 to 4 is a closure at `value` (its last
/// position), the tag [`OPEN_TURN`] a turn of store `value`. A binary from
/// before open turns reads that tag as an unknown reason and refuses the
/// meta as damaged instead of reading the session as open.
#[cfg(any(feature = "redb", feature = "redis"))]
#[derive(Serialize, Deserialize)]
struct TailV1 {
    tag: u8,
    value: u64,
}

#[cfg(any(feature = "redb", feature = "redis"))]
/// The tag of an open turn (no [`CloseReason`] has it).
const OPEN_TURN: u8 = 0;

#[cfg(any(feature = "redb", feature = "redis"))]
/// Appends the meta's tail (its closure, else its open turn) to an encoded
/// meta.
pub(super) fn append_tail(
    closure: Option<Closure>,
    open_turn: Option<u64>,
    meta: Vec<u8>,
) -> Result<Vec<u8>, postcard::Error> {
    let tail = match (closure, open_turn) {
        (Some(closure), _) => TailV1 {
            tag: closure.reason.to_tag(),
            value: closure.last,
        },
        (None, Some(store)) => TailV1 {
            tag: OPEN_TURN,
            value: store,
        },
        (None, None) => return Ok(meta),
    };
    postcard::to_extend(&tail, meta)
}

#[cfg(any(feature = "redb", feature = "redis"))]
/// The closure and open turn stored after a meta's fields (`rest`: the
/// bytes after them), the closure checked against the meta's durable
/// tail; an error says what is wrong with the bytes.
pub(super) fn read_tail(
    rest: &[u8],
    durable_tail: u64,
) -> Result<(Option<Closure>, Option<u64>), String> {
    if rest.is_empty() {
        return Ok((None, None));
    }
    let (stored, trailing): (TailV1, _) =
        postcard::take_from_bytes(rest).map_err(|e| format!("closure: {e}"))?;
    if !trailing.is_empty() {
        return Err("trailing bytes after the closure".into());
    }
    if stored.tag == OPEN_TURN {
        return Ok((None, Some(stored.value)));
    }
    let reason = CloseReason::from_tag(stored.tag)
        .ok_or_else(|| format!("closure: unknown reason {}", stored.tag))?;
    if stored.value != durable_tail {
        return Err(format!(
            "closure at {} but the durable tail is {durable_tail}",
            stored.value
        ));
    }
    Ok((
        Some(Closure {
            reason,
            last: stored.value,
        }),
        None,
    ))
}
