//! [`PostgresLog`]: the durable log on PostgreSQL, shared by every node that
//! opens the same database and schema.
//!
//! It owns one Postgres schema (default `livereplay`): five tables it
//! creates on first open (`schema.rs`), and one notification channel. Nothing
//! else may write them; several `PostgresLog`s (in one process or on many
//! nodes) may share them. Postgres 12 or later is needed (identity columns,
//! `pg_notify` in a transaction); [`PostgresLog::open`] checks.
//!
//! # Tables (schema version 3)
//!
//! | table | one row per | columns |
//! |---|---|---|
//! | `sessions` | session | `id` (identity: creation order), `tenant`, `session`, `durable_tail`, `archived_through`, `last_revision`, `event_count`, `life_incarnations[]`, `life_first_positions[]`, `close_reason`, `close_last` (both NULL while open), `open_turn` (the store whose turn drives it, or NULL) |
//! | `records` | record | `session_id`, `position` (primary key together), `incarnation`, then `revision`, `timestamp_nanos`, `links`, `payload` (an event) or `hole_count`, `hole_reason` (a hole) |
//! | `index_entries` | causal index key | `key bytea` (primary key), `value bytea` |
//! | `stores` | store holding a lease | `id` (primary key), `expires_at` (the server's clock; a row past it counts as none, and goes at the next renewal) |
//! | `schema_version` | — (one row) | `version` |
//!
//! `bigint` is signed: incarnations, revisions and timestamps are stored as
//! the same 64 bits (`u64 as i64`, read back the same way); positions are
//! compared and ranged, so a record whose last position is beyond
//! `i64::MAX` is refused ([`LogError::InvalidRecord`], the store writes a
//! hole), which no session reaches at a billion events a second in 290
//! years. Links are the postcard bytes redb and Redis store (`stored.rs`).
//!
//! # Invariants
//!
//! * The module invariants of [`crate::durable`]. An [`DurableLog::append`]
//!   is one transaction (`commit.rs`): it locks the log's state row (every
//!   writer of the causal index takes it first, so two nodes never index
//!   from one stale read), then the sessions' rows (`FOR UPDATE`, in id
//!   order), validates the whole call with the same code as
//!   [`MemoryLog`](super::MemoryLog) against what it locked, and writes
//!   every record (a multi-row `INSERT … SELECT FROM unnest(…)`), every
//!   meta (`UPDATE … FROM unnest(…)`) and one `pg_notify` per changed
//!   session in one statement, then the causal index, then commits. A refusal
//!   ([`LogError::NotContiguous`], [`LogError::BadLife`]) rolls back and
//!   changes nothing, the same typed error the other backends give (the
//!   persister's fencing reads it). `(session_id, position)` is the primary
//!   key, so even a writer that skipped the lock could not put two records
//!   at one position.
//! * A session's records and its row change only together, in one
//!   transaction, so the row's tail and event count describe the records:
//!   they cover `first kept ..= durable_tail` contiguously, where the first
//!   kept is `archived_through + 1` or the hole straddling it.
//! * Rows read back are never trusted: a record that is neither an event
//!   nor a hole, incarnation 0, an unknown hole reason, records that are not
//!   contiguous, or a row whose tail is below its archive is
//!   [`LogError::Corrupt`], never a panic. A failed connection, or any
//!   other server error, is [`LogError::Backend`]: the persister retries.
//!
//! # Connections and failures
//!
//! One connection, behind a mutex, carries every call but the watch
//! (`watch.rs`: each waiting thread takes a listening connection of its own,
//! kept idle between waits). A broken connection is dropped and the next
//! call opens a fresh one; a call that fails on a connection an earlier
//! call opened, before it asked for a commit, is tried once more on a fresh
//! one, so a restarted server is served from the first call after it is
//! back. A serialization failure or deadlock (another writer) starts the
//! transaction over, at most 16 times.
//!
//! A commit whose reply is lost (the connection broke during `COMMIT`)
//! fails with [`LogError::Backend`] although it may have been applied; a
//! retry of the same records is then refused as not contiguous, and the
//! persister re-reads the meta to learn which (as with Redis).
//!
//! The sync client drives each call on a small tokio runtime of its own,
//! and tokio panics when a runtime is started inside another: every call
//! (and the connections' drop, which says goodbye to the server) made on a
//! thread inside a tokio runtime (an async host, such as an axum handler
//! polling a catch-up) runs on a scoped thread of its own instead
//! ([`off_runtime`]); elsewhere (the persister's thread) it runs in place.
//!
//! The sync client has no per-call I/O timeout: a call on a server that is
//! frozen (SIGSTOP, a hung host) waits until it answers, or until TCP
//! keepalive (on, [`PostgresOptions::keepalive_idle`]) gives up on a host
//! that vanished. The store's appends never wait for the log, so a frozen
//! server costs the ring's window (then one hole), not the application.
//!
//! # Durability
//!
//! A call returns when Postgres has committed it: with the server's
//! defaults (`fsync = on`, `synchronous_commit = on`) the commit's WAL is on
//! disk, so a killed server loses nothing it acknowledged.

