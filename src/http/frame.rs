//! The SSE frames: one per event (its `id:` is its cursor), the one `gap`
//! frame that ends a stream, and the opening frame (a `retry:` hint).
//!
//! Only event frames and the gap frame carry an `id:`; the opening frame
//! and keep-alives are comments, so they never move a client's last event
//! id.

use std::fmt::Write as _;
use std::time::Duration;

use axum::response::sse::Event as SseEvent;

use crate::closure::Closure;
use crate::cursor::Cursor;
use crate::error::{Gap, GapReason};
use crate::event::Event;

/// The `event:` name of the frame that reports a gap. Reserved: an event a
/// host renders with this name is sent without a name instead.
pub const GAP_EVENT: &str = "gap";

/// The `event:` name of the frame that reports the session's closure.
/// Reserved like [`GAP_EVENT`].
pub const CLOSED_EVENT: &str = "closed";

/// How a host renders one of its events: an optional SSE `event:` name and
/// the `data:`. The `id:` is not the host's to choose: it is always the
/// event's cursor.
///
/// A `String` or `&str` converts into an unnamed frame (browsers dispatch it
/// as a `message` event).
///
/// ```
/// use livereplay::http::Frame;
///
/// let frame = Frame::named("token", r#"{"t":"Hel"}"#);
/// assert_eq!(frame.name(), Some("token"));
/// assert_eq!(Frame::from("hi").name(), None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    name: Option<String>,
    data: String,
}

impl Frame {
    /// An unnamed frame with `data` (line breaks in it become several
    /// `data:` lines, which a browser joins back with `\n`). Empty data
    /// still moves the client's last id, but browsers dispatch no event for
    /// it.
    pub fn data(data: impl Into<String>) -> Self {
        Self {
            name: None,
            data: data.into(),
        }
    }

    /// A frame with an `event:` name. Carriage returns, line feeds and NULs
    /// are removed from the name (they cannot appear in an SSE field); an
    /// empty name, [`GAP_EVENT`] or [`CLOSED_EVENT`], is sent as no name.
    pub fn named(name: impl Into<String>, data: impl Into<String>) -> Self {
        let mut name = name.into();
        name.retain(|c| !matches!(c, '\r' | '\n' | '\0'));
        Self {
            name: (!name.is_empty() && name != GAP_EVENT && name != CLOSED_EVENT).then_some(name),
            data: data.into(),
        }
    }

    /// The `event:` name, if any.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The `data:`.
    pub fn data_str(&self) -> &str {
        &self.data
    }
}

impl From<String> for Frame {
    fn from(data: String) -> Self {
        Frame::data(data)
    }
}

impl From<&str> for Frame {
    fn from(data: &str) -> Self {
        Frame::data(data)
    }
}

/// An event's SSE frame: `id:` its cursor, then the host's name and data.
pub(crate) fn event_frame<T>(event: &Event<T>, frame: Frame) -> SseEvent {
    let sse = SseEvent::default().id(event.cursor().to_string());
    let sse = match frame.name {
        Some(name) => sse.event(name),
        None => sse,
    };
    sse.data(frame.data)
}

/// The one frame a gap ends a stream with: `event: gap`, `id:` the gap's
/// latest cursor, data [`gap_data`].
pub(crate) fn gap_frame(gap: &Gap, snapshot: Option<&str>) -> SseEvent {
    SseEvent::default()
        .id(gap.latest.to_string())
        .event(GAP_EVENT)
        .data(gap_data(gap, snapshot))
}

/// The one frame a closure ends a stream with: `event: closed`, `id:` the
/// cursor at the closure's last position (the last event sent, or the
/// client's own cursor), data [`closed_data`].
pub(crate) fn closed_frame(closure: &Closure, latest: &Cursor) -> SseEvent {
    SseEvent::default()
        .id(latest.to_string())
        .event(CLOSED_EVENT)
        .data(closed_data(closure, latest))
}

/// The closed frame's data: a JSON object
/// `{"reason": "done"|"error"|"cancelled"|"interrupted", "last": n,
/// "latest": "<cursor>"}`.
///
/// ```
/// use livereplay::{CloseReason, Closure, Cursor, Revision, SessionKey};
/// use livereplay::http::closed_data;
///
/// let key = SessionKey::new("acme", "turn-7")?;
/// let latest = Cursor::new(key, None, Revision(1), 9);
/// let closure = Closure { reason: CloseReason::Done, last: 9 };
/// assert_eq!(
///     closed_data(&closure, &latest),
///     r#"{"reason":"done","last":9,"latest":"lr1.-.1.9.acme.turn-7"}"#,
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn closed_data(closure: &Closure, latest: &Cursor) -> String {
    let mut json = String::with_capacity(96);
    let _ = write!(
        json,
        "{{\"reason\":\"{}\",\"last\":{},\"latest\":",
        closure.reason, closure.last
    );
    push_json_string(&mut json, &latest.to_string());
    json.push('}');
    json
}

/// The opening frame: a comment saying where the stream resumes, and the
/// `retry:` hint if there is one. No `id:`.
pub(crate) fn opening_frame(after: u64, retry: Option<Duration>) -> SseEvent {
    let frame = SseEvent::default().comment(format!("livereplay: resuming after position {after}"));
    match retry {
        Some(retry) => frame.retry(retry),
        None => frame,
    }
}

/// A gap reason's wire name: `trimmed`, `unavailable`, `reset` or `lost`.
pub fn gap_reason(reason: GapReason) -> &'static str {
    match reason {
        GapReason::Trimmed => "trimmed",
        GapReason::Unavailable => "unavailable",
        GapReason::Reset => "reset",
        GapReason::Lost => "lost",
    }
}

