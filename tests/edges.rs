//! The tiers' edges (issue 21): removal racing re-creation, removed sessions
//! freed, a predecessor that can never become durable, a tombstone revived
//! under a shared log, holes that must not count as durable, a log error at
//! catch-up start, a successor's watermark, and the persister's backoff when
//! the log refuses a session for good.
//!
//! Each test was written against the code before its fix and failed there;
//! it stays as the regression test. Stores run without a persister thread
//! (`DurableOptions::with_persister_thread(false)`) where the order of
//! commits matters, so each test chooses exactly when the log is written.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use livereplay::durable::{
    DurableLog, HoleReason, IndexStore, LogError, LogRecord, LogWatch, MemoryLog, RecordBody,
    SessionMeta, SessionWrite,
};
use livereplay::{
    Codec, CodecError, Config, DurableError, DurableOptions, Error, Refusal, ReplayStore, Revision,
    SessionKey, Utf8,
};

const WAIT: Duration = Duration::from_secs(5);

fn key(session: &str) -> SessionKey {
    SessionKey::new("tenant", session).unwrap()
}

/// A store over `log` whose persister runs only when the test calls
/// `persist_round` (see [`drain`]).
fn manual_store(log: Arc<dyn DurableLog>, capacity: usize) -> ReplayStore<String> {
    ReplayStore::builder()
        .config(
            Config::default()
                .with_capacity(capacity)
                .with_auto_sweep(false),
        )
        .durable(log, Utf8)
        .durable_options(DurableOptions::default().with_persister_thread(false))
        .build()
        .unwrap()
}

/// [`manual_store`] with no budget for undurable events: what its rings
/// lap before the persister wrote it is a hole at once (the tests of
/// holes use it; see [`a_burst_into_a_healthy_log_loses_nothing`]).
fn no_budget_store(log: Arc<dyn DurableLog>, capacity: usize) -> ReplayStore<String> {
    ReplayStore::builder()
        .config(
            Config::default()
                .with_capacity(capacity)
                .with_auto_sweep(false),
        )
        .durable(log, Utf8)
        .durable_options(
            DurableOptions::default()
                .with_persister_thread(false)
                .with_undurable_budget(0),
        )
        .build()
        .unwrap()
}

/// Runs persister rounds until nothing is queued (at most `100`, so a
/// session queued again for ever fails the test instead of hanging it).
fn drain<T: Send + Sync + 'static>(store: &ReplayStore<T>) -> usize {
    for round in 0..100 {
        if store.persist_round().is_none() {
            return round;
        }
    }
    panic!("the persister still had work after 100 rounds");
}

/// What the log holds for `key`: `(position, incarnation, Some(payload))`
/// per event, `None` for each position of a hole.
fn logged(log: &dyn DurableLog, key: &SessionKey) -> Vec<(u64, u64, Option<String>)> {
    let mut out = Vec::new();
    for record in log.load_after(key, 0, usize::MAX).unwrap() {
        match record.body {
            RecordBody::Event(event) => out.push((
                record.position,
                record.incarnation.get(),
                Some(String::from_utf8(event.payload).unwrap()),
            )),
            RecordBody::Hole { count, .. } => {
                for p in record.position..record.position + count {
                    out.push((p, record.incarnation.get(), None));
                }
            }
        }
    }
    out
}

/// The payloads of the events the log holds for `key`, in order; panics
/// on a hole (the tests that call it expect none).
fn logged_payloads(log: &dyn DurableLog, key: &SessionKey) -> Vec<String> {
    logged(log, key)
        .into_iter()
        .map(|(position, _, payload)| payload.unwrap_or_else(|| panic!("a hole at {position}")))
        .collect()
}

/// A log the tests steer: reads of the meta can be made to fail or to stop
/// at a gate (for calls from threads named [`GATED`]), and appends can be
/// refused as the log would refuse a writer it does not follow.
struct SteeredLog {
    inner: MemoryLog,
    fail_meta: AtomicBool,
    refuse_appends: AtomicBool,
    appends: AtomicU64,
    /// Met twice by a gated `meta` call: once when it has read the log,
    /// once before it returns.
    gate: Barrier,
}

