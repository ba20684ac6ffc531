//! Hostile input: cursor strings and ids a client controls, forged cursors
//! aimed at other sessions, and configurations that cannot work.
//!
//! A host parses whatever a client sends as `Last-Event-ID`, so the parser
//! must never panic, must accept only what the store itself writes (one
//! cursor, one string), and a forged cursor must never hand a requester
//! another key's events. Properties run a bounded, seeded number of cases so
//! the suite stays fast and repeatable in CI.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use livereplay::{
    Config, ConfigError, Cursor, CursorError, Error, GapReason, IdPart, Incarnation, KeyError,
    ManualClock, ReplayStore, Revision, SessionKey, MAX_CAPACITY, MAX_CURSOR_LEN,
    MAX_SESSIONS_LIMIT,
};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngAlgorithm, TestRng, TestRunner};

/// Cases per property: enough to reach the parser's corners, small enough
/// to run in a few seconds in a debug build.
const CASES: u32 = 2000;

/// A runner with a fixed seed, so a failure in CI reproduces locally.
fn runner() -> TestRunner {
    TestRunner::new_with_rng(
        ProptestConfig {
            cases: CASES,
            failure_persistence: None,
            ..ProptestConfig::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    )
}

/// The parser's contract on any input: no panic, and whatever parses is
/// the canonical form of what it parsed to. The fast paths from the wire
/// (`Cursor::parse_for`, `ReplayStore::parse_cursor`, which skip building
/// the key) agree with `str::parse` on every input, for a session the
/// store knows and for one it does not.
fn check_parse(text: &str) -> Result<(), TestCaseError> {
    static STORE: std::sync::OnceLock<ReplayStore<u8>> = std::sync::OnceLock::new();
    let store = STORE.get_or_init(ReplayStore::default);
    let parsed = text.parse::<Cursor>();
    prop_assert_eq!(
        &store.parse_cursor(text),
        &parsed,
        "parse_cursor, unknown or known"
    );
    let other = SessionKey::new("hostile", "other").expect("a valid key");
    match &parsed {
        Ok(cursor) => {
            prop_assert_eq!(&Cursor::parse_for(cursor.key(), text), &parsed);
            if cursor.key() != &other {
                prop_assert_eq!(
                    Cursor::parse_for(&other, text),
                    Err(CursorError::WrongSession)
                );
            }
            // Now the store knows the session: the map's own key is used.
            store
                .append(cursor.key(), Revision(0), 0)
                .expect("append to a valid key");
            prop_assert_eq!(&store.parse_cursor(text), &parsed, "parse_cursor, known");
        }
        Err(error) => {
            prop_assert_eq!(&Cursor::parse_for(&other, text), &Err(error.clone()));
        }
    }
    match parsed {
        Ok(cursor) => {
            prop_assert_eq!(
                cursor.to_string(),
                text,
                "a parsed cursor re-encodes to its input"
            );
            prop_assert!(text.len() <= MAX_CURSOR_LEN);
        }
        Err(CursorError::TooLong { len, max }) => {
            prop_assert_eq!(len, text.len());
            prop_assert_eq!(max, MAX_CURSOR_LEN);
            prop_assert!(text.len() > MAX_CURSOR_LEN);
        }
        Err(CursorError::Malformed { .. }) => {}
        Err(CursorError::WrongSession) => {
            prop_assert!(false, "an unscoped parse reported WrongSession");
        }
    }
    Ok(())
}

/// Ids a host might really use: the wire separator, URL and path
/// characters, percent signs, spaces, unicode, and anything printable.
fn id_strategy(min_len: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::string::string_regex(&format!("[a-z0-9.:/%~_ é€🦀-]{{{min_len},12}}"))
            .expect("valid regex"),
        proptest::string::string_regex(&format!("\\PC{{{min_len},24}}")).expect("valid regex"),
    ]
}

fn key_strategy() -> impl Strategy<Value = SessionKey> {
    (id_strategy(0), id_strategy(1)).prop_map(|(tenant, session)| {
        SessionKey::new(&tenant, &session).expect("printable, non-empty ids are valid keys")
    })
}

