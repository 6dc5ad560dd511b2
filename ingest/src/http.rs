//! The HTTP surface: `POST /api/ingestion` (contract 1), health, readiness and metrics.
//!
//! The ingestion handler does its work in an order that keeps unauthenticated traffic
//! cheap: size check from `Content-Length` → header checks (bearer repository,
//! signature headers, webhook timestamp) → for a source with many failed signatures
//! lately, a place in the narrow verification lane ([`crate::protect`]) → body read,
//! reserving the pod-wide and per-source in-flight budget as bytes arrive and giving up
//! on a stalled body → MAC verification → rate limit → backlog check → (a JUnit XML
//! body: converted to the JSON report, see [`crate::xml`]) → JSON parse and schema
//! validation → the storing transaction, shared with the reports accepted at the same
//! moment ([`crate::commit`]). The whole pipeline runs under the request deadline.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::audit::Aggregator;
use crate::commit::GroupCommit;
use crate::keys::KeyStore;
use crate::metrics::{Metrics, ReasonLabels};
use crate::protect::{FailureGuard, SourceBudget, SourceReservation, TrustedProxies};
use crate::ratelimit::{Decision, RateLimiter};
use crate::report::{Detail, Rejection, ReportValidator};
use crate::signature::{self, AuthFailure};
use crate::store::{self, OwnedOriginal, RequestMeta, Stored, Submission};
use crate::xml::{self, XmlError};
use anchorpipe_crds::config::IngestConfig;

/// Bodies are accounted in KiB units against the in-flight budget.
const BUDGET_UNIT: u64 = 1024;

/// How long a request may wait for its share of the in-flight byte budget before it is
/// answered 503; long enough to ride out a burst, short enough not to hold CI jobs.
pub const BUDGET_WAIT: Duration = Duration::from_secs(10);

/// The smallest reservation step of a body; the reservation then doubles (up to the
/// limit), and every step is reserved from the budget before the bytes are held.
const MIN_BUFFER: usize = 16 * 1024;

/// Bodies above this are verified and parsed on the blocking pool, so a 50 MiB report
/// does not stall the async workers serving small ones.
const BLOCKING_THRESHOLD: usize = 256 * 1024;

/// How long readiness waits for the database.
const READY_DB_TIMEOUT: Duration = Duration::from_secs(2);

/// Request ids are echoed from clients; longer ones are cut before they are stored.
const MAX_REQUEST_ID_LEN: usize = 128;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// State the relay shares with the HTTP side: broker health and outbox backlog.
#[derive(Debug, Default)]
pub struct DeliveryHealth {
    /// True while the relay holds a working, confirm-mode channel.
    pub broker_ready: AtomicBool,
    /// True when the broker answered that the tenant's exchange or queue does not exist:
    /// the one broker condition that makes the pod not ready. An unreachable broker does
    /// not: reports are still accepted into the outbox (up to its cap) and delivered
    /// once the broker is back, so taking pods out of the Service would only turn a
    /// broker outage into an ingestion outage.
    pub topology_missing: AtomicBool,
    /// Whether a relay runs in this process at all (readiness ignores the broker if not).
    pub relay_enabled: AtomicBool,
    pub backlog_rows: AtomicU64,
    /// Rows parked after too many failed attempts; they need an operator's re-queue.
    pub parked_rows: AtomicU64,
    pub oldest_age_secs: AtomicU64,
    /// Wakes this process's relay right after a report was committed. `Notify` keeps a
    /// wake-up that arrives while the relay is busy, so none is lost.
    pub wake: tokio::sync::Notify,
}

