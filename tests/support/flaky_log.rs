//! A [`DurableLog`] that can be made to fail or to stall, for testing how
//! the store behaves when its log misbehaves: a [`MemoryLog`] behind a
//! switch that only affects `append` (the persister's writes). Reads go
//! straight through, so readers keep working while writes fail; they are
//! counted, for tests of how much a reader loads.
//!
//! A stall is bounded by [`MAX_STALL`]: a test that forgets to release it
//! (or panics first) cannot hang the persister, nor the store's `Drop`,
//! for ever.

#![allow(dead_code)] // not every test uses every helper

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use livereplay::durable::{DurableLog, LogError, LogRecord, MemoryLog, SessionMeta, SessionWrite};
use livereplay::SessionKey;

/// The longest one `append` call stays stalled before it proceeds anyway.
pub const MAX_STALL: Duration = Duration::from_secs(4);

/// How `append` behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Writes through to the memory log.
    Healthy,
    /// Refuses with `LogError::Backend`, writing nothing.
    Failing,
    /// Blocks until the mode changes (at most [`MAX_STALL`]), then acts on
    /// the new mode.
    Stalled,
    /// Writes through, then answers `LogError::Backend` as if the reply
    /// were lost on the way back (a network log); once, then healthy.
    LoseReply,
}

#[derive(Debug)]
pub struct FlakyLog {
    inner: MemoryLog,
    mode: Mutex<Mode>,
    changed: Condvar,
    append_calls: AtomicU64,
    failed_calls: AtomicU64,
    stalled_calls: AtomicU64,
    load_calls: AtomicU64,
    loaded_records: AtomicU64,
    largest_load_bytes: AtomicU64,
}

impl FlakyLog {
    pub fn new(mode: Mode) -> Self {
        Self {
            inner: MemoryLog::new(),
            mode: Mutex::new(mode),
            changed: Condvar::new(),
            append_calls: AtomicU64::new(0),
            failed_calls: AtomicU64::new(0),
            stalled_calls: AtomicU64::new(0),
            load_calls: AtomicU64::new(0),
            loaded_records: AtomicU64::new(0),
            largest_load_bytes: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Mode> {
        self.mode.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Switches the mode; a stalled `append` wakes and acts on it.
    pub fn set(&self, mode: Mode) {
        *self.lock() = mode;
        self.changed.notify_all();
    }

    /// The log underneath, to inspect what was really written.
    pub fn inner(&self) -> &MemoryLog {
        &self.inner
    }

    /// `append` calls so far.
    pub fn append_calls(&self) -> u64 {
        self.append_calls.load(SeqCst)
    }

    /// `append` calls refused.
    pub fn failed_calls(&self) -> u64 {
        self.failed_calls.load(SeqCst)
    }

    /// `append` calls that entered a stall.
    pub fn stalled_calls(&self) -> u64 {
        self.stalled_calls.load(SeqCst)
    }

    /// `load_after` calls so far.
    pub fn load_calls(&self) -> u64 {
        self.load_calls.load(SeqCst)
    }

    /// Records `load_after` returned, in all.
    pub fn loaded_records(&self) -> u64 {
        self.loaded_records.load(SeqCst)
    }

    /// The most payload bytes one `load_after` call returned.
    pub fn largest_load_bytes(&self) -> u64 {
        self.largest_load_bytes.load(SeqCst)
    }
}

/// Sets a [`FlakyLog`] healthy when dropped, so a failing test does not
/// leave the persister stalled or failing while the store shuts down.
pub struct HealOnDrop<'a>(pub &'a FlakyLog);

impl Drop for HealOnDrop<'_> {
    fn drop(&mut self) {
        self.0.set(Mode::Healthy);
    }
}

impl DurableLog for FlakyLog {
    fn append(&self, writes: &[SessionWrite<'_>]) -> Result<(), LogError> {
        self.append_calls.fetch_add(1, SeqCst);
        let deadline = Instant::now() + MAX_STALL;
        let mut mode = self.lock();
        let mut counted_stall = false;
        loop {
            match *mode {
                Mode::Healthy => break,
                Mode::LoseReply => {
                    *mode = Mode::Healthy;
                    drop(mode);
                    self.failed_calls.fetch_add(1, SeqCst);
                    self.inner.append(writes)?;
                    return Err(LogError::Backend("injected: the reply was lost".into()));
                }
                Mode::Failing => {
                    self.failed_calls.fetch_add(1, SeqCst);
                    return Err(LogError::Backend("injected failure (FlakyLog)".into()));
                }
                Mode::Stalled => {
                    if !counted_stall {
                        counted_stall = true;
                        self.stalled_calls.fetch_add(1, SeqCst);
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    mode = self
                        .changed
                        .wait_timeout(mode, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
        drop(mode);
        self.inner.append(writes)
    }

    fn load_after(
        &self,
        key: &SessionKey,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        let records = self.inner.load_after(key, after, limit)?;
        let bytes: usize = records.iter().map(LogRecord::payload_len).sum();
        self.load_calls.fetch_add(1, SeqCst);
        self.loaded_records.fetch_add(records.len() as u64, SeqCst);
        self.largest_load_bytes.fetch_max(bytes as u64, SeqCst);
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
}
