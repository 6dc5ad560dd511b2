//! Test reports as a CI job sends them: the wire contract's body, signed with the legacy
//! scheme (`Authorization: Bearer <repo>` and `X-FR-Sig`, hex HMAC-SHA256 of the body),
//! posted over plain HTTP to the ingest process.

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use sha2::Sha256;

/// A minimal valid report for `repo`.
pub fn body(repo: &str, run_id: &str) -> String {
    body_with_tests(
        repo,
        run_id,
        vec![json!({"path": "A.java", "name": "a", "status": "pass",
                    "durationMs": 12, "startedAt": "2026-11-28T17:43:00Z"})],
    )
}

/// A valid report for `repo` carrying `tests`.
pub fn body_with_tests(repo: &str, run_id: &str, tests: Vec<Value>) -> String {
    json!({
        "repo_id": repo,
        "commit_sha": "0123456789abcdef0123456789abcdef01234567",
        "run_id": run_id,
        "framework": "junit",
        "branch": "main",
        "tests": tests,
    })
    .to_string()
}

/// Lowercase hex HMAC-SHA256 of `body` under `secret`, as the existing clients compute it.
pub fn sign(secret: &str, body: &str) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|e| panic!("hmac key: {e}"));
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// GET `url`: status and body text; `Err` when the connection fails.
pub async fn get(url: &str) -> Result<(u16, String), String> {
    let request = hyper::Request::get(url)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let response = client().request(request).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// Posts a report for `repo` signed with `secret` to `{base}/api/ingestion`; returns the
/// status and the JSON answer.
pub async fn post(base: &str, repo: &str, run_id: &str, secret: &str) -> (u16, Value) {
    let body = body(repo, run_id);
    let request = hyper::Request::post(format!("{base}/api/ingestion"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {repo}"))
        .header("x-fr-sig", sign(secret, &body))
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|e| panic!("request: {e}"));
    let response = client()
        .request(request)
        .await
        .unwrap_or_else(|e| panic!("POST {base}/api/ingestion: {e}"));
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .unwrap_or_else(|e| panic!("response body: {e}"))
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}
