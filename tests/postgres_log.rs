//! `PostgresLog` (feature `postgres`) against a real PostgreSQL server the
//! tests start (`support/postgres_server.rs`: Debian's binaries, a fresh
//! data directory, 127.0.0.1 and a free port): the whole durable-log
//! conformance suite with its reopen tests (reopen = a new `PostgresLog`
//! on the same server and schema), and what only Postgres has: the tables
//! and schema version, idempotent migrations, `NOTIFY` in the commit, two
//! nodes racing on one session, two nodes serving one session (history and
//! live through `LISTEN`), a node taken over and fenced, damaged rows, calls
//! from inside a tokio runtime (an async host), and
//! the faults of issue 23: the server SIGKILLed mid-stream and restarted,
//! frozen for 2 s, and the log's connection terminated, under a store that
//! keeps appending.
//!
//! The causal-index suite (`tests/dag.rs`) and the seeds' adapters
//! (`tests/adapters.rs`) run on Postgres too, from their own files.
//!
//! Without the server binaries the tests say SKIPPED and return (in CI,
//! `CI=true`, they fail instead).

#[path = "support/durable_suite.rs"]
#[macro_use]
mod durable_suite;
#[path = "support/postgres_server.rs"]
mod postgres_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use livereplay::durable::{DurableLog, LogError, PostgresLog, PostgresOptions};
use postgres::fallible_iterator::FallibleIterator;

use durable_suite::{
    append_ok, event, events, hole, key, life, listed, load_all, meta_of, positions, unique_name,
    ServerBackend,
};
use postgres_server::PostgresServer;

/// A fresh server and a `PostgresLog` on it under a schema of its own.
pub type PgBackend = ServerBackend<PostgresServer, PostgresLog>;

/// `None` when the binaries are missing outside CI (the test returns).
fn pg_backend() -> Option<PgBackend> {
    Some(ServerBackend::new(
        PostgresServer::start()?,
        unique_schema(),
        open,
    ))
}

fn unique_schema() -> String {
    unique_name("lrtest", '_')
}

fn options(schema: &str) -> PostgresOptions {
    PostgresOptions {
        schema: schema.into(),
        ..PostgresOptions::default()
    }
}

fn open(server: &PostgresServer, schema: &str) -> PostgresLog {
    PostgresLog::open_with(&server.params(), options(schema)).expect("open the Postgres log")
}

/// Builds the backend, or returns from the test (skipped) without a server.
macro_rules! backend_or_skip {
    () => {
        match crate::pg_backend() {
            Some(backend) => backend,
            None => return,
        }
    };
}

mod conformance {
    durable_conformance!(backend_or_skip!());
    durable_reopen_conformance!(backend_or_skip!());
}

/// Retries `call` while it fails with `Backend` (the server is coming
/// back), up to 30 s.
fn until_ok<R>(mut call: impl FnMut() -> Result<R, LogError>) -> R {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match call() {
            Ok(value) => return value,
            Err(LogError::Backend(e)) if Instant::now() < deadline => {
                eprintln!("retrying after: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("the log does not serve: {e}"),
        }
    }
}

// ---- schema -----------------------------------------------------------------

/// The tables have real columns another client can read, the schema has
/// its version row, and records are keyed by (session, position).
#[test]
fn records_are_rows_with_real_columns() {
    let backend = backend_or_skip!();
    let log = backend.log();
    let k = key("t", "s");
    append_ok(log, &k, Some(life(7, 1)), &[event(1, 7), hole(2, 7, 3)]);
    let mut client = backend.server.client();
    let s = &backend.namespace;
    let version: i32 = client
        .query_one(&format!("SELECT version FROM {s}.schema_version"), &[])
        .expect("version")
        .get(0);
    assert_eq!(version, 3);
    let (reason, last, turn): (Option<i16>, Option<i64>, Option<i64>) = {
        let row = client
            .query_one(
                &format!("SELECT close_reason, close_last, open_turn FROM {s}.sessions"),
                &[],
            )
            .expect("an open session's closure and turn columns");
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(
        (reason, last, turn),
        (None, None, None),
        "an open session has no closure, and no turn drives it"
    );
    let rows = client
        .query(
            &format!(
                "SELECT m.tenant, m.session, r.position, r.incarnation, r.revision, \
                 r.timestamp_nanos, r.payload, r.links, r.hole_count, r.hole_reason \
                 FROM {s}.records r JOIN {s}.sessions m ON m.id = r.session_id \
                 ORDER BY r.position"
            ),
            &[],
        )
        .expect("records");
    assert_eq!(rows.len(), 2);
    let (tenant, session): (&str, &str) = (rows[0].get(0), rows[0].get(1));
    assert_eq!((tenant, session), ("t", "s"));
    assert_eq!(rows[0].get::<_, i64>(2), 1);
    assert_eq!(rows[0].get::<_, i64>(3), 7);
    assert_eq!(rows[0].get::<_, Option<i64>>(4), Some(10));
    assert_eq!(
        rows[0].get::<_, Option<i64>>(5),
        Some(1_700_000_000_000_000_001)
    );
    assert_eq!(
        rows[0].get::<_, Option<Vec<u8>>>(6).as_deref(),
        Some(&b"payload 1"[..])
    );
    assert_eq!(rows[0].get::<_, Option<Vec<u8>>>(7), None, "no links");
    assert_eq!(rows[1].get::<_, i64>(2), 2);
    assert_eq!(rows[1].get::<_, Option<i64>>(8), Some(3));
    assert_eq!(rows[1].get::<_, Option<i16>>(9), Some(1), "Lapped's tag");
    assert_eq!(rows[1].get::<_, Option<Vec<u8>>>(6), None);
    let meta = client
        .query_one(
            &format!(
                "SELECT durable_tail, event_count, life_incarnations, life_first_positions \
                 FROM {s}.sessions"
            ),
            &[],
        )
        .expect("meta");
    assert_eq!(meta.get::<_, i64>(0), 4);
    assert_eq!(meta.get::<_, i64>(1), 1);
    assert_eq!(meta.get::<_, Vec<i64>>(2), [7]);
    assert_eq!(meta.get::<_, Vec<i64>>(3), [1]);
}

/// Opening is idempotent, also from several nodes at once on a new
/// schema; a schema from a newer version and a bad name are refused.
#[test]
fn migrations_are_idempotent_and_versions_are_checked() {
    let backend = backend_or_skip!();
    let fresh = unique_schema();
    let params = backend.server.params();
    std::thread::scope(|scope| {
        let opens: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| PostgresLog::open_with(&params, options(&fresh))))
            .collect();
        for open in opens {
            open.join().expect("no panic").expect("a concurrent open");
        }
    });
    let k = key("t", "s");
    let log = open(&backend.server, &fresh);
    append_ok(&log, &k, Some(life(1, 1)), &events(1..=2, 1));
    drop(log);
    let log = open(&backend.server, &fresh);
    assert_eq!(load_all(&log, &k), events(1..=2, 1), "reopen kept the rows");
    let mut client = backend.server.client();
    let versions: i64 = client
        .query_one(&format!("SELECT count(*) FROM {fresh}.schema_version"), &[])
        .expect("count")
        .get(0);
    assert_eq!(versions, 1, "one version row");
    client
        .execute(
            &format!("UPDATE {fresh}.schema_version SET version = 99"),
            &[],
        )
        .expect("update");
    assert!(matches!(
        PostgresLog::open_with(&params, options(&fresh)),
        Err(LogError::Corrupt(_))
    ));
    for bad in ["", "Upper", "a-b", "a\"b", "pg_x", "1abc", &"x".repeat(49)] {
        assert!(
            matches!(
                PostgresLog::open_with(&params, options(bad)),
                Err(LogError::Backend(_))
            ),
            "{bad:?}"
        );
    }
}

