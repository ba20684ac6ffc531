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
//! when asked for). Gaps are built by the session's `read_next`.
//!
//! Age: every event is checked against `max_age` before it is yielded, but
//! not against a clock reading of its own. Events are read in *runs*: a run
//! starts with the first event found after the subscription caught up, takes
//! one clock reading, checks at most 16 events against it, and ends early
//! when the subscription finds nothing new. So a yielded event was younger
//! than `max_age` at a reading taken no earlier than the subscription's
//! last look at an empty ring and no more than 15 yields before: the
//! guarantee a replay gives for its whole result at one reading. A
//! subscription kept busy by a fast writer pays one reading per 16 events
//! instead of one per event; one woken for each event still reads the clock
//! once per wake-up.
//!
//! Lag: if the next position was overwritten, released or expired, the
//! subscription yields one [`Gap`] (reason `Trimmed`, with the latest
//! cursor) and then ends. If the session is removed, it yields a `Reset`
//! gap once it has delivered everything published, then ends. If it is
//! closed (module `closure`), it delivers every position through the
//! closure's last one, waiting for appends still in flight, and then ends
//! with [`TryNextError::Closed`].
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

use crate::closure::Closure;
use crate::cursor::{Cursor, Incarnation, Revision};
use crate::error::{Gap, NextTimeoutError, TryNextError};
use crate::event::Event;
use crate::ring::{Read, Segment, Ticket};
use crate::session::{Ending, Held, Resume};
use crate::sync::Arc;
use crate::sync::{park, thread_waker};

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
    /// How the session ended, once the subscription delivered its last
    /// position (`TryNextError::Closed`).
    closure: Option<Closure>,
    /// Armed doorbell slot; while `Some`, this subscription is counted as
    /// parked.
    armed: Option<Ticket>,
    /// Whether falling out of the window counts as a gap in the statistics
    /// (not for catch-up, which falls back to the log).
    counted: bool,
    /// The clock reading the current run of events is checked against.
    run: Run,
}

/// The clock reading a run of events is checked against, and how many
/// more events it may check.
///
/// A run starts at the first event read after the subscription caught up
/// (or after the previous run's [`RUN_LENGTH`] events) and takes one clock
/// reading; it ends when the subscription finds nothing new, so an event
/// published after a caught-up subscription looked is never checked against
/// a reading older than that look.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    /// Nanoseconds since the epoch, as the store's clock read them.
    now: u64,
    /// Events the reading may still check; 0: the next one reads the clock.
    left: u32,
}

/// How many events one clock reading checks at most: the cost of the
/// reading is spread over up to this many events, and an event is never
/// checked against a reading taken more than this many yields earlier.
const RUN_LENGTH: u32 = 16;

impl Run {
    /// The run's reading, taken with `read_clock` if the run is new.
    #[inline]
    fn reading(&mut self, read_clock: impl FnOnce() -> u64) -> u64 {
        if self.left == 0 {
            self.now = read_clock();
            self.left = RUN_LENGTH;
        }
        self.left -= 1;
        self.now
    }

    fn end(&mut self) {
        self.left = 0;
    }
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
            closure: None,
            armed: None,
            counted: true,
            run: Run::default(),
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
            closure: None,
            armed: None,
            counted: false,
            run: Run::default(),
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

    /// Whether the session it reads was removed from its store.
    pub(crate) fn session_is_removed(&self) -> bool {
        self.session.is_removed()
    }

    /// Whether the subscription has ended (after its gap or closure).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// How the session ended, once this subscription has delivered
    /// everything through its last position (the [`Stream`] then ends
    /// with no gap; [`Subscription::try_next`] returned
    /// [`TryNextError::Closed`] once). `None` while it may go on, or if it
    /// ended with a gap.
    pub fn closure(&self) -> Option<Closure> {
        self.closure
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
                if self.is_young(&event) {
                    self.yielded(&event);
                    return Ok(event);
                }
            }
            Read::Pending if !ring.is_closed() => {
                // Caught up: whatever comes next is checked against a
                // reading taken after it was found.
                self.run.end();
                return Err(TryNextError::Empty);
            }
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
            Err(Ending::Gap(gap)) => {
                self.end();
                Err(TryNextError::Gap(gap))
            }
            Err(Ending::Closed(closure)) => {
                self.end();
                self.closure = Some(closure);
                Err(TryNextError::Closed(closure))
            }
        }
    }

    /// Whether `event` was younger than the session's `max_age` at the
    /// current run's clock reading (taken now if the run is new).
    #[inline]
    fn is_young(&mut self, event: &Event<T>) -> bool {
        let shared = &self.session.shared;
        let now = self.run.reading(|| shared.now().as_nanos());
        now.saturating_sub(event.timestamp.as_nanos()) <= shared.max_age_nanos
    }

    fn yielded(&mut self, event: &Event<T>) {
        self.next += 1;
        self.last = Some((event.incarnation, event.revision));
        // Built again from `last` if asked for.
        self.cursor = OnceLock::new();
    }

    /// The next event, waiting up to `timeout` for one. Blocks the thread:
    /// for async hosts use the [`Stream`] implementation instead.
    ///
    /// A timeout too long to be a deadline, such as [`Duration::MAX`],
    /// waits for as long as it takes with no timer, as a blocking receive
    /// does. Any other timeout arms the operating system's timer for each
    /// wait, which on Linux adds about 0.1 µs to a wake-up
    /// (docs/benchmark-history.md, "Delivery without a timer").
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Arc<Event<T>>, NextTimeoutError> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            match self.try_next() {
                Err(TryNextError::Empty) => {}
                other => return other.map_err(into_timeout_error),
            }
            // No deadline (the timeout does not fit one): wait with no timer.
            let remaining = match deadline {
                Some(deadline) => match deadline.saturating_duration_since(Instant::now()) {
                    Duration::ZERO => return Err(NextTimeoutError::Timeout),
                    remaining => Some(remaining),
                },
                None => None,
            };
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
            park(remaining);
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
        TryNextError::Closed(closure) => NextTimeoutError::Closed(closure),
        TryNextError::Ended => NextTimeoutError::Ended,
    }
}

/// Yields `Ok(event)` for every event, at most one `Err(gap)`, then ends;
/// a closed session's subscription ends with no gap after its last event
/// ([`Subscription::closure`] says why). Works with any executor: waking goes through the waker it is polled with.
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
                Err(TryNextError::Closed(_) | TryNextError::Ended) => return Poll::Ready(None),
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
