//! [`RedisLog`]: the durable log on Redis Streams, shared by every node that
//! talks to the same Redis server.
//!
//! It owns every key under its prefix (default `lr`) on the server it is
//! given: one stream and one meta string per session, one listing per
//! tenant, and one counter. Nothing else may write those keys; several
//! `RedisLog`s (in one process or on many nodes) may share them, and the
//! writes they make are checked with `WATCH`, so two writers on one session
//! cannot both validate against the same tail. Redis 6.2 or later is needed
//! (`XTRIM MINID`, exclusive stream ranges); [`RedisLog::open`] checks.
//!
//! # Key layout (format 1)
//!
//! `<t>` and `<s>` are the tenant and session id percent-encoded exactly as
//! cursors encode them (every byte but ASCII letters, digits, `-`, `_` and
//! `~`), so they contain no `:`, `{` or `}`: `("ab", "c")` and `("a", "bc")`
//! are `{ab:c}` and `{a:bc}`, and an id holding `:` or `{` is `%3A` or `%7B`.
//! The braces are a cluster hash tag: every key of one session lands in one
//! slot.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<prefix>:{<t>:<s>}:log` | stream | one entry per record, id `<position>-0` |
//! | `<prefix>:{<t>:<s>}:meta` | string | format byte `1`, then postcard meta (below) |
//! | `<prefix>:tenant:{<t>}:sessions` | sorted set | member: session id, score: creation number |
//! | `<prefix>:seq` | string | the last creation number handed out (`INCRBY`) |
//! | `<prefix>:store:<id>` | string, expiring | `1` while the store `<id>` holds its lease (`lease.rs`) |
//! | `<prefix>:ix:<index key>`, `<prefix>:ixs:<scan group>` | string per entry, sorted set per scan group | the causal index (see `index.rs`) |
//!
//! A record is one stream entry whose id is its (first) position, so
//! `XRANGE`/`XREAD` ranges are position ranges and a cursor's position is an
//! entry id. Fields (short names: Redis stores the names once per node of
//! entries with the same fields, but every `XADD` sends them):
//!
//! | record | fields |
//! |---|---|
//! | event | `i` incarnation, `r` revision, `t` timestamp (ns), `l` links (postcard, only when there are any), `d` payload (raw bytes) |
//! | hole | `i` incarnation, `n` positions covered, `w` reason ([`HoleReason::to_tag`](crate::durable::HoleReason::to_tag)) |
//!
//! Numbers are decimal text. The meta holds the [`SessionMeta`] fields, the
//! lives, the creation number, and the `(position, count)` of every hole not
//! yet wholly archived (holes are rare: one per log outage the ring outlived)
//! so that archiving can count the events it removes without reading them.
//!
//! # Invariants
//!
//! * The module invariants of [`crate::durable`]: an [`DurableLog::append`]
//!   is validated completely, with the same code as
//!   [`MemoryLog`](super::MemoryLog), against meta read under `WATCH`, and is
//!   then one `MULTI`/`EXEC`: every `XADD`, meta and listing write of the
//!   call, or (when a watched key changed meanwhile) none of them, and the
//!   call starts over (at most 16 times, then
//!   [`LogError::Backend`]). Redis applies a transaction whole or not at all,
//!   also in the append-only file after a crash.
//! * Only what a call read is watched: its sessions' metas and the causal
//!   index entries it read (`index.rs`). Appends to different sessions
//!   abort each other only where their links meet, and
//!   [`RedisLog::aborted_transactions`] counts the aborts.
//! * A session's stream and meta change only together, in one transaction,
//!   so the meta's tail, event count and holes describe the stream: entries
//!   cover `first kept ..= durable_tail` contiguously, where the first kept
//!   is `archived_through + 1` or the hole straddling it.
//! * A listing member exists exactly when a meta key does; it is written
//!   once, in the transaction that first records the session, with a
//!   creation number from `INCRBY` (numbers lost to an aborted transaction
//!   leave gaps, which order nothing differently).
//! * Bytes read back are never trusted: a meta or entry that does not
//!   decode, an unknown field, a zero-length hole, incarnation 0, an unknown
//!   hole reason, records that are not contiguous, or a key holding another
//!   type (`WRONGTYPE`) is [`LogError::Corrupt`], never a panic. A failed
//!   connection, a timeout or any other server error is
//!   [`LogError::Backend`]: the persister retries, and the next call opens a
//!   fresh connection.
//!
//! # Commands and round trips per call
//!
//! | call | commands | round trips |
//! |---|---|---|
//! | `append` | `WATCH` the metas and the sessions' waiting-orphan entries + `GET` each + `INCRBY` the index number by the events with links; (one more round trip, a `WATCH` and a read, per index entry an event with links reads: its parent's node, whether a parent without links is an event, an acknowledgement); (`INCRBY <prefix>:seq n` when it records new sessions); `MULTI`, `XADD <log> <position>-0 …` per record, `SET` meta per changed session, `ZADD … NX` per new session, the index's `MSET`, `DEL`, `INCRBY` of its count and `ZADD`/`ZREM` per scan group touched, `EXEC` | 2 (3 when new sessions are recorded; 2 more per retry; a refused call: the read and an `UNWATCH`) |
//! | `load_after` | `MULTI`, `GET` meta, `XREVRANGE <log> (<after+1>-0 - COUNT 1` (a hole covering `after + 1` starts before it), `XRANGE <log> <after+1>-0 + COUNT <limit>`, `EXEC` | 1 |
//! | `meta` | `GET` | 1 |
//! | `archive_before` | `WATCH` meta + `GET`; `MULTI`, `XTRIM <log> MINID <m>-0`, `SET` meta, `EXEC` | 2 (1 when nothing is to archive) |
//! | `sessions` | `ZREVRANGE <listing> <offset> <offset+limit-1>` | 1 |
//! | `keep_alive`, `store_alive` | `SET <prefix>:store:<id> 1 PX <lease ms>`, `EXISTS` it | 1 |
//! | [`RedisLog::wait_after`] | `GET` meta; `XREAD COUNT 1 BLOCK <ms> STREAMS <log> <after>-0` on a connection of its own | 2 |
//!
//! `archive_before` trims with `XTRIM MINID` exactly (not `~`): every entry
//! wholly at or below the watermark goes; a hole straddling it stays, as the
//! other backends keep it, and loads skip its archived part.
//!
//! # Durability and connections
//!
//! A call returns when Redis has applied it. How much of that survives a
//! crash of the *server* is Redis's configuration: with `appendonly yes`
//! and the default `appendfsync everysec`, a killed `redis-server` loses
//! nothing it acknowledged (the append-only file is written before the
//! reply), a power loss up to a second; `appendfsync always` closes that
//! second at the cost of an `fsync` per write. The server must not evict
//! keys (`maxmemory-policy noeviction`, the default): an evicted stream or
//! meta is history silently gone.
//!
//! One connection, behind a mutex, carries every call but
//! [`RedisLog::wait_after`] (which blocks, so it uses idle connections of
//! its own); calls are serialized on it. Any transport failure drops the
//! connection and the next call connects again; a call whose first round
//! trip (which writes nothing a repeat could harm: at most an append's
//! reservation of index numbers, which leaves a gap) fails on a connection
//! an earlier call opened, other than by a timeout, tries once more on a
//! fresh one, so a restarted server is served from the first call after it
//! is back.
//!
//! A write whose `EXEC` reply is lost (the connection broke, or the server
//! was killed after writing its append-only file but before replying) fails
//! with [`LogError::Backend`] although it may have been applied: Redis is
//! across a network, and the outcome of that round trip is unknown. A retry
//! of the same records is then refused as [`LogError::NotContiguous`] (the
//! tail moved); the caller has to read [`DurableLog::meta`] to learn which.
//!
//! Transactions touch the keys of every session of a call plus the counter
//! and the listings: on Redis Cluster that is several slots, which `MULTI`
//! refuses (`CROSSSLOT`). This backend is for one primary (with replicas, or
//! a Sentinel-managed failover in front).
//!
//! # Files
//!
//! This file holds the public type, its options and opening; each concern
//! is a file that opens with what it owns and the invariants it keeps:
//! `keys.rs` (the key layout and escaping), `encode.rs` (meta and stream
//! entry encoding), `commit.rs` (append and archive transactions),
//! `read.rs` (`load_after`, `meta`, `sessions`), `watch.rs` (the
//! [`LogWatch`]), `index.rs` (the causal index's storage) and `conn.rs`
//! (the connection, round trips and reply checking).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use ::redis::{Client, Connection, Value};

