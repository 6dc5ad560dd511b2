//! The reconcile pipeline for one `IngestionEndpoint`.
//!
//! ```text
//! finalizer ─ apply:   validate → claim tenant id and repositories → keys (Secret)
//!           │          → credentials (Secret, login, broker user) → ConfigMap
//!           │          → Deployment → Service → Ingress? → PDB? → retire old credentials
//!           │          → broker topology → status, Events
//!           └ cleanup: credentials and claims released; broker queues per
//!                      deletionPolicy, bounded in time; nothing of another tenant's
//! ```
//!
//! Objects are built by the pure functions in [`crate::builders`] and [`crate::keys`] and
//! written with server-side apply under one field manager. Errors are sorted by
//! [`Error::is_permanent`]: permanent ones wait for the object to change, transient ones
//! are retried after a per-object delay that grows with how long the object has been
//! failing (see [`retry_delay`]). An object that does not even
//! deserialize is reported through an Event and left alone, so it cannot block others.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anchorpipe_crds::BrokerTopology;
use anchorpipe_crds::render::{self, RotationPolicy};
use anchorpipe_crds::v1alpha1::{
    DeletionPolicy, FINALIZER, IngestionEndpoint, IngestionEndpointStatus, ROTATE_ANNOTATION,
    ROTATE_CREDENTIALS_ANNOTATION, SKIP_BROKER_CLEANUP_ANNOTATION,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{debug, info, instrument, warn};

use crate::accounts::{Accounts, Claimant, Grant, TenantClaim};
use crate::broker::{Broker, BrokerError};
use crate::builders::{self, MANAGER, Names, PodInputs, Settings};
use crate::credentials::{self, CREDENTIALS_ID_ANNOTATION, CredentialPlan};
use crate::error::{Error, Result};
use crate::keys::{self, MintReason};
use crate::metrics::{
    BrokerOperation, BrokerOutcome, Metrics, Outcome, ReleaseLabels, ReleaseReason, RotationLabels,
    RotationReason,
};
use crate::status::{self, Check, Checks};

/// The current time; injected so tests can move it.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// Shortest retry delay after a transient error: what a failing object costs at most is
/// one reconcile per 5 s.
const BACKOFF_MIN: Duration = Duration::from_secs(5);
/// Longest retry delay: an endpoint is Ready again at most a minute after a broker or API
/// outage ends, however long it lasted.
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// How long to wait before retrying an object that has been failing for `failing_for`.
///
/// The delay grows with time, not with the number of failures: a failed reconcile writes
/// status and Events, and owned objects change, so one outage can fail the same object
/// many times within a second. Counting those failures made the delay 300 s after a
/// 0.4 s broker blip. Waiting as long again as the streak has lasted (within
/// [`BACKOFF_MIN`]..=[`BACKOFF_MAX`]) still halves the retry rate per retry during a long
/// outage, and notices the recovery within the outage's own length.
pub fn retry_delay(failing_for: Duration) -> Duration {
    failing_for.clamp(BACKOFF_MIN, BACKOFF_MAX)
}

/// How often an endpoint waiting on another endpoint (a claimed tenant id or
/// repository) or on a rollout looks again.
const CONFLICT_RECHECK: Duration = Duration::from_secs(30);

/// Everything a reconcile needs, shared by all reconciles.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub broker: Arc<dyn Broker>,
    /// Tenant claims and minted credentials (platform database and broker users).
    pub accounts: Arc<dyn Accounts>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    /// How long a deletion waits for the broker before the finalizer is released anyway.
    pub cleanup_timeout: Duration,
    /// Periodic re-check of a healthy endpoint (drift, referenced Secrets).
    pub resync: Duration,
    /// When each object's current streak of transient failures began.
    failing_since: Mutex<HashMap<String, Timestamp>>,
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        settings: Settings,
        broker: Arc<dyn Broker>,
        accounts: Arc<dyn Accounts>,
        metrics: Arc<Metrics>,
        clock: Clock,
        cleanup_timeout: Duration,
        resync: Duration,
    ) -> Self {
        let reporter = Reporter {
            controller: MANAGER.to_owned(),
            instance: None,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            broker,
            accounts,
            metrics,
            clock,
            cleanup_timeout,
            resync,
            failing_since: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes an Event; a failure to do so is logged, never fatal.
    async fn event(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, regarding).await {
            warn!(%error, reason, "could not publish event");
        }
    }

    fn next_backoff(&self, key: &str) -> Duration {
        let now = (self.clock)();
        let mut failing_since = match self.failing_since.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let since = *failing_since.entry(key.to_owned()).or_insert(now);
        retry_delay(Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO))
    }

    fn reset_backoff(&self, key: &str) {
        let mut failing_since = match self.failing_since.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        failing_since.remove(key);
    }
}

