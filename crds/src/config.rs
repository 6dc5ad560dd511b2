//! The ingest config contract: what the operator renders into a tenant's ConfigMap and
//! what every ingest pod reads from its mounted file at start-up.
//!
//! The operator is the only writer and the ingest service the only reader, so this one
//! type is the whole contract between them. HMAC keys are *not* part of it: they come
//! from the mounted Secret (a keys directory, one file per key id), so a key rotation
//! changes no config and rolls no pod.
//!
//! The file is JSON. Unknown fields are refused, so a typo in a hand-written config is
//! reported instead of silently falling back to a default.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Name of the config file inside the mounted ConfigMap.
pub const CONFIG_FILE_NAME: &str = "config.json";

/// The largest body the wire contract allows by default (50 MiB).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 50 * 1024 * 1024;

/// The largest number of test results one report may carry by default.
pub const DEFAULT_MAX_TESTS: u32 = 10_000;

/// Hard ceiling on `maxTests`: the wire contract allows at most 10,000 tests.
pub const MAX_TESTS_CEILING: u32 = 10_000;

/// Everything one ingest pod needs to serve one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngestConfig {
    /// The tenant this pod serves; recorded on every ingestion, audit row and message.
    pub tenant: String,
    /// Repositories (UUIDs) this tenant may post reports for. A report for any other
    /// repository is refused as unknown, whatever key signed it. The operator lists only
    /// the repositories the tenant owns (each belongs to one tenant), so the list can be
    /// empty when every one is claimed by another endpoint.
    pub repositories: Vec<Uuid>,
    /// Which signature schemes are accepted.
    #[serde(default)]
    pub signatures: SignatureConfig,
    /// This pod's share of the endpoint's rate limits.
    pub rate_limit: RateLimitConfig,
    /// Request and report size limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Where accepted reports are published.
    pub broker: BrokerTopology,
    /// Outbox backpressure: when to stop accepting while the broker is away.
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// What a stranger on the internet can make this pod pay: connections, timeouts,
    /// unverified work and audit rows, each bounded by a constant stated here.
    #[serde(default)]
    pub protection: ProtectionConfig,
    /// How accepted reports are written to the database: reports accepted at the same
    /// moment share one transaction (group commit), within these bounds.
    #[serde(default)]
    pub store: StoreConfig,
}

/// Group commit: the bounds of one storing transaction. A report waits at most
/// `maxBatchWaitMs` for others to share its transaction; every report is answered only
/// after the commit that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoreConfig {
    /// Most reports written in one transaction.
    #[serde(default = "default_max_batch_rows")]
    pub max_batch_rows: u32,
    /// Report bytes (the JSON report and any original XML body) at which a batch stops
    /// taking more reports; a batch holds at most this plus one report.
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: u64,
    /// Milliseconds a report may wait for others to share its transaction, counted from
    /// when it was ready to be stored. 0: a batch takes only the reports already waiting.
    #[serde(default = "default_max_batch_wait_ms")]
    pub max_batch_wait_ms: u64,
    /// Storing transactions in flight at once (each holds one database connection):
    /// while one commits, the next batch gathers.
    #[serde(default = "default_concurrent_batches")]
    pub concurrent_batches: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_batch_rows: default_max_batch_rows(),
            max_batch_bytes: default_max_batch_bytes(),
            max_batch_wait_ms: default_max_batch_wait_ms(),
            concurrent_batches: default_concurrent_batches(),
        }
    }
}

/// Beyond a few dozen rows a transaction's fixed costs (round trips, the commit's WAL
/// flush) are already spread thin, while a longer batch holds its clients longer.
fn default_max_batch_rows() -> u32 {
    64
}

/// Small reports fill a batch by count; a few large ones close it by size, so one
/// transaction never carries more than a handful of large payloads.
fn default_max_batch_bytes() -> u64 {
    8 * 1024 * 1024
}

/// A lone report is answered at most this much later than without batching; under load
/// batches fill while the previous transaction commits, without waiting.
fn default_max_batch_wait_ms() -> u64 {
    2
}

