//! End to end, from `kubectl apply` to a message in the tenant's queue, against the real
//! control plane of `scripts/cluster.sh`, the operator as a local process, and the real
//! ingest binary run from the operator's pod template (see `anchorpipe_e2e::kubelet`).
//!
//! Every test has its own namespace, tenant names, database and queues, so they run in
//! parallel; the ones that stop the broker, the API server or the operator take the
//! exclusive lock and restore what they stopped even when they fail. Timings go to
//! `target/e2e-logs/timings.tsv`, process logs beside it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use anchorpipe_crds::v1alpha1::{FINALIZER, IngestionEndpoint};
use anchorpipe_e2e::cluster::{TestNs, condition, kubectl, kubectl_stdin};
use anchorpipe_e2e::suffix;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::ListParams;
use kube::{Resource, ResourceExt};
use serde_json::json;

/// How long an endpoint may take to become Ready: a reconcile, a Deployment rollout
/// through the scheduler and kwok, and the reconcile its status change triggers.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

fn repo() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn assert_owned<K: Resource<DynamicType = ()>>(obj: &K, ep: &IngestionEndpoint) {
    let uid = ep.uid().unwrap();
    let owners = obj.meta().owner_references.clone().unwrap_or_default();
    assert!(
        owners
            .iter()
            .any(|o| o.uid == uid && o.controller == Some(true) && o.kind == "IngestionEndpoint"),
        "{} {:?} is not controlled by the endpoint: {owners:?}",
        K::kind(&()),
        obj.meta().name
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_creates_owned_objects_and_ready_status() {
    let mut ns = TestNs::new("apply_creates_owned_objects_and_ready_status").await;
    ns.platform().await;
    let tenant = format!("orders-{}", suffix());
    let host = format!("reports-{}.example.com", suffix());
    let name = "orders";
    ns.apply(
        name,
        json!({
            "tenant": tenant,
            "repositories": [repo()],
            "replicas": 2,
            "ingress": {"host": host},
        }),
    )
    .await
    .unwrap();
    ns.track_queue(&format!("anchorpipe.{tenant}.reports"));
    let ep = ns.wait_ready(name, READY_TIMEOUT).await;

    // Everything the tenant needs exists and is owned by the endpoint.
    let secret = ns.api::<Secret>().get("orders-hmac").await.unwrap();
    assert_owned(&secret, &ep);
    assert_owned(
        &ns.api::<ConfigMap>().get("orders-ingest").await.unwrap(),
        &ep,
    );
    let deployment = ns.api::<Deployment>().get("orders-ingest").await.unwrap();
    assert_owned(&deployment, &ep);
    assert_owned(
        &ns.api::<Service>().get("orders-ingest").await.unwrap(),
        &ep,
    );
    let ingress = ns.api::<Ingress>().get("orders-ingest").await.unwrap();
    assert_owned(&ingress, &ep);
    let rule_host = ingress.spec.unwrap().rules.unwrap()[0].host.clone();
    assert_eq!(rule_host.as_deref(), Some(host.as_str()));
    assert_owned(
        &ns.api::<PodDisruptionBudget>()
            .get("orders-ingest")
            .await
            .unwrap(),
        &ep,
    );
    assert!(ep.finalizers().iter().any(|f| f == FINALIZER));

    // The pods really became Ready (kwok), and the status says what a user needs.
    let pods = ns
        .api::<Pod>()
        .list(&ListParams::default().labels("app.kubernetes.io/instance=orders"))
        .await
        .unwrap();
    let ready = pods
        .items
        .iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count();
    assert_eq!(ready, 2, "ready pods");
    let status = ep.status.clone().unwrap();
    assert_eq!(status.observed_generation, ep.metadata.generation);
    for type_ in ["SecretReady", "QueueReady", "Available", "Ready"] {
        let c = condition(&ep, type_).unwrap_or_else(|| panic!("no {type_} condition"));
        assert_eq!(c.status, "True", "{type_}: {c:?}");
        assert_eq!(c.observed_generation, ep.metadata.generation, "{type_}");
    }
    assert_eq!(status.tenant.as_deref(), Some(tenant.as_str()));
    let url = format!("http://{host}/api/ingestion");
    assert_eq!(status.url.as_deref(), Some(url.as_str()));
    assert_eq!(status.secret_name.as_deref(), Some("orders-hmac"));
    assert_eq!(status.ready_replicas, Some(2));
    assert_eq!(
        status.queue.as_deref(),
        Some(format!("anchorpipe.{tenant}.reports").as_str())
    );
    let key_id = status.current_key_id.clone().unwrap();
    assert!(
        secret.data.unwrap().contains_key(&key_id),
        "current key in the Secret"
    );

    // The printer columns.
    let out = kubectl(&["get", "ingestionendpoints", "-n", &ns.name]).await;
    assert!(out.success, "{}", out.stderr);
    let header: Vec<&str> = out
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "READY", "TENANT", "URL", "REPLICAS", "AGE"],
        "{}",
        out.stdout
    );
    let row: Vec<&str> = out
        .stdout
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..5],
        [name, "True", tenant.as_str(), url.as_str(), "2"],
        "{}",
        out.stdout
    );
    let wide = kubectl(&["get", "ie", "-n", &ns.name, "-o", "wide"]).await;
    assert!(
        wide.stdout.lines().next().unwrap().contains("KEY"),
        "{}",
        wide.stdout
    );
    assert!(wide.stdout.contains(&key_id), "{}", wide.stdout);

    // A spec change is observed: one replica, so the PodDisruptionBudget goes away.
    ns.apply(
        name,
        json!({
            "tenant": tenant,
            "repositories": ep.spec.repositories,
            "replicas": 1,
            "ingress": {"host": host},
        }),
    )
    .await
    .unwrap();
    let ep2 = ns.wait_ready(name, READY_TIMEOUT).await;
    assert!(ep2.metadata.generation > ep.metadata.generation);
    assert_eq!(ep2.status.unwrap().ready_replicas, Some(1));
    assert!(
        ns.api::<PodDisruptionBudget>()
            .get_opt("orders-ingest")
            .await
            .unwrap()
            .is_none()
    );
    // The minted key survived the change.
    let secret = ns.api::<Secret>().get("orders-hmac").await.unwrap();
    assert!(secret.data.unwrap().contains_key(&key_id));
    ns.finish().await;
}

