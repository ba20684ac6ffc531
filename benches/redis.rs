//! Redis Streams as the shared tier (issue 10), measured in one run against
//! a `redis-server` the bench starts itself: loopback only (127.0.0.1, a
//! free port), its own temporary directory, append-only file on with
//! `appendfsync everysec`, no RDB snapshots, and automatic AOF rewrites off
//! (`auto-aof-rewrite-percentage 0`: a rewrite forks mid-run and would land
//! in one repetition's figures at random). The server is stopped and its
//! directory removed at the end, also when a part panics.
//!
//! 1. **A→B delivery latency.** Store A (the runtime, over a `RedisLog`)
//!    appends an event carrying its send time; store B (a second store with
//!    its own `RedisLog` connection, never writing) has a `catch_up` parked
//!    at the tail in `next_timeout`, and records append-to-delivery. The
//!    writer pauses 1 to 3 ms (random, so the persister's poll phase is
//!    random too) before each sample, so B is parked each time. Designs,
//!    taking turns: A with the default `flush_interval` (2 ms), A with
//!    `flush_interval` 0.1 ms, and A (default) to a host B that also has a
//!    catch-up waiting on an idle session. Baselines in the same run: the
//!    same events through A's own ring subscription (local delivery), a raw
//!    `XADD` → `XREAD BLOCK` between two connections of the `redis` crate
//!    (the floor of Redis itself), and a `PING` round trip.
//! 2. **Events/s shipped.** A appends N events of 64 bytes to 1 and to 64
//!    sessions (rings hold every event: nothing is lapped), and the clock
//!    stops when every session's last position is durable.
//! 3. **Redis commands and bytes per event** in those runs: `INFO
//!    commandstats` (every command but `INFO` itself) and `INFO stats`
//!    (`total_net_input_bytes`, `total_net_output_bytes`) before and after,
//!    divided by N; with the server's CPU time (`INFO cpu`).
//! 4. **Redis memory per retained event** in those runs: `INFO memory`
//!    `used_memory` after minus before (the server is flushed before each
//!    repetition), divided by N; and `MEMORY USAGE <stream> SAMPLES 0` of
//!    one session's stream over the events it holds.
//! 5. **Catch-up from Redis.** 100 000 events of one session read by host B
//!    from `Cursor::start` (B never holds them: all come from the log),
//!    against the same from a shared `MemoryLog`, taking turns.
//! 6. **Append latency on A while Redis is frozen** (SIGSTOP for 2 s, then
//!    SIGCONT) against A's append latency with Redis running, phases
//!    alternating: appends paced every 20 µs, p50/p99/p99.9/max. The ring
//!    holds every event of a phase plus the backlog (nothing is lapped:
//!    `lost_events` is checked to be 0).
//! 7. **Nodes contending.** Four stores, each with its own `RedisLog`
//!    connection, append 3 000 events/s each to a session of their own for
//!    3 s, with links (kind, correlation, the previous event as parent) and
//!    without, taking turns: events/s the log took, `EXEC`s aborted by a
//!    changed watched key per 1000 commits
//!    ([`RedisLog::aborted_transactions`]), failed commits and holes
//!    (issue 21 item 9); in `redis_parts/contention.rs`.
//!
//! Run: `cargo bench --features redis --bench redis`. Quick mode
//! (`LIVEREPLAY_BENCH_QUICK=1`, or run without `--bench` as `cargo test
//! --benches` does) uses small sizes and writes no CSV. A name filter that
//! matches neither `delivery`, `shipping`, `catch_up`, `freeze` nor
//! `contention` skips that part. If `redis-server` is not on `PATH` the
//! bench prints a loud SKIPPED line and exits 0, except under `CI=true`,
//! where it fails. Every wait is bounded: a stuck run fails instead of
//! hanging.

#[path = "redis_parts/contention.rs"]
mod contention;
#[path = "../tests/support/redis_server.rs"]
mod redis_server;
mod support;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use livereplay::durable::{DurableLog, MemoryLog, RedisLog, RedisOptions};
use livereplay::{
    CatchUp, Config, Cursor, DurableOptions, DurableStats, NextTimeoutError, RawBytes, ReplayStore,
    Revision, SessionKey, Subscription,
};
use redis::Value;

use redis_server::RedisServer;
use support::{at_quantile, nanos, nanos_since, per_second, spread, Percentiles, Settings};

type Store = ReplayStore<Vec<u8>>;

const PAYLOAD_BYTES: usize = 64;
/// No single wait in this bench lasts longer.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// The server: the tests' own (tests/support/redis_server.rs), with the
// bench's configuration.

/// What the bench adds to the tests' server configuration: the
/// append-only file fsynced once a second, stated rather than left to the
/// server's defaults, and no automatic AOF rewrite (a rewrite forks mid-run
/// and would land in one repetition's figures at random).
const BENCH_SERVER_ARGS: &[&str] = &[
    "--appendfsync",
    "everysec",
    "--auto-aof-rewrite-percentage",
    "0",
];

/// SIGSTOP until dropped (SIGCONT), also while a panic unwinds:
/// connections stay open, nothing is answered.
struct Frozen<'a>(&'a RedisServer);

