//! What every bench target shares: the quick mode CI uses, percentile
//! sampling for the latency loops (criterion reports means and medians,
//! not tails), CSV output for the chart script, and the table of criterion
//! medians and ratios printed after a run.
//!
//! Quick mode (`LIVEREPLAY_BENCH_QUICK=1`) shortens criterion's defaults
//! and cuts the sample counts of the custom loops, so a smoke run of every
//! bench finishes in a few minutes. Command-line flags given to criterion
//! (`-- --warm-up-time 0.1 --measurement-time 0.2`) still override it.

// Shared by several bench targets; each uses a subset.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use criterion::Criterion;

/// Whether the run is a smoke run (CI).
pub fn quick() -> bool {
    std::env::var("LIVEREPLAY_BENCH_QUICK").is_ok_and(|value| !value.is_empty() && value != "0")
}

/// `full` samples normally, `quick` in quick mode.
pub fn samples(full: usize, quick_count: usize) -> usize {
    if quick() {
        quick_count
    } else {
        full
    }
}

/// Criterion configured from the command line, with short defaults in
/// quick mode.
pub fn criterion() -> Criterion {
    let base = Criterion::default();
    let base = if quick() {
        base.warm_up_time(Duration::from_millis(100))
            .measurement_time(Duration::from_millis(200))
            .sample_size(20)
    } else {
        base
    };
    base.configure_from_args()
}

/// Where the benches write their CSVs: `<target>/livereplay-bench/`.
pub fn out_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    let dir = target.join("livereplay-bench");
    if let Err(error) = std::fs::create_dir_all(&dir) {
        eprintln!("cannot create {}: {error}", dir.display());
    }
    dir
}

/// Whether this is a benchmark run (`cargo bench` passes `--bench`), not
/// `cargo test --benches` running each bench once.
pub fn bench_mode() -> bool {
    std::env::args().any(|arg| arg == "--bench")
}

/// Writes `text` to `out_dir()/name`, reporting (not failing on) errors:
/// a bench run is still worth its printed figures. A test run writes
/// nothing, so it never overwrites a bench run's figures.
pub fn write_out(name: &str, text: &str) {
    if !bench_mode() {
        return;
    }
    let path = out_dir().join(name);
    match std::fs::write(&path, text) {
        Ok(()) => println!("wrote {}", path.display()),
        Err(error) => eprintln!("cannot write {}: {error}", path.display()),
    }
}

/// The tail of a latency distribution, in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Percentiles {
    pub count: usize,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

/// The value at quantile `q` (0..=1) of sorted samples (nearest rank).
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Percentiles {
    /// Sorts `samples` in place and reads the percentiles off them.
    pub fn of(samples: &mut [u64]) -> Self {
        samples.sort_unstable();
        let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
        Self {
            count: samples.len(),
            p50: quantile(samples, 0.50),
            p99: quantile(samples, 0.99),
            p999: quantile(samples, 0.999),
            max: samples.last().copied().unwrap_or(0),
            mean: if samples.is_empty() {
                0.0
            } else {
                sum as f64 / samples.len() as f64
            },
        }
    }
}

/// Quantiles for a distribution chart: dense in the body, denser in the
/// tail (99%, 99.9%, 99.99% ...), as `(quantile, nanos)` of sorted samples.
pub fn chart_quantiles(sorted: &[u64]) -> Vec<(f64, u64)> {
    let mut qs: Vec<f64> = (1..100).map(|i| f64::from(i) / 100.0).collect();
    for nines in 2..=5 {
        let tail = 10f64.powi(-nines);
        for step in 1..10 {
            qs.push(1.0 - tail * f64::from(10 - step));
        }
    }
    qs.push(1.0);
    qs.sort_by(f64::total_cmp);
    qs.dedup();
    // A quantile finer than the sample count repeats the max: skip it.
    qs.retain(|&q| q == 1.0 || (1.0 - q) * sorted.len() as f64 >= 1.0);
    qs.into_iter().map(|q| (q, quantile(sorted, q))).collect()
}

/// `ns` as a short human figure.
pub fn human(ns: f64) -> String {
    if ns >= 1_000_000.0 {
        format!("{:.2} ms", ns / 1_000_000.0)
    } else if ns >= 1_000.0 {
        format!("{:.2} µs", ns / 1_000.0)
    } else {
        format!("{ns:.1} ns")
    }
}

/// One scenario's row in the summary table: our bench and the baselines
/// it is compared with (criterion ids `group/function`).
pub struct Comparison {
    pub scenario: &'static str,
    pub ours: &'static str,
    pub others: &'static [(&'static str, &'static str)],
}

