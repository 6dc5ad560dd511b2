//! Durable storage of an accepted report: one PostgreSQL transaction writes the
//! ingestion, its audit row and its outbox row, so after commit the report is safe
//! whatever happens to the broker or the pod, and before commit nothing of it exists.
//!
//! Duplicates are found by the unique constraint on `(tenant, repo_id, commit_sha,
//! run_id, framework)` through `INSERT … ON CONFLICT DO NOTHING`: of N concurrent
//! identical reports exactly one inserts, the others wait for its commit, see the
//! conflict, and replay its stored response. The tenant is part of the key, so a report
//! is only ever a duplicate of its own tenant's report.
//!
//! Reports accepted at the same moment are stored together ([`store_batch`], driven by
//! [`crate::commit`]): one transaction with one multi-row `INSERT` per table. Within a
//! batch the first report of a duplicate key stands for the others, and keys are inserted
//! in sorted order, so two batches waiting on each other's keys always wait in the same
//! order and cannot deadlock.
//!
//! In a cluster these statements run as the tenant's minted login, under the row-level
//! security policies of `migrations/20261129000001_tenants.sql`: an ingestion is refused
//! for a repository the tenant does not own.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sqlx::postgres::PgArguments;
use sqlx::{Arguments as _, Connection as _, PgPool};
use uuid::Uuid;

use crate::report::ReportHeader;
use anchorpipe_crds::config::BrokerTopology;

/// Bodies above this size leave the connection's buffers shrunk after use.
const SHRINK_AFTER_BYTES: usize = 1024 * 1024;

/// Who sent a request, for the audit log.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub request_id: String,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub traceparent: Option<String>,
}

/// The result of storing a report.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    /// Newly stored; the response to send.
    Accepted { ingestion_id: Uuid, response: Value },
    /// Already stored earlier; the original response with `isDuplicate: true`.
    Duplicate { ingestion_id: Uuid, response: Value },
}

impl Stored {
    pub fn response(&self) -> &Value {
        match self {
            Stored::Accepted { response, .. } | Stored::Duplicate { response, .. } => response,
        }
    }

    /// The stored ingestion this outcome names.
    pub fn ingestion_id(&self) -> Uuid {
        match self {
            Stored::Accepted { ingestion_id, .. } | Stored::Duplicate { ingestion_id, .. } => {
                *ingestion_id
            }
        }
    }
}

/// A report ready to be stored.
pub struct NewReport<'a> {
    pub tenant: &'a str,
    pub header: &'a ReportHeader,
    pub test_count: usize,
    /// The already validated JSON report: the body exactly as sent, or the report a
    /// JUnit XML body was converted to.
    pub body: &'a str,
    /// A body that was not sent as JSON, as received, and its content type; stored
    /// beside the converted report.
    pub original: Option<Original<'a>>,
    pub topology: &'a BrokerTopology,
}

/// A request body kept as received when the stored payload is a conversion of it.
#[derive(Debug, Clone, Copy)]
pub struct Original<'a> {
    pub body: &'a str,
    pub content_type: &'a str,
}

/// A report waiting for a group commit: what [`NewReport`] borrows, owned, so it can
/// travel to the committing task. The tenant and topology are the committer's.
#[derive(Debug)]
pub struct Submission {
    pub header: ReportHeader,
    pub test_count: usize,
    /// The validated JSON report, as for [`NewReport::body`].
    pub body: String,
    pub original: Option<OwnedOriginal>,
    pub meta: RequestMeta,
}

/// An owned [`Original`].
#[derive(Debug, Clone)]
pub struct OwnedOriginal {
    pub body: String,
    pub content_type: String,
}

/// The duplicate key within one tenant: `(repo_id, commit_sha, run_id, framework)`.
type DuplicateKey<'a> = (Uuid, &'a str, &'a str, &'a str);

impl Submission {
    /// The borrowed form [`store_report`] takes.
    pub fn as_new_report<'a>(
        &'a self,
        tenant: &'a str,
        topology: &'a BrokerTopology,
    ) -> NewReport<'a> {
        NewReport {
            tenant,
            header: &self.header,
            test_count: self.test_count,
            body: &self.body,
            original: self.original.as_ref().map(|o| Original {
                body: &o.body,
                content_type: &o.content_type,
            }),
            topology,
        }
    }

    /// Report bytes this submission adds to a batch.
    pub fn size(&self) -> usize {
        self.body.len() + self.original.as_ref().map_or(0, |o| o.body.len())
    }

    fn key(&self) -> DuplicateKey<'_> {
        let h = &self.header;
        (h.repo_id, &h.commit_sha, &h.run_id, &h.framework)
    }
}

