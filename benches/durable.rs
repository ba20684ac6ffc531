//! The durable tier (issue 9) measured in one run, each figure against a
//! baseline measured in the same process where one compares:
//!
//! 1. **Append latency with the persister on.** p50/p99/p99.9/max of
//!    back-to-back appends through a handle (64-byte `Vec<u8>` payloads,
//!    `RawBytes` codec) on a plain store (persister off), a store over a
//!    `MemoryLog` and one over a `RedbLog` (`Immediate`). The designs take
//!    turns in rounds, so a change in the machine's load hits them alike.
//!    Each round appends half the ring's capacity, and the next round of a
//!    durable design starts only once the persister has written the last one
//!    (`wait_durable`, untimed): the appender never laps the persister, which
//!    `stats().durable.lost_events == 0` confirms. The rounds are long enough
//!    (16 384 appends) that the persister runs during them; the share of each
//!    round it wrote before the round ended is printed.
//! 2. **Sustained persist throughput to redb.** A writer appends N events (to
//!    1 session, and round-robin to 64), and the clock stops when
//!    `wait_durable` says every session's last position is in the log.
//!    `Immediate`, `Journaled` and `Deferred` durability, `DurableOptions` default batch
//!    (8192 events per commit) and a batch of 1 (one commit per event, fewer
//!    events); a `MemoryLog` as the persister's ceiling. Rings are sized to
//!    hold every event, so nothing is lapped: it is the log's rate, not the
//!    ring's. Prints commits and events per commit.
//! 3. **Catch-up** of 100 000 events of one session from the log (ring
//!    capacity 2048, so all but the last 2048 come from disk), redb against
//!    a `MemoryLog`; then, once `is_live()`, append-to-delivery latency of
//!    the caught-up reader against a plain subscription on the same store
//!    (to a session holding as many events).
//! 4. **Reopen to first served cursor** with 10 000 sessions in the log:
//!    `RedbLog::open` + build the store + `catch_up` of a cursor issued
//!    before the restart + its first event; against a log of one session.
//! 5. **Bytes on disk per event** (file size / events) after the
//!    throughput runs, open and after the clean close.
//! 6. **What `wake_on_dirty` costs an append.** Sparse appends (300 µs
//!    apart, spinning in between), so that each finds its session clean
//!    and the persister idle: the append that queues the session, and with
//!    `wake_on_dirty` also unparks the persister. Persister off / on
//!    (default) / on with `wake_on_dirty`, designs taking turns.
//!
//! 7. **A burst into a healthy log** (issue 21, item 11). One writer
//!    appends 1 000 000 events (64-byte payloads) round-robin over 100
//!    sessions of capacity 64, as fast as it can, into redb (`Immediate`),
//!    persister on; the clock stops when every event is durable. Without a
//!    budget for undurable events (`undurable_budget(0)`: what the rings
//!    hold is the bound, as before issue 21) against the default 64 MiB and
//!    256 MiB: events lost as holes, appends/s, time until durable, and the
//!    highest kept bytes a sampler saw (every millisecond).
//!
//! (Bytes per tombstone are in `examples/alloc_profile.rs`, which has the
//! counting allocator.)
//!
//! Run: `cargo bench --features redb --bench durable`. Quick mode
//! (`LIVEREPLAY_BENCH_QUICK=1`, or run without `--bench` as `cargo test
//! --benches` does) uses small sizes and writes no CSV. A name filter that
//! matches neither `append_latency`, `persist_throughput`, `catch_up`,
//! `reopen`, `wake_cost` nor `burst` skips that part. Every wait is bounded: a stuck run fails
//! instead of hanging. The log files live in a directory under the system
//! temp dir, removed at the end (also when a part panics).

mod support;

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use livereplay::durable::{DurableLog, MemoryLog, RedbDurability, RedbLog, RedbOptions};
use livereplay::{
    CatchUp, Config, Cursor, DurableOptions, DurableStats, RawBytes, ReplayStore, Revision,
    SessionHandle, SessionKey, Subscription,
};

use support::{at_quantile, nanos, nanos_since, per_second, spread, Percentiles, Settings};

type Store = ReplayStore<Vec<u8>>;

const PAYLOAD_BYTES: usize = 64;
/// No single wait in this bench lasts longer.
const WAIT_LIMIT: Duration = Duration::from_secs(60);
/// How long the writer leaves a reader to park between two samples.
const PARK_PAUSE: Duration = Duration::from_micros(50);

