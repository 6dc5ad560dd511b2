//! The scenario matrix: starts the real ingest binary twice (a full service with its
//! relay, and the verify-only floor), then for each report size and concurrency measures
//! the floor, the PostgreSQL limit and the end-to-end service back to back, so all three
//! see the same machine state; then a fixed-rate run at half the best end-to-end rate,
//! the RabbitMQ limit, and the 16 × 50 MiB memory run.
//!
//! Everything runs in its own database (`anchorpipe_bench`, recreated each run) and its
//! own tenant topology on the broker (deleted at the end).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anchorpipe_crds::config::{BrokerTopology, IngestConfig, Limit, RateLimitConfig};
use anyhow::Context as _;
use http_body_util::Full;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection as _, PgPool};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use uuid::Uuid;

use crate::limits::{self, Measured};
use crate::load::{self, HttpClient, Mode, Outcome, Stop, Target};
use crate::memory::{self, MemoryRun};
use crate::procstat::{self, CpuUse};
use crate::report::{Size, Template};

/// The benchmark's own database, dropped and recreated on every run.
const BENCH_DB: &str = "anchorpipe_bench";

/// The key every bench report is signed with (a throwaway, like the tests' secret).
pub const SECRET: &str = "whsec_YmVuY2htYXJrLXNlY3JldC1ub3QtZm9yLXByb2R1Y3Rpb24=";

/// Bytes of failure details on every tenth test: a short stack trace.
const FAILURE_BYTES: usize = 300;

/// What the matrix was asked to do.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ingest_bin: PathBuf,
    pub database_url: String,
    pub amqp_url: String,
    pub work_dir: PathBuf,
    pub duration: Duration,
    pub concurrency: Vec<usize>,
    pub sizes: Vec<Size>,
    pub relay_batch: usize,
    pub db_max_connections: u32,
    pub memory_run: bool,
    /// Record a whole-machine `perf` profile during one extra small-report point.
    pub perf: bool,
    /// Rounds of the relay scenario after the matrix (0: none) and its outbox rows.
    pub relay_rounds: usize,
    pub relay_rows: i64,
}

impl Settings {
    /// Settings for a scenario that runs one ingest service outside the matrix.
    pub fn single(
        ingest_bin: PathBuf,
        database_url: String,
        amqp_url: String,
        work_dir: PathBuf,
        duration: Duration,
        relay_batch: usize,
    ) -> Self {
        Self {
            ingest_bin,
            database_url,
            amqp_url,
            work_dir,
            duration,
            concurrency: Vec::new(),
            sizes: Vec::new(),
            relay_batch,
            db_max_connections: 16,
            memory_run: false,
            perf: false,
            relay_rounds: 0,
            relay_rows: 0,
        }
    }
}

/// Writes a one-repository tenant's config and key into `dir`, as a pod would find
/// them; returns the config and the repository.
pub fn write_tenant(dir: &Path, tenant: &str) -> anyhow::Result<(IngestConfig, Uuid)> {
    std::fs::create_dir_all(dir.join("keys"))?;
    let repo = Uuid::new_v4();
    let config = bench_config(tenant, repo);
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
    std::fs::write(dir.join("keys").join("k1"), SECRET)?;
    Ok((config, repo))
}

/// One (size, concurrency) point: the service and its two limits.
#[derive(Debug, Clone)]
pub struct Point {
    pub concurrency: usize,
    pub e2e: Outcome,
    pub e2e_cpu: CpuUse,
    pub e2e_peak_rss: Option<f64>,
    /// How long the relay took to drain the outbox after the load stopped.
    pub drain: Duration,
    pub floor: Outcome,
    pub floor_cpu: CpuUse,
    pub floor_peak_rss: Option<f64>,
    pub postgres: Measured,
    pub postgres_cpu: CpuUse,
}

