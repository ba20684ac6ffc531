//! [`MemoryLog`]: the durable-log contract in memory, for tests and for
//! hosts that want catch-up across eviction without a disk.
//!
//! One mutex over a map of sessions. It is called only by the persister and
//! by catch-up readers, never on the append path, so a lock is fine here.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{DurableLog, LogError, LogRecord, LogWatch, RecordBody, SessionMeta, SessionWrite};
use crate::key::SessionKey;

/// A [`DurableLog`] in memory. Cloning the `Arc` that holds it shares it;
/// it is lost with the process.
///
/// ```
/// use std::sync::Arc;
/// use livereplay::durable::{DurableLog, MemoryLog};
/// use livereplay::SessionKey;
///
/// let log = Arc::new(MemoryLog::new());
/// assert!(log.meta(&SessionKey::new("t", "s")?)?.is_none());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
pub struct MemoryLog {
    inner: Mutex<Inner>,
    /// Notified after every append, for [`LogWatch::wait_any`].
    appended: Condvar,
    /// Whether several stores write it ([`MemoryLog::shared`]).
    shared: bool,
    /// The stores alive ([`DurableLog::keep_alive`]) and not expired since
    /// ([`MemoryLog::expire_store`]): liveness without a clock, so that
    /// a simulation decides when a lease runs out.
    alive: Mutex<std::collections::HashSet<u64>>,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<SessionKey, SessionLog>,
    /// The causal index's key-value space ([`super::IndexStore`]).
    #[cfg(feature = "dag")]
    index: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Order in which sessions were first recorded, for newest-first lists.
    next_seq: u64,
}

#[derive(Debug)]
struct SessionLog {
    seq: u64,
    meta: SessionMeta,
    /// Records by first position.
    records: BTreeMap<u64, LogRecord>,
}

impl MemoryLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty log that several stores in this process write, as nodes
    /// share one Redis ([`DurableLog::is_shared`]): for testing many-node
    /// behaviour in one process.
    pub fn shared() -> Self {
        Self {
            shared: true,
            ..Self::default()
        }
    }

    /// The lease of the store `store` runs out, as when its process died
    /// (or stalled) longer than its lease: [`DurableLog::store_alive`]
    /// says `false` until the store keeps itself alive again. The lease's
    /// length is the caller's to model; this log has no clock.
    pub fn expire_store(&self, store: u64) {
        self.alive
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&store);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied write
        // (writes are validated before anything changes), so a poisoned
        // lock is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Checks one session's write against its current state; changes nothing.
pub(crate) fn validate_write(
    key: &SessionKey,
    meta: Option<&SessionMeta>,
    write: &SessionWrite<'_>,
) -> Result<(), LogError> {
    let tail = meta.map_or(0, |m| m.durable_tail);
    if let Some(life) = write.new_life {
        let reused = meta.is_some_and(|m| m.life_of(life.incarnation).is_some());
        if life.first_position != tail + 1 || reused {
            return Err(LogError::BadLife {
                key: key.clone(),
                expected: tail + 1,
            });
        }
    } else if meta.is_none_or(|m| m.lives.is_empty())
        && (!write.records.is_empty() || write.closure.is_some() || write.turn_owner.is_some())
    {
        return Err(LogError::BadLife {
            key: key.clone(),
            expected: tail + 1,
        });
    }
    let current = write
        .new_life
        .or_else(|| meta.and_then(SessionMeta::current_life));
    let mut next = tail.saturating_add(1);
    for record in write.records {
        if record.position != next {
            return Err(LogError::NotContiguous {
                key: key.clone(),
                tail: next - 1,
                got: record.position,
            });
        }
        if record.is_empty() {
            return Err(LogError::InvalidRecord {
                key: key.clone(),
                position: record.position,
                what: "a hole must cover at least one position",
            });
        }
        if current.is_some_and(|life| life.incarnation != record.incarnation) {
            return Err(LogError::InvalidRecord {
                key: key.clone(),
                position: record.position,
                what: "a record must carry the incarnation of the session's newest life",
            });
        }
        next = match record.last_position().checked_add(1) {
            Some(next) if record.position.checked_add(record.len() - 1).is_some() => next,
            _ => {
                return Err(LogError::InvalidRecord {
                    key: key.clone(),
                    position: record.position,
                    what: "the record runs past the largest position",
                })
            }
        };
    }
    if let Some(closure) = write.closure {
        // A closure closes at the tail it is written with: nothing of its
        // life may follow it, nothing before it may be missing.
        if closure.last != next - 1 {
            return Err(LogError::NotContiguous {
                key: key.clone(),
                tail: next - 1,
                got: closure.last,
            });
        }
    }
    Ok(())
}