/// Calls to `meta` from a thread with this name stop at the gate.
const GATED: &str = "gated";

impl SteeredLog {
    fn new(inner: MemoryLog) -> Self {
        Self {
            inner,
            fail_meta: AtomicBool::new(false),
            refuse_appends: AtomicBool::new(false),
            appends: AtomicU64::new(0),
            gate: Barrier::new(2),
        }
    }
}

impl DurableLog for SteeredLog {
    fn append(&self, writes: &[SessionWrite<'_>]) -> Result<(), LogError> {
        self.appends.fetch_add(1, SeqCst);
        if self.refuse_appends.load(SeqCst) {
            let write = &writes[0];
            let tail = self.inner.meta(write.key)?.map_or(0, |m| m.durable_tail);
            return Err(LogError::NotContiguous {
                key: write.key.clone(),
                tail,
                got: tail + 1,
            });
        }
        self.inner.append(writes)
    }
    fn load_after(
        &self,
        key: &SessionKey,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        self.inner.load_after(key, after, limit)
    }
    fn meta(&self, key: &SessionKey) -> Result<Option<SessionMeta>, LogError> {
        if self.fail_meta.load(SeqCst) {
            return Err(LogError::Backend("the log is unreachable (test)".into()));
        }
        let meta = self.inner.meta(key);
        if std::thread::current().name() == Some(GATED) {
            self.gate.wait();
            self.gate.wait();
        }
        meta
    }
    fn archive_before(&self, key: &SessionKey, watermark: u64) -> Result<u64, LogError> {
        self.inner.archive_before(key, watermark)
    }
    fn sessions(
        &self,
        tenant: &str,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<SessionKey>, LogError> {
        self.inner.sessions(tenant, limit, offset)
    }
    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }
    fn watch(&self) -> Option<&dyn LogWatch> {
        self.inner.watch()
    }
    fn index(&self) -> Option<&dyn IndexStore> {
        self.inner.index()
    }
}

/// A waker that, when woken, says so and then blocks until released: a
/// subscriber parked with it stops `remove_session` inside the ring's
/// close, where it wakes subscribers.
struct BlockingWaker {
    woken: Barrier,
    release: Barrier,
    once: AtomicBool,
}

impl Wake for BlockingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if !self.once.swap(true, SeqCst) {
            self.woken.wait();
            self.release.wait();
        }
    }
}

/// Item 1: `remove_session` stopped inside `ring.close()` (a subscriber's
/// waker blocks), then an append by key re-creates the session. The new
/// life must continue after the removed one's last position, and every
/// accepted event of both lives must reach the log.
#[test]
fn a_recreation_inside_the_removals_close_continues_after_it() {
    let log = Arc::new(MemoryLog::new());
    let store = Arc::new(manual_store(log.clone(), 16));
    let k = key("racing-close");
    for n in 1..=3 {
        store.append(&k, Revision(1), format!("old{n}")).unwrap();
    }
    // Park a subscriber at the tail with the blocking waker.
    let waker = Arc::new(BlockingWaker {
        woken: Barrier::new(2),
        release: Barrier::new(2),
        once: AtomicBool::new(false),
    });
    let mut subscription = store
        .subscribe_after_cursor(&store.current_cursor(&k))
        .unwrap();
    let std_waker = Waker::from(waker.clone());
    let mut cx = Context::from_waker(&std_waker);
    assert!(matches!(
        futures_util::Stream::poll_next(std::pin::Pin::new(&mut subscription), &mut cx),
        Poll::Pending
    ));
    let remover = {
        let store = store.clone();
        let k = k.clone();
        std::thread::spawn(move || store.remove_session(&k))
    };
    waker.woken.wait(); // the removal is inside close()
    let fresh = store.append(&k, Revision(2), "new4".into()).unwrap();
    waker.release.wait();
    assert!(remover.join().unwrap());
    drop(subscription);
    assert_eq!(
        fresh.position(),
        4,
        "the new life must continue after the removed one"
    );
    drain(&store);
    assert_eq!(logged_payloads(&*log, &k), ["old1", "old2", "old3", "new4"]);
    assert_eq!(store.stats().durable.unwrap().fenced_sessions, 0);
}