impl<'a> Frozen<'a> {
    fn new(server: &'a RedisServer) -> Self {
        server.freeze();
        Self(server)
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        self.0.thaw();
    }
}

// ---------------------------------------------------------------------------
// A plain connection for the bench's own commands (INFO, FLUSHALL, the raw
// baseline).

fn connect(url: &str) -> redis::Connection {
    let client = redis::Client::open(url).expect("a valid URL");
    let con = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("connect to the bench's redis-server");
    con.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    con.set_write_timeout(Some(Duration::from_secs(30)))
        .expect("write timeout");
    con
}

/// `INFO <section>` as `field -> value`.
fn info(con: &mut redis::Connection, section: &str) -> HashMap<String, String> {
    let text: String = redis::cmd("INFO").arg(section).query(con).expect("INFO");
    text.lines()
        .filter_map(|line| {
            let (field, value) = line.split_once(':')?;
            Some((field.to_string(), value.trim().to_string()))
        })
        .collect()
}

fn info_number(info: &HashMap<String, String>, field: &str) -> f64 {
    info.get(field)
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("INFO has no number {field}"))
}

/// Calls per command from `INFO commandstats`, without `INFO` itself.
fn command_calls(con: &mut redis::Connection) -> HashMap<String, u64> {
    info(con, "commandstats")
        .into_iter()
        .filter_map(|(field, value)| {
            let command = field.strip_prefix("cmdstat_")?.to_string();
            let calls = value
                .split(',')
                .find_map(|part| part.strip_prefix("calls="))?
                .parse()
                .ok()?;
            (command != "info").then_some((command, calls))
        })
        .collect()
}

/// What one measured stretch cost the server.
#[derive(Clone, Copy)]
struct ServerCounters {
    net_in: f64,
    net_out: f64,
    cpu_seconds: f64,
}

fn server_counters(con: &mut redis::Connection) -> ServerCounters {
    let stats = info(con, "stats");
    let cpu = info(con, "cpu");
    ServerCounters {
        net_in: info_number(&stats, "total_net_input_bytes"),
        net_out: info_number(&stats, "total_net_output_bytes"),
        cpu_seconds: info_number(&cpu, "used_cpu_user") + info_number(&cpu, "used_cpu_sys"),
    }
}

fn used_memory(con: &mut redis::Connection) -> f64 {
    info_number(&info(con, "memory"), "used_memory")
}

fn flush_all(con: &mut redis::Connection) {
    let _: () = redis::cmd("FLUSHALL")
        .arg("SYNC")
        .query(con)
        .expect("FLUSHALL");
}

