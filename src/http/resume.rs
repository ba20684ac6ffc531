//! Where a client resumes: the cursor it sent back, typed and checked.
//!
//! The rules, in order:
//!
//! 1. a non-empty `Last-Event-ID` header (what a browser's `EventSource`
//!    sends when it reconnects);
//! 2. else a non-empty `cursor` query parameter (the first one), for clients
//!    that cannot set headers;
//! 3. else the start cursor of the session.
//!
//! A value that is not a cursor (or not text, or longer than
//! [`MAX_CURSOR_LEN`](crate::MAX_CURSOR_LEN)) is a `400`; a cursor of another
//! session or tenant is a `403`, so a client never reads another session's
//! events by presenting its cursor. Nothing here panics on any input.

use std::borrow::Cow;
use std::fmt;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;

use crate::cursor::{Cursor, CursorError};
use crate::key::SessionKey;

/// The header a browser's `EventSource` sends back on reconnect.
pub const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

/// The query parameter read when there is no `Last-Event-ID`.
pub const CURSOR_PARAM: &str = "cursor";

/// Where a refused cursor came from, for the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorSource {
    /// The `Last-Event-ID` header.
    LastEventId,
    /// The `?cursor=` query parameter.
    Query,
    /// A [`Cursor`] the host passed in (to [`SseCatchUp::serve`](super::SseCatchUp::serve)).
    Argument,
}

impl fmt::Display for CursorSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CursorSource::LastEventId => "Last-Event-ID header",
            CursorSource::Query => "cursor query parameter",
            CursorSource::Argument => "cursor",
        })
    }
}

/// Why a request's resume cursor was refused. As a response
/// ([`IntoResponse`]) it is a status with a plain-text body that says what
/// to do: `400` for malformed input, `403` for another session's cursor,
/// `503` if the store could not start the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResumeError {
    /// The value is not printable ASCII (a header) or not UTF-8 once
    /// percent-decoded (the query parameter). `400`.
    #[error("malformed cursor: the {from} is not text; send back the id of the last event you received, or nothing to start over")]
    NotText {
        /// Where it came from.
        from: CursorSource,
    },
    /// The value is not a cursor, or too long to be one. `400`.
    #[error("malformed cursor in the {from}: {error}")]
    Malformed {
        /// Where it came from.
        from: CursorSource,
        /// What the parser said ([`CursorError::Malformed`] or
        /// [`CursorError::TooLong`]).
        error: CursorError,
    },
    /// The cursor belongs to another session or tenant. `403`.
    #[error("cursor refused: the {from} belongs to another session; resume with a cursor this session's stream sent, or with none to start over")]
    WrongSession {
        /// Where it came from.
        from: CursorSource,
    },
    /// The store could not start the stream now (for example its durable
    /// log is unreachable). `503`.
    #[error("cannot stream this session now: {reason}; retry shortly")]
    Unavailable {
        /// What the store said.
        reason: String,
    },
}

impl ResumeError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ResumeError::NotText { .. } | ResumeError::Malformed { .. } => StatusCode::BAD_REQUEST,
            ResumeError::WrongSession { .. } => StatusCode::FORBIDDEN,
            ResumeError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ResumeError {
    fn into_response(self) -> Response {
        (
            self.status(),
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{self}\n"),
        )
            .into_response()
    }
}

/// The raw resume cursor of a request, before it is checked against a
/// session: an axum extractor, for handlers that learn the session key
/// from the path.
///
/// ```
/// use axum::extract::Path;
/// use axum::response::IntoResponse;
/// use livereplay::http::{ResumeCursor, ResumeError};
/// use livereplay::SessionKey;
///
/// async fn events(Path(id): Path<String>, resume: ResumeCursor) -> Result<String, ResumeError> {
///     let key = SessionKey::new("acme", &id).expect("a valid id");
///     let cursor = resume.for_session(&key)?; // 400 / 403 as a response
///     Ok(format!("resuming after position {}", cursor.position()))
/// }
/// # let _ = axum::Router::<()>::new().route("/s/{id}", axum::routing::get(events));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeCursor(Result<Option<(CursorSource, String)>, ResumeError>);

impl ResumeCursor {
    /// Reads the header, then the query string (`None`: no query).
    pub fn from_parts(headers: &HeaderMap, query: Option<&str>) -> Self {
        Self(raw_cursor(headers, query).map(|found| found.map(|(s, text)| (s, text.into_owned()))))
    }