/// The fixed-rate run at half the best end-to-end rate.
#[derive(Debug, Clone)]
pub struct RateRun {
    pub rate: f64,
    pub outcome: Outcome,
    pub cpu: CpuUse,
    pub peak_rss: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct SizeResults {
    pub size: Size,
    pub body_bytes: usize,
    /// Verify + parse + validate on one core, no I/O.
    pub alone: Measured,
    pub points: Vec<Point>,
    pub rate: Option<RateRun>,
}

impl SizeResults {
    pub fn best_e2e(&self) -> f64 {
        self.points
            .iter()
            .map(|p| p.e2e.ok_per_sec())
            .fold(0.0, f64::max)
    }
}

#[derive(Debug, Clone)]
pub struct Results {
    pub settings: Settings,
    pub started: chrono::DateTime<chrono::Utc>,
    pub finished: chrono::DateTime<chrono::Utc>,
    pub environment: Vec<(String, String)>,
    pub rabbitmq: Measured,
    pub rabbitmq_cpu: CpuUse,
    pub sizes: Vec<SizeResults>,
    pub memory: Option<MemoryRun>,
    pub idle_rss: Option<f64>,
    /// RSS of the service after the whole matrix, before the memory run.
    pub retained_rss: Option<f64>,
    /// `perf report` of the profiled point, when asked for and `perf` works here.
    pub perf: Option<String>,
    /// The relay scenario's rounds (empty when not run).
    pub relay: Vec<crate::relay::Round>,
}

/// The tenant config the bench serves: generous rate limits (the limiter is not what
/// is measured) and the documented default body and in-flight limits.
pub fn bench_config(tenant: &str, repo: Uuid) -> IngestConfig {
    let unlimited = Limit {
        requests_per_minute: 100_000_000,
        burst: 1_000_000,
    };
    IngestConfig {
        broker: BrokerTopology::for_tenant(tenant),
        tenant: tenant.to_owned(),
        repositories: vec![repo],
        signatures: Default::default(),
        rate_limit: RateLimitConfig {
            per_repository: unlimited,
            per_endpoint: unlimited,
        },
        limits: Default::default(),
        outbox: Default::default(),
        protection: Default::default(),
        store: Default::default(),
    }
}

/// A running ingest process.
pub struct Ingest {
    child: Child,
    pub pid: u32,
    pub base: String,
}

impl Ingest {
    pub(crate) async fn start(
        settings: &Settings,
        dir: &Path,
        name: &str,
        database_url: &str,
        verify_only: bool,
    ) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let mut command = Command::new(&settings.ingest_bin);
        command
            .arg("serve")
            .arg("--config")
            .arg(dir.join("config.json"))
            .arg("--keys-dir")
            .arg(dir.join("keys"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--relay-batch-size")
            .arg(settings.relay_batch.to_string())
            .arg("--db-max-connections")
            .arg(settings.db_max_connections.to_string())
            .env("DATABASE_URL", database_url)
            // One log line per request at `info` is production behaviour, but writing
            // it to a file here would measure the disk; warnings still show up.
            .env("RUST_LOG", "warn")
            .env_remove("AMQP_URL")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        if verify_only {
            command.arg("--bench-verify-only");
        } else {
            command.env("AMQP_URL", &settings.amqp_url);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", settings.ingest_bin.display()))?;
        let pid = child.id().context("ingest exited at once")?;
        Ok(Self {
            child,
            pid,
            base: format!("http://127.0.0.1:{port}"),
        })
    }

    pub(crate) async fn wait_ready(&mut self, client: &HttpClient) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url: http::Uri = format!("{}/readyz", self.base).parse()?;
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("ingest exited during start-up: {status}");
            }
            let request = hyper::Request::get(url.clone()).body(Full::default())?;
            if let Ok(response) = client.request(request).await
                && response.status() == 200
            {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "ingest never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn url(&self) -> anyhow::Result<http::Uri> {
        Ok(format!("{}/api/ingestion", self.base).parse()?)
    }

    pub(crate) async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let cut = url
        .rfind('/')
        .context("DATABASE_URL has no database part")?;
    Ok(format!("{}/{database}", &url[..cut]))
}

pub(crate) async fn fresh_database(settings: &Settings) -> anyhow::Result<String> {
    fresh_named_database(&settings.database_url, BENCH_DB).await
}

/// Drops `database` next to the one `database_url` names, if it exists.
pub(crate) async fn drop_database(database_url: &str, database: &str) -> anyhow::Result<()> {
    let mut admin = sqlx::PgConnection::connect(database_url).await?;
    // `database` is one of the bench's own constant names, never input.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    admin.close().await?;
    Ok(())
}

/// Drops and recreates `database` next to the one `database_url` names, migrated.
pub(crate) async fn fresh_named_database(
    database_url: &str,
    database: &str,
) -> anyhow::Result<String> {
    let mut admin = sqlx::PgConnection::connect(database_url)
        .await
        .context("connecting to PostgreSQL (is scripts/services.sh up?)")?;
    // `database` is one of the bench's own constant names, never input.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    let url = with_database(database_url, database)?;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await?;
    anchorpipe_ingest::MIGRATOR.run(&pool).await?;
    pool.close().await;
    Ok(url)
}

async fn broker_channel(amqp_url: &str) -> anyhow::Result<(lapin::Connection, lapin::Channel)> {
    let connection = lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ (is scripts/services.sh up?)")?;
    let channel = connection.create_channel().await?;
    Ok((connection, channel))
}

pub(crate) async fn declare(amqp_url: &str, topology: &BrokerTopology) -> anyhow::Result<()> {
    let (connection, channel) = broker_channel(amqp_url).await?;
    // A previous run that was interrupted may have left its queues; start empty.
    let _ = anchorpipe_crds::topology::delete(&channel, topology).await;
    let channel = connection.create_channel().await?;
    anchorpipe_crds::topology::declare(&channel, topology).await?;
    let _ = connection.close(200, "declared".into()).await;
    Ok(())
}

pub(crate) async fn purge(amqp_url: &str, topology: &BrokerTopology) -> anyhow::Result<()> {
    let (connection, channel) = broker_channel(amqp_url).await?;
    channel
        .queue_purge(
            topology.queue.as_str().into(),
            lapin::options::QueuePurgeOptions::default(),
        )
        .await?;
    let _ = connection.close(200, "purged".into()).await;
    Ok(())
}

pub(crate) async fn delete_topology(
    amqp_url: &str,
    topology: &BrokerTopology,
) -> anyhow::Result<()> {
    let (connection, channel) = broker_channel(amqp_url).await?;
    anchorpipe_crds::topology::delete(&channel, topology).await?;
    let _ = connection.close(200, "deleted".into()).await;
    Ok(())
}

/// Waits until the relay has published every row of `tenant`; returns how long it took.
async fn drain(pool: &PgPool, tenant: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let unsent: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE tenant = $1 AND sent_at IS NULL")
                .bind(tenant)
                .fetch_one(pool)
                .await?;
        if unsent == 0 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(120) {
            anyhow::bail!("the relay left {unsent} rows unsent for 2 minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn progress(line: &str) {
    println!("[bench {}] {line}", chrono::Local::now().format("%H:%M:%S"));
}

/// Measures `work` with the CPU split and the ingest peak RSS around it.
async fn measured<T, F>(
    pids: &[u32],
    rss_pid: u32,
    work: F,
) -> anyhow::Result<(T, CpuUse, Option<f64>)>
where
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    procstat::reset_peak(rss_pid);
    let before = procstat::snapshot(pids);
    let started = Instant::now();
    let value = work.await?;
    let cpu = procstat::snapshot(pids).since(&before, started.elapsed().as_secs_f64());
    Ok((value, cpu, procstat::peak_rss_mib(rss_pid)))
}

fn environment(settings: &Settings) -> Vec<(String, String)> {
    let command = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned())
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_owned())
        })
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or_else(
            || "unknown".to_owned(),
            |kib| format!("{:.1} GiB", kib as f64 / 1048576.0),
        );
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    vec![
        ("CPU".into(), format!("{cpu} × {cores} cores")),
        ("Memory".into(), memory),
        (
            "Kernel".into(),
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
        ),
        ("rustc".into(), command("rustc", &["--version"])),
        (
            "Commit".into(),
            command("git", &["rev-parse", "--short", "HEAD"]),
        ),
        (
            "RabbitMQ".into(),
            command("rabbitmqctl", &["-q", "version"]),
        ),
        (
            "Ingest binary".into(),
            format!(
                "{} (release build)",
                settings.ingest_bin.file_name().map_or_else(
                    || settings.ingest_bin.display().to_string(),
                    |name| { name.to_string_lossy().into_owned() }
                )
            ),
        ),
        ("Load average at start".into(), procstat::loadavg()),
    ]
}

