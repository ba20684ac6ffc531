//! The SSE demo's application: a simulated agent turn loop per session that
//! appends token events synchronously, and an axum router that streams them
//! with [`livereplay::http`] — which owns the resume protocol (cursor
//! extraction, cursor ids, the one gap frame, keep-alives). What is left
//! here is the demo itself: the turn, its transcript, the page.
//!
//! It lives in its own file so `tests/sse.rs` can serve the very same router
//! in-process (`#[path = "../examples/sse_server/app.rs"] mod app;`).
//!
//! With a durable store (`--data-dir`), a restarted server picks every
//! session up from the log on its first request: the transcript is read
//! back, the turn continues with the tokens it had not appended yet, and
//! streams send only durable events, so a browser's cursor resumes exactly
//! even after the server was killed.
//!
//! Several nodes over one shared log (`--redis` or `--postgres`): the node
//! that runs a session's turn writes it, and a host-only node
//! ([`App::new_host_only`]) serves any session from the log without ever
//! running a turn or making the session resident (catch-up only; its
//! transcripts and gap snapshots are read from the log). Event streams answer cross-origin requests from
//! loopback pages, so one page can alternate between the nodes.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use livereplay::durable::RecordBody;
use livereplay::http::{Frame, ResumeCursor, SseCatchUp};
use livereplay::{
    Codec, Cursor, Error, Event, Postcard, ReplayStore, Revision, SessionHandle, SessionKey,
    LOG_BATCH,
};

/// Every demo session lives under this tenant.
pub const TENANT: &str = "demo";

/// The longest session id the demo accepts.
pub const MAX_SESSION_ID_LEN: usize = 64;

/// The page at `/`.
const INDEX_HTML: &str = include_str!("index.html");

/// What the turn loop appends to the store (and, with `--data-dir`, what
/// the durable log keeps, through the `Postcard` codec).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// The demo's record of a session, by position: what a real host keeps in
/// its database and reloads from after a gap. `events[i]` is position
/// `i + 1`.
#[derive(Debug, Default)]
struct Transcript {
    events: Vec<TurnEvent>,
}

impl Transcript {
    /// The snapshot of positions `1..=upto`.
    fn snapshot(&self, upto: u64) -> Snapshot {
        let upto = usize::try_from(upto)
            .unwrap_or(usize::MAX)
            .min(self.events.len());
        let mut snapshot = Snapshot::default();
        for event in &self.events[..upto] {
            match event {
                TurnEvent::Token(text) => {
                    snapshot.text.push_str(text);
                    snapshot.tokens += 1;
                }
                TurnEvent::Done { .. } => snapshot.done = true,
            }
        }
        snapshot
    }
}

/// The text up to a position.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Snapshot {
    /// The text of the tokens.
    pub text: String,
    /// How many tokens that is.
    pub tokens: u64,
    /// Whether the turn's `done` is among them.
    pub done: bool,
}

/// Shared server state.
pub struct App {
    store: Arc<ReplayStore<TurnEvent>>,
    settings: Settings,
    /// Transcripts by session; a session is here once it was opened.
    transcripts: Mutex<HashMap<SessionKey, Arc<Mutex<Transcript>>>>,
    /// Set by [`App::stop`]: turn loops return at their next token.
    stopping: AtomicBool,
    /// A host-only node: runs no turns, never opens a session, serves every
    /// session from the (shared) durable log.
    host_only: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking turn thread leaves a transcript that is still consistent
    // (each update is one push), so the demo keeps serving it.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl App {
    /// An app serving `store` with `settings`.
    pub fn new(store: ReplayStore<TurnEvent>, settings: Settings) -> Arc<Self> {
        Self::with_role(store, settings, false)
    }

