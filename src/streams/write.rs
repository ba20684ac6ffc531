//! The write path: create, append (with close), delete.
//!
//! Owns the protocol's serialisation. Invariants:
//!
//! * **One step per stream.** Every write takes its stream's async mutex,
//!   checks (closure, content type, `Stream-Seq`, producer), appends its
//!   one record (see `record`) and folds it into the state before letting
//!   go: checks and state never disagree with the records.
//! * **Acknowledged means durable.** A write answers success only once its
//!   records are durable (and none was recorded as lost); it waits after
//!   letting go of the mutex, so one slow commit does not hold the stream.
//! * **Nothing after the end.** A closed stream refuses appends (`409`
//!   with `Stream-Closed`) except the idempotent retries the protocol
//!   names.
//! * The in-process writer's append is never on this path.

use axum::body::Bytes;
use serde_json::value::RawValue;

use crate::cursor::Revision;
use crate::key::SessionKey;

use super::error::StreamError;
use super::fork::{self, Segment};
use super::offset::Offset;
use super::offset::OffsetQuery;
use super::producer::{self, Admission};
use super::read::{soft_deleted, ReadView};
use super::record::{
    same_media_type, CloseReason, ExpiresAt, ForkOrigin, ProducerStamp, StreamConfig, StreamRecord,
    WriteStamp,
};
use super::state::StreamState;
use super::DurableStreams;

/// A `PUT`'s outcome.
#[derive(Debug, Clone)]
pub(crate) struct Created {
    /// Whether the stream was created (`201`) or existed alike (`200`).
    pub fresh: bool,
    /// The stream's configuration.
    pub config: StreamConfig,
    /// Its tail.
    pub next: Offset,
    /// Whether it is closed.
    pub closed: bool,
}

/// A fork's `PUT`, parsed.
#[derive(Debug, Clone)]
pub(crate) struct ForkRequest {
    /// The source's path (below `/v1/stream/`).
    pub source: String,
    /// `Stream-Fork-Offset` (`None`: the source's tail).
    pub at: Option<Offset>,
    /// `Stream-Fork-Sub-Offset` (0 if absent).
    pub sub_offset: u64,
    /// `Content-Type`, if given (else the source's).
    pub content_type: Option<String>,
    pub ttl_seconds: Option<u64>,
    pub expires_at: Option<ExpiresAt>,
}

/// A `POST`'s request, parsed.
#[derive(Debug, Clone)]
pub(crate) struct Append {
    pub content_type: Option<String>,
    pub body: Bytes,
    pub close: bool,
    pub stream_seq: Option<String>,
    pub producer: Option<ProducerStamp>,
}

/// A `POST`'s outcome.
#[derive(Debug, Clone)]
pub(crate) struct Appended {
    /// The tail before it.
    pub before: Offset,
    /// Whether it appended data (not a duplicate, not a close alone).
    pub wrote_data: bool,
    /// The tail after it.
    pub next: Offset,
    /// Whether the stream is closed now.
    pub closed: bool,
    /// The producer's epoch and highest admitted sequence, with whether
    /// this request was new data (`200`) or a duplicate (`204`).
    pub producer: Option<(u64, u64, bool)>,
}

impl DurableStreams {
    /// `PUT`: creates the stream, or confirms one with the same
    /// configuration and closure status.
    pub(crate) async fn create(
        &self,
        key: &SessionKey,
        config: StreamConfig,
        close: bool,
        body: Bytes,
    ) -> Result<Created, StreamError> {
        let messages = messages(&config, body, false)?;
        let entry = self.entry(key, true)?.ok_or(StreamError::NotFound)?;
        let (mut state, _hold) = self.lock_for_write(key, &entry).await?;
        self.expire(key, &mut state).await?;
        if state.as_ref().is_some_and(|live| live.soft_deleted) {
            return Err(StreamError::Conflict(
                "a deleted stream whose forks still read it is here: its URL cannot be reused yet"
                    .into(),
            ));
        }
        if let Some(existing) = state.as_ref() {
            let closed = existing.closure.is_some();
            if !existing.config.matches(&config) || closed != close {
                return Err(StreamError::Conflict(format!(
                    "a stream exists here with another configuration (content type {:?}, ttl {:?}, expires at {:?}, {}): delete it first or use the same settings",
                    existing.config.content_type,
                    existing.config.ttl_seconds,
                    existing.config.expires_at.as_ref().map(|at| &at.text),
                    if closed { "closed" } else { "open" },
                )));
            }
            let next = self.own_tail_offset(key, existing)?;
            return Ok(Created {
                fresh: false,
                config: StreamConfig::clone(&existing.config),
                next,
                closed,
            });
        }
        self.create_life(key, state, config, messages, close).await
    }

