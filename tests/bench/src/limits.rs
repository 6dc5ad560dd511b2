//! The machine's own limits for the same work, measured in the same run:
//!
//! - PostgreSQL: `anchorpipe_ingest::store::store_report`, the very function the service
//!   calls (ingestion + outbox + audit rows in one transaction, with the outbox trigger's
//!   NOTIFY), driven directly at the load's concurrency — no HTTP, no HMAC, no JSON
//!   validation.
//! - RabbitMQ: publish-with-confirms of the relay's message (same body, same
//!   properties, persistent, mandatory) in batches of the relay's size, every message of
//!   a batch in flight before the confirms are awaited, the way the relay publishes.
//! - CPU: signature verification plus JSON parsing and schema validation of one report,
//!   in process on one core: what the service must spend per report before any I/O.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anchorpipe_crds::config::BrokerTopology;
use anchorpipe_ingest::report::{ReportHeader, ReportValidator};
use anchorpipe_ingest::store::{NewReport, RequestMeta, event_message, store_report};
use anyhow::Context as _;
use hdrhistogram::Histogram;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use sqlx::postgres::PgPoolOptions;
use tokio::time::Instant;
use uuid::Uuid;

use crate::report::{COMMIT_SHA, Template};

/// Throughput and latency of a limit measurement.
#[derive(Debug, Clone)]
pub struct Measured {
    pub done: u64,
    pub failed: u64,
    pub elapsed: Duration,
    /// Per-operation latency in microseconds (a transaction, or a confirmed batch).
    pub latency: Histogram<u64>,
}

