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
