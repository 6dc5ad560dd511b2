//! The control plane side of a test: client, `kubectl`, the CRD, the operator process,
//! and [`TestNs`], the per-test namespace that also owns the test's database, queues and
//! timing record.
//!
//! One operator process serves every test of the binary, as one operator serves every
//! tenant of a real cluster (it watches all namespaces and holds a Lease, so two would
//! just stand in line). Tests that stop something shared (the broker, the API server,
//! the operator itself) take [`DISRUPTION`] for writing; every other test holds it for
//! reading, so they run in parallel with each other and never overlap an outage.

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anchorpipe_crds::v1alpha1::IngestionEndpoint;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use sqlx::Connection as _;
use tokio::sync::{OnceCell, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::{binary, eventually, log_dir, required_env, suffix};

/// Held for reading by ordinary tests, for writing by tests that stop a shared service.
pub static DISRUPTION: RwLock<()> = RwLock::const_new(());

/// Field manager of everything the tests apply.
pub const MANAGER: &str = "anchorpipe-e2e";

/// The platform database every tenant of the run shares, as one database serves every
/// tenant of a real cluster. Tenants are kept apart by their minted logins and
/// row-level security, not by databases.
pub const PLATFORM_DATABASE: &str = "anchorpipe_e2e";

/// The Lease the suite's operator holds while it serves: until it holds it, it stands by
/// and reconciles nothing.
pub const SUITE_LEASE: &str = "anchorpipe-e2e";
pub const SUITE_LEASE_NAMESPACE: &str = "default";

/// Seconds a deletion waits for a down broker before the operator releases the
/// finalizer: short, so the broker-down deletion test sees the whole bounded wait.
pub const CLEANUP_TIMEOUT_SECONDS: u64 = 20;

/// The generated CRD, applied as a user would.
fn crd_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds/yaml/ingestionendpoint.yaml")
}

/// A client of the test cluster, bounded like the operator's own requests: kube waits
/// forever by default, and a request lost in one of the suite's API server restarts
/// must fail its attempt, not hang the test. The suite opens no watch.
pub async fn client() -> Client {
    required_env("KUBECONFIG");
    anchorpipe_operator::run::request_client()
        .await
        .unwrap_or_else(|e| panic!("kube client from KUBECONFIG: {e}"))
}

/// Output of a `kubectl` run.
#[derive(Debug)]
pub struct Kubectl {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `kubectl` (from the cluster's bin dir on PATH) with `args`.
pub async fn kubectl(args: &[&str]) -> Kubectl {
    kubectl_stdin(args, None).await
}

pub async fn kubectl_stdin(args: &[&str], stdin: Option<&str>) -> Kubectl {
    required_env("KUBECONFIG");
    let mut command = tokio::process::Command::new("kubectl");
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("kubectl (is the cluster env on PATH?): {e}"));
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use tokio::io::AsyncWriteExt as _;
        pipe.write_all(text.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("kubectl stdin: {e}"));
    }
    let output = child
        .wait_with_output()
        .await
        .unwrap_or_else(|e| panic!("kubectl: {e}"));
    Kubectl {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Creates namespace `name`, labelled as an e2e namespace (what clean-ups look for).
pub async fn create_namespace(client: &Client, name: &str) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some([("anchorpipe.dev/e2e".to_owned(), "true".to_owned())].into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    if let Err(error) = Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        panic!("creating namespace {name}: {error}");
    }
}

static CRD: OnceCell<()> = OnceCell::const_new();

/// Applies the generated CRD with server-side apply, once per test binary, and waits
/// until the API server serves it.
pub async fn ensure_crd() {
    CRD.get_or_init(|| async {
        let file = crd_file();
        let file = file.to_string_lossy();
        let out = kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager",
            MANAGER,
            "-f",
            &file,
        ])
        .await;
        assert!(out.success, "applying the CRD failed: {}", out.stderr);
        let out = kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/ingestionendpoints.anchorpipe.dev",
        ])
        .await;
        assert!(out.success, "CRD never established: {}", out.stderr);
    })
    .await;
}

