//! Payload codecs: how the durable tier turns a payload into bytes and back.
//!
//! The ring stores payloads as they are; only the persister (writing) and
//! catch-up readers (reading the log) need bytes. A [`Codec`] is chosen once
//! per store. [`Postcard`] (feature `postcard`, on with `redb`) is the
//! compact serde default; [`Utf8`] and [`RawBytes`] need no serde at all.
//!
//! A codec must round-trip: `decode(encode(p)) == p`. Encoding failures are
//! not fatal to the store: the persister records the position as a hole with
//! [`HoleReason::Unencodable`](crate::durable::HoleReason::Unencodable) and
//! counts it in `stats()`.

use thiserror::Error;

/// Why a payload could not be encoded or decoded.
#[derive(Debug, Error)]
#[error("payload codec failed: {0}")]
pub struct CodecError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

impl CodecError {
    /// Wraps any error.
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(error.into())
    }
}

/// Turns payloads into bytes for the durable log and back.
///
/// ```
/// use livereplay::{Codec, Utf8};
///
/// let mut bytes = Vec::new();
/// Utf8.encode(&"héllo".to_string(), &mut bytes)?;
/// assert_eq!(Utf8.decode(&bytes)?, "héllo");
/// # Ok::<(), livereplay::CodecError>(())
/// ```
pub trait Codec<T>: Send + Sync + 'static {
    /// Appends the encoding of `payload` to `out`.
    fn encode(&self, payload: &T, out: &mut Vec<u8>) -> Result<(), CodecError>;
    /// Decodes a payload written by [`Codec::encode`].
    fn decode(&self, bytes: &[u8]) -> Result<T, CodecError>;
}

/// `String` payloads as their UTF-8 bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Utf8;

impl Codec<String> for Utf8 {
    fn encode(&self, payload: &String, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.extend_from_slice(payload.as_bytes());
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<String, CodecError> {
        String::from_utf8(bytes.to_vec()).map_err(CodecError::new)
    }
}

/// `Vec<u8>` payloads as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawBytes;

impl Codec<Vec<u8>> for RawBytes {
    fn encode(&self, payload: &Vec<u8>, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.extend_from_slice(payload);
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
        Ok(bytes.to_vec())
    }
}

/// Any `serde` payload in postcard's compact binary format (varint
/// integers, length-prefixed strings, no field names).
///
/// ```
/// use livereplay::{Codec, Postcard};
///
/// let mut bytes = Vec::new();
/// Postcard.encode(&(7u32, "tool".to_string()), &mut bytes)?;
/// assert_eq!(bytes.len(), 6);
/// let back: (u32, String) = Postcard.decode(&bytes)?;
/// assert_eq!(back, (7, "tool".to_string()));
/// # Ok::<(), livereplay::CodecError>(())
/// ```
#[cfg(feature = "postcard")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Postcard;

#[cfg(feature = "postcard")]
impl<T: serde::Serialize + serde::de::DeserializeOwned> Codec<T> for Postcard {
    fn encode(&self, payload: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let taken = std::mem::take(out);
        *out = postcard::to_extend(payload, taken).map_err(CodecError::new)?;
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<T, CodecError> {
        postcard::from_bytes(bytes).map_err(CodecError::new)
    }
}