impl Measured {
    pub fn per_sec(&self) -> f64 {
        self.done as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// The header of every report the benchmark stores directly (without the service).
pub(crate) fn header(repo: Uuid, run_id: String) -> ReportHeader {
    ReportHeader {
        repo_id: repo,
        commit_sha: COMMIT_SHA.to_owned(),
        run_id,
        framework: "junit".to_owned(),
        branch: Some("main".to_owned()),
        pull_request: None,
        environment: serde_json::value::RawValue::from_string(r#"{"ci":"bench"}"#.to_owned()).ok(),
        metadata: None,
        idempotency_key: None,
    }
}

/// The three-row transaction of one accepted report, `concurrency` at a time.
/// A pool of one connection per worker. The caller closes it after the CPU snapshot:
/// a closed connection's backend exits and its CPU time leaves `/proc` with it.
pub async fn pg_pool(database_url: &str, concurrency: usize) -> anyhow::Result<sqlx::PgPool> {
    PgPoolOptions::new()
        .max_connections(u32::try_from(concurrency).unwrap_or(u32::MAX))
        .acquire_timeout(Duration::from_secs(30))
        .connect(database_url)
        .await
        .context("connecting to PostgreSQL")
}

pub async fn postgres(
    pool: &sqlx::PgPool,
    tenant: &str,
    topology: &BrokerTopology,
    template: &Template,
    concurrency: usize,
    duration: Duration,
    run_prefix: &str,
) -> anyhow::Result<Measured> {
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (pool, issued) = (pool.clone(), Arc::clone(&issued));
        let (tenant, topology, template) = (tenant.to_owned(), topology.clone(), template.clone());
        let run_prefix = run_prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut latency = histogram()?;
            let (mut done, mut failed) = (0u64, 0u64);
            while started.elapsed() < duration {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                let run_id = format!("{run_prefix}-{n}");
                let body = template.body(&run_id);
                let text = std::str::from_utf8(&body).context("report body is not UTF-8")?;
                let header = header(template.repo, run_id.clone());
                let report = NewReport {
                    tenant: &tenant,
                    header: &header,
                    test_count: template.tests,
                    body: text,
                    original: None,
                    topology: &topology,
                };
                let meta = RequestMeta {
                    request_id: run_id,
                    source_ip: Some("127.0.0.1".to_owned()),
                    user_agent: Some("anchorpipe-bench".to_owned()),
                    traceparent: None,
                };
                let begun = Instant::now();
                match store_report(&pool, &report, &meta).await {
                    Ok(_) => {
                        latency.saturating_record(micros(begun.elapsed()));
                        done += 1;
                    }
                    Err(_) => failed += 1,
                }
            }
            anyhow::Ok((latency, done, failed))
        }));
    }
    let mut total = Measured {
        done: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        latency: histogram()?,
    };
    for task in tasks {
        let (latency, done, failed) = task.await.context("PostgreSQL worker panicked")??;
        total.latency.add(&latency)?;
        total.done += done;
        total.failed += failed;
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// The relay's message properties (see `ingest/src/relay.rs`).
fn properties(ingestion_id: Uuid, tenant: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (key, value) in [
        ("tenant", tenant.to_owned()),
        ("request-id", ingestion_id.to_string()),
        ("traceparent", anchorpipe_ingest::store::new_traceparent()),
    ] {
        headers.insert(
            ShortString::from(key),
            AMQPValue::LongString(LongString::from(value)),
        );
    }
    BasicProperties::default()
        .with_message_id(ShortString::from(ingestion_id.to_string()))
        .with_content_type(ShortString::from("application/json"))
        .with_type(ShortString::from("test.run.received"))
        .with_app_id(ShortString::from("anchorpipe-bench"))
        .with_delivery_mode(2)
        .with_headers(headers)
}

/// Publish-with-confirms in relay-sized batches for `duration`; latency is per batch.
pub async fn rabbitmq(
    amqp_url: &str,
    tenant: &str,
    topology: &BrokerTopology,
    template: &Template,
    batch: usize,
    duration: Duration,
) -> anyhow::Result<Measured> {
    let connection = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ")?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut latency = histogram()?;
    let (mut done, mut failed) = (0u64, 0u64);
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < duration {
        let begun = Instant::now();
        let mut pending = Vec::with_capacity(batch);
        for _ in 0..batch {
            let id = Uuid::now_v7();
            let header = header(template.repo, format!("mq-{n}"));
            n += 1;
            let message = event_message(id, &header, template.tests, chrono::Utc::now());
            let payload = serde_json::to_vec(&message)?;
            let confirm = channel
                .basic_publish(
                    ShortString::from(topology.exchange.as_str()),
                    ShortString::from(topology.routing_key.as_str()),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &payload,
                    properties(id, tenant),
                )
                .await?;
            pending.push(confirm);
        }
        for confirm in futures_util::future::join_all(pending).await {
            match confirm {
                Ok(Confirmation::Ack(None)) => done += 1,
                _ => failed += 1,
            }
        }
        latency.saturating_record(micros(begun.elapsed()));
    }
    let elapsed = started.elapsed();
    let _ = connection.close(200, "bench done".into()).await;
    Ok(Measured {
        done,
        failed,
        elapsed,
        latency,
    })
}

/// Verify + parse + validate one report on one core, `iterations` times.
pub fn verify_and_validate(
    template: &Template,
    secret: &str,
    iterations: u64,
) -> anyhow::Result<Measured> {
    use anchorpipe_ingest::keys::{Key, KeySet};
    use anchorpipe_ingest::signature::{precheck, verify};

    let validator = ReportValidator::new(10_000);
    let keys = KeySet::new(vec![Key::from_secret("k1", secret)]);
    let mut config = crate::matrix::bench_config("cpu", template.repo);
    config.repositories = vec![template.repo];
    let body = template.body("cpu-alone");
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_str(&format!("Bearer {}", template.repo))?,
    );
    headers.insert(
        "x-fr-sig",
        http::HeaderValue::from_str(&anchorpipe_ingest::signature::sign_legacy(secret, &body))?,
    );
    let mut latency = histogram()?;
    let started = Instant::now();
    for _ in 0..iterations {
        let begun = Instant::now();
        let claim = precheck(&headers, &config, &keys, chrono::Utc::now().timestamp())
            .map_err(|f| anyhow::anyhow!("precheck: {}", f.reason()))?;
        verify(&claim, &keys, &body).map_err(|f| anyhow::anyhow!("verify: {}", f.reason()))?;
        let report = validator
            .parse(&body)
            .map_err(|r| anyhow::anyhow!("invalid report: {r:?}"))?;
        black_box(report.header());
        latency.saturating_record(micros(begun.elapsed()));
    }
    Ok(Measured {
        done: iterations,
        failed: 0,
        elapsed: started.elapsed(),
        latency,
    })
}
