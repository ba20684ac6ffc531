//! [`RedbLog`]: the durable log in one crash-safe [redb](::redb) file.
//!
//! It owns one redb database file and everything in it: the records of every
//! tenant's sessions, their metadata, and the per-tenant listing. Nothing
//! else may write to the file; redb's whole-file lock refuses a second
//! writer process, and inside the process every call goes through one
//! [`RedbLog`].
//!
//! # Table layout (format 1)
//!
//! | table | key | value |
//! |---|---|---|
//! | `livereplay.records` | `(tenant, session, position)` | a record: postcard header, then the raw payload |
//! | `livereplay.meta` | `(tenant, session)` | postcard [`SessionMeta`] plus the session's creation sequence number |
//! | `livereplay.listing` | `(tenant, creation seq)` | the session id |
//! | `livereplay.state` | name | `format` (the layout version) and `next_session_seq` |
//! | `livereplay.index` | the causal index's tuple-encoded key (`crate::dag`) | its value; written in the transaction that writes the records it indexes |
//!
//! redb orders tuple keys element by element, and a `&str` element is stored
//! with its length, so `("ab", "c")` and `("a", "bc")` are different keys
//! that never interleave: one session's records are one contiguous key range,
//! [`DurableLog::load_after`] is a range scan, and the hole that may cover
//! the first position asked for is the last key at or before it
//! (`range(..=from).next_back()`). [`DurableLog::sessions`] scans only its
//! tenant's listing rows, backwards, so newest first.
//!
//! A record value is the postcard encoding of its incarnation and body
//! (event: revision, timestamp, links; hole: count and reason tag) followed,
//! for an event, by the payload bytes as they are: a payload is not copied
//! through serde, and a 1 MiB payload costs 1 MiB plus a few header bytes.
//!
//! # Invariants
//!
//! * The module invariants of [`crate::durable`] hold across crashes: one
//!   [`DurableLog::append`] call is validated completely (with the same rules
//!   as [`MemoryLog`](super::MemoryLog)) before anything is written, and is
//!   then one redb write transaction, one commit. An archive is one commit.
//! * A session's meta row is written in the same transaction as its records,
//!   so `durable_tail`, `event_count` and the lives always describe the
//!   records table exactly; a listing row exists exactly when a meta row
//!   does, and is written once, when the session is first recorded.
//! * Validation reads the meta inside the write transaction, and redb runs
//!   one write transaction at a time, so two concurrent calls cannot both
//!   validate against the same tail.
//! * Bytes read from the file are never trusted: a value that does not
//!   decode, names incarnation 0, an unknown hole reason, a zero-length hole,
//!   or positions that overflow is reported as [`LogError::Corrupt`], never
//!   a panic.
//!
//! # Durability
//!
//! [`RedbDurability::Immediate`] (the default) makes every commit durable
//! before the call returns: redb writes the new pages and its commit slot
//! and `fsync`s, once per commit. A crash loses nothing that was
//! acknowledged. [`RedbDurability::Deferred`] maps to redb's
//! `Durability::None`: a commit is visible to readers at once but reaches
//! the disk only with the next durable commit — [`RedbLog::sync`], or the
//! clean close when the log is dropped. A crash rolls the file back to the
//! last durable commit: the file stays consistent (whole calls are lost,
//! never parts of one), but acknowledged records are gone, so a restarted
//! store sees a lower tail and starts a new life after it. redb 4 has no
//! "eventual" level any more; under `Deferred` it also cannot reuse pages
//! freed since the last durable commit, so call [`RedbLog::sync`]
//! periodically or the file grows.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use ::redb::{
    Builder, Database, Durability, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};

use super::memory::{apply_to_meta, empty_meta, validate_write};
use super::stored::LinksV1;
use super::{
    DurableLog, HoleReason, IndexEntries, IndexRead, IndexStore, IndexWrite, Life, Links, LogError,
    LogRecord, RecordBody, SessionMeta, SessionWrite, StoredEvent,
};
use crate::cursor::Incarnation;
use crate::key::SessionKey;

