//! A stream's protocol state: its configuration, closure, producers and
//! `Stream-Seq`, rebuilt from its records and kept in memory while the
//! process runs.
//!
//! Owns [`StreamState`] and its loading. Invariants:
//!
//! * **The log is the truth.** The state is a fold of the stream's records
//!   ([`StreamState::apply`]); the write path changes it only together with
//!   the records it appends (under the stream's mutex, see `write`), so a
//!   restart that folds the log again gets the same state. What is *not*
//!   in the records, the sliding TTL's last access, restarts at load.
//! * **One life.** The state describes the newest life only: a `Created`
//!   record starts a fresh state, a `Deleted` record ends it.
//! * **Closure is monotonic.** Once `closure` is set, nothing in the life
//!   unsets it; records after it are not part of the stream.

use std::collections::HashMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::cursor::{Cursor, Revision};
use crate::key::SessionKey;
use crate::store::ReplayStore;
use crate::TryNextError;

use super::error::StreamError;
use super::record::{CloseReason, ProducerStamp, StreamConfig, StreamRecord, WriteStamp};

/// An idempotent producer's state on one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerState {
    /// The newest epoch seen.
    pub epoch: u64,
    /// The highest sequence admitted in that epoch.
    pub last_seq: u64,
}

/// How a closed stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closure {
    /// The position of the last data record (or the creation record): the
    /// stream's final offset.
    pub tail: u64,
    /// The position of the record that closed it.
    pub record: u64,
    /// The producer request that closed it, for idempotent retries.
    pub by: Option<ProducerStamp>,
    /// Why (a `PUT` that creates a stream closed: done).
    pub reason: CloseReason,
}

/// The state of a stream's current life.
#[derive(Debug, Clone)]
pub struct StreamState {
    /// The position of the `Created` record that began this life.
    pub life: u64,
    /// The configuration given at creation (shared with the read views:
    /// a read copies the pointer, not the configuration's strings).
    pub config: std::sync::Arc<StreamConfig>,
    /// Set once closed.
    pub closure: Option<Closure>,
    /// Producers by id.
    pub producers: HashMap<String, ProducerState>,
    /// The last `Stream-Seq` accepted.
    pub last_stream_seq: Option<String>,
    /// Forks created from this life and not ended.
    pub fork_refs: u64,
    /// Deleted while forks still read it.
    pub soft_deleted: bool,
    /// Positions of this life's records that carry no data and do not end
    /// it (`ForkRef`, `SoftDeleted`), ascending: never a tail offset.
    pub meta_positions: Vec<u64>,
    /// The last read or write, for a sliding TTL (not durable: a restart
    /// counts as an access).
    pub last_access: Instant,
}

impl StreamState {
    /// A fresh life created at `life`.
    pub fn created(life: u64, config: StreamConfig) -> Self {
        Self {
            life,
            config: std::sync::Arc::new(config),
            closure: None,
            producers: HashMap::new(),
            last_stream_seq: None,
            fork_refs: 0,
            soft_deleted: false,
            meta_positions: Vec::new(),
            last_access: Instant::now(),
        }
    }

