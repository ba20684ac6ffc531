//! The redo journal of a [`RedbLog`](super::RedbLog) opened with
//! [`RedbDurability::Journaled`](super::RedbDurability::Journaled): every
//! write call is acknowledged once one frame is on disk, and redb's pages
//! reach the disk later, at checkpoints.
//!
//! Why: a durable redb commit writes every B-tree page the call touched
//! (9-11 for one stream's batch, over a hundred when a batch spreads over
//! 100 000 streams) and then `fdatasync`s, all on the persister's thread,
//! and that commit period is what a durable append waits for. Here a call
//! is one sequential write of what it changed, its frame, and one
//! `fdatasync` of that; the call's redb transaction commits without
//! durability (its pages stay in redb's write buffer), and a durable redb
//! commit every [`RedbOptions::journal_bytes`](super::RedbOptions::journal_bytes)
//! of frames writes the pages once for all of them.
//!
//! It owns one file beside the log, `<log>.journal`, of a fixed size
//! written with zeros up front (the frames then overwrite allocated blocks,
//! so an `fdatasync` writes no block map: see `prefill`), and the
//! `journal_through` entry of the log's state table.
//!
//! # Frames
//!
//! From offset 0: `magic (4) | payload length (u32 LE) | CRC-32C of the
//! sequence number and payload (u32 LE) | sequence number (u64 LE) |
//! payload`. A payload is one [`EntryV1`]: an append's writes (each record
//! whole, header and payload, as the records table stores all but a large
//! event), an archive, or the causal index's puts and deletes.
//!
//! # Invariants
//!
//! * **A call is durable before it is visible.** Its frame is written and
//!   `fdatasync`ed before its redb transaction commits, so no reader ever
//!   sees what a crash could take back, and an acknowledged call is in the
//!   journal or in redb's durable state. A call redb refuses (validation)
//!   writes no frame.
//! * **Frames from offset 0 carry consecutive sequence numbers**, in the
//!   order their transactions commit (redb runs one write transaction at a
//!   time, and the journal is written inside it). Recovery reads frames
//!   until one does not decode, fails its checksum, or breaks the
//!   sequence: that is where the journal ends (a torn last frame, or the
//!   stale frames of an earlier round behind a shorter new one, whose
//!   numbers are all lower).
//! * **`journal_through = S` is written only by durable redb commits**, and
//!   says every frame numbered `S` or lower is in redb's durable state.
//!   Recovery applies the frames numbered above `S`, in order, starting at
//!   `S + 1` (a gap is [`LogError::Corrupt`]), then checkpoints. A frame
//!   replayed is the same call on the same state it first ran on, so it
//!   validates and lands the same way.
//! * **The file is reused from offset 0 only after a durable commit has
//!   recorded every frame in it** (a checkpoint), so overwriting a frame
//!   never loses one that redb's durable state lacks.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ::redb::{Database, Durability, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{backend, STATE};
use crate::closure::{CloseReason, Closure};
use crate::cursor::Incarnation;
use crate::durable::{Life, LogError};
use crate::key::SessionKey;

/// `STATE` key: the highest frame number redb's durable state holds.
pub(super) const THROUGH_KEY: &str = "journal_through";

const MAGIC: [u8; 4] = *b"LRJ1";

/// A call whose frame would be larger than this is a checkpoint instead.
/// The journal wins when a call is small against the pages it dirties (a
/// 100-byte record dirties 4 KiB pages); a large call's pages are about
/// its own bytes, which a frame would write twice (now, and again at the
/// checkpoint). Measured (`benches/durable.rs`, 8 130 events of 64 bytes a
/// commit, frames of about 600 KiB): journaled 0.93x the rate of redb's
/// own durable commits; with this, 1.03x. An append whose payloads alone
/// pass it is not even framed ([`too_large_for_a_frame`]).
const DIRECT_BYTES: usize = 256 * 1024;
const HEADER: usize = 4 + 4 + 4 + 8;