fn object_key<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

/// The controller's reconcile function.
pub async fn reconcile(
    obj: Arc<DeserializeGuard<IngestionEndpoint>>,
    ctx: Arc<Context>,
) -> Result<Action> {
    let started = Instant::now();
    let result = reconcile_guarded(&obj, &ctx).await;
    let outcome = match &result {
        Ok(_) => {
            ctx.reset_backoff(&object_key(obj.as_ref()));
            Outcome::Success
        }
        Err(e) if e.is_permanent() => Outcome::PermanentError,
        Err(_) => Outcome::TransientError,
    };
    ctx.metrics.reconciled(outcome, started.elapsed());
    result
}

/// The controller's error policy: permanent errors wait for a change to the object,
/// transient ones retry after [`retry_delay`] for how long the object has been failing.
pub fn error_policy(
    obj: Arc<DeserializeGuard<IngestionEndpoint>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let key = object_key(obj.as_ref());
    if error.is_permanent() {
        warn!(object = %key, %error, "reconcile failed; waiting for the object to change");
        Action::await_change()
    } else {
        let mut delay = ctx.next_backoff(&key);
        if let Some(deadline) = error.retry_deadline() {
            // Come back just after the deadline at the latest, so a bounded wait stays
            // bounded whatever the backoff had grown to.
            delay = delay.min(deadline + Duration::from_secs(1));
        }
        warn!(object = %key, %error, retry_in_s = delay.as_secs(), "reconcile failed; retrying");
        Action::requeue(delay)
    }
}

