//! `anchorpipe-operator smoke-test`: what the chart's `helm test` pod runs.
//!
//! It proves the installed stack end to end with a throwaway tenant:
//!
//! 1. creates an `IngestionEndpoint` (one replica, a random repository, a tenant named
//!    after it, queues deleted with it) labelled as the smoke test's;
//! 2. waits, bounded, until its `Ready` condition is True;
//! 3. reads the current HMAC key from the endpoint's `<name>-hmac` Secret;
//! 4. finds the ready pod addresses of the `<name>-ingest` Service in its EndpointSlices
//!    and posts to a pod directly, so the check depends on neither cluster DNS nor
//!    kube-proxy: a small valid report signed with the key must be stored (200), and one
//!    signed with a wrong key must be refused (401);
//! 5. always (after a failure, and on SIGTERM or SIGINT too) deletes the endpoint and
//!    waits, bounded, until it is gone: the operator's finalizer removes the tenant's
//!    queues and logins.
//!
//! An endpoint of the same name left by an interrupted earlier run (it carries the smoke
//! test's label) is deleted first; one without the label is never touched.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anchorpipe_crds::v1alpha1::{
    DeletionPolicy, IngestionEndpoint, IngestionEndpointSpec, QueueSpec,
};
use anchorpipe_sender::client::{self, Answer, Endpoint, RetryPolicy};
use anchorpipe_sender::sign::{Key, Scheme};
use anchorpipe_sender::{Report, Status, TestResult};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams, Preconditions};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};
use uuid::Uuid;

/// Label on the smoke test's endpoint; its value is the run's repository id.
pub const SMOKE_LABEL: &str = "anchorpipe.dev/smoke-test";

/// The Service port the ingest pods serve reports on.
const HTTP_PORT_NAME: &str = "http";

/// How often the EndpointSlices are listed while waiting for a ready pod.
const SLICE_POLL: Duration = Duration::from_secs(1);

/// What the smoke test does (see the module documentation).
#[derive(Debug, Clone)]
pub struct SmokeConfig {
    pub namespace: String,
    pub name: String,
    /// How long the endpoint may take to become Ready and get a ready pod address.
    pub ready_timeout: Duration,
    /// How long the deletion (the operator's cleanup) may take.
    pub delete_timeout: Duration,
    /// How long one report may take, retries of transient answers included.
    pub request_timeout: Duration,
    pub scheme: Scheme,
}

/// Why the smoke test failed: each is one line for the pod's log and exit message.
#[derive(Debug, thiserror::Error)]
pub enum SmokeError {
    #[error(
        "IngestionEndpoint {namespace}/{name} exists and was not made by the smoke test (no {SMOKE_LABEL} label); delete it or choose another name"
    )]
    Foreign { namespace: String, name: String },

    #[error("Kubernetes API, {action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },

    #[error("watching IngestionEndpoint {name}: {message}")]
    Watch { name: String, message: String },

    #[error("IngestionEndpoint {name} was deleted by someone else while the smoke test waited")]
    Vanished { name: String },

    #[error(
        "IngestionEndpoint {name} was not Ready within {seconds}s; its conditions: {conditions}"
    )]
    NotReady {
        name: String,
        seconds: u64,
        conditions: String,
    },

    #[error("HMAC key: {0}")]
    Key(String),

    #[error(
        "no ready pod address on port `{HTTP_PORT_NAME}` of Service {service} within {seconds}s"
    )]
    NoAddress { service: String, seconds: u64 },

    #[error("the validly signed report was not stored by {url}: {answer}")]
    NotStored { url: String, answer: String },

    #[error("the report signed with a wrong key was not refused with 401 by {url}: {answer}")]
    WrongKeyNotRefused { url: String, answer: String },

    #[error("building the report: {0}")]
    Report(String),

    #[error("the HTTP client stopped: {0}")]
    Client(String),

    #[error("interrupted by {0}")]
    Interrupted(&'static str),

    #[error("IngestionEndpoint {name} was still there {seconds}s after it was deleted")]
    NotDeleted { name: String, seconds: u64 },

    /// The checks failed, and so did the cleanup after them.
    #[error("{checks}; and cleaning up failed too: {cleanup}")]
    Both {
        checks: Box<SmokeError>,
        cleanup: Box<SmokeError>,
    },
}

