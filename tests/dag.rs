//! Causal links and acknowledgements (`livereplay::dag`) against one suite,
//! run on every durable backend: the in-memory log, redb, Redis (a real
//! `redis-server` the fixture starts) and Postgres (a real server). A new
//! backend adds a fixture and one `dag_suite!` call.
//!
//! Every test goes through a real store: links on append, the persister
//! writing records and the backend indexing them in the same commit, then
//! the queries; the restart tests drop the store and its log and open both
//! again over the same data.
#![cfg(feature = "dag")]

#[cfg(feature = "postgres")]
#[path = "support/postgres_server.rs"]
mod postgres_server;
#[cfg(feature = "redis")]
#[path = "support/redis_server.rs"]
mod redis_server;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use livereplay::adapters::{AdapterError, DagEvent, DagPosition, EventDag};
use livereplay::dag::{DagError, UpstreamSignal};
use livereplay::durable::{DurableLog, MemoryLog};
use livereplay::{
    Config, Cursor, Error, Event, EventRef, LinkError, Links, ReplayStore, Revision, SessionKey,
    Utf8,
};

const WAIT: Duration = Duration::from_secs(10);

/// Opens a backend's log; the same data every time it is called.
type Opener = Box<dyn Fn() -> Arc<dyn DurableLog>>;

/// A store over some backend, and what it takes to open it again.
pub struct Fixture {
    pub store: Option<ReplayStore<String>>,
    open: Opener,
    dir: Option<PathBuf>,
    #[cfg(feature = "redis")]
    _server: Option<redis_server::RedisServer>,
}

impl Fixture {
    fn new(open: Opener, dir: Option<PathBuf>) -> Self {
        let store = store_over(open());
        Self {
            store: Some(store),
            open,
            dir,
            #[cfg(feature = "redis")]
            _server: None,
        }
    }

    fn store(&self) -> &ReplayStore<String> {
        self.store.as_ref().expect("the store is open")
    }

