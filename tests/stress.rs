//! Real threads on one session: several writers appending at once, readers
//! replaying after their last cursor, a subscriber waiting with
//! `next_timeout`. Checks the promises of CONTRACT.md sections 2, 3, 5 and 6
//! under contention, where the interleavings the unit tests cannot reach
//! happen:
//!
//! * every reader sees positions contiguous and increasing, no duplicate,
//!   each payload at the position its writer was told, each writer's
//!   events in the writer's order;
//! * nothing acknowledged is silently lost: every position is either seen
//!   or inside a gap's reported `missed` range (no gap at all when the
//!   capacity holds everything);
//! * a batch is visible all at once: no replay ends inside a batch.
//!
//! Thread counts and event counts are fixed and small enough for a debug
//! build on two shared cores; every wait is bounded by `PATIENCE`, whose
//! expiry fails the test.

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use livereplay::{
    Config, Cursor, Error, Gap, GapReason, NextTimeoutError, ReplayStore, Revision, SessionKey,
    Subscription,
};

/// How long any thread may take before the test fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(60);

const WRITERS: usize = 3;
const READERS: usize = 2;

fn session_key() -> SessionKey {
    SessionKey::new("stress", "one-session").expect("a valid key")
}

fn store_with_capacity<T: Send + Sync + 'static>(capacity: usize) -> Arc<ReplayStore<T>> {
    // The system clock and the default 120 s max_age: nothing ages out in
    // a run, only capacity trims.
    Arc::new(ReplayStore::new(Config::default().with_capacity(capacity)).expect("a valid config"))
}

/// What one reader or subscriber observed.
#[derive(Default)]
struct Observed<P> {
    /// `(position, payload)` in the order received.
    seen: Vec<(u64, P)>,
    /// Inclusive position ranges a gap reported as missed.
    missed: Vec<(u64, u64)>,
    /// Gaps that reported no missed position.
    empty_gaps: usize,
}

impl<P> Observed<P> {
    fn new() -> Self {
        Self {
            seen: Vec::new(),
            missed: Vec::new(),
            empty_gaps: 0,
        }
    }

    /// Records a gap found after `last` and returns the position to resume
    /// after: the last one it says is missed.
    fn record_gap(&mut self, gap: &Gap, last: u64) -> u64 {
        assert_eq!(gap.reason, GapReason::Trimmed, "only capacity trims here");
        let missed = gap.missed.expect("a trimmed gap says how many were missed");
        assert!(
            last + missed <= gap.latest.position(),
            "missed {missed} after {last} runs past the latest cursor {}",
            gap.latest.position()
        );
        if missed == 0 {
            self.empty_gaps += 1;
        } else {
            self.missed.push((last + 1, last + missed));
        }
        last + missed
    }

    /// Every position in `1..=total` is seen or missed, exactly once.
    fn assert_accounts_for(&self, total: u64, who: &str) {
        let mut covered = vec![0u32; total as usize + 1];
        for &(position, _) in &self.seen {
            covered[position as usize] += 1;
        }
        for &(first, last) in &self.missed {
            for position in first..=last {
                covered[position as usize] += 1;
            }
        }
        let wrong: Vec<usize> = (1..=total as usize)
            .filter(|&position| covered[position] != 1)
            .take(10)
            .collect();
        assert!(
            wrong.is_empty(),
            "{who}: positions seen or missed other than exactly once: {wrong:?}"
        );
    }

    fn missed_count(&self) -> u64 {
        self.missed
            .iter()
            .map(|&(first, last)| last - first + 1)
            .sum()
    }
}

/// A cursor at `position` of the incarnation `like` belongs to.
fn cursor_at(like: &Cursor, position: u64) -> Cursor {
    Cursor::new(
        like.key().clone(),
        like.incarnation(),
        Revision(0),
        position,
    )
}

