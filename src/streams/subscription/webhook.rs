//! Webhook targets: which URLs a subscription may call (SSRF, protocol
//! section 12.8), and one signed HTTP/1.1 `POST` to them.
//!
//! Owns [`WebhookUrl`] and [`post`]. Invariants: a URL is accepted only if
//! this server can deliver to it safely: `http://localhost` or
//! `http://127.0.0.x` (the protocol's development exception). This build
//! has no TLS client, so `https://` targets are refused at creation rather
//! than accepted and never delivered. A delivery is bounded in time and in
//! the size of the answer it reads.

use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The most of a webhook's answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// A webhook URL this server delivers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    /// The URL as given.
    pub text: String,
    host: String,
    port: u16,
    path: String,
}

impl WebhookUrl {
    /// Checks a URL; the error says why it is refused.
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix("http://") else {
            return Err(if text.starts_with("https://") {
                "this server cannot deliver to https:// webhooks yet (no TLS client): use http://localhost or http://127.0.0.x in development".into()
            } else {
                "a webhook URL must be http://localhost or http://127.0.0.x (https:// is not supported yet)".into()
            });
        };
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, "/"),
        };
        if authority.contains('@') || path.contains(['\r', '\n', ' ']) {
            return Err(
                "the webhook URL has credentials or characters not allowed in a request line"
                    .into(),
            );
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse::<u16>()
                    .map_err(|_| format!("the webhook URL's port {port:?} is not a port"))?,
            ),
            None => (authority, 80),
        };
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
        Ok(Self {
            text: text.to_string(),
            host,
            port,
            path: path.to_string(),
        })
    }
}

/// What a webhook answered.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body (at most 64 KiB of it).
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
    let mut stream = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|error| format!("cannot connect to {}: {error}", url.text))?;
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: {}:{}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nwebhook-signature: {signature}\r\nconnection: close\r\n\r\n",
        url.path,
        url.host,
        url.port,
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .await
        .and(stream.write_all(body).await)
        .map_err(|error| format!("cannot send to {}: {error}", url.text))?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(MAX_ANSWER as u64)
        .read_to_end(&mut raw)
        .await
        .map_err(|error| format!("cannot read {}'s answer: {error}", url.text))?;
    parse_answer(&raw)
        .ok_or_else(|| format!("{} answered something that is not HTTP/1.1", url.text))
}

/// An HTTP/1.1 response: its status, and its body (de-chunked).
fn parse_answer(raw: &[u8]) -> Option<Answer> {
    let split = raw.windows(4).position(|window| window == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let chunked = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let mut rest = &raw[split + 4..];
    if !chunked {
        return Some(Answer {
            status,
            body: rest.to_vec(),
        });
    }
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|window| window == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(Answer { status, body });
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
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
    fn answers_plain_and_chunked() {
        let plain = parse_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((plain.status, plain.body.as_slice()), (200, &b"{}"[..]));
        let chunked = parse_answer(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(chunked.body, b"{\"a\":1}");
        assert!(parse_answer(b"garbage").is_none());
    }
}
