//! The seeds' shapes (`adapters::SessionLog`, seeds 000/001, and
//! `adapters::EventStore`, seed 003) against one suite, run on every
//! durable backend: the in-memory log always, redb and Postgres (a real
//! server the fixture starts) with their features. A new
//! backend adds a fixture and one `adapter_suite!` call.

#[cfg(feature = "postgres")]
#[path = "support/postgres_server.rs"]
mod postgres_server;

use std::path::PathBuf;
use std::sync::Arc;

use livereplay::adapters::{AdapterError, EventStore, SessionLog};
use livereplay::durable::{DurableLog, MemoryLog};
use livereplay::{Config, RawBytes, ReplayStore, SessionKey};

/// A store over some backend; holds whatever must outlive it (a directory).
pub struct Fixture {
    pub store: Arc<ReplayStore<Vec<u8>>>,
    dir: Option<PathBuf>,
    /// A server the log talks to, stopped after the store (fields drop in
    /// order).
    _server: Option<Box<dyn std::any::Any>>,
}

/// A fixture, or none (the test returns) when its server cannot run here.
pub trait MaybeFixture {
    fn fixture(self) -> Option<Fixture>;
}

impl MaybeFixture for Fixture {
    fn fixture(self) -> Option<Fixture> {
        Some(self)
    }
}

