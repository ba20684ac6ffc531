//! `livereplay serve`: the Durable Streams protocol over an embedded redb
//! log, on 127.0.0.1.
//!
//! ```text
//! livereplay serve --port 4437 --data-dir /var/lib/livereplay --long-poll-timeout-ms 20000
//! ```
//!
//! The first line on stdout is `listening on http://127.0.0.1:PORT`
//! (`--port 0` picks a free port). Streams are at `/v1/stream/{path}`,
//! `GET /health` answers `ok`. SIGTERM or ctrl-c stops accepting, lets
//! in-flight requests finish for up to 5 s (then cuts what is left, SSE
//! responses included), then drops the store, which writes what is left to
//! the log.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use livereplay::durable::RedbLog;
use livereplay::streams::{DurableStreams, StreamRecord, StreamsOptions};
use livereplay::{Postcard, ReplayStore};

/// How often expired streams are looked for.
const EXPIRY_SWEEP: Duration = Duration::from_secs(5);

/// How long requests in flight may take to finish after SIGTERM or ctrl-c.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(name = "livereplay", version, about = "livereplay's servers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Durable Streams protocol at /v1/stream/{path}.
    Serve(Serve),
}

#[derive(Parser)]
struct Serve {
    /// The port (0: any free port).
    #[arg(long, default_value_t = 4437)]
    port: u16,
    /// The address to bind (loopback unless told otherwise).
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    bind: IpAddr,
    /// The directory of the redb log (`streams.redb`), created if missing.
    #[arg(long)]
    data_dir: PathBuf,
    /// How long a long-poll waits for data before 204.
    #[arg(long, default_value_t = 20_000)]
    long_poll_timeout_ms: u64,
    /// How long an SSE response lasts before the client must reconnect.
    #[arg(long, default_value_t = 60_000)]
    sse_lifetime_ms: u64,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let Command::Serve(serve) = cli.command;
    match run(serve) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("livereplay: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(serve: Serve) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(&serve.data_dir)
        .map_err(|error| format!("cannot create {}: {error}", serve.data_dir.display()))?;
    let path = serve.data_dir.join("streams.redb");
    let log = Arc::new(
        RedbLog::open(&path).map_err(|error| format!("cannot open {}: {error}", path.display()))?,
    );
    let store = Arc::new(
        ReplayStore::<StreamRecord>::builder()
            .durable(log, Postcard)
            .build()?,
    );
    let options = StreamsOptions {
        long_poll_timeout: Duration::from_millis(serve.long_poll_timeout_ms),
        sse_lifetime: Duration::from_millis(serve.sse_lifetime_ms),
        ..StreamsOptions::default()
    };
    let streams = Arc::new(DurableStreams::new(Arc::clone(&store)).options(options));
    let sweeper = Arc::clone(&streams);
    let app = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok\n" }))
        .merge(streams.router());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(SocketAddr::new(serve.bind, serve.port)).await?;
        let address = listener.local_addr()?;
        // Expired streams nobody touches are deleted by a sweep.
        tokio::spawn(async move {
            let mut every = tokio::time::interval(EXPIRY_SWEEP);
            loop {
                every.tick().await;
                if let Err(error) = sweeper.sweep_expired().await {
                    eprintln!("livereplay: expiry sweep: {error}");
                }
            }
        });
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on http://{address}")?;
        stdout.flush()?;
        drop(stdout);
        // Graceful: stop accepting and let requests finish, but no longer
        // than the grace period (an SSE response would hold the server up
        // to its lifetime otherwise).
        let stop = Arc::new(tokio::sync::Notify::new());
        let server = axum::serve(listener, app).with_graceful_shutdown({
            let stop = Arc::clone(&stop);
            async move {
                shutdown_signal().await;
                stop.notify_one();
            }
        });
        tokio::select! {
            served = server => served?,
            () = async {
                stop.notified().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => eprintln!("livereplay: requests still open after {SHUTDOWN_GRACE:?}; closing them"),
        }
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    // Responses still running (SSE) are dropped with the runtime; the store
    // goes last and writes what is left to the log.
    drop(runtime);
    drop(store);
    Ok(())
}

/// Resolves on SIGTERM or ctrl-c.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
