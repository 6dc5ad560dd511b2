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
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
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

mod apply;
mod cleanup;
mod hmac_keys;
mod tenant_credentials;

use self::apply::apply;
use self::cleanup::cleanup;
use self::hmac_keys::{minted_keys, referenced_keys};
use self::tenant_credentials::{retire_credentials, tenant_credentials};

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
    /// What each owned object was last applied with and looked like right after, so a
    /// reconcile that would apply the same again reads it instead (see [`apply_object`]),
    /// or that it was found absent (see [`remove_if_owned`]).
    applied: Mutex<HashMap<String, Known>>,
    /// Endpoints reconciled at once, over every controller of this process.
    reconcile_slots: tokio::sync::Semaphore,
}

/// Endpoints reconciled at once unless configured otherwise. A thousand endpoints applied
/// together used to start a thousand reconciles, each holding its objects while waiting
/// for the same few database connections and API server round trips.
pub const DEFAULT_CONCURRENT_RECONCILES: u16 = 64;

/// What the operator knows of one owned object from its own last look.
#[derive(Clone)]
enum Known {
    Applied(Applied),
    /// Not there, and not asked for: the operator creates it only through
    /// [`apply_object`], which replaces this.
    Absent,
}

/// One owned object as the operator last applied it.
#[derive(Clone)]
struct Applied {
    /// Hash of the object the operator applied.
    desired: u64,
    /// [`observed`] of the object the API server answered with.
    seen: u64,
    /// The resource version of that answer: a watch event carrying it is the echo of
    /// the operator's own write (see [`Context::is_own_write`]).
    resource_version: Option<String>,
    /// The answer itself, for the kinds whose owned watch reports every change
    /// ([`CACHED_KINDS`]), until an event shows another resource version: reads of the
    /// object are answered from it meanwhile (see [`Context::cached`]).
    object: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

/// Owned kinds whose watch goes through [`Context::is_own_write`], so a change by anyone
/// else is noticed and the kept copy dropped. (Deployments are watched too, but their
/// status, which the operator reads, changes all the time.)
const CACHED_KINDS: [&str; 2] = ["Secret", "ConfigMap"];

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
            applied: Mutex::new(HashMap::new()),
            reconcile_slots: tokio::sync::Semaphore::new(usize::from(
                DEFAULT_CONCURRENT_RECONCILES,
            )),
        }
    }

    /// At most `slots` reconciles at once (at least one).
    #[must_use]
    pub fn with_concurrent_reconciles(mut self, slots: u16) -> Self {
        self.reconcile_slots = tokio::sync::Semaphore::new(usize::from(slots.max(1)));
        self
    }

    /// Whether `meta` is an owned object exactly as the operator's last apply left it:
    /// the watch event of its own write, which asks for nothing. Every reconcile that
    /// wrote an object used to be followed by one more, woken by that echo.
    ///
    /// Any other version (someone else's change, a deletion, a late echo of an older
    /// write) drops the kept copy, so the next reconcile reads the object again.
    pub fn is_own_write<K: Resource<DynamicType = ()>>(&self, meta: &ObjectMeta) -> bool {
        let Some(key) = applied_key::<K>(meta) else {
            return false;
        };
        let mut applied = self.applied();
        let Some(Known::Applied(last)) = applied.get_mut(&key) else {
            return false;
        };
        if meta.resource_version.is_some() && last.resource_version == meta.resource_version {
            return true;
        }
        last.object = None;
        false
    }

    /// The owned object under `key` as the operator's last apply left it, while its
    /// watch has shown no change since; `None` means: read it.
    fn cached<K: Clone + 'static>(&self, key: &str) -> Option<K> {
        match self.applied().get(key) {
            Some(Known::Applied(last)) => last.object.as_ref()?.downcast_ref::<K>().cloned(),
            _ => None,
        }
    }

    /// [`Api::get_opt`], answered from [`Self::cached`] when it can be.
    async fn get_owned<K>(
        &self,
        api: &Api<K>,
        endpoint: &IngestionEndpoint,
        name: &str,
    ) -> Result<Option<K>>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug + 'static,
    {
        let key = owned_key::<K>(
            endpoint.namespace().as_deref().unwrap_or_default(),
            &endpoint.name_any(),
            name,
        );
        self.cached_or_read(api, &key, name).await
    }

    /// The object kept under `key` (see [`Self::cached`]), or else `name` read from `api`.
    async fn cached_or_read<K>(&self, api: &Api<K>, key: &str, name: &str) -> Result<Option<K>>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug + 'static,
    {
        match self.cached::<K>(key) {
            Some(object) => Ok(Some(object)),
            None => Ok(api.get_opt(name).await?),
        }
    }

    fn applied(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        match self.applied.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Forgets what was applied for `endpoint` (its objects are deleted with it), so the
    /// record holds live endpoints only.
    fn forget_applied(&self, endpoint: &IngestionEndpoint) {
        let owner = format!("{}/", object_key(endpoint));
        self.applied().retain(|key, _| !key.starts_with(&owner));
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
    // The semaphore is never closed; were it, reconciling unbounded beats not at all.
    let _slot = ctx.reconcile_slots.acquire().await.ok();
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

/// What about a live object tells that someone changed it: its generation (a spec
/// change) where it has one, else its resource version (any change), and the values of
/// the labels and annotations the operator sets (`desired`). A Deployment's status
/// updates change none of these, and neither does the revision annotation the
/// Deployment controller adds, so a rollout's progress does not count as drift.
fn observed(live: &ObjectMeta, desired: &ObjectMeta) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    match live.generation {
        Some(generation) => generation.hash(&mut hasher),
        None => live.resource_version.hash(&mut hasher),
    }
    for (wanted, present) in [
        (&desired.labels, &live.labels),
        (&desired.annotations, &live.annotations),
    ] {
        for key in wanted.iter().flat_map(|m| m.keys()) {
            (key, present.as_ref().and_then(|m| m.get(key))).hash(&mut hasher);
        }
    }
    hasher.finish()
}

fn desired_hash<K: Serialize>(obj: &K) -> Result<u64> {
    use std::hash::{Hash, Hasher};
    let bytes = serde_json::to_vec(obj).map_err(|e| Error::Serialize {
        what: "an owned object",
        message: e.to_string(),
    })?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    Ok(hasher.finish())
}

/// An object kind the operator applies and remembers (see [`Known`]).
trait Owned:
    Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug + Send + Sync + 'static
{
}

impl<K> Owned for K where
    K: Resource<DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug
        + Send
        + Sync
        + 'static
{
}

/// Server-side applies `obj` under the operator's field manager and returns the result.
///
/// Unless nothing would change: when this process last applied exactly `obj` and the
/// live object is as that apply left it (see [`observed`]), the live object is returned
/// after a read and nothing is written. Every reconcile used to write each owned object
/// again, so a rollout's status updates (each one a reconcile) cost five writes per
/// endpoint, and a thousand idle endpoints kept writing. Someone else's change to the
/// object, its deletion, or a new desired state still leads to an apply.
async fn apply_object<K: Owned>(ctx: &Context, api: &Api<K>, obj: &K) -> Result<K> {
    apply_object_over(ctx, api, obj, None).await
}

/// [`apply_object`] when the caller has just read the live object (`Some(None)`: it is
/// absent), so it is not read twice.
async fn apply_object_over<K: Owned>(
    ctx: &Context,
    api: &Api<K>,
    obj: &K,
    live: Option<Option<&K>>,
) -> Result<K> {
    let meta = obj.meta();
    let name = meta.name.clone().ok_or(Error::MissingMetadata("name"))?;
    let key = applied_key::<K>(meta).ok_or(Error::MissingMetadata("ownerReferences"))?;
    let desired = desired_hash(obj)?;
    let last = match ctx.applied().get(&key) {
        Some(Known::Applied(last)) if last.desired == desired => Some(last.seen),
        _ => None,
    };
    if let Some(seen) = last {
        let live = match live {
            Some(live) => live.cloned(),
            None => ctx.cached_or_read(api, &key, &name).await?,
        };
        if let Some(live) = live
            && observed(live.meta(), meta) == seen
        {
            debug!(kind = %K::kind(&()), %name, "unchanged; not applied again");
            return Ok(live);
        }
    }
    let live = api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await?;
    ctx.applied().insert(
        key,
        Known::Applied(Applied {
            desired,
            seen: observed(live.meta(), meta),
            resource_version: live.meta().resource_version.clone(),
            object: CACHED_KINDS
                .contains(&K::kind(&()).as_ref())
                .then(|| Arc::new(live.clone()) as Arc<dyn std::any::Any + Send + Sync>),
        }),
    );
    Ok(live)
}

/// The key of an owned object in [`Context::applied`]: under its owning endpoint, so
/// [`Context::forget_applied`] finds it. `None` for an object without an owner.
fn applied_key<K: Resource<DynamicType = ()>>(meta: &ObjectMeta) -> Option<String> {
    let owner = meta.owner_references.as_ref()?.first()?;
    Some(owned_key::<K>(
        meta.namespace.as_deref().unwrap_or_default(),
        &owner.name,
        meta.name.as_deref().unwrap_or_default(),
    ))
}

fn owned_key<K: Resource<DynamicType = ()>>(namespace: &str, owner: &str, name: &str) -> String {
    format!("{namespace}/{owner}/{}/{name}", K::kind(&()))
}

/// Deletes an object the spec no longer asks for, if this endpoint owns it. Once none
/// is there, later reconciles do not look again until [`apply_object`] makes one.
async fn remove_if_owned<K>(
    ctx: &Context,
    api: &Api<K>,
    name: &str,
    endpoint: &IngestionEndpoint,
) -> Result<()>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug,
{
    let key = owned_key::<K>(
        endpoint.namespace().as_deref().unwrap_or_default(),
        &endpoint.name_any(),
        name,
    );
    if matches!(ctx.applied().get(&key), Some(Known::Absent)) {
        return Ok(());
    }
    if let Some(obj) = api.get_opt(name).await?
        && builders::is_owned_by(obj.meta(), endpoint)
    {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    ctx.applied().insert(key, Known::Absent);
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

    #[test]
    fn drift_is_a_change_to_what_the_operator_set_not_what_others_add() {
        let meta = |generation: i64, annotations: &[(&str, &str)]| ObjectMeta {
            generation: Some(generation),
            resource_version: Some(format!("{generation}0")),
            labels: Some(BTreeMap::from([("app".to_owned(), "ingest".to_owned())])),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        };
        let desired = meta(0, &[("anchorpipe.dev/config-hash", "a")]);
        let applied = observed(&meta(1, &[("anchorpipe.dev/config-hash", "a")]), &desired);
        // The Deployment controller's revision annotation is not drift.
        let revised = meta(
            1,
            &[
                ("anchorpipe.dev/config-hash", "a"),
                ("deployment.kubernetes.io/revision", "1"),
            ],
        );
        assert_eq!(observed(&revised, &desired), applied);
        // An edit of the operator's own annotation, or of the spec, is.
        let edited = meta(1, &[("anchorpipe.dev/config-hash", "b")]);
        assert_ne!(observed(&edited, &desired), applied);
        let removed = meta(1, &[]);
        assert_ne!(observed(&removed, &desired), applied);
        let respec = meta(2, &[("anchorpipe.dev/config-hash", "a")]);
        assert_ne!(observed(&respec, &desired), applied);
    }
}
