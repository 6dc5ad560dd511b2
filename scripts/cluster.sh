#!/usr/bin/env bash
# A real Kubernetes control plane for the tests, built from upstream Go modules
# (tests/cluster/) and run as plain loopback processes: no container engine, no
# binary downloads. See ../../shared/TEST-CLUSTER.md and issue 5.
#
#   scripts/cluster.sh build              build + cache the binaries (no-op when cached)
#   scripts/cluster.sh up                 start etcd, apiserver, controller-manager,
#                                         scheduler, kwok, a fake node and the ingress
#                                         controller (Traefik) (idempotent)
#   scripts/cluster.sh env                print `export KUBECONFIG=...` and PATH for clients
#   scripts/cluster.sh status             per-component state; exit 0 only if all healthy
#   scripts/cluster.sh restart-apiserver [--kill]
#                                         stop (SIGTERM, or SIGKILL) and start only kube-apiserver
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
# The ingress controller is Traefik, built from its Go module (its own go.mod and
# go.sum, so every dependency is checksum-verified) and run with its Kubernetes Ingress
# provider under a ServiceAccount of its own. It serves every Ingress of the cluster on
# 127.0.0.1: HTTPS on $ANCHORPIPE_INGRESS_HTTPS_PORT (API port + 4; certificates from the
# Ingresses' TLS Secrets), plain HTTP on $ANCHORPIPE_INGRESS_HTTP_PORT (+ 5). It routes
# to the Ready addresses of each Service's EndpointSlices, i.e. to pods that really
# listen there (the e2e suite's test node gives its pods such addresses).
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
INGRESS_HTTPS_PORT=$((API_PORT + 4))
INGRESS_HTTP_PORT=$((API_PORT + 5))
TRAEFIK_PING_PORT=$((API_PORT + 6))
TRAEFIK_MODULE=github.com/traefik/traefik/v3
# The newest Traefik whose whole dependency graph the module proxy here serves (3.7's
# DNS providers are not all served).
TRAEFIK_VERSION=v3.6.12
TRAEFIK_RECIPE=1
INGRESS_NAMESPACE=anchorpipe-ingress
NODE_NAME="kwok-node-0"

# Bump when the way binaries are built changes (flags, ldflags, list), so that
# the cache key changes even if go.mod/go.sum did not.
BUILD_RECIPE=1
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm)
# Start order; `down` stops in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok traefik)

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
traefik_dir() { echo "$CACHE_ROOT/traefik/$TRAEFIK_VERSION-r$TRAEFIK_RECIPE"; }

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

# Traefik from its own module: downloaded (checksum-verified against go.sum's database)
# and built inside a copy of it, so its go.mod (replace directives included) applies.
build_traefik() {
  local dir; dir="$(traefik_dir)"
  [[ -x "$dir/traefik" ]] && return 0
  mkdir -p "$dir"
  exec 7>"$dir/build.lock"
  flock 7
  [[ -x "$dir/traefik" ]] && { exec 7>&-; return 0; }
  local t src mod
  t=$(now_ms)
  log "  traefik $TRAEFIK_VERSION: building (a cold build takes about 5 minutes on 2 cores)..."
  mod="$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "$TRAEFIK_MODULE@$TRAEFIK_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [[ -d "$mod" ]] || die "go mod download $TRAEFIK_MODULE@$TRAEFIK_VERSION gave no directory"
  src="$(mktemp -d)"
  cp -r "$mod/." "$src/"
  chmod -R u+w "$src"
  if go_build "$src" "$dir/traefik.tmp" "-X github.com/traefik/traefik/v3/pkg/version.Version=$TRAEFIK_VERSION" ./cmd/traefik; then
    mv "$dir/traefik.tmp" "$dir/traefik"
    rm -rf "$src"
    log "  traefik: built in $(elapsed "$t") ($(du -h "$dir/traefik" | cut -f1))"
  else
    rm -rf "$src" "$dir/traefik.tmp"
    die "traefik build failed after $(elapsed "$t")"
  fi
  exec 7>&-
}