use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ::postgres::error::SqlState;
use ::postgres::{Client, Config, NoTls};

mod commit;
mod index;
mod reads;
mod schema;
mod watch;

use super::{DurableLog, LogError, LogRecord, LogWatch, SessionMeta, SessionWrite};
use crate::key::SessionKey;
use schema::Statements;

/// How many times a transaction starts over after a serialization failure
/// or a deadlock (another writer on the same rows).
const MAX_ATTEMPTS: usize = 16;

/// Between two TCP keepalive probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// Unanswered probes before the connection fails.
const KEEPALIVE_RETRIES: u32 = 3;

/// How to open a [`PostgresLog`].
///
/// ```
/// use livereplay::durable::PostgresOptions;
///
/// let options = PostgresOptions {
///     schema: "chat_prod".into(),
///     ..PostgresOptions::default()
/// };
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// The schema that holds the log's tables (default `livereplay`),
    /// created if missing. Logs sharing a database need different schemas.
    /// Lowercase ASCII letters, digits and `_`, starting with a letter or
    /// `_`, at most 48 bytes (it also names the notification channel).
    pub schema: String,
    /// The longest wait for a connection (default 2 s). Zero means none.
    pub connect_timeout: Duration,
    /// Idle time before TCP keepalive probes a connection (default 10 s):
    /// how a server whose host vanished is noticed. Probes follow every 2 s;
    /// after 3 unanswered, or when sent data stays unacknowledged for this
    /// time plus 6 s (`TCP_USER_TIMEOUT`), the connection fails and the
    /// call returns [`LogError::Backend`].
    pub keepalive_idle: Duration,
    /// The longest a watch waits between two looks at the sessions' rows
    /// even when no notification came (default 1 s): a notification sent
    /// while a listening connection was being re-established is not lost
    /// for longer than that.
    pub watch_safety_timeout: Duration,
    /// The largest payload one record may carry (default 512 MiB; a
    /// `bytea` holds at most 1 GiB, and a statement's message as much). A
    /// larger one is refused by name ([`LogError::InvalidRecord`]) and the
    /// store writes it as a hole, rather than the commit failing for every
    /// session batched with it.
    pub max_record_bytes: usize,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            schema: "livereplay".into(),
            connect_timeout: Duration::from_secs(2),
            keepalive_idle: Duration::from_secs(10),
            watch_safety_timeout: Duration::from_secs(1),
            max_record_bytes: 512 << 20,
        }
    }
}

/// A [`DurableLog`] on PostgreSQL: rows in one schema, shared by every node
/// that opens the same database and schema.
///
/// ```no_run
/// use livereplay::durable::{DurableLog, PostgresLog};
/// use livereplay::SessionKey;
///
/// let log = PostgresLog::open("host=127.0.0.1 port=5432 user=postgres dbname=postgres")?;
/// assert!(log.meta(&SessionKey::new("t", "s")?)?.is_none());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PostgresLog {
    config: Config,
    options: PostgresOptions,
    /// The connection every trait call uses; `None` after a failure, until
    /// the next call connects again.
    conn: Mutex<Option<Conn>>,
    /// Idle listening connections for [`LogWatch::wait_any`].
    listeners: Mutex<Vec<watch::Listener>>,
}

impl fmt::Debug for PostgresLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the config: it may hold a password.
        f.debug_struct("PostgresLog")
            .field("schema", &self.options.schema)
            .finish_non_exhaustive()
    }
}

/// One connection and the statements prepared on it.
pub(super) struct Conn {
    client: Client,
    statements: Statements,
    /// Set when a transaction could not be rolled back: the connection may
    /// still be inside it, so it is dropped rather than used again.
    broken: bool,
}

impl PostgresLog {
    /// Connects with the default [`PostgresOptions`]. `params` is a libpq
    /// connection string (`host=… port=… user=… dbname=…`) or URL
    /// (`postgresql://user@host:port/db`).
    pub fn open(params: &str) -> Result<Self, LogError> {
        Self::open_with(params, PostgresOptions::default())
    }

