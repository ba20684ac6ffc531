//! `livereplay serve`: the Durable Streams protocol over an embedded redb
//! log or over Redis shared by several nodes; `livereplay sign`: a signed,
//! expiring read URL for one stream.
//!
//! ```text
//! livereplay serve --port 4437 --data-dir /var/lib/livereplay --long-poll-timeout-ms 20000
//! livereplay serve --port 4437 --redis redis://127.0.0.1:6379/ --namespace streams
//! livereplay serve --bind 0.0.0.0 --data-dir DIR --tokens-file tokens.txt --signing-key-file key
//! livereplay sign --signing-key-file key --tenant acme --stream chat/1 --ttl-secs 3600 \
//!     --base https://streams.example.com
//! ```
//!
//! Exactly one of `--data-dir` (one node, a redb file) and `--redis` (feature
//! `redis`) names the log. Over Redis any number of `livereplay serve`
//! processes with the same URL and namespace serve the same streams as one
//! server: every protocol write takes the stream's lease in Redis and
//! re-reads the stream's state from the log first (module
//! `livereplay::streams`, "Several nodes"), and readers on every node see
//! every node's writes.
//!
//! The first line on stdout is `listening on http://127.0.0.1:PORT`
//! (`--port 0` picks a free port); the second says what is served, from
//! where, with which memory bounds and which access control. Streams are
//! at `/v1/stream/{path}`, `GET /health` answers `ok`, `GET /metrics` the
//! store's counters in the Prometheus text format (both without
//! credentials). SIGTERM or ctrl-c stops accepting, lets in-flight
//! requests finish for up to 5 s (then cuts what is left, SSE responses
//! included), then drops the store, which writes what is left to the log.
//!
//! Access control (module `auth`): bearer tokens from `--tokens-file` or
//! `LIVEREPLAY_TOKENS` (`TOKEN TENANT read|write` per line), each naming
//! its tenant (whose streams are invisible to every other tenant) and
//! whether it may write; and signed read URLs from `livereplay sign`,
//! which read one stream until they expire. With neither configured every
//! request is the empty tenant with full access, so the server binds
//! loopback only and refuses another `--bind`; with either, any address
//! may be bound. It serves plain HTTP: TLS belongs to a proxy in front.

mod auth;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use livereplay::durable::{DurableLog, RedbDurability, RedbLog, RedbOptions};
use livereplay::streams::{
    DurableStreams, RequestInfo, StreamRecord, StreamsOptions, WebhookOptions,
};
use livereplay::{Config, DurableOptions, Postcard, ReplayStore};

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
    // Boxed: its flags are most of the enum's size.
    Serve(Box<Serve>),
    /// Print a signed URL that reads one stream until it expires.
    Sign(Sign),
}

#[derive(Parser)]
struct Sign {
    /// The file holding the key `serve --signing-key-file` verifies with.
    #[arg(long)]
    signing_key_file: PathBuf,
    /// The tenant whose stream the URL reads.
    #[arg(long)]
    tenant: String,
    /// The stream's path below /v1/stream/.
    #[arg(long)]
    stream: String,
    /// How long the URL stays valid, in seconds.
    #[arg(long)]
    ttl_secs: u64,
    /// Where the server is reached (scheme, host and port).
    #[arg(long, default_value = "http://127.0.0.1:4437")]
    base: String,
}

