//! Retention (issue 10, item 4): `anchorpipe_prune` removes old audit, sent outbox and
//! ingestion rows for the owner only, and append-only stays in force for everyone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use anchorpipe_ingest::retention::{PruneCounts, prune};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection as _, PgConnection, PgPool};
use uuid::Uuid;

const DAY: Duration = Duration::from_secs(86_400);

/// One ingestion received `age_days` ago, with its audit row, and an outbox row
/// (sent or not) when `outbox` says so.
async fn ingestion(pool: &PgPool, age_days: i32, outbox: Option<bool>) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO ingestions (id, tenant, repo_id, commit_sha, run_id, framework,
             test_count, payload, response, request_id, received_at)
         VALUES ($1, 't', gen_random_uuid(), 'abc', $1::text, 'jest', 1, '{}', '{}', 'r',
             now() - make_interval(days => $2))",
    )
    .bind(id)
    .bind(age_days)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO audit_log (tenant, action, ingestion_id, occurred_at)
         VALUES ('t', 'accepted', $1, now() - make_interval(days => $2))",
    )
    .bind(id)
    .bind(age_days)
    .execute(pool)
    .await
    .unwrap();
    if let Some(sent) = outbox {
        sqlx::query(
            "INSERT INTO outbox (ingestion_id, tenant, exchange, routing_key, message,
                 request_id, created_at, sent_at)
             VALUES ($1, 't', 'x', 'k', '{}', 'r', now() - make_interval(days => $2),
                 CASE WHEN $3 THEN now() - make_interval(days => $2) END)",
        )
        .bind(id)
        .bind(age_days)
        .bind(sent)
        .execute(pool)
        .await
        .unwrap();
    }
    id
}

async fn exists(pool: &PgPool, id: Uuid) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT FROM ingestions WHERE id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn counts(pool: &PgPool) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM ingestions), (SELECT count(*) FROM audit_log),
                (SELECT count(*) FROM outbox)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn old_rows_are_pruned_and_recent_ones_kept(pool: PgPool) {
    let old_sent = ingestion(&pool, 100, Some(true)).await;
    let old_plain = ingestion(&pool, 100, None).await;
    let recent = ingestion(&pool, 10, Some(true)).await;

    let pruned = prune(&pool, 90 * DAY).await.unwrap();
    assert_eq!(
        pruned,
        PruneCounts {
            outbox_deleted: 1,
            audit_deleted: 2,
            ingestions_deleted: 2
        }
    );
    assert!(!exists(&pool, old_sent).await);
    assert!(!exists(&pool, old_plain).await);
    assert!(exists(&pool, recent).await);
    assert_eq!(counts(&pool).await, (1, 1, 1));

    // Nothing left to do the second time.
    let again = prune(&pool, 90 * DAY).await.unwrap();
    assert_eq!(
        again,
        PruneCounts {
            outbox_deleted: 0,
            audit_deleted: 0,
            ingestions_deleted: 0
        }
    );
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn an_unsent_outbox_row_keeps_its_ingestion(pool: PgPool) {
    let unsent = ingestion(&pool, 100, Some(false)).await;
    let pruned = prune(&pool, 90 * DAY).await.unwrap();
    // The old audit row goes; the ingestion and its undelivered message stay.
    assert_eq!(
        pruned,
        PruneCounts {
            outbox_deleted: 0,
            audit_deleted: 1,
            ingestions_deleted: 0
        }
    );
    assert!(exists(&pool, unsent).await);
    assert_eq!(counts(&pool).await, (1, 0, 1));
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn a_recent_audit_row_keeps_the_old_ingestion_it_points_at(pool: PgPool) {
    let old = ingestion(&pool, 100, None).await;
    // A duplicate of the old report, audited yesterday.
    sqlx::query(
        "INSERT INTO audit_log (tenant, action, ingestion_id) VALUES ('t', 'duplicate', $1)",
    )
    .bind(old)
    .execute(&pool)
    .await
    .unwrap();
    let pruned = prune(&pool, 90 * DAY).await.unwrap();
    assert_eq!((pruned.audit_deleted, pruned.ingestions_deleted), (1, 0));
    assert!(exists(&pool, old).await);
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn the_append_only_trigger_is_in_force_after_a_prune(pool: PgPool) {
    ingestion(&pool, 100, None).await;
    ingestion(&pool, 10, None).await;
    prune(&pool, 90 * DAY).await.unwrap();

    // The owner itself, outside the function, is still refused.
    for sql in [
        "DELETE FROM audit_log",
        "UPDATE audit_log SET reason = 'rewritten'",
        "TRUNCATE audit_log",
    ] {
        let error = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .expect_err(sql);
        assert!(error.to_string().contains("append-only"), "{sql}: {error}");
    }
    let enabled: Vec<(String, String)> = sqlx::query_as(
        "SELECT tgname::text, tgenabled::text FROM pg_trigger
         WHERE tgrelid = 'audit_log'::regclass AND NOT tgisinternal ORDER BY tgname",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        enabled,
        [
            ("audit_log_append_only".into(), "O".into()),
            ("audit_log_no_truncate".into(), "O".into())
        ]
    );
    assert_eq!(counts(&pool).await.1, 1);
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn a_failed_prune_leaves_the_trigger_enabled(pool: PgPool) {
    ingestion(&pool, 100, None).await;
    // Make the ingestion delete fail after the audit delete: the whole prune rolls back.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'refused'; END $$;
         CREATE TRIGGER refuse BEFORE DELETE ON ingestions
             FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .execute(&pool)
    .await
    .unwrap();
    prune(&pool, 90 * DAY).await.unwrap_err();
    assert_eq!(counts(&pool).await, (1, 1, 0));
    let error = sqlx::query("DELETE FROM audit_log")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("append-only"), "{error}");
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn the_floor_of_one_day_is_enforced(pool: PgPool) {
    ingestion(&pool, 100, None).await;
    for short in ["0 seconds", "23 hours 59 minutes", "-90 days"] {
        let error = sqlx::query("SELECT * FROM anchorpipe_prune($1::interval)")
            .bind(short)
            .execute(&pool)
            .await
            .expect_err(short);
        assert!(error.to_string().contains("floor"), "{short}: {error}");
    }
    let error = prune(&pool, Duration::from_secs(3_600)).await.unwrap_err();
    assert!(format!("{error:#}").contains("floor"), "{error:#}");
    assert_eq!(counts(&pool).await, (1, 1, 0));
    // Exactly one day is allowed.
    prune(&pool, DAY).await.unwrap();
}

/// A tenant login as the operator mints one: member of anchorpipe_tenant, listed in
/// tenant_logins. Roles are cluster-wide, so the name is unique and dropped at the end.
struct Login {
    name: String,
    pool: PgPool,
}

impl Login {
    async fn create(owner: &PgPool) -> Self {
        let name = format!("retention_{}", Uuid::new_v4().simple());
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE ROLE {name} LOGIN PASSWORD 'pw' IN ROLE anchorpipe_tenant;
             INSERT INTO tenants (tenant, endpoint_namespace, endpoint_name, endpoint_uid)
                 VALUES ('t', 'ns', 'ep', 'uid') ON CONFLICT DO NOTHING;
             INSERT INTO tenant_logins (login, tenant) VALUES ('{name}', 't');"
        )))
        .execute(owner)
        .await
        .unwrap();
        let options = owner
            .connect_options()
            .as_ref()
            .clone()
            .username(&name)
            .password("pw");
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap();
        Self { name, pool }
    }

    async fn drop_role(self, owner: &PgPool) {
        self.pool.close().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DELETE FROM tenant_logins WHERE login = '{0}'; DROP ROLE {0};",
            self.name
        )))
        .execute(owner)
        .await
        .unwrap();
    }
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn a_tenant_login_cannot_prune_nor_delete_or_update_audit_rows(pool: PgPool) {
    ingestion(&pool, 100, Some(true)).await;
    let login = Login::create(&pool).await;

    let error = prune(&login.pool, 90 * DAY).await.unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("database owner"), "{message}");
    assert!(message.contains("permission denied"), "{message}");

    let mut conn: PgConnection = login.pool.acquire().await.unwrap().detach();
    for sql in [
        "SELECT * FROM anchorpipe_prune(interval '90 days')",
        "SELECT * FROM public.anchorpipe_prune(interval '3650 days')",
        "DELETE FROM audit_log",
        "UPDATE audit_log SET reason = 'rewritten'",
        "DELETE FROM ingestions",
        "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only",
        "GRANT EXECUTE ON FUNCTION anchorpipe_prune(interval) TO anchorpipe_tenant",
    ] {
        let error = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .expect_err(sql);
        let code = error
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some("42501"), "{sql}: {error}");
    }
    conn.close().await.unwrap();
    assert_eq!(counts(&pool).await, (1, 1, 1));

    let grantees: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.routine_privileges
         WHERE routine_name = 'anchorpipe_prune' AND grantee <> current_user",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(grantees, 0);
    login.drop_role(&pool).await;
}

