//! Webhooks over TLS through `livereplay serve` (protocol section 12.8:
//! production webhooks are `https://`): a receiver on loopback with a
//! certificate from a test CA, reached only when the operator allows its
//! host (`--webhook-allow-host`) and trusts its CA (`--webhook-ca-file`).
//!
//! Each test starts its own server and receiver on free loopback ports and
//! stops both (the server by pid when its handle drops, the receiver with
//! the test's runtime).

#[path = "support/ds_server.rs"]
mod ds_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::PrivateKeyDer;
use tokio_rustls::rustls::ServerConfig;

use ds_server::{Served, TempDir};

/// How long a delivery may take to arrive or fail.
const DELIVERY: Duration = Duration::from_secs(10);

/// A CA's PEM, and a TLS acceptor serving a certificate it signed for
/// `localhost` (and no address).
fn test_pki() -> (String, tokio_rustls::TlsAcceptor) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    // The provider the server's own client uses (see `webhook.rs`).
    #[allow(deprecated)]
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    (ca.pem(), tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// One request a receiver took: its signature header and JSON body.
struct Delivery {
    signature: String,
    body: Value,
}

/// A TLS receiver on a free loopback port that answers `{"done": true}`
/// and hands each request to the returned channel.
async fn receiver(acceptor: tokio_rustls::TlsAcceptor) -> (u16, mpsc::UnboundedReceiver<Delivery>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (sender, deliveries) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, sender) = (acceptor.clone(), sender.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let sender = sender.clone();
                        async move {
                            let signature = request
                                .headers()
                                .get("webhook-signature")
                                .and_then(|value| value.to_str().ok())
                                .unwrap_or_default()
                                .to_string();
                            let body = request.into_body().collect().await?.to_bytes();
                            let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            let _ = sender.send(Delivery { signature, body });
                            Ok::<_, hyper::Error>(hyper::Response::new(Full::new(
                                Bytes::from_static(b"{\"done\": true}"),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (port, deliveries)
}

/// A server over a fresh data directory with `flags`, and a JSON stream
/// `jobs/a` on it.
fn server(dir: &TempDir, flags: &[&str]) -> Served {
    let data = dir.0.join("data");
    let mut args = vec!["--data-dir", data.to_str().unwrap()];
    args.extend_from_slice(flags);
    let served = Served::start(&args, None);
    let created = served.send(
        "PUT",
        "/v1/stream/jobs/a",
        &[("content-type", "application/json")],
        "",
    );
    assert_eq!(created.status, 201, "{}", created.text());
    served
}

/// `PUT`s a webhook subscription on `jobs/*` calling `url`.
fn subscribe(served: &Served, id: &str, url: &str) -> ds_server::Reply {
    let body = json!({ "type": "webhook", "pattern": "jobs/*", "webhook": { "url": url } });
    served.send(
        "PUT",
        &format!("/v1/stream/__ds/subscriptions/{id}"),
        &[("content-type", "application/json")],
        body.to_string(),
    )
}

fn append(served: &Served) {
    let appended = served.send(
        "POST",
        "/v1/stream/jobs/a",
        &[("content-type", "application/json")],
        r#"{"job": 1}"#,
    );
    assert!(appended.status.is_success(), "{}", appended.text());
}

/// The subscription's `status` and `last_error` once a delivery failed.
fn failure(served: &Served, id: &str) -> (String, String) {
    let started = Instant::now();
    loop {
        let reply = served.send(
            "GET",
            &format!("/v1/stream/__ds/subscriptions/{id}"),
            &[],
            "",
        );
        let described: Value = serde_json::from_slice(&reply.body).unwrap();
        if described["status"] == "failed" || started.elapsed() > DELIVERY {
            return (
                described["status"].as_str().unwrap_or_default().to_string(),
                described["last_error"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Allowed and trusted: an append to a matching stream reaches the
/// receiver over TLS, signed, naming the stream and a callback.
#[test]
fn a_webhook_is_delivered_over_verified_tls() {
    let runtime = runtime();
    let (ca_pem, acceptor) = test_pki();
    let (port, mut deliveries) = runtime.block_on(receiver(acceptor));
    let dir = TempDir::new("webhook-tls");
    let ca = dir.0.join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let served = server(
        &dir,
        &[
            "--webhook-allow-host",
            "localhost",
            "--webhook-ca-file",
            ca.to_str().unwrap(),
            "--public-url",
            "https://streams.example.com/base/",
        ],
    );

    let created = subscribe(&served, "tls", &format!("https://localhost:{port}/hook"));
    assert!(created.status.is_success(), "{}", created.text());
    append(&served);
    let delivery = runtime
        .block_on(async { tokio::time::timeout(DELIVERY, deliveries.recv()).await })
        .expect("a delivery within the bound")
        .expect("the receiver is running");
    assert!(!delivery.signature.is_empty(), "the delivery is signed");
    assert_eq!(delivery.body["subscription_id"], "tls");
    let streams = delivery.body["streams"].to_string();
    assert!(streams.contains("jobs/a"), "{streams}");
    // Behind a TLS proxy the callback is named by the public URL.
    assert_eq!(
        delivery.body["callback_url"],
        "https://streams.example.com/base/v1/stream/__ds/subscriptions/tls/callback"
    );
}

/// A `--public-url` that cannot name a base stops the server at start,
/// saying why.
#[test]
fn a_bad_public_url_is_refused_at_start() {
    let dir = TempDir::new("public-url");
    for bad in ["ftp://streams.example.com", "/v1", "https://x.example/?a=1"] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_livereplay"))
            .args(["serve", "--port", "0", "--data-dir"])
            .arg(dir.0.join("data"))
            .args(["--public-url", bad])
            .output()
            .unwrap();
        assert!(!output.status.success(), "{bad}");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(said.contains("--public-url"), "{bad}: {said}");
    }
}

/// Without the operator's allowance a loopback https target is refused at
/// creation; allowed but with its CA untrusted, or named by an address its
/// certificate does not hold, every delivery fails and the subscription
/// says why.
#[test]
fn an_unverified_receiver_is_never_delivered_to() {
    let runtime = runtime();
    let (_ca_pem, acceptor) = test_pki();
    let (port, mut deliveries) = runtime.block_on(receiver(acceptor));
    let dir = TempDir::new("webhook-untrusted");

    let strict = server(&dir, &[]);
    let refused = subscribe(&strict, "local", &format!("https://localhost:{port}/hook"));
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert!(
        refused.text().contains("WEBHOOK_URL_REJECTED"),
        "{}",
        refused.text()
    );
    drop(strict);

    let dir = TempDir::new("webhook-untrusted-2");
    let served = server(
        &dir,
        &[
            "--webhook-allow-host",
            "localhost",
            "--webhook-allow-host",
            "127.0.0.1",
        ],
    );
    // By name, and by an address the certificate does not hold.
    for (id, host, said) in [
        ("by-name", "localhost", "TLS"),
        ("by-address", "127.0.0.1", "certificate"),
    ] {
        let created = subscribe(&served, id, &format!("https://{host}:{port}/hook"));
        assert!(created.status.is_success(), "{}", created.text());
        append(&served);
        let (status, error) = failure(&served, id);
        assert_eq!(status, "failed");
        assert!(
            error.contains(said) && error.contains("certificate"),
            "{error}"
        );
    }
    assert!(
        deliveries.try_recv().is_err(),
        "no request got through an unverified TLS session"
    );
}
