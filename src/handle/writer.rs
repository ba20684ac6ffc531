//! A session's writer for one thread: appends that skip the directory.
//!
//! # Why
//!
//! An append through a [`SessionHandle`] finds its segment in the ring's
//! directory (an `arc-swap` load, about 13 ns here). It also hands the
//! caller a second reference to the event (an `Arc` clone, and later the
//! caller's drop). A turn loop that appends token after token from one
//! thread needs neither. Its next position is almost always in the segment
//! it wrote to last, and it rarely wants the event back.
//!
//! A [`SessionWriter`] keeps that segment (an `Arc`, taken once per
//! segment) and appends with `&mut self`. When the claimed position falls
//! in the kept segment, the event moves straight into its slot. Otherwise
//! the append goes through the directory as a handle's does, and keeps the
//! segment it found there. An append returns the event's position.
//!
//! # Why writing into a kept segment is correct
//!
//! The directory's protocol has one rule for writers: write position `p`
//! into the segment the directory holds for `p`, or, if the directory
//! holds a later segment there, do not write at all (`p` was lapped). A
//! writer with a kept segment `S` writes `p` into `S` whenever `S` is
//! `p`'s segment by number, without looking at the directory. The write
//! is still correct, because a kept segment is one of three things at
//! that moment:
//!
//! 1. **Still the directory's.** Then the write is exactly a handle's.
//! 2. **Displaced by a later segment.** Then `p` was lapped, whatever `S`
//!    holds. Readers find the later segment, report `p` trimmed, and never
//!    see `S`'s slots. The published tail counts `p` as settled by the lap,
//!    as it does for a handle's writer that was lapped.
//! 3. **Taken out by a trim.** A trim takes out only segments whose
//!    positions are all at or below the floor. Readers check the floor
//!    first and report `p` trimmed, and the tail counts it as settled.
//!
//! A segment's number and slots change only when the recycler renumbers
//! it, and it does that only to a segment it holds alone (`Arc::get_mut`).
//! A kept segment is never alone, so it is never renumbered or emptied
//! under its writer. This is the same argument that keeps a subscription's
//! held segment safe (`ring::recycler`).
//!
//! # Costs a caller should know
//!
//! * While a writer keeps a segment that the ring has displaced (it
//!   stopped appending while others lapped it), the recycler cannot reuse
//!   that segment's storage. The next installation allocates a fresh one,
//!   and the kept segment (with its events) is freed by the writer's next
//!   append to another segment. Each writer keeps at most one segment.
//! * Links (`append_linked`) and batches go through the handle
//!   ([`SessionWriter::handle`]).

use std::fmt;

use super::SessionHandle;
use crate::cursor::Revision;
use crate::error::Error;
use crate::ring::Segment;
use crate::session::Session;
use crate::sync::Arc;

/// Appends to one session from one thread, skipping the directory lookup
/// and the caller's reference that [`SessionHandle::append`] pays for.
///
/// Made by [`SessionHandle::writer`]. It holds the session like a handle
/// (no eviction while it lives) and keeps the segment it last wrote to
/// (see the module docs). It is `Send`: a turn loop can move it to its
/// thread. Appending needs `&mut self`, so one writer serves one thread at
/// a time. Any number of writers and handles can append to the same session
/// at once, and positions stay unique and contiguous.
///
/// ```
/// use livereplay::{Cursor, ReplayStore, Revision, SessionKey};
///
/// let store = ReplayStore::<String>::default();
/// let key = SessionKey::new("tenant", "chat")?;
/// let mut writer = store.session(&key)?.writer();
/// for token in ["Hel", "lo", "!"] {
///     let position = writer.append(Revision(1), token.to_owned())?;
///     assert!(position >= 1);
/// }
/// let text: String = store
///     .replay_after_cursor(&Cursor::start(key))?
///     .iter()
///     .map(|event| event.payload().as_str())
///     .collect();
/// assert_eq!(text, "Hello!");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SessionWriter<T> {
    handle: SessionHandle<T>,
    /// The segment the last append wrote to (or found lapped: `None`).
    kept: Option<Arc<Segment<T>>>,
}

