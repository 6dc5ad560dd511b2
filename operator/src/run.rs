//! `anchorpipe-operator run`: leader election, the controller, and the HTTP endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anchorpipe_crds::v1alpha1::IngestionEndpoint;
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::{Controller, reflector, watcher};
use kube::{Api, Client};
use tracing::{debug, error, info, warn};

use crate::accounts::AccountError;
use crate::broker::AmqpBroker;
use crate::broker_users::ManagementApi;
use crate::builders::{MANAGED_BY_SELECTOR, Settings};
use crate::database::TenantDb;
use crate::error::{Error, Result};
use crate::http::{HttpState, router};
use crate::leader::{LeaderElector, LeaseConfig};
use crate::metrics::Metrics;
use crate::platform_accounts::PlatformAccounts;
use crate::reconcile::{Context, error_policy, reconcile};
use crate::watch;

/// Everything `run` needs, parsed once at start-up.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub settings: Settings,
    pub amqp_url: String,
    pub database_url: String,
    pub rabbitmq_management_url: String,
    /// Namespaces to serve; empty means every namespace.
    pub watch_namespaces: Vec<String>,
    pub listen: SocketAddr,
    pub lease: LeaseConfig,
    pub lease_namespace: String,
    pub broker_timeout: Duration,
    pub cleanup_timeout: Duration,
    pub resync: Duration,
    /// Endpoints reconciled at once, over every watched namespace.
    pub max_concurrent_reconciles: u16,
}

/// Longest wait for the API server's answer to one request of a reconcile or of the
/// leader election. kube's clients wait forever by default: a request lost in an API
/// server restart would hold its reconcile, and with it the endpoint, for good.
pub const API_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A client that counts every request it sends in `metrics` (by method and resource),
/// so the operator's load on the API server can be read from its own /metrics.
///
/// `read_timeout` bounds the wait for each answer, from the moment the request is sent.
/// `None` is for watches, which stay open with nothing to read for minutes and which
/// kube's watcher bounds on its own.
pub async fn counting_client(
    metrics: Arc<Metrics>,
    read_timeout: Option<Duration>,
) -> Result<Client> {
    let config = client_config(read_timeout).await?;
    let count =
        tower::util::MapRequestLayer::new(move |request: http::Request<kube::client::Body>| {
            metrics.api_request(request.method(), request.uri().path());
            request
        });
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&count)
        .build())
}

/// A client for one-off commands that make requests and open no watch (the uninstall
/// hook, the e2e suite): every answer awaited at most [`API_REQUEST_TIMEOUT`].
pub async fn request_client() -> std::result::Result<Client, kube::Error> {
    Client::try_from(client_config(Some(API_REQUEST_TIMEOUT)).await?)
}

/// The inferred kube config, with `read_timeout` counted from each request rather than
/// from when its pooled connection went idle.
async fn client_config(
    read_timeout: Option<Duration>,
) -> std::result::Result<kube::Config, kube::Error> {
    let mut config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    config.read_timeout = read_timeout;
    config.reset_reader_on_write = read_timeout.is_some();
    Ok(config)
}