/// A directory under the system temp dir for this run's log files, removed
/// when dropped (also while a panic unwinds).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path =
            std::env::temp_dir().join(format!("livereplay-bench-durable-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create the bench's temp dir");
        Self(path)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The figures of the run: a CSV of `scenario,design,metric,value` and the
/// quantiles of the append latency distributions.
struct Out {
    csv: String,
    quantiles: String,
}

impl Out {
    fn row(&mut self, scenario: &str, design: &str, metric: &str, value: f64) {
        // Design names contain commas: quoted.
        let _ = writeln!(self.csv, "{scenario},\"{design}\",{metric},{value:.3}");
    }
}

fn key(name: &str) -> SessionKey {
    SessionKey::new("acme", name).expect("a valid key")
}

fn session_key(i: usize) -> SessionKey {
    key(&format!("chat-{i:06}"))
}

/// A 64-byte payload carrying `value` in its first 8 bytes.
fn payload(value: u64) -> Vec<u8> {
    let mut bytes = vec![0xA5; PAYLOAD_BYTES];
    bytes[..8].copy_from_slice(&value.to_le_bytes());
    bytes
}

fn value_of(payload: &[u8]) -> u64 {
    u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"))
}

fn open_redb(path: &Path, durability: RedbDurability) -> Arc<RedbLog> {
    Arc::new(
        RedbLog::open_with(path, RedbOptions::new().durability(durability))
            .expect("open the redb log"),
    )
}

fn durable_store(log: Arc<dyn DurableLog>, config: Config, options: DurableOptions) -> Arc<Store> {
    Arc::new(
        Store::builder()
            .config(config)
            .durable(log, RawBytes)
            .durable_options(options)
            .build()
            .expect("build the store"),
    )
}

fn durable_stats(store: &Store) -> DurableStats {
    store.stats().durable.expect("a store with a durable log")
}

/// Waits until `position` of `key` is durable; fails the run after
/// `WAIT_LIMIT`.
fn settle(store: &Store, key: &SessionKey, position: u64) {
    if let Err(error) = store.wait_durable(key, position, WAIT_LIMIT) {
        panic!(
            "{key}: position {position} not durable: {error}; {:?}",
            store.stats().durable
        );
    }
}

fn millis(ns: f64) -> String {
    format!("{:.2} ms", ns / 1e6)
}

// ---------------------------------------------------------------------------
// 1. Append latency, persister off / on (MemoryLog) / on (RedbLog).

struct LatencyDesign {
    name: &'static str,
    store: Arc<Store>,
    handle: SessionHandle<Vec<u8>>,
    durable: bool,
    /// The store's persister thread (Linux task id), to read its CPU time.
    persister: Option<u64>,
}

/// The task ids of this process's persister threads (Linux; empty
/// elsewhere). The thread is named `livereplay-persister`, which the
/// kernel truncates to 15 bytes.
fn persister_tasks() -> std::collections::BTreeSet<u64> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Default::default();
    };
    tasks
        .filter_map(|task| {
            let task = task.ok()?;
            let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
            comm.starts_with("livereplay-pers")
                .then(|| task.file_name().to_str()?.parse().ok())
                .flatten()
        })
        .collect()
}

