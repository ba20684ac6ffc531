//! Two nodes in two processes over one real `redis-server` (issue 10, points
//! 3 to 5): node A, in this process, runs the session (the SSE demo's app
//! over a store whose durable log is a `RedisLog`, appending by hand); node
//! B is this test binary started again as a child process, serving the demo's
//! router host-only (`App::new_host_only`, as `sse_server --host-only
//! --redis URL` does): it runs no turn and never opens a session, it serves
//! catch-ups from Redis. A real HTTP client reads from A, resumes on B with
//! the last id A issued, and reads live events on B as A appends.
//!
//! The faults are Redis's: killed with SIGKILL mid-stream and restarted on
//! the same port (its append-only file replayed), and frozen with SIGSTOP
//! for 2 s. A's appends must succeed throughout (their longest time is
//! printed, not asserted: p99.9 belongs to the benches), the backlog ships
//! after, what A's ring lapped meanwhile is one explicit hole, and B's open
//! stream carries on by itself.
//!
//! Everything binds 127.0.0.1; every read has a deadline; the Redis server
//! and the child node are killed on drop, also when a test panics (and the
//! child exits by itself when its stdin closes, if this process dies).

#[path = "../examples/sse_server/app.rs"]
mod app;
#[path = "support/redis_server.rs"]
mod redis_server;
#[path = "support/sse_client.rs"]
mod sse_client;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use livereplay::durable::{DurableLog, RecordBody, RedisLog};
use livereplay::{Codec, Config, DurableOptions, Postcard, ReplayStore, SessionKey};
use tokio::runtime::Runtime;

use app::{App, Settings, TurnEvent};
use redis_server::RedisServer;
use sse_client::{open, text, Frame, SseReader};

/// Set in the child process: the Redis URL its host-only node serves from.
const HOST_NODE_ENV: &str = "LIVEREPLAY_TEST_HOST_NODE_REDIS";

/// How long the backlog may take to ship once Redis is back.
const SHIP_DEADLINE: Duration = Duration::from_secs(30);

/// How long the child node may take to start.
const START_DEADLINE: Duration = Duration::from_secs(30);

fn settings() -> Settings {
    Settings {
        turn: None,
        drop_every: None,
        retry: Duration::from_millis(200),
        keep_alive: Duration::from_secs(30),
        max_sessions: 100,
    }
}

fn redis_store(url: &str, config: Config) -> ReplayStore<TurnEvent> {
    let log = RedisLog::open(url).expect("open the Redis log");
    ReplayStore::builder()
        .config(config)
        .durable(Arc::new(log), Postcard)
        // No budget for undurable events: an outage longer than the ring
        // shows as a hole (with the default budget it would lose nothing).
        .durable_options(DurableOptions::default().with_undurable_budget(0))
        .build()
        .expect("store")
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The child process's entry point, not a test of its own: without
/// [`HOST_NODE_ENV`] it returns at once. With it, it serves the demo's
/// router host-only over that Redis, prints `listening on http://ADDR`, and
/// exits when its stdin closes (the parent dropped it, or died).
#[test]
fn host_node_process() {
    let Ok(url) = std::env::var(HOST_NODE_ENV) else {
        return;
    };
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    let app = App::new_host_only(redis_store(&url, Config::default()), settings());
    runtime().block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        // Straight to stdout: the harness captures `println!`.
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "listening on http://{address}");
        let _ = stdout.flush();
        let _ = axum::serve(listener, app::router(app)).await;
    });
}

/// Node B: a child process serving host-only; killed on drop.
struct HostNode {
    child: Child,
    address: SocketAddr,
}

impl HostNode {
    fn start(redis_url: &str) -> Self {
        let exe = std::env::current_exe().expect("this test binary");
        let mut child = Command::new(exe)
            .args([
                "host_node_process",
                "--exact",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(HOST_NODE_ENV, redis_url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the host node");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                // The harness may have printed "test host_node_process ..."
                // on the same line.
                if let Some((_, address)) = line.split_once("listening on http://") {
                    let _ = sender.send(address.trim().to_string());
                }
            }
        });
        let address = match receiver.recv_timeout(START_DEADLINE) {
            Ok(address) => address.parse().expect("the node's address"),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the host node did not start within {START_DEADLINE:?}");
            }
        };
        Self { child, address }
    }
}

