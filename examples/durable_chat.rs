//! A chat reply that survives its runtime being killed.
//!
//! The example runs itself twice over: as the **runtime** (a child process,
//! `--child <dir>`) that streams a chat reply token by token into a store
//! backed by a [`RedbLog`], and as the **host** (the parent) that reads the
//! runtime's output as a client would — each token with its cursor — and
//! kills the runtime with SIGKILL in the middle of the reply.
//!
//! The host then restarts the runtime, which finds in the log how far the
//! reply got, starts a new life there and streams the rest. Finally the host
//! opens a store over the same log and resumes from the last cursor it saw,
//! through `catch_up`: if that cursor was durable it continues exactly; if
//! the crash lost it, the store says so with a `Lost` gap and the exact
//! count, and the host drops those tokens (they were never stored; the
//! restarted runtime streamed them again) and resumes from before them.
//!
//! It exits non-zero unless the host ends with exactly the full reply,
//! nothing lost, nothing repeated.
//!
//! ```text
//! cargo run --features redb --example durable_chat
//! cargo run --features redb --example durable_chat -- --kill-after 30
//! ```

#[cfg(not(feature = "redb"))]
fn main() -> std::process::ExitCode {
    eprintln!(
        "durable_chat needs the redb feature: cargo run --features redb --example durable_chat"
    );
    std::process::ExitCode::FAILURE
}

#[cfg(feature = "redb")]
fn main() -> std::process::ExitCode {
    demo::main()
}

