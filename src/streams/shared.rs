//! Several nodes, one server: the stream write lease in Redis (feature
//! `redis`).
//!
//! Owns [`SharedWrites`], the per-stream lease every protocol write takes
//! when several `livereplay serve` processes share one Redis log, and the
//! [`WriteLease`] a write holds. The problem it solves: a node's
//! [`StreamState`](super::state::StreamState) is a fold of the log cached in
//! memory, and its store session writes at the position after what *it*
//! knows; with two nodes writing one stream, both go stale the moment the
//! other node writes (checks against old producer and `Stream-Seq` state,
//! and a record at a position the other node took, which the store fences
//! and never writes).
//!
//! # The protocol
//!
//! A write (create, append, close, delete, a fork's create, an expiry) on
//! a node, under the stream's in-process mutex:
//!
//! 1. **takes the lease**: `SET <ns>:ds:lease:{<t>:<s>} <token> NX PX
//!    <lease>`, the token a fresh number from `INCR <ns>:ds:lease-seq`,
//!    retried every few milliseconds until it is free or the write's
//!    deadline passes (`503`);
//! 2. **catches up** (`DurableStreams::catch_up_state`): it *pins* the
//!    stream's store session (holds a handle, so it stays resident) at the
//!    log's tail — restored from the log if it is not resident, or, if a
//!    resident one is behind the log, removed and restored after the tail,
//!    as a store whose session moved to another node does (CONTRACT.md
//!    section 10) — then folds the log's records after the last one its
//!    cached state folded (or rebuilds it, if a delete archived what it
//!    knew), and checks the fold ends exactly where the pinned session
//!    does;
//! 3. checks and appends as a single node does, waits until the record is
//!    durable, and
//! 4. **lets go**: the session is evicted from memory (trimmed to the
//!    durable watermark and swept, or removed if a reader holds its ring),
//!    so that this node's readers follow the stream from the log and wake
//!    on the store's tailer when another node writes next; then the lease
//!    is deleted if it still holds this write's token (a compare-and-delete
//!    script, so a write that outlived its lease never deletes its
//!    successor's).
//!
//! # Invariants
//!
//! * **Checked against the current state.** Between taking the lease and
//!   letting it go nobody else writes the stream (while the lease holds),
//!   and every earlier holder's record was durable before it let go, so
//!   the fold of the log at step 2 is the stream's current state.
//! * **Never lost, never fenced into a hang.** A write answers success only
//!   when its record is durable in the shared log (as on one node). The
//!   lease outlives the durable wait (the binary refuses a lease not longer
//!   than `--durable-timeout-ms`); a holder that stalls past it anyway (a
//!   paused process) and a successor write at the same log position are
//!   decided by the log's own contiguity check: exactly one lands, the
//!   other's session is fenced and its client gets `503` as soon as the
//!   store fences it (`ReplayStore::is_fenced`), never a false success.
//!   Any write that did not end durable leaves the node's cached state
//!   marked stale: the next read or write rebuilds it from the log.
//! * **A dead holder blocks for one lease at most.** The lease expires by
//!   itself (`PX`): a node killed mid-write holds its streams until then.
//! * The in-process writer's lock-free append is not on this path and is
//!   not coordinated across nodes: with several nodes, a stream is written
//!   over HTTP (or by one node's runtime alone).
//!
//! # The position is the fencing token
//!
//! The log's commit does not know of leases, so a lease alone cannot stop
//! a node paused past its lease from writing after its successor. The
//! pinned session closes that gap: the write's records go right after the
//! position its checks were folded through. If another node wrote
//! meanwhile, either the catch-up sees it (the fold ends past the pinned
//! session: `503`, retry) or the two writes' records contend for the same
//! position, where the log's contiguity check lets exactly one land and
//! the store fences the other (its client gets `503` at once). Both were
//! checked against the same state, so whichever lands, the stream's
//! history is one a single server could have made.

use std::sync::Mutex;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use redis::{Client, Connection};

use crate::key::SessionKey;

use super::error::StreamError;

/// The ids' escaping in key names: the Redis log's (everything but ASCII
/// letters, digits, `-`, `_`, `~`), so no id holds `:`, `{` or `}`.
const ID_ESCAPES: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

