//! PostgreSQL as the durable tier (issue 23), measured in one run against a
//! server the bench starts itself through the tests' support module
//! (`tests/support/postgres_server.rs`: Debian's binaries, 127.0.0.1 on a
//! free port, its own temporary data directory, `fsync` and
//! `synchronous_commit` on), and against redb in the same run where the
//! question makes sense for an embedded file. The server is stopped and its
//! directory removed at the end, also when a part panics.
//!
//! 1. **persist**: a store appends N events of 64 bytes to 1 session and
//!    round-robin to 64 sessions (the rings hold every event: nothing is
//!    lapped, the log sets the pace); the clock stops when every session's
//!    last position is durable. Postgres and redb take turns, 3 repetitions
//!    each. With it, **bytes on disk per event**: the growth of
//!    `pg_total_relation_size` of the records table (heap, primary key,
//!    TOAST) and of the WAL (`pg_current_wal_lsn`), against the growth of
//!    the redb file, divided by N.
//! 2. **catch_up**: 100 000 events of one session written straight into
//!    the log in commits of 1 000, then read by a fresh store from
//!    `Cursor::start` (its ring holds none of them): events/s, Postgres
//!    against redb.
//! 3. **delivery**: store A (the runtime) appends an event carrying its send
//!    time; store B (its own `PostgresLog` on the same schema, never
//!    writing) has a catch-up parked at the tail and records
//!    append-to-delivery, woken through `LISTEN`/`NOTIFY`. A random 1 to
//!    3 ms pause before each sample; A with the default `flush_interval`
//!    (2 ms) and with `wake_on_dirty`. Baselines in the same run: a bare
//!    `NOTIFY` → notification between two connections of the `postgres`
//!    crate (the floor of Postgres itself), and one `PostgresLog::append`
//!    of one event alone (the commit and its fsync). redb has no second
//!    node.
//!
//! Run: `cargo bench --features postgres,redb --bench postgres`. Quick mode
//! (`LIVEREPLAY_BENCH_QUICK=1`, or without `--bench` as `cargo test
//! --benches` does) uses small sizes and writes no CSV. A name filter that
//! matches neither `persist`, `catch_up` nor `delivery` skips that part.
//! Without the server binaries the bench prints a loud SKIPPED line and
//! exits 0, except under `CI=true`, where it fails. Every wait is bounded.

#[path = "../tests/support/postgres_server.rs"]
mod postgres_server;
mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use livereplay::durable::{
    DurableLog, Life, LogRecord, PostgresLog, PostgresOptions, RecordBody, RedbLog, SessionWrite,
    StoredEvent,
};
use livereplay::{
    Config, Cursor, DurableOptions, Incarnation, RawBytes, ReplayStore, Revision, SessionKey,
};
use postgres::fallible_iterator::FallibleIterator;

use postgres_server::PostgresServer;
use support::{nanos_since, per_second, spread, Percentiles, Settings};

type Store = ReplayStore<Vec<u8>>;

const PAYLOAD_BYTES: usize = 64;
/// No single wait in this bench lasts longer.
const WAIT_LIMIT: Duration = Duration::from_secs(120);

