//! Access control of the Durable Streams module and of `livereplay serve`:
//! tenant isolation (same path, two tenants; no offset of one reads the
//! other), read-only callers, callers scoped to one stream, missing
//! credentials, the subscription APIs, bearer tokens from a file and the
//! environment, and signed read URLs until they expire.
//!
//! Module tests drive the router in process (`tower::ServiceExt::oneshot`)
//! with a test hook that reads `x-tenant`, `x-right` and `x-stream`
//! headers; binary tests start `livereplay serve` on a free loopback port
//! with a tokens file and a signing key in a temporary directory, and stop
//! it by its pid. Every wait is bounded.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use livereplay::durable::RedbLog;
use livereplay::streams::{
    Access, DurableStreams, RequestInfo, StreamError, StreamRecord, StreamsOptions,
};
use livereplay::{Postcard, ReplayStore};
use tower::ServiceExt;

#[path = "support/ds_server.rs"]
mod ds_server;

use ds_server::{Reply, Served, TempDir, REQUEST_TIMEOUT};

/// The test's access hook: `x-tenant` names the tenant (none: 401),
/// `x-right: read` makes it read-only, `x-stream` scopes it to one stream.
fn header_hook(request: &RequestInfo<'_>) -> Result<Access, StreamError> {
    let header = |name: &str| {
        request
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
    };
    let tenant = header("x-tenant")
        .ok_or_else(|| StreamError::Unauthorized("send x-tenant".into()))?
        .to_string();
    Ok(Access {
        tenant,
        write: header("x-right") != Some("read"),
        stream: header("x-stream").map(str::to_string),
    })
}

/// A router over a redb log in `dir`, with the test hook.
fn app(dir: &TempDir) -> Router {
    let log = Arc::new(RedbLog::open(dir.0.join("streams.redb")).unwrap());
    let store = Arc::new(
        ReplayStore::<StreamRecord>::builder()
            .durable(log, Postcard)
            .build()
            .unwrap(),
    );
    let options = StreamsOptions {
        long_poll_timeout: Duration::from_secs(1),
        ..StreamsOptions::default()
    };
    Arc::new(
        DurableStreams::new(store)
            .options(options)
            .access(header_hook),
    )
    .router()
}

async fn send(
    app: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Body::from(body.to_string())).unwrap();
    let response = tokio::time::timeout(REQUEST_TIMEOUT, app.clone().oneshot(request))
        .await
        .expect("the request finished in time")
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    // SSE responses run for their lifetime: read what arrives in a moment.
    let body = match tokio::time::timeout(
        Duration::from_millis(500),
        axum::body::to_bytes(response.into_body(), 1 << 24),
    )
    .await
    {
        Ok(body) => body.unwrap().to_vec(),
        Err(_) => Vec::new(),
    };
    Reply {
        status,
        headers,
        body,
    }
}

