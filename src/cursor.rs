//! Cursors: "I have seen every event of this session up to position `c`".
//!
//! A cursor names a session ([`SessionKey`]), the session's
//! [`Incarnation`] (which life of the session it belongs to), the
//! [`Revision`] of the event it points at, and the position. [`Cursor`]
//! documents the start cursor and the wire form (the module is private,
//! so the public docs live on the type).

use std::borrow::Cow;
use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use thiserror::Error;

use crate::key::SessionKey;

/// The longest cursor string accepted, in bytes.
pub const MAX_CURSOR_LEN: usize = 4096;

const VERSION: &str = "lr1";

/// Everything but the unreserved characters is escaped, `.` included, so the
/// field separator never appears inside a field.
const ID_ESCAPES: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

/// Which life of a session a cursor belongs to.
///
/// Each time a session is created (first use, or again after eviction,
/// removal or a process restart) it gets a fresh random incarnation, so a
/// cursor from an earlier life is recognised ([`GapReason::Reset`]) instead
/// of being served another life's positions.
///
/// [`GapReason::Reset`]: crate::GapReason::Reset
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Incarnation(NonZeroU64);

impl Incarnation {
    /// A new incarnation, unique across threads and processes with
    /// overwhelming probability (64 random bits from the OS-seeded hasher,
    /// mixed with the process id, the time and a counter).
    pub(crate) fn fresh() -> Self {
        use std::hash::{BuildHasher, Hasher};
        use std::sync::atomic::{AtomicU64, Ordering};
        // Relaxed: the counter only has to differ between calls.
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        hasher.write_u32(std::process::id());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        hasher.write_u128(now);
        Self(NonZeroU64::new(hasher.finish()).unwrap_or(NonZeroU64::MIN))
    }

    /// The raw 64-bit value.
    pub fn get(self) -> u64 {
        self.0.get()
    }

    /// Rebuilds an incarnation from [`Incarnation::get`]; `None` for 0.
    pub fn from_raw(raw: u64) -> Option<Self> {
        NonZeroU64::new(raw).map(Self)
    }
}

impl fmt::Debug for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Incarnation({:016x})", self.0)
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The caller's revision of the session state an event belongs to (for
/// example the conversation revision a snapshot was taken at). The store
/// carries it in events and cursors; it does not interpret it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision(pub u64);

/// Why a cursor was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CursorError {
    /// The string is longer than [`MAX_CURSOR_LEN`]; it was not parsed.
    #[error("cursor string is {len} bytes long; at most {max} are accepted")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The string is not a cursor this crate produced.
    #[error("not a livereplay cursor ({reason}); resume from a cursor the store handed out, or from the start")]
    Malformed {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The call was scoped to one session and the cursor is for another.
    #[error("the cursor belongs to another session; a cursor is only valid for the session that issued it")]
    WrongSession,
}

/// A position in one incarnation of one session: "I have seen every event
/// of this session up to this position". Position 0 means "nothing seen
/// yet"; the start cursor ([`Cursor::start`]) has no incarnation and means
/// "from the beginning of whatever incarnation exists".
///
/// # Wire form
///
/// Cursors cross the wire (an SSE `id:`, a `Last-Event-ID` header, a query
/// parameter) as strings of printable ASCII without spaces:
///
/// ```text
/// lr1.<incarnation>.<revision>.<position>.<tenant>.<session>
/// ```
///
/// `<incarnation>` is 16 lowercase hex digits or `-` for none; revision and
/// position are decimal; tenant and session id are percent-encoded (every
/// byte except ASCII letters, digits, `-`, `_` and `~`), so `.`, `:`, `/`,
/// spaces and unicode all round-trip. Parsing accepts only the canonical
/// form: every string that parses re-encodes to itself, and parsing never
/// panics. Strings longer than [`MAX_CURSOR_LEN`] are refused before any
/// work.
///
/// ```
/// use livereplay::{Cursor, SessionKey};
///
/// let key = SessionKey::new("acme", "a.b:c/ü")?;
/// let start = Cursor::start(key.clone());
/// let wire = start.to_string();
/// assert!(wire.bytes().all(|b| b.is_ascii_graphic()));
/// assert_eq!(wire.parse::<Cursor>()?, start);
/// // A host scopes a cursor from a client to the session it serves:
/// let other = SessionKey::new("acme", "other")?;
/// assert!(Cursor::parse_for(&other, &wire).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Cursor {
    key: SessionKey,
    incarnation: Option<Incarnation>,
    revision: Revision,
    position: u64,
}

