//! # livereplay
//!
//! Synchronous, lock-free, bounded per-session replay rings for live event
//! streams, with cursors, precise gaps and subscriptions.
//!
//! A runtime's turn loop appends events (token deltas, tool calls, commits)
//! inline, without awaiting. A host that lost its connection comes back with
//! the last [`Cursor`] it saw, replays everything after it and keeps
//! listening. A cursor that fell out of the retention window gets a precise
//! [`Gap`], so the host reloads a snapshot from its durable source and
//! resubscribes.
//!
//! ```
//! use livereplay::{Cursor, ReplayStore, Revision, SessionKey};
//!
//! let store = ReplayStore::<String>::default();
//! let key = SessionKey::new("acme", "chat-1")?;
//!
//! // The runtime's turn loop: a handle appends with no lookup and no lock.
//! let session = store.session(&key)?;
//! for token in ["Hel", "lo", "!"] {
//!     session.append(Revision(1), token.to_string())?;
//! }
//!
//! // A host reconnects with the cursor of the first event it saw:
//! let seen = store.replay_after_cursor(&Cursor::start(key.clone()))?[0].cursor();
//! let wire = seen.to_string(); // what it sent as its SSE `id:`
//! let resumed = store.replay_scoped(&key, &wire.parse()?)?;
//! let text: String = resumed.iter().map(|e| e.payload().as_str()).collect();
//! assert_eq!(text, "lo!");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A turn loop that appends from one thread and does not need the events
//! back can take a [`SessionWriter`] from its handle: it keeps the segment
//! it writes to and returns positions (about 1.4x the cost of allocating
//! the event and reading the clock, against 1.8x through the handle). A
//! host that only encodes what it replays can borrow the events with
//! [`ReplayStore::replay_with`] instead of taking references to them.
//!
//! # Guarantees
//!
//! * **Positions** are per session, 1-based, unique and contiguous, also
//!   with many threads appending to one session.
//! * **Readers see only the published prefix**: never a hole, a reordering,
//!   a duplicate, or a stale event from a reused slot.
//! * **Batches** ([`ReplayStore::append_batch`]) become visible all at once.
//! * **No waiting on progress**: append, replay, subscribe,
//!   `current_cursor`, trim and release never wait for another thread to
//!   make progress. The locks they take are short and never held while
//!   user code runs: the session map's shard lock, to look a session up by
//!   key, create or remove it (a [`SessionHandle`] takes none); and, only
//!   while subscribers are parked on a session, its doorbell's wait list,
//!   which an append takes to wake them. The ring's recycler has a lock an
//!   append only ever tries (taken: the step is skipped). Writers never
//!   wait for readers: a slow reader falls behind and is told so.
//! * **One allocation per append** (the event's `Arc`): storage grows
//!   lazily, a segment at a time (the first one short, for small
//!   sessions), up to the capacity; a full ring reuses the segments that
//!   leave its window and frees their events a few per append, so no
//!   append pays for a whole segment; replay costs what it returns, and
//!   [`ReplayStore::replay_with`] lends the events in place instead (no
//!   reference counted, no vector).
//! * **Nothing accepted is silently lost**: an append that returned `Ok` is
//!   replayable, or reported to whoever asks for it as a gap.
//! * **Subscriptions** yield every event after their cursor exactly once,
//!   buffered then live, with no seam; waking them costs an append one fence
//!   and one load when nobody waits.
//!
//! # Gaps
//!
//! [`ReplayStore::replay_after_cursor`] (and subscribe) answer a cursor at
//! position `c`, with published tail `P`:
//!
//! | situation | result |
//! | --- | --- |
//! | `c == P` | `Ok(empty)` |
//! | event `c + 1` is retained | `Ok(events c+1 ..= P)` |
//! | event `c + 1` was trimmed (capacity, age, watermark) | [`GapReason::Trimmed`], with the number missed |
//! | `c > P`, or the session is unknown and `c > 0` | [`GapReason::Unavailable`] |
//! | the cursor's incarnation is not the session's (and `c > 0`) | [`GapReason::Reset`] |
//! | events after `c` were accepted but no tier holds them (a recorded hole, or lost in a crash before they were durable) | [`GapReason::Lost`], with the number missed |
//! | the string is not a cursor | [`CursorError::Malformed`] |
//! | a scoped call got another key's cursor | [`CursorError::WrongSession`] |
//!
//! Every gap carries the latest cursor: after reloading a snapshot, resume
//! after it.
//!
//! Choices where the contract is silent: a cursor at position 0 is served
//! from the start of the current incarnation whatever incarnation it names;
//! age retention is checked on the first event a replay returns (later
//! events are newer), and on every event a subscription yields, against
//! one clock reading per run of at most 16 events (a run ends when the
//! subscription catches up; see [`Subscription`]); a watermark beyond the
//! published tail is clamped to it.
//!
//! # The ring algorithm
//!
//! Each session's positions are cut into segments of up to 64 write-once
//! slots; a small directory of `arc-swap` cells holds the segments covering
//! the newest `capacity` positions. A writer claims a position with one
//! `fetch_add` and writes its event into that position's slot, which no
//! other thread ever writes; when a segment is needed it installs it by
//! compare-and-swap over the exact older segment it saw, so a writer that
//! was lapped can never replace newer data. The published tail is derived
//! by walking forward from a hint while the next slot is written, so
//! readers stop at the first unpublished position and never skip it.
//! Batches are written last to first. Trimming raises a monotonic floor,
//! then takes segments lying wholly below it out of the directory; memory is
//! freed when the last reader lets go of a segment, or a few events per
//! append by the ring's recycler once no reader holds a lapped segment,
//! whose storage then serves the next segment. The invariants are
//! listed in the `ring` module's source; every concurrent protocol is
//! model-checked with `loom` (`loom-tests/`).
//!
//! Sessions live in a `dashmap`; each has a random incarnation carried in
//! its cursors, so a session recreated after removal or a restart never
//! serves an old cursor's positions.
//!
//! # Tiers: the ring forgets nothing it was told
//!
//! ```text
//!   turn loop ── append (no I/O, no lock) ──▶ ring (hot, bounded, lock-free)
//!                                               │  dirty sessions (lock-free queue)
//!                                               ▼
//!                                          persister thread ── one commit per round ──▶ durable log
//!                                                                                        (redb file, or memory)
//!   host ── catch_up(cursor) ──▶ log: (c, durable] ──▶ ring: (durable, tail] ──▶ live
//! ```
//!
//! * **Identity outlives events.** Evicting an idle session leaves a
//!   tombstone (incarnation, last position and revision; bounded by
//!   [`Config::tombstones`] and [`Config::tombstone_ttl`]): cursors are
//!   answered as if it had stayed, and re-creating it continues the same
//!   incarnation at the next position.
//! * **Write-behind.** With [`StoreBuilder::durable`] a persister thread
//!   writes every event to a [`durable::DurableLog`] in position order,
//!   many per commit; the append path gains one load when the session is
//!   already queued. [`ReplayStore::wait_durable`] waits for a position
//!   (never call it from the turn loop). If the log stalls or fails, appends
//!   still succeed; events the ring laps meanwhile are recorded in the log
//!   as a hole, counted in [`Stats::durable`], and reported as
//!   [`GapReason::Lost`] with the count; a wait for a position in a hole
//!   is [`DurableError::Lost`], never durable. Persistence resumes by
//!   itself.
//! * **Removal and take-over.** A session removed and created again (on
//!   this node, or on another over a shared log) continues after every
//!   position the removed one handed out, and its watermark never vouches
//!   for the removed one's events before they are in the log; the removed
//!   session is freed once they are. A session another node took over is
//!   *fenced*: counted, with its key, in [`Stats::durable`], and evictable.
//!   A host that drives persistence itself (deterministic tests) builds the
//!   store with [`DurableOptions::with_persister_thread`]`(false)` and calls
//!   [`ReplayStore::persist_round`].
//! * **Catch-up.** [`ReplayStore::catch_up`] serves any cursor ever issued:
//!   from the log, then the ring, then live, each event exactly once.
//! * **Restarts.** A store over an existing log restores a session's
//!   identity on first touch, as a new *life* (incarnation) that continues
//!   after the durable tail, so no position is handed out twice under one
//!   incarnation. A cursor names the life that wrote its position: one at
//!   or below that life's durable end resumes exactly; one beyond it (seen
//!   by a client, lost in a crash) gets [`GapReason::Lost`] with the count.
//! * **Causal links.** [`ReplayStore::append_linked`] attaches [`Links`]
//!   (parent, correlation, kind, lane, whether it waits for an
//!   acknowledgement) to an event, checked for shape only. The log's
//!   backend indexes them in the same commit as the records; module `dag`
//!   (feature `dag`) queries that index and records acknowledgements.
//! * The ring's own calls (replay, subscribe, `current_cursor`, …) stay
//!   memory-only and never block; only catch-up, the durable watermark
//!   calls, the causal queries and the [`adapters`] read the log.