    /// The cursor checked against `key`: the start cursor if the client
    /// sent none.
    pub fn for_session(&self, key: &SessionKey) -> Result<Cursor, ResumeError> {
        match &self.0 {
            Err(error) => Err(error.clone()),
            Ok(None) => Ok(Cursor::start(key.clone())),
            Ok(Some((source, text))) => parse(key, *source, text),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ResumeCursor {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::from_parts(&parts.headers, parts.uri.query()))
    }
}

/// Where a client resumes in `key`'s session: its `Last-Event-ID` header,
/// else its `cursor` query parameter (`query` is the raw query string,
/// percent-encoded, as in [`Uri::query`](axum::http::Uri::query)), else the
/// start. An empty header or parameter counts as absent.
///
/// ```
/// use axum::http::HeaderMap;
/// use livereplay::http::{resume_cursor, ResumeError};
/// use livereplay::SessionKey;
///
/// let key = SessionKey::new("acme", "chat-1")?;
/// let other = SessionKey::new("acme", "chat-2")?;
/// let theirs = livereplay::Cursor::start(other).to_string();
///
/// let start = resume_cursor(&key, &HeaderMap::new(), None)?;
/// assert_eq!(start.position(), 0);
/// let refused = resume_cursor(&key, &HeaderMap::new(), Some(&format!("cursor={theirs}")));
/// assert_eq!(refused.unwrap_err().status(), 403);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn resume_cursor(
    key: &SessionKey,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Cursor, ResumeError> {
    match raw_cursor(headers, query)? {
        None => Ok(Cursor::start(key.clone())),
        Some((source, text)) => parse(key, source, &text),
    }
}

fn parse(key: &SessionKey, source: CursorSource, text: &str) -> Result<Cursor, ResumeError> {
    Cursor::parse_for(key, text).map_err(|error| match error {
        CursorError::WrongSession => ResumeError::WrongSession { from: source },
        error => ResumeError::Malformed {
            from: source,
            error,
        },
    })
}

/// The cursor text a request carries, and where; `None` if it carries none
/// (an empty value counts as none: it is what a client sends before it saw
/// any id).
fn raw_cursor<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
) -> Result<Option<(CursorSource, Cow<'a, str>)>, ResumeError> {
    if let Some(value) = headers.get(LAST_EVENT_ID).filter(|v| !v.is_empty()) {
        let text = value.to_str().map_err(|_| ResumeError::NotText {
            from: CursorSource::LastEventId,
        })?;
        return Ok(Some((CursorSource::LastEventId, Cow::Borrowed(text))));
    }
    let Some(value) = query.and_then(query_param) else {
        return Ok(None);
    };
    let not_text = || ResumeError::NotText {
        from: CursorSource::Query,
    };
    // Form decoding, as axum's `Query` does: `+` is a space, then `%XX`.
    let decoded = percent_decode_str(&value.replace('+', " "))
        .decode_utf8()
        .map_err(|_| not_text())?
        .into_owned();
    if decoded.is_empty() {
        return Ok(None);
    }
    Ok(Some((CursorSource::Query, Cow::Owned(decoded))))
}