impl Cursor {
    /// A cursor at `position` of `incarnation` (or of whatever incarnation
    /// exists, for `None`).
    pub fn new(
        key: SessionKey,
        incarnation: Option<Incarnation>,
        revision: Revision,
        position: u64,
    ) -> Self {
        Self {
            key,
            incarnation,
            revision,
            position,
        }
    }

    /// "Nothing seen yet": position 0, no incarnation.
    pub fn start(key: SessionKey) -> Self {
        Self::new(key, None, Revision::default(), 0)
    }

    /// Parses a cursor string and checks that it belongs to `key`, as a host
    /// does with a cursor that came from a client.
    ///
    /// When the string names `key` (the common case) this allocates
    /// nothing: the ids are compared in their encoded form and the cursor
    /// shares `key`.
    pub fn parse_for(key: &SessionKey, text: &str) -> Result<Self, CursorError> {
        let wire = Wire::split(text)?;
        if wire.names(key.tenant(), key.session()) {
            return Ok(wire.cursor(key.clone()));
        }
        // Another key, or ids not in canonical form: the full parse says
        // which.
        let cursor: Cursor = text.parse()?;
        cursor.check_key(key)?;
        Ok(cursor)
    }

    /// `Err(WrongSession)` unless this cursor is for `key`.
    pub fn check_key(&self, key: &SessionKey) -> Result<(), CursorError> {
        if &self.key == key {
            Ok(())
        } else {
            Err(CursorError::WrongSession)
        }
    }

    /// The session the cursor belongs to.
    pub fn key(&self) -> &SessionKey {
        &self.key
    }

    /// The incarnation, `None` for "whatever incarnation exists".
    pub fn incarnation(&self) -> Option<Incarnation> {
        self.incarnation
    }

    /// The revision of the event at [`Cursor::position`].
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The last position seen (0: none).
    pub fn position(&self) -> u64 {
        self.position
    }
}

impl fmt::Debug for Cursor {
    // Structured, never the raw wire string: logs show what a cursor means.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cursor")
            .field("key", &self.key)
            .field("incarnation", &self.incarnation)
            .field("revision", &self.revision.0)
            .field("position", &self.position)
            .finish()
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(VERSION)?;
        match self.incarnation {
            Some(incarnation) => write!(f, ".{incarnation}")?,
            None => f.write_str(".-")?,
        }
        write!(
            f,
            ".{}.{}.{}.{}",
            self.revision.0,
            self.position,
            utf8_percent_encode(self.key.tenant(), ID_ESCAPES),
            utf8_percent_encode(self.key.session(), ID_ESCAPES),
        )
    }
}

impl FromStr for Cursor {
    type Err = CursorError;

    fn from_str(text: &str) -> Result<Self, CursorError> {
        let wire = Wire::split(text)?;
        let (tenant, session) = wire.decoded_ids()?;
        let key = SessionKey::new(&tenant, &session).map_err(|_| CursorError::Malformed {
            reason: "invalid session key",
        })?;
        Ok(wire.cursor(key))
    }
}

/// A cursor string cut into its fields, every field but the ids checked
/// (and canonical: no leading zeros, lowercase hex); the ids are still
/// percent-encoded.
pub(crate) struct Wire<'a> {
    incarnation: Option<Incarnation>,
    revision: u64,
    position: u64,
    tenant: &'a str,
    session: &'a str,
}

