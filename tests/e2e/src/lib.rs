//! Support for the end-to-end tests in `tests/`: the real control plane started by
//! `scripts/cluster.sh`, the operator binary run as a local child process against it,
//! and the ingest binary run the way a kubelet would run the operator's pod.
//!
//! - [`cluster`]: the kube client, `kubectl`, the CRD, the shared operator process, the
//!   lock that serializes tests which stop shared services, and one namespace per test.
//! - [`kubelet`]: turns a Deployment's pod template into files, environment and a
//!   command line, and runs `anchorpipe-ingest` with exactly that.
//! - [`node`]: a test node whose kubelet runs every pod bound to it (a Helm release's
//!   operator, Jobs and hooks, tenants' ingest pods) from its image, as local processes
//!   with their ServiceAccount tokens and addresses of their own.
//! - [`image`]: the OCI images of `scripts/images.sh`, unpacked for that kubelet.
//! - [`broker`], [`report`]: RabbitMQ inspection and signed reports over HTTP.
//!
//! Where things come from: `KUBECONFIG` and `PATH` (kubectl) from `scripts/cluster.sh
//! env`, `DATABASE_URL` and `AMQP_URL` from `scripts/services.sh env`, both exported by
//! `scripts/test.sh`; the binaries from the cargo target dir next to the test executable
//! (`cargo build --workspace --bins` first), the images from its `images/` directory
//! (`scripts/images.sh`); the ingress controller's port from `scripts/cluster.sh env`.

pub mod broker;
pub mod cluster;
pub mod image;
pub mod ingress;
pub mod kubelet;
pub mod node;
pub mod report;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The cargo profile dir (`target/debug`) holding the workspace binaries: the test
/// executable lives in its `deps/` subdirectory.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    // A test executable is in `<profile>/deps/`; a binary of this crate in `<profile>/`.
    let dir = exe
        .parent()
        .unwrap_or_else(|| panic!("unexpected executable location {}", exe.display()));
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.to_path_buf())
    } else {
        dir.to_path_buf()
    }
}

/// A workspace binary, built by `cargo build --workspace --bins`.
pub fn binary(name: &str) -> PathBuf {
    let path = profile_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` before the e2e tests (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Where logs of the processes the tests start go (`target/e2e-logs`).
pub fn log_dir() -> PathBuf {
    let dir = profile_dir()
        .parent()
        .map(|target| target.join("e2e-logs"))
        .unwrap_or_else(|| PathBuf::from("e2e-logs"));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// An environment variable the test command exports; a clear failure otherwise.
pub fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the e2e tests through scripts/test.sh, or export \
             `scripts/services.sh env` and `scripts/cluster.sh env` first"
        )
    })
}

/// Polls `probe` every 250 ms until it returns `Ok`, or fails the test after `timeout`
/// with what the last attempt saw (`Err` carries that description). An attempt that
/// has not answered by then fails the test too, so a probe stuck on a lost request
/// cannot hang it.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        let last = match tokio::time::timeout(left.max(MIN_ATTEMPT), probe()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(last)) => last,
            Err(_) => format!(
                "the last attempt did not answer within {:?}",
                left.max(MIN_ATTEMPT)
            ),
        };
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}; last seen: {last}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The least time [`eventually`] gives one attempt, even at its deadline.
const MIN_ATTEMPT: Duration = Duration::from_secs(1);

/// A short random suffix for namespace, tenant and database names, so tests (and runs)
/// never share state.
pub fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..6].to_owned()
}
