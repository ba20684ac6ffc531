//! The Durable Streams protocol (ElectricSQL's open HTTP protocol for
//! offset-addressed, resumable streams) over a [`ReplayStore`] with a
//! durable log (feature `durable-streams`).
//!
//! [`DurableStreams::router`] is an axum [`Router`](axum::Router) serving
//! streams at `/v1/stream/{*path}`, to mount beside a host's own routes:
//! create (`PUT`), append and close (`POST`), delete, `HEAD`, and reads in
//! three modes (catch-up, long-poll, SSE), with JSON mode, TTL and expiry,
//! idempotent producers, `Stream-Seq`, forks (with sub-offsets,
//! soft-deletion and cascading clean-up), the subscription APIs under
//! `__ds` (signed webhooks and pull-wake, module `subscription`), ETags and
//! cursors, browser security headers and CORS. `livereplay serve` (the binary) runs it over a redb
//! log, or over a Redis log shared by several nodes ([`DurableStreams::shared_writes`],
//! feature `redis`), with bearer tokens and signed read URLs.
//!
//! # What it owns, and how the protocol maps onto the store
//!
//! CONTRACT.md section 11 is the contract; this is how it is kept.
//!
//! * **A stream is a session.** The URL path is the session id, the tenant
//!   comes from a hook the host supplies ([`DurableStreams::access`];
//!   empty by default), so another tenant's stream is simply not found. The store's payload is [`StreamRecord`], one
//!   record per request: a `Created` record (configuration and initial
//!   messages), `Data` records (an append's messages, its producer and
//!   `Stream-Seq` state, whether it closes the stream), a `Closed` record
//!   (close without data) and a `Deleted` marker. One record is one log
//!   entry, so a request is in the log whole or not at all — with its
//!   closure and producer state — even though the persister may split an
//!   `append_batch` across commits (module `record` says why this beats
//!   one event per JSON message); a restart rebuilds each stream from its
//!   log (module `state`). A delete appends `Deleted` and archives the life
//!   in the log; a stream created again at the URL is a new `Created`
//!   record further on in the same session, and its reads start there, so
//!   none of the old data is ever served.
//! * **The in-process writer stays first-class.** A runtime in the same
//!   process appends `StreamRecord::data(bytes)` to the stream's session
//!   ([`DurableStreams::key`]) with the store's lock-free append: no HTTP,
//!   no await, no lock of this module. HTTP readers see it as soon as it
//!   is durable. What the protocol serialises (producer and `Stream-Seq`
//!   checks, closure, creation, deletion) is a per-stream async mutex on
//!   the HTTP write path only. The runtime ends a stream with
//!   [`DurableStreams::close`] and a reason (done, error, cancelled,
//!   interrupted), which takes that mutex like an HTTP close; it never
//!   appends a `Closed` record itself (the module would not see it until a
//!   restart).
//! * **Closure is the store's.** A stream's closing record (an HTTP close,
//!   append-and-close, a `PUT` that creates it closed, or
//!   [`DurableStreams::close`]) is followed, under the stream's mutex, by
//!   the store's own [`close_session`](ReplayStore::close_session) with the
//!   same reason ([`crate::Closure`]): the in-process writer's appends after
//!   the end are refused (`Refusal::SessionClosed`), and the store's own
//!   readers of the session (catch-up, the SSE dialect) end with the
//!   closure. The other way too: a closure the store made without the
//!   protocol (a runtime's [`Turn`](crate::Turn) that ended unfinished,
//!   [`close_session`](ReplayStore::close_session) called directly, or a
//!   turn whose process died, closed `Interrupted` when the next process
//!   restored the session) becomes the stream's closing record, with its
//!   reason, when a live reader at the tail or an HTTP writer meets it: the
//!   reader gets `Stream-Closed`, the writer a `409` for a closed stream.
//!   The record stays the protocol's truth (it is in the same
//!   commit as the final data); bookkeeping a closed stream still takes (a
//!   fork attached or ended, a delete) goes into the session's next life
//!   (`write::reopen_if_sealed`), which is sealed again unless it ended
//!   the stream. With several nodes, letting go of a stream may remove its
//!   session, which reopens it in the store: there the record alone keeps
//!   the stream closed (the in-process writer is not coordinated across
//!   nodes anyway, below).
//! * **Offsets** are `{position:016x}_{life:016x}` (module `offset`): the
//!   store position of the last record a reader has, then the position of
//!   the `Created` record of the life. Positions of a key only grow, across
//!   restarts and delete and re-create, so offsets sort and never repeat;
//!   an offset is always a request boundary.
//! * **Durable before shown.** A write is acknowledged when its records are
//!   durable, and readers are sent durable records only (they wait on the
//!   persister's commits, `ReplayStore::durable_progress`): a crash can take
//!   back nothing a client was shown, so no offset is ever shown for two
//!   different data. A record the ring lapped before the log took it is a
//!   recorded hole, reported, never skipped.
//! * **Gaps keep their meaning** (module `error`): an offset of an older
//!   life, archived or lost is `410`; one never issued (beyond the tail, or
//!   of a life that does not exist yet) `400`; an unknown stream `404`; a
//!   log that cannot answer `503`.
//! * **Readers cost what they read.** Reads use
//!   [`ReplayStore::catch_up`]: the log, then the ring, then live; a
//!   catch-up response is bounded by [`StreamsOptions::max_read_bytes`];
//!   an SSE response writes into a bounded channel, so a slow client slows
//!   its own task and nothing queues without bound. Live reads wake on the
//!   store's subscription and the persister's commits, never by polling.
//!
//! * **Access is decided once per request, enforced for every route**
//!   (module `access`). The host's hook sees the method, path, query and
//!   headers and returns an [`Access`]: the tenant, whether it may write,
//!   and optionally the one stream it may address. Outside that stream the
//!   answer is `404` (never `403`: nothing is revealed about what exists),
//!   a write without the right `403`, a refusal by the hook its own error
//!   ([`StreamError::Unauthorized`] is `401` with `WWW-Authenticate:
//!   Bearer`). The subscription APIs ask too (a stream-scoped caller finds
//!   none); the wake-token routes accept the wake's token as their
//!   credential, and `__ds/jwks.json` and CORS preflights are public.
//!   Under a hook, cacheable reads carry `Vary: Authorization`.
//!
//! # Protocol choices where the text leaves room
//!
//! * `Stream-Seq` is scoped per stream. `Stream-TTL` together with
//!   `Stream-Expires-At` is a `400`. An expired stream is deleted (as by
//!   `DELETE`) on the first request that finds it expired.
//! * A producer the stream never saw must start at `Producer-Seq` 0.
//! * The sliding TTL's last access is kept in memory: a restart counts as
//!   an access.
//!
//! * **Several nodes** (module `shared`, feature `redis`): over one Redis
//!   log, with [`DurableStreams::shared_writes`], the per-stream mutex is
//!   joined by a per-stream lease in Redis, held from the checks until the
//!   record is durable; on taking it a node folds what other nodes wrote
//!   into its cached state and moves its store session to the log's tail,
//!   and on letting go it evicts the session, so its readers follow the
//!   log (woken by the store's tailer) when another node writes. Reads fold
//!   the log's new records into the state first too, and take a session's
//!   durable tail from the log when this node is not writing it.
//! * **Forks** (module `fork`) read their inherited data in place from
//!   their source's session, up to the fork point; the source counts its
//!   forks in its own log and is only soft-deleted while it has any.
//!
//! # Not implemented (yet), and known limits
//!
//! Rate limiting. A response that began under a credential runs its
//! course (an SSE response up to its lifetime) even if the credential
//! expires meanwhile. Webhooks are delivered to `http://localhost` and
//! `http://127.0.0.x` only (no TLS client: `https://` targets are refused
//! at creation). Wakes and leases are not durable (a restart forgets them;
//! the next append wakes again), and in-process appends do not wake
//! subscriptions. Every HTTP write briefly takes the subscription
//! registry's one mutex. Loading a stream's state reads its whole life
//! from the log (no snapshot of the state): once per process, and again
//! after [`DurableStreams::forget_idle`] let an idle stream's state go. Expiry is checked when a stream is touched, and
//! by [`DurableStreams::sweep_expired`] for the streams this process has
//! touched: after a restart, an expired stream nobody asks for stays in the
//! log until someone does.
//!
//! With several nodes over Redis: the in-process writer's lock-free append
//! is not coordinated across nodes (write a stream over HTTP, or from one
//! node's runtime alone); a sliding TTL counts the accesses each node sees
//! (reads on another node do not keep a stream alive here; another node's
//! writes do); the subscription APIs (`__ds`) are not shared: each node
//! folds its registry once and appends its snapshots (and its signing key)
//! without a lease, so two nodes changing subscriptions fence each other's
//! snapshots — serve `__ds` from one node; every HTTP write costs a few more Redis round trips (the lease,
//! the log's meta, and restoring the session from the log) and, because
//! the session is evicted after each write, a store life in the log's meta
//! whenever the writing node changes (or a reader on the writing node held
//! the ring). A node that stalls past its lease (a paused process) and the
//! next holder are decided by the log's contiguity check (module
//! `shared`, "The position is the fencing token"): one record lands, the
//! other write answers `503` (never a false success) once the store fences
//! it.

