//! Reports through the test cluster's ingress controller (Traefik, started by
//! `scripts/cluster.sh up`), the way a CI job outside the cluster sends them:
//! `curl --resolve <host>:<port>:127.0.0.1 https://<host>/api/ingestion`, trusting
//! only the tenant's own certificate.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::report::sign;
use crate::{required_env, suffix};

/// The ingress controller's HTTPS port on 127.0.0.1 (`scripts/cluster.sh env`).
pub fn https_port() -> u16 {
    required_env("ANCHORPIPE_INGRESS_HTTPS_PORT")
        .parse()
        .unwrap_or_else(|e| panic!("ANCHORPIPE_INGRESS_HTTPS_PORT: {e}"))
}

/// A self-signed certificate for `host`, stored as the `kubernetes.io/tls` Secret
/// `name` in `namespace`; returns the certificate's file, for clients to trust.
pub async fn tls_secret(client: &Client, namespace: &str, name: &str, host: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join("anchorpipe-e2e")
        .join(format!("tls-{}", suffix()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj"])
        .arg(format!("/CN={host}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{host}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("openssl: {e}"));
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": k8s_openapi::ByteString(read(&cert)),
            "tls.key": k8s_openapi::ByteString(read(&key)),
        },
    }))
    .unwrap_or_else(|e| panic!("secret: {e}"));
    Api::<Secret>::namespaced(client.clone(), namespace)
        .patch(
            name,
            &PatchParams::apply("anchorpipe-e2e").force(),
            &Patch::Apply(secret),
        )
        .await
        .unwrap_or_else(|e| panic!("Secret {namespace}/{name}: {e}"));
    cert
}

/// What came back for one request: the HTTP status, or curl's error when no answer
/// came (connection refused or reset, TLS failure, timeout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Status(u16, String),
    /// A status line came, then the connection broke before the whole answer (curl's
    /// error): what a client sees of an early refusal when the pod closes the
    /// connection on a body it did not read.
    Truncated(u16, String),
    NoAnswer(String),
}

/// Posts `body` for `repo`, signed with `secret`, to `https://<host>/api/ingestion`
/// through the ingress controller, verifying the server's certificate against `ca`.
pub async fn post(host: &str, ca: &Path, repo: &str, secret: &str, body: &str) -> Answer {
    let port = https_port();
    let file = std::env::temp_dir()
        .join("anchorpipe-e2e")
        .join(format!("body-{}.json", uuid::Uuid::new_v4()));
    if let Some(dir) = file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&file, body).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let out = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "30"])
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(ca)
        .args(["-H", "content-type: application/json"])
        .arg("-H")
        .arg(format!("authorization: Bearer {repo}"))
        .arg("-H")
        .arg(format!("x-fr-sig: {}", sign(secret, body)))
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .args(["--write-out", "\n%{http_code}"])
        .arg(format!("https://{host}:{port}/api/ingestion"))
        .output()
        .await
        .unwrap_or_else(|e| panic!("curl: {e}"));
    let _ = std::fs::remove_file(&file);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (text, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
    let error = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    match code.trim().parse::<u16>() {
        Ok(code) if code > 0 && out.status.success() => Answer::Status(code, text.to_owned()),
        Ok(code) if code > 0 => Answer::Truncated(code, error),
        _ => Answer::NoAnswer(error),
    }
}
