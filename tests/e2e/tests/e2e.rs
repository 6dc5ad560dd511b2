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
use anchorpipe_e2e::cluster::{
    CLEANUP_TIMEOUT_SECONDS, Kubectl, TestNs, condition, ensure_operator, kill_operator, kubectl,
    kubectl_stdin, operator_running, script,
};
use anchorpipe_e2e::kubelet::Pod as KubeletPod;
use anchorpipe_e2e::{broker, eventually, report, suffix};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
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
    ns.track_queue(&format!("anchorpipe.{}.reports", ns.tenant_id(&tenant)));
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
    assert_eq!(
        status.tenant.as_deref(),
        Some(ns.tenant_id(&tenant).as_str())
    );
    let url = format!("http://{host}/api/ingestion");
    assert_eq!(status.url.as_deref(), Some(url.as_str()));
    assert_eq!(status.secret_name.as_deref(), Some("orders-hmac"));
    assert_eq!(status.ready_replicas, Some(2));
    assert_eq!(
        status.queue.as_deref(),
        Some(format!("anchorpipe.{}.reports", ns.tenant_id(&tenant)).as_str())
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
        [
            name,
            "True",
            ns.tenant_id(&tenant).as_str(),
            url.as_str(),
            "2"
        ],
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
    // The operator copies readyReplicas from the Deployment's status, which lags the
    // scale-down by a Deployment controller round; it must catch up.
    let api = ns.endpoints();
    eventually("readyReplicas 1", READY_TIMEOUT, || {
        let api = api.clone();
        async move {
            let ep = api.get("orders").await.map_err(|e| e.to_string())?;
            match ep.status.as_ref().and_then(|s| s.ready_replicas) {
                Some(1) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
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

    // Drift is repaired from the watch, well before the 60 s resync: the operator's own
    // writes are ignored as triggers, someone else's change or deletion is not.
    let config_maps = ns.api::<ConfigMap>();
    let rendered = config_maps.get("orders-ingest").await.unwrap().data;
    let file = rendered
        .as_ref()
        .and_then(|d| d.keys().next())
        .unwrap()
        .clone();
    let tampered = json!({"data": {file: "{}"}});
    config_maps
        .patch(
            "orders-ingest",
            &PatchParams::default(),
            &Patch::Merge(&tampered),
        )
        .await
        .unwrap();
    let repaired = |what: &'static str| {
        let config_maps = config_maps.clone();
        let rendered = rendered.clone();
        eventually(what, Duration::from_secs(20), move || {
            let config_maps = config_maps.clone();
            let rendered = rendered.clone();
            async move {
                match config_maps.get_opt("orders-ingest").await {
                    Ok(Some(cm)) if cm.data == rendered => Ok(()),
                    Ok(other) => Err(format!("{:?}", other.map(|cm| cm.data))),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
    };
    repaired("the edited ConfigMap restored").await;
    config_maps
        .delete("orders-ingest", &DeleteParams::default())
        .await
        .unwrap();
    repaired("the deleted ConfigMap recreated").await;
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
            "key timings with a referenced Secret",
            json!({"repositories": [r], "hmac": {"secretRef": {"name": "keys"}, "expiryWarning": "1h"}}),
            vec![
                "spec.hmac",
                "rotationPeriod, gracePeriod and expiryWarning apply to minted keys only",
            ],
        ),
        (
            "expiry warning not a duration",
            json!({"repositories": [r], "hmac": {"expiryWarning": "3d"}}),
            vec!["spec.hmac.expiryWarning"],
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

    // Transition rules: the tenant cannot be renamed once created. (Without a rotation
    // period any grace period is accepted: there is no schedule to be shorter than.)
    let tenant = format!("good-{}", suffix());
    ns.apply(
        "good",
        json!({"tenant": tenant, "repositories": [r], "hmac": {"gracePeriod": "1000h"}}),
    )
    .await
    .unwrap();
    ns.track_queue(&format!("anchorpipe.{}.reports", ns.tenant_id(&tenant)));
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

/// The value of key `id` in the endpoint's minted Secret.
async fn key(ns: &TestNs, secret: &str, id: &str) -> String {
    let secret = ns.api::<Secret>().get(secret).await.unwrap();
    let bytes = secret
        .data
        .unwrap()
        .remove(id)
        .unwrap_or_else(|| panic!("no key {id}"));
    String::from_utf8(bytes.0).unwrap()
}

/// A Ready endpoint for a fresh tenant, and the ingest process run from its Deployment.
struct Running {
    name: String,
    tenant: String,
    repo: String,
    queue: String,
    key_id: String,
    pod: KubeletPod,
}

async fn running(ns: &mut TestNs, name: &str, extra: serde_json::Value) -> Running {
    let tenant = format!("{name}-{}", suffix());
    let repo = repo();
    let mut spec = json!({"tenant": tenant, "repositories": [repo], "replicas": 1});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    ns.apply(name, spec).await.unwrap();
    let queue = format!("anchorpipe.{}.reports", ns.tenant_id(&tenant));
    ns.track_queue(&queue);
    let ep = ns.wait_ready(name, READY_TIMEOUT).await;
    let status = ep.status.unwrap();
    assert_eq!(status.queue.as_deref(), Some(queue.as_str()));
    let mut pod =
        KubeletPod::from_deployment(&ns.client, &ns.name, &format!("{name}-ingest")).await;
    pod.start().await;
    Running {
        name: name.to_owned(),
        tenant: ns.tenant_id(&tenant),
        repo,
        queue,
        key_id: status.current_key_id.unwrap(),
        pod,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pod_runs_for_real_and_a_report_reaches_postgres_and_the_queue() {
    let mut ns =
        TestNs::new("the_pod_runs_for_real_and_a_report_reaches_postgres_and_the_queue").await;
    let database_url = ns.platform().await;
    let t = running(&mut ns, "shop", json!({})).await;

    // The process got exactly the container's command line, mount paths and the listen
    // address aside.
    assert_eq!(t.pod.args[0], "serve");
    assert!(
        t.pod
            .args
            .iter()
            .any(|a| a.ends_with("/config/config.json")),
        "{:?}",
        t.pod.args
    );
    let env: Vec<&str> = t.pod.env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(env, ["DATABASE_URL", "AMQP_URL"]);

    let secret = key(&ns, &format!("{}-hmac", t.name), &t.key_id).await;
    let base = t.pod.base_url();
    let (status, answer) = report::post(&base, &t.repo, "run-1", &secret).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["message"], "Test report received");
    let id = answer["runId"].as_str().unwrap().to_owned();

    // Not signed with the tenant's key: refused.
    let (status, answer) = report::post(&base, &t.repo, "run-2", "not-the-key").await;
    assert_eq!(status, 401, "{answer}");

    // The row, under the tenant from the ConfigMap.
    let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
    let row: (String, String, String) =
        sqlx::query_as("SELECT tenant, repo_id::text, run_id FROM ingestions WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(row, (t.tenant.clone(), t.repo.clone(), "run-1".to_owned()));
    pool.close().await;

    // The message, in the queue the operator declared for the tenant.
    let (found, taken) = broker::take_until(&t.queue, Duration::from_secs(30), |m| {
        m["ingestionId"] == id.as_str()
    })
    .await;
    let message = found.unwrap_or_else(|| panic!("no message for {id} in {}: {taken:?}", t.queue));
    assert_eq!(message["type"], "test.run.received");
    assert_eq!(message["payload"]["runId"], "run-1");
    assert_eq!(message["payload"]["repoId"], t.repo.as_str());
    drop(t);
    ns.finish().await;
}

/// Posts fresh reports signed with `secret` until one is answered `expected` (the
/// kubelet-synced keys reach the pod's poller within a second or two).
async fn until_status(what: &str, base: &str, repo: &str, secret: &str, run: &str, expected: u16) {
    let mut n = 0;
    eventually(what, Duration::from_secs(10), || {
        n += 1;
        let (base, repo, secret, run) = (
            base.to_owned(),
            repo.to_owned(),
            secret.to_owned(),
            format!("{run}-{n}"),
        );
        async move {
            match report::post(&base, &repo, &run, &secret).await {
                (status, _) if status == expected => Ok(()),
                (status, answer) => Err(format!("{status} {answer}")),
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_reaches_the_running_pod_and_the_old_key_expires() {
    let mut ns = TestNs::new("key_rotation_reaches_the_running_pod_and_the_old_key_expires").await;
    ns.platform().await;
    // The CRD's minimum rotation period is 1h; the grace period has no minimum, so a
    // short one shows the whole life of a replaced key.
    let grace = Duration::from_secs(15);
    let mut t = running(
        &mut ns,
        "rot",
        json!({"hmac": {"rotationPeriod": "1h", "gracePeriod": format!("{}s", grace.as_secs())}}),
    )
    .await;
    let secret_name = format!("{}-hmac", t.name);
    let base = t.pod.base_url();
    let old = key(&ns, &secret_name, &t.key_id).await;
    assert_eq!(report::post(&base, &t.repo, "before", &old).await.0, 200);
    let template_before = ns
        .api::<Deployment>()
        .get(&format!("{}-ingest", t.name))
        .await
        .unwrap()
        .spec
        .template;

    // Rotate on demand, as a person would.
    let out = kubectl(&[
        "annotate",
        "-n",
        &ns.name,
        "ingestionendpoint",
        &t.name,
        "anchorpipe.dev/rotate-key=e2e-1",
    ])
    .await;
    assert!(out.success, "{}", out.stderr);
    let api = ns.endpoints();
    let old_id = t.key_id.clone();
    let new_id = eventually("a new current key", Duration::from_secs(30), || {
        let api = api.clone();
        let old_id = old_id.clone();
        let name = t.name.clone();
        async move {
            let ep = api.get(&name).await.map_err(|e| e.to_string())?;
            match ep.status.and_then(|s| s.current_key_id) {
                Some(id) if id != old_id => Ok(id),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    let rotated_at = std::time::Instant::now();
    let new = key(&ns, &secret_name, &new_id).await;
    // Both keys are in the Secret now; the kubelet syncs the volume.
    t.pod.sync_volumes().await;
    let repo = t.repo.clone();
    until_status("the new key accepted", &base, &repo, &new, "new", 200).await;
    let (status, answer) = report::post(&base, &t.repo, "old-in-grace", &old).await;
    assert_eq!(status, 200, "old key during the grace period: {answer}");
    assert!(
        rotated_at.elapsed() < grace,
        "the grace check came too late to mean anything"
    );
    assert!(t.pod.is_running(), "the ingest process restarted");
    let template_after = ns
        .api::<Deployment>()
        .get(&format!("{}-ingest", t.name))
        .await
        .unwrap()
        .spec
        .template;
    assert_eq!(
        template_before, template_after,
        "a rotation must not roll the pods"
    );

    // After the grace period the operator removes the old key; once the kubelet synced
    // the volume, the old key is refused and the new one still works.
    let secrets = ns.api::<Secret>();
    eventually(
        "the old key removed from the Secret",
        grace + Duration::from_secs(30),
        || {
            let (secrets, secret_name, old_id) =
                (secrets.clone(), secret_name.clone(), old_id.clone());
            async move {
                let s = secrets.get(&secret_name).await.map_err(|e| e.to_string())?;
                let ids: Vec<String> = s.data.unwrap_or_default().into_keys().collect();
                if ids.contains(&old_id) {
                    Err(format!("{ids:?}"))
                } else {
                    Ok(())
                }
            }
        },
    )
    .await;
    t.pod.sync_volumes().await;
    until_status("the old key refused", &base, &repo, &old, "old", 401).await;
    assert_eq!(report::post(&base, &t.repo, "new-after", &new).await.0, 200);
    assert!(t.pod.is_running(), "the ingest process restarted");
    let reasons: Vec<String> = ns
        .events(&t.name)
        .await
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    for reason in ["KeyMinted", "KeyRotated", "KeyRemoved"] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "no {reason} event: {reasons:?}"
        );
    }
    drop(t);
    ns.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_still_signing_with_a_replaced_key_is_warned_about_before_it_breaks() {
    let mut ns = TestNs::new(
        "a_pipeline_still_signing_with_a_replaced_key_is_warned_about_before_it_breaks",
    )
    .await;
    ns.platform().await;
    // On-demand rotation only (no rotationPeriod). The pod writes a key's use at most
    // once a minute and the operator resyncs every minute, so the grace period leaves
    // room for both; the warning time covers the whole grace period.
    let grace = Duration::from_secs(240);
    let t = running(
        &mut ns,
        "warn",
        json!({"hmac": {"gracePeriod": format!("{}s", grace.as_secs()), "expiryWarning": "1h"}}),
    )
    .await;
    let api = ns.endpoints();
    let status = api.get(&t.name).await.unwrap().status.unwrap();
    assert!(status.current_key_minted_at.is_some(), "{status:?}");
    assert!(status.next_rotation_at.is_none(), "no schedule: {status:?}");
    assert_eq!(
        condition(&api.get(&t.name).await.unwrap(), "KeyExpiring").map(|c| c.status.clone()),
        Some("False".to_owned())
    );
    let secret_name = format!("{}-hmac", t.name);
    let base = t.pod.base_url();
    let old_id = t.key_id.clone();
    let old = key(&ns, &secret_name, &old_id).await;
    assert_eq!(report::post(&base, &t.repo, "before", &old).await.0, 200);

    let out = kubectl(&[
        "annotate",
        "-n",
        &ns.name,
        "ingestionendpoint",
        &t.name,
        "anchorpipe.dev/rotate-key=e2e-warn",
    ])
    .await;
    assert!(out.success, "{}", out.stderr);
    let new_id = eventually("a new current key", Duration::from_secs(30), || {
        let (api, old_id, name) = (api.clone(), old_id.clone(), t.name.clone());
        async move {
            let ep = api.get(&name).await.map_err(|e| e.to_string())?;
            match ep.status.and_then(|s| s.current_key_id) {
                Some(id) if id != old_id => Ok(id),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    t.pod.sync_volumes().await;
    let rotated_at = std::time::Instant::now();

    // The pipeline was not updated: it keeps signing with the old key, which still
    // verifies. Before the old key stops, the endpoint says so.
    let mut n = 0;
    let message = eventually(
        "the KeyExpiring condition",
        grace - Duration::from_secs(30),
        || {
            n += 1;
            let (api, name, base, repo, old, old_id) = (
                api.clone(),
                t.name.clone(),
                base.clone(),
                t.repo.clone(),
                old.clone(),
                old_id.clone(),
            );
            async move {
                let (status, answer) = report::post(&base, &repo, &format!("old-{n}"), &old).await;
                if status != 200 {
                    return Err(format!(
                        "the old key was refused in its grace period: {status} {answer}"
                    ));
                }
                let ep = api.get(&name).await.map_err(|e| e.to_string())?;
                match condition(&ep, "KeyExpiring") {
                    Some(c)
                        if c.status == "True"
                            && c.message.starts_with(&format!("key {old_id} ")) =>
                    {
                        Ok(c.message.clone())
                    }
                    other => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        Err(format!("{other:?}"))
                    }
                }
            }
        },
    )
    .await;
    assert!(
        rotated_at.elapsed() < grace,
        "the warning came after the key stopped"
    );
    assert!(message.contains(&new_id), "{message}");
    let status = api.get(&t.name).await.unwrap().status.unwrap();
    assert_eq!(status.previous_key_id.as_deref(), Some(old_id.as_str()));
    assert!(status.previous_key_expires_at.is_some(), "{status:?}");
    assert_eq!(
        condition(&api.get(&t.name).await.unwrap(), "Ready").map(|c| c.status.clone()),
        Some("True".to_owned()),
        "a warning, not a fault"
    );
    let warnings: Vec<(String, String)> = ns
        .events(&t.name)
        .await
        .into_iter()
        .filter(|(reason, _)| reason == "KeyExpiring")
        .collect();
    assert!(!warnings.is_empty(), "no KeyExpiring event");
    assert!(warnings[0].1.contains(&old_id), "{warnings:?}");
    drop(t);
    ns.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated() {
    let mut ns = TestNs::new("tenants_are_isolated").await;
    ns.platform().await;
    let a = running(&mut ns, "alpha", json!({})).await;
    let b = running(&mut ns, "beta", json!({})).await;
    let key_a = key(&ns, "alpha-hmac", &a.key_id).await;
    let key_b = key(&ns, "beta-hmac", &b.key_id).await;
    assert_ne!(key_a, key_b);
    let (base_a, base_b) = (a.pod.base_url(), b.pod.base_url());

    // A's key cannot post for B's repository: not through B's endpoint (wrong key), not
    // through A's (not A's repository).
    let (status, answer) = report::post(&base_b, &b.repo, "a-on-b", &key_a).await;
    assert_eq!(status, 401, "A's key on B's endpoint: {answer}");
    let (status, answer) = report::post(&base_a, &b.repo, "b-repo-on-a", &key_a).await;
    assert_eq!(status, 401, "B's repository on A's endpoint: {answer}");

    // A's reports reach A's queue only.
    let (status, answer) = report::post(&base_a, &a.repo, "a-1", &key_a).await;
    assert_eq!(status, 200, "{answer}");
    let id_a = answer["runId"].as_str().unwrap().to_owned();
    let (found, _) = broker::take_until(&a.queue, Duration::from_secs(30), |m| {
        m["ingestionId"] == id_a.as_str()
    })
    .await;
    assert!(found.is_some(), "A's report not in A's queue");
    let (status, answer) = report::post(&base_b, &b.repo, "b-1", &key_b).await;
    assert_eq!(status, 200, "{answer}");
    let id_b = answer["runId"].as_str().unwrap().to_owned();
    let (found, taken) = broker::take_until(&b.queue, Duration::from_secs(30), |m| {
        m["ingestionId"] == id_b.as_str()
    })
    .await;
    assert!(found.is_some(), "B's report not in B's queue");
    assert!(
        taken
            .iter()
            .all(|m| m["payload"]["repoId"] == b.repo.as_str()),
        "B's queue held another tenant's report: {taken:?}"
    );
    assert_eq!(broker::depth(&b.queue).await, Some(0));
    drop((a, b));
    ns.finish().await;
}

/// Waits until the endpoint and everything it owned are gone.
async fn wait_gone(ns: &TestNs, name: &str, timeout: Duration) {
    let workload = format!("{name}-ingest");
    let secret = format!("{name}-hmac");
    eventually(&format!("{name} and its objects deleted"), timeout, || {
        let (eps, deps, secrets, cms, svcs) = (
            ns.endpoints(),
            ns.api::<Deployment>(),
            ns.api::<Secret>(),
            ns.api::<ConfigMap>(),
            ns.api::<Service>(),
        );
        let (workload, secret) = (workload.clone(), secret.clone());
        async move {
            let left = [
                (
                    "IngestionEndpoint",
                    eps.get_opt(name).await.map(|o| o.is_some()),
                ),
                (
                    "Deployment",
                    deps.get_opt(&workload).await.map(|o| o.is_some()),
                ),
                (
                    "Secret",
                    secrets.get_opt(&secret).await.map(|o| o.is_some()),
                ),
                (
                    "ConfigMap",
                    cms.get_opt(&workload).await.map(|o| o.is_some()),
                ),
                (
                    "Service",
                    svcs.get_opt(&workload).await.map(|o| o.is_some()),
                ),
            ];
            let present: Vec<&str> = left
                .iter()
                .filter(|(_, r)| !matches!(r, Ok(false)))
                .map(|(k, _)| *k)
                .collect();
            if present.is_empty() {
                Ok(())
            } else {
                Err(format!("still there: {present:?}"))
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_collects_owned_objects_and_honours_the_deletion_policy() {
    let mut ns =
        TestNs::new("deletion_collects_owned_objects_and_honours_the_deletion_policy").await;
    ns.platform().await;
    let (keep_tenant, drop_tenant) = (format!("keep-{}", suffix()), format!("drop-{}", suffix()));
    ns.apply(
        "keep",
        json!({"tenant": keep_tenant, "repositories": [repo()], "replicas": 1}),
    )
    .await
    .unwrap();
    ns.apply(
        "drop",
        json!({"tenant": drop_tenant, "repositories": [repo()], "replicas": 1,
               "queue": {"deletionPolicy": "Delete"}}),
    )
    .await
    .unwrap();
    let keep_queue = format!("anchorpipe.{}.reports", ns.tenant_id(&keep_tenant));
    let drop_queue = format!("anchorpipe.{}.reports", ns.tenant_id(&drop_tenant));
    ns.track_queue(&keep_queue);
    ns.track_queue(&drop_queue);
    ns.wait_ready("keep", READY_TIMEOUT).await;
    ns.wait_ready("drop", READY_TIMEOUT).await;
    assert!(broker::depth(&keep_queue).await.is_some());
    assert!(broker::depth(&drop_queue).await.is_some());

    // As a person would: kubectl waits for the finalizer.
    let out = kubectl(&[
        "delete",
        "-n",
        &ns.name,
        "ingestionendpoint",
        "keep",
        "drop",
        "--timeout=60s",
    ])
    .await;
    assert!(out.success, "{}{}", out.stdout, out.stderr);
    wait_gone(&ns, "keep", Duration::from_secs(60)).await;
    wait_gone(&ns, "drop", Duration::from_secs(60)).await;
    assert!(
        broker::depth(&keep_queue).await.is_some(),
        "Retain removed the queue"
    );
    assert!(broker::depth(&format!("{keep_queue}.dlq")).await.is_some());
    assert_eq!(
        broker::depth(&drop_queue).await,
        None,
        "Delete kept the queue"
    );
    assert_eq!(broker::depth(&format!("{drop_queue}.dlq")).await, None);
    let keep_events: Vec<String> = ns
        .events("keep")
        .await
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    let drop_events: Vec<String> = ns
        .events("drop")
        .await
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert!(
        keep_events.iter().any(|r| r == "QueueRetained"),
        "{keep_events:?}"
    );
    assert!(
        drop_events.iter().any(|r| r == "QueueDeleted"),
        "{drop_events:?}"
    );
    ns.finish().await;
}

/// Starts the broker again when dropped, even if the test failed half-way.
struct BrokerBack;

impl Drop for BrokerBack {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/services.sh");
        let ok = std::process::Command::new(script)
            .arg("broker-start")
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("e2e: could not restart the broker; run scripts/services.sh broker-start");
        }
    }
}

/// Brings the API server back when dropped, even if the test failed half-way.
struct ApiServerBack;

impl Drop for ApiServerBack {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/cluster.sh");
        let ok = std::process::Command::new(script)
            .arg("up")
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("e2e: could not bring the cluster back; run scripts/cluster.sh up");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_with_the_broker_down_is_bounded_and_observable() {
    let mut ns = TestNs::exclusive("deletion_with_the_broker_down_is_bounded_and_observable").await;
    ns.platform().await;
    let tenant = format!("down-{}", suffix());
    ns.apply(
        "down",
        json!({"tenant": tenant, "repositories": [repo()], "replicas": 1,
               "queue": {"deletionPolicy": "Delete"}}),
    )
    .await
    .unwrap();
    let queue = format!("anchorpipe.{}.reports", ns.tenant_id(&tenant));
    ns.track_queue(&queue);
    ns.wait_ready("down", READY_TIMEOUT).await;

    let back = BrokerBack;
    script("services.sh", &["broker-stop"]);
    let started = std::time::Instant::now();
    ns.endpoints()
        .delete("down", &Default::default())
        .await
        .unwrap();
    // Observable: the finalizer holds while the operator says why and for how long.
    eventually(
        "a BrokerCleanupFailed event",
        Duration::from_secs(30),
        || async {
            let events = ns.events("down").await;
            let ep = ns
                .endpoints()
                .get_opt("down")
                .await
                .map_err(|e| e.to_string())?;
            let held = ep.is_some_and(|ep| {
                ep.metadata.deletion_timestamp.is_some()
                    && ep.finalizers().iter().any(|f| f == FINALIZER)
            });
            match events.iter().find(|(r, _)| r == "BrokerCleanupFailed") {
                Some((_, note)) if held => Ok(note.clone()),
                _ => Err(format!("held {held}, events {events:?}")),
            }
        },
    )
    .await;
    // Bounded: released after the operator's cleanup timeout.
    let limit = Duration::from_secs(CLEANUP_TIMEOUT_SECONDS + 30);
    wait_gone(&ns, "down", limit).await;
    let took = started.elapsed();
    eprintln!("e2e: deletion with the broker down released after {took:?}");
    assert!(
        took >= Duration::from_secs(CLEANUP_TIMEOUT_SECONDS - 1),
        "released before the timeout: {took:?}"
    );
    let events = ns.events("down").await;
    assert!(
        events.iter().any(|(r, _)| r == "BrokerCleanupAbandoned"),
        "{events:?}"
    );
    drop(back);
    // The queue was left behind (and said so); the test removes it.
    assert!(broker::depth(&queue).await.is_some());
    ns.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_and_apiserver_restarts_converge() {
    let mut ns = TestNs::exclusive("operator_and_apiserver_restarts_converge").await;
    ns.platform().await;
    let (one, two) = (format!("one-{}", suffix()), format!("two-{}", suffix()));
    ns.track_queue(&format!("anchorpipe.{}.reports", ns.tenant_id(&one)));
    ns.track_queue(&format!("anchorpipe.{}.reports", ns.tenant_id(&two)));
    let repo_one = repo();
    ns.apply(
        "one",
        json!({"tenant": one, "repositories": [repo_one], "replicas": 1}),
    )
    .await
    .unwrap();
    // Kill the operator as soon as the first reconcile has minted the key, before it
    // could finish (status, topology, events).
    let secrets = ns.api::<Secret>();
    let minted = eventually("the key Secret", Duration::from_secs(30), || {
        let secrets = secrets.clone();
        async move {
            match secrets.get_opt("one-hmac").await {
                Ok(Some(s)) => Ok(s),
                other => Err(format!("{:?}", other.map(|o| o.is_some()))),
            }
        }
    })
    .await;
    assert!(kill_operator(), "the operator was not running");
    let keys: Vec<String> = minted.data.unwrap_or_default().into_keys().collect();
    let was_ready = ns.endpoints().get("one").await.unwrap();
    eprintln!(
        "e2e: killed the operator; Ready then: {:?}",
        condition(&was_ready, "Ready")
    );

    // Changes while it is down.
    ns.apply(
        "one",
        json!({"tenant": one, "repositories": [repo_one], "replicas": 2}),
    )
    .await
    .unwrap();
    ns.apply(
        "two",
        json!({"tenant": two, "repositories": [repo()], "replicas": 1}),
    )
    .await
    .unwrap();
    ensure_operator();
    let ep = ns.wait_ready("one", READY_TIMEOUT).await;
    ns.wait_ready("two", READY_TIMEOUT).await;
    let status = ep.status.unwrap();
    assert_eq!(
        status.current_key_id.as_ref(),
        keys.first(),
        "the key minted before the kill must be kept"
    );
    let now: Vec<String> = ns
        .api::<Secret>()
        .get("one-hmac")
        .await
        .unwrap()
        .data
        .unwrap()
        .into_keys()
        .collect();
    assert_eq!(now, keys, "keys changed across the operator restart");

    // Restart the API server (SIGKILL) under the running operator.
    let back = ApiServerBack;
    let restart = std::time::Instant::now();
    script("cluster.sh", &["restart-apiserver", "--kill"]);
    eprintln!("e2e: API server restarted in {:?}", restart.elapsed());
    drop(back);
    let two_key = ns
        .endpoints()
        .get("two")
        .await
        .unwrap()
        .status
        .unwrap()
        .current_key_id
        .unwrap();
    ns.apply(
        "one",
        json!({"tenant": one, "repositories": [repo_one], "replicas": 1}),
    )
    .await
    .unwrap();
    let out = kubectl(&[
        "annotate",
        "-n",
        &ns.name,
        "ie",
        "two",
        "anchorpipe.dev/rotate-key=after-restart",
    ])
    .await;
    assert!(out.success, "{}", out.stderr);
    let survived = operator_running();
    eprintln!("e2e: operator survived the API server restart: {survived}");
    if !survived {
        // It exits when it cannot renew its Lease; its Deployment would restart it.
        ensure_operator();
    }
    // Each of the operator's watches backs off on its own, at most 10 s apart
    // (operator/src/watch.rs), so changes made right after a restart are seen within
    // seconds; measured 6-8 s.
    ns.wait_ready("one", READY_TIMEOUT).await;
    let api = ns.endpoints();
    eventually("two rotated after the restart", READY_TIMEOUT, || {
        let (api, two_key) = (api.clone(), two_key.clone());
        async move {
            let ep = api.get("two").await.map_err(|e| e.to_string())?;
            let current = ep.status.as_ref().and_then(|s| s.current_key_id.clone());
            if anchorpipe_e2e::cluster::is_ready(&ep) && current.as_ref() != Some(&two_key) {
                Ok(())
            } else {
                Err(format!("{:?}", ep.status))
            }
        }
    })
    .await;
    eprintln!(
        "e2e: converged {:?} after the API server restart began",
        restart.elapsed()
    );
    assert!(
        survived,
        "the operator exited during a short API server restart"
    );
    ns.finish().await;
}

// ---------------------------------------------------------------- hostile tenants

/// What a tenant team's namespace admin may do, granted in their namespace only: manage
/// endpoints, read and write Secrets, ConfigMaps and pods, look at Deployments.
async fn grant_tenant_rights(namespace: &str, user: &str) {
    let rbac = json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "anchorpipe-e2e-tenant-admin"},
                "rules": [
                    {"apiGroups": ["anchorpipe.dev"], "resources": ["ingestionendpoints"],
                     "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
                    {"apiGroups": [""], "resources": ["secrets", "configmaps", "pods", "pods/exec", "services"],
                     "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
                    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch"]}
                ]
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": format!("tenant-admin-{user}"), "namespace": namespace},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": "anchorpipe-e2e-tenant-admin"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
            }
        ]
    });
    let out = kubectl_stdin(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        Some(&rbac.to_string()),
    )
    .await;
    assert!(out.success, "granting {user} rights: {}", out.stderr);
}

/// `kubectl --as <user> -n <namespace> <args>`.
async fn as_user(user: &str, namespace: &str, args: &[&str], stdin: Option<&str>) -> Kubectl {
    let mut full = vec!["--as", user, "-n", namespace];
    full.extend_from_slice(args);
    kubectl_stdin(&full, stdin).await
}

/// Applies an endpoint as `user`, as a tenant would.
async fn apply_as(user: &str, namespace: &str, name: &str, spec: serde_json::Value) {
    let object = json!({
        "apiVersion": "anchorpipe.dev/v1alpha1",
        "kind": "IngestionEndpoint",
        "metadata": {"name": name},
        "spec": spec,
    });
    let out = as_user(
        user,
        namespace,
        &["apply", "-f", "-"],
        Some(&object.to_string()),
    )
    .await;
    assert!(out.success, "{user} applying {name}: {}", out.stderr);
}

/// Waits until the endpoint's `type_` condition has `reason`; returns its message.
async fn wait_reason(ns: &TestNs, name: &str, type_: &str, reason: &str) -> String {
    let api = ns.endpoints();
    eventually(
        &format!("{}/{name} {type_} reason {reason}", ns.name),
        READY_TIMEOUT,
        || {
            let api = api.clone();
            async move {
                let ep = api.get(name).await.map_err(|e| e.to_string())?;
                match condition(&ep, type_) {
                    Some(c) if c.reason == reason => Ok(c.message.clone()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await
}

/// A data entry of a Secret, read as `user`.
async fn secret_value_as(user: &str, namespace: &str, secret: &str, key: &str) -> String {
    let template = format!("--template={{{{index .data \"{key}\" | base64decode}}}}");
    let out = as_user(
        user,
        namespace,
        &["get", "secret", secret, "-o", "go-template", &template],
        None,
    )
    .await;
    assert!(out.success, "{user} reading {secret}: {}", out.stderr);
    out.stdout
}

/// Two teams, each with edit rights in its own namespace only, acting through
/// `kubectl --as`: each attack of the trust model by one tenant on the other is refused
/// or harmless, at the operator, at the ingest endpoint, in PostgreSQL and in RabbitMQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_tenant_cannot_reach_another_tenants_queue_repository_or_rows() {
    let mut a_ns = TestNs::new("hostile-a").await;
    let mut b_ns = a_ns.sibling("hostile-b").await;
    let database_url = a_ns.platform().await;
    let (alice, bob) = (format!("alice-{}", suffix()), format!("bob-{}", suffix()));
    grant_tenant_rights(&a_ns.name, &alice).await;
    grant_tenant_rights(&b_ns.name, &bob).await;

    // Alice's endpoint `ci`, with a report already in its queue.
    let repo_a = repo();
    apply_as(
        &alice,
        &a_ns.name,
        "ci",
        json!({"repositories": [repo_a], "replicas": 1, "queue": {"type": "classic"}}),
    )
    .await;
    let a_tenant = a_ns.tenant_id("ci");
    let a_queue = format!("anchorpipe.{a_tenant}.reports");
    a_ns.track_queue(&a_queue);
    let ep = a_ns.wait_ready("ci", READY_TIMEOUT).await;
    let a_key = key(
        &a_ns,
        "ci-hmac",
        &ep.status.unwrap().current_key_id.unwrap(),
    )
    .await;
    let mut a_pod = KubeletPod::from_deployment(&a_ns.client, &a_ns.name, "ci-ingest").await;
    a_pod.start().await;
    let (status, answer) = report::post(&a_pod.base_url(), &repo_a, "before", &a_key).await;
    assert_eq!(status, 200, "{answer}");
    eventually(
        "A's first report in A's queue",
        Duration::from_secs(30),
        || {
            let q = a_queue.clone();
            async move {
                match broker::depth(&q).await {
                    Some(n) if n >= 1 => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;

    // Same object name in Bob's namespace: another tenant, another queue. Bob also lists
    // Alice's repository: the operator says so and leaves it out of Bob's config.
    let repo_b = repo();
    apply_as(
        &bob,
        &b_ns.name,
        "ci",
        json!({"repositories": [repo_b, repo_a], "replicas": 1, "queue": {"type": "classic"}}),
    )
    .await;
    let b_tenant = b_ns.tenant_id("ci");
    let b_queue = format!("anchorpipe.{b_tenant}.reports");
    b_ns.track_queue(&b_queue);
    assert_ne!(a_queue, b_queue);
    let message = wait_reason(&b_ns, "ci", "RepositoriesOwned", "RepositoryConflict").await;
    assert!(message.contains(&repo_a), "{message}");
    let config = b_ns.api::<ConfigMap>().get("ci-ingest").await.unwrap();
    let config = &config.data.unwrap()["config.json"];
    assert!(
        config.contains(&repo_b) && !config.contains(&repo_a),
        "{config}"
    );
    eventually("B's pods available", READY_TIMEOUT, || {
        let api = b_ns.endpoints();
        async move {
            let ep = api.get("ci").await.map_err(|e| e.to_string())?;
            match condition(&ep, "Available") {
                Some(c) if c.status == "True" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    let b_ep = b_ns.endpoints().get("ci").await.unwrap();
    let b_key = key(
        &b_ns,
        "ci-hmac",
        &b_ep.status.unwrap().current_key_id.unwrap(),
    )
    .await;
    let mut b_pod = KubeletPod::from_deployment(&b_ns.client, &b_ns.name, "ci-ingest").await;
    b_pod.start().await;

    // Bob cannot store for Alice's repository through his endpoint...
    let (status, answer) = report::post(&b_pod.base_url(), &repo_a, "shared-run", &b_key).await;
    assert_eq!(status, 401, "B stored for A's repository: {answer}");
    // ...so Alice's identical report is new, not a duplicate, and lands in A's queue.
    let (status, answer) = report::post(&a_pod.base_url(), &repo_a, "shared-run", &a_key).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.get("isDuplicate").is_none(), "{answer}");
    let shared_id = answer["runId"].as_str().unwrap().to_owned();
    let (status, answer) = report::post(&b_pod.base_url(), &repo_b, "b-own", &b_key).await;
    assert_eq!(status, 200, "{answer}");

    // Bob names Alice's queue, routing key or dead-letter queue: refused by name, and
    // deleting those endpoints (policy Delete) leaves Alice's queue and messages alone.
    let thieves = [
        (
            "thief-queue",
            json!({"name": a_queue, "deletionPolicy": "Delete"}),
        ),
        (
            "thief-key",
            json!({"routingKey": format!("tenant.{a_tenant}.test-run"), "deletionPolicy": "Delete"}),
        ),
        (
            "thief-dlq",
            json!({"deadLetterQueue": format!("{a_queue}.dlq"), "deletionPolicy": "Delete"}),
        ),
    ];
    for (name, queue) in &thieves {
        apply_as(
            &bob,
            &b_ns.name,
            name,
            json!({"repositories": [repo()], "replicas": 1, "queue": queue}),
        )
        .await;
        let message = wait_reason(&b_ns, name, "Ready", "InvalidSpec").await;
        assert!(message.contains("this tenant's"), "{name}: {message}");
    }
    let depth_before = broker::depth(&a_queue).await.unwrap();
    assert!(depth_before >= 2, "A's queue holds {depth_before}");
    for (name, _) in &thieves {
        let out = as_user(
            &bob,
            &b_ns.name,
            &["delete", "ingestionendpoint", name, "--timeout=60s"],
            None,
        )
        .await;
        assert!(out.success, "{}", out.stderr);
    }
    assert_eq!(broker::depth(&a_queue).await, Some(depth_before));
    assert!(broker::depth(&format!("{a_queue}.dlq")).await.is_some());

    // Bob chooses what runs with his credentials: refused.
    apply_as(
        &bob,
        &b_ns.name,
        "thief-image",
        json!({"repositories": [repo()], "replicas": 1, "image": "busybox"}),
    )
    .await;
    let message = wait_reason(&b_ns, "thief-image", "Ready", "ImageNotAllowed").await;
    assert!(message.contains("busybox"), "{message}");

    // What Bob may do outside his namespace: nothing.
    for (verb, resource, namespace) in [
        ("get", "secrets", a_ns.name.as_str()),
        ("list", "ingestionendpoints", a_ns.name.as_str()),
        ("create", "pods", a_ns.name.as_str()),
        ("get", "secrets", "default"),
        ("list", "leases.coordination.k8s.io", "default"),
        ("get", "secrets", "kube-system"),
    ] {
        let out = as_user(&bob, namespace, &["auth", "can-i", verb, resource], None).await;
        assert_eq!(
            out.stdout.trim(),
            "no",
            "bob can {verb} {resource} in {namespace}"
        );
    }
    let out = as_user(&bob, &b_ns.name, &["auth", "can-i", "get", "secrets"], None).await;
    assert_eq!(
        out.stdout.trim(),
        "yes",
        "the check itself: bob reads his own Secrets"
    );

    // With Bob's own minted credentials, read as Bob from his namespace.
    let b_db = secret_value_as(&bob, &b_ns.name, "ci-credentials", "database-url").await;
    let b_amqp = secret_value_as(&bob, &b_ns.name, "ci-credentials", "amqp-url").await;
    assert!(
        !b_db.contains("anchorpipe:anchorpipe@"),
        "Bob holds the owner's credentials"
    );
    let pool = sqlx::PgPool::connect(&b_db).await.unwrap();
    let seen: Vec<(String,)> = sqlx::query_as("SELECT tenant FROM ingestions")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(
        !seen.is_empty() && seen.iter().all(|(t,)| *t == b_tenant),
        "{seen:?}"
    );
    let of_a: (i64,) = sqlx::query_as("SELECT count(*) FROM ingestions WHERE repo_id = $1::uuid")
        .bind(&repo_a)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(of_a.0, 0, "Bob reads Alice's rows");
    let forged = sqlx::query(
        "INSERT INTO ingestions (id, tenant, repo_id, commit_sha, run_id, framework, test_count,
                                 payload, response, request_id)
         VALUES (gen_random_uuid(), $1, $2::uuid, repeat('a', 40), 'forged', 'jest', 1, '{}', '{}', 'x')",
    )
    .bind(&b_tenant)
    .bind(&repo_a)
    .execute(&pool)
    .await;
    let forged = forged
        .expect_err("Bob stored a report for Alice's repository")
        .to_string();
    assert!(forged.contains("row-level security"), "{forged}");
    for statement in [
        "UPDATE audit_log SET reason = 'rewritten'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
        "DROP TRIGGER audit_log_append_only ON audit_log",
        "ALTER TABLE audit_log DISABLE TRIGGER ALL",
        "CREATE TABLE stash (x int)",
    ] {
        let refused = sqlx::query(statement)
            .execute(&pool)
            .await
            .expect_err(statement)
            .to_string();
        assert!(
            refused.contains("permission denied") || refused.contains("must be owner"),
            "{statement}: {refused}"
        );
    }
    pool.close().await;
    let owner = sqlx::PgPool::connect(&database_url).await.unwrap();
    let (audit_rows, triggers): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM audit_log WHERE reason = 'rewritten'),
                (SELECT count(*) FROM pg_trigger WHERE tgname = 'audit_log_append_only')",
    )
    .fetch_one(&owner)
    .await
    .unwrap();
    assert_eq!((audit_rows, triggers), (0, 1));
    owner.close().await;

    // Bob's broker user cannot publish with Alice's routing key, nor read her queue.
    let refused = broker::publish_as(
        &b_amqp,
        "anchorpipe.reports",
        &format!("tenant.{a_tenant}.test-run"),
    )
    .await;
    assert!(refused.is_err(), "Bob published with Alice's routing key");
    let own = broker::publish_as(
        &b_amqp,
        "anchorpipe.reports",
        &format!("tenant.{b_tenant}.test-run"),
    )
    .await;
    assert!(own.is_ok(), "Bob's own routing key: {own:?}");
    let read = broker::get_as(&b_amqp, &a_queue).await;
    assert!(read.is_err(), "Bob read Alice's queue");

    // Alice's queue holds Alice's reports only, the shared-run one among them.
    let (found, taken) = broker::take_until(&a_queue, Duration::from_secs(30), |m| {
        m["ingestionId"] == shared_id.as_str()
    })
    .await;
    assert!(found.is_some(), "A's report missing: {taken:?}");
    assert!(
        taken
            .iter()
            .all(|m| m["payload"]["repoId"] == repo_a.as_str()),
        "A's queue held another tenant's message: {taken:?}"
    );

    drop((a_pod, b_pod));
    b_ns.finish().await;
    a_ns.finish().await;
}

/// The credential set named in the endpoint's credentials Secret: (id, database URL,
/// broker URL).
async fn credentials(ns: &TestNs, name: &str) -> (String, String, String) {
    let secret = ns
        .api::<Secret>()
        .get(&format!("{name}-credentials"))
        .await
        .unwrap();
    let id = secret.annotations()["anchorpipe.dev/credentials-id"].clone();
    let data = secret.data.unwrap();
    let text = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
    (id, text("database-url"), text("amqp-url"))
}

/// Whether `url` still logs in to PostgreSQL.
async fn database_login_works(url: &str) -> bool {
    use sqlx::Connection as _;
    match sqlx::PgConnection::connect(url).await {
        Ok(conn) => {
            let _ = conn.close().await;
            true
        }
        Err(_) => false,
    }
}

/// Whether `url` still logs in to RabbitMQ.
async fn broker_login_works(url: &str) -> bool {
    match lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await {
        Ok(conn) => {
            let _ = conn.close(200, "done".into()).await;
            true
        }
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_rotation_rolls_the_pods_and_revokes_the_old_login() {
    let mut ns = TestNs::new("credential_rotation").await;
    ns.platform().await;
    let t = running(&mut ns, "cred", json!({})).await;
    let (old_id, old_db, old_amqp) = credentials(&ns, &t.name).await;
    assert!(database_login_works(&old_db).await && broker_login_works(&old_amqp).await);
    let key = key(&ns, "cred-hmac", &t.key_id).await;
    assert_eq!(
        report::post(&t.pod.base_url(), &t.repo, "old-creds", &key)
            .await
            .0,
        200
    );
    drop(t);

    let out = kubectl(&[
        "annotate",
        "-n",
        &ns.name,
        "ingestionendpoint",
        "cred",
        "anchorpipe.dev/rotate-credentials=e2e-1",
    ])
    .await;
    assert!(out.success, "{}", out.stderr);
    // The pods roll onto the new set (kwok runs the new ReplicaSet's pods); then the
    // operator revokes the old login and broker user.
    let (new_id, new_db, new_amqp) = eventually("new credentials", READY_TIMEOUT, || async {
        let creds = credentials(&ns, "cred").await;
        if creds.0 != old_id {
            Ok(creds)
        } else {
            Err(creds.0)
        }
    })
    .await;
    eventually("the old credentials revoked", READY_TIMEOUT, || {
        let (db, amqp) = (old_db.clone(), old_amqp.clone());
        async move {
            match (
                database_login_works(&db).await,
                broker_login_works(&amqp).await,
            ) {
                (false, false) => Ok(()),
                other => Err(format!(
                    "old login still works (database, broker): {other:?}"
                )),
            }
        }
    })
    .await;
    assert!(database_login_works(&new_db).await && broker_login_works(&new_amqp).await);
    let deployment = ns.api::<Deployment>().get("cred-ingest").await.unwrap();
    let template = deployment.spec.template.metadata.unwrap();
    assert_eq!(
        template.annotations.unwrap()["anchorpipe.dev/credentials-id"],
        new_id
    );

    // A pod of the new template serves with the new credentials.
    let mut pod = KubeletPod::from_deployment(&ns.client, &ns.name, "cred-ingest").await;
    pod.start().await;
    let repo = ns.endpoints().get("cred").await.unwrap().spec.repositories[0].clone();
    assert_eq!(
        report::post(&pod.base_url(), &repo, "new-creds", &key)
            .await
            .0,
        200
    );
    let reasons: Vec<String> = ns
        .events("cred")
        .await
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert!(
        reasons.iter().any(|r| r == "CredentialsRevoked"),
        "{reasons:?}"
    );
    drop(pod);

    // Deleting the endpoint revokes the current set too.
    ns.endpoints()
        .delete("cred", &Default::default())
        .await
        .unwrap();
    eventually("credentials revoked on deletion", READY_TIMEOUT, || {
        let (db, amqp) = (new_db.clone(), new_amqp.clone());
        async move {
            match (
                database_login_works(&db).await,
                broker_login_works(&amqp).await,
            ) {
                (false, false) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    ns.finish().await;
}