/// The response an accepted report gets (and its duplicates replay).
fn accepted_response(ingestion_id: Uuid, test_count: usize) -> Value {
    json!({
        "runId": ingestion_id,
        "message": "Test report received",
        "summary": { "tests_parsed": test_count, "flaky_candidates": 0 },
    })
}

/// A stored response replayed for a duplicate.
fn duplicate_response(mut original: Value) -> Value {
    if let Some(object) = original.as_object_mut() {
        object.insert("isDuplicate".to_owned(), Value::Bool(true));
    }
    original
}

fn clamp_count(test_count: usize) -> i32 {
    i32::try_from(test_count).unwrap_or(i32::MAX)
}

/// The existing anchorpipe event, plus the ingestion id consumers dedupe and look up by.
/// Serialized straight from the header: `environment` and `metadata` are written as the
/// client sent them, never expanded into a `Value` tree.
#[derive(Debug, Serialize)]
pub struct EventMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: String,
    #[serde(rename = "ingestionId")]
    ingestion_id: Uuid,
    payload: EventPayload<'a>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EventPayload<'a> {
    ingestion_id: Uuid,
    repo_id: Uuid,
    commit_sha: &'a str,
    run_id: &'a str,
    framework: &'a str,
    test_count: usize,
    branch: Option<&'a str>,
    pull_request: Option<&'a str>,
    environment: Option<&'a RawValue>,
    metadata: Option<&'a RawValue>,
}

/// The event for an accepted report.
pub fn event_message(
    ingestion_id: Uuid,
    header: &ReportHeader,
    test_count: usize,
    timestamp: chrono::DateTime<chrono::Utc>,
) -> EventMessage<'_> {
    EventMessage {
        kind: "test.run.received",
        timestamp: timestamp.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ingestion_id,
        payload: EventPayload {
            ingestion_id,
            repo_id: header.repo_id,
            commit_sha: &header.commit_sha,
            run_id: &header.run_id,
            framework: &header.framework,
            test_count,
            branch: header.branch.as_deref(),
            pull_request: header.pull_request.as_deref(),
            environment: header.environment.as_deref(),
            metadata: header.metadata.as_deref(),
        },
    }
}

/// A W3C `traceparent` (version 00, sampled) for a request that came without one, so
/// every message can be correlated with the request that produced it.
pub fn new_traceparent() -> String {
    let trace = Uuid::new_v4().simple().to_string();
    let span = Uuid::new_v4().simple().to_string();
    format!("00-{trace}-{}-01", &span[..16])
}

/// Whether `value` has the shape of a W3C `traceparent` header.
pub fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    parts.len() == 4
        && hex(parts[0], 2)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
}

