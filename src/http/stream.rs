//! An SSE response over a [catch-up](crate::CatchUp): every event after the
//! client's cursor, exactly once, each with its cursor as its `id:`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::future::Future as _;
use std::num::NonZeroU64;
use std::pin::Pin;
use std::sync::Arc as StdArc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, KeepAliveStream, Sse};
use futures_core::Stream;

use super::frame::{closed_frame, event_frame, gap_frame, opening_frame, Frame};
use super::resume::{CursorSource, ResumeError};
use crate::catchup::CatchUp;
use crate::cursor::{Cursor, CursorError};
use crate::error::{Error, Gap, GapReason};
use crate::event::Event;
use crate::key::SessionKey;
use crate::store::ReplayStore;
use crate::sync::Arc;

/// The default interval between keep-alive comments.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The response [`sse_catch_up`] and [`SseCatchUp::serve`] return.
pub type CatchUpSse<T> = Sse<KeepAliveStream<CatchUpEvents<T>>>;

type Render<T> = Box<dyn Fn(&Event<T>) -> Frame + Send + Sync>;
type GapHook = Box<dyn FnOnce(&Gap) -> Option<String> + Send>;

/// An SSE response of every event after `cursor` in `key`'s session, from
/// the durable log, then the ring, then live ([`ReplayStore::catch_up`]),
/// each rendered by `render` and sent with its cursor as its `id:`. With
/// the defaults of [`SseCatchUp`]: keep-alive comments every 15 s, no
/// `retry:` hint, no snapshot in the gap frame.
///
/// A cursor the store cannot serve is not an error: the response is a `200`
/// whose stream is that one gap frame (see the [module docs](super)).
/// `Err` only for a cursor of another session (`403`) or a store that
/// cannot start (`503`). Call it inside a tokio runtime (as axum handlers
/// are): see [`SseCatchUp::serve`].
///
/// ```
/// use axum::extract::{Path, State};
/// use axum::response::IntoResponse;
/// use livereplay::http::{sse_catch_up, Frame, ResumeCursor, ResumeError};
/// use livereplay::{ReplayStore, SessionKey};
/// use std::sync::Arc;
///
/// async fn events(
///     State(store): State<Arc<ReplayStore<String>>>,
///     Path(id): Path<String>,
///     resume: ResumeCursor,
/// ) -> Result<impl IntoResponse, ResumeError> {
///     let key = SessionKey::new("acme", &id).map_err(|e| ResumeError::Unavailable { reason: e.to_string() })?;
///     let cursor = resume.for_session(&key)?;
///     sse_catch_up(&store, &key, &cursor, |event| Frame::named("token", event.payload().clone()))
/// }
/// let app: axum::Router = axum::Router::new()
///     .route("/sessions/{id}/events", axum::routing::get(events))
///     .with_state(Arc::new(ReplayStore::<String>::default()));
/// # let _ = app;
/// ```
pub fn sse_catch_up<T, R>(
    store: &ReplayStore<T>,
    key: &SessionKey,
    cursor: &Cursor,
    render: impl Fn(&Event<T>) -> R + Send + Sync + 'static,
) -> Result<CatchUpSse<T>, ResumeError>
where
    T: Send + Sync + 'static,
    R: Into<Frame>,
{
    SseCatchUp::new(render).serve(store, key, cursor)
}

/// [`sse_catch_up`] with options: a `retry:` hint, the keep-alive interval,
/// a snapshot for the gap frame, a bound on events per response, and
/// durable-only delivery.
///
/// ```
/// use std::time::Duration;
/// use livereplay::http::{Frame, SseCatchUp};
/// use livereplay::{Cursor, ReplayStore, SessionKey};
///
/// # let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
/// # let _inside = runtime.enter(); // as in any axum handler
/// let store = ReplayStore::<String>::default();
/// let key = SessionKey::new("acme", "chat-1")?;
/// let response = SseCatchUp::new(|event: &livereplay::Event<String>| Frame::named("token", event.payload().clone()))
///     .retry(Duration::from_millis(500))
///     .keep_alive(Duration::from_secs(20))
///     .on_gap(|gap| Some(format!("{{\"reload\":{}}}", gap.latest.position())))
///     .serve(&store, &key, &Cursor::start(key.clone()))?;
/// # let _ = response;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SseCatchUp<T> {
    render: Render<T>,
    retry: Option<Duration>,
    keep_alive: Duration,
    max_events: Option<NonZeroU64>,
    on_gap: Option<GapHook>,
    durable_only: Option<StdArc<ReplayStore<T>>>,
}

