//! `anchorpipe-bench`: the load generator and benchmark matrix of issue 6.
//!
//! - `run`: the whole matrix against freshly started ingest processes; writes
//!   `RESULTS.md` and `throughput.png` (what `scripts/bench.sh` calls).
//! - `load`: one load against an ingest service that is already running.
//! - `parser`: the report parser alone, new against previous (time, peak heap).
//! - `attack`: legitimate traffic at a fixed rate, alone and beside each attack of
//!   issue 10; writes `ATTACK.md` (linked from `RESULTS.md`).
//! - `relay`: the relay draining a full outbox against plain publish-with-confirms,
//!   alternating, in one run.
//! - `pgcost`: what storing one report costs PostgreSQL, path by path (CPU of the
//!   backend and of the other PostgreSQL processes, WAL, wall time).
//! - `operator`: many `IngestionEndpoint`s applied at once to the test control plane,
//!   the operator's time to Ready against the API server alone; writes `OPERATOR.md`.

mod attack;
mod chart;
mod limits;
mod load;
mod matrix;
mod memory;
mod operator;
mod parser;
mod pgcost;
mod procstat;
mod relay;
mod report;
mod results;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use uuid::Uuid;

use crate::report::Size;

#[derive(Debug, Parser)]
#[command(
    name = "anchorpipe-bench",
    about = "Benchmark of the anchorpipe ingest service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the scenario matrix and write RESULTS.md and throughput.png.
    Run(RunArgs),
    /// Send one load to a running ingest service and print the figures.
    Load(LoadArgs),
    /// Time and peak heap of the report parser, new against previous, in this process.
    Parser,
    /// Legitimate traffic alone, then beside each attack of issue 10; writes ATTACK.md.
    Attack(AttackArgs),
    /// The relay draining a full outbox against publish-with-confirms, in rounds.
    Relay(RelayArgs),
    /// What storing one report costs PostgreSQL, path by path.
    Pgcost(PgcostArgs),
    /// Endpoints applied at once: the operator's time to Ready against the API server
    /// alone, its peak RSS, its API requests converging and idle; writes OPERATOR.md.
    Operator(OperatorArgs),
}

#[derive(Debug, clap::Args)]
struct PgcostArgs {
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[arg(long, value_enum, default_value = "large")]
    size: Size,
    /// Reports stored per path.
    #[arg(long, default_value_t = 40)]
    reports: usize,
    /// Reports per transaction of the batched path.
    #[arg(long, default_value_t = 4)]
    batch: usize,
}

/// Where PostgreSQL and RabbitMQ are (`eval "$(scripts/services.sh env)"` sets both).
#[derive(Debug, clap::Args)]
struct Services {
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    amqp_url: String,
}

