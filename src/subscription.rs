//! Subscriptions: a reader with its own next position over the session's
//! ring.
//!
//! There is no second, live channel: buffered and live events are read from
//! the same slots, one position after another, so there is no seam at which
//! an event racing the subscribe call could be lost or repeated. A
//! subscription yields every event after its cursor exactly once, in order.
//!
//! When nothing new is published it arms the ring's doorbell with a waker
//! (a per-thread cached one that unparks the thread, for
//! [`Subscription::next_timeout`]; the task's, as a [`Stream`]),
//! **re-checks** the ring, and only then waits; writers ring the doorbell
//! after publishing. Every `arm` is paired with one `disarm` before the
//! subscription returns or is dropped.
//!
//! Reading on costs no shared write but the event's own reference count:
//! the subscription keeps the segment it reads from (one reference per
//! segment, not a directory lookup per event) and the last event's cursor
//! as its parts (the `Cursor`, which shares the session key, is built only
//! when asked for). Every event's age is checked against the store's clock
//! before it is yielded, as lib.rs documents; gaps are built by the
//! session's `read_next`.
//!
//! Lag: if the next position was overwritten, released or expired, the
//! subscription yields one [`Gap`] (reason `Trimmed`, with the latest
//! cursor) and then ends. If the session is removed, it yields a `Reset`
//! gap once it has delivered everything published, then ends.
//!
//! A subscription keeps its session alive (it is never evicted under a
//! subscriber); dropping it disarms the doorbell, so writers pay nothing
//! for it afterwards.

use std::fmt;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_core::Stream;

use crate::cursor::{Cursor, Incarnation, Revision};
use crate::error::{Gap, NextTimeoutError, TryNextError};
use crate::event::Event;
use crate::ring::{Read, Segment, Ticket};
use crate::session::{Held, Resume};
use crate::sync::Arc;
use crate::sync::{park_timeout, thread_waker};

/// Every event after a cursor, buffered first and then live.
///
/// ```
/// use livereplay::{Cursor, ReplayStore, Revision, SessionKey, TryNextError};
///
/// let store = ReplayStore::<&'static str>::default();
/// let key = SessionKey::new("acme", "chat-1")?;
/// store.append(&key, Revision(1), "buffered")?;
/// let mut subscription = store.subscribe_after_cursor(&Cursor::start(key.clone()))?;
/// store.append(&key, Revision(1), "live")?;
/// assert_eq!(*subscription.try_next()?.payload(), "buffered");
/// assert_eq!(*subscription.try_next()?.payload(), "live");
/// assert_eq!(subscription.try_next().unwrap_err(), TryNextError::Empty);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Subscription<T> {
    session: Held<T>,
    /// The next position to yield.
    next: u64,
    /// The starting cursor, until an event is yielded.
    start: Cursor,
    /// The last event yielded, as the parts of its cursor: copied per
    /// event, so yielding one touches no reference count of the key.
    last: Option<(Incarnation, Revision)>,
    /// [`Subscription::cursor`], built from `last` when first asked for.
    cursor: OnceLock<Cursor>,
    /// The segment the next position was last looked for in: reading on
    /// in it needs no directory lookup. Keeps at most one segment alive.
    segment: Option<Arc<Segment<T>>>,
    ended: bool,
    /// Armed doorbell slot; while `Some`, this subscription is counted as
    /// parked.
    armed: Option<Ticket>,
    /// Whether falling out of the window counts as a gap in the statistics
    /// (not for catch-up, which falls back to the log).
    counted: bool,
}

