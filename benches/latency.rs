//! Latency distributions criterion does not report (it gives means and
//! medians): percentiles from our own sampling loops, `livereplay` against
//! the designs a user would otherwise pick, in the same process.
//!
//! * **Subscribe-to-delivery**: a writer appends an event carrying the time
//!   it was appended; a subscriber blocked on another thread receives it and
//!   records how long it took. The writer waits for each delivery, then
//!   pauses so the subscriber is parked again: every sample is a wake-up of
//!   a waiting subscriber, as with a token stream. Our two waits also run
//!   with `CoarseClock` (no clock reading on the delivery path), and each
//!   append call that wakes a subscriber is timed from the writer's side.
//! * **Append tail latency while a reader replays**: a writer appends back
//!   to back, timing each append, while another thread replays the same
//!   session's last 1024 events in a loop (a host reconnecting over and
//!   over), or paced to one replay per 10 µs (designs compared at the same
//!   rate); and the same without the reader, for comparison. Ours runs
//!   four ways: through a handle in the steady ring; through a
//!   `SessionWriter`; with a reader that lends instead of cloning
//!   (`replay_with`); and in a ring that never laps during the run (no
//!   append frees an event), which isolates what the lapping costs. Each
//!   run prints the readers' rates and a cache line's round trip between
//!   the two threads, per round: how much sharing a line costs decides
//!   how much the reader slows the writer (docs/benchmark-history.md,
//!   "Append with a replaying reader, re-measured", issue 13's fifth round).
//!
//! The machine these run on is shared and its load drifts, so designs take
//! turns: delivery samples alternate between designs one by one, append
//! samples are taken in rounds that alternate designs and cases.
//!
//! * **Wake-up primitives alone**: the same wake-up, with nothing but the
//!   primitive each design parks its subscriber on.
//!
//! Prints p50/p99/p99.9/max and writes `target/livereplay-bench/`
//! `append_latency.csv`, `delivery_latency.csv` (quantiles, for
//! `scripts/plot_latency.py`) and `latency-summary.csv`.
//!
//! Run: `cargo bench --bench latency`. Quick mode
//! (`LIVEREPLAY_BENCH_QUICK=1`, or run without `--bench` as `cargo test
//! --benches` does) takes few samples. Criterion flags are accepted and
//! ignored; a name filter that matches neither `delivery_latency`,
//! `append_latency` nor `wake_primitives` skips that part.

mod baselines;
mod support;

use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use livereplay::{CoarseClock, Config, Cursor, ReplayStore, Revision, SessionKey, MAX_CAPACITY};

use baselines::{BroadcastSession, ReferenceStore};
use support::{nanos_since, Percentiles, Settings};

const CAPACITY: usize = 2048;
const REPLAY_WINDOW: u64 = 1024;
/// How long the writer leaves a subscriber to park between two samples.
const PARK_PAUSE: Duration = Duration::from_micros(50);
/// No wait in this bench lasts longer: a stuck run fails instead of hanging.
const WAIT_LIMIT: Duration = Duration::from_secs(10);

fn session_key() -> SessionKey {
    SessionKey::new("acme", "chat-000000").expect("a valid key")
}

/// The `n`th session of the bench's tenant.
fn session_key_n(n: usize) -> SessionKey {
    SessionKey::new("acme", &format!("chat-{n:06}")).expect("a valid key")
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a tokio runtime")
}

const REFERENCE_ID: &str = "acme/chat-000000";

/// One design in the delivery measurement: how the writer appends a
/// timestamp, and how its subscriber (on its own thread) blocks for the
/// next one.
struct DeliveryDesign<'a> {
    name: &'static str,
    append: Box<dyn Fn(u64) + 'a>,
    receive: Box<dyn FnMut() -> u64 + Send + 'a>,
}