#[derive(Debug, clap::Args)]
struct OperatorArgs {
    /// The release `anchorpipe-operator` binary to measure.
    #[arg(long)]
    operator_bin: PathBuf,
    /// The `anchorpipe-ingest` binary (it migrates the run's platform database).
    #[arg(long)]
    ingest_bin: PathBuf,
    #[command(flatten)]
    services: Services,
    #[arg(long, env = "RABBITMQ_MANAGEMENT_URL", hide_env_values = true)]
    rabbitmq_management_url: String,
    /// IngestionEndpoints applied at once.
    #[arg(long, default_value_t = 1000)]
    endpoints: usize,
    /// Namespaces they are spread over (the operator watches only these).
    #[arg(long, default_value_t = 10)]
    namespaces: usize,
    /// Requests in flight at once when applying and in the API-server-alone baseline;
    /// 0: one per endpoint, as the operator's controller (unbounded concurrency).
    #[arg(long, default_value_t = 0)]
    concurrency: usize,
    /// Seconds of idle after convergence in which the operator's writes are counted.
    #[arg(long, default_value_t = 60.0)]
    idle: f64,
    /// Seconds to wait for every endpoint to be Ready.
    #[arg(long, default_value_t = 1800.0)]
    ready_timeout: f64,
    /// Seconds to wait for every endpoint to be gone after deleting them.
    #[arg(long, default_value_t = 900.0)]
    cleanup_timeout: f64,
    /// Scratch directory (the operator's log).
    #[arg(long, default_value = "/tmp/anchorpipe-bench-operator")]
    work_dir: PathBuf,
    /// Where OPERATOR.md goes; without it, nothing is written.
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct RelayArgs {
    /// The release `anchorpipe-ingest` binary whose relay is measured.
    #[arg(long)]
    ingest_bin: PathBuf,
    #[command(flatten)]
    services: Services,
    /// Scratch directory for config, keys and logs.
    #[arg(long, default_value = "/tmp/anchorpipe-bench-relay")]
    work_dir: PathBuf,
    /// Seconds of each publish-with-confirms measurement.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Outbox rows the relay drains per round.
    #[arg(long, default_value_t = 50_000)]
    rows: i64,
    /// Rounds of (publish-with-confirms, relay); the median ratio is the verdict.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The relay's batch; publish-with-confirms uses the same.
    #[arg(long, default_value_t = 256)]
    relay_batch: usize,
}

#[derive(Debug, clap::Args)]
struct AttackArgs {
    /// The release `anchorpipe-ingest` binary to attack.
    #[arg(long)]
    ingest_bin: PathBuf,
    #[command(flatten)]
    services: Services,
    /// Where ATTACK.md goes.
    #[arg(long, default_value = "tests/bench")]
    out_dir: PathBuf,
    /// Scratch directory for config, keys and logs.
    #[arg(long, default_value = "/tmp/anchorpipe-bench-attack")]
    work_dir: PathBuf,
    /// Legitimate signed small reports per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Seconds of the baseline and of each attack.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The release `anchorpipe-ingest` binary to measure.
    #[arg(long)]
    ingest_bin: PathBuf,
    #[command(flatten)]
    services: Services,
    /// Where RESULTS.md and throughput.png go.
    #[arg(long, default_value = "tests/bench")]
    out_dir: PathBuf,
    /// Scratch directory for config, keys, logs and the profile.
    #[arg(long, default_value = "/tmp/anchorpipe-bench")]
    work_dir: PathBuf,
    /// Seconds per measured point.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
    concurrency: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "small,medium,large")]
    sizes: Vec<Size>,
    /// The relay's batch (all in flight at once); the RabbitMQ limit uses the same.
    #[arg(long, default_value_t = 256)]
    relay_batch: usize,
    /// Database connections of the ingest process (its default).
    #[arg(long, default_value_t = 16)]
    db_max_connections: u32,
    /// Skip the 16 × 50 MiB memory run.
    #[arg(long)]
    no_memory: bool,
    /// Record a whole-machine `perf` profile during one extra small-report point.
    #[arg(long)]
    perf: bool,
    /// Rounds of the relay scenario after the matrix, for the relay target (0: none).
    #[arg(long, default_value_t = 3)]
    relay_rounds: usize,
    /// Outbox rows the relay drains per round.
    #[arg(long, default_value_t = 50_000)]
    relay_rows: i64,
}

#[derive(Debug, clap::Args)]
struct LoadArgs {
    /// e.g. http://127.0.0.1:8080/api/ingestion
    #[arg(long)]
    url: http::Uri,
    /// The repository UUID (must be in the service's config).
    #[arg(long)]
    repo: Uuid,
    /// The HMAC secret (as in the keys directory).
    #[arg(long, env = "BENCH_SECRET", hide_env_values = true)]
    secret: String,
    #[arg(long, value_enum, default_value = "small")]
    size: Size,
    /// Fixed concurrency (closed loop); ignored when --rate is given.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Fixed rate in requests per second (open loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds to run; ignored when --count is given.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Number of requests to send.
    #[arg(long)]
    count: Option<u64>,
}

/// The heading from which `RESULTS.md` is carried over by `run` unchanged.
const KEPT_SECTION: &str = "\n## Report parser";

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Parser = cli.command {
        return parser::run();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(args).await,
            Command::Load(args) => one_load(args).await,
            Command::Attack(args) => under_attack(args).await,
            Command::Relay(args) => relay_pace(args).await,
            Command::Pgcost(args) => {
                pgcost::run(pgcost::Settings {
                    database_url: args.database_url,
                    size: args.size,
                    reports: args.reports,
                    batch: args.batch,
                })
                .await
            }
            Command::Operator(args) => operator_at_scale(args).await,
            Command::Parser => Ok(()),
        }
    })
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.duration > 0.0, "--duration must be positive");
    let settings = matrix::Settings {
        ingest_bin: args.ingest_bin,
        database_url: args.services.database_url,
        amqp_url: args.services.amqp_url,
        work_dir: args.work_dir,
        duration: Duration::from_secs_f64(args.duration),
        concurrency: args.concurrency,
        sizes: args.sizes,
        relay_batch: args.relay_batch,
        db_max_connections: args.db_max_connections,
        memory_run: !args.no_memory,
        perf: args.perf,
        relay_rounds: args.relay_rounds,
        relay_rows: args.relay_rows,
    };
    let results = matrix::run(settings).await?;
    std::fs::create_dir_all(&args.out_dir)?;
    let markdown = results::render(&results, results.perf.as_deref());
    let md_path = args.out_dir.join("RESULTS.md");
    // Sections this command does not measure (the parser micro-benchmark) stay as they
    // were, at the end.
    let kept = std::fs::read_to_string(&md_path)
        .ok()
        .and_then(|old| old.find(KEPT_SECTION).map(|at| old[at..].to_owned()))
        .unwrap_or_default();
    let markdown = if kept.is_empty() {
        markdown
    } else {
        format!("{}\n\n{}", markdown.trim_end(), kept.trim_start())
    };
    std::fs::write(&md_path, markdown).with_context(|| format!("writing {}", md_path.display()))?;
    let png_path = args.out_dir.join("throughput.png");
    chart::draw(&results, &png_path)?;
    println!("wrote {} and {}", md_path.display(), png_path.display());
    Ok(())
}

