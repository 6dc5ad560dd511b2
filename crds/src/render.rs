//! From an `IngestionEndpoint` spec to what the tenant's pods and broker need.
//!
//! Pure functions only: the operator calls them inside its reconcile, and local runs or
//! tests can render the same config from a spec without a cluster. They apply the
//! defaults that depend on other fields (tenant, queue names), divide the endpoint-wide
//! rate limits among the replicas, and re-check every rule the CRD schema enforces, since
//! an object stored before a rule existed (or written with validation off) still reaches
//! the operator.

use std::time::Duration;

use uuid::Uuid;

use crate::config::{
    BrokerTopology, IngestConfig, Limit, LimitsConfig, OutboxConfig, ProtectionConfig, QueueType,
    RateLimitConfig, SignatureConfig, StoreConfig,
};
use crate::v1alpha1::{
    DEFAULT_EXPIRY_WARNING, DEFAULT_GRACE_PERIOD, HmacSpec, IngestionEndpointSpec, LimitSpec,
    QueueKind,
};

/// Longest tenant name within a namespace (`spec.tenant` or the object name).
pub const MAX_TENANT_LEN: usize = 40;

/// Longest tenant id (`<namespace>.<tenant>`): it is a label value (63 characters) on
/// every object the operator creates.
pub const MAX_TENANT_ID_LEN: usize = 63;

/// The shortest rotation period accepted; anything shorter is almost certainly a typo
/// and would churn the Secret.
pub const MIN_ROTATION_PERIOD: Duration = Duration::from_secs(3600);

/// A spec that the operator cannot act on. Permanent: only an edit of the object fixes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.{field}: {message}")]
pub struct SpecError {
    pub field: &'static str,
    pub message: String,
}

fn invalid<T>(field: &'static str, message: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError {
        field,
        message: message.into(),
    })
}

/// The tenant's name within its namespace: `spec.tenant`, or the object's name.
pub fn tenant<'a>(spec: &'a IngestionEndpointSpec, object_name: &'a str) -> &'a str {
    spec.tenant.as_deref().unwrap_or(object_name)
}

/// The tenant id, unique in the cluster: `<namespace>.<tenant>`.
///
/// Namespaces and tenant names are DNS labels, which hold no dot, so two different
/// (namespace, tenant) pairs never make the same id, and no tenant can choose a name
/// that another namespace's tenant will derive. Every broker name and database row of
/// the tenant hangs off this id.
pub fn tenant_id(spec: &IngestionEndpointSpec, namespace: &str, object_name: &str) -> String {
    format!("{namespace}.{}", tenant(spec, object_name))
}

/// How minted keys are rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    /// A new key is minted when the current one is this old; `None`: only on demand.
    pub rotation_period: Option<Duration>,
    /// A replaced key keeps verifying this long after its successor was minted.
    pub grace_period: Duration,
    /// Warn this long before a key still in use stops verifying.
    pub expiry_warning: Duration,
}

/// The rotation policy of minted keys, or `None` when the keys come from a user Secret.
pub fn rotation_policy(hmac: &HmacSpec) -> Result<Option<RotationPolicy>, SpecError> {
    if hmac.secret_ref.is_some() {
        if hmac.rotation_period.is_some()
            || hmac.grace_period.is_some()
            || hmac.expiry_warning.is_some()
        {
            return invalid(
                "hmac",
                "rotationPeriod, gracePeriod and expiryWarning apply to minted keys only; remove them when secretRef is set",
            );
        }
        return Ok(None);
    }
    let rotation_period = hmac
        .rotation_period
        .as_deref()
        .map(|text| parse_duration("hmac.rotationPeriod", text))
        .transpose()?;
    let grace_period = parse_duration(
        "hmac.gracePeriod",
        hmac.grace_period.as_deref().unwrap_or(DEFAULT_GRACE_PERIOD),
    )?;
    let expiry_warning = parse_duration(
        "hmac.expiryWarning",
        hmac.expiry_warning
            .as_deref()
            .unwrap_or(DEFAULT_EXPIRY_WARNING),
    )?;
    if let Some(rotation_period) = rotation_period {
        if rotation_period < MIN_ROTATION_PERIOD {
            return invalid("hmac.rotationPeriod", "must be at least 1h");
        }
        if grace_period >= rotation_period {
            return invalid(
                "hmac.gracePeriod",
                "must be shorter than rotationPeriod, or two old keys would be valid at once",
            );
        }
    }
    Ok(Some(RotationPolicy {
        rotation_period,
        grace_period,
        expiry_warning,
    }))
}