impl<'a> Wire<'a> {
    /// Cuts `text` into its fields; never allocates. One pass over the
    /// bytes: this is on every reconnect's path.
    pub(crate) fn split(text: &'a str) -> Result<Self, CursorError> {
        if text.len() > MAX_CURSOR_LEN {
            return Err(CursorError::TooLong {
                len: text.len(),
                max: MAX_CURSOR_LEN,
            });
        }
        let malformed = |reason| CursorError::Malformed { reason };
        let bytes = text.as_bytes();
        // Each field ends at the next '.'; `field` returns it and moves
        // `at` past the '.' (past the end, for the last field).
        let mut at = 0;
        fn next_field<'t>(bytes: &'t [u8], at: &mut usize) -> Option<&'t [u8]> {
            let rest = bytes.get(*at..)?;
            let len = rest.iter().position(|&b| b == b'.').unwrap_or(rest.len());
            *at += len + 1;
            Some(&rest[..len])
        }
        let field = |at: &mut usize, what| next_field(bytes, at).ok_or(malformed(what));
        if field(&mut at, "empty")? != VERSION.as_bytes() {
            return Err(malformed("unknown version prefix"));
        }
        let incarnation = match field(&mut at, "missing incarnation")? {
            b"-" => None,
            hex => Some(parse_incarnation(hex).ok_or(malformed("bad incarnation"))?),
        };
        let revision =
            parse_decimal(field(&mut at, "missing revision")?).ok_or(malformed("bad revision"))?;
        let position =
            parse_decimal(field(&mut at, "missing position")?).ok_or(malformed("bad position"))?;
        let tenant_start = at;
        let tenant = field(&mut at, "missing tenant")?;
        let session_start = at;
        let session = field(&mut at, "missing session")?;
        if at <= bytes.len() {
            return Err(malformed("too many fields"));
        }
        // Both ids end at a '.' or the end of the string: char boundaries.
        let (Some(tenant), Some(session)) = (
            text.get(tenant_start..tenant_start + tenant.len()),
            text.get(session_start..session_start + session.len()),
        ) else {
            return Err(malformed("bad id"));
        };
        Ok(Self {
            incarnation,
            revision,
            position,
            tenant,
            session,
        })
    }

    /// Whether the ids are exactly the canonical encoding of `tenant` and
    /// `session`; compared piece by piece, with no allocation.
    pub(crate) fn names(&self, tenant: &str, session: &str) -> bool {
        encodes_to(tenant, self.tenant) && encodes_to(session, self.session)
    }

    /// The decoded ids, checked to be in canonical form. They borrow from
    /// the string unless an id has escapes.
    pub(crate) fn decoded_ids(&self) -> Result<(Cow<'a, str>, Cow<'a, str>), CursorError> {
        let malformed = |reason| CursorError::Malformed { reason };
        let tenant = decode_id(self.tenant).ok_or(malformed("bad tenant encoding"))?;
        let session = decode_id(self.session).ok_or(malformed("bad session encoding"))?;
        // Canonical form only: one cursor, one string.
        if !self.names(&tenant, &session) {
            return Err(malformed("not in canonical form"));
        }
        Ok((tenant, session))
    }

    /// The cursor, for `key` (whose ids the caller checked).
    pub(crate) fn cursor(&self, key: SessionKey) -> Cursor {
        Cursor::new(
            key,
            self.incarnation,
            Revision(self.revision),
            self.position,
        )
    }
}

/// Whether `encoded` is exactly `utf8_percent_encode(id, ID_ESCAPES)`:
/// the unreserved bytes as they are, every other byte as `%` and two
/// uppercase hex digits. Byte by byte, with no allocation.
fn encodes_to(id: &str, encoded: &str) -> bool {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut encoded = encoded.as_bytes();
    for &byte in id.as_bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'~') {
            match encoded.split_first() {
                Some((&first, rest)) if first == byte => encoded = rest,
                _ => return false,
            }
        } else {
            match encoded {
                [b'%', high, low, rest @ ..]
                    if *high == HEX[usize::from(byte >> 4)]
                        && *low == HEX[usize::from(byte & 0xf)] =>
                {
                    encoded = rest;
                }
                _ => return false,
            }
        }
    }
    encoded.is_empty()
}

/// 16 lowercase hex digits, not all zero.
fn parse_incarnation(hex: &[u8]) -> Option<Incarnation> {
    if hex.len() != 16 {
        return None;
    }
    let mut value = 0u64;
    for &b in hex {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        value = (value << 4) | u64::from(digit);
    }
    Incarnation::from_raw(value)
}

/// A decimal in canonical form (what `u64`'s `Display` writes): digits
/// only, no leading zero but in "0", within `u64`.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || (digits.len() > 1 && digits[0] == b'0') {
        return None;
    }
    let mut value = 0u64;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(value)
}