#[derive(Parser)]
#[command(group(clap::ArgGroup::new("log").required(true).args(["data_dir", "redis"])))]
struct Serve {
    /// The port (0: any free port).
    #[arg(long, default_value_t = 4437)]
    port: u16,
    /// The address to bind. Without --tokens-file, LIVEREPLAY_TOKENS or
    /// --signing-key-file only a loopback address (127.0.0.1 or ::1): the
    /// server would have no access control.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    bind: IpAddr,
    /// Bearer tokens, one `TOKEN TENANT read|write` per line (`#`
    /// comments); LIVEREPLAY_TOKENS may hold more in the same form.
    #[arg(long)]
    tokens_file: Option<PathBuf>,
    /// The key (a file of at least 32 random bytes) that signed read URLs
    /// (`livereplay sign`) are checked with.
    #[arg(long)]
    signing_key_file: Option<PathBuf>,
    /// The directory of the redb log (`streams.redb`), created if missing:
    /// one node.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    // The flags of one log conflict with the other log's, rather than
    // `requires` theirs: clap skips `requires` for an argument with a
    // default value even when it is given (clap issue #3076), so
    // `--journal-bytes` beside `--redis` was ignored without a word.
    /// With --data-dir: how an append becomes durable before it is
    /// acknowledged. `journaled`: one `fdatasync`ed frame in
    /// `streams.redb.journal`, redb's pages written at checkpoints;
    /// `immediate`: a durable redb commit each time. Both lose nothing
    /// acknowledged in a crash.
    #[arg(long, value_enum, default_value_t = Commit::Journaled, conflicts_with = "redis")]
    commit: Commit,
    /// With --commit journaled: the journal's size; a checkpoint writes
    /// redb's pages once per this many bytes of appends.
    #[arg(long, default_value_t = 16 << 20, conflicts_with = "redis")]
    journal_bytes: u64,
    /// With --data-dir: the most memory redb's page cache may take. The
    /// streams' rings serve live readers from memory; the cache holds the
    /// B-tree pages appends touch and the records catch-up reads again.
    /// Measured at 16 MiB against the default: 44 MiB less RSS at 10 000
    /// streams, but 25 % fewer appends/s at 100 000 streams and half the
    /// speed of a repeated 100 MiB catch-up.
    #[arg(long, default_value_t = 64 << 20, conflicts_with = "redis")]
    cache_bytes: usize,
    /// A Redis server (`redis://host:port/db`, 6.2 or later) holding the
    /// log: every node given the same URL and namespace serves the same
    /// streams.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// The prefix of every Redis key this server writes (nodes sharing a
    /// server but not their streams use different ones).
    #[arg(long, default_value = "lr", conflicts_with = "data_dir")]
    namespace: String,
    /// With --redis: how long a node may hold a stream's write lease before
    /// another node may take it (a node killed mid-write blocks its stream
    /// at most this long). Must exceed --durable-timeout-ms.
    #[arg(long, default_value_t = 15_000, conflicts_with = "data_dir")]
    lease_ms: u64,
    /// How long a write waits for its record to be durable before 503.
    #[arg(long, default_value_t = 10_000)]
    durable_timeout_ms: u64,
    /// The threads serving HTTP (tokio's workers); the log's writer has
    /// its own. Default: the cores this process may use. Fewer when the
    /// server shares its cores (measured with the load client on the same
    /// two cores: 1 worker served 8-12 % more appends than 2, medians of
    /// two sets of three runs).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: Option<u16>,
    /// How long a long-poll waits for data before 204.
    #[arg(long, default_value_t = 20_000)]
    long_poll_timeout_ms: u64,
    /// How long an SSE response lasts before the client must reconnect.
    #[arg(long, default_value_t = 60_000)]
    sse_lifetime_ms: u64,
    /// Streams untouched this long have their protocol state forgotten
    /// (folded from the log again on the next request), so memory follows
    /// the streams in use; streams with a TTL or an expiry are kept.
    #[arg(long, default_value_t = 300)]
    forget_idle_secs: u64,
    /// Records (requests) each stream keeps in memory for readers; older
    /// ones are read from the log.
    #[arg(long, default_value_t = 2048)]
    ring_capacity: usize,
    /// Streams (store sessions) held in memory at once. A stream whose
    /// records are all older than the store's max age (120 s) and durable
    /// is let go when room is needed (its data stays in the log); beyond
    /// that a new stream is refused with 503. Each costs about 3 KB idle.
    #[arg(long, default_value_t = 100_000)]
    max_sessions: usize,
    /// The largest append (request body) accepted, in bytes; larger ones
    /// get 413.
    #[arg(long, default_value_t = 8 << 20)]
    max_append_bytes: usize,
    /// Bytes of records not yet on disk the store keeps past the streams'
    /// rings (all streams together) before what a ring laps is lost
    /// (`DurableOptions::undurable_budget`).
    #[arg(long, default_value_t = 64 << 20)]
    undurable_budget_bytes: usize,
    /// Bytes of large records (64 KiB or more) kept in memory for live
    /// readers, all streams together; older ones are read from the log.
    /// Without it, --ring-capacity appends of --max-append-bytes each
    /// could be held per stream.
    #[arg(long, default_value_t = 64 << 20)]
    large_records_in_memory_bytes: usize,
    /// A host webhooks may call although it is (or resolves to) a
    /// private, loopback or link-local address: a receiver on this
    /// server's own network. Repeat for several. Webhooks stay https://.
    #[arg(long, value_name = "HOST")]
    webhook_allow_host: Vec<String>,
    /// PEM certificates (a private CA's) trusted for https:// webhooks,
    /// besides Mozilla's roots.
    #[arg(long, value_name = "FILE")]
    webhook_ca_file: Option<PathBuf>,
    /// Where clients reach this server (`https://streams.example.com`,
    /// behind a TLS proxy): subscriptions' callback and key-set URLs are
    /// built from it rather than from the request's Host over http://.
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
}

