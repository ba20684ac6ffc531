//! Several nodes writing linked events to their own sessions over one Redis
//! must not abort each other's commits (issue 21 item 9).
//!
//! Four stores, each with its own `RedisLog` (its own connection) on one
//! real `redis-server` and one key prefix, stand for four nodes; each
//! appends a chain of linked events (kind, correlation, parent: the
//! previous event) to a session of its own, all at once. Commits on
//! different sessions that touch no common index entry have nothing to
//! conflict on, so whatever the machine's speed every node's log must see
//! no aborted `EXEC`, no failed commit and no hole, and the index must hold
//! every chain whole.
//!
//! Rings hold every event a node appends, so a slow persister cannot lap
//! one: a hole here can only come from the log refusing or failing.
//! Every wait is bounded; the server is stopped when the test ends.

#[path = "support/redis_server.rs"]
mod redis_server;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use livereplay::durable::{DurableLog, RedisLog, RedisOptions};
use livereplay::{Config, EventRef, Links, RawBytes, ReplayStore, Revision, SessionKey};

use redis_server::RedisServer;

type Store = ReplayStore<Vec<u8>>;

const NODES: usize = 4;
const EVENTS_PER_NODE: u64 = 3_000;
/// The longest any one wait in this test may take.
const WAIT: Duration = Duration::from_secs(60);

fn open(server: &RedisServer) -> Arc<RedisLog> {
    let options = RedisOptions {
        prefix: "contention".into(),
        ..RedisOptions::default()
    };
    Arc::new(RedisLog::open_with(&server.url(), options).expect("open the Redis log"))
}

fn store(log: Arc<RedisLog>) -> Store {
    let config = Config {
        // Every event of the run stays in the ring: nothing can be lapped.
        capacity: EVENTS_PER_NODE as usize * 2,
        ..Config::default()
    };
    let log: Arc<dyn DurableLog> = log;
    Store::builder()
        .config(config)
        .durable(log, RawBytes)
        .build()
        .expect("build the store")
}

/// Node `node` appends its chain: event `i` has event `i - 1` as parent.
fn append_chain(store: &Store, key: &SessionKey, node: usize) {
    let mut parent = None;
    for i in 0..EVENTS_PER_NODE {
        let mut links = Links::new()
            .kind("step")
            .correlation(format!("node-{node}"));
        if let Some(parent) = parent.take() {
            links = links.parent(parent);
        }
        let event = store
            .append_linked(key, Revision(1), i.to_le_bytes().to_vec(), links)
            .expect("append");
        parent = Some(event.reference());
    }
}

