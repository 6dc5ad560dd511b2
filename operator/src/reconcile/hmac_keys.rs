//! The keys step: minted HMAC keys planned by [`crate::keys`] and written to the
//! endpoint's Secret, or a user's Secret checked; for minted keys, the warning when a
//! key the ingest pods still see in use is about to stop verifying.

use super::*;
use crate::keys::KeyTimes;
use crate::status::KeyExpiry;

/// The keys step's result.
pub(super) struct Keys {
    pub(super) check: Check,
    pub(super) secret_name: String,
    pub(super) current: Option<String>,
    /// When a rotation, a removal or an expiry warning is next due.
    pub(super) next_change: Option<Duration>,
    /// The keys' times for the status (minted keys only).
    pub(super) times: KeyTimes,
    /// Whether a key in use is about to stop verifying (minted keys only).
    pub(super) expiry: Option<KeyExpiry>,
    /// A transient problem to retry once the rest of the endpoint is applied.
    pub(super) retry: Option<Error>,
}

pub(super) async fn minted_keys(
    endpoint: &IngestionEndpoint,
    tenant: &str,
    policy: RotationPolicy,
    now: Timestamp,
    ctx: &Context,
) -> Result<Keys> {
    let names = Names::of(endpoint);
    let namespace = endpoint.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let existing = ctx.get_owned(&api, endpoint, &names.secret).await?;
    if let Some(secret) = &existing
        && !builders::is_owned_by(&secret.metadata, endpoint)
    {
        return Err(Error::Conflict {
            kind: "Secret",
            name: names.secret,
        });
    }
    // Values that are not UTF-8 were not written by the operator; they are dropped.
    let data: BTreeMap<String, String> = existing
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|(id, v)| String::from_utf8(v.0.clone()).ok().map(|v| (id.clone(), v)))
        .collect();
    let served = existing.as_ref().and_then(|s| {
        s.annotations()
            .get(builders::ROTATION_SERVED_ANNOTATION)
            .cloned()
    });
    let request = endpoint.annotations().get(ROTATE_ANNOTATION).cloned();
    let plan = keys::plan(
        &data,
        served.as_deref(),
        request.as_deref(),
        policy,
        now,
        keys::mint_random,
    )?;
    apply_object_over(
        ctx,
        &api,
        &builders::key_secret(endpoint, tenant, &plan)?,
        Some(existing.as_ref()),
    )
    .await?;

    let regarding = endpoint.object_ref(&());
    if let Some((id, reason)) = &plan.minted {
        let label = match reason {
            MintReason::Initial => RotationReason::Initial,
            MintReason::Schedule => RotationReason::Schedule,
            MintReason::Requested => RotationReason::Requested,
        };
        ctx.metrics
            .key_rotations
            .get_or_create(&RotationLabels { reason: label })
            .inc();
        info!(key_id = %id, reason = reason.as_str(), "minted HMAC key");
        let (event_reason, note) = match reason {
            MintReason::Initial => ("KeyMinted", format!("minted HMAC key {id}")),
            _ => (
                "KeyRotated",
                format!(
                    "minted HMAC key {id} ({}); the previous key stays valid for the grace period",
                    reason.as_str()
                ),
            ),
        };
        ctx.event(
            &regarding,
            EventType::Normal,
            event_reason,
            "RotateKey",
            note,
        )
        .await;
    }
    let ids: Vec<&str> = plan.keys.keys().map(String::as_str).collect();
    let times = keys::key_times(&ids, policy);
    let mut next_change = plan.next_change;
    let expiry = match ctx.accounts.key_usage(tenant).await {
        Ok(usage) => {
            let check = keys::expiry_warning(&ids, &usage, policy, now);
            if let Some(wait) = check.next_check {
                next_change = next_change.min(wait.max(Duration::from_secs(1)));
            }
            match check.expiring {
                Some(expiring) => {
                    warn_expiring(endpoint, &expiring, &plan.current, ctx).await;
                    KeyExpiry::InUseExpiring {
                        expiring,
                        current: plan.current.clone(),
                    }
                }
                None => KeyExpiry::NoneExpiring(policy.expiry_warning),
            }
        }
        Err(error) => {
            // Advisory only: the keys themselves are fine, so the reconcile goes on.
            warn!(%error, "could not read which keys are in use");
            KeyExpiry::Unknown(error.to_string())
        }
    };
    for id in &plan.removed {
        ctx.metrics.keys_removed.inc();
        info!(key_id = %id, "removed HMAC key after its grace period");
        ctx.event(
            &regarding,
            EventType::Normal,
            "KeyRemoved",
            "RotateKey",
            format!("removed HMAC key {id}: its grace period is over"),
        )
        .await;
    }
    Ok(Keys {
        check: Check::ok(
            "KeysMinted",
            format!(
                "{} valid key(s) in Secret {}; sign with {}",
                plan.keys.len(),
                names.secret,
                plan.current
            ),
        ),
        secret_name: names.secret,
        current: Some(plan.current),
        next_change: Some(next_change),
        times,
        expiry: Some(expiry),
        retry: None,
    })
}

/// A Warning Event when a key in use starts expiring: once per key, when the
/// `KeyExpiring` condition turns True for it (the condition stays while it lasts).
async fn warn_expiring(
    endpoint: &IngestionEndpoint,
    expiring: &keys::Expiring,
    current: &str,
    ctx: &Context,
) {
    let already = endpoint
        .status
        .as_ref()
        .into_iter()
        .flat_map(|s| &s.conditions)
        .any(|c| {
            c.type_ == status::KEY_EXPIRING
                && c.status == "True"
                && c.message
                    .starts_with(&status::key_expiring_prefix(&expiring.key_id))
        });
    if already {
        return;
    }
    ctx.metrics.key_expiry_warnings.inc();
    ctx.event(
        &endpoint.object_ref(&()),
        EventType::Warning,
        status::KEY_EXPIRING,
        "WarnKeyExpiry",
        status::key_expiring_message(expiring, current),
    )
    .await;
}

pub(super) async fn referenced_keys(
    endpoint: &IngestionEndpoint,
    name: &str,
    ctx: &Context,
) -> Result<Keys> {
    let namespace = endpoint.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let problem = |reason, message: String| Keys {
        check: Check::failed(reason, message.clone()),
        secret_name: name.to_owned(),
        current: None,
        next_change: None,
        times: KeyTimes::default(),
        expiry: None,
        retry: Some(Error::UserSecret {
            name: name.to_owned(),
            message,
        }),
    };
    let Some(secret) = api.get_opt(name).await? else {
        return Ok(problem(
            "SecretNotFound",
            format!("Secret {name} referenced by spec.hmac.secretRef does not exist"),
        ));
    };
    let ids: Vec<&String> = secret
        .data
        .iter()
        .flatten()
        .filter(|(id, v)| keys::is_valid_key_id(id) && !v.0.is_empty())
        .map(|(id, _)| id)
        .collect();
    let Some(current) = ids.iter().max() else {
        return Ok(problem(
            "NoKeys",
            format!(
                "Secret {name} has no usable key: each data entry must be a non-empty key named with letters, digits, '-', '_' or '.'"
            ),
        ));
    };
    Ok(Keys {
        check: Check::ok(
            "SecretFound",
            format!("{} key(s) in referenced Secret {name}", ids.len()),
        ),
        secret_name: name.to_owned(),
        current: Some((*current).clone()),
        next_change: None,
        times: KeyTimes::default(),
        expiry: None,
        retry: None,
    })
}