/// The median (ns per iteration) criterion estimated for `id` in this run,
/// or `None` if `id` did not run in this process (filtered out, test mode).
pub fn criterion_median(id: &str, since: SystemTime) -> Option<f64> {
    let home = std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| out_dir().with_file_name("criterion"));
    let path = home.join(id).join("new").join("estimates.json");
    let fresh = std::fs::metadata(&path)
        .and_then(|meta| meta.modified())
        .is_ok_and(|modified| modified >= since);
    if !fresh {
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["median"]["point_estimate"].as_f64()
}

/// Prints every comparison (medians and ratios) and writes them to
/// `out_dir()/<bench>-medians.csv`. A ratio is the other design's median
/// over ours: above 1, ours is faster.
pub fn report(bench: &str, since: SystemTime, comparisons: &[Comparison]) {
    let mut csv = String::from("scenario,design,bench_id,median_ns,ratio_other_over_ours\n");
    println!(
        "\n== {bench}: medians (criterion) and ratios (other / ours; > 1 means ours is faster) =="
    );
    for comparison in comparisons {
        let Some(ours) = criterion_median(comparison.ours, since) else {
            continue;
        };
        println!("{}", comparison.scenario);
        println!(
            "  {:<34} {:>12}",
            format!("ours ({})", comparison.ours),
            human(ours)
        );
        let _ = writeln!(
            csv,
            "{},ours,{},{ours:.2},1",
            comparison.scenario, comparison.ours
        );
        for (label, id) in comparison.others {
            let Some(other) = criterion_median(id, since) else {
                continue;
            };
            let ratio = other / ours;
            println!("  {label:<34} {:>12}   ratio {ratio:.2}", human(other));
            let _ = writeln!(
                csv,
                "{},{label},{id},{other:.2},{ratio:.3}",
                comparison.scenario
            );
        }
    }
    write_out(&format!("{bench}-medians.csv"), &csv);
}

/// One design in a paired comparison: `run(iters)` performs `iters`
/// iterations of the measured operation.
pub struct Contender<'a> {
    pub name: &'static str,
    pub run: Box<dyn FnMut(u64) + 'a>,
}

impl<'a> Contender<'a> {
    pub fn new(name: &'static str, run: impl FnMut(u64) + 'a) -> Self {
        Self {
            name,
            run: Box::new(run),
        }
    }
}

/// How many rounds a paired comparison takes.
pub fn paired_rounds() -> usize {
    samples(200, 10)
}

/// Times every contender in short batches (about `BATCH` each), taking
/// turns round after round, so that a change in the machine's load hits
/// every design alike. Returns, per contender, the median time per
/// iteration and, for every contender after the first, the median and
/// quartiles of the per-round ratio `contender / first` (> 1: the first
/// is faster). Prints them and appends them to `csv`.
pub fn paired(scenario: &str, contenders: Vec<Contender<'_>>, csv: &mut String) {
    paired_batches(scenario, contenders, Duration::from_millis(2), csv);
}

/// [`paired`] with batches of about `batch` (longer for contenders that
/// start threads).
pub fn paired_batches(
    scenario: &str,
    mut contenders: Vec<Contender<'_>>,
    batch: Duration,
    csv: &mut String,
) {
    let rounds = paired_rounds();
    // Calibrate: iterations per batch for each contender.
    let iters: Vec<u64> = contenders
        .iter_mut()
        .map(|contender| {
            let mut n = 16u64;
            loop {
                let start = std::time::Instant::now();
                (contender.run)(n);
                let took = start.elapsed();
                if took >= batch / 4 || n >= 1 << 30 {
                    let per = took.as_secs_f64() / n as f64;
                    break ((batch.as_secs_f64() / per) as u64).max(1);
                }
                n *= 4;
            }
        })
        .collect();
    let mut per_iter: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); contenders.len()];
    for round in 0..rounds {
        for turn in 0..contenders.len() {
            let index = (turn + round) % contenders.len();
            let start = std::time::Instant::now();
            (contenders[index].run)(iters[index]);
            per_iter[index].push(start.elapsed().as_nanos() as f64 / iters[index] as f64);
        }
    }
    let median = |values: &[f64], q: f64| {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[((sorted.len() - 1) as f64 * q).round() as usize]
    };
    println!(
        "{scenario}  (paired: {rounds} rounds of ~{} ms batches, designs taking turns)",
        batch.as_millis()
    );
    let first = &per_iter[0];
    for (index, contender) in contenders.iter().enumerate() {
        let times = &per_iter[index];
        let ratios: Vec<f64> = times.iter().zip(first).map(|(t, f)| t / f).collect();
        let ratio = median(&ratios, 0.5);
        if index == 0 {
            println!("  {:<34} {:>12}", contender.name, human(median(times, 0.5)));
        } else {
            println!(
                "  {:<34} {:>12}   ratio {ratio:.2} (quartiles {:.2}..{:.2})",
                contender.name,
                human(median(times, 0.5)),
                median(&ratios, 0.25),
                median(&ratios, 0.75)
            );
        }
        let _ = writeln!(
            csv,
            "{scenario},{},{:.2},{ratio:.3},{:.3},{:.3}",
            contender.name,
            median(times, 0.5),
            median(&ratios, 0.25),
            median(&ratios, 0.75)
        );
    }
}

