//! Posting a signed report, with retries.
//!
//! 429, 408 and 5xx answers and connection failures are retried with jittered
//! exponential backoff, waiting at least what `Retry-After` asks, until a deadline.
//! Retrying is safe because the endpoint answers a repeat of a stored report as a
//! duplicate; a duplicate answered after a lost response (the connection broke after the
//! request was sent) therefore counts as stored by this run. Other 4xx answers are final.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::sign::{self, Key, Scheme};

/// Where and as whom to post.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The full ingestion URL (`…/api/ingestion`).
    pub url: String,
    pub repo_id: String,
    pub key: Key,
    pub scheme: Scheme,
}

/// How long and how often to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Give up when the next attempt would start after this much time since the first.
    pub deadline: Duration,
    /// First backoff; doubled after each failed attempt.
    pub base: Duration,
    /// Largest backoff between two attempts (without `Retry-After`).
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(300),
            base: Duration::from_secs(1),
            cap: Duration::from_secs(30),
        }
    }
}

/// A request ready to send (and what `--dry-run` prints).
#[derive(Debug, Clone)]
pub struct SignedRequest {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Signs `body` for `endpoint` at `timestamp` (Unix seconds).
pub fn sign_request(endpoint: &Endpoint, body: Vec<u8>, timestamp: i64) -> SignedRequest {
    let mut headers = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        (
            "authorization".to_owned(),
            format!("Bearer {}", endpoint.repo_id),
        ),
    ];
    headers.extend(
        sign::headers(&endpoint.key, endpoint.scheme, &body, timestamp)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v)),
    );
    SignedRequest {
        url: endpoint.url.clone(),
        headers,
        body,
    }
}

/// The final answer for one report.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Stored now (the endpoint's JSON answer).
    Stored(Value),
    /// Had been stored before this run sent it.
    Duplicate(Value),
    /// Refused for good: the status and the endpoint's answer.
    Refused { status: u16, body: String },
    /// No usable answer before the deadline: the last problem seen.
    Unreachable(String),
}

/// What one HTTP exchange gave.
enum Attempt {
    Answered {
        status: u16,
        retry_after: Option<Duration>,
        body: String,
    },
    /// No answer; `maybe_sent` unless the connection was never made.
    Failed { error: String, maybe_sent: bool },
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// `Retry-After`: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let now = chrono::DateTime::<chrono::Utc>::from(now);
    Some(
        (at.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// The wait before attempt `failed + 1`: exponential from `base`, capped, with "equal
/// jitter" (between half and all of it) so that many CI jobs failing together do not
/// come back together; never less than `Retry-After`.
pub fn backoff(
    policy: &RetryPolicy,
    failed: u32,
    retry_after: Option<Duration>,
    unit_random: f64,
) -> Duration {
    let exponential = policy
        .base
        .saturating_mul(1u32 << failed.saturating_sub(1).min(20))
        .min(policy.cap);
    let jittered = exponential.mul_f64(0.5 + 0.5 * unit_random.clamp(0.0, 1.0));
    match retry_after {
        // A little spread on top of the server's figure, for the same reason.
        Some(after) => after + jittered.min(Duration::from_secs(1)).mul_f64(0.25),
        None => jittered,
    }
}

fn retryable(status: u16, body: &str) -> bool {
    match status {
        // Refused for bad signatures: retrying with the same key cannot help.
        429 => !body.contains("TOO_MANY_FAILED_SIGNATURES"),
        408 | 500 | 502 | 503 | 504 => true,
        _ => false,
    }
}

fn describe(status: u16, body: &str) -> String {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            let error = v.get("error")?;
            error
                .as_str()
                .map(str::to_owned)
                .or_else(|| error.get("message")?.as_str().map(str::to_owned))
        })
        .unwrap_or_else(|| body.chars().take(200).collect());
    format!("HTTP {status}: {message}")
}

fn exchange(agent: &ureq::Agent, request: &SignedRequest, timeout: Duration) -> Attempt {
    let mut builder = agent
        .post(&request.url)
        .config()
        .timeout_global(Some(timeout))
        .build();
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    match builder.send(&request.body[..]) {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            // Redirects are not followed (a POST would turn into a GET without the
            // report); the user is told where to point the URL instead.
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = match location {
                Some(location) if (300..400).contains(&status) => {
                    format!("redirected to {location}: use that URL")
                }
                _ => response.body_mut().read_to_string().unwrap_or_default(),
            };
            Attempt::Answered {
                status,
                retry_after,
                body,
            }
        }
        Err(error) => {
            let maybe_sent = !matches!(
                &error,
                ureq::Error::HostNotFound | ureq::Error::ConnectionFailed
            ) && !matches!(&error, ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused);
            Attempt::Failed {
                error: error.to_string(),
                maybe_sent,
            }
        }
    }
}