/// Two: one batch gathers while the other commits.
fn default_concurrent_batches() -> u32 {
    2
}

/// Ceiling on `store.maxBatchRows`.
pub const MAX_BATCH_ROWS_CEILING: u32 = 1000;

/// Ceiling on `store.maxBatchWaitMs`: waiting longer only delays clients.
pub const MAX_BATCH_WAIT_MS_CEILING: u64 = 1000;

/// Ceiling on `store.concurrentBatches` (each holds a database connection).
pub const MAX_CONCURRENT_BATCHES_CEILING: u32 = 16;

/// Per-pod bounds on hostile traffic. Every limit is a constant; what is refused or
/// folded is counted in metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProtectionConfig {
    /// Milliseconds a client has to send a complete request head (request line and
    /// headers) after connecting or between requests; the connection is closed after.
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// Seconds a keep-alive connection may stay idle (no request in progress) before it
    /// is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_seconds: u64,
    /// Open client connections this pod serves at once, shared fairly between client
    /// addresses: at the cap, idle connections (half-sent heads, idle keep-alives) of
    /// the address holding the most give way to addresses under their share; only when
    /// every connection is mid-request do new ones wait in the listen backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Seconds one request may take from its first byte to its answer; answered 408
    /// after.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_seconds: u64,
    /// Milliseconds a request body may go without a byte before it is answered 408 and
    /// its share of the in-flight budget is released.
    #[serde(default = "default_body_stall_ms")]
    pub body_stall_timeout_ms: u64,
    /// Bytes of request bodies one source (client address) may hold in memory at once.
    /// Defaults to half of `limits.maxInFlightBytes` (at least `limits.maxBodyBytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight_bytes_per_source: Option<u64>,
    /// Refusals (failed signature checks and any other 401) per source per minute before
    /// that source's further requests are verified in the narrow lane
    /// ([`Self::unverified_concurrency`]) and its refusals held
    /// ([`Self::failure_delay_ms`]).
    /// Requests are never refused for this: a correct signature always gets its answer.
    #[serde(default = "default_failures_per_source")]
    pub failed_signatures_per_source_per_minute: u32,
    /// Failed signature checks per minute, all sources together, before every source's
    /// refusals are held [`Self::failure_delay_ms`] (a flood spread over many
    /// addresses). Sources that have not failed are not queued for it.
    #[serde(default = "default_failures_per_endpoint")]
    pub failed_signatures_per_endpoint_per_minute: u32,
    /// Requests from suspected sources whose body is read and verified at once.
    #[serde(default = "default_unverified_concurrency")]
    pub unverified_concurrency: u32,
    /// Proxies (CIDRs, e.g. the Ingress controller's pod range) whose `X-Forwarded-For`
    /// and `Forwarded` headers are believed. From any other peer they are ignored and
    /// the peer address is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Milliseconds a refusal (401) to a source past its allowance
    /// ([`Self::failed_signatures_per_source_per_minute`]), or to any source while the
    /// endpoint is past its own, is held before it is sent. A client that waits for its answers, as a flooding
    /// script does, is slowed to one request per delay per connection, at the price of a
    /// timer; 0 turns it off. A correctly signed request is never delayed.
    #[serde(default = "default_failure_delay_ms")]
    pub failure_delay_ms: u64,
    /// Refusals held back at once; past it they are sent at once, so the delay can
    /// never hold more than this many connections.
    #[serde(default = "default_max_delayed_failures")]
    pub max_delayed_failures: u32,
    /// Audit rows that unauthenticated and rate-limited traffic may cause per flush
    /// interval; further events are folded into one row per reason and counted.
    #[serde(default = "default_unauthenticated_audit_rows")]
    pub max_unauthenticated_audit_rows: u32,
}