    /// Folds one record into the state of the stream (`None`: no life).
    pub fn apply(state: &mut Option<StreamState>, position: u64, record: &StreamRecord) {
        match record {
            StreamRecord::Created { config, closed, .. } => {
                let mut created = StreamState::created(position, StreamConfig::clone(config));
                if *closed {
                    created.closure = Some(Closure {
                        tail: position,
                        record: position,
                        by: None,
                        reason: CloseReason::Done,
                    });
                }
                *state = Some(created);
            }
            StreamRecord::Deleted => *state = None,
            StreamRecord::ForkRef { attach, .. } => {
                if let Some(state) = state.as_mut() {
                    state.fork_refs = match attach {
                        true => state.fork_refs + 1,
                        false => state.fork_refs.saturating_sub(1),
                    };
                    state.meta_positions.push(position);
                }
            }
            StreamRecord::SoftDeleted => {
                if let Some(state) = state.as_mut() {
                    state.soft_deleted = true;
                    state.meta_positions.push(position);
                }
            }
            StreamRecord::Data { stamp, close, .. } => {
                if let Some(state) = state.as_mut().filter(|state| state.closure.is_none()) {
                    state.stamp(stamp.as_deref());
                    if let Some(reason) = *close {
                        state.closure = Some(Closure {
                            tail: position,
                            record: position,
                            by: stamp.as_ref().and_then(|stamp| stamp.producer.clone()),
                            reason,
                        });
                    }
                }
            }
            StreamRecord::Closed { stamp, reason } => {
                if let Some(state) = state.as_mut().filter(|state| state.closure.is_none()) {
                    state.stamp(stamp.as_deref());
                    // Every record between the life's start and its end
                    // carries data (or is the start), so the final offset
                    // is the record just before the end.
                    let tail = state.data_tail(position.saturating_sub(1));
                    state.closure = Some(Closure {
                        tail,
                        record: position,
                        by: stamp.as_ref().and_then(|stamp| stamp.producer.clone()),
                        reason: *reason,
                    });
                }
            }
        }
    }

    /// Takes in the writer state a request committed.
    pub fn stamp(&mut self, stamp: Option<&WriteStamp>) {
        let Some(stamp) = stamp else { return };
        if let Some(producer) = &stamp.producer {
            self.producers.insert(
                producer.id.clone(),
                ProducerState {
                    epoch: producer.epoch,
                    last_seq: producer.seq,
                },
            );
        }
        if let Some(seq) = &stamp.stream_seq {
            self.last_stream_seq = Some(seq.clone());
        }
    }

    /// Whether the stream has expired (absolute expiry passed, or idle for
    /// longer than its TTL).
    pub fn expired(&self) -> bool {
        if let Some(expires) = &self.config.expires_at {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|since| since.as_nanos() as i128)
                .unwrap_or(0);
            if now >= expires.unix_nanos {
                return true;
            }
        }
        self.config
            .ttl_seconds
            .is_some_and(|ttl| self.last_access.elapsed().as_secs_f64() >= ttl as f64)
    }

    /// The stream's tail position, given the key's durable watermark:
    /// the final offset of a closed stream, else everything durable (but
    /// never a record without data).
    pub fn tail(&self, durable: u64) -> u64 {
        match &self.closure {
            Some(closure) => closure.tail,
            None => self.data_tail(durable.max(self.life)),
        }
    }

    /// The offset position of the life's first record: a fork's own
    /// offsets continue after its fork point (module `fork`).
    pub fn own_base(&self) -> u64 {
        match &self.config.fork {
            Some(origin) => origin.at.position.saturating_add(1),
            None => self.life,
        }
    }

    /// The offset of a position of the life.
    pub fn offset(&self, position: u64) -> super::offset::Offset {
        super::offset::Offset {
            position: self
                .own_base()
                .saturating_add(position)
                .saturating_sub(self.life),
            life: self.life,
        }
    }

    /// The last position at or below `position` that is a data record (or
    /// the life's start).
    pub fn data_tail(&self, mut position: u64) -> u64 {
        while position > self.life && self.meta_positions.binary_search(&position).is_ok() {
            position -= 1;
        }
        position.max(self.life)
    }
}

/// Rebuilds a stream's state from its records (the log, then memory): the
/// newest life, or `None` if the stream does not exist, with the last
/// position folded. Reads the whole life once; the caller keeps the result
/// for the process's lifetime (and, with several nodes, folds what other
/// nodes write with [`fold_after`]).
pub fn load(
    store: &ReplayStore<StreamRecord>,
    key: &SessionKey,
) -> Result<(Option<StreamState>, u64), StreamError> {
    // Archived positions (a deleted life) are not read again.
    let from = match store.durable_log() {
        Some(log) => log
            .meta(key)?
            .map(|meta| meta.archived_through)
            .unwrap_or(0),
        None => 0,
    };
    let mut state = None;
    let folded = fold_after(store, key, &mut state, from)?;
    Ok((state, folded))
}