fn cursor_strategy() -> impl Strategy<Value = Cursor> {
    (
        key_strategy(),
        prop_oneof![Just(None), any::<u64>().prop_map(Incarnation::from_raw)],
        prop_oneof![any::<u64>(), 0..10u64, Just(u64::MAX)],
        prop_oneof![any::<u64>(), 0..10u64, Just(u64::MAX)],
    )
        .prop_map(|(key, incarnation, revision, position)| {
            Cursor::new(key, incarnation, Revision(revision), position)
        })
}

/// One structured way to damage a valid cursor string.
#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the character at this (wrapped) index.
    Flip(usize, char),
    /// Keep only the first (wrapped) n characters.
    Truncate(usize),
    /// Repeat the (wrapped) i-th `.`-separated field.
    DuplicateField(usize),
    /// Drop the (wrapped) i-th field.
    DropField(usize),
    /// Insert `%XY` (any two characters) at this (wrapped) index.
    InsertEscape(usize, char, char),
    /// Replace the character at this index by its `%XX` escape.
    EscapeChar(usize, bool),
}

fn mutation_strategy() -> impl Strategy<Value = Mutation> {
    let hexish = prop_oneof![
        proptest::char::range('0', '9'),
        proptest::char::range('a', 'f'),
        proptest::char::range('A', 'F'),
        any::<char>(),
    ];
    prop_oneof![
        (any::<usize>(), any::<char>()).prop_map(|(i, c)| Mutation::Flip(i, c)),
        any::<usize>().prop_map(Mutation::Truncate),
        any::<usize>().prop_map(Mutation::DuplicateField),
        any::<usize>().prop_map(Mutation::DropField),
        (any::<usize>(), hexish.clone(), hexish)
            .prop_map(|(i, a, b)| Mutation::InsertEscape(i, a, b)),
        (any::<usize>(), any::<bool>()).prop_map(|(i, upper)| Mutation::EscapeChar(i, upper)),
    ]
}

fn apply(text: &str, mutation: &Mutation) -> String {
    let chars: Vec<char> = text.chars().collect();
    let at = |i: usize| i % (chars.len() + 1);
    match *mutation {
        Mutation::Flip(i, c) => {
            let mut chars = chars.clone();
            if !chars.is_empty() {
                let i = i % chars.len();
                chars[i] = c;
            }
            chars.into_iter().collect()
        }
        Mutation::Truncate(n) => chars[..at(n)].iter().collect(),
        Mutation::DuplicateField(i) | Mutation::DropField(i) => {
            let mut fields: Vec<&str> = text.split('.').collect();
            let i = i % fields.len();
            if matches!(mutation, Mutation::DuplicateField(_)) {
                fields.insert(i, fields[i]);
            } else {
                fields.remove(i);
            }
            fields.join(".")
        }
        Mutation::InsertEscape(i, a, b) => {
            let i = at(i);
            let mut out: String = chars[..i].iter().collect();
            out.push('%');
            out.push(a);
            out.push(b);
            out.extend(&chars[i..]);
            out
        }
        Mutation::EscapeChar(i, upper) => {
            if chars.is_empty() {
                return String::new();
            }
            let i = i % chars.len();
            let mut out: String = chars[..i].iter().collect();
            let mut buf = [0; 4];
            for byte in chars[i].encode_utf8(&mut buf).bytes() {
                if upper {
                    out.push_str(&format!("%{byte:02X}"));
                } else {
                    out.push_str(&format!("%{byte:02x}"));
                }
            }
            out.extend(&chars[i + 1..]);
            out
        }
    }
}

#[test]
fn arbitrary_bytes_never_panic_and_only_canonical_strings_parse() {
    runner()
        .run(&proptest::collection::vec(any::<u8>(), 0..256), |bytes| {
            check_parse(&String::from_utf8_lossy(&bytes))
        })
        .unwrap();
}

#[test]
fn arbitrary_strings_never_panic_and_only_canonical_strings_parse() {
    runner()
        .run(&any::<String>(), |text| check_parse(&text))
        .unwrap();
}

