//! The Postgres log's tables: their creation and migrations (run at open,
//! idempotent, serialized between nodes), and the statements every
//! connection prepares once.
//!
//! # Invariants
//!
//! * `schema_version` holds exactly one row once the schema exists: the
//!   version of the newest migration applied. Migrations run in one
//!   transaction under a transaction-scoped advisory lock keyed by the
//!   schema's name, so nodes opening a new schema at the same moment apply
//!   each migration once, and a crash mid-migration leaves the previous
//!   version whole.
//! * A schema whose version is newer than this code knows is refused
//!   ([`LogError::Corrupt`]): its rows may mean something this code would
//!   misread.
//! * The schema name is checked ([`check_name`]) before it is ever put in
//!   SQL text, and always double-quoted there.

use ::postgres::{Client, Statement};

use super::backend;
use crate::durable::LogError;

/// The newest schema version this code writes and reads.
pub(super) const VERSION: i32 = 3;

/// Migration `n` (1-based) brings a schema from version `n - 1` to `n`.
/// `{s}` stands for the quoted schema name.
const MIGRATIONS: [&str; 3] = [
    r#"
CREATE TABLE {s}.sessions (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    durable_tail bigint NOT NULL CHECK (durable_tail >= 0),
    archived_through bigint NOT NULL CHECK (archived_through BETWEEN 0 AND durable_tail),
    last_revision bigint NOT NULL,
    event_count bigint NOT NULL CHECK (event_count >= 0),
    tenant text NOT NULL,
    session text NOT NULL,
    life_incarnations bigint[] NOT NULL,
    life_first_positions bigint[] NOT NULL,
    UNIQUE (tenant, session)
);
-- The per-tenant listing, newest first.
CREATE INDEX sessions_by_tenant ON {s}.sessions (tenant, id);
-- One row per record; the primary key serves load_after's ranges and keeps
-- one record per position. No foreign key: its per-row check would cost
-- more than the bulk insert it guards, and only this code writes here.
CREATE TABLE {s}.records (
    session_id bigint NOT NULL,
    position bigint NOT NULL CHECK (position > 0),
    incarnation bigint NOT NULL,
    revision bigint,
    timestamp_nanos bigint,
    hole_count bigint CHECK (hole_count > 0),
    hole_reason smallint,
    links bytea,
    payload bytea,
    PRIMARY KEY (session_id, position),
    CHECK ((hole_count IS NULL) = (payload IS NOT NULL)),
    CHECK ((hole_count IS NULL) = (hole_reason IS NULL))
);
-- The causal index's key-value space; bytea compares bytewise, the order
-- IndexRead::scan promises.
CREATE TABLE {s}.index_entries (
    key bytea PRIMARY KEY,
    value bytea NOT NULL
);
"#,
    // 2: a session's closure (`crate::Closure`): both NULL while open.
    r#"
ALTER TABLE {s}.sessions
    ADD COLUMN close_reason smallint,
    ADD COLUMN close_last bigint,
    ADD CHECK ((close_reason IS NULL) = (close_last IS NULL)),
    ADD CHECK (close_last IS NULL OR close_last = durable_tail);
"#,
    // 3: a session's open turn (the id of the store whose `crate::Turn`
    // drives it; NULL when none), and each store's lease: a row until it
    // expires, on the server's clock (a row past its time counts as none).
    r#"
ALTER TABLE {s}.sessions ADD COLUMN open_turn bigint;
CREATE TABLE {s}.stores (
    id bigint PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
"#,
];

/// Refuses a schema name that is not a plain lowercase identifier short
/// enough to also name the notification channel.
pub(super) fn check_name(name: &str) -> Result<(), LogError> {
    let mut bytes = name.bytes();
    let valid = name.len() <= 48
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.starts_with("pg_");
    if valid {
        Ok(())
    } else {
        Err(LogError::Backend(
            format!(
                "the Postgres schema name {name:?} is not allowed: lowercase ASCII letters, \
                 digits and '_', starting with a letter or '_', not 'pg_', at most 48 bytes"
            )
            .into(),
        ))
    }
}

/// The notification channel of a schema's log.
pub(super) fn channel(schema: &str) -> String {
    format!("{schema}_appended")
}

/// Creates the schema and applies every migration it lacks, in one
/// transaction under an advisory lock (module invariants).
pub(super) fn migrate(client: &mut Client, schema: &str) -> Result<(), LogError> {
    let row = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .map_err(backend)?;
    let server: i32 = row.try_get(0).map_err(backend)?;
    if server < 120_000 {
        return Err(LogError::Backend(
            format!("Postgres {server} is too old: the Postgres log needs 12 or later").into(),
        ));
    }
    let quoted = format!("\"{schema}\"");
    let mut tx = client.transaction().map_err(backend)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('livereplay:' || $1))",
        &[&schema],
    )
    .map_err(backend)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {quoted};
         CREATE TABLE IF NOT EXISTS {quoted}.schema_version (
             one boolean PRIMARY KEY DEFAULT true CHECK (one),
             version integer NOT NULL
         );"
    ))
    .map_err(backend)?;
    let current: i32 = tx
        .query_opt(&format!("SELECT version FROM {quoted}.schema_version"), &[])
        .map_err(backend)?
        .map(|row| row.try_get(0))
        .transpose()
        .map_err(backend)?
        .unwrap_or(0);
    if current > VERSION {
        return Err(LogError::Corrupt(format!(
            "the Postgres schema {schema:?} is at version {current}; this version of \
             livereplay reads up to {VERSION}"
        )));
    }
    if current < 0 {
        return Err(LogError::Corrupt(format!(
            "the Postgres schema {schema:?} is at version {current}"
        )));
    }
    for migration in &MIGRATIONS[current as usize..] {
        tx.batch_execute(&migration.replace("{s}", &quoted))
            .map_err(backend)?;
    }
    if current < VERSION {
        tx.execute(
            &format!(
                "INSERT INTO {quoted}.schema_version (version) VALUES ($1)
                 ON CONFLICT (one) DO UPDATE SET version = EXCLUDED.version"
            ),
            &[&VERSION],
        )
        .map_err(backend)?;
    }
    tx.commit().map_err(backend)
}