pub async fn run(settings: Settings) -> anyhow::Result<Results> {
    let started = chrono::Utc::now();
    let mut env = environment(&settings);
    progress(&format!(
        "load average {} on {} cores",
        procstat::loadavg(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    let dir = settings.work_dir.clone();
    std::fs::create_dir_all(dir.join("keys"))?;
    let tenant = "bench";
    let pg_tenant = "benchpg";
    let repo = Uuid::new_v4();
    let config = bench_config(tenant, repo);
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
    std::fs::write(dir.join("keys").join("k1"), SECRET)?;

    progress("fresh database anchorpipe_bench, migrations, broker topology");
    let database_url = fresh_database(&settings).await?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&database_url)
        .await?;
    let pg_version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&pool)
        .await?;
    env.insert(5, ("PostgreSQL".into(), pg_version));
    declare(&settings.amqp_url, &config.broker).await?;

    let client = load::client(512);
    let mut service = Ingest::start(&settings, &dir, "ingest", &database_url, false).await?;
    let mut floor = Ingest::start(&settings, &dir, "floor", &database_url, true).await?;
    service.wait_ready(&client).await?;
    floor.wait_ready(&client).await?;
    let pids = [service.pid, floor.pid];
    let idle_rss = procstat::rss_mib(service.pid);
    progress(&format!(
        "ingest pid {} and verify-only floor pid {} ready; idle RSS {:.1} MiB",
        service.pid,
        floor.pid,
        idle_rss.unwrap_or(0.0)
    ));

    // Warm both servers (connections, pools, allocator) before anything is measured.
    for server in [&service, &floor] {
        let target = Target {
            url: server.url()?,
            secret: Arc::from(SECRET),
            template: Arc::new(Template::new(repo, 10, FAILURE_BYTES)),
            run_prefix: format!("warm-{}", server.pid),
        };
        load::run(
            &client,
            &target,
            Mode::Concurrency(8),
            Stop::Duration(Duration::from_secs(1)),
        )
        .await?;
    }
    drain(&pool, tenant).await?;

    let small = Template::new(repo, Size::Small.tests(), FAILURE_BYTES);
    progress(&format!(
        "RabbitMQ limit: publish-with-confirms, {} in flight, {:?}",
        settings.relay_batch, settings.duration
    ));
    let (rabbitmq, rabbitmq_cpu, _) = measured(
        &pids,
        service.pid,
        limits::rabbitmq(
            &settings.amqp_url,
            tenant,
            &config.broker,
            &small,
            settings.relay_batch,
            settings.duration,
        ),
    )
    .await?;
    progress(&format!(
        "  RabbitMQ: {:.0} confirmed msg/s ({} nacked)",
        rabbitmq.per_sec(),
        rabbitmq.failed
    ));
    purge(&settings.amqp_url, &config.broker).await?;

    let mut sizes = Vec::new();
    let mut perf = None;
    for &size in &settings.sizes {
        let template = Arc::new(Template::new(repo, size.tests(), FAILURE_BYTES));
        let body_bytes = template.len() + 12;
        let iterations = match size {
            Size::Small => 2000,
            Size::Medium => 200,
            Size::Large => 30,
        };
        let alone = {
            let template = Arc::clone(&template);
            tokio::task::spawn_blocking(move || {
                limits::verify_and_validate(&template, SECRET, iterations)
            })
            .await??
        };
        progress(&format!(
            "{}: {} tests, {} bytes; verify+validate alone p50 {:.3} ms",
            size.name(),
            size.tests(),
            body_bytes,
            alone.ms(0.5)
        ));
        let mut points = Vec::new();
        for &concurrency in &settings.concurrency {
            let label = format!("{}-c{concurrency}", size.name());
            let stop = Stop::Duration(settings.duration);
            let mode = Mode::Concurrency(concurrency);
            let floor_target = Target {
                url: floor.url()?,
                secret: Arc::from(SECRET),
                template: Arc::clone(&template),
                run_prefix: format!("floor-{label}"),
            };
            let (floor_out, floor_cpu, floor_peak) = measured(
                &pids,
                floor.pid,
                load::run(&client, &floor_target, mode, stop),
            )
            .await?;
            let pg_pool = limits::pg_pool(&database_url, concurrency).await?;
            let (postgres, postgres_cpu, _) = measured(
                &pids,
                service.pid,
                limits::postgres(
                    &pg_pool,
                    pg_tenant,
                    &config.broker,
                    &template,
                    concurrency,
                    settings.duration,
                    &format!("pg-{label}"),
                ),
            )
            .await?;
            pg_pool.close().await;
            let e2e_target = Target {
                url: service.url()?,
                secret: Arc::from(SECRET),
                template: Arc::clone(&template),
                run_prefix: format!("e2e-{label}"),
            };
            let (e2e, e2e_cpu, e2e_peak) = measured(
                &pids,
                service.pid,
                load::run(&client, &e2e_target, mode, stop),
            )
            .await?;
            let drained = drain(&pool, tenant).await?;
            progress(&format!(
                "  {label}: e2e {:.0}/s p99 {:.1} ms [{}] | floor {:.0}/s | PostgreSQL {:.0} tx/s | relay drained in {:.1} s | peak RSS {:.0} MiB | cores: {} | postgres e2e: {} | postgres limit: {}",
                e2e.ok_per_sec(),
                e2e.ms(0.99),
                e2e.status_summary(),
                floor_out.ok_per_sec(),
                postgres.per_sec(),
                drained.as_secs_f64(),
                e2e_peak.unwrap_or(0.0),
                e2e_cpu.summary(),
                e2e_cpu.postgres_summary(),
                postgres_cpu.postgres_summary(),
            ));
            points.push(Point {
                concurrency,
                e2e,
                e2e_cpu,
                e2e_peak_rss: e2e_peak,
                drain: drained,
                floor: floor_out,
                floor_cpu,
                floor_peak_rss: floor_peak,
                postgres,
                postgres_cpu,
            });
        }
        let mut results = SizeResults {
            size,
            body_bytes,
            alone,
            points,
            rate: None,
        };
        let rate = results.best_e2e() / 2.0;
        if rate > 0.0 {
            let target = Target {
                url: service.url()?,
                secret: Arc::from(SECRET),
                template: Arc::clone(&template),
                run_prefix: format!("rate-{}", size.name()),
            };
            let (outcome, cpu, peak) = measured(
                &pids,
                service.pid,
                load::run(
                    &client,
                    &target,
                    Mode::Rate(rate),
                    Stop::Duration(settings.duration),
                ),
            )
            .await?;
            drain(&pool, tenant).await?;
            progress(&format!(
                "  {}: fixed rate {rate:.0}/s → p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms [{}]",
                size.name(),
                outcome.ms(0.5),
                outcome.ms(0.99),
                outcome.ms(0.999),
                outcome.status_summary()
            ));
            results.rate = Some(RateRun {
                rate,
                outcome,
                cpu,
                peak_rss: peak,
            });
        }
        if settings.perf && size == Size::Small && perf.is_none() {
            let target = Target {
                url: service.url()?,
                secret: Arc::from(SECRET),
                template: Arc::clone(&template),
                run_prefix: "perf".to_owned(),
            };
            perf = profile(&client, &target, &dir, settings.duration).await;
            drain(&pool, tenant).await?;
        }
        purge(&settings.amqp_url, &config.broker).await?;
        sizes.push(results);
    }

    // What the long-running service kept resident after the whole matrix.
    let retained_rss = procstat::rss_mib(service.pid);
    let memory = if settings.memory_run {
        // A fresh process, so the memory run starts from idle rather than from whatever
        // the matrix left resident (reported separately as `retained_rss`).
        service.stop().await;
        service = Ingest::start(&settings, &dir, "ingest-memory", &database_url, false).await?;
        service.wait_ready(&client).await?;
        progress(&format!(
            "memory: RSS retained after the matrix {:.0} MiB; fresh ingest pid {}; 4 then 16 concurrent ~50 MiB uploads",
            retained_rss.unwrap_or(0.0),
            service.pid
        ));
        let run = memory::run(&client, &service, repo, &config).await?;
        progress(&format!(
            "  memory: [{}] peak RSS {:.0} MiB (cap {:.0} MiB), slowest answer {:.1} s",
            run.outcome.status_summary(),
            run.peak_rss.unwrap_or(0.0),
            run.cap_mib,
            run.outcome.ms(1.0) / 1000.0
        ));
        let _ = drain(&pool, tenant).await;
        Some(run)
    } else {
        None
    };

    service.stop().await;
    floor.stop().await;
    pool.close().await;
    delete_topology(&settings.amqp_url, &config.broker).await?;
    let relay = if settings.relay_rounds > 0 {
        progress(&format!(
            "relay: {} rounds of publish-with-confirms then the relay draining {} rows",
            settings.relay_rounds, settings.relay_rows
        ));
        crate::relay::run(crate::relay::Settings {
            ingest_bin: settings.ingest_bin.clone(),
            database_url: settings.database_url.clone(),
            amqp_url: settings.amqp_url.clone(),
            work_dir: settings.work_dir.join("relay"),
            duration: settings.duration,
            rows: settings.relay_rows,
            rounds: settings.relay_rounds,
            relay_batch: settings.relay_batch,
        })
        .await?
    } else {
        Vec::new()
    };
    Ok(Results {
        settings,
        started,
        finished: chrono::Utc::now(),
        environment: env,
        rabbitmq,
        rabbitmq_cpu,
        sizes,
        memory,
        idle_rss,
        retained_rss,
        perf,
        relay,
    })
}

/// Profiles the whole machine with `perf` while small reports are sent at concurrency
/// 32; returns the report (by process, then the hottest symbols), or `None` when `perf`
/// is missing or not permitted here.
async fn profile(
    client: &HttpClient,
    target: &Target,
    dir: &Path,
    duration: Duration,
) -> Option<String> {
    let data = dir.join("perf.data");
    progress("profiling small reports at concurrency 32 with perf (whole machine)");
    let recorder = Command::new("perf")
        .args(["record", "-a", "-F", "499", "-o"])
        .arg(&data)
        .args(["--", "sleep"])
        .arg(format!("{}", duration.as_secs_f64()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let load = load::run(
        client,
        target,
        Mode::Concurrency(32),
        Stop::Duration(duration),
    );
    let (recorded, outcome) = tokio::join!(recorder.wait_with_output(), load);
    if !recorded.ok()?.status.success() {
        progress("  perf record failed; no profile");
        return None;
    }
    let report = |sort: &str, limit: &str| {
        let data = data.clone();
        let (sort, limit) = (sort.to_owned(), limit.to_owned());
        async move {
            let output = Command::new("perf")
                .arg("report")
                .arg("-i")
                .arg(&data)
                .args([
                    "--stdio",
                    "--no-children",
                    "--sort",
                    &sort,
                    "--percent-limit",
                    &limit,
                ])
                .stderr(Stdio::null())
                .output()
                .await
                .ok()?;
            let text = String::from_utf8_lossy(&output.stdout);
            Some(
                text.lines()
                    .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                    .take(30)
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        }
    };
    let by_process = report("comm,dso", "2").await?;
    let by_symbol = report("comm,dso,sym", "0.8").await?;
    let summary = outcome.map_or_else(
        |e| format!("load failed: {e}"),
        |o| {
            format!(
                "{:.0} ok/s, p99 {:.1} ms during the profile",
                o.ok_per_sec(),
                o.ms(0.99)
            )
        },
    );
    Some(format!(
        "{summary}\n\nby process (comm, dso):\n{by_process}\n\nhottest symbols:\n{by_symbol}"
    ))
}