mod access;
mod durable_wait;
mod error;
mod fork;
mod headers;
mod offset;
mod producer;
mod read;
mod record;
mod resident;
mod router;
#[cfg(feature = "redis")]
mod shared;
mod state;
mod subscription;
mod write;

#[cfg(feature = "redis")]
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc as StdArc;
use std::time::Duration;

use axum::http::HeaderMap;
use dashmap::DashMap;

use crate::key::SessionKey;
use crate::store::ReplayStore;

pub use self::access::{Access, AccessHook, RequestInfo};
pub use self::error::StreamError;
pub use self::offset::{parse_offset, Offset, OffsetError, OffsetQuery};
pub use self::producer::{MAX_PRODUCER_ID_LEN, MAX_PRODUCER_NUMBER};
pub use self::record::{
    CloseReason, ExpiresAt, ProducerStamp, StreamConfig, StreamRecord, WriteStamp,
};
pub use self::router::{MAX_HEADER_VALUE_LEN, STREAM_ROUTE};
#[cfg(feature = "redis")]
pub use self::shared::SharedWrites;
pub use self::subscription::{is_public, WebhookOptions};

use self::state::StreamState;

/// Tuning of the protocol server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamsOptions {
    /// How long a long-poll waits for data before `204` (default 20 s).
    pub long_poll_timeout: Duration,
    /// The most bytes a catch-up or long-poll response carries, and an SSE
    /// data event (default 1 MiB; one larger record is sent whole).
    pub max_read_bytes: usize,
    /// The largest request body accepted (default 8 MiB; larger is `413`).
    pub max_append_bytes: usize,
    /// How long a write waits for its records to be durable before `503`
    /// (default 10 s).
    pub durable_timeout: Duration,
    /// How long an SSE response lasts before the server closes it so the
    /// client reconnects (default 60 s, as the protocol suggests).
    pub sse_lifetime: Duration,
    /// Where webhooks may go beyond the protocol's defaults (an allowlist
    /// of hosts on the server's own network, a private CA).
    pub webhooks: WebhookOptions,
    /// The most bytes of large records (64 KiB or more) that appends leave
    /// in the streams' memory windows, all streams together (default
    /// 64 MiB); older ones are read from the durable log. Memory is freed
    /// a ring segment (64 records) at a time, so each stream's newest
    /// segment may hold its large records beyond this (module
    /// `resident`).
    pub large_records_in_memory: usize,
    /// Where clients reach this server, up to the `/v1/stream` it serves
    /// (`https://streams.example.com`, or with the host's prefix): the
    /// subscriptions' callback and key-set URLs are built from it. Without
    /// it they are `http://` and the Host of the request that created the
    /// subscription, which is wrong behind a TLS proxy.
    pub public_url: Option<String>,
}

