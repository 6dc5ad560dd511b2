//! The operator at scale (issue 13, item 5): many `IngestionEndpoint`s applied at once to
//! the test control plane, against the API server alone creating the same objects.
//!
//! 1. **With the operator**: a release operator serving only this run's namespaces
//!    (its own Lease, its own platform database) converges `endpoints` endpoints
//!    (classic queues, one replica) applied at once. Measured: time until every one is
//!    Ready, the operator's peak RSS (`VmHWM`), its API requests per second (its own
//!    `anchorpipe_operator_api_requests_total`), then its requests during an idle
//!    period (writes other than its Lease renewals should be none). Then every endpoint
//!    is deleted and the operator's finalizer removes the tenants' queues, database
//!    logins and broker users; what is left of them is counted.
//! 2. **The API server alone**: the objects the operator made, snapshotted before the
//!    deletion, are replayed into fresh namespaces with the same concurrency (one task
//!    per endpoint, each in the operator's order): the endpoint, its finalizer, its two
//!    Secrets, ConfigMap, Deployment, Service, its Events and its status.
//!
//! The run refuses to start while the end-to-end suite's operator holds its Lease: that
//! operator serves every namespace and would reconcile this run's endpoints too.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anchorpipe_crds::v1alpha1::IngestionEndpoint;
use anyhow::Context as _;
use futures_util::{StreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};
use sqlx::Connection as _;
use tokio::sync::Mutex;

use crate::procstat;

/// Field manager of what this benchmark applies (as a user would).
const MANAGER: &str = "anchorpipe-bench";
/// Labels every namespace and endpoint of a run.
const RUN_LABEL: &str = "anchorpipe.dev/bench-run";
/// The operator's own label on what it creates.
const MANAGED_BY: &str = "app.kubernetes.io/managed-by=anchorpipe-operator";
/// The end-to-end suite's Lease (`tests/e2e/src/cluster.rs`).
const SUITE_LEASE: (&str, &str) = ("default", "anchorpipe-e2e");
/// The identity of the suite's operator in that Lease: the one that serves every namespace.
const SUITE_IDENTITY: &str = "anchorpipe-e2e";
/// The platform database of the run, created afresh.
const DATABASE: &str = "anchorpipe_bench_operator";

/// Targets of issue 13.
const READY_RATIO_TARGET: f64 = 2.0;
const PEAK_RSS_TARGET_MIB: f64 = 150.0;

#[derive(Debug, Clone)]
pub struct Settings {
    pub operator_bin: PathBuf,
    pub ingest_bin: PathBuf,
    pub database_url: String,
    pub amqp_url: String,
    pub management_url: String,
    pub endpoints: usize,
    pub namespaces: usize,
    /// Requests in flight at once in the baseline (and when applying the endpoints);
    /// 0 means one per endpoint, as the operator's controller (unbounded concurrency).
    pub concurrency: usize,
    pub idle: Duration,
    pub ready_timeout: Duration,
    pub cleanup_timeout: Duration,
    pub work_dir: PathBuf,
}

/// Counter values of the operator's `/metrics`, by (verb, resource).
#[derive(Debug, Clone, Default)]
struct ApiCounts(BTreeMap<(String, String), u64>);

