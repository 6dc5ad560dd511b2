//! `IngestionEndpoint` (`anchorpipe.dev/v1alpha1`): one tenant's ingestion endpoint.
//!
//! Platform teams write the spec; the operator reads it and writes the status. Doc
//! comments on the fields below are what `kubectl explain ingestionendpoint.spec` shows,
//! so they are written for the person filling in the object. The API server refuses
//! invalid objects through the schema and CEL rules declared here; the operator checks
//! the same rules again (see [`crate::render`]) because an object can predate a rule.
//!
//! Defaults that depend on other fields (the tenant defaults to the object name, queue
//! names derive from the tenant id) are applied by the operator, not by the schema, so the
//! stored object keeps what the user wrote. Rules that depend on the namespace (the
//! tenant id, broker names that must belong to it) are checked by the operator, since
//! CEL rules cannot see an object's namespace.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Annotation on an `IngestionEndpoint`: set it to a new value (any string, e.g. a
/// timestamp) to mint a new HMAC key now. Each distinct value rotates once.
pub const ROTATE_ANNOTATION: &str = "anchorpipe.dev/rotate-key";

/// Annotation on an `IngestionEndpoint`: set it to a new value to mint new database and
/// broker credentials for the tenant's pods now. The pods roll onto them; the previous
/// credentials are revoked once no pod of the old rollout is left.
pub const ROTATE_CREDENTIALS_ANNOTATION: &str = "anchorpipe.dev/rotate-credentials";

/// Annotation on an `IngestionEndpoint` being deleted: `"true"` releases the finalizer
/// without removing the broker queues (for a broker that is gone for good).
pub const SKIP_BROKER_CLEANUP_ANNOTATION: &str = "anchorpipe.dev/skip-broker-cleanup";

/// The finalizer that guards the tenant's broker queues.
pub const FINALIZER: &str = "anchorpipe.dev/broker-topology";

/// Default time a replaced HMAC key keeps verifying (24 hours): long enough for every CI
/// system to pick up the new secret.
pub const DEFAULT_GRACE_PERIOD: &str = "24h";

/// Default time before a key still in use stops verifying at which the endpoint warns
/// (72 hours): a working week's CI runs notice it, and with the default grace period it
/// starts two days before a scheduled rotation.
pub const DEFAULT_EXPIRY_WARNING: &str = "72h";

/// Lowercase DNS label: the tenant ends up in object names, queue names and routing keys.
const DNS_LABEL: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// A Go-style duration restricted to hours, minutes and seconds, e.g. `720h` or `1h30m`.
/// CEL's `duration()` understands the same syntax, so rules can compare them.
const DURATION_PATTERN: &str = "^([0-9]+(h|m|s))+$";

/// An AMQP name: printable, no spaces.
const AMQP_NAME: &str = "^[-_.:a-zA-Z0-9]+$";

