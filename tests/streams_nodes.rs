//! Two `livereplay serve --redis` processes over one real `redis-server`
//! behave as one Durable Streams server (issue 22, several nodes): writers
//! alternating nodes keep their producer and `Stream-Seq` state, racing
//! writers on both nodes get exactly one winner, a close or a delete on one
//! node holds on the other, a node killed while it holds a stream's lease
//! blocks the stream no longer than the lease, and a reader on one node
//! sees every message written on the other exactly once, in order.
//!
//! The test starts the Redis server and both nodes itself (the binary, on
//! free loopback ports, `--port 0`), and kills them by pid on drop, also
//! when a test panics. Every request has a read timeout, every wait a bound.

#[path = "support/ds_server.rs"]
mod ds_server;
#[path = "support/redis_server.rs"]
mod redis_server;

use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ds_server::{Reply, Served, REQUEST_TIMEOUT};
use redis_server::RedisServer;
use serde_json::{json, Value};

/// The lease the nodes use: long enough for a durable wait (1 s here),
/// short enough that a test waits it out.
const LEASE_MS: &str = "2500";
const DURABLE_TIMEOUT_MS: &str = "1000";

/// One `livereplay serve --redis` process.
struct Node {
    served: Served,
}

impl Node {
    fn start(redis: &RedisServer) -> Self {
        let url = redis.url();
        let served = Served::start(
            &[
                "--long-poll-timeout-ms",
                "500",
                "--redis",
                &url,
                "--namespace",
                "nodes",
                "--lease-ms",
                LEASE_MS,
                "--durable-timeout-ms",
                DURABLE_TIMEOUT_MS,
            ],
            None,
        );
        Self { served }
    }

    /// SIGKILL, by pid.
    fn kill(&mut self) {
        self.served.kill();
    }

    /// A request to the stream at `path` (with its query).
    fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        self.served
            .send(method, &format!("/v1/stream/{path}"), headers, body)
    }

    fn create(&self, path: &str) -> u16 {
        self.send("PUT", path, &[JSON], b"").status.as_u16()
    }

    /// Appends `body` as producer `p` (epoch 0) with `seq`.
    fn produce(&self, path: &str, seq: u64, body: &Value) -> Reply {
        let seq = seq.to_string();
        self.send(
            "POST",
            path,
            &[
                JSON,
                ("producer-id", "p"),
                ("producer-epoch", "0"),
                ("producer-seq", &seq),
            ],
            body.to_string().as_bytes(),
        )
    }

    /// Every message of the stream, by catch-up reads to its tail.
    fn read_all(&self, path: &str) -> Vec<Value> {
        let mut offset = "-1".to_string();
        let mut messages = Vec::new();
        for _ in 0..1000 {
            let reply = self.send("GET", &format!("{path}?offset={offset}"), &[], b"");
            assert_eq!(reply.status, 200, "read {path}: {}", reply.text());
            messages.extend(reply.messages());
            offset = reply.next_offset();
            if reply.header("stream-up-to-date").is_some() {
                return messages;
            }
        }
        panic!("{path} never reached its tail");
    }
}

const JSON: (&str, &str) = ("content-type", "application/json");

fn cluster() -> Option<(RedisServer, Node, Node)> {
    let redis = RedisServer::start()?;
    let a = Node::start(&redis);
    let b = Node::start(&redis);
    Some((redis, a, b))
}

