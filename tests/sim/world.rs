//! The simulated world: nodes (stores) over one faulty shared log, the
//! model of every accepted append, and the checks against both.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use livereplay::durable::{DurableLog, LogRecord, RecordBody, SessionMeta};
use livereplay::{
    CatchUp, CloseReason, Closure, Codec, CodecError, Config, Cursor, DurableError, DurableOptions,
    Error, Event, Gap, GapReason, ManualClock, Refusal, ReplayStore, Revision, SessionHandle,
    SessionKey, TryNextError, Turn,
};

use super::log::{AppendMode, FaultLog};
use super::ops::{Op, Shape, HANDLE_SLOTS, READER_SLOTS};

thread_local! {
    /// How often each interesting path ran on this thread, so that a long
    /// run can show its checks were exercised (a check that never runs
    /// passes silently).
    static COVERAGE: std::cell::RefCell<BTreeMap<&'static str, u64>> =
        const { std::cell::RefCell::new(BTreeMap::new()) };
}

fn covered(what: &'static str) {
    COVERAGE.with(|c| *c.borrow_mut().entry(what).or_default() += 1);
}

/// The coverage counted on this thread since the last call.
pub fn take_coverage() -> BTreeMap<&'static str, u64> {
    COVERAGE.with(|c| std::mem::take(&mut *c.borrow_mut()))
}

/// Events older than this are trimmed from the rings.
const MAX_AGE: Duration = Duration::from_secs(60);
/// Rounds a drain may take, beyond one per accepted event (a round writes
/// at least one record when it succeeds), before persistence counts as
/// stuck.
const DRAIN_ROUNDS: usize = 256;

/// A payload that knows which store generation appended it: the
/// generation's probe counts how many of its payloads are still alive, so
/// the memory check can tell which store keeps events it should have let
/// go. Decoded payloads (read back from the log) carry no probe.
#[derive(Debug)]
pub struct Payload {
    text: String,
    /// Held, never read: the probe's count is what the check reads.
    #[allow(dead_code)]
    probe: Option<Arc<()>>,
}

pub struct PayloadCodec;

impl Codec<Payload> for PayloadCodec {
    fn encode(&self, payload: &Payload, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.extend_from_slice(payload.text.as_bytes());
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<Payload, CodecError> {
        Ok(Payload {
            text: String::from_utf8(bytes.to_vec()).map_err(CodecError::new)?,
            probe: None,
        })
    }
}

/// A broken invariant: which one (a stable name, compared when
/// shrinking) and what was seen.
#[derive(Debug, Clone)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

fn violation<T>(invariant: &'static str, detail: String) -> Result<T, Violation> {
    Err(Violation { invariant, detail })
}

/// An append the store accepted (`Ok`).
#[derive(Debug)]
struct Accepted {
    key: u8,
    position: u64,
    incarnation: u64,
    generation: u32,
}

struct Node {
    store: Option<ReplayStore<Payload>>,
    generation: u32,
}

struct Handle {
    node: u8,
    generation: u32,
    key: u8,
    handle: Held,
}

/// A held handle, or a turn made of one.
enum Held {
    Plain(SessionHandle<Payload>),
    Turn(Turn<Payload>),
}

impl Held {
    fn handle(&self) -> &SessionHandle<Payload> {
        match self {
            Held::Plain(handle) => handle,
            Held::Turn(turn) => turn.handle(),
        }
    }
}

struct Reader {
    node: u8,
    key: u8,
    /// `None` for the one-shot check of a `replay_after_cursor`.
    catch_up: Option<CatchUp<Payload>>,
    /// Position of the last event delivered (or of the start cursor).
    last: u64,
    /// Incarnation of the last event delivered (or of the start cursor).
    incarnation: Option<u64>,
    ended: bool,
}

pub struct World {
    shape: Shape,
    log: Arc<FaultLog>,
    clock: Arc<ManualClock>,
    nodes: Vec<Node>,
    keys: Vec<SessionKey>,
    /// The node that writes each key now.
    writer: Vec<u8>,
    accepted: Vec<Accepted>,
    /// Accepted appends by payload text.
    by_payload: HashMap<String, usize>,
    /// `(key, incarnation, position)` of every accepted append.
    handed_out: BTreeSet<(u8, u64, u64)>,
    /// The first position each incarnation handed out: where its life
    /// begins.
    first_position: BTreeMap<u64, u64>,
    /// Cursors of accepted appends, per key, for readers to start from.
    cursors: Vec<Vec<Cursor>>,
    /// The last close of each key that succeeded: the incarnation it
    /// closed and its closure.
    closed: Vec<Option<(u64, Closure)>>,
    /// Keys whose turn a crashed or restarted store left open in a log
    /// that is not shared: closed `Interrupted` from the next restore on,
    /// until a removal or a reopen opens the key again.
    interrupted: Vec<bool>,
    /// Generations dropped without a full drain (a crash), or whose lease
    /// ran out while they lived (a stall: another node may close their
    /// turns and fence them): their undurable events may be lost.
    crashed: BTreeSet<u32>,
    /// Over a shared log, the ids of stores gone (crashed or restarted),
    /// whose leases `ExpireLeases` lets run out.
    gone_stores: Vec<u64>,
    /// `(generation, key)`: the store generation made a session of the
    /// key ([`World::touch`]: a handle, an accepted append, a close or a
    /// reopen). Such a store may continue the key from memory (a removed
    /// session still on its way to the log), so the model does not
    /// predict an interruption there.
    touched: BTreeSet<(u32, u8)>,
    /// Each generation's payload probe (see [`Payload`]).
    probes: Vec<Arc<()>>,
    handles: Vec<Option<Handle>>,
    readers: Vec<Option<Reader>>,
    next_payload: u64,
    /// Events and hole positions archived out of the log, by incarnation:
    /// the counter check adds them back.
    archived: BTreeMap<u64, (u64, u64)>,
    /// Store generations alive when a reply was lost: a commit of theirs
    /// may have landed uncounted, so their counters are not judged.
    unjudged: BTreeSet<u32>,
    /// Print every operation and each node's counters after it
    /// (`SIM_TRACE=1` with `reproduce`).
    pub trace: bool,
}

impl World {
    pub fn new(shape: &Shape) -> Self {
        let keys = (0..shape.tenants)
            .flat_map(|t| {
                (0..shape.sessions)
                    .map(move |s| SessionKey::new(&format!("t{t}"), &format!("s{s}")).unwrap())
            })
            .collect();
        let mut world = Self {
            shape: shape.clone(),
            log: Arc::new(FaultLog::new(shape.nodes > 1)),
            clock: Arc::new(ManualClock::new()),
            nodes: Vec::new(),
            keys,
            writer: vec![0; usize::from(shape.keys())],
            accepted: Vec::new(),
            by_payload: HashMap::new(),
            handed_out: BTreeSet::new(),
            first_position: BTreeMap::new(),
            cursors: vec![Vec::new(); usize::from(shape.keys())],
            closed: vec![None; usize::from(shape.keys())],
            interrupted: vec![false; usize::from(shape.keys())],
            gone_stores: Vec::new(),
            touched: BTreeSet::new(),
            crashed: BTreeSet::new(),
            probes: Vec::new(),
            handles: (0..HANDLE_SLOTS).map(|_| None).collect(),
            readers: (0..READER_SLOTS).map(|_| None).collect(),
            next_payload: 0,
            archived: BTreeMap::new(),
            unjudged: BTreeSet::new(),
            trace: false,
        };
        for _ in 0..shape.nodes {
            let node = world.build_node();
            world.nodes.push(node);
        }
        world
    }

