//! An SSE server whose browsers resume by `Last-Event-ID`.
//!
//! Each session runs a simulated agent turn (a plain thread appending token
//! events synchronously); `GET /sessions/{id}/events` streams them with each
//! event's cursor as its SSE `id:`, so a browser's `EventSource` resumes
//! exactly where it stopped; a cursor that fell out of the window gets one
//! `gap` event with a snapshot to reload from. The resume protocol itself
//! is `livereplay::http`; this binary is the demo around it. Open the
//! printed address in a browser.
//!
//! ```text
//! cargo run --example sse_server --features sse-demo -- --port 3000 --drop-every 7
//! cargo run --example sse_server --features sse-demo -- --port 3000 --data-dir /tmp/lr-demo
//! # two nodes over one redis-server (examples/two_nodes.sh starts all three):
//! cargo run --example sse_server --features sse-demo -- --port 3000 --redis redis://127.0.0.1:6379/
//! cargo run --example sse_server --features sse-demo -- --port 3001 --redis redis://127.0.0.1:6379/ --host-only
//! # or the same two nodes over one PostgreSQL database:
//! cargo run --example sse_server --features sse-demo -- --port 3000 --postgres postgresql://postgres@127.0.0.1:5432/postgres
//! cargo run --example sse_server --features sse-demo -- --port 3001 --postgres postgresql://postgres@127.0.0.1:5432/postgres --host-only
//! ```
//!
//! Flags (all optional):
//!
//! * `--port N` — 0 (the default) picks a free port; the first line printed
//!   is always `listening on http://127.0.0.1:PORT`. Binds 127.0.0.1 only.
//! * `--tokens N`, `--token-ms MS` — the length and speed of each turn.
//! * `--drop-every N` — end each response after N events, so browsers must
//!   reconnect (and resume) on their own.
//! * `--capacity N`, `--max-age-ms MS` — the store's retention window; make
//!   it small to force gaps.
//! * `--retry-ms MS`, `--keep-alive-ms MS` — the `retry:` hint and the
//!   keep-alive interval.
//! * `--data-dir DIR` — keep every event in a redb log at `DIR/log.redb`
//!   (created if missing). Streams then serve any cursor from the log and
//!   send only durable events, and a server restarted (even after `kill
//!   -9`) on the same directory continues each turn where the log ends: a
//!   connected browser resumes with no gap, nothing lost or repeated.
//!   Without it, the store is memory-only and a restart starts over.
//! * `--redis URL` — keep every event in Redis Streams instead (`RedisLog`,
//!   e.g. `redis://127.0.0.1:6379/`), a log several nodes share: a browser's
//!   reconnect may land on any of them and resumes exactly. The same
//!   durable-only delivery and restart behaviour as `--data-dir`.
//! * `--postgres URL` — keep every event in PostgreSQL instead
//!   (`PostgresLog`; a libpq URL such as
//!   `postgresql://postgres@127.0.0.1:5432/postgres` or a `host=… port=…`
//!   string), shared by several nodes like `--redis`; host-only nodes are
//!   woken by `LISTEN`/`NOTIFY`. `--data-dir`, `--redis` and `--postgres`
//!   are three logs: give at most one.
//! * `--host-only` — run no turns: serve sessions that another node (one
//!   without this flag, on the same `--redis` or `--postgres`) runs and
//!   writes. Streams are catch-ups from the log (history, then live as the
//!   writer ships); a session is never opened or made resident here. Needs
//!   a shared log: `--redis` or `--postgres`.

#[path = "sse_server/app.rs"]
mod app;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU64;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use livereplay::durable::{DurableLog, PostgresLog, RedbLog, RedisLog};
use livereplay::{Config, Postcard, ReplayStore};

use app::{App, Settings, TurnPlan};

const USAGE: &str = "usage: sse_server [--port N] [--tokens N] [--token-ms MS] [--drop-every N] \
[--capacity N] [--max-age-ms MS] [--retry-ms MS] [--keep-alive-ms MS] \
[--data-dir DIR | --redis URL [--host-only] | --postgres URL [--host-only]]";

struct Options {
    port: u16,
    config: Config,
    settings: Settings,
    data_dir: Option<PathBuf>,
    redis: Option<String>,
    postgres: Option<String>,
    host_only: bool,
}

