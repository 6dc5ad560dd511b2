//! `POST /api/ingestion` against a real PostgreSQL: every row of contract 1.
//!
//! Each test gets a fresh, migrated database from `#[sqlx::test]` (DATABASE_URL must
//! point at a server where the user may create databases; the README's test command
//! sets that up).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anchorpipe_crds::config::{IngestConfig, Limit};
use anchorpipe_ingest::http::{AppState, DeliveryHealth, app};
use anchorpipe_ingest::keys::{Key, KeySet, KeyStore};
use anchorpipe_ingest::metrics::Metrics;
use anchorpipe_ingest::signature::{sign_legacy, sign_webhook};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt as _;
use uuid::Uuid;

const REPO: &str = "7d3c1c8e-6a4c-4b55-9d84-2f1c0f0b8f61";
const OTHER_REPO: &str = "0f6b7a52-93c5-4d2e-8f0e-1b2c3d4e5f60";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn config() -> IngestConfig {
    let mut config = IngestConfig::from_json(
        &json!({
            "tenant": "acme",
            "repositories": [REPO, OTHER_REPO],
            "rateLimit": {
                "perRepository": {"requestsPerMinute": 60000, "burst": 10000},
                "perEndpoint": {"requestsPerMinute": 60000, "burst": 10000}
            },
            "broker": {
                "exchange": "anchorpipe.reports",
                "routingKey": "tenant.acme.test-run",
                "queue": "anchorpipe.acme.reports",
                "deadLetterExchange": "anchorpipe.reports.dlx",
                "deadLetterQueue": "anchorpipe.acme.reports.dlq"
            }
        })
        .to_string(),
    )
    .unwrap();
    config.limits.max_body_bytes = 1024 * 1024;
    config.limits.max_in_flight_bytes = 64 * 1024 * 1024;
    config
}

fn keys() -> KeyStore {
    KeyStore::fixed(KeySet::new(vec![Key::from_secret("k1", SECRET)]))
}

fn router_with(pool: PgPool, config: IngestConfig, keys: KeyStore) -> (Router, Arc<AppState>) {
    let state = Arc::new(
        AppState::new(
            config,
            keys,
            pool,
            Arc::new(Metrics::new()),
            Arc::new(DeliveryHealth::default()),
        )
        .unwrap(),
    );
    (app(Arc::clone(&state)), state)
}

fn router(pool: PgPool) -> Router {
    router_with(pool, config(), keys()).0
}

fn report(run_id: &str) -> Value {
    json!({
        "repo_id": REPO,
        "commit_sha": "0123456789abcdef0123456789abcdef01234567",
        "run_id": run_id,
        "framework": "jest",
        "branch": "main",
        "environment": {"CI": "true"},
        "tests": [
            {"path": "src/a.test.ts", "name": "adds", "status": "pass", "durationMs": 12,
             "startedAt": "2026-11-28T17:43:00Z"},
            {"path": "src/a.test.ts", "name": "subtracts", "status": "fail",
             "startedAt": "2026-11-28T17:43:01Z", "failureDetails": "expected 1 got 2"}
        ]
    })
}