    fn build_node(&mut self) -> Node {
        let config = Config::default()
            .with_capacity(self.shape.capacity)
            .with_max_age(MAX_AGE)
            .with_auto_sweep(self.shape.auto_sweep)
            .with_tombstones(64, Duration::from_secs(600));
        let log: Arc<dyn DurableLog> = self.log.clone();
        let store = ReplayStore::builder()
            .config(config)
            .clock(self.clock.clone())
            .durable(log, PayloadCodec)
            .durable_options(
                DurableOptions::default()
                    .with_persister_thread(false)
                    .with_max_batch_events(self.shape.max_batch_events)
                    .with_undurable_budget(self.shape.undurable_budget),
            )
            .build()
            .expect("the simulator's configuration is valid");
        let generation = self.probes.len() as u32;
        self.probes.push(Arc::new(()));
        Node {
            store: Some(store),
            generation,
        }
    }

    fn store(&self, node: u8) -> &ReplayStore<Payload> {
        self.nodes[usize::from(node) % self.nodes.len()]
            .store
            .as_ref()
            .expect("every node has a store between operations")
    }

    fn node_index(&self, node: u8) -> u8 {
        node % self.nodes.len() as u8
    }

    fn key_index(&self, key: u8) -> u8 {
        key % self.keys.len() as u8
    }

    fn payload(&mut self, node: u8) -> Payload {
        self.next_payload += 1;
        let generation = self.nodes[usize::from(node)].generation;
        Payload {
            text: format!("e{}", self.next_payload),
            probe: Some(Arc::clone(&self.probes[generation as usize])),
        }
    }

    /// Records an accepted append; checks that its position is new under
    /// its incarnation (invariant 2).
    fn accept(&mut self, node: u8, key: u8, event: &Event<Payload>) -> Result<(), Violation> {
        if event.key() != &self.keys[usize::from(key)] {
            return violation(
                "append returned another session's event",
                format!(
                    "appended to {} got {:?}",
                    self.keys[usize::from(key)],
                    event.key()
                ),
            );
        }
        let incarnation = event.incarnation().get();
        let position = event.position();
        // Recorded even when it breaks the invariant, so that a run that
        // goes on after the violation does not mistake it for a stranger.
        let fresh = self.handed_out.insert((key, incarnation, position));
        let first = self.first_position.entry(incarnation).or_insert(position);
        *first = (*first).min(position);
        self.by_payload
            .insert(event.payload().text.clone(), self.accepted.len());
        let generation = self.touch(node, key);
        self.accepted.push(Accepted {
            key,
            position,
            incarnation,
            generation,
        });
        self.cursors[usize::from(key)].push(event.cursor());
        if self.interrupted[usize::from(key)] {
            return violation(
                "8. a turn its store left open took an append after a restart",
                format!(
                    "{} position {position} of incarnation {incarnation:#x} (node {node})",
                    self.keys[usize::from(key)]
                ),
            );
        }
        if let Some((closed, closure)) = self.closed[usize::from(key)] {
            if closed == incarnation {
                return violation(
                    "7. an append was accepted after its session was closed",
                    format!(
                        "{} position {position} of incarnation {incarnation:#x}, {closure} (node {node})",
                        self.keys[usize::from(key)]
                    ),
                );
            }
        }
        if !fresh {
            return violation(
                "2. position handed out twice under one incarnation",
                format!(
                    "{} position {position} incarnation {incarnation:#x} again (node {node})",
                    self.keys[usize::from(key)]
                ),
            );
        }
        Ok(())
    }

    /// Records that `node`'s current store generation made a session of
    /// `key`: perhaps a new life the log has not got yet (removed later,
    /// still on its way), which supersedes a gone store's turn when it
    /// lands, so no interruption is predicted for the key. Returns the
    /// generation.
    fn touch(&mut self, node: u8, key: u8) -> u32 {
        let generation = self.nodes[usize::from(node)].generation;
        self.touched.insert((generation, key));
        generation
    }

    fn refused(&mut self, key: u8, what: &str, error: &Error) -> Result<(), Violation> {
        match error {
            // Closed (here, or restored closed from the log).
            Error::Refused(Refusal::SessionClosed { .. })
                if self.closed[usize::from(key)].is_some() =>
            {
                covered("append refused: closed");
                Ok(())
            }
            // Over a shared log, a turn some node closed `Interrupted`
            // because its store's lease ran out (a stalled store's turn,
            // which the model does not predict): the log holds it.
            Error::Refused(Refusal::SessionClosed { closure })
                if closure.reason == CloseReason::Interrupted
                    && self.truth(key, u64::MAX - 1).0.and_then(|m| m.closure)
                        == Some(*closure) =>
            {
                covered("append refused: a stalled store's turn interrupted");
                self.closed[usize::from(key)] = Some((0, *closure));
                Ok(())
            }
            // The log could not be read to restore the session: allowed.
            Error::Refused(Refusal::LogUnavailable { .. }) => {
                covered("append refused: log unavailable");
                Ok(())
            }
            other => violation(
                "3. an append was refused without a configured bound",
                format!("{what}: {other}"),
            ),
        }
    }

    /// Lets go of the handle in `slot`. A turn whose store is alive closes
    /// its session `Interrupted` (as its drop does), recorded as a close.
    fn release(&mut self, slot: usize) -> Result<(), Violation> {
        let Some(held) = self.handles[slot].take() else {
            return Ok(());
        };
        let Held::Turn(turn) = held.handle else {
            return Ok(());
        };
        let node = &self.nodes[usize::from(held.node)];
        if node.generation != held.generation || node.store.is_none() {
            return Ok(());
        }
        let incarnation = turn.incarnation().get();
        match turn.finish(CloseReason::Interrupted) {
            Ok(closure) => self.closed_by(held.key, incarnation, CloseReason::Interrupted, closure),
            Err(Error::Refused(Refusal::SessionRemoved)) => {
                covered("turn released: removed");
                Ok(())
            }
            Err(error) => self.refused(held.key, "turn finish", &error),
        }
    }

    /// Drops the handles and readers of `node` (its process is gone, or
    /// it stopped writing `key`). Its turns close their sessions if its
    /// store lives; a caller whose store is gone drops that first.
    fn forget_node(&mut self, node: u8, key: Option<u8>) -> Result<(), Violation> {
        for slot in 0..self.handles.len() {
            if self.handles[slot]
                .as_ref()
                .is_some_and(|h| h.node == node && key.is_none_or(|k| k == h.key))
            {
                self.release(slot)?;
            }
        }
        if key.is_none() {
            for slot in &mut self.readers {
                if slot.as_ref().is_some_and(|r| r.node == node) {
                    *slot = None;
                }
            }
        }
        Ok(())
    }

