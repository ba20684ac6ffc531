//! [`EventDag`]: seed 004's method set over a durable store's causal index
//! (`crate::dag`), for code written against that trait.
//!
//! Mapping from the seed:
//!
//! | seed | here |
//! |---|---|
//! | `EventId` | [`EventRef`]: a session of the adapter's tenant and a position |
//! | `Event<Payload>` with its DAG fields | [`DagEvent`] in, [`Event`] (with [`Event::links`]) out |
//! | `lane: u32` | the link's lane, as its decimal text |
//! | `correlation_id: EventId` | the link's correlation id, as the reference's text |
//! | `DagPosition` | [`DagPosition`]: depth and lane |
//! | `Effect<T>` | `Result<T, AdapterError>` (synchronous: the waits are bounded) |
//!
//! Semantics, as the seed documents them:
//!
//! * `append` returns when the event is durable **and indexed**, so a
//!   query right after it sees it.
//! * `walk_ancestors(from, limit)` returns events "from `from` toward the
//!   root", most recent first: `from` itself, then its parent, …, at most
//!   `limit` in all.
//! * `walk_descendants(from, limit)`: the descendants, breadth first,
//!   without `from`.
//! * `find_by_kind` is the adapter's tenant; `find_by_kind_for_tenant` any.
//! * `acknowledge(id, send_upstream)` records the acknowledgement and, if
//!   asked, signals [`UpstreamSignal::Ack`] upstream.
//!
//! Never call it from a turn loop: every append waits for the log.

use std::sync::Arc as StdArc;
use std::time::Duration;

use super::{AdapterError, DEFAULT_DURABLE_TIMEOUT};
use crate::cursor::Revision;
use crate::dag::{Dag, DagAnswer, DagError, UpstreamSignal};
use crate::event::Event;
use crate::key::SessionKey;
use crate::links::{EventRef, Links};
use crate::store::ReplayStore;
use crate::sync::Arc;

/// An event to append, with seed 004's DAG fields.
#[derive(Debug, Clone)]
pub struct DagEvent<T> {
    /// The session (of the adapter's tenant) it is appended to.
    pub session: String,
    /// The event it follows from.
    pub parent: Option<EventRef>,
    /// The correlation id: the reference of the chain's first event, say.
    pub correlation: Option<EventRef>,
    /// Its kind.
    pub kind: Option<String>,
    /// Its lane.
    pub lane: u32,
    /// Whether it waits for an acknowledgement.
    pub requires_ack: bool,
    /// The payload.
    pub payload: T,
}

/// Where an event sits in the DAG (seed 004's `DagPosition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DagPosition {
    /// Distance to the root along parents.
    pub depth: u32,
    /// The lane.
    pub lane: u32,
}

/// Builds a signal event's payload: the signal and the ancestor it is for.
type SignalPayload<T> = Box<dyn Fn(&UpstreamSignal, &EventRef) -> T + Send + Sync>;

/// Seed 004's `EventDag` over a [`ReplayStore`] with a durable log, for one
/// tenant.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use livereplay::adapters::{DagEvent, EventDag};
/// use livereplay::durable::MemoryLog;
/// use livereplay::{ReplayStore, Utf8};
///
/// let store = Arc::new(ReplayStore::<String>::builder()
///     .durable(Arc::new(MemoryLog::new()), Utf8)
///     .build()?);
/// let dag = EventDag::new(store, "acme", |signal, _| signal.kind().to_owned())?;
/// let event = |parent, payload: &str| DagEvent {
///     session: "turn-1".into(), parent, correlation: None, kind: None,
///     lane: 0, requires_ack: false, payload: payload.to_owned(),
/// };
/// let root = dag.append(event(None, "root"))?;
/// let child = dag.append(event(Some(root.clone()), "child"))?;
/// let up = dag.walk_ancestors(&child, 10)?;
/// assert_eq!(up.iter().map(|e| e.payload().as_str()).collect::<Vec<_>>(), ["child", "root"]);
/// assert_eq!(dag.next_position(Some(&child), 3)?.depth, 2);
/// # Ok(())
/// # }
/// ```
pub struct EventDag<T> {
    store: StdArc<ReplayStore<T>>,
    tenant: String,
    timeout: Duration,
    signal_payload: SignalPayload<T>,
}

