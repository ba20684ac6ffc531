//! [`DurableOptions`]: how the persister batches, sleeps, wakes and shuts
//! down. Plain data; the persister (`super`) reads it.

use std::time::Duration;

/// Tuning of the durable tier.
///
/// ```
/// use std::time::Duration;
/// use livereplay::DurableOptions;
///
/// let options = DurableOptions::default().with_flush_interval(Duration::from_millis(5));
/// assert_eq!(options.max_batch_events, 8192);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurableOptions {
    /// How long the persister sleeps when it found nothing to write
    /// (default 2 ms): the latency a quiet session's event waits before it
    /// is written. [`ReplayStore::wait_durable`](crate::ReplayStore::wait_durable)
    /// wakes it at once.
    pub flush_interval: Duration,
    /// The most events one commit writes (default 8192); more are written
    /// by the next commit, at once.
    pub max_batch_events: usize,
    /// How long dropping the store waits for the persister to write what is
    /// left (default 5 s). A log that is failing then loses what was not
    /// written; `stats()` of a store that lives on counts it.
    pub shutdown_timeout: Duration,
    /// Wake the persister when a session becomes dirty (default `false`).
    /// An event then reaches the log, and other nodes, in a fraction of a
    /// millisecond instead of up to `flush_interval` later, and a quiet
    /// store can use a long `flush_interval` without idle polling. It costs
    /// the append that dirties a session a thread wake-up (a futex call
    /// when the persister sleeps), and on a machine with few cores the
    /// woken persister may take the appender's core: measured on a loaded
    /// 2-core VM, sparse appends went from 0.3 µs to 11–14 µs at p50 and to
    /// 0.9–1.5 ms at p99 (docs/benchmark-history.md, "What `wake_on_dirty`
    /// costs an append").
    /// Appends to a session already queued pay nothing more. Off by default
    /// for that reason: a turn loop must not wait on the scheduler.
    pub wake_on_dirty: bool,
    /// Run a persister thread (default `true`). Without one, nothing is
    /// written until the host calls
    /// [`ReplayStore::persist_round`](crate::ReplayStore::persist_round):
    /// for deterministic simulation (one thread drives every node, its
    /// log and its faults from one seed) and for hosts with a scheduler of
    /// their own. Dropping such a store writes nothing more: what was not
    /// persisted is lost, as in a crash.
    pub persister_thread: bool,
    /// Bytes of undurable events the store keeps past its rings' windows
    /// (default 64 MiB), for all sessions together. A ring's `capacity` is
    /// what readers are served from memory; a persister that falls behind
    /// a burst still finds every event it has not written, until this
    /// budget is spent: only then do lapped events become holes. Weighed
    /// as each event's own size plus its payload as the store's
    /// [`payload_limit`](crate::StoreBuilder::payload_limit) weigher says
    /// (without one, payloads' heap bytes are not counted). `0` keeps
    /// nothing: what a ring holds (its capacity, and the segment of up to
    /// 64 positions it is filling) is the bound.
    pub undurable_budget: usize,
    /// Over a shared log, how long this store counts as alive after it
    /// last said so (default 10 s): the persister renews it every third
    /// of it ([`DurableLog::keep_alive`](crate::durable::DurableLog::keep_alive)).
    /// A turn this store leaves open is closed `Interrupted` by another
    /// node once the lease has run out, so a reader of a node that died
    /// mid-turn waits about this long; a node stalled longer than this
    /// (a frozen process, a log it cannot reach) finds its turns closed
    /// and its sessions fenced when it comes back. Unused over a log that
    /// is not shared, where a store restored after another knows it is
    /// gone.
    pub store_lease: Duration,
}

impl Default for DurableOptions {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_millis(2),
            max_batch_events: 8192,
            shutdown_timeout: Duration::from_secs(5),
            wake_on_dirty: false,
            persister_thread: true,
            undurable_budget: 64 << 20,
            store_lease: Duration::from_secs(10),
        }
    }
}

impl DurableOptions {
    /// Sets [`DurableOptions::flush_interval`].
    pub fn with_flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval;
        self
    }

    /// Sets [`DurableOptions::max_batch_events`] (at least 1).
    pub fn with_max_batch_events(mut self, events: usize) -> Self {
        self.max_batch_events = events.max(1);
        self
    }

    /// Sets [`DurableOptions::wake_on_dirty`].
    pub fn with_wake_on_dirty(mut self, wake: bool) -> Self {
        self.wake_on_dirty = wake;
        self
    }

    /// Sets [`DurableOptions::undurable_budget`].
    pub fn with_undurable_budget(mut self, bytes: usize) -> Self {
        self.undurable_budget = bytes;
        self
    }

    /// Sets [`DurableOptions::persister_thread`].
    pub fn with_persister_thread(mut self, thread: bool) -> Self {
        self.persister_thread = thread;
        self
    }

    /// Sets [`DurableOptions::store_lease`] (at least 3 ms: it is renewed
    /// every third of it).
    pub fn with_store_lease(mut self, lease: Duration) -> Self {
        self.store_lease = lease.max(Duration::from_millis(3));
        self
    }

    /// Sets [`DurableOptions::shutdown_timeout`].
    pub fn with_shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }
}
