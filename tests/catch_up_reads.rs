//! How much of the log a catch-up reads: about what it delivers.
//!
//! A catch-up reads the log for positions the ring no longer holds. The
//! Durable Streams server starts one for every response and stops it at
//! the response's byte budget, so a catch-up that read 512 records a step
//! made a response of one 1 MiB record load up to 512 MiB (a 100 MiB
//! catch-up of released 1 MiB records ran at 0.08 GiB/s instead of 1.07).
//! Written against that code, where the first test failed (100 records
//! loaded for one delivered).

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use livereplay::durable::{
    DurableLog, IndexStore, LogError, LogRecord, LogWatch, MemoryLog, RecordBody, SessionMeta,
    SessionWrite,
};
use livereplay::{
    Config, Cursor, DurableOptions, ReplayStore, Revision, SessionKey, TryNextError, Utf8,
    LOG_BATCH,
};

/// A [`MemoryLog`] that counts what `load_after` returns.
#[derive(Default)]
struct CountingLog {
    inner: MemoryLog,
    calls: AtomicUsize,
    records: AtomicUsize,
    /// The most payload bytes one call returned.
    largest_call_bytes: AtomicUsize,
}

impl DurableLog for CountingLog {
    fn append(&self, writes: &[SessionWrite<'_>]) -> Result<(), LogError> {
        self.inner.append(writes)
    }
    fn load_after(
        &self,
        key: &SessionKey,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        let records = self.inner.load_after(key, after, limit)?;
        let bytes = records
            .iter()
            .map(|record| match &record.body {
                RecordBody::Event(event) => event.payload.len(),
                RecordBody::Hole { .. } => 0,
            })
            .sum();
        self.calls.fetch_add(1, SeqCst);
        self.records.fetch_add(records.len(), SeqCst);
        self.largest_call_bytes.fetch_max(bytes, SeqCst);
        Ok(records)
    }
    fn meta(&self, key: &SessionKey) -> Result<Option<SessionMeta>, LogError> {
        self.inner.meta(key)
    }
    fn archive_before(&self, key: &SessionKey, watermark: u64) -> Result<u64, LogError> {
        self.inner.archive_before(key, watermark)
    }
    fn sessions(
        &self,
        tenant: &str,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<SessionKey>, LogError> {
        self.inner.sessions(tenant, limit, offset)
    }
    fn watch(&self) -> Option<&dyn LogWatch> {
        self.inner.watch()
    }
    fn index(&self) -> Option<&dyn IndexStore> {
        self.inner.index()
    }
}

/// A store over a counting log holding `count` events of `len` bytes that
/// only the log holds (the ring released them all).
fn logged_only(count: u64, len: usize) -> (ReplayStore<String>, Arc<CountingLog>, SessionKey) {
    logged_only_sized(count, |_| len)
}

/// [`logged_only`] with the payload of position `n` `len_of(n)` bytes long
/// (at least 8).
fn logged_only_sized(
    count: u64,
    len_of: impl Fn(u64) -> usize,
) -> (ReplayStore<String>, Arc<CountingLog>, SessionKey) {
    let log = Arc::new(CountingLog::default());
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

#[test]
fn a_catch_up_that_delivers_one_record_loads_about_one() {
    let (store, log, key) = logged_only(100, 10_000);
    let mut catch_up = store
        .catch_up(&Cursor::start(key.clone()))
        .expect("catch up");
    assert_eq!(catch_up.try_next().expect("an event").position(), 1);
    drop(catch_up);
    let loaded = log.records.load(SeqCst);
    assert!(loaded <= 2, "{loaded} records loaded to deliver one");
}

#[test]
fn a_long_catch_up_of_small_records_reads_log_batches() {
    let count = 4000;
    let (store, log, key) = logged_only(count, 100);
    read_all(&store, &key, count);
    let calls = log.calls.load(SeqCst);
    // Ten growing steps reach LOG_BATCH; the rest are LOG_BATCH each.
    let most = 10 + count as usize / LOG_BATCH + 2;
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
    let mut catch_up = store
        .catch_up(&Cursor::start(key.clone()))
        .expect("catch up");
    for n in 1..=5 {
        assert_eq!(catch_up.try_next().expect("an event").position(), n);
    }
    drop(catch_up);
    let loaded = log.records.load(SeqCst);
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
    let mut catch_up = store
        .catch_up(&Cursor::start(key.clone()))
        .expect("catch up");
    for n in 1..=2 {
        assert_eq!(catch_up.try_next().expect("an event").position(), n);
    }
    drop(catch_up);
    let loaded = log.records.load(SeqCst);
    assert!(loaded <= 3, "{loaded} records loaded to deliver two");
}

#[test]
fn a_long_catch_up_of_large_records_reads_a_few_mib_a_step() {
    let count = 40;
    let (store, log, key) = logged_only(count, 1 << 20);
    read_all(&store, &key, count);
    let largest = log.largest_call_bytes.load(SeqCst);
    assert!(
        largest <= 5 << 20,
        "one log read returned {} MiB",
        largest >> 20
    );
    assert_eq!(log.records.load(SeqCst), count as usize);
}