    /// `POST`: appends, closes, or both at once.
    pub(crate) async fn append(
        &self,
        key: &SessionKey,
        mut request: Append,
    ) -> Result<Appended, StreamError> {
        let entry = self.entry(key, false)?.ok_or(StreamError::NotFound)?;
        let (mut guard, _hold) = self.lock_for_write(key, &entry).await?;
        self.expire(key, &mut guard).await?;
        let state = guard.as_mut().ok_or(StreamError::NotFound)?;
        if state.soft_deleted {
            return Err(soft_deleted());
        }
        state.last_access = std::time::Instant::now();
        if let Some(closure) = &state.closure {
            let final_offset = state.offset(closure.tail);
            let retry_of_close = request
                .producer
                .as_ref()
                .is_some_and(|stamp| closure.by.as_ref() == Some(stamp));
            if retry_of_close || (request.close && request.body.is_empty()) {
                return Ok(Appended {
                    before: final_offset,
                    wrote_data: false,
                    next: final_offset,
                    closed: true,
                    producer: request
                        .producer
                        .map(|stamp| (stamp.epoch, stamp.seq, false)),
                });
            }
            return Err(StreamError::Closed { final_offset });
        }
        if request.body.is_empty() && !request.close {
            return Err(StreamError::BadRequest(
                "an append needs a body (an empty POST is only valid with Stream-Closed: true)"
                    .into(),
            ));
        }
        if !request.body.is_empty() {
            let Some(content_type) = request.content_type.as_deref() else {
                return Err(StreamError::BadRequest(
                    "an append with a body needs a Content-Type".into(),
                ));
            };
            if !same_media_type(content_type, &state.config.content_type) {
                return Err(StreamError::Conflict(format!(
                    "Content-Type {content_type:?} does not match the stream's {:?}",
                    state.config.content_type
                )));
            }
        }
        if let Some(stamp) = &request.producer {
            let known = state.producers.get(&stamp.id).copied();
            if let Admission::Duplicate { last_seq } = producer::admit(known, stamp)? {
                let next = self.own_tail_offset(key, state)?;
                return Ok(Appended {
                    before: next,
                    wrote_data: false,
                    next,
                    closed: false,
                    producer: Some((stamp.epoch, last_seq, false)),
                });
            }
        }
        // After the producer check: a producer's retry is a duplicate even
        // though its Stream-Seq no longer increases.
        if let (Some(seq), Some(last)) = (&request.stream_seq, &state.last_stream_seq) {
            if seq.as_bytes() <= last.as_bytes() {
                return Err(StreamError::Conflict(format!(
                    "Stream-Seq {seq:?} does not follow the last one, {last:?}: sequence numbers must increase (byte-wise)"
                )));
            }
        }
        let messages = messages(&state.config, std::mem::take(&mut request.body), true)?;
        let stamp = (request.producer.is_some() || request.stream_seq.is_some()).then(|| {
            Box::new(WriteStamp {
                producer: request.producer.clone(),
                stream_seq: request.stream_seq.clone(),
            })
        });
        let reason = request.close.then_some(CloseReason::Done);
        let messages_empty = messages.is_empty();
        let record = if messages.is_empty() {
            StreamRecord::Closed {
                reason: CloseReason::Done,
                stamp,
            }
        } else {
            StreamRecord::Data {
                messages,
                stamp,
                close: reason,
            }
        };
        let before = self.own_tail_offset(key, state)?;
        let wrote_data = !messages_empty;
        let bytes = record_bytes(&record);
        let position = match self.commit(key, &mut guard, record) {
            Ok(position) => position,
            // Closed by the store, not the protocol (a runtime's turn that
            // ended unfinished, or one its process left open, closed at a
            // restore): the stream takes that closure as its own closing
            // record, and this append is one to a closed stream.
            Err(error) => match self.store.closure(key) {
                Some(closure) if matches!(error, StreamError::Conflict(_)) => {
                    let position = self.commit(
                        key,
                        &mut guard,
                        StreamRecord::Closed {
                            reason: closure.reason,
                            stamp: None,
                        },
                    )?;
                    let state = guard.as_ref().ok_or(StreamError::NotFound)?;
                    let final_offset = state.offset(state.tail(position));
                    drop(guard);
                    self.await_durable(key, position).await?;
                    return Err(StreamError::Closed { final_offset });
                }
                _ => return Err(error),
            },
        };
        let state = guard.as_ref().ok_or(StreamError::NotFound)?;
        let next = state.offset(state.tail(position));
        let closed = state.closure.is_some();
        drop(guard);
        self.await_durable(key, position).await?;
        self.note_resident(key, position, bytes);
        Ok(Appended {
            before,
            wrote_data,
            next,
            closed,
            producer: request.producer.map(|stamp| (stamp.epoch, stamp.seq, true)),
        })
    }

