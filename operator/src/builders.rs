//! The desired Kubernetes objects of one endpoint, built from plain values.
//!
//! No API client here: each function takes the endpoint, the operator's settings and
//! what earlier steps decided (the key plan, the rendered config) and returns the object
//! to server-side apply. Every object carries a controller owner reference to the
//! endpoint, so the garbage collector removes it with the endpoint.
//!
//! The pod contract with the ingest service lives in [`deployment`]: the command line,
//! the two mounts, the environment and the port are what `anchorpipe-ingest serve`
//! expects.

use std::collections::BTreeMap;

use anchorpipe_crds::IngestConfig;
use anchorpipe_crds::config::CONFIG_FILE_NAME;
use anchorpipe_crds::v1alpha1::IngestionEndpoint;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, Secret, SecretKeySelector, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::accounts::TenantUrls;
use crate::credentials::{self, CREDENTIALS_ID_ANNOTATION, CredentialPlan};
use crate::error::{Error, Result};
use crate::keys::KeyPlan;
use crate::pod_defaults::PodDefaults;

/// Field manager for every server-side apply the operator makes.
pub const MANAGER: &str = "anchorpipe-operator";

/// Pod template annotation holding the hash of the rendered config: a config change
/// changes the template and rolls the pods; the keys are not part of it.
pub const CONFIG_HASH_ANNOTATION: &str = "anchorpipe.dev/config-hash";

/// Secret annotation: the on-demand rotation request already served.
pub const ROTATION_SERVED_ANNOTATION: &str = "anchorpipe.dev/rotation-served";

/// Secret annotation: the key clients should sign with (informational; the key ids
/// themselves are the source of truth).
pub const CURRENT_KEY_ANNOTATION: &str = "anchorpipe.dev/current-key-id";

/// Label selecting everything this operator manages; the controller watches only these.
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=anchorpipe-operator";

/// Where the ConfigMap is mounted in the pod.
pub const CONFIG_DIR: &str = "/etc/anchorpipe/config";
/// Where the key Secret is mounted: one file per key id.
pub const KEYS_DIR: &str = "/etc/anchorpipe/keys";
/// The port the ingest service listens on.
pub const HTTP_PORT: i32 = 8080;
/// Seconds an ingest pod keeps serving after SIGTERM, not ready, so that endpoint and
/// ingress controllers stop sending it requests before it closes its listener; well
/// inside the pod's termination grace period.
pub const SHUTDOWN_DELAY_SECONDS: u32 = 5;
/// Port name shared by the container, the probes, the Service and the Ingress.
pub const HTTP_PORT_NAME: &str = "http";
/// The only path exposed through the Ingress: health and metrics stay in-cluster.
pub const INGESTION_PATH: &str = "/api/ingestion";

/// The credentials Secret's keys for the tenant's database and broker URLs.
pub const DATABASE_URL_KEY: &str = "database-url";
pub const AMQP_URL_KEY: &str = "amqp-url";

/// A non-root uid/gid (the distroless "nonroot" user), so `runAsNonRoot` can be verified
/// by the kubelet even if the image declares no numeric user.
const NON_ROOT_ID: i64 = 65532;

/// Secret files readable by the owner and the pod's fsGroup only.
const KEY_FILE_MODE: i32 = 0o440;

/// What the operator was configured with at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Ingest image used unless an endpoint overrides it.
    pub ingest_image: String,
    /// Further images an endpoint may choose with `spec.image`.
    pub allowed_ingest_images: Vec<String>,
    /// Proxies (IPs or CIDR ranges) in front of the ingest pods, such as the ingress
    /// controller, whose `X-Forwarded-For`/`Forwarded` the pods believe; written into
    /// every tenant's config.
    pub trusted_proxies: Vec<String>,
    /// Pull Secrets, scheduling and default resources of every tenant's pods.
    pub pod_defaults: PodDefaults,
}