    /// Runs `persist_round` on `node` until nothing is queued; whether it
    /// got there within [`DRAIN_ROUNDS`] plus one round per accepted event.
    fn drain(&self, node: u8) -> bool {
        let store = self.store(node);
        (0..DRAIN_ROUNDS + self.accepted.len()).any(|_| store.persist_round().is_none())
    }

    /// The node's process goes (a crash, or a restart after its drain):
    /// its store first, so its open turns close nothing (their drop is
    /// refused), as when a process dies. Over a log that is not shared the
    /// next store closes such a turn `Interrupted` at the durable tail
    /// when it restores the session (persister invariant 11): the model
    /// learns that closure from the log's mark.
    fn rebuild(&mut self, node: u8, crashed: bool) -> Result<(), Violation> {
        let generation = self.nodes[usize::from(node)].generation;
        if crashed {
            self.crashed.insert(generation);
        }
        if self.shape.nodes > 1 {
            let gone = self.store(node).store_id();
            self.gone_stores.extend(gone);
        }
        self.nodes[usize::from(node)].store = None;
        self.forget_node(node, None)?;
        let fresh = self.build_node();
        self.nodes[usize::from(node)] = fresh;
        if self.shape.nodes > 1 {
            // Its sessions are no longer held: the next restore judges.
            self.judge_leases();
        }
        if self.shape.nodes == 1 {
            for key in 0..self.keys.len() as u8 {
                let (meta, _) = self.truth(key, u64::MAX - 1);
                let Some(meta) = meta else { continue };
                if let (Some(_), None, Some(life)) =
                    (meta.open_turn, meta.closure, meta.current_life())
                {
                    covered("turn left open: interrupted at restore");
                    self.interrupted[usize::from(key)] = true;
                    self.closed[usize::from(key)] = Some((
                        life.incarnation.get(),
                        Closure {
                            reason: CloseReason::Interrupted,
                            last: meta.durable_tail,
                        },
                    ));
                }
            }
        }
        Ok(())
    }

    /// The log's records of `key` from `after + 1` on, read without faults.
    fn truth(&self, key: u8, after: u64) -> (Option<SessionMeta>, Vec<LogRecord>) {
        let key = &self.keys[usize::from(key)];
        let truth = self.log.truth();
        let meta = truth.meta(key).expect("the memory log does not fail");
        let records = truth
            .load_after(key, after, usize::MAX)
            .expect("the memory log does not fail");
        (meta, records)
    }

    /// The record covering `position`, read without faults.
    fn record_at(&self, key: u8, position: u64) -> Option<LogRecord> {
        let (_, records) = self.truth(key, position.saturating_sub(1));
        records
            .into_iter()
            .next()
            .filter(|r| r.position <= position && r.last_position() >= position)
    }

    pub fn step(&mut self, op: &Op) -> Result<(), Violation> {
        let lost_replies = self.log.lost_replies();
        let result = self.apply(op);
        if self.log.lost_replies() != lost_replies {
            self.unjudged
                .extend(self.nodes.iter().map(|n| n.generation));
        }
        if self.trace {
            println!("  {op:?} -> {result:?}");
            self.print_nodes();
        }
        result
    }

    fn print_nodes(&self) {
        for (index, node) in self.nodes.iter().enumerate() {
            let stats = node.store.as_ref().unwrap().stats();
            let d = stats.durable.unwrap_or_default();
            println!(
                "      node {index} gen {}: sessions {} dormant {} | persisted {} holes {} lost {} failures {} restored {} fenced {} undurable {} | {:?}",
                node.generation, stats.sessions, stats.dormant_sessions, d.persisted_events,
                d.holes, d.lost_events, d.log_failures, d.restored_sessions, d.fenced_sessions,
                d.undurable_events, d.last_error
            );
        }
    }

