#!/usr/bin/env bash
# Runs the platform's main job end to end on this machine: a tenant is set up, a CI
# client sends a signed report with curl and openssl exactly as existing anchorpipe
# pipelines do, the report is stored once in PostgreSQL with its audit trail, and the
# relay publishes it to the tenant's RabbitMQ queue.
#
#   scripts/demo.sh            run, show every step, stop the ingest service at the end
#   KEEP=1 scripts/demo.sh     leave the ingest service running on 127.0.0.1:8080
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEMO="$ROOT/.local/demo"
PORT=${DEMO_PORT:-8080}

step() { printf '\n==> %s\n' "$*"; }

step "services (PostgreSQL, RabbitMQ)"
scripts/services.sh up
eval "$(scripts/services.sh env)"

step "build anchorpipe-ingest"
cargo build -q -p anchorpipe-ingest
INGEST="${CARGO_TARGET_DIR:-$ROOT/target}/debug/anchorpipe-ingest"

step "apply database migrations"
"$INGEST" migrate

step "tenant 'demo': config and an HMAC key (what the operator renders in a cluster)"
mkdir -p "$DEMO/keys"
[ -s "$DEMO/repo_id" ] || cat /proc/sys/kernel/random/uuid > "$DEMO/repo_id"
REPO_ID=$(cat "$DEMO/repo_id")
[ -s "$DEMO/keys/demo-key-1" ] || printf 'whsec_%s' "$(openssl rand -base64 32)" > "$DEMO/keys/demo-key-1"
SECRET=$(cat "$DEMO/keys/demo-key-1")
cat > "$DEMO/config.json" <<JSON
{
  "tenant": "demo",
  "repositories": ["$REPO_ID"],
  "rateLimit": {
    "perRepository": {"requestsPerMinute": 600, "burst": 60},
    "perEndpoint": {"requestsPerMinute": 6000, "burst": 600}
  },
  "broker": {
    "exchange": "anchorpipe.reports",
    "routingKey": "tenant.demo.test-run",
    "queue": "anchorpipe.demo.reports",
    "deadLetterExchange": "anchorpipe.reports.dlx",
    "deadLetterQueue": "anchorpipe.demo.reports.dlq"
  }
}
JSON
echo "repository $REPO_ID, key file $DEMO/keys/demo-key-1"

step "declare the tenant's RabbitMQ topology (the operator's code path)"
"$INGEST" declare-topology --config "$DEMO/config.json"

step "start anchorpipe-ingest on 127.0.0.1:$PORT"
"$INGEST" serve --config "$DEMO/config.json" --keys-dir "$DEMO/keys" \
    --listen "127.0.0.1:$PORT" >"$DEMO/ingest.log" 2>&1 &
PID=$!
stop() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
[ "${KEEP:-0}" = 1 ] || trap stop EXIT
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sS "http://127.0.0.1:$PORT/readyz"; echo

step "a CI job sends a signed report (curl + openssl, the published anchorpipe snippet)"
RUN_ID="demo-$(date +%s)"
BODY=$(cat <<JSON
{"repo_id":"$REPO_ID","commit_sha":"0123456789abcdef0123456789abcdef01234567","run_id":"$RUN_ID","framework":"jest","branch":"main","tests":[{"path":"src/sum.test.ts","name":"adds","status":"pass","durationMs":4,"startedAt":"$(date -u +%Y-%m-%dT%H:%M:%SZ)"},{"path":"src/sum.test.ts","name":"overflows","status":"fail","startedAt":"$(date -u +%Y-%m-%dT%H:%M:%SZ)","failureDetails":"expected 3, got 4"}]}
JSON
)
SIG=$(printf '%s' "$BODY" | openssl dgst -sha256 -hmac "$SECRET" | sed 's/^.* //')
send() {
    curl -sS -X POST "http://127.0.0.1:$PORT/api/ingestion" \
        -H "Content-Type: application/json" \
        -H "Authorization: Bearer $REPO_ID" \
        -H "X-FR-Sig: $SIG" \
        --data-binary "$BODY" -w '\nHTTP %{http_code}\n'
}
send

step "the same report again: answered from the stored response, stored once"
send

step "a tampered body with the same signature is refused"
BODY=${BODY/adds/ADDS} send

step "PostgreSQL: the ingestion, its audit trail, its outbox row"
psql "$DATABASE_URL" -P pager=off -c \
    "SELECT id, run_id, framework, test_count, received_at FROM ingestions WHERE run_id = '$RUN_ID'" \
    -c "SELECT occurred_at, action, reason, occurrences, request_id FROM audit_log
        WHERE tenant = 'demo' ORDER BY id DESC LIMIT 4" \
    -c "SELECT o.id, o.sent_at IS NOT NULL AS sent FROM outbox o JOIN ingestions i
        ON i.id = o.ingestion_id WHERE i.run_id = '$RUN_ID'"

step "RabbitMQ: the tenant's queue (the broker refreshes queue figures every few seconds)"
for _ in $(seq 1 20); do
    rabbitmqctl -q list_queues name messages | grep -qE '^anchorpipe\.demo\.reports\s+[1-9]' && break
    sleep 0.5
done
rabbitmqctl -q list_queues name type messages | grep -E '^name|anchorpipe\.demo\.' || true

step "metrics"
curl -sS "http://127.0.0.1:$PORT/metrics" | grep -E '^anchorpipe_ingest_(requests_total|outbox_published_total|broker_up|outbox_backlog)[{ ]' || true

if [ "${KEEP:-0}" = 1 ]; then
    echo; echo "ingest keeps running (pid $PID, log $DEMO/ingest.log)"
fi
