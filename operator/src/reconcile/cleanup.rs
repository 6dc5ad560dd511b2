//! `cleanup`: what deleting an endpoint removes outside Kubernetes, never anything of
//! another tenant's, and bounded in time.

use super::*;

#[instrument(skip_all, fields(namespace = endpoint.namespace().as_deref(), name = %endpoint.name_any()))]
pub(super) async fn cleanup(endpoint: &IngestionEndpoint, ctx: &Context) -> Result<Action> {
    let name = endpoint.name_any();
    let namespace = endpoint.namespace().unwrap_or_default();
    let tenant = render::tenant_id(&endpoint.spec, &namespace, &name);
    let topology = render::broker_topology(&endpoint.spec, &tenant);
    let regarding = endpoint.object_ref(&());
    let who = claimant(endpoint);

    // Only the endpoint holding the tenant id may remove anything of the tenant's.
    match ctx.accounts.claim_tenant(&tenant, &who).await {
        Ok(TenantClaim::Ours) => {}
        Ok(TenantClaim::Taken(holder)) => {
            info!(%tenant, "tenant held by another endpoint; nothing of it is removed");
            ctx.event(
                &regarding,
                EventType::Normal,
                "NothingToCleanUp",
                "Delete",
                format!(
                    "tenant {tenant} belongs to IngestionEndpoint {}/{}: its queues and credentials were left alone",
                    holder.namespace, holder.name
                ),
            )
            .await;
            return Ok(Action::await_change());
        }
        Err(e) => return give_up_or_retry(endpoint, ctx, "release the tenant", &e.0).await,
    }

    // Queues first (a retry is due while the broker may come back); once they are gone,
    // kept, or given up on, the credentials and claims are released in any case, so a
    // recreated endpoint of the same name finds its tenant id free.
    delete_queues(endpoint, &tenant, &topology, ctx).await?;

    match ctx.accounts.release(&tenant, &who).await {
        Ok(()) => {
            ctx.forget_applied(endpoint);
            info!(%tenant, "revoked the tenant's credentials and released its claims");
            ctx.event(
                &regarding,
                EventType::Normal,
                "CredentialsRevoked",
                "Delete",
                format!(
                    "revoked tenant {tenant}'s database login and broker user and released its repositories; stored reports are kept"
                ),
            )
            .await;
            Ok(Action::await_change())
        }
        Err(e) => give_up_or_retry(endpoint, ctx, "release the tenant", &e.0).await,
    }
}

/// Deletes the tenant's queues when the deletion policy says so. `Err` asks for a retry;
/// `Ok` goes on (deleted, kept, or given up on after the cleanup timeout).
async fn delete_queues(
    endpoint: &IngestionEndpoint,
    tenant: &str,
    topology: &BrokerTopology,
    ctx: &Context,
) -> Result<()> {
    let regarding = endpoint.object_ref(&());
    let queues = format!("{} and {}", topology.queue, topology.dead_letter_queue);

    if endpoint.spec.queue.deletion_policy == DeletionPolicy::Retain {
        info!(queue = %topology.queue, "keeping broker queues (deletionPolicy Retain)");
        ctx.event(
            &regarding,
            EventType::Normal,
            "QueueRetained",
            "Delete",
            format!("kept queues {queues} (deletionPolicy Retain)"),
        )
        .await;
        return Ok(());
    }
    // A spec naming queues outside the tenant's own names was never applied; deleting by
    // it would remove another tenant's queue.
    if let Err(e) = render::owned_broker_names(topology, tenant) {
        warn!(error = %e, "not deleting queues named outside the tenant");
        ctx.event(
            &regarding,
            EventType::Warning,
            "QueueNotOwned",
            "Delete",
            format!("queues were not deleted: {e}"),
        )
        .await;
        return Ok(());
    }
    if endpoint
        .annotations()
        .get(SKIP_BROKER_CLEANUP_ANNOTATION)
        .is_some_and(|v| v == "true")
    {
        ctx.metrics
            .finalizers_released_without_cleanup
            .get_or_create(&ReleaseLabels {
                reason: ReleaseReason::Override,
            })
            .inc();
        warn!(queue = %topology.queue, "broker cleanup skipped by annotation");
        ctx.event(
            &regarding,
            EventType::Warning,
            "BrokerCleanupSkipped",
            "Delete",
            format!("{SKIP_BROKER_CLEANUP_ANNOTATION}=true: queues {queues} were not deleted and may remain on the broker"),
        )
        .await;
        return Ok(());
    }

    match ctx.broker.delete(topology).await {
        Ok(()) => {
            ctx.metrics
                .broker(BrokerOperation::Delete, BrokerOutcome::Ok);
            info!(queue = %topology.queue, "deleted broker queues");
            ctx.event(
                &regarding,
                EventType::Normal,
                "QueueDeleted",
                "Delete",
                format!("deleted queues {queues}"),
            )
            .await;
            Ok(())
        }
        Err(e) => {
            let outcome = match e {
                BrokerError::Timeout(_) => BrokerOutcome::Timeout,
                BrokerError::Failed(_) => BrokerOutcome::Error,
            };
            ctx.metrics.broker(BrokerOperation::Delete, outcome);
            give_up_or_retry(
                endpoint,
                ctx,
                &format!("delete queues {queues}"),
                &e.to_string(),
            )
            .await
            .map(|_| ())
        }
    }
}

/// A cleanup step failed: retry until `cleanup_timeout` has passed since the deletion
/// began, then release the finalizer anyway (a namespace must not stay stuck behind a
/// broker or database that is gone), saying what may be left behind.
async fn give_up_or_retry(
    endpoint: &IngestionEndpoint,
    ctx: &Context,
    what: &str,
    error: &str,
) -> Result<Action> {
    let regarding = endpoint.object_ref(&());
    let now = (ctx.clock)();
    let since = endpoint
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(now);
    let waited = Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO);
    if waited >= ctx.cleanup_timeout {
        ctx.metrics
            .finalizers_released_without_cleanup
            .get_or_create(&ReleaseLabels {
                reason: ReleaseReason::Timeout,
            })
            .inc();
        warn!(%error, waited_s = waited.as_secs(), step = what, "giving up on cleanup");
        ctx.event(
            &regarding,
            EventType::Warning,
            "BrokerCleanupAbandoned",
            "Delete",
            format!(
                "could not {what} within {}s ({error}); released the finalizer, it may remain",
                ctx.cleanup_timeout.as_secs()
            ),
        )
        .await;
        Ok(Action::await_change())
    } else {
        let left = ctx.cleanup_timeout.saturating_sub(waited);
        ctx.event(
            &regarding,
            EventType::Warning,
            "BrokerCleanupFailed",
            "Delete",
            format!(
                "could not {what} ({error}); retrying for another {}s, or set annotation {SKIP_BROKER_CLEANUP_ANNOTATION}=true to give up now",
                left.as_secs()
            ),
        )
        .await;
        Err(Error::BrokerCleanup {
            message: format!("{what}: {error}"),
            deadline_in: left,
        })
    }
}