/// A schema at version 2 (before open turns and leases) is migrated at
/// open: its rows stay, its sessions read as driven by no turn, and turns
/// and leases work from then on.
#[test]
fn a_version_2_schema_is_migrated_to_open_turns_and_leases() {
    let backend = backend_or_skip!();
    let old = unique_schema();
    let k = key("t", "s");
    let log = open(&backend.server, &old);
    append_ok(&log, &k, Some(life(1, 1)), &events(1..=2, 1));
    drop(log);
    let mut client = backend.server.client();
    client
        .batch_execute(&format!(
            "ALTER TABLE {old}.sessions DROP COLUMN open_turn;
             DROP TABLE {old}.stores;
             UPDATE {old}.schema_version SET version = 2;"
        ))
        .expect("the schema as version 2 left it");
    let log = open(&backend.server, &old);
    let version: i32 = client
        .query_one(&format!("SELECT version FROM {old}.schema_version"), &[])
        .expect("version")
        .get(0);
    assert_eq!(version, 3);
    assert_eq!(load_all(&log, &k), events(1..=2, 1));
    assert_eq!(meta_of(&log, &k).open_turn, None);
    log.append(&[livereplay::durable::SessionWrite {
        turn_owner: Some(u64::MAX - 5),
        ..durable_suite::write(&k, None, &[])
    }])
    .expect("a turn");
    assert_eq!(meta_of(&log, &k).open_turn, Some(u64::MAX - 5));
    log.keep_alive(u64::MAX - 5, Duration::from_secs(60))
        .expect("a lease");
    assert!(log.store_alive(u64::MAX - 5).expect("an answer"));
    assert!(!log.store_alive(3).expect("an answer"));
}

