//! Group commit against a real PostgreSQL: reports sent at the same moment share one
//! transaction, and each client still gets its own answer, only after that commit.
//!
//! Each test gathers its reports into one batch by giving the batch a long wait and a
//! row bound equal to the number of reports sent, so the batch closes the moment the
//! last one is ready; the `commit_batch_rows` metric shows that it did.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anchorpipe_crds::config::IngestConfig;
use axum::Router;
use axum::http::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use support::*;
use uuid::Uuid;

/// A tenant whose reports are gathered `rows` to a transaction, one transaction at a time.
fn batching(rows: u32) -> IngestConfig {
    let mut config = tenant_config();
    config.store.max_batch_rows = rows;
    config.store.max_batch_wait_ms = 1000;
    config.store.concurrent_batches = 1;
    config
}

/// Sends every `(repo, run_id)` at once; the answers in the same order.
async fn post_all(app: &Router, reports: &[(Uuid, String)]) -> Vec<(StatusCode, Value)> {
    let tasks: Vec<_> = reports
        .iter()
        .map(|(repo, run_id)| {
            let (app, repo, run_id) = (app.clone(), *repo, run_id.clone());
            tokio::spawn(async move { post(&app, repo, &run_id).await })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// A value of the metrics exposition, e.g. `anchorpipe_ingest_commit_batch_rows_count`.
fn metric(state: &anchorpipe_ingest::http::AppState, name: &str) -> f64 {
    let text = state.metrics.encode();
    text.lines()
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("{name} missing in:\n{text}"))
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn new_and_duplicate_reports_sent_together_each_get_their_own_answer(pool: PgPool) {
    let config = batching(16);
    let repo = config.repositories[0];
    let state = state(pool.clone(), config);
    let app = router(&state);

    // Stored before, one transaction each.
    let mut earlier = Vec::new();
    for i in 0..4 {
        let (status, json) = post(&app, repo, &format!("earlier-{i}")).await;
        assert_eq!(status, StatusCode::OK, "{json}");
        earlier.push(json);
    }
    assert_eq!(
        metric(&state, "anchorpipe_ingest_commit_batch_rows_count"),
        4.0
    );

    // One batch of 16: 8 new reports, a duplicate of each earlier one, and 4 copies of
    // one new report (duplicates of each other inside the batch).
    let mut reports: Vec<(Uuid, String)> = Vec::new();
    reports.extend((0..8).map(|i| (repo, format!("new-{i}"))));
    reports.extend((0..4).map(|i| (repo, format!("earlier-{i}"))));
    reports.extend((0..4).map(|_| (repo, "twin".to_owned())));
    let answers = post_all(&app, &reports).await;
    assert_eq!(
        metric(&state, "anchorpipe_ingest_commit_batch_rows_count"),
        5.0
    );
    assert_eq!(
        metric(&state, "anchorpipe_ingest_commit_batch_rows_sum"),
        20.0
    );

    for (status, json) in &answers {
        assert_eq!(*status, StatusCode::OK, "{json}");
        assert_eq!(json["message"], "Test report received");
        assert_eq!(json["summary"]["tests_parsed"], 1);
    }
    let new_ids: HashSet<&str> = answers[..8]
        .iter()
        .map(|(_, json)| {
            assert!(json.get("isDuplicate").is_none(), "{json}");
            json["runId"].as_str().unwrap()
        })
        .collect();
    assert_eq!(new_ids.len(), 8, "every new report got its own run");
    for (i, (_, json)) in answers[8..12].iter().enumerate() {
        assert_eq!(json["isDuplicate"], true, "{json}");
        assert_eq!(json["runId"], earlier[i]["runId"], "the original run");
        assert_eq!(json["summary"], earlier[i]["summary"]);
    }
    let twins = &answers[12..];
    let firsts = twins
        .iter()
        .filter(|(_, json)| json.get("isDuplicate").is_none())
        .count();
    assert_eq!(firsts, 1, "exactly one copy is stored: {twins:?}");
    let twin_ids: HashSet<&str> = twins
        .iter()
        .map(|(_, json)| json["runId"].as_str().unwrap())
        .collect();
    assert_eq!(twin_ids.len(), 1, "every copy names the stored run");
    assert!(!new_ids.contains(twin_ids.iter().next().unwrap()));

    // What is stored: 4 + 8 + 1 reports, each with its outbox row; an audit row per request.
    assert_eq!(count(&pool, "SELECT count(*) FROM ingestions").await, 13);
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox").await, 13);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM audit_log WHERE action = 'accepted'"
        )
        .await,
        13
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM audit_log WHERE action = 'duplicate'"
        )
        .await,
        4 + 3
    );
    // Every audit row points at the run its request was answered with.
    for (_, json) in &answers {
        let id: Uuid = json["runId"].as_str().unwrap().parse().unwrap();
        let audited: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM audit_log WHERE ingestion_id = $1 AND action IN ('accepted', 'duplicate')",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(audited >= 1);
    }
    // Each new report's outbox message names its own run and report.
    let messages: Vec<(Uuid, Value)> = sqlx::query_as("SELECT ingestion_id, message FROM outbox")
        .fetch_all(&pool)
        .await
        .unwrap();
    for (id, message) in messages {
        assert_eq!(message["ingestionId"], id.to_string());
        let run_id: String = sqlx::query_scalar("SELECT run_id FROM ingestions WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(message["payload"]["runId"], run_id);
    }
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn a_report_the_database_refuses_does_not_fail_the_others_in_its_batch(pool: PgPool) {
    // The database refuses one report for what it holds (as a row-level security policy
    // or a constraint would): a trigger stands in for that here.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.run_id = 'poison' THEN
                 RAISE EXCEPTION 'poisoned report' USING ERRCODE = 'check_violation';
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_poison BEFORE INSERT ON ingestions
             FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let config = batching(8);
    let repo = config.repositories[0];
    let state = state(pool.clone(), config);
    let app = router(&state);

    let mut reports: Vec<(Uuid, String)> = (0..7).map(|i| (repo, format!("good-{i}"))).collect();
    reports.insert(3, (repo, "poison".to_owned()));
    let answers = post_all(&app, &reports).await;
    assert_eq!(
        metric(&state, "anchorpipe_ingest_commit_batch_rows_count"),
        1.0
    );
    assert_eq!(
        metric(&state, "anchorpipe_ingest_commit_batch_rows_sum"),
        8.0
    );
    assert_eq!(
        metric(&state, "anchorpipe_ingest_commit_fallbacks_total"),
        1.0
    );

    let mut stored = HashSet::new();
    for ((_, run_id), (status, json)) in reports.iter().zip(&answers) {
        if run_id == "poison" {
            assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{json}");
            continue;
        }
        assert_eq!(*status, StatusCode::OK, "{run_id}: {json}");
        assert!(json.get("isDuplicate").is_none());
        stored.insert(json["runId"].as_str().unwrap().parse::<Uuid>().unwrap());
    }
    let ids: HashSet<Uuid> = sqlx::query_scalar("SELECT id FROM ingestions")
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(ids, stored, "the good reports, and only they, are stored");
    let outboxed: HashSet<Uuid> = sqlx::query_scalar("SELECT ingestion_id FROM outbox")
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(outboxed, stored);
    assert_eq!(count(&pool, "SELECT count(*) FROM audit_log").await, 7);
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn database_loss_during_a_batch_answers_503_to_all_and_stores_none_of_it(pool: PgPool) {
    let config = batching(6);
    let repo = config.repositories[0];
    let state = state(pool.clone(), config);
    let app = router(&state);

    // Hold the outbox so the batch stops half-way: its ingestions are inserted, its
    // outbox insert waits for this lock.
    let mut holder = pool.acquire().await.unwrap();
    sqlx::query("BEGIN").execute(&mut *holder).await.unwrap();
    sqlx::query("LOCK TABLE outbox IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();

    let reports: Vec<(Uuid, String)> = (0..6).map(|i| (repo, format!("lost-{i}"))).collect();
    let sending = {
        let (app, reports) = (app.clone(), reports.clone());
        tokio::spawn(async move { post_all(&app, &reports).await })
    };

    // The batch's connection, waiting on the lock mid-transaction, is lost.
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid: i32 = loop {
        let waiting: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'
               AND query LIKE 'INSERT INTO outbox%'",
        )
        .fetch_optional(&pool)
        .await
        .unwrap();
        if let Some(pid) = waiting {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "the batch never reached the outbox"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let inserted_meanwhile: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE pid = $1 AND relation = 'ingestions'::regclass",
    )
    .bind(pid)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        inserted_meanwhile > 0,
        "the batch had written to ingestions"
    );
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(terminated);
    sqlx::query("ROLLBACK").execute(&mut *holder).await.unwrap();
    drop(holder);

    let answers = sending.await.unwrap();
    assert_eq!(
        metric(&state, "anchorpipe_ingest_commit_batch_rows_count"),
        1.0
    );
    assert_eq!(
        metric(&state, "anchorpipe_ingest_commit_batch_rows_sum"),
        6.0
    );
    assert_eq!(
        metric(&state, "anchorpipe_ingest_commit_fallbacks_total"),
        0.0
    );
    for (status, json) in &answers {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{json}");
        assert_eq!(json["error"], "Report could not be stored; retry later");
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM ingestions").await, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox").await, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM audit_log").await, 0);

    // The clients retry and are stored as new reports: nothing of the lost batch remained.
    let answers = post_all(&app, &reports).await;
    for (status, json) in &answers {
        assert_eq!(*status, StatusCode::OK, "{json}");
        assert!(json.get("isDuplicate").is_none(), "{json}");
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM ingestions").await, 6);
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox").await, 6);
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn a_lone_report_waits_at_most_the_batch_wait(pool: PgPool) {
    let mut config = tenant_config();
    config.store.max_batch_wait_ms = 300;
    let repo = config.repositories[0];
    let state = state(pool.clone(), config);
    let app = router(&state);
    // Warm the pool, so the second report's time is the batch wait and the transaction.
    assert_eq!(post(&app, repo, "warm").await.0, StatusCode::OK);
    let started = Instant::now();
    let (status, json) = post(&app, repo, "lone").await;
    let elapsed = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{json}");
    assert!(
        elapsed >= Duration::from_millis(300),
        "answered after {elapsed:?}, before the wait ended"
    );
    assert!(
        elapsed < Duration::from_millis(300) + Duration::from_secs(2),
        "answered after {elapsed:?}"
    );
}