    /// Closes the stream at `path` of `tenant` from the process (a turn
    /// loop that finished, failed or was cancelled): the same step as a
    /// close-only `POST`, under the stream's mutex, so HTTP writers are
    /// refused from then on and every reader sees the data, then the end.
    /// Returns the final offset; closing a closed stream returns it too.
    pub async fn close(
        &self,
        tenant: &str,
        path: &str,
        reason: CloseReason,
    ) -> Result<Offset, StreamError> {
        self.close_key(&self.key(tenant, path)?, reason).await
    }

    /// [`DurableStreams::close`] by key: also how a stream takes a closure
    /// the store made without the protocol (module docs).
    pub(crate) async fn close_key(
        &self,
        key: &SessionKey,
        reason: CloseReason,
    ) -> Result<Offset, StreamError> {
        let entry = self.entry(key, false)?.ok_or(StreamError::NotFound)?;
        let (mut guard, _hold) = self.lock_for_write(key, &entry).await?;
        self.expire(key, &mut guard).await?;
        let state = guard.as_ref().ok_or(StreamError::NotFound)?;
        if state.soft_deleted {
            return Err(soft_deleted());
        }
        if let Some(closure) = &state.closure {
            return Ok(state.offset(closure.tail));
        }
        let record = StreamRecord::Closed {
            reason,
            stamp: None,
        };
        let position = self.commit(key, &mut guard, record)?;
        let state = guard.as_ref().ok_or(StreamError::NotFound)?;
        let final_offset = state.offset(state.tail(position));
        drop(guard);
        self.await_durable(key, position).await?;
        Ok(final_offset)
    }

    /// `DELETE`: ends the stream's life and archives it.
    pub(crate) async fn delete(&self, key: &SessionKey) -> Result<(), StreamError> {
        let entry = self.entry(key, false)?.ok_or(StreamError::NotFound)?;
        let (mut state, _hold) = self.lock_for_write(key, &entry).await?;
        self.expire(key, &mut state).await?;
        match state.as_ref() {
            None => Err(StreamError::NotFound),
            Some(live) if live.soft_deleted => Err(soft_deleted()),
            Some(_) => self.remove(key, &mut state).await,
        }
    }

    /// Deletes the stream if it expired.
    pub(crate) async fn expire(
        &self,
        key: &SessionKey,
        state: &mut Option<StreamState>,
    ) -> Result<(), StreamError> {
        if state
            .as_ref()
            .is_some_and(|live| !live.soft_deleted && live.expired())
        {
            self.remove(key, state).await?;
        }
        Ok(())
    }

