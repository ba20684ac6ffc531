//! The causal index: its schema in a backend's ordered key-value space
//! ([`IndexStore`](crate::durable::IndexStore)), how one commit's records
//! update it, and the reads the queries are made of.
//!
//! # Schema
//!
//! Keys are tuples encoded so that byte order is tuple order: a one-byte
//! table tag, then each part — strings with `0x00` escaped as `0x00 0xFF`
//! and ended by `0x00 0x00` (so no string's encoding is a prefix of
//! another's), numbers as big-endian bytes. `t` is the tenant, `s` a
//! session id, `p` a position.
//!
//! | table | key | value |
//! |---|---|---|
//! | node | `N t s p` | the event's links, depth, timestamp and index number ([`Node`]) |
//! | children | `C t s p s' p'` | — (`s' p'` has parent `s p`) |
//! | correlation | `R t id timestamp n` | `s p` |
//! | kind | `K t kind depth n` | `s p` |
//! | open | `O t timestamp n` | `s p` (requires an ack, none recorded yet) |
//! | acked | `A t s p` | — |
//! | state | `S` | the last index number and the number of orphans |
//!
//! `n` is the event's **index number**: events with links are numbered in
//! the order the index took them, log-wide, from 1. It orders a kind's
//! events at one depth, breaks timestamp ties in a correlation chain and
//! among open acknowledgements (both oldest first by append time, since
//! the persister writes sessions in any order), and is what a query's
//! `as_of` counts.
//!
//! Only events **with** links get a node: the common event costs the index
//! nothing but, while orphans exist, one children scan.
//!
//! # Depth, and parents that are not there yet
//!
//! Depth is the distance to the root along parents: an event without a
//! parent, or whose parent is an event without links, is at depth 0 or 1.
//! An event whose parent the log does not hold yet (another node has not
//! written it, it was never appended, or it was archived) is an **orphan**:
//! its depth is unknown, and so is every descendant's. The state counts
//! orphans; while any exist, every event the index takes first looks for
//! children waiting on it, and gives them (and their descendants, breadth
//! first) their depth. An event whose depth is unknown is not found by
//! kind; every other query serves it.
//!
//! A cycle (parents that name later events, which nothing appended through
//! the store can produce) stays at unknown depth: the cascade only starts
//! from a known depth, and walks stop at an event they have seen.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::durable::{IndexRead, IndexWrite, LogError, RecordBody, SessionWrite};
use crate::key::SessionKey;
use crate::links::EventRef;

const NODE: u8 = b'N';
const CHILDREN: u8 = b'C';
const CORRELATION: u8 = b'R';
const KIND: u8 = b'K';
const OPEN: u8 = b'O';
const ACKED: u8 = b'A';
const STATE: u8 = b'S';

/// Whether `key` belongs to a table the queries scan by range (children,
/// correlation, kind, open acknowledgements); the others (nodes,
/// acknowledgements, the state) are only read by their exact key, so a
/// backend whose ordered structure costs more than a hash (Redis) may keep
/// them out of it.
pub fn is_scanned(key: &[u8]) -> bool {
    matches!(key.first(), Some(&(CHILDREN | CORRELATION | KIND | OPEN)))
}

/// The key of the index's state, for backends that read it ahead.
pub const STATE_KEY: &[u8] = &[STATE];

/// How many entries one scan of the cascade or a query reads at a time.
const SCAN_CHUNK: usize = 256;

/// Builds tuple keys (module docs).
#[derive(Default)]
pub(crate) struct KeyBuf(Vec<u8>);

impl KeyBuf {
    fn table(tag: u8) -> Self {
        let mut key = Vec::with_capacity(64);
        key.push(tag);
        Self(key)
    }

    fn str(mut self, part: &str) -> Self {
        for &byte in part.as_bytes() {
            self.0.push(byte);
            if byte == 0 {
                self.0.push(0xFF);
            }
        }
        self.0.extend_from_slice(&[0, 0]);
        self
    }

    fn u64(mut self, part: u64) -> Self {
        self.0.extend_from_slice(&part.to_be_bytes());
        self
    }

    fn u32(mut self, part: u32) -> Self {
        self.0.extend_from_slice(&part.to_be_bytes());
        self
    }

    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Reads back what [`KeyBuf`] wrote, part by part.
struct KeyReader<'a>(&'a [u8]);

