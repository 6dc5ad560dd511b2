//! The chart's `ingest.pods` values, as `helm template` renders them into the operator's
//! `ANCHORPIPE_INGEST_POD_DEFAULTS`, are read by the operator's type and reach the
//! tenant Deployment it builds: the contract between `_helpers.tpl` and `pod_defaults`.
//!
//! Needs `helm` on PATH (`scripts/cluster.sh env` puts it there).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use anchorpipe_crds::render;
use anchorpipe_crds::v1alpha1::{IngestionEndpoint, IngestionEndpointSpec};
use anchorpipe_operator::builders::{PodInputs, Settings, config_json, deployment};
use anchorpipe_operator::pod_defaults::PodDefaults;

/// The value of `ANCHORPIPE_INGEST_POD_DEFAULTS` in the operator Deployment rendered
/// with `args`.
fn rendered_pod_defaults(args: &[&str]) -> String {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/anchorpipe");
    let out = Command::new("helm")
        .args(["template", "anchorpipe"])
        .arg(&chart)
        .args(["--show-only", "templates/operator.yaml"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("helm (run `eval \"$(scripts/cluster.sh env)\"`): {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let after = text
        .split("name: ANCHORPIPE_INGEST_POD_DEFAULTS")
        .nth(1)
        .expect("the operator Deployment has ANCHORPIPE_INGEST_POD_DEFAULTS");
    let line = after
        .lines()
        .find_map(|l| l.trim().strip_prefix("value: "))
        .expect("a value line");
    // Helm's `quote` writes a double-quoted string with Go escapes, which for this
    // ASCII JSON document are JSON's escapes.
    serde_json::from_str::<String>(line).unwrap()
}

fn tenant_pod(defaults: PodDefaults) -> k8s_openapi::api::core::v1::PodSpec {
    let spec: IngestionEndpointSpec = serde_json::from_value(
        serde_json::json!({"repositories": ["7d3c1c8e-6a4c-4b55-9d84-2f1c0f0b8f61"]}),
    )
    .unwrap();
    let mut ie = IngestionEndpoint::new("acme", spec);
    ie.metadata.namespace = Some("tenants".into());
    ie.metadata.uid = Some("uid-1".into());
    let settings = Settings {
        ingest_image: "anchorpipe-ingest:test".into(),
        allowed_ingest_images: Vec::new(),
        trusted_proxies: Vec::new(),
        pod_defaults: defaults,
    };
    let config = render::ingest_config(&ie.spec, "tenants", "acme").unwrap();
    let (_, hash) = config_json(&config).unwrap();
    let d = deployment(
        &ie,
        "tenants.acme",
        &PodInputs {
            image: &settings.ingest_image,
            config_hash: &hash,
            keys_secret: "acme-hmac",
            credentials_id: "c1",
            pod_defaults: &settings.pod_defaults,
        },
    )
    .unwrap();
    d.spec.template.spec.unwrap()
}

#[test]
fn the_charts_ingest_pod_values_reach_tenant_pods() {
    let text = rendered_pod_defaults(&[
        "--set-json",
        r#"ingest.pods={"imagePullSecrets":[{"name":"regcred"}],
            "nodeSelector":{"pool":"ingest"},
            "tolerations":[{"key":"dedicated","operator":"Equal","value":"ingest","effect":"NoExecute","tolerationSeconds":300}],
            "affinity":{"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"zone","operator":"In","values":["a"]}]}]}}},
            "resources":{"requests":{"cpu":1,"memory":"256Mi"},"limits":{"memory":"1Gi"}}}"#,
    ]);
    let defaults = PodDefaults::from_json(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let pod = tenant_pod(defaults);
    assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "regcred");
    assert_eq!(pod.node_selector.unwrap()["pool"], "ingest");
    let toleration = &pod.tolerations.unwrap()[0];
    assert_eq!(toleration.effect.as_deref(), Some("NoExecute"));
    assert_eq!(toleration.toleration_seconds, Some(300));
    assert!(pod.affinity.unwrap().node_affinity.is_some());
    // A bare number in the values (`cpu: 1`) is passed on as a quantity.
    let resources = pod.containers[0].resources.clone().unwrap();
    assert_eq!(resources.requests.unwrap()["cpu"].0, "1");
    assert_eq!(resources.limits.unwrap()["memory"].0, "1Gi");
}

#[test]
fn the_charts_defaults_add_nothing_to_tenant_pods() {
    let text = rendered_pod_defaults(&[]);
    assert_eq!(text, "{}");
    let pod = tenant_pod(PodDefaults::from_json(&text).unwrap());
    assert!(pod.image_pull_secrets.is_none());
    assert!(pod.node_selector.is_none());
    assert!(pod.tolerations.is_none());
    assert!(pod.affinity.is_none());
    // The built-in default resources stay.
    let resources = pod.containers[0].resources.clone().unwrap();
    assert_eq!(resources.requests.unwrap()["cpu"].0, "100m");
}