/// `(tenant, session, position)` → record bytes.
const RECORDS: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("livereplay.records");
/// `(tenant, session)` → meta bytes.
const META: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("livereplay.meta");
/// `(tenant, creation seq)` → session id.
const LISTING: TableDefinition<(&str, u64), &str> = TableDefinition::new("livereplay.listing");
/// The causal index's key-value space (`crate::dag`): tuple-encoded keys.
const INDEX: TableDefinition<&[u8], &[u8]> = TableDefinition::new("livereplay.index");
/// Small named counters.
const STATE: TableDefinition<&str, u64> = TableDefinition::new("livereplay.state");

/// The layout this module writes and reads (see the module docs).
const FORMAT: u64 = 1;
const FORMAT_KEY: &str = "format";
const NEXT_SEQ_KEY: &str = "next_session_seq";

/// The default page cache. The ring holds the hot tail in memory, so the
/// log is read only by catch-up for older positions; redb's own default
/// (1 GiB) would be a lot of memory to hand a cold path by default.
const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// When a commit of a [`RedbLog`] reaches the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedbDurability {
    /// Every commit is `fsync`ed before the call returns (redb's
    /// `Durability::Immediate`). Crash-safe; costs one `fsync` per commit,
    /// which is why the persister batches many events per commit.
    #[default]
    Immediate,
    /// Commits are visible at once and made durable by the next
    /// [`RedbLog::sync`] or the clean close on drop (redb's
    /// `Durability::None`). A crash loses the commits since the last durable
    /// one (whole commits, never part of one). For tests, benchmarks, and
    /// hosts that call `sync` on their own schedule.
    Deferred,
}

/// How to open a [`RedbLog`].
///
/// ```
/// use livereplay::durable::{RedbDurability, RedbOptions};
///
/// let options = RedbOptions::new()
///     .durability(RedbDurability::Immediate)
///     .cache_size(16 * 1024 * 1024);
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
pub struct RedbOptions {
    durability: RedbDurability,
    cache_bytes: usize,
    check_integrity: bool,
}

impl Default for RedbOptions {
    fn default() -> Self {
        Self {
            durability: RedbDurability::Immediate,
            cache_bytes: DEFAULT_CACHE_BYTES,
            check_integrity: false,
        }
    }
}

impl RedbOptions {
    /// The defaults: [`RedbDurability::Immediate`], a 64 MiB page cache, no
    /// integrity check on open.
    pub fn new() -> Self {
        Self::default()
    }

    /// When commits reach the disk.
    pub fn durability(mut self, durability: RedbDurability) -> Self {
        self.durability = durability;
        self
    }

    /// The most memory, in bytes, redb may use to cache pages.
    pub fn cache_size(mut self, bytes: usize) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// Verify every page's checksum when opening (reads the whole file).
    /// redb recovers from crashes on its own; this is for a file that may
    /// have been damaged outside redb, which a plain open trusts (and may
    /// panic on) but a checked open reports as [`LogError::Corrupt`].
    pub fn check_integrity_on_open(mut self, enabled: bool) -> Self {
        self.check_integrity = enabled;
        self
    }
}

/// A [`DurableLog`] in one redb file: crash-safe, one commit per call.
///
/// ```
/// use livereplay::durable::{DurableLog, RedbLog};
/// use livereplay::SessionKey;
///
/// let path = std::env::temp_dir().join(format!("livereplay-doc-{}.redb", std::process::id()));
/// let log = RedbLog::open(&path)?;
/// assert!(log.meta(&SessionKey::new("t", "s")?)?.is_none());
/// drop(log);
/// std::fs::remove_file(&path)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RedbLog {
    /// The open database; `None` after a failed write, until the next call
    /// reopens it (redb refuses every write after an I/O error until the
    /// database is reopened, so this is how persistence resumes by itself
    /// once the disk recovers).
    db: std::sync::RwLock<Option<std::sync::Arc<Database>>>,
    /// Opens the database again.
    opener: Box<dyn Fn() -> Result<Database, ::redb::DatabaseError> + Send + Sync>,
    durability: Durability,
    path: PathBuf,
}

impl fmt::Debug for RedbLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbLog")
            .field("path", &self.path)
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