/// A DNS-1123 subdomain (an Ingress host).
const DNS_SUBDOMAIN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// An endpoint that receives CI test reports for one tenant.
///
/// The operator mints the tenant's HMAC signing keys into a Secret, renders the ingest
/// configuration, runs the ingest pods behind a Service (and an Ingress when asked),
/// and declares the tenant's RabbitMQ queue.
// The printer columns repeat `type_ = "string"`, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[schemars(transform = unwrap_descriptions)]
#[kube(
    group = "anchorpipe.dev",
    version = "v1alpha1",
    kind = "IngestionEndpoint",
    plural = "ingestionendpoints",
    shortname = "ie",
    category = "anchorpipe",
    namespaced,
    status = "IngestionEndpointStatus",
    derive = "PartialEq",
    doc = "An endpoint that receives CI test reports for one tenant: HMAC keys, rate limits, a RabbitMQ queue and the ingest pods serving it.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the endpoint accepts reports"
    ),
    printcolumn(
        name = "Tenant",
        type_ = "string",
        json_path = ".status.tenant",
        description = "The tenant the endpoint serves"
    ),
    printcolumn(
        name = "URL",
        type_ = "string",
        json_path = ".status.url",
        description = "Where CI systems post reports"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Ingest pods ready"
    ),
    printcolumn(
        name = "Key",
        type_ = "string",
        json_path = ".status.currentKeyId",
        description = "Id of the HMAC key new reports should be signed with",
        priority = 1
    ),
    printcolumn(
        name = "Key Age",
        type_ = "date",
        json_path = ".status.currentKeyMintedAt",
        description = "How long ago the current HMAC key was minted",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    validation = Rule::new("has(self.spec.tenant) || (size(self.metadata.name) <= 40 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))").message("the object name is the default tenant name, so it must be at most 40 lowercase letters, digits or '-'; otherwise set spec.tenant")
)]
#[x_kube(validation = Rule::new("has(self.tenant) == has(oldSelf.tenant) && (!has(self.tenant) || self.tenant == oldSelf.tenant)").message("tenant cannot be changed after creation: its keys, queue and stored reports belong to the old name; create a new IngestionEndpoint instead"))]
#[serde(rename_all = "camelCase")]
pub struct IngestionEndpointSpec {
    /// Tenant name within the namespace: lowercase letters, digits and '-', at most 40
    /// characters. Defaults to the object's name. Cannot be changed after creation. The
    /// tenant id, unique in the cluster, is `<namespace>.<tenant>` (at most 63
    /// characters): it is recorded on every report and names the tenant's queues, routing
    /// key, database login and broker user. Two endpoints in one namespace cannot serve
    /// the same tenant: the second is not Ready, with reason TenantConflict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 40), regex(pattern = DNS_LABEL))]
    pub tenant: Option<String>,

    /// Repository ids (UUIDs) this tenant may post reports for. A report for any other
    /// repository is refused, whichever key signed it. Each repository belongs to one
    /// endpoint in the cluster: one already claimed by another endpoint is left out of
    /// this one's config and reported in the RepositoriesOwned condition.
    #[schemars(length(min = 1, max = 1000), inner(length(max = 36)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = Rule::new("self.all(r, r.matches('^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'))").message("every repository must be a UUID such as 7d3c1c8e-6a4c-4b55-9d84-2f1c0f0b8f61"))]
    pub repositories: Vec<String>,

    /// HMAC signing keys: minted by the operator (the default) and rotated on demand or on
    /// a schedule you opt into, or taken from an existing Secret.
    #[serde(default)]
    pub hmac: HmacSpec,

    /// Which request signature schemes are accepted.
    #[serde(default)]
    pub signatures: SignaturesSpec,

    /// Rate limits for the whole endpoint. The operator divides them among the ingest
    /// pods, so together they enforce these figures.
    #[serde(default)]
    pub rate_limit: RateLimitSpec,

    /// The tenant's RabbitMQ topology. All names default from the tenant.
    #[serde(default)]
    pub queue: QueueSpec,

    /// Size limits for reports.
    #[serde(default)]
    pub limits: LimitsSpec,

    /// Publish the endpoint outside the cluster through an Ingress. Without it the
    /// endpoint is reachable inside the cluster through its Service only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,

    /// Number of ingest pods. A PodDisruptionBudget keeps one available when above 1.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 50))]
    pub replicas: i32,

    /// Compute resources of each ingest pod. Defaults to requests of 100m CPU and 256Mi
    /// memory and a 1Gi memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Container image of the ingest service. Defaults to the image the operator was
    /// installed with. Only images the platform allows (the chart's
    /// `ingest.allowedImages`) are accepted: the pods hold the tenant's database
    /// and broker credentials, so what runs with them is the platform's choice. Any other
    /// image leaves the endpoint not Ready with reason ImageNotAllowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
}