/// The operator child process. It runs under a tiny `sh` guardian that holds our end of
/// a pipe: when the test process exits (however it exits) the pipe closes and the
/// guardian kills the operator, so no controller outlives the test run.
struct OperatorProcess {
    guardian: Child,
    pid: u32,
}

static OPERATOR: Mutex<Option<OperatorProcess>> = Mutex::new(None);

static PLATFORM: OnceCell<String> = OnceCell::const_new();

/// The platform database (created afresh and migrated once per test binary, with the
/// owner's credentials, as the chart's migration Job does), as an owner URL.
pub async fn platform_database() -> String {
    PLATFORM
        .get_or_init(|| async {
            let base = required_env("DATABASE_URL");
            let mut conn = sqlx::PgConnection::connect(&base)
                .await
                .unwrap_or_else(|e| panic!("connecting to {base}: {e}"));
            for statement in [
                format!("DROP DATABASE IF EXISTS \"{PLATFORM_DATABASE}\" WITH (FORCE)"),
                format!("CREATE DATABASE \"{PLATFORM_DATABASE}\""),
            ] {
                sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
                    .execute(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("{statement}: {e}"));
            }
            let _ = conn.close().await;
            let url = with_database(&base, PLATFORM_DATABASE);
            let status = Command::new(binary("anchorpipe-ingest"))
                .arg("migrate")
                .env("DATABASE_URL", &url)
                .stdin(Stdio::null())
                .status()
                .unwrap_or_else(|e| panic!("anchorpipe-ingest migrate: {e}"));
            assert!(status.success(), "migrating {PLATFORM_DATABASE} failed");
            url
        })
        .await
        .clone()
}

fn is_running(pid: u32) -> bool {
    // A killed child of the guardian stays a zombie until the guardian reaps it.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
        })
        .is_some_and(|state| state != 'Z' && state != 'X')
}

fn spawn_operator() -> OperatorProcess {
    let log = log_dir().join("operator.log");
    let amqp_url = required_env("AMQP_URL");
    let management_url = required_env("RABBITMQ_MANAGEMENT_URL");
    let database_url = PLATFORM
        .get()
        .cloned()
        .unwrap_or_else(|| panic!("platform_database() must run before the operator starts"));
    let script = r#""$@" >>"$E2E_OPERATOR_LOG" 2>&1 </dev/null & echo $!; read -r _; kill -9 $! 2>/dev/null; wait"#;
    let cleanup = CLEANUP_TIMEOUT_SECONDS.to_string();
    let mut guardian = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(binary("anchorpipe-operator"))
        .args([
            "run",
            "--ingest-image",
            "registry.invalid/anchorpipe-ingest:e2e",
            "--amqp-url",
            &amqp_url,
            "--database-url",
            &database_url,
            "--rabbitmq-management-url",
            &management_url,
            "--listen",
            "127.0.0.1:0",
            "--lease-name",
            SUITE_LEASE,
            "--lease-namespace",
            SUITE_LEASE_NAMESPACE,
            // A fixed identity, as a restarted pod keeps its name: a restarted operator
            // takes its own Lease back at once instead of waiting for it to expire.
            "--identity",
            "anchorpipe-e2e",
            "--broker-timeout-seconds",
            "3",
            "--cleanup-timeout-seconds",
            &cleanup,
            "--resync-seconds",
            "60",
        ])
        .env("E2E_OPERATOR_LOG", &log)
        .env("RUST_LOG", "info,kube=warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting the operator: {e}"));
    let mut line = String::new();
    if let Some(stdout) = guardian.stdout.take() {
        let _ = BufReader::new(stdout).read_line(&mut line);
    }
    let pid: u32 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("operator guardian printed no pid: {line:?}"));
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&log)
    {
        let _ = writeln!(f, "==> e2e: operator started, pid {pid}");
    }
    OperatorProcess { guardian, pid }
}

