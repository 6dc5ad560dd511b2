//! `apply`: the whole pipeline for an endpoint that exists (see the parent module).

use super::*;

#[instrument(skip_all, fields(namespace = endpoint.namespace().as_deref(), name = %endpoint.name_any()))]
pub(super) async fn apply(endpoint: &IngestionEndpoint, ctx: &Context) -> Result<Action> {
    let name = endpoint.name_any();
    let namespace = endpoint
        .namespace()
        .ok_or(Error::MissingMetadata("namespace"))?;
    let now = (ctx.clock)();
    let generation = endpoint.metadata.generation;
    let previous = endpoint.status.clone().unwrap_or_default();
    let endpoints: Api<IngestionEndpoint> = Api::namespaced(ctx.client.clone(), &namespace);
    let regarding = endpoint.object_ref(&());

    // 1. Validate: a spec the schema should have refused is reported, not retried.
    let mut config = match render::ingest_config(&endpoint.spec, &namespace, &name) {
        Ok(config) => config,
        Err(e) => {
            refuse(endpoint, ctx, "InvalidSpec", &e.to_string()).await?;
            return Err(e.into());
        }
    };
    let image = match ctx.settings.image_for(endpoint) {
        Ok(image) => image,
        Err(message) => {
            refuse(endpoint, ctx, "ImageNotAllowed", &message).await?;
            return Err(Error::ImageNotAllowed(message));
        }
    };
    config.protection.trusted_proxies = ctx.settings.trusted_proxies.clone();
    let tenant = config.tenant.clone();

    // 2. Claims: the tenant id, then each repository. A second claimant of the tenant id
    // touches nothing; it looks again from time to time, as the first may go away.
    if let TenantClaim::Taken(holder) = claim_tenant(endpoint, &tenant, ctx).await? {
        let message = format!(
            "tenant {tenant} is already served by IngestionEndpoint {}/{}; set a different spec.tenant",
            holder.namespace, holder.name
        );
        refuse(endpoint, ctx, "TenantConflict", &message).await?;
        return Ok(Action::requeue(ctx.resync.min(CONFLICT_RECHECK)));
    }
    let claims = ctx
        .accounts
        .claim_repositories(&tenant, &config.repositories)
        .await?;
    config.repositories = claims.owned.clone();
    let repositories = if claims.taken.is_empty() {
        Check::ok(
            "RepositoriesClaimed",
            format!("this endpoint owns all {} repositories", claims.owned.len()),
        )
    } else {
        let taken: Vec<String> = claims.taken.iter().map(ToString::to_string).collect();
        let message = format!(
            "repositories {} belong to another IngestionEndpoint; they are left out of this endpoint's config",
            taken.join(", ")
        );
        ctx.event(
            &regarding,
            EventType::Warning,
            "RepositoryConflict",
            "ClaimRepositories",
            message.clone(),
        )
        .await;
        Check::failed("RepositoryConflict", message)
    };

    // 3. Keys.
    let keys = match render::rotation_policy(&endpoint.spec.hmac)? {
        Some(policy) => minted_keys(endpoint, &tenant, policy, now, ctx).await?,
        None => {
            let secret = endpoint
                .spec
                .hmac
                .secret_ref
                .as_ref()
                .map(|r| r.name.clone())
                .unwrap_or_default();
            referenced_keys(endpoint, &secret, ctx).await?
        }
    };

    // 4. The tenant's own database login and broker user.
    let mut creds = tenant_credentials(endpoint, &tenant, &config.broker, ctx).await?;

    // 5. Config and workload.
    let (config_text, config_hash) = builders::config_json(&config)?;
    let client = &ctx.client;
    apply_object(
        ctx,
        &Api::<ConfigMap>::namespaced(client.clone(), &namespace),
        &builders::config_map(endpoint, &tenant, &config_text)?,
    )
    .await?;
    let deployment = apply_object(
        ctx,
        &Api::<Deployment>::namespaced(client.clone(), &namespace),
        &builders::deployment(
            endpoint,
            &tenant,
            &PodInputs {
                image: &image,
                config_hash: &config_hash,
                keys_secret: &keys.secret_name,
                credentials_id: &creds.plan.current.id,
                pod_defaults: &ctx.settings.pod_defaults,
            },
        )?,
    )
    .await?;
    apply_object(
        ctx,
        &Api::<Service>::namespaced(client.clone(), &namespace),
        &builders::service(endpoint, &tenant)?,
    )
    .await?;
    let workload = Names::of(endpoint).workload;
    let ingresses = Api::<Ingress>::namespaced(client.clone(), &namespace);
    match builders::ingress(endpoint, &tenant)? {
        Some(ingress) => {
            apply_object(ctx, &ingresses, &ingress).await?;
        }
        None => remove_if_owned(ctx, &ingresses, &workload, endpoint).await?,
    }
    let pdbs = Api::<PodDisruptionBudget>::namespaced(client.clone(), &namespace);
    match builders::pod_disruption_budget(endpoint, &tenant)? {
        Some(pdb) => {
            apply_object(ctx, &pdbs, &pdb).await?;
        }
        None => remove_if_owned(ctx, &pdbs, &workload, endpoint).await?,
    }

    retire_credentials(endpoint, &tenant, &mut creds, &deployment, ctx).await?;

    // 6. Broker topology.
    let topology = &config.broker;
    let mut retry = keys.retry.or(creds.retry.take());
    let queue = match ctx.broker.declare(topology).await {
        Ok(()) => {
            ctx.metrics
                .broker(BrokerOperation::Declare, BrokerOutcome::Ok);
            debug!(queue = %topology.queue, "broker topology declared");
            Check::ok(
                "QueueDeclared",
                format!(
                    "queue {} bound to exchange {} with routing key {}",
                    topology.queue, topology.exchange, topology.routing_key
                ),
            )
        }
        Err(e) => {
            let outcome = match e {
                BrokerError::Timeout(_) => BrokerOutcome::Timeout,
                BrokerError::Failed(_) => BrokerOutcome::Error,
            };
            ctx.metrics.broker(BrokerOperation::Declare, outcome);
            let message = format!("could not declare queue {}: {e}", topology.queue);
            ctx.event(
                &regarding,
                EventType::Warning,
                "BrokerUnavailable",
                "DeclareQueue",
                message.clone(),
            )
            .await;
            retry.get_or_insert(Error::Broker(message.clone()));
            Check::failed("BrokerUnavailable", message)
        }
    };

    // 7. Status.
    let (available, ready_replicas) =
        status::availability(Some(&deployment), endpoint.spec.replicas);
    let mut conditions = status::conditions(
        Checks {
            secret: &keys.check,
            credentials: &creds.check,
            repositories: &repositories,
            queue: &queue,
            available: &available,
        },
        generation,
        &previous.conditions,
        now,
    );
    if let Some(expiry) = &keys.expiry {
        conditions.push(status::key_expiring(
            expiry,
            generation,
            &previous.conditions,
            now,
        ));
    }
    let was_ready = previous
        .conditions
        .iter()
        .any(|c| c.type_ == status::READY && c.status == "True");
    let is_ready = conditions
        .iter()
        .any(|c| c.type_ == status::READY && c.status == "True");
    let new_status = IngestionEndpointStatus {
        observed_generation: generation,
        conditions,
        tenant: Some(tenant),
        url: Some(builders::url(endpoint)),
        secret_name: Some(keys.secret_name),
        credentials_secret_name: Some(Names::of(endpoint).credentials),
        current_key_id: keys.current,
        current_key_minted_at: keys.times.current_minted_at.map(Time),
        next_rotation_at: keys.times.next_rotation_at.map(Time),
        previous_key_id: keys.times.previous.as_ref().map(|(id, _)| id.clone()),
        previous_key_expires_at: keys.times.previous.map(|(_, at)| Time(at)),
        queue: Some(topology.queue.clone()),
        ready_replicas: Some(ready_replicas),
    };
    // Nothing changed (a resync of a healthy endpoint): no write, so a thousand idle
    // endpoints cost the API server reads only.
    if endpoint.status.as_ref() != Some(&new_status) {
        write_status(&endpoints, &name, &new_status).await?;
    }
    if is_ready && !was_ready {
        ctx.event(
            &regarding,
            EventType::Normal,
            "Ready",
            "Reconcile",
            "the endpoint accepts reports".to_owned(),
        )
        .await;
    }

    if let Some(error) = retry {
        return Err(error);
    }
    let mut next = keys.next_change.map_or(ctx.resync, |d| d.min(ctx.resync));
    if !claims.taken.is_empty() || creds.plan.retiring.is_some() {
        // A repository may be released by its owner, a rollout may finish: look again
        // soon (the Deployment's own changes wake the controller too).
        next = next.min(CONFLICT_RECHECK);
    }
    Ok(Action::requeue(next))
}

/// Claims the tenant id. A claim held by an endpoint that no longer exists (its deletion
/// gave up on an unreachable database, say) is stale: it is released, with whatever
/// credentials it left, and claimed anew. The holder lives in the same namespace (the
/// namespace is part of the tenant id), so this reads nothing of another tenant's.
async fn claim_tenant(
    endpoint: &IngestionEndpoint,
    tenant: &str,
    ctx: &Context,
) -> Result<TenantClaim> {
    let me = claimant(endpoint);
    let claim = ctx.accounts.claim_tenant(tenant, &me).await?;
    let TenantClaim::Taken(holder) = &claim else {
        return Ok(claim);
    };
    let api: Api<IngestionEndpoint> = Api::namespaced(ctx.client.clone(), &holder.namespace);
    let alive = api
        .get_opt(&holder.name)
        .await?
        .is_some_and(|ep| ep.uid().as_deref() == Some(holder.uid.as_str()));
    if alive {
        return Ok(claim);
    }
    warn!(%tenant, holder = %holder.name, "releasing a stale tenant claim");
    ctx.accounts.release(tenant, holder).await?;
    Ok(ctx.accounts.claim_tenant(tenant, &me).await?)
}