cmd_build() {
  ( export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0; build_traefik )
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


# ---------------------------------------------------------------- state

PKI="$STATE/pki"
RUN="$STATE/run"
LOGS="$STATE/logs"
KUBECONFIG_PATH="$STATE/kubeconfig"
# etcd's data lives on tmpfs; the path is derived from the state dir so two
# state dirs never share it.
ETCD_DATA="/dev/shm/anchorpipe-etcd-$(printf '%s' "$STATE" | sha256sum | cut -c1-12)"

# Whether a running component was started with the arguments this script gives it now
# (only the controller-manager, the scheduler and Traefik are checked: the others'
# arguments name this checkout's files, which differ between checkouts sharing one state
# dir).
args_current() { # <component>
  local pid expected actual
  [[ "$1" == kube-controller-manager || "$1" == kube-scheduler || "$1" == traefik ]] || return 0
  pid="$(pid_of "$1")" || return 0
  expected="$(component_args "$1")"
  actual="$(tr '\0' '\n' <"/proc/$pid/cmdline" | tail -n +2)"
  [[ "$expected" == "$actual" ]]
}

pid_of() { # <component> -> pid if the process is alive and is that component
  local f="$RUN/$1.pid" pid exe
  [[ -f "$f" ]] || return 1
  pid="$(<"$f")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || return 1
  exe="${exe##*/}"
  [[ "$exe" == "$1" || "$exe" == "$1 (deleted)" ]] || return 1
  echo "$pid"
}

admin_token() { cat "$PKI/admin.token"; }

api_get() { # <path>: GET against the apiserver as admin, body on stdout
  curl -sS --max-time 3 --cacert "$PKI/ca.crt" \
    -H "Authorization: Bearer $(admin_token)" "https://127.0.0.1:$API_PORT$1"
}

healthy() { # <component>: its own health endpoint answers
  case "$1" in
    etcd) [[ "$(curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null)" == *'"health":"true"'* ]] ;;
    kube-apiserver) [[ "$(api_get /readyz 2>/dev/null)" == ok ]] ;;
    kube-controller-manager) [[ "$(curl -ksS --max-time 2 "https://127.0.0.1:$KCM_PORT/healthz" 2>/dev/null)" == ok ]] ;;
    kube-scheduler) [[ "$(curl -ksS --max-time 2 "https://127.0.0.1:$SCHED_PORT/healthz" 2>/dev/null)" == ok ]] ;;
    kwok) [[ "$(curl -sS --max-time 2 "http://127.0.0.1:$KWOK_PORT/healthz" 2>/dev/null)" == ok ]] ;;
    traefik) [[ "$(curl -sS --max-time 2 "http://127.0.0.1:$TRAEFIK_PING_PORT/ping" 2>/dev/null)" == OK ]] ;;
  esac
}

all_healthy() {
  local c
  [[ -f "$KUBECONFIG_PATH" ]] || return 1
  for c in "${COMPONENTS[@]}"; do
    pid_of "$c" >/dev/null && healthy "$c" && args_current "$c" || return 1
  done
  # ... and the fake node and the extra Service range are still there.
  [[ "$(api_get "/api/v1/nodes/$NODE_NAME" 2>/dev/null)" == *'"kwok.x-k8s.io/node": "fake"'* ]] \
    && [[ "$(api_get "/apis/networking.k8s.io/v1/servicecidrs/$SERVICE_RANGE_NAME" 2>/dev/null)" == *"$SERVICE_RANGE"* ]]
}

# ---------------------------------------------------------------- certificates

gen_pki() {
  [[ -f "$PKI/.complete" ]] && return 0
  command -v openssl >/dev/null || die "openssl not found"
  log "generating certificates in $PKI"
  rm -rf "$PKI"; mkdir -p "$PKI"; chmod 700 "$PKI"
  (
    cd "$PKI"
    exec 2>openssl.log
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
      -keyout ca.key -out ca.crt -subj "/CN=anchorpipe-test-ca" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
    openssl req -new -newkey rsa:2048 -nodes -sha256 \
      -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver"
    cat >apiserver.ext <<'EOF'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EOF
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -sha256 -days 3650 -extfile apiserver.ext -out apiserver.crt
    # Service-account token signing key pair.
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key
    openssl pkey -in sa.key -pubout -out sa.pub
    # Static tokens: "token,user,uid,groups". The admin is in system:masters;
    # controller-manager and scheduler use the identities the bootstrap RBAC
    # policy grants their permissions to.
    for u in admin kube-controller-manager kube-scheduler; do
      openssl rand -hex 24 >"$u.token"
    done
    {
      echo "$(<admin.token),admin,admin,system:masters"
      echo "$(<kube-controller-manager.token),system:kube-controller-manager,system:kube-controller-manager"
      echo "$(<kube-scheduler.token),system:kube-scheduler,system:kube-scheduler"
    } >tokens.csv
    chmod 600 ./*.key ./*.token tokens.csv
  ) || die "certificate generation failed; see $PKI/openssl.log"
  touch "$PKI/.complete"
}

write_kubeconfig() { # <path> <user> <token file>
  local ca
  ca="$(base64 -w0 <"$PKI/ca.crt")"
  cat >"$1.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: anchorpipe-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $ca
users:
- name: $2
  user:
    token: $(<"$3")
contexts:
- name: anchorpipe-test
  context:
    cluster: anchorpipe-test
    user: $2
current-context: anchorpipe-test
EOF
  chmod 600 "$1.tmp"
  mv "$1.tmp" "$1"
}

# ---------------------------------------------------------------- processes

component_args() { # <component> -> one argument per line
  local bin=$1
  case "$1" in
    etcd) printf '%s\n' \
      --name=anchorpipe-test \
      --data-dir="$ETCD_DATA" \
      --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
      --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
      --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-cluster="anchorpipe-test=http://127.0.0.1:$ETCD_PEER_PORT" \
      --unsafe-no-fsync \
      --quota-backend-bytes=4294967296 \
      --log-level=warn ;;
    kube-apiserver) printf '%s\n' \
      --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
      --bind-address=127.0.0.1 \
      --advertise-address=127.0.0.1 \
      --secure-port="$API_PORT" \
      --tls-cert-file="$PKI/apiserver.crt" \
      --tls-private-key-file="$PKI/apiserver.key" \
      --client-ca-file="$PKI/ca.crt" \
      --token-auth-file="$PKI/tokens.csv" \
      --authorization-mode=RBAC \
      --service-cluster-ip-range=10.0.0.0/24 \
      --service-account-issuer=https://kubernetes.default.svc.cluster.local \
      --service-account-key-file="$PKI/sa.pub" \
      --service-account-signing-key-file="$PKI/sa.key" \
      --allow-privileged=true \
      --endpoint-reconciler-type=none \
      `# Without this, open watches hold a SIGTERM'd apiserver for the full` \
      `# 60s HTTP shutdown timeout; with it they are closed within 2s.` \
      --shutdown-watch-termination-grace-period=2s \
      --profiling=false ;;
    kube-controller-manager) printf '%s\n' \
      --kubeconfig="$STATE/kube-controller-manager.kubeconfig" \
      --bind-address=127.0.0.1 \
      --secure-port="$KCM_PORT" \
      `# Jobs (Helm hooks), kube-root-ca.crt in every namespace (projected into` \
      `# pods with their ServiceAccount token), EndpointSlices of Services and` \
      `# aggregated ClusterRoles (the chart's tenant roles join admin/edit/view).` \
      `# Changing the list changes no binary: 'up' restarts a running` \
      `# controller-manager whose flags differ.` \
      --controllers=garbage-collector-controller,deployment-controller,replicaset-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,job-controller,root-ca-certificate-publisher-controller,endpointslice-controller,endpointslice-mirroring-controller,clusterrole-aggregation-controller \
      --use-service-account-credentials=true \
      `# A control plane sized for a thousand tenants (the operator benchmark):` \
      `# the defaults (20 requests/s per controller, 5 concurrent syncs) keep` \
      `# Deployments unavailable for minutes after a burst of endpoints.` \
      --kube-api-qps=200 \
      --kube-api-burst=400 \
      --concurrent-deployment-syncs=20 \
      --concurrent-replicaset-syncs=20 \
      --service-account-private-key-file="$PKI/sa.key" \
      --root-ca-file="$PKI/ca.crt" \
      --leader-elect=false \
      --profiling=false ;;
    kube-scheduler) printf '%s\n' \
      --kubeconfig="$STATE/kube-scheduler.kubeconfig" \
      --bind-address=127.0.0.1 \
      --secure-port="$SCHED_PORT" \
      --kube-api-qps=200 \
      --kube-api-burst=400 \
      --leader-elect=false \
      --profiling=false ;;
    kwok) printf '%s\n' \
      --kubeconfig="$KUBECONFIG_PATH" \
      --config="$MODDIR/kwok-stages.yaml" \
      --server-address="127.0.0.1:$KWOK_PORT" \
      --node-port=0 ;;
    traefik) printf '%s\n' \
      --global.checknewversion=false \
      --global.sendanonymoususage=false \
      --log.level=INFO \
      --log.nocolor=true \
      --entrypoints.websecure.address="127.0.0.1:$INGRESS_HTTPS_PORT" \
      --entrypoints.websecure.http.tls=true \
      --entrypoints.web.address="127.0.0.1:$INGRESS_HTTP_PORT" \
      --entrypoints.traefik.address="127.0.0.1:$TRAEFIK_PING_PORT" \
      --ping=true \
      --ping.entrypoint=traefik \
      --providers.kubernetesingress=true \
      --providers.kubernetesingress.endpoint="https://127.0.0.1:$API_PORT" \
      --providers.kubernetesingress.certauthfilepath="$PKI/ca.crt" \
      --providers.kubernetesingress.token="$STATE/traefik.token" ;;
  esac
}

start_component() { # <component> <bin dir>
  local c=$1 bin=$2 args=() exe
  mapfile -t args < <(component_args "$c")
  exe="$bin/$c"
  if [[ "$c" == traefik ]]; then
    ensure_ingress_access
    exe="$(traefik_dir)/traefik"
  fi
  mkdir -p "$RUN" "$LOGS"
  printf '\n==== %s starting %s\n' "$(date -Is)" "$c" >>"$LOGS/$c.log"
  # Own session: survives the caller's shell and its job control signals.
  # fds 8/9 are our state/build locks; the component must not inherit them.
  # The child writes its pid and execs, so the pid file is the component's.
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$RUN/$c.pid" "$exe" "${args[@]}" \
    </dev/null >>"$LOGS/$c.log" 2>&1 8>&- 9>&- &
  local i
  for i in $(seq 50); do [[ -s "$RUN/$c.pid" ]] && break; sleep 0.02; done
}

poll_healthy() { # <component> <timeout seconds>: 0 once healthy, 1 on timeout or exit
  local deadline=$(( $(date +%s) + $2 ))
  until healthy "$1"; do
    pid_of "$1" >/dev/null || return 1
    (( $(date +%s) < deadline )) || return 1
    sleep 0.2
  done
}

wait_healthy() { # <component> <timeout seconds>
  local c=$1 deadline=$(( $(date +%s) + $2 )) t
  t=$(now_ms)
  while ! healthy "$c"; do
    if ! pid_of "$c" >/dev/null; then
      tail -n 30 "$LOGS/$c.log" >&2 || true
      die "$c exited during startup; log: $LOGS/$c.log"
    fi
    if (( $(date +%s) >= deadline )); then
      tail -n 30 "$LOGS/$c.log" >&2 || true
      die "$c not healthy after $2s; log: $LOGS/$c.log"
    fi
    sleep 0.1
  done
  log "  $c healthy (pid $(pid_of "$c"), $(elapsed "$t"))"
}

stop_component() { # <component> [signal]
  local c=$1 sig=${2:-TERM} pid i
  if pid="$(pid_of "$c")"; then
    kill "-$sig" "$pid" 2>/dev/null || true
    for i in $(seq 150); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "  $c (pid $pid) ignored SIG$sig for 15s; killing"
      kill -KILL "$pid" 2>/dev/null || true
      while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    fi
    log "  stopped $c (pid $pid)"
  fi
  rm -f "$RUN/$c.pid"
}

kubectl_admin() { "$(bin_dir)/kubectl" --kubeconfig="$KUBECONFIG_PATH" "$@"; }

# The ingress controller's identity: a ServiceAccount with what Traefik's Kubernetes
# Ingress provider reads (Ingresses, IngressClasses, Services, EndpointSlices, the TLS
# Secrets) and the Ingress status it writes, a token for it, and the default
# IngressClass that names it.
ensure_ingress_access() {
  kubectl_admin apply --server-side --field-manager=anchorpipe-test-cluster -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $INGRESS_NAMESPACE
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: traefik
  namespace: $INGRESS_NAMESPACE
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: anchorpipe-test-ingress-controller
rules:
  - apiGroups: [""]
    resources: [services, secrets, nodes]
    verbs: [get, list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
  - apiGroups: [networking.k8s.io]
    resources: [ingresses, ingressclasses]
    verbs: [get, list, watch]
  - apiGroups: [networking.k8s.io]
    resources: [ingresses/status]
    verbs: [update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: anchorpipe-test-ingress-controller
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: anchorpipe-test-ingress-controller
subjects:
  - kind: ServiceAccount
    name: traefik
    namespace: $INGRESS_NAMESPACE
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: traefik
  annotations:
    ingressclass.kubernetes.io/is-default-class: "true"
spec:
  controller: traefik.io/ingress-controller
EOF
  local token
  token="$(kubectl_admin -n "$INGRESS_NAMESPACE" create token traefik --duration=8760h)"
  ( umask 077; printf '%s' "$token" >"$STATE/traefik.token" )
}

# Room for a thousand tenants' Services. The apiserver's own range (its
# --service-cluster-ip-range, 10.0.0.0/24) holds 254 and cannot be changed under an
# existing etcd; a second ServiceCIDR (networking.k8s.io/v1) adds to it, on a fresh
# or an existing cluster alike. Nothing routes ClusterIPs here (no kube-proxy), so the
# addresses only have to be unique.
SERVICE_RANGE_NAME=anchorpipe-services
SERVICE_RANGE=10.96.0.0/16
ensure_service_range() {
  kubectl_admin apply --server-side --field-manager=anchorpipe-test-cluster -f - >/dev/null <<EOF
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata:
  name: $SERVICE_RANGE_NAME
spec:
  cidrs: ["$SERVICE_RANGE"]
EOF
}

ensure_node() {
  kubectl_admin apply -f - >/dev/null <<EOF
# Labels and annotation as kwok's own node template
# (kustomize/kwokctl/resource/node.yaml). kwok's docs also taint fake nodes
# kwok.x-k8s.io/node=fake:NoSchedule; that taint is left off on purpose so that
# ordinary Deployments (the operator's, the tests') schedule without tolerations.
apiVersion: v1
kind: Node
metadata:
  name: $NODE_NAME
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    beta.kubernetes.io/arch: amd64
    beta.kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: $NODE_NAME
    kubernetes.io/os: linux
    kubernetes.io/role: agent
    node-role.kubernetes.io/agent: ""
    type: kwok
spec:
  podCIDR: 10.244.0.0/24
  podCIDRs:
  - 10.244.0.0/24
EOF
  # The apiserver's TaintNodesByCondition admission gives every new node the
  # node.kubernetes.io/not-ready:NoSchedule taint, and only the
  # node-lifecycle controller would lift it. That controller is not run here
  # (it would evict pods whenever kwok's heartbeat lags on a loaded machine),
  # so lift the taint once, deterministically.
  if [[ "$(kubectl_admin get node "$NODE_NAME" -o jsonpath='{.spec.taints[*].key}')" == *node.kubernetes.io/not-ready* ]]; then
    kubectl_admin taint node "$NODE_NAME" node.kubernetes.io/not-ready:NoSchedule- >/dev/null
  fi
}

# ---------------------------------------------------------------- commands

# up/down/restart-apiserver of one state dir are serialized (tests running in
# parallel may all call `up`). The lock file sits beside the state dir because
# `down` removes the dir.
lock_state() { # [timeout seconds]: wait for the lock, forever by default
  mkdir -p "$(dirname "$STATE")"
  exec 8>"$STATE.lock"
  flock -n 8 && return 0
  log "waiting for another cluster.sh on $STATE"
  if [[ -n "${1:-}" ]]; then
    flock -w "$1" 8 || log "warning: lock $STATE.lock still held after $1s; going on without it"
  else
    flock 8
  fi
}

cmd_up() {
  local start; start=$(now_ms)
  if all_healthy; then
    log "already up and healthy ($(elapsed "$start")); kubeconfig: $KUBECONFIG_PATH"
    return 0
  fi
  lock_state
  if all_healthy; then
    log "already up and healthy ($(elapsed "$start")); kubeconfig: $KUBECONFIG_PATH"
    return 0
  fi
  cmd_build
  local bin; bin="$(bin_dir)"
  mkdir -p "$STATE" "$RUN" "$LOGS"
  if [[ -f "$STATE/bin-dir" && "$(<"$STATE/bin-dir")" != "$bin" ]] && pid_of kube-apiserver >/dev/null; then
    log "warning: running components were started from $(<"$STATE/bin-dir"); run 'down' then 'up' to switch to $bin"
  fi
  echo "$bin" >"$STATE/bin-dir"
  gen_pki
  write_kubeconfig "$KUBECONFIG_PATH" admin "$PKI/admin.token"
  write_kubeconfig "$STATE/kube-controller-manager.kubeconfig" system:kube-controller-manager "$PKI/kube-controller-manager.token"
  write_kubeconfig "$STATE/kube-scheduler.kubeconfig" system:kube-scheduler "$PKI/kube-scheduler.token"

  log "starting control plane (state: $STATE)"
  local c
  for c in "${COMPONENTS[@]}"; do
    if pid_of "$c" >/dev/null && ! args_current "$c"; then
      log "  $c (pid $(pid_of "$c")) runs with other flags; restarting it"
      stop_component "$c"
    fi
    if pid_of "$c" >/dev/null; then
      if healthy "$c"; then log "  $c already running (pid $(pid_of "$c"))"; continue; fi
      # Give a process that is still starting a chance before replacing it.
      if poll_healthy "$c" 30; then log "  $c already running (pid $(pid_of "$c"))"; continue; fi
      log "  $c (pid $(pid_of "$c")) running but unhealthy; restarting it"
      stop_component "$c"
    fi
    start_component "$c" "$bin"
    wait_healthy "$c" 60
  done

  ensure_node
  ensure_service_range
  local t; t=$(now_ms)
  kubectl_admin wait --for=condition=Ready "node/$NODE_NAME" --timeout=60s >/dev/null \
    || die "node $NODE_NAME not Ready; see $LOGS/kwok.log"
  log "  node/$NODE_NAME Ready ($(elapsed "$t"))"
  # Pods are refused until the namespace's default ServiceAccount exists.
  t=$(now_ms)
  local i
  for i in $(seq 300); do
    kubectl_admin -n default get serviceaccount default >/dev/null 2>&1 && break
    sleep 0.1
  done
  kubectl_admin -n default get serviceaccount default >/dev/null \
    || die "serviceaccount default/default never appeared; see $LOGS/kube-controller-manager.log"
  log "up in $(elapsed "$start"); kubeconfig: $KUBECONFIG_PATH"
  log "use it with: eval \"\$($0 env)\""
}

cmd_down() {
  local i c
  # Bounded: a wedged holder must not make teardown hang.
  lock_state 60
  log "stopping control plane (state: $STATE)"
  for (( i=${#COMPONENTS[@]}-1; i>=0; i-- )); do
    c="${COMPONENTS[$i]}"
    stop_component "$c"
  done
  rm -rf "$ETCD_DATA" "$STATE"
  log "down; removed $STATE and $ETCD_DATA"
}

cmd_restart_apiserver() {
  local sig=TERM t
  [[ "${1:-}" == "--kill" ]] && sig=KILL
  lock_state
  pid_of kube-apiserver >/dev/null || die "kube-apiserver is not running; use 'up'"
  t=$(now_ms)
  log "restarting kube-apiserver (SIG$sig)"
  stop_component kube-apiserver "$sig"
  start_component kube-apiserver "$(<"$STATE/bin-dir")"
  wait_healthy kube-apiserver 60
  log "kube-apiserver restarted in $(elapsed "$t")"
}

cmd_status() {
  local c pid rc=0 state
  printf '%-24s %-8s %s\n' COMPONENT PID STATE
  for c in "${COMPONENTS[@]}"; do
    if pid="$(pid_of "$c")"; then
      if healthy "$c"; then state=healthy; else state=unhealthy; rc=1; fi
    else
      pid=-; state=stopped; rc=1
    fi
    printf '%-24s %-8s %s\n' "$c" "$pid" "$state"
  done
  echo "state:      $STATE"
  echo "kubeconfig: $KUBECONFIG_PATH"
  echo "logs:       $LOGS"
  echo "binaries:   $(bin_dir)$(built "$(bin_dir)" || echo ' (not built)')"
  echo "apiserver:  https://127.0.0.1:$API_PORT"
  echo "ingress:    https://127.0.0.1:$INGRESS_HTTPS_PORT, http://127.0.0.1:$INGRESS_HTTP_PORT (Traefik $TRAEFIK_VERSION)"
  return $rc
}

cmd_env() {
  printf 'export KUBECONFIG=%q\n' "$KUBECONFIG_PATH"
  printf 'export ANCHORPIPE_INGRESS_HTTPS_PORT=%q\n' "$INGRESS_HTTPS_PORT"
  printf 'export ANCHORPIPE_INGRESS_HTTP_PORT=%q\n' "$INGRESS_HTTP_PORT"
  printf 'export PATH=%q:"$PATH"\n' "$(bin_dir)"
}

# ---------------------------------------------------------------- main

main() {
  case "${1:-}" in
    build) cmd_build ;;
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    restart-apiserver) shift; cmd_restart_apiserver "$@" ;;
    bin-dir) bin_dir ;;
    *) sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
}

# One line, so that bash has read all of it before running anything: editing
# or replacing this file cannot affect invocations already running.
main "$@"; exit $?