impl<T: Send + Sync + 'static> SseCatchUp<T> {
    /// Options with `render` turning each event into its frame's name and
    /// data (anything `Into<Frame>`: a `String` is unnamed data).
    pub fn new<R: Into<Frame>>(render: impl Fn(&Event<T>) -> R + Send + Sync + 'static) -> Self {
        Self {
            render: Box::new(move |event| render(event).into()),
            retry: None,
            keep_alive: DEFAULT_KEEP_ALIVE,
            max_events: None,
            on_gap: None,
            durable_only: None,
        }
    }

    /// Sends `retry:` in the opening frame: how long a browser waits before
    /// it reconnects.
    pub fn retry(mut self, retry: Duration) -> Self {
        self.retry = Some(retry);
        self
    }

    /// The interval of the keep-alive comments (default 15 s; clamped to at
    /// least 1 ms).
    pub fn keep_alive(mut self, interval: Duration) -> Self {
        self.keep_alive = interval.max(Duration::from_millis(1));
        self
    }

    /// Ends each response after `max` events (not counting the gap frame):
    /// the client reconnects with its last id and resumes. Bounds how long
    /// one response lives; demos use it to force reconnects.
    pub fn max_events(mut self, max: NonZeroU64) -> Self {
        self.max_events = Some(max);
        self
    }

    /// Called once, with the gap, when one ends the stream: the JSON value
    /// it returns goes into the gap frame's data as `"snapshot"` (verbatim:
    /// it must be valid JSON). The snapshot must cover the session up to
    /// [`Gap::latest`] and no further: that cursor is the frame's `id:`,
    /// where the client resumes. Runs inside the stream's poll: keep it
    /// short.
    pub fn on_gap(mut self, hook: impl FnOnce(&Gap) -> Option<String> + Send + 'static) -> Self {
        self.on_gap = Some(Box::new(hook));
        self
    }

    /// Sends an event only once it is durable in `store`'s log (pass the
    /// store the stream is served from), so a client never sees an event a
    /// crash could take back: after a restart every cursor it holds resumes
    /// exactly. Costs each event the persister's latency. No effect on a
    /// store without a durable log. (While it holds an event back the stream
    /// waits on [`ReplayStore::durable_progress`], the persister's next
    /// commit, which it also hurries.)
    pub fn durable_only(mut self, store: StdArc<ReplayStore<T>>) -> Self {
        self.durable_only = store.durable_log().is_some().then_some(store);
        self
    }

    /// Starts the catch-up after `cursor` in `key`'s session and returns
    /// the SSE response. See [`sse_catch_up`].
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime with timers (the keep-alive is a tokio
    /// timer); an axum handler always runs inside one.
    pub fn serve(
        self,
        store: &ReplayStore<T>,
        key: &SessionKey,
        cursor: &Cursor,
    ) -> Result<CatchUpSse<T>, ResumeError> {
        let keep_alive = KeepAlive::new()
            .interval(self.keep_alive)
            .text("keep-alive");
        Ok(Sse::new(self.events(store, key, cursor)?).keep_alive(keep_alive))
    }

    /// The frames, without the response and its keep-alives.
    fn events(
        self,
        store: &ReplayStore<T>,
        key: &SessionKey,
        cursor: &Cursor,
    ) -> Result<CatchUpEvents<T>, ResumeError> {
        let (catch_up, gap) = match store.catch_up_scoped(key, cursor) {
            Ok(catch_up) => (Some(catch_up), None),
            Err(Error::Gap(gap)) => (None, Some(gap)),
            Err(Error::Cursor(CursorError::WrongSession)) => {
                return Err(ResumeError::WrongSession {
                    from: CursorSource::Argument,
                })
            }
            Err(Error::Cursor(error)) => {
                return Err(ResumeError::Malformed {
                    from: CursorSource::Argument,
                    error,
                })
            }
            // Catch-up appends nothing, so `Link` cannot happen; it is
            // reported as a refusal rather than trusted away.
            Err(error @ (Error::Refused(_) | Error::Link(_))) => {
                return Err(ResumeError::Unavailable {
                    reason: error.to_string(),
                })
            }
        };
        Ok(CatchUpEvents {
            key: key.clone(),
            catch_up,
            gap,
            render: self.render,
            pending: VecDeque::from([opening_frame(cursor.position(), self.retry)]),
            on_gap: self.on_gap,
            sent: 0,
            max_events: self.max_events,
            durable: self.durable_only.map(|store| DurableGate {
                store,
                held: None,
                progress: None,
                known_durable: 0,
                last_sent: LastSent::of_cursor(cursor),
            }),
            ended: false,
        })
    }
}

