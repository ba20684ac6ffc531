//! The webhook signing key (protocol sections 6.5 and 7.1): one Ed25519
//! key per server, its public half published as a JWK Set, its id the
//! RFC 7638 thumbprint.
//!
//! Owns the key. Invariants: the private half never leaves this module but
//! to be persisted (module `mod` keeps it in a reserved session of the
//! store, so a restart signs with the same key and receivers keep
//! verifying); the `kid` is a function of the public key alone.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};

/// The server's webhook signing key.
pub struct WebhookKey {
    key: SigningKey,
    kid: String,
}

impl WebhookKey {
    /// A fresh key from the OS's random source.
    pub fn generate() -> Result<(Self, [u8; 32]), getrandom::Error> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret)?;
        Ok((Self::from_secret(secret), secret))
    }

    /// The key with this secret (as `generate` returned it).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        let key = SigningKey::from_bytes(&secret);
        let x = URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes());
        // RFC 7638: the required members, lexicographic, no whitespace.
        let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        let thumbprint = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
        Self {
            key,
            kid: format!("ds_{thumbprint}"),
        }
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWK Set publishing the public key.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({
            "keys": [{
                "kty": "OKP",
                "crv": "Ed25519",
                "kid": self.kid,
                "use": "sig",
                "alg": "EdDSA",
                "x": URL_SAFE_NO_PAD.encode(self.key.verifying_key().as_bytes()),
            }]
        })
    }

    /// The `Webhook-Signature` header for `body` sent at `timestamp`
    /// (seconds since the UNIX epoch): a signature over `timestamp.body`.
    pub fn signature(&self, timestamp: u64, body: &[u8]) -> String {
        let mut message = format!("{timestamp}.").into_bytes();
        message.extend_from_slice(body);
        let signature = self.key.sign(&message);
        format!(
            "t={timestamp},kid={},ed25519={}",
            self.kid,
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier};

    #[test]
    fn a_signature_verifies_with_the_published_key_and_the_kid_is_stable() {
        let (key, secret) = WebhookKey::generate().unwrap();
        assert_eq!(WebhookKey::from_secret(secret).kid(), key.kid());
        let header = key.signature(1_700_000_000, br#"{"a":1}"#);
        let signature = header.rsplit("ed25519=").next().unwrap();
        let bytes: [u8; 64] = URL_SAFE_NO_PAD
            .decode(signature)
            .unwrap()
            .try_into()
            .unwrap();
        let x = key.jwks()["keys"][0]["x"].as_str().unwrap().to_string();
        let public: [u8; 32] = URL_SAFE_NO_PAD.decode(x).unwrap().try_into().unwrap();
        let public = ed25519_dalek::VerifyingKey::from_bytes(&public).unwrap();
        assert!(public
            .verify(br#"1700000000.{"a":1}"#, &Signature::from_bytes(&bytes))
            .is_ok());
        assert!(public
            .verify(br#"1700000001.{"a":1}"#, &Signature::from_bytes(&bytes))
            .is_err());
    }
}
