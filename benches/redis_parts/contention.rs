//! Part 7 of the Redis bench (`benches/redis.rs` documents the run):
//! several nodes, each a store with its own `RedisLog` connection, writing
//! to sessions of their own over one server, with links and without
//! (issue 21 item 9). It owns nothing but its own runs: every run uses a
//! fresh key prefix, and the server is flushed after it.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use livereplay::durable::{DurableLog, RedisLog};
use livereplay::{Config, DurableError, DurableOptions, Links, Revision, SessionKey};

use super::redis_server::RedisServer;
use super::support::{at_quantile, per_second, spread, Settings};
use super::{
    command_calls, connect, durable_stats, durable_store, flush_all, key, payload, redis_log,
    server_counters, used_memory, Out, Store, PAYLOAD_BYTES, WAIT_LIMIT,
};

/// Nodes (stores, each with its own `RedisLog` connection) in part 7.
const CONTENTION_NODES: usize = 4;
/// Events per second each node appends in part 7.
const CONTENTION_RATE: u64 = 3_000;

/// One run of part 7, summed over the nodes.
#[derive(Default)]
struct ContentionRun {
    /// Events the log took, per second from the start until every node's
    /// last event was durable.
    committed_per_s: f64,
    commits: u64,
    aborted: u64,
    failed_commits: u64,
    holes: u64,
    lost_events: u64,
    /// Per event the log took: Redis commands, server CPU (µs) and
    /// `used_memory` growth (bytes; the server was flushed before).
    commands_per_event: f64,
    server_cpu_us_per_event: f64,
    memory_per_event: f64,
}

/// Four nodes append paced events to a session each for `duration`, with
/// links (kind, correlation, the previous event as parent) or without,
/// under a prefix of their own; the clock stops when every node's last
/// event is durable. Rings keep the default capacity (2048), so a node
/// whose commits keep failing laps into holes, as in production.
fn contend_once(
    url: &str,
    admin: &mut redis::Connection,
    prefix: &str,
    linked: bool,
    duration: Duration,
) -> ContentionRun {
    let memory_before = used_memory(admin);
    let server_before = server_counters(admin);
    let calls_before: u64 = command_calls(admin).values().sum();
    let logs: Vec<Arc<RedisLog>> = (0..CONTENTION_NODES)
        .map(|_| redis_log(url, prefix))
        .collect();
    let stores: Vec<Arc<Store>> = logs
        .iter()
        .map(|log| {
            let log: Arc<dyn DurableLog> = Arc::clone(log) as Arc<dyn DurableLog>;
            durable_store(log, Config::default(), DurableOptions::default())
        })
        .collect();
    let keys: Vec<SessionKey> = (0..CONTENTION_NODES)
        .map(|node| key(&format!("node-{node}")))
        .collect();
    let start = std::sync::Barrier::new(CONTENTION_NODES + 1);
    let mut begun = Instant::now();
    thread::scope(|scope| {
        for (node, (store, key)) in stores.iter().zip(&keys).enumerate() {
            let start = &start;
            scope.spawn(move || {
                start.wait();
                let begun = Instant::now();
                let mut parent: Option<livereplay::EventRef> = None;
                let mut sent = 0u64;
                let mut last = 0u64;
                while begun.elapsed() < duration {
                    let due = (begun.elapsed().as_secs_f64() * CONTENTION_RATE as f64) as u64;
                    while sent < due {
                        let body = payload(sent);
                        let event = if linked {
                            let mut links = Links::new()
                                .kind("step")
                                .correlation(format!("node-{node}"));
                            if let Some(parent) = parent.take() {
                                links = links.parent(parent);
                            }
                            store.append_linked(key, Revision(1), body, links)
                        } else {
                            store.append(key, Revision(1), body)
                        }
                        .expect("append");
                        parent = Some(event.reference());
                        last = event.position();
                        sent += 1;
                    }
                    thread::sleep(Duration::from_millis(1));
                }
                // The last event is the newest: nothing laps it.
                match store.wait_durable(key, last, WAIT_LIMIT) {
                    Ok(_) | Err(DurableError::Lost { .. }) => {}
                    Err(error) => panic!("{key}: position {last} not durable: {error}"),
                }
            });
        }
        start.wait();
        begun = Instant::now();
    });
    let elapsed = begun.elapsed().as_secs_f64();
    let server_after = server_counters(admin);
    let calls_after: u64 = command_calls(admin).values().sum();
    let memory_after = used_memory(admin);
    let mut run = ContentionRun::default();
    let mut persisted = 0u64;
    for (store, log) in stores.iter().zip(&logs) {
        let stats = durable_stats(store);
        persisted += stats.persisted_events;
        run.commits += stats.commits;
        run.failed_commits += stats.log_failures;
        run.holes += stats.holes;
        run.lost_events += stats.lost_events;
        run.aborted += log.aborted_transactions();
    }
    run.committed_per_s = persisted as f64 / elapsed;
    let per_event = |total: f64| total / persisted.max(1) as f64;
    run.commands_per_event = per_event(calls_after.saturating_sub(calls_before) as f64);
    run.server_cpu_us_per_event =
        per_event((server_after.cpu_seconds - server_before.cpu_seconds) * 1e6);
    run.memory_per_event = per_event(memory_after - memory_before);
    run
}

