//! The stored forms shared by the backends that serialise records (redb,
//! Redis), so that both spell them one way: an event's causal [`Links`],
//! and a session's [`Closure`].
//!
//! A private mirror of the public type: the stored format is written out
//! here and does not change when `Links` gains a field. Postcard, borrowed
//! strings; `None` for an event with no link at all (one byte in the
//! record, the common case).

use serde::{Deserialize, Serialize};

use super::{EventRef, Links};
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

/// A session's closure as the serialising backends store it: appended
/// after their meta's fields, only when the session is closed, so a meta
/// written before closures existed reads as open and an open session's
/// meta is byte-for-byte what it was.
#[derive(Serialize, Deserialize)]
struct ClosureV1 {
    reason: u8,
    last: u64,
}

/// Appends `closure` (if any) to an encoded meta.
pub(super) fn append_closure(
    closure: Option<Closure>,
    meta: Vec<u8>,
) -> Result<Vec<u8>, postcard::Error> {
    match closure {
        None => Ok(meta),
        Some(closure) => postcard::to_extend(
            &ClosureV1 {
                reason: closure.reason.to_tag(),
                last: closure.last,
            },
            meta,
        ),
    }
}

/// The closure stored after a meta's fields (`rest`: the bytes after
/// them), checked against the meta's durable tail; an error says what is
/// wrong with the bytes.
pub(super) fn read_closure(rest: &[u8], durable_tail: u64) -> Result<Option<Closure>, String> {
    if rest.is_empty() {
        return Ok(None);
    }
    let (stored, trailing): (ClosureV1, _) =
        postcard::take_from_bytes(rest).map_err(|e| format!("closure: {e}"))?;
    if !trailing.is_empty() {
        return Err("trailing bytes after the closure".into());
    }
    let reason = CloseReason::from_tag(stored.reason)
        .ok_or_else(|| format!("closure: unknown reason {}", stored.reason))?;
    if stored.last != durable_tail {
        return Err(format!(
            "closure at {} but the durable tail is {durable_tail}",
            stored.last
        ));
    }
    Ok(Some(Closure {
        reason,
        last: stored.last,
    }))
}