/// Nanoseconds task `tid` has run on a CPU (`/proc/.../schedstat`), if
/// readable.
fn cpu_nanos(tid: u64) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn append_latency(settings: &Settings, temp: &TempDir, out: &mut Out) {
    const CAPACITY: usize = 32_768;
    let round_len = settings.size(CAPACITY / 2, 2_048);
    let rounds = settings.size(64, 4);
    println!(
        "\n== 1. append latency through a handle, 64-byte Vec<u8> payloads, persister off / on: {rounds} rounds of {round_len} back-to-back appends per design, designs taking turns (ring capacity {CAPACITY}; a durable design's next round waits until the last one is durable, untimed) =="
    );
    let key = session_key(0);
    let config = Config::default().with_capacity(CAPACITY);
    let redb_log = open_redb(&temp.file("latency.redb"), RedbDurability::Immediate);
    let make = |name, log: Option<Arc<dyn DurableLog>>| {
        let durable = log.is_some();
        let before = persister_tasks();
        let store = match log {
            Some(log) => durable_store(log, config.clone(), DurableOptions::default()),
            None => Arc::new(Store::new(config.clone()).expect("config")),
        };
        // The new thread names itself once it runs: look for a while.
        let mut persister = None;
        let looking_since = Instant::now();
        while durable && persister.is_none() && looking_since.elapsed() < Duration::from_secs(1) {
            let new: Vec<u64> = persister_tasks().difference(&before).copied().collect();
            persister = (new.len() == 1).then(|| new[0]);
            thread::sleep(Duration::from_millis(1));
        }
        let handle = store.session(&key).expect("session");
        LatencyDesign {
            name,
            store,
            handle,
            durable,
            persister,
        }
    };
    let designs = [
        make("off (plain store)", None),
        make(
            "on, MemoryLog",
            Some(Arc::new(MemoryLog::new()) as Arc<dyn DurableLog>),
        ),
        make(
            "on, RedbLog Immediate",
            Some(redb_log as Arc<dyn DurableLog>),
        ),
    ];
    // Start full, so the ring overwrites as in the steady state.
    for design in &designs {
        for i in 0..CAPACITY as u64 {
            design
                .handle
                .append(Revision(1), payload(i))
                .expect("append");
        }
        if design.durable {
            settle(&design.store, &key, CAPACITY as u64);
        }
    }
    let before: Vec<Option<DurableStats>> =
        designs.iter().map(|d| d.store.stats().durable).collect();

    let mut latencies: Vec<Vec<u64>> = designs
        .iter()
        .map(|_| Vec::with_capacity(rounds * round_len))
        .collect();
    // Per round: (p99, p99.9), for paired ratios.
    let mut per_round: Vec<Vec<(u64, u64)>> = designs.iter().map(|_| Vec::new()).collect();
    // Events the persister had written when the round's last append returned.
    let mut overlapped = vec![0u64; designs.len()];
    // Wall time of the rounds, and the persister's CPU time during them.
    let mut round_time = vec![Duration::ZERO; designs.len()];
    let mut persister_cpu: Vec<Option<u64>> =
        designs.iter().map(|d| d.persister.and(Some(0))).collect();
    let mut payloads: Vec<Vec<u8>> = Vec::with_capacity(round_len);
    let mut round_samples: Vec<u64> = Vec::with_capacity(round_len);
    for round in 0..rounds {
        for turn in 0..designs.len() {
            let index = (turn + round) % designs.len();
            let design = &designs[index];
            payloads.extend((0..round_len as u64).map(payload));
            let durable_at_start = design
                .store
                .durable_position(&key)
                .expect("durable position")
                .unwrap_or(0);
            round_samples.clear();
            let cpu_at_start = design.persister.and_then(cpu_nanos);
            let round_start = Instant::now();
            for p in payloads.drain(..) {
                let start = Instant::now();
                black_box(design.handle.append(Revision(1), p).expect("append"));
                round_samples.push(nanos(start.elapsed()));
            }
            round_time[index] += round_start.elapsed();
            let cpu_at_end = design.persister.and_then(cpu_nanos);
            persister_cpu[index] = match (persister_cpu[index], cpu_at_start, cpu_at_end) {
                (Some(total), Some(start), Some(end)) => Some(total + (end - start)),
                _ => None,
            };
            latencies[index].extend_from_slice(&round_samples);
            let round_stats = Percentiles::of(&mut round_samples);
            per_round[index].push((round_stats.p99, round_stats.p999));
            if design.durable {
                let durable_at_end = design
                    .store
                    .durable_position(&key)
                    .expect("durable position")
                    .unwrap_or(0);
                overlapped[index] += durable_at_end - durable_at_start;
                let last = design.handle.latest_position().expect("appended");
                settle(&design.store, &key, last);
            }
        }
    }

    let mut results = Vec::new();
    for (index, design) in designs.iter().enumerate() {
        let samples = std::mem::take(&mut latencies[index]);
        let mut sorted = samples;
        let percentiles = Percentiles::of(&mut sorted);
        let p9999 = support::quantile(&sorted, 0.9999);
        for (q, ns) in support::chart_quantiles(&sorted) {
            let _ = writeln!(out.quantiles, "\"{}\",{q},{ns}", design.name);
        }
        println!(
            "  {:<24} n={:<8} p50 {:>9}  p99 {:>9}  p99.9 {:>9}  p99.99 {:>9}  max {:>9}  mean {:>9}",
            design.name,
            percentiles.count,
            support::human(percentiles.p50 as f64),
            support::human(percentiles.p99 as f64),
            support::human(percentiles.p999 as f64),
            support::human(p9999 as f64),
            support::human(percentiles.max as f64),
            support::human(percentiles.mean),
        );
        for (metric, value) in [
            ("p50_ns", percentiles.p50 as f64),
            ("p99_ns", percentiles.p99 as f64),
            ("p999_ns", percentiles.p999 as f64),
            ("p9999_ns", p9999 as f64),
            ("max_ns", percentiles.max as f64),
            ("mean_ns", percentiles.mean),
        ] {
            out.row("append_latency", design.name, metric, value);
        }
        if let (Some(before), Some(after)) = (&before[index], design.store.stats().durable) {
            let lost = after.lost_events - before.lost_events;
            let persisted = after.persisted_events - before.persisted_events;
            let commits = after.commits - before.commits;
            let share = overlapped[index] as f64 / (rounds * round_len) as f64;
            // How busy the persister was while the appends were timed (its
            // CPU time over the rounds' wall time), so the figures are not
            // of a persister that only ran in the untimed waits.
            let busy =
                persister_cpu[index].map(|cpu| cpu as f64 / round_time[index].as_nanos() as f64);
            println!(
                "  {:<24} persisted {persisted} in {commits} commits ({:.0} events/commit); lost_events {lost}{}; during the timed rounds the persister ran {} of the time and committed {:.1}% of their events",
                "",
                persisted as f64 / commits.max(1) as f64,
                if lost == 0 { " (valid)" } else { " (INVALID SAMPLE: the appender lapped the persister)" },
                busy.map_or("?".to_string(), |b| format!("{:.0}%", b * 100.0)),
                share * 100.0,
            );
            if let Some(busy) = busy {
                out.row(
                    "append_latency",
                    design.name,
                    "persister_cpu_share_during_rounds",
                    busy,
                );
            }
            out.row("append_latency", design.name, "lost_events", lost as f64);
            out.row(
                "append_latency",
                design.name,
                "events_per_commit",
                persisted as f64 / commits.max(1) as f64,
            );
            out.row(
                "append_latency",
                design.name,
                "written_during_round_share",
                share,
            );
        }
        results.push(percentiles);
    }
    let off = results[0];
    for (index, design) in designs.iter().enumerate().skip(1) {
        let on = results[index];
        let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
        let p99_rounds: Vec<f64> = per_round[index]
            .iter()
            .zip(&per_round[0])
            .map(|(on, off)| ratio(on.0, off.0))
            .collect();
        let p999_rounds: Vec<f64> = per_round[index]
            .iter()
            .zip(&per_round[0])
            .map(|(on, off)| ratio(on.1, off.1))
            .collect();
        let p999 = ratio(on.p999, off.p999);
        println!(
            "  {} / off: p50 {:.2}x  p99 {:.2}x  p99.9 {:.2}x  max {:.2}x;  per-round ratio medians (quartiles): p99 {:.2}x ({:.2}..{:.2}), p99.9 {:.2}x ({:.2}..{:.2});  goal p99.9 <= 1.2x: {}",
            design.name,
            ratio(on.p50, off.p50),
            ratio(on.p99, off.p99),
            p999,
            ratio(on.max, off.max),
            at_quantile(&p99_rounds, 0.5),
            at_quantile(&p99_rounds, 0.25),
            at_quantile(&p99_rounds, 0.75),
            at_quantile(&p999_rounds, 0.5),
            at_quantile(&p999_rounds, 0.25),
            at_quantile(&p999_rounds, 0.75),
            if p999 <= 1.2 { "met" } else { "MISSED" }
        );
        for (metric, value) in [
            ("p50_ratio_over_off", ratio(on.p50, off.p50)),
            ("p99_ratio_over_off", ratio(on.p99, off.p99)),
            ("p999_ratio_over_off", p999),
            ("max_ratio_over_off", ratio(on.max, off.max)),
            ("p99_round_ratio_median", at_quantile(&p99_rounds, 0.5)),
            ("p999_round_ratio_median", at_quantile(&p999_rounds, 0.5)),
            ("p999_round_ratio_q1", at_quantile(&p999_rounds, 0.25)),
            ("p999_round_ratio_q3", at_quantile(&p999_rounds, 0.75)),
        ] {
            out.row("append_latency", design.name, metric, value);
        }
    }
}

// ---------------------------------------------------------------------------
// 2. Sustained persist throughput, and 5. bytes on disk per event.

#[derive(Clone, Copy)]
enum Backend {
    Redb(RedbDurability),
    Memory,
}