impl Drop for HostNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Node A: this process, the demo's app over a Redis store, served on a
/// loopback port; its session is appended to by hand.
struct RuntimeNode {
    app: Arc<App>,
    address: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl RuntimeNode {
    fn start(rt: &Runtime, redis_url: &str, config: Config) -> Self {
        let app = App::new(redis_store(redis_url, config), settings());
        let router = app::router(app.clone());
        let (address, server) = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let address = listener.local_addr().expect("address");
            let server = tokio::spawn(async move {
                let _ = axum::serve(listener, router).await;
            });
            (address, server)
        });
        Self {
            app,
            address,
            server,
        }
    }

    /// Appends the token of `position` (the session's next position);
    /// returns the event's cursor string and how long the append took.
    fn append(&self, key: &SessionKey, position: u64) -> (String, Duration) {
        let started = Instant::now();
        let event = self
            .app
            .append_token(key, token(position))
            .unwrap_or_else(|e| panic!("append {position} failed: {e}"));
        let took = started.elapsed();
        assert_eq!(event.position(), position);
        (event.cursor().to_string(), took)
    }

    fn wait_durable(&self, key: &SessionKey, position: u64) {
        assert_eq!(
            self.app.store().wait_durable(key, position, SHIP_DEADLINE),
            Ok(position),
            "position {position} was not durable within {SHIP_DEADLINE:?}"
        );
    }
}

impl Drop for RuntimeNode {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn key(session: &str) -> SessionKey {
    SessionKey::new(app::TENANT, session).expect("key")
}

fn events_path(session: &str) -> String {
    format!("/sessions/{session}/events")
}

/// The demo token at `position` in these tests.
fn token(position: u64) -> String {
    format!("t{position} ")
}

fn expected(positions: impl IntoIterator<Item = u64>) -> String {
    positions.into_iter().map(token).collect()
}

/// What a client keeps across connections and nodes.
#[derive(Default)]
struct Client {
    text: String,
    positions: Vec<u64>,
    last_event_id: Option<String>,
}

impl Client {
    /// Reads `count` token events from `stream`; each must be the next
    /// position.
    fn read_tokens(&mut self, rt: &Runtime, stream: &mut SseReader, count: u64) {
        for _ in 0..count {
            let frame = rt.block_on(stream.event()).expect("a token, not the end");
            self.take_token(&frame);
        }
    }

    fn take_token(&mut self, frame: &Frame) {
        assert_eq!(frame.event.as_deref(), Some("token"), "{frame:?}");
        let data = frame.json();
        let position = data["p"].as_u64().expect("position");
        if let Some(&last) = self.positions.last() {
            assert_eq!(position, last + 1, "positions are consecutive: {frame:?}");
        }
        self.positions.push(position);
        self.text.push_str(data["t"].as_str().expect("token text"));
        let id = frame.id.clone().expect("every event carries an id");
        assert!(
            id.split('.').nth(3) == Some(&position.to_string()),
            "the id {id} is the cursor of position {position}"
        );
        self.last_event_id = Some(id);
    }
}

fn position_of(cursor: &str) -> u64 {
    cursor
        .split('.')
        .nth(3)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("not a cursor: {cursor}"))
}