/// What one frame records: one write call.
#[derive(Serialize, Deserialize)]
pub(super) enum EntryV1<'a> {
    /// A [`DurableLog::append`](crate::durable::DurableLog::append); the
    /// records' bytes follow the entry, in order, each `len` long.
    Append(#[serde(borrow)] Vec<WriteV1<'a>>),
    /// A [`DurableLog::archive_before`](crate::durable::DurableLog::archive_before).
    Archive {
        tenant: &'a str,
        session: &'a str,
        watermark: u64,
    },
    /// A causal index write: `(key length, value length or None for a
    /// delete)`, the keys' and values' bytes following in order.
    Index(Vec<(u32, Option<u32>)>),
    /// An append of which a write records an open turn (format 3): as
    /// [`EntryV1::Append`], each write followed by its turn's store. An
    /// append with no turn is still an [`EntryV1::Append`], byte for byte.
    AppendWithTurns(#[serde(borrow)] Vec<(WriteV1<'a>, Option<u64>)>),
}

/// One session's part of an append.
#[derive(Serialize, Deserialize)]
pub(super) struct WriteV1<'a> {
    pub(super) tenant: &'a str,
    pub(super) session: &'a str,
    /// `(incarnation, first position)`.
    pub(super) new_life: Option<(u64, u64)>,
    /// `(reason tag, last)`.
    pub(super) closure: Option<(u8, u64)>,
    /// `(position, stored length)` of each record (borrowed when written,
    /// owned when read back).
    pub(super) records: std::borrow::Cow<'a, [(u64, u32)]>,
}

impl WriteV1<'_> {
    /// The new life, checked: the journal's bytes are not trusted.
    pub(super) fn life(&self) -> Result<Option<Life>, LogError> {
        self.new_life
            .map(|(incarnation, first_position)| {
                Incarnation::from_raw(incarnation)
                    .map(|incarnation| Life {
                        incarnation,
                        first_position,
                    })
                    .ok_or_else(|| LogError::Corrupt("journal: a life of incarnation 0".into()))
            })
            .transpose()
    }

    /// The closure, checked.
    pub(super) fn closure(&self) -> Result<Option<Closure>, LogError> {
        self.closure
            .map(|(tag, last)| {
                CloseReason::from_tag(tag)
                    .map(|reason| Closure { reason, last })
                    .ok_or_else(|| LogError::Corrupt(format!("journal: close reason {tag}")))
            })
            .transpose()
    }
}

/// An entry being built: its postcard part and the raw bytes after it.
#[derive(Default)]
pub(super) struct EntryBuf {
    writes: Vec<WriteOwned>,
    blobs: Vec<u8>,
}

/// [`WriteV1`] while its records are gathered, with its turn.
struct WriteOwned {
    key: SessionKey,
    new_life: Option<(u64, u64)>,
    closure: Option<(u8, u64)>,
    turn_owner: Option<u64>,
    records: Vec<(u64, u32)>,
}

impl WriteOwned {
    fn as_stored(&self) -> WriteV1<'_> {
        WriteV1 {
            tenant: self.key.tenant(),
            session: self.key.session(),
            new_life: self.new_life,
            closure: self.closure,
            records: std::borrow::Cow::Borrowed(&self.records),
        }
    }
}

impl EntryBuf {
    /// Starts the part of `key` (records follow through [`Self::record`]).
    pub(super) fn session(&mut self, write: &crate::durable::SessionWrite<'_>) {
        self.writes.push(WriteOwned {
            key: write.key.clone(),
            new_life: write
                .new_life
                .map(|l| (l.incarnation.get(), l.first_position)),
            closure: write.closure.map(|c| (c.reason.to_tag(), c.last)),
            turn_owner: write.turn_owner,
            records: Vec::new(),
        });
    }

    /// The records' bytes, in order.
    pub(super) fn blobs(&self) -> &[u8] {
        &self.blobs
    }

    /// Adds a record of the last session started, as stored.
    pub(super) fn record(&mut self, position: u64, stored: &[u8]) -> Result<(), LogError> {
        let len = u32::try_from(stored.len()).map_err(|_| too_large())?;
        if let Some(write) = self.writes.last_mut() {
            write.records.push((position, len));
            self.blobs.extend_from_slice(stored);
        }
        Ok(())
    }

    /// The append entry's head (its records' bytes are [`Self::blobs`]).
    pub(super) fn append_head(&self) -> Result<Vec<u8>, LogError> {
        if self.writes.iter().any(|w| w.turn_owner.is_some()) {
            let writes = self.writes.iter().map(|w| (w.as_stored(), w.turn_owner));
            return head(&EntryV1::AppendWithTurns(writes.collect()));
        }
        head(&EntryV1::Append(
            self.writes.iter().map(WriteOwned::as_stored).collect(),
        ))
    }
}