/// Starts the operator unless it is running. Called by every test, so a test that
/// killed it (or an operator that exited) never leaves the next test without one.
pub fn ensure_operator() {
    let mut slot = OPERATOR.lock().unwrap_or_else(|p| p.into_inner());
    if slot.as_ref().is_some_and(|op| is_running(op.pid)) {
        return;
    }
    if let Some(old) = slot.take() {
        stop_guardian(old);
    }
    *slot = Some(spawn_operator());
}

fn stop_guardian(mut op: OperatorProcess) {
    // Closing its stdin makes the guardian kill the operator (if still alive) and exit.
    drop(op.guardian.stdin.take());
    let _ = op.guardian.wait();
}

/// SIGKILLs the operator (no graceful shutdown, as an OOM kill or node loss would).
/// Returns whether it was running.
pub fn kill_operator() -> bool {
    let mut slot = OPERATOR.lock().unwrap_or_else(|p| p.into_inner());
    let Some(op) = slot.take() else {
        return false;
    };
    let was_running = is_running(op.pid);
    let _ = Command::new("kill")
        .args(["-9", &op.pid.to_string()])
        .status();
    stop_guardian(op);
    was_running
}

/// Whether the operator process is alive right now.
pub fn operator_running() -> bool {
    let slot = OPERATOR.lock().unwrap_or_else(|p| p.into_inner());
    slot.as_ref().is_some_and(|op| is_running(op.pid))
}

/// Runs `scripts/<script> <args>` and fails the test if it fails.
pub fn script(script: &str, args: &[&str]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(script);
    let status = Command::new(&path)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(status.success(), "{script} {args:?} failed");
}

enum Guard {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Exclusive(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
    /// A second namespace of a test that holds the lock through its first.
    Sibling,
}

/// One test's world: a fresh namespace, its queues, and its timing line.
pub struct TestNs {
    pub test: &'static str,
    pub name: String,
    pub client: Client,
    started: Instant,
    queues: Vec<String>,
    finished: bool,
    _guard: Guard,
}

impl TestNs {
    /// A test that runs beside others.
    pub async fn new(test: &'static str) -> Self {
        let guard = Guard::Shared(DISRUPTION.read().await);
        Self::setup(test, guard).await
    }

    /// A test that stops a shared service: runs alone.
    pub async fn exclusive(test: &'static str) -> Self {
        let guard = Guard::Exclusive(DISRUPTION.write().await);
        Self::setup(test, guard).await
    }

    /// Another namespace for the same test (a second tenant team), under the lock the
    /// first one holds.
    pub async fn sibling(&self, label: &'static str) -> Self {
        Self::setup(label, Guard::Sibling).await
    }

    async fn setup(test: &'static str, guard: Guard) -> Self {
        let started = Instant::now();
        ensure_crd().await;
        platform_database().await;
        ensure_operator();
        let client = client().await;
        // Short: the namespace is half of every tenant id (at most 63 characters).
        let short: String = test
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(24)
            .collect();
        let name = format!("e2e-{}-{}", short.trim_matches('-'), suffix());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("anchorpipe.dev/e2e".to_owned(), "true".to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        Self {
            test,
            name,
            client,
            started,
            queues: Vec::new(),
            finished: false,
            _guard: guard,
        }
    }

    pub fn endpoints(&self) -> Api<IngestionEndpoint> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// The platform database's owner URL, to inspect what the pods stored. (Nothing is
    /// set up per namespace: the operator mints each tenant's credentials.)
    pub async fn platform(&mut self) -> String {
        platform_database().await
    }

    /// The cluster-unique tenant id of this namespace's tenant `tenant`.
    pub fn tenant_id(&self, tenant: &str) -> String {
        format!("{}.{tenant}", self.name)
    }

    /// Remembers a tenant queue (and its dead-letter queue) to delete at the end.
    pub fn track_queue(&mut self, queue: &str) {
        self.queues.push(queue.to_owned());
        self.queues.push(format!("{queue}.dlq"));
    }

    /// Server-side applies an `IngestionEndpoint` given as JSON (apiVersion and kind are
    /// added). Errors are returned so refusals can be inspected.
    pub async fn apply(
        &self,
        name: &str,
        spec: serde_json::Value,
    ) -> kube::Result<IngestionEndpoint> {
        self.apply_object(serde_json::json!({
            "apiVersion": "anchorpipe.dev/v1alpha1",
            "kind": "IngestionEndpoint",
            "metadata": {"name": name},
            "spec": spec,
        }))
        .await
    }

    pub async fn apply_object(&self, object: serde_json::Value) -> kube::Result<IngestionEndpoint> {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.endpoints()
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&object),
            )
            .await
    }

