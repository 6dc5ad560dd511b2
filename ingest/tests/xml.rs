//! JUnit XML posted straight to `POST /api/ingestion`: authenticated over the XML bytes,
//! converted, validated and stored like JSON (the XML kept beside the converted report),
//! delivered to the tenant's queue; and the key id that verified recorded for the
//! operator. Real PostgreSQL and RabbitMQ (`scripts/services.sh env`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anchorpipe_ingest::signature::{sign_legacy, sign_webhook};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use uuid::Uuid;

use support::*;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// pytest's `--junitxml` output, shortened: two passes, one failure, one skip.
const PYTEST_XML: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<testsuites name="pytest tests"><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="4" time="0.031" timestamp="2026-11-29T18:02:11.123456+00:00" hostname="ci">
<testcase classname="tests.test_sample" name="test_adds" time="0.001" />
<testcase classname="tests.test_sample" name="test_subtracts" time="0.002" />
<testcase classname="tests.test_sample" name="test_divides" time="0.004"><failure message="ZeroDivisionError: division by zero">def test_divides():
&gt;       assert 1 / 0
E       ZeroDivisionError: division by zero</failure></testcase>
<testcase classname="tests.test_sample" name="test_later" time="0.000"><skipped type="pytest.skip" message="not yet">tests/test_sample.py:20: not yet</skipped></testcase>
</testsuite></testsuites>
"#;

fn xml_request(repo: Uuid, query: &str, body: &str, signature: &str) -> Request<Body> {
    Request::post(format!("/api/ingestion{query}"))
        .header("content-type", "application/xml")
        .header("authorization", format!("Bearer {repo}"))
        .header("x-fr-sig", signature)
        .body(Body::from(body.to_owned()))
        .unwrap()
}