impl Default for ProtectionConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: default_header_read_timeout_ms(),
            idle_timeout_seconds: default_idle_timeout(),
            max_connections: default_max_connections(),
            request_timeout_seconds: default_request_timeout(),
            body_stall_timeout_ms: default_body_stall_ms(),
            max_in_flight_bytes_per_source: None,
            failed_signatures_per_source_per_minute: default_failures_per_source(),
            failed_signatures_per_endpoint_per_minute: default_failures_per_endpoint(),
            unverified_concurrency: default_unverified_concurrency(),
            trusted_proxies: Vec::new(),
            failure_delay_ms: default_failure_delay_ms(),
            max_delayed_failures: default_max_delayed_failures(),
            max_unauthenticated_audit_rows: default_unauthenticated_audit_rows(),
        }
    }
}

/// Whether `text` is an IP address or a CIDR range (a `trustedProxies` entry).
pub fn is_ip_or_cidr(text: &str) -> bool {
    text.parse::<ipnet::IpNet>().is_ok() || text.parse::<std::net::IpAddr>().is_ok()
}

impl ProtectionConfig {
    /// The per-source share of the in-flight budget for `limits`.
    pub fn per_source_bytes(&self, limits: &LimitsConfig) -> u64 {
        self.max_in_flight_bytes_per_source
            .unwrap_or((limits.max_in_flight_bytes / 2).max(limits.max_body_bytes))
    }
}

/// One second: long enough to slow a flooding script a thousandfold, short enough that
/// a misconfigured CI job still fails fast.
fn default_failure_delay_ms() -> u64 {
    1000
}

/// A quarter of the default connection cap.
fn default_max_delayed_failures() -> u32 {
    256
}

/// Ten seconds: a CI client sends its headers in one packet.
fn default_header_read_timeout_ms() -> u64 {
    10_000
}

/// One minute: CI clients post once per job, so longer keep-alive buys nothing.
fn default_idle_timeout() -> u64 {
    60
}

/// Bounded file descriptors and per-connection buffers (a few KiB each).
fn default_max_connections() -> u32 {
    1024
}

/// A 50 MiB report at a slow 512 KiB/s uplink takes 100 s; leave room for storing it.
fn default_request_timeout() -> u64 {
    120
}

/// Ten seconds without a byte is a stalled upload, not a slow one.
fn default_body_stall_ms() -> u64 {
    10_000
}

/// A CI job misconfigured with a wrong key retries a few times a minute at most.
fn default_failures_per_source() -> u32 {
    30
}

/// Ten times one source: several broken pipelines at once are still served normally.
fn default_failures_per_endpoint() -> u32 {
    300
}

/// Two suspected uploads at once: enough that one slow stranger cannot hold the lane.
fn default_unverified_concurrency() -> u32 {
    2
}

/// At the default 5 s flush, at most 20 rows a second however the traffic is shaped.
fn default_unauthenticated_audit_rows() -> u32 {
    100
}

/// The accepted signature schemes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignatureConfig {
    /// The legacy anchorpipe scheme: `Authorization: Bearer <repo_id>` and
    /// `X-FR-Sig: hex(HMAC-SHA256(key, body))`. It has no replay protection.
    #[serde(default = "default_true")]
    pub legacy: bool,
    /// The Standard Webhooks scheme (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`), with replay protection by timestamp.
    #[serde(default = "default_true")]
    pub standard_webhooks: bool,
    /// How far a Standard Webhooks timestamp may be from this pod's clock, in seconds.
    #[serde(default = "default_tolerance")]
    pub timestamp_tolerance_seconds: u64,
}

impl Default for SignatureConfig {
    fn default() -> Self {
        Self {
            legacy: true,
            standard_webhooks: true,
            timestamp_tolerance_seconds: default_tolerance(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// Standard Webhooks recommends five minutes.
fn default_tolerance() -> u64 {
    300
}

/// A token bucket: a sustained rate and the burst allowed on top of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limit {
    /// Sustained requests per minute.
    pub requests_per_minute: u32,
    /// Requests allowed at once before the sustained rate applies.
    pub burst: u32,
}

/// Rate limits as enforced by *this pod*: the operator divides the endpoint-wide
/// figures by the replica count, so N pods together enforce the endpoint's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Limit for each repository.
    pub per_repository: Limit,
    /// Limit for the whole endpoint, all repositories together.
    pub per_endpoint: Limit,
}

/// Size limits applied before and during validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest accepted request body in bytes; larger ones get 413 before they are read.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    /// Largest number of test results in one report (at most 10,000).
    #[serde(default = "default_max_tests")]
    pub max_tests: u32,
    /// Bytes of request bodies this pod holds in memory at once, summed over all
    /// requests. A request that cannot get its share in time is answered 503, so memory
    /// stays bounded whatever the number of concurrent uploads.
    #[serde(default = "default_in_flight")]
    pub max_in_flight_bytes: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: default_max_body(),
            max_tests: default_max_tests(),
            max_in_flight_bytes: default_in_flight(),
        }
    }
}

