//! The 10 000-session append setup shared by `append` (its
//! `append_10k_sessions` case) and `spread10k`, so that both time the same
//! thing with one implementation: 10 000 sessions of capacity 128, every
//! session full, the designs populated into one heap or alone, keys visited
//! round robin or in a fixed pseudo-random order, the heap aged by whole
//! turnover cycles before any timing, and designs timed in whole-cycle
//! turns. docs/benchmark-history.md ("10 000 sessions: why the two methods
//! disagreed") has why each of these matters.
//!
//! Not a module of `support` (several targets use `support` without
//! `baselines`, which this needs): a target includes it with
//! `#[path = "support/spread.rs"] mod spread;` next to `mod baselines;` and
//! `mod support;`.

// Shared by two bench targets; each uses a subset.
#![allow(dead_code)]

use std::cell::Cell;
use std::hint::black_box;
use std::time::{Duration, Instant};

use livereplay::{Config, ReplayStore, Revision, SessionHandle, SessionKey};

use crate::baselines::ReferenceStore;

pub const SESSIONS: usize = 10_000;
pub const CAPACITY: usize = 128;

/// Appends per turnover cycle: with capacity 128 a session's ring is cut
/// into segments of 64 positions, and round robin brings every session to a
/// segment boundary in the same lap, so one lap in 64 allocates and drops a
/// segment on every append. A timing that covers whole cycles weighs those
/// laps as a long run does.
pub const CYCLE: u64 = SESSIONS as u64 * 64;

/// Turnover cycles per design before timing in the measurement on which
/// criterion and whole-cycle turns agree (`SPREAD_AGE=6` in
/// docs/benchmark-history.md, "10 000 sessions: why the two methods disagreed").
pub const AGE_CYCLES: u64 = 6;

pub fn key(i: usize) -> SessionKey {
    SessionKey::new("acme", &format!("chat-{i:06}")).expect("a valid key")
}

/// The reference design keys sessions by one string: the same text.
pub fn reference_id(i: usize) -> String {
    format!("acme/chat-{i:06}")
}

/// A design whose append is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Design {
    /// `ReplayStore::append` by key.
    OursKey,
    /// `SessionHandle::append`.
    OursHandle,
    /// `ReferenceStore::append` by session id.
    Reference,
}

impl Design {
    /// `ours_key`, `ours_handle` or `reference`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "ours_key" => Some(Self::OursKey),
            "ours_handle" => Some(Self::OursHandle),
            "reference" => Some(Self::Reference),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::OursKey => "ours_key",
            Self::OursHandle => "ours_handle",
            Self::Reference => "reference",
        }
    }

    pub fn is_ours(self) -> bool {
        self != Self::Reference
    }
}

/// What is populated before timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Only the measured design.
    Alone,
    /// Both stores, session by session, into one heap.
    Interleaved,
    /// Both stores, ours first then the reference, each contiguous.
    Blocks,
}

impl Layout {
    /// `alone`, `interleaved` or `blocks`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "alone" => Some(Self::Alone),
            "interleaved" => Some(Self::Interleaved),
            "blocks" => Some(Self::Blocks),
            _ => None,
        }
    }
}

/// The order in which sessions are visited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// 0, 1, ..., 9 999, 0, ...: on a freshly filled heap this visits
    /// memory in the order it was laid out, and brings every session to a
    /// segment boundary in the same lap.
    RoundRobin,
    /// A fixed pseudo-random sequence, the same for every design, process
    /// and target.
    Random,
}

impl Order {
    /// `round_robin` or `random`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "round_robin" => Some(Self::RoundRobin),
            "random" => Some(Self::Random),
            _ => None,
        }
    }
}

/// xorshift64, fixed seed: 2^20 uniform session indices.
pub fn random_order() -> Vec<u32> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..1 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % SESSIONS as u64) as u32
        })
        .collect()
}

/// The populated stores and the keys to visit them by.
pub struct Stores {
    pub keys: Vec<SessionKey>,
    pub ids: Vec<String>,
    /// `Order::Random`: the sessions visited, in turn (read cyclically; the
    /// same sequence for every design). Empty: round robin.
    pub order: Vec<u32>,
    pub ours: Option<(ReplayStore<u64>, Vec<SessionHandle<u64>>)>,
    pub reference: Option<ReferenceStore<u64>>,
}

fn new_ours(keys: &[SessionKey]) -> (ReplayStore<u64>, Vec<SessionHandle<u64>>) {
    let store = ReplayStore::<u64>::new(Config::default().with_capacity(CAPACITY)).expect("config");
    let handles = keys
        .iter()
        .map(|key| store.session(key).expect("session"))
        .collect();
    (store, handles)
}

fn fill_ours(handle: &SessionHandle<u64>) {
    for i in 0..CAPACITY as u64 {
        handle.append(Revision(1), i).expect("append");
    }
}

fn fill_reference(reference: &ReferenceStore<u64>, id: &str) {
    for i in 0..CAPACITY as u64 {
        reference.append(id, 1, i);
    }
}

fn new_reference() -> ReferenceStore<u64> {
    ReferenceStore::new(CAPACITY, Duration::from_secs(120))
}