async fn reconcile_guarded(
    obj: &DeserializeGuard<IngestionEndpoint>,
    ctx: &Arc<Context>,
) -> Result<Action> {
    let endpoint = match &obj.0 {
        Ok(endpoint) => endpoint.clone(),
        Err(invalid) => return malformed(invalid, ctx).await,
    };
    let namespace = endpoint
        .namespace()
        .ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<IngestionEndpoint> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, FINALIZER, Arc::new(endpoint), |event| async {
        match event {
            FinalizerEvent::Apply(endpoint) => apply(&endpoint, ctx).await,
            FinalizerEvent::Cleanup(endpoint) => cleanup(&endpoint, ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// An object that does not match the types: tell its owner, and do not let it hold a
/// namespace hostage: when it is being deleted, release the finalizer (nothing can be
/// cleaned up for a spec that cannot be read).
async fn malformed(
    invalid: &kube::core::error_boundary::InvalidObject,
    ctx: &Context,
) -> Result<Action> {
    let meta = &invalid.metadata;
    let reference = ObjectReference {
        api_version: Some(IngestionEndpoint::api_version(&()).into_owned()),
        kind: Some(IngestionEndpoint::kind(&()).into_owned()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        ..ObjectReference::default()
    };
    warn!(namespace = ?meta.namespace, name = ?meta.name, error = %invalid.error, "malformed IngestionEndpoint");
    let deleting = meta.deletion_timestamp.is_some();
    let finalizers = meta.finalizers.clone().unwrap_or_default();
    if deleting
        && finalizers.iter().any(|f| f == FINALIZER)
        && let (Some(name), Some(namespace)) = (&meta.name, &meta.namespace)
    {
        let api: Api<IngestionEndpoint> = Api::namespaced(ctx.client.clone(), namespace);
        let rest: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
        let patch = serde_json::json!({
            "metadata": {"finalizers": rest, "resourceVersion": meta.resource_version}
        });
        api.patch_metadata(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        ctx.metrics
            .finalizers_released_without_cleanup
            .get_or_create(&ReleaseLabels {
                reason: ReleaseReason::Unreadable,
            })
            .inc();
        ctx.event(
            &reference,
            EventType::Warning,
            "BrokerCleanupSkipped",
            "Delete",
            format!(
                "the object could not be read ({}); its broker queues, if any, were left in place",
                invalid.error
            ),
        )
        .await;
        return Ok(Action::await_change());
    }
    ctx.event(
        &reference,
        EventType::Warning,
        "InvalidObject",
        "Reconcile",
        format!(
            "the object does not match the IngestionEndpoint schema: {}",
            invalid.error
        ),
    )
    .await;
    Err(Error::Malformed(invalid.error.clone()))
}

/// Server-side applies `obj` under the operator's field manager and returns the result.
async fn apply_object<K>(api: &Api<K>, obj: &K) -> Result<K>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingMetadata("name"))?;
    Ok(api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await?)
}

/// Deletes an object the spec no longer asks for, if this endpoint owns it.
async fn remove_if_owned<K>(api: &Api<K>, name: &str, endpoint: &IngestionEndpoint) -> Result<()>
where
    K: Resource + DeserializeOwned + Clone + Debug,
{
    if let Some(obj) = api.get_opt(name).await?
        && builders::is_owned_by(obj.meta(), endpoint)
    {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn write_status(
    api: &Api<IngestionEndpoint>,
    name: &str,
    status: &IngestionEndpointStatus,
) -> Result<()> {
    let patch = serde_json::json!({
        "apiVersion": IngestionEndpoint::api_version(&()),
        "kind": IngestionEndpoint::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// The keys step's result.
struct Keys {
    check: Check,
    secret_name: String,
    current: Option<String>,
    /// When a rotation or removal is next due.
    next_change: Option<Duration>,
    /// A transient problem to retry once the rest of the endpoint is applied.
    retry: Option<Error>,
}

async fn minted_keys(
    endpoint: &IngestionEndpoint,
    tenant: &str,
    policy: RotationPolicy,
    now: Timestamp,
    ctx: &Context,
) -> Result<Keys> {
    let names = Names::of(endpoint);
    let namespace = endpoint.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let existing = api.get_opt(&names.secret).await?;
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
    apply_object(&api, &builders::key_secret(endpoint, tenant, &plan)?).await?;

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
        next_change: Some(plan.next_change),
        retry: None,
    })
}

async fn referenced_keys(endpoint: &IngestionEndpoint, name: &str, ctx: &Context) -> Result<Keys> {
    let namespace = endpoint.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let problem = |reason, message: String| Keys {
        check: Check::failed(reason, message.clone()),
        secret_name: name.to_owned(),
        current: None,
        next_change: None,
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
        retry: None,
    })
}

/// The credentials step's result.
struct Credentials {
    check: Check,
    plan: CredentialPlan,
    /// Whether the login and broker user of the current set were confirmed to exist.
    ensured: bool,
    retry: Option<Error>,
}

/// The tenant's minted credentials: plan from the Secret, write it, then make sure the
/// login and broker user exist with exactly the tenant's rights. The Secret is written
/// first so a set is never created that no Secret records.
async fn credentials(
    endpoint: &IngestionEndpoint,
    tenant: &str,
    topology: &BrokerTopology,
    ctx: &Context,
) -> Result<Credentials> {
    let names = Names::of(endpoint);
    let namespace = endpoint.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let existing = api.get_opt(&names.credentials).await?;
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
    apply_object(
        &api,
        &builders::credentials_secret(endpoint, tenant, &plan, &urls)?,
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
async fn retire_credentials(
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

/// Reports a spec the operator will not act on and touches nothing else.
async fn refuse(
    endpoint: &IngestionEndpoint,
    ctx: &Context,
    reason: &'static str,
    message: &str,
) -> Result<()> {
    let name = endpoint.name_any();
    let namespace = endpoint.namespace().unwrap_or_default();
    let previous = endpoint.status.clone().unwrap_or_default();
    write_status(
        &Api::namespaced(ctx.client.clone(), &namespace),
        &name,
        &status::refused(
            reason,
            message,
            endpoint.metadata.generation,
            &previous,
            (ctx.clock)(),
        ),
    )
    .await?;
    ctx.event(
        &endpoint.object_ref(&()),
        EventType::Warning,
        reason,
        "Reconcile",
        message.to_owned(),
    )
    .await;
    Ok(())
}

fn claimant(endpoint: &IngestionEndpoint) -> Claimant {
    Claimant {
        namespace: endpoint.namespace().unwrap_or_default(),
        name: endpoint.name_any(),
        uid: endpoint.uid().unwrap_or_default(),
    }
}

#[instrument(skip_all, fields(namespace = endpoint.namespace().as_deref(), name = %endpoint.name_any()))]
async fn apply(endpoint: &IngestionEndpoint, ctx: &Context) -> Result<Action> {
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
    let tenant = config.tenant.clone();

    // 2. Claims: the tenant id, then each repository. A second claimant of the tenant id
    // touches nothing; it looks again from time to time, as the first may go away.
    if let TenantClaim::Taken(holder) = ctx
        .accounts
        .claim_tenant(&tenant, &claimant(endpoint))
        .await?
    {
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
    let mut creds = credentials(endpoint, &tenant, &config.broker, ctx).await?;

    // 5. Config and workload.
    let (config_text, config_hash) = builders::config_json(&config)?;
    let client = &ctx.client;
    apply_object(
        &Api::<ConfigMap>::namespaced(client.clone(), &namespace),
        &builders::config_map(endpoint, &tenant, &config_text)?,
    )
    .await?;
    let deployment = apply_object(
        &Api::<Deployment>::namespaced(client.clone(), &namespace),
        &builders::deployment(
            endpoint,
            &tenant,
            &PodInputs {
                image: &image,
                config_hash: &config_hash,
                keys_secret: &keys.secret_name,
                credentials_id: &creds.plan.current.id,
            },
        )?,
    )
    .await?;
    apply_object(
        &Api::<Service>::namespaced(client.clone(), &namespace),
        &builders::service(endpoint, &tenant)?,
    )
    .await?;
    let workload = Names::of(endpoint).workload;
    let ingresses = Api::<Ingress>::namespaced(client.clone(), &namespace);
    match builders::ingress(endpoint, &tenant)? {
        Some(ingress) => {
            apply_object(&ingresses, &ingress).await?;
        }
        None => remove_if_owned(&ingresses, &workload, endpoint).await?,
    }
    let pdbs = Api::<PodDisruptionBudget>::namespaced(client.clone(), &namespace);
    match builders::pod_disruption_budget(endpoint, &tenant)? {
        Some(pdb) => {
            apply_object(&pdbs, &pdb).await?;
        }
        None => remove_if_owned(&pdbs, &workload, endpoint).await?,
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
    let conditions = status::conditions(
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
        queue: Some(topology.queue.clone()),
        ready_replicas: Some(ready_replicas),
    };
    write_status(&endpoints, &name, &new_status).await?;
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

#[instrument(skip_all, fields(namespace = endpoint.namespace().as_deref(), name = %endpoint.name_any()))]
async fn cleanup(endpoint: &IngestionEndpoint, ctx: &Context) -> Result<Action> {
    let name = endpoint.name_any();
    let namespace = endpoint.namespace().unwrap_or_default();
    let tenant = render::tenant_id(&endpoint.spec, &namespace, &name);
    let topology = render::broker_topology(&endpoint.spec, &tenant);
    let regarding = endpoint.object_ref(&());
    let who = claimant(endpoint);

    // Only the endpoint holding the tenant id may remove anything of the tenant's.
    match ctx.accounts.claim_tenant(&tenant, &who).await {
        Ok(TenantClaim::Ours) => {}
        Ok(TenantClaim::Taken(holder)) => {
            info!(%tenant, "tenant held by another endpoint; nothing of it is removed");
            ctx.event(
                &regarding,
                EventType::Normal,
                "NothingToCleanUp",
                "Delete",
                format!(
                    "tenant {tenant} belongs to IngestionEndpoint {}/{}: its queues and credentials were left alone",
                    holder.namespace, holder.name
                ),
            )
            .await;
            return Ok(Action::await_change());
        }
        Err(e) => return give_up_or_retry(endpoint, ctx, "release the tenant", &e.0).await,
    }

    if let Some(action) = delete_queues(endpoint, &tenant, &topology, ctx).await? {
        return Ok(action);
    }

    match ctx.accounts.release(&tenant, &who).await {
        Ok(()) => {
            info!(%tenant, "revoked the tenant's credentials and released its claims");
            ctx.event(
                &regarding,
                EventType::Normal,
                "CredentialsRevoked",
                "Delete",
                format!(
                    "revoked tenant {tenant}'s database login and broker user and released its repositories; stored reports are kept"
                ),
            )
            .await;
            Ok(Action::await_change())
        }
        Err(e) => give_up_or_retry(endpoint, ctx, "release the tenant", &e.0).await,
    }
}

/// Deletes the tenant's queues when the deletion policy says so. `Ok(Some(_))` ends the
/// cleanup early (a retry is due); `Ok(None)` goes on.
async fn delete_queues(
    endpoint: &IngestionEndpoint,
    tenant: &str,
    topology: &BrokerTopology,
    ctx: &Context,
) -> Result<Option<Action>> {
    let regarding = endpoint.object_ref(&());
    let queues = format!("{} and {}", topology.queue, topology.dead_letter_queue);

    if endpoint.spec.queue.deletion_policy == DeletionPolicy::Retain {
        info!(queue = %topology.queue, "keeping broker queues (deletionPolicy Retain)");
        ctx.event(
            &regarding,
            EventType::Normal,
            "QueueRetained",
            "Delete",
            format!("kept queues {queues} (deletionPolicy Retain)"),
        )
        .await;
        return Ok(None);
    }
    // A spec naming queues outside the tenant's own names was never applied; deleting by
    // it would remove another tenant's queue.
    if let Err(e) = render::owned_broker_names(topology, tenant) {
        warn!(error = %e, "not deleting queues named outside the tenant");
        ctx.event(
            &regarding,
            EventType::Warning,
            "QueueNotOwned",
            "Delete",
            format!("queues were not deleted: {e}"),
        )
        .await;
        return Ok(None);
    }
    if endpoint
        .annotations()
        .get(SKIP_BROKER_CLEANUP_ANNOTATION)
        .is_some_and(|v| v == "true")
    {
        ctx.metrics
            .finalizers_released_without_cleanup
            .get_or_create(&ReleaseLabels {
                reason: ReleaseReason::Override,
            })
            .inc();
        warn!(queue = %topology.queue, "broker cleanup skipped by annotation");
        ctx.event(
            &regarding,
            EventType::Warning,
            "BrokerCleanupSkipped",
            "Delete",
            format!("{SKIP_BROKER_CLEANUP_ANNOTATION}=true: queues {queues} were not deleted and may remain on the broker"),
        )
        .await;
        return Ok(None);
    }

    match ctx.broker.delete(topology).await {
        Ok(()) => {
            ctx.metrics
                .broker(BrokerOperation::Delete, BrokerOutcome::Ok);
            info!(queue = %topology.queue, "deleted broker queues");
            ctx.event(
                &regarding,
                EventType::Normal,
                "QueueDeleted",
                "Delete",
                format!("deleted queues {queues}"),
            )
            .await;
            Ok(None)
        }
        Err(e) => {
            let outcome = match e {
                BrokerError::Timeout(_) => BrokerOutcome::Timeout,
                BrokerError::Failed(_) => BrokerOutcome::Error,
            };
            ctx.metrics.broker(BrokerOperation::Delete, outcome);
            give_up_or_retry(
                endpoint,
                ctx,
                &format!("delete queues {queues}"),
                &e.to_string(),
            )
            .await
            .map(Some)
        }
    }
}

/// A cleanup step failed: retry until `cleanup_timeout` has passed since the deletion
/// began, then release the finalizer anyway (a namespace must not stay stuck behind a
/// broker or database that is gone), saying what may be left behind.
async fn give_up_or_retry(
    endpoint: &IngestionEndpoint,
    ctx: &Context,
    what: &str,
    error: &str,
) -> Result<Action> {
    let regarding = endpoint.object_ref(&());
    let now = (ctx.clock)();
    let since = endpoint
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(now);
    let waited = Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO);
    if waited >= ctx.cleanup_timeout {
        ctx.metrics
            .finalizers_released_without_cleanup
            .get_or_create(&ReleaseLabels {
                reason: ReleaseReason::Timeout,
            })
            .inc();
        warn!(%error, waited_s = waited.as_secs(), step = what, "giving up on cleanup");
        ctx.event(
            &regarding,
            EventType::Warning,
            "BrokerCleanupAbandoned",
            "Delete",
            format!(
                "could not {what} within {}s ({error}); released the finalizer, it may remain",
                ctx.cleanup_timeout.as_secs()
            ),
        )
        .await;
        Ok(Action::await_change())
    } else {
        let left = ctx.cleanup_timeout.saturating_sub(waited);
        ctx.event(
            &regarding,
            EventType::Warning,
            "BrokerCleanupFailed",
            "Delete",
            format!(
                "could not {what} ({error}); retrying for another {}s, or set annotation {SKIP_BROKER_CLEANUP_ANNOTATION}=true to give up now",
                left.as_secs()
            ),
        )
        .await;
        Err(Error::BrokerCleanup {
            message: format!("{what}: {error}"),
            deadline_in: left,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_follows_the_length_of_the_streak() {
        let secs = Duration::from_secs;
        // Many failures within the first second still wait the minimum.
        assert_eq!(retry_delay(Duration::ZERO), secs(5));
        assert_eq!(retry_delay(Duration::from_millis(400)), secs(5));
        // Then as long again as the object has been failing...
        assert_eq!(retry_delay(secs(5)), secs(5));
        assert_eq!(retry_delay(secs(10)), secs(10));
        assert_eq!(retry_delay(secs(40)), secs(40));
        // ...but never more than a minute.
        assert_eq!(retry_delay(secs(61)), secs(60));
        assert_eq!(retry_delay(secs(86_400)), secs(60));
    }
}
