//! The HTTP surface: one axum route, `/v1/stream/{*path}`, dispatching by
//! method to the write path (`write`) and the read paths (`read`), and
//! turning their outcomes into the protocol's statuses and headers.
//!
//! Owns request parsing (headers, query, body limits) and response
//! headers: `Stream-Next-Offset` on every success, `Stream-Up-To-Date` and
//! `Stream-Closed` exactly when the protocol says, ETags that change with
//! data and closure, `Stream-Cursor` on live reads (never going backwards
//! for a client that echoes it). Nothing here panics on input: every
//! malformed header, offset or body is a [`StreamError`].

use std::convert::Infallible;
use std::sync::Arc as StdArc;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use base64::Engine;
use futures_core::Stream;

use crate::key::SessionKey;

use super::access::RequestInfo;
use super::error::StreamError;
use super::fork::ReadAt;
use super::headers::{self, add_common_headers, common_headers};
use super::offset::{parse_offset, Offset, OffsetQuery};
use super::producer;
use super::read::{body as batch_body, ReadView};
use super::record::{ExpiresAt, StreamConfig};
use super::write::{Append, ForkRequest};
use super::DurableStreams;

/// Where the streams are served.
pub const STREAM_ROUTE: &str = "/v1/stream/{*path}";

/// Cursor intervals: 20 s counted from 2024-10-09T00:00:00Z (protocol
/// section 10.1).
const CURSOR_EPOCH_SECS: u64 = 1_728_432_000;
const CURSOR_INTERVAL_SECS: u64 = 20;

/// The longest `Stream-Seq` and `Content-Type` accepted, in bytes (both
/// are kept in the stream's state and log).
pub const MAX_HEADER_VALUE_LEN: usize = 256;

/// `Cache-Control` of catch-up data: immutable by position.
const CACHEABLE: &str = "public, max-age=60, stale-while-revalidate=300";

impl DurableStreams {
    /// The axum router serving streams at `/v1/stream/{*path}`, with the
    /// security and CORS headers on every response. Merge it into a host's
    /// router.
    pub fn router(self: StdArc<Self>) -> Router {
        // No layer around the stream route: it reads its own body (within
        // `max_append_bytes`) and adds the common headers itself. Measured
        // with uprobes on malloc, the body-limit and map-response layers
        // cost every request a boxed clone of each layer's service, a
        // boxed future and an extensions map, and the extractors a copy of
        // the request's header map. The layer below is added before the
        // route, so it wraps the fallback only (a 404 outside the route).
        Router::new()
            .layer(axum::middleware::map_response(common_headers))
            .route(STREAM_ROUTE, any(handle))
            .with_state(self)
    }
}

async fn handle(
    State(service): State<StdArc<DurableStreams>>,
    request: axum::extract::Request,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let mut response = match Path::<String>::from_request_parts(&mut parts, &service).await {
        Err(rejection) => rejection.into_response(),
        Ok(Path(path)) => {
            let served = match read_body(body, service.options.max_append_bytes).await {
                Ok(body) => {
                    dispatch(
                        &service,
                        &parts.method,
                        &parts.uri,
                        &path,
                        parts.uri.query(),
                        &parts.headers,
                        body,
                    )
                    .await
                }
                Err(error) => Err(error),
            };
            served.unwrap_or_else(IntoResponse::into_response)
        }
    };
    add_common_headers(response.headers_mut());
    response
}

