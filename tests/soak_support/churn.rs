//! The soak's churn, shared by `tests/soak.rs` (bounded, in CI) and
//! `examples/soak.rs` (as long as you like) through `#[path]`.
//!
//! Writers on several threads create sessions, append bursts and batches
//! to them through handles, and abandon them (some are removed outright);
//! subscribers attach to recent sessions and drop their subscriptions
//! mid-stream. The writers move a `ManualClock` forward as appends
//! accumulate (so events expire without sleeping for time) and sweep; a
//! driver thread samples resident memory (`/proc/self/statm`) and `stats()`.
//!
//! The run has two churn phases, each followed by a quiet period in which
//! the clock passes the age bound and the store is swept. What must hold:
//! after each quiet period the store is empty (no session, no retained
//! event, no subscriber, no slot) and no payload is alive anywhere (counted
//! by the payload type itself); and memory plateaus. Where live heap is
//! counted (the example installs a counting allocator; tests may not use
//! `unsafe`), it must fall back to the baseline and the second phase must
//! need no more than the first; resident memory must plateau the same way
//! (see `SoakReport::check` for why it cannot be expected to fall back to
//! the baseline under glibc's allocator).

use std::sync::atomic::{
    AtomicBool, AtomicU64, AtomicUsize,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use livereplay::{
    Config, Cursor, ManualClock, NextTimeoutError, ReplayStore, Revision, SessionKey, Stats,
};

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// Wall-clock length of each of the two churn phases.
    pub phase: Duration,
    pub writers: usize,
    pub subscribers: usize,
    /// How often the driver samples.
    pub tick: Duration,
    /// Manual time added for every `appends_per_clock_step` appends: time
    /// follows the work, not the wall clock, so the volume an age bound
    /// retains is the same however fast the machine is (both phases then
    /// need the same memory, which is what makes them comparable).
    pub clock_step: Duration,
    pub appends_per_clock_step: u64,
    /// The store's age bound (manual time).
    pub max_age: Duration,
    pub capacity: usize,
    /// Payload bytes per event.
    pub payload_len: usize,
}

impl SoakConfig {
    /// Two phases of `phase_secs` each, with the other settings at values
    /// that make memory meaningful in a debug build.
    pub fn with_phase(phase: Duration) -> Self {
        Self {
            phase,
            writers: 3,
            subscribers: 2,
            tick: Duration::from_millis(20),
            clock_step: Duration::from_secs(1),
            appends_per_clock_step: 20_000,
            max_age: Duration::from_secs(10),
            capacity: 256,
            payload_len: 128,
        }
    }
}

/// One periodic measurement.
#[derive(Debug, Clone)]
pub struct Sample {
    pub phase: &'static str,
    pub elapsed: Duration,
    pub rss_bytes: u64,
    /// Live heap bytes, when the binary counts its allocations.
    pub heap_bytes: Option<u64>,
    pub stats: Stats,
}

/// Everything measured.
#[derive(Debug, Clone)]
pub struct SoakReport {
    pub baseline_rss: u64,
    pub baseline_heap: Option<u64>,
    pub samples: Vec<Sample>,
    /// Highest resident memory during each churn phase.
    pub peak_rss: [u64; 2],
    /// Resident memory after each quiet period.
    pub settled_rss: [u64; 2],
    /// Live heap bytes after each quiet period, when counted.
    pub settled_heap: [Option<u64>; 2],
    /// Payloads alive after each quiet period.
    pub settled_payloads: [u64; 2],
    /// Highest live heap sampled during each churn phase, when counted.
    pub peak_heap: [Option<u64>; 2],
    /// Stats after each quiet period.
    pub settled_stats: [Stats; 2],
    pub sessions_created: u64,
    pub subscriptions_dropped: u64,
    pub events_delivered: u64,
    pub duration: Duration,
}

const MIB: f64 = 1024.0 * 1024.0;

/// Resident set size from `/proc/self/statm` (second field, in pages; the
/// page size is 4 KiB on the platforms this runs on).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Payloads alive anywhere (in the store, in a reader's hands): the
/// precise leak check, since it needs no allocator hooks.
static LIVE_PAYLOADS: AtomicU64 = AtomicU64::new(0);

