//! Request authentication: who is posting (the Bearer repository) and whether the body
//! was signed with a currently valid key.
//!
//! Two schemes, chosen by the headers present:
//! - **Standard Webhooks** when `webhook-signature` is present: `webhook-id`,
//!   `webhook-timestamp` (Unix seconds, within the tolerance) and one or more
//!   space-separated `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
//! - **Legacy** otherwise: `X-FR-Sig: <hex HMAC-SHA256(key, body)>`, hex in either case.
//!
//! Both need `Authorization: Bearer <repo_id>`, which names the repository before the
//! body is read, so unknown repositories are refused without reading anything.
//! The work is split in two: [`precheck`] looks only at headers (cheap, before the body
//! is buffered), [`verify`] computes the MACs over the body. MAC comparison is the
//! constant-time `verify_slice` of the `hmac` crate.

use axum::http::HeaderMap;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::keys::KeySet;
use anchorpipe_crds::config::{IngestConfig, SignatureConfig};

type HmacSha256 = Hmac<Sha256>;

/// Length of an HMAC-SHA256 tag in bytes.
const TAG_LEN: usize = 32;

/// Standard Webhooks allows several signatures; more than this is not a rotation but an
/// attempt to make us compute many comparisons.
const MAX_WEBHOOK_SIGNATURES: usize = 8;

/// Why a request was not authenticated. The `message` is what the client sees (the
/// legacy messages are those existing clients already know); `reason` is the bounded
/// label used in metrics and the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("Missing Authorization header with Bearer token")]
    MissingBearer,
    #[error("No active HMAC secrets found for repository")]
    UnknownRepository,
    #[error("Missing X-FR-Sig header")]
    MissingSignature,
    #[error("X-FR-Sig signatures are disabled for this endpoint; sign with Standard Webhooks")]
    LegacyDisabled,
    #[error("Standard Webhooks signatures are not enabled for this endpoint")]
    WebhooksDisabled,
    #[error("Missing or invalid webhook-id or webhook-timestamp header")]
    MalformedWebhookHeaders,
    #[error("webhook-timestamp is outside the accepted tolerance")]
    StaleTimestamp,
    #[error("Invalid HMAC signature")]
    InvalidSignature,
    /// Too many failed signature checks for this repository; retry after the seconds.
    #[error("Too many requests with invalid signatures for this repository; retry later")]
    TooManyFailures(u64),
}

impl AuthFailure {
    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::MissingBearer => "missing_token",
            AuthFailure::UnknownRepository => "unknown_repository",
            AuthFailure::MissingSignature => "missing_signature",
            AuthFailure::LegacyDisabled => "legacy_disabled",
            AuthFailure::WebhooksDisabled => "webhooks_disabled",
            AuthFailure::MalformedWebhookHeaders => "malformed_webhook_headers",
            AuthFailure::StaleTimestamp => "stale_timestamp",
            AuthFailure::InvalidSignature => "invalid_signature",
            AuthFailure::TooManyFailures(_) => "too_many_failures",
        }
    }
}

/// What the headers claim, checked for shape; the MAC is not checked yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub repo_id: Uuid,
    pub scheme: Scheme,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    Legacy {
        /// The decoded tag, or `None` when the header was not 64 hex digits (it can
        /// then never verify, but that is only said after the body was read, like any
        /// other bad signature).
        tag: Option<Vec<u8>>,
    },
    Webhook {
        id: String,
        timestamp: i64,
        tags: Vec<Vec<u8>>,
    },
}