impl Default for StreamsOptions {
    fn default() -> Self {
        Self {
            long_poll_timeout: Duration::from_secs(20),
            max_read_bytes: 1 << 20,
            max_append_bytes: 8 << 20,
            durable_timeout: Duration::from_secs(10),
            sse_lifetime: Duration::from_secs(60),
            webhooks: WebhookOptions::default(),
            large_records_in_memory: 64 << 20,
            public_url: None,
        }
    }
}

/// One stream's slot: its state behind the write path's mutex (`None`: no
/// live stream at the URL).
pub(crate) struct Entry {
    pub(crate) state: tokio::sync::Mutex<Option<StreamState>>,
    /// The last log position the state folded: where a refresh from the
    /// log continues (several nodes, module `shared`).
    pub(crate) folded: AtomicU64,
    /// A write of this node ended without its record durable (it may have
    /// been fenced by another node's): the next write rebuilds the state
    /// from the log rather than trusting the fold.
    #[cfg(feature = "redis")]
    pub(crate) stale: AtomicBool,
}

impl Entry {
    fn new(state: Option<StreamState>, folded: u64) -> Self {
        Self {
            state: tokio::sync::Mutex::new(state),
            folded: AtomicU64::new(folded),
            #[cfg(feature = "redis")]
            stale: AtomicBool::new(false),
        }
    }
}

