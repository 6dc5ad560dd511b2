//! Property test: whatever a correctly signed client sends — arbitrary bytes, arbitrary
//! JSON, or a valid report with any field replaced by arbitrary JSON — the endpoint
//! answers without a 5xx and without panicking (a panic would surface as a 500 from
//! the catch-panic layer), against a real PostgreSQL, so storage is exercised too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use anchorpipe_ingest::http::{AppState, DeliveryHealth, app};
use anchorpipe_ingest::keys::{Key, KeySet, KeyStore};
use anchorpipe_ingest::metrics::Metrics;
use anchorpipe_ingest::signature::sign_legacy;
use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt as _;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt as _;
use uuid::Uuid;

const SECRET: &str = "fuzz-secret";

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const POINTERS: &[&str] = &[
    "/repo_id",
    "/commit_sha",
    "/run_id",
    "/framework",
    "/tests",
    "/tests/0",
    "/tests/0/path",
    "/tests/0/name",
    "/tests/0/status",
    "/tests/0/durationMs",
    "/tests/0/startedAt",
    "/tests/0/failureDetails",
    "/tests/0/tags",
    "/tests/0/metadata",
    "/branch",
    "/pull_request",
    "/environment",
    "/metadata",
    "/idempotency_key",
];

fn valid_report(repo: Uuid, run: u64) -> Value {
    json!({
        "repo_id": repo,
        "commit_sha": "0123456789abcdef0123456789abcdef01234567",
        "run_id": format!("fuzz-{run}"),
        "framework": "pytest",
        "tests": [{"path": "t.py", "name": "t", "status": "pass",
                   "startedAt": "2026-11-28T00:00:00Z"}]
    })
}

fn mutated(repo: Uuid, run: u64, pointer: &str, value: Value) -> Value {
    let mut report = valid_report(repo, run);
    if let Some((parent, key)) = pointer.rsplit_once('/')
        && let Some(target) = report.pointer_mut(parent)
    {
        match target {
            Value::Object(map) => {
                map.insert(key.to_owned(), value);
            }
            Value::Array(items) => {
                if let Some(slot) = key.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                    *slot = value;
                }
            }
            _ => {}
        }
    }
    report
}

fn sample<S: Strategy>(runner: &mut TestRunner, strategy: &S, n: usize) -> Vec<S::Value> {
    (0..n)
        .map(|_| strategy.new_tree(runner).unwrap().current())
        .collect()
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn arbitrary_input_never_yields_a_server_error(pool: PgPool) {
    let repo = Uuid::new_v4();
    let mut config = support::tenant_config();
    config.repositories = vec![repo];
    let state = AppState::new(
        config,
        KeyStore::fixed(KeySet::new(vec![Key::from_secret("k", SECRET)])),
        pool.clone(),
        Arc::new(Metrics::new()),
        Arc::new(DeliveryHealth::default()),
    )
    .unwrap();
    let app = app(Arc::new(state));

    let mut runner = TestRunner::default();
    let mut bodies: Vec<Vec<u8>> = sample(
        &mut runner,
        &prop::collection::vec(any::<u8>(), 0..512),
        300,
    );
    bodies.extend(
        sample(&mut runner, &arb_json(), 300)
            .into_iter()
            .map(|v| v.to_string().into_bytes()),
    );
    let mutations = sample(
        &mut runner,
        &(prop::sample::select(POINTERS), arb_json()),
        400,
    );
    bodies.extend(
        mutations
            .into_iter()
            .enumerate()
            .map(|(i, (pointer, value))| {
                mutated(repo, i as u64, pointer, value)
                    .to_string()
                    .into_bytes()
            }),
    );

    let mut statuses = std::collections::BTreeMap::new();
    for body in bodies {
        let request = Request::post("/api/ingestion")
            .header("authorization", format!("Bearer {repo}"))
            .header("x-fr-sig", sign_legacy(SECRET, &body))
            .body(Body::from(body.clone()))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert!(
            status.as_u16() < 500,
            "status {status} for body {:?}: {}",
            String::from_utf8_lossy(&body),
            String::from_utf8_lossy(&bytes)
        );
        *statuses.entry(status.as_u16()).or_insert(0u32) += 1;
    }
    // The generators must reach both sides: refusals and stored reports.
    assert!(statuses.get(&400).copied().unwrap_or(0) > 0, "{statuses:?}");
    assert!(statuses.get(&200).copied().unwrap_or(0) > 0, "{statuses:?}");
    eprintln!("fuzz statuses: {statuses:?}");
}