#[test]
fn cursor_shaped_strings_never_panic_and_only_canonical_strings_parse() {
    // Near misses of the wire form reach the field parsers, not just the
    // version check.
    let decimal = "(0|[1-9][0-9]{0,3}|[0-9+-]{0,21})";
    let id = "([a-z0-9_~-]|%[0-9A-F]{2}|%[0-9a-f]{2}|[.%A-Z])";
    let shaped = proptest::string::string_regex(&format!(
        "lr1\\.(-|[0-9a-f]{{16}}|[0-9a-fA-F]{{0,17}})\\.{decimal}\\.{decimal}\\.{id}{{0,6}}\\.{id}{{0,6}}"
    ))
    .expect("valid regex");
    let parsed = Cell::new(0u32);
    runner()
        .run(&shaped, |text| {
            if text.parse::<Cursor>().is_ok() {
                parsed.set(parsed.get() + 1);
            }
            check_parse(&text)
        })
        .unwrap();
    // Otherwise the generator only exercises the error paths.
    assert!(
        parsed.get() > 0,
        "no generated near-miss was a valid cursor"
    );
}

#[test]
fn every_displayed_cursor_is_printable_ascii_and_parses_back_equal() {
    runner()
        .run(&cursor_strategy(), |cursor| {
            let wire = cursor.to_string();
            prop_assert!(
                wire.bytes().all(|b| b.is_ascii_graphic()),
                "not printable ASCII without spaces: {wire:?}"
            );
            let parsed: Cursor = wire
                .parse()
                .map_err(|e| TestCaseError::fail(format!("{wire:?} did not parse back: {e}")))?;
            prop_assert_eq!(&parsed, &cursor);
            prop_assert_eq!(Cursor::parse_for(cursor.key(), &wire), Ok(cursor.clone()));
            Ok(())
        })
        .unwrap();
}

#[test]
fn mutated_cursors_never_panic_and_only_canonical_strings_parse() {
    let still_valid = Cell::new(0u32);
    let refused = Cell::new(0u32);
    runner()
        .run(
            &(
                cursor_strategy(),
                proptest::collection::vec(mutation_strategy(), 1..4),
            ),
            |(cursor, mutations)| {
                let original = cursor.to_string();
                let mutated = mutations.iter().fold(original.clone(), |s, m| apply(&s, m));
                match mutated.parse::<Cursor>() {
                    Ok(parsed) => {
                        still_valid.set(still_valid.get() + 1);
                        prop_assert_eq!(parsed.to_string(), mutated.clone());
                        // Canonical form: a different string is a different cursor.
                        if mutated != original {
                            prop_assert_ne!(&parsed, &cursor);
                        }
                    }
                    Err(_) => refused.set(refused.get() + 1),
                }
                check_parse(&mutated)
            },
        )
        .unwrap();
    assert!(
        still_valid.get() > 0 && refused.get() > 0,
        "mutations should both keep and break validity ({} valid, {} refused)",
        still_valid.get(),
        refused.get()
    );
}

#[test]
fn overlong_strings_are_refused_as_too_long_whatever_they_contain() {
    let valid = Cursor::start(SessionKey::new("t", "s").unwrap()).to_string();
    for text in [
        "x".repeat(MAX_CURSOR_LEN + 1),
        format!("{valid}{}", "a".repeat(MAX_CURSOR_LEN)),
        "é".repeat(MAX_CURSOR_LEN / 2 + 1),
        ".".repeat(10 * 1024 * 1024),
        "%".repeat(MAX_CURSOR_LEN + 1),
    ] {
        assert_eq!(
            text.parse::<Cursor>(),
            Err(CursorError::TooLong {
                len: text.len(),
                max: MAX_CURSOR_LEN
            })
        );
        let key = SessionKey::new("t", "s").unwrap();
        assert_eq!(
            Cursor::parse_for(&key, &text),
            Err(CursorError::TooLong {
                len: text.len(),
                max: MAX_CURSOR_LEN
            }),
            "scoping does not get a chance before the length check"
        );
    }
    // The limit itself is accepted by the length check (then judged on form).
    let at_limit = "x".repeat(MAX_CURSOR_LEN);
    assert!(matches!(
        at_limit.parse::<Cursor>(),
        Err(CursorError::Malformed { .. })
    ));
}

