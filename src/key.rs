//! Session keys: the `(tenant, session id)` pair every event and cursor is
//! scoped to.
//!
//! Invariants: a key is immutable, cheap to clone (one shared allocation),
//! hashed once at creation (a [`KeyProbe`] of the same ids hashes equal, so
//! the session map can be searched by borrowed ids), and holds only ids
//! that can cross the wire: at most [`MAX_ID_LEN`] bytes
//! each, no control characters, and a non-empty session id. The tenant may be
//! empty (single-tenant deployments).

use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, OnceLock};

use thiserror::Error;

/// The longest tenant or session id accepted, in bytes.
pub const MAX_ID_LEN: usize = 512;

/// Which part of a [`SessionKey`] an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdPart {
    /// The tenant id.
    Tenant,
    /// The session id.
    Session,
}

impl fmt::Display for IdPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdPart::Tenant => "tenant id",
            IdPart::Session => "session id",
        })
    }
}

/// Why a tenant or session id was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// The session id is empty.
    #[error("the session id is empty: give every session a non-empty id")]
    EmptySessionId,
    /// An id is longer than [`MAX_ID_LEN`] bytes.
    #[error("the {part} is {len} bytes long; at most {max} bytes are accepted")]
    TooLong {
        /// Which id.
        part: IdPart,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An id contains a control character, which no wire format carries
    /// safely.
    #[error("the {part} contains a control character; ids must be printable text")]
    ControlCharacter {
        /// Which id.
        part: IdPart,
    },
}

/// A session's identity: tenant plus session id.
///
/// A tenant never reads another tenant's events, a session never another
/// session's: every store method is scoped by a `SessionKey`.
///
/// ```
/// use livereplay::SessionKey;
///
/// let key = SessionKey::new("acme", "chat/42")?;
/// assert_eq!(key.tenant(), "acme");
/// assert_eq!(key.session(), "chat/42");
/// assert!(SessionKey::new("acme", "").is_err());
/// # Ok::<(), livereplay::KeyError>(())
/// ```
#[derive(Clone)]
pub struct SessionKey(Arc<KeyParts>);

/// Shared by every clone of a key (events and cursors hold keys): one
/// pointer per key, so a cursor stays small.
struct KeyParts {
    /// The key's hash, computed once with a per-process random seed (so it
    /// resists hash flooding) and handed to the session map as is: a by-key
    /// lookup does not hash the ids again.
    hash: u64,
    /// Byte length of the tenant prefix of `text`.
    tenant_len: usize,
    /// `tenant` followed by `session`.
    text: Box<str>,
}

impl SessionKey {
    /// Builds a key, refusing ids that cannot cross the wire.
    pub fn new(tenant: &str, session: &str) -> Result<Self, KeyError> {
        check_id(IdPart::Tenant, tenant)?;
        check_id(IdPart::Session, session)?;
        if session.is_empty() {
            return Err(KeyError::EmptySessionId);
        }
        let mut text = String::with_capacity(tenant.len() + session.len());
        text.push_str(tenant);
        text.push_str(session);
        let hash = hash_parts(tenant, session);
        Ok(Self(Arc::new(KeyParts {
            hash,
            tenant_len: tenant.len(),
            text: text.into_boxed_str(),
        })))
    }

    /// The tenant id (may be empty).
    pub fn tenant(&self) -> &str {
        &self.0.text[..self.0.tenant_len]
    }

    /// The session id (never empty).
    pub fn session(&self) -> &str {
        &self.0.text[self.0.tenant_len..]
    }
}

/// The hash of a key with these ids: the one a [`SessionKey`] stores, and
/// the one a [`KeyProbe`] computes without building a key. The tenant's
/// length is hashed too, so the split point is part of the identity.
fn hash_parts(tenant: &str, session: &str) -> u64 {
    let mut hasher = key_hasher().build_hasher();
    hasher.write_usize(tenant.len());
    hasher.write(tenant.as_bytes());
    hasher.write(session.as_bytes());
    hasher.finish()
}

/// A key's identity seen through a reference: what the session map can be
/// searched by. A [`SessionKey`] is one; a [`KeyProbe`] is one made of
/// borrowed ids, so looking a key up by its ids allocates nothing.
pub(crate) trait KeyView {
    /// The key's precomputed hash ([`hash_parts`] of its ids).
    fn key_hash(&self) -> u64;
    /// The tenant and session ids.
    fn ids(&self) -> (&str, &str);
}

impl KeyView for SessionKey {
    fn key_hash(&self) -> u64 {
        self.0.hash
    }

    fn ids(&self) -> (&str, &str) {
        (self.tenant(), self.session())
    }
}

/// Borrowed ids and their hash: a lookup key for the session map that
/// costs one hash of the ids and no allocation.
pub(crate) struct KeyProbe<'a> {
    hash: u64,
    tenant: &'a str,
    session: &'a str,
}

