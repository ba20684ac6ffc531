//! The stored form of an event's causal [`Links`], shared by the backends
//! that serialise records (redb, Redis) so that both spell them one way.
//!
//! A private mirror of the public type: the stored format is written out
//! here and does not change when `Links` gains a field. Postcard, borrowed
//! strings; `None` for an event with no link at all (one byte in the
//! record, the common case).

use serde::{Deserialize, Serialize};

use super::{EventRef, Links};
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
