//! Causal links and the causal index (issue 12), each figure against a
//! baseline measured in the same process where one compares:
//!
//! 1. **Append with links vs without.** Back-to-back appends through a
//!    handle on a plain store (no log: the append path alone), 64-byte
//!    `Vec<u8>` payloads: `append`, `append_linked` with empty links, and
//!    `append_linked` with a parent, a kind and a correlation id (what a
//!    tool result carries). Paired: the designs take turns in short
//!    batches, and the ratio is taken round by round.
//! 2. **Index build throughput in the persister.** A writer appends N
//!    events to one session, every one with links (parent: the previous
//!    event; a kind; a correlation id shared by runs of 16), and the clock
//!    stops when `wait_durable` says the last is in the log. Against the
//!    same N events without links, to the same kind of log, in the same
//!    run: the ratio is the index's cost in the persister. redb
//!    (`Deferred`, so it is the index and not the fsync that is measured;
//!    `Immediate` too) and `MemoryLog`.
//! 3. **Walk of 1 000 ancestors** (redb): a chain of 1 000 events with
//!    links; `ancestors(last, 1000)`, repeated; per walk and per step.
//! 4. **A correlation chain of 10 000 events** (redb): all of them,
//!    oldest first.
//! 5. **`unacknowledged` over 100 000 open events** (redb): the first page
//!    of 100, and then all of them.
//!
//! With the `redis` feature, part 2 adds a Redis row and parts 3 to 5 run
//! on Redis too, against a `redis-server` the bench starts on loopback
//! (`tests/support/redis_server.rs`; SKIPPED without one, except in CI).
//!
//! Run: `cargo bench --features redb --bench dag` (`--features redb,redis`
//! for Redis). Quick mode
//! (`LIVEREPLAY_BENCH_QUICK=1`, or without `--bench`) uses small sizes. A
//! name filter that matches neither `append`, `index_build`, `ancestors`,
//! `correlation` nor `unacknowledged` skips that part. Every wait is
//! bounded.

#[cfg(feature = "redis")]
#[path = "../tests/support/redis_server.rs"]
mod redis_server;
mod support;

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use livereplay::durable::{DurableLog, MemoryLog, RedbDurability, RedbLog, RedbOptions};
use livereplay::{Config, Links, RawBytes, ReplayStore, Revision, SessionKey};

use support::{human, paired, per_second, spread, Contender, Settings, PAIRED_CSV_HEADER};

type Store = ReplayStore<Vec<u8>>;

const WAIT_LIMIT: Duration = Duration::from_secs(120);

