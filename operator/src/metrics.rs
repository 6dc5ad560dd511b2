//! Prometheus metrics of the operator.
//!
//! Labels are enums, so their values are bounded by the type: outcome kinds and reasons,
//! never object names or error text (those go to logs and Events).

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Outcome {
    Success,
    TransientError,
    PermanentError,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: Outcome,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum RotationReason {
    Initial,
    Schedule,
    Requested,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RotationLabels {
    pub reason: RotationReason,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum BrokerOperation {
    Declare,
    Delete,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum BrokerOutcome {
    Ok,
    Error,
    Timeout,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerLabels {
    pub operation: BrokerOperation,
    pub outcome: BrokerOutcome,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ReleaseReason {
    /// The cleanup deadline passed with the broker still failing.
    Timeout,
    /// The skip annotation was set.
    Override,
    /// The object no longer deserializes, so its queues cannot be named.
    Unreadable,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReleaseLabels {
    pub reason: ReleaseReason,
}

/// All operator metrics, registered in one registry.
pub struct Metrics {
    pub registry: Registry,
    pub reconciliations: Family<OutcomeLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub key_rotations: Family<RotationLabels, Counter>,
    pub keys_removed: Counter,
    pub key_expiry_warnings: Counter,
    pub broker_operations: Family<BrokerLabels, Counter>,
    pub finalizers_released_without_cleanup: Family<ReleaseLabels, Counter>,
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("anchorpipe_operator");
        let reconciliations = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "reconciliations",
            "Reconciliations of IngestionEndpoints by outcome",
            reconciliations.clone(),
        );
        // 10 ms .. ~80 s: a reconcile is a handful of API calls plus a broker round trip,
        // up to the broker timeout.
        let reconcile_duration = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.0, 14),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            reconcile_duration.clone(),
        );
        let key_rotations = Family::<RotationLabels, Counter>::default();
        registry.register(
            "key_mints",
            "HMAC keys minted, by reason",
            key_rotations.clone(),
        );
        let keys_removed = Counter::default();
        registry.register(
            "keys_removed",
            "HMAC keys removed after their grace period",
            keys_removed.clone(),
        );
        let key_expiry_warnings = Counter::default();
        registry.register(
            "key_expiry_warnings",
            "Warnings that an HMAC key still in use is about to stop verifying",
            key_expiry_warnings.clone(),
        );
        let broker_operations = Family::<BrokerLabels, Counter>::default();
        registry.register(
            "broker_operations",
            "Broker topology operations by kind and outcome",
            broker_operations.clone(),
        );
        let finalizers_released_without_cleanup = Family::<ReleaseLabels, Counter>::default();
        registry.register(
            "finalizers_released_without_cleanup",
            "Endpoints deleted while their broker queues could not be removed",
            finalizers_released_without_cleanup.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        Self {
            registry,
            reconciliations,
            reconcile_duration,
            key_rotations,
            keys_removed,
            key_expiry_warnings,
            broker_operations,
            finalizers_released_without_cleanup,
            leader,
        }
    }
}

impl Metrics {
    pub fn reconciled(&self, outcome: Outcome, took: Duration) {
        self.reconciliations
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    pub fn broker(&self, operation: BrokerOperation, outcome: BrokerOutcome) {
        self.broker_operations
            .get_or_create(&BrokerLabels { operation, outcome })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded_kinds() {
        let m = Metrics::default();
        m.reconciled(Outcome::TransientError, Duration::from_millis(20));
        m.broker(BrokerOperation::Declare, BrokerOutcome::Timeout);
        let text = m.encode().unwrap();
        assert!(
            text.contains(
                "anchorpipe_operator_reconciliations_total{outcome=\"TransientError\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("operation=\"Declare\""), "{text}");
    }
}