fn expect_trimmed_gap(error: Error) -> Gap {
    match error {
        Error::Gap(gap) => gap,
        other => panic!("expected a gap, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Single appends: writers, readers, a subscriber
// ---------------------------------------------------------------------------

/// `(writer id, the writer's sequence number)`.
type Tagged = (usize, u64);

/// Replays after its last cursor until it has accounted for `total`
/// positions, checking each run as it comes.
fn replaying_reader(store: &ReplayStore<Tagged>, key: &SessionKey, total: u64) -> Observed<Tagged> {
    let deadline = Instant::now() + PATIENCE;
    let mut observed = Observed::new();
    let mut cursor = Cursor::start(key.clone());
    while cursor.position() < total {
        assert!(
            Instant::now() < deadline,
            "reader stuck at {}",
            cursor.position()
        );
        match store.replay_after_cursor(&cursor) {
            Ok(events) => {
                if events.is_empty() {
                    thread::yield_now();
                }
                for event in events {
                    assert_eq!(
                        event.position(),
                        cursor.position() + 1,
                        "a replay run is contiguous from its cursor"
                    );
                    observed.seen.push((event.position(), *event.payload()));
                    cursor = event.cursor();
                }
            }
            Err(error) => {
                let gap = expect_trimmed_gap(error);
                let resume = observed.record_gap(&gap, cursor.position());
                cursor = cursor_at(&gap.latest, resume);
            }
        }
    }
    observed
}

/// Subscribes from the start and waits for events with `next_timeout`,
/// resubscribing after every gap, until it has accounted for `total`.
fn waiting_subscriber(
    store: &ReplayStore<Tagged>,
    key: &SessionKey,
    total: u64,
) -> Observed<Tagged> {
    let deadline = Instant::now() + PATIENCE;
    let mut observed = Observed::new();
    let mut last = 0;
    let mut resume_at = Cursor::start(key.clone());
    let mut subscription: Option<Subscription<Tagged>> = None;
    while last < total {
        assert!(Instant::now() < deadline, "subscriber stuck at {last}");
        let Some(live) = subscription.as_mut() else {
            match store.subscribe_after_cursor(&resume_at) {
                Ok(fresh) => subscription = Some(fresh),
                Err(error) => {
                    let gap = expect_trimmed_gap(error);
                    last = observed.record_gap(&gap, last);
                    resume_at = cursor_at(&gap.latest, last);
                }
            }
            continue;
        };
        match live.next_timeout(Duration::from_millis(100)) {
            Ok(event) => {
                assert_eq!(event.position(), last + 1, "a subscription skips nothing");
                observed.seen.push((event.position(), *event.payload()));
                last = event.position();
            }
            Err(NextTimeoutError::Timeout) => {}
            Err(NextTimeoutError::Closed(closure)) => {
                panic!("nothing closes this session, yet a reader saw {closure}")
            }
            Err(NextTimeoutError::Gap(gap)) => {
                assert_eq!(gap.requested.position(), last);
                last = observed.record_gap(&gap, last);
                resume_at = cursor_at(&gap.latest, last);
                subscription = None;
            }
            Err(NextTimeoutError::Ended) => panic!("ended without a gap"),
        }
    }
    observed
}

struct Run {
    /// Position → payload, from what every append returned.
    acknowledged: BTreeMap<u64, Tagged>,
    readers: Vec<Observed<Tagged>>,
    subscriber: Observed<Tagged>,
}

fn run_writers_readers_subscriber(capacity: usize, per_writer: u64) -> Run {
    let store = store_with_capacity::<Tagged>(capacity);
    let key = session_key();
    let total = WRITERS as u64 * per_writer;
    let start = Arc::new(Barrier::new(WRITERS + READERS));

    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (store, key, start) = (Arc::clone(&store), key.clone(), Arc::clone(&start));
            thread::spawn(move || {
                // One writer appends through a handle, one through a
                // `SessionWriter` (its kept segment lapped by the others),
                // the others by key: all paths share the session's counter.
                // Nothing fallible before the barrier: a panic there would
                // leave the other threads waiting for ever.
                start.wait();
                let handle = (writer == 0).then(|| store.session(&key).unwrap());
                let mut session_writer =
                    (writer == 1).then(|| store.session(&key).unwrap().writer());
                (0..per_writer)
                    .map(|seq| {
                        let payload = (writer, seq);
                        let position = match &mut session_writer {
                            Some(session_writer) => session_writer.append(Revision(1), payload),
                            None => match &handle {
                                Some(handle) => handle.append(Revision(1), payload),
                                None => store.append(&key, Revision(1), payload),
                            }
                            .map(|event| {
                                assert_eq!(*event.payload(), payload);
                                event.position()
                            }),
                        }
                        .expect("an append within the bounds is accepted");
                        // Let readers in now and then, each writer at its
                        // own pace: on two cores a writer would otherwise
                        // finish within its first time slice and nothing
                        // would interleave.
                        if seq % (writer as u64 + 3) == 0 {
                            thread::yield_now();
                        }
                        (position, payload)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (store, key, start) = (Arc::clone(&store), key.clone(), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                replaying_reader(&store, &key, total)
            })
        })
        .collect();
    let subscriber = {
        let (store, key) = (Arc::clone(&store), key.clone());
        thread::spawn(move || waiting_subscriber(&store, &key, total))
    };

    let mut acknowledged = BTreeMap::new();
    for writer in writers {
        let acks = writer.join().expect("writer panicked");
        assert!(
            acks.windows(2).all(|pair| pair[0].0 < pair[1].0),
            "a writer's own appends get increasing positions"
        );
        for (position, payload) in acks {
            assert!(
                acknowledged.insert(position, payload).is_none(),
                "position {position} handed out twice"
            );
        }
    }
    assert_eq!(
        acknowledged.keys().copied().collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>(),
        "positions are exactly 1..=total"
    );
    assert_eq!(store.latest_position(&key), Some(total));
    let run = Run {
        acknowledged,
        readers: readers
            .into_iter()
            .map(|reader| reader.join().expect("reader panicked"))
            .collect(),
        subscriber: subscriber.join().expect("subscriber panicked"),
    };
    let stats = store.stats();
    assert_eq!(stats.appends, total);
    assert_eq!(stats.retained_events, total.min(capacity as u64));
    assert_eq!((stats.subscribers, stats.parked_subscribers), (0, 0));
    run
}

/// What every observer must satisfy whatever the capacity.
fn check_observer(run: &Run, observed: &Observed<Tagged>, who: &str) {
    let total = run.acknowledged.len() as u64;
    let mut last_position = 0;
    let mut last_seq_of = [None::<u64>; WRITERS];
    for &(position, payload) in &observed.seen {
        assert!(
            position > last_position,
            "{who}: {position} after {last_position}"
        );
        last_position = position;
        assert_eq!(
            run.acknowledged.get(&position),
            Some(&payload),
            "{who}: wrong payload at {position}"
        );
        let (writer, seq) = payload;
        assert!(
            last_seq_of[writer].is_none_or(|previous| previous < seq),
            "{who}: writer {writer}'s events out of order"
        );
        last_seq_of[writer] = Some(seq);
    }
    observed.assert_accounts_for(total, who);
    assert_eq!(
        observed.empty_gaps, 0,
        "{who}: a gap reported 0 missed events"
    );
}

#[test]
fn concurrent_writers_readers_and_subscriber_with_room_for_everything() {
    const PER_WRITER: u64 = 2000;
    let run = run_writers_readers_subscriber(8192, PER_WRITER);
    let total = WRITERS as u64 * PER_WRITER;
    for (index, reader) in run.readers.iter().enumerate() {
        let who = format!("reader {index}");
        check_observer(&run, reader, &who);
        assert!(reader.missed.is_empty(), "{who}: a gap without trimming");
        assert_eq!(reader.seen.len() as u64, total);
    }
    check_observer(&run, &run.subscriber, "subscriber");
    assert!(
        run.subscriber.missed.is_empty(),
        "subscriber: a gap without trimming"
    );
    assert_eq!(run.subscriber.seen.len() as u64, total);
}

/// Writers overrun `capacity`: every observer sees or is told of every
/// event, in order, as `check_observer` checks.
fn overrun(capacity: usize) {
    const PER_WRITER: u64 = 2000;
    let run = run_writers_readers_subscriber(capacity, PER_WRITER);
    let total = WRITERS as u64 * PER_WRITER;
    for (index, reader) in run.readers.iter().enumerate() {
        let who = format!("reader {index}");
        check_observer(&run, reader, &who);
        assert_eq!(reader.seen.len() as u64 + reader.missed_count(), total);
    }
    check_observer(&run, &run.subscriber, "subscriber");
    assert_eq!(
        run.subscriber.seen.len() as u64 + run.subscriber.missed_count(),
        total
    );
}

#[test]
fn concurrent_writers_readers_and_subscriber_overrunning_a_tiny_capacity() {
    overrun(4);
}

#[test]
fn concurrent_writers_readers_and_subscriber_lapping_a_full_length_ring() {
    // Capacity 64: full-length segments after a short first one, so the
    // writers lap through the short segment and then recycle the long ones
    // (a tiny capacity has neither).
    overrun(64);
}

// ---------------------------------------------------------------------------
// Batches: visible all at once
// ---------------------------------------------------------------------------

/// One event of a batch: which writer, which of its batches, its index in
/// the batch and the batch's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InBatch {
    writer: usize,
    batch: u64,
    index: usize,
    len: usize,
}

/// Batch lengths, all different, cycled by every writer.
const BATCH_LENS: [usize; 5] = [1, 2, 3, 5, 8];

/// Checks one replay run for torn batches. The run may begin inside a
/// batch only if its cursor was inside one (after resuming from a gap);
/// it always ends at a batch's last event, and every batch in between is
/// whole.
fn check_run_is_whole_batches(run: &[Arc<livereplay::Event<InBatch>>], may_start_inside: bool) {
    let Some(first) = run.first() else { return };
    if !may_start_inside {
        assert_eq!(first.payload().index, 0, "a run begins inside a batch");
    }
    let last = run.last().map(|event| *event.payload()).unwrap();
    assert_eq!(
        last.index,
        last.len - 1,
        "a run ends inside a batch: part of a batch was visible"
    );
    for pair in run.windows(2) {
        let (a, b) = (pair[0].payload(), pair[1].payload());
        if (a.writer, a.batch) == (b.writer, b.batch) {
            assert_eq!(b.index, a.index + 1, "a batch's events are consecutive");
        } else {
            assert_eq!(a.index, a.len - 1, "a batch was interrupted");
            assert_eq!(b.index, 0, "a batch was entered midway");
        }
    }
}

fn batch_reader(store: &ReplayStore<InBatch>, key: &SessionKey, total: u64) -> Observed<InBatch> {
    let deadline = Instant::now() + PATIENCE;
    let mut observed = Observed::new();
    let mut cursor = Cursor::start(key.clone());
    let mut after_gap = false;
    while cursor.position() < total {
        assert!(
            Instant::now() < deadline,
            "reader stuck at {}",
            cursor.position()
        );
        match store.replay_after_cursor(&cursor) {
            Ok(events) => {
                check_run_is_whole_batches(&events, after_gap);
                if events.is_empty() {
                    thread::yield_now();
                } else {
                    after_gap = false;
                }
                for event in events {
                    assert_eq!(event.position(), cursor.position() + 1);
                    observed.seen.push((event.position(), *event.payload()));
                    cursor = event.cursor();
                }
            }
            Err(error) => {
                let gap = expect_trimmed_gap(error);
                let resume = observed.record_gap(&gap, cursor.position());
                cursor = cursor_at(&gap.latest, resume);
                after_gap = true;
            }
        }
    }
    observed
}

fn run_batch_writers_and_readers(capacity: usize, batches_per_writer: u64) {
    let store = store_with_capacity::<InBatch>(capacity);
    let key = session_key();
    let per_writer: u64 = (0..batches_per_writer)
        .map(|batch| BATCH_LENS[batch as usize % BATCH_LENS.len()] as u64)
        .sum();
    let total = WRITERS as u64 * per_writer;
    let start = Arc::new(Barrier::new(WRITERS + READERS));

    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (store, key, start) = (Arc::clone(&store), key.clone(), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                let mut acknowledged = Vec::new();
                for batch in 0..batches_per_writer {
                    let len = BATCH_LENS[batch as usize % BATCH_LENS.len()];
                    let payloads = (0..len).map(|index| InBatch {
                        writer,
                        batch,
                        index,
                        len,
                    });
                    let events = store
                        .append_batch(&key, Revision(batch), payloads)
                        .expect("a batch within the capacity is accepted");
                    thread::yield_now();
                    assert_eq!(events.len(), len);
                    let first = events[0].position();
                    for (offset, event) in events.iter().enumerate() {
                        assert_eq!(event.position(), first + offset as u64);
                        acknowledged.push((event.position(), *event.payload()));
                    }
                }
                acknowledged
            })
        })
        .collect();
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (store, key, start) = (Arc::clone(&store), key.clone(), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                batch_reader(&store, &key, total)
            })
        })
        .collect();

    let mut acknowledged = BTreeMap::new();
    for writer in writers {
        for (position, payload) in writer.join().expect("writer panicked") {
            assert!(acknowledged.insert(position, payload).is_none());
        }
    }
    assert_eq!(acknowledged.len() as u64, total);
    for (index, reader) in readers.into_iter().enumerate() {
        let observed = reader.join().expect("reader panicked");
        for &(position, payload) in &observed.seen {
            assert_eq!(
                acknowledged.get(&position),
                Some(&payload),
                "reader {index}"
            );
        }
        observed.assert_accounts_for(total, &format!("reader {index}"));
        assert_eq!(
            observed.empty_gaps, 0,
            "reader {index}: a gap missed nothing"
        );
        if capacity as u64 >= total {
            assert!(
                observed.missed.is_empty(),
                "reader {index}: a gap without trimming"
            );
        }
    }
}

#[test]
fn concurrent_batches_are_never_seen_in_part_with_room_for_everything() {
    // 3 writers × 200 batches × 3.8 events on average = 2280 events.
    run_batch_writers_and_readers(4096, 200);
}

#[test]
fn concurrent_batches_are_never_seen_in_part_while_lapping_a_full_length_ring() {
    run_batch_writers_and_readers(64, 400);
}

#[test]
fn concurrent_batches_are_never_seen_in_part_while_overrunning_the_capacity() {
    // The capacity holds the largest batch, and not much more.
    run_batch_writers_and_readers(BATCH_LENS[BATCH_LENS.len() - 1], 400);
}
