//! The key layout (module docs' table): one session's stream and meta, and
//! a tenant's listing.
//!
//! # Invariants
//!
//! * Ids are percent-encoded exactly as cursors encode them, so no two
//!   `(tenant, session)` pairs share a key and no encoded id holds `:`, `{`
//!   or `}`.
//! * Every key of one session carries the same single hash tag
//!   `{<t>:<s>}`.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::key::SessionKey;

/// The same escaping as cursors (`crate::cursor`): everything but ASCII
/// letters, digits, `-`, `_` and `~`.
pub(super) const ID_ESCAPES: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

/// The keys of one session.
pub(super) struct SessionKeys {
    pub(super) log: String,
    pub(super) meta: String,
}

impl SessionKeys {
    pub(super) fn new(prefix: &str, key: &SessionKey) -> Self {
        let tag = format!(
            "{{{}:{}}}",
            utf8_percent_encode(key.tenant(), ID_ESCAPES),
            utf8_percent_encode(key.session(), ID_ESCAPES)
        );
        Self {
            log: format!("{prefix}:{tag}:log"),
            meta: format!("{prefix}:{tag}:meta"),
        }
    }
}

pub(super) fn listing_key(prefix: &str, tenant: &str) -> String {
    format!(
        "{prefix}:tenant:{{{}}}:sessions",
        utf8_percent_encode(tenant, ID_ESCAPES)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_never_collide() {
        let pairs = [
            ("ab", "c"),
            ("a", "bc"),
            ("", "abc"),
            ("a:b", "c"),
            ("a", "b:c"),
            ("a{b", "c}"),
            ("a}", "{b"),
            ("a%3A", "b"),
            ("ü", "s"),
        ];
        let mut seen = std::collections::HashSet::new();
        for (tenant, session) in pairs {
            let key = SessionKey::new(tenant, session).expect("key");
            let keys = SessionKeys::new("lr", &key);
            assert!(seen.insert(keys.log.clone()), "{tenant:?}/{session:?}");
            assert!(seen.insert(keys.meta.clone()));
            // Exactly one hash tag, holding no brace.
            let tag = &keys.log[keys.log.find('{').unwrap() + 1..keys.log.find('}').unwrap()];
            assert!(!tag.is_empty() && !tag.contains(['{', '}']));
            assert_eq!(keys.log.matches('{').count(), 1);
        }
        assert_ne!(listing_key("lr", "a"), listing_key("lr", "a:b"));
    }
}
