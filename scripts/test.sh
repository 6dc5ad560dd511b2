#!/usr/bin/env bash
# The test command (README): on a fresh machine it installs and starts what the tests
# need; with everything already up it goes straight to the checks.
#
#   scripts/test.sh             formatting, lints, every test
#   scripts/test.sh -- ARGS     extra arguments for `cargo test` (e.g. a test name filter)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

step() { printf '\n==> %s\n' "$*" >&2; }

step "services (PostgreSQL, RabbitMQ)"
scripts/services.sh up
eval "$(scripts/services.sh env)"

if [ -x scripts/cluster.sh ] && [ -d tests/e2e ]; then
    step "Kubernetes control plane (built once, cached)"
    scripts/cluster.sh build
    scripts/cluster.sh up
    eval "$(scripts/cluster.sh env)"

    step "helm chart: lint, and every manifest validated by the API server (dry run)"
    helm lint --quiet charts/anchorpipe
    # Cluster-wide and namespace-scoped RBAC: both render, and the API server accepts both.
    for scope in "" "--set operator.watchNamespaces={default,kube-public}"; do
        # shellcheck disable=SC2086
        helm template anchorpipe charts/anchorpipe --namespace default --include-crds \
            --set platformSecret.create=true \
            --set platformSecret.databaseUrl=postgres://db/anchorpipe \
            --set platformSecret.amqpUrl=amqp://broker/%2f \
            --set platformSecret.rabbitmqManagementUrl=http://broker:15672 $scope \
            | kubectl apply --server-side --force-conflicts --field-manager=chart-check \
                --dry-run=server -f - >/dev/null
    done
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
[ "${1:-}" = "--" ] && shift
# The e2e tests run the operator and ingest binaries from the target dir.
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
