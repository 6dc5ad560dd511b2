//! The reconcile pipeline against an in-memory API server (`support`).
//!
//! Each test drives `reconcile` the way the controller would after watch events, and
//! checks the objects, status and Events the fake server ends up with. The broker and
//! the clock are fakes too, so a test can take the broker down or move time.

// A test crate: its helpers panic on broken invariants by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::accounts::FakeAccounts;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anchorpipe_crds::BrokerTopology;
use anchorpipe_crds::v1alpha1::IngestionEndpoint;
use anchorpipe_operator::Error;
use anchorpipe_operator::broker::{Broker, BrokerError};
use anchorpipe_operator::builders::Settings;
use anchorpipe_operator::metrics::Metrics;
use anchorpipe_operator::reconcile::{Context, error_policy, reconcile};
use futures_util::future::BoxFuture;
use http::Method;
use k8s_openapi::jiff::Timestamp;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use support::Store;

const NS: &str = "tenants";
const IE: &str = "/apis/anchorpipe.dev/v1alpha1/namespaces/tenants/ingestionendpoints/acme";
const SECRET: &str = "/api/v1/namespaces/tenants/secrets/acme-hmac";
const CONFIG_MAP: &str = "/api/v1/namespaces/tenants/configmaps/acme-ingest";
const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/tenants/deployments/acme-ingest";
const SERVICE: &str = "/api/v1/namespaces/tenants/services/acme-ingest";
const PDB: &str = "/apis/policy/v1/namespaces/tenants/poddisruptionbudgets/acme-ingest";
const INGRESS: &str = "/apis/networking.k8s.io/v1/namespaces/tenants/ingresses/acme-ingest";
const CREDENTIALS: &str = "/api/v1/namespaces/tenants/secrets/acme-credentials";
/// The tenant id of `tenants/acme`.
const TENANT: &str = "tenants.acme";
const REPO: &str = "7d3c1c8e-6a4c-4b55-9d84-2f1c0f0b8f61";
const HOUR: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------- fake broker

#[derive(Default)]
struct FakeBroker {
    down: AtomicBool,
    declared: Mutex<Vec<BrokerTopology>>,
    deleted: Mutex<Vec<BrokerTopology>>,
}

impl Broker for FakeBroker {
    fn declare<'a>(&'a self, t: &'a BrokerTopology) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(BrokerError::Failed(
                    "connecting to the broker: connection refused".into(),
                ));
            }
            self.declared.lock().unwrap().push(t.clone());
            Ok(())
        })
    }

    fn delete<'a>(&'a self, t: &'a BrokerTopology) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(BrokerError::Timeout(Duration::from_secs(10)));
            }
            self.deleted.lock().unwrap().push(t.clone());
            Ok(())
        })
    }
}

// ---------------------------------------------------------------- harness

struct Harness {
    store: Arc<Mutex<Store>>,
    broker: Arc<FakeBroker>,
    accounts: Arc<FakeAccounts>,
    now: Arc<Mutex<Timestamp>>,
    ctx: Arc<Context>,
    metrics: Arc<Metrics>,
}

fn t0() -> Timestamp {
    "2026-03-01T09:00:00Z".parse().unwrap()
}

impl Harness {
    fn new() -> Self {
        let store = Arc::new(Mutex::new(Store {
            now: t0().to_string(),
            ..Store::default()
        }));
        let client = support::client(store.clone());
        let broker = Arc::new(FakeBroker::default());
        let accounts = Arc::new(FakeAccounts::default());
        let now = Arc::new(Mutex::new(t0()));
        let clock_now = now.clone();
        let metrics = Arc::new(Metrics::default());
        let ctx = Arc::new(Context::new(
            client,
            Settings {
                ingest_image: "anchorpipe-ingest:test".into(),
                allowed_ingest_images: vec!["anchorpipe-ingest:canary".into()],
                trusted_proxies: vec!["10.42.0.0/16".into()],
                pod_defaults: Default::default(),
            },
            broker.clone(),
            accounts.clone(),
            metrics.clone(),
            Arc::new(move || *clock_now.lock().unwrap()),
            Duration::from_secs(300),
            Duration::from_secs(300),
        ));
        Self {
            store,
            broker,
            accounts,
            now,
            ctx,
            metrics,
        }
    }

    /// Creates or updates the endpoint, bumping the generation when the spec changes.
    fn put(&self, spec: Value, annotations: Value) {
        let mut store = self.store.lock().unwrap();
        let existing = store.objects.get(IE).cloned();
        let mut obj = match existing {
            Some(mut old) => {
                if old["spec"] != spec {
                    let generation = old["metadata"]["generation"].as_i64().unwrap() + 1;
                    old["metadata"]["generation"] = json!(generation);
                }
                old["spec"] = spec;
                old["metadata"]["annotations"] = annotations;
                old
            }
            None => {
                let mut obj = json!({
                    "apiVersion": "anchorpipe.dev/v1alpha1",
                    "kind": "IngestionEndpoint",
                    "metadata": {"name": "acme", "namespace": NS, "annotations": annotations},
                    "spec": spec,
                });
                store.stamp_new(&mut obj, IE);
                obj
            }
        };
        store.bump(&mut obj);
        store.objects.insert(IE.into(), obj);
    }

