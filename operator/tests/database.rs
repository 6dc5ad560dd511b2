//! Tenant isolation in the real PostgreSQL: claims made by the operator's
//! [`TenantDb`], and what a minted tenant login can and cannot do, checked by connecting
//! as that login.
//!
//! Each test gets a fresh, migrated database from `#[sqlx::test]` (DATABASE_URL must
//! name a role with CREATEDB and CREATEROLE: `eval "$(scripts/services.sh env)"`). Roles
//! are cluster-wide, so every tenant name carries a random suffix and every test
//! releases its tenants (dropping their logins) at the end. The ingest service's own
//! code runs as a tenant login against RabbitMQ at AMQP_URL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use anchorpipe_crds::config::{BrokerTopology, IngestConfig, Limit, RateLimitConfig, StoreConfig};
use anchorpipe_ingest::commit::{CommitError, GroupCommit};
use anchorpipe_ingest::http::{AppState, DeliveryHealth, app};
use anchorpipe_ingest::keys::{Key, KeySet, KeyStore};
use anchorpipe_ingest::metrics::Metrics;
use anchorpipe_ingest::relay::{self, Relay, RelaySettings};
use anchorpipe_ingest::report::ReportHeader;
use anchorpipe_ingest::store::{self, NewReport, RequestMeta, Stored, Submission};
use anchorpipe_operator::accounts::{Accounts as _, Grant};
use anchorpipe_operator::broker_users::{BrokerUserError, BrokerUsers, TenantGrant};
use anchorpipe_operator::database::{
    Claimant, Error, RepositoryClaims, TenantClaim, TenantDb, login_name, mint_password,
    tenant_database_url,
};
use anchorpipe_operator::platform_accounts::PlatformAccounts;
use axum::body::Body;
use futures_util::future::BoxFuture;
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use lapin::options::ConfirmSelectOptions;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection as _, PgConnection, PgPool};
use tower::ServiceExt as _;
use uuid::Uuid;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A tenant id that is a valid DNS label and unique across concurrent test runs.
fn unique_tenant() -> String {
    format!("t{}", &Uuid::new_v4().simple().to_string()[..12])
}

fn claimant(tenant: &str) -> Claimant {
    Claimant {
        namespace: format!("ns-{tenant}"),
        name: "endpoint".to_owned(),
        uid: Uuid::new_v4().to_string(),
    }
}

/// The owner's URL for the test's own database (`#[sqlx::test]` made it).
async fn owner_url(pool: &PgPool) -> String {
    let (database,): (String,) = sqlx::query_as("SELECT current_database()")
        .fetch_one(pool)
        .await
        .unwrap();
    let mut url = url::Url::parse(&std::env::var("DATABASE_URL").unwrap()).unwrap();
    url.set_path(&database);
    url.to_string()
}

/// A claimed tenant with repositories and a minted login.
struct Tenant {
    name: String,
    who: Claimant,
    login: String,
    url: String,
}

impl Tenant {
    async fn new(db: &TenantDb, repos: &[Uuid]) -> Tenant {
        let name = unique_tenant();
        let who = claimant(&name);
        assert_eq!(
            db.claim_tenant(&name, &who).await.unwrap(),
            TenantClaim::Ours
        );
        let claims = db.claim_repositories(&name, repos).await.unwrap();
        assert_eq!(claims.owned, repos);
        let login = login_name(&name, "k1");
        let password = mint_password().unwrap();
        db.ensure_login(&name, &login, &password).await.unwrap();
        let url = tenant_database_url(&owner_url(db.pool()).await, &login, &password).unwrap();
        Tenant {
            name,
            who,
            login,
            url,
        }
    }

    async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&self.url)
            .await
            .unwrap()
    }

    async fn connection(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.unwrap()
    }

    async fn release(&self, db: &TenantDb) {
        db.release_tenant(&self.name, &self.who.uid).await.unwrap();
    }
}

fn header(repo: Uuid, run_id: &str) -> ReportHeader {
    ReportHeader {
        repo_id: repo,
        commit_sha: "0123456789abcdef0123456789abcdef01234567".to_owned(),
        run_id: run_id.to_owned(),
        framework: "junit".to_owned(),
        branch: None,
        pull_request: None,
        environment: None,
        metadata: None,
        idempotency_key: None,
    }
}

fn body(repo: Uuid, run_id: &str) -> String {
    serde_json::json!({
        "repo_id": repo,
        "commit_sha": "0123456789abcdef0123456789abcdef01234567",
        "run_id": run_id,
        "framework": "junit",
        "tests": [{"path": "A.java", "name": "a", "status": "pass",
                   "startedAt": "2026-11-28T17:43:00Z"}]
    })
    .to_string()
}

