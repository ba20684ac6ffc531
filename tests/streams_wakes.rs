//! Subscription wakes across a crash of `livereplay serve` (protocol
//! section 7): a webhook wake in flight is delivered by the restarted
//! server without waiting for another write, and a pull-wake lease keeps
//! its holder and its token.
//!
//! Each test starts its own server (killed with SIGKILL, by pid, and
//! restarted on the same data directory) and, for webhooks, a receiver on
//! a free loopback port that stops with the test's runtime.

#[path = "support/ds_server.rs"]
mod ds_server;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use ds_server::{Reply, Served, TempDir};

/// How long a delivery may take to arrive (the first retry after a
/// failure comes 1 to 1.2 s later).
const DELIVERY: Duration = Duration::from_secs(10);

const JSON: (&str, &str) = ("content-type", "application/json");

fn start(dir: &TempDir) -> Served {
    let data = dir.0.join("data");
    Served::start(&["--data-dir", data.to_str().unwrap()], None)
}

fn create(served: &Served, path: &str) {
    let created = served.send("PUT", &format!("/v1/stream/{path}"), &[JSON], "");
    assert_eq!(created.status, 201, "{}", created.text());
}

/// Appends one message to `jobs/a`; returns the stream's tail after it.
fn append(served: &Served) -> String {
    let appended = served.send("POST", "/v1/stream/jobs/a", &[JSON], r#"{"job": 1}"#);
    assert!(appended.status.is_success(), "{}", appended.text());
    appended.next_offset()
}

fn subscribe(served: &Served, id: &str, body: Value) {
    let created = served.send(
        "PUT",
        &format!("/v1/stream/__ds/subscriptions/{id}"),
        &[JSON],
        body.to_string(),
    );
    assert_eq!(created.status, 201, "{}", created.text());
}

/// A server with streams `jobs/a` and `wakes`, and subscription `pull`:
/// pull-wake on `jobs/*` into `wakes`, leases of `lease_ms`.
fn pull_wake_server(dir: &TempDir, lease_ms: u64) -> Served {
    let served = start(dir);
    create(&served, "jobs/a");
    create(&served, "wakes");
    subscribe(
        &served,
        "pull",
        json!({ "type": "pull-wake", "pattern": "jobs/*", "wake_stream": "wakes", "lease_ttl_ms": lease_ms }),
    );
    served
}

fn json_of(reply: &Reply) -> Value {
    serde_json::from_slice(&reply.body).unwrap_or(Value::Null)
}

/// A webhook receiver on a free loopback port: `500` while `accept` is
/// false, else `{"done": true}`; every request's body goes to the channel.
async fn receiver(accept: Arc<AtomicBool>) -> (u16, mpsc::UnboundedReceiver<Value>) {
    let (sender, deliveries) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let (accept, sender) = (Arc::clone(&accept), sender.clone());
            async move {
                let _ = sender.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
                if accept.load(Ordering::SeqCst) {
                    (StatusCode::OK, r#"{"done": true}"#)
                } else {
                    (StatusCode::INTERNAL_SERVER_ERROR, "not now")
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, deliveries)
}

/// A webhook whose receiver failed before the crash is delivered by the
/// restarted server with no new write, and its `done` acks the tail.
#[test]
fn a_webhook_wake_in_flight_is_delivered_after_a_crash() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let accept = Arc::new(AtomicBool::new(false));
    let (port, mut deliveries) = runtime.block_on(receiver(Arc::clone(&accept)));
    let next = |deliveries: &mut mpsc::UnboundedReceiver<Value>| {
        runtime
            .block_on(async { tokio::time::timeout(DELIVERY, deliveries.recv()).await })
            .expect("a delivery within the bound")
            .expect("the receiver is running")
    };
    let dir = TempDir::new("wake-webhook");
    let mut served = start(&dir);
    create(&served, "jobs/a");
    let url = format!("http://127.0.0.1:{port}/hook");
    subscribe(
        &served,
        "hook",
        json!({ "type": "webhook", "pattern": "jobs/*", "webhook": { "url": url } }),
    );
    let tail = append(&served);
    let refused = next(&mut deliveries);
    served.kill();

    accept.store(true, Ordering::SeqCst);
    let served = start(&dir);
    let delivered = next(&mut deliveries);
    assert_eq!(
        delivered["wake_id"], refused["wake_id"],
        "the same wake, resumed"
    );
    assert_eq!(delivered["streams"][0]["tail_offset"], tail.as_str());
    // Its `done` acked the tail: the subscription has nothing pending.
    // The receiver sees the delivery before the server reads its answer,
    // so the ack lands a moment after `next` returns: poll, bounded.
    let deadline = std::time::Instant::now() + DELIVERY;
    let described = loop {
        let described = json_of(&served.send("GET", "/v1/stream/__ds/subscriptions/hook", &[], ""));
        if described["streams"][0]["acked_offset"] == tail.as_str()
            || std::time::Instant::now() >= deadline
        {
            break described;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        described["streams"][0]["acked_offset"],
        tail.as_str(),
        "{described}"
    );
}

/// A pull-wake lease outlives a crash: another worker is still refused,
/// and the holder's ack with the token it was given is accepted.
#[test]
fn a_pull_wake_lease_and_its_token_survive_a_crash() {
    let dir = TempDir::new("wake-lease");
    let mut served = pull_wake_server(&dir, 600_000);
    let tail = append(&served);
    let claim = |served: &Served, worker: &str| {
        served.send(
            "POST",
            "/v1/stream/__ds/subscriptions/pull/claim",
            &[JSON],
            json!({ "worker": worker }).to_string(),
        )
    };
    let claimed = claim(&served, "w1");
    assert_eq!(claimed.status, 200, "{}", claimed.text());
    let lease = json_of(&claimed);
    served.kill();

    let served = start(&dir);
    let busy = claim(&served, "w2");
    assert_eq!(busy.status, 409, "{}", busy.text());
    assert!(busy.text().contains("w1"), "{}", busy.text());
    let token = format!("Bearer {}", lease["token"].as_str().unwrap());
    let acked = served.send(
        "POST",
        "/v1/stream/__ds/subscriptions/pull/ack",
        &[JSON, ("authorization", token.as_str())],
        json!({
            "wake_id": lease["wake_id"],
            "generation": lease["generation"],
            "acks": [{ "stream": "jobs/a", "offset": tail }],
            "done": true,
        })
        .to_string(),
    );
    assert_eq!(acked.status, 200, "{}", acked.text());
    assert_eq!(json_of(&acked), json!({ "ok": true, "next_wake": false }));
}

/// Protocol 7.3: an ack that is not done extends a pull-wake lease, and
/// once the lease runs out, pending work gets another wake (the next
/// generation, a new event in the wake stream) with no new write.
#[test]
fn an_ack_extends_a_lease_and_its_end_wakes_pending_work_again() {
    let dir = TempDir::new("wake-expiry");
    let served = pull_wake_server(&dir, 4000);
    append(&served);
    let claim = |worker: &str| {
        served.send(
            "POST",
            "/v1/stream/__ds/subscriptions/pull/claim",
            &[JSON],
            json!({ "worker": worker }).to_string(),
        )
    };
    let claimed = claim("w1");
    let started = std::time::Instant::now();
    assert_eq!(claimed.status, 200, "{}", claimed.text());
    let lease = json_of(&claimed);
    let at = |millis: u64| {
        let due = Duration::from_millis(millis);
        std::thread::sleep(due.saturating_sub(started.elapsed()));
    };

    at(2500);
    let token = format!("Bearer {}", lease["token"].as_str().unwrap());
    let extended = served.send(
        "POST",
        "/v1/stream/__ds/subscriptions/pull/ack",
        &[JSON, ("authorization", token.as_str())],
        json!({ "wake_id": lease["wake_id"], "generation": lease["generation"], "acks": [], "done": false })
            .to_string(),
    );
    assert_eq!(extended.status, 200, "{}", extended.text());
    // Past the first end (4 s), well before the extended one (about 6.5 s):
    // slack for a loaded machine on both sides.
    at(4200);
    assert_eq!(claim("w2").status, 409, "the ack extended the lease");

    at(7600);
    let woken = json_of(&served.send("GET", "/v1/stream/wakes?offset=-1", &[], ""));
    let generations: Vec<&Value> = woken
        .as_array()
        .unwrap()
        .iter()
        .map(|wake| &wake["generation"])
        .collect();
    let first = lease["generation"].as_u64().unwrap();
    assert_eq!(generations, [&json!(first), &json!(first + 1)], "{woken}");
    let reclaimed = claim("w2");
    assert_eq!(reclaimed.status, 200, "{}", reclaimed.text());
    assert_eq!(json_of(&reclaimed)["generation"], first + 1);
}