/// Joins the hard-wrapped lines of doc comments into paragraphs: `kubectl explain`
/// wraps descriptions itself, so source line breaks would show up as ragged lines.
/// Blank lines (paragraph breaks) stay.
pub fn unwrap_descriptions(schema: &mut schemars::Schema) {
    if let Some(serde_json::Value::String(text)) = schema.get_mut("description") {
        *text = text
            .split("\n\n")
            .map(|paragraph| {
                paragraph
                    .split('\n')
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n\n");
    }
    schemars::transform::transform_subschemas(&mut unwrap_descriptions, schema);
}

fn default_replicas() -> i32 {
    2
}

/// HMAC signing keys.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[schemars(transform = unwrap_descriptions)]
#[x_kube(validation = Rule::new("!has(self.secretRef) || (!has(self.rotationPeriod) && !has(self.gracePeriod) && !has(self.expiryWarning))").message("rotationPeriod, gracePeriod and expiryWarning apply to minted keys only; remove them when secretRef is set"))]
#[x_kube(validation = Rule::new("!has(self.rotationPeriod) || duration(has(self.gracePeriod) ? self.gracePeriod : '24h') < duration(self.rotationPeriod)").message("gracePeriod must be shorter than rotationPeriod (gracePeriod defaults to 24h), or two old keys would be valid at once"))]
#[serde(rename_all = "camelCase")]
pub struct HmacSpec {
    /// Opt-in scheduled rotation: mint a new key when the current one is this old, as a
    /// duration such as `720h` (hours, minutes and seconds only; at least 1h). Unset (the
    /// default), keys rotate only when you ask, by setting the annotation
    /// `anchorpipe.dev/rotate-key` to a new value, so a key stored in a CI system's
    /// secrets keeps working until you replace it. With a period, every CI system
    /// signing with the key must be updated within gracePeriod of each rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1h')").message("rotationPeriod must be at least 1h"))]
    pub rotation_period: Option<String>,

    /// How long the previous key keeps verifying after a new one is minted (by schedule
    /// or on demand), e.g. `24h`. Defaults to 24h. Must be shorter than rotationPeriod
    /// when one is set. `0s` revokes the previous key at once (after a leak, say): clients
    /// still signing with it are refused until they use the new key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    pub grace_period: Option<String>,

    /// How long before a key that CI systems still sign with stops verifying the
    /// endpoint warns: a Warning Event `KeyExpiring` and the condition `KeyExpiring`
    /// set to True, naming the key and when it stops. A key counts as in use when a
    /// report signed with it verified within this time (for a replaced key: after it was
    /// replaced). Keys stop verifying when their grace period after a rotation ends; with
    /// a rotationPeriod, the current key's end is known in advance (its rotation plus
    /// gracePeriod). Defaults to 72h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    pub expiry_warning: Option<String>,

    /// Use the keys in this existing Secret instead of minting them. Every data entry is
    /// a key: its name is the key id (letters, digits, '-', '_', '.'), its value the
    /// secret. You rotate them yourself; the pods pick changes up without restarting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
}

/// A Secret in the endpoint's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[schemars(transform = unwrap_descriptions)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub name: String,
}

/// Accepted request signature schemes. At least one must be on.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[schemars(transform = unwrap_descriptions)]
#[x_kube(validation = Rule::new("self.legacy || self.standardWebhooks").message("at least one signature scheme must be enabled"))]
#[serde(rename_all = "camelCase")]
pub struct SignaturesSpec {
    /// Accept the legacy scheme (`Authorization: Bearer <repo_id>` plus `X-FR-Sig`, a hex
    /// HMAC-SHA256 of the body). It has no replay protection; turn it off once all
    /// clients send Standard Webhooks signatures.
    #[serde(default = "default_true")]
    pub legacy: bool,
    /// Accept Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`), which are protected against replay.
    #[serde(default = "default_true")]
    pub standard_webhooks: bool,
}

impl Default for SignaturesSpec {
    fn default() -> Self {
        Self {
            legacy: true,
            standard_webhooks: true,
        }
    }
}

fn default_true() -> bool {
    true
}

/// Endpoint-wide rate limits.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[schemars(transform = unwrap_descriptions)]
#[x_kube(validation = Rule::new("self.perRepository.requestsPerMinute <= self.perEndpoint.requestsPerMinute").message("perRepository.requestsPerMinute cannot exceed perEndpoint.requestsPerMinute"))]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Limit for each repository. Defaults to 60 requests per minute, burst 10.
    #[serde(default = "default_per_repository")]
    pub per_repository: LimitSpec,
    /// Limit for all repositories together. Defaults to 600 requests per minute, burst 100.
    #[serde(default = "default_per_endpoint")]
    pub per_endpoint: LimitSpec,
}

