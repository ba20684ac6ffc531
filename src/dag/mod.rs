//! Causal links and acknowledgements over the durable log: seed 004's
//! `EventDag`, as queries on a [`ReplayStore`] with a durable log.
//!
//! # What it owns
//!
//! * **The causal index** (`index.rs`): built from the [`Links`] events
//!   carry, by the durable log's backend **inside the commit that writes the
//!   records**, on the persister thread — never on the append path. So the
//!   index covers exactly what is durable, survives restarts and eviction,
//!   and on a shared log (Redis) is one index for every node.
//! * **Queries** ([`Dag`]), tenant-scoped: read one event by reference, walk
//!   its ancestors (most recent first) or descendants (breadth first), the
//!   correlation chain of an id, events of a kind within a depth range,
//!   and the events still waiting for an acknowledgement (oldest first).
//! * **Acknowledgements**: [`Dag::acknowledge`] records one (idempotent, in
//!   the log, so it survives restarts); [`Dag::signal_upstream`] appends a
//!   signal event into the session of each ancestor's producer, so a
//!   runtime subscribed to its own session sees it live through the ring.
//!
//! # Freshness
//!
//! The index is as fresh as the log: a position is indexed exactly when it
//! is durable. Every answer carries `as_of`, the number of events with links
//! the index had taken when the answer was read (log-wide; it only grows).
//! [`Dag::wait_indexed`] waits until one event is indexed and returns an
//! `as_of` read after it was: every answer whose `as_of` is at least that
//! reflects the event. An event's index number ([`DagNode::number`]) orders
//! it among others; it is not an `as_of` (on Redis, nodes reserve numbers
//! before they commit, so numbers and commits may interleave).
//!
//! Events appended but not yet durable are not in any answer except
//! [`Dag::read`], which looks in the ring first.
//!
//! # Missing parents
//!
//! An append accepts a parent that does not exist (yet); the index keeps the
//! event as an orphan of unknown depth until the parent arrives (another
//! node writes it later, say), then gives it and its descendants their
//! depth. An ancestor walk that reaches a parent the log does not hold
//! stops there and names it in [`DagAnswer::missing`]. Events whose
//! payloads were archived are skipped and named in
//! [`DagAnswer::archived`]; the index keeps their links, so walks go on
//! through them.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use livereplay::durable::MemoryLog;
//! use livereplay::{Links, ReplayStore, Revision, SessionKey, Utf8};
//!
//! let store = ReplayStore::<String>::builder()
//!     .durable(Arc::new(MemoryLog::new()), Utf8)
//!     .build()?;
//! let key = SessionKey::new("acme", "turn-1")?;
//! let ask = store.append_linked(&key, Revision(1), "user: weather?".into(),
//!     Links::new().kind("user_message"))?;
//! let call = store.append_linked(&key, Revision(1), "get_weather()".into(),
//!     Links::new().parent(ask.reference()).kind("tool_call").requires_ack())?;
//!
//! let dag = store.dag()?;
//! dag.wait_indexed(&call.reference(), Duration::from_secs(5))?;
//! let ancestors = dag.ancestors(&call.reference(), 10)?;
//! assert_eq!(ancestors.events[0].payload(), "user: weather?");
//! assert_eq!(dag.unacknowledged("acme", 10)?.events.len(), 1);
//! assert!(dag.acknowledge(&call.reference())?);
//! assert!(dag.unacknowledged("acme", 10)?.events.is_empty());
//! # Ok(())
//! # }
//! ```

// The index's schema and its writes live below the backends, which write
// it inside their commits (`crate::durable::causal`); this module holds the
// queries, above the store.
use crate::durable::causal as index;

pub use crate::durable::causal::{
    index_appended, is_scanned, linked_events, scan_group, waiting_key, COUNT_KEY, NUMBER_KEY,
};

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::durable::{IndexRead, IndexStore, LogError};
use crate::error::Error;
use crate::event::Event;
use crate::key::SessionKey;
use crate::links::{EventRef, Links};
use crate::store::ReplayStore;
use crate::sync::Arc;

/// The most ancestors [`Dag::signal_upstream`] walks.
pub const MAX_SIGNAL_DEPTH: usize = 4096;

