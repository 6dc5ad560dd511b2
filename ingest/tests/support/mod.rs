//! Shared fixtures for the delivery tests: a tenant per test (its own queue names, so
//! tests run in parallel on one broker), signed requests, and queue inspection.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anchorpipe_crds::config::{BrokerTopology, IngestConfig, Limit, RateLimitConfig};
use anchorpipe_ingest::http::{AppState, DeliveryHealth, app};
use anchorpipe_ingest::keys::{Key, KeySet, KeyStore};
use anchorpipe_ingest::metrics::Metrics;
use anchorpipe_ingest::relay::RelaySettings;
use anchorpipe_ingest::signature::sign_legacy;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::{Channel, Connection, ConnectionProperties};
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt as _;
use uuid::Uuid;

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").expect("AMQP_URL must be set (scripts/services.sh env)")
}

/// A tenant with a unique name, one repository and generous limits.
pub fn tenant_config() -> IngestConfig {
    let tenant = format!("t{}", &Uuid::new_v4().simple().to_string()[..12]);
    IngestConfig {
        broker: BrokerTopology::for_tenant(&tenant),
        tenant,
        repositories: vec![Uuid::new_v4()],
        signatures: Default::default(),
        rate_limit: RateLimitConfig {
            per_repository: Limit {
                requests_per_minute: 1_000_000,
                burst: 100_000,
            },
            per_endpoint: Limit {
                requests_per_minute: 1_000_000,
                burst: 100_000,
            },
        },
        limits: Default::default(),
        outbox: Default::default(),
        protection: Default::default(),
        store: Default::default(),
    }
}

pub fn fast_relay() -> RelaySettings {
    RelaySettings {
        poll_interval: Duration::from_millis(200),
        retry_base: Duration::from_millis(100),
        retry_max: Duration::from_secs(1),
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_millis(500),
        backlog_interval: Duration::from_millis(100),
        ..RelaySettings::default()
    }
}

pub fn state(pool: PgPool, config: IngestConfig) -> Arc<AppState> {
    Arc::new(
        AppState::new(
            config,
            KeyStore::fixed(KeySet::new(vec![Key::from_secret("k1", SECRET)])),
            pool,
            Arc::new(Metrics::new()),
            Arc::new(DeliveryHealth::default()),
        )
        .unwrap(),
    )
}

pub fn report(repo: Uuid, run_id: &str) -> String {
    json!({
        "repo_id": repo,
        "commit_sha": "0123456789abcdef0123456789abcdef01234567",
        "run_id": run_id,
        "framework": "junit",
        "tests": [{"path": "A.java", "name": "a", "status": "pass",
                   "startedAt": "2026-11-28T17:43:00Z"}]
    })
    .to_string()
}

pub fn signed(repo: Uuid, body: &str) -> Request<Body> {
    Request::post("/api/ingestion")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {repo}"))
        .header("x-fr-sig", sign_legacy(SECRET, body.as_bytes()))
        .body(Body::from(body.to_owned()))
        .unwrap()
}