/// Stores `report` exactly once; see the module docs.
pub async fn store_report(
    pool: &PgPool,
    report: &NewReport<'_>,
    meta: &RequestMeta,
) -> Result<Stored, sqlx::Error> {
    let header = report.header;
    let ingestion_id = Uuid::now_v7();
    let response = accepted_response(ingestion_id, report.test_count);
    let test_count = clamp_count(report.test_count);

    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    let inserted: Option<(Uuid,)> = sqlx::query_as(
        "INSERT INTO ingestions
           (id, tenant, repo_id, commit_sha, run_id, framework, branch, pull_request,
            idempotency_key, test_count, payload, response, request_id, original_body,
            original_content_type)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
         ON CONFLICT ON CONSTRAINT ingestions_duplicate_key DO NOTHING
         RETURNING id",
    )
    .bind(ingestion_id)
    .bind(report.tenant)
    .bind(header.repo_id)
    .bind(&header.commit_sha)
    .bind(&header.run_id)
    .bind(&header.framework)
    .bind(&header.branch)
    .bind(&header.pull_request)
    .bind(&header.idempotency_key)
    .bind(test_count)
    .bind(report.body)
    .bind(&response)
    .bind(&meta.request_id)
    .bind(report.original.map(|o| o.body))
    .bind(report.original.map(|o| o.content_type))
    .fetch_optional(&mut *tx)
    .await?;

    let stored = if inserted.is_some() {
        let message = event_message(ingestion_id, header, report.test_count, chrono::Utc::now());
        sqlx::query(
            "INSERT INTO outbox (ingestion_id, tenant, exchange, routing_key, message,
                                 request_id, traceparent)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(ingestion_id)
        .bind(report.tenant)
        .bind(&report.topology.exchange)
        .bind(&report.topology.routing_key)
        .bind(sqlx::types::Json(&message))
        .bind(&meta.request_id)
        .bind(
            meta.traceparent
                .clone()
                .filter(|t| is_traceparent(t))
                .unwrap_or_else(new_traceparent),
        )
        .execute(&mut *tx)
        .await?;
        Stored::Accepted {
            ingestion_id,
            response,
        }
    } else {
        // The conflicting row is committed (ON CONFLICT waited for it), and this
        // statement takes a fresh snapshot under READ COMMITTED, so it sees it.
        let (id, original): (Uuid, Value) = sqlx::query_as(
            "SELECT id, response FROM ingestions
             WHERE tenant = $1 AND repo_id = $2 AND commit_sha = $3 AND run_id = $4
               AND framework = $5",
        )
        .bind(report.tenant)
        .bind(header.repo_id)
        .bind(&header.commit_sha)
        .bind(&header.run_id)
        .bind(&header.framework)
        .fetch_one(&mut *tx)
        .await?;
        Stored::Duplicate {
            ingestion_id: id,
            response: duplicate_response(original),
        }
    };

    let (action, id) = match &stored {
        Stored::Accepted { ingestion_id, .. } => ("accepted", *ingestion_id),
        Stored::Duplicate { ingestion_id, .. } => ("duplicate", *ingestion_id),
    };
    sqlx::query(
        "INSERT INTO audit_log (tenant, action, repo_id, ingestion_id, request_id, source_ip,
                                user_agent)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(report.tenant)
    .bind(action)
    .bind(header.repo_id)
    .bind(id)
    .bind(&meta.request_id)
    .bind(&meta.source_ip)
    .bind(&meta.user_agent)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    if report.body.len() + report.original.map_or(0, |o| o.body.len()) > SHRINK_AFTER_BYTES {
        // The connection's write buffer grew to the body's size; without this, every
        // pooled connection keeps the largest buffer it ever needed.
        conn.shrink_buffers();
    }
    Ok(stored)
}

/// Parameters of one row of [`insert_ingestions_sql`] (the tenant, `$1`, is shared).
const INGESTION_PARAMS: usize = 14;

/// `INSERT INTO ingestions … VALUES (…), (…) ON CONFLICT … RETURNING id` for `rows`
/// reports, every value its own parameter: `$1` is the tenant, row `i` takes the 14
/// parameters from `$(2 + 14 i)` on. Built from the row count alone, never from input.
///
/// The payload goes to PostgreSQL exactly as the one-report statement sends it: one
/// `text` parameter, read straight from the Bind message into the row. Sent as an
/// element of a `text[]` and unnested, each body was copied three more times on its way
/// into the row (the array built by `array_recv`, the function scan's tuplestore, the
/// row formed from it), each copy into freshly faulted-in memory: for a 2 MB report
/// that was ~3.5 ms of PostgreSQL CPU, a third of its cost (`anchorpipe-bench pgcost`,
/// issue 13). sqlx prepares one statement per row count on each connection (at most
/// `store.maxBatchRows` of them, 64 by default, within its cache of 100).
fn insert_ingestions_sql(rows: usize) -> String {
    use std::fmt::Write as _;

    let mut sql = String::from(
        "INSERT INTO ingestions
           (id, tenant, repo_id, commit_sha, run_id, framework, branch, pull_request,
            idempotency_key, test_count, payload, response, request_id, original_body,
            original_content_type)
         VALUES ",
    );
    for row in 0..rows {
        let first = 2 + row * INGESTION_PARAMS;
        let _ = write!(sql, "{}(${first}, $1", if row == 0 { "" } else { ", " });
        for param in first + 1..first + INGESTION_PARAMS {
            let _ = write!(sql, ", ${param}");
        }
        sql.push(')');
    }
    sql.push_str(" ON CONFLICT ON CONSTRAINT ingestions_duplicate_key DO NOTHING RETURNING id");
    sql
}