/// An event payload that counts its live instances.
pub struct Payload {
    _bytes: Vec<u8>,
}

impl Payload {
    fn new(fill: u8, len: usize) -> Self {
        LIVE_PAYLOADS.fetch_add(1, Relaxed);
        Self {
            _bytes: vec![fill; len],
        }
    }
}

impl Drop for Payload {
    fn drop(&mut self) {
        LIVE_PAYLOADS.fetch_sub(1, Relaxed);
    }
}

/// A small xorshift generator: the soak needs variety, not quality.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Shared {
    store: ReplayStore<Payload>,
    /// Workers work while this is set, and idle (holding nothing) while it
    /// is not, so the quiet periods need no new threads: the same threads
    /// (and so the same allocator arenas) serve both phases.
    running: AtomicBool,
    /// Workers idle now.
    idle: AtomicUsize,
    clock: Arc<ManualClock>,
    clock_step: Duration,
    appends_per_clock_step: u64,
    /// Appends so far, counted by the writers (time follows it).
    appended: AtomicU64,
    stop: AtomicBool,
    /// The newest session number of each writer, for subscribers to find.
    newest: Vec<AtomicU64>,
    sessions_created: AtomicU64,
    subscriptions_dropped: AtomicU64,
    events_delivered: AtomicU64,
}

fn session_key(writer: usize, number: u64) -> SessionKey {
    // A few tenants, awkward characters included.
    SessionKey::new(
        &format!("tenant-{}", number % 4),
        &format!("w{writer}/s:{number}"),
    )
    .expect("valid key")
}

impl Shared {
    /// Counts a turn's appends; the writer whose count crosses a step
    /// boundary moves the clock and sweeps, as a host's maintenance timer
    /// would. Writers do it, not the sampling thread, so memory stays
    /// bounded by the work even when that thread is starved of CPU.
    fn count_appends(&self, appended: u64) {
        let step = self.appends_per_clock_step;
        let before = self.appended.fetch_add(appended, Relaxed);
        let crossed = (before + appended) / step - before / step;
        if crossed > 0 {
            self.clock.advance(self.clock_step * crossed as u32);
            self.store.sweep();
        }
    }
}

impl Shared {
    /// Whether to do another unit of work: waits (holding nothing) while
    /// the run is paused; `false` once it is over.
    fn work_on(&self, idle: &mut bool) -> bool {
        loop {
            if self.stop.load(Acquire) {
                return false;
            }
            if self.running.load(Acquire) {
                if *idle {
                    self.idle.fetch_sub(1, AcqRel);
                    *idle = false;
                }
                return true;
            }
            if !*idle {
                self.idle.fetch_add(1, AcqRel);
                *idle = true;
            }
            thread::park_timeout(Duration::from_millis(1));
        }
    }
}

fn writer(shared: &Shared, index: usize, payload_len: usize) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (index as u64 + 1));
    let mut number = 0u64;
    let mut idle = false;
    while shared.work_on(&mut idle) {
        number += 1;
        let key = session_key(index, number);
        let Ok(session) = shared.store.session(&key) else {
            continue;
        };
        shared.sessions_created.fetch_add(1, Relaxed);
        shared.newest[index].store(number, Relaxed);
        // A turn: a burst of single appends and the odd batch.
        let turn = 20 + rng.below(400);
        let mut appended = 0;
        while appended < turn && shared.running.load(Relaxed) {
            if rng.below(10) == 0 {
                let len = 1 + rng.below(16) as usize;
                let batch = (0..len).map(|_| Payload::new(appended as u8, payload_len));
                session
                    .append_batch(Revision(number), batch)
                    .expect("a batch within capacity is accepted");
                appended += len as u64;
            } else {
                session
                    .append(Revision(number), Payload::new(appended as u8, payload_len))
                    .expect("append is accepted");
                appended += 1;
            }
        }
        shared.count_appends(appended);
        // Abandon it; now and then the runtime removes it outright.
        drop(session);
        if rng.below(8) == 0 {
            shared.store.remove_session(&key);
        }
    }
}

