//! The SSE demo's application: a simulated agent turn loop per session that
//! appends token events synchronously, and an axum router that streams them
//! as Server-Sent Events a browser can resume with `Last-Event-ID`.
//!
//! It lives in its own file so `tests/sse.rs` can serve the very same router
//! in-process (`#[path = "../examples/sse_server/app.rs"] mod app;`).
//!
//! Resume protocol, as a browser's `EventSource` sees it:
//!
//! * every token carries its cursor as the SSE `id:`, so the browser sends it
//!   back as `Last-Event-ID` when it reconnects (a `?cursor=` query parameter
//!   does the same for clients that cannot set headers);
//! * a cursor the store can no longer serve gets ONE `event: gap` whose `id:`
//!   is the latest cursor and whose data is a snapshot of the text so far,
//!   read from the demo's own durable transcript; the stream then continues
//!   live after that cursor;
//! * keep-alive frames are comments, so they never move the browser's
//!   last event id.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::num::NonZeroU64;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_core::Stream;
use livereplay::{
    Cursor, CursorError, Error, Event, Gap, ReplayStore, Revision, SessionHandle, SessionKey,
    Subscription,
};

/// Every demo session lives under this tenant.
pub const TENANT: &str = "demo";

/// The longest session id the demo accepts.
pub const MAX_SESSION_ID_LEN: usize = 64;

/// The page at `/`.
const INDEX_HTML: &str = include_str!("index.html");

/// What the turn loop appends to the live store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnEvent {
    /// A piece of the answer's text.
    Token(String),
    /// The turn is over; `tokens` tokens were produced.
    Done {
        /// How many tokens the turn produced.
        tokens: u64,
    },
}

/// How a simulated turn produces its answer.
#[derive(Debug, Clone, Copy)]
pub struct TurnPlan {
    /// How many tokens each turn appends before its `done` event.
    pub tokens: u64,
    /// The pause before each token.
    pub interval: Duration,
}

/// Server behaviour that tests and the command line tune.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The turn started on a session's first request; `None` leaves the
    /// appending to the caller ([`App::append_token`], [`App::finish_turn`]).
    pub turn: Option<TurnPlan>,
    /// End each response after this many events, so clients must reconnect.
    pub drop_every: Option<NonZeroU64>,
    /// The reconnection delay sent to browsers as `retry:`.
    pub retry: Duration,
    /// How long a quiet stream waits before sending a keep-alive comment.
    pub keep_alive: Duration,
    /// How many sessions the demo serves; requests for more get 503, so a
    /// client cannot make it start turns (threads) without bound.
    pub max_sessions: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            turn: Some(TurnPlan {
                tokens: 120,
                interval: Duration::from_millis(60),
            }),
            drop_every: None,
            retry: Duration::from_millis(200),
            keep_alive: Duration::from_secs(10),
            max_sessions: 1000,
        }
    }
}

/// The demo's durable record of a session: what a real host keeps in its
/// database and reloads from after a gap. The live store is not that.
#[derive(Debug, Default)]
struct Transcript {
    text: String,
    tokens: u64,
    done: bool,
}

/// The text so far and the cursor it covers, taken together.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The full text appended so far.
    pub text: String,
    /// How many tokens that is.
    pub tokens: u64,
    /// Whether the turn has finished.
    pub done: bool,
    /// The live store's cursor at the moment the snapshot was taken.
    pub cursor: Cursor,
}

/// Shared server state.
pub struct App {
    store: ReplayStore<TurnEvent>,
    settings: Settings,
    /// Durable transcripts by session, and which sessions have a turn.
    transcripts: Mutex<HashMap<SessionKey, Arc<Mutex<Transcript>>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking turn thread leaves a transcript that is still consistent
    // (each update is one push), so the demo keeps serving it.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl App {
    /// An app serving `store` with `settings`.
    pub fn new(store: ReplayStore<TurnEvent>, settings: Settings) -> Arc<Self> {
        Arc::new(Self {
            store,
            settings,
            transcripts: Mutex::new(HashMap::new()),
        })
    }

    /// The live store (tests read cursors from it).
    #[allow(dead_code)] // used by tests/sse.rs, not by the binary
    pub fn store(&self) -> &ReplayStore<TurnEvent> {
        &self.store
    }

