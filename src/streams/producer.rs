//! Idempotent producers (`Producer-Id`, `Producer-Epoch`, `Producer-Seq`):
//! the protocol's per-producer fencing and deduplication, decided against
//! a stream's [`StreamState`](super::state::StreamState).
//!
//! Owns the decision only: the write path calls [`admit`] under the
//! stream's mutex, so validation and append are one step per stream (the
//! protocol asks for per-producer serialisation; per stream is stronger),
//! and commits the admitted stamp with the request's records.

use super::error::StreamError;
use super::record::ProducerStamp;
use super::state::ProducerState;

/// The largest epoch or sequence a producer may send (2^53 - 1, for
/// JavaScript clients).
pub const MAX_PRODUCER_NUMBER: u64 = (1 << 53) - 1;

/// The longest `Producer-Id` accepted, in bytes (it is kept in the
/// stream's state and log).
pub const MAX_PRODUCER_ID_LEN: usize = 256;

/// What to do with a producer's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// New data: append it and commit the stamp.
    Accept,
    /// Already admitted: answer success, append nothing.
    Duplicate {
        /// The highest sequence admitted in the epoch.
        last_seq: u64,
    },
}

/// Decides a producer request against the producer's state on the stream
/// (`None`: never seen, or its state expired with the stream's life).
pub fn admit(
    state: Option<ProducerState>,
    stamp: &ProducerStamp,
) -> Result<Admission, StreamError> {
    let Some(state) = state else {
        // A producer the stream never saw starts at sequence 0 (of any
        // epoch: an auto-claimed epoch is new here too).
        return match stamp.seq {
            0 => Ok(Admission::Accept),
            received => Err(StreamError::SequenceGap {
                expected: 0,
                received,
            }),
        };
    };
    if stamp.epoch < state.epoch {
        return Err(StreamError::StaleEpoch {
            current: state.epoch,
        });
    }
    if stamp.epoch > state.epoch {
        return match stamp.seq {
            0 => Ok(Admission::Accept),
            _ => Err(StreamError::BadRequest(format!(
                "a new producer epoch ({}) must start at Producer-Seq 0, got {}",
                stamp.epoch, stamp.seq
            ))),
        };
    }
    if stamp.seq <= state.last_seq {
        return Ok(Admission::Duplicate {
            last_seq: state.last_seq,
        });
    }
    if stamp.seq == state.last_seq + 1 {
        return Ok(Admission::Accept);
    }
    Err(StreamError::SequenceGap {
        expected: state.last_seq + 1,
        received: stamp.seq,
    })
}

/// Parses the three producer headers: all or none, the id non-empty, the
/// numbers decimal integers up to [`MAX_PRODUCER_NUMBER`].
pub fn parse(
    id: Option<&str>,
    epoch: Option<&str>,
    seq: Option<&str>,
) -> Result<Option<ProducerStamp>, StreamError> {
    let (id, epoch, seq) = match (id, epoch, seq) {
        (None, None, None) => return Ok(None),
        (Some(id), Some(epoch), Some(seq)) => (id, epoch, seq),
        _ => {
            return Err(StreamError::BadRequest(
                "Producer-Id, Producer-Epoch and Producer-Seq must be sent together".into(),
            ))
        }
    };
    if id.is_empty() || id.len() > MAX_PRODUCER_ID_LEN {
        return Err(StreamError::BadRequest(format!(
            "Producer-Id must be 1 to {MAX_PRODUCER_ID_LEN} bytes, got {}",
            id.len()
        )));
    }
    let number = |name: &str, text: &str| -> Result<u64, StreamError> {
        let refuse = || {
            StreamError::BadRequest(format!(
                "{name} must be a decimal integer from 0 to 2^53-1, got {:?}",
                text.chars().take(32).collect::<String>()
            ))
        };
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(refuse());
        }
        text.parse::<u64>()
            .ok()
            .filter(|&n| n <= MAX_PRODUCER_NUMBER)
            .ok_or_else(refuse)
    };
    Ok(Some(ProducerStamp {
        id: id.to_string(),
        epoch: number("Producer-Epoch", epoch)?,
        seq: number("Producer-Seq", seq)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(epoch: u64, seq: u64) -> ProducerStamp {
        ProducerStamp {
            id: "p".into(),
            epoch,
            seq,
        }
    }

    #[test]
    fn the_protocols_validation_table() {
        let at = |epoch, last_seq| Some(ProducerState { epoch, last_seq });
        assert_eq!(admit(None, &stamp(0, 0)), Ok(Admission::Accept));
        assert!(matches!(
            admit(None, &stamp(0, 1)),
            Err(StreamError::SequenceGap {
                expected: 0,
                received: 1
            })
        ));
        assert_eq!(
            admit(at(1, 3), &stamp(0, 9)),
            Err(StreamError::StaleEpoch { current: 1 })
        );
        assert_eq!(admit(at(1, 3), &stamp(2, 0)), Ok(Admission::Accept));
        assert!(matches!(
            admit(at(1, 3), &stamp(2, 1)),
            Err(StreamError::BadRequest(_))
        ));
        assert_eq!(
            admit(at(1, 3), &stamp(1, 3)),
            Ok(Admission::Duplicate { last_seq: 3 })
        );
        assert_eq!(admit(at(1, 3), &stamp(1, 4)), Ok(Admission::Accept));
        assert_eq!(
            admit(at(1, 3), &stamp(1, 6)),
            Err(StreamError::SequenceGap {
                expected: 4,
                received: 6
            })
        );
    }

    #[test]
    fn headers_come_together_and_parse_strictly() {
        assert_eq!(parse(None, None, None), Ok(None));
        assert!(parse(Some("p"), None, None).is_err());
        assert!(parse(Some(""), Some("0"), Some("0")).is_err());
        for bad in ["-1", "1.5", "", "x", "9007199254740992"] {
            assert!(parse(Some("p"), Some(bad), Some("0")).is_err(), "{bad}");
        }
        assert_eq!(
            parse(Some("p"), Some("9007199254740991"), Some("0"))
                .unwrap()
                .unwrap()
                .epoch,
            MAX_PRODUCER_NUMBER
        );
    }
}