/// Item 1, the second window: a restore that read the log before the key
/// was created, written to and removed (a slow Redis round trip) must not
/// be used: its meta is stale.
#[test]
fn a_restore_that_read_the_log_before_a_removal_is_not_used() {
    let log = Arc::new(SteeredLog::new(MemoryLog::new()));
    let store = Arc::new(manual_store(log.clone(), 16));
    let k = key("slow-restore");
    let slow = {
        let store = store.clone();
        let k = k.clone();
        std::thread::Builder::new()
            .name(GATED.into())
            .spawn(move || store.append(&k, Revision(2), "slow".into()).unwrap())
            .unwrap()
    };
    log.gate.wait(); // the slow restore read "never heard of it"
    for n in 1..=3 {
        store.append(&k, Revision(1), format!("old{n}")).unwrap();
    }
    assert!(store.remove_session(&k));
    log.gate.wait(); // let the slow restore return its stale answer
    let slow = slow.join().unwrap();
    assert_eq!(
        slow.position(),
        4,
        "a stale restore handed out a position again"
    );
    drain(&*store);
    let payloads = logged_payloads(&*log, &k);
    assert_eq!(payloads, ["old1", "old2", "old3", "slow"]);
    assert_eq!(store.stats().durable.unwrap().fenced_sessions, 0);
}

/// Counts live payloads, so a test can see a session's ring freed.
struct Tracked {
    text: String,
    live: Arc<AtomicUsize>,
}

impl Tracked {
    fn new(text: &str, live: &Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, SeqCst);
        Self {
            text: text.into(),
            live: live.clone(),
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.live.fetch_sub(1, SeqCst);
    }
}

struct TrackedCodec(Arc<AtomicUsize>);

impl Codec<Tracked> for TrackedCodec {
    fn encode(&self, payload: &Tracked, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.extend_from_slice(payload.text.as_bytes());
        Ok(())
    }
    fn decode(&self, bytes: &[u8]) -> Result<Tracked, CodecError> {
        Ok(Tracked::new(std::str::from_utf8(bytes).unwrap(), &self.0))
    }
}

fn tracked_store(live: &Arc<AtomicUsize>, thread: bool) -> ReplayStore<Tracked> {
    ReplayStore::builder()
        .config(Config::default().with_capacity(8).with_auto_sweep(false))
        .durable(Arc::new(MemoryLog::new()), TrackedCodec(live.clone()))
        .durable_options(DurableOptions::default().with_persister_thread(thread))
        .build()
        .unwrap()
}

/// Item 2: a session removed before its events were durable (the normal
/// case: remove right after the turn's last append) is freed once the
/// persister has written them, without the key ever being used again.
#[test]
fn a_removed_session_is_freed_once_its_events_are_durable() {
    let live = Arc::new(AtomicUsize::new(0));
    let store = tracked_store(&live, false);
    for s in 0..5 {
        let k = key(&format!("freed-{s}"));
        for n in 0..4 {
            store
                .append(&k, Revision(1), Tracked::new(&format!("e{n}"), &live))
                .unwrap();
        }
        assert!(store.remove_session(&k));
    }
    assert_eq!(
        live.load(SeqCst),
        20,
        "removed sessions keep their events until durable"
    );
    drain(&store);
    assert_eq!(
        live.load(SeqCst),
        0,
        "removed sessions were kept after they were durable"
    );
}

/// Item 2: dropping a store frees removed sessions whose events never
/// became durable (no reference cycle outlives it).
#[test]
fn dropping_the_store_frees_removed_sessions() {
    let live = Arc::new(AtomicUsize::new(0));
    let store = tracked_store(&live, false);
    let k = key("dropped");
    store
        .append(&k, Revision(1), Tracked::new("e", &live))
        .unwrap();
    assert!(store.remove_session(&k));
    drop(store);
    assert_eq!(live.load(SeqCst), 0, "a removed session outlived its store");
}

