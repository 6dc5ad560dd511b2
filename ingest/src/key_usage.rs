//! Which HMAC key ids verified requests recently: written to the `key_usage` table
//! (`migrations/20261129000003_key_usage.sql`) so the operator can warn before a key
//! that CI systems still sign with stops verifying.
//!
//! Only a verified signature is recorded, so a stranger's traffic writes nothing. Each
//! pod writes a key id at most once per [`REPORT_INTERVAL`]; the write runs in the
//! background, outside the report's transaction, and a failure is logged and retried
//! at the next verification after the interval: usage is advisory, a report never waits
//! for it or fails because of it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::PgPool;

/// How often one pod writes the same key id at most. The operator's warning looks at
/// hours, so a minute of lag costs nothing, and a busy pod writes a handful of rows a
/// minute whatever its request rate.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// Key ids remembered at once; a Secret holds two or three keys, so more means the
/// keys directory churned, and forgetting only causes an early write.
const MAX_REMEMBERED: usize = 64;

/// Records verified key ids for one tenant.
pub struct KeyUsage {
    tenant: String,
    pool: PgPool,
    interval: Duration,
    last_written: Mutex<HashMap<String, Instant>>,
}

impl KeyUsage {
    pub fn new(tenant: String, pool: PgPool) -> Self {
        Self {
            tenant,
            pool,
            interval: REPORT_INTERVAL,
            last_written: Mutex::new(HashMap::new()),
        }
    }

    /// Notes that `key_id` verified a request now; writes it unless this pod wrote it
    /// within the interval. Returns at once (the write is spawned).
    pub fn record(&self, key_id: &str) {
        if !self.due(key_id, Instant::now()) {
            return;
        }
        let (pool, tenant, key_id) = (self.pool.clone(), self.tenant.clone(), key_id.to_owned());
        tokio::spawn(async move {
            if let Err(error) = write(&pool, &tenant, &key_id).await {
                tracing::warn!(%error, key_id, "could not record key usage");
            }
        });
    }

    /// Whether `key_id` should be written at `now`, remembering it if so.
    fn due(&self, key_id: &str, now: Instant) -> bool {
        let mut last = match self.last_written.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if last
            .get(key_id)
            .is_some_and(|at| now.duration_since(*at) < self.interval)
        {
            return false;
        }
        if last.len() >= MAX_REMEMBERED && !last.contains_key(key_id) {
            last.clear();
        }
        last.insert(key_id.to_owned(), now);
        true
    }
}

/// Upserts the row with the database's clock.
pub async fn write(pool: &PgPool, tenant: &str, key_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO key_usage (tenant, key_id) VALUES ($1, $2)
         ON CONFLICT (tenant, key_id) DO UPDATE SET last_verified_at = now()",
    )
    .bind(tenant)
    .bind(key_id)
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_id_is_written_at_most_once_per_interval() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://unused/unused")
            .unwrap();
        let usage = KeyUsage::new("t".to_owned(), pool);
        let t0 = Instant::now();
        assert!(usage.due("k1", t0));
        assert!(!usage.due("k1", t0 + Duration::from_secs(59)));
        assert!(usage.due("k2", t0 + Duration::from_secs(59)));
        assert!(usage.due("k1", t0 + REPORT_INTERVAL));
    }
}