/// The command line of `smoke-test`.
#[derive(Debug, Clone, clap::Args)]
pub struct SmokeArgs {
    /// Namespace of the temporary IngestionEndpoint (one the operator serves).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Name of the temporary IngestionEndpoint: a DNS label of at most 40 characters.
    /// One of this name left by an interrupted run is replaced; one not made by the smoke
    /// test makes it fail.
    #[arg(long, env = "ANCHORPIPE_SMOKE_NAME", default_value = "anchorpipe-smoke", value_parser = endpoint_name)]
    pub name: String,
    /// Seconds the endpoint may take to become Ready and get a ready ingest pod.
    #[arg(long, default_value_t = 120)]
    pub timeout_seconds: u64,
    /// Seconds the endpoint's deletion (the operator's cleanup of the tenant) may take.
    #[arg(long, default_value_t = 120)]
    pub delete_timeout_seconds: u64,
    /// Seconds each report may take, retries of transient answers (429, 5xx) included.
    #[arg(long, default_value_t = 30)]
    pub request_timeout_seconds: u64,
    /// Signature scheme of both reports.
    #[arg(long, value_enum, default_value = "legacy")]
    pub signature_scheme: SignatureScheme,
}

/// `--signature-scheme`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SignatureScheme {
    /// `X-FR-Sig`: hex HMAC-SHA256 of the body.
    Legacy,
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    StandardWebhooks,
}

impl SmokeArgs {
    pub fn config(&self) -> SmokeConfig {
        SmokeConfig {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            ready_timeout: Duration::from_secs(self.timeout_seconds),
            delete_timeout: Duration::from_secs(self.delete_timeout_seconds),
            request_timeout: Duration::from_secs(self.request_timeout_seconds),
            scheme: match self.signature_scheme {
                SignatureScheme::Legacy => Scheme::Legacy,
                SignatureScheme::StandardWebhooks => Scheme::StandardWebhooks,
            },
        }
    }
}

/// A DNS label of at most 40 characters: `<name>-ingest` and `<name>-hmac` must stay
/// valid object names.
fn endpoint_name(text: &str) -> Result<String, String> {
    let valid = (1..=40).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-');
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "`{text}` is not a DNS label of at most 40 lowercase letters, digits or '-'"
        ))
    }
}

/// Runs `smoke-test` and turns its outcome into the exit code, with one line saying why
/// on failure.
pub fn main(args: &SmokeArgs) -> std::process::ExitCode {
    use std::process::ExitCode;
    let config = args.config();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("smoke test failed: could not start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let client = Client::try_default()
            .await
            .map_err(kube_error("connecting"))?;
        run(client, &config).await
    });
    // A report still in flight after an interruption must not hold the exit up.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(passed) => {
            info!(url = %passed.url, run_id = %passed.run_id, tenant = %passed.tenant, "smoke test passed");
            println!(
                "smoke test passed: {} stored a signed report (run {}) for tenant {} and refused a wrong key with 401; the temporary endpoint is deleted",
                passed.url, passed.run_id, passed.tenant
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "smoke test failed");
            eprintln!("smoke test failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn kube_error(action: impl Into<String>) -> impl FnOnce(kube::Error) -> SmokeError {
    let action = action.into();
    move |source| SmokeError::Kube { action, source }
}

/// What a passed smoke test saw.
#[derive(Debug, Clone)]
pub struct Passed {
    pub url: String,
    pub run_id: String,
    pub tenant: String,
}

/// The tenant of a run: `smoke-` and the repository id's first eight hex digits, short
/// enough that `<namespace>.<tenant>` fits the tenant id's 63 characters.
pub fn tenant_for(repository: Uuid) -> String {
    let simple = repository.simple().to_string();
    format!("smoke-{}", &simple[..8])
}

