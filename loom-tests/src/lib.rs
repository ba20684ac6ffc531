//! Scaffolding shared by the loom models in `tests/` (see README.md).
//!
//! Every model runs `livereplay`'s real code with loom's atomics, fences and
//! `Arc` (the crate's `--cfg loom` switch), builds its store the same way
//! (a manual clock, so time is not part of the model, and an age bound no
//! model reaches unless it moves the clock on purpose), and reports how many
//! executions loom explored and how long that took, so a model that grows
//! too expensive is noticed.
//!
//! Everything here is compiled only under `--cfg loom`; a plain
//! `cargo test --workspace` builds an empty crate.

#[cfg(loom)]
mod scaffolding {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc as StdArc;
    use std::time::{Duration, Instant};

    use livereplay::{Config, ManualClock, ReplayStore, SessionKey};

    /// The preemption bound when `LOOM_MAX_PREEMPTIONS` is not set.
    pub const DEFAULT_PREEMPTION_BOUND: usize = 2;

    /// The age bound of every model store: far beyond any clock move a
    /// model makes unless it means to expire events.
    pub const MAX_AGE: Duration = Duration::from_secs(3600);

    /// Explores every interleaving of `body` up to the preemption bound
    /// (`LOOM_MAX_PREEMPTIONS`, or `DEFAULT_PREEMPTION_BOUND`), then prints
    /// the model's name, the bound, the executions explored and the time.
    pub fn check(name: &str, body: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        if builder.preemption_bound.is_none() {
            builder.preemption_bound = Some(DEFAULT_PREEMPTION_BOUND);
        }
        let bound = builder.preemption_bound;
        // A std atomic, outside the model: it only counts executions.
        let executions = StdArc::new(AtomicUsize::new(0));
        let counter = StdArc::clone(&executions);
        let started = Instant::now();
        builder.check(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            body();
        });
        eprintln!(
            "loom model {name}: preemption bound {bound:?}, {} executions, {:.2?}",
            executions.load(Ordering::Relaxed),
            started.elapsed()
        );
        let outcomes = OUTCOMES.with(|outcomes| std::mem::take(&mut *outcomes.borrow_mut()));
        if !outcomes.is_empty() {
            let counts: Vec<String> = outcomes
                .iter()
                .map(|(outcome, count)| format!("{outcome}: {count}"))
                .collect();
            eprintln!("loom model {name}: outcomes {}", counts.join(", "));
        }
    }

    thread_local! {
        /// Outcomes a model counted ([`tally`]), outside the model: loom
        /// runs every model thread as a coroutine on the test's own thread.
        static OUTCOMES: RefCell<BTreeMap<&'static str, usize>> =
            const { RefCell::new(BTreeMap::new()) };
    }

    /// Counts one execution's `outcome`; [`check`] prints the counts. A
    /// model tallies the outcomes that show loom explored an interleaving
    /// (an outcome never counted is an interleaving never explored).
    pub fn tally(outcome: &'static str) {
        OUTCOMES.with(|outcomes| *outcomes.borrow_mut().entry(outcome).or_default() += 1);
    }

    /// A store whose sessions keep `capacity` events, with a manual clock
    /// (returned, so a model can expire events on purpose).
    pub fn store_with_clock(capacity: usize) -> (ReplayStore<u64>, StdArc<ManualClock>) {
        let clock = StdArc::new(ManualClock::new());
        let store = ReplayStore::builder()
            .config(
                Config::default()
                    .with_capacity(capacity)
                    .with_max_age(MAX_AGE)
                    .with_auto_sweep(false),
            )
            .clock(clock.clone())
            .build()
            .expect("a valid model configuration");
        (store, clock)
    }

    /// A store whose sessions keep `capacity` events.
    pub fn store(capacity: usize) -> ReplayStore<u64> {
        store_with_clock(capacity).0
    }

    /// Payloads as 8 little-endian bytes: the codec of the models' durable
    /// logs.
    pub struct U64Codec;

    impl livereplay::Codec<u64> for U64Codec {
        fn encode(&self, payload: &u64, out: &mut Vec<u8>) -> Result<(), livereplay::CodecError> {
            out.extend_from_slice(&payload.to_le_bytes());
            Ok(())
        }

        fn decode(&self, bytes: &[u8]) -> Result<u64, livereplay::CodecError> {
            let bytes: [u8; 8] = bytes.try_into().map_err(livereplay::CodecError::new)?;
            Ok(u64::from_le_bytes(bytes))
        }
    }

    /// The one session key every model uses.
    pub fn key() -> SessionKey {
        SessionKey::new("tenant", "session").expect("a valid key")
    }

    /// The gap a read was answered with; panics (failing the model) if the
    /// read succeeded or failed for another reason.
    pub fn expect_gap<T: std::fmt::Debug>(result: Result<T, livereplay::Error>) -> livereplay::Gap {
        match result {
            Err(livereplay::Error::Gap(gap)) => gap,
            other => panic!("expected a gap, got {other:?}"),
        }
    }

    /// The positions of a run of events.
    pub fn positions(events: &[livereplay::Arc<livereplay::Event<u64>>]) -> Vec<u64> {
        events.iter().map(|event| event.position()).collect()
    }
}

#[cfg(loom)]
pub use scaffolding::*;