#[derive(Clone, Copy)]
struct ThroughputCase {
    name: &'static str,
    backend: Backend,
    sessions: usize,
    events: usize,
    batch: Option<usize>,
}

#[derive(Default)]
struct ThroughputResult {
    rate: Vec<f64>,
    rate_with_sync: Vec<f64>,
    append_rate: Vec<f64>,
    per_commit: Vec<f64>,
    commits: Vec<f64>,
    lost: u64,
    bytes_open: Vec<f64>,
    bytes_closed: Vec<f64>,
}

fn run_throughput(case: &ThroughputCase, path: &Path, result: &mut ThroughputResult) {
    let per_session = case.events.div_ceil(case.sessions);
    // Every event fits in its ring: nothing is lapped, the log sets the pace.
    let capacity = per_session.next_power_of_two().max(64);
    let config = Config::default()
        .with_capacity(capacity)
        .with_max_age(Duration::from_secs(3600));
    let options = match case.batch {
        Some(batch) => DurableOptions::default().with_max_batch_events(batch),
        None => DurableOptions::default(),
    };
    let redb = match case.backend {
        Backend::Redb(durability) => Some(open_redb(path, durability)),
        Backend::Memory => None,
    };
    let log: Arc<dyn DurableLog> = match &redb {
        Some(redb) => redb.clone(),
        None => Arc::new(MemoryLog::new()),
    };
    let store = durable_store(Arc::clone(&log), config, options);
    let keys: Vec<SessionKey> = (0..case.sessions).map(session_key).collect();
    let handles: Vec<_> = keys
        .iter()
        .map(|key| store.session(key).expect("session"))
        .collect();
    // The sessions' lives are recorded first, outside the timing.
    let deadline = Instant::now() + WAIT_LIMIT;
    for key in &keys {
        while log.meta(key).expect("meta").is_none() {
            assert!(Instant::now() < deadline, "{key}: life never recorded");
            thread::sleep(Duration::from_micros(200));
        }
    }
    let before = durable_stats(&store);

    let start = Instant::now();
    for i in 0..case.events {
        handles[i % case.sessions]
            .append(Revision(1), payload(i as u64))
            .expect("append");
    }
    let appended = start.elapsed();
    for (key, handle) in keys.iter().zip(&handles) {
        settle(&store, key, handle.latest_position().expect("appended"));
    }
    let durable = start.elapsed();
    let synced = match &redb {
        Some(redb) => {
            redb.sync().expect("sync");
            start.elapsed()
        }
        None => durable,
    };
    let after = durable_stats(&store);
    let commits = after.commits - before.commits;
    let persisted = after.persisted_events - before.persisted_events;
    assert_eq!(
        persisted as usize + (after.lost_events - before.lost_events) as usize,
        case.events
    );
    result.lost += after.lost_events - before.lost_events;
    result.rate.push(case.events as f64 / durable.as_secs_f64());
    result
        .rate_with_sync
        .push(case.events as f64 / synced.as_secs_f64());
    result
        .append_rate
        .push(case.events as f64 / appended.as_secs_f64());
    result.commits.push(commits as f64);
    result
        .per_commit
        .push(persisted as f64 / commits.max(1) as f64);
    if redb.is_some() {
        let open = std::fs::metadata(path).map_or(0, |m| m.len());
        drop(handles);
        drop(store);
        drop(log);
        drop(redb);
        let closed = std::fs::metadata(path).map_or(0, |m| m.len());
        result.bytes_open.push(open as f64 / case.events as f64);
        result.bytes_closed.push(closed as f64 / case.events as f64);
        let _ = std::fs::remove_file(path);
    }
}

