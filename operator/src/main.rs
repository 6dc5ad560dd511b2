//! `anchorpipe-operator`: `crd` prints the CRD, `run` runs the controller,
//! `release-finalizers` lets endpoints go before the operator is uninstalled, `smoke-test`
//! checks an installed stack end to end (`helm test`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anchorpipe_operator::builders::Settings;
use anchorpipe_operator::leader::LeaseConfig;
use anchorpipe_operator::pod_defaults::PodDefaults;
use anchorpipe_operator::run::RunConfig;
use anchorpipe_operator::uninstall::{self, OperatorRef, ReleaseConfig};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "anchorpipe-operator",
    version,
    about = "Turns IngestionEndpoints into running tenants"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the IngestionEndpoint CRD as YAML.
    Crd,
    /// Run the controller.
    Run(Box<RunArgs>),
    /// Stop the operator and remove its finalizer from every IngestionEndpoint, so that
    /// endpoints and namespaces can be deleted once it is uninstalled. Tenant data
    /// (stored reports, logins, queues) and the endpoints themselves are left in place.
    ReleaseFinalizers(ReleaseArgs),
    /// Check the installed stack end to end with a temporary IngestionEndpoint (what the
    /// chart's `helm test` runs).
    ///
    /// Creates the endpoint, waits until it is Ready, posts a report signed with its
    /// current key to one of its ingest pods (expecting 200) and one signed with a wrong
    /// key (expecting 401), then deletes it and waits until it is gone, also after a
    /// failure and on SIGTERM. Reports go to a ready pod address taken from the Service's
    /// EndpointSlices, so the check depends on neither cluster DNS nor kube-proxy.
    SmokeTest(SmokeTestArgs),
}

#[derive(clap::Args)]
struct SmokeTestArgs {
    #[command(flatten)]
    smoke: anchorpipe_operator::smoke::SmokeArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(clap::Args)]
struct ReleaseArgs {
    /// Release endpoints in this namespace only (repeat for several). Without it, every
    /// namespace.
    #[arg(long = "namespace")]
    namespaces: Vec<String>,
    /// The operator's Deployment, scaled to zero first so that no replica adds the
    /// finalizer back. Without it the operator is assumed gone.
    #[arg(long)]
    operator_deployment: Option<String>,
    /// Namespace of the operator's Deployment and Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    operator_namespace: String,
    /// The operator's leader-election Lease; the finalizers are released only once no
    /// replica holds it. Defaults to the Deployment's name.
    #[arg(long)]
    lease_name: Option<String>,
    /// Seconds to wait for the operator to release or lose its Lease.
    #[arg(long, default_value_t = 120)]
    wait_timeout_seconds: u64,
    #[command(flatten)]
    log: LogArgs,
}

/// How the process logs: the same flag for every subcommand that runs for a while.
#[derive(clap::Args)]
struct LogArgs {
    #[arg(
        long,
        env = "ANCHORPIPE_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Ingest image used for endpoints that do not set spec.image.
    #[arg(long, env = "ANCHORPIPE_INGEST_IMAGE")]
    ingest_image: String,
    /// Further images endpoints may choose with spec.image (comma-separated). The pods
    /// hold the tenant's credentials, so nothing else may run with them.
    #[arg(
        long,
        env = "ANCHORPIPE_ALLOWED_INGEST_IMAGES",
        value_delimiter = ',',
        num_args = 0..
    )]
    allowed_ingest_images: Vec<String>,
    /// Proxies in front of the ingest pods (IPs or CIDR ranges, comma-separated), such as
    /// the ingress controller: the pods believe their `X-Forwarded-For` and `Forwarded`
    /// headers, and no one else's.
    #[arg(
        long,
        env = "ANCHORPIPE_TRUSTED_PROXIES",
        value_delimiter = ',',
        num_args = 0..,
        value_parser = trusted_proxy
    )]
    trusted_proxies: Vec<String>,
    /// Image pull Secrets (names, looked up in each tenant's namespace), node selector,
    /// tolerations, affinity and default resources of every tenant's ingest pods, as
    /// one JSON object: `{"imagePullSecrets": ["regcred"], "nodeSelector": {...},
    /// "tolerations": [...], "affinity": {...}, "resources": {...}}`. Unknown fields
    /// are refused.
    #[arg(
        long,
        env = "ANCHORPIPE_INGEST_POD_DEFAULTS",
        default_value = "",
        value_parser = pod_defaults
    )]
    ingest_pod_defaults: PodDefaults,
    /// Broker URL (administrator) the operator declares tenant topology through.
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    amqp_url: String,
    /// Database URL of the owner role: the operator records tenant claims and mints
    /// each tenant's login with it.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// RabbitMQ management API with administrator credentials
    /// (`http://user:password@host:15672`): the operator mints each tenant's broker user
    /// through it.
    #[arg(long, env = "RABBITMQ_MANAGEMENT_URL", hide_env_values = true)]
    rabbitmq_management_url: String,
    /// Serve IngestionEndpoints in this namespace only (repeat for several). Without it
    /// the operator serves every namespace and needs cluster-wide rights.
    #[arg(long = "watch-namespace")]
    watch_namespaces: Vec<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "ANCHORPIPE_OPERATOR_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    listen: SocketAddr,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "anchorpipe-operator")]
    lease_name: String,
    /// Namespace of the leader-election Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's identity in the Lease; defaults to a random id.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a broker operation may take before it counts as failed.
    #[arg(long, default_value_t = 10)]
    broker_timeout_seconds: u64,
    /// Seconds a deletion waits for the broker before the finalizer is released anyway.
    #[arg(long, default_value_t = 300)]
    cleanup_timeout_seconds: u64,
    /// Seconds between re-checks of a healthy endpoint.
    #[arg(long, default_value_t = 300)]
    resync_seconds: u64,
    /// Endpoints reconciled at once (the others wait their turn); bounds the memory and
    /// the API server load of a burst of changes.
    #[arg(long, default_value_t = anchorpipe_operator::reconcile::DEFAULT_CONCURRENT_RECONCILES,
          value_parser = clap::value_parser!(u16).range(1..))]
    max_concurrent_reconciles: u16,
    #[command(flatten)]
    log: LogArgs,
}