fn parse_options(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        port: 0,
        config: Config::default(),
        settings: Settings::default(),
        data_dir: None,
        redis: None,
        postgres: None,
        host_only: false,
    };
    let mut plan = options.settings.turn.unwrap_or(TurnPlan {
        tokens: 120,
        interval: Duration::from_millis(60),
    });
    let mut args = args;
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.to_string());
        }
        if flag == "--host-only" {
            options.host_only = true;
            continue;
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        if flag == "--data-dir" {
            options.data_dir = Some(PathBuf::from(value));
            continue;
        }
        if flag == "--redis" {
            options.redis = Some(value);
            continue;
        }
        if flag == "--postgres" {
            options.postgres = Some(value);
            continue;
        }
        let number: u64 = value
            .parse()
            .map_err(|_| format!("{flag} takes a whole number, not {value:?}\n{USAGE}"))?;
        let millis = Duration::from_millis(number);
        match flag.as_str() {
            "--port" => {
                options.port =
                    u16::try_from(number).map_err(|_| format!("--port {number} is too large"))?
            }
            "--tokens" => plan.tokens = number,
            "--token-ms" => plan.interval = millis,
            "--drop-every" => options.settings.drop_every = NonZeroU64::new(number),
            "--capacity" => {
                options.config.capacity =
                    usize::try_from(number).map_err(|_| "--capacity is too large".to_string())?
            }
            "--max-age-ms" => options.config.max_age = millis,
            "--retry-ms" => options.settings.retry = millis,
            "--keep-alive-ms" => options.settings.keep_alive = millis,
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    options.settings.turn = Some(plan);
    options
        .config
        .validate()
        .map_err(|error| error.to_string())?;
    if options.settings.keep_alive.is_zero() {
        return Err("--keep-alive-ms must be at least 1".to_string());
    }
    let logs_given = [
        options.data_dir.is_some(),
        options.redis.is_some(),
        options.postgres.is_some(),
    ]
    .into_iter()
    .filter(|given| *given)
    .count();
    if logs_given > 1 {
        return Err(format!(
            "--data-dir, --redis and --postgres are three logs: give at most one\n{USAGE}"
        ));
    }
    if options.host_only && options.redis.is_none() && options.postgres.is_none() {
        return Err(format!(
            "--host-only serves sessions other nodes write to a shared log: it needs --redis URL or --postgres URL\n{USAGE}"
        ));
    }
    Ok(options)
}

/// A memory-only store, or one over `DIR/log.redb`, Redis or PostgreSQL
/// (`parse_options` lets at most one of them through).
fn build_store(options: &Options) -> Result<ReplayStore<app::TurnEvent>, String> {
    let log: Option<Arc<dyn DurableLog>> = if let Some(url) = &options.redis {
        let log = RedisLog::open(url)
            .map_err(|error| format!("cannot open the Redis log at {url}: {error}"))?;
        Some(Arc::new(log))
    } else if let Some(url) = &options.postgres {
        // Not the URL in the message: it may hold a password.
        let log = PostgresLog::open(url)
            .map_err(|error| format!("cannot open the Postgres log (--postgres): {error}"))?;
        Some(Arc::new(log))
    } else if let Some(dir) = &options.data_dir {
        std::fs::create_dir_all(dir)
            .map_err(|error| format!("cannot create --data-dir {}: {error}", dir.display()))?;
        let path = dir.join("log.redb");
        let log = RedbLog::open(&path)
            .map_err(|error| format!("cannot open the log {}: {error}", path.display()))?;
        Some(Arc::new(log))
    } else {
        None
    };
    let builder = ReplayStore::builder().config(options.config.clone());
    let builder = match log {
        Some(log) => builder.durable(log, Postcard),
        None => builder,
    };
    builder
        .build()
        .map_err(|error| format!("invalid store configuration: {error}"))
}

#[tokio::main]
async fn main() {
    let options = match parse_options(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let store = match build_store(&options) {
        Ok(store) => store,
        Err(error) => {
            eprintln!("{error}");
            std::process::exit(2);
        }
    };
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, options.port));
    let listener = match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("cannot listen on {address}: {error}");
            std::process::exit(1);
        }
    };
    let bound = listener.local_addr().unwrap_or(address);
    // The first line is the address, for scripts that start us on port 0.
    println!("listening on http://{bound}");
    let _ = std::io::stdout().flush();
    let app = if options.host_only {
        App::new_host_only(store, options.settings)
    } else {
        App::new(store, options.settings)
    };
    if let Err(error) = axum::serve(listener, app::router(app)).await {
        eprintln!("server error: {error}");
        std::process::exit(1);
    }
}