/// How long a write waits between two tries at a taken lease.
const RETRY: Duration = Duration::from_millis(5);

/// The longest wait for a connection or one reply.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Deletes the lease only if it still holds the caller's token.
const RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// The stream write leases of nodes sharing one Redis server.
pub struct SharedWrites {
    client: Client,
    conn: Mutex<Option<Connection>>,
    prefix: String,
    lease: Duration,
}

impl std::fmt::Debug for SharedWrites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the URL: it may hold a password.
        f.debug_struct("SharedWrites")
            .field("prefix", &self.prefix)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// A lease a write holds: its stream's key and the token it was taken with.
#[derive(Debug)]
pub(crate) struct WriteLease {
    pub(crate) key: SessionKey,
    pub(crate) token: u64,
}

impl SharedWrites {
    /// The leases under `namespace` (the same prefix as the Redis log's
    /// keys) on the server at `url`, each held at most `lease`. Connects
    /// once to check the server answers.
    pub fn open(url: &str, namespace: &str, lease: Duration) -> Result<Self, StreamError> {
        let client = Client::open(url).map_err(unavailable)?;
        let shared = Self {
            client,
            conn: Mutex::new(None),
            prefix: namespace.to_string(),
            lease,
        };
        shared.with_conn(|conn| redis::cmd("PING").query::<String>(conn))?;
        Ok(shared)
    }

