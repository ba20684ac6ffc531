//! Fan-out: one session, 64 subscribers, every event delivered to all of
//! them; events per second delivered to all, `livereplay` against a tokio
//! broadcast channel with 64 receivers, in the same run.
//!
//! * **async**: 64 tasks on a two-worker tokio runtime, each consuming a
//!   `Subscription` as a `Stream` (ours) or a broadcast receiver with
//!   `recv().await`; a writer thread appends. The writer never runs more
//!   than half a ring (1024 events) ahead of the slowest subscriber, so no
//!   design drops events (a broadcast receiver would lag, a subscription
//!   would get a gap). The clock runs from the first append until the 64th
//!   subscriber took the last event.
//! * **drain**: one thread appends 512 events, then drains every subscriber
//!   with `try_next` / `try_recv`, over and over: the delivery work alone,
//!   with no wake-up and no scheduler.
//!
//! Designs take turns, repetition by repetition; each figure is the median
//! of the repetitions with their range. Rates count events appended per
//! second (each delivered 64 times).
//!
//! Run: `cargo bench --bench fanout`. Quick mode (`LIVEREPLAY_BENCH_QUICK=1`,
//! or without `--bench`) takes few events. A name filter (`async`, `drain`)
//! runs one part. Writes `target/livereplay-bench/fanout-summary.csv`.

mod baselines;
mod support;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc as StdArc;
use std::thread;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use livereplay::{Clock, CoarseClock, ReplayStore, Revision, SessionKey};
use tokio::sync::broadcast::error::TryRecvError;

use baselines::BroadcastSession;
use support::{per_second, spread, Settings};

const SUBSCRIBERS: usize = 64;
const CAPACITY: usize = 2048;
/// How far the writer may run ahead of the slowest subscriber.
const MAX_AHEAD: u64 = (CAPACITY / 2) as u64;
/// Events appended between two drains in the drain part.
const DRAIN_BURST: u64 = 512;
/// No run of this bench lasts longer: a stuck run fails instead of hanging.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

fn session_key(n: usize) -> SessionKey {
    SessionKey::new("acme", &format!("fanout-{n:06}")).expect("a valid key")
}

/// The slowest subscriber's count of events received.
fn slowest(progress: &[AtomicU64]) -> u64 {
    progress
        .iter()
        // Relaxed: pacing only; the events themselves are checked by value.
        .map(|p| p.load(Ordering::Relaxed))
        .min()
        .unwrap_or(0)
}

/// Appends `events` with `append`, paced by `progress`, and returns the
/// time until every subscriber has them all.
fn paced_writer(events: u64, progress: &[AtomicU64], mut append: impl FnMut(u64)) -> Duration {
    let started = Instant::now();
    let mut allowed = 0;
    for i in 0..events {
        if i >= allowed {
            loop {
                let slowest = slowest(progress);
                if i < slowest + MAX_AHEAD {
                    allowed = slowest + MAX_AHEAD;
                    break;
                }
                assert!(started.elapsed() < WAIT_LIMIT, "subscribers stalled");
                thread::yield_now();
            }
        }
        append(i);
    }
    while slowest(progress) < events {
        assert!(started.elapsed() < WAIT_LIMIT, "subscribers stalled");
        thread::yield_now();
    }
    started.elapsed()
}