    /// Deletes a live stream (its mutex held): soft-deleted while forks
    /// inherit from it; else its life ends, and if it is a fork, its
    /// source learns it (and is deleted in turn if it was only waiting for
    /// its last fork, up the chain). Locks go child, then parent: the one
    /// order every path takes.
    async fn remove(
        &self,
        key: &SessionKey,
        state: &mut Option<StreamState>,
    ) -> Result<(), StreamError> {
        let Some(live) = state.as_ref() else {
            return Ok(());
        };
        if live.fork_refs > 0 {
            let position = self.commit(key, state, StreamRecord::SoftDeleted)?;
            return self.await_durable(key, position).await;
        }
        let mut origin = live.config.fork.clone();
        let mut fork_path = key.session().to_string();
        self.end_life(key, state).await?;
        while let Some(from) = origin.take() {
            let source_key = self.key(key.tenant(), &from.source)?;
            let Some(entry) = self.entry(&source_key, false)? else {
                break;
            };
            let (mut source, _source_hold) = self.lock_for_write(&source_key, &entry).await?;
            if source.as_ref().is_none_or(|s| s.life != from.source_life) {
                break;
            }
            let detach = StreamRecord::ForkRef {
                fork: fork_path.clone(),
                attach: false,
            };
            let position = self.commit(&source_key, &mut source, detach)?;
            self.await_durable(&source_key, position).await?;
            if let Some(done) = source
                .as_ref()
                .filter(|s| s.soft_deleted && s.fork_refs == 0)
            {
                origin = done.config.fork.clone();
                fork_path = source_key.session().to_string();
                self.end_life(&source_key, &mut source).await?;
            }
        }
        Ok(())
    }

    /// `PUT` with `Stream-Forked-From`: a fork of `request.source` at
    /// `request.at` (default: the source's tail).
    pub(crate) async fn create_fork(
        &self,
        key: &SessionKey,
        request: ForkRequest,
        close: bool,
        body: Bytes,
    ) -> Result<Created, StreamError> {
        let source_key = self.key(key.tenant(), &request.source)?;
        if source_key == *key {
            return Err(StreamError::BadRequest(
                "a stream cannot be forked from itself".into(),
            ));
        }
        if request.sub_offset > 0 && request.at.is_none() {
            return Err(StreamError::BadRequest(
                "Stream-Fork-Sub-Offset needs Stream-Fork-Offset (the anchor it counts from)"
                    .into(),
            ));
        }
        // The fork's mutex, then its source's (child, then parent).
        let entry = self.entry(key, true)?.ok_or(StreamError::NotFound)?;
        let (mut state, _hold) = self.lock_for_write(key, &entry).await?;
        self.expire(key, &mut state).await?;
        if state.as_ref().is_some_and(|live| live.soft_deleted) {
            return Err(StreamError::Conflict(
                "a deleted stream whose forks still read it is here: its URL cannot be reused yet"
                    .into(),
            ));
        }
        let source_entry = self
            .entry(&source_key, false)?
            .ok_or(StreamError::NotFound)?;
        let (mut source_guard, source_hold) =
            self.lock_for_write(&source_key, &source_entry).await?;
        self.expire(&source_key, &mut source_guard).await?;
        let source = source_guard.as_ref().ok_or(StreamError::NotFound)?;
        if source.soft_deleted {
            return Err(StreamError::Conflict(
                "the source stream was deleted (its forks keep it readable): fork one of them instead"
                    .into(),
            ));
        }
        let content_type = match request.content_type {
            Some(given) if !same_media_type(&given, &source.config.content_type) => {
                return Err(StreamError::Conflict(format!(
                    "Content-Type {given:?} does not match the source's {:?}",
                    source.config.content_type
                )))
            }
            Some(given) => given,
            None => source.config.content_type.clone(),
        };
        // Expiry: the fork's own if it asks for one, else the source's.
        let (ttl_seconds, expires_at) = match (request.ttl_seconds, request.expires_at) {
            (None, None) => (source.config.ttl_seconds, source.config.expires_at.clone()),
            given => given,
        };
        let source_layout = self.layout(&source_key, source).await?;
        let source_own = &source_layout[source_layout.len() - 1];
        let source_tail = source.tail(self.durable(&source_key)?);
        let at = request
            .at
            .unwrap_or_else(|| source_own.offset_of(source_tail));
        fork::inherit(&source_layout, source_tail, at)?;
        let mut messages = Vec::new();
        if request.sub_offset > 0 {
            messages = self.sub_offset_prefix(
                source,
                &source_layout,
                source_tail,
                at,
                request.sub_offset,
            )?;
        }
        let config = StreamConfig {
            content_type,
            ttl_seconds,
            expires_at,
            fork: Some(ForkOrigin {
                source: request.source.clone(),
                source_life: source.life,
                at,
                requested: request.at.is_some(),
                sub_offset: request.sub_offset,
            }),
        };
        if let Some(existing) = state.as_ref() {
            let closed = existing.closure.is_some();
            if !existing.config.matches(&config) || closed != close {
                return Err(StreamError::Conflict(
                    "a stream exists here with another configuration (or another fork origin): delete it first or use the same settings".into(),
                ));
            }
            return Ok(Created {
                fresh: false,
                config: StreamConfig::clone(&existing.config),
                next: self.own_tail_offset(key, existing)?,
                closed,
            });
        }
        messages.extend(self::messages(&config, body, false)?);
        // The source counts the fork before the fork exists: a crash in
        // between leaves a count too high (the source is kept), never a
        // fork whose source was deleted under it.
        let attach = StreamRecord::ForkRef {
            fork: key.session().to_string(),
            attach: true,
        };
        let reference = self.commit(&source_key, &mut source_guard, attach)?;
        drop(source_guard);
        self.await_durable(&source_key, reference).await?;
        drop(source_hold);
        self.create_life(key, state, config, messages, close).await
    }