#[test]
fn the_longest_valid_keys_still_fit_in_a_cursor_string() {
    // Worst case for the encoding: every byte escaped (3 wire bytes each).
    let longest = "é".repeat(livereplay::MAX_ID_LEN / 2);
    let key = SessionKey::new(&longest, &longest).unwrap();
    let cursor = Cursor::new(
        key,
        Incarnation::from_raw(u64::MAX),
        Revision(u64::MAX),
        u64::MAX,
    );
    let wire = cursor.to_string();
    assert!(wire.len() <= MAX_CURSOR_LEN, "{} bytes", wire.len());
    assert_eq!(wire.parse::<Cursor>(), Ok(cursor));
}

#[test]
fn ids_with_control_characters_are_refused() {
    for bad in ["\n", "a\0b", "\u{7f}", "tab\there", "\u{85}", "\u{1b}[31m"] {
        assert_eq!(
            SessionKey::new(bad, "s"),
            Err(KeyError::ControlCharacter {
                part: IdPart::Tenant
            }),
            "{bad:?}"
        );
        assert_eq!(
            SessionKey::new("t", bad),
            Err(KeyError::ControlCharacter {
                part: IdPart::Session
            }),
            "{bad:?}"
        );
    }
    // Smuggled through the wire form's percent-encoding instead.
    for smuggled in [
        "lr1.-.0.0.t.%0A",
        "lr1.-.0.0.%00.s",
        "lr1.-.0.0.t.a%7Fb",
        "lr1.-.0.0.%C2%85.s",
        "lr1.-.0.0.t.%1B%5B31m",
    ] {
        assert!(
            matches!(
                smuggled.parse::<Cursor>(),
                Err(CursorError::Malformed { .. })
            ),
            "{smuggled:?} parsed"
        );
    }
}

/// What a forged-cursor row must produce.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    /// These positions, every event of the cursor's own key.
    Events(Vec<u64>),
    Gap(GapReason),
    WrongSession,
}

