//! Crash test with real processes: a child appends to a redb-backed store and
//! is killed with SIGKILL at a random moment, again and again; after every
//! kill the parent checks the log and the cursors the child handed out
//! against CONTRACT.md section 10 (restarts).
//!
//! The test binary re-executes itself as the child: `child_appender` is
//! `#[ignore]`d and does nothing unless [`ENV_DIR`] is set, so a normal run
//! only runs `crash_rounds`, the parent.
//!
//! The child prints, flushed, one line per fact a client could have seen:
//!
//! * `LIFE <session> <incarnation> <start>`: it restored the session (before
//!   its first append) and appends from `start + 1` under `incarnation`;
//! * `SEEN <session> <cursor>`: an event's cursor, as a client saw it, not
//!   yet known to be durable;
//! * `DURABLE <session> <position> <cursor>`: printed after `wait_durable`
//!   returned for that position.
//!
//! Every payload is `s<session>:p<position>:r<round>`, so the parent can
//! check each stored event's integrity and which life wrote it.
//!
//! `LIVEREPLAY_CRASH_ROUNDS` (default 20) sets the rounds,
//! `LIVEREPLAY_CRASH_SEED` replays a run (the seed is printed),
//! `LIVEREPLAY_CRASH_KILL_MS=lo-hi` changes when children are killed,
//! `LIVEREPLAY_CRASH_CREATE_IN_CHILD=1` lets the first child create the log
//! file (so an early kill can hit its creation), and
//! `LIVEREPLAY_CRASH_STRICT=0` tolerates cursors of a life the child was
//! killed before recording (see `Verdict::UnrecordedLife`); by default that
//! fails, since a restored life is recorded before its first append.

// Cargo.toml runs this file only with the `redb` feature; the attribute
// keeps a build without it compiling.
#![cfg(feature = "redb")]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use livereplay::durable::{
    DurableLog, Life, LogRecord, RecordBody, RedbDurability, RedbLog, RedbOptions, SessionMeta,
};
use livereplay::{
    Config, Cursor, DurableOptions, Error, GapReason, Incarnation, ReplayStore, Revision,
    SessionKey, TryNextError, Utf8,
};

/// The child's data directory; the child does nothing without it.
const ENV_DIR: &str = "LIVEREPLAY_CRASH_CHILD_DIR";
/// How many sessions the child appends to.
const ENV_SESSIONS: &str = "LIVEREPLAY_CRASH_CHILD_SESSIONS";
/// The round, written into every payload.
const ENV_ROUND: &str = "LIVEREPLAY_CRASH_CHILD_ROUND";
/// The child's random seed.
const ENV_CHILD_SEED: &str = "LIVEREPLAY_CRASH_CHILD_SEED";

const SESSIONS: usize = 3;
/// A small ring, so that most of what a child wrote is only in the log.
const CAPACITY: usize = 64;
/// The child waits for durability at least this often per session, so the
/// ring (64) never laps an event the log has not taken: a healthy log must
/// show no hole.
const MAX_UNDURABLE: u64 = 24;
const TENANT: &str = "crash";
/// A child that outlives its parent (it should not: the guard kills it)
/// stops by itself after this.
const CHILD_LIFETIME: Duration = Duration::from_secs(30);
/// How long the parent waits for a child's output after the kill.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

fn key(session: usize) -> SessionKey {
    SessionKey::new(TENANT, &format!("s{session}")).expect("valid key")
}

fn payload(session: usize, position: u64, round: u64) -> String {
    format!("s{session}:p{position}:r{round}")
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("log.redb")
}

/// xorshift64: small, seeded, good enough to pick delays and bursts.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform enough in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

// ---------------------------------------------------------------------------
// The child.