impl<'a> KeyProbe<'a> {
    pub(crate) fn new(tenant: &'a str, session: &'a str) -> Self {
        Self {
            hash: hash_parts(tenant, session),
            tenant,
            session,
        }
    }
}

impl KeyView for KeyProbe<'_> {
    fn key_hash(&self) -> u64 {
        self.hash
    }

    fn ids(&self) -> (&str, &str) {
        (self.tenant, self.session)
    }
}

// Hash and equality of the view agree with `SessionKey`'s own (the hash is
// written the same way, and equal ids are equal keys), as `Borrow` requires.
impl<'a> Borrow<dyn KeyView + 'a> for SessionKey {
    fn borrow(&self) -> &(dyn KeyView + 'a) {
        self
    }
}

impl Hash for dyn KeyView + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.key_hash());
    }
}

impl PartialEq for dyn KeyView + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.key_hash() == other.key_hash() && self.ids() == other.ids()
    }
}

impl Eq for dyn KeyView + '_ {}

/// The process-wide seeded hasher of session keys.
fn key_hasher() -> &'static RandomState {
    static HASHER: OnceLock<RandomState> = OnceLock::new();
    HASHER.get_or_init(RandomState::new)
}

fn check_id(part: IdPart, id: &str) -> Result<(), KeyError> {
    if id.len() > MAX_ID_LEN {
        return Err(KeyError::TooLong {
            part,
            len: id.len(),
            max: MAX_ID_LEN,
        });
    }
    if id.chars().any(char::is_control) {
        return Err(KeyError::ControlCharacter { part });
    }
    Ok(())
}

impl PartialEq for SessionKey {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&*self.0, &*other.0);
        Arc::ptr_eq(&self.0, &other.0)
            || (a.hash == b.hash && a.tenant_len == b.tenant_len && a.text == b.text)
    }
}

impl Eq for SessionKey {}

impl Hash for SessionKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Equal keys have equal precomputed hashes (same ids, same seed).
        state.write_u64(self.0.hash);
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionKey")
            .field("tenant", &self.tenant())
            .field("session", &self.session())
            .finish()
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}/{:?}", self.tenant(), self.session())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_keys_hash_equal() {
        use std::collections::hash_map::DefaultHasher;
        let hash = |key: &SessionKey| {
            let mut hasher = DefaultHasher::new();
            key.hash(&mut hasher);
            hasher.finish()
        };
        let a = SessionKey::new("t", "s").unwrap();
        assert_eq!(hash(&a), hash(&SessionKey::new("t", "s").unwrap()));
        // The split point is hashed too (a collision here has odds 2^-64).
        assert_ne!(
            hash(&SessionKey::new("ab", "c").unwrap()),
            hash(&SessionKey::new("a", "bc").unwrap())
        );
    }

    #[test]
    fn a_probe_finds_the_key_by_its_ids() {
        use std::collections::HashSet;
        let key = SessionKey::new("acme", "chat-1").unwrap();
        let keys: HashSet<SessionKey> = [key.clone()].into_iter().collect();
        let probe = KeyProbe::new("acme", "chat-1");
        let found = keys.get(&probe as &dyn KeyView).expect("found");
        assert!(Arc::ptr_eq(&found.0, &key.0), "the stored key itself");
        for (tenant, session) in [("acm", "echat-1"), ("acme", "chat-2"), ("", "acmechat-1")] {
            let probe = KeyProbe::new(tenant, session);
            assert!(
                !keys.contains(&probe as &dyn KeyView),
                "{tenant:?}/{session:?}"
            );
        }
    }

    #[test]
    fn parts_round_trip_and_do_not_collide() {
        let a = SessionKey::new("ab", "c").unwrap();
        let b = SessionKey::new("a", "bc").unwrap();
        assert_ne!(a, b, "the split point is part of the identity");
        assert_eq!((a.tenant(), a.session()), ("ab", "c"));
        assert_eq!((b.tenant(), b.session()), ("a", "bc"));
        let empty_tenant = SessionKey::new("", "s").unwrap();
        assert_eq!(empty_tenant.tenant(), "");
    }

    #[test]
    fn refuses_ids_that_cannot_cross_the_wire() {
        assert_eq!(SessionKey::new("t", ""), Err(KeyError::EmptySessionId));
        assert_eq!(
            SessionKey::new("t\n", "s"),
            Err(KeyError::ControlCharacter {
                part: IdPart::Tenant
            })
        );
        let long = "x".repeat(MAX_ID_LEN + 1);
        assert!(matches!(
            SessionKey::new("t", &long),
            Err(KeyError::TooLong {
                part: IdPart::Session,
                ..
            })
        ));
        assert!(SessionKey::new("t", &long[1..]).is_ok());
    }
}
