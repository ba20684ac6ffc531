//! The records a stream is made of: the store's payload type for a
//! Durable Streams session.
//!
//! A stream is a session whose events are [`StreamRecord`]s, **one record
//! per request**: a `PUT` is one [`Created`](StreamRecord::Created) record
//! (configuration, initial messages, closed or not), a `POST` one
//! [`Data`](StreamRecord::Data) record (its messages, its writer state,
//! whether it closes the stream) or, closing without data, one
//! [`Closed`](StreamRecord::Closed) record; a `DELETE` one
//! [`Deleted`](StreamRecord::Deleted) record.
//!
//! Why one record and not one event per JSON message through
//! `append_batch`: the persister may split a batch across two commits (a
//! commit holds at most `max_batch_events`), so a crash between them would
//! leave a request half in the log, its data without its producer state
//! (a retry would then be stored twice) and durable-only readers could see
//! half of it. One record is one log entry: a request is in the log whole
//! or not at all, and with it everything the protocol must remember across
//! a restart (configuration, closure, producer and `Stream-Seq` state), so a
//! restart rebuilds a stream from its log alone (see `state`). An offset
//! therefore names a request boundary, never the middle of one.
//!
//! Records are encoded for the durable log with postcard (serde); the enum
//! and its fields only ever gain variants at the end, so old logs stay
//! readable.

use serde::{Deserialize, Serialize};

/// One record of a stream's session: one request's worth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamRecord {
    /// Opens a life of the stream: everything before it (an older life,
    /// deleted) is not part of the stream.
    Created {
        /// The configuration. Boxed: a stream has one `Created` per life and
        /// every other record would carry its size (an event in a ring is
        /// 88 bytes with it boxed, 240 inline). Serialised as if inline.
        config: Box<StreamConfig>,
        /// The initial messages (the `PUT`'s body).
        #[serde(with = "messages")]
        messages: Vec<Vec<u8>>,
        /// Created closed (`Stream-Closed: true`): the messages are all.
        closed: bool,
    },
    /// Messages of the stream: a byte stream's append is one message, a
    /// JSON append one per element of its top-level array.
    Data {
        /// The messages, byte for byte as appended.
        #[serde(with = "messages")]
        messages: Vec<Vec<u8>>,
        /// The writer state the request committed, if any.
        stamp: Option<Box<WriteStamp>>,
        /// Set when the request also closed the stream (append-and-close).
        close: Option<CloseReason>,
    },
    /// The stream is closed, with no data in the request: nothing after
    /// it is part of the stream.
    Closed {
        /// Why it ended.
        reason: CloseReason,
        /// The writer state the closing request committed, if any.
        stamp: Option<Box<WriteStamp>>,
    },
    /// The life ends: the stream no longer exists (until created again).
    Deleted,
    /// A fork of this stream was created (`attach`) or ended: forks keep
    /// the data they inherit readable, so a stream with forks is only
    /// soft-deleted. Not data.
    ForkRef {
        /// The fork's path.
        fork: String,
        /// Created (`true`) or ended (`false`).
        attach: bool,
    },
    /// Deleted while forks still read its data: every request on the URL
    /// is refused (`410`, `409` for a `PUT`) until the last fork ends, then
    /// the stream is deleted. Not data.
    SoftDeleted,
}

impl StreamRecord {
    /// A one-message data record, for an in-process writer (no protocol
    /// writer state). For a JSON stream, `bytes` must be one JSON value.
    pub fn data(bytes: impl Into<Vec<u8>>) -> Self {
        Self::Data {
            messages: vec![bytes.into()],
            stamp: None,
            close: None,
        }
    }

    /// The messages the record carries (none for `Closed` and `Deleted`).
    pub fn messages(&self) -> &[Vec<u8>] {
        match self {
            Self::Created { messages, .. } | Self::Data { messages, .. } => messages,
            Self::Closed { .. } | Self::Deleted | Self::ForkRef { .. } | Self::SoftDeleted => &[],
        }
    }

    /// The bytes of its messages together.
    pub fn weight(&self) -> usize {
        self.messages().iter().map(Vec::len).sum()
    }

    /// Whether it is bookkeeping a closed stream still takes (a fork
    /// attached or ended, a delete): not data, not a closure.
    pub(crate) fn is_bookkeeping(&self) -> bool {
        matches!(
            self,
            Self::Deleted | Self::ForkRef { .. } | Self::SoftDeleted
        )
    }
}

