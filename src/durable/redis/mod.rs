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
//! | `<prefix>:index`, `<prefix>:index:keys` | hash, sorted set | the causal index (see `index.rs`) |
//!
//! A record is one stream entry whose id is its (first) position, so
//! `XRANGE`/`XREAD` ranges are position ranges and a cursor's position is an
//! entry id. Fields (short names: Redis stores the names once per node of
//! entries with the same fields, but every `XADD` sends them):
//!
//! | record | fields |
//! |---|---|
//! | event | `i` incarnation, `r` revision, `t` timestamp (ns), `l` links (postcard, only when there are any), `d` payload (raw bytes) |
//! | hole | `i` incarnation, `n` positions covered, `w` reason ([`HoleReason::to_tag`]) |
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
//!   call, or (when a watched meta changed meanwhile) none of them, and the
//!   call starts over (at most 16 times, then
//!   [`LogError::Backend`]). Redis applies a transaction whole or not at all,
//!   also in the append-only file after a crash.
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
//! | `append` | `WATCH` metas and the index hash + `GET` each meta + `HGET` the index state; (one more round trip per index read an event with links needs: its parent's node, and whether a parent without links is an event); (`INCRBY <prefix>:seq n` when it records new sessions); `MULTI`, `XADD <log> <position>-0 …` per record, `SET` meta per changed session, `ZADD … NX` per new session, `EXEC` | 2 (3 when new sessions are recorded; 2 more per retry; a refused call: the read and an `UNWATCH`) |
//! | `load_after` | `MULTI`, `GET` meta, `XREVRANGE <log> (<after+1>-0 - COUNT 1` (a hole covering `after + 1` starts before it), `XRANGE <log> <after+1>-0 + COUNT <limit>`, `EXEC` | 1 |
//! | `meta` | `GET` | 1 |
//! | `archive_before` | `WATCH` meta + `GET`; `MULTI`, `XTRIM <log> MINID <m>-0`, `SET` meta, `EXEC` | 2 (1 when nothing is to archive) |
//! | `sessions` | `ZREVRANGE <listing> <offset> <offset+limit-1>` | 1 |
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
//! trip (which never writes) fails on a connection an earlier call opened,
//! other than by a timeout, tries once more on a fresh one, so a restarted server is served from the
//! first call after it is back.
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

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ::redis::{Client, Cmd, Connection, ConnectionLike, ServerError, Value};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};

mod index;

use super::memory::{apply_to_meta, empty_meta, validate_write};
use super::stored::LinksV1;
use super::{
    DurableLog, HoleReason, Life, Links, LogError, LogRecord, LogWatch, RecordBody, SessionMeta,
    SessionWrite, StoredEvent,
};
use crate::cursor::Incarnation;
use crate::key::SessionKey;

/// How many times a write starts over when a watched meta key changed
/// between its read and its `EXEC` (another writer on the same session).
const MAX_ATTEMPTS: usize = 16;

/// The meta layout this module writes and reads (its first byte).
const FORMAT: u8 = 1;

/// The same escaping as cursors (`crate::cursor`): everything but ASCII
/// letters, digits, `-`, `_` and `~`.
const ID_ESCAPES: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

