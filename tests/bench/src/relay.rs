//! The relay against the broker: how fast the real ingest binary drains a full outbox,
//! next to plain publish-with-confirms of the same message in the same run.
//!
//! Each round measures both, back to back, so they see the same machine state:
//!
//! 1. the RabbitMQ limit ([`limits::rabbitmq`]: relay-sized batches, every message of a
//!    batch in flight before the confirms are awaited);
//! 2. the relay: `rows` outbox rows are written while no relay runs, then the ingest
//!    binary starts and the unsent count is sampled until it reaches zero. The rate is
//!    taken from the first sample that shows progress to the last, so process start-up
//!    and the broker connection are not counted against the relay.
//!
//! Everything runs in its own database (`anchorpipe_bench_relay`, dropped at the end) and
//! its own tenant topology on the broker (deleted at the end).

use std::path::PathBuf;
use std::time::Duration;

use anchorpipe_ingest::report::ReportHeader;
use anchorpipe_ingest::store::{NewReport, RequestMeta, store_report};
use anyhow::Context as _;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::time::Instant;

use crate::limits;
use crate::matrix::{self, Ingest, progress};
use crate::report::{COMMIT_SHA, Size, Template};

/// The scenario's own database, so it never disturbs a matrix run's.
const RELAY_DB: &str = "anchorpipe_bench_relay";

/// How often the unsent count is sampled while the relay drains: often enough for a
/// small error over a drain of seconds, rarely enough not to load PostgreSQL.
const SAMPLE_EVERY: Duration = Duration::from_millis(25);

#[derive(Debug, Clone)]
pub struct Settings {
    pub ingest_bin: PathBuf,
    pub database_url: String,
    pub amqp_url: String,
    pub work_dir: PathBuf,
    /// Seconds of each publish-with-confirms measurement.
    pub duration: Duration,
    /// Outbox rows the relay drains per round.
    pub rows: i64,
    pub rounds: usize,
    pub relay_batch: usize,
}

/// One round: the broker's pace and the relay's, in messages per second.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    pub rabbitmq: f64,
    pub relay: f64,
}

impl Round {
    pub fn ratio(&self) -> f64 {
        self.relay / self.rabbitmq.max(1e-9)
    }
}

/// Writes `rows` due outbox rows carrying the relay's small-report message: one report
/// stored the way the service stores it, then cloned in bulk with fresh ids.
async fn fill(pool: &PgPool, settings: &Fill<'_>, rows: i64, round: usize) -> anyhow::Result<()> {
    let run_id = format!("relay-template-{round}");
    let body = settings.template.body(&run_id);
    let text = std::str::from_utf8(&body).context("report body is not UTF-8")?;
    let header = ReportHeader {
        repo_id: settings.template.repo,
        commit_sha: COMMIT_SHA.to_owned(),
        run_id: run_id.clone(),
        framework: "junit".to_owned(),
        branch: Some("main".to_owned()),
        pull_request: None,
        environment: serde_json::value::RawValue::from_string(r#"{"ci":"bench"}"#.to_owned()).ok(),
        metadata: None,
        idempotency_key: None,
    };
    let report = NewReport {
        tenant: settings.tenant,
        header: &header,
        test_count: settings.template.tests,
        body: text,
        original: None,
        topology: settings.topology,
    };
    let meta = RequestMeta {
        request_id: run_id.clone(),
        source_ip: None,
        user_agent: Some("anchorpipe-bench".to_owned()),
        traceparent: None,
    };
    store_report(pool, &report, &meta).await?;
    // Clones of the template ingestion and its outbox row, each with its own id in the
    // message, so the broker sees the same bytes per message as from the service.
    sqlx::query(
        "WITH template AS (
             SELECT i.*, o.message, o.exchange, o.routing_key, o.traceparent
             FROM ingestions i JOIN outbox o ON o.ingestion_id = i.id
             WHERE i.tenant = $1 AND i.run_id = $2),
         clones AS (
             INSERT INTO ingestions (id, tenant, repo_id, commit_sha, run_id, framework,
                                     branch, test_count, payload, response, request_id)
             SELECT gen_random_uuid(), tenant, repo_id, commit_sha, run_id || '-' || n,
                    framework, branch, test_count, payload, response, request_id || '-' || n
             FROM template, generate_series(1, $3) AS n
             RETURNING id, run_id, request_id)
         INSERT INTO outbox (ingestion_id, tenant, exchange, routing_key, message,
                             request_id, traceparent)
         SELECT c.id, $1, t.exchange, t.routing_key,
                jsonb_set(jsonb_set(jsonb_set(t.message,
                    '{ingestionId}', to_jsonb(c.id::text)),
                    '{payload,ingestionId}', to_jsonb(c.id::text)),
                    '{payload,runId}', to_jsonb(c.run_id)),
                c.request_id, t.traceparent
         FROM clones c, template t",
    )
    .bind(settings.tenant)
    .bind(&run_id)
    .bind(rows - 1)
    .execute(pool)
    .await?;
    Ok(())
}

