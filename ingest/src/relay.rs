//! The outbox relay: moves committed outbox rows to RabbitMQ, losing none.
//!
//! - Rows are claimed in batches with `FOR UPDATE SKIP LOCKED` inside a transaction
//!   that stays open while the batch is published, so several relays (replicas) share
//!   the work without publishing the same row at the same time, and a relay that dies
//!   mid-batch releases its rows by dying (the transaction aborts).
//! - Batches overlap: up to `batches_in_flight` are claimed and unfinished at once, each
//!   on its own *lane* (a confirm-mode channel of its own), so the next batch is claimed
//!   and published while the previous one awaits its confirms and is marked. Claims run
//!   one at a time, so each `SELECT … SKIP LOCKED` starts after the rows of every batch
//!   still in flight are locked, and the batches are disjoint exactly as two replicas'
//!   are. Each batch commits on its own: a failed batch aborts only its transaction.
//!   Rows are claimed earliest due first (`next_attempt_at, id`: the order of the
//!   partial index of unsent rows, so a claim reads only unsent rows however many sent
//!   ones retention keeps); across batches (and replicas) no order is kept.
//! - One long-lived connection; every message of a batch is published before any of its
//!   confirms is awaited (pipelined), persistent, `mandatory` (an unroutable message
//!   comes back and counts as refused), `message_id` = ingestion id.
//! - Only confirmed rows are marked sent; refused ones get `attempts + 1` and a
//!   `next_attempt_at` with exponential backoff. A lost connection aborts the batch and
//!   reconnects with backoff; the rows stay unsent and are published again later, so
//!   delivery is at-least-once (consumers dedupe by `message_id`).
//! - Each row fails on its own. When a batch loses its lane's channel (the broker closes
//!   it for one message: an exchange that is gone, a message over its size limit) or a
//!   confirm does not come within `outbox.confirmTimeoutSeconds`, the batch is
//!   republished one row at a time on fresh channels, so the row at fault is found and
//!   charged an attempt while the others are delivered. After `outbox.maxAttempts`
//!   failed attempts a row is *parked*: `next_attempt_at = 'infinity'`, `last_error`
//!   starting with `parked:`. Parked rows are not retried, not counted as backlog, and
//!   shown in metrics and `/readyz`; `anchorpipe-ingest outbox parked|requeue` lists
//!   and re-queues them. Parking needs only the column updates the runtime role has.
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
use futures_util::StreamExt as _;
use futures_util::future::{BoxFuture, join_all};
use futures_util::stream::FuturesUnordered;
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use sqlx::{PgPool, Postgres, Transaction};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::http::DeliveryHealth;
use crate::metrics::Metrics;

/// Relay tuning. Defaults suit one pod; tests shorten the intervals.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Rows claimed and published per batch (all in flight at once).
    pub batch_size: i64,
    /// Batches claimed and not yet finished at once, each on its own channel. Two let
    /// the database work of one batch (claim, mark, commit) run while the broker takes
    /// the other's messages; each holds a database connection while in flight.
    pub batches_in_flight: usize,
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
            batches_in_flight: 2,
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
    #[error("the broker did not confirm in time")]
    ConfirmTimeout,
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

/// Outcome of one published batch (or of several, summed).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    pub confirmed: usize,
    pub refused: usize,
}

impl std::ops::AddAssign for BatchOutcome {
    fn add_assign(&mut self, other: Self) {
        self.confirmed += other.confirmed;
        self.refused += other.refused;
    }
}

/// A claimed batch: its rows stay locked by `tx` until the batch commits or aborts.
struct Claim {
    tx: Transaction<'static, Postgres>,
    rows: Vec<OutboxRow>,
}

/// What finished in the drain pipeline. A lane travels with its batch and comes back.
enum Step {
    Claimed(Channel, Result<Option<Claim>, RelayError>),
    Delivered(Channel, Result<BatchOutcome, RelayError>),
}

pub struct Relay {
    pool: PgPool,
    tenant: String,
    topology: BrokerTopology,
    confirm_timeout: Duration,
    max_attempts: i32,
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
            confirm_timeout: Duration::from_secs(config.outbox.confirm_timeout_seconds),
            max_attempts: i32::try_from(config.outbox.max_attempts).unwrap_or(i32::MAX),
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

    /// Connects, checks (passively) that the topology exists and opens the lanes.
    async fn connect(&self) -> Result<(Connection, Vec<Channel>), RelayError> {
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
        let lanes = self.open_lanes(&connection).await?;
        Ok((connection, lanes))
    }

