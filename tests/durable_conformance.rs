//! Every durable-log backend against the one conformance suite in
//! `support/durable_suite.rs`: `MemoryLog` always, `RedbLog` with the
//! `redb` feature (a fresh file in a fresh temporary directory per test,
//! plus the reopen tests). A new backend adds a fixture and one macro call
//! here (or in its own test file that includes the suite the same way).

#[path = "support/durable_suite.rs"]
#[macro_use]
mod durable_suite;

use livereplay::durable::{DurableLog, MemoryLog};

struct MemoryBackend(MemoryLog);

impl durable_suite::Backend for MemoryBackend {
    fn log(&self) -> &dyn DurableLog {
        &self.0
    }
}

mod memory {
    durable_conformance!(crate::MemoryBackend(livereplay::durable::MemoryLog::new()));
}

#[cfg(feature = "redb")]
mod redb_log {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};

    use livereplay::durable::{DurableLog, RedbDurability, RedbLog, RedbOptions};

    use crate::durable_suite::{Backend, Reopen};

    /// A `RedbLog` in its own temporary directory, removed on drop (also
    /// when the test fails).
    pub struct RedbBackend {
        dir: PathBuf,
        log: Option<RedbLog>,
        options: RedbOptions,
    }

    impl RedbBackend {
        pub fn new() -> Self {
            Self::with(RedbOptions::new())
        }

        pub fn with(options: RedbOptions) -> Self {
            // Tests run in parallel threads, and several test processes may
            // share the temporary directory: the pid, a counter and the
            // time make the name unique.
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let dir = std::env::temp_dir().join(format!(
                "livereplay-conformance-{}-{}-{nanos}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).expect("create the temporary directory");
            let log = RedbLog::open_with(dir.join("log.redb"), options.clone())
                .expect("open a new redb log");
            Self {
                dir,
                log: Some(log),
                options,
            }
        }
    }

    impl Backend for RedbBackend {
        fn log(&self) -> &dyn DurableLog {
            self.log.as_ref().expect("the log is open")
        }
    }

    impl Reopen for RedbBackend {
        fn reopen(&mut self) {
            // Drop first: redb locks the file, so a second handle on it
            // would be refused.
            drop(self.log.take());
            self.log = Some(
                RedbLog::open_with(self.dir.join("log.redb"), self.options.clone())
                    .expect("reopen the redb log"),
            );
        }
    }

    impl Drop for RedbBackend {
        fn drop(&mut self) {
            drop(self.log.take());
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    durable_conformance!(RedbBackend::new());
    durable_reopen_conformance!(RedbBackend::new());

    /// The same suite with the journal, small enough that the suite's
    /// larger calls checkpoint and the journal starts over.
    mod journaled {
        use super::*;

        pub fn journaled() -> RedbOptions {
            RedbOptions::new()
                .durability(RedbDurability::Journaled)
                .journal_bytes(16 * 1024)
        }

        durable_conformance!(RedbBackend::with(journaled()));
        durable_reopen_conformance!(RedbBackend::with(journaled()));

        /// The files as a crash would leave them (copied while the log is
        /// open: redb's pages since the last checkpoint are only in its
        /// memory, the calls only in the journal) open to every
        /// acknowledged call: appends across several checkpoints, an
        /// archive, a causal-index write, a call too large for a frame.
        #[test]
        fn a_crash_image_taken_while_open_recovers_every_acknowledged_call() {
            use crate::durable_suite::{append_ok, events, key, life, load_all, meta_of};

            let backend = RedbBackend::with(journaled());
            let log = backend.log();
            let (a, b) = (key("t", "a"), key("t", "b"));
            append_ok(log, &a, Some(life(1, 1)), &events(1..=3, 1));
            append_ok(log, &b, Some(life(1, 1)), &events(1..=2, 1));
            // ~120 bytes a call against a 16 KiB journal: several rounds.
            for n in 0..400u64 {
                let first = 4 + n * 2;
                append_ok(log, &a, None, &events(first..=first + 1, 1));
            }
            // A call too large for a frame is a checkpoint of its own, among
            // the frames; the calls after it are in frames only, which the
            // image must replay.
            let mut large = events(3..=3, 1);
            if let livereplay::durable::RecordBody::Event(event) = &mut large[0].body {
                event.payload = vec![0x5a; 300 * 1024];
            }
            append_ok(log, &b, None, &large);
            assert_eq!(log.archive_before(&a, 10).expect("archive"), 10);
            let index = log.index().expect("redb keeps the causal index");
            index
                .write(&mut |kv| kv.put(b"journal-test", b"value"))
                .expect("an index write");
            append_ok(log, &b, None, &events(4..=4, 1));
            let tail_a = 3 + 400 * 2;

            let image = backend.dir.join("image");
            std::fs::create_dir_all(&image).expect("image dir");
            for name in ["log.redb", "log.redb.journal"] {
                std::fs::copy(backend.dir.join(name), image.join(name)).expect("copy");
            }
            let recovered =
                RedbLog::open_with(image.join("log.redb"), journaled()).expect("open the image");
            let meta = meta_of(&recovered, &a);
            assert_eq!((meta.durable_tail, meta.archived_through), (tail_a, 10));
            assert_eq!(load_all(&recovered, &a).len() as u64, tail_a - 10);
            assert_eq!(load_all(&recovered, &a), load_all(log, &a));
            assert_eq!(load_all(&recovered, &b), load_all(log, &b));
            let mut read = recovered.index().expect("index").read().expect("read");
            assert_eq!(
                read.get(b"journal-test").expect("get").as_deref(),
                Some(&b"value"[..])
            );
            drop(read);
            drop(recovered);

            // Opened without the journal, the same image still holds every
            // call, and the journal is folded in and removed.
            for name in ["log.redb", "log.redb.journal"] {
                std::fs::copy(backend.dir.join(name), image.join(name)).expect("copy");
            }
            let plain = RedbLog::open(image.join("log.redb")).expect("open without the journal");
            assert_eq!(meta_of(&plain, &a).durable_tail, tail_a);
            assert_eq!(load_all(&plain, &b), load_all(log, &b));
            assert!(!image.join("log.redb.journal").exists());
        }
    }

    /// Backend-specific: a payload the log keeps in chunks, in a call
    /// small enough for a journal frame (258 049 bytes against the 256 KiB
    /// a frame may hold): the frame holds it whole, and the replay of a
    /// crash image chunks it again and reads it back the same.
    #[test]
    fn a_framed_payload_kept_in_chunks_survives_a_crash_image() {
        use crate::durable_suite::{append_ok, events, key, life, load_all};
        use livereplay::durable::RecordBody;

        let options = RedbOptions::new()
            .durability(RedbDurability::Journaled)
            .journal_bytes(4 * 1024 * 1024);
        let backend = RedbBackend::with(options.clone());
        let log = backend.log();
        let k = key("t", "framed");
        append_ok(log, &k, Some(life(1, 1)), &events(1..=1, 1));
        let mut framed = events(2..=2, 1);
        if let RecordBody::Event(event) = &mut framed[0].body {
            event.payload = (0..258_049u32).map(|i| (i % 251) as u8).collect();
        }
        append_ok(log, &k, None, &framed);
        append_ok(log, &k, None, &events(3..=3, 1));
        let journal = std::fs::metadata(backend.dir.join("log.redb.journal"))
            .expect("the journal")
            .len();
        assert!(journal >= 4 * 1024 * 1024, "a journal of {journal} bytes");

        let image = backend.dir.join("image");
        std::fs::create_dir_all(&image).expect("image dir");
        for name in ["log.redb", "log.redb.journal"] {
            std::fs::copy(backend.dir.join(name), image.join(name)).expect("copy");
        }
        // Without the journal the image lacks the calls: the frames were
        // their only durable copy, so the replay below is what reads them.
        let bare = backend.dir.join("bare");
        std::fs::create_dir_all(&bare).expect("bare dir");
        std::fs::copy(backend.dir.join("log.redb"), bare.join("log.redb")).expect("copy");
        let without = RedbLog::open_with(bare.join("log.redb"), options.clone()).expect("open");
        assert!(load_all(&without, &k).len() < 3);
        drop(without);

        let recovered = RedbLog::open_with(image.join("log.redb"), options).expect("open");
        let loaded = load_all(&recovered, &k);
        assert_eq!(loaded.len(), 3);
        assert_eq!(loaded, load_all(log, &k));
        assert_eq!(loaded[1], framed[0]);
    }

    /// Backend-specific: a second handle on an open file is refused with a
    /// typed error rather than sharing (and corrupting) it.
    #[test]
    fn a_second_handle_on_an_open_file_is_refused() {
        let backend = RedbBackend::new();
        let second = RedbLog::open(backend.dir.join("log.redb"));
        assert!(
            matches!(second, Err(livereplay::durable::LogError::Backend(_))),
            "{second:?}"
        );
    }

    /// Backend-specific: a file that is not a redb database is refused
    /// with an error, not a panic.
    #[test]
    fn a_foreign_file_is_refused() {
        let backend = RedbBackend::new();
        let path = backend.dir.join("not-a-log.redb");
        std::fs::write(&path, vec![0x5a; 8192]).expect("write a foreign file");
        assert!(RedbLog::open(&path).is_err());
    }

    /// Backend-specific: deferred durability still reads back at once, and
    /// `sync` plus a clean close keep it.
    #[test]
    fn deferred_durability_reads_back_and_survives_a_clean_close() {
        let backend = RedbBackend::new();
        let path = backend.dir.join("deferred.redb");
        let options = RedbOptions::new().durability(RedbDurability::Deferred);
        let key = crate::durable_suite::key("t", "s");
        {
            let log = RedbLog::open_with(&path, options.clone()).expect("open");
            crate::durable_suite::append_ok(
                &log,
                &key,
                Some(crate::durable_suite::life(1, 1)),
                &crate::durable_suite::events(1..=3, 1),
            );
            log.sync().expect("sync");
            crate::durable_suite::append_ok(
                &log,
                &key,
                None,
                &crate::durable_suite::events(4..=5, 1),
            );
            assert_eq!(crate::durable_suite::meta_of(&log, &key).durable_tail, 5);
        }
        let log = RedbLog::open_with(&path, options).expect("reopen");
        assert_eq!(crate::durable_suite::meta_of(&log, &key).durable_tail, 5);
        assert_eq!(crate::durable_suite::load_all(&log, &key).len(), 5);
    }

    /// Backend-specific: a large payload takes about its own size in the
    /// file. redb keeps a value whole in one leaf page, and pages come in
    /// powers of two, so a 1 MiB payload stored as one value took a 2 MiB
    /// page: twice the bytes written and `fsync`ed. 24 such payloads grew
    /// the file by 64 MiB then, and by 36 MiB in chunks (the rest of the
    /// growth is pages redb frees only at a later commit).
    #[test]
    fn a_large_payload_takes_about_its_own_size_in_the_file() {
        use crate::durable_suite::{append_ok, event, key, life, load_all};
        use livereplay::durable::RecordBody;

        let backend = RedbBackend::new();
        let log = backend.log();
        let k = key("t", "large");
        let path = backend.dir.join("log.redb");
        append_ok(log, &k, Some(life(1, 1)), &[event(1, 1)]);
        let before = std::fs::metadata(&path).expect("the file").len();
        const MIB: u64 = 1024 * 1024;
        let count = 24u64;
        for position in 2..2 + count {
            let mut record = event(position, 1);
            if let RecordBody::Event(event) = &mut record.body {
                event.payload = vec![position as u8; MIB as usize];
            }
            append_ok(log, &k, None, &[record]);
        }
        let grown = std::fs::metadata(&path).expect("the file").len() - before;
        assert!(
            grown < count * MIB * 2,
            "{count} MiB of payloads grew the file by {} MiB",
            grown / MIB
        );
        let loaded = load_all(log, &k);
        assert_eq!(loaded.len() as u64, 1 + count);
        for record in &loaded[1..] {
            let RecordBody::Event(event) = &record.body else {
                panic!("an event")
            };
            assert_eq!(event.payload.len() as u64, MIB);
            assert!(event.payload.iter().all(|&b| b == record.position as u8));
        }
    }

    /// Backend-specific: archiving large events frees their chunks. The
    /// same 16 MiB appended and archived four times over grows the file
    /// about once (redb reuses what a durable commit freed); chunks left
    /// behind would grow it by 16 MiB a round.
    #[test]
    fn archived_large_payloads_free_their_chunks() {
        use crate::durable_suite::{append_ok, event, key, life};
        use livereplay::durable::RecordBody;

        const MIB: u64 = 1024 * 1024;
        let backend = RedbBackend::new();
        let log = backend.log();
        let k = key("t", "recycled");
        let path = backend.dir.join("log.redb");
        append_ok(log, &k, Some(life(1, 1)), &[event(1, 1)]);
        let mut next = 2u64;
        let mut sizes = Vec::new();
        for _round in 0..4 {
            for _ in 0..16 {
                let mut record = event(next, 1);
                if let RecordBody::Event(event) = &mut record.body {
                    event.payload = vec![next as u8; MIB as usize];
                }
                append_ok(log, &k, None, &[record]);
                next += 1;
            }
            log.archive_before(&k, next - 1).expect("archive");
            sizes.push(std::fs::metadata(&path).expect("the file").len());
        }
        let later = sizes[3] - sizes[0];
        assert!(
            later < 16 * MIB,
            "three more rounds of 16 MiB, archived, grew the file by {} MiB (sizes {sizes:?})",
            later / MIB
        );
    }

    /// Backend-specific: a causal index in the earlier layout (one `S`
    /// state entry) is refused at open, by name, rather than numbered again
    /// from 1 over its entries.
    #[test]
    fn an_index_in_the_earlier_layout_is_refused_at_open() {
        let mut backend = RedbBackend::new();
        let index = backend.log().index().expect("an index");
        index
            .write(&mut |kv| kv.put(b"S", &[7, 0]))
            .expect("write the old state entry");
        drop(backend.log.take());
        let reopened = RedbLog::open(backend.dir.join("log.redb"));
        match reopened {
            Err(livereplay::durable::LogError::Corrupt(what)) => {
                assert!(what.contains("earlier layout"), "{what}")
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
}
