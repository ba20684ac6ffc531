//! Server-Sent Events over axum (feature `axum`): the part every host
//! repeats, done once.
//!
//! * [`resume_cursor`] / [`ResumeCursor`] — where a client resumes: its
//!   `Last-Event-ID` header, else its `?cursor=` query parameter, else the
//!   start. Malformed input is a `400`, another session's or tenant's
//!   cursor a `403` ([`ResumeError`] is an axum response with an actionable
//!   plain-text body). Nothing panics on any input.
//! * [`sse_catch_up`] / [`SseCatchUp`] — an SSE response over a
//!   [catch-up](crate::ReplayStore::catch_up) (the durable log, then the
//!   ring, then live), each event rendered by the host's closure.
//!
//! ```
//! use std::sync::Arc;
//! use axum::extract::{Path, State};
//! use axum::response::IntoResponse;
//! use livereplay::http::{Frame, ResumeCursor, ResumeError, SseCatchUp};
//! use livereplay::{ReplayStore, SessionKey};
//!
//! async fn events(
//!     State(store): State<Arc<ReplayStore<String>>>,
//!     Path(id): Path<String>,
//!     resume: ResumeCursor,
//! ) -> Result<impl IntoResponse, ResumeError> {
//!     let key = SessionKey::new("acme", &id)
//!         .map_err(|e| ResumeError::Unavailable { reason: e.to_string() })?;
//!     let cursor = resume.for_session(&key)?; // 400 / 403
//!     SseCatchUp::new(|event: &livereplay::Event<String>| Frame::named("token", event.payload().clone()))
//!         .retry(std::time::Duration::from_millis(500))
//!         .on_gap(|_gap| Some(r#"{"reload":"/transcript"}"#.to_string()))
//!         .serve(&store, &key, &cursor)
//! }
//! # let _: axum::Router = axum::Router::new()
//! #     .route("/sessions/{id}/events", axum::routing::get(events))
//! #     .with_state(Arc::new(ReplayStore::<String>::default()));
//! ```
//!
//! # What a response owns, and its invariants
//!
//! A response owns one catch-up subscription, from the client's cursor on,
//! and nothing else: it never appends, never reads another session, and
//! dropping it (the client went away) releases the subscription.
//!
//! On the wire it is, in order:
//!
//! 1. an **opening frame**: a comment (`: livereplay: resuming after
//!    position N`) and, if configured, `retry:`. No `id:`.
//! 2. one **event frame** per event, in position order, each exactly once:
//!    `id:` is the event's [cursor](crate::Cursor) string, `event:` and
//!    `data:` are what the host's render closure returned ([`Frame`]).
//! 3. at most one **gap frame**, and only last: `event: gap`, `id:` the
//!    gap's [latest](crate::Gap::latest) cursor, `data:` a small JSON object
//!    `{"reason": "trimmed"|"unavailable"|"reset"|"lost", "missed": n|null,
//!    "latest": "<cursor>"}` plus `"snapshot": <host JSON>` if the host's
//!    [`on_gap`](SseCatchUp::on_gap) hook returned one ([`gap_data`]). The
//!    response ends after it.
//! 4. or, if the session was [closed](crate::ReplayStore::close_session)
//!    and every event through its last position was sent, one **closed
//!    frame**, last: `event: closed`, `id:` the cursor at that last
//!    position, `data:` `{"reason": "done"|"error"|"cancelled"|"interrupted",
//!    "last": n, "latest": "<cursor>"}` ([`closed_data`]). The response ends
//!    after it, and a client that reconnects with that id gets the closed
//!    frame again at once: the turn is over, not stalled. A catch-up ends
//!    only at a gap or at the closure.
//!
//! Between frames, **keep-alive** comments (`: keep-alive`), never with an
//! `id:`.
//!
//! Only event, gap and closed frames carry an `id:`, and every `id:` is a cursor
//! meaning "seen everything up to here". So a client that reconnects with
//! its `Last-Event-ID` — after a dropped connection, a response bounded by
//! [`max_events`](SseCatchUp::max_events), a gap, or a server restart over
//! the same durable log — gets exactly the events after the last one it
//! received: none lost, none repeated, across any number of reconnects.
//! After a gap it first reloads the host's snapshot, which covers the
//! session up to that latest cursor.
//!
//! Across a crash this holds for the events the log kept. A stream sends an
//! event as soon as the ring has it, so a client may have seen events a
//! crash takes back (its cursor then gets a `lost` gap). With
//! [`durable_only`](SseCatchUp::durable_only) a stream sends only durable
//! events, and resumes exactly across crashes too.
//!
//! # Costs
//!
//! Catch-up reads the durable log synchronously inside the stream's poll (a
//! local read of at most [`LOG_BATCH`](crate::LOG_BATCH) records a step);
//! the `on_gap` hook also runs there.

mod frame;
mod resume;
mod stream;

pub use self::frame::{closed_data, gap_data, gap_reason, Frame, CLOSED_EVENT, GAP_EVENT};
pub use self::resume::{
    resume_cursor, CursorSource, ResumeCursor, ResumeError, CURSOR_PARAM, LAST_EVENT_ID,
};
pub use self::stream::{sse_catch_up, CatchUpEvents, CatchUpSse, SseCatchUp, DEFAULT_KEEP_ALIVE};