/// Every statement the log runs, prepared once per connection.
pub(super) struct Statements {
    /// The notification channel (`channel`), a parameter of `notify`.
    pub channel: String,
    /// `BEGIN` and the lock of the state row every index writer takes
    /// first, as one simple query (one round trip for both).
    pub begin_locked: String,
    /// `(tenants[], sessions[])` → the sessions' rows, locked, id order.
    pub lock_sessions: Statement,
    /// New sessions, numbered in the order given; returns their ids.
    pub insert_sessions: Statement,
    /// Records only (`$1..$9` of `write_all`), for the chunks of a large
    /// commit before the last.
    pub insert_records: Statement,
    /// One statement for all of an append's rows: every record (one
    /// multi-row insert from arrays, `$1..$9`), every changed session's row
    /// (`$10..$13`, `$19..$21`, its new lives `$14..$16`), and a `pg_notify` on channel
    /// `$17` per changed session; each row also carries the causal index's
    /// state (key `$18`), which the append reads next anyway.
    pub write_all: Statement,
    /// `(tenant, session, after, limit)` → records.
    pub load_after: Statement,
    /// `(tenant, session)` → the row.
    pub meta: Statement,
    /// `(store, lease in ms)`: sets the store's lease (and forgets the
    /// leases that ran out).
    pub keep_alive: Statement,
    /// `(store)` → whether its lease runs.
    pub store_alive: Statement,
    /// `(tenant, limit, offset)` → sessions, newest first.
    pub sessions: Statement,
    /// `(session id, watermark)` → events archived.
    pub archive: Statement,
    /// `(session id, watermark, events)`.
    pub set_archived: Statement,
    pub index_get: Statement,
    /// `(lower inclusive, upper exclusive, limit)`.
    pub index_scan: Statement,
    /// `(lower inclusive, limit)`: a prefix with no upper bound.
    pub index_scan_open: Statement,
    pub index_put: Statement,
    pub index_delete: Statement,
    /// `(tenant, session, position)` → whether an unarchived event is there.
    pub is_event: Statement,
}