/// The gap frame's data: a JSON object
/// `{"reason": "...", "missed": n|null, "latest": "<cursor>"}`, with
/// `"snapshot": <the host's JSON>` appended when the host gave one (it is
/// inserted verbatim: it must be a JSON value).
///
/// ```
/// use livereplay::{Cursor, Gap, GapReason, SessionKey};
/// use livereplay::http::gap_data;
///
/// let key = SessionKey::new("acme", "chat-1")?;
/// let latest = Cursor::new(key.clone(), None, livereplay::Revision(1), 9);
/// let gap = Gap { reason: GapReason::Trimmed, requested: Cursor::start(key), latest, missed: Some(4) };
/// assert_eq!(
///     gap_data(&gap, Some(r#"{"text":"…"}"#)),
///     r#"{"reason":"trimmed","missed":4,"latest":"lr1.-.1.9.acme.chat-1","snapshot":{"text":"…"}}"#,
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn gap_data(gap: &Gap, snapshot: Option<&str>) -> String {
    let mut json = String::with_capacity(96);
    json.push_str("{\"reason\":\"");
    json.push_str(gap_reason(gap.reason));
    json.push_str("\",\"missed\":");
    match gap.missed {
        Some(missed) => {
            let _ = write!(json, "{missed}");
        }
        None => json.push_str("null"),
    }
    json.push_str(",\"latest\":");
    push_json_string(&mut json, &gap.latest.to_string());
    if let Some(snapshot) = snapshot {
        json.push_str(",\"snapshot\":");
        json.push_str(snapshot);
    }
    json.push('}');
    json
}

/// Appends `text` as a JSON string. (Cursors are printable ASCII without
/// quotes or backslashes; this escapes anyway.)
fn push_json_string(json: &mut String, text: &str) {
    json.push('"');
    for c in text.chars() {
        match c {
            '"' => json.push_str("\\\""),
            '\\' => json.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(json, "\\u{:04x}", u32::from(c));
            }
            c => json.push(c),
        }
    }
    json.push('"');
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{Cursor, ReplayStore, Revision, SessionKey};
    use axum::response::sse::Sse;
    use axum::response::IntoResponse;

    /// The bytes axum writes for `frames`, as a browser receives them.
    pub(crate) async fn wire(frames: Vec<SseEvent>) -> String {
        let stream =
            futures_util::stream::iter(frames.into_iter().map(Ok::<_, std::convert::Infallible>));
        let body = Sse::new(stream).into_response().into_body();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn gap(reason: GapReason, missed: Option<u64>) -> Gap {
        let key = SessionKey::new("t", "s").unwrap();
        Gap {
            reason,
            requested: Cursor::start(key.clone()),
            latest: Cursor::new(key, None, Revision(2), 5),
            missed,
        }
    }

    #[tokio::test]
    async fn an_event_frame_is_its_cursor_name_and_data() {
        let store = ReplayStore::<String>::default();
        let key = SessionKey::new("t", "s").unwrap();
        let event = store.append(&key, Revision(1), "x".into()).unwrap();
        let id = event.cursor().to_string();
        let frames = vec![
            event_frame(&event, Frame::named("token", "{\"t\":\"a\"}")),
            event_frame(&event, Frame::data("two\nlines")),
            // A hostile name cannot add a field or pose as a gap.
            event_frame(&event, Frame::named("to\r\nid: evil", "d")),
            event_frame(&event, Frame::named("gap", "d")),
        ];
        assert_eq!(
            wire(frames).await,
            format!(
                "id: {id}\nevent: token\ndata: {{\"t\":\"a\"}}\n\n\
                 id: {id}\ndata: two\ndata: lines\n\n\
                 id: {id}\nevent: toid: evil\ndata: d\n\n\
                 id: {id}\ndata: d\n\n"
            )
        );
    }

    #[tokio::test]
    async fn the_gap_frame_carries_the_latest_cursor_and_a_small_json() {
        let trimmed = gap(GapReason::Trimmed, Some(3));
        let latest = trimmed.latest.to_string();
        assert_eq!(latest, "lr1.-.2.5.t.s");
        assert_eq!(
            wire(vec![gap_frame(&trimmed, None)]).await,
            format!("id: {latest}\nevent: gap\ndata: {{\"reason\":\"trimmed\",\"missed\":3,\"latest\":\"{latest}\"}}\n\n")
        );
        for (reason, name) in [
            (GapReason::Trimmed, "trimmed"),
            (GapReason::Unavailable, "unavailable"),
            (GapReason::Reset, "reset"),
            (GapReason::Lost, "lost"),
        ] {
            assert_eq!(gap_reason(reason), name);
            let data = gap_data(&gap(reason, None), Some("[1,2]"));
            assert_eq!(
                data,
                format!("{{\"reason\":\"{name}\",\"missed\":null,\"latest\":\"{latest}\",\"snapshot\":[1,2]}}")
            );
        }
        let mut escaped = String::new();
        push_json_string(&mut escaped, "a\"b\\c\n");
        assert_eq!(escaped, r#""a\"b\\c\u000a""#);
    }

    #[tokio::test]
    async fn the_opening_frame_has_no_id() {
        assert_eq!(
            wire(vec![opening_frame(7, Some(Duration::from_millis(250)))]).await,
            ": livereplay: resuming after position 7\nretry: 250\n\n"
        );
        assert_eq!(
            wire(vec![opening_frame(0, None)]).await,
            ": livereplay: resuming after position 0\n\n"
        );
    }
}