impl RedbLog {
    /// Opens the log at `path`, creating the file if it does not exist, with
    /// the default [`RedbOptions`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LogError> {
        Self::open_with(path, RedbOptions::default())
    }

    /// Opens the log at `path`, creating the file if it does not exist.
    ///
    /// Fails with [`LogError::Backend`] if another process has the file open
    /// (or this one does, through another `RedbLog`), and with
    /// [`LogError::Corrupt`] if the file holds a layout this version does
    /// not read.
    pub fn open_with(path: impl AsRef<Path>, options: RedbOptions) -> Result<Self, LogError> {
        let path = path.as_ref().to_path_buf();
        if !path.exists() {
            Self::create_whole(&path, &options)?;
        }
        let opened_path = path.clone();
        Self::with_opener(
            path,
            &options,
            Box::new(move || {
                Builder::new()
                    .set_cache_size(options.cache_bytes)
                    .set_check_integrity_on_open(options.check_integrity)
                    .create(&opened_path)
            }),
        )
    }

    /// A log over a custom redb storage backend, made by `make` at open and
    /// again at each reopen after a failed write (tests inject I/O errors
    /// this way). `name` stands for the path in messages.
    #[doc(hidden)]
    pub fn open_with_backend<B: ::redb::StorageBackend>(
        name: impl Into<PathBuf>,
        options: RedbOptions,
        make: impl Fn() -> B + Send + Sync + 'static,
    ) -> Result<Self, LogError> {
        let cache = options.cache_bytes;
        Self::with_opener(
            name.into(),
            &options,
            Box::new(move || {
                Builder::new()
                    .set_cache_size(cache)
                    .create_with_backend(make())
            }),
        )
    }

    fn with_opener(
        path: PathBuf,
        options: &RedbOptions,
        opener: Box<dyn Fn() -> Result<Database, ::redb::DatabaseError> + Send + Sync>,
    ) -> Result<Self, LogError> {
        let db = opener().map_err(backend)?;
        let log = Self {
            db: std::sync::RwLock::new(Some(std::sync::Arc::new(db))),
            opener,
            durability: match options.durability {
                RedbDurability::Immediate => Durability::Immediate,
                RedbDurability::Deferred => Durability::None,
            },
            path,
        };
        log.init()?;
        Ok(log)
    }

    /// The open database, reopened first if a failed write closed it.
    fn database(&self) -> Result<std::sync::Arc<Database>, LogError> {
        if let Some(db) = self.db.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Ok(std::sync::Arc::clone(db));
        }
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        if let Some(db) = slot.as_ref() {
            return Ok(std::sync::Arc::clone(db));
        }
        let db = std::sync::Arc::new((self.opener)().map_err(backend)?);
        *slot = Some(std::sync::Arc::clone(&db));
        Ok(db)
    }

    /// A write failed: close the database, so the next call reopens it
    /// (redb refuses writes after an I/O error until then). It closes when
    /// the last reader in flight lets go.
    fn write_failed<R>(&self, result: Result<R, LogError>) -> Result<R, LogError> {
        if let Err(LogError::Backend(_)) = &result {
            *self.db.write().unwrap_or_else(|e| e.into_inner()) = None;
        }
        result
    }

    /// Creates a new, initialised log file at `path` so that a crash never
    /// leaves a half-created one there (redb refuses a file whose header
    /// was never written, for ever): it is built and made durable under a
    /// temporary name, then linked into place, which fails harmlessly if
    /// another process created `path` meanwhile.
    fn create_whole(path: &Path, options: &RedbOptions) -> Result<(), LogError> {
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(format!(".creating-{}", std::process::id()));
        let temporary = std::path::PathBuf::from(temporary);
        // A leftover of our own pid is from an earlier crash of this pid.
        let _ = std::fs::remove_file(&temporary);
        let cache = options.cache_bytes;
        let at = temporary.clone();
        let log = Self::with_opener(
            temporary.clone(),
            &RedbOptions::default(),
            Box::new(move || Builder::new().set_cache_size(cache).create(&at)),
        )?;
        drop(log);
        let linked = std::fs::hard_link(&temporary, path);
        let _ = std::fs::remove_file(&temporary);
        match linked {
            Ok(()) => {
                // The new name must survive a crash too.
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::File::open(dir)
                        .and_then(|dir| dir.sync_all())
                        .map_err(|e| LogError::Backend(Box::new(e)))?;
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(LogError::Backend(Box::new(e))),
        }
    }

    /// The file it writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes every commit so far durable (one empty commit with redb's
    /// `Immediate` durability). A no-op in effect under
    /// [`RedbDurability::Immediate`], where every commit already is.
    pub fn sync(&self) -> Result<(), LogError> {
        let db = self.database()?;
        self.write_failed((|| {
            let mut txn = db.begin_write().map_err(backend)?;
            txn.set_durability(Durability::Immediate).map_err(backend)?;
            txn.commit().map_err(backend)
        })())
    }

    /// Creates the tables and checks the layout version, durably, so that
    /// readers always find every table.
    fn init(&self) -> Result<(), LogError> {
        // An existing log of this format needs no write (a durable write
        // transaction costs an fsync on every open).
        if self.initialised()? {
            return Ok(());
        }
        let db = self.database()?;
        let mut txn = db.begin_write().map_err(backend)?;
        txn.set_durability(Durability::Immediate).map_err(backend)?;
        {
            txn.open_table(RECORDS).map_err(backend)?;
            txn.open_table(META).map_err(backend)?;
            txn.open_table(LISTING).map_err(backend)?;
            txn.open_table(INDEX).map_err(backend)?;
            let mut state = txn.open_table(STATE).map_err(backend)?;
            let format = state.get(FORMAT_KEY).map_err(backend)?.map(|v| v.value());
            match format {
                None => {
                    state.insert(FORMAT_KEY, FORMAT).map_err(backend)?;
                }
                Some(FORMAT) => {}
                Some(other) => {
                    return Err(LogError::Corrupt(format!(
                        "{} has log format {other}; this version reads format {FORMAT}",
                        self.path.display()
                    )))
                }
            }
        }
        txn.commit().map_err(backend)
    }

    /// Whether every table exists and the format is this version's.
    fn initialised(&self) -> Result<bool, LogError> {
        let txn = self.database()?.begin_read().map_err(backend)?;
        let tables_exist = txn.open_table(RECORDS).is_ok()
            && txn.open_table(META).is_ok()
            && txn.open_table(LISTING).is_ok()
            && txn.open_table(INDEX).is_ok();
        let Ok(state) = txn.open_table(STATE) else {
            return Ok(false);
        };
        let format = state.get(FORMAT_KEY).map_err(backend)?.map(|v| v.value());
        Ok(tables_exist && format == Some(FORMAT))
    }

    fn begin_write(&self, db: &Database) -> Result<WriteTransaction, LogError> {
        let mut txn = db.begin_write().map_err(backend)?;
        txn.set_durability(self.durability).map_err(backend)?;
        Ok(txn)
    }
}

