//! The redb file's storage: redb's own file backend, except that the space
//! redb grows the file by is written with zeros a little ahead of redb's
//! own writes into it.
//!
//! Why: redb grows its file with `set_len`, which leaves a hole, so a
//! commit that writes a page there makes the filesystem allocate the
//! block, and its `fdatasync` must then also write the file's block map (a
//! second, dependent device write). Most commits of an appending log write
//! one new page, so most commits paid it. Measured on this machine's ext4:
//! three 4 KiB writes and an `fdatasync`, 250-265 µs into holes, 160 µs
//! into blocks written before. Zeros written ahead make the commits that
//! follow overwrite allocated blocks; the block map is written once per
//! [`AHEAD`] bytes of growth, by the commit that first writes there.
//!
//! Not for large pages ([`LARGE`] and up: a record of 1 MiB takes a 2 MiB
//! page). Filling around them wrote as many zeros as data (1 532 MiB
//! written for 50 × 1 MiB appends six times, against 625 MiB without), for
//! a block-map write that is a small share of such a commit; the space a
//! large write skips stays a hole.
//!
//! # Invariants
//!
//! * **Only holes are filled.** Bytes from `frontier` to `grown_to` are
//!   space this backend's `set_len` added (zeros, by `set_len`'s contract)
//!   that no write has touched: every write ends at or below `frontier`,
//!   or moves it past its end first (filling the gap before it with zeros,
//!   which is what the hole read as, or leaving it a hole if the write is
//!   large; never zeroing the write's own range). So no byte redb wrote is
//!   ever overwritten, and every byte reads as before.
//! * What this backend knows starts at open: a file opened with holes from
//!   an earlier process keeps them (they fill as before, allocated on
//!   first write); space grown from then on is filled ahead.
//! * Durability is redb's: the zeros are plain writes, made durable by the
//!   `sync_data` of the commit that wrote them, like its pages.

use std::fs::File;
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use ::redb::backends::FileBackend;
use ::redb::{BackendError, StorageBackend};

/// How far ahead of the highest write into grown space zeros are written.
pub(super) const AHEAD: u64 = 1 << 20;

/// A write at least this large into grown space is not filled around: it
/// moves the frontier past itself and leaves the holes it skips (see
/// [`PrefilledFile::write`]).
pub(super) const LARGE: usize = 256 << 10;

/// Redb's file backend, filling grown space ahead of its writes.
#[derive(Debug)]
pub(super) struct PrefilledFile {
    inner: FileBackend,
    /// The same file, for the zeros.
    zeros: File,
    /// `(frontier, grown_to)`: see the module docs.
    unfilled: Mutex<(u64, u64)>,
    /// Bytes of zeros written (what the tests check).
    #[cfg(test)]
    zeroed: std::sync::atomic::AtomicU64,
}

impl PrefilledFile {
    /// Opens (creating if need be) the file at `path`, as redb's
    /// `Builder::create` does.
    pub(super) fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let zeros = file.try_clone()?;
        let len = file.metadata()?.len();
        let inner = FileBackend::new(file).map_err(std::io::Error::other)?;
        Ok(Self {
            inner,
            zeros,
            unfilled: Mutex::new((len, len)),
            #[cfg(test)]
            zeroed: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Writes zeros over `from..to`.
    fn fill(&self, from: u64, to: u64) -> std::io::Result<()> {
        const CHUNK: usize = 64 << 10;
        let block = [0u8; CHUNK];
        let mut at = from;
        while at < to {
            let len = usize::try_from(to - at).map_or(CHUNK, |left| left.min(CHUNK));
            self.zeros.write_all_at(&block[..len], at)?;
            #[cfg(test)]
            self.zeroed
                .fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed);
            at += len as u64;
        }
        Ok(())
    }
}

impl StorageBackend for PrefilledFile {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let mut unfilled = self.unfilled.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.inner.len()?;
        self.inner.set_len(len)?;
        let (frontier, grown_to) = &mut *unfilled;
        if len > old {
            if !(*frontier < *grown_to && *grown_to == old) {
                // Nothing is left unfilled up to the old end: the holes
                // start there.
                *frontier = old;
            }
            *grown_to = len;
        } else {
            *grown_to = (*grown_to).min(len);
            *frontier = (*frontier).min(len);
        }
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let end = offset.saturating_add(data.len() as u64);
        {
            let mut unfilled = self.unfilled.lock().unwrap_or_else(|e| e.into_inner());
            let (frontier, grown_to) = &mut *unfilled;
            if end > *frontier && *frontier < *grown_to {
                let to = end.saturating_add(AHEAD).min(*grown_to);
                // Not the write's own range: its data is what it reads as,
                // so zeros there would be written only to be overwritten
                // (a large page is half of what such a commit writes).
                if data.len() < LARGE {
                    self.fill(*frontier, offset.clamp(*frontier, to))?;
                    self.fill(end.clamp(*frontier, to), to)?;
                    *frontier = to;
                } else {
                    // A large page: its commit's block map is a small
                    // share of what it writes, and the space before it is
                    // alignment for large pages more than room for small
                    // ones. Zeros there doubled what such commits wrote.
                    *frontier = end.min(*grown_to);
                }
            }
        }
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    const MIB: u64 = 1 << 20;