pub(crate) fn contention(settings: &Settings, server: &RedisServer, out: &mut Out) {
    let seconds = if settings.quick { 0.3 } else { 3.0 };
    let reps = settings.size(3, 1);
    println!(
        "\n== 7. contention: {CONTENTION_NODES} nodes (a store and a RedisLog connection each) over one server, each appending {CONTENTION_RATE} events/s of {PAYLOAD_BYTES} bytes to a session of its own for {seconds} s, with links (kind, correlation, parent: the previous event) and without; default ring capacity; {reps} repetitions per design, taking turns, each under a fresh prefix =="
    );
    let url = server.url();
    let mut admin = connect(&url);
    let designs = [("linked", true), ("unlinked", false)];
    let mut runs: Vec<Vec<ContentionRun>> = designs.iter().map(|_| Vec::new()).collect();
    for rep in 0..reps {
        for turn in 0..designs.len() {
            let index = (turn + rep) % designs.len();
            let (name, linked) = designs[index];
            let prefix = format!("contention-{name}-{rep}");
            runs[index].push(contend_once(
                &url,
                &mut admin,
                &prefix,
                linked,
                Duration::from_secs_f64(seconds),
            ));
            flush_all(&mut admin);
        }
    }
    for ((name, _), runs) in designs.iter().zip(&runs) {
        let rate: Vec<f64> = runs.iter().map(|r| r.committed_per_s).collect();
        let aborts: Vec<f64> = runs
            .iter()
            .map(|r| r.aborted as f64 * 1000.0 / r.commits.max(1) as f64)
            .collect();
        let failed: Vec<f64> = runs.iter().map(|r| r.failed_commits as f64).collect();
        let holes: Vec<f64> = runs.iter().map(|r| r.holes as f64).collect();
        let lost: Vec<f64> = runs.iter().map(|r| r.lost_events as f64).collect();
        let commands: Vec<f64> = runs.iter().map(|r| r.commands_per_event).collect();
        let cpu: Vec<f64> = runs.iter().map(|r| r.server_cpu_us_per_event).collect();
        let memory: Vec<f64> = runs.iter().map(|r| r.memory_per_event).collect();
        println!(
            "  {name:<9} committed {} ; aborted EXECs per 1000 commits {} ; failed commits {} ; holes {} ({} events lost)",
            spread(&rate, per_second),
            spread(&aborts, |v| format!("{v:.1}")),
            spread(&failed, |v| format!("{v:.0}")),
            spread(&holes, |v| format!("{v:.0}")),
            spread(&lost, |v| format!("{v:.0}")),
        );
        println!(
            "  {:<9} per event taken: {} Redis commands, {} µs of server CPU, {} B of used_memory",
            "",
            spread(&commands, |v| format!("{v:.2}")),
            spread(&cpu, |v| format!("{v:.2}")),
            spread(&memory, |v| format!("{v:.0}")),
        );
        for (metric, values) in [
            ("committed_events_per_s", &rate),
            ("aborted_execs_per_1000_commits", &aborts),
            ("failed_commits", &failed),
            ("holes", &holes),
            ("lost_events", &lost),
            ("commands_per_event", &commands),
            ("server_cpu_us_per_event", &cpu),
            ("used_memory_bytes_per_event", &memory),
        ] {
            out.row(
                "contention",
                name,
                &format!("{metric}_median"),
                at_quantile(values, 0.5),
            );
            out.row(
                "contention",
                name,
                &format!("{metric}_max"),
                at_quantile(values, 1.0),
            );
        }
    }
}
