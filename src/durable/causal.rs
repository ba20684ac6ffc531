//! The causal index: its schema in a backend's ordered key-value space
//! ([`IndexStore`](crate::durable::IndexStore)), how one commit's records
//! update it, and the reads the queries are made of.
//!
//! It sits below the backends, which write it inside their own commits
//! ([`index_appended`]); the queries over it (`crate::dag`) sit above the
//! store and read it through these functions, so imports run one way.
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
//! | waiting | `W t s` | how many orphans wait for an event of session `s` (absent: none) |
//! | number | `Sn` | the last index number handed out |
//! | count | `Sc` | how many events with links the index took (`as_of`) |
//!
//! `n` is the event's **index number**: events with links are numbered
//! log-wide from 1, in the order their commits took the numbers. It orders
//! a kind's events at one depth and breaks timestamp ties in a correlation
//! chain and among open acknowledgements (both oldest first by append time,
//! since the persister writes sessions in any order). A backend whose
//! commits run one at a time (memory, redb) hands the numbers out in commit
//! order, without gaps; one shared by nodes (Redis) reserves them before
//! its transaction, so a commit that aborted leaves a gap and two nodes'
//! commits may land in the other order than their numbers. Numbers order;
//! they do not count.
//!
//! The **count** is what a query's `as_of` is: the events with links in
//! the index when the answer was read. It only grows, by exactly the
//! events a commit indexed, in that commit.
//!
//! Only events **with** links get a node: the common event costs the index
//! nothing but, while orphans wait on its session, one children scan.
//!
//! # What commits on different sessions share
//!
//! Nothing that one of them reads, unless a link crosses sessions: an
//! append reads its own sessions' entries (its events' parents, their
//! acknowledgements, its sessions' `W`, and while orphans wait on one of
//! them, the children of its events: one [`scan_group`]), the entries of
//! other sessions only for a parent there, and raises the two counters
//! without reading them for anything else. The counters are **decimal text** and change only by
//! being raised, so a backend that can add atomically (Redis `INCRBY`) may
//! keep them as native counters: it answers an append's read of `Sc` with
//! any base and applies the put as an addition of the difference, and it
//! reserves the append's numbers ([`linked_events`] of them) before its
//! transaction and answers the read of `Sn` with the number before them.
//! So writers on different sessions conflict only where their links meet.
//!
//! # Depth, and parents that are not there yet
//!
//! Depth is the distance to the root along parents: an event without a
//! parent, or whose parent is an event without links, is at depth 0 or 1.
//! An event whose parent the log does not hold yet (another node has not
//! written it, it was never appended, or it was archived) is an **orphan**:
//! its depth is unknown, and so is every descendant's. The index counts
//! orphans under the missing parent's session (`W t s`); while any wait on
//! a session, every event of it the index takes first looks for children
//! waiting on it: they stop waiting (they are orphans no more), and if the
//! event's own depth is known they get theirs (and their descendants,
//! breadth first); an event of unknown depth passes one down when the
//! arrival of its missing ancestor reaches it. An event whose depth is
//! unknown is not found by kind; every other query serves it.
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
const WAITING: u8 = b'W';

/// Whether `key` belongs to a table the queries scan by range (children,
/// correlation, kind, open acknowledgements, waiting orphans); the others
/// (nodes, acknowledgements, the counters) are only read by their exact
/// key, so a backend whose ordered structure costs more than a hash (Redis)
/// may keep them out of it.
pub fn is_scanned(key: &[u8]) -> bool {
    matches!(
        key.first(),
        Some(&(CHILDREN | CORRELATION | KIND | OPEN | WAITING))
    )
}

/// The part of a scanned key (see [`is_scanned`]) that every scan of its
/// table names in full: the table tag, then the tenant and parent session
/// for children, the tenant and id for correlation chains, the tenant and
/// kind for kinds, the tenant for open acknowledgements, nothing for
/// waiting orphans. A scan's prefix (and cursor) always holds its group,
/// so a scan never leaves it, and a backend may keep one ordered structure
/// per group (Redis does, so that a transaction's scan watches only the
/// entries it could have read). `None` for a key of another table, or one
/// too short to hold its group.
pub fn scan_group(key: &[u8]) -> Option<&[u8]> {
    let strings = match *key.first()? {
        CHILDREN | CORRELATION | KIND => 2,
        OPEN => 1,
        WAITING => 0,
        _ => return None,
    };
    let mut end = 1;
    for _ in 0..strings {
        // Each string ends at the first 0x00 0x00 (0x00 0xFF is an
        // escaped 0x00 inside it).
        loop {
            match (key.get(end)?, key.get(end + 1)) {
                (0, Some(0)) => {
                    end += 2;
                    break;
                }
                (0, _) => end += 2,
                _ => end += 1,
            }
        }
    }
    Some(&key[..end])
}