/// A record's messages as a sequence of byte strings. Serde's default for
/// `Vec<u8>` is a sequence of `u8`, which postcard writes with a call per
/// byte (a tenth of the persister's time under 1 MiB appends); a byte
/// string is one copy. Postcard writes both as a length and the bytes, so
/// records logged either way read the same.
mod messages {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    pub(super) fn serialize<S: Serializer>(
        messages: &[Vec<u8>],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(messages.iter().map(|m| Bytes::new(m)))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Vec<u8>>, D::Error> {
        let messages: Vec<ByteBuf> = Vec::deserialize(deserializer)?;
        Ok(messages.into_iter().map(ByteBuf::into_vec).collect())
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
    /// Set for a fork: where its inherited data comes from.
    pub fork: Option<ForkOrigin>,
}

/// Where a fork's inherited data comes from (`Stream-Forked-From`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkOrigin {
    /// The source's path (below `/v1/stream/`, same tenant).
    pub source: String,
    /// The source's life when forked.
    pub source_life: u64,
    /// The divergence point: everything up to this offset of the source
    /// is inherited.
    pub at: super::offset::Offset,
    /// Whether the client named `at` (`Stream-Fork-Offset`), rather than
    /// the source's tail being taken.
    pub requested: bool,
    /// `Stream-Fork-Sub-Offset`: messages (JSON) or bytes inherited from
    /// the record after `at`, copied into the fork's `Created` record.
    pub sub_offset: u64,
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
        let same_fork = match (&self.fork, &other.fork) {
            (None, None) => true,
            (Some(mine), Some(theirs)) => {
                mine.source == theirs.source
                    && mine.sub_offset == theirs.sub_offset
                    && (!(mine.requested && theirs.requested) || mine.at == theirs.at)
            }
            _ => false,
        };
        same_media_type(&self.content_type, &other.content_type)
            && self.ttl_seconds == other.ttl_seconds
            && self.expires_at.as_ref().map(|at| at.unix_nanos)
                == other.expires_at.as_ref().map(|at| at.unix_nanos)
            && same_fork
    }

    /// The media type without parameters, lowercase: what two content types
    /// are compared by.
    pub fn media_type(&self) -> String {
        media_type(&self.content_type)
    }

    /// Whether the stream is in JSON mode (`application/json`).
    pub fn is_json(&self) -> bool {
        same_media_type(&self.content_type, "application/json")
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
    essence(content_type).to_ascii_lowercase()
}

/// Whether two `Content-Type` values have the same [`media_type`], without
/// allocating (every append compares its own with the stream's).
pub fn same_media_type(a: &str, b: &str) -> bool {
    essence(a).eq_ignore_ascii_case(essence(b))
}

/// A `Content-Type` value without its parameters, trimmed.
fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

/// Why a stream was closed (CONTRACT.md section 11): the store's own
/// [`CloseReason`](crate::CloseReason), which a stream's closing record
/// carries and its session's closure repeats (module `write`). Stored as
/// its variant, as this module's own enum of the same four was before.
pub use crate::closure::CloseReason;

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape records had when messages were serialised with serde's
    /// default (`Vec<u8>` as a sequence of `u8`); only the variant index
    /// and the fields of `Data` matter here.
    #[derive(Serialize)]
    enum Before {
        #[allow(dead_code)]
        Created,
        Data {
            messages: Vec<Vec<u8>>,
            stamp: Option<()>,
            close: Option<()>,
        },
    }

    #[test]
    fn messages_are_written_as_before_and_read_back() {
        let messages = vec![b"ab".to_vec(), Vec::new(), vec![0xff; 300]];
        let record = StreamRecord::Data {
            messages: messages.clone(),
            stamp: None,
            close: None,
        };
        let encoded = postcard::to_stdvec(&record).expect("encode");
        let before = Before::Data {
            messages,
            stamp: None,
            close: None,
        };
        assert_eq!(encoded, postcard::to_stdvec(&before).expect("encode"));
        let back: StreamRecord = postcard::from_bytes(&encoded).expect("decode");
        assert_eq!(back, record);
    }

    /// The shape `Created` had with its configuration inline.
    #[derive(Serialize)]
    enum InlineConfig {
        Created {
            config: StreamConfig,
            #[serde(with = "messages")]
            messages: Vec<Vec<u8>>,
            closed: bool,
        },
    }

    /// Boxing the configuration changed neither the bytes a `Created`
    /// record is written as (logs written before read as they did) nor
    /// what it reads back as; and it keeps every record small, since a
    /// ring holds an event per record.
    #[test]
    fn a_boxed_config_is_written_as_before_and_keeps_records_small() {
        let config = StreamConfig {
            content_type: "application/json".into(),
            ttl_seconds: Some(60),
            expires_at: Some(ExpiresAt {
                text: "2030-01-01T00:00:00Z".into(),
                unix_nanos: 1_893_456_000_000_000_000,
            }),
            fork: Some(ForkOrigin {
                source: "a/b".into(),
                source_life: 3,
                at: super::super::offset::Offset {
                    position: 7,
                    life: 3,
                },
                requested: true,
                sub_offset: 2,
            }),
        };
        let record = StreamRecord::Created {
            config: Box::new(config.clone()),
            messages: vec![b"[1]".to_vec()],
            closed: true,
        };
        let encoded = postcard::to_stdvec(&record).expect("encode");
        let inline = InlineConfig::Created {
            config,
            messages: vec![b"[1]".to_vec()],
            closed: true,
        };
        assert_eq!(encoded, postcard::to_stdvec(&inline).expect("encode"));
        let back: StreamRecord = postcard::from_bytes(&encoded).expect("decode");
        assert_eq!(back, record);
        assert!(
            std::mem::size_of::<StreamRecord>() <= 40,
            "a record is {} bytes: box the variant that grew it",
            std::mem::size_of::<StreamRecord>()
        );
    }
}