/// Appends `samples` timestamped events to every design, one at a time and
/// taking turns (so a change in the machine's load hits every design
/// alike), each after that design's subscriber took the previous one and
/// had time to park again. Returns each design's append-to-delivery
/// latencies, and how long each of its append calls took (the writer's
/// side of a wake-up: the append, the wake, and whatever follows it).
fn delivery_latencies(
    samples: usize,
    designs: Vec<DeliveryDesign<'_>>,
) -> Vec<(&'static str, Vec<u64>, Vec<u64>)> {
    let base = Instant::now();
    let delivered: Vec<AtomicUsize> = designs.iter().map(|_| AtomicUsize::new(0)).collect();
    thread::scope(|scope| {
        let mut appends = Vec::new();
        let mut subscribers = Vec::new();
        for (design, delivered) in designs.into_iter().zip(&delivered) {
            let DeliveryDesign {
                name,
                append,
                mut receive,
            } = design;
            appends.push(append);
            let subscriber = scope.spawn(move || {
                let mut latencies = Vec::with_capacity(samples);
                for count in 1..=samples {
                    let sent = receive();
                    latencies.push(nanos_since(base).saturating_sub(sent));
                    delivered.store(count, Ordering::Release);
                }
                latencies
            });
            subscribers.push((name, subscriber));
        }
        let mut append_calls: Vec<Vec<u64>> = appends
            .iter()
            .map(|_| Vec::with_capacity(samples))
            .collect();
        for count in 1..=samples {
            for turn in 0..appends.len() {
                let design = (turn + count) % appends.len();
                thread::sleep(PARK_PAUSE);
                let called = Instant::now();
                appends[design](nanos_since(base));
                append_calls[design].push(called.elapsed().as_nanos() as u64);
                let waiting_since = Instant::now();
                while delivered[design].load(Ordering::Acquire) < count {
                    assert!(
                        waiting_since.elapsed() < WAIT_LIMIT,
                        "a subscriber did not receive event {count}"
                    );
                    std::hint::spin_loop();
                }
            }
        }
        subscribers
            .into_iter()
            .zip(append_calls)
            .map(|((name, subscriber), calls)| {
                (name, subscriber.join().expect("subscriber thread"), calls)
            })
            .collect()
    })
}

/// Times `samples` back-to-back appends, while `reader` runs in a loop on
/// another thread if given. Returns the latencies and how many reads ran.
/// How the reader runs while the writer is timed.
#[derive(Clone, Copy, PartialEq)]
enum ReaderCase {
    /// No reader.
    None,
    /// Replays back to back, as fast as the design lets it.
    Loop,
    /// Starts one replay every `READER_PACE` (or right after the last one,
    /// if that took longer): designs compared at the same replay rate.
    Paced,
}

impl ReaderCase {
    const ALL: [ReaderCase; 3] = [ReaderCase::None, ReaderCase::Loop, ReaderCase::Paced];

    fn label(self) -> &'static str {
        match self {
            ReaderCase::None => "none",
            ReaderCase::Loop => "replaying",
            ReaderCase::Paced => "paced",
        }
    }
}

/// The median time for a cache line to go from one thread to another and
/// back, over `trips` round trips: what every line the writer and the
/// reader both touch costs at worst, where the two threads run now.
fn line_round_trip(trips: u64) -> Duration {
    let ball = AtomicU64::new(0);
    thread::scope(|scope| {
        scope.spawn(|| {
            for trip in 0..trips {
                let waiting_since = Instant::now();
                while ball.load(Ordering::Acquire) != 2 * trip + 1 {
                    assert!(waiting_since.elapsed() < WAIT_LIMIT, "no serve");
                    std::hint::spin_loop();
                }
                ball.store(2 * trip + 2, Ordering::Release);
            }
        });
        let mut taken = Vec::with_capacity(trips as usize);
        for trip in 0..trips {
            let start = Instant::now();
            ball.store(2 * trip + 1, Ordering::Release);
            while ball.load(Ordering::Acquire) != 2 * trip + 2 {
                assert!(start.elapsed() < WAIT_LIMIT, "no return");
                std::hint::spin_loop();
            }
            taken.push(start.elapsed());
        }
        taken.sort_unstable();
        taken[taken.len() / 2]
    })
}

/// The paced reader's period: 100 000 replays a second at most.
const READER_PACE: Duration = Duration::from_micros(10);