/// What a write holds besides its stream's mutex: with several nodes, the
/// stream's lease, let go (after evicting the session) when it drops.
pub(crate) struct WriteHold {
    #[cfg(feature = "redis")]
    lease: Option<(
        shared::WriteLease,
        StdArc<Entry>,
        StdArc<DurableStreamsShared>,
    )>,
    /// The stream's store session, kept resident from the catch-up until
    /// the write is done (`catch_up_state`); let go before the eviction.
    #[cfg(feature = "redis")]
    pinned: Option<crate::SessionHandle<StreamRecord>>,
}

/// What letting go of a lease needs, apart from the service.
#[cfg(feature = "redis")]
pub(crate) struct DurableStreamsShared {
    store: StdArc<ReplayStore<StreamRecord>>,
    writes: StdArc<SharedWrites>,
}

#[cfg(feature = "redis")]
impl DurableStreamsShared {
    /// Evicts the session from memory (readers here then follow the log,
    /// woken by the store's tailer when another node writes), marks the
    /// entry stale if not all of this node's records are durable, and lets
    /// go of the lease. Blocking.
    fn let_go(&self, lease: &shared::WriteLease, entry: &Entry) {
        let key = &lease.key;
        let durable = self.store.durable_position(key).ok().flatten();
        let latest = self.store.latest_position(key);
        if latest > durable {
            // Release: read (Acquire) by the next write, after it took the
            // lease this write lets go below.
            entry.stale.store(true, Ordering::Release);
        }
        if self.store.is_resident(key) {
            if let Some(durable) = durable {
                self.store.release_through(key, durable);
            }
            self.store.trim_session(key);
            if self.store.is_resident(key) {
                self.store.remove_session(key);
            }
        }
        if let Err(error) = self.writes.release(lease) {
            // It expires by itself.
            eprintln!(
                "livereplay: could not let go of a stream lease (it expires in {:?}): {error}",
                self.writes.lease()
            );
        }
    }
}

impl Drop for WriteHold {
    fn drop(&mut self) {
        #[cfg(feature = "redis")]
        drop(self.pinned.take());
        #[cfg(feature = "redis")]
        if let Some((lease, entry, shared)) = self.lease.take() {
            let let_go = move || shared.let_go(&lease, &entry);
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(let_go)),
                Err(_) => let_go(),
            }
        }
    }
}