    fn get(&self, path: &str) -> Option<Value> {
        self.store.lock().unwrap().objects.get(path).cloned()
    }

    fn guard(&self) -> Arc<DeserializeGuard<IngestionEndpoint>> {
        let value = self.get(IE).expect("endpoint exists");
        Arc::new(serde_json::from_value(value).unwrap())
    }

    async fn reconcile(&self) -> Result<Action, Error> {
        let result = reconcile(self.guard(), self.ctx.clone()).await;
        if let Err(e) = &result {
            // What the controller would do next, so backoff state is exercised too.
            let _ = error_policy(self.guard(), e, self.ctx.clone());
        }
        result
    }

    /// Reconciles as the controller would after a watch event: the first pass on a new
    /// object only adds the finalizer.
    async fn converge(&self) -> Result<Action, Error> {
        let first = self.reconcile().await?;
        let has_finalizer = self.get(IE).is_some_and(|o| {
            o["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty())
        });
        if first == Action::await_change() && has_finalizer {
            return self.reconcile().await;
        }
        Ok(first)
    }

    fn delete(&self) {
        self.store
            .lock()
            .unwrap()
            .handle(Method::DELETE, IE, "", Value::Null);
    }

    fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap();
        *now = now
            .checked_add(k8s_openapi::jiff::SignedDuration::try_from(by).unwrap())
            .unwrap();
        self.store.lock().unwrap().now = now.to_string();
    }

    /// What the Deployment controller reports once it has rolled out the current spec
    /// and `ready` pods pass their readiness probe.
    fn set_deployment_ready(&self, ready: i64) {
        let mut store = self.store.lock().unwrap();
        let d = store.objects.get_mut(DEPLOYMENT).unwrap();
        d["status"] = json!({
            "observedGeneration": d["metadata"]["generation"],
            "replicas": d["spec"]["replicas"],
            "updatedReplicas": d["spec"]["replicas"],
            "readyReplicas": ready,
            "conditions": [{"type": "Available", "status": if ready > 0 { "True" } else { "False" }}]
        });
    }