/// The child process: appends to every session until it is killed.
#[test]
#[ignore = "the child of crash_rounds; runs only with LIVEREPLAY_CRASH_CHILD_DIR set"]
fn child_appender() {
    let Some(dir) = std::env::var_os(ENV_DIR) else {
        return;
    };
    let sessions = env_u64(ENV_SESSIONS).unwrap_or(SESSIONS as u64) as usize;
    let round = env_u64(ENV_ROUND).expect("the parent sets the round");
    let mut rng = Rng::new(env_u64(ENV_CHILD_SEED).unwrap_or(round));
    let started = Instant::now();

    let log = RedbLog::open_with(log_path(Path::new(&dir)), log_options(Path::new(&dir)))
        .expect("child: open the log");
    let store = ReplayStore::<String>::builder()
        .config(Config::default().with_capacity(CAPACITY))
        .durable(Arc::new(log), Utf8)
        .durable_options(DurableOptions::default())
        .build()
        .expect("child: build the store");

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut say = |line: String| {
        // One write per line: a kill leaves at most one partial last line,
        // which the parent ignores.
        out.write_all(format!("{line}\n").as_bytes())
            .and_then(|()| out.flush())
            .expect("child: write to the parent");
    };

    // Restore every session first (each gets a new life after the tail the
    // log has), so the parent learns every life before its first append.
    let handles: Vec<_> = (0..sessions)
        .map(|s| store.session(&key(s)).expect("child: restore the session"))
        .collect();
    let mut next = Vec::new();
    let mut waited = Vec::new();
    for (s, handle) in handles.iter().enumerate() {
        let start = handle.current_cursor().position();
        say(format!("LIFE {s} {} {start}", handle.incarnation()));
        next.push(start + 1);
        waited.push(start);
    }
    say("READY".to_string());

    while started.elapsed() < CHILD_LIFETIME {
        for (s, handle) in handles.iter().enumerate() {
            let burst = rng.range(1, 12);
            let mut last = None;
            for _ in 0..burst {
                let position = next[s];
                let event = handle
                    .append(Revision(round), payload(s, position, round))
                    .expect("child: append");
                assert_eq!(event.position(), position, "child: positions continue");
                next[s] += 1;
                if rng.range(0, 2) == 0 {
                    say(format!("SEEN {s} {}", event.cursor()));
                }
                last = Some(event);
            }
            let Some(event) = last else { continue };
            if rng.range(0, 1) == 0 || event.position() - waited[s] >= MAX_UNDURABLE {
                store
                    .wait_durable(&key(s), event.position(), Duration::from_secs(10))
                    .expect("child: wait_durable");
                waited[s] = event.position();
                say(format!(
                    "DURABLE {s} {} {}",
                    event.position(),
                    event.cursor()
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The parent.

/// A line the child printed.
#[derive(Debug, Clone)]
enum Line {
    Life {
        session: usize,
        incarnation: Incarnation,
        start: u64,
    },
    Seen {
        session: usize,
        cursor: Cursor,
    },
    Durable {
        session: usize,
        position: u64,
        cursor: Cursor,
    },
}

fn parse_line(line: &str) -> Option<Line> {
    let fields: Vec<&str> = line.split(' ').collect();
    let session = |text: &str| -> usize { text.parse().expect("session index") };
    let cursor = |text: &str| -> Cursor { text.parse().expect("a cursor the child printed") };
    match fields.as_slice() {
        ["LIFE", s, incarnation, start] => Some(Line::Life {
            session: session(s),
            incarnation: Incarnation::from_raw(
                u64::from_str_radix(incarnation, 16).expect("hex incarnation"),
            )
            .expect("a non-zero incarnation"),
            start: start.parse().expect("start position"),
        }),
        ["SEEN", s, c] => Some(Line::Seen {
            session: session(s),
            cursor: cursor(c),
        }),
        ["DURABLE", s, position, c] => Some(Line::Durable {
            session: session(s),
            position: position.parse().expect("position"),
            cursor: cursor(c),
        }),
        // The test harness's own lines ("running 1 test", ...).
        _ => None,
    }
}

/// A child process that is killed and reaped when dropped, whatever
/// happens to the test.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("the child is still ours")
    }

    /// SIGKILL, then reap.
    fn kill(mut self) -> ExitStatus {
        let mut child = self.0.take().expect("the child is still ours");
        // `Child::kill` sends SIGKILL on Unix; it fails only if the child
        // was already reaped, which it is not.
        let _ = child.kill();
        child.wait().expect("reap the child")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos();
        let path =
            std::env::temp_dir().join(format!("livereplay-crash-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create the temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What one run of the child left: its lines and how it ended.
struct ChildRun {
    lines: Vec<Line>,
    status: ExitStatus,
    ran_for: Duration,
    stderr: String,
}

/// Reads a pipe to the end on a thread: complete lines into a channel
/// (so a full pipe never stalls the child), the rest dropped.
fn read_lines(pipe: impl Read + Send + 'static) -> (mpsc::Receiver<String>, JoinHandle<()>) {
    let (sender, receiver) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                // A line without its newline was cut by the kill.
                Ok(_) if !line.ends_with('\n') => break,
                Ok(_) => {
                    if sender.send(line.trim_end().to_string()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    (receiver, handle)
}

fn run_child(dir: &Path, round: u64, child_seed: u64, run_for: Duration) -> ChildRun {
    let exe = std::env::current_exe().expect("the test binary's path");
    let spawned = Instant::now();
    let mut guard = ChildGuard(Some(
        Command::new(exe)
            .args(["--exact", "child_appender", "--ignored", "--nocapture"])
            .env(ENV_DIR, dir)
            .env(ENV_SESSIONS, SESSIONS.to_string())
            .env(ENV_ROUND, round.to_string())
            .env(ENV_CHILD_SEED, child_seed.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the child"),
    ));
    let stdout = guard.child().stdout.take().expect("piped stdout");
    let mut stderr = guard.child().stderr.take().expect("piped stderr");
    let (lines, reader) = read_lines(stdout);
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    // Let it run, watching for an early exit (a panic in the child).
    while spawned.elapsed() < run_for {
        if let Some(status) = guard.child().try_wait().expect("poll the child") {
            let stderr = stderr_reader.join().unwrap_or_default();
            panic!(
                "round {round}: the child exited by itself ({status}) before the kill:\n{stderr}"
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let status = guard.kill();
    let ran_for = spawned.elapsed();

    // The pipes close with the child; read what it wrote.
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut collected = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => collected.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("round {round}: the child's stdout did not close")
            }
        }
    }
    reader.join().expect("the stdout reader");
    let stderr = stderr_reader.join().unwrap_or_default();
    ChildRun {
        lines: collected.iter().filter_map(|l| parse_line(l)).collect(),
        status,
        ran_for,
        stderr,
    }
}

/// What the parent knows across rounds.
#[derive(Default)]
struct History {
    /// Each session's durable tail after the previous round.
    tails: [u64; SESSIONS],
    /// Each session's lives after the previous round (append-only).
    lives: [Vec<Life>; SESSIONS],
    /// The round whose child started each life (from its LIFE line).
    life_round: HashMap<Incarnation, (usize, u64, u64)>,
    /// Every position handed out, by (incarnation, position): its payload.
    handed_out: HashMap<(Incarnation, u64), String>,
    /// Every cursor printed, with its session and round.
    cursors: Vec<(usize, u64, Cursor, bool)>,
    /// Totals, for the summary.
    durable_lines: u64,
    seen_lines: u64,
    resumed_exactly: u64,
    at_tail: u64,
    lost_gaps: u64,
    lost_events: u64,
    unrecorded_lives: u64,
    unrecorded_cursors: u64,
    rounds_without_output: u64,
    unannounced_lives: u64,
}

/// How a cursor was answered.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// `catch_up` gave the next position with its payload.
    Resumed,
    /// `catch_up` started at the durable tail (nothing after it).
    AtTail,
    /// `GapReason::Lost`, with this many missed.
    Lost(u64),
    /// The child was killed before its life was recorded in the log, so the
    /// log cannot know the cursor's incarnation: the store answers `Reset`
    /// (no count). The contract asks for `Lost` with the count.
    UnrecordedLife,
}

/// The life that covers `position` (the last one starting at or before it).
fn covering_life(lives: &[Life], position: u64) -> Option<Life> {
    lives
        .iter()
        .rev()
        .find(|life| life.first_position <= position)
        .copied()
}

/// The payload the child wrote at `position` under `incarnation`.
fn expected_payload(
    history: &History,
    session: usize,
    incarnation: Incarnation,
    position: u64,
) -> String {
    let (life_session, round, _) = *history
        .life_round
        .get(&incarnation)
        .unwrap_or_else(|| panic!("incarnation {incarnation} was never announced by a child"));
    assert_eq!(
        life_session, session,
        "incarnation {incarnation} belongs to another session"
    );
    payload(session, position, round)
}

/// Checks one session's log after a kill: contiguous events from
/// `archived_through + 1` to the tail, no hole, each written by the life
/// that covers its position, with its exact payload.
fn check_log(
    history: &History,
    round: u64,
    session: usize,
    meta: &SessionMeta,
    records: &[LogRecord],
) -> HashMap<u64, String> {
    let previous_lives = &history.lives[session];
    assert!(
        meta.lives.len() >= previous_lives.len()
            && meta.lives[..previous_lives.len()] == previous_lives[..],
        "round {round} s{session}: lives are append-only: before {previous_lives:?}, now {:?}",
        meta.lives
    );
    let new_lives = &meta.lives[previous_lives.len()..];
    assert!(
        new_lives.len() <= 1,
        "round {round} s{session}: one child process starts at most one life per session: {new_lives:?}"
    );
    for life in new_lives {
        let (life_session, life_round, start) = history
            .life_round
            .get(&life.incarnation)
            .copied()
            .unwrap_or_else(|| {
                panic!("round {round} s{session}: life {life:?} was not announced by the child")
            });
        assert_eq!(
            (life_session, life_round),
            (session, round),
            "round {round}: new life {life:?}"
        );
        assert_eq!(
            start, history.tails[session],
            "round {round} s{session}: the child restored from the tail the log had"
        );
        assert_eq!(
            life.first_position,
            history.tails[session] + 1,
            "round {round} s{session}: a new life starts right after the durable tail"
        );
    }
    for pair in meta.lives.windows(2) {
        assert!(
            pair[0].first_position <= pair[1].first_position,
            "round {round} s{session}: lives by ascending first position: {:?}",
            meta.lives
        );
    }
    let incarnations: HashSet<_> = meta.lives.iter().map(|l| l.incarnation).collect();
    assert_eq!(
        incarnations.len(),
        meta.lives.len(),
        "round {round} s{session}: an incarnation is one life"
    );
    assert!(
        meta.durable_tail >= history.tails[session],
        "round {round} s{session}: the durable tail went back from {} to {}",
        history.tails[session],
        meta.durable_tail
    );

    // Contiguous events, no hole.
    let mut payloads = HashMap::new();
    let mut expected = meta.archived_through + 1;
    let mut events = 0;
    let mut lives_with_events = Vec::new();
    for record in records {
        assert_eq!(
            record.position, expected,
            "round {round} s{session}: records are contiguous"
        );
        let RecordBody::Event(event) = &record.body else {
            panic!(
                "round {round} s{session}: a hole at {} in a healthy log: {record:?}",
                record.position
            );
        };
        let life = covering_life(&meta.lives, record.position).unwrap_or_else(|| {
            panic!(
                "round {round} s{session}: no life covers position {}",
                record.position
            )
        });
        assert_eq!(
            record.incarnation, life.incarnation,
            "round {round} s{session}: position {} is written by the life that covers it",
            record.position
        );
        if lives_with_events.last() != Some(&life.first_position) {
            lives_with_events.push(life.first_position);
        }
        let text = String::from_utf8(event.payload.clone()).expect("a UTF-8 payload");
        assert_eq!(
            text,
            expected_payload(history, session, record.incarnation, record.position),
            "round {round} s{session}: the payload at {} is intact",
            record.position
        );
        payloads.insert(record.position, text);
        expected += 1;
        events += 1;
    }
    assert_eq!(
        expected - 1,
        meta.durable_tail,
        "round {round} s{session}: the records reach the durable tail"
    );
    assert_eq!(
        events, meta.event_count,
        "round {round} s{session}: event_count"
    );
    assert!(
        lives_with_events.windows(2).all(|w| w[0] < w[1]),
        "round {round} s{session}: lives that wrote events start at strictly increasing positions: {lives_with_events:?}"
    );
    payloads
}

/// Answers `cursor` with a parent-side store over the log, per section 10.
fn check_cursor(
    store: &ReplayStore<String>,
    history: &History,
    session: usize,
    meta: &SessionMeta,
    cursor: &Cursor,
) -> Verdict {
    let position = cursor.position();
    let incarnation = cursor
        .incarnation()
        .expect("an event's cursor has an incarnation");
    let Some((_, end)) = meta.life_of(incarnation) else {
        match store.catch_up(cursor) {
            Err(Error::Gap(gap)) if gap.reason == GapReason::Reset => {
                return Verdict::UnrecordedLife
            }
            other => {
                panic!("{cursor:?} of a life the log never recorded: expected a gap, got {other:?}")
            }
        }
    };
    if position > end {
        match store.catch_up(cursor) {
            Err(Error::Gap(gap)) => {
                assert_eq!(
                    gap.reason,
                    GapReason::Lost,
                    "{cursor:?} beyond its life's durable end {end}: {gap:?}"
                );
                assert_eq!(
                    gap.missed,
                    Some(position - end),
                    "{cursor:?}: missed is position - end ({end})"
                );
                assert_eq!(&gap.requested, cursor);
                return Verdict::Lost(position - end);
            }
            other => panic!(
                "{cursor:?} beyond its life's durable end {end}: expected Lost, got {other:?}"
            ),
        }
    }
    let mut catch_up = store.catch_up(cursor).unwrap_or_else(|e| {
        panic!("{cursor:?} is durable (life ends at {end}): it must resume, got {e}")
    });
    if position == meta.durable_tail {
        // At the tail. Reading on would make the session resident and start
        // a new life in the log; the final check does that once.
        return Verdict::AtTail;
    }
    let event = catch_up
        .try_next()
        .unwrap_or_else(|e| panic!("{cursor:?}: the next durable event, got {e:?}"));
    assert_eq!(
        event.position(),
        position + 1,
        "{cursor:?} resumes right after itself"
    );
    let life = covering_life(&meta.lives, position + 1).expect("a life covers it");
    assert_eq!(event.incarnation(), life.incarnation);
    assert_eq!(
        event.payload(),
        &expected_payload(history, session, life.incarnation, position + 1),
        "{cursor:?}: the next event's payload"
    );
    Verdict::Resumed
}

/// Whether `cursor` is of a session's very first life (from position 1).
/// A first life is recorded by the persister with its first commit, not
/// synchronously (that would put a commit on every new session's first
/// append): killed before that commit and later re-created, its cursors
/// are unknown to the log and answered `Reset`, without a count. Restored
/// lives are recorded before their first append, so theirs never are.
fn first_life(history: &History, cursor: &Cursor) -> bool {
    cursor
        .incarnation()
        .and_then(|incarnation| history.life_round.get(&incarnation))
        .is_some_and(|&(_, _, start)| start == 0)
}

fn record(history: &mut History, verdict: Verdict) {
    match verdict {
        Verdict::Resumed => history.resumed_exactly += 1,
        Verdict::AtTail => history.at_tail += 1,
        Verdict::Lost(missed) => {
            history.lost_gaps += 1;
            history.lost_events += missed;
        }
        Verdict::UnrecordedLife => history.unrecorded_cursors += 1,
    }
}

/// Marks a data directory whose log is opened with the journal.
const JOURNALED_MARKER: &str = "journaled";

/// How the log in `dir` is opened, by the child and the parent alike:
/// with a small journal (so kills land in checkpoints and wraps too) when
/// the directory is marked, else with the default durability.
fn log_options(dir: &Path) -> RedbOptions {
    if dir.join(JOURNALED_MARKER).exists() {
        RedbOptions::new()
            .durability(RedbDurability::Journaled)
            .journal_bytes(64 * 1024)
    } else {
        RedbOptions::new()
    }
}

fn open_log(dir: &Path) -> Arc<RedbLog> {
    Arc::new(
        RedbLog::open_with(log_path(dir), log_options(dir))
            .expect("the parent opens the log after the kill"),
    )
}

fn parent_store(log: &Arc<RedbLog>) -> ReplayStore<String> {
    let log: Arc<dyn DurableLog> = log.clone();
    ReplayStore::<String>::builder()
        .config(Config::default().with_capacity(CAPACITY))
        .durable(log, Utf8)
        .build()
        .expect("the parent's store")
}

/// How long each child runs before the kill, in ms: `LIVEREPLAY_CRASH_KILL_MS`
/// as `lo-hi` (default 20-200; lower values kill children while they open
/// the log or restore their sessions).
fn kill_window() -> (u64, u64) {
    let Ok(text) = std::env::var("LIVEREPLAY_CRASH_KILL_MS") else {
        return (20, 200);
    };
    let parsed = text
        .split_once('-')
        .and_then(|(lo, hi)| Some((lo.parse().ok()?, hi.parse().ok()?)));
    match parsed {
        Some((lo, hi)) if lo <= hi => (lo, hi),
        _ => panic!("LIVEREPLAY_CRASH_KILL_MS={text:?}: expected lo-hi in ms"),
    }
}

fn round_once(history: &mut History, dir: &Path, round: u64, rng: &mut Rng, strict: bool) {
    let (lo, hi) = kill_window();
    let run_for = Duration::from_millis(rng.range(lo, hi));
    let run = run_child(dir, round, rng.next(), run_for);
    assert_eq!(
        run.status.signal(),
        Some(9),
        "round {round}: the child must die of the SIGKILL, not {}:\n{}",
        run.status,
        run.stderr
    );

    // The lines: lives first, then the cursors.
    let mut touched = [None; SESSIONS];
    for line in &run.lines {
        if let Line::Life {
            session,
            incarnation,
            start,
        } = *line
        {
            assert!(
                touched[session].is_none(),
                "round {round}: one LIFE per session"
            );
            touched[session] = Some(incarnation);
            let fresh = history
                .life_round
                .insert(incarnation, (session, round, start))
                .is_none();
            assert!(
                fresh,
                "round {round}: incarnation {incarnation} reused across restarts"
            );
        }
    }
    let mut lines_of_round = Vec::new();
    for line in &run.lines {
        let (session, cursor, durable) = match line {
            Line::Life { .. } => continue,
            Line::Seen { session, cursor } => {
                history.seen_lines += 1;
                (*session, cursor.clone(), false)
            }
            Line::Durable {
                session,
                position,
                cursor,
            } => {
                history.durable_lines += 1;
                assert_eq!(cursor.position(), *position);
                (*session, cursor.clone(), true)
            }
        };
        assert_eq!(cursor.key(), &key(session));
        let incarnation = cursor
            .incarnation()
            .expect("an event's cursor has an incarnation");
        assert_eq!(
            touched[session],
            Some(incarnation),
            "round {round}: cursors carry this child's life"
        );
        assert!(
            cursor.position() > history.tails[session],
            "round {round}: a new life appends after the tail"
        );
        let text = payload(session, cursor.position(), round);
        // A position is never handed out twice under one incarnation (a
        // SEEN line and a later DURABLE line of one event agree).
        if let Some(before) = history
            .handed_out
            .insert((incarnation, cursor.position()), text.clone())
        {
            assert_eq!(
                before,
                text,
                "round {round}: ({incarnation}, {}) handed out twice",
                cursor.position()
            );
        }
        lines_of_round.push((session, cursor, durable));
    }
    if lines_of_round.is_empty() {
        history.rounds_without_output += 1;
    }

    // The log, directly.
    let log = open_log(dir);
    let mut metas = Vec::new();
    for (session, touched) in touched.iter().enumerate() {
        let Some(meta) = log.meta(&key(session)).expect("meta") else {
            assert_eq!(
                history.tails[session], 0,
                "round {round} s{session}: the log forgot the session"
            );
            assert!(
                lines_of_round
                    .iter()
                    .all(|(s, _, durable)| *s != session || !durable),
                "round {round} s{session}: a DURABLE line but the log has no session"
            );
            metas.push(None);
            continue;
        };
        let records = log
            .load_after(&key(session), 0, usize::MAX)
            .expect("load the session's records");
        // The persister may record a life before the child has printed its
        // LIFE line (the session is restored, then announced): a kill in
        // between leaves a life nobody heard of. It can hold no event (the
        // child appends only after announcing every life).
        let previous = history.lives[session].len();
        for life in meta.lives.iter().skip(previous) {
            if history.life_round.contains_key(&life.incarnation) {
                continue;
            }
            assert!(
                touched.is_none(),
                "round {round} s{session}: the child announced another life than {life:?}"
            );
            assert_eq!(
                meta.durable_tail, history.tails[session],
                "round {round} s{session}: unannounced life {life:?} holds events"
            );
            history
                .life_round
                .insert(life.incarnation, (session, round, history.tails[session]));
            history.unannounced_lives += 1;
        }
        let payloads = check_log(history, round, session, &meta, &records);
        let recorded = touched.is_some_and(|i| meta.life_of(i).is_some());
        if touched.is_some() && !recorded {
            history.unrecorded_lives += 1;
        }
        for (s, cursor, durable) in &lines_of_round {
            if *s != session {
                continue;
            }
            let position = cursor.position();
            if *durable {
                assert!(
                    position <= meta.durable_tail,
                    "round {round} s{session}: DURABLE {position} beyond the durable tail {}",
                    meta.durable_tail
                );
            }
            // Whatever the log holds of this life is exactly what was sent.
            if recorded && position <= meta.durable_tail {
                assert_eq!(
                    payloads.get(&position),
                    Some(&payload(session, position, round)),
                    "round {round} s{session}: the payload at {position}"
                );
            }
        }
        if touched.is_some() && !recorded {
            assert_eq!(
                meta.durable_tail, history.tails[session],
                "round {round} s{session}: nothing durable without the life"
            );
        }
        metas.push(Some(meta));
    }

    // The cursors, through a store over the same log: this round's, and a
    // few of earlier rounds' (all of them in the final check).
    let store = parent_store(&log);
    let mut earlier: Vec<_> = history.cursors.clone();
    for _ in 0..earlier.len().saturating_sub(16) {
        let i = rng.range(0, earlier.len() as u64 - 1) as usize;
        earlier.swap_remove(i);
    }
    for (session, cursor, durable) in &lines_of_round {
        let Some(meta) = metas[*session].as_ref() else {
            // The log never recorded the session: only SEEN cursors of its
            // first life (from position 1), lost before its first commit,
            // can be here; every position up to the cursor's was lost.
            assert!(!durable);
            match store.catch_up(cursor) {
                Err(Error::Gap(gap)) => {
                    assert_eq!(gap.reason, GapReason::Lost, "{cursor:?}: {gap:?}");
                    assert_eq!(gap.missed, Some(cursor.position()), "{cursor:?}");
                }
                other => panic!("{cursor:?} of a session the log never saw: {other:?}"),
            }
            continue;
        };
        let verdict = check_cursor(&store, history, *session, meta, cursor);
        if *durable {
            assert!(
                matches!(verdict, Verdict::Resumed | Verdict::AtTail),
                "round {round}: a DURABLE cursor {cursor:?} must resume exactly, got {verdict:?}"
            );
        }
        if verdict == Verdict::UnrecordedLife {
            assert!(
                !strict || first_life(history, cursor),
                "round {round}: {cursor:?} was lost in a crash, but the store answers Reset, not Lost"
            );
        }
        record(history, verdict);
    }
    for (session, cursor_round, cursor, durable) in &earlier {
        let Some(meta) = metas[*session].as_ref() else {
            // Only SEEN cursors of a life the log never recorded.
            assert!(
                !durable,
                "round {round}: DURABLE {cursor:?} of a session the log never saw"
            );
            continue;
        };
        let verdict = check_cursor(&store, history, *session, meta, cursor);
        if *durable {
            assert!(
                matches!(verdict, Verdict::Resumed | Verdict::AtTail),
                "round {round}: DURABLE {cursor:?} of round {cursor_round}: {verdict:?}"
            );
        }
    }
    drop(store);

    for (session, meta) in metas.into_iter().enumerate() {
        if let Some(meta) = meta {
            history.tails[session] = meta.durable_tail;
            history.lives[session] = meta.lives;
        }
    }
    for (session, cursor, durable) in lines_of_round {
        history.cursors.push((session, round, cursor, durable));
    }
    let last = run.lines.iter().rev().find_map(|l| match l {
        Line::Durable { position, .. } => Some(*position),
        _ => None,
    });
    println!(
        "round {round:>2}: ran {:>3} ms, {:>3} lines, tails {:?}, last DURABLE {last:?}",
        run.ran_for.as_millis(),
        run.lines.len(),
        history.tails
    );
    drop(log);
}

/// After every round: every cursor ever printed, and a full catch-up of
/// each session from the start, through the ring to live.
fn final_check(history: &mut History, dir: &Path, strict: bool) {
    let log = open_log(dir);
    let store = parent_store(&log);
    let metas: Vec<_> = (0..SESSIONS)
        .map(|s| log.meta(&key(s)).expect("meta"))
        .collect();
    let cursors = history.cursors.clone();
    for (session, round, cursor, durable) in &cursors {
        let Some(meta) = metas[*session].as_ref() else {
            assert!(
                !durable && !strict,
                "round {round}: {cursor:?} of a session the log never saw"
            );
            continue;
        };
        let verdict = check_cursor(&store, history, *session, meta, cursor);
        if *durable {
            assert!(
                matches!(verdict, Verdict::Resumed | Verdict::AtTail),
                "DURABLE {cursor:?} of round {round}: {verdict:?}"
            );
        }
        assert!(
            !strict || verdict != Verdict::UnrecordedLife || first_life(history, cursor),
            "{cursor:?}: Reset, not Lost"
        );
    }
    for (session, meta) in metas.iter().enumerate() {
        let Some(meta) = meta else { continue };
        let mut all = store
            .catch_up(&Cursor::start(key(session)))
            .expect("catch up from the start");
        for position in 1..=meta.durable_tail {
            let event = all
                .next_timeout(Duration::from_secs(5))
                .unwrap_or_else(|e| {
                    panic!(
                        "s{session}: event {position} of {}: {e:?}",
                        meta.durable_tail
                    )
                });
            assert_eq!(event.position(), position);
            let life = covering_life(&meta.lives, position).expect("covered");
            assert_eq!(event.incarnation(), life.incarnation);
            assert_eq!(
                event.payload(),
                &expected_payload(history, session, life.incarnation, position)
            );
        }
        // Nothing after the tail. A reader does not restore the session (it
        // would record a life per read): the catch-up waits until a writer
        // makes it resident, then hands over to the ring.
        assert!(matches!(all.try_next(), Err(TryNextError::Empty)));
        assert!(!all.is_live(), "s{session}: no ring until someone writes");
        let next = store
            .append(&key(session), Revision(1), "after the crashes".to_string())
            .expect("append after the rounds");
        assert_eq!(next.position(), meta.durable_tail + 1);
        let live = all
            .next_timeout(Duration::from_secs(5))
            .expect("the writer's event");
        assert_eq!(live.position(), next.position());
        // The event may come from the log (the persister can write it
        // between the catch-up's look for a resident session and its log
        // read: seen under load); the next step finds the ring either way.
        assert!(matches!(all.try_next(), Err(TryNextError::Empty)));
        assert!(
            all.is_live(),
            "s{session}: at the tail the catch-up reads the ring"
        );
    }
    drop(store);
    drop(log);
}

#[test]
fn crash_rounds() {
    crash_rounds_in(TempDir::new());
}

/// The same rounds with the log's journal (`RedbDurability::Journaled`):
/// every acknowledged append must survive the kills as with redb's own
/// durable commits, whether a kill lands in a frame, between a frame and
/// its commit, or in a checkpoint.
#[test]
fn crash_rounds_journaled() {
    let dir = TempDir::new();
    std::fs::write(dir.0.join(JOURNALED_MARKER), b"").expect("mark the directory");
    crash_rounds_in(dir);
}

fn crash_rounds_in(dir: TempDir) {
    let rounds = env_u64("LIVEREPLAY_CRASH_ROUNDS")
        .unwrap_or(20)
        .clamp(1, 500);
    let strict = std::env::var("LIVEREPLAY_CRASH_STRICT").map_or(true, |v| v != "0");
    let seed = env_u64("LIVEREPLAY_CRASH_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64
    });
    println!("crash test: {rounds} rounds, seed {seed} (replay with LIVEREPLAY_CRASH_SEED={seed})");
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    if std::env::var_os("LIVEREPLAY_CRASH_CREATE_IN_CHILD").is_none() {
        // A kill while the very first open creates the file can leave a
        // file redb refuses ("magic number mismatch"); this test is about
        // appends and restarts, so the file exists before the first child.
        drop(open_log(&dir.0));
    }
    let mut history = History::default();
    for round in 1..=rounds {
        round_once(&mut history, &dir.0, round, &mut rng, strict);
    }
    final_check(&mut history, &dir.0, strict);

    // Positions never repeat under one incarnation: checked as lines came
    // in; here, that the run exercised what it claims to.
    if kill_window().0 >= 20 {
        assert!(
            history.durable_lines > 0,
            "no child ever got an event durable"
        );
        assert!(history.resumed_exactly > 0, "no cursor was resumed");
    }
    println!(
        "crash test: {rounds} rounds in {:.1} s: {} DURABLE and {} SEEN lines, {} distinct (incarnation, position); \
         {} cursors resumed exactly, {} at the tail, {} Lost gaps ({} events); \
         {} lives the kill beat the log to ({} cursors answered Reset); {} lives recorded before the child announced them; \
         {} rounds killed before any output; tails {:?}",
        started.elapsed().as_secs_f64(),
        history.durable_lines,
        history.seen_lines,
        history.handed_out.len(),
        history.resumed_exactly,
        history.at_tail,
        history.lost_gaps,
        history.lost_events,
        history.unrecorded_lives,
        history.unrecorded_cursors,
        history.unannounced_lives,
        history.rounds_without_output,
        history.tails,
    );
}
