//! Fuzzes the cursor parser with the properties of `tests/hostile.rs`:
//! parsing never panics; whatever parses re-encodes to exactly its input;
//! over-long input is refused as `TooLong`; an unscoped parse never says
//! `WrongSession`; and every cursor built from fuzzed parts displays as
//! printable ASCII without spaces and parses back equal.

#![no_main]

use libfuzzer_sys::fuzz_target;
use livereplay::{Cursor, CursorError, Incarnation, Revision, SessionKey, MAX_CURSOR_LEN};

fn check_parse(text: &str) {
    match text.parse::<Cursor>() {
        Ok(cursor) => {
            assert_eq!(
                cursor.to_string(),
                text,
                "a parsed cursor re-encodes to its input"
            );
            assert_eq!(Cursor::parse_for(cursor.key(), text), Ok(cursor));
        }
        Err(CursorError::TooLong { len, max }) => {
            assert_eq!((len, max), (text.len(), MAX_CURSOR_LEN));
            assert!(text.len() > MAX_CURSOR_LEN);
        }
        Err(CursorError::Malformed { .. }) => assert!(text.len() <= MAX_CURSOR_LEN),
        Err(CursorError::WrongSession) => panic!("an unscoped parse said WrongSession"),
    }
}

/// A cursor from raw parts: three u64s, then tenant and session id split
/// at the first 0xff byte.
fn cursor_from(data: &[u8]) -> Option<Cursor> {
    let word = |i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            data.get(i * 8..i * 8 + 8)?.try_into().ok()?,
        ))
    };
    let (incarnation, revision, position) = (word(0)?, word(1)?, word(2)?);
    let ids = &data[24..];
    let split = ids.iter().position(|&b| b == 0xff).unwrap_or(ids.len());
    let tenant = std::str::from_utf8(&ids[..split]).ok()?;
    let session = std::str::from_utf8(ids.get(split + 1..)?).ok()?;
    let key = SessionKey::new(tenant, session).ok()?;
    Some(Cursor::new(
        key,
        Incarnation::from_raw(incarnation),
        Revision(revision),
        position,
    ))
}

fuzz_target!(|data: &[u8]| {
    check_parse(&String::from_utf8_lossy(data));
    if let Ok(text) = std::str::from_utf8(data) {
        check_parse(text);
    }
    if let Some(cursor) = cursor_from(data) {
        let wire = cursor.to_string();
        assert!(wire.bytes().all(|b| b.is_ascii_graphic()), "{wire:?}");
        assert!(wire.len() <= MAX_CURSOR_LEN, "a valid key's cursor fits");
        assert_eq!(wire.parse::<Cursor>(), Ok(cursor));
    }
});