impl Scheme {
    pub fn name(&self) -> &'static str {
        match self {
            Scheme::Legacy { .. } => "legacy",
            Scheme::Webhook { .. } => "standard_webhooks",
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The repository named by `Authorization: Bearer <uuid>`, if the header is there.
/// Returns `Ok(None)` when the header is missing, `Err` when it names no known repo.
fn bearer_repo(headers: &HeaderMap, config: &IngestConfig) -> Result<Uuid, AuthFailure> {
    let value = header(headers, "authorization").ok_or(AuthFailure::MissingBearer)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthFailure::MissingBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthFailure::MissingBearer);
    }
    let repo_id = Uuid::parse_str(token.trim()).map_err(|_| AuthFailure::UnknownRepository)?;
    if config.repositories.contains(&repo_id) {
        Ok(repo_id)
    } else {
        Err(AuthFailure::UnknownRepository)
    }
}

/// Checks everything that needs no body: the Bearer repository and the shape of the
/// signature headers (including the Standard Webhooks timestamp window, so replays of
/// old requests are refused before their body is read).
pub fn precheck(
    headers: &HeaderMap,
    config: &IngestConfig,
    keys: &KeySet,
    now_unix: i64,
) -> Result<Claim, AuthFailure> {
    let repo_id = bearer_repo(headers, config)?;
    if keys.is_empty() {
        return Err(AuthFailure::UnknownRepository);
    }
    let scheme = if let Some(signatures) = header(headers, "webhook-signature") {
        webhook_claim(headers, signatures, &config.signatures, now_unix)?
    } else {
        if !config.signatures.legacy {
            return Err(if config.signatures.standard_webhooks {
                AuthFailure::LegacyDisabled
            } else {
                AuthFailure::MissingSignature
            });
        }
        let sig = header(headers, "x-fr-sig").ok_or(AuthFailure::MissingSignature)?;
        let tag = hex::decode(sig).ok().filter(|t| t.len() == TAG_LEN);
        Scheme::Legacy { tag }
    };
    Ok(Claim { repo_id, scheme })
}

fn webhook_claim(
    headers: &HeaderMap,
    signatures: &str,
    config: &SignatureConfig,
    now_unix: i64,
) -> Result<Scheme, AuthFailure> {
    if !config.standard_webhooks {
        return Err(AuthFailure::WebhooksDisabled);
    }
    let id = header(headers, "webhook-id").ok_or(AuthFailure::MalformedWebhookHeaders)?;
    let timestamp: i64 = header(headers, "webhook-timestamp")
        .and_then(|t| t.parse().ok())
        .ok_or(AuthFailure::MalformedWebhookHeaders)?;
    let tolerance = i64::try_from(config.timestamp_tolerance_seconds).unwrap_or(i64::MAX);
    if now_unix.abs_diff(timestamp) > tolerance.unsigned_abs() {
        return Err(AuthFailure::StaleTimestamp);
    }
    let tags = signatures
        .split_ascii_whitespace()
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .filter(|t| t.len() == TAG_LEN)
        .take(MAX_WEBHOOK_SIGNATURES)
        .collect();
    Ok(Scheme::Webhook {
        id: id.to_owned(),
        timestamp,
        tags,
    })
}

/// Verifies the claimed signature over `body` with every valid key. Returns the id of
/// the key that verified.
pub fn verify<'k>(claim: &Claim, keys: &'k KeySet, body: &[u8]) -> Result<&'k str, AuthFailure> {
    for key in keys.keys() {
        let verified = match &claim.scheme {
            Scheme::Legacy { tag } => tag.as_deref().is_some_and(|tag| {
                mac(&key.legacy, &[body]).is_some_and(|m| m.verify_slice(tag).is_ok())
            }),
            Scheme::Webhook {
                id,
                timestamp,
                tags,
            } => {
                let ts = timestamp.to_string();
                mac(
                    &key.webhook,
                    &[id.as_bytes(), b".", ts.as_bytes(), b".", body],
                )
                .is_some_and(|m| {
                    // Every tag is compared, so timing does not reveal which one matched.
                    tags.iter()
                        .fold(false, |ok, tag| m.clone().verify_slice(tag).is_ok() | ok)
                })
            }
        };
        if verified {
            return Ok(&key.id);
        }
    }
    Err(AuthFailure::InvalidSignature)
}