fn persist_throughput(settings: &Settings, temp: &TempDir, out: &mut Out) {
    let events = settings.size(1_000_000, 20_000);
    let unbatched = settings.size(2_000, 200);
    let reps = settings.size(3, 1);
    let immediate = Backend::Redb(RedbDurability::Immediate);
    let deferred = Backend::Redb(RedbDurability::Deferred);
    let journaled = Backend::Redb(RedbDurability::Journaled);
    let case = |name, backend, sessions, events, batch| ThroughputCase {
        name,
        backend,
        sessions,
        events,
        batch,
    };
    let cases = [
        case("redb Immediate, 1 session", immediate, 1, events, None),
        case("redb Immediate, 64 sessions", immediate, 64, events, None),
        case("redb Deferred, 1 session", deferred, 1, events, None),
        case("redb Deferred, 64 sessions", deferred, 64, events, None),
        case("redb Journaled, 1 session", journaled, 1, events, None),
        case("redb Journaled, 64 sessions", journaled, 64, events, None),
        case("MemoryLog, 1 session", Backend::Memory, 1, events, None),
        case("MemoryLog, 64 sessions", Backend::Memory, 64, events, None),
        case(
            "redb Immediate, 1 session, batch 1",
            immediate,
            1,
            unbatched,
            Some(1),
        ),
        case(
            "redb Deferred, 1 session, batch 1",
            deferred,
            1,
            unbatched,
            Some(1),
        ),
        case(
            "redb Journaled, 1 session, batch 1",
            journaled,
            1,
            unbatched,
            Some(1),
        ),
    ];
    println!(
        "\n== 2. sustained persist throughput: a writer appends N 64-byte events, clock stops when every session's last position is durable (N = {events}; {unbatched} with a batch of 1; {reps} repetitions, cases taking turns; default max_batch_events {}) ==",
        DurableOptions::default().max_batch_events
    );
    let mut results: Vec<ThroughputResult> =
        cases.iter().map(|_| ThroughputResult::default()).collect();
    for rep in 0..reps {
        for turn in 0..cases.len() {
            let index = (turn + rep) % cases.len();
            let path = temp.file(&format!("throughput-{index}.redb"));
            run_throughput(&cases[index], &path, &mut results[index]);
        }
    }
    let memory_rate = |sessions: usize| {
        cases
            .iter()
            .zip(&results)
            .find(|(c, _)| matches!(c.backend, Backend::Memory) && c.sessions == sessions)
            .map(|(_, r)| at_quantile(&r.rate, 0.5))
    };
    let scenario = "persist_throughput";
    for (case, result) in cases.iter().zip(&results) {
        let median = at_quantile(&result.rate, 0.5);
        let mut line = format!(
            "  {:<36} {:>28} durable",
            case.name,
            spread(&result.rate, per_second)
        );
        if matches!(case.backend, Backend::Redb(RedbDurability::Deferred)) {
            let _ = write!(
                line,
                "; incl. a final sync() {}",
                spread(&result.rate_with_sync, per_second)
            );
        }
        let _ = write!(
            line,
            "; {:.0} commits, {:.0} events/commit; the writer appended at {}; lost {}{}",
            at_quantile(&result.commits, 0.5),
            at_quantile(&result.per_commit, 0.5),
            per_second(at_quantile(&result.append_rate, 0.5)),
            result.lost,
            if result.lost == 0 { "" } else { " (INVALID)" }
        );
        if case.batch.is_none() && !matches!(case.backend, Backend::Memory) {
            if let Some(memory) = memory_rate(case.sessions) {
                let _ = write!(line, "; {:.2}x the MemoryLog rate", median / memory);
                out.row(scenario, case.name, "ratio_over_memorylog", median / memory);
            }
            let _ = write!(
                line,
                "; goal >= 500 k/s: {}",
                if median >= 500_000.0 { "met" } else { "MISSED" }
            );
        }
        println!("{line}");
        out.row(scenario, case.name, "events", case.events as f64);
        out.row(scenario, case.name, "events_per_s_median", median);
        out.row(
            scenario,
            case.name,
            "events_per_s_min",
            at_quantile(&result.rate, 0.0),
        );
        out.row(
            scenario,
            case.name,
            "events_per_s_max",
            at_quantile(&result.rate, 1.0),
        );
        out.row(
            scenario,
            case.name,
            "events_per_s_with_sync_median",
            at_quantile(&result.rate_with_sync, 0.5),
        );
        out.row(
            scenario,
            case.name,
            "commits_median",
            at_quantile(&result.commits, 0.5),
        );
        out.row(
            scenario,
            case.name,
            "events_per_commit_median",
            at_quantile(&result.per_commit, 0.5),
        );
        out.row(scenario, case.name, "lost_events", result.lost as f64);
    }
    println!("\n== 5. bytes on disk per event (file size / events, 64-byte payloads) ==");
    for (case, result) in cases.iter().zip(&results) {
        if result.bytes_open.is_empty() || case.batch.is_some() {
            continue;
        }
        println!(
            "  {:<36} {:>7.1} B/event while open ({} events), {:>7.1} B/event after the clean close",
            case.name,
            at_quantile(&result.bytes_open, 0.5),
            case.events,
            at_quantile(&result.bytes_closed, 0.5),
        );
        out.row(
            "disk",
            case.name,
            "bytes_per_event_open",
            at_quantile(&result.bytes_open, 0.5),
        );
        out.row(
            "disk",
            case.name,
            "bytes_per_event_closed",
            at_quantile(&result.bytes_closed, 0.5),
        );
    }
}

// ---------------------------------------------------------------------------
// 3. Catch-up from the log, and the hand-over to live.

/// Appends `events` to `key`, never more than 1024 ahead of the persister,
/// so the 2048-slot ring never laps it.
fn fill_paced(store: &Store, key: &SessionKey, events: usize) {
    let handle = store.session(key).expect("session");
    for i in 0..events {
        let event = handle
            .append(Revision(1), payload(i as u64))
            .expect("append");
        if event.position().is_multiple_of(1024) || i + 1 == events {
            settle(store, key, event.position());
        }
    }
}

fn catch_up(settings: &Settings, temp: &TempDir, out: &mut Out) {
    const CAPACITY: usize = 2048;
    let events = settings.size(100_000, 5_000);
    let reps = settings.size(5, 1);
    println!(
        "\n== 3. catch-up of {events} events of one session from Cursor::start (ring capacity {CAPACITY}: all but the last {CAPACITY} from the log; {reps} repetitions per log, taking turns) =="
    );
    let key = session_key(0);
    let config = Config::default().with_capacity(CAPACITY);
    let redb = durable_store(
        open_redb(&temp.file("catchup.redb"), RedbDurability::Immediate),
        config.clone(),
        DurableOptions::default(),
    );
    let memory = durable_store(
        Arc::new(MemoryLog::new()),
        config,
        DurableOptions::default(),
    );
    let logs = [("RedbLog", &redb), ("MemoryLog", &memory)];
    for (_, store) in logs {
        fill_paced(store, &key, events);
        let lost = durable_stats(store).lost_events;
        assert_eq!(lost, 0, "the fill lapped the persister");
    }
    let mut rates: [Vec<f64>; 2] = Default::default();
    let mut from_log = [0usize; 2];
    let mut live_reader = None;
    for rep in 0..reps {
        for turn in 0..logs.len() {
            let index = (turn + rep) % logs.len();
            let store = logs[index].1;
            let start = Instant::now();
            let mut reader = store
                .catch_up(&Cursor::start(key.clone()))
                .expect("catch up");
            let mut read_from_log = 0;
            for expected in 1..=events as u64 {
                let event = reader.next_timeout(WAIT_LIMIT).expect("an event");
                assert_eq!(event.position(), expected, "in order, exactly once");
                if !reader.is_live() {
                    read_from_log += 1;
                }
            }
            let took = start.elapsed();
            assert!(reader.is_live(), "caught up: reading the ring");
            rates[index].push(events as f64 / took.as_secs_f64());
            from_log[index] = read_from_log;
            if index == 0 {
                live_reader = Some(reader);
            }
        }
    }
    for (index, (name, _)) in logs.iter().enumerate() {
        println!(
            "  {:<10} {:>28} ({} of {events} read before the hand-over to the ring)",
            name,
            spread(&rates[index], per_second),
            from_log[index]
        );
        out.row(
            "catch_up",
            name,
            "events_per_s_median",
            at_quantile(&rates[index], 0.5),
        );
        out.row(
            "catch_up",
            name,
            "events_per_s_min",
            at_quantile(&rates[index], 0.0),
        );
        out.row(
            "catch_up",
            name,
            "events_per_s_max",
            at_quantile(&rates[index], 1.0),
        );
        out.row("catch_up", name, "from_log", from_log[index] as f64);
    }
    let ratio = at_quantile(&rates[0], 0.5) / at_quantile(&rates[1], 0.5);
    println!("  RedbLog / MemoryLog: {ratio:.2}x the rate");
    out.row("catch_up", "RedbLog", "ratio_over_memorylog", ratio);

    let reader = live_reader.expect("a redb catch-up that went live");
    live_delivery(settings, &redb, &key, events, reader, out);
}

