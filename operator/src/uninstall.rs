//! `anchorpipe-operator release-finalizers`: what the chart runs before it is uninstalled.
//!
//! Once the operator is gone nothing removes its finalizer, so deleting an
//! `IngestionEndpoint` (or the namespace holding one) would hang in Terminating. This
//! step, run while the operator still exists:
//!
//! 1. scales the operator's Deployment to zero, so no replica re-adds the finalizer;
//! 2. waits until the leader-election Lease is released or expired, so no reconcile is
//!    still in flight;
//! 3. removes the operator's finalizer from every `IngestionEndpoint` in scope, and
//!    nothing else (other finalizers stay);
//! 4. deletes the Lease, which the operator made at run time and Helm does not know.
//!
//! It touches nothing outside Kubernetes: tenants' stored reports, database logins,
//! claims and broker queues stay where they are, as do the endpoints themselves and the
//! objects they own. An endpoint already being deleted is let go without its cleanup.

use std::time::{Duration, Instant};

use anchorpipe_crds::v1alpha1::{FINALIZER, IngestionEndpoint};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::{Api, Client, ResourceExt};
use tracing::{debug, info, warn};

use crate::error::{Error, Result};

/// How often the Lease is looked at while waiting for the last replica to stop.
const LEASE_POLL: Duration = Duration::from_secs(1);

/// How often a finalizer removal is retried when the object changed under it.
const CONFLICT_RETRIES: usize = 5;

/// The running operator to stop before its finalizers are released.
#[derive(Debug, Clone)]
pub struct OperatorRef {
    pub namespace: String,
    pub deployment: String,
    pub lease: String,
}

/// What `release-finalizers` does.
#[derive(Debug, Clone)]
pub struct ReleaseConfig {
    /// Namespaces whose endpoints to release; empty means every namespace.
    pub namespaces: Vec<String>,
    /// The operator to stop first; `None` when it is already gone.
    pub operator: Option<OperatorRef>,
    /// How long to wait for the Lease to be free.
    pub wait_timeout: Duration,
}

/// What was done.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Released {
    /// Endpoints whose finalizer was removed.
    pub released: usize,
    /// Of those, endpoints that were already being deleted (their cleanup is skipped).
    pub deleting: usize,
    /// Endpoints seen in scope.
    pub seen: usize,
}

/// Stops the operator (when given), then releases its finalizer on every endpoint in
/// scope. Safe to run again: what is already released is skipped.
pub async fn release_finalizers(client: Client, config: &ReleaseConfig) -> Result<Released> {
    if let Some(operator) = &config.operator {
        stop_operator(&client, operator).await?;
        wait_for_lease(&client, operator, config.wait_timeout).await?;
    }
    let scopes: Vec<Option<&str>> = if config.namespaces.is_empty() {
        vec![None]
    } else {
        config.namespaces.iter().map(|n| Some(n.as_str())).collect()
    };
    let mut done = Released::default();
    for scope in scopes {
        let list_api: Api<IngestionEndpoint> = match scope {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        // Metadata only: an endpoint whose spec no longer matches the types is released
        // like any other.
        let endpoints = match list_api.list_metadata(&ListParams::default()).await {
            Ok(list) => list.items,
            // No CRD (deleted by hand before the uninstall): no endpoint to release.
            Err(kube::Error::Api(s)) if s.code == 404 => {
                warn!("the IngestionEndpoint CRD is not installed; nothing to release");
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        };
        for endpoint in endpoints {
            done.seen += 1;
            if !has_finalizer(&endpoint) {
                continue;
            }
            let deleting = endpoint.metadata.deletion_timestamp.is_some();
            if release_one(&client, endpoint).await? {
                done.released += 1;
                if deleting {
                    done.deleting += 1;
                }
            }
        }
    }
    if let Some(operator) = &config.operator {
        delete_lease(&client, operator).await?;
    }
    info!(
        released = done.released,
        deleting = done.deleting,
        seen = done.seen,
        "released the operator's finalizers"
    );
    Ok(done)
}

fn has_finalizer(meta: &PartialObjectMeta<IngestionEndpoint>) -> bool {
    meta.finalizers().iter().any(|f| f == FINALIZER)
}

/// Scales the operator's Deployment to zero. A Deployment already gone is fine.
async fn stop_operator(client: &Client, operator: &OperatorRef) -> Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), &operator.namespace);
    let patch = serde_json::json!({"spec": {"replicas": 0}});
    match api
        .patch_scale(
            &operator.deployment,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => {
            info!(namespace = %operator.namespace, deployment = %operator.deployment, "scaled the operator to zero");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => {
            info!(namespace = %operator.namespace, deployment = %operator.deployment, "operator Deployment already gone");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether nobody holds `lease` at `now`: no holder, or not renewed within its duration.
pub fn lease_is_free(lease: &Lease, now: Timestamp) -> bool {
    let Some(spec) = &lease.spec else {
        return true;
    };
    if spec.holder_identity.as_deref().is_none_or(str::is_empty) {
        return true;
    }
    match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(renewed), Some(secs)) => renewed
            .0
            .checked_add(SignedDuration::from_secs(i64::from(secs)))
            .is_ok_and(|expiry| expiry <= now),
        // A holder without a renewal time or duration: nothing to wait for.
        _ => true,
    }
}

/// Waits until the operator's Lease is free (released on shutdown, or expired).
async fn wait_for_lease(client: &Client, operator: &OperatorRef, timeout: Duration) -> Result<()> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &operator.namespace);
    let started = Instant::now();
    loop {
        let lease = api.get_opt(&operator.lease).await?;
        match lease {
            None => {
                debug!(lease = %operator.lease, "no Lease: no operator replica ever led");
                return Ok(());
            }
            Some(lease) if lease_is_free(&lease, Timestamp::now()) => {
                info!(lease = %operator.lease, "no operator replica holds the Lease");
                return Ok(());
            }
            Some(lease) => {
                let holder = lease
                    .spec
                    .and_then(|s| s.holder_identity)
                    .unwrap_or_default();
                if started.elapsed() >= timeout {
                    return Err(Error::Release(format!(
                        "`{holder}` still holds Lease {}/{} after {}s; the operator did not stop",
                        operator.namespace,
                        operator.lease,
                        timeout.as_secs()
                    )));
                }
                debug!(%holder, "waiting for the operator to release its Lease");
            }
        }
        tokio::time::sleep(LEASE_POLL).await;
    }
}