/// A directory for this run's files, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path =
            std::env::temp_dir().join(format!("livereplay-bench-dag-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create the bench's temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn key(name: &str) -> SessionKey {
    SessionKey::new("acme", name).expect("a valid key")
}

fn payload(value: u64) -> Vec<u8> {
    let mut bytes = vec![0xA5; 64];
    bytes[..8].copy_from_slice(&value.to_le_bytes());
    bytes
}

fn redb(temp: &TempDir, name: &str, durability: RedbDurability) -> Arc<dyn DurableLog> {
    Arc::new(
        RedbLog::open_with(temp.0.join(name), RedbOptions::new().durability(durability))
            .expect("open the redb log"),
    )
}

fn store_over(log: Arc<dyn DurableLog>, capacity: usize) -> Store {
    Store::builder()
        .config(Config::default().with_capacity(capacity))
        .durable(log, RawBytes)
        .build()
        .expect("build the store")
}

fn settle(store: &Store, key: &SessionKey, position: u64) {
    if let Err(error) = store.wait_durable(key, position, WAIT_LIMIT) {
        panic!("{key}@{position} not durable: {error}");
    }
}

/// The links of the `i`-th event of a chain (0: the root).
fn chain_links(key: &SessionKey, i: u64) -> Links {
    let links = Links::new()
        .kind("step")
        .correlation(format!("run-{}", i / 16));
    if i == 0 {
        links
    } else {
        links.parent(livereplay::EventRef::new(key.clone(), i))
    }
}

// ---------------------------------------------------------------------------

fn append_with_links() {
    println!("\n== 1. append through a handle, plain store (no log), 64-byte payloads: without links / empty links / parent + kind + correlation ==");
    let store = Store::new(Config::default().with_capacity(4096)).expect("config");
    let plain = store.session(&key("plain")).expect("session");
    let empty = store.session(&key("empty")).expect("session");
    let linked = store.session(&key("linked")).expect("session");
    let parent = livereplay::EventRef::new(key("linked"), 1);
    let mut n = 0u64;
    let mut csv = String::from(PAIRED_CSV_HEADER);
    paired(
        "append",
        vec![
            Contender::new("append (no links)", |iters| {
                for _ in 0..iters {
                    n += 1;
                    black_box(plain.append(Revision(1), payload(n)).expect("append"));
                }
            }),
            Contender::new("append_linked, empty links", |iters| {
                for i in 0..iters {
                    black_box(
                        empty
                            .append_linked(Revision(1), payload(i), Links::new())
                            .expect("append"),
                    );
                }
            }),
            Contender::new("append_linked, parent+kind+corr", |iters| {
                for i in 0..iters {
                    let links = Links::new()
                        .parent(parent.clone())
                        .kind("tool_result")
                        .correlation("call-42");
                    black_box(
                        linked
                            .append_linked(Revision(1), payload(i), links)
                            .expect("append"),
                    );
                }
            }),
        ],
        &mut csv,
    );
    support::write_out("dag-append-paired.csv", &csv);
}

// ---------------------------------------------------------------------------

/// Appends `n` events to one session (with chain links, or none) and
/// returns events/s until the last is durable.
fn persist_rate(log: Arc<dyn DurableLog>, n: u64, with_links: bool) -> f64 {
    let k = key("writer");
    let store = store_over(log, (n as usize).next_power_of_two().max(64));
    let handle = store.session(&k).expect("session");
    let start = Instant::now();
    for i in 0..n {
        if with_links {
            handle
                .append_linked(Revision(1), payload(i), chain_links(&k, i))
                .expect("append");
        } else {
            handle.append(Revision(1), payload(i)).expect("append");
        }
    }
    settle(&store, &k, n);
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let lost = store.stats().durable.map_or(0, |d| d.lost_events);
    assert_eq!(lost, 0, "the ring lapped the persister: the rate is wrong");
    rate
}

fn index_build(settings: &Settings, temp: &TempDir, redis: Option<Backend<'_>>) {
    let n = settings.size(200_000, 5_000) as u64;
    let runs = settings.size(3, 1);
    println!("\n== 2. persist throughput with and without links: {n} events to one session, until durable; {runs} runs each, taking turns ==");
    type MakeLog<'a> = Box<dyn Fn(usize, bool) -> Arc<dyn DurableLog> + 'a>;
    let logs: Vec<(&str, MakeLog<'_>)> = vec![
        (
            "redb Deferred",
            Box::new(|run, links| {
                redb(
                    temp,
                    &format!("deferred-{run}-{links}.redb"),
                    RedbDurability::Deferred,
                )
            }),
        ),
        (
            "redb Immediate",
            Box::new(|run, links| {
                redb(
                    temp,
                    &format!("immediate-{run}-{links}.redb"),
                    RedbDurability::Immediate,
                )
            }),
        ),
        (
            "MemoryLog",
            Box::new(|_, _| Arc::new(MemoryLog::new()) as Arc<dyn DurableLog>),
        ),
    ];
    let mut logs = logs;
    if let Some((name, open)) = redis {
        logs.push((
            name,
            Box::new(move |run, links| open(&format!("build-{run}-{links}"))),
        ));
    }
    for (name, make) in &logs {
        let mut without = Vec::new();
        let mut with = Vec::new();
        let mut ratios = Vec::new();
        for run in 0..runs {
            let plain = persist_rate(make(run, false), n, false);
            let linked = persist_rate(make(run, true), n, true);
            without.push(plain);
            with.push(linked);
            ratios.push(linked / plain);
        }
        println!(
            "  {name:<16} without links {:<34} with links {:<34} with / without {}",
            spread(&without, per_second),
            spread(&with, per_second),
            spread(&ratios, |r| format!("{r:.2}x"))
        );
    }
}

// ---------------------------------------------------------------------------

/// Opens a fresh log of the backend under test, named `name`.
type Backend<'a> = (&'static str, &'a dyn Fn(&str) -> Arc<dyn DurableLog>);

/// A store holding a chain of `n` linked events in session `chain`,
/// durable; the ring holds only the last 64.
fn chain_store(log: Arc<dyn DurableLog>, n: u64) -> Store {
    let k = key("chain");
    let store = store_over(log, 64);
    for i in 0..n {
        store
            .append_linked(&k, Revision(1), payload(i), chain_links(&k, i))
            .expect("append");
        if (i + 1).is_multiple_of(32) {
            settle(&store, &k, i + 1);
        }
    }
    settle(&store, &k, n);
    store
}

fn time_runs(runs: usize, mut f: impl FnMut()) -> Vec<f64> {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_nanos() as f64
        })
        .collect()
}

