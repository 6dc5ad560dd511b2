//! The outbox relay: moves committed outbox rows to RabbitMQ, losing none.
//!
//! - Rows are claimed in batches with `FOR UPDATE SKIP LOCKED` inside a transaction
//!   that stays open while the batch is published, so several relays (replicas) share
//!   the work without publishing the same row at the same time, and a relay that dies
//!   mid-batch releases its rows by dying (the transaction aborts).
//! - One long-lived connection and a confirm-mode channel; every message of a batch is
//!   published before any confirm is awaited (pipelined), persistent, `mandatory` (an
//!   unroutable message comes back and counts as refused), `message_id` = ingestion id.
//! - Only confirmed rows are marked sent; refused ones get `attempts + 1` and a
//!   `next_attempt_at` with exponential backoff. A lost connection aborts the batch and
//!   reconnects with backoff; the rows stay unsent and are published again later, so
//!   delivery is at-least-once (consumers dedupe by `message_id`).
//! - The ingest handler wakes its own relay in-process right after each commit, so a
//!   report is published promptly; relays also poll, which covers rows accepted by
//!   other replicas and a restarted pod's leftovers. (A database NOTIFY per row was
//!   tried and dropped: PostgreSQL serialises the commits of notifying transactions.)
//!
//! Beside it run the backlog monitor (feeds readiness, metrics and the 503 backpressure)
//! and the retention sweep of sent rows.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anchorpipe_crds::config::{BrokerTopology, IngestConfig};
use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::future::join_all;
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::http::DeliveryHealth;
use crate::metrics::Metrics;

/// Relay tuning. Defaults suit one pod; tests shorten the intervals.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Rows claimed and published per batch (all in flight at once).
    pub batch_size: i64,
    /// Fallback poll when no in-process wake-up arrives.
    pub poll_interval: Duration,
    /// Retry delay for a refused row: `min(base * 2^attempts, max)`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Reconnect backoff bounds.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// How often the backlog figures are refreshed.
    pub backlog_interval: Duration,
    /// How often sent rows past retention are deleted, and how many per statement.
    pub retention_interval: Duration,
    pub retention_batch: i64,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_size: 256,
            poll_interval: Duration::from_secs(1),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(15),
            backlog_interval: Duration::from_secs(1),
            retention_interval: Duration::from_secs(60),
            retention_batch: 1000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("topology: {0}")]
    Topology(#[from] anchorpipe_crds::topology::TopologyError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// One outbox row as claimed.
#[derive(Debug, sqlx::FromRow)]
struct OutboxRow {
    id: i64,
    ingestion_id: Uuid,
    exchange: String,
    routing_key: String,
    /// The message as JSON text, sent as is (no parse and re-serialise per publish).
    message: String,
    request_id: String,
    traceparent: Option<String>,
    attempts: i32,
}

/// Outcome of one published batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    pub confirmed: usize,
    pub refused: usize,
}

pub struct Relay {
    pool: PgPool,
    tenant: String,
    topology: BrokerTopology,
    amqp_url: String,
    settings: RelaySettings,
    metrics: Arc<Metrics>,
    delivery: Arc<DeliveryHealth>,
}

fn properties(row: &OutboxRow, tenant: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    let mut put = |key: &str, value: &str| {
        headers.insert(
            ShortString::from(key),
            AMQPValue::LongString(LongString::from(value)),
        );
    };
    put("tenant", tenant);
    put("request-id", &row.request_id);
    if let Some(traceparent) = &row.traceparent {
        put("traceparent", traceparent);
    }
    BasicProperties::default()
        .with_message_id(ShortString::from(row.ingestion_id.to_string()))
        .with_content_type(ShortString::from("application/json"))
        .with_type(ShortString::from("test.run.received"))
        .with_app_id(ShortString::from("anchorpipe-ingest"))
        // 2 = persistent: written to disk by the broker before it confirms.
        .with_delivery_mode(2)
        .with_timestamp(u64::try_from(chrono::Utc::now().timestamp()).unwrap_or_default())
        .with_headers(headers)
}