/// Why a causal query failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DagError {
    /// The store has no durable log: the index lives there.
    #[error(
        "the store has no durable log; build it with StoreBuilder::durable to keep a causal index"
    )]
    NoDurableTier,
    /// The store's log keeps no causal index (a custom backend that does
    /// not implement `DurableLog::index`).
    #[error("the durable log keeps no causal index (DurableLog::index returns None)")]
    NoIndex,
    /// The event the query starts from is not in the index (not durable
    /// yet, or never appended); [`Dag::wait_indexed`] waits for it.
    #[error(
        "{event} is not indexed (not durable yet, or never appended); wait_indexed waits for it"
    )]
    NotIndexed {
        /// The event.
        event: EventRef,
    },
    /// [`Dag::wait_indexed`] timed out.
    #[error("{event} was not indexed within the timeout")]
    Timeout {
        /// The event waited for.
        event: EventRef,
    },
    /// The log failed.
    #[error("the durable log failed: {0}")]
    Log(#[from] LogError),
    /// Appending a signal failed.
    #[error("appending the signal failed: {0}")]
    Append(#[from] Error),
}

/// A signal sent from a downstream event to the producers upstream of it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpstreamSignal {
    /// The downstream event was applied.
    Ack,
    /// The downstream consumer asks producers to slow down.
    Backpressure,
    /// The downstream consumer failed on it.
    Error {
        /// What went wrong, for the producer.
        message: Box<str>,
    },
}

impl UpstreamSignal {
    /// The kind a signal event carries in its links.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamSignal::Ack => "livereplay.signal.ack",
            UpstreamSignal::Backpressure => "livereplay.signal.backpressure",
            UpstreamSignal::Error { .. } => "livereplay.signal.error",
        }
    }
}

/// One answer of a causal query.
pub struct DagAnswer<T> {
    /// The events, in the query's order.
    pub events: Vec<Arc<Event<T>>>,
    /// Events the query reached whose payloads the log no longer holds
    /// (archived, or a payload the codec refused); skipped in `events`.
    pub archived: Vec<EventRef>,
    /// For an ancestor walk: the parent it stopped at because no tier holds
    /// it (not written yet, never appended, or archived before indexing).
    pub missing: Option<EventRef>,
    /// How many events with links the index held when the answer was read
    /// (module docs).
    pub as_of: u64,
}

impl<T> fmt::Debug for DagAnswer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let events: Vec<EventRef> = self.events.iter().map(|e| e.reference()).collect();
        f.debug_struct("DagAnswer")
            .field("events", &events)
            .field("archived", &self.archived)
            .field("missing", &self.missing)
            .field("as_of", &self.as_of)
            .finish()
    }
}

/// What the index knows of one event with links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DagNode {
    /// The event.
    pub event: EventRef,
    /// Its links as indexed.
    pub links: Links,
    /// Distance to the root along parents; `None` while an ancestor is
    /// missing.
    pub depth: Option<u32>,
    /// Whether an acknowledgement was recorded.
    pub acknowledged: bool,
    /// Its index number: unique log-wide, and the order of its kind's
    /// events at one depth (module docs; not an `as_of`).
    pub number: u64,
}

/// The causal index's counters ([`Dag::index_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexStats {
    /// Events with links indexed so far, log-wide (the latest `as_of`).
    pub indexed: u64,
    /// Events indexed while their parent was not in the log and still
    /// waiting for it (their depth, and their descendants', is unknown).
    pub orphans: u64,
}

/// Causal queries over a store's durable log; from [`ReplayStore::dag`].
pub struct Dag<'s, T> {
    store: &'s ReplayStore<T>,
    index: &'s dyn IndexStore,
}

impl<T: Send + Sync + 'static> ReplayStore<T> {
    /// The causal queries over this store's durable log.
    pub fn dag(&self) -> Result<Dag<'_, T>, DagError> {
        let log = self.durable_log().ok_or(DagError::NoDurableTier)?;
        let index = log.index().ok_or(DagError::NoIndex)?;
        Ok(Dag { store: self, index })
    }
}

/// A step of a walk: the event's links as indexed, or that it is an event
/// without links, or that the log does not hold it.
enum Step {
    Linked(index::Node<'static>),
    Plain,
    Missing,
}

impl<'s, T: Send + Sync + 'static> Dag<'s, T> {
    fn snapshot(&self) -> Result<(Box<dyn IndexRead + 's>, u64), DagError> {
        let mut kv = self.index.read()?;
        let as_of = index::read_count(&mut *kv)?;
        Ok((kv, as_of))
    }