/// Everything a request handler needs.
pub struct AppState {
    pub config: Arc<IngestConfig>,
    pub keys: KeyStore,
    pub limiter: RateLimiter,
    /// Sends sources that keep failing through the narrow lane; holds their refusals.
    pub failures: FailureGuard,
    /// Whose forwarded-for headers are believed.
    pub proxies: TrustedProxies,
    /// Body bytes held per source.
    source_budget: Arc<SourceBudget>,
    pub validator: ReportValidator,
    pub pool: PgPool,
    /// Stores accepted reports, several per transaction.
    pub commits: GroupCommit,
    pub audit: Arc<Aggregator>,
    pub metrics: Arc<Metrics>,
    pub delivery: Arc<DeliveryHealth>,
    /// Which key ids verified lately, for the operator's expiry warning.
    pub key_usage: crate::key_usage::KeyUsage,
    body_budget: Arc<Semaphore>,
    /// Large bodies verified and parsed at once (one per core).
    cpu_slots: Arc<Semaphore>,
    /// How long a request waits for in-flight budget before a 503 ([`BUDGET_WAIT`]).
    pub budget_wait: Duration,
    /// Benchmark-only: answer 200 right after the signature verified. Never on by default.
    pub verify_only: bool,
    /// Set once the pod is told to stop: `/readyz` answers 503 so that Services and
    /// ingress controllers take the pod out of rotation while it still serves.
    pub draining: Arc<AtomicBool>,
}

impl AppState {
    /// Must be called inside a Tokio runtime: it starts the group-commit tasks.
    pub fn new(
        config: IngestConfig,
        keys: KeyStore,
        pool: PgPool,
        metrics: Arc<Metrics>,
        delivery: Arc<DeliveryHealth>,
    ) -> Result<Self, std::convert::Infallible> {
        let budget_units = (config.limits.max_in_flight_bytes / BUDGET_UNIT)
            .min(Semaphore::MAX_PERMITS as u64) as usize;
        let audit = Arc::new(Aggregator::new(
            config.protection.max_unauthenticated_audit_rows as usize,
            Arc::clone(&metrics),
        ));
        Ok(Self {
            limiter: RateLimiter::new(&config.rate_limit),
            failures: FailureGuard::new(&config.protection),
            proxies: TrustedProxies::new(&config.protection.trusted_proxies),
            source_budget: SourceBudget::new(config.protection.per_source_bytes(&config.limits)),
            validator: ReportValidator::new(config.limits.max_tests),
            key_usage: crate::key_usage::KeyUsage::new(config.tenant.clone(), pool.clone()),
            commits: GroupCommit::spawn(
                pool.clone(),
                config.tenant.clone(),
                config.broker.clone(),
                &config.store,
                Arc::clone(&metrics),
            ),
            config: Arc::new(config),
            keys,
            pool,
            audit,
            metrics,
            delivery,
            body_budget: Arc::new(Semaphore::new(budget_units)),
            budget_wait: BUDGET_WAIT,
            cpu_slots: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(2, usize::from),
            )),
            verify_only: false,
            draining: Arc::new(AtomicBool::new(false)),
        })
    }
}

/// The router. Separate from serving so tests can drive it with `oneshot`.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/ingestion", post(ingest))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal("handler panicked").into_response()
        }))
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID.clone()))
        .layer(SetRequestIdLayer::new(
            X_REQUEST_ID.clone(),
            MakeRequestUuid,
        ))
}

