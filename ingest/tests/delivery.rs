//! Delivery through the outbox against a real RabbitMQ and PostgreSQL: the shared
//! topology code, dead-lettering, prompt publishing with confirms, two relays on one
//! outbox, and retention. Broker outages and process crashes are in `outage.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anchorpipe_crds::config::QueueType;
use anchorpipe_ingest::relay::{self, Relay};
use axum::http::StatusCode;
use futures_util::StreamExt as _;
use lapin::BasicProperties;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
use sqlx::PgPool;
use support::*;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

#[tokio::test]
async fn topology_is_declared_idempotently_checked_and_deleted() {
    let mut config = tenant_config();
    config.broker.message_ttl_ms = Some(60_000);
    let topology = &config.broker;
    declare(topology).await;
    declare(topology).await; // idempotent
    let (connection, channel) = channel().await;
    anchorpipe_crds::topology::check(&channel, topology)
        .await
        .unwrap();

    // The same queue name with different arguments is refused, naming the queue.
    let mut conflicting = topology.clone();
    conflicting.queue_type = QueueType::Classic;
    let channel2 = connection.create_channel().await.unwrap();
    let error = anchorpipe_crds::topology::declare(&channel2, &conflicting)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains(&topology.dead_letter_queue),
        "{error}"
    );

    delete(topology).await;
    let channel3 = connection.create_channel().await.unwrap();
    let error = anchorpipe_crds::topology::check(&channel3, topology)
        .await
        .unwrap_err();
    assert!(error.to_string().contains(&topology.queue), "{error}");
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test]
async fn a_message_rejected_without_requeue_lands_in_the_tenants_dead_letter_queue() {
    let a = tenant_config();
    let b = tenant_config();
    declare(&a.broker).await;
    declare(&b.broker).await;
    let (connection, channel) = channel().await;
    channel
        .basic_publish(
            a.broker.exchange.as_str().into(),
            a.broker.routing_key.as_str().into(),
            BasicPublishOptions::default(),
            b"{\"poison\":true}",
            BasicProperties::default().with_message_id("m-1".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let message = loop {
        if let Some(message) = channel
            .basic_get(a.broker.queue.as_str().into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            break message;
        }
        assert!(Instant::now() < deadline, "message never reached the queue");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    channel
        .basic_reject(
            message.delivery.delivery_tag,
            BasicRejectOptions { requeue: false },
        )
        .await
        .unwrap();
    let expected: HashSet<String> = ["m-1".to_owned()].into();
    let dead = take_until(
        &a.broker.dead_letter_queue,
        &expected,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body["poison"], true);
    assert_eq!(
        queue_depth(&b.broker.dead_letter_queue).await,
        0,
        "other tenant untouched"
    );
    assert_eq!(queue_depth(&a.broker.queue).await, 0);
    let _ = connection.close(200, "done".into()).await;
    delete(&a.broker).await;
    delete(&b.broker).await;
}

/// Notes when a message first arrived.
fn record(
    delivery: lapin::message::Delivery,
    arrivals: &mut std::collections::HashMap<String, Instant>,
    messages: &mut Vec<lapin::message::Delivery>,
) {
    let id = delivery
        .properties
        .message_id()
        .clone()
        .map(|id| id.to_string())
        .unwrap_or_default();
    arrivals.entry(id).or_insert_with(Instant::now);
    messages.push(delivery);
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn accepted_reports_are_published_promptly_with_confirms(pool: PgPool) {
    let config = tenant_config();
    let repo = config.repositories[0];
    declare(&config.broker).await;
    let state = state(pool.clone(), config.clone());
    let app = router(&state);
    // Polling is slowed to 30 s: prompt delivery can only come from the notification.
    let settings = relay::RelaySettings {
        poll_interval: Duration::from_secs(30),
        ..fast_relay()
    };
    let relay = Relay::new(
        pool.clone(),
        &config,
        amqp_url(),
        settings,
        state.metrics.clone(),
        state.delivery.clone(),
    );
    let shutdown = CancellationToken::new();
    let relay_task = tokio::spawn(relay.run(shutdown.clone()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !state.delivery.broker_ready.load(Ordering::Relaxed) {
        assert!(Instant::now() < deadline, "relay never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Consume as the reports come in, recording when each arrived.
    let (connection, channel) = channel().await;
    let mut consumer = channel
        .basic_consume(
            config.broker.queue.as_str().into(),
            "test".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let n = 100;
    let mut acked_at = std::collections::HashMap::new();
    let mut arrivals = std::collections::HashMap::new();
    let mut messages = Vec::new();
    for i in 0..n {
        let (status, json) = post(&app, repo, &format!("run-{i}")).await;
        assert_eq!(status, StatusCode::OK, "{json}");
        acked_at.insert(json["runId"].as_str().unwrap().to_owned(), Instant::now());
        // Pick up whatever arrived meanwhile without blocking the sender.
        while let Ok(Some(delivery)) =
            tokio::time::timeout(Duration::from_millis(1), consumer.next()).await
        {
            record(delivery.unwrap(), &mut arrivals, &mut messages);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while arrivals.len() < n && Instant::now() < deadline {
        if let Ok(Some(delivery)) =
            tokio::time::timeout(Duration::from_millis(100), consumer.next()).await
        {
            record(delivery.unwrap(), &mut arrivals, &mut messages);
        }
    }
    assert_eq!(arrivals.len(), n, "every accepted report is in the queue");
    let mut delays: Vec<Duration> = acked_at
        .iter()
        .map(|(id, at)| arrivals[id].saturating_duration_since(*at))
        .collect();
    delays.sort();
    eprintln!(
        "200 → in queue: p50 {:?}, p99 {:?}, max {:?} (n = {n})",
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays.last().unwrap()
    );
    // Far below the 30 s poll: the notification drove every publish.
    assert!(percentile(&delays, 0.99) < Duration::from_secs(5));

    // The message: the existing event shape plus the ingestion id, persistent, headed.
    let delivery = &messages[0];
    let id = delivery
        .properties
        .message_id()
        .clone()
        .unwrap()
        .to_string();
    let body: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
    assert_eq!(body["type"], "test.run.received");
    assert_eq!(body["ingestionId"], id.as_str());
    assert_eq!(body["payload"]["repoId"], repo.to_string());
    assert_eq!(body["payload"]["framework"], "junit");
    assert_eq!(body["payload"]["testCount"], 1);
    assert!(body["timestamp"].is_string());
    assert_eq!(delivery.properties.delivery_mode(), &Some(2));
    assert_eq!(
        delivery.properties.content_type().clone().unwrap().as_str(),
        "application/json"
    );
    let headers = delivery.properties.headers().clone().unwrap();
    let header = |name: &str| match headers.inner().get(name) {
        Some(lapin::types::AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("header {name}: {other:?}"),
    };
    assert_eq!(header("tenant"), config.tenant);
    assert!(!header("request-id").is_empty());
    assert!(header("traceparent").starts_with("00-"));

    // A message can reach the consumer a moment before its row is marked sent, and the
    // row is committed a moment before the relay counts it in its metrics.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let unsent: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
        let published = state.metrics.published.get();
        if unsent == 0 && published == n as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{unsent} rows never marked sent, {published} of {n} counted as published"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    relay_task.await.unwrap();
    let _ = connection.close(200, "done".into()).await;
    delete(&config.broker).await;
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn two_relays_on_one_outbox_publish_every_row(pool: PgPool) {
    let config = tenant_config();
    let repo = config.repositories[0];
    declare(&config.broker).await;
    let state = state(pool.clone(), config.clone());
    let app = router(&state);
    let n = 1000;
    let mut expected = HashSet::new();
    for i in 0..n {
        let (status, json) = post(&app, repo, &format!("run-{i}")).await;
        assert_eq!(status, StatusCode::OK);
        expected.insert(json["runId"].as_str().unwrap().to_owned());
    }
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let relays: Vec<_> = (0..2)
        .map(|_| {
            let relay = Relay::new(
                pool.clone(),
                &config,
                amqp_url(),
                relay::RelaySettings {
                    batch_size: 100,
                    ..fast_relay()
                },
                state.metrics.clone(),
                state.delivery.clone(),
            );
            tokio::spawn(relay.run(shutdown.clone()))
        })
        .collect();
    let taken = take_until(&config.broker.queue, &expected, Duration::from_secs(60)).await;
    let elapsed = started.elapsed();
    let ids: HashSet<String> = taken.iter().map(|t| t.message_id.clone()).collect();
    assert!(
        expected.is_subset(&ids),
        "lost {}",
        expected.difference(&ids).count()
    );
    let duplicates = taken.len() - ids.len();
    eprintln!(
        "two relays: {n} rows, {} messages taken, {duplicates} duplicates, {:?}",
        taken.len(),
        elapsed
    );
    assert!(taken.iter().all(|t| t.persistent));
    shutdown.cancel();
    for relay in relays {
        relay.await.unwrap();
    }
    let unsent: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(unsent, 0);
    delete(&config.broker).await;
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn relay_is_not_ready_until_the_topology_exists(pool: PgPool) {
    let config = tenant_config();
    let repo = config.repositories[0];
    let state = state(pool.clone(), config.clone());
    state.delivery.relay_enabled.store(true, Ordering::Relaxed);
    let app = router(&state);
    let shutdown = CancellationToken::new();
    let task = start_relay(&pool, &config, &state, fast_relay(), &shutdown);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ready = app
        .clone()
        .oneshot(
            axum::http::Request::get("/readyz")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Reports are still accepted into the outbox meanwhile.
    let (status, json) = post(&app, repo, "early").await;
    assert_eq!(status, StatusCode::OK);
    let expected: HashSet<String> = [json["runId"].as_str().unwrap().to_owned()].into();

    declare(&config.broker).await;
    let taken = take_until(&config.broker.queue, &expected, Duration::from_secs(20)).await;
    assert_eq!(taken.len(), 1);
    assert!(state.delivery.broker_ready.load(Ordering::Relaxed));
    shutdown.cancel();
    task.await.unwrap();
    delete(&config.broker).await;
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn retention_deletes_only_old_sent_rows(pool: PgPool) {
    let config = tenant_config();
    let repo = config.repositories[0];
    let state = state(pool.clone(), config.clone());
    let app = router(&state);
    for i in 0..30 {
        assert_eq!(post(&app, repo, &format!("r{i}")).await.0, StatusCode::OK);
    }
    // 10 sent long ago, 10 sent just now, 10 unsent.
    sqlx::query(
        "UPDATE outbox SET sent_at = now() - interval '2 hours'
         WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT 10)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE outbox SET sent_at = now()
         WHERE id IN (SELECT id FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT 10)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let deleted = relay::clean_sent(&pool, Duration::from_secs(3600), 3)
        .await
        .unwrap();
    assert_eq!(deleted, 10);
    let (sent, unsent): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE sent_at IS NOT NULL),
                count(*) FILTER (WHERE sent_at IS NULL) FROM outbox",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((sent, unsent), (10, 10));
    // The ingestions themselves are kept.
    let ingestions: i64 = sqlx::query_scalar("SELECT count(*) FROM ingestions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(ingestions, 30);
}

/// The relay's confirmed-publish rate next to a plain publish-with-confirms loop with
/// the same number in flight, on the same broker in the same run. Printed for the
/// record; only correctness is asserted (speed targets live in the benchmark harness).
#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn relay_rate_next_to_a_plain_confirm_loop(pool: PgPool) {
    let config = tenant_config();
    declare(&config.broker).await;
    let n: i64 = 3000;
    let batch = relay::RelaySettings::default().batch_size;
    // Fill the outbox directly: the relay alone is measured, not the HTTP side.
    fill_outbox(&pool, &config, n, &[]).await;
    let state = state(pool.clone(), config.clone());
    let relay = Relay::new(
        pool.clone(),
        &config,
        amqp_url(),
        relay::RelaySettings::default(),
        state.metrics.clone(),
        state.delivery.clone(),
    );
    let (connection, channel) = channel().await;
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    let started = Instant::now();
    let outcome = relay.drain(&connection).await.unwrap();
    let relay_elapsed = started.elapsed();
    assert_eq!(outcome.refused, 0);
    assert_eq!(outcome.confirmed as i64, n);

    // The plain loop: the same message size, `batch` in flight, confirms awaited per batch.
    let message = serde_json::to_vec(&serde_json::json!({
        "type": "test.run.received",
        "ingestionId": uuid::Uuid::new_v4(),
        "payload": {"testCount": 1}
    }))
    .unwrap();
    let started = Instant::now();
    let mut sent = 0;
    while sent < n {
        let mut pending = Vec::new();
        for _ in 0..batch.min(n - sent) {
            pending.push(
                channel
                    .basic_publish(
                        config.broker.exchange.as_str().into(),
                        config.broker.routing_key.as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        &message,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .unwrap(),
            );
            sent += 1;
        }
        for confirm in futures_util::future::join_all(pending).await {
            assert!(confirm.unwrap().is_ack());
        }
    }
    let plain_elapsed = started.elapsed();
    let rate = |elapsed: Duration| n as f64 / elapsed.as_secs_f64();
    eprintln!(
        "relay alone: {n} confirmed in {relay_elapsed:?} ({:.0} msg/s); plain confirm loop, {batch} in flight: {plain_elapsed:?} ({:.0} msg/s); ratio {:.2}",
        rate(relay_elapsed),
        rate(plain_elapsed),
        rate(relay_elapsed) / rate(plain_elapsed)
    );
    let _ = connection.close(200, "done".into()).await;
    delete(&config.broker).await;
}

/// Writes `n` due outbox rows (with their ingestions) straight into the table, in id
/// order; the rows at the positions in `poison` name an exchange that does not exist,
/// so the broker closes the channel that publishes them. Returns the ingestion ids in
/// id order.
async fn fill_outbox(
    pool: &PgPool,
    config: &anchorpipe_crds::IngestConfig,
    n: i64,
    poison: &[i64],
) -> Vec<String> {
    sqlx::query_scalar(
        "WITH i AS (
             INSERT INTO ingestions (id, tenant, repo_id, commit_sha, run_id, framework,
                                     test_count, payload, response, request_id)
             SELECT gen_random_uuid(), $1, gen_random_uuid(), repeat('a', 40), g::text,
                    'junit', 1, '{}', '{}', 'fill'
             FROM generate_series(1, $2) g
             RETURNING id, run_id::bigint AS position)
         INSERT INTO outbox (ingestion_id, tenant, exchange, routing_key, message, request_id)
         SELECT id, $1,
                CASE WHEN position = ANY($5) THEN 'anchorpipe.gone.' || $1 ELSE $3 END, $4,
                jsonb_build_object('type', 'test.run.received', 'ingestionId', id,
                                   'payload', jsonb_build_object('testCount', 1)),
                'fill'
         FROM i ORDER BY position
         RETURNING ingestion_id::text",
    )
    .bind(&config.tenant)
    .bind(n)
    .bind(&config.broker.exchange)
    .bind(&config.broker.routing_key)
    .bind(poison)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Ingestion ids of the tenant's rows marked sent.
async fn sent_ids(pool: &PgPool) -> HashSet<String> {
    sqlx::query_scalar("SELECT ingestion_id::text FROM outbox WHERE sent_at IS NOT NULL")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn overlapping_batches_with_poison_rows_charge_only_those_rows(pool: PgPool) {
    let config = tenant_config();
    declare(&config.broker).await;
    // 400 rows in batches of 50, three batches in flight; the poison rows (positions
    // 75 and 120) sit in the second and third batches, which are in flight together.
    let ids = fill_outbox(&pool, &config, 400, &[75, 120]).await;
    let poison: HashSet<String> = [ids[74].clone(), ids[119].clone()].into();
    let expected: HashSet<String> = ids
        .iter()
        .filter(|id| !poison.contains(*id))
        .cloned()
        .collect();
    let state = state(pool.clone(), config.clone());
    let relay = Relay::new(
        pool.clone(),
        &config,
        amqp_url(),
        relay::RelaySettings {
            batch_size: 50,
            batches_in_flight: 3,
            // No retry falls due within the drain, so each poison row is tried once.
            retry_base: Duration::from_secs(60),
            retry_max: Duration::from_secs(60),
            ..fast_relay()
        },
        state.metrics.clone(),
        state.delivery.clone(),
    );
    let (connection, _) = channel().await;
    let outcome = relay.drain(&connection).await.unwrap();
    assert_eq!(
        outcome,
        relay::BatchOutcome {
            confirmed: 398,
            refused: 2
        }
    );

    // Each poison row is charged one attempt; no other row is charged or left unsent.
    let charged: Vec<(String, i32, bool, Option<String>)> = sqlx::query_as(
        "SELECT ingestion_id::text, attempts, sent_at IS NOT NULL, last_error
         FROM outbox WHERE attempts > 0 OR sent_at IS NULL ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(charged.len(), 2, "{charged:?}");
    for (id, attempts, sent, error) in &charged {
        assert!(poison.contains(id), "{id} charged");
        assert_eq!(*attempts, 1);
        assert!(!sent);
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.contains("closed the channel")),
            "{error:?}"
        );
    }
    assert_eq!(sent_ids(&pool).await, expected);

    // Everything else reached the queue (a batch that was isolated may have been
    // published twice: at-least-once), and nothing of the poison rows did.
    let taken = take_until(&config.broker.queue, &expected, Duration::from_secs(20)).await;
    let taken: HashSet<String> = taken.into_iter().map(|t| t.message_id).collect();
    assert!(
        expected.is_subset(&taken),
        "lost {}",
        expected.difference(&taken).count()
    );
    assert!(taken.is_disjoint(&poison));
    let _ = connection.close(200, "done".into()).await;
    delete(&config.broker).await;
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn losing_the_connection_with_batches_in_flight_loses_nothing(pool: PgPool) {
    let config = tenant_config();
    declare(&config.broker).await;
    let n = 3000;
    let ids = fill_outbox(&pool, &config, n, &[]).await;
    let state = state(pool.clone(), config.clone());
    let relay = Relay::new(
        pool.clone(),
        &config,
        amqp_url(),
        relay::RelaySettings {
            batch_size: 100,
            batches_in_flight: 3,
            ..fast_relay()
        },
        state.metrics.clone(),
        state.delivery.clone(),
    );
    let (connection, _) = channel().await;
    // The connection goes away once some batches are done and others are in flight.
    let cut = async {
        loop {
            let sent: i64 =
                sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            if sent >= 300 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let _ = connection.close(320, "connection lost".into()).await;
    };
    let (drained, ()) = tokio::join!(relay.drain(&connection), cut);
    assert!(
        drained.is_err(),
        "the drain finished before the cut: {drained:?}"
    );

    // Nothing was charged for the loss, nothing is marked sent that the broker does not
    // hold, and the rows of the aborted batches are still due.
    let charged: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE attempts > 0")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(charged, 0);
    let marked = sent_ids(&pool).await;
    assert!(marked.len() < ids.len(), "every row marked despite the cut");
    let mut taken: HashSet<String> =
        take_until(&config.broker.queue, &marked, Duration::from_secs(20))
            .await
            .into_iter()
            .map(|t| t.message_id)
            .collect();
    assert!(
        marked.is_subset(&taken),
        "{} rows marked sent but not in the queue",
        marked.difference(&taken).count()
    );
    let due: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND next_attempt_at <= now()",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(due as usize, ids.len() - marked.len());

    // A new connection delivers the rest; together nothing is lost.
    let (connection, _) = channel().await;
    let outcome = relay.drain(&connection).await.unwrap();
    assert_eq!(outcome.refused, 0);
    assert_eq!(outcome.confirmed, ids.len() - marked.len());
    let expected: HashSet<String> = ids.into_iter().collect();
    let rest: HashSet<String> = expected.difference(&taken).cloned().collect();
    taken.extend(
        take_until(&config.broker.queue, &rest, Duration::from_secs(20))
            .await
            .into_iter()
            .map(|t| t.message_id),
    );
    assert!(
        expected.is_subset(&taken),
        "lost {}",
        expected.difference(&taken).count()
    );
    assert_eq!(sent_ids(&pool).await, expected);
    let _ = connection.close(200, "done".into()).await;
    delete(&config.broker).await;
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn two_relays_with_overlapping_batches_never_publish_a_row_twice(pool: PgPool) {
    let config = tenant_config();
    declare(&config.broker).await;
    let expected: HashSet<String> = fill_outbox(&pool, &config, 2000, &[])
        .await
        .into_iter()
        .collect();
    let state = state(pool.clone(), config.clone());
    let shutdown = CancellationToken::new();
    // Claims of both relays and of each relay's lanes interleave; SKIP LOCKED keeps
    // every batch in flight disjoint from every other, so with no failure nothing is
    // published twice.
    let relays: Vec<_> = (0..2)
        .map(|_| {
            start_relay(
                &pool,
                &config,
                &state,
                relay::RelaySettings {
                    batch_size: 50,
                    batches_in_flight: 3,
                    ..fast_relay()
                },
                &shutdown,
            )
        })
        .collect();
    let taken = take_until(&config.broker.queue, &expected, Duration::from_secs(60)).await;
    let delivered: HashSet<String> = taken.iter().map(|t| t.message_id.clone()).collect();
    assert!(
        expected.is_subset(&delivered),
        "lost {}",
        expected.difference(&delivered).count()
    );
    assert_eq!(taken.len(), expected.len(), "a row was published twice");
    shutdown.cancel();
    for relay in relays {
        relay.await.unwrap();
    }
    assert_eq!(sent_ids(&pool).await, expected);
    assert_eq!(state.metrics.published.get(), 2000);
    delete(&config.broker).await;
}
