//! The load client of the Durable Streams benchmark (issue 22 item 7), and
//! the two servers it needs besides the real ones (feature `ds-bench`).
//!
//! `scripts/ds_bench.sh` runs it against `livereplay serve`, its peers and
//! a bare HTTP floor, the same client and the same workload for each:
//!
//! ```text
//! ds_load run --base http://127.0.0.1:PORT/v1/stream --pid PID --workload append-one
//! ds_load floor --port 0          # answers 204 to everything: the HTTP floor
//! ds_load embedded --port 0 --data-dir DIR --durability deferred
//! ds_load inproc --data-dir DIR   # in-process append -> HTTP long-poll reader
//! ```
//!
//! Every workload is bounded in time and count and prints one line
//! `RESULT {json}` (the script collects them). Latencies are measured per
//! request from just before it is sent to its whole response; percentiles
//! are read off the sorted samples. The server's RSS and open descriptors
//! come from `/proc/PID/status` and `/proc/PID/fd` when `--pid` is given.
//!
//! The client is hyper's own HTTP/1 connection, one per task, no pool and
//! no retry logic beyond reconnecting a connection the server closed: the
//! least CPU per request on this stack, so that on two shared cores the
//! client is not what is measured (the floor figure shows its ceiling).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use livereplay::durable::{RedbDurability, RedbLog, RedbOptions};
use livereplay::streams::{DurableStreams, StreamRecord, StreamsOptions};
use livereplay::{Config, DurableOptions, Postcard, ReplayStore, Revision};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

type Failure = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(
    name = "ds_load",
    about = "Durable Streams load client (issue 22 item 7)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A bare axum server that answers 204 to every request, storing
    /// nothing: the HTTP floor.
    Floor {
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// livereplay's Durable Streams router over redb, embedded in this
    /// process (the same router and store `livereplay serve` runs), with
    /// the log's durability chosen: `deferred` is the fastest mode.
    Embedded {
        #[arg(long, default_value_t = 0)]
        port: u16,
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, value_enum, default_value_t = Durability::Immediate)]
        durability: Durability,
        #[arg(long, default_value_t = 20_000)]
        long_poll_timeout_ms: u64,
    },
    /// An embedded server (redb, immediate) and a reader over HTTP
    /// long-poll: the time from an in-process `store.append` to the
    /// reader's response, next to an HTTP append's on the same server.
    Inproc {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 200)]
        count: usize,
    },
    /// One workload against a server.
    Run(RunArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Durability {
    Immediate,
    Deferred,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Workload {
    /// Appends of `--size` bytes on one stream over `--connections`.
    AppendOne,
    /// Appends spread over `--streams` streams (created first).
    Spread,
    /// Append, then the long-poll reader's response (upstream figure 1).
    Longpoll,
    /// 1000 x 100 B appends in batches of 75 (upstream figure 2).
    Small,
    /// 50 x 1 MiB appends in batches of 15 (upstream figure 3).
    Large,
    /// `--readers` SSE readers on one stream; delivery to the last one.
    Sse,
    /// Reads `--catchup-mib` MiB from the start of a stream.
    Catchup,
}

#[derive(Parser, Clone)]
struct RunArgs {
    /// The streams' base URL, e.g. http://127.0.0.1:4437/v1/stream.
    #[arg(long)]
    base: String,
    #[arg(long, value_enum)]
    workload: Workload,
    /// The server's pid, for its RSS and open descriptors.
    #[arg(long)]
    pid: Option<u32>,
    /// A name for the server, copied into the result.
    #[arg(long, default_value = "server")]
    label: String,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds measured (after one second of warm-up).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    #[arg(long, default_value_t = 100)]
    size: usize,
    #[arg(long, default_value_t = 10_000)]
    streams: usize,
    /// At most this many seconds creating the streams of `spread`.
    #[arg(long, default_value_t = 120.0)]
    create_seconds: f64,
    #[arg(long, default_value_t = 1000)]
    readers: usize,
    /// Messages appended to the SSE readers' stream.
    #[arg(long, default_value_t = 50)]
    messages: usize,
    #[arg(long, default_value_t = 100)]
    catchup_mib: usize,
    /// Repetitions of `longpoll` (rounds), `small`, `large` and `catchup`.
    #[arg(long, default_value_t = 3)]
    iterations: usize,
}

fn main() -> Result<(), Failure> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Floor { port } => floor(port).await,
            Command::Embedded {
                port,
                data_dir,
                durability,
                long_poll_timeout_ms,
            } => {
                let (streams, _) =
                    embedded_service(&data_dir, durability, long_poll_timeout_ms, false)?;
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
                println!("listening on http://{}", listener.local_addr()?);
                axum::serve(listener, app(&streams)).await?;
                Ok(())
            }
            Command::Inproc { data_dir, count } => inproc(&data_dir, count).await,
            Command::Run(args) => {
                let mut result = run(&args).await?;
                result["server"] = json!(args.label);
                println!("RESULT {result}");
                Ok(())
            }
        }
    })
}