impl Settings {
    /// The image the endpoint's pods run, or `Err` with a message when the endpoint asks
    /// for one the platform does not allow (the pods hold the tenant's credentials).
    pub fn image_for(&self, endpoint: &IngestionEndpoint) -> std::result::Result<String, String> {
        match &endpoint.spec.image {
            None => Ok(self.ingest_image.clone()),
            Some(image)
                if *image == self.ingest_image
                    || self.allowed_ingest_images.iter().any(|a| a == image) =>
            {
                Ok(image.clone())
            }
            Some(image) => Err(format!(
                "spec.image `{image}` is not an image the platform allows; remove spec.image to run {}",
                self.ingest_image
            )),
        }
    }
}

/// Names of the objects derived from an endpoint named `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub workload: String,
    pub secret: String,
    pub credentials: String,
}

impl Names {
    pub fn of(endpoint: &IngestionEndpoint) -> Self {
        let name = endpoint.name_any();
        Self {
            workload: format!("{name}-ingest"),
            secret: format!("{name}-hmac"),
            credentials: format!("{name}-credentials"),
        }
    }
}

/// The controller owner reference to the endpoint.
pub fn owner_reference(endpoint: &IngestionEndpoint) -> Result<OwnerReference> {
    endpoint
        .controller_owner_ref(&())
        .ok_or(Error::MissingMetadata("uid"))
}

/// Whether `meta` is controlled by `endpoint`.
pub fn is_owned_by(meta: &ObjectMeta, endpoint: &IngestionEndpoint) -> bool {
    let uid = endpoint.meta().uid.as_deref();
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && Some(r.uid.as_str()) == uid)
}

/// Labels selecting the endpoint's pods (stable: changing them would orphan pods).
pub fn selector_labels(endpoint: &IngestionEndpoint) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "anchorpipe-ingest".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), endpoint.name_any()),
    ])
}

/// Labels on every object the operator creates for the endpoint.
pub fn labels(endpoint: &IngestionEndpoint, tenant: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(endpoint);
    labels.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        MANAGER.to_owned(),
    );
    labels.insert(
        "app.kubernetes.io/component".to_owned(),
        "ingest".to_owned(),
    );
    labels.insert("anchorpipe.dev/tenant".to_owned(), tenant.to_owned());
    labels
}

fn metadata(endpoint: &IngestionEndpoint, name: &str, tenant: &str) -> Result<ObjectMeta> {
    Ok(ObjectMeta {
        name: Some(name.to_owned()),
        namespace: endpoint.namespace(),
        labels: Some(labels(endpoint, tenant)),
        owner_references: Some(vec![owner_reference(endpoint)?]),
        ..ObjectMeta::default()
    })
}