impl RedbLog {
    fn archive_in(&self, db: &Database, key: &SessionKey, watermark: u64) -> Result<u64, LogError> {
        // Read and decide inside the write transaction: the persister may
        // be appending, and the tail checked must be the tail archived.
        let txn = self.begin_write(db)?;
        let archived;
        {
            let mut metas = txn.open_table(META).map_err(backend)?;
            let Some((seq, mut meta)) = read_meta(&metas, key)? else {
                return Ok(0);
            };
            let watermark = watermark.min(meta.durable_tail);
            if watermark <= meta.archived_through {
                return Ok(0);
            }
            let (tenant, session) = (key.tenant(), key.session());
            let mut records = txn.open_table(RECORDS).map_err(backend)?;
            // Records are contiguous, so only the last one at or below the
            // watermark can reach past it (a straddling hole); it stays, and
            // loads skip its archived part.
            let mut gone = Vec::new();
            let mut events = 0u64;
            for entry in records
                .range((tenant, session, 0)..=(tenant, session, watermark))
                .map_err(backend)?
            {
                let (k, v) = entry.map_err(backend)?;
                let position = k.value().2;
                let (header, _) = decode_header(key, position, v.value())?;
                if last_position(key, position, &header)? <= watermark {
                    gone.push(position);
                    if matches!(header.body, BodyV1::Event { .. }) {
                        events += 1;
                    }
                }
            }
            for position in gone {
                records
                    .remove((tenant, session, position))
                    .map_err(backend)?;
            }
            meta.event_count = meta.event_count.checked_sub(events).ok_or_else(|| {
                LogError::Corrupt(format!(
                    "{key}: the meta counts {} events, but {events} were archived",
                    meta.event_count
                ))
            })?;
            meta.archived_through = watermark;
            let bytes = encode_meta(seq, &meta)?;
            metas
                .insert((tenant, session), bytes.as_slice())
                .map_err(backend)?;
            archived = events;
        }
        txn.commit().map_err(backend)?;
        Ok(archived)
    }
    fn append_in(&self, db: &Database, writes: &[SessionWrite<'_>]) -> Result<(), LogError> {
        if writes.is_empty() {
            return Ok(());
        }
        let txn = self.begin_write(db)?;
        {
            let mut metas = txn.open_table(META).map_err(backend)?;
            // Validate everything before writing anything: one call is all
            // or nothing (an early return drops, so aborts, the
            // transaction). A session written twice in one call validates
            // against its state after the earlier write. `staged` keeps the
            // order sessions first appear in, which is the order new ones
            // get their creation numbers (as in `MemoryLog`).
            let mut staged: Vec<Staged<'_>> = Vec::new();
            let mut index: HashMap<&SessionKey, usize> = HashMap::new();
            for write in writes {
                let (slot, seq, meta) = match index.get(write.key) {
                    Some(&i) => (Some(i), staged[i].seq, Some(staged[i].meta.clone())),
                    None => match read_meta(&metas, write.key)? {
                        Some((seq, meta)) => (None, Some(seq), Some(meta)),
                        None => (None, None, None),
                    },
                };
                validate_write(write.key, meta.as_ref(), write)?;
                // Nothing to record for a session the log does not know
                // (as in `MemoryLog`): not listed, no meta.
                if meta.is_none() && write.new_life.is_none() && write.records.is_empty() {
                    continue;
                }
                let mut meta = meta.unwrap_or_else(empty_meta);
                apply_to_meta(&mut meta, write);
                match slot {
                    Some(i) => staged[i].meta = meta,
                    None => {
                        index.insert(write.key, staged.len());
                        staged.push(Staged {
                            key: write.key,
                            seq,
                            meta,
                        });
                    }
                }
            }

            let mut state = txn.open_table(STATE).map_err(backend)?;
            let mut listing = txn.open_table(LISTING).map_err(backend)?;
            let first_seq = state
                .get(NEXT_SEQ_KEY)
                .map_err(backend)?
                .map_or(0, |v| v.value());
            let mut next_seq = first_seq;
            for session in &staged {
                let key = session.key;
                let seq = match session.seq {
                    Some(seq) => seq,
                    None => {
                        let seq = next_seq;
                        next_seq += 1;
                        listing
                            .insert((key.tenant(), seq), key.session())
                            .map_err(backend)?;
                        seq
                    }
                };
                let bytes = encode_meta(seq, &session.meta)?;
                metas
                    .insert((key.tenant(), key.session()), bytes.as_slice())
                    .map_err(backend)?;
            }
            if next_seq != first_seq {
                state.insert(NEXT_SEQ_KEY, next_seq).map_err(backend)?;
            }

            let mut records = txn.open_table(RECORDS).map_err(backend)?;
            let mut buf = Vec::new();
            for write in writes {
                let (tenant, session) = (write.key.tenant(), write.key.session());
                for record in write.records {
                    encode_record(record, &mut buf)?;
                    records
                        .insert((tenant, session, record.position), buf.as_slice())
                        .map_err(backend)?;
                }
            }
            // The index in the same transaction: durable exactly when the
            // records are.
            let mut index = txn.open_table(INDEX).map_err(backend)?;
            crate::dag::index_appended(
                &mut IndexTxn {
                    index: &mut index,
                    records: &records,
                },
                writes,
            )?;
        }
        txn.commit().map_err(backend)
    }
}

impl DurableLog for RedbLog {
    fn append(&self, writes: &[SessionWrite<'_>]) -> Result<(), LogError> {
        let db = self.database()?;
        self.write_failed(self.append_in(&db, writes))
    }

    fn index(&self) -> Option<&dyn IndexStore> {
        Some(self)
    }

    fn load_after(
        &self,
        key: &SessionKey,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        let txn = self.database()?.begin_read().map_err(backend)?;
        let metas = txn.open_table(META).map_err(backend)?;
        let Some((_, meta)) = read_meta(&metas, key)? else {
            return Ok(Vec::new());
        };
        // `after` may come from a client's cursor: at u64::MAX there is
        // nothing after it, rather than an overflow.
        let Some(from) = after.max(meta.archived_through).checked_add(1) else {
            return Ok(Vec::new());
        };
        if from > meta.durable_tail || limit == 0 {
            return Ok(Vec::new());
        }
        let records = txn.open_table(RECORDS).map_err(backend)?;
        let (tenant, session) = (key.tenant(), key.session());
        // The record at or before `from` covers it if it is a hole reaching
        // it; otherwise the scan starts at `from` itself.
        let mut start = from;
        if let Some(entry) = records
            .range((tenant, session, 0)..=(tenant, session, from))
            .map_err(backend)?
            .next_back()
        {
            let (k, v) = entry.map_err(backend)?;
            let position = k.value().2;
            let (header, _) = decode_header(key, position, v.value())?;
            if last_position(key, position, &header)? >= from {
                start = position;
            }
        }
        let mut out = Vec::new();
        for entry in records
            .range((tenant, session, start)..=(tenant, session, u64::MAX))
            .map_err(backend)?
            .take(limit)
        {
            let (k, v) = entry.map_err(backend)?;
            out.push(decode_record(key, k.value().2, v.value())?);
        }
        Ok(out)
    }

    fn meta(&self, key: &SessionKey) -> Result<Option<SessionMeta>, LogError> {
        let txn = self.database()?.begin_read().map_err(backend)?;
        let metas = txn.open_table(META).map_err(backend)?;
        Ok(read_meta(&metas, key)?.map(|(_, meta)| meta))
    }

    fn archive_before(&self, key: &SessionKey, watermark: u64) -> Result<u64, LogError> {
        let db = self.database()?;
        self.write_failed(self.archive_in(&db, key, watermark))
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
        let txn = self.database()?.begin_read().map_err(backend)?;
        let listing = txn.open_table(LISTING).map_err(backend)?;
        let mut out = Vec::new();
        // Creation numbers ascend, so walking the tenant's range backwards
        // lists newest first.
        for entry in listing
            .range((tenant, 0)..=(tenant, u64::MAX))
            .map_err(backend)?
            .rev()
            .skip(offset)
            .take(limit)
        {
            let (_, session) = entry.map_err(backend)?;
            let session = session.value();
            let key = SessionKey::new(tenant, session).map_err(|e| {
                LogError::Corrupt(format!(
                    "listed session {session:?} of tenant {tenant:?} is not a valid key: {e}"
                ))
            })?;
            out.push(key);
        }
        Ok(out)
    }
}

type IndexTable<'txn> = ::redb::Table<'txn, &'static [u8], &'static [u8]>;
type RecordsTable<'txn> = ::redb::Table<'txn, (&'static str, &'static str, u64), &'static [u8]>;

/// The causal index inside a write transaction.
struct IndexTxn<'a, 'txn> {
    index: &'a mut IndexTable<'txn>,
    records: &'a RecordsTable<'txn>,
}

/// The causal index in one read transaction (a consistent snapshot).
struct IndexSnapshot {
    index: ::redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    records: ::redb::ReadOnlyTable<(&'static str, &'static str, u64), &'static [u8]>,
}

fn index_get(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    key: &[u8],
) -> Result<Option<Vec<u8>>, LogError> {
    Ok(table.get(key).map_err(backend)?.map(|v| v.value().to_vec()))
}

fn index_scan(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
) -> Result<IndexEntries, LogError> {
    use std::ops::Bound;
    let start = match after {
        Some(after) if after >= prefix => Bound::Excluded(after),
        _ => Bound::Included(prefix),
    };
    let mut out = Vec::new();
    for entry in table
        .range::<&[u8]>((start, Bound::Unbounded))
        .map_err(backend)?
    {
        let (k, v) = entry.map_err(backend)?;
        if out.len() >= limit || !k.value().starts_with(prefix) {
            break;
        }
        out.push((k.value().to_vec(), v.value().to_vec()));
    }
    Ok(out)
}

fn record_is_event(
    records: &impl ReadableTable<(&'static str, &'static str, u64), &'static [u8]>,
    key: &SessionKey,
    position: u64,
) -> Result<bool, LogError> {
    // Archiving removes records, so a record that is there is not archived.
    let Some(bytes) = records
        .get((key.tenant(), key.session(), position))
        .map_err(backend)?
    else {
        return Ok(false);
    };
    let (header, _) = decode_header(key, position, bytes.value())?;
    Ok(matches!(header.body, BodyV1::Event { .. }))
}

impl IndexRead for IndexTxn<'_, '_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, LogError> {
        index_get(&*self.index, key)
    }