// ---------------------------------------------------------------- servers

async fn floor(port: u16) -> Result<(), Failure> {
    let app = axum::Router::new().fallback(|| async { axum::http::StatusCode::NO_CONTENT });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

/// The store and router `livereplay serve` builds, over redb in `dir`.
fn embedded_service(
    dir: &std::path::Path,
    durability: Durability,
    long_poll_timeout_ms: u64,
    wake_on_dirty: bool,
) -> Result<(Arc<DurableStreams>, Arc<RedbLog>), Failure> {
    std::fs::create_dir_all(dir)?;
    let durability = match durability {
        Durability::Immediate => RedbDurability::Immediate,
        Durability::Deferred => RedbDurability::Deferred,
    };
    let log = Arc::new(RedbLog::open_with(
        dir.join("streams.redb"),
        RedbOptions::new().durability(durability),
    )?);
    let store = Arc::new(
        ReplayStore::<StreamRecord>::builder()
            .config(Config::default().with_capacity(2048))
            .durable(
                Arc::clone(&log) as Arc<dyn livereplay::durable::DurableLog>,
                Postcard,
            )
            .durable_options(DurableOptions::default().with_wake_on_dirty(wake_on_dirty))
            .build()?,
    );
    let options = StreamsOptions {
        long_poll_timeout: Duration::from_millis(long_poll_timeout_ms),
        ..StreamsOptions::default()
    };
    Ok((Arc::new(DurableStreams::new(store).options(options)), log))
}

fn app(streams: &Arc<DurableStreams>) -> axum::Router {
    axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok\n" }))
        .merge(Arc::clone(streams).router())
}

/// In-process appends seen by an HTTP long-poll reader, then HTTP appends
/// seen the same way, on one embedded server (redb, immediate).
async fn inproc(dir: &std::path::Path, count: usize) -> Result<(), Failure> {
    let mut results = serde_json::Map::new();
    // The store's default (the persister polls every `flush_interval`, an
    // in-process append does not wake it), then `wake_on_dirty`.
    for (wake_on_dirty, label) in [(false, "default"), (true, "wake_on_dirty")] {
        let figures = inproc_on(&dir.join(label), count, wake_on_dirty).await?;
        results.insert(label.into(), figures);
    }
    println!(
        "RESULT {}",
        json!({"workload": "inproc", "server": "livereplay (embedded)", "append_to_longpoll": results})
    );
    Ok(())
}

async fn inproc_on(
    dir: &std::path::Path,
    count: usize,
    wake_on_dirty: bool,
) -> Result<Value, Failure> {
    let (streams, _log) = embedded_service(dir, Durability::Immediate, 20_000, wake_on_dirty)?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let address = listener.local_addr()?;
    let router = app(&streams);
    tokio::spawn(async move { axum::serve(listener, router).await });
    let target = Target::parse(&format!("http://{address}/v1/stream"))?;

    let mut results = serde_json::Map::new();
    for in_process in [true, false] {
        let name = format!("inproc-{}-{}", std::process::id(), in_process);
        let mut writer = Conn::connect(&target).await?;
        let mut offset = writer.create(&target.stream(&name), OCTETS).await?;
        let key = streams.key("", &name)?;
        let payload = vec![b'x'; 100];
        let mut samples = Vec::with_capacity(count);
        for _ in 0..count {
            let mut reader = Conn::connect(&target).await?;
            let uri = format!("{}?offset={offset}&live=long-poll", target.stream(&name));
            let poll =
                tokio::spawn(
                    async move { reader.send(Method::GET, &uri, &[], Bytes::new()).await },
                );
            tokio::time::sleep(Duration::from_millis(2)).await;
            let started = Instant::now();
            if in_process {
                streams
                    .store()
                    .append(&key, Revision(0), StreamRecord::data(payload.clone()))?;
            } else {
                writer
                    .append(&target.stream(&name), Bytes::from(payload.clone()))
                    .await?;
            }
            let reply = poll.await??;
            samples.push(started.elapsed());
            if reply.status != 200 {
                return Err(format!("long-poll answered {}", reply.status).into());
            }
            offset = reply.next_offset()?;
        }
        let key = if in_process { "in_process" } else { "http" };
        results.insert(key.into(), latency_json(&mut samples));
    }
    Ok(Value::Object(results))
}

// ----------------------------------------------------------------- client

const OCTETS: &str = "application/octet-stream";

/// Where the streams are: the socket address and the path prefix.
#[derive(Clone)]
struct Target {
    address: SocketAddr,
    host: String,
    prefix: String,
}

impl Target {
    fn parse(base: &str) -> Result<Self, Failure> {
        let rest = base
            .strip_prefix("http://")
            .ok_or("--base must be an http:// URL")?;
        let (host, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let address: SocketAddr = host
            .parse()
            .map_err(|error| format!("--base: {host} is not IP:PORT ({error})"))?;
        Ok(Self {
            address,
            host: host.to_string(),
            prefix: format!("/{}", prefix.trim_end_matches('/')),
        })
    }

    fn stream(&self, name: &str) -> String {
        format!("{}/{name}", self.prefix)
    }
}

/// One HTTP/1 connection of one task, reconnected if the server closed it.
struct Conn {
    target: Target,
    sender: SendRequest<Full<Bytes>>,
}

struct Reply {
    status: u16,
    headers: hyper::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn next_offset(&self) -> Result<String, Failure> {
        Ok(self
            .headers
            .get("stream-next-offset")
            .ok_or("no Stream-Next-Offset in the response")?
            .to_str()?
            .to_string())
    }
}

impl Conn {
    async fn connect(target: &Target) -> Result<Self, Failure> {
        Ok(Self {
            target: target.clone(),
            sender: handshake(target).await?,
        })
    }

    async fn start(
        &mut self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Response<Incoming>, Failure> {
        if self.sender.is_closed() || self.sender.ready().await.is_err() {
            self.sender = handshake(&self.target).await?;
        }
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", &self.target.host);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Ok(self
            .sender
            .send_request(request.body(Full::new(body))?)
            .await?)
    }

    async fn send(
        &mut self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply, Failure> {
        let response = self.start(method, uri, headers, body).await?;
        let status = response.status().as_u16();
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status,
            headers: parts.headers,
            body,
        })
    }

    /// Creates the stream; returns its tail offset.
    async fn create(&mut self, uri: &str, content_type: &str) -> Result<String, Failure> {
        let reply = self
            .send(
                Method::PUT,
                uri,
                &[("content-type", content_type)],
                Bytes::new(),
            )
            .await?;
        if !(200..300).contains(&reply.status) {
            return Err(format!(
                "PUT {uri}: {} {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            )
            .into());
        }
        // The floor answers 204 without headers.
        Ok(reply.next_offset().unwrap_or_else(|_| "-1".into()))
    }

    async fn append(&mut self, uri: &str, body: Bytes) -> Result<Reply, Failure> {
        let reply = self
            .send(Method::POST, uri, &[("content-type", OCTETS)], body)
            .await?;
        if !(200..300).contains(&reply.status) {
            return Err(format!(
                "POST {uri}: {} {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            )
            .into());
        }
        Ok(reply)
    }
}

async fn handshake(target: &Target) -> Result<SendRequest<Full<Bytes>>, Failure> {
    let stream = TcpStream::connect(target.address).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

// -------------------------------------------------------------- workloads

async fn run(args: &RunArgs) -> Result<Value, Failure> {
    let target = Target::parse(&args.base)?;
    let tag = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    let mut result = match args.workload {
        Workload::AppendOne => append_one(args, &target, &tag).await?,
        Workload::Spread => spread(args, &target, &tag).await?,
        Workload::Longpoll => longpoll(args, &target, &tag).await?,
        Workload::Small => batches(args, &target, &tag, 1000, 100, 75).await?,
        Workload::Large => batches(args, &target, &tag, 50, 1 << 20, 15).await?,
        Workload::Sse => sse(args, &target, &tag).await?,
        Workload::Catchup => catchup(args, &target, &tag).await?,
    };
    if let Some(pid) = args.pid {
        result["rss_bytes"] = json!(rss_bytes(pid));
        result["open_fds"] = json!(open_fds(pid));
    }
    Ok(result)
}

/// Appends on one stream from `--connections` tasks for `--seconds`.
async fn append_one(args: &RunArgs, target: &Target, tag: &str) -> Result<Value, Failure> {
    let uri = target.stream(&format!("one-{tag}"));
    Conn::connect(target).await?.create(&uri, OCTETS).await?;
    let (samples, errors, seconds) =
        hammer(args, target, Arc::new(vec![uri]), Duration::from_secs(1)).await?;
    Ok(throughput_json("append-one", samples, errors, seconds))
}

/// Appends from `--connections` tasks over `streams` (task k's j-th
/// append goes to stream k + j * connections, wrapping) for `--seconds`
/// after `warmup`: the samples, the failed appends and the seconds measured.
async fn hammer(
    args: &RunArgs,
    target: &Target,
    streams: Arc<Vec<String>>,
    warmup: Duration,
) -> Result<(Vec<Duration>, Failed, f64), Failure> {
    let start = Instant::now() + warmup;
    let end = start + Duration::from_secs_f64(args.seconds);
    let body = Bytes::from(vec![b'x'; args.size]);
    let mut tasks = JoinSet::new();
    for task in 0..args.connections {
        let mut conn = Conn::connect(target).await?;
        let streams = Arc::clone(&streams);
        let body = body.clone();
        let step = args.connections;
        tasks.spawn(async move {
            let mut samples = Vec::new();
            let mut errors = 0usize;
            let mut first_error = None;
            let mut next = task;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let uri = &streams[next % streams.len()];
                next += step;
                let appended = conn.append(uri, body.clone()).await;
                if sent >= start {
                    match appended {
                        Ok(_) => samples.push(sent.elapsed()),
                        Err(error) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| error.to_string());
                        }
                    }
                }
            }
            (samples, errors, first_error)
        });
    }
    let mut samples = Vec::new();
    let mut errors = Failed::default();
    while let Some(done) = tasks.join_next().await {
        let (some, failed, first) = done?;
        samples.extend(some);
        errors.count += failed;
        errors.first = errors.first.or(first);
    }
    Ok((samples, errors, args.seconds))
}

/// Creates `--streams` streams (for at most `--create-seconds`), then
/// appends over them; the server's RSS before, after creating and after
/// appending, and its descriptors.
async fn spread(args: &RunArgs, target: &Target, tag: &str) -> Result<Value, Failure> {
    let rss_before = args.pid.map(rss_bytes);
    let created_at = Instant::now();
    let deadline = created_at + Duration::from_secs_f64(args.create_seconds);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..args.connections {
        let mut conn = Conn::connect(target).await?;
        let next = Arc::clone(&next);
        let total = args.streams;
        let target = target.clone();
        let tag = tag.to_string();
        tasks.spawn(async move {
            let mut made = Vec::new();
            loop {
                // Relaxed: a ticket counter; nothing else is published by it.
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= total || Instant::now() >= deadline {
                    break;
                }
                let uri = target.stream(&format!("spread-{tag}-{index}"));
                if conn.create(&uri, OCTETS).await.is_ok() {
                    made.push(uri);
                }
            }
            made
        });
    }
    let mut streams = Vec::with_capacity(args.streams);
    while let Some(made) = tasks.join_next().await {
        streams.extend(made?);
    }
    let create_seconds = created_at.elapsed().as_secs_f64();
    if streams.is_empty() {
        return Err("no stream could be created".into());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_created = args.pid.map(rss_bytes);
    let fds_created = args.pid.map(open_fds);
    let created = streams.len();
    let (samples, errors, seconds) =
        hammer(args, target, Arc::new(streams), Duration::from_secs(1)).await?;
    let mut result = throughput_json("spread", samples, errors, seconds);
    result["streams_asked"] = json!(args.streams);
    result["streams"] = json!(created);
    result["creates_per_s"] = json!(created as f64 / create_seconds);
    if let (Some(before), Some(after)) = (rss_before, rss_created) {
        result["rss_idle_per_stream"] = json!((after as f64 - before as f64) / created as f64);
        result["rss_after_create"] = json!(after);
        result["open_fds_after_create"] = json!(fds_created);
    }
    Ok(result)
}

/// Upstream figure 1: a long-poll waits at the tail, an append is sent,
/// and the time from the append's start to the reader's response is
/// taken; `--iterations` x 20 rounds.
async fn longpoll(args: &RunArgs, target: &Target, tag: &str) -> Result<Value, Failure> {
    let uri = target.stream(&format!("lp-{tag}"));
    let mut writer = Conn::connect(target).await?;
    let mut offset = writer.create(&uri, OCTETS).await?;
    let mut reader = Some(Conn::connect(target).await?);
    let body = Bytes::from(vec![b'x'; 100]);
    let mut samples = Vec::new();
    for round in 0..args.iterations * 20 {
        let mut conn = reader.take().ok_or("reader lost")?;
        let poll_uri = format!("{uri}?offset={offset}&live=long-poll");
        let poll = tokio::spawn(async move {
            let reply = conn.send(Method::GET, &poll_uri, &[], Bytes::new()).await;
            (conn, reply)
        });
        tokio::time::sleep(Duration::from_millis(2)).await;
        let started = Instant::now();
        writer.append(&uri, body.clone()).await?;
        let (conn, reply) = poll.await?;
        let elapsed = started.elapsed();
        let reply = reply?;
        reader = Some(conn);
        if reply.status != 200 || reply.body.is_empty() {
            return Err(format!(
                "long-poll answered {} with {} bytes",
                reply.status,
                reply.body.len()
            )
            .into());
        }
        offset = reply.next_offset()?;
        // The first round warms the connections up.
        if round > 0 {
            samples.push(elapsed);
        }
    }
    Ok(json!({"workload": "longpoll", "rtt": latency_json(&mut samples)}))
}

/// Upstream figures 2 and 3: `count` appends of `size` bytes on a fresh
/// stream, `batch` at a time (each batch waits for all of its appends),
/// repeated `--iterations` times: messages per second of each repetition.
async fn batches(
    args: &RunArgs,
    target: &Target,
    tag: &str,
    count: usize,
    size: usize,
    batch: usize,
) -> Result<Value, Failure> {
    let body = Bytes::from(vec![42u8; size]);
    let mut conns = Vec::new();
    for _ in 0..batch {
        conns.push(Conn::connect(target).await?);
    }
    let mut rates = Vec::new();
    for iteration in 0..args.iterations {
        let uri = Arc::new(target.stream(&format!("batch-{tag}-{size}-{iteration}")));
        conns[0].create(&uri, OCTETS).await?;
        let started = Instant::now();
        let mut sent = 0;
        while sent < count {
            let now = batch.min(count - sent);
            let mut tasks = JoinSet::new();
            for mut conn in conns.drain(..now) {
                let uri = Arc::clone(&uri);
                let body = body.clone();
                tasks.spawn(async move {
                    let result = conn.append(&uri, body).await.map(|_| ());
                    (conn, result)
                });
            }
            while let Some(done) = tasks.join_next().await {
                let (conn, result) = done?;
                result?;
                conns.push(conn);
            }
            sent += now;
        }
        rates.push(count as f64 / started.elapsed().as_secs_f64());
    }
    let name = if size == 100 { "small" } else { "large" };
    Ok(
        json!({"workload": name, "msgs_per_s": rates, "median_msgs_per_s": median(&mut rates.clone())}),
    )
}

/// `--readers` SSE readers on one text stream; `--messages` appends, 20 ms
/// apart, each carrying its number; for each, the time from its send to
/// its arrival at the last reader.
async fn sse(args: &RunArgs, target: &Target, tag: &str) -> Result<Value, Failure> {
    let uri = target.stream(&format!("sse-{tag}"));
    let mut writer = Conn::connect(target).await?;
    writer.create(&uri, "text/plain").await?;
    let connected = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let messages = args.messages;
    // Set when the readers have had their time after the last append.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut readers = JoinSet::new();
    let mut refused = 0usize;
    for _ in 0..args.readers {
        // Connected one at a time: a thousand connects at once overflow a
        // listen backlog (Node's is 511) and get reset.
        let Ok(mut conn) = Conn::connect(target).await else {
            refused += 1;
            continue;
        };
        let connected = Arc::clone(&connected);
        let finished = Arc::clone(&finished);
        let mut stopped = stopped.clone();
        let uri = format!("{uri}?offset=-1&live=sse");
        readers.spawn(async move {
            let mut arrivals: Vec<Option<Instant>> = vec![None; messages];
            let response = conn.start(Method::GET, &uri, &[], Bytes::new()).await?;
            if response.status() != 200 {
                return Err::<_, Failure>(format!("SSE answered {}", response.status()).into());
            }
            // Relaxed: a count the appender polls; no data rides on it.
            connected.fetch_add(1, Ordering::Relaxed);
            let mut body = response.into_body();
            let mut pending: Vec<u8> = Vec::new();
            let mut seen = 0;
            while seen < messages {
                let frame = tokio::select! {
                    frame = body.frame() => frame,
                    _ = stopped.changed() => break,
                };
                let Some(frame) = frame else { break };
                let Ok(data) = frame?.into_data() else {
                    continue;
                };
                let now = Instant::now();
                pending.extend_from_slice(&data);
                let Some(end) = pending.iter().rposition(|&byte| byte == b'\n') else {
                    continue;
                };
                for number in markers(&pending[..end]) {
                    if let Some(slot) = arrivals.get_mut(number) {
                        if slot.is_none() {
                            *slot = Some(now);
                            seen += 1;
                        }
                    }
                }
                pending.drain(..=end);
            }
            // Relaxed: a count the appender polls; the arrivals travel
            // through the task's result.
            finished.fetch_add(1, Ordering::Relaxed);
            Ok(arrivals)
        });
    }
    let waiting = Instant::now() + Duration::from_secs(30);
    while connected.load(Ordering::Relaxed) < args.readers && Instant::now() < waiting {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let readers_connected = connected.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A fresh connection: the first may have idled past the server's
    // keep-alive while the readers connected.
    let mut writer = Conn::connect(target).await?;
    let mut sent_at = Vec::with_capacity(messages);
    for number in 0..messages {
        let mut body = format!("seq={number:06};").into_bytes();
        body.resize(100, b'x');
        sent_at.push(Instant::now());
        writer
            .send(
                Method::POST,
                &uri,
                &[("content-type", "text/plain")],
                Bytes::from(body),
            )
            .await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Up to 15 s more for every reader to see every message, then stop.
    let grace = Instant::now() + Duration::from_secs(15);
    while finished.load(Ordering::Relaxed) < readers.len() && Instant::now() < grace {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop.send(true);
    let mut last: Vec<Option<Instant>> = vec![None; messages];
    let mut all = Vec::new();
    let mut missing = 0usize;
    let mut failed = 0usize;
    while let Some(done) = readers.join_next().await {
        let Ok(arrivals) = done? else {
            failed += 1;
            continue;
        };
        for (number, arrival) in arrivals.into_iter().enumerate() {
            match arrival {
                Some(at) => {
                    all.push(at.saturating_duration_since(sent_at[number]));
                    last[number] = Some(last[number].map_or(at, |was: Instant| was.max(at)));
                }
                None => missing += 1,
            }
        }
    }
    let mut to_last: Vec<Duration> = last
        .iter()
        .zip(&sent_at)
        .filter_map(|(at, sent)| at.map(|at| at.saturating_duration_since(*sent)))
        .collect();
    Ok(json!({
        "workload": "sse",
        "readers": args.readers,
        "readers_connected": readers_connected,
        "readers_failed": failed + refused,
        "deliveries_missing": missing,
        "to_last_reader": latency_json(&mut to_last),
        "to_each_reader": latency_json(&mut all),
    }))
}

/// The numbers after each `seq=` in `text`.
fn markers(text: &[u8]) -> Vec<usize> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(offset) = text[at..].windows(4).position(|window| window == b"seq=") {
        let digits = at + offset + 4;
        if let Some(number) = text
            .get(digits..digits + 6)
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .and_then(|text| text.parse().ok())
        {
            found.push(number);
        }
        at = digits;
    }
    found
}

/// Fills a stream with `--catchup-mib` MiB in 1 MiB appends, then reads
/// it from the start, following `Stream-Next-Offset` until
/// `Stream-Up-To-Date`, `--iterations` times.
async fn catchup(args: &RunArgs, target: &Target, tag: &str) -> Result<Value, Failure> {
    let uri = target.stream(&format!("catchup-{tag}"));
    let mut conn = Conn::connect(target).await?;
    conn.create(&uri, OCTETS).await?;
    let chunk = Bytes::from(vec![42u8; 1 << 20]);
    for _ in 0..args.catchup_mib {
        conn.append(&uri, chunk.clone()).await?;
    }
    let expected = (args.catchup_mib as u64) << 20;
    let mut rates = Vec::new();
    let mut requests = 0;
    for _ in 0..args.iterations {
        let started = Instant::now();
        let mut offset = "-1".to_string();
        let mut bytes = 0u64;
        requests = 0;
        loop {
            let reply = conn
                .send(
                    Method::GET,
                    &format!("{uri}?offset={offset}"),
                    &[],
                    Bytes::new(),
                )
                .await?;
            requests += 1;
            if reply.status != 200 {
                return Err(format!("catch-up answered {}", reply.status).into());
            }
            bytes += reply.body.len() as u64;
            offset = reply.next_offset()?;
            let done = reply
                .headers
                .get("stream-up-to-date")
                .is_some_and(|value| value == "true");
            if done || reply.body.is_empty() || requests > 100_000 {
                break;
            }
        }
        if bytes != expected {
            return Err(format!("catch-up read {bytes} bytes, {expected} were appended").into());
        }
        rates.push(bytes as f64 / started.elapsed().as_secs_f64() / (1u64 << 30) as f64);
    }
    Ok(
        json!({"workload": "catchup", "gib_per_s": rates, "median_gib_per_s": median(&mut rates.clone()), "requests": requests}),
    )
}

// ---------------------------------------------------------------- figures

/// Appends that failed in the measured window, and the first one's error.
#[derive(Default)]
struct Failed {
    count: usize,
    first: Option<String>,
}

fn throughput_json(name: &str, mut samples: Vec<Duration>, errors: Failed, seconds: f64) -> Value {
    let count = samples.len();
    json!({
        "workload": name,
        "appends": count,
        "errors": errors.count,
        "first_error": errors.first,
        "appends_per_s": count as f64 / seconds,
        "latency": latency_json(&mut samples),
    })
}

fn latency_json(samples: &mut [Duration]) -> Value {
    samples.sort_unstable();
    let at = |quantile: f64| {
        if samples.is_empty() {
            return Value::Null;
        }
        let index = ((samples.len() as f64 * quantile) as usize).min(samples.len() - 1);
        json!(samples[index].as_secs_f64() * 1e3)
    };
    json!({"count": samples.len(), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1.0)})
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The process's resident set, from `/proc/PID/status` (0 if unreadable).
fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| {
                    value
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(0, |kib| kib * 1024)
}

/// The process's open descriptors, from `/proc/PID/fd` (0 if unreadable).
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |entries| entries.count())
}