/// Idle connections kept for [`RedisLog::wait_after`].
const MAX_IDLE_WAITERS: usize = 8;

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
        };
        let (mut slot, _) = log.connection()?;
        let info = round_trip(&mut slot, &[cmd("INFO").arg("server").clone()])?;
        let text = bulk(info.into_iter().next().unwrap_or(Value::Nil), "INFO")?.unwrap_or_default();
        check_version(&String::from_utf8_lossy(&text))?;
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

    /// Waits until the log records a position after `after` in `key`'s
    /// session, at most `timeout`: `Ok(true)` as soon as one is there
    /// (at once if it already is), `Ok(false)` at the timeout. One key of
    /// [`LogWatch::wait_any`].
    pub fn wait_after(
        &self,
        key: &SessionKey,
        after: u64,
        timeout: Duration,
    ) -> Result<bool, LogError> {
        Ok(!self.wait_any(&[(key.clone(), after)], timeout)?.is_empty())
    }

    /// [`LogWatch::wait_any`]: one pipelined `GET` of every session's meta
    /// (a tail already past `after`, a hole that starts before it included,
    /// answers at once), then one `XREAD BLOCK` over all their streams from
    /// `<after>-0`, on a connection of its own (so it never holds up the
    /// persister's writes). A record written from any node wakes it.
    fn wait_on_streams(
        &self,
        interest: &[(SessionKey, u64)],
        timeout: Duration,
    ) -> Result<Vec<usize>, LogError> {
        if interest.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<SessionKeys> = interest
            .iter()
            .map(|(key, _)| SessionKeys::new(&self.options.prefix, key))
            .collect();
        let idle = self
            .waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let reused = idle.is_some();
        let mut slot = match idle {
            Some(con) => Some(con),
            None => Some(self.connect()?),
        };
        let millis = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .min(i64::MAX as u64);
        // The block plus the usual allowance for the reply.
        let read_timeout = nonzero(timeout.saturating_add(self.options.io_timeout));
        let gets: Vec<Cmd> = keys
            .iter()
            .map(|keys| cmd("GET").arg(&keys.meta).clone())
            .collect();
        let prepare = |con: &Connection| con.set_read_timeout(read_timeout).map_err(backend);
        if let Some(con) = slot.as_ref() {
            prepare(con)?;
        }
        let mut replies = round_trip(&mut slot, &gets);
        if reused && slot.is_none() && replies.as_ref().is_err_and(|e| !is_timeout(e)) {
            // An idle connection that failed at once is stale (the server
            // restarted): once more on a fresh one.
            let con = self.connect()?;
            prepare(&con)?;
            slot = Some(con);
            replies = round_trip(&mut slot, &gets);
        }
        let mut ready = Vec::new();
        for (index, reply) in replies?.into_iter().enumerate() {
            let Some((key, after)) = interest.get(index) else {
                break;
            };
            if decode_meta(key, reply)?.is_some_and(|(_, meta, _)| meta.durable_tail > *after) {
                ready.push(index);
            }
        }
        if ready.is_empty() {
            let mut xread = cmd("XREAD");
            xread.arg("COUNT").arg(1);
            // BLOCK 0 would wait for ever: a zero timeout only looks.
            if millis > 0 {
                xread.arg("BLOCK").arg(millis);
            }
            xread.arg("STREAMS");
            for keys in &keys {
                xread.arg(&keys.log);
            }
            for (_, after) in interest {
                xread.arg(format!("{after}-0"));
            }
            let streams: Vec<Value> = match one(round_trip(&mut slot, &[xread])?, "XREAD")? {
                Value::Nil => Vec::new(),
                Value::Array(streams) => streams
                    .into_iter()
                    .filter_map(|stream| match stream {
                        Value::Array(mut parts) if !parts.is_empty() => Some(parts.swap_remove(0)),
                        _ => None,
                    })
                    .collect(),
                Value::Map(streams) => streams.into_iter().map(|(name, _)| name).collect(),
                Value::ServerError(e) => return Err(server_error(e)),
                other => return Err(unexpected("XREAD", &other)),
            };
            for name in streams {
                let name = bulk(name, "XREAD")?.unwrap_or_default();
                if let Some(index) = keys.iter().position(|keys| keys.log.as_bytes() == name) {
                    ready.push(index);
                }
            }
        }
        if let Some(con) = slot {
            if con
                .set_read_timeout(nonzero(self.options.io_timeout))
                .is_ok()
            {
                let mut idle = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
                if idle.len() < MAX_IDLE_WAITERS {
                    idle.push(con);
                }
            }
        }
        Ok(ready)
    }

    fn connect(&self) -> Result<Connection, LogError> {
        let con = match nonzero(self.options.connect_timeout) {
            Some(timeout) => self.client.get_connection_with_timeout(timeout),
            None => self.client.get_connection(),
        }
        .map_err(backend)?;
        let io = nonzero(self.options.io_timeout);
        con.set_read_timeout(io).map_err(backend)?;
        con.set_write_timeout(io).map_err(backend)?;
        Ok(con)
    }

    /// The shared connection, connected, and whether it was open already
    /// (it may be stale: the server may have restarted since).
    fn connection(&self) -> Result<(MutexGuard<'_, Option<Connection>>, bool), LogError> {
        let mut slot = self.conn.lock().unwrap_or_else(|poisoned| {
            // A panic mid-call may have left a WATCH or MULTI open on it.
            let mut slot = poisoned.into_inner();
            *slot = None;
            slot
        });
        let reused = slot.is_some();
        if !reused {
            *slot = Some(self.connect()?);
        }
        Ok((slot, reused))
    }

    /// The first round trip of a call, which writes nothing: if it fails on
    /// the transport of a connection opened by an earlier call (the server
    /// restarted, an idle connection was cut), it is tried once more on a
    /// fresh connection, so a restarted server is served from the first call.
    fn first_trip(
        &self,
        slot: &mut Option<Connection>,
        reused: bool,
        cmds: &[Cmd],
    ) -> Result<Vec<Value>, LogError> {
        match round_trip(slot, cmds) {
            Err(e) if reused && slot.is_none() && !is_timeout(&e) => {
                *slot = Some(self.connect()?);
                round_trip(slot, cmds)
            }
            result => result,
        }
    }

    /// One attempt of [`DurableLog::append`]: `Ok(false)` if a watched
    /// key changed and the call must start over. Leaves nothing watched.
    fn try_append(
        &self,
        slot: &mut Option<Connection>,
        reused: bool,
        writes: &[SessionWrite<'_>],
    ) -> Result<bool, LogError> {
        // Sessions in the order they first appear: the order new ones get
        // their creation numbers (as in the other backends).
        let mut index: HashMap<&SessionKey, usize> = HashMap::new();
        let mut sessions: Vec<&SessionKey> = Vec::new();
        for write in writes {
            index.entry(write.key).or_insert_with(|| {
                sessions.push(write.key);
                sessions.len() - 1
            });
        }
        let keys: Vec<SessionKeys> = sessions
            .iter()
            .map(|key| SessionKeys::new(&self.options.prefix, key))
            .collect();
        // The causal index is watched with the metas, and its state read
        // ahead (every append reads it; see `index`).
        let index_hash = index::hash_key(&self.options.prefix);
        let mut watch = cmd("WATCH");
        for k in &keys {
            watch.arg(&k.meta);
        }
        watch.arg(&index_hash);
        let mut read = vec![watch];
        read.extend(keys.iter().map(|k| cmd("GET").arg(&k.meta).clone()));
        read.push(
            cmd("HGET")
                .arg(&index_hash)
                .arg(crate::dag::STATE_KEY)
                .clone(),
        );
        let mut replies = self.first_trip(slot, reused, &read)?;
        let state = match replies.pop().map(|reply| bulk(reply, "HGET")) {
            Some(Ok(state)) => state,
            Some(Err(e)) => {
                unwatch(slot);
                return Err(e);
            }
            None => None,
        };
        let first = FirstTrip {
            replies,
            index_state: state,
        };
        match self.stage_append(slot, writes, &index, &sessions, &keys, first) {
            Ok(Some(tx)) => exec(slot, &tx, "append"),
            Ok(None) => {
                // Only empty writes to known sessions: nothing changes.
                unwatch(slot);
                Ok(true)
            }
            Err(e) => {
                unwatch(slot);
                Err(e)
            }
        }
    }

    /// Validates an append against the metas read under `WATCH` and builds
    /// its transaction; `None` if it changes nothing.
    fn stage_append(
        &self,
        slot: &mut Option<Connection>,
        writes: &[SessionWrite<'_>],
        index: &HashMap<&SessionKey, usize>,
        sessions: &[&SessionKey],
        keys: &[SessionKeys],
        first: FirstTrip,
    ) -> Result<Option<Vec<Cmd>>, LogError> {
        let known_index = HashMap::from([(crate::dag::STATE_KEY.to_vec(), first.index_state)]);
        let mut replies = first.replies.into_iter();
        ok_reply(replies.next().unwrap_or(Value::Nil), "WATCH")?;
        let mut staged = Vec::with_capacity(sessions.len());
        for (key, reply) in sessions.iter().zip(replies) {
            let (seq, meta, holes) = match decode_meta(key, reply)? {
                Some((seq, meta, holes)) => (Some(seq), Some(meta), holes),
                None => (None, None, Vec::new()),
            };
            staged.push(Staged {
                seq,
                meta,
                holes,
                changed: false,
                first_recorded: false,
            });
        }
        // Validate everything before writing anything. A session written
        // twice in one call validates against its state after the earlier
        // write.
        for write in writes {
            let stage = &mut staged[index[write.key]];
            validate_write(write.key, stage.meta.as_ref(), write)?;
            // Nothing to record for a session the log does not know: not
            // listed, no meta (as in the other backends).
            if write.new_life.is_none() && write.records.is_empty() {
                continue;
            }
            apply_to_meta(stage.meta.get_or_insert_with(empty_meta), write);
            stage
                .holes
                .extend(write.records.iter().filter_map(|r| match r.body {
                    RecordBody::Hole { count, .. } => Some((r.position, count)),
                    RecordBody::Event(_) => None,
                }));
            stage.changed = true;
        }
        if !staged.iter().any(|s| s.changed) {
            return Ok(None);
        }
        let new = staged
            .iter()
            .filter(|s| s.changed && s.seq.is_none())
            .count() as u64;
        if new > 0 {
            // Creation numbers, outside the transaction (its commands
            // cannot use each other's results); an abort wastes them.
            let counter = format!("{}:seq", self.options.prefix);
            let reply = round_trip(slot, &[cmd("INCRBY").arg(counter).arg(new).clone()])?;
            let last = int(one(reply, "INCRBY")?, "INCRBY")?;
            let first = last.saturating_sub(new - 1);
            let unlisted = staged.iter_mut().filter(|s| s.changed && s.seq.is_none());
            for (seq, stage) in (first..).zip(unlisted) {
                stage.seq = Some(seq);
                stage.first_recorded = true;
            }
        }
        let mut tx = vec![cmd("MULTI")];
        for write in writes {
            let log = &keys[index[write.key]].log;
            for record in write.records {
                tx.push(xadd(log, record)?);
            }
        }
        for ((key, k), stage) in sessions.iter().zip(keys).zip(&staged) {
            let (true, Some(seq), Some(meta)) = (stage.changed, stage.seq, stage.meta.as_ref())
            else {
                continue;
            };
            let bytes = encode_meta(seq, meta, &stage.holes)?;
            tx.push(cmd("SET").arg(&k.meta).arg(bytes).clone());
            if stage.first_recorded {
                tx.push(
                    cmd("ZADD")
                        .arg(listing_key(&self.options.prefix, key.tenant()))
                        .arg("NX")
                        .arg(seq)
                        .arg(key.session())
                        .clone(),
                );
            }
        }
        // The index's writes, planned with reads under the same WATCH.
        let mut staged_index = index::Staged::new(slot, &self.options.prefix, known_index);
        crate::dag::index_appended(&mut staged_index, writes)?;
        tx.extend(staged_index.commands());
        tx.push(cmd("EXEC"));
        Ok(Some(tx))
    }

    /// One attempt of [`DurableLog::archive_before`]; `None` if a watched
    /// key changed. Leaves nothing watched.
    fn try_archive(
        &self,
        slot: &mut Option<Connection>,
        reused: bool,
        key: &SessionKey,
        watermark: u64,
    ) -> Result<Option<u64>, LogError> {
        let keys = SessionKeys::new(&self.options.prefix, key);
        let replies = self.first_trip(
            slot,
            reused,
            &[
                cmd("WATCH").arg(&keys.meta).clone(),
                cmd("GET").arg(&keys.meta).clone(),
            ],
        )?;
        match stage_archive(key, &keys, watermark, replies) {
            Ok(Some((tx, events))) => Ok(exec(slot, &tx, "archive")?.then_some(events)),
            Ok(None) => {
                unwatch(slot);
                Ok(Some(0))
            }
            Err(e) => {
                unwatch(slot);
                Err(e)
            }
        }
    }
}

/// What an append's first round trip read.
struct FirstTrip {
    /// `WATCH`'s reply, then each session's meta.
    replies: Vec<Value>,
    /// The causal index's state.
    index_state: Option<Vec<u8>>,
}

/// Plans an archive from the meta read under `WATCH`: its transaction and
/// the events it archives, or `None` if there is nothing to archive.
fn stage_archive(
    key: &SessionKey,
    keys: &SessionKeys,
    watermark: u64,
    replies: Vec<Value>,
) -> Result<Option<([Cmd; 4], u64)>, LogError> {
    let mut replies = replies.into_iter();
    ok_reply(replies.next().unwrap_or(Value::Nil), "WATCH")?;
    let Some((seq, mut meta, mut holes)) = decode_meta(key, replies.next().unwrap_or(Value::Nil))?
    else {
        return Ok(None);
    };
    let watermark = watermark.min(meta.durable_tail);
    if watermark <= meta.archived_through {
        return Ok(None);
    }
    let (min_id, events) = plan_archive(key, &meta, &holes, watermark)?;
    meta.event_count = meta.event_count.checked_sub(events).ok_or_else(|| {
        LogError::Corrupt(format!(
            "{key}: the meta counts {} events, but {events} are archived",
            meta.event_count
        ))
    })?;
    meta.archived_through = watermark;
    holes.retain(|&(position, count)| position + (count - 1) > watermark);
    let tx = [
        cmd("MULTI"),
        cmd("XTRIM")
            .arg(&keys.log)
            .arg("MINID")
            .arg("=")
            .arg(format!("{min_id}-0"))
            .clone(),
        cmd("SET")
            .arg(&keys.meta)
            .arg(encode_meta(seq, &meta, &holes)?)
            .clone(),
        cmd("EXEC"),
    ];
    Ok(Some((tx, events)))
}

impl LogWatch for RedisLog {
    fn wait_any(
        &self,
        interest: &[(SessionKey, u64)],
        timeout: Duration,
    ) -> Result<Vec<usize>, LogError> {
        self.wait_on_streams(interest, timeout)
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
        if writes.is_empty() {
            return Ok(());
        }
        self.check_sizes(writes)?;
        let (mut slot, reused) = self.connection()?;
        for attempt in 0..MAX_ATTEMPTS {
            if self.try_append(&mut slot, reused && attempt == 0, writes)? {
                return Ok(());
            }
        }
        Err(contended("append"))
    }

    fn load_after(
        &self,
        key: &SessionKey,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        // `after` may come from a client's cursor: at u64::MAX there is
        // nothing after it, rather than an overflow.
        let Some(first) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let keys = SessionKeys::new(&self.options.prefix, key);
        let count = u64::try_from(limit)
            .unwrap_or(u64::MAX)
            .min(i64::MAX as u64);
        let tx = [
            cmd("MULTI"),
            cmd("GET").arg(&keys.meta).clone(),
            cmd("XREVRANGE")
                .arg(&keys.log)
                .arg(format!("({first}-0"))
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .clone(),
            cmd("XRANGE")
                .arg(&keys.log)
                .arg(format!("{first}-0"))
                .arg("+")
                .arg("COUNT")
                .arg(count)
                .clone(),
            cmd("EXEC"),
        ];
        let (mut slot, reused) = self.connection()?;
        let replies = self.first_trip(&mut slot, reused, &tx)?;
        drop(slot);
        let [get, before, from] = exec_replies::<3>(replies, "load_after")?;
        let Some((_, meta, _)) = decode_meta(key, get)? else {
            return Ok(Vec::new());
        };
        let Some(from_position) = after.max(meta.archived_through).checked_add(1) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        // The record just before `after + 1` covers it if it is a hole
        // reaching it.
        for entry in entries(before, "XREVRANGE")? {
            let record = decode_entry(key, entry)?;
            if record.last_position() >= from_position {
                out.push(record);
            }
        }
        for entry in entries(from, "XRANGE")? {
            if out.len() == limit {
                break;
            }
            let record = decode_entry(key, entry)?;
            // Entries wholly archived are trimmed; skip any left over.
            if record.last_position() < from_position {
                continue;
            }
            if let Some(last) = out.last() {
                if record.position != last.last_position() + 1 {
                    return Err(LogError::Corrupt(format!(
                        "{key}: the record at {} follows one ending at {}",
                        record.position,
                        last.last_position()
                    )));
                }
            }
            out.push(record);
        }
        if let Some(last) = out.last() {
            if last.last_position() > meta.durable_tail {
                return Err(LogError::Corrupt(format!(
                    "{key}: a record ends at {} beyond the tail {}",
                    last.last_position(),
                    meta.durable_tail
                )));
            }
        }
        Ok(out)
    }

    fn meta(&self, key: &SessionKey) -> Result<Option<SessionMeta>, LogError> {
        let keys = SessionKeys::new(&self.options.prefix, key);
        let (mut slot, reused) = self.connection()?;
        let replies = self.first_trip(&mut slot, reused, &[cmd("GET").arg(&keys.meta).clone()])?;
        drop(slot);
        Ok(decode_meta(key, one(replies, "GET")?)?.map(|(_, meta, _)| meta))
    }

    fn archive_before(&self, key: &SessionKey, watermark: u64) -> Result<u64, LogError> {
        let (mut slot, reused) = self.connection()?;
        for attempt in 0..MAX_ATTEMPTS {
            if let Some(archived) =
                self.try_archive(&mut slot, reused && attempt == 0, key, watermark)?
            {
                return Ok(archived);
            }
        }
        Err(contended("archive"))
    }

    fn sessions(
        &self,
        tenant: &str,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<SessionKey>, LogError> {
        let max = i64::MAX as u64;
        let offset = u64::try_from(offset).unwrap_or(u64::MAX);
        if limit == 0 || offset > max {
            return Ok(Vec::new());
        }
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        let stop = offset.saturating_add(limit - 1).min(max);
        let (mut slot, reused) = self.connection()?;
        let replies = self.first_trip(
            &mut slot,
            reused,
            &[cmd("ZREVRANGE")
                .arg(listing_key(&self.options.prefix, tenant))
                .arg(offset)
                .arg(stop)
                .clone()],
        )?;
        drop(slot);
        let members = match one(replies, "ZREVRANGE")? {
            Value::Array(members) => members,
            Value::ServerError(e) => return Err(server_error(e)),
            other => return Err(unexpected("ZREVRANGE", &other)),
        };
        members
            .into_iter()
            .map(|member| {
                let Value::BulkString(bytes) = member else {
                    return Err(unexpected("ZREVRANGE", &member));
                };
                let session = String::from_utf8(bytes).map_err(|e| {
                    LogError::Corrupt(format!(
                        "a listed session of tenant {tenant:?} is not UTF-8: {e}"
                    ))
                })?;
                SessionKey::new(tenant, &session).map_err(|e| {
                    LogError::Corrupt(format!(
                        "listed session {session:?} of tenant {tenant:?} is not a valid key: {e}"
                    ))
                })
            })
            .collect()
    }
}

/// One session's state while an append is validated.
struct Staged {
    /// Its creation number; `None` until it is first recorded.
    seq: Option<u64>,
    /// `None` if the log does not know it (yet).
    meta: Option<SessionMeta>,
    /// Holes not wholly archived: `(position, count)`.
    holes: Vec<(u64, u64)>,
    /// Whether this call changes its meta.
    changed: bool,
    /// Whether this call records it first (and lists it).
    first_recorded: bool,
}

/// The keys of one session.
struct SessionKeys {
    log: String,
    meta: String,
}

impl SessionKeys {
    fn new(prefix: &str, key: &SessionKey) -> Self {
        let tag = format!(
            "{{{}:{}}}",
            utf8_percent_encode(key.tenant(), ID_ESCAPES),
            utf8_percent_encode(key.session(), ID_ESCAPES)
        );
        Self {
            log: format!("{prefix}:{tag}:log"),
            meta: format!("{prefix}:{tag}:meta"),
        }
    }
}

fn listing_key(prefix: &str, tenant: &str) -> String {
    format!(
        "{prefix}:tenant:{{{}}}:sessions",
        utf8_percent_encode(tenant, ID_ESCAPES)
    )
}

/// Where to trim and how many events that removes: `(min id, events)`.
/// Entries cover `first kept ..= tail` contiguously; the entries below the
/// min id cover `first kept .. min id`, each event one position, each hole
/// its count.
fn plan_archive(
    key: &SessionKey,
    meta: &SessionMeta,
    holes: &[(u64, u64)],
    watermark: u64,
) -> Result<(u64, u64), LogError> {
    let straddling = |at: u64| {
        holes
            .iter()
            .find(|&&(position, count)| position <= at && position + (count - 1) > at)
            .map(|&(position, _)| position)
    };
    let after = |at: u64| {
        at.checked_add(1).ok_or_else(|| {
            LogError::Corrupt(format!("{key}: the meta's tail is the last position"))
        })
    };
    let first_kept = match straddling(meta.archived_through) {
        Some(position) => position,
        None => after(meta.archived_through)?,
    };
    let min_id = match straddling(watermark) {
        Some(position) => position,
        None => after(watermark)?,
    };
    let positions = min_id.saturating_sub(first_kept);
    let hole_positions: u64 = holes
        .iter()
        .filter(|&&(position, _)| position >= first_kept && position < min_id)
        .map(|&(_, count)| count)
        .sum();
    let events = positions.checked_sub(hole_positions).ok_or_else(|| {
        LogError::Corrupt(format!(
            "{key}: the meta's holes cover more than positions {first_kept}..{min_id}"
        ))
    })?;
    Ok((min_id, events))
}

// ---- talking to the server ----------------------------------------------

fn cmd(name: &str) -> Cmd {
    ::redis::cmd(name)
}

/// Sends `cmds` in one write and reads every reply (server errors are
/// `Value::ServerError` items). Any failure drops the connection, so the
/// next call starts on a fresh one.
fn round_trip(slot: &mut Option<Connection>, cmds: &[Cmd]) -> Result<Vec<Value>, LogError> {
    let Some(con) = slot.as_mut() else {
        return Err(LogError::Backend("not connected to Redis".into()));
    };
    let mut packed = Vec::new();
    for command in cmds {
        command.write_packed_command(&mut packed);
    }
    match con.req_packed_commands(&packed, 0, cmds.len()) {
        Ok(replies) if replies.len() == cmds.len() => Ok(replies),
        Ok(replies) => {
            *slot = None;
            Err(LogError::Backend(
                format!(
                    "Redis sent {} replies to {} commands",
                    replies.len(),
                    cmds.len()
                )
                .into(),
            ))
        }
        Err(e) => {
            *slot = None;
            Err(backend(e))
        }
    }
}

impl RedisLog {
    /// Refuses, by name, a record whose payload or links the server would
    /// not take (its bulk limit): Redis closes the connection on such a
    /// command, which would fail every session of the commit.
    fn check_sizes(&self, writes: &[SessionWrite<'_>]) -> Result<(), LogError> {
        for write in writes {
            for record in write.records {
                let RecordBody::Event(event) = &record.body else {
                    continue;
                };
                // Links are bounded far below any bulk limit by their check
                // at append (`Links::check_for`); the payload is not.
                if event.payload.len() > self.bulk_limit {
                    return Err(LogError::InvalidRecord {
                        key: write.key.clone(),
                        position: record.position,
                        what: "the payload is larger than the Redis server's bulk limit (proto-max-bulk-len)",
                    });
                }
            }
        }
        Ok(())
    }
}

/// The server's `proto-max-bulk-len`, if `CONFIG GET` is allowed.
fn server_bulk_limit(slot: &mut Option<Connection>) -> Option<usize> {
    let reply = round_trip(
        slot,
        &[cmd("CONFIG").arg("GET").arg("proto-max-bulk-len").clone()],
    )
    .ok()?;
    let values: Vec<Value> = match reply.into_iter().next()? {
        Value::Array(values) => values,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => return None,
    };
    let value = bulk(values.into_iter().nth(1)?, "CONFIG GET").ok()??;
    std::str::from_utf8(&value).ok()?.parse().ok()
}

/// Forgets a `WATCH` after a refused or failed write, so that the next
/// transaction on the connection is not aborted by it. If that fails too,
/// the connection is dropped (which forgets it as well).
fn unwatch(slot: &mut Option<Connection>) {
    if round_trip(slot, &[cmd("UNWATCH")]).is_err() {
        *slot = None;
    }
}

/// Runs a `MULTI` … `EXEC` pipeline: `Ok(true)` if it ran, `Ok(false)` if a
/// watched key changed (nothing ran).
fn exec(slot: &mut Option<Connection>, tx: &[Cmd], what: &str) -> Result<bool, LogError> {
    let replies = round_trip(slot, tx)?;
    match replies.last() {
        Some(Value::Nil) => {
            check_queued(&replies, what)?;
            Ok(false)
        }
        _ => {
            let n = tx.len() - 2;
            let results = exec_results(replies, n, what)?;
            for result in results {
                if let Value::ServerError(e) = result {
                    // Redis does not roll back a command that failed while
                    // the transaction ran (it never fails when the stream
                    // and meta agree): the keys disagree.
                    return Err(LogError::Corrupt(format!(
                        "{what}: a command failed inside the transaction, which Redis does not roll back: {}",
                        RedisErrorText(&e)
                    )));
                }
            }
            Ok(true)
        }
    }
}

/// Checks the `OK`/`QUEUED` replies before an `EXEC`.
fn check_queued(replies: &[Value], what: &str) -> Result<(), LogError> {
    for reply in &replies[..replies.len().saturating_sub(1)] {
        match reply {
            Value::Okay => {}
            Value::SimpleString(s) if s == "QUEUED" || s == "OK" => {}
            Value::ServerError(e) => return Err(server_error(e.clone())),
            other => return Err(unexpected(what, other)),
        }
    }
    Ok(())
}

/// The results of a `MULTI` … `EXEC` of `n` commands.
fn exec_results(replies: Vec<Value>, n: usize, what: &str) -> Result<Vec<Value>, LogError> {
    check_queued(&replies, what)?;
    match replies.into_iter().last() {
        Some(Value::Array(results)) if results.len() == n => Ok(results),
        Some(Value::ServerError(e)) => Err(server_error(e)),
        Some(Value::Nil) => Err(LogError::Backend(
            format!("{what}: the transaction was aborted").into(),
        )),
        Some(other) => Err(unexpected(what, &other)),
        None => Err(LogError::Backend(format!("{what}: no reply").into())),
    }
}

/// The `N` results of a read-only `MULTI` … `EXEC`, each checked for a
/// server error.
fn exec_replies<const N: usize>(replies: Vec<Value>, what: &str) -> Result<[Value; N], LogError> {
    let results = exec_results(replies, N, what)?;
    for result in &results {
        if let Value::ServerError(e) = result {
            return Err(server_error(e.clone()));
        }
    }
    results
        .try_into()
        .map_err(|_| LogError::Backend(format!("{what}: wrong number of results").into()))
}

fn one(replies: Vec<Value>, what: &str) -> Result<Value, LogError> {
    replies
        .into_iter()
        .next()
        .ok_or_else(|| LogError::Backend(format!("no reply to {what}").into()))
}

fn ok_reply(reply: Value, what: &str) -> Result<(), LogError> {
    match reply {
        Value::Okay => Ok(()),
        Value::SimpleString(s) if s == "OK" => Ok(()),
        Value::ServerError(e) => Err(server_error(e)),
        other => Err(unexpected(what, &other)),
    }
}

fn bulk(reply: Value, what: &str) -> Result<Option<Vec<u8>>, LogError> {
    match reply {
        Value::Nil => Ok(None),
        Value::BulkString(bytes) => Ok(Some(bytes)),
        Value::VerbatimString { text, .. } => Ok(Some(text.into_bytes())),
        Value::ServerError(e) => Err(server_error(e)),
        other => Err(unexpected(what, &other)),
    }
}

fn int(reply: Value, what: &str) -> Result<u64, LogError> {
    match reply {
        Value::Int(n) if n > 0 => Ok(n as u64),
        Value::ServerError(e) => Err(server_error(e)),
        other => Err(unexpected(what, &other)),
    }
}

/// The entries of an `XRANGE`/`XREVRANGE` reply.
fn entries(reply: Value, what: &str) -> Result<Vec<Value>, LogError> {
    match reply {
        Value::Array(entries) => Ok(entries),
        Value::Nil => Ok(Vec::new()),
        Value::ServerError(e) => Err(server_error(e)),
        other => Err(unexpected(what, &other)),
    }
}

/// A connection failure, timeout or client-side error.
fn backend(error: ::redis::RedisError) -> LogError {
    LogError::Backend(Box::new(error))
}

/// An error reply. `WRONGTYPE` means one of the log's keys holds something
/// the log did not write: corrupt. Anything else (`LOADING` after a
/// restart, `OOM`, `READONLY`, …) may pass: backend.
fn server_error(error: ServerError) -> LogError {
    if error.code() == "WRONGTYPE" {
        LogError::Corrupt(format!(
            "a key of the log holds another type: {}",
            RedisErrorText(&error)
        ))
    } else {
        LogError::Backend(Box::new(::redis::RedisError::from(error)))
    }
}

struct RedisErrorText<'a>(&'a ServerError);

impl fmt::Display for RedisErrorText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.details() {
            Some(details) => write!(f, "{} {details}", self.0.code()),
            None => f.write_str(self.0.code()),
        }
    }
}