    /// The session's transcript, created empty if absent.
    fn transcript(&self, key: &SessionKey) -> Arc<Mutex<Transcript>> {
        lock(&self.transcripts)
            .entry(key.clone())
            .or_default()
            .clone()
    }

    /// Opens the session on its first request and starts its simulated
    /// turn; refuses new sessions beyond [`Settings::max_sessions`].
    fn ensure_turn(self: &Arc<Self>, key: &SessionKey) -> Result<(), Refused> {
        let transcript = {
            let mut transcripts = lock(&self.transcripts);
            if transcripts.contains_key(key) {
                return Ok(());
            }
            if transcripts.len() >= self.settings.max_sessions {
                return Err(Refused {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: format!(
                        "this demo serves at most {} sessions; reuse one or restart the server",
                        self.settings.max_sessions
                    ),
                });
            }
            let created = Arc::new(Mutex::new(Transcript::default()));
            transcripts.insert(key.clone(), created.clone());
            created
        };
        if let Some(plan) = self.settings.turn {
            let app = self.clone();
            let key = key.clone();
            // A plain thread, like a runtime's turn loop: appending is
            // synchronous and never awaits.
            std::thread::spawn(move || app.run_turn(&key, &transcript, plan));
        }
        Ok(())
    }

    fn run_turn(&self, key: &SessionKey, transcript: &Mutex<Transcript>, plan: TurnPlan) {
        // A handle appends with no map lookup, and keeps the session from
        // being evicted while the turn runs.
        let Ok(session) = self.store.session(key) else {
            return;
        };
        for index in 0..plan.tokens {
            std::thread::sleep(plan.interval);
            if record(&session, transcript, token_text(index)).is_err() {
                return;
            }
        }
        let _ = record_done(&session, transcript);
    }

    /// Appends a token to `key`'s session by hand (tests, or a host without
    /// a simulated turn).
    #[allow(dead_code)] // used by tests/sse.rs, not by the binary
    pub fn append_token(
        &self,
        key: &SessionKey,
        token: impl Into<String>,
    ) -> Result<Arc<Event<TurnEvent>>, Error> {
        record(
            &self.store.session(key)?,
            &self.transcript(key),
            token.into(),
        )
    }

    /// Appends the `done` event to `key`'s session by hand.
    #[allow(dead_code)] // used by tests/sse.rs, not by the binary
    pub fn finish_turn(&self, key: &SessionKey) -> Result<Arc<Event<TurnEvent>>, Error> {
        record_done(&self.store.session(key)?, &self.transcript(key))
    }

    /// The durable text so far with the live cursor that covers it.
    pub fn snapshot(&self, key: &SessionKey) -> Snapshot {
        // Looked up, not created: only the events route opens sessions.
        let transcript = lock(&self.transcripts).get(key).cloned();
        let Some(transcript) = transcript else {
            return Snapshot {
                text: String::new(),
                tokens: 0,
                done: false,
                cursor: self.store.current_cursor(key),
            };
        };
        let durable = lock(&transcript);
        Snapshot {
            text: durable.text.clone(),
            tokens: durable.tokens,
            done: durable.done,
            cursor: self.store.current_cursor(key),
        }
    }

    /// After a gap: reload a snapshot and subscribe after the cursor it
    /// covers. Retried a few times in case the window moves past that cursor
    /// before the subscription starts.
    fn reload_after_gap(
        &self,
        key: &SessionKey,
        gap: &Gap,
    ) -> Result<(SseEvent, Subscription<TurnEvent>), Error> {
        let mut attempts = 0;
        loop {
            let snapshot = self.snapshot(key);
            match self.store.subscribe_scoped(key, &snapshot.cursor) {
                Ok(subscription) => return Ok((gap_frame(gap, &snapshot), subscription)),
                Err(Error::Gap(_)) if attempts < 3 => attempts += 1,
                Err(other) => return Err(other),
            }
        }
    }
}

