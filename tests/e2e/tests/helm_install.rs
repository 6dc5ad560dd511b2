//! `helm install` of the chart end to end on the test control plane: the release's pods
//! (the migration Job, the operator's two replicas, the uninstall hook) are scheduled by
//! the chart's own `nodeSelector`/`tolerations` onto a node of this test, whose kubelet
//! runs each of them as the workspace binary of its image, with a ServiceAccount token
//! from the TokenRequest API mounted where a kubelet mounts it (see
//! `anchorpipe_e2e::node`). The operator therefore talks to the API server with nothing
//! but the chart's RBAC.
//!
//! The test installs with `--wait` (the migration hook must complete, both operator
//! pods must be Ready), checks who the operator is and that one replica holds the Lease,
//! has the chart's operator make a tenant endpoint Ready and its ingest pod accept a
//! signed report, then deletes the endpoint and runs `helm uninstall` (whose pre-delete
//! hook stops the operator) and removes what it made.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use anchorpipe_crds::v1alpha1::IngestionEndpoint;
use anchorpipe_e2e::cluster::{
    MANAGER, SUITE_LEASE, SUITE_LEASE_NAMESPACE, client, create_namespace, ensure_crd, is_ready,
    kubectl, with_database,
};
use anchorpipe_e2e::node::{NODE_KEY, Node, mount_namespaces_available};
use anchorpipe_e2e::{broker, eventually, ingress, log_dir, report, required_env, suffix};
use anchorpipe_operator::leader::{LeaderElector, LeaseConfig};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use sqlx::Connection as _;

/// The tenants' body limit: reports of exactly this size go through the ingress.
const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// A tenant published through the ingress.
struct Tenant {
    name: &'static str,
    host: String,
    /// The tenant's certificate, the only one the client trusts for its host.
    ca: std::path::PathBuf,
    repo: String,
    secret: String,
    queue: String,
}

/// A valid report of exactly `size` bytes: 10,000 tests whose names are padded (each
/// name stays within the schema's 500 characters).
fn report_of_size(repo: &str, run_id: &str, size: usize) -> String {
    const TESTS: usize = 10_000;
    let report = |each: usize, extra: usize| {
        let tests: Vec<serde_json::Value> = (0..TESTS)
            .map(|i| {
                let pad = each + usize::from(i < extra);
                json!({"path": "Big.java", "name": format!("t{i:05}{}", "y".repeat(pad)),
                       "status": "pass", "durationMs": 1, "startedAt": "2026-11-28T17:43:00Z"})
            })
            .collect();
        report::body_with_tests(repo, run_id, tests)
    };
    let base = report(0, 0).len();
    assert!(
        base <= size,
        "a {TESTS}-test report is already {base} bytes"
    );
    let each = (size - base) / TESTS;
    let extra = size - report(each, 0).len();
    report(each, extra)
}

/// The names (`kind/name`, one per line) of the objects of `kinds` labelled as the
/// release's, in `namespace` or cluster-wide.
async fn release_objects(release: &str, kinds: &str, namespace: Option<&str>) -> String {
    let selector = format!("app.kubernetes.io/instance={release}");
    let mut args = vec!["get", kinds, "--selector", &selector, "--output", "name"];
    if let Some(namespace) = namespace {
        args.extend(["--namespace", namespace]);
    }
    let out = kubectl(&args).await;
    assert!(out.success, "kubectl get {kinds}: {}", out.stderr);
    out.stdout.trim().to_owned()
}

/// A CI job posting reports one after another through the ingress until stopped.
struct Sender {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<(String, ingress::Answer)>>,
}

impl Sender {
    fn start(tenant: &Tenant) -> Self {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (host, ca, repo, secret) = (
            tenant.host.clone(),
            tenant.ca.clone(),
            tenant.repo.clone(),
            tenant.secret.clone(),
        );
        let task = tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut n = 0;
            while !*stopped.borrow() {
                n += 1;
                let run_id = format!("rolling-{n}");
                let body = report::body(&repo, &run_id);
                let answer = ingress::post(&host, &ca, &repo, &secret, &body).await;
                let failed = !matches!(answer, ingress::Answer::Status(200, _));
                sent.push((run_id, answer));
                if failed {
                    // What a CI job's retry loop does before trying again.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            sent
        });
        Self { stop, task }
    }

