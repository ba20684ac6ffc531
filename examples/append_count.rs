//! N appends in one of four shapes, and nothing else: the program
//! `scripts/append_instructions.sh` runs under `valgrind --tool=callgrind`
//! to count the instructions of one append at two revisions (counts are
//! repeatable on a loaded machine, where wall-clock medians are not).
//!
//! ```sh
//! cargo run --release --example append_count -- handle 100000
//! ```
//!
//! Shapes: `handle` (one session through a handle, capacity 2048, no log),
//! `spread` (10 000 sessions by key, capacity 128, no log), `durable` (one
//! session over a `MemoryLog`, persister off, the default budget for
//! undurable events) and `durable0` (the same with no budget).

use std::sync::Arc;

use livereplay::durable::MemoryLog;
use livereplay::{Config, DurableOptions, ReplayStore, Revision, SessionKey, Utf8};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: append_count handle|spread|durable|durable0 COUNT";
    let shape = args.next().ok_or(usage)?;
    let count: u64 = args.next().ok_or(usage)?.parse()?;
    match shape.as_str() {
        "handle" => {
            let store = ReplayStore::<u64>::new(Config::default().with_capacity(2048))?;
            let handle = store.session(&SessionKey::new("t", "s")?)?;
            for i in 0..count {
                handle.append(Revision(1), i)?;
            }
        }
        "spread" => {
            let config = Config::default()
                .with_capacity(128)
                .with_max_sessions(20_000);
            let store = ReplayStore::<u64>::new(config)?;
            let keys = (0..10_000)
                .map(|i| SessionKey::new("t", &format!("s{i}")))
                .collect::<Result<Vec<_>, _>>()?;
            for i in 0..count {
                store.append(&keys[(i % 10_000) as usize], Revision(1), i)?;
            }
        }
        "durable" | "durable0" => {
            let mut options = DurableOptions::default().with_persister_thread(false);
            if shape == "durable0" {
                options = options.with_undurable_budget(0);
            }
            let store = ReplayStore::<String>::builder()
                .config(Config::default().with_capacity(2048))
                .durable(Arc::new(MemoryLog::new()), Utf8)
                .durable_options(options)
                .build()?;
            let handle = store.session(&SessionKey::new("t", "s")?)?;
            for _ in 0..count {
                handle.append(Revision(1), String::new())?;
            }
            // Not dropped: with no persister, dropping would free every
            // event the budget kept, a cost of this program's end that
            // grows with COUNT, not a cost of an append.
            std::mem::forget((handle, store));
        }
        _ => return Err(usage.into()),
    }
    Ok(())
}
