//! Prometheus metrics. Every label value comes from a fixed set (outcomes, reasons),
//! never from request data or error text, so cardinality is bounded.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

type HistogramFamily = Family<OutcomeLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~16 s: small reports answer in milliseconds, 50 MiB ones in seconds.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<OutcomeLabels, Counter>,
    pub request_duration: HistogramFamily,
    pub auth_failures: Family<ReasonLabels, Counter>,
    pub published: Counter,
    pub publish_nacks: Counter,
    pub publish_errors: Counter,
    pub broker_up: Gauge,
    pub outbox_backlog: Gauge,
    pub outbox_oldest_age_seconds: Gauge<f64, AtomicU64>,
    pub outbox_cleaned: Counter,
    pub unverified_lane: Counter,
    pub body_stalls: Counter,
    pub source_share_refusals: Counter,
    pub audit_folded: Counter,
    pub connections_open: Gauge,
    pub connections_closed_idle: Counter,
    pub connections_evicted: Counter,
    pub connections_over_share: Counter,
    pub refusals_delayed: Counter,
    pub outbox_parked: Gauge,
    pub outbox_parked_rows: Counter,
    pub outbox_confirm_timeouts: Counter,
    pub commit_batch_rows: Histogram,
    pub commit_fallbacks: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("anchorpipe_ingest");
        let requests = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "requests",
            "Ingestion requests by outcome",
            requests.clone(),
        );
        let request_duration: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Ingestion request latency by outcome",
            request_duration.clone(),
        );
        let auth_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "auth_failures",
            "Unauthenticated requests by reason",
            auth_failures.clone(),
        );
        let published = Counter::default();
        registry.register(
            "outbox_published",
            "Outbox messages confirmed by the broker",
            published.clone(),
        );
        let publish_nacks = Counter::default();
        registry.register(
            "outbox_publish_nacks",
            "Outbox messages the broker refused (nack or return); retried",
            publish_nacks.clone(),
        );
        let publish_errors = Counter::default();
        registry.register(
            "outbox_publish_errors",
            "Publish attempts that failed on the connection; retried",
            publish_errors.clone(),
        );
        let broker_up = Gauge::default();
        registry.register(
            "broker_up",
            "1 when the relay holds a working broker channel and the topology exists",
            broker_up.clone(),
        );
        let outbox_backlog = Gauge::default();
        registry.register(
            "outbox_backlog",
            "Unsent outbox rows for this tenant",
            outbox_backlog.clone(),
        );
        let outbox_oldest_age_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest unsent outbox row",
            outbox_oldest_age_seconds.clone(),
        );
        let outbox_cleaned = Counter::default();
        registry.register(
            "outbox_cleaned",
            "Sent outbox rows deleted by retention",
            outbox_cleaned.clone(),
        );
        let unverified_lane = Counter::default();
        registry.register("unverified_lane", "Requests verified through the narrow lane because their source (or the endpoint) had many failed signatures", unverified_lane.clone());
        let body_stalls = Counter::default();
        registry.register(
            "body_stalls",
            "Request bodies given up on after sending no byte for the stall timeout (408)",
            body_stalls.clone(),
        );
        let source_share_refusals = Counter::default();
        registry.register(
            "source_share_refusals",
            "Requests refused because their source held its share of the in-flight budget",
            source_share_refusals.clone(),
        );
        let audit_folded = Counter::default();
        registry.register("audit_folded", "Unauthenticated or rate-limited events folded into one audit row per reason, past the per-flush row bound", audit_folded.clone());
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Client connections open now",
            connections_open.clone(),
        );
        let connections_closed_idle = Counter::default();
        registry.register(
            "connections_closed_idle",
            "Connections closed for idling or for not sending a request head in time",
            connections_closed_idle.clone(),
        );
        let connections_evicted = Counter::default();
        registry.register(
            "connections_evicted",
            "Connections without a request in progress closed to make room at the connection cap",
            connections_evicted.clone(),
        );
        let connections_over_share = Counter::default();
        registry.register(
            "connections_over_share",
            "Connections at the cap from an address at its fair share that no place came up for: closed unread",
            connections_over_share.clone(),
        );
        let refusals_delayed = Counter::default();
        registry.register(
            "refusals_delayed",
            "Refusals held back for failureDelayMs because their source kept failing",
            refusals_delayed.clone(),
        );
        let outbox_parked = Gauge::default();
        registry.register(
            "outbox_parked",
            "Outbox rows parked after too many failed attempts (need a re-queue)",
            outbox_parked.clone(),
        );
        let outbox_parked_rows = Counter::default();
        registry.register(
            "outbox_parked_rows",
            "Outbox rows this relay parked",
            outbox_parked_rows.clone(),
        );
        let outbox_confirm_timeouts = Counter::default();
        registry.register(
            "outbox_confirm_timeouts",
            "Publishes the broker did not confirm within the confirm timeout",
            outbox_confirm_timeouts.clone(),
        );
        // 1 to 1024 reports per transaction.
        let commit_batch_rows = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        registry.register(
            "commit_batch_rows",
            "Reports stored per transaction (group commit)",
            commit_batch_rows.clone(),
        );
        let commit_fallbacks = Counter::default();
        registry.register(
            "commit_fallbacks",
            "Batches the database refused and that were stored again one report per transaction",
            commit_fallbacks.clone(),
        );
        Self {
            registry,
            requests,
            request_duration,
            auth_failures,
            published,
            publish_nacks,
            publish_errors,
            broker_up,
            outbox_backlog,
            outbox_oldest_age_seconds,
            outbox_cleaned,
            unverified_lane,
            body_stalls,
            source_share_refusals,
            audit_folded,
            connections_open,
            connections_closed_idle,
            connections_evicted,
            connections_over_share,
            refusals_delayed,
            outbox_parked,
            outbox_parked_rows,
            outbox_confirm_timeouts,
            commit_batch_rows,
            commit_fallbacks,
        }
    }

    pub fn observe(&self, outcome: &'static str, seconds: f64) {
        let labels = OutcomeLabels { outcome };
        self.requests.get_or_create(&labels).inc();
        self.request_duration
            .get_or_create(&labels)
            .observe(seconds);
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
