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

use crate::broker::AmqpBroker;
use crate::builders::{MANAGED_BY_SELECTOR, Settings};
use crate::error::Result;
use crate::http::{HttpState, router};
use crate::leader::{LeaderElector, LeaseConfig};
use crate::metrics::Metrics;
use crate::reconcile::{Context, error_policy, reconcile};
use crate::watch;

/// Everything `run` needs, parsed once at start-up.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub settings: Settings,
    pub amqp_url: String,
    pub listen: SocketAddr,
    pub lease: LeaseConfig,
    pub lease_namespace: String,
    pub broker_timeout: Duration,
    pub cleanup_timeout: Duration,
    pub resync: Duration,
}

pub async fn run(config: RunConfig) -> Result<()> {
    let client = Client::try_default().await?;
    let metrics = Arc::new(Metrics::default());
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
    tokio::select! {
        () = elector.acquire() => {}
        _ = tokio::signal::ctrl_c() => return Ok(()),
    }
    metrics.leader.set(1);

    let broker = Arc::new(AmqpBroker::new(
        config.amqp_url.clone(),
        config.broker_timeout,
    ));
    let ctx = Arc::new(Context::new(
        client.clone(),
        config.settings.clone(),
        broker,
        metrics.clone(),
        Arc::new(Timestamp::now),
        config.cleanup_timeout,
        config.resync,
    ));
    let owned = watcher::Config::default().labels(MANAGED_BY_SELECTOR);
    let (reader, writer) = reflector::store();
    let controller = Controller::for_stream(
        watch::primary(
            Api::<DeserializeGuard<IngestionEndpoint>>::all(client.clone()),
            watcher::Config::default().any_semantic(),
            writer,
        ),
        reader,
    )
    .owns_stream(watch::owned(
        Api::<PartialObjectMeta<Deployment>>::all(client.clone()),
        owned.clone(),
    ))
    .owns_stream(watch::owned(
        Api::<PartialObjectMeta<Secret>>::all(client.clone()),
        owned.clone(),
    ))
    .owns_stream(watch::owned(
        Api::<PartialObjectMeta<ConfigMap>>::all(client.clone()),
        owned,
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
    });

    let outcome = tokio::select! {
        () = controller => {
            info!("controller stopped");
            Ok(())
        }
        lost = elector.hold() => {
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