    /// How long a lease holds.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    fn lease_key(&self, key: &SessionKey) -> String {
        format!(
            "{}:ds:lease:{{{}:{}}}",
            self.prefix,
            utf8_percent_encode(key.tenant(), ID_ESCAPES),
            utf8_percent_encode(key.session(), ID_ESCAPES)
        )
    }

    /// Runs `call` on the connection, connecting first if needed; a failed
    /// call drops the connection (the next one connects again).
    fn with_conn<R>(
        &self,
        call: impl FnOnce(&mut Connection) -> redis::RedisResult<R>,
    ) -> Result<R, StreamError> {
        let mut slot = self
            .conn
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if slot.is_none() {
            let conn = self
                .client
                .get_connection_with_timeout(IO_TIMEOUT)
                .map_err(unavailable)?;
            conn.set_read_timeout(Some(IO_TIMEOUT))
                .map_err(unavailable)?;
            conn.set_write_timeout(Some(IO_TIMEOUT))
                .map_err(unavailable)?;
            *slot = Some(conn);
        }
        let Some(conn) = slot.as_mut() else {
            return Err(StreamError::Unavailable("no Redis connection".into()));
        };
        call(conn).map_err(|error| {
            *slot = None;
            unavailable(error)
        })
    }

    /// One try at the lease: its token if taken.
    fn try_acquire(&self, key: &SessionKey) -> Result<Option<u64>, StreamError> {
        let lease_key = self.lease_key(key);
        let millis = u64::try_from(self.lease.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let seq = format!("{}:ds:lease-seq", self.prefix);
        self.with_conn(|conn| {
            let token: u64 = redis::cmd("INCR").arg(&seq).query(conn)?;
            let set: Option<String> = redis::cmd("SET")
                .arg(&lease_key)
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(millis)
                .query(conn)?;
            Ok(set.map(|_| token))
        })
    }

    /// Takes `key`'s lease, waiting while another write holds it, until
    /// `deadline` (then `503`).
    pub(crate) async fn acquire(
        self: &std::sync::Arc<Self>,
        key: &SessionKey,
        deadline: tokio::time::Instant,
    ) -> Result<WriteLease, StreamError> {
        loop {
            let shared = std::sync::Arc::clone(self);
            let asked = key.clone();
            let token = tokio::task::spawn_blocking(move || shared.try_acquire(&asked))
                .await
                .map_err(|error| {
                    StreamError::Unavailable(format!("the lease task failed: {error}"))
                })??;
            if let Some(token) = token {
                return Ok(WriteLease {
                    key: key.clone(),
                    token,
                });
            }
            if tokio::time::Instant::now() + RETRY >= deadline {
                return Err(StreamError::Unavailable(format!(
                    "another node is writing this stream (its write lease is held): retry; a \
                     node that died holding it lets go within {:?}",
                    self.lease
                )));
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Lets go of a lease (only if it still holds its token). Blocking.
    pub(crate) fn release(&self, lease: &WriteLease) -> Result<(), StreamError> {
        let lease_key = self.lease_key(&lease.key);
        self.with_conn(|conn| {
            redis::cmd("EVAL")
                .arg(RELEASE)
                .arg(1)
                .arg(&lease_key)
                .arg(lease.token)
                .query::<i64>(conn)
        })
        .map(|_| ())
    }
}

fn unavailable(error: redis::RedisError) -> StreamError {
    StreamError::Unavailable(format!("Redis (stream leases): {error}"))
}

/// The tests' real `redis-server` (started on a free loopback port, killed
/// on drop).
#[cfg(test)]
#[path = "../../tests/support/redis_server.rs"]
mod redis_server;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::redis_server;
    use super::*;

    /// A write that outlived its lease lets go of nothing: the successor's
    /// lease (another token) stays until its own holder lets go.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_expired_holder_never_lets_go_of_its_successors_lease() {
        let Some(redis) = redis_server::RedisServer::start() else {
            return;
        };
        let shared =
            Arc::new(SharedWrites::open(&redis.url(), "unit", Duration::from_millis(300)).unwrap());
        let key = SessionKey::new("t", "s").unwrap();
        let far = tokio::time::Instant::now() + Duration::from_secs(20);
        let first = shared.acquire(&key, far).await.unwrap();
        // Held: a second try within a short deadline is refused.
        let soon = tokio::time::Instant::now() + Duration::from_millis(20);
        assert!(matches!(
            shared.acquire(&key, soon).await,
            Err(StreamError::Unavailable(_))
        ));
        // After the expiry the successor takes it, with a newer token.
        let second = shared.acquire(&key, far).await.unwrap();
        assert!(second.token > first.token);
        shared.release(&first).unwrap();
        let exists: bool = shared
            .with_conn(|conn| redis::cmd("EXISTS").arg(shared.lease_key(&key)).query(conn))
            .unwrap();
        assert!(exists, "the expired holder deleted its successor's lease");
        shared.release(&second).unwrap();
        let taken = shared.try_acquire(&key).unwrap();
        assert!(taken.is_some(), "the lease let go is free again");
    }

    /// A write whose position another writer took in the log is refused as
    /// soon as the store fences its session, not when its wait times out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_fenced_by_another_writer_is_refused_not_waited_for() {
        use crate::durable::RedisLog;
        use crate::streams::{DurableStreams, StreamRecord};
        use crate::{Postcard, ReplayStore, Revision};

        let Some(redis) = redis_server::RedisServer::start() else {
            return;
        };
        let store = || {
            let log = Arc::new(RedisLog::open(&redis.url()).unwrap());
            Arc::new(
                ReplayStore::<StreamRecord>::builder()
                    .durable(log, Postcard)
                    .build()
                    .unwrap(),
            )
        };
        let (a, b) = (store(), store());
        let key = SessionKey::new("", "fenced").unwrap();
        let wait = Duration::from_secs(20);
        // A writes position 1 and keeps the session resident; B then
        // writes position 2 from the log's tail.
        let _resident = a.session(&key).unwrap();
        a.append(&key, Revision(0), StreamRecord::data("a1"))
            .unwrap();
        a.wait_durable(&key, 1, wait).unwrap();
        b.append(&key, Revision(0), StreamRecord::data("b2"))
            .unwrap();
        b.wait_durable(&key, 2, wait).unwrap();
        // A's next record also wants position 2: the log refuses it and
        // A's store fences the session.
        let stale = a
            .append(&key, Revision(0), StreamRecord::data("a2"))
            .unwrap();
        assert_eq!(stale.position(), 2);
        let streams = DurableStreams::new(Arc::clone(&a));
        let deadline = tokio::time::Instant::now() + wait;
        let waited = streams.durable_by(&key, 2, deadline).await;
        assert!(
            matches!(waited, Err(StreamError::Unavailable(_))),
            "the fenced write was {waited:?}"
        );
        assert!(a.is_fenced(&key));
    }
}
