//! Graceful shutdown of the real binary: on SIGTERM it stops accepting connections but
//! finishes the request in flight (a slow upload here), stores it, and exits cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use anchorpipe_ingest::signature::sign_legacy;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sqlx::PgPool;
use support::*;

#[sqlx::test(migrator = "anchorpipe_ingest::MIGRATOR")]
async fn sigterm_finishes_the_request_in_flight(pool: PgPool) {
    let config = tenant_config();
    let repo = config.repositories[0];
    let ingest = IngestProcess::prepare(&pool, &config, false).await;
    let port = ingest.port;
    let mut child = ingest.spawn();
    ingest.wait_ready().await;

    // A slow upload: half the body now, the rest after SIGTERM.
    let body = report(repo, "slow-upload");
    let (first, second) = body.split_at(body.len() / 2);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(2);
    let stream = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let streaming: Client<_, StreamBody<_>> = Client::builder(TokioExecutor::new()).build_http();
    let request = hyper::Request::post(format!("http://127.0.0.1:{port}/api/ingestion"))
        .header("authorization", format!("Bearer {repo}"))
        .header("x-fr-sig", sign_legacy(SECRET, body.as_bytes()))
        .header("content-length", body.len())
        .body(StreamBody::new(stream))
        .unwrap();
    let in_flight = tokio::spawn(streaming.request(request));
    tx.send(Ok(Frame::data(Bytes::from(first.to_owned()))))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New connections are no longer accepted while the old request finishes.
    let fresh: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let probe = hyper::Request::get(format!("http://127.0.0.1:{port}/healthz"))
        .body(Full::default())
        .unwrap();
    assert!(
        fresh.request(probe).await.is_err(),
        "still accepting after SIGTERM"
    );

    tx.send(Ok(Frame::data(Bytes::from(second.to_owned()))))
        .await
        .unwrap();
    drop(tx);
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let json: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(json["message"], "Test report received");
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("did not exit after SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status {status}");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM ingestions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 1);
}