/// A refused request. Client errors carry their message; server-side failures are
/// logged where they happen and answered generically.
#[derive(Debug)]
pub enum ApiError {
    PayloadTooLarge(u64),
    BodyTimeout,
    /// The whole request took longer than the request deadline.
    RequestTimeout,
    BodyUnreadable,
    Unauthorized(AuthFailure),
    RateLimited(Decision),
    InvalidJson,
    InvalidPayload(Vec<Detail>),
    /// A JUnit XML body that is not well-formed UTF-8 JUnit XML, or lacks report fields.
    InvalidXml(XmlError),
    RepositoryMismatch,
    /// Cannot take the report right now (database, memory budget, backlog); retry.
    Unavailable {
        message: &'static str,
        retry_after_secs: u64,
    },
    Internal(&'static str),
}

impl ApiError {
    fn outcome(&self) -> &'static str {
        match self {
            ApiError::PayloadTooLarge(_) => "too_large",
            ApiError::BodyTimeout | ApiError::BodyUnreadable => "body_error",
            ApiError::RequestTimeout => "timeout",
            ApiError::Unauthorized(AuthFailure::TooManyFailures(_)) => "auth_throttled",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::InvalidJson | ApiError::InvalidPayload(_) | ApiError::InvalidXml(_) => {
                "invalid"
            }
            ApiError::RepositoryMismatch => "forbidden",
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::Internal(_) => "error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            ApiError::PayloadTooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": format!("Payload too large. Maximum size is {limit} bytes.")}),
            ),
            ApiError::BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                json!({"error": "Request body was not received in time"}),
            ),
            ApiError::RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                json!({"error": "Request was not completed in time"}),
            ),
            ApiError::BodyUnreadable => (
                StatusCode::BAD_REQUEST,
                json!({"error": "Request body could not be read"}),
            ),
            ApiError::Unauthorized(AuthFailure::TooManyFailures(_)) => (
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error": {
                    "code": "TOO_MANY_FAILED_SIGNATURES",
                    "message": AuthFailure::TooManyFailures(0).to_string()
                }}),
            ),
            ApiError::Unauthorized(failure) => (
                StatusCode::UNAUTHORIZED,
                json!({"error": failure.to_string()}),
            ),
            ApiError::RateLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error": {
                    "code": "RATE_LIMIT_EXCEEDED",
                    "message": "Too many requests. Please try again later."
                }}),
            ),
            ApiError::InvalidJson => (
                StatusCode::BAD_REQUEST,
                json!({"error": "Invalid JSON payload"}),
            ),
            ApiError::InvalidPayload(details) => (
                StatusCode::BAD_REQUEST,
                json!({"error": "Invalid payload", "details": details}),
            ),
            ApiError::InvalidXml(XmlError::Fields(details)) => (
                StatusCode::BAD_REQUEST,
                json!({"error": "Missing or invalid report fields for a JUnit XML body", "details": details}),
            ),
            ApiError::InvalidXml(XmlError::Invalid { message, line }) => (
                StatusCode::BAD_REQUEST,
                json!({"error": format!("Invalid XML payload: {message}"), "line": line}),
            ),
            ApiError::InvalidXml(XmlError::TooManyTests(limit)) => (
                StatusCode::BAD_REQUEST,
                json!({"error": "Invalid payload", "details": [{
                    "path": "tests",
                    "message": format!("more than {limit} tests; split the report (the anchorpipe CLI does)")
                }]}),
            ),
            ApiError::RepositoryMismatch => (
                StatusCode::FORBIDDEN,
                json!({"error": "Repository ID mismatch"}),
            ),
            ApiError::Unavailable { message, .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, json!({"error": message}))
            }
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": "Internal error"}),
            ),
        };
        let mut response = (status, axum::Json(body)).into_response();
        match &self {
            ApiError::RateLimited(decision) => {
                rate_limit_headers(response.headers_mut(), decision);
                insert_number(
                    response.headers_mut(),
                    header::RETRY_AFTER,
                    decision.retry_after_secs,
                );
            }
            ApiError::Unavailable {
                retry_after_secs, ..
            }
            | ApiError::Unauthorized(AuthFailure::TooManyFailures(retry_after_secs)) => {
                insert_number(
                    response.headers_mut(),
                    header::RETRY_AFTER,
                    *retry_after_secs,
                );
            }
            _ => {}
        }
        response
    }
}

fn insert_number(headers: &mut HeaderMap, name: HeaderName, value: u64) {
    headers.insert(name, HeaderValue::from(value));
}