fn subscriber(shared: &Shared, index: usize, writers: usize) {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ (index as u64 + 1));
    let mut idle = false;
    while shared.work_on(&mut idle) {
        let writer = rng.below(writers as u64) as usize;
        let newest = shared.newest[writer].load(Relaxed);
        if newest == 0 {
            thread::yield_now();
            continue;
        }
        let key = session_key(writer, newest.saturating_sub(rng.below(3)).max(1));
        let from = if rng.below(2) == 0 {
            Cursor::start(key.clone())
        } else {
            shared.store.current_cursor(&key)
        };
        let Ok(mut subscription) = shared.store.subscribe_after_cursor(&from) else {
            continue;
        };
        // Read some, then drop it mid-stream.
        let wanted = rng.below(200);
        for _ in 0..wanted {
            if !shared.running.load(Relaxed) {
                break;
            }
            match subscription.next_timeout(Duration::from_millis(2)) {
                Ok(_) => {
                    shared.events_delivered.fetch_add(1, Relaxed);
                }
                Err(NextTimeoutError::Timeout) => break,
                Err(
                    NextTimeoutError::Gap(_)
                    | NextTimeoutError::Closed(_)
                    | NextTimeoutError::Ended,
                ) => break,
            }
        }
        drop(subscription);
        shared.subscriptions_dropped.fetch_add(1, Relaxed);
    }
}

/// Runs both phases and returns the measurements. `on_sample` sees each
/// sample as it is taken (the example prints them).
pub fn run(
    config: &SoakConfig,
    heap_bytes: impl Fn() -> Option<u64>,
    mut on_sample: impl FnMut(&Sample),
) -> SoakReport {
    let clock = Arc::new(ManualClock::new());
    let store = ReplayStore::builder()
        .config(
            Config::default()
                .with_capacity(config.capacity)
                .with_max_age(config.max_age)
                .with_max_sessions(1_000_000)
                // Tombstones live as long as events: a quiet period's
                // second sweep forgets them, so "empty" is checkable.
                .with_tombstones(100_000, config.max_age),
        )
        .clock(clock.clone())
        .build()
        .expect("valid soak configuration");
    let shared = Arc::new(Shared {
        store,
        running: AtomicBool::new(false),
        idle: AtomicUsize::new(0),
        clock: Arc::clone(&clock),
        clock_step: config.clock_step,
        appends_per_clock_step: config.appends_per_clock_step,
        appended: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        newest: (0..config.writers).map(|_| AtomicU64::new(0)).collect(),
        sessions_created: AtomicU64::new(0),
        subscriptions_dropped: AtomicU64::new(0),
        events_delivered: AtomicU64::new(0),
    });
    let started = Instant::now();
    let baseline_rss = rss_bytes();
    let baseline_heap = heap_bytes();
    let mut samples = Vec::new();
    let mut peak_rss = [0; 2];
    let mut settled_rss = [0; 2];
    let mut settled_heap = [None; 2];
    let mut settled_payloads = [0; 2];
    let mut peak_heap: [Option<u64>; 2] = [None; 2];
    let mut settled_stats: [Stats; 2] = Default::default();
    let mut sample = |phase: &'static str, samples: &mut Vec<Sample>| {
        let taken = Sample {
            phase,
            elapsed: started.elapsed(),
            rss_bytes: rss_bytes(),
            heap_bytes: heap_bytes(),
            stats: shared.store.stats(),
        };
        on_sample(&taken);
        let rss = taken.rss_bytes;
        samples.push(taken);
        rss
    };

    shared.running.store(true, Release);
    let mut threads = Vec::new();
    for index in 0..config.writers {
        let shared = Arc::clone(&shared);
        let payload_len = config.payload_len;
        threads.push(thread::spawn(move || writer(&shared, index, payload_len)));
    }
    for index in 0..config.subscribers {
        let shared = Arc::clone(&shared);
        let writers = config.writers;
        threads.push(thread::spawn(move || subscriber(&shared, index, writers)));
    }
    let workers = threads.len();
    for phase in 0..2 {
        shared.running.store(true, Release);
        let phase_end = Instant::now() + config.phase;
        while Instant::now() < phase_end {
            thread::sleep(config.tick);
            let rss = sample("churn", &mut samples);
            peak_rss[phase] = peak_rss[phase].max(rss);
            peak_heap[phase] = peak_heap[phase].max(heap_bytes());
        }
        shared.running.store(false, Release);
        let deadline = Instant::now() + Duration::from_secs(30);
        while shared.idle.load(Acquire) < workers {
            assert!(Instant::now() < deadline, "soak workers did not pause");
            thread::park_timeout(Duration::from_millis(1));
        }
        // Quiet: the age bound passes, the sweep evicts everything idle.
        clock.advance(config.max_age + config.clock_step);
        shared.store.sweep();
        // The sessions that sweep turned dormant are forgotten by the next.
        clock.advance(config.max_age + config.clock_step);
        shared.store.sweep();
        settled_rss[phase] = sample("settled", &mut samples);
        // Not the soak's own record of samples, which grows with the run.
        let samples_bytes = (samples.capacity() * std::mem::size_of::<Sample>()) as u64;
        settled_heap[phase] = heap_bytes().map(|bytes| bytes.saturating_sub(samples_bytes));
        settled_payloads[phase] = LIVE_PAYLOADS.load(Relaxed);
        settled_stats[phase] = shared.store.stats();
    }
    shared.stop.store(true, Release);
    for thread in threads {
        thread.join().expect("soak thread panicked");
    }

    SoakReport {
        baseline_rss,
        baseline_heap,
        samples,
        peak_rss,
        settled_rss,
        settled_heap,
        settled_payloads,
        peak_heap,
        settled_stats,
        sessions_created: shared.sessions_created.load(Relaxed),
        subscriptions_dropped: shared.subscriptions_dropped.load(Relaxed),
        events_delivered: shared.events_delivered.load(Relaxed),
        duration: started.elapsed(),
    }
}