/// Parses the duration syntax the CRD allows: digits followed by `h`, `m` or `s`,
/// repeated (`720h`, `1h30m`).
pub fn parse_duration(field: &'static str, text: &str) -> Result<Duration, SpecError> {
    let bad = || {
        invalid(
            field,
            format!("`{text}` is not a duration such as 720h or 1h30m"),
        )
    };
    if text.is_empty() {
        return bad();
    }
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for c in text.chars() {
        if let Some(digit) = c.to_digit(10) {
            let n = number.unwrap_or(0);
            number = match n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(digit)))
            {
                Some(n) => Some(n),
                None => return bad(),
            };
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return bad(),
        };
        let Some(n) = number.take() else {
            return bad();
        };
        total = match n.checked_mul(unit).and_then(|s| total.checked_add(s)) {
            Some(t) => t,
            None => return bad(),
        };
    }
    if number.is_some() {
        return bad();
    }
    Ok(Duration::from_secs(total))
}

/// One pod's share of an endpoint-wide limit with `replicas` pods.
///
/// Rounded up, and never below 1: a tenant never gets less than it asked for, and the
/// overshoot is at most `replicas - 1` requests per minute (and burst), which is small
/// against any real limit. Rounding down instead could give a pod a limit of 0.
pub fn per_pod_share(limit: LimitSpec, replicas: i32) -> Limit {
    let n = u32::try_from(replicas.max(1)).unwrap_or(1);
    Limit {
        requests_per_minute: limit.requests_per_minute.div_ceil(n).max(1),
        burst: limit.burst.div_ceil(n).max(1),
    }
}

/// The tenant's broker topology: the conventional names for the tenant, overridden by
/// whatever `spec.queue` sets.
pub fn broker_topology(spec: &IngestionEndpointSpec, tenant: &str) -> BrokerTopology {
    let defaults = BrokerTopology::for_tenant(tenant);
    let q = &spec.queue;
    BrokerTopology {
        exchange: q.exchange.clone().unwrap_or(defaults.exchange),
        routing_key: q.routing_key.clone().unwrap_or(defaults.routing_key),
        queue: q.name.clone().unwrap_or(defaults.queue),
        queue_type: match q.queue_type {
            QueueKind::Quorum => QueueType::Quorum,
            QueueKind::Classic => QueueType::Classic,
        },
        message_ttl_ms: q.message_ttl_seconds.and_then(|s| s.checked_mul(1000)),
        dead_letter_exchange: q
            .dead_letter_exchange
            .clone()
            .unwrap_or(defaults.dead_letter_exchange),
        dead_letter_queue: q
            .dead_letter_queue
            .clone()
            .unwrap_or(defaults.dead_letter_queue),
    }
}

fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

/// Prefix of every queue name of tenant `id`.
pub fn queue_prefix(id: &str) -> String {
    format!("anchorpipe.{id}.")
}

/// Prefix of every routing key of tenant `id`.
pub fn routing_key_prefix(id: &str) -> String {
    format!("tenant.{id}.")
}

/// Refuses broker names that could belong to another tenant.
///
/// Queues and routing keys are per tenant: they must carry the tenant's own prefix, so
/// no endpoint can name, bind, consume or delete another tenant's queue, or bind its
/// queue with another tenant's routing key. (Tenant ids hold exactly one dot and AMQP
/// names here allow no wildcards, so one tenant's prefix never covers another's names.)
/// Exchanges are shared by design; only RabbitMQ's reserved `amq.` ones are refused.
pub fn owned_broker_names(topology: &BrokerTopology, id: &str) -> Result<(), SpecError> {
    let queues = queue_prefix(id);
    for (field, name) in [
        ("queue.name", &topology.queue),
        ("queue.deadLetterQueue", &topology.dead_letter_queue),
    ] {
        if !name.starts_with(&queues) || name.len() == queues.len() {
            return invalid(
                field,
                format!(
                    "`{name}` is not one of this tenant's queues: queue names must start with `{queues}`"
                ),
            );
        }
    }
    let keys = routing_key_prefix(id);
    if !topology.routing_key.starts_with(&keys) || topology.routing_key.len() == keys.len() {
        return invalid(
            "queue.routingKey",
            format!(
                "`{}` is not one of this tenant's routing keys: they must start with `{keys}`",
                topology.routing_key
            ),
        );
    }
    if topology.queue == topology.dead_letter_queue {
        return invalid(
            "queue.deadLetterQueue",
            "must differ from the queue, or rejected messages would return to it",
        );
    }
    for (field, name) in [
        ("queue.exchange", &topology.exchange),
        ("queue.deadLetterExchange", &topology.dead_letter_exchange),
    ] {
        if name.starts_with("amq.") {
            return invalid(
                field,
                format!("`{name}`: exchange names starting with 'amq.' are reserved by RabbitMQ"),
            );
        }
    }
    Ok(())
}

