//! The chart's pre-delete hook against the real API server: the hook's ServiceAccount,
//! Roles and Job are rendered by `helm template` and applied, and the Job's command line
//! (`anchorpipe-operator release-finalizers ...`) runs as that ServiceAccount, so a verb
//! missing from the hook's RBAC fails the test. It stops the operator, waits for its
//! Lease, and lets every endpoint go, so a namespace holding one can be deleted once the
//! operator is uninstalled.
//!
//! No operator runs in this test binary: the finalizer is put on the endpoints by hand,
//! as a running operator would have, and nothing takes it off but the command.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anchorpipe_crds::v1alpha1::{FINALIZER, IngestionEndpoint};
use anchorpipe_e2e::cluster::{
    MANAGER, client, create_namespace, ensure_crd, kubectl, kubectl_stdin,
};
use anchorpipe_e2e::{binary, eventually, suffix};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// A finalizer of someone else's, which the command must leave alone.
const OTHER_FINALIZER: &str = "example.com/keep-me";

/// How long the stand-in operator's Lease stays valid after its last renewal.
const LEASE_SECONDS: i32 = 4;

async fn namespace(client: &Client, label: &str) -> String {
    let name = format!("e2e-uninstall-{label}-{}", suffix());
    create_namespace(client, &name).await;
    name
}

async fn endpoint(client: &Client, ns: &str, name: &str, finalizers: &[&str]) {
    let object = json!({
        "apiVersion": "anchorpipe.dev/v1alpha1",
        "kind": "IngestionEndpoint",
        "metadata": {"name": name, "finalizers": finalizers},
        "spec": {"repositories": [uuid::Uuid::new_v4().to_string()]},
    });
    Api::<IngestionEndpoint>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap();
}

/// The release name the hook is rendered for: its objects are `anchorpipe-operator*`.
const RELEASE: &str = "anchorpipe";

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts/anchorpipe")
}

/// Renders the chart's uninstall hook for a release in `system` serving `tenants`,
/// applies it, and returns the hook Job's container arguments. The Job itself is
/// removed: this test runs its command line in its place.
async fn install_hook(system: &str, tenants: &[&str]) -> Vec<String> {
    let chart = chart();
    let out = Command::new("helm")
        .args(["template", RELEASE])
        .arg(&chart)
        .args([
            "--namespace",
            system,
            "--show-only",
            "templates/uninstall-hook.yaml",
            "--set",
            &format!("operator.watchNamespaces={{{}}}", tenants.join(",")),
        ])
        .output()
        .unwrap_or_else(|e| panic!("helm (is the cluster env on PATH?): {e}"));
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8_lossy(&out.stdout).into_owned();
    let applied = kubectl_stdin(&["apply", "-o", "json", "-f", "-"], Some(&rendered)).await;
    assert!(applied.success, "applying the hook: {}", applied.stderr);
    let list: serde_json::Value = serde_json::from_str(&applied.stdout).unwrap();
    let job = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "Job")
        .unwrap_or_else(|| panic!("no Job in the hook: {}", applied.stdout));
    let deleted = kubectl(&[
        "delete",
        "job",
        "--namespace",
        system,
        "--wait=false",
        job["metadata"]["name"].as_str().unwrap(),
    ])
    .await;
    assert!(deleted.success, "{}", deleted.stderr);
    let container = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        job["spec"]["template"]["spec"]["serviceAccountName"],
        "anchorpipe-operator-uninstall"
    );
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