/// The first `cursor=` value in a raw query string, still encoded.
fn query_param(query: &str) -> Option<&str> {
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (name == CURSOR_PARAM).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn key(session: &str) -> SessionKey {
        SessionKey::new("acme", session).unwrap()
    }

    fn cursor_of(session: &str, position: u64) -> String {
        Cursor::new(key(session), None, crate::Revision(1), position).to_string()
    }

    fn headers(value: HeaderValue) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(LAST_EVENT_ID, value);
        headers
    }

    fn header(text: &str) -> HeaderMap {
        headers(HeaderValue::from_str(text).unwrap())
    }

    #[test]
    fn nothing_means_the_start() {
        let k = key("a");
        let none = HeaderMap::new();
        for query in [
            None,
            Some(""),
            Some("cursor="),
            Some("other=1"),
            Some("cursor"),
        ] {
            let cursor = resume_cursor(&k, &none, query).unwrap();
            assert_eq!(cursor, Cursor::start(k.clone()), "{query:?}");
        }
        // An empty header is no header: the query is read.
        let from_query = resume_cursor(
            &k,
            &header(""),
            Some(&format!("cursor={}", cursor_of("a", 3))),
        );
        assert_eq!(from_query.unwrap().position(), 3);
    }

    #[test]
    fn the_header_wins_over_the_query() {
        let k = key("a");
        let query = format!(
            "x=1&cursor={}&cursor={}",
            cursor_of("a", 5),
            cursor_of("a", 6)
        );
        let cursor = resume_cursor(&k, &header(&cursor_of("a", 4)), Some(&query)).unwrap();
        assert_eq!(cursor.position(), 4);
        // Without the header, the first query parameter.
        let cursor = resume_cursor(&k, &HeaderMap::new(), Some(&query)).unwrap();
        assert_eq!(cursor.position(), 5);
    }

    #[test]
    fn query_values_are_percent_decoded() {
        let k = SessionKey::new("acme", "a.b/ü").unwrap();
        let wire = Cursor::new(k.clone(), None, crate::Revision(2), 7).to_string();
        assert!(wire.contains('%'));
        let encoded: String =
            percent_encoding::utf8_percent_encode(&wire, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        let cursor = resume_cursor(&k, &HeaderMap::new(), Some(&format!("cursor={encoded}")));
        assert_eq!(cursor.unwrap().position(), 7);
    }

    #[test]
    fn another_sessions_or_tenants_cursor_is_403() {
        let k = key("a");
        for theirs in [
            cursor_of("b", 1),
            Cursor::new(
                SessionKey::new("evil", "a").unwrap(),
                None,
                crate::Revision(1),
                1,
            )
            .to_string(),
        ] {
            let by_header = resume_cursor(&k, &header(&theirs), None).unwrap_err();
            assert_eq!(
                by_header,
                ResumeError::WrongSession {
                    from: CursorSource::LastEventId
                }
            );
            assert_eq!(by_header.status(), StatusCode::FORBIDDEN);
            let by_query = resume_cursor(&k, &HeaderMap::new(), Some(&format!("cursor={theirs}")))
                .unwrap_err();
            assert_eq!(by_query.status(), StatusCode::FORBIDDEN);
            assert!(by_query.to_string().contains("another session"));
            assert!(
                !by_query.to_string().contains(&theirs),
                "never echoes the cursor"
            );
        }
    }

    #[test]
    fn malformed_input_is_400_and_never_panics() {
        let k = key("a");
        let long = "x".repeat(crate::MAX_CURSOR_LEN + 1);
        for bad in ["not-a-cursor", "lr1.zz.1.1.acme.a", " ", long.as_str()] {
            let error = resume_cursor(&k, &header(bad), None).unwrap_err();
            assert!(
                matches!(error, ResumeError::Malformed { .. }),
                "{bad:.20}: {error:?}"
            );
            assert_eq!(error.status(), StatusCode::BAD_REQUEST);
            assert!(error.to_string().starts_with("malformed cursor"), "{error}");
        }
        let too_long = resume_cursor(&k, &header(&long), None).unwrap_err();
        assert!(matches!(
            too_long,
            ResumeError::Malformed {
                error: CursorError::TooLong { .. },
                ..
            }
        ));
        // Header bytes that are not text (obs-text, invalid UTF-8).
        for bytes in [&b"\xff\xfe"[..], "ü".as_bytes(), b"lr1.\x80"] {
            let error = resume_cursor(&k, &headers(HeaderValue::from_bytes(bytes).unwrap()), None)
                .unwrap_err();
            assert_eq!(
                error,
                ResumeError::NotText {
                    from: CursorSource::LastEventId
                }
            );
            assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        }
        // Query values that decode to invalid UTF-8, or to garbage.
        for query in [
            "cursor=%ff",
            "cursor=%C3",
            "cursor=%zz",
            "cursor=a+b",
            "cursor=%00",
        ] {
            let error = resume_cursor(&k, &HeaderMap::new(), Some(query)).unwrap_err();
            assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{query}");
        }
    }

    #[test]
    fn the_extractor_defers_the_check_to_the_key() {
        let k = key("a");
        let mine = cursor_of("a", 2);
        let raw = ResumeCursor::from_parts(&header(&mine), None);
        assert_eq!(raw.for_session(&k).unwrap().position(), 2);
        assert_eq!(raw.for_session(&key("b")).unwrap_err().status(), 403);
        let bad =
            ResumeCursor::from_parts(&headers(HeaderValue::from_bytes(b"\xff").unwrap()), None);
        assert_eq!(bad.for_session(&k).unwrap_err().status(), 400);
        let none = ResumeCursor::from_parts(&HeaderMap::new(), None);
        assert_eq!(none.for_session(&k).unwrap(), Cursor::start(k));
    }

    #[tokio::test]
    async fn the_response_is_plain_text_with_the_status() {
        let response = ResumeError::WrongSession {
            from: CursorSource::Query,
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            body.starts_with(
                "cursor refused: the cursor query parameter belongs to another session"
            ),
            "{body}"
        );
        assert!(body.ends_with('\n'));
    }
}