impl<T> Subscription<T> {
    /// Checks `cursor` (already scoped to the session's key) like a replay,
    /// then starts reading after it.
    pub(crate) fn start(session: Held<T>, cursor: &Cursor) -> Result<Self, Gap> {
        let last_seen = match session.resume(cursor)? {
            Resume::AtTail => Cursor::new(
                cursor.key().clone(),
                Some(session.incarnation()),
                cursor.revision(),
                cursor.position(),
            ),
            Resume::From { .. } => cursor.clone(),
        };
        // Relaxed: a statistic.
        session
            .subscribers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Self {
            session,
            next: cursor.position() + 1,
            start: last_seen,
            last: None,
            cursor: OnceLock::new(),
            segment: None,
            ended: false,
            armed: None,
            counted: true,
        })
    }

    /// Starts reading after `last_seen` with no check: catch-up checked
    /// the cursor against every tier already. A lag ends it with an
    /// uncounted gap.
    pub(crate) fn start_unchecked(session: Held<T>, last_seen: Cursor) -> Self {
        // Relaxed: a statistic.
        session
            .subscribers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self {
            session,
            next: last_seen.position() + 1,
            start: last_seen,
            last: None,
            cursor: OnceLock::new(),
            segment: None,
            ended: false,
            armed: None,
            counted: false,
        }
    }

    /// The cursor of the last event yielded (where to resume from if this
    /// subscription is dropped).
    pub fn cursor(&self) -> &Cursor {
        match self.last {
            None => &self.start,
            Some((incarnation, revision)) => self.cursor.get_or_init(|| {
                Cursor::new(
                    self.session.key().clone(),
                    Some(incarnation),
                    revision,
                    self.next - 1,
                )
            }),
        }
    }

    /// Whether the subscription has ended (after its gap).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// The next event if one is published; never blocks.
    pub fn try_next(&mut self) -> Result<Arc<Event<T>>, TryNextError> {
        if self.ended {
            return Err(TryNextError::Ended);
        }
        // The common cases read the ring directly: an event young enough
        // to yield, or nothing new on an open ring. What ends the
        // subscription (a trimmed, expired or removed position) goes
        // through the session's `read_next`, which reads the ring again
        // and builds the gap.
        let ring = &self.session.ring;
        match ring.read_forward(self.next, &mut self.segment) {
            Read::Event(event) => {
                let shared = &self.session.shared;
                let age = shared
                    .now()
                    .as_nanos()
                    .saturating_sub(event.timestamp.as_nanos());
                if age <= shared.max_age_nanos {
                    self.yielded(&event);
                    return Ok(event);
                }
            }
            Read::Pending if !ring.is_closed() => return Err(TryNextError::Empty),
            Read::Pending | Read::Trimmed => {}
        }
        match self
            .session
            .read_next(self.next, self.cursor(), self.counted)
        {
            Ok(Some(event)) => {
                self.yielded(&event);
                Ok(event)
            }
            Ok(None) => Err(TryNextError::Empty),
            Err(gap) => {
                self.end();
                Err(TryNextError::Gap(gap))
            }
        }
    }

    fn yielded(&mut self, event: &Event<T>) {
        self.next += 1;
        self.last = Some((event.incarnation, event.revision));
        // Built again from `last` if asked for.
        self.cursor = OnceLock::new();
    }

    /// The next event, waiting up to `timeout` for one. Blocks the thread:
    /// for async hosts use the [`Stream`] implementation instead.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Arc<Event<T>>, NextTimeoutError> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            match self.try_next() {
                Err(TryNextError::Empty) => {}
                other => return other.map_err(into_timeout_error),
            }
            let remaining = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::MAX,
            };
            if remaining.is_zero() {
                return Err(NextTimeoutError::Timeout);
            }
            // The thread's cached waker: arming clones a reference count.
            let ticket = self.session.ring.arm(thread_waker());
            // Re-check after arming: an append that raced the check above
            // either is visible now or will wake this thread.
            let rechecked = self.try_next();
            if !matches!(rechecked, Err(TryNextError::Empty)) {
                self.session.ring.disarm(ticket);
                return rechecked.map_err(into_timeout_error);
            }
            // Woken, timed out or spurious: the loop looks again either way.
            park_timeout(remaining);
            self.session.ring.disarm(ticket);
        }
    }

    fn end(&mut self) {
        self.ended = true;
        self.segment = None;
        self.disarm();
    }

    fn disarm(&mut self) {
        if let Some(ticket) = self.armed.take() {
            self.session.ring.disarm(ticket);
        }
    }
}

fn into_timeout_error(error: TryNextError) -> NextTimeoutError {
    match error {
        TryNextError::Empty => NextTimeoutError::Timeout,
        TryNextError::Gap(gap) => NextTimeoutError::Gap(gap),
        TryNextError::Ended => NextTimeoutError::Ended,
    }
}

/// Yields `Ok(event)` for every event, at most one `Err(gap)`, then ends.
/// Works with any executor: waking goes through the waker it is polled with.
impl<T> Stream for Subscription<T> {
    type Item = Result<Arc<Event<T>>, Gap>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match this.try_next() {
                Ok(event) => {
                    this.disarm();
                    return Poll::Ready(Some(Ok(event)));
                }
                Err(TryNextError::Gap(gap)) => return Poll::Ready(Some(Err(gap))),
                Err(TryNextError::Ended) => return Poll::Ready(None),
                Err(TryNextError::Empty) => {}
            }
            match this.armed {
                // Arm, then loop to re-check before waiting.
                None => this.armed = Some(this.session.ring.arm(cx.waker().clone())),
                Some(ticket) => {
                    if this.session.ring.poll_armed(ticket, cx.waker()) {
                        this.disarm();
                    } else {
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        self.disarm();
        self.session
            .subscribers
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl<T> fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("key", self.session.key())
            .field("next", &self.next)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}