/// Builds and fills the stores `layout` asks for (with `Layout::Alone`,
/// only `measured`'s), then the key order. Allocation order: keys, ids,
/// stores, order.
pub fn populate(layout: Layout, measured: Design, order: Order) -> Stores {
    let keys: Vec<SessionKey> = (0..SESSIONS).map(key).collect();
    let ids: Vec<String> = (0..SESSIONS).map(reference_id).collect();
    let (ours, reference) = match layout {
        Layout::Alone if measured.is_ours() => {
            let ours = new_ours(&keys);
            ours.1.iter().for_each(fill_ours);
            (Some(ours), None)
        }
        Layout::Alone => {
            let reference = new_reference();
            ids.iter().for_each(|id| fill_reference(&reference, id));
            (None, Some(reference))
        }
        Layout::Interleaved => {
            let ours = new_ours(&keys);
            let reference = new_reference();
            for (handle, id) in ours.1.iter().zip(&ids) {
                fill_ours(handle);
                fill_reference(&reference, id);
            }
            (Some(ours), Some(reference))
        }
        Layout::Blocks => {
            let ours = new_ours(&keys);
            ours.1.iter().for_each(fill_ours);
            let reference = new_reference();
            ids.iter().for_each(|id| fill_reference(&reference, id));
            (Some(ours), Some(reference))
        }
    };
    let order = match order {
        Order::RoundRobin => Vec::new(),
        Order::Random => random_order(),
    };
    Stores {
        keys,
        ids,
        order,
        ours,
        reference,
    }
}

/// `iters` appends of one design.
pub type Run<'a> = Box<dyn FnMut(u64) + 'a>;

impl Stores {
    /// The next session to visit, advancing `turn` (round robin, or the
    /// next entry of `order`).
    pub fn next_session(&self, turn: &Cell<usize>) -> usize {
        if self.order.is_empty() {
            let t = (turn.get() + 1) % SESSIONS;
            turn.set(t);
            t
        } else {
            let t = (turn.get() + 1) % self.order.len();
            turn.set(t);
            self.order[t] as usize
        }
    }

    /// Every populated store's design (ours by key), in the order [`age`]
    /// runs them.
    pub fn populated(&self) -> Vec<Design> {
        let mut designs = Vec::new();
        if self.ours.is_some() {
            designs.push(Design::OursKey);
        }
        if self.reference.is_some() {
            designs.push(Design::Reference);
        }
        designs
    }
}

/// `run(iters)` for `design`: `iters` appends, keys in the stores' order
/// from where `turn` stopped.
pub fn runner<'a>(stores: &'a Stores, design: Design, turn: &'a Cell<usize>) -> Run<'a> {
    let next = move || stores.next_session(turn);
    match design {
        Design::OursKey => {
            let (store, _) = stores.ours.as_ref().expect("ours populated");
            Box::new(move |n| {
                for i in 0..n {
                    black_box(
                        store
                            .append(&stores.keys[next()], Revision(1), i)
                            .expect("append"),
                    );
                }
            })
        }
        Design::OursHandle => {
            let (_, handles) = stores.ours.as_ref().expect("ours populated");
            Box::new(move |n| {
                for i in 0..n {
                    black_box(handles[next()].append(Revision(1), i).expect("append"));
                }
            })
        }
        Design::Reference => {
            let reference = stores.reference.as_ref().expect("reference populated");
            Box::new(move |n| {
                for i in 0..n {
                    black_box(reference.append(&stores.ids[next()], 1, i));
                }
            })
        }
    }
}

/// `cycles` turnover cycles of appends on every populated design (ours by
/// key, then the reference, cycle after cycle, on one counter), so the
/// allocator's free lists are as a long run leaves them whatever the method
/// (both designs slow down as their heap ages; see docs/benchmark-history.md,
/// "10 000 sessions: why the two methods disagreed").
pub fn age(stores: &Stores, cycles: u64) {
    let aging = Cell::new(0);
    let designs = stores.populated();
    for _ in 0..cycles {
        for &design in &designs {
            runner(stores, design, &aging)(CYCLE);
        }
    }
}

/// Designs taking turns, each turn `per_turn` appends (a whole turnover
/// cycle: `CYCLE`), `rounds` rounds, the first design of each round
/// rotating. Returns, per contender, the mean time per append of each of
/// its turns (ns).
pub fn take_turns(
    contenders: &mut [(&str, Run<'_>)],
    rounds: usize,
    per_turn: u64,
) -> Vec<Vec<f64>> {
    let mut per: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
    for round in 0..rounds {
        for turn in 0..contenders.len() {
            let index = (turn + round) % contenders.len();
            let start = Instant::now();
            (contenders[index].1)(per_turn);
            per[index].push(start.elapsed().as_nanos() as f64 / per_turn as f64);
        }
    }
    per
}

/// Per contender, its turns' ratio to the first contender's turns of the
/// same round.
pub fn ratios_to_first(per: &[Vec<f64>]) -> Vec<Vec<f64>> {
    per.iter()
        .map(|times| times.iter().zip(&per[0]).map(|(t, f)| t / f).collect())
        .collect()
}

/// Prints what [`take_turns`] measured under `heading`: per contender the
/// mean per append and its ratio to the first, `median (min..max)` over
/// the rounds; with `trace`, every turn too.
pub fn print_turns(heading: &str, names: &[&str], per: &[Vec<f64>], trace: bool) {
    println!("{heading}");
    let ratios = ratios_to_first(per);
    for (index, name) in names.iter().enumerate() {
        if trace {
            let turns: Vec<String> = per[index].iter().map(|ns| format!("{ns:.0}")).collect();
            println!(
                "  {name:<12} turn by turn (ns per append): {}",
                turns.join(" ")
            );
        }
        println!(
            "  {name:<12} mean per append {}   ratio to first {}",
            crate::support::spread(&per[index], |ns| format!("{ns:.1} ns")),
            crate::support::spread(&ratios[index], |r| format!("{r:.2}")),
        );
    }
}