#[test]
fn writers_alternating_nodes_keep_producer_and_stream_seq_state() {
    let Some((_redis, a, b)) = cluster() else {
        return;
    };
    assert_eq!(a.create("alternating"), 201);
    assert_eq!(b.create("alternating"), 200, "B sees the stream A created");
    for seq in 0..20u64 {
        let node = if seq % 2 == 0 { &a } else { &b };
        let reply = node.produce("alternating", seq, &json!({ "n": seq }));
        assert_eq!(reply.status, 200, "seq {seq}: {}", reply.text());
        // The retry, on the other node: a duplicate, not new data.
        let other = if seq % 2 == 0 { &b } else { &a };
        let retry = other.produce("alternating", seq, &json!({ "n": seq }));
        assert_eq!(retry.status, 204, "retry of seq {seq} on the other node");
    }
    // A gap in the producer's sequence is refused on either node.
    assert_eq!(a.produce("alternating", 22, &json!("gap")).status, 409);
    assert_eq!(b.produce("alternating", 22, &json!("gap")).status, 409);
    // Stream-Seq is checked against the other node's last one.
    let with_seq = |node: &Node, seq: &str| {
        node.send(
            "POST",
            "alternating",
            &[JSON, ("stream-seq", seq)],
            br#""seq""#,
        )
        .status
    };
    assert_eq!(with_seq(&a, "005"), 204);
    assert_eq!(
        with_seq(&b, "004"),
        409,
        "B accepted a Stream-Seq below A's"
    );
    assert_eq!(with_seq(&b, "006"), 204);
    assert_eq!(with_seq(&a, "006"), 409, "A accepted B's Stream-Seq again");

    let mut expected: Vec<Value> = (0..20u64).map(|n| json!({ "n": n })).collect();
    expected.extend([json!("seq"), json!("seq")]);
    assert_eq!(a.read_all("alternating"), expected);
    assert_eq!(b.read_all("alternating"), expected);
}

#[test]
fn racing_writers_on_both_nodes_have_exactly_one_winner() {
    let Some((_redis, a, b)) = cluster() else {
        return;
    };
    assert_eq!(a.create("race"), 201);
    let mut winners = Vec::new();
    for round in 0..15u64 {
        // The same Producer-Seq with different data on both nodes at once.
        let (first, second) = std::thread::scope(|scope| {
            let on_a = scope.spawn(|| a.produce("race", round, &json!(format!("a{round}"))));
            let on_b = scope.spawn(|| b.produce("race", round, &json!(format!("b{round}"))));
            (on_a.join().unwrap(), on_b.join().unwrap())
        });
        let statuses = [first.status, second.status];
        assert!(
            statuses == [200, 204] || statuses == [204, 200],
            "round {round}: one write wins, the other is its duplicate: {statuses:?}"
        );
        winners.push(json!(format!(
            "{}{round}",
            if first.status == 200 { "a" } else { "b" }
        )));
        // The same Stream-Seq on both nodes at once: one wins, one is 409.
        let seq = format!("{round:03}");
        let seq = &seq;
        let post = |node: &Node, tag: &str| {
            node.send(
                "POST",
                "race",
                &[JSON, ("stream-seq", seq)],
                json!(format!("{tag}-seq{round}")).to_string().as_bytes(),
            )
        };
        let (first, second) = std::thread::scope(|scope| {
            let on_a = scope.spawn(|| post(&a, "a"));
            let on_b = scope.spawn(|| post(&b, "b"));
            (on_a.join().unwrap(), on_b.join().unwrap())
        });
        let statuses = [first.status, second.status];
        assert!(
            statuses == [204, 409] || statuses == [409, 204],
            "round {round}: one Stream-Seq wins, the other is refused: {statuses:?}"
        );
        winners.push(json!(format!(
            "{}-seq{round}",
            if first.status == 204 { "a" } else { "b" }
        )));
    }
    assert_eq!(a.read_all("race"), winners);
    assert_eq!(b.read_all("race"), winners);
}

#[test]
fn a_close_or_a_delete_on_one_node_holds_on_the_other() {
    let Some((_redis, a, b)) = cluster() else {
        return;
    };
    assert_eq!(a.create("closing"), 201);
    assert_eq!(b.send("POST", "closing", &[JSON], b"1").status, 204);
    let closed = a.send("POST", "closing", &[JSON, ("stream-closed", "true")], b"2");
    assert_eq!(closed.status, 204);
    let refused = b.send("POST", "closing", &[JSON], b"3");
    assert_eq!(refused.status, 409, "B appended after A closed");
    assert_eq!(refused.header("stream-closed"), Some("true"));
    assert_eq!(b.read_all("closing"), vec![json!(1), json!(2)]);
    let head = b.send("HEAD", "closing", &[], b"");
    assert_eq!(head.header("stream-closed"), Some("true"), "B's HEAD");

    // Delete on A, create again on B: none of the old data, old offsets gone.
    assert_eq!(a.create("reborn"), 201);
    assert_eq!(a.send("POST", "reborn", &[JSON], b"\"old\"").status, 204);
    let old = b.send("GET", "reborn?offset=-1", &[], b"");
    assert_eq!(old.messages(), vec![json!("old")]);
    let old_offset = old.next_offset();
    assert_eq!(a.send("DELETE", "reborn", &[], b"").status, 204);
    assert_eq!(b.send("GET", "reborn?offset=-1", &[], b"").status, 404);
    assert_eq!(b.create("reborn"), 201, "B creates the stream again");
    assert_eq!(a.send("POST", "reborn", &[JSON], b"\"new\"").status, 204);
    assert_eq!(a.read_all("reborn"), vec![json!("new")]);
    assert_eq!(b.read_all("reborn"), vec![json!("new")]);
    let stale = a.send("GET", &format!("reborn?offset={old_offset}"), &[], b"");
    assert_eq!(stale.status, 410, "an offset of the deleted life");
}

