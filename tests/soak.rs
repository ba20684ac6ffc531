//! Soak, bounded for CI: two phases of churn (sessions created and
//! abandoned, subscribers dropping mid-stream, writers on several threads,
//! time moved by a `ManualClock`), each followed by a quiet period. Checks
//! that every quiet period leaves the store empty and that memory plateaus
//! (the second phase peaks no higher than the first, plus slack). The logic
//! and its justification are in `soak_support/churn.rs`, shared with
//! `examples/soak.rs`, which runs it for longer by hand.

#[path = "soak_support/churn.rs"]
mod churn;

use std::time::Duration;

#[test]
fn churn_leaves_nothing_behind_and_memory_plateaus() {
    // Two phases of 4 s each, plus quiet periods.
    let config = churn::SoakConfig::with_phase(Duration::from_secs(4));
    let report = churn::run(&config, || None, |_| {});
    for (index, sample) in report.samples.iter().enumerate() {
        if index % 20 == 0 || sample.phase == "settled" {
            eprintln!("{}", sample.line());
        }
    }
    eprintln!("{}", report.summary());
    if let Err(failure) = report.check() {
        panic!("{failure}\n{}", report.summary());
    }
}
