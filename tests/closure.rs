//! A session's closure (module `closure`): readers get every event it
//! accepted and then the end, appends after it are refused, and with a
//! durable log the end is durable — a restored store, another node's
//! catch-up and a revived tombstone all find the session closed; and a
//! turn whose store went away (its process killed) is closed
//! `Interrupted` by the next store (the last section).
//!
//! Bounded: threads stop at their first refusal, waits have deadlines.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use livereplay::durable::{DurableLog, LogError, LogRecord, MemoryLog, SessionMeta, SessionWrite};
use livereplay::{
    CloseReason, Closure, Config, Cursor, DurableOptions, Error, NextTimeoutError, Refusal,
    ReplayStore, Revision, SessionKey, TryNextError, Utf8,
};

const WAIT: Duration = Duration::from_secs(10);

fn key(session: &str) -> SessionKey {
    SessionKey::new("tenant", session).unwrap()
}

fn durable_store(log: Arc<dyn DurableLog>, thread: bool) -> ReplayStore<String> {
    ReplayStore::builder()
        .config(Config::default().with_capacity(64).with_auto_sweep(false))
        .durable(log, Utf8)
        .durable_options(DurableOptions::default().with_persister_thread(thread))
        .build()
        .unwrap()
}

/// Runs `future` to its end on a current-thread runtime, at most `WAIT`.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(async { tokio::time::timeout(WAIT, future).await.expect("in time") })
}

fn drain(store: &ReplayStore<String>) {
    while store.persist_round().is_some() {}
}

fn refused_closed(result: Result<impl std::fmt::Debug, Error>) -> Closure {
    match result {
        Err(Error::Refused(Refusal::SessionClosed { closure })) => closure,
        other => panic!("expected a SessionClosed refusal, got {other:?}"),
    }
}

/// Reads a catch-up to its end: the payloads, and the closure it ended with.
fn read_to_closure(
    store: &ReplayStore<String>,
    k: &SessionKey,
) -> (Vec<String>, Result<Closure, NextTimeoutError>) {
    let mut catch_up = store.catch_up(&Cursor::start(k.clone())).unwrap();
    let mut payloads = Vec::new();
    loop {
        match catch_up.next_timeout(WAIT) {
            Ok(event) => payloads.push(event.payload().clone()),
            Err(NextTimeoutError::Closed(closure)) => {
                assert_eq!(catch_up.closure(), Some(closure));
                assert!(catch_up.is_ended());
                return (payloads, Ok(closure));
            }
            Err(other) => return (payloads, Err(other)),
        }
    }
}

#[test]
fn readers_get_every_event_then_the_closure_and_nothing_is_accepted_after_it() {
    let store = ReplayStore::<String>::default();
    let k = key("turn");
    let mut live = store
        .subscribe_after_cursor(&Cursor::start(k.clone()))
        .unwrap();
    let handle = store.session(&k).unwrap();
    let mut writer = handle.writer();
    store.append(&k, Revision(1), "a".into()).unwrap();
    writer.append(Revision(1), "b".into()).unwrap();
    handle
        .append_batch(Revision(1), ["c".to_string(), "d".to_string()])
        .unwrap();

    let closure = handle.close(CloseReason::Error).unwrap();
    assert_eq!(
        closure,
        Closure {
            reason: CloseReason::Error,
            last: 4
        }
    );
    // The first close wins.
    assert_eq!(store.close_session(&k, CloseReason::Done).unwrap(), closure);
    assert_eq!(store.closure(&k), Some(closure));
    assert_eq!(handle.closure(), Some(closure));

    // Every way to append is refused, naming the closure.
    assert_eq!(
        refused_closed(store.append(&k, Revision(1), "x".into())),
        closure
    );
    assert_eq!(
        refused_closed(handle.append(Revision(1), "x".into())),
        closure
    );
    assert_eq!(
        refused_closed(handle.append_batch(Revision(1), ["x".to_string()])),
        closure
    );
    assert_eq!(
        refused_closed(writer.append(Revision(1), "x".into())),
        closure
    );
    assert_eq!(store.latest_position(&k), Some(4));
    let stats = store.stats();
    assert_eq!(
        (stats.closed_sessions, stats.appends_refused_closed),
        (1, 4)
    );
    assert_eq!(stats.appends, 4, "refused appends are not appends");

    // The live reader: the four, then the closure once, then Ended.
    let got: Vec<String> = (0..4)
        .map(|_| live.try_next().unwrap().payload().clone())
        .collect();
    assert_eq!(got, ["a", "b", "c", "d"]);
    assert_eq!(live.try_next().unwrap_err(), TryNextError::Closed(closure));
    assert_eq!(live.closure(), Some(closure));
    assert_eq!(live.try_next().unwrap_err(), TryNextError::Ended);

    // A reader from the middle, and one at the tail, end the same way.
    let middle = store
        .replay_after_cursor(&Cursor::start(k.clone()))
        .unwrap()[1]
        .cursor();
    let mut late = store.subscribe_after_cursor(&middle).unwrap();
    assert_eq!(late.next_timeout(WAIT).unwrap().position(), 3);
    assert_eq!(late.next_timeout(WAIT).unwrap().position(), 4);
    assert_eq!(
        late.next_timeout(WAIT).unwrap_err(),
        NextTimeoutError::Closed(closure)
    );
    let at_tail = store.current_cursor(&k);
    let mut tail = store.subscribe_after_cursor(&at_tail).unwrap();
    assert_eq!(tail.try_next().unwrap_err(), TryNextError::Closed(closure));

    // The removal that follows is a removal: a new reader of the key
    // finds an open session (no log keeps the closure).
    assert!(store.remove_session(&k));
    store.append(&k, Revision(1), "next".into()).unwrap();
    assert_eq!(store.closure(&k), None);
}