    fn apply(&mut self, op: &Op) -> Result<(), Violation> {
        match *op {
            Op::Append { key } => {
                let key = self.key_index(key);
                let node = self.writer[usize::from(key)];
                let payload = self.payload(node);
                let k = self.keys[usize::from(key)].clone();
                match self.store(node).append(&k, Revision(1), payload) {
                    Ok(event) => self.accept(node, key, &event)?,
                    Err(error) => self.refused(key, "append", &error)?,
                }
            }
            Op::AppendBatch { key, len } => {
                let key = self.key_index(key);
                let node = self.writer[usize::from(key)];
                let payloads: Vec<Payload> = (0..len).map(|_| self.payload(node)).collect();
                let k = self.keys[usize::from(key)].clone();
                let too_large = usize::from(len) > self.shape.capacity;
                match self.store(node).append_batch(&k, Revision(1), payloads) {
                    Ok(events) if too_large => {
                        return violation(
                            "3. a batch larger than the capacity was accepted",
                            format!("{len} events, capacity {}", self.shape.capacity),
                        )
                        .map(|()| drop(events))
                    }
                    Ok(events) => {
                        for pair in events.windows(2) {
                            if pair[1].position() != pair[0].position() + 1 {
                                return violation(
                                    "3. a batch's positions are not consecutive",
                                    format!("{} then {}", pair[0].position(), pair[1].position()),
                                );
                            }
                        }
                        let accepted: Vec<_> =
                            events.iter().map(|e| self.accept(node, key, e)).collect();
                        accepted.into_iter().collect::<Result<(), _>>()?;
                    }
                    Err(Error::Refused(Refusal::BatchTooLarge { .. })) if too_large => {
                        covered("batch over the capacity refused")
                    }
                    Err(error) => self.refused(key, "append_batch", &error)?,
                }
            }
            Op::OpenHandle { key, slot } => {
                let key = self.key_index(key);
                let node = self.writer[usize::from(key)];
                let k = self.keys[usize::from(key)].clone();
                let generation = self.nodes[usize::from(node)].generation;
                match self.store(node).session(&k) {
                    Ok(handle) => {
                        self.touch(node, key);
                        self.release(usize::from(slot))?;
                        self.handles[usize::from(slot)] = Some(Handle {
                            node,
                            generation,
                            key,
                            handle: Held::Plain(handle),
                        })
                    }
                    Err(error) => self.refused(key, "session", &error)?,
                }
            }
            Op::HandleAppend { slot } => {
                let Some(held) = self.handles[usize::from(slot)].as_ref() else {
                    return Ok(());
                };
                let (node, key) = (held.node, held.key);
                // Only the key's writer appends: a handle on another node
                // belongs to a writer that handed the session over.
                if self.writer[usize::from(key)] != node
                    || self.nodes[usize::from(node)].generation != held.generation
                {
                    self.release(usize::from(slot))?;
                    return Ok(());
                }
                let payload = self.payload(node);
                let held = self.handles[usize::from(slot)].as_ref().unwrap();
                match held.handle.handle().append(Revision(1), payload) {
                    Ok(event) => self.accept(node, key, &event)?,
                    Err(Error::Refused(Refusal::SessionRemoved)) => {
                        covered("handle append refused: removed")
                    }
                    Err(error) => self.refused(key, "handle append", &error)?,
                }
            }
            Op::DropHandle { slot } => self.release(usize::from(slot))?,
            Op::OpenTurn { slot } => {
                let Some(held) = self.handles[usize::from(slot)].take() else {
                    return Ok(());
                };
                let handle = match held.handle {
                    Held::Plain(handle) => Held::Turn(handle.into_turn()),
                    turn => turn,
                };
                self.handles[usize::from(slot)] = Some(Handle { handle, ..held });
                covered("turn opened");
            }
            Op::Remove { node, key } => {
                let (node, key) = (self.node_index(node), self.key_index(key));
                self.store(node)
                    .remove_session(&self.keys[usize::from(key)]);
                self.interrupted[usize::from(key)] = false;
            }
            Op::Sweep { node } => {
                self.store(node).sweep();
            }
            Op::Trim { node, key } => {
                let key = self.key_index(key);
                self.store(node).trim_session(&self.keys[usize::from(key)]);
            }
            Op::AdvanceClock { secs } => self.clock.advance(Duration::from_secs(secs.into())),
            Op::Persist { node } => {
                // `Some(true)` means the round made progress: a commit the
                // log acknowledged, or a refusal resolved by re-reading the
                // log (the watermark adopted the log's tail, or the session
                // was fenced). A round that did neither must back off.
                let progress = |store: &ReplayStore<Payload>| {
                    let durable = store.stats().durable.unwrap_or_default();
                    (
                        durable.undurable_events,
                        durable.fenced_sessions,
                        durable.log_regressions,
                        durable.recovered_replies,
                    )
                };
                let acknowledged = self.log.acknowledged();
                let before = progress(self.store(node));
                let round = self.store(node).persist_round();
                if round == Some(true)
                    && self.log.acknowledged() == acknowledged
                    && progress(self.store(node)) == before
                {
                    return violation(
                        "6. persist_round reported progress it did not make",
                        format!(
                            "node {}: Some(true), no append returned Ok and no refusal was resolved",
                            self.node_index(node)
                        ),
                    );
                }
            }
            Op::Crash { node } => self.rebuild(self.node_index(node), true)?,
            Op::Restart { node } => {
                let node = self.node_index(node);
                let clean = self.drain(node);
                covered(if clean {
                    "restart: clean"
                } else {
                    "restart: drain failed, a crash"
                });
                self.rebuild(node, !clean)?;
            }
            Op::TakeOver { key, to, evict } => self.take_over(key, to, evict)?,
            Op::Archive { node, key, back } => {
                let (node, key) = (self.node_index(node), self.key_index(key));
                let last = self.cursors[usize::from(key)]
                    .iter()
                    .map(Cursor::position)
                    .max()
                    .unwrap_or(0);
                let watermark = last.saturating_sub(back.into());
                // What this archive will drop, counted for the counter check.
                let (meta, records) = self.truth(key, 0);
                let through = watermark.min(meta.map_or(0, |m| m.durable_tail));
                for record in records.iter().filter(|r| r.last_position() <= through) {
                    let entry = self.archived.entry(record.incarnation.get()).or_default();
                    match record.body {
                        RecordBody::Event(_) => entry.0 += 1,
                        RecordBody::Hole { count, .. } => entry.1 += count,
                    }
                }
                let k = &self.keys[usize::from(key)];
                let _ = self.store(node).archive_before(k, watermark);
            }
            Op::StartReader {
                node,
                key,
                from,
                slot,
            } => self.start_reader(node, key, from, slot)?,
            Op::StepReader { slot, events } => self.step_reader(slot, events.into())?,
            Op::DropReader { slot } => self.readers[usize::from(slot)] = None,
            Op::Replay { node, key, from } => self.replay(node, key, from)?,
            Op::CheckDurable { node, key } => {
                self.check_durable(self.node_index(node), self.key_index(key))?
            }
            Op::Close { key, reason } => self.close(key, reason)?,
            Op::Reopen { key } => {
                let key = self.key_index(key);
                let node = self.writer[usize::from(key)];
                let k = self.keys[usize::from(key)].clone();
                self.interrupted[usize::from(key)] = false;
                match self.store(node).reopen_session(&k) {
                    Ok(handle) if handle.closure().is_some() => {
                        return violation(
                            "7. a reopened session is closed",
                            format!("{k} on node {node}: {:?}", handle.closure()),
                        )
                    }
                    Ok(_) => {
                        self.touch(node, key);
                        covered("reopen: open")
                    }
                    Err(error) => self.refused(key, "reopen", &error)?,
                }
            }
            Op::ExpireLeases { node } => self.expire_leases(self.node_index(node)),
            Op::FailAppends => self.log.set_append(AppendMode::Failing),
            Op::LoseReply => self.log.set_append(AppendMode::LoseReply),
            Op::FailReads { count } => self.log.fail_reads(count.into()),
            Op::Heal => self.log.heal(),
        }
        Ok(())
    }

    /// Over a shared log, the leases of `node`'s store and of every gone
    /// store run out (persister invariant 11). `node` stalled: what it
    /// accepted on a session another node now closes is lost to it
    /// (fenced), as in a crash. A turn a gone store left open, on a key
    /// no live node holds or made a session of, is closed `Interrupted` by
    /// the next node that restores the key: from then on, as after a
    /// single node's restart (invariant 8), no append is accepted on it
    /// until a removal or a reopen. The model predicts nothing for a
    /// stalled store's turns, nor for a key a live node holds (that node
    /// may record a newer life before anyone restores it); the closures
    /// they get are judged when seen (`refused`, invariant 7).
    fn expire_leases(&mut self, node: u8) {
        if self.shape.nodes == 1 {
            return;
        }
        let stalled = self.store(node).store_id().expect("a durable store");
        self.crashed
            .insert(self.nodes[usize::from(node)].generation);
        let truth = self.log.truth();
        for &store in self.gone_stores.iter().chain([&stalled]) {
            truth.expire_store(store);
        }
        // A lease's length passes (the stores' default, 10 s): every live
        // store's renewal is due at its next round, and none trusts an
        // earlier answer that another store was alive.
        self.clock.advance(Duration::from_secs(11));
        covered("leases run out");
        self.judge_leases();
    }

    /// Over a shared log: every key whose turn a gone store left open
    /// (its lease ran out), that no live node holds or made a session of,
    /// is closed `Interrupted` by the next node that restores it (see
    /// `expire_leases`).
    fn judge_leases(&mut self) {
        for key in 0..self.keys.len() as u8 {
            let (meta, _) = self.truth(key, u64::MAX - 1);
            let Some(meta) = meta else { continue };
            let k = &self.keys[usize::from(key)];
            let held = self.nodes.iter().any(|n| {
                n.store.as_ref().is_some_and(|store| store.is_resident(k))
                    || self.touched.contains(&(n.generation, key))
            });
            let owner_gone = meta.open_turn.is_some_and(|owner| {
                self.gone_stores.contains(&owner)
                    && !self.log.truth().store_alive(owner).expect("no fault")
            });
            if let (true, None, false) = (owner_gone, meta.closure, held) {
                covered("lease ran out on a turn: interrupted at the next restore");
                self.interrupted[usize::from(key)] = true;
                // In a life of the restoring node's, not known yet.
                self.closed[usize::from(key)] = Some((
                    0,
                    Closure {
                        reason: CloseReason::Interrupted,
                        last: meta.durable_tail,
                    },
                ));
            }
        }
    }