fn unexpected(what: &str, reply: &Value) -> LogError {
    // Only the shape: a reply may hold a megabyte of payload.
    let shape = match reply {
        Value::Nil => "nil",
        Value::Int(_) => "an integer",
        Value::BulkString(_) => "a string",
        Value::Array(_) => "an array",
        Value::SimpleString(_) | Value::Okay => "a status",
        Value::Map(_) => "a map",
        _ => "another type",
    };
    LogError::Backend(format!("unexpected reply to {what}: {shape}").into())
}

fn contended(what: &str) -> LogError {
    LogError::Backend(
        format!(
            "{what}: the session's meta changed under {MAX_ATTEMPTS} attempts in a row \
             (another writer on the same sessions)"
        )
        .into(),
    )
}

/// Whether a call failed by waiting too long (a slow or frozen server: a
/// fresh connection would wait as long), rather than on a broken one.
fn is_timeout(error: &LogError) -> bool {
    match error {
        LogError::Backend(source) => source
            .downcast_ref::<::redis::RedisError>()
            .is_some_and(::redis::RedisError::is_timeout),
        _ => false,
    }
}

fn nonzero(duration: Duration) -> Option<Duration> {
    (!duration.is_zero()).then_some(duration)
}

/// Refuses servers older than 6.2 (no `XTRIM MINID`, no exclusive ranges).
/// A server that does not say its version is given the benefit of the doubt.
fn check_version(info: &str) -> Result<(), LogError> {
    let Some(version) = info
        .lines()
        .find_map(|line| line.trim().strip_prefix("redis_version:"))
    else {
        return Ok(());
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (6, 2) {
        return Err(LogError::Backend(
            format!("Redis {version} is too old: the Redis log needs 6.2 or later").into(),
        ));
    }
    Ok(())
}

// ---- stored forms -------------------------------------------------------
//
// Private mirrors of the public types, so that the stored format is spelled
// out here and does not change when a public type gains a field.

#[derive(Serialize, Deserialize)]
struct MetaV1 {
    seq: u64,
    durable_tail: u64,
    archived_through: u64,
    last_revision: u64,
    event_count: u64,
    /// `(incarnation, first position)`.
    lives: Vec<(u64, u64)>,
    /// `(position, count)` of every hole not wholly archived, ascending.
    holes: Vec<(u64, u64)>,
}

fn encode_meta(seq: u64, meta: &SessionMeta, holes: &[(u64, u64)]) -> Result<Vec<u8>, LogError> {
    let stored = MetaV1 {
        seq,
        durable_tail: meta.durable_tail,
        archived_through: meta.archived_through,
        last_revision: meta.last_revision,
        event_count: meta.event_count,
        lives: meta
            .lives
            .iter()
            .map(|life| (life.incarnation.get(), life.first_position))
            .collect(),
        holes: holes.to_vec(),
    };
    postcard::to_extend(&stored, vec![FORMAT]).map_err(|e| LogError::Backend(Box::new(e)))
}

/// A session's creation number, meta and unarchived holes, from a `GET`
/// reply; `None` if the key does not exist.
#[allow(clippy::type_complexity)]
fn decode_meta(
    key: &SessionKey,
    reply: Value,
) -> Result<Option<(u64, SessionMeta, Vec<(u64, u64)>)>, LogError> {
    let Some(bytes) = bulk(reply, "GET")? else {
        return Ok(None);
    };
    let bad = |what: String| LogError::Corrupt(format!("{key}, meta: {what}"));
    let Some((&format, rest)) = bytes.split_first() else {
        return Err(bad("empty".into()));
    };
    if format != FORMAT {
        return Err(bad(format!(
            "format {format}; this version reads format {FORMAT}"
        )));
    }
    let (stored, trailing): (MetaV1, _) =
        postcard::take_from_bytes(rest).map_err(|e| bad(e.to_string()))?;
    if !trailing.is_empty() {
        return Err(bad("trailing bytes".into()));
    }
    if stored.archived_through > stored.durable_tail {
        return Err(bad(format!(
            "archived through {} beyond the tail {}",
            stored.archived_through, stored.durable_tail
        )));
    }
    let lives = stored
        .lives
        .iter()
        .map(|&(incarnation, first_position)| {
            Incarnation::from_raw(incarnation)
                .map(|incarnation| Life {
                    incarnation,
                    first_position,
                })
                .ok_or_else(|| bad("a life has incarnation 0".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut previous_end = 0u64;
    for &(position, count) in &stored.holes {
        let end = position.checked_add(count.wrapping_sub(1));
        match end {
            Some(end)
                if count > 0
                    && position > previous_end
                    && end <= stored.durable_tail
                    && end > stored.archived_through =>
            {
                previous_end = end;
            }
            _ => return Err(bad(format!("a bad hole ({position}, {count})"))),
        }
    }
    Ok(Some((
        stored.seq,
        SessionMeta {
            durable_tail: stored.durable_tail,
            archived_through: stored.archived_through,
            last_revision: stored.last_revision,
            lives,
            event_count: stored.event_count,
        },
        stored.holes,
    )))
}

/// An `XADD` of one record at the id of its position.
fn xadd(log: &str, record: &LogRecord) -> Result<Cmd, LogError> {
    let mut c = cmd("XADD");
    c.arg(log)
        .arg(format!("{}-0", record.position))
        .arg("i")
        .arg(record.incarnation.get());
    match &record.body {
        RecordBody::Event(event) => {
            c.arg("r")
                .arg(event.revision)
                .arg("t")
                .arg(event.timestamp_nanos);
            if let Some(links) = LinksV1::of(&event.links) {
                let bytes =
                    postcard::to_stdvec(&links).map_err(|e| LogError::Backend(Box::new(e)))?;
                c.arg("l").arg(bytes);
            }
            c.arg("d").arg(event.payload.as_slice());
        }
        RecordBody::Hole { count, reason } => {
            c.arg("n").arg(*count).arg("w").arg(reason.to_tag());
        }
    }
    Ok(c)
}

/// Decimal digits only (no sign, no spaces), as this module writes them.
fn parse_u64(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// One stream entry (`[id, [field, value, …]]`) as a record, checked.
fn decode_entry(key: &SessionKey, entry: Value) -> Result<LogRecord, LogError> {
    let bad = |what: String| LogError::Corrupt(format!("{key}, stream entry: {what}"));
    let Value::Array(parts) = entry else {
        return Err(bad("not an [id, fields] pair".into()));
    };
    let mut parts = parts.into_iter();
    let (Some(Value::BulkString(id)), Some(fields), None) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("not an [id, fields] pair".into()));
    };
    let position = match id.iter().position(|&b| b == b'-') {
        Some(dash) if &id[dash + 1..] == b"0" => parse_u64(&id[..dash]),
        _ => None,
    }
    .filter(|&p| p > 0)
    .ok_or_else(|| {
        bad(format!(
            "id {:?} is not <position>-0",
            String::from_utf8_lossy(&id)
        ))
    })?;
    let bad = |what: String| {
        LogError::Corrupt(format!(
            "{key}, stream entry at position {position}: {what}"
        ))
    };
    let fields = match fields {
        Value::Array(fields) if fields.len() % 2 == 0 => fields,
        _ => return Err(bad("fields are not name/value pairs".into())),
    };
    let mut values: [Option<Vec<u8>>; 8] = Default::default();
    const NAMES: [&[u8]; 8] = [b"i", b"r", b"t", b"l", b"d", b"n", b"w", b""];
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        let (Value::BulkString(name), Value::BulkString(value)) = (name, value) else {
            return Err(bad("a field is not a string".into()));
        };
        let Some(slot) = NAMES[..7].iter().position(|n| *n == name.as_slice()) else {
            return Err(bad(format!(
                "unknown field {:?}",
                String::from_utf8_lossy(&name)
            )));
        };
        if values[slot].replace(value).is_some() {
            return Err(bad(format!(
                "field {:?} twice",
                String::from_utf8_lossy(&name)
            )));
        }
    }
    let [i, r, t, l, d, n, w, _] = values;
    let number = |value: Option<Vec<u8>>, name: &str| {
        value
            .as_deref()
            .and_then(parse_u64)
            .ok_or_else(|| bad(format!("field {name} missing or not a number")))
    };
    let incarnation =
        Incarnation::from_raw(number(i, "i")?).ok_or_else(|| bad("incarnation 0".into()))?;
    let body = if n.is_some() {
        if r.is_some() || t.is_some() || l.is_some() || d.is_some() {
            return Err(bad("a hole with event fields".into()));
        }
        let count = number(n, "n")?;
        if count == 0 {
            return Err(bad("a hole of zero positions".into()));
        }
        if position.checked_add(count - 1).is_none() {
            return Err(bad("a hole past the last position".into()));
        }
        let tag = number(w, "w")?;
        let reason = u8::try_from(tag)
            .ok()
            .and_then(HoleReason::from_tag)
            .ok_or_else(|| bad(format!("unknown hole reason {tag}")))?;
        RecordBody::Hole { count, reason }
    } else {
        if w.is_some() {
            return Err(bad("an event with a hole reason".into()));
        }
        let links = match l {
            None => Links::default(),
            Some(bytes) => {
                let (links, rest): (LinksV1<'_>, _) =
                    postcard::take_from_bytes(&bytes).map_err(|e| bad(format!("links: {e}")))?;
                if !rest.is_empty() {
                    return Err(bad("trailing bytes after the links".into()));
                }
                links
                    .into_links(key.tenant())
                    .ok_or_else(|| bad("the links' parent is not a valid session id".into()))?
            }
        };
        RecordBody::Event(StoredEvent {
            revision: number(r, "r")?,
            timestamp_nanos: number(t, "t")?,
            links,
            payload: d.ok_or_else(|| bad("an event without a payload field".into()))?,
        })
    };
    Ok(LogRecord {
        position,
        incarnation,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_never_collide() {
        let pairs = [
            ("ab", "c"),
            ("a", "bc"),
            ("", "abc"),
            ("a:b", "c"),
            ("a", "b:c"),
            ("a{b", "c}"),
            ("a}", "{b"),
            ("a%3A", "b"),
            ("ü", "s"),
        ];
        let mut seen = std::collections::HashSet::new();
        for (tenant, session) in pairs {
            let key = SessionKey::new(tenant, session).expect("key");
            let keys = SessionKeys::new("lr", &key);
            assert!(seen.insert(keys.log.clone()), "{tenant:?}/{session:?}");
            assert!(seen.insert(keys.meta.clone()));
            // Exactly one hash tag, holding no brace.
            let tag = &keys.log[keys.log.find('{').unwrap() + 1..keys.log.find('}').unwrap()];
            assert!(!tag.is_empty() && !tag.contains(['{', '}']));
            assert_eq!(keys.log.matches('{').count(), 1);
        }
        assert_ne!(listing_key("lr", "a"), listing_key("lr", "a:b"));
    }

    #[test]
    fn version_check() {
        assert!(check_version("# Server\r\nredis_version:7.0.15\r\n").is_ok());
        assert!(check_version("redis_version:6.2.0").is_ok());
        assert!(check_version("redis_version:6.0.9").is_err());
        assert!(check_version("nothing here").is_ok());
    }

    #[test]
    fn malformed_entries_are_corrupt_not_panics() {
        let key = SessionKey::new("t", "s").expect("key");
        let s = |b: &[u8]| Value::BulkString(b.to_vec());
        let entry = |id: &[u8], fields: Vec<Value>| Value::Array(vec![s(id), Value::Array(fields)]);
        let good = entry(
            b"3-0",
            vec![s(b"i"), s(b"1"), s(b"n"), s(b"2"), s(b"w"), s(b"1")],
        );
        assert!(decode_entry(&key, good).is_ok());
        let cases = [
            entry(
                b"3-1",
                vec![s(b"i"), s(b"1"), s(b"n"), s(b"2"), s(b"w"), s(b"1")],
            ),
            entry(
                b"0-0",
                vec![s(b"i"), s(b"1"), s(b"n"), s(b"2"), s(b"w"), s(b"1")],
            ),
            entry(b"x-0", vec![]),
            entry(
                b"3-0",
                vec![s(b"i"), s(b"0"), s(b"n"), s(b"2"), s(b"w"), s(b"1")],
            ),
            entry(
                b"3-0",
                vec![s(b"i"), s(b"1"), s(b"n"), s(b"0"), s(b"w"), s(b"1")],
            ),
            entry(
                b"3-0",
                vec![s(b"i"), s(b"1"), s(b"n"), s(b"2"), s(b"w"), s(b"9")],
            ),
            entry(b"3-0", vec![s(b"i"), s(b"1"), s(b"n"), s(b"2")]),
            entry(
                b"3-0",
                vec![s(b"i"), s(b"1"), s(b"r"), s(b"1"), s(b"t"), s(b"1")],
            ),
            entry(
                b"3-0",
                vec![
                    s(b"i"),
                    s(b"1"),
                    s(b"r"),
                    s(b"1"),
                    s(b"t"),
                    s(b"1"),
                    s(b"d"),
                    s(b""),
                    s(b"l"),
                    s(b"\xff\xff"),
                ],
            ),
            entry(
                b"3-0",
                vec![
                    s(b"i"),
                    s(b"+1"),
                    s(b"r"),
                    s(b"1"),
                    s(b"t"),
                    s(b"1"),
                    s(b"d"),
                    s(b""),
                ],
            ),
            entry(b"3-0", vec![s(b"i"), s(b"1"), s(b"i"), s(b"1")]),
            entry(b"3-0", vec![s(b"q"), s(b"1")]),
            entry(b"3-0", vec![s(b"i")]),
            entry(
                b"18446744073709551615-0",
                vec![s(b"i"), s(b"1"), s(b"n"), s(b"2"), s(b"w"), s(b"1")],
            ),
            Value::Int(3),
            Value::Array(vec![s(b"3-0")]),
        ];
        for case in cases {
            let debug = format!("{case:?}");
            assert!(
                matches!(decode_entry(&key, case), Err(LogError::Corrupt(_))),
                "{debug}"
            );
        }
    }

    #[test]
    fn malformed_meta_is_corrupt_not_a_panic() {
        let key = SessionKey::new("t", "s").expect("key");
        let meta = SessionMeta {
            durable_tail: 9,
            archived_through: 2,
            last_revision: 4,
            lives: vec![Life {
                incarnation: Incarnation::from_raw(7).expect("non-zero"),
                first_position: 1,
            }],
            event_count: 3,
        };
        let bytes = encode_meta(5, &meta, &[(3, 4)]).expect("encode");
        let decoded = decode_meta(&key, Value::BulkString(bytes.clone())).expect("decode");
        assert_eq!(decoded, Some((5, meta.clone(), vec![(3, 4)])));
        for cut in 0..bytes.len() {
            let result = decode_meta(&key, Value::BulkString(bytes[..cut].to_vec()));
            assert!(matches!(result, Err(LogError::Corrupt(_))), "cut at {cut}");
        }
        let mut other = bytes.clone();
        other[0] = 2;
        assert!(matches!(
            decode_meta(&key, Value::BulkString(other)),
            Err(LogError::Corrupt(_))
        ));
        for holes in [[(3, 0)], [(1, 2)], [(8, 3)], [(u64::MAX, 2)]] {
            let bytes = encode_meta(5, &meta, &holes).expect("encode");
            assert!(
                matches!(
                    decode_meta(&key, Value::BulkString(bytes)),
                    Err(LogError::Corrupt(_))
                ),
                "{holes:?}"
            );
        }
    }
}