impl SoakReport {
    /// The checks; `Err` says which failed.
    pub fn check(&self) -> Result<(), String> {
        for (phase, stats) in self.settled_stats.iter().enumerate() {
            let empty = stats.sessions == 0
                && stats.retained_events == 0
                && stats.subscribers == 0
                && stats.parked_subscribers == 0
                && stats.allocated_slots == 0;
            if !empty {
                return Err(format!(
                    "after phase {phase} the store is not empty: {stats:?}"
                ));
            }
        }
        if self.settled_payloads != [0, 0] {
            return Err(format!(
                "payloads outlived the churn: {:?} alive after the quiet periods",
                self.settled_payloads
            ));
        }
        let last = &self.settled_stats[1];
        if last.evicted_sessions == 0 || last.appends == 0 {
            return Err(format!("nothing churned: {last:?}"));
        }
        if self.sessions_created == 0 || self.subscriptions_dropped == 0 {
            return Err("no sessions or subscriptions churned".into());
        }
        // Where the heap is counted (the example), it is the precise
        // check. Once the store is empty, live heap is back at the baseline
        // but for the session map's table, which keeps the capacity its
        // busiest moment needed (1 MiB covers ~10 000 sessions' worth); and
        // the second phase, doing the same work, needs no more live heap
        // than the first (25% plus 8 MiB for timing: how many sessions
        // happen to be alive when a sample is taken).
        if let (Some(baseline), [Some(first), Some(second)]) =
            (self.baseline_heap, self.settled_heap)
        {
            if first.max(second) > baseline + 1024 * 1024 {
                return Err(format!(
                    "live heap did not return to its baseline: {:.2} MiB at start, {:.2} / {:.2} MiB settled",
                    baseline as f64 / MIB,
                    first as f64 / MIB,
                    second as f64 / MIB
                ));
            }
        }
        if let [Some(first), Some(second)] = self.peak_heap {
            if second > first + first / 4 + 8 * 1024 * 1024 {
                return Err(format!(
                    "live heap grew: phase 2 peaked at {:.1} MiB, phase 1 at {:.1} MiB",
                    second as f64 / MIB,
                    first as f64 / MIB
                ));
            }
        }
        // Resident memory is the allocator's business as much as ours:
        // glibc keeps freed small chunks cached in its arenas and returns
        // pages to the kernel only from the top of a heap, so RSS does not
        // fall back to the baseline once the store is empty (measured: it
        // stays within ~10% of the peak while live heap falls below 1 MiB).
        // What shows there is no leak is reuse: the same threads doing the
        // same work again peak no higher (25% plus 8 MiB for timing). (With
        // fresh threads for the second phase, glibc gave them fresh arenas
        // and RSS nearly doubled with the same live heap: why the workers
        // pause between phases instead of exiting.)
        let [first, second] = self.peak_rss;
        if second > first + first / 4 + 8 * 1024 * 1024 {
            return Err(format!(
                "memory grew: phase 2 peaked at {:.1} MiB, phase 1 at {:.1} MiB",
                second as f64 / MIB,
                first as f64 / MIB
            ));
        }
        // After both phases nothing is retained: resident memory is at most
        // what the busier phase needed. Peaks are samples, so the true peak
        // may fall between two of them (after the last one, say, while the
        // workers wind down): a settled figure up to 2 MiB over the highest
        // sample is that, not growth (seen once: 70.6 settled against a
        // 70.6 MiB sampled peak, a few pages over it).
        if self.settled_rss[1] > first.max(second) + 2 * 1024 * 1024 {
            return Err(format!(
                "memory grew after the churn stopped: {:.1} MiB settled, {:.1} MiB peak",
                self.settled_rss[1] as f64 / MIB,
                first.max(second) as f64 / MIB
            ));
        }
        Ok(())
    }

