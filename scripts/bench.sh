#!/usr/bin/env bash
# The benchmark of issue 6, in one command: starts PostgreSQL and RabbitMQ (through
# scripts/services.sh), builds the release binaries, runs the scenario matrix and writes
# tests/bench/RESULTS.md and tests/bench/throughput.png.
#
#   scripts/bench.sh                    the full matrix (~4.5 min of measuring on 2 cores, plus the build)
#   scripts/bench.sh --duration 2       shorter points; any anchorpipe-bench `run` flag works
#   scripts/bench.sh --attack           the under-attack scenario of issue 10 instead (writes
#                                       tests/bench/ATTACK.md); any `attack` flag can follow,
#                                       e.g. --rate 100 --duration 30
#   scripts/bench.sh --relay            the relay draining a full outbox against plain
#                                       publish-with-confirms, alternating rounds; prints the
#                                       ratio (any `relay` flag can follow, e.g. --rounds 5)
#   scripts/bench.sh --operator         the operator at scale on the test control plane
#                                       (scripts/cluster.sh): 1,000 IngestionEndpoints applied
#                                       at once against the API server alone; writes
#                                       tests/bench/OPERATOR.md (any `operator` flag can
#                                       follow, e.g. --endpoints 250 --idle 60)
#
# The load generator runs on the same machine as the services, as a CI runner next to
# a small cluster would; its own CPU use is reported per point.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
log() { printf '[bench.sh] %s\n' "$*" >&2; }

# The chart's text is drawn from DejaVu Sans; perf gives the profile when it works here.
need=()
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
command -v perf >/dev/null 2>&1 || need+=(linux-perf)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]} (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # linux-perf may not match this kernel or be installable; the profile is optional.
    apt-get install -y -qq --no-install-recommends fonts-dejavu-core >/dev/null
    apt-get install -y -qq --no-install-recommends linux-perf >/dev/null 2>&1 || log "no perf; skipping the profile"
fi

log "services"
scripts/services.sh up
eval "$(scripts/services.sh env)"

log "building release binaries (anchorpipe-ingest, anchorpipe-bench)"
cargo build --release --locked -p anchorpipe-ingest -p anchorpipe-bench
# Where cargo put them: CARGO_TARGET_DIR when set, as for every other cargo command.
bin=${CARGO_TARGET_DIR:-target}/release

if [ "${1:-}" = "--attack" ]; then
    shift
    log "load average before the attack run: $(cut -d' ' -f1-3 /proc/loadavg)"
    exec "$bin/anchorpipe-bench" attack \
        --ingest-bin "$bin/anchorpipe-ingest" \
        --out-dir tests/bench \
        "$@"
fi

if [ "${1:-}" = "--operator" ]; then
    shift
    log "test control plane"
    scripts/cluster.sh up
    eval "$(scripts/cluster.sh env)"
    kubectl apply --server-side --force-conflicts --field-manager anchorpipe-bench \
        -f crds/yaml/ingestionendpoint.yaml >/dev/null
    kubectl wait --for=condition=Established --timeout=60s crd/ingestionendpoints.anchorpipe.dev >/dev/null
    log "building the release operator"
    cargo build --release --locked -p anchorpipe-operator
    log "load average before the operator run: $(cut -d' ' -f1-3 /proc/loadavg)"
    exec "$bin/anchorpipe-bench" operator \
        --operator-bin "$bin/anchorpipe-operator" \
        --ingest-bin "$bin/anchorpipe-ingest" \
        --out-dir tests/bench \
        "$@"
fi

if [ "${1:-}" = "--relay" ]; then
    shift
    log "load average before the relay run: $(cut -d' ' -f1-3 /proc/loadavg)"
    exec "$bin/anchorpipe-bench" relay \
        --ingest-bin "$bin/anchorpipe-ingest" \
        "$@"
fi

perf_flag=()
if command -v perf >/dev/null 2>&1 && perf stat -e task-clock true >/dev/null 2>&1; then
    perf_flag=(--perf)
fi

log "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews every figure)"
"$bin/anchorpipe-bench" run \
    --ingest-bin "$bin/anchorpipe-ingest" \
    --out-dir tests/bench \
    "${perf_flag[@]}" \
    "$@"