fn default_max_body() -> u64 {
    DEFAULT_MAX_BODY_BYTES
}

fn default_max_tests() -> u32 {
    DEFAULT_MAX_TESTS
}

/// Four maximum-size bodies at once; 200 MiB keeps a pod well inside a 1 GiB limit
/// even with the parsed copy of each body.
fn default_in_flight() -> u64 {
    4 * DEFAULT_MAX_BODY_BYTES
}

/// RabbitMQ queue flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum QueueType {
    /// Replicated, durable; the default for anything that must not lose data.
    #[default]
    Quorum,
    /// A classic durable queue (single node).
    Classic,
}

impl QueueType {
    /// The value of the `x-queue-type` argument.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

/// A tenant's broker topology: one durable topic exchange shared by tenants, the
/// tenant's queue bound to it by routing key, and a dead-letter exchange with the
/// tenant's dead-letter queue for messages consumers reject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BrokerTopology {
    /// Topic exchange reports are published to.
    pub exchange: String,
    /// Routing key used for this tenant's reports.
    pub routing_key: String,
    /// The tenant's queue.
    pub queue: String,
    /// Queue type.
    #[serde(default)]
    pub queue_type: QueueType,
    /// Message time-to-live in the queue, in milliseconds; expired messages are dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_ttl_ms: Option<u32>,
    /// Exchange that rejected or expired messages are dead-lettered to.
    pub dead_letter_exchange: String,
    /// The tenant's dead-letter queue, bound to the dead-letter exchange by the routing key.
    pub dead_letter_queue: String,
}

impl BrokerTopology {
    /// The conventional topology for a tenant: a shared `anchorpipe.reports` exchange,
    /// and queue names derived from the tenant name.
    pub fn for_tenant(tenant: &str) -> Self {
        Self {
            exchange: "anchorpipe.reports".to_owned(),
            routing_key: format!("tenant.{tenant}.test-run"),
            queue: format!("anchorpipe.{tenant}.reports"),
            queue_type: QueueType::Quorum,
            message_ttl_ms: None,
            dead_letter_exchange: "anchorpipe.reports.dlx".to_owned(),
            dead_letter_queue: format!("anchorpipe.{tenant}.reports.dlq"),
        }
    }
}

/// Outbox backpressure. While the broker is away reports keep being accepted into the
/// outbox; past either cap the service answers 503 with `Retry-After` instead of
/// growing without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboxConfig {
    /// Unsent outbox rows (for this tenant) above which new reports are refused.
    #[serde(default = "default_backlog_rows")]
    pub max_backlog_rows: u64,
    /// Age in seconds of the oldest unsent row above which new reports are refused.
    #[serde(default = "default_backlog_age")]
    pub max_backlog_age_seconds: u64,
    /// How long sent rows are kept before the cleanup deletes them, in seconds.
    #[serde(default = "default_retention")]
    pub sent_retention_seconds: u64,
    /// Seconds the relay waits for the broker to confirm a message before that row
    /// counts as a failed attempt.
    #[serde(default = "default_confirm_timeout")]
    pub confirm_timeout_seconds: u64,
    /// Failed publish attempts after which a row is parked: no longer retried until an
    /// operator re-queues it (`anchorpipe-ingest outbox requeue`).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            max_backlog_rows: default_backlog_rows(),
            max_backlog_age_seconds: default_backlog_age(),
            sent_retention_seconds: default_retention(),
            confirm_timeout_seconds: default_confirm_timeout(),
            max_attempts: default_max_attempts(),
        }
    }
}