/// Times `samples` appends, with `reader` running on another thread as
/// `case` says; returns the latencies, how many replays it made, and how
/// long the appends took (the reader's rate is replays over that time).
fn append_latencies(
    samples: usize,
    append: &mut dyn FnMut(u64),
    reader: &(dyn Fn() + Sync),
    case: ReaderCase,
) -> (Vec<u64>, u64, Duration) {
    let stop = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    thread::scope(|scope| {
        if case != ReaderCase::None {
            scope.spawn(|| {
                let started = Instant::now();
                let mut made = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    reader();
                    made += 1;
                    reads.fetch_add(1, Ordering::Relaxed);
                    if case == ReaderCase::Paced {
                        let next = READER_PACE * made;
                        while started.elapsed() < next && !stop.load(Ordering::Relaxed) {
                            std::hint::spin_loop();
                        }
                    }
                }
            });
            // Measure only while the reader is really running.
            let waiting_since = Instant::now();
            while reads.load(Ordering::Relaxed) == 0 {
                assert!(waiting_since.elapsed() < WAIT_LIMIT, "the reader never ran");
                std::hint::spin_loop();
            }
        }
        let mut latencies = Vec::with_capacity(samples);
        let appending_since = Instant::now();
        for i in 0..samples as u64 {
            let start = Instant::now();
            append(i);
            latencies.push(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
        let appending = appending_since.elapsed();
        stop.store(true, Ordering::Relaxed);
        (latencies, reads.load(Ordering::Relaxed), appending)
    })
}

struct Summary {
    csv: String,
    summary: String,
}

impl Summary {
    fn new(header: &str) -> Self {
        Self {
            csv: format!("{header},quantile,nanos\n"),
            summary: String::new(),
        }
    }

    /// Prints the percentiles of `samples` and records its quantiles
    /// under `labels` (comma-separated CSV fields).
    fn record(&mut self, scenario: &str, labels: &str, mut samples: Vec<u64>) -> Percentiles {
        let percentiles = Percentiles::of(&mut samples);
        println!(
            "  {labels:<28} n={:<8} p50 {:>10}  p99 {:>10}  p99.9 {:>10}  max {:>10}  mean {:>10}",
            percentiles.count,
            support::human(percentiles.p50 as f64),
            support::human(percentiles.p99 as f64),
            support::human(percentiles.p999 as f64),
            support::human(percentiles.max as f64),
            support::human(percentiles.mean),
        );
        for (q, nanos) in support::chart_quantiles(&samples) {
            let _ = writeln!(self.csv, "{labels},{q},{nanos}");
        }
        let _ = writeln!(
            self.summary,
            "{scenario},{labels}{},{},{},{},{},{},{:.1}",
            if labels.contains(',') {
                ""
            } else {
                ",subscriber_parked"
            },
            percentiles.count,
            percentiles.p50,
            percentiles.p99,
            percentiles.p999,
            percentiles.max,
            percentiles.mean
        );
        percentiles
    }
}

fn delivery(settings: &Settings, summary: &mut String) {
    let samples = settings.size(20_000, 300);
    println!("\n== subscribe-to-delivery latency across threads (subscriber parked; {samples} samples per design, designs taking turns) ==");
    let mut out = Summary::new("design");

    let store = ReplayStore::<u64>::default();
    // `CoarseClock`: neither the append nor the subscriber's run reads the
    // wall clock (one relaxed load each), so ours against ours-coarse is
    // what the two clock readings on the delivery path cost.
    let coarse_store = ReplayStore::<u64>::builder()
        .clock(Arc::new(CoarseClock::default()))
        .build()
        .expect("a store");

    let reference = ReferenceStore::<u64>::with_defaults();
    let (_, mut reference_receiver) = reference
        .subscribe_after_cursor(&reference.current_cursor(REFERENCE_ID))
        .expect("subscribe");

    let channel = BroadcastSession::<u64>::new(CAPACITY);
    let mut channel_receiver = channel.subscribe();
    // An A/A control: the same design again, on its own channel and
    // subscriber thread. Its ratio to `broadcast` is how far two identical
    // designs land apart in one run (thread placement, caches): the
    // method's resolution for every other ratio here.
    let control = BroadcastSession::<u64>::new(CAPACITY);
    let mut control_receiver = control.subscribe();

    // The async forms, each polled by a current-thread tokio runtime on its
    // subscriber's thread (the same executor for both): `Subscription` as a
    // `Stream`, and a broadcast receiver's `recv().await`.
    let async_channel = BroadcastSession::<u64>::new(CAPACITY);
    let mut async_receiver = async_channel.subscribe();
    let async_runtime = current_thread_runtime();

    let designs = vec![
        // No timer, as `blocking_recv`: the writer's wait for the delivery
        // is bounded by `WAIT_LIMIT` instead.
        ours("ours", &store, 0, OursWait::Blocking(Duration::MAX)),
        DeliveryDesign {
            name: "reference",
            append: Box::new(|sent| {
                reference.append(REFERENCE_ID, 1, sent);
            }),
            receive: Box::new(move || {
                reference_receiver
                    .blocking_recv()
                    .expect("an event")
                    .payload
            }),
        },
        DeliveryDesign {
            name: "broadcast",
            append: Box::new(|sent| {
                channel.append(sent);
            }),
            receive: Box::new(move || channel_receiver.blocking_recv().expect("an event").payload),
        },
        ours("ours-stream", &store, 1, OursWait::Stream),
        DeliveryDesign {
            name: "broadcast-async",
            append: Box::new(|sent| {
                async_channel.append(sent);
            }),
            receive: Box::new(move || {
                async_runtime
                    .block_on(async_receiver.recv())
                    .expect("an event")
                    .payload
            }),
        },
        // A finite timeout: the kernel arms a timer for every wait.
        ours("ours-timed", &store, 2, OursWait::Blocking(WAIT_LIMIT)),
        DeliveryDesign {
            name: "broadcast-control",
            append: Box::new(|sent| {
                control.append(sent);
            }),
            receive: Box::new(move || control_receiver.blocking_recv().expect("an event").payload),
        },
        ours(
            "ours-coarse",
            &coarse_store,
            0,
            OursWait::Blocking(Duration::MAX),
        ),
        ours("ours-stream-coarse", &coarse_store, 1, OursWait::Stream),
    ];
    let measured = delivery_latencies(samples, designs);
    let mut calls = Vec::new();
    let results: Vec<(&str, Percentiles)> = measured
        .into_iter()
        .map(|(name, latencies, append_calls)| {
            calls.push((name, append_calls));
            (name, out.record("delivery", name, latencies))
        })
        .collect();
    print_ratios(&results[..3]);
    print_ratios(&results[3..5]);
    // What the timer costs: a ratio above 1 is the timed wait's extra.
    print_ratios(&[results[0], results[5]]);
    // The A/A control: identical designs, apart only by their threads.
    print_ratios(&[results[2], results[6]]);
    // With `CoarseClock`: broadcast against ours without the clock
    // readings, blocking and async.
    print_ratios(&[results[7], results[2]]);
    print_ratios(&[results[8], results[4]]);
    // What the default clock's readings cost on the delivery path.
    print_ratios(&[results[7], results[0]]);
    print_ratios(&[results[8], results[3]]);
    summary.push_str(&out.summary);
    support::write_out("delivery_latency.csv", &out.csv);

    // The writer's side: the append call that wakes the parked subscriber,
    // timed from the caller (the wake's system call included).
    println!("  the append call that wakes the subscriber, as the writer sees it:");
    let mut writer = Summary::new("design");
    let calls: Vec<(&str, Percentiles)> = calls
        .into_iter()
        .map(|(name, append_calls)| {
            (
                name,
                writer.record("delivery_append_call", name, append_calls),
            )
        })
        .collect();
    print_ratios(&[calls[0], calls[2]]);
    print_ratios(&[calls[3], calls[4]]);
    summary.push_str(&writer.summary);
}

/// How one of our subscribers waits.
enum OursWait {
    /// `next_timeout` with this timeout, on its thread.
    Blocking(Duration),
    /// As a `Stream`, polled by a current-thread tokio runtime of its own.
    Stream,
}

/// Ours: a new session of `store`, and a subscriber waiting on it as told.
fn ours(
    name: &'static str,
    store: &ReplayStore<u64>,
    session: usize,
    wait: OursWait,
) -> DeliveryDesign<'static> {
    let handle = store.session(&session_key_n(session)).expect("session");
    let mut subscription = handle
        .subscribe_after(&handle.current_cursor())
        .expect("subscribe");
    let receive: Box<dyn FnMut() -> u64 + Send> = match wait {
        OursWait::Blocking(timeout) => Box::new(move || {
            *subscription
                .next_timeout(timeout)
                .expect("an event")
                .payload()
        }),
        OursWait::Stream => {
            let runtime = current_thread_runtime();
            Box::new(move || {
                let next = runtime.block_on(futures_util::StreamExt::next(&mut subscription));
                *next.expect("not ended").expect("an event").payload()
            })
        }
    };
    DeliveryDesign {
        name,
        append: Box::new(move |sent| {
            handle.append(Revision(1), sent).expect("append");
        }),
        receive,
    }
}