impl<T> fmt::Debug for SseCatchUp<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseCatchUp")
            .field("retry", &self.retry)
            .field("keep_alive", &self.keep_alive)
            .field("max_events", &self.max_events)
            .field("on_gap", &self.on_gap.is_some())
            .field("durable_only", &self.durable_only.is_some())
            .finish_non_exhaustive()
    }
}

/// Holds an event back until the store says it is durable.
struct DurableGate<T> {
    store: StdArc<ReplayStore<T>>,
    held: Option<Arc<Event<T>>>,
    /// Armed on the persister's next commit while an event is held.
    progress: Option<crate::DurableProgress>,
    /// The highest durable position seen: events at or below it pass
    /// without asking again (on a host node each ask reads the log).
    known_durable: u64,
    /// The last event sent (or the starting cursor): where a gap for an
    /// event found lost starts. Kept as plain values, not a `Cursor`, so
    /// that sending an event counts no reference to the key.
    last_sent: LastSent,
}

/// What a [`Cursor`] at the last event sent holds, but its key.
#[derive(Clone, Copy)]
struct LastSent {
    incarnation: Option<crate::cursor::Incarnation>,
    revision: crate::cursor::Revision,
    position: u64,
}

impl LastSent {
    fn of_cursor(cursor: &Cursor) -> Self {
        Self {
            incarnation: cursor.incarnation(),
            revision: cursor.revision(),
            position: cursor.position(),
        }
    }

    fn cursor(self, key: &SessionKey) -> Cursor {
        Cursor::new(key.clone(), self.incarnation, self.revision, self.position)
    }
}

/// The frames of a [`CatchUpSse`] response: the opening comment, then one
/// frame per event, then (if a gap ends it) the gap frame.
pub struct CatchUpEvents<T> {
    key: SessionKey,
    catch_up: Option<CatchUp<T>>,
    /// A gap found when the catch-up started: the stream is just its frame.
    gap: Option<Gap>,
    render: Render<T>,
    pending: VecDeque<SseEvent>,
    on_gap: Option<GapHook>,
    sent: u64,
    max_events: Option<NonZeroU64>,
    durable: Option<DurableGate<T>>,
    ended: bool,
}

impl<T: Send + Sync + 'static> CatchUpEvents<T> {
    fn end_with_gap(&mut self, gap: &Gap) -> SseEvent {
        self.ended = true;
        self.catch_up = None;
        let snapshot = self.on_gap.take().and_then(|hook| hook(gap));
        gap_frame(gap, snapshot.as_deref())
    }

    /// The next event, once it may be sent (durable, if asked).
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Arc<Event<T>>, Gap>>> {
        loop {
            let event = match self.durable.as_mut().and_then(|gate| gate.held.take()) {
                Some(event) => event,
                None => {
                    let Some(catch_up) = self.catch_up.as_mut() else {
                        return Poll::Ready(None);
                    };
                    match Pin::new(catch_up).poll_next(cx) {
                        Poll::Ready(Some(Ok(event))) => event,
                        other => return other,
                    }
                }
            };
            let Some(gate) = self.durable.as_mut() else {
                return Poll::Ready(Some(Ok(event)));
            };
            let is_durable = |gate: &mut DurableGate<T>| {
                if gate.known_durable < event.position() {
                    let durable = gate.store.durable_position(&self.key).ok().flatten();
                    gate.known_durable = gate.known_durable.max(durable.unwrap_or(0));
                }
                gate.known_durable >= event.position()
            };
            // Arm on the next commit, then look again before waiting: a
            // commit between the look and the arming is not missed.
            let mut durable = is_durable(gate);
            if !durable && gate.progress.is_none() {
                gate.progress = Some(gate.store.durable_progress());
                durable = is_durable(gate);
            }
            if durable {
                gate.progress = None;
                // Taken from the ring, then lapped before the log took it:
                // the log holds a hole there, so it is lost, not durable.
                if let Some(through) = gate.store.lost_after_read(&self.key, event.position()) {
                    return Poll::Ready(Some(Err(Gap {
                        reason: GapReason::Lost,
                        requested: gate.last_sent.cursor(&self.key),
                        latest: gate.store.current_cursor(&self.key),
                        missed: Some(through - gate.last_sent.position),
                    })));
                }
                gate.last_sent = LastSent {
                    incarnation: Some(event.incarnation),
                    revision: event.revision,
                    position: event.position(),
                };
                return Poll::Ready(Some(Ok(event)));
            }
            gate.held = Some(event);
            let Some(progress) = gate.progress.as_mut() else {
                continue;
            };
            match Pin::new(progress).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => gate.progress = None,
            }
        }
    }
}

