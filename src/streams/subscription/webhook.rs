//! Webhook targets: which URLs a subscription may call (SSRF, protocol
//! section 12.8), and one signed `POST` to them over hyper's HTTP/1 client,
//! in TLS for `https://` targets.
//!
//! Owns [`WebhookOptions`] (the operator's allowlist and extra trust
//! anchors), [`WebhookUrl`], the client ([`WebhookClient`]) and [`post`].
//!
//! # Invariants
//!
//! * **Only safe targets are accepted** (at creation, and again at each
//!   delivery, so a tighter configuration after a restart applies to old
//!   subscriptions too):
//!   - `https://` to a host that is not a non-public address: an address
//!     literal must be public ([`is_public`]); a name is accepted here and
//!     its addresses are checked when it is called; `localhost` and
//!     `*.localhost` are loopback by definition (RFC 6761) and refused;
//!   - `http://` only to `localhost` or `127.0.0.x`, the protocol's
//!     development exception;
//!   - a host on the operator's allowlist ([`WebhookOptions::allow_host`])
//!     skips the address check, for receivers on the server's own
//!     network; never the scheme rule.
//! * **The address called is the address checked.** A name is resolved
//!   once per delivery, every address it resolves to must be public (one
//!   private address refuses the delivery: a name that mixes them is a
//!   misconfiguration or a rebinding attempt), and the connection goes to
//!   one of those very addresses, never to a second resolution.
//! * **TLS is verified**: the chain against Mozilla's roots (`webpki-roots`)
//!   and the operator's extra anchors, and the URL's host against the
//!   certificate. There is no switch that turns verification off.
//! * A delivery is bounded in time and in the size of the answer it reads
//!   (a larger answer is an error).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// The most of a webhook's answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// Where webhooks may go beyond the protocol's defaults (part of
/// [`StreamsOptions`](crate::streams::StreamsOptions)).
///
/// By default a webhook is `https://` to a public address, verified
/// against Mozilla's roots, or `http://` to `localhost`/`127.0.0.x` for
/// development. An operator whose receivers live on the server's own
/// network (a private address, a private CA) says so here:
///
/// ```
/// use livereplay::streams::{StreamsOptions, WebhookOptions};
///
/// let webhooks = WebhookOptions::default().allow_host("hooks.internal");
/// // With a private CA as well: `.trust_pem(&std::fs::read("ca.pem")?)?`
/// let options = StreamsOptions {
///     webhooks,
///     ..StreamsOptions::default()
/// };
/// # assert_ne!(options, StreamsOptions::default());
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct WebhookOptions {
    /// Hosts called whatever their addresses, lowercased.
    allowed_hosts: Vec<String>,
    /// Trust anchors besides Mozilla's, each one `RootCertStore` accepted.
    extra_roots: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for WebhookOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookOptions")
            .field("allowed_hosts", &self.allowed_hosts)
            .field("extra_roots", &self.extra_roots.len())
            .finish()
    }
}

impl WebhookOptions {
    /// Lets webhooks call `host` (a name, or an address as written in a
    /// URL, without brackets) even where it is or resolves to a private,
    /// loopback or link-local address: the operator vouches for it
    /// (protocol section 12.8 allows such an allowlist). `http://` stays
    /// refused for it, but for the development exception.
    pub fn allow_host(mut self, host: impl Into<String>) -> Self {
        let host = host.into().trim_matches(['[', ']']).to_ascii_lowercase();
        if !self.allowed_hosts.contains(&host) {
            self.allowed_hosts.push(host);
        }
        self
    }

    /// Trusts the certificates in `pem` (one or more `CERTIFICATE`
    /// blocks, a private CA's) as roots for `https://` webhooks, beside
    /// Mozilla's. The error says what was wrong: no certificate, or one
    /// that does not parse.
    pub fn trust_pem(mut self, pem: &[u8]) -> Result<Self, String> {
        let mut check = RootCertStore::empty();
        let mut found = 0;
        for certificate in CertificateDer::pem_slice_iter(pem) {
            let certificate = certificate
                .map_err(|error| format!("a certificate in the PEM does not read: {error}"))?;
            check.add(certificate.clone()).map_err(|error| {
                format!("a certificate in the PEM is not a usable root: {error}")
            })?;
            self.extra_roots.push(certificate);
            found += 1;
        }
        if found == 0 {
            return Err("the PEM holds no CERTIFICATE block".into());
        }
        Ok(self)
    }

    fn allows(&self, host: &str) -> bool {
        self.allowed_hosts
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(host))
    }
}