    /// A host-only app: it serves sessions another node writes to the
    /// store's shared log (`--host-only` with `--redis URL` or `--postgres
    /// URL`). It never starts a turn and never makes a session resident:
    /// every stream is a catch-up from the log, and transcripts and gap
    /// snapshots are read from the log. ([`App::append_token`] and
    /// [`App::finish_turn`] are not for it.)
    #[allow(dead_code)] // used by the binary and tests/redis_nodes.rs, not tests/sse.rs
    pub fn new_host_only(store: ReplayStore<TurnEvent>, settings: Settings) -> Arc<Self> {
        Self::with_role(store, settings, true)
    }

    fn with_role(store: ReplayStore<TurnEvent>, settings: Settings, host_only: bool) -> Arc<Self> {
        Arc::new(Self {
            store: Arc::new(store),
            settings,
            transcripts: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
            host_only,
        })
    }

    /// The store (tests read cursors from it).
    #[allow(dead_code)] // used by tests/sse.rs, not by the binary
    pub fn store(&self) -> &ReplayStore<TurnEvent> {
        &self.store
    }

    /// Stops every turn loop at its next token (tests simulate a server
    /// going down mid-turn with it).
    #[allow(dead_code)] // used by tests/sse.rs, not by the binary
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// The session's transcript as the durable log has it (empty without a
    /// log, or for a new session). Reads the log: called once per session
    /// and process.
    fn restore(&self, key: &SessionKey) -> Transcript {
        if self.store.durable_log().is_none() {
            return Transcript::default();
        }
        let events = self
            .store
            .catch_up_replay(&Cursor::start(key.clone()), usize::MAX)
            .unwrap_or_default();
        Transcript {
            events: events.iter().map(|event| event.payload().clone()).collect(),
        }
    }

    /// The session's transcript, restored if this process has not seen the
    /// session yet; `None` if that would exceed [`Settings::max_sessions`].
    /// `true` with it if this call created it.
    fn open(&self, key: &SessionKey) -> Option<(Arc<Mutex<Transcript>>, bool)> {
        if let Some(found) = lock(&self.transcripts).get(key) {
            return Some((found.clone(), false));
        }
        // Read the log outside the map's lock; a racing request may win.
        let restored = self.restore(key);
        let mut transcripts = lock(&self.transcripts);
        if let Some(found) = transcripts.get(key) {
            return Some((found.clone(), false));
        }
        if transcripts.len() >= self.settings.max_sessions {
            return None;
        }
        let created = Arc::new(Mutex::new(restored));
        transcripts.insert(key.clone(), created.clone());
        Some((created, true))
    }