    async fn stop(self) -> Vec<(String, ingress::Answer)> {
        let _ = self.stop.send(true);
        self.task.await.unwrap()
    }
}

/// Waits until Deployment `name` runs only pods of image tag `tag`, all available.
async fn rolled_out(client: &Client, namespace: &str, name: &str, tag: &str) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    eventually("the rollout", Duration::from_secs(120), || {
        let deployments = deployments.clone();
        let pods = pods.clone();
        async move {
            let d = deployments.get(name).await.map_err(|e| e.to_string())?;
            let spec = d.spec.clone();
            let image = spec
                .template
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            let status = d.status.clone().unwrap_or_default();
            let want = spec.replicas.unwrap_or(1);
            let selector = spec
                .selector
                .match_labels
                .unwrap_or_default()
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            let running: Vec<String> = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| e.to_string())?
                .items
                .iter()
                .filter_map(|p| p.spec.as_ref()?.containers.first()?.image.clone())
                .collect();
            let done = image.ends_with(&format!(":{tag}"))
                && status.updated_replicas == Some(want)
                && status.available_replicas == Some(want)
                && status.replicas == Some(want)
                && running.iter().all(|i| i.ends_with(&format!(":{tag}")));
            if done {
                Ok(())
            } else {
                Err(format!(
                    "{name}: image {image}, status {status:?}, pods {running:?}"
                ))
            }
        }
    })
    .await;
}

fn chart() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts/anchorpipe")
}

fn chart_app_version() -> String {
    let chart = std::fs::read_to_string(chart().join("Chart.yaml")).unwrap();
    chart
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .unwrap()
}

async fn helm(args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new("helm")
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("helm (is `scripts/cluster.sh env` on PATH?): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `helm <args>`, which must succeed; a failure names the test node's errors and shows
/// the release's pod logs. Returns helm's output.
async fn helm_must(node: &Node, system: &str, args: &[&str]) -> String {
    let (ok, out) = helm(args).await;
    assert!(
        ok,
        "helm {}: {out}\nkubelet errors: {:?}{}",
        args.first().copied().unwrap_or_default(),
        node.errors(),
        pod_logs(system)
    );
    out
}

/// Runs a statement against the server of `DATABASE_URL` as its owner.
async fn admin_sql(statement: &str) {
    let base = required_env("DATABASE_URL");
    let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
    let _ = conn.close().await;
}

/// The logs of the release's pods, for a failure message.
fn pod_logs(namespace: &str) -> String {
    let mut out = String::new();
    if let Ok(dir) = std::fs::read_dir(log_dir()) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("pod-{namespace}-")) {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                out.push_str(&format!("\n--- {name}\n"));
                for line in tail.into_iter().rev() {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
    }
    out
}

fn record_timing(what: &str, elapsed: Duration) {
    let line = format!("{what}\tok\t{:.1}", elapsed.as_secs_f64());
    eprintln!("e2e timing: {line}");
    let _ = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log_dir().join("timings.tsv"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes()));
}

/// A client that authenticates with `token` and nothing else.
async fn client_with_token(token: &str) -> Client {
    let mut config = kube::Config::infer().await.unwrap();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.to_owned().into()),
        ..kube::config::AuthInfo::default()
    };
    Client::try_from(config).unwrap()
}