    fn scan(
        &mut self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<IndexEntries, LogError> {
        index_scan(&*self.index, prefix, after, limit)
    }

    fn is_event(&mut self, key: &SessionKey, position: u64) -> Result<bool, LogError> {
        record_is_event(self.records, key, position)
    }
}

impl IndexWrite for IndexTxn<'_, '_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), LogError> {
        self.index.insert(key, value).map_err(backend)?;
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), LogError> {
        self.index.remove(key).map_err(backend)?;
        Ok(())
    }
}

impl IndexRead for IndexSnapshot {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, LogError> {
        index_get(&self.index, key)
    }

    fn scan(
        &mut self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<IndexEntries, LogError> {
        index_scan(&self.index, prefix, after, limit)
    }

    fn is_event(&mut self, key: &SessionKey, position: u64) -> Result<bool, LogError> {
        record_is_event(&self.records, key, position)
    }
}

impl IndexStore for RedbLog {
    fn read(&self) -> Result<Box<dyn IndexRead + '_>, LogError> {
        let txn = self.database()?.begin_read().map_err(backend)?;
        Ok(Box::new(IndexSnapshot {
            index: txn.open_table(INDEX).map_err(backend)?,
            records: txn.open_table(RECORDS).map_err(backend)?,
        }))
    }

