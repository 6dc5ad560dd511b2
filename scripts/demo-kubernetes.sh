#!/usr/bin/env bash
# The platform on Kubernetes, in one command, the way a platform team and a CI job meet
# it: the test control plane with its ingress controller (Traefik), the chart installed
# with `helm install`, one tenant applied with `kubectl apply`, a signed report sent
# through the ingress over TLS, then `kubectl get ingestionendpoints` and the message
# in the tenant's RabbitMQ queue.
#
#   scripts/demo-kubernetes.sh          run it all, show every step, remove it at the end
#   KEEP=1 scripts/demo-kubernetes.sh   leave the release, the tenant and the node running
#                                       (stop with: kill $(cat .local/demo-kubernetes/node.pid))
#
# The pods run on a node of this machine (the e2e suite's test node,
# `anchorpipe-test-node`): its kubelet runs each pod from the image scripts/images.sh
# builds, with its own loopback address, its volumes and its ServiceAccount token.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEMO="$ROOT/.local/demo-kubernetes"
RELEASE=anchorpipe
SYSTEM=anchorpipe-system
TENANT_NS=demo-tenant
HOST=reports.demo.test
DB=anchorpipe_k8s_demo
mkdir -p "$DEMO"

step() { printf '\n==> %s\n' "$*"; }

step "services (PostgreSQL, RabbitMQ)"
scripts/services.sh up
eval "$(scripts/services.sh env)"

step "Kubernetes control plane and ingress controller (built once, cached)"
scripts/cluster.sh up
eval "$(scripts/cluster.sh env)"
PORT=$ANCHORPIPE_INGRESS_HTTPS_PORT
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"

step "images (scripts/images.sh) and the test node"
scripts/images.sh
cargo build -q --locked -p anchorpipe-e2e --bin anchorpipe-test-node

cleanup() {
    if [ "${KEEP:-0}" = 1 ]; then
        echo; echo "left running: release $RELEASE in $SYSTEM, tenant in $TENANT_NS, node pid $(cat "$DEMO/node.pid")"
        return
    fi
    step "clean up: the tenant, helm uninstall, the node"
    kubectl delete namespace "$TENANT_NS" --wait=true --timeout=90s >/dev/null 2>&1 || true
    helm uninstall "$RELEASE" --namespace "$SYSTEM" --wait --timeout 90s 2>/dev/null || true
    kubectl delete namespace "$SYSTEM" --wait=false >/dev/null 2>&1 || true
    [ -s "$DEMO/node.pid" ] && kill "$(cat "$DEMO/node.pid")" 2>/dev/null || true
    psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
}

rm -f "$DEMO/scheduling.json"
"$TARGET/debug/anchorpipe-test-node" "$DEMO/scheduling.json" >"$DEMO/node.log" 2>&1 &
echo $! >"$DEMO/node.pid"
trap cleanup EXIT
for _ in $(seq 1 100); do [ -s "$DEMO/scheduling.json" ] && break; sleep 0.1; done
[ -s "$DEMO/scheduling.json" ] || { cat "$DEMO/node.log"; exit 1; }
cat "$DEMO/node.log"

step "helm install (the migration Job, two operator replicas, all under the chart's RBAC)"
psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
python3 - "$DEMO/scheduling.json" "$DEMO/values.json" <<'EOF'
import json, os, sys
scheduling = json.load(open(sys.argv[1]))
database = os.environ["DATABASE_URL"].rsplit("/", 1)[0] + "/anchorpipe_k8s_demo"
values = {
    "platformSecret": {
        "create": True,
        "databaseUrl": database,
        "amqpUrl": os.environ["AMQP_URL"],
        "rabbitmqManagementUrl": os.environ["RABBITMQ_MANAGEMENT_URL"],
    },
    "operator": {"watchNamespaces": ["demo-tenant"], **scheduling},
    "migrations": scheduling,
    "ingest": {"pods": scheduling},
}
json.dump(values, open(sys.argv[2], "w"))
EOF
# The tenant namespace first: the chart gives the operator a Role in each namespace it
# serves.
for ns in "$SYSTEM" "$TENANT_NS"; do
    kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
done
time helm upgrade --install "$RELEASE" charts/anchorpipe --namespace "$SYSTEM" \
    --values "$DEMO/values.json" --wait --timeout 180s