/// Whether an append's frame would surely be larger than [`DIRECT_BYTES`]
/// (its payloads alone are), so it is a checkpoint without building it.
pub(super) fn too_large_for_a_frame(writes: &[crate::durable::SessionWrite<'_>]) -> bool {
    let mut bytes = 0usize;
    for write in writes {
        for record in write.records {
            if let crate::durable::RecordBody::Event(event) = &record.body {
                bytes += event.payload.len();
                if bytes > DIRECT_BYTES {
                    return true;
                }
            }
        }
    }
    false
}

/// An entry's head: what precedes its raw bytes in the payload.
pub(super) fn head(entry: &EntryV1<'_>) -> Result<Vec<u8>, LogError> {
    postcard::to_stdvec(entry).map_err(|e| LogError::Backend(Box::new(e)))
}

/// Splits a payload into its entry and the raw bytes after it.
pub(super) fn decode(payload: &[u8]) -> Result<(EntryV1<'_>, &[u8]), LogError> {
    postcard::take_from_bytes(payload)
        .map_err(|e| LogError::Corrupt(format!("journal: an entry does not decode: {e}")))
}

/// Takes `len` bytes off the front of `rest`.
pub(super) fn take<'a>(rest: &mut &'a [u8], len: u32) -> Result<&'a [u8], LogError> {
    let len = len as usize;
    if rest.len() < len {
        return Err(LogError::Corrupt(
            "journal: an entry's bytes are cut short".into(),
        ));
    }
    let (head, tail) = rest.split_at(len);
    *rest = tail;
    Ok(head)
}

fn too_large() -> LogError {
    LogError::Backend("a journal entry of 4 GiB or more".into())
}

fn io(error: std::io::Error) -> LogError {
    LogError::Backend(Box::new(error))
}

/// The journal file and where the next frame goes.
#[derive(Debug)]
pub(super) struct Journal {
    file: File,
    path: PathBuf,
    /// The file's size, written with zeros up front.
    capacity: u64,
    /// Where the next frame starts.
    offset: u64,
    /// The next frame's number.
    next_seq: u64,
    /// The frame being written (kept to reuse its allocation).
    frame: Vec<u8>,
}

/// What recovery found.
pub(super) struct Recovered {
    pub(super) journal: Journal,
    /// The frames to apply, in order: `(sequence number, payload)`.
    pub(super) frames: Vec<(u64, Vec<u8>)>,
}

impl Journal {
    /// The journal of the log at `log_path`: `<log>.journal`.
    pub(super) fn path_of(log_path: &Path) -> PathBuf {
        let mut name = log_path.as_os_str().to_owned();
        name.push(".journal");
        PathBuf::from(name)
    }

    /// Opens (creating) the journal and reads the frames redb's durable
    /// state lacks: those numbered above `through`. The caller applies
    /// them and then [`checkpoints`](Self::checkpoint).
    pub(super) fn recover(
        path: PathBuf,
        capacity: u64,
        through: u64,
    ) -> Result<Recovered, LogError> {
        let existed = path.exists();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let mut frames = Vec::new();
        let mut at = 0usize;
        let mut previous: Option<u64> = None;
        let mut last = through;
        while let Some((seq, payload, len)) = read_frame(&bytes[at..]) {
            if previous.is_some_and(|p| p.checked_add(1) != Some(seq)) {
                break;
            }
            previous = Some(seq);
            at += len;
            if seq <= through {
                continue;
            }
            if seq != last + 1 {
                return Err(LogError::Corrupt(format!(
                    "{}: the journal's frames resume at {seq}, but the log holds frames only \
                     through {through}",
                    path.display()
                )));
            }
            last = seq;
            frames.push((seq, payload.to_vec()));
        }
        let size = bytes.len() as u64;
        drop(bytes);
        let capacity = capacity.max(size);
        if size < capacity {
            // Zeros, so that frames overwrite allocated blocks.
            file.seek(SeekFrom::Start(size)).map_err(io)?;
            let zeros = vec![0u8; 1 << 20];
            let mut left = capacity - size;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                file.write_all(&zeros[..n]).map_err(io)?;
                left -= n as u64;
            }
            file.sync_all().map_err(io)?;
        }
        if !existed {
            // The new name must survive a crash too.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
            }
        }
        Ok(Recovered {
            journal: Journal {
                file,
                path,
                capacity,
                // Nothing is written until the caller's checkpoint, which
                // makes the whole file reusable.
                offset: capacity,
                next_seq: last + 1,
                frame: Vec::new(),
            },
            frames,
        })
    }

    /// Commits `txn` durably in the journal: its frame first (written and
    /// `fdatasync`ed), then the transaction without durability. A payload
    /// larger than [`DIRECT_BYTES`], or that does not fit in the space
    /// left, makes this commit a checkpoint instead (a durable redb
    /// commit), after which the journal starts over at offset 0.
    pub(super) fn commit(
        &mut self,
        txn: WriteTransaction,
        head: &[u8],
        blobs: &[u8],
    ) -> Result<(), LogError> {
        let payload_len = head.len() + blobs.len();
        let frame_len = (HEADER + payload_len) as u64;
        if payload_len > DIRECT_BYTES || frame_len > self.capacity - self.offset {
            return self.checkpoint(txn);
        }
        let len = u32::try_from(payload_len).map_err(|_| too_large())?;
        let seq = self.next_seq;
        let crc = crc32c::crc32c_append(
            crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), head),
            blobs,
        );
        self.frame.clear();
        self.frame.extend_from_slice(&MAGIC);
        self.frame.extend_from_slice(&len.to_le_bytes());
        self.frame.extend_from_slice(&crc.to_le_bytes());
        self.frame.extend_from_slice(&seq.to_le_bytes());
        self.frame.extend_from_slice(head);
        self.frame.extend_from_slice(blobs);
        self.file.seek(SeekFrom::Start(self.offset)).map_err(io)?;
        self.file.write_all(&self.frame).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        // The frame is durable: the call is. Only now may readers see it.
        self.offset += frame_len;
        self.next_seq = seq + 1;
        txn.commit().map_err(backend)
    }

    /// Commits `txn` durably in redb, recording that every frame so far is
    /// in its durable state, and starts the journal over.
    pub(super) fn checkpoint(&mut self, mut txn: WriteTransaction) -> Result<(), LogError> {
        let through = self.next_seq - 1;
        {
            let mut state = txn.open_table(STATE).map_err(backend)?;
            state.insert(THROUGH_KEY, through).map_err(backend)?;
        }
        txn.set_durability(Durability::Immediate).map_err(backend)?;
        txn.commit().map_err(backend)?;
        self.offset = 0;
        Ok(())
    }

    /// A checkpoint with nothing else in it.
    pub(super) fn checkpoint_now(&mut self, db: &Database) -> Result<(), LogError> {
        let txn = db.begin_write().map_err(backend)?;
        self.checkpoint(txn)
    }

    /// The file it writes.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads `journal_through` from redb's state.