#[test]
fn a_client_resumes_on_the_host_node_with_the_cursor_the_runtime_issued() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let rt = runtime();
    let a = RuntimeNode::start(&rt, &redis.url(), Config::default());
    let b = HostNode::start(&redis.url());
    let k = key("resume");
    let path = events_path("resume");
    let mut issued = vec![String::new()];
    for position in 1..=10 {
        issued.push(a.append(&k, position).0);
    }

    // Five events from A, then the connection drops.
    let mut client = Client::default();
    let mut stream = rt.block_on(open(a.address, &path, None));
    client.read_tokens(&rt, &mut stream, 5);
    drop(stream);
    assert_eq!(client.last_event_id.as_deref(), Some(issued[5].as_str()));

    // The reconnect lands on B, which never saw the session: the rest from
    // Redis, exactly after A's cursor ...
    let mut stream = rt.block_on(open(b.address, &path, client.last_event_id.as_deref()));
    client.read_tokens(&rt, &mut stream, 5);
    // ... then live, as A keeps appending (B is woken by Redis, not by A).
    let writer = std::thread::spawn({
        let (app, k) = (a.app.clone(), k.clone());
        move || {
            let mut issued = Vec::new();
            for position in 11..=30 {
                let event = app.append_token(&k, token(position)).expect("append");
                assert_eq!(event.position(), position);
                issued.push(event.cursor().to_string());
                std::thread::sleep(Duration::from_millis(3));
            }
            app.finish_turn(&k).expect("done");
            issued
        }
    });
    client.read_tokens(&rt, &mut stream, 20);
    issued.extend(writer.join().expect("the writer"));
    assert_eq!(
        client.last_event_id.as_deref(),
        Some(issued[30].as_str()),
        "B sends A's cursors"
    );
    let done = rt.block_on(stream.event()).expect("done");
    assert_eq!(done.event.as_deref(), Some("done"));
    assert_eq!(done.json()["p"], 31);

    assert_eq!(client.positions, (1..=30).collect::<Vec<_>>());
    assert_eq!(client.text, expected(1..=30), "nothing lost or repeated");
    // B's transcript is read from the log: the same text.
    assert_eq!(
        rt.block_on(text(b.address, "/sessions/resume/transcript")),
        expected(1..=30)
    );
    // The query-parameter form resumes on B the same way.
    let mut stream = rt.block_on(open(
        b.address,
        &format!("{path}?cursor={}", issued[28]),
        None,
    ));
    let mut tail = Client::default();
    tail.read_tokens(&rt, &mut stream, 2);
    assert_eq!(tail.positions, vec![29, 30]);
    drop(stream);
    drop(b);
    drop(a);
}