/// The throwaway endpoint: one replica, the run's repository, its queues deleted with it.
pub fn smoke_endpoint(name: &str, repository: Uuid) -> IngestionEndpoint {
    let spec = IngestionEndpointSpec {
        tenant: Some(tenant_for(repository)),
        repositories: vec![repository.to_string()],
        hmac: Default::default(),
        signatures: Default::default(),
        rate_limit: Default::default(),
        queue: QueueSpec {
            deletion_policy: DeletionPolicy::Delete,
            ..Default::default()
        },
        limits: Default::default(),
        ingress: None,
        replicas: 1,
        resources: None,
        image: None,
    };
    let mut endpoint = IngestionEndpoint::new(name, spec);
    endpoint.metadata = ObjectMeta {
        name: Some(name.to_owned()),
        labels: Some(BTreeMap::from([
            (SMOKE_LABEL.to_owned(), repository.to_string()),
            (
                "app.kubernetes.io/managed-by".to_owned(),
                "anchorpipe-smoke-test".to_owned(),
            ),
        ])),
        ..ObjectMeta::default()
    };
    endpoint
}

/// The small valid report the run posts: one passing test, recognisable as the smoke
/// test's by its branch and metadata.
pub fn smoke_report(repository: Uuid, run_id: &str, now: chrono::DateTime<chrono::Utc>) -> Report {
    let mut report = Report::new("junit");
    report.repo_id = repository.to_string();
    // 40 hex digits, as the schema wants: the repository's 32 and eight zeros.
    report.commit_sha = format!("{}00000000", repository.simple());
    report.run_id = run_id.to_owned();
    report.branch = Some("anchorpipe-smoke-test".to_owned());
    report.metadata = Some(serde_json::Map::from_iter([(
        "anchorpipe_smoke_test".to_owned(),
        serde_json::Value::Bool(true),
    )]));
    report.tests.push(TestResult {
        path: "anchorpipe/smoke".to_owned(),
        name: "a signed report reaches the ingest pods".to_owned(),
        status: Status::Pass,
        duration_ms: Some(1),
        started_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        failure_details: None,
        tags: Vec::new(),
        metadata: None,
        extra: serde_json::Map::new(),
    });
    report
}

