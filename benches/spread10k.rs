//! The 10 000-session append (issue 13), measured so that two methods can
//! be compared on the same thing: one design, one heap layout, one key
//! order, per process. docs/benchmark-history.md ("10 000 sessions: why the
//! two methods disagreed") has the runs and what they show.
//!
//! `append` measured this case twice and the two disagreed: criterion (each
//! design populated and timed alone, the other store not yet built or
//! already dropped) against `support::paired` (both stores populated
//! session by session into one heap, then timed in turns). This target
//! separates the factors. `append` now uses this target's setup for the
//! combination on which the methods agree (`support/spread.rs`, shared by
//! both); "as in `append`" below means as it was before that change.
//! Environment:
//!
//! * `SPREAD_DESIGN`: `ours_key` (default), `ours_handle` or `reference`;
//! * `SPREAD_LAYOUT`: what is populated before timing:
//!   `alone` (default; only the measured design, as criterion in `append`),
//!   `interleaved` (both, session by session, as `paired` in `append`), or
//!   `blocks` (both, ours first then the reference, each contiguous);
//! * `SPREAD_ORDER`: `round_robin` (default; 0, 1, ..., 9 999, 0, ... as in
//!   `append`) or `random` (a fixed pseudo-random sequence, the same for
//!   every design and method);
//! * `SPREAD_AGE=N`: N turnover cycles (640 000 appends) on every populated
//!   design before any timing;
//! * `SPREAD_METHOD`: `criterion` (default), `batches` (the 2 ms batches
//!   `paired` times, one design only), `paired` (`support::paired`, the
//!   measured design and the other one; `SPREAD_THIRD=ours_handle` adds the
//!   third contender `append` has, on its own round-robin counter unless
//!   `SPREAD_THIRD_SHARED=1`), or `cycles` (designs taking turns of one
//!   whole turnover cycle each, mean per append);
//! * `SPREAD_HISTORY=one_session`: first run and drop the one-session
//!   stores, as `append`'s paired part does before this case;
//! * `SPREAD_ROUNDS` (batches, cycles) and `SPREAD_TRACE=1` (print every
//!   batch or turn).
//!
//! Run one combination per process, for example `SPREAD_ORDER=random
//! SPREAD_LAYOUT=interleaved SPREAD_AGE=6 SPREAD_DESIGN=reference cargo
//! bench --bench spread10k`. Without `--bench` (`cargo test --benches`) it
//! populates and runs 1 000 appends, timing nothing.

mod baselines;
#[path = "support/spread.rs"]
mod spread;
mod support;

use std::cell::Cell;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Throughput;
use livereplay::{ReplayStore, Revision};

use baselines::{floor_append, BroadcastStore, ReferenceStore};
use spread::{key, reference_id, runner, Design, Layout, Order, Run, CYCLE};
use support::Contender;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn parse_design(name: &str) -> Design {
    Design::parse(name)
        .unwrap_or_else(|| panic!("SPREAD_DESIGN={name}: ours_key, ours_handle or reference"))
}

/// One design alone in `paired`'s batches: calibrated to ~2 ms, then
/// `rounds` batches; prints the median and range of ns per append.
fn batches(label: &str, mut run: Run<'_>, rounds: usize) {
    let batch = Duration::from_millis(2);
    let mut n = 16u64;
    let iters = loop {
        let start = Instant::now();
        run(n);
        let took = start.elapsed();
        if took >= batch / 4 {
            break ((batch.as_secs_f64() / (took.as_secs_f64() / n as f64)) as u64).max(1);
        }
        n *= 4;
    };
    let mut per: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            run(iters);
            start.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    if std::env::var_os("SPREAD_TRACE").is_some() {
        let trace: Vec<String> = per.iter().map(|ns| format!("{ns:.0}")).collect();
        println!(
            "spread10k {label} trace (ns per append, batch by batch): {}",
            trace.join(" ")
        );
    }
    let mean = per.iter().sum::<f64>() / per.len() as f64;
    per.sort_by(f64::total_cmp);
    println!("spread10k {label} batches: mean of batches {mean:.1} ns");
    println!(
        "spread10k {label} batches: median {:.1} ns (q1 {:.1}, q3 {:.1}; {rounds} x {iters} appends)",
        support::at_quantile(&per, 0.5),
        support::at_quantile(&per, 0.25),
        support::at_quantile(&per, 0.75),
    );
}

/// What `append`'s paired part runs before its 10 000-session case: the
/// one-session stores (capacity 2048) appended to in turn, then dropped.
/// Leaves the heap as that process leaves it for the 10 000 sessions.
fn one_session_history(appends: u64) {
    let session_key = key(0);
    let id = reference_id(0);
    let store = ReplayStore::<u64>::default();
    let handle = store.session(&session_key).expect("session");
    let reference = ReferenceStore::<u64>::with_defaults();
    let broadcast = BroadcastStore::<u64>::new(2048);
    let channel = broadcast.session(&id);
    // In batches, as `paired` takes turns: ~2 ms of each design.
    for round in 0..appends / 10_000 {
        for i in round * 10_000..(round + 1) * 10_000 {
            black_box(handle.append(Revision(1), i).expect("append"));
        }
        for i in round * 10_000..(round + 1) * 10_000 {
            black_box(floor_append(&session_key, i, i));
            black_box(channel.append(i));
        }
        for i in round * 10_000..(round + 1) * 10_000 {
            black_box(reference.append(&id, 1, i));
        }
        for i in round * 10_000..(round + 1) * 10_000 {
            black_box(store.append(&session_key, Revision(1), i).expect("append"));
            black_box(broadcast.append(&id, i));
        }
    }
    drop((handle, store, reference, channel, broadcast));
}