#[test]
fn forged_cursors_never_yield_another_keys_events() {
    let clock = Arc::new(ManualClock::new());
    let store = ReplayStore::<String>::builder()
        .config(Config::default().with_capacity(16))
        .clock(clock)
        .build()
        .unwrap();
    let requester = SessionKey::new("acme", "mine").unwrap();
    let sibling = SessionKey::new("acme", "theirs").unwrap();
    let other_tenant = SessionKey::new("evil", "mine").unwrap();
    let unknown = SessionKey::new("acme", "never-used").unwrap();
    // Payloads name their key, so a leak is visible in the payload too.
    for (key, count) in [(&requester, 3), (&sibling, 4), (&other_tenant, 5)] {
        for _ in 0..count {
            store.append(key, Revision(1), format!("{key}")).unwrap();
        }
    }
    let mine = store.current_cursor(&requester).incarnation();
    let theirs = store.current_cursor(&sibling).incarnation();
    let evil = store.current_cursor(&other_tenant).incarnation();
    let foreign_store = ReplayStore::<String>::default();
    let foreign = foreign_store
        .append(&requester, Revision(1), String::new())
        .unwrap()
        .incarnation();
    let random = Incarnation::from_raw(0x0123_4567_89ab_cdef);
    let at = |key: &SessionKey, incarnation, position| {
        Cursor::new(key.clone(), incarnation, Revision(1), position)
    };

    use Expect::*;
    // (what it is, cursor, expected from a call scoped to `requester`,
    //  expected from an unscoped call)
    let rows: Vec<(&str, Cursor, Expect, Expect)> = vec![
        (
            "own cursor",
            at(&requester, mine, 1),
            Events(vec![2, 3]),
            Events(vec![2, 3]),
        ),
        (
            "another tenant's key",
            at(&other_tenant, evil, 1),
            WrongSession,
            Events(vec![2, 3, 4, 5]),
        ),
        (
            "another tenant's key, own incarnation",
            at(&other_tenant, mine, 1),
            WrongSession,
            Gap(GapReason::Reset),
        ),
        (
            "another session's key",
            at(&sibling, theirs, 0),
            WrongSession,
            Events(vec![1, 2, 3, 4]),
        ),
        (
            "another session's key, no incarnation",
            at(&sibling, None, 2),
            WrongSession,
            Events(vec![3, 4]),
        ),
        (
            "position far ahead",
            at(&requester, mine, 1_000),
            Gap(GapReason::Unavailable),
            Gap(GapReason::Unavailable),
        ),
        (
            "u64::MAX position",
            at(&requester, mine, u64::MAX),
            Gap(GapReason::Unavailable),
            Gap(GapReason::Unavailable),
        ),
        (
            "u64::MAX position, no incarnation",
            at(&requester, None, u64::MAX),
            Gap(GapReason::Unavailable),
            Gap(GapReason::Unavailable),
        ),
        (
            "incarnation of another store",
            at(&requester, Some(foreign), 1),
            Gap(GapReason::Reset),
            Gap(GapReason::Reset),
        ),
        (
            "made-up incarnation",
            at(&requester, random, 2),
            Gap(GapReason::Reset),
            Gap(GapReason::Reset),
        ),
        (
            "made-up incarnation, u64::MAX position",
            at(&requester, random, u64::MAX),
            Gap(GapReason::Reset),
            Gap(GapReason::Reset),
        ),
        (
            "another session's incarnation",
            at(&requester, theirs, 1),
            Gap(GapReason::Reset),
            Gap(GapReason::Reset),
        ),
        (
            "position 0, foreign incarnation",
            at(&requester, Some(foreign), 0),
            Events(vec![1, 2, 3]),
            Events(vec![1, 2, 3]),
        ),
        (
            "position 0, another session's incarnation",
            at(&requester, theirs, 0),
            Events(vec![1, 2, 3]),
            Events(vec![1, 2, 3]),
        ),
        (
            "position 0, unknown session",
            at(&unknown, None, 0),
            WrongSession,
            Events(vec![]),
        ),
        (
            "position 3, unknown session",
            at(&unknown, random, 3),
            WrongSession,
            Gap(GapReason::Unavailable),
        ),
        (
            "u64::MAX, unknown session",
            at(&unknown, None, u64::MAX),
            WrongSession,
            Gap(GapReason::Unavailable),
        ),
    ];

    for (what, cursor, scoped, unscoped) in rows {
        // Through the wire form too: a forged string is what a client sends.
        let wire: Cursor = cursor.to_string().parse().unwrap();
        assert_eq!(wire, cursor, "{what}: round trip");
        let outcome = |result: Result<Vec<Arc<livereplay::Event<String>>>, Error>| match result {
            Ok(events) => {
                for event in &events {
                    assert_eq!(event.key(), cursor.key(), "{what}: another key's event");
                    assert_eq!(event.payload(), &format!("{}", cursor.key()), "{what}");
                }
                Events(events.iter().map(|e| e.position()).collect())
            }
            Err(Error::Gap(gap)) => {
                assert_eq!(gap.requested, cursor, "{what}");
                assert_eq!(
                    gap.latest.key(),
                    cursor.key(),
                    "{what}: latest of another key"
                );
                Gap(gap.reason)
            }
            Err(Error::Cursor(CursorError::WrongSession)) => WrongSession,
            Err(other) => panic!("{what}: unexpected {other:?}"),
        };
        assert_eq!(
            outcome(store.replay_scoped(&requester, &cursor)),
            scoped,
            "{what}: scoped replay"
        );
        assert_eq!(
            outcome(store.replay_after_cursor(&cursor)),
            unscoped,
            "{what}: unscoped replay"
        );
        let by_parse_for = Cursor::parse_for(&requester, &cursor.to_string());
        assert_eq!(
            by_parse_for.is_err(),
            scoped == WrongSession,
            "{what}: parse_for agrees with the scoped call"
        );

        // Subscriptions apply the same checks, then deliver the same events.
        let subscribed = |result: Result<livereplay::Subscription<String>, Error>| {
            result.map(|mut subscription| {
                let mut events = Vec::new();
                for _ in 0..32 {
                    match subscription.try_next() {
                        Ok(event) => events.push(event),
                        Err(_) => break,
                    }
                }
                events
            })
        };
        let scoped_subscription = subscribed(store.subscribe_scoped(&requester, &cursor));
        assert_eq!(
            outcome(scoped_subscription),
            scoped,
            "{what}: scoped subscribe"
        );
        let subscription = subscribed(store.subscribe_after_cursor(&cursor));
        assert_eq!(
            outcome(subscription),
            unscoped,
            "{what}: unscoped subscribe"
        );
        // Subscribing at 0 creates the unknown session; keep it unknown for
        // the next rows.
        store.remove_session(&unknown);
    }
    // Nobody's events moved: every session still holds exactly its own.
    for (key, count) in [(&requester, 3), (&sibling, 4), (&other_tenant, 5)] {
        let all = store.replay_after_position(key, 0).unwrap();
        assert_eq!(all.len(), count);
        assert!(all.iter().all(|e| e.key() == key));
    }
    assert_eq!(store.stats().subscribers, 0);
}