    /// The first `count` messages (JSON) or bytes of the source's record
    /// after `at`: what a sub-offset inherits.
    fn sub_offset_prefix(
        &self,
        source: &StreamState,
        layout: &[Segment],
        tail: u64,
        at: Offset,
        count: u64,
    ) -> Result<Vec<Vec<u8>>, StreamError> {
        let start = fork::locate(layout, tail, OffsetQuery::At(at))?;
        let view = ReadView::of(source, layout.to_vec());
        let (batch, _) = self.collect(&view, start)?;
        let overshoot = || {
            StreamError::BadRequest(format!(
                "Stream-Fork-Sub-Offset {count} goes past the next record after the fork offset"
            ))
        };
        // The next record with data (a creation without a body is none).
        let record = batch
            .events
            .iter()
            .find(|event| !event.payload().messages().is_empty())
            .ok_or_else(overshoot)?;
        let messages = record.payload().messages();
        let count = usize::try_from(count).map_err(|_| overshoot())?;
        if source.config.is_json() {
            return messages
                .get(..count)
                .map(<[Vec<u8>]>::to_vec)
                .ok_or_else(overshoot);
        }
        let bytes: Vec<u8> = messages.concat();
        bytes
            .get(..count)
            .map(|prefix| vec![prefix.to_vec()])
            .ok_or_else(overshoot)
    }

    /// Appends `Deleted`, waits for it to be durable, and archives the
    /// life in the log (its data is never read again).
    async fn end_life(
        &self,
        key: &SessionKey,
        state: &mut Option<StreamState>,
    ) -> Result<(), StreamError> {
        let position = self.commit(key, state, StreamRecord::Deleted)?;
        self.await_durable(key, position).await?;
        self.store.archive_before(key, position)?;
        Ok(())
    }