/// Whether an address is one anyone on the internet could reach: not
/// loopback, private (RFC 1918, unique local), link-local (which holds the
/// cloud metadata endpoints), shared (CGNAT), unspecified, broadcast,
/// multicast, reserved or for documentation and benchmarks. IPv6 forms that
/// carry an IPv4 address (mapped, compatible, 6to4, NAT64) are judged by
/// it. `std`'s `is_global` would do this but is not stable.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || a == 0 // "this network"
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || (a == 100 && (64..128).contains(&b)) // shared address space, RFC 6598
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || ip.is_documentation()
        || (a == 198 && (b == 18 || b == 19)) // benchmarking, RFC 2544
        || ip.is_multicast()
        || a >= 240) // reserved, and the broadcast address
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let segments = ip.segments();
    let embedded = |high: u16, low: u16| Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
    match segments {
        // IPv4-compatible (deprecated, ::a.b.c.d), and NAT64 (64:ff9b::/96).
        [0, 0, 0, 0, 0, 0, high, low] if high != 0 => is_public_v4(embedded(high, low)),
        [0x64, 0xff9b, 0, 0, 0, 0, high, low] => is_public_v4(embedded(high, low)),
        // 6to4 (2002::/16) carries its IPv4 address in bits 16..48.
        [0x2002, high, low, ..] => is_public_v4(embedded(high, low)),
        _ => {
            !(ip.is_unspecified()
                || ip.is_loopback()
                || ip.is_multicast()
                || (segments[0] & 0xfe00) == 0xfc00 // unique local, fc00::/7
                || (segments[0] & 0xffc0) == 0xfe80 // link-local, fe80::/10
                || (segments[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
                || segments[..4] == [0x100, 0, 0, 0]) // discard-only, 100::/64
        }
    }
}

/// `localhost` and its subdomains: loopback by definition (RFC 6761).
fn is_localhost_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

/// A webhook URL this server delivers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    /// The URL as given.
    pub text: String,
    scheme: Scheme,
    /// The host as written (an IPv6 address without its brackets).
    host: String,
    port: u16,
    /// `Host:` of the request: the URL's authority.
    authority: String,
    /// The path and query the request names.
    target: String,
}

impl WebhookUrl {
    /// Checks a URL against the rules of the module docs and `options`;
    /// the error says why it is refused.
    pub fn parse(text: &str, options: &WebhookOptions) -> Result<Self, String> {
        const ALLOWED: &str = "a webhook URL must be https://, or http://localhost or http://127.0.0.x in development";
        let uri: Uri = text
            .parse()
            .map_err(|error| format!("the webhook URL does not parse ({error}): {ALLOWED}"))?;
        let scheme = match uri.scheme_str() {
            Some("https") => Scheme::Https,
            Some("http") => Scheme::Http,
            _ => return Err(ALLOWED.into()),
        };
        let Some(authority) = uri.authority() else {
            return Err(ALLOWED.into());
        };
        if authority.as_str().contains('@') {
            return Err("the webhook URL has credentials, which are not sent".into());
        }
        let written = authority.host();
        let host = written.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(ALLOWED.into());
        }
        let literal = host.parse::<IpAddr>().ok();
        match scheme {
            Scheme::Http => {
                let development = host.eq_ignore_ascii_case("localhost")
                    || matches!(literal, Some(IpAddr::V4(ip)) if ip.octets()[..3] == [127, 0, 0]);
                if !development {
                    return Err(format!(
                        "webhook host {host:?} is refused over http://: production webhooks must be https:// (http:// is only for localhost and 127.0.0.x)"
                    ));
                }
            }
            Scheme::Https if options.allows(host) => {}
            Scheme::Https => {
                let private = match literal {
                    Some(ip) => !is_public(ip),
                    None => is_localhost_name(host),
                };
                if private {
                    return Err(format!(
                        "webhook host {host:?} is refused: loopback, private, link-local and other non-public targets are not called unless the server's operator allows the host"
                    ));
                }
            }
        }
        // `Uri` accepts a port it cannot read as a number (`:99999`) and
        // then reports none at all, so the text after the host decides.
        let port = match authority.as_str()[written.len()..].strip_prefix(':') {
            None => match scheme {
                Scheme::Http => 80,
                Scheme::Https => 443,
            },
            Some(port) => port
                .parse::<u16>()
                .map_err(|_| format!("the webhook URL's port {port:?} is not a port"))?,
        };
        Ok(Self {
            text: text.to_string(),
            scheme,
            host: host.to_string(),
            port,
            authority: authority.as_str().to_string(),
            target: uri
                .path_and_query()
                .map_or_else(|| "/".to_string(), |target| target.as_str().to_string()),
        })
    }
}

