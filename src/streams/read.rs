//! The read paths: catch-up, long-poll and SSE, over the store's catch-up.
//!
//! Owns [`Batch`] collection and the waits of live reads. Invariants:
//!
//! * **Durable only.** A read returns records at or below the key's
//!   durable watermark, read once when the batch starts; a newer record
//!   waits for the persister's commit ([`ReplayStore::durable_progress`]).
//!   A record the ring handed over and the log then recorded as lost ends
//!   the read with a `410` (it is never skipped).
//! * **One life, up to its end.** A batch starts after an offset of the
//!   life (`-1` is just before its `Created` record, whose initial messages
//!   come first) and stops at the life's end: a closing record (EOF: the
//!   stream's final offset) or a `Deleted`/newer `Created` record (the life
//!   is gone: the stream reads as not found).
//! * **Bounded, whole records.** A batch carries at most `max_read_bytes`
//!   (one larger record alone) and never part of a record, so every offset
//!   is a request boundary; the caller sends it and asks again.
//! * **No polling.** A live read with nothing durable to send waits on the
//!   catch-up's ring subscription for the next record, then on the
//!   persister's commits for it to become durable.
//!
//! [`ReplayStore::durable_progress`]: crate::ReplayStore::durable_progress

use std::future::poll_fn;
use std::pin::Pin;

use futures_core::Stream;

use crate::catchup::CatchUp;
use crate::cursor::{Cursor, Revision};
use crate::event::Event;
use crate::key::SessionKey;
use crate::sync::Arc;

use super::error::StreamError;
use super::offset::{Offset, OffsetQuery};
use super::record::{StreamConfig, StreamRecord};
use super::DurableStreams;

/// What one read collected.
pub(crate) struct Batch {
    /// The data records, in order.
    pub events: Vec<Arc<Event<StreamRecord>>>,
    /// The position a reader has everything up to after this batch.
    pub next: u64,
    /// The batch reached the life's `Closed` record: EOF at `next`.
    pub closed: bool,
    /// The batch reached the end of the life (deleted, or created again).
    pub ended: bool,
    /// The batch stopped at the byte budget: more is durable after `next`.
    pub more: bool,
    /// A record after the durable watermark was seen (its position).
    pub pending: Option<u64>,
}

/// A read's view of the stream, taken under its mutex and let go.
#[derive(Debug, Clone)]
pub(crate) struct ReadView {
    pub life: u64,
    pub config: StreamConfig,
    pub closed_at: Option<u64>,
    /// The position of the record that closed the stream.
    pub closing_record: Option<u64>,
}

impl DurableStreams {
    /// The stream's state for a read (404 if none, expired streams
    /// deleted), its access time refreshed unless `peek`.
    pub(crate) async fn view(&self, key: &SessionKey, peek: bool) -> Result<ReadView, StreamError> {
        let entry = self.entry(key, false)?.ok_or(StreamError::NotFound)?;
        let mut guard = entry.state.lock().await;
        self.expire(key, &mut guard).await?;
        let state = guard.as_mut().ok_or(StreamError::NotFound)?;
        if !peek {
            state.last_access = std::time::Instant::now();
        }
        Ok(ReadView {
            life: state.life,
            config: state.config.clone(),
            closed_at: state.closure.as_ref().map(|closure| closure.tail),
            closing_record: state.closure.as_ref().map(|closure| closure.record),
        })
    }

    /// The tail of a viewed stream.
    pub(crate) fn view_tail(&self, key: &SessionKey, view: &ReadView) -> Result<u64, StreamError> {
        Ok(match view.closed_at {
            Some(tail) => tail,
            None => self.durable(key)?.max(view.life),
        })
    }

    /// The position a read starts after.
    pub(crate) fn start_position(
        &self,
        key: &SessionKey,
        view: &ReadView,
        query: OffsetQuery,
    ) -> Result<u64, StreamError> {
        let offset = match query {
            // Just before the `Created` record: its initial messages are
            // the stream's first data.
            OffsetQuery::Start => return Ok(view.life - 1),
            OffsetQuery::Now => return self.view_tail(key, view),
            OffsetQuery::At(offset) if offset.is_start() => return Ok(view.life - 1),
            OffsetQuery::At(offset) => offset,
        };
        let tail = Offset {
            position: self.view_tail(key, view)?,
            life: view.life,
        };
        if offset.life < view.life {
            return Err(StreamError::Gone(format!(
                "offset {offset} belongs to an older life of this stream (deleted, then created again at {}): read from -1",
                Offset { position: view.life, life: view.life }
            )));
        }
        if offset.life > view.life || offset.position < view.life || offset.position > tail.position
        {
            return Err(StreamError::NeverIssued { offset, tail });
        }
        Ok(offset.position)
    }