/// Stores a one-test report for `repo` as `tenant` through the service's own function.
async fn store_as(
    pool: &PgPool,
    tenant: &str,
    repo: Uuid,
    run_id: &str,
) -> Result<Stored, sqlx::Error> {
    let header = header(repo, run_id);
    let body = body(repo, run_id);
    let topology = BrokerTopology::for_tenant(tenant);
    let report = NewReport {
        tenant,
        header: &header,
        test_count: 1,
        body: &body,
        original: None,
        topology: &topology,
    };
    let meta = RequestMeta {
        request_id: format!("req-{run_id}"),
        ..RequestMeta::default()
    };
    store::store_report(pool, &report, &meta).await
}

/// Asserts that PostgreSQL refused the statement for lack of privilege (SQLSTATE 42501:
/// a missing grant, a row-level security policy, or not being the owner).
#[track_caller]
fn assert_denied<T: std::fmt::Debug>(result: Result<T, sqlx::Error>, what: &str) {
    match result {
        Err(sqlx::Error::Database(error)) => assert_eq!(
            error.code().as_deref(),
            Some("42501"),
            "{what}: unexpected error {error}"
        ),
        other => panic!("{what}: expected a privilege error, got {other:?}"),
    }
}

async fn count(conn: &mut PgConnection, sql: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    n
}