    fn step(kv: &mut dyn IndexRead, event: &EventRef) -> Result<Step, LogError> {
        let (tenant, session) = (event.key.tenant(), event.key.session());
        Ok(
            match index::read_node(kv, tenant, session, event.position)? {
                Some(node) => Step::Linked(node),
                None if kv.is_event(&event.key, event.position)? => Step::Plain,
                None => Step::Missing,
            },
        )
    }

    /// The index's counters, log-wide.
    pub fn index_stats(&self) -> Result<IndexStats, DagError> {
        let mut kv = self.index.read()?;
        Ok(IndexStats {
            indexed: index::read_count(&mut *kv)?,
            orphans: index::read_orphans(&mut *kv)?,
        })
    }

    /// The event `event` names, from the ring if it still holds it, else
    /// from the log; `None` if neither does.
    pub fn read(&self, event: &EventRef) -> Result<Option<Arc<Event<T>>>, DagError> {
        if let Some(found) = self.store.event_in_ring(event) {
            return Ok(Some(found));
        }
        let found = self
            .store
            .events_in_log(&event.key, event.position, event.position)?;
        Ok(found.into_iter().next())
    }

    /// What the index knows of `event`; `None` if it is not indexed or has
    /// no links.
    pub fn node(&self, event: &EventRef) -> Result<Option<DagNode>, DagError> {
        let (mut kv, _) = self.snapshot()?;
        let (tenant, session) = (event.key.tenant(), event.key.session());
        let Some(node) = index::read_node(&mut *kv, tenant, session, event.position)? else {
            return Ok(None);
        };
        let acknowledged = index::is_acknowledged(&mut *kv, event)?;
        let parent = match &node.parent {
            Some((session, position)) => Some(EventRef::new(
                SessionKey::new(tenant, session)
                    .map_err(|e| LogError::Corrupt(format!("causal index: {e}")))?,
                *position,
            )),
            None => None,
        };
        Ok(Some(DagNode {
            event: event.clone(),
            links: Links {
                parent,
                correlation: node.correlation.map(Into::into),
                kind: node.kind.map(Into::into),
                lane: node.lane.map(Into::into),
                requires_ack: node.requires_ack,
            },
            depth: node.depth,
            acknowledged,
            number: node.number,
        }))
    }

    /// Up to `limit` ancestors of `from`, most recent first (its parent,
    /// then the parent's parent, …; `from` itself is not included). Stops
    /// at a root, at `limit`, at an event seen before (a cycle), or at a
    /// parent no tier holds ([`DagAnswer::missing`]).
    pub fn ancestors(&self, from: &EventRef, limit: usize) -> Result<DagAnswer<T>, DagError> {
        let (mut kv, as_of) = self.snapshot()?;
        let (refs, missing) = Self::walk_up(&mut *kv, from, limit)?;
        drop(kv);
        let mut answer = self.load(refs, as_of)?;
        answer.missing = missing;
        Ok(answer)
    }

    /// The ancestors of `from` the log holds, most recent first, at most
    /// `limit`, and the parent the walk stopped at because the log does not
    /// hold it. Stops at a root or at an event seen before (a cycle).
    fn walk_up(
        kv: &mut dyn IndexRead,
        from: &EventRef,
        limit: usize,
    ) -> Result<(Vec<EventRef>, Option<EventRef>), DagError> {
        let mut parent = match Self::step(kv, from)? {
            Step::Linked(node) => node.parent,
            Step::Plain => None,
            Step::Missing => {
                return Err(DagError::NotIndexed {
                    event: from.clone(),
                })
            }
        };
        let mut refs = Vec::new();
        let mut seen = HashSet::from([(from.key.session().to_owned(), from.position)]);
        while let Some((session, position)) = parent.take() {
            if refs.len() >= limit || !seen.insert((session.to_string(), position)) {
                break;
            }
            let event = EventRef::new(
                SessionKey::new(from.key.tenant(), &session)
                    .map_err(|e| LogError::Corrupt(format!("causal index: {e}")))?,
                position,
            );
            match Self::step(kv, &event)? {
                Step::Linked(node) => {
                    parent = node.parent;
                    refs.push(event);
                }
                Step::Plain => refs.push(event),
                Step::Missing => return Ok((refs, Some(event))),
            }
        }
        Ok((refs, None))
    }

