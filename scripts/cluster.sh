#!/usr/bin/env bash
# A real Kubernetes control plane for the tests, built from upstream Go modules
# (tests/cluster/) and run as plain loopback processes: no container engine, no
# binary downloads. See ../../shared/TEST-CLUSTER.md and issue 5.
#
#   scripts/cluster.sh build              build + cache the binaries (no-op when cached)
#   scripts/cluster.sh up                 start etcd, apiserver, controller-manager,
#                                         scheduler, kwok and a fake node (idempotent)
#   scripts/cluster.sh env                print `export KUBECONFIG=...` and PATH for clients
#   scripts/cluster.sh status             per-component state; exit 0 only if all healthy
#   scripts/cluster.sh restart-apiserver  stop and start only kube-apiserver
#   scripts/cluster.sh down               stop everything, remove the state dir
#   scripts/cluster.sh bin-dir            print the cached bin directory
#
# Environment:
#   ANCHORPIPE_CACHE  cache root (default ~/.cache/anchorpipe); binaries live in
#                     $ANCHORPIPE_CACHE/k8s/<hash of tests/cluster go.mod/go.sum>/bin
#   ANCHORPIPE_STATE  state dir: certs, kubeconfig, logs, pids (default /tmp/anchorpipe-cluster)
#   ANCHORPIPE_APISERVER_PORT  secure port of kube-apiserver (default 16443)
#   ANCHORPIPE_ETCD_PORT       etcd client port (default 12379; peer port is +1)
#
# Typical use from other scripts:
#   scripts/cluster.sh up && eval "$(scripts/cluster.sh env)" && kubectl get nodes
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODDIR="$ROOT/tests/cluster"
CACHE_ROOT="${ANCHORPIPE_CACHE:-$HOME/.cache/anchorpipe}"
STATE="${ANCHORPIPE_STATE:-/tmp/anchorpipe-cluster}"
API_PORT="${ANCHORPIPE_APISERVER_PORT:-16443}"
ETCD_PORT="${ANCHORPIPE_ETCD_PORT:-12379}"
ETCD_PEER_PORT=$((ETCD_PORT + 1))
# Secure ports of controller-manager and scheduler (their /healthz); kept off
# the defaults 10257/10259 so a second cluster or a leftover does not collide.
KCM_PORT=$((API_PORT + 1))
SCHED_PORT=$((API_PORT + 2))
KWOK_PORT=$((API_PORT + 3))
NODE_NAME="kwok-node-0"

# Bump when the way binaries are built changes (flags, ldflags, list), so that
# the cache key changes even if go.mod/go.sum did not.
BUILD_RECIPE=1
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm)
# Start order; `down` stops in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }
now_ms() { date +%s%3N; }
elapsed() { local s=$1 e; e=$(now_ms); printf '%d.%03ds' $(((e - s) / 1000)) $(((e - s) % 1000)); }

cache_key() {
  (
    cd "$MODDIR"
    cat go.mod go.sum etcd/main.go kwok/go.mod kwok/go.sum helm/go.mod helm/go.sum
    echo "recipe=$BUILD_RECIPE"
  ) | sha256sum | cut -c1-16
}

bin_dir() { echo "$CACHE_ROOT/k8s/$(cache_key)/bin"; }

built() {
  local bin=$1 b
  [[ -f "$bin/.complete" ]] || return 1
  for b in "${BINARIES[@]}"; do [[ -x "$bin/$b" ]] || return 1; done
}

# ---------------------------------------------------------------- build

go_build() { # <module dir> <output> <ldflags> <package>
  local dir=$1 out=$2 ldflags=$3 pkg=$4
  (cd "$dir" && nice -n 10 go build -trimpath -ldflags "-s -w $ldflags" -o "$out" "$pkg")
}

cmd_build() {
  local bin; bin="$(bin_dir)"
  if built "$bin"; then
    log "binaries up to date in $bin"
    return 0
  fi
  command -v go >/dev/null || die "go not found on PATH"
  mkdir -p "$bin"
  # One builder at a time per cache key; a second caller waits and then finds
  # the binaries built.
  exec 9>"$bin/../build.lock"
  if ! flock -n 9; then
    log "another build is running for $bin; waiting for it"
    flock 9
  fi
  if built "$bin"; then
    log "binaries up to date in $bin"
    return 0
  fi

  export GOTOOLCHAIN=local GOWORK=off GOFLAGS=-mod=readonly CGO_ENABLED=0
  log "go: $(go version)"
  log "building into $bin (nice -n 10; a cold build takes 10-25 minutes on 2 cores)"
  local kver kminor kwokver helmver
  kver="$(cd "$MODDIR" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
  kminor="${kver#v1.}"; kminor="${kminor%%.*}"
  kwokver="$(cd "$MODDIR/kwok" && go list -m -f '{{.Version}}' sigs.k8s.io/kwok)"
  helmver="$(cd "$MODDIR/helm" && go list -m -f '{{.Version}}' helm.sh/helm/v4)"
  # What kubernetes' hack/lib/version.sh stamps, so /version and `kubectl
  # version` report the real release rather than v0.0.0-master.
  local kld="" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kld+=" -X $p.gitVersion=$kver -X $p.gitMajor=1 -X $p.gitMinor=$kminor -X $p.gitTreeState=clean"
  done

  local start b failed=() t
  start=$(now_ms)
  # apiserver and etcd first: on their own they already cover CRD validation,
  # server-side apply, status and finalizers.
  for b in kube-apiserver etcd kube-controller-manager kube-scheduler kubectl kwok helm; do
    [[ -x "$bin/$b" ]] && { log "  $b: cached"; continue; }
    t=$(now_ms)
    log "  $b: building..."
    local ok=0
    case "$b" in
      etcd) go_build "$MODDIR" "$bin/$b.tmp" "" ./etcd || ok=$? ;;
      kwok) go_build "$MODDIR/kwok" "$bin/$b.tmp" \
              "-X sigs.k8s.io/kwok/pkg/consts.Version=$kwokver -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=$kver" \
              sigs.k8s.io/kwok/cmd/kwok || ok=$? ;;
      helm) go_build "$MODDIR/helm" "$bin/$b.tmp" \
              "-X helm.sh/helm/v4/internal/version.version=$helmver -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
              helm.sh/helm/v4/cmd/helm || ok=$? ;;
      *) go_build "$MODDIR" "$bin/$b.tmp" "$kld" "k8s.io/kubernetes/cmd/$b" || ok=$? ;;
    esac
    if [[ $ok -eq 0 ]]; then
      mv "$bin/$b.tmp" "$bin/$b"
      log "  $b: built in $(elapsed "$t") ($(du -h "$bin/$b" | cut -f1))"
    else
      rm -f "$bin/$b.tmp"
      log "  $b: FAILED after $(elapsed "$t")"
      failed+=("$b")
    fi
  done
  if [[ ${#failed[@]} -gt 0 ]]; then
    die "build failed for: ${failed[*]} (the others are in $bin)"
  fi
  touch "$bin/.complete"
  log "built all binaries in $(elapsed "$start"); total $(du -sh "$bin" | cut -f1) in $bin"
}

# ---------------------------------------------------------------- main

case "${1:-}" in
  build) cmd_build ;;
  bin-dir) bin_dir ;;
  *) die "usage: $0 build|up|down|status|env|restart-apiserver|bin-dir" ;;
esac