    fn write(
        &self,
        update: &mut dyn FnMut(&mut dyn IndexWrite) -> Result<(), LogError>,
    ) -> Result<(), LogError> {
        let db = self.database()?;
        self.write_failed((|| {
            let txn = self.begin_write(&db)?;
            {
                let mut index = txn.open_table(INDEX).map_err(backend)?;
                let records = txn.open_table(RECORDS).map_err(backend)?;
                update(&mut IndexTxn {
                    index: &mut index,
                    records: &records,
                })?;
            }
            txn.commit().map_err(backend)
        })())
    }
}

/// One session's state while an append is validated.
struct Staged<'k> {
    key: &'k SessionKey,
    /// Its creation number; `None` until it is first recorded.
    seq: Option<u64>,
    meta: SessionMeta,
}

/// A redb failure. redb reports damage and unreadable layouts through its
/// own error type; those are [`LogError::Corrupt`], the rest (I/O, locks,
/// a commit that failed) [`LogError::Backend`].
fn backend(error: impl Into<::redb::Error>) -> LogError {
    match error.into() {
        ::redb::Error::Corrupted(what) => LogError::Corrupt(what),
        error @ (::redb::Error::UpgradeRequired(_)
        | ::redb::Error::TableTypeMismatch { .. }
        | ::redb::Error::TableIsMultimap(_)) => LogError::Corrupt(error.to_string()),
        error => LogError::Backend(Box::new(error)),
    }
}