/// The Durable Streams service over a store of [`StreamRecord`]s.
///
/// ```no_run
/// use std::sync::Arc;
/// use livereplay::durable::RedbLog;
/// use livereplay::streams::{DurableStreams, StreamRecord};
/// use livereplay::{Postcard, ReplayStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let log = Arc::new(RedbLog::open("/tmp/streams.redb")?);
/// let store = Arc::new(ReplayStore::<StreamRecord>::builder().durable(log, Postcard).build()?);
/// let streams = Arc::new(DurableStreams::new(store.clone()));
/// let app = axum::Router::new().merge(streams.clone().router());
/// // The runtime's turn loop appends to a stream created over HTTP, lock-free:
/// store.append(&streams.key("", "chat-1")?, livereplay::Revision(0), StreamRecord::data("hi"))?;
/// # let _ = app; Ok(()) }
/// ```
pub struct DurableStreams {
    store: StdArc<ReplayStore<StreamRecord>>,
    entries: DashMap<SessionKey, StdArc<Entry>>,
    options: StreamsOptions,
    access: StdArc<AccessHook>,
    /// Whether `access` is a host's hook (not the default).
    access_controlled: bool,
    subscriptions: subscription::Subscriptions,
    /// The large records appends left in memory (module `resident`).
    resident: resident::Resident,
    /// Writes waiting for durability on one node (module `durable_wait`).
    durable_waits: StdArc<crate::store::DurableWaits<StreamRecord>>,
    /// Several nodes over one Redis: the stream leases (module `shared`).
    #[cfg(feature = "redis")]
    shared: Option<StdArc<DurableStreamsShared>>,
}

impl DurableStreams {
    /// The service over `store`, which should have a durable log (without
    /// one, nothing is ever durable and writes time out with `503`).
    pub fn new(store: StdArc<ReplayStore<StreamRecord>>) -> Self {
        Self {
            durable_waits: crate::store::DurableWaits::new(&store),
            store,
            entries: DashMap::new(),
            options: StreamsOptions::default(),
            access: StdArc::new(|_: &RequestInfo<'_>| Ok(Access::full(""))),
            access_controlled: false,
            subscriptions: subscription::Subscriptions::default(),
            resident: resident::Resident::new(),
            #[cfg(feature = "redis")]
            shared: None,
        }
    }

    /// Makes this service one of several nodes over the same Redis log
    /// (the store's log must be that `RedisLog`): every protocol write
    /// takes the stream's lease in `writes` and catches up with the log
    /// first (module `shared`).
    #[cfg(feature = "redis")]
    pub fn shared_writes(mut self, writes: SharedWrites) -> Self {
        self.shared = Some(StdArc::new(DurableStreamsShared {
            store: StdArc::clone(&self.store),
            writes: StdArc::new(writes),
        }));
        self
    }

    /// Whether writes are shared with other nodes.
    fn is_shared(&self) -> bool {
        #[cfg(feature = "redis")]
        return self.shared.is_some();
        #[cfg(not(feature = "redis"))]
        false
    }

    /// A write's hold on its stream: the mutex, and with several nodes the
    /// lease, then the state caught up with the log.
    pub(crate) async fn lock_for_write<'a>(
        &self,
        key: &SessionKey,
        entry: &'a StdArc<Entry>,
    ) -> Result<(tokio::sync::MutexGuard<'a, Option<StreamState>>, WriteHold), StreamError> {
        let state = entry.state.lock().await;
        #[cfg(feature = "redis")]
        if let Some(shared) = &self.shared {
            let mut state = state;
            let deadline = tokio::time::Instant::now() + self.options.durable_timeout;
            let lease = shared.writes.acquire(key, deadline).await?;
            let mut hold = WriteHold {
                lease: Some((lease, StdArc::clone(entry), StdArc::clone(shared))),
                pinned: None,
            };
            hold.pinned = self.catch_up_state(key, entry, &mut state, true)?;
            return Ok((state, hold));
        }
        #[cfg(not(feature = "redis"))]
        let _ = key;
        Ok((
            state,
            WriteHold {
                #[cfg(feature = "redis")]
                lease: None,
                #[cfg(feature = "redis")]
                pinned: None,
            },
        ))
    }