fn print_ratios(results: &[(&str, Percentiles)]) {
    let Some((ours_name, ours)) = results.first() else {
        return;
    };
    for (name, other) in &results[1..] {
        println!(
            "  {name} / {ours_name}: p50 {:.2}x  p99 {:.2}x  p99.9 {:.2}x",
            other.p50 as f64 / ours.p50.max(1) as f64,
            other.p99 as f64 / ours.p99.max(1) as f64,
            other.p999 as f64 / ours.p999.max(1) as f64,
        );
    }
}

/// One design in the append measurement: an append, and the reader that
/// replays the same session's last `REPLAY_WINDOW` events.
struct AppendDesign<'a> {
    name: &'static str,
    append: Box<dyn FnMut(u64) + 'a>,
    replay: Box<dyn Fn() + Sync + 'a>,
}

/// How our writer appends.
#[derive(Clone, Copy)]
enum OursAppend {
    /// `SessionHandle::append`, which hands the event back.
    Handle,
    /// `SessionWriter::append`: the kept segment, the position back.
    Writer,
}

/// How our reader replays.
#[derive(Clone, Copy)]
enum OursReplay {
    /// `replay_after_cursor`: a `Vec` of `Arc`s, dropped unread.
    Cloning,
    /// `replay_with`: the events lent in place; the reader sums their
    /// payloads (it reads every event, which the cloning reader does not).
    Lending,
}