/// The state entry of the index's earlier layout (a postcard number and
/// orphan count), refused rather than misread.
pub(crate) const LEGACY_STATE_KEY: &[u8] = b"S";

/// The key of the last index number handed out (decimal text; module docs).
pub const NUMBER_KEY: &[u8] = b"Sn";

/// The key of the count of events with links indexed, the `as_of` of
/// queries (decimal text; module docs).
pub const COUNT_KEY: &[u8] = b"Sc";

/// The key of how many orphans wait for an event of `key`'s session
/// (decimal text; module docs), for backends that read it ahead.
pub fn waiting_key(key: &SessionKey) -> Vec<u8> {
    KeyBuf::table(WAITING)
        .str(key.tenant())
        .str(key.session())
        .0
}

/// How many index numbers [`index_appended`] hands out for `writes`: one
/// per event with links.
pub fn linked_events(writes: &[SessionWrite<'_>]) -> u64 {
    writes
        .iter()
        .flat_map(|write| write.records)
        .filter(
            |record| matches!(&record.body, RecordBody::Event(event) if !event.links.is_empty()),
        )
        .count() as u64
}

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
    /// depth: [`read_depth`] decodes only these two.
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

/// A counter's value (decimal text; absent is 0).
fn read_counter(kv: &mut dyn IndexRead, key: &[u8]) -> Result<u64, LogError> {
    match kv.get(key)? {
        Some(bytes) => parse_counter(key, &bytes),
        None => Ok(0),
    }
}

fn parse_counter(key: &[u8], bytes: &[u8]) -> Result<u64, LogError> {
    std::str::from_utf8(bytes)
        .ok()
        .filter(|text| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| {
            LogError::Corrupt(format!(
                "causal index counter {:?}: {:?} is not a decimal number",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(bytes)
            ))
        })
}

fn write_counter(kv: &mut dyn IndexWrite, key: &[u8], value: u64) -> Result<(), LogError> {
    kv.put(key, value.to_string().as_bytes())
}

/// The events with links indexed: the `as_of` of an answer read now.
pub(crate) fn read_count(kv: &mut dyn IndexRead) -> Result<u64, LogError> {
    read_counter(kv, COUNT_KEY)
}

/// Orphans waiting for their parent, over every session.
pub(crate) fn read_orphans(kv: &mut dyn IndexRead) -> Result<u64, LogError> {
    let prefix = [WAITING];
    let mut total = 0u64;
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let entries = kv.scan(&prefix, cursor.as_deref(), SCAN_CHUNK)?;
        let done = entries.len() < SCAN_CHUNK;
        for (key, value) in &entries {
            total = total.saturating_add(parse_counter(key, value)?);
        }
        match entries.into_iter().last() {
            Some((key, _)) if !done => cursor = Some(key),
            _ => return Ok(total),
        }
    }
}

