//! Access control: who may do what to which stream, decided once per
//! request by the host's hook, enforced here for every route.
//!
//! Owns [`RequestInfo`] (what the hook sees), [`Access`] (what it
//! decides) and the enforcement. Invariants:
//!
//! * **Every route asks.** Stream routes and the subscription APIs under
//!   `__ds` go through [`DurableStreams::authorize`]; the only exceptions
//!   are `OPTIONS` (CORS preflight, which carries no credentials and
//!   touches nothing), the webhook public key set `__ds/jwks.json` (public
//!   by nature: webhook receivers fetch it without credentials). The
//!   wake-token routes (`callback`, `ack`, `release`) ask too, but when
//!   the hook refuses (their `Authorization` holds the wake's token, not a
//!   caller's credential) the wake's token is itself the credential,
//!   scoped to the one current wake of one subscription.
//! * **A tenant sees only its own streams.** A stream is the session
//!   `(tenant, path)`, so another tenant's stream is not found: there is
//!   no check to forget, and no offset or cursor names a session of
//!   another tenant.
//! * **Refusals reveal nothing.** A caller scoped to one stream gets
//!   `404` for every other path (as if it did not exist), checked before
//!   anything else; a read-only caller's write is `403`; a caller without
//!   credentials `401` with `WWW-Authenticate: Bearer`.
//! * **The default is unchanged.** Without a hook every request is the
//!   empty tenant with full access.

use axum::http::{HeaderMap, Method};

use super::error::StreamError;
use super::DurableStreams;

/// What the access hook sees of a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    /// The method.
    pub method: &'a Method,
    /// The stream path below `/v1/stream/`, percent-decoded (`__ds/...`
    /// for the subscription APIs).
    pub path: &'a str,
    /// The raw query string, if any (the protocol's `offset`, `live` and
    /// `cursor`, and whatever else the client sent, such as a signature).
    pub query: Option<&'a str>,
    /// The request headers.
    pub headers: &'a HeaderMap,
}

impl RequestInfo<'_> {
    /// Whether the request changes something (anything but `GET` and
    /// `HEAD`).
    pub fn writes(&self) -> bool {
        !matches!(*self.method, Method::GET | Method::HEAD)
    }
}

/// What a request may do: decided by the access hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The tenant whose streams the request addresses.
    pub tenant: String,
    /// Whether it may create, append, close, delete, and change
    /// subscriptions (`false`: `403` for those).
    pub write: bool,
    /// The one stream it may address (`Some`: `404` for every other path,
    /// the subscription APIs included).
    pub stream: Option<String>,
}

impl Access {
    /// Full access to every stream of `tenant`.
    pub fn full(tenant: impl Into<String>) -> Self {
        Self {
            tenant: tenant.into(),
            write: true,
            stream: None,
        }
    }

    /// Reads of every stream of `tenant`.
    pub fn read_only(tenant: impl Into<String>) -> Self {
        Self {
            tenant: tenant.into(),
            write: false,
            stream: None,
        }
    }

    /// Reads of the one stream at `path` of `tenant`.
    pub fn read_stream(tenant: impl Into<String>, path: impl Into<String>) -> Self {
        Self {
            tenant: tenant.into(),
            write: false,
            stream: Some(path.into()),
        }
    }
}

/// The hook that decides a request's [`Access`]; its error is the
/// response (typically [`StreamError::Unauthorized`] or
/// [`StreamError::Forbidden`]).
pub type AccessHook = dyn Fn(&RequestInfo<'_>) -> Result<Access, StreamError> + Send + Sync;

impl DurableStreams {
    /// The access of a request to the stream at `info.path`: the hook's
    /// decision, then the scope (`404` outside it) and the write right
    /// (`403`), in that order, so a scoped caller learns nothing of other
    /// paths.
    pub(crate) fn authorize_stream(&self, info: &RequestInfo<'_>) -> Result<Access, StreamError> {
        let access = (self.access)(info)?;
        if access
            .stream
            .as_deref()
            .is_some_and(|scope| scope != info.path)
        {
            return Err(StreamError::NotFound);
        }
        if info.writes() && !access.write {
            return Err(StreamError::Forbidden(format!(
                "this credential may only read: {} needs one that may write",
                info.method
            )));
        }
        Ok(access)
    }

    /// The tenant of a request to the subscription APIs (not the
    /// wake-token routes): the hook's decision; a caller scoped to one
    /// stream is `404` (they are not its stream), a read-only one may only
    /// `GET`.
    pub(crate) fn authorize_subscriptions(
        &self,
        info: &RequestInfo<'_>,
    ) -> Result<String, StreamError> {
        let access = (self.access)(info)?;
        if access.stream.is_some() {
            return Err(StreamError::NotFound);
        }
        if info.writes() && !access.write {
            return Err(StreamError::Forbidden(format!(
                "this credential may only read: {} on a subscription needs one that may write",
                info.method
            )));
        }
        Ok(access.tenant)
    }

    /// The tenant of a wake-token route (`callback`, `ack`, `release` of
    /// subscription `id`, presenting `token`): the hook's tenant if it
    /// accepts the request unscoped (the token is then checked against
    /// that tenant's wake), else the tenant of the subscription `id` whose
    /// current wake has this token. Neither: the hook's refusal (`404`
    /// for a scoped caller).
    pub(crate) async fn authorize_wake(
        &self,
        info: &RequestInfo<'_>,
        id: &str,
        token: &str,
    ) -> Result<String, StreamError> {
        let refusal = match (self.access)(info) {
            Ok(access) if access.stream.is_none() => return Ok(access.tenant),
            Ok(_) => StreamError::NotFound,
            Err(error) => error,
        };
        self.tenant_of_wake(id, token).await.ok_or(refusal)
    }

    /// Whether a hook other than the default is installed (responses that
    /// shared caches may keep then vary by `Authorization`).
    pub(crate) fn access_controlled(&self) -> bool {
        self.access_controlled
    }
}