/// How `--data-dir`'s appends become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Commit {
    /// Through the redb log's journal (`RedbDurability::Journaled`).
    Journaled,
    /// A durable redb commit each (`RedbDurability::Immediate`).
    Immediate,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Serve(serve) => run(*serve),
        Command::Sign(sign) => print_signed_url(&sign),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("livereplay: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn print_signed_url(sign: &Sign) -> Result<(), Box<dyn std::error::Error>> {
    let key = auth::SigningKey::load(&sign.signing_key_file)?;
    if sign.ttl_secs == 0 {
        return Err("--ttl-secs must be at least 1".into());
    }
    let expires = auth::unix_now()
        .checked_add(sign.ttl_secs)
        .ok_or("--ttl-secs is too large")?;
    let url = key.signed_url(&sign.base, &sign.tenant, &sign.stream, expires)?;
    println!("{url}");
    Ok(())
}

/// `--public-url`, checked: an `http://` or `https://` URL with a host,
/// no query and no fragment.
fn public_url(serve: &Serve) -> Result<Option<String>, String> {
    let Some(text) = &serve.public_url else {
        return Ok(None);
    };
    let refused = |why: &str| format!("--public-url {text:?}: {why}");
    let uri: axum::http::Uri = text
        .parse()
        .map_err(|error| refused(&format!("not a URL ({error})")))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        return Err(refused("give http:// or https:// and a host"));
    }
    if uri.query().is_some() || text.contains('#') {
        return Err(refused("a base URL has no query or fragment"));
    }
    Ok(Some(text.trim_end_matches('/').to_string()))
}

/// Where webhooks may go, from `--webhook-allow-host` and
/// `--webhook-ca-file`.
fn webhooks(serve: &Serve) -> Result<WebhookOptions, String> {
    let mut options = serve
        .webhook_allow_host
        .iter()
        .fold(WebhookOptions::default(), |options, host| {
            options.allow_host(host.as_str())
        });
    if let Some(path) = &serve.webhook_ca_file {
        let pem = std::fs::read(path).map_err(|error| {
            format!("cannot read --webhook-ca-file {}: {error}", path.display())
        })?;
        options = options
            .trust_pem(&pem)
            .map_err(|error| format!("--webhook-ca-file {}: {error}", path.display()))?;
    }
    Ok(options)
}