fn trusted_proxy(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() || anchorpipe_crds::config::is_ip_or_cidr(text) {
        Ok(text.to_owned())
    } else {
        Err(format!("`{text}` is not an IP address or CIDR range"))
    }
}

fn pod_defaults(text: &str) -> Result<PodDefaults, String> {
    PodDefaults::from_json(text).map_err(|e| e.to_string())
}

fn random_identity() -> String {
    use rand::TryRngCore;
    let mut bytes = [0u8; 4];
    let _ = rand::rngs::OsRng.try_fill_bytes(&mut bytes);
    format!("anchorpipe-operator-{}", hex::encode(bytes))
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => match anchorpipe_operator::crdgen::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::ReleaseFinalizers(args) => {
            init_tracing(args.log.log_format);
            let config = ReleaseConfig {
                namespaces: args.namespaces,
                operator: args.operator_deployment.map(|deployment| OperatorRef {
                    namespace: args.operator_namespace,
                    lease: args.lease_name.unwrap_or_else(|| deployment.clone()),
                    deployment,
                }),
                wait_timeout: Duration::from_secs(args.wait_timeout_seconds),
            };
            block_on(async move {
                let client = anchorpipe_operator::run::request_client().await?;
                uninstall::release_finalizers(client, &config).await
            })
            .map_or(ExitCode::FAILURE, |released| {
                println!(
                    "released the finalizer of {} IngestionEndpoint(s) ({} already being deleted) of {} seen",
                    released.released, released.deleting, released.seen
                );
                ExitCode::SUCCESS
            })
        }
        Command::SmokeTest(args) => {
            init_tracing(args.log.log_format);
            anchorpipe_operator::smoke::main(&args.smoke)
        }
        Command::Run(args) => {
            init_tracing(args.log.log_format);
            let config = RunConfig {
                settings: Settings {
                    ingest_image: args.ingest_image,
                    allowed_ingest_images: args
                        .allowed_ingest_images
                        .into_iter()
                        .filter(|i| !i.is_empty())
                        .collect(),
                    trusted_proxies: args
                        .trusted_proxies
                        .into_iter()
                        .filter(|p| !p.is_empty())
                        .collect(),
                    pod_defaults: args.ingest_pod_defaults,
                },
                amqp_url: args.amqp_url,
                database_url: args.database_url,
                rabbitmq_management_url: args.rabbitmq_management_url,
                watch_namespaces: args.watch_namespaces,
                listen: args.listen,
                lease: LeaseConfig {
                    name: args.lease_name,
                    identity: args.identity.unwrap_or_else(random_identity),
                    lease_duration: Duration::from_secs(15),
                    renew_period: Duration::from_secs(5),
                },
                lease_namespace: args.lease_namespace,
                broker_timeout: Duration::from_secs(args.broker_timeout_seconds),
                cleanup_timeout: Duration::from_secs(args.cleanup_timeout_seconds),
                resync: Duration::from_secs(args.resync_seconds),
                max_concurrent_reconciles: args.max_concurrent_reconciles,
            };
            block_on(anchorpipe_operator::run::run(config))
                .map_or(ExitCode::FAILURE, |()| ExitCode::SUCCESS)
        }
    }
}

/// Runs `work` on a multi-threaded runtime; errors are logged (`None`).
fn block_on<T>(
    work: impl std::future::Future<Output = anchorpipe_operator::Result<T>>,
) -> Option<T> {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "could not start the runtime");
            return None;
        }
    };
    match runtime.block_on(work) {
        Ok(value) => Some(value),
        Err(e) => {
            tracing::error!(error = %e, "stopped");
            None
        }
    }
}