#[test]
fn a_reader_on_one_node_sees_every_message_of_the_other_once_in_order() {
    let Some((_redis, a, b)) = cluster() else {
        return;
    };
    assert_eq!(a.create("follow"), 201);
    const COUNT: u64 = 150;
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            for seq in 0..COUNT {
                let reply = a.produce("follow", seq, &json!(seq));
                assert_eq!(reply.status, 200, "append {seq}: {}", reply.text());
            }
            assert_eq!(
                a.send("POST", "follow", &[("stream-closed", "true")], b"")
                    .status,
                204
            );
        });
        // Long-polls on B, from the start, until the end.
        let mut offset = "-1".to_string();
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            assert!(
                Instant::now() < deadline,
                "the reader on B stalled at {offset}"
            );
            let reply = b.send(
                "GET",
                &format!("follow?offset={offset}&live=long-poll"),
                &[],
                b"",
            );
            match reply.status.as_u16() {
                200 => {
                    seen.extend(reply.messages());
                    offset = reply.next_offset();
                }
                204 => offset = reply.next_offset(),
                other => panic!("long-poll on B: {other} {}", reply.text()),
            }
            if reply.header("stream-closed").is_some() {
                break;
            }
        }
        writer.join().unwrap();
        let expected: Vec<Value> = (0..COUNT).map(|n| json!(n)).collect();
        assert_eq!(seen, expected, "B's reader saw A's messages once, in order");
    });
}

#[test]
fn a_node_killed_holding_a_lease_blocks_the_stream_no_longer_than_the_lease() {
    let Some((redis, mut a, b)) = cluster() else {
        return;
    };
    assert_eq!(a.create("kill"), 201);
    let lease_key = "nodes:ds:lease:{:kill}";
    let client = redis::Client::open(redis.url()).unwrap();
    let mut watcher = client.get_connection().unwrap();
    // A big append on A, and a kill as soon as its lease is seen in Redis.
    let big_message = json!("x".repeat(4 << 20));
    let big = big_message.to_string();
    let (sender, writing) = mpsc::channel();
    let client = a.served.client();
    let payload = big.clone();
    std::thread::spawn(move || {
        // The connection dies with A: an error here is the expected end.
        let sent = client
            .try_send("POST", "/v1/stream/kill", &[JSON], payload.as_bytes())
            .map(|reply| reply.status);
        let _ = sender.send(sent.ok());
    });
    let held = when_leased(&mut watcher, lease_key, &writing, || a.kill());
    assert!(held, "A was not killed while it held the stream's lease");
    // B may wait out the dead node's lease (a 503 says retry), no longer.
    let status = write_past_lease(&b, "kill", b"\"after\"");
    assert_eq!(status, 204, "the stream stayed blocked after A's lease");
    // A's append is there whole or not at all, and B's once, last.
    let messages = b.read_all("kill");
    assert_eq!(messages.last(), Some(&json!("after")));
    assert!(
        messages.len() == 1 || (messages.len() == 2 && messages[0] == big_message),
        "{} messages",
        messages.len()
    );
}