fn signed(body: &[u8]) -> Request<Body> {
    Request::post("/api/ingestion")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {REPO}"))
        .header("x-fr-sig", sign_legacy(SECRET, body))
        .body(Body::from(body.to_vec()))
        .unwrap()
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, body)
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn accepts_a_signed_report_and_stores_it_with_audit_and_outbox(pool: PgPool) {
    let app = router(pool.clone());
    let body = report("run-1").to_string();
    let (status, headers, json) = send(&app, signed(body.as_bytes())).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["message"], "Test report received");
    assert_eq!(
        json["summary"],
        json!({"tests_parsed": 2, "flaky_candidates": 0})
    );
    let run_id: Uuid = json["runId"].as_str().unwrap().parse().unwrap();
    assert!(json.get("isDuplicate").is_none());
    assert!(headers.contains_key("x-request-id"));
    assert_eq!(headers["x-ratelimit-limit"], "60000");
    assert!(headers.contains_key("x-ratelimit-remaining"));
    assert!(headers.contains_key("x-ratelimit-reset"));

    let (payload, test_count): (String, i32) =
        sqlx::query_as("SELECT payload, test_count FROM ingestions WHERE id = $1")
            .bind(run_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(payload, body, "the payload is kept exactly as sent");
    assert_eq!(test_count, 2);
    let audit: Vec<(String, Option<Uuid>)> =
        sqlx::query_as("SELECT action, ingestion_id FROM audit_log")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(audit, vec![("accepted".to_owned(), Some(run_id))]);
    let (message, routing_key): (Value, String) =
        sqlx::query_as("SELECT message, routing_key FROM outbox WHERE ingestion_id = $1")
            .bind(run_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(routing_key, "tenant.acme.test-run");
    assert_eq!(message["type"], "test.run.received");
    assert_eq!(message["ingestionId"], json["runId"]);
    assert_eq!(message["payload"]["repoId"], REPO);
    assert_eq!(message["payload"]["testCount"], 2);
    assert_eq!(message["payload"]["branch"], "main");
    assert_eq!(message["payload"]["environment"], json!({"CI": "true"}));
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn echoes_the_client_request_id(pool: PgPool) {
    let app = router(pool.clone());
    let body = report("run-rid").to_string();
    let mut request = signed(body.as_bytes());
    request
        .headers_mut()
        .insert("x-request-id", "ci-job-42".parse().unwrap());
    let (status, headers, _) = send(&app, request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-request-id"], "ci-job-42");
    let stored: String = sqlx::query_scalar("SELECT request_id FROM audit_log")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, "ci-job-42");
    // Errors carry it too.
    let request = Request::post("/api/ingestion")
        .header("x-request-id", "ci-job-43")
        .body(Body::from("{}"))
        .unwrap();
    let (status, headers, _) = send(&app, request).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["x-request-id"], "ci-job-43");
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn a_duplicate_replays_the_original_response(pool: PgPool) {
    let app = router(pool.clone());
    let body = report("run-dup").to_string();
    let (_, _, first) = send(&app, signed(body.as_bytes())).await;
    // Same duplicate key, different other content: still a duplicate.
    let mut again = report("run-dup");
    again["branch"] = "other".into();
    let again = again.to_string();
    let (status, _, second) = send(&app, signed(again.as_bytes())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(second["isDuplicate"], true);
    assert_eq!(second["runId"], first["runId"]);
    assert_eq!(second["summary"], first["summary"]);
    assert_eq!(count(&pool, "SELECT count(*) FROM ingestions").await, 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox").await, 1);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM audit_log WHERE action = 'duplicate'"
        )
        .await,
        1
    );
    // A different framework is a different report.
    let mut other = report("run-dup");
    other["framework"] = "pytest".into();
    let other = other.to_string();
    let (_, _, third) = send(&app, signed(other.as_bytes())).await;
    assert!(third.get("isDuplicate").is_none());
    assert_eq!(count(&pool, "SELECT count(*) FROM ingestions").await, 2);
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn thirty_two_concurrent_identical_reports_store_one_row(pool: PgPool) {
    let app = router(pool.clone());
    let body = report("run-race").to_string();
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let app = app.clone();
            let body = body.clone();
            tokio::spawn(async move { send(&app, signed(body.as_bytes())).await })
        })
        .collect();
    let mut duplicates = 0;
    let mut run_ids = std::collections::HashSet::new();
    for task in tasks {
        let (status, _, json) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{json}");
        if json["isDuplicate"] == true {
            duplicates += 1;
        }
        run_ids.insert(json["runId"].as_str().unwrap().to_owned());
    }
    assert_eq!(duplicates, 31);
    assert_eq!(run_ids.len(), 1, "every response names the same stored run");
    assert_eq!(count(&pool, "SELECT count(*) FROM ingestions").await, 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox").await, 1);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM audit_log WHERE action = 'duplicate'"
        )
        .await,
        31
    );
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn invalid_json_and_invalid_payloads_are_400_with_every_problem(pool: PgPool) {
    let app = router(pool.clone());
    let (status, _, json) = send(&app, signed(b"{not json")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json, json!({"error": "Invalid JSON payload"}));

    let mut bad = report("run-bad");
    bad["commit_sha"] = "xyz".into();
    bad["framework"] = "nunit".into();
    bad["tests"][1]["status"] = "broken".into();
    bad["tests"][0]["startedAt"] = "2026-11-28".into();
    let bad = bad.to_string();
    let (status, _, json) = send(&app, signed(bad.as_bytes())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json["error"], "Invalid payload");
    let paths: Vec<&str> = json["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    for expected in [
        "commit_sha",
        "framework",
        "tests.1.status",
        "tests.0.startedAt",
    ] {
        assert!(
            paths.contains(&expected),
            "{expected} missing from {paths:?}"
        );
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM ingestions").await, 0);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM audit_log WHERE action = 'rejected'"
        )
        .await,
        2
    );
}