/// A copy of the admin kubeconfig that acts as the hook's ServiceAccount (JSON, which
/// kubeconfig readers take as YAML).
async fn kubeconfig_as(system: &str, dir: &Path) -> PathBuf {
    let view = kubectl(&[
        "config",
        "view",
        "--raw",
        "--flatten",
        "--minify",
        "-o",
        "json",
    ])
    .await;
    assert!(view.success, "{}", view.stderr);
    let mut config: serde_json::Value = serde_json::from_str(&view.stdout).unwrap();
    for user in config["users"].as_array_mut().unwrap() {
        user["user"]["as"] = json!(format!(
            "system:serviceaccount:{system}:anchorpipe-operator-uninstall"
        ));
    }
    let path = dir.join(format!("kubeconfig-{system}.json"));
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

fn run_as(kubeconfig: &Path, args: &[String]) -> Output {
    Command::new(binary("anchorpipe-operator"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info,kube=warn")
        .output()
        .unwrap()
}

fn finalizers(ep: &IngestionEndpoint) -> Vec<String> {
    ep.finalizers().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_finalizers_stops_the_operator_and_lets_namespaces_go() {
    ensure_crd().await;
    let client = client().await;
    let system = namespace(&client, "system").await;
    let tenant_a = namespace(&client, "a").await;
    let tenant_b = namespace(&client, "b").await;

    // The operator as the chart installs it: a Deployment and the Lease its leader
    // renewed a moment ago.
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "anchorpipe-operator"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "op"}},
            "template": {
                "metadata": {"labels": {"app": "op"}},
                "spec": {"containers": [{"name": "operator", "image": "registry.invalid/op:e2e"}]},
            },
        },
    }))
    .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &system);
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "anchorpipe-operator"},
        "spec": {
            "holderIdentity": "anchorpipe-operator-0",
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": MicroTime(Timestamp::now()),
        },
    }))
    .unwrap();
    Api::<Lease>::namespaced(client.clone(), &system)
        .create(&PostParams::default(), &lease)
        .await
        .unwrap();

    // Endpoints in two tenant namespaces: one live, one with a finalizer of someone
    // else's too, and one already being deleted (stuck behind the operator's finalizer).
    endpoint(&client, &tenant_a, "live", &[FINALIZER]).await;
    endpoint(&client, &tenant_a, "shared", &[FINALIZER, OTHER_FINALIZER]).await;
    endpoint(&client, &tenant_b, "stuck", &[FINALIZER]).await;
    let b: Api<IngestionEndpoint> = Api::namespaced(client.clone(), &tenant_b);
    b.delete("stuck", &DeleteParams::default()).await.unwrap();
    let stuck = b.get("stuck").await.unwrap();
    assert!(stuck.metadata.deletion_timestamp.is_some());

    // The hook as the chart renders it, and its command line run as its ServiceAccount.
    let args = install_hook(&system, &[&tenant_a, &tenant_b]).await;
    assert_eq!(args[0], "release-finalizers");
    let dir = anchorpipe_e2e::log_dir();
    let kubeconfig = kubeconfig_as(&system, &dir).await;
    let started = Instant::now();
    let out = run_as(&kubeconfig, &args);
    let waited = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "release-finalizers failed: {stdout}{stderr}"
    );
    assert!(
        stdout.contains(
            "released the finalizer of 3 IngestionEndpoint(s) (1 already being deleted) of 3 seen"
        ),
        "{stdout}"
    );

    // The operator was stopped first, and nothing was released while its Lease was held.
    let scaled = deployments.get("anchorpipe-operator").await.unwrap();
    assert_eq!(scaled.spec.replicas, Some(0));
    assert!(
        waited >= Duration::from_secs(2),
        "released after {waited:?}, before the Lease ({LEASE_SECONDS}s) ran out"
    );

    // The Lease the operator made at run time is gone too.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &system);
    assert!(
        leases
            .get_opt("anchorpipe-operator")
            .await
            .unwrap()
            .is_none()
    );

    // Only the operator's finalizer is gone; the endpoints themselves stay.
    let a: Api<IngestionEndpoint> = Api::namespaced(client.clone(), &tenant_a);
    assert!(finalizers(&a.get("live").await.unwrap()).is_empty());
    assert_eq!(
        finalizers(&a.get("shared").await.unwrap()),
        [OTHER_FINALIZER]
    );
    // The endpoint that was being deleted is gone.
    eventually("the stuck endpoint gone", Duration::from_secs(10), || {
        let b = b.clone();
        async move {
            match b.get_opt("stuck").await {
                Ok(None) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;

    // Running it again (a retried hook) is harmless.
    let again = run_as(&kubeconfig, &args);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("released the finalizer of 0"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );

    // Deleting a tenant namespace completes without any operator.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(&tenant_b, &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the tenant namespace deleted",
        Duration::from_secs(60),
        || {
            let namespaces = namespaces.clone();
            let name = tenant_b.clone();
            async move {
                match namespaces.get_opt(&name).await {
                    Ok(None) => Ok(()),
                    other => Err(format!("{:?}", other.map(|n| n.map(|n| n.status)))),
                }
            }
        },
    )
    .await;

    // `shared` keeps the other finalizer: take it off so the namespace can go.
    a.patch_metadata(
        "shared",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    for ns in [&tenant_a, &system] {
        let _ = namespaces
            .delete(
                ns,
                &DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Background),
                    ..DeleteParams::default()
                },
            )
            .await;
    }
}
