//! Access control of `livereplay serve`: bearer tokens naming a tenant and
//! whether they may write, and signed, expiring read URLs scoped to one
//! stream. It is the module's access hook ([`DurableStreams::access`]);
//! the module enforces what the hook decides.
//!
//! Tokens come from `--tokens-file` and `LIVEREPLAY_TOKENS`, one
//! `TOKEN TENANT read|write` per line (`#` starts a comment line; in the
//! environment `;` also separates entries). A token is 16 to 256
//! characters of `A-Z a-z 0-9 . _ ~ + / = -` (hex, base64 and base64url
//! fit); a malformed line, a duplicate token or an invalid tenant stops the
//! server at start, naming the line.
//!
//! A signed URL is `/v1/stream/PATH?ds_expires=UNIX&ds_sig=SIG&ds_tenant=T`:
//! `SIG` is the unpadded base64url HMAC-SHA256, under the key of
//! `--signing-key-file`, of a domain tag, the tenant, the stream path and
//! the expiry (each length-prefixed, so no two triples sign the same
//! bytes). The protocol's own parameters are `offset`, `live` and `cursor`
//! (PROTOCOL.md sections 5.6 to 5.8); the `ds_` ones are read here and
//! nowhere else, so they never reach offsets or cursors, and a client adds
//! its own parameters beside them.
//!
//! Invariants:
//! * Tokens are kept as SHA-256 digests and compared with `subtle`'s
//!   constant-time equality against every entry (no early exit), so
//!   response time says nothing about how much of a token matched.
//! * A signature is checked with `hmac`'s constant-time `verify_slice`
//!   before its expiry is looked at; a signed URL only ever reads (GET and
//!   HEAD) the one stream it names. A response started before the expiry
//!   runs its course (a long-poll's timeout, an SSE response's lifetime).
//! * `Authorization` wins over a signature: a request carrying both is
//!   judged by its token.
//!
//! It serves plain HTTP: TLS belongs to a proxy in front.

use std::collections::HashSet;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{header, Uri};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use livereplay::streams::{Access, RequestInfo, StreamError};
use livereplay::SessionKey;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The environment variable holding tokens.
pub const TOKENS_ENV: &str = "LIVEREPLAY_TOKENS";

/// Query parameters of a signed URL.
const TENANT_PARAM: &str = "ds_tenant";
const EXPIRES_PARAM: &str = "ds_expires";
const SIGNATURE_PARAM: &str = "ds_sig";

/// Separates what this MAC signs from anything else the key might sign.
const SIGNED_READ_TAG: &[u8] = b"livereplay signed read v1";

/// The shortest signing key accepted, in bytes (HMAC-SHA256's output).
const MIN_KEY_BYTES: usize = 32;

/// Token lengths accepted.
const TOKEN_LEN: std::ops::RangeInclusive<usize> = 16..=256;

/// One configured token.
#[derive(Debug)]
struct TokenEntry {
    digest: [u8; 32],
    tenant: String,
    write: bool,
}

/// The bearer tokens the server accepts.
#[derive(Debug, Default)]
pub struct Tokens {
    entries: Vec<TokenEntry>,
}

impl Tokens {
    /// Adds the entries of `text` (from `source`, named in errors); `;`
    /// separates entries as well as newlines when `semicolons`.
    pub fn add(&mut self, text: &str, source: &str, semicolons: bool) -> Result<(), String> {
        let known: HashSet<[u8; 32]> = self.entries.iter().map(|entry| entry.digest).collect();
        let mut seen = known;
        let mut number = 0;
        for line in text.lines() {
            let parts: Vec<&str> = if semicolons {
                line.split(';').collect()
            } else {
                vec![line]
            };
            number += 1;
            for entry in parts {
                let entry = entry.trim();
                if entry.is_empty() || entry.starts_with('#') {
                    continue;
                }
                let parsed =
                    parse_entry(entry).map_err(|why| format!("{source} line {number}: {why}"))?;
                if !seen.insert(parsed.digest) {
                    return Err(format!(
                        "{source} line {number}: this token is given twice; each token names one tenant"
                    ));
                }
                self.entries.push(parsed);
            }
        }
        Ok(())
    }

    /// How many tokens, and for how many tenants.
    pub fn counts(&self) -> (usize, usize) {
        let tenants: HashSet<&str> = self
            .entries
            .iter()
            .map(|entry| entry.tenant.as_str())
            .collect();
        (self.entries.len(), tenants.len())
    }

    /// The access of a presented token, if it is one of ours. Every entry
    /// is compared (constant time each, no early exit).
    fn find(&self, presented: &str) -> Option<Access> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.digest.ct_eq(&digest)) {
                found = Some(entry);
            }
        }
        found.map(|entry| match entry.write {
            true => Access::full(entry.tenant.clone()),
            false => Access::read_only(entry.tenant.clone()),
        })
    }
}