impl Default for RateLimitSpec {
    fn default() -> Self {
        Self {
            per_repository: default_per_repository(),
            per_endpoint: default_per_endpoint(),
        }
    }
}

fn default_per_repository() -> LimitSpec {
    LimitSpec {
        requests_per_minute: 60,
        burst: 10,
    }
}

fn default_per_endpoint() -> LimitSpec {
    LimitSpec {
        requests_per_minute: 600,
        burst: 100,
    }
}

/// A token bucket: a sustained rate and the burst allowed on top of it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[schemars(transform = unwrap_descriptions)]
#[serde(rename_all = "camelCase")]
pub struct LimitSpec {
    /// Sustained requests per minute, 1 to 1000000.
    #[schemars(range(min = 1, max = 1_000_000), extend("format" = "int32"))]
    pub requests_per_minute: u32,
    /// Requests accepted at once before the sustained rate applies, 1 to 100000.
    #[schemars(range(min = 1, max = 100_000), extend("format" = "int32"))]
    pub burst: u32,
}

/// The tenant's RabbitMQ topology: a queue bound to a shared topic exchange, and a
/// dead-letter queue for messages consumers reject.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[schemars(transform = unwrap_descriptions)]
#[x_kube(validation = Rule::new("(has(self.exchange) ? self.exchange : 'anchorpipe.reports') != (has(self.deadLetterExchange) ? self.deadLetterExchange : 'anchorpipe.reports.dlx')").message("deadLetterExchange must differ from exchange, or rejected messages would loop"))]
#[serde(rename_all = "camelCase")]
pub struct QueueSpec {
    /// Topic exchange reports are published to, shared by tenants. Defaults to
    /// `anchorpipe.reports`. Names starting with `amq.` are reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = AMQP_NAME))]
    pub exchange: Option<String>,
    /// The tenant's queue. Defaults to `anchorpipe.<namespace>.<tenant>.reports`; any
    /// other name must start with `anchorpipe.<namespace>.<tenant>.`, so that no endpoint
    /// can name another tenant's queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = AMQP_NAME))]
    #[x_kube(validation = Rule::new("!self.startsWith('amq.')").message("queue names starting with 'amq.' are reserved by RabbitMQ"))]
    pub name: Option<String>,
    /// Routing key of the tenant's reports. Defaults to
    /// `tenant.<namespace>.<tenant>.test-run`; any other key must start with
    /// `tenant.<namespace>.<tenant>.`. The tenant's broker user may publish with this key
    /// only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = AMQP_NAME))]
    pub routing_key: Option<String>,
    /// Queue type: `quorum` (replicated, the default) or `classic`. Cannot be changed
    /// once the queue exists: RabbitMQ cannot convert a queue.
    #[serde(default, rename = "type")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("queue type cannot be changed: RabbitMQ cannot convert an existing queue"))]
    pub queue_type: QueueKind,
    /// How long a report message may wait in the queue, in seconds, before it is
    /// dead-lettered. Unset means messages wait until consumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4_294_967), extend("format" = "int32"))]
    pub message_ttl_seconds: Option<u32>,
    /// Exchange rejected or expired messages go to. Defaults to `anchorpipe.reports.dlx`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = AMQP_NAME))]
    pub dead_letter_exchange: Option<String>,
    /// The tenant's dead-letter queue. Defaults to
    /// `anchorpipe.<namespace>.<tenant>.reports.dlq`; any other name must start with
    /// `anchorpipe.<namespace>.<tenant>.`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = AMQP_NAME))]
    pub dead_letter_queue: Option<String>,
    /// What happens to the tenant's queues when this object is deleted: `Retain` (the
    /// default) keeps them and any messages in them; `Delete` removes both queues and the
    /// messages in them. Shared exchanges are never deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// RabbitMQ queue type.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[schemars(transform = unwrap_descriptions)]
#[serde(rename_all = "camelCase")]
pub enum QueueKind {
    /// Replicated and durable.
    #[default]
    Quorum,
    /// Durable on a single node.
    Classic,
}

/// What deleting the endpoint does to its queues.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[schemars(transform = unwrap_descriptions)]
pub enum DeletionPolicy {
    /// Keep the queues and their messages.
    #[default]
    Retain,
    /// Delete the queues and their messages.
    Delete,
}

/// Report size limits.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[schemars(transform = unwrap_descriptions)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Largest accepted request body in bytes; larger requests are answered 413.
    /// Defaults to 52428800 (50 MiB), at most 1 GiB.
    #[serde(default = "default_max_body_bytes")]
    #[schemars(range(min = 1024, max = 1_073_741_824), extend("format" = "int64"))]
    pub max_body_bytes: u64,
    /// Largest number of test results in one report. Defaults to 10000, the maximum.
    #[serde(default = "default_max_tests")]
    #[schemars(range(min = 1, max = 10_000), extend("format" = "int32"))]
    pub max_tests: u32,
}

