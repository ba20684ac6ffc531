//! The tailer: wakes catch-ups on a node that does not write the session.
//!
//! On a node that writes a session, its own persister's commits wake the
//! catch-ups waiting on it. A node serving another node's sessions from a
//! shared log (Redis) has no such commits to wait for: there, one tailer
//! thread per store waits on the log's [`LogWatch`] for every session a
//! catch-up waits on, with one blocking call for all of them (Redis: one
//! `XREAD BLOCK` over their streams), and wakes the catch-ups of the
//! sessions that moved.
//!
//! Invariants:
//! * an interest is `(session, after)`: the smallest `after` any waiting
//!   catch-up of that session registered. When the log has a record after
//!   it, its catch-ups are woken and the interest moves to the log's tail,
//!   so the session stays watched while they read and register again (a
//!   registration cannot interrupt a wait in progress on the other
//!   sessions). It is dropped once no catch-up has listened to it for
//!   `IDLE_GRACE`;
//! * a catch-up registers *before* it looks at the log a last time, so a
//!   record that lands between its look and its wait is not missed: either
//!   its look sees it, or the tailer's next wait does;
//! * the thread starts on the first interest and ends with the store; each
//!   wait is bounded (`WAIT_SLICE`), so a new interest or a stop is seen
//!   within it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use event_listener::{Event as Notifier, EventListener};

use crate::durable::DurableLog;
use crate::key::SessionKey;

/// The longest one wait on the log lasts: a new interest or a stop waits
/// at most this long to be seen.
const WAIT_SLICE: Duration = Duration::from_millis(200);

/// After a failed wait, the pause before the next (the log is down).
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// How long an interest nobody listens to is kept (its catch-ups may be
/// reading, about to register again).
const IDLE_GRACE: Duration = Duration::from_secs(2);

struct Interest {
    after: u64,
    woken: Arc<Notifier>,
    /// Since when nobody listens, if nobody does.
    idle_since: Option<std::time::Instant>,
}

pub(crate) struct Tailer {
    log: Arc<dyn DurableLog>,
    interests: Mutex<HashMap<SessionKey, Interest>>,
    /// Wakes the thread when the first interest arrives.
    arrived: Condvar,
    stop: AtomicBool,
    thread: OnceLock<Mutex<Option<JoinHandle<()>>>>,
}

impl Tailer {
    pub(crate) fn new(log: Arc<dyn DurableLog>) -> Self {
        Self {
            log,
            interests: Mutex::new(HashMap::new()),
            arrived: Condvar::new(),
            stop: AtomicBool::new(false),
            thread: OnceLock::new(),
        }
    }

    /// Whether the log can be waited on at all.
    pub(crate) fn available(&self) -> bool {
        self.log.watch().is_some()
    }

    /// A listener woken once the log has a record after `after` in `key`'s
    /// session (or the tailer stops). Look at the log once more after this,
    /// before waiting.
    pub(crate) fn listen(self: &Arc<Self>, key: &SessionKey, after: u64) -> EventListener {
        self.start();
        let mut interests = self.interests.lock().unwrap_or_else(|e| e.into_inner());
        let interest = interests.entry(key.clone()).or_insert_with(|| Interest {
            after,
            woken: Arc::new(Notifier::new()),
            idle_since: None,
        });
        interest.after = interest.after.min(after);
        interest.idle_since = None;
        let listener = interest.woken.listen();
        drop(interests);
        self.arrived.notify_one();
        listener
    }

    fn start(self: &Arc<Self>) {
        self.thread.get_or_init(|| {
            let tailer = Arc::clone(self);
            let handle = std::thread::Builder::new()
                .name("livereplay-tailer".into())
                .spawn(move || tailer.run())
                .ok();
            Mutex::new(handle)
        });
    }

    /// Stops the thread and wakes every listener.
    pub(crate) fn shutdown(&self) {
        // Relaxed: the thread also sees the stop through the condvar's
        // mutex, or within one bounded wait.
        self.stop.store(true, Relaxed);
        self.arrived.notify_all();
        if let Some(handle) = self
            .thread
            .get()
            .and_then(|slot| slot.lock().unwrap_or_else(|e| e.into_inner()).take())
        {
            let _ = handle.join();
        }
        let interests = self.interests.lock().unwrap_or_else(|e| e.into_inner());
        for interest in interests.values() {
            interest.woken.notify(usize::MAX);
        }
    }

    fn run(&self) {
        let Some(watch) = self.log.watch() else {
            return;
        };
        while !self.stop.load(Relaxed) {
            let snapshot: Vec<(SessionKey, u64)> = {
                let mut interests = self.interests.lock().unwrap_or_else(|e| e.into_inner());
                // Nobody has waited on these for a while.
                let now = std::time::Instant::now();
                interests.retain(|_, interest| {
                    if interest.woken.total_listeners() > 0 {
                        interest.idle_since = None;
                        return true;
                    }
                    let since = *interest.idle_since.get_or_insert(now);
                    now.duration_since(since) < IDLE_GRACE
                });
                if interests.is_empty() {
                    let _ = self
                        .arrived
                        .wait_timeout(interests, WAIT_SLICE)
                        .unwrap_or_else(|e| e.into_inner());
                    continue;
                }
                interests
                    .iter()
                    .map(|(key, interest)| (key.clone(), interest.after))
                    .collect()
            };
            match watch.wait_any(&snapshot, WAIT_SLICE) {
                Ok(ready) => {
                    // Where each woken session's log ends now: its interest
                    // moves there, so it stays watched.
                    let tails: Vec<(usize, Option<u64>)> = ready
                        .into_iter()
                        .map(|index| {
                            let tail = snapshot.get(index).and_then(|(key, _)| {
                                self.log.meta(key).ok().flatten().map(|m| m.durable_tail)
                            });
                            (index, tail)
                        })
                        .collect();
                    let mut interests = self.interests.lock().unwrap_or_else(|e| e.into_inner());
                    for (index, tail) in tails {
                        let Some((key, after)) = snapshot.get(index) else {
                            continue;
                        };
                        let Some(interest) = interests.get_mut(key) else {
                            continue;
                        };
                        // Only if no catch-up registered a lower position
                        // meanwhile (it still waits for that one: the next
                        // wait answers it at once).
                        if interest.after >= *after {
                            interest.after = tail.unwrap_or(*after).max(*after);
                            interest.woken.notify(usize::MAX);
                        }
                    }
                }
                Err(_) => std::thread::sleep(RETRY_PAUSE),
            }
        }
    }
}
