//! The embedded log under I/O errors: redb refuses every write after a
//! failed one until the database is reopened, so `RedbLog` closes it on a
//! failed write and the next call reopens it. Persistence then resumes by
//! itself once the disk recovers (contract section 10), which this checks
//! with a storage backend that fails writes on demand.
#![cfg(feature = "redb")]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use livereplay::durable::{RedbLog, RedbOptions};
use livereplay::{Config, Cursor, ReplayStore, Revision, SessionKey, Utf8};
use redb::StorageBackend;

/// Bytes in memory, shared by every backend made for one test (a reopen
/// sees what was written), failing writes and syncs while `failing`.
#[derive(Debug, Clone, Default)]
struct FlakyDisk {
    bytes: Arc<Mutex<Vec<u8>>>,
    failing: Arc<AtomicBool>,
    failed_writes: Arc<AtomicU64>,
}

impl FlakyDisk {
    fn check(&self) -> std::io::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            self.failed_writes.fetch_add(1, Ordering::SeqCst);
            return Err(std::io::Error::other("injected: the disk is failing"));
        }
        Ok(())
    }
}

impl StorageBackend for FlakyDisk {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.bytes.lock().unwrap().len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let bytes = self.bytes.lock().unwrap();
        let start = offset as usize;
        let end = start + out.len();
        if end > bytes.len() {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        out.copy_from_slice(&bytes[start..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.check()?;
        self.bytes.lock().unwrap().resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.check()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check()?;
        let mut bytes = self.bytes.lock().unwrap();
        let end = offset as usize + data.len();
        if end > bytes.len() {
            bytes.resize(end, 0);
        }
        bytes[offset as usize..end].copy_from_slice(data);
        Ok(())
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn persistence_resumes_by_itself_after_the_disk_recovers() {
    let disk = FlakyDisk::default();
    let backend = disk.clone();
    let log = RedbLog::open_with_backend("flaky-disk", RedbOptions::default(), move || {
        backend.clone()
    })
    .unwrap();
    let store = ReplayStore::<String>::builder()
        .config(Config::default().with_capacity(64))
        .durable(Arc::new(log), Utf8)
        .build()
        .unwrap();
    let key = SessionKey::new("t", "s").unwrap();
    let wait = Duration::from_secs(10);
    for i in 1..=5 {
        store.append(&key, Revision(1), format!("e{i}")).unwrap();
    }
    assert_eq!(store.wait_durable(&key, 5, wait), Ok(5));

    disk.failing.store(true, Ordering::SeqCst);
    for i in 6..=10 {
        // Appends never see the failing disk.
        store.append(&key, Revision(1), format!("e{i}")).unwrap();
    }
    wait_until("the persister has hit the failing disk", || {
        store.stats().durable.unwrap().log_failures > 0
    });
    assert_eq!(store.durable_position(&key).unwrap(), Some(5));
    assert!(disk.failed_writes.load(Ordering::SeqCst) > 0);

    disk.failing.store(false, Ordering::SeqCst);
    // No call from us: the persister's retry reopens the database.
    wait_until("persistence resumed by itself", || {
        store.durable_position(&key).unwrap() == Some(10)
    });
    let stats = store.stats().durable.unwrap();
    assert_eq!(stats.lost_events, 0, "the ring held them meanwhile");
    assert!(stats.last_error.is_some());
    let all = store
        .catch_up_replay(&Cursor::start(key.clone()), 100)
        .unwrap();
    let texts: Vec<&str> = all.iter().map(|e| e.payload().as_str()).collect();
    assert_eq!(texts, (1..=10).map(|i| format!("e{i}")).collect::<Vec<_>>());
}

/// The same disk under the journal (`RedbDurability::Journaled`, the
/// journal a real file beside the flaky one): appends are durable through
/// the journal while redb's disk fails, until a checkpoint needs that
/// disk. The failed checkpoint closes the database; every reopen replays
/// the journal into what the disk durably holds and checkpoints again, so
/// once the disk recovers every acknowledged append is there, in order.
#[test]
fn a_failed_checkpoint_loses_nothing_under_the_journal() {
    use livereplay::durable::RedbDurability;

    let dir = std::env::temp_dir().join(format!(
        "livereplay-redb-faults-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let disk = FlakyDisk::default();
    let backend = disk.clone();
    let options = RedbOptions::new()
        .durability(RedbDurability::Journaled)
        .journal_bytes(4096);
    let log = RedbLog::open_with_backend(dir.join("flaky-disk"), options, move || backend.clone())
        .unwrap();
    let store = ReplayStore::<String>::builder()
        .config(Config::default().with_capacity(4096))
        .durable(Arc::new(log), Utf8)
        .build()
        .unwrap();
    let key = SessionKey::new("t", "s").unwrap();
    let wait = Duration::from_secs(10);
    store.append(&key, Revision(1), "e1".to_string()).unwrap();
    assert_eq!(store.wait_durable(&key, 1, wait), Ok(1));

    disk.failing.store(true, Ordering::SeqCst);
    // One durable append at a time: each a frame, until the journal is
    // full and the call that does not fit must checkpoint on the disk.
    let mut appended = 1;
    while store.stats().durable.unwrap().log_failures == 0 {
        appended += 1;
        assert!(appended < 1000, "no checkpoint ever reached the disk");
        store
            .append(&key, Revision(1), format!("e{appended}"))
            .unwrap();
        let _ = store.wait_durable(&key, appended, Duration::from_millis(200));
    }
    let durable = store.durable_position(&key).unwrap().unwrap();
    assert!(
        durable > 1,
        "appends were durable through the journal meanwhile"
    );
    assert!(
        durable < appended,
        "the last one waits for the failed checkpoint"
    );

    disk.failing.store(false, Ordering::SeqCst);
    wait_until("persistence resumed by itself", || {
        store.durable_position(&key).unwrap() == Some(appended)
    });
    let stats = store.stats().durable.unwrap();
    assert_eq!(stats.lost_events, 0);
    let all = store
        .catch_up_replay(&Cursor::start(key.clone()), 10_000)
        .unwrap();
    let texts: Vec<&str> = all.iter().map(|e| e.payload().as_str()).collect();
    assert_eq!(
        texts,
        (1..=appended).map(|i| format!("e{i}")).collect::<Vec<_>>()
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
