//! What storing one report costs PostgreSQL, write path by write path (issue 13 item 3).
//!
//! One connection, one report (or one batch) at a time, so every figure belongs to the
//! work measured: the CPU of that connection's backend (`utime`/`stime` from
//! `/proc/<pg_backend_pid()>/stat`), the CPU of PostgreSQL's other processes of this
//! database and of the cluster's background processes (checkpointer, WAL writer,
//! background writer, autovacuum), the WAL written (`pg_current_wal_lsn()` before and
//! after; the cluster's WAL, so another user's writes would show), and the wall time.
//!
//! The paths:
//!
//! - `store_report`: one report per transaction, what the PostgreSQL limit of the matrix
//!   drives;
//! - `store_batch ×N`: the service's group commit with N reports per transaction;
//! - single-column inserts into a scratch table, to take the transaction apart: the
//!   body as one `text` parameter or as a one-element `text[]` unnested, into `text` with
//!   lz4 or pglz, `jsonb`, `bytea` (sent as bytes), or stored uncompressed.
//!
//! Runs in its own database (`anchorpipe_bench_pgcost`, dropped at the end).

use std::collections::BTreeMap;
use std::time::Duration;

use anchorpipe_crds::config::BrokerTopology;
use anchorpipe_ingest::store::{NewReport, RequestMeta, Submission, store_batch, store_report};
use anyhow::Context as _;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};
use tokio::time::Instant;
use uuid::Uuid;

use crate::matrix::{self, progress};
use crate::report::{Size, Template};
use crate::{limits, procstat};

const PGCOST_DB: &str = "anchorpipe_bench_pgcost";

/// How long the other PostgreSQL processes are still watched after a path's last commit.
const SETTLE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: String,
    pub size: Size,
    /// Reports per path.
    pub reports: usize,
    /// Reports per transaction of the batched path.
    pub batch: usize,
}

/// The cost of one path, per report.
#[derive(Debug, Clone, Default)]
pub struct Cost {
    pub backend_user_ms: f64,
    pub backend_sys_ms: f64,
    /// Other PostgreSQL processes, by role (`checkpointer`, `walwriter`, …).
    pub others_ms: BTreeMap<String, f64>,
    pub wal_bytes: f64,
    pub wall_ms: f64,
}

impl Cost {
    fn backend_ms(&self) -> f64 {
        self.backend_user_ms + self.backend_sys_ms
    }

    fn line(&self, name: &str) -> String {
        let others: f64 = self.others_ms.values().sum();
        let split = self
            .others_ms
            .iter()
            .filter(|(_, ms)| **ms >= 0.05)
            .map(|(role, ms)| format!("{role} {ms:.2}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "| {name} | {:.2} | {:.2} / {:.2} | {:.2} ({}) | {:.0} | {:.2} |",
            self.backend_ms() + others,
            self.backend_user_ms,
            self.backend_sys_ms,
            others,
            if split.is_empty() { "-" } else { &split },
            self.wal_bytes / 1024.0,
            self.wall_ms,
        )
    }
}

/// CPU seconds (user, system) of one process.
fn process_cpu(pid: u32) -> anyhow::Result<(f64, f64)> {
    procstat::process_cpu(pid).with_context(|| format!("reading /proc/{pid}/stat"))
}

async fn wal_lsn(pool: &PgPool) -> anyhow::Result<f64> {
    let lsn: f64 = sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::float8")
        .fetch_one(pool)
        .await?;
    Ok(lsn)
}

/// Measures `work`, which stores `reports` reports through `pool`'s only connection.
async fn measure<F, Fut>(pool: &PgPool, reports: usize, work: F) -> anyhow::Result<Cost>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(pool)
        .await?;
    let backend = u32::try_from(backend).context("backend pid")?;
    // Let the previous path's checkpoint and writer work settle a little.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (user0, sys0) = process_cpu(backend)?;
    let others0 = procstat::postgres_roles(&[backend], PGCOST_DB);
    let wal0 = wal_lsn(pool).await?;
    let started = Instant::now();
    work().await?;
    let wall = started.elapsed();
    let wal1 = wal_lsn(pool).await?;
    let (user1, sys1) = process_cpu(backend)?;
    // What the background processes do for these writes (writing them out, vacuuming)
    // partly comes after the last commit.
    tokio::time::sleep(SETTLE).await;
    let others1 = procstat::postgres_roles(&[backend], PGCOST_DB);
    let n = reports.max(1) as f64;
    let mut others_ms = BTreeMap::new();
    for (role, seconds) in procstat::roles_since(&others1, &others0) {
        others_ms.insert(role, seconds * 1000.0 / n);
    }
    Ok(Cost {
        backend_user_ms: (user1 - user0) * 1000.0 / n,
        backend_sys_ms: (sys1 - sys0) * 1000.0 / n,
        others_ms,
        wal_bytes: (wal1 - wal0) / n,
        wall_ms: wall.as_secs_f64() * 1000.0 / n,
    })
}