/// The access control configured by the flags and the environment.
fn guard(serve: &Serve) -> Result<auth::Guard, String> {
    let mut tokens = auth::Tokens::default();
    if let Some(path) = &serve.tokens_file {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read --tokens-file {}: {error}", path.display()))?;
        tokens.add(&text, &path.display().to_string(), false)?;
    }
    if let Ok(text) = std::env::var(auth::TOKENS_ENV) {
        tokens.add(&text, auth::TOKENS_ENV, true)?;
    }
    let signing = serve
        .signing_key_file
        .as_deref()
        .map(auth::SigningKey::load)
        .transpose()?;
    Ok(auth::Guard { tokens, signing })
}

fn run(serve: Serve) -> Result<(), Box<dyn std::error::Error>> {
    let guard = guard(&serve)?;
    let webhooks = webhooks(&serve)?;
    let public_url = public_url(&serve)?;
    if !serve.bind.is_loopback() && !guard.configured() {
        return Err(format!(
            "--bind {}: no access control is configured (no --tokens-file, {} or \
             --signing-key-file), so it serves loopback only; give tokens or a signing key, \
             put a proxy that authenticates in front of it, or bind 127.0.0.1",
            serve.bind,
            auth::TOKENS_ENV
        )
        .into());
    }
    let access = if guard.configured() {
        let (tokens, tenants) = guard.tokens.counts();
        format!(
            "access control: {tokens} bearer token(s) for {tenants} tenant(s), signed read URLs {}; \
             plain HTTP (TLS belongs to a proxy in front)",
            if guard.signing.is_some() { "on" } else { "off" }
        )
    } else {
        "loopback only (no access control configured)".to_string()
    };
    let durable_timeout = Duration::from_millis(serve.durable_timeout_ms);
    let (log, source, shared) = open_log(&serve, durable_timeout)?;
    let store = Arc::new(
        ReplayStore::<StreamRecord>::builder()
            .config(
                Config::default()
                    .with_capacity(serve.ring_capacity)
                    .with_max_sessions(serve.max_sessions),
            )
            .durable(log, Postcard)
            .durable_options(
                DurableOptions::default().with_undurable_budget(serve.undurable_budget_bytes),
            )
            .build()?,
    );
    let options = StreamsOptions {
        long_poll_timeout: Duration::from_millis(serve.long_poll_timeout_ms),
        sse_lifetime: Duration::from_millis(serve.sse_lifetime_ms),
        max_append_bytes: serve.max_append_bytes,
        durable_timeout,
        webhooks,
        large_records_in_memory: serve.large_records_in_memory_bytes,
        public_url,
        ..StreamsOptions::default()
    };
    let mut streams = DurableStreams::new(Arc::clone(&store)).options(options);
    if guard.configured() {
        streams = streams.access(move |request: &RequestInfo<'_>| guard.decide(request));
    }
    #[cfg(feature = "redis")]
    let streams = match shared {
        Some(shared) => streams.shared_writes(shared),
        None => streams,
    };
    #[cfg(not(feature = "redis"))]
    let () = shared;
    let streams = Arc::new(streams);
    let sweeper = Arc::clone(&streams);
    let resumer = Arc::clone(&streams);
    let metrics_store = Arc::clone(&store);
    let metrics_streams = Arc::clone(&streams);
    let app = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/metrics",
            axum::routing::get(move || {
                let text = metrics(
                    &metrics_store.stats(),
                    metrics_streams.cached_streams(),
                    metrics_streams.large_records(),
                );
                async move { ([("content-type", "text/plain; version=0.0.4")], text) }
            }),
        )
        .merge(streams.router());
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = serve.worker_threads {
        runtime.worker_threads(usize::from(workers));
    }
    // Named for `top -H` and the tests (tokio's blocking threads share it).
    let runtime = runtime
        .thread_name("livereplay-http")
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(SocketAddr::new(serve.bind, serve.port)).await?;
        let address = listener.local_addr()?;
        // Expired streams nobody touches are deleted by a sweep, subscription
        // histories are compacted, and idle
        // streams' cached state is let go.
        let forget_idle = Duration::from_secs(serve.forget_idle_secs);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(EXPIRY_SWEEP);
            loop {
                every.tick().await;
                if let Err(error) = sweeper.sweep_expired().await {
                    eprintln!("livereplay: expiry sweep: {error}");
                }
                if let Err(error) = sweeper.compact_subscriptions().await {
                    eprintln!("livereplay: compacting subscriptions: {error}");
                }
                sweeper.forget_idle(forget_idle);
            }
        });
        // Subscriptions' wakes carry on from before a restart (in the
        // background: a webhook may be slow to answer).
        tokio::spawn(async move {
            if let Err(error) = resumer.resume_subscriptions().await {
                eprintln!("livereplay: resuming subscriptions: {error}");
            }
        });
        let mut stdout = std::io::stdout().lock();
        // Both lines in one write (under the pipe's atomic size): a parent
        // that reads the first line and closes the pipe cannot make the
        // second one fail.
        let banner = format!(
            "listening on http://{address}\n\
             serving Durable Streams at http://{address}/v1/stream/{{path}} from {source}; \
             {access}; {} records per stream in memory, \
             appends up to {} bytes, {} bytes of undurable records kept\n",
            serve.ring_capacity,
            serve.max_append_bytes,
            serve.undurable_budget_bytes
        );
        stdout.write_all(banner.as_bytes())?;
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