    /// Waits until the endpoint is Ready=True for its current generation.
    pub async fn wait_ready(&self, name: &str, timeout: Duration) -> IngestionEndpoint {
        let api = self.endpoints();
        eventually(&format!("{}/{name} Ready", self.name), timeout, || {
            let api = api.clone();
            async move {
                let ep = api.get(name).await.map_err(|e| e.to_string())?;
                if is_ready(&ep) {
                    Ok(ep)
                } else {
                    Err(format!("{:?}", ep.status))
                }
            }
        })
        .await
    }

    /// Events the operator recorded about `name` (reason, note), oldest first.
    pub async fn events(&self, name: &str) -> Vec<(String, String)> {
        let api: Api<Event> = self.api();
        let mut events: Vec<Event> = api
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        events.retain(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name));
        events.sort_by_key(|e| e.metadata.creation_timestamp.as_ref().map(|t| t.0));
        events
            .into_iter()
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }

    /// Cleans up what the test made and records its time. Call at the very end; a test
    /// that panics before leaves its namespace and database for inspection (its timing
    /// is still recorded, as failed).
    pub async fn finish(mut self) {
        if !self.queues.is_empty() {
            crate::broker::delete_queues(&self.queues).await;
        }
        let _ = kubectl(&["delete", "namespace", &self.name, "--wait=false"]).await;
        self.finished = true;
        record_timing(self.test, "ok", self.started.elapsed());
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        if !self.finished {
            record_timing(self.test, "FAILED", self.started.elapsed());
            eprintln!(
                "e2e {}: left namespace {} for inspection; logs in {}",
                self.test,
                self.name,
                log_dir().display()
            );
        }
    }
}

/// Appends `test<TAB>outcome<TAB>seconds` to `target/e2e-logs/timings.tsv` and says it
/// on stderr (shown with `--nocapture` or on failure).
fn record_timing(test: &str, outcome: &str, elapsed: Duration) {
    let line = format!("{test}\t{outcome}\t{:.1}", elapsed.as_secs_f64());
    eprintln!("e2e timing: {line}");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log_dir().join("timings.tsv"))
    {
        let _ = writeln!(f, "{line}");
    }
}

/// `base` with its database name replaced by `db`.
pub fn with_database(base: &str, db: &str) -> String {
    let (without_query, query) = match base.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (base, None),
    };
    let prefix = match without_query.rfind('/') {
        // `postgres://host/db`: the last slash after the authority starts the path.
        Some(i) if i > "postgres://".len() => &without_query[..i],
        _ => without_query,
    };
    match query {
        Some(q) => format!("{prefix}/{db}?{q}"),
        None => format!("{prefix}/{db}"),
    }
}

/// A condition's status on the endpoint, if present.
pub fn condition<'a>(
    ep: &'a IngestionEndpoint,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    ep.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
}

/// Ready=True, and the status describes the current generation.
pub fn is_ready(ep: &IngestionEndpoint) -> bool {
    let current = ep.status.as_ref().and_then(|s| s.observed_generation) == ep.metadata.generation;
    current && condition(ep, "Ready").is_some_and(|c| c.status == "True")
}