    /// Up to `limit` descendants of `from`, breadth first (children in
    /// session, then position order); `from` itself is not included.
    pub fn descendants(&self, from: &EventRef, limit: usize) -> Result<DagAnswer<T>, DagError> {
        let (mut kv, as_of) = self.snapshot()?;
        if let Step::Missing = Self::step(&mut *kv, from)? {
            return Err(DagError::NotIndexed {
                event: from.clone(),
            });
        }
        let tenant = from.key.tenant();
        let mut refs = Vec::new();
        let mut seen = HashSet::from([(from.key.session().to_owned(), from.position)]);
        let mut queue = VecDeque::from([(from.key.session().to_owned(), from.position)]);
        while let Some((session, position)) = queue.pop_front() {
            if refs.len() >= limit {
                break;
            }
            let room = limit - refs.len();
            for child in index::children(&mut *kv, tenant, &session, position, None, room)? {
                if seen.insert(child.clone()) {
                    let key = SessionKey::new(tenant, &child.0)
                        .map_err(|e| LogError::Corrupt(format!("causal index: {e}")))?;
                    refs.push(EventRef::new(key, child.1));
                    queue.push_back(child);
                }
            }
        }
        refs.truncate(limit);
        drop(kv);
        self.load(refs, as_of)
    }

    /// Up to `limit` events of `tenant` carrying correlation id `id`,
    /// oldest (by append timestamp) first.
    pub fn correlation_chain(
        &self,
        tenant: &str,
        id: &str,
        limit: usize,
    ) -> Result<DagAnswer<T>, DagError> {
        let (mut kv, as_of) = self.snapshot()?;
        let refs = index::correlation_chain(&mut *kv, tenant, id, limit)?;
        drop(kv);
        self.load(refs, as_of)
    }

    /// Up to `limit` events of `tenant` of `kind` whose depth is in
    /// `min_depth..=max_depth`, by depth then index order. Events of
    /// unknown depth (a missing ancestor) are not found.
    pub fn find_by_kind(
        &self,
        tenant: &str,
        kind: &str,
        min_depth: u32,
        max_depth: u32,
        limit: usize,
    ) -> Result<DagAnswer<T>, DagError> {
        let (mut kv, as_of) = self.snapshot()?;
        let refs = if min_depth > max_depth {
            Vec::new()
        } else {
            index::by_kind(&mut *kv, tenant, kind, min_depth, max_depth, limit)?
        };
        drop(kv);
        self.load(refs, as_of)
    }

    /// Up to `limit` events of `tenant` that require an acknowledgement and
    /// have none, oldest (by append timestamp) first.
    pub fn unacknowledged(&self, tenant: &str, limit: usize) -> Result<DagAnswer<T>, DagError> {
        let (mut kv, as_of) = self.snapshot()?;
        let refs = index::open(&mut *kv, tenant, limit)?;
        drop(kv);
        self.load(refs, as_of)
    }

    /// Records that `event` was acknowledged, in the log (it survives
    /// restarts). Idempotent: `true` the first time, `false` after. An
    /// acknowledgement recorded before its event is indexed still counts:
    /// the event never shows as open.
    pub fn acknowledge(&self, event: &EventRef) -> Result<bool, DagError> {
        let mut newly = false;
        self.index.write(&mut |kv| {
            newly = index::acknowledge(kv, event)?;
            Ok(())
        })?;
        Ok(newly)
    }

    /// Appends a signal event into the session of each ancestor's producer
    /// (one per session, however many of its events are ancestors), so a
    /// runtime subscribed to its own session sees it live. Each signal is
    /// an event with links: parent `from`, kind [`UpstreamSignal::kind`],
    /// lane `"signal"`; `payload` builds its payload from the signal and
    /// the nearest ancestor in that session. Returns the signal events.
    ///
    /// `from` must be indexed (see [`Dag::wait_indexed`]); ancestors are
    /// walked up to [`MAX_SIGNAL_DEPTH`], and a parent the log does not hold
    /// ends the walk (no signal goes to a session for it).
    ///
    /// The signals are appended through this store. On a log shared by
    /// several nodes (Redis), a session has one writer: call this on the
    /// node that runs the ancestors' sessions, or a session another node is
    /// writing would get a second writer (the log refuses it and that
    /// node's persister fences the session, see `stats().durable`).
    pub fn signal_upstream(
        &self,
        from: &EventRef,
        signal: &UpstreamSignal,
        mut payload: impl FnMut(&UpstreamSignal, &EventRef) -> T,
    ) -> Result<Vec<Arc<Event<T>>>, DagError> {
        let (mut kv, _) = self.snapshot()?;
        let (ancestors, _) = Self::walk_up(&mut *kv, from, MAX_SIGNAL_DEPTH)?;
        drop(kv);
        // The nearest ancestor of each session, in walk order.
        let mut targets: Vec<EventRef> = Vec::new();
        for ancestor in ancestors {
            if !targets.iter().any(|t| t.key == ancestor.key) {
                targets.push(ancestor);
            }
        }
        let mut sent = Vec::with_capacity(targets.len());
        for target in targets {
            let links = Links::new()
                .parent(from.clone())
                .kind(signal.kind())
                .lane("signal");
            let revision = self.store.current_cursor(&target.key).revision();
            let body = payload(signal, &target);
            sent.push(
                self.store
                    .append_linked(&target.key, revision, body, links)?,
            );
        }
        Ok(sent)
    }