/// A store with the default clock, or `clock`.
fn store(clock: Option<StdArc<dyn Clock>>) -> ReplayStore<u64> {
    match clock {
        Some(clock) => ReplayStore::builder()
            .clock(clock)
            .build()
            .expect("a store"),
        None => ReplayStore::default(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("a tokio runtime")
}

/// Ours: 64 `Stream`s on the runtime. Returns events appended per second.
fn async_ours(events: u64, n: usize, clock: Option<StdArc<dyn Clock>>) -> f64 {
    let store = store(clock);
    let handle = store.session(&session_key(n)).expect("session");
    let runtime = runtime();
    let progress: Vec<AtomicU64> = (0..SUBSCRIBERS).map(|_| AtomicU64::new(0)).collect();
    let progress = std::sync::Arc::new(progress);
    let mut tasks = Vec::new();
    for s in 0..SUBSCRIBERS {
        let mut subscription = handle
            .subscribe_after(&handle.current_cursor())
            .expect("subscribe");
        let progress = std::sync::Arc::clone(&progress);
        tasks.push(runtime.spawn(async move {
            for i in 0..events {
                let event = subscription
                    .next()
                    .await
                    .expect("not ended")
                    .expect("no gap");
                assert_eq!(*event.payload(), i);
                progress[s].store(i + 1, Ordering::Relaxed);
            }
        }));
    }
    let elapsed = paced_writer(events, &progress, |i| {
        handle.append(Revision(1), i).expect("append");
    });
    for task in tasks {
        runtime.block_on(task).expect("subscriber task");
    }
    events as f64 / elapsed.as_secs_f64()
}

/// tokio broadcast: 64 receivers on the runtime.
fn async_broadcast(events: u64) -> f64 {
    let channel = BroadcastSession::<u64>::new(CAPACITY);
    let runtime = runtime();
    let progress: Vec<AtomicU64> = (0..SUBSCRIBERS).map(|_| AtomicU64::new(0)).collect();
    let progress = std::sync::Arc::new(progress);
    let mut tasks = Vec::new();
    for s in 0..SUBSCRIBERS {
        let mut receiver = channel.subscribe();
        let progress = std::sync::Arc::clone(&progress);
        tasks.push(runtime.spawn(async move {
            for i in 0..events {
                let event = receiver.recv().await.expect("no lag");
                assert_eq!(event.payload, i);
                progress[s].store(i + 1, Ordering::Relaxed);
            }
        }));
    }
    let elapsed = paced_writer(events, &progress, |i| {
        channel.append(i);
    });
    for task in tasks {
        runtime.block_on(task).expect("subscriber task");
    }
    events as f64 / elapsed.as_secs_f64()
}

/// Ours, one thread: append a burst, drain all 64 with `try_next`.
fn drain_ours(events: u64, n: usize, clock: Option<StdArc<dyn Clock>>) -> f64 {
    let store = store(clock);
    let handle = store.session(&session_key(n)).expect("session");
    let mut subscriptions: Vec<_> = (0..SUBSCRIBERS)
        .map(|_| {
            handle
                .subscribe_after(&handle.current_cursor())
                .expect("subscribe")
        })
        .collect();
    let started = Instant::now();
    let mut appended = 0;
    while appended < events {
        let burst = DRAIN_BURST.min(events - appended);
        for i in appended..appended + burst {
            handle.append(Revision(1), i).expect("append");
        }
        for subscription in &mut subscriptions {
            for i in appended..appended + burst {
                let event = subscription.try_next().expect("an event");
                debug_assert_eq!(*event.payload(), i);
                std::hint::black_box(event);
            }
        }
        appended += burst;
    }
    events as f64 / started.elapsed().as_secs_f64()
}

/// tokio broadcast, one thread: append a burst, drain all 64 with
/// `try_recv`.
fn drain_broadcast(events: u64) -> f64 {
    let channel = BroadcastSession::<u64>::new(CAPACITY);
    let mut receivers: Vec<_> = (0..SUBSCRIBERS).map(|_| channel.subscribe()).collect();
    let started = Instant::now();
    let mut appended = 0;
    while appended < events {
        let burst = DRAIN_BURST.min(events - appended);
        for i in appended..appended + burst {
            channel.append(i);
        }
        for receiver in &mut receivers {
            for i in appended..appended + burst {
                let event = match receiver.try_recv() {
                    Ok(event) => event,
                    Err(TryRecvError::Empty | TryRecvError::Closed | TryRecvError::Lagged(_)) => {
                        panic!("event {i} not delivered")
                    }
                };
                debug_assert_eq!(event.payload, i);
                std::hint::black_box(event);
            }
        }
        appended += burst;
    }
    events as f64 / started.elapsed().as_secs_f64()
}

/// A design of one part: its name and one repetition (given its number),
/// returning events appended per second.
type Design<'a> = (&'static str, Box<dyn FnMut(usize) -> f64 + 'a>);

/// Runs `repetitions` of each design, taking turns (the first design
/// rotates), and prints the rates and each design's ratio to the last one,
/// the baseline (above 1: it delivers more).
fn compare(part: &str, repetitions: usize, mut designs: Vec<Design<'_>>, summary: &mut String) {
    let count = designs.len();
    let mut rates = vec![Vec::new(); count];
    for repetition in 0..repetitions {
        for turn in 0..count {
            let design = (turn + repetition) % count;
            rates[design].push((designs[design].1)(repetition));
        }
        let baseline = rates[count - 1][repetition];
        for (design, (name, _)) in designs.iter().enumerate() {
            let rate = rates[design][repetition];
            let _ = writeln!(
                summary,
                "{part},{name},{repetition},{rate:.0},{:.3}",
                rate / baseline
            );
        }
    }
    let baseline_name = designs[count - 1].0;
    for (design, (name, _)) in designs.iter().enumerate() {
        println!("  {name:<24} {}", spread(&rates[design], per_second));
        if design + 1 < count {
            let ratios: Vec<f64> = rates[design]
                .iter()
                .zip(&rates[count - 1])
                .map(|(rate, baseline)| rate / baseline)
                .collect();
            println!(
                "  {:<24} {}",
                format!("  / {baseline_name}"),
                spread(&ratios, |r| format!("{r:.2}x"))
            );
        }
    }
}

fn main() {
    let settings = Settings::from_args();
    if settings.quick {
        println!("fanout: quick mode (few events; figures are not meaningful)");
    }
    let mut summary = String::from("part,design,repetition,events_per_s,ratio_to_broadcast\n");
    let repetitions = settings.size(5, 1);
    // One coarse clock for every store of the run (1 ms tick).
    let coarse: StdArc<dyn Clock> = StdArc::new(CoarseClock::default());
    if settings.runs("async") {
        let events = settings.size(100_000, 2_000) as u64;
        println!(
            "\n== fan-out, async: {SUBSCRIBERS} tasks on a 2-worker tokio runtime, {events} events, {repetitions} repetitions taking turns =="
        );
        let designs: Vec<Design<'_>> = vec![
            ("livereplay", Box::new(|n| async_ours(events, n, None))),
            (
                "livereplay, CoarseClock",
                Box::new(|n| async_ours(events, 100 + n, Some(StdArc::clone(&coarse)))),
            ),
            ("tokio broadcast", Box::new(|_| async_broadcast(events))),
        ];
        compare("async", repetitions, designs, &mut summary);
    }
    if settings.runs("drain") {
        let events = settings.size(100_000, 2_000) as u64;
        println!(
            "\n== fan-out, drain: one thread, bursts of {DRAIN_BURST}, {SUBSCRIBERS} subscribers, {events} events, {repetitions} repetitions taking turns =="
        );
        let designs: Vec<Design<'_>> = vec![
            (
                "livereplay",
                Box::new(|n| drain_ours(events, 1000 + n, None)),
            ),
            (
                "livereplay, CoarseClock",
                Box::new(|n| drain_ours(events, 1100 + n, Some(StdArc::clone(&coarse)))),
            ),
            ("tokio broadcast", Box::new(|_| drain_broadcast(events))),
        ];
        compare("drain", repetitions, designs, &mut summary);
    }
    support::write_out("fanout-summary.csv", &summary);
}
