//! The records a stream is made of: the store's payload type for a
//! Durable Streams session.
//!
//! A stream is a session whose events are [`StreamRecord`]s: a
//! [`Created`](StreamRecord::Created) record opens a life of the stream
//! (its configuration), [`Data`](StreamRecord::Data) records carry its
//! bytes (one per append, or one per message in JSON mode),
//! [`Closed`](StreamRecord::Closed) ends it for writers, and
//! [`Deleted`](StreamRecord::Deleted) ends the life. Everything the protocol
//! must remember across a restart (configuration, closure, producer and
//! `Stream-Seq` state) is in these records, and the HTTP write path appends
//! a request's records with one `append_batch`: they become visible
//! together and reach the log in position order, so a restart rebuilds a
//! stream from its log alone (see `state`).
//!
//! Records are encoded for the durable log with postcard (serde); the enum
//! and its fields only ever gain variants at the end, so old logs stay
//! readable.

use serde::{Deserialize, Serialize};

/// One record of a stream's session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamRecord {
    /// Opens a life of the stream: everything before it (an older life,
    /// deleted) is not part of the stream.
    Created(StreamConfig),
    /// Bytes of the stream: one append (byte streams) or one message (JSON
    /// streams). `stamp` is on the last record a request wrote.
    Data {
        /// The bytes, as appended.
        bytes: Vec<u8>,
        /// The writer state the request committed, if any.
        stamp: Option<Box<WriteStamp>>,
    },
    /// The stream is closed: no data after it is part of the stream.
    Closed {
        /// Why it ended.
        reason: CloseReason,
        /// The writer state the closing request committed, if any.
        stamp: Option<Box<WriteStamp>>,
    },
    /// The life ends: the stream no longer exists (until created again).
    Deleted,
}

impl StreamRecord {
    /// A data record for an in-process writer (no protocol writer state).
    pub fn data(bytes: impl Into<Vec<u8>>) -> Self {
        Self::Data {
            bytes: bytes.into(),
            stamp: None,
        }
    }

    /// The stamp the record carries, if any.
    pub fn stamp(&self) -> Option<&WriteStamp> {
        match self {
            Self::Data { stamp, .. } | Self::Closed { stamp, .. } => stamp.as_deref(),
            _ => None,
        }
    }
}

/// A stream's configuration, fixed at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamConfig {
    /// The `Content-Type` given at creation (default
    /// `application/octet-stream`), as given.
    pub content_type: String,
    /// A sliding time-to-live in seconds (`Stream-TTL`).
    pub ttl_seconds: Option<u64>,
    /// An absolute expiry (`Stream-Expires-At`): the text as given, and
    /// the instant in seconds since the UNIX epoch.
    pub expires_at: Option<ExpiresAt>,
}

/// An absolute expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiresAt {
    /// The RFC 3339 text the client sent, echoed on HEAD.
    pub text: String,
    /// The instant, in nanoseconds since the UNIX epoch (negative before
    /// 1970).
    pub unix_nanos: i128,
}

impl StreamConfig {
    /// Whether a create request with `other` is the same stream (content
    /// type by media type, TTL, expiry instant): an idempotent PUT.
    pub fn matches(&self, other: &StreamConfig) -> bool {
        self.media_type() == other.media_type()
            && self.ttl_seconds == other.ttl_seconds
            && self.expires_at.as_ref().map(|at| at.unix_nanos)
                == other.expires_at.as_ref().map(|at| at.unix_nanos)
    }

    /// The media type without parameters, lowercase: what two content types
    /// are compared by.
    pub fn media_type(&self) -> String {
        media_type(&self.content_type)
    }

    /// Whether the stream is in JSON mode (`application/json`).
    pub fn is_json(&self) -> bool {
        self.media_type() == "application/json"
    }

    /// Whether SSE carries its data as text (`text/*` and JSON) rather
    /// than base64.
    pub fn is_text(&self) -> bool {
        let media = self.media_type();
        media.starts_with("text/") || media == "application/json"
    }
}

/// The essence of a `Content-Type` value: lowercase, parameters dropped.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Why a stream was closed (CONTRACT.md section 11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloseReason {
    /// The writer finished.
    Done,
    /// The writer failed.
    Error,
    /// The work was cancelled.
    Cancelled,
    /// The writer went away without finishing.
    Interrupted,
}

/// The protocol's writer state a request committed with its records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteStamp {
    /// The idempotent producer and the sequence it admitted.
    pub producer: Option<ProducerStamp>,
    /// The request's `Stream-Seq`.
    pub stream_seq: Option<String>,
}

/// `(Producer-Id, Producer-Epoch, Producer-Seq)` of an admitted request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProducerStamp {
    /// `Producer-Id`.
    pub id: String,
    /// `Producer-Epoch`.
    pub epoch: u64,
    /// `Producer-Seq`.
    pub seq: u64,
}