async fn under_attack(args: AttackArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.duration > 0.0, "--duration must be positive");
    let settings = attack::Settings {
        ingest_bin: args.ingest_bin,
        database_url: args.services.database_url,
        amqp_url: args.services.amqp_url,
        work_dir: args.work_dir,
        out_dir: args.out_dir,
        rate: args.rate,
        duration: Duration::from_secs_f64(args.duration),
    };
    attack::run(settings).await?;
    Ok(())
}

async fn relay_pace(args: RelayArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.duration > 0.0, "--duration must be positive");
    let settings = relay::Settings {
        ingest_bin: args.ingest_bin,
        database_url: args.services.database_url,
        amqp_url: args.services.amqp_url,
        work_dir: args.work_dir,
        duration: Duration::from_secs_f64(args.duration),
        rows: args.rows,
        rounds: args.rounds,
        relay_batch: args.relay_batch,
    };
    relay::run(settings).await?;
    Ok(())
}

async fn operator_at_scale(args: OperatorArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.idle >= 0.0, "--idle must not be negative");
    let settings = operator::Settings {
        operator_bin: args.operator_bin,
        ingest_bin: args.ingest_bin,
        database_url: args.services.database_url,
        amqp_url: args.services.amqp_url,
        management_url: args.rabbitmq_management_url,
        endpoints: args.endpoints,
        namespaces: args.namespaces,
        concurrency: args.concurrency,
        idle: Duration::from_secs_f64(args.idle),
        ready_timeout: Duration::from_secs_f64(args.ready_timeout),
        cleanup_timeout: Duration::from_secs_f64(args.cleanup_timeout),
        work_dir: args.work_dir,
    };
    let figures = operator::run(settings).await?;
    println!("verdicts:");
    for verdict in figures.verdicts() {
        println!("  {verdict}");
    }
    if let Some(dir) = args.out_dir {
        let commit = std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let machine = machine();
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("OPERATOR.md");
        std::fs::write(&path, operator::render(&figures, &commit, &machine))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// CPU model, core count and memory, from `/proc`.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!("{model}, {cores} cores, {mem_gib:.1} GiB")
}

async fn one_load(args: LoadArgs) -> anyhow::Result<()> {
    let template = report::Template::new(args.repo, args.size.tests(), 300);
    let target = load::Target {
        url: args.url,
        secret: Arc::from(args.secret.as_str()),
        template: Arc::new(template),
        run_prefix: format!("load-{}", Uuid::new_v4().simple()),
    };
    let mode = match args.rate {
        Some(rate) => load::Mode::Rate(rate),
        None => load::Mode::Concurrency(args.concurrency),
    };
    let stop = match args.count {
        Some(count) => load::Stop::Count(count),
        None => load::Stop::Duration(Duration::from_secs_f64(args.duration)),
    };
    let client = load::client(args.concurrency.max(64));
    let outcome = load::run(&client, &target, mode, stop).await?;
    println!(
        "{:.1} s: {:.0} ok/s, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; [{}]; sent {} bytes, received {} bytes",
        outcome.elapsed.as_secs_f64(),
        outcome.ok_per_sec(),
        outcome.ms(0.5),
        outcome.ms(0.9),
        outcome.ms(0.99),
        outcome.ms(0.999),
        outcome.ms(1.0),
        outcome.status_summary(),
        outcome.bytes_sent,
        outcome.bytes_received,
    );
    Ok(())
}
