//! The Durable Streams module where the conformance suite does not look:
//! the in-process writer seen by HTTP readers, a restart over the same redb
//! file, deletion's new life, durable-only reads, bad input, and the
//! `livereplay serve` binary killed with SIGKILL and started again.
//!
//! Requests go through the router in process (`tower::ServiceExt::oneshot`),
//! or to the real binary on a free loopback port, stopped by its pid; every
//! wait is bounded by a timeout, and each test's redb file lives in its own
//! temporary directory, removed at the end.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::Router;
use livereplay::durable::{MemoryLog, RedbLog};
use livereplay::streams::{CloseReason, DurableStreams, StreamRecord, StreamsOptions};
use livereplay::{DurableOptions, Postcard, ReplayStore, Revision};
use tower::ServiceExt;

#[path = "support/ds_server.rs"]
mod ds_server;

use ds_server::{Reply, Served, TempDir, REQUEST_TIMEOUT};

fn options() -> StreamsOptions {
    StreamsOptions {
        long_poll_timeout: Duration::from_secs(5),
        ..StreamsOptions::default()
    }
}

/// A store over a redb log in `dir`.
fn redb_store(dir: &TempDir) -> Arc<ReplayStore<StreamRecord>> {
    let log = Arc::new(RedbLog::open(dir.0.join("streams.redb")).unwrap());
    Arc::new(
        ReplayStore::<StreamRecord>::builder()
            .durable(log, Postcard)
            .build()
            .unwrap(),
    )
}

/// A service over a redb log in `dir`.
fn redb_service(dir: &TempDir) -> Arc<DurableStreams> {
    Arc::new(DurableStreams::new(redb_store(dir)).options(options()))
}

async fn reply(response: Response<Body>) -> Reply {
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .unwrap()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = tokio::time::timeout(REQUEST_TIMEOUT, app.clone().oneshot(request))
        .await
        .expect("the request finished in time")
        .unwrap();
    reply(response).await
}

fn request(method: &str, uri: &str, headers: &[(&str, &str)], body: &str) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::from(body.to_string())).unwrap()
}