impl Relay {
    pub fn new(
        pool: PgPool,
        config: &IngestConfig,
        amqp_url: String,
        settings: RelaySettings,
        metrics: Arc<Metrics>,
        delivery: Arc<DeliveryHealth>,
    ) -> Self {
        Self {
            pool,
            tenant: config.tenant.clone(),
            topology: config.broker.clone(),
            amqp_url,
            settings,
            metrics,
            delivery,
        }
    }

    fn set_broker_up(&self, up: bool) {
        self.delivery.broker_ready.store(up, Ordering::Relaxed);
        self.metrics.broker_up.set(i64::from(up));
    }

    /// Connects, enables confirms and checks (passively) that the topology exists.
    async fn connect(&self) -> Result<(Connection, Channel), RelayError> {
        let properties = ConnectionProperties::default().with_connection_name(LongString::from(
            format!("anchorpipe-ingest/{}", self.tenant),
        ));
        let connection = Connection::connect(&self.amqp_url, properties).await?;
        // Passive declares close their channel on failure, so check on a throwaway one.
        let probe = connection.create_channel().await?;
        let checked = anchorpipe_crds::topology::check(&probe, &self.topology).await;
        // A channel-level (soft) error is the broker's answer NOT_FOUND; anything else is
        // the connection failing, which says nothing about the topology.
        let missing = matches!(&checked, Err(e) if e.source.is_amqp_soft_error());
        self.delivery
            .topology_missing
            .store(missing, Ordering::Relaxed);
        checked?;
        let _ = probe.close(200, "topology checked".into()).await;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok((connection, channel))
    }

