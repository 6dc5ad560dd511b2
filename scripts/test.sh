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

    step "helm chart: lint, values schema, and every manifest validated by the API server (dry run)"
    helm lint --strict charts/anchorpipe
    # The values schema refuses an unknown key and a wrong type, naming the path.
    expect_refused() { # <expected message> <helm args...>
        local expected=$1 out
        shift
        if out=$(helm template anchorpipe charts/anchorpipe "$@" 2>&1); then
            echo "helm template $* was accepted; the values schema should refuse it" >&2
            return 1
        fi
        grep -qF -- "$expected" <<<"$out" || {
            printf 'helm template %s failed without "%s":\n%s\n' "$*" "$expected" "$out" >&2
            return 1
        }
    }
    expect_refused "additional properties 'replicaz' not allowed" --set operator.replicaz=2
    expect_refused "at '/operator/replicas': got string, want integer" --set operator.replicas=two
    expect_refused "additional properties 'nodeSelecter' not allowed" --set ingest.pods.nodeSelecter.pool=a
    expect_refused "at '/ingest/pods/tolerations'" --set ingest.pods.tolerations=dedicated
    expect_refused "at '/tests/timeoutSeconds'" --set tests.timeoutSeconds=0
    # The `helm test` hook: its ServiceAccount, Role and RoleBinding before its Pod, the
    # Role in the test namespace and limited to the temporary endpoint; none when off.
    hook=$(helm template anchorpipe charts/anchorpipe --namespace anchorpipe \
        --set 'operator.watchNamespaces={tenants,ci}' --set tests.namespace=ci \
        --show-only templates/tests/smoke-test.yaml)
    for want in 'kind: ServiceAccount' 'kind: Role' 'kind: RoleBinding' 'kind: Pod' \
        'helm.sh/hook: test' 'helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded' \
        'namespace: ci' '- smoke-test' '- --namespace=ci' '- --name=anchorpipe-smoke' \
        'resourceNames: ["anchorpipe-smoke"]' 'resourceNames: ["anchorpipe-smoke-hmac"]' \
        'readOnlyRootFilesystem: true' 'runAsUser: 65532'; do
        grep -qF -- "$want" <<<"$hook" || { echo "the helm test hook lacks \`$want\`" >&2; exit 1; }
    done
    [ "$(helm template anchorpipe charts/anchorpipe --set tests.enabled=false | grep -c 'smoke-test' || true)" = 0 ] \
        || { echo "the helm test hook rendered while tests.enabled=false" >&2; exit 1; }
    # Its endpoint goes to a namespace the operator serves: by default the first watched
    # one when the release namespace is not watched; a namespace set to another one is
    # refused.
    helm template anchorpipe charts/anchorpipe --namespace anchorpipe \
        --set 'operator.watchNamespaces={tenants,ci}' --show-only templates/tests/smoke-test.yaml \
        | grep -qF -- '- --namespace=tenants' \
        || { echo "the helm test hook does not default to a watched namespace" >&2; exit 1; }
    expect_refused "tests.namespace: the smoke test's endpoint would go to namespace \"elsewhere\"" \
        --set 'operator.watchNamespaces={tenants}' --set tests.namespace=elsewhere
    # Monitoring objects exist only when asked for (their CRDs are not on the test
    # cluster, so they are counted here rather than sent to the API server).
    monitors() { helm template anchorpipe charts/anchorpipe "$@" | grep -cE '^kind: (ServiceMonitor|PodMonitor)$' || true; }
    [ "$(monitors)" = 0 ] || { echo "monitoring objects rendered while disabled" >&2; exit 1; }
    [ "$(monitors --set monitoring.serviceMonitor.enabled=true --set monitoring.podMonitor.enabled=true)" = 2 ] \
        || { echo "ServiceMonitor/PodMonitor not rendered when enabled" >&2; exit 1; }
    # Cluster-wide and namespace-scoped RBAC, with every optional part and the tenant
    # pod settings on: both render, and the API server accepts both. The `helm test`
    # Pod runs as `default` here: a dry run creates no ServiceAccount, and the API server
    # refuses a Pod whose ServiceAccount does not exist.
    for scope in "" "--set operator.watchNamespaces={default,kube-public}"; do
        # shellcheck disable=SC2086
        helm template anchorpipe charts/anchorpipe --namespace default --include-crds \
            --set platformSecret.create=true \
            --set platformSecret.databaseUrl=postgres://db/anchorpipe \
            --set platformSecret.amqpUrl=amqp://broker/%2f \
            --set platformSecret.rabbitmqManagementUrl=http://broker:15672 \
            --set retention.enabled=true \
            --set-json 'imagePullSecrets=[{"name":"regcred"}]' \
            --set-json 'ingest.pods={"imagePullSecrets":[{"name":"regcred"}],"nodeSelector":{"pool":"ingest"},"tolerations":[{"key":"dedicated","operator":"Equal","value":"ingest","effect":"NoSchedule"}],"resources":{"requests":{"cpu":"250m"}}}' \
            --set-json 'migrations.tolerations=[{"key":"dedicated","operator":"Exists"}]' \
            $scope \
            | sed 's/^  serviceAccountName: anchorpipe-operator-smoke-test$/  serviceAccountName: default/' \
            | kubectl apply --server-side --force-conflicts --field-manager=chart-check \
                --dry-run=server -f - >/dev/null
    done

    step "helm chart: README values table is current"
    python3 scripts/chart-readme.py --check

    step "CRD upgrade path: server-side apply of the chart's CRD over the installed one"
    # What the chart README tells users to run before `helm upgrade` (Helm never
    # upgrades crds/): it must apply over an installed CRD and leave nothing to change.
    kubectl apply --server-side --force-conflicts --field-manager=anchorpipe-crds \
        -f charts/anchorpipe/crds/ >/dev/null
    kubectl wait --for=condition=Established --timeout=60s crd/ingestionendpoints.anchorpipe.dev >/dev/null
    kubectl diff --server-side --force-conflicts --field-manager=anchorpipe-crds -f charts/anchorpipe/crds/

    step "examples/: every IngestionEndpoint accepted by the API server (dry run)"
    kubectl create namespace anchorpipe-examples --dry-run=client -o yaml | kubectl apply -f - >/dev/null
    kubectl apply --dry-run=server -n anchorpipe-examples -f examples/ >/dev/null
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
[ "${1:-}" = "--" ] && shift
# The e2e tests run the operator and ingest binaries from the target dir, and the test
# node runs the Helm release's pods from the images (release builds, scripts/images.sh).
cargo build --workspace --bins --locked
scripts/images.sh
cargo test --workspace --locked "$@"