const TEXT: (&str, &str) = ("content-type", "text/plain");
const JSON: (&str, &str) = ("content-type", "application/json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_at_the_same_path_see_only_their_own_data_from_any_offset() {
    let dir = TempDir::new("tenants");
    let app = app(&dir);
    let acme = ("x-tenant", "acme");
    let globex = ("x-tenant", "globex");
    let mut acme_offsets = vec!["-1".to_string()];
    let created = send(&app, "PUT", "/v1/stream/chat", &[acme, TEXT], "acme-0;").await;
    assert_eq!(created.status, StatusCode::CREATED);
    acme_offsets.push(created.next_offset());
    for n in 1..4 {
        let appended = send(
            &app,
            "POST",
            "/v1/stream/chat",
            &[acme, TEXT],
            &format!("acme-{n};"),
        )
        .await;
        assert_eq!(appended.status, StatusCode::NO_CONTENT);
        acme_offsets.push(appended.next_offset());
    }
    // Only acme has it yet: globex is told there is nothing there.
    let missing = send(&app, "GET", "/v1/stream/chat", &[globex], "").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        send(&app, "HEAD", "/v1/stream/chat", &[globex], "")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let created = send(&app, "PUT", "/v1/stream/chat", &[globex, TEXT], "globex;").await;
    assert_eq!(created.status, StatusCode::CREATED, "its own stream, fresh");

    let mine = send(&app, "GET", "/v1/stream/chat", &[acme], "").await;
    assert_eq!(mine.text(), "acme-0;acme-1;acme-2;acme-3;");
    let theirs = send(&app, "GET", "/v1/stream/chat", &[globex], "").await;
    assert_eq!(theirs.text(), "globex;");

    // Every offset acme was given, in every read mode, under globex.
    for offset in &acme_offsets {
        for live in ["", "&live=long-poll", "&live=sse"] {
            let uri = format!("/v1/stream/chat?offset={offset}{live}");
            let read = send(&app, "GET", &uri, &[globex], "").await;
            assert!(
                !read.text().contains("acme"),
                "{uri} as globex read {:?}",
                read.text()
            );
            assert!(
                read.status.is_success() || read.status.is_client_error(),
                "{uri}: {}",
                read.status
            );
        }
    }

    // Globex deleting its stream leaves acme's.
    let deleted = send(&app, "DELETE", "/v1/stream/chat", &[globex], "").await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let mine = send(&app, "GET", "/v1/stream/chat", &[acme], "").await;
    assert_eq!(mine.text(), "acme-0;acme-1;acme-2;acme-3;");

    // Tenant and path do not run together: ("a", "bc") is not ("ab", "c").
    let a = send(
        &app,
        "PUT",
        "/v1/stream/bc",
        &[("x-tenant", "a"), TEXT],
        "A",
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let ab = send(
        &app,
        "PUT",
        "/v1/stream/c",
        &[("x-tenant", "ab"), TEXT],
        "AB",
    )
    .await;
    assert_eq!(ab.status, StatusCode::CREATED);
    assert_eq!(
        send(&app, "GET", "/v1/stream/bc", &[("x-tenant", "a")], "")
            .await
            .text(),
        "A"
    );
    assert_eq!(
        send(&app, "GET", "/v1/stream/c", &[("x-tenant", "ab")], "")
            .await
            .text(),
        "AB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_caller_reads_and_cannot_write() {
    let dir = TempDir::new("readonly");
    let app = app(&dir);
    let writer = ("x-tenant", "acme");
    let reader = [("x-tenant", "acme"), ("x-right", "read")];
    let created = send(&app, "PUT", "/v1/stream/log", &[writer, TEXT], "one;").await;
    assert_eq!(created.status, StatusCode::CREATED);
    for (method, path) in [
        ("PUT", "/v1/stream/log"),
        ("PUT", "/v1/stream/other"),
        ("POST", "/v1/stream/log"),
        ("DELETE", "/v1/stream/log"),
    ] {
        let refused = send(&app, method, path, &[reader[0], reader[1], TEXT], "two;").await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{method} {path}");
        assert!(
            refused.text().contains("may only read"),
            "{}",
            refused.text()
        );
    }
    let read = send(&app, "GET", "/v1/stream/log", &reader, "").await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.text(), "one;", "nothing refused was written");
    assert_eq!(
        read.header("vary"),
        Some("authorization"),
        "a shared cache keys on the credential"
    );
    let head = send(&app, "HEAD", "/v1/stream/log", &reader, "").await;
    assert_eq!(head.status, StatusCode::OK);
    let other = send(&app, "GET", "/v1/stream/other", &reader, "").await;
    assert_eq!(
        other.status,
        StatusCode::NOT_FOUND,
        "the refused PUT made nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_credential_every_route_but_preflight_and_jwks_is_401() {
    let dir = TempDir::new("anonymous");
    let app = app(&dir);
    for (method, path) in [
        ("GET", "/v1/stream/log"),
        ("PUT", "/v1/stream/log"),
        ("POST", "/v1/stream/log"),
        ("HEAD", "/v1/stream/log"),
        ("DELETE", "/v1/stream/log"),
        ("GET", "/v1/stream/__ds/subscriptions/s1"),
        ("PUT", "/v1/stream/__ds/subscriptions/s1"),
        ("POST", "/v1/stream/__ds/subscriptions/s1/claim"),
        ("POST", "/v1/stream/__ds/subscriptions/s1/ack"),
    ] {
        let refused = send(&app, method, path, &[JSON], "{}").await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(
            refused.header("www-authenticate"),
            Some("Bearer"),
            "{method} {path}"
        );
    }
    let preflight = send(&app, "OPTIONS", "/v1/stream/log", &[], "").await;
    assert_eq!(preflight.status, StatusCode::NO_CONTENT);
    let jwks = send(&app, "GET", "/v1/stream/__ds/jwks.json", &[], "").await;
    assert_eq!(jwks.status, StatusCode::OK, "{}", jwks.text());
    assert!(jwks.text().contains("\"keys\""), "{}", jwks.text());
    let created = send(
        &app,
        "PUT",
        "/v1/stream/log",
        &[("x-tenant", "acme"), TEXT],
        "x",
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "refusals made nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_scoped_to_one_stream_finds_no_other() {
    let dir = TempDir::new("scoped");
    let app = app(&dir);
    let writer = ("x-tenant", "acme");
    for path in ["/v1/stream/mine", "/v1/stream/other"] {
        let created = send(&app, "PUT", path, &[writer, TEXT], path).await;
        assert_eq!(created.status, StatusCode::CREATED);
    }
    let scoped = [
        ("x-tenant", "acme"),
        ("x-stream", "mine"),
        ("x-right", "read"),
    ];
    let mine = send(&app, "GET", "/v1/stream/mine", &scoped, "").await;
    assert_eq!(mine.status, StatusCode::OK);
    assert_eq!(mine.text(), "/v1/stream/mine");
    // Existing or not, another path looks the same: 404, even for writes.
    for (method, path) in [
        ("GET", "/v1/stream/other"),
        ("GET", "/v1/stream/nowhere"),
        ("HEAD", "/v1/stream/other"),
        ("POST", "/v1/stream/other"),
        ("DELETE", "/v1/stream/other"),
        ("GET", "/v1/stream/__ds/subscriptions/s1"),
        ("PUT", "/v1/stream/__ds/subscriptions/s1"),
    ] {
        let refused = send(&app, method, path, &scoped, "x").await;
        assert_eq!(refused.status, StatusCode::NOT_FOUND, "{method} {path}");
        assert!(!refused.text().contains("/v1/stream/other"));
    }
    let append = send(
        &app,
        "POST",
        "/v1/stream/mine",
        &[scoped[0], scoped[1], scoped[2], TEXT],
        "x",
    )
    .await;
    assert_eq!(
        append.status,
        StatusCode::FORBIDDEN,
        "its own stream, read-only"
    );
    // A writer scoped to one stream cannot fork another into it.
    let fork = send(
        &app,
        "PUT",
        "/v1/stream/forked",
        &[
            ("x-tenant", "acme"),
            ("x-stream", "forked"),
            TEXT,
            ("stream-forked-from", "other"),
        ],
        "",
    )
    .await;
    assert_eq!(fork.status, StatusCode::NOT_FOUND);
    assert!(!fork.text().contains("/v1/stream/other"));
    let made = send(&app, "GET", "/v1/stream/forked", &[writer], "").await;
    assert_eq!(made.status, StatusCode::NOT_FOUND, "no fork was made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_per_tenant_and_a_wake_token_is_its_own_credential() {
    let dir = TempDir::new("subscriptions");
    let app = app(&dir);
    let acme = ("x-tenant", "acme");
    let globex = ("x-tenant", "globex");
    let subscription =
        r#"{"type":"pull-wake","pattern":"events/*","wake_stream":"wake","lease_ttl_ms":5000}"#;
    assert_eq!(
        send(&app, "PUT", "/v1/stream/wake", &[acme, JSON], "[]")
            .await
            .status,
        StatusCode::CREATED
    );
    let read_only = [acme, ("x-right", "read"), JSON];
    let refused = send(
        &app,
        "PUT",
        "/v1/stream/__ds/subscriptions/s1",
        &read_only,
        subscription,
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let created = send(
        &app,
        "PUT",
        "/v1/stream/__ds/subscriptions/s1",
        &[acme, JSON],
        subscription,
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    // Globex does not see it, and the same id is its own subscription.
    let theirs = send(
        &app,
        "GET",
        "/v1/stream/__ds/subscriptions/s1",
        &[globex],
        "",
    )
    .await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    let other =
        r#"{"type":"pull-wake","pattern":"other/*","wake_stream":"w2","lease_ttl_ms":5000}"#;
    let own = send(
        &app,
        "PUT",
        "/v1/stream/__ds/subscriptions/s1",
        &[globex, JSON],
        other,
    )
    .await;
    assert_eq!(own.status, StatusCode::CREATED, "{}", own.text());
    let described = send(
        &app,
        "GET",
        "/v1/stream/__ds/subscriptions/s1",
        &[acme, ("x-right", "read")],
        "",
    )
    .await;
    assert_eq!(described.status, StatusCode::OK, "a reader may look");
    assert!(
        described.text().contains("events/*"),
        "{}",
        described.text()
    );

    // An append by acme wakes acme's subscription only.
    assert_eq!(
        send(
            &app,
            "PUT",
            "/v1/stream/events/a",
            &[acme, JSON],
            "{\"n\":1}"
        )
        .await
        .status,
        StatusCode::CREATED
    );
    let claim_body = r#"{"worker":"w"}"#;
    let refused = send(
        &app,
        "POST",
        "/v1/stream/__ds/subscriptions/s1/claim",
        &read_only,
        claim_body,
    )
    .await;
    assert_eq!(
        refused.status,
        StatusCode::FORBIDDEN,
        "claiming changes the lease"
    );
    let nothing = send(
        &app,
        "POST",
        "/v1/stream/__ds/subscriptions/s1/claim",
        &[globex, JSON],
        claim_body,
    )
    .await;
    assert_eq!(
        nothing.status,
        StatusCode::NO_CONTENT,
        "globex's s1 has nothing pending"
    );
    let claim = send(
        &app,
        "POST",
        "/v1/stream/__ds/subscriptions/s1/claim",
        &[acme, JSON],
        claim_body,
    )
    .await;
    assert_eq!(claim.status, StatusCode::OK, "{}", claim.text());
    let claimed: serde_json::Value = serde_json::from_slice(&claim.body).unwrap();
    let ack = serde_json::json!({
        "wake_id": claimed["wake_id"], "generation": claimed["generation"],
        "acks": [{"stream": "events/a", "offset": claimed["streams"][0]["tail_offset"]}],
        "done": true,
    })
    .to_string();
    let token = format!("Bearer {}", claimed["token"].as_str().unwrap());
    let wrong = "Bearer 00000000000000000000000000000000";
    // Another token without a tenant credential: 401, as any request.
    let refused = send(
        &app,
        "POST",
        "/v1/stream/__ds/subscriptions/s1/ack",
        &[JSON, ("authorization", wrong)],
        &ack,
    )
    .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    // Globex's credential with acme's wake token reaches globex's s1: fenced.
    let fenced = send(
        &app,
        "POST",
        "/v1/stream/__ds/subscriptions/s1/ack",
        &[globex, JSON, ("authorization", &token)],
        &ack,
    )
    .await;
    assert_eq!(fenced.status, StatusCode::CONFLICT, "{}", fenced.text());
    // The wake token alone is enough for its own wake.
    let acked = send(
        &app,
        "POST",
        "/v1/stream/__ds/subscriptions/s1/ack",
        &[JSON, ("authorization", &token)],
        &ack,
    )
    .await;
    assert_eq!(acked.status, StatusCode::OK, "{}", acked.text());
    let described = send(&app, "GET", "/v1/stream/__ds/subscriptions/s1", &[acme], "").await;
    let described: serde_json::Value = serde_json::from_slice(&described.body).unwrap();
    assert_eq!(
        described["streams"][0]["acked_offset"],
        claimed["streams"][0]["tail_offset"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_is_the_empty_tenant_with_full_access_and_tenant_still_works() {
    let dir = TempDir::new("default");
    let log = Arc::new(RedbLog::open(dir.0.join("streams.redb")).unwrap());
    let store = Arc::new(
        ReplayStore::<StreamRecord>::builder()
            .durable(log, Postcard)
            .build()
            .unwrap(),
    );
    let open = Arc::new(DurableStreams::new(Arc::clone(&store))).router();
    assert_eq!(
        send(&open, "PUT", "/v1/stream/s", &[TEXT], "x")
            .await
            .status,
        StatusCode::CREATED
    );
    let read = send(&open, "GET", "/v1/stream/s", &[], "").await;
    assert_eq!(read.text(), "x");
    assert_eq!(read.header("vary"), None, "no credential to vary by");
    // The header-only hook: full access to the named tenant.
    let by_header = Arc::new(DurableStreams::new(store).tenant(|headers: &HeaderMap| {
        headers
            .get("x-tenant")
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| StreamError::Unauthorized("send x-tenant".into()))
    }))
    .router();
    assert_eq!(
        send(&by_header, "GET", "/v1/stream/s", &[("x-tenant", "t")], "")
            .await
            .status,
        StatusCode::NOT_FOUND,
        "the empty tenant's stream is not t's"
    );
    assert_eq!(
        send(
            &by_header,
            "PUT",
            "/v1/stream/s",
            &[("x-tenant", "t"), TEXT],
            "t"
        )
        .await
        .status,
        StatusCode::CREATED
    );
    assert_eq!(
        send(&by_header, "GET", "/v1/stream/s", &[], "")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

// ---------------------------------------------------------------------
// The binary.

/// `livereplay serve` over a redb file in `data_dir`, with `flags`, and
/// `LIVEREPLAY_TOKENS` set to `tokens` (or unset).
fn serve(data_dir: &Path, flags: &[&str], tokens: Option<&str>) -> Served {
    let data_dir = data_dir.to_str().expect("a UTF-8 temporary path");
    let mut args = vec!["--long-poll-timeout-ms", "500", "--data-dir", data_dir];
    args.extend_from_slice(flags);
    Served::start(&args, tokens)
}

const ACME_WRITE: &str = "acme-writer-0123456789abcdef";
const ACME_READ: &str = "acme-reader-0123456789abcdef";
const GLOBEX_WRITE: &str = "globex-writer-0123456789abcdef";

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

/// `livereplay sign` for `stream` of `tenant`, below `base`.
fn sign(key: &Path, tenant: &str, stream: &str, ttl: &str, base: &str) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_livereplay"))
        .args(["sign", "--signing-key-file"])
        .arg(key)
        .args(["--tenant", tenant, "--stream", stream, "--ttl-secs", ttl])
        .args(["--base", base])
        .output()
        .expect("run livereplay sign");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// A tokens file and a signing key in `dir`.
fn credentials(dir: &TempDir) -> (PathBuf, PathBuf) {
    let tokens = dir.0.join("tokens.txt");
    std::fs::write(
        &tokens,
        format!(
            "# who may do what\n{ACME_WRITE} acme write\n{ACME_READ} acme read\n\n{GLOBEX_WRITE} globex write\n"
        ),
    )
    .unwrap();
    let key = dir.0.join("signing.key");
    std::fs::write(&key, b"0123456789abcdef0123456789abcdef-test-key").unwrap();
    (tokens, key)
}

#[test]
fn the_binary_isolates_tenants_by_token_and_refuses_the_rest() {
    let dir = TempDir::new("bin-tokens");
    let (tokens, key) = credentials(&dir);
    let data = dir.0.join("data");
    let server = serve(
        &data,
        &[
            "--tokens-file",
            tokens.to_str().unwrap(),
            "--signing-key-file",
            key.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        server
            .banner
            .contains("access control: 3 bearer token(s) for 2 tenant(s), signed read URLs on"),
        "{}",
        server.banner
    );
    assert_eq!(
        server.send("GET", "/health", &[], "").status,
        StatusCode::OK
    );

    let none = server.send("GET", "/v1/stream/chat", &[], "");
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    assert!(
        none.text().contains("Authorization: Bearer"),
        "{}",
        none.text()
    );
    let (name, unknown) = bearer("not-a-token-we-know-about");
    let refused = server.send("GET", "/v1/stream/chat", &[(name, &unknown)], "");
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);

    let (name, acme) = bearer(ACME_WRITE);
    let acme = (name, acme.as_str());
    let (name, globex) = bearer(GLOBEX_WRITE);
    let globex = (name, globex.as_str());
    let (name, reader) = bearer(ACME_READ);
    let reader = (name, reader.as_str());
    let text = ("content-type", "text/plain");
    let mut offsets = vec!["-1".to_string()];
    let created = server.send("PUT", "/v1/stream/chat", &[acme, text], "acme-0;");
    assert_eq!(created.status, StatusCode::CREATED);
    offsets.push(created.next_offset());
    let appended = server.send("POST", "/v1/stream/chat", &[acme, text], "acme-1;");
    assert_eq!(appended.status, StatusCode::NO_CONTENT);
    offsets.push(appended.next_offset());
    assert_eq!(
        server.send("GET", "/v1/stream/chat", &[globex], "").status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        server
            .send("PUT", "/v1/stream/chat", &[globex, text], "globex;")
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        server.send("GET", "/v1/stream/chat", &[acme], "").text(),
        "acme-0;acme-1;"
    );
    assert_eq!(
        server.send("GET", "/v1/stream/chat", &[reader], "").text(),
        "acme-0;acme-1;"
    );
    assert_eq!(
        server.send("GET", "/v1/stream/chat", &[globex], "").text(),
        "globex;"
    );
    for offset in &offsets {
        for live in ["", "&live=long-poll"] {
            let uri = format!("/v1/stream/chat?offset={offset}{live}");
            let read = server.send("GET", &uri, &[globex], "");
            assert!(!read.text().contains("acme"), "{uri}: {:?}", read.text());
        }
    }

    let refused = server.send("POST", "/v1/stream/chat", &[reader, text], "reader;");
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(
        server
            .send("DELETE", "/v1/stream/chat", &[reader], "")
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        server.send("GET", "/v1/stream/chat", &[acme], "").text(),
        "acme-0;acme-1;",
        "nothing refused was written"
    );
    // The subscription APIs answer to the same tokens.
    let json = ("content-type", "application/json");
    let subscription = r#"{"type":"pull-wake","pattern":"chat","wake_stream":"wake"}"#;
    assert_eq!(
        server
            .send(
                "PUT",
                "/v1/stream/__ds/subscriptions/s",
                &[json],
                subscription
            )
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        server
            .send(
                "PUT",
                "/v1/stream/__ds/subscriptions/s",
                &[reader, json],
                subscription
            )
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        server
            .send(
                "PUT",
                "/v1/stream/__ds/subscriptions/s",
                &[acme, json],
                subscription
            )
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        server
            .send("GET", "/v1/stream/__ds/subscriptions/s", &[globex], "")
            .status,
        StatusCode::NOT_FOUND
    );
}

#[test]
fn a_signed_url_reads_its_stream_until_it_expires() {
    let dir = TempDir::new("bin-signed");
    let (_, key) = credentials(&dir);
    let data = dir.0.join("data");
    let server = serve(
        &data,
        &["--signing-key-file", key.to_str().unwrap()],
        Some(&format!(
            "{ACME_WRITE} acme write; {GLOBEX_WRITE} globex write"
        )),
    );
    assert!(
        server
            .banner
            .contains("2 bearer token(s) for 2 tenant(s), signed read URLs on"),
        "{}",
        server.banner
    );
    let (name, acme) = bearer(ACME_WRITE);
    let acme = (name, acme.as_str());
    let (name, globex) = bearer(GLOBEX_WRITE);
    let globex = (name, globex.as_str());
    let text = ("content-type", "text/plain");
    for (path, body) in [("/v1/stream/chat/1", "one;"), ("/v1/stream/chat/2", "two;")] {
        assert_eq!(
            server.send("PUT", path, &[acme, text], body).status,
            StatusCode::CREATED
        );
    }
    assert_eq!(
        server
            .send("PUT", "/v1/stream/chat/1", &[globex, text], "globex;")
            .status,
        StatusCode::CREATED
    );

    let base = format!("http://{}", server.address);
    let url = sign(&key, "acme", "chat/1", "3600", &base);
    let signed = url.strip_prefix(&base).expect("the URL starts at --base");
    assert!(signed.starts_with("/v1/stream/chat/1?"), "{signed}");
    let read = server.send("GET", signed, &[], "");
    assert_eq!(read.status, StatusCode::OK, "{}", read.text());
    assert_eq!(read.text(), "one;", "acme's chat/1, not globex's");
    // The client's own parameters sit beside the signature.
    let next = read.next_offset();
    assert!(!next.contains("ds_"), "{next}");
    let from_start = server.send("GET", &format!("{signed}&offset=-1"), &[], "");
    assert_eq!(from_start.text(), "one;");
    let appended = server.send("POST", "/v1/stream/chat/1", &[acme, text], "more;");
    assert_eq!(appended.status, StatusCode::NO_CONTENT);
    let rest = server.send("GET", &format!("{signed}&offset={next}"), &[], "");
    assert_eq!(rest.text(), "more;");
    let polled = server.send(
        "GET",
        &format!("{signed}&offset={}&live=long-poll", appended.next_offset()),
        &[],
        "",
    );
    assert_eq!(
        polled.status,
        StatusCode::NO_CONTENT,
        "up to date: nothing new"
    );
    assert_eq!(server.send("HEAD", signed, &[], "").status, StatusCode::OK);
    // Reads only.
    for method in ["POST", "PUT", "DELETE"] {
        let refused = server.send(method, signed, &[text], "x");
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{method}");
    }
    // Its stream only: moved to another path or tenant, it no longer matches.
    let query = signed.split_once('?').unwrap().1;
    for elsewhere in [
        format!("/v1/stream/chat/2?{query}"),
        format!("/v1/stream/__ds/subscriptions/s?{query}"),
        format!(
            "/v1/stream/chat/1?{}",
            query.replace("ds_tenant=acme", "ds_tenant=globex")
        ),
    ] {
        let refused = server.send("GET", &elsewhere, &[], "");
        assert!(
            matches!(
                refused.status,
                StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
            ),
            "{elsewhere}: {}",
            refused.status
        );
        assert!(!refused.text().contains("one;") && !refused.text().contains("two;"));
    }
    // Tampered: a changed signature or a later expiry.
    let (before, signature) = query.split_once("ds_sig=").unwrap();
    let flipped = match signature.as_bytes()[0] {
        b'A' => format!("B{}", &signature[1..]),
        _ => format!("A{}", &signature[1..]),
    };
    let tampered = server.send(
        "GET",
        &format!("/v1/stream/chat/1?{before}ds_sig={flipped}"),
        &[],
        "",
    );
    assert_eq!(tampered.status, StatusCode::FORBIDDEN);
    assert!(
        tampered.text().contains("does not match"),
        "{}",
        tampered.text()
    );
    let expires: u64 = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("ds_expires="))
        .unwrap()
        .parse()
        .unwrap();
    let extended = signed.replace(
        &format!("ds_expires={expires}"),
        &format!("ds_expires={}", expires + 1000),
    );
    assert_eq!(
        server.send("GET", &extended, &[], "").status,
        StatusCode::FORBIDDEN
    );
    let partial = format!("/v1/stream/chat/1?{before}");
    let partial = server.send("GET", partial.trim_end_matches('&'), &[], "");
    assert_eq!(partial.status, StatusCode::FORBIDDEN);

    // Expiry: a one-second URL works, then is refused, saying why (bounded
    // wait for the clock to pass it; nothing is timed).
    let short = sign(&key, "acme", "chat/1", "1", &base);
    let short = short.strip_prefix(&base).unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let refusal = loop {
        let read = server.send("GET", &short, &[], "");
        if read.status != StatusCode::OK {
            break read;
        }
        assert_eq!(read.text(), "one;more;");
        assert!(std::time::Instant::now() < deadline, "never expired");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(refusal.status, StatusCode::FORBIDDEN);
    assert!(refusal.text().contains("expired"), "{}", refusal.text());
}

#[test]
fn a_malformed_tokens_file_stops_the_server_naming_the_line() {
    let dir = TempDir::new("bin-malformed");
    let tokens = dir.0.join("tokens.txt");
    std::fs::write(
        &tokens,
        format!("{ACME_WRITE} acme write\n{ACME_READ} acme admin\n"),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_livereplay"))
        .args(["serve", "--port", "0", "--tokens-file"])
        .arg(&tokens)
        .arg("--data-dir")
        .arg(dir.0.join("data"))
        .env_remove("LIVEREPLAY_TOKENS")
        .output()
        .expect("run livereplay serve");
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "it listened");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 2"), "{stderr}");
    assert!(stderr.contains("`read` or `write`"), "{stderr}");
    let short_key = dir.0.join("short.key");
    std::fs::write(&short_key, b"too short").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_livereplay"))
        .args(["sign", "--tenant", "t", "--stream", "s", "--ttl-secs", "60"])
        .arg("--signing-key-file")
        .arg(&short_key)
        .output()
        .expect("run livereplay sign");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("at least 32"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
