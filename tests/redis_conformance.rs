//! `RedisLog` (feature `redis`) against a real `redis-server`: the whole
//! durable-log conformance suite (`support/durable_suite.rs`), the reopen
//! tests (reopen = a new `RedisLog` on the same server and prefix), and what
//! only Redis has: key escaping on the server, blocking reads
//! (`wait_after`), the stream trimmed under a straddling hole, concurrent
//! writers, a killed and restarted server, and damaged keys.
//!
//! Every test starts its own server (about 20 ms) through
//! `support/redis_server.rs`, which stops it and removes its directory when
//! the test ends; without `redis-server` on PATH the tests say SKIPPED and
//! return (in CI, `CI=true`, they fail instead).

#[path = "support/durable_suite.rs"]
#[macro_use]
mod durable_suite;
#[path = "support/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use livereplay::durable::{DurableLog, LogError, RedisLog, RedisOptions};

use durable_suite::{
    append_ok, event, events, hole, key, life, listed, load, load_all, meta_of, positions,
    unique_name, ServerBackend,
};
use redis_server::RedisServer;

/// A fresh server and a `RedisLog` on it under a prefix of its own.
pub type RedisBackend = ServerBackend<RedisServer, RedisLog>;

/// `None` when redis-server is missing outside CI (the test returns).
pub fn redis_backend() -> Option<RedisBackend> {
    Some(ServerBackend::new(
        RedisServer::start()?,
        unique_prefix(),
        open,
    ))
}

fn unique_prefix() -> String {
    unique_name("lrtest", '-')
}

fn options(prefix: &str) -> RedisOptions {
    RedisOptions {
        prefix: prefix.into(),
        connect_timeout: Duration::from_secs(2),
        io_timeout: Duration::from_secs(5),
        ..RedisOptions::default()
    }
}

fn open(server: &RedisServer, prefix: &str) -> RedisLog {
    RedisLog::open_with(&server.url(), options(prefix)).expect("open the Redis log")
}

/// A plain client connection, to look at what the log wrote.
fn raw(server: &RedisServer) -> redis::Connection {
    let client = redis::Client::open(server.url()).expect("client");
    let con = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .expect("connect");
    con.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    con
}

/// Builds the backend, or returns from the test (skipped) without a server.
macro_rules! backend_or_skip {
    () => {
        match crate::redis_backend() {
            Some(backend) => backend,
            None => return,
        }
    };
}

mod conformance {
    durable_conformance!(backend_or_skip!());
    durable_reopen_conformance!(backend_or_skip!());
}

// ---- leases ---------------------------------------------------------------

/// A store's lease is one expiring key under the log's prefix: gone once
/// the lease ran out by the server's clock, back when the store renews it,
/// and never seen by another prefix.
#[test]
fn a_lease_runs_out_on_the_servers_clock() {
    let backend = backend_or_skip!();
    let log = backend.log();
    let lease = Duration::from_millis(200);
    log.keep_alive(42, lease).unwrap();
    assert!(log.store_alive(42).unwrap());
    assert!(!log.store_alive(43).unwrap(), "a store that never said so");
    let deadline = Instant::now() + Duration::from_secs(5);
    while log.store_alive(42).unwrap() {
        assert!(Instant::now() < deadline, "the lease never ran out");
        std::thread::sleep(Duration::from_millis(20));
    }
    log.keep_alive(42, lease * 50).unwrap();
    assert!(log.store_alive(42).unwrap(), "renewed");
    let mut con = raw(&backend.server);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{}:store:{:016x}", backend.namespace, 42))
        .query(&mut con)
        .unwrap();
    assert!(
        ttl > 0 && ttl <= 10_000,
        "the key expires with the lease: {ttl}"
    );
    let elsewhere = open(&backend.server, &format!("{}-other", backend.namespace));
    assert!(!elsewhere.store_alive(42).unwrap());
}

// ---- keys -----------------------------------------------------------------