/// The request's body, at most `limit` bytes (else `413`, as axum's
/// `DefaultBodyLimit` answered before); a body in one piece (the usual
/// case) is not copied.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, StreamError> {
    let too_large = || {
        StreamError::TooLarge(format!(
            "the request body is larger than the {limit} bytes accepted"
        ))
    };
    // Read up to the limit even when the length is announced larger (as
    // axum's own limit does): refused unread, the body is still on its way
    // when the server answers and closes, and a client busy sending it
    // sees the connection fail rather than the 413.
    // The announced length (capped by the limit) sizes the buffer of a
    // body in several pieces once, rather than by doubling and copying.
    // A client that announces more than it sends costs address space, not
    // memory: untouched pages are never resident.
    let announced = usize::try_from(axum::body::HttpBody::size_hint(&body).lower())
        .unwrap_or(usize::MAX)
        .min(limit);
    let mut chunks = body.into_data_stream();
    let mut first: Option<Bytes> = None;
    let mut rest: Vec<u8> = Vec::new();
    while let Some(chunk) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut chunks).poll_next(cx)).await
    {
        let chunk = chunk.map_err(|error| {
            StreamError::BadRequest(format!("the request body could not be read: {error}"))
        })?;
        // `rest` holds the first chunk too, once there is a second.
        let had = match rest.len() {
            0 => first.as_ref().map_or(0, Bytes::len),
            copied => copied,
        };
        if had + chunk.len() > limit {
            return Err(too_large());
        }
        match &first {
            None => first = Some(chunk),
            Some(head) => {
                if rest.is_empty() {
                    rest.reserve_exact(announced.max(head.len() + chunk.len()));
                    rest.extend_from_slice(head);
                }
                rest.extend_from_slice(&chunk);
            }
        }
    }
    Ok(if rest.is_empty() {
        first.unwrap_or_default()
    } else {
        Bytes::from(rest)
    })
}

async fn dispatch(
    service: &StdArc<DurableStreams>,
    method: &Method,
    uri: &Uri,
    path: &str,
    query: Option<&str>,
    request: &HeaderMap,
    body: Bytes,
) -> Result<Response, StreamError> {
    if *method == Method::OPTIONS {
        let mut preflight = StatusCode::NO_CONTENT.into_response();
        headers::add_preflight_headers(preflight.headers_mut());
        return Ok(preflight);
    }
    let info = RequestInfo {
        method,
        path,
        query,
        headers: request,
    };
    if path == "__ds" || path.starts_with("__ds/") {
        let rest = path.strip_prefix("__ds/").unwrap_or_default();
        let tenant = if rest == "jwks.json" {
            // The webhook public key set: public, the same for every tenant.
            String::new()
        } else if let Some((id, token)) = wake_credential(method, rest, request) {
            service.authorize_wake(&info, id, token).await?
        } else {
            service.authorize_subscriptions(&info)?
        };
        return Ok(service
            .subscription_api(&tenant, method, rest, request, body)
            .await);
    }
    let access = service.authorize_stream(&info)?;
    if access.stream.is_some() && request.contains_key(headers::FORKED_FROM) {
        // A fork reads its source: a caller scoped to one stream must not
        // reach another through it (and the source is another stream).
        return Err(StreamError::NotFound);
    }
    let key = service.key(&access.tenant, path)?;
    match *method {
        Method::PUT => {
            let response = put(service, &key, uri, request, body).await?;
            if response.status() == StatusCode::CREATED {
                service.notify_write(&key, Offset::ZERO).await;
            }
            Ok(response)
        }
        Method::POST => post(service, &key, request, body).await,
        Method::DELETE => {
            service.delete(&key).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Method::HEAD => head(service, &key).await,
        Method::GET => get(service, &key, query, request).await,
        _ => Err(StreamError::NotImplemented(format!(
            "method {method} is not part of the protocol: use PUT, POST, GET, HEAD or DELETE"
        ))),
    }
}

/// The subscription id and bearer token of a wake-token route
/// (`POST __ds/subscriptions/{id}/callback`, `.../ack`, `.../release`
/// with `Authorization: Bearer`), whose token is its own credential.
fn wake_credential<'a>(
    method: &Method,
    rest: &'a str,
    request: &'a HeaderMap,
) -> Option<(&'a str, &'a str)> {
    if *method != Method::POST {
        return None;
    }
    let (id, action) = rest.strip_prefix("subscriptions/")?.split_once('/')?;
    if !matches!(action, "callback" | "ack" | "release") {
        return None;
    }
    let token = request
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    Some((id, token))
}

/// A header's value as text (`None` if absent); a value that is not
/// visible ASCII is a 400.
fn text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, StreamError> {
    headers
        .get(name)
        .map(|value| {
            value.to_str().map_err(|_| {
                StreamError::BadRequest(format!("the {name} header is not visible ASCII text"))
            })
        })
        .transpose()
}