    /// Collects the durable data after `after`, up to the byte budget.
    /// Returns the catch-up too, positioned after what it read, for a live
    /// read to wait on.
    pub(crate) fn collect(
        &self,
        key: &SessionKey,
        view: &ReadView,
        after: u64,
    ) -> Result<(Batch, CatchUp<StreamRecord>), StreamError> {
        let life = view.life;
        let durable = self.durable(key)?;
        let mut catch_up =
            self.store
                .catch_up(&Cursor::new(key.clone(), None, Revision(0), after))?;
        let mut batch = Batch {
            events: Vec::new(),
            next: after,
            closed: false,
            ended: false,
            more: false,
            pending: None,
        };
        let mut bytes = 0usize;
        loop {
            let event = match catch_up.try_next() {
                Ok(event) => event,
                Err(crate::TryNextError::Empty | crate::TryNextError::Ended) => break,
                Err(crate::TryNextError::Gap(gap)) => {
                    if batch.events.is_empty() {
                        return Err(crate::Error::Gap(gap).into());
                    }
                    break;
                }
            };
            let position = event.position();
            if position > durable {
                batch.pending = Some(position);
                break;
            }
            if let Some(through) = self.store.lost_after_read(key, position) {
                return Err(StreamError::Gone(format!(
                    "the stream's records up to position {through} were lost before they were durable: read from -1"
                )));
            }
            let record = event.payload();
            let own_start = matches!(record, StreamRecord::Created { .. }) && position == life;
            if matches!(record, StreamRecord::Deleted)
                || (matches!(record, StreamRecord::Created { .. }) && !own_start)
            {
                batch.ended = true;
                break;
            }
            if matches!(record, StreamRecord::Closed { .. }) {
                batch.closed = true;
                break;
            }
            let weight = record.weight();
            if !batch.events.is_empty() && bytes + weight > self.options.max_read_bytes {
                batch.more = true;
                break;
            }
            bytes += weight;
            batch.next = position;
            let closes = matches!(
                record,
                StreamRecord::Data { close: Some(_), .. }
                    | StreamRecord::Created { closed: true, .. }
            );
            batch.events.push(event);
            if closes {
                batch.closed = true;
                break;
            }
        }
        // A reader at the record that closed the stream (it read it, so it
        // is durable) is at EOF.
        if batch.events.is_empty() && view.closing_record == Some(after) {
            batch.closed = true;
        }
        Ok((batch, catch_up))
    }

    /// Waits for a record after what `catch_up` read to become durable, at
    /// most until `deadline`. `pending` is a record already seen. Returns
    /// whether one did (`false`: the deadline passed).
    pub(crate) async fn wait_for_more(
        &self,
        key: &SessionKey,
        catch_up: &mut CatchUp<StreamRecord>,
        pending: Option<u64>,
        deadline: tokio::time::Instant,
    ) -> Result<bool, StreamError> {
        let target = match pending {
            Some(position) => position,
            None => {
                let next = poll_fn(|cx| Pin::new(&mut *catch_up).poll_next(cx));
                match tokio::time::timeout_at(deadline, next).await {
                    Err(_) => return Ok(false),
                    // An ended catch-up cannot wake us: wait out the
                    // deadline rather than have the caller spin.
                    Ok(None) => {
                        tokio::time::sleep_until(deadline).await;
                        return Ok(false);
                    }
                    Ok(Some(Err(gap))) => return Err(crate::Error::Gap(gap).into()),
                    Ok(Some(Ok(event))) => event.position(),
                }
            }
        };
        self.durable_by(key, target, deadline).await
    }
}

/// A batch's body: the bytes in order, or for a JSON stream the messages as
/// one JSON array.
pub(crate) fn body(config: &StreamConfig, events: &[Arc<Event<StreamRecord>>]) -> Vec<u8> {
    let data = events
        .iter()
        .flat_map(|event| event.payload().messages())
        .map(Vec::as_slice);
    if !config.is_json() {
        return data.flatten().copied().collect();
    }
    let mut out = vec![b'['];
    for (index, message) in data.enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(message);
    }
    out.push(b']');
    out
}
