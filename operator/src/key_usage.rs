//! Reads which HMAC key ids a tenant's ingest pods saw verify requests, and when: the
//! `key_usage` table (`migrations/20261129000003_key_usage.sql`), written by the pods
//! under row-level security and read here as the database owner. Feeds
//! [`crate::keys::expiry_warning`].

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use sqlx::PgPool;

/// Longest list read: a tenant has one row per key id it ever used, a few per rotation;
/// the newest ids are the ones that can still expire.
const MAX_ROWS: i64 = 100;

/// Key id → when it last verified a request, for `tenant`.
pub async fn last_verified(
    pool: &PgPool,
    tenant: &str,
) -> Result<BTreeMap<String, Timestamp>, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT key_id, (EXTRACT(EPOCH FROM last_verified_at) * 1000000)::bigint
         FROM key_usage WHERE tenant = $1
         ORDER BY key_id DESC LIMIT $2",
    )
    .bind(tenant)
    .bind(MAX_ROWS)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, micros)| Timestamp::from_microsecond(micros).ok().map(|at| (id, at)))
        .collect())
}
