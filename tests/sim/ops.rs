//! The operations a run is made of, and how a seed draws them.
//!
//! Every operation names keys, nodes, handle and reader slots by small
//! indices, never by something an earlier operation created, so that any
//! subsequence of a run is still a run (shrinking removes operations
//! freely). An operation whose target does not exist is a no-op.

use proptest::prelude::Rng;
use proptest::test_runner::{RngAlgorithm, TestRng};

/// Handle slots and reader slots a run may hold at once.
pub const HANDLE_SLOTS: u8 = 4;
pub const READER_SLOTS: u8 = 4;

/// The shape of a run, drawn from its seed before the operations.
#[derive(Debug, Clone)]
pub struct Shape {
    pub nodes: u8,
    pub tenants: u8,
    pub sessions: u8,
    pub capacity: usize,
    pub max_batch_events: usize,
    pub auto_sweep: bool,
    /// `DurableOptions::undurable_budget`: none (a lap is a hole at once),
    /// about one segment's worth, or the default.
    pub undurable_budget: usize,
}

impl Shape {
    pub fn keys(&self) -> u8 {
        self.tenants * self.sessions
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `store.append` on the key's writer node.
    Append {
        key: u8,
    },
    /// `store.append_batch` of `len` events on the key's writer node.
    AppendBatch {
        key: u8,
        len: u8,
    },
    /// `store.session(key)` on the key's writer node, kept in `slot`.
    OpenHandle {
        key: u8,
        slot: u8,
    },
    /// An append through the handle in `slot`, if its node still writes
    /// its key.
    HandleAppend {
        slot: u8,
    },
    DropHandle {
        slot: u8,
    },
    /// `remove_session` on `node`.
    Remove {
        node: u8,
        key: u8,
    },
    Sweep {
        node: u8,
    },
    Trim {
        node: u8,
        key: u8,
    },
    AdvanceClock {
        secs: u16,
    },
    /// One `persist_round` on `node`.
    Persist {
        node: u8,
    },
    /// Drops the node's store without writing anything more, then builds
    /// a new one over the same log.
    Crash {
        node: u8,
    },
    /// Drains the node's persistence, then drops and rebuilds it.
    Restart {
        node: u8,
    },
    /// Hands `key`'s writer over to node `to`: the old writer node drains
    /// and lets the session go (evicted to a tombstone if `evict`, else
    /// removed), then `to` writes it.
    TakeOver {
        key: u8,
        to: u8,
        evict: bool,
    },
    /// `archive_before(key, last - back)` on `node` (an operator's call:
    /// any node), where `last` is the key's highest accepted position.
    Archive {
        node: u8,
        key: u8,
        back: u8,
    },
    /// Starts a catch-up on `node` in `slot`: from the start cursor
    /// (`from == 0`), the node's current cursor (`from == 1`), or a cursor
    /// of an earlier append (`from - 2`, modulo how many there are).
    StartReader {
        node: u8,
        key: u8,
        from: u16,
        slot: u8,
    },
    /// Up to `events` `try_next` calls on the reader in `slot`.
    StepReader {
        slot: u8,
        events: u8,
    },
    DropReader {
        slot: u8,
    },
    /// `replay_after_cursor` on `node`, from a cursor picked as for
    /// `StartReader`.
    Replay {
        node: u8,
        key: u8,
        from: u16,
    },
    /// Checks `durable_position` on `node` against the log.
    CheckDurable {
        node: u8,
        key: u8,
    },
    /// `SessionHandle::close` on the key's writer node, with the reason
    /// of tag `reason`.
    Close {
        key: u8,
        reason: u8,
    },
    /// `reopen_session` on the key's writer node: a closed key opened again
    /// at once (an open one is left as it is).
    Reopen {
        key: u8,
    },
    /// The handle in `slot` becomes a `Turn` (`into_turn`): released while
    /// its node lives, it closes its session `Interrupted`; its node
    /// crashing or restarting leaves the turn open in the log.
    OpenTurn {
        slot: u8,
    },
    /// Over a shared log, leases run out: the lease of `node`'s store (as
    /// if it stalled longer than its lease) and those of every store gone
    /// (crashed or restarted). A turn they left open is then closed
    /// `Interrupted` by the next node that restores its session. Nothing
    /// on a single node's log, which has no leases.
    ExpireLeases {
        node: u8,
    },
    /// The log refuses appends until healed.
    FailAppends,
    /// The log applies the next append and loses its reply.
    LoseReply,
    /// The log fails the next `count` reads.
    FailReads {
        count: u8,
    },
    Heal,
}

pub fn rng_for(seed: u64) -> TestRng {
    let mut bytes = [0u8; 32];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(
            &(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_le_bytes(),
        );
    }
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

fn below(rng: &mut TestRng, n: u64) -> u64 {
    rng.next_u64() % n.max(1)
}

fn pick<T: Copy>(rng: &mut TestRng, items: &[T]) -> T {
    items[below(rng, items.len() as u64) as usize]
}

pub fn shape(rng: &mut TestRng) -> Shape {
    Shape {
        nodes: 1 + below(rng, 3) as u8,
        tenants: 2 + below(rng, 3) as u8,
        sessions: 2 + below(rng, 3) as u8,
        capacity: pick(rng, &[4, 8, 16]),
        max_batch_events: pick(rng, &[1, 3, 8, 64]),
        auto_sweep: below(rng, 2) == 0,
        undurable_budget: pick(rng, &[0, 1024, 64 << 20]),
    }
}

/// `steps` operations for a run of `shape`. Weights keep appends and
/// reads the common case, with faults and restarts rare enough that
/// sessions build up history between them.
pub fn generate(rng: &mut TestRng, shape: &Shape, steps: usize) -> Vec<Op> {
    let keys = u64::from(shape.keys());
    let nodes = u64::from(shape.nodes);
    // A run persists often or rarely, so some runs lap their rings.
    let persist_weight = pick(rng, &[2u64, 8, 20]);
    let fault_weight = pick(rng, &[0u64, 1, 3]);
    let table: [(u64, u8); 27] = [
        (30, 0), // append
        (6, 1),  // batch
        (3, 2),  // open handle
        (10, 3), // handle append
        (2, 4),  // drop handle
        (3, 5),  // remove
        (2, 6),  // sweep
        (3, 7),  // trim
        (3, 8),  // clock
        (persist_weight, 9),
        (1, 10),  // crash
        (1, 11),  // restart
        (2, 12),  // take-over
        (1, 13),  // archive
        (5, 14),  // start reader
        (12, 15), // step reader
        (1, 16),  // drop reader
        (4, 17),  // durable check
        (fault_weight, 18),
        (fault_weight, 19),
        (fault_weight, 20),
        (fault_weight * 2 + 1, 21), // heal
        (3, 22),                    // replay
        (1, 23),                    // close
        (1, 24),                    // reopen
        (2, 25),                    // turn
        (1, 26),                    // leases run out
    ];
    let total: u64 = table.iter().map(|(w, _)| w).sum();
    (0..steps)
        .map(|_| {
            let mut roll = below(rng, total);
            let kind = table
                .iter()
                .find(|(w, _)| {
                    if roll < *w {
                        true
                    } else {
                        roll -= w;
                        false
                    }
                })
                .map_or(0, |(_, kind)| *kind);
            let key = below(rng, keys) as u8;
            let node = below(rng, nodes) as u8;
            let handle = below(rng, u64::from(HANDLE_SLOTS)) as u8;
            let reader = below(rng, u64::from(READER_SLOTS)) as u8;
            match kind {
                0 => Op::Append { key },
                1 => Op::AppendBatch {
                    key,
                    len: 1 + below(rng, shape.capacity as u64 + 1) as u8,
                },
                2 => Op::OpenHandle { key, slot: handle },
                3 => Op::HandleAppend { slot: handle },
                4 => Op::DropHandle { slot: handle },
                5 => Op::Remove { node, key },
                6 => Op::Sweep { node },
                7 => Op::Trim { node, key },
                8 => Op::AdvanceClock {
                    secs: pick(rng, &[1u16, 10, 70, 700]),
                },
                9 => Op::Persist { node },
                10 => Op::Crash { node },
                11 => Op::Restart { node },
                12 => Op::TakeOver {
                    key,
                    to: node,
                    evict: below(rng, 2) == 0,
                },
                13 => Op::Archive {
                    node,
                    key,
                    back: below(rng, 6) as u8,
                },
                14 => Op::StartReader {
                    node,
                    key,
                    from: below(rng, 64) as u16,
                    slot: reader,
                },
                15 => Op::StepReader {
                    slot: reader,
                    events: 1 + below(rng, 8) as u8,
                },
                16 => Op::DropReader { slot: reader },
                17 => Op::CheckDurable { node, key },
                18 => Op::FailAppends,
                19 => Op::LoseReply,
                20 => Op::FailReads {
                    count: 1 + below(rng, 3) as u8,
                },
                21 => Op::Heal,
                23 => Op::Close {
                    key,
                    reason: 1 + below(rng, 4) as u8,
                },
                24 => Op::Reopen { key },
                25 => Op::OpenTurn { slot: handle },
                26 => Op::ExpireLeases { node },
                _ => Op::Replay {
                    node,
                    key,
                    from: below(rng, 64) as u16,
                },
            }
        })
        .collect()
}
