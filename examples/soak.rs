//! Soak by hand: the churn of `tests/soak.rs` for as long as you like,
//! printing every sample of resident memory and `stats()`.
//!
//! ```text
//! cargo run --release --example soak -- --seconds 120
//! ```
//!
//! `--seconds N` is the length of each of the two churn phases (default 5);
//! `--every K` prints every K-th sample (default 10). Exits non-zero if the
//! store is not empty after a quiet period or memory did not plateau (see
//! `tests/soak_support/churn.rs`).

#[path = "../tests/soak_support/churn.rs"]
mod churn;

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Counts live heap bytes, so a run can tell a leak (live bytes stay up)
/// from the allocator caching freed memory (RSS stays up, live bytes fall).
struct CountingAllocator;

static LIVE_BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; the counter only observes sizes.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as u64, Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as u64, Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as u64, Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE_BYTES.fetch_sub(layout.size() as u64, Relaxed);
            LIVE_BYTES.fetch_add(new_size as u64, Relaxed);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn main() -> ExitCode {
    let mut seconds = 5u64;
    let mut every = 10usize;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().and_then(|v| v.parse::<u64>().ok());
        match (flag.as_str(), value) {
            ("--seconds", Some(v)) => seconds = v,
            ("--every", Some(v)) => every = v.max(1) as usize,
            _ => {
                eprintln!("usage: soak [--seconds N] [--every K]");
                return ExitCode::from(2);
            }
        }
    }
    let config = churn::SoakConfig::with_phase(Duration::from_secs(seconds));
    println!("soak: two phases of {seconds} s, {config:?}");
    let mut taken = 0usize;
    let report = churn::run(
        &config,
        || Some(LIVE_BYTES.load(Relaxed)),
        |sample| {
            if taken.is_multiple_of(every) || sample.phase == "settled" {
                println!("{}", sample.line());
            }
            taken += 1;
        },
    );
    println!("{} samples", report.samples.len());
    println!("{}", report.summary());
    match report.check() {
        Ok(()) => {
            println!("ok: the store emptied after each phase and memory plateaued");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            println!("FAILED: {failure}");
            ExitCode::FAILURE
        }
    }
}