    async fn open_lanes(&self, connection: &Connection) -> Result<Vec<Channel>, lapin::Error> {
        let mut lanes = Vec::with_capacity(self.settings.batches_in_flight.max(1));
        for _ in 0..self.settings.batches_in_flight.max(1) {
            lanes.push(confirm_channel(connection).await?);
        }
        Ok(lanes)
    }

    /// Runs until `shutdown`: connect, drain, wait for work; reconnect with backoff.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = self.reconnect_backoff();
        while !shutdown.is_cancelled() {
            match self.connect().await {
                Ok((connection, mut lanes)) => {
                    tracing::info!(tenant = %self.tenant, lanes = lanes.len(),
                        "relay connected to the broker");
                    self.set_broker_up(true);
                    backoff = self.reconnect_backoff();
                    let result = self.serve(&connection, &mut lanes, &shutdown).await;
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
        connection: &Connection,
        lanes: &mut Vec<Channel>,
        shutdown: &CancellationToken,
    ) -> Result<(), RelayError> {
        loop {
            // Drain everything due before waiting.
            self.drain_on(connection, lanes).await?;
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(self.settings.poll_interval) => {}
                () = self.delivery.wake.notified() => {}
            }
        }
    }

    /// Publishes every row that is due, `batches_in_flight` batches overlapping, on
    /// lanes of its own. Returns the summed outcome; `Err` when the connection or the
    /// database failed (after the other batches in flight finished).
    pub async fn drain(&self, connection: &Connection) -> Result<BatchOutcome, RelayError> {
        let mut lanes = self.open_lanes(connection).await?;
        let drained = self.drain_on(connection, &mut lanes).await;
        for lane in lanes {
            let _ = lane.close(200, "drained".into()).await;
        }
        drained
    }

    /// The drain pipeline: claim → publish and await confirms → mark and commit, with
    /// the next claim started as soon as a lane is free. Claims never overlap one
    /// another (see the module docs). A failure stops new claims; the batches already
    /// in flight still finish, so confirmed rows are marked when the database allows.
    async fn drain_on(
        &self,
        connection: &Connection,
        lanes: &mut Vec<Channel>,
    ) -> Result<BatchOutcome, RelayError> {
        let full = usize::try_from(self.settings.batch_size).unwrap_or(usize::MAX);
        let mut steps: FuturesUnordered<BoxFuture<'_, Step>> = FuturesUnordered::new();
        let mut total = BatchOutcome::default();
        let mut claiming = false;
        let mut more = true;
        let mut failure: Option<RelayError> = None;
        loop {
            if more
                && !claiming
                && failure.is_none()
                && let Some(lane) = lanes.pop()
            {
                claiming = true;
                steps.push(Box::pin(
                    async move { Step::Claimed(lane, self.claim().await) },
                ));
            }
            let Some(step) = steps.next().await else {
                break;
            };
            match step {
                Step::Claimed(mut lane, claimed) => {
                    claiming = false;
                    match claimed {
                        Ok(Some(claim)) => {
                            more = claim.rows.len() >= full;
                            steps.push(Box::pin(async move {
                                let delivered = self.deliver(connection, &mut lane, claim).await;
                                Step::Delivered(lane, delivered)
                            }));
                        }
                        Ok(None) => {
                            more = false;
                            lanes.push(lane);
                        }
                        Err(error) => {
                            lanes.push(lane);
                            failure.get_or_insert(error);
                        }
                    }
                }
                Step::Delivered(lane, delivered) => {
                    lanes.push(lane);
                    match delivered {
                        Ok(outcome) => total += outcome,
                        Err(error) => {
                            failure.get_or_insert(error);
                        }
                    }
                }
            }
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(total),
        }
    }

    /// Claims up to one batch of due rows, publishes them all, awaits the confirms and
    /// records the outcome, in one transaction, on `channel`. When the channel is lost
    /// or a confirm times out while the connection is still up, the batch is
    /// republished one row at a time ([`Self::isolate`]) so only the row at fault is
    /// charged.
    pub async fn publish_batch(
        &self,
        connection: &Connection,
        channel: &mut Channel,
    ) -> Result<BatchOutcome, RelayError> {
        match self.claim().await? {
            Some(claim) => self.deliver(connection, channel, claim).await,
            None => Ok(BatchOutcome::default()),
        }
    }

    /// Locks up to one batch of due rows in a new transaction; `None` when none is due.
    async fn claim(&self) -> Result<Option<Claim>, RelayError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT id, ingestion_id, exchange, routing_key, message::text AS message, request_id,
                    traceparent, attempts
             FROM outbox
             WHERE tenant = $1 AND sent_at IS NULL AND next_attempt_at <= now()
             ORDER BY next_attempt_at, id
             LIMIT $2
             FOR UPDATE SKIP LOCKED",
        )
        .bind(&self.tenant)
        .bind(self.settings.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(None);
        }
        Ok(Some(Claim { tx, rows }))
    }

    /// Publishes a claimed batch on `channel` (reopened first if a previous batch left
    /// it closed), then marks what was confirmed and charges what failed, and commits.
    async fn deliver(
        &self,
        connection: &Connection,
        channel: &mut Channel,
        claim: Claim,
    ) -> Result<BatchOutcome, RelayError> {
        let Claim { mut tx, rows } = claim;
        if !channel.status().connected() {
            *channel = confirm_channel(connection).await?;
        }
        let results = match self.publish_pipelined(channel, &rows).await {
            Ok(results) => results,
            Err(error) if connection.status().connected() => {
                // The channel died (or a confirm hung) with the connection fine: one
                // message is at fault. Find it instead of retrying the whole batch forever.
                tracing::warn!(tenant = %self.tenant, %error, rows = rows.len(),
                    "batch failed on its channel; publishing its rows one at a time");
                self.isolate(connection, channel, &rows).await?
            }
            Err(error) => {
                self.metrics.publish_errors.inc();
                // Nothing is marked: the transaction is dropped and the rows stay due.
                return Err(error);
            }
        };

        let mut sent = Vec::new();
        let mut failed: Vec<(&OutboxRow, &'static str)> = Vec::new();
        for (row, result) in rows.iter().zip(results) {
            match result {
                Ok(()) => sent.push(row.id),
                Err(reason) => failed.push((row, reason)),
            }
        }
        if !sent.is_empty() {
            sqlx::query("UPDATE outbox SET sent_at = now() WHERE id = ANY($1)")
                .bind(&sent)
                .execute(&mut *tx)
                .await?;
        }
        let mut parked = 0u64;
        for (row, reason) in &failed {
            let delay = self.retry_delay(row.attempts);
            let will_park = row.attempts.saturating_add(1) >= self.max_attempts;
            parked += u64::from(will_park);
            sqlx::query(
                "UPDATE outbox SET attempts = attempts + 1,
                        next_attempt_at = CASE WHEN $3 THEN 'infinity'::timestamptz
                                               ELSE now() + make_interval(secs => $2) END,
                        last_error = CASE WHEN $3 THEN 'parked: ' || $4 ELSE $4 END
                 WHERE id = $1",
            )
            .bind(row.id)
            .bind(delay.as_secs_f64())
            .bind(will_park)
            .bind(*reason)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.metrics.published.inc_by(sent.len() as u64);
        self.metrics.publish_nacks.inc_by(failed.len() as u64);
        self.metrics.outbox_parked_rows.inc_by(parked);
        if !failed.is_empty() {
            tracing::warn!(tenant = %self.tenant, failed = failed.len(), parked,
                "broker did not take some messages; they retry with backoff or are parked");
        }
        Ok(BatchOutcome {
            confirmed: sent.len(),
            refused: failed.len(),
        })
    }

    fn publish_one<'a>(
        &'a self,
        channel: &'a Channel,
        row: &'a OutboxRow,
    ) -> impl Future<Output = Result<lapin::PublisherConfirm, lapin::Error>> + 'a {
        channel.basic_publish(
            ShortString::from(row.exchange.as_str()),
            ShortString::from(row.routing_key.as_str()),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            row.message.as_bytes(),
            properties(row, &self.tenant),
        )
    }

    /// Publishes every row, then awaits all confirms (bounded by the confirm timeout).
    /// `Err` when the channel failed or the confirms did not all come in time.
    async fn publish_pipelined(
        &self,
        channel: &Channel,
        rows: &[OutboxRow],
    ) -> Result<Vec<Result<(), &'static str>>, RelayError> {
        let mut pending = Vec::with_capacity(rows.len());
        for row in rows {
            pending.push(self.publish_one(channel, row).await?);
        }
        let confirmations = tokio::time::timeout(self.confirm_timeout, join_all(pending))
            .await
            .map_err(|_| {
                self.metrics.outbox_confirm_timeouts.inc();
                RelayError::ConfirmTimeout
            })?;
        confirmations
            .into_iter()
            .map(|c| Ok(confirmed(c?)))
            .collect()
    }

    /// Publishes `rows` one at a time, each on a working channel, each confirm bounded
    /// by the confirm timeout. A row whose publish closes the channel or times out is
    /// failed on its own and the channel replaced. `Err` only if the connection is lost.
    async fn isolate(
        &self,
        connection: &Connection,
        channel: &mut Channel,
        rows: &[OutboxRow],
    ) -> Result<Vec<Result<(), &'static str>>, RelayError> {
        let mut results = Vec::with_capacity(rows.len());
        for row in rows {
            if !channel.status().connected() {
                *channel = confirm_channel(connection).await?;
            }
            let attempt = async {
                let confirm = self.publish_one(channel, row).await?;
                confirm.await
            };
            let result = match tokio::time::timeout(self.confirm_timeout, attempt).await {
                Ok(Ok(confirmation)) => confirmed(confirmation),
                Ok(Err(error)) if connection.status().connected() => {
                    tracing::warn!(tenant = %self.tenant, outbox_id = row.id, %error,
                        "the broker closed the channel for this message");
                    Err(
                        "the broker closed the channel for this message (exchange missing or message refused)",
                    )
                }
                Ok(Err(error)) => {
                    self.metrics.publish_errors.inc();
                    return Err(error.into());
                }
                Err(_) => {
                    self.metrics.outbox_confirm_timeouts.inc();
                    // A late confirm must not be taken for the next row's.
                    let _ = channel.close(200, "confirm timed out".into()).await;
                    Err("no confirm within the confirm timeout")
                }
            };
            if result.is_err() && channel.status().connected() {
                let _ = channel
                    .close(200, "isolating a failed message".into())
                    .await;
            }
            results.push(result);
        }
        Ok(results)
    }

    fn retry_delay(&self, attempts: i32) -> Duration {
        let factor = 2u32.saturating_pow(u32::try_from(attempts.clamp(0, 20)).unwrap_or(20));
        self.settings
            .retry_base
            .saturating_mul(factor)
            .min(self.settings.retry_max)
    }
}

