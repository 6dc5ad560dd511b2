//! The credentials step: the tenant's minted database login and broker user, planned by
//! [`crate::credentials`], recorded in the credentials Secret, created through
//! [`Accounts`], and revoked after a rotation once no pod uses them.

use super::*;

/// The credentials step's result.
pub(super) struct Credentials {
    pub(super) check: Check,
    pub(super) plan: CredentialPlan,
    /// Whether the login and broker user of the current set were confirmed to exist.
    pub(super) ensured: bool,
    pub(super) retry: Option<Error>,
}

/// The tenant's minted credentials: plan from the Secret, write it, then make sure the
/// login and broker user exist with exactly the tenant's rights. The Secret is written
/// first so a set is never created that no Secret records.
pub(super) async fn tenant_credentials(
    endpoint: &IngestionEndpoint,
    tenant: &str,
    topology: &BrokerTopology,
    ctx: &Context,
) -> Result<Credentials> {
    let names = Names::of(endpoint);
    let namespace = endpoint.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let existing = ctx.get_owned(&api, endpoint, &names.credentials).await?;
    if let Some(secret) = &existing
        && !builders::is_owned_by(&secret.metadata, endpoint)
    {
        return Err(Error::Conflict {
            kind: "Secret",
            name: names.credentials,
        });
    }
    let data: BTreeMap<String, String> = existing
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| String::from_utf8(v.0.clone()).ok().map(|v| (k.clone(), v)))
        .collect();
    let annotations = existing
        .as_ref()
        .map(|s| s.annotations().clone())
        .unwrap_or_default();
    let request = endpoint.annotations().get(ROTATE_CREDENTIALS_ANNOTATION);
    let plan = credentials::plan(&data, &annotations, request.map(String::as_str), || {
        Ok(ctx.accounts.mint(tenant)?)
    })?;
    let urls = ctx.accounts.urls(&plan.current)?;
    apply_object_over(
        ctx,
        &api,
        &builders::credentials_secret(endpoint, tenant, &plan, &urls)?,
        Some(existing.as_ref()),
    )
    .await?;
    if let Some(reason) = plan.minted {
        info!(credentials_id = %plan.current.id, ?reason, "minted tenant credentials");
        ctx.event(
            &endpoint.object_ref(&()),
            EventType::Normal,
            "CredentialsMinted",
            "MintCredentials",
            format!(
                "minted database login {} and broker user {} into Secret {}",
                plan.current.database_login, plan.current.amqp_user, names.credentials
            ),
        )
        .await;
    }
    let grant = Grant {
        exchange: topology.exchange.clone(),
        routing_key: topology.routing_key.clone(),
    };
    Ok(
        match ctx.accounts.ensure(tenant, &plan.current, &grant).await {
            Ok(()) => Credentials {
                check: Check::ok(
                    "CredentialsMinted",
                    format!(
                        "database login {} and broker user {} in Secret {}",
                        plan.current.database_login, plan.current.amqp_user, names.credentials
                    ),
                ),
                plan,
                ensured: true,
                retry: None,
            },
            Err(e) => {
                let message = format!("could not create the tenant's credentials: {e}");
                Credentials {
                    check: Check::failed("CredentialsUnavailable", message),
                    plan,
                    ensured: false,
                    retry: Some(e.into()),
                }
            }
        },
    )
}

/// Revokes the credential set a rotation replaced, once every pod runs the current one.
pub(super) async fn retire_credentials(
    endpoint: &IngestionEndpoint,
    tenant: &str,
    creds: &mut Credentials,
    deployment: &Deployment,
    ctx: &Context,
) -> Result<()> {
    let Some(old) = creds.plan.retiring.clone() else {
        return Ok(());
    };
    let template_id = deployment
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(CREDENTIALS_ID_ANNOTATION));
    if !creds.ensured
        || template_id != Some(&creds.plan.current.id)
        || !status::rolled_out(deployment)
    {
        return Ok(());
    }
    ctx.accounts
        .revoke_except(tenant, std::slice::from_ref(&creds.plan.current.id))
        .await?;
    creds.plan.retiring = None;
    let urls = ctx.accounts.urls(&creds.plan.current)?;
    let namespace = endpoint.namespace().unwrap_or_default();
    apply_object(
        ctx,
        &Api::<Secret>::namespaced(ctx.client.clone(), &namespace),
        &builders::credentials_secret(endpoint, tenant, &creds.plan, &urls)?,
    )
    .await?;
    info!(credentials_id = %old, "revoked replaced tenant credentials");
    ctx.event(
        &endpoint.object_ref(&()),
        EventType::Normal,
        "CredentialsRevoked",
        "RotateCredentials",
        format!("revoked credential set {old}: every ingest pod runs the new one"),
    )
    .await;
    Ok(())
}