    /// Commits a new life's `Created` record under the stream's lock
    /// (`state`, let go before the wait) and answers once it is durable.
    async fn create_life(
        &self,
        key: &SessionKey,
        mut state: tokio::sync::MutexGuard<'_, Option<StreamState>>,
        config: StreamConfig,
        messages: Vec<Vec<u8>>,
        close: bool,
    ) -> Result<Created, StreamError> {
        let record = StreamRecord::Created {
            config: Box::new(config.clone()),
            messages,
            closed: close,
        };
        let bytes = record_bytes(&record);
        let position = self.commit(key, &mut state, record)?;
        let live = state.as_ref().ok_or(StreamError::NotFound)?;
        let next = live.offset(live.tail(position));
        drop(state);
        self.await_durable(key, position).await?;
        self.note_resident(key, position, bytes);
        Ok(Created {
            fresh: true,
            config,
            next,
            closed: close,
        })
    }

    /// Before bookkeeping (a fork attached or ended, a delete) on a closed
    /// stream: its session is sealed, so it is reopened
    /// ([`crate::ReplayStore::reopen_session`]: this write holds the stream, and
    /// with several nodes its lease) and the record goes into the next
    /// store life, continuing the positions; `commit` seals it again unless
    /// the record ended the stream. A restart in between finds the stream
    /// closed by its own record all the same.
    fn reopen_if_sealed(&self, key: &SessionKey) -> Result<(), StreamError> {
        self.store.reopen_session(key)?;
        Ok(())
    }

    /// Appends a request's record and folds it into `state`; returns its
    /// position.
    fn commit(
        &self,
        key: &SessionKey,
        state: &mut Option<StreamState>,
        mut record: StreamRecord,
    ) -> Result<u64, StreamError> {
        // A closing record of a stream the protocol has open, on a session
        // the store closed on its own: the stream takes that closure (module
        // docs), with the store's reason (the first close wins), and the
        // record goes into a new life as bookkeeping does.
        if let StreamRecord::Closed { reason, .. } = &mut record {
            if let Some(closure) = self.store.closure(key) {
                *reason = closure.reason;
            }
        }
        if record.is_bookkeeping() || matches!(record, StreamRecord::Closed { .. }) {
            self.reopen_if_sealed(key)?;
        }
        let event = self.store.append(key, Revision(0), record)?;
        StreamState::apply(state, event.position(), event.payload());
        // A closed stream's session is closed too, with its reason: the
        // in-process writer's appends are refused from now on and the
        // store's own readers end with the closure (module docs). Again
        // after bookkeeping on a closed stream (`reopen_if_sealed`). The
        // first close wins; a closed session returns it.
        let closure = state.as_ref().and_then(|state| state.closure.as_ref());
        if let Some(closure) = closure {
            self.store.close_session(key, closure.reason)?;
        }
        if let Some(entry) = self.entries.get(key) {
            // Under the entry's mutex (the caller's `state`): Relaxed.
            entry
                .folded
                .fetch_max(event.position(), std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(state) = state.as_mut() {
            state.last_access = std::time::Instant::now();
        }
        Ok(event.position())
    }

    /// Waits until `position` of `key` is durable, and not recorded as
    /// lost.
    async fn await_durable(&self, key: &SessionKey, position: u64) -> Result<(), StreamError> {
        if self.store.durable_log().is_none() {
            return Err(StreamError::Unavailable(
                "the store has no durable log: nothing can be acknowledged as durable".into(),
            ));
        }
        let deadline = tokio::time::Instant::now() + self.options.durable_timeout;
        if !self.durable_by(key, position, deadline).await? {
            return Err(StreamError::Unavailable(format!(
                "the write was accepted but is not durable after {:?} (the log may be stalled): retry it",
                self.options.durable_timeout
            )));
        }
        if let Some(through) = self.store.lost_after_read(key, position) {
            return Err(StreamError::Unavailable(format!(
                "the write was accepted but the log recorded positions up to {through} as lost: retry it"
            )));
        }
        Ok(())
    }

    /// A durable record of `bytes` payload bytes is in memory at
    /// `position` (module `resident`).
    fn note_resident(&self, key: &SessionKey, position: u64, bytes: usize) {
        self.resident.note(
            &self.store,
            key,
            position,
            bytes,
            self.options.large_records_in_memory,
        );
    }

    /// The stream's tail offset now.
    pub(crate) fn own_tail_offset(
        &self,
        key: &SessionKey,
        state: &StreamState,
    ) -> Result<Offset, StreamError> {
        Ok(state.offset(state.tail(self.durable(key)?)))
    }
}

/// The payload bytes a record holds in memory.
fn record_bytes(record: &StreamRecord) -> usize {
    record.messages().iter().map(Vec::len).sum()
}

/// The messages a body holds: the body itself for a byte stream; for a
/// JSON stream one message per element of a top-level array (one level
/// flattened) or the one value, each validated and kept byte for byte.
/// An empty body (or, on create, `[]`) holds none; `[]` on append is a
/// `400`.
fn messages(config: &StreamConfig, body: Bytes, append: bool) -> Result<Vec<Vec<u8>>, StreamError> {
    if body.is_empty() {
        return Ok(Vec::new());
    }
    if !config.is_json() {
        // The body's own buffer when it is the only owner of one
        // (`read_body` gathers a body of several chunks into a Vec):
        // a large append is not copied again here.
        return Ok(vec![Vec::from(body)]);
    }
    let invalid = |error: serde_json::Error| {
        StreamError::BadRequest(format!("the body is not valid JSON: {error}"))
    };
    let text = std::str::from_utf8(&body)
        .map_err(|error| StreamError::BadRequest(format!("the body is not UTF-8: {error}")))?;
    if text.trim_start().starts_with('[') {
        let items: Vec<&RawValue> = serde_json::from_str(text).map_err(invalid)?;
        if items.is_empty() && append {
            return Err(StreamError::BadRequest(
                "an empty JSON array appends nothing: send at least one message".into(),
            ));
        }
        return Ok(items
            .into_iter()
            .map(|item| item.get().as_bytes().to_vec())
            .collect());
    }
    let value: &RawValue = serde_json::from_str(text).map_err(invalid)?;
    Ok(vec![value.get().as_bytes().to_vec()])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte stream's append keeps the body's own buffer when it is its
    /// only owner (a large body gathered by `read_body`): no copy.
    #[test]
    fn a_byte_streams_body_becomes_its_message_without_a_copy() {
        let config = StreamConfig {
            content_type: "application/octet-stream".into(),
            ttl_seconds: None,
            expires_at: None,
            fork: None,
        };
        let body = Bytes::from(vec![7u8; 1 << 20]);
        let buffer = body.as_ptr();
        let messages = messages(&config, body, true).expect("messages");
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].as_ptr(), buffer, "the body was copied");
        assert_eq!(messages[0], vec![7u8; 1 << 20]);
    }

