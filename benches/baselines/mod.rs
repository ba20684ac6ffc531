//! The designs a user would otherwise pick, written as well as those designs
//! allow, so the benches compare `livereplay` against them in one process.
//!
//! * [`ReferenceStore`]: seed `002_*`'s stock in-memory live replay store.
//!   One global `Mutex<HashMap<String, Session>>`; each session is a
//!   `VecDeque` of `(Arc<event>, Instant)` bounded by capacity and age,
//!   trimmed from the front on every append and read; each append formats
//!   its cursor as a `String` (`prefix:revision:position:session`); replay
//!   filters the whole deque for positions after the cursor; subscribers get
//!   a lazily created `tokio::sync::broadcast` sender per session, which
//!   appends send to once it exists.
//! * [`BroadcastStore`]: one `tokio::sync::broadcast` channel per session,
//!   the fan-out a user picks when only live delivery matters. It cannot
//!   replay, and it drops events nobody is subscribed to.
//! * [`floor_append`]: `Arc::new` of an event laid out like ours plus one
//!   wall-clock read (what `SystemClock` does): what no append that returns
//!   a shared, timestamped event can go below.
//!
//! Nothing here is tuned down: where the design leaves a choice, the cheaper
//! one is taken (session ids shared as `Arc<str>` instead of copied into
//! every event and cursor, no key allocation on a lookup hit).

// Shared by several bench targets and the allocation example; each uses a
// subset.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use livereplay::SessionKey;
use tokio::sync::broadcast;

/// The wire prefix of the reference design's cursor strings.
pub const REFERENCE_CURSOR_PREFIX: &str = "live";

/// The reference design's event: what its `append` returns and its replay
/// and subscribers receive.
#[derive(Debug)]
pub struct RefEvent<T> {
    pub session_id: Arc<str>,
    pub revision: u64,
    pub position: u64,
    /// `prefix:revision:position:session`, formatted once per append.
    pub cursor: String,
    pub payload: T,
}

/// The reference design's cursor (the parsed form a host hands back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefCursor {
    pub session_id: Arc<str>,
    pub revision: u64,
    pub position: u64,
}

impl RefCursor {
    pub fn start(session_id: &str) -> Self {
        Self {
            session_id: Arc::from(session_id),
            revision: 0,
            position: 0,
        }
    }

    pub fn at(&self, position: u64) -> Self {
        Self {
            position,
            ..self.clone()
        }
    }
}

/// Why the reference design cannot serve a cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefGapReason {
    Trimmed,
    Unavailable,
}

/// A gap, with the latest cursor to resume from (as the seed's result type
/// carries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefGap {
    pub reason: RefGapReason,
    pub latest: RefCursor,
}

pub type RefReceiver<T> = broadcast::Receiver<Arc<RefEvent<T>>>;

struct RefSession<T> {
    id: Arc<str>,
    last_position: u64,
    last_revision: u64,
    events: VecDeque<(Arc<RefEvent<T>>, Instant)>,
    live: Option<broadcast::Sender<Arc<RefEvent<T>>>>,
}

impl<T> RefSession<T> {
    fn new(id: &str) -> Self {
        Self {
            id: Arc::from(id),
            last_position: 0,
            last_revision: 0,
            events: VecDeque::new(),
            live: None,
        }
    }

    /// Drops events beyond `keep` or older than `max_age`, from the front.
    fn trim(&mut self, now: Instant, keep: usize, max_age: Duration) -> usize {
        let before = self.events.len();
        while self.events.len() > keep {
            self.events.pop_front();
        }
        while self
            .events
            .front()
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) > max_age)
        {
            self.events.pop_front();
        }
        before - self.events.len()
    }

    fn latest(&self) -> RefCursor {
        RefCursor {
            session_id: Arc::clone(&self.id),
            revision: self.last_revision,
            position: self.last_position,
        }
    }

    /// The gap rules of the contract, then the events after `after`,
    /// filtered from the whole deque.
    fn replay_after(&self, after: u64) -> Result<Vec<Arc<RefEvent<T>>>, RefGap> {
        if after > self.last_position {
            return Err(RefGap {
                reason: RefGapReason::Unavailable,
                latest: self.latest(),
            });
        }
        let first_retained = self
            .events
            .front()
            .map_or(self.last_position + 1, |(event, _)| event.position);
        if after + 1 < first_retained {
            return Err(RefGap {
                reason: RefGapReason::Trimmed,
                latest: self.latest(),
            });
        }
        Ok(self
            .events
            .iter()
            .filter(|(event, _)| event.position > after)
            .map(|(event, _)| Arc::clone(event))
            .collect())
    }
}