/// Deletes the operator's Lease: it was made at run time, not by the chart, so nothing
/// else would remove it on uninstall.
async fn delete_lease(client: &Client, operator: &OperatorRef) -> Result<()> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &operator.namespace);
    match api.delete(&operator.lease, &DeleteParams::default()).await {
        Ok(_) => {
            info!(lease = %operator.lease, "deleted the operator's Lease");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes the operator's finalizer from one endpoint, keeping any other finalizer.
/// `Ok(false)` when the endpoint is gone or no longer carries it.
async fn release_one(
    client: &Client,
    mut meta: PartialObjectMeta<IngestionEndpoint>,
) -> Result<bool> {
    let name = meta.name_any();
    let namespace = meta
        .namespace()
        .ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<IngestionEndpoint> = Api::namespaced(client.clone(), &namespace);
    for _ in 0..CONFLICT_RETRIES {
        if !has_finalizer(&meta) {
            return Ok(false);
        }
        let rest: Vec<&String> = meta
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .collect();
        // resourceVersion makes the write conditional: a finalizer added meanwhile by
        // someone else is never dropped by a stale list.
        let patch = serde_json::json!({
            "metadata": {"finalizers": rest, "resourceVersion": meta.resource_version()}
        });
        match api
            .patch_metadata(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                info!(%namespace, %name, "released the finalizer");
                return Ok(true);
            }
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(false),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                debug!(%namespace, %name, "endpoint changed; reading it again");
                match api.get_metadata_opt(&name).await? {
                    Some(fresh) => meta = fresh,
                    None => return Ok(false),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    warn!(%namespace, %name, "endpoint kept changing; finalizer not released");
    Err(Error::Release(format!(
        "IngestionEndpoint {namespace}/{name} changed {CONFLICT_RETRIES} times while its finalizer was being removed"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn t(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_772_355_600 + seconds).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn lease(holder: Option<&str>, renewed: Option<i64>, duration: Option<i32>) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                renew_time: renewed.map(|s| MicroTime(t(s))),
                lease_duration_seconds: duration,
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    #[test]
    fn a_lease_is_free_once_released_or_expired() {
        // Released on shutdown: the holder is cleared.
        assert!(lease_is_free(&lease(None, Some(0), Some(15)), t(1)));
        assert!(lease_is_free(&lease(Some(""), Some(0), Some(15)), t(1)));
        // Held and renewed within its duration: a replica may still be reconciling.
        assert!(!lease_is_free(
            &lease(Some("op-1"), Some(0), Some(15)),
            t(14)
        ));
        // Not renewed for a whole duration: its holder is gone.
        assert!(lease_is_free(
            &lease(Some("op-1"), Some(0), Some(15)),
            t(15)
        ));
        assert!(lease_is_free(&Lease::default(), t(0)));
    }
}