impl<'a> KeyReader<'a> {
    fn corrupt(what: &str) -> LogError {
        LogError::Corrupt(format!("causal index key: {what}"))
    }

    fn str(&mut self) -> Result<String, LogError> {
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            match (self.0.get(i), self.0.get(i + 1)) {
                (Some(0), Some(0)) => break,
                (Some(0), Some(0xFF)) => {
                    out.push(0);
                    i += 2;
                }
                (Some(&byte), _) if byte != 0 => {
                    out.push(byte);
                    i += 1;
                }
                _ => return Err(Self::corrupt("an unterminated string")),
            }
        }
        self.0 = &self.0[i + 2..];
        String::from_utf8(out).map_err(|_| Self::corrupt("a string that is not UTF-8"))
    }

    fn u64(&mut self) -> Result<u64, LogError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<8>()
            .ok_or_else(|| Self::corrupt("a short number"))?;
        self.0 = rest;
        Ok(u64::from_be_bytes(*head))
    }

    fn skip(mut self, bytes: usize) -> Result<Self, LogError> {
        self.0 = self
            .0
            .get(bytes..)
            .ok_or_else(|| Self::corrupt("a short key"))?;
        Ok(self)
    }
}

/// What the index knows of one event with links. Strings are borrowed
/// when the index writes a node (from the record) and owned when it reads
/// one back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Node<'a> {
    /// The parent's session id (same tenant) and position. First, with the
    /// depth: [`read_head`] decodes only these two.
    pub(crate) parent: Option<(Cow<'a, str>, u64)>,
    /// Distance to the root; `None` while an ancestor is missing.
    pub(crate) depth: Option<u32>,
    pub(crate) kind: Option<Cow<'a, str>>,
    pub(crate) correlation: Option<Cow<'a, str>>,
    pub(crate) lane: Option<Cow<'a, str>>,
    pub(crate) requires_ack: bool,
    pub(crate) timestamp_nanos: u64,
    /// The index number (module docs).
    pub(crate) number: u64,
}

/// The index's counters.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct State {
    /// The last index number handed out.
    pub(crate) number: u64,
    /// Events indexed while their parent was not in the log.
    pub(crate) orphans: u64,
}

fn encode<V: Serialize>(value: &V) -> Result<Vec<u8>, LogError> {
    postcard::to_stdvec(value).map_err(|e| LogError::Corrupt(format!("causal index value: {e}")))
}

fn decode<'a, V: Deserialize<'a>>(bytes: &'a [u8]) -> Result<V, LogError> {
    postcard::from_bytes(bytes).map_err(|e| LogError::Corrupt(format!("causal index value: {e}")))
}

fn node_key(tenant: &str, session: &str, position: u64) -> KeyBuf {
    KeyBuf::table(NODE).str(tenant).str(session).u64(position)
}

fn children_prefix(tenant: &str, session: &str, position: u64) -> KeyBuf {
    KeyBuf::table(CHILDREN)
        .str(tenant)
        .str(session)
        .u64(position)
}

fn acked_key(tenant: &str, session: &str, position: u64) -> KeyBuf {
    KeyBuf::table(ACKED).str(tenant).str(session).u64(position)
}

fn open_key(tenant: &str, timestamp_nanos: u64, number: u64) -> KeyBuf {
    KeyBuf::table(OPEN)
        .str(tenant)
        .u64(timestamp_nanos)
        .u64(number)
}

fn kind_key(tenant: &str, kind: &str, depth: u32, number: u64) -> KeyBuf {
    KeyBuf::table(KIND)
        .str(tenant)
        .str(kind)
        .u32(depth)
        .u64(number)
}

pub(crate) fn read_state(kv: &mut dyn IndexRead) -> Result<State, LogError> {
    match kv.get(STATE_KEY)? {
        Some(bytes) => decode(&bytes),
        None => Ok(State::default()),
    }
}

pub(crate) fn read_node(
    kv: &mut dyn IndexRead,
    tenant: &str,
    session: &str,
    position: u64,
) -> Result<Option<Node<'static>>, LogError> {
    match kv.get(node_key(tenant, session, position).bytes())? {
        Some(bytes) => decode(&bytes).map(Some),
        None => Ok(None),
    }
}