    fn read(file: &PrefilledFile, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        file.read(offset, &mut out).expect("read");
        out
    }

    /// Grown space is written ahead of the writes into it (so it is
    /// allocated), and no byte written before, by this process or an
    /// earlier one, is ever overwritten by the zeros: across writes beyond
    /// and behind the frontier, and a shrink and regrowth.
    #[test]
    fn zeros_fill_only_the_grown_holes() {
        let dir = std::env::temp_dir().join(format!("livereplay-prefill-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("file");
        std::fs::write(&path, vec![0xAA; 8192]).expect("earlier data");
        let file = PrefilledFile::open(&path).expect("open");

        file.set_len(8 * MIB).expect("grow");
        file.write(3 * MIB, &[1; 4096])
            .expect("write beyond the frontier");
        file.write(MIB, &[2; 4096])
            .expect("write behind the frontier");
        file.write(6 * MIB, &[3; 4096]).expect("write beyond again");
        assert_eq!(read(&file, 0, 8192), vec![0xAA; 8192]);
        assert_eq!(read(&file, 8192, 4096), vec![0; 4096]);
        assert_eq!(read(&file, MIB, 4096), vec![2; 4096]);
        assert_eq!(read(&file, 3 * MIB, 4096), vec![1; 4096]);
        assert_eq!(read(&file, 6 * MIB, 4096), vec![3; 4096]);
        assert_eq!(read(&file, 6 * MIB + 4096, 4096), vec![0; 4096]);
        file.sync_data().expect("sync");
        // Filled through the last write and AHEAD past it (capped at the
        // end): allocated, not holes.
        let allocated = std::fs::metadata(&path).expect("metadata").blocks() * 512;
        assert!(allocated >= 7 * MIB, "only {allocated} bytes allocated");

        file.set_len(2 * MIB).expect("shrink");
        file.set_len(4 * MIB).expect("grow again");
        file.write(3 * MIB, &[4; 4096])
            .expect("write into the regrown space");
        assert_eq!(read(&file, 0, 8192), vec![0xAA; 8192]);
        assert_eq!(read(&file, MIB, 4096), vec![2; 4096]);
        assert_eq!(read(&file, 2 * MIB, 4096), vec![0; 4096]);
        assert_eq!(read(&file, 3 * MIB, 4096), vec![4; 4096]);
        assert_eq!(file.len().expect("len"), 4 * MIB);
        drop(file);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Small writes beyond the frontier are not zeroed first (the zeros
    /// cover the gap before them and `AHEAD` after them), and a large write
    /// is not filled around at all: its own bytes are written once, and
    /// the space it skips stays a hole that reads as zeros.
    #[test]
    fn a_write_into_grown_space_is_written_once() {
        let dir =
            std::env::temp_dir().join(format!("livereplay-prefill-once-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("file");
        std::fs::write(&path, vec![0xAA; 8192]).expect("earlier data");
        let file = PrefilledFile::open(&path).expect("open");
        let zeroed = || file.zeroed.load(std::sync::atomic::Ordering::Relaxed);
        file.set_len(16 * MIB).expect("grow");

        file.write(MIB, &[7; 4096]).expect("a small write");
        assert_eq!(
            zeroed(),
            (MIB - 8192) + AHEAD,
            "the gap and AHEAD, not the write"
        );
        assert_eq!(read(&file, MIB, 4096), vec![7; 4096]);
        // Straddling the frontier: AHEAD past its end only.
        let frontier = MIB + 4096 + AHEAD;
        file.write(frontier - 4096, &[8; 8192])
            .expect("a straddling write");
        assert_eq!(zeroed(), (MIB - 8192) + 2 * AHEAD);
        assert_eq!(read(&file, frontier - 4096, 8192), vec![8; 8192]);

        let before = zeroed();
        file.write(8 * MIB, &vec![9; 2 * MIB as usize])
            .expect("a large write");
        assert_eq!(zeroed(), before, "no zeros around a large write");
        assert_eq!(
            read(&file, 8 * MIB, 2 * MIB as usize),
            vec![9; 2 * MIB as usize]
        );
        assert_eq!(
            read(&file, 6 * MIB, 4096),
            vec![0; 4096],
            "a skipped hole reads as zeros"
        );
        // Behind the large write: no zeros over anything (only holes are
        // filled), and the data reads back.
        file.write(5 * MIB, &[10; 4096])
            .expect("a write into a skipped hole");
        assert_eq!(zeroed(), before);
        assert_eq!(read(&file, 5 * MIB, 4096), vec![10; 4096]);
        assert_eq!(read(&file, 0, 8192), vec![0xAA; 8192]);
        drop(file);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