/// What `open_log` gives: the log, what to call it in the banner, and
/// (over Redis) the stream leases that make several nodes one server.
#[cfg(feature = "redis")]
type OpenedLog = (
    Arc<dyn DurableLog>,
    String,
    Option<livereplay::streams::SharedWrites>,
);
#[cfg(not(feature = "redis"))]
type OpenedLog = (Arc<dyn DurableLog>, String, ());

/// Opens the log `--data-dir` or `--redis` names.
fn open_log(
    serve: &Serve,
    durable_timeout: Duration,
) -> Result<OpenedLog, Box<dyn std::error::Error>> {
    if let Some(url) = &serve.redis {
        #[cfg(feature = "redis")]
        {
            let lease = Duration::from_millis(serve.lease_ms);
            if lease <= durable_timeout {
                return Err(format!(
                    "--lease-ms {} must exceed --durable-timeout-ms {}: a write holds its stream's \
                     lease until its record is durable",
                    serve.lease_ms, serve.durable_timeout_ms
                )
                .into());
            }
            let options = livereplay::durable::RedisOptions {
                prefix: serve.namespace.clone(),
                ..Default::default()
            };
            let log = livereplay::durable::RedisLog::open_with(url, options)
                .map_err(|error| format!("cannot open the Redis log: {error}"))?;
            let shared = livereplay::streams::SharedWrites::open(url, &serve.namespace, lease)
                .map_err(|error| format!("cannot open the Redis leases: {error}"))?;
            return Ok((
                Arc::new(log),
                format!("Redis (namespace {:?}, several nodes)", serve.namespace),
                Some(shared),
            ));
        }
        #[cfg(not(feature = "redis"))]
        {
            let _ = (url, durable_timeout);
            return Err(
                "--redis: this binary was built without the `redis` feature \
                        (cargo build --features durable-streams,redis)"
                    .into(),
            );
        }
    }
    let Some(data_dir) = &serve.data_dir else {
        return Err("give --data-dir DIR or --redis URL".into());
    };
    std::fs::create_dir_all(data_dir)
        .map_err(|error| format!("cannot create {}: {error}", data_dir.display()))?;
    let path = data_dir.join("streams.redb");
    let options = RedbOptions::new()
        .durability(match serve.commit {
            Commit::Journaled => RedbDurability::Journaled,
            Commit::Immediate => RedbDurability::Immediate,
        })
        .journal_bytes(serve.journal_bytes)
        .cache_size(serve.cache_bytes);
    let log = RedbLog::open_with(&path, options)
        .map_err(|error| format!("cannot open {}: {error}", path.display()))?;
    #[cfg(feature = "redis")]
    let shared = None;
    #[cfg(not(feature = "redis"))]
    let shared = ();
    Ok((Arc::new(log), path.display().to_string(), shared))
}