#[test]
fn a_subscription_stream_ends_without_a_gap_and_says_why() {
    let store = Arc::new(ReplayStore::<String>::default());
    let k = key("streamed");
    let mut stream = store
        .subscribe_after_cursor(&Cursor::start(k.clone()))
        .unwrap();
    let writer = {
        let (store, k) = (Arc::clone(&store), k.clone());
        std::thread::spawn(move || {
            for i in 0..100 {
                store.append(&k, Revision(1), i.to_string()).unwrap();
            }
            store.close_session(&k, CloseReason::Cancelled).unwrap()
        })
    };
    let received = block_on(async {
        let mut received = Vec::new();
        while let Some(item) = stream.next().await {
            received.push(item.expect("no gap").position());
        }
        received
    });
    let closure = writer.join().unwrap();
    assert_eq!(received, (1..=100).collect::<Vec<_>>());
    assert_eq!(stream.closure(), Some(closure));
    assert_eq!(closure.reason, CloseReason::Cancelled);
}

/// Two writers append until refused while a third thread closes: every
/// append that returned `Ok` is at or before the closure and is read once,
/// in order; every refusal names the closure; the reader ends with it.
#[test]
fn a_close_racing_writers_and_a_reader_loses_nothing() {
    for round in 0..20 {
        let store =
            Arc::new(ReplayStore::<u64>::new(Config::default().with_capacity(4096)).unwrap());
        let k = key("race");
        let mut reader = store
            .subscribe_after_cursor(&Cursor::start(k.clone()))
            .unwrap();
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let (store, k) = (Arc::clone(&store), k.clone());
                std::thread::spawn(move || {
                    let mut accepted = Vec::new();
                    for i in 0..2000u64 {
                        match store.append(&k, Revision(1), w * 10_000 + i) {
                            Ok(event) => accepted.push(event.position()),
                            Err(Error::Refused(Refusal::SessionClosed { closure })) => {
                                return (accepted, Some(closure))
                            }
                            Err(other) => panic!("writer {w}: {other}"),
                        }
                    }
                    (accepted, None)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_micros(50 * round));
        let closure = store.close_session(&k, CloseReason::Done).unwrap();
        let mut read = Vec::new();
        let ended = loop {
            match reader.next_timeout(WAIT) {
                Ok(event) => read.push(event.position()),
                Err(NextTimeoutError::Closed(closure)) => break closure,
                Err(other) => panic!("round {round}: reader got {other}"),
            }
        };
        assert_eq!(ended, closure);
        assert_eq!(
            read,
            (1..=closure.last).collect::<Vec<_>>(),
            "round {round}"
        );
        for writer in writers {
            let (accepted, refusal) = writer.join().unwrap();
            assert!(accepted.iter().all(|&p| p <= closure.last), "round {round}");
            if let Some(refusal) = refusal {
                assert_eq!(refusal, closure);
            }
        }
    }
}

#[test]
fn the_closure_is_durable_and_a_restored_store_finds_it() {
    let log: Arc<dyn DurableLog> = Arc::new(MemoryLog::new());
    let k = key("durable");
    {
        let store = durable_store(Arc::clone(&log), true);
        for p in ["a", "b", "c"] {
            store.append(&k, Revision(1), p.into()).unwrap();
        }
        store.close_session(&k, CloseReason::Cancelled).unwrap();
        store.wait_durable(&k, 3, WAIT).unwrap();
        // Dropping the store drains what is left, the closure included.
    }
    let closure = Closure {
        reason: CloseReason::Cancelled,
        last: 3,
    };
    let meta = log.meta(&k).unwrap().unwrap();
    assert_eq!((meta.durable_tail, meta.closure), (3, Some(closure)));

    let restored = durable_store(Arc::clone(&log), true);
    let (payloads, end) = read_to_closure(&restored, &k);
    assert_eq!(payloads, ["a", "b", "c"]);
    assert_eq!(end, Ok(closure));
    assert_eq!(
        refused_closed(restored.append(&k, Revision(1), "d".into())),
        closure
    );
    assert_eq!(
        restored.close_session(&k, CloseReason::Done).unwrap(),
        closure
    );
    assert_eq!(restored.closure(&k), Some(closure));
}

#[test]
fn another_nodes_catch_up_ends_with_the_closure_from_the_log() {
    let log: Arc<dyn DurableLog> = Arc::new(MemoryLog::shared());
    let k = key("shared");
    let writer = durable_store(Arc::clone(&log), false);
    let host = durable_store(Arc::clone(&log), false);
    let mut follower = host.catch_up(&Cursor::start(k.clone())).unwrap();
    for p in ["a", "b"] {
        writer.append(&k, Revision(1), p.into()).unwrap();
    }
    drain(&writer);
    assert_eq!(follower.try_next().unwrap().payload(), "a");
    assert_eq!(follower.try_next().unwrap().payload(), "b");
    assert_eq!(follower.try_next().unwrap_err(), TryNextError::Empty);
    let closure = writer.close_session(&k, CloseReason::Interrupted).unwrap();
    // Not in the log yet: the follower cannot know.
    assert_eq!(follower.try_next().unwrap_err(), TryNextError::Empty);
    drain(&writer);
    assert_eq!(
        follower.try_next().unwrap_err(),
        TryNextError::Closed(closure)
    );
    assert!(
        !host.is_resident(&k),
        "a reader does not restore the session"
    );
    // As a stream too.
    let stream = host.catch_up(&Cursor::start(k.clone())).unwrap();
    let items: Vec<_> = block_on(stream.collect::<Vec<_>>());
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(Result::is_ok));
}

