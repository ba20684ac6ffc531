//! A turn whose store goes away before the turn ends (its process killed,
//! or the store dropped with the turn alive) is closed `Interrupted` by the
//! store restored after it, over a log that is not shared (persister
//! invariant 11): its readers end instead of waiting for a writer that is
//! gone. The last test kills a real process with SIGKILL.
//!
//! Bounded: every wait has a deadline; the child process is killed by pid.

use std::sync::Arc;
use std::time::Duration;

use livereplay::durable::{DurableLog, MemoryLog};
use livereplay::{
    CloseReason, Closure, Config, Cursor, DurableOptions, Error, NextTimeoutError, Refusal,
    ReplayStore, Revision, SessionKey, TryNextError, Utf8,
};

const WAIT: Duration = Duration::from_secs(10);

fn key(session: &str) -> SessionKey {
    SessionKey::new("tenant", session).unwrap()
}

fn store_on(log: Arc<dyn DurableLog>) -> ReplayStore<String> {
    ReplayStore::builder()
        .config(Config::default().with_capacity(64).with_auto_sweep(false))
        .durable(log, Utf8)
        .durable_options(DurableOptions::default().with_persister_thread(false))
        .build()
        .unwrap()
}

fn drain(store: &ReplayStore<String>) {
    while store.persist_round().is_some() {}
}

fn interrupted_turns(store: &ReplayStore<String>) -> u64 {
    store.stats().durable.unwrap().interrupted_turns
}

/// Reads a catch-up from the start to its end: the payloads, and how it
/// ended.
fn read_to_end(
    store: &ReplayStore<String>,
    k: &SessionKey,
) -> (Vec<String>, Result<Closure, NextTimeoutError>) {
    let mut catch_up = store.catch_up(&Cursor::start(k.clone())).unwrap();
    let mut payloads = Vec::new();
    loop {
        match catch_up.next_timeout(WAIT) {
            Ok(event) => payloads.push(event.payload().clone()),
            Err(NextTimeoutError::Closed(closure)) => return (payloads, Ok(closure)),
            Err(other) => return (payloads, Err(other)),
        }
    }
}

/// A store that went away with its turn open: the next store's reader gets
/// every durable event, then `Interrupted` at the durable tail, which that
/// store writes to the log and counts once.
#[test]
fn a_turn_left_open_by_a_gone_store_ends_interrupted() {
    let log: Arc<dyn DurableLog> = Arc::new(MemoryLog::new());
    let k = key("left-open");
    let first = store_on(Arc::clone(&log));
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

    let second = store_on(Arc::clone(&log));
    let interrupted = Closure {
        reason: CloseReason::Interrupted,
        last: 2,
    };
    assert_eq!(
        read_to_end(&second, &k),
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
    let third = store_on(Arc::clone(&log));
    assert_eq!(read_to_end(&third, &k).1, Ok(interrupted));
    assert_eq!(interrupted_turns(&third), 0);
}

/// A turn that finished, and a session no turn drove, are restored as they
/// were: closed with their own reason, and open.
#[test]
fn finished_turns_and_plain_sessions_are_restored_as_they_were() {
    let log: Arc<dyn DurableLog> = Arc::new(MemoryLog::new());
    let (finished, plain) = (key("finished"), key("plain"));
    {
        let store = store_on(Arc::clone(&log));
        let turn = store.session(&finished).unwrap().into_turn();
        turn.append(Revision(1), "a".into()).unwrap();
        drain(&store);
        assert!(log.meta(&finished).unwrap().unwrap().open_turn.is_some());
        turn.finish(CloseReason::Done).unwrap();
        store.append(&plain, Revision(1), "x".into()).unwrap();
        drain(&store);
        assert_eq!(log.meta(&finished).unwrap().unwrap().open_turn, None);
    }
    let store = store_on(Arc::clone(&log));
    assert_eq!(
        read_to_end(&store, &finished).1.unwrap().reason,
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
    let store = store_on(Arc::clone(&log));
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
    let next = store_on(Arc::clone(&log));
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
    let store = store_on(Arc::clone(&log));
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

/// Over a shared log another node's turn may be alive: the mark is kept
/// but a reader on another store waits, as for any writer.
#[test]
fn over_a_shared_log_a_turn_is_left_to_its_node() {
    let log: Arc<dyn DurableLog> = Arc::new(MemoryLog::shared());
    let k = key("shared");
    let writer = store_on(Arc::clone(&log));
    let turn = writer.session(&k).unwrap().into_turn();
    turn.append(Revision(1), "a".into()).unwrap();
    drain(&writer);
    drop(writer);
    drop(turn);
    assert!(log.meta(&k).unwrap().unwrap().open_turn.is_some());
    let host = store_on(Arc::clone(&log));
    let mut reader = host.catch_up(&Cursor::start(k.clone())).unwrap();
    assert_eq!(reader.try_next().unwrap().payload(), "a");
    assert_eq!(reader.try_next().unwrap_err(), TryNextError::Empty);
    assert_eq!(interrupted_turns(&host), 0);
    assert!(!host.is_resident(&k));
}

#[cfg(feature = "redb")]
mod killed_process {
    //! The same with a real process and the redb log: a child opens a turn
    //! and appends until its events are durable, and is killed with
    //! SIGKILL; the parent restores the file and reads the turn to its end.
    //! The test binary re-executes itself as the child (`turn_child`,
    //! ignored unless [`ENV_DIR`] is set).

    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::Instant;

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
    #[ignore = "the child of a_killed_processs_turn_ends_interrupted"]
    fn turn_child() {
        let Some(dir) = std::env::var_os(ENV_DIR) else {
            return;
        };
        let journaled = std::env::var(ENV_COMMIT).is_ok_and(|commit| commit == "journaled");
        let store = ReplayStore::builder()
            .durable(open(std::path::Path::new(&dir), journaled), Utf8)
            .build()
            .unwrap();
        let k = key("killed");
        let turn = store.session(&k).unwrap().into_turn();
        for n in 1..=EVENTS {
            turn.append(Revision(n), format!("e{n}")).unwrap();
        }
        store.wait_durable(&k, EVENTS, WAIT).unwrap();
        println!("DURABLE");
        // Alive, turn open, until killed.
        std::thread::sleep(Duration::from_secs(60));
        panic!("not killed");
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
            "livereplay-turn-kill-{journaled}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "killed_process::turn_child",
                "--ignored",
                "--nocapture",
            ])
            .env(ENV_DIR, &dir)
            .env(
                ENV_COMMIT,
                if journaled { "journaled" } else { "immediate" },
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let durable = lines.any(|line| line.is_ok_and(|line| line == "DURABLE"));
        // SIGKILL by pid: no drop, no destructor runs in the child.
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(durable, "the child's events were durable before the kill");
        assert!(started.elapsed() < Duration::from_secs(60));

        let store = store_on(open(&dir, journaled));
        let (payloads, end) = read_to_end(&store, &key("killed"));
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
        let store = store_on(open(&dir, journaled));
        assert_eq!(
            read_to_end(&store, &key("killed")).1.map(|c| c.reason),
            Ok(CloseReason::Interrupted)
        );
        assert_eq!(interrupted_turns(&store), 0);
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