    /// Waits until `event` is indexed (durable), at most `timeout`, and
    /// returns the `as_of` read just after it was seen (with or without
    /// links): every answer whose `as_of` is at least that reflects it.
    pub fn wait_indexed(&self, event: &EventRef, timeout: Duration) -> Result<u64, DagError> {
        let deadline = Instant::now().checked_add(timeout);
        let mut pause = Duration::from_micros(200);
        loop {
            let mut kv = self.index.read()?;
            match Self::step(&mut *kv, event)? {
                // The count read after the event was seen: an answer that
                // read one at least as high read it after the event's
                // commit (on a shared log the reads are not one snapshot).
                Step::Linked(_) | Step::Plain => return Ok(index::read_count(&mut *kv)?),
                Step::Missing => {}
            }
            drop(kv);
            let now = Instant::now();
            let left = match deadline {
                Some(deadline) if now >= deadline => {
                    return Err(DagError::Timeout {
                        event: event.clone(),
                    })
                }
                Some(deadline) => deadline - now,
                None => pause,
            };
            // A session this store writes tells when it gets durable; any
            // other (another node's, or one not in memory) is polled.
            if self.store.is_resident(&event.key)
                && self
                    .store
                    .wait_durable(&event.key, event.position, left)
                    .is_ok()
            {
                continue;
            }
            std::thread::sleep(pause.min(left));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Loads the events `refs` name, keeping their order: from the ring
    /// where it still holds them, the rest from the log with one read per
    /// run of consecutive positions of a session (a walk along one
    /// session's chain is a handful of reads, not one per step).
    fn load(&self, refs: Vec<EventRef>, as_of: u64) -> Result<DagAnswer<T>, DagError> {
        let mut found: Vec<Option<Arc<Event<T>>>> =
            refs.iter().map(|r| self.store.event_in_ring(r)).collect();
        let mut wanted: Vec<(&SessionKey, u64, usize)> = refs
            .iter()
            .enumerate()
            .filter(|(i, _)| found[*i].is_none())
            .map(|(i, r)| (&r.key, r.position, i))
            .collect();
        wanted.sort_by(|a, b| (a.0.session(), a.1).cmp(&(b.0.session(), b.1)));
        let mut rest = wanted.as_slice();
        while let Some(&(key, first, _)) = rest.first() {
            // The run: same session, each position at most one past the last.
            let mut end = 1;
            let mut last = first;
            while let Some(&(k, position, _)) = rest.get(end) {
                if k != key || position > last + 1 || position - first >= MAX_RUN {
                    break;
                }
                last = position;
                end += 1;
            }
            let events = self.store.events_in_log(key, first, last)?;
            for &(_, position, i) in &rest[..end] {
                found[i] = events
                    .binary_search_by_key(&position, |e| e.position())
                    .ok()
                    .map(|at| events[at].clone());
            }
            rest = &rest[end..];
        }
        let mut events = Vec::with_capacity(refs.len());
        let mut archived = Vec::new();
        for (event, loaded) in refs.into_iter().zip(found) {
            match loaded {
                Some(loaded) => events.push(loaded),
                None => archived.push(event),
            }
        }
        Ok(DagAnswer {
            events,
            archived,
            missing: None,
            as_of,
        })
    }
}

/// The most positions one log read of [`Dag`]'s loads covers.
const MAX_RUN: u64 = 4096;
