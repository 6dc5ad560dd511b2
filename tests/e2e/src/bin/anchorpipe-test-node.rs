//! The e2e suite's test node as a command, for `scripts/demo-kubernetes.sh`: registers a
//! node on the test cluster (`KUBECONFIG`) whose kubelet runs the pods bound to it from
//! the images of `scripts/images.sh`, writes the `nodeSelector` and `tolerations` that
//! put pods there to the file named by the first argument (JSON), and runs until
//! SIGINT or SIGTERM, when it stops every pod and removes the node.

use std::process::ExitCode;

use anchorpipe_e2e::cluster::client;
use anchorpipe_e2e::node::{Node, mount_namespaces_available};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let Some(out) = std::env::args().nth(1) else {
        eprintln!("usage: anchorpipe-test-node <file for the scheduling values (JSON)>");
        return ExitCode::from(2);
    };
    if let Err(e) = mount_namespaces_available() {
        eprintln!("the test node needs user and mount namespaces: {e}");
        return ExitCode::FAILURE;
    }
    let client = client().await;
    let node = Node::start(&client).await;
    if let Err(e) = std::fs::write(&out, node.scheduling().to_string()) {
        eprintln!("{out}: {e}");
        node.shutdown().await;
        return ExitCode::FAILURE;
    }
    eprintln!("node {} running; scheduling values in {out}", node.name);
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            eprintln!("SIGTERM handler: {e}");
            node.shutdown().await;
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let errors = node.errors();
    node.shutdown().await;
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        for e in errors {
            eprintln!("{e}");
        }
        ExitCode::FAILURE
    }
}
