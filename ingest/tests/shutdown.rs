//! Stopping a pod: after SIGTERM the real binary reports not ready at once but keeps
//! serving for `--shutdown-delay-seconds`, so that endpoint and ingress controllers stop
//! routing to it before its listener closes; then it exits cleanly.

mod support;

use std::time::{Duration, Instant};

use anchorpipe_ingest::signature::sign_legacy;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use sqlx::PgPool;
use support::*;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<bytes::Bytes>>;

async fn get(client: &HttpClient, url: &str) -> Result<(u16, Value), String> {
    let request = hyper::Request::get(url)
        .body(Full::default())
        .map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn after_sigterm_the_pod_is_not_ready_but_serves_until_the_delay_has_passed(pool: PgPool) {
    let config = tenant_config();
    let repo = config.repositories[0];
    let ingest = IngestProcess::prepare(&pool, &config, false).await;
    let mut child = ingest.spawn_with(&["--shutdown-delay-seconds", "2"]);
    ingest.wait_ready().await;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    let pid = child.id().unwrap().to_string();
    let signalled = Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());

    // Not ready from the signal on (the readiness check polls; give it a moment).
    let mut readiness = (0, Value::Null);
    while signalled.elapsed() < Duration::from_millis(1500) {
        readiness = get(&client, &ingest.url("/readyz")).await.unwrap();
        if readiness.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(readiness.0, 503, "{}", readiness.1);
    assert_eq!(readiness.1["draining"], true, "{}", readiness.1);

    // ... and still serving reports.
    let body = report(repo, "during-the-delay");
    let request = hyper::Request::post(ingest.url("/api/ingestion"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {repo}"))
        .header("x-fr-sig", sign_legacy(SECRET, body.as_bytes()))
        .body(Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let answered = client.request(request).await.unwrap();
    assert_eq!(answered.status().as_u16(), 200);
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "the report was answered only after the delay; the test proves nothing"
    );

    // Then it exits, cleanly, once the delay has passed.
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("the process did not exit after the delay")
        .unwrap();
    let stopped = signalled.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        stopped >= Duration::from_secs(2),
        "exited {stopped:?} after SIGTERM, before the 2 s delay"
    );
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ingestions WHERE run_id = 'during-the-delay'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored, 1);
}