/// Sends one report through the router; returns the status and the JSON answer.
pub async fn post(app: &Router, repo: Uuid, run_id: &str) -> (StatusCode, Value) {
    let response = app
        .clone()
        .oneshot(signed(repo, &report(repo, run_id)))
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

pub fn router(state: &Arc<AppState>) -> Router {
    app(Arc::clone(state))
}

pub async fn channel() -> (Connection, Channel) {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    (connection, channel)
}

/// Declares the tenant's topology through the shared code path.
pub async fn declare(topology: &BrokerTopology) {
    let (connection, channel) = channel().await;
    anchorpipe_crds::topology::declare(&channel, topology)
        .await
        .unwrap();
    connection.close(200, "done".into()).await.unwrap();
}

pub async fn delete(topology: &BrokerTopology) {
    let (connection, channel) = channel().await;
    anchorpipe_crds::topology::delete(&channel, topology)
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;
}

/// A message taken from a queue.
#[derive(Debug, Clone)]
pub struct Taken {
    pub message_id: String,
    pub body: Value,
    pub headers: HashMap<String, String>,
    pub persistent: bool,
}

/// Takes messages from `queue` until every id in `expected` was seen or `timeout`
/// passed; returns every message taken (duplicates included).
pub async fn take_until(
    queue: &str,
    expected: &std::collections::HashSet<String>,
    timeout: Duration,
) -> Vec<Taken> {
    let (connection, channel) = channel().await;
    let deadline = Instant::now() + timeout;
    let mut taken = Vec::new();
    let mut seen = std::collections::HashSet::new();
    while !expected.is_subset(&seen) && Instant::now() < deadline {
        let message = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .unwrap();
        let Some(message) = message else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let delivery = &message.delivery;
        let properties = &delivery.properties;
        let headers = properties
            .headers()
            .as_ref()
            .map(|table| {
                table
                    .inner()
                    .iter()
                    .filter_map(|(k, v)| match v {
                        lapin::types::AMQPValue::LongString(s) => {
                            Some((k.to_string(), s.to_string()))
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let message_id = properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        seen.insert(message_id.clone());
        taken.push(Taken {
            message_id,
            body: serde_json::from_slice(&delivery.data).unwrap_or(Value::Null),
            headers,
            persistent: properties.delivery_mode() == &Some(2),
        });
        channel
            .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
            .await
            .unwrap();
    }
    let _ = connection.close(200, "done".into()).await;
    taken
}

/// Current number of ready messages in a queue (passive declare).
pub async fn queue_depth(queue: &str) -> u32 {
    let (connection, channel) = channel().await;
    let declared = channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;
    declared.message_count()
}

/// Starts a relay for `state`'s tenant; it runs until `shutdown`.
pub fn start_relay(
    pool: &PgPool,
    config: &IngestConfig,
    state: &AppState,
    settings: RelaySettings,
    shutdown: &tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let relay = anchorpipe_ingest::relay::Relay::new(
        pool.clone(),
        config,
        amqp_url(),
        settings,
        Arc::clone(&state.metrics),
        Arc::clone(&state.delivery),
    );
    tokio::spawn(relay.run(shutdown.clone()))
}

/// What reached a queue, compared with what was acknowledged.
pub struct Delivered {
    pub taken: usize,
    pub distinct: usize,
    pub lost: usize,
}

impl Delivered {
    pub fn duplicates(&self) -> usize {
        self.taken - self.distinct
    }
}

/// Takes from `queue` until every acknowledged id arrived (or `timeout`), and counts.
pub async fn delivered(
    queue: &str,
    acknowledged: &std::collections::HashSet<String>,
    timeout: Duration,
) -> Delivered {
    let taken = take_until(queue, acknowledged, timeout).await;
    let ids: std::collections::HashSet<String> =
        taken.iter().map(|t| t.message_id.clone()).collect();
    Delivered {
        taken: taken.len(),
        distinct: ids.len(),
        lost: acknowledged.difference(&ids).count(),
    }
}

/// Percentile of a sorted slice.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// The real `anchorpipe-ingest` binary configured from files, the way a pod runs it:
/// a config file, a keys directory holding [`SECRET`], the test's own database.
pub struct IngestProcess {
    pub dir: std::path::PathBuf,
    pub port: u16,
    database_url: String,
    with_broker: bool,
}

impl IngestProcess {
    pub async fn prepare(pool: &PgPool, config: &IngestConfig, with_broker: bool) -> Self {
        let dir = std::env::temp_dir().join(format!("ingest-{}", config.tenant));
        std::fs::create_dir_all(dir.join("keys")).unwrap();
        std::fs::write(dir.join("config.json"), serde_json::to_vec(config).unwrap()).unwrap();
        std::fs::write(dir.join("keys/k1"), SECRET).unwrap();
        let database: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(pool)
            .await
            .unwrap();
        let base = std::env::var("DATABASE_URL").unwrap();
        let database_url = format!("{}/{database}", &base[..base.rfind('/').unwrap()]);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self {
            dir,
            port,
            database_url,
            with_broker,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn spawn(&self) -> tokio::process::Child {
        self.spawn_with(&[])
    }

    /// [`Self::spawn`] with further `serve` arguments.
    pub fn spawn_with(&self, extra: &[&str]) -> tokio::process::Child {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_anchorpipe-ingest"));
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)])
            .args(extra)
            .arg("--config")
            .arg(self.dir.join("config.json"))
            .arg("--keys-dir")
            .arg(self.dir.join("keys"))
            .env("DATABASE_URL", &self.database_url)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        if self.with_broker {
            command.env("AMQP_URL", amqp_url());
        } else {
            command.env_remove("AMQP_URL");
        }
        command.spawn().unwrap()
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let request = hyper::Request::get(self.url("/readyz"))
                .body(http_body_util::Full::default())
                .unwrap();
            if let Ok(response) = client.request(request).await
                && response.status() == StatusCode::OK
            {
                return;
            }
            assert!(Instant::now() < deadline, "ingest never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for IngestProcess {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