fn corrupt(key: &SessionKey, position: u64, what: impl fmt::Display) -> LogError {
    LogError::Corrupt(format!("{key}, record at position {position}: {what}"))
}

// ---- stored forms -------------------------------------------------------
//
// Private mirrors of the public types, so that the file format is spelled
// out here and does not change when a public type gains a field. postcard
// writes integers as varints: small numbers cost a byte or two.

#[derive(Serialize, Deserialize)]
struct MetaV1 {
    seq: u64,
    durable_tail: u64,
    archived_through: u64,
    last_revision: u64,
    event_count: u64,
    lives: Vec<LifeV1>,
}

#[derive(Serialize, Deserialize)]
struct LifeV1 {
    incarnation: u64,
    first_position: u64,
}

/// A record's value starts with this; an event's payload follows it raw.
#[derive(Serialize, Deserialize)]
struct RecordHeaderV1<'a> {
    incarnation: u64,
    #[serde(borrow)]
    body: BodyV1<'a>,
}

#[derive(Serialize, Deserialize)]
enum BodyV1<'a> {
    Event {
        revision: u64,
        timestamp_nanos: u64,
        /// `None` for no links at all (one byte, the common case).
        #[serde(borrow)]
        links: Option<LinksV1<'a>>,
    },
    Hole {
        count: u64,
        reason: u8,
    },
}

fn encode_meta(seq: u64, meta: &SessionMeta) -> Result<Vec<u8>, LogError> {
    let stored = MetaV1 {
        seq,
        durable_tail: meta.durable_tail,
        archived_through: meta.archived_through,
        last_revision: meta.last_revision,
        event_count: meta.event_count,
        lives: meta
            .lives
            .iter()
            .map(|life| LifeV1 {
                incarnation: life.incarnation.get(),
                first_position: life.first_position,
            })
            .collect(),
    };
    postcard::to_stdvec(&stored).map_err(|e| LogError::Backend(Box::new(e)))
}