    /// Hands `key` over to node `to` the way a host moves a session: the
    /// old writer drains, then lets the session go (evicted or removed).
    /// If it cannot (the log fails, a reader holds the session), the
    /// writer stays where it was.
    /// Closes `key` on its writer node through a handle. The closure must
    /// come after every append its incarnation accepted; a second close
    /// returns the first.
    fn close(&mut self, key: u8, reason: u8) -> Result<(), Violation> {
        let key = self.key_index(key);
        let node = self.writer[usize::from(key)];
        let k = self.keys[usize::from(key)].clone();
        let reason = CloseReason::from_tag(reason).unwrap_or(CloseReason::Done);
        let handle = match self.store(node).session(&k) {
            Ok(handle) => handle,
            Err(error) => return self.refused(key, "session to close", &error),
        };
        self.touch(node, key);
        let closure = match handle.close(reason) {
            Ok(closure) => closure,
            Err(error) => return self.refused(key, "close", &error),
        };
        self.closed_by(key, handle.incarnation().get(), reason, closure)
    }

    /// Checks and records a close of `key`'s `incarnation` that asked for
    /// `reason` and got `closure` (the first close's, if it was closed).
    fn closed_by(
        &mut self,
        key: u8,
        incarnation: u64,
        reason: CloseReason,
        closure: Closure,
    ) -> Result<(), Violation> {
        let k = self.keys[usize::from(key)].clone();
        let newest = self
            .accepted
            .iter()
            .filter(|a| a.key == key && a.incarnation == incarnation)
            .map(|a| a.position)
            .max();
        if newest.is_some_and(|newest| newest > closure.last) {
            return violation(
                "7. a closure ends before an append it accepted",
                format!("{k}: {closure}, yet position {newest:?} was accepted"),
            );
        }
        if let Some((earlier, first)) = self.closed[usize::from(key)] {
            if earlier == incarnation && first != closure {
                return violation(
                    "7. a second close changed the closure",
                    format!("{k}: {first}, then {closure}"),
                );
            }
        }
        covered(if closure.reason == reason {
            "close: closed"
        } else {
            "close: already closed"
        });
        self.closed[usize::from(key)] = Some((incarnation, closure));
        Ok(())
    }

    fn take_over(&mut self, key: u8, to: u8, evict: bool) -> Result<(), Violation> {
        let (key, to) = (self.key_index(key), self.node_index(to));
        let from = self.writer[usize::from(key)];
        if from == to {
            return Ok(());
        }
        self.forget_node(from, Some(key))?;
        if !self.drain(from) {
            return Ok(());
        }
        let k = self.keys[usize::from(key)].clone();
        let store = self.store(from);
        if evict {
            self.clock.advance(MAX_AGE + Duration::from_secs(1));
            store.trim_session(&k);
            if store.is_resident(&k) {
                return Ok(());
            }
        } else {
            store.remove_session(&k);
            if !self.drain(from) {
                return Ok(());
            }
        }
        self.writer[usize::from(key)] = to;
        covered(if evict {
            "take-over: evicted"
        } else {
            "take-over: removed"
        });
        Ok(())
    }

    fn start_reader(&mut self, node: u8, key: u8, from: u16, slot: u8) -> Result<(), Violation> {
        let (node, key) = (self.node_index(node), self.key_index(key));
        let k = self.keys[usize::from(key)].clone();
        let cursor = self.pick_cursor(node, key, from);
        let (meta, _) = self.truth(key, u64::MAX);
        let failed_reads = self.log.failed_reads();
        match self.store(node).catch_up(&cursor) {
            Ok(catch_up) => {
                covered("catch-up started");
                self.readers[usize::from(slot)] = Some(Reader {
                    node,
                    key,
                    catch_up: Some(catch_up),
                    last: cursor.position(),
                    incarnation: cursor.incarnation().map(|i| i.get()),
                    ended: false,
                });
                Ok(())
            }
            Err(Error::Gap(gap)) => {
                covered(match gap.reason {
                    GapReason::Trimmed => "catch-up start: Trimmed",
                    GapReason::Unavailable => "catch-up start: Unavailable",
                    GapReason::Reset => "catch-up start: Reset",
                    GapReason::Lost => "catch-up start: Lost",
                });
                self.check_latest(&gap, key, &format!("catch-up start on node {node}"))?;
                // The log vouches for the cursor: its life is recorded and
                // reaches the cursor's position. No gap is right then; a
                // failing read must not pass for "never heard of it".
                let vouched = match (cursor.incarnation(), &meta) {
                    (Some(incarnation), Some(meta)) => {
                        meta.life_of(incarnation).is_some_and(|(life, end)| {
                            cursor.position() + 1 >= life.first_position && cursor.position() <= end
                        })
                    }
                    (None, Some(meta)) => cursor.position() <= meta.durable_tail,
                    _ => cursor.position() == 0,
                };
                if vouched {
                    return violation(
                        "1. catch-up refused a cursor the log vouches for",
                        format!(
                            "node {node} cursor {k} @{}: {}",
                            cursor.position(),
                            describe(&gap)
                        ),
                    );
                }
                // A cursor past its life's durable end (a crash lost the
                // rest): `Lost` with exactly the positions past that end.
                let life_end = cursor
                    .incarnation()
                    .and_then(|i| meta.as_ref()?.life_of(i))
                    .map(|(_, end)| end);
                if let (GapReason::Lost, Some(end)) = (gap.reason, life_end) {
                    covered("catch-up start: Lost count judged");
                    if gap.missed != Some(cursor.position() - end) {
                        return violation(
                            "1. a Lost gap's count is not the positions past its life's end",
                            format!(
                                "node {node} cursor {k} @{}: {}; the life ends at {end}",
                                cursor.position(),
                                describe(&gap)
                            ),
                        );
                    }
                }
                Ok(())
            }
            // A log that could not answer is an error to retry, never a
            // gap; it is right only when a read really failed.
            Err(Error::Refused(Refusal::LogUnavailable { .. }))
                if self.log.failed_reads() > failed_reads =>
            {
                covered("catch-up start: the log could not answer");
                Ok(())
            }
            Err(other) => violation(
                "1. catch-up failed with something other than a gap",
                format!("{other}"),
            ),
        }
    }

    /// A cursor for a reader of `key` on `node`: the start cursor
    /// (`from == 0`), the node's current cursor (`1`), or an earlier
    /// append's (`from - 2`, modulo how many there are).
    fn pick_cursor(&self, node: u8, key: u8, from: u16) -> Cursor {
        let k = self.keys[usize::from(key)].clone();
        let cursors = &self.cursors[usize::from(key)];
        match from {
            0 => Cursor::start(k),
            1 => self.store(node).current_cursor(&k),
            // A cursor no append gave out: no incarnation, a small position.
            n if cursors.is_empty() => Cursor::new(k, None, Revision(1), u64::from(n) % 8),
            n => cursors[usize::from(n - 2) % cursors.len()].clone(),
        }
    }

