//! The SSE demo server (`examples/sse_server`) against a real HTTP client:
//! the demo's own router is served in-process on 127.0.0.1:0 and read over
//! `tokio::net::TcpStream` with a minimal HTTP/1.1 GET, chunked-body and SSE
//! parser, so what is checked is the bytes a browser would get.
//!
//! It checks the resume protocol end to end: a client that drops and
//! reconnects with `Last-Event-ID` (or `?cursor=`) gets every event exactly
//! once; one that stayed away past the window gets ONE `gap` event with a
//! snapshot and a cursor it can resume from, and the response ends there;
//! another session's cursor and malformed cursors are refused; keep-alive
//! frames carry no `id:`; a server restarted over the same redb log resumes
//! a client's cursor exactly (the protocol is `livereplay::http`, the turn
//! and the page are the demo's).
//!
//! The tests run on a current-thread runtime: while a test appends without
//! awaiting, the server cannot run, which makes "the client fell behind the
//! window" deterministic. Every read has a deadline, so a broken server
//! fails a test instead of hanging it.

#[path = "../examples/sse_server/app.rs"]
mod app;
#[path = "support/sse_client.rs"]
mod sse_client;

use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use livereplay::durable::RedbLog;
use livereplay::{Config, Cursor, ManualClock, Postcard, ReplayStore, Revision, SessionKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use app::{App, Settings, TurnPlan};
use sse_client::{open, refused, within, Frame};

/// Settings with no simulated turn: the tests append themselves.
fn manual_settings() -> Settings {
    Settings {
        turn: None,
        drop_every: None,
        retry: Duration::from_millis(200),
        keep_alive: Duration::from_secs(30),
        max_sessions: 100,
    }
}

async fn serve(store: ReplayStore<app::TurnEvent>, settings: Settings) -> (SocketAddr, Arc<App>) {
    let (address, app, _server) = serve_with_handle(store, settings).await;
    (address, app)
}

/// [`serve`], with the server's task, to stop it.
async fn serve_with_handle(
    store: ReplayStore<app::TurnEvent>,
    settings: Settings,
) -> (SocketAddr, Arc<App>, tokio::task::JoinHandle<()>) {
    let app = App::new(store, settings);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("local address");
    let router = app::router(app.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (address, app, server)
}

fn key(session: &str) -> SessionKey {
    SessionKey::new(app::TENANT, session).expect("valid key")
}

/// What a client keeps across connections, as `EventSource` does.
#[derive(Default)]
struct Client {
    text: String,
    positions: Vec<u64>,
    last_event_id: Option<String>,
    gaps: Vec<Frame>,
    done: bool,
}

impl Client {
    fn take(&mut self, frame: &Frame) {
        let data = frame.json();
        match frame.event.as_deref() {
            Some("token") => {
                self.text.push_str(data["t"].as_str().expect("token text"));
                self.positions.push(data["p"].as_u64().expect("position"));
            }
            Some("done") => {
                self.positions.push(data["p"].as_u64().expect("position"));
                self.done = true;
            }
            Some("gap") => {
                self.text = data["snapshot"]["text"]
                    .as_str()
                    .expect("snapshot")
                    .to_string();
                self.positions.clear();
                self.gaps.push(frame.clone());
            }
            other => panic!("unexpected event {other:?}"),
        }
        self.last_event_id = Some(frame.id.clone().expect("every event carries an id"));
    }
}

fn expected_text(tokens: impl IntoIterator<Item = String>) -> String {
    tokens.into_iter().collect()
}

#[tokio::test]
async fn reconnecting_with_last_event_id_loses_and_repeats_nothing() {
    let (address, app) = serve(ReplayStore::default(), manual_settings()).await;
    let key = key("resume");
    let tokens: Vec<String> = (0..30).map(|i| format!("tok{i} ")).collect();
    for token in &tokens[..10] {
        app.append_token(&key, token.clone()).unwrap();
    }
    let path = "/sessions/resume/events";
    let mut client = Client::default();

    // First connection: read part of what is buffered, then drop it.
    let mut stream = open(address, path, None).await;
    for _ in 0..4 {
        client.take(&stream.event().await.expect("buffered token"));
    }
    drop(stream);
    for token in &tokens[10..20] {
        app.append_token(&key, token.clone()).unwrap();
    }

    // Reconnect with Last-Event-ID: the rest of the buffer, then live.
    let mut stream = open(address, path, client.last_event_id.as_deref()).await;
    for _ in 4..20 {
        client.take(&stream.event().await.expect("resumed token"));
    }
    for token in &tokens[20..25] {
        app.append_token(&key, token.clone()).unwrap();
    }
    for _ in 20..25 {
        client.take(&stream.event().await.expect("live token"));
    }
    drop(stream);

    // The query-parameter fallback resumes the same way.
    for token in &tokens[25..] {
        app.append_token(&key, token.clone()).unwrap();
    }
    app.finish_turn(&key).unwrap();
    let cursor = client.last_event_id.clone().unwrap();
    let mut stream = open(address, &format!("{path}?cursor={cursor}"), None).await;
    while !client.done {
        client.take(&stream.event().await.expect("token or done"));
    }

    assert_eq!(client.text, expected_text(tokens));
    assert_eq!(client.positions, (1..=31).collect::<Vec<u64>>());
    assert!(client.gaps.is_empty(), "nothing fell out of the window");
    assert_eq!(
        client.last_event_id.unwrap(),
        app.store().current_cursor(&key).to_string(),
        "the last id is the session's latest cursor"
    );
}

#[tokio::test]
async fn a_simulated_turn_survives_forced_drops() {
    let settings = Settings {
        turn: Some(TurnPlan {
            tokens: 40,
            interval: Duration::from_millis(1),
        }),
        drop_every: NonZeroU64::new(6),
        ..manual_settings()
    };
    let (address, app) = serve(ReplayStore::default(), settings).await;
    let mut client = Client::default();
    let mut connections = 0;
    while !client.done {
        connections += 1;
        assert!(
            connections <= 40,
            "the turn should end within 40 connections"
        );
        let mut stream = open(
            address,
            "/sessions/turn-1/events",
            client.last_event_id.as_deref(),
        )
        .await;
        // Each response ends after `drop_every` events, as --drop-every does.
        let mut on_this_connection = 0;
        while let Some(frame) = stream.event().await {
            client.take(&frame);
            on_this_connection += 1;
            if client.done {
                break;
            }
        }
        assert!(client.done || on_this_connection == 6);
    }
    assert_eq!(client.text, expected_text((0..40).map(app::token_text)));
    assert_eq!(client.text, app.snapshot(&key("turn-1"), u64::MAX).text);
    assert_eq!(client.positions, (1..=41).collect::<Vec<u64>>());
    assert!(
        connections >= 41 / 6,
        "{connections} connections for 41 events"
    );
}

#[tokio::test]
async fn a_client_past_the_window_gets_one_gap_with_a_usable_cursor() {
    let store = ReplayStore::new(Config::default().with_capacity(4)).unwrap();
    let (address, app) = serve(store, manual_settings()).await;
    let key = key("gappy");
    let tokens: Vec<String> = (0..20).map(|i| format!("w{i} ")).collect();
    for token in &tokens[..3] {
        app.append_token(&key, token.clone()).unwrap();
    }
    let path = "/sessions/gappy/events";
    let mut client = Client::default();
    let mut stream = open(address, path, None).await;
    for _ in 0..2 {
        client.take(&stream.event().await.unwrap());
    }
    drop(stream);
    // Stay away while 10 more events push positions 3..=9 out of a
    // 4-event window.
    for token in &tokens[3..13] {
        app.append_token(&key, token.clone()).unwrap();
    }

    let mut stream = open(address, path, client.last_event_id.as_deref()).await;
    let gap = stream.event().await.expect("a gap event");
    assert_eq!(gap.event.as_deref(), Some("gap"));
    let data = gap.json();
    let latest = app.store().current_cursor(&key);
    assert_eq!(data["reason"], "trimmed");
    assert_eq!(data["missed"], 7, "positions 3..=9 were trimmed");
    assert_eq!(data["latest"], latest.to_string());
    assert_eq!(latest.position(), 13);
    assert_eq!(gap.id.as_deref(), Some(latest.to_string().as_str()));
    assert_eq!(
        data["snapshot"]["text"],
        expected_text(tokens[..13].to_vec()),
        "the snapshot covers exactly up to the gap's cursor"
    );
    assert_eq!(data["snapshot"]["tokens"], 13);
    client.take(&gap);
    // The gap is the last frame: the response ends.
    assert!(stream.event().await.is_none(), "nothing after the gap");
    drop(stream);

    // The gap's id resumes on a fresh connection: the events after it,
    // live, no second gap.
    for token in &tokens[13..15] {
        app.append_token(&key, token.clone()).unwrap();
    }
    let mut stream = open(address, path, gap.id.as_deref()).await;
    for _ in 13..15 {
        client.take(&stream.event().await.unwrap());
    }
    assert_eq!(client.gaps.len(), 1);
    assert_eq!(client.text, expected_text(tokens[..15].to_vec()));
    assert_eq!(client.positions, vec![14, 15]);
    drop(stream);

    // A connected client that falls behind mid-stream: the server cannot
    // run while this test appends without awaiting, so by the time it reads
    // again the window has moved on. It gets one gap and goes on live.
    let mut stream = open(address, path, client.last_event_id.as_deref()).await;
    for token in &tokens[15..16] {
        app.append_token(&key, token.clone()).unwrap();
    }
    client.take(&stream.event().await.unwrap());
    for token in &tokens[16..] {
        app.append_token(&key, token.clone()).unwrap();
    }
    app.finish_turn(&key).unwrap();
    let frame = stream.event().await.unwrap();
    assert_eq!(
        frame.event.as_deref(),
        Some("gap"),
        "fell behind: {frame:?}"
    );
    client.take(&frame);
    assert_eq!(
        frame.json()["snapshot"]["done"],
        true,
        "the snapshot says the turn ended"
    );
    assert!(stream.event().await.is_none(), "nothing after the gap");
    assert_eq!(client.text, expected_text(tokens.clone()));
    assert_eq!(client.gaps.len(), 2);
}

#[tokio::test]
async fn an_expired_cursor_gets_a_gap_by_age() {
    let clock = Arc::new(ManualClock::new());
    let store = ReplayStore::builder()
        .config(Config::default().with_max_age(Duration::from_secs(60)))
        .clock(clock.clone())
        .build()
        .unwrap();
    let (address, app) = serve(store, manual_settings()).await;
    let key = key("aged");
    for i in 0..3 {
        app.append_token(&key, format!("old{i} ")).unwrap();
    }
    let path = "/sessions/aged/events";
    let mut stream = open(address, path, None).await;
    let first = stream.event().await.unwrap();
    drop(stream);
    clock.advance(Duration::from_secs(61));
    app.append_token(&key, "new ").unwrap();

    let mut stream = open(address, path, first.id.as_deref()).await;
    let gap = stream.event().await.unwrap();
    assert_eq!(gap.event.as_deref(), Some("gap"));
    assert_eq!(gap.json()["reason"], "trimmed");
    assert_eq!(gap.json()["snapshot"]["text"], "old0 old1 old2 new ");
    assert_eq!(
        gap.json()["latest"],
        app.store().current_cursor(&key).to_string()
    );
    assert!(gap.id.as_deref().unwrap().starts_with("lr1."));
    assert_eq!(gap.json()["latest"].as_str(), gap.id.as_deref());
}

#[tokio::test]
async fn other_sessions_cursors_and_malformed_cursors_are_refused() {
    let (address, app) = serve(ReplayStore::default(), manual_settings()).await;
    let alice = key("alice");
    let secret = app.append_token(&alice, "secret-of-alice ").unwrap();
    let alice_cursor = secret.cursor().to_string();

    // Alice's own cursor works for Alice.
    let mut stream = open(address, "/sessions/alice/events", None).await;
    assert_eq!(
        stream.event().await.unwrap().id.as_deref(),
        Some(&*alice_cursor)
    );
    drop(stream);

    // Alice's cursor presented to Bob's stream, by header or by query.
    let (status, body) = refused(address, "/sessions/bob/events", Some(&alice_cursor)).await;
    assert_eq!(status, 403);
    assert!(body.contains("another session"), "{body}");
    assert!(!body.contains("secret"), "{body}");
    let (status, _) = refused(
        address,
        &format!("/sessions/bob/events?cursor={alice_cursor}"),
        None,
    )
    .await;
    assert_eq!(status, 403);

    // A forged cursor naming Bob under another tenant.
    let forged = Cursor::new(
        SessionKey::new("other-tenant", "bob").unwrap(),
        None,
        Revision(1),
        1,
    )
    .to_string();
    let (status, _) = refused(address, "/sessions/bob/events", Some(&forged)).await;
    assert_eq!(status, 403);

    // Malformed cursors and session ids.
    for bad in ["not-a-cursor", "lr1.zz.1.1.demo.bob", &"x".repeat(5000)] {
        let (status, body) = refused(address, "/sessions/bob/events", Some(bad)).await;
        assert_eq!(status, 400, "{bad:.40}");
        assert!(body.contains("malformed cursor"), "{body}");
    }
    for bad_id in ["a.b", "a%2Fb", "%C3%BC", &"s".repeat(65)] {
        let (status, body) = refused(address, &format!("/sessions/{bad_id}/events"), None).await;
        assert_eq!(status, 400, "{bad_id:.40}");
        assert!(body.contains("invalid session id"), "{body}");
    }
    assert!(
        !app.store().contains_session(&key("bob")),
        "refused requests create nothing"
    );
}

#[tokio::test]
async fn keep_alive_frames_carry_no_id() {
    let settings = Settings {
        keep_alive: Duration::from_millis(50),
        ..manual_settings()
    };
    let (address, app) = serve(ReplayStore::default(), settings).await;
    let mut stream = open(address, "/sessions/quiet/events", None).await;
    let hello = stream.frame().await.unwrap();
    assert_eq!(hello.retry.as_deref(), Some("200"), "{hello:?}");
    assert!(hello.id.is_none() && hello.event.is_none() && hello.data.is_empty());

    let keep_alive = stream.frame().await.unwrap();
    assert_eq!(keep_alive.comments, vec!["keep-alive".to_string()]);
    assert!(keep_alive.id.is_none(), "{keep_alive:?}");
    assert!(keep_alive.event.is_none() && keep_alive.data.is_empty());

    let appended = app.append_token(&key("quiet"), "hi ").unwrap();
    let token = stream.event().await.unwrap();
    assert_eq!(token.id, Some(appended.cursor().to_string()));

    // The page that drives all this is served at `/`.
    let mut page = TcpStream::connect(address).await.unwrap();
    page.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut html = String::new();
    within("page", page.read_to_string(&mut html))
        .await
        .unwrap();
    assert!(html.starts_with("HTTP/1.1 200"), "{html:.80}");
    assert!(html.contains("new EventSource("));
}

#[tokio::test]
async fn sessions_beyond_the_bound_are_refused_and_empty_ids_mean_start() {
    let settings = Settings {
        max_sessions: 1,
        ..manual_settings()
    };
    let (address, app) = serve(ReplayStore::default(), settings).await;
    let one = app.append_token(&key("one"), "first ").unwrap();

    // An empty Last-Event-ID (sent before any id was seen) means the start.
    let mut stream = open(address, "/sessions/one/events", Some("")).await;
    assert_eq!(
        stream.event().await.unwrap().id,
        Some(one.cursor().to_string())
    );
    drop(stream);

    let (status, body) = refused(address, "/sessions/two/events", None).await;
    assert_eq!(status, 503);
    assert!(body.contains("at most 1 sessions"), "{body}");
    assert!(!app.store().contains_session(&key("two")));
}

#[tokio::test]
async fn a_restarted_server_over_the_same_log_resumes_exactly() {
    let dir = std::env::temp_dir().join(format!(
        "livereplay-sse-restart-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let log_path = dir.join("log.redb");
    let settings = Settings {
        turn: Some(TurnPlan {
            tokens: 40,
            interval: Duration::from_millis(3),
        }),
        // Quick keep-alives: a server whose client left notices at once.
        keep_alive: Duration::from_millis(50),
        ..manual_settings()
    };
    let path = "/sessions/restart/events";
    let key = key("restart");
    let mut client = Client::default();

    // First life: read 10 events of the turn, then the server goes down
    // mid-turn (the turn stops, the client's connection drops, the server
    // and its store are dropped).
    let store = ReplayStore::builder()
        .durable(Arc::new(RedbLog::open(&log_path).unwrap()), Postcard)
        .build()
        .unwrap();
    let (address, app, server) = serve_with_handle(store, settings.clone()).await;
    let mut stream = open(address, path, None).await;
    for _ in 0..10 {
        client.take(&stream.event().await.expect("a token"));
    }
    app.stop();
    drop(stream);
    server.abort();
    let gone = Arc::downgrade(&app);
    drop(app);
    within("the first store to be dropped", async {
        while gone.strong_count() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let first_life = parse_cursor(client.last_event_id.as_deref());

    // Second life over the same file (retried while the first one's
    // persister thread lets go of it).
    let log = within("the log to reopen", async {
        loop {
            match RedbLog::open(&log_path) {
                Ok(log) => break log,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await;
    let store = ReplayStore::builder()
        .durable(Arc::new(log), Postcard)
        .build()
        .unwrap();
    let durable = store
        .durable_position(&key)
        .unwrap()
        .expect("the log knows it");
    assert!(
        (10..41).contains(&durable),
        "the first life stopped mid-turn, with {durable} events durable"
    );
    let (address, app) = serve(store, settings).await;
    let mut stream = open(address, path, client.last_event_id.as_deref()).await;
    while !client.done {
        client.take(&stream.event().await.expect("a token or done"));
    }

    assert_eq!(client.text, expected_text((0..40).map(app::token_text)));
    assert_eq!(client.positions, (1..=41).collect::<Vec<u64>>());
    assert!(client.gaps.is_empty(), "no gap across the restart");
    assert_eq!(client.text, app.snapshot(&key, u64::MAX).text);
    let last = parse_cursor(client.last_event_id.as_deref());
    assert_ne!(
        last.incarnation(),
        first_life.incarnation(),
        "the turn was finished by the second life"
    );
    drop(stream);
    app.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

fn parse_cursor(text: Option<&str>) -> Cursor {
    text.expect("an id").parse().expect("a cursor")
}
