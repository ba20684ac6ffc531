//! The read paths: catch-up, long-poll and SSE, over the store's catch-up.
//!
//! Owns [`Batch`] collection and the waits of live reads. Invariants:
//!
//! * **Durable only.** A read returns records at or below the key's
//!   durable watermark, read once when the batch starts; a newer record
//!   waits for the persister's commit ([`ReplayStore::durable_progress`]).
//!   A record the ring handed over and the log then recorded as lost ends
//!   the read with a `410` (it is never skipped).
//! * **One life, up to its end.** A batch walks the stream's segments
//!   (module `fork`: a fork's inherited runs, then its own) from where the
//!   offset names (`-1`: just before the first `Created` record, whose
//!   initial messages come first). Inherited runs end at their fork point,
//!   whatever their source did later. The own run stops at the life's end:
//!   a closing record (EOF: the stream's final offset) or a
//!   `Deleted`/newer `Created` record (the life is gone: not found).
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
use super::fork::{self, ReadAt, Segment};
use super::offset::{Offset, OffsetQuery};
use super::record::{StreamConfig, StreamRecord};
use super::state::StreamState;
use super::DurableStreams;

/// The longest fork chain a read follows.
pub const MAX_FORK_DEPTH: usize = 1024;

/// What one read collected.
pub(crate) struct Batch {
    /// The data records, in order.
    pub events: Vec<Arc<Event<StreamRecord>>>,
    /// Where the next read resumes.
    pub next_at: ReadAt,
    /// The offset a reader has everything up to after this batch.
    pub next: Offset,
    /// The batch reached the stream's closing record: EOF at `next`.
    pub closed: bool,
    /// The batch reached the end of the life (deleted, or created again).
    pub ended: bool,
    /// The batch stopped at the byte budget: more is durable after `next`.
    pub more: bool,
    /// A record of the own segment after the durable watermark was seen
    /// (its position).
    pub pending: Option<u64>,
}

/// A read's view of the stream, taken under its mutex and let go.
#[derive(Debug, Clone)]
pub(crate) struct ReadView {
    pub life: u64,
    pub config: std::sync::Arc<StreamConfig>,
    pub closed_at: Option<u64>,
    /// The position of the record that closed the stream.
    pub closing_record: Option<u64>,
    /// Where the stream's data is (one segment unless it is a fork).
    pub layout: Vec<Segment>,
    /// The life's records without data (never a tail).
    meta_positions: Vec<u64>,
}

impl ReadView {
    /// The view of a stream's state and layout.
    pub fn of(state: &StreamState, layout: Vec<Segment>) -> Self {
        Self {
            life: state.life,
            config: std::sync::Arc::clone(&state.config),
            closed_at: state.closure.as_ref().map(|closure| closure.tail),
            closing_record: state.closure.as_ref().map(|closure| closure.record),
            layout,
            meta_positions: state.meta_positions.clone(),
        }
    }

    /// The stream's own segment.
    pub fn own(&self) -> &Segment {
        &self.layout[self.layout.len() - 1]
    }
}

impl DurableStreams {
    /// The stream's state for a read (404 if none, 410 if soft-deleted,
    /// expired streams deleted), its access time refreshed unless `peek`.
    pub(crate) async fn view(&self, key: &SessionKey, peek: bool) -> Result<ReadView, StreamError> {
        let entry = self.entry(key, false)?.ok_or(StreamError::NotFound)?;
        let mut guard = entry.state.lock().await;
        // With several nodes: what the others wrote, and an expiry deleted
        // under the stream's lease like any write.
        self.catch_up_state(key, &entry, &mut guard, false)?;
        if self.is_shared()
            && guard
                .as_ref()
                .is_some_and(|l| !l.soft_deleted && l.expired())
        {
            drop(guard);
            let (mut state, hold) = self.lock_for_write(key, &entry).await?;
            self.expire(key, &mut state).await?;
            drop(state);
            drop(hold);
            guard = entry.state.lock().await;
        }
        self.expire(key, &mut guard).await?;
        let state = guard.as_mut().ok_or(StreamError::NotFound)?;
        if state.soft_deleted {
            return Err(soft_deleted());
        }
        if !peek {
            state.last_access = std::time::Instant::now();
        }
        let snapshot = state.clone();
        drop(guard);
        let layout = self.layout(key, &snapshot).await?;
        Ok(ReadView::of(&snapshot, layout))
    }

