//! [`RedbLog`]: the durable log in one crash-safe [redb](::redb) file.
//!
//! It owns one redb database file and everything in it: the records of every
//! tenant's sessions, their metadata, and the per-tenant listing. Nothing
//! else may write to the file; redb's whole-file lock refuses a second
//! writer process, and inside the process every call goes through one
//! [`RedbLog`].
//!
//! # Table layout (format 3)
//!
//! | table | key | value |
//! |---|---|---|
//! | `livereplay.records` | `(tenant, session, position)` | a record: postcard header, then the raw payload (none for a large event) |
//! | `livereplay.chunks` | `(tenant, session, position, chunk)` | a large event's payload, in chunks |
//! | `livereplay.meta` | `(tenant, session)` | postcard [`SessionMeta`] plus the session's creation sequence number; then its closure or open turn, if any |
//! | `livereplay.listing` | `(tenant, creation seq)` | the session id |
//! | `livereplay.state` | name | `format` (the layout version), `next_session_seq`, and `journal_through` (module `journal`) |
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
//! through serde. A payload over 252 KiB (`encode::CHUNK_BYTES`) is a
//! *large event*: its header says so and gives the length, and the bytes
//! are chunks of 252 KiB in `livereplay.chunks`, written in the same
//! transaction and removed by the archive that removes the record. redb
//! keeps a value whole in one page and sizes pages in powers of two, so a
//! 1 MiB payload kept whole would take (and write, and `fsync`) a 2 MiB
//! page; in chunks it takes four 256 KiB pages and a small one. Format 3
//! adds a meta's open turn ([`SessionMeta::open_turn`]) and the journal
//! frames that record one. The layouts before, format 1 (before chunks)
//! and format 2, open as format 3 (they have neither), and an older binary
//! then refuses the file by its format instead of misreading it.
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
//!
//! [`RedbDurability::Journaled`] keeps `Immediate`'s promise at a lower
//! price: a call writes one frame of what it changed to a journal beside
//! the file and `fdatasync`s that, then commits redb's transaction without
//! durability; a durable commit writes redb's pages once per
//! [`RedbOptions::journal_bytes`] of frames (a checkpoint), and opening
//! replays the frames redb's file lacks. The `journal` module holds its
//! format and invariants. `livereplay serve` uses it. Measured on this
//! machine (BENCHMARKS.md): appends spread over 10 000 streams went from
//! 20 k to 37 k a second; one stream from about 47 k to 49 k, where the
//! commit was not the bottleneck. A log opened without the journal still
//! replays (then removes) a journal it finds, so switching back loses
//! nothing.
//!
//! # Files
//!
//! This file holds the public types, opening and the reads; the rest is a
//! file per concern, each opening with what it owns and its invariants:
//! `commit.rs` (append and archive transactions, and the journal's
//! replay), `encode.rs` (the stored forms), `index.rs` (the causal index's
//! table), `journal.rs` (the journal file: frames, recovery, checkpoints)
//! and `prefill.rs` (the file's grown space written ahead).

use std::fmt;
use std::path::{Path, PathBuf};

use ::redb::{
    Builder, Database, Durability, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};

use self::encode::{decode_header, decode_stored_record, last_position, read_meta};
use self::journal::Journal;
use super::{DurableLog, IndexStore, LogError, LogRecord, SessionMeta, SessionWrite};
use crate::key::SessionKey;

mod commit;
mod encode;
mod index;
mod journal;
#[cfg(unix)]
mod prefill;

/// `(tenant, session, position)` → record bytes.
const RECORDS: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("livereplay.records");
/// `(tenant, session, position, chunk)` → a large event's payload, in
/// chunks (`encode::CHUNK_BYTES`). Format 2 on.
const CHUNKS: TableDefinition<encode::ChunkKey, &[u8]> = TableDefinition::new("livereplay.chunks");
/// `(tenant, session)` → meta bytes.
const META: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("livereplay.meta");
/// `(tenant, creation seq)` → session id.
const LISTING: TableDefinition<(&str, u64), &str> = TableDefinition::new("livereplay.listing");
/// The causal index's key-value space (`crate::dag`): tuple-encoded keys.
const INDEX: TableDefinition<&[u8], &[u8]> = TableDefinition::new("livereplay.index");
/// Small named counters.
const STATE: TableDefinition<&str, u64> = TableDefinition::new("livereplay.state");