fn mac(key: &[u8], parts: &[&[u8]]) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    for part in parts {
        mac.update(part);
    }
    Some(mac)
}

/// Signs `body` the legacy way (lowercase hex). Used by clients, tests and the benchmark.
pub fn sign_legacy(secret: &str, body: &[u8]) -> String {
    let key = crate::keys::Key::from_secret("", secret);
    mac(&key.legacy, &[body])
        .map(|m| hex::encode(m.finalize().into_bytes()))
        .unwrap_or_default()
}

/// Signs `body` the Standard Webhooks way: the `webhook-signature` header value.
pub fn sign_webhook(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = crate::keys::Key::from_secret("", secret);
    let ts = timestamp.to_string();
    mac(
        &key.webhook,
        &[id.as_bytes(), b".", ts.as_bytes(), b".", body],
    )
    .map(|m| {
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes())
        )
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Key;
    use axum::http::HeaderValue;

    const REPO: &str = "7d3c1c8e-6a4c-4b55-9d84-2f1c0f0b8f61";
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const NOW: i64 = 1_790_000_000;

    fn config() -> IngestConfig {
        let mut c = crate::testing::config();
        c.repositories = vec![REPO.parse().unwrap()];
        c
    }

    fn keys() -> KeySet {
        KeySet::new(vec![Key::from_secret("k1", SECRET)])
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn check(h: &HeaderMap, body: &[u8]) -> Result<(), AuthFailure> {
        let keys = keys();
        let claim = precheck(h, &config(), &keys, NOW)?;
        verify(&claim, &keys, body).map(|_| ())
    }

    #[test]
    fn legacy_signature_verifies_in_either_hex_case() {
        let body = br#"{"a":1}"#;
        let sig = sign_legacy(SECRET, body);
        let bearer = format!("Bearer {REPO}");
        for sig in [sig.clone(), sig.to_uppercase()] {
            let h = headers(&[("authorization", &bearer), ("x-fr-sig", &sig)]);
            assert_eq!(check(&h, body), Ok(()));
        }
    }

    #[test]
    fn legacy_failures_are_named() {
        let body = b"{}";
        let bearer = format!("Bearer {REPO}");
        let good = sign_legacy(SECRET, body);
        let cases = [
            (headers(&[("x-fr-sig", &good)]), AuthFailure::MissingBearer),
            (
                headers(&[("authorization", "Basic abc"), ("x-fr-sig", &good)]),
                AuthFailure::MissingBearer,
            ),
            (
                headers(&[("authorization", "Bearer not-a-uuid"), ("x-fr-sig", &good)]),
                AuthFailure::UnknownRepository,
            ),
            (
                headers(&[
                    (
                        "authorization",
                        "Bearer 00000000-0000-4000-8000-000000000000",
                    ),
                    ("x-fr-sig", &good),
                ]),
                AuthFailure::UnknownRepository,
            ),
            (
                headers(&[("authorization", &bearer)]),
                AuthFailure::MissingSignature,
            ),
            (
                headers(&[("authorization", &bearer), ("x-fr-sig", "zz")]),
                AuthFailure::InvalidSignature,
            ),
            (
                headers(&[
                    ("authorization", &bearer),
                    ("x-fr-sig", &sign_legacy("other", body)),
                ]),
                AuthFailure::InvalidSignature,
            ),
        ];
        for (h, expected) in cases {
            assert_eq!(check(&h, body), Err(expected), "{h:?}");
        }
        // A tampered body fails with the original signature.
        let h = headers(&[("authorization", &bearer), ("x-fr-sig", &good)]);
        assert_eq!(check(&h, b"{ }"), Err(AuthFailure::InvalidSignature));
    }

    #[test]
    fn webhook_signature_with_several_tags_and_tolerance() {
        let body = br#"{"a":1}"#;
        let bearer = format!("Bearer {REPO}");
        let good = sign_webhook(SECRET, "msg_1", NOW, body);
        let other = sign_webhook("whsec_b3RoZXJrZXlvdGhlcmtleQ==", "msg_1", NOW, body);
        let both = format!("{other} {good}");
        let ts = NOW.to_string();
        let h = headers(&[
            ("authorization", &bearer),
            ("webhook-id", "msg_1"),
            ("webhook-timestamp", &ts),
            ("webhook-signature", &both),
        ]);
        assert_eq!(check(&h, body), Ok(()));
        // Tampered id, body.
        let h2 = headers(&[
            ("authorization", &bearer),
            ("webhook-id", "msg_2"),
            ("webhook-timestamp", &ts),
            ("webhook-signature", &good),
        ]);
        assert_eq!(check(&h2, body), Err(AuthFailure::InvalidSignature));
        assert_eq!(check(&h, b"{}"), Err(AuthFailure::InvalidSignature));
        // Stale and future timestamps, signed correctly for their timestamp.
        for ts in [NOW - 301, NOW + 301] {
            let sig = sign_webhook(SECRET, "msg_1", ts, body);
            let ts = ts.to_string();
            let h = headers(&[
                ("authorization", &bearer),
                ("webhook-id", "msg_1"),
                ("webhook-timestamp", &ts),
                ("webhook-signature", &sig),
            ]);
            assert_eq!(check(&h, body), Err(AuthFailure::StaleTimestamp));
        }
        // Within tolerance at the edge.
        let sig = sign_webhook(SECRET, "msg_1", NOW - 300, body);
        let edge = (NOW - 300).to_string();
        let h = headers(&[
            ("authorization", &bearer),
            ("webhook-id", "msg_1"),
            ("webhook-timestamp", &edge),
            ("webhook-signature", &sig),
        ]);
        assert_eq!(check(&h, body), Ok(()));
        // Missing id.
        let h = headers(&[
            ("authorization", &bearer),
            ("webhook-timestamp", &ts),
            ("webhook-signature", &good),
        ]);
        assert_eq!(check(&h, body), Err(AuthFailure::MalformedWebhookHeaders));
    }

    #[test]
    fn schemes_can_be_switched_off() {
        let body = b"{}";
        let bearer = format!("Bearer {REPO}");
        let mut cfg = config();
        cfg.signatures.legacy = false;
        let legacy = headers(&[
            ("authorization", &bearer),
            ("x-fr-sig", &sign_legacy(SECRET, body)),
        ]);
        assert_eq!(
            precheck(&legacy, &cfg, &keys(), NOW),
            Err(AuthFailure::LegacyDisabled)
        );
        cfg.signatures.legacy = true;
        cfg.signatures.standard_webhooks = false;
        let ts = NOW.to_string();
        let sig = sign_webhook(SECRET, "m", NOW, body);
        let webhook = headers(&[
            ("authorization", &bearer),
            ("webhook-id", "m"),
            ("webhook-timestamp", &ts),
            ("webhook-signature", &sig),
        ]);
        assert_eq!(
            precheck(&webhook, &cfg, &keys(), NOW),
            Err(AuthFailure::WebhooksDisabled)
        );
    }

    #[test]
    fn any_key_of_a_rotated_set_verifies() {
        let body = b"{}";
        let bearer = format!("Bearer {REPO}");
        let set = KeySet::new(vec![
            Key::from_secret("old", "old-secret"),
            Key::from_secret("new", SECRET),
        ]);
        for (secret, id) in [("old-secret", "old"), (SECRET, "new")] {
            let h = headers(&[
                ("authorization", &bearer),
                ("x-fr-sig", &sign_legacy(secret, body)),
            ]);
            let claim = precheck(&h, &config(), &set, NOW).unwrap();
            assert_eq!(verify(&claim, &set, body), Ok(id));
        }
    }
}