impl MaybeFixture for Option<Fixture> {
    fn fixture(self) -> Option<Fixture> {
        self
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A ring of 4 events, so that most of every history is read from the log.
fn store_over(log: Arc<dyn DurableLog>) -> Arc<ReplayStore<Vec<u8>>> {
    Arc::new(
        ReplayStore::builder()
            .config(Config::default().with_capacity(4))
            .durable(log, RawBytes)
            .build()
            .expect("a valid store"),
    )
}

pub fn memory() -> Fixture {
    Fixture {
        store: store_over(Arc::new(MemoryLog::new())),
        dir: None,
        _server: None,
    }
}

#[cfg(feature = "redb")]
pub fn redb() -> Fixture {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "livereplay-adapters-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let log = livereplay::durable::RedbLog::open(dir.join("log.redb")).expect("a redb log");
    Fixture {
        store: store_over(Arc::new(log)),
        dir: Some(dir),
        _server: None,
    }
}

/// `None` (SKIPPED) without the Postgres binaries outside CI.
#[cfg(feature = "postgres")]
pub fn postgres() -> Option<Fixture> {
    let server = postgres_server::PostgresServer::start()?;
    let log = livereplay::durable::PostgresLog::open(&server.params()).expect("a Postgres log");
    Some(Fixture {
        store: store_over(Arc::new(log)),
        dir: None,
        _server: Some(Box::new(server)),
    })
}

fn bytes(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

fn texts(events: &[livereplay::Arc<livereplay::Event<Vec<u8>>>]) -> Vec<String> {
    events
        .iter()
        .map(|e| String::from_utf8(e.payload().clone()).unwrap())
        .collect()
}

fn key(session: &str) -> SessionKey {
    SessionKey::new("acme", session).unwrap()
}

// --- SessionLog (seeds 000/001) ------------------------------------------

pub fn session_log_ordinals_are_one_based_and_highest_is_returned(f: Fixture) {
    let log = SessionLog::new(f.store.clone()).unwrap();
    let k = key("thread");
    assert_eq!(
        log.append(&k, []).unwrap(),
        0,
        "an empty log has no ordinal"
    );
    assert_eq!(log.append(&k, [bytes("a")]).unwrap(), 1);
    assert_eq!(log.append(&k, [bytes("b"), bytes("c")]).unwrap(), 3);
    assert_eq!(
        log.append(&k, []).unwrap(),
        3,
        "no events: the highest so far"
    );
    // Durable when it returns.
    assert_eq!(f.store.durable_position(&k).unwrap(), Some(3));
}

pub fn session_log_load_since_reads_every_tier(f: Fixture) {
    let log = SessionLog::new(f.store.clone()).unwrap();
    let k = key("thread");
    let all: Vec<String> = (1..=20).map(|i| format!("e{i}")).collect();
    for text in &all {
        log.append(&k, [bytes(text)]).unwrap();
    }
    // The ring holds 4; the rest come from the log, in order, no seam.
    assert_eq!(texts(&log.load_since(&k, 0).unwrap()), all);
    assert_eq!(texts(&log.load_since(&k, 15).unwrap()), all[15..]);
    assert!(log.load_since(&k, 20).unwrap().is_empty());
    assert!(
        log.load_since(&k, 99).unwrap().is_empty(),
        "beyond: nothing"
    );
    let positions: Vec<u64> = log
        .load_since(&k, 3)
        .unwrap()
        .iter()
        .map(|e| e.position())
        .collect();
    assert_eq!(positions, (4..=20).collect::<Vec<_>>());
}

pub fn session_log_archive_is_monotonic_and_counts(f: Fixture) {
    let log = SessionLog::new(f.store.clone()).unwrap();
    let k = key("thread");
    for i in 1..=10 {
        log.append(&k, [bytes(&format!("e{i}"))]).unwrap();
    }
    assert_eq!(log.archive_before(&k, 4).unwrap(), 4);
    assert_eq!(log.archive_before(&k, 2).unwrap(), 0, "lower: a no-op");
    assert_eq!(log.archive_before(&k, 4).unwrap(), 0, "equal: a no-op");
    assert_eq!(log.archive_before(&k, 6).unwrap(), 2);
    // Archived ordinals are skipped, whatever the cursor.
    let rest = log.load_since(&k, 0).unwrap();
    assert_eq!(rest.first().map(|e| e.position()), Some(7));
    assert_eq!(rest.len(), 4);
    assert_eq!(
        log.archive_before(&k, 1000).unwrap(),
        4,
        "clamped to the tail"
    );
    assert!(log.load_since(&k, 0).unwrap().is_empty());
    // The log keeps counting after everything was archived.
    assert_eq!(log.append(&k, [bytes("later")]).unwrap(), 11);
}

pub fn session_log_keeps_sessions_and_tenants_apart(f: Fixture) {
    let log = SessionLog::new(f.store.clone()).unwrap();
    let a = SessionKey::new("ab", "c").unwrap();
    let b = SessionKey::new("a", "bc").unwrap();
    log.append(&a, [bytes("for a")]).unwrap();
    log.append(&b, [bytes("for b"), bytes("b2")]).unwrap();
    assert_eq!(texts(&log.load_since(&a, 0).unwrap()), ["for a"]);
    assert_eq!(texts(&log.load_since(&b, 0).unwrap()), ["for b", "b2"]);
}

// --- EventStore (seed 003) -------------------------------------------------

pub fn event_store_sequences_batches_and_latest(f: Fixture) {
    let events = EventStore::new(f.store.clone(), "acme").unwrap();
    assert_eq!(events.get_latest_sequence("run").unwrap(), None);
    assert!(!events.execution_exists("run").unwrap());
    assert_eq!(events.count_events("run").unwrap(), 0);
    assert_eq!(events.append("run", "acme", bytes("start")).unwrap(), 1);
    let first = events
        .append_batch("run", "acme", vec![bytes("a"), bytes("b"), bytes("c")])
        .unwrap();
    assert_eq!(first, 2, "a batch returns its first sequence");
    assert_eq!(events.get_latest_sequence("run").unwrap(), Some(4));
    assert!(events.execution_exists("run").unwrap());
    assert_eq!(events.count_events("run").unwrap(), 4);
    assert_eq!(
        texts(&events.load_events("run").unwrap()),
        ["start", "a", "b", "c"]
    );
    assert_eq!(
        texts(&events.load_events_after("run", 2).unwrap()),
        ["b", "c"]
    );
    assert!(events.load_events_after("run", 4).unwrap().is_empty());
    assert_eq!(
        events.append_batch("run", "acme", Vec::new()),
        Err(AdapterError::EmptyBatch)
    );
    assert_eq!(
        events.get_latest_sequence("run").unwrap(),
        Some(4),
        "unchanged"
    );
}

pub fn event_store_lists_newest_first_per_tenant(f: Fixture) {
    let acme = EventStore::new(f.store.clone(), "acme").unwrap();
    let other = EventStore::new(f.store.clone(), "other").unwrap();
    for run in ["r1", "r2", "r3", "r4"] {
        acme.append(run, "acme", bytes(run)).unwrap();
    }
    other.append("r9", "other", bytes("x")).unwrap();
    assert_eq!(
        acme.list_executions("acme", 10, 0).unwrap(),
        ["r4", "r3", "r2", "r1"]
    );
    assert_eq!(acme.list_executions("acme", 2, 1).unwrap(), ["r3", "r2"]);
    assert!(acme.list_executions("acme", 2, 9).unwrap().is_empty());
    assert_eq!(other.list_executions("other", 10, 0).unwrap(), ["r9"]);
    assert!(matches!(
        acme.list_executions("other", 10, 0),
        Err(AdapterError::WrongTenant { .. })
    ));
    assert!(matches!(
        acme.append("r1", "other", bytes("no")),
        Err(AdapterError::WrongTenant { .. })
    ));
    assert!(
        !acme.execution_exists("r9").unwrap(),
        "another tenant's run"
    );
}

pub fn event_store_reads_history_beyond_the_ring(f: Fixture) {
    let events = EventStore::new(f.store.clone(), "acme").unwrap();
    let batch: Vec<Vec<u8>> = (0..4).map(|i| bytes(&format!("b{i}"))).collect();
    for _ in 0..5 {
        events.append_batch("long", "acme", batch.clone()).unwrap();
    }
    let all = events.load_events("long").unwrap();
    assert_eq!(all.len(), 20);
    assert!(all.iter().zip(1..).all(|(e, p)| e.position() == p));
    assert_eq!(events.count_events("long").unwrap(), 20);
}

pub fn adapters_need_a_durable_store(_: Fixture) {
    let plain = Arc::new(ReplayStore::<Vec<u8>>::default());
    assert!(matches!(
        SessionLog::new(plain.clone()),
        Err(AdapterError::NoDurableLog)
    ));
    assert!(matches!(
        EventStore::new(plain, "acme"),
        Err(AdapterError::NoDurableLog)
    ));
}

macro_rules! adapter_suite {
    ($fixture:path) => {
        adapter_suite!(@tests $fixture;
            session_log_ordinals_are_one_based_and_highest_is_returned,
            session_log_load_since_reads_every_tier,
            session_log_archive_is_monotonic_and_counts,
            session_log_keeps_sessions_and_tenants_apart,
            event_store_sequences_batches_and_latest,
            event_store_lists_newest_first_per_tenant,
            event_store_reads_history_beyond_the_ring,
            adapters_need_a_durable_store,
        );
    };
    (@tests $fixture:path; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                if let Some(fixture) = crate::MaybeFixture::fixture($fixture()) {
                    crate::$name(fixture);
                }
            }
        )*
    };
}

mod memory {
    adapter_suite!(crate::memory);
}

#[cfg(feature = "redb")]
mod redb {
    adapter_suite!(crate::redb);
}

#[cfg(feature = "postgres")]
mod postgres {
    adapter_suite!(crate::postgres);
}