/// Item 7: a session re-created while the removed one's events are not
/// durable does not report them durable.
#[test]
fn a_successor_does_not_report_its_predecessors_positions_durable() {
    let log = Arc::new(MemoryLog::new());
    let store = manual_store(log, 16);
    let k = key("successor");
    for n in 1..=3 {
        store.append(&k, Revision(1), format!("old{n}")).unwrap();
    }
    store.remove_session(&k);
    let fresh = store.append(&k, Revision(2), "new".into()).unwrap();
    assert_eq!(fresh.position(), 4);
    assert_eq!(store.durable_position(&k).unwrap(), Some(0));
    assert!(matches!(
        store.wait_durable(&k, 2, Duration::ZERO),
        Err(DurableError::Timeout { durable: 0, .. })
    ));
    drain(&store);
    assert_eq!(store.durable_position(&k).unwrap(), Some(4));
    assert_eq!(store.wait_durable(&k, 2, WAIT).unwrap(), 4);
}

/// Two nodes over one shared log: node A wrote "a1" at position 1 of
/// `session` and persisted it, then node B took the session over and wrote
/// `b_payloads` from position 2 on, persisted. A still holds its session.
fn taken_over(
    session: &str,
    b_payloads: &[&str],
) -> (
    Arc<MemoryLog>,
    ReplayStore<String>,
    ReplayStore<String>,
    SessionKey,
) {
    let log = Arc::new(MemoryLog::shared());
    let a = manual_store(log.clone(), 16);
    let b = manual_store(log.clone(), 16);
    let k = key(session);
    a.append(&k, Revision(1), "a1".into()).unwrap();
    drain(&a);
    for (payload, position) in b_payloads.iter().zip(2..) {
        let event = b.append(&k, Revision(1), (*payload).into()).unwrap();
        assert_eq!(event.position(), position, "B continues after A");
    }
    drain(&b);
    (log, a, b, k)
}

/// Item 3: a removed session that another writer fenced can never become
/// durable; its successor on this node must not wait for it for ever.
/// Both are counted, with the key.
#[test]
fn a_fenced_predecessor_does_not_block_its_key() {
    let (log, a, _b, k) = taken_over("fenced-predecessor", &["b2", "b3"]);
    // A, still resident, appends (its position 2 clashes), removes, and
    // re-creates the session, which continues after A's position 2.
    a.append(&k, Revision(1), "a2".into()).unwrap();
    a.remove_session(&k);
    assert_eq!(
        a.append(&k, Revision(1), "a3".into()).unwrap().position(),
        3
    );
    drain(&a);
    let durable = a.stats().durable.unwrap();
    assert_eq!(durable.fenced_sessions, 2, "{durable:?}");
    assert_eq!(durable.waiting_sessions, 0, "{durable:?}");
    assert_eq!(durable.last_fenced.as_ref(), Some(&k));
    // Nothing of A's after the take-over is in the log, and B's data stands.
    let payloads = logged_payloads(&*log, &k);
    assert_eq!(payloads, ["a1", "b2", "b3"]);
}

/// Item 4: node A evicts a session to a tombstone, node B writes it, the
/// next append lands on A again: A must continue after B's life (asking
/// the shared log), not revive its own at a position B used.
#[test]
fn a_tombstone_is_not_revived_over_another_nodes_newer_life() {
    let log = Arc::new(MemoryLog::shared());
    let a = manual_store(log.clone(), 4);
    let b = manual_store(log.clone(), 4);
    let k = key("takeover");
    a.append(&k, Revision(1), "a1".into()).unwrap();
    drain(&a);
    a.release_through(&k, 1);
    a.trim_session(&k);
    assert!(
        !a.is_resident(&k) && a.contains_session(&k),
        "A keeps a tombstone"
    );
    assert_eq!(
        b.append(&k, Revision(1), "b2".into()).unwrap().position(),
        2
    );
    drain(&b);
    let back = a.append(&k, Revision(1), "a3".into()).unwrap();
    assert_eq!(
        back.position(),
        3,
        "A revived its tombstone under B's position"
    );
    drain(&a);
    assert_eq!(a.stats().durable.unwrap().fenced_sessions, 0);
    let payloads = logged_payloads(&*log, &k);
    assert_eq!(payloads, ["a1", "b2", "a3"]);
}