/// A blocking HTTP agent: rustls, the proxy from `HTTPS_PROXY`/`HTTP_PROXY`, status
/// codes as answers rather than errors.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("anchorpipe/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// Posts `body` until it gets a final answer or the deadline passes. `log` hears about
/// each retry.
pub fn deliver(
    agent: &ureq::Agent,
    endpoint: &Endpoint,
    body: &[u8],
    policy: &RetryPolicy,
    log: &mut dyn FnMut(&str),
) -> Answer {
    let started = Instant::now();
    let mut failed = 0u32;
    let mut maybe_stored = false;
    loop {
        // Signed again on every attempt: the webhook timestamp must be fresh.
        let request = sign_request(endpoint, body.to_vec(), unix_now());
        let remaining = policy.deadline.saturating_sub(started.elapsed());
        let (problem, retry_after) =
            match exchange(agent, &request, remaining.max(Duration::from_secs(10))) {
                Attempt::Answered { status, body, .. } if (200..300).contains(&status) => {
                    let value: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    let duplicate = value.get("isDuplicate").and_then(Value::as_bool) == Some(true);
                    return if duplicate && !maybe_stored {
                        Answer::Duplicate(value)
                    } else {
                        Answer::Stored(value)
                    };
                }
                Attempt::Answered {
                    status,
                    retry_after,
                    body,
                } => {
                    if !retryable(status, &body) {
                        return Answer::Refused { status, body };
                    }
                    (describe(status, &body), retry_after)
                }
                Attempt::Failed { error, maybe_sent } => {
                    maybe_stored |= maybe_sent;
                    (error, None)
                }
            };
        failed += 1;
        let wait = backoff(policy, failed, retry_after, fastrand::f64());
        if started.elapsed() + wait > policy.deadline {
            return Answer::Unreachable(format!(
                "{problem} (gave up after {failed} attempts in {}s)",
                started.elapsed().as_secs()
            ));
        }
        log(&format!(
            "attempt {failed} failed: {problem}; retrying in {:.1}s",
            wait.as_secs_f64()
        ));
        std::thread::sleep(wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let policy = RetryPolicy::default();
        assert_eq!(backoff(&policy, 1, None, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(&policy, 3, None, 1.0), Duration::from_secs(4));
        assert_eq!(backoff(&policy, 3, None, 0.0), Duration::from_secs(2));
        assert_eq!(backoff(&policy, 30, None, 1.0), Duration::from_secs(30));
        let wait = backoff(&policy, 1, Some(Duration::from_secs(7)), 0.5);
        assert!(wait >= Duration::from_secs(7) && wait < Duration::from_secs(8));
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_an_http_date() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn only_transient_answers_are_retried() {
        assert!(retryable(
            429,
            r#"{"error":{"code":"RATE_LIMIT_EXCEEDED"}}"#
        ));
        assert!(!retryable(
            429,
            r#"{"error":{"code":"TOO_MANY_FAILED_SIGNATURES"}}"#
        ));
        assert!(retryable(503, ""));
        assert!(!retryable(400, ""));
        assert!(!retryable(401, ""));
        assert_eq!(
            describe(401, r#"{"error":"Invalid HMAC signature"}"#),
            "HTTP 401: Invalid HMAC signature"
        );
    }
}