/// What a failed run would otherwise leave in the shared cluster: a release whose pods
/// are bound to a node nobody runs any more (its uninstall hook could never run), that
/// node, the namespaces (an endpoint's finalizer would hold one forever) and the
/// database. Removed when the test fails; the pods' logs stay in `target/e2e-logs`.
struct Leftovers {
    release: String,
    system: String,
    tenants: String,
    node: String,
    database: String,
    armed: bool,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        eprintln!(
            "helm_install failed: removing release {} (no hooks), node {}, namespaces {} and {}, \
             database {}; pod logs in {}",
            self.release,
            self.node,
            self.system,
            self.tenants,
            self.database,
            log_dir().display()
        );
        let run = |program: &str, args: &[&str]| {
            let _ = std::process::Command::new(program)
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        };
        run(
            "helm",
            &[
                "uninstall",
                &self.release,
                "--namespace",
                &self.system,
                "--no-hooks",
            ],
        );
        let endpoints = std::process::Command::new("kubectl")
            .args([
                "get",
                "ingestionendpoints",
                "--namespace",
                &self.tenants,
                "-o",
                "name",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for endpoint in endpoints.lines() {
            run(
                "kubectl",
                &[
                    "patch",
                    endpoint,
                    "--namespace",
                    &self.tenants,
                    "--type=merge",
                    "-p",
                    r#"{"metadata":{"finalizers":null}}"#,
                ],
            );
        }
        for ns in [&self.system, &self.tenants] {
            run(
                "kubectl",
                &[
                    "delete",
                    "pods",
                    "--all",
                    "--namespace",
                    ns,
                    "--force",
                    "--grace-period=0",
                ],
            );
            run("kubectl", &["delete", "namespace", ns, "--wait=false"]);
        }
        run("kubectl", &["delete", "node", &self.node, "--wait=false"]);
        let statement = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.database);
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(async {
                    if let Ok(mut conn) =
                        sqlx::PgConnection::connect(&required_env("DATABASE_URL")).await
                    {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(statement))
                            .execute(&mut conn)
                            .await;
                    }
                });
            }
        })
        .join();
    }
}

/// The operator of the other e2e tests (`tests/e2e.rs`) serves every namespace with
/// admin credentials: a run of it beside this test (another checkout on the same
/// cluster) would reconcile this test's tenant too, and the two operators would fight
/// over it. It reconciles nothing until it holds [`SUITE_LEASE`], so this test holds
/// that Lease itself while the chart's operator works (waiting for a running suite's
/// operator to let it go), through the operator's own leader election.
struct SuiteOperatorStandsBy {
    elector: std::sync::Arc<LeaderElector>,
    renewing: tokio::task::JoinHandle<()>,
}

impl SuiteOperatorStandsBy {
    async fn hold(client: &Client, identity: &str) -> Self {
        let elector = std::sync::Arc::new(LeaderElector::new(
            Api::namespaced(client.clone(), SUITE_LEASE_NAMESPACE),
            LeaseConfig {
                name: SUITE_LEASE.to_owned(),
                identity: identity.to_owned(),
                lease_duration: Duration::from_secs(15),
                renew_period: Duration::from_secs(2),
            },
        ));
        let waited = Instant::now();
        let acquired = tokio::time::timeout(Duration::from_secs(300), elector.acquire())
            .await
            .unwrap_or_else(|_| {
                panic!("{SUITE_LEASE_NAMESPACE}/{SUITE_LEASE} held by another operator for 300s")
            });
        if waited.elapsed() > Duration::from_secs(1) {
            eprintln!(
                "helm_install: waited {:?} for the e2e suite's operator to stand by",
                waited.elapsed()
            );
        }
        let holder = elector.clone();
        let renewing = tokio::spawn(async move {
            let error = holder.hold(acquired).await;
            eprintln!("helm_install: lost {SUITE_LEASE}: {error}");
        });
        Self { elector, renewing }
    }