/// Removal reopens a closed key, with a log too: the persister writes the
/// closure, then a life that reopens the key (or a re-creation's own life
/// does), so neither a re-creation nor a restart finds the key closed.
/// A restart before the removal finds it closed.
#[test]
fn removal_reopens_a_closed_key_with_a_log_too() {
    let log: Arc<dyn DurableLog> = Arc::new(MemoryLog::new());
    let store = durable_store(Arc::clone(&log), false);
    for (session, recreate_first) in [("recreated", true), ("reopened-by-the-log", false)] {
        let k = key(session);
        store.append(&k, Revision(1), "a".into()).unwrap();
        let closure = store.close_session(&k, CloseReason::Done).unwrap();
        assert!(store.remove_session(&k));
        if !recreate_first {
            drain(&store);
            let meta = log.meta(&k).unwrap().unwrap();
            assert_eq!(meta.closure, None, "{session}: reopened in the log");
            assert_eq!(meta.lives.len(), 2, "{session}: by a life of no events");
        }
        // Open again: the next append continues after the closed life.
        let next = store.append(&k, Revision(1), "b".into()).unwrap();
        assert_eq!(next.position(), closure.last + 1, "{session}");
        drain(&store);
        let meta = log.meta(&k).unwrap().unwrap();
        assert_eq!((meta.durable_tail, meta.closure), (2, None), "{session}");
        // A reader from the start gets both lives' events and no end.
        let mut reader = store.catch_up(&Cursor::start(k.clone())).unwrap();
        assert_eq!(reader.try_next().unwrap().payload(), "a");
        assert_eq!(reader.try_next().unwrap().payload(), "b");
        assert_eq!(
            reader.try_next().unwrap_err(),
            TryNextError::Empty,
            "{session}"
        );
    }
    // Closed, not removed: a restart restores it closed.
    let k = key("restarted");
    store.append(&k, Revision(1), "a".into()).unwrap();
    let closure = store.close_session(&k, CloseReason::Error).unwrap();
    drain(&store);
    drop(store);
    let restarted = durable_store(Arc::clone(&log), false);
    assert_eq!(
        refused_closed(restarted.append(&k, Revision(1), "b".into())),
        closure
    );
}

#[test]
fn an_evicted_closed_session_is_revived_closed() {
    let store = ReplayStore::<String>::new(
        Config::default()
            .with_capacity(8)
            .with_auto_sweep(false)
            .with_tombstones(16, Duration::from_secs(3600)),
    )
    .unwrap();
    let k = key("evicted");
    store.append(&k, Revision(1), "a".into()).unwrap();
    let closure = store.close_session(&k, CloseReason::Error).unwrap();
    store.release_through(&k, 1);
    assert_eq!(store.sweep(), 1);
    assert!(!store.is_resident(&k));
    assert_eq!(
        refused_closed(store.append(&k, Revision(1), "b".into())),
        closure
    );
    assert_eq!(store.closure(&k), Some(closure));
}

