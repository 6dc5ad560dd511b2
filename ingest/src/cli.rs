//! Command line and start-up: parse and validate everything once, then run.
//!
//! - `serve`: the HTTP service (and, with an AMQP URL, the outbox relay).
//! - `migrate`: apply the SQL migrations (the one owner of schema changes).
//! - `declare-topology`: declare a tenant's broker topology from a config file, through
//!   the same code path the operator uses; for local runs and tests.
//! - `outbox parked` / `outbox requeue`: list the tenant's parked outbox rows (given up
//!   on after too many failed publishes) and make them due again.
//! - `prune --older-than 90d`: delete audit rows, sent outbox rows and ingestions older
//!   than the age, with the database owner's URL (see `retention.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anchorpipe_crds::IngestConfig;
use clap::{Parser, Subcommand};
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

use crate::http::{AppState, DeliveryHealth, app};
use crate::keys::KeyStore;
use crate::metrics::Metrics;

#[derive(Debug, Parser)]
#[command(
    name = "anchorpipe-ingest",
    version,
    about = "anchorpipe ingest service"
)]
pub struct Cli {
    /// Log format: `text` for people, `json` for log pipelines.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve `POST /api/ingestion` for one tenant.
    Serve(ServeArgs),
    /// Apply pending database migrations and exit.
    Migrate {
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
    /// Declare the tenant's RabbitMQ topology described by a config file and exit.
    DeclareTopology {
        #[arg(long, env = "INGEST_CONFIG")]
        config: PathBuf,
        #[arg(long, env = "AMQP_URL", hide_env_values = true)]
        amqp_url: String,
    },
    /// Inspect and re-queue the tenant's parked outbox rows.
    Outbox {
        /// The tenant config file (the tenant is taken from it).
        #[arg(long, env = "INGEST_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
        database_url: Option<String>,
        #[command(subcommand)]
        action: OutboxAction,
    },
    /// Delete audit rows, sent outbox rows and ingestions older than an age (at least
    /// 1 day); needs the database owner's URL, prints the counts as JSON.
    Prune {
        /// Age like `90d`, `2w` or `36h`.
        #[arg(long, value_parser = crate::retention::parse_age)]
        older_than: Duration,
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum OutboxAction {
    /// Print the parked rows, one JSON object per line.
    Parked,
    /// Make parked rows due again with a fresh attempt count.
    Requeue {
        /// Only these outbox row ids (default: every parked row of the tenant).
        #[arg(long = "id")]
        ids: Vec<i64>,
    },
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The tenant config file (JSON, the `IngestConfig` contract).
    #[arg(long, env = "INGEST_CONFIG")]
    pub config: PathBuf,
    /// Directory of HMAC keys, one file per key id (a mounted Secret).
    #[arg(long, env = "INGEST_KEYS_DIR")]
    pub keys_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "INGEST_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// RabbitMQ URL; without it no relay runs in this process.
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<String>,
    /// Maximum database connections of this pod.
    #[arg(long, env = "INGEST_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// Seconds a request waits for a database connection before it is answered 503.
    #[arg(long, env = "INGEST_DB_ACQUIRE_TIMEOUT", default_value_t = 3)]
    pub db_acquire_timeout_secs: u64,
    /// Milliseconds between checks of the keys directory.
    #[arg(long, env = "INGEST_KEY_POLL_MS", default_value_t = 1000)]
    pub key_poll_ms: u64,
    /// Seconds between writes of aggregated audit rows.
    #[arg(long, env = "INGEST_AUDIT_FLUSH_SECS", default_value_t = 5)]
    pub audit_flush_secs: u64,
    /// Outbox rows the relay publishes per batch (all in flight at once).
    #[arg(long, env = "INGEST_RELAY_BATCH_SIZE", default_value_t = 256)]
    pub relay_batch_size: i64,
    /// Relay batches in flight at once, each on its own channel and database
    /// connection: the next batch is claimed and published while the previous one
    /// awaits its confirms and is marked.
    #[arg(long, env = "INGEST_RELAY_BATCHES_IN_FLIGHT", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..=16))]
    pub relay_batches_in_flight: u16,
    /// Seconds between SIGTERM and closing the listener. Meanwhile `/readyz` answers
    /// 503 and requests are still served, so that the endpoint controllers and ingress
    /// controllers stop routing here before connections are refused (the usual race of
    /// a rolling update). Then in-flight requests finish and the process exits.
    #[arg(long, env = "INGEST_SHUTDOWN_DELAY_SECONDS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=300))]
    pub shutdown_delay_seconds: u64,
    /// Benchmark only: answer right after the signature verified, storing nothing.
    #[arg(long, hide = true)]
    pub bench_verify_only: bool,
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Migrate { database_url } => migrate(&database_url).await,
        Command::DeclareTopology { config, amqp_url } => declare_topology(&config, &amqp_url).await,
        Command::Outbox {
            config,
            database_url,
            action,
        } => outbox(config, database_url, action).await,
        Command::Prune {
            older_than,
            database_url,
        } => prune(&database_url, older_than).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Reads and validates the config file; errors name the file and the field.
pub fn load_config(path: &std::path::Path) -> anyhow::Result<IngestConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
    IngestConfig::from_json(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

async fn migrate(database_url: &str) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .connect(database_url)
        .await?;
    crate::MIGRATOR.run(&pool).await?;
    tracing::info!("migrations applied");
    Ok(())
}

async fn prune(database_url: &str, older_than: Duration) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .connect(database_url)
        .await?;
    let counts = crate::retention::prune(&pool, older_than).await?;
    println!("{}", serde_json::to_string(&counts)?);
    tracing::info!(
        outbox_deleted = counts.outbox_deleted,
        audit_deleted = counts.audit_deleted,
        ingestions_deleted = counts.ingestions_deleted,
        "pruned"
    );
    Ok(())
}

async fn declare_topology(config: &std::path::Path, amqp_url: &str) -> anyhow::Result<()> {
    let config = load_config(config)?;
    let connection =
        lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    anchorpipe_crds::topology::declare(&channel, &config.broker).await?;
    tracing::info!(queue = %config.broker.queue, "topology declared");
    Ok(())
}

async fn outbox(
    config: Option<PathBuf>,
    database_url: Option<String>,
    action: OutboxAction,
) -> anyhow::Result<()> {
    let config = load_config(&config.ok_or_else(|| anyhow::anyhow!("--config is required"))?)?;
    let database_url = database_url
        .ok_or_else(|| anyhow::anyhow!("--database-url or DATABASE_URL is required"))?;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&database_url)
        .await?;
    match action {
        OutboxAction::Parked => {
            for row in crate::relay::parked_rows(&pool, &config.tenant).await? {
                println!("{}", serde_json::to_string(&row)?);
            }
        }
        OutboxAction::Requeue { ids } => {
            let ids = (!ids.is_empty()).then_some(ids);
            let n = crate::relay::requeue_parked(&pool, &config.tenant, ids.as_deref()).await?;
            println!("{}", serde_json::json!({"requeued": n}));
            tracing::info!(requeued = n, tenant = %config.tenant, "parked outbox rows re-queued");
        }
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = load_config(&args.config)?;
    let keys = KeyStore::load(&args.keys_dir)?;
    let pool = PgPoolOptions::new()
        .max_connections(args.db_max_connections)
        .acquire_timeout(Duration::from_secs(args.db_acquire_timeout_secs))
        // Lazy: the pod starts and reports not-ready while the database is away.
        .connect_lazy(&args.database_url)?;
    let metrics = Arc::new(Metrics::new());
    let delivery = Arc::new(DeliveryHealth::default());
    delivery
        .relay_enabled
        .store(args.amqp_url.is_some(), Ordering::Relaxed);
    let mut state = AppState::new(
        config.clone(),
        keys.clone(),
        pool.clone(),
        Arc::clone(&metrics),
        Arc::clone(&delivery),
    )?;
    state.verify_only = args.bench_verify_only;
    if state.verify_only {
        tracing::warn!("benchmark mode: reports are verified and NOT stored");
    }
    let state = Arc::new(state);
    let shutdown = CancellationToken::new();
    let mut tasks = vec![
        keys.watch(
            args.keys_dir.clone(),
            Duration::from_millis(args.key_poll_ms),
            shutdown.clone(),
        ),
        Arc::clone(&state.audit).spawn_flusher(
            pool.clone(),
            config.tenant.clone(),
            Duration::from_secs(args.audit_flush_secs),
            shutdown.clone(),
        ),
    ];
    tasks.extend(crate::spawn_delivery(
        &config,
        args.amqp_url.as_deref(),
        pool.clone(),
        Arc::clone(&metrics),
        Arc::clone(&delivery),
        crate::relay::RelaySettings {
            batch_size: args.relay_batch_size,
            batches_in_flight: usize::from(args.relay_batches_in_flight),
            ..Default::default()
        },
        shutdown.clone(),
    ));

    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(
        listen = %args.listen,
        tenant = %config.tenant,
        repositories = config.repositories.len(),
        "serving"
    );
    let draining = Arc::clone(&state.draining);
    crate::server::serve(
        listener,
        app(state),
        crate::server::ConnectionLimits::from(&config.protection),
        Arc::clone(&metrics),
        drain_after_signal(draining, Duration::from_secs(args.shutdown_delay_seconds)),
    )
    .await;
    tracing::info!("HTTP server drained; stopping background tasks");
    shutdown.cancel();
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}

/// Resolves `delay` after a stop signal, with `draining` set from the signal on.
async fn drain_after_signal(draining: Arc<AtomicBool>, delay: Duration) {
    shutdown_signal().await;
    draining.store(true, Ordering::Relaxed);
    if !delay.is_zero() {
        tracing::info!(
            delay_seconds = delay.as_secs(),
            "stop signal: not ready any more; serving until the delay has passed"
        );
        tokio::time::sleep(delay).await;
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
