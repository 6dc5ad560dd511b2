//! The endpoint's status conditions, computed from what the reconcile observed.
//!
//! Pure: the reconcile gathers one [`Check`] per concern and this module turns them into
//! `SecretReady`, `CredentialsReady`, `RepositoriesOwned`, `QueueReady`, `Available` and
//! the summary `Ready`, keeping each condition's `lastTransitionTime` when its status did
//! not change; and `KeyExpiring` (minted keys only), which `Ready` does not summarise: an
//! expiring key is a warning for the tenant's CI, not a fault of the endpoint.

use std::time::Duration;

use anchorpipe_crds::v1alpha1::IngestionEndpointStatus;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub const SECRET_READY: &str = "SecretReady";
pub const CREDENTIALS_READY: &str = "CredentialsReady";
pub const REPOSITORIES_OWNED: &str = "RepositoriesOwned";
pub const QUEUE_READY: &str = "QueueReady";
pub const AVAILABLE: &str = "Available";
pub const READY: &str = "Ready";
pub const KEY_EXPIRING: &str = "KeyExpiring";

/// What the `KeyExpiring` condition reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyExpiry {
    /// A key in use stops verifying within the warning time; `current` is the key to
    /// sign with.
    InUseExpiring {
        expiring: crate::keys::Expiring,
        current: String,
    },
    /// No key in use stops within the warning time (given).
    NoneExpiring(Duration),
    /// Key usage could not be read.
    Unknown(String),
}

/// How a `KeyExpiring` message about `key_id` starts (the Event is sent once per key).
pub fn key_expiring_prefix(key_id: &str) -> String {
    format!("key {key_id} ")
}

/// The message of the `KeyExpiring` condition and Event, for people running CI.
pub fn key_expiring_message(expiring: &crate::keys::Expiring, current: &str) -> String {
    let prefix = key_expiring_prefix(&expiring.key_id);
    let (id, stops, last) = (
        &expiring.key_id,
        expiring.stops_at,
        expiring.last_verified_at,
    );
    if expiring.current {
        format!(
            "{prefix}is still in use (last verified a report at {last}) and stops verifying at {stops}, a grace period after its scheduled rotation: once it is rotated, store the new key (status.currentKeyId) in the CI secrets that hold {id}, or rotate now with the anchorpipe.dev/rotate-key annotation and update them"
        )
    } else {
        format!(
            "{prefix}was replaced by {current} but still verified a report at {last}; it stops verifying at {stops}: store key {current} in the CI secrets that still hold {id}"
        )
    }
}

/// A duration as the spec writes it: `72h`, `90m`, `45s`.
fn duration_text(d: Duration) -> String {
    let secs = d.as_secs();
    if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// The `KeyExpiring` condition: True while a key in use is about to stop verifying.
pub fn key_expiring(
    expiry: &KeyExpiry,
    generation: Option<i64>,
    previous: &[Condition],
    now: Timestamp,
) -> Condition {
    let (status, reason, message) = match expiry {
        KeyExpiry::InUseExpiring { expiring, current } => (
            "True",
            "KeyInUseExpiring",
            key_expiring_message(expiring, current),
        ),
        KeyExpiry::NoneExpiring(warning) => (
            "False",
            "NoKeyInUseExpiring",
            format!(
                "no key that verified a report lately stops verifying within {}",
                duration_text(*warning)
            ),
        ),
        KeyExpiry::Unknown(error) => (
            "Unknown",
            "KeyUsageUnknown",
            format!("could not read which keys are in use: {error}"),
        ),
    };
    with_status(
        KEY_EXPIRING,
        status,
        reason,
        message,
        generation,
        previous,
        now,
    )
}

/// The outcome of one concern: whether it holds, a PascalCase reason and a message for
/// people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub ok: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Check {
    pub fn ok(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            ok: true,
            reason,
            message: message.into(),
        }
    }

    pub fn failed(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            ok: false,
            reason,
            message: message.into(),
        }
    }
}