/// The status of one request's answer.
async fn status(
    app: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> StatusCode {
    send(app, request(method, uri, headers, body)).await.status
}

const TEXT: (&str, &str) = ("content-type", "text/plain");

/// From a claim's answer, the `done` ack of its first stream at that
/// stream's tail: the tail, the ack's body and its `Authorization` value.
fn done_ack(claimed: &serde_json::Value, stream: &str) -> (String, String, String) {
    let tail = claimed["streams"][0]["tail_offset"]
        .as_str()
        .unwrap()
        .to_string();
    let ack = serde_json::json!({
        "wake_id": claimed["wake_id"], "generation": claimed["generation"],
        "acks": [{"stream": stream, "offset": tail}], "done": true,
    });
    let token = format!("Bearer {}", claimed["token"].as_str().unwrap());
    (tail, ack.to_string(), token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_append_wakes_an_http_long_poll() {
    let dir = TempDir::new("inproc");
    let service = redb_service(&dir);
    let app = Arc::clone(&service).router();
    let created = send(&app, request("PUT", "/v1/stream/turn", &[TEXT], "hello")).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let tail = created.next_offset();

    let poll = tokio::spawn({
        let app = app.clone();
        let uri = format!("/v1/stream/turn?offset={tail}&live=long-poll");
        async move { send(&app, request("GET", &uri, &[], "")).await }
    });
    // The runtime's turn loop: the store's own append, no HTTP, no await.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let key = service.key("", "turn").unwrap();
    service
        .store()
        .append(&key, Revision(0), StreamRecord::data(" world"))
        .unwrap();

    let polled = poll.await.unwrap();
    assert_eq!(polled.status, StatusCode::OK);
    assert_eq!(polled.text(), " world");
    assert!(polled.next_offset() > tail, "offsets grow");
    assert_eq!(polled.header("stream-up-to-date"), Some("true"));
    assert!(polled.header("stream-cursor").is_some());

    let all = send(&app, request("GET", "/v1/stream/turn", &[], "")).await;
    assert_eq!(all.text(), "hello world");
    assert_eq!(all.next_offset(), polled.next_offset());

    // The turn fails: the runtime closes the stream with its reason.
    let waiting = tokio::spawn({
        let app = app.clone();
        let uri = format!(
            "/v1/stream/turn?offset={}&live=long-poll",
            all.next_offset()
        );
        async move { send(&app, request("GET", &uri, &[], "")).await }
    });
    let final_offset = service.close("", "turn", CloseReason::Error).await.unwrap();
    assert_eq!(
        final_offset.to_string(),
        all.next_offset(),
        "closing appends no data"
    );
    let eof = waiting.await.unwrap();
    assert_eq!(eof.status, StatusCode::NO_CONTENT);
    assert_eq!(eof.header("stream-closed"), Some("true"));
    let late = send(&app, request("POST", "/v1/stream/turn", &[TEXT], "!")).await;
    assert_eq!(
        late.status,
        StatusCode::CONFLICT,
        "HTTP writers see the runtime's close"
    );
    assert_eq!(
        service.close("", "turn", CloseReason::Done).await,
        Ok(final_offset)
    );
}

/// A runtime's `Turn` on a stream's session that ends without finishing
/// (dropped: a panic, a cancelled task) or whose process dies (the next
/// process restores the session closed `Interrupted`) closes the stream
/// for HTTP readers too: a long-poll at the tail ends with
/// `Stream-Closed`, a catch-up read says so, and an HTTP append is refused
/// as an append to a closed stream. The store's closure becomes the
/// stream's own closing record (module `streams`: closure is the store's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_that_ends_unfinished_closes_its_stream_for_http_readers() {
    let dir = TempDir::new("turn-closes");
    let tail_of = |reply: &Reply| reply.next_offset();
    let long_poll = |app: &Router, tail: String| {
        let app = app.clone();
        let uri = format!("/v1/stream/turn?offset={tail}&live=long-poll");
        tokio::spawn(async move { send(&app, request("GET", &uri, &[], "")).await })
    };
    let killed_key;
    {
        let service = redb_service(&dir);
        let app = Arc::clone(&service).router();
        for path in ["/v1/stream/turn", "/v1/stream/killed"] {
            let created = send(&app, request("PUT", path, &[TEXT], "a")).await;
            assert_eq!(created.status, StatusCode::CREATED);
        }
        let store = Arc::clone(service.store());
        let key = service.key("", "turn").unwrap();
        let turn = store.session(&key).unwrap().into_turn();
        let appended = turn.append(Revision(0), StreamRecord::data("b")).unwrap();
        store
            .wait_durable(&key, appended.position(), REQUEST_TIMEOUT)
            .unwrap();
        let read = send(&app, request("GET", "/v1/stream/turn", &[], "")).await;
        assert_eq!(read.text(), "ab");
        let waiting = long_poll(&app, tail_of(&read));
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(turn);
        let eof = waiting.await.unwrap();
        assert_eq!(eof.status, StatusCode::NO_CONTENT);
        assert_eq!(eof.header("stream-closed"), Some("true"));
        assert_eq!(eof.next_offset(), tail_of(&read), "closing adds no data");
        let late = send(&app, request("POST", "/v1/stream/turn", &[TEXT], "!")).await;
        assert_eq!(late.status, StatusCode::CONFLICT);
        assert_eq!(late.header("stream-closed"), Some("true"));

        // Closed through the store with no reader about: the next HTTP
        // append is the one that finds it.
        send(&app, request("PUT", "/v1/stream/direct", &[TEXT], "a")).await;
        let direct = service.key("", "direct").unwrap();
        store
            .close_session(&direct, CloseReason::Cancelled)
            .unwrap();
        let late = send(&app, request("POST", "/v1/stream/direct", &[TEXT], "!")).await;
        assert_eq!(late.status, StatusCode::CONFLICT);
        assert_eq!(late.header("stream-closed"), Some("true"));
        let read = send(&app, request("GET", "/v1/stream/direct", &[], "")).await;
        assert_eq!(
            (read.text().as_str(), read.header("stream-closed")),
            ("a", Some("true"))
        );
        // An HTTP close of a stream the store closed first: done at once,
        // and the store's reason stays (the first close wins).
        send(&app, request("PUT", "/v1/stream/first", &[TEXT], "a")).await;
        let first = service.key("", "first").unwrap();
        store.close_session(&first, CloseReason::Cancelled).unwrap();
        let close = [("stream-closed", "true")];
        let closed = send(&app, request("POST", "/v1/stream/first", &close, "")).await;
        assert_eq!(closed.status, StatusCode::NO_CONTENT);
        assert_eq!(closed.header("stream-closed"), Some("true"));
        assert_eq!(
            store.closure(&first).map(|c| c.reason),
            Some(CloseReason::Cancelled)
        );

        // The process dies with a turn open: the store goes first, so the
        // turn's own close is refused and nothing closes it here.
        killed_key = service.key("", "killed").unwrap();
        let turn = store.session(&killed_key).unwrap().into_turn();
        let appended = turn.append(Revision(0), StreamRecord::data("b")).unwrap();
        store
            .wait_durable(&killed_key, appended.position(), REQUEST_TIMEOUT)
            .unwrap();
        drop((app, service, store));
        drop(turn);
    }
    let service = redb_service(&dir);
    let app = Arc::clone(&service).router();
    let read = send(&app, request("GET", "/v1/stream/killed", &[], "")).await;
    assert_eq!(read.text(), "ab");
    let tail = tail_of(&read);
    let uri = format!("/v1/stream/killed?offset={tail}&live=long-poll");
    let eof = send(&app, request("GET", &uri, &[], "")).await;
    assert_eq!(eof.status, StatusCode::NO_CONTENT);
    assert_eq!(eof.header("stream-closed"), Some("true"));
    let read = send(&app, request("GET", "/v1/stream/killed", &[], "")).await;
    assert_eq!(
        (read.text().as_str(), read.header("stream-closed")),
        ("ab", Some("true"))
    );
    assert_eq!(
        service.store().closure(&killed_key).map(|c| c.reason),
        Some(CloseReason::Interrupted)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_data_closure_producers_and_offsets() {
    let dir = TempDir::new("restart");
    let producer = |seq: &'static str| {
        [
            ("content-type", "text/plain"),
            ("producer-id", "writer-1"),
            ("producer-epoch", "3"),
            ("producer-seq", seq),
        ]
    };
    let (open_tail, closed_tail, etag) = {
        let service = redb_service(&dir);
        let app = Arc::clone(&service).router();
        for path in ["/v1/stream/open", "/v1/stream/closed"] {
            assert_eq!(
                status(&app, "PUT", path, &[TEXT], "").await,
                StatusCode::CREATED
            );
            let first = send(&app, request("POST", path, &producer("0"), "a")).await;
            assert_eq!(first.status, StatusCode::OK);
            let second = send(&app, request("POST", path, &producer("1"), "b")).await;
            assert_eq!(second.status, StatusCode::OK);
            assert_eq!(second.header("producer-seq"), Some("1"));
        }
        let closing = [TEXT, ("stream-closed", "true")];
        let closed = send(&app, request("POST", "/v1/stream/closed", &closing, "c")).await;
        assert_eq!(closed.status, StatusCode::NO_CONTENT);
        assert_eq!(closed.header("stream-closed"), Some("true"));
        let open = send(&app, request("HEAD", "/v1/stream/open", &[], "")).await;
        let read = send(&app, request("GET", "/v1/stream/closed", &[], "")).await;
        (
            open.next_offset(),
            closed.next_offset(),
            read.header("etag").unwrap().to_string(),
        )
        // The service, its router and the store drop here: the persister
        // writes what is left and the redb file is let go.
    };

    let service = redb_service(&dir);
    let app = Arc::clone(&service).router();
    // Data and offsets as before.
    let closed = send(&app, request("GET", "/v1/stream/closed", &[], "")).await;
    assert_eq!(closed.status, StatusCode::OK);
    assert_eq!(closed.text(), "abc");
    assert_eq!(closed.next_offset(), closed_tail);
    assert_eq!(closed.header("stream-closed"), Some("true"));
    assert_eq!(
        closed.header("etag"),
        Some(etag.as_str()),
        "same data, same ETag"
    );
    // Closure is durable: appends are refused, with the final offset.
    let refused = send(&app, request("POST", "/v1/stream/closed", &[TEXT], "d")).await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert_eq!(refused.header("stream-closed"), Some("true"));
    assert_eq!(refused.next_offset(), closed_tail);
    // Producer state is durable: a retry is a duplicate, the next is new.
    let retry = send(
        &app,
        request("POST", "/v1/stream/open", &producer("1"), "b"),
    )
    .await;
    assert_eq!(retry.status, StatusCode::NO_CONTENT);
    assert_eq!(retry.header("producer-seq"), Some("1"));
    let gap = send(
        &app,
        request("POST", "/v1/stream/open", &producer("3"), "x"),
    )
    .await;
    assert_eq!(gap.status, StatusCode::CONFLICT);
    assert_eq!(gap.header("producer-expected-seq"), Some("2"));
    let next = send(
        &app,
        request("POST", "/v1/stream/open", &producer("2"), "c"),
    )
    .await;
    assert_eq!(next.status, StatusCode::OK);
    assert!(
        next.next_offset() > open_tail,
        "offsets grow across the restart"
    );
    // A reader that kept its offset from before the restart resumes exactly.
    let resumed = send(
        &app,
        request(
            "GET",
            &format!("/v1/stream/open?offset={open_tail}"),
            &[],
            "",
        ),
    )
    .await;
    assert_eq!(resumed.text(), "c");
    let all = send(&app, request("GET", "/v1/stream/open", &[], "")).await;
    assert_eq!(all.text(), "abc", "the duplicate was not stored twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_created_again_is_a_new_life_and_old_offsets_are_gone() {
    let dir = TempDir::new("delete");
    let service = redb_service(&dir);
    let app = Arc::clone(&service).router();
    let old = send(&app, request("PUT", "/v1/stream/s", &[TEXT], "old")).await;
    let old_tail = old.next_offset();
    assert_eq!(
        status(&app, "DELETE", "/v1/stream/s", &[], "").await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        status(&app, "GET", "/v1/stream/s", &[], "").await,
        StatusCode::NOT_FOUND
    );
    let new = send(&app, request("PUT", "/v1/stream/s", &[TEXT], "new")).await;
    assert_eq!(new.status, StatusCode::CREATED);
    assert!(
        new.next_offset() > old_tail,
        "a new life's offsets sort after the old one's"
    );
    let read = send(&app, request("GET", "/v1/stream/s", &[], "")).await;
    assert_eq!(read.text(), "new");
    let stale = send(
        &app,
        request("GET", &format!("/v1/stream/s?offset={old_tail}"), &[], ""),
    )
    .await;
    assert_eq!(stale.status, StatusCode::GONE);
    assert!(stale.text().contains("older life"), "{}", stale.text());
}

/// A stream's closure is its session's (CONTRACT.md section 11: every
/// reader, the embedded API included, sees the end; no append is accepted
/// after it): the in-process writer is refused after an HTTP close, the
/// store's catch-up ends with the closure and its reason, a fork of the
/// closed stream and a delete (bookkeeping on a sealed session) still
/// work, the source stays sealed, and a stream created again at the URL
/// is open to the in-process writer. Across a restart too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stream_is_a_closed_session_for_the_embedded_api() {
    use livereplay::{Cursor, Error, NextTimeoutError, Refusal};
    let dir = TempDir::new("sealed");
    let key;
    {
        let service = redb_service(&dir);
        let app = Arc::clone(&service).router();
        key = service.key("", "turn").unwrap();
        let store = Arc::clone(service.store());
        send(&app, request("PUT", "/v1/stream/turn", &[TEXT], "a")).await;
        store
            .append(&key, Revision(0), StreamRecord::data("b"))
            .unwrap();
        let closed = [TEXT, ("stream-closed", "true")];
        let last = send(&app, request("POST", "/v1/stream/turn", &closed, "c")).await;
        assert_eq!(last.status, StatusCode::NO_CONTENT);
        // The turn loop, late: refused, naming the closure.
        let refused = store.append(&key, Revision(0), StreamRecord::data("late"));
        let closure = match refused {
            Err(Error::Refused(Refusal::SessionClosed { closure })) => closure,
            other => panic!("expected SessionClosed, got {other:?}"),
        };
        assert_eq!(closure.reason, CloseReason::Done);
        // The embedded reader: the three records, then the end.
        let mut reader = store.catch_up(&Cursor::start(key.clone())).unwrap();
        let mut records = 0;
        let ended = loop {
            match reader.next_timeout(REQUEST_TIMEOUT) {
                Ok(_) => records += 1,
                Err(NextTimeoutError::Closed(closure)) => break closure,
                Err(other) => panic!("expected the records, then the closure: {other}"),
            }
        };
        assert_eq!((records, ended), (3, closure));
        // A fork of the closed stream: bookkeeping on the sealed source.
        let fork = [TEXT, ("stream-forked-from", "/v1/stream/turn")];
        assert_eq!(
            status(&app, "PUT", "/v1/stream/fork", &fork, "").await,
            StatusCode::CREATED
        );
        let forked = send(&app, request("GET", "/v1/stream/fork", &[], "")).await;
        assert_eq!(forked.text(), "abc");
        assert!(
            store.closure(&key).is_some(),
            "the source is sealed again after its fork reference"
        );
        assert!(store
            .append(&key, Revision(0), StreamRecord::data("late"))
            .is_err());
    }
    // After a restart: still sealed, with the reason the record gave.
    let service = redb_service(&dir);
    let app = Arc::clone(&service).router();
    let store = Arc::clone(service.store());
    assert!(matches!(
        store.append(&key, Revision(0), StreamRecord::data("late")),
        Err(Error::Refused(Refusal::SessionClosed { .. }))
    ));
    let read = send(&app, request("GET", "/v1/stream/turn", &[], "")).await;
    assert_eq!(
        (read.text().as_str(), read.header("stream-closed")),
        ("abc", Some("true"))
    );
    // The runtime closes a stream with its own reason.
    send(&app, request("PUT", "/v1/stream/other", &[TEXT], "x")).await;
    service
        .close("", "other", CloseReason::Cancelled)
        .await
        .unwrap();
    let other = service.key("", "other").unwrap();
    assert_eq!(
        store.closure(&other).map(|closure| closure.reason),
        Some(CloseReason::Cancelled)
    );
    // Deleted (the fork is gone first) and created again: open.
    assert_eq!(
        status(&app, "DELETE", "/v1/stream/fork", &[], "").await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        status(&app, "DELETE", "/v1/stream/turn", &[], "").await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        status(&app, "PUT", "/v1/stream/turn", &[TEXT], "new").await,
        StatusCode::CREATED
    );
    let appended = store
        .append(&key, Revision(0), StreamRecord::data(" life"))
        .unwrap();
    // HTTP readers are sent durable records only.
    store
        .wait_durable(&key, appended.position(), REQUEST_TIMEOUT)
        .unwrap();
    let read = send(&app, request("GET", "/v1/stream/turn", &[], "")).await;
    assert_eq!(read.text(), "new life");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_keeps_its_soft_deleted_source_readable_across_a_restart() {
    let dir = TempDir::new("fork");
    let fork_point = {
        let service = redb_service(&dir);
        let app = Arc::clone(&service).router();
        let created = send(&app, request("PUT", "/v1/stream/src", &[TEXT], "ab")).await;
        let at = created.next_offset();
        send(&app, request("POST", "/v1/stream/src", &[TEXT], "-later")).await;
        let fork = [
            TEXT,
            ("stream-forked-from", "/v1/stream/src"),
            ("stream-fork-offset", &at),
        ];
        assert_eq!(
            status(&app, "PUT", "/v1/stream/fork", &fork, "").await,
            StatusCode::CREATED
        );
        let own = send(&app, request("POST", "/v1/stream/fork", &[TEXT], "cd")).await;
        assert!(
            own.next_offset() > at,
            "the fork's offsets continue after its fork point"
        );
        // Deleted while the fork inherits from it: soft-deleted.
        assert_eq!(
            status(&app, "DELETE", "/v1/stream/src", &[], "").await,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            status(&app, "HEAD", "/v1/stream/src", &[], "").await,
            StatusCode::GONE
        );
        at
    };

    let service = redb_service(&dir);
    let app = Arc::clone(&service).router();
    // The fork count and the soft delete are in the source's log.
    assert_eq!(
        status(&app, "GET", "/v1/stream/src", &[], "").await,
        StatusCode::GONE
    );
    assert_eq!(
        status(&app, "PUT", "/v1/stream/src", &[TEXT], "").await,
        StatusCode::CONFLICT
    );
    let fork = send(&app, request("GET", "/v1/stream/fork", &[], "")).await;
    assert_eq!(
        fork.text(),
        "abcd",
        "inherited data, then the fork's own; never the source's later append"
    );
    let own = send(
        &app,
        request(
            "GET",
            &format!("/v1/stream/fork?offset={fork_point}"),
            &[],
            "",
        ),
    )
    .await;
    assert_eq!(
        own.text(),
        "cd",
        "the source's offset at the fork point reads the fork's own data"
    );
    // The last fork ends: the source goes with it.
    assert_eq!(
        status(&app, "DELETE", "/v1/stream/fork", &[], "").await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        status(&app, "HEAD", "/v1/stream/src", &[], "").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status(&app, "PUT", "/v1/stream/src", &[TEXT], "new").await,
        StatusCode::CREATED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_deletes_expired_streams_nobody_touches() {
    let dir = TempDir::new("sweep");
    let service = redb_service(&dir);
    let app = Arc::clone(&service).router();
    let soon = ("stream-expires-at", "2000-01-01T00:00:00Z");
    // Created already expired: it lives until something looks at it.
    assert_eq!(
        status(&app, "PUT", "/v1/stream/old", &[TEXT, soon], "x").await,
        StatusCode::CREATED
    );
    assert_eq!(
        status(&app, "PUT", "/v1/stream/kept", &[TEXT], "y").await,
        StatusCode::CREATED
    );
    assert_eq!(service.sweep_expired().await, Ok(1));
    assert_eq!(
        status(&app, "HEAD", "/v1/stream/old", &[], "").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        send(&app, request("GET", "/v1/stream/kept", &[], ""))
            .await
            .text(),
        "y"
    );
    assert_eq!(service.sweep_expired().await, Ok(0));
}

/// A store at its session bound refuses a new stream with `503` and says
/// which bound, never that the stream does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_refuses_a_new_stream_saying_why() {
    let dir = TempDir::new("full");
    let log = Arc::new(RedbLog::open(dir.0.join("streams.redb")).unwrap());
    let store = Arc::new(
        ReplayStore::<StreamRecord>::builder()
            .config(livereplay::Config::default().with_max_sessions(3))
            .durable(log, Postcard)
            .build()
            .unwrap(),
    );
    let service = Arc::new(DurableStreams::new(store).options(options()));
    let app = Arc::clone(&service).router();
    for n in 0..3 {
        assert_eq!(
            status(&app, "PUT", &format!("/v1/stream/s{n}"), &[TEXT], "x").await,
            StatusCode::CREATED
        );
    }
    let refused = send(&app, request("PUT", "/v1/stream/s3", &[TEXT], "")).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.text()
    );
    assert!(
        refused.text().contains("maximum of 3 sessions"),
        "{}",
        refused.text()
    );
    let append = send(&app, request("POST", "/v1/stream/s3", &[TEXT], "y")).await;
    assert_ne!(append.status, StatusCode::OK, "{}", append.text());
}

/// The cached protocol state of idle streams is let go, and folded from
/// the log again on the next request: producers, `Stream-Seq`, closure and
/// data come back the same; streams with a TTL stay cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_are_forgotten_and_folded_again_the_same() {
    let dir = TempDir::new("forget");
    let service = redb_service(&dir);
    let app = Arc::clone(&service).router();
    let producer = |seq: &'static str| {
        [
            TEXT,
            ("producer-id", "p"),
            ("producer-epoch", "3"),
            ("producer-seq", seq),
        ]
    };
    for n in 0..20 {
        let path = format!("/v1/stream/s{n}");
        assert_eq!(
            status(&app, "PUT", &path, &[TEXT], "").await,
            StatusCode::CREATED
        );
        assert_eq!(
            status(&app, "POST", &path, &producer("0"), "a").await,
            StatusCode::OK
        );
    }
    let with_seq = [TEXT, ("stream-seq", "0005")];
    assert_eq!(
        status(&app, "POST", "/v1/stream/s1", &with_seq, "b").await,
        StatusCode::NO_CONTENT
    );
    let closing = [TEXT, ("stream-closed", "true")];
    assert_eq!(
        status(&app, "POST", "/v1/stream/s2", &closing, "").await,
        StatusCode::NO_CONTENT
    );
    let ttl = [TEXT, ("stream-ttl", "3600")];
    assert_eq!(
        status(&app, "PUT", "/v1/stream/ttl", &ttl, "t").await,
        StatusCode::CREATED
    );
    assert_eq!(service.cached_streams(), 21);
    assert_eq!(
        service.forget_idle(Duration::from_secs(3600)),
        0,
        "nothing is idle yet"
    );
    assert_eq!(service.forget_idle(Duration::ZERO), 20);
    assert_eq!(service.cached_streams(), 1, "the stream with a TTL stays");

    // Folded again: the producer's retry is a duplicate, its next sequence
    // is accepted, a lower Stream-Seq is refused, the closed stream is
    // still closed, and the data is all there.
    assert_eq!(
        status(&app, "POST", "/v1/stream/s0", &producer("0"), "a").await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        status(&app, "POST", "/v1/stream/s0", &producer("1"), "c").await,
        StatusCode::OK
    );
    let lower = [TEXT, ("stream-seq", "0004")];
    assert_eq!(
        status(&app, "POST", "/v1/stream/s1", &lower, "x").await,
        StatusCode::CONFLICT
    );
    assert_eq!(
        status(&app, "POST", "/v1/stream/s2", &[TEXT], "x").await,
        StatusCode::CONFLICT
    );
    let s0 = send(&app, request("GET", "/v1/stream/s0?offset=-1", &[], "")).await;
    assert_eq!(s0.text(), "ac");
    let s1 = send(&app, request("GET", "/v1/stream/s1?offset=-1", &[], "")).await;
    assert_eq!(s1.text(), "ab");
    assert_eq!(service.cached_streams(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_their_cursors_and_the_signing_key_survive_a_restart() {
    let dir = TempDir::new("subscriptions");
    let json = ("content-type", "application/json");
    let subscription = r#"{"type":"pull-wake","pattern":"events/*","wake_stream":"wake/pool","lease_ttl_ms":1000}"#;
    let (kid, acked) = {
        let service = redb_service(&dir);
        let app = Arc::clone(&service).router();
        send(&app, request("PUT", "/v1/stream/wake/pool", &[json], "[]")).await;
        let created = send(
            &app,
            request(
                "PUT",
                "/v1/stream/__ds/subscriptions/s1",
                &[json],
                subscription,
            ),
        )
        .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
        send(
            &app,
            request("PUT", "/v1/stream/events/a", &[json], "{\"n\":1}"),
        )
        .await;
        // The append woke the subscription: an event in its wake stream.
        let wakes = send(&app, request("GET", "/v1/stream/wake/pool", &[], "")).await;
        assert!(
            wakes.text().contains("\"subscription_id\":\"s1\""),
            "{}",
            wakes.text()
        );
        let claim = send(
            &app,
            request(
                "POST",
                "/v1/stream/__ds/subscriptions/s1/claim",
                &[json],
                r#"{"worker":"w"}"#,
            ),
        )
        .await;
        assert_eq!(claim.status, StatusCode::OK);
        let claimed: serde_json::Value = serde_json::from_slice(&claim.body).unwrap();
        let (tail, ack, token) = done_ack(&claimed, "events/a");
        let acked = send(
            &app,
            request(
                "POST",
                "/v1/stream/__ds/subscriptions/s1/ack",
                &[json, ("authorization", &token)],
                &ack,
            ),
        )
        .await;
        assert_eq!(acked.status, StatusCode::OK);
        // The same ack again names a wake that is over: fenced.
        let stale = send(
            &app,
            request(
                "POST",
                "/v1/stream/__ds/subscriptions/s1/ack",
                &[json, ("authorization", &token)],
                &ack,
            ),
        )
        .await;
        assert_eq!(stale.status, StatusCode::CONFLICT);
        let jwks = send(&app, request("GET", "/v1/stream/__ds/jwks.json", &[], "")).await;
        let jwks: serde_json::Value = serde_json::from_slice(&jwks.body).unwrap();
        (jwks["keys"][0]["kid"].as_str().unwrap().to_string(), tail)
    };

    let service = redb_service(&dir);
    let app = Arc::clone(&service).router();
    // The restarted service finds the subscription through the tenants'
    // index, once: a second resume would deliver every wake twice.
    assert_eq!(service.resume_subscriptions().await.unwrap(), 1);
    assert_eq!(service.resume_subscriptions().await.unwrap(), 0);
    let got = send(
        &app,
        request("GET", "/v1/stream/__ds/subscriptions/s1", &[], ""),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    let got: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(got["streams"][0]["path"], "events/a");
    assert_eq!(
        got["streams"][0]["acked_offset"],
        acked.as_str(),
        "the cursor is durable"
    );
    let again = send(
        &app,
        request(
            "PUT",
            "/v1/stream/__ds/subscriptions/s1",
            &[json],
            subscription,
        ),
    )
    .await;
    assert_eq!(
        again.status,
        StatusCode::OK,
        "the configuration is durable: a re-confirmation"
    );
    let jwks = send(&app, request("GET", "/v1/stream/__ds/jwks.json", &[], "")).await;
    let jwks: serde_json::Value = serde_json::from_slice(&jwks.body).unwrap();
    assert_eq!(
        jwks["keys"][0]["kid"],
        kid.as_str(),
        "the same signing key after a restart"
    );
    // Nothing pending: a claim finds no work.
    let idle = send(
        &app,
        request(
            "POST",
            "/v1/stream/__ds/subscriptions/s1/claim",
            &[json],
            r#"{"worker":"w"}"#,
        ),
    )
    .await;
    assert_eq!(idle.status, StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_are_sent_only_durable_records() {
    // The host drives persistence: nothing is durable until it says so.
    let store = Arc::new(
        ReplayStore::<StreamRecord>::builder()
            .durable(Arc::new(MemoryLog::new()), Postcard)
            .durable_options(DurableOptions::default().with_persister_thread(false))
            .build()
            .unwrap(),
    );
    let service = Arc::new(DurableStreams::new(Arc::clone(&store)).options(options()));
    let app = Arc::clone(&service).router();
    let create = tokio::spawn({
        let app = app.clone();
        async move { send(&app, request("PUT", "/v1/stream/d", &[TEXT], "")).await }
    });
    // The PUT waits for its record to be durable: persist it.
    let created = loop {
        store.persist_round();
        if create.is_finished() {
            break create.await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(created.status, StatusCode::CREATED);
    let key = service.key("", "d").unwrap();
    store
        .append(&key, Revision(0), StreamRecord::data("x"))
        .unwrap();
    let before = send(&app, request("GET", "/v1/stream/d", &[], "")).await;
    assert_eq!(before.text(), "", "not durable yet: not shown");
    assert_eq!(before.next_offset(), created.next_offset());
    assert_eq!(store.persist_round(), Some(true));
    let after = send(&app, request("GET", "/v1/stream/d", &[], "")).await;
    assert_eq!(after.text(), "x");
}

/// CORS as a browser reads it: a preflight is told the methods and
/// request headers the protocol uses, and may be cached; every other answer
/// (a 404 outside the stream route included) lets any origin read it and
/// exposes the protocol's headers, without repeating the preflight's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_is_answered_cors_on_the_preflight_and_every_response() {
    let dir = TempDir::new("cors");
    let app = redb_service(&dir).router();
    let preflight = send(
        &app,
        request(
            "OPTIONS",
            "/v1/stream/chat",
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "producer-id, stream-seq"),
            ],
            "",
        ),
    )
    .await;
    assert_eq!(preflight.status, StatusCode::NO_CONTENT);
    let methods = preflight.header("access-control-allow-methods").unwrap();
    for method in ["GET", "HEAD", "PUT", "POST", "DELETE"] {
        assert!(methods.contains(method), "{method} in {methods:?}");
    }
    let allowed = preflight.header("access-control-allow-headers").unwrap();
    for name in ["content-type", "producer-id", "producer-seq", "stream-seq"] {
        assert!(allowed.contains(name), "{name} in {allowed:?}");
    }
    assert_eq!(preflight.header("access-control-max-age"), Some("86400"));
    assert_eq!(preflight.header("access-control-allow-origin"), Some("*"));

    let created = send(
        &app,
        request(
            "PUT",
            "/v1/stream/chat",
            &[("content-type", "text/plain")],
            "",
        ),
    )
    .await;
    let appended = send(
        &app,
        request(
            "POST",
            "/v1/stream/chat",
            &[("content-type", "text/plain")],
            "hi",
        ),
    )
    .await;
    let read = send(&app, request("GET", "/v1/stream/chat?offset=-1", &[], "")).await;
    let missing = send(&app, request("GET", "/v1/nothing-here", &[], "")).await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(appended.status, StatusCode::NO_CONTENT);
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    for (label, answer) in [
        ("create", &created),
        ("append", &appended),
        ("read", &read),
        ("404", &missing),
    ] {
        assert_eq!(
            answer.header("access-control-allow-origin"),
            Some("*"),
            "{label}"
        );
        let exposed = answer.header("access-control-expose-headers").unwrap();
        for name in [
            "stream-next-offset",
            "stream-closed",
            "producer-epoch",
            "etag",
        ] {
            assert!(exposed.contains(name), "{label}: {name} in {exposed:?}");
        }
        assert_eq!(
            answer.header("access-control-allow-methods"),
            None,
            "{label}"
        );
        assert_eq!(
            answer.header("access-control-allow-headers"),
            None,
            "{label}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_typed_refusal_never_a_panic() {
    let dir = TempDir::new("bad");
    let service = redb_service(&dir);
    let app = Arc::clone(&service).router();
    let json = ("content-type", "application/json");
    assert_eq!(
        status(&app, "PUT", "/v1/stream/j", &[json], "[]").await,
        StatusCode::CREATED
    );
    let huge = "x".repeat(10_000);
    let long_path = format!("/v1/stream/{}", "p".repeat(600));
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (
            request("GET", "/v1/stream/j?offset=12_34", &[], ""),
            StatusCode::BAD_REQUEST,
            "malformed offset",
        ),
        (
            request("GET", "/v1/stream/j?offset=-1&offset=now", &[], ""),
            StatusCode::BAD_REQUEST,
            "more than once",
        ),
        (
            request(
                "GET",
                "/v1/stream/j?offset=ffffffffffffffff_0000000000000001",
                &[],
                "",
            ),
            StatusCode::BAD_REQUEST,
            "never issued",
        ),
        (
            request("GET", "/v1/stream/j?live=sideways&offset=-1", &[], ""),
            StatusCode::BAD_REQUEST,
            "live must be",
        ),
        (
            request("GET", "/v1/stream/j?live=long-poll", &[], ""),
            StatusCode::BAD_REQUEST,
            "need an offset",
        ),
        (
            request("POST", "/v1/stream/j", &[json], "{\"a\":"),
            StatusCode::BAD_REQUEST,
            "not valid JSON",
        ),
        (
            request("POST", "/v1/stream/j", &[json], "[]"),
            StatusCode::BAD_REQUEST,
            "empty JSON array",
        ),
        (
            request("POST", "/v1/stream/j", &[json], ""),
            StatusCode::BAD_REQUEST,
            "needs a body",
        ),
        (
            request("POST", "/v1/stream/j", &[], "1"),
            StatusCode::BAD_REQUEST,
            "needs a Content-Type",
        ),
        (
            request("POST", "/v1/stream/j", &[TEXT], "1"),
            StatusCode::CONFLICT,
            "does not match",
        ),
        (
            request(
                "POST",
                "/v1/stream/j",
                &[
                    json,
                    ("producer-id", &huge),
                    ("producer-epoch", "0"),
                    ("producer-seq", "0"),
                ],
                "1",
            ),
            StatusCode::BAD_REQUEST,
            "Producer-Id must be",
        ),
        (
            request("POST", "/v1/stream/j", &[json, ("stream-seq", &huge)], "1"),
            StatusCode::BAD_REQUEST,
            "at most 256",
        ),
        (
            request("POST", "/v1/stream/j", &[json, ("producer-id", "p")], "1"),
            StatusCode::BAD_REQUEST,
            "together",
        ),
        (
            request("PUT", "/v1/stream/t", &[("stream-ttl", "1.5")], ""),
            StatusCode::BAD_REQUEST,
            "Stream-TTL",
        ),
        (
            request(
                "PUT",
                "/v1/stream/t",
                &[("stream-expires-at", "tomorrow")],
                "",
            ),
            StatusCode::BAD_REQUEST,
            "RFC 3339",
        ),
        (
            request("PUT", &long_path, &[TEXT], ""),
            StatusCode::BAD_REQUEST,
            "session id",
        ),
        (
            request("GET", "/v1/stream/nothing-here", &[], ""),
            StatusCode::NOT_FOUND,
            "create it with PUT",
        ),
        (
            request(
                "PUT",
                "/v1/stream/f",
                &[("stream-forked-from", "/v1/stream/none")],
                "",
            ),
            StatusCode::NOT_FOUND,
            "create it with PUT",
        ),
        (
            request(
                "PUT",
                "/v1/stream/f",
                &[
                    ("stream-forked-from", "/v1/stream/j"),
                    ("stream-fork-offset", "9999999999999999_9999999999999999"),
                ],
                "",
            ),
            StatusCode::BAD_REQUEST,
            "not an offset of the source",
        ),
        (
            request(
                "PUT",
                "/v1/stream/f",
                &[("stream-fork-sub-offset", "1")],
                "",
            ),
            StatusCode::BAD_REQUEST,
            "only valid with Stream-Forked-From",
        ),
    ];
    for (request, status, says) in cases {
        let label = format!("{} {}", request.method(), request.uri());
        let got = send(&app, request).await;
        assert_eq!(got.status, status, "{label}: {}", got.text());
        assert!(
            got.text().contains(says),
            "{label}: {:?} should say {says:?}",
            got.text()
        );
        assert_eq!(
            got.header("x-content-type-options"),
            Some("nosniff"),
            "{label}"
        );
    }
    // A JSON batch is one record: in the log whole or not at all.
    let key = service.key("", "j").unwrap();
    let before = service.store().latest_position(&key);
    let batch = send(
        &app,
        request(
            "POST",
            "/v1/stream/j",
            &[json],
            "[1, {\"a\": [2]}, \"three\"]",
        ),
    )
    .await;
    assert_eq!(batch.status, StatusCode::NO_CONTENT);
    assert_eq!(service.store().latest_position(&key), before.map(|p| p + 1));
    let read = send(&app, request("GET", "/v1/stream/j", &[], "")).await;
    assert_eq!(read.text(), "[1,{\"a\": [2]},\"three\"]");
    // A body over the limit is a 413 before any of it is stored.
    let small = Arc::new(DurableStreams::new(Arc::clone(service.store())).options(
        StreamsOptions {
            max_append_bytes: 1024,
            ..options()
        },
    ))
    .router();
    let too_big = send(
        &small,
        request(
            "POST",
            "/v1/stream/j",
            &[json],
            &format!("\"{}\"", "y".repeat(2048)),
        ),
    )
    .await;
    assert_eq!(too_big.status, StatusCode::PAYLOAD_TOO_LARGE);
    let read = send(&app, request("GET", "/v1/stream/j", &[], "")).await;
    assert_eq!(
        read.text(),
        "[1,{\"a\": [2]},\"three\"]",
        "nothing refused was stored"
    );
}

/// `livereplay serve` over the redb file in `dir`.
fn serve(dir: &TempDir) -> Served {
    let data_dir = dir.0.to_str().expect("a UTF-8 temporary path");
    Served::start(
        &["--long-poll-timeout-ms", "500", "--data-dir", data_dir],
        None,
    )
}

#[test]
fn what_the_binary_acknowledged_survives_sigkill() {
    let dir = TempDir::new("sigkill");
    let producer = |seq: &'static str| {
        [
            ("content-type", "application/json"),
            ("producer-id", "p"),
            ("producer-epoch", "0"),
            ("producer-seq", seq),
        ]
    };
    let mut server = serve(&dir);
    assert_eq!(server.send("GET", "/health", &[], "").text(), "ok\n");
    let json = [("content-type", "application/json")];
    assert_eq!(
        server.send("PUT", "/v1/stream/k", &json, "[]").status,
        StatusCode::CREATED
    );
    let mut offsets = Vec::new();
    for (seq, body) in [("0", r#"{"n":0}"#), ("1", r#"[{"n":1},{"n":2}]"#)] {
        let appended = server.send("POST", "/v1/stream/k", &producer(seq), body);
        assert_eq!(appended.status, StatusCode::OK);
        offsets.push(appended.next_offset());
    }
    let closing = [
        ("content-type", "application/json"),
        ("stream-closed", "true"),
    ];
    assert_eq!(
        server
            .send("PUT", "/v1/stream/done", &closing, "[\"all\"]")
            .status,
        StatusCode::CREATED
    );
    server.kill();

    let mut server = serve(&dir);
    let all = server.send("GET", "/v1/stream/k?offset=-1", &[], "");
    assert_eq!(all.text(), r#"[{"n":0},{"n":1},{"n":2}]"#);
    assert_eq!(all.next_offset(), offsets[1]);
    let rest = server.send(
        "GET",
        &format!("/v1/stream/k?offset={}", offsets[0]),
        &[],
        "",
    );
    assert_eq!(rest.text(), r#"[{"n":1},{"n":2}]"#);
    let retry = server.send(
        "POST",
        "/v1/stream/k",
        &producer("1"),
        r#"[{"n":1},{"n":2}]"#,
    );
    assert_eq!(
        retry.status,
        StatusCode::NO_CONTENT,
        "the producer's state survived the kill"
    );
    let done = server.send("GET", "/v1/stream/done?offset=-1", &[], "");
    assert_eq!(done.text(), r#"["all"]"#);
    assert_eq!(done.header("stream-closed"), Some("true"));
    let eof = server.send(
        "GET",
        &format!(
            "/v1/stream/done?offset={}&live=long-poll",
            done.next_offset()
        ),
        &[],
        "",
    );
    assert_eq!(eof.status, StatusCode::NO_CONTENT);
    assert_eq!(eof.header("stream-closed"), Some("true"));
    // Appends since this start: the duplicate above was none; this is one.
    assert_eq!(
        server.send("PUT", "/v1/stream/m", &json, "[]").status,
        StatusCode::CREATED
    );
    let metrics = server.send("GET", "/metrics", &[], "").text();
    let appends: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("livereplay_appends_total "))
        .and_then(|value| value.parse().ok())
        .expect("an appends counter");
    assert_eq!(appends, 1, "{metrics}");
    for counter in [
        "lost_events_total",
        "holes_total",
        "fenced_sessions_total",
        "fenced_events_total",
        "interrupted_turns_total",
        "gaps_reset_total",
    ] {
        assert!(
            metrics.contains(&format!("\nlivereplay_{counter} 0\n")),
            "{counter}: {metrics}"
        );
    }
    server.kill();
}

/// Runs `livereplay serve --port 0 <args>`, which must refuse to start:
/// nothing on stdout (it never listened); its exit code and stderr.
fn refused_start(args: &[&str]) -> (Option<i32>, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_livereplay"))
        .args(["serve", "--port", "0"])
        .args(args)
        .output()
        .expect("run livereplay serve");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{args:?} started: {stderr}");
    assert!(output.stdout.is_empty(), "{args:?}: it listened");
    (output.status.code(), stderr)
}

/// A text stream at `path` on `served` takes one append and reads it back.
fn serves_a_record(served: &Served, path: &str) {
    let text = [("content-type", "text/plain")];
    let url = format!("/v1/stream/{path}");
    assert_eq!(
        served.send("PUT", &url, &text, "").status,
        StatusCode::CREATED
    );
    assert_eq!(
        served.send("POST", &url, &text, "x").status,
        StatusCode::NO_CONTENT
    );
    let read = served.send("GET", &format!("{url}?offset=-1"), &[], "");
    assert_eq!(read.text(), "x");
}

/// `livereplay serve` without tokens or a signing key has no access
/// control: it refuses to bind anything but loopback, with a message saying
/// why, and creates nothing.
#[test]
fn serve_refuses_to_bind_beyond_loopback() {
    let dir = TempDir::new("bind");
    let data_dir = dir.0.join("data");
    let data = data_dir.to_str().expect("a UTF-8 temporary path");
    let (_, stderr) = refused_start(&["--bind", "0.0.0.0", "--data-dir", data]);
    assert!(stderr.contains("no access control"), "{stderr}");
    assert!(!data_dir.exists(), "it created its data dir anyway");
}

/// `--worker-threads N` runs N HTTP threads (`livereplay-http`, counted
/// before any request could start one of tokio's blocking threads, which
/// share the name), and the server serves with one; zero is refused
/// before anything starts.
#[test]
fn serve_runs_the_worker_threads_it_is_given() {
    let workers = |pid: u32| {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("its threads");
        tasks
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .filter(|name| name.trim() == "livereplay-http")
            .count()
    };
    for count in [1, 3] {
        let dir = TempDir::new("workers");
        let data_dir = dir.0.to_str().expect("a UTF-8 temporary path");
        let count_flag = count.to_string();
        let served = Served::start(
            &["--data-dir", data_dir, "--worker-threads", &count_flag],
            None,
        );
        // The runtime starts its workers without waiting for them.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while workers(served.pid()) < count && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(workers(served.pid()), count, "--worker-threads {count}");
        serves_a_record(&served, "w");
    }
    let dir = TempDir::new("workers");
    let data_dir = dir.0.join("data");
    let data = data_dir.to_str().expect("a UTF-8 temporary path");
    let (code, stderr) = refused_start(&["--worker-threads", "0", "--data-dir", data]);
    assert_eq!(code, Some(2), "clap's usage error: {stderr}");
    assert!(stderr.contains("--worker-threads"), "{stderr}");
    assert!(!data_dir.exists(), "it created its data dir anyway");
}

/// `--cache-bytes` sizes the redb log's page cache: a server with a small
/// one serves. A flag of the other log is a usage error before anything
/// starts, not ignored: redb's flags beside `--redis`, Redis's beside
/// `--data-dir`.
#[test]
fn serve_takes_a_cache_size_and_refuses_the_other_logs_flags() {
    let dir = TempDir::new("cache");
    let data_dir = dir.0.to_str().expect("a UTF-8 temporary path");
    let served = Served::start(&["--data-dir", data_dir, "--cache-bytes", "1048576"], None);
    serves_a_record(&served, "c");
    let other = dir.0.join("other");
    let other = other.to_str().expect("a UTF-8 temporary path");
    let (redis, data) = ("redis://127.0.0.1:1/", other);
    let cases: [[&str; 4]; 5] = [
        ["--redis", redis, "--cache-bytes", "1048576"],
        ["--redis", redis, "--journal-bytes", "1048576"],
        ["--redis", redis, "--commit", "immediate"],
        ["--data-dir", data, "--lease-ms", "20000"],
        ["--data-dir", data, "--namespace", "x"],
    ];
    for args in cases {
        let (code, stderr) = refused_start(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        let conflict = format!("'{} <", args[0]);
        assert!(
            stderr.contains(&conflict)
                && stderr.contains(args[2])
                && stderr.contains("cannot be used"),
            "{args:?}: {stderr}"
        );
    }
    assert!(
        !dir.0.join("other").exists(),
        "a refused start made its data dir"
    );
}

/// Large records past `large_records_in_memory` leave memory oldest first
/// (whole ring segments of 64 positions) and are read from the log, whole
/// and in order; small ones are not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_records_beyond_the_memory_bound_are_read_from_the_log() {
    const RECORD: usize = 64 * 1024;
    const RECORDS: u8 = 100;
    let dir = TempDir::new("large-records");
    let store = redb_store(&dir);
    let service = Arc::new(
        DurableStreams::new(Arc::clone(&store)).options(StreamsOptions {
            large_records_in_memory: 4 * RECORD,
            ..options()
        }),
    );
    let app = Arc::clone(&service).router();
    let bytes = ("content-type", "application/octet-stream");
    assert_eq!(
        status(&app, "PUT", "/v1/stream/big", &[bytes], "").await,
        StatusCode::CREATED
    );
    let small = send(&app, request("POST", "/v1/stream/big", &[bytes], "small")).await;
    assert_eq!(small.status, StatusCode::NO_CONTENT);
    let mut written = b"small".to_vec();
    for round in 0..RECORDS {
        let body = vec![round; RECORD];
        written.extend_from_slice(&body);
        let request = Request::post("/v1/stream/big")
            .header(bytes.0, bytes.1)
            .body(Body::from(body))
            .unwrap();
        assert_eq!(send(&app, request).await.status, StatusCode::NO_CONTENT);
    }
    // Positions 1 (creation) and 2 (small), then 3..=102: the newest four
    // fit the bound, the 96 before them were let go, and with them every
    // record at or below the last one let go (position 98).
    assert_eq!(service.large_records(), (4 * RECORD as u64, 96));
    let stats = store.stats();
    assert_eq!(stats.retained_events, 4);
    // Memory goes by whole segments (16 positions, then 64 each): 1..=16
    // and 17..=80 are freed, 81..=144 holds the rest.
    assert_eq!(stats.allocated_slots, 64);

    let mut read = Vec::new();
    let mut offset = "-1".to_string();
    loop {
        let page = send(
            &app,
            request("GET", &format!("/v1/stream/big?offset={offset}"), &[], ""),
        )
        .await;
        assert_eq!(page.status, StatusCode::OK);
        read.extend_from_slice(&page.body);
        offset = page.next_offset();
        if page.header("stream-up-to-date") == Some("true") {
            break;
        }
    }
    assert_eq!(read.len(), written.len());
    assert!(read == written, "every byte, in order");
}

/// Every subscription change appends a whole snapshot: compaction appends
/// the live ones again and archives the history before them, and a
/// restart folds the same subscriptions from what is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_the_subscriptions_and_archives_their_history() {
    let dir = TempDir::new("compaction");
    let json = ("content-type", "application/json");
    let claim = r#"{"worker":"w"}"#;
    let claim_uri = "/v1/stream/__ds/subscriptions/s1/claim";
    let (acked, generation) = {
        let service = redb_service(&dir);
        let app = Arc::clone(&service).router();
        for (path, body) in [("wake/pool", "[]"), ("events/a", "[]")] {
            let uri = format!("/v1/stream/{path}");
            assert_eq!(
                status(&app, "PUT", &uri, &[json], body).await,
                StatusCode::CREATED
            );
        }
        for (id, pattern) in [("s1", "events/*"), ("s2", "other/*")] {
            let body = format!(
                r#"{{"type":"pull-wake","pattern":"{pattern}","wake_stream":"wake/pool","lease_ttl_ms":60000}}"#
            );
            let uri = format!("/v1/stream/__ds/subscriptions/{id}");
            assert_eq!(
                status(&app, "PUT", &uri, &[json], &body).await,
                StatusCode::CREATED
            );
        }
        // A wake, a claim and a done ack per round: three snapshots each.
        let mut last = (String::new(), 0);
        for round in 0..100 {
            let body = format!(r#"{{"n":{round}}}"#);
            let posted = status(&app, "POST", "/v1/stream/events/a", &[json], &body).await;
            assert!(posted.is_success());
            let claimed = send(&app, request("POST", claim_uri, &[json], claim)).await;
            assert_eq!(claimed.status, StatusCode::OK, "{}", claimed.text());
            let claimed: serde_json::Value = serde_json::from_slice(&claimed.body).unwrap();
            let (tail, ack, token) = done_ack(&claimed, "events/a");
            let uri = "/v1/stream/__ds/subscriptions/s1/ack";
            let headers = [json, ("authorization", token.as_str())];
            assert_eq!(
                status(&app, "POST", uri, &headers, &ack).await,
                StatusCode::OK
            );
            last = (tail, claimed["generation"].as_u64().unwrap());
        }
        let archived = service.compact_subscriptions().await.unwrap();
        assert!(archived >= 300, "archived {archived}");
        assert_eq!(
            service.compact_subscriptions().await.unwrap(),
            0,
            "nothing due"
        );
        last
    };

    let service = redb_service(&dir);
    let app = Arc::clone(&service).router();
    let got = send(
        &app,
        request("GET", "/v1/stream/__ds/subscriptions/s1", &[], ""),
    )
    .await;
    let got: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(got["streams"][0]["acked_offset"], acked.as_str());
    let other = status(&app, "GET", "/v1/stream/__ds/subscriptions/s2", &[], "").await;
    assert_eq!(other, StatusCode::OK, "every live subscription was kept");
    assert_eq!(
        status(&app, "POST", claim_uri, &[json], claim).await,
        StatusCode::NO_CONTENT,
        "nothing pending"
    );
    // The generation survived the archive: the next wake is the one after.
    let posted = status(&app, "POST", "/v1/stream/events/a", &[json], r#"{"n":-1}"#).await;
    assert!(posted.is_success());
    let claimed = send(&app, request("POST", claim_uri, &[json], claim)).await;
    let claimed: serde_json::Value = serde_json::from_slice(&claimed.body).unwrap();
    assert_eq!(claimed["generation"], generation + 1);
}

/// Waits (bounded) for the receiver's next call.
async fn called(calls: &mut tokio::sync::mpsc::UnboundedReceiver<()>) {
    tokio::time::timeout(Duration::from_secs(10), calls.recv())
        .await
        .expect("a delivery in time")
        .expect("the receiver runs");
}

/// A webhook that keeps failing is retried while its wake is current, but
/// the retries do not keep a dropped service (and its redb file) alive;
/// the next service resumes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_to_a_failing_webhook_do_not_keep_a_dropped_service_alive() {
    let (sender, mut calls) = tokio::sync::mpsc::unbounded_channel();
    let receiver = Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let _ = sender.send(());
            async { StatusCode::INTERNAL_SERVER_ERROR }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let receiving = tokio::spawn(async move { axum::serve(listener, receiver).await });
    let json = ("content-type", "application/json");
    let dir = TempDir::new("failing-webhook");
    {
        let service = redb_service(&dir);
        let app = Arc::clone(&service).router();
        let uri = "/v1/stream/events/a";
        assert_eq!(
            status(&app, "PUT", uri, &[json], "[]").await,
            StatusCode::CREATED
        );
        let subscription = format!(
            r#"{{"type":"webhook","pattern":"events/*","webhook":{{"url":"http://127.0.0.1:{port}/hook"}}}}"#
        );
        let uri = "/v1/stream/__ds/subscriptions/hook";
        assert_eq!(
            status(&app, "PUT", uri, &[json], &subscription).await,
            StatusCode::CREATED
        );
        let posted = status(&app, "POST", "/v1/stream/events/a", &[json], "{}").await;
        assert!(posted.is_success());
        called(&mut calls).await;
    }
    // The failed attempt's bookkeeping ends within moments; then nothing
    // holds the file (the next attempt would come 1 to 1.2 s after the
    // first: well past this bound, had it kept the service).
    let started = std::time::Instant::now();
    let log = loop {
        match RedbLog::open(dir.0.join("streams.redb")) {
            Ok(log) => break log,
            Err(error) if started.elapsed() > Duration::from_millis(900) => {
                panic!("the dropped service still holds its log: {error}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let store = Arc::new(
        ReplayStore::<StreamRecord>::builder()
            .durable(Arc::new(log), Postcard)
            .build()
            .unwrap(),
    );
    let service = Arc::new(DurableStreams::new(store).options(options()));
    assert_eq!(service.resume_subscriptions().await.unwrap(), 1);
    called(&mut calls).await;
    receiving.abort();
}

#[cfg(feature = "redis")]
#[path = "support/redis_server.rs"]
mod redis_server;

/// Two nodes over one Redis: a runtime's turn on node A drives a stream,
/// and A dies (its store goes first, as with a killed process, so the
/// turn closes nothing). Once A's lease has run out, an HTTP reader
/// long-polling the stream's tail on node B ends with `Stream-Closed`,
/// and an append there is a `409` with `Stream-Closed`: B closed the turn
/// `Interrupted` and took that as the stream's closing record.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_turn_closes_its_stream_on_another_node() {
    use livereplay::durable::RedisLog;
    use livereplay::streams::SharedWrites;

    let Some(redis) = redis_server::RedisServer::start() else {
        return;
    };
    let lease = Duration::from_millis(500);
    let node = || {
        let log = Arc::new(RedisLog::open(&redis.url()).unwrap());
        let store = Arc::new(
            ReplayStore::<StreamRecord>::builder()
                .durable(log, Postcard)
                .durable_options(DurableOptions::default().with_store_lease(lease))
                .build()
                .unwrap(),
        );
        let writes = SharedWrites::open(&redis.url(), "dead-node", Duration::from_secs(2)).unwrap();
        Arc::new(
            DurableStreams::new(store)
                .options(StreamsOptions {
                    long_poll_timeout: Duration::from_millis(500),
                    ..StreamsOptions::default()
                })
                .shared_writes(writes),
        )
    };
    let (a, b) = (node(), node());
    let (app_a, app_b) = (Arc::clone(&a).router(), Arc::clone(&b).router());
    let created = send(&app_a, request("PUT", "/v1/stream/turn", &[TEXT], "a")).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let store_a = Arc::clone(a.store());
    let key = a.key("", "turn").unwrap();
    let turn = store_a.session(&key).unwrap().into_turn();
    let appended = turn.append(Revision(0), StreamRecord::data("b")).unwrap();
    store_a
        .wait_durable(&key, appended.position(), REQUEST_TIMEOUT)
        .unwrap();
    let read = send(&app_b, request("GET", "/v1/stream/turn", &[], "")).await;
    assert_eq!(read.text(), "ab", "B reads A's turn");
    let tail = read.next_offset();
    let poll = |app: &Router| {
        let app = app.clone();
        let uri = format!("/v1/stream/turn?offset={tail}&live=long-poll");
        async move { send(&app, request("GET", &uri, &[], "")).await }
    };
    // A alive: B's long-poll times out with nothing, the stream open.
    let quiet = poll(&app_b).await;
    assert_eq!(quiet.status, StatusCode::NO_CONTENT);
    assert_eq!(quiet.header("stream-closed"), None);
    // A dies: its store first, then the turn (its close is refused).
    drop((app_a, a));
    drop(store_a);
    drop(turn);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let eof = loop {
        let answer = poll(&app_b).await;
        if answer.header("stream-closed").is_some() || tokio::time::Instant::now() > deadline {
            break answer;
        }
    };
    assert_eq!(eof.status, StatusCode::NO_CONTENT);
    assert_eq!(eof.header("stream-closed"), Some("true"));
    assert_eq!(eof.next_offset(), tail, "closing adds no data");
    let late = send(&app_b, request("POST", "/v1/stream/turn", &[TEXT], "!")).await;
    assert_eq!(late.status, StatusCode::CONFLICT);
    assert_eq!(late.header("stream-closed"), Some("true"));
    let durable = b.store().stats().durable.unwrap();
    assert_eq!(durable.interrupted_turns, 1);
}