/// The minted key Secret: one data entry per key id.
pub fn key_secret(endpoint: &IngestionEndpoint, tenant: &str, plan: &KeyPlan) -> Result<Secret> {
    let names = Names::of(endpoint);
    let mut meta = metadata(endpoint, &names.secret, tenant)?;
    let mut annotations =
        BTreeMap::from([(CURRENT_KEY_ANNOTATION.to_owned(), plan.current.clone())]);
    if let Some(served) = &plan.served_request {
        annotations.insert(ROTATION_SERVED_ANNOTATION.to_owned(), served.clone());
    }
    meta.annotations = Some(annotations);
    Ok(Secret {
        metadata: meta,
        type_: Some("Opaque".to_owned()),
        data: Some(
            plan.keys
                .iter()
                .map(|(id, value)| (id.clone(), ByteString(value.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    })
}

/// The tenant's credentials Secret for `plan`, with the URLs built from its set.
pub fn credentials_secret(
    endpoint: &IngestionEndpoint,
    tenant: &str,
    plan: &CredentialPlan,
    urls: &TenantUrls,
) -> Result<Secret> {
    let names = Names::of(endpoint);
    let mut meta = metadata(endpoint, &names.credentials, tenant)?;
    meta.annotations = Some(credentials::secret_annotations(plan));
    Ok(Secret {
        metadata: meta,
        type_: Some("Opaque".to_owned()),
        data: Some(
            credentials::secret_data(&plan.current, &urls.database_url, &urls.amqp_url)
                .into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    })
}

/// The rendered config as the file the pods read, and its hash.
pub fn config_json(config: &IngestConfig) -> Result<(String, String)> {
    let text = serde_json::to_string_pretty(config).map_err(|e| Error::Serialize {
        what: "ingest config",
        message: e.to_string(),
    })?;
    let hash = hex::encode(Sha256::digest(text.as_bytes()));
    Ok((text, hash))
}

/// The ConfigMap holding `config.json`.
pub fn config_map(
    endpoint: &IngestionEndpoint,
    tenant: &str,
    config_text: &str,
) -> Result<ConfigMap> {
    Ok(ConfigMap {
        metadata: metadata(endpoint, &Names::of(endpoint).workload, tenant)?,
        data: Some(BTreeMap::from([(
            CONFIG_FILE_NAME.to_owned(),
            config_text.to_owned(),
        )])),
        ..ConfigMap::default()
    })
}

fn default_resources() -> ResourceRequirements {
    let q = |s: &str| Quantity(s.to_owned());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), q("100m")),
            ("memory".to_owned(), q("256Mi")),
        ])),
        // Matches the config's default in-flight body budget (200 MiB) with headroom.
        limits: Some(BTreeMap::from([("memory".to_owned(), q("1Gi"))])),
        ..ResourceRequirements::default()
    }
}

/// The container's security context: nothing the service does needs privilege.
pub fn container_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(NON_ROOT_ID),
        run_as_group: Some(NON_ROOT_ID),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..SecurityContext::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        ..SeccompProfile::default()
    }
}

fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(HTTP_PORT_NAME.to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The ingest container's command line: the contract with `anchorpipe-ingest`.
pub fn ingest_args() -> Vec<String> {
    vec![
        "serve".to_owned(),
        "--config".to_owned(),
        format!("{CONFIG_DIR}/{CONFIG_FILE_NAME}"),
        "--keys-dir".to_owned(),
        KEYS_DIR.to_owned(),
        "--listen".to_owned(),
        format!("0.0.0.0:{HTTP_PORT}"),
        "--shutdown-delay-seconds".to_owned(),
        SHUTDOWN_DELAY_SECONDS.to_string(),
    ]
}

/// What the pods are given besides the config: the image, the HMAC keys Secret, and
/// the credential set they connect with.
#[derive(Debug, Clone, PartialEq)]
pub struct PodInputs<'a> {
    pub image: &'a str,
    pub config_hash: &'a str,
    pub keys_secret: &'a str,
    pub credentials_id: &'a str,
    /// The platform's pull Secrets, scheduling and default resources.
    pub pod_defaults: &'a PodDefaults,
}