impl<T: Send + Sync + 'static> SessionWriter<T> {
    pub(crate) fn new(handle: SessionHandle<T>) -> Self {
        Self { handle, kept: None }
    }

    /// Appends one event and returns its position. The event is not
    /// handed back; a subscriber or a replay reads it like any other.
    ///
    /// Refused like [`SessionHandle::append`]: a payload over the store's
    /// limit, or a session removed since the writer was made.
    #[inline]
    pub fn append(&mut self, revision: Revision, payload: T) -> Result<u64, Error> {
        Ok(Session::append_through(
            self.handle.session(),
            revision,
            payload,
            &mut self.kept,
        )?)
    }

    /// The handle this writer appends through: for links, batches, replay,
    /// subscriptions and cursors.
    pub fn handle(&self) -> &SessionHandle<T> {
        &self.handle
    }
}

impl<T> fmt::Debug for SessionWriter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionWriter")
            .field("handle", &self.handle)
            .field("kept_segment", &self.kept.as_ref().map(|s| s.number()))
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::config::Config;
    use crate::cursor::{Cursor, Revision};
    use crate::error::{Error, Refusal};
    use crate::key::SessionKey;
    use crate::store::ReplayStore;

    fn key() -> SessionKey {
        SessionKey::new("t", "s").unwrap()
    }

    fn payloads(store: &ReplayStore<u64>, key: &SessionKey, after: u64) -> Vec<(u64, u64)> {
        let cursor = Cursor::new(key.clone(), None, Revision::default(), after);
        store
            .replay_with(&cursor, |events| {
                events
                    .map(|event| (event.position(), *event.payload()))
                    .collect()
            })
            .expect("replay")
    }

    #[test]
    fn a_writer_appends_across_segments_and_laps() {
        // Capacity 64: a first segment of 16, then 64 each; 300 appends lap
        // the ring several times through the kept segment.
        let store = ReplayStore::<u64>::new(Config::default().with_capacity(64)).unwrap();
        let handle = store.session(&key()).unwrap();
        let mut writer = handle.writer();
        for payload in 1..=300 {
            assert_eq!(writer.append(Revision(1), payload * 10).unwrap(), payload);
            let window = payload.saturating_sub(64);
            let expected: Vec<_> = (window + 1..=payload).map(|p| (p, p * 10)).collect();
            assert_eq!(payloads(&store, &key(), window), expected, "at {payload}");
        }
        assert_eq!(store.stats().appends, 300);
    }

    #[test]
    fn writers_and_handles_share_one_sequence_of_positions() {
        let store = ReplayStore::<u64>::new(Config::default().with_capacity(8)).unwrap();
        let handle = store.session(&key()).unwrap();
        let (mut first, mut second) = (handle.writer(), handle.writer());
        let mut order = Vec::new();
        for round in 0..10 {
            order.push(first.append(Revision(1), round * 3).unwrap());
            order.push(
                handle
                    .append(Revision(1), round * 3 + 1)
                    .unwrap()
                    .position(),
            );
            order.push(second.append(Revision(1), round * 3 + 2).unwrap());
        }
        assert!(order.iter().copied().eq(1..=30));
        let kept: Vec<_> = (23..=30).map(|p| (p, p - 1)).collect();
        assert_eq!(payloads(&store, &key(), 22), kept);
    }

    #[test]
    fn a_writer_moves_on_from_a_segment_lapped_and_trimmed_under_it() {
        // Capacity 2: segments of 2 positions. The writer keeps segment 0
        // (positions 1 and 2) while a handle laps it and a release trims.
        let store = ReplayStore::<u64>::new(Config::default().with_capacity(2)).unwrap();
        let handle = store.session(&key()).unwrap();
        let mut writer = handle.writer();
        assert_eq!(writer.append(Revision(1), 1).unwrap(), 1);
        for payload in 2..=6 {
            handle.append(Revision(1), payload).unwrap();
        }
        handle.release_through(6);
        // Position 7 is in segment 3; the kept segment 0 is not used.
        assert_eq!(writer.append(Revision(1), 7).unwrap(), 7);
        assert_eq!(writer.append(Revision(1), 8).unwrap(), 8);
        assert_eq!(payloads(&store, &key(), 6), [(7, 7), (8, 8)]);
    }

    #[test]
    fn a_writer_of_a_removed_session_is_refused() {
        let store = ReplayStore::<u64>::default();
        let mut writer = store.session(&key()).unwrap().writer();
        writer.append(Revision(1), 1).unwrap();
        store.remove_session(&key());
        assert!(matches!(
            writer.append(Revision(1), 2),
            Err(Error::Refused(Refusal::SessionRemoved))
        ));
    }
}
