//! Request signing, mirroring what the ingest service verifies (`ingest/src/signature.rs`):
//!
//! - **Standard Webhooks** (the default): `webhook-id`, `webhook-timestamp` (Unix seconds)
//!   and `webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`,
//!   where the key is the base64-decoded part of a `whsec_…` string (a key without that
//!   prefix is used as its bytes).
//! - **Legacy** `X-FR-Sig: <hex HMAC-SHA256(key, body)>` with the whole key string, as
//!   `openssl dgst -hmac` computes it.
//!
//! Both always send `Authorization: Bearer <repo_id>`.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

const WHSEC_PREFIX: &str = "whsec_";

/// Which signature scheme to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    StandardWebhooks,
    Legacy,
}

/// An HMAC key as the operator mints it (`whsec_<base64>`). Its `Debug` hides it.
#[derive(Clone)]
pub struct Key {
    legacy: Vec<u8>,
    webhook: Vec<u8>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(…)")
    }
}

impl Key {
    /// From the key text (surrounding whitespace, e.g. a file's final newline, ignored).
    pub fn new(secret: &str) -> Self {
        let secret = secret.trim();
        let webhook = secret
            .strip_prefix(WHSEC_PREFIX)
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .unwrap_or_else(|| secret.as_bytes().to_vec());
        Self {
            legacy: secret.as_bytes().to_vec(),
            webhook,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.legacy.is_empty()
    }
}

fn mac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// A message id derived from the body: the same report always gets the same id, which
/// is what Standard Webhooks asks of retries.
pub fn message_id(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    format!("msg_{}", hex::encode(&digest[..16]))
}

/// The signature headers for `body` (without `Authorization`).
pub fn headers(
    key: &Key,
    scheme: Scheme,
    body: &[u8],
    timestamp: i64,
) -> Vec<(&'static str, String)> {
    match scheme {
        Scheme::Legacy => vec![("x-fr-sig", hex::encode(mac(&key.legacy, &[body])))],
        Scheme::StandardWebhooks => {
            let id = message_id(body);
            let ts = timestamp.to_string();
            let tag = mac(
                &key.webhook,
                &[id.as_bytes(), b".", ts.as_bytes(), b".", body],
            );
            let signature = format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(tag)
            );
            vec![
                ("webhook-id", id),
                ("webhook-timestamp", ts),
                ("webhook-signature", signature),
            ]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification, verified by its reference
    /// libraries.
    #[test]
    fn standard_webhooks_matches_the_specification_example() {
        let key = Key::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let body = br#"{"test": 2432232314}"#;
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let tag = mac(
            &key.webhook,
            &[id.as_bytes(), b".", b"1614265330", b".", body],
        );
        assert_eq!(
            base64::engine::general_purpose::STANDARD.encode(tag),
            "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn legacy_uses_the_whole_key_string_like_openssl() {
        // printf '%s' '{}' | openssl dgst -sha256 -hmac 'whsec_abc'
        let key = Key::new("whsec_abc\n");
        let headers = headers(&key, Scheme::Legacy, b"{}", 0);
        assert_eq!(headers[0].0, "x-fr-sig");
        assert_eq!(
            headers[0].1,
            "a7e20c39a3bd9a0d00109906483a125cba27c676f9feabcde8702361770cc020"
        );
    }
}