// One module uses `unsafe`: the ring's write-once slot (`ring::slot`),
// with a `SAFETY` proof at each use, checked under Miri by `.ci/run`. (Loom
// builds add one more, the `Sync` of the slot's loom witness in `sync`.)
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod adapters;
mod catchup;
mod clock;
mod closure;
mod codec;
mod config;
mod cursor;
#[cfg(feature = "dag")]
pub mod dag;
pub mod durable;
mod error;
mod event;
mod handle;
#[cfg(feature = "axum")]
pub mod http;
mod key;
mod links;
mod map;
mod persist;
mod ring;
mod session;
mod store;
// The Durable Streams protocol server (issue 22).
#[cfg(feature = "durable-streams")]
pub mod streams;
mod subscription;
mod sync;
mod tail;
mod traits;
mod wire;

pub use crate::catchup::{CatchUp, LOG_BATCH};
pub use crate::clock::{Clock, CoarseClock, ManualClock, SystemClock};
pub use crate::closure::{CloseReason, Closure};
#[cfg(feature = "postcard")]
pub use crate::codec::Postcard;
pub use crate::codec::{Codec, CodecError, RawBytes, Utf8};
pub use crate::config::{Config, ConfigError, MAX_CAPACITY, MAX_SESSIONS_LIMIT};
pub use crate::cursor::{Cursor, CursorError, Incarnation, Revision, MAX_CURSOR_LEN};
pub use crate::error::{Error, Gap, GapReason, NextTimeoutError, Refusal, TryNextError};
pub use crate::event::{Event, Timestamp};
pub use crate::handle::{SessionHandle, SessionWriter, Turn};
pub use crate::key::{IdPart, KeyError, SessionKey, MAX_ID_LEN};
pub use crate::links::{EventRef, LinkError, Links, MAX_LINK_LEN};
pub use crate::persist::DurableOptions;
pub use crate::ring::LentEvents;
pub use crate::store::{
    DurableError, DurableProgress, DurableStats, DurableWaits, DurableWatcher, ReplayStore, Stats,
    StoreBuilder,
};
pub use crate::subscription::Subscription;
pub use crate::traits::LiveReplayStore;

/// The `Arc` events are shared through: `std::sync::Arc`, or loom's under
/// `cfg(loom)` so model checks see every reference.
pub use crate::sync::Arc;

/// The README's examples compile and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