/// The columns of a session row, in the order the statements return them.
const SESSION_COLUMNS: &str = "id, tenant, session, durable_tail, archived_through, \
     last_revision, event_count, life_incarnations, life_first_positions, close_reason, close_last, \
     open_turn";

/// The columns of a record row, in the order `reads::decode_record` reads.
pub(super) const RECORD_COLUMNS: &str = "position, incarnation, revision, timestamp_nanos, \
     hole_count, hole_reason, links, payload";

impl Statements {
    pub(super) fn prepare(client: &mut Client, schema: &str) -> Result<Self, LogError> {
        let s = format!("\"{schema}\"");
        let mut prepare = |sql: String| client.prepare(&sql).map_err(backend);
        Ok(Self {
            channel: channel(schema),
            begin_locked: format!("BEGIN; SELECT version FROM {s}.schema_version FOR UPDATE"),
            lock_sessions: prepare(format!(
                "SELECT {SESSION_COLUMNS} FROM {s}.sessions
                 WHERE (tenant, session) IN (SELECT * FROM unnest($1::text[], $2::text[]))
                 ORDER BY id FOR UPDATE"
            ))?,
            insert_sessions: prepare(format!(
                "INSERT INTO {s}.sessions (tenant, session, durable_tail, archived_through,
                     last_revision, event_count, life_incarnations, life_first_positions)
                 SELECT t, n, 0, 0, 0, 0, '{{}}', '{{}}'
                 FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS new (t, n, ord)
                 ORDER BY ord
                 RETURNING id, tenant, session"
            ))?,
            insert_records: prepare(format!(
                "INSERT INTO {s}.records (session_id, {RECORD_COLUMNS})
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[],
                     $5::bigint[], $6::bigint[], $7::smallint[], $8::bytea[], $9::bytea[])"
            ))?,
            // Data-modifying CTEs always run, whether the outer query reads
            // them or not; the notifications go out at commit only.
            write_all: prepare(format!(
                "WITH inserted AS (
                     INSERT INTO {s}.records (session_id, {RECORD_COLUMNS})
                     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[],
                         $4::bigint[], $5::bigint[], $6::bigint[], $7::smallint[],
                         $8::bytea[], $9::bytea[])),
                 updated AS (
                     UPDATE {s}.sessions AS m SET durable_tail = u.tail,
                         last_revision = u.revision, event_count = u.events,
                         close_reason = u.close_reason, close_last = u.close_last,
                         open_turn = u.open_turn,
                         life_incarnations = m.life_incarnations || coalesce((
                             SELECT array_agg(l.incarnation ORDER BY l.ord)
                             FROM unnest($14::bigint[], $15::bigint[], $16::bigint[])
                                 WITH ORDINALITY AS l (owner, incarnation, first_position, ord)
                             WHERE l.owner = m.id), '{{}}'),
                         life_first_positions = m.life_first_positions || coalesce((
                             SELECT array_agg(l.first_position ORDER BY l.ord)
                             FROM unnest($14::bigint[], $15::bigint[], $16::bigint[])
                                 WITH ORDINALITY AS l (owner, incarnation, first_position, ord)
                             WHERE l.owner = m.id), '{{}}')
                     FROM unnest($10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[],
                             $19::smallint[], $20::bigint[], $21::bigint[])
                         AS u (id, tail, revision, events, close_reason, close_last, open_turn)
                     WHERE m.id = u.id
                     RETURNING m.id, m.durable_tail)
                 SELECT pg_notify($17, id::text || ' ' || durable_tail::text),
                     (SELECT value FROM {s}.index_entries WHERE key = $18)
                 FROM updated"
            ))?,
            // The record that covers `from` (an event at it, or a hole
            // starting before it), then the records after it, in order.
            load_after: prepare(format!(
                "WITH m AS (
                     SELECT id, greatest($3::bigint, archived_through) + 1 AS from_position
                     FROM {s}.sessions WHERE tenant = $1 AND session = $2)
                 SELECT r.* FROM m, LATERAL (
                     SELECT {RECORD_COLUMNS} FROM {s}.records
                     WHERE session_id = m.id AND position <= m.from_position
                     ORDER BY position DESC LIMIT 1) AS r
                 WHERE r.position + coalesce(r.hole_count, 1) - 1 >= m.from_position
                 UNION ALL
                 SELECT r.* FROM m, LATERAL (
                     SELECT {RECORD_COLUMNS} FROM {s}.records
                     WHERE session_id = m.id AND position > m.from_position
                     ORDER BY position LIMIT $4) AS r
                 ORDER BY position LIMIT $4"
            ))?,
            meta: prepare(format!(
                "SELECT {SESSION_COLUMNS} FROM {s}.sessions WHERE tenant = $1 AND session = $2"
            ))?,
            // A lease that ran out and a missing row say the same ("gone"),
            // so the expired rows go as the live ones are renewed.
            keep_alive: prepare(format!(
                "WITH expired AS (
                     DELETE FROM {s}.stores WHERE expires_at < clock_timestamp() AND id <> $1)
                 INSERT INTO {s}.stores (id, expires_at)
                 VALUES ($1, clock_timestamp() + $2::bigint * interval '1 millisecond')
                 ON CONFLICT (id) DO UPDATE SET expires_at = EXCLUDED.expires_at"
            ))?,
            store_alive: prepare(format!(
                "SELECT EXISTS (SELECT 1 FROM {s}.stores
                                WHERE id = $1 AND expires_at > clock_timestamp())"
            ))?,
            sessions: prepare(format!(
                "SELECT session FROM {s}.sessions WHERE tenant = $1
                 ORDER BY id DESC LIMIT $2 OFFSET $3"
            ))?,
            archive: prepare(format!(
                "WITH gone AS (
                     DELETE FROM {s}.records
                     WHERE session_id = $1 AND position <= $2
                       AND position + coalesce(hole_count, 1) - 1 <= $2
                     RETURNING hole_count)
                 SELECT count(*) FILTER (WHERE hole_count IS NULL) FROM gone"
            ))?,
            set_archived: prepare(format!(
                "UPDATE {s}.sessions SET archived_through = $2, event_count = event_count - $3
                 WHERE id = $1"
            ))?,
            index_get: prepare(format!(
                "SELECT value FROM {s}.index_entries WHERE key = $1"
            ))?,
            index_scan: prepare(format!(
                "SELECT key, value FROM {s}.index_entries WHERE key >= $1 AND key < $2
                 ORDER BY key LIMIT $3"
            ))?,
            index_scan_open: prepare(format!(
                "SELECT key, value FROM {s}.index_entries WHERE key >= $1
                 ORDER BY key LIMIT $2"
            ))?,
            index_put: prepare(format!(
                "INSERT INTO {s}.index_entries (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
            ))?,
            index_delete: prepare(format!("DELETE FROM {s}.index_entries WHERE key = $1"))?,
            is_event: prepare(format!(
                "SELECT r.hole_count IS NULL FROM {s}.sessions m
                 JOIN {s}.records r ON r.session_id = m.id
                 WHERE m.tenant = $1 AND m.session = $2 AND r.position = $3
                   AND r.position > m.archived_through"
            ))?,
        })
    }
}
