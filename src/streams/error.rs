//! Errors of the Durable Streams module and the HTTP status each maps to.
//!
//! Every refusal is a [`StreamError`]: a typed reason with an actionable
//! message, rendered as a `text/plain` body with the status and the
//! protocol headers the client needs to act on it (`Stream-Closed`,
//! `Producer-Epoch`, `Producer-Expected-Seq`, ...). The store's gaps map as
//! CONTRACT.md section 11 says: before the retained floor 410, never issued
//! 400, unknown stream 404, log unavailable 503; a position recorded as lost
//! is a 410 with the count, never skipped.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::offset::{Offset, OffsetError};

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// No stream at this URL (never created, deleted or expired).
    #[error("no stream at this URL: create it with PUT")]
    NotFound,
    /// The request is malformed (a header, the body, a parameter).
    #[error("{0}")]
    BadRequest(String),
    /// The offset is malformed.
    #[error(transparent)]
    BadOffset(#[from] OffsetError),
    /// The offset was never issued by this stream (beyond its tail, or
    /// inside its life before any data).
    #[error("offset {offset} was never issued by this stream (its tail is {tail}): resume from an offset the server returned")]
    NeverIssued {
        /// The offset asked for.
        offset: Offset,
        /// The stream's tail.
        tail: Offset,
    },
    /// The data at the offset is gone: an older life of the stream
    /// (deleted and created again), archived, or lost.
    #[error("{0}")]
    Gone(String),
    /// The request conflicts with the stream's configuration or writers.
    #[error("{0}")]
    Conflict(String),
    /// The stream is closed: no more appends.
    #[error("the stream is closed: no further appends are accepted (final offset {final_offset})")]
    Closed {
        /// The stream's final offset.
        final_offset: Offset,
    },
    /// An idempotent producer skipped sequence numbers.
    #[error("producer sequence gap: expected {expected}, received {received}; resend the missing requests in order")]
    SequenceGap {
        /// The next sequence the server accepts.
        expected: u64,
        /// The sequence received.
        received: u64,
    },
    /// An idempotent producer's epoch is older than the server's (a zombie).
    #[error("stale producer epoch: the server is at epoch {current}; a newer instance of this producer took over")]
    StaleEpoch {
        /// The server's epoch for the producer.
        current: u64,
    },
    /// The body is larger than the server accepts.
    #[error("{0}")]
    TooLarge(String),
    /// The durable log cannot answer now; retry.
    #[error("{0}")]
    Unavailable(String),
    /// A protocol feature this server does not implement.
    #[error("{0}")]
    NotImplemented(String),
    /// The request carries no credential the access hook accepts (`401`,
    /// with `WWW-Authenticate: Bearer`).
    #[error("{0}")]
    Unauthorized(String),
    /// The credential does not allow this request: a read-only caller's
    /// write, an expired or altered signed URL (`403`).
    #[error("{0}")]
    Forbidden(String),
}

impl StreamError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            StreamError::NotFound => StatusCode::NOT_FOUND,
            StreamError::BadRequest(_)
            | StreamError::BadOffset(_)
            | StreamError::NeverIssued { .. } => StatusCode::BAD_REQUEST,
            StreamError::Gone(_) => StatusCode::GONE,
            StreamError::Conflict(_)
            | StreamError::Closed { .. }
            | StreamError::SequenceGap { .. } => StatusCode::CONFLICT,
            StreamError::StaleEpoch { .. } => StatusCode::FORBIDDEN,
            StreamError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            StreamError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            StreamError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            StreamError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            StreamError::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }

    /// The protocol headers the client acts on.
    fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let mut put = |name: &'static str, value: String| {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        };
        match self {
            StreamError::Closed { final_offset } => {
                put(super::headers::STREAM_CLOSED, "true".into());
                put(super::headers::NEXT_OFFSET, final_offset.to_string());
            }
            StreamError::SequenceGap { expected, received } => {
                put(super::headers::PRODUCER_EXPECTED_SEQ, expected.to_string());
                put(super::headers::PRODUCER_RECEIVED_SEQ, received.to_string());
            }
            StreamError::StaleEpoch { current } => {
                put(super::headers::PRODUCER_EPOCH, current.to_string());
            }
            StreamError::Unauthorized(_) => {
                put("www-authenticate", "Bearer".into());
            }
            _ => {}
        }
        headers
    }
}

impl IntoResponse for StreamError {
    fn into_response(self) -> Response {
        (self.status(), self.headers(), format!("{self}\n")).into_response()
    }
}

impl From<crate::Error> for StreamError {
    fn from(error: crate::Error) -> Self {
        use crate::{Error, GapReason, Refusal};
        match error {
            Error::Gap(gap) => match gap.reason {
                GapReason::Trimmed => StreamError::Gone(format!(
                    "the data after this offset is no longer retained{}: read from -1 (or HEAD for the tail)",
                    gap.missed.map(|n| format!(" ({n} records)")).unwrap_or_default()
                )),
                GapReason::Lost => StreamError::Gone(format!(
                    "the data after this offset was lost before it was durable{}: read from -1",
                    gap.missed.map(|n| format!(" ({n} records)")).unwrap_or_default()
                )),
                GapReason::Reset => StreamError::Gone(
                    "this offset belongs to an older life of the stream: read from -1".into(),
                ),
                GapReason::Unavailable => StreamError::BadRequest(
                    "this offset was never issued by this stream: resume from an offset the server returned".into(),
                ),
            },
            Error::Refused(Refusal::BatchTooLarge { len, capacity }) => StreamError::TooLarge(
                format!("the request holds {len} messages; at most {capacity} are accepted at once: split it"),
            ),
            Error::Refused(Refusal::PayloadTooLarge { size, max }) => StreamError::TooLarge(
                format!("the request weighs {size} bytes; at most {max} are accepted"),
            ),
            Error::Refused(refusal @ Refusal::TooManySessions { .. }) => {
                StreamError::Unavailable(refusal.to_string())
            }
            // Closed through the store (`ReplayStore::close_session`), not
            // by the protocol: the stream takes no more appends (the write
            // path then makes the closure the stream's own: module docs).
            Error::Refused(refusal @ Refusal::SessionClosed { .. }) => {
                StreamError::Conflict(refusal.to_string())
            }
            Error::Refused(refusal) => StreamError::Unavailable(refusal.to_string()),
            Error::Cursor(error) => StreamError::BadRequest(error.to_string()),
            Error::Link(error) => StreamError::BadRequest(error.to_string()),
        }
    }
}

impl From<crate::durable::LogError> for StreamError {
    fn from(error: crate::durable::LogError) -> Self {
        StreamError::Unavailable(format!("the durable log cannot answer ({error}): retry"))
    }
}

impl From<crate::DurableError> for StreamError {
    fn from(error: crate::DurableError) -> Self {
        match error {
            crate::DurableError::Lost { .. } => StreamError::Unavailable(format!(
                "the write was accepted but the log recorded it as lost ({error}): retry it"
            )),
            other => StreamError::Unavailable(format!("{other}: retry")),
        }
    }
}
