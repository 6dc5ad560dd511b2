//! Failures that must not lose an acknowledged report: the broker going away, the
//! ingest process being killed, and the backlog cap while the broker is down.
//!
//! These tests stop the shared RabbitMQ node's AMQP side, so they run one at a time
//! (a lock below); cargo runs test binaries one after another, so other test files
//! never see the outage.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anchorpipe_ingest::signature::sign_legacy;
use axum::http::StatusCode;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sqlx::PgPool;
use support::*;
use tokio_util::sync::CancellationToken;

static BROKER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn services(action: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/services.sh");
    let status = std::process::Command::new(script)
        .arg(action)
        .status()
        .unwrap();
    assert!(status.success(), "services.sh {action} failed");
}

/// Brings the broker back even if the test fails half-way.
struct BrokerBack;

impl Drop for BrokerBack {
    fn drop(&mut self) {
        services("broker-start");
    }
}

async fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn a_broker_outage_loses_no_acknowledged_report(pool: PgPool) {
    let _serial = BROKER.lock().await;
    let config = tenant_config();
    let repo = config.repositories[0];
    declare(&config.broker).await;
    let state = state(pool.clone(), config.clone());
    state.delivery.relay_enabled.store(true, Ordering::Relaxed);
    let app = router(&state);
    let shutdown = CancellationToken::new();
    let task = start_relay(&pool, &config, &state, fast_relay(), &shutdown);
    let delivery = state.delivery.clone();
    wait_until("relay connected", Duration::from_secs(10), || {
        delivery.broker_ready.load(Ordering::Relaxed)
    })
    .await;

    let _back = BrokerBack;
    services("broker-stop");
    let n = 200;
    let mut expected = HashSet::new();
    for i in 0..n {
        let (status, json) = post(&app, repo, &format!("outage-{i}")).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "report {i} during the outage: {json}"
        );
        expected.insert(json["runId"].as_str().unwrap().to_owned());
    }
    wait_until("relay noticed the outage", Duration::from_secs(10), || {
        !delivery.broker_ready.load(Ordering::Relaxed)
    })
    .await;
    // The pod stays ready: it keeps taking reports into the outbox, and says why.
    let ready = tower::ServiceExt::oneshot(
        app.clone(),
        axum::http::Request::get("/readyz")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let body = ready.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["broker"], "unreachable");
    let started = Instant::now();
    services("broker-start");
    let result = delivered(&config.broker.queue, &expected, Duration::from_secs(60)).await;
    eprintln!(
        "broker outage: {n} accepted while down, {} delivered after restart in {:?}, {} lost, {} duplicates",
        result.distinct,
        started.elapsed(),
        result.lost,
        result.duplicates()
    );
    assert_eq!(result.lost, 0);
    shutdown.cancel();
    task.await.unwrap();
    delete(&config.broker).await;
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn the_backlog_cap_refuses_new_reports_and_keeps_accepted_ones(pool: PgPool) {
    let _serial = BROKER.lock().await;
    let mut config = tenant_config();
    config.outbox.max_backlog_rows = 20;
    let repo = config.repositories[0];
    declare(&config.broker).await;
    let state = state(pool.clone(), config.clone());
    let app = router(&state);
    let shutdown = CancellationToken::new();
    let tasks = anchorpipe_ingest::spawn_delivery(
        &config,
        Some(&amqp_url()),
        pool.clone(),
        state.metrics.clone(),
        state.delivery.clone(),
        fast_relay(),
        shutdown.clone(),
    );
    let delivery = state.delivery.clone();
    wait_until("relay connected", Duration::from_secs(10), || {
        delivery.broker_ready.load(Ordering::Relaxed)
    })
    .await;

    let _back = BrokerBack;
    services("broker-stop");
    let mut accepted = HashSet::new();
    let mut refused = None;
    for i in 0..200 {
        let response = tower::ServiceExt::oneshot(
            app.clone(),
            signed(repo, &report(repo, &format!("cap-{i}"))),
        )
        .await
        .unwrap();
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            refused = Some(response);
            break;
        }
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        accepted.insert(json["runId"].as_str().unwrap().to_owned());
        // Give the backlog monitor (100 ms) a chance to see the growing outbox.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = refused.expect("the cap never refused a report");
    assert_eq!(refused.headers()["retry-after"], "30");
    assert!(accepted.len() >= 20, "accepted {}", accepted.len());
    eprintln!(
        "backlog cap 20: {} accepted before the first 503",
        accepted.len()
    );

    services("broker-start");
    let taken = take_until(&config.broker.queue, &accepted, Duration::from_secs(60)).await;
    let ids: HashSet<String> = taken.iter().map(|t| t.message_id.clone()).collect();
    assert!(
        accepted.is_subset(&ids),
        "lost {}",
        accepted.difference(&ids).count()
    );
    // With the backlog drained, reports are taken again.
    wait_until("backlog drained", Duration::from_secs(10), || {
        delivery.backlog_rows.load(Ordering::Relaxed) == 0
    })
    .await;
    assert_eq!(post(&app, repo, "after").await.0, StatusCode::OK);
    shutdown.cancel();
    for task in tasks {
        task.await.unwrap();
    }
    delete(&config.broker).await;
}

