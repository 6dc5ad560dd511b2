//! Leader election through a `coordination.k8s.io/v1` Lease, so that two operator
//! replicas never reconcile at once.
//!
//! The same protocol as client-go's leader election: the holder renews `renewTime`
//! every `renew_period`; another replica takes the Lease over only once `renewTime` is
//! older than `leaseDurationSeconds`. Writes use `replace` with the Lease's
//! `resourceVersion`, so of two replicas racing for it exactly one wins (the other gets
//! 409 Conflict). A leader that cannot renew for a whole lease duration stops: the
//! caller exits the process rather than risk two active controllers.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};

/// Lease parameters.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub identity: String,
    /// How long a Lease stays valid without renewal (client-go's default is 15 s).
    pub lease_duration: Duration,
    /// How often the holder renews, and a standby retries.
    pub renew_period: Duration,
}

/// Wait before renewing again after a failed renewal.
const RETRY_AFTER_FAILED_RENEWAL: Duration = Duration::from_secs(1);

pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaderElector {
    pub fn new(api: Api<Lease>, config: LeaseConfig) -> Self {
        Self { api, config }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// One attempt to become or stay the holder. `Ok(true)` when this replica holds the
    /// Lease afterwards.
    pub async fn try_acquire_or_renew(&self, now: Timestamp) -> Result<bool> {
        let me = &self.config.identity;
        let Some(lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(self.duration_seconds()),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let held_by_me = holder.as_deref() == Some(me.as_str());
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(renewed), Some(secs)) => {
                now > renewed
                    .0
                    .checked_add(SignedDuration::from_secs(i64::from(secs)))
                    .unwrap_or(Timestamp::MAX)
            }
            _ => true,
        };
        if !(held_by_me || holder.is_none() || expired) {
            return Ok(false);
        }
        let mut updated = lease.clone();
        let mut new_spec = spec.clone();
        if !held_by_me {
            new_spec.acquire_time = Some(MicroTime(now));
            new_spec.lease_transitions =
                Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
            info!(previous = ?holder, identity = %me, "taking over the leader lease");
        }
        new_spec.holder_identity = Some(me.clone());
        new_spec.renew_time = Some(MicroTime(now));
        new_spec.lease_duration_seconds = Some(self.duration_seconds());
        updated.spec = Some(new_spec);
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits until this replica is the leader. Returns when the winning attempt began:
    /// the `renewTime` it wrote is no earlier, so the Lease is valid at least until
    /// then plus the lease duration.
    pub async fn acquire(&self) -> Instant {
        loop {
            let attempt = Instant::now();
            match self.attempt(self.config.renew_period).await {
                Ok(true) => {
                    info!(identity = %self.config.identity, lease = %self.config.name, "acquired the leader lease");
                    return attempt;
                }
                Ok(false) => debug!("another replica leads; standing by"),
                Err(error) => warn!(%error, "leader election attempt failed"),
            }
            tokio::time::sleep_until(attempt + self.config.renew_period).await;
        }
    }

    /// Renews the Lease, held since an attempt begun at `renewed`, until it is lost;
    /// returns the reason.
    ///
    /// Each renewal must be answered before the Lease it renews runs out. A standby may
    /// take over from then on, so a renewal still in flight (an API server that accepted
    /// the request and never answered) counts as lost, not as pending.
    pub async fn hold(&self, mut renewed: Instant) -> Error {
        loop {
            tokio::time::sleep_until(renewed + self.config.renew_period).await;
            loop {
                let attempt = Instant::now();
                let expires = renewed + self.config.lease_duration;
                match self
                    .attempt(expires.saturating_duration_since(attempt))
                    .await
                {
                    Ok(true) => {
                        renewed = attempt;
                        break;
                    }
                    Ok(false) => {
                        return Error::Lease("another replica took over the lease".to_owned());
                    }
                    Err(error) => {
                        warn!(%error, "could not renew the leader lease");
                        if Instant::now() >= expires {
                            return Error::Lease(format!(
                                "lease not renewed for {:?}",
                                self.config.lease_duration
                            ));
                        }
                    }
                }
                // A failed renewal is tried again sooner than the period: the Lease is
                // running out.
                tokio::time::sleep(RETRY_AFTER_FAILED_RENEWAL.min(self.config.renew_period)).await;
            }
        }
    }

    /// [`Self::try_acquire_or_renew`] now, bounded by `within`.
    async fn attempt(&self, within: Duration) -> Result<bool> {
        tokio::time::timeout(within, self.try_acquire_or_renew(Timestamp::now()))
            .await
            .unwrap_or_else(|_| {
                Err(Error::Lease(format!(
                    "the API server did not answer within {within:?}"
                )))
            })
    }

    /// Gives the Lease up on shutdown so a standby takes over at once.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        if let Err(error) = self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            warn!(%error, "could not release the leader lease");
        }
    }
}