/// Tenants and ids that concatenate alike, hold `:`, braces, `%` or unicode
/// are different sessions on the server too, and each session's keys share
/// one cluster hash tag.
#[test]
fn keys_are_escaped_and_collision_free() {
    let backend = backend_or_skip!();
    let log = backend.log();
    let pairs = [
        ("ab", "c"),
        ("a", "bc"),
        ("", "abc"),
        ("a:b", "c"),
        ("a", "b:c"),
        ("a{b}", "c"),
        ("a", "{b}c"),
        ("a}", "{"),
        ("a%3A", "b"),
        ("ünï", "çödé ✓"),
    ];
    let keys: Vec<_> = pairs.iter().map(|(t, s)| key(t, s)).collect();
    for (i, k) in keys.iter().enumerate() {
        let n = i as u64 + 1;
        append_ok(log, k, Some(life(n, 1)), &events(1..=n, n));
    }
    for (i, k) in keys.iter().enumerate() {
        let n = i as u64 + 1;
        assert_eq!(load_all(log, k), events(1..=n, n), "{k}");
        assert_eq!(meta_of(log, k).lives, [life(n, 1)], "{k}");
    }
    for tenant in ["ab", "a", "", "a:b", "a{b}", "a}", "a%3A", "ünï"] {
        let mut expected: Vec<_> = keys
            .iter()
            .filter(|k| k.tenant() == tenant)
            .cloned()
            .collect();
        expected.reverse();
        assert_eq!(listed(log, tenant), expected, "tenant {tenant:?}");
    }
    // On the server: one log and one meta key per session, every session's
    // keys under one brace-free hash tag, no two sessions sharing a tag.
    let mut con = raw(&backend.server);
    let all: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", backend.namespace))
        .query(&mut con)
        .expect("KEYS");
    let session_keys: Vec<&String> = all.iter().filter(|k| k.ends_with("}:log")).collect();
    assert_eq!(session_keys.len(), keys.len(), "{all:?}");
    let mut tags = std::collections::HashSet::new();
    for name in &session_keys {
        let open = name.find('{').expect("a hash tag");
        let close = open + name[open..].find('}').expect("a closed tag");
        let tag = &name[open + 1..close];
        assert!(!tag.is_empty() && !tag.contains(['{', '}']), "{name}");
        assert_eq!(name.matches('{').count(), 1, "{name}");
        assert!(tag.is_ascii(), "escaped: {name}");
        assert!(
            all.contains(&format!("{}:{{{tag}}}:meta", backend.namespace)),
            "meta beside {name}"
        );
        assert!(tags.insert(tag.to_owned()), "{name}");
    }
    assert!(all.contains(&format!("{}:tenant:{{a%3Ab}}:sessions", backend.namespace)));
    assert!(all.contains(&format!("{}:{{a%7Bb%7D:c}}:log", backend.namespace)));
}

/// The entry layout the module documents, as another client sees it.
#[test]
fn entries_are_keyed_by_position_with_the_documented_fields() {
    let backend = backend_or_skip!();
    let log = backend.log();
    let k = key("t", "s");
    append_ok(log, &k, Some(life(7, 1)), &[event(1, 7), hole(2, 7, 3)]);
    let mut con = raw(&backend.server);
    let stream = format!("{}:{{t:s}}:log", backend.namespace);
    let entries: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query(&mut con)
        .expect("XRANGE");
    let ids: Vec<&str> = entries.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["1-0", "2-0"]);
    let text = |fields: &[Vec<u8>]| -> Vec<String> {
        fields
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect()
    };
    assert_eq!(
        text(&entries[0].1),
        [
            "i",
            "7",
            "r",
            "10",
            "t",
            "1700000000000000001",
            "d",
            "payload 1"
        ]
    );
    assert_eq!(text(&entries[1].1), ["i", "7", "n", "3", "w", "1"]);
}