/// Every schema rule of contract 1 through the whole stack, invalid side (the valid
/// side of each is the accepted report above and the boundary cases here).
#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn each_schema_rule_is_enforced_end_to_end(pool: PgPool) {
    let app = router(pool.clone());
    let long = |n: usize| Value::from("x".repeat(n));
    let invalid: Vec<(&str, Value, Value)> = vec![
        ("repo_id", json!("/repo_id"), json!("not-a-uuid")),
        ("commit_sha", json!("/commit_sha"), json!("abc123")),
        ("run_id", json!("/run_id"), json!("")),
        ("run_id", json!("/run_id"), long(256)),
        ("framework", json!("/framework"), json!("nunit")),
        ("tests", json!("/tests"), json!([])),
        ("tests.0.path", json!("/tests/0/path"), long(501)),
        ("tests.0.name", json!("/tests/0/name"), json!("")),
        ("tests.0.status", json!("/tests/0/status"), json!("ok")),
        (
            "tests.0.durationMs",
            json!("/tests/0/durationMs"),
            json!(-5),
        ),
        (
            "tests.0.startedAt",
            json!("/tests/0/startedAt"),
            json!("17:43"),
        ),
        (
            "tests.0.failureDetails",
            json!("/tests/0/failureDetails"),
            long(10_001),
        ),
        ("tests.0.tags", json!("/tests/0/tags"), json!("slow")),
        ("tests.0.metadata", json!("/tests/0/metadata"), json!(3)),
        ("branch", json!("/branch"), long(256)),
        ("pull_request", json!("/pull_request"), long(256)),
        ("environment.k", json!("/environment"), json!({"k": 1})),
        ("metadata", json!("/metadata"), json!([1])),
        ("idempotency_key", json!("/idempotency_key"), long(256)),
    ];
    for (i, (path, pointer, value)) in invalid.into_iter().enumerate() {
        let mut body = report(&format!("run-rule-{i}"));
        let pointer = pointer.as_str().unwrap();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        body.pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .unwrap()
            .insert(key.to_owned(), value);
        let body = body.to_string();
        let (status, _, json) = send(&app, signed(body.as_bytes())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {json}");
        let paths: Vec<&str> = json["details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["path"].as_str().unwrap())
            .collect();
        assert!(paths.contains(&path), "{path} not in {paths:?}");
    }
    // Valid sides at the edges: all optional fields, maximum lengths.
    let mut edge = report("r".repeat(255).as_str());
    edge["pull_request"] = long(255);
    edge["idempotency_key"] = long(255);
    edge["metadata"] = json!({"nested": {"deep": [1, 2, 3]}});
    edge["tests"][0]["tags"] = json!(["a", "b"]);
    edge["tests"][0]["metadata"] = json!({"retry": 1});
    edge["tests"][0]["failureDetails"] = long(10_000);
    edge["tests"][0]["name"] = long(500);
    let edge = edge.to_string();
    let (status, _, json) = send(&app, signed(edge.as_bytes())).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(count(&pool, "SELECT count(*) FROM ingestions").await, 1);
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn repository_mismatch_is_403(pool: PgPool) {
    let app = router(pool.clone());
    let mut body = report("run-mismatch");
    body["repo_id"] = OTHER_REPO.into();
    let body = body.to_string();
    let (status, _, json) = send(&app, signed(body.as_bytes())).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(json, json!({"error": "Repository ID mismatch"}));
    assert_eq!(count(&pool, "SELECT count(*) FROM ingestions").await, 0);
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn authentication_failures_are_401_and_aggregated_in_the_audit_log(pool: PgPool) {
    let (app, state) = router_with(pool.clone(), config(), keys());
    let body = report("run-auth").to_string();
    let good = sign_legacy(SECRET, body.as_bytes());
    type Case = (Vec<(&'static str, String)>, &'static str, &'static str);
    let cases: Vec<Case> = vec![
        (
            vec![("x-fr-sig", good.clone())],
            "Missing Authorization header with Bearer token",
            "no bearer",
        ),
        (
            vec![("authorization", format!("Bearer {REPO}"))],
            "Missing X-FR-Sig header",
            "no signature",
        ),
        (
            vec![
                ("authorization", format!("Bearer {}", Uuid::new_v4())),
                ("x-fr-sig", good.clone()),
            ],
            "No active HMAC secrets found for repository",
            "unknown repository",
        ),
        (
            vec![
                ("authorization", format!("Bearer {REPO}")),
                ("x-fr-sig", sign_legacy("wrong", body.as_bytes())),
            ],
            "Invalid HMAC signature",
            "wrong key",
        ),
        (
            vec![
                ("authorization", format!("Bearer {REPO}")),
                ("x-fr-sig", "not-hex".to_owned()),
            ],
            "Invalid HMAC signature",
            "malformed signature",
        ),
    ];
    for (headers, message, what) in cases {
        let mut request =
            Request::post("/api/ingestion").header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let (status, _, json) = send(&app, request.body(Body::from(body.clone())).unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(json, json!({"error": message}), "{what}");
    }
    // A tampered body with the original signature.
    let tampered = body.replace("run-auth", "run-evil");
    let request = Request::post("/api/ingestion")
        .header("authorization", format!("Bearer {REPO}"))
        .header("x-fr-sig", good)
        .body(Body::from(tampered))
        .unwrap();
    let (status, _, _) = send(&app, request).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(count(&pool, "SELECT count(*) FROM ingestions").await, 0);

    // Nothing was written per request; one flush writes one row per reason.
    assert_eq!(count(&pool, "SELECT count(*) FROM audit_log").await, 0);
    let written = state.audit.flush(&pool, "acme").await.unwrap();
    assert_eq!(written, 4);
    let rows: Vec<(String, i32)> = sqlx::query_as(
        "SELECT reason, occurrences FROM audit_log WHERE action = 'auth_failed' ORDER BY reason",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            ("invalid_signature".to_owned(), 3),
            ("missing_signature".to_owned(), 1),
            ("missing_token".to_owned(), 1),
            ("unknown_repository".to_owned(), 1),
        ]
    );
}

fn webhook_request(body: &str, id: &str, timestamp: i64, signature: &str) -> Request<Body> {
    Request::post("/api/ingestion")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {REPO}"))
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(Body::from(body.to_owned()))
        .unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn standard_webhooks_signatures_with_replay_window(pool: PgPool) {
    let app = router(pool.clone());
    let body = report("run-wh").to_string();
    let ts = now();
    let good = sign_webhook(SECRET, "msg_1", ts, body.as_bytes());
    let (status, _, json) = send(&app, webhook_request(&body, "msg_1", ts, &good)).await;
    assert_eq!(status, StatusCode::OK, "{json}");

    // Several signatures (a client signing with old and new key during rotation).
    let body2 = report("run-wh-2").to_string();
    let sigs = format!(
        "v1,AAAA {} {}",
        sign_webhook("whsec_b2xka2V5b2xka2V5", "msg_2", ts, body2.as_bytes()),
        sign_webhook(SECRET, "msg_2", ts, body2.as_bytes())
    );
    let (status, _, _) = send(&app, webhook_request(&body2, "msg_2", ts, &sigs)).await;
    assert_eq!(status, StatusCode::OK);

    for (what, stamp) in [("stale", ts - 600), ("future", ts + 600)] {
        let body = report(&format!("run-wh-{what}")).to_string();
        let sig = sign_webhook(SECRET, "msg_3", stamp, body.as_bytes());
        let (status, _, json) = send(&app, webhook_request(&body, "msg_3", stamp, &sig)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(
            json["error"],
            "webhook-timestamp is outside the accepted tolerance"
        );
    }
    // Tampered body, and a signature for another message id.
    let (status, _, _) = send(
        &app,
        webhook_request(&body.replace("run-wh", "run-xx"), "msg_1", ts, &good),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = send(&app, webhook_request(&body, "msg_9", ts, &good)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(count(&pool, "SELECT count(*) FROM ingestions").await, 2);
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn legacy_scheme_can_be_turned_off(pool: PgPool) {
    let mut config = config();
    config.signatures.legacy = false;
    let (app, _) = router_with(pool, config, keys());
    let body = report("run-off").to_string();
    let (status, _, json) = send(&app, signed(body.as_bytes())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(json["error"].as_str().unwrap().contains("disabled"));
    let ts = now();
    let sig = sign_webhook(SECRET, "m", ts, body.as_bytes());
    let (status, _, _) = send(&app, webhook_request(&body, "m", ts, &sig)).await;
    assert_eq!(status, StatusCode::OK);
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn a_rotated_key_directory_is_picked_up_without_restart(pool: PgPool) {
    let dir = std::env::temp_dir().join(format!("ingest-keys-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("k-old"), "old-secret-0123456789\n").unwrap();
    let store = KeyStore::load(&dir).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let watcher = store.watch(dir.clone(), Duration::from_millis(20), shutdown.clone());
    let (app, _) = router_with(pool, config(), store.clone());

    let post = |secret: &str, run: &str| {
        let body = report(run).to_string();
        Request::post("/api/ingestion")
            .header("authorization", format!("Bearer {REPO}"))
            .header("x-fr-sig", sign_legacy(secret, body.as_bytes()))
            .body(Body::from(body))
            .unwrap()
    };
    assert_eq!(
        send(&app, post("old-secret-0123456789", "r1")).await.0,
        StatusCode::OK
    );
    // Rotation: the new key is added; both verify during the grace period.
    std::fs::write(dir.join("k-new"), "new-secret-0123456789").unwrap();
    wait_for(|| store.current().keys().len() == 2).await;
    assert_eq!(
        send(&app, post("new-secret-0123456789", "r2")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send(&app, post("old-secret-0123456789", "r3")).await.0,
        StatusCode::OK
    );
    // Grace over: the old key is removed and refused.
    std::fs::remove_file(dir.join("k-old")).unwrap();
    wait_for(|| store.current().keys().len() == 1).await;
    assert_eq!(
        send(&app, post("old-secret-0123456789", "r4")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(&app, post("new-secret-0123456789", "r5")).await.0,
        StatusCode::OK
    );
    shutdown.cancel();
    watcher.await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

async fn wait_for(condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "condition not reached in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn bodies_over_the_limit_are_413_with_and_without_content_length(pool: PgPool) {
    let app = router(pool.clone());
    let limit = config().limits.max_body_bytes as usize;
    let big = vec![b' '; limit + 1];
    // Declared too large: refused before authentication and before reading.
    let request = Request::post("/api/ingestion")
        .header("content-length", big.len().to_string())
        .body(Body::from(big.clone()))
        .unwrap();
    let (status, _, json) = send(&app, request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .contains("Payload too large")
    );

    // Streamed without Content-Length: cut off once the limit is passed.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let request = Request::post("/api/ingestion")
        .header("authorization", format!("Bearer {REPO}"))
        .header("x-fr-sig", sign_legacy(SECRET, &big))
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap();
    let (status, _, _) = send(&app, request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // An endless stream is cut off too, without reading it all.
    let endless = futures_util::stream::repeat_with(|| Ok::<_, std::io::Error>(vec![b' '; 65536]));
    let request = Request::post("/api/ingestion")
        .header("authorization", format!("Bearer {REPO}"))
        .header("x-fr-sig", "00")
        .body(Body::from_stream(endless))
        .unwrap();
    let (status, _, _) = send(&app, request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn rate_limited_requests_get_429_with_headers(pool: PgPool) {
    let mut config = config();
    config.rate_limit.per_repository = Limit {
        requests_per_minute: 60,
        burst: 2,
    };
    let (app, state) = router_with(pool.clone(), config, keys());
    for i in 0..2 {
        let body = report(&format!("run-rl-{i}")).to_string();
        let (status, headers, _) = send(&app, signed(body.as_bytes())).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            headers["x-ratelimit-remaining"],
            (1 - i).to_string().as_str()
        );
    }
    let body = report("run-rl-x").to_string();
    let (status, headers, json) = send(&app, signed(body.as_bytes())).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(json["error"]["code"], "RATE_LIMIT_EXCEEDED");
    assert!(json["error"]["message"].is_string());
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(headers["x-ratelimit-limit"], "60");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    let reset: u64 = headers["x-ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(reset >= chrono::Utc::now().timestamp() as u64);
    // Another repository of the same endpoint is not affected.
    let mut other = report("run-rl-other");
    other["repo_id"] = OTHER_REPO.into();
    let other = other.to_string();
    let request = Request::post("/api/ingestion")
        .header("authorization", format!("Bearer {OTHER_REPO}"))
        .header("x-fr-sig", sign_legacy(SECRET, other.as_bytes()))
        .body(Body::from(other))
        .unwrap();
    assert_eq!(send(&app, request).await.0, StatusCode::OK);
    state.audit.flush(&pool, "acme").await.unwrap();
    assert_eq!(
        count(
            &pool,
            "SELECT sum(occurrences) FROM audit_log WHERE action = 'rate_limited'"
        )
        .await,
        1
    );
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn backlog_over_its_cap_is_503_with_retry_after(pool: PgPool) {
    let mut config = config();
    config.outbox.max_backlog_rows = 10;
    let (app, state) = router_with(pool.clone(), config, keys());
    state
        .delivery
        .backlog_rows
        .store(10, std::sync::atomic::Ordering::Relaxed);
    let body = report("run-backlog").to_string();
    let (status, headers, json) = send(&app, signed(body.as_bytes())).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "30");
    assert!(json["error"].as_str().unwrap().contains("backlog"));
    assert_eq!(count(&pool, "SELECT count(*) FROM ingestions").await, 0);
}

#[tokio::test]
async fn database_down_is_503_within_a_bounded_time_and_not_ready() {
    // Nothing listens on this port: every connection attempt is refused.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy("postgres://nobody:nothing@127.0.0.1:1/none")
        .unwrap();
    let app = router(pool);
    let body = report("run-down").to_string();
    let started = Instant::now();
    let (status, headers, json) = send(&app, signed(body.as_bytes())).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{json}");
    assert!(headers.contains_key("retry-after"));
    assert!(started.elapsed() < Duration::from_secs(10));
    let (status, _, json) = send(&app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json["database"], false);
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn health_readiness_and_metrics(pool: PgPool) {
    let app = router(pool.clone());
    let (status, _, _) = send(&app, Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, json) = send(&app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["database"], true);

    let body = report("run-metrics").to_string();
    send(&app, signed(body.as_bytes())).await;
    send(&app, signed(body.as_bytes())).await;
    send(&app, signed(b"nope")).await;
    let response = app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    for line in [
        "anchorpipe_ingest_requests_total{outcome=\"accepted\"} 1",
        "anchorpipe_ingest_requests_total{outcome=\"duplicate\"} 1",
        "anchorpipe_ingest_requests_total{outcome=\"invalid\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing in:\n{text}");
    }
    assert!(text.contains("anchorpipe_ingest_request_duration_seconds_bucket"));
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn the_audit_log_is_append_only(pool: PgPool) {
    let app = router(pool.clone());
    let body = report("run-audit").to_string();
    send(&app, signed(body.as_bytes())).await;
    let update = sqlx::query("UPDATE audit_log SET reason = 'x'")
        .execute(&pool)
        .await;
    assert!(update.unwrap_err().to_string().contains("append-only"));
    let delete = sqlx::query("DELETE FROM audit_log").execute(&pool).await;
    assert!(delete.unwrap_err().to_string().contains("append-only"));
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn the_in_flight_byte_budget_bounds_memory_with_503(pool: PgPool) {
    let mut config = config();
    config.limits.max_body_bytes = 512 * 1024;
    config.limits.max_in_flight_bytes = 512 * 1024;
    let state = Arc::new({
        let mut state = AppState::new(
            config,
            keys(),
            pool,
            Arc::new(Metrics::new()),
            Arc::new(DeliveryHealth::default()),
        )
        .unwrap();
        state.budget_wait = Duration::from_millis(200);
        state
    });
    let app = app(Arc::clone(&state));
    // A slow upload holds what it has sent so far (not what it declared) while it
    // trickles in: here nearly the whole budget.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let slow = Request::post("/api/ingestion")
        .header("authorization", format!("Bearer {REPO}"))
        .header("x-fr-sig", "00")
        .header("content-length", (512 * 1024).to_string())
        .body(Body::from_stream(stream))
        .unwrap();
    let slow = tokio::spawn(app.clone().oneshot(slow));
    tx.send(Ok(vec![b' '; 500 * 1024])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let body = report("run-budget").to_string();
    let (status, headers, json) = send(&app, signed(body.as_bytes())).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{json}");
    assert_eq!(headers["retry-after"], "5");
    assert!(json["error"].as_str().unwrap().contains("in flight"));

    // Once the slow upload ends, its budget is returned and reports are taken again.
    drop(tx);
    let _ = slow.await.unwrap();
    let (status, _, _) = send(&app, signed(body.as_bytes())).await;
    assert_eq!(status, StatusCode::OK);
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn many_bad_signatures_never_lock_out_the_repositorys_correctly_signed_reports(pool: PgPool) {
    let (app, state) = router_with(pool, config(), keys());
    let body = report("run-guess").to_string();
    let bad = sign_legacy("guessed-key", body.as_bytes());
    let post = |sig: &str, body: Body| {
        Request::post("/api/ingestion")
            .header("authorization", format!("Bearer {REPO}"))
            .header("x-fr-sig", sig)
            .body(body)
            .unwrap()
    };
    let allowance = state
        .config
        .protection
        .failed_signatures_per_source_per_minute;
    for _ in 0..allowance + 10 {
        let (status, _, _) = send(&app, post(&bad, Body::from(body.clone()))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // Past the allowance forged requests go through the narrow lane, still 401 ...
    let (status, _, _) = send(&app, post(&bad, Body::from(body.clone()))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(state.metrics.unverified_lane.get() >= 1);
    // ... and the repository's own correctly signed report still gets its normal answer.
    let (status, _, json) = send(&app, signed(body.as_bytes())).await;
    assert_eq!(status, StatusCode::OK, "{json}");
}