kubectl -n "$SYSTEM" get pods -o wide

step "a tenant: a TLS certificate for $HOST and its IngestionEndpoint"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=$HOST" -addext "subjectAltName=DNS:$HOST" \
    -keyout "$DEMO/tls.key" -out "$DEMO/tls.crt" 2>/dev/null
kubectl -n "$TENANT_NS" create secret tls demo-tls --cert "$DEMO/tls.crt" --key "$DEMO/tls.key" \
    --dry-run=client -o yaml | kubectl apply -f - >/dev/null
REPO_ID=$(cat /proc/sys/kernel/random/uuid)
kubectl apply -f - <<EOF
apiVersion: anchorpipe.dev/v1alpha1
kind: IngestionEndpoint
metadata:
  name: demo
  namespace: $TENANT_NS
spec:
  tenant: demo-k8s
  repositories: ["$REPO_ID"]
  replicas: 1
  ingress:
    host: $HOST
    tlsSecretName: demo-tls
EOF
time kubectl -n "$TENANT_NS" wait --for=condition=Ready ingestionendpoint/demo --timeout=180s
kubectl -n "$TENANT_NS" get deployment,service,ingress,pods -o wide

step "a CI job sends a signed report through the ingress (curl + openssl, TLS verified against the tenant's certificate)"
KEY_ID=$(kubectl -n "$TENANT_NS" get ingestionendpoint demo -o jsonpath='{.status.currentKeyId}')
SECRET=$(kubectl -n "$TENANT_NS" get secret demo-hmac -o go-template="{{index .data \"$KEY_ID\" | base64decode}}")
RUN_ID="k8s-demo-$(date +%s)"
NOW=$(date -u +%Y-%m-%dT%H:%M:%SZ)
BODY="{\"repo_id\":\"$REPO_ID\",\"commit_sha\":\"0123456789abcdef0123456789abcdef01234567\",\"run_id\":\"$RUN_ID\",\"framework\":\"jest\",\"branch\":\"main\",\"tests\":[{\"path\":\"src/sum.test.ts\",\"name\":\"adds\",\"status\":\"pass\",\"durationMs\":4,\"startedAt\":\"$NOW\"}]}"
SIG=$(printf '%s' "$BODY" | openssl dgst -sha256 -hmac "$SECRET" | sed 's/^.* //')
send() {
    curl -sS --resolve "$HOST:$PORT:127.0.0.1" --cacert "$DEMO/tls.crt" \
        -X POST "https://$HOST:$PORT/api/ingestion" \
        -H "Content-Type: application/json" \
        -H "Authorization: Bearer $REPO_ID" \
        -H "X-FR-Sig: $SIG" \
        --data-binary "$BODY" -w '\nHTTP %{http_code}\n'
}
# The ingress controller picks the new Ingress up within a second or two.
for _ in $(seq 1 30); do
    out=$(send 2>&1) || true
    case "$out" in *"HTTP 200"*) break ;; esac
    sleep 1
done
echo "curl --resolve $HOST:$PORT:127.0.0.1 https://$HOST:$PORT/api/ingestion"
echo "$out"
case "$out" in *"HTTP 200"*) ;; *) echo "the report was not accepted" >&2; exit 1 ;; esac

step "kubectl get ingestionendpoints -n $TENANT_NS"
kubectl get ingestionendpoints --namespace "$TENANT_NS"

step "the message in the tenant's queue (RabbitMQ management API, left in the queue)"
QUEUE=$(kubectl -n "$TENANT_NS" get ingestionendpoint demo -o jsonpath='{.status.queue}')
for _ in $(seq 1 30); do
    msg=$(curl -sS -X POST "${RABBITMQ_MANAGEMENT_URL%/}/api/queues/%2f/$QUEUE/get" \
        -H 'content-type: application/json' \
        -d '{"count":1,"ackmode":"ack_requeue_true","encoding":"auto"}')
    [ "$msg" != "[]" ] && break
    sleep 0.5
done
python3 -c '
import json, sys
messages = json.loads(sys.argv[2])
if not messages:
    sys.exit("no message in " + sys.argv[1])
m = messages[0]
print("queue:", sys.argv[1])
print("routing key:", m["routing_key"])
print(json.dumps(json.loads(m["payload"]), indent=2)[:1500])
' "$QUEUE" "$msg"