    /// Runs until `shutdown`: connect, drain, wait for work; reconnect with backoff.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = self.reconnect_backoff();
        while !shutdown.is_cancelled() {
            match self.connect().await {
                Ok((connection, channel)) => {
                    tracing::info!(tenant = %self.tenant, "relay connected to the broker");
                    self.set_broker_up(true);
                    backoff = self.reconnect_backoff();
                    let result = self.serve(&channel, &shutdown).await;
                    self.set_broker_up(false);
                    let _ = connection.close(200, "relay stopping".into()).await;
                    match result {
                        Ok(()) => return,
                        Err(error) => {
                            tracing::warn!(tenant = %self.tenant, %error, "relay lost the broker or database; reconnecting");
                        }
                    }
                }
                Err(error) => {
                    self.set_broker_up(false);
                    tracing::warn!(tenant = %self.tenant, %error, "relay cannot reach a usable broker");
                }
            }
            let delay = backoff.next().unwrap_or(self.settings.reconnect_max);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    fn reconnect_backoff(&self) -> impl Iterator<Item = Duration> + use<> {
        ExponentialBuilder::default()
            .with_min_delay(self.settings.reconnect_min)
            .with_max_delay(self.settings.reconnect_max)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// Drains while connected. Returns `Ok` only on shutdown.
    async fn serve(
        &self,
        channel: &Channel,
        shutdown: &CancellationToken,
    ) -> Result<(), RelayError> {
        loop {
            // Drain everything due before waiting.
            loop {
                let outcome = self.publish_batch(channel).await?;
                if outcome.confirmed + outcome.refused < self.settings.batch_size as usize {
                    break;
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(self.settings.poll_interval) => {}
                () = self.delivery.wake.notified() => {}
            }
        }
    }

    /// Claims up to one batch of due rows, publishes them all, awaits the confirms and
    /// records the outcome, in one transaction.
    pub async fn publish_batch(&self, channel: &Channel) -> Result<BatchOutcome, RelayError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT id, ingestion_id, exchange, routing_key, message::text AS message, request_id,
                    traceparent, attempts
             FROM outbox
             WHERE tenant = $1 AND sent_at IS NULL AND next_attempt_at <= now()
             ORDER BY id
             LIMIT $2
             FOR UPDATE SKIP LOCKED",
        )
        .bind(&self.tenant)
        .bind(self.settings.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(BatchOutcome::default());
        }

        // Publish everything first (pipelined), then await the confirms together.
        let mut pending = Vec::with_capacity(rows.len());
        for row in &rows {
            let confirm = channel
                .basic_publish(
                    ShortString::from(row.exchange.as_str()),
                    ShortString::from(row.routing_key.as_str()),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    row.message.as_bytes(),
                    properties(row, &self.tenant),
                )
                .await;
            match confirm {
                Ok(confirm) => pending.push(confirm),
                Err(error) => {
                    self.metrics.publish_errors.inc();
                    // Nothing is marked: the transaction is dropped and the rows stay due.
                    return Err(error.into());
                }
            }
        }
        let confirmations = join_all(pending).await;

        let mut sent = Vec::new();
        let mut refused: Vec<(i64, i32)> = Vec::new();
        for (row, confirmation) in rows.iter().zip(confirmations) {
            match confirmation {
                Ok(Confirmation::Ack(None)) => sent.push(row.id),
                Ok(Confirmation::Ack(Some(_)) | Confirmation::Nack(_)) => {
                    refused.push((row.id, row.attempts));
                }
                Ok(Confirmation::NotRequested) => refused.push((row.id, row.attempts)),
                Err(error) => {
                    self.metrics.publish_errors.inc();
                    return Err(error.into());
                }
            }
        }
        if !sent.is_empty() {
            sqlx::query("UPDATE outbox SET sent_at = now() WHERE id = ANY($1)")
                .bind(&sent)
                .execute(&mut *tx)
                .await?;
        }
        for (id, attempts) in &refused {
            let delay = self.retry_delay(*attempts);
            sqlx::query(
                "UPDATE outbox SET attempts = attempts + 1,
                        next_attempt_at = now() + make_interval(secs => $2),
                        last_error = 'refused by the broker (nack or unroutable)'
                 WHERE id = $1",
            )
            .bind(id)
            .bind(delay.as_secs_f64())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.metrics.published.inc_by(sent.len() as u64);
        self.metrics.publish_nacks.inc_by(refused.len() as u64);
        if !refused.is_empty() {
            tracing::warn!(tenant = %self.tenant, refused = refused.len(), "broker refused messages; will retry");
        }
        Ok(BatchOutcome {
            confirmed: sent.len(),
            refused: refused.len(),
        })
    }

    fn retry_delay(&self, attempts: i32) -> Duration {
        let factor = 2u32.saturating_pow(u32::try_from(attempts.clamp(0, 20)).unwrap_or(20));
        self.settings
            .retry_base
            .saturating_mul(factor)
            .min(self.settings.retry_max)
    }
}

/// Refreshes the backlog figures until shutdown.
pub async fn monitor_backlog(
    pool: PgPool,
    tenant: String,
    interval: Duration,
    metrics: Arc<Metrics>,
    delivery: Arc<DeliveryHealth>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        match crate::store::outbox_backlog(&pool, &tenant).await {
            Ok((rows, age)) => {
                let rows = u64::try_from(rows).unwrap_or_default();
                delivery.backlog_rows.store(rows, Ordering::Relaxed);
                delivery
                    .oldest_age_secs
                    .store(age as u64, Ordering::Relaxed);
                metrics
                    .outbox_backlog
                    .set(i64::try_from(rows).unwrap_or(i64::MAX));
                metrics.outbox_oldest_age_seconds.set(age);
            }
            // The database being away is reported by readiness; keep the last figures.
            Err(error) => tracing::debug!(%error, "backlog query failed"),
        }
    }
}

/// Deletes sent rows older than the retention, `batch` rows per statement so no long
/// lock is taken on the table the hot path inserts into.
pub async fn clean_sent(
    pool: &PgPool,
    retention: Duration,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let deleted = sqlx::query(
            "DELETE FROM outbox WHERE id IN (
                 SELECT id FROM outbox
                 WHERE sent_at IS NOT NULL AND sent_at < now() - make_interval(secs => $1)
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED)",
        )
        .bind(retention.as_secs_f64())
        .bind(batch)
        .execute(pool)
        .await?
        .rows_affected();
        total += deleted;
        if deleted < u64::try_from(batch).unwrap_or(0) {
            return Ok(total);
        }
    }
}

/// Runs [`clean_sent`] every `interval` until shutdown.
pub async fn run_retention(
    pool: PgPool,
    retention: Duration,
    settings: RelaySettings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(settings.retention_interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        match clean_sent(&pool, retention, settings.retention_batch).await {
            Ok(0) => {}
            Ok(n) => {
                metrics.outbox_cleaned.inc_by(n);
                tracing::debug!(deleted = n, "cleaned sent outbox rows");
            }
            Err(error) => tracing::debug!(%error, "outbox retention failed; will retry"),
        }
    }
}
