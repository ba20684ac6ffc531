//! How much of the log a catch-up reads: about what it delivers.
//!
//! A catch-up reads the log for positions the ring no longer holds. The
//! Durable Streams server starts one for every response and stops it at
//! the response's byte budget, so a catch-up that read 512 records a step
//! made a response of one 1 MiB record load up to 512 MiB (a 100 MiB
//! catch-up of released 1 MiB records ran at 0.08 GiB/s instead of 1.07).
//! Written against that code, where the first and the last test failed
//! (100 records loaded for one delivered; 40 MiB in one read).

#[path = "support/flaky_log.rs"]
mod flaky_log;

use std::sync::Arc;

use flaky_log::{FlakyLog, Mode};
use livereplay::durable::DurableLog;
use livereplay::{
    Config, Cursor, DurableOptions, ReplayStore, Revision, SessionKey, TryNextError, Utf8,
    LOG_BATCH,
};

/// A store over a healthy [`FlakyLog`] (which counts what it loads) holding `count` events of `len` bytes that
/// only the log holds (the ring released them all).
fn logged_only(count: u64, len: usize) -> (ReplayStore<String>, Arc<FlakyLog>, SessionKey) {
    logged_only_sized(count, |_| len)
}

/// [`logged_only`] with the payload of position `n` `len_of(n)` bytes long
/// (at least 8).
fn logged_only_sized(
    count: u64,
    len_of: impl Fn(u64) -> usize,
) -> (ReplayStore<String>, Arc<FlakyLog>, SessionKey) {
    let log = Arc::new(FlakyLog::new(Mode::Healthy));
    let store = ReplayStore::builder()
        .config(Config::default().with_capacity(64).with_auto_sweep(false))
        .durable(log.clone() as Arc<dyn DurableLog>, Utf8)
        .durable_options(DurableOptions::default().with_persister_thread(false))
        .build()
        .expect("a store");
    let key = SessionKey::new("tenant", "large").expect("a key");
    for n in 1..=count {
        let payload = format!("{n:08}") + &"x".repeat(len_of(n) - 8);
        store.append(&key, Revision(n), payload).expect("append");
        if n % 32 == 0 {
            while store.persist_round().is_some() {}
        }
    }
    while store.persist_round().is_some() {}
    store.release_through(&key, count);
    (store, log, key)
}

/// Delivers the whole session from the start, checking the order.
fn read_all(store: &ReplayStore<String>, key: &SessionKey, count: u64) {
    let mut catch_up = store
        .catch_up(&Cursor::start(key.clone()))
        .expect("catch up");
    for n in 1..=count {
        let event = catch_up.try_next().expect("the next event");
        assert_eq!(event.position(), n);
        assert_eq!(&event.payload()[..8], format!("{n:08}"));
    }
    assert!(matches!(catch_up.try_next(), Err(TryNextError::Empty)));
}

/// Delivers the first `count` events, in order, then stops; returns how
/// many records the log loaded for them.
fn loaded_to_deliver(
    store: &ReplayStore<String>,
    log: &FlakyLog,
    key: &SessionKey,
    count: u64,
) -> u64 {
    let mut catch_up = store
        .catch_up(&Cursor::start(key.clone()))
        .expect("catch up");
    for n in 1..=count {
        assert_eq!(catch_up.try_next().expect("an event").position(), n);
    }
    drop(catch_up);
    log.loaded_records()
}

#[test]
fn a_catch_up_that_delivers_one_record_loads_about_one() {
    let (store, log, key) = logged_only(100, 10_000);
    let loaded = loaded_to_deliver(&store, &log, &key, 1);
    assert!(loaded <= 2, "{loaded} records loaded to deliver one");
}

#[test]
fn a_long_catch_up_of_small_records_reads_log_batches() {
    let count = 4000;
    let (store, log, key) = logged_only(count, 100);
    read_all(&store, &key, count);
    let calls = log.load_calls();
    // Ten growing steps reach LOG_BATCH; the rest are LOG_BATCH each.
    let most = 10 + count / LOG_BATCH as u64 + 2;
    assert!(
        calls <= most,
        "{calls} log reads for {count} records (at most {most})"
    );
}

/// Records of 200 KiB, a response's byte budget of 1 MiB: a catch-up that
/// stops after five loads at most twice what it delivered.
#[test]
fn a_catch_up_that_stops_early_loads_at_most_twice_what_it_delivers() {
    let (store, log, key) = logged_only(60, 200 << 10);
    let loaded = loaded_to_deliver(&store, &log, &key, 5);
    assert!(
        loaded <= 10,
        "{loaded} records of 200 KiB loaded to deliver five"
    );
}

/// A small first record (a Durable Streams stream's `Created`) says
/// nothing of the size of those after it: the step after it still grows
/// by a factor, not to what the small record's size would allow.
#[test]
fn a_small_first_record_does_not_make_the_next_step_load_everything() {
    let (store, log, key) = logged_only_sized(40, |n| if n == 1 { 32 } else { 1 << 20 });
    let loaded = loaded_to_deliver(&store, &log, &key, 2);
    assert!(loaded <= 3, "{loaded} records loaded to deliver two");
}

#[test]
fn a_long_catch_up_of_large_records_reads_a_few_mib_a_step() {
    let count = 40;
    let (store, log, key) = logged_only(count, 1 << 20);
    read_all(&store, &key, count);
    let largest = log.largest_load_bytes();
    assert!(
        largest <= 5 << 20,
        "one log read returned {} MiB",
        largest >> 20
    );
    assert_eq!(log.loaded_records(), count);
}