/// Runs `act` as soon as `lease_key` is seen in Redis (within 20 s), and
/// says whether the lease was still there after it. Panics if the writer
/// behind `answered` answers before its lease was ever seen.
fn when_leased<R: std::fmt::Debug>(
    watcher: &mut redis::Connection,
    lease_key: &str,
    answered: &mpsc::Receiver<R>,
    act: impl FnOnce(),
) -> bool {
    let exists = |watcher: &mut redis::Connection| -> bool {
        redis::cmd("EXISTS").arg(lease_key).query(watcher).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if exists(watcher) {
            act();
            return exists(watcher);
        }
        if let Ok(answer) = answered.try_recv() {
            panic!("A answered {answer:?} before its lease was seen");
        }
    }
    false
}

/// Appends `body` on `node`, retrying while the answer is `503` (another
/// node's lease), for at most four leases; returns the last status.
fn write_past_lease(node: &Node, path: &str, body: &[u8]) -> u16 {
    let started = Instant::now();
    let bound = Duration::from_millis(LEASE_MS.parse().unwrap()) * 4;
    loop {
        let status = node.send("POST", path, &[JSON], body).status.as_u16();
        if status != 503 || started.elapsed() > bound {
            return status;
        }
    }
}

/// Sends `signal` (`STOP`, `CONT`) to `pid` with the `kill` command.
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// A node frozen (SIGSTOP) while it holds a stream's lease, past the
/// lease, while the other node writes: when it thaws, its write is either
/// in the log once and acknowledged (before the other node's write, if it
/// landed before the freeze; after it, if the node froze before appending
/// and appended at the log's tail on thawing), or absent and answered 503;
/// and its next write lands after both.
#[test]
fn a_node_frozen_past_its_lease_never_acknowledges_a_write_it_lost() {
    let Some((redis, a, b)) = cluster() else {
        return;
    };
    assert_eq!(a.create("frozen"), 201);
    let lease_key = "nodes:ds:lease:{:frozen}";
    let client = redis::Client::open(redis.url()).unwrap();
    let mut watcher = client.get_connection().unwrap();
    let body = json!("y".repeat(4 << 20)).to_string();
    let (sender, answered) = mpsc::channel();
    let client = a.served.client();
    std::thread::spawn(move || {
        let status = client
            .send("POST", "/v1/stream/frozen", &[JSON], body.as_bytes())
            .status;
        let _ = sender.send(status);
    });
    let pid = a.served.pid();
    let frozen = when_leased(&mut watcher, lease_key, &answered, || signal(pid, "STOP"));
    if !frozen {
        signal(pid, "CONT");
    }
    assert!(frozen, "A was not frozen while it held the stream's lease");
    // B writes once A's lease has expired (503s before that say retry).
    let status = write_past_lease(&b, "frozen", b"\"b\"");
    signal(pid, "CONT");
    assert_eq!(status, 204, "B's write after A's lease expired");
    let a_status = answered
        .recv_timeout(REQUEST_TIMEOUT)
        .expect("A answered after it thawed");
    assert!(a_status == 204 || a_status == 503, "A answered {a_status}");
    // A writes again: it must catch up with B's write, not trust its fold.
    let again = write_past_lease(&a, "frozen", b"\"a-again\"");
    assert_eq!(again, 204, "A's write after it thawed");
    // Messages by a short name (the big one is 4 MiB: not for a panic message).
    let short = |messages: Vec<Value>| -> Vec<String> {
        messages
            .iter()
            .map(|message| match message {
                Value::String(text) if text.len() > 16 => format!("big({})", text.len()),
                other => other.to_string(),
            })
            .collect()
    };
    let on_b = short(b.read_all("frozen"));
    let big = format!("big({})", 4 << 20);
    let (b_first, a_first) = (
        vec!["\"b\"".to_string(), big.clone(), "\"a-again\"".to_string()],
        vec![big.clone(), "\"b\"".to_string(), "\"a-again\"".to_string()],
    );
    let without = vec!["\"b\"".to_string(), "\"a-again\"".to_string()];
    match a_status.as_u16() {
        // Acknowledged: in the log once, before B's write (it landed
        // before A froze) or after it (A froze before appending, and
        // appended at the log's tail when it thawed).
        204 => assert!(
            on_b == b_first || on_b == a_first,
            "A's 204, B reads {on_b:?}"
        ),
        // Refused: not in the log.
        _ => assert_eq!(on_b, without, "A's 503"),
    }
    assert_eq!(
        short(a.read_all("frozen")),
        on_b,
        "A and B read the same log"
    );
}