fn ancestors(settings: &Settings, (backend, open): Backend<'_>) {
    let n = 1_000u64;
    let runs = settings.size(51, 5);
    println!(
        "\n== 3. walk of {} ancestors ({backend}, ring of 64: all but the last 64 events are read from the log), {runs} walks ==",
        n - 1
    );
    let store = chain_store(open("ancestors"), n);
    let dag = store.dag().expect("a dag");
    let last = livereplay::EventRef::new(key("chain"), n);
    let found = dag.ancestors(&last, 1000).expect("walk").events.len();
    assert_eq!(found as u64, n - 1);
    let times = time_runs(runs, || {
        black_box(dag.ancestors(&last, 1000).expect("walk"));
    });
    let per_step: Vec<f64> = times.iter().map(|t| t / (n - 1) as f64).collect();
    println!(
        "  per walk {}   per step {}",
        spread(&times, human),
        spread(&per_step, human)
    );
}

fn correlation(settings: &Settings, (backend, open): Backend<'_>) {
    let n = settings.size(10_000, 1_000) as u64;
    let runs = settings.size(11, 3);
    println!("\n== 4. a correlation chain of {n} events ({backend}), all of them, {runs} reads ==");
    let k = key("corr");
    let store = store_over(open("correlation"), 64);
    for i in 0..n {
        store
            .append_linked(
                &k,
                Revision(1),
                payload(i),
                Links::new().correlation("turn-1"),
            )
            .expect("append");
        if (i + 1).is_multiple_of(32) {
            settle(&store, &k, i + 1);
        }
    }
    settle(&store, &k, n);
    let dag = store.dag().expect("a dag");
    let found = dag
        .correlation_chain("acme", "turn-1", usize::MAX)
        .expect("chain")
        .events
        .len();
    assert_eq!(found as u64, n);
    let times = time_runs(runs, || {
        black_box(
            dag.correlation_chain("acme", "turn-1", usize::MAX)
                .expect("chain"),
        );
    });
    let per_event: Vec<f64> = times.iter().map(|t| t / n as f64).collect();
    println!(
        "  per chain {}   per event {}",
        spread(&times, human),
        spread(&per_event, human)
    );
}

fn unacknowledged(settings: &Settings, (backend, open): Backend<'_>) {
    let n = settings.size(100_000, 2_000) as u64;
    let runs = settings.size(21, 3);
    println!("\n== 5. unacknowledged with {n} open events ({backend}): the first 100, and all; {runs} reads each ==");
    let sessions = 16u64;
    let store = store_over(open("acks"), 64);
    for i in 0..n {
        let k = key(&format!("ui-{}", i % sessions));
        let event = store
            .append_linked(&k, Revision(1), payload(i), Links::new().requires_ack())
            .expect("append");
        if event.position().is_multiple_of(32) {
            settle(&store, &k, event.position());
        }
    }
    for s in 0..sessions {
        let k = key(&format!("ui-{s}"));
        let last = store.latest_position(&k).expect("a session");
        settle(&store, &k, last);
    }
    let dag = store.dag().expect("a dag");
    assert_eq!(
        dag.unacknowledged("acme", usize::MAX)
            .expect("open")
            .events
            .len() as u64,
        n
    );
    let page = time_runs(runs, || {
        black_box(dag.unacknowledged("acme", 100).expect("open"));
    });
    let all = time_runs(runs.min(5), || {
        black_box(dag.unacknowledged("acme", usize::MAX).expect("open"));
    });
    let per_event: Vec<f64> = all.iter().map(|t| t / n as f64).collect();
    println!(
        "  first 100 {}   all {} ({} per event)",
        spread(&page, human),
        spread(&all, human),
        spread(&per_event, human)
    );
}

fn main() {
    let settings = Settings::from_args();
    let temp = TempDir::new();
    let open_redb = |name: &str| redb(&temp, &format!("{name}.redb"), RedbDurability::Deferred);
    let mut backends: Vec<Backend<'_>> = vec![("redb", &open_redb)];
    // With the `redis` feature, the same parts on a real redis-server on
    // loopback (started here, stopped at the end; a prefix per log).
    #[cfg(feature = "redis")]
    let server = redis_server::RedisServer::start();
    #[cfg(feature = "redis")]
    let open_redis = |name: &str| -> Arc<dyn DurableLog> {
        let server = server.as_ref().expect("a server");
        let options = livereplay::durable::RedisOptions {
            prefix: format!("bench-{name}"),
            ..Default::default()
        };
        Arc::new(
            livereplay::durable::RedisLog::open_with(&server.url(), options)
                .expect("open the Redis log"),
        )
    };
    #[cfg(feature = "redis")]
    if server.is_some() {
        backends.push(("Redis", &open_redis));
    }
    if settings.runs("append") {
        append_with_links();
    }
    if settings.runs("index_build") {
        index_build(&settings, &temp, backends.get(1).copied());
    }
    for &backend in &backends {
        if settings.runs("ancestors") {
            ancestors(&settings, backend);
        }
        if settings.runs("correlation") {
            correlation(&settings, backend);
        }
        if settings.runs("unacknowledged") {
            unacknowledged(&settings, backend);
        }
    }
}