/// The layout this module writes and reads (see the module docs).
const FORMAT: u64 = 3;
/// The layout before large payloads were chunked: it reads as format 3
/// (it has no chunked records and no open turns), and opening it marks it
/// format 3.
const FORMAT_UNCHUNKED: u64 = 1;
/// The layout before metas and journal frames recorded open turns: it
/// reads as format 3 (it has none), and opening it marks it format 3.
const FORMAT_NO_TURNS: u64 = 2;
const FORMAT_KEY: &str = "format";
const NEXT_SEQ_KEY: &str = "next_session_seq";

/// The default page cache. The ring holds the hot tail in memory, so the
/// log is read only by catch-up for older positions; redb's own default
/// (1 GiB) would be a lot of memory to hand a cold path by default.
const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// The default journal size under [`RedbDurability::Journaled`]: a
/// checkpoint every 16 MiB of frames (about 120 000 appends of 100 bytes).
const DEFAULT_JOURNAL_BYTES: u64 = 16 * 1024 * 1024;

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
    /// Every call is durable before it returns, as with `Immediate`, but
    /// through a redo journal beside the file (`<log>.journal`): a call
    /// writes one frame of what it changed and `fdatasync`s it, and redb's
    /// pages are written by a durable commit only once per
    /// [`RedbOptions::journal_bytes`] of frames (a checkpoint). A crash
    /// loses nothing acknowledged: opening replays the frames redb's file
    /// lacks. Costs the journal's size on disk and one checkpoint's pause
    /// every so often; see the `journal` module for the invariants.
    Journaled,
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
    journal_bytes: u64,
}