/// Whether the ingest pods serve: at least one ready pod of the current rollout.
///
/// A Deployment's status lags its spec: right after the operator applies a change the
/// status still describes the previous generation (after scaling 2→1 it still counts 2
/// ready pods of the old size). As `kubectl rollout status` does, the status is only
/// trusted once the Deployment controller has observed the current generation and every
/// desired pod runs the current template; until then the endpoint is `RollingOut`.
pub fn availability(deployment: Option<&Deployment>, desired: i32) -> (Check, i32) {
    let Some(status) = deployment.and_then(|d| d.status.as_ref()) else {
        return (
            Check::failed(
                "Pending",
                "waiting for the ingest Deployment to report status",
            ),
            0,
        );
    };
    let ready = status.ready_replicas.unwrap_or(0);
    let generation = deployment.and_then(|d| d.metadata.generation).unwrap_or(0);
    let observed = status.observed_generation.unwrap_or(0);
    if observed < generation {
        return (
            Check::failed(
                "RollingOut",
                format!(
                    "waiting for the ingest Deployment to observe generation {generation} (it reports {observed})"
                ),
            ),
            ready,
        );
    }
    let updated = status.updated_replicas.unwrap_or(0);
    if updated != desired {
        return (
            Check::failed(
                "RollingOut",
                format!("{updated}/{desired} ingest pods run the current configuration"),
            ),
            ready,
        );
    }
    let available =
        status.conditions.iter().flatten().any(|c| {
            c.type_.as_deref() == Some("Available") && c.status.as_deref() == Some("True")
        });
    let check = if ready >= 1 && available {
        let message = if ready < desired {
            format!("{ready}/{desired} ingest pods ready")
        } else {
            format!("all {desired} ingest pods ready")
        };
        Check::ok("PodsReady", message)
    } else {
        Check::failed(
            "PodsNotReady",
            format!("{ready}/{desired} ingest pods ready; see the pods' events"),
        )
    };
    (check, ready)
}

fn condition(
    type_: &str,
    check: &Check,
    generation: Option<i64>,
    previous: &[Condition],
    now: Timestamp,
) -> Condition {
    let status = if check.ok { "True" } else { "False" };
    with_status(
        type_,
        status,
        check.reason,
        check.message.clone(),
        generation,
        previous,
        now,
    )
}

fn with_status(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    previous: &[Condition],
    now: Timestamp,
) -> Condition {
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// One check per condition type, in the order they are listed.
#[derive(Debug, Clone, Copy)]
pub struct Checks<'a> {
    pub secret: &'a Check,
    pub credentials: &'a Check,
    pub repositories: &'a Check,
    pub queue: &'a Check,
    pub available: &'a Check,
}

impl<'a> Checks<'a> {
    /// The same check for every concern (a refused spec).
    pub fn all(check: &'a Check) -> Self {
        Self {
            secret: check,
            credentials: check,
            repositories: check,
            queue: check,
            available: check,
        }
    }
}

/// The conditions. `Ready` is true when all the others are, otherwise it carries the
/// first failing one's reason and message.
pub fn conditions(
    checks: Checks<'_>,
    generation: Option<i64>,
    previous: &[Condition],
    now: Timestamp,
) -> Vec<Condition> {
    let checks = [
        (SECRET_READY, checks.secret),
        (CREDENTIALS_READY, checks.credentials),
        (REPOSITORIES_OWNED, checks.repositories),
        (QUEUE_READY, checks.queue),
        (AVAILABLE, checks.available),
    ];
    let ready = match checks.iter().find(|(_, c)| !c.ok) {
        None => Check::ok("Ready", "the endpoint accepts reports"),
        Some((type_, c)) => Check::failed(c.reason, format!("{type_}: {}", c.message)),
    };
    let mut out: Vec<Condition> = checks
        .iter()
        .map(|(t, c)| condition(t, c, generation, previous, now))
        .collect();
    out.push(condition(READY, &ready, generation, previous, now));
    out
}

/// Status for a spec the operator refuses (`InvalidSpec`, `TenantConflict`,
/// `ImageNotAllowed`): every condition false with the same reason, nothing else claimed.
pub fn refused(
    reason: &'static str,
    message: &str,
    generation: Option<i64>,
    previous: &IngestionEndpointStatus,
    now: Timestamp,
) -> IngestionEndpointStatus {
    let check = Check::failed(reason, message);
    IngestionEndpointStatus {
        observed_generation: generation,
        conditions: conditions(Checks::all(&check), generation, &previous.conditions, now),
        ..previous.clone()
    }
}