/// Ours: `key`'s session in `store`, filled with `CAPACITY` events, and a
/// reader replaying its last `REPLAY_WINDOW` events by key.
fn ours_appending<'a>(
    name: &'static str,
    store: &'a ReplayStore<u64>,
    key: &'a SessionKey,
    how: OursReplay,
    through: OursAppend,
) -> AppendDesign<'a> {
    let handle = store.session(key).expect("session");
    for i in 0..CAPACITY as u64 {
        handle.append(Revision(1), i).expect("append");
    }
    let append: Box<dyn FnMut(u64)> = match through {
        OursAppend::Handle => Box::new(move |i| {
            black_box(handle.append(Revision(1), i).expect("append"));
        }),
        OursAppend::Writer => {
            let mut writer = handle.writer();
            Box::new(move |i| {
                black_box(writer.append(Revision(1), i).expect("append"));
            })
        }
    };
    AppendDesign {
        name,
        append,
        replay: Box::new(move || {
            let tail = store.current_cursor(key);
            let from = Cursor::new(
                key.clone(),
                tail.incarnation(),
                tail.revision(),
                tail.position() - REPLAY_WINDOW,
            );
            // A writer lapping the reader mid-replay is a gap: still a read.
            match how {
                OursReplay::Cloning => {
                    let _ = black_box(store.replay_after_cursor(&from));
                }
                OursReplay::Lending => {
                    let _ = black_box(store.replay_with(&from, |events| {
                        events.map(|event| *event.payload()).sum::<u64>()
                    }));
                }
            }
        }),
    }
}