/// A store's lease is a row that counts until its time passes on the
/// server's clock; renewing keeps it, and expired rows are cleared as
/// others renew (a missing row says "gone" as an expired one does).
#[test]
fn a_lease_runs_out_on_the_servers_clock() {
    let backend = backend_or_skip!();
    let log = backend.log();
    let lease = Duration::from_millis(200);
    log.keep_alive(42, lease).expect("a lease");
    assert!(log.store_alive(42).expect("an answer"));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while log.store_alive(42).expect("an answer") {
        assert!(
            std::time::Instant::now() < deadline,
            "the lease never ran out"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    log.keep_alive(7, Duration::from_secs(60))
        .expect("another lease");
    let s = &backend.namespace;
    let rows: Vec<i64> = backend
        .server
        .client()
        .query(&format!("SELECT id FROM {s}.stores ORDER BY id"), &[])
        .expect("the leases")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(rows, [7], "the expired lease was cleared");
    log.keep_alive(42, lease * 50).expect("renewed");
    assert!(log.store_alive(42).expect("an answer"));
}

/// Two logs on one server and schema are one log (the shared tier);
/// another schema is another log.
#[test]
fn logs_share_a_schema_and_schemas_are_isolated() {
    let backend = backend_or_skip!();
    let other_node = open(&backend.server, &backend.namespace);
    let elsewhere = open(&backend.server, &unique_schema());
    let k = key("t", "s");
    append_ok(backend.log(), &k, Some(life(1, 1)), &events(1..=3, 1));
    assert_eq!(load_all(&other_node, &k), events(1..=3, 1));
    append_ok(&other_node, &k, None, &events(4..=4, 1));
    assert_eq!(meta_of(backend.log(), &k).durable_tail, 4);
    assert!(elsewhere.meta(&k).expect("meta").is_none());
    assert!(listed(&elsewhere, "t").is_empty());
}

/// Positions a bigint cannot hold are refused by name, not wrapped.
#[test]
fn positions_beyond_a_bigint_are_refused() {
    let backend = backend_or_skip!();
    let log = backend.log();
    let k = key("t", "s");
    append_ok(log, &k, Some(life(1, 1)), &events(1..=1, 1));
    let far = [hole(2, 1, u64::MAX / 2)];
    assert!(matches!(
        log.append(&[durable_suite::write(&k, None, &far)]),
        Err(LogError::InvalidRecord { position: 2, .. })
    ));
    assert_eq!(meta_of(log, &k).durable_tail, 1);
    assert!(log.load_after(&k, u64::MAX, 10).expect("load").is_empty());
    assert!(log
        .load_after(&k, i64::MAX as u64, 10)
        .expect("load")
        .is_empty());
}

/// A commit larger than one statement should carry (64 MiB of payloads)
/// is inserted in several statements of one transaction: all of it reads
/// back, in order.
#[test]
fn a_commit_of_large_payloads_is_written_in_chunks() {
    let backend = backend_or_skip!();
    let log = backend.log();
    let k = key("t", "big");
    let records: Vec<livereplay::durable::LogRecord> = (1..=4u64)
        .map(|position| {
            let mut record = event(position, 1);
            if let livereplay::durable::RecordBody::Event(event) = &mut record.body {
                event.payload = vec![position as u8; 30 << 20];
            }
            record
        })
        .collect();
    append_ok(log, &k, Some(life(1, 1)), &records);
    assert_eq!(meta_of(log, &k).durable_tail, 4);
    for position in 1..=4u64 {
        assert_eq!(
            durable_suite::load(log, &k, position - 1, 1),
            [records[position as usize - 1].clone()]
        );
    }
}

/// Issue 21's lesson for this backend: a payload over `max_record_bytes`
/// is refused by name, and a store writes it as a hole while the rest of
/// the commit (its session's later events, other sessions) is written.
#[test]
fn a_payload_over_the_limit_is_a_hole_not_a_stalled_batch() {
    use livereplay::{DurableError, DurableOptions, ReplayStore, Revision, Utf8};
    let backend = backend_or_skip!();
    let log = Arc::new(
        PostgresLog::open_with(
            &backend.server.params(),
            PostgresOptions {
                max_record_bytes: 1 << 20,
                ..options(&backend.namespace)
            },
        )
        .expect("open"),
    );
    let k = key("t", "s");
    let big = events(1..=1, 1)
        .into_iter()
        .map(|mut record| {
            if let livereplay::durable::RecordBody::Event(event) = &mut record.body {
                event.payload = vec![1; 2 << 20];
            }
            record
        })
        .collect::<Vec<_>>();
    assert!(matches!(
        log.append(&[durable_suite::write(&k, Some(life(1, 1)), &big)]),
        Err(LogError::InvalidRecord { position: 1, .. })
    ));
    assert!(log.meta(&k).expect("meta").is_none(), "nothing was written");
    let store = ReplayStore::<String>::builder()
        .durable(log.clone(), Utf8)
        .durable_options(DurableOptions::default().with_persister_thread(false))
        .build()
        .expect("a store");
    let (large, small) = (key("t", "large"), key("t", "small"));
    store
        .append(&large, Revision(1), "x".repeat(2 << 20))
        .expect("append");
    store
        .append(&large, Revision(1), "after".into())
        .expect("append");
    store
        .append(&small, Revision(1), "small".into())
        .expect("append");
    let mut rounds = 0;
    while let Some(committed) = store.persist_round() {
        assert!(committed, "a commit failed: {:?}", store.stats().durable);
        rounds += 1;
        assert!(rounds < 10, "the persister never finished");
    }
    assert!(matches!(
        store.wait_durable(&large, 1, Duration::ZERO),
        Err(DurableError::Lost { position: 1, .. })
    ));
    assert_eq!(store.wait_durable(&large, 2, Duration::ZERO), Ok(2));
    assert_eq!(store.wait_durable(&small, 1, Duration::ZERO), Ok(1));
    let durable = store.stats().durable.expect("stats");
    assert_eq!(durable.refused_records, 1);
    assert_eq!(durable.last_refused.as_ref(), Some(&large));
    assert_eq!(positions(&load_all(log.as_ref(), &large)), [1, 2]);
}

// ---- notifications --------------------------------------------------------

/// A commit notifies `<session id> <tail>` once per changed session, in
/// the same transaction: a refused append notifies nothing.
#[test]
fn a_commit_notifies_and_a_refusal_does_not() {
    let backend = backend_or_skip!();
    let log = backend.log();
    let mut client = backend.server.client();
    client
        .batch_execute(&format!("LISTEN \"{}_appended\"", backend.namespace))
        .expect("listen");
    let (a, b) = (key("t", "a"), key("t", "b"));
    let ea = events(1..=3, 1);
    let eb = events(1..=1, 2);
    log.append(&[
        durable_suite::write(&a, Some(life(1, 1)), &ea),
        durable_suite::write(&b, Some(life(2, 1)), &eb),
    ])
    .expect("append");
    let gap = events(9..=9, 1);
    assert!(matches!(
        log.append(&[durable_suite::write(&a, None, &gap)]),
        Err(LogError::NotContiguous { .. })
    ));
    append_ok(log, &a, None, &events(4..=4, 1));
    let mut payloads = Vec::new();
    let mut notifications = client.notifications();
    let mut received = notifications.timeout_iter(Duration::from_secs(10));
    while payloads.len() < 3 {
        match received.next().expect("notifications") {
            Some(n) => payloads.push(n.payload().to_owned()),
            None => break,
        }
    }
    let tails: Vec<&str> = payloads
        .iter()
        .map(|p| p.split_once(' ').expect("id and tail").1)
        .collect();
    assert_eq!(tails, ["3", "1", "4"], "{payloads:?}");
    assert_eq!(
        payloads[0].split_once(' ').map(|p| p.0),
        payloads[2].split_once(' ').map(|p| p.0),
        "one id per session"
    );
}

#[test]
fn wait_after_wakes_when_another_node_appends() {
    let backend = backend_or_skip!();
    let k = key("t", "s");
    append_ok(backend.log(), &k, Some(life(1, 1)), &events(1..=2, 1));
    let writer = open(&backend.server, &backend.namespace);
    let woke = std::thread::scope(|scope| {
        let waiter = scope.spawn(|| backend.log().wait_after(&k, 2, Duration::from_secs(20)));
        std::thread::sleep(Duration::from_millis(200));
        append_ok(&writer, &k, None, &events(3..=3, 1));
        waiter.join().expect("the waiter panicked")
    });
    assert!(woke.expect("wait_after"));
    // A session the log has never seen: woken by its first record.
    let fresh = key("t", "fresh");
    let woke = std::thread::scope(|scope| {
        let waiter = scope.spawn(|| backend.log().wait_after(&fresh, 0, Duration::from_secs(20)));
        std::thread::sleep(Duration::from_millis(100));
        append_ok(&writer, &fresh, Some(life(2, 1)), &events(1..=1, 2));
        waiter.join().expect("the waiter panicked")
    });
    assert!(woke.expect("wait_after"));
    // Already beyond: at once; nothing beyond: false at the timeout.
    assert!(backend
        .log()
        .wait_after(&k, 0, Duration::ZERO)
        .expect("wait_after"));
    assert!(!backend
        .log()
        .wait_after(&k, 3, Duration::from_millis(100))
        .expect("wait_after"));
    assert!(!backend
        .log()
        .wait_after(&key("t", "never"), 0, Duration::ZERO)
        .expect("wait_after"));
}

/// An async host (an axum handler polling a catch-up) calls the log from
/// inside a tokio runtime, where the sync client's own runtime cannot start:
/// every call, on either flavour of runtime, is served, and dropping the log
/// there (closing its connections) does not panic either.
#[test]
fn calls_from_inside_a_tokio_runtime_are_served() {
    let backend = backend_or_skip!();
    let runtimes = [
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime"),
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a multi-thread runtime"),
    ];
    for (index, runtime) in runtimes.iter().enumerate() {
        let k = key("t", &format!("in-runtime-{index}"));
        let raw = index as u64 + 1;
        runtime.block_on(async {
            let log = open(&backend.server, &backend.namespace);
            append_ok(&log, &k, Some(life(raw, 1)), &events(1..=3, raw));
            assert_eq!(positions(&load_all(&log, &k)), vec![1, 2, 3]);
            assert_eq!(meta_of(&log, &k).durable_tail, 3);
            assert!(log.wait_after(&k, 2, Duration::ZERO).expect("wait_after"));
            assert!(!log
                .wait_after(&k, 3, Duration::from_millis(50))
                .expect("wait_after"));
            drop(log);
        });
    }
    // What the runtimes wrote is there for a log outside them.
    for index in 0..2 {
        let k = key("t", &format!("in-runtime-{index}"));
        assert_eq!(positions(&load_all(backend.log(), &k)), vec![1, 2, 3]);
    }
}

// ---- concurrency ----------------------------------------------------------

/// Two logs (two nodes) appending to one session race for each position:
/// the row lock lets exactly one win each, the other is refused with the
/// typed `NotContiguous`, and the log ends contiguous.
#[test]
fn concurrent_writers_never_share_a_position() {
    let backend = backend_or_skip!();
    let writers: Vec<PostgresLog> = (0..2)
        .map(|_| open(&backend.server, &backend.namespace))
        .collect();
    durable_suite::concurrent_writers_never_share_a_position(
        backend.log(),
        &[&writers[0], &writers[1]],
        Duration::from_secs(30),
    );
}

/// Two nodes create the same new session at once: one wins, the other's
/// transaction runs again against the winner's row and is refused with a
/// typed error; one row, one listing entry.
#[test]
fn two_nodes_creating_one_session_one_wins() {
    let backend = backend_or_skip!();
    for round in 0..10 {
        let k = key("t", &format!("s{round}"));
        let logs: Vec<PostgresLog> = (0..2)
            .map(|_| open(&backend.server, &backend.namespace))
            .collect();
        let results: Vec<Result<(), LogError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = logs
                .iter()
                .enumerate()
                .map(|(i, log)| {
                    let k = k.clone();
                    scope.spawn(move || {
                        let n = i as u64 + 1;
                        let records = events(1..=2, n);
                        log.append(&[durable_suite::write(&k, Some(life(n, 1)), &records)])
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("no panic"))
                .collect()
        });
        let won: Vec<usize> = (0..2).filter(|&i| results[i].is_ok()).collect();
        assert_eq!(won.len(), 1, "{results:?}");
        let lost = &results[1 - won[0]];
        assert!(
            matches!(
                lost,
                Err(LogError::BadLife { .. } | LogError::NotContiguous { .. })
            ),
            "{lost:?}"
        );
        let winner = won[0] as u64 + 1;
        assert_eq!(load_all(backend.log(), &k), events(1..=2, winner));
        assert_eq!(meta_of(backend.log(), &k).lives, [life(winner, 1)]);
    }
    assert_eq!(listed(backend.log(), "t").len(), 10);
}

// ---- damage ---------------------------------------------------------------

/// Rows the log did not write are `Corrupt`, never a panic; the log still
/// serves everything else.
#[test]
fn damaged_rows_are_corrupt_not_panics() {
    let backend = backend_or_skip!();
    let log = backend.log();
    let mut client = backend.server.client();
    let s = &backend.namespace;
    let bad = key("t", "bad");
    append_ok(log, &bad, Some(life(1, 1)), &events(1..=2, 1));
    // A record that is both an event and a hole is refused by the table's
    // checks; one with a zero incarnation is not.
    assert!(client
        .execute(
            &format!("UPDATE {s}.records SET hole_count = 1 WHERE position = 2"),
            &[]
        )
        .is_err());
    client
        .execute(
            &format!("UPDATE {s}.records SET incarnation = 0 WHERE position = 2"),
            &[],
        )
        .expect("update");
    assert_eq!(positions(&durable_suite::load(log, &bad, 0, 1)), [1]);
    assert!(matches!(
        log.load_after(&bad, 0, 10),
        Err(LogError::Corrupt(_))
    ));
    // A hole with an unknown reason.
    let reason = key("t", "reason");
    append_ok(log, &reason, Some(life(1, 1)), &[hole(1, 1, 2)]);
    client
        .execute(
            &format!("UPDATE {s}.records SET hole_reason = 77 WHERE hole_count IS NOT NULL"),
            &[],
        )
        .expect("update");
    assert!(matches!(
        log.load_after(&reason, 0, 10),
        Err(LogError::Corrupt(_))
    ));
    // A session row with a life of incarnation 0.
    let lives = key("t", "lives");
    append_ok(log, &lives, Some(life(1, 1)), &events(1..=1, 1));
    client
        .execute(
            &format!("UPDATE {s}.sessions SET life_incarnations = '{{0}}' WHERE session = 'lives'"),
            &[],
        )
        .expect("update");
    assert!(matches!(log.meta(&lives), Err(LogError::Corrupt(_))));
    let one = events(2..=2, 1);
    assert!(matches!(
        log.append(&[durable_suite::write(&lives, None, &one)]),
        Err(LogError::Corrupt(_))
    ));
    // Everything else still works, on the same connection.
    let fine = key("t", "fine");
    append_ok(log, &fine, Some(life(1, 1)), &events(1..=2, 1));
    assert_eq!(positions(&load_all(log, &fine)), [1, 2]);
}

// ---- faults on the log ----------------------------------------------------

/// SIGKILL the server: calls fail with `Backend`. Restart it on the same
/// data directory: the same `PostgresLog` reconnects by itself and serves
/// everything committed before the kill, and appends continue; a kill
/// between two calls costs the next call nothing.
#[test]
fn a_killed_server_fails_calls_and_a_restarted_one_serves_again() {
    let Some(mut backend) = pg_backend() else {
        return;
    };
    let k = key("t", "s");
    let log = backend.log.take().expect("the log");
    append_ok(&log, &k, Some(life(1, 1)), &events(1..=5, 1));
    append_ok(&log, &k, None, &[hole(6, 1, 2)]);
    assert_eq!(log.archive_before(&k, 2).expect("archive"), 2);
    let before = (meta_of(&log, &k), load_all(&log, &k));

    backend.server.kill9();
    let records = events(8..=8, 1);
    let failures = [
        log.append(&[durable_suite::write(&k, None, &records)]),
        log.meta(&k).map(|_| ()),
        log.load_after(&k, 0, 10).map(|_| ()),
        log.archive_before(&k, 3).map(|_| ()),
        log.sessions("t", 10, 0).map(|_| ()),
        log.wait_after(&k, 7, Duration::from_millis(100))
            .map(|_| ()),
    ];
    for (i, failure) in failures.into_iter().enumerate() {
        assert!(
            matches!(failure, Err(LogError::Backend(_))),
            "call {i}: {failure:?}"
        );
    }

    backend.server.restart();
    let meta = until_ok(|| log.meta(&k));
    assert_eq!(meta.as_ref(), Some(&before.0), "the meta survived");
    assert_eq!(load_all(&log, &k), before.1, "the records survived");
    append_ok(&log, &k, None, &records);
    assert_eq!(positions(&load_all(&log, &k)), [3, 4, 5, 6, 8]);
    assert!(log
        .wait_after(&k, 7, Duration::from_secs(5))
        .expect("wait_after after the restart"));

    // Killed and restarted between two calls: the connections are stale,
    // yet the very next calls succeed (one fresh retry each).
    backend.server.restart();
    assert_eq!(meta_of(&log, &k).durable_tail, 8);
    backend.server.restart();
    append_ok(&log, &k, None, &events(9..=9, 1));
    backend.server.restart();
    assert!(log
        .wait_after(&k, 8, Duration::from_secs(5))
        .expect("wait_after on a stale idle connection"));
    backend.server.restart();
    assert_eq!(log.archive_before(&k, 8).expect("archive"), 4);
    backend.server.restart();
    assert_eq!(listed(&log, "t"), [k]);
}

/// `pg_terminate_backend` of the log's connection: the next call fails
/// or is retried on a fresh connection; nothing is lost either way.
#[test]
fn a_terminated_connection_is_replaced() {
    let backend = backend_or_skip!();
    let log = backend.log();
    let k = key("t", "s");
    append_ok(log, &k, Some(life(1, 1)), &events(1..=3, 1));
    let mut client = backend.server.client();
    for round in 0..3u64 {
        let pid = log.backend_pid().expect("pid");
        let killed: bool = client
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .expect("terminate")
            .get(0);
        assert!(killed);
        let next = events(4 + round..=4 + round, 1);
        until_ok(|| log.append(&[durable_suite::write(&k, None, &next)]));
        assert_ne!(log.backend_pid().expect("pid"), pid, "a new connection");
    }
    assert_eq!(load_all(log, &k), events(1..=6, 1));
}

// ---- many nodes -----------------------------------------------------------

mod nodes {
    use super::*;
    use livereplay::{Cursor, ReplayStore, Revision, TryNextError, Utf8};

    const WAIT: Duration = Duration::from_secs(20);

    fn node(backend: &PgBackend) -> ReplayStore<String> {
        ReplayStore::builder()
            .durable(Arc::new(open(&backend.server, &backend.namespace)), Utf8)
            .build()
            .expect("a store")
    }

    fn text(position: u64) -> String {
        format!("t{position}")
    }

    /// Two nodes, each with its own `PostgresLog` on one schema: the runtime
    /// node writes a session, the host node never does; the host serves
    /// its history from the log, then its live events as the runtime
    /// commits them (the host's tailer waits on `LISTEN`), exactly once and
    /// in order.
    #[test]
    fn a_host_node_serves_history_then_live_through_listen() {
        let backend = backend_or_skip!();
        let (runtime, host) = (node(&backend), node(&backend));
        let k = key("acme", "chat");
        for position in 1..=20 {
            runtime
                .append(&k, Revision(1), text(position))
                .expect("append");
        }
        assert_eq!(runtime.wait_durable(&k, 20, WAIT), Ok(20));
        let mut events = host.catch_up(&Cursor::start(k.clone())).expect("catch up");
        for position in 1..=20 {
            let event = events.next_timeout(WAIT).expect("history");
            assert_eq!(
                (event.position(), event.payload()),
                (position, &text(position))
            );
        }
        assert_eq!(events.try_next().unwrap_err(), TryNextError::Empty);
        assert!(!host.is_resident(&k), "a reader never restores the session");
        let writer = std::thread::spawn(move || {
            for position in 21..=60 {
                runtime
                    .append(&k, Revision(1), text(position))
                    .expect("append");
                std::thread::sleep(Duration::from_millis(2));
            }
            runtime
        });
        for position in 21..=60 {
            let event = events.next_timeout(WAIT).expect("a live event");
            assert_eq!(event.position(), position, "exactly once, in order");
            assert_eq!(event.payload(), &text(position));
        }
        drop(writer.join().expect("the writer panicked"));
    }
}

/// Fencing over Postgres: node A wrote a session, node B took it over
/// (a new life after A's tail) and wrote on; A's next commit clashes, the
/// log refuses it with the typed error, and A fences its session instead
/// of writing over B's positions.
mod fencing {
    use super::*;
    use livereplay::durable::RecordBody;
    use livereplay::{Config, DurableOptions, ReplayStore, Revision, Utf8};

    fn manual_node(backend: &PgBackend) -> ReplayStore<String> {
        ReplayStore::builder()
            .config(Config::default().with_capacity(16).with_auto_sweep(false))
            .durable(Arc::new(open(&backend.server, &backend.namespace)), Utf8)
            .durable_options(DurableOptions::default().with_persister_thread(false))
            .build()
            .expect("a store")
    }

    fn drain(store: &ReplayStore<String>) {
        for _ in 0..100 {
            if store.persist_round().is_none() {
                return;
            }
        }
        panic!("the persister still had work after 100 rounds");
    }

    #[test]
    fn a_node_taken_over_is_fenced_not_overwriting() {
        let backend = backend_or_skip!();
        let (a, b) = (manual_node(&backend), manual_node(&backend));
        let k = key("acme", "taken");
        a.append(&k, Revision(1), "a1".into()).expect("append");
        drain(&a);
        for (payload, position) in ["b2", "b3"].into_iter().zip(2..) {
            let event = b.append(&k, Revision(1), payload.into()).expect("append");
            assert_eq!(event.position(), position, "B continues after A");
        }
        drain(&b);
        a.append(&k, Revision(1), "a2".into()).expect("append");
        drain(&a);
        let durable = a.stats().durable.expect("stats");
        assert_eq!(durable.fenced_sessions, 1, "{durable:?}");
        assert_eq!(durable.last_fenced.as_ref(), Some(&k));
        let payloads: Vec<String> = load_all(backend.log(), &k)
            .into_iter()
            .map(|record| match record.body {
                RecordBody::Event(event) => String::from_utf8(event.payload).expect("utf-8"),
                RecordBody::Hole { .. } => panic!("no hole expected"),
            })
            .collect();
        assert_eq!(payloads, ["a1", "b2", "b3"]);
    }
}

// ---- faults under a store -------------------------------------------------

mod faults {
    use super::*;
    use livereplay::durable::{LogRecord, RecordBody};
    use livereplay::{Config, DurableOptions, ReplayStore, Revision, Utf8};

    /// The ring's window: with no budget for undurable events, what the
    /// store holds while the log is away (the window and the segment of
    /// up to 64 positions being filled).
    const CAPACITY: usize = 64;
    const WAIT: Duration = Duration::from_secs(60);

    /// A store whose rings let go of what they lap (no budget for
    /// undurable events): an outage longer than the ring is a hole.
    fn store(log: Arc<PostgresLog>) -> ReplayStore<String> {
        store_keeping(log, 0)
    }

    /// A store that keeps up to `budget` bytes of undurable events past
    /// its rings' windows.
    fn store_keeping(log: Arc<PostgresLog>, budget: usize) -> ReplayStore<String> {
        ReplayStore::builder()
            .config(Config::default().with_capacity(CAPACITY))
            .durable(log, Utf8)
            .durable_options(
                DurableOptions::default()
                    .with_flush_interval(Duration::from_millis(5))
                    .with_undurable_budget(budget),
            )
            .build()
            .expect("a store")
    }

    fn text(position: u64) -> String {
        format!("e{position}")
    }

    /// Appends `range`, every one accepted at once (the store never waits
    /// for the log).
    fn append_all(
        store: &ReplayStore<String>,
        k: &livereplay::SessionKey,
        range: std::ops::RangeInclusive<u64>,
    ) {
        for position in range {
            let event = store
                .append(k, Revision(position), text(position))
                .expect("an append never fails while the log is away");
            assert_eq!(event.position(), position);
        }
    }

    /// Checks the log after an outage: it starts with `before` (what the log
    /// held just before the outage, all events: nothing durable was lost),
    /// then events and holes (one, or two when a commit was in flight
    /// across the outage) whose counts add up to what the store counts as
    /// lost, then events up to `last`; every payload is the one appended.
    fn check_log(
        log: &PostgresLog,
        store: &ReplayStore<String>,
        k: &livereplay::SessionKey,
        before: &[LogRecord],
        last: u64,
    ) {
        assert!(
            before
                .iter()
                .all(|r| matches!(r.body, RecordBody::Event(_))),
            "the ring lapped before the outage: the test's pacing is too fast for this machine"
        );
        let records: Vec<LogRecord> = load_all(log, k);
        assert_eq!(&records[..before.len()], before, "nothing durable was lost");
        let mut next = 1;
        let mut holes = Vec::new();
        for record in &records {
            assert_eq!(record.position, next, "contiguous");
            match &record.body {
                RecordBody::Event(event) => {
                    assert_eq!(event.payload, text(record.position).into_bytes());
                }
                RecordBody::Hole { count, .. } => holes.push(*count),
            }
            next = record.last_position() + 1;
        }
        assert_eq!(next - 1, last, "everything reached the log");
        // Usually one hole; two when a commit collected mid-burst was in
        // flight across the outage (it lands after it, and the ring laps
        // on meanwhile): a hole per commit, never a position skipped.
        assert!(
            (1..=2).contains(&holes.len()),
            "one hole per commit of the outage: {holes:?}"
        );
        let durable = store.stats().durable.expect("durable stats");
        assert_eq!(
            holes.iter().sum::<u64>(),
            durable.lost_events,
            "the holes count what was lapped"
        );
        assert_eq!(durable.holes, holes.len() as u64);
        // After the last hole, only what the ring still held.
        let hole_end = records
            .iter()
            .rfind(|r| matches!(r.body, RecordBody::Hole { .. }))
            .map(LogRecord::last_position)
            .expect("the hole");
        assert!(last - hole_end <= 2 * CAPACITY as u64, "{hole_end}");
    }

    /// SIGKILL the server mid-stream (a paced appender running, the
    /// persister committing), append more than the ring holds, and restart
    /// it on the same data directory: everything committed before is there,
    /// the lapped positions are one hole with the exact count, and
    /// persistence resumes by itself.
    #[test]
    fn a_server_killed_mid_stream() {
        let Some(mut backend) = pg_backend() else {
            return;
        };
        let log = Arc::new(backend.log.take().expect("the log"));
        let store = store(log.clone());
        let k = key("t", "s");
        append_all(&store, &k, 1..=50);
        assert_eq!(store.wait_durable(&k, 50, WAIT), Ok(50));
        let killed = std::sync::atomic::AtomicBool::new(false);
        let before = std::thread::scope(|scope| {
            let appender = scope.spawn(|| {
                // Paced by the log while the server is up: at most one
                // chunk of 16 ahead of it, so the ring's 64 slots cannot
                // lap before the outage however slow this machine's
                // commits are. Once the server is gone the appends run on
                // unpaced, and lap.
                for first in (51..=300).step_by(16) {
                    let last = (first + 15).min(300);
                    append_all(&store, &k, first..=last);
                    // Each look waits up to 10 ms for the commit.
                    while !killed.load(std::sync::atomic::Ordering::Relaxed) {
                        if store
                            .wait_durable(&k, last, Duration::from_millis(10))
                            .is_ok()
                        {
                            break;
                        }
                    }
                }
            });
            std::thread::sleep(Duration::from_millis(60));
            let before = load_all(log.as_ref(), &k);
            killed.store(true, std::sync::atomic::Ordering::Relaxed);
            backend.server.kill9();
            appender.join().expect("the appender panicked");
            before
        });
        assert!(before.len() >= 50);
        append_all(&store, &k, 301..=600);
        backend.server.restart();
        assert_eq!(store.wait_durable(&k, 600, WAIT), Ok(600));
        check_log(&log, &store, &k, &before, 600);
        // And it goes on.
        append_all(&store, &k, 601..=610);
        assert_eq!(store.wait_durable(&k, 610, WAIT), Ok(610));
    }

    /// SIGSTOP for 2 s: the persister's call waits for the server; appends
    /// do not. Thawed, the commit goes through and the rest follows.
    #[test]
    fn a_server_frozen_for_two_seconds() {
        let backend = backend_or_skip!();
        let log = Arc::new(open(&backend.server, &backend.namespace));
        let store = store(log.clone());
        let k = key("t", "s");
        append_all(&store, &k, 1..=50);
        assert_eq!(store.wait_durable(&k, 50, WAIT), Ok(50));
        let before = load_all(log.as_ref(), &k);
        backend.server.freeze();
        append_all(&store, &k, 51..=400);
        std::thread::sleep(Duration::from_secs(2));
        backend.server.thaw();
        assert_eq!(store.wait_durable(&k, 400, WAIT), Ok(400));
        check_log(&log, &store, &k, &before, 400);
    }

    /// The same freeze with the default budget for undurable events: the
    /// rings keep what they lap for the persister, and nothing is lost.
    #[test]
    fn a_server_frozen_within_the_budget_loses_nothing() {
        let backend = backend_or_skip!();
        let log = Arc::new(open(&backend.server, &backend.namespace));
        let store = store_keeping(log.clone(), DurableOptions::default().undurable_budget);
        let k = key("t", "s");
        append_all(&store, &k, 1..=50);
        assert_eq!(store.wait_durable(&k, 50, WAIT), Ok(50));
        backend.server.freeze();
        append_all(&store, &k, 51..=400);
        std::thread::sleep(Duration::from_secs(2));
        backend.server.thaw();
        assert_eq!(store.wait_durable(&k, 400, WAIT), Ok(400));
        let records = load_all(log.as_ref(), &k);
        assert_eq!(records.len(), 400);
        for record in &records {
            match &record.body {
                RecordBody::Event(event) => {
                    assert_eq!(event.payload, text(record.position).into_bytes());
                }
                RecordBody::Hole { .. } => panic!("a hole within the budget: {record:?}"),
            }
        }
        let durable = store.stats().durable.expect("stats");
        assert_eq!(
            (durable.holes, durable.lost_events, durable.kept_bytes),
            (0, 0, 0)
        );
    }

    /// `pg_terminate_backend` of every connection the log has, again and
    /// again while appending: the log reconnects, nothing is lost, and no
    /// hole is needed (the ring outlasts a reconnect).
    #[test]
    fn connections_terminated_while_appending() {
        let backend = backend_or_skip!();
        let log = Arc::new(open(&backend.server, &backend.namespace));
        let store = store(log.clone());
        let k = key("t", "s");
        let mut admin = backend.server.client();
        for round in 0..5u64 {
            append_all(&store, &k, round * 20 + 1..=round * 20 + 20);
            assert_eq!(
                store.wait_durable(&k, round * 20 + 20, WAIT),
                Ok(round * 20 + 20)
            );
            let terminated: i64 = admin
                .query_one(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = 'livereplay') AS t",
                    &[],
                )
                .expect("terminate")
                .get(0);
            assert!(terminated >= 1);
        }
        append_all(&store, &k, 101..=120);
        assert_eq!(store.wait_durable(&k, 120, WAIT), Ok(120));
        assert_eq!(load_all(log.as_ref(), &k).len(), 120);
        let durable = store.stats().durable.expect("stats");
        assert_eq!((durable.holes, durable.lost_events), (0, 0));
    }
}