/// Item 5: positions the log records as a hole are never reported durable.
#[test]
fn a_hole_is_not_durable() {
    let log = Arc::new(MemoryLog::new());
    let store = no_budget_store(log.clone(), 4);
    let k = key("hole");
    for n in 1..=10 {
        store.append(&k, Revision(1), format!("e{n}")).unwrap();
    }
    drain(&store); // the ring lapped 1..=4 and kept nothing: a hole there
    let records = logged(&*log, &k);
    assert_eq!(records.iter().filter(|r| r.2.is_none()).count(), 4);
    match store.wait_durable(&k, 3, WAIT) {
        Err(DurableError::Lost {
            position: 3,
            through: 4,
            reason,
        }) => {
            assert_eq!(reason, HoleReason::Lapped)
        }
        other => panic!("a lapped position was reported as {other:?}"),
    }
    assert_eq!(store.wait_durable(&k, 8, WAIT).unwrap(), 10);
}

/// Item 6: a log that cannot answer at catch-up start is an error the
/// caller can retry (503 over HTTP), not a gap that makes a client throw
/// its state away. The session is not in memory (the process restarted),
/// so only the log can judge the cursor.
#[test]
fn a_log_error_at_catch_up_start_is_not_a_gap() {
    let log = Arc::new(SteeredLog::new(MemoryLog::new()));
    let k = key("unreachable");
    let mut cursors = Vec::new();
    {
        let store = manual_store(log.clone(), 4);
        for n in 1..=8 {
            cursors.push(
                store
                    .append(&k, Revision(1), format!("e{n}"))
                    .unwrap()
                    .cursor(),
            );
            drain(&store);
        }
    }
    let store = manual_store(log.clone(), 4);
    log.fail_meta.store(true, SeqCst);
    match store.catch_up(&cursors[1]) {
        Err(Error::Refused(Refusal::LogUnavailable { .. })) => {}
        Err(other) => panic!("an unreachable log was reported as {other:?}"),
        Ok(_) => panic!("catch-up started without the log"),
    }
    assert_eq!(store.stats().gaps_lost + store.stats().gaps_reset, 0);
    log.fail_meta.store(false, SeqCst);
    let mut catch_up = store.catch_up(&cursors[1]).unwrap();
    for n in 3..=8 {
        assert_eq!(
            *catch_up.next_timeout(WAIT).unwrap().payload(),
            format!("e{n}")
        );
    }
}

/// Item 8: a round whose every session the log refused, and that resync
/// could not resolve, counts as a failure: the persister backs off instead
/// of hammering the log.
#[test]
fn a_refused_round_backs_off() {
    let log = Arc::new(SteeredLog::new(MemoryLog::new()));
    let store = ReplayStore::<String>::builder()
        .durable(log.clone(), Utf8)
        .durable_options(DurableOptions::default().with_flush_interval(Duration::from_millis(1)))
        .build()
        .unwrap();
    let k = key("refused");
    store.append(&k, Revision(1), "e".into()).unwrap();
    store.wait_durable(&k, 1, WAIT).unwrap();
    log.refuse_appends.store(true, SeqCst);
    store.append(&k, Revision(1), "f".into()).unwrap();
    let before = log.appends.load(SeqCst);
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(300) {
        std::thread::sleep(Duration::from_millis(10));
        drop(store.durable_progress()); // a waiter nudging the persister
    }
    let calls = log.appends.load(SeqCst) - before;
    // Backing off from 10 ms, doubling: about 5 attempts in 300 ms.
    assert!(
        calls <= 20,
        "{calls} appends in 300 ms: the persister did not back off"
    );
    log.refuse_appends.store(false, SeqCst);
}

