//! `livereplay serve` as a child process for the tests that drive the
//! binary (`streams`, `streams_auth`, `streams_nodes`), and the one HTTP
//! client they talk to it with (`ureq`, blocking, every call bounded).
//!
//! [`Served::start`] runs `livereplay serve --port 0` with the test's
//! flags, reads its two start lines on a thread (so a silent server fails
//! the test instead of hanging it) and keeps the address from the first.
//! The process is killed (SIGKILL, by pid) by [`Served::kill`] or when the
//! value is dropped, also when the test panics. [`Reply`] is also what the
//! tests build from in-process router responses, so one set of assertions
//! serves both.

#![allow(dead_code)] // each test file uses its own subset

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};

/// Bounds every request: a hung server fails the test instead of stalling
/// it (a long-poll in these tests lasts well under this).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a server may take to print its start lines.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A temporary directory (a test's data directory), removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = std::env::temp_dir().join(format!(
            "livereplay-ds-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One answer: status, headers and the whole body.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    pub fn next_offset(&self) -> String {
        self.header("stream-next-offset")
            .expect("a Stream-Next-Offset header")
            .to_string()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A JSON read's messages (an empty body is none).
    pub fn messages(&self) -> Vec<serde_json::Value> {
        if self.body.is_empty() {
            return Vec::new();
        }
        match serde_json::from_slice(&self.body).expect("a JSON body") {
            serde_json::Value::Array(items) => items,
            other => panic!("a JSON read is an array, got {other}"),
        }
    }
}

/// A running `livereplay serve`.
pub struct Served {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub address: String,
    /// The second start line: what is served, from where, with which
    /// bounds and access control.
    pub banner: String,
    client: Client,
}

/// Requests to one server, from any thread (cheap to clone).
#[derive(Clone)]
pub struct Client {
    address: String,
    agent: ureq::Agent,
}

impl Served {
    /// `livereplay serve --port 0 <args>`, with `LIVEREPLAY_TOKENS` unset,
    /// or set to `tokens`.
    pub fn start(args: &[&str], tokens: Option<&str>) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_livereplay"));
        command
            .args(["serve", "--port", "0"])
            .args(args)
            .env_remove("LIVEREPLAY_TOKENS")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(tokens) = tokens {
            command.env("LIVEREPLAY_TOKENS", tokens);
        }
        let mut child = command.spawn().expect("start livereplay serve");
        let stdout = child.stdout.take().expect("its stdout");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(stdout);
            let (mut first, mut second) = (String::new(), String::new());
            let _ = reader.read_line(&mut first);
            let _ = reader.read_line(&mut second);
            let _ = sender.send((first, second));
        });
        let (first, banner) = match receiver.recv_timeout(START_TIMEOUT) {
            Ok(lines) => lines,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("livereplay serve printed no start lines in {START_TIMEOUT:?}");
            }
        };
        let Some(address) = first.trim().strip_prefix("listening on http://") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("unexpected first line {first:?}");
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .build()
            .into();
        Self {
            address: address.to_string(),
            child,
            banner,
            client: Client {
                address: address.to_string(),
                agent,
            },
        }
    }

    /// A client for other threads.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// [`Client::send`] to this server.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl AsRef<[u8]>,
    ) -> Reply {
        self.client.send(method, path, headers, body)
    }

    /// SIGKILL, by pid: nothing runs after it (no shutdown, no flush).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process's pid (for SIGSTOP and SIGCONT).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Client {
    /// One request to `path` (with its query), bounded by
    /// [`REQUEST_TIMEOUT`]; any status is an answer.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl AsRef<[u8]>,
    ) -> Reply {
        self.try_send(method, path, headers, body)
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// [`Client::send`], with a failed exchange (the server went away, the
    /// timeout passed) as an error instead of a panic.
    pub fn try_send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl AsRef<[u8]>,
    ) -> Result<Reply, String> {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.address));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(body.as_ref().to_vec())
            .map_err(|error| format!("{method} {path}: a malformed request: {error}"))?;
        let mut response = self
            .agent
            .run(request)
            .map_err(|error| format!("{method} {path}: {error}"))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .body_mut()
            .with_config()
            .limit(1 << 26)
            .read_to_vec()
            .map_err(|error| format!("{method} {path}: reading the body: {error}"))?;
        Ok(Reply {
            status,
            headers,
            body,
        })
    }
}
