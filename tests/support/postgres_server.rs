//! A real PostgreSQL server for tests: Debian's binaries
//! (`/usr/lib/postgresql/<version>/bin`, the newest installed), a data
//! directory in a temporary directory of its own, listening on a free port
//! of 127.0.0.1 only (and a Unix socket in that directory), `fsync` on,
//! trust authentication for the `postgres` role. Stopped (SIGINT, then
//! SIGKILL) and its directory removed on drop, also when the test panics.
//!
//! Postgres refuses to run as root: under root (CI and this machine) every
//! server binary runs through `setpriv` as the `postgres` user (created by
//! Debian's package), or `nobody` where there is none, and the temporary
//! directory is handed to that user. `setpriv` execs, so the child process
//! *is* the postmaster and signals reach it by its pid.
//!
//! `initdb` takes about a second, so it runs once: its result is kept as a
//! template in the temporary directory (`livereplay-pg-template-…`, one per
//! server version and user, reused by later runs) and each server starts
//! from a copy of it.
//!
//! If the binaries are missing, [`PostgresServer::start`] panics when `CI`
//! is `true` (a missing server is a failure in CI: `.ci/run` installs the
//! `postgresql` package) and otherwise prints one loud `SKIPPED` line and
//! returns `None`, so the test can return early.
//!
//! Fault helpers: [`PostgresServer::kill9`], [`PostgresServer::freeze`] /
//! [`PostgresServer::thaw`] (SIGSTOP / SIGCONT of the postmaster and every
//! backend), [`PostgresServer::restart`] (same port, same data directory:
//! crash recovery replays the WAL). Signals go through the `kill` command,
//! so no libc binding is needed.

