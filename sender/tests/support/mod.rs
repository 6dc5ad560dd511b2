//! A real ingest (the service's router, served on a loopback port, storing into a fresh
//! PostgreSQL database per test) and the real `anchorpipe` binary run against it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anchorpipe_crds::config::{BrokerTopology, IngestConfig, Limit, RateLimitConfig};
use anchorpipe_ingest::http::{AppState, DeliveryHealth, app};
use anchorpipe_ingest::keys::{Key, KeySet, KeyStore};
use anchorpipe_ingest::metrics::Metrics;
use sqlx::PgPool;
use uuid::Uuid;

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

pub struct Ingest {
    pub url: String,
    pub repo: Uuid,
    pub pool: PgPool,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A tenant with one repository and generous limits, unless `tweak` says otherwise.
pub async fn start(pool: PgPool, tweak: impl FnOnce(&mut IngestConfig)) -> Ingest {
    let tenant = format!("t{}", &Uuid::new_v4().simple().to_string()[..12]);
    let repo = Uuid::new_v4();
    let generous = Limit {
        requests_per_minute: 1_000_000,
        burst: 100_000,
    };
    let mut config = IngestConfig {
        broker: BrokerTopology::for_tenant(&tenant),
        tenant,
        repositories: vec![repo],
        signatures: Default::default(),
        rate_limit: RateLimitConfig {
            per_repository: generous,
            per_endpoint: generous,
        },
        limits: Default::default(),
        outbox: Default::default(),
        protection: Default::default(),
        store: Default::default(),
    };
    tweak(&mut config);
    let state = AppState::new(
        config,
        KeyStore::fixed(KeySet::new(vec![Key::from_secret("k1", SECRET)])),
        pool.clone(),
        Arc::new(Metrics::new()),
        Arc::new(DeliveryHealth::default()),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app(Arc::new(state)).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    Ingest {
        url,
        repo,
        pool,
        server,
    }
}

/// What a run of the CLI gave.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_anchorpipe")
}

/// Runs `anchorpipe` with exactly `env` as its environment (no variables of the machine
/// running the tests leak in, so no CI is detected unless a test says so).
pub async fn anchorpipe(args: &[&str], env: &HashMap<&str, String>) -> Run {
    let started = Instant::now();
    let output = tokio::process::Command::new(binary())
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .await
        .unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

impl Ingest {
    /// The variables a pipeline sets for the CLI.
    pub fn env(&self) -> HashMap<&'static str, String> {
        HashMap::from([
            ("ANCHORPIPE_URL", self.url.clone()),
            ("ANCHORPIPE_REPO_ID", self.repo.to_string()),
            ("ANCHORPIPE_KEY", SECRET.to_owned()),
        ])
    }

    /// Stored reports: (run_id, framework, branch, pull_request, test_count), by run id.
    pub async fn stored(&self) -> Vec<(String, String, Option<String>, Option<String>, i32)> {
        sqlx::query_as(
            "SELECT run_id, framework, branch, pull_request, test_count FROM ingestions \
             WHERE repo_id = $1 ORDER BY run_id",
        )
        .bind(self.repo)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    /// One stored report's payload, as sent.
    pub async fn payload(&self, run_id: &str) -> serde_json::Value {
        let text: String =
            sqlx::query_scalar("SELECT payload FROM ingestions WHERE repo_id = $1 AND run_id = $2")
                .bind(self.repo)
                .bind(run_id)
                .fetch_one(&self.pool)
                .await
                .unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/junit")
        .join(name)
}

/// A scratch directory for one test.
pub fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("anchorpipe-sender-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