/// Opens a channel in confirm mode.
async fn confirm_channel(connection: &Connection) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// A confirm's meaning for its row.
fn confirmed(confirmation: Confirmation) -> Result<(), &'static str> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err("unroutable: no queue bound for the routing key"),
        Confirmation::Nack(_) => Err("refused by the broker (nack)"),
        Confirmation::NotRequested => Err("channel not in confirm mode"),
    }
}

/// Unsent rows that are still due some day (parked rows excluded) and the age of the
/// oldest, for backpressure; and the number of parked rows.
pub async fn outbox_figures(pool: &PgPool, tenant: &str) -> Result<(i64, f64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE next_attempt_at <> 'infinity'),
                COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)
                         FILTER (WHERE next_attempt_at <> 'infinity'))::float8, 0),
                count(*) FILTER (WHERE next_attempt_at = 'infinity')
         FROM outbox WHERE tenant = $1 AND sent_at IS NULL",
    )
    .bind(tenant)
    .fetch_one(pool)
    .await
}

/// A parked outbox row, as listed by `anchorpipe-ingest outbox parked`.
#[derive(Debug, sqlx::FromRow, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParkedRow {
    pub id: i64,
    pub ingestion_id: Uuid,
    pub exchange: String,
    pub routing_key: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// The tenant's parked rows, oldest first.
