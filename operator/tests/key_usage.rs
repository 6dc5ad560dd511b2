//! The operator's read of the `key_usage` table the ingest pods write, against a real
//! PostgreSQL (`#[sqlx::test]` gives each test a fresh, migrated database).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use anchorpipe_operator::key_usage::last_verified;
use k8s_openapi::jiff::Timestamp;
use sqlx::PgPool;

#[sqlx::test(migrations = "../migrations")]
async fn last_verified_reads_the_tenants_own_rows_with_their_times(pool: PgPool) {
    sqlx::query(
        "INSERT INTO key_usage (tenant, key_id, last_verified_at) VALUES
           ('ns.a', 'k20261129-100000-aaaaaa', '2026-11-29T10:05:00.250Z'),
           ('ns.a', 'k20261129-120000-bbbbbb', '2026-11-29T12:01:00Z'),
           ('ns.b', 'k20261129-100000-cccccc', '2026-11-29T10:00:00Z')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let usage = last_verified(&pool, "ns.a").await.unwrap();
    let expected: Vec<(String, Timestamp)> = vec![
        (
            "k20261129-100000-aaaaaa".to_owned(),
            "2026-11-29T10:05:00.250Z".parse().unwrap(),
        ),
        (
            "k20261129-120000-bbbbbb".to_owned(),
            "2026-11-29T12:01:00Z".parse().unwrap(),
        ),
    ];
    assert_eq!(usage.into_iter().collect::<Vec<_>>(), expected);
    assert!(last_verified(&pool, "ns.c").await.unwrap().is_empty());
}