/// Appends a token: first to the durable transcript, then to the live store,
/// under the transcript's lock so a snapshot always pairs its text with the
/// cursor that covers exactly that text. The store's append itself is
/// synchronous and lock-free.
fn record(
    session: &SessionHandle<TurnEvent>,
    transcript: &Mutex<Transcript>,
    token: String,
) -> Result<Arc<Event<TurnEvent>>, Error> {
    let mut durable = lock(transcript);
    durable.text.push_str(&token);
    durable.tokens += 1;
    session.append(Revision(1), TurnEvent::Token(token))
}

/// Appends the turn's `done` event, the same way.
fn record_done(
    session: &SessionHandle<TurnEvent>,
    transcript: &Mutex<Transcript>,
) -> Result<Arc<Event<TurnEvent>>, Error> {
    let mut durable = lock(transcript);
    durable.done = true;
    let tokens = durable.tokens;
    session.append(Revision(1), TurnEvent::Done { tokens })
}

/// The demo's deterministic answer, one word per token.
pub fn token_text(index: u64) -> String {
    const WORDS: &[&str] = &[
        "Live",
        "replay",
        "keeps",
        "a",
        "bounded",
        "window",
        "of",
        "recent",
        "events",
        "per",
        "session,",
        "so",
        "a",
        "browser",
        "that",
        "lost",
        "its",
        "connection",
        "resumes",
        "from",
        "the",
        "last",
        "cursor",
        "it",
        "saw.",
    ];
    // Each lap of the sentence is numbered so repeated words stay distinct.
    let lap = index / WORDS.len() as u64;
    let word = WORDS[(index % WORDS.len() as u64) as usize];
    if index.is_multiple_of(WORDS.len() as u64) {
        format!("[{}] {word} ", lap + 1)
    } else {
        format!("{word} ")
    }
}

/// The router: `/` (the page) and `/sessions/{id}/events` (the stream).
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/sessions/{id}/events", get(events))
        .route("/sessions/{id}/transcript", get(transcript))
        .with_state(app)
}

/// Why a request was refused, as an HTTP status with a message a person can
/// act on.
#[derive(Debug)]
pub struct Refused {
    status: StatusCode,
    message: String,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.message + "\n",
        )
            .into_response()
    }
}