/// Applies `spec` and returns the API server's refusal message.
async fn refusal(ns: &TestNs, name: &str, spec: serde_json::Value) -> String {
    match ns.apply(name, spec.clone()).await {
        Ok(_) => panic!("the API server accepted {spec}"),
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            status.message
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_objects_are_refused_by_the_api_server() {
    let mut ns = TestNs::new("invalid_objects_are_refused_by_the_api_server").await;
    let r = repo();
    let cases = [
        (
            "burst below 1",
            json!({"repositories": [r], "rateLimit": {"perRepository": {"requestsPerMinute": 60, "burst": 0}}}),
            vec![
                "spec.rateLimit.perRepository.burst",
                "should be greater than or equal to 1",
            ],
        ),
        (
            "grace not shorter than rotation",
            json!({"repositories": [r], "hmac": {"rotationPeriod": "2h", "gracePeriod": "2h"}}),
            vec![
                "spec.hmac",
                "gracePeriod must be shorter than rotationPeriod",
            ],
        ),
        (
            "rotation below the minimum",
            json!({"repositories": [r], "hmac": {"rotationPeriod": "30m", "gracePeriod": "1m"}}),
            vec!["rotationPeriod must be at least 1h"],
        ),
        (
            "repository not a UUID",
            json!({"repositories": ["not-a-uuid"]}),
            vec!["spec.repositories", "every repository must be a UUID"],
        ),
        (
            "ingress host with a scheme",
            json!({"repositories": [r], "ingress": {"host": "https://Reports.example.com"}}),
            vec!["spec.ingress.host", "host must be a lowercase DNS name"],
        ),
        (
            "reserved queue name",
            json!({"repositories": [r], "queue": {"name": "amq.orders"}}),
            vec!["reserved by RabbitMQ"],
        ),
        (
            "no signature scheme",
            json!({"repositories": [r], "signatures": {"legacy": false, "standardWebhooks": false}}),
            vec!["at least one signature scheme must be enabled"],
        ),
    ];
    for (case, spec, expected) in cases {
        let message = refusal(&ns, "bad", spec).await;
        for needle in expected {
            assert!(
                message.contains(needle),
                "{case}: {needle:?} not in {message:?}"
            );
        }
    }

    // The same refusal through kubectl, as a person would see it.
    let manifest = json!({
        "apiVersion": "anchorpipe.dev/v1alpha1",
        "kind": "IngestionEndpoint",
        "metadata": {"name": "bad", "namespace": ns.name},
        "spec": {"repositories": [r], "rateLimit": {"perEndpoint": {"requestsPerMinute": 600, "burst": 0}}},
    })
    .to_string();
    let out = kubectl_stdin(&["apply", "-f", "-"], Some(&manifest)).await;
    assert!(!out.success);
    assert!(
        out.stderr.contains("spec.rateLimit.perEndpoint.burst")
            && out.stderr.contains("should be greater than or equal to 1"),
        "{}",
        out.stderr
    );

    // Transition rules: the tenant cannot be renamed once created.
    let tenant = format!("good-{}", suffix());
    ns.apply("good", json!({"tenant": tenant, "repositories": [r]}))
        .await
        .unwrap();
    ns.track_queue(&format!("anchorpipe.{tenant}.reports"));
    let message = refusal(
        &ns,
        "good",
        json!({"tenant": "renamed", "repositories": [r]}),
    )
    .await;
    assert!(
        message.contains("tenant cannot be changed after creation"),
        "{message}"
    );
    // Nothing invalid was stored.
    let stored: Vec<String> = ns
        .endpoints()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|e| e.name_any())
        .collect();
    assert_eq!(stored, ["good"]);
    ns.finish().await;
}
