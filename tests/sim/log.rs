//! The shared log every node writes, behind a fault layer the seed drives.
//!
//! `FaultLog` forwards to one `MemoryLog::shared()` (as nodes share one
//! Redis) and, depending on its state, refuses appends, applies one and
//! loses its reply, or fails the next few reads. The simulator reads the
//! `MemoryLog` underneath directly for its ground truth, so checking never
//! consumes an injected fault.

use std::sync::{Arc, Mutex};

use livereplay::durable::{
    DurableLog, IndexStore, LogError, LogRecord, LogWatch, MemoryLog, SessionMeta, SessionWrite,
};
use livereplay::SessionKey;

/// How the next `append` calls behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendMode {
    /// Writes through.
    Healthy,
    /// Refuses every append with `LogError::Backend`, applying nothing.
    Failing,
    /// Applies the next append, then answers `LogError::Backend` (a reply
    /// lost on the network); healthy afterwards.
    LoseReply,
}

#[derive(Debug)]
struct Faults {
    append: AppendMode,
    /// How many of the next reads (`meta`, `load_after`) fail.
    failing_reads: u32,
    /// Replies lost so far (the persister's counters then miss a commit
    /// that landed, so the counter check skips the stores alive then).
    lost_replies: u64,
    /// Append calls that returned `Ok`.
    acknowledged: u64,
    /// Reads that failed so far.
    failed_reads: u64,
}

/// A `DurableLog` over a shared `MemoryLog` with injected faults.
#[derive(Debug)]
pub struct FaultLog {
    inner: Arc<MemoryLog>,
    faults: Mutex<Faults>,
}

fn injected(what: &str) -> LogError {
    LogError::Backend(format!("injected by the simulator: {what}").into())
}

impl FaultLog {
    /// Over a log shared by several nodes (Redis, Postgres), or one that a
    /// single store owns at a time (redb).
    pub fn new(shared: bool) -> Self {
        Self {
            inner: Arc::new(if shared {
                MemoryLog::shared()
            } else {
                MemoryLog::new()
            }),
            faults: Mutex::new(Faults {
                append: AppendMode::Healthy,
                failing_reads: 0,
                lost_replies: 0,
                acknowledged: 0,
                failed_reads: 0,
            }),
        }
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The log underneath: the ground truth, read without faults.
    pub fn truth(&self) -> &MemoryLog {
        &self.inner
    }

    pub fn set_append(&self, mode: AppendMode) {
        self.faults().append = mode;
    }

    pub fn fail_reads(&self, count: u32) {
        self.faults().failing_reads = count;
    }

    pub fn heal(&self) {
        let mut faults = self.faults();
        faults.append = AppendMode::Healthy;
        faults.failing_reads = 0;
    }

    pub fn lost_replies(&self) -> u64 {
        self.faults().lost_replies
    }

    /// Append calls that returned `Ok` so far.
    pub fn acknowledged(&self) -> u64 {
        self.faults().acknowledged
    }

    /// Reads (`meta`, `load_after`) that failed so far.
    pub fn failed_reads(&self) -> u64 {
        self.faults().failed_reads
    }

    fn read_fails(&self) -> bool {
        let mut faults = self.faults();
        if faults.failing_reads > 0 {
            faults.failing_reads -= 1;
            faults.failed_reads += 1;
            true
        } else {
            false
        }
    }
}

impl DurableLog for FaultLog {
    fn append(&self, writes: &[SessionWrite<'_>]) -> Result<(), LogError> {
        let mode = {
            let mut faults = self.faults();
            let mode = faults.append;
            if mode == AppendMode::LoseReply {
                faults.append = AppendMode::Healthy;
                faults.lost_replies += 1;
            }
            mode
        };
        match mode {
            AppendMode::Healthy => {
                let result = self.inner.append(writes);
                if result.is_ok() {
                    self.faults().acknowledged += 1;
                }
                result
            }
            AppendMode::Failing => Err(injected("append refused")),
            AppendMode::LoseReply => {
                self.inner.append(writes)?;
                Err(injected("append applied, reply lost"))
            }
        }
    }

    fn load_after(
        &self,
        key: &SessionKey,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        if self.read_fails() {
            return Err(injected("load_after failed"));
        }
        self.inner.load_after(key, after, limit)
    }

    fn meta(&self, key: &SessionKey) -> Result<Option<SessionMeta>, LogError> {
        if self.read_fails() {
            return Err(injected("meta failed"));
        }
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

    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }

    /// Refused while appends are (the server is down for both).
    fn keep_alive(&self, store: u64, lease: std::time::Duration) -> Result<(), LogError> {
        if self.faults().append == AppendMode::Failing {
            return Err(injected("keep_alive refused"));
        }
        self.inner.keep_alive(store, lease)
    }

    /// Fails with the reads.
    fn store_alive(&self, store: u64) -> Result<bool, LogError> {
        if self.read_fails() {
            return Err(injected("store_alive failed"));
        }
        self.inner.store_alive(store)
    }

    /// No watch: the simulator is single-threaded and must never block.
    fn watch(&self) -> Option<&dyn LogWatch> {
        None
    }

    fn index(&self) -> Option<&dyn IndexStore> {
        self.inner.index()
    }
}