/// The ingest Deployment. `config_hash` and the credential set's id go on the pod
/// template (a config change or a credential rotation rolls the pods); the keys Secret is
/// mounted as a directory, so the kubelet swaps the files in place on a key rotation and
/// the template, hence the pods, stay unchanged. The database and broker URLs come from
/// the tenant's credentials Secret: the pods never see the platform's credentials.
pub fn deployment(
    endpoint: &IngestionEndpoint,
    tenant: &str,
    inputs: &PodInputs<'_>,
) -> Result<Deployment> {
    let names = Names::of(endpoint);
    let spec = &endpoint.spec;
    let container = Container {
        name: "ingest".to_owned(),
        image: Some(inputs.image.to_owned()),
        args: Some(ingest_args()),
        env: Some(vec![
            secret_env("DATABASE_URL", &names.credentials, DATABASE_URL_KEY),
            secret_env("AMQP_URL", &names.credentials, AMQP_URL_KEY),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some(HTTP_PORT_NAME.to_owned()),
            container_port: HTTP_PORT,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        resources: Some(
            spec.resources
                .clone()
                .or_else(|| inputs.pod_defaults.resources.clone())
                .unwrap_or_else(default_resources),
        ),
        security_context: Some(container_security_context()),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "config".to_owned(),
                mount_path: CONFIG_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "keys".to_owned(),
                mount_path: KEYS_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "tmp".to_owned(),
                mount_path: "/tmp".to_owned(),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    let mut template_meta = ObjectMeta {
        labels: Some(labels(endpoint, tenant)),
        ..ObjectMeta::default()
    };
    template_meta.annotations = Some(BTreeMap::from([
        (
            CONFIG_HASH_ANNOTATION.to_owned(),
            inputs.config_hash.to_owned(),
        ),
        (
            CREDENTIALS_ID_ANNOTATION.to_owned(),
            inputs.credentials_id.to_owned(),
        ),
    ]));
    let mut pod = PodSpec {
        // The ingest service never talks to the Kubernetes API.
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(NON_ROOT_ID),
            run_as_group: Some(NON_ROOT_ID),
            fs_group: Some(NON_ROOT_ID),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..PodSecurityContext::default()
        }),
        containers: vec![container],
        volumes: Some(vec![
            Volume {
                name: "config".to_owned(),
                config_map: Some(ConfigMapVolumeSource {
                    name: names.workload.clone(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: "keys".to_owned(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(inputs.keys_secret.to_owned()),
                    default_mode: Some(KEY_FILE_MODE),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: "tmp".to_owned(),
                empty_dir: Some(EmptyDirVolumeSource {
                    size_limit: Some(Quantity("64Mi".to_owned())),
                    ..EmptyDirVolumeSource::default()
                }),
                ..Volume::default()
            },
        ]),
        termination_grace_period_seconds: Some(30),
        ..PodSpec::default()
    };
    inputs.pod_defaults.apply_to(&mut pod);
    Ok(Deployment {
        metadata: metadata(endpoint, &names.workload, tenant)?,
        spec: DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(endpoint)),
                ..LabelSelector::default()
            },
            // Never go below the desired count during a config roll: each pod enforces a
            // share of the rate limit sized for that count.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(template_meta),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    })
}

/// The ClusterIP Service in front of the pods (port 80 → `http`).
pub fn service(endpoint: &IngestionEndpoint, tenant: &str) -> Result<Service> {
    Ok(Service {
        metadata: metadata(endpoint, &Names::of(endpoint).workload, tenant)?,
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(endpoint)),
            ports: Some(vec![ServicePort {
                name: Some(HTTP_PORT_NAME.to_owned()),
                port: 80,
                target_port: Some(IntOrString::String(HTTP_PORT_NAME.to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            type_: Some("ClusterIP".to_owned()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// The Ingress, when the spec asks for one: only the ingestion path is routed.
pub fn ingress(endpoint: &IngestionEndpoint, tenant: &str) -> Result<Option<Ingress>> {
    let Some(spec) = &endpoint.spec.ingress else {
        return Ok(None);
    };
    let name = Names::of(endpoint).workload;
    Ok(Some(Ingress {
        metadata: metadata(endpoint, &name, tenant)?,
        spec: Some(IngressSpec {
            ingress_class_name: spec.class_name.clone(),
            tls: spec.tls_secret_name.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: Some(vec![spec.host.clone()]),
                    secret_name: Some(secret.clone()),
                }]
            }),
            rules: Some(vec![IngressRule {
                host: Some(spec.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some(INGESTION_PATH.to_owned()),
                        path_type: "Exact".to_owned(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: name.clone(),
                                port: Some(ServiceBackendPort {
                                    name: Some(HTTP_PORT_NAME.to_owned()),
                                    ..ServiceBackendPort::default()
                                }),
                            }),
                            ..IngressBackend::default()
                        },
                    }],
                }),
            }]),
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    }))
}

/// A PodDisruptionBudget when there is more than one pod: voluntary disruptions (node
/// drains) take one pod at a time.
pub fn pod_disruption_budget(
    endpoint: &IngestionEndpoint,
    tenant: &str,
) -> Result<Option<PodDisruptionBudget>> {
    if endpoint.spec.replicas <= 1 {
        return Ok(None);
    }
    Ok(Some(PodDisruptionBudget {
        metadata: metadata(endpoint, &Names::of(endpoint).workload, tenant)?,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(endpoint)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }))
}

/// Where clients post reports: the Ingress URL, or the in-cluster Service URL.
pub fn url(endpoint: &IngestionEndpoint) -> String {
    match &endpoint.spec.ingress {
        Some(ingress) => {
            let scheme = if ingress.tls_secret_name.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{}{INGESTION_PATH}", ingress.host)
        }
        None => format!(
            "http://{}.{}.svc{INGESTION_PATH}",
            Names::of(endpoint).workload,
            endpoint.namespace().unwrap_or_default()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys;
    use anchorpipe_crds::render;
    use anchorpipe_crds::v1alpha1::IngestionEndpointSpec;
    use std::time::Duration;

    fn endpoint(spec: serde_json::Value) -> IngestionEndpoint {
        let spec: IngestionEndpointSpec = serde_json::from_value(spec).unwrap();
        let mut ie = IngestionEndpoint::new("acme", spec);
        ie.metadata.namespace = Some("tenants".into());
        ie.metadata.uid = Some("uid-1".into());
        ie
    }

    fn minimal() -> serde_json::Value {
        serde_json::json!({"repositories": ["7d3c1c8e-6a4c-4b55-9d84-2f1c0f0b8f61"]})
    }

    fn settings() -> Settings {
        Settings {
            ingest_image: "anchorpipe-ingest:test".into(),
            allowed_ingest_images: vec!["anchorpipe-ingest:next".into()],
            trusted_proxies: Vec::new(),
            pod_defaults: PodDefaults::default(),
        }
    }

    fn built(ie: &IngestionEndpoint) -> (Deployment, String) {
        built_with(ie, &settings())
    }

    fn built_with(ie: &IngestionEndpoint, settings: &Settings) -> (Deployment, String) {
        let config = render::ingest_config(&ie.spec, "tenants", "acme").unwrap();
        let (_, hash) = config_json(&config).unwrap();
        let image = settings.image_for(ie).unwrap();
        let inputs = PodInputs {
            image: &image,
            config_hash: &hash,
            keys_secret: "acme-hmac",
            credentials_id: "c1",
            pod_defaults: &settings.pod_defaults,
        };
        let d = deployment(ie, "tenants.acme", &inputs).unwrap();
        (d, hash)
    }

    #[test]
    fn only_images_the_platform_allows_run() {
        let mut ie = endpoint(minimal());
        assert_eq!(settings().image_for(&ie).unwrap(), "anchorpipe-ingest:test");
        ie.spec.image = Some("anchorpipe-ingest:next".into());
        assert_eq!(settings().image_for(&ie).unwrap(), "anchorpipe-ingest:next");
        ie.spec.image = Some("busybox".into());
        let refused = settings().image_for(&ie).unwrap_err();
        assert!(refused.contains("`busybox`"), "{refused}");
    }

    fn pod(d: &Deployment) -> &PodSpec {
        d.spec.template.spec.as_ref().unwrap()
    }

    #[test]
    fn deployment_honours_the_ingest_contract() {
        let ie = endpoint(minimal());
        let (d, _) = built(&ie);
        let pod = pod(&d);
        let c = &pod.containers[0];
        assert_eq!(
            c.args.as_deref().unwrap(),
            [
                "serve",
                "--config",
                "/etc/anchorpipe/config/config.json",
                "--keys-dir",
                "/etc/anchorpipe/keys",
                "--listen",
                "0.0.0.0:8080",
                "--shutdown-delay-seconds",
                "5"
            ]
        );
        let env: Vec<(&str, &str, &str)> = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| {
                let r = e
                    .value_from
                    .as_ref()
                    .unwrap()
                    .secret_key_ref
                    .as_ref()
                    .unwrap();
                (e.name.as_str(), r.name.as_str(), r.key.as_str())
            })
            .collect();
        assert_eq!(
            env,
            [
                ("DATABASE_URL", "acme-credentials", "database-url"),
                ("AMQP_URL", "acme-credentials", "amqp-url")
            ]
        );
        let port = &c.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.container_port),
            (Some("http"), 8080)
        );
        let live = c
            .liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        let ready = c
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(live.path.as_deref(), Some("/healthz"));
        assert_eq!(ready.path.as_deref(), Some("/readyz"));
        assert_eq!(ready.port, IntOrString::String("http".into()));
        let mounts: Vec<(&str, &str)> = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| (m.name.as_str(), m.mount_path.as_str()))
            .collect();
        assert!(mounts.contains(&("config", "/etc/anchorpipe/config")));
        assert!(mounts.contains(&("keys", "/etc/anchorpipe/keys")));
        let volumes = pod.volumes.as_ref().unwrap();
        let keys = volumes.iter().find(|v| v.name == "keys").unwrap();
        assert_eq!(
            keys.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("acme-hmac")
        );
        // A subPath mount would freeze the files: rotations must reach the pod.
        assert!(
            c.volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .all(|m| m.sub_path.is_none())
        );
        assert_eq!(c.image.as_deref(), Some("anchorpipe-ingest:test"));
        assert_eq!(d.spec.replicas, Some(2));
    }

    #[test]
    fn pods_run_unprivileged() {
        let (d, _) = built(&endpoint(minimal()));
        let pod = pod(&d);
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
            Some("RuntimeDefault")
        );
        assert_eq!(pod.automount_service_account_token, Some(false));
        let sc = pod.containers[0].security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_ne!(sc.run_as_user, Some(0));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.privileged, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        assert!(sc.capabilities.as_ref().unwrap().add.is_none());
        assert_eq!(
            sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
            Some("RuntimeDefault")
        );
    }

    fn template_hash(d: &Deployment) -> String {
        d.spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[CONFIG_HASH_ANNOTATION]
            .clone()
    }

    #[test]
    fn config_changes_roll_pods_and_key_rotations_do_not() {
        let base = endpoint(minimal());
        let (d0, h0) = built(&base);
        assert_eq!(template_hash(&d0), h0);

        // Table: (what changed, spec, whether the pod template must change).
        let mut more_replicas = minimal();
        more_replicas["replicas"] = 3.into();
        let mut new_limit = minimal();
        new_limit["rateLimit"] =
            serde_json::json!({"perEndpoint": {"requestsPerMinute": 1200, "burst": 100}});
        let mut new_rotation = minimal();
        new_rotation["hmac"] = serde_json::json!({"rotationPeriod": "48h", "gracePeriod": "1h"});
        let mut with_ingress = minimal();
        with_ingress["ingress"] = serde_json::json!({"host": "reports.example.com"});
        let cases = [
            // The per-pod rate share depends on the replica count: pods must restart.
            ("replicas", more_replicas, true),
            ("rate limit", new_limit, true),
            // Rotation settings and the Ingress are not in the pod's config.
            ("rotation period", new_rotation, false),
            ("ingress", with_ingress, false),
        ];
        for (what, spec, rolls) in cases {
            let (d, _) = built(&endpoint(spec));
            let t0 = &d0.spec.template;
            let t1 = &d.spec.template;
            assert_eq!(t0 != t1, rolls, "{what}");
        }

        // A rotation changes the Secret only; the Deployment is built without the keys.
        let policy = render::rotation_policy(&base.spec.hmac).unwrap().unwrap();
        let now = "2026-01-01T00:00:00Z".parse().unwrap();
        let p1 = keys::plan(&BTreeMap::new(), None, None, policy, now, keys::mint_random).unwrap();
        let p2 = keys::plan(&p1.keys, None, Some("r1"), policy, now, keys::mint_random).unwrap();
        let s1 = key_secret(&base, "acme", &p1).unwrap();
        let s2 = key_secret(&base, "acme", &p2).unwrap();
        assert_ne!(s1.data, s2.data);
        let (d_after, _) = built(&base);
        assert_eq!(d_after, d0);
    }

    #[test]
    fn objects_are_owned_and_labelled() {
        let mut spec = minimal();
        spec["ingress"] =
            serde_json::json!({"host": "reports.example.com", "tlsSecretName": "tls"});
        let ie = endpoint(spec);
        let (d, _) = built(&ie);
        let svc = service(&ie, "acme").unwrap();
        let ing = ingress(&ie, "acme").unwrap().unwrap();
        let pdb = pod_disruption_budget(&ie, "acme").unwrap().unwrap();
        for meta in [&d.metadata, &svc.metadata, &ing.metadata, &pdb.metadata] {
            assert!(is_owned_by(meta, &ie));
            assert_eq!(meta.namespace.as_deref(), Some("tenants"));
            assert_eq!(
                meta.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
                MANAGER
            );
        }
        assert_eq!(url(&ie), "https://reports.example.com/api/ingestion");
        let rule = &ing.spec.as_ref().unwrap().rules.as_ref().unwrap()[0];
        assert_eq!(
            rule.http.as_ref().unwrap().paths[0].path.as_deref(),
            Some("/api/ingestion")
        );
    }

    #[test]
    fn optional_objects_follow_the_spec() {
        // (replicas, ingress?, expect PDB, expect Ingress, URL)
        let cases = [
            (
                1,
                false,
                false,
                false,
                "http://acme-ingest.tenants.svc/api/ingestion",
            ),
            (
                2,
                false,
                true,
                false,
                "http://acme-ingest.tenants.svc/api/ingestion",
            ),
            (3, true, true, true, "http://r.example.com/api/ingestion"),
        ];
        for (replicas, with_ingress, want_pdb, want_ingress, want_url) in cases {
            let mut spec = minimal();
            spec["replicas"] = replicas.into();
            if with_ingress {
                spec["ingress"] = serde_json::json!({"host": "r.example.com"});
            }
            let ie = endpoint(spec);
            assert_eq!(
                pod_disruption_budget(&ie, "acme").unwrap().is_some(),
                want_pdb
            );
            assert_eq!(ingress(&ie, "acme").unwrap().is_some(), want_ingress);
            assert_eq!(url(&ie), want_url);
        }
    }

    #[test]
    fn key_secret_holds_each_key_under_its_id() {
        let ie = endpoint(minimal());
        let plan = KeyPlan {
            keys: BTreeMap::from([
                ("k20260101-000000-aaaaaa".into(), "whsec_a".into()),
                ("k20260102-000000-bbbbbb".into(), "whsec_b".into()),
            ]),
            current: "k20260102-000000-bbbbbb".into(),
            minted: None,
            removed: vec![],
            served_request: Some("r1".into()),
            next_change: Duration::from_secs(1),
        };
        let s = key_secret(&ie, "acme", &plan).unwrap();
        let data = s.data.unwrap();
        assert_eq!(data["k20260102-000000-bbbbbb"].0, b"whsec_b");
        assert_eq!(data.len(), 2);
        let ann = s.metadata.annotations.unwrap();
        assert_eq!(ann[ROTATION_SERVED_ANNOTATION], "r1");
        assert_eq!(ann[CURRENT_KEY_ANNOTATION], "k20260102-000000-bbbbbb");
    }

    #[test]
    fn custom_resources_and_image_override() {
        let mut spec = minimal();
        spec["image"] = "anchorpipe-ingest:next".into();
        spec["resources"] = serde_json::json!({"limits": {"memory": "2Gi"}});
        let (d, _) = built(&endpoint(spec));
        let c = &pod(&d).containers[0];
        assert_eq!(c.image.as_deref(), Some("anchorpipe-ingest:next"));
        assert_eq!(
            c.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0,
            "2Gi"
        );
        let (d, _) = built(&endpoint(minimal()));
        let r = pod(&d).containers[0].resources.clone().unwrap();
        assert_eq!(r.requests.unwrap()["cpu"].0, "100m");
    }

    fn platform_pod_settings() -> Settings {
        let mut settings = settings();
        settings.pod_defaults = PodDefaults::from_json(
            r#"{"imagePullSecrets":["regcred"],
                "nodeSelector":{"pool":"ingest"},
                "tolerations":[{"key":"dedicated","operator":"Equal","value":"ingest","effect":"NoSchedule"}],
                "affinity":{"podAntiAffinity":{"preferredDuringSchedulingIgnoredDuringExecution":[{"weight":100,"podAffinityTerm":{"topologyKey":"kubernetes.io/hostname","labelSelector":{"matchLabels":{"app.kubernetes.io/name":"anchorpipe-ingest"}}}}]}},
                "resources":{"requests":{"cpu":"250m","memory":"128Mi"},"limits":{"memory":"512Mi"}}}"#,
        )
        .unwrap();
        settings
    }

    #[test]
    fn the_platforms_pod_settings_reach_every_tenants_pods() {
        let (d, _) = built_with(&endpoint(minimal()), &platform_pod_settings());
        let p = pod(&d);
        let secrets: Vec<&str> = p
            .image_pull_secrets
            .iter()
            .flatten()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(secrets, ["regcred"]);
        assert_eq!(p.node_selector.as_ref().unwrap()["pool"], "ingest");
        let toleration = &p.tolerations.as_ref().unwrap()[0];
        assert_eq!(toleration.key.as_deref(), Some("dedicated"));
        assert_eq!(toleration.effect.as_deref(), Some("NoSchedule"));
        assert!(p.affinity.as_ref().unwrap().pod_anti_affinity.is_some());
        // The platform's default resources stand in for the built-in ones...
        let r = p.containers[0].resources.clone().unwrap();
        assert_eq!(r.requests.as_ref().unwrap()["cpu"].0, "250m");
        assert_eq!(r.limits.as_ref().unwrap()["memory"].0, "512Mi");
        // ...and the pod's own hardening is unchanged by them.
        assert_eq!(p.automount_service_account_token, Some(false));
        assert_eq!(
            p.security_context.as_ref().unwrap().run_as_non_root,
            Some(true)
        );
    }

    #[test]
    fn an_endpoints_own_resources_win_over_the_platform_default() {
        let mut spec = minimal();
        spec["resources"] = serde_json::json!({"requests": {"cpu": "1"}});
        let (d, _) = built_with(&endpoint(spec), &platform_pod_settings());
        let r = pod(&d).containers[0].resources.clone().unwrap();
        assert_eq!(r.requests.unwrap()["cpu"].0, "1");
        assert!(r.limits.is_none());
    }

    #[test]
    fn without_platform_pod_settings_nothing_extra_is_written() {
        let (d, _) = built(&endpoint(minimal()));
        let json = serde_json::to_value(pod(&d)).unwrap();
        for field in [
            "imagePullSecrets",
            "nodeSelector",
            "tolerations",
            "affinity",
        ] {
            assert!(json.get(field).is_none(), "{field} written: {json}");
        }
    }

    #[test]
    fn a_tenant_cannot_choose_scheduling_or_registry_credentials() {
        // The spec has no such fields: the API server prunes them (structural schema)
        // and the types ignore them, so nothing a tenant writes reaches the pod template.
        let mut spec = minimal();
        spec["nodeSelector"] = serde_json::json!({"pool": "platform"});
        spec["imagePullSecrets"] = serde_json::json!([{"name": "platform-regcred"}]);
        spec["tolerations"] = serde_json::json!([{"operator": "Exists"}]);
        let (d, _) = built(&endpoint(spec));
        let p = pod(&d);
        assert!(p.node_selector.is_none());
        assert!(p.image_pull_secrets.is_none());
        assert!(p.tolerations.is_none());
        assert!(p.affinity.is_none());
    }
}