impl ApiCounts {
    fn parse(text: &str) -> Self {
        let mut counts = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("anchorpipe_operator_api_requests_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.split_once("} ") else {
                continue;
            };
            let label = |name: &str| {
                labels.split(',').find_map(|kv| {
                    kv.strip_prefix(name)
                        .and_then(|v| v.strip_prefix("=\""))
                        .map(|v| v.trim_end_matches('"').to_owned())
                })
            };
            if let (Some(verb), Some(resource), Ok(value)) = (
                label("verb"),
                label("resource"),
                value.trim().parse::<u64>(),
            ) {
                counts.insert((verb, resource), value);
            }
        }
        Self(counts)
    }

    fn since(&self, earlier: &Self) -> Self {
        Self(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v.saturating_sub(*earlier.0.get(k).unwrap_or(&0))))
                .filter(|(_, v)| *v > 0)
                .collect(),
        )
    }

    fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Requests that change something, except the leader Lease's renewals.
    fn writes(&self) -> u64 {
        self.0
            .iter()
            .filter(|((verb, resource), _)| verb != "Get" && resource != "Lease")
            .map(|(_, v)| v)
            .sum()
    }

    fn lease_writes(&self) -> u64 {
        self.0
            .iter()
            .filter(|((verb, resource), _)| verb != "Get" && resource == "Lease")
            .map(|(_, v)| v)
            .sum()
    }

    fn describe(&self) -> String {
        if self.0.is_empty() {
            return "none".to_owned();
        }
        self.0
            .iter()
            .map(|((verb, resource), v)| format!("{verb} {resource} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The figures of one run.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub endpoints: usize,
    pub namespaces: usize,
    pub ready: usize,
    pub ready_secs: Option<f64>,
    pub available_secs: Option<f64>,
    pub baseline_secs: f64,
    pub baseline_available_secs: Option<f64>,
    pub baseline_requests: u64,
    pub peak_rss_mib: f64,
    pub rss_after_idle_mib: f64,
    pub converge_requests: u64,
    pub converge_breakdown: String,
    pub converge_rps: f64,
    pub peak_rps: f64,
    pub idle_secs: f64,
    pub idle_writes: u64,
    pub idle_lease_writes: u64,
    pub idle_breakdown: String,
    pub reconciles: String,
    pub delete_secs: Option<f64>,
    pub left_roles: i64,
    pub left_users: usize,
    pub left_queues: usize,
    pub load_before: String,
    pub load_after: String,
}

impl Figures {
    pub fn ratio(&self) -> Option<f64> {
        self.ready_secs.map(|r| r / self.baseline_secs.max(1e-9))
    }

    /// One line per target: met or missed, with the numbers.
    pub fn verdicts(&self) -> Vec<String> {
        let verdict = |met: bool| if met { "met" } else { "MISSED" };
        let ready = match (self.ready_secs, self.ratio()) {
            (Some(secs), Some(ratio)) => format!(
                "{}: {} endpoints Ready in {secs:.1} s = {ratio:.2} × the API server alone ({:.1} s); target ≤ {READY_RATIO_TARGET} ×",
                verdict(ratio <= READY_RATIO_TARGET),
                self.endpoints,
                self.baseline_secs
            ),
            _ => format!(
                "MISSED: only {} of {} endpoints Ready before the timeout (API server alone: {:.1} s)",
                self.ready, self.endpoints, self.baseline_secs
            ),
        };
        vec![
            format!("time to Ready — {ready}"),
            format!(
                "peak RSS — {}: {:.1} MiB; target ≤ {PEAK_RSS_TARGET_MIB} MiB",
                verdict(self.peak_rss_mib <= PEAK_RSS_TARGET_MIB),
                self.peak_rss_mib
            ),
            format!(
                "idle writes — {}: {} in {:.0} s (besides {} leader-Lease renewals); target none",
                verdict(self.idle_writes == 0),
                self.idle_writes,
                self.idle_secs,
                self.idle_lease_writes
            ),
            format!(
                "cleanup — {}: {} database logins, {} broker users, {} queues left after deleting every endpoint",
                verdict(self.left_roles == 0 && self.left_users == 0 && self.left_queues == 0),
                self.left_roles,
                self.left_users,
                self.left_queues
            ),
        ]
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `base` with its database name replaced by `db`.
fn with_database(base: &str, db: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(base).context("DATABASE_URL is not a URL")?;
    url.set_path(&format!("/{db}"));
    Ok(url.into())
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Retries a request the API server turned away for load (429, 5xx) or a dropped
/// connection, a few times: the baseline is about the API server's work, not about
/// how a client copes with an overloaded one.
async fn retrying<T, F, Fut>(what: &str, mut op: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = kube::Result<T>>,
{
    let mut attempt = 0u32;
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(kube::Error::Api(s)) if (s.code == 429 || s.code >= 500) && attempt < 20 => {}
            Err(kube::Error::HyperError(_) | kube::Error::Service(_)) if attempt < 20 => {}
            Err(e) => return Err(anyhow::anyhow!("{what}: {e}")),
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(10)))).await;
    }
}

/// A small client for the operator's `/metrics` and RabbitMQ's management API.
struct Http {
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Empty<bytes::Bytes>,
    >,
}

impl Http {
    fn new() -> Self {
        Self {
            client: hyper_util::client::legacy::Client::builder(
                hyper_util::rt::TokioExecutor::new(),
            )
            .build_http(),
        }
    }

    async fn get(&self, url: &str, authorization: Option<&str>) -> anyhow::Result<String> {
        use http_body_util::BodyExt as _;
        let mut request = http::Request::get(url);
        if let Some(auth) = authorization {
            request = request.header(http::header::AUTHORIZATION, auth);
        }
        let response = tokio::time::timeout(
            Duration::from_secs(10),
            self.client
                .request(request.body(http_body_util::Empty::new())?),
        )
        .await
        .context("no answer within 10 s")??;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::ensure!(status.is_success(), "GET answered {status}");
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

/// The management API's base URL (without credentials) and its `Authorization` header.
fn management(url: &str) -> anyhow::Result<(String, String)> {
    use base64::Engine as _;
    let mut parsed = url::Url::parse(url).context("RABBITMQ_MANAGEMENT_URL is not a URL")?;
    let user = percent_encoding::percent_decode_str(parsed.username())
        .decode_utf8_lossy()
        .into_owned();
    let password = percent_encoding::percent_decode_str(parsed.password().unwrap_or_default())
        .decode_utf8_lossy()
        .into_owned();
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    );
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    Ok((parsed.as_str().trim_end_matches('/').to_owned(), auth))
}

/// The operator process and what the sampler saw of it.
struct Operator {
    child: tokio::process::Child,
    pid: u32,
    metrics_url: String,
    http: Http,
}

impl Operator {
    async fn counts(&self) -> anyhow::Result<ApiCounts> {
        Ok(ApiCounts::parse(
            &self.http.get(&self.metrics_url, None).await?,
        ))
    }

    async fn metrics_text(&self) -> String {
        self.http
            .get(&self.metrics_url, None)
            .await
            .unwrap_or_default()
    }

    async fn stop(mut self) {
        // SIGTERM: the operator releases its Lease on the way out.
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

fn endpoint_object(name: &str, run: &str) -> Value {
    json!({
        "apiVersion": "anchorpipe.dev/v1alpha1",
        "kind": "IngestionEndpoint",
        "metadata": {"name": name, "labels": {RUN_LABEL: run}},
        "spec": {
            "repositories": [uuid::Uuid::new_v4().to_string()],
            "queue": {"type": "classic", "deletionPolicy": "Delete"},
            "replicas": 1,
        },
    })
}

fn is_ready(ep: &IngestionEndpoint) -> bool {
    let Some(status) = &ep.status else {
        return false;
    };
    status.observed_generation == ep.metadata.generation
        && status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn is_available(d: &Deployment) -> bool {
    let want = d.spec.replicas.unwrap_or(1);
    d.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
        >= want
}

/// What the operator made for one endpoint, to replay without it.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    endpoint: Value,
    status: Value,
    /// Secrets, ConfigMap, Deployment, Service, in the operator's order.
    objects: Vec<Value>,
    events: Vec<Value>,
}

pub async fn run(settings: Settings) -> anyhow::Result<Figures> {
    anyhow::ensure!(settings.endpoints > 0, "--endpoints must be positive");
    anyhow::ensure!(
        (1..=settings.endpoints).contains(&settings.namespaces),
        "--namespaces must be between 1 and --endpoints"
    );
    std::fs::create_dir_all(&settings.work_dir)?;
    let client = Client::try_default()
        .await
        .context("a Kubernetes client from KUBECONFIG")?;
    refuse_beside_the_e2e_suite(&client).await?;
    let run_id = &uuid::Uuid::new_v4().simple().to_string()[..6];
    let mut figures = Figures {
        endpoints: settings.endpoints,
        namespaces: settings.namespaces,
        load_before: load_average(),
        ..Figures::default()
    };
    println!(
        "operator at scale: run {run_id}, {} endpoints in {} namespaces; load average {}",
        settings.endpoints, settings.namespaces, figures.load_before
    );

    let platform = platform_database(&settings).await?;
    let namespaces: Vec<String> = (0..settings.namespaces)
        .map(|i| format!("opb-{run_id}-{i:02}"))
        .collect();
    for ns in &namespaces {
        create_namespace(&client, ns, run_id).await?;
    }
    let lease_name = format!("anchorpipe-bench-{run_id}");
    let operator = start_operator(&settings, &platform, &namespaces, &lease_name).await?;
    let outcome = with_operator(
        &settings,
        &client,
        &operator,
        &namespaces,
        run_id,
        &mut figures,
    )
    .await;
    operator.stop().await;
    let _ = Api::<Lease>::namespaced(client.clone(), "default")
        .delete(&lease_name, &DeleteParams::default())
        .await;
    let snapshots = match outcome {
        Ok(snapshots) => snapshots,
        Err(e) => {
            delete_namespaces(&client, &namespaces).await;
            return Err(e);
        }
    };
    delete_namespaces(&client, &namespaces).await;

    // The API server alone, with the operator gone.
    let baseline: Vec<String> = (0..settings.namespaces)
        .map(|i| format!("opb-{run_id}-b{i:02}"))
        .collect();
    for ns in &baseline {
        create_namespace(&client, ns, run_id).await?;
    }
    let replayed = replay(
        &settings,
        &client,
        &snapshots,
        &namespaces,
        &baseline,
        &mut figures,
    )
    .await;
    release_and_delete(&client, &baseline, run_id).await;
    replayed?;
    drop_database(&settings).await;
    figures.load_after = load_average();
    Ok(figures)
}

async fn refuse_beside_the_e2e_suite(client: &Client) -> anyhow::Result<()> {
    let (ns, name) = SUITE_LEASE;
    let Some(lease) = Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
    else {
        return Ok(());
    };
    let spec = lease.spec.unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    let fresh = spec.renew_time.is_some_and(|t| {
        let age = k8s_openapi::jiff::Timestamp::now().duration_since(t.0);
        age.as_secs() < i64::from(spec.lease_duration_seconds.unwrap_or(15)) + 5
    });
    if fresh && holder == SUITE_IDENTITY {
        anyhow::bail!(
            "the end-to-end suite's operator holds Lease {ns}/{name}: it serves every namespace and would reconcile this run's endpoints too; run the benchmark when the suite is done"
        );
    }
    if fresh && !holder.is_empty() {
        // A test holds it to keep the suite's operator standing by (the Helm tests run
        // their own, namespaced operators): fine unless the suite's operator takes over
        // while this run lasts.
        println!(
            "  note: Lease {ns}/{name} is held by {holder}; an end-to-end run is in progress and its operator may take over after it"
        );
    }
    Ok(())
}

async fn platform_database(settings: &Settings) -> anyhow::Result<String> {
    let mut conn = sqlx::PgConnection::connect(&settings.database_url)
        .await
        .context("connecting to DATABASE_URL")?;
    for statement in [
        format!("DROP DATABASE IF EXISTS \"{DATABASE}\" WITH (FORCE)"),
        format!("CREATE DATABASE \"{DATABASE}\""),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
            .execute(&mut conn)
            .await
            .with_context(|| statement.clone())?;
    }
    let _ = conn.close().await;
    let url = with_database(&settings.database_url, DATABASE)?;
    let status = tokio::process::Command::new(&settings.ingest_bin)
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .await
        .with_context(|| format!("running {} migrate", settings.ingest_bin.display()))?;
    anyhow::ensure!(status.success(), "migrating {DATABASE} failed");
    Ok(url)
}

async fn drop_database(settings: &Settings) {
    if let Ok(mut conn) = sqlx::PgConnection::connect(&settings.database_url).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{DATABASE}\" WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await;
        let _ = conn.close().await;
    }
}

async fn create_namespace(client: &Client, name: &str, run: &str) -> anyhow::Result<()> {
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {RUN_LABEL: run}},
    }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(())
}

async fn delete_namespaces(client: &Client, names: &[String]) {
    let api = Api::<Namespace>::all(client.clone());
    for name in names {
        let _ = api.delete(name, &DeleteParams::default()).await;
    }
}

async fn start_operator(
    settings: &Settings,
    platform: &str,
    namespaces: &[String],
    lease: &str,
) -> anyhow::Result<Operator> {
    let port = free_port()?;
    let log = std::fs::File::create(settings.work_dir.join("operator.log"))?;
    let mut command = tokio::process::Command::new(&settings.operator_bin);
    command
        .args([
            "run",
            "--ingest-image",
            "registry.invalid/anchorpipe-ingest:bench",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--lease-name",
            lease,
            "--lease-namespace",
            "default",
            "--identity",
            lease,
        ])
        .args(
            namespaces
                .iter()
                .flat_map(|ns| ["--watch-namespace", ns.as_str()]),
        )
        .env("DATABASE_URL", platform)
        .env("AMQP_URL", &settings.amqp_url)
        .env("RABBITMQ_MANAGEMENT_URL", &settings.management_url)
        .env("RUST_LOG", "info,kube=warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    let child = command
        .spawn()
        .with_context(|| format!("starting {}", settings.operator_bin.display()))?;
    let pid = child.id().context("the operator exited at once")?;
    let operator = Operator {
        child,
        pid,
        metrics_url: format!("http://127.0.0.1:{port}/metrics"),
        http: Http::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if operator
            .metrics_text()
            .await
            .contains("anchorpipe_operator_leader 1")
        {
            return Ok(operator);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the operator did not become leader within 60 s (log: {})",
            settings.work_dir.join("operator.log").display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Peak requests per second and RSS, sampled once a second while `work` runs.
struct Sampler {
    stop: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<f64>,
}

impl Sampler {
    fn start(operator: &Operator) -> Self {
        let stop = Arc::new(tokio::sync::Notify::new());
        let url = operator.metrics_url.clone();
        let notified = stop.clone();
        let task = tokio::spawn(async move {
            let http = Http::new();
            let mut previous: Option<(Instant, u64)> = None;
            let mut peak = 0.0f64;
            loop {
                if let Ok(text) = http.get(&url, None).await {
                    let now = Instant::now();
                    let total = ApiCounts::parse(&text).total();
                    if let Some((then, before)) = previous {
                        let secs = now.duration_since(then).as_secs_f64();
                        if secs > 0.0 {
                            peak = peak.max(total.saturating_sub(before) as f64 / secs);
                        }
                    }
                    previous = Some((now, total));
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = notified.notified() => return peak,
                }
            }
        });
        Self { stop, task }
    }

    async fn finish(self) -> f64 {
        self.stop.notify_one();
        self.task.await.unwrap_or(0.0)
    }
}

async fn with_operator(
    settings: &Settings,
    client: &Client,
    operator: &Operator,
    namespaces: &[String],
    run_id: &str,
    figures: &mut Figures,
) -> anyhow::Result<Vec<Snapshot>> {
    let concurrency = match settings.concurrency {
        0 => settings.endpoints,
        n => n,
    };
    let names: Vec<(String, String)> = (0..settings.endpoints)
        .map(|i| {
            (
                namespaces[i % namespaces.len()].clone(),
                format!("ep-{i:04}"),
            )
        })
        .collect();
    let selector = format!("{RUN_LABEL}={run_id}");
    let before = operator.counts().await?;
    let sampler = Sampler::start(operator);
    let started = Instant::now();
    stream::iter(names.iter().cloned())
        .map(|(ns, name)| {
            let api: Api<IngestionEndpoint> = Api::namespaced(client.clone(), &ns);
            let patch = Patch::Apply(endpoint_object(&name, run_id));
            let params = PatchParams::apply(MANAGER).force();
            async move {
                retrying(&format!("applying {ns}/{name}"), || {
                    api.patch(&name, &params, &patch)
                })
                .await
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    println!(
        "  applied {} endpoints in {:.1} s",
        settings.endpoints,
        started.elapsed().as_secs_f64()
    );

    let endpoints = Api::<IngestionEndpoint>::all(client.clone());
    let deployments = Api::<Deployment>::all(client.clone());
    let ours = |ns: Option<String>| ns.is_some_and(|ns| namespaces.contains(&ns));
    let mut last_report = Instant::now();
    loop {
        let list = endpoints
            .list(&ListParams::default().labels(&selector))
            .await?;
        figures.ready = list.items.iter().filter(|ep| is_ready(ep)).count();
        if figures.available_secs.is_none() {
            let available = deployments
                .list(&ListParams::default().labels(MANAGED_BY))
                .await?
                .items
                .into_iter()
                .filter(|d| ours(d.namespace()) && is_available(d))
                .count();
            if available >= settings.endpoints {
                figures.available_secs = Some(started.elapsed().as_secs_f64());
            }
        }
        if figures.ready >= settings.endpoints {
            figures.ready_secs = Some(started.elapsed().as_secs_f64());
            break;
        }
        if started.elapsed() > settings.ready_timeout {
            println!(
                "  timeout: {} of {} Ready after {:.0} s",
                figures.ready,
                settings.endpoints,
                settings.ready_timeout.as_secs_f64()
            );
            break;
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            println!(
                "  {:>5.0} s: {} Ready, RSS {:.1} MiB",
                started.elapsed().as_secs_f64(),
                figures.ready,
                procstat::rss_mib(operator.pid).unwrap_or(0.0)
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let converged = operator.counts().await?.since(&before);
    let converge_secs = started.elapsed().as_secs_f64();
    figures.peak_rps = sampler.finish().await;
    figures.converge_requests = converged.total();
    figures.converge_rps = converged.total() as f64 / converge_secs;
    figures.converge_breakdown = converged.describe();
    println!(
        "  Ready: {}/{} in {:.1} s (Deployments available at {}); {} API requests, {:.0}/s (peak {:.0}/s)",
        figures.ready,
        settings.endpoints,
        converge_secs,
        figures
            .available_secs
            .map_or("-".to_owned(), |s| format!("{s:.1} s")),
        figures.converge_requests,
        figures.converge_rps,
        figures.peak_rps
    );

    // Idle: nothing changes; what does the operator still send?
    let idle_start = operator.counts().await?;
    let idle_started = Instant::now();
    tokio::time::sleep(settings.idle).await;
    let idle = operator.counts().await?.since(&idle_start);
    figures.idle_secs = idle_started.elapsed().as_secs_f64();
    figures.idle_writes = idle.writes();
    figures.idle_lease_writes = idle.lease_writes();
    figures.idle_breakdown = idle.describe();
    figures.peak_rss_mib = procstat::peak_rss_mib(operator.pid).unwrap_or(0.0);
    figures.rss_after_idle_mib = procstat::rss_mib(operator.pid).unwrap_or(0.0);
    figures.reconciles = operator
        .metrics_text()
        .await
        .lines()
        .filter(|l| l.starts_with("anchorpipe_operator_reconciliations_total"))
        .map(|l| {
            l.trim_start_matches("anchorpipe_operator_reconciliations_total")
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "  idle {:.0} s: {} requests ({}); peak RSS {:.1} MiB, now {:.1} MiB; reconciles {}",
        figures.idle_secs,
        idle.total(),
        figures.idle_breakdown,
        figures.peak_rss_mib,
        figures.rss_after_idle_mib,
        figures.reconciles
    );

    let snapshots = snapshot(client, namespaces, &selector).await?;

    // Delete every endpoint; the operator's finalizer cleans up after each.
    let deleting = Instant::now();
    for ns in namespaces {
        Api::<IngestionEndpoint>::namespaced(client.clone(), ns)
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
    }
    loop {
        let left = endpoints
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
            .len();
        if left == 0 {
            figures.delete_secs = Some(deleting.elapsed().as_secs_f64());
            break;
        }
        if deleting.elapsed() > settings.cleanup_timeout {
            println!("  {left} endpoints still there after the cleanup timeout");
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    leftovers(settings, run_id, figures).await?;
    println!(
        "  deleted in {}; left: {} database logins, {} broker users, {} queues",
        figures
            .delete_secs
            .map_or("-".to_owned(), |s| format!("{s:.1} s")),
        figures.left_roles,
        figures.left_users,
        figures.left_queues
    );
    Ok(snapshots)
}

/// Strips what the API server assigns, so the object can be created anew.
fn fresh(mut object: Value) -> Value {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
            "generation",
            "selfLink",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            meta.remove(key);
        }
    }
    if let Some(obj) = object.as_object_mut() {
        obj.remove("status");
    }
    if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
        // A Service's addresses are the API server's to allocate.
        for key in ["clusterIP", "clusterIPs"] {
            spec.remove(key);
        }
    }
    object
}

async fn snapshot(
    client: &Client,
    namespaces: &[String],
    selector: &str,
) -> anyhow::Result<Vec<Snapshot>> {
    let mut snapshots = Vec::new();
    for ns in namespaces {
        let owned = ListParams::default().labels(MANAGED_BY);
        let mut by_endpoint: HashMap<String, Snapshot> = HashMap::new();
        for ep in Api::<IngestionEndpoint>::namespaced(client.clone(), ns)
            .list(&ListParams::default().labels(selector))
            .await?
            .items
        {
            let name = ep.name_any();
            let mut value = serde_json::to_value(&ep)?;
            let status = value.get("status").cloned().unwrap_or(Value::Null);
            value = fresh(value);
            if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("finalizers");
            }
            by_endpoint.insert(
                name,
                Snapshot {
                    endpoint: value,
                    status,
                    ..Snapshot::default()
                },
            );
        }
        let mut owned_objects: Vec<Value> = Vec::new();
        for secret in Api::<Secret>::namespaced(client.clone(), ns)
            .list(&owned)
            .await?
            .items
        {
            owned_objects.push(with_kind(serde_json::to_value(&secret)?, &secret));
        }
        for cm in Api::<ConfigMap>::namespaced(client.clone(), ns)
            .list(&owned)
            .await?
            .items
        {
            owned_objects.push(with_kind(serde_json::to_value(&cm)?, &cm));
        }
        for d in Api::<Deployment>::namespaced(client.clone(), ns)
            .list(&owned)
            .await?
            .items
        {
            owned_objects.push(with_kind(serde_json::to_value(&d)?, &d));
        }
        for s in Api::<Service>::namespaced(client.clone(), ns)
            .list(&owned)
            .await?
            .items
        {
            owned_objects.push(with_kind(serde_json::to_value(&s)?, &s));
        }
        for object in owned_objects {
            let owner = object["metadata"]["ownerReferences"][0]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if let Some(snap) = by_endpoint.get_mut(&owner) {
                snap.objects.push(fresh(object));
            }
        }
        for event in Api::<Event>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await?
            .items
        {
            let regarding = event
                .regarding
                .as_ref()
                .and_then(|r| r.name.clone())
                .unwrap_or_default();
            if let Some(snap) = by_endpoint.get_mut(&regarding) {
                snap.events.push(fresh(serde_json::to_value(&event)?));
            }
        }
        snapshots.extend(by_endpoint.into_values());
    }
    Ok(snapshots)
}

fn with_kind<K: Resource<DynamicType = ()>>(mut value: Value, _: &K) -> Value {
    if let Some(obj) = value.as_object_mut() {
        obj.insert("apiVersion".to_owned(), json!(K::api_version(&())));
        obj.insert("kind".to_owned(), json!(K::kind(&())));
    }
    value
}

async fn leftovers(settings: &Settings, run_id: &str, figures: &mut Figures) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(&settings.database_url).await?;
    figures.left_roles =
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pg_roles WHERE rolname LIKE $1")
            .bind(format!("ap_opb_{run_id}_%"))
            .fetch_one(&mut conn)
            .await?;
    let _ = conn.close().await;
    let (base, auth) = management(&settings.management_url)?;
    let http = Http::new();
    let users: Vec<Value> =
        serde_json::from_str(&http.get(&format!("{base}/api/users"), Some(&auth)).await?)?;
    let prefix = format!("anchorpipe-opb-{run_id}-");
    figures.left_users = users
        .iter()
        .filter(|u| u["name"].as_str().is_some_and(|n| n.starts_with(&prefix)))
        .count();
    let queues: Vec<Value> = serde_json::from_str(
        &http
            .get(&format!("{base}/api/queues?columns=name"), Some(&auth))
            .await?,
    )?;
    let prefix = format!("anchorpipe.opb-{run_id}-");
    figures.left_queues = queues
        .iter()
        .filter(|q| q["name"].as_str().is_some_and(|n| n.starts_with(&prefix)))
        .count();
    Ok(())
}

/// The API server alone: the same objects, created and patched with the same
/// concurrency, with no operator running.
async fn replay(
    settings: &Settings,
    client: &Client,
    snapshots: &[Snapshot],
    from: &[String],
    to: &[String],
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let concurrency = match settings.concurrency {
        0 => snapshots.len().max(1),
        n => n,
    };
    let target: HashMap<&str, &str> = from
        .iter()
        .map(String::as_str)
        .zip(to.iter().map(String::as_str))
        .collect();
    let requests = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    stream::iter(snapshots.iter())
        .map(|snap| {
            let requests = requests.clone();
            let failures = failures.clone();
            let target = &target;
            async move {
                if let Err(e) = replay_one(client, snap, target, &requests).await {
                    failures.lock().await.push(e.to_string());
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
    figures.baseline_secs = started.elapsed().as_secs_f64();
    figures.baseline_requests = requests.load(Ordering::Relaxed);
    let failures = failures.lock().await;
    anyhow::ensure!(
        failures.is_empty(),
        "{} endpoints failed to replay, e.g. {}",
        failures.len(),
        failures.first().cloned().unwrap_or_default()
    );
    println!(
        "  API server alone: {} endpoints' objects ({} requests) in {:.1} s",
        snapshots.len(),
        figures.baseline_requests,
        figures.baseline_secs
    );
    // For comparison: when the workload the replayed Deployments ask for is available
    // (kube-controller-manager, kube-scheduler and kwok's own pace).
    let deployments = Api::<Deployment>::all(client.clone());
    loop {
        let available = deployments
            .list(&ListParams::default().labels(MANAGED_BY))
            .await?
            .items
            .into_iter()
            .filter(|d| d.namespace().is_some_and(|ns| to.contains(&ns)) && is_available(d))
            .count();
        if available >= snapshots.len() {
            figures.baseline_available_secs = Some(started.elapsed().as_secs_f64());
            break;
        }
        if started.elapsed() > settings.ready_timeout {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "  API server alone: Deployments available at {}",
        figures
            .baseline_available_secs
            .map_or("-".to_owned(), |s| format!("{s:.1} s"))
    );
    Ok(())
}

async fn replay_one(
    client: &Client,
    snap: &Snapshot,
    target: &HashMap<&str, &str>,
    requests: &AtomicU64,
) -> anyhow::Result<()> {
    let ns = snap.endpoint["metadata"]["namespace"]
        .as_str()
        .and_then(|ns| target.get(ns))
        .context("endpoint without a namespace")?
        .to_string();
    let name = snap.endpoint["metadata"]["name"]
        .as_str()
        .context("endpoint without a name")?
        .to_owned();
    let count = || requests.fetch_add(1, Ordering::Relaxed);
    let endpoints: Api<IngestionEndpoint> = Api::namespaced(client.clone(), &ns);
    let mut endpoint = snap.endpoint.clone();
    endpoint["metadata"]["namespace"] = json!(ns);
    let apply = PatchParams::apply(MANAGER).force();
    let merge = PatchParams::default();
    let create = PostParams::default();
    let patch = Patch::Apply(&endpoint);
    count();
    let created = retrying("creating the endpoint", || {
        endpoints.patch(&name, &apply, &patch)
    })
    .await?;
    let uid = created.uid().unwrap_or_default();
    let finalizer =
        Patch::Merge(json!({"metadata": {"finalizers": [anchorpipe_crds::v1alpha1::FINALIZER]}}));
    count();
    retrying("adding the finalizer", || {
        endpoints.patch_metadata(&name, &merge, &finalizer)
    })
    .await?;
    for object in &snap.objects {
        let mut object = object.clone();
        object["metadata"]["namespace"] = json!(ns);
        if let Some(owners) = object["metadata"]["ownerReferences"].as_array_mut() {
            for owner in owners {
                owner["uid"] = json!(uid);
            }
        }
        count();
        create_any(client, &ns, object).await?;
    }
    for event in &snap.events {
        let mut event = event.clone();
        event["metadata"]["namespace"] = json!(ns);
        event["regarding"]["namespace"] = json!(ns);
        event["regarding"]["uid"] = json!(uid);
        if let Some(meta) = event["metadata"].as_object_mut() {
            meta.remove("name");
            meta.insert("generateName".to_owned(), json!(format!("{name}-")));
        }
        count();
        let event: Event = serde_json::from_value(event)?;
        let api: Api<Event> = Api::namespaced(client.clone(), &ns);
        retrying("creating an event", || api.create(&create, &event)).await?;
    }
    count();
    let status = Patch::Merge(json!({"status": snap.status}));
    retrying("patching the status", || {
        endpoints.patch_status(&name, &merge, &status)
    })
    .await?;
    Ok(())
}

async fn create_any(client: &Client, ns: &str, object: Value) -> anyhow::Result<()> {
    let kind = object["kind"].as_str().unwrap_or_default().to_owned();
    macro_rules! create {
        ($t:ty) => {{
            let typed: $t = serde_json::from_value(object)?;
            let api: Api<$t> = Api::namespaced(client.clone(), ns);
            let (api, params, typed) = (&api, &PostParams::default(), &typed);
            // A create retried after a dropped answer may find its own first attempt.
            let mut retry = false;
            retrying(&format!("creating a {kind}"), || {
                let again = std::mem::replace(&mut retry, true);
                async move {
                    match api.create(params, typed).await {
                        Err(kube::Error::Api(s)) if again && s.code == 409 => Ok(()),
                        other => other.map(drop),
                    }
                }
            })
            .await?;
        }};
    }
    match kind.as_str() {
        "Secret" => create!(Secret),
        "ConfigMap" => create!(ConfigMap),
        "Deployment" => create!(Deployment),
        "Service" => create!(Service),
        other => anyhow::bail!("unexpected kind {other}"),
    }
    Ok(())
}

/// Removes the replayed endpoints' finalizers (no operator runs to do it) and deletes
/// the baseline's namespaces.
async fn release_and_delete(client: &Client, namespaces: &[String], run_id: &str) {
    delete_namespaces(client, namespaces).await;
    let selector = format!("{RUN_LABEL}={run_id}");
    for ns in namespaces {
        let api: Api<IngestionEndpoint> = Api::namespaced(client.clone(), ns);
        let Ok(list) = api.list(&ListParams::default().labels(&selector)).await else {
            continue;
        };
        let _ = stream::iter(list.items)
            .map(|ep| {
                let api = api.clone();
                async move {
                    let _ = api
                        .patch_metadata(
                            &ep.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                        )
                        .await;
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<()>>()
            .await;
    }
}

/// `OPERATOR.md`: the run's figures and verdicts.
pub fn render(figures: &Figures, commit: &str, machine: &str) -> String {
    let secs = |s: Option<f64>| s.map_or("—".to_owned(), |s| format!("{s:.1} s"));
    let mut out = String::new();
    out.push_str("# The operator at scale\n\n");
    out.push_str(&format!(
        "`scripts/bench.sh --operator` (`anchorpipe-bench operator`): {} `IngestionEndpoint`s \
         (classic queues, one replica) in {} namespaces, applied at once to the test control \
         plane (`scripts/cluster.sh`: kube-apiserver, kube-controller-manager, kube-scheduler, \
         kwok) and served by one release operator watching only those namespaces, against \
         the API server alone creating the same objects.\n\n",
        figures.endpoints, figures.namespaces
    ));
    out.push_str(&format!(
        "Machine: {machine}. Commit: `{commit}`. Load average before: {}, after: {} (other \
         work on the machine skews every figure).\n\n",
        figures.load_before, figures.load_after
    ));
    out.push_str("| figure | value |\n| --- | --- |\n");
    let rows = [
        (
            "all endpoints Ready (operator)".to_owned(),
            secs(figures.ready_secs),
        ),
        (
            "all their Deployments available (operator run)".to_owned(),
            secs(figures.available_secs),
        ),
        (
            "API server alone: the same objects created, status patched".to_owned(),
            format!(
                "{:.1} s ({} requests)",
                figures.baseline_secs, figures.baseline_requests
            ),
        ),
        (
            "API server alone: their Deployments available".to_owned(),
            secs(figures.baseline_available_secs),
        ),
        (
            "Ready ÷ API server alone".to_owned(),
            figures
                .ratio()
                .map_or("—".to_owned(), |r| format!("{r:.2}")),
        ),
        (
            "operator peak RSS (VmHWM)".to_owned(),
            format!("{:.1} MiB", figures.peak_rss_mib),
        ),
        (
            "operator RSS after the idle period".to_owned(),
            format!("{:.1} MiB", figures.rss_after_idle_mib),
        ),
        (
            "operator API requests while converging".to_owned(),
            format!(
                "{} ({:.0}/s on average, {:.0}/s at the busiest second)",
                figures.converge_requests, figures.converge_rps, figures.peak_rps
            ),
        ),
        (
            "… by method and resource".to_owned(),
            figures.converge_breakdown.clone(),
        ),
        (
            format!("operator API requests in {:.0} s idle", figures.idle_secs),
            figures.idle_breakdown.clone(),
        ),
        (
            "reconciles (whole run)".to_owned(),
            figures.reconciles.clone(),
        ),
        (
            "every endpoint deleted (finalizer cleanup included)".to_owned(),
            secs(figures.delete_secs),
        ),
    ];
    for (name, value) in rows {
        out.push_str(&format!("| {name} | {value} |\n"));
    }
    out.push_str("\n## Verdicts\n\n");
    for verdict in figures.verdicts() {
        out.push_str(&format!("- {verdict}\n"));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_counts_are_read_from_the_metrics_text() {
        let text = "# HELP x\n\
            anchorpipe_operator_api_requests_total{verb=\"Get\",resource=\"Secret\"} 10\n\
            anchorpipe_operator_api_requests_total{verb=\"Patch\",resource=\"Secret\"} 4\n\
            anchorpipe_operator_api_requests_total{verb=\"Put\",resource=\"Lease\"} 3\n\
            anchorpipe_operator_leader 1\n";
        let later = ApiCounts::parse(text);
        assert_eq!(later.total(), 17);
        assert_eq!(later.writes(), 4);
        assert_eq!(later.lease_writes(), 3);
        let earlier = ApiCounts::parse(
            "anchorpipe_operator_api_requests_total{verb=\"Patch\",resource=\"Secret\"} 4\n",
        );
        let idle = later.since(&earlier);
        assert_eq!(idle.writes(), 0);
        assert_eq!(idle.describe(), "Get Secret 10, Put Lease 3");
    }

    #[test]
    fn fresh_objects_lose_what_the_api_server_assigned() {
        let object = fresh(json!({
            "kind": "Service",
            "metadata": {"name": "a", "uid": "u", "resourceVersion": "1", "managedFields": []},
            "spec": {"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1"], "ports": []},
            "status": {},
        }));
        assert_eq!(
            object,
            json!({"kind": "Service", "metadata": {"name": "a"}, "spec": {"ports": []}})
        );
    }
}