fn append_under_reader(settings: &Settings, summary: &mut String) {
    let samples = settings.size(1_000_000, 20_000);
    let rounds = settings.size(10, 2);
    println!(
        "\n== append latency, back to back, without and with a reader replaying the last {REPLAY_WINDOW} events in a loop ({samples} samples per case, in {rounds} rounds taking turns) =="
    );
    let mut out = Summary::new("design,reader");
    let key = session_key();

    let store = ReplayStore::<u64>::default();
    let reference = ReferenceStore::<u64>::with_defaults();
    for i in 0..CAPACITY as u64 {
        reference.append(REFERENCE_ID, 1, i);
    }
    // The same session in a ring that never laps during the run (the
    // largest capacity; the run appends at most 2 M events), so no append
    // frees an event: against `ours`, what lapping costs the writer while
    // a reader replays. Its tail is not the steady ring's: every segment
    // is new memory (page faults).
    let unlapped =
        ReplayStore::<u64>::new(Config::default().with_capacity(MAX_CAPACITY)).expect("a store");
    let lending = ReplayStore::<u64>::default();
    let writer = ReplayStore::<u64>::default();
    let mut designs = [
        ours_appending(
            "ours",
            &store,
            &key,
            OursReplay::Cloning,
            OursAppend::Handle,
        ),
        ours_appending(
            "ours-writer",
            &writer,
            &key,
            OursReplay::Cloning,
            OursAppend::Writer,
        ),
        ours_appending(
            "ours-lending",
            &lending,
            &key,
            OursReplay::Lending,
            OursAppend::Handle,
        ),
        ours_appending(
            "ours-unlapped",
            &unlapped,
            &key,
            OursReplay::Cloning,
            OursAppend::Handle,
        ),
        AppendDesign {
            name: "reference",
            append: Box::new(|i| {
                black_box(reference.append(REFERENCE_ID, 1, i));
            }),
            replay: Box::new(|| {
                let tail = reference.current_cursor(REFERENCE_ID);
                let _ = black_box(
                    reference.replay_after_cursor(&tail.at(tail.position - REPLAY_WINDOW)),
                );
            }),
        },
    ];
    // [design][case], cases in `ReaderCase::ALL`'s order.
    let mut latencies: Vec<[Vec<u64>; 3]> = designs.iter().map(|_| Default::default()).collect();
    let mut reads: Vec<[(u64, Duration); 3]> = vec![[(0, Duration::ZERO); 3]; designs.len()];
    // The two threads' placement (which this VM cannot see) decides what
    // sharing a line costs, and it can change from one round to the next.
    let mut round_trips = Vec::new();
    for round in 0..rounds {
        round_trips.push(line_round_trip(2_000).as_nanos());
        for turn in 0..designs.len() {
            let index = (turn + round) % designs.len();
            let design = &mut designs[index];
            for step in 0..ReaderCase::ALL.len() {
                let case = (round + step) % ReaderCase::ALL.len();
                let (taken, read, took) = append_latencies(
                    samples / rounds,
                    &mut *design.append,
                    &*design.replay,
                    ReaderCase::ALL[case],
                );
                latencies[index][case].extend(taken);
                reads[index][case].0 += read;
                reads[index][case].1 += took;
            }
        }
    }
    println!("  a cache line's round trip between two threads, by round: {round_trips:?} ns (median of 2000)");
    let results: Vec<[Percentiles; 3]> = latencies
        .into_iter()
        .enumerate()
        .map(|(index, cases)| {
            let name = designs[index].name;
            let [none, looping, paced] = cases;
            let mut record = |case: ReaderCase, taken| {
                out.record("append", &format!("{name},{}", case.label()), taken)
            };
            let recorded = [
                record(ReaderCase::None, none),
                record(ReaderCase::Loop, looping),
                record(ReaderCase::Paced, paced),
            ];
            let rate = |(replays, took): (u64, Duration)| {
                format!(
                    "{replays} times ({:.0} per ms)",
                    replays as f64 / took.as_secs_f64() / 1e3
                )
            };
            println!(
                "  ({name}: the reader replayed {} in a loop, {} paced)",
                rate(reads[index][1]),
                rate(reads[index][2])
            );
            recorded
        })
        .collect();
    let ratio = |label: &str, numerator: &Percentiles, denominator: &Percentiles| {
        println!(
            "  {label}: p50 {:.2}x  p99 {:.2}x  p99.9 {:.2}x",
            numerator.p50 as f64 / denominator.p50.max(1) as f64,
            numerator.p99 as f64 / denominator.p99.max(1) as f64,
            numerator.p999 as f64 / denominator.p999.max(1) as f64,
        );
    };
    // The reference is the last design; ours come first.
    let reference = &results[designs.len() - 1];
    ratio("reference / ours, no reader", &reference[0], &results[0][0]);
    ratio(
        "reference / ours, reader in a loop",
        &reference[1],
        &results[0][1],
    );
    // What the reader costs each design: above 1 is the slowdown.
    for (design, cases) in designs.iter().zip(&results) {
        let name = design.name;
        ratio(
            &format!("{name}, reader in a loop / no reader"),
            &cases[1],
            &cases[0],
        );
        ratio(
            &format!("{name}, reader paced / no reader"),
            &cases[2],
            &cases[0],
        );
    }
    summary.push_str(&out.summary);
    support::write_out("append_latency.csv", &out.csv);
}