fn submission(template: &Template, run_id: &str) -> anyhow::Result<Submission> {
    let body = String::from_utf8(template.body(run_id).to_vec()).context("body is not UTF-8")?;
    Ok(Submission {
        header: limits::header(template.repo, run_id.to_owned()),
        test_count: template.tests,
        body,
        original: None,
        meta: RequestMeta {
            request_id: run_id.to_owned(),
            source_ip: Some("127.0.0.1".to_owned()),
            user_agent: Some("anchorpipe-bench".to_owned()),
            traceparent: None,
        },
    })
}

/// Scratch tables for the single-column inserts: each column type and compression.
const SCRATCH: &[(&str, &str, &str)] = &[
    // (table, column type, how it is stored)
    ("text_lz4", "text", "SET COMPRESSION lz4"),
    ("text_pglz", "text", "SET COMPRESSION pglz"),
    ("text_uncompressed", "text", "SET STORAGE EXTERNAL"),
    ("jsonb_pglz", "jsonb", "SET COMPRESSION pglz"),
    ("jsonb_lz4", "jsonb", "SET COMPRESSION lz4"),
    ("bytea_lz4", "bytea", "SET COMPRESSION lz4"),
];

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let url = matrix::fresh_named_database(&settings.database_url, PGCOST_DB).await?;
    let result = measure_all(&url, &settings).await;
    matrix::drop_database(&settings.database_url, PGCOST_DB).await?;
    result
}

