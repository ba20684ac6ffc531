//! The seeds' shapes over a durable store: [`SessionLog`] (seeds 000/001),
//! [`EventStore`] (seed 003) and, with the `dag` feature, `EventDag` (seed
//! 004), for code written against those traits.
//!
//! Both are thin, synchronous views of a [`ReplayStore`] built with a
//! durable log ([`StoreBuilder::durable`](crate::StoreBuilder::durable)):
//! appends go through the ring (so live subscribers see them at once) and
//! then **wait until they are durable**, as the seeds promise ("durable when
//! this returns"); reads go through catch-up, so they see the whole history
//! the log holds, not just the ring's window. Ordinals and sequences are the
//! store's positions: 1-based, consecutive, never reused.
//!
//! Never call them from a turn loop: an append here waits for the log.
//! The turn loop appends to the store itself; these are for the other
//! callers (importers, tools, tests, code ported from the seeds).

#[cfg(feature = "dag")]
mod event_dag;
mod event_store;
mod session_log;

#[cfg(feature = "dag")]
pub use self::event_dag::{DagEvent, DagPosition, EventDag};
pub use self::event_store::EventStore;
pub use self::session_log::SessionLog;

use std::sync::Arc as StdArc;
use std::time::Duration;

use thiserror::Error;

use crate::cursor::Cursor;
use crate::error::{Error, Gap};
use crate::event::Event;
use crate::key::SessionKey;
use crate::store::{DurableError, ReplayStore};
use crate::sync::Arc;

/// How long an adapter's append waits for durability by default.
pub const DEFAULT_DURABLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an adapter call failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AdapterError {
    /// The store refused the append or the read (see the inner error).
    #[error(transparent)]
    Store(#[from] Error),
    /// The events were appended (they are in the ring and will be written)
    /// but are not durable yet, or the log failed.
    #[error(transparent)]
    Durable(#[from] DurableError),
    /// The store has no durable log: build it with `StoreBuilder::durable`.
    #[error("the adapter needs a store with a durable log: build it with StoreBuilder::durable")]
    NoDurableLog,
    /// An id did not make a valid session key.
    #[error(transparent)]
    Key(#[from] crate::key::KeyError),
    /// `append_batch` was given no events: there is no first sequence.
    #[error("the batch is empty: there is no sequence to return")]
    EmptyBatch,
    /// The call named another tenant than the adapter serves.
    #[error("this adapter serves tenant {expected:?}, not {got:?}")]
    WrongTenant {
        /// The adapter's tenant.
        expected: String,
        /// The tenant named.
        got: String,
    },
    /// No tier holds the event named.
    #[error("no tier holds {event}")]
    NotFound {
        /// The event.
        event: crate::links::EventRef,
    },
    /// The event is not in the causal index (not durable yet, or never
    /// appended) within the wait.
    #[error("{event} is not indexed (not durable yet, or never appended)")]
    NotIndexed {
        /// The event.
        event: crate::links::EventRef,
    },
    /// The causal index could not be used (no index, or the log failed).
    #[error("the causal index failed: {reason}")]
    Index {
        /// What went wrong.
        reason: String,
    },
}

impl From<Gap> for AdapterError {
    fn from(gap: Gap) -> Self {
        AdapterError::Store(Error::Gap(gap))
    }
}

/// What both adapters share: the store and the durability wait.
struct Durable<T> {
    store: StdArc<ReplayStore<T>>,
    timeout: Duration,
}

impl<T: Send + Sync + 'static> Durable<T> {
    fn new(store: StdArc<ReplayStore<T>>) -> Result<Self, AdapterError> {
        if store.durable_log().is_none() {
            return Err(AdapterError::NoDurableLog);
        }
        Ok(Self {
            store,
            timeout: DEFAULT_DURABLE_TIMEOUT,
        })
    }

    /// Appends `payloads` as one batch and waits until they are durable;
    /// returns the first and last positions (`None` for an empty batch).
    fn append(
        &self,
        key: &SessionKey,
        payloads: Vec<T>,
    ) -> Result<Option<(u64, u64)>, AdapterError> {
        let events = self
            .store
            .append_batch(key, crate::cursor::Revision::default(), payloads)?;
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return Ok(None);
        };
        self.store
            .wait_durable(key, last.position(), self.timeout)?;
        Ok(Some((first.position(), last.position())))
    }

    /// Every event after position `after` (archived ones skipped), from the
    /// log and the ring.
    fn load_after(&self, key: &SessionKey, after: u64) -> Result<Vec<Arc<Event<T>>>, AdapterError> {
        let archived = self
            .store
            .durable_log()
            .ok_or(AdapterError::NoDurableLog)?
            .meta(key)
            .map_err(DurableError::from)?
            .map_or(0, |meta| meta.archived_through);
        let after = after.max(archived);
        let latest = self.latest(key)?.unwrap_or(0);
        if after >= latest {
            return Ok(Vec::new());
        }
        let cursor = Cursor::new(key.clone(), None, crate::cursor::Revision::default(), after);
        let mut catch_up = self.store.catch_up(&cursor)?;
        let mut events = Vec::with_capacity((latest - after) as usize);
        while events.len() < (latest - after) as usize {
            match catch_up.next_timeout(self.timeout) {
                Ok(event) => events.push(event),
                Err(crate::error::NextTimeoutError::Gap(gap)) => return Err(gap.into()),
                Err(_) => break,
            }
        }
        Ok(events)
    }

    /// The latest position in any tier; `None` if the session has none.
    fn latest(&self, key: &SessionKey) -> Result<Option<u64>, AdapterError> {
        let in_memory = self.store.latest_position(key);
        let durable = self.store.durable_position(key)?;
        Ok(in_memory.max(durable).filter(|&position| position > 0))
    }
}