/// Item 10: `wait_durable` on a session removed a moment ago waits for its
/// events to reach the log (they still do), instead of answering that the
/// position was never appended.
#[test]
fn a_wait_on_a_just_removed_session_waits_for_its_events() {
    let log = Arc::new(MemoryLog::new());
    let store = Arc::new(manual_store(log, 16));
    let k = key("just-removed");
    for n in 1..=3 {
        store.append(&k, Revision(1), format!("e{n}")).unwrap();
    }
    assert!(store.remove_session(&k));
    let persister = {
        let store = store.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drain(&*store);
        })
    };
    assert_eq!(store.wait_durable(&k, 3, WAIT).unwrap(), 3);
    persister.join().unwrap();
    assert!(matches!(
        store.wait_durable(&k, 4, WAIT),
        Err(DurableError::NoSuchPosition {
            position: 4,
            last: 3
        })
    ));
}

/// Item 10: a catch-up in flight when its session is removed (and then
/// re-created) goes on from the log, which continues the history: the
/// removed life's events, then the new life's, exactly once, no gap.
#[test]
fn a_catch_up_survives_the_removal_of_its_session() {
    let log = Arc::new(MemoryLog::new());
    let store = manual_store(log, 16);
    let k = key("removed-under-a-reader");
    for n in 1..=3 {
        store.append(&k, Revision(1), format!("e{n}")).unwrap();
    }
    drain(&store);
    let mut catch_up = store
        .catch_up(&livereplay::Cursor::start(k.clone()))
        .unwrap();
    assert_eq!(*catch_up.try_next().unwrap().payload(), "e1");
    assert!(store.remove_session(&k));
    store.append(&k, Revision(2), "e4".into()).unwrap();
    drain(&store);
    let mut rest = Vec::new();
    for _ in 0..3 {
        match catch_up.next_timeout(WAIT) {
            Ok(event) => rest.push(event.payload().clone()),
            Err(error) => panic!("after {rest:?}: {error:?}"),
        }
    }
    assert_eq!(rest, ["e2", "e3", "e4"]);
    let stats = store.stats();
    assert_eq!(
        stats.gaps_reset + stats.gaps_lost + stats.gaps_unavailable,
        0
    );
}

/// Item 10: without a log, a catch-up whose session is removed ends with
/// one `Reset` gap, counted once.
#[test]
fn a_reset_gap_is_counted_once() {
    let store = ReplayStore::<String>::new(Config::default()).unwrap();
    let k = key("reset-once");
    store.append(&k, Revision(1), "e1".into()).unwrap();
    let mut catch_up = store
        .catch_up(&livereplay::Cursor::start(k.clone()))
        .unwrap();
    assert_eq!(*catch_up.try_next().unwrap().payload(), "e1");
    assert!(matches!(
        catch_up.try_next(),
        Err(livereplay::TryNextError::Empty)
    ));
    assert!(store.remove_session(&k));
    match catch_up.try_next() {
        Err(livereplay::TryNextError::Gap(gap)) => {
            assert_eq!(gap.reason, livereplay::GapReason::Reset)
        }
        other => panic!("expected a reset gap, got {other:?}"),
    }
    assert_eq!(store.stats().gaps_reset, 1);
}

/// Item 10: a catch-up read as a `Stream` whose log read failed (a blip)
/// tries again by itself once the log is back, on an idle session with
/// no commit to wake it (the writer's node: the session is resident, its
/// ring holds only the newest events, the reader is behind them).
#[tokio::test]
async fn a_catch_up_stream_retries_after_a_log_blip() {
    let log = Arc::new(SteeredLog::new(MemoryLog::new()));
    let store = ReplayStore::<String>::builder()
        .config(Config::default().with_capacity(4))
        .durable(log.clone(), Utf8)
        .build()
        .unwrap();
    let k = key("blip");
    let mut cursors = Vec::new();
    for n in 1..=8 {
        let event = store.append(&k, Revision(1), format!("e{n}")).unwrap();
        store.wait_durable(&k, event.position(), WAIT).unwrap();
        cursors.push(event.cursor());
    }
    let mut catch_up = store.catch_up(&cursors[1]).unwrap();
    log.fail_meta.store(true, SeqCst);
    let healer = {
        let log = log.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            log.fail_meta.store(false, SeqCst);
        })
    };
    // Polled while the log fails, then left to its waker. (A timeout's
    // own timer would poll it again when it fires: the time it took is
    // what tells a retry from a stall.)
    let started = Instant::now();
    let next = tokio::time::timeout(
        Duration::from_secs(3),
        std::future::poll_fn(|cx| {
            futures_util::Stream::poll_next(std::pin::Pin::new(&mut catch_up), cx)
        }),
    )
    .await;
    let took = started.elapsed();
    healer.join().unwrap();
    assert!(
        took < Duration::from_secs(2),
        "the catch-up stalled for {took:?} after the log came back"
    );
    assert_eq!(*next.unwrap().unwrap().unwrap().payload(), "e3");
}