/// Applies a validated write to `meta`.
pub(crate) fn apply_to_meta(meta: &mut SessionMeta, write: &SessionWrite<'_>) {
    if let Some(life) = write.new_life {
        meta.lives.push(life);
        // A new life is open whatever ended the one before, and no turn
        // drives it yet.
        meta.closure = None;
        meta.open_turn = None;
    }
    if write.turn_owner.is_some() {
        meta.open_turn = write.turn_owner;
    }
    if write.closure.is_some() {
        // A closed life's turn is over.
        meta.closure = write.closure;
        meta.open_turn = None;
    }
    for record in write.records {
        meta.durable_tail = record.last_position();
        if let RecordBody::Event(event) = &record.body {
            meta.last_revision = event.revision;
            meta.event_count += 1;
        }
    }
}

/// A new session's empty meta.
pub(crate) fn empty_meta() -> SessionMeta {
    SessionMeta {
        durable_tail: 0,
        archived_through: 0,
        last_revision: 0,
        lives: Vec::new(),
        event_count: 0,
        closure: None,
        open_turn: None,
    }
}

impl DurableLog for MemoryLog {
    fn append(&self, writes: &[SessionWrite<'_>]) -> Result<(), LogError> {
        let mut inner = self.lock();
        // Validate everything first: one call is all or nothing. A session
        // written twice in one call is validated against its state after
        // the earlier write.
        let mut staged: HashMap<&SessionKey, SessionMeta> = HashMap::new();
        for write in writes {
            let meta = staged
                .get(write.key)
                .cloned()
                .or_else(|| inner.sessions.get(write.key).map(|s| s.meta.clone()));
            validate_write(write.key, meta.as_ref(), write)?;
            let mut meta = meta.unwrap_or_else(empty_meta);
            apply_to_meta(&mut meta, write);
            staged.insert(write.key, meta);
        }
        for write in writes {
            // Nothing to record for a session the log does not know: not
            // listed, no meta.
            if write.is_empty() {
                continue;
            }
            if !inner.sessions.contains_key(write.key) {
                let seq = inner.next_seq;
                inner.next_seq += 1;
                inner.sessions.insert(
                    write.key.clone(),
                    SessionLog {
                        seq,
                        meta: empty_meta(),
                        records: BTreeMap::new(),
                    },
                );
            }
            let Some(session) = inner.sessions.get_mut(write.key) else {
                continue;
            };
            apply_to_meta(&mut session.meta, write);
            for record in write.records {
                session.records.insert(record.position, record.clone());
            }
        }
        // The index reads and writes only values it encoded itself, so it
        // fails only on a bug; the records are in either way.
        #[cfg(feature = "dag")]
        crate::durable::causal::index_appended(&mut IndexView(&mut inner), writes)?;
        drop(inner);
        self.appended.notify_all();
        Ok(())
    }

    fn is_shared(&self) -> bool {
        self.shared
    }

    fn keep_alive(&self, store: u64, _lease: std::time::Duration) -> Result<(), LogError> {
        self.alive
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(store);
        Ok(())
    }

    fn store_alive(&self, store: u64) -> Result<bool, LogError> {
        Ok(self
            .alive
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&store))
    }

    fn watch(&self) -> Option<&dyn LogWatch> {
        Some(self)
    }

    #[cfg(feature = "dag")]
    fn index(&self) -> Option<&dyn super::IndexStore> {
        Some(self)
    }

    fn load_after(
        &self,
        key: &SessionKey,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        let inner = self.lock();
        let Some(session) = inner.sessions.get(key) else {
            return Ok(Vec::new());
        };
        let Some(from) = after.max(session.meta.archived_through).checked_add(1) else {
            return Ok(Vec::new());
        };
        // A hole starting before `from` may cover it.
        let start = session
            .records
            .range(..=from)
            .next_back()
            .filter(|(_, record)| record.last_position() >= from)
            .map_or(from, |(&position, _)| position);
        Ok(session
            .records
            .range(start..)
            .take(limit)
            .map(|(_, record)| record.clone())
            .collect())
    }

    fn meta(&self, key: &SessionKey) -> Result<Option<SessionMeta>, LogError> {
        Ok(self.lock().sessions.get(key).map(|s| s.meta.clone()))
    }