impl<T: Send + Sync + 'static> Stream for CatchUpEvents<T> {
    type Item = Result<SseEvent, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(frame) = this.pending.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        if let Some(gap) = this.gap.take() {
            return Poll::Ready(Some(Ok(this.end_with_gap(&gap))));
        }
        if this.max_events.is_some_and(|max| this.sent >= max.get()) {
            // Ending the body closes the response: the client reconnects
            // with its last id.
            this.ended = true;
            return Poll::Ready(None);
        }
        match this.poll_event(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.ended = true;
                // Ended by the session's closure: say so, at the last
                // position (everything through it was sent).
                let catch_up = this.catch_up.take();
                let closed = catch_up
                    .as_ref()
                    .and_then(|catch_up| Some((catch_up.closure()?, catch_up.cursor())));
                Poll::Ready(closed.map(|(closure, latest)| Ok(closed_frame(&closure, latest))))
            }
            Poll::Ready(Some(Err(gap))) => Poll::Ready(Some(Ok(this.end_with_gap(&gap)))),
            Poll::Ready(Some(Ok(event))) => {
                this.sent += 1;
                let frame = (this.render)(&event);
                Poll::Ready(Some(Ok(event_frame(&event, frame))))
            }
        }
    }
}

impl<T> fmt::Debug for CatchUpEvents<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatchUpEvents")
            .field("key", &self.key)
            .field("catch_up", &self.catch_up)
            .field("sent", &self.sent)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::MemoryLog;
    use crate::http::frame::tests::wire;
    use crate::{Config, Revision, Utf8};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key() -> SessionKey {
        SessionKey::new("t", "s").unwrap()
    }

    fn render(event: &Event<String>) -> Frame {
        Frame::named("token", event.payload().clone())
    }

    /// The next frame, as wire text; `None` once the stream ended; panics
    /// if nothing comes within a second.
    async fn next(events: &mut CatchUpEvents<String>) -> Option<String> {
        let item = tokio::time::timeout(
            Duration::from_secs(1),
            std::future::poll_fn(|cx| Pin::new(&mut *events).poll_next(cx)),
        )
        .await
        .expect("a frame within a second");
        match item {
            Some(Ok(frame)) => Some(wire(vec![frame]).await),
            None => None,
        }
    }

    #[tokio::test]
    async fn events_carry_their_cursors_and_one_gap_ends_the_stream() {
        let store = ReplayStore::new(Config::default().with_capacity(4)).unwrap();
        let first = store.append(&key(), Revision(1), "a".into()).unwrap();
        let calls = StdArc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let mut events = SseCatchUp::new(render)
            .retry(Duration::from_millis(100))
            .on_gap(move |gap| {
                counted.fetch_add(1, Ordering::SeqCst);
                Some(format!("{{\"upto\":{}}}", gap.latest.position()))
            })
            .events(&store, &key(), &Cursor::start(key()))
            .unwrap();
        assert_eq!(
            next(&mut events).await.unwrap(),
            ": livereplay: resuming after position 0\nretry: 100\n\n"
        );
        assert_eq!(
            next(&mut events).await.unwrap(),
            format!("id: {}\nevent: token\ndata: a\n\n", first.cursor())
        );
        // Lap the reader: 6 more events in a 4-event window.
        for token in ["b", "c", "d", "e", "f", "g"] {
            store.append(&key(), Revision(1), token.into()).unwrap();
        }
        let latest = store.current_cursor(&key());
        assert_eq!(
            next(&mut events).await.unwrap(),
            format!(
                "id: {latest}\nevent: gap\ndata: {{\"reason\":\"trimmed\",\"missed\":2,\"latest\":\"{latest}\",\"snapshot\":{{\"upto\":7}}}}\n\n"
            )
        );
        assert_eq!(next(&mut events).await, None, "nothing after the gap");
        assert_eq!(next(&mut events).await, None);
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // Resuming from the gap's id: the events after it, no gap.
        let mut resumed = SseCatchUp::new(render)
            .events(&store, &key(), &latest)
            .unwrap();
        next(&mut resumed).await.unwrap();
        let h = store.append(&key(), Revision(1), "h".into()).unwrap();
        assert_eq!(
            next(&mut resumed).await.unwrap(),
            format!("id: {}\nevent: token\ndata: h\n\n", h.cursor())
        );
    }

    #[tokio::test]
    async fn a_closure_ends_the_stream_with_one_closed_frame_even_on_reconnect() {
        let store = ReplayStore::new(Config::default().with_capacity(8)).unwrap();
        let first = store.append(&key(), Revision(1), "a".into()).unwrap();
        let mut events = sse_events(&store, &Cursor::start(key()));
        assert!(next(&mut events).await.unwrap().starts_with(": livereplay"));
        assert_eq!(
            next(&mut events).await.unwrap(),
            format!("id: {}\nevent: token\ndata: a\n\n", first.cursor())
        );
        // Closed while the stream waits: the next event first, then the end.
        let last = store.append(&key(), Revision(1), "b".into()).unwrap();
        store
            .close_session(&key(), crate::CloseReason::Error)
            .unwrap();
        let at = last.cursor();
        let closed = format!(
            "id: {at}\nevent: closed\ndata: {{\"reason\":\"error\",\"last\":2,\"latest\":\"{at}\"}}\n\n"
        );
        assert_eq!(
            next(&mut events).await.unwrap(),
            format!("id: {at}\nevent: token\ndata: b\n\n")
        );
        assert_eq!(next(&mut events).await.unwrap(), closed);
        assert_eq!(next(&mut events).await, None, "nothing after the closure");
        // Reconnecting with the closed frame's id: the closure again, at once.
        let mut again = sse_events(&store, &at);
        assert!(next(&mut again).await.unwrap().starts_with(": livereplay"));
        assert_eq!(next(&mut again).await.unwrap(), closed);
        assert_eq!(next(&mut again).await, None);
        // A host's frame named like the reserved one is sent unnamed.
        assert_eq!(Frame::named(crate::http::CLOSED_EVENT, "x").name(), None);
    }

    #[tokio::test]
    async fn a_cursor_that_cannot_be_served_is_one_gap_frame() {
        let store = ReplayStore::new(Config::default().with_capacity(2)).unwrap();
        for token in ["a", "b", "c", "d"] {
            store
                .append(&key(), Revision(1), token.to_string())
                .unwrap();
        }
        let mut events = sse_events(&store, &Cursor::start(key()));
        assert!(next(&mut events).await.unwrap().starts_with(": livereplay"));
        let gap = next(&mut events).await.unwrap();
        assert!(
            gap.contains("event: gap\ndata: {\"reason\":\"trimmed\",\"missed\":2,"),
            "{gap}"
        );
        assert_eq!(next(&mut events).await, None);

        // A cursor of a session this store never saw: unavailable.
        let other = SessionKey::new("t", "never").unwrap();
        let stale = Cursor::new(other.clone(), None, Revision(1), 5);
        let mut events = SseCatchUp::new(render)
            .events(&store, &other, &stale)
            .unwrap();
        next(&mut events).await.unwrap();
        let gap = next(&mut events).await.unwrap();
        assert!(
            gap.contains("\"reason\":\"unavailable\",\"missed\":null"),
            "{gap}"
        );
        assert_eq!(next(&mut events).await, None);
    }

    fn sse_events(store: &ReplayStore<String>, cursor: &Cursor) -> CatchUpEvents<String> {
        SseCatchUp::new(render)
            .events(store, &key(), cursor)
            .unwrap()
    }

    #[tokio::test]
    async fn a_response_ends_after_max_events() {
        let store = ReplayStore::default();
        for token in ["a", "b", "c"] {
            store
                .append(&key(), Revision(1), token.to_string())
                .unwrap();
        }
        let mut events = SseCatchUp::new(render)
            .max_events(NonZeroU64::new(2).unwrap())
            .events(&store, &key(), &Cursor::start(key()))
            .unwrap();
        next(&mut events).await.unwrap();
        assert!(next(&mut events).await.unwrap().contains("data: a"));
        assert!(next(&mut events).await.unwrap().contains("data: b"));
        assert_eq!(next(&mut events).await, None);
    }

    #[tokio::test]
    async fn another_sessions_cursor_is_refused_before_any_frame() {
        let store = ReplayStore::<String>::default();
        let other = Cursor::start(SessionKey::new("t", "other").unwrap());
        let refused = sse_catch_up(&store, &key(), &other, render).unwrap_err();
        assert_eq!(refused.status(), axum::http::StatusCode::FORBIDDEN);
    }

    /// Issue 21, item 5: an event the stream took from the ring and held
    /// until durable, which the ring then lapped before the log took it,
    /// is lost: the stream ends with a `lost` gap over the hole, and never
    /// sends the event.
    #[tokio::test]
    async fn durable_only_never_sends_an_event_the_log_recorded_as_lost() {
        let store = StdArc::new(
            ReplayStore::<String>::builder()
                .config(crate::Config::default().with_capacity(4))
                .durable(StdArc::new(MemoryLog::new()), Utf8)
                // No budget for undurable events: a lap is a hole.
                .durable_options(
                    crate::DurableOptions::default()
                        .with_persister_thread(false)
                        .with_undurable_budget(0),
                )
                .build()
                .unwrap(),
        );
        let mut events = SseCatchUp::new(render)
            .durable_only(store.clone())
            .events(&store, &key(), &Cursor::start(key()))
            .unwrap();
        next(&mut events).await.unwrap();
        store.append(&key(), Revision(1), "e1".into()).unwrap();
        // The stream takes e1 from the ring and holds it: not durable yet.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut events).poll_next(&mut cx).is_pending());
        for n in 2..=12 {
            store.append(&key(), Revision(1), format!("e{n}")).unwrap();
        }
        // The ring lapped 1..=4 (its first segment) before this commit,
        // and kept nothing: a hole there.
        assert_eq!(store.persist_round(), Some(true));
        let frame = next(&mut events).await.unwrap();
        assert!(!frame.contains("data: e1"), "{frame}");
        assert!(
            frame.contains("event: gap") && frame.contains("lost"),
            "{frame}"
        );
        assert!(frame.contains("\"missed\":4"), "{frame}");
        assert_eq!(next(&mut events).await, None);
        assert_eq!(store.stats().gaps_lost, 1);
    }

    #[tokio::test]
    async fn durable_only_sends_nothing_the_log_does_not_hold() {
        let store = StdArc::new(
            ReplayStore::<String>::builder()
                .durable(StdArc::new(MemoryLog::new()), Utf8)
                .build()
                .unwrap(),
        );
        let mut events = SseCatchUp::new(render)
            .durable_only(store.clone())
            .events(&store, &key(), &Cursor::start(key()))
            .unwrap();
        next(&mut events).await.unwrap();
        for round in 0..50u64 {
            store
                .append(&key(), Revision(1), format!("{round}"))
                .unwrap();
            let frame = next(&mut events).await.unwrap();
            let durable = store.durable_position(&key()).unwrap().unwrap();
            assert!(
                durable > round,
                "sent position {} with durable {durable}",
                round + 1
            );
            assert!(frame.contains(&format!("data: {round}\n")), "{frame}");
        }
        // Without a durable log the option is ignored (it would never send).
        let plain = StdArc::new(ReplayStore::<String>::default());
        let builder = SseCatchUp::new(render).durable_only(plain.clone());
        assert!(builder.durable_only.is_none());
    }
}