#[test]
fn redis_killed_mid_stream_and_restarted_loses_only_what_the_ring_lapped() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let rt = runtime();
    let capacity = 64;
    let a = RuntimeNode::start(&rt, &redis.url(), Config::default().with_capacity(capacity));
    let b = HostNode::start(&redis.url());
    let k = key("outage");
    let path = events_path("outage");
    for position in 1..=20 {
        a.append(&k, position);
    }
    a.wait_durable(&k, 20);
    let mut client = Client::default();
    let mut stream = rt.block_on(open(a.address, &path, None));
    client.read_tokens(&rt, &mut stream, 10);
    drop(stream);
    let mut on_b = rt.block_on(open(b.address, &path, client.last_event_id.as_deref()));
    client.read_tokens(&rt, &mut on_b, 10);
    let mut slowest = Duration::ZERO;

    // Outage 1, shorter than the ring: B's stream waits through it and
    // carries on by itself, with nothing lost.
    redis.kill9();
    for position in 21..=30 {
        slowest = slowest.max(a.append(&k, position).1);
        std::thread::sleep(Duration::from_millis(20));
    }
    redis.restart();
    a.wait_durable(&k, 30);
    client.read_tokens(&rt, &mut on_b, 10);
    assert_eq!(client.positions, (1..=30).collect::<Vec<_>>());

    // Outage 2, longer than the ring: A appends 200 while Redis is down;
    // what its ring laps is an explicit hole, the rest ships.
    redis.kill9();
    let last = 230;
    for position in 31..=last {
        slowest = slowest.max(a.append(&k, position).1);
    }
    let retained = a.app.store().event_count(&k);
    assert!(
        retained == capacity as u64,
        "the ring (capacity {capacity}) should have lapped: it retains {retained}"
    );
    redis.restart();
    a.wait_durable(&k, last);
    // What the ring let go: whole segments it lapped while Redis was down
    // (the window and the segment being filled stay).
    let lapped = a.app.store().stats().durable.expect("stats").lost_events;
    assert!(lapped > 0 && lapped <= last - 30 - retained, "{lapped}");
    eprintln!(
        "redis_nodes: slowest append while Redis was down or restarting: {slowest:?} \
         (information, not asserted)"
    );
    let durable = a.app.store().stats().durable.expect("durable stats");
    assert_eq!(
        (durable.holes, durable.lost_events),
        (1, lapped),
        "one hole, exactly the positions the ring lapped"
    );
    // The log: 1..=30, one hole over 31..=30+lapped, then every position
    // the ring still held, with its text.
    let log = RedisLog::open(&redis.url()).expect("open the log");
    let mut records = Vec::new();
    let mut after = 0;
    while after < last {
        let batch = log.load_after(&k, after, 1000).expect("load");
        after = batch
            .last()
            .expect("records up to the tail")
            .last_position();
        records.extend(batch);
    }
    let mut next = 1;
    for record in &records {
        assert_eq!(record.position, next, "contiguous: {record:?}");
        match &record.body {
            RecordBody::Event(stored) => {
                assert!(!(31..=30 + lapped).contains(&next), "{next} was lapped");
                let payload = Codec::<TurnEvent>::decode(&Postcard, &stored.payload).unwrap();
                assert_eq!(payload, TurnEvent::Token(token(next)));
            }
            RecordBody::Hole { count, .. } => {
                assert_eq!((record.position, *count), (31, lapped), "the one hole");
            }
        }
        next = record.last_position() + 1;
    }
    assert_eq!(next, last + 1);

    // B's stream, blocked at 30 through the outage, reports the hole as
    // the one gap frame (with the text the log has up to its cursor) ...
    let gap = rt.block_on(on_b.event()).expect("the gap frame");
    assert_eq!(gap.event.as_deref(), Some("gap"), "{gap:?}");
    let data = gap.json();
    assert_eq!(data["reason"], "lost");
    assert_eq!(data["missed"].as_u64(), Some(lapped));
    let latest = position_of(gap.id.as_deref().expect("the gap's id"));
    assert!(latest >= 30 + lapped && latest <= last, "latest {latest}");
    let kept = |upto: u64| (1..=30).chain(31 + lapped..=upto);
    assert_eq!(data["snapshot"]["text"], expected(kept(latest)));
    assert!(
        rt.block_on(on_b.event()).is_none(),
        "a gap ends the response"
    );
    // ... and the client resumes on B from the gap's cursor, live as A
    // appends again.
    let mut on_b = rt.block_on(open(b.address, &path, gap.id.as_deref()));
    let mut resumed = Client::default();
    let more = 240;
    for position in last + 1..=more {
        a.append(&k, position);
    }
    resumed.read_tokens(&rt, &mut on_b, more - latest);
    assert_eq!(resumed.positions, (latest + 1..=more).collect::<Vec<_>>());
    let mut whole = data["snapshot"]["text"].as_str().unwrap().to_string();
    whole.push_str(&resumed.text);
    assert_eq!(whole, expected(kept(more)), "nothing the ring held is lost");
    drop(on_b);
    drop(b);
    drop(a);
}

#[test]
fn redis_frozen_for_two_seconds_blocks_no_append() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let rt = runtime();
    let a = RuntimeNode::start(&rt, &redis.url(), Config::default().with_capacity(4096));
    let b = HostNode::start(&redis.url());
    let k = key("frozen");
    let path = events_path("frozen");
    for position in 1..=10 {
        a.append(&k, position);
    }
    a.wait_durable(&k, 10);
    let mut client = Client::default();
    let mut on_b = rt.block_on(open(b.address, &path, None));
    client.read_tokens(&rt, &mut on_b, 10);

    redis.freeze();
    let frozen = Instant::now();
    let mut times = Vec::new();
    let mut position = 10;
    while frozen.elapsed() < Duration::from_secs(2) {
        position += 1;
        times.push(a.append(&k, position).1);
        std::thread::sleep(Duration::from_millis(2));
    }
    redis.thaw();
    let last = position;
    a.wait_durable(&k, last);
    times.sort();
    let p999 = times[(times.len() * 999 / 1000).min(times.len() - 1)];
    eprintln!(
        "redis_nodes: {} appends while Redis was frozen: p99.9 {p999:?}, max {:?} \
         (information, not asserted)",
        times.len(),
        times.last().unwrap()
    );
    let durable = a.app.store().stats().durable.expect("durable stats");
    assert_eq!((durable.holes, durable.lost_events), (0, 0));
    client.read_tokens(&rt, &mut on_b, last - 10);
    assert_eq!(client.positions, (1..=last).collect::<Vec<_>>());
    assert_eq!(client.text, expected(1..=last));
    drop(on_b);
    drop(b);
    drop(a);
}