/// Checks the rules the CRD schema enforces that the rendering relies on, and those it
/// cannot express because they depend on the namespace: the tenant id's length and the
/// broker names, which must belong to this tenant.
pub fn validate(
    spec: &IngestionEndpointSpec,
    namespace: &str,
    object_name: &str,
) -> Result<(), SpecError> {
    let tenant = tenant(spec, object_name);
    if tenant.len() > MAX_TENANT_LEN || !is_dns_label(tenant) {
        return invalid(
            "tenant",
            format!(
                "`{tenant}` must be 1 to {MAX_TENANT_LEN} lowercase letters, digits or '-' (set spec.tenant when the object name does not fit)"
            ),
        );
    }
    let id = tenant_id(spec, namespace, object_name);
    if id.len() > MAX_TENANT_ID_LEN {
        return invalid(
            "tenant",
            format!(
                "the tenant id `{id}` (namespace.tenant) is longer than {MAX_TENANT_ID_LEN} characters; set a shorter spec.tenant"
            ),
        );
    }
    owned_broker_names(&broker_topology(spec, &id), &id)?;
    repositories(spec)?;
    rotation_policy(&spec.hmac)?;
    if !spec.signatures.legacy && !spec.signatures.standard_webhooks {
        return invalid(
            "signatures",
            "at least one signature scheme must be enabled",
        );
    }
    if !(1..=50).contains(&spec.replicas) {
        return invalid("replicas", "must be between 1 and 50");
    }
    let rl = &spec.rate_limit;
    for (field, limit) in [
        ("rateLimit.perRepository", rl.per_repository),
        ("rateLimit.perEndpoint", rl.per_endpoint),
    ] {
        if limit.requests_per_minute == 0 || limit.burst == 0 {
            return invalid(field, "requestsPerMinute and burst must be at least 1");
        }
    }
    if rl.per_repository.requests_per_minute > rl.per_endpoint.requests_per_minute {
        return invalid(
            "rateLimit.perRepository",
            "requestsPerMinute cannot exceed perEndpoint.requestsPerMinute",
        );
    }
    if let Some(ingress) = &spec.ingress
        && (ingress.host.is_empty()
            || ingress.host.len() > 253
            || !ingress.host.split('.').all(is_dns_label))
    {
        return invalid(
            "ingress.host",
            "must be a lowercase DNS name such as reports.example.com",
        );
    }
    Ok(())
}

/// The repository ids, parsed and de-duplicated in their original order.
pub fn repositories(spec: &IngestionEndpointSpec) -> Result<Vec<Uuid>, SpecError> {
    if spec.repositories.is_empty() {
        return invalid("repositories", "must list at least one repository UUID");
    }
    let mut out: Vec<Uuid> = Vec::with_capacity(spec.repositories.len());
    for text in &spec.repositories {
        let Ok(id) = Uuid::parse_str(text) else {
            return invalid("repositories", format!("`{text}` is not a UUID"));
        };
        if !out.contains(&id) {
            out.push(id);
        }
    }
    Ok(out)
}