/// Append-to-delivery latency of a caught-up (live) catch-up, against a
/// plain subscription on another session of the same store, filled with
/// the same `events` first (a full ring with history behind it delivers
/// slower than a fresh one, so a fresh session would not isolate the
/// reader); one sample each in turn, the reader parked before each.
fn live_delivery(
    settings: &Settings,
    store: &Arc<Store>,
    key: &SessionKey,
    events: usize,
    mut reader: CatchUp<Vec<u8>>,
    out: &mut Out,
) {
    let samples = settings.size(2_000, 100);
    println!(
        "  hand-over to live: append-to-delivery latency, reader parked ({samples} samples each, taking turns, same store and persister; the subscription's session holds {events} events too)"
    );
    let baseline_key = self::key("live-baseline");
    fill_paced(store, &baseline_key, events);
    assert_eq!(durable_stats(store).lost_events, 0);
    let caught_up = store.session(key).expect("session");
    let baseline = store.session(&baseline_key).expect("session");
    let mut subscription: Subscription<Vec<u8>> = baseline
        .subscribe_after(&baseline.current_cursor())
        .expect("subscribe");
    let base = Instant::now();
    let delivered = [AtomicUsize::new(0), AtomicUsize::new(0)];
    let appenders = [&caught_up, &baseline];
    let (catch_up_latencies, subscription_latencies) = thread::scope(|scope| {
        let delivered = &delivered;
        let catch_up_thread = scope.spawn(move || {
            let mut latencies = Vec::with_capacity(samples);
            for count in 1..=samples {
                let event = reader.next_timeout(WAIT_LIMIT).expect("a live event");
                latencies.push(nanos_since(base).saturating_sub(value_of(event.payload())));
                delivered[0].store(count, Ordering::Release);
            }
            assert!(reader.is_live());
            latencies
        });
        let subscription_thread = scope.spawn(move || {
            let mut latencies = Vec::with_capacity(samples);
            for count in 1..=samples {
                let event = subscription.next_timeout(WAIT_LIMIT).expect("a live event");
                latencies.push(nanos_since(base).saturating_sub(value_of(event.payload())));
                delivered[1].store(count, Ordering::Release);
            }
            latencies
        });
        for count in 1..=samples {
            for turn in 0..2 {
                let index = (turn + count) % 2;
                thread::sleep(PARK_PAUSE);
                appenders[index]
                    .append(Revision(1), payload(nanos_since(base)))
                    .expect("append");
                let waiting_since = Instant::now();
                while delivered[index].load(Ordering::Acquire) < count {
                    assert!(
                        waiting_since.elapsed() < WAIT_LIMIT,
                        "a reader did not receive event {count}"
                    );
                    std::hint::spin_loop();
                }
            }
        }
        (
            catch_up_thread.join().expect("catch-up reader"),
            subscription_thread.join().expect("subscriber"),
        )
    });
    let mut results = Vec::new();
    for (name, mut latencies) in [
        ("catch-up, live", catch_up_latencies),
        ("plain subscription", subscription_latencies),
    ] {
        let p = Percentiles::of(&mut latencies);
        println!(
            "    {name:<20} p50 {:>9}  p99 {:>9}  max {:>9}",
            support::human(p.p50 as f64),
            support::human(p.p99 as f64),
            support::human(p.max as f64)
        );
        out.row("live_delivery", name, "p50_ns", p.p50 as f64);
        out.row("live_delivery", name, "p99_ns", p.p99 as f64);
        results.push(p);
    }
    let ratio = results[0].p50 as f64 / results[1].p50.max(1) as f64;
    println!("    catch-up / subscription: p50 {ratio:.2}x");
    out.row(
        "live_delivery",
        "catch-up, live",
        "p50_ratio_over_subscription",
        ratio,
    );
    let lost = durable_stats(store).lost_events;
    assert_eq!(lost, 0, "nothing lapped the persister");
}

// ---------------------------------------------------------------------------
// 4. Reopen to first served cursor.

/// Writes `sessions` x `per_session` events to a fresh log at `path`,
/// closes it, and returns a cursor after the middle event of a few sessions
/// (one per repetition), as a client would hold them across a restart.
fn fill_sessions(path: &Path, sessions: usize, per_session: u64, reps: usize) -> Vec<Cursor> {
    let log = open_redb(path, RedbDurability::Immediate);
    let store = durable_store(
        log.clone(),
        Config::default().with_max_sessions(sessions.max(1) * 2),
        DurableOptions::default(),
    );
    let chosen: Vec<usize> = (0..reps).map(|r| r * sessions / reps).collect();
    let mut cursors = Vec::new();
    for s in 0..sessions {
        let key = session_key(s);
        for e in 1..=per_session {
            let event = store.append(&key, Revision(1), payload(e)).expect("append");
            if e == per_session / 2 && chosen.contains(&s) {
                cursors.push(event.cursor());
            }
        }
    }
    for s in 0..sessions {
        settle(&store, &session_key(s), per_session);
    }
    assert_eq!(durable_stats(&store).lost_events, 0);
    drop(store);
    drop(log);
    // In session order: the cursor for repetition r.
    cursors
}