/// Runs the nodes; with `orphan`, an event of another session first waits
/// for an event of node 0's session that never comes, so every commit of
/// node 0 looks for children waiting on its events (a scan of the index).
fn run_nodes(orphan: bool) {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let waiting_for = EventRef::new(
        SessionKey::new("t", "node-0").expect("key"),
        EVENTS_PER_NODE * 1_000,
    );
    if orphan {
        let setup = store(open(&server));
        let key = SessionKey::new("t", "setup").expect("key");
        let links = Links::new().kind("early").parent(waiting_for.clone());
        let early = setup
            .append_linked(&key, Revision(1), b"early".to_vec(), links)
            .expect("append");
        setup
            .wait_durable(&key, early.position(), WAIT)
            .expect("durable in time");
        let orphans = setup.dag().expect("dag").index_stats().expect("stats");
        assert_eq!(orphans.orphans, 1, "the early event waits for its parent");
    }
    let logs: Vec<Arc<RedisLog>> = (0..NODES).map(|_| open(&server)).collect();
    let stores: Vec<Store> = logs.iter().map(|log| store(Arc::clone(log))).collect();
    let keys: Vec<SessionKey> = (0..NODES)
        .map(|node| SessionKey::new("t", &format!("node-{node}")).expect("key"))
        .collect();
    let start = Barrier::new(NODES);
    thread::scope(|scope| {
        for (node, (store, key)) in stores.iter().zip(&keys).enumerate() {
            let start = &start;
            scope.spawn(move || {
                start.wait();
                append_chain(store, key, node);
                store
                    .wait_durable(key, EVENTS_PER_NODE, WAIT)
                    .expect("every event durable in time");
            });
        }
    });
    for (node, (store, log)) in stores.iter().zip(&logs).enumerate() {
        let stats = store.stats().durable.expect("a durable store");
        assert_eq!(
            (stats.holes, stats.lost_events, stats.log_failures),
            (0, 0, 0),
            "node {node}: holes, lost events, failed commits: {stats:?}"
        );
        assert_eq!(stats.persisted_events, EVENTS_PER_NODE, "node {node}");
        assert_eq!(
            log.aborted_transactions(),
            0,
            "node {node}: commits on other sessions aborted this node's EXEC"
        );
    }
    // The index holds every chain whole: the last event's depth counts
    // all the others.
    let dag = stores[0].dag().expect("dag");
    let stats = dag.index_stats().expect("index stats");
    let early = u64::from(orphan);
    assert_eq!(stats.indexed, NODES as u64 * EVENTS_PER_NODE + early);
    assert_eq!(stats.orphans, early);
    for key in &keys {
        let last = EventRef::new(key.clone(), EVENTS_PER_NODE);
        let node = dag.node(&last).expect("node").expect("indexed");
        assert_eq!(node.depth, Some(EVENTS_PER_NODE as u32 - 1), "{key}");
    }
}

#[test]
fn nodes_writing_linked_events_to_their_own_sessions_never_abort_each_other() {
    run_nodes(false);
}

/// While an orphan waits on node 0's session, node 0's commits scan the
/// index for children of each event: that scan must not make them
/// conflict with the other nodes' commits either.
#[test]
fn a_session_with_a_waiting_orphan_does_not_abort_the_others_either() {
    run_nodes(true);
}

/// Links that cross sessions may conflict, and must then come out right:
/// node A appends events whose parents are node B's events of the same
/// positions, while B is still writing them, so A's commits race B's (an
/// orphan recorded just before its parent arrives, or a parent arriving
/// between A's read and A's commit). Whatever the interleaving, the index
/// must end with no orphan and every depth right.
#[test]
fn links_across_sessions_written_concurrently_end_with_every_depth_right() {
    const EVENTS: u64 = 1_000;
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, b) = (store(open(&server)), store(open(&server)));
    let (a_key, b_key) = (
        SessionKey::new("t", "a").expect("key"),
        SessionKey::new("t", "b").expect("key"),
    );
    let start = Barrier::new(2);
    thread::scope(|scope| {
        scope.spawn(|| {
            start.wait();
            append_chain(&b, &b_key, 1);
            b.wait_durable(&b_key, EVENTS_PER_NODE, WAIT)
                .expect("durable in time");
        });
        scope.spawn(|| {
            start.wait();
            for position in 1..=EVENTS {
                let parent = EventRef::new(b_key.clone(), position);
                let links = Links::new().kind("reply").parent(parent);
                a.append_linked(&a_key, Revision(1), position.to_le_bytes().to_vec(), links)
                    .expect("append");
            }
            a.wait_durable(&a_key, EVENTS, WAIT)
                .expect("durable in time");
        });
    });
    for store in [&a, &b] {
        let stats = store.stats().durable.expect("a durable store");
        assert_eq!((stats.holes, stats.lost_events), (0, 0), "{stats:?}");
    }
    let dag = a.dag().expect("dag");
    assert_eq!(dag.index_stats().expect("stats").orphans, 0);
    for position in 1..=EVENTS {
        let event = EventRef::new(a_key.clone(), position);
        let node = dag.node(&event).expect("node").expect("indexed");
        // b@p is at depth p - 1 (b@1 is the root of B's chain).
        assert_eq!(node.depth, Some(position as u32), "{event}");
    }
}