#[test]
fn configurations_that_cannot_work_are_refused_at_construction() {
    let absurd_age = Duration::from_secs(u64::MAX);
    let cases: Vec<(Config, ConfigError)> = vec![
        (
            Config::default().with_capacity(0),
            ConfigError::ZeroCapacity,
        ),
        (
            Config::default().with_capacity(MAX_CAPACITY + 1),
            ConfigError::CapacityTooLarge {
                capacity: MAX_CAPACITY + 1,
                max: MAX_CAPACITY,
            },
        ),
        (
            Config::default().with_capacity(usize::MAX),
            ConfigError::CapacityTooLarge {
                capacity: usize::MAX,
                max: MAX_CAPACITY,
            },
        ),
        (
            Config::default().with_max_age(Duration::ZERO),
            ConfigError::ZeroMaxAge,
        ),
        (
            Config::default().with_max_age(absurd_age),
            ConfigError::MaxAgeTooLarge {
                max_age: absurd_age,
            },
        ),
        (
            Config::default()
                .with_max_age(Duration::from_nanos(u64::MAX) + Duration::from_nanos(1)),
            ConfigError::MaxAgeTooLarge {
                max_age: Duration::from_nanos(u64::MAX) + Duration::from_nanos(1),
            },
        ),
        (
            Config::default().with_max_sessions(0),
            ConfigError::ZeroMaxSessions,
        ),
        (
            Config::default().with_max_sessions(MAX_SESSIONS_LIMIT + 1),
            ConfigError::TooManySessionsAllowed {
                max_sessions: MAX_SESSIONS_LIMIT + 1,
                max: MAX_SESSIONS_LIMIT,
            },
        ),
        (
            Config::default().with_max_sessions(usize::MAX),
            ConfigError::TooManySessionsAllowed {
                max_sessions: usize::MAX,
                max: MAX_SESSIONS_LIMIT,
            },
        ),
    ];
    for (config, expected) in cases {
        assert_eq!(config.validate(), Err(expected.clone()), "{config:?}");
        assert_eq!(
            ReplayStore::<u8>::new(config.clone()).err(),
            Some(expected.clone()),
            "{config:?}"
        );
        assert_eq!(
            ReplayStore::<u8>::builder()
                .config(config.clone())
                .build()
                .err(),
            Some(expected),
            "{config:?}"
        );
    }
    // The edges that can work are accepted.
    for config in [
        Config::default().with_capacity(1),
        Config::default().with_capacity(MAX_CAPACITY),
        Config::default().with_max_age(Duration::from_nanos(1)),
        Config::default().with_max_age(Duration::from_nanos(u64::MAX)),
        Config::default().with_max_sessions(1),
        Config::default().with_max_sessions(MAX_SESSIONS_LIMIT),
    ] {
        assert!(ReplayStore::<u8>::new(config.clone()).is_ok(), "{config:?}");
    }
}