/// The session's key, if its id is `[A-Za-z0-9_-]{1,64}`.
pub fn session_key(id: &str) -> Result<SessionKey, Refused> {
    let valid = (1..=MAX_SESSION_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let refused = || {
        Refused {
        status: StatusCode::BAD_REQUEST,
        message: format!(
            "invalid session id: use 1 to {MAX_SESSION_ID_LEN} characters from A-Z, a-z, 0-9, '_' and '-'"
        ),
    }
    };
    if !valid {
        return Err(refused());
    }
    SessionKey::new(TENANT, id).map_err(|_| refused())
}

/// Where a client resumes: its `Last-Event-ID` header (what `EventSource`
/// sends on reconnect) unless empty, else a `cursor` query parameter, else
/// the start.
/// The cursor must belong to `key`: another session's cursor is refused
/// with 403, a malformed one with 400, so a client never reads another
/// session's events by presenting its cursor.
pub fn resume_cursor(
    key: &SessionKey,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Cursor, Refused> {
    // An empty Last-Event-ID is what a client sends before it saw any id.
    let header = headers
        .get("last-event-id")
        .filter(|value| !value.is_empty());
    let text = match header {
        Some(value) => value.to_str().map_err(|_| Refused {
            status: StatusCode::BAD_REQUEST,
            message: "malformed Last-Event-ID: it is not printable ASCII; send back the id of the last event you received"
                .to_string(),
        })?,
        None => match query.get("cursor") {
            Some(text) => text.as_str(),
            None => return Ok(Cursor::start(key.clone())),
        },
    };
    // So is an empty `?cursor=`.
    if text.is_empty() {
        return Ok(Cursor::start(key.clone()));
    }
    Cursor::parse_for(key, text).map_err(|error| match error {
        CursorError::WrongSession => Refused {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "cursor refused: it belongs to another session, not to session {:?}; resume with a cursor this session's stream sent",
                key.session()
            ),
        },
        other => Refused {
            status: StatusCode::BAD_REQUEST,
            message: format!("malformed cursor: {other}"),
        },
    })
}

/// `GET /sessions/{id}/events`: the session's events as SSE, resumed after
/// the client's cursor.
async fn events(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    let key = session_key(&id)?;
    let cursor = resume_cursor(&key, &headers, &query)?;
    app.ensure_turn(&key)?;
    let resumed = cursor.position();
    let mut first = VecDeque::from([SseEvent::default()
        .comment(format!("resuming after position {resumed}"))
        .retry(app.settings.retry)]);
    let subscription = match app.store.subscribe_scoped(&key, &cursor) {
        Ok(subscription) => subscription,
        Err(Error::Gap(gap)) => {
            let (gap_event, subscription) = app.reload_after_gap(&key, &gap).map_err(internal)?;
            first.push_back(gap_event);
            subscription
        }
        Err(other) => return Err(internal(other)),
    };
    let stream = SessionStream {
        app: app.clone(),
        key,
        subscription: Some(subscription),
        pending: first,
        sent: 0,
    };
    let keep_alive = KeepAlive::new()
        .interval(app.settings.keep_alive)
        .text("keep-alive");
    Ok(Sse::new(stream).keep_alive(keep_alive).into_response())
}

/// `GET /sessions/{id}/transcript`: the durable text, as plain text.
async fn transcript(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<String, Refused> {
    let key = session_key(&id)?;
    Ok(app.snapshot(&key).text)
}

fn internal(error: Error) -> Refused {
    Refused {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: format!("cannot stream this session now: {error}; retry shortly"),
    }
}

/// A token (or the final `done`) as an SSE event whose `id:` is its cursor.
fn event_frame(event: &Event<TurnEvent>) -> SseEvent {
    let frame = SseEvent::default().id(event.cursor().to_string());
    match event.payload() {
        TurnEvent::Token(text) => frame
            .event("token")
            .data(serde_json::json!({ "p": event.position(), "t": text }).to_string()),
        TurnEvent::Done { tokens } => frame
            .event("done")
            .data(serde_json::json!({ "p": event.position(), "tokens": tokens }).to_string()),
    }
}

/// The one `gap` event: the latest cursor as its `id:` and a snapshot the
/// page reloads from.
fn gap_frame(gap: &Gap, snapshot: &Snapshot) -> SseEvent {
    let reason = match gap.reason {
        livereplay::GapReason::Trimmed => "trimmed",
        livereplay::GapReason::Unavailable => "unavailable",
        livereplay::GapReason::Reset => "reset",
        livereplay::GapReason::Lost => "lost",
    };
    SseEvent::default()
        .id(snapshot.cursor.to_string())
        .event("gap")
        .data(
            serde_json::json!({
                "reason": reason,
                "requested": gap.requested.position(),
                "missed": gap.missed,
                "p": snapshot.cursor.position(),
                "cursor": snapshot.cursor.to_string(),
                "text": snapshot.text,
                "tokens": snapshot.tokens,
                "done": snapshot.done,
            })
            .to_string(),
        )
}

/// Adapts a [`Subscription`] to SSE frames: queued frames first (the
/// `retry:` hint, a gap snapshot), then one frame per event; a gap in the
/// middle of the stream reloads a snapshot and goes on live.
struct SessionStream {
    app: Arc<App>,
    key: SessionKey,
    subscription: Option<Subscription<TurnEvent>>,
    pending: VecDeque<SseEvent>,
    /// Events sent on this connection, for `--drop-every`.
    sent: u64,
}

impl Stream for SessionStream {
    type Item = Result<SseEvent, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(frame) = this.pending.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(every) = this.app.settings.drop_every {
            if this.sent >= every.get() {
                // Ending the body closes the response: the browser reconnects
                // with its Last-Event-ID after `retry`.
                return Poll::Ready(None);
            }
        }
        let Some(subscription) = this.subscription.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(subscription).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(event))) => {
                this.sent += 1;
                Poll::Ready(Some(Ok(event_frame(&event))))
            }
            Poll::Ready(Some(Err(gap))) => match this.app.reload_after_gap(&this.key, &gap) {
                Ok((frame, subscription)) => {
                    this.subscription = Some(subscription);
                    this.sent += 1;
                    Poll::Ready(Some(Ok(frame)))
                }
                // The client reconnects and is served from a fresh snapshot.
                Err(_) => Poll::Ready(None),
            },
            Poll::Ready(None) => Poll::Ready(None),
        }
    }
}