fn parse_entry(entry: &str) -> Result<TokenEntry, String> {
    let fields: Vec<&str> = entry.split_whitespace().collect();
    let [token, tenant, right] = fields[..] else {
        return Err(format!(
            "expected `TOKEN TENANT read|write`, got {} field(s)",
            fields.len()
        ));
    };
    if !TOKEN_LEN.contains(&token.len()) {
        return Err(format!(
            "a token is {} to {} characters, this one has {} (e.g. `openssl rand -hex 32`)",
            TOKEN_LEN.start(),
            TOKEN_LEN.end(),
            token.len()
        ));
    }
    if !token
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || b"._~+/=-".contains(&byte))
    {
        return Err("a token holds only A-Z a-z 0-9 . _ ~ + / = -".into());
    }
    SessionKey::new(tenant, "stream").map_err(|error| format!("tenant {tenant:?}: {error}"))?;
    let write = match right {
        "write" => true,
        "read" => false,
        other => return Err(format!("the right is `read` or `write`, got {other:?}")),
    };
    Ok(TokenEntry {
        digest: Sha256::digest(token.as_bytes()).into(),
        tenant: tenant.to_string(),
        write,
    })
}

/// The key that signs read URLs.
pub struct SigningKey(Vec<u8>);

impl SigningKey {
    /// Reads the key file: its bytes, at least 32 of them.
    pub fn load(path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path)
            .map_err(|error| format!("cannot read the signing key {}: {error}", path.display()))?;
        if bytes.len() < MIN_KEY_BYTES {
            return Err(format!(
                "the signing key {} has {} bytes; it needs at least {MIN_KEY_BYTES} random ones \
                 (e.g. `head -c 32 /dev/urandom > {}`)",
                path.display(),
                bytes.len(),
                path.display()
            ));
        }
        Ok(Self(bytes))
    }

    /// The MAC over what a signed URL grants.
    fn mac(&self, tenant: &str, stream: &str, expires: u64) -> Hmac<Sha256> {
        // `new_from_slice` takes keys of any length; ours are >= 32 bytes.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(SIGNED_READ_TAG);
        for part in [tenant.as_bytes(), stream.as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.update(&expires.to_be_bytes());
        mac
    }

    /// The signed URL reading `stream` of `tenant` until `expires` (Unix
    /// seconds), below `base` (e.g. `http://127.0.0.1:4437`).
    pub fn signed_url(
        &self,
        base: &str,
        tenant: &str,
        stream: &str,
        expires: u64,
    ) -> Result<String, String> {
        SessionKey::new(tenant, stream).map_err(|error| format!("{error}"))?;
        if stream == "__ds" || stream.starts_with("__ds/") {
            return Err("__ds/ holds the subscription APIs, not a stream".into());
        }
        let signature =
            URL_SAFE_NO_PAD.encode(self.mac(tenant, stream, expires).finalize().into_bytes());
        let path: Vec<String> = stream
            .split('/')
            .map(|segment| utf8_percent_encode(segment, URL_UNSAFE).to_string())
            .collect();
        Ok(format!(
            "{}/v1/stream/{}?{EXPIRES_PARAM}={expires}&{SIGNATURE_PARAM}={signature}&{TENANT_PARAM}={}",
            base.trim_end_matches('/'),
            path.join("/"),
            utf8_percent_encode(tenant, URL_UNSAFE)
        ))
    }

    /// The access a signed request grants: `None` if it carries no
    /// signature parameter; a `403` saying why if the signature is
    /// incomplete, altered, for another URL, or expired at `now`.
    fn verify(&self, request: &RequestInfo<'_>, now: u64) -> Result<Option<Access>, StreamError> {
        let pairs = query_pairs(request.query);
        let one = |name: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };
        let (tenant, expires, signature) =
            match (one(TENANT_PARAM), one(EXPIRES_PARAM), one(SIGNATURE_PARAM)) {
                (None, None, None) => return Ok(None),
                (Some(tenant), Some(expires), Some(signature)) => (tenant, expires, signature),
                _ => {
                    return Err(StreamError::Forbidden(format!(
                        "a signed URL carries {TENANT_PARAM}, {EXPIRES_PARAM} and {SIGNATURE_PARAM} \
                         together; this one lacks some: use the whole URL `livereplay sign` printed"
                    )))
                }
            };
        let tampered = || {
            StreamError::Forbidden(
                "this signed URL's signature does not match its tenant, stream and expiry \
                 (altered, or signed with another key): ask its issuer for a new one \
                 (`livereplay sign`)"
                    .into(),
            )
        };
        let expires: u64 = expires.parse().map_err(|_| tampered())?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| tampered())?;
        self.mac(tenant, request.path, expires)
            .verify_slice(&signature)
            .map_err(|_| tampered())?;
        if now >= expires {
            return Err(StreamError::Forbidden(format!(
                "this signed URL expired {} s ago (at Unix time {expires}): ask its issuer for a \
                 new one (`livereplay sign --ttl-secs ...`)",
                now - expires
            )));
        }
        Ok(Some(Access::read_stream(tenant, request.path)))
    }
}