    /// A summary for people.
    pub fn summary(&self) -> String {
        let last = &self.settled_stats[1];
        format!(
            "duration {:.1} s; appends {}; sessions created {}, evicted {}; subscriptions dropped {}; \
             events delivered {}; RSS baseline {:.1} MiB, peak {:.1} / {:.1} MiB (phase 1 / 2), \
             settled {:.1} / {:.1} MiB{}",
            self.duration.as_secs_f64(),
            last.appends,
            self.sessions_created,
            last.evicted_sessions,
            self.subscriptions_dropped,
            self.events_delivered,
            self.baseline_rss as f64 / MIB,
            self.peak_rss[0] as f64 / MIB,
            self.peak_rss[1] as f64 / MIB,
            self.settled_rss[0] as f64 / MIB,
            self.settled_rss[1] as f64 / MIB,
            match (self.baseline_heap, self.settled_heap, self.peak_heap) {
                (Some(baseline), [Some(first), Some(second)], [Some(peak1), Some(peak2)]) => format!(
                    "; live heap baseline {:.2} MiB, peak {:.1} / {:.1} MiB, settled {:.2} / {:.2} MiB",
                    baseline as f64 / MIB,
                    peak1 as f64 / MIB,
                    peak2 as f64 / MIB,
                    first as f64 / MIB,
                    second as f64 / MIB
                ),
                _ => String::new(),
            }
        )
    }
}

impl Sample {
    /// One line per sample.
    pub fn line(&self) -> String {
        let heap = self
            .heap_bytes
            .map(|bytes| format!("  heap {:>8.1} MiB", bytes as f64 / MIB))
            .unwrap_or_default();
        format!(
            "{:>8.2}s {:<8} rss {:>8.1} MiB{heap}  sessions {:>6}  retained {:>8}  slots {:>8}  subscribers {:>3}  appends {:>10}  evicted {:>8}",
            self.elapsed.as_secs_f64(),
            self.phase,
            self.rss_bytes as f64 / MIB,
            self.stats.sessions,
            self.stats.retained_events,
            self.stats.allocated_slots,
            self.stats.subscribers,
            self.stats.appends,
            self.stats.evicted_sessions,
        )
    }
}