/// What deliveries share: the allowlist and the TLS configuration (built
/// once: Mozilla's roots and the operator's).
pub(crate) struct WebhookClient {
    options: WebhookOptions,
    /// `Err`: the TLS configuration could not be built (then every
    /// `https://` delivery fails with this reason; `http://` still works).
    tls: Result<TlsConnector, String>,
}

impl WebhookClient {
    pub(crate) fn new(options: &WebhookOptions) -> Self {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for certificate in &options.extra_roots {
            // Each was accepted by `trust_pem`, into a store just like this.
            let _ = roots.add(certificate.clone());
        }
        // rustls deprecates `ring`'s provider for lacking post-quantum key
        // exchange, which a webhook's short signed POST does not need;
        // `ring` builds with gcc alone (aws-lc-rs, the other provider,
        // wants cmake, which this project's machines do not have).
        #[allow(deprecated)]
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|builder| {
                let config = builder.with_root_certificates(roots).with_no_client_auth();
                TlsConnector::from(Arc::new(config))
            })
            .map_err(|error| format!("TLS is not available in this build: {error}"));
        Self {
            options: options.clone(),
            tls,
        }
    }

    /// The address to call for `url`: its literal, or the first of the
    /// addresses its name resolves to, each checked (module invariants).
    async fn address(&self, url: &WebhookUrl) -> Result<SocketAddr, String> {
        // `localhost` is IPv4 loopback here, as receivers listen (its
        // resolution may put `::1` first).
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        if url.scheme == Scheme::Http {
            // The development exception, which `parse` checked.
            let ip = url.host.parse().unwrap_or(loopback);
            return Ok(SocketAddr::new(ip, url.port));
        }
        let addresses: Vec<SocketAddr> = match url.host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, url.port)],
            Err(_) if is_localhost_name(&url.host) => vec![SocketAddr::new(loopback, url.port)],
            Err(_) => tokio::net::lookup_host((url.host.as_str(), url.port))
                .await
                .map_err(|error| format!("cannot resolve {}: {error}", url.host))?
                .collect(),
        };
        if !self.options.allows(&url.host) {
            if let Some(private) = addresses.iter().find(|address| !is_public(address.ip())) {
                return Err(format!(
                    "{} resolves to {}, which is not a public address: refused (the server's operator may allow the host)",
                    url.host,
                    private.ip()
                ));
            }
        }
        addresses
            .first()
            .copied()
            .ok_or_else(|| format!("{} resolves to no address", url.host))
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
pub(crate) async fn post(
    client: &WebhookClient,
    url: &WebhookUrl,
    signature: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Answer, String> {
    tokio::time::timeout(timeout, post_inner(client, url, signature, body))
        .await
        .map_err(|_| format!("no answer from {} within {timeout:?}", url.text))?
}

async fn post_inner(
    client: &WebhookClient,
    url: &WebhookUrl,
    signature: &str,
    body: &[u8],
) -> Result<Answer, String> {
    let address = client.address(url).await?;
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|error| format!("cannot connect to {} ({address}): {error}", url.text))?;
    let request = Request::post(url.target.as_str())
        .header(header::HOST, url.authority.as_str())
        .header(header::CONTENT_TYPE, "application/json")
        .header("webhook-signature", signature)
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|error| format!("cannot build the request to {}: {error}", url.text))?;
    match url.scheme {
        Scheme::Http => exchange(stream, url, request).await,
        Scheme::Https => {
            let tls = client.tls.as_ref().map_err(Clone::clone)?;
            let name = ServerName::try_from(url.host.clone())
                .map_err(|error| format!("{:?} is not a TLS server name: {error}", url.host))?;
            let stream = tls
                .connect(name, stream)
                .await
                .map_err(|error| format!("TLS with {} failed: {error}", url.text))?;
            exchange(stream, url, request).await
        }
    }
}