    /// With several nodes, folds the log's records after the state's last
    /// one into it (rebuilt if a delete archived what it knew). For a write
    /// (`writing`, the lease held) it first *pins* the stream's store
    /// session (a handle, so it stays resident) at the log's tail, and
    /// checks the fold ends exactly there: the write's records then follow
    /// the very state they were checked against, and if another node wrote
    /// meanwhile (this node's lease expired while it was paused) their
    /// records contend for one position in the log, which fences one
    /// (module `shared`). Returns the pinned session for a write. A no-op
    /// on one node. Changes `entry.folded` under the entry's mutex
    /// (`state`), so Relaxed.
    pub(crate) fn catch_up_state(
        &self,
        key: &SessionKey,
        entry: &Entry,
        state: &mut Option<StreamState>,
        writing: bool,
    ) -> Result<Option<crate::SessionHandle<StreamRecord>>, StreamError> {
        if !self.is_shared() {
            return Ok(None);
        }
        let Some(log) = self.store.durable_log() else {
            return Ok(None);
        };
        let mut pinned = None;
        if writing {
            let mut session = self.store.session(key)?;
            let meta = log.meta(key)?;
            let tail = meta.map_or(0, |meta| meta.durable_tail);
            if session.latest_position().unwrap_or(0) < tail {
                // Resident here from before another node wrote: continue
                // after the log's tail instead (a new life).
                drop(session);
                self.store.remove_session(key);
                session = self.store.session(key)?;
            }
            pinned = Some(session);
        }
        let meta = log.meta(key)?;
        let (archived, tail) = meta
            .map(|meta| (meta.archived_through, meta.durable_tail))
            .unwrap_or((0, 0));
        // A write of this node that did not end durable may have been
        // fenced by another node's record at its position: the fold cannot
        // tell them apart, so it starts over. Acquire: pairs with the
        // Release in `let_go`.
        #[cfg(feature = "redis")]
        if entry.stale.swap(false, Ordering::Acquire) {
            *state = None;
            entry.folded.store(0, Ordering::Relaxed);
        }
        let mut folded = entry.folded.load(Ordering::Relaxed);
        if archived > folded {
            *state = None;
            folded = archived;
        }
        if tail > folded {
            folded = state::fold_after(&self.store, key, state, folded)?;
            if let Some(live) = state.as_mut() {
                // Another node's write is an access too.
                live.last_access = std::time::Instant::now();
            }
        }
        entry.folded.store(folded, Ordering::Relaxed);
        if let Some(session) = &pinned {
            let at = session.latest_position().unwrap_or(0);
            if folded != at {
                return Err(StreamError::Unavailable(format!(
                    "another node wrote this stream while this one prepared a write (the log is \
                     at {folded}, this node's session at {at}; its lease expired): retry"
                )));
            }
        }
        Ok(pinned)
    }

    /// Sets the options.
    pub fn options(mut self, options: StreamsOptions) -> Self {
        self.options = options;
        // A client built from the old options is not used again.
        self.subscriptions.client = std::sync::OnceLock::new();
        self
    }