/// Every bulk string of a reply, depth first (`XREAD`: key, id, field,
/// value, ...).
fn bulk_strings(value: &Value, out: &mut Vec<Vec<u8>>) {
    match value {
        Value::BulkString(bytes) => out.push(bytes.clone()),
        Value::SimpleString(text) => out.push(text.clone().into_bytes()),
        Value::Array(items) | Value::Set(items) => {
            for item in items {
                bulk_strings(item, out);
            }
        }
        Value::Map(pairs) => {
            for (k, v) in pairs {
                bulk_strings(k, out);
                bulk_strings(v, out);
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// Shared helpers.

/// The figures of the run: a CSV of `scenario,design,metric,value`.
struct Out {
    csv: String,
}

impl Out {
    fn row(&mut self, scenario: &str, design: &str, metric: &str, value: f64) {
        let _ = writeln!(self.csv, "{scenario},\"{design}\",{metric},{value:.3}");
    }
}

fn key(name: &str) -> SessionKey {
    SessionKey::new("acme", name).expect("a valid key")
}

fn session_key(i: usize) -> SessionKey {
    key(&format!("chat-{i:06}"))
}

/// The stream of `session_key(i)` under `prefix` (the ids need no
/// escaping; `src/durable/redis/mod.rs` documents the layout).
fn stream_key(prefix: &str, i: usize) -> String {
    format!("{prefix}:{{acme:chat-{i:06}}}:log")
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

fn redis_log(url: &str, prefix: &str) -> Arc<RedisLog> {
    Arc::new(
        RedisLog::open_with(
            url,
            RedisOptions {
                prefix: prefix.into(),
                ..RedisOptions::default()
            },
        )
        .expect("open the Redis log"),
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

/// Waits until the log has recorded `key`'s life (the persister writes it
/// when the session is created), so a timed stretch holds only events.
fn wait_recorded(log: &dyn DurableLog, key: &SessionKey) {
    let deadline = Instant::now() + WAIT_LIMIT;
    while log.meta(key).expect("meta").is_none() {
        assert!(Instant::now() < deadline, "{key}: life never recorded");
        thread::sleep(Duration::from_micros(200));
    }
}

fn human(ns: u64) -> String {
    support::human(ns as f64)
}

/// A small deterministic generator for the pauses (xorshift64).
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
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

/// Builds a store with `build` and finds its persister thread (it names
/// itself once it runs: looked for up to a second).
fn with_persister(build: impl FnOnce() -> Arc<Store>) -> (Arc<Store>, Option<u64>) {
    let before = persister_tasks();
    let store = build();
    let since = Instant::now();
    loop {
        let new: Vec<u64> = persister_tasks().difference(&before).copied().collect();
        if new.len() == 1 {
            return (store, Some(new[0]));
        }
        if since.elapsed() > Duration::from_secs(1) {
            return (store, None);
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// Nanoseconds task `tid` has run on a CPU (`/proc/.../schedstat`), if
/// readable.
fn cpu_nanos(tid: Option<u64>) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/self/task/{}/schedstat", tid?))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------
// 1. A→B delivery latency.

/// A parked reader of one design.
enum Reader {
    CatchUp(CatchUp<Vec<u8>>),
    Subscription(Subscription<Vec<u8>>),
}

impl Reader {
    /// The send time the next event carries.
    fn next_sent(&mut self) -> u64 {
        let event = match self {
            Reader::CatchUp(reader) => reader.next_timeout(WAIT_LIMIT),
            Reader::Subscription(reader) => reader.next_timeout(WAIT_LIMIT),
        };
        value_of(event.expect("a live event").payload())
    }
}

/// A host store's catch-up at the tail of `key`, after reading its first
/// (warm-up) event from the log.
fn parked_catch_up(host: &Store, key: &SessionKey) -> CatchUp<Vec<u8>> {
    let mut reader = host
        .catch_up(&Cursor::start(key.clone()))
        .expect("catch up");
    let first = reader.next_timeout(WAIT_LIMIT).expect("the warm-up event");
    assert_eq!(first.position(), 1);
    reader
}

fn delivery(settings: &Settings, server: &RedisServer, out: &mut Out) {
    let samples = settings.size(1_000, 30);
    println!(
        "\n== 1. A→B delivery latency over loopback Redis: append on A to delivery on host B's parked catch_up; {samples} samples per design, designs taking turns, a random 1 to 3 ms pause before each sample =="
    );
    let url = server.url();
    let mut admin = connect(&url);
    flush_all(&mut admin);
    let prefix = "delivery";
    let default_options = DurableOptions::default();
    let fast_options = DurableOptions::default().with_flush_interval(Duration::from_micros(100));
    let (a_default, default_persister) = with_persister(|| {
        durable_store(
            redis_log(&url, prefix),
            Config::default(),
            default_options.clone(),
        )
    });
    let (a_fast, fast_persister) =
        with_persister(|| durable_store(redis_log(&url, prefix), Config::default(), fast_options));
    let wake_options = DurableOptions::default().with_wake_on_dirty(true);
    let (a_wake, wake_persister) =
        with_persister(|| durable_store(redis_log(&url, prefix), Config::default(), wake_options));
    // Host nodes: their own connections, never writing.
    let hosts: Vec<Arc<Store>> = (0..4)
        .map(|_| {
            durable_store(
                redis_log(&url, prefix),
                Config::default(),
                default_options.clone(),
            )
        })
        .collect();
    let (s_default, s_fast, s_busy, s_idle, s_wake) = (
        key("default"),
        key("fast"),
        key("busy-host"),
        key("idle"),
        key("wake"),
    );
    // One warm-up event per session, so each catch-up starts at the tail.
    for (store, k) in [
        (&a_default, &s_default),
        (&a_fast, &s_fast),
        (&a_default, &s_busy),
        (&a_wake, &s_wake),
    ] {
        store.append(k, Revision(1), payload(0)).expect("append");
        settle(store, k, 1);
    }
    let readers = vec![
        Reader::CatchUp(parked_catch_up(&hosts[0], &s_default)),
        Reader::Subscription(
            a_default
                .session(&s_default)
                .expect("session")
                .subscribe_after(&a_default.current_cursor(&s_default))
                .expect("subscribe"),
        ),
        Reader::CatchUp(parked_catch_up(&hosts[1], &s_fast)),
        Reader::CatchUp(parked_catch_up(&hosts[2], &s_busy)),
        Reader::CatchUp(parked_catch_up(&hosts[3], &s_wake)),
    ];
    let reader_names = [
        "A (flush_interval 2 ms, default) → B",
        "A's own ring subscription (local)",
        "A (flush_interval 0.1 ms) → B",
        "A (default) → B also waiting on an idle session",
        "A (wake_on_dirty) → B",
        "raw XADD → XREAD BLOCK (redis crate)",
    ];
    // A catch-up on a session nobody writes, on the third host.
    let mut idle = hosts[2]
        .catch_up(&Cursor::start(s_idle.clone()))
        .expect("catch up");
    // The raw baseline's stream, and its writer's connection.
    let raw_stream = "raw:floor";
    let mut raw_writer = connect(&url);
    let _: String = redis::cmd("XADD")
        .arg(raw_stream)
        .arg("*")
        .arg("t")
        .arg(0u64.to_le_bytes().as_slice())
        .query(&mut raw_writer)
        .expect("XADD");
    let mut raw_reader = connect(&url);

    // Turns: (appender, key, readers woken by it); the raw turn has none.
    let a_handles = [
        a_default.session(&s_default).expect("session"),
        a_fast.session(&s_fast).expect("session"),
        a_default.session(&s_busy).expect("session"),
        a_wake.session(&s_wake).expect("session"),
    ];
    let turn_readers: [&[usize]; 5] = [&[0, 1], &[2], &[3], &[4], &[5]];
    let delivered: Vec<AtomicUsize> = (0..reader_names.len())
        .map(|_| AtomicUsize::new(0))
        .collect();
    let stop_idle = AtomicBool::new(false);
    let base = Instant::now();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let persister_cpu_before = [
        cpu_nanos(default_persister),
        cpu_nanos(fast_persister),
        cpu_nanos(wake_persister),
    ];
    let latencies: Vec<Vec<u64>> = thread::scope(|scope| {
        let delivered = &delivered;
        let stop_idle = &stop_idle;
        let mut threads = Vec::new();
        for (index, mut reader) in readers.into_iter().enumerate() {
            threads.push(scope.spawn(move || {
                let mut latencies = Vec::with_capacity(samples);
                for count in 1..=samples {
                    let sent = reader.next_sent();
                    latencies.push(nanos_since(base).saturating_sub(sent));
                    delivered[index].store(count, Ordering::Release);
                }
                latencies
            }));
        }
        threads.push(scope.spawn(move || {
            let mut latencies = Vec::with_capacity(samples);
            let mut last_id = b"$".to_vec();
            for count in 1..=samples {
                let reply: Value = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(1)
                    .arg("BLOCK")
                    .arg(WAIT_LIMIT.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(raw_stream)
                    .arg(last_id.as_slice())
                    .query(&mut raw_reader)
                    .expect("XREAD");
                let received = nanos_since(base);
                let mut parts = Vec::new();
                bulk_strings(&reply, &mut parts);
                // key, id, "t", value
                assert_eq!(parts.len(), 4, "one entry: {reply:?}");
                last_id = parts[1].clone();
                let sent = value_of(&parts[3]);
                latencies.push(received.saturating_sub(sent));
                delivered[5].store(count, Ordering::Release);
            }
            latencies
        }));
        let idle_thread = scope.spawn(move || {
            while !stop_idle.load(Ordering::Acquire) {
                match idle.next_timeout(Duration::from_millis(100)) {
                    Err(NextTimeoutError::Timeout) => {}
                    other => panic!("the idle session got {other:?}"),
                }
            }
        });
        // Let the raw reader park on `$` before the first XADD.
        thread::sleep(Duration::from_millis(20));
        for count in 1..=samples {
            for turn in 0..turn_readers.len() {
                let index = (turn + count) % turn_readers.len();
                thread::sleep(Duration::from_micros(1_000 + rng.below(2_000)));
                let sent = nanos_since(base);
                if index < a_handles.len() {
                    a_handles[index]
                        .append(Revision(1), payload(sent))
                        .expect("append");
                } else {
                    let _: String = redis::cmd("XADD")
                        .arg(raw_stream)
                        .arg("*")
                        .arg("t")
                        .arg(sent.to_le_bytes().as_slice())
                        .query(&mut raw_writer)
                        .expect("XADD");
                }
                let waiting_since = Instant::now();
                for &reader in turn_readers[index] {
                    while delivered[reader].load(Ordering::Acquire) < count {
                        assert!(
                            waiting_since.elapsed() < WAIT_LIMIT,
                            "{} did not receive sample {count}",
                            reader_names[reader]
                        );
                        thread::sleep(Duration::from_micros(20));
                    }
                }
            }
        }
        stop_idle.store(true, Ordering::Release);
        let latencies = threads
            .into_iter()
            .map(|thread| thread.join().expect("reader"))
            .collect();
        idle_thread.join().expect("idle reader");
        latencies
    });

    // What the two flush intervals cost A's persister over the part (it
    // mostly polls an empty queue: samples are milliseconds apart).
    let wall = base.elapsed().as_nanos() as f64;
    let persister_share: Vec<Option<f64>> = [default_persister, fast_persister, wake_persister]
        .iter()
        .zip(persister_cpu_before)
        .map(|(&tid, before)| Some((cpu_nanos(tid)? - before?) as f64 / wall))
        .collect();

    // One loopback round trip, for scale.
    let pings = settings.size(1_000, 50);
    let mut rtt: Vec<u64> = (0..pings)
        .map(|_| {
            let start = Instant::now();
            let _: String = redis::cmd("PING").query(&mut admin).expect("PING");
            nanos(start.elapsed())
        })
        .collect();
    let rtt = Percentiles::of(&mut rtt);

    let mut p50 = Vec::new();
    for (name, mut latencies) in reader_names.iter().zip(latencies) {
        let p = Percentiles::of(&mut latencies);
        println!(
            "  {name:<50} p50 {:>9}  p99 {:>9}  max {:>9}  mean {:>9}",
            human(p.p50),
            human(p.p99),
            human(p.max),
            support::human(p.mean)
        );
        for (metric, value) in [
            ("p50_ns", p.p50 as f64),
            ("p99_ns", p.p99 as f64),
            ("max_ns", p.max as f64),
            ("mean_ns", p.mean),
        ] {
            out.row("delivery", name, metric, value);
        }
        p50.push(p.p50 as f64);
    }
    println!(
        "  {:<50} p50 {:>9}  p99 {:>9}  ({pings} round trips on an idle connection, for scale)",
        "PING round trip",
        human(rtt.p50),
        human(rtt.p99)
    );
    out.row("delivery", "PING round trip", "p50_ns", rtt.p50 as f64);
    out.row("delivery", "PING round trip", "p99_ns", rtt.p99 as f64);
    println!(
        "  A→B (default) p50: {:.1}x the local subscription, {:.1}x the raw XADD→XREAD floor; goal p50 <= 1 ms: {} ({:.2} ms)",
        p50[0] / p50[1].max(1.0),
        p50[0] / p50[5].max(1.0),
        if p50[0] <= 1e6 { "met" } else { "MISSED" },
        p50[0] / 1e6
    );
    println!(
        "  A→B (flush_interval 0.1 ms) p50: {:.1}x the raw floor; goal p50 <= 1 ms: {} ({:.2} ms)",
        p50[2] / p50[5].max(1.0),
        if p50[2] <= 1e6 { "met" } else { "MISSED" },
        p50[2] / 1e6
    );
    println!(
        "  A→B (wake_on_dirty) p50: {:.1}x the raw floor; goal p50 <= 1 ms: {} ({:.2} ms)",
        p50[4] / p50[5].max(1.0),
        if p50[4] <= 1e6 { "met" } else { "MISSED" },
        p50[4] / 1e6
    );
    let share = |s: Option<f64>| s.map_or("?".into(), |s| format!("{:.1}%", s * 100.0));
    println!(
        "  A's persister CPU over the part (mostly idle polling): flush_interval 2 ms {}, 0.1 ms {}, wake_on_dirty {} of one CPU",
        share(persister_share[0]),
        share(persister_share[1]),
        share(persister_share[2])
    );
    for (index, share_index, name) in [
        (0, 0, reader_names[0]),
        (2, 1, reader_names[2]),
        (4, 2, reader_names[4]),
    ] {
        if let Some(s) = persister_share[share_index] {
            out.row("delivery", name, "persister_cpu_share", s);
        }
        out.row("delivery", name, "p50_ratio_over_raw", p50[index] / p50[5]);
        out.row(
            "delivery",
            name,
            "p50_ratio_over_local",
            p50[index] / p50[1],
        );
    }
    for store in [&a_default, &a_fast, &a_wake] {
        assert_eq!(durable_stats(store).lost_events, 0);
    }
}

// ---------------------------------------------------------------------------
// 2. Events/s shipped, 3. commands and bytes per event, 4. memory per event.

#[derive(Default)]
struct ShipResult {
    rate: Vec<f64>,
    append_rate: Vec<f64>,
    per_commit: Vec<f64>,
    commands: Vec<f64>,
    net_in: Vec<f64>,
    net_out: Vec<f64>,
    cpu_us: Vec<f64>,
    persister_cpu_us: Vec<f64>,
    memory: Vec<f64>,
    stream_memory: Vec<f64>,
    /// Calls per command, summed over the repetitions.
    calls: HashMap<String, u64>,
    events: u64,
}

fn ship_once(
    url: &str,
    admin: &mut redis::Connection,
    sessions: usize,
    events: usize,
    result: &mut ShipResult,
) {
    let prefix = "ship";
    flush_all(admin);
    let per_session = events.div_ceil(sessions);
    // Every event fits in its ring: nothing is lapped, Redis sets the pace.
    let config = Config::default()
        .with_capacity(per_session.next_power_of_two().max(64))
        .with_max_age(Duration::from_secs(3600));
    let log = redis_log(url, prefix);
    let (store, persister) =
        with_persister(|| durable_store(log.clone(), config, DurableOptions::default()));
    let keys: Vec<SessionKey> = (0..sessions).map(session_key).collect();
    let handles: Vec<_> = keys
        .iter()
        .map(|key| store.session(key).expect("session"))
        .collect();
    for key in &keys {
        wait_recorded(log.as_ref(), key);
    }
    let stats_before = durable_stats(&store);
    let memory_before = used_memory(admin);
    let calls_before = command_calls(admin);
    let counters_before = server_counters(admin);
    let persister_before = cpu_nanos(persister);

    let start = Instant::now();
    for i in 0..events {
        handles[i % sessions]
            .append(Revision(1), payload(i as u64))
            .expect("append");
    }
    let appended = start.elapsed();
    for (key, handle) in keys.iter().zip(&handles) {
        settle(&store, key, handle.latest_position().expect("appended"));
    }
    let took = start.elapsed();
    let persister_after = cpu_nanos(persister);

    let counters_after = server_counters(admin);
    let calls_after = command_calls(admin);
    let stats_after = durable_stats(&store);
    let memory_after = used_memory(admin);
    let stream_bytes: Option<i64> = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(stream_key(prefix, 0))
        .arg("SAMPLES")
        .arg(0)
        .query(admin)
        .expect("MEMORY USAGE");
    let lost = stats_after.lost_events - stats_before.lost_events;
    assert_eq!(lost, 0, "the appender lapped the persister");
    let commits = stats_after.commits - stats_before.commits;
    let n = events as f64;
    let mut commands = 0;
    for (command, calls) in &calls_after {
        let delta = calls - calls_before.get(command).copied().unwrap_or(0);
        if delta > 0 {
            *result.calls.entry(command.clone()).or_default() += delta;
            commands += delta;
        }
    }
    result.events += events as u64;
    result.rate.push(n / took.as_secs_f64());
    result.append_rate.push(n / appended.as_secs_f64());
    result.per_commit.push(n / commits.max(1) as f64);
    result.commands.push(commands as f64 / n);
    result
        .net_in
        .push((counters_after.net_in - counters_before.net_in) / n);
    result
        .net_out
        .push((counters_after.net_out - counters_before.net_out) / n);
    result
        .cpu_us
        .push((counters_after.cpu_seconds - counters_before.cpu_seconds) * 1e6 / n);
    if let (Some(before), Some(after)) = (persister_before, persister_after) {
        result
            .persister_cpu_us
            .push((after - before) as f64 / 1e3 / n);
    }
    result.memory.push((memory_after - memory_before) / n);
    result
        .stream_memory
        .push(stream_bytes.unwrap_or(0) as f64 / per_session as f64);
    drop(handles);
    drop(store);
}

fn shipping(settings: &Settings, server: &RedisServer, out: &mut Out) {
    let events = settings.size(200_000, 5_000);
    let reps = settings.size(3, 1);
    let cases = [1usize, 64];
    println!(
        "\n== 2.-4. shipping {events} events of {PAYLOAD_BYTES} bytes (to 1 session, and round-robin to 64) until every last position is durable; {reps} repetitions per case, taking turns; the server is flushed before each =="
    );
    let url = server.url();
    let mut admin = connect(&url);
    let mut results: Vec<ShipResult> = cases.iter().map(|_| ShipResult::default()).collect();
    for rep in 0..reps {
        for turn in 0..cases.len() {
            let index = (turn + rep) % cases.len();
            ship_once(&url, &mut admin, cases[index], events, &mut results[index]);
        }
    }
    flush_all(&mut admin);
    for (sessions, result) in cases.iter().zip(&results) {
        let name = if *sessions == 1 {
            "1 session".to_string()
        } else {
            format!("{sessions} sessions")
        };
        println!(
            "  {name:<12} shipped {}  (the writer appended at {}; {:.0} events per commit)",
            spread(&result.rate, per_second),
            per_second(at_quantile(&result.append_rate, 0.5)),
            at_quantile(&result.per_commit, 0.5),
        );
        let mut calls: Vec<(&String, &u64)> = result.calls.iter().collect();
        calls.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let breakdown: Vec<String> = calls
            .iter()
            .map(|(command, calls)| {
                format!("{command} {:.4}", **calls as f64 / result.events as f64)
            })
            .collect();
        println!(
            "  {:<12} per event: {} Redis commands ({}), {} bytes in, {} bytes out, {} µs of server CPU, {} µs of A's persister thread",
            "",
            spread(&result.commands, |v| format!("{v:.3}")),
            breakdown.join(", "),
            spread(&result.net_in, |v| format!("{v:.1}")),
            spread(&result.net_out, |v| format!("{v:.1}")),
            spread(&result.cpu_us, |v| format!("{v:.2}")),
            if result.persister_cpu_us.is_empty() {
                "?".to_string()
            } else {
                spread(&result.persister_cpu_us, |v| format!("{v:.2}"))
            },
        );
        println!(
            "  {:<12} memory per retained event: used_memory {} B; one session's stream (MEMORY USAGE) {} B",
            "",
            spread(&result.memory, |v| format!("{v:.1}")),
            spread(&result.stream_memory, |v| format!("{v:.1}")),
        );
        for (metric, values) in [
            ("events_per_s", &result.rate),
            ("commands_per_event", &result.commands),
            ("net_in_bytes_per_event", &result.net_in),
            ("net_out_bytes_per_event", &result.net_out),
            ("server_cpu_us_per_event", &result.cpu_us),
            ("persister_cpu_us_per_event", &result.persister_cpu_us),
            ("used_memory_bytes_per_event", &result.memory),
            ("stream_memory_bytes_per_event", &result.stream_memory),
        ] {
            if values.is_empty() {
                continue;
            }
            out.row(
                "shipping",
                &name,
                &format!("{metric}_median"),
                at_quantile(values, 0.5),
            );
            out.row(
                "shipping",
                &name,
                &format!("{metric}_min"),
                at_quantile(values, 0.0),
            );
            out.row(
                "shipping",
                &name,
                &format!("{metric}_max"),
                at_quantile(values, 1.0),
            );
        }
        out.row(
            "shipping",
            &name,
            "events_per_commit",
            at_quantile(&result.per_commit, 0.5),
        );
    }
}

// ---------------------------------------------------------------------------
// 5. Catch-up from Redis.

fn catch_up(settings: &Settings, server: &RedisServer, out: &mut Out) {
    let events = settings.size(100_000, 5_000);
    let reps = settings.size(5, 1);
    println!(
        "\n== 5. catch-up of {events} events of one session by a host store from Cursor::start (the host never holds the session: every event comes from the log); {reps} repetitions per log, taking turns =="
    );
    let url = server.url();
    let mut admin = connect(&url);
    flush_all(&mut admin);
    let key = session_key(0);
    // The writer's ring holds every event: nothing is lapped.
    let writer_config = Config::default()
        .with_capacity(events.next_power_of_two())
        .with_max_age(Duration::from_secs(3600));
    let host_config = Config::default().with_capacity(2048);
    let redis_writer_log: Arc<dyn DurableLog> = redis_log(&url, "catchup");
    let memory_log: Arc<dyn DurableLog> = Arc::new(MemoryLog::shared());
    let redis_host = durable_store(
        redis_log(&url, "catchup"),
        host_config.clone(),
        DurableOptions::default(),
    );
    let memory_host = durable_store(
        Arc::clone(&memory_log),
        host_config,
        DurableOptions::default(),
    );
    let mut writers = Vec::new();
    for log in [redis_writer_log, memory_log] {
        let writer = durable_store(log, writer_config.clone(), DurableOptions::default());
        let handle = writer.session(&key).expect("session");
        for i in 1..=events as u64 {
            handle.append(Revision(1), payload(i)).expect("append");
        }
        settle(&writer, &key, events as u64);
        assert_eq!(durable_stats(&writer).lost_events, 0);
        writers.push(writer);
    }
    let logs = [
        ("RedisLog", &redis_host),
        ("MemoryLog (shared)", &memory_host),
    ];
    let mut rates: [Vec<f64>; 2] = Default::default();
    // The server's CPU time per event read (Redis only).
    let mut server_cpu_us: Vec<f64> = Vec::new();
    for rep in 0..reps {
        for turn in 0..logs.len() {
            let index = (turn + rep) % logs.len();
            let host = logs[index].1;
            let counters_before = (index == 0).then(|| server_counters(&mut admin));
            let start = Instant::now();
            let mut reader = host
                .catch_up(&Cursor::start(key.clone()))
                .expect("catch up");
            for expected in 1..=events as u64 {
                let event = reader.next_timeout(WAIT_LIMIT).expect("an event");
                assert_eq!(event.position(), expected, "in order, exactly once");
                assert_eq!(value_of(event.payload()), expected);
            }
            let took = start.elapsed();
            assert!(!reader.is_live(), "the host has no ring for the session");
            assert!(!host.is_resident(&key), "a reader never restores it");
            rates[index].push(events as f64 / took.as_secs_f64());
            if let Some(before) = counters_before {
                let after = server_counters(&mut admin);
                server_cpu_us.push((after.cpu_seconds - before.cpu_seconds) * 1e6 / events as f64);
            }
        }
    }
    for (index, (name, _)) in logs.iter().enumerate() {
        println!("  {name:<20} {}", spread(&rates[index], per_second));
        if index == 0 {
            println!(
                "  {:<20} server CPU {} µs per event read",
                "",
                spread(&server_cpu_us, |v| format!("{v:.2}"))
            );
            out.row(
                "catch_up",
                name,
                "server_cpu_us_per_event_median",
                at_quantile(&server_cpu_us, 0.5),
            );
        }
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
    }
    let ratio = at_quantile(&rates[0], 0.5) / at_quantile(&rates[1], 0.5);
    println!(
        "  RedisLog / MemoryLog: {ratio:.2}x the rate ({} records per read)",
        livereplay::LOG_BATCH
    );
    out.row("catch_up", "RedisLog", "ratio_over_memorylog", ratio);
    drop(writers);
    flush_all(&mut admin);
}

// ---------------------------------------------------------------------------
// 6. Append latency while Redis is frozen.

fn freeze(settings: &Settings, server: &RedisServer, out: &mut Out) {
    const INTERVAL: Duration = Duration::from_micros(20);
    let phase = Duration::from_millis(settings.size(2_000, 500) as u64);
    let pairs = settings.size(5, 1);
    let per_phase = (phase.as_nanos() / INTERVAL.as_nanos()) as usize;
    // A phase's events plus as many again of backlog (a frozen phase's
    // events are all undurable at its end), rounded up: never lapped.
    let capacity = (2 * per_phase).next_power_of_two();
    println!(
        "\n== 6. append latency on A, one append every {} µs through a handle, Redis running vs frozen (SIGSTOP for {} ms, then SIGCONT); {pairs} pairs of phases, alternating; ring capacity {capacity}, filled first ({per_phase} appends per phase) ==",
        INTERVAL.as_micros(),
        phase.as_millis()
    );
    let url = server.url();
    let mut admin = connect(&url);
    flush_all(&mut admin);
    let log = redis_log(&url, "freeze");
    let store = durable_store(
        log.clone(),
        Config::default()
            .with_capacity(capacity)
            .with_max_age(Duration::from_secs(3600)),
        DurableOptions::default(),
    );
    let key = session_key(0);
    let handle = store.session(&key).expect("session");
    wait_recorded(log.as_ref(), &key);
    // Start full, so every phase overwrites as in the steady state (the
    // first phases would otherwise only allocate, which is cheaper at the
    // tail, and bias whichever condition comes first).
    let mut next_value = 0u64;
    for _ in 0..capacity {
        next_value += 1;
        handle
            .append(Revision(1), payload(next_value))
            .expect("append");
    }
    settle(&store, &key, next_value);
    let before = durable_stats(&store);
    let names = ["Redis running", "Redis frozen (SIGSTOP)"];
    let mut all: [Vec<u64>; 2] = Default::default();
    let mut per_phase_p999: [Vec<f64>; 2] = Default::default();
    let mut undurable_at_end: [Vec<f64>; 2] = Default::default();
    let mut catch_up_after: Vec<f64> = Vec::new();
    for pair in 0..pairs {
        for turn in 0..2 {
            // Alternate which condition comes first in a pair.
            let frozen = (turn + pair) % 2 == 1;
            let guard = frozen.then(|| Frozen::new(server));
            let mut samples = Vec::with_capacity(per_phase);
            let start = Instant::now();
            for i in 0..per_phase {
                let due = start + INTERVAL * i as u32;
                while Instant::now() < due {
                    std::hint::spin_loop();
                }
                next_value += 1;
                let p = payload(next_value);
                let t = Instant::now();
                std::hint::black_box(handle.append(Revision(1), p).expect("append"));
                samples.push(nanos(t.elapsed()));
            }
            let last = handle.latest_position().expect("appended");
            let durable = store
                .durable_position(&key)
                .expect("durable position")
                .unwrap_or(0);
            undurable_at_end[usize::from(frozen)].push((last - durable) as f64);
            drop(guard);
            let thawed = Instant::now();
            settle(&store, &key, last);
            if frozen {
                catch_up_after.push(thawed.elapsed().as_secs_f64() * 1e3);
            }
            let p = Percentiles::of(&mut samples);
            per_phase_p999[usize::from(frozen)].push(p.p999 as f64);
            all[usize::from(frozen)].extend_from_slice(&samples);
        }
    }
    let after = durable_stats(&store);
    let lost = after.lost_events - before.lost_events;
    let failures = after.log_failures - before.log_failures;
    let mut results = Vec::new();
    for (index, name) in names.iter().enumerate() {
        let mut samples = std::mem::take(&mut all[index]);
        let p = Percentiles::of(&mut samples);
        println!(
            "  {name:<24} n={:<7} p50 {:>9}  p99 {:>9}  p99.9 {:>9}  max {:>9}  mean {:>9};  p99.9 per phase {};  undurable at the phase's end {}",
            p.count,
            human(p.p50),
            human(p.p99),
            human(p.p999),
            human(p.max),
            support::human(p.mean),
            spread(&per_phase_p999[index], support::human),
            spread(&undurable_at_end[index], |v| format!("{v:.0}")),
        );
        for (metric, value) in [
            ("p50_ns", p.p50 as f64),
            ("p99_ns", p.p99 as f64),
            ("p999_ns", p.p999 as f64),
            ("max_ns", p.max as f64),
            ("mean_ns", p.mean),
        ] {
            out.row("freeze", name, metric, value);
        }
        results.push(p);
    }
    let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    let (running, frozen) = (results[0], results[1]);
    println!(
        "  frozen / running: p50 {:.2}x  p99 {:.2}x  p99.9 {:.2}x  max {:.2}x;  backlog durable {} after SIGCONT;  lost_events {lost}{};  failed commits {failures}",
        ratio(frozen.p50, running.p50),
        ratio(frozen.p99, running.p99),
        ratio(frozen.p999, running.p999),
        ratio(frozen.max, running.max),
        spread(&catch_up_after, |v| format!("{v:.0} ms")),
        if lost == 0 { " (valid)" } else { " (INVALID: the ring lapped the persister)" },
    );
    // Frozen over running p99.9 within each pair (the phases next to each
    // other in time).
    let pair_ratios: Vec<f64> = per_phase_p999[1]
        .iter()
        .zip(&per_phase_p999[0])
        .map(|(frozen, running)| frozen / running.max(1.0))
        .collect();
    println!(
        "  p99.9 frozen / running within each pair: {}",
        spread(&pair_ratios, |v| format!("{v:.2}x"))
    );
    out.row(
        "freeze",
        names[1],
        "p999_ratio_over_running",
        ratio(frozen.p999, running.p999),
    );
    out.row(
        "freeze",
        names[1],
        "p999_pair_ratio_median",
        at_quantile(&pair_ratios, 0.5),
    );
    out.row("freeze", names[1], "lost_events", lost as f64);
    out.row("freeze", names[1], "failed_commits", failures as f64);
    out.row(
        "freeze",
        names[1],
        "backlog_durable_ms_median",
        at_quantile(&catch_up_after, 0.5),
    );
    assert_eq!(lost, 0, "the ring lapped the persister during the freeze");
    drop(handle);
    drop(store);
    flush_all(&mut admin);
}

fn main() {
    let settings = Settings::from_args();
    if settings.quick {
        println!("redis: quick mode (small sizes; figures are not meaningful)");
    }
    let Some(server) = RedisServer::start_with(BENCH_SERVER_ARGS) else {
        return;
    };
    println!(
        "redis-server on 127.0.0.1:{} (pid {}), appendonly yes, appendfsync everysec, no RDB, no automatic AOF rewrite",
        server.port(),
        server.pid().unwrap_or(0)
    );
    let mut out = Out {
        csv: String::from("scenario,design,metric,value\n"),
    };
    if settings.runs("delivery") {
        delivery(&settings, &server, &mut out);
    }
    if settings.runs("shipping") {
        shipping(&settings, &server, &mut out);
    }
    if settings.runs("catch_up") {
        catch_up(&settings, &server, &mut out);
    }
    if settings.runs("freeze") {
        freeze(&settings, &server, &mut out);
    }
    if settings.runs("contention") {
        contention::contention(&settings, &server, &mut out);
    }
    support::write_out("redis-summary.csv", &out.csv);
    drop(server);
}