async fn send(app: &axum::Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn query(run_id: &str) -> String {
    format!("?commit_sha={COMMIT}&run_id={run_id}&branch=main")
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn xml_posted_directly_is_stored_and_delivered_like_json(pool: PgPool) {
    let config = tenant_config();
    let repo = config.repositories[0];
    declare(&config.broker).await;
    let state = state(pool.clone(), config.clone());
    let app = router(&state);
    let shutdown = CancellationToken::new();
    let relay = start_relay(&pool, &config, &state, fast_relay(), &shutdown);

    let signature = sign_legacy(SECRET, PYTEST_XML.as_bytes());
    let (status, json) = send(
        &app,
        xml_request(repo, &query("xml-1"), PYTEST_XML, &signature),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["summary"]["tests_parsed"], 4);
    let ingestion_id = json["runId"].as_str().unwrap().to_owned();

    // Stored: the payload is the converted JSON report, the XML is kept as received.
    let (payload, original, content_type, framework, branch): (
        String,
        String,
        String,
        String,
        Option<String>,
    ) = sqlx::query_as(
        "SELECT payload, original_body, original_content_type, framework, branch
         FROM ingestions WHERE id = $1::uuid",
    )
    .bind(&ingestion_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(original, PYTEST_XML);
    assert_eq!(content_type, "application/xml");
    assert_eq!(framework, "pytest");
    assert_eq!(branch.as_deref(), Some("main"));
    let report: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(report["repo_id"], repo.to_string());
    assert_eq!(report["commit_sha"], COMMIT);
    let statuses: Vec<&str> = report["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["pass", "pass", "fail", "skip"]);
    // The same tests the anchorpipe CLI makes of the same file.
    let cli = anchorpipe_sender::convert_str(
        "junit.xml",
        PYTEST_XML,
        &anchorpipe_sender::ConvertOptions {
            default_started_at: chrono::Utc::now(),
            max_tests: None,
        },
    )
    .unwrap();
    assert_eq!(report["tests"], serde_json::to_value(&cli.tests).unwrap());
    assert!(
        report["tests"][2]["failureDetails"]
            .as_str()
            .unwrap()
            .contains("ZeroDivisionError")
    );
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'accepted' AND ingestion_id = $1::uuid",
    )
    .bind(&ingestion_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(audited, 1);

    // Delivered: the usual event, for the converted report.
    let taken = take_until(
        &config.broker.queue,
        &HashSet::from([ingestion_id.clone()]),
        Duration::from_secs(15),
    )
    .await;
    let message = taken
        .iter()
        .find(|t| t.message_id == ingestion_id)
        .expect("the XML report reached the tenant's queue");
    assert_eq!(message.body["type"], "test.run.received");
    assert_eq!(message.body["payload"]["testCount"], 4);
    assert_eq!(message.body["payload"]["framework"], "pytest");
    assert_eq!(message.body["payload"]["branch"], "main");

    // The same XML with the same fields again is a duplicate of the first.
    let (status, again) = send(
        &app,
        xml_request(repo, &query("xml-1"), PYTEST_XML, &signature),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["isDuplicate"], true);
    assert_eq!(again["runId"], ingestion_id.as_str());
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM ingestions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);

    shutdown.cancel();
    relay.await.unwrap();
    delete(&config.broker).await;
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn fields_may_come_from_headers_and_text_xml_is_xml_too(pool: PgPool) {
    let config = tenant_config();
    let repo = config.repositories[0];
    let app = router(&state(pool.clone(), config));
    let timestamp = chrono::Utc::now().timestamp();
    let request = Request::post("/api/ingestion")
        .header("content-type", "text/xml; charset=utf-8")
        .header("authorization", format!("Bearer {repo}"))
        .header("webhook-id", "msg_1")
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            sign_webhook(SECRET, "msg_1", timestamp, PYTEST_XML.as_bytes()),
        )
        .header("x-anchorpipe-commit-sha", COMMIT)
        .header("x-anchorpipe-run-id", "xml-headers")
        .header("x-anchorpipe-framework", "junit")
        .body(Body::from(PYTEST_XML))
        .unwrap();
    let (status, json) = send(&app, request).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let (framework, content_type): (String, String) =
        sqlx::query_as("SELECT framework, original_content_type FROM ingestions")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        framework, "junit",
        "a given framework wins over the producer's"
    );
    assert_eq!(content_type, "text/xml; charset=utf-8");
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn malformed_xml_is_400_naming_the_line(pool: PgPool) {
    let config = tenant_config();
    let repo = config.repositories[0];
    let app = router(&state(pool.clone(), config));
    let broken = "<testsuite name=\"s\">\n  <testcase name=\"a\">\n</testsuite>\n";
    let (status, json) = send(
        &app,
        xml_request(
            repo,
            &query("bad"),
            broken,
            &sign_legacy(SECRET, broken.as_bytes()),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
    assert_eq!(json["line"], 3, "{json}");
    let error = json["error"].as_str().unwrap();
    assert!(
        error.starts_with("Invalid XML payload: line 3: malformed XML"),
        "{error}"
    );

    // Well-formed, but not JUnit.
    let html = "<html><body/></html>";
    let (status, json) = send(
        &app,
        xml_request(
            repo,
            &query("html"),
            html,
            &sign_legacy(SECRET, html.as_bytes()),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
    assert!(json["error"].as_str().unwrap().contains("not JUnit XML"));

    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM ingestions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    let rejected: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'rejected' AND reason = 'invalid_xml'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rejected, 2);
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn missing_or_invalid_fields_are_400_naming_each(pool: PgPool) {
    let config = tenant_config();
    let repo = config.repositories[0];
    let app = router(&state(pool.clone(), config));
    let signature = sign_legacy(SECRET, PYTEST_XML.as_bytes());

    let (status, json) = send(&app, xml_request(repo, "", PYTEST_XML, &signature)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
    let paths: Vec<&str> = json["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["commit_sha", "run_id"], "{json}");
    assert!(
        json["details"][0]["message"]
            .as_str()
            .unwrap()
            .contains("?commit_sha=")
    );

    // A typo is named as such.
    let (status, json) = send(
        &app,
        xml_request(repo, "?commit=abc&run_id=r", PYTEST_XML, &signature),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
    assert_eq!(json["details"][0]["path"], "commit");
    assert_eq!(json["details"][1]["path"], "commit_sha");

    // Present but invalid: the schema's own message, as for JSON.
    let (status, json) = send(
        &app,
        xml_request(repo, "?commit_sha=abc&run_id=r", PYTEST_XML, &signature),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
    assert_eq!(json["error"], "Invalid payload");
    assert_eq!(json["details"][0]["path"], "commit_sha", "{json}");
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn a_signature_over_other_bytes_is_401(pool: PgPool) {
    let config = tenant_config();
    let repo = config.repositories[0];
    let app = router(&state(pool.clone(), config));
    // Signed over the JSON the XML converts to, or over the XML with other whitespace:
    // the signature covers the body as sent, nothing else.
    let reformatted = PYTEST_XML.replace("\n", "\r\n");
    for signed_bytes in [reformatted.as_str(), "{}"] {
        let (status, json) = send(
            &app,
            xml_request(
                repo,
                &query("forged"),
                PYTEST_XML,
                &sign_legacy(SECRET, signed_bytes.as_bytes()),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{json}");
        assert_eq!(json["error"], "Invalid HMAC signature");
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM ingestions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn the_key_id_that_verified_is_recorded_once_per_interval(pool: PgPool) {
    let config = tenant_config();
    let tenant = config.tenant.clone();
    let repo = config.repositories[0];
    let app = router(&state(pool.clone(), config));
    let (status, json) = post(&app, repo, "usage-1").await;
    assert_eq!(status, StatusCode::OK, "{json}");

    // The write is in the background: wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        let row: Option<(String, chrono::DateTime<chrono::Utc>)> =
            sqlx::query_as("SELECT key_id, last_verified_at FROM key_usage WHERE tenant = $1")
                .bind(&tenant)
                .fetch_optional(&pool)
                .await
                .unwrap();
        if let Some(row) = row {
            break row;
        }
        assert!(Instant::now() < deadline, "key usage never recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(first.0, "k1");

    // A second request within the interval writes nothing more.
    let (status, _) = post(&app, repo, "usage-2").await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rows: Vec<(String, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT key_id, last_verified_at FROM key_usage")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows, vec![first]);

    // A failed signature records nothing (no row for another key id, no update).
    let body = support::report(repo, "usage-3");
    let request = Request::post("/api/ingestion")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {repo}"))
        .header("x-fr-sig", sign_legacy("whsec_other", body.as_bytes()))
        .body(Body::from(body))
        .unwrap();
    let (status, _) = send(&app, request).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// Both writes this feature adds run, in a cluster, as the tenant's minted login under
/// row-level security: storing the XML beside the report, and upserting key usage
/// (whose update path needs its own grant and policy). The login is made here by hand,
/// as the operator's database module does.
#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn a_tenant_login_stores_xml_and_records_key_usage_under_row_level_security(pool: PgPool) {
    let config = tenant_config();
    let repo = config.repositories[0];
    let login = format!("ap_xmltest_{}", &Uuid::new_v4().simple().to_string()[..12]);
    let password = Uuid::new_v4().simple().to_string();
    // Both names are generated hex above: nothing to inject.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {login} LOGIN PASSWORD '{password}' IN ROLE anchorpipe_tenant"
    )))
    .execute(&pool)
    .await
    .unwrap();
    for (sql, bind) in [
        (
            "INSERT INTO tenants (tenant, endpoint_namespace, endpoint_name, endpoint_uid)
             VALUES ($1, 'ns', 'ep', 'uid')",
            None,
        ),
        (
            "INSERT INTO tenant_logins (login, tenant) VALUES ($2, $1)",
            Some(login.as_str()),
        ),
    ] {
        let mut query = sqlx::query(sql).bind(&config.tenant);
        if let Some(bind) = bind {
            query = query.bind(bind);
        }
        query.execute(&pool).await.unwrap();
    }
    sqlx::query("INSERT INTO repository_owners (repo_id, tenant) VALUES ($1, $2)")
        .bind(repo)
        .bind(&config.tenant)
        .execute(&pool)
        .await
        .unwrap();
    let options = (*pool.connect_options())
        .clone()
        .username(&login)
        .password(&password);
    let tenant_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap();

    let app = router(&state(tenant_pool.clone(), config.clone()));
    let signature = sign_legacy(SECRET, PYTEST_XML.as_bytes());
    let (status, json) = send(
        &app,
        xml_request(repo, &query("as-tenant"), PYTEST_XML, &signature),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let original: String = sqlx::query_scalar("SELECT original_body FROM ingestions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(original, PYTEST_XML);

    // Insert, then the ON CONFLICT update path; another tenant's row is refused.
    anchorpipe_ingest::key_usage::write(&tenant_pool, &config.tenant, "k9")
        .await
        .unwrap();
    anchorpipe_ingest::key_usage::write(&tenant_pool, &config.tenant, "k9")
        .await
        .unwrap();
    assert!(
        anchorpipe_ingest::key_usage::write(&tenant_pool, "other.tenant", "k9")
            .await
            .is_err(),
        "row-level security refuses another tenant's usage"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT key_id FROM key_usage WHERE tenant = $1 ORDER BY key_id")
                .bind(&config.tenant)
                .fetch_all(&pool)
                .await
                .unwrap();
        if ids == ["k1", "k9"] {
            break;
        }
        assert!(Instant::now() < deadline, "{ids:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    tenant_pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE {login}")))
        .execute(&pool)
        .await
        .unwrap();
}
