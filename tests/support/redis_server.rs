//! A real `redis-server` for tests: started on 127.0.0.1 on a free port
//! with its own temporary directory (append-only file on, no RDB snapshots),
//! stopped (SIGTERM, then SIGKILL) and its directory removed on drop, also
//! when the test panics.
//!
//! If `redis-server` is not on `PATH`, [`RedisServer::start`] panics when
//! the environment variable `CI` is `true` (a missing server is a failure in
//! CI) and otherwise prints a loud `SKIPPED` line to stderr and returns
//! `None`, so the test can return early.
//!
//! Fault helpers for tests: [`RedisServer::kill9`], [`RedisServer::freeze`]
//! / [`RedisServer::thaw`] (SIGSTOP / SIGCONT) and [`RedisServer::restart`]
//! (same port, same directory, so the append-only file is replayed). Signals
//! go through the `kill` command, so no libc binding is needed.

#![allow(dead_code)] // each test file uses its own subset

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a start or restart may take before the test fails.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a SIGTERM gets before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running (or deliberately killed) `redis-server` owned by one test.
pub struct RedisServer {
    binary: PathBuf,
    /// Configuration beyond the defaults below, kept for restarts.
    extra_args: &'static [&'static str],
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts a server, or returns `None` (after saying so loudly) when
    /// `redis-server` is not installed and this is not CI.
    pub fn start() -> Option<Self> {
        Self::start_with(&[])
    }

    /// [`RedisServer::start`] with more configuration: `extra_args` go to
    /// `redis-server` after the defaults (loopback, a free port, its own
    /// directory, append-only file on, no RDB snapshots), at every start.
    pub fn start_with(extra_args: &'static [&'static str]) -> Option<Self> {
        let Some(binary) = find_on_path("redis-server") else {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!(
                    "redis-server is not on PATH and CI=true: the Redis tests and benches \
                     must run in CI (.ci/run installs it with apt-get)"
                );
            }
            // Straight to the process's stderr: the test harness captures
            // `eprintln!` of passing tests, and a skip must be seen. Once
            // per test binary, not once per test.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                let _ = writeln!(
                    std::io::stderr(),
                    "\n==================================================================\n\
                 SKIPPED: redis-server not found on PATH; the Redis tests/bench did not run.\n\
                 Install it (apt-get install redis-server) to run it.\n\
                 ==================================================================\n"
                );
            });
            return None;
        };
        let dir = unique_temp_dir();
        let mut last_error = String::new();
        // The port is free when asked for, but another process may take it
        // before the server binds it: then the server exits, and a new port
        // is tried.
        for _ in 0..10 {
            let port = free_port();
            match spawn(&binary, port, &dir, extra_args) {
                Ok(child) => {
                    return Some(Self {
                        binary,
                        extra_args,
                        child: Some(child),
                        port,
                        dir,
                    })
                }
                Err(e) => last_error = e,
            }
        }
        let log = read_log(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        panic!("could not start redis-server: {last_error}\n{log}");
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its working directory (the append-only file is in it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's process id, if it is running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server with SIGKILL and reaps it: no shutdown, no final
    /// write, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "-KILL");
            let _ = child.wait();
        }
    }

    /// Freezes the server with SIGSTOP: connections stay open, nothing is
    /// answered until [`RedisServer::thaw`].
    pub fn freeze(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "-STOP");
        }
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "-CONT");
        }
    }

    /// Starts the server again on the same port with the same directory
    /// (killing it first if it runs), and waits until it answers PING, that
    /// is until it has replayed its append-only file.
    pub fn restart(&mut self) {
        self.kill9();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            // The old socket may linger for a moment, or the port may have
            // been taken meanwhile: retry until the deadline.
            match spawn(&self.binary, self.port, &self.dir, self.extra_args) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(e) if Instant::now() >= deadline => {
                    panic!(
                        "could not restart redis-server on port {}: {e}\n{}",
                        self.port,
                        read_log(&self.dir)
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Stops the server: SIGCONT (in case it is frozen), SIGTERM, and
    /// SIGKILL if it has not exited after a few seconds.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(child.id(), "-CONT");
        signal(child.id(), "-TERM");
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `redis-server` and waits for PONG; kills it on failure.
fn spawn(binary: &Path, port: u16, dir: &Path, extra_args: &[&str]) -> Result<Child, String> {
    let mut child = Command::new(binary)
        .arg("--port")
        .arg(port.to_string())
        .arg("--bind")
        .arg("127.0.0.1")
        .arg("--dir")
        .arg(dir)
        .arg("--appendonly")
        .arg("yes")
        .arg("--save")
        .arg("")
        .arg("--daemonize")
        .arg("no")
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", binary.display()))?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("redis-server exited at start ({status})"));
        }
        if ping(port) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("no PONG on port {port} within {READY_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether a server on `port` answers PING with PONG (not `-LOADING`).
pub fn ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = stream.set_write_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 64];
    match stream.read(&mut reply) {
        Ok(n) => reply[..n].starts_with(b"+PONG"),
        Err(_) => false,
    }
}

/// A port nothing listens on right now (the OS's pick for port 0).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind 127.0.0.1:0 for a free port")
}

fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn unique_temp_dir() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!(
        "livereplay-redis-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create the server's temporary directory");
    dir
}

fn read_log(dir: &Path) -> String {
    match std::fs::read_to_string(dir.join("redis.log")) {
        Ok(log) => {
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
            format!("last lines of redis.log:\n{tail}")
        }
        Err(_) => "(no redis.log)".into(),
    }
}