/// Whether every pod of the Deployment runs its current template: no pod of an earlier
/// rollout is left (so credentials only those pods used can be revoked).
pub fn rolled_out(deployment: &Deployment) -> bool {
    let Some(status) = deployment.status.as_ref() else {
        return false;
    };
    let desired = deployment.spec.replicas.unwrap_or(1);
    let generation = deployment.metadata.generation.unwrap_or(0);
    status.observed_generation.unwrap_or(0) >= generation
        && generation > 0
        && status.updated_replicas.unwrap_or(0) == desired
        && status.replicas.unwrap_or(0) == desired
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn now() -> Timestamp {
        "2026-05-01T12:00:00Z".parse().unwrap()
    }

    /// A Deployment of `desired` pods whose status has caught up with its spec.
    fn deployment(ready: i32, available: bool) -> Deployment {
        rollout(3, 3, 2, ready, available)
    }

    fn rollout(
        generation: i64,
        observed: i64,
        updated: i32,
        ready: i32,
        available: bool,
    ) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                generation: Some(generation),
                ..ObjectMeta::default()
            },
            status: Some(DeploymentStatus {
                observed_generation: Some(observed),
                updated_replicas: Some(updated),
                ready_replicas: Some(ready),
                conditions: Some(vec![DeploymentCondition {
                    type_: Some("Available".into()),
                    status: Some(if available { "True" } else { "False" }.into()),
                    ..DeploymentCondition::default()
                }]),
                ..DeploymentStatus::default()
            }),
            ..Deployment::default()
        }
    }

    #[test]
    fn availability_table() {
        let cases = [
            (None, false, 0),
            (Some(deployment(0, false)), false, 0),
            (Some(deployment(1, true)), true, 1),
            (Some(deployment(2, true)), true, 2),
        ];
        for (d, ok, ready) in cases {
            let (check, n) = availability(d.as_ref(), 2);
            assert_eq!((check.ok, n), (ok, ready), "{check:?}");
        }
    }

    #[test]
    fn a_status_that_has_not_caught_up_is_not_trusted() {
        // Scaled 2→1: the Deployment controller has not seen generation 4 yet and still
        // reports the two ready pods of generation 3.
        let (check, ready) = availability(Some(&rollout(4, 3, 2, 2, true)), 1);
        assert!(!check.ok, "{check:?}");
        assert_eq!(check.reason, "RollingOut");
        assert_eq!(ready, 2);
        // Observed, but the surplus pod is still counted as updated.
        let (check, _) = availability(Some(&rollout(4, 4, 2, 2, true)), 1);
        assert_eq!((check.ok, check.reason), (false, "RollingOut"));
        // A template change half rolled out: old pods serve, the new ones are not all up.
        let (check, _) = availability(Some(&rollout(5, 5, 1, 2, true)), 2);
        assert_eq!((check.ok, check.reason), (false, "RollingOut"));
        // Settled.
        let (check, ready) = availability(Some(&rollout(4, 4, 1, 1, true)), 1);
        assert_eq!((check.ok, ready), (true, 1), "{check:?}");
        // A Deployment that never reported a generation is still waited for.
        let mut unobserved = rollout(1, 1, 1, 1, true);
        if let Some(s) = unobserved.status.as_mut() {
            s.observed_generation = None;
        }
        assert!(!availability(Some(&unobserved), 1).0.ok);
    }

    /// Every check `ok` but the queue's.
    fn checks<'a>(ok: &'a Check, queue: &'a Check) -> Checks<'a> {
        Checks {
            queue,
            ..Checks::all(ok)
        }
    }

    #[test]
    fn ready_summarises_the_first_failure() {
        let ok = Check::ok("Fine", "ok");
        let down = Check::failed("BrokerUnavailable", "connection refused");
        let all = conditions(checks(&ok, &down), Some(3), &[], now());
        let ready = all.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason, "BrokerUnavailable");
        assert!(ready.message.starts_with("QueueReady:"));
        assert!(all.iter().all(|c| c.observed_generation == Some(3)));
        let all = conditions(checks(&ok, &ok), Some(3), &[], now());
        assert!(all.iter().all(|c| c.status == "True"));
    }

    #[test]
    fn transition_time_moves_only_on_change() {
        let ok = Check::ok("Fine", "ok");
        let first = conditions(Checks::all(&ok), Some(1), &[], now());
        let later: Timestamp = "2026-05-01T13:00:00Z".parse().unwrap();
        let same = conditions(Checks::all(&ok), Some(2), &first, later);
        assert_eq!(same[0].last_transition_time, Time(now()));
        let down = Check::failed("X", "y");
        let changed = conditions(
            Checks {
                secret: &down,
                ..Checks::all(&ok)
            },
            Some(2),
            &first,
            later,
        );
        assert_eq!(changed[0].last_transition_time, Time(later));
        assert_eq!(changed[1].last_transition_time, Time(now()));
    }

    #[test]
    fn key_expiring_is_true_only_for_a_key_in_use_and_unknown_without_usage() {
        let expiring = crate::keys::Expiring {
            key_id: "k20260301-090000-aaaaaa".to_owned(),
            stops_at: "2026-03-01T21:00:00Z".parse().unwrap(),
            last_verified_at: "2026-03-01T19:30:00Z".parse().unwrap(),
            current: false,
        };
        let c = key_expiring(
            &KeyExpiry::InUseExpiring {
                expiring,
                current: "k20260301-190000-bbbbbb".to_owned(),
            },
            Some(1),
            &[],
            now(),
        );
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "KeyInUseExpiring")
        );
        assert!(
            c.message
                .starts_with("key k20260301-090000-aaaaaa was replaced by k20260301-190000-bbbbbb"),
            "{}",
            c.message
        );
        let c = key_expiring(
            &KeyExpiry::NoneExpiring(Duration::from_secs(5400)),
            Some(1),
            &[],
            now(),
        );
        assert_eq!(c.status, "False");
        assert!(c.message.ends_with("within 90m"), "{}", c.message);
        let c = key_expiring(
            &KeyExpiry::Unknown("database: timed out".into()),
            Some(1),
            &[],
            now(),
        );
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("Unknown", "KeyUsageUnknown")
        );
    }
}