fn config_for(tenant: &Tenant, repo: Uuid) -> IngestConfig {
    let generous = Limit {
        requests_per_minute: 1_000_000,
        burst: 100_000,
    };
    IngestConfig {
        broker: BrokerTopology::for_tenant(&tenant.name),
        tenant: tenant.name.clone(),
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
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_tenant_login_sees_none_of_another_tenants_rows(pool: PgPool) {
    let db = TenantDb::from_pool(pool.clone());
    let (repo_a, repo_b) = (Uuid::new_v4(), Uuid::new_v4());
    let a = Tenant::new(&db, &[repo_a]).await;
    let b = Tenant::new(&db, &[repo_b]).await;
    let a_pool = a.pool().await;
    store_as(&a_pool, &a.name, repo_a, "run-1").await.unwrap();
    store::audit_rejected(
        &a_pool,
        &a.name,
        repo_a,
        "Invalid payload",
        &RequestMeta::default(),
    )
    .await
    .unwrap();

    let mut a_conn = a.connection().await;
    assert_eq!(
        count(&mut a_conn, "SELECT count(*) FROM ingestions").await,
        1
    );
    assert_eq!(count(&mut a_conn, "SELECT count(*) FROM outbox").await, 1);

    let mut b_conn = b.connection().await;
    assert_eq!(
        count(&mut b_conn, "SELECT count(*) FROM ingestions").await,
        0
    );
    assert_eq!(count(&mut b_conn, "SELECT count(*) FROM outbox").await, 0);
    let filtered = format!(
        "SELECT count(*) FROM ingestions WHERE tenant = '{}' OR repo_id = '{repo_a}'",
        a.name
    );
    assert_eq!(count(&mut b_conn, &filtered).await, 0);
    // The service never reads the audit log, so no tenant login can.
    assert_denied(
        sqlx::query("SELECT count(*) FROM audit_log")
            .fetch_one(&mut b_conn)
            .await,
        "select audit_log",
    );
    // B cannot mark A's outbox rows sent (or touch them at all): they are invisible.
    let updated = sqlx::query("UPDATE outbox SET sent_at = now()")
        .execute(&mut b_conn)
        .await
        .unwrap();
    assert_eq!(updated.rows_affected(), 0);

    drop((a_conn, b_conn));
    a_pool.close().await;
    a.release(&db).await;
    b.release(&db).await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_tenant_login_cannot_store_for_another_tenants_repository_or_in_its_name(pool: PgPool) {
    let db = TenantDb::from_pool(pool.clone());
    let (repo_a, repo_b, unowned) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let a = Tenant::new(&db, &[repo_a]).await;
    let b = Tenant::new(&db, &[repo_b]).await;
    let (a_pool, b_pool) = (a.pool().await, b.pool().await);
    let Stored::Accepted { ingestion_id, .. } =
        store_as(&a_pool, &a.name, repo_a, "run-1").await.unwrap()
    else {
        panic!("not accepted")
    };

    assert_denied(
        store_as(&b_pool, &b.name, repo_a, "run-1").await,
        "B stores for A's repository",
    );
    assert_denied(
        store_as(&b_pool, &b.name, unowned, "run-1").await,
        "B stores for a repository nobody owns",
    );
    assert_denied(
        store_as(&b_pool, &a.name, repo_a, "run-2").await,
        "B stores as A for A's repository",
    );
    assert_denied(
        store_as(&b_pool, &a.name, repo_b, "run-2").await,
        "B stores as A for B's repository",
    );
    assert_denied(
        store::audit_rejected(&b_pool, &a.name, repo_a, "forged", &RequestMeta::default()).await,
        "B writes audit rows as A",
    );
    assert_denied(
        sqlx::query(
            "INSERT INTO audit_log (tenant, action, ingestion_id) VALUES ($1, 'accepted', $2)",
        )
        .bind(&b.name)
        .bind(ingestion_id)
        .execute(&b_pool)
        .await,
        "B's audit row points at A's ingestion",
    );
    assert_denied(
        sqlx::query(
            "INSERT INTO outbox (ingestion_id, tenant, exchange, routing_key, message, request_id)
             VALUES ($1, $2, 'x', 'y', '{}', 'r')",
        )
        .bind(ingestion_id)
        .bind(&b.name)
        .execute(&b_pool)
        .await,
        "B queues A's ingestion",
    );
    // Server-set columns cannot be supplied: no backdated audit rows.
    assert_denied(
        sqlx::query(
            "INSERT INTO audit_log (tenant, action, occurred_at)
             VALUES ($1, 'rejected', now() - interval '1 year')",
        )
        .bind(&b.name)
        .execute(&b_pool)
        .await,
        "B backdates an audit row",
    );

    let (stored,): (i64,) = sqlx::query_as("SELECT count(*) FROM ingestions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 1, "only A's own report is stored");

    a_pool.close().await;
    b_pool.close().await;
    a.release(&db).await;
    b.release(&db).await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_tenant_login_cannot_change_the_audit_log_its_rows_or_the_schema(pool: PgPool) {
    let db = TenantDb::from_pool(pool.clone());
    let repo = Uuid::new_v4();
    let a = Tenant::new(&db, &[repo]).await;
    let a_pool = a.pool().await;
    store_as(&a_pool, &a.name, repo, "run-1").await.unwrap();
    let mut conn = a.connection().await;

    for sql in [
        "UPDATE audit_log SET reason = 'rewritten'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
        "DROP TRIGGER audit_log_append_only ON audit_log",
        "ALTER TABLE audit_log DISABLE TRIGGER ALL",
        "ALTER TABLE ingestions DISABLE ROW LEVEL SECURITY",
        "DROP POLICY ingestions_select ON ingestions",
        "UPDATE ingestions SET tenant = 'other'",
        "DELETE FROM ingestions",
        "TRUNCATE ingestions",
        "TRUNCATE outbox",
        "UPDATE outbox SET tenant = 'other'",
        "UPDATE outbox SET message = '{}'",
        "CREATE TABLE sneaky (x int)",
        "CREATE FUNCTION sneaky() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "CREATE SCHEMA sneaky",
        "ALTER TABLE ingestions ADD COLUMN sneaky int",
        "DROP TABLE outbox",
        "DROP TABLE audit_log",
        "CREATE TEMP TABLE sneaky (x int)",
        "SELECT * FROM tenants",
        "SELECT * FROM repository_owners",
        "SELECT * FROM tenant_logins",
        "SELECT * FROM _sqlx_migrations",
        "INSERT INTO repository_owners (repo_id, tenant) VALUES (gen_random_uuid(), 'x')",
        "SET ROLE anchorpipe",
    ] {
        assert_denied(
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await,
            sql,
        );
    }
    // Undelivered outbox rows are not the retention sweep's to delete.
    let deleted = sqlx::query("DELETE FROM outbox")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(deleted.rows_affected(), 0);
    let (audit_rows, outbox_rows): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM audit_log), (SELECT count(*) FROM outbox)")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((audit_rows, outbox_rows), (1, 1));

    drop(conn);
    a_pool.close().await;
    a.release(&db).await;
}

#[sqlx::test(migrations = "../migrations")]
async fn the_ingest_service_works_as_a_tenant_login(pool: PgPool) {
    let db = TenantDb::from_pool(pool.clone());
    let repo = Uuid::new_v4();
    let a = Tenant::new(&db, &[repo]).await;
    let a_pool = a.pool().await;
    let config = config_for(&a, repo);
    let state = Arc::new(
        AppState::new(
            config.clone(),
            KeyStore::fixed(KeySet::new(vec![Key::from_secret("k1", SECRET)])),
            a_pool.clone(),
            Arc::new(Metrics::new()),
            Arc::new(DeliveryHealth::default()),
        )
        .unwrap(),
    );
    let router = app(Arc::clone(&state));
    let send = |body: String, signature: String| {
        let router = router.clone();
        async move {
            let request = Request::post("/api/ingestion")
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {repo}"))
                .header("x-fr-sig", signature)
                .body(Body::from(body))
                .unwrap();
            let response = router.oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default(),
            )
        }
    };
    let sign = |body: &str| anchorpipe_ingest::signature::sign_legacy(SECRET, body.as_bytes());

    // Accepted, then answered as a duplicate (store.rs: insert, replay lookup, audit).
    let report = body(repo, "run-1");
    let (status, first) = send(report.clone(), sign(&report)).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (status, again) = send(report.clone(), sign(&report)).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["isDuplicate"], true);
    assert_eq!(again["runId"], first["runId"]);
    // A refused payload is audited (store::audit_rejected).
    let invalid = serde_json::json!({"repo_id": repo, "tests": []}).to_string();
    let (status, _) = send(invalid.clone(), sign(&invalid)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A bad signature is counted and flushed as an aggregated row (audit.rs).
    let (status, _) = send(report.clone(), "00".repeat(32)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(state.audit.flush(&a_pool, &a.name).await.unwrap() >= 1);
    // Readiness (SELECT 1) and the backlog figures.
    let ready = router
        .clone()
        .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let ready: serde_json::Value =
        serde_json::from_slice(&ready.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(ready["database"], true, "{ready}");
    let (backlog, _) = store::outbox_backlog(&a_pool, &a.name).await.unwrap();
    assert_eq!(backlog, 1);

    // The relay: claim (FOR UPDATE SKIP LOCKED), publish with confirms, mark sent.
    let amqp_url = std::env::var("AMQP_URL").expect("AMQP_URL (scripts/services.sh env)");
    let connection = lapin::Connection::connect(&amqp_url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let setup = connection.create_channel().await.unwrap();
    anchorpipe_crds::topology::declare(&setup, &config.broker)
        .await
        .unwrap();
    let mut channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let relay = Relay::new(
        a_pool.clone(),
        &config,
        amqp_url.clone(),
        RelaySettings::default(),
        Arc::clone(&state.metrics),
        Arc::clone(&state.delivery),
    );
    let outcome = relay
        .publish_batch(&connection, &mut channel)
        .await
        .unwrap();
    assert_eq!((outcome.confirmed, outcome.refused), (1, 0));
    let (backlog, _) = store::outbox_backlog(&a_pool, &a.name).await.unwrap();
    assert_eq!(backlog, 0);
    // The retention sweep deletes the delivered row.
    assert_eq!(
        relay::clean_sent(&a_pool, Duration::ZERO, 100)
            .await
            .unwrap(),
        1
    );
    let cleanup = connection.create_channel().await.unwrap();
    anchorpipe_crds::topology::delete(&cleanup, &config.broker)
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;

    let (ingestions, audit): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM ingestions), (SELECT count(*) FROM audit_log)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(ingestions, 1);
    assert_eq!(audit, 4, "accepted, duplicate, rejected, auth_failed");

    drop(router);
    drop(state);
    a_pool.close().await;
    a.release(&db).await;
}

/// A report for `repo` on its way to a group commit.
fn submission(repo: Uuid, run_id: &str) -> Submission {
    Submission {
        header: header(repo, run_id),
        test_count: 1,
        body: body(repo, run_id),
        original: None,
        meta: RequestMeta {
            request_id: format!("req-{run_id}"),
            ..RequestMeta::default()
        },
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_batch_stored_as_a_tenant_login_keeps_its_own_reports_and_loses_a_foreign_one(
    pool: PgPool,
) {
    let db = TenantDb::from_pool(pool.clone());
    let (repo_a, repo_b) = (Uuid::new_v4(), Uuid::new_v4());
    let a = Tenant::new(&db, &[repo_a]).await;
    let b = Tenant::new(&db, &[repo_b]).await;
    let a_pool = a.pool().await;
    let metrics = Arc::new(Metrics::new());
    // Every report submitted below lands in one batch: it closes at 4 rows, or after 1 s.
    let commits = GroupCommit::spawn(
        a_pool.clone(),
        a.name.clone(),
        BrokerTopology::for_tenant(&a.name),
        &StoreConfig {
            max_batch_rows: 4,
            max_batch_wait_ms: 1000,
            concurrent_batches: 1,
            ..StoreConfig::default()
        },
        Arc::clone(&metrics),
    );
    let submit_all = |reports: Vec<Submission>| {
        let commits = commits.clone();
        async move {
            let tasks: Vec<_> = reports
                .into_iter()
                .map(|report| {
                    let commits = commits.clone();
                    tokio::spawn(async move { commits.submit(report, ()).await })
                })
                .collect();
            let mut results = Vec::new();
            for task in tasks {
                results.push(task.await.unwrap());
            }
            results
        }
    };

    // Multi-row inserts, the duplicate lookup, outbox and audit under the policies.
    let first = submit_all(vec![
        submission(repo_a, "run-1"),
        submission(repo_a, "run-2"),
        submission(repo_a, "run-1"),
        submission(repo_a, "run-3"),
    ])
    .await;
    let outcomes: Vec<Stored> = first.into_iter().map(Result::unwrap).collect();
    assert!(matches!(outcomes[0], Stored::Accepted { .. }));
    assert!(matches!(outcomes[1], Stored::Accepted { .. }));
    assert!(
        matches!(&outcomes[2], Stored::Duplicate { ingestion_id, .. } if *ingestion_id == outcomes[0].ingestion_id())
    );
    assert!(matches!(outcomes[3], Stored::Accepted { .. }));

    // A misconfigured pod (B's repository in A's config): the database refuses that one
    // report, and the rest of its batch is stored.
    let second = submit_all(vec![
        submission(repo_a, "run-4"),
        submission(repo_b, "run-4"),
        submission(repo_a, "run-2"),
        submission(repo_a, "run-5"),
    ])
    .await;
    assert!(
        matches!(second[0], Ok(Stored::Accepted { .. })),
        "{second:?}"
    );
    match &second[1] {
        Err(CommitError::Refused(error)) => match error.as_ref() {
            sqlx::Error::Database(error) => assert_eq!(error.code().as_deref(), Some("42501")),
            other => panic!("expected a privilege error, got {other:?}"),
        },
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(
        matches!(&second[2], Ok(Stored::Duplicate { ingestion_id, .. }) if *ingestion_id == outcomes[1].ingestion_id())
    );
    assert!(matches!(second[3], Ok(Stored::Accepted { .. })));

    let mut a_conn = a.connection().await;
    assert_eq!(
        count(&mut a_conn, "SELECT count(*) FROM ingestions").await,
        5
    );
    assert_eq!(count(&mut a_conn, "SELECT count(*) FROM outbox").await, 5);
    let mut owner = pool.acquire().await.unwrap();
    assert_eq!(
        count(
            &mut owner,
            &format!("SELECT count(*) FROM ingestions WHERE repo_id = '{repo_b}'")
        )
        .await,
        0
    );
    assert_eq!(count(&mut owner, "SELECT count(*) FROM audit_log").await, 7);
    assert!(
        metrics
            .encode()
            .contains("anchorpipe_ingest_commit_fallbacks_total 1")
    );

    drop((a_conn, owner, commits));
    a_pool.close().await;
    a.release(&db).await;
    b.release(&db).await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_repository_that_changed_tenants_is_no_duplicate_of_the_old_tenants_report(pool: PgPool) {
    let db = TenantDb::from_pool(pool.clone());
    let repo = Uuid::new_v4();
    let a = Tenant::new(&db, &[repo]).await;
    let b = Tenant::new(&db, &[]).await;
    let (a_pool, b_pool) = (a.pool().await, b.pool().await);
    let Stored::Accepted {
        ingestion_id: a_id, ..
    } = store_as(&a_pool, &a.name, repo, "run-1").await.unwrap()
    else {
        panic!("A's first report is new")
    };
    assert!(matches!(
        store_as(&a_pool, &a.name, repo, "run-1").await.unwrap(),
        Stored::Duplicate { ingestion_id, .. } if ingestion_id == a_id
    ));

    // A lets the repository go; B claims it.
    assert_eq!(
        db.claim_repositories(&a.name, &[]).await.unwrap(),
        RepositoryClaims::default()
    );
    assert_eq!(
        db.claim_repositories(&b.name, &[repo]).await.unwrap().owned,
        vec![repo]
    );
    let Stored::Accepted {
        ingestion_id: b_id, ..
    } = store_as(&b_pool, &b.name, repo, "run-1").await.unwrap()
    else {
        panic!("B's identical report must not be a duplicate of A's")
    };
    assert_ne!(a_id, b_id);
    assert!(matches!(
        store_as(&b_pool, &b.name, repo, "run-1").await.unwrap(),
        Stored::Duplicate { ingestion_id, .. } if ingestion_id == b_id
    ));
    assert_denied(
        store_as(&a_pool, &a.name, repo, "run-2").await,
        "A stores for the repository it released",
    );

    a_pool.close().await;
    b_pool.close().await;
    a.release(&db).await;
    b.release(&db).await;
}

#[sqlx::test(migrations = "../migrations")]
async fn the_second_claimant_of_a_tenant_is_told_who_holds_it(pool: PgPool) {
    let db = TenantDb::from_pool(pool);
    let tenant = unique_tenant();
    let first = claimant(&tenant);
    let second = Claimant {
        namespace: "elsewhere".to_owned(),
        name: "squatter".to_owned(),
        uid: Uuid::new_v4().to_string(),
    };
    assert_eq!(
        db.claim_tenant(&tenant, &first).await.unwrap(),
        TenantClaim::Ours
    );
    assert_eq!(
        db.claim_tenant(&tenant, &first).await.unwrap(),
        TenantClaim::Ours
    );
    assert_eq!(
        db.claim_tenant(&tenant, &second).await.unwrap(),
        TenantClaim::Taken(first.clone())
    );
    // Repositories and logins need the claim.
    let unclaimed = unique_tenant();
    assert!(matches!(
        db.claim_repositories(&unclaimed, &[Uuid::new_v4()]).await,
        Err(Error::TenantNotClaimed(_))
    ));
    assert!(matches!(
        db.ensure_login(&unclaimed, &login_name(&unclaimed, "k1"), "pw")
            .await,
        Err(Error::TenantNotClaimed(_))
    ));
    db.release_tenant(&tenant, &first.uid).await.unwrap();
    assert_eq!(
        db.claim_tenant(&tenant, &second).await.unwrap(),
        TenantClaim::Ours
    );
    db.release_tenant(&tenant, &second.uid).await.unwrap();
}

#[sqlx::test(migrations = "../migrations")]
async fn a_repository_owned_by_one_tenant_is_taken_for_another_until_released(pool: PgPool) {
    let db = TenantDb::from_pool(pool);
    let (a, b) = (unique_tenant(), unique_tenant());
    let (a_who, b_who) = (claimant(&a), claimant(&b));
    db.claim_tenant(&a, &a_who).await.unwrap();
    db.claim_tenant(&b, &b_who).await.unwrap();
    let (r1, r2, r3) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());

    let claims = db.claim_repositories(&a, &[r1, r2, r1]).await.unwrap();
    assert_eq!(claims.owned, vec![r1, r2]);
    assert_eq!(
        db.claim_repositories(&b, &[r2, r3]).await.unwrap(),
        RepositoryClaims {
            owned: vec![r3],
            taken: vec![r2]
        }
    );
    // Claiming is idempotent; dropping r2 from A's list releases it.
    assert_eq!(
        db.claim_repositories(&a, &[r1]).await.unwrap().owned,
        vec![r1]
    );
    assert_eq!(
        db.claim_repositories(&b, &[r2, r3]).await.unwrap(),
        RepositoryClaims {
            owned: vec![r2, r3],
            taken: vec![]
        }
    );
    assert_eq!(
        db.claim_repositories(&a, &[r1, r2]).await.unwrap().taken,
        vec![r2]
    );
    db.release_tenant(&a, &a_who.uid).await.unwrap();
    db.release_tenant(&b, &b_who.uid).await.unwrap();
}

#[sqlx::test(migrations = "../migrations")]
async fn concurrent_claims_leave_exactly_one_owner(pool: PgPool) {
    let db = TenantDb::from_pool(pool);
    let tenant = unique_tenant();
    let claimants: Vec<Claimant> = (0..10).map(|_| claimant(&tenant)).collect();
    let tasks: Vec<_> = claimants
        .iter()
        .cloned()
        .map(|who| {
            let (db, tenant) = (db.clone(), tenant.clone());
            tokio::spawn(async move { db.claim_tenant(&tenant, &who).await.unwrap() })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    let winners: Vec<usize> = (0..10)
        .filter(|i| outcomes[*i] == TenantClaim::Ours)
        .collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    let winner = &claimants[winners[0]];
    for outcome in &outcomes {
        assert!(
            *outcome == TenantClaim::Ours || *outcome == TenantClaim::Taken(winner.clone()),
            "{outcome:?}"
        );
    }

    // Ten tenants claim one repository at once.
    let repo = Uuid::new_v4();
    let mut tenants = Vec::new();
    for _ in 0..10 {
        let name = unique_tenant();
        let who = claimant(&name);
        db.claim_tenant(&name, &who).await.unwrap();
        tenants.push((name, who));
    }
    let tasks: Vec<_> = tenants
        .iter()
        .map(|(name, _)| {
            let (db, name) = (db.clone(), name.clone());
            tokio::spawn(async move { db.claim_repositories(&name, &[repo]).await.unwrap() })
        })
        .collect();
    let mut owners = 0;
    for task in tasks {
        let claims = task.await.unwrap();
        assert_eq!(claims.owned.len() + claims.taken.len(), 1);
        owners += claims.owned.len();
    }
    assert_eq!(owners, 1);

    db.release_tenant(&tenant, &winner.uid).await.unwrap();
    for (name, who) in &tenants {
        db.release_tenant(name, &who.uid).await.unwrap();
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn releasing_a_tenant_with_another_endpoints_uid_changes_nothing(pool: PgPool) {
    let db = TenantDb::from_pool(pool.clone());
    let repo = Uuid::new_v4();
    let a = Tenant::new(&db, &[repo]).await;
    db.release_tenant(&a.name, &Uuid::new_v4().to_string())
        .await
        .unwrap();

    assert_eq!(db.logins(&a.name).await.unwrap(), vec![a.login.clone()]);
    assert_eq!(
        db.claim_tenant(&a.name, &claimant(&a.name)).await.unwrap(),
        TenantClaim::Taken(a.who.clone())
    );
    let mut conn = a.connection().await;
    let (tenant,): (Option<String>,) = sqlx::query_as("SELECT anchorpipe_tenant()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(tenant.as_deref(), Some(a.name.as_str()));
    let (owned,): (bool,) = sqlx::query_as("SELECT anchorpipe_owns_repository($1)")
        .bind(repo)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(owned);

    drop(conn);
    a.release(&db).await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_released_tenants_login_cannot_connect_and_its_open_session_can_do_nothing(pool: PgPool) {
    let db = TenantDb::from_pool(pool.clone());
    let repo = Uuid::new_v4();
    let a = Tenant::new(&db, &[repo]).await;
    let mut open = a.connection().await;
    let mut open_pool_conn = a.pool().await;
    store_as(&open_pool_conn, &a.name, repo, "run-1")
        .await
        .unwrap();

    a.release(&db).await;
    assert!(
        PgConnection::connect(&a.url).await.is_err(),
        "login dropped"
    );
    assert!(db.logins(&a.name).await.unwrap().is_empty());
    let (roles,): (i64,) = sqlx::query_as("SELECT count(*) FROM pg_roles WHERE rolname = $1")
        .bind(&a.login)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(roles, 0);

    // A session opened before the release lost the group's privileges with the role.
    assert_denied(
        sqlx::query("SELECT count(*) FROM ingestions")
            .fetch_one(&mut open)
            .await,
        "read after release",
    );
    assert!(
        store_as(&open_pool_conn, &a.name, repo, "run-2")
            .await
            .is_err()
    );

    // The stored report stays; the repository and the tenant id are free again.
    let (stored,): (i64,) = sqlx::query_as("SELECT count(*) FROM ingestions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 1);
    let b = Tenant::new(&db, &[repo]).await;
    // Releasing twice is harmless.
    a.release(&db).await;

    drop(open);
    open_pool_conn.close().await;
    open_pool_conn = b.pool().await;
    store_as(&open_pool_conn, &b.name, repo, "run-1")
        .await
        .unwrap();
    open_pool_conn.close().await;
    b.release(&db).await;
}

#[sqlx::test(migrations = "../migrations")]
async fn ensuring_a_login_again_rotates_its_password_and_never_takes_over_a_foreign_role(
    pool: PgPool,
) {
    let db = TenantDb::from_pool(pool.clone());
    let a = Tenant::new(&db, &[]).await;
    let other = Tenant::new(&db, &[]).await;
    let owner = owner_url(&pool).await;

    let new_password = mint_password().unwrap();
    db.ensure_login(&a.name, &a.login, &new_password)
        .await
        .unwrap();
    assert!(PgConnection::connect(&a.url).await.is_err(), "old password");
    let new_url = tenant_database_url(&owner, &a.login, &new_password).unwrap();
    PgConnection::connect(&new_url)
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    assert_eq!(db.logins(&a.name).await.unwrap(), vec![a.login.clone()]);

    // Another tenant's login, the owner itself and unrecorded roles are not adopted.
    assert!(matches!(
        db.ensure_login(&other.name, &a.login, "pw").await,
        Err(Error::LoginOfAnotherTenant { .. })
    ));
    let (owner_role,): (String,) = sqlx::query_as("SELECT current_user::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(matches!(
        db.ensure_login(&a.name, &owner_role, "pw").await,
        Err(Error::ForeignRole(_))
    ));
    assert!(matches!(
        db.ensure_login(&a.name, "ap_x\"; DROP TABLE x; --", "pw")
            .await,
        Err(Error::InvalidLogin(_))
    ));
    db.drop_login(&owner_role).await.unwrap();
    let (owner_exists,): (bool,) =
        sqlx::query_as("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)")
            .bind(&owner_role)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        owner_exists,
        "drop_login leaves roles that are not tenant logins"
    );

    // A second login for the same tenant, then dropped twice.
    let second = login_name(&a.name, "k2");
    db.ensure_login(&a.name, &second, &mint_password().unwrap())
        .await
        .unwrap();
    assert_eq!(
        db.logins(&a.name).await.unwrap(),
        vec![a.login.clone(), second.clone()]
    );
    db.drop_login(&second).await.unwrap();
    db.drop_login(&second).await.unwrap();
    assert_eq!(db.logins(&a.name).await.unwrap(), vec![a.login.clone()]);

    a.release(&db).await;
    other.release(&db).await;
}

/// Counts [`PlatformAccounts`]' broker user calls; touches no broker.
#[derive(Default)]
struct CountingUsers {
    ensured: std::sync::atomic::AtomicUsize,
}

impl BrokerUsers for CountingUsers {
    fn ensure_user<'a>(
        &'a self,
        _user: &'a str,
        _password: &'a str,
        _grant: &'a TenantGrant,
    ) -> BoxFuture<'a, Result<(), BrokerUserError>> {
        self.ensured
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }

    fn delete_user<'a>(&'a self, _user: &'a str) -> BoxFuture<'a, Result<(), BrokerUserError>> {
        Box::pin(async { Ok(()) })
    }

    fn users_with_prefix<'a>(
        &'a self,
        _prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, BrokerUserError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn credentials_confirmed_moments_ago_are_not_ensured_again_until_something_changes(
    pool: PgPool,
) {
    let users = Arc::new(CountingUsers::default());
    let accounts = PlatformAccounts::new(
        TenantDb::from_pool(pool.clone()),
        users.clone(),
        owner_url(&pool).await,
        std::env::var("AMQP_URL").expect("AMQP_URL (scripts/services.sh env)"),
    )
    .unwrap();
    let calls = || users.ensured.load(std::sync::atomic::Ordering::SeqCst);
    let tenant = unique_tenant();
    let who = claimant(&tenant);
    assert_eq!(
        accounts.claim_tenant(&tenant, &who).await.unwrap(),
        TenantClaim::Ours
    );
    let set = accounts.mint(&tenant).unwrap();
    let grant = Grant {
        exchange: "anchorpipe.reports".to_owned(),
        routing_key: format!("{tenant}.reports"),
    };
    accounts.ensure(&tenant, &set, &grant).await.unwrap();
    assert_eq!(calls(), 1);
    // The login exists: the tenant can connect with it.
    let urls = accounts.urls(&set).unwrap();
    PgConnection::connect(&urls.database_url)
        .await
        .unwrap()
        .close()
        .await
        .unwrap();

    // The same set again, within the re-verify window: nothing is asked of anyone.
    accounts.ensure(&tenant, &set, &grant).await.unwrap();
    assert_eq!(calls(), 1);
    // A new password, or a new grant, is set at once.
    let mut changed = set.clone();
    changed.amqp_password = mint_password().unwrap();
    accounts.ensure(&tenant, &changed, &grant).await.unwrap();
    assert_eq!(calls(), 2);
    let moved = Grant {
        routing_key: format!("{tenant}.moved"),
        ..grant.clone()
    };
    accounts.ensure(&tenant, &changed, &moved).await.unwrap();
    assert_eq!(calls(), 3);
    // After a revocation the kept set is confirmed again on the next ensure.
    accounts
        .revoke_except(&tenant, std::slice::from_ref(&changed.id))
        .await
        .unwrap();
    accounts.ensure(&tenant, &changed, &moved).await.unwrap();
    assert_eq!(calls(), 4);
    accounts.release(&tenant, &who).await.unwrap();
}