/// Folds every record of `key` after position `after` into `state`;
/// returns the last position folded (`after` if none).
pub fn fold_after(
    store: &ReplayStore<StreamRecord>,
    key: &SessionKey,
    state: &mut Option<StreamState>,
    after: u64,
) -> Result<u64, StreamError> {
    let mut records = store.catch_up(&Cursor::new(key.clone(), None, Revision(0), after))?;
    let mut folded = after;
    loop {
        match records.try_next() {
            Ok(event) => {
                StreamState::apply(state, event.position(), event.payload());
                folded = folded.max(event.position());
            }
            Err(TryNextError::Empty | TryNextError::Ended | TryNextError::Closed(_)) => {
                return Ok(folded)
            }
            Err(TryNextError::Gap(gap)) => {
                return Err(StreamError::Unavailable(format!(
                    "the stream's log cannot be read past a gap ({gap}); its state is unknown"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streams::record::CloseReason;

    fn config() -> StreamConfig {
        StreamConfig {
            content_type: "text/plain".into(),
            ttl_seconds: None,
            expires_at: None,
            fork: None,
        }
    }

    #[test]
    fn a_fold_keeps_the_newest_life_its_producers_and_its_closure() {
        let stamp = |seq| {
            Some(Box::new(WriteStamp {
                producer: Some(ProducerStamp {
                    id: "p".into(),
                    epoch: 1,
                    seq,
                }),
                stream_seq: Some(format!("{seq:02}")),
            }))
        };
        let created = StreamRecord::Created {
            config: Box::new(config()),
            messages: vec![b"first".to_vec()],
            closed: false,
        };
        let records = [
            created.clone(),
            StreamRecord::data("old"),
            StreamRecord::Deleted,
            created,
            StreamRecord::Data {
                messages: vec![b"a".to_vec()],
                stamp: stamp(0),
                close: None,
            },
            StreamRecord::Data {
                messages: vec![b"b".to_vec()],
                stamp: stamp(1),
                close: None,
            },
            StreamRecord::Closed {
                reason: CloseReason::Done,
                stamp: stamp(2),
            },
            StreamRecord::data("after the end"),
        ];
        let mut state = None;
        for (index, record) in records.iter().enumerate() {
            StreamState::apply(&mut state, index as u64 + 1, record);
        }
        let state = state.expect("a live stream");
        assert_eq!(state.life, 4);
        assert_eq!(
            state.producers["p"],
            ProducerState {
                epoch: 1,
                last_seq: 2
            }
        );
        assert_eq!(state.last_stream_seq.as_deref(), Some("02"));
        let closure = state.closure.expect("closed");
        assert_eq!(closure.tail, 6);
        assert_eq!(closure.by.map(|by| by.seq), Some(2));

        // Append-and-close ends at its own record; a stream created closed
        // at its creation.
        let mut state = None;
        StreamState::apply(
            &mut state,
            1,
            &StreamRecord::Created {
                config: Box::new(config()),
                messages: Vec::new(),
                closed: true,
            },
        );
        assert_eq!(
            state
                .as_ref()
                .and_then(|s| s.closure.clone())
                .map(|c| c.tail),
            Some(1)
        );
        let mut state = None;
        StreamState::apply(
            &mut state,
            1,
            &StreamRecord::Created {
                config: Box::new(config()),
                messages: Vec::new(),
                closed: false,
            },
        );
        StreamState::apply(
            &mut state,
            2,
            &StreamRecord::Data {
                messages: vec![b"x".to_vec()],
                stamp: None,
                close: Some(CloseReason::Done),
            },
        );
        assert_eq!(state.and_then(|s| s.closure).map(|c| c.tail), Some(2));
    }
}