    /// A stream's segments: its sources' (cut at each fork point), then
    /// its own. Takes each source's mutex in turn, never two at once.
    pub(crate) async fn layout(
        &self,
        key: &SessionKey,
        state: &StreamState,
    ) -> Result<Vec<Segment>, StreamError> {
        // From the stream up to the root: (key, life, how it was forked).
        let mut chain = vec![(key.clone(), state.life, state.config.fork.clone())];
        if state.config.fork.is_none() {
            return Ok(vec![Segment::own(
                key.clone(),
                state.life,
                state.own_base(),
            )]);
        }
        while let Some(origin) = chain[chain.len() - 1].2.clone() {
            // Chains are acyclic by construction (a source exists before
            // its fork, and is never re-created while a fork needs it);
            // the bound keeps a damaged log from looping a request.
            if chain.len() > MAX_FORK_DEPTH {
                return Err(StreamError::Unavailable(format!(
                    "the fork chain is deeper than {MAX_FORK_DEPTH}: the log is inconsistent"
                )));
            }
            let source_key = self.key(key.tenant(), &origin.source)?;
            let gone = || {
                StreamError::Unavailable(format!(
                    "the fork's source {:?} no longer holds the inherited data",
                    origin.source
                ))
            };
            let entry = self.entry(&source_key, false)?.ok_or_else(gone)?;
            let source = {
                let mut source = entry.state.lock().await;
                self.catch_up_state(&source_key, &entry, &mut source, false)?;
                source.clone().ok_or_else(gone)?
            };
            if source.life != origin.source_life {
                return Err(gone());
            }
            chain.push((source_key, source.life, source.config.fork.clone()));
        }
        let inconsistent =
            || StreamError::Unavailable("the fork chain's records are inconsistent".into());
        let (root_key, root_life, _) = chain.pop().ok_or_else(inconsistent)?;
        let mut layout = vec![Segment::own(root_key, root_life, root_life)];
        // Down from the root: each fork cuts its source's layout.
        while let Some((fork_key, fork_life, origin)) = chain.pop() {
            let origin = origin.ok_or_else(inconsistent)?;
            let mut inherited = fork::inherit(&layout, u64::MAX, origin.at)?;
            inherited.push(Segment::own(
                fork_key,
                fork_life,
                origin.at.position.saturating_add(1),
            ));
            layout = inherited;
        }
        Ok(layout)
    }

    /// The own segment's tail position (session position).
    pub(crate) fn view_tail(&self, key: &SessionKey, view: &ReadView) -> Result<u64, StreamError> {
        Ok(match view.closed_at {
            Some(tail) => tail,
            None => {
                let mut position = self.durable(key)?.max(view.life);
                while position > view.life && view.meta_positions.binary_search(&position).is_ok() {
                    position -= 1;
                }
                position
            }
        })
    }

    /// The stream's tail offset.
    pub(crate) fn view_tail_offset(
        &self,
        key: &SessionKey,
        view: &ReadView,
    ) -> Result<Offset, StreamError> {
        Ok(view.own().offset_of(self.view_tail(key, view)?))
    }

    /// Where a read of `query` starts.
    pub(crate) fn start_at(
        &self,
        key: &SessionKey,
        view: &ReadView,
        query: OffsetQuery,
    ) -> Result<ReadAt, StreamError> {
        fork::locate(&view.layout, self.view_tail(key, view)?, query)
    }

