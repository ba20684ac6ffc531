//! Subscriptions: a reader with its own next position over the session's
//! ring.
//!
//! There is no second, live channel: buffered and live events are read from
//! the same slots, one position after another, so there is no seam at which
//! an event racing the subscribe call could be lost or repeated. A
//! subscription yields every event after its cursor exactly once, in order.
//!
//! When nothing new is published it arms the ring's doorbell, **re-checks**
//! the ring, and only then waits (blocking with [`Subscription::next_timeout`]
//! or as a [`Stream`]); writers ring the doorbell after publishing.
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
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use event_listener::EventListener;
use futures_core::Stream;

use crate::cursor::Cursor;
use crate::error::{Gap, NextTimeoutError, TryNextError};
use crate::event::Event;
use crate::session::{Held, Resume};
use crate::sync::{self, Arc};

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
    /// The cursor of the last event yielded (or the starting cursor).
    last_seen: Cursor,
    ended: bool,
    /// Armed listener; while `Some`, this subscription is counted as parked.
    listener: Option<EventListener>,
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
            last_seen,
            ended: false,
            listener: None,
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
            last_seen,
            ended: false,
            listener: None,
            counted: false,
        }
    }

    /// The cursor of the last event yielded (where to resume from if this
    /// subscription is dropped).
    pub fn cursor(&self) -> &Cursor {
        &self.last_seen
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
        match self
            .session
            .read_next(self.next, &self.last_seen, self.counted)
        {
            Ok(Some(event)) => {
                self.next += 1;
                self.last_seen = event.cursor();
                Ok(event)
            }
            Ok(None) => Err(TryNextError::Empty),
            Err(gap) => {
                self.end();
                Err(TryNextError::Gap(gap))
            }
        }
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
            let listener = self.session.ring.arm();
            // Re-check after arming: an append that raced the check above
            // either is visible now or will notify the listener.
            let rechecked = self.try_next();
            if !matches!(rechecked, Err(TryNextError::Empty)) {
                self.session.ring.disarm();
                return rechecked.map_err(into_timeout_error);
            }
            let remaining = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::MAX,
            };
            if remaining.is_zero() {
                self.session.ring.disarm();
                return Err(NextTimeoutError::Timeout);
            }
            let notified = sync::wait_listener(listener, remaining);
            self.session.ring.disarm();
            if !notified {
                // One last look: the deadline passed, not necessarily empty.
                return self.try_next().map_err(into_timeout_error);
            }
        }
    }

    fn end(&mut self) {
        self.ended = true;
        self.disarm();
    }

    fn disarm(&mut self) {
        if self.listener.take().is_some() {
            self.session.ring.disarm();
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
            match this.listener.as_mut() {
                // Arm, then loop to re-check before waiting.
                None => this.listener = Some(this.session.ring.arm()),
                Some(listener) => match Pin::new(listener).poll(cx) {
                    Poll::Ready(()) => this.disarm(),
                    Poll::Pending => return Poll::Pending,
                },
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