/// `request` over `io`, and the answer, read whole up to [`MAX_ANSWER`].
async fn exchange<I>(
    io: I,
    url: &WebhookUrl,
    request: Request<Full<Bytes>>,
) -> Result<Answer, String>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|error| format!("cannot talk HTTP/1 to {}: {error}", url.text))?;
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

    fn no_options() -> WebhookOptions {
        WebhookOptions::default()
    }

    #[test]
    fn https_to_public_hosts_and_http_only_to_loopback_are_accepted() {
        for accepted in [
            "http://127.0.0.1:9000/hook",
            "http://localhost/hook",
            "https://example.com/hook",
            "https://hooks.example.com:8443/a?b=1",
            "https://93.184.215.14/hook",
            "https://[2606:4700::1111]/hook",
        ] {
            assert!(
                WebhookUrl::parse(accepted, &no_options()).is_ok(),
                "{accepted}"
            );
        }
        for refused in [
            "http://10.0.0.1/hook",
            "http://169.254.169.254/latest",
            "http://192.168.1.2/",
            "http://example.com/",
            "http://127.0.1.1/",
            "https://localhost/hook",
            "https://api.localhost/hook",
            "https://127.0.0.1/hook",
            "https://10.1.2.3/hook",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/hook",
            "https://[fd00::1]/hook",
            "https://[::ffff:192.168.0.1]/hook",
            "ftp://127.0.0.1/",
            "http://user@127.0.0.1/",
            "https://user:secret@example.com/",
            "http://127.0.0.1:99999/",
        ] {
            assert!(
                WebhookUrl::parse(refused, &no_options()).is_err(),
                "{refused}"
            );
        }
    }

    #[test]
    fn an_allowed_host_may_be_private_but_not_plain_http() {
        let options = WebhookOptions::default()
            .allow_host("Hooks.Internal")
            .allow_host("10.0.0.7")
            .allow_host("[fd00::7]");
        for accepted in [
            "https://hooks.internal/h",
            "https://10.0.0.7:8443/h",
            "https://[fd00::7]/h",
        ] {
            assert!(WebhookUrl::parse(accepted, &options).is_ok(), "{accepted}");
        }
        for refused in [
            "http://hooks.internal/h",
            "http://10.0.0.7/h",
            "https://10.0.0.8/h",
        ] {
            assert!(WebhookUrl::parse(refused, &options).is_err(), "{refused}");
        }
    }

    #[test]
    fn public_addresses_are_told_from_the_rest() {
        for public in [
            "1.1.1.1",
            "93.184.215.14",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "2002:0808:0808::1",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        for private in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "100.64.0.1",
            "127.0.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.1",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.1",
            "203.0.113.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fc00::1",
            "fdff::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "100::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:c0a8:0101::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
    }

    #[test]
    fn the_request_target_keeps_the_path_and_query() {
        let url = WebhookUrl::parse("http://127.0.0.1:9000/hook/a?x=1", &no_options()).unwrap();
        assert_eq!((url.port, url.target.as_str()), (9000, "/hook/a?x=1"));
        let bare = WebhookUrl::parse("http://localhost", &no_options()).unwrap();
        assert_eq!(
            (bare.host.as_str(), bare.port, bare.target.as_str()),
            ("localhost", 80, "/")
        );
        let tls = WebhookUrl::parse("https://example.com", &no_options()).unwrap();
        assert_eq!((tls.port, tls.authority.as_str()), (443, "example.com"));
    }

    #[test]
    fn a_pem_without_a_certificate_is_refused() {
        assert!(WebhookOptions::default().trust_pem(b"").is_err());
        assert!(WebhookOptions::default()
            .trust_pem(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
            .is_err());
    }

    /// A name checked at delivery: one private address among its
    /// addresses refuses the call, unless the host is allowed.
    #[tokio::test]
    async fn an_address_literal_is_called_only_if_it_may_be() {
        let client = WebhookClient::new(&no_options());
        let public = WebhookUrl::parse("https://93.184.215.14:8443/h", &no_options()).unwrap();
        assert_eq!(
            client.address(&public).await.unwrap(),
            "93.184.215.14:8443".parse().unwrap()
        );
        // Parsed under a looser configuration, called under a stricter one.
        let allowed = WebhookOptions::default().allow_host("10.0.0.7");
        let private = WebhookUrl::parse("https://10.0.0.7/h", &allowed).unwrap();
        let error = client.address(&private).await.unwrap_err();
        assert!(error.contains("not a public address"), "{error}");
        let permissive = WebhookClient::new(&allowed);
        assert!(permissive.address(&private).await.is_ok());
        // `localhost` is loopback whatever resolves it.
        let local = WebhookOptions::default().allow_host("localhost");
        let url = WebhookUrl::parse("https://localhost:8443/h", &local).unwrap();
        assert!(client.address(&url).await.is_err());
        assert_eq!(
            WebhookClient::new(&local).address(&url).await.unwrap(),
            "127.0.0.1:8443".parse().unwrap()
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
        let client = WebhookClient::new(&no_options());
        let call = |url: String| {
            let client = &client;
            async move {
                let url = WebhookUrl::parse(&url, &no_options()).unwrap();
                post(client, &url, "v1,abc", b"{\"a\":1}", Duration::from_secs(5)).await
            }
        };

        let answer = call(format!("http://localhost:{port}/hook")).await.unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, b"v1,abc:{\"a\":1}");
        let error = call(format!("http://127.0.0.1:{port}/big"))
            .await
            .unwrap_err();
        assert!(error.contains("answer"), "{error}");
        let answer = call(format!("http://127.0.0.1:{port}/nowhere"))
            .await
            .unwrap();
        assert_eq!(answer.status, 404);
        server.abort();
    }
}
