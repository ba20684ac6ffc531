//! The protocol's header names, and the headers every response carries:
//! browser security headers and CORS (protocol section 12.7).
//!
//! Owns [`common_headers`]: it adds `X-Content-Type-Options: nosniff`,
//! `Cross-Origin-Resource-Policy: cross-origin` and the two CORS headers a
//! browser reads on an actual response (`Access-Control-Allow-Origin`,
//! `Access-Control-Expose-Headers`) to every response of the router,
//! errors included, without replacing a header a handler set (the stream
//! route calls it on each of its responses, and it is the layer around the
//! router's fallback). [`add_preflight_headers`] adds what only a
//! preflight (`OPTIONS`) answer needs: the allowed methods and request
//! headers, and how long the browser may cache the answer. A browser
//! ignores those on any other response, and they were two thirds of an
//! append's response (about 330 of 500 header bytes), sent, copied
//! through loopback and parsed by the client on every request.

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Response};

/// `Stream-Next-Offset`.
pub const NEXT_OFFSET: &str = "stream-next-offset";
/// `Stream-Up-To-Date`.
pub const UP_TO_DATE: &str = "stream-up-to-date";
/// `Stream-Closed`.
pub const STREAM_CLOSED: &str = "stream-closed";
/// `Stream-Cursor`.
pub const STREAM_CURSOR: &str = "stream-cursor";
/// `Stream-Seq`.
pub const STREAM_SEQ: &str = "stream-seq";
/// `Stream-TTL`.
pub const STREAM_TTL: &str = "stream-ttl";
/// `Stream-Expires-At`.
pub const EXPIRES_AT: &str = "stream-expires-at";
/// `Stream-Forked-From`.
pub const FORKED_FROM: &str = "stream-forked-from";
/// `Stream-Fork-Offset`.
pub const FORK_OFFSET: &str = "stream-fork-offset";
/// `Stream-Fork-Sub-Offset`.
pub const FORK_SUB_OFFSET: &str = "stream-fork-sub-offset";
/// `stream-sse-data-encoding`.
pub const SSE_DATA_ENCODING: &str = "stream-sse-data-encoding";
/// `Producer-Id`.
pub const PRODUCER_ID: &str = "producer-id";
/// `Producer-Epoch`.
pub const PRODUCER_EPOCH: &str = "producer-epoch";
/// `Producer-Seq`.
pub const PRODUCER_SEQ: &str = "producer-seq";
/// `Producer-Expected-Seq`.
pub const PRODUCER_EXPECTED_SEQ: &str = "producer-expected-seq";
/// `Producer-Received-Seq`.
pub const PRODUCER_RECEIVED_SEQ: &str = "producer-received-seq";

/// The protocol headers a browser client must be allowed to read.
const EXPOSED: &str = "stream-next-offset, stream-up-to-date, stream-closed, stream-cursor, \
stream-ttl, stream-expires-at, stream-sse-data-encoding, producer-epoch, producer-seq, \
producer-expected-seq, producer-received-seq, etag, location, content-type";

/// The request headers a browser client may send.
const ALLOWED: &str = "content-type, if-none-match, authorization, stream-seq, stream-ttl, \
stream-expires-at, stream-closed, stream-forked-from, stream-fork-offset, \
stream-fork-sub-offset, producer-id, producer-epoch, producer-seq";

/// Adds the security and CORS headers to a response.
pub async fn common_headers<B>(mut response: Response<B>) -> Response<B> {
    add_common_headers(response.headers_mut());
    response
}

/// [`common_headers`], in place: what the stream route calls on every
/// response it makes.
pub fn add_common_headers(headers: &mut HeaderMap) {
    let mut add = |name: HeaderName, value: &'static str| {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    };
    add(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    add(
        HeaderName::from_static("cross-origin-resource-policy"),
        "cross-origin",
    );
    add(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*");
    add(header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSED);
}

/// How long a browser may reuse a preflight's answer, in seconds (a day;
/// browsers cap it lower, Chromium at two hours): the answer is the same
/// for every stream, so a page pays one preflight, not one per request.
const PREFLIGHT_MAX_AGE: &str = "86400";

/// The CORS headers of a preflight (`OPTIONS`) answer, besides
/// [`add_common_headers`]' ones.
pub fn add_preflight_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, PUT, POST, DELETE, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOWED),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(PREFLIGHT_MAX_AGE),
    );
}
