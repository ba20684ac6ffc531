//! [`EventStore`]: seed 003's append-only execution event store.

use std::sync::Arc as StdArc;
use std::time::Duration;

use super::{AdapterError, Durable};
use crate::event::Event;
use crate::key::SessionKey;
use crate::store::ReplayStore;
use crate::sync::Arc;

/// Seed 003's `EventStore` for one tenant, over a durable [`ReplayStore`]:
/// executions are sessions of that tenant, sequences are positions.
///
/// * `append` and `append_batch` are durable when they return; a batch gets
///   consecutive sequences and is visible all at once;
/// * `get_latest_sequence` is `None` for an execution with no events;
/// * `list_executions` is newest first, with limit and offset.
///
/// ```
/// use std::sync::Arc;
/// use livereplay::adapters::EventStore;
/// use livereplay::durable::MemoryLog;
/// use livereplay::{RawBytes, ReplayStore};
///
/// let store = Arc::new(
///     ReplayStore::<Vec<u8>>::builder()
///         .durable(Arc::new(MemoryLog::new()), RawBytes)
///         .build()?,
/// );
/// let events = EventStore::new(store, "acme")?;
/// assert_eq!(events.get_latest_sequence("run-1")?, None);
/// assert_eq!(events.append("run-1", "acme", b"start".to_vec())?, 1);
/// assert_eq!(events.append_batch("run-1", "acme", vec![b"a".to_vec(), b"b".to_vec()])?, 2);
/// assert_eq!(events.load_events_after("run-1", 1)?.len(), 2);
/// assert_eq!(events.list_executions("acme", 10, 0)?, ["run-1"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct EventStore<T> {
    durable: Durable<T>,
    tenant: String,
}

impl<T: Send + Sync + 'static> EventStore<T> {
    /// A view of `store` (which must have a durable log) for `tenant`.
    pub fn new(store: StdArc<ReplayStore<T>>, tenant: &str) -> Result<Self, AdapterError> {
        // Checks the tenant id once, as keys do.
        SessionKey::new(tenant, "-")?;
        Ok(Self {
            durable: Durable::new(store)?,
            tenant: tenant.to_owned(),
        })
    }

    /// How long an append waits for durability (default 10 s).
    pub fn with_durable_timeout(mut self, timeout: Duration) -> Self {
        self.durable.timeout = timeout;
        self
    }

    fn key(&self, execution_id: &str) -> Result<SessionKey, AdapterError> {
        Ok(SessionKey::new(&self.tenant, execution_id)?)
    }

    fn check_tenant(&self, tenant_id: &str) -> Result<(), AdapterError> {
        if tenant_id != self.tenant {
            return Err(AdapterError::WrongTenant {
                expected: self.tenant.clone(),
                got: tenant_id.to_owned(),
            });
        }
        Ok(())
    }

    /// Appends one event; returns its sequence, durable when it returns.
    pub fn append(
        &self,
        execution_id: &str,
        tenant_id: &str,
        event: T,
    ) -> Result<u64, AdapterError> {
        self.append_batch(execution_id, tenant_id, vec![event])
    }

    /// Appends events atomically with consecutive sequences; returns the
    /// first. An empty batch is refused ([`AdapterError::EmptyBatch`]).
    pub fn append_batch(
        &self,
        execution_id: &str,
        tenant_id: &str,
        events: Vec<T>,
    ) -> Result<u64, AdapterError> {
        self.check_tenant(tenant_id)?;
        if events.is_empty() {
            return Err(AdapterError::EmptyBatch);
        }
        let key = self.key(execution_id)?;
        let (first, _) = self
            .durable
            .append(&key, events)?
            .ok_or(AdapterError::EmptyBatch)?;
        Ok(first)
    }

    /// Every event of the execution, by sequence.
    pub fn load_events(&self, execution_id: &str) -> Result<Vec<Arc<Event<T>>>, AdapterError> {
        self.load_events_after(execution_id, 0)
    }

    /// The events with a sequence above `after_seq`, by sequence.
    pub fn load_events_after(
        &self,
        execution_id: &str,
        after_seq: u64,
    ) -> Result<Vec<Arc<Event<T>>>, AdapterError> {
        self.durable.load_after(&self.key(execution_id)?, after_seq)
    }

    /// The latest sequence, `None` if the execution has no events.
    pub fn get_latest_sequence(&self, execution_id: &str) -> Result<Option<u64>, AdapterError> {
        self.durable.latest(&self.key(execution_id)?)
    }

    /// The tenant's executions, newest first.
    pub fn list_executions(
        &self,
        tenant_id: &str,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<String>, AdapterError> {
        self.check_tenant(tenant_id)?;
        let log = self
            .durable
            .store
            .durable_log()
            .ok_or(AdapterError::NoDurableLog)?;
        let keys = log
            .sessions(tenant_id, limit, offset)
            .map_err(crate::store::DurableError::from)?;
        Ok(keys.iter().map(|key| key.session().to_owned()).collect())
    }

    /// Whether the execution has ever been recorded.
    pub fn execution_exists(&self, execution_id: &str) -> Result<bool, AdapterError> {
        let key = self.key(execution_id)?;
        if self.durable.store.contains_session(&key) {
            return Ok(true);
        }
        Ok(self.durable.store.durable_position(&key)?.is_some())
    }

    /// How many events the execution holds (archived ones not counted).
    pub fn count_events(&self, execution_id: &str) -> Result<u64, AdapterError> {
        let key = self.key(execution_id)?;
        let log = self
            .durable
            .store
            .durable_log()
            .ok_or(AdapterError::NoDurableLog)?;
        let durable = log
            .meta(&key)
            .map_err(crate::store::DurableError::from)?
            .map_or((0, 0), |meta| (meta.event_count, meta.durable_tail));
        // Events appended to the store directly and not written yet.
        let undurable = self
            .durable
            .store
            .latest_position(&key)
            .map_or(0, |latest| latest.saturating_sub(durable.1));
        Ok(durable.0 + undurable)
    }
}
