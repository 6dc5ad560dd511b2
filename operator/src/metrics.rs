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

/// The HTTP method of a Kubernetes API request (watches and lists are `Get`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ApiVerb {
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Other,
}

impl ApiVerb {
    pub fn of(method: &http::Method) -> Self {
        match *method {
            http::Method::GET => Self::Get,
            http::Method::POST => Self::Post,
            http::Method::PUT => Self::Put,
            http::Method::PATCH => Self::Patch,
            http::Method::DELETE => Self::Delete,
            _ => Self::Other,
        }
    }
}

/// The resource a Kubernetes API request is about: the kinds the operator touches, and
/// `Other` for anything else, so the label stays bounded whatever the path.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ApiResource {
    IngestionEndpoint,
    Secret,
    ConfigMap,
    Deployment,
    Service,
    Ingress,
    PodDisruptionBudget,
    Event,
    Lease,
    Other,
}

impl ApiResource {
    /// Reads the resource from a request path: `/api/v1/namespaces/ns/secrets/name`,
    /// `/apis/group/version/ingestionendpoints`, and so on.
    pub fn of_path(path: &str) -> Self {
        let mut segments = path.trim_start_matches('/').split('/');
        // Skip `api/<version>` or `apis/<group>/<version>`.
        let skip = match segments.next() {
            Some("api") => 1,
            Some("apis") => 2,
            _ => return Self::Other,
        };
        let mut rest = segments.skip(skip);
        let mut plural = rest.next();
        if plural == Some("namespaces") {
            // `namespaces/<ns>/<plural>`; a bare `namespaces[/<ns>]` is a Namespace.
            plural = rest.nth(1);
        }
        match plural {
            Some("ingestionendpoints") => Self::IngestionEndpoint,
            Some("secrets") => Self::Secret,
            Some("configmaps") => Self::ConfigMap,
            Some("deployments") => Self::Deployment,
            Some("services") => Self::Service,
            Some("ingresses") => Self::Ingress,
            Some("poddisruptionbudgets") => Self::PodDisruptionBudget,
            Some("events") => Self::Event,
            Some("leases") => Self::Lease,
            _ => Self::Other,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRequestLabels {
    pub verb: ApiVerb,
    pub resource: ApiResource,
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
    /// Requests sent to the Kubernetes API server, counted as they leave the client.
    pub api_requests: Family<ApiRequestLabels, Counter>,
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
        let api_requests = Family::<ApiRequestLabels, Counter>::default();
        registry.register(
            "api_requests",
            "Requests to the Kubernetes API server by method and resource (watches and lists are Get)",
            api_requests.clone(),
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
            api_requests,
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

    /// Counts one request to the Kubernetes API server.
    pub fn api_request(&self, method: &http::Method, path: &str) {
        self.api_requests
            .get_or_create(&ApiRequestLabels {
                verb: ApiVerb::of(method),
                resource: ApiResource::of_path(path),
            })
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

    #[test]
    fn api_requests_are_counted_by_method_and_resource() {
        let cases = [
            ("/api/v1/namespaces/ns/secrets/a-hmac", ApiResource::Secret),
            ("/api/v1/secrets", ApiResource::Secret),
            ("/api/v1/namespaces/ns/configmaps", ApiResource::ConfigMap),
            (
                "/api/v1/namespaces/ns/services/a-ingest",
                ApiResource::Service,
            ),
            (
                "/apis/apps/v1/namespaces/ns/deployments/a-ingest",
                ApiResource::Deployment,
            ),
            (
                "/apis/anchorpipe.dev/v1alpha1/namespaces/ns/ingestionendpoints/a/status",
                ApiResource::IngestionEndpoint,
            ),
            (
                "/apis/anchorpipe.dev/v1alpha1/ingestionendpoints",
                ApiResource::IngestionEndpoint,
            ),
            (
                "/apis/events.k8s.io/v1/namespaces/ns/events",
                ApiResource::Event,
            ),
            (
                "/apis/coordination.k8s.io/v1/namespaces/default/leases/op",
                ApiResource::Lease,
            ),
            (
                "/apis/policy/v1/namespaces/ns/poddisruptionbudgets/x",
                ApiResource::PodDisruptionBudget,
            ),
            (
                "/apis/networking.k8s.io/v1/namespaces/ns/ingresses/x",
                ApiResource::Ingress,
            ),
            ("/api/v1/namespaces/ns", ApiResource::Other),
            ("/api/v1/namespaces", ApiResource::Other),
            ("/version", ApiResource::Other),
            ("", ApiResource::Other),
        ];
        for (path, want) in cases {
            assert_eq!(ApiResource::of_path(path), want, "{path}");
        }
        let m = Metrics::default();
        m.api_request(&http::Method::PATCH, "/api/v1/namespaces/ns/secrets/a");
        m.api_request(&http::Method::PATCH, "/api/v1/namespaces/ns/secrets/b");
        m.api_request(
            &http::Method::GET,
            "/apis/coordination.k8s.io/v1/namespaces/d/leases/l",
        );
        let text = m.encode().unwrap();
        assert!(
            text.contains(
                "anchorpipe_operator_api_requests_total{verb=\"Patch\",resource=\"Secret\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "anchorpipe_operator_api_requests_total{verb=\"Get\",resource=\"Lease\"} 1"
            ),
            "{text}"
        );
    }
}