/// [`text`], at most [`MAX_HEADER_VALUE_LEN`] bytes.
fn bounded<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, StreamError> {
    let value = text(headers, name)?;
    match value {
        Some(value) if value.len() > MAX_HEADER_VALUE_LEN => Err(StreamError::BadRequest(format!(
            "the {name} header is {} bytes; at most {MAX_HEADER_VALUE_LEN} are accepted",
            value.len()
        ))),
        _ => Ok(value),
    }
}

/// `Stream-Closed` counts only when exactly `true` (any case).
fn closes(headers: &HeaderMap) -> bool {
    matches!(text(headers, headers::STREAM_CLOSED), Ok(Some(value)) if value.trim().eq_ignore_ascii_case("true"))
}

/// Sets a response header. `HeaderName::from_static`: a `&'static str`
/// name given to `insert` is copied into a new buffer on every call when
/// it is not one of the standard names (all of the protocol's are not).
fn set(headers: &mut HeaderMap, name: &'static str, value: impl ToString) {
    if let Ok(value) = HeaderValue::from_str(&value.to_string()) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

/// [`set`] for an offset, formatted on the stack (one allocation, the
/// header value's).
fn set_offset(headers: &mut HeaderMap, name: &'static str, offset: Offset) {
    if let Ok(value) = HeaderValue::from_bytes(&offset.to_ascii()) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

async fn put(
    service: &DurableStreams,
    key: &SessionKey,
    uri: &Uri,
    request: &HeaderMap,
    body: Bytes,
) -> Result<Response, StreamError> {
    let forked_from = bounded(request, headers::FORKED_FROM)?;
    if forked_from.is_none() {
        for fork_only in [headers::FORK_OFFSET, headers::FORK_SUB_OFFSET] {
            if request.contains_key(fork_only) {
                return Err(StreamError::BadRequest(format!(
                    "{fork_only} is only valid with Stream-Forked-From"
                )));
            }
        }
    }
    let given_content_type = bounded(request, header::CONTENT_TYPE.as_str())?
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .map(str::to_string);
    let ttl_seconds = text(request, headers::STREAM_TTL)?
        .map(parse_ttl)
        .transpose()?;
    let expires_at = text(request, headers::EXPIRES_AT)?
        .map(parse_expires_at)
        .transpose()?;
    if ttl_seconds.is_some() && expires_at.is_some() {
        return Err(StreamError::BadRequest(
            "give Stream-TTL or Stream-Expires-At, not both".into(),
        ));
    }
    let created = match forked_from {
        Some(source) => {
            let fork = ForkRequest {
                source: source_path(source)?,
                at: text(request, headers::FORK_OFFSET)?
                    .map(parse_offset)
                    .transpose()?,
                sub_offset: text(request, headers::FORK_SUB_OFFSET)?
                    .map(parse_sub_offset)
                    .transpose()?
                    .unwrap_or(0),
                content_type: given_content_type,
                ttl_seconds,
                expires_at,
            };
            service
                .create_fork(key, fork, closes(request), body)
                .await?
        }
        None => {
            let config = StreamConfig {
                content_type: given_content_type
                    .unwrap_or_else(|| "application/octet-stream".to_string()),
                ttl_seconds,
                expires_at,
                fork: None,
            };
            service.create(key, config, closes(request), body).await?
        }
    };
    let status = if created.fresh {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = status.into_response();
    let out = response.headers_mut();
    set(out, "content-type", &created.config.content_type);
    set_offset(out, headers::NEXT_OFFSET, created.next);
    if created.fresh {
        // Absolute, from the request's Host (clients resolve it with URL).
        let location = match text(request, header::HOST.as_str()).ok().flatten() {
            Some(host) => format!("http://{host}{}", uri.path()),
            None => uri.path().to_string(),
        };
        set(out, "location", location);
    }
    if created.closed {
        set(out, headers::STREAM_CLOSED, "true");
    }
    Ok(response)
}

/// A `Stream-Forked-From` path: the stream path below `/v1/stream/` (the
/// full path, or the part below it).
fn source_path(text: &str) -> Result<String, StreamError> {
    let path = text
        .strip_prefix("/v1/stream/")
        .unwrap_or_else(|| text.trim_start_matches('/'));
    if path.is_empty() {
        return Err(StreamError::BadRequest(
            "Stream-Forked-From names no stream".into(),
        ));
    }
    Ok(path.to_string())
}

/// `Stream-Fork-Sub-Offset`: a non-negative decimal integer.
fn parse_sub_offset(text: &str) -> Result<u64, StreamError> {
    text.bytes()
        .all(|byte| byte.is_ascii_digit())
        .then(|| text.parse::<u64>().ok())
        .flatten()
        .ok_or_else(|| {
            StreamError::BadRequest(format!(
                "Stream-Fork-Sub-Offset must be a non-negative integer, got {:?}",
                text.chars().take(32).collect::<String>()
            ))
        })
}

/// `Stream-TTL`: a decimal integer without sign, point or leading zeros.
fn parse_ttl(text: &str) -> Result<u64, StreamError> {
    let well_formed = text == "0"
        || (!text.is_empty()
            && !text.starts_with('0')
            && text.bytes().all(|byte| byte.is_ascii_digit()));
    well_formed
        .then(|| text.parse::<u64>().ok())
        .flatten()
        .ok_or_else(|| {
            StreamError::BadRequest(format!(
                "Stream-TTL must be a whole number of seconds without sign or leading zeros, got {:?}",
                text.chars().take(32).collect::<String>()
            ))
        })
}

/// `Stream-Expires-At`: RFC 3339, any offset.
fn parse_expires_at(text: &str) -> Result<ExpiresAt, StreamError> {
    let at =
        time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
            .map_err(|error| {
                StreamError::BadRequest(format!(
                    "Stream-Expires-At must be an RFC 3339 timestamp ({error})"
                ))
            })?;
    Ok(ExpiresAt {
        text: text.trim().to_string(),
        unix_nanos: at.unix_timestamp_nanos(),
    })
}

async fn post(
    service: &StdArc<DurableStreams>,
    key: &SessionKey,
    request: &HeaderMap,
    body: Bytes,
) -> Result<Response, StreamError> {
    let producer = producer::parse(
        text(request, headers::PRODUCER_ID)?,
        text(request, headers::PRODUCER_EPOCH)?,
        text(request, headers::PRODUCER_SEQ)?,
    )?;
    let empty = body.is_empty();
    let append = Append {
        content_type: bounded(request, header::CONTENT_TYPE.as_str())?.map(str::to_string),
        body,
        close: closes(request),
        stream_seq: bounded(request, headers::STREAM_SEQ)?.map(str::to_string),
        producer,
    };
    let appended = service.append(key, append).await?;
    if appended.wrote_data {
        service.notify_write(key, appended.before).await;
    }
    // 200 only for new data a producer sent; duplicates and close-only
    // requests are 204.
    let status = match appended.producer {
        Some((_, _, true)) if !empty => StatusCode::OK,
        _ => StatusCode::NO_CONTENT,
    };
    let mut response = status.into_response();
    let out = response.headers_mut();
    // Room for these and `common_headers`' four at once, rather than
    // growing the map three times.
    out.reserve(8);
    set_offset(out, headers::NEXT_OFFSET, appended.next);
    if appended.closed {
        set(out, headers::STREAM_CLOSED, "true");
    }
    if let Some((epoch, seq, _)) = appended.producer {
        set(out, headers::PRODUCER_EPOCH, epoch);
        set(out, headers::PRODUCER_SEQ, seq);
    }
    Ok(response)
}

async fn head(service: &DurableStreams, key: &SessionKey) -> Result<Response, StreamError> {
    let view = service.view(key, true).await?;
    let tail = service.view_tail_offset(key, &view)?;
    let mut response = StatusCode::OK.into_response();
    let out = response.headers_mut();
    set(out, "content-type", &view.config.content_type);
    set_offset(out, headers::NEXT_OFFSET, tail);
    set(out, "cache-control", "no-store");
    if let Some(ttl) = view.config.ttl_seconds {
        set(out, headers::STREAM_TTL, ttl);
    }
    if let Some(at) = &view.config.expires_at {
        set(out, headers::EXPIRES_AT, &at.text);
    }
    if view.closed_at.is_some() {
        set(out, headers::STREAM_CLOSED, "true");
    }
    Ok(response)
}

/// The read parameters of a `GET`.
struct ReadQuery {
    offset: OffsetQuery,
    offset_given: bool,
    live: Live,
    cursor: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Live {
    No,
    LongPoll,
    Sse,
}

fn parse_query(query: Option<&str>) -> Result<ReadQuery, StreamError> {
    let pairs: Vec<(String, String)> = match query {
        Some(query) => {
            let uri: Uri = format!("/?{query}")
                .parse()
                .map_err(|_| StreamError::BadRequest("the query string is malformed".into()))?;
            axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
                .map_err(|error| {
                    StreamError::BadRequest(format!("the query string is malformed: {error}"))
                })?
                .0
        }
        None => Vec::new(),
    };
    let one = |name: &str| -> Result<Option<&str>, StreamError> {
        let mut values = pairs.iter().filter(|(key, _)| key == name);
        let first = values.next().map(|(_, value)| value.as_str());
        if values.next().is_some() {
            return Err(StreamError::BadRequest(format!(
                "the {name} parameter is given more than once"
            )));
        }
        Ok(first)
    };
    let offset_text = one("offset")?;
    let live = match one("live")? {
        None => Live::No,
        Some("long-poll") => Live::LongPoll,
        Some("sse") => Live::Sse,
        Some(other) => {
            return Err(StreamError::BadRequest(format!(
                "live must be long-poll or sse, got {:?}",
                other.chars().take(32).collect::<String>()
            )))
        }
    };
    Ok(ReadQuery {
        offset: OffsetQuery::parse(offset_text)?,
        offset_given: offset_text.is_some(),
        live,
        cursor: one("cursor")?.map(str::to_string),
    })
}

async fn get(
    service: &StdArc<DurableStreams>,
    key: &SessionKey,
    query: Option<&str>,
    request: &HeaderMap,
) -> Result<Response, StreamError> {
    let query = parse_query(query)?;
    if query.live != Live::No && !query.offset_given {
        return Err(StreamError::BadRequest(
            "live reads need an offset (-1 for the beginning, now for the tail)".into(),
        ));
    }
    let view = service.view(key, false).await?;
    let after = service.start_at(key, &view, query.offset)?;
    match query.live {
        Live::No => catch_up(service, &view, &query, after, request),
        Live::LongPoll => long_poll(service, key, &view, &query, after).await,
        Live::Sse => Ok(sse(service, key, view, &query, after)),
    }
}

/// Marks a read response as cacheable by position; under access control
/// it varies by `Authorization`, so a shared cache never serves one
/// tenant's response to another's credential at the same URL (signed URLs
/// differ by their query already).
fn cacheable(service: &DurableStreams, out: &mut HeaderMap) {
    set(out, "cache-control", CACHEABLE);
    if service.access_controlled() {
        set(out, "vary", "authorization");
    }
}

/// The common headers of a read that returns data (or none).
fn read_headers(
    out: &mut HeaderMap,
    view: &ReadView,
    next: Offset,
    up_to_date: bool,
    closed: bool,
) {
    set(out, "content-type", &view.config.content_type);
    set_offset(out, headers::NEXT_OFFSET, next);
    if up_to_date || closed {
        set(out, headers::UP_TO_DATE, "true");
    }
    if closed {
        set(out, headers::STREAM_CLOSED, "true");
    }
}

fn etag(view: &ReadView, start: ReadAt, next: Offset, closed: bool) -> String {
    let start = view.layout[start.segment].offset_of(start.after);
    format!("\"{start}:{next}{}\"", if closed { ":c" } else { "" })
}

fn catch_up(
    service: &DurableStreams,
    view: &ReadView,
    query: &ReadQuery,
    after: ReadAt,
    request: &HeaderMap,
) -> Result<Response, StreamError> {
    let now = query.offset == OffsetQuery::Now;
    let (mut batch, _) = service.collect(view, after)?;
    if now {
        // No data: the tail, and whether the stream ended there.
        batch.events.clear();
        batch.more = false;
        batch.next = view.layout[after.segment].offset_of(after.after);
    }
    if batch.ended {
        return Err(StreamError::NotFound);
    }
    let next = batch.next;
    let closed = batch.closed || (now && view.closed_at.is_some());
    let mut response = Response::new(Body::from(batch_body(&view.config, &batch.events)));
    let out = response.headers_mut();
    read_headers(out, view, next, !batch.more, closed && !batch.more);
    if now {
        set(out, "cache-control", "no-store");
        return Ok(response);
    }
    let tag = etag(view, after, next, closed);
    let matches = request
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.split(',').any(|candidate| candidate.trim() == tag));
    cacheable(service, out);
    set(out, "etag", &tag);
    if matches {
        let mut not_modified = StatusCode::NOT_MODIFIED.into_response();
        set(not_modified.headers_mut(), "etag", &tag);
        set_offset(not_modified.headers_mut(), headers::NEXT_OFFSET, next);
        return Ok(not_modified);
    }
    Ok(response)
}

async fn long_poll(
    service: &DurableStreams,
    key: &SessionKey,
    view: &ReadView,
    query: &ReadQuery,
    after: ReadAt,
) -> Result<Response, StreamError> {
    let deadline = tokio::time::Instant::now() + service.options.long_poll_timeout;
    let cursor = live_cursor(query.cursor.as_deref());
    loop {
        let (batch, mut rest) = service.collect(view, after)?;
        if batch.ended {
            return Err(StreamError::NotFound);
        }
        let next = batch.next;
        if !batch.events.is_empty() {
            let closed = batch.closed && !batch.more;
            let mut response = Response::new(Body::from(batch_body(&view.config, &batch.events)));
            let out = response.headers_mut();
            read_headers(out, view, next, !batch.more, closed);
            set(out, "etag", etag(view, after, next, closed));
            cacheable(service, out);
            if !closed {
                set(out, headers::STREAM_CURSOR, &cursor);
            }
            return Ok(response);
        }
        if batch.closed
            || !service
                .wait_for_more(key, &mut rest, batch.pending, deadline)
                .await?
        {
            let mut response = StatusCode::NO_CONTENT.into_response();
            let out = response.headers_mut();
            set_offset(out, headers::NEXT_OFFSET, next);
            set(out, headers::UP_TO_DATE, "true");
            set(out, "cache-control", "no-store");
            if batch.closed {
                set(out, headers::STREAM_CLOSED, "true");
            } else {
                set(out, headers::STREAM_CURSOR, &cursor);
            }
            return Ok(response);
        }
    }
}

/// The `Stream-Cursor` of a live response: the current 20 s interval,
/// or, for a client that echoes one at or past it, a later one (1 to 180
/// intervals on), so a cursor never repeats and never goes backwards.
fn live_cursor(client: Option<&str>) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let interval = now.as_secs().saturating_sub(CURSOR_EPOCH_SECS) / CURSOR_INTERVAL_SECS;
    match client.and_then(|text| text.parse::<u64>().ok()) {
        Some(echoed) if echoed >= interval => {
            // Jitter from the clock's nanoseconds: spread, not secret.
            let jitter = 1 + u64::from(now.subsec_nanos()) % 180;
            echoed.saturating_add(jitter).to_string()
        }
        _ => interval.to_string(),
    }
}

/// An SSE response: its body is a stream that collects the next batch
/// when hyper asks for more (so a slow client slows only its own reads;
/// nothing queues), one chunk per batch with its data and control frames
/// together. One task (the connection's) and one write per delivery: an
/// append wakes each reader once, not a reader task and then its response.
fn sse(
    service: &StdArc<DurableStreams>,
    key: &SessionKey,
    view: ReadView,
    query: &ReadQuery,
    after: ReadAt,
) -> Response {
    let base64 = !view.config.is_text();
    let next = view.layout[after.segment].offset_of(after.after);
    let reader = SseReader {
        end: tokio::time::Instant::now() + service.options.sse_lifetime,
        service: StdArc::clone(service),
        key: key.clone(),
        view,
        cursor: query.cursor.clone(),
        next,
        after,
        announced: false,
        waiting: None,
        done: false,
    };
    let frames = futures_util::stream::unfold(reader, |mut reader| async move {
        let chunk = reader.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), reader))
    });
    let mut response = Response::new(Body::from_stream(frames));
    let out = response.headers_mut();
    set(out, "content-type", "text/event-stream");
    set(out, "cache-control", "no-cache");
    if base64 {
        set(out, headers::SSE_DATA_ENCODING, "base64");
    }
    response
}