impl Default for RedbOptions {
    fn default() -> Self {
        Self {
            durability: RedbDurability::Immediate,
            cache_bytes: DEFAULT_CACHE_BYTES,
            check_integrity: false,
            journal_bytes: DEFAULT_JOURNAL_BYTES,
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

    /// The journal's size under [`RedbDurability::Journaled`] (16 MiB by
    /// default): how many bytes of frames a checkpoint comes after, so it
    /// bounds both the pause of a checkpoint and the replay at open. A call
    /// whose frame is larger is a checkpoint itself.
    pub fn journal_bytes(mut self, bytes: u64) -> Self {
        self.journal_bytes = bytes;
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
    /// Under [`RedbDurability::Journaled`]: the journal's size, and the
    /// journal itself (made again by each reopen, which replays it).
    journal: Option<(u64, std::sync::Mutex<Option<Journal>>)>,
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
            // A journal left beside a log file since deleted belongs to
            // that file, not to the new one.
            match std::fs::remove_file(Journal::path_of(&path)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(LogError::Backend(Box::new(e)))
                }
                _ => {}
            }
            Self::create_whole(&path, &options)?;
        }
        let opened_path = path.clone();
        Self::with_opener(
            path,
            &options,
            Box::new(move || {
                let mut builder = Builder::new();
                builder
                    .set_cache_size(options.cache_bytes)
                    .set_check_integrity_on_open(options.check_integrity);
                // Grown space written ahead of the commits (module
                // `prefill`): most commits' fdatasync then writes no block
                // map.
                #[cfg(unix)]
                return builder.create_with_backend(prefill::PrefilledFile::open(&opened_path)?);
                #[cfg(not(unix))]
                builder.create(&opened_path)
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
        let db = std::sync::Arc::new(opener().map_err(backend)?);
        let log = Self {
            db: std::sync::RwLock::new(Some(std::sync::Arc::clone(&db))),
            opener,
            durability: match options.durability {
                RedbDurability::Immediate => Durability::Immediate,
                // The journal makes each call durable; redb's commits
                // need not be.
                RedbDurability::Deferred | RedbDurability::Journaled => Durability::None,
            },
            path,
            journal: (options.durability == RedbDurability::Journaled)
                .then(|| (options.journal_bytes, std::sync::Mutex::new(None))),
        };
        log.init()?;
        log.recover_journal(&db)?;
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
        self.recover_journal(&db)?;
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
        if self.journal.is_some() {
            return self.write_failed(self.with_journal(|journal| journal.checkpoint_now(&db)));
        }
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
            return self.check_index_layout();
        }
        let db = self.database()?;
        let mut txn = db.begin_write().map_err(backend)?;
        txn.set_durability(Durability::Immediate).map_err(backend)?;
        {
            txn.open_table(RECORDS).map_err(backend)?;
            txn.open_table(CHUNKS).map_err(backend)?;
            txn.open_table(META).map_err(backend)?;
            txn.open_table(LISTING).map_err(backend)?;
            txn.open_table(INDEX).map_err(backend)?;
            let mut state = txn.open_table(STATE).map_err(backend)?;
            let format = state.get(FORMAT_KEY).map_err(backend)?.map(|v| v.value());
            match format {
                // An older binary refuses the file from here on: it could
                // not read a chunked record, a meta's open turn or a
                // journal frame that records one.
                None | Some(FORMAT_UNCHUNKED) | Some(FORMAT_NO_TURNS) => {
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
    /// Refuses a causal index the earlier layout wrote (one state entry):
    /// read as it is, it would be numbered again from 1 over its entries.
    fn check_index_layout(&self) -> Result<(), LogError> {
        let txn = self.database()?.begin_read().map_err(backend)?;
        let Ok(index) = txn.open_table(INDEX) else {
            return Ok(());
        };
        if index
            .get(crate::durable::causal::LEGACY_STATE_KEY)
            .map_err(backend)?
            .is_some()
        {
            return Err(LogError::Corrupt(format!(
                "{} holds the causal index in an earlier layout, which this version does not \
                 read; delete the livereplay.index table to start the index over (events \
                 appended before are then not indexed)",
                self.path.display()
            )));
        }
        Ok(())
    }

    fn initialised(&self) -> Result<bool, LogError> {
        let txn = self.database()?.begin_read().map_err(backend)?;
        let tables_exist = txn.open_table(RECORDS).is_ok()
            && txn.open_table(CHUNKS).is_ok()
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

impl Drop for RedbLog {
    /// A clean close checkpoints the journal, so the next open replays
    /// nothing (a failure here only leaves that replay to do).
    fn drop(&mut self) {
        if self.journal.is_none() {
            return;
        }
        let db = self.db.read().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(db) = db {
            let _ = self.with_journal(|journal| journal.checkpoint_now(&db));
        }
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
        let chunks = txn.open_table(CHUNKS).map_err(backend)?;
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
            out.push(decode_stored_record(key, k.value().2, v.value(), &chunks)?);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::Incarnation;
    use crate::durable::{Life, Links, LogRecord, RecordBody, StoredEvent};

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "livereplay-redb-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        dir.join("log.redb")
    }

    fn record(position: u64, len: usize) -> LogRecord {
        LogRecord {
            position,
            incarnation: Incarnation::from_raw(1).expect("incarnation 1"),
            body: RecordBody::Event(StoredEvent {
                revision: position,
                timestamp_nanos: position,
                links: Links::default(),
                payload: vec![position as u8; len],
            }),
        }
    }

    fn append(log: &RedbLog, key: &SessionKey, records: &[LogRecord], first: bool) {
        let new_life = first.then(|| Life {
            incarnation: Incarnation::from_raw(1).expect("incarnation 1"),
            first_position: 1,
        });
        log.append(&[SessionWrite {
            key,
            new_life,
            records,
            closure: None,
            turn_owner: None,
        }])
        .expect("append");
    }

    /// A file of format 1 (no chunks table) opens, reads as it was, takes
    /// a large payload, and is format 2 afterwards, which an older binary
    /// refuses instead of misreading.
    #[test]
    fn a_format_1_file_is_upgraded_at_open() {
        let path = temp_path("format1");
        let key = SessionKey::new("t", "s").expect("a key");
        let small = record(1, 10);
        {
            let log = RedbLog::open(&path).expect("open");
            append(&log, &key, std::slice::from_ref(&small), true);
        }
        {
            let db = Database::open(&path).expect("raw open");
            let txn = db.begin_write().expect("write");
            txn.delete_table(CHUNKS).expect("drop the chunks table");
            txn.open_table(STATE)
                .expect("state")
                .insert(FORMAT_KEY, FORMAT_UNCHUNKED)
                .expect("format 1");
            txn.commit().expect("commit");
        }
        let log = RedbLog::open(&path).expect("a format 1 file opens");
        assert_eq!(
            log.load_after(&key, 0, 10).expect("load"),
            std::slice::from_ref(&small)
        );
        let large = record(2, 3 * encode::CHUNK_BYTES / 2);
        append(&log, &key, std::slice::from_ref(&large), false);
        assert_eq!(log.load_after(&key, 0, 10).expect("load"), [small, large]);
        drop(log);
        let db = Database::open(&path).expect("raw open");
        let txn = db.begin_read().expect("read");
        let format = txn
            .open_table(STATE)
            .expect("state")
            .get(FORMAT_KEY)
            .expect("get");
        assert_eq!(format.map(|v| v.value()), Some(FORMAT));
        drop(txn);
        drop(db);
        let _ = std::fs::remove_dir_all(path.parent().expect("its directory"));
    }

    /// A large event whose chunks are damaged (one missing, one cut short,
    /// one too many) reads as `Corrupt`, never as a shorter payload or a
    /// panic.
    #[test]
    fn damaged_chunks_read_as_corrupt() {
        let path = temp_path("chunks");
        let key = SessionKey::new("t", "s").expect("a key");
        let log = RedbLog::open(&path).expect("open");
        append(&log, &key, &[record(1, 2 * encode::CHUNK_BYTES + 9)], true);
        type Damage = fn(&mut ::redb::Table<'_, encode::ChunkKey, &'static [u8]>);
        let damages: [(&str, Damage); 3] = [
            ("missing", |chunks| {
                chunks.remove(("t", "s", 1, 1)).expect("remove");
            }),
            ("short", |chunks| {
                chunks.insert(("t", "s", 1, 2), &[1u8][..]).expect("insert");
            }),
            ("extra", |chunks| {
                chunks.insert(("t", "s", 1, 3), &[1u8][..]).expect("insert");
            }),
        ];
        for (what, damage) in damages {
            let db = log.database().expect("the database");
            let txn = db.begin_write().expect("write");
            {
                let mut chunks = txn.open_table(CHUNKS).expect("chunks");
                damage(&mut chunks);
            }
            txn.commit().expect("commit");
            match log.load_after(&key, 0, 10) {
                Err(LogError::Corrupt(message)) => assert!(message.contains("chunk"), "{message}"),
                other => panic!("{what}: expected Corrupt, got {other:?}"),
            }
            // Put it right again for the next damage.
            let txn = db.begin_write().expect("write");
            {
                let mut chunks = txn.open_table(CHUNKS).expect("chunks");
                chunks.retain(|_, _| false).expect("clear");
                let payload = vec![1u8; 2 * encode::CHUNK_BYTES + 9];
                for (n, chunk) in payload.chunks(encode::CHUNK_BYTES).enumerate() {
                    chunks
                        .insert(("t", "s", 1, n as u32), chunk)
                        .expect("insert");
                }
            }
            txn.commit().expect("commit");
            assert_eq!(log.load_after(&key, 0, 10).expect("load").len(), 1);
        }
        drop(log);
        let _ = std::fs::remove_dir_all(path.parent().expect("its directory"));
    }
}