/// Item 4: a session fenced by another node's take-over is evictable (it
/// leaked a resident session per take-over until `max_sessions` refused new
/// ones): its ring may be trimmed, and a sweep evicts it.
#[test]
fn a_fenced_session_is_evicted() {
    let (log, a, _b, k) = taken_over("fenced-evicted", &["b2"]);
    a.append(&k, Revision(1), "a2".into()).unwrap(); // clashes with B's 2
    drain(&a);
    assert_eq!(a.stats().durable.unwrap().fenced_sessions, 1);
    a.release_through(&k, 2);
    assert_eq!(a.sweep(), 1, "the fenced session was not evicted");
    assert!(!a.is_resident(&k));
    // A's "a2" was accepted and never written: counted once it is gone.
    assert_eq!(a.stats().durable.unwrap().fenced_events, 1);
    // The next append on A asks the shared log and continues after B.
    assert_eq!(
        a.append(&k, Revision(1), "a3".into()).unwrap().position(),
        3
    );
    drain(&a);
    let payloads = logged_payloads(&*log, &k);
    assert_eq!(payloads, ["a1", "b2", "a3"]);
}

/// Item 10: a handle that outlives its durable store is refused, instead of
/// accepting events no tier will ever hold.
#[test]
fn a_handle_outliving_its_store_is_refused() {
    let store = manual_store(Arc::new(MemoryLog::new()), 16);
    let handle = store.session(&key("outlived")).unwrap();
    handle.append(Revision(1), "kept".into()).unwrap();
    drop(store);
    assert!(matches!(
        handle.append(Revision(1), "after".into()),
        Err(Error::Refused(Refusal::SessionRemoved))
    ));
}

/// Persister rounds until nothing is queued, for a run with many events
/// (each round writes at most one batch).
fn drain_all<T: Send + Sync + 'static>(store: &ReplayStore<T>) {
    for _ in 0..100_000 {
        if store.persist_round().is_none() {
            return;
        }
    }
    panic!("the persister still had work after 100 000 rounds");
}

/// Item 11: a burst into a healthy log is not turned into holes. One writer
/// appends 100 000 events round-robin over 100 sessions of capacity 64
/// before the persister writes anything (the persister as far behind as it
/// can be): every event still reaches the log, because the rings keep
/// their undurable tails past their capacity within the store's budget
/// for undurable events (the default is far above this burst).
#[test]
fn a_burst_into_a_healthy_log_loses_nothing() {
    let log = Arc::new(MemoryLog::new());
    let store = manual_store(log.clone(), 64);
    let keys: Vec<SessionKey> = (0..100).map(|i| key(&format!("burst-{i}"))).collect();
    for round in 0..1_000 {
        for k in &keys {
            store.append(k, Revision(1), format!("e{round}")).unwrap();
        }
    }
    drain_all(&store);
    let stats = store.stats().durable.unwrap();
    assert_eq!((stats.holes, stats.lost_events), (0, 0), "{stats:?}");
    assert_eq!(stats.persisted_events, 100_000);
    for k in &keys {
        let payloads = logged_payloads(&*log, k);
        assert_eq!(payloads.len(), 1_000, "{k:?}");
        assert_eq!(payloads[999], "e999");
        assert!(store.wait_durable(k, 1_000, WAIT).is_ok());
    }
}