/// The header of the CSV `paired` appends to.
pub const PAIRED_CSV_HEADER: &str =
    "scenario,design,median_ns_per_iter,ratio_over_first,ratio_q1,ratio_q3\n";

/// The name filter given on the command line (criterion's positional
/// argument), if any, skipping flags and their values.
pub fn name_filter() -> Option<String> {
    const WITH_VALUE: &[&str] = &[
        "--warm-up-time",
        "--measurement-time",
        "--sample-size",
        "--profile-time",
        "--save-baseline",
        "--baseline",
        "--baseline-lenient",
        "--load-baseline",
        "--color",
        "--output-format",
        "--plotting-backend",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--nresamples",
        "--format",
    ];
    let mut args = std::env::args().skip(1);
    let mut filter = None;
    while let Some(arg) = args.next() {
        if WITH_VALUE.contains(&arg.as_str()) {
            args.next();
        } else if !arg.starts_with('-') {
            filter = Some(arg);
        }
    }
    filter
}

/// Whether the paired comparisons run: not when criterion profiles, lists
/// or runs as a test (no `--bench`), and not when a name filter excludes
/// `paired`.
pub fn paired_enabled() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let mode_ok = bench_mode()
        && !args
            .iter()
            .any(|arg| arg == "--profile-time" || arg == "--list");
    mode_ok && name_filter().is_none_or(|filter| "paired".contains(filter.as_str()))
}

/// What a custom (non-criterion) bench target takes from its command line:
/// quick mode (also when run without `--bench`, as `cargo test --benches`
/// does) and a name filter, the first positional argument. Criterion-style
/// flags are accepted and ignored (with their values).
pub struct Settings {
    pub quick: bool,
    pub filter: Option<String>,
}

impl Settings {
    pub fn from_args() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let bench_mode = args.iter().any(|arg| arg == "--bench");
        let mut filter = None;
        let mut skip_value = false;
        for arg in &args {
            if skip_value {
                skip_value = false;
            } else if arg.starts_with("--") {
                skip_value =
                    !matches!(arg.as_str(), "--bench" | "--test" | "--list") && !arg.contains('=');
            } else {
                filter = Some(arg.clone());
            }
        }
        Self {
            quick: quick() || !bench_mode,
            filter,
        }
    }

    /// Whether the part named `name` runs (no filter, or it matches).
    pub fn runs(&self, name: &str) -> bool {
        self.filter
            .as_ref()
            .is_none_or(|filter| name.contains(filter.as_str()))
    }

    /// `quick` in quick mode, else `full`.
    pub fn size(&self, full: usize, quick: usize) -> usize {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

/// A duration in whole nanoseconds (saturating).
pub fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Nanoseconds since `base`.
pub fn nanos_since(base: std::time::Instant) -> u64 {
    nanos(base.elapsed())
}

/// The value at quantile `q` of `values` (sorted copy, nearest rank).
pub fn at_quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// `median (min..max)` of repeated measurements.
pub fn spread(values: &[f64], show: impl Fn(f64) -> String) -> String {
    if values.len() == 1 {
        return show(values[0]);
    }
    format!(
        "{} ({}..{})",
        show(at_quantile(values, 0.5)),
        show(at_quantile(values, 0.0)),
        show(at_quantile(values, 1.0))
    )
}

/// An event rate, in events/s, k or M.
pub fn per_second(rate: f64) -> String {
    if rate < 1e4 {
        format!("{rate:.0} events/s")
    } else if rate >= 1e6 {
        format!("{:.2} M events/s", rate / 1e6)
    } else {
        format!("{:.0} k events/s", rate / 1e3)
    }
}