/// Seed `002_*`'s stock in-memory store (see the module docs).
pub struct ReferenceStore<T> {
    sessions: Mutex<HashMap<String, RefSession<T>>>,
    capacity: usize,
    max_age: Duration,
}

impl<T: Send + Sync + 'static> ReferenceStore<T> {
    pub fn new(capacity: usize, max_age: Duration) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            capacity,
            max_age,
        }
    }

    /// The defaults of the seed and of `livereplay`: 2048 events, 120 s.
    pub fn with_defaults() -> Self {
        Self::new(2048, Duration::from_secs(120))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, RefSession<T>>> {
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn append(&self, session_id: &str, revision: u64, payload: T) -> Arc<RefEvent<T>> {
        let mut sessions = self.lock();
        if !sessions.contains_key(session_id) {
            sessions.insert(session_id.to_owned(), RefSession::new(session_id));
        }
        let Some(session) = sessions.get_mut(session_id) else {
            unreachable!("inserted above under the same lock")
        };
        let now = Instant::now();
        session.trim(now, self.capacity - 1, self.max_age);
        session.last_position += 1;
        session.last_revision = revision;
        let position = session.last_position;
        let event = Arc::new(RefEvent {
            session_id: Arc::clone(&session.id),
            revision,
            position,
            cursor: format!("{REFERENCE_CURSOR_PREFIX}:{revision}:{position}:{session_id}"),
            payload,
        });
        session.events.push_back((Arc::clone(&event), now));
        if let Some(live) = &session.live {
            // No receiver left is not an error for the writer.
            let _ = live.send(Arc::clone(&event));
        }
        event
    }

    pub fn replay_after_cursor(&self, cursor: &RefCursor) -> Result<Vec<Arc<RefEvent<T>>>, RefGap> {
        let mut sessions = self.lock();
        let Some(session) = sessions.get_mut(&*cursor.session_id) else {
            return unknown_session(cursor);
        };
        session.trim(Instant::now(), self.capacity, self.max_age);
        session.replay_after(cursor.position)
    }

    /// Buffered events after `cursor`, and a receiver for what comes next,
    /// taken under the same lock so nothing falls between the two.
    #[allow(clippy::type_complexity)]
    pub fn subscribe_after_cursor(
        &self,
        cursor: &RefCursor,
    ) -> Result<(Vec<Arc<RefEvent<T>>>, RefReceiver<T>), RefGap> {
        let mut sessions = self.lock();
        if cursor.position == 0 && !sessions.contains_key(&*cursor.session_id) {
            sessions.insert(
                cursor.session_id.to_string(),
                RefSession::new(&cursor.session_id),
            );
        }
        let Some(session) = sessions.get_mut(&*cursor.session_id) else {
            return unknown_session(cursor).map(|events| (events, broadcast::channel(1).1));
        };
        session.trim(Instant::now(), self.capacity, self.max_age);
        let buffered = session.replay_after(cursor.position)?;
        let capacity = self.capacity;
        let receiver = session
            .live
            .get_or_insert_with(|| broadcast::channel(capacity).0)
            .subscribe();
        Ok((buffered, receiver))
    }

    pub fn current_cursor(&self, session_id: &str) -> RefCursor {
        match self.lock().get(session_id) {
            Some(session) => session.latest(),
            None => RefCursor::start(session_id),
        }
    }

    /// Trims now; removes the session when nothing is left in it and
    /// nobody listens. Returns how many events it trimmed.
    pub fn trim_session(&self, session_id: &str) -> usize {
        let mut sessions = self.lock();
        let Some(session) = sessions.get_mut(session_id) else {
            return 0;
        };
        let trimmed = session.trim(Instant::now(), self.capacity, self.max_age);
        let listened = match &session.live {
            Some(live) => live.receiver_count() > 0,
            None => false,
        };
        let idle = session.events.is_empty() && !listened;
        if idle {
            sessions.remove(session_id);
        }
        trimmed
    }

    pub fn session_count(&self) -> usize {
        self.lock().len()
    }
}

fn unknown_session<E>(cursor: &RefCursor) -> Result<Vec<E>, RefGap> {
    if cursor.position == 0 {
        Ok(Vec::new())
    } else {
        Err(RefGap {
            reason: RefGapReason::Unavailable,
            latest: RefCursor::start(&cursor.session_id),
        })
    }
}

/// The event the broadcast baseline sends.
#[derive(Debug)]
pub struct BroadcastEvent<T> {
    pub position: u64,
    pub timestamp_nanos: u64,
    pub payload: T,
}

pub type BroadcastReceiver<T> = broadcast::Receiver<Arc<BroadcastEvent<T>>>;

/// One session of the broadcast baseline: a channel and a position counter.
pub struct BroadcastSession<T> {
    sender: broadcast::Sender<Arc<BroadcastEvent<T>>>,
    last_position: AtomicU64,
}

impl<T: Send + Sync + 'static> BroadcastSession<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            sender: broadcast::channel(capacity).0,
            last_position: AtomicU64::new(0),
        }
    }

    /// Sends one event to whoever is subscribed now; with nobody subscribed
    /// the event is dropped (a broadcast channel keeps nothing for later).
    #[inline]
    pub fn append(&self, payload: T) -> Arc<BroadcastEvent<T>> {
        // Relaxed: only uniqueness matters for one writer per session.
        let position = self.last_position.fetch_add(1, Ordering::Relaxed) + 1;
        let event = Arc::new(BroadcastEvent {
            position,
            timestamp_nanos: wall_clock_nanos(),
            payload,
        });
        let _ = self.sender.send(Arc::clone(&event));
        event
    }

    pub fn subscribe(&self) -> BroadcastReceiver<T> {
        self.sender.subscribe()
    }
}