/// `anchorpipe-ingest prune` as the CronJob runs it: the owner gets the counts as
/// JSON, a tenant login a non-zero exit and an error naming the owner's URL.
#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn the_prune_subcommand_prints_counts_for_the_owner_and_refuses_a_tenant_login(pool: PgPool) {
    ingestion(&pool, 100, Some(true)).await;
    let login = Login::create(&pool).await;
    let options = pool.connect_options();
    let url = |user: &str, password: &str| {
        format!(
            "postgres://{user}:{password}@{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap()
        )
    };
    let run = |database_url: String, age: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_anchorpipe-ingest"))
            .args(["prune", "--older-than", age])
            .env("DATABASE_URL", database_url)
            .output()
            .unwrap()
    };

    let denied = run(url(&login.name, "pw"), "90d");
    assert!(!denied.status.success());
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(stderr.contains("database owner"), "{stderr}");
    assert_eq!(counts(&pool).await, (1, 1, 1));

    // The owner's URL (the test's DATABASE_URL) pointed at this test's database.
    let owner_url = std::env::var("DATABASE_URL").unwrap();
    let owner_url = format!(
        "{}/{}",
        owner_url
            .split('?')
            .next()
            .unwrap()
            .rsplit_once('/')
            .unwrap()
            .0,
        options.get_database().unwrap()
    );
    let too_short = run(owner_url.clone(), "12h");
    assert!(!too_short.status.success());
    assert!(String::from_utf8_lossy(&too_short.stderr).contains("floor"));

    let done = run(owner_url, "90d");
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let printed: serde_json::Value = serde_json::from_str(
        // The counts are the first line; the log (also on stdout) follows.
        String::from_utf8_lossy(&done.stdout)
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        printed,
        serde_json::json!({"outbox_deleted": 1, "audit_deleted": 1, "ingestions_deleted": 1})
    );
    assert_eq!(counts(&pool).await, (0, 0, 0));
    login.drop_role(&pool).await;
}