    fn archive_before(&self, key: &SessionKey, watermark: u64) -> Result<u64, LogError> {
        let mut inner = self.lock();
        let Some(session) = inner.sessions.get_mut(key) else {
            return Ok(0);
        };
        let watermark = watermark.min(session.meta.durable_tail);
        if watermark <= session.meta.archived_through {
            return Ok(0);
        }
        session.meta.archived_through = watermark;
        let mut archived = 0;
        // Drop every record wholly at or below the watermark; a hole that
        // straddles it stays (loads skip its archived part).
        let gone: Vec<u64> = session
            .records
            .range(..=watermark)
            .filter(|(_, record)| record.last_position() <= watermark)
            .map(|(&position, _)| position)
            .collect();
        for position in gone {
            if let Some(record) = session.records.remove(&position) {
                if matches!(record.body, RecordBody::Event(_)) {
                    archived += 1;
                }
            }
        }
        session.meta.event_count -= archived;
        Ok(archived)
    }

    fn sessions(
        &self,
        tenant: &str,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<SessionKey>, LogError> {
        let inner = self.lock();
        let mut found: Vec<(u64, &SessionKey)> = inner
            .sessions
            .iter()
            .filter(|(key, _)| key.tenant() == tenant)
            .map(|(key, session)| (session.seq, key))
            .collect();
        found.sort_unstable_by_key(|(seq, _)| std::cmp::Reverse(*seq));
        Ok(found
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|(_, key)| key.clone())
            .collect())
    }
}

impl LogWatch for MemoryLog {
    fn wait_any(
        &self,
        interest: &[(SessionKey, u64)],
        timeout: Duration,
    ) -> Result<Vec<usize>, LogError> {
        let deadline = Instant::now().checked_add(timeout);
        let mut inner = self.lock();
        loop {
            let ready: Vec<usize> = interest
                .iter()
                .enumerate()
                .filter(|(_, (key, after))| {
                    inner
                        .sessions
                        .get(key)
                        .is_some_and(|session| session.meta.durable_tail > *after)
                })
                .map(|(index, _)| index)
                .collect();
            let now = Instant::now();
            let remaining = deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(now));
            if !ready.is_empty() || remaining.is_zero() {
                return Ok(ready);
            }
            inner = self
                .appended
                .wait_timeout(inner, remaining)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// The index over the log's state, under its lock.
#[cfg(feature = "dag")]
struct IndexView<'a>(&'a mut Inner);

#[cfg(feature = "dag")]
impl super::IndexRead for IndexView<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, LogError> {
        Ok(self.0.index.get(key).cloned())
    }

    fn scan(
        &mut self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<super::IndexEntries, LogError> {
        use std::ops::Bound;
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after.to_vec()),
            _ => Bound::Included(prefix.to_vec()),
        };
        Ok(self
            .0
            .index
            .range((start, Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .take(limit)
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect())
    }

    fn is_event(&mut self, key: &SessionKey, position: u64) -> Result<bool, LogError> {
        Ok(self.0.sessions.get(key).is_some_and(|session| {
            position > session.meta.archived_through
                && session
                    .records
                    .get(&position)
                    .is_some_and(|record| matches!(record.body, RecordBody::Event(_)))
        }))
    }
}

#[cfg(feature = "dag")]
impl super::IndexWrite for IndexView<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), LogError> {
        self.0.index.insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), LogError> {
        self.0.index.remove(key);
        Ok(())
    }
}

/// Reads lock the log per call: a query holds no lock between its steps
/// (it loads events through the log in between).
#[cfg(feature = "dag")]
struct IndexReader<'a>(&'a MemoryLog);

#[cfg(feature = "dag")]
impl super::IndexRead for IndexReader<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, LogError> {
        IndexView(&mut self.0.lock()).get(key)
    }

    fn scan(
        &mut self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<super::IndexEntries, LogError> {
        IndexView(&mut self.0.lock()).scan(prefix, after, limit)
    }

    fn is_event(&mut self, key: &SessionKey, position: u64) -> Result<bool, LogError> {
        IndexView(&mut self.0.lock()).is_event(key, position)
    }
}

#[cfg(feature = "dag")]
impl super::IndexStore for MemoryLog {
    fn read(&self) -> Result<Box<dyn super::IndexRead + '_>, LogError> {
        Ok(Box::new(IndexReader(self)))
    }

    fn write(
        &self,
        update: &mut dyn FnMut(&mut dyn super::IndexWrite) -> Result<(), LogError>,
    ) -> Result<(), LogError> {
        update(&mut IndexView(&mut self.lock()))
    }
}