    /// Sets the hook that decides each request's [`Access`] from its
    /// method, path, query and headers (default: the empty tenant, full
    /// access, for every request). Its error is the response: return
    /// [`StreamError::Unauthorized`] for a missing or unknown credential
    /// (`401` with `WWW-Authenticate: Bearer`) and
    /// [`StreamError::Forbidden`] for one that is refused (`403`). The
    /// module then answers `404` for any path outside
    /// [`Access::stream`] and `403` for a write without
    /// [`Access::write`]; see module `access` for the few routes that do
    /// not ask.
    pub fn access(
        mut self,
        hook: impl Fn(&RequestInfo<'_>) -> Result<Access, StreamError> + Send + Sync + 'static,
    ) -> Self {
        self.access = StdArc::new(hook);
        self.access_controlled = true;
        self
    }

    /// Sets a hook that names a request's tenant from its headers, with
    /// full access to that tenant's streams: [`DurableStreams::access`]
    /// for hosts whose authentication only says who is calling.
    pub fn tenant(
        self,
        hook: impl Fn(&HeaderMap) -> Result<String, StreamError> + Send + Sync + 'static,
    ) -> Self {
        self.access(move |request: &RequestInfo<'_>| hook(request.headers).map(Access::full))
    }

    /// The store.
    pub fn store(&self) -> &StdArc<ReplayStore<StreamRecord>> {
        &self.store
    }

    /// The session key of the stream at `path` (below `/v1/stream/`) for
    /// `tenant`: where an in-process writer appends.
    pub fn key(&self, tenant: &str, path: &str) -> Result<SessionKey, StreamError> {
        SessionKey::new(tenant, path).map_err(|error| {
            StreamError::BadRequest(format!("the stream path cannot be a session id: {error}"))
        })
    }

    /// Deletes every expired stream this process has touched (a fork's
    /// end may then delete its soft-deleted source); returns how many. A
    /// stream is otherwise found expired only when a request touches it:
    /// a host calls this now and then (`livereplay serve` every few
    /// seconds). Streams busy with a request are left for the next sweep.
    pub async fn sweep_expired(&self) -> Result<usize, StreamError> {
        let keys: Vec<SessionKey> = self
            .entries
            .iter()
            .map(|entry| entry.key().clone())
            .collect();
        let mut swept = 0;
        for key in keys {
            let Some(entry) = self.entries.get(&key).map(|entry| StdArc::clone(&entry)) else {
                continue;
            };
            if self.is_shared() {
                // Several nodes: expiry is a write like any other, under
                // the stream's lease and against the log's state.
                let mut state = entry.state.lock().await;
                self.catch_up_state(&key, &entry, &mut state, false)?;
                if !state
                    .as_ref()
                    .is_some_and(|live| !live.soft_deleted && live.expired())
                {
                    continue;
                }
                drop(state);
                let (mut state, _hold) = self.lock_for_write(&key, &entry).await?;
                let was_live = state.as_ref().is_some_and(|live| !live.soft_deleted);
                self.expire(&key, &mut state).await?;
                if was_live && state.as_ref().is_none_or(|live| live.soft_deleted) {
                    swept += 1;
                }
                continue;
            }
            let Ok(mut state) = entry.state.try_lock() else {
                continue;
            };
            let was_live = state.as_ref().is_some_and(|live| !live.soft_deleted);
            self.expire(&key, &mut state).await?;
            if was_live && state.as_ref().is_none_or(|live| live.soft_deleted) {
                swept += 1;
            }
        }
        Ok(swept)
    }

    /// Forgets the protocol state this process cached for streams idle
    /// for `idle` or longer, and for URLs that hold no stream; returns how
    /// many. The state is a fold of the log (module `state`), so the next
    /// request for a forgotten stream folds it again, with the same
    /// result; what the map holds is bounded by the streams in use, not by
    /// every stream this process ever touched. `livereplay serve` calls
    /// this with its sweep.
    ///
    /// Kept whatever their age: a stream a request holds (its entry is
    /// shared, or its mutex taken: forgetting it could let a second entry
    /// serialise writes beside the first), and one with a TTL or an
    /// `Expires-At` (its sliding TTL's last access lives only here, and
    /// the expiry sweep finds streams through this map).
    pub fn forget_idle(&self, idle: Duration) -> usize {
        let mut forgotten = 0;
        self.entries.retain(|_, entry| {
            // The shard's write lock is held: nobody can take a new clone
            // of `entry` while we look, so a count of 1 stays 1.
            if StdArc::strong_count(entry) > 1 {
                return true;
            }
            let Ok(state) = entry.state.try_lock() else {
                return true;
            };
            let keep = state.as_ref().is_some_and(|live| {
                live.config.ttl_seconds.is_some()
                    || live.config.expires_at.is_some()
                    || live.last_access.elapsed() < idle
            });
            if !keep {
                forgotten += 1;
            }
            keep
        });
        forgotten
    }

    /// How many streams' protocol state this process holds (see
    /// [`DurableStreams::forget_idle`]).
    pub fn cached_streams(&self) -> usize {
        self.entries.len()
    }

    /// Bytes of large records (64 KiB or more) that appends left in
    /// memory now, and how many such records were released to the log so
    /// far to keep within [`StreamsOptions::large_records_in_memory`].
    pub fn large_records(&self) -> (u64, u64) {
        (self.resident.bytes(), self.resident.released())
    }

    /// The key's durable watermark (0 for a session the store does not
    /// know).
    fn durable(&self, key: &SessionKey) -> Result<u64, StreamError> {
        // With several nodes, a session this node is not writing now may
        // be a tombstone of its last write here, behind what the others
        // wrote since: the shared log knows.
        if self.is_shared() && !self.store.is_resident(key) {
            if let Some(log) = self.store.durable_log() {
                return Ok(log.meta(key)?.map_or(0, |meta| meta.durable_tail));
            }
        }
        Ok(self.store.durable_position(key)?.unwrap_or(0))
    }

    /// Waits until `position` of `key` is durable, at most until
    /// `deadline`; returns whether it is. On one node, in the registry of
    /// module `durable_wait` (woken only by the commit that makes it
    /// durable); with several nodes, on the persister's commits (no
    /// polling), armed before the second look so a commit between the two
    /// is not missed.
    async fn durable_by(
        &self,
        key: &SessionKey,
        position: u64,
        deadline: tokio::time::Instant,
    ) -> Result<bool, StreamError> {
        if self.store.durable_log().is_none() {
            // Nothing is ever durable (and `durable_progress` would not
            // wait): wait out the deadline instead of spinning.
            tokio::time::sleep_until(deadline).await;
            return Ok(false);
        }
        // One writer per log (redb's file lock): the registry of waits.
        // A log other processes write too (Redis, Postgres), with or without
        // the lease, can fence this node's session, which a wait must notice
        // at once: the store-wide progress event below, checking the fence.
        let log_is_shared = self.store.durable_log().is_some_and(|log| log.is_shared());
        if !self.is_shared() && !log_is_shared {
            return self.durable_by_registered(key, position, deadline).await;
        }
        loop {
            if self.durable(key)? >= position {
                return Ok(true);
            }
            if self.store.is_fenced(key) {
                // Several nodes: another node's record took this position
                // (module `shared`); it will never be durable.
                return Err(StreamError::Unavailable(
                    "another node wrote this stream at the same position (this node's lease \
                     expired while it was paused): this write was not stored; retry"
                        .into(),
                ));
            }
            let progress = self.store.durable_progress();
            if self.durable(key)? >= position {
                return Ok(true);
            }
            if tokio::time::timeout_at(deadline, progress).await.is_err() {
                return Ok(false);
            }
        }
    }

    /// The entry of a stream, loading its state from the log on first use.
    /// With `create`, an entry is made even if no stream exists (for a
    /// PUT); without it, a stream nobody created is `None` and leaves
    /// nothing behind.
    fn entry(&self, key: &SessionKey, create: bool) -> Result<Option<StdArc<Entry>>, StreamError> {
        if let Some(entry) = self.entries.get(key) {
            return Ok(Some(StdArc::clone(&entry)));
        }
        let (loaded, folded) = state::load(&self.store, key)?;
        if loaded.is_none() && !create {
            return Ok(None);
        }
        // Another request may have loaded it meanwhile: the first one in
        // wins, and nobody wrote before inserting, so both loads agree.
        let entry = self
            .entries
            .entry(key.clone())
            .or_insert_with(|| StdArc::new(Entry::new(loaded, folded)))
            .clone();
        Ok(Some(entry))
    }
}

impl std::fmt::Debug for DurableStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableStreams")
            .field("streams", &self.entries.len())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}