/// Adds `delta` (which may be negative) to the orphans waiting on
/// `session`; at zero the entry goes.
fn add_waiting(
    kv: &mut dyn IndexWrite,
    tenant: &str,
    session: &str,
    delta: i64,
) -> Result<(), LogError> {
    let key = KeyBuf::table(WAITING).str(tenant).str(session);
    let now = read_counter(kv, key.bytes())?.saturating_add_signed(delta);
    if now == 0 {
        kv.delete(key.bytes())
    } else {
        write_counter(kv, key.bytes(), now)
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
    let linked = linked_events(writes);
    let first_number = match linked {
        0 => 0,
        _ => read_counter(kv, NUMBER_KEY)?,
    };
    if linked > 0 && first_number == 0 && kv.get(LEGACY_STATE_KEY)?.is_some() {
        // The first numbers ever, over an index the earlier layout wrote:
        // numbering again from 1 would overwrite its entries.
        return Err(LogError::Corrupt(
            "the causal index was written in an earlier layout (one `S` state entry), which \
             this version does not read; remove the index's entries to start it over"
                .into(),
        ));
    }
    let mut number = first_number;
    for write in writes {
        let tenant = write.key.tenant();
        if !write
            .records
            .iter()
            .any(|r| matches!(r.body, RecordBody::Event(_)))
        {
            continue;
        }
        // Orphans waiting on this session's events: read once per write,
        // written back once (an orphan of this write waiting on this same
        // session counts here, not through the stored entry).
        let waiting_at = KeyBuf::table(WAITING).str(tenant).str(write.key.session());
        let waiting_before = read_counter(kv, waiting_at.bytes())?;
        let mut waiting = waiting_before;
        for record in write.records {
            let RecordBody::Event(event) = &record.body else {
                continue;
            };
            let position = record.position;
            let links = &event.links;
            if links.is_empty() {
                if waiting > 0 {
                    settle(
                        kv,
                        &mut waiting,
                        tenant,
                        write.key.session(),
                        position,
                        Some(0),
                    )?;
                }
                continue;
            }
            number += 1;
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
                        None if ps == write.key.session() => {
                            waiting += 1;
                            None
                        }
                        None => {
                            add_waiting(kv, tenant, ps, 1)?;
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
                number,
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
                    .u64(number);
                kv.put(key.bytes(), &this)?;
            }
            if let (Some(kind), Some(depth)) = (&links.kind, depth) {
                kv.put(kind_key(tenant, kind, depth, number).bytes(), &this)?;
            }
            if links.requires_ack
                && kv
                    .get(acked_key(tenant, session, position).bytes())?
                    .is_none()
            {
                kv.put(
                    open_key(tenant, event.timestamp_nanos, number).bytes(),
                    &this,
                )?;
            }
            if waiting > 0 {
                // Also at an unknown depth: its waiting children have their
                // parent now, and wait for no event of this session.
                settle(kv, &mut waiting, tenant, session, position, depth)?;
            }
        }
        // Only this loop changes this session's entry meanwhile (an orphan
        // of another session is counted before or after it).
        if waiting != waiting_before {
            match waiting {
                0 => kv.delete(waiting_at.bytes())?,
                now => write_counter(kv, waiting_at.bytes(), now)?,
            }
        }
    }
    if linked > 0 {
        debug_assert_eq!(number, first_number + linked);
        write_counter(kv, NUMBER_KEY, number)?;
        let count = read_counter(kv, COUNT_KEY)?;
        write_counter(kv, COUNT_KEY, count.saturating_add(linked))?;
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

/// `session@position` was just indexed, at depth `depth`: children of it
/// that were waiting (orphans) stop waiting, and if the depth is known get
/// theirs, and so on down, breadth first. An unknown depth leaves them
/// unknown until an ancestor's arrival cascades down to them.
fn settle(
    kv: &mut dyn IndexWrite,
    waiting: &mut u64,
    tenant: &str,
    session: &str,
    position: u64,
    depth: Option<u32>,
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
                *waiting = waiting.saturating_sub(1);
            }
            let Some(depth) = depth else {
                continue;
            };
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
            queue.push_back((child_session, child_position, Some(child_depth)));
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
    fn an_index_in_the_earlier_layout_is_refused_not_misread() {
        use crate::cursor::Incarnation;
        use crate::durable::{DurableLog, Life, LogRecord, MemoryLog, StoredEvent};
        let log = MemoryLog::new();
        let index = log.index().expect("an index");
        index
            .write(&mut |kv| kv.put(LEGACY_STATE_KEY, &[7, 0]))
            .expect("write the old state entry");
        let key = SessionKey::new("t", "s").expect("key");
        let incarnation = Incarnation::from_raw(1).expect("non-zero");
        let event = |links: crate::links::Links| LogRecord {
            position: 1,
            incarnation,
            body: RecordBody::Event(StoredEvent {
                revision: 1,
                timestamp_nanos: 1,
                links,
                payload: Vec::new(),
            }),
        };
        let write = |records| SessionWrite {
            key: &key,
            new_life: Some(Life {
                incarnation,
                first_position: 1,
            }),
            records,
            closure: None,
            turn_owner: None,
        };
        let linked = [event(crate::links::Links::new().kind("k"))];
        assert!(matches!(
            log.append(&[write(&linked)]),
            Err(LogError::Corrupt(_))
        ));
        // Nothing numbered over the old entries.
        let mut read = index.read().expect("read");
        assert_eq!(read.get(NUMBER_KEY).expect("get"), None);
        assert_eq!(read.get(COUNT_KEY).expect("get"), None);
    }

    #[test]
    fn scans_stay_within_their_group() {
        let child = children_prefix("t\0", "s", 3).str("c").u64(4);
        let group = scan_group(child.bytes()).unwrap();
        assert_eq!(group, KeyBuf::table(CHILDREN).str("t\0").str("s").bytes());
        assert_eq!(
            scan_group(children_prefix("t\0", "s", 3).bytes()),
            Some(group)
        );
        let kind = kind_key("t", "k", 2, 9);
        let kind_prefix = KeyBuf::table(KIND).str("t").str("k");
        assert_eq!(scan_group(kind.bytes()), Some(kind_prefix.bytes()));
        assert_eq!(scan_group(kind_prefix.bytes()), Some(kind_prefix.bytes()));
        let open = open_key("t", 1, 2);
        assert_eq!(
            scan_group(open.bytes()),
            Some(KeyBuf::table(OPEN).str("t").bytes())
        );
        assert_eq!(scan_group(&[WAITING, b'x']), Some(&[WAITING][..]));
        // Other tables, and keys cut inside their group.
        assert_eq!(scan_group(node_key("t", "s", 1).bytes()), None);
        assert_eq!(scan_group(NUMBER_KEY), None);
        assert_eq!(scan_group(KeyBuf::table(KIND).str("t").bytes()), None);
        assert_eq!(scan_group(&[KIND, b'a', 0]), None);
        assert_eq!(scan_group(&[]), None);
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