    /// Connects, checks the server is Postgres 12 or later, and creates or
    /// migrates the schema's tables (idempotent: several nodes may open a
    /// new schema at once). Fails with [`LogError::Backend`] if the
    /// parameters are malformed, the schema name is not allowed, or the
    /// server cannot be reached, and with [`LogError::Corrupt`] if the
    /// schema was written by a newer version of this crate.
    pub fn open_with(params: &str, options: PostgresOptions) -> Result<Self, LogError> {
        schema::check_name(&options.schema)?;
        let mut config = Config::from_str(params).map_err(backend)?;
        if !options.connect_timeout.is_zero() {
            config.connect_timeout(options.connect_timeout);
        }
        config
            .keepalives(true)
            .keepalives_idle(options.keepalive_idle.max(Duration::from_secs(1)))
            .keepalives_interval(KEEPALIVE_INTERVAL)
            .keepalives_retries(KEEPALIVE_RETRIES)
            .tcp_user_timeout(
                options.keepalive_idle.max(Duration::from_secs(1))
                    + KEEPALIVE_INTERVAL * KEEPALIVE_RETRIES,
            )
            .application_name("livereplay");
        let log = Self {
            config,
            options,
            conn: Mutex::new(None),
            listeners: Mutex::new(Vec::new()),
        };
        let conn = off_runtime(|| {
            let mut client = log.config.connect(NoTls).map_err(backend)?;
            schema::migrate(&mut client, &log.options.schema)?;
            let statements = Statements::prepare(&mut client, &log.options.schema)?;
            Ok(Conn {
                client,
                statements,
                broken: false,
            })
        })?;
        *log.lock_conn() = Some(conn);
        Ok(log)
    }

    /// The schema holding the log's tables.
    pub fn schema(&self) -> &str {
        &self.options.schema
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

    /// The process id of the server backend serving this log's main
    /// connection (connecting if needed): what `pg_terminate_backend` takes.
    pub fn backend_pid(&self) -> Result<i32, LogError> {
        self.run(|conn| {
            let row = conn
                .client
                .query_one("SELECT pg_backend_pid()", &[])
                .map_err(backend)?;
            row.try_get(0).map_err(backend)
        })
    }

    fn connect(&self) -> Result<Conn, LogError> {
        let mut client = self.config.connect(NoTls).map_err(backend)?;
        let statements = Statements::prepare(&mut client, &self.options.schema)?;
        Ok(Conn {
            client,
            statements,
            broken: false,
        })
    }

    fn lock_conn(&self) -> MutexGuard<'_, Option<Conn>> {
        self.conn.lock().unwrap_or_else(|poisoned| {
            // A panic mid-call may have left a transaction open on it.
            let mut slot = poisoned.into_inner();
            *slot = None;
            slot
        })
    }

    /// Runs `call` on the shared connection: again from the start after a
    /// serialization failure or deadlock, and once more on a fresh
    /// connection when one that an earlier call opened turns out broken
    /// before `call` asked for a commit (the server restarted, or cut an
    /// idle connection). A broken connection is dropped either way. Off any
    /// tokio runtime ([`off_runtime`]).
    fn run<R: Send>(
        &self,
        call: impl FnMut(&mut Conn) -> Result<R, LogError> + Send,
    ) -> Result<R, LogError> {
        off_runtime(|| self.run_here(call))
    }

    /// [`PostgresLog::run`] on this thread.
    fn run_here<R>(
        &self,
        mut call: impl FnMut(&mut Conn) -> Result<R, LogError>,
    ) -> Result<R, LogError> {
        let mut slot = self.lock_conn();
        let mut fresh_retry = true;
        let mut attempts = 0;
        loop {
            let reused = slot.is_some();
            let conn = match slot.as_mut() {
                Some(conn) => conn,
                None => slot.insert(self.connect()?),
            };
            let error = match call(conn) {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            attempts += 1;
            if conn.client.is_closed() || conn.broken {
                *slot = None;
                let before_commit =
                    !matches!(&error, LogError::Backend(e) if e.is::<CommitFailed>());
                if reused && fresh_retry && before_commit {
                    fresh_retry = false;
                    continue;
                }
                return Err(error);
            }
            if is_conflict(&error) && attempts < MAX_ATTEMPTS {
                continue;
            }
            return Err(error);
        }
    }
}

impl DurableLog for PostgresLog {
    /// Several nodes write one database: a cursor beyond a live writer's
    /// durable tail may still arrive.
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
        commit::check_records(writes, self.options.max_record_bytes)?;
        self.run(|conn| commit::append(conn, writes))
    }