    /// The ring tier's replay (sections 5 and 10): what it returns is a
    /// run of the reader's next positions, each an accepted event, with
    /// the same life rules as a catch-up. Its gaps are not judged here.
    fn replay(&mut self, node: u8, key: u8, from: u16) -> Result<(), Violation> {
        let (node, key) = (self.node_index(node), self.key_index(key));
        let cursor = self.pick_cursor(node, key, from);
        match self.store(node).replay_after_cursor(&cursor) {
            Ok(events) => {
                covered("replay returned events");
                let mut reader = Reader {
                    node,
                    key,
                    catch_up: None,
                    last: cursor.position(),
                    incarnation: cursor.incarnation().map(|i| i.get()),
                    ended: false,
                };
                for event in &events {
                    self.delivered(&mut reader, event)?;
                }
                Ok(())
            }
            Err(Error::Gap(_)) => {
                covered("replay: gap, unjudged");
                Ok(())
            }
            Err(other) => violation(
                "1. replay failed with something other than a gap",
                format!("{other}"),
            ),
        }
    }

    fn step_reader(&mut self, slot: u8, events: usize) -> Result<(), Violation> {
        let Some(mut reader) = self.readers[usize::from(slot)].take() else {
            return Ok(());
        };
        let result = self.advance(&mut reader, events);
        // A reader that broke an invariant is dropped: what it reads next
        // would only repeat the same violation under other names.
        if result.is_ok() {
            self.readers[usize::from(slot)] = Some(reader);
        }
        result.map(|_| ())
    }

    /// Up to `events` `try_next` calls; whether the reader is now at what
    /// it can read (`Empty`), as opposed to ended or still reading.
    fn advance(&self, reader: &mut Reader, events: usize) -> Result<bool, Violation> {
        if reader.ended {
            return Ok(false);
        }
        for _ in 0..events {
            let Some(catch_up) = reader.catch_up.as_mut() else {
                return Ok(false);
            };
            match catch_up.try_next() {
                Ok(event) => self.delivered(reader, &event)?,
                Err(TryNextError::Empty) => return Ok(true),
                Err(TryNextError::Gap(gap)) => {
                    reader.ended = true;
                    return self.check_gap(reader, &gap).map(|()| false);
                }
                // Everything through the closure, then the end: at rest.
                Err(TryNextError::Closed(closure)) => {
                    reader.ended = true;
                    if reader.last != closure.last {
                        return violation(
                            "7. a reader ended with the closure before its last position",
                            format!(
                                "reader on node {} of {}: read to {}, {closure}",
                                reader.node,
                                self.keys[usize::from(reader.key)],
                                reader.last
                            ),
                        );
                    }
                    covered("reader ended: closed");
                    return Ok(true);
                }
                Err(TryNextError::Ended) => {
                    reader.ended = true;
                    return Ok(false);
                }
            }
        }
        Ok(false)
    }

    /// Invariant 1 for one delivered event: the next position, an event
    /// someone appended there, and a change of incarnation only where the
    /// new life begins.
    fn delivered(&self, reader: &mut Reader, event: &Event<Payload>) -> Result<(), Violation> {
        let key = &self.keys[usize::from(reader.key)];
        let where_ = format!(
            "reader on node {} of {key} after {}",
            reader.node, reader.last
        );
        if event.key() != key {
            return violation(
                "1. a reader got another session's event",
                format!("{where_}: {:?}", event.key()),
            );
        }
        if event.position() != reader.last + 1 {
            return violation(
                "1. a reader skipped or repeated positions",
                format!("{where_}: got position {}", event.position()),
            );
        }
        let incarnation = event.incarnation().get();
        let Some(&index) = self.by_payload.get(&event.payload().text) else {
            return violation(
                "1. a reader got an event nobody appended",
                format!("{where_}: {:?}", event.payload().text),
            );
        };
        let accepted = &self.accepted[index];
        if (accepted.key, accepted.position, accepted.incarnation)
            != (reader.key, event.position(), incarnation)
        {
            return violation(
                "1. a reader got an event at another position or life than appended",
                format!(
                    "{where_}: {:?} read at {} inc {incarnation:#x}, appended at {} inc {:#x}",
                    event.payload().text,
                    event.position(),
                    accepted.position,
                    accepted.incarnation
                ),
            );
        }
        if let Some(previous) = reader.incarnation {
            let begins = self.first_position.get(&incarnation).copied();
            if previous != incarnation && begins != Some(event.position()) {
                return violation(
                    "1. a reader crossed into another life where that life does not begin",
                    format!(
                        "{where_}: position {} of inc {incarnation:#x} (its first: {begins:?}) after inc {previous:#x}",
                        event.position()
                    ),
                );
            }
        }
        if reader
            .incarnation
            .is_some_and(|previous| previous != incarnation)
        {
            covered("reader crossed a life boundary");
        }
        covered("reader got an event");
        reader.last = event.position();
        reader.incarnation = Some(incarnation);
        Ok(())
    }

    /// Invariant 1 for a gap that ended a reader: `Trimmed` only for what
    /// was archived, with that count; `Lost` only where the log holds no
    /// event of the reader's history, and for a hole with the hole's count.
    /// `Reset` and `Unavailable` mid-stream are not judged (module docs).
    fn check_gap(&self, reader: &Reader, gap: &Gap) -> Result<(), Violation> {
        let after = reader.last;
        let where_ = format!(
            "reader on node {} of {} after {after}: {}",
            reader.node,
            self.keys[usize::from(reader.key)],
            describe(gap)
        );
        self.check_latest(gap, reader.key, &where_)?;
        let (meta, _) = self.truth(reader.key, u64::MAX);
        let archived = meta.as_ref().map_or(0, |m| m.archived_through);
        // Where the reader's life ends in the log, if before its position:
        // a crash lost the rest of that life, which the reader had seen.
        let life_end = reader.incarnation.and_then(|incarnation| {
            let meta = meta.as_ref()?;
            let life = meta
                .lives
                .iter()
                .find(|life| life.incarnation.get() == incarnation)?;
            let (_, end) = meta.life_of(life.incarnation)?;
            (end < after).then_some(end)
        });
        match gap.reason {
            GapReason::Lost if life_end.is_some() => {
                covered("reader gap Lost: past its life's end judged");
                let end = life_end.unwrap_or_default();
                if gap.missed != Some(after - end) {
                    return violation(
                        "1. a Lost gap's count is not the positions past its life's end",
                        format!("{where_}; the reader's life ends at {end}"),
                    );
                }
            }
            GapReason::Trimmed if archived > after => {
                covered("reader gap Trimmed: archive count judged");
                if gap.missed != Some(archived - after) {
                    return violation(
                        "1. a Trimmed gap's count is not what was archived",
                        format!("{where_}; archived through {archived}"),
                    );
                }
            }
            GapReason::Trimmed => {
                return violation(
                    "1. a catch-up reported Trimmed for what was not archived",
                    format!("{where_}; archived through {archived}"),
                )
            }
            GapReason::Lost => {
                match self.record_at(reader.key, after + 1) {
                    Some(record) => match record.body {
                        RecordBody::Hole { .. } => {
                            covered("reader gap Lost: hole count judged");
                            let expected = record.last_position() - after;
                            if gap.missed != Some(expected) {
                                return violation(
                                    "1. a Lost gap's count is not the hole's",
                                    format!(
                                        "{where_}; hole {}..={}",
                                        record.position,
                                        record.last_position()
                                    ),
                                );
                            }
                        }
                        RecordBody::Event(_) => {
                            covered("reader gap Lost: event of another life judged");
                            let incarnation = record.incarnation.get();
                            let begins =
                                self.first_position.get(&incarnation) == Some(&(after + 1));
                            if reader.incarnation == Some(incarnation) || begins {
                                return violation(
                                "1. a Lost gap for a position the log holds",
                                format!("{where_}; the log has an event of inc {incarnation:#x} at {}", after + 1),
                            );
                            }
                        }
                    },
                    None => covered("reader gap Lost: past the log, unjudged"),
                }
            }
            // With a log, a removed session's events still reach the log
            // and catch-up serves its cursors from there (contract 10:
            // the only gaps left are positions no tier holds).
            GapReason::Reset => {
                let known = reader.incarnation.is_some_and(|incarnation| {
                    meta.as_ref().is_some_and(|m| {
                        m.lives
                            .iter()
                            .any(|life| life.incarnation.get() == incarnation)
                    })
                });
                if known {
                    return violation(
                        "1. a catch-up ended with Reset though the log records its life",
                        where_,
                    );
                }
                covered("reader gap Reset: life not in the log, unjudged")
            }
            GapReason::Unavailable => covered("reader gap Unavailable: unjudged"),
        }
        Ok(())
    }