impl<T: Send + Sync + 'static> EventDag<T> {
    /// A view of `store` (which must have a durable log that keeps a causal
    /// index) for `tenant`; `signal_payload` builds the payload of the
    /// signal events [`EventDag::signal_upstream`] appends.
    pub fn new(
        store: StdArc<ReplayStore<T>>,
        tenant: &str,
        signal_payload: impl Fn(&UpstreamSignal, &EventRef) -> T + Send + Sync + 'static,
    ) -> Result<Self, AdapterError> {
        SessionKey::new(tenant, "-")?;
        store.dag().map_err(dag_error)?;
        Ok(Self {
            store,
            tenant: tenant.to_owned(),
            timeout: DEFAULT_DURABLE_TIMEOUT,
            signal_payload: Box::new(signal_payload),
        })
    }

    /// How long an append waits to be indexed (default 10 s).
    pub fn with_durable_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn dag(&self) -> Result<Dag<'_, T>, AdapterError> {
        self.store.dag().map_err(dag_error)
    }

    fn check_tenant(&self, tenant: &str) -> Result<(), AdapterError> {
        if tenant != self.tenant {
            return Err(AdapterError::WrongTenant {
                expected: self.tenant.clone(),
                got: tenant.to_owned(),
            });
        }
        Ok(())
    }

    /// Appends `event`; returns its id once it is durable and indexed.
    pub fn append(&self, event: DagEvent<T>) -> Result<EventRef, AdapterError> {
        let key = SessionKey::new(&self.tenant, &event.session)?;
        let mut links = Links::new().lane(event.lane.to_string());
        links.parent = event.parent;
        links.correlation = event.correlation.map(|c| c.to_string().into());
        links.kind = event.kind.map(Into::into);
        links.requires_ack = event.requires_ack;
        let appended = self
            .store
            .append_linked(&key, Revision::default(), event.payload, links)?;
        let id = appended.reference();
        self.dag()?
            .wait_indexed(&id, self.timeout)
            .map_err(dag_error)?;
        Ok(id)
    }

    /// The event `id` names.
    pub fn read(&self, id: &EventRef) -> Result<Arc<Event<T>>, AdapterError> {
        self.check_tenant(id.key.tenant())?;
        self.dag()?
            .read(id)
            .map_err(dag_error)?
            .ok_or_else(|| AdapterError::NotFound { event: id.clone() })
    }

    /// `from`, then its ancestors, most recent first; at most `limit`.
    pub fn walk_ancestors(
        &self,
        from: &EventRef,
        limit: usize,
    ) -> Result<Vec<Arc<Event<T>>>, AdapterError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let first = self.read(from)?;
        let mut events = vec![first];
        let up = self.dag()?.ancestors(from, limit - 1).map_err(dag_error)?;
        events.extend(up.events);
        Ok(events)
    }

    /// The descendants of `from`, breadth first; at most `limit`.
    pub fn walk_descendants(
        &self,
        from: &EventRef,
        limit: usize,
    ) -> Result<Vec<Arc<Event<T>>>, AdapterError> {
        self.check_tenant(from.key.tenant())?;
        events(self.dag()?.descendants(from, limit))
    }

    /// Appends `signal` into the session of each ancestor's producer.
    pub fn signal_upstream(
        &self,
        from: &EventRef,
        signal: UpstreamSignal,
    ) -> Result<(), AdapterError> {
        self.check_tenant(from.key.tenant())?;
        self.dag()?
            .signal_upstream(from, &signal, |s, target| (self.signal_payload)(s, target))
            .map_err(dag_error)?;
        Ok(())
    }

    /// Every event of `tenant` whose correlation id is `correlation_id`,
    /// oldest first.
    pub fn find_correlation_chain(
        &self,
        tenant: &str,
        correlation_id: &EventRef,
    ) -> Result<Vec<Arc<Event<T>>>, AdapterError> {
        let id = correlation_id.to_string();
        events(self.dag()?.correlation_chain(tenant, &id, usize::MAX))
    }

    /// Where an event appended after `parent` in `lane` would sit.
    pub fn next_position(
        &self,
        parent: Option<&EventRef>,
        lane: u32,
    ) -> Result<DagPosition, AdapterError> {
        let depth = match parent {
            None => 0,
            Some(parent) => {
                self.check_tenant(parent.key.tenant())?;
                let dag = self.dag()?;
                match dag.node(parent).map_err(dag_error)? {
                    Some(node) => node
                        .depth
                        .ok_or_else(|| AdapterError::NotFound {
                            event: parent.clone(),
                        })?
                        .saturating_add(1),
                    // An event without links is a root.
                    None if dag.read(parent).map_err(dag_error)?.is_some() => 1,
                    None => {
                        return Err(AdapterError::NotFound {
                            event: parent.clone(),
                        })
                    }
                }
            }
        };
        Ok(DagPosition { depth, lane })
    }

    /// Events of the adapter's tenant of `kind` with a depth in
    /// `min_depth..=max_depth`; at most `limit`.
    pub fn find_by_kind(
        &self,
        kind: &str,
        min_depth: u32,
        max_depth: u32,
        limit: usize,
    ) -> Result<Vec<Arc<Event<T>>>, AdapterError> {
        self.find_by_kind_for_tenant(&self.tenant, kind, min_depth, max_depth, limit)
    }

    /// [`find_by_kind`](Self::find_by_kind) for any tenant.
    pub fn find_by_kind_for_tenant(
        &self,
        tenant: &str,
        kind: &str,
        min_depth: u32,
        max_depth: u32,
        limit: usize,
    ) -> Result<Vec<Arc<Event<T>>>, AdapterError> {
        events(
            self.dag()?
                .find_by_kind(tenant, kind, min_depth, max_depth, limit),
        )
    }

    /// Records the acknowledgement of `id` (idempotent) and, if
    /// `send_upstream`, signals [`UpstreamSignal::Ack`] to its ancestors'
    /// sessions (each time it is called).
    pub fn acknowledge(&self, id: &EventRef, send_upstream: bool) -> Result<(), AdapterError> {
        self.check_tenant(id.key.tenant())?;
        self.dag()?.acknowledge(id).map_err(dag_error)?;
        if send_upstream {
            self.signal_upstream(id, UpstreamSignal::Ack)?;
        }
        Ok(())
    }

    /// Events of the adapter's tenant that require an acknowledgement and
    /// have none, oldest first; at most `limit`.
    pub fn unacknowledged(&self, limit: usize) -> Result<Vec<Arc<Event<T>>>, AdapterError> {
        events(self.dag()?.unacknowledged(&self.tenant, limit))
    }
}

fn events<T>(answer: Result<DagAnswer<T>, DagError>) -> Result<Vec<Arc<Event<T>>>, AdapterError> {
    Ok(answer.map_err(dag_error)?.events)
}

fn dag_error(error: DagError) -> AdapterError {
    match error {
        DagError::NoDurableTier => AdapterError::NoDurableLog,
        DagError::Append(error) => AdapterError::Store(error),
        DagError::NotIndexed { event } | DagError::Timeout { event } => {
            AdapterError::NotIndexed { event }
        }
        other => AdapterError::Index {
            reason: other.to_string(),
        },
    }
}