/// The broadcast baseline with sessions by key, in the same concurrent map
/// `livereplay` uses (`dashmap`), so by-key figures compare the per-session
/// structure, not the map.
pub struct BroadcastStore<T> {
    sessions: DashMap<String, Arc<BroadcastSession<T>>>,
    capacity: usize,
}

impl<T: Send + Sync + 'static> BroadcastStore<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            sessions: DashMap::new(),
            capacity,
        }
    }

    pub fn session(&self, session_id: &str) -> Arc<BroadcastSession<T>> {
        if let Some(session) = self.sessions.get(session_id) {
            return Arc::clone(&session);
        }
        Arc::clone(
            &self
                .sessions
                .entry(session_id.to_owned())
                .or_insert_with(|| Arc::new(BroadcastSession::new(self.capacity))),
        )
    }

    #[inline]
    pub fn append(&self, session_id: &str, payload: T) -> Arc<BroadcastEvent<T>> {
        if let Some(session) = self.sessions.get(session_id) {
            return session.append(payload);
        }
        self.session(session_id).append(payload)
    }
}

/// An event laid out like `livereplay::Event` (key, incarnation, revision,
/// position, timestamp, payload), for the floor.
#[derive(Debug)]
pub struct FloorEvent<T> {
    pub key: SessionKey,
    pub incarnation: u64,
    pub revision: u64,
    pub position: u64,
    pub timestamp_nanos: u64,
    pub payload: T,
}

/// The floor of one append: read the wall clock as `SystemClock` does and
/// allocate the shared event.
#[inline]
pub fn floor_append<T>(key: &SessionKey, position: u64, payload: T) -> Arc<FloorEvent<T>> {
    Arc::new(FloorEvent {
        key: key.clone(),
        incarnation: 1,
        revision: 1,
        position,
        timestamp_nanos: wall_clock_nanos(),
        payload,
    })
}

/// What `livereplay::SystemClock::now` computes.
#[inline]
pub fn wall_clock_nanos() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX)
}