pub async fn run(config: RunConfig) -> Result<()> {
    let metrics = Arc::new(Metrics::default());
    let client = counting_client(metrics.clone(), Some(API_REQUEST_TIMEOUT)).await?;
    let watch_client = counting_client(metrics.clone(), None).await?;
    let state = Arc::new(HttpState {
        metrics: metrics.clone(),
        ready: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    info!(listen = %config.listen, "serving /metrics, /healthz and /readyz");
    let app = router(state.clone());
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            error!(%error, "HTTP server stopped");
        }
    });

    let elector = LeaderElector::new(
        Api::<Lease>::namespaced(client.clone(), &config.lease_namespace),
        config.lease.clone(),
    );
    state.ready.store(true, Ordering::Relaxed);
    let acquired = tokio::select! {
        acquired = elector.acquire() => acquired,
        _ = tokio::signal::ctrl_c() => return Ok(()),
    };
    metrics.leader.set(1);

    let broker = Arc::new(AmqpBroker::new(
        config.amqp_url.clone(),
        config.broker_timeout,
    ));
    let users = Arc::new(
        ManagementApi::new(&config.rabbitmq_management_url, config.broker_timeout)
            .map_err(|e| Error::Accounts(AccountError(e.to_string())))?,
    );
    let db = TenantDb::connect(&config.database_url)
        .map_err(|e| Error::Accounts(AccountError(e.to_string())))?;
    let accounts = Arc::new(PlatformAccounts::new(
        db,
        users,
        config.database_url.clone(),
        config.amqp_url.clone(),
    )?);
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            config.settings.clone(),
            broker,
            accounts,
            metrics.clone(),
            Arc::new(Timestamp::now),
            config.cleanup_timeout,
            config.resync,
        )
        .with_concurrent_reconciles(config.max_concurrent_reconciles),
    );
    // One controller for the whole cluster, or one per watched namespace (each with
    // its own cache: a reflector's store holds one watch's objects).
    let scopes: Vec<Option<String>> = if config.watch_namespaces.is_empty() {
        vec![None]
    } else {
        config.watch_namespaces.iter().cloned().map(Some).collect()
    };
    info!(namespaces = ?config.watch_namespaces, "serving IngestionEndpoints");
    let controllers = futures_util::future::join_all(
        scopes
            .into_iter()
            .map(|scope| controller(watch_client.clone(), scope, ctx.clone())),
    );
    let controller = async {
        controllers.await;
    };

    let outcome = tokio::select! {
        () = controller => {
            info!("controller stopped");
            Ok(())
        }
        lost = elector.hold(acquired) => {
            error!(error = %lost, "lost leadership; exiting so a fresh replica can stand by");
            Err(lost)
        }
    };
    metrics.leader.set(0);
    if outcome.is_ok() {
        elector.release().await;
    }
    outcome
}

/// An `Api` over the whole cluster, or over one namespace.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// [`Context::is_own_write`] for objects of kind `K`, for [`watch::owned`].
fn own_write<K: kube::Resource<DynamicType = ()>>(
    ctx: &Arc<Context>,
) -> impl Fn(&k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool + Send + 'static {
    let ctx = ctx.clone();
    move |meta| ctx.is_own_write::<K>(meta)
}

/// Runs the controller over `namespace` (all when `None`) until it shuts down. `client`
/// serves its watches only; reconciles use the context's.
async fn controller(client: Client, namespace: Option<String>, ctx: Arc<Context>) {
    let ns = namespace.as_deref();
    let owned = watcher::Config::default().labels(MANAGED_BY_SELECTOR);
    let (reader, writer) = reflector::store();
    Controller::for_stream(
        watch::primary(
            scoped::<DeserializeGuard<IngestionEndpoint>>(&client, ns),
            watcher::Config::default().any_semantic(),
            writer,
        ),
        reader,
    )
    .owns_stream(watch::owned(
        scoped::<PartialObjectMeta<Deployment>>(&client, ns),
        owned.clone(),
        own_write::<Deployment>(&ctx),
    ))
    .owns_stream(watch::owned(
        scoped::<PartialObjectMeta<Secret>>(&client, ns),
        owned.clone(),
        own_write::<Secret>(&ctx),
    ))
    .owns_stream(watch::owned(
        scoped::<PartialObjectMeta<ConfigMap>>(&client, ns),
        owned,
        own_write::<ConfigMap>(&ctx),
    ))
    .shutdown_on_signal()
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        match result {
            // An owned object changed after its endpoint was deleted: nothing to do.
            Err(kube::runtime::controller::Error::ObjectNotFound(object)) => {
                debug!(%object, "endpoint gone");
            }
            // Reconcile errors were logged by the error policy already, watch errors by
            // their watch.
            Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
            Err(error) => warn!(%error, "controller stream error"),
            Ok(_) => {}
        }
    })
    .await;
}