pub(super) fn through(db: &Database) -> Result<u64, LogError> {
    use ::redb::ReadableDatabase;
    let txn = db.begin_read().map_err(backend)?;
    let Ok(state) = txn.open_table(STATE) else {
        return Ok(0);
    };
    Ok(state
        .get(THROUGH_KEY)
        .map_err(backend)?
        .map_or(0, |v| v.value()))
}

/// The frame at the start of `bytes`, if a whole, intact one is there:
/// `(sequence number, payload, frame length)`.
fn read_frame(bytes: &[u8]) -> Option<(u64, &[u8], usize)> {
    if bytes.len() < HEADER || bytes[..4] != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(bytes[4..8].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes[8..12].try_into().ok()?);
    let seq_bytes: [u8; 8] = bytes[12..20].try_into().ok()?;
    let payload = bytes.get(HEADER..HEADER.checked_add(len)?)?;
    let actual = crc32c::crc32c_append(crc32c::crc32c(&seq_bytes), payload);
    (actual == crc).then(|| (u64::from_le_bytes(seq_bytes), payload, HEADER + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), payload);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn a_frame_reads_back_and_any_flipped_byte_ends_the_journal() {
        let bytes = frame(7, b"payload");
        assert_eq!(read_frame(&bytes), Some((7, &b"payload"[..], bytes.len())));
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x40;
            assert_eq!(read_frame(&damaged), None, "byte {i} flipped");
        }
        assert_eq!(read_frame(&bytes[..bytes.len() - 1]), None, "a torn frame");
        assert_eq!(read_frame(&[0u8; 64]), None, "zeros");
    }

    #[test]
    fn recovery_stops_at_a_break_in_the_sequence_and_skips_what_redb_holds() {
        let dir = std::env::temp_dir().join(format!("livereplay-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.journal");
        // A new round (frames 11, 12) over a stale one: a stale frame's
        // number is lower, so it ends the journal and 13 behind it is not
        // read.
        let mut bytes = frame(11, b"k");
        bytes.extend(frame(12, b"l"));
        bytes.extend(frame(4, b"stale"));
        bytes.extend(frame(13, b"behind the stale frame"));
        std::fs::write(&path, &bytes).unwrap();

        let recovered = Journal::recover(path.clone(), 4096, 11).unwrap();
        let seqs: Vec<u64> = recovered.frames.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            seqs,
            vec![12],
            "11 is in redb; the stale bytes end the journal"
        );
        assert_eq!(recovered.journal.next_seq, 13);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            4096,
            "filled to capacity"
        );

        // Frames that resume past a gap are damage, not a journal to trust.
        std::fs::write(&path, frame(20, b"x")).unwrap();
        assert!(matches!(
            Journal::recover(path.clone(), 4096, 11),
            Err(LogError::Corrupt(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
