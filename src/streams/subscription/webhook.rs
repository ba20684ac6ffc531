//! Webhook targets: which URLs a subscription may call (SSRF, protocol
//! section 12.8), and one signed `POST` to them, through hyper's HTTP/1
//! client.
//!
//! Owns [`WebhookUrl`] and [`post`]. Invariants: a URL is accepted only if
//! this server can deliver to it safely: `http://localhost` or
//! `http://127.0.0.x` (the protocol's development exception). This build
//! has no TLS client, so `https://` targets are refused at creation rather
//! than accepted and never delivered. A delivery is bounded in time and in
//! the size of the answer it reads (a larger answer is an error).

use std::net::Ipv4Addr;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

/// The most of a webhook's answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// A webhook URL this server delivers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    /// The URL as given.
    pub text: String,
    host: String,
    port: u16,
    /// The path and query the request names.
    target: String,
}

impl WebhookUrl {
    /// Checks a URL; the error says why it is refused.
    pub fn parse(text: &str) -> Result<Self, String> {
        const ALLOWED: &str = "a webhook URL must be http://localhost or http://127.0.0.x (https:// is not supported yet)";
        let uri: Uri = text
            .parse()
            .map_err(|error| format!("the webhook URL does not parse ({error}): {ALLOWED}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err("this server cannot deliver to https:// webhooks yet (no TLS client): use http://localhost or http://127.0.0.x in development".into())
            }
            _ => return Err(ALLOWED.into()),
        }
        let Some(authority) = uri.authority() else {
            return Err(ALLOWED.into());
        };
        if authority.as_str().contains('@') {
            return Err("the webhook URL has credentials, which are not sent".into());
        }
        let host = authority.host();
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<Ipv4Addr>()
                .is_ok_and(|ip| ip.octets()[..3] == [127, 0, 0]);
        if !loopback {
            return Err(format!(
                "webhook host {host:?} is refused: private, link-local and other network targets are not allowed; http:// is only for localhost and 127.0.0.x"
            ));
        }
        let host = if host.eq_ignore_ascii_case("localhost") {
            "127.0.0.1".to_string()
        } else {
            host.to_string()
        };
        // `Uri` accepts a port it cannot read as a number (`:99999`) and
        // then reports none at all, so the text after the host decides.
        let port = match authority.as_str()[authority.host().len()..].strip_prefix(':') {
            None => 80,
            Some(port) => port
                .parse::<u16>()
                .map_err(|_| format!("the webhook URL's port {port:?} is not a port"))?,
        };
        Ok(Self {
            text: text.to_string(),
            host,
            port,
            target: uri
                .path_and_query()
                .map_or_else(|| "/".to_string(), |target| target.as_str().to_string()),
        })
    }
}

/// What a webhook answered.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body (at most 64 KiB).
    pub body: Vec<u8>,
}

/// One `POST` of `body` with its `Webhook-Signature`, within `timeout`.
pub async fn post(
    url: &WebhookUrl,
    signature: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Answer, String> {
    tokio::time::timeout(timeout, post_inner(url, signature, body))
        .await
        .map_err(|_| format!("no answer from {} within {timeout:?}", url.text))?
}

async fn post_inner(url: &WebhookUrl, signature: &str, body: &[u8]) -> Result<Answer, String> {
    let stream = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|error| format!("cannot connect to {}: {error}", url.text))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| format!("cannot talk HTTP/1 to {}: {error}", url.text))?;
    let request = Request::post(url.target.as_str())
        .header(header::HOST, format!("{}:{}", url.host, url.port))
        .header(header::CONTENT_TYPE, "application/json")
        .header("webhook-signature", signature)
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|error| format!("cannot build the request to {}: {error}", url.text))?;
    let exchange = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| format!("cannot send to {}: {error}", url.text))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|error| format!("cannot read {}'s answer: {error}", url.text))?
            .to_bytes()
            .to_vec();
        Ok(Answer { status, body })
        // `sender` drops here, which ends `connection` below.
    };
    // The connection does the I/O; it ends once the exchange lets go.
    let (answer, _closed) = tokio::join!(exchange, connection);
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_http_targets_are_accepted() {
        assert!(WebhookUrl::parse("http://127.0.0.1:9000/hook").is_ok());
        assert!(WebhookUrl::parse("http://localhost/hook").is_ok());
        for refused in [
            "http://10.0.0.1/hook",
            "http://169.254.169.254/latest",
            "http://192.168.1.2/",
            "http://example.com/",
            "http://127.0.1.1/",
            "https://example.com/hook",
            "ftp://127.0.0.1/",
            "http://user@127.0.0.1/",
            "http://127.0.0.1:99999/",
        ] {
            assert!(WebhookUrl::parse(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn the_request_target_keeps_the_path_and_query() {
        let url = WebhookUrl::parse("http://127.0.0.1:9000/hook/a?x=1").unwrap();
        assert_eq!((url.port, url.target.as_str()), (9000, "/hook/a?x=1"));
        let bare = WebhookUrl::parse("http://localhost").unwrap();
        assert_eq!(
            (bare.host.as_str(), bare.port, bare.target.as_str()),
            ("127.0.0.1", 80, "/")
        );
    }

    /// A real exchange with a loopback server: the request carries the
    /// body and the signature, a chunked answer is read whole, and an
    /// answer over the limit is an error.
    #[tokio::test]
    async fn posts_and_reads_the_answer() {
        use axum::routing::post as route_post;

        let app = axum::Router::new()
            .route(
                "/hook",
                route_post(|headers: axum::http::HeaderMap, body: Bytes| async move {
                    let signature = headers
                        .get("webhook-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    // A streamed body is sent chunked.
                    let parts: Vec<Result<Bytes, std::convert::Infallible>> =
                        vec![Ok(Bytes::from(format!("{signature}:"))), Ok(body)];
                    axum::body::Body::from_stream(futures_util::stream::iter(parts))
                }),
            )
            .route("/big", route_post(|| async { vec![b'x'; MAX_ANSWER + 1] }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        let url = WebhookUrl::parse(&format!("http://localhost:{port}/hook")).unwrap();
        let answer = post(&url, "v1,abc", b"{\"a\":1}", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, b"v1,abc:{\"a\":1}");

        let big = WebhookUrl::parse(&format!("http://127.0.0.1:{port}/big")).unwrap();
        let error = post(&big, "s", b"{}", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(error.contains("answer"), "{error}");

        let missing = WebhookUrl::parse(&format!("http://127.0.0.1:{port}/nowhere")).unwrap();
        let answer = post(&missing, "s", b"{}", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(answer.status, 404);
        server.abort();
    }
}