/// A node's depth only (`None`: no node), decoded without allocating: the
/// index reads a parent's depth for every event with a parent.
fn read_depth(
    kv: &mut dyn IndexRead,
    tenant: &str,
    session: &str,
    position: u64,
) -> Result<Option<Option<u32>>, LogError> {
    let Some(bytes) = kv.get(node_key(tenant, session, position).bytes())? else {
        return Ok(None);
    };
    type Head<'b> = (Option<(&'b str, u64)>, Option<u32>);
    let ((_, depth), _): (Head<'_>, _) = postcard::take_from_bytes(&bytes)
        .map_err(|e| LogError::Corrupt(format!("causal index value: {e}")))?;
    Ok(Some(depth))
}

/// A reference stored as a value (`s p`).
fn encode_ref(session: &str, position: u64) -> Result<Vec<u8>, LogError> {
    encode(&(session, position))
}

fn decode_ref(tenant: &str, bytes: &[u8]) -> Result<EventRef, LogError> {
    let (session, position): (&str, u64) = decode(bytes)?;
    let key = SessionKey::new(tenant, session)
        .map_err(|e| LogError::Corrupt(format!("causal index: a stored session id: {e}")))?;
    Ok(EventRef::new(key, position))
}

/// Updates the index for the records of one `append` (module docs). A
/// backend calls it inside the transaction that writes `writes`, after or
/// before writing the records (events of `writes` count as present either
/// way).
pub fn index_appended(
    kv: &mut dyn IndexWrite,
    writes: &[SessionWrite<'_>],
) -> Result<(), LogError> {
    let mut state = read_state(kv)?;
    let before = (state.number, state.orphans);
    for write in writes {
        let tenant = write.key.tenant();
        for record in write.records {
            let RecordBody::Event(event) = &record.body else {
                continue;
            };
            let position = record.position;
            let links = &event.links;
            if links.is_empty() {
                if state.orphans > 0 {
                    settle(kv, &mut state, tenant, write.key.session(), position, 0)?;
                }
                continue;
            }
            state.number += 1;
            let depth = match &links.parent {
                None => Some(0),
                Some(parent) => {
                    let (ps, pp) = (parent.key.session(), parent.position);
                    match read_depth(kv, tenant, ps, pp)? {
                        Some(depth) => depth.map(|d| d.saturating_add(1)),
                        None if in_writes(writes, &parent.key, pp)
                            || kv.is_event(&parent.key, pp)? =>
                        {
                            Some(1)
                        }
                        None => {
                            state.orphans += 1;
                            None
                        }
                    }
                }
            };
            let node = Node {
                parent: links
                    .parent
                    .as_ref()
                    .map(|p| (Cow::Borrowed(p.key.session()), p.position)),
                depth,
                kind: links.kind.as_deref().map(Cow::Borrowed),
                correlation: links.correlation.as_deref().map(Cow::Borrowed),
                lane: links.lane.as_deref().map(Cow::Borrowed),
                requires_ack: links.requires_ack,
                timestamp_nanos: event.timestamp_nanos,
                number: state.number,
            };
            let session = write.key.session();
            kv.put(node_key(tenant, session, position).bytes(), &encode(&node)?)?;
            let this = encode_ref(session, position)?;
            if let Some(parent) = &links.parent {
                let key = children_prefix(tenant, parent.key.session(), parent.position)
                    .str(session)
                    .u64(position);
                kv.put(key.bytes(), &[])?;
            }
            if let Some(id) = &links.correlation {
                let key = KeyBuf::table(CORRELATION)
                    .str(tenant)
                    .str(id)
                    .u64(event.timestamp_nanos)
                    .u64(state.number);
                kv.put(key.bytes(), &this)?;
            }
            if let (Some(kind), Some(depth)) = (&links.kind, depth) {
                kv.put(kind_key(tenant, kind, depth, state.number).bytes(), &this)?;
            }
            if links.requires_ack
                && kv
                    .get(acked_key(tenant, session, position).bytes())?
                    .is_none()
            {
                kv.put(
                    open_key(tenant, event.timestamp_nanos, state.number).bytes(),
                    &this,
                )?;
            }
            if let (true, Some(depth)) = (state.orphans > 0, depth) {
                settle(kv, &mut state, tenant, session, position, depth)?;
            }
        }
    }
    if (state.number, state.orphans) != before {
        kv.put(STATE_KEY, &encode(&state)?)?;
    }
    Ok(())
}

fn in_writes(writes: &[SessionWrite<'_>], key: &SessionKey, position: u64) -> bool {
    writes.iter().filter(|w| w.key == key).any(|w| {
        w.records
            .iter()
            .any(|r| r.position == position && matches!(r.body, RecordBody::Event(_)))
    })
}

/// `session@position` just got depth `depth`: children of it that were
/// waiting (orphans) get theirs, and so on down, breadth first.
fn settle(
    kv: &mut dyn IndexWrite,
    state: &mut State,
    tenant: &str,
    session: &str,
    position: u64,
    depth: u32,
) -> Result<(), LogError> {
    let mut queue = std::collections::VecDeque::from([(session.to_owned(), position, depth)]);
    let mut first = true;
    while let Some((session, position, depth)) = queue.pop_front() {
        for (child_session, child_position) in
            children(kv, tenant, &session, position, None, usize::MAX)?
        {
            let Some(mut node) = read_node(kv, tenant, &child_session, child_position)? else {
                continue;
            };
            if node.depth.is_some() {
                continue;
            }
            if first {
                // A waiting child of an event the index just took was an
                // orphan: its parent was not in the log until now.
                state.orphans = state.orphans.saturating_sub(1);
            }
            let child_depth = depth.saturating_add(1);
            node.depth = Some(child_depth);
            kv.put(
                node_key(tenant, &child_session, child_position).bytes(),
                &encode(&node)?,
            )?;
            if let Some(kind) = &node.kind {
                let key = kind_key(tenant, kind, child_depth, node.number);
                kv.put(key.bytes(), &encode_ref(&child_session, child_position)?)?;
            }
            queue.push_back((child_session, child_position, child_depth));
        }
        first = false;
    }
    Ok(())
}

/// The children of `session@position`, in (session, position) order, after
/// `after` when given, at most `limit`.
pub(crate) fn children(
    kv: &mut dyn IndexRead,
    tenant: &str,
    session: &str,
    position: u64,
    after: Option<(&str, u64)>,
    limit: usize,
) -> Result<Vec<(String, u64)>, LogError> {
    let prefix = children_prefix(tenant, session, position);
    let mut cursor = after.map(|(s, p)| children_prefix(tenant, session, position).str(s).u64(p).0);
    let mut out = Vec::new();
    while out.len() < limit {
        let want = (limit - out.len()).min(SCAN_CHUNK);
        let entries = kv.scan(prefix.bytes(), cursor.as_deref(), want)?;
        let done = entries.len() < want;
        for (key, _) in &entries {
            let mut reader = KeyReader(key).skip(prefix.bytes().len())?;
            let child_session = reader.str()?;
            let child_position = reader.u64()?;
            out.push((child_session, child_position));
        }
        match entries.into_iter().last() {
            Some((key, _)) if !done => cursor = Some(key),
            _ => break,
        }
    }
    Ok(out)
}

/// Records the acknowledgement of `event` (idempotent); `true` if it was
/// not acknowledged before.
pub(crate) fn acknowledge(kv: &mut dyn IndexWrite, event: &EventRef) -> Result<bool, LogError> {
    let (tenant, session) = (event.key.tenant(), event.key.session());
    let acked = acked_key(tenant, session, event.position);
    if kv.get(acked.bytes())?.is_some() {
        return Ok(false);
    }
    kv.put(acked.bytes(), &[])?;
    if let Some(node) = read_node(kv, tenant, session, event.position)? {
        if node.requires_ack {
            kv.delete(open_key(tenant, node.timestamp_nanos, node.number).bytes())?;
        }
    }
    Ok(true)
}

pub(crate) fn is_acknowledged(kv: &mut dyn IndexRead, event: &EventRef) -> Result<bool, LogError> {
    let key = acked_key(event.key.tenant(), event.key.session(), event.position);
    Ok(kv.get(key.bytes())?.is_some())
}

/// Scans a table of `s p` values under `prefix` from `after` on: the
/// references, and the key of the last entry read (to continue from).
fn scan_refs(
    kv: &mut dyn IndexRead,
    tenant: &str,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
    mut keep: impl FnMut(&[u8]) -> Result<Option<bool>, LogError>,
) -> Result<Vec<EventRef>, LogError> {
    let mut out = Vec::new();
    let mut cursor = after.map(<[u8]>::to_vec);
    while out.len() < limit {
        let want = (limit - out.len()).min(SCAN_CHUNK);
        let entries = kv.scan(prefix, cursor.as_deref(), want)?;
        let done = entries.len() < want;
        for (key, value) in &entries {
            match keep(key)? {
                Some(true) => out.push(decode_ref(tenant, value)?),
                Some(false) => {}
                None => return Ok(out),
            }
        }
        match entries.into_iter().last() {
            Some((key, _)) if !done => cursor = Some(key),
            _ => break,
        }
    }
    Ok(out)
}

/// The correlation chain of `id`, oldest first, at most `limit`.
pub(crate) fn correlation_chain(
    kv: &mut dyn IndexRead,
    tenant: &str,
    id: &str,
    limit: usize,
) -> Result<Vec<EventRef>, LogError> {
    let prefix = KeyBuf::table(CORRELATION).str(tenant).str(id);
    scan_refs(kv, tenant, prefix.bytes(), None, limit, |_| Ok(Some(true)))
}

/// Events of `kind` with a depth in `min..=max`, by depth then index
/// order, at most `limit`.
pub(crate) fn by_kind(
    kv: &mut dyn IndexRead,
    tenant: &str,
    kind: &str,
    min: u32,
    max: u32,
    limit: usize,
) -> Result<Vec<EventRef>, LogError> {
    let prefix = KeyBuf::table(KIND).str(tenant).str(kind);
    let start = (min > 0).then(|| {
        // Every key at depth >= min sorts after this one.
        KeyBuf::table(KIND)
            .str(tenant)
            .str(kind)
            .u32(min - 1)
            .u64(u64::MAX)
            .0
    });
    let depth_at = prefix.bytes().len();
    scan_refs(kv, tenant, prefix.bytes(), start.as_deref(), limit, |key| {
        let depth = key
            .get(depth_at..depth_at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| KeyReader::corrupt("a short kind key"))?;
        // Past `max`: stop the scan.
        Ok((depth <= max).then_some(true))
    })
}

/// Events that require an acknowledgement and have none, oldest first.
pub(crate) fn open(
    kv: &mut dyn IndexRead,
    tenant: &str,
    limit: usize,
) -> Result<Vec<EventRef>, LogError> {
    let prefix = KeyBuf::table(OPEN).str(tenant);
    scan_refs(kv, tenant, prefix.bytes(), None, limit, |_| Ok(Some(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuple_keys_sort_as_tuples() {
        let a = KeyBuf::table(NODE).str("t").str("a").u64(2);
        let ab = KeyBuf::table(NODE).str("t").str("ab").u64(1);
        let a_nul = KeyBuf::table(NODE).str("t").str("a\0").u64(1);
        let a_big = KeyBuf::table(NODE).str("t").str("a").u64(300);
        assert!(a.bytes() < a_big.bytes());
        assert!(a_big.bytes() < a_nul.bytes());
        assert!(a_nul.bytes() < ab.bytes());
        // A tenant is never a prefix of a longer one's keys.
        let short = KeyBuf::table(NODE).str("t");
        let long = KeyBuf::table(NODE).str("tt").str("a");
        assert!(!long.bytes().starts_with(short.bytes()));
    }

    #[test]
    fn tuple_keys_read_back() {
        let key = KeyBuf::table(CHILDREN).str("t\0x").str("s").u64(7);
        let mut reader = KeyReader(key.bytes()).skip(1).unwrap();
        assert_eq!(reader.str().unwrap(), "t\0x");
        assert_eq!(reader.str().unwrap(), "s");
        assert_eq!(reader.u64().unwrap(), 7);
        assert!(KeyReader(b"a").str().is_err());
        assert!(KeyReader(&[1, 2]).u64().is_err());
    }
}