/// Renders the config one ingest pod reads, for the spec's replica count.
pub fn ingest_config(
    spec: &IngestionEndpointSpec,
    namespace: &str,
    object_name: &str,
) -> Result<IngestConfig, SpecError> {
    validate(spec, namespace, object_name)?;
    let id = tenant_id(spec, namespace, object_name);
    let tenant = id.as_str();
    let max_body_bytes = spec.limits.max_body_bytes;
    let defaults = LimitsConfig::default();
    let config = IngestConfig {
        tenant: tenant.to_owned(),
        repositories: repositories(spec)?,
        signatures: SignatureConfig {
            legacy: spec.signatures.legacy,
            standard_webhooks: spec.signatures.standard_webhooks,
            ..SignatureConfig::default()
        },
        rate_limit: RateLimitConfig {
            per_repository: per_pod_share(spec.rate_limit.per_repository, spec.replicas),
            per_endpoint: per_pod_share(spec.rate_limit.per_endpoint, spec.replicas),
        },
        limits: LimitsConfig {
            max_body_bytes,
            max_tests: spec.limits.max_tests,
            // Keep the pod's memory bound unless one report alone is larger than it.
            max_in_flight_bytes: defaults.max_in_flight_bytes.max(max_body_bytes),
        },
        broker: broker_topology(spec, tenant),
        outbox: OutboxConfig::default(),
        protection: ProtectionConfig::default(),
        store: StoreConfig::default(),
    };
    // The contract's own checks: a spec that passes ours but not the reader's would
    // crash-loop every pod, so refuse it here where the message reaches the user.
    config.validate().map_err(|e| SpecError {
        field: "(rendered config)",
        message: e.to_string(),
    })?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1alpha1::{IngressSpec, SecretRef};

    fn spec() -> IngestionEndpointSpec {
        serde_json::from_value(serde_json::json!({
            "repositories": ["7d3c1c8e-6a4c-4b55-9d84-2f1c0f0b8f61"]
        }))
        .unwrap()
    }

    #[test]
    fn a_zero_grace_period_is_allowed_and_revokes_at_once() {
        // Deliberately no minimum: `0s` is how an owner retires a leaked key on rotation.
        let hmac = HmacSpec {
            grace_period: Some("0s".into()),
            ..HmacSpec::default()
        };
        let policy = rotation_policy(&hmac).unwrap().unwrap();
        assert_eq!(policy.grace_period, Duration::ZERO);
    }

    #[test]
    fn a_grace_period_needs_no_rotation_period_but_must_be_shorter_than_one() {
        // On-demand rotation only: any grace period, even a long one, is fine.
        let on_demand = HmacSpec {
            grace_period: Some("720h".into()),
            ..HmacSpec::default()
        };
        assert_eq!(
            rotation_policy(&on_demand)
                .unwrap()
                .unwrap()
                .rotation_period,
            None
        );
        let scheduled = HmacSpec {
            rotation_period: Some("48h".into()),
            grace_period: Some("12h".into()),
            expiry_warning: Some("6h".into()),
            ..HmacSpec::default()
        };
        let policy = rotation_policy(&scheduled).unwrap().unwrap();
        assert_eq!(policy.rotation_period, Some(Duration::from_secs(48 * 3600)));
        assert_eq!(policy.expiry_warning, Duration::from_secs(6 * 3600));
    }

    #[test]
    fn minimal_spec_gets_documented_defaults() {
        let spec = spec();
        assert_eq!(spec.replicas, 2);
        assert_eq!(spec.rate_limit.per_repository.requests_per_minute, 60);
        assert_eq!(spec.rate_limit.per_repository.burst, 10);
        assert_eq!(spec.rate_limit.per_endpoint.requests_per_minute, 600);
        assert_eq!(spec.rate_limit.per_endpoint.burst, 100);
        assert!(spec.signatures.legacy && spec.signatures.standard_webhooks);
        assert_eq!(spec.limits.max_body_bytes, 50 * 1024 * 1024);
        assert_eq!(spec.limits.max_tests, 10_000);
        assert_eq!(
            spec.queue.deletion_policy,
            crate::v1alpha1::DeletionPolicy::Retain
        );
        let policy = rotation_policy(&spec.hmac).unwrap().unwrap();
        // No scheduled rotation unless asked for: a key in a CI secret store keeps working.
        assert_eq!(policy.rotation_period, None);
        assert_eq!(policy.grace_period, Duration::from_secs(24 * 3600));
        assert_eq!(policy.expiry_warning, Duration::from_secs(72 * 3600));

        let config = ingest_config(&spec, "ci", "acme").unwrap();
        assert_eq!(config.tenant, "ci.acme");
        assert_eq!(config.broker, BrokerTopology::for_tenant("ci.acme"));
        assert_eq!(config.limits, LimitsConfig::default());
        // Two replicas by default: each pod enforces half.
        assert_eq!(config.rate_limit.per_endpoint.requests_per_minute, 300);
        assert_eq!(config.rate_limit.per_repository.burst, 5);
    }

    #[test]
    fn per_pod_share_for_replica_counts() {
        let limit = LimitSpec {
            requests_per_minute: 600,
            burst: 10,
        };
        // (replicas, per-pod rpm, per-pod burst): rounded up, so N pods together allow at
        // least the endpoint's figure and at most N-1 more.
        let cases = [(1, 600, 10), (2, 300, 5), (3, 200, 4), (7, 86, 2)];
        for (replicas, rpm, burst) in cases {
            let share = per_pod_share(limit, replicas);
            assert_eq!(
                (share.requests_per_minute, share.burst),
                (rpm, burst),
                "replicas={replicas}"
            );
            let total = share.requests_per_minute * replicas as u32;
            assert!(total >= 600 && total < 600 + replicas as u32, "{total}");
        }
        let tiny = LimitSpec {
            requests_per_minute: 1,
            burst: 1,
        };
        assert_eq!(per_pod_share(tiny, 7).requests_per_minute, 1);
        assert_eq!(per_pod_share(tiny, 7).burst, 1);
    }

    #[test]
    fn durations_parse_like_the_crd_pattern() {
        let ok = [
            ("720h", 720 * 3600),
            ("1h30m", 5400),
            ("90s", 90),
            ("0h", 0),
        ];
        for (text, secs) in ok {
            assert_eq!(
                parse_duration("f", text).unwrap(),
                Duration::from_secs(secs)
            );
        }
        for text in ["", "h", "30d", "1.5h", "10", "-1h", "99999999999999999999h"] {
            assert!(parse_duration("f", text).is_err(), "{text}");
        }
    }

    #[test]
    fn invalid_specs_name_the_field() {
        type Mutation = Box<dyn Fn(&mut IngestionEndpointSpec)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("tenant", Box::new(|s| s.tenant = Some("Acme".into()))),
            ("repositories", Box::new(|s| s.repositories.clear())),
            (
                "repositories",
                Box::new(|s| s.repositories = vec!["nope".into()]),
            ),
            (
                "hmac.gracePeriod",
                Box::new(|s| {
                    s.hmac.rotation_period = Some("720h".into());
                    s.hmac.grace_period = Some("720h".into());
                }),
            ),
            (
                "hmac.expiryWarning",
                Box::new(|s| s.hmac.expiry_warning = Some("3d".into())),
            ),
            (
                "hmac",
                Box::new(|s| {
                    s.hmac.secret_ref = Some(SecretRef { name: "k".into() });
                    s.hmac.expiry_warning = Some("1h".into());
                }),
            ),
            (
                "hmac.rotationPeriod",
                Box::new(|s| s.hmac.rotation_period = Some("30m".into())),
            ),
            (
                "hmac",
                Box::new(|s| {
                    s.hmac.secret_ref = Some(SecretRef { name: "k".into() });
                    s.hmac.rotation_period = Some("48h".into());
                }),
            ),
            (
                "signatures",
                Box::new(|s| {
                    s.signatures.legacy = false;
                    s.signatures.standard_webhooks = false;
                }),
            ),
            ("replicas", Box::new(|s| s.replicas = 0)),
            (
                "rateLimit.perRepository",
                Box::new(|s| s.rate_limit.per_repository.requests_per_minute = 10_000),
            ),
            (
                "rateLimit.perEndpoint",
                Box::new(|s| s.rate_limit.per_endpoint.burst = 0),
            ),
            (
                "ingress.host",
                Box::new(|s| {
                    s.ingress = Some(IngressSpec {
                        host: "https://x.example.com".into(),
                        class_name: None,
                        tls_secret_name: None,
                    })
                }),
            ),
        ];
        for (field, mutate) in cases {
            let mut s = spec();
            mutate(&mut s);
            let err = ingest_config(&s, "ci", "acme").unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn queue_overrides_and_ttl() {
        let mut s = spec();
        s.tenant = Some("team-a".into());
        s.queue.name = Some("anchorpipe.ci.team-a.custom".into());
        s.queue.message_ttl_seconds = Some(60);
        s.queue.queue_type = QueueKind::Classic;
        let id = tenant_id(&s, "ci", "ignored");
        assert_eq!(id, "ci.team-a");
        let t = broker_topology(&s, &id);
        assert_eq!(t.queue, "anchorpipe.ci.team-a.custom");
        assert_eq!(t.dead_letter_queue, "anchorpipe.ci.team-a.reports.dlq");
        assert_eq!(t.message_ttl_ms, Some(60_000));
        assert_eq!(t.queue_type, QueueType::Classic);
        assert!(ingest_config(&s, "ci", "ignored").is_ok());
    }

    #[test]
    fn the_same_name_in_two_namespaces_is_two_tenants() {
        let s = spec();
        let a = ingest_config(&s, "team-a", "ci").unwrap();
        let b = ingest_config(&s, "team-b", "ci").unwrap();
        assert_ne!(a.tenant, b.tenant);
        for (x, y) in [
            (&a.broker.queue, &b.broker.queue),
            (&a.broker.dead_letter_queue, &b.broker.dead_letter_queue),
            (&a.broker.routing_key, &b.broker.routing_key),
        ] {
            assert_ne!(x, y);
        }
        // Hyphens cannot be used to forge another namespace's id.
        assert_ne!(
            tenant_id(&s, "team-a", "b-ci"),
            tenant_id(&s, "team-a-b", "ci")
        );
    }

    #[test]
    fn broker_names_of_another_tenant_are_refused() {
        // Tenant a's names, named from namespace b.
        type Mutation = Box<dyn Fn(&mut IngestionEndpointSpec)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "queue.name",
                Box::new(|s| s.queue.name = Some("anchorpipe.a.ci.reports".into())),
            ),
            (
                "queue.deadLetterQueue",
                Box::new(|s| {
                    s.queue.dead_letter_queue = Some("anchorpipe.a.ci.reports.dlq".into())
                }),
            ),
            (
                "queue.routingKey",
                Box::new(|s| s.queue.routing_key = Some("tenant.a.ci.test-run".into())),
            ),
            // A prefix of this tenant's own names with nothing after it is no queue.
            (
                "queue.name",
                Box::new(|s| s.queue.name = Some("anchorpipe.b.ci.".into())),
            ),
            // Names without any tenant prefix could be anyone's.
            (
                "queue.name",
                Box::new(|s| s.queue.name = Some("shared-queue".into())),
            ),
            (
                "queue.exchange",
                Box::new(|s| s.queue.exchange = Some("amq.topic".into())),
            ),
            (
                "queue.deadLetterQueue",
                Box::new(|s| {
                    s.queue.name = Some("anchorpipe.b.ci.q".into());
                    s.queue.dead_letter_queue = Some("anchorpipe.b.ci.q".into());
                }),
            ),
        ];
        for (field, mutate) in cases {
            let mut s = spec();
            mutate(&mut s);
            let err = ingest_config(&s, "b", "ci").unwrap_err();
            assert_eq!(err.field, field, "{err}");
            assert!(
                err.message.contains("anchorpipe.b.ci.")
                    || err.message.contains("tenant.b.ci.")
                    || field.ends_with("xchange")
                    || field == "queue.deadLetterQueue",
                "{err}"
            );
        }
        // The tenant's own names are fine.
        let mut s = spec();
        s.queue.name = Some("anchorpipe.b.ci.main".into());
        s.queue.routing_key = Some("tenant.b.ci.runs".into());
        s.queue.exchange = Some("reports.b".into());
        assert!(ingest_config(&s, "b", "ci").is_ok());
    }

    #[test]
    fn a_tenant_id_too_long_for_a_label_is_refused() {
        let s = spec();
        let namespace = "n".repeat(40);
        let err = ingest_config(&s, &namespace, &"x".repeat(30)).unwrap_err();
        assert_eq!(err.field, "tenant");
        assert!(err.message.contains("longer than 63"), "{err}");
    }

    #[test]
    fn large_bodies_raise_the_in_flight_budget() {
        let mut s = spec();
        s.limits.max_body_bytes = 512 * 1024 * 1024;
        let config = ingest_config(&s, "ci", "acme").unwrap();
        assert_eq!(config.limits.max_in_flight_bytes, 512 * 1024 * 1024);
    }

    #[test]
    fn duplicate_repositories_are_collapsed() {
        let mut s = spec();
        s.repositories.push(s.repositories[0].to_uppercase());
        assert_eq!(repositories(&s).unwrap().len(), 1);
    }
}