/// The real binary, configured from files the way a pod is, killed with SIGKILL in the
/// middle of a stream of reports and started again.
#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn sigkill_mid_stream_loses_no_acknowledged_report(pool: PgPool) {
    let _serial = BROKER.lock().await;
    let config = tenant_config();
    let repo = config.repositories[0];
    declare(&config.broker).await;

    let ingest = IngestProcess::prepare(&pool, &config, true).await;
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let url = ingest.url("/api/ingestion");
    let send = |i: usize| {
        let body = report(repo, &format!("crash-{i}"));
        let request = hyper::Request::post(url.as_str())
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {repo}"))
            .header("x-fr-sig", sign_legacy(SECRET, body.as_bytes()))
            .body(Full::new(bytes::Bytes::from(body)))
            .unwrap();
        client.request(request)
    };

    let mut child = ingest.spawn();
    ingest.wait_ready().await;
    let mut acknowledged = HashSet::new();
    let mut failed_in_flight = 0;
    // Keep 8 requests in flight; kill the process once 150 were acknowledged.
    let mut in_flight = futures_util::stream::FuturesUnordered::new();
    let mut next = 0;
    let mut killed = false;
    loop {
        while !killed && in_flight.len() < 8 {
            in_flight.push(send(next));
            next += 1;
        }
        let Some(result) = futures_util::StreamExt::next(&mut in_flight).await else {
            break;
        };
        match result {
            Ok(response) if response.status() == StatusCode::OK => {
                let bytes = response.into_body().collect().await.unwrap().to_bytes();
                let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                acknowledged.insert(json["runId"].as_str().unwrap().to_owned());
            }
            Ok(response) => panic!("unexpected status {}", response.status()),
            Err(_) => failed_in_flight += 1,
        }
        if !killed && acknowledged.len() >= 150 {
            child.start_kill().unwrap(); // SIGKILL
            child.wait().await.unwrap();
            killed = true;
        }
    }
    eprintln!(
        "SIGKILL after {} acknowledged; {failed_in_flight} requests cut off in flight",
        acknowledged.len()
    );

    let mut child = ingest.spawn();
    ingest.wait_ready().await;
    let result = delivered(&config.broker.queue, &acknowledged, Duration::from_secs(60)).await;
    eprintln!(
        "after restart: {} acknowledged, {} in queue, {} lost, {} duplicates",
        acknowledged.len(),
        result.distinct,
        result.lost,
        result.duplicates()
    );
    assert_eq!(result.lost, 0);
    child.start_kill().unwrap();
    let _ = child.wait().await;
    delete(&config.broker).await;
}
