//! From the wire: a host's ids and cursor strings turned into the store's
//! own keys, without allocating when the session is known.
//!
//! A host serving a reconnect gets text: the tenant and session ids (a
//! path, a query) and the client's last cursor (an SSE `Last-Event-ID`).
//! [`SessionKey::new`] and `str::parse::<Cursor>` allocate a new key for
//! that text every time. The calls here look the ids up in the session map
//! first, by a borrowed probe (one hash of the ids, under the shard's read
//! lock), and hand out the map's own key, a reference count; only an id
//! the store does not know is built (and validated) as a new key.
//!
//! Invariant: the key returned is equal to the one [`SessionKey::new`]
//! would build from the same ids, and a cursor parsed here equals the one
//! `str::parse` gives: only where the key comes from differs.

use crate::cursor::{Cursor, CursorError, Wire};
use crate::key::{KeyError, SessionKey};
use crate::store::ReplayStore;

impl<T> ReplayStore<T> {
    /// The key of `(tenant, session)`: the store's own if it knows the
    /// session (resident or evicted but remembered), with no allocation;
    /// otherwise a new one, refused like [`SessionKey::new`] refuses ids.
    ///
    /// ```
    /// use livereplay::{ReplayStore, Revision, SessionKey};
    ///
    /// let store = ReplayStore::<u32>::default();
    /// let key = SessionKey::new("acme", "chat-1")?;
    /// store.append(&key, Revision(1), 7)?;
    /// assert_eq!(store.resolve_key("acme", "chat-1")?, key);
    /// assert!(store.resolve_key("acme", "").is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn resolve_key(&self, tenant: &str, session: &str) -> Result<SessionKey, KeyError> {
        match self.sessions.known_key(tenant, session) {
            Some(key) => Ok(key),
            None => SessionKey::new(tenant, session),
        }
    }

    /// Parses a cursor string (as [`str::parse`] does, with the same
    /// errors) and gives it the store's own key when the store knows its
    /// session: for a known session and ids without escapes this allocates
    /// nothing.
    ///
    /// ```
    /// use livereplay::{Cursor, ReplayStore, Revision, SessionKey};
    ///
    /// let store = ReplayStore::<u32>::default();
    /// let key = SessionKey::new("acme", "chat-1")?;
    /// let event = store.append(&key, Revision(1), 7)?;
    /// let wire = event.cursor().to_string();
    /// assert_eq!(store.parse_cursor(&wire)?, wire.parse::<Cursor>()?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn parse_cursor(&self, text: &str) -> Result<Cursor, CursorError> {
        let wire = Wire::split(text)?;
        let (tenant, session) = wire.decoded_ids()?;
        let key = self
            .resolve_key(&tenant, &session)
            .map_err(|_| CursorError::Malformed {
                reason: "invalid session key",
            })?;
        Ok(wire.cursor(key))
    }
}

#[cfg(test)]
mod tests {
    use crate::{Cursor, CursorError, ReplayStore, Revision, SessionKey};

    #[test]
    fn known_ids_resolve_to_the_stores_key_and_unknown_ones_are_built() {
        let store = ReplayStore::<u32>::default();
        let key = SessionKey::new("a.b", "c d").unwrap();
        let event = store.append(&key, Revision(3), 1).unwrap();
        let resolved = store.resolve_key("a.b", "c d").unwrap();
        assert_eq!(resolved, key);
        let unknown = store.resolve_key("a.b", "other").unwrap();
        assert_eq!(unknown, SessionKey::new("a.b", "other").unwrap());
        assert!(store.resolve_key("t", "bad\n").is_err());

        let wire = event.cursor().to_string();
        assert_eq!(store.parse_cursor(&wire), Ok(event.cursor()));
        let unknown_wire = Cursor::start(unknown).to_string();
        assert_eq!(store.parse_cursor(&unknown_wire), unknown_wire.parse());
        for bad in ["", "lr1.-.0.0.%74.s", "lr1.-.0.0.t.s.x", "lr1.-.0.0.t."] {
            assert_eq!(store.parse_cursor(bad), bad.parse::<Cursor>(), "{bad:?}");
            assert!(matches!(
                store.parse_cursor(bad),
                Err(CursorError::Malformed { .. })
            ));
        }
    }
}