mod commit;
mod conn;
mod encode;
mod index;
mod keys;
mod lease;
mod read;
mod watch;

use self::conn::{backend, bulk, check_version, cmd, round_trip, server_bulk_limit};
use super::{DurableLog, LogError, LogRecord, LogWatch, SessionMeta, SessionWrite};
use crate::key::SessionKey;

/// How many times a write starts over when a watched meta key changed
/// between its read and its `EXEC` (another writer on the same session).
const MAX_ATTEMPTS: usize = 16;

/// How to open a [`RedisLog`].
///
/// ```
/// use std::time::Duration;
/// use livereplay::durable::RedisOptions;
///
/// let options = RedisOptions {
///     prefix: "chat-prod".into(),
///     io_timeout: Duration::from_secs(2),
///     ..RedisOptions::default()
/// };
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Every key starts with this and `:` (default `lr`). Logs sharing a
    /// server need different prefixes. It may not contain `{` or `}` (they
    /// would change the keys' cluster hash tags).
    pub prefix: String,
    /// The longest wait for a connection (default 2 s). Zero means none.
    pub connect_timeout: Duration,
    /// The longest wait for one reply or write on the socket (default 5 s).
    /// Zero means none.
    pub io_timeout: Duration,
    /// The largest payload one record may carry
    /// (default `None`: the server's `proto-max-bulk-len`, asked at open,
    /// or Redis's default of 512 MiB where `CONFIG` is not allowed). Redis
    /// answers a larger bulk string by closing the connection, which would
    /// fail the whole commit; the log refuses such a record by name
    /// instead ([`LogError::InvalidRecord`]), and the store writes it as a
    /// hole.
    pub max_record_bytes: Option<usize>,
}