/// A quarter of a million small reports is about an hour of a busy tenant.
fn default_backlog_rows() -> u64 {
    250_000
}

/// Six hours: long enough to ride out a broker upgrade, short enough to notice.
fn default_backlog_age() -> u64 {
    6 * 3600
}

/// One hour of sent rows helps when investigating a delivery question.
fn default_retention() -> u64 {
    3600
}

/// A confirm normally takes milliseconds; thirty seconds is a broker in trouble.
fn default_confirm_timeout() -> u64 {
    30
}

/// With the relay's backoff (1 s doubling, at most 5 min) ten attempts span about
/// 13 minutes: long enough to outlast a topology being re-declared.
fn default_max_attempts() -> u32 {
    10
}

/// A config that cannot be used, with the field that is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config is not valid JSON for the expected shape at `{path}`: {message}")]
    Parse { path: String, message: String },
    #[error("config field `{field}` is invalid: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

impl IngestConfig {
    /// Parses and validates a config file's contents. Errors name the offending field.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let config: IngestConfig =
            serde_path_to_error::deserialize(de).map_err(|e| ConfigError::Parse {
                path: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the rules serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, message: &str| {
            Err(ConfigError::Invalid {
                field,
                message: message.to_owned(),
            })
        };
        if self.tenant.trim().is_empty() {
            return invalid("tenant", "must not be empty");
        }
        for (field, limit) in [
            ("rateLimit.perRepository", self.rate_limit.per_repository),
            ("rateLimit.perEndpoint", self.rate_limit.per_endpoint),
        ] {
            if limit.requests_per_minute == 0 {
                return invalid(field, "requestsPerMinute must be at least 1");
            }
            if limit.burst == 0 {
                return invalid(field, "burst must be at least 1");
            }
        }
        if self.limits.max_body_bytes == 0 {
            return invalid("limits.maxBodyBytes", "must be at least 1");
        }
        if self.limits.max_tests == 0 || self.limits.max_tests > MAX_TESTS_CEILING {
            return invalid("limits.maxTests", "must be between 1 and 10000");
        }
        if self.limits.max_in_flight_bytes < self.limits.max_body_bytes {
            return invalid(
                "limits.maxInFlightBytes",
                "must be at least maxBodyBytes, or a maximum-size report could never be read",
            );
        }
        for (field, value) in [
            ("broker.exchange", &self.broker.exchange),
            ("broker.routingKey", &self.broker.routing_key),
            ("broker.queue", &self.broker.queue),
            (
                "broker.deadLetterExchange",
                &self.broker.dead_letter_exchange,
            ),
            ("broker.deadLetterQueue", &self.broker.dead_letter_queue),
        ] {
            // AMQP 0-9-1 short strings are at most 255 bytes; empty names mean the default
            // exchange or a server-named queue, neither of which is what a tenant wants.
            if value.is_empty() || value.len() > 255 {
                return invalid(field, "must be 1 to 255 bytes");
            }
        }
        if self.broker.exchange == self.broker.dead_letter_exchange {
            return invalid(
                "broker.deadLetterExchange",
                "must differ from broker.exchange, or rejected messages would loop",
            );
        }
        if self.outbox.max_backlog_rows == 0 {
            return invalid("outbox.maxBacklogRows", "must be at least 1");
        }
        if self.outbox.max_attempts == 0 {
            return invalid("outbox.maxAttempts", "must be at least 1");
        }
        if self.outbox.confirm_timeout_seconds == 0 {
            return invalid("outbox.confirmTimeoutSeconds", "must be at least 1");
        }
        let p = &self.protection;
        for (field, value) in [
            ("protection.headerReadTimeoutMs", p.header_read_timeout_ms),
            ("protection.idleTimeoutSeconds", p.idle_timeout_seconds),
            ("protection.maxConnections", u64::from(p.max_connections)),
            (
                "protection.requestTimeoutSeconds",
                p.request_timeout_seconds,
            ),
            ("protection.bodyStallTimeoutMs", p.body_stall_timeout_ms),
            (
                "protection.failedSignaturesPerSourcePerMinute",
                u64::from(p.failed_signatures_per_source_per_minute),
            ),
            (
                "protection.failedSignaturesPerEndpointPerMinute",
                u64::from(p.failed_signatures_per_endpoint_per_minute),
            ),
            (
                "protection.unverifiedConcurrency",
                u64::from(p.unverified_concurrency),
            ),
            (
                "protection.maxUnauthenticatedAuditRows",
                u64::from(p.max_unauthenticated_audit_rows),
            ),
        ] {
            if value == 0 {
                return invalid(field, "must be at least 1");
            }
        }
        if p.per_source_bytes(&self.limits) < self.limits.max_body_bytes {
            return invalid(
                "protection.maxInFlightBytesPerSource",
                "must be at least limits.maxBodyBytes, or a maximum-size report could never be read",
            );
        }
        let store = &self.store;
        if store.max_batch_rows == 0 || store.max_batch_rows > MAX_BATCH_ROWS_CEILING {
            return invalid("store.maxBatchRows", "must be between 1 and 1000");
        }
        if store.max_batch_bytes == 0 {
            return invalid("store.maxBatchBytes", "must be at least 1");
        }
        if store.max_batch_wait_ms > MAX_BATCH_WAIT_MS_CEILING {
            return invalid("store.maxBatchWaitMs", "must be at most 1000");
        }
        if store.concurrent_batches == 0
            || store.concurrent_batches > MAX_CONCURRENT_BATCHES_CEILING
        {
            return invalid("store.concurrentBatches", "must be between 1 and 16");
        }
        for (i, cidr) in p.trusted_proxies.iter().enumerate() {
            if !is_ip_or_cidr(cidr) {
                return Err(ConfigError::Invalid {
                    field: "protection.trustedProxies",
                    message: format!("entry {i} `{cidr}` is not a CIDR or IP address"),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "tenant": "acme",
            "repositories": ["7d3c1c8e-6a4c-4b55-9d84-2f1c0f0b8f61"],
            "rateLimit": {
                "perRepository": {"requestsPerMinute": 60, "burst": 10},
                "perEndpoint": {"requestsPerMinute": 600, "burst": 50}
            },
            "broker": {
                "exchange": "anchorpipe.reports",
                "routingKey": "tenant.acme.test-run",
                "queue": "anchorpipe.acme.reports",
                "deadLetterExchange": "anchorpipe.reports.dlx",
                "deadLetterQueue": "anchorpipe.acme.reports.dlq"
            }
        })
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = IngestConfig::from_json(&minimal().to_string()).unwrap();
        assert!(config.signatures.legacy);
        assert!(config.signatures.standard_webhooks);
        assert_eq!(config.signatures.timestamp_tolerance_seconds, 300);
        assert_eq!(config.limits.max_body_bytes, 50 * 1024 * 1024);
        assert_eq!(config.limits.max_tests, 10_000);
        assert_eq!(config.broker.queue_type, QueueType::Quorum);
        assert_eq!(config.outbox, OutboxConfig::default());
        assert_eq!(config.store, StoreConfig::default());
        assert_eq!(config.store.max_batch_rows, 64);
        assert_eq!(config.store.max_batch_wait_ms, 2);
    }

    #[test]
    fn store_bounds_are_checked_and_name_the_field() {
        for (patch, field) in [
            (serde_json::json!({"maxBatchRows": 0}), "store.maxBatchRows"),
            (
                serde_json::json!({"maxBatchRows": 1001}),
                "store.maxBatchRows",
            ),
            (
                serde_json::json!({"maxBatchBytes": 0}),
                "store.maxBatchBytes",
            ),
            (
                serde_json::json!({"maxBatchWaitMs": 1001}),
                "store.maxBatchWaitMs",
            ),
            (
                serde_json::json!({"concurrentBatches": 0}),
                "store.concurrentBatches",
            ),
        ] {
            let mut value = minimal();
            value["store"] = patch;
            let err = IngestConfig::from_json(&value.to_string())
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "expected `{field}` in: {err}");
        }
        let mut value = minimal();
        value["store"] = serde_json::json!({"maxBatchRows": 1, "maxBatchWaitMs": 0});
        let config = IngestConfig::from_json(&value.to_string()).unwrap();
        assert_eq!(config.store.max_batch_rows, 1);
        assert_eq!(config.store.concurrent_batches, 2);
    }

    #[test]
    fn round_trips_through_json() {
        let config = IngestConfig::from_json(&minimal().to_string()).unwrap();
        let text = serde_json::to_string(&config).unwrap();
        assert_eq!(IngestConfig::from_json(&text).unwrap(), config);
    }

    #[test]
    fn unknown_field_is_named() {
        let mut value = minimal();
        value["rateLimit"]["perRepository"]["brust"] = 3.into();
        let err = IngestConfig::from_json(&value.to_string())
            .unwrap_err()
            .to_string();
        assert!(err.contains("rateLimit.perRepository"), "{err}");
        assert!(err.contains("brust"), "{err}");
    }

    #[test]
    fn bad_repository_uuid_is_named() {
        let mut value = minimal();
        value["repositories"][0] = "not-a-uuid".into();
        let err = IngestConfig::from_json(&value.to_string())
            .unwrap_err()
            .to_string();
        assert!(err.contains("repositories[0]"), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_field() {
        type Mutation = fn(&mut serde_json::Value);
        let cases: [(&str, Mutation); 4] = [
            ("tenant", |v| v["tenant"] = " ".into()),
            ("rateLimit.perEndpoint", |v| {
                v["rateLimit"]["perEndpoint"]["burst"] = 0.into()
            }),
            ("limits.maxTests", |v| {
                v["limits"] = serde_json::json!({"maxTests": 10_001})
            }),
            ("broker.deadLetterExchange", |v| {
                v["broker"]["deadLetterExchange"] = "anchorpipe.reports".into()
            }),
        ];
        for (field, mutate) in cases {
            let mut value = minimal();
            mutate(&mut value);
            let err = IngestConfig::from_json(&value.to_string())
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "expected `{field}` in: {err}");
        }
    }

    #[test]
    fn protection_defaults_and_errors_name_the_field() {
        let config = IngestConfig::from_json(&minimal().to_string()).unwrap();
        assert_eq!(config.protection, ProtectionConfig::default());
        assert_eq!(
            config.protection.per_source_bytes(&config.limits),
            2 * DEFAULT_MAX_BODY_BYTES
        );
        assert_eq!(config.outbox.max_attempts, 10);
        for (patch, field) in [
            (
                serde_json::json!({"trustedProxies": ["10.0.0.0/8", "nope"]}),
                "protection.trustedProxies",
            ),
            (
                serde_json::json!({"maxConnections": 0}),
                "protection.maxConnections",
            ),
            (
                serde_json::json!({"maxInFlightBytesPerSource": 1}),
                "protection.maxInFlightBytesPerSource",
            ),
        ] {
            let mut value = minimal();
            value["protection"] = patch;
            let err = IngestConfig::from_json(&value.to_string())
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "expected `{field}` in: {err}");
        }
        let mut value = minimal();
        value["protection"] = serde_json::json!({"trustedProxies": ["10.0.0.0/8", "192.0.2.1"]});
        assert!(IngestConfig::from_json(&value.to_string()).is_ok());
    }

    #[test]
    fn tenant_topology_names_are_derived_from_the_tenant() {
        let topology = BrokerTopology::for_tenant("acme");
        assert_eq!(topology.queue, "anchorpipe.acme.reports");
        assert_eq!(topology.dead_letter_queue, "anchorpipe.acme.reports.dlq");
        assert_eq!(topology.routing_key, "tenant.acme.test-run");
        assert_ne!(topology.exchange, topology.dead_letter_exchange);
    }
}