#![allow(dead_code)] // each test file uses its own subset

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a start or restart may take before the test fails (a restart
/// after SIGKILL replays the WAL and waits for orphaned backends to exit).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a fast shutdown (SIGINT) gets before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bump when the template's settings change, so old templates are not used.
const TEMPLATE_FORMAT: u32 = 1;

/// Where the server binaries are, and who runs them.
#[derive(Clone)]
struct Install {
    bin: PathBuf,
    version: String,
    /// `(uid, gid, name)` to run as, when this process is root.
    run_as: Option<(u32, u32, String)>,
}

/// A running (or deliberately killed) PostgreSQL server owned by one test.
pub struct PostgresServer {
    install: Install,
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl PostgresServer {
    /// Starts a server, or returns `None` (after saying so loudly) when the
    /// binaries are not installed and this is not CI.
    pub fn start() -> Option<Self> {
        let Some(install) = find_install() else {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!(
                    "no /usr/lib/postgresql/*/bin/initdb and CI=true: the Postgres tests and \
                     bench must run in CI (.ci/run installs postgresql with apt-get)"
                );
            }
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                // Straight to stderr: the harness captures passing tests'
                // output, and a skip must be seen.
                let _ = writeln!(
                    std::io::stderr(),
                    "\n==================================================================\n\
                     SKIPPED: no /usr/lib/postgresql/*/bin/initdb; the Postgres tests/bench did \
                     not run.\nInstall it (apt-get install postgresql) to run them.\n\
                     =================================================================="
                );
            });
            return None;
        };
        let template = template(&install);
        let dir = unique_temp_dir("livereplay-pg");
        copy_dir(&template, &dir.join("data"));
        hand_over(&install, &dir);
        let mut last_error = String::new();
        // The port is free when asked for, but another process may take it
        // before the server binds it: then the server exits, and a new
        // port is tried.
        for _ in 0..10 {
            let port = free_port();
            match spawn(&install, port, &dir) {
                Ok(child) => {
                    return Some(Self {
                        install,
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
        panic!("could not start postgres: {last_error}\n{log}");
    }

    /// A libpq connection string for the `postgres` database and role.
    pub fn params(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=2",
            self.port
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The postmaster's process id, if it is running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A plain client connection, to look at or break what the log does.
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.params(), postgres::NoTls).expect("connect to postgres")
    }

    /// Kills the postmaster with SIGKILL and reaps it: no shutdown, no
    /// checkpoint, as a crash. Its backends notice and exit by themselves.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "-KILL");
            let _ = child.wait();
        }
    }

    /// Freezes the server with SIGSTOP (the postmaster and every backend):
    /// connections stay open, nothing is answered until
    /// [`PostgresServer::thaw`].
    pub fn freeze(&self) {
        for pid in self.server_pids() {
            signal(pid, "-STOP");
        }
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&self) {
        for pid in self.server_pids() {
            signal(pid, "-CONT");
        }
    }

    /// The postmaster and its children (the backends), from `/proc`.
    fn server_pids(&self) -> Vec<u32> {
        let Some(root) = self.pid() else {
            return Vec::new();
        };
        let mut pids = vec![root];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
                // `pid (comm) state ppid …`: the fields after the last ')'.
                let parent = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|ppid| ppid.parse::<u32>().ok());
                if parent == Some(root) {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// Starts the server again on the same port and data directory (killing
    /// it first if it runs) and waits until it accepts connections, that is
    /// until crash recovery has replayed the WAL.
    pub fn restart(&mut self) {
        self.kill9();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            // Orphaned backends of a killed postmaster may still hold its
            // shared memory for a moment: retry until the deadline.
            match spawn(&self.install, self.port, &self.dir) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(e) if Instant::now() >= deadline => panic!(
                    "could not restart postgres on port {}: {e}\n{}",
                    self.port,
                    read_log(&self.dir)
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Stops the server: SIGCONT (in case it is frozen), SIGINT (fast
    /// shutdown), and SIGKILL if it has not exited after a few seconds.
    pub fn stop(&mut self) {
        self.thaw();
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(child.id(), "-INT");
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

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb`, and the
/// user to run it as.
fn find_install() -> Option<Install> {
    let mut found: Vec<(u32, PathBuf, String)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.to_owned();
            let bin = entry.path().join("bin");
            let major = version.split('.').next()?.parse().ok()?;
            (bin.join("initdb").is_file() && bin.join("postgres").is_file())
                .then_some((major, bin, version))
        })
        .collect();
    found.sort_by_key(|(major, _, _)| *major);
    let (_, bin, version) = found.pop()?;
    let run_as = if is_root() {
        Some(
            ["postgres", "nobody"]
                .iter()
                .find_map(|name| user_ids(name).map(|(uid, gid)| (uid, gid, (*name).to_owned())))
                .expect("neither a postgres nor a nobody user to run postgres as"),
        )
    } else {
        None
    };
    Some(Install {
        bin,
        version,
        run_as,
    })
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// `(uid, gid)` of a user, from `id`.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").arg(flag).arg(name).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

/// A command running one of the server binaries, as the unprivileged user
/// when this process is root.
fn server_command(install: &Install, binary: &str) -> Command {
    let path = install.bin.join(binary);
    match &install.run_as {
        Some((uid, gid, _)) => {
            let mut command = Command::new("setpriv");
            command
                .arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg("--")
                .arg(path);
            command
        }
        None => Command::new(path),
    }
}

/// Gives `dir` (recursively) to the user the server runs as.
fn hand_over(install: &Install, dir: &Path) {
    if let Some((uid, gid, _)) = &install.run_as {
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(dir)
            .status()
            .expect("run chown");
        assert!(status.success(), "chown {} failed", dir.display());
    }
}

/// The initialised data directory every server copies, made once.
fn template(install: &Install) -> PathBuf {
    static TEMPLATE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let user = install.run_as.as_ref().map_or("self", |(_, _, name)| name);
            let path = std::env::temp_dir().join(format!(
                "livereplay-pg-template-{}-{user}-v{TEMPLATE_FORMAT}",
                install.version
            ));
            if path.join("PG_VERSION").is_file() {
                return path;
            }
            let staging = unique_temp_dir("livereplay-pg-initdb");
            hand_over(install, &staging);
            let data = staging.join("data");
            let output = server_command(install, "initdb")
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-locale",
                ])
                // The template's own files need not survive a power cut:
                // the servers' fsync setting is what the tests exercise.
                .arg("--no-sync")
                .stdin(Stdio::null())
                .output()
                .expect("run initdb");
            assert!(
                output.status.success(),
                "initdb failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            // Another test process may have made it meanwhile: either
            // template is good, keep the first.
            if std::fs::rename(&data, &path).is_err() && !path.join("PG_VERSION").is_file() {
                panic!("could not move the template to {}", path.display());
            }
            let _ = std::fs::remove_dir_all(&staging);
            path
        })
        .clone()
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// Starts the postmaster and waits until it accepts a connection; kills it
/// on failure.
fn spawn(install: &Install, port: u16, dir: &Path) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("postgres.log"))
        .map_err(|e| format!("open the server log: {e}"))?;
    let mut child = server_command(install, "postgres")
        .arg("-D")
        .arg(dir.join("data"))
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(dir)
        .args(["-c", "listen_addresses=127.0.0.1"])
        .args(["-c", "fsync=on"])
        .args(["-c", "synchronous_commit=on"])
        .args(["-c", "max_connections=60"])
        .args(["-c", "shared_buffers=64MB"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("spawn postgres: {e}"))?;
    let params =
        format!("host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=1");
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("postgres exited at start ({status})"));
        }
        if let Ok(mut client) = postgres::Client::connect(&params, postgres::NoTls) {
            if client.simple_query("SELECT 1").is_ok() {
                return Ok(child);
            }
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("not ready on port {port} within {READY_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port nothing listens on right now (the OS's pick for port 0).
fn free_port() -> u16 {
    std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
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

fn unique_temp_dir(what: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!(
        "{what}-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    dir
}

fn read_log(dir: &Path) -> String {
    match std::fs::read_to_string(dir.join("postgres.log")) {
        Ok(log) => {
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
            format!("last lines of postgres.log:\n{tail}")
        }
        Err(_) => "(no postgres.log)".into(),
    }
}