/// Redis's default `proto-max-bulk-len`.
const DEFAULT_BULK_LIMIT: usize = 512 << 20;

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            prefix: "lr".into(),
            connect_timeout: Duration::from_secs(2),
            io_timeout: Duration::from_secs(5),
            max_record_bytes: None,
        }
    }
}

/// A [`DurableLog`] on Redis Streams: one stream per session, shared by
/// every node that opens the same server and prefix.
///
/// ```no_run
/// use livereplay::durable::{DurableLog, RedisLog};
/// use livereplay::SessionKey;
///
/// let log = RedisLog::open("redis://127.0.0.1:6379/")?;
/// assert!(log.meta(&SessionKey::new("t", "s")?)?.is_none());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RedisLog {
    client: Client,
    options: RedisOptions,
    /// The connection every trait call uses; `None` after a failure, until
    /// the next call connects again.
    conn: Mutex<Option<Connection>>,
    /// Idle connections for blocking reads ([`RedisLog::wait_after`]).
    waiters: Mutex<Vec<Connection>>,
    /// The largest bulk string a record may send (`max_record_bytes`).
    bulk_limit: usize,
    /// Transactions whose `EXEC` a changed watched key aborted.
    aborted: AtomicU64,
}

impl fmt::Debug for RedisLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the URL: it may hold a password.
        f.debug_struct("RedisLog")
            .field("prefix", &self.options.prefix)
            .field("connect_timeout", &self.options.connect_timeout)
            .field("io_timeout", &self.options.io_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisLog {
    /// Connects to the server at `url` (`redis://host:port/db`) with the
    /// default [`RedisOptions`].
    pub fn open(url: &str) -> Result<Self, LogError> {
        Self::open_with(url, RedisOptions::default())
    }

    /// Connects to the server at `url` and checks it is Redis 6.2 or later.
    /// Fails with [`LogError::Backend`] if the URL is malformed, the prefix
    /// holds `{` or `}`, or the server cannot be reached.
    pub fn open_with(url: &str, options: RedisOptions) -> Result<Self, LogError> {
        if options.prefix.contains(['{', '}']) {
            return Err(LogError::Backend(
                format!(
                    "the Redis key prefix {:?} may not contain '{{' or '}}'",
                    options.prefix
                )
                .into(),
            ));
        }
        let client = Client::open(url).map_err(backend)?;
        let mut log = Self {
            client,
            bulk_limit: options.max_record_bytes.unwrap_or(DEFAULT_BULK_LIMIT),
            options,
            conn: Mutex::new(None),
            waiters: Mutex::new(Vec::new()),
            aborted: AtomicU64::new(0),
        };
        let (mut slot, _) = log.connection()?;
        let legacy_index = format!("{}:index", log.options.prefix);
        let mut replies = round_trip(
            &mut slot,
            &[
                cmd("INFO").arg("server").clone(),
                cmd("EXISTS").arg(&legacy_index).clone(),
            ],
        )?
        .into_iter();
        let text = bulk(replies.next().unwrap_or(Value::Nil), "INFO")?.unwrap_or_default();
        check_version(&String::from_utf8_lossy(&text))?;
        if matches!(replies.next(), Some(Value::Int(n)) if n > 0) {
            // The causal index's layout before each entry was a key of its
            // own: read as it is, it would be misread, not rebuilt.
            return Err(LogError::Corrupt(format!(
                "{legacy_index} holds the causal index in an earlier layout (one hash), which \
                 this version does not read; remove {legacy_index} and {legacy_index}:keys to \
                 start the index over (events appended before are then not indexed)"
            )));
        }
        let asked = match log.options.max_record_bytes {
            Some(_) => None,
            None => server_bulk_limit(&mut slot),
        };
        drop(slot);
        if let Some(limit) = asked {
            log.bulk_limit = limit;
        }
        Ok(log)
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.options.prefix
    }

    /// How many write transactions (appends, archives, index writes) this
    /// log started over because a key they had read under `WATCH` changed
    /// before their `EXEC`: a measure of contention between writers.
    pub fn aborted_transactions(&self) -> u64 {
        // A statistic: no other memory depends on it.
        self.aborted.load(Ordering::Relaxed)
    }

    /// Counts one transaction aborted by a changed watched key.
    fn note_aborted(&self) {
        self.aborted.fetch_add(1, Ordering::Relaxed);
    }
}

impl DurableLog for RedisLog {
    /// Several nodes write one Redis: a cursor beyond a live writer's
    /// shipped tail may still arrive.
    fn is_shared(&self) -> bool {
        true
    }

    fn watch(&self) -> Option<&dyn LogWatch> {
        Some(self)
    }

    fn index(&self) -> Option<&dyn super::IndexStore> {
        Some(self)
    }

    fn append(&self, writes: &[SessionWrite<'_>]) -> Result<(), LogError> {
        self.append_all(writes)
    }

    fn load_after(
        &self,
        key: &SessionKey,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        self.load_records(key, after, limit)
    }

    fn meta(&self, key: &SessionKey) -> Result<Option<SessionMeta>, LogError> {
        self.read_meta(key)
    }

    fn archive_before(&self, key: &SessionKey, watermark: u64) -> Result<u64, LogError> {
        self.archive(key, watermark)
    }

    fn sessions(
        &self,
        tenant: &str,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<SessionKey>, LogError> {
        self.list_sessions(tenant, limit, offset)
    }

    fn keep_alive(&self, store: u64, lease: Duration) -> Result<(), LogError> {
        self.hold_lease(store, lease)
    }

    fn store_alive(&self, store: u64) -> Result<bool, LogError> {
        self.holds_lease(store)
    }
}