/// Two logs on one server and prefix are one log (the shared tier); another
/// prefix is another log.
#[test]
fn logs_share_a_prefix_and_prefixes_are_isolated() {
    let backend = backend_or_skip!();
    let other_node = open(&backend.server, &backend.namespace);
    let elsewhere = open(&backend.server, &format!("{}-other", backend.namespace));
    let k = key("t", "s");
    append_ok(backend.log(), &k, Some(life(1, 1)), &events(1..=3, 1));
    assert_eq!(load_all(&other_node, &k), events(1..=3, 1));
    append_ok(&other_node, &k, None, &events(4..=4, 1));
    assert_eq!(meta_of(backend.log(), &k).durable_tail, 4);
    assert!(elsewhere.meta(&k).expect("meta").is_none());
    assert!(listed(&elsewhere, "t").is_empty());
    assert!(matches!(
        RedisLog::open_with(&backend.server.url(), options("bad{prefix")),
        Err(LogError::Backend(_))
    ));
}

// ---- wait_after -----------------------------------------------------------

#[test]
fn wait_after_wakes_when_another_connection_appends() {
    let backend = backend_or_skip!();
    let k = key("t", "s");
    append_ok(backend.log(), &k, Some(life(1, 1)), &events(1..=2, 1));
    let writer = open(&backend.server, &backend.namespace);
    let started = Instant::now();
    let woke = std::thread::scope(|scope| {
        let waiter = scope.spawn(|| backend.log().wait_after(&k, 2, Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(200));
        append_ok(&writer, &k, None, &events(3..=3, 1));
        waiter.join().expect("the waiter panicked")
    });
    let elapsed = started.elapsed();
    assert!(woke.expect("wait_after"), "an entry arrived");
    assert!(
        elapsed < Duration::from_secs(3),
        "woke promptly, not at the timeout: {elapsed:?}"
    );
    // A session the log has never seen: woken by its first record.
    let fresh = key("t", "fresh");
    let woke = std::thread::scope(|scope| {
        let waiter = scope.spawn(|| backend.log().wait_after(&fresh, 0, Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(100));
        append_ok(&writer, &fresh, Some(life(2, 1)), &events(1..=1, 2));
        waiter.join().expect("the waiter panicked")
    });
    assert!(woke.expect("wait_after"));
}

#[test]
fn wait_after_returns_false_at_the_timeout() {
    let backend = backend_or_skip!();
    let log = backend.log();
    let k = key("t", "s");
    append_ok(log, &k, Some(life(1, 1)), &events(1..=2, 1));
    for timeout in [Duration::from_millis(300), Duration::ZERO] {
        let started = Instant::now();
        assert!(!log.wait_after(&k, 2, timeout).expect("wait_after"));
        let elapsed = started.elapsed();
        assert!(elapsed >= timeout, "{elapsed:?} < {timeout:?}");
        assert!(elapsed < timeout + Duration::from_secs(2), "{elapsed:?}");
    }
    assert!(!log
        .wait_after(&key("t", "never"), 0, Duration::from_millis(50))
        .expect("wait_after"));
    // Several waits reuse the idle connections; the log still works.
    for _ in 0..3 {
        assert!(!log
            .wait_after(&k, 2, Duration::from_millis(10))
            .expect("wait_after"));
    }
    append_ok(log, &k, None, &events(3..=3, 1));
}

#[test]
fn wait_after_is_true_at_once_when_the_log_is_beyond() {
    let backend = backend_or_skip!();
    let log = backend.log();
    let k = key("t", "s");
    // A hole at the tail starts before `after` but records positions past
    // it: there is something beyond 3.
    append_ok(log, &k, Some(life(1, 1)), &[event(1, 1), hole(2, 1, 4)]);
    for after in [0, 1, 3, 4] {
        let started = Instant::now();
        assert!(log
            .wait_after(&k, after, Duration::from_secs(10))
            .expect("wait_after"));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    assert!(log.wait_after(&k, 0, Duration::ZERO).expect("wait_after"));
    assert!(!log
        .wait_after(&k, 5, Duration::from_millis(20))
        .expect("wait_after"));
    assert!(!log
        .wait_after(&k, u64::MAX, Duration::from_millis(20))
        .expect("wait_after"));
}

// ---- archive --------------------------------------------------------------

/// `XTRIM MINID` removes every entry wholly archived and keeps the hole
/// straddling the watermark, on the server.
#[test]
fn archive_trims_the_stream_but_keeps_a_straddling_hole() {
    let backend = backend_or_skip!();
    let log = backend.log();
    let k = key("t", "s");
    let records = [event(1, 1), event(2, 1), hole(3, 1, 5), event(8, 1)];
    append_ok(log, &k, Some(life(1, 1)), &records);
    let mut con = raw(&backend.server);
    let stream = format!("{}:{{t:s}}:log", backend.namespace);
    let ids = |con: &mut redis::Connection| -> Vec<String> {
        let entries: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
            .arg(&stream)
            .arg("-")
            .arg("+")
            .query(con)
            .expect("XRANGE");
        entries.into_iter().map(|(id, _)| id).collect()
    };
    assert_eq!(ids(&mut con), ["1-0", "2-0", "3-0", "8-0"]);
    assert_eq!(log.archive_before(&k, 5).expect("archive"), 2);
    assert_eq!(ids(&mut con), ["3-0", "8-0"], "the straddling hole stays");
    assert_eq!(load(log, &k, 0, 10), records[2..].to_vec());
    // Again inside the same hole: nothing more goes.
    assert_eq!(log.archive_before(&k, 6).expect("archive"), 0);
    assert_eq!(ids(&mut con), ["3-0", "8-0"]);
    assert_eq!(log.archive_before(&k, 7).expect("archive"), 0);
    assert_eq!(ids(&mut con), ["8-0"]);
    assert_eq!(log.archive_before(&k, 8).expect("archive"), 1);
    assert!(ids(&mut con).is_empty());
    // An emptied stream still takes the next positions.
    append_ok(log, &k, None, &events(9..=9, 1));
    assert_eq!(ids(&mut con), ["9-0"]);
    assert_eq!(meta_of(log, &k).event_count, 1);
}

// ---- concurrency ----------------------------------------------------------

/// Two logs (two nodes) appending to one session race for each position:
/// WATCH lets exactly one win each, the other is refused as not contiguous,
/// and the log ends contiguous with every position once.
#[test]
fn concurrent_writers_never_share_a_position() {
    let backend = backend_or_skip!();
    let writers: Vec<RedisLog> = (0..2)
        .map(|_| open(&backend.server, &backend.namespace))
        .collect();
    durable_suite::concurrent_writers_never_share_a_position(
        backend.log(),
        &[&writers[0], &writers[1]],
        Duration::from_secs(10),
    );
}

// ---- faults ---------------------------------------------------------------

/// SIGKILL the server: calls fail with `Backend`, promptly. Restart it on
/// the same port and directory: the same `RedisLog` reconnects by itself
/// and serves everything acknowledged before the kill (the append-only
/// file), and appends continue.
#[test]
fn a_killed_server_fails_calls_and_a_restarted_one_serves_again() {
    let Some(mut backend) = redis_backend() else {
        return;
    };
    let k = key("t", "s");
    let log = backend.log.take().expect("the log");
    append_ok(&log, &k, Some(life(1, 1)), &events(1..=5, 1));
    append_ok(&log, &k, None, &[hole(6, 1, 2)]);
    assert_eq!(log.archive_before(&k, 2).expect("archive"), 2);
    let before = (meta_of(&log, &k), load_all(&log, &k));

    backend.server.kill9();
    let started = Instant::now();
    let records = events(8..=8, 1);
    let failures = [
        log.append(&[durable_suite::write(&k, None, &records)])
            .map(|_| ()),
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
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failed promptly: {:?}",
        started.elapsed()
    );

    backend.server.restart();
    // The first call after the restart may still meet the dead connection's
    // aftermath; the persister retries, and so does this loop (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    let meta = loop {
        match log.meta(&k) {
            Ok(meta) => break meta,
            Err(LogError::Backend(e)) if Instant::now() < deadline => {
                eprintln!("retrying after: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("the restarted server does not serve: {e}"),
        }
    };
    assert_eq!(meta.as_ref(), Some(&before.0), "the meta survived");
    assert_eq!(load_all(&log, &k), before.1, "the records survived");
    append_ok(&log, &k, None, &records);
    assert_eq!(positions(&load_all(&log, &k)), [3, 4, 5, 6, 8]);
    assert!(log
        .wait_after(&k, 7, Duration::from_secs(1))
        .expect("wait_after after the restart"));
    assert_eq!(listed(&log, "t"), std::slice::from_ref(&k));

    // Killed and restarted between two calls: the log's connections are
    // stale, yet the very next calls succeed (one fresh retry each).
    backend.server.kill9();
    backend.server.restart();
    assert_eq!(meta_of(&log, &k).durable_tail, 8);
    backend.server.kill9();
    backend.server.restart();
    append_ok(&log, &k, None, &events(9..=9, 1));
    backend.server.kill9();
    backend.server.restart();
    assert!(log
        .wait_after(&k, 8, Duration::from_secs(1))
        .expect("wait_after on a stale idle connection"));
    backend.server.kill9();
    backend.server.restart();
    assert_eq!(positions(&load_all(&log, &k)), [3, 4, 5, 6, 8, 9]);
    backend.server.kill9();
    backend.server.restart();
    assert_eq!(log.archive_before(&k, 8).expect("archive"), 4);
    backend.server.kill9();
    backend.server.restart();
    assert_eq!(listed(&log, "t"), [k]);
}

/// A frozen server (SIGSTOP) makes calls fail at the I/O timeout, not hang;
/// thawed, it serves again through the same log.
#[test]
fn a_frozen_server_times_out_and_recovers() {
    let backend = backend_or_skip!();
    let k = key("t", "s");
    let log = RedisLog::open_with(
        &backend.server.url(),
        RedisOptions {
            io_timeout: Duration::from_millis(300),
            ..options(&backend.namespace)
        },
    )
    .expect("open");
    append_ok(&log, &k, Some(life(1, 1)), &events(1..=2, 1));
    backend.server.freeze();
    let started = Instant::now();
    let result = log.meta(&k);
    let elapsed = started.elapsed();
    backend.server.thaw();
    assert!(matches!(result, Err(LogError::Backend(_))), "{result:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(meta_of(&log, &k).durable_tail, 2);
}

#[test]
fn an_unreachable_server_is_a_backend_error() {
    let backend = backend_or_skip!();
    let port = backend.server.port();
    drop(backend);
    let started = Instant::now();
    let result = RedisLog::open(&format!("redis://127.0.0.1:{port}/"));
    assert!(matches!(result, Err(LogError::Backend(_))), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(
        RedisLog::open("not a url"),
        Err(LogError::Backend(_))
    ));
}

/// Keys the log did not write, or bytes it cannot read, are `Corrupt`.
#[test]
fn damaged_keys_are_corrupt_not_panics() {
    let backend = backend_or_skip!();
    let log = backend.log();
    let mut con = raw(&backend.server);
    let p = &backend.namespace;
    let set = |con: &mut redis::Connection, key: String, value: &[u8]| {
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query::<()>(con)
            .expect("SET");
    };
    // A meta that is not ours.
    let garbage = key("t", "garbage");
    set(
        &mut con,
        format!("{p}:{{t:garbage}}:meta"),
        b"\x01\xff\xff\xff",
    );
    assert!(matches!(log.meta(&garbage), Err(LogError::Corrupt(_))));
    assert!(matches!(
        log.load_after(&garbage, 0, 10),
        Err(LogError::Corrupt(_))
    ));
    let one = events(1..=1, 1);
    assert!(matches!(
        log.append(&[durable_suite::write(&garbage, None, &one)]),
        Err(LogError::Corrupt(_))
    ));
    assert!(matches!(
        log.archive_before(&garbage, 1),
        Err(LogError::Corrupt(_))
    ));
    // A stream key holding a string.
    let wrong = key("t", "wrongtype");
    append_ok(log, &wrong, Some(life(1, 1)), &events(1..=2, 1));
    set(&mut con, format!("{p}:{{t:wrongtype}}:log"), b"x");
    assert!(matches!(
        log.load_after(&wrong, 0, 10),
        Err(LogError::Corrupt(_))
    ));
    // A malformed entry in a good stream.
    let bad = key("t", "badentry");
    append_ok(log, &bad, Some(life(1, 1)), &events(1..=2, 1));
    redis::cmd("XADD")
        .arg(format!("{p}:{{t:badentry}}:log"))
        .arg("3-0")
        .arg("i")
        .arg("zero")
        .query::<String>(&mut con)
        .expect("XADD");
    assert_eq!(positions(&load(log, &bad, 0, 2)), [1, 2]);
    assert!(matches!(
        log.load_after(&bad, 0, 10),
        Err(LogError::Corrupt(_))
    ));
    // The log still works for everything else, on the same connection.
    let fine = key("t", "fine");
    append_ok(log, &fine, Some(life(1, 1)), &events(1..=2, 1));
    assert_eq!(positions(&load_all(log, &fine)), [1, 2]);
}

/// Issue 21, item 10: a payload over the server's bulk limit is refused by
/// Redis with a plain protocol error, which failed the whole commit, so
/// every session batched with it stalled for good. The log now refuses the
/// record by name before sending (`InvalidRecord`), and the persister
/// writes it as a hole, counted with its key, while the rest is written.
/// A causal index in the layout before each entry was a key of its own (one
/// hash, `<prefix>:index`) is refused at open, by name, rather than misread
/// (numbering would start over and overwrite its entries).
#[test]
fn an_index_in_the_earlier_layout_is_refused_at_open() {
    let backend = backend_or_skip!();
    let mut con = raw(&backend.server);
    let legacy = format!("{}:index", backend.namespace);
    let _: () = redis::cmd("HSET")
        .arg(&legacy)
        .arg("S")
        .arg(&[7u8, 0][..])
        .query(&mut con)
        .expect("HSET");
    match RedisLog::open_with(&backend.server.url(), options(&backend.namespace)) {
        Err(LogError::Corrupt(what)) => assert!(what.contains(&legacy), "{what}"),
        other => panic!("expected Corrupt naming {legacy}, got {other:?}"),
    }
    // Another prefix on the same server is not affected.
    assert!(RedisLog::open_with(&backend.server.url(), options("elsewhere")).is_ok());
}

#[test]
fn a_payload_over_the_bulk_limit_is_a_hole_not_a_stalled_batch() {
    use livereplay::{DurableError, DurableOptions, ReplayStore, Revision, Utf8};
    let Some(server) = RedisServer::start_with(&["--proto-max-bulk-len", "1mb"]) else {
        return;
    };
    let log = Arc::new(open(&server, &unique_prefix()));
    let store = ReplayStore::<String>::builder()
        .durable(log.clone(), Utf8)
        .durable_options(DurableOptions::default().with_persister_thread(false))
        .build()
        .unwrap();
    let big = key("t", "big");
    let small = key("t", "small");
    store
        .append(&big, Revision(1), "x".repeat(2 << 20))
        .unwrap();
    store.append(&big, Revision(1), "after".into()).unwrap();
    store.append(&small, Revision(1), "small".into()).unwrap();
    let mut rounds = 0;
    while let Some(committed) = store.persist_round() {
        assert!(committed, "a commit failed: {:?}", store.stats().durable);
        rounds += 1;
        assert!(rounds < 10, "the persister never finished");
    }
    assert!(matches!(
        store.wait_durable(&big, 1, Duration::ZERO),
        Err(DurableError::Lost { position: 1, .. })
    ));
    assert_eq!(store.wait_durable(&big, 2, Duration::ZERO).unwrap(), 2);
    assert_eq!(store.wait_durable(&small, 1, Duration::ZERO).unwrap(), 1);
    let durable = store.stats().durable.unwrap();
    assert_eq!(durable.refused_records, 1);
    assert_eq!(durable.last_refused.as_ref(), Some(&big));
    assert_eq!(positions(&load_all(log.as_ref(), &big)), vec![1, 2]);
}