    /// A gap's latest cursor is where to resume after reloading a snapshot
    /// (section 5): never behind what the log already holds, or the
    /// snapshot would miss events no reader is told about.
    fn check_latest(&self, gap: &Gap, key: u8, where_: &str) -> Result<(), Violation> {
        let (meta, _) = self.truth(key, u64::MAX);
        let tail = meta.as_ref().map_or(0, |m| m.durable_tail);
        covered("gap latest cursor judged");
        if gap.latest.position() < tail {
            return violation(
                "1. a gap's latest cursor is behind the log's tail",
                format!("{where_}: {}; log tail {tail}", describe(gap)),
            );
        }
        Ok(())
    }

    /// Invariant 3: `durable_position` is the settled watermark: never
    /// beyond what the log holds; every position at or below it is in the
    /// log as an event or recorded as lost. A position in a hole is never
    /// reported durable: `wait_durable` answers `Lost` with the hole's end.
    /// (The store's reading of contract section 10, "durable means held":
    /// one number cannot skip a hole, so the per-position answer is
    /// `wait_durable`'s, which is what every "durable when it returns"
    /// promise and the durable-only SSE gate use.)
    fn check_durable(&self, node: u8, key: u8) -> Result<(), Violation> {
        let k = &self.keys[usize::from(key)];
        let Ok(Some(durable)) = self.store(node).durable_position(k) else {
            return Ok(());
        };
        covered("durable_position judged");
        let (meta, records) = self.truth(key, 0);
        let tail = meta.as_ref().map_or(0, |m| m.durable_tail);
        let where_ = format!("node {node} {k}: durable_position {durable}");
        if durable > tail {
            return violation(
                "3. durable_position beyond what the log holds",
                format!("{where_}, log tail {tail}"),
            );
        }
        let archived = meta.as_ref().map_or(0, |m| m.archived_through);
        for hole in records.iter().filter(|r| {
            r.position <= durable
                && r.last_position() > archived
                && matches!(r.body, RecordBody::Hole { .. })
        }) {
            covered("durable_position over a hole: wait_durable judged");
            let position = hole.position.max(archived + 1);
            // The run of contiguous holes from this one: a session merges
            // adjacent holes it wrote (of one reason) into one range.
            let mut run_end = hole.last_position();
            for next in records
                .iter()
                .filter(|r| matches!(r.body, RecordBody::Hole { .. }))
            {
                if next.position == run_end + 1 {
                    run_end = next.last_position();
                }
            }
            match self.store(node).wait_durable(k, position, Duration::ZERO) {
                Err(DurableError::Lost { through, .. })
                    if (hole.last_position()..=run_end).contains(&through) => {}
                // The read went through the fault layer: inconclusive.
                Err(DurableError::Log(_)) => {}
                other => {
                    return violation(
                        "3. a position in a hole is reported durable",
                        format!(
                            "{where_}, hole {}..={}: wait_durable({position}) = {other:?}",
                            hole.position,
                            hole.last_position()
                        ),
                    )
                }
            }
        }
        Ok(())
    }

    /// The end of a run: heal the log, drain every node, then check that
    /// every accepted append reached the log (or was lost in a crash),
    /// that a catch-up from the start reads each session to its tail, the
    /// durable counters, and that removing every session frees its memory.
    pub fn finish(&mut self) -> Vec<Violation> {
        self.log.heal();
        for node in 0..self.nodes.len() as u8 {
            if !self.drain(node) {
                return vec![Violation {
                    invariant: "persistence never runs dry on a healthy log",
                    detail: format!(
                        "node {node} still has work after {} rounds",
                        DRAIN_ROUNDS + self.accepted.len()
                    ),
                }];
            }
        }
        if self.trace {
            println!("  (healed and drained every node)");
            self.print_nodes();
        }
        let mut found = Vec::new();
        found.extend(self.check_accepted_in_log().err());
        // Every reader still open reads on to the log's tail.
        for slot in 0..self.readers.len() {
            let Some(mut reader) = self.readers[slot].take() else {
                continue;
            };
            found.extend(self.read_on(&mut reader).err());
        }
        for key in 0..self.keys.len() as u8 {
            for node in 0..self.nodes.len() as u8 {
                found.extend(self.check_durable(node, key).err());
                found.extend(self.read_to_tail(node, key).err());
            }
        }
        found.extend(self.check_counters().err());
        found.extend(self.check_memory());
        found
    }

    /// Every accepted append is in the log (same life, same payload), or
    /// covered by a hole of its life, or archived, or lost with a store
    /// that crashed.
    fn check_accepted_in_log(&self) -> Result<(), Violation> {
        let mut logs = BTreeMap::new();
        for key in 0..self.keys.len() as u8 {
            let (meta, records) = self.truth(key, 0);
            let by_position: BTreeMap<u64, LogRecord> =
                records.into_iter().map(|r| (r.position, r)).collect();
            logs.insert(key, (meta, by_position));
        }
        let mut by_index: Vec<(&String, &usize)> = self.by_payload.iter().collect();
        by_index.sort_by_key(|(_, index)| **index);
        for (text, &index) in by_index {
            let accepted = &self.accepted[index];
            let (meta, records) = &logs[&accepted.key];
            let archived = meta.as_ref().map_or(0, |m| m.archived_through);
            if accepted.position <= archived {
                continue;
            }
            let covering = records
                .range(..=accepted.position)
                .next_back()
                .map(|(_, r)| r)
                .filter(|r| r.last_position() >= accepted.position);
            let crashed = self.crashed.contains(&accepted.generation);
            let what = format!(
                "{text} = {} position {} inc {:#x} (generation {}{})",
                self.keys[usize::from(accepted.key)],
                accepted.position,
                accepted.incarnation,
                accepted.generation,
                if crashed { ", crashed" } else { "" }
            );
            match covering {
                Some(record) if record.incarnation.get() == accepted.incarnation => {
                    if let RecordBody::Event(stored) = &record.body {
                        if stored.payload != text.as_bytes() {
                            return violation(
                                "2. the log holds another event at an accepted position of the same life",
                                format!("{what}; log has {:?}", String::from_utf8_lossy(&stored.payload)),
                            );
                        }
                    }
                }
                Some(_) | None if crashed => {}
                Some(record) => {
                    return violation(
                        "1. an accepted event was replaced in the log by another life",
                        format!("{what}; log has inc {:#x} there", record.incarnation.get()),
                    )
                }
                None => {
                    return violation(
                        "1. an accepted event never reached the log",
                        format!(
                            "{what}; log tail {}",
                            meta.as_ref().map_or(0, |m| m.durable_tail)
                        ),
                    )
                }
            }
        }
        Ok(())
    }

