//! The anchorpipe ingest service.
//!
//! Reads its tenant's config ([`anchorpipe_crds::IngestConfig`]) and HMAC keys from
//! the files the operator mounts, accepts signed reports over HTTP ([`http`]), stores
//! each exactly once with its audit and outbox rows ([`store`]), reports accepted at the
//! same moment in one transaction ([`commit`]), and relays the outbox to RabbitMQ.

pub mod audit;
pub mod bulk;
pub mod cli;
pub mod commit;
pub mod http;
pub mod key_usage;
pub mod keys;
pub mod metrics;
pub mod protect;
pub mod ratelimit;
pub mod relay;
pub mod report;
pub mod retention;
pub mod server;
pub mod signature;
pub mod store;
pub mod xml;

#[cfg(test)]
pub(crate) mod testing;

/// The SQL migrations, embedded. Applied by `anchorpipe-ingest migrate` (a Helm hook
/// Job in a cluster), never implicitly by a serving pod.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Starts the delivery side: the outbox relay (with a broker URL), the backlog monitor
/// (always, so backpressure works even while the broker is away) and the retention sweep.
pub fn spawn_delivery(
    config: &anchorpipe_crds::IngestConfig,
    amqp_url: Option<&str>,
    pool: sqlx::PgPool,
    metrics: std::sync::Arc<metrics::Metrics>,
    delivery: std::sync::Arc<http::DeliveryHealth>,
    settings: relay::RelaySettings,
    shutdown: tokio_util::sync::CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = vec![
        tokio::spawn(relay::monitor_backlog(
            pool.clone(),
            config.tenant.clone(),
            settings.backlog_interval,
            std::sync::Arc::clone(&metrics),
            std::sync::Arc::clone(&delivery),
            shutdown.clone(),
        )),
        tokio::spawn(relay::run_retention(
            pool.clone(),
            std::time::Duration::from_secs(config.outbox.sent_retention_seconds),
            settings.clone(),
            std::sync::Arc::clone(&metrics),
            shutdown.clone(),
        )),
    ];
    if let Some(url) = amqp_url {
        let relay = relay::Relay::new(pool, config, url.to_owned(), settings, metrics, delivery);
        tasks.push(tokio::spawn(relay.run(shutdown)));
    }
    tasks
}