fn rate_limit_headers(headers: &mut HeaderMap, decision: &Decision) {
    insert_number(
        headers,
        HeaderName::from_static("x-ratelimit-limit"),
        u64::from(decision.limit),
    );
    insert_number(
        headers,
        HeaderName::from_static("x-ratelimit-remaining"),
        u64::from(decision.remaining),
    );
    insert_number(
        headers,
        HeaderName::from_static("x-ratelimit-reset"),
        decision.reset_unix,
    );
}

/// The client address: the TCP peer, or the forwarded client when the peer is a
/// trusted proxy. Requests without connection info (in-process tests) count as one
/// unspecified source.
fn client_address(proxies: &TrustedProxies, parts: &axum::http::request::Parts) -> IpAddr {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |ConnectInfo(addr)| addr.ip());
    proxies.client(peer, &parts.headers)
}

fn request_meta(parts: &axum::http::request::Parts, client: IpAddr) -> RequestMeta {
    let text = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let request_id = text("x-request-id")
        .map(|id| id.chars().take(MAX_REQUEST_ID_LEN).collect())
        .unwrap_or_default();
    // Forwarded headers were only believed from trusted proxies (`client_address`), so
    // a stranger cannot choose the address recorded or the audit key it aggregates by.
    let source_ip = (!client.is_unspecified()).then(|| client.to_string());
    RequestMeta {
        request_id,
        source_ip,
        user_agent: text("user-agent").map(|ua| ua.chars().take(512).collect()),
        traceparent: text("traceparent").filter(|t| t.len() <= 55),
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

async fn ingest(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let client = client_address(&state.proxies, &parts);
    let meta = request_meta(&parts, client);
    let deadline = Duration::from_secs(state.config.protection.request_timeout_seconds);
    let result = tokio::time::timeout(
        deadline,
        handle(&state, &parts.uri, &parts.headers, body, client, &meta),
    )
    .await
    .unwrap_or(Err(ApiError::RequestTimeout));
    if let Err(ApiError::Unauthorized(_)) = &result
        && let Some((delay, _place)) = state.failures.refusal_delay(client)
    {
        // A source that keeps failing waits for its refusals (see `failureDelayMs`).
        state.metrics.refusals_delayed.inc();
        tokio::time::sleep(delay).await;
    }
    let (outcome, response) = match result {
        Ok((stored, decision)) => {
            let outcome = match stored {
                Some(Stored::Accepted { .. }) => "accepted",
                Some(Stored::Duplicate { .. }) => "duplicate",
                None => "verified",
            };
            let body = stored.map_or_else(
                || json!({"message": "Signature verified"}),
                |s| s.response().clone(),
            );
            let mut response = (StatusCode::OK, axum::Json(body)).into_response();
            rate_limit_headers(response.headers_mut(), &decision);
            (outcome, response)
        }
        Err(error) => (error.outcome(), error.into_response()),
    };
    let elapsed = started.elapsed();
    state.metrics.observe(outcome, elapsed.as_secs_f64());
    let status = response.status().as_u16();
    let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
    if outcome == "unauthorized" {
        // Strangers choose how many of these there are: a line each would let them fill
        // the log. The (bounded) audit trail and `auth_failures_total` count them.
        tracing::debug!(tenant = %state.config.tenant, request_id = %meta.request_id, outcome, status, elapsed_ms, "ingestion request");
    } else {
        tracing::info!(tenant = %state.config.tenant, request_id = %meta.request_id, outcome, status, elapsed_ms, "ingestion request");
    }
    response
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The whole pipeline for one report. `Ok(None)` only in verify-only benchmark mode.
async fn handle(
    state: &Arc<AppState>,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    client: IpAddr,
    meta: &RequestMeta,
) -> Result<(Option<Stored>, Decision), ApiError> {
    let config = &state.config;
    let limit = config.limits.max_body_bytes;
    let declared = content_length(headers);
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }

    let keys = state.keys.current();
    let claim = signature::precheck(headers, config, &keys, unix_now()).map_err(|failure| {
        state.failures.record_refusal(client);
        auth_failed(state, failure, None, meta)
    })?;
    // Many failures from this source lately: never refuse, since a stranger knows the
    // repository id as well as its CI does, but read and verify through the narrow
    // lane, so a flood costs a constant amount of concurrent work.
    let _lane = if state.failures.suspect(client) {
        state.metrics.unverified_lane.inc();
        state.failures.enter_lane().await
    } else {
        None
    };

    let reader = BodyReader {
        limit,
        budget: &state.body_budget,
        wait: state.budget_wait,
        stall: Duration::from_millis(state.config.protection.body_stall_timeout_ms),
        metrics: &state.metrics,
    };
    let (bytes, body_hold) = reader
        .read(body, state.source_budget.reservation(client))
        .await?;

    let blocking = bytes.len() > BLOCKING_THRESHOLD;
    // Large bodies take a CPU slot for verification and parsing: the cores can only
    // work on that many at once anyway, and each parse holds a parsed copy of its body,
    // so the slots bound that memory while the byte budget bounds the raw bodies.
    let cpu_slot = if blocking {
        Some(
            Arc::clone(&state.cpu_slots)
                .acquire_owned()
                .await
                .map_err(|_| ApiError::Internal("CPU slots closed"))?,
        )
    } else {
        None
    };
    let verified = {
        let (claim, keys, bytes) = (claim.clone(), Arc::clone(&keys), bytes.clone());
        let verify = move || signature::verify(&claim, &keys, &bytes).map(str::to_owned);
        if blocking {
            crate::bulk::run(verify)
                .await
                .map_err(|_| ApiError::Internal("verification task failed"))?
        } else {
            verify()
        }
    };
    let key_id = verified.map_err(|failure| {
        state.failures.record_failure(client);
        auth_failed(state, failure, Some(claim.repo_id), meta)
    })?;
    tracing::debug!(request_id = %meta.request_id, key_id, scheme = claim.scheme.name(), "signature verified");
    state.key_usage.record(&key_id);

    let decision = state.limiter.check(claim.repo_id);
    if !decision.allowed {
        state.audit.record(
            "rate_limited",
            "rate_limit_exceeded",
            Some(claim.repo_id),
            meta.source_ip.as_deref(),
            &meta.request_id,
            meta.user_agent.as_deref(),
        );
        return Err(ApiError::RateLimited(decision));
    }
    if state.verify_only {
        return Ok((None, decision));
    }
    check_backlog(state)?;

    // A JUnit XML body becomes the JSON report here; from here on everything sees JSON,
    // and the XML is only stored beside it.
    let xml_type = xml::xml_content_type(headers);
    let (json, xml_body, json_permit) = match xml_type {
        None => (bytes, None, None),
        Some(content_type) => {
            let converted = convert_xml(state, uri, headers, &bytes, claim.repo_id, blocking).await;
            match converted {
                Ok((json, permit)) => (json, Some((bytes, content_type)), permit),
                Err(error) => {
                    if matches!(error, ApiError::InvalidXml(_)) {
                        audit_rejected(state, claim.repo_id, "invalid_xml", meta).await;
                    }
                    return Err(error);
                }
            }
        }
    };

    let parsed = {
        let state = Arc::clone(state);
        let bytes = json.clone();
        let parse = move || parse_and_validate(&state.validator, &bytes);
        if blocking {
            crate::bulk::run(parse)
                .await
                .map_err(|_| ApiError::Internal("validation task failed"))?
        } else {
            parse()
        }
    };
    // The slot is for CPU work only; storing waits on the database, not on a core.
    drop(cpu_slot);
    let (header, test_count) = match parsed {
        Ok(ok) => ok,
        Err(error) => {
            let reason = match &error {
                ApiError::InvalidJson => "invalid_json",
                _ => "invalid_payload",
            };
            audit_rejected(state, claim.repo_id, reason, meta).await;
            return Err(error);
        }
    };
    if header.repo_id != claim.repo_id {
        audit_rejected(state, claim.repo_id, "repository_mismatch", meta).await;
        return Err(ApiError::RepositoryMismatch);
    }

    // The body parsed as JSON, so it is UTF-8; an XML body was checked by the conversion.
    let body = into_text(json).ok_or(ApiError::InvalidJson)?;
    let original = match xml_body {
        Some((bytes, content_type)) => Some(OwnedOriginal {
            body: into_text(bytes).ok_or(ApiError::Internal("XML not UTF-8"))?,
            content_type,
        }),
        None => None,
    };
    let submission = Submission {
        header,
        test_count,
        body,
        original,
        meta: meta.clone(),
    };
    // The budget stays reserved while the report waits for its batch, also if this
    // request is given up on meanwhile: the queued report still holds its body.
    let hold = (body_hold, json_permit);
    let stored = state
        .commits
        .submit(submission, hold)
        .await
        .map_err(|error| {
            tracing::error!(request_id = %meta.request_id, %error, "could not store report");
            ApiError::Unavailable {
                message: "Report could not be stored; retry later",
                retry_after_secs: 5,
            }
        })?;
    if matches!(stored, Stored::Accepted { .. }) {
        state.delivery.wake.notify_one();
    }
    Ok((Some(stored), decision))
}

/// The body as text; without a copy when this is the last handle to its buffer (the
/// body as read, once verification and parsing dropped theirs).
fn into_text(bytes: Bytes) -> Option<String> {
    String::from_utf8(Vec::from(bytes)).ok()
}

/// Converts an XML body to the JSON report, on the blocking pool when large. The JSON is
/// held under the same in-flight byte budget and size limit as a body, so a conversion
/// cannot grow the pod's memory past what JSON bodies may use.
async fn convert_xml(
    state: &Arc<AppState>,
    uri: &Uri,
    headers: &HeaderMap,
    bytes: &Bytes,
    repo_id: uuid::Uuid,
    blocking: bool,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), ApiError> {
    let fields = xml::fields(uri, headers).map_err(ApiError::InvalidXml)?;
    let max_tests = usize::try_from(state.config.limits.max_tests).unwrap_or(usize::MAX);
    let body = bytes.clone();
    let convert = move || xml::to_report(&body, repo_id, &fields, max_tests, chrono::Utc::now());
    let json = if blocking {
        crate::bulk::run(convert)
            .await
            .map_err(|_| ApiError::Internal("conversion task failed"))?
    } else {
        convert()
    }
    .map_err(ApiError::InvalidXml)?;
    let limit = state.config.limits.max_body_bytes;
    if json.len() as u64 > limit {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let units = budget_units(json.len() as u64);
    let permit = tokio::time::timeout(
        state.budget_wait,
        Arc::clone(&state.body_budget).acquire_many_owned(units),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .ok_or(ApiError::Unavailable {
        message: "Too many reports in flight; retry later",
        retry_after_secs: 5,
    })?;
    Ok((Bytes::from(json), Some(permit)))
}

fn parse_and_validate(
    validator: &ReportValidator,
    bytes: &[u8],
) -> Result<(crate::report::ReportHeader, usize), ApiError> {
    let report = validator
        .parse(bytes)
        .map_err(|rejection| match rejection {
            Rejection::InvalidJson => ApiError::InvalidJson,
            Rejection::Invalid(details) => ApiError::InvalidPayload(details),
        })?;
    Ok((report.header(), report.test_count))
}

fn auth_failed(
    state: &AppState,
    failure: AuthFailure,
    repo_id: Option<uuid::Uuid>,
    meta: &RequestMeta,
) -> ApiError {
    let reason = failure.reason();
    state
        .metrics
        .auth_failures
        .get_or_create(&ReasonLabels { reason })
        .inc();
    state.audit.record(
        "auth_failed",
        reason,
        repo_id,
        meta.source_ip.as_deref(),
        &meta.request_id,
        meta.user_agent.as_deref(),
    );
    ApiError::Unauthorized(failure)
}

async fn audit_rejected(state: &AppState, repo_id: uuid::Uuid, reason: &str, meta: &RequestMeta) {
    if let Err(error) =
        store::audit_rejected(&state.pool, &state.config.tenant, repo_id, reason, meta).await
    {
        tracing::warn!(request_id = %meta.request_id, %error, "could not audit a rejected report");
    }
}

fn check_backlog(state: &AppState) -> Result<(), ApiError> {
    let limits = &state.config.outbox;
    let rows = state.delivery.backlog_rows.load(Ordering::Relaxed);
    let age = state.delivery.oldest_age_secs.load(Ordering::Relaxed);
    if rows >= limits.max_backlog_rows || age >= limits.max_backlog_age_seconds {
        tracing::warn!(
            rows,
            age,
            "outbox backlog over its cap; refusing new reports"
        );
        return Err(ApiError::Unavailable {
            message: "Delivery backlog is full; retry later",
            retry_after_secs: 30,
        });
    }
    Ok(())
}

fn budget_units(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(BUDGET_UNIT)).unwrap_or(u32::MAX)
}

/// How a body is read: its size limit, the pod-wide budget, and the stall timeout.
struct BodyReader<'a> {
    limit: u64,
    budget: &'a Arc<Semaphore>,
    wait: Duration,
    stall: Duration,
    metrics: &'a Metrics,
}

/// What a read body holds until its request is done: its share of the pod-wide budget
/// and of its source's.
struct BodyHold {
    _budget: Option<OwnedSemaphorePermit>,
    _source: SourceReservation,
}

impl BodyReader<'_> {
    /// Reads the body, reserving budget for every growth *before* holding the bytes
    /// (never on a declared length, which a stranger chooses), from both the pod-wide
    /// budget and the source's share. A body that sends no byte for `stall` is answered
    /// 408; dropping the partial body and the hold releases its budget at once.
    ///
    /// The frames are kept as they arrive and joined once, into a buffer of exactly the
    /// body's size: a growing buffer copied a 2 MB body about twice over and touched
    /// twice its size in fresh pages. A body that came in one frame is not copied at all.
    async fn read(
        &self,
        body: Body,
        mut source: SourceReservation,
    ) -> Result<(Bytes, BodyHold), ApiError> {
        let busy = || ApiError::Unavailable {
            message: "Too many reports in flight; retry later",
            retry_after_secs: 5,
        };
        let limit = usize::try_from(self.limit).unwrap_or(usize::MAX);
        let mut permit: Option<OwnedSemaphorePermit> = None;
        let mut frames: Vec<Bytes> = Vec::new();
        let mut total = 0usize;
        let mut reserved = 0usize;
        let mut body = body;
        loop {
            let frame = match tokio::time::timeout(self.stall, body.frame()).await {
                Err(_) => {
                    self.metrics.body_stalls.inc();
                    return Err(ApiError::BodyTimeout);
                }
                Ok(None) => break,
                Ok(Some(frame)) => frame.map_err(|_| ApiError::BodyUnreadable)?,
            };
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            total += data.len();
            if total > limit {
                return Err(ApiError::PayloadTooLarge(self.limit));
            }
            if total > reserved {
                // Reserve geometrically (bounded by the limit) so a large body costs few
                // trips to the semaphores.
                let step = total
                    .max(reserved.saturating_mul(2))
                    .max(MIN_BUFFER)
                    .min(limit.max(total));
                let held = permit.as_ref().map_or(0, |p| p.num_permits()) as u64 * BUDGET_UNIT;
                let units = budget_units((step as u64).saturating_sub(held));
                if units > 0 {
                    if !source.grow(u64::from(units) * BUDGET_UNIT) {
                        self.metrics.source_share_refusals.inc();
                        return Err(ApiError::Unavailable {
                            message: "Too many reports in flight from this source; retry later",
                            retry_after_secs: 5,
                        });
                    }
                    let extra = tokio::time::timeout(
                        self.wait,
                        Arc::clone(self.budget).acquire_many_owned(units),
                    )
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .ok_or_else(busy)?;
                    match permit.as_mut() {
                        Some(p) => p.merge(extra),
                        None => permit = Some(extra),
                    }
                }
                reserved = step;
            }
            if !data.is_empty() {
                frames.push(data);
            }
        }
        Ok((
            join(frames, total),
            BodyHold {
                _budget: permit,
                _source: source,
            },
        ))
    }
}

/// The body's frames as one buffer of `total` bytes; a single frame as it is.
fn join(mut frames: Vec<Bytes>, total: usize) -> Bytes {
    if frames.len() <= 1 {
        return frames.pop().unwrap_or_default();
    }
    let mut buffer = Vec::with_capacity(total);
    for frame in &frames {
        buffer.extend_from_slice(frame);
    }
    Bytes::from(buffer)
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let db = tokio::time::timeout(
        READY_DB_TIMEOUT,
        sqlx::query("SELECT 1").execute(&state.pool),
    )
    .await
    .map(|r| r.is_ok())
    .unwrap_or(false);
    let relay = state.delivery.relay_enabled.load(Ordering::Relaxed);
    let topology_missing = relay && state.delivery.topology_missing.load(Ordering::Relaxed);
    let broker = if !relay {
        "not configured"
    } else if topology_missing {
        "topology missing"
    } else if state.delivery.broker_ready.load(Ordering::Relaxed) {
        "connected"
    } else {
        "unreachable"
    };
    let keys = !state.keys.current().is_empty();
    let draining = state.draining.load(Ordering::Relaxed);
    let ready = db && keys && !topology_missing && !draining;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "database": db,
        "broker": broker,
        "keys": keys,
        "draining": draining,
        "outboxBacklog": state.delivery.backlog_rows.load(Ordering::Relaxed),
        "outboxOldestAgeSeconds": state.delivery.oldest_age_secs.load(Ordering::Relaxed),
        "outboxParked": state.delivery.parked_rows.load(Ordering::Relaxed),
    });
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_becomes_text_without_a_copy_once_other_handles_are_gone() {
        let mut buffer = Vec::with_capacity(64);
        buffer.extend_from_slice(br#"{"a": 1}"#);
        let address = buffer.as_ptr();
        let bytes = Bytes::from(buffer);
        let parsed_copy = bytes.clone();
        drop(parsed_copy);
        let text = into_text(bytes);
        assert_eq!(text.as_deref(), Some(r#"{"a": 1}"#));
        assert_eq!(text.map(|t| t.as_ptr()), Some(address));
        assert_eq!(into_text(Bytes::from_static(b"\xff")), None);
    }

    #[test]
    fn frames_are_joined_once_into_a_buffer_of_the_bodys_size() {
        let frames = vec![
            Bytes::from_static(b"{\"a\""),
            Bytes::from_static(b": "),
            Bytes::from_static(b"1}"),
        ];
        let joined = join(frames, 8);
        assert_eq!(&joined[..], br#"{"a": 1}"#);
        // The joined buffer is exactly the body: it becomes text without a copy.
        let address = joined.as_ptr();
        assert_eq!(
            into_text(joined).map(|t| (t.capacity(), t.as_ptr())),
            Some((8, address))
        );

        let single = Bytes::from(b"{}".to_vec());
        let address = single.as_ptr();
        assert_eq!(join(vec![single], 2).as_ptr(), address);
        assert!(join(Vec::new(), 0).is_empty());
    }
}