impl Default for LimitsSpec {
    fn default() -> Self {
        Self {
            max_body_bytes: default_max_body_bytes(),
            max_tests: default_max_tests(),
        }
    }
}

fn default_max_body_bytes() -> u64 {
    crate::config::DEFAULT_MAX_BODY_BYTES
}

fn default_max_tests() -> u32 {
    crate::config::DEFAULT_MAX_TESTS
}

/// How the endpoint is published outside the cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[schemars(transform = unwrap_descriptions)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// Public host name, e.g. `reports.example.com`. Reports are accepted at
    /// `https://<host>/api/ingestion` (http when no TLS secret is given).
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("host must be a lowercase DNS name such as reports.example.com, without scheme, port or path"))]
    pub host: String,
    /// IngressClass to use. Defaults to the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub class_name: Option<String>,
    /// Secret holding the TLS certificate for the host. Without it the Ingress serves
    /// plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub tls_secret_name: Option<String>,
}

/// What the operator observed and did. Written by the operator only.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[schemars(transform = unwrap_descriptions)]
#[serde(rename_all = "camelCase")]
pub struct IngestionEndpointStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `SecretReady`, `CredentialsReady`, `RepositoriesOwned`, `QueueReady`, `Available`
    /// and `Ready`, each with a reason and a message; and `KeyExpiring`, True while a key
    /// still in use is about to stop verifying (it does not affect `Ready`).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The tenant id the endpoint serves (`<namespace>.<tenant>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Secret holding the tenant's minted database and broker credentials, which the
    /// ingest pods use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_name: Option<String>,
    /// Where CI systems post reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Secret holding the HMAC keys; each data entry is one key, named by its key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Id of the newest key: sign new reports with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_key_id: Option<String>,
    /// When the current key was minted (minted keys only); `kubectl get -o wide` shows
    /// its age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_key_minted_at: Option<Time>,
    /// When the current key is due to be replaced (only with hmac.rotationPeriod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_at: Option<Time>,
    /// The key replaced by the current one, while it still verifies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key_id: Option<String>,
    /// When the previous key stops verifying: CI systems must sign with the current key
    /// by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key_expires_at: Option<Time>,
    /// The tenant's RabbitMQ queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Ingest pods ready to serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
}