struct Fill<'a> {
    tenant: &'a str,
    topology: &'a anchorpipe_crds::config::BrokerTopology,
    template: &'a Template,
}

async fn unsent(pool: &PgPool, tenant: &str) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE tenant = $1 AND sent_at IS NULL")
            .bind(tenant)
            .fetch_one(pool)
            .await?,
    )
}

/// Starts the service on a full outbox and returns the relay's rate while it drains.
async fn drain_rate(
    matrix_settings: &matrix::Settings,
    dir: &std::path::Path,
    database_url: &str,
    pool: &PgPool,
    tenant: &str,
) -> anyhow::Result<f64> {
    let full = unsent(pool, tenant).await?;
    let service = Ingest::start(matrix_settings, dir, "ingest-relay", database_url, false).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut first: Option<(Instant, i64)> = None;
    let finished = loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the relay did not drain in 5 min"
        );
        let left = unsent(pool, tenant).await?;
        let now = Instant::now();
        if first.is_none() && left < full {
            first = Some((now, left));
        }
        if left == 0 {
            break now;
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    };
    service.stop().await;
    let (started, left) = first.context("the relay made no progress")?;
    Ok(left as f64 / finished.duration_since(started).as_secs_f64().max(1e-3))
}

pub async fn run(settings: Settings) -> anyhow::Result<Vec<Round>> {
    anyhow::ensure!(settings.rows > 1, "--rows must be more than 1");
    let dir = settings.work_dir.clone();
    let tenant = "benchrelay";
    let (config, repo) = matrix::write_tenant(&dir, tenant)?;
    let matrix_settings = matrix::Settings::single(
        settings.ingest_bin.clone(),
        settings.database_url.clone(),
        settings.amqp_url.clone(),
        dir.clone(),
        settings.duration,
        settings.relay_batch,
    );
    let database_url = matrix::fresh_named_database(&settings.database_url, RELAY_DB).await?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&database_url)
        .await?;
    matrix::declare(&settings.amqp_url, &config.broker).await?;
    let template = Template::new(repo, Size::Small.tests(), 300);
    let fill_settings = Fill {
        tenant,
        topology: &config.broker,
        template: &template,
    };

    let mut rounds = Vec::new();
    for round in 0..settings.rounds {
        let mq = limits::rabbitmq(
            &settings.amqp_url,
            tenant,
            &config.broker,
            &template,
            settings.relay_batch,
            settings.duration,
        )
        .await?;
        matrix::purge(&settings.amqp_url, &config.broker).await?;
        fill(&pool, &fill_settings, settings.rows, round).await?;
        // The fill's dead tuples and fresh statistics matter to the claim query.
        sqlx::query("VACUUM ANALYZE outbox").execute(&pool).await?;
        let relay = drain_rate(&matrix_settings, &dir, &database_url, &pool, tenant).await?;
        matrix::purge(&settings.amqp_url, &config.broker).await?;
        // Every round starts from the same table: no sent rows left from the last one.
        sqlx::query("DELETE FROM outbox WHERE tenant = $1 AND sent_at IS NOT NULL")
            .bind(tenant)
            .execute(&pool)
            .await?;
        let measured = Round {
            rabbitmq: mq.per_sec(),
            relay,
        };
        progress(&format!(
            "round {}: publish-with-confirms {:.0} msg/s ({} nacked), relay {:.0} msg/s over {} rows → {:.2}",
            round + 1,
            measured.rabbitmq,
            mq.failed,
            measured.relay,
            settings.rows,
            measured.ratio()
        ));
        rounds.push(measured);
    }
    let _ = matrix::delete_topology(&settings.amqp_url, &config.broker).await;
    pool.close().await;
    // Every round leaves its ingestions behind: hundreds of MiB nobody reads again.
    matrix::drop_database(&settings.database_url, RELAY_DB).await?;

    let mut ratios: Vec<f64> = rounds.iter().map(Round::ratio).collect();
    ratios.sort_by(f64::total_cmp);
    if let Some(median) = ratios.get(ratios.len() / 2) {
        let verdict = if *median >= 0.8 { "met" } else { "missed" };
        println!(
            "relay ÷ publish-with-confirms, median of {} rounds: {median:.2} (target ≥ 0.80: {verdict})",
            ratios.len()
        );
    }
    Ok(rounds)
}