    /// Collects the durable data from `at`, up to the byte budget.
    /// Returns the catch-up of the segment it stopped in too, positioned
    /// after what it read, for a live read to wait on.
    pub(crate) fn collect(
        &self,
        view: &ReadView,
        at: ReadAt,
    ) -> Result<(Batch, CatchUp<StreamRecord>), StreamError> {
        let mut batch = Batch {
            events: Vec::new(),
            next_at: at,
            next: view.layout[at.segment].offset_of(at.after),
            closed: false,
            ended: false,
            more: false,
            pending: None,
        };
        let mut bytes = 0usize;
        let own = view.layout.len() - 1;
        loop {
            let index = batch.next_at.segment;
            let segment = &view.layout[index];
            let inherited = index < own;
            let durable = self.durable(&segment.key)?;
            let mut catch_up = self.store.catch_up(&Cursor::new(
                segment.key.clone(),
                None,
                Revision(0),
                batch.next_at.after,
            ))?;
            let mut exhausted = segment.last.is_some_and(|last| batch.next_at.after >= last);
            while !exhausted {
                let event = match catch_up.try_next() {
                    Ok(event) => event,
                    Err(
                        crate::TryNextError::Empty
                        | crate::TryNextError::Ended
                        | crate::TryNextError::Closed(_),
                    ) => {
                        // An inherited run is durable to its end: nothing
                        // more means its end.
                        exhausted = inherited;
                        break;
                    }
                    Err(crate::TryNextError::Gap(gap)) => {
                        if batch.events.is_empty() {
                            return Err(crate::Error::Gap(gap).into());
                        }
                        return Ok((batch, catch_up));
                    }
                };
                let position = event.position();
                if segment.last.is_some_and(|last| position > last) {
                    exhausted = true;
                    break;
                }
                if position > durable {
                    batch.pending = Some(position);
                    return Ok((batch, catch_up));
                }
                if let Some(through) = self.store.lost_after_read(&segment.key, position) {
                    return Err(StreamError::Gone(format!(
                        "the stream's records up to position {through} were lost before they were durable: read from -1"
                    )));
                }
                let record = event.payload();
                match record {
                    StreamRecord::Created { .. } if position == segment.first => {}
                    StreamRecord::Created { .. } | StreamRecord::Deleted => {
                        if inherited {
                            exhausted = true;
                            break;
                        }
                        batch.ended = true;
                        return Ok((batch, catch_up));
                    }
                    StreamRecord::ForkRef { .. } | StreamRecord::SoftDeleted => {
                        batch.next_at.after = position;
                        continue;
                    }
                    StreamRecord::Closed { .. } => {
                        if inherited {
                            // A fork starts open: its source's end is not its own.
                            batch.next_at.after = position;
                            continue;
                        }
                        batch.closed = true;
                        return Ok((batch, catch_up));
                    }
                    StreamRecord::Data { .. } => {}
                }
                let weight = record.weight();
                if !batch.events.is_empty() && bytes + weight > self.options.max_read_bytes {
                    batch.more = true;
                    return Ok((batch, catch_up));
                }
                bytes += weight;
                batch.next_at.after = position;
                batch.next = segment.offset_of(position);
                let closes = matches!(
                    record,
                    StreamRecord::Data { close: Some(_), .. }
                        | StreamRecord::Created { closed: true, .. }
                );
                batch.events.push(event);
                if closes && !inherited {
                    batch.closed = true;
                    return Ok((batch, catch_up));
                }
            }
            if exhausted && index < own {
                batch.next_at = ReadAt {
                    segment: index + 1,
                    after: view.layout[index + 1].first - 1,
                };
                continue;
            }
            // A reader at the record that closed the stream (it read it, so
            // it is durable) is at EOF.
            if index == own
                && batch.events.is_empty()
                && view.closing_record == Some(batch.next_at.after)
            {
                batch.closed = true;
            }
            return Ok((batch, catch_up));
        }
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
                    // The store closed the stream's session without the
                    // protocol (a runtime's turn that ended unfinished, or
                    // one its process left open, closed at a restore): the
                    // stream takes that closure as its closing record,
                    // which the caller reads next (module docs).
                    Ok(None) => {
                        if let Some(closure) = catch_up.closure() {
                            if catch_up.cursor().key() == key {
                                self.close_key(key, closure.reason).await?;
                                return Ok(true);
                            }
                        }
                        // An ended catch-up cannot wake us: wait out the
                        // deadline rather than have the caller spin.
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

/// The answer for every request but `PUT` on a soft-deleted stream.
pub(crate) fn soft_deleted() -> StreamError {
    StreamError::Gone(
        "the stream was deleted; its data is kept only for the forks that inherit it".into(),
    )
}

/// A batch's body: the messages in order, the bytes together, or for a
/// JSON stream as one JSON array.
pub(crate) fn body(config: &StreamConfig, events: &[Arc<Event<StreamRecord>>]) -> Vec<u8> {
    let data = || {
        events
            .iter()
            .flat_map(|event| event.payload().messages())
            .map(Vec::as_slice)
    };
    // Sized once and copied a message at a time (`memcpy`): a byte
    // iterator here was most of a catch-up's time.
    let (count, bytes) = data().fold((0, 0), |(count, bytes), message| {
        (count + 1, bytes + message.len())
    });
    if !config.is_json() {
        let mut out = Vec::with_capacity(bytes);
        for message in data() {
            out.extend_from_slice(message);
        }
        return out;
    }
    let mut out = Vec::with_capacity(bytes + count + 2);
    out.push(b'[');
    for (index, message) in data().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(message);
    }
    out.push(b']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ReplayStore;

    fn config(content_type: &str) -> StreamConfig {
        StreamConfig {
            content_type: content_type.into(),
            ttl_seconds: None,
            expires_at: None,
            fork: None,
        }
    }

    /// A batch's body: a byte stream's messages end to end, a JSON
    /// stream's as one array, across records of several messages and
    /// empty ones.
    #[test]
    fn a_body_is_the_messages_in_order() {
        let store = ReplayStore::<StreamRecord>::builder()
            .build()
            .expect("store");
        let key = SessionKey::new("t", "body").expect("key");
        let records = [
            StreamRecord::Data {
                messages: vec![b"ab".to_vec(), Vec::new(), b"c".to_vec()],
                stamp: None,
                close: None,
            },
            StreamRecord::Closed {
                reason: crate::CloseReason::Done,
                stamp: None,
            },
            StreamRecord::data(vec![0xff; 3000]),
        ];
        let events: Vec<_> = records
            .into_iter()
            .map(|record| store.append(&key, Revision(0), record).expect("append"))
            .collect();
        let mut bytes = b"abc".to_vec();
        bytes.extend_from_slice(&[0xff; 3000]);
        assert_eq!(body(&config("application/octet-stream"), &events), bytes);
        let json = body(&config("application/json"), &events[..1]);
        assert_eq!(json, b"[ab,,c]");
        assert_eq!(body(&config("application/json"), &[]), b"[]");
        assert!(body(&config("text/plain"), &[]).is_empty());
    }
}