    async fn release(self) {
        self.renewing.abort();
        self.elector.release().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_runs_the_release_under_its_own_rbac_and_uninstalls_cleanly() {
    let test_started = Instant::now();
    if let Err(e) = mount_namespaces_available() {
        panic!("the test kubelet needs user and mount namespaces: {e}");
    }
    ensure_crd().await;
    let client = client().await;
    let sfx = suffix();
    // A release name of its own: the chart's cluster-scoped objects (the tenant
    // ClusterRoles) are named after the release.
    let release = format!("ap-{sfx}");
    // The chart's name for the operator's Deployment, ServiceAccount and Lease.
    let operator = format!("{release}-operator");
    let operator_selector =
        format!("app.kubernetes.io/name=anchorpipe-operator,app.kubernetes.io/instance={release}");
    let system = format!("e2e-helm-{sfx}");
    let tenants = format!("e2e-helm-tenant-{sfx}");
    let db = format!("anchorpipe_helm_{sfx}");
    let suite_operator = SuiteOperatorStandsBy::hold(&client, &format!("helm-install-{sfx}")).await;
    // Declared before the node: on a failure the node is dropped first (its processes
    // die), then this removes what the run made.
    let mut leftovers = Leftovers {
        release: release.clone(),
        system: system.clone(),
        tenants: tenants.clone(),
        node: String::new(),
        database: db.clone(),
        armed: true,
    };
    create_namespace(&client, &system).await;
    create_namespace(&client, &tenants).await;
    let node = Node::start(&client).await;
    leftovers.node = node.name.clone();

    // An empty platform database: the chart's migration Job creates the schema.
    admin_sql(&format!("CREATE DATABASE \"{db}\"")).await;
    let database_url = with_database(&required_env("DATABASE_URL"), &db);

    let scheduling = node.scheduling();
    let values = json!({
        "platformSecret": {
            "create": true,
            "databaseUrl": database_url,
            "amqpUrl": required_env("AMQP_URL"),
            "rabbitmqManagementUrl": required_env("RABBITMQ_MANAGEMENT_URL"),
        },
        "operator": {
            "watchNamespaces": [tenants],
            "logFormat": "text",
            "brokerTimeoutSeconds": 3,
            "cleanupTimeoutSeconds": 20,
            "nodeSelector": scheduling["nodeSelector"],
            "tolerations": scheduling["tolerations"],
        },
        "migrations": {
            "nodeSelector": scheduling["nodeSelector"],
            "tolerations": scheduling["tolerations"],
        },
        "ingest": {"pods": {
            "nodeSelector": scheduling["nodeSelector"],
            "tolerations": scheduling["tolerations"],
        }},
        "tests": {
            "nodeSelector": scheduling["nodeSelector"],
            "tolerations": scheduling["tolerations"],
        },
        "uninstall": {"waitTimeoutSeconds": 30},
    });
    let values_file = std::env::temp_dir().join(format!("anchorpipe-helm-values-{sfx}.json"));
    std::fs::write(&values_file, values.to_string()).unwrap();
    let values_path = values_file.to_string_lossy().into_owned();
    let chart = chart();
    let chart_path = chart.to_string_lossy().into_owned();

    // Install: the pre-install hooks (platform Secret, migration Job) and then the
    // operator, waited for until its Deployment is available.
    let install_started = Instant::now();
    helm_must(
        &node,
        &system,
        &[
            "install",
            &release,
            &chart_path,
            "--namespace",
            &system,
            "--values",
            &values_path,
            "--wait",
            "--timeout",
            "120s",
        ],
    )
    .await;
    let _ = std::fs::remove_file(&values_file);
    let installed = install_started.elapsed();
    record_timing("helm_install: install --wait", installed);

    // The migration Job ran to completion against the platform database (the hook is
    // deleted once it succeeded; the schema stays).
    let mut conn = sqlx::PgConnection::connect(&database_url).await.unwrap();
    let (tables,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let _ = conn.close().await;
    assert!(tables > 0, "the migration Job left no tables in {db}");
    let migrate_log = std::fs::read_dir(log_dir()).unwrap().flatten().any(|e| {
        e.file_name()
            .to_string_lossy()
            .starts_with(&format!("pod-{system}-{operator}-migrate-"))
    });
    assert!(
        migrate_log,
        "the migration Job's pod never ran on the test node"
    );

    // Two operator pods, on the test node, as the chart's ServiceAccount, Ready.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &system);
    let operators = pods
        .list(&ListParams::default().labels(&operator_selector))
        .await
        .unwrap()
        .items;
    assert_eq!(operators.len(), 2, "{operators:?}");
    for pod in &operators {
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some(node.name.as_str()));
        assert_eq!(
            spec.service_account_name.as_deref(),
            Some(operator.as_str())
        );
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert!(
            status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True"),
            "{:?}",
            status.conditions
        );
    }
    let names: Vec<String> = operators.iter().map(ResourceExt::name_any).collect();

    // One of them leads, by the Lease the chart lets it hold.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &system);
    let leader = eventually("the operator's Lease held", Duration::from_secs(30), || {
        let leases = leases.clone();
        let names = names.clone();
        let operator = operator.clone();
        async move {
            let lease = leases.get(&operator).await.map_err(|e| e.to_string())?;
            let holder = lease
                .spec
                .and_then(|s| s.holder_identity)
                .unwrap_or_default();
            if names.contains(&holder) {
                Ok(holder)
            } else {
                Err(format!("holder {holder:?}, pods {names:?}"))
            }
        }
    })
    .await;

    // What the leader's process authenticates with: the token projected into its pod is
    // the chart's ServiceAccount, and that account may not read the platform Secret.
    let leader_pod = operators.iter().find(|p| p.name_any() == leader).unwrap();
    let access = leader_pod
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .find(|v| v.projected.is_some())
        .expect("the ServiceAccount admission's projected token volume")
        .name
        .clone();
    let token = std::fs::read_to_string(
        node.volume_dir(&leader_pod.uid().unwrap(), &access)
            .join("token"),
    )
    .unwrap();
    let as_operator = client_with_token(&token).await;
    let review: SelfSubjectReview = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview",
    }))
    .unwrap();
    let review = Api::<SelfSubjectReview>::all(as_operator.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap();
    let user = review.status.unwrap().user_info.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some(format!("system:serviceaccount:{system}:{operator}").as_str())
    );
    let denied = Api::<Secret>::namespaced(as_operator, &system)
        .get("anchorpipe-platform")
        .await;
    assert!(
        matches!(&denied, Err(kube::Error::Api(s)) if s.code == 403),
        "{denied:?}"
    );

    // Two tenants, each published through the ingress controller on a host of its own
    // with a certificate of its own, made Ready by the chart's operator; their ingest
    // pods run here from the chart's ingest image.
    let endpoints: Api<IngestionEndpoint> = Api::namespaced(client.clone(), &tenants);
    let applied = Instant::now();
    let mut apart = Vec::new();
    for name in ["shop", "docs"] {
        let host = format!("{name}-{sfx}.reports.test");
        let tls = format!("{name}-tls");
        let ca = ingress::tls_secret(&client, &tenants, &tls, &host).await;
        let repo = uuid::Uuid::new_v4().to_string();
        endpoints
            .patch(
                name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(json!({
                    "apiVersion": "anchorpipe.dev/v1alpha1",
                    "kind": "IngestionEndpoint",
                    "metadata": {"name": name},
                    "spec": {
                        "tenant": format!("{name}-{sfx}"),
                        "repositories": [repo],
                        "replicas": 1,
                        "limits": {"maxBodyBytes": MAX_BODY_BYTES},
                        // The sender during the upgrade posts back to back: well past a
                        // CI job's pace, and not what this test is about.
                        "rateLimit": {
                            "perRepository": {"requestsPerMinute": 60000, "burst": 1000},
                            "perEndpoint": {"requestsPerMinute": 60000, "burst": 1000},
                        },
                        "ingress": {"host": host, "tlsSecretName": tls},
                    },
                })),
            )
            .await
            .unwrap();
        apart.push(Tenant {
            name,
            host,
            ca,
            repo,
            secret: String::new(),
            queue: String::new(),
        });
    }
    for tenant in &mut apart {
        let ep = eventually(
            "the tenant endpoint Ready",
            Duration::from_secs(120),
            || {
                let endpoints = endpoints.clone();
                let name = tenant.name;
                async move {
                    let ep = endpoints.get(name).await.map_err(|e| e.to_string())?;
                    if is_ready(&ep) {
                        Ok(ep)
                    } else {
                        Err(format!("{name}: {:?}", ep.status))
                    }
                }
            },
        )
        .await;
        let status = ep.status.unwrap();
        let key_id = status.current_key_id.unwrap();
        let hmac = Api::<Secret>::namespaced(client.clone(), &tenants)
            .get(&format!("{}-hmac", tenant.name))
            .await
            .unwrap();
        tenant.secret = String::from_utf8(hmac.data.unwrap().remove(&key_id).unwrap().0).unwrap();
        tenant.queue = status.queue.unwrap();
    }
    record_timing(
        "helm_install: endpoints applied -> Ready",
        applied.elapsed(),
    );
    // The tenants' pods run the chart's ingest image, on this node: this operator made
    // them with the platform's pod settings.
    for tenant in &apart {
        let deployment = Api::<Deployment>::namespaced(client.clone(), &tenants)
            .get(&format!("{}-ingest", tenant.name))
            .await
            .unwrap();
        let spec = deployment.spec.template.spec.unwrap();
        assert_eq!(
            spec.containers[0].image.as_deref(),
            Some(format!("anchorpipe-ingest:{}", chart_app_version()).as_str())
        );
        assert_eq!(
            spec.node_selector.as_ref().and_then(|s| s.get(NODE_KEY)),
            Some(&node.name)
        );
    }

    // A CI report through the ingress: TLS with the tenant's certificate, routed by
    // host to the tenant's pod, stored, and in the tenant's queue.
    let (shop, docs) = (&apart[0], &apart[1]);
    let first = eventually(
        "a report through the ingress",
        Duration::from_secs(60),
        || {
            let body = report::body(&shop.repo, "through-ingress");
            async move {
                match ingress::post(&shop.host, &shop.ca, &shop.repo, &shop.secret, &body).await {
                    ingress::Answer::Status(200, text) => Ok(text),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
    record_timing(
        "helm_install: helm install -> endpoints Ready -> report through the ingress",
        install_started.elapsed(),
    );
    let answer: serde_json::Value = serde_json::from_str(&first).unwrap();
    let id = answer["runId"].as_str().unwrap().to_owned();
    let (found, _) = broker::take_until(&shop.queue, Duration::from_secs(30), |m| {
        m["ingestionId"] == id.as_str()
    })
    .await;
    assert!(found.is_some(), "report {id} not in {}", shop.queue);

    // The two tenants stay apart: one tenant's repository and key are refused on the
    // other's host; each tenant's own report lands in its own queue only.
    let body = report::body(&shop.repo, "wrong-host");
    let answer = ingress::post(&docs.host, &docs.ca, &shop.repo, &shop.secret, &body).await;
    assert!(
        matches!(&answer, ingress::Answer::Status(401 | 403, _)),
        "shop's report on docs' host: {answer:?}"
    );
    let body = report::body(&docs.repo, "docs-own");
    let answer = ingress::post(&docs.host, &docs.ca, &docs.repo, &docs.secret, &body).await;
    let ingress::Answer::Status(200, text) = answer else {
        panic!("docs' report: {answer:?}");
    };
    let docs_id = serde_json::from_str::<serde_json::Value>(&text).unwrap()["runId"]
        .as_str()
        .unwrap()
        .to_owned();
    let (found, _) = broker::take_until(&docs.queue, Duration::from_secs(30), |m| {
        m["ingestionId"] == docs_id.as_str()
    })
    .await;
    assert!(found.is_some(), "docs' report not in {}", docs.queue);
    assert_eq!(
        broker::depth(&shop.queue).await,
        Some(0),
        "docs' report reached shop's queue"
    );

    // Bodies up to the tenant's maxBodyBytes get through the ingress; one byte more is
    // the tenant's own 413.
    let big = report_of_size(&shop.repo, "largest", MAX_BODY_BYTES);
    assert_eq!(big.len(), MAX_BODY_BYTES);
    let answer = ingress::post(&shop.host, &shop.ca, &shop.repo, &shop.secret, &big).await;
    assert!(
        matches!(&answer, ingress::Answer::Status(200, _)),
        "a {MAX_BODY_BYTES}-byte report: {answer:?}"
    );
    let too_big = report_of_size(&shop.repo, "too-large", MAX_BODY_BYTES + 1);
    let answer = ingress::post(&shop.host, &shop.ca, &shop.repo, &shop.secret, &too_big).await;
    // The pod refuses it from its Content-Length, without reading the body, and closes
    // the connection: through the ingress the 413 may arrive cut short.
    assert!(
        matches!(
            &answer,
            ingress::Answer::Status(413, _) | ingress::Answer::Truncated(413, _)
        ),
        "a {}-byte report: {answer:?}",
        MAX_BODY_BYTES + 1
    );

    // `helm upgrade` to a new image tag while a CI job keeps sending through the
    // ingress: the operator and every tenant's pods roll; nothing answered 200 is lost.
    let new_tag = format!("{}-upgrade-{sfx}", chart_app_version());
    for image in ["anchorpipe-operator", "anchorpipe-ingest"] {
        anchorpipe_e2e::image::tag(image, &chart_app_version(), &new_tag);
    }
    let sender = Sender::start(shop);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let upgrade_started = Instant::now();
    helm_must(
        &node,
        &system,
        &[
            "upgrade",
            &release,
            &chart_path,
            "--namespace",
            &system,
            "--reuse-values",
            "--set",
            &format!("operator.image.tag={new_tag}"),
            "--set",
            &format!("ingest.image.tag={new_tag}"),
            "--wait",
            "--timeout",
            "120s",
        ],
    )
    .await;
    for tenant in &apart {
        rolled_out(
            &client,
            &tenants,
            &format!("{}-ingest", tenant.name),
            &new_tag,
        )
        .await;
    }
    record_timing(
        "helm_install: helm upgrade -> every pod rolled",
        upgrade_started.elapsed(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = sender.stop().await;
    let accepted: Vec<String> = sent
        .iter()
        .filter_map(|(_, answer)| match answer {
            ingress::Answer::Status(200, text) => serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| v["runId"].as_str().map(str::to_owned)),
            _ => None,
        })
        .collect();
    let retryable = sent
        .iter()
        .filter(|(_, a)| {
            matches!(
                a,
                ingress::Answer::Status(503, _) | ingress::Answer::NoAnswer(_)
            )
        })
        .count();
    let other: Vec<&(String, ingress::Answer)> = sent
        .iter()
        .filter(|(_, a)| {
            !matches!(
                a,
                ingress::Answer::Status(200 | 503, _) | ingress::Answer::NoAnswer(_)
            )
        })
        .collect();
    let waiting = std::sync::Mutex::new(
        accepted
            .iter()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
    );
    broker::take_until(&shop.queue, Duration::from_secs(60), |m| {
        let mut waiting = waiting.lock().unwrap();
        if let Some(id) = m["ingestionId"].as_str() {
            waiting.remove(id);
        }
        waiting.is_empty()
    })
    .await;
    let lost = waiting.lock().unwrap().len();
    eprintln!(
        "helm upgrade under load: sent {}, 200 {}, delivered {}, lost {lost}, retryable (503 or no answer) {retryable}, other {}",
        sent.len(),
        accepted.len(),
        accepted.len() - lost,
        other.len()
    );
    assert!(
        accepted.len() > 10,
        "too few reports accepted during the upgrade: {sent:?}"
    );
    assert_eq!(lost, 0, "reports answered 200 but not in {}", shop.queue);
    assert!(
        other.is_empty(),
        "{} answers a CI job cannot retry, the first: {:?}",
        other.len(),
        other.iter().take(3).collect::<Vec<_>>()
    );

    // `helm test` on the upgraded release: the chart's smoke test makes an endpoint of
    // its own, sends it a signed report, and removes it again.
    let tested = Instant::now();
    let out = helm_must(
        &node,
        &system,
        &[
            "test",
            &release,
            "--namespace",
            &system,
            "--timeout",
            "300s",
        ],
    )
    .await;
    // (`helm test --logs` reads logs through the kubelet's API, which this node does not
    // serve; its pods' output is in files.)
    let smoke_log = std::fs::read_dir(log_dir())
        .unwrap()
        .flatten()
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("pod-{system}-{operator}-smoke-test"))
        })
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .unwrap_or_default();
    assert!(
        smoke_log.contains("smoke test passed"),
        "helm test: {out}\nsmoke test output: {smoke_log}"
    );
    record_timing("helm_install: helm test", tested.elapsed());

    // Deleting the endpoints: the operator removes the tenants' queues and logins and
    // lets them go.
    for tenant in &apart {
        endpoints
            .delete(tenant.name, &DeleteParams::default())
            .await
            .unwrap();
    }
    for tenant in &apart {
        eventually("the endpoint deleted", Duration::from_secs(60), || {
            let endpoints = endpoints.clone();
            let name = tenant.name;
            async move {
                match endpoints.get_opt(name).await {
                    Ok(None) => Ok(()),
                    other => Err(format!("{:?}", other.map(|e| e.map(|e| e.status)))),
                }
            }
        })
        .await;
    }

    suite_operator.release().await;

    // Uninstall: the pre-delete hook stops the operator and releases the Lease; then
    // the release's objects go.
    let uninstall_started = Instant::now();
    helm_must(
        &node,
        &system,
        &[
            "uninstall",
            &release,
            "--namespace",
            &system,
            "--wait",
            "--timeout",
            "120s",
        ],
    )
    .await;
    record_timing(
        "helm_install: uninstall --wait",
        uninstall_started.elapsed(),
    );
    assert!(leases.get_opt(&operator).await.unwrap().is_none());
    assert!(
        Api::<Deployment>::namespaced(client.clone(), &system)
            .get_opt(&operator)
            .await
            .unwrap()
            .is_none()
    );
    let hook_log = std::fs::read_dir(log_dir()).unwrap().flatten().any(|e| {
        e.file_name()
            .to_string_lossy()
            .starts_with(&format!("pod-{system}-{operator}-uninstall-"))
    });
    assert!(
        hook_log,
        "the uninstall hook's pod never ran on the test node"
    );
    eventually("the operator pods gone", Duration::from_secs(30), || {
        let pods = pods.clone();
        let operator_selector = operator_selector.clone();
        async move {
            let left = pods
                .list(&ListParams::default().labels(&operator_selector))
                .await
                .map_err(|e| e.to_string())?
                .items;
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{:?}",
                    left.iter().map(|p| p.name_any()).collect::<Vec<_>>()
                ))
            }
        }
    })
    .await;
    // What the chart README says `helm uninstall` leaves, and nothing else: in the
    // release's namespaces only the platform Secret made with `platformSecret.create` (a
    // hook resource), nothing of the passed `helm test`; no cluster-scoped object; the
    // CRD (checked by the next test's use of it).
    for (namespace, documented) in [(&system, "secret/anchorpipe-platform"), (&tenants, "")] {
        assert_eq!(
            release_objects(
                &release,
                "serviceaccounts,roles,rolebindings,configmaps,secrets,pods,jobs,deployments,services,leases",
                Some(namespace),
            )
            .await,
            documented,
            "left in {namespace} by the release"
        );
    }
    assert_eq!(
        release_objects(&release, "clusterroles,clusterrolebindings", None).await,
        "",
        "cluster-scoped objects left by the release"
    );
    assert!(node.errors().is_empty(), "{:?}", node.errors());

    leftovers.armed = false;
    node.shutdown().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in [&tenants, &system] {
        let _ = namespaces.delete(ns, &DeleteParams::default()).await;
    }
    admin_sql(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)")).await;
    record_timing("helm_install", test_started.elapsed());
}