    /// A catch-up from the start on `node` reads `key` up to the log's
    /// tail (or ends with a gap the checks accept).
    fn read_to_tail(&self, node: u8, key: u8) -> Result<(), Violation> {
        let k = &self.keys[usize::from(key)];
        let store = self.store(node);
        let catch_up = match store.catch_up(&Cursor::start(k.clone())) {
            Ok(catch_up) => catch_up,
            Err(error) => {
                return violation(
                    "1. catch-up from the start cursor refused",
                    format!("node {node} {k}: {error}"),
                )
            }
        };
        let mut reader = Reader {
            node,
            key,
            catch_up: Some(catch_up),
            last: 0,
            incarnation: None,
            ended: false,
        };
        self.read_on(&mut reader)
    }

    /// Reads until the reader has nothing more; it must then be at the
    /// log's tail at least (every node has drained into the log).
    fn read_on(&self, reader: &mut Reader) -> Result<(), Violation> {
        let (meta, _) = self.truth(reader.key, u64::MAX);
        let tail = meta.as_ref().map_or(0, |m| m.durable_tail);
        let budget = tail as usize + 4 * self.shape.capacity + 16;
        let at_rest = self.advance(reader, budget)?;
        covered(if at_rest {
            "final catch-up: at rest"
        } else {
            "final catch-up: ended by a gap"
        });
        if at_rest && reader.last < tail {
            return violation(
                "1. a catch-up stops short of the log's tail",
                format!(
                    "reader on node {} of {}: read to {}, log tail {tail}",
                    reader.node,
                    self.keys[usize::from(reader.key)],
                    reader.last
                ),
            );
        }
        Ok(())
    }

    /// Invariant 6: a drained store's `stats().durable` agrees with what
    /// the log holds (or held, before archiving) from its incarnations.
    /// Only for live stores that saw no lost reply (a commit then landed
    /// uncounted).
    fn check_counters(&self) -> Result<(), Violation> {
        let mut written = self.archived.clone();
        for key in 0..self.keys.len() as u8 {
            for record in self.truth(key, 0).1 {
                let entry = written.entry(record.incarnation.get()).or_default();
                match record.body {
                    RecordBody::Event(_) => entry.0 += 1,
                    RecordBody::Hole { count, .. } => entry.1 += count,
                }
            }
        }
        let mut incarnations: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
        for accepted in &self.accepted {
            incarnations
                .entry(accepted.generation)
                .or_default()
                .insert(accepted.incarnation);
        }
        for (index, node) in self.nodes.iter().enumerate() {
            if self.unjudged.contains(&node.generation) {
                covered("counters: skipped after a lost reply");
                continue;
            }
            covered("counters: judged");
            let stats = node.store.as_ref().unwrap().stats();
            let durable = stats.durable.expect("every node has a durable tier");
            let (mut events, mut lost) = (0, 0);
            for incarnation in incarnations.get(&node.generation).into_iter().flatten() {
                let (e, l) = written.get(incarnation).copied().unwrap_or_default();
                events += e;
                lost += l;
            }
            if (durable.persisted_events, durable.lost_events) != (events, lost) {
                return violation(
                    "6. durable counters disagree with the log",
                    format!(
                        "node {index}: persisted_events {} lost_events {}, the log holds {events} events and {lost} hole positions of its incarnations",
                        durable.persisted_events, durable.lost_events
                    ),
                );
            }
            if durable.undurable_events > 0 && durable.fenced_sessions == 0 {
                return violation(
                    "6. undurable events left after a full drain",
                    format!("node {index}: {}", durable.undurable_events),
                );
            }
        }
        Ok(())
    }

    /// Invariant 4: with every handle and reader dropped and every session
    /// removed and drained, no store holds a session, a tombstone, a slot
    /// or a payload; and no dropped store keeps its payloads alive.
    fn check_memory(&mut self) -> Vec<Violation> {
        for slot in &mut self.handles {
            *slot = None;
        }
        for slot in &mut self.readers {
            *slot = None;
        }
        for node in 0..self.nodes.len() as u8 {
            for key in &self.keys {
                self.store(node).remove_session(key);
            }
            self.drain(node);
        }
        let mut found = Vec::new();
        for (index, node) in self.nodes.iter().enumerate() {
            let stats = node.store.as_ref().unwrap().stats();
            if stats.sessions != 0 || stats.dormant_sessions != 0 || stats.allocated_slots != 0 {
                found.push(Violation {
                    invariant: "4. sessions or slots left after removing every session",
                    detail: format!(
                        "node {index}: sessions {} dormant {} allocated_slots {}",
                        stats.sessions, stats.dormant_sessions, stats.allocated_slots
                    ),
                });
                break;
            }
            let kept = stats
                .durable
                .as_ref()
                .map_or(0, |durable| durable.kept_bytes);
            if kept != 0 {
                found.push(Violation {
                    invariant: "4. kept undurable bytes left after removing every session",
                    detail: format!("node {index}: kept_bytes {kept}"),
                });
                break;
            }
        }
        let live: BTreeSet<u32> = self.nodes.iter().map(|n| n.generation).collect();
        let (mut in_live, mut in_dropped) = (Vec::new(), Vec::new());
        for (generation, probe) in self.probes.iter().enumerate() {
            let alive = Arc::strong_count(probe) - 1;
            if alive > 0 {
                let list = if live.contains(&(generation as u32)) {
                    &mut in_live
                } else {
                    &mut in_dropped
                };
                list.push(format!("generation {generation}: {alive}"));
            }
        }
        if !in_live.is_empty() {
            found.push(Violation {
                invariant: "4. removed sessions' events stay in memory after the drain",
                detail: format!(
                    "payloads still alive in live stores: {}",
                    in_live.join(", ")
                ),
            });
        }
        if !in_dropped.is_empty() {
            found.push(Violation {
                invariant: "4. a dropped store's events stay in memory",
                detail: format!(
                    "payloads still alive in dropped stores: {}",
                    in_dropped.join(", ")
                ),
            });
        }
        found
    }
}

fn describe(gap: &Gap) -> String {
    format!(
        "gap {:?} missed {:?} latest @{}",
        gap.reason,
        gap.missed,
        gap.latest.position()
    )
}