fn decode_id(encoded: &str) -> Option<Cow<'_, str>> {
    percent_decode_str(encoded).decode_utf8().ok()
}

#[cfg(feature = "serde")]
impl serde::Serialize for Cursor {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Cursor {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Cursor;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a livereplay cursor string")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Cursor, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tenant: &str, session: &str) -> SessionKey {
        SessionKey::new(tenant, session).unwrap()
    }

    #[test]
    fn awkward_ids_round_trip_as_printable_ascii() {
        let incarnation = Incarnation::fresh();
        for (tenant, session) in [
            ("", "s"),
            ("a:b", "c/d"),
            ("dots.and%percent", "spa ce"),
            ("ünï", "日本語"),
            ("lr1.-.0.0.x.y", "-"),
        ] {
            for cursor in [
                Cursor::start(key(tenant, session)),
                Cursor::new(key(tenant, session), Some(incarnation), Revision(7), 42),
            ] {
                let wire = cursor.to_string();
                assert!(wire.bytes().all(|b| b.is_ascii_graphic()), "{wire}");
                assert_eq!(wire.parse::<Cursor>().unwrap(), cursor);
            }
        }
    }

    #[test]
    fn refuses_non_canonical_and_malformed_strings() {
        let good =
            Cursor::new(key("t", "s"), Some(Incarnation::fresh()), Revision(1), 5).to_string();
        assert!(good.parse::<Cursor>().is_ok());
        for bad in [
            String::new(),
            "lr2.-.0.0.t.s".into(),
            "lr1.-.0.0.t".into(),
            "lr1.-.0.0.t.s.x".into(),
            "lr1.-.00.0.t.s".into(),
            "lr1.-.+1.0.t.s".into(),
            "lr1.-.0.0.%74.s".into(),
            "lr1.-.0.0.t.%ff".into(),
            "lr1.-.0.0.t.".into(),
            "lr1.0000000000000000.0.1.t.s".into(),
            "lr1.ABCDEF0123456789.0.1.t.s".into(),
            "lr1.-.0.18446744073709551616.t.s".into(),
            good.to_uppercase(),
        ] {
            assert!(
                matches!(bad.parse::<Cursor>(), Err(CursorError::Malformed { .. })),
                "{bad:?} parsed"
            );
        }
        let long = "x".repeat(MAX_CURSOR_LEN + 1);
        assert_eq!(
            long.parse::<Cursor>(),
            Err(CursorError::TooLong {
                len: MAX_CURSOR_LEN + 1,
                max: MAX_CURSOR_LEN
            })
        );
    }

    #[test]
    fn debug_does_not_print_the_wire_string() {
        let cursor = Cursor::new(key("t", "s"), Some(Incarnation::fresh()), Revision(3), 9);
        let debug = format!("{cursor:?}");
        assert!(!debug.contains(&cursor.to_string()));
        assert!(debug.contains("position: 9"));
    }

    #[test]
    fn parse_for_agrees_with_the_full_parse() {
        let incarnation = Incarnation::fresh();
        for (tenant, session) in [("t", "s"), ("a.b", "c d/ü"), ("", "x~y_z-0")] {
            let key = key(tenant, session);
            for cursor in [
                Cursor::start(key.clone()),
                Cursor::new(key.clone(), Some(incarnation), Revision(7), 42),
            ] {
                let wire = cursor.to_string();
                assert_eq!(Cursor::parse_for(&key, &wire), Ok(cursor.clone()));
                assert_eq!(wire.parse::<Cursor>(), Ok(cursor));
            }
        }
        let key = key("t", "s");
        // Non-canonical escapes of the right ids are malformed, not another
        // session.
        for bad in ["lr1.-.0.0.%74.s", "lr1.-.0.0.t.%73", "lr1.-.01.0.t.s"] {
            assert!(
                matches!(
                    Cursor::parse_for(&key, bad),
                    Err(CursorError::Malformed { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn parse_for_scopes_to_the_session() {
        let wire = Cursor::start(key("t", "s")).to_string();
        assert!(Cursor::parse_for(&key("t", "s"), &wire).is_ok());
        assert_eq!(
            Cursor::parse_for(&key("u", "s"), &wire),
            Err(CursorError::WrongSession)
        );
    }
}