    fn json() -> StreamConfig {
        StreamConfig {
            content_type: "application/json".into(),
            ttl_seconds: None,
            expires_at: None,
            fork: None,
        }
    }

    #[test]
    fn json_bodies_flatten_one_level_and_keep_their_bytes() {
        let got = |body: &str| messages(&json(), Bytes::copy_from_slice(body.as_bytes()), true);
        assert_eq!(got(r#"{"a": 1}"#).unwrap(), vec![br#"{"a": 1}"#.to_vec()]);
        assert_eq!(
            got(r#" [{"a":1}, [2, 3]] "#).unwrap(),
            vec![br#"{"a":1}"#.to_vec(), b"[2, 3]".to_vec()]
        );
        assert_eq!(got("[[[1]]]").unwrap(), vec![b"[[1]]".to_vec()]);
        assert_eq!(
            got("12345678901234567890123").unwrap(),
            vec![b"12345678901234567890123".to_vec()]
        );
        assert!(matches!(got("[]"), Err(StreamError::BadRequest(_))));
        assert!(matches!(got("{oops"), Err(StreamError::BadRequest(_))));
        assert!(matches!(got("[1,]"), Err(StreamError::BadRequest(_))));
        assert_eq!(
            messages(&json(), Bytes::from_static(b"[]"), false).unwrap(),
            Vec::<Vec<u8>>::new()
        );
    }
}