/// Whether the endpoint's `Ready` condition is True.
pub fn is_ready(endpoint: &IngestionEndpoint) -> bool {
    endpoint.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// The conditions in one line: `Ready=False (Reason: message); …`.
pub fn describe_conditions(conditions: &[Condition]) -> String {
    if conditions.is_empty() {
        return "none yet (has the operator seen the endpoint?)".to_owned();
    }
    conditions
        .iter()
        .map(|c| {
            let message = c.message.replace('\n', " ");
            if message.is_empty() {
                format!("{}={} ({})", c.type_, c.status, c.reason)
            } else {
                format!("{}={} ({}: {message})", c.type_, c.status, c.reason)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The addresses (`ip:port`, sorted) of the ready, not terminating endpoints of `slices`
/// on the port named `port_name`. An endpoint whose readiness is unknown counts as ready,
/// as the EndpointSlice API asks; FQDN slices are skipped.
pub fn ready_addresses(slices: &[EndpointSlice], port_name: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for slice in slices {
        if slice.address_type == "FQDN" {
            continue;
        }
        let Some(port) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(port_name))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for endpoint in slice.endpoints.iter().flatten() {
            let conditions = endpoint.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            if !ready || terminating {
                continue;
            }
            out.extend(
                endpoint
                    .addresses
                    .iter()
                    .filter_map(|a| a.parse::<IpAddr>().ok())
                    .map(|ip| SocketAddr::new(ip, port)),
            );
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The ingestion URL of one pod address (IPv6 in brackets).
pub fn ingestion_url(address: SocketAddr) -> String {
    format!("http://{address}/api/ingestion")
}

/// Runs the smoke test and always cleans up after it. SIGTERM or SIGINT stops the
/// checks and goes straight to the cleanup.
pub async fn run(client: Client, config: &SmokeConfig) -> Result<Passed, SmokeError> {
    let api: Api<IngestionEndpoint> = Api::namespaced(client.clone(), &config.namespace);
    let repository = Uuid::new_v4();
    info!(
        namespace = %config.namespace,
        name = %config.name,
        repository = %repository,
        tenant = %tenant_for(repository),
        "smoke test: creating a temporary IngestionEndpoint"
    );
    let outcome = tokio::select! {
        outcome = checks(&client, &api, config, repository) => outcome,
        signal = shutdown_signal() => {
            warn!(signal, "smoke test interrupted; cleaning up");
            Err(SmokeError::Interrupted(signal))
        }
    };
    if let Err(e) = &outcome {
        warn!(error = %e, "smoke test failed; cleaning up");
    }
    let cleanup = cleanup(&api, config, repository).await;
    match (outcome, cleanup) {
        (Ok(passed), Ok(())) => Ok(passed),
        (Ok(_), Err(cleanup)) => Err(cleanup),
        (Err(checks), Ok(())) => Err(checks),
        (Err(checks), Err(cleanup)) => Err(SmokeError::Both {
            checks: Box::new(checks),
            cleanup: Box::new(cleanup),
        }),
    }
}

/// Resolves with the signal's name on SIGTERM (the kubelet stopping the pod) or SIGINT.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = tokio::signal::ctrl_c() => "SIGINT",
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM; only SIGINT interrupts");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

async fn checks(
    client: &Client,
    api: &Api<IngestionEndpoint>,
    config: &SmokeConfig,
    repository: Uuid,
) -> Result<Passed, SmokeError> {
    create(api, config, repository).await?;
    let started = Instant::now();
    let endpoint = wait_ready(api, config).await?;
    let tenant = endpoint
        .status
        .as_ref()
        .and_then(|s| s.tenant.clone())
        .unwrap_or_else(|| tenant_for(repository));
    info!(
        name = %config.name,
        tenant = %tenant,
        seconds = started.elapsed().as_secs(),
        "smoke test: endpoint Ready"
    );

    let key = read_key(client, config, &endpoint).await?;
    let remaining = config.ready_timeout.saturating_sub(started.elapsed());
    let address = wait_for_address(client, config, remaining.max(SLICE_POLL)).await?;
    let url = ingestion_url(address);

    let run_id = format!("smoke-{}", chrono::Utc::now().format("%Y%m%dT%H%M%SZ"));
    let report = smoke_report(repository, &run_id, chrono::Utc::now());
    let body = serde_json::to_vec(&report).map_err(|e| SmokeError::Report(e.to_string()))?;
    let target = Endpoint {
        url: url.clone(),
        repo_id: repository.to_string(),
        key,
        scheme: config.scheme,
    };
    info!(url = %url, run_id = %run_id, "smoke test: posting a signed report");
    match post(target.clone(), body.clone(), config.request_timeout).await? {
        Answer::Stored(_) => info!(url = %url, "smoke test: the signed report was stored"),
        other => {
            return Err(SmokeError::NotStored {
                url,
                answer: describe_answer(&other),
            });
        }
    }

    // The same report signed with a key the endpoint never minted.
    let wrong = Endpoint {
        key: Key::new(&format!("whsec_{}", Uuid::new_v4().simple())),
        ..target
    };
    info!(url = %url, "smoke test: posting a report signed with a wrong key");
    match post(wrong, body, config.request_timeout).await? {
        Answer::Refused { status: 401, .. } => {
            info!(url = %url, "smoke test: the wrongly signed report was refused with 401");
        }
        other => {
            return Err(SmokeError::WrongKeyNotRefused {
                url,
                answer: describe_answer(&other),
            });
        }
    }
    Ok(Passed {
        url,
        run_id,
        tenant,
    })
}

fn describe_answer(answer: &Answer) -> String {
    match answer {
        Answer::Stored(value) => format!("stored ({value})"),
        Answer::Duplicate(value) => format!("answered as a duplicate ({value})"),
        Answer::Refused { status, body } => {
            format!(
                "HTTP {status}: {}",
                body.chars().take(300).collect::<String>()
            )
        }
        Answer::Unreachable(problem) => format!("unreachable: {problem}"),
    }
}

/// Creates the endpoint; one of the same name left by an earlier run is deleted first.
async fn create(
    api: &Api<IngestionEndpoint>,
    config: &SmokeConfig,
    repository: Uuid,
) -> Result<(), SmokeError> {
    let endpoint = smoke_endpoint(&config.name, repository);
    match api.create(&PostParams::default(), &endpoint).await {
        Ok(_) => return Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => {
            return Err(kube_error(format!(
                "creating IngestionEndpoint {}",
                config.name
            ))(e));
        }
    }
    let existing = api.get(&config.name).await.map_err(kube_error(format!(
        "reading IngestionEndpoint {}",
        config.name
    )))?;
    if !existing.labels().contains_key(SMOKE_LABEL) {
        return Err(SmokeError::Foreign {
            namespace: config.namespace.clone(),
            name: config.name.clone(),
        });
    }
    warn!(
        name = %config.name,
        "an endpoint left by an earlier smoke test exists; deleting it first"
    );
    delete_and_wait(api, config, &existing).await?;
    api.create(&PostParams::default(), &endpoint)
        .await
        .map_err(kube_error(format!(
            "creating IngestionEndpoint {}",
            config.name
        )))?;
    Ok(())
}

async fn wait_ready(
    api: &Api<IngestionEndpoint>,
    config: &SmokeConfig,
) -> Result<IngestionEndpoint, SmokeError> {
    let ready = |obj: Option<&IngestionEndpoint>| obj.is_none_or(is_ready);
    match tokio::time::timeout(
        config.ready_timeout,
        await_condition(api.clone(), &config.name, ready),
    )
    .await
    {
        Ok(Ok(Some(endpoint))) => Ok(endpoint),
        Ok(Ok(None)) => Err(SmokeError::Vanished {
            name: config.name.clone(),
        }),
        Ok(Err(e)) => Err(SmokeError::Watch {
            name: config.name.clone(),
            message: e.to_string(),
        }),
        Err(_) => {
            let conditions = match api.get(&config.name).await {
                Ok(endpoint) => describe_conditions(
                    endpoint
                        .status
                        .as_ref()
                        .map_or(&[][..], |s| &s.conditions[..]),
                ),
                Err(e) => format!("unknown (reading them failed: {e})"),
            };
            Err(SmokeError::NotReady {
                name: config.name.clone(),
                seconds: config.ready_timeout.as_secs(),
                conditions,
            })
        }
    }
}

/// The current key, from the `<name>-hmac` Secret (never logged).
async fn read_key(
    client: &Client,
    config: &SmokeConfig,
    endpoint: &IngestionEndpoint,
) -> Result<Key, SmokeError> {
    let key_id = endpoint
        .status
        .as_ref()
        .and_then(|s| s.current_key_id.clone())
        .ok_or_else(|| SmokeError::Key("the Ready endpoint names no status.currentKeyId".into()))?;
    let secret_name = format!("{}-hmac", config.name);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
    let secret = secrets
        .get(&secret_name)
        .await
        .map_err(kube_error(format!("reading Secret {secret_name}")))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&key_id))
        .ok_or_else(|| SmokeError::Key(format!("Secret {secret_name} has no key `{key_id}`")))?;
    let text = std::str::from_utf8(&bytes.0).map_err(|_| {
        SmokeError::Key(format!(
            "key `{key_id}` in Secret {secret_name} is not text"
        ))
    })?;
    let key = Key::new(text);
    if key.is_empty() {
        return Err(SmokeError::Key(format!(
            "key `{key_id}` in Secret {secret_name} is empty"
        )));
    }
    info!(secret = %secret_name, key_id = %key_id, "smoke test: read the current key");
    Ok(key)
}

/// Lists the Service's EndpointSlices until one has a ready pod address.
async fn wait_for_address(
    client: &Client,
    config: &SmokeConfig,
    timeout: Duration,
) -> Result<SocketAddr, SmokeError> {
    let service = format!("{}-ingest", config.name);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &config.namespace);
    let params = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
    let deadline = Instant::now() + timeout;
    loop {
        let list = slices.list(&params).await.map_err(kube_error(format!(
            "listing the EndpointSlices of Service {service}"
        )))?;
        let addresses = ready_addresses(&list.items, HTTP_PORT_NAME);
        if let Some(first) = addresses.first() {
            info!(
                service = %service,
                ready = addresses.len(),
                address = %first,
                "smoke test: found a ready ingest pod"
            );
            return Ok(*first);
        }
        if Instant::now() + SLICE_POLL > deadline {
            return Err(SmokeError::NoAddress {
                service,
                seconds: timeout.as_secs(),
            });
        }
        tokio::time::sleep(SLICE_POLL).await;
    }
}

/// Posts `body` with the CI client (blocking, so on a blocking thread), retrying
/// transient answers until `timeout`.
async fn post(target: Endpoint, body: Vec<u8>, timeout: Duration) -> Result<Answer, SmokeError> {
    tokio::task::spawn_blocking(move || {
        let policy = RetryPolicy {
            deadline: timeout,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(5),
        };
        let url = target.url.clone();
        let mut log = |line: &str| warn!(url = %url, problem = line, "smoke test: retrying");
        client::deliver(&client::agent(), &target, &body, &policy, &mut log)
    })
    .await
    .map_err(|e| SmokeError::Client(e.to_string()))
}

/// Deletes this run's endpoint (if it exists and is this run's) and waits until it is
/// gone.
async fn cleanup(
    api: &Api<IngestionEndpoint>,
    config: &SmokeConfig,
    repository: Uuid,
) -> Result<(), SmokeError> {
    let existing = match api.get_opt(&config.name).await {
        Ok(Some(existing)) => existing,
        Ok(None) => return Ok(()),
        Err(e) => {
            return Err(kube_error(format!(
                "reading IngestionEndpoint {}",
                config.name
            ))(e));
        }
    };
    let ours = existing.labels().get(SMOKE_LABEL) == Some(&repository.to_string());
    if !ours {
        // Not created by this run (it failed to create or found a foreign one).
        return Ok(());
    }
    delete_and_wait(api, config, &existing).await?;
    info!(name = %config.name, "smoke test: the temporary endpoint is gone");
    Ok(())
}

async fn delete_and_wait(
    api: &Api<IngestionEndpoint>,
    config: &SmokeConfig,
    existing: &IngestionEndpoint,
) -> Result<(), SmokeError> {
    let uid = existing.uid().unwrap_or_default();
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.clone()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&config.name, &params).await {
        Ok(_) => {}
        // Gone already, or replaced by another object (the precondition failed).
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {
            return Ok(());
        }
        Err(e) => {
            return Err(kube_error(format!(
                "deleting IngestionEndpoint {}",
                config.name
            ))(e));
        }
    }
    match tokio::time::timeout(
        config.delete_timeout,
        await_condition(api.clone(), &config.name, conditions::is_deleted(&uid)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(SmokeError::Watch {
            name: config.name.clone(),
            message: e.to_string(),
        }),
        Err(_) => Err(SmokeError::NotDeleted {
            name: config.name.clone(),
            seconds: config.delete_timeout.as_secs(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{
        Endpoint as SliceEndpoint, EndpointConditions, EndpointPort,
    };

    fn slice(
        address_type: &str,
        port: Option<(&str, i32)>,
        endpoints: Vec<SliceEndpoint>,
    ) -> EndpointSlice {
        EndpointSlice {
            address_type: address_type.to_owned(),
            endpoints: Some(endpoints),
            ports: port.map(|(name, port)| {
                vec![EndpointPort {
                    name: Some(name.to_owned()),
                    port: Some(port),
                    ..EndpointPort::default()
                }]
            }),
            ..EndpointSlice::default()
        }
    }

    fn pod(address: &str, ready: Option<bool>, terminating: Option<bool>) -> SliceEndpoint {
        SliceEndpoint {
            addresses: vec![address.to_owned()],
            conditions: Some(EndpointConditions {
                ready,
                terminating,
                serving: None,
            }),
            ..SliceEndpoint::default()
        }
    }

    #[test]
    fn only_ready_not_terminating_addresses_on_the_http_port_are_chosen() {
        let slices = vec![
            slice(
                "IPv4",
                Some(("http", 8080)),
                vec![
                    pod("10.0.0.9", Some(true), Some(false)),
                    pod("10.0.0.2", Some(false), None),
                    pod("10.0.0.3", Some(true), Some(true)),
                    // Unknown readiness counts as ready (the API's rule).
                    pod("10.0.0.4", None, None),
                    pod("10.0.0.9", Some(true), None),
                ],
            ),
            // Another port name, no port, or an FQDN slice: nothing usable.
            slice(
                "IPv4",
                Some(("metrics", 9090)),
                vec![pod("10.0.1.1", Some(true), None)],
            ),
            slice("IPv4", None, vec![pod("10.0.1.2", Some(true), None)]),
            slice(
                "FQDN",
                Some(("http", 8080)),
                vec![pod("ingest.example", Some(true), None)],
            ),
        ];
        let addresses: Vec<String> = ready_addresses(&slices, "http")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(addresses, ["10.0.0.4:8080", "10.0.0.9:8080"]);
        assert!(ready_addresses(&[], "http").is_empty());
    }

    #[test]
    fn ipv6_addresses_are_bracketed_in_the_url() {
        let slices = vec![slice(
            "IPv6",
            Some(("http", 8080)),
            vec![pod("fd00::12", Some(true), None)],
        )];
        let addresses = ready_addresses(&slices, "http");
        assert_eq!(
            ingestion_url(addresses[0]),
            "http://[fd00::12]:8080/api/ingestion"
        );
    }

    #[test]
    fn the_endpoint_is_a_labelled_one_replica_tenant_whose_queues_go_with_it() {
        let repository = Uuid::parse_str("7d3c1c8e-6a4c-4b55-9d84-2f1c0f0b8f61").unwrap();
        let endpoint = smoke_endpoint("anchorpipe-smoke", repository);
        assert_eq!(endpoint.name_any(), "anchorpipe-smoke");
        assert_eq!(endpoint.metadata.namespace, None);
        assert_eq!(
            endpoint.labels().get(SMOKE_LABEL).map(String::as_str),
            Some("7d3c1c8e-6a4c-4b55-9d84-2f1c0f0b8f61")
        );
        assert_eq!(endpoint.spec.tenant.as_deref(), Some("smoke-7d3c1c8e"));
        assert_eq!(
            endpoint.spec.repositories,
            ["7d3c1c8e-6a4c-4b55-9d84-2f1c0f0b8f61"]
        );
        assert_eq!(endpoint.spec.replicas, 1);
        assert_eq!(endpoint.spec.queue.deletion_policy, DeletionPolicy::Delete);
        assert!(endpoint.spec.ingress.is_none());
        assert!(endpoint.spec.signatures.legacy && endpoint.spec.signatures.standard_webhooks);
        // The operator's own spec checks pass, in any namespace of up to 48 characters
        // (the tenant id `<namespace>.smoke-xxxxxxxx` has at most 63).
        let namespace = "n".repeat(48);
        assert!(
            anchorpipe_crds::render::validate(&endpoint.spec, &namespace, "anchorpipe-smoke")
                .is_ok()
        );
        assert!(
            anchorpipe_crds::render::validate(
                &endpoint.spec,
                &format!("{namespace}n"),
                "anchorpipe-smoke"
            )
            .is_err()
        );
        let json = serde_json::to_value(&endpoint).unwrap();
        assert_eq!(json["apiVersion"], "anchorpipe.dev/v1alpha1");
        assert_eq!(json["kind"], "IngestionEndpoint");
        assert_eq!(json["spec"]["queue"]["deletionPolicy"], "Delete");
    }

    #[test]
    fn endpoint_names_must_leave_room_for_derived_names() {
        assert!(endpoint_name("anchorpipe-smoke").is_ok());
        assert!(endpoint_name(&"a".repeat(40)).is_ok());
        assert!(endpoint_name(&"a".repeat(41)).is_err());
        assert!(endpoint_name("Smoke").is_err());
        assert!(endpoint_name("-smoke").is_err());
        assert!(endpoint_name("").is_err());
    }

    #[test]
    fn the_tenant_is_a_short_dns_label() {
        for _ in 0..20 {
            let tenant = tenant_for(Uuid::new_v4());
            assert_eq!(tenant.len(), 14);
            assert!(
                tenant
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            );
        }
    }

    #[test]
    fn the_report_is_valid_for_the_ingest_schema() {
        let repository = Uuid::new_v4();
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-29T23:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let report = smoke_report(repository, "smoke-1", now);
        let body = serde_json::to_vec(&report).unwrap();
        let parsed = anchorpipe_ingest::report::ReportValidator::new(10).parse(&body);
        assert!(parsed.is_ok(), "{parsed:?}");
        assert_eq!(report.tests[0].started_at, "2026-11-29T23:00:00Z");
    }

    #[test]
    fn conditions_are_described_on_one_line() {
        let condition = |type_: &str, status: &str, reason: &str, message: &str| Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
            observed_generation: None,
        };
        assert_eq!(
            describe_conditions(&[
                condition("Ready", "False", "Reconciling", "waiting for\nthe pods"),
                condition("SecretReady", "True", "Minted", ""),
            ]),
            "Ready=False (Reconciling: waiting for the pods); SecretReady=True (Minted)"
        );
        assert!(describe_conditions(&[]).starts_with("none yet"));
    }
}