/// Reads a session's meta row: its creation number and meta.
fn read_meta(
    metas: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    key: &SessionKey,
) -> Result<Option<(u64, SessionMeta)>, LogError> {
    let Some(guard) = metas.get((key.tenant(), key.session())).map_err(backend)? else {
        return Ok(None);
    };
    let bad = |what: String| LogError::Corrupt(format!("{key}, meta: {what}"));
    let stored: MetaV1 = postcard::from_bytes(guard.value()).map_err(|e| bad(e.to_string()))?;
    let lives = stored
        .lives
        .iter()
        .map(|life| {
            Incarnation::from_raw(life.incarnation)
                .map(|incarnation| Life {
                    incarnation,
                    first_position: life.first_position,
                })
                .ok_or_else(|| bad("a life has incarnation 0".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if stored.archived_through > stored.durable_tail {
        return Err(bad(format!(
            "archived through {} beyond the tail {}",
            stored.archived_through, stored.durable_tail
        )));
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
    )))
}

/// Writes `record`'s value into `buf` (cleared first, reused across
/// records so a batch allocates once).
fn encode_record(record: &LogRecord, buf: &mut Vec<u8>) -> Result<(), LogError> {
    buf.clear();
    let body = match &record.body {
        RecordBody::Event(event) => BodyV1::Event {
            revision: event.revision,
            timestamp_nanos: event.timestamp_nanos,
            links: LinksV1::of(&event.links),
        },
        RecordBody::Hole { count, reason } => BodyV1::Hole {
            count: *count,
            reason: reason.to_tag(),
        },
    };
    let header = RecordHeaderV1 {
        incarnation: record.incarnation.get(),
        body,
    };
    let taken = std::mem::take(buf);
    *buf = postcard::to_extend(&header, taken).map_err(|e| LogError::Backend(Box::new(e)))?;
    if let RecordBody::Event(event) = &record.body {
        buf.extend_from_slice(&event.payload);
    }
    Ok(())
}

/// Decodes a record's header; the rest is the payload (empty for a hole).
fn decode_header<'a>(
    key: &SessionKey,
    position: u64,
    bytes: &'a [u8],
) -> Result<(RecordHeaderV1<'a>, &'a [u8]), LogError> {
    postcard::take_from_bytes(bytes).map_err(|e| corrupt(key, position, e))
}

/// The last position a stored record covers, checked: the file may say
/// anything.
fn last_position(
    key: &SessionKey,
    position: u64,
    header: &RecordHeaderV1<'_>,
) -> Result<u64, LogError> {
    match header.body {
        BodyV1::Event { .. } => Ok(position),
        BodyV1::Hole { count: 0, .. } => Err(corrupt(key, position, "a hole of zero positions")),
        BodyV1::Hole { count, .. } => position
            .checked_add(count - 1)
            .ok_or_else(|| corrupt(key, position, "a hole past the last position")),
    }
}

fn decode_record(key: &SessionKey, position: u64, bytes: &[u8]) -> Result<LogRecord, LogError> {
    let (header, rest) = decode_header(key, position, bytes)?;
    last_position(key, position, &header)?;
    let incarnation = Incarnation::from_raw(header.incarnation)
        .ok_or_else(|| corrupt(key, position, "incarnation 0"))?;
    let body = match header.body {
        BodyV1::Event {
            revision,
            timestamp_nanos,
            links,
        } => RecordBody::Event(StoredEvent {
            revision,
            timestamp_nanos,
            links: match links {
                None => Links::default(),
                Some(links) => links.into_links(key.tenant()).ok_or_else(|| {
                    corrupt(key, position, "the links' parent is not a valid session id")
                })?,
            },
            payload: rest.to_vec(),
        }),
        BodyV1::Hole { count, reason } => {
            if !rest.is_empty() {
                return Err(corrupt(key, position, "trailing bytes after a hole"));
            }
            let reason = HoleReason::from_tag(reason)
                .ok_or_else(|| corrupt(key, position, format!("unknown hole reason {reason}")))?;
            RecordBody::Hole { count, reason }
        }
    };
    Ok(LogRecord {
        position,
        incarnation,
        body,
    })
}