/// Appends one SSE frame to `out`: `event: NAME`, then the data one
/// `data:` line per line (CR, LF and CRLF all end a line, so no payload
/// can end the frame or forge another), then a blank line.
fn frame_into(out: &mut Vec<u8>, event: &str, data: &str) {
    out.reserve(data.len() + event.len() + 16);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.push(b'\n');
    for line in data.split("\r\n").flat_map(|part| part.split(['\r', '\n'])) {
        out.extend_from_slice(b"data:");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// How often an idle SSE response sends a comment, so proxies keep it.
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// A control event's JSON (field names as the protocol spells them).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Control<'a> {
    stream_next_offset: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_cursor: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream_closed: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    up_to_date: bool,
}

/// The state of one SSE response's body between chunks.
struct SseReader {
    service: StdArc<DurableStreams>,
    key: SessionKey,
    view: ReadView,
    cursor: Option<String>,
    after: ReadAt,
    /// The offset of the last data sent (or the start).
    next: Offset,
    /// When the response ends (the client reconnects).
    end: tokio::time::Instant,
    /// Whether a control event was sent yet (the first goes out at once).
    announced: bool,
    /// After a batch that reached the durable tail: the catch-up to wait
    /// on and the record already seen, if any.
    waiting: Option<(crate::CatchUp<super::StreamRecord>, Option<u64>)>,
    /// The response ended (closed stream, deleted, lifetime, failure).
    done: bool,
}

impl SseReader {
    /// The next chunk of the response, `None` at its end. A failure after
    /// the response started can only end it: the client reconnects from
    /// its last control event's offset.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let chunk = self.step().await.ok().flatten();
        self.done |= chunk.is_none();
        chunk
    }

    async fn step(&mut self) -> Result<Option<Bytes>, StreamError> {
        loop {
            if let Some((mut rest, pending)) = self.waiting.take() {
                let wake = self.end.min(tokio::time::Instant::now() + SSE_KEEP_ALIVE);
                let woke = self
                    .service
                    .wait_for_more(&self.key, &mut rest, pending, wake)
                    .await?;
                // Idle: end at the response's lifetime, else a keep-alive
                // comment (which also finds a client that went away).
                if !woke {
                    if tokio::time::Instant::now() >= self.end {
                        return Ok(None);
                    }
                    return Ok(Some(Bytes::from_static(b":\n\n")));
                }
            }
            let (batch, rest) = self.service.collect(&self.view, self.after)?;
            if batch.ended {
                return Ok(None);
            }
            let mut out = Vec::new();
            if !batch.events.is_empty() {
                self.data_event(&batch.events, &mut out);
                self.after = batch.next_at;
                self.next = batch.next;
            }
            let closed = batch.closed && !batch.more;
            if !batch.events.is_empty() || closed || !self.announced {
                self.announced = true;
                self.control(!batch.more, closed, &mut out)?;
                self.done = closed;
            }
            if !batch.more {
                self.waiting = Some((rest, batch.pending));
            }
            if !out.is_empty() {
                return Ok(Some(Bytes::from(out)));
            }
        }
    }

    fn data_event(
        &self,
        events: &[crate::sync::Arc<crate::Event<super::StreamRecord>>],
        out: &mut Vec<u8>,
    ) {
        let bytes = batch_body(&self.view.config, events);
        if self.view.config.is_text() {
            frame_into(out, "data", &String::from_utf8_lossy(&bytes));
        } else {
            let text = base64::engine::general_purpose::STANDARD.encode(&bytes);
            frame_into(out, "data", &text);
        }
    }

    fn control(
        &mut self,
        up_to_date: bool,
        closed: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), StreamError> {
        let next = self.next.to_string();
        let cursor = (!closed).then(|| live_cursor(self.cursor.as_deref()));
        let control = Control {
            stream_next_offset: &next,
            stream_cursor: cursor.as_deref(),
            stream_closed: closed,
            up_to_date: up_to_date || closed,
        };
        // Strings and booleans only: serialising cannot fail, but if it
        // did the response ends rather than send a broken event.
        let json = serde_json::to_string(&control)
            .map_err(|e| StreamError::Unavailable(format!("an SSE control event: {e}")))?;
        frame_into(out, "control", &json);
        if cursor.is_some() {
            self.cursor = cursor;
        }
        Ok(())
    }
}