pub async fn parked_rows(pool: &PgPool, tenant: &str) -> Result<Vec<ParkedRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, ingestion_id, exchange, routing_key, attempts, last_error, created_at
         FROM outbox
         WHERE tenant = $1 AND sent_at IS NULL AND next_attempt_at = 'infinity'
         ORDER BY id",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await
}

/// Makes parked rows due again with a fresh attempt count: all of the tenant's, or
/// only `ids`. Returns how many were re-queued.
pub async fn requeue_parked(
    pool: &PgPool,
    tenant: &str,
    ids: Option<&[i64]>,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE outbox SET attempts = 0, next_attempt_at = now(),
                last_error = 'requeued after: ' || COALESCE(last_error, '')
         WHERE tenant = $1 AND sent_at IS NULL AND next_attempt_at = 'infinity'
           AND ($2::bigint[] IS NULL OR id = ANY($2))",
    )
    .bind(tenant)
    .bind(ids)
    .execute(pool)
    .await?
    .rows_affected())
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
        match outbox_figures(&pool, &tenant).await {
            Ok((rows, age, parked)) => {
                let parked = u64::try_from(parked).unwrap_or_default();
                delivery.parked_rows.store(parked, Ordering::Relaxed);
                metrics
                    .outbox_parked
                    .set(i64::try_from(parked).unwrap_or(i64::MAX));
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