#[cfg(feature = "redb")]
#[test]
fn a_redb_file_keeps_the_closure_across_a_restart() {
    use livereplay::durable::RedbLog;
    let dir = std::env::temp_dir().join(format!("livereplay-closure-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("log.redb");
    let k = key("redb");
    {
        let log: Arc<dyn DurableLog> = Arc::new(RedbLog::open(&path).unwrap());
        let store = durable_store(log, true);
        store.append(&k, Revision(1), "a".into()).unwrap();
        store.close_session(&k, CloseReason::Done).unwrap();
    }
    let log: Arc<dyn DurableLog> = Arc::new(RedbLog::open(&path).unwrap());
    let store = durable_store(log, true);
    let closure = Closure {
        reason: CloseReason::Done,
        last: 1,
    };
    assert_eq!(
        read_to_closure(&store, &k),
        (vec!["a".to_string()], Ok(closure))
    );
    assert_eq!(
        refused_closed(store.append(&k, Revision(1), "b".into())),
        closure
    );
    drop(store);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A closed key removed and re-created again and again while its first
/// event was not durable (the simulator's first find here, when a removal
/// still kept the key closed) frees every payload once everything is
/// removed and drained.
#[test]
fn removing_a_closed_key_again_and_again_frees_its_events() {
    #[derive(Clone)]
    // Held, never read: the count of the shared `Arc` is the probe.
    struct Probe(#[allow(dead_code)] Arc<()>);
    struct ProbeCodec;
    impl livereplay::Codec<Probe> for ProbeCodec {
        fn encode(&self, _: &Probe, _: &mut Vec<u8>) -> Result<(), livereplay::CodecError> {
            Ok(())
        }
        fn decode(&self, _: &[u8]) -> Result<Probe, livereplay::CodecError> {
            Ok(Probe(Arc::new(())))
        }
    }
    let probe = Arc::new(());
    let store = ReplayStore::builder()
        .config(Config::default().with_capacity(16).with_auto_sweep(false))
        .durable(Arc::new(MemoryLog::new()), ProbeCodec)
        .durable_options(
            DurableOptions::default()
                .with_persister_thread(false)
                .with_undurable_budget(0),
        )
        .build()
        .unwrap();
    let k = key("again");
    store
        .append(&k, Revision(1), Probe(Arc::clone(&probe)))
        .unwrap();
    store.close_session(&k, CloseReason::Cancelled).unwrap();
    for len in [9, 3] {
        assert!(store.remove_session(&k));
        let batch = vec![Probe(Arc::clone(&probe)); len];
        store.append_batch(&k, Revision(1), batch).unwrap();
        store.close_session(&k, CloseReason::Done).unwrap();
    }
    assert!(store.remove_session(&k));
    while store.persist_round().is_some() {}
    assert_eq!(Arc::strong_count(&probe), 1, "every payload was dropped");
}

/// A `Turn` closes its session exactly once: with `finish`'s reason, or
/// `Interrupted` when it is dropped unfinished (an early return, a
/// cancelled task); a finished turn's drop closes nothing more.
#[test]
fn a_turn_closes_its_session_once_finished_or_interrupted() {
    let store = ReplayStore::<String>::default();
    let (done, dropped) = (key("finished"), key("dropped"));
    let turn = store.session(&done).unwrap().into_turn();
    turn.append(Revision(1), "a".into()).unwrap();
    let closure = turn.finish(CloseReason::Done).unwrap();
    assert_eq!(
        closure,
        Closure {
            reason: CloseReason::Done,
            last: 1
        }
    );
    assert_eq!(store.closure(&done), Some(closure));

    fn run(store: &ReplayStore<String>, k: &SessionKey) -> Result<(), Error> {
        let turn = store.session(k)?.into_turn();
        turn.append(Revision(1), "half".into())?;
        // The tool call fails: an early return drops the turn.
        store.append(&key("tool"), Revision(1), "x".into())?;
        Err(Error::Refused(Refusal::SessionRemoved))
    }
    assert!(run(&store, &dropped).is_err());
    assert_eq!(
        store.closure(&dropped),
        Some(Closure {
            reason: CloseReason::Interrupted,
            last: 1
        })
    );
    assert_eq!(store.stats().closed_sessions, 2);
}

/// Removal reopens a closed key whether its session is resident or was
/// evicted to a tombstone: with a log, the evicted one's closure is in the
/// log too, and the removal must reach it.
#[test]
fn removing_an_evicted_closed_session_reopens_its_key() {
    let log: Arc<dyn DurableLog> = Arc::new(MemoryLog::new());
    let store = ReplayStore::builder()
        .config(
            Config::default()
                .with_capacity(8)
                .with_auto_sweep(false)
                .with_tombstones(16, Duration::from_secs(3600)),
        )
        .durable(Arc::clone(&log), Utf8)
        .durable_options(DurableOptions::default().with_persister_thread(false))
        .build()
        .unwrap();
    let k = key("evicted-then-removed");
    store.append(&k, Revision(1), "a".into()).unwrap();
    store.close_session(&k, CloseReason::Done).unwrap();
    drain(&store);
    store.release_through(&k, 1);
    assert_eq!(store.sweep(), 1, "evicted to a tombstone");
    assert!(store.remove_session(&k));
    drain(&store);
    assert_eq!(
        log.meta(&k).unwrap().unwrap().closure,
        None,
        "reopened in the log"
    );
    let next = store.append(&k, Revision(1), "b".into()).unwrap();
    assert_eq!(next.position(), 2);
}

/// `reopen_session`: a closed key opened again at once, with a new life
/// that continues after the closed one, also over a log several nodes
/// share (where a removal alone reopens nothing in the log); an open
/// session is returned as it is.
#[test]
fn reopen_session_opens_a_closed_key_at_once_over_a_shared_log_too() {
    let log: Arc<dyn DurableLog> = Arc::new(MemoryLog::shared());
    let store = durable_store(Arc::clone(&log), false);
    let k = key("reopened");
    store.append(&k, Revision(1), "a".into()).unwrap();
    let open = store.reopen_session(&k).unwrap();
    assert_eq!(open.closure(), None);
    drop(open);
    store.close_session(&k, CloseReason::Done).unwrap();
    drain(&store);
    assert!(log.meta(&k).unwrap().unwrap().closure.is_some());
    let reopened = store.reopen_session(&k).unwrap();
    assert_eq!(reopened.closure(), None);
    let next = reopened.append(Revision(1), "b".into()).unwrap();
    assert_eq!(next.position(), 2);
    drain(&store);
    let meta = log.meta(&k).unwrap().unwrap();
    assert_eq!((meta.durable_tail, meta.closure), (2, None));
    // A store restored from the log finds it open.
    drop(reopened);
    drop(store);
    let restarted = durable_store(Arc::clone(&log), false);
    restarted.append(&k, Revision(1), "c".into()).unwrap();
}

// ---- a turn whose store went away -----------------------------------------
//
// A turn whose store goes away before the turn ends (its process killed,
// or the store dropped with the turn alive) is closed `Interrupted` by the
// store restored after it, over a log that is not shared (persister
// invariant 11): its readers end instead of waiting for a writer that is
// gone. `killed_process` kills a real process with SIGKILL.

fn interrupted_turns(store: &ReplayStore<String>) -> u64 {
    store.stats().durable.unwrap().interrupted_turns
}

/// A store that went away with its turn open: the next store's reader gets
/// every durable event, then `Interrupted` at the durable tail, which that
/// store writes to the log and counts once.
#[test]
fn a_turn_left_open_by_a_gone_store_ends_interrupted() {
    let log: Arc<dyn DurableLog> = Arc::new(MemoryLog::new());
    let k = key("left-open");
    let first = durable_store(Arc::clone(&log), false);
    let turn = first.session(&k).unwrap().into_turn();
    turn.append(Revision(1), "a".into()).unwrap();
    turn.append(Revision(2), "b".into()).unwrap();
    drain(&first);
    let meta = log.meta(&k).unwrap().unwrap();
    assert!(meta.open_turn.is_some(), "the open turn is in the log");
    assert_eq!(meta.closure, None);
    // The store goes first (as a process that dies takes both): the
    // turn's own close on drop is refused, so nothing closes it here.
    drop(first);
    drop(turn);
    assert_eq!(log.meta(&k).unwrap().unwrap().closure, None);

    let second = durable_store(Arc::clone(&log), false);
    let interrupted = Closure {
        reason: CloseReason::Interrupted,
        last: 2,
    };
    assert_eq!(
        read_to_closure(&second, &k),
        (vec!["a".to_string(), "b".to_string()], Ok(interrupted))
    );
    assert_eq!(interrupted_turns(&second), 1);
    match second.append(&k, Revision(3), "c".into()) {
        Err(Error::Refused(Refusal::SessionClosed { closure })) => {
            assert_eq!(closure, interrupted)
        }
        other => panic!("expected the session closed, got {other:?}"),
    }
    drain(&second);
    let meta = log.meta(&k).unwrap().unwrap();
    assert_eq!((meta.closure, meta.open_turn), (Some(interrupted), None));
    drop(second);

    // The closure is the log's now: a third store reads it, and counts no
    // interruption of its own.
    let third = durable_store(Arc::clone(&log), false);
    assert_eq!(read_to_closure(&third, &k).1, Ok(interrupted));
    assert_eq!(interrupted_turns(&third), 0);
}

/// A turn that finished, and a session no turn drove, are restored as they
/// were: closed with their own reason, and open.
#[test]
fn finished_turns_and_plain_sessions_are_restored_as_they_were() {
    let log: Arc<dyn DurableLog> = Arc::new(MemoryLog::new());
    let (finished, plain) = (key("finished"), key("plain"));
    {
        let store = durable_store(Arc::clone(&log), false);
        let turn = store.session(&finished).unwrap().into_turn();
        turn.append(Revision(1), "a".into()).unwrap();
        drain(&store);
        assert!(log.meta(&finished).unwrap().unwrap().open_turn.is_some());
        turn.finish(CloseReason::Done).unwrap();
        store.append(&plain, Revision(1), "x".into()).unwrap();
        drain(&store);
        assert_eq!(log.meta(&finished).unwrap().unwrap().open_turn, None);
    }
    let store = durable_store(Arc::clone(&log), false);
    assert_eq!(
        read_to_closure(&store, &finished).1.unwrap().reason,
        CloseReason::Done
    );
    let mut reader = store.catch_up(&Cursor::start(plain.clone())).unwrap();
    assert_eq!(reader.try_next().unwrap().payload(), "x");
    assert_eq!(reader.try_next().unwrap_err(), TryNextError::Empty);
    store.append(&plain, Revision(2), "y".into()).unwrap();
    assert_eq!(interrupted_turns(&store), 0);
}

/// The store that opened the turn is alive: restored from the log after
/// it removed the session, the key is its own, not a gone store's, and
/// opens again. Removal reopens the key in the log too (as for a closed
/// session), so a store after it finds the key open, not interrupted.
#[test]
fn removal_reopens_a_turns_key() {
    let log: Arc<dyn DurableLog> = Arc::new(MemoryLog::new());
    let (own, gone) = (key("own"), key("removed-then-gone"));
    let store = durable_store(Arc::clone(&log), false);
    let own_turn = store.session(&own).unwrap().into_turn();
    let gone_turn = store.session(&gone).unwrap().into_turn();
    own_turn.append(Revision(1), "a".into()).unwrap();
    gone_turn.append(Revision(1), "a".into()).unwrap();
    drain(&store);
    assert!(log.meta(&own).unwrap().unwrap().open_turn.is_some());
    // Removed and used again at once: the re-creation's life clears it.
    assert!(store.remove_session(&own));
    store
        .append(&own, Revision(2), "b".into())
        .expect("the key opens again in the store that removed it");
    // Removed and left: the persister's reopening life clears it.
    assert!(store.remove_session(&gone));
    drain(&store);
    for k in [&own, &gone] {
        assert_eq!(log.meta(k).unwrap().unwrap().open_turn, None, "{k}");
    }
    assert_eq!(interrupted_turns(&store), 0);
    drop(store);
    drop((own_turn, gone_turn));
    let next = durable_store(Arc::clone(&log), false);
    next.append(&gone, Revision(2), "b".into())
        .expect("a removed turn's key is open after a restart");
    assert_eq!(interrupted_turns(&next), 0);
}

/// A turn made and its session removed before the persister saw the turn
/// writes no mark; one made on a removed session's handle marks nothing.
#[test]
fn a_turn_removed_before_its_mark_leaves_none() {
    let log: Arc<dyn DurableLog> = Arc::new(MemoryLog::new());
    let k = key("quick");
    let store = durable_store(Arc::clone(&log), false);
    store.append(&k, Revision(1), "a".into()).unwrap();
    drain(&store);
    let turn = store.session(&k).unwrap().into_turn();
    assert!(store.remove_session(&k));
    drain(&store);
    assert_eq!(log.meta(&k).unwrap().unwrap().open_turn, None);
    drop(turn);
    let handle = store.session(&k).unwrap();
    assert!(store.remove_session(&k));
    let late = handle.into_turn();
    drain(&store);
    assert_eq!(log.meta(&k).unwrap().unwrap().open_turn, None);
    drop(late);
}

/// Over a shared log another node's turn is left to its node while the
/// node's lease runs: a reader on another store waits, as for any writer.
/// Once the lease ran out (the node died, or stalled that long), the
/// reader ends with `Interrupted`, closed in a new life of the reader's
/// store; the turn's store, come back, is fenced: nothing it appends lands
/// after the closure, and its stats say so.
#[test]
fn over_a_shared_log_a_turn_ends_interrupted_once_its_stores_lease_ran_out() {
    let memory = Arc::new(MemoryLog::shared());
    let log: Arc<dyn DurableLog> = memory.clone();
    let k = key("shared");
    let writer = durable_store(Arc::clone(&log), false);
    let turn = writer.session(&k).unwrap().into_turn();
    turn.append(Revision(1), "a".into()).unwrap();
    drain(&writer);
    let owner = log.meta(&k).unwrap().unwrap().open_turn.expect("the mark");
    assert!(
        log.store_alive(owner).unwrap(),
        "a mark is never in the log without its store's lease"
    );
    // A short lease: the host trusts an answer of "alive" a tenth of it.
    let host = ReplayStore::builder()
        .config(Config::default().with_capacity(64).with_auto_sweep(false))
        .durable(Arc::clone(&log), Utf8)
        .durable_options(
            DurableOptions::default()
                .with_persister_thread(false)
                .with_store_lease(Duration::from_millis(20)),
        )
        .build()
        .unwrap();
    let mut reader = host.catch_up(&Cursor::start(k.clone())).unwrap();
    assert_eq!(reader.try_next().unwrap().payload(), "a");
    assert_eq!(reader.try_next().unwrap_err(), TryNextError::Empty);
    assert_eq!(interrupted_turns(&host), 0);
    assert!(!host.is_resident(&k));

    // The writer's lease runs out while it still holds its turn.
    memory.expire_store(owner);
    std::thread::sleep(Duration::from_millis(5));
    let interrupted = Closure {
        reason: CloseReason::Interrupted,
        last: 1,
    };
    assert_eq!(
        reader.try_next().unwrap_err(),
        TryNextError::Closed(interrupted)
    );
    assert_eq!(interrupted_turns(&host), 1);
    drain(&host);
    let meta = log.meta(&k).unwrap().unwrap();
    assert_eq!((meta.closure, meta.open_turn), (Some(interrupted), None));
    let writers_life = Some(turn.incarnation());
    assert_ne!(
        meta.current_life().map(|life| life.incarnation),
        writers_life,
        "closed in a life of the host's"
    );

    // The writer comes back: it does not know, and appends; the log
    // refuses its life, so nothing lands after the closure.
    turn.append(Revision(2), "b".into()).unwrap();
    drain(&writer);
    let meta = log.meta(&k).unwrap().unwrap();
    assert_eq!((meta.durable_tail, meta.closure), (1, Some(interrupted)));
    assert_eq!(writer.stats().durable.unwrap().fenced_sessions, 1);
    drop((turn, writer));
    let after = durable_store(Arc::clone(&log), false);
    assert_eq!(
        read_to_closure(&after, &k),
        (vec!["a".to_string()], Ok(interrupted))
    );
    assert_eq!(interrupted_turns(&after), 0);
}

/// A shared memory log whose leases are [`Leases`], and which refuses,
/// while `refuse_interruptions` is set, every write that closes a turn
/// `Interrupted` as a log that moved on does (another store wrote first).
#[derive(Debug)]
struct Wrapped {
    log: MemoryLog,
    leases: Leases,
    refuse_interruptions: std::sync::atomic::AtomicBool,
    asked: std::sync::atomic::AtomicU64,
}

/// What a [`Wrapped`] log does with leases.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Leases {
    /// The memory log's own (`MemoryLog::expire_store` ends one).
    Kept,
    /// None kept (the trait's defaults: every store "alive").
    None,
    /// Every renewal fails (a log that is down), counting the calls.
    Refused,
}

impl Wrapped {
    fn new(leases: Leases) -> Self {
        Self {
            log: MemoryLog::shared(),
            leases,
            refuse_interruptions: Default::default(),
            asked: Default::default(),
        }
    }
}

impl DurableLog for Wrapped {
    fn append(&self, writes: &[SessionWrite<'_>]) -> Result<(), LogError> {
        let refuse = self
            .refuse_interruptions
            .load(std::sync::atomic::Ordering::Relaxed);
        if let Some(write) = writes.iter().find(|write| {
            refuse
                && write
                    .closure
                    .is_some_and(|c| c.reason == CloseReason::Interrupted)
        }) {
            return Err(LogError::BadLife {
                key: write.key.clone(),
                expected: 0,
            });
        }
        self.log.append(writes)
    }
    fn load_after(
        &self,
        key: &SessionKey,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        self.log.load_after(key, after, limit)
    }
    fn meta(&self, key: &SessionKey) -> Result<Option<SessionMeta>, LogError> {
        self.log.meta(key)
    }
    fn archive_before(&self, key: &SessionKey, watermark: u64) -> Result<u64, LogError> {
        self.log.archive_before(key, watermark)
    }
    fn sessions(
        &self,
        tenant: &str,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<SessionKey>, LogError> {
        self.log.sessions(tenant, limit, offset)
    }
    fn is_shared(&self) -> bool {
        true
    }
    fn keep_alive(&self, store: u64, lease: Duration) -> Result<(), LogError> {
        self.asked
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.leases {
            Leases::Kept => self.log.keep_alive(store, lease),
            Leases::None => Ok(()),
            Leases::Refused => Err(LogError::Backend("down".into())),
        }
    }
    fn store_alive(&self, store: u64) -> Result<bool, LogError> {
        match self.leases {
            Leases::Kept => self.log.store_alive(store),
            Leases::None | Leases::Refused => Ok(true),
        }
    }
}

/// A shared log that refuses leases (Redis down) is asked again a
/// thirtieth of a lease later by an idle store, not every round, and each
/// refusal is a counted log failure; a commit asks at once, and fails
/// without the lease.
#[test]
fn a_store_renews_its_lease_at_a_paced_rate_while_the_log_refuses() {
    let log = Arc::new(Wrapped::new(Leases::Refused));
    let asked = || log.asked.load(std::sync::atomic::Ordering::Relaxed);
    let clock = Arc::new(livereplay::ManualClock::new());
    let lease = Duration::from_secs(3);
    let store: ReplayStore<String> = ReplayStore::builder()
        .clock(clock.clone())
        .durable(log.clone(), Utf8)
        .durable_options(
            DurableOptions::default()
                .with_persister_thread(false)
                .with_store_lease(lease),
        )
        .build()
        .unwrap();
    for _ in 0..100 {
        assert_eq!(store.persist_round(), None, "nothing to write");
    }
    assert_eq!(asked(), 1, "idle rounds ask once per thirtieth of a lease");
    clock.advance(lease / 30);
    store.persist_round();
    assert_eq!(asked(), 2);
    let failures = store.stats().durable.unwrap().log_failures;
    assert_eq!(failures, 2, "each refusal is counted");
    // A commit asks at once, and fails without the lease.
    store.append(&key("s"), Revision(1), "a".into()).unwrap();
    assert_eq!(store.persist_round(), Some(false));
    assert_eq!(asked(), 3);
    assert_eq!(store.durable_position(&key("s")).unwrap(), Some(0));
}

/// A log that cannot tell liveness (the trait's default)
/// leaves another node's turn to it for good.
#[test]
fn a_shared_log_without_leases_leaves_a_turn_to_its_node() {
    let log: Arc<dyn DurableLog> = Arc::new(Wrapped::new(Leases::None));
    let k = key("shared");
    let writer = durable_store(Arc::clone(&log), false);
    let turn = writer.session(&k).unwrap().into_turn();
    turn.append(Revision(1), "a".into()).unwrap();
    drain(&writer);
    drop(writer);
    drop(turn);
    assert!(log.meta(&k).unwrap().unwrap().open_turn.is_some());
    let host = durable_store(Arc::clone(&log), false);
    let mut reader = host.catch_up(&Cursor::start(k.clone())).unwrap();
    assert_eq!(reader.try_next().unwrap().payload(), "a");
    assert_eq!(reader.try_next().unwrap_err(), TryNextError::Empty);
    assert_eq!(interrupted_turns(&host), 0);
    assert!(!host.is_resident(&k));
}

/// A writer's restore over a shared log that keeps refusing the
/// interruption of a gone store's turn (each refusal says the log moved
/// on) refuses the append, retryably, rather than start a life that would
/// clear the turn's mark with the turn never closed; once the log takes
/// the closure, the append is refused as closed, and a reader elsewhere
/// ends with it.
#[test]
fn a_restore_the_log_keeps_refusing_leaves_the_turn_to_be_closed() {
    let log = Arc::new(Wrapped::new(Leases::Kept));
    let k = key("moving");
    let writer = durable_store(log.clone(), false);
    let turn = writer.session(&k).unwrap().into_turn();
    turn.append(Revision(1), "a".into()).unwrap();
    drain(&writer);
    let owner = log.meta(&k).unwrap().unwrap().open_turn.expect("the mark");
    drop(writer);
    drop(turn);
    log.log.expire_store(owner);

    log.refuse_interruptions
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let host = durable_store(log.clone(), false);
    match host.append(&k, Revision(2), "b".into()) {
        Err(Error::Refused(Refusal::LogUnavailable { reason })) => {
            assert!(reason.contains("close a turn"), "{reason}")
        }
        other => panic!("expected a retryable refusal, got {other:?}"),
    }
    drain(&host);
    let meta = log.meta(&k).unwrap().unwrap();
    assert_eq!(
        (meta.open_turn, meta.closure, meta.durable_tail),
        (Some(owner), None, 1),
        "the turn is left marked for the next try"
    );
    assert_eq!(interrupted_turns(&host), 0);

    log.refuse_interruptions
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let interrupted = Closure {
        reason: CloseReason::Interrupted,
        last: 1,
    };
    assert_eq!(
        refused_closed(host.append(&k, Revision(2), "b".into())),
        interrupted
    );
    assert_eq!(interrupted_turns(&host), 1);
    let reader = durable_store(log.clone(), false);
    assert_eq!(
        read_to_closure(&reader, &k),
        (vec!["a".to_string()], Ok(interrupted))
    );
}

/// Starts this test binary again as the child `test` (an ignored test that
/// does nothing unless its variables are set) and waits for its line
/// `DURABLE`: its turn is open and its events are in the log.
#[cfg(any(feature = "redb", feature = "redis", feature = "postgres"))]
fn turn_child(test: &str, env: &[(&str, &str)]) -> std::process::Child {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--ignored", "--nocapture"])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let durable = lines.any(|line| line.is_ok_and(|line| line == "DURABLE"));
    if !durable {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the child {test} ended before its events were durable");
    }
    assert!(started.elapsed() < Duration::from_secs(60));
    child
}

/// The child's part: a turn on `session` appends `events` events, waits
/// until they are durable, says `DURABLE`, and stays open until the
/// process is killed.
#[cfg(any(feature = "redb", feature = "redis", feature = "postgres"))]
fn hold_a_turn(store: &ReplayStore<String>, session: &str, events: u64) {
    let k = key(session);
    let turn = store.session(&k).unwrap().into_turn();
    for n in 1..=events {
        turn.append(Revision(n), format!("e{n}")).unwrap();
    }
    store.wait_durable(&k, events, WAIT).unwrap();
    println!("DURABLE");
    std::thread::sleep(Duration::from_secs(60));
    panic!("not killed, turn {turn:?}");
}

#[cfg(feature = "redb")]
mod killed_process {
    //! The same with a real process and the redb log: a child opens a turn
    //! and appends until its events are durable, and is killed with
    //! SIGKILL; the parent restores the file and reads the turn to its end.
    //! The test binary re-executes itself as the child (`turn_child`,
    //! ignored unless [`ENV_DIR`] is set).

    use livereplay::durable::{RedbDurability, RedbLog, RedbOptions};

    use super::*;

    const ENV_DIR: &str = "LIVEREPLAY_TURN_CHILD_DIR";
    /// `journaled` or `immediate`: how the child commits (journaled: the
    /// open turn is in a journal frame the parent's open replays).
    const ENV_COMMIT: &str = "LIVEREPLAY_TURN_CHILD_COMMIT";
    const EVENTS: u64 = 5;

    fn open(dir: &std::path::Path, journaled: bool) -> Arc<dyn DurableLog> {
        let durability = if journaled {
            RedbDurability::Journaled
        } else {
            RedbDurability::Immediate
        };
        let options = RedbOptions::new().durability(durability);
        Arc::new(RedbLog::open_with(dir.join("log.redb"), options).unwrap())
    }

    #[test]
    #[ignore = "the child of killed_process::a_killed_processs_turn_ends_interrupted"]
    fn turn_child() {
        let Some(dir) = std::env::var_os(ENV_DIR) else {
            return;
        };
        let journaled = std::env::var(ENV_COMMIT).is_ok_and(|commit| commit == "journaled");
        let store = ReplayStore::builder()
            .durable(open(std::path::Path::new(&dir), journaled), Utf8)
            .build()
            .unwrap();
        super::hold_a_turn(&store, "killed", EVENTS);
    }

    #[test]
    fn a_killed_processs_turn_ends_interrupted() {
        killed_with(false);
    }

    #[test]
    fn a_killed_processs_turn_ends_interrupted_journaled() {
        killed_with(true);
    }

    fn killed_with(journaled: bool) {
        let dir = std::env::temp_dir().join(format!(
            "livereplay-closure-kill-{journaled}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let commit = if journaled { "journaled" } else { "immediate" };
        let mut child = super::turn_child(
            "killed_process::turn_child",
            &[(ENV_DIR, dir.to_str().unwrap()), (ENV_COMMIT, commit)],
        );
        // SIGKILL by pid: no drop, no destructor runs in the child.
        child.kill().unwrap();
        child.wait().unwrap();

        let store = durable_store(open(&dir, journaled), false);
        let (payloads, end) = read_to_closure(&store, &key("killed"));
        let expected: Vec<String> = (1..=EVENTS).map(|n| format!("e{n}")).collect();
        assert_eq!(payloads, expected);
        assert_eq!(
            end,
            Ok(Closure {
                reason: CloseReason::Interrupted,
                last: EVENTS
            })
        );
        assert_eq!(interrupted_turns(&store), 1);
        drain(&store);
        drop(store);
        // Written: a restart after this one finds the closure in the file.
        let store = durable_store(open(&dir, journaled), false);
        assert_eq!(
            read_to_closure(&store, &key("killed")).1.map(|c| c.reason),
            Ok(CloseReason::Interrupted)
        );
        assert_eq!(interrupted_turns(&store), 0);
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(feature = "redis")]
#[path = "support/redis_server.rs"]
mod redis_server;

#[cfg(feature = "postgres")]
#[path = "support/postgres_server.rs"]
mod postgres_server;

#[cfg(any(feature = "redis", feature = "postgres"))]
mod killed_node {
    //! The same over a shared log (Redis, Postgres), where another node
    //! does the closing: a child node opens a turn, appends until its
    //! events are durable, and holds it; a reader on this node waits
    //! through several of the child's leases (it renews them), then the
    //! child is killed with SIGKILL and the reader ends with `Interrupted`
    //! once the child's lease ran out.

    use super::*;

    /// `redis <url>` or `postgres <connection parameters>`.
    const ENV_LOG: &str = "LIVEREPLAY_TURN_CHILD_LOG";
    const EVENTS: u64 = 5;
    const LEASE: Duration = Duration::from_millis(600);

    fn node(log: &str) -> ReplayStore<String> {
        let log: Arc<dyn DurableLog> = match log.split_once(' ') {
            #[cfg(feature = "redis")]
            Some(("redis", url)) => Arc::new(livereplay::durable::RedisLog::open(url).unwrap()),
            #[cfg(feature = "postgres")]
            Some(("postgres", params)) => {
                Arc::new(livereplay::durable::PostgresLog::open(params).unwrap())
            }
            _ => panic!("no such log: {log}"),
        };
        ReplayStore::builder()
            .durable(log, Utf8)
            .durable_options(DurableOptions::default().with_store_lease(LEASE))
            .build()
            .unwrap()
    }

    #[test]
    #[ignore = "the child of killed_node's tests"]
    fn turn_node() {
        let Ok(log) = std::env::var(ENV_LOG) else {
            return;
        };
        super::hold_a_turn(&node(&log), "killed-node", EVENTS);
    }

    #[cfg(feature = "redis")]
    #[test]
    fn a_killed_nodes_turn_ends_interrupted_on_another_node_over_redis() {
        let Some(redis) = super::redis_server::RedisServer::start() else {
            return;
        };
        killed_node_over(&format!("redis {}", redis.url()));
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn a_killed_nodes_turn_ends_interrupted_on_another_node_over_postgres() {
        let Some(postgres) = super::postgres_server::PostgresServer::start() else {
            return;
        };
        killed_node_over(&format!("postgres {}", postgres.params()));
    }

    fn killed_node_over(log: &str) {
        let mut child = turn_child("killed_node::turn_node", &[(ENV_LOG, log)]);
        let host = node(log);
        let k = key("killed-node");
        let mut reader = host.catch_up(&Cursor::start(k.clone())).unwrap();
        for n in 1..=EVENTS {
            match reader.next_timeout(WAIT) {
                Ok(event) => assert_eq!(event.payload(), &format!("e{n}")),
                other => panic!("event {n}: {other:?}"),
            }
        }
        // Alive: three leases pass, each renewed, and the turn stays open.
        let waited = reader.next_timeout(LEASE * 3);
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            matches!(waited, Err(NextTimeoutError::Timeout)),
            "a live node's turn was closed: {waited:?}"
        );
        assert_eq!(interrupted_turns(&host), 0);
        // Killed: its lease runs out, and the reader ends.
        let interrupted = Closure {
            reason: CloseReason::Interrupted,
            last: EVENTS,
        };
        assert_eq!(
            reader.next_timeout(WAIT).unwrap_err(),
            NextTimeoutError::Closed(interrupted)
        );
        assert_eq!(interrupted_turns(&host), 1);
        host.wait_durable(&k, EVENTS, WAIT).unwrap();
        drop(host);
        // Written to the log: a third node reads the closure, its own count 0.
        let third = node(log);
        let (payloads, end) = read_to_closure(&third, &k);
        assert_eq!(payloads.len() as u64, EVENTS);
        assert_eq!(end, Ok(interrupted));
        assert_eq!(interrupted_turns(&third), 0);
    }
}