fn reopen(settings: &Settings, temp: &TempDir, out: &mut Out) {
    const PER_SESSION: u64 = 8;
    let sessions = settings.size(10_000, 500);
    let reps = settings.size(10, 3);
    println!(
        "\n== 4. reopen to first served cursor: RedbLog::open + build the store + catch_up(cursor from before the restart) + its first event; {sessions} sessions x {PER_SESSION} events in the log, against 1 session; {reps} repetitions, taking turns (files just written: the OS page cache is warm) =="
    );
    let logs = [
        (sessions, temp.file("reopen-many.redb")),
        (1, temp.file("reopen-one.redb")),
    ];
    let cursors: Vec<Vec<Cursor>> = logs
        .iter()
        .map(|(count, path)| {
            let reps_here = if *count == 1 { 1 } else { reps };
            fill_sessions(path, *count, PER_SESSION, reps_here)
        })
        .collect();
    let many_bytes = std::fs::metadata(&logs[0].1).map_or(0, |m| m.len());
    // [log][open, build, catch_up + first event, total]
    let mut times: [[Vec<f64>; 4]; 2] = Default::default();
    for rep in 0..reps {
        for turn in 0..logs.len() {
            let index = (turn + rep) % logs.len();
            let path = &logs[index].1;
            let cursor = &cursors[index][rep % cursors[index].len()];
            let start = Instant::now();
            let log = RedbLog::open(path).expect("reopen");
            let opened = start.elapsed();
            let store = Store::builder()
                .durable(Arc::new(log), RawBytes)
                .build()
                .expect("build");
            let built = start.elapsed();
            let mut reader = store.catch_up(cursor).expect("catch up");
            let first = reader.next_timeout(WAIT_LIMIT).expect("first event");
            let served = start.elapsed();
            assert_eq!(first.position(), cursor.position() + 1);
            assert_eq!(value_of(first.payload()), cursor.position() + 1);
            times[index][0].push(opened.as_nanos() as f64);
            times[index][1].push((built - opened).as_nanos() as f64);
            times[index][2].push((served - built).as_nanos() as f64);
            times[index][3].push(served.as_nanos() as f64);
            drop(reader);
            drop(store);
        }
    }
    for (index, (count, _)) in logs.iter().enumerate() {
        let name = if *count == 1 {
            "1 session".to_string()
        } else {
            format!("{count} sessions")
        };
        println!(
            "  {name:<16} first event served {} after the open began: RedbLog::open {}, then build {}, then catch_up + first event {}",
            spread(&times[index][3], millis),
            spread(&times[index][0], millis),
            spread(&times[index][1], millis),
            spread(&times[index][2], millis),
        );
        let ms = |phase: usize, q: f64| at_quantile(&times[index][phase], q) / 1e6;
        for (metric, value) in [
            ("first_event_ms_median", ms(3, 0.5)),
            ("first_event_ms_min", ms(3, 0.0)),
            ("first_event_ms_max", ms(3, 1.0)),
            ("open_ms_median", ms(0, 0.5)),
            ("build_ms_median", ms(1, 0.5)),
            ("catch_up_first_event_ms_median", ms(2, 0.5)),
        ] {
            out.row("reopen", &name, metric, value);
        }
    }
    let ratio = at_quantile(&times[0][3], 0.5) / at_quantile(&times[1][3], 0.5);
    println!(
        "  {sessions} sessions / 1 session: {ratio:.2}x; the {sessions}-session file is {:.1} MiB ({:.0} B/event)",
        many_bytes as f64 / 1048576.0,
        many_bytes as f64 / (sessions as f64 * PER_SESSION as f64)
    );
    out.row("reopen", "many/one", "first_event_ratio", ratio);
}

// ---------------------------------------------------------------------------
// 6. What `wake_on_dirty` costs the append that dirties a session.

/// Spins (no syscall, so the persister gets the other core) for `pause`.
fn spin_for(pause: Duration) {
    let start = Instant::now();
    while start.elapsed() < pause {
        std::hint::spin_loop();
    }
}