/// The wake-up primitives under the designs, without the designs: a thread
/// parked on an `event_listener::Event` (what livereplay's doorbell uses),
/// on `std::thread::park`, and on a tokio broadcast receiver, woken by
/// another thread the same way as in `delivery`.
fn wake_primitives(settings: &Settings, summary: &mut String) {
    use event_listener::{Event, Listener};
    let samples = settings.size(10_000, 200);
    println!("\n== wake-up primitives alone: notify to wake-up across threads ({samples} samples each) ==");
    let mut out = Summary::new("design");

    fn measure(samples: usize, wait: impl Fn(&AtomicU64) + Sync, wake: impl Fn()) -> Vec<u64> {
        let base = Instant::now();
        // The send time, 0 while nothing is pending.
        let sent = AtomicU64::new(0);
        let delivered = AtomicUsize::new(0);
        thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                let mut latencies = Vec::with_capacity(samples);
                for count in 1..=samples {
                    let waiting_since = Instant::now();
                    while sent.load(Ordering::Acquire) == 0 {
                        assert!(waiting_since.elapsed() < WAIT_LIMIT, "never woken");
                        wait(&sent);
                    }
                    let at = sent.swap(0, Ordering::AcqRel);
                    latencies.push(nanos_since(base).saturating_sub(at));
                    delivered.store(count, Ordering::Release);
                }
                latencies
            });
            for count in 1..=samples {
                thread::sleep(PARK_PAUSE);
                sent.store(nanos_since(base).max(1), Ordering::SeqCst);
                wake();
                let waiting_since = Instant::now();
                while delivered.load(Ordering::Acquire) < count {
                    assert!(waiting_since.elapsed() < WAIT_LIMIT, "never woken");
                    std::hint::spin_loop();
                }
            }
            waiter.join().expect("waiter thread")
        })
    }

    let event = Event::new();
    let latencies = measure(
        samples,
        |sent| {
            let listener = event.listen();
            if sent.load(Ordering::SeqCst) == 0 {
                listener.wait_timeout(WAIT_LIMIT);
            }
        },
        || {
            event.notify(usize::MAX);
        },
    );
    out.record("wake", "event-listener", latencies);

    let parked = std::sync::Mutex::new(None::<thread::Thread>);
    let latencies = measure(
        samples,
        |sent| {
            *parked.lock().expect("not poisoned") = Some(thread::current());
            if sent.load(Ordering::SeqCst) == 0 {
                thread::park_timeout(WAIT_LIMIT);
            }
        },
        || {
            if let Some(waiter) = parked.lock().expect("not poisoned").as_ref() {
                waiter.unpark();
            }
        },
    );
    out.record("wake", "thread-park", latencies);

    let (sender, receiver) = tokio::sync::broadcast::channel::<u64>(16);
    let receiver = std::sync::Mutex::new(receiver);
    let latencies = measure(
        samples,
        |sent| {
            if sent.load(Ordering::SeqCst) == 0 {
                let _ = receiver.lock().expect("not poisoned").blocking_recv();
            }
        },
        || {
            let _ = sender.send(1);
        },
    );
    out.record("wake", "tokio-broadcast", latencies);
    summary.push_str(&out.summary);
}

fn main() {
    let settings = Settings::from_args();
    if settings.quick {
        println!("latency: quick mode (few samples; figures are not meaningful)");
    }
    let mut summary =
        String::from("scenario,design,condition,count,p50_ns,p99_ns,p999_ns,max_ns,mean_ns\n");
    if settings.runs("delivery_latency") {
        delivery(&settings, &mut summary);
    }
    if settings.runs("append_latency") {
        append_under_reader(&settings, &mut summary);
    }
    if settings.runs("wake_primitives") {
        wake_primitives(&settings, &mut summary);
    }
    support::write_out("latency-summary.csv", &summary);
}
