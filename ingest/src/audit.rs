//! Aggregated audit records for traffic that must not cause one database write per
//! request: authentication failures (anyone can send them) and rate-limited requests
//! (a flooding client would otherwise turn its flood into writes).
//!
//! Requests are counted in memory by (action, reason, repository, source) and written
//! as one row per key per flush interval, with `occurrences` and `first_seen`. The map
//! is bounded by a configured number of keys (`protection.maxUnauthenticatedAuditRows`,
//! at most [`MAX_KEYS`]): past it, further keys are folded into a single key per
//! (action, reason) with source `other`, and the folded events are counted in the
//! `audit_folded` metric. Rows per flush are therefore at most that bound plus the
//! fixed number of (action, reason) pairs, whatever the traffic shape (the source
//! address is the peer's, or a trusted proxy's forwarded one, never a client's claim).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Ceiling on distinct (action, reason, repository, source) keys held between flushes.
pub const MAX_KEYS: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    action: &'static str,
    reason: &'static str,
    repo_id: Option<Uuid>,
    source_ip: Option<String>,
}

#[derive(Debug, Clone)]
struct Entry {
    count: u32,
    first_seen: DateTime<Utc>,
    last_request_id: String,
    last_user_agent: Option<String>,
}

/// A pending aggregated row, as written.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregatedRow {
    pub action: &'static str,
    pub reason: &'static str,
    pub repo_id: Option<Uuid>,
    pub source_ip: Option<String>,
    pub occurrences: u32,
    pub first_seen: DateTime<Utc>,
    pub request_id: String,
    pub user_agent: Option<String>,
}

pub struct Aggregator {
    pending: Mutex<HashMap<Key, Entry>>,
    max_keys: usize,
    /// Events folded into an `other` row because the key bound was reached.
    folded: prometheus_client::metrics::counter::Counter,
}

impl Default for Aggregator {
    fn default() -> Self {
        Self {
            pending: Mutex::default(),
            max_keys: MAX_KEYS,
            folded: Default::default(),
        }
    }
}

impl Aggregator {
    /// At most `max_keys` distinct keys per flush (capped at [`MAX_KEYS`]); folded
    /// events are counted in `metrics`.
    pub fn new(max_keys: usize, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Self {
        Self {
            pending: Mutex::default(),
            max_keys: max_keys.clamp(1, MAX_KEYS),
            folded: metrics.audit_folded.clone(),
        }
    }

    /// Counts one event.
    pub fn record(
        &self,
        action: &'static str,
        reason: &'static str,
        repo_id: Option<Uuid>,
        source_ip: Option<&str>,
        request_id: &str,
        user_agent: Option<&str>,
    ) {
        let mut pending = match self.pending.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut key = Key {
            action,
            reason,
            repo_id,
            source_ip: source_ip.map(str::to_owned),
        };
        if !pending.contains_key(&key) && pending.len() >= self.max_keys {
            key.repo_id = None;
            key.source_ip = Some("other".to_owned());
            self.folded.inc();
        }
        let now = Utc::now();
        let entry = pending.entry(key).or_insert_with(|| Entry {
            count: 0,
            first_seen: now,
            last_request_id: String::new(),
            last_user_agent: None,
        });
        entry.count = entry.count.saturating_add(1);
        entry.last_request_id = request_id.to_owned();
        entry.last_user_agent = user_agent.map(|ua| ua.chars().take(512).collect());
    }

    /// Takes everything pending.
    pub fn drain(&self) -> Vec<AggregatedRow> {
        let mut pending = match self.pending.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        pending
            .drain()
            .map(|(key, entry)| AggregatedRow {
                action: key.action,
                reason: key.reason,
                repo_id: key.repo_id,
                source_ip: key.source_ip,
                occurrences: entry.count,
                first_seen: entry.first_seen,
                request_id: entry.last_request_id,
                user_agent: entry.last_user_agent,
            })
            .collect()
    }

    /// Puts rows back after a failed write, so a database outage delays but does not
    /// drop them (still bounded by [`MAX_KEYS`]).
    fn restore(&self, rows: Vec<AggregatedRow>) {
        for row in rows {
            let mut pending = match self.pending.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            let key = Key {
                action: row.action,
                reason: row.reason,
                repo_id: row.repo_id,
                source_ip: row.source_ip,
            };
            if !pending.contains_key(&key) && pending.len() >= self.max_keys {
                self.folded.inc_by(u64::from(row.occurrences));
                continue;
            }
            let entry = pending.entry(key).or_insert_with(|| Entry {
                count: 0,
                first_seen: row.first_seen,
                last_request_id: row.request_id,
                last_user_agent: row.user_agent,
            });
            entry.count = entry.count.saturating_add(row.occurrences);
            entry.first_seen = entry.first_seen.min(row.first_seen);
        }
    }

    /// Writes everything pending as one multi-row insert.
    pub async fn flush(&self, pool: &PgPool, tenant: &str) -> Result<usize, sqlx::Error> {
        let rows = self.drain();
        if rows.is_empty() {
            return Ok(0);
        }
        let n = rows.len();
        let result = sqlx::query(
            "INSERT INTO audit_log (tenant, action, reason, repo_id, source_ip, occurrences,
                                    first_seen, request_id, user_agent)
             SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::uuid[], $5::text[],
                                      $6::int[], $7::timestamptz[], $8::text[], $9::text[])",
        )
        .bind(tenant)
        .bind(rows.iter().map(|r| r.action).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.reason).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.repo_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.source_ip.clone()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| i32::try_from(r.occurrences).unwrap_or(i32::MAX))
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.first_seen).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.request_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.user_agent.clone())
                .collect::<Vec<_>>(),
        )
        .execute(pool)
        .await;
        match result {
            Ok(_) => Ok(n),
            Err(error) => {
                self.restore(rows);
                Err(error)
            }
        }
    }

    /// Flushes every `interval` until shutdown, then once more.
    pub fn spawn_flusher(
        self: std::sync::Arc<Self>,
        pool: PgPool,
        tenant: String,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            loop {
                let stopping = tokio::select! {
                    _ = ticker.tick() => false,
                    () = shutdown.cancelled() => true,
                };
                if let Err(error) = self.flush(&pool, &tenant).await {
                    tracing::warn!(%error, "could not write aggregated audit rows; will retry");
                }
                if stopping {
                    return;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_key_and_folds_overflow() {
        let agg = Aggregator::default();
        for _ in 0..3 {
            agg.record(
                "auth_failed",
                "invalid_signature",
                None,
                Some("10.0.0.1"),
                "r",
                None,
            );
        }
        for i in 0..(MAX_KEYS + 10) {
            let ip = format!("10.1.{}.{}", i / 256, i % 256);
            agg.record("auth_failed", "missing_token", None, Some(&ip), "r", None);
        }
        let rows = agg.drain();
        assert_eq!(rows.len(), MAX_KEYS + 1);
        let total: u32 = rows.iter().map(|r| r.occurrences).sum();
        assert_eq!(total as usize, 3 + MAX_KEYS + 10);
        let first = rows
            .iter()
            .find(|r| r.source_ip.as_deref() == Some("10.0.0.1"))
            .unwrap();
        assert_eq!(first.occurrences, 3);
        assert!(agg.drain().is_empty());
    }
}