/// The store's counters in the Prometheus text format.
fn metrics(
    stats: &livereplay::Stats,
    cached_streams: usize,
    (large_bytes, large_released): (u64, u64),
) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        out.push_str(&format!(
            "# HELP livereplay_{name} {help}\n# TYPE livereplay_{name} {kind}\nlivereplay_{name} {value}\n"
        ));
    };
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    metric(
        "sessions",
        "gauge",
        "Sessions (streams and reserved sessions) in memory.",
        count(stats.sessions),
    );
    metric(
        "streams_cached",
        "gauge",
        "Streams whose protocol state is held in memory (see --forget-idle-secs).",
        count(cached_streams),
    );
    metric(
        "large_records_in_memory_bytes",
        "gauge",
        "Bytes of large records (64 KiB or more) held in memory for live readers.",
        large_bytes,
    );
    metric(
        "large_records_released_total",
        "counter",
        "Large records released from memory to keep within --large-records-in-memory-bytes (read from the log since).",
        large_released,
    );
    metric(
        "appends_total",
        "counter",
        "Records appended since start.",
        stats.appends,
    );
    metric(
        "retained_events",
        "gauge",
        "Records the rings hold now.",
        stats.retained_events,
    );
    metric(
        "subscribers",
        "gauge",
        "Live ring subscriptions (live readers).",
        count(stats.subscribers),
    );
    metric(
        "gaps_trimmed_total",
        "counter",
        "Gaps reported as trimmed.",
        stats.gaps_trimmed,
    );
    metric(
        "gaps_lost_total",
        "counter",
        "Gaps reported as lost.",
        stats.gaps_lost,
    );
    metric(
        "gaps_reset_total",
        "counter",
        "Gaps reported as reset (a session removed or restarted under a reader).",
        stats.gaps_reset,
    );
    metric(
        "gaps_unavailable_total",
        "counter",
        "Gaps reported as unavailable (a session the store does not know).",
        stats.gaps_unavailable,
    );
    metric(
        "closed_sessions_total",
        "counter",
        "Sessions (streams) closed since start.",
        stats.closed_sessions,
    );
    metric(
        "appends_refused_closed_total",
        "counter",
        "In-process appends refused because their stream was closed.",
        stats.appends_refused_closed,
    );
    if let Some(durable) = &stats.durable {
        metric(
            "persisted_events_total",
            "counter",
            "Records written to the log.",
            durable.persisted_events,
        );
        metric(
            "commits_total",
            "counter",
            "Log commits that succeeded.",
            durable.commits,
        );
        metric(
            "log_failures_total",
            "counter",
            "Log commits that failed (retried).",
            durable.log_failures,
        );
        metric(
            "lost_events_total",
            "counter",
            "Accepted records no tier holds (recorded holes).",
            durable.lost_events,
        );
        metric(
            "undurable_events",
            "gauge",
            "Records accepted and not yet durable.",
            durable.undurable_events,
        );
        metric(
            "holes_total",
            "counter",
            "Holes written to the log (runs of accepted records no tier could keep).",
            durable.holes,
        );
        metric(
            "fenced_sessions_total",
            "counter",
            "Sessions fenced: another writer took them in the shared log, and their unwritten records are lost here.",
            durable.fenced_sessions,
        );
        metric(
            "fenced_events_total",
            "counter",
            "Accepted records of fenced sessions never written.",
            durable.fenced_events,
        );
        metric(
            "interrupted_turns_total",
            "counter",
            "Turns another store left open (its process died, or its lease ran out) closed Interrupted here.",
            durable.interrupted_turns,
        );
        metric(
            "refused_records_total",
            "counter",
            "Records the log refused for good, written as holes.",
            durable.refused_records,
        );
    }
    out
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