/// Characters escaped in a signed URL's path segments and tenant: all but
/// RFC 3986's unreserved ones.
const URL_UNSAFE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The decoded `name=value` pairs of a query (none if malformed: the
/// router answers a malformed query with `400` itself).
fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    let Some(query) = query else {
        return Vec::new();
    };
    format!("/?{query}")
        .parse::<Uri>()
        .ok()
        .and_then(|uri| axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri).ok())
        .map(|query| query.0)
        .unwrap_or_default()
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// The server's access control: what the hook consults.
pub struct Guard {
    /// The bearer tokens.
    pub tokens: Tokens,
    /// The key of signed URLs, if configured.
    pub signing: Option<SigningKey>,
}

impl Guard {
    /// Whether anything is configured (else the server stays on loopback).
    pub fn configured(&self) -> bool {
        !self.tokens.entries.is_empty() || self.signing.is_some()
    }

    /// The access hook: a bearer token, else a signed URL, else `401`.
    pub fn decide(&self, request: &RequestInfo<'_>) -> Result<Access, StreamError> {
        if let Some(value) = request.headers.get(header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|value| value.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim())
                .ok_or_else(|| {
                    StreamError::Unauthorized(
                        "the Authorization header must be `Bearer <token>`".into(),
                    )
                })?;
            return self.tokens.find(token).ok_or_else(|| {
                StreamError::Unauthorized(
                    "this bearer token is not one the server knows (see --tokens-file or \
                     LIVEREPLAY_TOKENS)"
                        .into(),
                )
            });
        }
        if let Some(key) = &self.signing {
            if let Some(access) = key.verify(request, unix_now())? {
                return Ok(access);
            }
        }
        Err(StreamError::Unauthorized(
            "this server needs a credential: send `Authorization: Bearer <token>`, or use a \
             signed URL from `livereplay sign`"
                .into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, Method};

    const TOKEN: &str = "0123456789abcdef0123";

    fn info<'a>(path: &'a str, query: Option<&'a str>, headers: &'a HeaderMap) -> RequestInfo<'a> {
        RequestInfo {
            method: &Method::GET,
            path,
            query,
            headers,
        }
    }

    #[test]
    fn a_malformed_tokens_file_names_its_line() {
        let mut tokens = Tokens::default();
        let text = format!("# comment\n\n{TOKEN} acme write\nshort acme read\n");
        let error = tokens.add(&text, "tokens.txt", false).unwrap_err();
        assert!(error.starts_with("tokens.txt line 4:"), "{error}");
        for (bad, why) in [
            (format!("{TOKEN} acme"), "field"),
            (format!("{TOKEN} acme admin"), "read` or `write"),
            (format!("{TOKEN}! acme read"), "holds only"),
            (format!("{TOKEN} acme read\n{TOKEN} other write"), "twice"),
        ] {
            let error = Tokens::default().add(&bad, "f", false).unwrap_err();
            assert!(error.contains(why), "{bad:?}: {error}");
        }
    }

    #[test]
    fn tokens_map_to_their_tenant_and_right() {
        let mut tokens = Tokens::default();
        let reader = "readerreaderreader";
        tokens
            .add(
                &format!("{TOKEN} acme write; {reader} globex read"),
                "env",
                true,
            )
            .unwrap();
        assert_eq!(tokens.counts(), (2, 2));
        assert_eq!(tokens.find(TOKEN), Some(Access::full("acme")));
        assert_eq!(tokens.find(reader), Some(Access::read_only("globex")));
        assert_eq!(tokens.find("0123456789abcdef0124"), None);
        assert_eq!(tokens.find(""), None);
    }

    #[test]
    fn a_signed_url_grants_its_stream_until_it_expires() {
        let key = SigningKey(vec![7; 32]);
        let url = key
            .signed_url("http://h:1/", "acme co", "chat/one", 1_000)
            .unwrap();
        let (path, query) = url
            .strip_prefix("http://h:1/v1/stream/")
            .unwrap()
            .split_once('?')
            .unwrap();
        assert_eq!(path, "chat/one");
        assert!(query.contains("ds_tenant=acme%20co"), "{query}");
        let headers = HeaderMap::new();
        let granted = key.verify(&info("chat/one", Some(query), &headers), 999);
        assert_eq!(
            granted,
            Ok(Some(Access::read_stream("acme co", "chat/one")))
        );
        let expired = key.verify(&info("chat/one", Some(query), &headers), 1_000);
        assert!(matches!(expired, Err(StreamError::Forbidden(m)) if m.contains("expired")));
        let elsewhere = key.verify(&info("chat/two", Some(query), &headers), 999);
        assert!(
            matches!(elsewhere, Err(StreamError::Forbidden(m)) if m.contains("does not match"))
        );
        let later = query.replace("ds_expires=1000", "ds_expires=2000");
        let extended = key.verify(&info("chat/one", Some(&later), &headers), 999);
        assert!(matches!(extended, Err(StreamError::Forbidden(m)) if m.contains("does not match")));
        let other_key = SigningKey(vec![8; 32]);
        assert!(other_key
            .verify(&info("chat/one", Some(query), &headers), 999)
            .is_err());
        assert_eq!(
            key.verify(&info("chat/one", Some("offset=-1"), &headers), 999),
            Ok(None)
        );
    }
}