fn key(i: usize) -> SessionKey {
    SessionKey::new("acme", &format!("chat-{i:06}")).expect("a valid key")
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

fn pg_log(server: &PostgresServer, schema: &str) -> Arc<PostgresLog> {
    let options = PostgresOptions {
        schema: schema.into(),
        ..PostgresOptions::default()
    };
    Arc::new(PostgresLog::open_with(&server.params(), options).expect("open the Postgres log"))
}

fn store(log: Arc<dyn DurableLog>, capacity: usize) -> Store {
    Store::builder()
        .config(
            Config::default()
                .with_capacity(capacity.next_power_of_two().max(64))
                .with_max_age(Duration::from_secs(3600)),
        )
        .durable(log, RawBytes)
        .durable_options(DurableOptions::default())
        .build()
        .expect("build the store")
}

fn settle(store: &Store, key: &SessionKey, position: u64) {
    if let Err(error) = store.wait_durable(key, position, WAIT_LIMIT) {
        panic!("{key}: position {position} not durable: {error}");
    }
}

/// A fresh directory for a redb file, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir =
            std::env::temp_dir().join(format!("livereplay-{what}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `(records table bytes, WAL position)` of a schema.
fn pg_sizes(admin: &mut postgres::Client, schema: &str) -> (f64, f64) {
    let row = admin
        .query_one(
            &format!(
                "SELECT pg_total_relation_size('{schema}.records')::float8, \
                 (pg_current_wal_lsn() - '0/0'::pg_lsn)::float8"
            ),
            &[],
        )
        .expect("sizes");
    (row.get(0), row.get(1))
}

/// Appends `events` round-robin to `sessions` sessions and waits until all
/// are durable: events/s.
fn persist_once(log: Arc<dyn DurableLog>, sessions: usize, events: usize) -> f64 {
    let per_session = events.div_ceil(sessions);
    let store = store(log, per_session);
    let keys: Vec<SessionKey> = (0..sessions).map(key).collect();
    let handles: Vec<_> = keys
        .iter()
        .map(|k| store.session(k).expect("session"))
        .collect();
    // The lives are recorded before the clock starts.
    for k in &keys {
        let deadline = Instant::now() + WAIT_LIMIT;
        while store.durable_position(k).ok().flatten().is_none() {
            assert!(Instant::now() < deadline, "{k}: never recorded");
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let start = Instant::now();
    for i in 0..events {
        handles[i % sessions]
            .append(Revision(1), payload(i as u64))
            .expect("append");
    }
    for (k, handle) in keys.iter().zip(&handles) {
        settle(&store, k, handle.latest_position().expect("appended"));
    }
    let took = start.elapsed();
    let lost = store.stats().durable.expect("durable").lost_events;
    assert_eq!(lost, 0, "the appender lapped the persister");
    events as f64 / took.as_secs_f64()
}

fn persist(settings: &Settings, server: &PostgresServer, csv: &mut String) {
    let events = settings.size(200_000, 5_000);
    let reps = settings.size(3, 1);
    println!(
        "\n== 1. persist {events} events of {PAYLOAD_BYTES} bytes (to 1 session, and round-robin to 64) until every last position is durable; {reps} repetitions, Postgres and redb taking turns; a fresh schema / file each =="
    );
    let mut admin = server.client();
    for sessions in [1usize, 64] {
        let (mut pg_rates, mut redb_rates) = (Vec::new(), Vec::new());
        let (mut pg_table, mut pg_wal, mut redb_file) = (Vec::new(), Vec::new(), Vec::new());
        for rep in 0..reps {
            let schema = format!("bench_persist_{sessions}_{rep}");
            let log = pg_log(server, &schema);
            let (table0, wal0) = pg_sizes(&mut admin, &schema);
            pg_rates.push(persist_once(log, sessions, events));
            let (table1, wal1) = pg_sizes(&mut admin, &schema);
            pg_table.push((table1 - table0) / events as f64);
            pg_wal.push((wal1 - wal0) / events as f64);

            let dir = TempDir::new("bench-redb");
            let path = dir.0.join("log.redb");
            let log = Arc::new(RedbLog::open(&path).expect("a redb log"));
            let size0 = std::fs::metadata(&path).map_or(0, |m| m.len()) as f64;
            redb_rates.push(persist_once(log.clone(), sessions, events));
            drop(log);
            let size1 = std::fs::metadata(&path).map_or(0, |m| m.len()) as f64;
            redb_file.push((size1 - size0) / events as f64);
        }
        let bytes = |v: f64| format!("{v:.0} B");
        println!(
            "{sessions:>2} session(s): Postgres {} | redb {} | Postgres/redb {:.2}",
            spread(&pg_rates, per_second),
            spread(&redb_rates, per_second),
            support::at_quantile(&pg_rates, 0.5) / support::at_quantile(&redb_rates, 0.5)
        );
        println!(
            "   bytes per event: Postgres records table {}, WAL {} | redb file {}",
            spread(&pg_table, bytes),
            spread(&pg_wal, bytes),
            spread(&redb_file, bytes)
        );
        for (design, rates) in [("postgres", &pg_rates), ("redb", &redb_rates)] {
            csv.push_str(&format!(
                "persist,{design},events_per_s_{sessions},{}\n",
                support::at_quantile(rates, 0.5)
            ));
        }
        csv.push_str(&format!(
            "persist,postgres,table_bytes_per_event_{sessions},{}\npersist,postgres,wal_bytes_per_event_{sessions},{}\npersist,redb,file_bytes_per_event_{sessions},{}\n",
            support::at_quantile(&pg_table, 0.5),
            support::at_quantile(&pg_wal, 0.5),
            support::at_quantile(&redb_file, 0.5)
        ));
    }
}

/// Writes `events` events of one session straight into `log`, 1 000 per
/// commit.
fn fill(log: &dyn DurableLog, k: &SessionKey, events: u64) {
    let incarnation = Incarnation::from_raw(1).expect("non-zero");
    let mut next = 1;
    while next <= events {
        let last = (next + 999).min(events);
        let records: Vec<LogRecord> = (next..=last)
            .map(|position| LogRecord {
                position,
                incarnation,
                body: RecordBody::Event(StoredEvent {
                    revision: 1,
                    timestamp_nanos: 1_700_000_000_000_000_000 + position,
                    links: Default::default(),
                    payload: payload(position),
                }),
            })
            .collect();
        let new_life = (next == 1).then_some(Life {
            incarnation,
            first_position: 1,
        });
        log.append(&[SessionWrite {
            key: k,
            new_life,
            records: &records,
            closure: None,
            turn_owner: None,
        }])
        .expect("fill the log");
        next = last + 1;
    }
}

/// Reads every event of `k` from the start through a fresh store: events/s.
fn read_all(log: Arc<dyn DurableLog>, k: &SessionKey, events: u64) -> f64 {
    let store = store(log, 64);
    let start = Instant::now();
    let mut reader = store.catch_up(&Cursor::start(k.clone())).expect("catch up");
    for position in 1..=events {
        let event = reader.next_timeout(WAIT_LIMIT).expect("an event");
        assert_eq!(event.position(), position);
    }
    events as f64 / start.elapsed().as_secs_f64()
}

fn catch_up(settings: &Settings, server: &PostgresServer, csv: &mut String) {
    let events = settings.size(100_000, 5_000) as u64;
    let reps = settings.size(3, 1);
    println!(
        "\n== 2. catch_up: {events} events of one session read from Cursor::start by a store that holds none of them; {reps} repetitions, taking turns =="
    );
    let k = key(0);
    let pg = pg_log(server, "bench_catch_up");
    fill(pg.as_ref(), &k, events);
    let dir = TempDir::new("bench-redb-catch-up");
    let redb: Arc<dyn DurableLog> =
        Arc::new(RedbLog::open(dir.0.join("log.redb")).expect("a redb log"));
    fill(redb.as_ref(), &k, events);
    let (mut pg_rates, mut redb_rates) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        pg_rates.push(read_all(pg.clone(), &k, events));
        redb_rates.push(read_all(redb.clone(), &k, events));
    }
    println!(
        "Postgres {} | redb {} | Postgres/redb {:.2}",
        spread(&pg_rates, per_second),
        spread(&redb_rates, per_second),
        support::at_quantile(&pg_rates, 0.5) / support::at_quantile(&redb_rates, 0.5)
    );
    csv.push_str(&format!(
        "catch_up,postgres,events_per_s,{}\ncatch_up,redb,events_per_s,{}\n",
        support::at_quantile(&pg_rates, 0.5),
        support::at_quantile(&redb_rates, 0.5)
    ));
}

/// A small deterministic generator for the pauses (xorshift64).
struct Rng(u64);

impl Rng {
    fn pause(&mut self) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_micros(1_000 + self.0 % 2_000)
    }
}

fn delivery(settings: &Settings, server: &PostgresServer, csv: &mut String) {
    let samples = settings.size(1_000, 30);
    println!(
        "\n== 3. A→B delivery over loopback Postgres: append on A to delivery on host B's parked catch_up (LISTEN/NOTIFY); {samples} samples, a random 1 to 3 ms pause before each; baseline: a bare NOTIFY between two connections =="
    );
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut results = Vec::new();
    for (design, options) in [
        ("default flush_interval (2 ms)", DurableOptions::default()),
        (
            "wake_on_dirty",
            DurableOptions::default().with_wake_on_dirty(true),
        ),
    ] {
        let schema = if results.is_empty() {
            "bench_delivery_default"
        } else {
            "bench_delivery_wake"
        };
        let a = Store::builder()
            .durable(pg_log(server, schema), RawBytes)
            .durable_options(options)
            .build()
            .expect("store A");
        let b = store(pg_log(server, schema), 64);
        let k = key(0);
        let base = Instant::now();
        a.append(&k, Revision(1), payload(nanos_since(base)))
            .expect("warm-up");
        let mut reader = b.catch_up(&Cursor::start(k.clone())).expect("catch up");
        reader.next_timeout(WAIT_LIMIT).expect("the warm-up event");
        let mut latencies = Vec::with_capacity(samples);
        for _ in 0..samples {
            std::thread::sleep(rng.pause());
            a.append(&k, Revision(1), payload(nanos_since(base)))
                .expect("append");
            let event = reader.next_timeout(WAIT_LIMIT).expect("delivered");
            latencies.push(nanos_since(base) - value_of(event.payload()));
        }
        results.push((design, Percentiles::of(&mut latencies)));
    }

    // The floor: NOTIFY on one connection to the notification on another.
    let mut listener = server.client();
    listener
        .batch_execute("LISTEN bench_floor")
        .expect("listen");
    let mut notifier = server.client();
    let mut floor = Vec::with_capacity(samples);
    for _ in 0..samples {
        std::thread::sleep(rng.pause());
        let sent = Instant::now();
        notifier
            .batch_execute("NOTIFY bench_floor")
            .expect("notify");
        let mut notifications = listener.notifications();
        notifications
            .timeout_iter(WAIT_LIMIT)
            .next()
            .expect("notifications")
            .expect("a notification");
        floor.push(nanos_since(sent));
    }
    let floor = Percentiles::of(&mut floor);

    // What one commit of one event costs on its own (the fsync included):
    // the part of the delivery the log itself takes.
    let log = pg_log(server, "bench_delivery_commit");
    let k = key(0);
    let incarnation = Incarnation::from_raw(1).expect("non-zero");
    let mut commits = Vec::with_capacity(samples);
    for position in 1..=samples as u64 {
        let records = [LogRecord {
            position,
            incarnation,
            body: RecordBody::Event(StoredEvent {
                revision: 1,
                timestamp_nanos: position,
                links: Default::default(),
                payload: payload(position),
            }),
        }];
        let new_life = (position == 1).then_some(Life {
            incarnation,
            first_position: 1,
        });
        std::thread::sleep(rng.pause());
        let sent = Instant::now();
        log.append(&[SessionWrite {
            key: &k,
            new_life,
            records: &records,
            closure: None,
            turn_owner: None,
        }])
        .expect("append");
        commits.push(nanos_since(sent));
    }
    let commit = Percentiles::of(&mut commits);
    let human = |ns: u64| support::human(ns as f64);
    for (design, delivered) in &results {
        println!(
            "A→B, A with {design}: p50 {} p99 {} max {} | {:.1}x the bare NOTIFY's p50",
            human(delivered.p50),
            human(delivered.p99),
            human(delivered.max),
            delivered.p50 as f64 / floor.p50.max(1) as f64
        );
        csv.push_str(&format!(
            "delivery,{design},p50_ns,{}\ndelivery,{design},p99_ns,{}\n",
            delivered.p50, delivered.p99
        ));
    }
    println!(
        "bare NOTIFY → notification between two connections: p50 {} p99 {}",
        human(floor.p50),
        human(floor.p99)
    );
    println!(
        "one PostgresLog::append of one event (its commit's fsync included): p50 {} p99 {}",
        human(commit.p50),
        human(commit.p99)
    );
    csv.push_str(&format!(
        "delivery,one_append,p50_ns,{}\ndelivery,one_append,p99_ns,{}\n",
        commit.p50, commit.p99
    ));
    csv.push_str(&format!(
        "delivery,bare_notify,p50_ns,{}\ndelivery,bare_notify,p99_ns,{}\n",
        floor.p50, floor.p99
    ));
}

fn main() {
    let settings = Settings::from_args();
    if settings.quick {
        println!("postgres: quick mode (small sizes; figures are not meaningful)");
    }
    let Some(server) = PostgresServer::start() else {
        return;
    };
    println!(
        "postgres on 127.0.0.1:{} (pid {}), fsync on, synchronous_commit on",
        server.port(),
        server.pid().unwrap_or(0)
    );
    let mut csv = String::from("scenario,design,metric,value\n");
    if settings.runs("persist") {
        persist(&settings, &server, &mut csv);
    }
    if settings.runs("catch_up") {
        catch_up(&settings, &server, &mut csv);
    }
    if settings.runs("delivery") {
        delivery(&settings, &server, &mut csv);
    }
    support::write_out("postgres-summary.csv", &csv);
    drop(server);
}