    /// Drops the store (its persister drains first) and the log, and opens
    /// both again: a restart.
    fn restart(&mut self) {
        self.store = None;
        self.store = Some(store_over((self.open)()));
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.store = None;
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A ring of 8 events, so that long walks read the log too.
fn store_over(log: Arc<dyn DurableLog>) -> ReplayStore<String> {
    ReplayStore::builder()
        .config(Config::default().with_capacity(8))
        .durable(log, Utf8)
        .build()
        .expect("a valid store")
}

pub fn memory() -> Fixture {
    let log: Arc<dyn DurableLog> = Arc::new(MemoryLog::new());
    Fixture::new(Box::new(move || log.clone()), None)
}

#[cfg(feature = "redb")]
pub fn redb() -> Fixture {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "livereplay-dag-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path = dir.join("log.redb");
    Fixture::new(
        Box::new(move || Arc::new(livereplay::durable::RedbLog::open(&path).expect("a redb log"))),
        Some(dir),
    )
}

/// `None` (the test returns, saying SKIPPED) without `redis-server` outside
/// CI.
#[cfg(feature = "redis")]
pub fn redis() -> Option<Fixture> {
    use livereplay::durable::{RedisLog, RedisOptions};
    let server = redis_server::RedisServer::start()?;
    let url = server.url();
    let open = move || -> Arc<dyn DurableLog> {
        let options = RedisOptions {
            prefix: "dagtest".into(),
            connect_timeout: Duration::from_secs(2),
            ..RedisOptions::default()
        };
        Arc::new(RedisLog::open_with(&url, options).expect("a Redis log"))
    };
    let mut fixture = Fixture::new(Box::new(open), None);
    fixture._server = Some(server);
    Some(fixture)
}

/// `None` (the test returns, saying SKIPPED) without the Postgres binaries
/// outside CI. The server lives in the opener, so it outlives the store.
#[cfg(feature = "postgres")]
pub fn postgres() -> Option<Fixture> {
    use livereplay::durable::{PostgresLog, PostgresOptions};
    let server = postgres_server::PostgresServer::start()?;
    let open = move || -> Arc<dyn DurableLog> {
        let options = PostgresOptions {
            schema: "dagtest".into(),
            ..PostgresOptions::default()
        };
        Arc::new(PostgresLog::open_with(&server.params(), options).expect("a Postgres log"))
    };
    Some(Fixture::new(Box::new(open), None))
}

fn key(session: &str) -> SessionKey {
    SessionKey::new("acme", session).unwrap()
}

fn append(
    store: &ReplayStore<String>,
    session: &str,
    text: &str,
    links: Links,
) -> Arc<Event<String>> {
    let event = store
        .append_linked(&key(session), Revision(1), text.into(), links)
        .expect("append");
    // Keep the persister within the ring's 8 slots, so that nothing is
    // lapped (a lapped position is a hole, which no query serves).
    if event.position().is_multiple_of(4) {
        store
            .wait_durable(&key(session), event.position(), WAIT)
            .expect("durable in time");
    }
    event
}

fn texts(events: &[Arc<Event<String>>]) -> Vec<&str> {
    events.iter().map(|e| e.payload().as_str()).collect()
}

/// Waits until every event appended so far to `sessions` is indexed.
fn settle(store: &ReplayStore<String>, sessions: &[&str]) {
    let dag = store.dag().expect("a dag");
    for session in sessions {
        let k = key(session);
        if let Some(last) = store.latest_position(&k) {
            dag.wait_indexed(&EventRef::new(k, last), WAIT)
                .expect("indexed in time");
        }
    }
}

// --- links on append ------------------------------------------------------

pub fn links_ride_with_the_event_through_ring_and_log(f: Fixture) {
    let store = f.store();
    let root = append(store, "main", "root", Links::new());
    let call = append(
        store,
        "main",
        "call",
        Links::new()
            .parent(root.reference())
            .correlation("c-1")
            .kind("tool_call")
            .lane("tools")
            .requires_ack(),
    );
    assert!(root.links().is_none(), "no links: no allocation");
    let links = call.links().expect("links");
    assert_eq!(links.parent, Some(root.reference()));
    assert_eq!(links.kind.as_deref(), Some("tool_call"));
    // Push both out of the ring (8 slots), then read them from the log.
    for i in 0..20 {
        append(store, "main", &format!("filler {i}"), Links::new());
    }
    settle(store, &["main"]);
    let from_log = store
        .catch_up_replay(&Cursor::start(key("main")), 2)
        .expect("replay");
    assert_eq!(texts(&from_log), ["root", "call"]);
    assert!(from_log[0].links().is_none());
    assert_eq!(from_log[1].links(), Some(links));
}

pub fn malformed_links_are_refused_and_nothing_is_appended(f: Fixture) {
    let store = f.store();
    let other_tenant = SessionKey::new("globex", "main").unwrap();
    let foreign = store
        .append(&other_tenant, Revision(1), "theirs".into())
        .unwrap();
    let refused = store.append_linked(
        &key("main"),
        Revision(1),
        "x".into(),
        Links::new().parent(foreign.reference()),
    );
    assert!(matches!(
        refused,
        Err(Error::Link(LinkError::CrossTenant { .. }))
    ));
    let zero = store.append_linked(
        &key("main"),
        Revision(1),
        "x".into(),
        Links::new().parent(EventRef::new(key("main"), 0)),
    );
    assert!(matches!(
        zero,
        Err(Error::Link(LinkError::NoSuchPosition { .. }))
    ));
    assert_eq!(store.latest_position(&key("main")), None);
    // Through a handle too.
    let handle = store.session(&key("main")).unwrap();
    assert!(handle
        .append_linked(
            Revision(1),
            "x".into(),
            Links::new().parent(foreign.reference())
        )
        .is_err());
    assert_eq!(store.latest_position(&key("main")).unwrap_or(0), 0);
}

// --- queries ----------------------------------------------------------------

/// A user message in `main`, a tool call and its result, a sub-agent in its
/// own session, and two events of the sub-agent.
fn agent_turn(store: &ReplayStore<String>) -> Vec<Arc<Event<String>>> {
    let user = append(store, "main", "user", Links::new().kind("user_message"));
    let call = append(
        store,
        "main",
        "call",
        Links::new()
            .parent(user.reference())
            .kind("tool_call")
            .correlation("turn-1"),
    );
    let result = append(
        store,
        "main",
        "result",
        Links::new()
            .parent(call.reference())
            .kind("tool_result")
            .correlation("turn-1"),
    );
    let spawn = append(
        store,
        "sub",
        "spawn",
        Links::new()
            .parent(user.reference())
            .kind("agent_start")
            .lane("sub-agent")
            .correlation("turn-1"),
    );
    let step = append(
        store,
        "sub",
        "step",
        Links::new().parent(spawn.reference()).kind("tool_call"),
    );
    let answer = append(
        store,
        "main",
        "answer",
        Links::new()
            .parent(result.reference())
            .kind("assistant")
            .correlation("turn-1"),
    );
    settle(store, &["main", "sub"]);
    vec![user, call, result, spawn, step, answer]
}

pub fn ancestors_are_most_recent_first_and_cross_sessions(f: Fixture) {
    let store = f.store();
    let turn = agent_turn(store);
    let dag = store.dag().unwrap();
    let up = dag.ancestors(&turn[5].reference(), 10).unwrap();
    assert_eq!(texts(&up.events), ["result", "call", "user"]);
    assert_eq!(up.missing, None);
    let up = dag.ancestors(&turn[4].reference(), 10).unwrap();
    assert_eq!(texts(&up.events), ["spawn", "user"]);
    let limited = dag.ancestors(&turn[5].reference(), 2).unwrap();
    assert_eq!(texts(&limited.events), ["result", "call"]);
    assert!(dag
        .ancestors(&turn[0].reference(), 10)
        .unwrap()
        .events
        .is_empty());
    assert!(up.as_of >= 6);
    let node = dag.node(&turn[4].reference()).unwrap().expect("a node");
    assert_eq!(node.depth, Some(2));
    assert_eq!(node.links.parent, Some(turn[3].reference()));
}

pub fn descendants_are_breadth_first(f: Fixture) {
    let store = f.store();
    let turn = agent_turn(store);
    let dag = store.dag().unwrap();
    let down = dag.descendants(&turn[0].reference(), 10).unwrap();
    // Children of `user` (main before sub), then theirs.
    assert_eq!(
        texts(&down.events),
        ["call", "spawn", "result", "step", "answer"]
    );
    let limited = dag.descendants(&turn[0].reference(), 3).unwrap();
    assert_eq!(texts(&limited.events), ["call", "spawn", "result"]);
    assert!(dag
        .descendants(&turn[5].reference(), 10)
        .unwrap()
        .events
        .is_empty());
}

pub fn correlation_chains_are_in_index_order_and_per_tenant(f: Fixture) {
    let store = f.store();
    agent_turn(store);
    let other = SessionKey::new("globex", "main").unwrap();
    store
        .append_linked(
            &other,
            Revision(1),
            "theirs".into(),
            Links::new().correlation("turn-1"),
        )
        .unwrap();
    settle(store, &[]);
    store
        .dag()
        .unwrap()
        .wait_indexed(&EventRef::new(other, 1), WAIT)
        .unwrap();
    let dag = store.dag().unwrap();
    let chain = dag.correlation_chain("acme", "turn-1", 100).unwrap();
    assert_eq!(texts(&chain.events), ["call", "result", "spawn", "answer"]);
    let limited = dag.correlation_chain("acme", "turn-1", 2).unwrap();
    assert_eq!(texts(&limited.events), ["call", "result"]);
    let theirs = dag.correlation_chain("globex", "turn-1", 100).unwrap();
    assert_eq!(texts(&theirs.events), ["theirs"]);
    assert!(dag
        .correlation_chain("acme", "turn-", 100)
        .unwrap()
        .events
        .is_empty());
}

pub fn find_by_kind_respects_the_depth_range(f: Fixture) {
    let store = f.store();
    agent_turn(store);
    let dag = store.dag().unwrap();
    // tool_call at depth 1 (main) and 2 (sub).
    let all = dag.find_by_kind("acme", "tool_call", 0, 10, 100).unwrap();
    assert_eq!(texts(&all.events), ["call", "step"]);
    let deep = dag.find_by_kind("acme", "tool_call", 2, 2, 100).unwrap();
    assert_eq!(texts(&deep.events), ["step"]);
    let shallow = dag.find_by_kind("acme", "tool_call", 0, 1, 100).unwrap();
    assert_eq!(texts(&shallow.events), ["call"]);
    let limited = dag.find_by_kind("acme", "tool_call", 0, 10, 1).unwrap();
    assert_eq!(texts(&limited.events), ["call"]);
    assert!(dag
        .find_by_kind("acme", "tool_call", 3, 2, 100)
        .unwrap()
        .events
        .is_empty());
    assert!(dag
        .find_by_kind("globex", "tool_call", 0, 10, 100)
        .unwrap()
        .events
        .is_empty());
}

pub fn a_parent_without_links_is_a_root(f: Fixture) {
    let store = f.store();
    let plain = append(store, "main", "plain", Links::new());
    let child = append(
        store,
        "main",
        "child",
        Links::new().parent(plain.reference()).kind("k"),
    );
    settle(store, &["main"]);
    let dag = store.dag().unwrap();
    let up = dag.ancestors(&child.reference(), 10).unwrap();
    assert_eq!(texts(&up.events), ["plain"]);
    assert_eq!(
        texts(&dag.find_by_kind("acme", "k", 1, 1, 10).unwrap().events),
        ["child"]
    );
    assert_eq!(
        texts(&dag.descendants(&plain.reference(), 10).unwrap().events),
        ["child"]
    );
}

pub fn an_orphan_gets_its_depth_when_its_parent_arrives(f: Fixture) {
    let store = f.store();
    // `later@1` does not exist yet.
    let future_parent = EventRef::new(key("later"), 1);
    let orphan = append(
        store,
        "main",
        "orphan",
        Links::new().parent(future_parent.clone()).kind("k"),
    );
    let grandchild = append(
        store,
        "main",
        "grandchild",
        Links::new().parent(orphan.reference()).kind("k"),
    );
    settle(store, &["main"]);
    let dag = store.dag().unwrap();
    let up = dag.ancestors(&grandchild.reference(), 10).unwrap();
    assert_eq!(texts(&up.events), ["orphan"]);
    assert_eq!(up.missing, Some(future_parent.clone()));
    assert!(dag
        .find_by_kind("acme", "k", 0, 100, 10)
        .unwrap()
        .events
        .is_empty());
    assert_eq!(dag.node(&orphan.reference()).unwrap().unwrap().depth, None);
    assert_eq!(
        dag.index_stats().unwrap().orphans,
        1,
        "the orphan is counted; the grandchild, whose parent is there, is not"
    );
    // A signal goes to the sessions of the ancestors the log holds, not to
    // the session of the missing parent.
    let signals = dag
        .signal_upstream(
            &grandchild.reference(),
            &UpstreamSignal::Backpressure,
            |s, _| s.kind().into(),
        )
        .unwrap();
    let sessions: Vec<&str> = signals.iter().map(|e| e.key().session()).collect();
    assert_eq!(sessions, ["main"]);

    // The parent arrives (with links of its own, one level below a root).
    let root = append(store, "later", "root", Links::new());
    assert_eq!(root.reference(), future_parent);
    settle(store, &["later"]);
    let dag = store.dag().unwrap();
    let up = dag.ancestors(&grandchild.reference(), 10).unwrap();
    assert_eq!(texts(&up.events), ["orphan", "root"]);
    assert_eq!(up.missing, None);
    assert_eq!(
        texts(&dag.find_by_kind("acme", "k", 0, 100, 10).unwrap().events),
        ["orphan", "grandchild"]
    );
    assert_eq!(
        dag.node(&grandchild.reference()).unwrap().unwrap().depth,
        Some(2)
    );
    assert_eq!(dag.index_stats().unwrap().orphans, 0);
}

/// An orphan's parent that arrives as an orphan itself (its own parent is
/// missing too) ends the wait of its children: they are counted no more,
/// and get their depth when the grandparent arrives.
pub fn an_orphan_whose_parent_arrives_orphaned_stops_waiting(f: Fixture) {
    let store = f.store();
    let (parent, grandparent) = (EventRef::new(key("p"), 1), EventRef::new(key("g"), 1));
    let child = append(
        store,
        "c",
        "child",
        Links::new().parent(parent.clone()).kind("k"),
    );
    settle(store, &["c"]);
    assert_eq!(store.dag().unwrap().index_stats().unwrap().orphans, 1);
    let middle = append(
        store,
        "p",
        "middle",
        Links::new().parent(grandparent.clone()).kind("k"),
    );
    assert_eq!(middle.reference(), parent);
    settle(store, &["p"]);
    let dag = store.dag().unwrap();
    assert_eq!(
        dag.index_stats().unwrap().orphans,
        1,
        "only the middle event waits (for its parent); the child's parent is there"
    );
    assert_eq!(dag.node(&child.reference()).unwrap().unwrap().depth, None);
    let root = append(store, "g", "root", Links::new());
    assert_eq!(root.reference(), grandparent);
    settle(store, &["g"]);
    let dag = store.dag().unwrap();
    assert_eq!(dag.index_stats().unwrap().orphans, 0);
    assert_eq!(
        dag.node(&middle.reference()).unwrap().unwrap().depth,
        Some(1)
    );
    assert_eq!(
        dag.node(&child.reference()).unwrap().unwrap().depth,
        Some(2)
    );
}

// --- acknowledgements -------------------------------------------------------

pub fn acknowledgements_are_idempotent_and_oldest_first(f: Fixture) {
    let store = f.store();
    let a = append(store, "ui", "a", Links::new().requires_ack());
    let b = append(store, "ui", "b", Links::new().requires_ack());
    append(store, "ui", "c", Links::new().kind("no-ack"));
    let d = append(store, "other", "d", Links::new().requires_ack());
    settle(store, &["ui", "other"]);
    let dag = store.dag().unwrap();
    let open = dag.unacknowledged("acme", 10).unwrap();
    assert_eq!(texts(&open.events), ["a", "b", "d"]);
    assert_eq!(
        texts(&dag.unacknowledged("acme", 2).unwrap().events),
        ["a", "b"]
    );
    assert!(dag.acknowledge(&b.reference()).unwrap());
    assert!(!dag.acknowledge(&b.reference()).unwrap(), "idempotent");
    assert_eq!(
        texts(&dag.unacknowledged("acme", 10).unwrap().events),
        ["a", "d"]
    );
    assert!(dag.node(&b.reference()).unwrap().unwrap().acknowledged);
    assert!(dag.unacknowledged("globex", 10).unwrap().events.is_empty());
    let _ = (a, d);
}

pub fn an_acknowledgement_before_indexing_still_counts(f: Fixture) {
    let store = f.store();
    // Acknowledge a position before anything is there.
    let dag = store.dag().unwrap();
    assert!(dag.acknowledge(&EventRef::new(key("ui"), 1)).unwrap());
    let first = append(store, "ui", "first", Links::new().requires_ack());
    let second = append(store, "ui", "second", Links::new().requires_ack());
    settle(store, &["ui"]);
    let open = store.dag().unwrap().unacknowledged("acme", 10).unwrap();
    assert_eq!(texts(&open.events), ["second"]);
    let _ = (first, second);
}

pub fn signals_reach_each_ancestor_session_live(f: Fixture) {
    let store = f.store();
    let turn = agent_turn(store);
    // A runtime listens to its own session from its tail.
    let mut listener = store
        .subscribe_after_cursor(&store.current_cursor(&key("main")))
        .unwrap();
    let dag = store.dag().unwrap();
    let sent = dag
        .signal_upstream(
            &turn[4].reference(), // step, in `sub`: ancestors spawn (sub), user (main)
            &UpstreamSignal::Error {
                message: "tool failed".into(),
            },
            |signal, target| format!("{}→{}", signal.kind(), target),
        )
        .unwrap();
    let sessions: Vec<&str> = sent.iter().map(|e| e.key().session()).collect();
    assert_eq!(sessions, ["sub", "main"]);
    let seen = listener.next_timeout(WAIT).expect("the signal, live");
    assert_eq!(seen.key().session(), "main");
    let links = seen.links().expect("links");
    assert_eq!(links.parent, Some(turn[4].reference()));
    assert_eq!(links.kind.as_deref(), Some("livereplay.signal.error"));
    // Built for the nearest ancestor in `main`: the user message.
    assert_eq!(
        seen.payload(),
        &format!("livereplay.signal.error→{}", turn[0].reference())
    );
    // A signal is itself a descendant of where it came from.
    settle(store, &["main", "sub"]);
    let down = store
        .dag()
        .unwrap()
        .descendants(&turn[4].reference(), 10)
        .unwrap();
    assert_eq!(down.events.len(), 2);
}

// --- freshness, restarts, errors -------------------------------------------

pub fn wait_indexed_names_the_answers_that_reflect_it(f: Fixture) {
    let store = f.store();
    let dag = store.dag().unwrap();
    let missing = EventRef::new(key("main"), 1);
    assert!(matches!(
        dag.ancestors(&missing, 10),
        Err(DagError::NotIndexed { .. })
    ));
    assert!(matches!(
        dag.wait_indexed(&missing, Duration::from_millis(30)),
        Err(DagError::Timeout { .. })
    ));
    let e = append(store, "main", "e", Links::new().correlation("x"));
    let number = dag.wait_indexed(&e.reference(), WAIT).unwrap();
    let chain = dag.correlation_chain("acme", "x", 10).unwrap();
    assert!(chain.as_of >= number);
    assert_eq!(texts(&chain.events), ["e"]);
}

pub fn the_index_survives_a_restart(mut f: Fixture) {
    let turn = agent_turn(f.store());
    let open = append(f.store(), "ui", "open", Links::new().requires_ack());
    let acked = append(f.store(), "ui", "acked", Links::new().requires_ack());
    settle(f.store(), &["ui"]);
    f.store()
        .dag()
        .unwrap()
        .acknowledge(&acked.reference())
        .unwrap();
    f.restart();
    let store = f.store();
    let dag = store.dag().unwrap();
    assert_eq!(
        texts(&dag.ancestors(&turn[5].reference(), 10).unwrap().events),
        ["result", "call", "user"]
    );
    assert_eq!(
        texts(&dag.unacknowledged("acme", 10).unwrap().events),
        ["open"]
    );
    // New links after the restart keep indexing on top.
    let more = append(
        store,
        "main",
        "more",
        Links::new().parent(turn[5].reference()).kind("tool_call"),
    );
    settle(store, &["main"]);
    let dag = store.dag().unwrap();
    assert_eq!(dag.node(&more.reference()).unwrap().unwrap().depth, Some(4));
    assert_eq!(
        texts(
            &dag.find_by_kind("acme", "tool_call", 0, 10, 10)
                .unwrap()
                .events
        ),
        ["call", "step", "more"]
    );
    let _ = open;
}

pub fn walks_go_on_through_archived_events(f: Fixture) {
    let store = f.store();
    let turn = agent_turn(store);
    store.archive_before(&key("main"), 2).unwrap(); // user, call
    let dag = store.dag().unwrap();
    let up = dag.ancestors(&turn[5].reference(), 10).unwrap();
    assert_eq!(texts(&up.events), ["result"]);
    assert_eq!(
        up.archived,
        vec![turn[1].reference(), turn[0].reference()],
        "named, in walk order"
    );
}

pub fn a_long_chain_walks_within_its_limit(f: Fixture) {
    let store = f.store();
    let mut last = append(store, "main", "0", Links::new());
    for i in 1..300 {
        last = append(
            store,
            "main",
            &i.to_string(),
            Links::new().parent(last.reference()).kind("step"),
        );
    }
    settle(store, &["main"]);
    let dag = store.dag().unwrap();
    let up = dag.ancestors(&last.reference(), 1000).unwrap();
    assert_eq!(up.events.len(), 299);
    assert_eq!(up.events[0].payload(), "298");
    assert_eq!(up.events[298].payload(), "0");
    let deep = dag.find_by_kind("acme", "step", 250, 260, 100).unwrap();
    assert_eq!(deep.events.len(), 11);
    assert_eq!(deep.events[0].payload(), "250");
}

// --- seed 004's shape -------------------------------------------------------

fn seed_event(
    session: &str,
    parent: Option<&EventRef>,
    kind: &str,
    text: &str,
) -> DagEvent<String> {
    DagEvent {
        session: session.into(),
        parent: parent.cloned(),
        correlation: None,
        kind: Some(kind.into()),
        lane: 0,
        requires_ack: false,
        payload: text.into(),
    }
}

fn seed_dag(store: Arc<ReplayStore<String>>) -> EventDag<String> {
    EventDag::new(store, "acme", |signal, target| {
        format!("{} for {}", signal.kind(), target)
    })
    .expect("an adapter")
}

pub fn seed_adapter_walks_reads_and_positions(mut f: Fixture) {
    let store = Arc::new(f.store.take().expect("a store"));
    let dag = seed_dag(store.clone());
    let root = dag
        .append(seed_event("main", None, "user", "root"))
        .unwrap();
    let mut call = seed_event("main", Some(&root), "tool_call", "call");
    call.correlation = Some(root.clone());
    call.lane = 7;
    let call = dag.append(call).unwrap();
    let mut sub = seed_event("sub", Some(&call), "tool_call", "sub");
    sub.correlation = Some(root.clone());
    let sub = dag.append(sub).unwrap();

    // Appends return indexed: every query sees them at once.
    let up = dag.walk_ancestors(&sub, 10).unwrap();
    assert_eq!(
        texts(&up),
        ["sub", "call", "root"],
        "from `from` toward the root"
    );
    assert_eq!(
        texts(&dag.walk_ancestors(&sub, 2).unwrap()),
        ["sub", "call"]
    );
    assert!(dag.walk_ancestors(&sub, 0).unwrap().is_empty());
    assert_eq!(
        texts(&dag.walk_descendants(&root, 10).unwrap()),
        ["call", "sub"]
    );
    assert_eq!(
        dag.read(&call).unwrap().links().unwrap().lane.as_deref(),
        Some("7")
    );
    assert_eq!(
        dag.next_position(Some(&sub), 3).unwrap(),
        DagPosition { depth: 3, lane: 3 }
    );
    assert_eq!(dag.next_position(None, 1).unwrap().depth, 0);
    assert_eq!(
        texts(&dag.find_correlation_chain("acme", &root).unwrap()),
        ["call", "sub"]
    );
    assert_eq!(
        texts(&dag.find_by_kind("tool_call", 2, 2, 10).unwrap()),
        ["sub"]
    );
    assert!(dag
        .find_by_kind_for_tenant("globex", "tool_call", 0, 9, 10)
        .unwrap()
        .is_empty());

    let nowhere = EventRef::new(key("main"), 99);
    assert!(matches!(
        dag.read(&nowhere),
        Err(AdapterError::NotFound { .. })
    ));
    assert!(dag.next_position(Some(&nowhere), 0).is_err());
    let foreign = EventRef::new(SessionKey::new("globex", "main").unwrap(), 1);
    assert!(matches!(
        dag.read(&foreign),
        Err(AdapterError::WrongTenant { .. })
    ));
    // A parent in another tenant is the store's typed refusal.
    assert!(matches!(
        dag.append(seed_event("main", Some(&foreign), "k", "x")),
        Err(AdapterError::Store(Error::Link(
            LinkError::CrossTenant { .. }
        )))
    ));
    drop(dag);
    f.store = Arc::into_inner(store);
}

pub fn seed_adapter_acknowledges_and_signals_upstream(mut f: Fixture) {
    let store = Arc::new(f.store.take().expect("a store"));
    let dag = seed_dag(store.clone());
    let turn = dag
        .append(seed_event("runtime", None, "turn", "turn"))
        .unwrap();
    let mut ui = seed_event("ui", Some(&turn), "render", "render");
    ui.requires_ack = true;
    let ui = dag.append(ui).unwrap();
    let mut other = seed_event("ui", Some(&turn), "render", "render 2");
    other.requires_ack = true;
    let other = dag.append(other).unwrap();
    assert_eq!(
        texts(&dag.unacknowledged(10).unwrap()),
        ["render", "render 2"]
    );

    let before = store.latest_position(&key("runtime")).unwrap();
    dag.acknowledge(&ui, true).unwrap();
    dag.acknowledge(&ui, false).unwrap();
    assert_eq!(texts(&dag.unacknowledged(10).unwrap()), ["render 2"]);
    // The runtime's own session got the ack, naming its turn.
    let signal = store
        .replay_after_position(&key("runtime"), before)
        .unwrap();
    assert_eq!(signal.len(), 1);
    assert_eq!(
        signal[0].payload(),
        &format!("livereplay.signal.ack for {turn}")
    );
    drop(dag);

    // After a restart the acknowledgement and the open one are still there.
    f.store = Arc::into_inner(store);
    f.restart();
    let store = Arc::new(f.store.take().expect("a store"));
    let dag = seed_dag(store.clone());
    assert_eq!(texts(&dag.unacknowledged(10).unwrap()), ["render 2"]);
    dag.acknowledge(&other, false).unwrap();
    assert!(dag.unacknowledged(10).unwrap().is_empty());
    drop(dag);
    f.store = Arc::into_inner(store);
}

// --- many nodes ----------------------------------------------------------------

/// Two nodes (stores) over one shared log: node A appends a child whose
/// parent node B has not written yet; it is an orphan in the one index until
/// B's event is durable, then both nodes see its depth.
fn two_nodes_share_one_index(a: ReplayStore<String>, b: ReplayStore<String>) {
    let parent = EventRef::new(key("b-session"), 1);
    let child = append(
        &a,
        "a-session",
        "child",
        Links::new().parent(parent.clone()).kind("k"),
    );
    settle(&a, &["a-session"]);
    assert_eq!(
        b.dag()
            .unwrap()
            .node(&child.reference())
            .unwrap()
            .unwrap()
            .depth,
        None,
        "node B sees node A's orphan"
    );
    let root = append(&b, "b-session", "root", Links::new().kind("root"));
    assert_eq!(root.reference(), parent);
    settle(&b, &["b-session"]);
    for (name, store) in [("A", &a), ("B", &b)] {
        let dag = store.dag().unwrap();
        let up = dag.ancestors(&child.reference(), 10).unwrap();
        assert_eq!(texts(&up.events), ["root"], "node {name}");
        assert_eq!(
            texts(&dag.find_by_kind("acme", "k", 1, 1, 10).unwrap().events),
            ["child"],
            "node {name}"
        );
    }
}

#[test]
fn two_nodes_share_one_memory_index() {
    let log: Arc<dyn DurableLog> = Arc::new(MemoryLog::shared());
    two_nodes_share_one_index(store_over(log.clone()), store_over(log));
}

#[cfg(feature = "redis")]
#[test]
fn two_nodes_share_one_redis_index() {
    use livereplay::durable::{RedisLog, RedisOptions};
    let Some(server) = redis_server::RedisServer::start() else {
        eprintln!("SKIPPED: no redis-server on PATH");
        return;
    };
    let open = || -> Arc<dyn DurableLog> {
        let options = RedisOptions {
            prefix: "twonodes".into(),
            connect_timeout: Duration::from_secs(2),
            ..RedisOptions::default()
        };
        Arc::new(RedisLog::open_with(&server.url(), options).expect("a Redis log"))
    };
    two_nodes_share_one_index(store_over(open()), store_over(open()));
}

pub fn a_store_without_a_log_has_no_dag() {
    let store = ReplayStore::<String>::new(Config::default()).unwrap();
    assert!(matches!(store.dag(), Err(DagError::NoDurableTier)));
    // Links still ride on events in memory.
    let e = store
        .append_linked(&key("m"), Revision(1), "x".into(), Links::new().kind("k"))
        .unwrap();
    assert_eq!(e.links().unwrap().kind.as_deref(), Some("k"));
}

#[test]
fn without_a_log() {
    a_store_without_a_log_has_no_dag();
}

macro_rules! dag_suite {
    ($fixture:expr) => {
        dag_suite!(@tests $fixture;
            links_ride_with_the_event_through_ring_and_log,
            malformed_links_are_refused_and_nothing_is_appended,
            ancestors_are_most_recent_first_and_cross_sessions,
            descendants_are_breadth_first,
            correlation_chains_are_in_index_order_and_per_tenant,
            find_by_kind_respects_the_depth_range,
            a_parent_without_links_is_a_root,
            an_orphan_gets_its_depth_when_its_parent_arrives,
            an_orphan_whose_parent_arrives_orphaned_stops_waiting,
            acknowledgements_are_idempotent_and_oldest_first,
            an_acknowledgement_before_indexing_still_counts,
            signals_reach_each_ancestor_session_live,
            wait_indexed_names_the_answers_that_reflect_it,
            the_index_survives_a_restart,
            walks_go_on_through_archived_events,
            a_long_chain_walks_within_its_limit,
            seed_adapter_walks_reads_and_positions,
            seed_adapter_acknowledges_and_signals_upstream,
        );
    };
    (@tests $fixture:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let Some(fixture) = $fixture else {
                    eprintln!("SKIPPED: no redis-server on PATH");
                    return;
                };
                crate::$name(fixture);
            }
        )*
    };
}

mod memory {
    dag_suite!(Some(crate::memory()));
}

#[cfg(feature = "redb")]
mod redb {
    dag_suite!(Some(crate::redb()));
}

#[cfg(feature = "redis")]
mod redis {
    dag_suite!(crate::redis());
}

#[cfg(feature = "postgres")]
mod postgres {
    dag_suite!(crate::postgres());
}

#[cfg(feature = "postgres")]
#[test]
fn two_nodes_share_one_postgres_index() {
    use livereplay::durable::{PostgresLog, PostgresOptions};
    let Some(server) = postgres_server::PostgresServer::start() else {
        return;
    };
    let open = || -> Arc<dyn DurableLog> {
        let options = PostgresOptions {
            schema: "twonodes".into(),
            ..PostgresOptions::default()
        };
        Arc::new(PostgresLog::open_with(&server.params(), options).expect("a Postgres log"))
    };
    two_nodes_share_one_index(store_over(open()), store_over(open()));
}
