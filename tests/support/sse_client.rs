//! A minimal HTTP/1.1 client for the SSE tests (`tests/sse.rs`,
//! `tests/redis_nodes.rs`): a GET with an optional `Last-Event-ID`, a chunked-body
//! decoder and an SSE frame parser, so a test checks the bytes a browser
//! would get. Every read has a deadline, so a broken server fails a test
//! instead of hanging it.

#![allow(dead_code)] // each test file uses its own subset

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The longest any single read may take before the test fails.
pub const READ_DEADLINE: Duration = Duration::from_secs(10);

/// One SSE frame (the lines up to a blank line).
#[derive(Debug, Default, Clone)]
pub struct Frame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Vec<String>,
    pub retry: Option<String>,
    pub comments: Vec<String>,
}

impl Frame {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data.join("\n")).expect("frame data is JSON")
    }
}

/// What a GET returned: an event stream, or any other response's status
/// and body.
pub enum Reply {
    Stream(SseReader),
    Body { status: u16, body: String },
}

/// Reads SSE frames out of a chunked HTTP/1.1 response body.
pub struct SseReader {
    reader: BufReader<TcpStream>,
    decoded: Vec<u8>,
    body_ended: bool,
}

pub async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(READ_DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// `GET path` with an optional `Last-Event-ID`, like `EventSource` does.
pub async fn get(address: SocketAddr, path: &str, last_event_id: Option<&str>) -> Reply {
    let mut stream = within("connect", TcpStream::connect(address))
        .await
        .expect("connect");
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n"
    );
    if let Some(id) = last_event_id {
        request.push_str(&format!("Last-Event-ID: {id}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    within("status line", reader.read_line(&mut status_line))
        .await
        .expect("read status");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut chunked = false;
    let mut content_length = None;
    let mut content_type = String::new();
    loop {
        let mut line = String::new();
        within("headers", reader.read_line(&mut line))
            .await
            .expect("read header");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').expect("header line");
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "content-length" => content_length = value.parse::<usize>().ok(),
            "content-type" => content_type = value.to_string(),
            _ => {}
        }
    }
    if status == 200 && content_type.starts_with("text/event-stream") {
        assert!(chunked, "an event stream is sent chunked over HTTP/1.1");
        return Reply::Stream(SseReader {
            reader,
            decoded: Vec::new(),
            body_ended: false,
        });
    }
    let length = content_length.expect("a response that is not a stream has a content length");
    let mut body = vec![0; length];
    within("body", reader.read_exact(&mut body))
        .await
        .expect("read body");
    Reply::Body {
        status,
        body: String::from_utf8(body).expect("utf-8 body"),
    }
}

/// An event stream, or a panic with what came instead.
pub async fn open(address: SocketAddr, path: &str, last_event_id: Option<&str>) -> SseReader {
    match get(address, path, last_event_id).await {
        Reply::Stream(reader) => reader,
        Reply::Body { status, body } => panic!("expected a stream, got {status}: {body}"),
    }
}

/// A response that is not an event stream (a refusal), or a panic.
pub async fn refused(
    address: SocketAddr,
    path: &str,
    last_event_id: Option<&str>,
) -> (u16, String) {
    match get(address, path, last_event_id).await {
        Reply::Body { status, body } => (status, body),
        Reply::Stream(_) => panic!("expected {path} to be refused, got a stream"),
    }
}

/// A 200 response's body, or a panic with what came instead.
pub async fn text(address: SocketAddr, path: &str) -> String {
    match get(address, path, None).await {
        Reply::Body { status: 200, body } => body,
        Reply::Body { status, body } => panic!("GET {path}: {status}: {body}"),
        Reply::Stream(_) => panic!("GET {path}: expected a body, got a stream"),
    }
}

impl SseReader {
    /// The next line of the body without its `\n`; `None` once the body ended.
    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.decoded.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.decoded.drain(..=end).collect();
                return Some(String::from_utf8(line[..end].to_vec()).expect("utf-8 line"));
            }
            if self.body_ended {
                return None;
            }
            let mut size_line = String::new();
            let read = within("chunk size", self.reader.read_line(&mut size_line))
                .await
                .expect("read chunk size");
            let size = usize::from_str_radix(size_line.trim(), 16).unwrap_or(0);
            if read == 0 || size == 0 {
                self.body_ended = true;
                continue;
            }
            let mut chunk = vec![0; size + 2];
            within("chunk", self.reader.read_exact(&mut chunk))
                .await
                .expect("read chunk");
            assert_eq!(&chunk[size..], b"\r\n", "chunk ends with CRLF");
            self.decoded.extend_from_slice(&chunk[..size]);
        }
    }

    /// The next frame; `None` once the server ended the response.
    pub async fn frame(&mut self) -> Option<Frame> {
        let mut frame = Frame::default();
        let mut any = false;
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                if any {
                    return Some(frame);
                }
                continue;
            }
            any = true;
            if let Some(comment) = line.strip_prefix(':') {
                frame.comments.push(comment.trim_start().to_string());
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line.as_str(), ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_string();
            match field {
                "id" => frame.id = Some(value),
                "event" => frame.event = Some(value),
                "data" => frame.data.push(value),
                "retry" => frame.retry = Some(value),
                other => panic!("unexpected SSE field {other:?}"),
            }
        }
    }

    /// The next frame that is an event (skipping `retry:` hints and
    /// comments); `None` once the response ended.
    pub async fn event(&mut self) -> Option<Frame> {
        for _ in 0..1000 {
            let frame = self.frame().await?;
            if frame.event.is_some() {
                return Some(frame);
            }
            assert!(
                frame.id.is_none(),
                "a frame that is not an event must not move the client's last event id: {frame:?}"
            );
        }
        panic!("no event in 1000 frames");
    }
}