fn main() {
    let history = env("SPREAD_HISTORY", "none");
    if history == "one_session" {
        one_session_history(if support::bench_mode() {
            2_000_000
        } else {
            20_000
        });
    }
    let design = env("SPREAD_DESIGN", "ours_key");
    let layout = env("SPREAD_LAYOUT", "alone");
    let method = env("SPREAD_METHOD", "criterion");
    let label = format!("{design}/{layout}/{method}/history={history}");
    let measured = parse_design(&design);
    let stores = spread::populate(
        Layout::parse(&layout)
            .unwrap_or_else(|| panic!("SPREAD_LAYOUT={layout}: alone, interleaved or blocks")),
        measured,
        {
            let order = env("SPREAD_ORDER", "round_robin");
            Order::parse(&order)
                .unwrap_or_else(|| panic!("SPREAD_ORDER={order}: round_robin or random"))
        },
    );
    let turn = Cell::new(0);
    // `SPREAD_AGE=N`: before any timing, N turnover cycles of appends on
    // every populated design, so the allocator's free lists are as a long
    // run leaves them, whatever the method (both designs slow down as
    // their heap ages; see docs/benchmark-history.md, "10 000 sessions: why
    // the two methods disagreed").
    let age: u64 = std::env::var("SPREAD_AGE")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    if age > 0 && support::bench_mode() {
        spread::age(&stores, age);
    }
    if !support::bench_mode() {
        // `cargo test --benches`: check the combination runs, time nothing.
        runner(&stores, measured, &turn)(1_000);
        return;
    }
    match method.as_str() {
        "criterion" => {
            let mut criterion = support::criterion();
            let mut group = criterion.benchmark_group("spread10k");
            group.throughput(Throughput::Elements(1));
            let mut run = runner(&stores, measured, &turn);
            group.bench_function(format!("{design}_{layout}"), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    run(iters);
                    start.elapsed()
                })
            });
            group.finish();
            criterion.final_summary();
        }
        "batches" => batches(
            &label,
            runner(&stores, measured, &turn),
            std::env::var("SPREAD_ROUNDS")
                .ok()
                .and_then(|value| value.parse().ok())
                .unwrap_or(support::paired_rounds()),
        ),
        "paired" => {
            let other = if measured == Design::Reference {
                Design::OursKey
            } else {
                Design::Reference
            };
            let turn_other = Cell::new(0);
            let turn_third = Cell::new(0);
            let mut csv = String::new();
            let mut contenders = vec![
                Contender {
                    name: if measured == Design::Reference {
                        "reference"
                    } else {
                        "ours"
                    },
                    run: runner(&stores, measured, &turn),
                },
                Contender {
                    name: if other == Design::Reference {
                        "reference"
                    } else {
                        "ours_key"
                    },
                    run: runner(&stores, other, &turn_other),
                },
            ];
            // `SPREAD_THIRD=ours_handle`: the third contender `append` has.
            if let Ok(third) = std::env::var("SPREAD_THIRD") {
                let third = parse_design(&third);
                contenders.push(Contender {
                    name: "third",
                    // `SPREAD_THIRD_SHARED=1`: one round-robin counter for
                    // both contenders on our store (as criterion's
                    // `append_10k_sessions` has), so neither revisits the
                    // sessions the other has just warmed.
                    run: if std::env::var_os("SPREAD_THIRD_SHARED").is_some() {
                        runner(&stores, third, &turn)
                    } else {
                        runner(&stores, third, &turn_third)
                    },
                });
            }
            support::paired(
                &format!("spread10k {layout} history={history}"),
                contenders,
                &mut csv,
            );
        }
        "cycles" => {
            let turn_other = Cell::new(0);
            let mut contenders = vec![(design.as_str(), runner(&stores, measured, &turn))];
            if stores.ours.is_some() && stores.reference.is_some() {
                let other = if measured == Design::Reference {
                    Design::OursKey
                } else {
                    Design::Reference
                };
                contenders.push((other.name(), runner(&stores, other, &turn_other)));
            }
            let rounds = std::env::var("SPREAD_ROUNDS")
                .ok()
                .and_then(|value| value.parse().ok())
                .unwrap_or(support::samples(5, 1));
            let per = spread::take_turns(&mut contenders, rounds, CYCLE);
            let names: Vec<&str> = contenders.iter().map(|(name, _)| *name).collect();
            spread::print_turns(
                &format!(
                    "spread10k cycles: {rounds} rounds, turns of {CYCLE} appends, designs taking turns"
                ),
                &names,
                &per,
                std::env::var_os("SPREAD_TRACE").is_some(),
            );
        }
        other => panic!("SPREAD_METHOD={other}: criterion, batches, paired or cycles"),
    }
}