async fn measure_all(url: &str, settings: &Settings) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .connect(url)
        .await?;
    let tenant = "pgcost";
    let topology = BrokerTopology::for_tenant(tenant);
    let template = Template::new(Uuid::new_v4(), settings.size.tests(), 300);
    let body_len = template.len();
    progress(&format!(
        "pgcost: {} reports of {} bytes per path, one connection, load average {}",
        settings.reports,
        body_len,
        procstat::loadavg()
    ));
    let n = settings.reports;
    let mut rows = Vec::new();

    // Warm the connection's statement cache and the tables.
    for i in 0..2 {
        let s = submission(&template, &format!("warm-{i}"))?;
        store_report(&pool, &s.as_new_report(tenant, &topology), &s.meta).await?;
        store_batch(
            &pool,
            tenant,
            &topology,
            &[&submission(&template, &format!("warmb-{i}"))?],
        )
        .await?;
    }

    let reports: Vec<Submission> = (0..n)
        .map(|i| submission(&template, &format!("one-{i}")))
        .collect::<anyhow::Result<_>>()?;
    let cost = measure(&pool, n, || async {
        for s in &reports {
            let report: NewReport<'_> = s.as_new_report(tenant, &topology);
            store_report(&pool, &report, &s.meta).await?;
        }
        Ok(())
    })
    .await?;
    progress(&cost.line("store_report"));
    rows.push((
        "`store_report` (the PostgreSQL limit's path)".to_owned(),
        cost,
    ));

    for batch in [1, settings.batch.max(1)] {
        let reports: Vec<Submission> = (0..n)
            .map(|i| submission(&template, &format!("batch{batch}-{i}")))
            .collect::<anyhow::Result<_>>()?;
        let cost = measure(&pool, n, || async {
            for chunk in reports.chunks(batch) {
                let refs: Vec<&Submission> = chunk.iter().collect();
                store_batch(&pool, tenant, &topology, &refs).await?;
            }
            Ok(())
        })
        .await?;
        progress(&cost.line(&format!("store_batch x{batch}")));
        rows.push((format!("`store_batch` ×{batch} (the service's path)"), cost));
    }

    // The stored sizes, for the record.
    let (payload_raw, payload_stored, toast_bytes, count): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT COALESCE(sum(octet_length(payload)), 0)::int8,
                COALESCE(sum(pg_column_size(payload)), 0)::int8,
                pg_total_relation_size((SELECT reltoastrelid FROM pg_class
                                        WHERE relname = 'ingestions'))::int8,
                count(*)
         FROM ingestions",
    )
    .fetch_one(&pool)
    .await?;

    // The transaction taken apart: one column, one row per statement.
    for (table, column, storage) in SCRATCH {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE scratch_{table} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v {column})"
        )))
        .execute(&pool)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE scratch_{table} ALTER COLUMN v {storage}"
        )))
        .execute(&pool)
        .await?;
    }
    let bodies: Vec<String> = (0..n)
        .map(|i| String::from_utf8_lossy(&template.body(&format!("scratch-{i}"))).into_owned())
        .collect();
    for (table, cast, _) in SCRATCH {
        let cost = if *cast == "bytea" {
            // Sent as bytes: no text input function, no encoding check.
            let direct = format!("INSERT INTO scratch_{table} (v) VALUES ($1)");
            measure(&pool, n, || async {
                for body in &bodies {
                    insert_one(&pool, &direct, body.as_bytes()).await?;
                }
                Ok(())
            })
            .await?
        } else {
            let direct = format!("INSERT INTO scratch_{table} (v) VALUES ($1::text::{cast})");
            measure(&pool, n, || async {
                for body in &bodies {
                    insert_one(&pool, &direct, body.as_str()).await?;
                }
                Ok(())
            })
            .await?
        };
        progress(&cost.line(table));
        rows.push((format!("one column `{table}`, `$1::text`"), cost));
    }
    let unnest = "INSERT INTO scratch_text_lz4 (v) SELECT u.v FROM UNNEST($1::text[]) AS u(v)";
    let cost = measure(&pool, n, || async {
        for body in &bodies {
            insert_one(&pool, unnest, vec![body.as_str()]).await?;
        }
        Ok(())
    })
    .await?;
    rows.push((
        "one column `text_lz4`, `UNNEST($1::text[])`".to_owned(),
        cost,
    ));

    println!();
    println!(
        "PostgreSQL cost per report, {} ({} bytes), {n} reports per path, one connection",
        settings.size.name(),
        body_len
    );
    println!();
    println!(
        "| path | PostgreSQL CPU ms, all | backend user / sys ms | other PostgreSQL processes ms | WAL KiB | wall ms |"
    );
    println!("|---|---:|---:|---|---:|---:|");
    for (name, cost) in &rows {
        println!("{}", cost.line(name));
    }
    println!();
    println!(
        "ingestions: {count} rows, payload {:.0} bytes each as sent, {:.0} bytes each as stored (pg_column_size), TOAST relation {:.1} MiB",
        payload_raw as f64 / count.max(1) as f64,
        payload_stored as f64 / count.max(1) as f64,
        toast_bytes as f64 / 1048576.0,
    );
    pool.close().await;
    Ok(())
}

async fn insert_one<'q, T>(pool: &PgPool, sql: &'q str, value: T) -> anyhow::Result<()>
where
    T: 'q + sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + Send,
{
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(value)
        .execute(pool)
        .await?;
    Ok(())
}