fn wake_cost(settings: &Settings, out: &mut Out) {
    let samples = settings.size(20_000, 500);
    let pause = Duration::from_micros(300);
    println!(
        "\n== 6. sparse appends ({samples} per design, {} µs apart, so each finds its session clean and the persister idle): the append that dirties a session, persister off / on (MemoryLog, default) / on with wake_on_dirty; designs taking turns ==",
        pause.as_micros()
    );
    let config = Config::default().with_capacity(4096);
    let key = session_key(0);
    let make = |log: Option<Arc<dyn DurableLog>>, wake: bool| {
        let store = match log {
            Some(log) => durable_store(
                log,
                config.clone(),
                DurableOptions::default().with_wake_on_dirty(wake),
            ),
            None => Arc::new(Store::new(config.clone()).expect("config")),
        };
        let handle = store.session(&key).expect("session");
        (store, handle)
    };
    let designs = [
        ("off (plain store)", make(None, false)),
        (
            "on, default",
            make(
                Some(Arc::new(MemoryLog::new()) as Arc<dyn DurableLog>),
                false,
            ),
        ),
        (
            "on, wake_on_dirty",
            make(
                Some(Arc::new(MemoryLog::new()) as Arc<dyn DurableLog>),
                true,
            ),
        ),
    ];
    let mut latencies: Vec<Vec<u64>> = designs
        .iter()
        .map(|_| Vec::with_capacity(samples))
        .collect();
    for i in 0..samples {
        for turn in 0..designs.len() {
            let index = (turn + i) % designs.len();
            let (_, (_, handle)) = &designs[index];
            spin_for(pause);
            let start = Instant::now();
            black_box(
                handle
                    .append(Revision(1), payload(i as u64))
                    .expect("append"),
            );
            latencies[index].push(nanos(start.elapsed()));
        }
    }
    let mut results = Vec::new();
    for (index, (name, (store, _))) in designs.iter().enumerate() {
        let p = Percentiles::of(&mut latencies[index]);
        println!(
            "  {name:<20} p50 {:>9}  p99 {:>9}  p99.9 {:>9}  mean {:>9}",
            support::human(p.p50 as f64),
            support::human(p.p99 as f64),
            support::human(p.p999 as f64),
            support::human(p.mean),
        );
        for (metric, value) in [
            ("p50_ns", p.p50 as f64),
            ("p99_ns", p.p99 as f64),
            ("p999_ns", p.p999 as f64),
            ("mean_ns", p.mean),
        ] {
            out.row("wake_cost", name, metric, value);
        }
        if let Some(stats) = store.stats().durable {
            assert_eq!(
                stats.lost_events, 0,
                "{name}: the ring lapped the persister"
            );
        }
        results.push(p);
    }
    let base = results[1];
    let wake = results[2];
    println!(
        "  wake_on_dirty / default: p50 {:.2}x  p99 {:.2}x  p99.9 {:.2}x  mean {:.2}x",
        wake.p50 as f64 / base.p50.max(1) as f64,
        wake.p99 as f64 / base.p99.max(1) as f64,
        wake.p999 as f64 / base.p999.max(1) as f64,
        wake.mean / base.mean.max(1.0),
    );
}

fn main() {
    let settings = Settings::from_args();
    if settings.quick {
        println!("durable: quick mode (small sizes; figures are not meaningful)");
    }
    let temp = TempDir::new();
    let mut out = Out {
        csv: String::from("scenario,design,metric,value\n"),
        quantiles: String::from("design,quantile,nanos\n"),
    };
    if settings.runs("append_latency") {
        append_latency(&settings, &temp, &mut out);
    }
    if settings.runs("persist_throughput") {
        persist_throughput(&settings, &temp, &mut out);
    }
    if settings.runs("catch_up") {
        catch_up(&settings, &temp, &mut out);
    }
    if settings.runs("reopen") {
        reopen(&settings, &temp, &mut out);
    }
    if settings.runs("wake_cost") {
        wake_cost(&settings, &mut out);
    }
    if settings.runs("burst") {
        burst(&settings, &temp, &mut out);
    }
    support::write_out("durable-summary.csv", &out.csv);
    support::write_out("durable_append_latency.csv", &out.quantiles);
    drop(temp);
}

/// Part 7: a burst into a healthy log, with and without a budget for
/// undurable events (see the module docs).
fn burst(settings: &Settings, temp: &TempDir, out: &mut Out) {
    const SESSIONS: usize = 100;
    let events: u64 = if settings.quick { 100_000 } else { 1_000_000 };
    println!(
        "\n== burst: {events} events round-robin over {SESSIONS} sessions of capacity 64, \
         redb Immediate, persister on =="
    );
    println!(
        "{:<24} {:>12} {:>12} {:>14} {:>16} {:>10}",
        "budget", "lost events", "appends/s", "durable after", "peak kept bytes", "let go"
    );
    let keys: Vec<SessionKey> = (0..SESSIONS).map(session_key).collect();
    for (name, budget) in [
        ("none (before issue 21)", 0usize),
        ("64 MiB (default)", 64 << 20),
        ("256 MiB", 256 << 20),
    ] {
        let path = temp.file(&format!("burst-{budget}.redb"));
        let store = Arc::new(
            Store::builder()
                .config(Config::default().with_capacity(64))
                .payload_limit(usize::MAX, |payload: &Vec<u8>| payload.len())
                .durable(open_redb(&path, RedbDurability::Immediate), RawBytes)
                .durable_options(DurableOptions::default().with_undurable_budget(budget))
                .build()
                .expect("build the store"),
        );
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let (store, done) = (Arc::clone(&store), Arc::clone(&done));
            thread::spawn(move || {
                let mut peak = 0;
                while !done.load(Ordering::Relaxed) {
                    peak = peak.max(durable_stats(&store).kept_bytes);
                    thread::sleep(Duration::from_millis(1));
                }
                peak
            })
        };
        let started = Instant::now();
        for i in 0..events {
            let key = &keys[(i % SESSIONS as u64) as usize];
            store.append(key, Revision(1), payload(i)).expect("append");
        }
        let appended = started.elapsed();
        let last = events / SESSIONS as u64;
        for key in &keys {
            // A hole is durable as lost: either answer ends the wait.
            match store.wait_durable(key, last, WAIT_LIMIT) {
                Ok(_) | Err(livereplay::DurableError::Lost { .. }) => {}
                Err(error) => panic!("{key}: {error}"),
            }
        }
        let durable_after = started.elapsed();
        done.store(true, Ordering::Relaxed);
        let peak = sampler.join().expect("the sampler");
        let stats = durable_stats(&store);
        let rate = events as f64 / appended.as_secs_f64();
        println!(
            "{:<24} {:>12} {:>12.0} {:>12.0} ms {:>16} {:>10}",
            name,
            stats.lost_events,
            rate,
            durable_after.as_secs_f64() * 1e3,
            peak,
            stats.let_go_segments
        );
        out.row("burst", name, "lost_events", stats.lost_events as f64);
        out.row("burst", name, "appends_per_second", rate);
        out.row(
            "burst",
            name,
            "durable_after_ms",
            durable_after.as_secs_f64() * 1e3,
        );
        out.row("burst", name, "peak_kept_bytes", peak as f64);
    }
}