/// Stores `reports` of `tenant` in one transaction: one multi-row insert into
/// `ingestions` (`ON CONFLICT DO NOTHING`), one lookup of the stored responses of the
/// duplicates, one insert into `outbox` for the new reports and one into `audit_log` for
/// all. The results are in the order of `reports`. Reports sharing a duplicate key are
/// stored once: the first stands for the others, which are answered as its duplicates.
///
/// Any error fails the whole batch and nothing of it is stored; the caller decides
/// whether to store the reports again one by one ([`store_report`]).
pub async fn store_batch(
    pool: &PgPool,
    tenant: &str,
    topology: &BrokerTopology,
    reports: &[&Submission],
) -> Result<Vec<Stored>, sqlx::Error> {
    // The first report of each key, in key order: the order rows are inserted in, and
    // so the order their unique-index entries are locked in (see the module docs).
    let mut firsts: BTreeMap<DuplicateKey<'_>, usize> = BTreeMap::new();
    for (i, report) in reports.iter().enumerate() {
        firsts.entry(report.key()).or_insert(i);
    }
    let leaders: Vec<&Submission> = firsts.values().map(|&i| reports[i]).collect();
    let ids: Vec<Uuid> = leaders.iter().map(|_| Uuid::now_v7()).collect();
    let responses: Vec<Value> = leaders
        .iter()
        .zip(&ids)
        .map(|(report, id)| accepted_response(*id, report.test_count))
        .collect();

    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    // Every value is its own parameter (see `insert_ingestions_sql`). The argument
    // buffer is sized up front: grown by binding, it copied each large body again at
    // every doubling.
    let mut args = PgArguments::default();
    args.reserve(
        1 + leaders.len() * INGESTION_PARAMS,
        leaders.iter().map(|r| r.size() + 1024).sum(),
    );
    macro_rules! bind {
        ($($value:expr),+ $(,)?) => {
            $(args.add($value).map_err(sqlx::Error::Encode)?;)+
        };
    }
    bind!(tenant);
    for ((report, id), response) in leaders.iter().zip(&ids).zip(&responses) {
        let header = &report.header;
        bind!(
            *id,
            header.repo_id,
            header.commit_sha.as_str(),
            header.run_id.as_str(),
            header.framework.as_str(),
            header.branch.as_deref(),
            header.pull_request.as_deref(),
            header.idempotency_key.as_deref(),
            clamp_count(report.test_count),
            report.body.as_str(),
            response,
            report.meta.request_id.as_str(),
            report.original.as_ref().map(|o| o.body.as_str()),
            report.original.as_ref().map(|o| o.content_type.as_str()),
        );
    }
    let insert = sqlx::query_as_with::<_, (Uuid,), _>(
        sqlx::AssertSqlSafe(insert_ingestions_sql(leaders.len())),
        args,
    );
    let inserted: Vec<(Uuid,)> = insert.fetch_all(&mut *tx).await?;
    let inserted: HashSet<Uuid> = inserted.into_iter().map(|(id,)| id).collect();

    // What each leader became: stored now, or a duplicate of a row stored before.
    let mut outcomes: Vec<Stored> = Vec::with_capacity(leaders.len());
    let conflicted: Vec<&Submission> = leaders
        .iter()
        .zip(&ids)
        .filter(|(_, id)| !inserted.contains(id))
        .map(|(report, _)| *report)
        .collect();
    let mut existing: HashMap<(Uuid, String, String, String), (Uuid, Value)> = HashMap::new();
    if !conflicted.is_empty() {
        // As in `store_report`: the conflicting rows are committed (ON CONFLICT waited
        // for them) and this statement's fresh snapshot sees them.
        let rows: Vec<(Uuid, Value, Uuid, String, String, String)> = sqlx::query_as(
            "SELECT i.id, i.response, i.repo_id, i.commit_sha, i.run_id, i.framework
             FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::text[])
                  AS k(repo_id, commit_sha, run_id, framework)
             JOIN ingestions i
               ON i.tenant = $1 AND i.repo_id = k.repo_id AND i.commit_sha = k.commit_sha
              AND i.run_id = k.run_id AND i.framework = k.framework",
        )
        .bind(tenant)
        .bind(
            conflicted
                .iter()
                .map(|r| r.header.repo_id)
                .collect::<Vec<_>>(),
        )
        .bind(
            conflicted
                .iter()
                .map(|r| r.header.commit_sha.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            conflicted
                .iter()
                .map(|r| r.header.run_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            conflicted
                .iter()
                .map(|r| r.header.framework.as_str())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *tx)
        .await?;
        for (id, response, repo_id, commit_sha, run_id, framework) in rows {
            existing.insert((repo_id, commit_sha, run_id, framework), (id, response));
        }
    }
    for ((report, id), response) in leaders.iter().zip(&ids).zip(&responses) {
        if inserted.contains(id) {
            outcomes.push(Stored::Accepted {
                ingestion_id: *id,
                response: response.clone(),
            });
            continue;
        }
        let (repo_id, commit_sha, run_id, framework) = report.key();
        let key = (
            repo_id,
            commit_sha.to_owned(),
            run_id.to_owned(),
            framework.to_owned(),
        );
        // Neither inserted nor found: refused for this report's sake, so the caller's
        // one-by-one retry gives it its own answer.
        let (id, original) = existing.remove(&key).ok_or(sqlx::Error::RowNotFound)?;
        outcomes.push(Stored::Duplicate {
            ingestion_id: id,
            response: duplicate_response(original),
        });
    }

    let now = chrono::Utc::now();
    let new: Vec<(&Submission, Uuid)> = leaders
        .iter()
        .zip(&outcomes)
        .filter_map(|(report, stored)| match stored {
            Stored::Accepted { ingestion_id, .. } => Some((*report, *ingestion_id)),
            Stored::Duplicate { .. } => None,
        })
        .collect();
    if !new.is_empty() {
        sqlx::query(
            "INSERT INTO outbox (ingestion_id, tenant, exchange, routing_key, message,
                                 request_id, traceparent)
             SELECT o.ingestion_id, $1, $2, $3, o.message, o.request_id, o.traceparent
             FROM UNNEST($4::uuid[], $5::jsonb[], $6::text[], $7::text[])
                  AS o(ingestion_id, message, request_id, traceparent)",
        )
        .bind(tenant)
        .bind(&topology.exchange)
        .bind(&topology.routing_key)
        .bind(new.iter().map(|(_, id)| *id).collect::<Vec<_>>())
        .bind(
            new.iter()
                .map(|(r, id)| sqlx::types::Json(event_message(*id, &r.header, r.test_count, now)))
                .collect::<Vec<_>>(),
        )
        .bind(
            new.iter()
                .map(|(r, _)| r.meta.request_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            new.iter()
                .map(|(r, _)| {
                    r.meta
                        .traceparent
                        .clone()
                        .filter(|t| is_traceparent(t))
                        .unwrap_or_else(new_traceparent)
                })
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
    }

    // Every report's own answer: its leader's outcome, as a duplicate unless it is the
    // leader itself.
    let by_leader: HashMap<DuplicateKey<'_>, &Stored> =
        leaders.iter().map(|r| r.key()).zip(&outcomes).collect();
    let mut results = Vec::with_capacity(reports.len());
    for (i, report) in reports.iter().enumerate() {
        let key = report.key();
        let leader = by_leader
            .get(&key)
            .copied()
            .ok_or(sqlx::Error::RowNotFound)?;
        let own = if firsts.get(&key) == Some(&i) {
            leader.clone()
        } else {
            match leader {
                Stored::Accepted {
                    ingestion_id,
                    response,
                } => Stored::Duplicate {
                    ingestion_id: *ingestion_id,
                    response: duplicate_response(response.clone()),
                },
                duplicate @ Stored::Duplicate { .. } => duplicate.clone(),
            }
        };
        results.push(own);
    }

    sqlx::query(
        "INSERT INTO audit_log (tenant, action, repo_id, ingestion_id, request_id, source_ip,
                                user_agent)
         SELECT $1, a.action, a.repo_id, a.ingestion_id, a.request_id, a.source_ip,
                a.user_agent
         FROM UNNEST($2::text[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::text[])
              AS a(action, repo_id, ingestion_id, request_id, source_ip, user_agent)",
    )
    .bind(tenant)
    .bind(
        results
            .iter()
            .map(|stored| match stored {
                Stored::Accepted { .. } => "accepted",
                Stored::Duplicate { .. } => "duplicate",
            })
            .collect::<Vec<_>>(),
    )
    .bind(reports.iter().map(|r| r.header.repo_id).collect::<Vec<_>>())
    .bind(results.iter().map(Stored::ingestion_id).collect::<Vec<_>>())
    .bind(
        reports
            .iter()
            .map(|r| r.meta.request_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        reports
            .iter()
            .map(|r| r.meta.source_ip.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        reports
            .iter()
            .map(|r| r.meta.user_agent.as_deref())
            .collect::<Vec<_>>(),
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    if reports.iter().map(|r| r.size()).sum::<usize>() > SHRINK_AFTER_BYTES {
        conn.shrink_buffers();
    }
    Ok(results)
}

/// Records a refused, authenticated request (invalid payload, repository mismatch). Its
/// rate is bounded by the rate limiter, which runs before validation.
pub async fn audit_rejected(
    pool: &PgPool,
    tenant: &str,
    repo_id: Uuid,
    reason: &str,
    meta: &RequestMeta,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_log (tenant, action, repo_id, reason, request_id, source_ip, user_agent)
         VALUES ($1, 'rejected', $2, $3, $4, $5, $6)",
    )
    .bind(tenant)
    .bind(repo_id)
    .bind(reason)
    .bind(&meta.request_id)
    .bind(&meta.source_ip)
    .bind(&meta.user_agent)
    .execute(pool)
    .await?;
    Ok(())
}

/// Unsent outbox rows for a tenant and the age of the oldest, in seconds.
pub async fn outbox_backlog(pool: &PgPool, tenant: &str) -> Result<(i64, f64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*),
                COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0)
         FROM outbox WHERE tenant = $1 AND sent_at IS NULL",
    )
    .bind(tenant)
    .fetch_one(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_keeps_its_shape_with_raw_environment_and_metadata() {
        let raw = |text: &str| RawValue::from_string(text.to_owned()).ok();
        let header = ReportHeader {
            repo_id: Uuid::nil(),
            commit_sha: "0123456789abcdef0123456789abcdef01234567".to_owned(),
            run_id: "r".to_owned(),
            framework: "jest".to_owned(),
            branch: Some("main".to_owned()),
            pull_request: None,
            environment: raw(r#"{"CI": "true"}"#),
            metadata: raw(r#"{"a": [1, {"b": null}]}"#),
            idempotency_key: None,
        };
        let id = Uuid::from_u128(7);
        let at = chrono::DateTime::from_timestamp(1_764_351_780, 0).unwrap_or_default();
        let message = serde_json::to_value(event_message(id, &header, 3, at)).ok();
        assert_eq!(
            message,
            Some(json!({
                "type": "test.run.received",
                "timestamp": "2025-11-28T17:43:00.000Z",
                "ingestionId": id,
                "payload": {
                    "ingestionId": id,
                    "repoId": Uuid::nil(),
                    "commitSha": "0123456789abcdef0123456789abcdef01234567",
                    "runId": "r",
                    "framework": "jest",
                    "testCount": 3,
                    "branch": "main",
                    "pullRequest": null,
                    "environment": {"CI": "true"},
                    "metadata": {"a": [1, {"b": null}]},
                }
            }))
        );
    }

    #[test]
    fn the_ingestions_insert_gives_every_row_its_own_parameters() {
        let one = insert_ingestions_sql(1);
        assert!(
            one.contains("VALUES ($2, $1, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) ON CONFLICT"),
            "{one}"
        );
        let three = insert_ingestions_sql(3);
        assert!(three.contains("), ($16, $1, $17,"), "{three}");
        assert!(three.contains(", $43) ON CONFLICT"), "{three}");
        assert!(!three.contains("$44"), "{three}");
    }

    #[test]
    fn generated_traceparents_are_well_formed() {
        let t = new_traceparent();
        assert!(is_traceparent(&t), "{t}");
        assert!(!is_traceparent("00-abc-def-01"));
        assert!(!is_traceparent(""));
    }
}