    /// Opens the session on its first request and starts (or, after a
    /// restart, continues) its simulated turn; refuses new sessions beyond
    /// [`Settings::max_sessions`].
    fn ensure_turn(self: &Arc<Self>, key: &SessionKey) -> Result<(), Refused> {
        let Some((transcript, created)) = self.open(key) else {
            return Err(refused(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "this demo serves at most {} sessions; reuse one or restart the server",
                    self.settings.max_sessions
                ),
            ));
        };
        if let (true, Some(plan)) = (created, self.settings.turn) {
            let app = self.clone();
            let key = key.clone();
            // A plain thread, like a runtime's turn loop: appending is
            // synchronous and never awaits.
            std::thread::spawn(move || app.run_turn(&key, &transcript, plan));
        }
        Ok(())
    }

    /// Appends the turn's tokens from where the transcript stands (0 for a
    /// new session; after a restart, what the log kept), then `done`.
    fn run_turn(&self, key: &SessionKey, transcript: &Mutex<Transcript>, plan: TurnPlan) {
        // A handle appends with no map lookup, and keeps the session from
        // being evicted while the turn runs.
        let Ok(session) = self.store.session(key) else {
            return;
        };
        let so_far = lock(transcript).snapshot(u64::MAX);
        if so_far.done {
            return;
        }
        for index in so_far.tokens..plan.tokens {
            std::thread::sleep(plan.interval);
            if self.stopping.load(Ordering::SeqCst)
                || record(&session, transcript, TurnEvent::Token(token_text(index))).is_err()
            {
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
        let (transcript, _) = self.open(key).expect("within max_sessions");
        record(
            &self.store.session(key)?,
            &transcript,
            TurnEvent::Token(token.into()),
        )
    }

    /// Appends the `done` event to `key`'s session by hand.
    #[allow(dead_code)] // used by tests/sse.rs, not by the binary
    pub fn finish_turn(&self, key: &SessionKey) -> Result<Arc<Event<TurnEvent>>, Error> {
        let (transcript, _) = self.open(key).expect("within max_sessions");
        record_done(&self.store.session(key)?, &transcript)
    }

    /// The session's text up to position `upto` (everything: `u64::MAX`).
    pub fn snapshot(&self, key: &SessionKey, upto: u64) -> Snapshot {
        if self.host_only {
            return self.log_snapshot(key, upto);
        }
        // Looked up, not created: only the events route opens sessions.
        let transcript = lock(&self.transcripts).get(key).cloned();
        transcript
            .map(|transcript| lock(&transcript).snapshot(upto))
            .unwrap_or_default()
    }
}

impl App {
    /// The text up to `upto` as the durable log has it (a host-only node's
    /// transcript): the events' payloads in position order; a recorded hole
    /// contributes nothing (the log does not know that text). Reads the log
    /// record by record, never through a catch-up, so no session is opened.
    fn log_snapshot(&self, key: &SessionKey, upto: u64) -> Snapshot {
        let mut snapshot = Snapshot::default();
        let Some(log) = self.store.durable_log() else {
            return snapshot;
        };
        let mut after = 0;
        while after < upto {
            let Ok(records) = log.load_after(key, after, LOG_BATCH) else {
                break;
            };
            let Some(next) = records.last().map(|record| record.last_position()) else {
                break;
            };
            for record in records.iter().filter(|record| record.position <= upto) {
                let RecordBody::Event(stored) = &record.body else {
                    continue;
                };
                match Codec::<TurnEvent>::decode(&Postcard, &stored.payload) {
                    Ok(TurnEvent::Token(text)) => {
                        snapshot.text.push_str(&text);
                        snapshot.tokens += 1;
                    }
                    Ok(TurnEvent::Done { .. }) => snapshot.done = true,
                    Err(_) => {}
                }
            }
            if next <= after {
                break;
            }
            after = next;
        }
        snapshot
    }
}

/// Appends an event: first to the transcript, then to the store, under the
/// transcript's lock so the transcript's positions are the store's. The
/// store's append itself is synchronous and lock-free.
fn record(
    session: &SessionHandle<TurnEvent>,
    transcript: &Mutex<Transcript>,
    event: TurnEvent,
) -> Result<Arc<Event<TurnEvent>>, Error> {
    let mut transcript = lock(transcript);
    let appended = session.append(Revision(1), event.clone())?;
    transcript.events.push(event);
    Ok(appended)
}

/// Appends the turn's `done` event, the same way.
fn record_done(
    session: &SessionHandle<TurnEvent>,
    transcript: &Mutex<Transcript>,
) -> Result<Arc<Event<TurnEvent>>, Error> {
    let tokens = lock(transcript).snapshot(u64::MAX).tokens;
    record(session, transcript, TurnEvent::Done { tokens })
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

/// The router: `/` (the page), `/sessions/{id}/events` (the stream) and
/// `/sessions/{id}/transcript` (the text so far).
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/sessions/{id}/events", get(events))
        .route("/sessions/{id}/transcript", get(transcript))
        .with_state(app)
}

/// Why the demo refused a request, as a status with a message a person can
/// act on (cursor refusals are `livereplay::http::ResumeError`s).
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

fn refused(status: StatusCode, message: String) -> Refused {
    Refused { status, message }
}

/// The session's key, if its id is `[A-Za-z0-9_-]{1,64}`.
pub fn session_key(id: &str) -> Result<SessionKey, Refused> {
    let valid = (1..=MAX_SESSION_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let invalid = || {
        refused(
            StatusCode::BAD_REQUEST,
            format!("invalid session id: use 1 to {MAX_SESSION_ID_LEN} characters from A-Z, a-z, 0-9, '_' and '-'"),
        )
    };
    if !valid {
        return Err(invalid());
    }
    SessionKey::new(TENANT, id).map_err(|_| invalid())
}

/// A token (or the final `done`) as the data of its SSE frame; the library
/// adds the cursor as its `id:`.
fn render(event: &Event<TurnEvent>) -> Frame {
    match event.payload() {
        TurnEvent::Token(text) => Frame::named(
            "token",
            serde_json::json!({ "p": event.position(), "t": text }).to_string(),
        ),
        TurnEvent::Done { tokens } => Frame::named(
            "done",
            serde_json::json!({ "p": event.position(), "tokens": tokens }).to_string(),
        ),
    }
}

/// `GET /sessions/{id}/events`: the session's events as SSE, resumed after
/// the client's cursor (400 malformed, 403 another session's). A gap ends
/// the response with the text up to the gap's latest cursor as its
/// snapshot; the browser reloads it and reconnects after that cursor.
async fn events(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    resume: ResumeCursor,
) -> Response {
    let mut response = stream(app, id, resume);
    allow_loopback_origin(&headers, response.headers_mut());
    response
}

/// The page of one node may read another node's stream (the two-node demo
/// alternates between them): a cross-origin request from a loopback page
/// is allowed, any other origin is not. The request carries its cursor in
/// `?cursor=` (a new `EventSource` per node sends no `Last-Event-ID`).
fn allow_loopback_origin(request: &HeaderMap, response: &mut HeaderMap) {
    let Some(origin) = request.get(header::ORIGIN) else {
        return;
    };
    let loopback = origin.to_str().is_ok_and(|origin| {
        ["http://127.0.0.1:", "http://localhost:", "http://[::1]:"]
            .iter()
            .any(|prefix| {
                origin.strip_prefix(prefix).is_some_and(|port| {
                    !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
                })
            })
    });
    if loopback {
        response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    }
    response.append(header::VARY, HeaderValue::from_static("origin"));
}

/// The stream (or the refusal) [`events`] sends.
fn stream(app: Arc<App>, id: String, resume: ResumeCursor) -> Response {
    let key = match session_key(&id) {
        Ok(key) => key,
        Err(refused) => return refused.into_response(),
    };
    let cursor = match resume.for_session(&key) {
        Ok(cursor) => cursor,
        Err(error) => return error.into_response(),
    };
    if !app.host_only {
        // A host-only node never opens a session: the catch-up below reads
        // the log and waits for the writer's records there.
        if let Err(refused) = app.ensure_turn(&key) {
            return refused.into_response();
        }
    }
    let snapshots = app.clone();
    let gap_key = key.clone();
    let mut options = SseCatchUp::new(render)
        .retry(app.settings.retry)
        .keep_alive(app.settings.keep_alive)
        .on_gap(move |gap| {
            let snapshot = snapshots.snapshot(&gap_key, gap.latest.position());
            serde_json::to_string(&snapshot).ok()
        })
        // A no-op without a log (--data-dir, --redis or --postgres); with
        // one, nothing a crash can take back reaches the browser. (A host-only node's
        // events all come from the log: each check is one read of it.)
        .durable_only(app.store.clone());
    if let Some(every) = app.settings.drop_every {
        options = options.max_events(every);
    }
    match options.serve(&app.store, &key, &cursor) {
        Ok(sse) => sse.into_response(),
        Err(error) => error.into_response(),
    }
}

/// `GET /sessions/{id}/transcript`: the text so far, as plain text.
async fn transcript(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<String, Refused> {
    let key = session_key(&id)?;
    Ok(app.snapshot(&key, u64::MAX).text)
}
