//! Offsets: the opaque, sortable tokens a Durable Streams client resumes
//! from, and the query sentinels `-1` and `now`.
//!
//! An offset is `PPPPPPPPPPPPPPPP_GGGGGGGGGGGGGGGG`: the store position of
//! the last record it covers (`P`, "everything up to here"), then the
//! position of the record that created the stream's current life (`G`),
//! each as 16 lowercase hex digits. Invariants:
//!
//! * **Sorted by position.** Fixed width and lowercase hex sort
//!   lexicographically as the numbers do, and the position comes first.
//!   Positions of one session key only grow, across restarts and across
//!   delete and re-create (CONTRACT.md section 10), so offsets grow too.
//! * **Never reused.** Readers are shown durable positions only (see the
//!   read path), and the store never hands a durable position out twice:
//!   an offset names the same data forever.
//! * **Never a sentinel.** `-1` and `now` do not have this shape.
//!
//! `0000000000000000_0000000000000000` is the start of any stream (the
//! conformance suite uses it as the zero offset).

use std::fmt;

/// Hex digits per field.
const FIELD: usize = 16;

/// A parsed offset: everything up to `position`, in the stream life that
/// began at `life`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Offset {
    /// The store position of the last record covered (0: nothing yet).
    pub position: u64,
    /// The position of the stream life's creation record (0 with position
    /// 0: the start of whatever life is current).
    pub life: u64,
}

impl Offset {
    /// The start of any stream.
    pub const ZERO: Offset = Offset {
        position: 0,
        life: 0,
    };

    /// Whether this is the zero offset (the start).
    pub fn is_start(self) -> bool {
        self == Self::ZERO
    }

    /// The offset's text as bytes, formatted on the stack: every append's
    /// response carries one, and `{:016x}` through `fmt` grew a `String`
    /// digit by digit (several allocations per response).
    pub(crate) fn to_ascii(self) -> [u8; 2 * FIELD + 1] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = [b'_'; 2 * FIELD + 1];
        for (field, value) in [(0, self.position), (FIELD + 1, self.life)] {
            for digit in 0..FIELD {
                let nibble = (value >> (4 * (FIELD - 1 - digit))) & 0xf;
                text[field + digit] = DIGITS[nibble as usize];
            }
        }
        text
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.to_ascii();
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

/// What a request's `offset` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetQuery {
    /// `-1`, or no offset: the stream's beginning.
    Start,
    /// `now`: the tail when the request arrives.
    Now,
    /// An offset the server issued (or claims to have).
    At(Offset),
}

/// Why an `offset` parameter is refused (a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed offset {shown:?}: expected -1, now, or an offset this server returned in Stream-Next-Offset (16 hex digits, '_', 16 hex digits)")]
pub struct OffsetError {
    /// The text, cut to 64 characters for the message.
    pub shown: String,
}

impl OffsetQuery {
    /// Parses a query's `offset` value (absent: the start).
    pub fn parse(text: Option<&str>) -> Result<Self, OffsetError> {
        match text {
            None | Some("-1") => Ok(Self::Start),
            Some("now") => Ok(Self::Now),
            Some(text) => parse_offset(text).map(Self::At),
        }
    }
}

/// Parses an offset in the exact shape [`Offset`]'s `Display` writes.
pub fn parse_offset(text: &str) -> Result<Offset, OffsetError> {
    let refuse = || OffsetError {
        shown: text.chars().take(64).collect(),
    };
    let bytes = text.as_bytes();
    if bytes.len() != 2 * FIELD + 1 || bytes[FIELD] != b'_' {
        return Err(refuse());
    }
    let field = |digits: &[u8]| -> Option<u64> {
        // Lowercase only: one offset, one spelling (offsets are
        // case-sensitive tokens).
        if !digits
            .iter()
            .all(|d| d.is_ascii_digit() || (b'a'..=b'f').contains(d))
        {
            return None;
        }
        u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    };
    match (field(&bytes[..FIELD]), field(&bytes[FIELD + 1..])) {
        (Some(position), Some(life)) => Ok(Offset { position, life }),
        _ => Err(refuse()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_and_sort_as_their_positions() {
        let offsets = [
            Offset {
                position: 9,
                life: 1,
            },
            Offset {
                position: 10,
                life: 1,
            },
            Offset {
                position: 0xff,
                life: 1,
            },
            Offset {
                position: 0x100,
                life: 0x100,
            },
        ];
        for pair in offsets.windows(2) {
            assert!(pair[0].to_string() < pair[1].to_string());
        }
        for offset in offsets {
            assert_eq!(parse_offset(&offset.to_string()), Ok(offset));
        }
        assert_eq!(
            Offset::ZERO.to_string(),
            "0000000000000000_0000000000000000"
        );
    }

    #[test]
    fn sentinels_and_malformed_text() {
        assert_eq!(OffsetQuery::parse(None), Ok(OffsetQuery::Start));
        assert_eq!(OffsetQuery::parse(Some("-1")), Ok(OffsetQuery::Start));
        assert_eq!(OffsetQuery::parse(Some("now")), Ok(OffsetQuery::Now));
        for bad in [
            "",
            "abc",
            "-2",
            "0000000000000000-0000000000000000",
            "000000000000000A_0000000000000000",
            "0000000000000000_000000000000000",
            "+000000000000000_0000000000000000",
            "0000000000000000_0000000000000000_",
        ] {
            assert!(OffsetQuery::parse(Some(bad)).is_err(), "{bad}");
        }
    }
}