/// The demo; compiled only with the `redb` feature (Cargo.toml also says
/// so with `required-features`).
#[cfg(feature = "redb")]
mod demo {
    use std::io::{BufRead, BufReader, Write};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, ExitCode, Stdio};
    use std::sync::Arc;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use livereplay::durable::RedbLog;
    use livereplay::{
        Config, Cursor, DurableOptions, Error, GapReason, ReplayStore, Revision, SessionKey,
        TryNextError, Utf8,
    };

    const REPLY: &str = "Sure. To resume a stream after a crash, keep a cursor for every \
        token you show, write the tokens behind the turn loop into a durable log, and when \
        the runtime comes back, ask the store for everything after your cursor: it answers \
        from the log, then from memory, then live, and if the crash took tokens you had \
        already seen it tells you exactly how many.";

    /// The host kills the runtime once it has seen this many tokens (by
    /// default; `--kill-after N` changes it).
    const KILL_AFTER: usize = 17;
    /// The runtime's pace.
    const TOKEN_INTERVAL: Duration = Duration::from_millis(12);
    /// The runtime waits until its tokens are durable every this many tokens
    /// (the host learns which cursors are durable); the rest is write-behind.
    const DURABLE_EVERY: usize = 6;
    /// A small ring, so that catching up reads the log.
    const CAPACITY: usize = 8;

    fn tokens() -> Vec<&'static str> {
        REPLY.split_inclusive(' ').collect()
    }

    fn key() -> SessionKey {
        SessionKey::new("acme", "chat-1").expect("a valid key")
    }

    fn log_path(dir: &Path) -> PathBuf {
        dir.join("chat.redb")
    }

    pub fn main() -> ExitCode {
        let args: Vec<String> = std::env::args().collect();
        if args.get(1).map(String::as_str) == Some("--child") {
            let Some(dir) = args.get(2) else {
                eprintln!("usage: durable_chat [--child <dir>]");
                return ExitCode::FAILURE;
            };
            return match runtime(Path::new(dir)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("runtime: {error}");
                    ExitCode::FAILURE
                }
            };
        }
        let kill_after = match args.iter().position(|a| a == "--kill-after") {
            Some(i) => match args.get(i + 1).and_then(|n| n.parse().ok()) {
                Some(n) if n >= 1 && n < tokens().len() => n,
                _ => {
                    eprintln!("--kill-after takes 1..{} tokens", tokens().len());
                    return ExitCode::FAILURE;
                }
            },
            None => KILL_AFTER,
        };
        match host(kill_after) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(error) => {
                eprintln!("host: {error}");
                ExitCode::FAILURE
            }
        }
    }

    type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

    // ---------------------------------------------------------------------------
    // The runtime (child process).

    /// Streams the reply from wherever the log says it got to. Prints, flushed:
    /// `START <position>`, then `TOKEN <cursor> <token>` per token, `DURABLE
    /// <cursor>` when a token is known durable, and `DONE` at the end.
    fn runtime(dir: &Path) -> Result<()> {
        let log = RedbLog::open(log_path(dir))?;
        let store = ReplayStore::<String>::builder()
            .config(Config::default().with_capacity(CAPACITY))
            .durable(Arc::new(log), Utf8)
            // Write-behind: the persister looks every 20 ms unless woken.
            .durable_options(
                DurableOptions::default().with_flush_interval(Duration::from_millis(20)),
            )
            .build()?;
        let key = key();
        // Restored from the log: a new life right after its durable tail.
        let session = store.session(&key)?;
        let start = session.current_cursor().position();
        let mut out = std::io::stdout().lock();
        writeln!(out, "START {start}")?;
        out.flush()?;
        let tokens = tokens();
        let mut last = None;
        for (index, token) in tokens.iter().enumerate().skip(start as usize) {
            std::thread::sleep(TOKEN_INTERVAL);
            let event = session.append(Revision(1), token.to_string())?;
            writeln!(out, "TOKEN {} {token}", event.cursor())?;
            out.flush()?;
            if (index + 1) % DURABLE_EVERY == 0 {
                store.wait_durable(&key, event.position(), Duration::from_secs(5))?;
                writeln!(out, "DURABLE {}", event.cursor())?;
                out.flush()?;
            }
            last = Some(event);
        }
        if let Some(event) = last {
            store.wait_durable(&key, event.position(), Duration::from_secs(5))?;
            writeln!(out, "DURABLE {}", event.cursor())?;
        }
        writeln!(out, "DONE")?;
        out.flush()?;
        Ok(())
    }

    // ---------------------------------------------------------------------------
    // The host (parent process).

    /// The runtime process, killed and reaped if the host leaves early.
    struct Runtime {
        child: Option<Child>,
        lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    }

    impl Runtime {
        fn start(dir: &Path) -> Result<Self> {
            let mut child = Command::new(std::env::current_exe()?)
                .arg("--child")
                .arg(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()?;
            let stdout = child.stdout.take().ok_or("no stdout")?;
            Ok(Self {
                child: Some(child),
                lines: BufReader::new(stdout).lines(),
            })
        }

        fn next_line(&mut self) -> Result<Option<String>> {
            Ok(self.lines.next().transpose()?)
        }

        /// SIGKILL (what `Child::kill` sends on Unix), then reap.
        fn kill(mut self) -> Result<()> {
            if let Some(mut child) = self.child.take() {
                child.kill()?;
                let status = child.wait()?;
                println!("host:    the runtime is dead ({status})");
            }
            Ok(())
        }

        fn wait(mut self) -> Result<()> {
            if let Some(mut child) = self.child.take() {
                let status = child.wait()?;
                if !status.success() {
                    return Err(format!("the restarted runtime failed: {status}").into());
                }
            }
            Ok(())
        }
    }

    impl Drop for Runtime {
        fn drop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// A scratch directory, removed at the end.
    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// What the client has shown so far: each token with its cursor.
    #[derive(Default)]
    struct Client {
        shown: Vec<(Cursor, String)>,
        last_durable: Option<Cursor>,
    }

    impl Client {
        fn text(&self) -> String {
            self.shown.iter().map(|(_, token)| token.as_str()).collect()
        }

        fn last_cursor(&self) -> Cursor {
            self.shown
                .last()
                .map_or_else(|| Cursor::start(key()), |(cursor, _)| cursor.clone())
        }
    }

    /// Parses `TOKEN <cursor> <token>` (the token may end in a space).
    fn parse_token(line: &str) -> Result<Option<(Cursor, String)>> {
        let Some(rest) = line.strip_prefix("TOKEN ") else {
            return Ok(None);
        };
        let (cursor, token) = rest.split_once(' ').ok_or("a TOKEN line without a token")?;
        Ok(Some((cursor.parse()?, token.to_string())))
    }

    fn host(kill_after: usize) -> Result<bool> {
        let started = Instant::now();
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
        let dir = TempDir(std::env::temp_dir().join(format!(
            "livereplay-durable-chat-{}-{nanos}",
            std::process::id()
        )));
        std::fs::create_dir_all(&dir.0)?;
        // Create the log file before any runtime can be killed while creating it.
        drop(RedbLog::open(log_path(&dir.0))?);
        let total = tokens().len();
        println!(
            "host:    reply of {total} tokens; log {}",
            log_path(&dir.0).display()
        );

        // 1. The runtime streams; the client shows tokens; the host kills the
        //    runtime mid-reply.
        let mut client = Client::default();
        let mut runtime = Runtime::start(&dir.0)?;
        while client.shown.len() < kill_after {
            let Some(line) = runtime.next_line()? else {
                return Err("the runtime ended before the kill".into());
            };
            if let Some(token) = parse_token(&line)? {
                client.shown.push(token);
            } else if let Some(cursor) = line.strip_prefix("DURABLE ") {
                client.last_durable = Some(cursor.parse()?);
            }
        }
        let last = client.last_cursor();
        println!("client:  {:?}", client.text());
        println!(
            "host:    SIGKILL after token {} (cursor {last}); the last cursor seen durable is at position {}",
            last.position(),
            client.last_durable.as_ref().map_or(0, Cursor::position),
        );
        runtime.kill()?;

        // 2. The runtime restarts and finishes the reply from the durable tail.
        let mut runtime = Runtime::start(&dir.0)?;
        let mut restarted_at = None;
        while let Some(line) = runtime.next_line()? {
            if let Some(start) = line.strip_prefix("START ") {
                restarted_at = Some(start.parse::<u64>()?);
            }
            if line == "DONE" {
                break;
            }
        }
        runtime.wait()?;
        let restarted_at =
            restarted_at.ok_or("the restarted runtime did not say where it started")?;
        println!(
            "runtime: restarted after the durable tail {restarted_at} (a new life), finished the reply"
        );

        // 3. The client resumes from its last cursor through a store over the log.
        let store = ReplayStore::<String>::builder()
            .config(Config::default().with_capacity(CAPACITY))
            .durable(Arc::new(RedbLog::open(log_path(&dir.0))?), Utf8)
            .build()?;
        let mut ok = true;
        let mut catch_up = match store.catch_up(&last) {
            Ok(catch_up) => {
                println!("host:    cursor {} resumes exactly", last.position());
                catch_up
            }
            Err(Error::Gap(gap)) if gap.reason == GapReason::Lost => {
                let missed = gap.missed.ok_or("a Lost gap without a count")?;
                println!(
                    "host:    gap: {} token(s) after position {} were lost in the crash ({gap})",
                    missed,
                    last.position() - missed
                );
                let expected = last.position().saturating_sub(restarted_at);
                if missed != expected {
                    println!("host:    FAIL: expected exactly {expected} lost");
                    ok = false;
                }
                // Reload: drop what was never stored and resume before it.
                let keep = client.shown.len().saturating_sub(missed as usize);
                client.shown.truncate(keep);
                let resume = client.last_cursor();
                println!("client:  reloads {:?}", client.text());
                store.catch_up(&resume)?
            }
            Err(other) => return Err(other.into()),
        };
        let mut caught_up = String::new();
        while client.shown.len() < total {
            let event = catch_up.next_timeout(Duration::from_secs(2))?;
            let expected = client.last_cursor().position() + 1;
            if event.position() != expected {
                println!(
                    "host:    FAIL: got position {} after {}",
                    event.position(),
                    expected - 1
                );
                ok = false;
            }
            caught_up.push_str(event.payload());
            client.shown.push((event.cursor(), event.payload().clone()));
        }
        // Nothing after the reply.
        match catch_up.try_next() {
            Err(TryNextError::Empty) => {}
            other => {
                println!("host:    FAIL: something after the reply: {other:?}");
                ok = false;
            }
        }
        drop(catch_up);
        drop(store);
        println!("host:    caught up {caught_up:?}");
        let text = client.text();
        println!("client:  {text:?}");
        if text == REPLY {
            println!(
                "ok:      the full reply, nothing lost or repeated ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
        } else {
            println!("FAIL:    the client's text differs from the reply");
            ok = false;
        }
        Ok(ok)
    }
}
