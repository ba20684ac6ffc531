//! Several nodes over one shared log, in one process: stores over one
//! `MemoryLog::shared()` play the nodes (a runtime node that writes a
//! session, host nodes that only serve it), as they would over one Redis.
//! Contract section 10 and issue 10: a host node serves any cursor of a
//! session it never wrote, history from the log and live events as the
//! writer ships them, with the same gap table.

use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;
use livereplay::durable::{DurableLog, MemoryLog};
use livereplay::{Cursor, Error, GapReason, ReplayStore, Revision, SessionKey, TryNextError, Utf8};

const WAIT: Duration = Duration::from_secs(5);

fn node(log: &Arc<MemoryLog>) -> ReplayStore<String> {
    ReplayStore::builder()
        .durable(log.clone(), Utf8)
        .build()
        .unwrap()
}

fn key() -> SessionKey {
    SessionKey::new("acme", "chat").unwrap()
}

fn text(position: u64) -> String {
    format!("t{position}")
}

#[test]
fn a_host_node_serves_history_then_live_from_the_shared_log() {
    let log = Arc::new(MemoryLog::shared());
    let (runtime, host) = (node(&log), node(&log));
    let k = key();
    for position in 1..=20 {
        runtime.append(&k, Revision(1), text(position)).unwrap();
    }
    assert_eq!(runtime.wait_durable(&k, 20, WAIT), Ok(20));
    // The host never wrote the session: history comes from the log...
    let mut events = host.catch_up(&Cursor::start(k.clone())).unwrap();
    for position in 1..=20 {
        let event = events.next_timeout(WAIT).unwrap();
        assert_eq!(
            (event.position(), event.payload()),
            (position, &text(position))
        );
    }
    assert_eq!(events.try_next().unwrap_err(), TryNextError::Empty);
    assert!(!host.is_resident(&k), "a reader never restores the session");
    // ... and live events as the runtime ships them (the tailer wakes it).
    let writer = std::thread::spawn(move || {
        for position in 21..=40 {
            runtime.append(&k, Revision(1), text(position)).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        runtime
    });
    for position in 21..=40 {
        let event = events.next_timeout(WAIT).unwrap();
        assert_eq!(event.position(), position, "exactly once, in order");
    }
    drop(writer.join().unwrap());
    assert!(!events.is_live(), "no ring on the host: it reads the log");
}

/// A waker that records that it was woken.
struct Flag(std::sync::atomic::AtomicBool);

impl std::task::Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn a_host_nodes_stream_is_woken_by_the_writers_commits() {
    let log = Arc::new(MemoryLog::shared());
    let (runtime, host) = (node(&log), node(&log));
    let k = key();
    runtime.append(&k, Revision(1), text(1)).unwrap();
    assert_eq!(runtime.wait_durable(&k, 1, WAIT), Ok(1));
    let mut stream = host.catch_up(&Cursor::start(k.clone())).unwrap();
    let flag = Arc::new(Flag(std::sync::atomic::AtomicBool::new(false)));
    let waker = std::task::Waker::from(flag.clone());
    let mut cx = std::task::Context::from_waker(&waker);
    let mut poll = || std::pin::Pin::new(&mut stream).poll_next(&mut cx);
    match poll() {
        std::task::Poll::Ready(Some(Ok(event))) => assert_eq!(event.position(), 1),
        other => panic!("expected event 1, got {other:?}"),
    }
    assert!(poll().is_pending(), "nothing after 1 yet");
    flag.0.store(false, std::sync::atomic::Ordering::SeqCst);
    // The runtime, on its node, writes on; only the shared log connects them.
    runtime.append(&k, Revision(1), text(2)).unwrap();
    assert_eq!(runtime.wait_durable(&k, 2, WAIT), Ok(2));
    let deadline = std::time::Instant::now() + WAIT;
    while !flag.0.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "the host's stream was never woken by the writer's commit"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    match poll() {
        std::task::Poll::Ready(Some(Ok(event))) => assert_eq!(event.position(), 2),
        other => panic!("expected event 2, got {other:?}"),
    }
}

#[test]
fn a_cursor_ahead_of_the_shipped_tail_waits_for_the_live_writer() {
    let log = Arc::new(MemoryLog::shared());
    let (runtime, host) = (node(&log), node(&log));
    let k = key();
    let mut cursors = Vec::new();
    for position in 1..=5 {
        cursors.push(
            runtime
                .append(&k, Revision(1), text(position))
                .unwrap()
                .cursor(),
        );
    }
    assert_eq!(runtime.wait_durable(&k, 5, WAIT), Ok(5));
    // A client saw position 7 from the runtime before it was shipped.
    let ahead = Cursor::new(k.clone(), cursors[0].incarnation(), Revision(1), 7);
    let mut events = host
        .catch_up(&ahead)
        .expect("not lost: the writer is alive");
    assert_eq!(events.try_next().unwrap_err(), TryNextError::Empty);
    for position in 6..=9 {
        runtime.append(&k, Revision(1), text(position)).unwrap();
    }
    for position in 8..=9 {
        assert_eq!(events.next_timeout(WAIT).unwrap().position(), position);
    }
}

#[test]
fn a_cursor_of_a_writer_that_died_gets_lost_with_the_count() {
    let log = Arc::new(MemoryLog::shared());
    let host = node(&log);
    let k = key();
    let dead_life = {
        let runtime = node(&log);
        let first = runtime.append(&k, Revision(1), text(1)).unwrap();
        for position in 2..=5 {
            runtime.append(&k, Revision(1), text(position)).unwrap();
        }
        assert_eq!(runtime.wait_durable(&k, 5, WAIT), Ok(5));
        first.incarnation()
        // (dropped: it shipped everything; a client had seen 7 anyway)
    };
    let seen = Cursor::new(k.clone(), Some(dead_life), Revision(1), 7);
    // A host waits for it while that life is the newest ...
    let mut waiting = host.catch_up(&seen).unwrap();
    assert_eq!(waiting.try_next().unwrap_err(), TryNextError::Empty);
    // ... until a restarted runtime records a new life from position 6.
    let restarted = node(&log);
    for position in 6..=10 {
        restarted.append(&k, Revision(1), text(position)).unwrap();
    }
    assert_eq!(restarted.wait_durable(&k, 10, WAIT), Ok(10));
    match waiting.next_timeout(WAIT) {
        Err(livereplay::NextTimeoutError::Gap(gap)) => {
            assert_eq!((gap.reason, gap.missed), (GapReason::Lost, Some(2)));
        }
        other => panic!("expected the divergence as a Lost gap, got {other:?}"),
    }
    // A new catch-up with the same cursor is told at once.
    match host.catch_up(&seen) {
        Err(Error::Gap(gap)) => assert_eq!((gap.reason, gap.missed), (GapReason::Lost, Some(2))),
        other => panic!("expected a Lost gap, got {other:?}"),
    }
    assert!(log.meta(&k).unwrap().unwrap().lives.len() == 2);
}