    fn condition(&self, type_: &str) -> (String, String) {
        let obj = self.get(IE).unwrap();
        let c = obj["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == type_)
            .unwrap()
            .clone();
        (
            c["status"].as_str().unwrap().into(),
            c["reason"].as_str().unwrap().into(),
        )
    }

    fn condition_message(&self, type_: &str) -> String {
        let obj = self.get(IE).unwrap();
        obj["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == type_)
            .unwrap()["message"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn event_reasons(&self) -> Vec<String> {
        self.store
            .lock()
            .unwrap()
            .objects
            .iter()
            .filter(|(p, _)| p.contains("/events/"))
            .map(|(_, e)| e["reason"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    fn key_ids(&self) -> Vec<String> {
        let secret = self.get(SECRET).unwrap();
        secret["data"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    fn template_hash(&self) -> String {
        let d = self.get(DEPLOYMENT).unwrap();
        d["spec"]["template"]["metadata"]["annotations"]["anchorpipe.dev/config-hash"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn config(&self) -> Value {
        let cm = self.get(CONFIG_MAP).unwrap();
        serde_json::from_str(cm["data"]["config.json"].as_str().unwrap()).unwrap()
    }

    fn requests(&self, method: Method, path: &str) -> usize {
        self.store
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|(m, p)| *m == method && p == path)
            .count()
    }
}

fn spec() -> Value {
    json!({"repositories": [REPO]})
}

fn rotate(value: &str) -> Value {
    json!({"anchorpipe.dev/rotate-key": value})
}

// ---------------------------------------------------------------- scenarios

#[tokio::test]
async fn a_healthy_endpoint_resynced_with_nothing_changed_writes_no_status() {
    let h = Harness::new();
    h.put(spec(), json!({}));
    h.converge().await.unwrap();
    h.set_deployment_ready(2);
    h.reconcile().await.unwrap();
    assert_eq!(h.condition("Ready").0, "True");
    let status_path = format!("{IE}/status");
    let writes = h.requests(Method::PATCH, &status_path);
    assert!(writes >= 1);
    for _ in 0..3 {
        h.advance(Duration::from_secs(60));
        h.reconcile().await.unwrap();
    }
    assert_eq!(
        h.requests(Method::PATCH, &status_path),
        writes,
        "an idle resync rewrote the status"
    );
}

#[tokio::test]
async fn create_builds_every_object_and_becomes_ready() {
    let h = Harness::new();
    h.put(spec(), json!({}));

    // First pass: only the finalizer.
    assert_eq!(h.reconcile().await.unwrap(), Action::await_change());
    assert_eq!(
        h.get(IE).unwrap()["metadata"]["finalizers"],
        json!(["anchorpipe.dev/broker-topology"])
    );
    assert!(h.get(SECRET).is_none());

    h.reconcile().await.unwrap();
    for path in [SECRET, CREDENTIALS, CONFIG_MAP, DEPLOYMENT, SERVICE, PDB] {
        let obj = h.get(path).unwrap_or_else(|| panic!("{path} missing"));
        let owner = &obj["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "IngestionEndpoint", "{path}");
        assert_eq!(owner["controller"], true, "{path}");
        assert_eq!(
            owner["uid"],
            h.get(IE).unwrap()["metadata"]["uid"],
            "{path}"
        );
    }
    assert!(h.get(INGRESS).is_none());
    assert_eq!(h.key_ids().len(), 1);
    assert_eq!(h.config()["tenant"], TENANT);
    assert_eq!(h.config()["repositories"], json!([REPO]));
    assert_eq!(
        h.config()["protection"]["trustedProxies"],
        json!(["10.42.0.0/16"])
    );
    assert_eq!(
        h.config()["rateLimit"]["perEndpoint"]["requestsPerMinute"],
        300
    );
    assert_eq!(
        h.broker.declared.lock().unwrap()[0].queue,
        "anchorpipe.tenants.acme.reports"
    );

    // Pods not ready yet: everything but Available.
    assert_eq!(h.condition("SecretReady").0, "True");
    assert_eq!(h.condition("QueueReady").0, "True");
    assert_eq!(h.condition("Available"), ("False".into(), "Pending".into()));
    assert_eq!(h.condition("Ready").0, "False");

    h.set_deployment_ready(2);
    let action = h.reconcile().await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    assert_eq!(h.condition("Ready"), ("True".into(), "Ready".into()));
    let status = h.get(IE).unwrap()["status"].clone();
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(
        status["url"],
        "http://acme-ingest.tenants.svc/api/ingestion"
    );
    assert_eq!(status["secretName"], "acme-hmac");
    assert_eq!(status["currentKeyId"], json!(h.key_ids()[0]));
    assert_eq!(status["queue"], "anchorpipe.tenants.acme.reports");
    assert_eq!(status["readyReplicas"], 2);
    assert_eq!(status["tenant"], TENANT);
    assert_eq!(status["credentialsSecretName"], "acme-credentials");
    // The pods connect with the tenant's own credentials, named in the Secret.
    let creds = h.get(CREDENTIALS).unwrap();
    let id = creds["metadata"]["annotations"]["anchorpipe.dev/credentials-id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        h.accounts.live_credentials(TENANT),
        std::slice::from_ref(&id)
    );
    let grant = h.accounts.state.lock().unwrap().grants[&id].clone();
    assert_eq!(grant.routing_key, "tenant.tenants.acme.test-run");
    let template = &h.get(DEPLOYMENT).unwrap()["spec"]["template"];
    assert_eq!(
        template["metadata"]["annotations"]["anchorpipe.dev/credentials-id"],
        json!(id)
    );
    assert_eq!(
        template["spec"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]["name"],
        "acme-credentials"
    );
    assert_eq!(h.condition("CredentialsReady").0, "True");
    assert_eq!(h.condition("RepositoriesOwned").0, "True");
    let events = h.event_reasons();
    assert!(events.contains(&"KeyMinted".to_owned()), "{events:?}");
    assert!(events.contains(&"Ready".to_owned()), "{events:?}");
    // Written with server-side apply only: PATCHes to the objects, no create or replace.
    for path in [SECRET, CONFIG_MAP, DEPLOYMENT, SERVICE, PDB] {
        assert!(h.requests(Method::PATCH, path) >= 1, "{path}");
        assert_eq!(h.requests(Method::PUT, path), 0, "{path}");
    }
    let posts = h
        .store
        .lock()
        .unwrap()
        .requests
        .iter()
        .filter(|(m, p)| *m == Method::POST && !p.ends_with("/events"))
        .count();
    assert_eq!(posts, 0);
}

#[tokio::test]
async fn scaling_is_not_ready_until_the_deployment_status_catches_up() {
    let h = Harness::new();
    h.put(spec(), json!({}));
    h.converge().await.unwrap();
    h.set_deployment_ready(2);
    h.reconcile().await.unwrap();
    assert_eq!(h.condition("Ready").0, "True");

    // Scale 2→1: the applied Deployment has a new generation, its status still counts
    // the two ready pods of the old one.
    let mut s = spec();
    s["replicas"] = json!(1);
    h.put(s, json!({}));
    h.reconcile().await.unwrap();
    assert_eq!(
        h.condition("Available"),
        ("False".into(), "RollingOut".into())
    );
    assert_eq!(h.condition("Ready"), ("False".into(), "RollingOut".into()));
    let status = h.get(IE).unwrap()["status"].clone();
    assert_eq!(status["observedGeneration"], 2);

    // The Deployment controller catches up: ready for generation 2.
    h.set_deployment_ready(1);
    h.reconcile().await.unwrap();
    assert_eq!(h.condition("Ready"), ("True".into(), "Ready".into()));
    assert_eq!(h.get(IE).unwrap()["status"]["readyReplicas"], 1);
}

#[tokio::test]
async fn spec_update_rolls_pods_but_rotation_does_not() {
    let h = Harness::new();
    h.put(spec(), json!({}));
    h.converge().await.unwrap();
    let hash0 = h.template_hash();
    let key0 = h.key_ids();

    // More replicas: each pod's share shrinks, so the config and the pods change.
    let mut more = spec();
    more["replicas"] = 4.into();
    more["ingress"] = json!({"host": "reports.example.com", "tlsSecretName": "reports-tls"});
    h.put(more.clone(), json!({}));
    h.reconcile().await.unwrap();
    assert_eq!(
        h.config()["rateLimit"]["perEndpoint"]["requestsPerMinute"],
        150
    );
    let hash1 = h.template_hash();
    assert_ne!(hash0, hash1);
    assert_eq!(h.get(DEPLOYMENT).unwrap()["spec"]["replicas"], 4);
    assert_eq!(h.get(IE).unwrap()["status"]["observedGeneration"], 2);
    assert_eq!(
        h.get(IE).unwrap()["status"]["url"],
        "https://reports.example.com/api/ingestion"
    );
    assert!(h.get(INGRESS).is_some());
    assert_eq!(h.key_ids(), key0, "a spec change mints no key");

    // On-demand rotation: a second key, same pod template.
    h.put(more.clone(), rotate("2026-03-01"));
    h.reconcile().await.unwrap();
    let keys = h.key_ids();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], key0[0]);
    assert_eq!(h.template_hash(), hash1, "rotation must not roll the pods");
    assert_eq!(h.get(IE).unwrap()["status"]["currentKeyId"], json!(keys[1]));
    assert!(h.event_reasons().contains(&"KeyRotated".to_owned()));

    // Back to one replica without an Ingress: PDB and Ingress are removed.
    let mut one = spec();
    one["replicas"] = 1.into();
    h.put(one, rotate("2026-03-01"));
    h.reconcile().await.unwrap();
    assert!(h.get(PDB).is_none());
    assert!(h.get(INGRESS).is_none());
    assert_eq!(
        h.key_ids().len(),
        2,
        "the same request value does not rotate again"
    );
}

#[tokio::test]
async fn scheduled_rotation_keeps_the_old_key_for_the_grace_period() {
    let h = Harness::new();
    let mut s = spec();
    s["hmac"] = json!({"rotationPeriod": "10h", "gracePeriod": "2h"});
    h.put(s, json!({}));
    let action = h.converge().await.unwrap();
    // The next due event (rotation in 10h) is later than the resync.
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    let first = h.key_ids();
    let first_value = h.get(SECRET).unwrap()["data"][&first[0]].clone();

    h.advance(9 * HOUR);
    h.reconcile().await.unwrap();
    assert_eq!(h.key_ids(), first);

    h.advance(HOUR);
    h.reconcile().await.unwrap();
    let both = h.key_ids();
    assert_eq!(both.len(), 2);
    assert_eq!(both[0], first[0]);
    assert_eq!(
        h.get(SECRET).unwrap()["data"][&first[0]],
        first_value,
        "never overwritten"
    );

    h.advance(2 * HOUR);
    h.reconcile().await.unwrap();
    assert_eq!(h.key_ids(), vec![both[1].clone()]);
    assert_eq!(h.get(IE).unwrap()["status"]["currentKeyId"], json!(both[1]));
    assert!(h.event_reasons().contains(&"KeyRemoved".to_owned()));
    let text = h.metrics.encode().unwrap();
    assert!(
        text.contains("anchorpipe_operator_keys_removed_total 1"),
        "{text}"
    );
}

#[tokio::test]
async fn without_a_rotation_period_keys_rotate_only_on_demand() {
    let h = Harness::new();
    h.put(spec(), json!({}));
    h.converge().await.unwrap();
    let first = h.key_ids();
    let status = h.get(IE).unwrap()["status"].clone();
    assert_eq!(status["currentKeyMintedAt"], json!("2026-03-01T09:00:00Z"));
    assert!(status.get("nextRotationAt").is_none(), "{status}");
    assert!(status.get("previousKeyId").is_none(), "{status}");

    // A year on, the key a CI system stored is still the only one.
    h.advance(365 * 24 * HOUR);
    h.reconcile().await.unwrap();
    assert_eq!(h.key_ids(), first);

    h.put(spec(), rotate("now"));
    h.reconcile().await.unwrap();
    let both = h.key_ids();
    assert_eq!(both.len(), 2);
    let status = h.get(IE).unwrap()["status"].clone();
    assert_eq!(status["previousKeyId"], json!(first[0]));
    // The default grace period: 24h after the new key was minted.
    assert_eq!(
        status["previousKeyExpiresAt"],
        json!("2027-03-02T09:00:00Z")
    );
}

#[tokio::test]
async fn a_key_still_in_use_is_warned_about_before_it_stops_verifying() {
    let h = Harness::new();
    let mut s = spec();
    s["hmac"] = json!({"rotationPeriod": "10h", "gracePeriod": "2h", "expiryWarning": "3h"});
    h.put(s, json!({}));
    h.converge().await.unwrap();
    h.set_deployment_ready(2);
    let first = h.key_ids()[0].clone();
    let status = h.get(IE).unwrap()["status"].clone();
    assert_eq!(status["currentKeyMintedAt"], json!("2026-03-01T09:00:00Z"));
    assert_eq!(status["nextRotationAt"], json!("2026-03-01T19:00:00Z"));
    assert_eq!(
        h.condition("KeyExpiring"),
        ("False".into(), "NoKeyInUseExpiring".into())
    );

    // A CI system signs with the first key. At 8h its end (rotation at 10h + 2h grace)
    // is more than the warning time away: no warning, but a wake-up when it opens.
    h.advance(8 * HOUR);
    h.accounts
        .key_verified(TENANT, &first, "2026-03-01T17:00:00Z".parse().unwrap());
    h.reconcile().await.unwrap();
    assert_eq!(h.condition("KeyExpiring").0, "False");

    // At 9h the warning opens: condition and one Warning Event.
    h.advance(HOUR);
    h.reconcile().await.unwrap();
    assert_eq!(
        h.condition("KeyExpiring"),
        ("True".into(), "KeyInUseExpiring".into())
    );
    let message = h.condition_message("KeyExpiring");
    assert!(
        message.starts_with(&format!("key {first} is still in use")),
        "{message}"
    );
    assert!(message.contains("2026-03-01T21:00:00Z"), "{message}");
    assert!(h.event_reasons().contains(&"KeyExpiring".to_owned()));
    assert_eq!(h.condition("Ready").0, "True", "a warning, not a fault");
    h.reconcile().await.unwrap();
    let text = h.metrics.encode().unwrap();
    assert!(
        text.contains("anchorpipe_operator_key_expiry_warnings_total 1"),
        "one Event per expiring key: {text}"
    );

    // Rotated at 10h; the pipeline still signs with the old key at 10.5h.
    h.advance(HOUR);
    h.reconcile().await.unwrap();
    let second = h.key_ids()[1].clone();
    h.advance(HOUR / 2);
    h.accounts
        .key_verified(TENANT, &first, "2026-03-01T19:30:00Z".parse().unwrap());
    h.reconcile().await.unwrap();
    let status = h.get(IE).unwrap()["status"].clone();
    assert_eq!(status["previousKeyId"], json!(first));
    assert_eq!(
        status["previousKeyExpiresAt"],
        json!("2026-03-01T21:00:00Z")
    );
    assert_eq!(status["currentKeyId"], json!(second));
    let message = h.condition_message("KeyExpiring");
    assert!(
        message.contains(&format!("was replaced by {second}")),
        "{message}"
    );

    // Its grace period over, the old key is gone and so is the warning.
    h.advance(2 * HOUR);
    h.reconcile().await.unwrap();
    assert_eq!(h.key_ids(), vec![second]);
    assert_eq!(h.condition("KeyExpiring").0, "False");
    assert!(h.get(IE).unwrap()["status"].get("previousKeyId").is_none());
}

#[tokio::test]
async fn deletion_removes_queues_then_the_finalizer() {
    let h = Harness::new();
    let mut s = spec();
    s["queue"] = json!({"deletionPolicy": "Delete"});
    h.put(s, json!({}));
    h.converge().await.unwrap();

    h.delete();
    assert!(h.get(IE).unwrap()["metadata"]["deletionTimestamp"].is_string());
    h.reconcile().await.unwrap();
    assert_eq!(
        h.broker.deleted.lock().unwrap()[0].queue,
        "anchorpipe.tenants.acme.reports"
    );
    assert!(h.get(IE).is_none(), "finalizer released, object gone");
    assert!(h.event_reasons().contains(&"QueueDeleted".to_owned()));
}

#[tokio::test]
async fn deletion_with_retain_keeps_queues() {
    let h = Harness::new();
    h.put(spec(), json!({}));
    h.converge().await.unwrap();
    h.delete();
    h.reconcile().await.unwrap();
    assert!(h.broker.deleted.lock().unwrap().is_empty());
    assert!(h.get(IE).is_none());
    assert!(h.event_reasons().contains(&"QueueRetained".to_owned()));
}

#[tokio::test]
async fn broker_down_is_reported_and_retried_with_backoff() {
    let h = Harness::new();
    h.put(spec(), json!({}));
    h.reconcile().await.unwrap();
    h.broker.down.store(true, Ordering::SeqCst);

    let err = h.reconcile().await.unwrap_err();
    assert!(!err.is_permanent(), "{err}");
    // Everything Kubernetes-side is in place anyway, and the status says what is wrong.
    assert!(h.get(DEPLOYMENT).is_some());
    assert_eq!(
        h.condition("QueueReady"),
        ("False".into(), "BrokerUnavailable".into())
    );
    assert_eq!(
        h.condition("Ready"),
        ("False".into(), "BrokerUnavailable".into())
    );
    assert!(h.event_reasons().contains(&"BrokerUnavailable".to_owned()));

    // A burst of failures (each one's status write and Events trigger the next
    // reconcile at once) does not inflate the delay: it follows the streak's length.
    let guard = h.guard();
    for _ in 0..8 {
        assert!(h.reconcile().await.is_err());
    }
    assert_eq!(
        error_policy(guard.clone(), &err, h.ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    h.advance(Duration::from_secs(30));
    assert!(h.reconcile().await.is_err());
    assert_eq!(
        error_policy(guard.clone(), &err, h.ctx.clone()),
        Action::requeue(Duration::from_secs(30))
    );
    h.advance(Duration::from_secs(600));
    assert_eq!(
        error_policy(guard.clone(), &err, h.ctx.clone()),
        Action::requeue(Duration::from_secs(60)),
        "a long outage is retried at least every minute"
    );

    // The broker comes back: ready again, and the next streak starts over.
    h.broker.down.store(false, Ordering::SeqCst);
    h.set_deployment_ready(1);
    h.reconcile().await.unwrap();
    assert_eq!(h.condition("Ready").0, "True");
    assert_eq!(h.condition("QueueReady").0, "True");
    h.advance(Duration::from_secs(600));
    assert_eq!(
        error_policy(guard, &err, h.ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
}

#[tokio::test]
async fn a_namespace_being_deleted_is_not_retried() {
    let h = Harness::new();
    h.put(spec(), json!({}));
    // The finalizer is added (an update, still allowed), then the namespace starts
    // terminating before the first objects are created.
    assert_eq!(h.reconcile().await.unwrap(), Action::await_change());
    h.store.lock().unwrap().terminating.push(NS.into());

    let err = h.reconcile().await.unwrap_err();
    assert!(err.is_permanent(), "{err}");
    assert_eq!(
        error_policy(h.guard(), &err, h.ctx.clone()),
        Action::await_change()
    );
    assert!(h.get(SECRET).is_none());
}

#[tokio::test]
async fn deletion_with_broker_down_is_bounded() {
    let h = Harness::new();
    let mut s = spec();
    s["queue"] = json!({"deletionPolicy": "Delete"});
    h.put(s, json!({}));
    h.converge().await.unwrap();
    h.broker.down.store(true, Ordering::SeqCst);
    h.delete();

    let err = h.reconcile().await.unwrap_err();
    assert!(!err.is_permanent());
    assert!(
        h.get(IE).is_some(),
        "finalizer kept while within the deadline"
    );
    assert!(
        h.event_reasons()
            .contains(&"BrokerCleanupFailed".to_owned())
    );

    // Whatever the backoff has grown to, the next try comes by the deadline.
    h.advance(Duration::from_secs(290));
    let err = h.reconcile().await.unwrap_err();
    assert_eq!(
        error_policy(h.guard(), &err, h.ctx.clone()),
        Action::requeue(Duration::from_secs(11))
    );
    assert!(h.get(IE).is_some());
    h.advance(Duration::from_secs(11));
    h.reconcile().await.unwrap();
    assert!(h.get(IE).is_none(), "finalizer released after the deadline");
    assert!(
        h.event_reasons()
            .contains(&"BrokerCleanupAbandoned".to_owned())
    );
    let text = h.metrics.encode().unwrap();
    assert!(
        text.contains("finalizers_released_without_cleanup_total{reason=\"Timeout\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn skip_annotation_releases_the_finalizer_at_once() {
    let h = Harness::new();
    let mut s = spec();
    s["queue"] = json!({"deletionPolicy": "Delete"});
    h.put(s.clone(), json!({}));
    h.converge().await.unwrap();
    h.broker.down.store(true, Ordering::SeqCst);
    h.put(s, json!({"anchorpipe.dev/skip-broker-cleanup": "true"}));
    h.delete();
    h.reconcile().await.unwrap();
    assert!(h.get(IE).is_none());
    assert!(
        h.event_reasons()
            .contains(&"BrokerCleanupSkipped".to_owned())
    );
}

#[tokio::test]
async fn invalid_spec_waits_for_a_change() {
    let h = Harness::new();
    // Got past the API server somehow (e.g. stored before the CEL rule existed).
    let mut s = spec();
    s["hmac"] = json!({"rotationPeriod": "2h", "gracePeriod": "3h"});
    h.put(s, json!({}));
    h.reconcile().await.unwrap();
    let err = h.reconcile().await.unwrap_err();
    assert!(err.is_permanent(), "{err}");
    assert_eq!(
        error_policy(h.guard(), &err, h.ctx.clone()),
        Action::await_change()
    );
    assert_eq!(h.condition("Ready"), ("False".into(), "InvalidSpec".into()));
    let message = h.condition_message("Ready");
    assert!(message.contains("gracePeriod"), "{message}");
    assert!(
        h.get(DEPLOYMENT).is_none(),
        "nothing built from an invalid spec"
    );
    assert!(h.event_reasons().contains(&"InvalidSpec".to_owned()));
}

#[tokio::test]
async fn malformed_object_is_reported_and_cannot_block_deletion() {
    let h = Harness::new();
    h.put(
        json!({"repositories": [REPO], "replicas": "lots"}),
        json!({}),
    );
    let err = h.reconcile().await.unwrap_err();
    assert!(matches!(err, Error::Malformed(_)), "{err}");
    assert!(err.is_permanent());
    assert!(h.event_reasons().contains(&"InvalidObject".to_owned()));

    // It carried our finalizer from an earlier, valid life; deleting it must not hang.
    {
        let mut store = h.store.lock().unwrap();
        let obj = store.objects.get_mut(IE).unwrap();
        obj["metadata"]["finalizers"] = json!(["anchorpipe.dev/broker-topology"]);
    }
    h.delete();
    h.reconcile().await.unwrap();
    assert!(h.get(IE).is_none());
}

#[tokio::test]
async fn foreign_secret_is_never_taken_over() {
    let h = Harness::new();
    h.put(spec(), json!({}));
    h.store.lock().unwrap().objects.insert(
        SECRET.into(),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "acme-hmac", "namespace": NS}, "data": {"k20260101-000000-aaaaaa": "c2VjcmV0"}}),
    );
    let err = h.converge().await.unwrap_err();
    assert!(err.is_permanent(), "{err}");
    assert_eq!(
        h.get(SECRET).unwrap()["data"],
        json!({"k20260101-000000-aaaaaa": "c2VjcmV0"})
    );
    assert_eq!(h.requests(Method::PATCH, SECRET), 0);
}

#[tokio::test]
async fn referenced_secret_is_mounted_and_checked() {
    let h = Harness::new();
    let mut s = spec();
    s["hmac"] = json!({"secretRef": {"name": "my-keys"}});
    h.put(s, json!({}));
    let err = h.converge().await.unwrap_err();
    assert!(!err.is_permanent(), "the user may still create it: {err}");
    assert_eq!(
        h.condition("SecretReady"),
        ("False".into(), "SecretNotFound".into())
    );
    assert!(h.get(SECRET).is_none(), "nothing minted");
    let d = h.get(DEPLOYMENT).unwrap();
    let volumes = d["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
    let keys = volumes.iter().find(|v| v["name"] == "keys").unwrap();
    assert_eq!(keys["secret"]["secretName"], "my-keys");

    h.store.lock().unwrap().objects.insert(
        "/api/v1/namespaces/tenants/secrets/my-keys".into(),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "my-keys", "namespace": NS}, "data": {"2026-01": "YQ==", "2026-02": "Yg=="}}),
    );
    h.reconcile().await.unwrap();
    assert_eq!(
        h.condition("SecretReady"),
        ("True".into(), "SecretFound".into())
    );
    assert_eq!(h.get(IE).unwrap()["status"]["currentKeyId"], "2026-02");
}

#[tokio::test]
async fn a_second_endpoint_for_the_same_tenant_touches_nothing() {
    let h = Harness::new();
    // Another endpoint of the namespace holds the tenant id `tenants.acme`.
    let holder = anchorpipe_operator::accounts::Claimant {
        namespace: NS.into(),
        name: "first".into(),
        uid: "uid-first".into(),
    };
    h.accounts
        .state
        .lock()
        .unwrap()
        .tenants
        .insert(TENANT.into(), holder);
    h.store.lock().unwrap().objects.insert(
        "/apis/anchorpipe.dev/v1alpha1/namespaces/tenants/ingestionendpoints/first".into(),
        json!({"apiVersion": "anchorpipe.dev/v1alpha1", "kind": "IngestionEndpoint",
               "metadata": {"name": "first", "namespace": NS, "uid": "uid-first", "generation": 1},
               "spec": {"tenant": "acme", "repositories": [REPO]}}),
    );
    let mut s = spec();
    s["queue"] = json!({"deletionPolicy": "Delete"});
    h.put(s, json!({}));
    h.reconcile().await.unwrap();
    let action = h.reconcile().await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    assert_eq!(
        h.condition("Ready"),
        ("False".into(), "TenantConflict".into())
    );
    assert!(h.condition_message("Ready").contains("tenants/first"));
    for path in [SECRET, CREDENTIALS, CONFIG_MAP, DEPLOYMENT] {
        assert!(
            h.get(path).is_none(),
            "{path} created for a conflicting tenant"
        );
    }
    assert!(h.broker.declared.lock().unwrap().is_empty());

    // Deleting it leaves the holder's queues, credentials and claim alone.
    h.delete();
    h.reconcile().await.unwrap();
    assert!(h.get(IE).is_none());
    assert!(h.broker.deleted.lock().unwrap().is_empty());
    assert_eq!(
        h.accounts.state.lock().unwrap().tenants[TENANT].uid,
        "uid-first"
    );
    assert!(h.event_reasons().contains(&"NothingToCleanUp".to_owned()));
}

#[tokio::test]
async fn a_repository_of_another_tenant_is_left_out_and_reported() {
    let h = Harness::new();
    let other = "0b0b0b0b-0000-4000-8000-000000000001";
    h.accounts
        .state
        .lock()
        .unwrap()
        .repositories
        .insert(other.parse().unwrap(), "elsewhere.team".into());
    let mut s = spec();
    s["repositories"] = json!([REPO, other]);
    h.put(s, json!({}));
    h.converge().await.unwrap();
    assert_eq!(h.config()["repositories"], json!([REPO]));
    assert_eq!(
        h.condition("RepositoriesOwned"),
        ("False".into(), "RepositoryConflict".into())
    );
    assert!(h.condition_message("RepositoriesOwned").contains(other));
    assert_eq!(h.condition("Ready").1, "RepositoryConflict");
    assert!(h.event_reasons().contains(&"RepositoryConflict".to_owned()));

    // The owner lets it go: the next reconcile claims it.
    h.accounts
        .state
        .lock()
        .unwrap()
        .repositories
        .remove(&other.parse().unwrap());
    h.reconcile().await.unwrap();
    assert_eq!(h.config()["repositories"], json!([REPO, other]));
    assert_eq!(h.condition("RepositoriesOwned").0, "True");
}

#[tokio::test]
async fn an_image_the_platform_does_not_allow_is_refused() {
    let h = Harness::new();
    let mut s = spec();
    s["image"] = json!("busybox");
    h.put(s, json!({}));
    h.reconcile().await.unwrap();
    let err = h.reconcile().await.unwrap_err();
    assert!(err.is_permanent(), "{err}");
    assert_eq!(
        h.condition("Ready"),
        ("False".into(), "ImageNotAllowed".into())
    );
    assert!(h.get(DEPLOYMENT).is_none());
    assert!(h.get(CREDENTIALS).is_none(), "no credentials for it either");

    // An allowed one runs.
    let mut s = spec();
    s["image"] = json!("anchorpipe-ingest:canary");
    h.put(s, json!({}));
    h.converge().await.unwrap();
    assert_eq!(
        h.get(DEPLOYMENT).unwrap()["spec"]["template"]["spec"]["containers"][0]["image"],
        "anchorpipe-ingest:canary"
    );
}

#[tokio::test]
async fn names_of_another_tenant_are_refused_and_never_deleted() {
    let h = Harness::new();
    let mut s = spec();
    s["queue"] = json!({"name": "anchorpipe.other.ci.reports", "deletionPolicy": "Delete"});
    h.put(s, json!({}));
    h.reconcile().await.unwrap();
    let err = h.reconcile().await.unwrap_err();
    assert!(err.is_permanent(), "{err}");
    assert_eq!(h.condition("Ready"), ("False".into(), "InvalidSpec".into()));
    assert!(
        h.condition_message("Ready")
            .contains("anchorpipe.tenants.acme.")
    );
    assert!(h.broker.declared.lock().unwrap().is_empty());
    h.delete();
    h.reconcile().await.unwrap();
    assert!(h.get(IE).is_none());
    assert!(
        h.broker.deleted.lock().unwrap().is_empty(),
        "another tenant's queue deleted"
    );
}

#[tokio::test]
async fn credential_rotation_rolls_the_pods_then_revokes_the_old_set() {
    let h = Harness::new();
    h.put(spec(), json!({}));
    h.converge().await.unwrap();
    h.set_deployment_ready(2);
    h.reconcile().await.unwrap();
    let first = h.accounts.live_credentials(TENANT);
    assert_eq!(first.len(), 1);

    h.put(spec(), json!({"anchorpipe.dev/rotate-credentials": "1"}));
    h.reconcile().await.unwrap();
    let both = h.accounts.live_credentials(TENANT);
    assert_eq!(both.len(), 2, "the old set stays while old pods run");
    let creds = h.get(CREDENTIALS).unwrap();
    let current = creds["metadata"]["annotations"]["anchorpipe.dev/credentials-id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(current, first[0]);
    assert_eq!(
        creds["metadata"]["annotations"]["anchorpipe.dev/retiring-credentials-id"],
        json!(first[0])
    );
    assert!(h.event_reasons().contains(&"CredentialsMinted".to_owned()));

    // The Deployment controller rolls the pods onto the new template.
    h.set_deployment_ready(2);
    h.reconcile().await.unwrap();
    assert_eq!(h.accounts.live_credentials(TENANT), [current]);
    assert!(
        h.get(CREDENTIALS).unwrap()["metadata"]["annotations"]
            .get("anchorpipe.dev/retiring-credentials-id")
            .is_none()
    );
    assert!(h.event_reasons().contains(&"CredentialsRevoked".to_owned()));
}

#[tokio::test]
async fn deletion_revokes_credentials_and_releases_claims() {
    let h = Harness::new();
    h.put(spec(), json!({}));
    h.converge().await.unwrap();
    assert_eq!(h.accounts.live_credentials(TENANT).len(), 1);
    h.delete();
    h.reconcile().await.unwrap();
    assert!(h.get(IE).is_none());
    let state = h.accounts.state.lock().unwrap();
    assert!(state.tenants.is_empty());
    assert!(state.repositories.is_empty());
    assert!(!state.credentials.contains_key(TENANT));
}

#[tokio::test]
async fn the_platform_database_away_is_retried_not_fatal() {
    let h = Harness::new();
    h.put(spec(), json!({}));
    h.reconcile().await.unwrap();
    h.accounts.down.store(true, Ordering::SeqCst);
    let err = h.reconcile().await.unwrap_err();
    assert!(!err.is_permanent(), "{err}");
    h.accounts.down.store(false, Ordering::SeqCst);
    h.converge().await.unwrap();
    assert_eq!(h.condition("CredentialsReady").0, "True");
}

#[tokio::test]
async fn a_claim_left_by_a_deleted_endpoint_is_taken_over() {
    let h = Harness::new();
    // An earlier `acme` whose deletion gave up on an unreachable database.
    h.accounts.state.lock().unwrap().tenants.insert(
        TENANT.into(),
        anchorpipe_operator::accounts::Claimant {
            namespace: NS.into(),
            name: "acme".into(),
            uid: "uid-of-the-deleted-acme".into(),
        },
    );
    h.put(spec(), json!({}));
    h.converge().await.unwrap();
    let uid = h.get(IE).unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(h.accounts.state.lock().unwrap().tenants[TENANT].uid, uid);
    assert_eq!(h.condition("CredentialsReady").0, "True");
}

#[tokio::test]
async fn deletion_with_the_broker_gone_for_good_still_releases_the_claims() {
    let h = Harness::new();
    let mut s = spec();
    s["queue"] = json!({"deletionPolicy": "Delete"});
    h.put(s, json!({}));
    h.converge().await.unwrap();
    h.broker.down.store(true, Ordering::SeqCst);
    h.delete();
    assert!(
        h.reconcile().await.is_err(),
        "retried while within the timeout"
    );
    h.advance(Duration::from_secs(301));
    h.reconcile().await.unwrap();
    assert!(h.get(IE).is_none());
    let state = h.accounts.state.lock().unwrap();
    assert!(state.tenants.is_empty(), "claim left behind");
    assert!(state.repositories.is_empty());
}