    fn load_after(
        &self,
        key: &SessionKey,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        // Nothing is stored beyond i64::MAX (see the module docs).
        if limit == 0 || after >= i64::MAX as u64 {
            return Ok(Vec::new());
        }
        self.run(|conn| reads::load_after(conn, key, after, limit))
    }

    fn meta(&self, key: &SessionKey) -> Result<Option<SessionMeta>, LogError> {
        self.run(|conn| reads::meta(conn, key))
    }

    fn archive_before(&self, key: &SessionKey, watermark: u64) -> Result<u64, LogError> {
        let watermark = watermark.min(i64::MAX as u64);
        self.run(|conn| commit::archive(conn, key, watermark))
    }

    fn sessions(
        &self,
        tenant: &str,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<SessionKey>, LogError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.run(|conn| reads::sessions(conn, tenant, limit, offset))
    }

    fn keep_alive(&self, store: u64, lease: Duration) -> Result<(), LogError> {
        self.run(|conn| reads::keep_alive(conn, store, lease))
    }

    fn store_alive(&self, store: u64) -> Result<bool, LogError> {
        self.run(|conn| reads::store_alive(conn, store))
    }
}

impl LogWatch for PostgresLog {
    fn wait_any(
        &self,
        interest: &[(SessionKey, u64)],
        timeout: Duration,
    ) -> Result<Vec<usize>, LogError> {
        watch::wait_any(self, interest, timeout)
    }
}

/// The error of a `COMMIT` that did not answer: whether it was applied is
/// unknown, so the call is not tried again on a fresh connection.
#[derive(Debug)]
struct CommitFailed(::postgres::Error);

impl fmt::Display for CommitFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the commit's outcome is unknown (read the meta to learn it): {}",
            self.0
        )
    }
}

impl std::error::Error for CommitFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl Drop for PostgresLog {
    /// Closing a client blocks on its runtime too: the connections are
    /// dropped off any tokio runtime (a store dropped in an async host).
    fn drop(&mut self) {
        let conn = unpoison(self.conn.get_mut()).take();
        let listeners = std::mem::take(unpoison(self.listeners.get_mut()));
        let _ = off_runtime(move || {
            drop(conn);
            drop(listeners);
            Ok(())
        });
    }
}

/// Runs `call` where the sync client may block on its own runtime: here,
/// or, when this thread is inside a tokio runtime (where starting another
/// panics), on a scoped thread that `call` borrows from this one. A thread
/// that cannot be started is [`LogError::Backend`]; a panic in `call`
/// carries on here.
fn off_runtime<R: Send>(call: impl FnOnce() -> Result<R, LogError> + Send) -> Result<R, LogError> {
    if ::tokio::runtime::Handle::try_current().is_err() {
        return call();
    }
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("livereplay-postgres-call".into())
            .spawn_scoped(scope, call)
            .map_err(|error| LogError::Backend(Box::new(error)))?;
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A server or connection error.
fn backend(error: ::postgres::Error) -> LogError {
    LogError::Backend(Box::new(error))
}

/// The SQLSTATE of a backend error, if the server sent one.
fn sql_state(error: &LogError) -> Option<&SqlState> {
    match error {
        LogError::Backend(source) => source
            .downcast_ref::<::postgres::Error>()
            .and_then(::postgres::Error::code),
        _ => None,
    }
}

/// Whether the transaction lost a race with another writer and may simply
/// run again: a serialization failure, a deadlock, or a unique key another
/// writer inserted first (a new session, a record position).
fn is_conflict(error: &LogError) -> bool {
    sql_state(error).is_some_and(|state| {
        *state == SqlState::T_R_SERIALIZATION_FAILURE
            || *state == SqlState::T_R_DEADLOCK_DETECTED
            || *state == SqlState::UNIQUE_VIOLATION
    })
}

/// A `u64` stored in a `bigint` as the same 64 bits.
fn to_sql(value: u64) -> i64 {
    value as i64
}

/// A `u64` read back from [`to_sql`]'s form.
fn from_sql(value: i64) -> u64 {
    value as u64
}

/// A position or count read back: never negative.
fn position_from_sql(value: i64, what: &str, key: &SessionKey) -> Result<u64, LogError> {
    u64::try_from(value).map_err(|_| LogError::Corrupt(format!("{key}: a negative {what}")))
}

/// A mutex's value even after a panic elsewhere (the idle lists hold no
/// state a panic could have left half-changed).
fn unpoison<T>(result: Result<T, PoisonError<T>>) -> T {
    result.unwrap_or_else(PoisonError::into_inner)
}
